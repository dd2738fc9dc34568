"""The text surrogate of an image: what text-only models read and what image-as-text indexing embeds.

Assembled, in this order, from whatever exists:

1. the sidecar caption file (``photo.jpg.txt`` or ``photo.txt`` beside ``photo.jpg``);
2. alt text, title and ``<figcaption>`` wherever a Markdown or HTML file of the folder shows the image;
3. the EXIF ImageDescription;
4. the file name, split into words;
5. OCR text, when the ``ocr`` extra is installed and OCR is enabled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .readers import FileRejected, ImageReference, decode_text

_LABELS = {"caption": "Caption", "alt_text": "Alt text", "exif_description": "Description",
           "file_name": "File name", "ocr_text": "Text in image"}


@dataclass
class ImageSurrogate:
    """An image's text surrogate and the text each source contributed (for explanations)."""

    sources: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n".join(f"{_LABELS[key]}: {value}" for key, value in self.sources.items() if value)


def file_name_words(path: str | Path) -> str:
    """``"photos/Red_fox-2019.jpg"`` -> ``"Red fox 2019"``."""
    stem = Path(path).stem
    words = re.sub(r"([a-z])([A-Z])", r"\1 \2", stem)
    return " ".join(re.split(r"[\s_\-.]+", words)).strip()


#: Bytes of a sidecar caption file that are read (a caption is a sentence or two, and is embedded whole).
MAX_SIDECAR_BYTES = 64 << 10


def read_sidecar(path: Path | None) -> str:
    """The caption in a sidecar file ('' when there is none or it is empty). Raises FileRejected for binary ones."""
    if path is None:
        return ""
    with open(path, "rb") as fh:
        return read_sidecar_bytes(fh.read(MAX_SIDECAR_BYTES))


def read_sidecar_bytes(data: bytes) -> str:
    """The caption held in a sidecar file's bytes, whitespace collapsed ('' for an empty file)."""
    if not data.strip():
        return ""
    return " ".join(decode_text(data[:MAX_SIDECAR_BYTES])[0].split())


def reference_text(references: Iterable[ImageReference]) -> str:
    """Distinct describing texts of all references to one image, in a stable order."""
    texts = sorted({ref.describing_text() for ref in references if ref.describing_text()})
    return " | ".join(texts)


def build_surrogate(
    rel_path: str,
    caption: str = "",
    references_text: str = "",
    exif_description: str | None = None,
    ocr_text: str = "",
) -> ImageSurrogate:
    """Assemble the surrogate from its sources (empty sources are left out)."""
    sources = {
        "caption": caption.strip(),
        "alt_text": references_text.strip(),
        "exif_description": (exif_description or "").strip(),
        "file_name": file_name_words(rel_path),
        "ocr_text": " ".join(ocr_text.split()),
    }
    return ImageSurrogate({k: v for k, v in sources.items() if v})


def standalone_surrogate(path: Path, ocr: Callable | None = None) -> str:
    """The surrogate of an image file on its own (no folder context: no alt text from other documents)."""
    from ..media import load_image

    caption = ""
    for sidecar in (path.with_name(path.name + ".txt"), path.with_suffix(".txt")):
        if sidecar.is_file():
            try:
                caption = read_sidecar(sidecar)
            except FileRejected:
                caption = ""
            break
    loaded = load_image(path, max_side=getattr(ocr, "max_side", None) if ocr else 256)
    ocr_text = ocr(loaded.image) if ocr else ""
    return build_surrogate(path.name, caption, "", loaded.exif_description, ocr_text).text
