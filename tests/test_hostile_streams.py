"""Bounded memory: large files streamed, batches bounded by chunks and bytes, images never decoded in full.

Thresholds (whole-file size, block and segment sizes) are lowered for the test so that files of a few hundred
kilobytes take the streaming paths that multi-gigabyte files take; ``benchmarks/memory.py`` measures the
real thing.
"""

from __future__ import annotations

import io
import json

import pytest
from files import write_image
from PIL import Image
from test_hostile_folders import run
from test_indexing import points

from mmrag_agent.indexing import FolderIndexer
from mmrag_agent.indexing.batches import BatchBuilder
from mmrag_agent.indexing.nodes import ChunkSpool, NodeFactory, prepare_file
from mmrag_agent.indexing.discovery import discover
from mmrag_agent.media import ImageRejected, load_image

PARAGRAPHS = "\n\n".join(f"Paragraph {i}. The lighthouse keeper logged the tide at {i} o'clock; gulls circled the pier."
                         for i in range(3000))


def _texts(store) -> dict[str, str]:
    return {id_: json.loads(p["_node_content"])["text"] for id_, p in points(store).items()}


@pytest.fixture
def streamed(monkeypatch):
    """Stream every text file over 1 KiB, in 4 KiB blocks."""
    monkeypatch.setattr("mmrag_agent.indexing.nodes.WHOLE_FILE_BYTES", 1024)
    monkeypatch.setattr("mmrag_agent.indexing.streams.BLOCK_BYTES", 4096)
    monkeypatch.setattr("mmrag_agent.indexing.nodes.BLOCK_BYTES", 4096)


def test_a_streamed_file_gets_the_same_points_as_one_read_whole(tmp_path, mock_text_model, monkeypatch):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "big.txt").write_text(PARAGRAPHS)
    run(folder, tmp_path / "whole", mock_text_model)
    whole = _texts(tmp_path / "whole")
    monkeypatch.setattr("mmrag_agent.indexing.nodes.WHOLE_FILE_BYTES", 1024)
    monkeypatch.setattr("mmrag_agent.indexing.streams.BLOCK_BYTES", 4096)
    monkeypatch.setattr("mmrag_agent.indexing.nodes.SPOOL_IN_MEMORY", 2048)  # chunks go through the disk spool
    monkeypatch.setattr("mmrag_agent.indexing.streams.SEGMENT_CHARS", 1 << 20)  # one segment: no extra chunk boundary
    report = run(folder, tmp_path / "streamed", mock_text_model)
    assert report.indexed == ["big.txt"] and len(whole) > 20
    assert _texts(tmp_path / "streamed") == whole  # same ids (same content key), same text


def test_streamed_segments_cover_all_the_text(tmp_path, mock_text_model, streamed, monkeypatch):
    monkeypatch.setattr("mmrag_agent.indexing.streams.SEGMENT_CHARS", 8192)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "big.txt").write_text(PARAGRAPHS)
    run(folder, tmp_path / "store", mock_text_model)
    text = " ".join(_texts(tmp_path / "store").values())
    assert all(f"Paragraph {i}." in text for i in range(3000))


def test_a_streamed_file_in_a_legacy_encoding_is_detected_after_the_first_block(tmp_path, mock_text_model, streamed):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "menu.txt").write_bytes(("Plain ASCII notes. " * 1000 + "Crème brûlée à la française.").encode("latin-1"))
    report = run(folder, tmp_path / "store", mock_text_model)
    assert report.indexed == ["menu.txt"]
    payloads = points(tmp_path / "store").values()
    assert any("Crème brûlée à la française." in p["_node_content"] for p in payloads)
    assert {p["encoding"] for p in payloads} == {"cp1252"}


def test_streamed_markdown_and_html_keep_titles_and_describe_images(tmp_path, mock_text_model, streamed):
    folder = tmp_path / "docs"
    (folder / "img").mkdir(parents=True)
    write_image(folder / "img" / "chart.png")
    write_image(folder / "img" / "cup.png", color="green")
    (folder / "notes.md").write_text("# Harbour log\n\n" + PARAGRAPHS[:20000] + "\n\n![Tide chart for March](img/chart.png)\n")
    (folder / "page.html").write_text("<html><head><title>Coffee &amp; tides</title><script>var hidden = '<p>no</p>';</script>"
                                      "</head><body>" + "<p>Visible paragraph.</p>" * 2000
                                      + "<figure><img src='img/cup.png' alt='a green cup'><figcaption>Morning</figcaption></figure>")
    report = run(folder, tmp_path / "store", mock_text_model)
    assert not report.failed
    payloads = list(points(tmp_path / "store").values())
    titles = {p["rel_path"]: p.get("title") for p in payloads}
    assert titles["notes.md"] == "Harbour log" and titles["page.html"] == "Coffee & tides"
    by_file = {p["rel_path"]: p["_node_content"] for p in payloads if p["rel_path"].startswith("img/")}
    assert "Tide chart for March" in by_file["img/chart.png"] and "a green cup" in by_file["img/cup.png"]
    assert not any("hidden" in p["_node_content"] for p in payloads if p["rel_path"] == "page.html")


def test_a_file_that_changes_between_the_two_passes_fails_alone(tmp_path, mock_text_model, streamed):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "big.txt").write_text(PARAGRAPHS[:50000])
    (folder / "ok.txt").write_text("Unaffected.")
    indexer = FolderIndexer(folder, store=tmp_path / "store", text_model=mock_text_model, image_model="text", ocr="off",
                            show_progress=False)
    prepare = indexer._prepare

    def prepare_then_edit(*args):
        prepared = prepare(*args)
        with open(folder / "big.txt", "r+") as fh:  # same size, other bytes
            fh.write("X")
        return prepared

    indexer._prepare = prepare_then_edit
    report = indexer.run()
    assert report.indexed == ["ok.txt"]
    assert "changed while being indexed" in {f.path: f.reason for f in report.failed}["big.txt"]
    assert {p["rel_path"] for p in points(tmp_path / "store").values()} == {"ok.txt"}


class RecordingStore:
    """The real store, recording how many nodes each write holds."""

    def __init__(self, store) -> None:
        self._store, self.writes = store, []

    def __getattr__(self, name):
        return getattr(self._store, name)

    def vector_store(self, collection):
        real, writes = self._store.vector_store(collection), self.writes

        class _Recording:
            def add(self, nodes, **kwargs):
                writes.append(len(nodes))
                return real.add(nodes, **kwargs)

        return _Recording()


def test_batches_are_bounded_by_chunks_and_bytes_not_files(tmp_path, mock_text_model):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "big.txt").write_text(PARAGRAPHS[:60000])
    for i in range(3):
        write_image(folder / f"photo{i}.png", color=("red", "green", "blue")[i])
    run(folder, tmp_path / "reference", mock_text_model)
    for limits in ({"max_batch_chunks": 4}, {"max_batch_bytes": 40_000}):
        store = tmp_path / f"store-{sorted(limits)[0]}"
        indexer = FolderIndexer(folder, store=store, text_model=mock_text_model, image_model="text", ocr="off",
                                show_progress=False, **limits)
        indexer.store = RecordingStore(indexer.store)
        indexer.run()
        writes = indexer.store.writes
        assert len(writes) > 5 and max(writes) <= 4 if "max_batch_chunks" in limits else max(writes) <= 3
        assert _texts(store) == _texts(tmp_path / "reference")  # same points whatever the batching


def test_batch_builder_bytes_limit_counts_node_text(tmp_path, mock_text_model):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "big.txt").write_text(PARAGRAPHS[:60000])
    found = discover(folder).files[0]
    factory = NodeFactory(folder, chunk_size=128, chunk_overlap=8)
    item = prepare_file(found, folder)
    item.content_key = factory.key_for(item)
    batches = list(BatchBuilder(factory, None, None, max_chunks=10_000, max_bytes=60_000).batches([item]))
    assert len(batches) > 3 and all(b.nbytes < 60_000 + 20_000 for b in batches)
    assert [b.done for b in batches[:-1]] == [[]] * (len(batches) - 1) and batches[-1].done[0][0] == "big.txt"
    assert sum(b.progress_bytes for b in batches) == found.size


def test_chunk_spool_round_trips_through_disk():
    spool = ChunkSpool(in_memory=64)
    texts = [f"chunk {i} café 東京 \U0001F600" for i in range(50)]
    for i, text in enumerate(texts):
        spool.add(text, {"page": i})
    assert spool._file._rolled  # on disk now
    assert list(spool) == [(t, {"page": i}) for i, t in enumerate(texts)] and spool.count == 50
    spool.close()


def _jpeg(size=(4000, 3000), exif=None) -> bytes:
    image = Image.new("RGB", size, "red")
    image.paste("white", (0, 0, size[0] // 2, size[1] // 2))
    buffer = io.BytesIO()
    kwargs = {"exif": exif} if exif is not None else {}
    image.save(buffer, "JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def _mib_allocated(action) -> int:
    """MiB of image memory Pillow allocates while ``action`` runs (counted in 1 MiB blocks; RGB takes 4 bytes a pixel)."""
    block_size = Image.core.get_block_size()
    Image.core.set_block_size(1 << 20)
    try:
        Image.core.reset_stats()
        action()
        return Image.core.get_stats()["allocated_blocks"]
    finally:
        Image.core.set_block_size(block_size)


def test_a_photo_is_decoded_at_the_size_used_never_in_full(tmp_path):
    data = _jpeg()
    assert _mib_allocated(lambda: load_image(io.BytesIO(data))) >= 45  # the full decode, for comparison
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = _jpeg(exif=exif)
    loaded = None

    def small():
        nonlocal loaded
        loaded = load_image(io.BytesIO(rotated), max_side=500)

    assert _mib_allocated(small) <= 4
    assert (loaded.width, loaded.height) == (3000, 4000) and max(loaded.image.size) == 500
    assert loaded.image.size[1] > loaded.image.size[0]  # upright
    with pytest.raises(ImageRejected, match="corrupt or truncated"):  # a reduced decode still reads every byte
        load_image(io.BytesIO(data[: len(data) // 2]), max_side=500)

    (tmp_path / "photo.jpg").write_bytes(data)
    found = discover(tmp_path).files[0]
    item = prepare_file(found, tmp_path)
    factory = NodeFactory(tmp_path)  # image-as-text without OCR: the pixels only prove the file decodes
    item.content_key = factory.key_for(item)
    assert _mib_allocated(lambda: factory.image_node(item)) <= 4
    node, model_input = factory.image_node(item)
    assert (node.metadata["width"], node.metadata["height"]) == (4000, 3000) and model_input is None


def test_progress_bar_covers_finding_checking_and_indexing(tmp_path, mock_text_model, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(3):
        (folder / f"note{i}.txt").write_text(f"Note {i} about tides.")
    FolderIndexer(folder, store=tmp_path / "store", text_model=mock_text_model, image_model="text", ocr="off",
                  show_progress=True).run()
    err = capsys.readouterr().err
    assert "finding files" in err and "checking" in err and "indexing" in err
    assert err.index("finding files") < err.index("checking") < err.index("indexing")
    assert "100%" in err.split("checking")[-1]
