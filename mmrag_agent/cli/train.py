"""``mmrag train``: GRPO training of the stage-1 and stage-2 models from the command line (``train_app``).

::

    mmrag train stage1 --data train.jsonl [--model smollm2] --output runs/s1 [--config s1.yaml] [--max-steps N]
                       [--lora/--full] [--eval-data dev.jsonl] [--eval-every N] [--sft auto|on|off] [--sft-steps N]
                       [--assistant-prefix TEXT] [--reasoning/--no-reasoning] [--first-stage embedding|bm25|none]
                       [--resume] [--cpu] [--dry-run]
                       [--set KEY=VALUE ...] [--KEY VALUE [VALUE ...] ...]
    mmrag train stage2 --data train.jsonl --stage1 runs/s1 --output runs/s2 [-k 5] [--init-from stage1|base] ...
    mmrag train defaults [1|2]                  # the stage fields with their defaults, as YAML to edit

Every field of ``Stage1Config`` / ``Stage2Config`` (TRL's ``GRPOConfig`` and ``ModelConfig`` plus the stage fields)
can be set, and ``trl.TrlParser`` parses them all: in ``--config FILE.yaml``; with ``--set KEY=VALUE`` (passed on
as the one token ``--KEY=VALUE``, so a value may be empty or start with a dash); or as TRL options among the
named ones, ``--KEY VALUE`` (the way to give a list several items: ``--lora_target_modules q_proj v_proj``).
Later values win: the defaults, the YAML file, the ``--set`` values, the ``--KEY`` options, then the named
options. An unknown field is a one-line error naming the closest fields (exit 2). ``--dry-run`` checks the
options and the data, prints the plan and the resolved config as YAML, and exits.

A run prints its plan (what runs before GRPO, and for how long), shows a progress bar for every phase (format
probe, SFT warm start, GRPO with reward / format rate / held-out P@1, held-out evaluations), and writes the
model, ``model_card.json`` and ``training_curves.png`` to ``--output``. A bad data file is a one-line error
before anything is written.

Only typer and rich are imported at module level (``mmrag --help`` stays fast and torch-free).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.table import Table

from .common import console, fail, quiet_libraries

train_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Train the stage-1 (relevance) and stage-2 (rank + answer) models with GRPO (TRL), LoRA or full.")

#: Stage commands pass options they do not name on to TRL's parser (``--beta 0.0``, ``--lora_target_modules a b``).
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}

DataOption = typer.Option(None, "--data", help="Training rerank examples (JSONL, one query a line).")
OutputOption = typer.Option(None, "--output", "-o", help="Output directory (model, model_card.json, curves, checkpoints).")
ConfigOption = typer.Option(None, "--config", dir_okay=False, help="YAML file of config fields (see `mmrag train defaults`).")
MaxStepsOption = typer.Option(None, "--max-steps", min=1, help="GRPO optimizer steps (the SFT warm start's are --sft-steps).")
LoraOption = typer.Option(None, "--lora/--full", help="Train a LoRA adapter (default) or the full model.")
EvalDataOption = typer.Option(None, "--eval-data", dir_okay=False, help="Held-out rerank examples (default: hold out 20% of --data's questions).")
EvalEveryOption = typer.Option(None, "--eval-every", min=0, help="Held-out evaluation every N steps (0: never).")
SftOption = typer.Option(None, "--sft", help="SFT warm start before GRPO: auto (when the format probe fails; default), on, off.")
SftStepsOption = typer.Option(None, "--sft-steps", min=1, help="Optimizer steps of the SFT warm start (default 50).")
PrefixOption = typer.Option(None, "--assistant-prefix", help="Pre-fill the assistant turn (default: the stage's; '' for none).")
ResumeOption = typer.Option(False, "--resume", help="Resume from the last checkpoint in --output.")
CpuOption = typer.Option(False, "--cpu", help="Train on the CPU even when a GPU is visible.")
DryRunOption = typer.Option(False, "--dry-run", help="Check the options and data files, print the plan and the resolved config "
                            "as YAML (reusable with --config), and exit: no model loads, nothing is written.")
SetOption = typer.Option([], "--set", help="Any config field, KEY=VALUE (repeatable), e.g. --set beta=0.0 --set num_generations=4.")


def config_args(config_file: Optional[Path] = None, sets: Optional[List[str]] = None, extra: Optional[List[str]] = None,
                **named) -> list[str]:
    """The ``trl.TrlParser`` tokens of a command line: ``--config``, ``--set`` pairs, pass-through options, named options.

    Args:
        config_file: The YAML file, or None.
        sets: ``KEY=VALUE`` strings; each becomes ``--KEY=VALUE``.
        extra: Options passed through as they are (``--beta 0.0``).
        **named: Config fields from the named options; None values are left out (the option was not given).

    Raises:
        ValueError: A ``--set`` item without ``=``.

    Example:
        >>> config_args(None, ["beta=0.0"], ["--lora_target_modules", "q_proj", "v_proj"], max_steps=10, use_peft=False)
        ['--beta=0.0', '--lora_target_modules', 'q_proj', 'v_proj', '--max_steps=10', '--use_peft=false']
    """
    args = ["--config", str(config_file)] if config_file is not None else []
    for item in sets or []:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set beta=0.0")
        args.append(f"--{key.strip()}={value}")
    args += list(extra or [])
    for key, value in named.items():
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(f"--{key}={'true' if value else 'false'}")
        elif isinstance(value, (list, tuple)):
            args += [f"--{key}", *map(str, value)]
        else:
            args.append(f"--{key}={value}")
    return args


def build_config(stage: int, args: List[str]):
    """The stage config parsed by ``trl.TrlParser`` from :func:`config_args` tokens.

    Raises:
        mmrag_agent.finetune.config.ConfigError: One line naming the field (and the closest names if unknown).

    Example:
        >>> build_config(1, config_args(sets=["beta=0.0"], data="train.jsonl", output_dir="runs/s1", max_steps=10)).beta
        0.0
    """
    from ..finetune.config import Stage1Config, Stage2Config

    return (Stage1Config if stage == 1 else Stage2Config).from_args(args)


def startup_lines(config) -> list[str]:
    """What a run will do, printed before anything loads: data, output, method, GRPO length, warm start, evaluation."""
    method = f"LoRA r={config.lora_r}" if config.use_peft else "full fine-tuning"
    length = f"max_steps {config.max_steps}" if config.max_steps > 0 else f"{config.num_train_epochs:g} epochs"
    lines = [f"stage {config.stage}: {config.data} -> {config.output_dir} ({method}, lr {config.learning_rate:g}, "
             f"{config.num_generations} generations, beta {config.beta:g}, GRPO {length}, "
             f"assistant prefix {config.assistant_prefix!r})", config.warm_start_plan()]
    if config.eval_every > 0:
        held_out = config.eval_data or f"{config.held_out_fraction:.0%} of the questions of {config.data}"
        lines.append(f"held-out evaluation on {held_out}: before training, every {config.eval_every} steps and at the end "
                     "(--eval-every to change, 0: never)")
    else:
        lines.append("held-out evaluation: off (--eval-every N to evaluate)")
    if config.stage == 1:
        lines.append(f"fusion: the weight of P(relevant) against the {config.first_stage} retriever is fitted on the held-out "
                     "questions and written to model_card.json (--first-stage to change)" if config.first_stage != "none"
                     else "fusion: none (--first-stage none: stage 1 ranks alone)")
    return lines


def _train(stage: int, ctx: typer.Context, config_file: Optional[Path], sets: List[str], dry_run: bool = False, **named) -> None:
    quiet_libraries("mmrag_agent.finetune")
    warnings.filterwarnings("ignore", category=FutureWarning)  # the libraries' deprecation notices are not the user's to act on
    import datasets

    from ..finetune.config import ConfigError

    datasets.disable_progress_bars()
    try:
        config = build_config(stage, config_args(config_file, sets, ctx.args, **named))
    except (ConfigError, ValueError) as exc:
        fail(str(exc))
    if not config.data:
        fail("--data is required (or `data:` in --config)")
    for path, option in ((config.data, "--data"), (config.eval_data, "--eval-data")):
        if path and not Path(path).is_file():
            fail(f"{option} {path}: no such file")
    if stage == 2 and config.stage1_output and not Path(config.stage1_output).is_dir():
        fail(f"--stage1 {config.stage1_output}: no such directory (the output directory of `mmrag train stage1`)")
    from ..finetune.train import load_examples, train_stage1, train_stage2
    from ..models.loading import ModelLoadError

    try:  # read and check the data before anything is printed, loaded or written (read again by the run: cheap)
        train, held_out, _ = load_examples(config)
    except (ValueError, FileNotFoundError) as exc:
        fail(" ".join(str(exc).split()))
    lines = [*startup_lines(config), f"data: {len(train)} training and {len(held_out)} held-out questions, all valid"]
    if dry_run:
        for line in [*lines, "dry run: nothing loaded or written; the resolved config follows (pass it back with --config FILE)"]:
            typer.echo(f"# {line}")
        typer.echo(config.to_yaml(), nl=False)
        return
    for line in lines:
        typer.echo(line)

    try:
        result = (train_stage1 if stage == 1 else train_stage2)(config)
    except (ValueError, FileNotFoundError, ModelLoadError) as exc:
        fail(" ".join(str(exc).split()))
    print_summary(result.model_card, result.output_dir)


_HISTORY_COLUMNS = {"p@1": "P@1", "mrr": "MRR", "ndcg@5": "NDCG@5", "recall@5": "R@5", "set_f1": "src F1",
                    "answer_f1": "ans F1", "format_rate": "format"}


def _short(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def print_summary(card, output_dir) -> None:
    """Print the held-out history and the final training metrics of a run from its :class:`~mmrag_agent.model_card.ModelCard`."""
    if card is None:
        return
    training = card.training
    history = training.get("held_out_history", [])
    table = Table(title=f"stage {card.stage} held-out ({training['data']['held_out_queries']} questions)", box=box.SIMPLE_HEAD,
                  padding=(0, 1), title_justify="left")
    metrics = [m for m in _HISTORY_COLUMNS if any(m in h for h in history)]
    for column in ("step", "phase", *(_HISTORY_COLUMNS[m] for m in metrics)):  # short headers: fits 80 columns
        table.add_column(column, justify="right", no_wrap=True)
    for h in history:
        table.add_row(str(h["step"]), h["phase"], *(_short(h.get(m)) for m in metrics))
    if table.rows:
        console.print(table)
    train = training["final_metrics"]["train"]
    warm = training["sft_warm_start"]
    probe = (warm.get("probe") or {}).get("format_rate")
    console.print(f"steps {training['steps']}; last-{train['over_last_steps']}-step means: reward {_fmt(train['reward'])}, "
                  f"format rate {_fmt(train['format_rate'])}, frac_reward_zero_std {_fmt(train['frac_reward_zero_std'])}, "
                  f"{_fmt(train['step_time'])} s/step", highlight=False, soft_wrap=True)
    console.print(f"SFT warm start: {'ran %s steps' % warm.get('steps') if warm.get('ran') else 'skipped'} ({warm.get('mode')}"
                  + (f", probe format rate {probe:.3f}" if isinstance(probe, float) else "") + ")", highlight=False, soft_wrap=True)
    if card.fusion:
        console.print(fusion_line(card.fusion), highlight=False, soft_wrap=True)
    console.print(f"wrote {output_dir} (model_card.json: assistant prefix {card.assistant_prefix!r}, max_new_tokens "
                  f"{card.max_new_tokens}; load with mmrag_agent.models.load_model or Stage1RelevanceFilter(model=...)); "
                  f"curves: {Path(output_dir) / 'training_curves.png'}", highlight=False, markup=False, soft_wrap=True)


def fusion_line(fusion: dict) -> str:
    """One line on the fitted fusion of a stage-1 card: the weight and held-out P@1 of each ranking.

    Example:
        >>> fusion_line({"weight": 0.3, "first_stage": "embedding", "fitted_on": {"questions": 60, "folds": 2},
        ...              "metrics": {"stage1": {"p@1": 0.3}, "first_stage": {"p@1": 0.4}, "fused": {"p@1": 0.45}}})
        'fusion with embedding: weight 0.3 (fitted on 60 held-out questions); held-out P@1 stage 1 0.3000, embedding 0.4000, fused 0.4500 (cross-fitted, 2 folds)'
    """
    metrics = fusion["metrics"]
    if fusion["first_stage"] == "none":
        return f"fusion: none (stage 1 alone, weight 1); held-out P@1 {_fmt(metrics['stage1'].get('p@1'))}"
    fitted = fusion.get("fitted_on") or {}
    return (f"fusion with {fusion['first_stage']}: weight {fusion['weight']:g} (fitted on {fitted.get('questions')} held-out questions); "
            f"held-out P@1 stage 1 {_fmt(metrics['stage1'].get('p@1'))}, {fusion['first_stage']} "
            f"{_fmt(metrics['first_stage'].get('p@1'))}, fused {_fmt(metrics['fused'].get('p@1'))} "
            f"(cross-fitted, {fitted.get('folds')} folds)")


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


@train_app.command("stage1", context_settings=PASS_THROUGH)
def stage1(
    ctx: typer.Context,
    data: Optional[Path] = DataOption,
    model: Optional[str] = typer.Option(None, "--model", help="Base model: hub id, directory, .gguf, adapter directory or 'smollm2' (default)."),
    output: Optional[Path] = OutputOption,
    config: Optional[Path] = ConfigOption,
    max_steps: Optional[int] = MaxStepsOption,
    lora: Optional[bool] = LoraOption,
    eval_data: Optional[Path] = EvalDataOption,
    eval_every: Optional[int] = EvalEveryOption,
    sft: Optional[str] = SftOption,
    sft_steps: Optional[int] = SftStepsOption,
    assistant_prefix: Optional[str] = PrefixOption,
    reasoning: Optional[bool] = typer.Option(None, "--reasoning/--no-reasoning", help="<think> before the yes/no answer."),
    first_stage: Optional[str] = typer.Option(None, "--first-stage", help="Retriever the stage-1 score is fused with in serving: "
                                              "embedding (all-MiniLM-L6-v2, default), bm25 or none. The fusion weight is fitted on "
                                              "the held-out questions (cross-fitted) and written to model_card.json."),
    resume: bool = ResumeOption,
    cpu: bool = CpuOption,
    dry_run: bool = DryRunOption,
    sets: List[str] = SetOption,
) -> None:
    """Stage 1: point-wise yes/no relevance GRPO (format + gated accuracy rewards).

    Any other config field can follow the named options as a TRL option, e.g. --beta 0.0 --lora_target_modules q_proj v_proj.
    """
    _train(1, ctx, config, sets, dry_run, data=_str(data), model_name_or_path=model, output_dir=_str(output), max_steps=max_steps,
           use_peft=lora, eval_data=_str(eval_data), eval_every=eval_every, sft_warm_start=sft, sft_max_steps=sft_steps,
           assistant_prefix=assistant_prefix, reasoning=reasoning, first_stage=first_stage,
           resume_from_checkpoint="last" if resume else None, use_cpu=cpu or None)


@train_app.command("stage2", context_settings=PASS_THROUGH)
def stage2(
    ctx: typer.Context,
    data: Optional[Path] = DataOption,
    stage1_output: Optional[Path] = typer.Option(None, "--stage1", file_okay=False, help="Stage-1 output directory to start from (default start)."),
    model: Optional[str] = typer.Option(None, "--model", help="Base model (used with --init-from base, or without --stage1)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="stage1 (default) or base."),
    output: Optional[Path] = OutputOption,
    config: Optional[Path] = ConfigOption,
    max_steps: Optional[int] = MaxStepsOption,
    lora: Optional[bool] = LoraOption,
    eval_data: Optional[Path] = EvalDataOption,
    eval_every: Optional[int] = EvalEveryOption,
    sft: Optional[str] = SftOption,
    sft_steps: Optional[int] = SftStepsOption,
    assistant_prefix: Optional[str] = PrefixOption,
    k: Optional[int] = typer.Option(None, "-k", "--k", min=1, help="Candidates per prompt (default 5)."),
    resume: bool = ResumeOption,
    cpu: bool = CpuOption,
    dry_run: bool = DryRunOption,
    sets: List[str] = SetOption,
) -> None:
    """Stage 2: list-wise <think>/<rank>/<answer> GRPO (format, rank quality, answer accuracy).

    Any other config field can follow the named options as a TRL option, e.g. --permutations 2 --beta 0.0.
    """
    _train(2, ctx, config, sets, dry_run, data=_str(data), stage1_output=_str(stage1_output), model_name_or_path=model,
           init_from=init_from, output_dir=_str(output), max_steps=max_steps, use_peft=lora, eval_data=_str(eval_data),
           eval_every=eval_every, sft_warm_start=sft, sft_max_steps=sft_steps, assistant_prefix=assistant_prefix, k=k,
           resume_from_checkpoint="last" if resume else None, use_cpu=cpu or None)


@train_app.command("defaults")
def defaults(stage: Optional[int] = typer.Argument(None, min=1, max=2, help="1 or 2 (both when left out).")) -> None:
    """Print the stage fields with their defaults and help as YAML (save one stage's, edit it, pass it with --config)."""
    for number in (stage,) if stage else (1, 2):
        if not stage:
            typer.echo(f"# ==== stage {number}: mmrag train defaults {number} > stage{number}.yaml")
        _print_defaults(number)
        if not stage and number == 1:
            typer.echo("")


def _print_defaults(stage: int) -> None:
    from dataclasses import fields

    import yaml

    from ..finetune.config import Stage1Config, Stage2Config, stage_fields

    cls = Stage1Config if stage == 1 else Stage2Config
    names = set(stage_fields(cls)) | {"num_generations", "temperature", "per_device_train_batch_size", "max_steps", "save_steps",
                                      "gradient_checkpointing", "seed"}
    for f in fields(cls):
        if f.name not in names:
            continue
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        help_text = " ".join(str(f.metadata.get("help", "")).replace("%%", "%").split())
        typer.echo(f"# {help_text}" if help_text else "#")
        typer.echo(yaml.safe_dump({f.name: default}, default_flow_style=True, width=10_000).strip()[1:-1])


def _str(path) -> Optional[str]:
    return None if path is None else str(path)


if __name__ == "__main__":  # `accelerate launch -m mmrag_agent.cli.train stage1 ...` (docs/scale_out.md)
    train_app()
