"""Point-wise relevance scoring: P(relevant) from the {yes, no} logits at the answer position (SPEC §1.2).

One forward pass per candidate, batched, no sampling: the prompt ends with the pre-filled ``<answer>`` and the
next-token logits of ``yes`` and ``no`` are normalised against each other. The result is a probability.
"""

from __future__ import annotations

from typing import Sequence

from ..prompts import ANSWER_OPEN, NO, YES, CandidateView, render_chat, stage1_messages
from .generation import encode, generate, open_image
from .loading import LoadedModel


class AnswerTokenError(ValueError):
    """The model's tokenizer does not encode the answer words as single tokens after the answer tag."""


def answer_token_ids(tokenizer, prefix: str = ANSWER_OPEN, words: Sequence[str] = (YES, NO)) -> list[int]:
    """The single token id of each word when it follows ``prefix``; raises :class:`AnswerTokenError` otherwise."""
    base = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    ids = []
    for word in words:
        full = tokenizer(prefix + word, add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) != len(base) + 1:
            pieces = tokenizer.convert_ids_to_tokens(full[len(base):]) if full[: len(base)] == base else full
            raise AnswerTokenError(
                f"after {prefix!r} the tokenizer splits {word!r} into {pieces}; stage-1 scoring needs each answer word to be "
                "one token. Use a tokenizer with single-token 'yes'/'no' (all Qwen, Llama and SmolLM tokenizers do)"
            )
        ids.append(full[-1])
    if len(set(ids)) != len(ids):
        raise AnswerTokenError(f"the answer words {list(words)} map to the same token id {ids}")
    return ids


class YesNoScorer:
    """Scores (query, candidate) pairs with a loaded model, ``batch_size`` candidates per forward pass.

    Args:
        loaded: The model, from :func:`mmrag_agent.models.load_model`.
        batch_size: Candidates per forward pass.
        max_text_tokens: Token budget of each candidate's text.
        use_images: Show images to vision-language models (else only their surrogate text). Image size is
            bounded by the processor (``max_pixels`` of :func:`~mmrag_agent.models.load_model`).
        prefix_cache: For text-only models, run the prompt part shared by one query's candidates (system,
            instruction, query) once and reuse its key/value cache for every candidate.
    """

    def __init__(self, loaded: LoadedModel, batch_size: int = 8, max_text_tokens: int = 256, use_images: bool = True,
                 prefix_cache: bool = True) -> None:
        self.loaded = loaded
        self.prefix_cache = prefix_cache
        self.batch_size = batch_size
        self.max_text_tokens = max_text_tokens
        self.use_images = use_images and loaded.is_vision
        self.yes_id, self.no_id = answer_token_ids(loaded.tokenizer)

    def prompt(self, query: str, candidate: CandidateView) -> str:
        messages = stage1_messages(query, candidate, self.use_images, self.loaded.tokenizer, self.max_text_tokens)
        return render_chat(self.loaded.processor, messages, ANSWER_OPEN)

    def score(self, query: str, candidates: Sequence[CandidateView]) -> list[float]:
        """P(relevant) for each candidate, in the given order."""
        prompts = [self.prompt(query, c) for c in candidates]
        if self.prefix_cache and not self.loaded.is_vision and len(prompts) > 1:
            split = _shared_prefix_end(prompts, f"Question: {query}")
            if split is not None and self._splits_cleanly(prompts[0], split):
                return self._score_with_prefix(prompts[0][:split], [p[split:] for p in prompts])
        return self.score_prompts(prompts, [c.image for c in candidates])

    def score_prompts(self, prompts: Sequence[str], images: Sequence) -> list[float]:
        """P(yes) at the end of each prompt (each must end with the pre-filled answer tag)."""
        images = [open_image(im) if self.use_images else None for im in images]
        # Similar lengths share a batch (less padding). An image expands to many tokens, so images batch together.
        order = sorted(range(len(prompts)), key=lambda i: (images[i] is not None, len(prompts[i])))
        scores = [0.0] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            for i, p in zip(batch, self._forward([prompts[i] for i in batch], [images[i] for i in batch])):
                scores[i] = p
        return scores

    def generate(self, prompts: Sequence[str], images: Sequence, max_new_tokens: int = 256, stop: str | None = None) -> list[str]:
        """Greedy continuations of ``prompts`` (``batch_size`` at a time), decoded without special tokens."""
        per_prompt = [[im] if self.use_images and im is not None else [] for im in images]
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            out += generate(self.loaded, prompts[start:start + self.batch_size], per_prompt[start:start + self.batch_size],
                            max_new_tokens=max_new_tokens, stop=stop)
        return out

    def _forward(self, prompts: list[str], images: list) -> list[float]:
        import torch

        loaded = self.loaded
        inputs = encode(loaded, prompts, [[im] if im is not None else [] for im in images])
        with torch.inference_mode():
            logits = loaded.model(**inputs, logits_to_keep=1).logits[:, -1, :]
        pair = logits[:, [self.yes_id, self.no_id]].float()
        return torch.softmax(pair, dim=-1)[:, 0].tolist()


    # -- shared-prefix reuse (text-only models)
    def _splits_cleanly(self, prompt: str, split: int) -> bool:
        """True when tokenizing prefix and suffix apart gives the ids of the whole prompt."""
        encode = lambda text: self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        return encode(prompt[:split]) + encode(prompt[split:]) == encode(prompt)

    def _score_with_prefix(self, prefix: str, suffixes: list[str]) -> list[float]:
        import copy

        import torch

        tokenizer, model, device = self.loaded.tokenizer, self.loaded.model, self.loaded.device
        prefix_ids = tokenizer(prefix, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        suffix_ids = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in suffixes]
        cache_arg = _cache_argument(model)
        with torch.inference_mode():
            out = model(input_ids=prefix_ids, use_cache=True)
            cache = getattr(out, "cache", None) or out.past_key_values
        n_prefix = prefix_ids.shape[1]
        order = sorted(range(len(suffixes)), key=lambda i: len(suffix_ids[i]))
        scores = [0.0] * len(suffixes)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            width = max(len(suffix_ids[i]) for i in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), n_prefix + width), dtype=torch.long)
            mask[:, :n_prefix] = 1
            for row, i in enumerate(batch):  # right padding: each row's last real token keeps its position
                ids[row, : len(suffix_ids[i])] = torch.tensor(suffix_ids[i])
                mask[row, n_prefix: n_prefix + len(suffix_ids[i])] = 1
            batch_cache = copy.deepcopy(cache)
            batch_cache.batch_repeat_interleave(len(batch))
            positions = torch.arange(n_prefix, n_prefix + width).unsqueeze(0).expand(len(batch), -1)
            # Project only the answer positions onto the vocabulary (the LM head over every suffix token costs ~10%).
            last = [len(suffix_ids[i]) - 1 for i in batch]
            keep = sorted(set(last))
            with torch.inference_mode():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                               use_cache=True, logits_to_keep=torch.tensor(keep, device=device), **{cache_arg: batch_cache}).logits
            column = torch.tensor([keep.index(n) for n in last], device=logits.device)
            pair = logits[torch.arange(len(batch), device=logits.device), column][:, [self.yes_id, self.no_id]].float()
            for i, p in zip(batch, torch.softmax(pair, dim=-1)[:, 0].tolist()):
                scores[i] = p
        return scores


def _cache_argument(model) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (earlier): the model's name for a KV cache input."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _shared_prefix_end(prompts: list[str], marker: str) -> int | None:
    """Where the shared prefix ends: right after ``marker`` (the query), if every prompt shares it.

    Splitting between the query's last character and the whitespace after it falls on a pre-tokenizer
    boundary, so the prefix and suffix token ids concatenate to the ids of the whole prompt.
    """
    at = prompts[0].find(marker)
    if at < 0:
        return None
    end = at + len(marker)
    prefix = prompts[0][:end]
    return end if all(p.startswith(prefix) for p in prompts) else None
