"""The index on a Qdrant server: the way to grow beyond one machine (``--qdrant-url``).

Collections ``P_text`` and ``P_images`` hold the same point ids and payloads as the embedded store (the
vector under the unnamed default vector, as the store always wrote it), ``P_meta`` holds the index metadata
in one point. Every client error becomes one :class:`~mmrag_agent.indexing.store.StoreError` line, and a
server that does not answer fails at open (one request, ``timeout`` seconds), not after a run's work.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from typing import Any, Callable, Iterable, Iterator

from .store import IndexStore, RawPoint, StoreError, _NAMESPACE, decode_payload, encode_payload

_META_ID = str(uuid.uuid5(_NAMESPACE, "index-meta"))
_INDEXED_FIELDS = ("rel_path", "doc_id")


def _client_errors() -> tuple[type[BaseException], ...]:
    import httpx
    from qdrant_client.http.exceptions import ApiException

    errors: list[type[BaseException]] = [ApiException, httpx.HTTPError, ConnectionError, TimeoutError]
    try:
        import grpc

        errors.append(grpc.RpcError)
    except ImportError:
        pass
    return tuple(errors)


def describe_server_error(url: str, exc: BaseException) -> StoreError:
    """One line for a failed request to the server at ``url``."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    source = exc.source if isinstance(exc, ResponseHandlingException) else exc
    if isinstance(exc, UnexpectedResponse):
        if exc.status_code in (401, 403):
            return StoreError(f"the Qdrant server at {url} refused the request (HTTP {exc.status_code}); check the API key (--qdrant-api-key)")
        detail = " ".join(exc.content.decode("utf-8", "replace").split())[:160]
        return StoreError(f"the Qdrant server at {url} answered HTTP {exc.status_code} ({detail}); check the server's log")
    reason = " ".join(str(source).split())[:120] or type(source).__name__
    return StoreError(f"cannot reach the Qdrant server at {url} ({reason}); start it or check --qdrant-url, or index without "
                      "--qdrant-url into the embedded store")


class ServerIndexStore(IndexStore):
    """An index in the collections ``P_text``, ``P_images`` and ``P_meta`` of a Qdrant server (any ``QdrantClient``).

    Args:
        client: A ``qdrant_client.QdrantClient`` (a server; its local mode works too, for tests).
        prefix: Collection-name prefix.
        url: The server's URL, for messages.
    """

    kind = "Qdrant server"

    def __init__(self, client: Any, prefix: str = "mmrag", url: str = "the Qdrant server") -> None:
        super().__init__(prefix)
        self.client = client
        self.url = url
        self._errors = _client_errors()

    @classmethod
    def connect(cls, url: str, api_key: str | None = None, prefix: str = "mmrag", *, rebuild: bool = False,
                timeout: int = 10) -> "ServerIndexStore":
        """Connect to the server at ``url`` and check that it answers (and, unless ``rebuild``, that ``prefix`` is ours)."""
        try:
            from qdrant_client import QdrantClient
        except ImportError:
            raise StoreError("a Qdrant server needs qdrant-client: pip install qdrant-client") from None
        store = cls(QdrantClient(url=url, api_key=api_key, timeout=timeout, check_compatibility=False), prefix, url)
        store.open(rebuild=rebuild)
        return store

    def open(self, rebuild: bool = False) -> None:
        """Check the server answers; drop the index first with ``rebuild``; refuse collections that are not an mmrag index."""
        self._call(self.client.get_collections)
        if rebuild:
            self.drop()
        if self.read_meta() is None:
            stray = [c for c in self.collections if self._exists(c)]
            if stray:
                raise StoreError(f"the collections {', '.join(stray)} on {self.url} hold no mmrag index metadata ({self.meta_collection}); "
                                 "pass another --collection, or --rebuild to replace them")

    def _call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            failure = exc
        raise describe_server_error(self.url, failure) from None

    @property
    def location(self) -> str:
        return f"{self.url} (collections {self.prefix}_*)"

    @property
    def is_local(self) -> bool:
        from qdrant_client.local.qdrant_local import QdrantLocal

        return isinstance(getattr(self.client, "_client", None), QdrantLocal)

    @property
    def meta_location(self) -> str:
        return f"in {self.meta_collection} on {self.url}"

    def rebuild_hint(self, meta: dict | None = None) -> str:
        root = (meta or {}).get("root") if isinstance(meta, dict) else None
        folder = root if isinstance(root, str) and root else "FOLDER"
        collection = "" if self.prefix == "mmrag" else f" --collection {self.prefix}"
        return f"run `mmrag index {folder} --rebuild --qdrant-url {self.url}{collection}` to index the folder again"

    def own_store_hint(self) -> str:
        return "pass another --collection for this folder"

    def _exists(self, collection: str) -> bool:
        return bool(self._call(self.client.collection_exists, collection))

    # -- metadata
    def _read_raw_meta(self) -> dict | None:
        if not self._exists(self.meta_collection):
            return None
        points = self._call(self.client.retrieve, self.meta_collection, ids=[_META_ID], with_payload=True)
        return decode_payload(dict(points[0].payload or {})) if points else None

    def write_meta(self, meta: dict) -> None:
        from qdrant_client import models

        if not self._exists(self.meta_collection):
            self._call(self.client.create_collection, self.meta_collection,
                       vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT))
        self._call(self.client.upsert, self.meta_collection, wait=True,
                   points=[models.PointStruct(id=_META_ID, vector=[1.0], payload=encode_payload(dict(meta)))])

    # -- collections
    def ensure_collections(self, text_dim: int, image_dim: int) -> None:
        from qdrant_client import models

        for name, dim in ((self.text_collection, text_dim), (self.image_collection, image_dim)):
            if self._exists(name):
                continue
            self._call(self.client.create_collection, name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE))
            if not self.is_local:  # qdrant-client's local mode has no payload indexes (and warns)
                for key in _INDEXED_FIELDS:
                    self._call(self.client.create_payload_index, name, field_name=key, field_schema=models.PayloadSchemaType.KEYWORD)

    def drop(self) -> None:
        for name in (*self.collections, self.meta_collection):
            if self._exists(name):
                self._call(self.client.delete_collection, name)

    def count(self, collection: str) -> int:
        if not self._exists(collection):
            return 0
        return self._call(self.client.count, collection, exact=True).count

    def vector_store(self, collection: str):
        return _server_vector_store(self, collection)

    def iter_points(self, collection: str, fields: list[str] | None = None, with_vectors: bool = False,
                    batch_size: int = 1024) -> Iterator[RawPoint]:
        if not self._exists(collection):
            return
        offset = None
        while True:
            points, offset = self._call(self.client.scroll, collection, limit=batch_size, offset=offset,
                                        with_payload=list(fields) if fields else True, with_vectors=with_vectors)
            for point in points:
                yield RawPoint.from_record(point)
            if offset is None:
                return

    def upsert_points(self, collection: str, points: list[RawPoint]) -> None:
        from qdrant_client import models

        if points:
            structs = [models.PointStruct(id=p.id, vector=p.vector, payload=encode_payload(p.payload)) for p in points]
            self._call(self.client.upsert, collection, points=structs, wait=True)

    def delete_ids(self, ids: Iterable[str]) -> None:
        from qdrant_client import models

        ids = list(ids)
        if not ids:
            return
        for collection in self.collections:
            if self._exists(collection):
                self._call(self.client.delete, collection, points_selector=models.PointIdsList(points=ids), wait=True)


def _encoded_filters(filters):
    """``MetadataFilters`` with their values encoded as the payloads are (see ``encode_payload``)."""
    from llama_index.core.vector_stores.types import MetadataFilters

    items = [_encoded_filters(f) if isinstance(f, MetadataFilters) else f.model_copy(update={"value": encode_payload(f.value)})
             for f in filters.filters]
    return filters.model_copy(update={"filters": items})


def _server_vector_store(store: ServerIndexStore, collection: str):
    """LlamaIndex's ``QdrantVectorStore`` over ``collection``, with payload strings kept storable and errors as one line."""
    vector_store = _index_collection_class()(collection_name=collection, client=store.client, batch_size=256)
    vector_store._index_store = store
    return vector_store


@functools.lru_cache(maxsize=1)
def _index_collection_class() -> type:
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    class ServerVectorStore(QdrantVectorStore):
        """``QdrantVectorStore`` that stores any str (see ``encode_payload``) and reports errors as ``StoreError``."""

        _index_store: Any = PrivateAttr(default=None)

        @classmethod
        def class_name(cls) -> str:
            return "MMRAGServerVectorStore"

        def _build_points(self, nodes, sparse_vector_name):
            points, ids = super()._build_points(nodes, sparse_vector_name)
            for point in points:
                point.payload = encode_payload(point.payload)
            return points, ids

        def _build_subfilter(self, filters):
            return super()._build_subfilter(_encoded_filters(filters))

        def parse_to_query_result(self, response):
            for point in response:
                point.payload = decode_payload(dict(point.payload or {}))
            return super().parse_to_query_result(response)

    def translated(method: Callable) -> Callable:
        @functools.wraps(method)
        def call(self, *args: Any, **kwargs: Any) -> Any:
            return self._index_store._call(method, self, *args, **kwargs) if self._index_store else method(self, *args, **kwargs)

        return call

    def threaded(sync_name: str, async_method: Callable) -> Callable:
        @functools.wraps(async_method)
        async def call(self, *args: Any, **kwargs: Any) -> Any:
            if self._aclient is None:  # no async client was given: run the sync call off the event loop
                return await asyncio.to_thread(getattr(self, sync_name), *args, **kwargs)
            try:
                return await async_method(self, *args, **kwargs)
            except self._index_store._errors as exc:
                failure = exc
            raise describe_server_error(self._index_store.url, failure) from None

        return call

    for name in ("add", "delete", "delete_nodes", "get_nodes", "query", "clear"):
        setattr(ServerVectorStore, name, translated(getattr(QdrantVectorStore, name)))
    for sync_name, async_name in (("add", "async_add"), ("delete", "adelete"), ("delete_nodes", "adelete_nodes"),
                                  ("get_nodes", "aget_nodes"), ("query", "aquery"), ("clear", "aclear")):
        setattr(ServerVectorStore, async_name, threaded(sync_name, getattr(QdrantVectorStore, async_name)))
    return ServerVectorStore
