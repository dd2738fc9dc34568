"""Stage configs (``trl.GRPOConfig`` + ``trl.ModelConfig``) parsed by ``trl.TrlParser``, and the ``mmrag train`` command
line up to the point where a model would load: named options, ``--set``, pass-through options, YAML, precedence,
one-line errors, the start-up plan, ``--dry-run``, and bad data files. Nothing here loads a model."""

from __future__ import annotations

import json

import pytest
import yaml
from files import write_image
from typer.testing import CliRunner

from mmrag_agent.cli.train import build_config, config_args, train_app
from mmrag_agent.finetune import ConfigError, Stage1Config, Stage2Config
from mmrag_agent.format import STAGE1_PREFIX, STAGE1_REASONING_PREFIX, STAGE2_PREFIX


def run_cli(*args: str):
    return CliRunner().invoke(train_app, [str(a) for a in args])


def one_line_error(result) -> str:
    """The CLI's error: exit code 2 and exactly one non-empty output line that starts with 'error:'."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture
def data_file(tmp_path):
    """Four valid questions with one text and one image candidate (a real PNG next to the file)."""
    (tmp_path / "img").mkdir()
    rows = []
    for q in range(4):
        write_image(tmp_path / "img" / f"{q}.png", size=(32, 32), color="red")
        rows.append({"qid": f"q{q}", "query": f"Question {q}?", "answers": ["yes"], "positives": [f"t{q}"],
                     "candidates": [{"id": f"t{q}", "modality": "text", "text": "A passage."},
                                    {"id": f"i{q}", "modality": "image", "text": "A photo.", "image_path": f"img/{q}.png"}]})
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ the configs
def test_configs_are_grpo_and_model_configs_with_spec_defaults(tmp_path):
    from peft import LoraConfig
    from trl import GRPOConfig, ModelConfig, get_peft_config

    s1 = Stage1Config(output_dir=str(tmp_path))
    assert isinstance(s1, GRPOConfig) and isinstance(s1, ModelConfig)
    assert (s1.model_name_or_path, s1.num_generations, s1.beta, s1.temperature, s1.learning_rate, s1.max_completion_length) == (
        "smollm2", 8, 0.04, 1.0, 1e-5, 16)
    assert (s1.lora_r, s1.lora_alpha, s1.use_peft, s1.negatives_per_positive, s1.format_weight, s1.accuracy_weight) == (16, 32, True, 1, 0.1, 1.0)
    assert s1.sft_warm_start == "auto" and s1.sft_max_steps == 50 and s1.bf16 is False  # no bf16 autocast on a CPU
    assert Stage1Config(output_dir=str(tmp_path), reasoning=True).max_completion_length == 256
    assert Stage1Config(output_dir=str(tmp_path), use_peft=False).learning_rate == 1e-6
    s2 = Stage2Config(output_dir=str(tmp_path))
    assert (s2.k, s2.permutations, s2.max_completion_length, s2.init_from, s2.rank_weight, s2.answer_weight) == (5, 3, 256, "stage1", 1.0, 1.0)
    # The LoRA config is TRL's, from the ModelConfig fields
    lora = get_peft_config(s1)
    assert isinstance(lora, LoraConfig) and (lora.r, lora.lora_alpha, lora.lora_dropout) == (16, 32, 0.05)
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert get_peft_config(Stage1Config(output_dir=str(tmp_path), use_peft=False)) is None
    assert Stage1Config(output_dir=str(tmp_path), lora_target_modules=["all-linear"]).lora_target_modules == "all-linear"


def test_assistant_prefix_defaults_are_the_serving_prefixes_and_empty_means_none(tmp_path):
    assert Stage1Config(output_dir=str(tmp_path)).assistant_prefix == STAGE1_PREFIX == "<answer>"
    assert Stage1Config(output_dir=str(tmp_path), reasoning=True).assistant_prefix == STAGE1_REASONING_PREFIX == "<think>"
    assert Stage2Config(output_dir=str(tmp_path)).assistant_prefix == STAGE2_PREFIX == "<think>"
    assert Stage2Config(output_dir=str(tmp_path), assistant_prefix="").assistant_prefix == ""
    assert Stage2Config.from_args(["--assistant_prefix="]).assistant_prefix == ""
    assert Stage1Config.from_args(["--reasoning", "true"]).assistant_prefix == "<think>"


def test_invalid_values_are_one_line_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="sft_warm_start"):
        Stage1Config(output_dir=str(tmp_path), sft_warm_start="maybe")
    with pytest.raises(ConfigError, match="init_from"):
        Stage2Config(output_dir=str(tmp_path), init_from="stage3")
    with pytest.raises(ConfigError, match="load_in_4bit is not supported"):  # a ModelConfig field the loader cannot honour
        Stage1Config(output_dir=str(tmp_path), load_in_4bit=True)
    with pytest.raises(ConfigError, match="invalid float value: 'abc'"):
        Stage1Config.from_args(["--learning_rate", "abc"])
    with pytest.raises(ConfigError, match="invalid choice: 'maybe'"):
        Stage1Config.from_args(["--sft_warm_start", "maybe"])


def test_trl_parser_gives_the_config_the_constructor_gives(tmp_path):
    named = dict(data="train.jsonl", model_name_or_path="some/model", output_dir=str(tmp_path / "out"), max_steps=7, use_peft=False,
                 eval_data="dev.jsonl", eval_every=3, sft_warm_start="on", sft_max_steps=9, assistant_prefix="", reasoning=True,
                 resume_from_checkpoint="last", use_cpu=True, lora_target_modules=["q_proj", "v_proj"], beta=0.5)
    parsed = build_config(1, config_args(**named))
    assert parsed == Stage1Config(**named)
    assert (parsed.learning_rate, parsed.assistant_prefix, parsed.max_completion_length) == (1e-6, "", 256)
    named2 = dict(data="train.jsonl", stage1_output="runs/s1", init_from="base", k=3, output_dir=str(tmp_path / "s2"), permutations=2)
    assert build_config(2, config_args(**named2)) == Stage2Config(**named2)
    assert build_config(2, config_args(**named2)) != Stage2Config(**{**named2, "k": 4})


def test_yaml_then_set_then_pass_through_then_named_options(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 1e-4\nbeta: 0.5\nnum_generations: 4\nmax_steps: 7\ntemperature: 0.5\nsft_warm_start: off\n"
                    "lora_target_modules: [q_proj, v_proj]\nenv:\n  MMRAG_TEST_FROM_YAML: 'set'\n")
    config = build_config(1, config_args(path, ["max_steps=8", "temperature=0.7", "per_device_train_batch_size=4"],
                                         ["--temperature", "0.9"], output_dir=str(tmp_path), max_steps=9))
    assert (config.learning_rate, config.beta, config.num_generations) == (1e-4, 0.5, 4)  # from the file (1e-4 read as a float)
    assert config.per_device_train_batch_size == 4  # --set
    assert config.temperature == 0.9  # the pass-through option after --set
    assert config.max_steps == 9  # the named option wins over --set and the file
    assert config.sft_warm_start == "off" and config.lora_target_modules == ["q_proj", "v_proj"]  # YAML's bare off is a boolean
    import os

    assert os.environ.pop("MMRAG_TEST_FROM_YAML") == "set"  # TrlParser's env: mapping


def test_unknown_fields_name_the_closest_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config field 'lora_rank' on the command line; did you mean lora_r\b"):
        Stage1Config.from_args(["--lora_rank", "8"])
    (tmp_path / "bad.yaml").write_text("sft_max_step: 3\n")
    with pytest.raises(ConfigError, match=r"'sft_max_step' in .*bad.yaml; did you mean sft_max_steps"):
        Stage1Config.from_args(["--config", str(tmp_path / "bad.yaml")])
    (tmp_path / "list.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        Stage1Config.from_args(["--config", str(tmp_path / "list.yaml")])
    (tmp_path / "broken.yaml").write_text("beta: [0.1\n")
    with pytest.raises(ConfigError, match=r"not valid YAML .* line 2"):
        Stage1Config.from_args(["--config", str(tmp_path / "broken.yaml")])


def test_to_yaml_round_trips_through_the_parser(tmp_path):
    config = Stage2Config(data="train.jsonl", stage1_output="runs/s1", output_dir=str(tmp_path), k=3, use_peft=False,
                          assistant_prefix="", lora_target_modules=["q_proj"], beta=0.0)
    (tmp_path / "resolved.yaml").write_text(config.to_yaml())
    assert Stage2Config.from_args(["--config", str(tmp_path / "resolved.yaml")]) == config


# ------------------------------------------------------------------------------------------------ the command line
def test_cli_named_options_reach_the_config_unchanged(data_file, tmp_path):
    """--dry-run prints the resolved config; read back, it equals the constructor's config for the same values."""
    out = tmp_path / "run"
    result = run_cli("stage1", "--data", data_file, "--model", "some/model", "--output", out, "--max-steps", 3, "--full",
                     "--eval-every", 2, "--sft", "on", "--sft-steps", 7, "--assistant-prefix", "", "--reasoning", "--cpu",
                     "--resume", "--set", "beta=0.25", "--lora_target_modules", "q_proj", "v_proj", "--dry-run")
    assert result.exit_code == 0, result.output
    assert not out.exists()  # a dry run writes nothing
    (tmp_path / "resolved.yaml").write_text(result.output)
    assert Stage1Config.from_args(["--config", str(tmp_path / "resolved.yaml")]) == Stage1Config(
        data=str(data_file), model_name_or_path="some/model", output_dir=str(out), max_steps=3, use_peft=False, eval_every=2,
        sft_warm_start="on", sft_max_steps=7, assistant_prefix="", reasoning=True, use_cpu=True, resume_from_checkpoint="last",
        beta=0.25, lora_target_modules=["q_proj", "v_proj"])
    assert "# data: 3 training and 1 held-out questions, all valid" in result.output

    stage2 = run_cli("stage2", "--data", data_file, "--stage1", tmp_path, "--output", out, "-k", 2, "--init-from", "base",
                     "--permutations", 2, "--dry-run")
    assert stage2.exit_code == 0, stage2.output
    (tmp_path / "resolved2.yaml").write_text(stage2.output)
    assert Stage2Config.from_args(["--config", str(tmp_path / "resolved2.yaml")]) == Stage2Config(
        data=str(data_file), stage1_output=str(tmp_path), output_dir=str(out), k=2, init_from="base", permutations=2)


def test_cli_announces_the_warm_start_and_its_length(data_file, tmp_path):
    auto = run_cli("stage1", "--data", data_file, "--output", tmp_path / "o", "--max-steps", 2, "--dry-run")
    assert "# SFT warm start: auto (runs 50 steps before GRPO if the format probe fails; --sft-steps to change, --sft off to skip)" in auto.output
    assert "GRPO max_steps 2" in auto.output
    capped = run_cli("stage1", "--data", data_file, "--output", tmp_path / "o", "--max-steps", 2, "--sft-steps", 3, "--dry-run")
    assert "runs 3 steps before GRPO" in capped.output and "sft_max_steps: 3" in capped.output
    always = run_cli("stage2", "--data", data_file, "--stage1", tmp_path, "--output", tmp_path / "o", "--sft", "on", "--dry-run")
    assert "SFT warm start: on (runs 50 steps before GRPO always" in always.output
    off = run_cli("stage1", "--data", data_file, "--output", tmp_path / "o", "--sft", "off", "--dry-run")
    assert "SFT warm start: off" in off.output


@pytest.mark.parametrize("args, expected", [
    (["--set", "lora_rank=8"], "unknown config field 'lora_rank' on the command line; did you mean lora_r"),
    (["--lora_rank", "8"], "unknown config field 'lora_rank' on the command line; did you mean lora_r"),
    (["--eval-evry", "5"], "unknown config field 'eval-evry' on the command line; did you mean eval_every"),
    (["--set", "beta"], "--set 'beta': expected KEY=VALUE"),
    (["--sft", "maybe"], "invalid choice: 'maybe'"),
    (["--set", "learning_rate=fast"], "invalid float value: 'fast'"),
])
def test_cli_config_errors_are_one_line_with_exit_2(data_file, tmp_path, args, expected):
    line = one_line_error(run_cli("stage1", "--data", data_file, "--output", tmp_path / "o", *args))
    assert expected in line
    assert not (tmp_path / "o").exists()


def test_cli_unknown_yaml_field_names_the_file(data_file, tmp_path):
    (tmp_path / "s1.yaml").write_text("lora_rank: 8\n")
    line = one_line_error(run_cli("stage1", "--data", data_file, "--output", tmp_path / "o", "--config", tmp_path / "s1.yaml"))
    assert "'lora_rank' in" in line and "s1.yaml" in line and "lora_r" in line


def _bad_files(root, good_row):
    """Each way a data file can be bad, as (name, content bytes, text the error must contain)."""
    missing_field = {k: v for k, v in good_row.items() if k != "query"}
    no_image = {**good_row, "candidates": good_row["candidates"][:1] + [
        {"id": "i9", "modality": "image", "text": "A photo.", "image_path": "img/none.png"}]}
    return [
        ("bad-json", (json.dumps(good_row) + "\n{not json\n").encode(), "bad-json.jsonl:2: invalid JSON"),
        ("missing-field", (json.dumps(missing_field) + "\n").encode(), "missing-field.jsonl:1: field 'query'"),
        ("latin-1", json.dumps({**good_row, "query": "Qué?"}, ensure_ascii=False).encode("latin-1") + b"\n", "not UTF-8 text"),
        ("missing-image", (json.dumps(no_image) + "\n").encode(), "img/none.png of query 'q0' does not exist"),
    ]


@pytest.mark.parametrize("stage", [1, 2])
def test_cli_bad_data_files_fail_in_one_line_before_the_output_folder_exists(data_file, tmp_path, stage):
    good_row = json.loads(data_file.read_text().splitlines()[0])
    for name, content, expected in _bad_files(tmp_path, good_row):
        bad = data_file.parent / f"{name}.jsonl"
        bad.write_bytes(content)
        out = tmp_path / f"out-{name}"
        extra = ["--stage1", tmp_path] if stage == 2 else ["--model", "no/such-model-is-loaded"]
        line = one_line_error(run_cli(f"stage{stage}", "--data", bad, "--output", out, *extra))
        assert expected in line, line
        assert not out.exists(), f"{name}: the output folder was created"
        # the held-out file is checked the same way
        line = one_line_error(run_cli(f"stage{stage}", "--data", data_file, "--eval-data", bad, "--output", out, *extra))
        assert expected in line and not out.exists()
    line = one_line_error(run_cli("stage1", "--data", tmp_path / "nope.jsonl", "--output", tmp_path / "o"))
    assert "--data" in line and "nope.jsonl" in line and not (tmp_path / "o").exists()


def test_defaults_print_yaml_that_reads_back(tmp_path):
    for stage, cls in ((1, Stage1Config), (2, Stage2Config)):
        result = run_cli("defaults", stage)
        assert result.exit_code == 0, result.output
        (tmp_path / f"s{stage}.yaml").write_text(result.output)
        values = yaml.safe_load(result.output)
        assert values["assistant_prefix"] is None and values["sft_max_steps"] == 50 and values["use_peft"] is True
        assert cls.from_args(["--config", str(tmp_path / f"s{stage}.yaml")]) == cls()
    assert "k" in yaml.safe_load(run_cli("defaults", 2).output) and "k" not in yaml.safe_load(run_cli("defaults", 1).output)
    both = run_cli("defaults")
    assert both.exit_code == 0
    assert "# ==== stage 1: mmrag train defaults 1 > stage1.yaml" in both.output and "# ==== stage 2:" in both.output


@pytest.mark.parametrize("stage", [1, 2])
def test_train_functions_check_the_data_before_loading_a_model_or_writing(data_file, tmp_path, stage):
    """The Python API too: a bad file raises DatasetError (one line) before the model loads or the output folder exists."""
    from mmrag_agent.finetune import train_stage1, train_stage2
    from mmrag_agent.schema import DatasetError

    good_row = json.loads(data_file.read_text().splitlines()[0])
    for name, content, expected in _bad_files(tmp_path, good_row):
        bad = data_file.parent / f"{name}.jsonl"
        bad.write_bytes(content)
        out = tmp_path / f"api-{name}"
        config = (Stage1Config if stage == 1 else Stage2Config)(data=str(bad), output_dir=str(out), model_name_or_path="no/such-model")
        with pytest.raises(DatasetError, match=expected.split(":", 1)[-1].strip()) as caught:
            (train_stage1 if stage == 1 else train_stage2)(config)
        assert "\n" not in str(caught.value) and not out.exists()
    config = Stage1Config(data=str(tmp_path / "nope.jsonl"), output_dir=str(tmp_path / "api-nope"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        train_stage1(config)
    assert not (tmp_path / "api-nope").exists()
