"""``mmrag train``: GRPO training of the stage-1 and stage-2 models from the command line (``train_app``).

::

    mmrag train stage1 --data train.jsonl --model smollm2 --output runs/s1 [--config s1.yaml] [--max-steps N]
                       [--lora/--full] [--eval-data dev.jsonl] [--eval-every N] [--sft auto|on|off] [--resume]
                       [--set KEY=VALUE ...]
    mmrag train stage2 --data train.jsonl --stage1 runs/s1 --output runs/s2 ...
    mmrag train defaults stage1 > s1.yaml        # every stage field with its default, to edit

Values are merged in this order: the config's defaults, ``--config FILE.yaml``, ``--set KEY=VALUE`` (any
``Stage1Config`` / ``Stage2Config`` field, TRL's and transformers' included), then the named options. A run
shows one progress bar (reward, format rate, zero-variance groups, held-out P@1), evaluates the held-out
questions every ``--eval-every`` steps with the ``mmrag eval rerank`` metrics, and writes the model,
``model_card.json`` and ``training_curves.png`` to ``--output``.

Only typer and rich are imported at module level (``mmrag --help`` stays fast and torch-free).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .common import console, fail, quiet_libraries

train_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Train the stage-1 (relevance) and stage-2 (rank + answer) models with GRPO (TRL), LoRA or full.")

DataOption = typer.Option(None, "--data", help="Training rerank examples (JSONL, one query a line).")
OutputOption = typer.Option(None, "--output", "-o", help="Output directory (model, model_card.json, curves, checkpoints).")
ConfigOption = typer.Option(None, "--config", exists=True, dir_okay=False, help="YAML file of config fields (see `mmrag train defaults`).")
MaxStepsOption = typer.Option(None, "--max-steps", min=1, help="GRPO optimizer steps.")
LoraOption = typer.Option(None, "--lora/--full", help="Train a LoRA adapter (default) or the full model.")
EvalDataOption = typer.Option(None, "--eval-data", exists=True, dir_okay=False, help="Held-out rerank examples (default: hold out 20% of --data's questions).")
EvalEveryOption = typer.Option(None, "--eval-every", min=0, help="Held-out evaluation every N steps (0: never).")
SftOption = typer.Option(None, "--sft", help="SFT warm start: auto (when the format probe fails), on, off.")
ResumeOption = typer.Option(False, "--resume", help="Resume from the last checkpoint in --output.")
CpuOption = typer.Option(False, "--cpu", help="Train on the CPU even when a GPU is visible.")
SetOption = typer.Option([], "--set", help="Any config field, KEY=VALUE (repeatable), e.g. --set beta=0.0 --set num_generations=4.")




def build_config(stage: int, config: Optional[Path] = None, sets: Optional[List[str]] = None, **options):
    """The stage config from a YAML file, ``KEY=VALUE`` strings and named options (later ones win; None skipped).

    Example:
        >>> build_config(1, sets=["beta=0.0"], data="train.jsonl", output_dir="runs/s1", max_steps=10).beta
        0.0
    """
    from ..finetune.config import Stage1Config, Stage2Config, parse_overrides

    cls = Stage1Config if stage == 1 else Stage2Config
    overrides = parse_overrides(cls, list(sets or []), where="--set")
    overrides.update({k: v for k, v in options.items() if v is not None})
    return cls.from_yaml(config, **overrides)


def _train(stage: int, config_file, sets, **options) -> None:
    quiet_libraries("mmrag_agent.finetune")
    import datasets

    datasets.disable_progress_bars()
    try:
        config = build_config(stage, config_file, sets, **options)
    except (ValueError, TypeError) as exc:
        fail(str(exc))
    if not config.data:
        fail("--data is required (or `data:` in --config)")
    from ..finetune.train import train_stage1, train_stage2

    console.print(f"stage {stage}: {config.data} -> {config.output_dir} "
                  f"({'LoRA r=%d' % config.lora_r if config.use_lora else 'full fine-tuning'}, lr {config.learning_rate:g}, "
                  f"{config.num_generations} generations, beta {config.beta:g}, max_steps {config.max_steps})")
    try:
        result = (train_stage1 if stage == 1 else train_stage2)(config)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    print_summary(result.model_card, result.output_dir)


def print_summary(card: dict, output_dir) -> None:
    """Print the held-out history and the final training metrics of a run."""
    if not card:
        return
    run = card["training"]
    table = Table(title=f"stage {card['stage']} held-out ({run['data']['held_out_queries']} questions)")
    metrics = [m for m in ("p@1", "mrr", "ndcg@5", "recall@5", "set_f1", "answer_f1", "format_rate")
               if any(m in h for h in run.get("held_out_history", []))]
    for column in ("step", "phase", *metrics):
        table.add_column(column, justify="right")
    for h in run.get("held_out_history", []):
        table.add_row(str(h["step"]), h["phase"], *(f"{h[m]:.4f}" if isinstance(h.get(m), (int, float)) else "-" for m in metrics))
    if table.rows:
        console.print(table)
    train = run["final_metrics"]["train"]
    warm = run["sft_warm_start"]
    probe = warm.get("probe", {}).get("format_rate")
    console.print(f"steps {run['steps']}; last-{train['over_last_steps']}-step means: reward {_fmt(train['reward'])}, "
                  f"format rate {_fmt(train['format_rate'])}, frac_reward_zero_std {_fmt(train['frac_reward_zero_std'])}, "
                  f"{_fmt(train['step_time'])} s/step")
    console.print(f"SFT warm start: {'ran' if warm.get('ran') else 'skipped'} ({warm.get('mode')}"
                  + (f", probe format rate {probe:.3f}" if isinstance(probe, float) else "") + ")")
    console.print(f"wrote {output_dir} (load with mmrag_agent.models.load_model or Stage1RelevanceFilter(model=...)); "
                  f"curves: {Path(output_dir) / 'training_curves.png'}")


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


@train_app.command("stage1")
def stage1(
    data: Optional[Path] = DataOption,
    model: Optional[str] = typer.Option(None, "--model", help="Base model: hub id, directory, .gguf, adapter directory or 'smollm2' (default)."),
    output: Optional[Path] = OutputOption,
    config: Optional[Path] = ConfigOption,
    max_steps: Optional[int] = MaxStepsOption,
    lora: Optional[bool] = LoraOption,
    eval_data: Optional[Path] = EvalDataOption,
    eval_every: Optional[int] = EvalEveryOption,
    sft: Optional[str] = SftOption,
    assistant_prefix: Optional[str] = typer.Option(None, "--assistant-prefix", help="Pre-fill the answer, e.g. '<answer>'."),
    reasoning: Optional[bool] = typer.Option(None, "--reasoning/--no-reasoning", help="<think> before the yes/no answer."),
    resume: bool = ResumeOption,
    cpu: bool = CpuOption,
    sets: List[str] = SetOption,
) -> None:
    """Stage 1: point-wise yes/no relevance GRPO (format + gated accuracy rewards), SPEC §3."""
    _train(1, config, sets, data=_str(data), model=model, output_dir=_str(output), max_steps=max_steps, use_lora=lora,
           eval_data=_str(eval_data), eval_every=eval_every, sft_warm_start=sft, assistant_prefix=assistant_prefix,
           reasoning=reasoning, resume_from_checkpoint="last" if resume else None, use_cpu=cpu or None)


@train_app.command("stage2")
def stage2(
    data: Optional[Path] = DataOption,
    stage1_output: Optional[Path] = typer.Option(None, "--stage1", exists=True, file_okay=False, help="Stage-1 output directory to start from (default start)."),
    model: Optional[str] = typer.Option(None, "--model", help="Base model (used with --init-from base, or without --stage1)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="stage1 (default) or base."),
    output: Optional[Path] = OutputOption,
    config: Optional[Path] = ConfigOption,
    max_steps: Optional[int] = MaxStepsOption,
    lora: Optional[bool] = LoraOption,
    eval_data: Optional[Path] = EvalDataOption,
    eval_every: Optional[int] = EvalEveryOption,
    sft: Optional[str] = SftOption,
    k: Optional[int] = typer.Option(None, "-k", "--k", min=1, help="Candidates per prompt (default 5)."),
    resume: bool = ResumeOption,
    cpu: bool = CpuOption,
    sets: List[str] = SetOption,
) -> None:
    """Stage 2: list-wise <think>/<rank>/<answer> GRPO (format, rank quality, answer accuracy), SPEC §4."""
    _train(2, config, sets, data=_str(data), stage1_output=_str(stage1_output), model=model, init_from=init_from,
           output_dir=_str(output), max_steps=max_steps, use_lora=lora, eval_data=_str(eval_data), eval_every=eval_every,
           sft_warm_start=sft, k=k, resume_from_checkpoint="last" if resume else None, use_cpu=cpu or None)


@train_app.command("defaults")
def defaults(stage: int = typer.Argument(..., min=1, max=2, help="1 or 2.")) -> None:
    """Print the stage fields with their defaults and help as YAML (edit it and pass it with --config)."""
    from dataclasses import fields

    from ..finetune.config import Stage1Config, Stage2Config, stage_fields

    cls = Stage1Config if stage == 1 else Stage2Config
    names = set(stage_fields(cls)) | {"num_generations", "temperature", "per_device_train_batch_size", "max_steps", "save_steps",
                                      "gradient_checkpointing", "seed"}
    import yaml

    for f in fields(cls):
        if f.name not in names:
            continue
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        help_text = " ".join(str(f.metadata.get("help", "")).replace("%%", "%").split())
        typer.echo(f"# {help_text}" if help_text else "#")
        typer.echo(yaml.safe_dump({f.name: default}, default_flow_style=True, width=10_000).strip().strip("{}"))


def _str(path) -> Optional[str]:
    return None if path is None else str(path)


if __name__ == "__main__":  # `accelerate launch -m mmrag_agent.cli.train stage1 ...` (docs/scale_out.md)
    train_app()
