"""Prompts (with their images) to model inputs, and the one generation function every caller uses.

:func:`generate` serves stage-1 reasoning, stage 2, the training format probe, held-out evaluation and
:class:`~mmrag_agent.models.llm.TransformersLLM`: greedy or sampled, stop strings, a streamer, and extra logits
processors (e.g. the stage-2 output grammar).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..media import load_image
from .loading import LoadedModel


@dataclass(frozen=True)
class Sampling:
    """How tokens are chosen: greedy (the default) or sampled at ``temperature``.

    Attributes:
        do_sample: Sample instead of taking the most likely token.
        temperature: Sampling temperature.
        top_k: Keep only the k most likely tokens (0: all).
        top_p: Nucleus sampling mass (1.0: all).
        num_return_sequences: Completions per prompt (returned consecutively).
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_return_sequences: int = 1

    def generate_kwargs(self) -> dict[str, Any]:
        if not self.do_sample:
            return {"do_sample": False, "num_return_sequences": self.num_return_sequences}
        return {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "num_return_sequences": self.num_return_sequences}


GREEDY = Sampling()


def open_image(image):
    """A PIL image from a PIL image, a path or a binary file object (safely: size limits, EXIF orientation)."""
    from PIL import Image

    if image is None or isinstance(image, Image.Image):
        return image
    return load_image(image).image


def encode(loaded: LoadedModel, prompts: Sequence[str], images: Sequence[Sequence] | None = None, padding_side: str = "left"):
    """Batch-encode rendered prompts (padded on ``padding_side``); ``images[i]`` are prompt i's images in order.

    Special tokens are added as transformers' own chat flow does (:func:`adds_special_tokens`).
    """
    if loaded.is_vision:
        flat = [open_image(im) for per_prompt in (images or []) for im in per_prompt if im is not None]
        inputs = loaded.processor(text=list(prompts), images=flat or None, padding=True, padding_side=padding_side,
                                  add_special_tokens=adds_special_tokens(loaded, prompts), return_tensors="pt")
    else:
        inputs = loaded.tokenizer(list(prompts), padding=True, padding_side=padding_side, return_tensors="pt", add_special_tokens=False)
    inputs = inputs.to(loaded.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(loaded.model.dtype)
    return inputs


def adds_special_tokens(loaded: LoadedModel, prompts: Sequence[str]) -> bool:
    """Whether encoding rendered chat prompts adds the tokenizer's special tokens, as transformers does.

    A tokenizer's ``apply_chat_template`` never adds them; a processor's adds them unless the rendered prompt
    already starts with BOS (``ProcessorMixin.apply_chat_template``). Templates without a BOS thus keep the one
    the model was trained with, and templates with one never get a second.
    """
    if not loaded.is_vision:
        return False
    bos = loaded.tokenizer.bos_token
    return not (bos and all(p.startswith(bos) for p in prompts))


def generate(loaded: LoadedModel, prompts: Sequence[str], images: Sequence[Sequence] | None = None, max_new_tokens: int = 256,
             stop: str | None = None, streamer=None, sampling: Sampling = GREEDY, logits_processors: Sequence[Any] = ()) -> list[str]:
    """Continuations of ``prompts`` (one batch), decoded without special tokens.

    Args:
        loaded: The model.
        prompts: Rendered prompts (chat template applied, any pre-filled assistant text included).
        images: Per prompt, its images in order (paths or PIL images).
        max_new_tokens: Generation budget.
        stop: Stop a sequence once this string is generated.
        streamer: A transformers streamer receiving tokens as they are generated (batch of one).
        sampling: Greedy (default) or sampled decoding; ``num_return_sequences`` completions per prompt.
        logits_processors: ``transformers.LogitsProcessor`` objects applied at every step (e.g. a grammar).

    Returns:
        ``len(prompts) * sampling.num_return_sequences`` strings, in prompt order.

    Example:
        >>> generate(loaded, [render_chat(loaded.processor, messages, "<think>")], max_new_tokens=64, stop="</answer>")
    """
    import torch
    from transformers import LogitsProcessorList

    tokenizer = loaded.tokenizer
    inputs = encode(loaded, prompts, images)
    extra = {"logits_processor": LogitsProcessorList(list(logits_processors))} if logits_processors else {}
    with torch.inference_mode():
        generated = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer,
                                          stop_strings=[stop] if stop else None, tokenizer=tokenizer,
                                          pad_token_id=tokenizer.pad_token_id, **sampling.generate_kwargs(), **extra)
    return tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
