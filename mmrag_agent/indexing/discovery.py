"""Find the indexable files under a folder, reporting (never raising on) the ones that cannot be read.

Sidecar captions: an image ``photo.jpg`` takes its caption from ``photo.jpg.txt`` or, failing that,
``photo.txt`` in the same folder. A sidecar is read as the image's caption, not indexed as a document.
Hidden files and folders (name starting with ``.``), and the index store itself, are skipped.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..media import IMAGE_EXTENSIONS
from .readers import TEXT_EXTENSIONS


@dataclass(frozen=True)
class FileFailure:
    """A file that was not indexed in this run, with the reason and the fix."""

    path: str
    reason: str


@dataclass
class FoundFile:
    path: Path  # absolute
    rel: str  # POSIX path relative to the indexed folder
    kind: str  # "text" or "image"
    sidecar: Path | None = None


@dataclass
class Discovery:
    files: list[FoundFile] = field(default_factory=list)
    failures: list[FileFailure] = field(default_factory=list)
    ignored: int = 0


def discover(root: Path, exclude: tuple[Path, ...] = ()) -> Discovery:
    """Walk ``root`` recursively (following directory symlinks once) and classify what is found.

    Args:
        root: The folder to index.
        exclude: Absolute paths to skip (e.g. an index store inside the folder).

    Returns:
        A :class:`Discovery` with the indexable files sorted by relative path.
    """
    root = Path(root).absolute()
    found = Discovery()
    excluded = {os.path.realpath(p) for p in exclude}
    _walk(root, root, found, visited={_identity(root)}, excluded=excluded)
    _attach_sidecars(found)
    found.files.sort(key=lambda f: f.rel)
    return found


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _walk(root: Path, folder: Path, found: Discovery, visited: set, excluded: set) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        found.failures.append(FileFailure(_rel(root, folder) or ".", f"folder cannot be listed ({exc.strerror}); fix its permissions"))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        rel = _rel(root, path)
        if os.path.realpath(path) in excluded:
            continue
        try:
            st = os.stat(path)  # follows symlinks
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                found.failures.append(FileFailure(rel, "symlink loop (the link resolves to itself); remove or fix the link"))
            elif entry.is_symlink():
                found.failures.append(FileFailure(rel, f"broken symlink ({exc.strerror}); remove or fix the link"))
            else:
                found.failures.append(FileFailure(rel, f"cannot be read ({exc.strerror})"))
            continue
        if stat.S_ISDIR(st.st_mode):
            identity = (st.st_dev, st.st_ino)
            if identity in visited:
                found.failures.append(FileFailure(rel, "symlink loop (the folder link points back to a folder already being indexed); skipped"))
                continue
            _walk(root, path, found, visited | {identity}, excluded)
            continue
        suffix = path.suffix.lower()
        kind = "image" if suffix in IMAGE_EXTENSIONS else "text" if suffix in TEXT_EXTENSIONS else None
        if kind is None:
            found.ignored += 1
            continue
        if not stat.S_ISREG(st.st_mode):
            found.failures.append(FileFailure(rel, "not a regular file (FIFO, socket or device); skipped"))
            continue
        found.files.append(FoundFile(path=path, rel=rel, kind=kind))


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix() if path != root else ""


def _attach_sidecars(found: Discovery) -> None:
    by_rel = {f.rel: f for f in found.files}
    consumed = set()
    for image in (f for f in found.files if f.kind == "image"):
        stem_rel = image.rel[: -len(image.path.suffix)]
        for candidate in (image.rel + ".txt", stem_rel + ".txt"):
            sidecar = by_rel.get(candidate)
            if sidecar is not None and candidate not in consumed:
                image.sidecar = sidecar.path
                consumed.add(candidate)
                break
    found.files = [f for f in found.files if f.rel not in consumed]
