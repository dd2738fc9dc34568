"""Stage 2 (list-wise rerank + explained answer) and the end-to-end engine, on tiny real models."""

from __future__ import annotations

import asyncio

import pytest
from files import write_image
from llama_index.core.base.response.schema import StreamingResponse
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import ImageNode, NodeWithScore, TextNode

from mmrag_agent.engine import MMRAGQueryEngine
from mmrag_agent.explain import NO_ANSWER, ExplainedAnswer, build_explained_answer
from mmrag_agent.inference import Stage2Model
from mmrag_agent.models import load_model
from mmrag_agent.postprocessors import ExplainableSynthesizer, Stage1RelevanceFilter, Stage2ListwiseReranker, node_view

QUERY = "Which city hosted the 1992 Summer Olympics?"


def candidates(tmp_path):
    image = write_image(tmp_path / "stadium.png", size=(224, 224), color="green")
    return [NodeWithScore(node=TextNode(text="The cat sat on the mat."), score=0.9),
            NodeWithScore(node=ImageNode(image_path=str(image), text="Caption: the Olympic stadium"), score=0.8),
            NodeWithScore(node=TextNode(text="Barcelona hosted the 1992 Summer Olympics."), score=0.7)]


@pytest.fixture(scope="module")
def tiny_vlm(tiny_qwen2_vl_dir):
    return load_model(tiny_qwen2_vl_dir, max_pixels=224 * 224)


def views(nodes):
    return [node_view(n.node) for n in nodes]


def test_a_well_formed_completion_maps_to_nodes_ranking_citations_and_evidence(tiny_vlm, tmp_path):
    stage2 = Stage2Model(tiny_vlm)
    nodes = candidates(tmp_path)
    completion = "The third passage names the city; the stadium photo supports it.</think>\n<rank>[3] > [2]</rank>\n<answer>Barcelona [3], see also [2].</answer>"
    output = stage2.finish(QUERY, views(nodes), completion)  # the real parser on a hand-written completion
    assert output.ranking == [3, 2] and output.cited == [3, 2]
    assert output.answer == "Barcelona [3], see also [2]." and output.format_ok and not output.used_fallback
    assert output.reasoning.startswith("The third passage")
    keys = tuple(n.node.node_id for n in nodes)
    explained = build_explained_answer(QUERY, nodes, (keys, output))
    assert [c.node_id for c in explained.candidates] == [keys[2], keys[1], keys[0]]  # ranked first, in rank order
    assert [c.stage2_rank for c in explained.candidates] == [1, 2, None] and [c.cited for c in explained.candidates] == [True, True, False]
    assert stage2.recall(QUERY, [keys[2]]) == (keys, output)  # a synthesizer after a reranker finds this judgement


def test_unusable_output_falls_back_to_the_incoming_stage1_order_not_reversed(tiny_vlm, tmp_path):
    nodes = candidates(tmp_path)
    by_stage1 = [nodes[2], nodes[0], nodes[1]]  # the order stage 1 passed them on
    stage2 = Stage2Model(tiny_vlm)
    output = stage2.finish(QUERY, views(by_stage1), "no tags at all")
    assert output.used_fallback and output.ranking == [1, 2, 3]
    reranker = Stage2ListwiseReranker(stage2)
    stage2.remember(QUERY, views(by_stage1), output)  # served from the cache: the reranker maps it to nodes
    kept = reranker.postprocess_nodes(by_stage1, query_str=QUERY)
    assert [n.node.node_id for n in kept] == [n.node.node_id for n in by_stage1]
    assert [n.node.metadata["stage2_rank"] for n in kept] == [1, 2, 3]


@pytest.mark.parametrize("reorder", [None, False, True])
def test_stage2_reorders_only_when_told_or_when_its_card_check_found_it_ranks_better(tiny_vlm, tmp_path, reorder):
    nodes = candidates(tmp_path)
    stage2 = Stage2Model(tiny_vlm)  # no model card: no held-out check, so by default the incoming order stands
    completion = "The third passage names the city.</think>\n<rank>[3] > [2]</rank>\n<answer>Barcelona [3].</answer>"
    stage2.remember(QUERY, views(nodes), stage2.finish(QUERY, views(nodes), completion))
    reranker = Stage2ListwiseReranker(stage2, reorder=reorder)
    kept = reranker.postprocess_nodes(nodes, query_str=QUERY)
    ids = [n.node.node_id for n in nodes]
    if reorder:  # the model's ranking: the ranked nodes, best first, score 1 / rank
        assert [n.node.node_id for n in kept] == [ids[2], ids[1]] and [n.score for n in kept] == [1.0, 0.5]
    else:  # every shown node in the incoming order with its incoming score; stage 2's judgement is evidence
        assert [n.node.node_id for n in kept] == ids and [n.score for n in kept] == [0.9, 0.8, 0.7]
        assert [n.node.metadata["stage2_rank"] for n in kept] == [None, 2, 1]
        assert [n.node.metadata["stage2_cited"] for n in kept] == [False, False, True]
    assert all(n.node.metadata["stage2_reordered"] is bool(reorder) for n in kept)
    explained = build_explained_answer(QUERY, kept, stage2.recall(QUERY, ids))  # the explanation lists the served order
    assert [c.node_id for c in explained.candidates] == [n.node.node_id for n in kept]
    assert [c.stage2_rank for c in explained.candidates][:2] == ([1, 2] if reorder else [None, 2])
    card_says = stage2.card.__class__(stage=2, ranking_check={"reorder": True})
    assert Stage2ListwiseReranker(Stage2Model(tiny_vlm, card=card_says)).reorder is True


def test_streamed_deltas_are_exactly_the_answer_span():
    from mmrag_agent.format import parse_stage2_output
    from mmrag_agent.inference.stage2 import answer_deltas

    completion = "reasoning</think><rank>[2] > [1]</rank><answer>  Barcelona hosted [2] it.  </answer>"
    expected = parse_stage2_output("<think>" + completion, 2).answer
    for size in range(1, len(completion) + 1):  # every way of cutting the stream into chunks of one size
        chunks = [completion[i:i + size] for i in range(0, len(completion), size)]
        deltas = list(answer_deltas(chunks, prefix="<think>"))
        assert "".join(deltas) == expected, size
        assert not any("<" in d or ">" in d for d in deltas)  # no tag, no partial </answer>
    assert list(answer_deltas(["<think>x</think><rank>[1]</rank>", "<answer>Ro", "me</ans"])) == ["Ro", "me"]


def test_prompt_shows_every_image_to_a_vlm_after_the_query(tiny_vlm, tmp_path):
    prompt, images = Stage2Model(tiny_vlm).prompt(QUERY, views(candidates(tmp_path)))
    assert prompt.count("<|image_pad|>") == len(images) == 1
    after_query = prompt.index(QUERY)
    first, second = prompt.index("[1]", after_query), prompt.index("[2]", after_query)
    assert first < second < prompt.index("<|image_pad|>") < prompt.index("[3]", after_query)  # [2] is the image
    assert prompt.endswith("<think>")


def test_reranker_and_synthesizer_share_one_generation(tiny_vlm, tmp_path):
    stage2 = Stage2Model(tiny_vlm, max_new_tokens=40, constrained=False)
    nodes = candidates(tmp_path)
    reranked = Stage2ListwiseReranker(stage2).postprocess_nodes(nodes, query_str=QUERY)
    assert reranked and all("stage2_rank" in n.node.metadata for n in reranked)
    response = ExplainableSynthesizer(stage2).synthesize(QUERY, reranked)
    assert stage2.generations == 1  # the synthesizer found the reranker's judgement
    for key in ("explanation", "reasoning", "ranking", "cited_node_ids", "raw_output", "warnings"):
        assert key in response.metadata
    # 8 random tokens are never well formed: the fallback (stage-1 order) is used and said
    assert response.metadata["used_fallback"] and any("fell back" in w for w in response.metadata["warnings"])
    assert [n.node.node_id for n in response.source_nodes][: len(reranked)] == response.metadata["ranking"]
    assert str(response) == (response.metadata["answer"] or NO_ANSWER)


def test_batched_generation_equals_one_query_at_a_time(tiny_vlm, tmp_path):
    nodes = views(candidates(tmp_path))
    requests = [(QUERY, nodes), ("What sits on the mat?", nodes[:1]), ("Where is the stadium?", nodes[1:])]  # 1, 0, 1 images
    batched = Stage2Model(tiny_vlm, max_new_tokens=40).run_many(requests, batch_size=3)
    single = [Stage2Model(tiny_vlm, max_new_tokens=40).run(q, n) for q, n in requests]
    assert [r.raw for r in batched] == [r.raw for r in single]
    assert all(r.raw for r in batched)
    with pytest.raises(ValueError, match="batch_size"):
        Stage2Model(tiny_vlm).run_many(requests, batch_size=0)


def test_synthesizer_streams_and_fills_metadata_at_the_end(tiny_vlm, tmp_path):
    stage2 = Stage2Model(tiny_vlm, max_new_tokens=40)
    response = ExplainableSynthesizer(stage2, streaming=True).synthesize(QUERY, candidates(tmp_path))
    assert isinstance(response, StreamingResponse)
    streamed = "".join(response.response_gen)
    assert "ranking" in response.metadata and stage2.generations == 1
    assert streamed == (response.metadata["answer"] or NO_ANSWER)
    empty = ExplainableSynthesizer(stage2, streaming=True).synthesize(QUERY, [])  # the base class's empty stream
    assert isinstance(empty, StreamingResponse) and "".join(empty.response_gen) == "Empty Response"


def test_synthesizer_async_and_in_a_standard_llamaindex_engine(tiny_vlm, tmp_path):
    from llama_index.core.retrievers import BaseRetriever

    nodes = candidates(tmp_path)

    class FixedRetriever(BaseRetriever):
        def _retrieve(self, query_bundle):
            return nodes

    synthesizer = ExplainableSynthesizer(Stage2Model(tiny_vlm, max_new_tokens=40))
    engine = RetrieverQueryEngine(FixedRetriever(), response_synthesizer=synthesizer,
                                  node_postprocessors=[Stage1RelevanceFilter(tiny_vlm, top_n=2)])
    response = asyncio.run(engine.aquery(QUERY))
    assert len(response.source_nodes) == 2 and "reasoning" in response.metadata
    explained = response.metadata["explanation"]  # built from what the nodes carry, however assembled
    assert len(explained.candidates) == 2 and all(c.stage1_probability is not None for c in explained.candidates)


@pytest.fixture
def indexed(tmp_path):
    from llama_index.core.embeddings import MockEmbedding

    from mmrag_agent.indexing import build_index

    root = tmp_path
    folder = root / "docs"
    folder.mkdir()
    (folder / "olympics.txt").write_text("Barcelona hosted the 1992 Summer Olympics.")
    (folder / "cats.txt").write_text("Cats sleep most of the day.")
    write_image(folder / "stadium.png", size=(224, 224))
    (folder / "stadium.png.txt").write_text("The Olympic stadium in Barcelona")
    return build_index(folder, store=root / "store", text_model=MockEmbedding(embed_dim=8), image_model="text", ocr="off", show_progress=False)


def test_engine_answers_with_evidence_for_every_candidate(indexed, tiny_vlm):
    engine = MMRAGQueryEngine.from_defaults(indexed, model=tiny_vlm, k_text=5, k_image=5, keep=2, max_new_tokens=40)
    assert [type(p).__name__ for p in engine._node_postprocessors] == ["Stage1RelevanceFilter", "Stage2ListwiseReranker"]
    response = engine.query(QUERY)
    explained = response.metadata["explanation"]
    assert isinstance(explained, ExplainedAnswer) and str(response) == explained.answer
    assert {c.source for c in explained.candidates} == {"olympics.txt", "cats.txt", "stadium.png"}
    assert sum(c.kept_by_stage1 for c in explained.candidates) == 2  # "score every candidate, keep n"
    assert all(0 < c.stage1_probability < 1 for c in explained.candidates)
    kept = [c for c in explained.candidates if c.kept_by_stage1]
    assert sorted(c.stage2_position for c in kept) == [1, 2]
    assert all(c.stage2_position is None for c in explained.candidates if not c.kept_by_stage1)
    assert set(explained.timings) == {"retrieve", "stage1", "stage2"}
    image = next(c for c in explained.candidates if c.modality == "image")
    assert image.image_path.endswith("stadium.png") and "Olympic stadium" in image.text
    # without score_all, stage 1 drops the others as in any LlamaIndex app: they are not in the evidence
    lean = MMRAGQueryEngine.from_defaults(indexed, model=tiny_vlm, k_text=5, k_image=5, keep=2, max_new_tokens=40, score_all=False)
    assert len(lean.explain(QUERY).candidates) == 2
    # stage 1's top_n is what the engine keeps (it is not ignored)
    one = MMRAGQueryEngine.from_defaults(indexed, model=tiny_vlm, k_text=5, k_image=5, keep=1, max_new_tokens=40)
    assert sum(c.kept_by_stage1 for c in one.explain(QUERY).candidates) == 1
    with pytest.raises(ValueError, match="empty"):
        engine.query("   ")


def test_engine_streams_async_and_works_as_an_agent_tool(indexed, tiny_vlm):
    engine = MMRAGQueryEngine.from_defaults(indexed, model=tiny_vlm, keep=2, max_new_tokens=40, streaming=True)
    streamed = engine.query(QUERY)
    assert isinstance(streamed, StreamingResponse)
    "".join(streamed.response_gen)
    assert isinstance(streamed.metadata["explanation"], ExplainedAnswer)
    plain = MMRAGQueryEngine.from_defaults(indexed, model=tiny_vlm, keep=2, max_new_tokens=40)
    assert isinstance(asyncio.run(plain.aquery(QUERY)).metadata["explanation"], ExplainedAnswer)
    tool = plain.as_tool()
    assert tool.metadata.name == "multimodal_document_search"
    output = tool.call(QUERY)
    assert output.raw_output.metadata["explanation"].question == QUERY


@pytest.mark.parametrize("reranker, query_batch", [("stage2", "1"), ("pipeline", "2")])
def test_eval_cli_reports_source_and_answer_metrics(reranker, query_batch, tiny_qwen2_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from mmrag_agent.cli import app

    rows = [{"qid": f"q{i}", "query": f"Which city hosted games {i}?", "positives": ["a"], "answers": ["Barcelona"],
             "candidates": [{"id": c, "modality": "text", "text": f"candidate {c} text", "title": c.upper()} for c in "abcdefg"]}
            for i in range(2)]
    data = tmp_path / "rerank.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "results.json"
    result = CliRunner().invoke(app, ["eval", "rerank", "--data", str(data), "--reranker", reranker, "--model", str(tiny_qwen2_dir),
                                      "--out", str(out), "--per-query", "--query-batch", query_batch])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["reranker"] == reranker and written["n"] == 2
    for key in ("p@1", "mrr", "ndcg@5", "recall@5", "source_f1", "answer_em", "answer_f1"):
        assert 0.0 <= written["metrics"][key] <= 1.0, key
    first = written["per_query"][0]
    assert sorted(first["ranking"]) == list("abcdefg")  # every candidate ranked exactly once
    assert set(first["selected"]) <= set("abcdefg") and isinstance(first["answer"], str)


def test_pipeline_keeping_the_order_ranks_exactly_as_its_stage1_model(tiny_qwen2_dir, tiny_qwen2_vl_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from mmrag_agent.cli import app

    rows = [{"qid": f"q{i}", "query": f"Which city hosted games {i}?", "positives": ["c"], "answers": ["Barcelona"],
             "candidates": [{"id": c, "modality": "text", "text": f"{c} hosted games {i * 3 % 7}", "title": c.upper()} for c in "abcdefg"]}
            for i in range(3)]
    data = tmp_path / "rerank.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))

    def ranked(*args):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.json"
        result = CliRunner().invoke(app, ["eval", "rerank", "--data", str(data), "--out", str(out), "--per-query", *args])
        assert result.exit_code == 0, result.output
        return [q["ranking"] for q in json.loads(out.read_text())["per_query"]]

    stage1 = ranked("--reranker", "stage1", "--model", str(tiny_qwen2_dir))
    # stage 2 is another model; kept order: the pipeline's ranking is its stage-1 model's, whatever stage 2 wrote
    assert ranked("--reranker", "pipeline", "--model", str(tiny_qwen2_vl_dir), "--stage1-model", str(tiny_qwen2_dir),
                  "--keep-order") == stage1
    assert ranked("--reranker", "pipeline", "--model", str(tiny_qwen2_vl_dir), "--stage1-model", str(tiny_qwen2_dir)) == stage1  # no card check
    bad = CliRunner().invoke(app, ["eval", "rerank", "--data", str(data), "--reranker", "stage1", "--stage1-model", "x"])
    assert bad.exit_code == 2 and "--stage1-model is used by the pipeline reranker" in bad.output


def test_answer_metrics_of_a_judgement_by_hand():
    from mmrag_agent.eval.rerank import answer_metrics
    from mmrag_agent.eval.stage2 import Judgement
    from mmrag_agent.schema import RerankExample

    example = RerankExample.model_validate({"qid": "q", "query": "?", "positives": ["a", "b"], "answers": ["Barcelona"],
                                            "candidates": [{"id": c, "modality": "text"} for c in "abc"]})
    right = answer_metrics(Judgement(ranking=list("abc"), selected=["a"], answer="barcelona."), example)
    assert right["source_f1"] == 2 * 1.0 * 0.5 / 1.5  # precision 1/1, recall 1/2
    assert (right["answer_em"], right["answer_f1"]) == (1.0, 1.0)  # normalisation drops case and punctuation
    wrong = answer_metrics(Judgement(ranking=list("cab"), selected=["c"], answer="Atlanta"), example)
    assert (wrong["source_f1"], wrong["answer_em"], wrong["answer_f1"]) == (0.0, 0.0, 0.0)


def test_candidates_listed_ranked_then_shown_then_kept_then_dropped_each_by_the_stage1_score():
    from mmrag_agent.format import parse_stage2_output

    def node(name, p, fused, kept):
        meta = {"relevance_probability": p, "fused_score": fused, "retrieval_score": fused, "stage1_kept": kept, "rel_path": name}
        return NodeWithScore(node=TextNode(text=name, id_=name, metadata=meta), score=fused)

    shown = [node("shown-a", 0.2, 0.9, True), node("shown-b", 0.3, 0.8, True), node("shown-c", 0.9, 0.7, True)]
    kept_not_shown = [node("kept-low", 0.9, 0.2, True), node("kept-high", 0.1, 0.6, True)]
    dropped = [node("dropped-low", 0.99, 0.1, False), node("dropped-high", 0.05, 0.5, False), node("dropped-nan", float("nan"), float("nan"), False)]
    output = parse_stage2_output("<think>c is best</think><rank>[3]</rank><answer>yes [3]</answer>", 3)
    nodes = dropped + kept_not_shown + shown  # any incoming order
    explained = build_explained_answer(QUERY, nodes, (tuple(n.node.node_id for n in shown), output))
    assert [c.source for c in explained.candidates] == [
        "shown-c",  # ranked by stage 2
        "shown-a", "shown-b",  # shown to stage 2, not ranked: prompt order
        "kept-high", "kept-low",  # kept by stage 1: by the fused score it ranked by, not by P(relevant)
        "dropped-high", "dropped-low", "dropped-nan"]  # dropped: by the fused score, unusable last
