"""Visible text, title and image references of an HTML page, in time linear in its length.

The standard library's ``html.parser`` is quadratic on some malformed input (a few hundred kilobytes of
``<!--`` take minutes on Python 3.11.7) and raises ``AssertionError`` on others (``<![``), so pages are
tokenised here instead, following HTML5's rules where they matter for text: comments, declarations and
processing instructions are dropped (an unterminated one runs to the end of the page); ``script`` and
``style`` hold raw text up to their end tag; ``title`` and ``textarea`` hold text; an unterminated tag runs to
the end of the page. Every scan starts where the previous one stopped, and the token patterns hold one
quantifier each, so no character is looked at more than a bounded number of times.

The parser can be fed incrementally (:meth:`HTMLText.feed`, :meth:`HTMLText.take_text`): a construct cut by
a block boundary waits for the next block, up to :data:`MAX_PENDING_CHARS`.
"""

from __future__ import annotations

import html
import re

from .limits import MAX_DESCRIBING_CHARS, MAX_IMAGE_REFERENCES, MAX_TITLE_CHARS, FileRejected

#: Longest unterminated tag or comment waited for across blocks when a page is fed incrementally.
MAX_PENDING_CHARS = 8 << 20
_MAX_FIGURE_DEPTH = 64
_SKIP = {"script", "style", "noscript", "template", "svg"}
_RAW = {"script", "style", "title", "textarea"}  # content up to the end tag is not markup
_BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
          "figure", "figcaption", "table", "ul", "ol", "pre", "blockquote", "header", "footer"}
_END = {name: re.compile("</" + name, re.IGNORECASE) for name in _RAW}
_NAME = re.compile(r"[^\s/>]*")
_ATTRIBUTE = re.compile(r"[^\s/>=]*")
_GAP = re.compile(r"[\s/]*")  # between attributes: spaces and stray slashes
_SPACES = re.compile(r"\s*")
_UNQUOTED = re.compile(r"[^\s>]*")
_KEPT_ATTRIBUTES = ("src", "alt", "title")
_LONG_CHARREF = re.compile(r"&#[xX]?[0-9a-fA-F]{9,};?")  # beyond U+10FFFF; thousands of digits would not even convert


def unescape(text: str) -> str:
    """``html.unescape``, with numeric character references too long to be a character replaced by U+FFFD first
    (``html.unescape`` raises ``ValueError`` on one of more than 4,300 digits)."""
    return html.unescape(_LONG_CHARREF.sub("\ufffd", text)) if "&#" in text else html.unescape(text)


class HTMLText:
    """Collects a page's visible text (raw: entities are decoded by the caller), title and ``<img>`` references.

    Example:
        >>> page = HTMLText()
        >>> page.feed("<title>Coffee</title><p>Grind &amp; brew <img src='a.png' alt='beans'>")
        >>> page.close()
        >>> page.take_text(), page.title, page.images[0]["alt"]
        ('\\nGrind &amp; brew \\n', 'Coffee', 'beans')
    """

    def __init__(self) -> None:
        self.parts: list[str] = []
        self._title = ""  # raw: entities decoded by :attr:`title`
        self.images: list[dict] = []
        self._skip_depth = 0
        self._raw: str | None = None  # the raw-text element we are in
        self._figure_images: list[list[dict]] = []
        self._caption: list[str] | None = None
        self._caption_chars = 0
        self._pending: list[str] = []  # an unfinished construct, in pieces
        self._pending_chars = 0
        self._needs = ""  # what must arrive before the construct can finish: "-->", ">" or "" (anything)

    # -- feeding
    def feed(self, data: str) -> None:
        """Consume the next piece of the page (text only, entities left as they are)."""
        if self._pending and self._needs and not self._may_finish(data):
            self._wait(data)  # still unfinished: not scanned again, so a long construct costs linear time
            return
        text = "".join(self._pending) + data
        self._pending, self._pending_chars = [], 0
        self._wait(text[self._scan(text, final=False):])

    def close(self) -> None:
        """Consume what is left at the end of the page (an unfinished construct runs to the end)."""
        text, self._pending, self._pending_chars = "".join(self._pending), [], 0
        self._scan(text, final=True)

    def _may_finish(self, data: str) -> bool:
        if self._needs == ">":
            return ">" in data
        return "-->" in self._pending[-1][-2:] + data[:2] or "-->" in data

    def _wait(self, text: str) -> None:
        if not text:
            return
        self._pending.append(text)
        self._pending_chars += len(text)
        if self._pending_chars > MAX_PENDING_CHARS:
            raise FileRejected(f"HTML with an unterminated tag or comment longer than {MAX_PENDING_CHARS >> 20} MiB; "
                               "repair the page or remove the file")

    @property
    def title(self) -> str:
        """The page's ``<title>`` text, entities decoded (raw whitespace)."""
        return unescape(self._title)

    def take_text(self) -> str:
        """The text gathered since the last call (and forget it)."""
        text = "".join(self.parts)
        self.parts.clear()
        return text

    # -- tokenising
    def _scan(self, text: str, final: bool) -> int:
        """Consume ``text`` from the start; return where an unfinished construct begins (``len(text)`` if none)."""
        n, i = len(text), 0
        while i < n:
            if self._raw is not None:
                match = _END[self._raw].search(text, i)
                if match is None:
                    self._needs = ""
                    keep = n if final else max(i, n - len(self._raw) - 2)  # "</scrip" may be cut at the end
                    self._raw_text(text[i:keep])
                    return keep
                self._raw_text(text[i:match.start()])
                close = text.find(">", match.end())
                if close < 0 and not final:
                    self._needs = ">"
                    return match.start()
                self._end_tag(self._raw)
                self._raw = None
                i = n if close < 0 else close + 1
                continue
            lt = text.find("<", i)
            if lt < 0:
                self._data(text[i:])
                return n
            if lt > i:
                self._data(text[i:lt])
            i = lt
            following = text[i + 1:i + 2]
            if not following:
                if final:
                    self._data("<")
                    return n
                self._needs = ""
                return i
            if following in "!?":
                comment = text.startswith("<!--", i)
                end = text.find("-->", i + 4) if comment else text.find(">", i + 2)
                if end < 0:  # unterminated: wait for more, or at the end it runs to the end
                    self._needs = "-->" if comment else ">"
                    return n if final else i
                i = end + (3 if comment else 1)
            elif following == "/":
                end = text.find(">", i + 2)
                if end < 0:
                    self._needs = ">"
                    return n if final else i
                self._end_tag(_NAME.match(text, i + 2).group().lower())
                i = end + 1
            elif following.isascii() and following.isalpha():
                tag = _start_tag(text, i + 1)
                if tag is None:
                    self._needs = ">"
                    return n if final else i
                name, attributes, self_closing, i = tag
                self._start_tag(name, attributes, self_closing)
            else:
                self._data("<")
                i += 1
        return n

    # -- handlers
    def _start_tag(self, tag: str, attributes: dict, self_closing: bool) -> None:
        if tag in _SKIP and not self_closing:
            self._skip_depth += 1
        if tag in _RAW and not self_closing:
            self._raw = tag
        if tag == "img" and attributes.get("src") and len(self.images) < MAX_IMAGE_REFERENCES:
            image = {"src": attributes["src"], "alt": attributes.get("alt", ""), "title": attributes.get("title", ""), "caption": ""}
            self.images.append(image)
            if self._figure_images:
                self._figure_images[-1].append(image)
        elif tag == "figure" and len(self._figure_images) < _MAX_FIGURE_DEPTH:
            self._figure_images.append([])
        elif tag == "figcaption":
            self._caption, self._caption_chars = [], 0
        if tag in _BLOCK:
            self.parts.append("\n")

    def _end_tag(self, tag: str) -> None:
        if tag in _SKIP and self._skip_depth:
            self._skip_depth -= 1
        if tag == "figcaption" and self._caption is not None:
            caption = " ".join(unescape("".join(self._caption)).split())[:MAX_DESCRIBING_CHARS]
            for image in self._figure_images[-1] if self._figure_images else []:
                image["caption"] = caption
            self._caption = None
        elif tag == "figure" and self._figure_images:
            self._figure_images.pop()
        if tag in _BLOCK:
            self.parts.append("\n")

    def _raw_text(self, text: str) -> None:
        if self._raw == "title":
            if len(self._title) < 4 * MAX_TITLE_CHARS:
                self._title += text[: 4 * MAX_TITLE_CHARS]
        elif self._raw == "textarea":
            self._data(text)

    def _data(self, text: str) -> None:
        if self._skip_depth or not text:
            return
        if self._caption is not None and self._caption_chars < MAX_DESCRIBING_CHARS:
            self._caption.append(text[:MAX_DESCRIBING_CHARS])
            self._caption_chars += len(self._caption[-1])
        self.parts.append(text)


def _start_tag(text: str, start: int) -> tuple[str, dict, bool, int] | None:
    """``(name, kept attributes, self-closing, position after '>')`` of the tag whose name starts at ``start``; None if unterminated."""
    n = len(text)
    match = _NAME.match(text, start)
    name, k = match.group().lower(), match.end()
    attributes: dict[str, str] = {}
    while True:
        k = _GAP.match(text, k).end()
        if k >= n:
            return None
        if text[k] == ">":
            return name, attributes, text[k - 1] == "/", k + 1
        match = _ATTRIBUTE.match(text, k)
        key, k = match.group().lower(), match.end()
        if not key:  # a stray "="
            k += 1
            continue
        value = ""
        after = _SPACES.match(text, k).end()
        if after < n and text[after] == "=":
            k = _SPACES.match(text, after + 1).end()
            if k >= n:
                return None
            if text[k] in "\"'":
                end = text.find(text[k], k + 1)
                if end < 0:
                    return None
                value, k = text[k + 1:end], end + 1
            else:
                match = _UNQUOTED.match(text, k)
                value, k = match.group(), match.end()
        if key in _KEPT_ATTRIBUTES and key not in attributes:
            attributes[key] = unescape(value[:MAX_DESCRIBING_CHARS])[:MAX_DESCRIBING_CHARS]
