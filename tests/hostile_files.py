"""Writers of hostile files (malformed PDFs, pathological text) for the robustness tests and benchmarks."""

from __future__ import annotations

import zlib
from pathlib import Path

from files import write_pdf_objects


def _stream(data: bytes, entries: str = "") -> bytes:
    return f"<< /Length {len(data)} {entries}>>\nstream\n".encode() + data + b"\nendstream"


def _text_page(parent: int, content: int, font: int) -> bytes:
    return (f"<< /Type /Page /Parent {parent} 0 R /MediaBox [0 0 612 792] /Contents {content} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>").encode()


_FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def write_deep_page_tree_pdf(path: Path, depth: int = 150, text: str = "Deep page") -> Path:
    """One text page under ``depth`` nested /Pages nodes (pypdf stops at 100)."""
    # objects: 1 catalog, 2..depth+1 Pages nodes, then page, content, font
    page, content, font = depth + 2, depth + 3, depth + 4
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    for level in range(depth):
        number = 2 + level
        kid = number + 1 if level < depth - 1 else page
        parent = f" /Parent {number - 1} 0 R" if level else ""
        objects.append(f"<< /Type /Pages /Kids [{kid} 0 R] /Count 1{parent} >>".encode())
    objects += [_text_page(depth + 1, content, font), _stream(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()), _FONT]
    return write_pdf_objects(path, objects)


def write_pdf_with_info(path: Path, info: bytes = b"[1 2 3]", text: str = "Info is not a dictionary") -> Path:
    """A one-page text PDF whose trailer /Info points at ``info`` (not a dictionary by default)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               _text_page(2, 4, 5), _stream(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()), _FONT, info]
    return write_pdf_objects(path, objects, info=6)


#: Broken image XObjects on a text-less page, by the error pypdf raises when the image is decoded.
BROKEN_IMAGES = {
    "unsupported-filter": _stream(b"\x00" * 16, "/Type /XObject /Subtype /Image /Width 4 /Height 4 /ColorSpace /DeviceGray "
                                               "/BitsPerComponent 8 /Filter /JBIG2Decode "),
    "empty-data": _stream(b"", "/Type /XObject /Subtype /Image /Width 4 /Height 4 /ColorSpace /DeviceRGB /BitsPerComponent 8 "),
    "huge-declared-size": _stream(zlib.compress(b"\x00" * 64), "/Type /XObject /Subtype /Image /Width 200000 /Height 200000 "
                                                               "/ColorSpace /DeviceRGB /BitsPerComponent 8 /Filter /FlateDecode "),
    "corrupt-flate": _stream(b"not zlib at all" * 4, "/Type /XObject /Subtype /Image /Width 4 /Height 4 /ColorSpace /DeviceRGB "
                                                     "/BitsPerComponent 8 /Filter /FlateDecode "),
    "huge-number": _stream(b"\x00" * 16, "/Type /XObject /Subtype /Image /Width " + "9" * 5000 + " /Height 4 "
                                         "/ColorSpace /DeviceGray /BitsPerComponent 8 "),
}


def write_pdf_with_broken_image(path: Path, kind: str, text_page: str | None = None) -> Path:
    """A PDF whose first page has no text, only the broken image ``BROKEN_IMAGES[kind]``; ``text_page`` adds a good page."""
    pages = ["3 0 R"] + (["7 0 R"] if text_page else [])
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{' '.join(pages)}] /Count {len(pages)} >>".encode(),
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /XObject << /Im1 5 0 R >> >> >>",
               _stream(b"q 100 0 0 100 10 10 cm /Im1 Do Q"), BROKEN_IMAGES[kind], _FONT]
    if text_page:
        objects += [_text_page(2, 8, 6), _stream(f"BT /F1 12 Tf 72 720 Td ({text_page}) Tj ET".encode())]
    return write_pdf_objects(path, objects)


def write_pdf_with_huge_numbers(path: Path, digits: int = 5000, text: str = "Huge numbers") -> Path:
    """A text PDF whose /MediaBox and /Count hold ``digits``-digit integers."""
    huge = "9" * digits
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [3 0 R] /Count {huge} >>".encode(),
               (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {huge} 792] /Contents 4 0 R "
                f"/Resources << /Font << /F1 5 0 R >> >> >>").encode(),
               _stream(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()), _FONT]
    return write_pdf_objects(path, objects)


def zebra_markdown(spaces: int = 6000) -> bytes:
    """The Markdown that made the old heading regex cubic: ``# Zebra`` + spaces + ``x``."""
    return b"# Zebra" + b" " * spaces + b"x\n"
