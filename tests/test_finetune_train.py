"""GRPO training of both stages on tiny real models: configs, LoRA / full, VLM, SFT warm start, resume, CLI, scale-out.

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

from mmrag_agent.finetune import Stage1Config, Stage2Config, parse_overrides, train_stage1, train_stage2
from mmrag_agent.model_card import read_model_card as _read_card
from mmrag_agent.cli.train import train_app
from mmrag_agent.finetune.rewards import completion_text
from mmrag_agent.models import load_model
from mmrag_agent.postprocessors.stage1 import Stage1RelevanceFilter


def read_model_card(out) -> dict:
    """The card as one flat dict: the serving fields and the training record."""
    card = _read_card(out)
    return {**card.training, **{k: v for k, v in card.to_dict().items() if k != "training"}}


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


# ------------------------------------------------------------------------------------------------ configs
def test_configs_extend_grpo_config_with_spec_defaults(tmp_path):
    from trl import GRPOConfig

    s1 = Stage1Config(output_dir=str(tmp_path))
    assert isinstance(s1, GRPOConfig)
    assert (s1.model, s1.num_generations, s1.beta, s1.temperature, s1.learning_rate, s1.max_completion_length) == ("smollm2", 8, 0.04, 1.0, 1e-5, 16)
    assert (s1.lora_r, s1.lora_alpha, s1.use_lora, s1.negatives_per_positive, s1.format_weight, s1.accuracy_weight) == (16, 32, True, 1, 0.1, 1.0)
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} == set(s1.lora_target_modules)
    assert s1.sft_warm_start == "auto" and s1.bf16 is False  # no bf16 autocast on a CPU
    assert Stage1Config(output_dir=str(tmp_path), reasoning=True).max_completion_length == 256
    assert Stage1Config(output_dir=str(tmp_path), use_lora=False).learning_rate == 1e-6
    s2 = Stage2Config(output_dir=str(tmp_path))
    assert (s2.k, s2.permutations, s2.max_completion_length, s2.init_from, s2.rank_weight, s2.answer_weight) == (5, 3, 256, "stage1", 1.0, 1.0)
    assert all(f.metadata.get("help") for f in Stage2Config.__dataclass_fields__.values() if f.name in ("k", "lora_r", "sft_warm_start"))
    with pytest.raises(ValueError, match="sft_warm_start"):
        Stage1Config(output_dir=str(tmp_path), sft_warm_start="maybe")
    with pytest.raises(ValueError, match="init_from"):
        Stage2Config(output_dir=str(tmp_path), init_from="stage3")


def test_configs_load_from_yaml_and_command_line_overrides(tmp_path):
    path = tmp_path / "s1.yaml"
    path.write_text("data: train.jsonl\nlearning_rate: 1e-4\nlora_target_modules: [q_proj, v_proj]\nbeta: 0.0\nmax_steps: 7\n")
    config = Stage1Config.from_yaml(path, output_dir=str(tmp_path / "out"), max_steps=9, model=None)
    assert (config.data, config.learning_rate, config.lora_target_modules, config.beta, config.max_steps, config.model) == (
        "train.jsonl", 1e-4, ["q_proj", "v_proj"], 0.0, 9, "smollm2")  # None overrides are skipped
    assert parse_overrides(Stage2Config, ["k=3", "use_lora=false", "assistant_prefix=<think>", "extra_reward_weights=0.5,1"]) == {
        "k": 3, "use_lora": False, "assistant_prefix": "<think>", "extra_reward_weights": [0.5, 1.0]}
    with pytest.raises(ValueError, match="lora_r"):
        parse_overrides(Stage1Config, {"lora_rank": 8})
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        Stage1Config.from_yaml(tmp_path / "bad.yaml")


def test_scale_out_configs_build_without_running(tmp_path):
    """vLLM generation and multi-process settings are plain config fields (docs/scale_out.md); nothing runs here."""
    colocate = Stage1Config(output_dir=str(tmp_path), use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
                            vllm_tensor_parallel_size=1, per_device_train_batch_size=8, gradient_accumulation_steps=2)
    assert colocate.use_vllm and colocate.stage_summary()["use_vllm"] is True
    assert colocate.generation_batch_size == 16 and colocate.steps_per_generation == 2
    server = Stage2Config.from_yaml(None, output_dir=str(tmp_path), use_vllm=True, vllm_mode="server",
                                    vllm_server_base_url="http://gpu-node:8000", ddp_find_unused_parameters=False,
                                    gradient_checkpointing=True, bf16=False, num_generations=4, per_device_train_batch_size=4)
    assert (server.vllm_mode, server.vllm_server_base_url, server.num_generations) == ("server", "http://gpu-node:8000", 4)
    # The generation batch must hold whole groups of num_generations completions (checked by TRL, per process count)
    with pytest.raises(ValueError, match="divisible by num_generations"):
        Stage1Config(output_dir=str(tmp_path), per_device_train_batch_size=6, num_generations=4)
    # The same fields from a command line, as `accelerate launch -m mmrag_agent.cli.train stage1 --set ...` passes them
    from mmrag_agent.cli.train import build_config

    config = build_config(1, sets=["use_vllm=true", "vllm_mode=server", "vllm_server_base_url=http://h:8000", "num_generations=4",
                                   "per_device_train_batch_size=4"], data="train.jsonl", output_dir=str(tmp_path))
    assert (config.use_vllm, config.vllm_mode, config.num_generations) == (True, "server", 4)


# ------------------------------------------------------------------------------------------------ stage 1
@pytest.fixture(scope="module")
def stage1_lora(tiny_qwen2_dir, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1-lora")
    config = Stage1Config(data=str(data_file), model=str(tiny_qwen2_dir), output_dir=str(out), max_steps=3, **tiny_run())
    return train_stage1(config)


def test_stage1_lora_trains_logs_and_loads_into_the_postprocessor(stage1_lora, tiny_qwen2_dir):
    out = stage1_lora.output_dir
    assert_reward_logged(stage1_lora.log_history, "rewards/stage1_format_reward/mean")
    # The adapter was trained: LoRA's B matrices start at zero
    weights = load_file(out / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)
    assert not any("visual" in name for name in weights)
    card = read_model_card(out)
    assert (card["stage"], card["kind"], card["steps"], card["base_model"]) == (1, "lora", 3, str(tiny_qwen2_dir))
    assert [r["name"] for r in card["rewards"]] == ["stage1_format_reward", "stage1_accuracy_reward", "length_reward"]
    assert [r["weight"] for r in card["rewards"]] == [0.1, 1.0, 1.0]
    assert card["data"]["train_queries"] == 6 and card["data"]["held_out_queries"] == 2
    assert card["final_metrics"]["train"]["frac_reward_zero_std"] is not None
    assert [h["phase"] for h in card["held_out_history"]] == ["initial", "grpo", "final"]
    assert {"p@1", "mrr", "ndcg@5", "recall@5"} <= set(card["final_metrics"]["held_out"])
    assert (out / "training_curves.png").stat().st_size > 10_000 and (out / "log_history.json").is_file()
    assert not (out / "ref").exists()
    # Loads directly, on its base, and into the stage-1 postprocessor
    loaded = load_model(out)
    assert type(loaded.model).__name__.startswith("PeftModel")
    probabilities = filter_scores(out)
    assert all(0.0 <= p <= 1.0 for p in probabilities)


def test_stage1_full_fine_tuning_then_resume(tiny_qwen2_dir, data_file, tmp_path):
    out = tmp_path / "full"
    settings = dict(data=str(data_file), model=str(tiny_qwen2_dir), output_dir=str(out), use_lora=False, **tiny_run(save_steps=1, eval_every=0))
    first = train_stage1(Stage1Config(max_steps=2, **settings))
    assert_reward_logged(first.log_history, "rewards/stage1_format_reward/mean")
    trained, base = load_file(out / "model.safetensors"), load_file(tiny_qwen2_dir / "model.safetensors")
    assert any(not trained[name].equal(base[name]) for name in base)
    assert read_model_card(out)["kind"] == "full" and not (out / "adapter_config.json").exists()
    filter_scores(out)

    # Resume from checkpoint-2 up to step 3: steps 1-2 come back from the checkpoint, only step 3 runs
    resumed = train_stage1(Stage1Config(max_steps=3, resume_from_checkpoint="last", **settings))
    assert resumed.trainer.state.global_step == 3
    steps = [h for h in resumed.log_history if "reward" in h]
    assert [h["step"] for h in steps] == [1, 2, 3]
    assert steps[:2] == [h for h in first.log_history if "reward" in h]
    assert read_model_card(out)["steps"] == 3


def test_vlm_stage1_lora_with_images_and_an_assistant_prefix(tiny_qwen2_vl_dir, data_file, tmp_path):
    out = tmp_path / "vlm"
    config = Stage1Config(data=str(data_file), model=str(tiny_qwen2_vl_dir), output_dir=str(out), max_steps=2, max_pixels=56 * 56,
                          assistant_prefix="<answer>", **tiny_run(eval_every=0))
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
                                                     format_probe_generations=2, max_completion_length=8))
    result = train_stage2(config)
    assert_reward_logged(result.log_history, "rewards/stage2_format_reward/mean")
    assert {"rewards/stage2_rank_reward/mean", "rewards/stage2_answer_reward/mean"} <= {k for h in result.log_history for k in h}
    card = read_model_card(out)
    assert (card["stage"], card["kind"], card["init_from"], card["base_model"]) == (2, "lora", str(stage1_lora.output_dir), str(tiny_qwen2_dir))
    # The random model fails the format probe, so the warm start ran and was saved on its own
    warm = card["sft_warm_start"]
    assert warm["ran"] and warm["probe"]["format_rate"] < 0.5 and warm["probe"]["n"] == 4
    assert load_model(out / "sft").tokenizer is not None
    assert [h["phase"] for h in card["held_out_history"]] == ["initial", "sft", "final"]
    assert {"p@1", "mrr", "set_f1", "answer_f1", "format_rate"} <= set(card["final_metrics"]["held_out"])
    filter_scores(out)


def test_stage2_from_the_base_model_with_full_fine_tuning(stage1_lora, tiny_qwen2_dir, data_file, tmp_path):
    out = tmp_path / "stage2-base"
    config = Stage2Config(data=str(data_file), stage1_output=str(stage1_lora.output_dir), init_from="base", use_lora=False,
                          output_dir=str(out), max_steps=2, k=2, permutations=1, **tiny_run(eval_every=0))
    result = train_stage2(config)
    assert_reward_logged(result.log_history, "rewards/stage2_format_reward/mean")
    card = read_model_card(out)
    assert (card["kind"], card["init_from"], card["base_model"]) == ("full", str(tiny_qwen2_dir), str(tiny_qwen2_dir))
    assert load_model(out).model.config.model_type == "qwen2"


def test_vlm_stage2_full_fine_tuning_shows_several_images_per_prompt(tiny_qwen2_vl_dir, data_file, tmp_path):
    out = tmp_path / "vlm-stage2"
    config = Stage2Config(data=str(data_file), model=str(tiny_qwen2_vl_dir), output_dir=str(out), max_steps=2, k=3, permutations=1,
                          max_pixels=56 * 56, use_lora=False, **tiny_run(eval_every=2))
    result = train_stage2(config)
    assert_reward_logged(result.log_history, "rewards/stage2_format_reward/mean")
    assert "images" in result.trainer.train_dataset.column_names
    assert max(len(images) for images in result.trainer.train_dataset["images"]) >= 2
    card = read_model_card(out)
    assert (card["kind"], card["init_from"], card["final_metrics"]["held_out"]["n"]) == ("full", str(tiny_qwen2_vl_dir), 2)
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


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_trains_stage1_and_prints_the_held_out_table(tiny_qwen2_dir, data_file, tmp_path):
    out = tmp_path / "cli"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"num_generations": 2, "per_device_train_batch_size": 4, "max_completion_length": 4,
                                      "gradient_checkpointing": False, "learning_rate": 1e-3, "save_steps": 100,
                                      "extra_reward_funcs": ["test_finetune_train:length_reward"]}))
    result = CliRunner().invoke(train_app, ["stage1", "--data", str(data_file), "--model", str(tiny_qwen2_dir), "--output", str(out),
                                            "--config", str(config), "--max-steps", "1", "--sft", "off", "--eval-every", "1",
                                            "--set", "held_out_fraction=0.25"])
    assert result.exit_code == 0, result.output
    assert "held-out" in result.output and "p@1" in result.output and "frac_reward_zero_std" in result.output
    assert read_model_card(out)["steps"] == 1 and (out / "training_curves.png").is_file()

    bad = CliRunner().invoke(train_app, ["stage1", "--data", str(data_file), "--output", str(out), "--set", "lora_rank=8"])
    assert bad.exit_code == 2 and "lora_r" in bad.output

    defaults = CliRunner().invoke(train_app, ["defaults", "2"])
    assert defaults.exit_code == 0
    (tmp_path / "defaults.yaml").write_text(defaults.output)
    assert Stage2Config.from_yaml(tmp_path / "defaults.yaml", output_dir=str(tmp_path)).k == 5
