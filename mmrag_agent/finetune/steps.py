"""The steps both training stages share, after :mod:`.train` has built a :class:`StageRun`: the format probe and the
SFT warm start, GRPO on TRL's ``GRPOTrainer`` with periodic held-out evaluation, and the output directory (model,
original processor, logs, curves, and the :class:`~mmrag_agent.model_card.ModelCard` serving reads).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..model_card import ModelCard, write_model_card
from ..prompts import PROMPT_VERSION
from .callbacks import (
    HeldOutEvalCallback, ProgressBarCallback, append_held_out, load_held_out_history, plot_curves, train_summary,
)
from .config import StageConfig
from .datasets import to_dataset
from .policy import SaveOriginalProcessor, StartModel, lora_config, save_warm_start, training_processor
from .sft import format_probe, sft_dataset, sft_warm_start

__all__ = ["StageRun", "TrainResult", "resolve_output", "run_stage", "serving_card"]

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        output_dir: The output directory (loadable with ``load_model``).
        model_card: The :class:`~mmrag_agent.model_card.ModelCard` written to ``model_card.json`` (None on the
            processes other than rank 0).
        log_history: TRL's logs, one dict per logged step (``reward``, ``frac_reward_zero_std``, ...).
        held_out: Held-out evaluations ``{"step", "phase", "p@1", ...}``; phases ``initial`` (before any
            training), ``sft`` (after the warm start), ``grpo`` (every ``eval_every`` steps), ``final``.
        trainer: The ``GRPOTrainer`` (its model is the trained policy).
    """

    output_dir: Path
    model_card: ModelCard | None
    log_history: list[dict]
    held_out: list[dict]
    trainer: Any = field(default=None, repr=False)


@dataclass
class StageRun:
    """One stage's run as the shared steps need it: built by :func:`~.train.train_stage1` / :func:`~.train.train_stage2`.

    Attributes:
        config: The stage config.
        out: The output directory (created when the shared steps start, after the data was read).
        resume: The checkpoint being resumed, or None.
        start: The policy training starts from.
        records: Training records (TRL's conversational format).
        targets: The gold-formatted completion of each record after the assistant prefix (the SFT warm start
            trains on prefix + target).
        reward_funcs: The reward functions handed to ``GRPOTrainer``.
        reward_weights: Their weights (None: ``config.reward_weights`` or 1.0 each).
        format_reward: The stage's format reward (the format probe's measure).
        evaluate: ``evaluate(model) -> metrics`` on the held-out questions.
        held_out: The held-out examples.
        data_info: Data files, split and counts (for the model card).
        callbacks: More trainer callbacks.
        warm_start: A warm start replacing TRL's ``SFTTrainer`` on ``records`` + ``targets``:
            ``warm_start(model, peft_config, output_dir) -> (model, log_history)`` (stage 1: shared prefixes).
        select_records: Chooses GRPO's records with the warm-started policy: ``select_records(loaded) -> (records,
            info)`` (stage 1: dynamic sampling); None: GRPO takes ``records``.
        finish_card: Completes the model card before it is written: ``finish_card(card, trainer)`` (stage 1: the
            fitted fusion).
    """

    config: StageConfig
    out: Path
    resume: str | None
    start: StartModel
    records: list[dict]
    targets: list[str]
    reward_funcs: list[Callable]
    reward_weights: list[float] | None
    format_reward: Callable[..., list[float]]
    evaluate: Callable[[Any], dict]
    held_out: list
    data_info: dict
    callbacks: list = field(default_factory=list)
    warm_start: Callable[..., tuple[Any, list[dict]]] | None = None
    select_records: Callable[[Any], tuple[list[dict], dict]] | None = None
    finish_card: Callable[[ModelCard, Any], None] | None = None


def run_stage(run: StageRun) -> TrainResult:
    """Probe → SFT warm start → GRPO → output directory (shared by both stages)."""
    from accelerate import PartialState

    config, out = run.config, run.out
    out.mkdir(parents=True, exist_ok=True)
    logger.debug(config.warm_start_plan())
    evaluating = config.eval_every > 0 and bool(run.held_out) and PartialState().is_main_process  # rank 0 evaluates
    history = load_held_out_history(out, run.resume)
    if evaluating and not run.resume:
        append_held_out(history, out / "held_out.jsonl", 0, "initial", run.evaluate(run.start.loaded.model))
    run.data_info.setdefault("train_records", len(run.records))
    warm, peft_config = _warm_start(run, history, evaluating)
    prompts: dict[str, Any] = {"records": len(run.records), "selection": None}
    if run.select_records is not None and not run.resume:
        began = time.perf_counter()
        run.records, info = run.select_records(run.start.loaded)
        prompts.update(records=len(run.records), selection={**info, "seconds": round(time.perf_counter() - began, 2)})
        logger.info("GRPO prompts: %d of a pool of %d, predicted zero-variance groups %.3f (pool %.3f)", info["kept"], info["pool"],
                    info["predicted_zero_std_kept"], info["predicted_zero_std_pool"])
    began = time.perf_counter()
    trainer = _grpo(run, history, evaluating, peft_config)
    prompts["seconds"] = round(time.perf_counter() - began, 2)
    card = _finish(run, trainer, warm, history, prompts)
    return TrainResult(out, card, list(trainer.state.log_history), history, trainer)


def _warm_start(run: StageRun, history: list[dict], evaluating: bool) -> tuple[dict, Any]:
    """Run the SFT warm start when asked, or (auto) when the probe's format rate is below the threshold.

    Returns:
        ``(warm_start record, peft_config for GRPO)``; ``run.start`` becomes the warm-started policy when it ran.
    """
    from accelerate import PartialState
    from peft import PeftModel

    config, out = run.config, run.out
    peft_config = lora_config(config, run.start.loaded) if not isinstance(run.start.loaded.model, PeftModel) else None
    warm: dict[str, Any] = {"mode": config.sft_warm_start, "ran": False}
    if run.resume:  # a resumed run already warm-started (or did not): never again
        saved = out / "sft" / "warm_start.json"
        return (json.loads(saved.read_text()) if saved.is_file() else warm), peft_config
    if config.sft_warm_start == "auto":
        warm["probe"] = format_probe(run.start.loaded, run.records, run.format_reward, config.format_probe_prompts,
                                     config.format_probe_generations, config.max_completion_length, config.temperature,
                                     config.assistant_prefix, config.seed, config.eval_batch_size, progress=config.progress_bar)
    runs = config.sft_warm_start == "on" or (config.sft_warm_start == "auto" and warm["probe"]["format_rate"] < config.format_probe_threshold)
    if "probe" in warm:
        logger.info("format probe: %.3f of %d sampled completions in format (threshold %g): %s", warm["probe"]["format_rate"],
                    warm["probe"]["n"], config.format_probe_threshold,
                    "SFT warm start" if runs else "no warm start needed")
    if not runs:
        return warm, peft_config
    began = time.perf_counter()
    if run.warm_start is not None:
        model, sft_logs = run.warm_start(run.start.loaded.model, peft_config, str(out / "sft-run"))
        warm["trainer"] = "shared-prefix"
    else:
        dataset = sft_dataset(run.records, run.targets, prefix=config.assistant_prefix)  # completions: prefix + target
        model, sft_logs = sft_warm_start(run.start.loaded.model, run.start.loaded.processor, dataset, config, peft_config,
                                         output_dir=str(out / "sft-run"))
        warm.update(trainer="trl.SFTTrainer", sequences_per_epoch=len(dataset))
    run.start = save_warm_start(config, out, run.start, model)
    shutil.rmtree(out / "sft-run", ignore_errors=True)
    end = next((h for h in reversed(sft_logs) if "train_runtime" in h), {})
    warm.update(ran=True, steps=max((int(h.get("step", 0)) for h in sft_logs), default=0), epochs=end.get("epoch"),
                learning_rate=config.sft_learning_rate, seconds=round(time.perf_counter() - began, 2),
                loss=[h["loss"] for h in sft_logs if "loss" in h])
    if PartialState().is_main_process:
        (out / "sft" / "warm_start.json").write_text(json.dumps(warm, indent=2, default=str))
    if evaluating:
        append_held_out(history, out / "held_out.jsonl", 0, "sft", run.evaluate(run.start.loaded.model))
    return warm, None  # the adapter exists now: GRPO continues it (TRL keeps a frozen copy as reference)


def _grpo(run: StageRun, history: list[dict], evaluating: bool, peft_config):
    """GRPO: TRL samples ``num_generations`` completions per prompt, scores them, and logs ``frac_reward_zero_std``."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOTrainer

    config = run.config
    eval_callback = HeldOutEvalCallback(run.evaluate, config.eval_every if evaluating else 0, history, run.out / "held_out.jsonl")
    trainer = GRPOTrainer(model=run.start.loaded.model, reward_funcs=run.reward_funcs,
                          args=_grpo_args(config, run.reward_funcs, run.reward_weights), train_dataset=to_dataset(run.records),
                          processing_class=training_processor(run.start.loaded.processor, config.assistant_prefix),
                          peft_config=peft_config, callbacks=[eval_callback, *run.callbacks])
    trainer.add_callback(SaveOriginalProcessor(run.start.loaded.processor))
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if config.progress_bar:
        trainer.add_callback(ProgressBarCallback(history, desc=f"stage {config.stage} GRPO"))
    trainer.train(resume_from_checkpoint=run.resume)
    return trainer


def resolve_output(config: StageConfig) -> tuple[Path, str | None]:
    """The output directory (not created here) and the checkpoint to resume from."""
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(config.output_dir)
    resume = config.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("last", "auto", "true", "1"):
        resume = get_last_checkpoint(str(out)) if out.is_dir() else None
        if resume is None:
            logger.info("no checkpoint in %s: starting from scratch", out)
    return out, resume


def _grpo_args(config: StageConfig, funcs: list, weights: list[float] | None) -> StageConfig:
    """The config handed to GRPOTrainer: reward weights filled in, extra reward callables replaced by their names."""
    args = copy.copy(config)
    if config.reward_weights is None and weights is not None:
        args.reward_weights = list(weights)
    if args.reward_weights is not None and len(args.reward_weights) != len(funcs):
        raise ValueError(f"{len(args.reward_weights)} reward weights for {len(funcs)} reward functions")
    if args.extra_reward_funcs:
        args.extra_reward_funcs = [f if isinstance(f, str) else _callable_name(f) for f in args.extra_reward_funcs]
    args.resume_from_checkpoint = None  # resolved already and passed to train()
    return args


def _finish(run: StageRun, trainer, warm: dict, history: list[dict], prompts: dict | None = None) -> ModelCard | None:
    """Save the model and the original processor; write logs, curves and ``model_card.json`` (rank 0)."""
    from trl.trainer.utils import get_callable_name

    config, out, start = run.config, run.out, run.start
    trainer.save_model(str(out))
    if not trainer.is_world_process_zero():
        return None
    start.loaded.processor.save_pretrained(out)  # the original template, not the training copy with the prefix
    shutil.rmtree(out / "ref", ignore_errors=True)  # TRL's frozen reference adapter: not part of the output
    logs = list(trainer.state.log_history)
    (out / "log_history.json").write_text(json.dumps(logs, indent=1, default=str))
    if config.curves:
        plot_curves(logs, history, out / "training_curves.png", title=f"stage {config.stage} GRPO: {Path(config.output_dir).name}")
    weights = list(trainer.args.reward_weights or [1.0] * len(run.reward_funcs))
    held_out = _strip(history[-1]) if history else None
    card = serving_card(config, start)
    card.metrics = held_out or {}
    card.training = {"init_from": start.init_from, "data": {"train_records": len(run.records), **run.data_info},
                     "rewards": [{"name": get_callable_name(f), "weight": w} for f, w in zip(run.reward_funcs, weights)],
                     "steps": trainer.state.global_step, "sft_warm_start": warm, "grpo_prompts": prompts or {},
                     "final_metrics": {"train": train_summary(logs), "held_out": held_out},
                     "held_out_history": history, "config": config.stage_summary()}
    if run.finish_card is not None:
        run.finish_card(card, trainer)
    write_model_card(out, card)
    return card


def serving_card(config: StageConfig, start: StartModel) -> ModelCard:
    """The model card of a run: the prompt settings serving must reproduce (the held-out evaluation uses them too)."""
    return ModelCard(stage=config.stage, prompt_version=PROMPT_VERSION, assistant_prefix=config.assistant_prefix,
                     reasoning=bool(getattr(config, "reasoning", False)), max_text_tokens=config.max_text_tokens,
                     candidates_per_prompt=getattr(config, "k", None), max_new_tokens=config.max_completion_length,
                     base_model=start.base_model, kind=start.kind)


def _callable_name(func: Callable) -> str:
    while isinstance(func, functools.partial):
        func = func.func
    return f"{getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', type(func).__name__)}"


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("phase",)}
