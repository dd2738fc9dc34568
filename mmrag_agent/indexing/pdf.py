"""PDF text per page (pypdf), with OCR of the page images of scanned pages."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Callable

from .readers import FileRejected, ParsedDocument, clean_title, short_error


def read_pdf(path: Path, data: bytes | BinaryIO, root: Path, ocr: Callable | None = None) -> ParsedDocument:
    """Extract text per page with pypdf; OCR the page images of scanned pages when ``ocr`` is given.

    ``data`` is the file's bytes or a seekable binary file object. Whatever pypdf raises on a malformed file
    (too deep a page tree, a broken image, a number too long to convert, ...) becomes :class:`FileRejected`;
    a broken page or image loses only its own text, and unreadable document information only the title.
    """
    import logging

    from pypdf import PdfReader

    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    if not _has_content(source):
        raise FileRejected("empty file (0 bytes); remove it or replace it with the real PDF")
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(source, strict=False)
        if reader.is_encrypted:
            try:
                reader.decrypt("")
            except Exception:  # noqa: BLE001 - pypdf raises several types here
                raise FileRejected("encrypted PDF; save an unencrypted copy to index it") from None
        pages = list(reader.pages)
    except FileRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - pypdf may raise anything on a malformed file
        raise FileRejected(f"unreadable PDF ({short_error(exc)}); re-export it or remove the file") from None
    sections, warnings = [], []
    title = _pdf_title(reader, warnings)
    for number, page in enumerate(pages, start=1):
        try:
            text = page.extract_text() or ""
        except Exception as exc:  # noqa: BLE001 - pypdf may raise anything on a broken page
            warnings.append(f"page {number}: text extraction failed ({short_error(exc)})")
            text = ""
        if not text.strip() and ocr is not None:
            text = _ocr_page_images(page, ocr, number, warnings)
            if text:
                warnings.append(f"page {number}: no text layer, text recovered by OCR")
        if text.strip():
            sections.append((text, {"page": number}))
    if not sections:
        broken = [w for w in warnings if "could not be decoded" in w]
        hint = ("no text was found by OCR either" + (f" ({'; '.join(broken)[:200]})" if broken else "") if ocr
                else "install the OCR extra (pip install 'mmrag-agent[ocr]') to OCR scanned pages")
        raise FileRejected(f"PDF has no text layer ({len(pages)} page(s), scanned or image-only?); {hint}")
    return ParsedDocument(sections=sections, title=title, warnings=warnings)


def _has_content(source: BinaryIO) -> bool:
    position = source.tell()
    present = bool(source.read(1))
    source.seek(position)
    return present


def _pdf_title(reader, warnings: list[str]) -> str | None:
    try:
        metadata = reader.metadata
        title = metadata.get("/Title") if isinstance(metadata, dict) else None
        return clean_title(str(title)) if title else None
    except Exception as exc:  # noqa: BLE001 - e.g. /Info that is not a dictionary
        warnings.append(f"document information unreadable ({short_error(exc)}); indexed without a title")
        return None


def _ocr_page_images(page, ocr: Callable, number: int, warnings: list[str]) -> str:
    """OCR text of a page's images; a broken image (or image list) loses only its own text."""
    texts, broken = [], 0
    try:
        for image_file in page.images:
            try:
                image = image_file.image
                side = getattr(ocr, "max_side", None)
                if side and max(image.size) > side:
                    image.thumbnail((side, side))
                texts.append(ocr(image))
            except Exception:  # noqa: BLE001 - pypdf and the OCR engine may raise anything on a broken image
                broken += 1
            finally:
                image = None
    except Exception:  # noqa: BLE001 - listing the page's images failed
        broken += 1
    if broken:
        warnings.append(f"page {number}: {broken} embedded image(s) could not be decoded for OCR")
    return "\n".join(t for t in texts if t)
