"""The embedded index store: Qdrant Edge shards in one folder, checked before they are trusted.

Layout of a store folder ``S`` (default ``FOLDER/.mmrag``) for collection prefix ``P``::

    S/P.index.json    the index metadata (JSON: models, dimensions, root, where the store was written, counts)
    S/P_text/         Qdrant Edge shard of the text chunks (HNSW, on-disk keyword indexes on rel_path and doc_id)
    S/P_images/       Qdrant Edge shard of the images

Nothing in a store is ever deserialised as code (the metadata is JSON, the shards are Qdrant's own files).
Opening checks, before anything is used: a store of the previous version (``S/qdrant/``, qdrant-client's
local mode, which keeps pickles) is refused without being read; a store whose recorded location differs
from where it is found (it came inside a copy, an archive or a clone) is refused; damaged metadata or shards
and a collection emptied behind the index's back are refused; a read-only store is searched through a
temporary copy; writes check the free space first (the engine's memory-mapped files cannot report a full
disk: the process would die of SIGBUS).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from tqdm.auto import tqdm

from .edge import EdgeVectorStore, close_shard, create_shard, edge_call, edge_module, mark_indexed, note_written, open_shard, short_reason
from .store import DEFAULT_STORE_DIRNAME, IndexStore, RawPoint, StoreError, _same_path, encode_payload

logger = logging.getLogger(__name__)
STORE_FORMAT = "qdrant-edge"
META_SUFFIX = ".index.json"
LEGACY_DIRNAME = "qdrant"  # qdrant-client local mode, written by mmrag-agent before the Edge store
#: Free space kept in reserve on the store's device beyond a write's own estimate (the engine's WAL and files grow by steps).
SPACE_HEADROOM = 64 * 2**20
READ_HEADROOM = 8 * 2**20
PROGRESS_MIN_POINTS = 10_000  # below this, building the HNSW graph takes seconds at most
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class EdgeIndexStore(IndexStore):
    """An index in a store folder: one Qdrant Edge shard per collection and a JSON metadata file.

    Open it with :meth:`open` (or :func:`~mmrag_agent.indexing.stores.open_store`), which runs every check.
    """

    kind = "embedded store"

    def __init__(self, folder: Path, prefix: str, shard_root: Path | None = None, allow_moved: bool = False) -> None:
        super().__init__(prefix)
        self.folder = folder
        self.shard_root = shard_root or folder  # a temporary copy when the store is read-only
        self.allow_moved = allow_moved
        self._meta_cache: dict | None = None
        self._written = False  # whether this process wrote points (finish() is a no-op otherwise)
        self.show_progress = False  # show the time spent building the HNSW graph (indexing runs turn it on)

    # ----------------------------------------------------------------------------------------- open
    @classmethod
    def open(cls, folder: Path, prefix: str = "mmrag", *, create: bool = False, rebuild: bool = False,
             allow_moved: bool = False) -> "EdgeIndexStore":
        """Open (``create``: or make) the store folder ``folder`` after checking it; see the module docstring."""
        if not _PREFIX.fullmatch(prefix):
            raise StoreError(f"collection prefix {prefix!r} is not a plain name; use letters, digits, '_' or '-' (at most 64)")
        folder = Path(os.path.abspath(folder))
        if not folder.exists():
            if not create:
                raise StoreError(f"no index at {folder}: the folder does not exist; run `mmrag index FOLDER` (its index goes to "
                                 "FOLDER/.mmrag) or pass the --store it was written to")
            try:
                folder.mkdir(parents=True)
            except OSError as exc:
                raise StoreError(f"cannot create the index store {folder} ({exc.strerror or exc}); pass a writable --store") from None
        elif not folder.is_dir():
            raise StoreError(f"the index store {folder} is a file, not a folder; pass the store folder (--store)")
        store = cls(folder, prefix, allow_moved=allow_moved)
        writable = _writable(folder, [store.meta_path, *(folder / c for c in store.collections)])
        if (create or rebuild) and not writable:
            raise StoreError(f"the index store {folder} is not writable; make it writable, or index into another --store")
        if rebuild:
            store.drop()
        if (folder / LEGACY_DIRNAME).is_dir() and _is_legacy(folder / LEGACY_DIRNAME):
            raise StoreError(f"the index store {folder} was written by an earlier mmrag-agent (qdrant-client local mode, which keeps "
                             f"pickled objects) and is not opened; {store.rebuild_hint()}")
        meta = store.read_meta()
        if meta is None:
            stray = [c for c in store.collections if (folder / c).exists()]
            if stray:
                raise StoreError(f"the index store {folder} has collection folders ({', '.join(stray)}) but no metadata file "
                                 f"{store.meta_path.name}; {store.rebuild_hint()}")
            return store
        if not writable:
            store.shard_root = _temporary_copy(folder, store.collections)
            logger.warning("the index store %s is read-only; searching a temporary copy in %s", folder, store.shard_root)
        else:  # opening maps the shards' files, which can fill their holes on some file systems (tmpfs)
            holes = sum(_sparse_bytes(folder / c / "segments") for c in store.collections)
            store._check_space(holes, headroom=SPACE_HEADROOM if create else READ_HEADROOM)
        store._probe(meta)
        return store

    def _probe(self, meta: dict) -> None:
        """Load both shards and touch every structure a search uses, so damage shows now, as one line."""
        edge = edge_module()
        recorded = meta.get("points") if isinstance(meta.get("points"), dict) else {}
        for collection, dim_key, short in ((self.text_collection, "text_dim", "text"), (self.image_collection, "image_dim", "images")):
            path = self.shard_root / collection
            expected = recorded.get(short) if isinstance(recorded.get(short), int) else 0
            if not (path / "segments").is_dir():
                if expected:
                    raise StoreError(f"the index store {self.folder} is damaged (the collection folder {collection} is missing or empty "
                                     f"but {expected} points were indexed); {self.rebuild_hint(meta)}")
                continue
            shard = open_shard(str(path), self._describe)
            count = edge_call(self._describe, shard.count, edge.CountRequest(exact=True))
            if count == 0 and expected:
                raise StoreError(f"the index store {self.folder} is damaged (the collection {collection} holds no points but {expected} "
                                 f"were indexed); {self.rebuild_hint(meta)}")
            if count:
                edge_call(self._describe, shard.scroll, edge.ScrollRequest(limit=1, with_payload=True, with_vector=True))
                probe = edge.QueryRequest(limit=1, query=edge.Query.Nearest([1.0] * meta[dim_key]), with_payload=True)
                edge_call(self._describe, shard.query, probe)

    # ---------------------------------------------------------------------------------- messages
    @property
    def location(self) -> str:
        return str(self.folder)

    @property
    def meta_location(self) -> str:
        return str(self.meta_path)

    @property
    def meta_path(self) -> Path:
        return self.folder / f"{self.prefix}{META_SUFFIX}"

    def rebuild_hint(self, meta: dict | None = None) -> str:
        root = (meta or {}).get("root") if isinstance(meta, dict) else None
        if not isinstance(root, str) or not root:
            root = str(self.folder.parent) if self.folder.name == DEFAULT_STORE_DIRNAME else "FOLDER"
        args = "" if _same_path(self.folder, Path(root) / DEFAULT_STORE_DIRNAME) else f" --store {self.folder}"
        args += "" if self.prefix == "mmrag" else f" --collection {self.prefix}"
        return f"run `mmrag index {root} --rebuild{args}` to index the folder again into a fresh store"

    def own_store_hint(self) -> str:
        return "its default FOLDER/.mmrag, or another --store"

    def _describe(self, kind: str, exc: BaseException) -> StoreError:
        if kind == "locked":
            return StoreError(f"the index store {self.folder} is in use by another process (an `mmrag index` still running?); wait for "
                              "it to finish, or use a Qdrant server (--qdrant-url) for concurrent access")
        if kind == "no_space":
            return StoreError(f"no space left on the device holding {self.folder}; free some space and run the command again "
                              "(indexing resumes where it stopped)")
        if kind == "not_writable":
            return StoreError(f"the index store {self.folder} is not writable ({short_reason(exc, 100)}); make it writable, or index "
                              "into another --store")
        meta = self._meta_cache
        return StoreError(f"the index store {self.folder} is damaged ({short_reason(exc)}); {self.rebuild_hint(meta)}")

    # ------------------------------------------------------------------------------------ metadata
    def _read_raw_meta(self) -> dict | None:
        try:
            text = self.meta_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read the index metadata {self.meta_path} ({exc.strerror or exc}); make it readable") from None
        try:
            meta = json.loads(text.decode("utf-8"), parse_int=_bounded_int)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            what = "empty file" if not text.strip() else f"not valid JSON: {short_reason(exc, 80)}"
            raise StoreError(f"the index metadata {self.meta_path} is damaged ({what}); {self.rebuild_hint()}") from None
        return meta

    def read_meta(self) -> dict | None:
        meta = super().read_meta()
        self._meta_cache = meta
        if meta is not None and not self.allow_moved:
            recorded = meta.get("store_path")
            if isinstance(recorded, str) and not _same_path(recorded, self.folder):
                raise StoreError(
                    f"the index store {self.folder} was written at {recorded} and has been moved or copied here (e.g. inside an archive "
                    f"or a clone), so its contents are not trusted; {self.rebuild_hint()}, or, if you moved it yourself, "
                    f"`mmrag export FILE --store {self.folder}` then `mmrag import FILE FOLDER`")
        return meta

    def write_meta(self, meta: dict) -> None:
        meta = dict(meta) | {"store_format": STORE_FORMAT, "store_path": os.path.realpath(self.folder),
                             "points": {"text": self.count(self.text_collection), "images": self.count(self.image_collection)}}
        self._write_meta_file(meta)

    def _write_meta_file(self, meta: dict) -> None:
        self._check_space(len(json.dumps(meta)))
        tmp = self.meta_path.with_name(self.meta_path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(meta, handle, indent=1, ensure_ascii=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.meta_path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._describe("no_space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "not_writable", exc) from None
        self._meta_cache = meta

    # --------------------------------------------------------------------------------- collections
    def _shard_path(self, collection: str) -> Path:
        return self.shard_root / collection

    def _shard(self, collection: str):
        path = self._shard_path(collection)
        return open_shard(str(path), self._describe) if (path / "segments").is_dir() else None

    def ensure_collections(self, text_dim: int, image_dim: int) -> None:
        for collection, dim in ((self.text_collection, text_dim), (self.image_collection, image_dim)):
            if not (self._shard_path(collection) / "segments").is_dir():
                self._check_space(0)
                create_shard(self._shard_path(collection), dim, self._describe)

    def drop(self) -> None:
        for collection in self.collections:
            path = self.folder / collection
            close_shard(str(path))
            if path.exists() and not _looks_like_shard(path):
                raise StoreError(f"{path} is not a Qdrant Edge shard, so --rebuild does not delete it; move it out of the store folder")
            _remove(path)
        legacy = self.folder / LEGACY_DIRNAME
        if legacy.is_dir() and _is_legacy(legacy):
            _remove(legacy)
        for path in (self.meta_path, self.meta_path.with_name(self.meta_path.name + ".tmp")):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot delete {path} ({exc.strerror or exc}); delete it by hand") from None
        self._meta_cache = None

    def count(self, collection: str) -> int:
        shard = self._shard(collection)
        return 0 if shard is None else edge_call(self._describe, shard.count, edge_module().CountRequest(exact=True))

    def vector_store(self, collection: str) -> EdgeVectorStore:
        return EdgeVectorStore(path=str(self._shard_path(collection)), collection_name=collection,
                               describe=self._describe, before_write=self._before_point_write)

    def iter_points(self, collection: str, fields: list[str] | None = None, with_vectors: bool = False,
                    batch_size: int = 1024) -> Iterator[RawPoint]:
        shard = self._shard(collection)
        if shard is None:
            return
        edge = edge_module()
        offset = None
        while True:
            request = edge.ScrollRequest(offset=offset, limit=batch_size, with_payload=list(fields) if fields else True,
                                         with_vector=with_vectors)
            records, offset = edge_call(self._describe, shard.scroll, request)
            for record in records:
                yield RawPoint.from_record(record)
            if offset is None:
                return

    def upsert_points(self, collection: str, points: list[RawPoint]) -> None:
        if not points:
            return
        edge = edge_module()
        shard = self._shard(collection)
        if shard is None:
            raise StoreError(f"the collection {collection} does not exist in {self.folder}; create the index first")
        self._before_point_write(sum(4 * len(p.vector or ()) + len(json.dumps(p.payload)) for p in points))
        converted = [edge.Point(p.id, p.vector, encode_payload(p.payload)) for p in points]
        edge_call(self._describe, shard.update, edge.UpdateOperation.upsert_points(converted))
        note_written(str(self._shard_path(collection)), shard, sum(4 * len(p.vector or ()) for p in points), self._describe)

    def delete_ids(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if not ids:
            return
        edge = edge_module()
        self._mark_writing()
        for collection in self.collections:
            shard = self._shard(collection)
            if shard is not None:
                edge_call(self._describe, shard.update, edge.UpdateOperation.delete_points(ids))

    def finish(self) -> None:
        """Flush both shards, build their HNSW graphs where the optimizer wants them, and record the counts."""
        if not self._written:
            return
        self._written = False
        for collection in self.collections:
            shard = self._shard(collection)
            if shard is None:
                continue
            edge_call(self._describe, shard.flush)
            self._check_space(int(1.5 * _disk_usage(self._shard_path(collection) / "segments")))  # optimizing rewrites segments
            points = edge_call(self._describe, shard.count, edge_module().CountRequest(exact=False))
            with _elapsed_bar(f"building the vector index of {collection} ({points:,} points)",
                              self.show_progress and points >= PROGRESS_MIN_POINTS):
                edge_call(self._describe, shard.optimize)
            mark_indexed(str(self._shard_path(collection)))
        if self._meta_cache is not None:
            self.write_meta({k: v for k, v in self._meta_cache.items() if k not in ("store_format", "store_path", "points")})

    def close(self) -> None:
        for collection in self.collections:
            close_shard(str(self._shard_path(collection)))
        if self.shard_root != self.folder:
            shutil.rmtree(self.shard_root, ignore_errors=True)

    # --------------------------------------------------------------------------------------- space
    def _before_point_write(self, write_bytes: int) -> None:
        self._check_space(3 * write_bytes)  # the write-ahead log, the segment, the payload indexes
        self._mark_writing()

    def _mark_writing(self) -> None:
        """On a run's first write, record that the counts are unknown until finish() (a killed run leaves them so)."""
        if not self._written and self._meta_cache is not None and self._meta_cache.get("points") is not None:
            self._write_meta_file(self._meta_cache | {"points": None})
        self._written = True

    def _check_space(self, write_bytes: int, headroom: int = SPACE_HEADROOM) -> None:
        """Refuse a write that could fill the device (the engine would die of SIGBUS on a full disk)."""
        needed = write_bytes + headroom
        try:
            free = shutil.disk_usage(self.folder).free
        except OSError:
            return
        if free < needed:
            raise StoreError(f"not enough free space on the device holding {self.folder} ({free / 2**20:.0f} MiB free, this write needs "
                             f"about {needed / 2**20:.0f} MiB); free some space and run the command again (indexing resumes where it stopped)")


@contextmanager
def _elapsed_bar(description: str, enabled: bool) -> Iterator[None]:
    """A line that counts the seconds of one long engine call (written to the real stderr, which the call redirects)."""
    if not enabled:
        yield
        return
    stream = os.fdopen(os.dup(2), "w", buffering=1)
    bar = tqdm(desc=description, bar_format="{desc}: {elapsed}", file=stream)
    stop = threading.Event()
    ticker = threading.Thread(target=lambda: [bar.refresh() for _ in iter(lambda: stop.wait(1.0), True)], daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        bar.close()
        stream.close()


def _bounded_int(text: str) -> int:
    if len(text) > 19:
        raise ValueError(f"integer with {len(text)} digits")
    return int(text)


def _is_legacy(path: Path) -> bool:
    return any((path / name).exists() for name in ("meta.json", "collection", ".lock"))


def _looks_like_shard(path: Path) -> bool:
    return path.is_dir() and (not any(path.iterdir()) or any((path / n).exists() for n in ("edge_config.json", "segments", "wal")))


def _remove(path: Path) -> None:
    def fail(_function, failed_path, exc_info):
        exc = exc_info[1]
        raise StoreError(f"cannot delete {failed_path} ({getattr(exc, 'strerror', None) or exc}); delete {path} by hand")

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=fail)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _writable(folder: Path, paths: list[Path]) -> bool:
    if not os.access(folder, os.W_OK):
        return False
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):  # noqa: B007
                if not all(os.access(os.path.join(root, n), os.W_OK) for n in (*dirs, *files)):
                    return False
        elif path.exists() and not os.access(path, os.W_OK):
            return False
    return True


def _disk_usage(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def _sparse_bytes(path: Path) -> int:
    """Bytes of holes in the segments' vector and payload-index files under ``path`` (what opening maps and may allocate)."""
    total = 0
    for root, _, files in os.walk(path):
        if "vector_storage" not in root and "payload_index" not in root:
            continue
        for name in files:
            try:
                info = os.stat(os.path.join(root, name))
            except OSError:
                continue
            total += max(0, info.st_size - info.st_blocks * 512)
    return total


def _temporary_copy(folder: Path, collections: Iterable[str]) -> Path:
    """Copy the shards of a read-only store to a temporary folder (holes stay holes), removed at exit."""
    target = Path(tempfile.mkdtemp(prefix="mmrag-readonly-"))  # removed by close() (at exit: close_local_clients)
    try:
        for collection in collections:
            source = folder / collection
            if source.is_dir():
                shutil.copytree(source, target / collection, copy_function=_sparse_copy)
        for root, dirs, _ in os.walk(target):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o700)
    except OSError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise StoreError(f"the index store {folder} is read-only and a temporary copy could not be made in {tempfile.gettempdir()} "
                         f"({exc.strerror or exc}); make the store writable, or set TMPDIR to a folder with space") from None
    return target


def _sparse_copy(source: str, target: str) -> None:
    block = 1 << 20
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(block):
            if chunk.count(0) == len(chunk):
                dst.seek(len(chunk), os.SEEK_CUR)
            else:
                dst.write(chunk)
        dst.truncate()
    shutil.copymode(source, target)
    os.chmod(target, os.stat(target).st_mode | 0o200)
