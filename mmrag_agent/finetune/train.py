"""GRPO training of the two stages on TRL's ``GRPOTrainer``: :func:`train_stage1`, :func:`train_stage2`.

Each entry point reads top to bottom: data (read and checked before anything is written) → starting model →
training records → rewards → held-out evaluation, gathered in a :class:`~.steps.StageRun`; the shared steps
(:mod:`.steps`) then run the format probe and the SFT warm start, GRPO with periodic held-out evaluation, and
write the output directory. It then holds

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

import functools
import importlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..models.loading import LoadedModel
from ..schema import DatasetError, read_rerank_examples
from .callbacks import ProgressBarCallback, evaluate_in_chunks
from .config import Stage1Config, Stage2Config, StageConfig
from .datasets import split_by_question, stage1_records, stage2_records
from .evaluation import eval_mode, evaluate_stage2, score_stage1, stage1_metrics
from .fusion import add_listwise_offsets, first_stage_retrievers, fit_fusion
from .shared_prefix import question_groups, shared_prefix_warm_start
from .signal import select_signal_records
from .policy import as_loaded, load_start_model, stage2_start
from .rewards import (
    stage1_accuracy_reward, stage1_format_reward, stage2_answer_reward, stage2_format_reward, stage2_rank_reward,
)
from .sft import stage1_target, stage2_target
from .steps import StageRun, TrainResult, resolve_output, run_stage, serving_card

logger = logging.getLogger(__name__)

__all__ = ["StageRun", "TrainResult", "load_examples", "stage1_rewards", "stage2_rewards", "train_stage1", "train_stage2"]


def stage1_rewards(config: Stage1Config) -> tuple[list[Callable], list[float]]:
    """Stage-1 reward functions and weights: ``[format, gated accuracy] + extras``, ``[format_weight, accuracy_weight] + ...``."""
    bind = dict(reasoning=config.reasoning, prefix=config.assistant_prefix)
    funcs = [functools.partial(stage1_format_reward, **bind), functools.partial(stage1_accuracy_reward, **bind)]
    extra, extra_weights = _extra_rewards(config)
    return funcs + extra, [config.format_weight, config.accuracy_weight] + extra_weights


def stage2_rewards(config: Stage2Config) -> tuple[list[Callable], list[float]]:
    """Stage-2 reward functions and weights: ``[format, rank quality, answer accuracy] + extras``."""
    prefix = config.assistant_prefix
    funcs = [functools.partial(stage2_format_reward, prefix=prefix), functools.partial(stage2_rank_reward, prefix=prefix),
             functools.partial(stage2_answer_reward, prefix=prefix, answers_are_list=config.answers_are_list)]
    extra, extra_weights = _extra_rewards(config)
    return funcs + extra, [config.format_weight, config.rank_weight, config.answer_weight] + extra_weights


def train_stage1(config: Stage1Config, reward_funcs: Sequence[Callable] | None = None, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Stage-1 GRPO: point-wise yes/no relevance with format + gated accuracy rewards.

    The recipe (each step measured on held-out questions, README "Real learning on this CPU"): every candidate of
    every training question with class-balancing weights (``training_candidates="all"``); the SFT warm start over
    whole epochs with shared prefixes (``sft_epochs``, ``sft_shared_prefix``); GRPO on the prompts most likely to
    give groups with reward variance (``grpo_pool_factor``); then the fusion weight with the first-stage retriever,
    cross-fitted on the held-out questions (``first_stage``, ``fusion_folds``) and written to ``card.fusion``. The
    held-out candidates are shuffled (seed ``split_seed``) so that no ranking inherits the file's order.

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
    from ..eval.rerank import shuffle_candidates

    # 1. Data, read and checked before anything is written: a train / held-out split by question
    train_examples, held_out, data_info = load_examples(config)
    held_out = shuffle_candidates(held_out, seed=config.split_seed)
    retrievers = first_stage_retrievers(config.first_stage, str(config.device)) if held_out else {}  # fail fast if missing
    out, resume = resolve_output(config)

    # 2. Starting model; point-wise (query, candidate, yes|no) units: every candidate, or 1:1 sampled negatives
    start = load_start_model(config, config.model_name_or_path, out, resume)
    with_images = _with_images(config, start.loaded)
    every = config.training_candidates == "all"
    records = _images_as_lists(stage1_records(
        train_examples, None if every else config.negatives_per_positive, config.seed, with_images, config.reasoning,
        data_file=config.data, tokenizer=start.loaded.tokenizer, max_text_tokens=config.max_text_tokens))
    targets = [stage1_target(r, config.reasoning, config.assistant_prefix) for r in records]
    if config.sft_listwise_retrieval and config.sft_listwise_weight and config.first_stage != "none":
        retrievers = retrievers or first_stage_retrievers(config.first_stage, str(config.device))
        add_listwise_offsets(records, train_examples, retrievers[config.first_stage], config.sft_listwise_retrieval)

    # 3. Rewards: format and format-gated accuracy, weighted by TRL (each logged as rewards/<name>/mean)
    funcs, weights = stage1_rewards(config) if reward_funcs is None else (list(reward_funcs), config.reward_weights)

    # 4. Held-out evaluation: stage-1 P(relevant) ranking of each held-out query's candidates (P@1, MRR, ...); the
    #    probabilities of the latest evaluation are kept: the fusion weight is fitted on the final model's
    eval_file = config.eval_data or config.data
    card = serving_card(config, start)  # the prompt settings serving will use, evaluated as such
    latest: dict[str, Any] = {}

    @_timed
    def evaluate(model) -> dict:
        loaded, rows = as_loaded(model, start.loaded), []

        def chunk(examples):
            part = score_stage1(loaded, examples, card, config.eval_batch_size, eval_file, with_images)
            rows.extend(part)
            return stage1_metrics(part)

        metrics = evaluate_in_chunks(chunk, held_out, chunk_size=1, desc="held-out evaluation", progress=config.progress_bar)
        latest["rows"] = rows
        return metrics

    # 5. The warm start with shared prefixes (text models), GRPO's prompts by predicted signal, the fitted fusion
    def shared_warm_start(model, peft_config, output_dir):
        groups = question_groups(records, targets, start.loaded.processor, config.assistant_prefix)
        bars = [ProgressBarCallback(desc="stage 1 SFT warm start")] if config.progress_bar else []
        return shared_prefix_warm_start(model, start.loaded.tokenizer, groups, config, peft_config, output_dir, bars)

    def select(loaded):
        return select_signal_records(loaded, records, card, _grpo_prompts(config), config.grpo_pool_factor,
                                     config.num_generations, config.temperature, config.seed, config.eval_batch_size)

    def finish(final_card, trainer):
        if not held_out:
            return
        began = time.perf_counter()
        history = final_card.training.get("held_out_history") or []
        rows = latest.get("rows") if history and history[-1]["phase"] == "final" else None  # the final model's scores
        if rows is None:  # no evaluation of the final model ran: score the held-out questions now
            rows = score_stage1(as_loaded(trainer.model, start.loaded), held_out, card, config.eval_batch_size, eval_file, with_images)
        final_card.fusion = fit_fusion(rows, held_out, config.first_stage, retrievers, config.fusion_folds, config.fusion_metric,
                                       seed=config.split_seed)
        final_card.training["fusion_seconds"] = round(time.perf_counter() - began, 2)

    shared = config.sft_shared_prefix and not start.loaded.is_vision
    selecting = config.grpo_pool_factor > 0 and config.max_steps > 0 and not config.reasoning
    return run_stage(StageRun(
        config=config, out=out, resume=resume, start=start, records=records, targets=targets, reward_funcs=funcs,
        reward_weights=weights, evaluate=evaluate, held_out=held_out, data_info=data_info,
        callbacks=list(callbacks), warm_start=shared_warm_start if shared else None, select_records=select if selecting else None,
        finish_card=finish,
        format_reward=functools.partial(stage1_format_reward, reasoning=config.reasoning, prefix=config.assistant_prefix)))


def train_stage2(config: Stage2Config, reward_funcs: Sequence[Callable] | None = None, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Stage-2 GRPO: list-wise ``<think>`` / ``<rank>`` / ``<answer>`` over K shuffled candidates.

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
    out, resume = resolve_output(config)

    # 2. Starting model; K candidates per question (positives that fit + hard negatives) in several shuffled orders
    start = load_start_model(config, stage2_start(config), out, resume)
    with_images = _with_images(config, start.loaded)
    records = stage2_records(train_examples, config.k, config.permutations, config.seed, with_images, data_file=config.data,
                             tokenizer=start.loaded.tokenizer, max_text_tokens=config.max_text_tokens)

    # 3. Rewards: format, format-gated rank quality (NDCG + set F1) and answer accuracy
    funcs, weights = stage2_rewards(config) if reward_funcs is None else (list(reward_funcs), config.reward_weights)

    # 4. Held-out evaluation: greedy completions parsed; rank metrics of the model's ranking, answer F1
    eval_file = config.eval_data or config.data
    card = serving_card(config, start)  # the prompt settings serving will use, evaluated as such

    @_timed
    def evaluate(model) -> dict:
        loaded = as_loaded(model, start.loaded)
        return evaluate_in_chunks(
            lambda chunk: evaluate_stage2(loaded, chunk, card, config.split_seed, eval_file, config.eval_batch_size),
            held_out, chunk_size=config.eval_batch_size, desc="held-out evaluation", progress=config.progress_bar,
            counts={"answer_f1": lambda chunk: sum(bool(e.positives and e.answers) for e in chunk)})

    # 5. Does stage 2 rank better than the fused stage-1 order it is given? The card records it; serving reads it
    def finish(final_card, trainer):
        checked = held_out[: config.ranking_check_queries]
        if not checked or not config.stage1_output:
            return
        from ..eval.rerank import shuffle_candidates
        from ..eval.stage2 import Stage2Reranker, ranking_check
        from ..models import load_model

        began = time.perf_counter()
        stage1 = load_model(config.stage1_output, device=str(config.device))
        with eval_mode(trainer.model):
            reranker = Stage2Reranker(as_loaded(trainer.model, start.loaded), pipeline=True, stage1_model=stage1, keep=config.k,
                                      data_file=eval_file, device=str(config.device), query_batch=config.eval_batch_size,
                                      card=final_card)
            try:
                check = ranking_check(reranker, shuffle_candidates(checked, seed=config.split_seed))
            except ValueError as exc:  # e.g. a completion budget too small for served (constrained) output
                logger.warning("stage-2 ranking check skipped: %s; serving keeps the incoming order", exc)
                final_card.ranking_check = {"reorder": False, "skipped": str(exc), "stage1_model": str(config.stage1_output)}
                return
        final_card.ranking_check = {**check, "stage1_model": str(config.stage1_output), "fusion": reranker.fusion,
                                    "seconds": round(time.perf_counter() - began, 1)}

    # 6. Format probe and SFT warm start, GRPO, output directory
    return run_stage(StageRun(
        config=config, out=out, resume=resume, start=start, records=records,
        targets=[stage2_target(r, config.assistant_prefix) for r in records], reward_funcs=funcs, reward_weights=weights,
        evaluate=evaluate, held_out=held_out, data_info=data_info, callbacks=list(callbacks), finish_card=finish,
        format_reward=functools.partial(stage2_format_reward, prefix=config.assistant_prefix)))


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


# ------------------------------------------------------------------------------------------------ helpers
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


def _grpo_prompts(config: StageConfig) -> int:
    """Prompts GRPO takes over ``max_steps`` (each prompt gets ``num_generations`` completions)."""
    from accelerate import PartialState

    completions = config.max_steps * config.per_device_train_batch_size * config.gradient_accumulation_steps
    return max(1, completions * PartialState().num_processes // config.num_generations)


def _timed(evaluate: Callable[[Any], dict]) -> Callable[[Any], dict]:
    """Add ``eval_seconds`` (wall clock of the evaluation) to the metrics."""
    @functools.wraps(evaluate)
    def timed(model) -> dict:
        began = time.perf_counter()
        metrics = evaluate(model)
        return {**metrics, "eval_seconds": round(time.perf_counter() - began, 2)}
    return timed
