"""Terminal output that treats data as text: document text, paths, questions and model output are never read as
markup, control characters are shown escaped, and long lists are blocks that read well at 80 columns and piped."""

from __future__ import annotations

import math
from typing import Iterable, Optional

from rich.text import Text

from .common import console

_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, *range(0x80, 0xA0)]}


def plain(value: object) -> str:
    """``value`` as printable text: control characters (ANSI escapes included) become ``\\xNN``."""
    return str(value).translate(_CONTROL)


def one_line(value: object, limit: Optional[int] = None) -> str:
    """:func:`plain` with whitespace collapsed, cut to ``limit`` characters (with an ellipsis)."""
    text = " ".join(plain(value).split())
    return text if limit is None or len(text) <= limit else text[: max(limit - 3, 1)].rstrip() + "..."


def say(*parts: object, style: Optional[str] = None, indent: int = 0) -> None:
    """Print the parts as one line of literal text (a ``(text, style)`` tuple styles one part)."""
    line = Text(" " * indent)
    for part in parts:
        if isinstance(part, tuple):
            line.append(plain(part[0]), style=part[1])
        else:
            line.append(plain(part), style=style)
    console.print(line, soft_wrap=False, overflow="fold")


def number(value: Optional[float], digits: int = 3) -> str:
    """A score for display: ``-`` when missing, ``NaN`` when not a number."""
    if value is None:
        return "-"
    return "NaN" if isinstance(value, float) and math.isnan(value) else f"{value:.{digits}f}"


def heading(title: object) -> None:
    console.rule(Text(plain(title)), style="dim")


def bullets(items: Iterable[object], style: Optional[str] = None, indent: int = 2) -> None:
    for item in items:
        say("- ", plain(item), style=style, indent=indent)
