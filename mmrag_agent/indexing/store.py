"""Storage of the multimodal index: one interface, two back ends, and what both record.

An index with collection prefix ``P`` (default ``mmrag``) has a text collection ``P_text``, an image collection
``P_images`` and its metadata (models, dimensions, the indexed root). Two back ends hold them:

* embedded (default): Qdrant Edge shards in a store folder, ``FOLDER/.mmrag`` by default
  (:class:`~mmrag_agent.indexing.edge_store.EdgeIndexStore`);
* a Qdrant server (``qdrant_url``): three collections, the metadata in ``P_meta``
  (:class:`~mmrag_agent.indexing.server_store.ServerIndexStore`).

Both write the same point ids (:func:`point_id`), payloads and filters, so an index moves between them with
``mmrag export`` / ``mmrag import``. Every failure of a back end surfaces as :class:`StoreError`, one line
that says what to do.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

#: Name of the store folder created inside an indexed folder when no ``store`` is given.
DEFAULT_STORE_DIRNAME = ".mmrag"
#: Version of the point ids, payloads and metadata (shared by both back ends and export files).
INDEX_FORMAT_VERSION = 1
_NAMESPACE = uuid.UUID("6b1f9a64-53c1-4c3e-9a0e-2f7d4f1f0a11")
_STATE_FIELDS = ["rel_path", "content_key", "chunk_index", "n_chunks"]
_META_FIELDS = {"text_model": str, "image_model": str, "text_dim": int, "image_dim": int, "root": str, "format_version": int}
# Payload strings that are not valid Unicode (a non-UTF-8 file name decoded with surrogateescape) are stored as
# this marker + the hex of their surrogatepass encoding; strings that start with the marker are escaped the same way.
_BYTES_MARKER = "\ufffemmrag-bytes:"


class StoreError(RuntimeError):
    """The index store cannot be used as asked; the message (one line) says why and what to do."""


def _uuid5(name: str) -> str:
    """``uuid.uuid5(_NAMESPACE, name)`` for any Python str (lone surrogates are encoded as the bytes they stand for)."""
    digest = hashlib.sha1(_NAMESPACE.bytes + name.encode("utf-8", "surrogateescape")).digest()
    return str(uuid.UUID(bytes=digest[:16], version=5))


def point_id(rel_path: str, content_key: str, chunk_index: int) -> str:
    """Deterministic point id of chunk ``chunk_index`` of the file at ``rel_path`` with ``content_key``.

    Any str is accepted, including a non-UTF-8 file name decoded with ``surrogateescape``; for valid text the
    id equals ``uuid5(namespace, "rel_path\\ncontent_key\\nchunk_index")``, as in every earlier version.
    """
    return _uuid5(f"{rel_path}\n{content_key}\n{chunk_index}")


def document_id(rel_path: str) -> str:
    """The LlamaIndex ``ref_doc_id`` of a file (stable across edits, so ``delete_ref_doc`` works)."""
    return _uuid5(f"doc\n{rel_path}")


def encode_payload(value: Any) -> Any:
    """``value`` with every str made storable as UTF-8 (reversibly, see :func:`decode_payload`)."""
    if isinstance(value, str):
        if value.startswith(_BYTES_MARKER) or not value.isascii() and not _is_utf8(value):
            return _BYTES_MARKER + value.encode("utf-8", "surrogatepass").hex()
        return value
    if isinstance(value, dict):
        return {encode_payload(k): encode_payload(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_payload(v) for v in value]
    return value


def decode_payload(value: Any) -> Any:
    """The inverse of :func:`encode_payload`."""
    if isinstance(value, str):
        if value.startswith(_BYTES_MARKER):
            try:
                return bytes.fromhex(value[len(_BYTES_MARKER):]).decode("utf-8", "surrogatepass")
            except ValueError:
                return value
        return value
    if isinstance(value, dict):
        return {decode_payload(k): decode_payload(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_payload(v) for v in value]
    return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class FileState:
    """What the store holds for one file: its content keys and point ids by chunk."""

    content_keys: set[str] = field(default_factory=set)
    ids: set[str] = field(default_factory=set)
    chunks: dict[str, set[int]] = field(default_factory=dict)  # content key -> chunk indices present
    n_chunks: dict[str, int] = field(default_factory=dict)  # content key -> expected chunk count

    def is_complete(self, content_key: str) -> bool:
        n = self.n_chunks.get(content_key)
        return n is not None and self.chunks.get(content_key) == set(range(n))


@dataclass
class RawPoint:
    """A point as both back ends store it: id, dense vector and (decoded) payload."""

    id: str
    vector: list[float] | None
    payload: dict

    @classmethod
    def from_record(cls, record: Any) -> "RawPoint":
        """From a scrolled Qdrant Edge or qdrant-client record (``id``, ``vector``: a list or ``{"": list}``, ``payload``)."""
        vector = record.vector.get("") if isinstance(record.vector, dict) else record.vector
        return cls(str(record.id), list(vector) if vector is not None else None, decode_payload(dict(record.payload or {})))


class IndexStore(ABC):
    """The collections of one index and the operations the indexer, the loader and export/import need.

    Subclasses implement the storage; the bookkeeping shared by both back ends (per-file state, metadata
    checks, which root the index belongs to) lives here.
    """

    #: Short name of the back end, for messages ("embedded store", "Qdrant server").
    kind: str = "store"
    #: Whether long store work (building the vector index) shows progress.
    show_progress: bool = False

    def __init__(self, prefix: str = "mmrag") -> None:
        self.prefix = prefix
        self.text_collection = f"{prefix}_text"
        self.image_collection = f"{prefix}_images"
        self.meta_collection = f"{prefix}_meta"

    @property
    def collections(self) -> tuple[str, str]:
        return self.text_collection, self.image_collection

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the index lives, for messages (a folder or ``URL collections P_*``)."""

    @property
    def meta_location(self) -> str:
        """Where the metadata lives, for messages."""
        return f"of {self.location}"

    # -- metadata
    @abstractmethod
    def _read_raw_meta(self) -> dict | None:
        """The stored metadata as written, or None when there is no index."""

    @abstractmethod
    def write_meta(self, meta: dict) -> None:
        """Record the index metadata (replacing what was there)."""

    def read_meta(self) -> dict | None:
        """The index metadata, checked: None when there is no index; :class:`StoreError` when it is damaged."""
        meta = self._read_raw_meta()
        if meta is None:
            return None
        problem = _meta_problem(meta)
        if problem:
            raise StoreError(f"the index metadata {self.meta_location} is damaged ({problem}); {self.rebuild_hint(meta)}")
        if meta["format_version"] > INDEX_FORMAT_VERSION:
            raise StoreError(f"the index in {self.location} was written by a newer mmrag-agent (format {meta['format_version']}); "
                             "upgrade mmrag-agent, or rebuild it with this version (--rebuild)")
        return meta

    def rebuild_hint(self, meta: dict | None = None) -> str:
        """The fix for a store that cannot be used: the rebuild command for its folder."""
        root = (meta or {}).get("root") if isinstance(meta, dict) else None
        folder = root if isinstance(root, str) and root else "FOLDER"
        return f"run `mmrag index {folder} --rebuild` to index the folder again into a fresh store"

    def check_owner(self, root: Path, meta: dict) -> None:
        """Refuse to index ``root`` into an index that belongs to another folder (it would delete that folder's points)."""
        recorded = meta["root"]
        if not _same_path(recorded, root):
            raise StoreError(
                f"the index in {self.location} belongs to the folder {recorded}, not {root}; index each folder into its own "
                f"store ({self.own_store_hint()}), or pass --rebuild to replace that index with this folder's"
            )

    def own_store_hint(self) -> str:
        return "e.g. its default FOLDER/.mmrag"

    # -- collections
    @abstractmethod
    def ensure_collections(self, text_dim: int, image_dim: int) -> None:
        """Create the text and image collections (HNSW, payload indexes) when missing."""

    @abstractmethod
    def drop(self) -> None:
        """Delete the index (collections and metadata) without reading it: works on a damaged index too."""

    @abstractmethod
    def count(self, collection: str) -> int:
        """Number of points in ``collection`` (0 when it does not exist)."""

    @abstractmethod
    def vector_store(self, collection: str):
        """A LlamaIndex ``BasePydanticVectorStore`` over ``collection``."""

    @abstractmethod
    def iter_points(self, collection: str, fields: list[str] | None = None, with_vectors: bool = False,
                    batch_size: int = 1024) -> Iterator[RawPoint]:
        """Every point of ``collection`` (payload restricted to ``fields`` when given), in pages of ``batch_size``."""

    @abstractmethod
    def upsert_points(self, collection: str, points: list[RawPoint]) -> None:
        """Write points as they are (used by import)."""

    @abstractmethod
    def delete_ids(self, ids: Iterable[str]) -> None:
        """Delete these point ids from both collections."""

    def finish(self) -> None:
        """Make the writes of a run durable and searchable (flush, build the vector index). No-op by default."""

    def close(self) -> None:
        """Release what this store holds (files, locks, connections)."""

    # -- per-file state
    def file_states(self) -> dict[str, FileState]:
        """Scan both collections' payloads (no vectors) into a state per relative path."""
        states: dict[str, FileState] = {}
        for collection in self.collections:
            for point in self.iter_points(collection, _STATE_FIELDS, batch_size=2048):
                payload = point.payload
                rel = payload.get("rel_path")
                if not isinstance(rel, str):
                    continue
                state = states.setdefault(rel, FileState())
                key = str(payload.get("content_key", ""))
                state.content_keys.add(key)
                state.ids.add(point.id)
                state.chunks.setdefault(key, set()).add(_as_int(payload.get("chunk_index")))
                state.n_chunks[key] = _as_int(payload.get("n_chunks"))
        return states


def _as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def _meta_problem(meta: Any) -> str | None:
    if not isinstance(meta, dict):
        return "not a JSON object"
    for key, kind in _META_FIELDS.items():
        if key not in meta:
            return f"field {key!r} is missing"
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            return f"field {key!r} is not a{'n integer' if kind is int else ' string'}"
    return None


def _same_path(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same folder (by identity when both exist, else by their resolved text)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)
