"""Store scale: our embedded store (Qdrant Edge) against qdrant-client's local mode, at 100k and 1M points.

Generated points like ours: 384-d vectors (clustered, as sentence embeddings are: 2,000 random centres, each
point a centre plus noise, normalised), payloads as the indexer writes them (a LlamaIndex TextNode of ~1,100
characters with our metadata: paths, content key, sha256, chunk numbers), 10 chunks per file. Both back ends
are driven through their LlamaIndex vector store (``EdgeVectorStore`` / ``QdrantVectorStore``), as search is.

Each back end and size runs in fresh processes (one writes, one opens and queries), so each peak RSS is its
own. Measured: write time (ours includes flushing and building the HNSW graph), open time (open the store
until it can answer), query p50/p95 over ``--queries`` queries (top 20 with payload; and with a ``rel_path``
filter), peak RSS of the write and of the open+query process, disk. At the largest size, recall@20 of the
HNSW search against exact search on our store. qdrant-client's local mode holds every point in memory, so it
runs only up to ``--local-max`` points (what fits in this machine's memory); the output says so.

Last line: ``query_speedup=<local/ours p50 at 100k> open_speedup=<local/ours open at 100k> memory_ratio=<ours/local RSS at 100k>``.

    OMP_NUM_THREADS=1 python benchmarks/store_scale.py [--sizes 100000 1000000] [--local-max 100000] [--queries 100]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DIM = 384
CHUNKS_PER_FILE = 10
BATCH = 1000
WORDS = ("river mountain harvest engine orbit library market theorem violin glacier protein canyon lantern "
         "signal archive meadow circuit compass harbor pigment revenue quarter growth coffee grinder").split()


# ------------------------------------------------------------------------------------------- data
def _centres(seed: int = 7):
    import numpy as np

    return np.random.default_rng(seed).standard_normal((2000, DIM)).astype("float32")


def vectors(start: int, count: int, centres):
    """Points ``start .. start+count``: deterministic per point index, clustered, unit length."""
    import numpy as np

    out = np.empty((count, DIM), dtype="float32")
    for i in range(count):
        rng = np.random.default_rng(start + i)
        out[i] = centres[rng.integers(len(centres))] + 0.9 * rng.standard_normal(DIM).astype("float32")
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def queries(count: int, n_points: int, centres):
    """Query vectors near stored points (a question is close to the chunks that answer it)."""
    import numpy as np

    rng = np.random.default_rng(123)
    base = np.concatenate([vectors(int(p), 1, centres) for p in rng.integers(n_points, size=count)])
    q = base + 0.05 * rng.standard_normal(base.shape).astype("float32")
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def nodes(start: int, count: int, centres) -> list:
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

    from mmrag_agent.indexing.store import document_id, point_id

    out = []
    for i, vector in zip(range(start, start + count), vectors(start, count, centres)):
        file_no, chunk = divmod(i, CHUNKS_PER_FILE)
        rel = f"docs/section_{file_no % 97:02d}/report_{file_no:07d}.txt"
        key = f"{file_no:032x}"
        text = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(170))
        metadata = {"file_path": f"/home/user/{rel}", "rel_path": rel, "file_name": rel.rsplit("/", 1)[1], "file_type": "txt",
                    "content_key": key, "sha256": f"{file_no:064x}", "chunk_index": chunk, "n_chunks": CHUNKS_PER_FILE,
                    "title": f"Report {file_no}"}
        out.append(TextNode(id_=point_id(rel, key, chunk), text=text, metadata=metadata, embedding=vector.tolist(),
                            excluded_embed_metadata_keys=[k for k in metadata if k != "title"],
                            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=document_id(rel))}))
    return out


def rel_path_of(i: int) -> str:
    file_no = i // CHUNKS_PER_FILE
    return f"docs/section_{file_no % 97:02d}/report_{file_no:07d}.txt"


# ---------------------------------------------------------------------------------------- workers
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def open_backend(backend: str, path: Path, create: bool):
    """(vector store, closer) for the text collection of ``backend`` at ``path``."""
    if backend == "ours":
        from mmrag_agent.indexing.stores import open_store

        store = open_store(path, create=create)
        if create:
            store.ensure_collections(DIM, DIM)
            store.write_meta({"text_model": "bench", "image_model": "bench", "text_dim": DIM, "image_dim": DIM,
                              "root": str(path.parent), "format_version": 1, "image_mode": "surrogate"})
        return store, store.vector_store(store.text_collection), store.close
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(path))
    if create:
        client.create_collection("bench_text", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    return None, QdrantVectorStore(collection_name="bench_text", client=client, batch_size=256), client.close


def worker_write(backend: str, n: int, path: Path) -> dict:
    from tqdm.auto import tqdm

    centres = _centres()
    store, vector_store, close = open_backend(backend, path, create=True)
    seconds = 0.0
    for start in tqdm(range(0, n, BATCH), desc=f"{backend} write {n:,}", unit="batch", mininterval=30, file=sys.stderr):
        batch = nodes(start, min(BATCH, n - start), centres)
        began = time.perf_counter()
        vector_store.add(batch)
        seconds += time.perf_counter() - began
    began = time.perf_counter()
    if store is not None:
        store.finish()  # flush + HNSW graph
    build = time.perf_counter() - began
    close()
    return {"write_s": seconds + build, "build_s": build, "write_rss_mb": peak_rss_mb()}


def worker_query(backend: str, n: int, path: Path, count: int, recall: bool) -> dict:
    import numpy as np
    from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters, VectorStoreQuery

    centres = _centres()
    qs = queries(count, n, centres)
    rng = np.random.default_rng(5)
    filter_paths = [rel_path_of(int(i)) for i in rng.integers(n, size=count)]
    import llama_index.core  # noqa: F401  (imports before the clock starts, for both back ends)
    if backend == "ours":
        import qdrant_edge  # noqa: F401
        from mmrag_agent.indexing.edge_store import EdgeIndexStore  # noqa: F401
    else:
        import qdrant_client  # noqa: F401
        from llama_index.vector_stores.qdrant import QdrantVectorStore  # noqa: F401
    began = time.perf_counter()
    store, vector_store, close = open_backend(backend, path, create=False)
    vector_store.query(VectorStoreQuery(query_embedding=qs[0].tolist(), similarity_top_k=1))
    open_s = time.perf_counter() - began

    def timed(filters_for):
        times, results = [], []
        for q, rel in zip(qs, filter_paths):
            query = VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=20, filters=filters_for(rel))
            began = time.perf_counter()
            result = vector_store.query(query)
            times.append(time.perf_counter() - began)
            results.append(result)
        return np.array(times) * 1000, results

    plain_ms, plain = timed(lambda rel: None)
    filtered_ms, filtered = timed(lambda rel: MetadataFilters(filters=[MetadataFilter(key="rel_path", value=rel)]))
    assert all(len(r.nodes) == 20 for r in plain), "a top-20 query returned fewer than 20 hits"
    assert all(r.nodes and all(n.metadata["rel_path"] == rel for n in r.nodes) for r, rel in zip(filtered, filter_paths))
    out = {"open_s": open_s, "p50_ms": float(np.percentile(plain_ms, 50)), "p95_ms": float(np.percentile(plain_ms, 95)),
           "fp50_ms": float(np.percentile(filtered_ms, 50)), "fp95_ms": float(np.percentile(filtered_ms, 95)), "query_rss_mb": peak_rss_mb()}
    if backend == "ours":
        out["segments"] = vector_store.client.info().segments_count
        out["hnsw_ef"] = vector_store.hnsw_ef
    if recall and backend == "ours":
        import qdrant_edge

        hits = 0
        for q, result in zip(qs, plain):
            exact = vector_store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=20),
                                       search_params=qdrant_edge.SearchParams(exact=True))
            hits += len(set(result.ids) & set(exact.ids))
        out["recall_at_20"] = hits / (20 * len(qs))
    close()
    return out


def disk_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total / 2**20


# ------------------------------------------------------------------------------------------- main
def run_worker(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", *args], stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if proc.returncode:
        raise SystemExit(f"worker {' '.join(args)} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--local-max", type=int, default=100_000, help="largest size run with qdrant-client's local mode")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--workdir", type=Path, default=None, help="where the stores go (default: a temporary folder)")
    parser.add_argument("--keep-stores", action="store_true", help="keep the written stores in --workdir (for inspection)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, backend, n, path = args.worker[:4]
        result = (worker_write(backend, int(n), Path(path)) if kind == "write"
                  else worker_query(backend, int(n), Path(path), int(args.worker[4]), args.worker[5] == "1"))
        print(json.dumps(result))
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="mmrag-store-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, notes = [], []
    largest = max(args.sizes)
    try:
        for n in sorted(args.sizes):
            for backend in ("ours", "local"):
                if backend == "local" and n > args.local_max:
                    local = next((r for r in rows if r["backend"] == "local"), None)
                    estimate = f"~{local['query_rss_mb'] * n / local['n'] / 1024:.0f} GB extrapolated from {local['n']:,} points" if local else "unmeasured"
                    notes.append(f"qdrant-client local mode not run at {n:,} points: it loads every point into memory ({estimate}); "
                                 f"this machine has {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB")
                    continue
                path = work / f"{backend}-{n}"
                shutil.rmtree(path, ignore_errors=True)
                print(f"[{time.strftime('%H:%M:%S')}] {backend}: writing {n:,} points", file=sys.stderr, flush=True)
                row = {"backend": backend, "n": n} | run_worker(["write", backend, str(n), str(path)])
                row["disk_mb"] = disk_mb(path)
                print(f"[{time.strftime('%H:%M:%S')}] {backend}: querying {n:,} points", file=sys.stderr, flush=True)
                row |= run_worker(["query", backend, str(n), str(path), str(args.queries), "1" if n == largest else "0"])
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                if not (args.keep_stores and args.workdir):
                    shutil.rmtree(path, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    names = {"ours": "ours (Qdrant Edge)", "local": "qdrant-client local"}
    print(f"\n{args.queries} queries per size, top 20 with payload; filtered = rel_path of one file (10 points); "
          f"{os.cpu_count()} CPU cores; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n")
    header = f"{'points':>9} {'store':<20} {'write s':>8} {'open s':>7} {'p50 ms':>7} {'p95 ms':>7} {'filt p50':>8} {'filt p95':>8} {'RSS MB':>7} {'write RSS':>9} {'disk MB':>8}"
    print(header)
    for r in rows:
        print(f"{r['n']:>9,} {names[r['backend']]:<20} {r['write_s']:>8.1f} {r['open_s']:>7.2f} {r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} "
              f"{r['fp50_ms']:>8.1f} {r['fp95_ms']:>8.1f} {r['query_rss_mb']:>7.0f} {r['write_rss_mb']:>9.0f} {r['disk_mb']:>8.0f}")
    print("\nwrite s (ours) includes the HNSW build: " + ", ".join(f"{r['n']:,}: {r['build_s']:.1f} s" for r in rows if r["backend"] == "ours"))
    print("RSS MB: peak of the process that opened the store and ran the queries; write RSS: peak of the writing process")
    for note in notes:
        print("note: " + note)
    top = next((r for r in rows if r["backend"] == "ours" and r["n"] == largest), None)
    if top and "recall_at_20" in top:
        print(f"at {largest:,} points (ours): query p95 {top['p95_ms']:.1f} ms (target <= 20), open {top['open_s']:.2f} s (target <= 2), "
              f"recall@20 of HNSW vs exact search {top['recall_at_20']:.3f} (target >= 0.95, at the store's defaults: "
              f"HNSW m=16 ef_construct=100, search ef {top.get('hnsw_ef')}, {top.get('segments')} segments)")
    ours = next((r for r in rows if r["backend"] == "ours" and r["n"] == 100_000), None)
    local = next((r for r in rows if r["backend"] == "local" and r["n"] == 100_000), None)
    if ours and local:
        print(f"query_speedup={local['p50_ms'] / ours['p50_ms']:.1f} open_speedup={local['open_s'] / ours['open_s']:.1f} "
              f"memory_ratio={ours['query_rss_mb'] / local['query_rss_mb']:.2f}")
    else:
        print("query_speedup=n/a open_speedup=n/a memory_ratio=n/a (both back ends must run at 100,000 points)")


if __name__ == "__main__":
    main()
