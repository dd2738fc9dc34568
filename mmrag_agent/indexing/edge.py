"""A LlamaIndex vector store over one Qdrant Edge shard (Qdrant's engine in-process: HNSW, payload indexes).

:class:`EdgeVectorStore` is the embedded back end's collection: add, delete by ref doc or node ids, query with
``MetadataFilters``, ``get_nodes``, and their async forms. Every call into the engine goes through
:func:`edge_call`, which turns the engine's errors (and its panics, whose Rust backtrace it keeps off the
terminal) into one :class:`~mmrag_agent.indexing.store.StoreError` line.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Sequence

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from .store import StoreError, decode_payload, encode_payload

#: Payload fields with a keyword index: what the indexer and LlamaIndex filter and delete by. The indexes live on
#: disk (memory-mapped): in memory, each one costs ~1.7 s per million points every time a store is opened.
INDEXED_FIELDS = ("rel_path", "doc_id")
#: HNSW search breadth (ef, per segment) of :class:`EdgeVectorStore` queries without search params. Measured on
#: ``benchmarks/store_scale.py``'s clustered 384-d points, top 20 against exact search: 200,000 points in one
#: segment, recall 1.0 at ef 64, 128 and 256 (p50 2.0, 2.3, 3.3 ms); 60,000 points in three segments, recall
#: 0.992 / 0.999 / 1.0 at ef 32 / 64 / 128. The engine's own default (no ef) searched wider and slower
#: (60,000 points: p50 7.1 ms against 4.6-5.2 ms at 128) for the same recall.
DEFAULT_HNSW_EF = 128
_DOC_ID_KEY = "doc_id"  # where LlamaIndex puts ref_doc_id (as QdrantVectorStore does)


def edge_module():
    """The ``qdrant_edge`` module, or a one-line install hint."""
    try:
        import qdrant_edge
    except ImportError:
        raise StoreError("the embedded store needs Qdrant Edge: pip install qdrant-edge-py") from None
    return qdrant_edge


# ------------------------------------------------------------------------------------------- errors
_call_lock = threading.RLock()
_stderr_sink = None


@contextmanager
def _rust_stderr_captured() -> Iterator[None]:
    """Send fd 2 to a scratch file while the engine runs (a panic prints a Rust backtrace there)."""
    global _stderr_sink
    if _stderr_sink is None:
        _stderr_sink = tempfile.TemporaryFile()
    sink = _stderr_sink
    sink.seek(0)
    sink.truncate()
    saved = os.dup(2)
    try:
        os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def failure_kind(exc: BaseException) -> str:
    """``locked``, ``no_space``, ``not_writable``, ``missing`` or ``damaged``, from an engine error."""
    text = str(exc)
    if isinstance(exc, OSError):
        import errno

        return {errno.ENOSPC: "no_space", errno.EDQUOT: "no_space", errno.EACCES: "not_writable", errno.EPERM: "not_writable",
                errno.EROFS: "not_writable", errno.ENOENT: "missing"}.get(exc.errno or 0, "damaged")
    if "WouldBlock" in text or "Resource temporarily unavailable" in text:
        return "locked"
    if "No space left" in text or "os error 28" in text or "os error 122" in text:
        return "no_space"
    if "Permission denied" in text or "os error 13" in text or "Read-only file system" in text or "os error 30" in text:
        return "not_writable"
    return "damaged"


def edge_call(describe: Callable[[str, BaseException], StoreError], fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run an engine call; any error (panics included) becomes ``describe(kind, exc)``, raised without a chain."""
    with _call_lock, _rust_stderr_captured():
        try:
            return fn(*args, **kwargs)
        except (KeyboardInterrupt, SystemExit, GeneratorExit, StoreError):
            raise
        except BaseException as exc:  # pyo3's PanicException derives from BaseException
            failure = exc
    raise describe(failure_kind(failure), failure) from None


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """The first line of an engine error, without its generic prefix, cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    for prefix in ("Service runtime error: ", "Service internal error: "):
        while text.startswith(prefix):
            text = text[len(prefix):]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _generic_error(kind: str, exc: BaseException) -> StoreError:
    return StoreError(f"Qdrant Edge: {kind.replace('_', ' ')} ({short_reason(exc)})")


# -------------------------------------------------------------------------------------------- shards
_shards: dict[str, Any] = {}


def open_shard(path: str, describe: Callable[[str, BaseException], StoreError] = _generic_error, config: Any = None) -> Any:
    """The process's one open ``EdgeShard`` at ``path`` (the engine locks a shard to one opener); created when ``config`` is given."""
    key = os.path.realpath(path)
    shard = _shards.get(key)
    if shard is None:
        edge = edge_module()
        if config is not None:
            shard = edge_call(describe, edge.EdgeShard.create, key, config)
        else:
            shard = edge_call(describe, edge.EdgeShard.load, key)
        _shards[key] = shard
    return shard


def close_shard(path: str) -> None:
    _unindexed_bytes.pop(os.path.realpath(path), None)
    shard = _shards.pop(os.path.realpath(path), None)
    if shard is not None:
        try:
            edge_call(_generic_error, shard.close)
        except StoreError:
            pass


def close_shards() -> None:
    """Close every shard opened in this process (flushes them and releases their locks)."""
    for key in list(_shards):
        close_shard(key)


def vector_quantization(edge: Any) -> Any:
    """The quantized copy of the vectors the search runs on, read into memory at open (see :func:`create_shard`):
    TurboQuant at 2 bits per dimension (96 bytes for 384 dimensions)."""
    return edge.TurboQuantQuantizationConfig(bits=edge.TurboQuantBitSize.Bits2, memory=edge.Memory.Cached)


def quantized_search(edge: Any) -> Any:
    """How a search uses the quantized vectors: the best ``oversampling`` x top-k are rescored with the original
    vectors (read from disk), so the results are ranked by, and return, the exact scores."""
    return edge.QuantizationSearchParams(rescore=True, oversampling=QUANTIZED_OVERSAMPLING)


#: Candidates rescored with the original vectors, per result asked for; each costs a read from disk (about 0.06 ms
#: here: at 100,000 points TurboQuant 2-bit at 8 took p50 12.6 ms). Recall@10 against exact search on 8,000
#: clustered 384-d points (the store test's data): TurboQuant 4-bit 0.95 at 1.5, 0.996 at 2; 2-bit 0.874 at 3,
#: 0.934 at 4, 0.964 at 6, 0.996 at 8; int8 scalar 1.0 at 2; one-bit binary 0.672 at 4, 0.942 at 10.
QUANTIZED_OVERSAMPLING = 5.0


def create_shard(path: str | os.PathLike, dim: int, describe: Callable[[str, BaseException], StoreError] = _generic_error) -> Any:
    """Create an empty shard for ``dim``-d cosine vectors with on-disk keyword indexes on :data:`INDEXED_FIELDS`,
    and keep it open.

    Settings (measured with ``benchmarks/store_scale.py``'s generated points, 384-d, on a 2-core machine):

    * the search runs on a quantized copy of the vectors read into memory at open (:func:`vector_quantization`,
      TurboQuant 2-bit: 96 MB per 1,000,000 384-d points), and the best :data:`QUANTIZED_OVERSAMPLING` x top-k
      are rescored with the original vectors. Without it the first searches after opening paid for reading the
      float vectors they touch from disk (1,000,000 points: p50 38.9 / p95 136.7 ms with the vectors memory-mapped,
      16.3 / 39.6 ms and open 2.29 s with all of them read at open); with int8 scalar quantization (384 MB) the
      searches took p95 8.2 ms but opening 3.40 s; with TurboQuant 2-bit (96 MB) and 8x rescoring, for the
      recall of clustered points, open 1.31 s and p95 20.9 ms (rescoring reads from disk); with TurboQuant
      4-bit (192 MB) and 2x rescoring, open 2.96 s and p95 19.7 ms. At 200,000 points, open / p95 / recall@20 (oversampling): int8
      0.90 s / 10.8 ms / 1.000 (2), TurboQuant 2-bit 0.40 s / 11.9 ms / 0.995 (3), binary 1-bit 0.23 s / 6.6 ms /
      0.986 (4), but on the more clustered points of the store test binary kept 0.67 of the exact top 10.
    * original vectors ``Memory.Cold`` (memory-mapped, only the rescored hits are read).
    * HNSW graph ``Memory.Cached`` (read at open; 11 MB at 200,000 points): with the graph Cold the first
      searches after opening a store whose files are out of the page cache were slower (p95 51 vs 35 ms, one run
      each on a busy machine).
    * payload ``Memory.Cold``: only the hits' payloads are read.
    * HNSW m=16, ef_construct=100; segments of at most :data:`SEGMENT_BYTES` of vectors
      (see :func:`note_written`), which the optimizer does not merge into larger ones
      (``max_segment_size``): on clustered vectors one HNSW graph over all points needs a much larger search
      ef for the same recall than several smaller graphs (200,000 points in clusters of 500: recall@20 0.57 at
      ef=256, 0.85 at ef=1024; in clusters of 100: 1.0 at ef=64). At 1,000,000 points the writes made 7 segments
      (6 HNSW graphs of ~175,000 points and an empty one to append to) and recall@20 was 1.000 at ef=128, against
      0.82 for one graph at the engine's default ef.
    """
    edge = edge_module()
    config = edge.EdgeConfig(
        vectors=edge.EdgeVectorParams(size=dim, distance=edge.Distance.Cosine, memory=edge.Memory.Cold,
                                      quantization_config=vector_quantization(edge)),
        hnsw_config=edge.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000, memory=edge.Memory.Cached),
        payload_memory=edge.Memory.Cold,
        optimizers=edge.EdgeOptimizersConfig(max_segment_size=MAX_SEGMENT_KB))
    shard = open_shard(str(path), describe, config=config)
    for name in INDEXED_FIELDS:
        edge_call(describe, shard.update, edge.UpdateOperation.create_field_index(name, edge.KeywordIndexParams(on_disk=True)))
    return shard


#: Bytes of vectors written to a shard after which :func:`note_written` builds their HNSW graph as a segment of its
#: own (~175,000 points of 384 dimensions), so a large store is searched as several graphs of bounded size.
SEGMENT_BYTES = 256 * 2**20
#: The optimizer's largest merged segment (KB): 1.5 segments, so two full segments are never merged into one.
MAX_SEGMENT_KB = 3 * SEGMENT_BYTES // 2 // 1024
_unindexed_bytes: dict[str, int] = {}


def mark_indexed(path: str) -> None:
    """Forget the bytes counted by :func:`note_written` for ``path`` (its shard was just optimized)."""
    _unindexed_bytes.pop(os.path.realpath(path), None)


def note_written(path: str, shard: Any, vector_bytes: int, describe: Callable[[str, BaseException], StoreError]) -> None:
    """Count vector bytes written to the shard at ``path``; past :data:`SEGMENT_BYTES`, build their HNSW graph now
    (``optimize``), which closes the segment they were written to and starts a new one. The write that crosses
    the limit waits for that build (minutes for a full segment on 2 cores; the end of the run then builds less)."""
    key = os.path.realpath(path)
    total = _unindexed_bytes.get(key, 0) + vector_bytes
    if total >= SEGMENT_BYTES:
        edge_call(describe, shard.flush)
        edge_call(describe, shard.optimize)
        total = 0
    _unindexed_bytes[key] = total


# ------------------------------------------------------------------------------------------- filters
def to_edge_filter(filters: MetadataFilters | None, doc_ids: Sequence[str] | None = None,
                   node_ids: Sequence[str] | None = None):
    """A ``qdrant_edge.Filter`` for LlamaIndex ``MetadataFilters`` plus optional ref-doc and node id restrictions."""
    edge = edge_module()
    must = []
    if doc_ids:
        must.append(edge.FieldCondition(_DOC_ID_KEY, match=edge.MatchAny(list(doc_ids))))
    if node_ids:
        must.append(edge.HasIdCondition(set(node_ids)))
    if filters is not None and filters.filters:
        must.append(_subfilter(edge, filters))
    return edge.Filter(must=must) if must else None


def _subfilter(edge, filters: MetadataFilters):
    conditions = []
    for item in filters.filters:
        if isinstance(item, MetadataFilters):
            if item.filters:
                conditions.append(_subfilter(edge, item))
            continue
        conditions.append(_condition(edge, item.key, item.operator or FilterOperator.EQ, encode_payload(item.value)))
    if filters.condition == FilterCondition.OR:
        return edge.Filter(should=conditions)
    if filters.condition == FilterCondition.NOT:
        return edge.Filter(must_not=conditions)
    return edge.Filter(must=conditions)


def _values(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [v.strip() for v in str(value).split(",")]


def _condition(edge, key: str, op: FilterOperator, value):
    field = edge.FieldCondition
    if op == FilterOperator.EQ:
        if isinstance(value, float):
            return field(key, range=edge.RangeFloat(gte=value, lte=value))
        return field(key, match=edge.MatchValue(value))
    ranges = {FilterOperator.GT: "gt", FilterOperator.GTE: "gte", FilterOperator.LT: "lt", FilterOperator.LTE: "lte"}
    if op in ranges:
        return field(key, range=edge.RangeFloat(**{ranges[op]: float(value)}))
    if op == FilterOperator.NE:
        return field(key, match=edge.MatchExcept([value]))
    if op == FilterOperator.IN:
        return field(key, match=edge.MatchAny(_values(value)))
    if op == FilterOperator.NIN:
        return field(key, match=edge.MatchExcept(_values(value)))
    if op in (FilterOperator.TEXT_MATCH, FilterOperator.TEXT_MATCH_INSENSITIVE):
        return field(key, match=edge.MatchText(str(value)))
    if op == FilterOperator.IS_EMPTY:
        return edge.IsEmptyCondition(key)
    raise NotImplementedError(f"filter operator {op} is not supported by EdgeVectorStore; use EQ, NE, GT, GTE, LT, LTE, IN, NIN, "
                              "TEXT_MATCH or IS_EMPTY")


# -------------------------------------------------------------------------------------- vector store
class EdgeVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over one Qdrant Edge shard (a single-vector cosine collection).

    Points are stored as LlamaIndex's ``QdrantVectorStore`` stores them (the node as JSON in ``_node_content``,
    metadata at the top level, ``doc_id`` for ``delete``), so the same payloads, ids and filters work on a
    Qdrant server.

    Args:
        path: The shard folder (created on the first ``add`` when missing).
        collection_name: Name of the collection the shard holds (for messages and export).
        batch_size: Points per engine update.
        hnsw_ef: HNSW search breadth (ef) for queries without ``search_params``; see :data:`DEFAULT_HNSW_EF`.

    Example:
        >>> store = EdgeVectorStore(path="/tmp/shard", collection_name="docs")
        >>> index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)
    """

    stores_text: bool = True
    flat_metadata: bool = False
    path: str = Field(description="Folder of the Qdrant Edge shard.")
    collection_name: str = Field(default="", description="Name of the collection this shard holds.")
    batch_size: int = Field(default=256, gt=0, description="Points written per engine update.")
    hnsw_ef: Optional[int] = Field(
        default=DEFAULT_HNSW_EF, gt=0,
        description="Candidates the HNSW search keeps per segment (its ef) when a query passes no search_params: higher finds "
                    "more of the exact nearest neighbours and takes longer. None leaves it to the engine's default.")

    _describe: Callable[[str, BaseException], StoreError] = PrivateAttr(default=_generic_error)
    _before_write: Optional[Callable[[int], None]] = PrivateAttr(default=None)

    def __init__(self, path: str, collection_name: str = "", batch_size: int = 256,
                 describe: Callable[[str, BaseException], StoreError] | None = None,
                 before_write: Callable[[int], None] | None = None, **kwargs: Any) -> None:
        super().__init__(path=str(path), collection_name=collection_name or os.path.basename(str(path)), batch_size=batch_size, **kwargs)
        self._describe = describe or _generic_error
        self._before_write = before_write

    @classmethod
    def class_name(cls) -> str:
        return "EdgeVectorStore"

    @property
    def client(self) -> Any:
        """The open ``qdrant_edge.EdgeShard`` (opened on first use)."""
        return open_shard(self.path, self._describe)

    def _call(self, method: str, *args: Any) -> Any:
        shard = self.client
        return edge_call(self._describe, getattr(shard, method), *args)

    def _ensure_shard(self, dim: int) -> None:
        if os.path.realpath(self.path) not in _shards and not os.path.isdir(os.path.join(self.path, "segments")):
            create_shard(self.path, dim, self._describe)

    # -- writes
    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> List[str]:
        """Upsert ``nodes`` (with embeddings) under their node ids; returns the ids."""
        if not nodes:
            return []
        edge = edge_module()
        self._ensure_shard(len(nodes[0].get_embedding()))
        ids = []
        for start in range(0, len(nodes), self.batch_size):
            batch = nodes[start:start + self.batch_size]
            vectors = [list(node.get_embedding()) for node in batch]
            payloads = [encode_payload(node_to_metadata_dict(node, remove_text=False, flat_metadata=False)) for node in batch]
            if self._before_write is not None:  # bytes about to be written: vectors, node JSON, the rest of the payload
                self._before_write(sum(4 * len(v) + 2 * len(p.get("_node_content", "")) + 512 for v, p in zip(vectors, payloads)))
            points = [edge.Point(node.node_id, vector, payload) for node, vector, payload in zip(batch, vectors, payloads)]
            self._call("update", edge.UpdateOperation.upsert_points(points))
            note_written(self.path, self.client, sum(4 * len(v) for v in vectors), self._describe)
            ids.extend(node.node_id for node in batch)
        return ids

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the document ``ref_doc_id``."""
        edge = edge_module()
        condition = edge.Filter(must=[edge.FieldCondition(_DOC_ID_KEY, match=edge.MatchValue(ref_doc_id))])
        self._call("update", edge.UpdateOperation.delete_points_by_filter(condition))

    def delete_nodes(self, node_ids: Optional[List[str]] = None, filters: Optional[MetadataFilters] = None,
                     **delete_kwargs: Any) -> None:
        """Delete the nodes with these ids and/or matching ``filters`` (nothing when both are None)."""
        edge = edge_module()
        if node_ids is not None and not filters:
            if node_ids:
                self._call("update", edge.UpdateOperation.delete_points(list(node_ids)))
            return
        condition = to_edge_filter(filters, node_ids=node_ids)
        if condition is not None:
            self._call("update", edge.UpdateOperation.delete_points_by_filter(condition))

    def clear(self) -> None:
        """Delete every point (the shard and its indexes stay)."""
        edge = edge_module()
        self._call("update", edge.UpdateOperation.delete_points_by_filter(edge.Filter()))

    # -- reads
    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The ``similarity_top_k`` nearest nodes to ``query.query_embedding`` that pass its filters.

        ``search_params`` (a ``qdrant_edge.SearchParams``) in ``kwargs`` replaces the default search settings
        (``SearchParams(hnsw_ef=self.hnsw_ef)``), e.g. ``SearchParams(exact=True)`` for a brute-force search.
        """
        if query.mode != VectorStoreQueryMode.DEFAULT:
            raise NotImplementedError(f"query mode {query.mode} is not supported by EdgeVectorStore (dense search only)")
        if query.query_embedding is None:
            raise ValueError("EdgeVectorStore.query needs query.query_embedding")
        edge = edge_module()
        params = kwargs.get("search_params")
        if params is None and self.hnsw_ef is not None:
            params = edge.SearchParams(hnsw_ef=self.hnsw_ef, quantization=quantized_search(edge))
        request = edge.QueryRequest(limit=query.similarity_top_k, query=edge.Query.Nearest(list(query.query_embedding)),
                                    filter=to_edge_filter(query.filters, query.doc_ids, query.node_ids),
                                    with_payload=True, with_vector=False, params=params)
        return self._to_result(self._call("query", request), scored=True)

    def get_nodes(self, node_ids: Optional[List[str]] = None, filters: Optional[MetadataFilters] = None,
                  limit: Optional[int] = None) -> List[BaseNode]:
        """The stored nodes with these ids and/or matching ``filters`` (with their embeddings)."""
        edge = edge_module()
        condition = to_edge_filter(filters, node_ids=node_ids)
        nodes: list[BaseNode] = []
        offset = None
        while limit is None or len(nodes) < limit:
            page = 256 if limit is None else min(256, limit - len(nodes))
            records, offset = self._call("scroll", edge.ScrollRequest(offset=offset, limit=page, filter=condition,
                                                                      with_payload=True, with_vector=True))
            nodes.extend(self._to_result(records, scored=False).nodes)
            if offset is None:
                break
        return nodes

    def _to_result(self, points: list, scored: bool) -> VectorStoreQueryResult:
        nodes, scores, ids = [], [], []
        for point in points:
            node = metadata_dict_to_node(decode_payload(dict(point.payload or {})))
            vector = point.vector
            if isinstance(vector, dict):
                vector = vector.get("")
            if vector and node.embedding is None:
                node.embedding = list(vector)
            nodes.append(node)
            ids.append(str(point.id))
            scores.append(point.score if scored else 1.0)
        return VectorStoreQueryResult(nodes=nodes, similarities=scores, ids=ids)

    # -- async: the engine is in-process and blocking, so run it off the event loop
    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> List[str]:
        return await asyncio.to_thread(self.add, nodes, **kwargs)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete, ref_doc_id, **delete_kwargs)

    async def adelete_nodes(self, node_ids: Optional[List[str]] = None, filters: Optional[MetadataFilters] = None,
                            **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete_nodes, node_ids, filters, **delete_kwargs)

    async def aclear(self) -> None:
        await asyncio.to_thread(self.clear)

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query, **kwargs)

    async def aget_nodes(self, node_ids: Optional[List[str]] = None, filters: Optional[MetadataFilters] = None,
                         limit: Optional[int] = None) -> List[BaseNode]:
        return await asyncio.to_thread(self.get_nodes, node_ids, filters, limit)
