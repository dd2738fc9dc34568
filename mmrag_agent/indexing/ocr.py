"""Optional OCR back end (RapidOCR, PP-OCR ONNX models shipped in the wheel; works offline)."""

from __future__ import annotations

import logging
from typing import Callable

OCR_MODES = ("auto", "on", "off")


class OCRUnavailable(ImportError):
    """OCR was requested but its back end is not installed."""


def load_ocr(mode: str = "auto") -> Callable | None:
    """Return ``ocr(image) -> str`` for ``mode``: ``"on"`` (required), ``"auto"`` (if installed), ``"off"``.

    ``image`` is a PIL image. The function's ``max_side`` attribute is the longest side the engine reads (it
    downscales larger images first), so callers can decode images no larger than that. Raises
    :class:`OCRUnavailable` for ``"on"`` without the back end.
    """
    if mode not in OCR_MODES:
        raise ValueError(f"ocr must be one of {OCR_MODES}, got {mode!r}")
    if mode == "off":
        return None
    try:
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        from rapidocr import RapidOCR
    except ImportError:
        if mode == "on":
            raise OCRUnavailable("OCR needs RapidOCR: pip install 'mmrag-agent[ocr]'") from None
        return None
    engine = RapidOCR()
    logging.getLogger("RapidOCR").setLevel(logging.ERROR)  # RapidOCR() resets its logger to INFO

    def ocr(image) -> str:
        import numpy as np

        if max(image.size) > ocr.max_side:
            image = image.copy()
            image.thumbnail((ocr.max_side, ocr.max_side))
        result = engine(np.asarray(image.convert("RGB")))
        return " ".join(result.txts or ())

    ocr.max_side = int(getattr(getattr(engine, "cfg", None), "Global", {}).get("max_side_len", 2000) or 2000)
    return ocr
