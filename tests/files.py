"""Writers for the real files the tests index (PDFs by hand, images with PIL)."""

from __future__ import annotations

import os
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

from PIL import Image


def write_pdf(path: Path, pages: list[str | None]) -> Path:
    """A minimal valid PDF: one page per entry; a string becomes a text layer, None a page with no text."""
    objects: list[bytes] = []
    kids = []
    font_id = 3 + 2 * len(pages)
    for i, text in enumerate(pages):
        page_id, content_id = 3 + 2 * i, 4 + 2 * i
        kids.append(f"{page_id} 0 R")
        if text is None:
            stream = b"0 0 1 rg 10 10 100 100 re f"  # a filled square, no text
        else:
            escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode("latin-1")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_id} 0 R "
                       f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    header = [b"<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode()]
    return write_pdf_objects(path, header + objects + [b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"])


def write_pdf_objects(path: Path, objects: list[bytes], info: int | None = None) -> Path:
    """A PDF whose object ``n`` is ``objects[n - 1]``; object 1 must be the catalog. ``info``: the /Info object number."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    info_entry = f" /Info {info} 0 R" if info else ""
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info_entry} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))
    return path


def write_png_declaring(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header declares width x height (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def write_image(path: Path, size=(64, 48), color="red", exif: dict | None = None) -> Path:
    image = Image.new("RGB", size, color)
    # a second colour block so that orientation changes are visible in pixels too
    image.paste("white", (0, 0, size[0] // 2, size[1] // 2))
    kwargs = {}
    if exif:
        data = Image.Exif()
        data.update(exif)
        kwargs["exif"] = data
    image.save(path, **kwargs)
    return path


@contextmanager
def unprivileged():
    """Run the block as an unprivileged user (65534) when the tests run as root, who can read and list anything."""
    as_root = os.geteuid() == 0
    if as_root:
        os.seteuid(65534)
    try:
        yield
    finally:
        if as_root:
            os.seteuid(0)
