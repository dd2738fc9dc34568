"""Turning prompts (with their images) into model inputs, and greedy generation, for any loaded model."""

from __future__ import annotations

from typing import Sequence

from .loading import LoadedModel


def open_image(image):
    """A PIL image from a PIL image, a path or a binary file object (safely: size limits, EXIF orientation)."""
    from PIL import Image

    if image is None or isinstance(image, Image.Image):
        return image
    from ..media import load_image

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
             stop: str | None = None, streamer=None) -> list[str]:
    """Greedy continuations of ``prompts`` (one batch), decoded without special tokens.

    Args:
        loaded: The model.
        prompts: Rendered prompts (chat template applied).
        images: Per prompt, its images in order.
        max_new_tokens: Generation budget.
        stop: Stop once this string is generated.
        streamer: A transformers streamer receiving tokens as they are generated (batch of one).
    """
    import torch

    tokenizer = loaded.tokenizer
    inputs = encode(loaded, prompts, images)
    with torch.inference_mode():
        generated = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer,
                                          stop_strings=[stop] if stop else None, tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
