"""Two-stage GRPO training of the stage-1 and stage-2 models (TRL + PEFT).

Data: :mod:`.builders` (WebQA / MultimodalQA to rerank-example JSONL), :mod:`.datasets` (stage-1 / stage-2
training records), the stage-2 prompt is :func:`mmrag_agent.prompts.stage2_messages`, :mod:`.rewards` (rule-based GRPO rewards).

Training: :class:`Stage1Config` / :class:`Stage2Config` (``trl.GRPOConfig`` + ``trl.ModelConfig`` plus the stage
fields, parsed from YAML and command lines by ``trl.TrlParser``), :func:`train_stage1` / :func:`train_stage2` (SFT
warm start when a format probe fails, GRPO with LoRA or full fine-tuning, held-out evaluation, the
:class:`~mmrag_agent.model_card.ModelCard` serving reads, and curves), ``mmrag train`` (:mod:`mmrag_agent.cli.train`).

Scale-out (details and commands in ``docs/scale_out.md``):

* several GPUs: ``accelerate launch --num_processes 4 -m mmrag_agent.cli.train stage1 --data ... --output ...``;
  the configs are ``GRPOConfig`` objects, so DDP / FSDP / DeepSpeed settings pass through as config fields. The
  global batch ``per_device_train_batch_size * num_processes * gradient_accumulation_steps`` must be a multiple
  of ``num_generations``.
* vLLM generation inside training: ``--use_vllm true --vllm_mode colocate`` (or ``server`` with
  ``trl vllm-serve``); TRL then generates the GRPO completions with vLLM and syncs the weights each step.
* served inference: a trained output directory (merged if LoRA) served by vLLM or any OpenAI-compatible server
  answers stage 1 through ``logprobs`` of the ``yes`` / ``no`` token after the pre-filled ``<answer>`` and stage 2
  through ordinary chat completions parsed with ``parse_stage2_output``.

Names from :mod:`.config` and :mod:`.train` are imported on first use (they import TRL).
"""

from __future__ import annotations

import importlib

from ..model_card import read_model_card
from ..prompts import stage2_messages
from .builders import build_mmqa, build_webqa
from .datasets import split_by_question, stage1_records, stage2_records, to_dataset
from .rewards import (
    completion_text, stage1_accuracy_reward, stage1_format_reward, stage1_total_reward, stage2_answer_reward,
    stage2_format_reward, stage2_rank_reward, stage2_total_reward,
)

_LAZY = {
    "config": ("ConfigError", "Stage1Config", "Stage2Config", "StageConfig"),
    "train": ("StageRun", "TrainResult", "stage1_rewards", "stage2_rewards", "train_stage1", "train_stage2"),
    "evaluation": ("evaluate_stage1", "evaluate_stage2"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [
    "ConfigError", "Stage1Config", "Stage2Config", "StageConfig", "StageRun", "TrainResult", "build_mmqa", "build_webqa", "completion_text",
    "evaluate_stage1", "evaluate_stage2", "read_model_card", "split_by_question", "stage1_accuracy_reward",
    "stage1_format_reward", "stage1_records", "stage1_rewards", "stage1_total_reward", "stage2_answer_reward",
    "stage2_format_reward", "stage2_messages", "stage2_rank_reward", "stage2_records", "stage2_rewards",
    "stage2_total_reward", "to_dataset", "train_stage1", "train_stage2",
]


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
