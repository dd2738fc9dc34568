"""The indexer's commit, interrupted at every step, converges on the next run; point ids change with the content.

A run is stopped at each store mutation in turn: before it, half-way through it (half the points of an add,
half the ids of a delete) and right after it, so that the store is left with new points written but stale ones
not yet deleted, with mixed content keys for one file, and with a file whose chunks are partly written. The
next, uninterrupted run must end with exactly the points of a clean index built from scratch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from files import write_image
from test_indexing import points

from mmrag_agent.indexing import FolderIndexer, close_local_clients
from mmrag_agent.indexing.nodes import content_key
from mmrag_agent.indexing.store import point_id

SENTENCES = " ".join(f"Sentence {i} tells of a harbour, a lantern and a glacier." for i in range(60))


class Stop(Exception):
    """The injected fault: the run ends here, as if the process had been killed."""


class FaultyStore:
    """The real store, stopping the run at mutation step ``stop_at`` (``phase``: before, half or after it)."""

    def __init__(self, store, stop_at: int | None = None, phase: str = "before") -> None:
        self._store, self.stop_at, self.phase, self.steps = store, stop_at, phase, 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def _step(self, items: list, apply) -> None:
        step, self.steps = self.steps, self.steps + 1
        if step != self.stop_at:
            apply(items)
            return
        if self.phase == "half":
            apply(items[: len(items) // 2])
        elif self.phase == "after":
            apply(items)
        raise Stop(f"stopped at step {step} ({self.phase})")

    def delete_ids(self, ids) -> None:
        ids = list(ids)
        if ids:
            self._step(ids, self._store.delete_ids)

    def vector_store(self, collection: str):
        real, store = self._store.vector_store(collection), self

        class _Faulty:
            def add(self, nodes, **kwargs):
                nodes = list(nodes)
                store._step(nodes, lambda part: real.add(part, **kwargs) if part else None)
                return [n.node_id for n in nodes]

        return _Faulty()


def _indexer(folder: Path, store: Path, model) -> FolderIndexer:
    return FolderIndexer(folder, store=store, text_model=model, image_model="text", ocr="off", show_progress=False,
                         files_per_batch=2, max_batch_chunks=3)


def _old_folder(root: Path) -> Path:
    (root / "img").mkdir(parents=True)
    (root / "same.txt").write_text("This file never changes.")
    (root / "long.txt").write_text(SENTENCES)
    (root / "page.md").write_text("# Charts\n\n![Bar chart of revenue](img/chart.png)\n")
    write_image(root / "img" / "chart.png", color="blue")
    (root / "gone.txt").write_text("This file will be deleted.")
    return root


def _change(root: Path) -> None:
    (root / "long.txt").write_text(SENTENCES.replace("glacier", "canyon") + " One more sentence for another chunk count.")
    (root / "page.md").write_text("# Charts\n\n![Line chart of revenue by month](img/chart.png)\n")  # re-keys the image
    (root / "gone.txt").unlink()
    (root / "new.txt").write_text("A file that did not exist before. " * 30)


def _snapshot(store: Path) -> dict[str, tuple]:
    return {id_: (p["rel_path"], p["content_key"], p["chunk_index"], p["_node_content"]) for id_, p in points(store).items()}


@pytest.mark.slow
def _copy_store(source, target):
    """A copy of a store that says where it now is (a store found where it was not written is refused otherwise)."""
    import json

    shutil.copytree(source, target)
    for meta in target.glob("*.index.json"):
        data = json.loads(meta.read_text())
        data["store_path"] = os.path.realpath(target)
        meta.write_text(json.dumps(data))


def test_commit_interrupted_at_every_step_converges_to_the_clean_index(tmp_path, mock_text_model):
    folder = _old_folder(tmp_path / "docs")
    old_store = tmp_path / "old-store"
    _indexer(folder, old_store, mock_text_model).run()
    _change(folder)
    clean_store = tmp_path / "clean-store"
    _indexer(folder, clean_store, mock_text_model).run()
    clean = _snapshot(clean_store)
    close_local_clients()

    counting = tmp_path / "counting-store"
    _copy_store(old_store, counting)
    indexer = _indexer(folder, counting, mock_text_model)
    indexer.store = FaultyStore(indexer.store)
    indexer.run()
    total = indexer.store.steps
    print(f"{total} store mutations, each interrupted before, half-way and after")
    assert total >= 6  # several batches: text and image writes, per-file and final deletes
    assert _snapshot(counting) == clean
    close_local_clients()

    seen_states = set()
    for step in range(total):
        for phase in ("before", "half", "after"):
            store = tmp_path / f"store-{step}-{phase}"
            _copy_store(old_store, store)
            indexer = _indexer(folder, store, mock_text_model)
            indexer.store = FaultyStore(indexer.store, stop_at=step, phase=phase)
            with pytest.raises(Stop):
                indexer.run()
            interrupted = _snapshot(store)
            keys_per_file: dict[str, set] = {}
            for rel, key, _, _ in interrupted.values():
                keys_per_file.setdefault(rel, set()).add(key)
            seen_states.add(("mixed keys", any(len(keys) > 1 for keys in keys_per_file.values())))
            seen_states.add(("differs from clean", interrupted != clean))

            report = _indexer(folder, store, mock_text_model).run()
            assert _snapshot(store) == clean, (step, phase)
            assert not report.failed
            close_local_clients()
            shutil.rmtree(store)
    assert ("mixed keys", True) in seen_states and ("differs from clean", True) in seen_states


def test_point_ids_change_with_the_content_and_the_settings(tmp_path, mock_text_model):
    folder, store = tmp_path / "docs", tmp_path / "store"
    folder.mkdir()
    (folder / "note.txt").write_text(SENTENCES)
    indexer = _indexer(folder, store, mock_text_model)
    indexer.run()
    first = {id_: p for id_, p in points(store).items()}
    data = (folder / "note.txt").read_bytes()
    key = content_key(hashlib.sha256(data).hexdigest(), indexer.factory.text_settings)
    assert {p["content_key"] for p in first.values()} == {key}
    assert set(first) == {point_id("note.txt", key, p["chunk_index"]) for p in first.values()}  # the key is in the id

    (folder / "note.txt").write_bytes(data.replace(b"Sentence 59", b"Sentence 5X"))  # one byte, in the last chunk only
    _indexer(folder, store, mock_text_model).run()
    second = points(store)
    assert not set(first) & set(second)  # every id changed, the unchanged chunks' too
    same_text = {json.loads(p["_node_content"])["text"] for p in first.values()} & {json.loads(p["_node_content"])["text"] for p in second.values()}
    assert same_text  # identical chunk text under a new content key gets a new id

    close_local_clients()
    other = FolderIndexer(folder, store=tmp_path / "other", text_model=mock_text_model, image_model="text", ocr="off",
                          show_progress=False, chunk_size=64)
    other.run()
    assert not set(points(tmp_path / "other")) & set(second)  # chunking settings are in the key too

    ids = {point_id("a.txt", content_key(hashlib.sha256(bytes([i])).hexdigest(), "s"), 0) for i in range(256)}
    assert len(ids) == 256
