"""One suite of store behaviour, run against every back end: the embedded store (Qdrant Edge), a Qdrant server
(skipped where none answers), and the server code path over qdrant-client's in-memory mode (the same client API,
so the server back end's code runs here too). Expected results are computed independently (numpy cosine over the
points the test wrote, filters applied in Python)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.indices.multi_modal import MultiModalVectorStoreIndex
from llama_index.core.schema import ImageNode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters, VectorStoreQuery

from mmrag_agent.indexing.server_store import ServerIndexStore
from mmrag_agent.indexing.store import StoreError, document_id, point_id
from mmrag_agent.indexing.stores import open_store
from mmrag_agent.indexing.transfer import export_index, import_index

DIM = 8
FILES = ["a.txt", "b.md", "dir/c.pdf", "caf\udce9.txt", "d.html", "e.txt"]  # one name that is not valid UTF-8
SERVER_URL = os.environ.get("MMRAG_TEST_QDRANT_URL", "http://localhost:6333")
BACKENDS = ["edge", "server", "client-api"]


def _server_store() -> ServerIndexStore:
    prefix = f"mmragtest{uuid.uuid4().hex[:8]}"
    try:
        return ServerIndexStore.connect(SERVER_URL, prefix=prefix, timeout=3)
    except StoreError as exc:
        pytest.skip(f"no Qdrant server answers at {SERVER_URL} ({exc}); set MMRAG_TEST_QDRANT_URL to a running server to run this case")


@pytest.fixture(params=BACKENDS)
def make_store(request, tmp_path):
    """A function returning the back end's store (the same index each call, reopened for the embedded store)."""
    if request.param == "edge":
        yield lambda: open_store(tmp_path / "store", create=True)
        return
    if request.param == "server":
        store = _server_store()
    else:
        from qdrant_client import QdrantClient

        store = ServerIndexStore(QdrantClient(location=":memory:"), "mmrag", url=":memory:")
    yield lambda: store
    store.drop()


def _vector(rng) -> list[float]:
    v = rng.standard_normal(DIM)
    return (v / np.linalg.norm(v)).tolist()


def make_nodes(seed: int = 0) -> list[TextNode]:
    rng = np.random.default_rng(seed)
    nodes = []
    for f, rel in enumerate(FILES):
        key = f"key{f}"
        for i in range(5):
            metadata = {"file_path": f"/old/root/{rel}", "rel_path": rel, "content_key": key, "chunk_index": i, "n_chunks": 5,
                        "score_hint": float(f) + i / 10}
            nodes.append(TextNode(id_=point_id(rel, key, i), text=f"chunk {i} of {rel}", metadata=metadata, embedding=_vector(rng),
                                  relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=document_id(rel))}))
    return nodes


def make_image_nodes(seed: int = 1) -> list[ImageNode]:
    rng = np.random.default_rng(seed)
    return [ImageNode(id_=point_id(f"img/{n}.png", "k", 0), text=f"surrogate of picture {n}", image_path=f"/old/root/img/{n}.png",
                      metadata={"file_path": f"/old/root/img/{n}.png", "rel_path": f"img/{n}.png", "content_key": "k", "chunk_index": 0,
                                "n_chunks": 1}, embedding=_vector(rng),
                      relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=document_id(f"img/{n}.png"))}) for n in range(4)]


def filled(make_store):
    store = make_store()
    store.ensure_collections(DIM, DIM)
    store.write_meta({"text_model": "mock", "image_model": "mock", "text_dim": DIM, "image_dim": DIM, "root": "/old/root",
                      "format_version": 1, "image_mode": "surrogate"})
    store.vector_store(store.text_collection).add(make_nodes())
    store.vector_store(store.image_collection).add(make_image_nodes())
    store.finish()
    return store


def expected_ids(nodes, query, k, keep=lambda n: True) -> list[str]:
    kept = [n for n in nodes if keep(n)]
    scores = np.array([n.embedding for n in kept]) @ np.asarray(query)
    return [kept[i].node_id for i in np.argsort(-scores, kind="stable")[:k]]


FILTER_CASES = [
    ("eq", MetadataFilters(filters=[MetadataFilter(key="rel_path", value="b.md")]), lambda n: n.metadata["rel_path"] == "b.md"),
    ("eq-non-utf8", MetadataFilters(filters=[MetadataFilter(key="rel_path", value="caf\udce9.txt")]),
     lambda n: n.metadata["rel_path"] == "caf\udce9.txt"),
    ("in", MetadataFilters(filters=[MetadataFilter(key="rel_path", value=["a.txt", "e.txt"], operator=FilterOperator.IN)]),
     lambda n: n.metadata["rel_path"] in ("a.txt", "e.txt")),
    ("ne", MetadataFilters(filters=[MetadataFilter(key="rel_path", value="a.txt", operator=FilterOperator.NE)]),
     lambda n: n.metadata["rel_path"] != "a.txt"),
    ("range-and", MetadataFilters(filters=[MetadataFilter(key="chunk_index", value=2, operator=FilterOperator.GTE),
                                           MetadataFilter(key="score_hint", value=3.0, operator=FilterOperator.LT)]),
     lambda n: n.metadata["chunk_index"] >= 2 and n.metadata["score_hint"] < 3.0),
    ("or", MetadataFilters(filters=[MetadataFilter(key="rel_path", value="d.html"), MetadataFilter(key="chunk_index", value=0)],
                           condition=FilterCondition.OR), lambda n: n.metadata["rel_path"] == "d.html" or n.metadata["chunk_index"] == 0),
    ("not", MetadataFilters(filters=[MetadataFilter(key="rel_path", value="dir/c.pdf")], condition=FilterCondition.NOT),
     lambda n: n.metadata["rel_path"] != "dir/c.pdf"),
]


@pytest.mark.parametrize("name,filters,keep", FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
def test_query_with_filters_returns_the_exact_nearest_points(make_store, name, filters, keep):
    store = filled(make_store)
    vector_store = store.vector_store(store.text_collection)
    nodes = make_nodes()
    query = _vector(np.random.default_rng(42))
    result = vector_store.query(VectorStoreQuery(query_embedding=query, similarity_top_k=7, filters=filters))
    assert result.ids == expected_ids(nodes, query, 7, keep)
    by_id = {n.node_id: n for n in nodes}
    for node, score in zip(result.nodes, result.similarities):  # payload round trip and cosine scores
        assert node.text == by_id[node.node_id].text and node.metadata == by_id[node.node_id].metadata
        assert score == pytest.approx(float(np.dot(by_id[node.node_id].embedding, query)), abs=1e-5)


def test_query_restricted_to_documents_and_node_ids(make_store):
    store = filled(make_store)
    vector_store = store.vector_store(store.text_collection)
    nodes, query = make_nodes(), _vector(np.random.default_rng(3))
    docs = [document_id("a.txt"), document_id("caf\udce9.txt")]
    result = vector_store.query(VectorStoreQuery(query_embedding=query, similarity_top_k=20, doc_ids=docs))
    assert result.ids == expected_ids(nodes, query, 20, lambda n: n.ref_doc_id in docs)
    some = [nodes[1].node_id, nodes[7].node_id, nodes[20].node_id]
    result = vector_store.query(VectorStoreQuery(query_embedding=query, similarity_top_k=5, node_ids=some))
    assert result.ids == expected_ids(nodes, query, 5, lambda n: n.node_id in some)


def test_delete_by_ref_doc_and_by_node_ids_removes_exactly_those_points(make_store):
    store = filled(make_store)
    vector_store = store.vector_store(store.text_collection)
    nodes = make_nodes()
    vector_store.delete(document_id("b.md"))
    gone = {n.node_id for n in nodes if n.metadata["rel_path"] == "b.md"}
    vector_store.delete_nodes([nodes[0].node_id, nodes[29].node_id])
    gone |= {nodes[0].node_id, nodes[29].node_id}
    vector_store.delete_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="rel_path", value="e.txt")]))
    gone |= {n.node_id for n in nodes if n.metadata["rel_path"] == "e.txt"}
    remaining = {p.id for p in store.iter_points(store.text_collection)}
    assert remaining == {n.node_id for n in nodes} - gone
    store.delete_ids([nodes[12].node_id, make_image_nodes()[0].node_id])  # both collections
    assert store.count(store.text_collection) == len(remaining) - 1 and store.count(store.image_collection) == 3


def test_file_states_get_nodes_and_async_methods(make_store):
    store = filled(make_store)
    states = store.file_states()
    assert set(states) == set(FILES) | {f"img/{n}.png" for n in range(4)}
    weird = states["caf\udce9.txt"]
    assert weird.content_keys == {"key3"} and weird.is_complete("key3") and len(weird.ids) == 5
    assert weird.ids == {point_id("caf\udce9.txt", "key3", i) for i in range(5)}

    vector_store = store.vector_store(store.text_collection)
    nodes = make_nodes()
    got = vector_store.get_nodes(node_ids=[nodes[3].node_id, nodes[17].node_id])
    assert {n.node_id for n in got} == {nodes[3].node_id, nodes[17].node_id}
    assert np.allclose(next(n for n in got if n.node_id == nodes[3].node_id).embedding, nodes[3].embedding, atol=1e-6)
    by_filter = vector_store.get_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="rel_path", value="caf\udce9.txt")]))
    assert sorted(n.metadata["chunk_index"] for n in by_filter) == list(range(5))

    query = VectorStoreQuery(query_embedding=_vector(np.random.default_rng(9)), similarity_top_k=4)
    expected = vector_store.query(query).ids
    extra = TextNode(id_=str(uuid.uuid4()), text="extra", metadata={"rel_path": "x.txt"}, embedding=_vector(np.random.default_rng(8)))

    async def run():
        found = await vector_store.aquery(query)
        await vector_store.async_add([extra])
        await vector_store.adelete(document_id("a.txt"))
        await vector_store.adelete_nodes([nodes[10].node_id])
        return found.ids, [n.node_id for n in await vector_store.aget_nodes(node_ids=[extra.node_id])]

    found, added = asyncio.run(run())
    assert found == expected and added == [extra.node_id]
    assert store.count(store.text_collection) == len(nodes) + 1 - 5 - 1


def test_metadata_and_owner_check(make_store, tmp_path):
    store = filled(make_store)
    meta = store.read_meta()
    assert meta["root"] == "/old/root" and meta["text_dim"] == DIM
    store.check_owner(Path("/old/root"), meta)
    with pytest.raises(StoreError, match="belongs to the folder /old/root, not .*--rebuild"):
        store.check_owner(tmp_path, meta)
    store.drop()
    assert store.read_meta() is None and store.count(store.text_collection) == 0


def test_multimodal_index_on_top_of_the_store(make_store):
    store = filled(make_store)
    index = MultiModalVectorStoreIndex.from_vector_store(vector_store=store.vector_store(store.text_collection),
                                                         embed_model=MockEmbedding(embed_dim=DIM),
                                                         image_vector_store=store.vector_store(store.image_collection),
                                                         image_embed_model=_MockImageEmbedding())
    hits = index.as_retriever(similarity_top_k=3, image_similarity_top_k=2).retrieve("anything")
    assert sum(isinstance(h.node, ImageNode) for h in hits) == 2 and len(hits) == 5
    assert all(h.node.image_path.startswith("/old/root/img/") for h in hits if isinstance(h.node, ImageNode))


def _MockImageEmbedding():
    from llama_index.core.embeddings import MultiModalEmbedding

    class MockImage(MultiModalEmbedding):
        def _get_query_embedding(self, query):
            return [1.0] + [0.0] * (DIM - 1)

        async def _aget_query_embedding(self, query):
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text):
            return self._get_query_embedding(text)

        def _get_image_embedding(self, img_file_path):
            return self._get_query_embedding("")

        async def _aget_image_embedding(self, img_file_path):
            return self._get_query_embedding("")

    return MockImage(model_name="mock-image")


@pytest.mark.parametrize("target", ["edge", "client-api"])
def test_export_then_import_moves_the_index_between_back_ends(make_store, target, tmp_path):
    source = filled(make_store)
    path = tmp_path / "index.jsonl.gz"
    report = export_index(source, path, show_progress=False)
    assert report.points == {"text": len(FILES) * 5, "images": 4}
    if target == "edge":
        dest = open_store(tmp_path / "moved" / ".mmrag", create=True)
    else:
        from qdrant_client import QdrantClient

        dest = ServerIndexStore(QdrantClient(location=":memory:"), "other", url=":memory:")
    new_root = tmp_path / "moved"
    import_index(path, dest, new_root, show_progress=False)
    assert dest.read_meta()["root"] == str(new_root)
    for collection_src, collection_dst in zip(source.collections, dest.collections):
        before = {p.id: p for p in source.iter_points(collection_src, with_vectors=True)}
        after = {p.id: p for p in dest.iter_points(collection_dst, with_vectors=True)}
        assert set(before) == set(after)  # same ids
        for pid, point in after.items():
            assert np.allclose(point.vector, before[pid].vector, atol=1e-6)
            rel = point.payload["rel_path"]
            assert point.payload["file_path"] == str(new_root / rel)  # paths follow the folder
            node = json.loads(point.payload["_node_content"])
            assert node["metadata"]["file_path"] == str(new_root / rel)
            unchanged = {k: v for k, v in point.payload.items() if k not in ("file_path", "_node_content")}
            assert unchanged == {k: v for k, v in before[pid].payload.items() if k not in ("file_path", "_node_content")}
    query = VectorStoreQuery(query_embedding=_vector(np.random.default_rng(11)), similarity_top_k=6)
    assert dest.vector_store(dest.text_collection).query(query).ids == source.vector_store(source.text_collection).query(query).ids
    dest.drop()


def test_point_ids_are_the_uuid5_of_earlier_versions_accept_any_str_and_change_with_content():
    assert point_id("a.txt", "k1", 0) == str(uuid.uuid5(uuid.UUID("6b1f9a64-53c1-4c3e-9a0e-2f7d4f1f0a11"), "a.txt\nk1\n0"))
    assert document_id("dir/b.md") == str(uuid.uuid5(uuid.UUID("6b1f9a64-53c1-4c3e-9a0e-2f7d4f1f0a11"), "doc\ndir/b.md"))
    name = os.fsdecode(b"caf\xe9.txt")  # a Latin-1 file name on a UTF-8 system arrives with a surrogate escape
    assert uuid.UUID(point_id(name, "k1", 0)).version == 5 and point_id(name, "k1", 0) != point_id("caf\u00e9.txt", "k1", 0)
    ids = {point_id(rel, key, chunk) for rel in ("a.txt", name) for key in ("k1", "k2") for chunk in (0, 1)}
    assert len(ids) == 8  # path, content key and chunk each change the id


def unit_vectors(rows) -> np.ndarray:
    """``rows`` as float32 vectors of length 1."""
    rows = np.asarray(rows, dtype="float32")
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def point_nodes(vectors) -> list:
    """One node per vector, the i-th with the id ``UUID(int=i + 1)``."""
    return [TextNode(id_=str(uuid.UUID(int=i + 1)), text=f"point {i}", embedding=v.tolist()) for i, v in enumerate(vectors)]


def test_default_search_ef_finds_the_neighbours_a_narrow_search_misses(tmp_path):
    """The store's default ``hnsw_ef`` reaches the engine: on a real HNSW graph built to be coarse (m=8,
    ef_construct=32, so the engine's own default ef is max(32, top_k)), queries without search params find the
    exact top 10 that a search at ef=10 measurably misses (recall about 0.55, against >= 0.97)."""
    import qdrant_edge

    from mmrag_agent.indexing.edge import EdgeVectorStore, close_shard, open_shard

    dim, n, k = 32, 3000, 10
    config = qdrant_edge.EdgeConfig(vectors=qdrant_edge.EdgeVectorParams(size=dim, distance=qdrant_edge.Distance.Cosine),
                                    hnsw_config=qdrant_edge.HnswIndexConfig(m=8, ef_construct=32, full_scan_threshold=1),
                                    optimizers=qdrant_edge.EdgeOptimizersConfig(indexing_threshold=1))
    path = str(tmp_path / "shard")
    shard = open_shard(path, config=config)
    try:
        rng = np.random.default_rng(0)
        vectors = unit_vectors(rng.standard_normal((n, dim)))
        store = EdgeVectorStore(path=path)
        store.add(point_nodes(vectors))
        shard.optimize()
        assert shard.info().indexed_vectors_count == n  # the search goes through the HNSW graph
        queries = rng.standard_normal((40, dim)).astype("float32")
        exact = [{str(uuid.UUID(int=int(i) + 1)) for i in np.argsort(-(vectors @ q))[:k]} for q in queries]

        def recall(**kwargs) -> float:
            found = [set(store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=k), **kwargs).ids) for q in queries]
            return sum(len(f & e) for f, e in zip(found, exact)) / (k * len(queries))

        narrow = recall(search_params=qdrant_edge.SearchParams(hnsw_ef=k))
        default = recall()
        assert store.hnsw_ef is not None and store.hnsw_ef >= 8 * k
        assert default >= 0.97 and narrow <= default - 0.3, (default, narrow)
        assert recall(search_params=qdrant_edge.SearchParams(hnsw_ef=store.hnsw_ef)) == default  # the same request
    finally:
        close_shard(path)


def test_searches_run_on_quantized_vectors_in_memory_and_return_exact_rescored_scores(tmp_path):
    """The store's shards keep quantized copies of the vectors in memory for the search and rescore the best hits
    with the original vectors on disk: once a segment is indexed (and quantized), the scores are the exact ones and
    the results those of an exact search on clustered points (where one-bit quantization loses a third of them)."""
    import qdrant_edge

    from mmrag_agent.indexing.edge import EdgeVectorStore, close_shard, create_shard

    dim, n, k = 384, 8000, 10  # 12 MB of vectors: past the engine's indexing threshold (10 MB), so indexed and quantized
    path = str(tmp_path / "shard")
    shard = create_shard(path, dim)
    try:
        rng = np.random.default_rng(1)
        centres = rng.standard_normal((40, dim))
        vectors = unit_vectors(centres[rng.integers(40, size=n)] + 0.6 * rng.standard_normal((n, dim)))
        store = EdgeVectorStore(path=path)
        store.add(point_nodes(vectors))
        shard.optimize()
        assert shard.info().indexed_vectors_count == n
        quantized = store.query(VectorStoreQuery(query_embedding=vectors[0].tolist(), similarity_top_k=k),
                                search_params=qdrant_edge.SearchParams(
                                    quantization=qdrant_edge.QuantizationSearchParams(rescore=False)))
        approximate = [abs(s - float(vectors[int(uuid.UUID(i).int) - 1] @ vectors[0])) for i, s in zip(quantized.ids, quantized.similarities)]
        assert max(approximate) > 1e-4  # without rescoring the scores are the int8 approximations: quantization is on
        found = 0
        for q in vectors[rng.integers(n, size=50)] + 0.1 * rng.standard_normal((50, dim)).astype("float32"):
            q /= np.linalg.norm(q)
            exact = set(np.argsort(-(vectors @ q))[:k].tolist())
            result = store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=k))
            rows = [int(uuid.UUID(i).int) - 1 for i in result.ids]
            assert result.similarities == pytest.approx((vectors[rows] @ q).tolist(), abs=1e-5)  # rescored: exact scores
            found += len(exact & set(rows))
        assert found / (50 * k) >= 0.9  # one-bit binary quantization: 0.67; int8: 1.0; the store's TurboQuant 2-bit at 5x: 0.956
    finally:
        close_shard(path)


def test_writes_past_the_segment_size_are_indexed_as_separate_segments_and_searched_together(tmp_path, monkeypatch):
    """``note_written`` closes a segment every SEGMENT_BYTES of vectors (here 1,024 points of 8-d) and builds its
    HNSW graph; the optimizer does not merge the closed segments back, and a search covers all of them."""
    import qdrant_edge

    from mmrag_agent.indexing import edge
    from mmrag_agent.indexing.edge import EdgeVectorStore, close_shard, open_shard

    dim, n = 8, 3500
    monkeypatch.setattr(edge, "SEGMENT_BYTES", 1024 * 4 * dim)
    config = qdrant_edge.EdgeConfig(vectors=qdrant_edge.EdgeVectorParams(size=dim, distance=qdrant_edge.Distance.Cosine),
                                    hnsw_config=qdrant_edge.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=1),
                                    optimizers=qdrant_edge.EdgeOptimizersConfig(indexing_threshold=1, max_segment_size=48))
    path = str(tmp_path / "shard")
    shard = open_shard(path, config=config)
    try:
        rng = np.random.default_rng(1)
        vectors = unit_vectors(rng.standard_normal((n, dim)))
        store = EdgeVectorStore(path=path, batch_size=256)
        store.add(point_nodes(vectors))
        info = shard.info()
        assert info.indexed_vectors_count == 3 * 1024  # three full segments were built while writing; 428 points wait
        shard.optimize()
        assert shard.info().segments_count >= 4 and shard.info().points_count == n
        for q in rng.standard_normal((10, dim)):
            ids = store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=5)).ids
            assert ids == [str(uuid.UUID(int=int(i) + 1)) for i in np.argsort(-(vectors @ q))[:5]]
    finally:
        close_shard(path)
