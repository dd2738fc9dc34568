"""GRPO training of the two stages (SPEC §3–4) on TRL's ``GRPOTrainer``: :func:`train_stage1`, :func:`train_stage2`.

Each entry point reads top to bottom: data (read and checked before anything is written) → starting model →
training records → rewards → held-out evaluation, gathered in a :class:`StageRun`; the shared steps then run
the format probe and the SFT warm start, GRPO with periodic held-out evaluation, and write the output
directory. It then holds

* the LoRA adapter (``adapter_config.json`` + weights, on the base named inside) or the full model,
* the tokenizer / processor (the original one: the training copy's pre-filled chat template is not saved),
* ``model_card.json``: the :class:`~mmrag_agent.model_card.ModelCard` serving reads (stage, prompt version,
  assistant prefix, reasoning mode, text budget, K, completion budget, base model, final held-out metrics) and,
  under ``training``, the data, rewards, steps, warm start, held-out history and config,
* ``log_history.json`` (TRL's per-step logs, ``frac_reward_zero_std`` included), ``held_out.jsonl``,
  ``training_curves.png``, ``checkpoint-N/`` (``save_steps``; ``resume_from_checkpoint="last"`` resumes),
  and ``sft/`` (the warm-started model, when the warm start ran; loadable on its own),

and loads directly with ``mmrag_agent.models.load_model(output_dir)`` and
``Stage1RelevanceFilter(model=output_dir)``.

Example:
    >>> result = train_stage1(Stage1Config(data="train.jsonl", model_name_or_path="smollm2", output_dir="runs/s1", max_steps=300))
    >>> result.model_card.metrics["p@1"]
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
from ..prompts import PROMPT_VERSION
from ..schema import DatasetError, read_rerank_examples
from .callbacks import (
    HeldOutEvalCallback, ProgressBarCallback, append_held_out, evaluate_in_chunks, load_held_out_history, plot_curves, train_summary,
)
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

__all__ = ["StageRun", "TrainResult", "load_examples", "stage1_rewards", "stage2_rewards", "train_stage1", "train_stage2"]

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
    """One stage's run as the shared steps need it: built by :func:`train_stage1` / :func:`train_stage2`.

    Attributes:
        config: The stage config.
        out: The output directory (created when the shared steps start, after the data was read).
        resume: The checkpoint being resumed, or None.
        start: The policy training starts from.
        records: Training records (TRL's conversational format).
        targets: The gold-formatted completion of each record (the SFT warm start's targets).
        reward_funcs: The reward functions handed to ``GRPOTrainer``.
        reward_weights: Their weights (None: ``config.reward_weights`` or 1.0 each).
        format_reward: The stage's format reward (the format probe's measure).
        evaluate: ``evaluate(model) -> metrics`` on the held-out questions.
        held_out: The held-out examples.
        data_info: Data files, split and counts (for the model card).
        callbacks: More trainer callbacks.
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

    Raises:
        mmrag_agent.schema.DatasetError: A data file is not valid (nothing has been written then).
        FileNotFoundError: A data file does not exist.
    """
    # 1. Data, read and checked before anything is written: a train / held-out split by question
    train_examples, held_out, data_info = load_examples(config)
    out, resume = _output_dir(config)

    # 2. Starting model; balanced (query, candidate, yes|no) units with hard negatives
    start = load_start_model(config, config.model_name_or_path, out, resume)
    with_images = _with_images(config, start.loaded)
    records = _images_as_lists(stage1_records(
        train_examples, config.negatives_per_positive, config.seed, with_images, config.reasoning, data_file=config.data,
        tokenizer=start.loaded.tokenizer, max_text_tokens=config.max_text_tokens))

    # 3. Rewards: format and format-gated accuracy, weighted by TRL (each logged as rewards/<name>/mean)
    funcs, weights = stage1_rewards(config) if reward_funcs is None else (list(reward_funcs), config.reward_weights)

    # 4. Held-out evaluation: stage-1 P(relevant) ranking of each held-out query's candidates (P@1, MRR, ...)
    eval_file = config.eval_data or config.data

    @_timed
    def evaluate(model) -> dict:
        loaded = as_loaded(model, start.loaded)
        return evaluate_in_chunks(
            lambda chunk: evaluate_stage1(loaded, chunk, config.eval_batch_size, eval_file, with_images, config.max_text_tokens),
            held_out, chunk_size=1, desc="held-out evaluation", progress=config.progress_bar)

    # 5. Format probe and SFT warm start on gold-formatted targets, GRPO, output directory
    return _run(StageRun(
        config=config, out=out, resume=resume, start=start, records=records,
        targets=[stage1_target(r, config.reasoning) for r in records], reward_funcs=funcs, reward_weights=weights,
        format_reward=functools.partial(stage1_format_reward, reasoning=config.reasoning, prefix=config.assistant_prefix),
        evaluate=evaluate, held_out=held_out, data_info=data_info, callbacks=list(callbacks)))


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

    Raises:
        mmrag_agent.schema.DatasetError: A data file is not valid (nothing has been written then).
        FileNotFoundError: A data file does not exist.
    """
    # 1. Data, read and checked before anything is written
    train_examples, held_out, data_info = load_examples(config)
    out, resume = _output_dir(config)

    # 2. Starting model; K candidates per question (positives that fit + hard negatives) in several shuffled orders
    start = load_start_model(config, stage2_start(config), out, resume)
    with_images = _with_images(config, start.loaded)
    records = stage2_records(train_examples, config.k, config.permutations, config.seed, with_images, data_file=config.data,
                             tokenizer=start.loaded.tokenizer, max_text_tokens=config.max_text_tokens)

    # 3. Rewards: format, format-gated rank quality (NDCG + set F1) and answer accuracy
    funcs, weights = stage2_rewards(config) if reward_funcs is None else (list(reward_funcs), config.reward_weights)

    # 4. Held-out evaluation: greedy completions parsed; rank metrics of the model's ranking, answer F1
    eval_file = config.eval_data or config.data

    @_timed
    def evaluate(model) -> dict:
        loaded = as_loaded(model, start.loaded)
        return evaluate_in_chunks(
            lambda chunk: evaluate_stage2(loaded, chunk, config.k, config.split_seed, with_images, eval_file, config.max_text_tokens,
                                          config.max_completion_length, config.assistant_prefix, config.eval_batch_size),
            held_out, chunk_size=config.eval_batch_size, desc="held-out evaluation", progress=config.progress_bar,
            counts={"answer_f1": lambda chunk: sum(bool(e.positives and e.answers) for e in chunk)})

    # 5. Format probe and SFT warm start, GRPO, output directory
    return _run(StageRun(
        config=config, out=out, resume=resume, start=start, records=records, targets=[stage2_target(r) for r in records],
        reward_funcs=funcs, reward_weights=weights, format_reward=functools.partial(stage2_format_reward, prefix=config.assistant_prefix),
        evaluate=evaluate, held_out=held_out, data_info=data_info, callbacks=list(callbacks)))


def load_examples(config: StageConfig) -> tuple[list, list, dict]:
    """Read and check the training and held-out examples; split by question when there is no ``eval_data``.

    Everything a data file can get wrong is found here, before a model loads or a file is written: a missing
    file, a line that is not JSON or misses a field, a file that is not UTF-8, and (unless ``with_images`` is
    false) an image file that does not exist.

    Returns:
        ``(train, held_out, data_info)``.

    Raises:
        mmrag_agent.schema.DatasetError: The one-line message names the file, line or candidate, and the fix.
        FileNotFoundError: A data file does not exist.
    """
    if not config.data:
        raise ValueError("config.data is required: the training rerank examples (JSONL)")
    examples = _read_checked(config.data, config)
    if config.eval_data:
        train, held_out = examples, _read_checked(config.eval_data, config)
    else:
        train, held_out = split_by_question(examples, config.held_out_fraction, config.split_seed)
    train = train[: config.max_train_queries] if config.max_train_queries else train
    held_out = held_out[: config.max_eval_queries] if config.max_eval_queries else held_out
    info = {"train": str(config.data), "eval": str(config.eval_data or config.data), "split_seed": config.split_seed,
            "held_out_fraction": None if config.eval_data else config.held_out_fraction,
            "train_queries": len(train), "held_out_queries": len(held_out)}
    return train, held_out, info


# ------------------------------------------------------------------------------------------------ shared steps
def _run(run: StageRun) -> TrainResult:
    """Probe → SFT warm start → GRPO → output directory (shared by both stages)."""
    from accelerate import PartialState

    config, out = run.config, run.out
    out.mkdir(parents=True, exist_ok=True)
    logger.debug(config.warm_start_plan())
    evaluating = config.eval_every > 0 and bool(run.held_out) and PartialState().is_main_process  # rank 0 evaluates
    history = load_held_out_history(out, run.resume)
    if evaluating and not run.resume:
        append_held_out(history, out / "held_out.jsonl", 0, "initial", run.evaluate(run.start.loaded.model))
    warm, peft_config = _warm_start(run, history, evaluating)
    trainer = _grpo(run, history, evaluating, peft_config)
    card = _finish(run, trainer, warm, history)
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
        logger.info("format probe: %.3f of %d sampled completions in format", warm["probe"]["format_rate"], warm["probe"]["n"])
    if not (config.sft_warm_start == "on" or (config.sft_warm_start == "auto" and warm["probe"]["format_rate"] < config.format_probe_threshold)):
        return warm, peft_config
    began = time.perf_counter()
    model, sft_logs = sft_warm_start(run.start.loaded.model, run.start.loaded.processor, sft_dataset(run.records, run.targets),
                                     config, peft_config, output_dir=str(out / "sft-run"))
    run.start = save_warm_start(config, out, run.start, model)
    shutil.rmtree(out / "sft-run", ignore_errors=True)
    warm.update(ran=True, steps=config.sft_max_steps, learning_rate=config.sft_learning_rate,
                seconds=round(time.perf_counter() - began, 2), loss=[h["loss"] for h in sft_logs if "loss" in h])
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


def _output_dir(config: StageConfig) -> tuple[Path, str | None]:
    """The output directory (not created here) and the checkpoint to resume from."""
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(config.output_dir)
    resume = config.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("last", "auto", "true", "1"):
        resume = get_last_checkpoint(str(out)) if out.is_dir() else None
        if resume is None:
            logger.info("no checkpoint in %s: starting from scratch", out)
    return out, resume


def _read_checked(path: str, config: StageConfig) -> list:
    if not Path(path).is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    try:
        examples = read_rerank_examples(path)
    except UnicodeDecodeError as exc:
        raise DatasetError(path, None, None, f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})",
                           "save the file as UTF-8") from None
    if config.with_images is not False:  # images may be shown: every image file must exist
        for example in examples:
            for number, candidate in enumerate(example.candidates):
                image = candidate.image_file(path)
                if image is not None and not image.is_file():
                    raise DatasetError(path, None, f"candidates[{number}].image_path",
                                       f"image file {image} of query '{example.qid}' does not exist",
                                       "fix image_path (relative to the data file's folder), or train without images "
                                       "(with_images: false)")
    if not examples:
        raise DatasetError(path, None, None, "no examples", "write one rerank example (JSON object) a line")
    return examples


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


def _finish(run: StageRun, trainer, warm: dict, history: list[dict]) -> ModelCard | None:
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
    card = ModelCard(
        stage=config.stage, prompt_version=PROMPT_VERSION, assistant_prefix=config.assistant_prefix,
        reasoning=bool(getattr(config, "reasoning", False)), max_text_tokens=config.max_text_tokens,
        candidates_per_prompt=getattr(config, "k", None), max_new_tokens=config.max_completion_length,
        base_model=start.base_model, kind=start.kind, metrics=held_out or {},
        training={"init_from": start.init_from, "data": {**run.data_info, "train_records": len(run.records)},
                  "rewards": [{"name": get_callable_name(f), "weight": w} for f, w in zip(run.reward_funcs, weights)],
                  "steps": trainer.state.global_step, "sft_warm_start": warm,
                  "final_metrics": {"train": train_summary(logs), "held_out": held_out},
                  "held_out_history": history, "config": config.stage_summary()})
    write_model_card(out, card)
    return card


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


def _timed(evaluate: Callable[[Any], dict]) -> Callable[[Any], dict]:
    """Add ``eval_seconds`` (wall clock of the evaluation) to the metrics."""
    @functools.wraps(evaluate)
    def timed(model) -> dict:
        began = time.perf_counter()
        metrics = evaluate(model)
        return {**metrics, "eval_seconds": round(time.perf_counter() - began, 2)}
    return timed


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("phase",)}
