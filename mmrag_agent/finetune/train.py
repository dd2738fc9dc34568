"""GRPO training of the two stages (SPEC §3–4) on TRL's ``GRPOTrainer``: :func:`train_stage1`, :func:`train_stage2`.

Each entry point reads top to bottom: data → starting model → rewards → (probe + SFT warm start) → GRPO with
periodic held-out evaluation → output directory. The output directory then holds

* the LoRA adapter (``adapter_config.json`` + weights, on the base named inside) or the full model,
* the tokenizer / processor (the original one: the training copy's pre-filled chat template is not saved),
* ``model_card.json`` (base model, data, rewards, steps, final metrics, held-out history, config),
* ``log_history.json`` (TRL's per-step logs, ``frac_reward_zero_std`` included), ``held_out.jsonl``,
  ``training_curves.png``, ``checkpoint-N/`` (``save_steps``; ``resume_from_checkpoint="last"`` resumes),
  and ``sft/`` (the warm-started model, when the warm start ran; loadable on its own),

and loads directly with ``mmrag_agent.models.load_model(output_dir)`` and
``Stage1RelevanceFilter(model=output_dir)``.

Example:
    >>> result = train_stage1(Stage1Config(data="train.jsonl", model="smollm2", output_dir="runs/s1", max_steps=300))
    >>> result.model_card["final_metrics"]["held_out"]["p@1"]
    >>> result2 = train_stage2(Stage2Config(data="train.jsonl", stage1_output="runs/s1", output_dir="runs/s2", max_steps=300))
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..model_card import ModelCard, write_model_card
from ..models.loading import LoadedModel
from ..schema import read_rerank_examples
from .callbacks import HeldOutEvalCallback, ProgressBarCallback, format_rate_key, plot_curves
from .config import Stage1Config, Stage2Config, StageConfig
from .datasets import split_by_question, stage1_records, stage2_records, to_dataset
from .evaluation import evaluate_stage1, evaluate_stage2
from .policy import (
    SaveOriginalProcessor, StartModel, as_loaded, load_start_model, lora_config, save_warm_start, stage2_start,
    training_processor,
)
from .rewards import (
    stage1_accuracy_reward, stage1_format_reward, stage2_answer_reward, stage2_format_reward, stage2_rank_reward,
)
from .sft import format_probe, sft_dataset, sft_warm_start, stage1_target, stage2_target

__all__ = ["TrainResult", "stage1_rewards", "stage2_rewards", "train_stage1", "train_stage2"]

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        output_dir: The output directory (loadable with ``load_model``).
        model_card: The contents of ``model_card.json``.
        log_history: TRL's logs, one dict per logged step (``reward``, ``frac_reward_zero_std``, ...).
        held_out: Held-out evaluations ``{"step", "phase", "p@1", ...}``; phases ``initial`` (before any
            training), ``sft`` (after the warm start), ``grpo`` (every ``eval_every`` steps), ``final``.
        trainer: The ``GRPOTrainer`` (its model is the trained policy).
    """

    output_dir: Path
    model_card: dict
    log_history: list[dict]
    held_out: list[dict]
    trainer: Any = field(default=None, repr=False)


def stage1_rewards(config: Stage1Config) -> tuple[list[Callable], list[float]]:
    """Stage-1 reward functions and weights: ``[format, gated accuracy] + extras``, ``[format_weight, accuracy_weight] + ...``."""
    bind = dict(reasoning=config.reasoning, prefix=config.assistant_prefix)
    funcs = [functools.partial(stage1_format_reward, **bind), functools.partial(stage1_accuracy_reward, **bind)]
    extra, extra_weights = _extra_rewards(config)
    return funcs + extra, [config.format_weight, config.accuracy_weight] + extra_weights


def stage2_rewards(config: Stage2Config) -> tuple[list[Callable], list[float]]:
    """Stage-2 reward functions and weights: ``[format, rank quality, answer accuracy] + extras`` (SPEC §4)."""
    prefix = config.assistant_prefix
    funcs = [functools.partial(stage2_format_reward, prefix=prefix), functools.partial(stage2_rank_reward, prefix=prefix),
             functools.partial(stage2_answer_reward, prefix=prefix, answers_are_list=config.answers_are_list)]
    extra, extra_weights = _extra_rewards(config)
    return funcs + extra, [config.format_weight, config.rank_weight, config.answer_weight] + extra_weights


def train_stage1(config: Stage1Config, reward_funcs: Sequence[Callable] | None = None, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Stage-1 GRPO: point-wise yes/no relevance with format + gated accuracy rewards (SPEC §3).

    Args:
        config: The run (data, model, output_dir, LoRA / full, GRPO settings ...).
        reward_funcs: Replace the reward functions (TRL signature); weighted by ``config.reward_weights``
            (default 1.0 each). Default: :func:`stage1_rewards`.
        callbacks: More ``transformers.TrainerCallback`` objects for the GRPO trainer.

    Returns:
        A :class:`TrainResult`; the output directory is ``config.output_dir``.
    """
    out, resume = _prepare_output(config)

    # 1. Data: a train / held-out split by question; balanced (query, candidate, yes|no) units with hard negatives
    train_examples, held_out, data_info = _load_examples(config)
    start = load_start_model(config, config.model, out, resume)
    with_images = _with_images(config, start.loaded)
    records = _images_as_lists(stage1_records(
        train_examples, config.negatives_per_positive, config.seed, with_images, config.reasoning, data_file=config.data,
        tokenizer=start.loaded.tokenizer, max_text_tokens=config.max_text_tokens))
    dataset = to_dataset(records)

    # 2. Rewards: format and format-gated accuracy, weighted by TRL (each logged as rewards/<name>/mean)
    funcs, weights = stage1_rewards(config) if reward_funcs is None else (list(reward_funcs), config.reward_weights)
    format_reward = functools.partial(stage1_format_reward, reasoning=config.reasoning, prefix=config.assistant_prefix)

    # 3. Held-out evaluation: stage-1 P(relevant) ranking of each held-out query's candidates (P@1, MRR, ...)
    eval_file = config.eval_data or config.data

    card = serving_card(config, start)

    @_timed
    def evaluate(model) -> dict:
        return evaluate_stage1(as_loaded(model, start.loaded), held_out, card, config.eval_batch_size, eval_file, with_images)

    # 4. Format probe and SFT warm start on gold-formatted targets, then GRPO
    targets = [stage1_target(r, config.reasoning, config.assistant_prefix) for r in records]
    return _run(config, out, resume, start, dataset, records, targets, funcs, weights, format_reward, evaluate, held_out,
                data_info, list(callbacks))


def train_stage2(config: Stage2Config, reward_funcs: Sequence[Callable] | None = None, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Stage-2 GRPO: list-wise ``<think>`` / ``<rank>`` / ``<answer>`` over K shuffled candidates (SPEC §4).

    Starts from ``config.stage1_output`` (default) or the base model (``init_from="base"``).

    Args:
        config: The run.
        reward_funcs: Replace the reward functions (weighted by ``config.reward_weights``). Default:
            :func:`stage2_rewards`.
        callbacks: More trainer callbacks.

    Returns:
        A :class:`TrainResult`.
    """
    out, resume = _prepare_output(config)

    # 1. Data: K candidates per question (positives that fit + hard negatives) in several shuffled orders
    train_examples, held_out, data_info = _load_examples(config)
    start = load_start_model(config, stage2_start(config), out, resume)
    with_images = _with_images(config, start.loaded)
    records = stage2_records(train_examples, config.k, config.permutations, config.seed, with_images, data_file=config.data,
                             tokenizer=start.loaded.tokenizer, max_text_tokens=config.max_text_tokens)
    dataset = to_dataset(records)

    # 2. Rewards: format, format-gated rank quality (NDCG + set F1) and answer accuracy
    funcs, weights = stage2_rewards(config) if reward_funcs is None else (list(reward_funcs), config.reward_weights)
    format_reward = functools.partial(stage2_format_reward, prefix=config.assistant_prefix)

    # 3. Held-out evaluation: greedy completions parsed; rank metrics of the model's ranking, answer F1
    eval_file = config.eval_data or config.data

    card = serving_card(config, start)

    @_timed
    def evaluate(model) -> dict:
        return evaluate_stage2(as_loaded(model, start.loaded), held_out, card, config.split_seed, eval_file, config.eval_batch_size)

    # 4. Format probe and SFT warm start, then GRPO
    targets = [stage2_target(r, config.assistant_prefix) for r in records]
    return _run(config, out, resume, start, dataset, records, targets, funcs, weights, format_reward, evaluate, held_out,
                data_info, list(callbacks))


# ------------------------------------------------------------------------------------------------ shared steps
def _run(config: StageConfig, out: Path, resume: str | None, start: StartModel, dataset, records, targets, funcs, weights,
         format_reward, evaluate, held_out, data_info: dict, callbacks: list) -> TrainResult:
    """Probe → SFT warm start → GRPO → output directory (shared by both stages)."""
    from accelerate import PartialState
    from peft import PeftModel
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOTrainer

    evaluating = config.eval_every > 0 and bool(held_out) and PartialState().is_main_process  # rank 0 evaluates
    history = _held_out_history(out, resume)
    peft_config = lora_config(config, start.loaded) if config.use_lora and not isinstance(start.loaded.model, PeftModel) else None

    # Warm start: run when asked, or (auto) when the probe's format rate is below the threshold
    warm: dict[str, Any] = {"mode": config.sft_warm_start, "ran": False}
    if resume and (out / "sft" / "warm_start.json").is_file():
        warm = json.loads((out / "sft" / "warm_start.json").read_text())  # the resumed run already warm-started
    elif not resume:
        if evaluating:
            _record(history, out, 0, "initial", evaluate(start.loaded.model))
        if config.sft_warm_start == "auto":
            warm["probe"] = format_probe(start.loaded, records, format_reward, config.format_probe_prompts,
                                         config.format_probe_generations, config.max_completion_length, config.temperature,
                                         config.assistant_prefix, config.seed, config.eval_batch_size)
            logger.info("format probe: %.3f of %d sampled completions in format", warm["probe"]["format_rate"], warm["probe"]["n"])
        if config.sft_warm_start == "on" or (config.sft_warm_start == "auto" and warm["probe"]["format_rate"] < config.format_probe_threshold):
            began = time.perf_counter()
            model, sft_logs = sft_warm_start(start.loaded.model, start.loaded.processor, sft_dataset(records, targets), config,
                                             peft_config, output_dir=str(out / "sft-run"))
            start = save_warm_start(config, out, start, model)
            shutil.rmtree(out / "sft-run", ignore_errors=True)
            peft_config = None  # the adapter exists now: GRPO continues it (TRL keeps a frozen copy as reference)
            warm.update(ran=True, steps=config.sft_max_steps, learning_rate=config.sft_learning_rate,
                        seconds=round(time.perf_counter() - began, 2),
                        loss=[h["loss"] for h in sft_logs if "loss" in h])
            if PartialState().is_main_process:
                (out / "sft" / "warm_start.json").write_text(json.dumps(warm, indent=2, default=str))
            if evaluating:
                _record(history, out, 0, "sft", evaluate(start.loaded.model))

    # GRPO: TRL samples num_generations completions per prompt, scores them, and logs frac_reward_zero_std
    args = _grpo_args(config, funcs, weights)
    eval_callback = HeldOutEvalCallback(evaluate, config.eval_every if evaluating else 0, history, out / "held_out.jsonl")
    trainer = GRPOTrainer(model=start.loaded.model, reward_funcs=funcs, args=args, train_dataset=dataset,
                          processing_class=training_processor(start.loaded.processor, config.assistant_prefix),
                          peft_config=peft_config, callbacks=[eval_callback, *callbacks])
    trainer.add_callback(SaveOriginalProcessor(start.loaded.processor))
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if config.progress_bar:
        trainer.add_callback(ProgressBarCallback(history, desc=f"stage {config.stage} GRPO"))
    trainer.train(resume_from_checkpoint=resume)

    # Output: adapter or full model, the original processor, model card, logs, curves
    card = _finish(config, out, trainer, start, funcs, warm, history, data_info, len(dataset))
    return TrainResult(out, card, list(trainer.state.log_history), history, trainer)


def _prepare_output(config: StageConfig) -> tuple[Path, str | None]:
    from transformers.trainer_utils import get_last_checkpoint

    if not config.data:
        raise ValueError("config.data is required: the training rerank examples (JSONL)")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resume = config.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("last", "auto", "true", "1"):
        resume = get_last_checkpoint(str(out))
        if resume is None:
            logger.info("no checkpoint in %s: starting from scratch", out)
    return out, resume


def _load_examples(config: StageConfig) -> tuple[list, list, dict]:
    examples = read_rerank_examples(config.data)
    if config.eval_data:
        train, held_out = examples, read_rerank_examples(config.eval_data)
    else:
        train, held_out = split_by_question(examples, config.held_out_fraction, config.split_seed)
    train = train[: config.max_train_queries] if config.max_train_queries else train
    held_out = held_out[: config.max_eval_queries] if config.max_eval_queries else held_out
    info = {"train": str(config.data), "eval": str(config.eval_data or config.data), "split_seed": config.split_seed,
            "held_out_fraction": None if config.eval_data else config.held_out_fraction,
            "train_queries": len(train), "held_out_queries": len(held_out)}
    return train, held_out, info


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


def _finish(config, out: Path, trainer, start: StartModel, funcs, warm, history, data_info, n_records) -> dict:
    """Save the model and the original processor; write logs, curves and ``model_card.json`` (rank 0)."""
    from trl.trainer.utils import get_callable_name

    trainer.save_model(str(out))
    if not trainer.is_world_process_zero():
        return {}
    start.loaded.processor.save_pretrained(out)  # the original template, not the training copy with the prefix
    shutil.rmtree(out / "ref", ignore_errors=True)  # TRL's frozen reference adapter: not part of the output
    logs = list(trainer.state.log_history)
    (out / "log_history.json").write_text(json.dumps(logs, indent=1, default=str))
    if config.curves:
        plot_curves(logs, history, out / "training_curves.png", title=f"stage {config.stage} GRPO: {Path(config.output_dir).name}")
    weights = list(trainer.args.reward_weights or [1.0] * len(funcs))
    card = serving_card(config, start)
    card.metrics = _strip(history[-1]) if history else {}
    card.training = {
        "init_from": start.init_from, "data": {**data_info, "train_records": n_records},
        "rewards": [{"name": get_callable_name(f), "weight": w} for f, w in zip(funcs, weights)],
        "steps": trainer.state.global_step, "sft_warm_start": warm,
        "final_metrics": {"train": _train_summary(logs), "held_out": card.metrics or None},
        "held_out_history": history, "config": config.stage_summary(),
    }
    write_model_card(out, card)
    return card.to_dict()


def serving_card(config: StageConfig, start: StartModel) -> ModelCard:
    """The model card of this run: the prompt settings serving must reproduce (written with the model)."""
    return ModelCard(stage=config.stage, assistant_prefix=config.assistant_prefix, reasoning=bool(getattr(config, "reasoning", False)),
                     max_text_tokens=config.max_text_tokens, candidates_per_prompt=getattr(config, "k", None),
                     max_new_tokens=config.max_completion_length, base_model=start.base_model, kind=start.kind)


# ------------------------------------------------------------------------------------------------ small helpers
def _with_images(config: StageConfig, loaded: LoadedModel) -> bool:
    return loaded.is_vision if config.with_images is None else bool(config.with_images and loaded.is_vision)


def _images_as_lists(records: list[dict]) -> list[dict]:
    """Stage-1 records with ``"image"`` become ``"images": [path]`` / ``[]``: TRL then takes batches that mix image
    and text candidates (a None image in a batch with images fails in the processor)."""
    if not any("image" in r for r in records):
        return records
    return [{**{k: v for k, v in r.items() if k != "image"}, "images": [r["image"]] if r.get("image") else []} for r in records]


def _extra_rewards(config: StageConfig) -> tuple[list[Callable], list[float]]:
    funcs = [_import_callable(f) if isinstance(f, str) else f for f in config.extra_reward_funcs or []]
    return funcs, list(config.extra_reward_weights or [1.0] * len(funcs))


def _import_callable(path: str) -> Callable:
    module, _, name = path.partition(":")
    if not name:
        raise ValueError(f"reward function {path!r}: write it as 'package.module:function'")
    return getattr(importlib.import_module(module), name)


def _callable_name(func: Callable) -> str:
    while isinstance(func, functools.partial):
        func = func.func
    return f"{getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', type(func).__name__)}"


def _held_out_history(out: Path, resume: str | None) -> list[dict]:
    path = out / "held_out.jsonl"
    if resume and path.is_file():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.unlink(missing_ok=True)
    return []


def _record(history: list[dict], out: Path, step: int, phase: str, metrics: dict) -> None:
    record = {"step": step, "phase": phase, **metrics}
    history.append(record)
    with (out / "held_out.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _timed(evaluate: Callable[[Any], dict]) -> Callable[[Any], dict]:
    """Add ``eval_seconds`` (wall clock of the evaluation) to the metrics."""
    @functools.wraps(evaluate)
    def timed(model) -> dict:
        began = time.perf_counter()
        metrics = evaluate(model)
        return {**metrics, "eval_seconds": round(time.perf_counter() - began, 2)}
    return timed


def _train_summary(logs: list[dict], last: int = 10) -> dict:
    """Means over the last ``last`` logged steps of reward, format rate, frac_reward_zero_std; total runtime."""
    steps = [h for h in logs if "reward" in h][-last:]
    key = next((format_rate_key(h) for h in steps if format_rate_key(h)), None)

    def mean(name):
        values = [h[name] for h in steps if name and isinstance(h.get(name), (int, float))]
        return sum(values) / len(values) if values else None

    end = next((h for h in reversed(logs) if "train_runtime" in h), {})
    return {"reward": mean("reward"), "format_rate": mean(key), "frac_reward_zero_std": mean("frac_reward_zero_std"),
            "step_time": mean("step_time"), "over_last_steps": len(steps), "train_runtime": end.get("train_runtime")}


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("phase",)}
