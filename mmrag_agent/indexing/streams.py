"""Large text files (``.txt``, ``.md``, ``.html`` over :data:`WHOLE_FILE_BYTES`) read block by block.

Memory stays bounded by the block and segment sizes, whatever the file size:

* :func:`scan_large_text` (first pass) hashes every byte, picks the encoding (a BOM, else UTF-8 if the whole
  file is valid UTF-8, else the encoding detected around the first invalid byte) and, for Markdown and HTML,
  collects the title and image references;
* :class:`TextStream` (second pass) decodes with that encoding and yields the document's text in segments of
  about :data:`SEGMENT_CHARS`, cut at a paragraph, line or word break, hashing what it reads so that the
  caller can check that the file did not change between the passes.

Smaller files are read whole by :mod:`.readers`, so their text and chunks are exactly as before.
"""

from __future__ import annotations

import codecs
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from .html_text import unescape
from .readers import (
    MAX_DESCRIBING_CHARS,
    MAX_IMAGE_REFERENCES,
    FileRejected,
    HTMLText,
    ImageReference,
    clean_title,
    detect_encoding,
    looks_binary,
    markdown_heading,
    markdown_images,
    resolve_reference,
)

BLOCK_BYTES = 1 << 20
#: Text files up to this size are read whole; larger ones are streamed.
WHOLE_FILE_BYTES = 8 << 20
#: Characters of text handed to the sentence splitter at a time.
SEGMENT_CHARS = 256 << 10
#: A "line" longer than this (no newline) is scanned in pieces.
_MAX_LINE_CHARS = 1 << 20
MARKDOWN_SUFFIXES = (".md", ".markdown")
HTML_SUFFIXES = (".html", ".htm")


@dataclass
class StreamedText:
    """What the first pass over a large text file learned."""

    encoding: str
    title: str | None = None
    image_references: list[ImageReference] = field(default_factory=list)


def scan_large_text(fh: BinaryIO, suffix: str, path: Path, root: Path) -> tuple[str, StreamedText]:
    """First pass over a large text file: its SHA-256 and :class:`StreamedText`.

    Raises:
        FileRejected: Binary content, or no encoding fits.
    """
    digest = hashlib.sha256()
    head = fh.read(BLOCK_BYTES)
    digest.update(head)
    encoding = _bom_encoding(head)
    if encoding is None and looks_binary(head):
        raise FileRejected("binary content in a text file (NUL or control bytes); rename it to its real type or remove it")
    utf8 = codecs.getincrementaldecoder("utf-8")() if encoding is None else None
    invalid: bytes | None = None
    block = head
    while block:
        if utf8 is not None and invalid is None:
            try:
                utf8.decode(block)
            except UnicodeDecodeError:
                invalid = block
        block = fh.read(BLOCK_BYTES)
        digest.update(block)
    if utf8 is not None and invalid is None:
        try:
            utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            invalid = head
    info = StreamedText(encoding or ("utf-8" if invalid is None else detect_encoding(invalid)))
    if suffix in MARKDOWN_SUFFIXES or suffix in HTML_SUFFIXES:
        fh.seek(0)
        blocks = _decoded_blocks(fh, info.encoding)
        if suffix in MARKDOWN_SUFFIXES:
            _scan_markdown(blocks, path, root, info)
        else:
            _scan_html(blocks, path, root, info)
    return digest.hexdigest(), info


class TextStream:
    """Second pass: the document text of a large file in segments; ``sha256`` is complete once exhausted.

    Example:
        >>> stream = TextStream(open("big.txt", "rb"), StreamedText("utf-8"), ".txt")
        >>> for segment in stream.segments(): ...
        >>> stream.sha256.hexdigest() == expected
    """

    def __init__(self, fh: BinaryIO, info: StreamedText, suffix: str) -> None:
        self.fh, self.info, self.suffix = fh, info, suffix
        self.sha256 = hashlib.sha256()

    def _blocks(self) -> Iterator[bytes]:
        while block := self.fh.read(BLOCK_BYTES):
            self.sha256.update(block)
            yield block

    def segments(self) -> Iterator[str]:
        texts = _decode(self._blocks(), self.info.encoding)
        if self.suffix in HTML_SUFFIXES:
            texts = _html_text(texts)
        return _segments(texts)


def _bom_encoding(head: bytes) -> str | None:
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    return None


def _decoded_blocks(fh: BinaryIO, encoding: str) -> Iterator[str]:
    return _decode(iter(lambda: fh.read(BLOCK_BYTES), b""), encoding)


def _decode(blocks: Iterable[bytes], encoding: str) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    for block in blocks:
        text = decoder.decode(block)
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def _lines(texts: Iterable[str]) -> Iterator[str]:
    """Complete lines across block boundaries; a line longer than _MAX_LINE_CHARS comes in pieces."""
    carry = ""
    for text in texts:
        text = carry + text
        cut = text.rfind("\n")
        if cut < 0:
            if len(text) > _MAX_LINE_CHARS:
                yield text
                text = ""
            carry = text
            continue
        yield from text[:cut].split("\n")
        carry = text[cut + 1:]
    if carry:
        yield carry


def _scan_markdown(texts: Iterable[str], path: Path, root: Path, info: StreamedText) -> None:
    """Title and image references of a large Markdown file (an image link must lie on one line here)."""
    for line in _lines(texts):
        if info.title is None and line.startswith("#"):
            info.title = markdown_heading(line)
        if "![" in line and len(info.image_references) < MAX_IMAGE_REFERENCES:
            for alt, src, title in markdown_images(line):
                target = resolve_reference(path, src, root)
                if target and len(info.image_references) < MAX_IMAGE_REFERENCES:
                    info.image_references.append(ImageReference(target, alt=alt.strip()[:MAX_DESCRIBING_CHARS],
                                                                title=title.strip()[:MAX_DESCRIBING_CHARS]))


def _scan_html(texts: Iterable[str], path: Path, root: Path, info: StreamedText) -> None:
    parser = HTMLText()
    for text in texts:
        parser.feed(text)
        parser.take_text()
    parser.close()
    info.title = clean_title(parser.title)
    for image in parser.images:
        target = resolve_reference(path, image["src"], root)
        if target:
            info.image_references.append(ImageReference(target, alt=image["alt"].strip(), title=image["title"].strip(),
                                                        caption=image["caption"]))


def _html_text(texts: Iterable[str]) -> Iterator[str]:
    """Visible text of an HTML stream, one normalised line per line, blank lines dropped (as :func:`read_html`)."""
    parser = HTMLText()

    def normalised(raw: str) -> str:
        lines = (" ".join(line.split()) for line in unescape(raw).splitlines())
        return "".join(line + "\n" for line in lines if line)

    carry = ""
    for text in texts:
        parser.feed(text)
        raw = carry + parser.take_text()
        cut = raw.rfind("\n")
        if cut < 0 and len(raw) <= _MAX_LINE_CHARS:
            carry = raw
            continue
        cut = len(raw) if cut < 0 else cut
        carry = raw[cut:]
        if out := normalised(raw[:cut]):
            yield out
    parser.close()
    if out := normalised(carry + parser.take_text()):
        yield out


def _segments(texts: Iterable[str], size: int | None = None) -> Iterator[str]:
    """Re-cut a text stream into pieces of at most ``size`` characters, at a paragraph, line or word break."""
    size = size or SEGMENT_CHARS
    buffer = ""
    for text in texts:
        buffer += text
        while len(buffer) >= size:
            cut = _break_before(buffer, size)
            yield buffer[:cut]
            buffer = buffer[cut:]
    if buffer:
        yield buffer


def _break_before(text: str, size: int) -> int:
    for separator in ("\n\n", "\n", " "):
        cut = text.rfind(separator, size // 2, size)
        if cut > 0:
            return cut + len(separator)
    return size
