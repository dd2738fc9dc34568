"""Stage1RelevanceFilter as a LlamaIndex postprocessor, on tiny real models."""

from __future__ import annotations

import asyncio

import pytest
from files import write_image
from llama_index.core import VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode

from mmrag_agent.models import load_model
from mmrag_agent.postprocessors.stage1 import Stage1RelevanceFilter

QUERY = "Which city hosted the 1992 Summer Olympics?"


def retrieved(tmp_path):
    image = write_image(tmp_path / "stadium.png", size=(300, 200), color="green")
    return [
        NodeWithScore(node=TextNode(text="Barcelona hosted the 1992 Summer Olympics.", metadata={"title": "Barcelona"}), score=0.8),
        NodeWithScore(node=ImageNode(image_path=str(image), text="Caption: the Olympic stadium", metadata={"file_name": "stadium.png"}), score=0.3),
        NodeWithScore(node=TextNode(text="The cat sat on the mat."), score=0.5),
        NodeWithScore(node=TextNode(text="Olympic host cities are chosen seven years ahead."), score=0.4),
    ]


class _Events(BaseEventHandler):
    events: list = []

    @classmethod
    def class_name(cls) -> str:
        return "_Events"

    def handle(self, event, **kwargs):
        if isinstance(event, (ReRankStartEvent, ReRankEndEvent)):
            self.events.append(event)


class _Callbacks(BaseCallbackHandler):
    def __init__(self):
        super().__init__([], [])
        self.ended = []

    def on_event_start(self, event_type, payload=None, event_id="", parent_id="", **kwargs):
        return event_id

    def on_event_end(self, event_type, payload=None, event_id="", **kwargs):
        self.ended.append((event_type, payload))

    def start_trace(self, trace_id=None):
        pass

    def end_trace(self, trace_id=None, trace_map=None):
        pass


@pytest.fixture(scope="module")
def tiny_vlm(tiny_qwen2_vl_dir):
    return load_model(tiny_qwen2_vl_dir, max_pixels=448 * 448)


def test_scores_are_probabilities_with_evidence_and_order(tiny_vlm, tmp_path):
    stage1 = Stage1RelevanceFilter(tiny_vlm, top_n=3, batch_size=2, fusion_weight=1.0)  # stage 1 alone
    nodes = retrieved(tmp_path)
    kept = stage1.postprocess_nodes(nodes, query_str=QUERY)
    assert len(kept) == 3
    scores = [n.score for n in kept]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    for item in kept:
        meta = item.node.metadata
        assert meta["relevance_probability"] == item.score
        assert meta["retrieval_score"] in {0.8, 0.3, 0.5, 0.4}
        assert "relevance_probability" in item.node.excluded_llm_metadata_keys
    assert "relevance_probability" not in nodes[0].node.metadata  # the retriever's nodes are not mutated
    everything = Stage1RelevanceFilter(tiny_vlm, top_n=None, fusion_weight=1.0).postprocess_nodes(nodes, query_str=QUERY)
    threshold = sorted(n.score for n in everything)[1]
    above = Stage1RelevanceFilter(tiny_vlm, top_n=None, threshold=threshold).postprocess_nodes(nodes, query_str=QUERY)
    assert len(above) == 3 and min(n.node.metadata["relevance_probability"] for n in above) >= threshold


def test_ranking_fuses_p_with_the_retrieval_score_per_modality(tiny_vlm, tmp_path):
    nodes = retrieved(tmp_path)  # text scores 0.8, 0.5, 0.4; the one image 0.3
    default = Stage1RelevanceFilter(tiny_vlm, top_n=2).postprocess_nodes(nodes, query_str=QUERY)
    # zero-shot (no card): the retriever's order decides within each modality, so the best text and the best image
    # are kept whatever an untrained judge thinks of them
    assert {n.node.node_id for n in default} == {nodes[0].node.node_id, nodes[1].node.node_id}
    fused = Stage1RelevanceFilter(tiny_vlm, top_n=None, fusion_weight=0.3).postprocess_nodes(nodes, query_str=QUERY)
    by_text = {n.node.get_content(): n for n in fused}
    normalised = {0.8: 1.0, 0.5: 0.25, 0.4: 0.0, 0.3: 1.0}  # min-max among the texts; the image alone in its group
    for item in fused:
        meta = item.node.metadata
        expected = 0.3 * meta["relevance_probability"] + 0.7 * normalised[meta["retrieval_score"]]
        assert meta["fused_score"] == pytest.approx(expected) and item.score == meta["fused_score"]
    assert [n.score for n in fused] == sorted((n.score for n in fused), reverse=True)
    assert by_text["The cat sat on the mat."].node.metadata["retrieval_score"] == 0.5


def test_rerank_events_and_callbacks_are_emitted(tiny_vlm, tmp_path):
    handler = _Events()
    get_dispatcher().add_event_handler(handler)
    callbacks = _Callbacks()
    stage1 = Stage1RelevanceFilter(tiny_vlm, top_n=2, callback_manager=CallbackManager([callbacks]))
    kept = stage1.postprocess_nodes(retrieved(tmp_path), query_str=QUERY)
    start = [e for e in handler.events if isinstance(e, ReRankStartEvent)]
    end = [e for e in handler.events if isinstance(e, ReRankEndEvent)]
    assert start and start[-1].top_n == 2 and len(start[-1].nodes) == 4
    assert end and [n.node.node_id for n in end[-1].nodes] == [n.node.node_id for n in kept]
    assert any(event_type == CBEventType.RERANKING for event_type, _ in callbacks.ended)


def test_async_matches_sync(tiny_vlm, tmp_path):
    stage1 = Stage1RelevanceFilter(tiny_vlm, top_n=4)
    sync = stage1.postprocess_nodes(retrieved(tmp_path), query_bundle=QueryBundle(QUERY))
    async_ = asyncio.run(stage1.apostprocess_nodes(retrieved(tmp_path), query_bundle=QueryBundle(QUERY)))
    assert [n.score for n in async_] == pytest.approx([n.score for n in sync], abs=1e-6)


def test_reasoning_mode_returns_the_reasoning(tiny_qwen2_dir, tmp_path):
    stage1 = Stage1RelevanceFilter(str(tiny_qwen2_dir), top_n=2, reasoning=True, max_new_tokens=6)
    kept = stage1.postprocess_nodes(retrieved(tmp_path), query_str=QUERY)
    assert all(isinstance(n.node.metadata["relevance_reasoning"], str) for n in kept)
    assert all(0 < n.node.metadata["relevance_probability"] < 1 for n in kept)


def test_one_line_in_a_plain_text_vector_index_app(tiny_qwen2_dir):
    nodes = [TextNode(text=t) for t in ("Barcelona hosted the 1992 Summer Olympics.", "The cat sat on the mat.", "Paris is in France.")]
    index = VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(llm=MockLLM(max_tokens=4), similarity_top_k=3,
                                   node_postprocessors=[Stage1RelevanceFilter(str(tiny_qwen2_dir), top_n=2)])
    response = engine.query(QUERY)
    assert len(response.source_nodes) == 2
    assert all("relevance_probability" in n.node.metadata for n in response.source_nodes)


def test_one_line_in_a_multimodal_index_app(tiny_vlm, tmp_path, mock_text_model):
    from mmrag_agent.indexing import build_index

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "olympics.txt").write_text("Barcelona hosted the 1992 Summer Olympics.")
    write_image(folder / "stadium.png", size=(300, 200))
    (folder / "stadium.png.txt").write_text("The Olympic stadium in Barcelona")
    index = build_index(folder, store=tmp_path / "store", text_model=mock_text_model, image_model="text", ocr="off", show_progress=False)
    engine = index.as_query_engine(llm=MockLLM(max_tokens=4), similarity_top_k=1, image_similarity_top_k=1,
                                   node_postprocessors=[Stage1RelevanceFilter(tiny_vlm, top_n=2)])
    response = engine.query(QUERY)
    kinds = {type(n.node).__name__ for n in response.source_nodes}
    assert kinds == {"TextNode", "ImageNode"}
    assert all(0 < n.node.metadata["relevance_probability"] < 1 for n in response.source_nodes)


def test_eval_cli_ranks_with_stage1(tiny_qwen2_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from mmrag_agent.cli import app

    rows = [{"qid": f"q{i}", "query": f"Which city hosted games {i}?", "positives": ["a"], "answers": ["Barcelona"],
             "candidates": [{"id": "a", "modality": "text", "text": "Barcelona hosted them.", "title": "Barcelona"},
                            {"id": "b", "modality": "image", "text": "A cat on a mat", "title": "Cat"},
                            {"id": "c", "modality": "text", "text": "Paris is in France."}]} for i in range(3)]
    data = tmp_path / "rerank.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "results.json"
    result = CliRunner().invoke(app, ["eval", "rerank", "--data", str(data), "--reranker", "stage1", "--model", str(tiny_qwen2_dir),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["reranker"] == "stage1" and written["model"] == str(tiny_qwen2_dir) and written["n"] == 3
    assert set(written["metrics"]) >= {"p@1", "mrr", "ndcg@5", "recall@5"}
    assert all(0.0 <= v <= 1.0 for v in written["metrics"].values())


def test_eval_cli_fuses_stage1_with_a_first_stage_retriever(tiny_qwen2_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from mmrag_agent.cli import app
    from mmrag_agent.eval.baselines import BM25Reranker
    from mmrag_agent.eval.rerank import evaluate_reranker
    from mmrag_agent.schema import read_rerank_examples

    rows = [{"qid": f"q{i}", "query": f"Which city hosted games {i}?", "positives": ["c"], "answers": ["Barcelona"],
             "candidates": [{"id": "a", "modality": "text", "text": "A cat on a mat."},
                            {"id": "b", "modality": "text", "text": "Paris is in France."},
                            {"id": "c", "modality": "text", "text": f"Barcelona hosted the games {i}, the city hosted games."}]}
            for i in range(3)]
    data = tmp_path / "rerank.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    runs = {}
    for first_stage, weight in (("none", None), ("bm25", "0"), ("bm25", "1")):
        out = tmp_path / f"{first_stage}-{weight}.json"
        args = ["eval", "rerank", "--data", str(data), "--reranker", "stage1", "--model", str(tiny_qwen2_dir), "--out", str(out),
                "--first-stage", first_stage] + (["--fusion-weight", weight] if weight else [])
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        runs[(first_stage, weight)] = json.loads(out.read_text())
    bm25 = evaluate_reranker(read_rerank_examples(data), BM25Reranker(), show_progress=False).metrics
    assert runs[("bm25", "0")]["metrics"] == bm25  # weight 0: exactly the retriever's ranking
    assert runs[("bm25", "0")]["fusion"] == {"first_stage": "bm25", "weight": 0.0}
    assert runs[("bm25", "1")]["metrics"] == runs[("none", None)]["metrics"] and runs[("none", None)]["fusion"] is None
    bad = CliRunner().invoke(app, ["eval", "rerank", "--data", str(data), "--reranker", "bm25", "--first-stage", "bm25"])
    assert bad.exit_code == 2 and "--first-stage is used by the stage1 and pipeline rerankers" in bad.output
