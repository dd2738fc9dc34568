"""What every reader raises for a file it cannot use, and the bounds on what one document may contribute."""

from __future__ import annotations


class FileRejected(ValueError):
    """A file that cannot be indexed; the message names the reason and the fix."""


#: Longest document title kept (characters): the title is embedded with every chunk of its document.
MAX_TITLE_CHARS = 200
#: Bounds on what one document contributes to image descriptions (hostile pages stay small in memory).
MAX_DESCRIBING_CHARS = 2000
MAX_IMAGE_REFERENCES = 10_000
