"""Incremental indexing into the embedded store (Qdrant Edge): unchanged, changed, deleted, killed half-way, bad input."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from files import unprivileged, write_image, write_pdf, write_png_declaring
from llama_index.core.indices.multi_modal import MultiModalVectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.schema import ImageNode, TextNode

from mmrag_agent.indexing import FolderIndexer, StoreError, build_index, close_local_clients, load_index, open_store

LONG_TEXT = " ".join(f"Sentence {i} about the migration of arctic terns across the ocean." for i in range(120))


def make_folder(root: Path) -> Path:
    (root / "img").mkdir(parents=True)
    (root / "a.txt").write_text("Foxes are small omnivorous mammals. The red fox is the largest true fox.")
    (root / "long.txt").write_text(LONG_TEXT)
    (root / "b.md").write_text("# Revenue\n\nRevenue grew in Q3.\n\n![Bar chart of quarterly revenue](img/chart.png)\n")
    (root / "page.html").write_text("<html><body><h1>Coffee</h1><p>Finer grinds extract faster.</p></body></html>")
    write_pdf(root / "paper.pdf", ["Attention is all you need.", "Results on translation."])
    write_image(root / "img" / "chart.png", color="blue")
    write_image(root / "photo.jpg", color="orange")
    (root / "photo.txt").write_text("A sunset over a calm lake")
    return root


def run(folder: Path, store: Path, text_model, **kwargs):
    indexer = FolderIndexer(folder, store=store, text_model=text_model, image_model="text", ocr="off",
                            show_progress=False, embed_batch_size=16, **kwargs)
    return indexer.run()


def points(store: Path) -> dict[str, dict]:
    """{point id: payload} over the text and image collections."""
    index_store = open_store(store)
    return {p.id: p.payload for collection in index_store.collections for p in index_store.iter_points(collection)}


def files_of(store: Path) -> set[str]:
    return {payload["rel_path"] for payload in points(store).values()}


EXPECTED_FILES = {"a.txt", "long.txt", "b.md", "page.html", "paper.pdf", "img/chart.png", "photo.jpg"}


def test_first_index_then_unchanged_rerun_writes_nothing(tmp_path, mock_text_model):
    folder, store = make_folder(tmp_path / "docs"), tmp_path / "store"
    first = run(folder, store, mock_text_model)
    assert set(first.indexed) == EXPECTED_FILES and not first.failed
    before = points(store)
    assert files_of(store) == EXPECTED_FILES
    assert sum(1 for p in before.values() if p["rel_path"] == "long.txt") > 1  # chunked
    assert {p["page"] for p in before.values() if p["rel_path"] == "paper.pdf"} == {1, 2}
    # the stored data: vectors, payload pages, the metadata file (the engine's own bookkeeping files may be touched on open)
    data_files = sorted([*store.rglob("chunk_*.mmap"), *store.rglob("page_*.dat"), store / "mmrag.index.json"])
    assert len(data_files) >= 5
    stamps = [(f.stat().st_mtime_ns, f.stat().st_size) for f in data_files]

    second = run(folder, store, mock_text_model)
    assert second.indexed == [] and second.removed == [] and set(second.unchanged) == EXPECTED_FILES
    assert points(store) == before
    close_local_clients()
    assert [(f.stat().st_mtime_ns, f.stat().st_size) for f in data_files] == stamps  # nothing written


def test_changed_file_replaced_deleted_file_removed_and_caption_change_reindexes_image(tmp_path, mock_text_model):
    folder, store = make_folder(tmp_path / "docs"), tmp_path / "store"
    run(folder, store, mock_text_model)
    before = points(store)
    (folder / "long.txt").write_text("Now a single short sentence.")
    (folder / "page.html").unlink()
    (folder / "b.md").write_text("# Revenue\n\n![Line chart of revenue by month](img/chart.png)\n")
    report = run(folder, store, mock_text_model)
    assert set(report.indexed) == {"long.txt", "b.md", "img/chart.png"}  # the image's alt text changed
    assert report.removed == ["page.html"]
    after = points(store)
    long_points = [p for p in after.values() if p["rel_path"] == "long.txt"]
    assert len(long_points) == 1 and long_points[0]["n_chunks"] == 1
    assert not any(p["rel_path"] == "page.html" for p in after.values())
    chart = next(p for p in after.values() if p["rel_path"] == "img/chart.png")
    assert "Line chart of revenue by month" in chart["_node_content"]
    unchanged = {k for k, p in before.items() if p["rel_path"] in {"a.txt", "paper.pdf", "photo.jpg"}}
    assert unchanged <= set(after)


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from llama_index.core.embeddings import MockEmbedding
    from mmrag_agent.indexing import FolderIndexer
    done = []
    def on_file_done(rel):
        done.append(rel)
        if len(done) == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
    FolderIndexer(sys.argv[1], store=sys.argv[2], text_model=MockEmbedding(embed_dim=8), image_model="text",
                  ocr="off", show_progress=False, files_per_batch=2, on_file_done=on_file_done).run()
""")


def test_run_killed_half_way_then_rerun_ends_with_exactly_the_right_points(tmp_path, mock_text_model):
    folder, store = make_folder(tmp_path / "docs"), tmp_path / "store"
    run(folder, store, mock_text_model)
    close_local_clients()
    for i in range(6):  # several changed and new files, so the kill lands among replacements
        (folder / f"new{i}.txt").write_text(f"New note {i}. " + LONG_TEXT[: 200 * (i + 1)])
    (folder / "long.txt").write_text(LONG_TEXT.replace("arctic", "antarctic"))
    (folder / "a.txt").unlink()
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(folder), str(store), "3"], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    reference = tmp_path / "reference-store"
    run(folder, reference, mock_text_model)
    clean = points(reference)
    killed = points(store)
    assert set(killed) != set(clean)  # the kill left a half-done state: stale and missing points
    assert files_of(store) >= {"a.txt"} and not set(clean) <= set(killed)

    report = run(folder, store, mock_text_model)
    assert not report.failed and report.removed == ["a.txt"]
    resumed = points(store)
    assert set(resumed) == set(clean)  # ids derive from (path, content, chunk): same folder, same ids
    assert {k: p["content_key"] for k, p in resumed.items()} == {k: p["content_key"] for k, p in clean.items()}


def test_bad_inputs_are_reported_and_nothing_indexed_earlier_is_lost(tmp_path, mock_text_model):
    folder, store = make_folder(tmp_path / "docs"), tmp_path / "store"
    run(folder, store, mock_text_model)
    before = points(store)

    good = (folder / "img" / "chart.png").read_bytes()
    (folder / "cut.png").write_bytes(good[: len(good) // 2])
    (folder / "empty.txt").write_bytes(b"")
    (folder / "junk.txt").write_bytes(os.urandom(4096))
    (folder / "latin1.txt").write_bytes("Crème brûlée à la française.".encode("latin-1"))
    write_png_declaring(folder / "bomb.png", 30000, 30000)
    write_image(folder / "rotated.jpg", size=(60, 20), exif={0x0112: 6})
    os.symlink("loop2.txt", folder / "loop1.txt")
    os.symlink("loop1.txt", folder / "loop2.txt")
    write_pdf(folder / "scan.pdf", [None])
    shutil.copy(folder / "a.txt", folder / "a_copy.txt")
    (folder / "zz_vanishes.txt").write_text("I will be gone before my turn.")
    # An earlier-indexed file turning bad must keep its earlier points.
    (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(100))

    def delete_vanishing_file(rel: str) -> None:
        (folder / "zz_vanishes.txt").unlink(missing_ok=True)

    report = run(folder, store, mock_text_model, files_per_batch=1, on_file_done=delete_vanishing_file)
    reasons = {f.path: f.reason for f in report.failed}
    assert "corrupt or truncated" in reasons["cut.png"]
    assert "empty file" in reasons["empty.txt"]
    assert "binary content" in reasons["junk.txt"]
    assert "decompression-bomb guard" in reasons["bomb.png"]
    assert "symlink loop" in reasons["loop1.txt"] and "symlink loop" in reasons["loop2.txt"]
    assert "no text layer" in reasons["scan.pdf"]
    assert "disappeared" in reasons["zz_vanishes.txt"]
    assert "not a readable image" in reasons["photo.jpg"] or "corrupt" in reasons["photo.jpg"]
    assert report.duplicates == [("a_copy.txt", "a.txt")]
    assert {"latin1.txt", "rotated.jpg"} <= set(report.indexed)

    after = points(store)
    assert set(before) <= set(after)  # every earlier point, photo.jpg's included, is still there
    latin = next(p for p in after.values() if p["rel_path"] == "latin1.txt")
    assert "Crème brûlée à la française." in latin["_node_content"] and latin["encoding"] != "utf-8"
    rotated = next(p for p in after.values() if p["rel_path"] == "rotated.jpg")
    assert (rotated["width"], rotated["height"]) == (20, 60)

    # Once the bad files are fixed or gone, the next run converges.
    (folder / "photo.jpg").unlink()
    report = run(folder, store, mock_text_model)
    assert "photo.jpg" in report.removed and "zz_vanishes.txt" not in files_of(store)


@pytest.mark.skipif(not hasattr(os, "seteuid"), reason="needs POSIX user ids")
def test_unreadable_file_is_reported_and_keeps_its_points(mock_text_model):
    base = Path(tempfile.mkdtemp(prefix="mmrag-perm-"))
    try:
        os.chmod(base, 0o777)
        folder, store = make_folder(base / "docs"), base / "store"
        run(folder, store, mock_text_model)
        before = points(store)
        close_local_clients()
        for path in [base, *base.rglob("*")]:
            os.chmod(path, 0o777 if path.is_dir() else 0o666)
        os.chmod(folder / "a.txt", 0o000)
        with unprivileged():
            report = run(folder, store, mock_text_model)
        assert "permission denied" in {f.path: f.reason for f in report.failed}["a.txt"]
        assert set(before) <= set(points(store))
    finally:
        close_local_clients()
        shutil.rmtree(base, ignore_errors=True)


def test_build_index_is_a_working_llamaindex_multimodal_index(tmp_path, mock_text_model):
    folder, store = make_folder(tmp_path / "docs"), tmp_path / "store"
    index = build_index(folder, store=store, text_model=mock_text_model, image_model="text", ocr="off", show_progress=False)
    assert isinstance(index, MultiModalVectorStoreIndex)
    assert set(index.indexing_report.indexed) == EXPECTED_FILES
    hits = index.as_retriever(similarity_top_k=3, image_similarity_top_k=2).retrieve("sunset")
    images = [h.node for h in hits if isinstance(h.node, ImageNode)]
    texts = [h.node for h in hits if not isinstance(h.node, ImageNode)]
    assert len(texts) == 3 and all(isinstance(n, TextNode) for n in texts)
    assert {Path(n.image_path).name for n in images} == {"chart.png", "photo.jpg"}
    photo = next(n for n in images if n.image_path.endswith("photo.jpg"))
    assert "Caption: A sunset over a calm lake" in photo.text
    assert "file_path" not in photo.get_content(metadata_mode="embed") and str(folder) not in texts[0].get_content(metadata_mode="embed")

    reopened = load_index(store=store, text_model=mock_text_model)  # same process: the client is shared
    assert len(reopened.as_retriever(similarity_top_k=2).retrieve("fox")) >= 2
    response = index.as_query_engine(llm=MockLLM(max_tokens=8), similarity_top_k=2, image_similarity_top_k=1).query("fox")
    assert response.source_nodes


def test_switching_embedding_model_needs_rebuild(tmp_path, mock_text_model):
    from llama_index.core.embeddings import MockEmbedding

    folder, store = make_folder(tmp_path / "docs"), tmp_path / "store"
    run(folder, store, mock_text_model)
    other = MockEmbedding(embed_dim=8, model_name="another-model")
    with pytest.raises(StoreError, match="built with text_model='unknown'.*--rebuild"):
        run(folder, store, other)
    report = run(folder, store, other, rebuild=True)
    assert set(report.indexed) == EXPECTED_FILES
