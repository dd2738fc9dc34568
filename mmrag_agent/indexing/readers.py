"""Turn one document file into text sections (and the image references it contains).

Every reader either returns a :class:`ParsedDocument` or raises :class:`FileRejected` whose message says
what is wrong with the file and how to fix it. Nothing here embeds or stores anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlparse

from .html_text import HTMLText, unescape
from .limits import MAX_DESCRIBING_CHARS, MAX_IMAGE_REFERENCES, MAX_TITLE_CHARS, FileRejected

TEXT_EXTENSIONS = frozenset({".txt", ".md", ".markdown", ".html", ".htm", ".pdf"})


@dataclass
class ImageReference:
    """An image referenced from a Markdown or HTML document, with the text that describes it there."""

    target: str  # resolved path relative to the indexed folder (POSIX)
    alt: str = ""
    title: str = ""
    caption: str = ""

    def describing_text(self) -> str:
        return " ".join(dict.fromkeys(t for t in (self.alt, self.title, self.caption) if t))


@dataclass
class ParsedDocument:
    """The text of one file, as sections with their own metadata (e.g. one per PDF page)."""

    sections: list[tuple[str, dict]]
    title: str | None = None
    encoding: str | None = None
    image_references: list[ImageReference] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- text
def decode_text(data: bytes) -> tuple[str, str]:
    """Decode bytes as text: UTF-8 first, then the best detected encoding. Refuse binary data.

    Returns:
        ``(text, encoding)``.

    Raises:
        FileRejected: For empty, binary or undecodable content.
    """
    if not data.strip():
        raise FileRejected("empty file (no text); add content or remove the file")
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace"), "utf-8-sig"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace"), "utf-16"
    if _looks_binary(data):
        raise FileRejected("binary content in a text file (NUL or control bytes); rename it to its real type or remove it")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    match = _best_match(data)
    return str(match), match.encoding


def detect_encoding(sample: bytes) -> str:
    """The most likely encoding of a sample of non-UTF-8 text (cp1252 among equally likely code pages).

    Raises:
        FileRejected: No encoding fits.
    """
    return _best_match(sample).encoding


def _best_match(data: bytes):
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        raise FileRejected("text encoding could not be detected; convert the file to UTF-8")
    # Short texts tie between many single-byte code pages; among equally good ones prefer the most common.
    tied = [m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
    for preferred in ("cp1252", "latin_1", "iso8859_15"):
        for match in tied:
            if match.encoding == preferred:
                return match
    return best


def looks_binary(data: bytes) -> bool:
    """NUL bytes, or more than 5% control bytes, in the first 8 KiB."""
    return _looks_binary(data)


def _looks_binary(data: bytes) -> bool:
    sample = data[:8192]
    if b"\x00" in sample:
        return True
    control = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    return control > 0.05 * len(sample)


def _check_text(text: str) -> str:
    if not text.strip():
        raise FileRejected("file contains only whitespace; add content or remove the file")
    return text


def read_plain_text(path: Path, data: bytes, root: Path) -> ParsedDocument:
    text, encoding = decode_text(data)
    return ParsedDocument(sections=[(_check_text(text), {})], encoding=encoding)


# ------------------------------------------------------------------------------------------ markdown


def markdown_heading(line: str) -> str | None:
    """The text of an ATX heading line (``# Title``, ``## Title ##``), else None. Linear in the line length."""
    hashes = len(line) - len(line.lstrip("#"))
    if not 1 <= hashes <= 6 or len(line) == hashes or not line[hashes].isspace():
        return None
    text = line[hashes:].strip()
    closing = text.rstrip("#")
    if not closing or closing[-1].isspace():  # a closing run of #s (CommonMark: preceded by a space)
        text = closing.strip()
    return clean_title(text)


def clean_title(text: str | None) -> str | None:
    """Whitespace collapsed, cut to :data:`MAX_TITLE_CHARS` at a word boundary; None when empty."""
    words = (text or "").split()
    title = " ".join(words)
    if len(title) > MAX_TITLE_CHARS:
        title = title[:MAX_TITLE_CHARS].rsplit(" ", 1)[0] if " " in title[:MAX_TITLE_CHARS] else title[:MAX_TITLE_CHARS]
    return title or None


def markdown_images(text: str):
    """Yield ``(alt, src, title)`` for each ``![alt](src "title")`` in ``text``, in one left-to-right pass.

    Hand-written instead of a regular expression so that the time is linear in ``len(text)`` whatever the
    input: every search starts after the end of the previous one.
    """
    pos = 0
    while True:
        start = text.find("![", pos)
        if start < 0:
            return
        close = text.find("]", start + 2)
        if close < 0:
            return
        pos = close + 1
        if not text.startswith("(", close + 1):
            continue
        end = text.find(")", close + 2)
        if end < 0:
            return
        pos = end + 1
        parsed = _link_destination(text[close + 2:end])
        if parsed is not None:
            yield text[start + 2:close], parsed[0], parsed[1]


def _link_destination(inner: str) -> tuple[str, str] | None:
    inner = inner.strip()
    if inner.startswith("<"):
        stop = inner.find(">")
        if stop < 0:
            return None
        src, rest = inner[1:stop], inner[stop + 1:]
    else:
        parts = inner.split(None, 1)
        if not parts:
            return None
        src, rest = parts[0], parts[1] if len(parts) > 1 else ""
    rest = rest.strip()
    if not src or any(c.isspace() or c in "<>" for c in src):
        return None
    if not rest:
        return src, ""
    if len(rest) >= 2 and rest[0] in "\"'" and rest[-1] == rest[0] and not any(q in rest[1:-1] for q in "\"'"):
        return src, rest[1:-1]
    return None


def read_markdown(path: Path, data: bytes, root: Path) -> ParsedDocument:
    text, encoding = decode_text(data)
    _check_text(text)
    references = []
    for alt, src, title in markdown_images(text):
        if len(references) >= MAX_IMAGE_REFERENCES:
            break
        target = resolve_reference(path, src, root)
        if target:
            references.append(ImageReference(target, alt=alt.strip()[:MAX_DESCRIBING_CHARS], title=title.strip()[:MAX_DESCRIBING_CHARS]))
    heading = next((h for h in map(markdown_heading, text.splitlines()) if h), None)
    return ParsedDocument(
        sections=[(text, {})],
        title=heading,
        encoding=encoding,
        image_references=references,
    )


# ---------------------------------------------------------------------------------------------- html


def read_html(path: Path, data: bytes, root: Path) -> ParsedDocument:
    raw, encoding = decode_text(data)
    parser = HTMLText()
    parser.feed(raw)
    parser.close()
    lines = (" ".join(line.split()) for line in unescape("".join(parser.parts)).splitlines())
    text = "\n".join(line for line in lines if line)
    title = clean_title(parser.title)
    if not text.strip() and title:
        text = title
    if not text.strip():
        raise FileRejected("HTML page has no visible text; add content or remove the file")
    references = []
    for image in parser.images:
        target = resolve_reference(path, image["src"], root)
        if target:
            references.append(ImageReference(target, alt=image["alt"].strip(), title=image["title"].strip(), caption=image["caption"]))
    return ParsedDocument(sections=[(text, {})], title=title, encoding=encoding, image_references=references)


def resolve_reference(document: Path, src: str, root: Path) -> str | None:
    """Resolve an image link in ``document`` to a POSIX path relative to ``root``; None if external."""
    parsed = urlparse(src)
    if parsed.scheme not in ("", "file") or parsed.netloc:
        return None
    target = unquote(parsed.path)
    if not target:
        return None
    candidate = (root / target.lstrip("/")) if target.startswith("/") else (document.parent / target)
    try:
        return Path(_normalise(candidate)).relative_to(_normalise(root)).as_posix()
    except ValueError:
        return None


def _normalise(path: Path) -> str:
    import os

    return os.path.normpath(os.path.abspath(path))


def short_error(exc: BaseException, limit: int = 200) -> str:
    """``exc`` as one short line (for failure reasons): its message, or its type when the message is empty."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Readers of the text formats read whole (PDFs: :func:`mmrag_agent.indexing.pdf.read_pdf`).
READERS: dict[str, Callable[..., ParsedDocument]] = {
    ".txt": read_plain_text,
    ".md": read_markdown,
    ".markdown": read_markdown,
    ".html": read_html,
    ".htm": read_html,
}
