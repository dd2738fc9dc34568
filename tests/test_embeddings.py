"""CLIP over transformers (tiny, from a config), image-as-text fallback, and real semantic retrieval."""

from __future__ import annotations

import math
import time

import pytest
from files import write_image
from llama_index.core.schema import ImageNode

from mmrag_agent.indexing import ClipEmbedding, EmbeddingModelUnavailable, FolderIndexer, SurrogateTextImageEmbedding
from mmrag_agent.indexing.embeddings import resolve_image_embedding


def test_clip_embedding_from_a_local_directory(tiny_clip_dir, tmp_path):
    clip = ClipEmbedding(model_name=str(tiny_clip_dir), embed_batch_size=2)
    red, blue = write_image(tmp_path / "red.png", color="red"), write_image(tmp_path / "blue.png", color="blue")
    images = clip.get_image_embedding_batch([str(red), str(blue), str(red)])
    texts = clip.get_text_embedding_batch(["a red square", "a blue square"])
    assert len(images[0]) == len(texts[0]) == clip.dimension == 16
    assert all(math.isclose(sum(v * v for v in e), 1.0, rel_tol=1e-4) for e in images + texts)
    assert images[0] != images[1]
    assert images[0] == pytest.approx(images[2], abs=1e-5)  # batching does not change an embedding
    assert clip.get_query_embedding("a red square") == pytest.approx(texts[0], abs=1e-5)


def test_clip_missing_model_names_the_fix(tmp_path):
    with pytest.raises(EmbeddingModelUnavailable, match="cannot load CLIP model.*image_model='text'"):
        ClipEmbedding(model_name=str(tmp_path / "no-such-clip"))


def test_auto_falls_back_to_image_as_text_quickly_when_offline(mock_text_model, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # the hub's own offline switch
    started = time.perf_counter()
    model = resolve_image_embedding("auto", mock_text_model)
    assert isinstance(model, SurrogateTextImageEmbedding) and time.perf_counter() - started < 5


def test_reachability_probe_answers_offline_within_its_timeout():
    from mmrag_agent.hub import hub_model_available

    started = time.perf_counter()
    hub_model_available("no-such-org/no-such-model", timeout=2)
    assert time.perf_counter() - started < 10


def test_index_with_clip_pixels_retrieves_images_by_text(tiny_clip_dir, tmp_path, mock_text_model):
    folder = tmp_path / "docs"
    folder.mkdir()
    for color in ("red", "green", "blue"):
        write_image(folder / f"{color}.png", color=color)
    (folder / "note.txt").write_text("Colours of squares.")
    clip = ClipEmbedding(model_name=str(tiny_clip_dir))
    indexer = FolderIndexer(folder, store=tmp_path / "store", text_model=mock_text_model, image_model=clip, ocr="off", show_progress=False)
    report = indexer.run()
    assert len(report.indexed) == 4 and report.image_points == 3
    meta = indexer.store.read_meta()
    assert meta["image_mode"] == "pixels" and meta["image_dim"] == 16
    hits = indexer.load().as_retriever(similarity_top_k=1, image_similarity_top_k=3).retrieve("a red square")
    images = [h for h in hits if isinstance(h.node, ImageNode)]
    assert len(images) == 3
    # the stored vectors are the pixel embeddings: the red image's score is its cosine with the query
    red = next(h for h in images if h.node.image_path.endswith("red.png"))
    expected = sum(a * b for a, b in zip(clip.get_query_embedding("a red square"), clip.get_image_embedding(red.node.image_path)))
    assert red.score == pytest.approx(expected, abs=1e-4)


def test_surrogate_retrieval_is_semantic_with_the_offline_text_model(minilm, tmp_path):
    folder = tmp_path / "docs"
    (folder / "figs").mkdir(parents=True)
    write_image(folder / "IMG_0001.jpg", color="orange")
    (folder / "IMG_0001.jpg.txt").write_text("A sunset over a calm mountain lake")
    write_image(folder / "figs" / "fig2.png", color="gray")
    (folder / "paper.md").write_text("# Results\n\n![Bar chart comparing model accuracy on three benchmarks](figs/fig2.png)\n")
    write_image(folder / "kitten_sleeping_on_sofa.png", color="white")
    (folder / "fox.txt").write_text("The red fox is an omnivorous mammal found across the northern hemisphere.")
    indexer = FolderIndexer(folder, store=tmp_path / "store", text_model=minilm, image_model="text", ocr="off", show_progress=False)
    indexer.run()
    retriever = indexer.load().as_retriever(similarity_top_k=1, image_similarity_top_k=1)
    for query, expected in (("evening sky reflected in water", "IMG_0001.jpg"),
                            ("how accurate were the models", "fig2.png"),
                            ("a young cat napping", "kitten_sleeping_on_sofa.png")):
        top_image = next(h.node for h in retriever.retrieve(query) if isinstance(h.node, ImageNode))
        assert top_image.image_path.endswith(expected), query
    assert retriever.retrieve("wild canids")[0].node.metadata["rel_path"] == "fox.txt"
