"""Data that ships inside the package: the demo's document folder and the example rerank file."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["demo_docs"]


def demo_docs() -> Path:
    """The bundled demo folder (Markdown, HTML, a PDF, a note, photos and charts), inside the installed package.

    Example:
        >>> sorted(p.name for p in demo_docs().iterdir())[:3]
        ['coffee', 'company', 'notes.txt']
    """
    return Path(str(files(__package__) / "demo_docs"))
