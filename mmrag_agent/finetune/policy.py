"""The policy model of a training run: where it starts, its LoRA adapter, and the processor TRL gets.

* :func:`load_start_model`: a full model, or an adapter directory (a stage-1 output, an SFT warm start)
  continued as a trainable adapter (LoRA) or merged into its base (full fine-tuning, reloaded from disk so
  that TRL's reference model, loaded from the policy's path, is the same weights).
* :func:`stage2_start`: stage 2 starts from the stage-1 output (default) or the base model.
* :func:`lora_config`: the LoRA config of ``trl.get_peft_config`` (the language model's attention and
  MLP projections), kept off the vision tower.
* :func:`adapter_base`: the base model of a PEFT adapter directory, read with PEFT's own ``PeftConfig``.
* :func:`training_processor`: the processing class handed to ``GRPOTrainer`` (assistant prefix in the chat
  template; VLM batches mixing image and text prompts); :class:`SaveOriginalProcessor` keeps checkpoints clean.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from ..model_card import read_model_card
from ..models.loading import LoadedModel, load_model
from .config import VISION_MODULES_REGEX, Stage2Config, StageConfig

__all__ = ["SaveOriginalProcessor", "StartModel", "adapter_base", "as_loaded", "load_start_model", "lora_config", "num_layers",
           "save_warm_start", "stage2_start", "training_processor"]


@dataclass
class StartModel:
    """The policy training starts from.

    Attributes:
        loaded: The model (a trainable ``PeftModel`` when an adapter is continued) and its original processor.
        base_model: The base weights (for the model card; an adapter's ``base_model_name_or_path``).
        init_from: What training started from (a model, a stage-1 output, an adapter directory).
        kind: ``"lora"`` or ``"full"``.
    """

    loaded: LoadedModel
    base_model: str
    init_from: str
    kind: str


def stage2_start(config: Stage2Config) -> str:
    """Where stage 2 starts: ``stage1_output`` (``init_from="stage1"``, the default when it is given), else the base
    model: ``model_name_or_path``, or the base the stage-1 output was trained from (its model card / adapter config).

    Raises:
        ValueError: Neither ``stage1_output`` nor ``model_name_or_path`` is given.
    """
    if config.init_from == "stage1" and config.stage1_output:
        return config.stage1_output
    card = read_model_card(config.stage1_output) if config.stage1_output else None
    base = config.model_name_or_path or (card.base_model if card else None) or adapter_base(config.stage1_output)
    if not base:
        raise ValueError("stage 2 needs a starting model: stage1_output (the stage-1 output directory, --stage1) "
                         "or model_name_or_path (--model)")
    return base


def load_start_model(config: StageConfig, start: str, out: Path, resume: str | None) -> StartModel:
    """Load the policy training starts from.

    Args:
        config: The run (``use_peft``, ``dtype``, pixel bounds, ...).
        start: A model (hub id, directory, ``.gguf``, preset) or an adapter directory.
        out: The output directory (a merged adapter is written to ``out/init`` for full fine-tuning).
        resume: The checkpoint being resumed: the run then starts from its own warm start (``out/sft``) if any.

    Returns:
        A :class:`StartModel`. An adapter is continued as a trainable ``PeftModel`` with LoRA (GRPOTrainer then
        keeps a frozen copy as the reference policy), or merged into its base for full fine-tuning.
    """
    from peft import PeftModel

    init_from, base_model = str(start), _base_of(start)
    kind = "lora" if config.use_peft else "full"
    if resume and (out / "sft").is_dir():  # a resumed run continues from its own warm start
        start = str(out / "sft")
    kwargs = dict(dtype=config.dtype if config.dtype != "auto" else ("bfloat16" if config.bf16 else "float32"),
                  attn_implementation=config.attn_implementation, min_pixels=config.min_pixels, max_pixels=config.max_pixels)
    base = adapter_base(start)
    if base is None:
        return StartModel(_on_device(load_model(start, **kwargs), config), base_model, init_from, kind)
    loaded = load_model(base, **kwargs)
    if config.use_peft:  # continue the adapter (GRPOTrainer keeps a frozen copy of it as the reference policy)
        loaded.model = PeftModel.from_pretrained(loaded.model, start, is_trainable=True)
        return StartModel(_on_device(loaded, config), base_model, init_from, kind)
    # Full fine-tuning from an adapter: merge it and reload from disk, so that TRL's reference model is the same
    merged = PeftModel.from_pretrained(loaded.model, start).merge_and_unload()
    with _main_process_first() as is_main:
        if is_main:
            merged.save_pretrained(out / "init")
            loaded.processor.save_pretrained(out / "init")
    return StartModel(_on_device(load_model(out / "init", **kwargs), config), base_model, init_from, kind)


def save_warm_start(config: StageConfig, out: Path, start: StartModel, model) -> StartModel:
    """Save the warm-started model (adapter or full) and the processor to ``out/sft``; the policy GRPO continues."""
    sft_dir = out / "sft"
    with _main_process_first() as is_main:
        if is_main:
            shutil.rmtree(sft_dir, ignore_errors=True)
            model.save_pretrained(sft_dir)
            start.loaded.processor.save_pretrained(sft_dir)
    if config.use_peft:
        start.loaded.model = model
        return start
    # Full: reload from disk so that TRL's reference model (loaded from the model's path) is the warm-started one
    kwargs = dict(dtype=str(next(model.parameters()).dtype).replace("torch.", ""), min_pixels=config.min_pixels, max_pixels=config.max_pixels)
    return StartModel(_on_device(load_model(sft_dir, **kwargs), config), start.base_model, start.init_from, "full")


def lora_config(config: StageConfig, loaded: LoadedModel):
    """The ``peft.LoraConfig`` of the run: ``trl.get_peft_config`` of its ``ModelConfig`` fields (r, alpha, dropout,
    target modules, rsLoRA / DoRA ...), with the vision tower of a VLM excluded (``lora_exclude_vision``) and, with
    ``lora_layers``, only the last N transformer layers adapted (PEFT's ``layers_to_transform``).

    Returns:
        The ``LoraConfig``, or None for full fine-tuning (``use_peft`` false).

    Raises:
        ValueError: ``lora_layers`` exceeds the model's number of layers.
    """
    from trl import get_peft_config

    peft_config = get_peft_config(config)
    if peft_config is not None and loaded.is_vision and config.lora_exclude_vision:
        peft_config = dataclasses.replace(peft_config, exclude_modules=VISION_MODULES_REGEX)
    if peft_config is not None and config.lora_layers:
        total = num_layers(loaded.model)
        if config.lora_layers > total:
            raise ValueError(f"lora_layers={config.lora_layers} but the model has {total} layers; give at most {total} (null: all)")
        peft_config = dataclasses.replace(peft_config, layers_to_transform=list(range(total - config.lora_layers, total)))
    return peft_config


def num_layers(model) -> int:
    """The number of transformer layers of the language model (``num_hidden_layers``; a VLM's ``text_config``'s)."""
    config = model.config
    config = getattr(config, "text_config", None) or config
    return int(config.num_hidden_layers)


def training_processor(processor, prefix: str):
    """The processing class handed to GRPOTrainer: a copy of the original, changed in two ways.

    * With ``prefix``, its chat template ends the generation prompt with ``prefix`` (TRL renders conversational
      prompts with ``add_generation_prompt=True``; the prefix then opens every completion).
    * A VLM processor accepts ``None`` for a prompt without images in a batch that has some: TRL 1.16 passes
      ``[[image], None]`` for batches mixing image and text candidates, which the processor rejects.

    The original is what gets saved to the output directory.
    """
    from transformers import ProcessorMixin

    if not prefix and not isinstance(processor, ProcessorMixin):
        return processor
    copied = copy.deepcopy(processor)
    if prefix:
        suffix = "{% if add_generation_prompt %}{{ " + json.dumps(prefix, ensure_ascii=False) + " }}{% endif %}"
        for obj in (copied, getattr(copied, "tokenizer", None)):
            if obj is not None and getattr(obj, "chat_template", None):
                obj.chat_template = obj.chat_template + suffix
    if isinstance(copied, ProcessorMixin):
        cls = type(copied)
        copied.__class__ = type(cls.__name__, (_NoneImagesAsEmpty, cls), {"__module__": cls.__module__})
    return copied


class SaveOriginalProcessor(TrainerCallback):
    """Checkpoints get the original processor (the trainer saves its training copy, prefix template included)."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            self.processor.save_pretrained(folder)


class _NoneImagesAsEmpty:
    def __call__(self, *args, images=None, **kwargs):
        if isinstance(images, list) and any(im is None for im in images) and any(im is not None for im in images):
            images = [[] if im is None else im for im in images]
        return super().__call__(*args, images=images, **kwargs)


def as_loaded(model, like: LoadedModel) -> LoadedModel:
    """``model`` (e.g. the trainer's) with the processor, tokenizer and name of ``like``."""
    return LoadedModel(model=model, processor=like.processor, tokenizer=like.tokenizer, name=like.name, is_vision=like.is_vision)


def adapter_base(path: str | Path | None) -> str | None:
    """The ``base_model_name_or_path`` of a local PEFT adapter directory (read with ``peft.PeftConfig``); None when
    ``path`` is not one. Hub ids are never looked up here.

    Example:
        >>> adapter_base("runs/s1")
        'HuggingFaceTB/SmolLM2-135M-Instruct'
    """
    from peft import PeftConfig
    from peft.utils import CONFIG_NAME

    if not path or not (Path(path) / CONFIG_NAME).is_file():
        return None
    return PeftConfig.from_pretrained(str(path)).base_model_name_or_path


def _on_device(loaded: LoadedModel, config: StageConfig) -> LoadedModel:
    """Move the model to the run's device (``config.device``: this process's GPU, or the CPU), where the format
    probe, the held-out evaluations and the warm start run; the trainers keep it there."""
    loaded.model.to(config.device)
    return loaded


@contextmanager
def _main_process_first():
    """Yield whether this is the main process; the other processes wait until it has left the block (files written)."""
    from accelerate import PartialState

    state = PartialState()
    yield state.is_main_process
    state.wait_for_everyone()


def _base_of(start: str) -> str:
    """The base weights behind a start: the model card's ``base_model``, an adapter's base, or ``start`` itself."""
    card = read_model_card(start) if Path(start).is_dir() else None
    return (card.base_model if card else None) or adapter_base(start) or str(start)
