"""The contract from training to serving: the same prompt, the same output rules, the same meaning of "relevant".

Each test here pins one seam between training (``mmrag_agent.finetune``) and serving (``mmrag_agent.inference`` and
its LlamaIndex adapters) on real tiny models, real files and a real save/load round trip.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from files import write_image
from test_stage2_output import CASES

from mmrag_agent.eval.answers import answer_f1
from mmrag_agent.eval.stage1 import Stage1Reranker
from mmrag_agent.finetune.datasets import stage1_records, stage2_records
from mmrag_agent.finetune.policy import training_processor
from mmrag_agent.finetune.rewards import stage2_answer_reward, stage2_format_reward, stage2_rank_reward
from mmrag_agent.format import STAGE1_PREFIX, STAGE1_REASONING_PREFIX, STAGE2_PREFIX, parse_stage2_output
from mmrag_agent.inference import Stage2Model, YesNoScorer, select_top
from mmrag_agent.model_card import ModelCard, read_model_card, write_model_card
from mmrag_agent.models import load_model
from mmrag_agent.models.generation import encode
from mmrag_agent.postprocessors import Stage1RelevanceFilter, Stage2ListwiseReranker
from mmrag_agent.prompts import candidate_view
from mmrag_agent.schema import read_rerank_examples

LONG = " ".join(f"word{i}" for i in range(200))  # longer than the card's text budget: the cut must match


def _data(tmp_path):
    """A rerank-example file whose image paths are relative to it, with long texts."""
    (tmp_path / "img").mkdir()
    for name, color in (("a", "red"), ("c", "blue")):
        write_image(tmp_path / "img" / f"{name}.png", size=(64, 48), color=color)
    rows = [{"qid": f"q{i}", "query": f"Which poster shows a red square {i}?", "positives": ["a"], "answers": ["red"],
             "candidates": [{"id": "a", "modality": "image", "title": "Poster A", "text": "A red poster " + LONG, "image_path": "img/a.png"},
                            {"id": "b", "modality": "text", "title": "Notes", "text": "Unrelated notes " + LONG},
                            {"id": "c", "modality": "image", "title": "Poster C", "text": "A blue poster", "image_path": "img/c.png"}]}
            for i in range(2)]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return data


def _trl_prompt_ids(loaded, record, prefix):
    """Token ids of a record's prompt as TRL's GRPOTrainer renders it (``_tokenize_prompts``)."""
    from PIL import Image
    from trl.data_utils import prepare_multimodal_messages

    processor = training_processor(loaded.processor, prefix)
    messages = record["prompt"]
    if loaded.is_vision:
        paths = record.get("images") or ([record["image"]] if record.get("image") else [])
        messages = prepare_multimodal_messages(messages, images=[Image.open(p).convert("RGB") for p in paths])
    tokenized = processor.apply_chat_template(conversation=[messages], add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(tokenized["input_ids"][0])


def _saved_run(model_dir, out, card: ModelCard):
    """A training output directory: the model, its processor and the card training writes."""
    shutil.copytree(model_dir, out)
    write_model_card(out, card)
    return out


@pytest.mark.parametrize("model_fixture", ["tiny_qwen2_dir", "tiny_qwen2_vl_dir"])
@pytest.mark.parametrize("stage, reasoning", [(1, False), (1, True), (2, False)])
def test_training_prompt_equals_serving_prompt_after_save_and_load(model_fixture, stage, reasoning, request, tmp_path):
    model_dir = request.getfixturevalue(model_fixture)
    data = _data(tmp_path)
    examples = read_rerank_examples(data)
    loaded = load_model(model_dir)
    budget, k = 40, 3  # not the defaults: serving must take them from the card
    prefix = STAGE2_PREFIX if stage == 2 else STAGE1_REASONING_PREFIX if reasoning else STAGE1_PREFIX
    card = ModelCard(stage=stage, assistant_prefix=prefix, reasoning=reasoning, max_text_tokens=budget,
                     candidates_per_prompt=k if stage == 2 else None, kind="lora", base_model=str(model_dir))
    if stage == 1:
        records = stage1_records(examples, with_images=loaded.is_vision, reasoning=reasoning, data_file=data,
                                 tokenizer=loaded.tokenizer, max_text_tokens=budget)
    else:
        records = stage2_records(examples, k=k, permutations=2, with_images=loaded.is_vision, data_file=data,
                                 tokenizer=loaded.tokenizer, max_text_tokens=budget)

    served = load_model(_saved_run(model_dir, tmp_path / "run", card))
    assert served.card == read_model_card(tmp_path / "run") and served.card.max_text_tokens == budget
    by_id = {(ex.qid, c.id): c for ex in examples for c in ex.candidates}
    queries = {ex.qid: ex.query for ex in examples}
    checked = 0
    scorer = Stage1RelevanceFilter(str(tmp_path / "run")).scorer if stage == 1 else None
    stage2 = Stage2ListwiseReranker(str(tmp_path / "run")).stage2 if stage == 2 else None
    for record in records:
        if stage == 1:
            view = candidate_view(by_id[(record["qid"], record["candidate_id"])], data, with_image=served.is_vision)
            text, images = scorer.generation_prompt(queries[record["qid"]], view), [view.image] if view.image and served.is_vision else []
        else:
            views = [candidate_view(by_id[(record["qid"], cid)], data, with_image=served.is_vision) for cid in record["candidate_ids"]]
            text, images = stage2.prompt(queries[record["qid"]], views)
        serving = encode(served, [text], [images])["input_ids"][0].tolist()
        assert serving == _trl_prompt_ids(loaded, record, prefix), record["qid"]
        checked += 1
    assert checked == len(records) > 0
    if stage == 1 and not reasoning:  # the scoring position directly follows the trained prefix
        assert scorer.prompt(queries["q0"], view) == scorer.generation_prompt(queries["q0"], view)
    # the evaluation reranker (mmrag eval rerank --model DIR) reads the same card
    if stage == 1:
        assert Stage1Reranker(str(tmp_path / "run"), data_file=data).scorer.card == served.card


def test_a_card_of_the_other_stage_or_none_gives_the_stage_defaults(tiny_qwen2_dir, tmp_path):
    run = _saved_run(tiny_qwen2_dir, tmp_path / "run", ModelCard(stage=2, assistant_prefix="<think>", max_text_tokens=33,
                                                                 candidates_per_prompt=3))
    loaded = load_model(run)
    assert YesNoScorer(loaded).card.assistant_prefix == STAGE1_PREFIX and YesNoScorer(loaded).max_text_tokens == 256
    assert Stage2Model(loaded).max_text_tokens == 33
    assert Stage2Model(load_model(tiny_qwen2_dir)).assistant_prefix == STAGE2_PREFIX  # zero-shot default: no skew
    (run / "model_card.json").write_text("{not json")
    with pytest.raises(ValueError, match="model_card.json: not readable JSON"):
        load_model(run)


def _yes_no_model(model_dir, yes_logit: float, no_logit: float):
    """The tiny model with its vocabulary projection replaced by constants: the next token is 'yes' or 'no' by hand."""
    loaded = load_model(model_dir)
    scorer = YesNoScorer(loaded)
    head = torch.nn.Linear(loaded.model.config.hidden_size, loaded.model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-20.0)
        head.bias[scorer.yes_id], head.bias[scorer.no_id] = yes_logit, no_logit
    loaded.model.lm_head = head
    return loaded


def test_the_yes_token_is_what_relevant_means(tiny_qwen2_dir):
    from mmrag_agent.prompts import CandidateView

    views = [CandidateView(text="Barcelona hosted the 1992 Olympics."), CandidateView(text="The cat sat on the mat.")]
    relevant = YesNoScorer(_yes_no_model(tiny_qwen2_dir, 4.0, -4.0)).score("Who hosted in 1992?", views)
    assert relevant == pytest.approx([1 / (1 + math.exp(-8.0))] * 2, abs=1e-5)  # P(relevant) = softmax(yes, no)[yes]
    irrelevant = YesNoScorer(_yes_no_model(tiny_qwen2_dir, -4.0, 4.0)).score("Who hosted in 1992?", views)
    assert irrelevant == pytest.approx([1 / (1 + math.exp(8.0))] * 2, abs=1e-5)


def test_nan_scores_rank_last_and_never_pass_a_threshold(tiny_qwen2_dir):
    from llama_index.core.schema import NodeWithScore, TextNode

    assert select_top([0.2, float("nan"), 0.9, 0.5], top_n=2) == ([2, 3, 0, 1], {2, 3})
    assert select_top([float("nan"), 0.4], top_n=None, threshold=0.0) == ([1, 0], {1})
    nodes = [NodeWithScore(node=TextNode(text=t), score=s) for t, s in (("a", 0.9), ("b", 0.8))]
    broken = _yes_no_model(tiny_qwen2_dir, float("nan"), 0.0)  # overflowed logits
    kept = Stage1RelevanceFilter(broken, top_n=1, return_dropped=True).postprocess_nodes(nodes, query_str="q?")
    assert [n.node.metadata["stage1_kept"] for n in kept] == [True, False]  # retrieval order kept among NaNs
    assert all(math.isnan(n.node.metadata["relevance_probability"]) for n in kept)
    assert Stage1RelevanceFilter(broken, top_n=None, threshold=0.1).postprocess_nodes(nodes, query_str="q?") == []


def test_loading_options_with_an_already_loaded_model_are_refused(tiny_qwen2_dir):
    loaded = load_model(tiny_qwen2_dir)
    with pytest.raises(ValueError, match="device, max_pixels only apply when loading"):
        Stage1RelevanceFilter(loaded, device="cuda", max_pixels=64)
    with pytest.raises(ValueError, match="already has its budgets"):
        Stage2ListwiseReranker(Stage2Model(loaded), max_new_tokens=8)
    stage1 = Stage1RelevanceFilter(loaded, top_n=3, max_text_tokens=17)
    assert (stage1.top_n, stage1.max_text_tokens, stage1.model) == (3, 17, loaded.name)


@pytest.mark.parametrize("name, text, k, fallback, ranking, cited, answer, format_ok, used_fallback, warns", CASES,
                         ids=[c[0] for c in CASES])
def test_training_rewards_and_held_out_evaluation_read_every_parser_row_alike(name, text, k, fallback, ranking, cited, answer,
                                                                              format_ok, used_fallback, warns):
    parsed = parse_stage2_output(text, k)  # what held-out evaluation and serving read
    assert stage2_format_reward([text]) == [float(parsed.format_ok)]
    golds = [parsed.answer_text or "x"]
    assert stage2_answer_reward([text], answers=[golds], gated=False) == [pytest.approx(answer_f1(parsed.answer_text, golds) if parsed.answer_text else 0.0)]
    if parsed.format_ok and not parsed.used_fallback and k:
        assert stage2_rank_reward([text], gold_ids=[parsed.ranking], k=k)[0] > 0


def test_grouped_and_adjacent_citations_score_the_same_everywhere():
    from mmrag_agent.explain.html import _linkify
    from mmrag_agent.format import find_citations

    grouped, adjacent = "<think>t</think><rank>[1] > [3]</rank><answer>Paris [1, 3]</answer>", \
                        "<think>t</think><rank>[1] > [3]</rank><answer>Paris [1][3]</answer>"
    for text in (grouped, adjacent):
        parsed = parse_stage2_output(text, 3)
        assert parsed.cited == [1, 3] and parsed.answer_text == "Paris"
        assert stage2_answer_reward([text], answers=[["Paris"]]) == [1.0]  # was 0.5 for "[1, 3]" in training
        assert answer_f1(parsed.answer_text, ["Paris"]) == 1.0
        assert [c.ids for c in find_citations(parsed.answer)] in ([(1, 3)], [(1,), (3,)])
        assert _linkify(parsed.answer, {}).count("cite-missing") == 2  # the page reads the same two ids


def test_a_huge_question_is_cut_to_the_prompt_budget_with_a_warning(tiny_qwen2_dir, caplog):
    from mmrag_agent.prompts import DEFAULT_MAX_QUERY_TOKENS, CandidateView

    loaded = load_model(tiny_qwen2_dir)
    question = "why " * 25_000  # 100 kB
    views = [CandidateView(text="Barcelona hosted the 1992 Olympics.", key="a")]
    prompt = YesNoScorer(loaded).prompt(question, views[0])
    stage2_prompt, _ = Stage2Model(loaded).prompt(question, views)
    for text in (prompt, stage2_prompt):
        assert len(loaded.tokenizer(text)["input_ids"]) < DEFAULT_MAX_QUERY_TOKENS + 400
    assert "only its first 512 are shown" in caplog.text
    assert 0.0 < YesNoScorer(loaded).score(question, views)[0] < 1.0
