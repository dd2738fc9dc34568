"""The SFT warm start: a format probe of the starting model, and a short SFT on gold-formatted targets.

Random or small models rarely write the tag format zero-shot (SmolLM2-135M-Instruct: 0 of 96 sampled
completions), so every GRPO group has zero reward variance and nothing is learned. :func:`format_probe`
measures the format rate of sampled completions; :func:`sft_warm_start` then trains on targets built from
the gold labels (:func:`stage1_target`, :func:`stage2_target`) with ``trl.SFTTrainer`` (prompt-completion,
loss on the completion only), on the same LoRA adapter GRPO will continue, or on the full model.

The warm start teaches the *format* (and, for stage 1, the labels themselves: it is supervised learning on
the same units). The ``<think>`` text of the targets is a fixed template, not gold reasoning: GRPO is what
shapes the reasoning.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

from ..models.loading import LoadedModel
from ..format import stage1_completion, stage2_completion
from ..models.generation import Sampling
from .evaluation import generate_completions

__all__ = ["format_probe", "sft_dataset", "sft_warm_start", "stage1_target", "stage2_target"]


def stage1_target(record: dict, reasoning: bool = False, prefix: str = "") -> str:
    """The gold-formatted stage-1 completion of a record, after the pre-filled ``prefix`` (:func:`mmrag_agent.format.stage1_completion`).

    Example:
        >>> stage1_target({"label": "no"}, prefix="<answer>")
        'no</answer>'
    """
    return stage1_completion(record["label"], reasoning, prefix)


def stage2_target(record: dict, prefix: str = "") -> str:
    """The gold-formatted stage-2 completion of a record, after ``prefix``: template reasoning, the gold ids ranked,
    the first gold answer cited (:func:`mmrag_agent.format.stage2_completion`).

    Example:
        >>> stage2_target({"gold_ids": [3, 1], "answers": ["green"]}, prefix="<think>")
        'Candidates [3], [1] are relevant to the question; the others are not.</think><rank>[3] > [1]</rank><answer>green [3]</answer>'
    """
    answers = record.get("answers") or []
    return stage2_completion(record["gold_ids"], answers[0] if answers else None, prefix)


def format_probe(loaded: LoadedModel, records: Sequence[dict], format_reward: Callable[..., list[float]], prompts: int = 8,
                 generations: int = 4, max_new_tokens: int = 16, temperature: float = 1.0, assistant_prefix: str = "",
                 seed: int = 0, batch_size: int = 8, progress: bool = False) -> dict[str, Any]:
    """Sample completions of a few training prompts and measure how many are in the format.

    Args:
        loaded: The starting model with its original processor.
        records: Training records (``prompt`` plus ``images`` where images are shown).
        format_reward: The stage's format reward (TRL signature; pre-filled prefix already bound or absent).
        prompts: Prompts sampled (seeded) from ``records``.
        generations: Completions sampled per prompt, at ``temperature`` as GRPO will.
        max_new_tokens: Generation budget (the GRPO ``max_completion_length``).
        temperature: Sampling temperature.
        assistant_prefix: Pre-filled assistant text (as in training).
        seed: Seed of the prompt choice and of the sampling.
        batch_size: Prompts per ``generate`` call.
        progress: Show a progress bar over the sampled completions (with ETA from the first batch).

    Returns:
        ``{"format_rate", "completions" (up to 8 examples), "n"}``.
    """
    import torch
    from tqdm.auto import tqdm

    chosen = random.Random(seed).sample(list(records), min(prompts, len(records)))
    torch.manual_seed(seed)
    texts: list[str] = []
    with tqdm(total=len(chosen) * generations, desc="format probe", unit="completion", disable=not progress,
              dynamic_ncols=True) as bar:
        for start in range(0, len(chosen), batch_size):  # one generate call per batch, as generate_completions does
            batch = chosen[start:start + batch_size]
            texts += generate_completions(loaded, [r["prompt"] for r in batch], [r.get("images") for r in batch],
                                          assistant_prefix=assistant_prefix, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                          sampling=Sampling(do_sample=True, temperature=temperature,
                                                            num_return_sequences=generations))
            bar.update(len(batch) * generations)
    scores = format_reward(texts)
    return {"format_rate": sum(scores) / max(len(scores), 1), "n": len(scores), "completions": texts[:8]}


def sft_dataset(records: Sequence[dict], targets: Sequence[str], prefix: str = ""):
    """A prompt-completion dataset for ``trl.SFTTrainer``: ``prompt``, ``completion`` (and ``images``).

    ``SFTTrainer`` renders prompt + completion with the original chat template (no pre-filled prefix), so each
    completion is the whole assistant turn, ``prefix + target``: the trained tokens are then exactly the GRPO
    prompt (which ends with ``prefix``) followed by the target, as serving sees them.

    Records with unequal ``weight`` (stage 1 with every candidate: class-balancing weights) are balanced by
    sampling instead, as ``SFTTrainer`` takes no weights: each record appears ``round(weight / smallest weight)``
    times, so every negative is seen once per epoch and each positive as often as the classes' ratio.

    Args:
        records: Training records (``prompt``, and ``images`` where images are shown).
        targets: Gold-formatted completions after ``prefix`` (:func:`stage1_target`, :func:`stage2_target`).
        prefix: The assistant prefix of the run.
    """
    from .datasets import to_dataset

    smallest = min((float(r.get("weight", 1.0)) for r in records), default=1.0)
    rows = []
    for record, target in zip(records, targets, strict=True):
        row = {"prompt": record["prompt"], "completion": [{"role": "assistant", "content": prefix + target}]}
        if "images" in record:
            row["images"] = record["images"]
        rows += [row] * max(1, round(float(record.get("weight", 1.0)) / smallest))
    dataset = to_dataset(rows)
    if "images" in dataset.column_names and all(not imgs for imgs in dataset["images"]):
        dataset = dataset.remove_columns("images")  # a text-only set: no image processing at all
    return dataset


def sft_warm_start(model, processing_class, dataset, config, peft_config=None, output_dir: str | None = None):
    """Train ``model`` for ``config.sft_epochs`` whole passes over ``dataset`` (else ``config.sft_max_steps`` steps) of
    SFT (completion-only loss).

    Args:
        model: The starting model (a ``PeftModel`` to continue an adapter, or a plain model).
        processing_class: Its *original* tokenizer / processor (no pre-filled prefix in the template).
        dataset: From :func:`sft_dataset`.
        config: The stage config: ``sft_epochs``, ``sft_max_steps``, ``sft_learning_rate``, ``sft_batch_size``, precision,
            ``seed``, ``activation_checkpointing``, ``progress_bar`` and the device settings are read from it.
        peft_config: A ``LoraConfig`` to create a fresh adapter (None: train ``model`` as it is).
        output_dir: Where SFTTrainer may write (logs); nothing is saved there by this function.

    Returns:
        ``(model, log_history)``: the trained model (a ``PeftModel`` with LoRA) and the SFT logs.
    """
    from trl import SFTConfig, SFTTrainer

    batch = config.sft_batch_size or config.per_device_train_batch_size
    epochs = config.sft_epochs > 0
    steps = max(1, round(len(dataset) * config.sft_epochs / batch)) if epochs else config.sft_max_steps
    args = SFTConfig(
        output_dir=output_dir or f"{config.output_dir}/sft-run", max_steps=-1 if epochs else steps,
        num_train_epochs=config.sft_epochs if epochs else 1, per_device_train_batch_size=batch,
        learning_rate=config.sft_learning_rate, lr_scheduler_type="linear" if epochs else "constant_with_warmup",
        warmup_steps=max(1, steps // 20) if epochs else min(5, steps // 5),
        logging_steps=max(1, steps // 10), save_strategy="no", report_to="none", seed=config.seed,
        bf16=config.bf16, fp16=config.fp16, use_cpu=config.use_cpu, activation_checkpointing=config.activation_checkpointing,
        max_length=None, completion_only_loss=True, remove_unused_columns=True, disable_tqdm=True,
        ddp_find_unused_parameters=config.ddp_find_unused_parameters, dataloader_pin_memory=config.dataloader_pin_memory,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from .callbacks import ProgressBarCallback

    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processing_class, peft_config=peft_config)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if config.progress_bar:
        trainer.add_callback(ProgressBarCallback(desc=f"stage {config.stage} SFT warm start"))
    trainer.train()
    return trainer.model, list(trainer.state.log_history)
