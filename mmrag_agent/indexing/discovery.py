"""Find the indexable files under a folder, reporting (never raising on) the ones that cannot be read.

Nothing outside the folder is read. A symbolic link is followed only when its fully resolved target lies
inside the folder; a link that points outside, a dangling link and a link loop are reported and skipped.
Files are later opened by their resolved path and checked to be the very file found here (same device and
inode), so a link swapped in between discovery and reading is refused too.

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
from typing import BinaryIO, Callable

from ..media import IMAGE_EXTENSIONS
from .readers import TEXT_EXTENSIONS, FileRejected


@dataclass(frozen=True)
class FileFailure:
    """A file that was not indexed in this run, with the reason and the fix.

    ``keeps_points``: whether what the store holds for this path (and, for a folder, under it) is kept.
    False only for paths that must not be in the index at all (e.g. a link to outside the folder).
    """

    path: str
    reason: str
    keeps_points: bool = True


@dataclass
class FoundFile:
    path: Path  # absolute, as reached from the indexed folder (may run through links inside it)
    rel: str  # POSIX path relative to the indexed folder
    kind: str  # "text" or "image"
    sidecar: FoundFile | None = None
    real: str = ""  # fully resolved path, inside the indexed folder
    identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) seen at discovery
    size: int = 0


@dataclass
class Discovery:
    files: list[FoundFile] = field(default_factory=list)
    failures: list[FileFailure] = field(default_factory=list)
    ignored: int = 0
    #: Relative paths (folders or links) that could not be looked into: the store keeps what it has under them.
    unavailable: list[str] = field(default_factory=list)


def discover(root: Path, exclude: tuple[Path, ...] = (), on_entry: Callable[[], None] | None = None) -> Discovery:
    """Walk ``root`` recursively, following symlinks only to targets inside ``root``, and classify what is found.

    Args:
        root: The folder to index.
        exclude: Absolute paths to skip (e.g. an index store inside the folder).
        on_entry: Called once per directory entry looked at (for progress display).

    Returns:
        A :class:`Discovery` with the indexable files sorted by relative path, the skipped entries with their
        reasons, and the folders that could not be listed (``unavailable``).

    Example:
        >>> found = discover(Path("docs"))
        >>> [f.rel for f in found.files], [(f.path, f.reason) for f in found.failures]
        (['a.txt', 'img/cat.png'], [('passwd.txt', 'symlink to a file outside the indexed folder ...')])
    """
    root = Path(root).absolute()
    walk = _Walk(root, os.path.realpath(root), {os.path.realpath(p) for p in exclude}, on_entry)
    try:
        st = os.stat(walk.real_root)
    except OSError as exc:
        walk.found.failures.append(FileFailure(".", f"folder cannot be read ({exc.strerror}); fix its permissions"))
        walk.found.unavailable.append("")
        return walk.found
    walk.folder(root, "", walk.real_root, visited=frozenset({(st.st_dev, st.st_ino)}))
    _attach_sidecars(walk.found)
    walk.found.files.sort(key=lambda f: f.rel)
    return walk.found


def open_found(found: FoundFile) -> BinaryIO:
    """Open a discovered file for reading, refusing anything but the regular file discovery saw.

    The resolved path is opened without following a final symlink, and the open file must have the device
    and inode recorded at discovery: a file or folder swapped for a link (to outside the folder or anywhere
    else) between discovery and reading is refused.

    Raises:
        FileRejected: The file was replaced; OSError: it cannot be opened (vanished, permissions).
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(found.real or found.path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileRejected("file was replaced by a symbolic link while being indexed; run the indexer again") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (found.identity != (0, 0) and (st.st_dev, st.st_ino) != found.identity):
        os.close(fd)
        raise FileRejected("file was replaced while being indexed; run the indexer again")
    return os.fdopen(fd, "rb")


def display_name(name: str) -> str:
    """A file name as printable UTF-8: undecodable bytes shown as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


class _Walk:
    def __init__(self, root: Path, real_root: str, excluded: set[str], on_entry) -> None:
        self.root, self.real_root, self.excluded, self.on_entry = root, real_root, excluded, on_entry
        self.inside_prefix = real_root.rstrip(os.sep) + os.sep
        self.found = Discovery()

    def inside(self, real: str) -> bool:
        return real == self.real_root or real.startswith(self.inside_prefix)

    def fail(self, rel: str, reason: str, keeps_points: bool = True, unavailable: bool = False) -> None:
        self.found.failures.append(FileFailure(rel or ".", reason, keeps_points))
        if unavailable:
            self.found.unavailable.append(rel)

    def folder(self, path: Path, rel: str, real: str, visited: frozenset) -> None:
        try:
            entries = sorted(os.scandir(real), key=lambda e: e.name)
        except OSError as exc:
            self.fail(rel, f"folder cannot be listed ({exc.strerror}); its indexed files are kept; fix its permissions", unavailable=True)
            return
        for entry in entries:
            if self.on_entry:
                self.on_entry()
            if not entry.name.startswith("."):
                self.entry(entry, path, rel, real, visited)

    def entry(self, entry: os.DirEntry, parent: Path, parent_rel: str, parent_real: str, visited: frozenset) -> None:
        name = entry.name
        rel = f"{parent_rel}/{name}" if parent_rel else name
        if display_name(name) != name:
            shown = f"{parent_rel}/{display_name(name)}" if parent_rel else display_name(name)
            self.fail(shown, "file name is not valid UTF-8 (the index stores names as text); rename it", keeps_points=False)
            return
        is_link = entry.is_symlink()
        if is_link:
            real = self.resolve_link(entry.path, rel)
            if real is None:
                return
        else:
            real = os.path.join(parent_real, name)
        if any(real == ex or real.startswith(ex.rstrip(os.sep) + os.sep) for ex in self.excluded):
            return  # the store (or anything in it, reached through a link)
        try:
            st = os.stat(real)
        except OSError as exc:
            self.fail(rel, f"cannot be read ({exc.strerror}); its indexed files are kept; fix its permissions", unavailable=True)
            return
        if stat.S_ISDIR(st.st_mode):
            identity = (st.st_dev, st.st_ino)
            if identity in visited:
                self.fail(rel, "symlink loop (the folder link points back to a folder already being indexed); skipped", keeps_points=False)
                return
            self.folder(parent / name, rel, real, visited | {identity})
            return
        suffix = os.path.splitext(name)[1].lower()
        kind = "image" if suffix in IMAGE_EXTENSIONS else "text" if suffix in TEXT_EXTENSIONS else None
        if kind is None:
            self.found.ignored += 1
            return
        if not stat.S_ISREG(st.st_mode):
            self.fail(rel, "not a regular file (FIFO, socket or device); skipped")
            return
        self.found.files.append(FoundFile(path=parent / name, rel=rel, kind=kind, real=real,
                                          identity=(st.st_dev, st.st_ino), size=st.st_size))

    def resolve_link(self, path: str, rel: str) -> str | None:
        """The link's resolved target if it may be followed; otherwise report why not and return None."""
        try:
            real = os.path.realpath(path, strict=True)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.fail(rel, "symlink loop (the link resolves to itself); remove or fix the link", unavailable=True)
            elif isinstance(exc, FileNotFoundError):
                self.fail(rel, "broken symlink (its target is missing); what was indexed through it is kept until the link "
                               "is removed; remove or fix the link", unavailable=True)
            else:
                self.fail(rel, f"symlink cannot be followed ({exc.strerror}); what was indexed through it is kept", unavailable=True)
            return None
        if not self.inside(real):
            self.fail(rel, "symlink to a target outside the indexed folder; links are followed only within the folder "
                           "(copy the file in, or index the target's folder itself)", keeps_points=False)
            return None
        return real


def _attach_sidecars(found: Discovery) -> None:
    by_rel = {f.rel: f for f in found.files}
    consumed = set()
    for image in (f for f in found.files if f.kind == "image"):
        stem_rel = image.rel[: -len(image.path.suffix)]
        for candidate in (image.rel + ".txt", stem_rel + ".txt"):
            sidecar = by_rel.get(candidate)
            if sidecar is not None and candidate not in consumed:
                image.sidecar = sidecar
                consumed.add(candidate)
                break
    found.files = [f for f in found.files if f.rel not in consumed]
