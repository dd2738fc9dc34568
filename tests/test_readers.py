"""Readers, image loading and folder discovery on real generated files, bad ones included."""

from __future__ import annotations

import os
import time

import pytest
from files import write_image, write_pdf, write_png_declaring

from mmrag_agent.indexing.discovery import discover
from mmrag_agent.media import ImageRejected, load_image
from mmrag_agent.indexing.pdf import read_pdf
from mmrag_agent.indexing.readers import FileRejected, decode_text, read_html, read_markdown
from mmrag_agent.indexing.surrogates import build_surrogate, file_name_words


def test_utf8_and_latin1_text_decode_to_the_same_words():
    text = "Café crème: naïve façade, 20 °C"
    assert decode_text(text.encode("utf-8")) == (text, "utf-8")
    decoded, encoding = decode_text(text.encode("latin-1"))
    assert decoded == text
    assert encoding != "utf-8"


@pytest.mark.parametrize("data, expected", [
    (b"", "empty file"),
    (b"   \n\t ", "empty file"),
    (bytes(range(256)) * 4, "binary content"),
    (b"\x00\x01\x02PK\x03\x04" * 100, "binary content"),
])
def test_bad_text_is_rejected_with_the_reason(data, expected):
    with pytest.raises(FileRejected, match=expected):
        decode_text(data)


def test_markdown_image_references_resolve_relative_to_the_document(tmp_path):
    (tmp_path / "notes").mkdir()
    md = tmp_path / "notes" / "report.md"
    body = "# Q3 report\n\n![Revenue by quarter](../charts/rev.png \"Revenue\")\n![logo](https://example.com/x.png)\n"
    parsed = read_markdown(md, body.encode(), tmp_path)
    assert parsed.title == "Q3 report"
    assert [(r.target, r.alt, r.title) for r in parsed.image_references] == [("charts/rev.png", "Revenue by quarter", "Revenue")]


def test_html_text_skips_scripts_and_collects_alt_and_figcaption(tmp_path):
    page = tmp_path / "page.html"
    body = ("<html><head><title>Coffee</title><script>var x = 'hidden';</script></head><body>"
            "<h1>Brewing</h1><p>Grind size matters &amp; so does time.</p>"
            "<figure><img src='img/extraction.png' alt='extraction chart'><figcaption>Yield vs grind</figcaption></figure>"
            "</body></html>")
    parsed = read_html(page, body.encode(), tmp_path)
    text = parsed.sections[0][0]
    assert "Grind size matters & so does time." in text and "hidden" not in text
    assert parsed.title == "Coffee"
    ref = parsed.image_references[0]
    assert (ref.target, ref.alt, ref.caption) == ("img/extraction.png", "extraction chart", "Yield vs grind")


def test_pdf_text_per_page(tmp_path):
    pdf = write_pdf(tmp_path / "a.pdf", ["First page text", None, "Third page text"])
    parsed = read_pdf(pdf, pdf.read_bytes(), tmp_path)
    assert [(t.strip(), m["page"]) for t, m in parsed.sections] == [("First page text", 1), ("Third page text", 3)]


def test_pdf_without_text_layer_names_the_ocr_fix(tmp_path):
    pdf = write_pdf(tmp_path / "scan.pdf", [None, None])
    with pytest.raises(FileRejected, match=r"no text layer.*mmrag-agent\[ocr\]"):
        read_pdf(pdf, pdf.read_bytes(), tmp_path)


def test_corrupt_pdf_is_rejected(tmp_path):
    data = b"%PDF-1.4\n1 0 obj garbage\n" + os.urandom(200)
    with pytest.raises(FileRejected, match="PDF"):
        read_pdf(tmp_path / "bad.pdf", data, tmp_path)


def test_truncated_png_is_rejected(tmp_path):
    good = write_image(tmp_path / "good.png", size=(200, 200))
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageRejected, match="corrupt or truncated"):
        load_image(tmp_path / "cut.png")


def test_decompression_bomb_is_refused_from_its_header_without_decoding(tmp_path):
    bomb = write_png_declaring(tmp_path / "bomb.png", 30000, 30000)
    started = time.perf_counter()
    with pytest.raises(ImageRejected, match="900000000 pixels.*decompression-bomb guard"):
        load_image(bomb)
    with pytest.raises(ImageRejected, match="1000x1000 = 1,000,000 pixels.*decompression-bomb guard"):
        load_image(write_png_declaring(tmp_path / "big.png", 1000, 1000), max_pixels=500_000)
    assert time.perf_counter() - started < 5  # refused from the header: a decode would allocate 900 MB


def test_exif_rotation_is_applied_and_description_read(tmp_path):
    path = write_image(tmp_path / "rot.jpg", size=(60, 20), exif={0x0112: 6, 0x010E: "A red kite"})
    loaded = load_image(path)
    assert (loaded.width, loaded.height) == (20, 60)
    assert loaded.exif_orientation == 6
    assert loaded.exif_description == "A red kite"


def test_surrogate_combines_every_source_in_order():
    surrogate = build_surrogate("photos/Red_fox-2019.jpg", caption="A fox", references_text="fox in snow",
                                exif_description="Vulpes vulpes", ocr_text="  ")
    assert list(surrogate.sources) == ["caption", "alt_text", "exif_description", "file_name"]
    assert surrogate.text.splitlines() == ["Caption: A fox", "Alt text: fox in snow", "Description: Vulpes vulpes",
                                           "File name: Red fox 2019"]
    assert file_name_words("IMG_2041.JPG") == "IMG 2041"


def test_discovery_reports_symlink_loops_and_attaches_sidecars(tmp_path):
    (tmp_path / "sub").mkdir()
    write_image(tmp_path / "sub" / "cat.png")
    (tmp_path / "sub" / "cat.png.txt").write_text("A grey cat")
    (tmp_path / "doc.txt").write_text("hello")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "secret.txt").write_text("no")
    (tmp_path / "program.py").write_text("print(1)")
    os.symlink("loop_b", tmp_path / "loop_a.txt")
    os.symlink("loop_a.txt", tmp_path / "loop_b")
    os.symlink(tmp_path, tmp_path / "sub" / "back_to_root")
    os.mkfifo(tmp_path / "pipe.txt")
    found = discover(tmp_path)
    assert [(f.rel, f.kind) for f in found.files] == [("doc.txt", "text"), ("sub/cat.png", "image")]
    assert found.files[1].sidecar.path == tmp_path / "sub" / "cat.png.txt"
    reasons = {f.path: f.reason for f in found.failures}
    assert "symlink loop" in reasons["loop_a.txt"]
    assert "symlink loop" in reasons["sub/back_to_root"]
    assert "not a regular file" in reasons["pipe.txt"]
    assert found.ignored == 1
