"""GRPO training of both stages on tiny real models: LoRA / full, VLM, SFT warm start, resume, the rewards and weights
the trainer gets, the model card, the CLI. (Configs and the command line without training: test_finetune_config.py.)

Random weights never write the tag format, so every run here adds a length reward (it varies between the
completions of a group, so GRPO has a gradient) through ``extra_reward_funcs``; the stage rewards are still
computed and logged. Runs are 2-3 steps with 2 generations of a few tokens.
"""

from __future__ import annotations

import json

import pytest
import yaml
from files import write_image
from llama_index.core.schema import NodeWithScore, TextNode
from safetensors.torch import load_file
from typer.testing import CliRunner

from mmrag_agent.cli.train import build_config, config_args, train_app
from mmrag_agent.finetune import Stage1Config, Stage2Config, stage1_rewards, stage2_rewards, train_stage1, train_stage2
from mmrag_agent.finetune.rewards import (
    completion_text, stage1_accuracy_reward, stage1_format_reward, stage2_answer_reward, stage2_format_reward, stage2_rank_reward,
)
from mmrag_agent.model_card import ModelCard, read_model_card
from mmrag_agent.models import load_model
from mmrag_agent.postprocessors import Stage2ListwiseReranker
from mmrag_agent.postprocessors.stage1 import Stage1RelevanceFilter
from mmrag_agent.prompts import PROMPT_VERSION


def length_reward(completions, **kwargs):
    """A test reward that varies for random models: characters / 100."""
    return [len(completion_text(c)) / 100 for c in completions]


TOPICS = [("Which city hosted the 1992 Summer Olympics?", "Barcelona", "Barcelona hosted the 1992 Summer Olympics."),
          ("What colour is the Santa Anita Park logo?", "green", "The Santa Anita Park logo is green."),
          ("Which film shows a bear on its poster?", "The Bad News Bears", "The poster of The Bad News Bears shows a bear."),
          ("Which planet is called the red planet?", "Mars", "Mars is called the red planet."),
          ("Who painted the Mona Lisa?", "Leonardo da Vinci", "The Mona Lisa was painted by Leonardo da Vinci."),
          ("What is the capital of Japan?", "Tokyo", "Tokyo is the capital of Japan."),
          ("Which animal is on the WWF logo?", "giant panda", "The WWF logo shows a giant panda."),
          ("How many legs does a spider have?", "eight", "A spider has eight legs.")]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """8 questions, each with 2 text and 2 image candidates (real PNG files), one or two positives, answers."""
    root = tmp_path_factory.mktemp("rerank-data")
    (root / "img").mkdir()
    rows = []
    for q, (query, answer, passage) in enumerate(TOPICS):
        for c, color in enumerate(("red", "blue")):
            write_image(root / "img" / f"{q}-{c}.png", size=(56 + 8 * c, 56), color=color)
        candidates = [{"id": f"q{q}-t0", "modality": "text", "title": answer, "text": passage},
                      {"id": f"q{q}-t1", "modality": "text", "text": "An unrelated passage about gardening and soil."},
                      {"id": f"q{q}-i0", "modality": "image", "title": answer, "text": f"photo of {answer}", "image_path": f"img/{q}-0.png"},
                      {"id": f"q{q}-i1", "modality": "image", "title": "Lawn", "text": "a lawn", "image_path": f"img/{q}-1.png"}]
        positives = [f"q{q}-t0"] + ([f"q{q}-i0"] if q % 2 else [])
        rows.append({"qid": f"q{q}", "query": query, "candidates": candidates, "positives": positives, "answers": [answer]})
    path = root / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def tiny_run(**overrides):
    """Settings of a few-second run: 2 generations of a few tokens, 2 prompts a step, no progress bar."""
    return dict(num_generations=2, per_device_train_batch_size=4, max_completion_length=6, learning_rate=1e-3,
                gradient_checkpointing=False, held_out_fraction=0.25, eval_every=2, sft_warm_start="off",
                extra_reward_funcs=[length_reward], progress_bar=False, save_steps=100, seed=0, report_to="none") | overrides


def assert_reward_logged(log_history, format_key):
    steps = [h for h in log_history if "reward" in h]
    assert steps, "no GRPO step logged a reward"
    for h in steps:
        assert {"reward", "reward_std", "frac_reward_zero_std", format_key, "rewards/length_reward/mean"} <= set(h)
    assert any(h["rewards/length_reward/std"] > 0 for h in steps)  # the groups had reward variance


def filter_scores(output_dir):
    stage1 = Stage1RelevanceFilter(str(output_dir), top_n=2)
    nodes = [NodeWithScore(node=TextNode(text="Barcelona hosted the 1992 Summer Olympics."), score=0.9),
             NodeWithScore(node=TextNode(text="An unrelated passage."), score=0.5),
             NodeWithScore(node=TextNode(text="Olympic host cities are chosen years ahead."), score=0.4)]
    kept = stage1.postprocess_nodes(nodes, query_str=TOPICS[0][0])
    assert len(kept) == 2
    return [n.node.metadata["relevance_probability"] for n in kept]


# ------------------------------------------------------------------------------------------------ scale-out configs
def test_scale_out_configs_build_without_running(tmp_path):
    """vLLM generation and multi-process settings are plain config fields (docs/scale_out.md); nothing runs here."""
    colocate = Stage1Config(output_dir=str(tmp_path), use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
                            vllm_tensor_parallel_size=1, per_device_train_batch_size=8, gradient_accumulation_steps=2)
    assert colocate.use_vllm and colocate.stage_summary()["use_vllm"] is True
    assert colocate.generation_batch_size == 16 and colocate.steps_per_generation == 2
    server = Stage2Config(output_dir=str(tmp_path), use_vllm=True, vllm_mode="server", vllm_server_base_url="http://gpu-node:8000",
                          ddp_find_unused_parameters=False, gradient_checkpointing=True, bf16=False, num_generations=4,
                          per_device_train_batch_size=4)
    assert (server.vllm_mode, server.vllm_server_base_url, server.num_generations) == ("server", "http://gpu-node:8000", 4)
    # The generation batch must hold whole groups of num_generations completions (checked by TRL, per process count)
    with pytest.raises(ValueError, match="divisible by num_generations"):
        Stage1Config(output_dir=str(tmp_path), per_device_train_batch_size=6, num_generations=4)
    # The same fields from a command line, as `accelerate launch -m mmrag_agent.cli.train stage1 ...` passes them
    config = build_config(1, config_args(None, ["use_vllm=true", "vllm_mode=server", "vllm_server_base_url=http://h:8000"],
                                         ["--num_generations", "4", "--per_device_train_batch_size", "4"],
                                         data="train.jsonl", output_dir=str(tmp_path)))
    assert (config.use_vllm, config.vllm_mode, config.num_generations) == (True, "server", 4)


def test_chunked_evaluation_equals_one_pass_over_all_questions():
    """The held-out progress bar evaluates in chunks; the combined metrics are those of one call over everything,
    including a metric averaged over fewer units (answer F1 only where there are gold answers)."""
    from mmrag_agent.finetune.callbacks import evaluate_in_chunks

    items = [{"hit": h, "f1": f} for h, f in [(1, 0.5), (0, None), (1, None), (1, 1.0), (0, 0.25), (0, None), (1, 0.0)]]

    def evaluate(chunk):
        f1s = [i["f1"] for i in chunk if i["f1"] is not None]
        return {"p@1": sum(i["hit"] for i in chunk) / len(chunk), "answer_f1": sum(f1s) / len(f1s) if f1s else float("nan"),
                "n": len(chunk)}

    whole = evaluate(items)
    for size in (1, 2, 3, 7):
        chunked = evaluate_in_chunks(evaluate, items, size, progress=False,
                                     counts={"answer_f1": lambda chunk: sum(i["f1"] is not None for i in chunk)})
        assert chunked["n"] == 7 and chunked["p@1"] == pytest.approx(whole["p@1"])
        assert chunked["answer_f1"] == pytest.approx(whole["answer_f1"]), size


# ------------------------------------------------------------------------------------------------ stage 1
@pytest.fixture(scope="module")
def stage1_lora(tiny_qwen2_dir, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1-lora")
    config = Stage1Config(data=str(data_file), model_name_or_path=str(tiny_qwen2_dir), output_dir=str(out), max_steps=3,
                          max_text_tokens=64, **tiny_run())
    return train_stage1(config)


def test_stage1_lora_trains_logs_and_loads_into_the_postprocessor(stage1_lora, tiny_qwen2_dir):
    out = stage1_lora.output_dir
    assert_reward_logged(stage1_lora.log_history, "rewards/stage1_format_reward/mean")
    # The adapter was trained: LoRA's B matrices start at zero
    weights = load_file(out / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)
    assert not any("visual" in name for name in weights)
    training = read_model_card(out).training
    assert training["steps"] == 3
    assert [r["name"] for r in training["rewards"]] == ["stage1_format_reward", "stage1_accuracy_reward", "length_reward"]
    assert [r["weight"] for r in training["rewards"]] == [0.1, 1.0, 1.0]
    assert training["data"]["train_queries"] == 6 and training["data"]["held_out_queries"] == 2
    assert training["final_metrics"]["train"]["frac_reward_zero_std"] is not None
    assert [h["phase"] for h in training["held_out_history"]] == ["initial", "grpo", "final"]
    assert {"p@1", "mrr", "ndcg@5", "recall@5"} <= set(training["final_metrics"]["held_out"])
    assert (out / "training_curves.png").stat().st_size > 10_000 and (out / "log_history.json").is_file()
    assert not (out / "ref").exists()
    # Loads directly, on its base, and into the stage-1 postprocessor
    loaded = load_model(out)
    assert type(loaded.model).__name__.startswith("PeftModel")
    probabilities = filter_scores(out)
    assert all(0.0 <= p <= 1.0 for p in probabilities)


def test_stage1_trainer_gets_the_gated_rewards_and_the_stage_weights(stage1_lora):
    """What GRPOTrainer received: the stage's reward callables (format-gated, bound to the prefix) and weights."""
    trainer = stage1_lora.trainer
    config = trainer.args
    assert [f.func for f in trainer.reward_funcs[:2]] == [stage1_format_reward, stage1_accuracy_reward]
    assert all(f.keywords == {"reasoning": False, "prefix": "<answer>"} for f in trainer.reward_funcs[:2])
    assert trainer.reward_funcs[2] is length_reward
    assert trainer.reward_func_names == ["stage1_format_reward", "stage1_accuracy_reward", "length_reward"]
    assert trainer.reward_weights.tolist() == pytest.approx([0.1, 1.0, 1.0])
    # Completions after the pre-filled <answer>: the accuracy reward is 0 for a right answer out of format
    completions, labels = ["yes</answer>", "yes", "no</answer>"], ["yes", "yes", "yes"]
    received = [f(completions, label=labels) for f in trainer.reward_funcs[:2]]
    assert received == [[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    assert received == [f(completions, label=labels) for f in stage1_rewards(config)[0][:2]]


def test_stage1_model_card_round_trips_with_the_serving_settings(stage1_lora, tiny_qwen2_dir):
    card = read_model_card(stage1_lora.output_dir)
    assert isinstance(card, ModelCard) and card == stage1_lora.model_card
    assert (card.stage, card.prompt_version, card.assistant_prefix, card.reasoning) == (1, PROMPT_VERSION, "<answer>", False)
    assert (card.max_text_tokens, card.candidates_per_prompt, card.max_new_tokens) == (64, None, 6)
    assert (card.kind, card.base_model) == ("lora", str(tiny_qwen2_dir))
    assert card.metrics == card.training["final_metrics"]["held_out"] and {"p@1", "mrr"} <= set(card.metrics)
    assert card.training["config"]["assistant_prefix"] == "<answer>" and "versions" in card.training


def test_stage1_full_fine_tuning_then_resume(tiny_qwen2_dir, data_file, tmp_path):
    out = tmp_path / "full"
    settings = dict(data=str(data_file), model_name_or_path=str(tiny_qwen2_dir), output_dir=str(out), use_peft=False,
                    **tiny_run(save_steps=1, eval_every=0))
    first = train_stage1(Stage1Config(max_steps=2, **settings))
    assert_reward_logged(first.log_history, "rewards/stage1_format_reward/mean")
    trained, base = load_file(out / "model.safetensors"), load_file(tiny_qwen2_dir / "model.safetensors")
    assert any(not trained[name].equal(base[name]) for name in base)
    assert read_model_card(out).kind == "full" and not (out / "adapter_config.json").exists()
    filter_scores(out)

    # Resume from checkpoint-2 up to step 3: steps 1-2 come back from the checkpoint, only step 3 runs
    resumed = train_stage1(Stage1Config(max_steps=3, resume_from_checkpoint="last", **settings))
    assert resumed.trainer.state.global_step == 3
    steps = [h for h in resumed.log_history if "reward" in h]
    assert [h["step"] for h in steps] == [1, 2, 3]
    assert steps[:2] == [h for h in first.log_history if "reward" in h]
    assert read_model_card(out).training["steps"] == 3


def test_vlm_stage1_lora_with_images_and_an_assistant_prefix(tiny_qwen2_vl_dir, data_file, tmp_path):
    out = tmp_path / "vlm"
    config = Stage1Config(data=str(data_file), model_name_or_path=str(tiny_qwen2_vl_dir), output_dir=str(out), max_steps=2,
                          max_pixels=56 * 56, **tiny_run(eval_every=0))  # the default prefix: <answer>
    result = train_stage1(config)
    assert_reward_logged(result.log_history, "rewards/stage1_format_reward/mean")
    assert result.trainer.processing_class.chat_template.endswith('{{ "<answer>" }}{% endif %}')  # the training copy
    assert not (out / "chat_template.jinja").read_text().rstrip().endswith("{% endif %}{% if add_generation_prompt %}{{ \"<answer>\" }}{% endif %}")
    weights = load_file(out / "adapter_model.safetensors")
    assert any(t.abs().sum() > 0 for name, t in weights.items() if "lora_B" in name)
    assert not any("visual" in name for name in weights)  # LoRA stays off the vision tower
    loaded = load_model(out, max_pixels=56 * 56)
    assert loaded.is_vision and type(loaded.processor).__name__ == "ImageOnlyQwen2VLProcessor"
    filter_scores(out)


# ------------------------------------------------------------------------------------------------ stage 2
def test_stage2_continues_the_stage1_adapter_after_an_auto_warm_start(stage1_lora, tiny_qwen2_dir, data_file, tmp_path):
    out = tmp_path / "stage2"
    config = Stage2Config(data=str(data_file), stage1_output=str(stage1_lora.output_dir), output_dir=str(out), max_steps=2, k=3,
                          permutations=2, **tiny_run(sft_warm_start="auto", sft_max_steps=2, format_probe_prompts=2,
                                                     format_probe_generations=2, max_completion_length=32))
    result = train_stage2(config)
    assert_reward_logged(result.log_history, "rewards/stage2_format_reward/mean")
    assert {"rewards/stage2_rank_reward/mean", "rewards/stage2_answer_reward/mean"} <= {k for h in result.log_history for k in h}
    card = read_model_card(out)
    assert (card.stage, card.kind, card.training["init_from"], card.base_model) == (2, "lora", str(stage1_lora.output_dir), str(tiny_qwen2_dir))
    assert (card.assistant_prefix, card.candidates_per_prompt, card.max_new_tokens, card.reasoning) == ("<think>", 3, 32, False)
    # the held-out check of stage 2's ranking against the fused stage-1 order it is given, which serving reads
    check = card.ranking_check
    assert check["queries"] == card.training["data"]["held_out_queries"] and check["stage1_model"] == str(stage1_lora.output_dir)
    assert check["input_order"] == "fused stage 1" and {"p@1", "mrr"} <= set(check["input"]) & set(check["stage2"])
    better = [check["stage2"][m] - check["input"][m] for m in ("p@1", "mrr")]
    assert check["reorder"] == (min(better) >= 0 and max(better) > 0)
    assert Stage2ListwiseReranker(str(out)).reorder == check["reorder"]
    # The random model fails the format probe, so the warm start ran (its 2 steps) and was saved on its own
    warm = card.training["sft_warm_start"]
    assert warm["ran"] and warm["probe"]["format_rate"] < 0.5 and warm["probe"]["n"] == 4
    assert warm["steps"] == 2 and len(warm["loss"]) == 2
    assert load_model(out / "sft").tokenizer is not None
    assert [h["phase"] for h in card.training["held_out_history"]] == ["initial", "sft", "final"]
    assert {"p@1", "mrr", "set_f1", "answer_f1", "format_rate"} <= set(card.metrics)
    # The trainer got the stage's gated rewards, bound to the prefix, with the stage weights
    trainer = result.trainer
    assert [f.func for f in trainer.reward_funcs[:3]] == [stage2_format_reward, stage2_rank_reward, stage2_answer_reward]
    assert all(f.keywords["prefix"] == "<think>" for f in trainer.reward_funcs[:3])
    assert trainer.reward_weights.tolist() == pytest.approx([0.1, 1.0, 1.0, 1.0])
    well_formed = "reasoning</think><rank>[2] > [1]</rank><answer>green [2]</answer>"
    right_but_unformatted = "reasoning</think>[2] > [1] green [2]"
    columns = dict(gold_ids=[[2]] * 2, candidate_ids=[["a", "b", "c"]] * 2, answers=[["green"]] * 2)
    scores = [f([well_formed, right_but_unformatted], **columns) for f in trainer.reward_funcs[:3]]
    assert scores[0] == [1.0, 0.0] and scores[1][0] > 0.5 and scores[1][1] == 0.0 and scores[2] == [1.0, 0.0]
    assert scores == [f([well_formed, right_but_unformatted], **columns) for f in stage2_rewards(config)[0][:3]]
    filter_scores(out)


def test_stage2_from_the_base_model_with_full_fine_tuning(stage1_lora, tiny_qwen2_dir, data_file, tmp_path):
    out = tmp_path / "stage2-base"
    config = Stage2Config(data=str(data_file), stage1_output=str(stage1_lora.output_dir), init_from="base", use_peft=False,
                          output_dir=str(out), max_steps=2, k=2, permutations=1, **tiny_run(eval_every=0))
    result = train_stage2(config)
    assert_reward_logged(result.log_history, "rewards/stage2_format_reward/mean")
    card = read_model_card(out)
    assert (card.kind, card.training["init_from"], card.base_model) == ("full", str(tiny_qwen2_dir), str(tiny_qwen2_dir))
    assert load_model(out).model.config.model_type == "qwen2"
    # a completion budget too small for served (constrained) output: the ranking check is skipped, not fatal, and
    # the card keeps serving in the incoming order
    assert card.max_new_tokens < 29 and "too small" in card.ranking_check["skipped"] and card.ranking_check["reorder"] is False


def test_vlm_stage2_full_fine_tuning_shows_several_images_per_prompt(tiny_qwen2_vl_dir, data_file, tmp_path):
    out = tmp_path / "vlm-stage2"
    config = Stage2Config(data=str(data_file), model_name_or_path=str(tiny_qwen2_vl_dir), output_dir=str(out), max_steps=2, k=3,
                          permutations=1, max_pixels=56 * 56, use_peft=False, **tiny_run(eval_every=2))
    result = train_stage2(config)
    assert_reward_logged(result.log_history, "rewards/stage2_format_reward/mean")
    assert "images" in result.trainer.train_dataset.column_names
    assert max(len(images) for images in result.trainer.train_dataset["images"]) >= 2
    card = read_model_card(out)
    assert (card.kind, card.training["init_from"], card.metrics["n"]) == ("full", str(tiny_qwen2_vl_dir), 2)
    # A full VLM output carries its own processor, recorded under the stock class name so that it loads back
    assert json.loads((out / "processor_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"
    loaded = load_model(out, max_pixels=56 * 56)
    assert loaded.is_vision and type(loaded.processor).__name__ == "ImageOnlyQwen2VLProcessor"


def test_sft_targets_earn_the_full_rewards(data_file):
    from mmrag_agent.finetune import (
        stage1_records, stage1_total_reward, stage2_answer_reward, stage2_format_reward, stage2_rank_reward, stage2_records,
    )
    from mmrag_agent.finetune.sft import stage1_target, stage2_target
    from mmrag_agent.format import parse_stage2_output
    from mmrag_agent.schema import read_rerank_examples

    examples = read_rerank_examples(data_file)
    records = stage1_records(examples)
    assert stage1_total_reward([stage1_target(r) for r in records], label=[r["label"] for r in records]) == [1.1] * len(records)
    think = [stage1_target(r, reasoning=True) for r in records]
    assert stage1_total_reward(think, label=[r["label"] for r in records], reasoning=True) == [1.1] * len(records)
    records = stage2_records(examples, k=3, permutations=2)
    targets = [stage2_target(r) for r in records]
    columns = {name: [r[name] for r in records] for name in ("gold_ids", "candidate_ids", "answers")}
    assert stage2_format_reward(targets) == [1.0] * len(records)
    assert stage2_rank_reward(targets, **columns) == [1.0] * len(records)
    assert stage2_answer_reward(targets, **columns) == [1.0] * len(records)
    assert all(parse_stage2_output(t, 3).format_ok for t in targets)


@pytest.mark.parametrize("stage, reasoning, prefix", [(1, False, "<answer>"), (1, True, "<think>"), (2, False, "<think>"), (1, False, "")])
def test_the_warm_start_trains_the_grpo_prompt_followed_by_the_target(tiny_qwen2_dir, data_file, stage, reasoning, prefix):
    """SFTTrainer renders prompt + completion with the original template; GRPO renders the prompt with the prefix
    pre-filled. The SFT tokens must be the GRPO prompt's tokens followed by the target (then the end of the turn)."""
    from transformers import AutoTokenizer

    from mmrag_agent.finetune import stage1_records, stage2_records
    from mmrag_agent.finetune.policy import training_processor
    from mmrag_agent.finetune.sft import sft_dataset, stage1_target, stage2_target
    from mmrag_agent.schema import read_rerank_examples

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_dir)
    examples = read_rerank_examples(data_file)
    if stage == 1:
        records = stage1_records(examples, reasoning=reasoning, tokenizer=tokenizer)
        targets = [stage1_target(r, reasoning, prefix) for r in records]
    else:
        records = stage2_records(examples, k=3, permutations=1, tokenizer=tokenizer)
        targets = [stage2_target(r, prefix) for r in records]
    dataset = sft_dataset(records, targets, prefix=prefix)
    grpo_template = training_processor(tokenizer, prefix)
    for row, target in list(zip(dataset, targets))[:4]:
        sft_text = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        grpo_prompt = grpo_template.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        assert sft_text.startswith(grpo_prompt + target), (sft_text[-120:], grpo_prompt[-40:], target)
        sft_ids = tokenizer(sft_text, add_special_tokens=False)["input_ids"]
        prompt_ids = tokenizer(grpo_prompt, add_special_tokens=False)["input_ids"]
        assert sft_ids[:len(prompt_ids)] == prompt_ids


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_trains_stage1_with_a_capped_warm_start_and_shows_every_phase(tiny_qwen2_dir, data_file, tmp_path):
    out = tmp_path / "cli"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"num_generations": 2, "per_device_train_batch_size": 4, "max_completion_length": 4,
                                      "gradient_checkpointing": False, "learning_rate": 1e-3, "save_steps": 100,
                                      "format_probe_prompts": 2, "format_probe_generations": 2,
                                      "extra_reward_funcs": ["test_finetune_train:length_reward"]}))
    result = CliRunner().invoke(train_app, ["stage1", "--data", str(data_file), "--model", str(tiny_qwen2_dir), "--output", str(out),
                                            "--config", str(config), "--max-steps", "1", "--sft-steps", "2", "--eval-every", "1",
                                            "--reasoning", "--set", "held_out_fraction=0.25", "--max_text_tokens", "48"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("stage 1: ") and "GRPO max_steps 1" in lines[0] and "assistant prefix '<think>'" in lines[0]
    assert lines[1] == ("SFT warm start: auto (runs 2 steps before GRPO if the format probe fails; --sft-steps to change, "
                        "--sft off to skip)")
    # Every phase had a progress bar, drawn from its first item: the probe, the warm start, GRPO, the held-out evaluations
    for bar in ("format probe:   0%", "stage 1 SFT warm start:   0%", "stage 1 GRPO:   0%", "held-out evaluation:   0%"):
        assert bar in result.output, bar
    for bar in ("format probe: 100%", "stage 1 SFT warm start: 100%", "stage 1 GRPO: 100%"):  # the held-out bars are removed when done
        assert bar in result.output, bar
    assert "held-out" in result.output and "P@1" in result.output and "frac_reward_zero_std" in result.output
    card = read_model_card(out)
    warm = card.training["sft_warm_start"]
    assert warm["ran"] and warm["steps"] == 2 and len(warm["loss"]) == 2  # --sft-steps honoured: 2 SFT steps, then 1 GRPO step
    assert card.training["steps"] == 1 and (out / "training_curves.png").is_file()
    assert (card.reasoning, card.assistant_prefix, card.max_text_tokens, card.max_new_tokens) == (True, "<think>", 48, 4)
