"""The stage-1 training recipe: every candidate with class weights, the shared-prefix warm start (the loss and the
gradient of TRL's SFT on whole sequences), LoRA on the last layers, dynamic sampling of GRPO prompts, and the fusion
weight fitted by cross-fitting and written to the model card that serving reads."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from mmrag_agent.cli.train import train_app
from mmrag_agent.eval.stage1 import Stage1Reranker
from mmrag_agent.finetune import Stage1Config, train_stage1
from mmrag_agent.finetune.datasets import stage1_records, stage1_units
from mmrag_agent.eval.baselines import make_reranker
from mmrag_agent.finetune.fusion import QueryScores, _fold, add_listwise_offsets, cross_fit, fit_fusion, query_metric
from mmrag_agent.finetune.shared_prefix import SharedPrefixTrainer, _Groups, question_groups
from mmrag_agent.finetune.signal import mixed_group_probability, select_signal_records
from mmrag_agent.finetune.sft import stage1_target
from mmrag_agent.inference.fusion import fit_fusion_weight, fuse
from mmrag_agent.model_card import read_model_card
from mmrag_agent.models import load_model
from mmrag_agent.postprocessors.stage1 import Stage1RelevanceFilter
from mmrag_agent.prompts import render_chat
from mmrag_agent.schema import Candidate, RerankExample, read_rerank_examples

WORDS = ["river", "castle", "poster", "logo", "bridge", "violin", "garden", "rocket", "harbor", "statue", "comet", "tiger"]


def _example(q: int, n: int, positives: list[int]) -> RerankExample:
    cands = [{"id": f"q{q}-c{i}", "modality": "image", "title": f"The {WORDS[(q + i) % len(WORDS)]} of {WORDS[i % len(WORDS)]}",
              "text": f"The {WORDS[(q + i) % len(WORDS)]} of {WORDS[i % len(WORDS)]}"} for i in range(n)]
    return RerankExample(qid=f"q{q}", query=f"Which {WORDS[q % len(WORDS)]} is shown on the poster of question {q}?",
                         candidates=cands, positives=[f"q{q}-c{i}" for i in positives], answers=[WORDS[q % len(WORDS)]])


EXAMPLES = [_example(q, 4 + q % 5, [q % 3] + ([3] if q % 4 == 0 else [])) for q in range(12)]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe-data") / "train.jsonl"
    path.write_text("".join(json.dumps(e.model_dump(exclude_none=True)) + "\n" for e in EXAMPLES))
    return path


# ------------------------------------------------------------------------------------------------ data
def test_every_candidate_is_used_and_each_class_carries_half_the_weight():
    units = stage1_units(EXAMPLES, negatives_per_positive=None, seed=0)
    assert len(units) == sum(len(e.candidates) for e in EXAMPLES)  # no negative discarded
    assert {(u.example.qid, u.candidate.id) for u in units} == {(e.qid, c.id) for e in EXAMPLES for c in e.candidates}
    yes = sum(u.weight for u in units if u.label == "yes")
    no = sum(u.weight for u in units if u.label == "no")
    assert yes == pytest.approx(no) and (yes + no) / len(units) == pytest.approx(1.0)
    assert sum(u.label == "yes" for u in units) < sum(u.label == "no" for u in units)  # imbalanced counts, balanced weights
    sampled = stage1_units(EXAMPLES, negatives_per_positive=1, seed=0)
    assert all(u.weight == 1.0 for u in sampled) and len(sampled) < len(units)
    records = stage1_records(EXAMPLES, negatives_per_positive=None)
    assert [r["weight"] for r in records] == [u.weight for u in units]


def test_trl_sft_path_balances_the_classes_by_repeating_positives():
    from mmrag_agent.finetune.sft import sft_dataset

    records = stage1_records(EXAMPLES, negatives_per_positive=None)
    dataset = sft_dataset(records, [stage1_target(r) for r in records])
    labels = [row["completion"][0]["content"] for row in dataset]
    n_yes, n_no = sum("<answer>yes<" in t for t in labels), sum("<answer>no<" in t for t in labels)
    assert n_no == sum(r["label"] == "no" for r in records)  # every negative once
    assert abs(n_yes - n_no) <= sum(r["label"] == "yes" for r in records)  # positives repeated up to the balance


# ------------------------------------------------------------------------------------------------ shared-prefix warm start
@pytest.fixture(scope="module")
def tiny(tiny_qwen2_dir):
    return load_model(str(tiny_qwen2_dir), dtype="float32")


def test_question_groups_are_the_grpo_prompt_then_the_sft_completion(tiny):
    records = stage1_records(EXAMPLES, negatives_per_positive=None, tokenizer=tiny.tokenizer)
    targets = [stage1_target(r, prefix="<answer>") for r in records]
    groups = question_groups(records, targets, tiny.processor, "<answer>")
    assert sum(len(g.suffixes) for g in groups) == len(records) and len(groups) == len(EXAMPLES)
    flat = {(g.qid, i): g for g in groups for i in range(len(g.suffixes))}
    position = {}
    for record, target in zip(records, targets):
        i = position.setdefault(record["qid"], 0)
        position[record["qid"]] += 1
        group = flat[(record["qid"], i)]
        prompt = render_chat(tiny.processor, record["prompt"], "<answer>")
        whole = tiny.processor.apply_chat_template(record["prompt"] + [{"role": "assistant", "content": "<answer>" + target}], tokenize=False)
        ids = group.prefix + group.suffixes[i]
        start = len(group.prefix) + group.completion_starts[i]
        assert ids[:start] == tiny.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert tiny.tokenizer.decode(ids[start:]) == whole[len(prompt):]
        answer = group.suffixes[i][group.answers[i]]  # the answer token the list-wise term reads
        assert tiny.tokenizer.decode([answer]) == record["label"] and group.relevant[i] == (record["label"] == "yes")
    assert all(len(g.prefix) > 10 and g.tokens < sum(len(g.prefix) + len(s) for s in g.suffixes) for g in groups)


def _whole_sequence_loss(model, group, listwise: float = 0.0, answer_ids=(0, 1)) -> torch.Tensor:
    """The same loss computed the plain way: each candidate's whole sequence, cross-entropy on its completion, and
    the list-wise softmax cross-entropy of the positives on logit(yes) - logit(no) at the answer positions."""
    total, margins = torch.zeros(()), []
    for suffix, start, weight, answer in zip(group.suffixes, group.completion_starts, group.weights, group.answers):
        ids = torch.tensor([group.prefix + suffix])
        logits = model(input_ids=ids).logits[0]
        first = len(group.prefix) + start
        loss = torch.nn.functional.cross_entropy(logits[first - 1:-1], ids[0, first:])
        total = total + weight * loss
        at = logits[len(group.prefix) + answer - 1]
        margins.append(at[answer_ids[0]] - at[answer_ids[1]])
    margins = torch.stack(margins) + torch.tensor(group.offsets or [0.0] * len(margins))
    relevant = torch.tensor(group.relevant)
    return total + listwise * (torch.logsumexp(margins, 0) - torch.logsumexp(margins[relevant], 0))


@pytest.mark.parametrize("listwise, offsets", [(0.0, False), (0.7, False), (0.7, True)])
def test_shared_prefix_loss_and_gradient_equal_the_whole_sequence_ones(tiny, listwise, offsets):
    from peft import LoraConfig, get_peft_model

    from mmrag_agent.inference.scoring import answer_token_ids

    records = stage1_records(EXAMPLES[:3], negatives_per_positive=None, tokenizer=tiny.tokenizer)
    if offsets:  # the retriever's part of the fused score, as sft_listwise_retrieval adds it
        for i, record in enumerate(records):
            record["listwise_offset"] = [1.5, 0.0, 0.4, 2.0][i % 4]
    groups = question_groups(records, [stage1_target(r, prefix="<answer>") for r in records], tiny.processor, "<answer>")
    assert any(any(g.offsets) for g in groups) == offsets
    torch.manual_seed(0)
    model = get_peft_model(load_model(tiny.name, dtype="float32").model,
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False))
    model.eval()  # no dropout: the two computations must agree exactly
    trainer = SharedPrefixTrainer.__new__(SharedPrefixTrainer)  # only compute_loss is exercised
    trainer.pairs_per_group, trainer.listwise_weight = 1.0, listwise
    trainer.answer_ids = tuple(answer_token_ids(tiny.tokenizer))
    data = _Groups(groups, pad_id=tiny.tokenizer.pad_token_id or 0)
    assert all(any(g.relevant) and not all(g.relevant) for g in groups)  # both classes: the list-wise term applies
    params = [p for p in model.parameters() if p.requires_grad]
    for index, group in enumerate(groups):
        shared = trainer.compute_loss(model, data[index])
        grads = torch.autograd.grad(shared, params)
        plain = _whole_sequence_loss(model, group, listwise, trainer.answer_ids)
        plain_grads = torch.autograd.grad(plain, params)
        assert shared.item() == pytest.approx(plain.item(), rel=1e-4)
        for a, b in zip(grads, plain_grads):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-3)


def test_listwise_offsets_are_the_retrievers_normalised_scores_of_each_question():
    records = stage1_records(EXAMPLES, negatives_per_positive=None)
    bm25 = make_reranker("bm25")
    add_listwise_offsets(records, EXAMPLES, bm25, scale=2.0)
    for example in EXAMPLES:
        scores = dict(zip(example.candidate_ids(), bm25.score(example.query, example.candidates)))
        offsets = {r["candidate_id"]: r["listwise_offset"] for r in records if r["qid"] == example.qid}
        assert offsets.keys() == scores.keys()
        low, high = min(scores.values()), max(scores.values())
        for cid, score in scores.items():  # min-max over the question's candidates, times the scale
            assert offsets[cid] == pytest.approx(2.0 * ((score - low) / (high - low) if high > low else 1.0))


def test_listwise_offsets_favouring_the_positives_lower_the_listwise_term(tiny):
    from mmrag_agent.inference.scoring import answer_token_ids

    records = stage1_records(EXAMPLES[:2], negatives_per_positive=None, tokenizer=tiny.tokenizer)
    trainer = SharedPrefixTrainer.__new__(SharedPrefixTrainer)
    trainer.pairs_per_group, trainer.answer_ids = 1.0, tuple(answer_token_ids(tiny.tokenizer))
    model = load_model(tiny.name, dtype="float32").model.eval()

    def listwise_term(offset_of_positive: float) -> float:
        for record in records:
            record["listwise_offset"] = offset_of_positive if record["label"] == "yes" else 0.0
        groups = question_groups(records, [stage1_target(r, prefix="<answer>") for r in records], tiny.processor, "<answer>")
        data = _Groups(groups, pad_id=tiny.tokenizer.pad_token_id or 0)
        with torch.no_grad():
            trainer.listwise_weight = 1.0
            both = sum(trainer.compute_loss(model, data[i]).item() for i in range(len(groups)))
            trainer.listwise_weight = 0.0
            pointwise = sum(trainer.compute_loss(model, data[i]).item() for i in range(len(groups)))
        return both - pointwise

    # where the retriever already ranks the positives first, the term (and its gradient) shrinks; where it ranks
    # them last, it grows: the term trains what the retriever gets wrong
    assert listwise_term(3.0) < listwise_term(0.0) < listwise_term(-3.0)


def test_lora_layers_adapt_only_the_last_layers(tiny, tmp_path):
    from peft import get_peft_model

    from mmrag_agent.finetune.policy import lora_config

    config = Stage1Config(output_dir=str(tmp_path), lora_layers=1)
    model = get_peft_model(load_model(tiny.name, dtype="float32").model, lora_config(config, tiny))
    adapted = {int(name.split(".layers.")[1].split(".")[0]) for name, _ in model.named_parameters() if "lora_A" in name}
    assert adapted == {tiny.model.config.num_hidden_layers - 1}
    with pytest.raises(ValueError, match="lora_layers=9 but the model has 2 layers"):
        lora_config(Stage1Config(output_dir=str(tmp_path), lora_layers=9), tiny)


# ------------------------------------------------------------------------------------------------ dynamic sampling
def test_mixed_group_probability():
    assert mixed_group_probability(0.5, 2) == pytest.approx(0.5)
    assert mixed_group_probability(0.5, 8) == pytest.approx(1 - 2 * 0.5 ** 8)
    assert mixed_group_probability(0.999, 4) < 0.01
    assert mixed_group_probability(0.9, 4, temperature=2.0) > mixed_group_probability(0.9, 4, temperature=1.0)  # hotter: more mixed
    assert mixed_group_probability(float("nan"), 4) == 1.0


def test_grpo_prompts_are_the_pool_records_likeliest_to_carry_signal(tiny):
    from mmrag_agent.model_card import default_card

    records = stage1_records(EXAMPLES, negatives_per_positive=None, tokenizer=tiny.tokenizer)
    kept, info = select_signal_records(tiny, records, default_card(1), needed=6, factor=2, generations=4, temperature=1.0)
    assert len(kept) == info["kept"] == 6 and info["pool"] == 12
    assert sum(r["label"] == "yes" for r in kept) == 3  # half positives, half negatives
    pool_signals = info["mean_signal_pool"]
    assert info["mean_signal_kept"] >= pool_signals and info["predicted_zero_std_kept"] == pytest.approx(1 - info["mean_signal_kept"])
    assert all(0.0 <= r["signal"] <= 1.0 for r in kept)


# ------------------------------------------------------------------------------------------------ fusion fit
def _rows(n: int = 40) -> list[QueryScores]:
    """Synthetic held-out questions: in fold 0 stage 1 is the better signal, in fold 1 the retriever, so the weights
    fitted on either fold differ and cross-fitting must score worse than fitting on the questions scored."""
    rows = []
    for q in range(n):
        ids = [f"q{q}-{i}" for i in range(4)]
        strong, weak = (q % 5 != 0), (q % 3 == 0)
        stage1_right, retriever_right = (strong, weak) if _fold(f"q{q}", 2, 0) == 0 else (weak, strong)
        rows.append(QueryScores(qid=f"q{q}", ids=ids, positives=[ids[0]],
                                probabilities=[0.9 if stage1_right else 0.2, 0.5, 0.4, 0.3],
                                retrieval={"r": [0.8 if retriever_right else 0.1, 0.6, 0.2, 0.0]}))
    return rows


def test_cross_fitting_scores_each_fold_with_the_weight_fitted_on_the_others():
    rows = _rows()
    fitted = cross_fit(rows, "r", folds=2, metric="mrr")
    measure = query_metric("mrr")
    fold_of = {r.qid: _fold(r.qid, 2, 0) for r in rows}
    assert set(fold_of.values()) == {0, 1}
    for f in range(2):
        rest = [(r.probabilities, r.retrieval["r"], r.flags) for r in rows if fold_of[r.qid] != f]
        assert fitted["fold_weights"][f] == fit_fusion_weight(rest, measure)[0]
    assert fitted["weight"] == fit_fusion_weight([(r.probabilities, r.retrieval["r"], r.flags) for r in rows], measure)[0]
    hits = [measure(fuse(r.probabilities, r.retrieval["r"], fitted["fold_weights"][fold_of[r.qid]]), r.flags) for r in rows]
    assert fitted["metrics"]["fused"]["mrr"] == pytest.approx(sum(hits) / len(hits))
    in_sample = [measure(fuse(r.probabilities, r.retrieval["r"], fitted["weight"]), r.flags) for r in rows]
    assert fitted["metrics"]["fused_in_sample"]["mrr"] == pytest.approx(sum(in_sample) / len(in_sample))
    assert fitted["fold_weights"][0] < 0.5 < fitted["fold_weights"][1]  # fold 0 is fitted on fold 1 (the retriever's)
    assert fitted["metrics"]["fused"]["mrr"] < fitted["metrics"]["fused_in_sample"]["mrr"]  # honest: no fitting on the scored fold
    with pytest.raises(ValueError, match="cannot be split into 3 folds"):
        cross_fit(rows[:2], "r", folds=3)


def test_fit_fusion_cross_fits_with_ten_folds_or_one_question_per_fold_against_the_real_bm25():
    rows = _rows(40)
    examples = [RerankExample(qid=r.qid, query=f"which sculpture is number {i}",
                              candidates=[Candidate(id=c, modality="text", text=f"sculpture number {i if j == 0 else i + 100 + j}")
                                          for j, c in enumerate(r.ids)], positives=r.positives)
                for i, r in enumerate(rows)]
    bm25 = make_reranker("bm25")
    fitted = fit_fusion(rows, examples, "bm25", {"bm25": bm25})
    assert fitted["fitted_on"]["folds"] == 10 and len(fitted["fitted_on"]["fold_weights"]) == 10
    assert rows[0].retrieval["bm25"] == bm25.score(examples[0].query, examples[0].candidates)
    expected = cross_fit(rows, "bm25", folds=10, metric="mrr")
    assert fitted["fitted_on"]["fold_weights"] == expected["fold_weights"] and fitted["weight"] == expected["weight"]
    assert fitted["metrics"]["fused"] == expected["metrics"]["fused"]
    few = fit_fusion(rows[:4], examples[:4], "bm25", {"bm25": bm25})  # fewer questions than folds: one question each
    assert few["fitted_on"]["folds"] == 4 and len(few["fitted_on"]["fold_weights"]) == 4


def test_query_metric_ranks_ties_in_the_given_order():
    assert query_metric("p@1")([0.5, 0.5], [True, False]) == 1.0
    assert query_metric("p@1")([0.5, 0.5], [False, True]) == 0.0
    assert query_metric("mrr")([0.1, 0.2, 0.3], [False, False, False]) == 0.0
    with pytest.raises(ValueError):
        query_metric("ndcg")


# ------------------------------------------------------------------------------------------------ end to end
def _tiny_recipe(tmp_path, **overrides):
    return dict(max_steps=2, num_generations=2, per_device_train_batch_size=4, max_completion_length=4, learning_rate=1e-3,
                gradient_checkpointing=False, held_out_fraction=0.34, eval_every=10, sft_warm_start="on", sft_epochs=1.0,
                sft_questions_per_step=2, grpo_pool_factor=2, progress_bar=False, save_steps=100, seed=0, report_to="none",
                output_dir=str(tmp_path / "s1")) | overrides


def test_stage1_recipe_writes_the_cross_fitted_fusion_that_serving_reads(tiny_qwen2_dir, data_file, tmp_path):
    config = Stage1Config(data=str(data_file), model_name_or_path=str(tiny_qwen2_dir), first_stage="bm25",
                          **_tiny_recipe(tmp_path, sft_listwise_weight=1.0, sft_listwise_retrieval=2.0))
    result = train_stage1(config)
    card = read_model_card(result.output_dir)
    warm = card.training["sft_warm_start"]
    train_questions = card.training["data"]["train_queries"]
    assert warm["ran"] and warm["trainer"] == "shared-prefix" and warm["epochs"] == pytest.approx(1.0)
    assert warm["steps"] == math.ceil(train_questions / 2)  # one whole epoch of 2 questions a step
    assert card.training["data"]["train_records"] == sum(len(e.candidates) for e in read_rerank_examples(data_file)
                                                         if e.qid not in {q for q in _held_out_qids(card)})
    selection = card.training["grpo_prompts"]["selection"]
    assert selection["kept"] == 2 * 4 // 2 and selection["pool"] == 2 * selection["kept"]  # max_steps x prompts per step
    fusion = card.fusion
    assert fusion["first_stage"] == "bm25" and 0.0 <= fusion["weight"] <= 1.0
    assert fusion["fitted_on"]["questions"] == card.training["data"]["held_out_queries"] == fusion["metrics"]["stage1"]["n"]
    assert set(fusion["metrics"]) == {"stage1", "first_stage", "fused", "fused_in_sample"}
    assert fusion["metrics"]["stage1"]["p@1"] == pytest.approx(card.metrics["p@1"])  # the final model's scores, reused
    assert set(fusion["other_first_stages"]) == {"embedding"}  # the other retriever, fitted too for comparison
    # serving: the filter and the evaluation reranker take the card's weight and retriever
    assert Stage1RelevanceFilter(str(result.output_dir)).fusion_weight == fusion["weight"]
    reranker = Stage1Reranker(str(result.output_dir))
    assert reranker.fusion == {"first_stage": "bm25", "weight": fusion["weight"]}


def _held_out_qids(card):
    from mmrag_agent.finetune.datasets import split_by_question

    examples = read_rerank_examples(card.training["data"]["train"])
    return [e.qid for e in split_by_question(examples, card.training["data"]["held_out_fraction"], card.training["data"]["split_seed"])[1]]


def test_cli_first_stage_none_keeps_stage1_alone_and_rejects_unknown_retrievers(tiny_qwen2_dir, data_file, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(train_app, ["stage1", "--data", str(data_file), "--output", str(tmp_path / "bad"), "--first-stage", "splade"])
    assert bad.exit_code == 2 and "--first-stage: invalid choice: 'splade' (choose from 'embedding', 'bm25', 'none')" in bad.output
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "none"
    args = ["stage1", "--data", str(data_file), "--model", str(tiny_qwen2_dir), "--output", str(out), "--first-stage", "none",
            "--max-steps", "1", "--sft", "off", "--eval-every", "5", "--set", "held_out_fraction=0.34",
            "--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "4",
            "--gradient_checkpointing", "false", "--save_steps", "100", "--grpo_pool_factor", "0", "--progress_bar", "false"]
    result = runner.invoke(train_app, args)
    assert result.exit_code == 0, result.output
    assert "fusion: none (--first-stage none: stage 1 ranks alone)" in result.output
    card = read_model_card(out)
    assert card.fusion["first_stage"] == "none" and card.fusion["weight"] == 1.0
    assert card.training["grpo_prompts"]["selection"] is None
    assert Stage1RelevanceFilter(str(out)).fusion_weight == 1.0
