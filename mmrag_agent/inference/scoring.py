"""Point-wise relevance scoring: P(relevant) from the {yes, no} logits at the answer position.

One forward pass per candidate, batched, no sampling: the prompt ends where the model writes its answer word
(the assistant turn pre-filled as the model card says, then ``<answer>``), and the next-token logits of ``yes``
and ``no`` are normalised against each other. The result is a probability. In reasoning mode the model first
writes ``<think>`` reasoning (generated), and the answer position follows it.
"""

from __future__ import annotations

import re
from typing import Sequence

from ..format import ANSWER_OPEN, NO, THINK_CLOSE, YES
from ..model_card import ModelCard, card_for
from ..models.generation import adds_special_tokens, encode, generate, open_image
from ..models.loading import LoadedModel
from ..prompts import CandidateView, render_chat, stage1_messages


def descending_order(scores: Sequence[float]) -> list[int]:
    """Indices of ``scores`` from the highest down; ties keep the given order; NaN (no usable score) last.

    Example:
        >>> descending_order([0.2, float("nan"), 0.9, 0.5])
        [2, 3, 0, 1]
    """
    keyed = [-s if s == s else float("inf") for s in scores]
    return sorted(range(len(keyed)), key=keyed.__getitem__)


def select_top(scores: Sequence[float], top_n: int | None = None, threshold: float | None = None,
               threshold_on: Sequence[float] | None = None) -> tuple[list[int], set[int]]:
    """The ranking of ``scores`` (:func:`descending_order`) and the indices kept: the ``top_n`` best among those
    whose ``threshold_on`` value (default: the score itself) is >= ``threshold``. NaN ranks last and never passes
    a threshold.

    Example:
        >>> select_top([0.2, float("nan"), 0.9, 0.5], top_n=2)
        ([2, 3, 0, 1], {2, 3})
    """
    order = descending_order(scores)
    values = scores if threshold_on is None else threshold_on
    passing = [i for i in order if threshold is None or values[i] >= threshold]  # False for NaN
    return order, set(passing[:top_n] if top_n is not None else passing)


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

    The prompt is the training prompt of the model's card (:func:`~mmrag_agent.model_card.card_for`): its
    assistant prefix, reasoning mode and text budget; a model without a stage-1 card gets the defaults.

    Args:
        loaded: The model, from :func:`mmrag_agent.models.load_model`.
        batch_size: Candidates per forward pass.
        max_text_tokens: Token budget of each candidate's text (None: the card's).
        use_images: Show images to vision-language models (else only their surrogate text). Image size is
            bounded by the processor (``max_pixels`` of :func:`~mmrag_agent.models.load_model`).
        prefix_cache: Run the prompt part shared by one query's candidates (system, instruction, query) once
            and reuse its key/value cache for every candidate (text models and VLMs; M-RoPE positions for
            Qwen-VL images are computed over the whole sequence).
        reasoning: Generate ``<think>`` reasoning before scoring (None: the card's setting).
        max_new_tokens: Reasoning budget (None: the card's).
        card: The serving contract to follow instead of the model's own card.

    Example:
        >>> scorer = YesNoScorer(load_model("runs/stage1"))
        >>> scorer.score("Which film has a bear?", [CandidateView(text="The Bad News Bears", modality="image")])
        [0.93]
    """

    def __init__(self, loaded: LoadedModel, batch_size: int = 8, max_text_tokens: int | None = None, use_images: bool = True,
                 prefix_cache: bool = True, reasoning: bool | None = None, max_new_tokens: int | None = None,
                 card: ModelCard | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.loaded = loaded
        self.card = card or card_for(loaded.card, stage=1, reasoning=reasoning)
        self.reasoning = self.card.reasoning if reasoning is None else reasoning
        self.prefix_cache = prefix_cache
        self.batch_size = batch_size
        self.max_text_tokens = max_text_tokens or self.card.max_text_tokens
        self.max_new_tokens = max_new_tokens or self.card.max_new_tokens or 256
        self.use_images = use_images and loaded.is_vision
        self.yes_id, self.no_id = answer_token_ids(loaded.tokenizer)

    def messages(self, query: str, candidate: CandidateView) -> list[dict]:
        """The chat messages of one (query, candidate) judgement: those the model was trained on."""
        return stage1_messages(query, candidate, self.use_images, self.loaded.tokenizer, self.max_text_tokens, reasoning=self.reasoning)

    def generation_prompt(self, query: str, candidate: CandidateView) -> str:
        """The rendered training prompt: messages, generation prompt and the card's assistant prefix."""
        return render_chat(self.loaded.processor, self.messages(query, candidate), self.card.assistant_prefix)

    def prompt(self, query: str, candidate: CandidateView) -> str:
        """The scoring prompt (no reasoning): the training prompt continued up to the answer word."""
        text = self.generation_prompt(query, candidate)
        return text if text.endswith(ANSWER_OPEN) else text + ANSWER_OPEN

    def score(self, query: str, candidates: Sequence[CandidateView]) -> list[float]:
        """P(relevant) for each candidate, in the given order (reasoning first in reasoning mode).

        A probability is NaN when the model's logits overflowed; callers rank those last.
        """
        if self.reasoning:
            return self.score_with_reasoning(query, candidates)[0]
        prompts = [self.prompt(query, c) for c in candidates]
        if self.prefix_cache and len(prompts) > 1:
            shared = self._shared_prefix(prompts)
            if len(shared) >= _MIN_SHARED_TOKENS:
                images = [open_image(c.image) if self.use_images else None for c in candidates]
                return self._score_with_prefix(shared, prompts, images)
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

    def score_with_reasoning(self, query: str, candidates: Sequence[CandidateView]) -> tuple[list[float], list[str]]:
        """Reasoning mode: generate each candidate's ``<think>`` reasoning, then P(yes) at the answer after it.

        Returns:
            ``(probabilities, reasonings)``, aligned with ``candidates``.
        """
        prompts = [self.generation_prompt(query, c) for c in candidates]
        images = [[c.image] if self.use_images and c.image is not None else [] for c in candidates]
        thoughts: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            thoughts += generate(self.loaded, prompts[start:start + self.batch_size], images[start:start + self.batch_size],
                                 max_new_tokens=self.max_new_tokens, stop=THINK_CLOSE)
        thoughts = [t.split(THINK_CLOSE, 1)[0] for t in thoughts]
        scored = [p + t + THINK_CLOSE + ANSWER_OPEN for p, t in zip(prompts, thoughts)]
        return self.score_prompts(scored, [c.image for c in candidates]), [re.sub(r"\s+", " ", t).strip() for t in thoughts]

    def _forward(self, prompts: list[str], images: list) -> list[float]:
        import torch

        loaded = self.loaded
        inputs = encode(loaded, prompts, [[im] if im is not None else [] for im in images])
        with torch.inference_mode():
            logits = loaded.model(**inputs, logits_to_keep=1).logits[:, -1, :]
        pair = logits[:, [self.yes_id, self.no_id]].float()
        return torch.softmax(pair, dim=-1)[:, 0].tolist()


    # -- shared-prefix reuse: the tokens every prompt of one query starts with run once
    def _shared_prefix(self, prompts: Sequence[str]) -> list[int]:
        """The longest common prefix of the prompts' token ids, ending before any image token and leaving each
        prompt at least one token of its own. Computed on ids, not text: a BPE merge across the query's end
        ("?\\n\\n" is one token for Qwen) never splits a token."""
        special = adds_special_tokens(self.loaded, prompts)  # tokenize as encode() will
        rows = [self.loaded.tokenizer(p, add_special_tokens=special)["input_ids"] for p in prompts]
        limit = min(len(r) for r in rows) - 1
        media = _media_token_ids(self.loaded)
        n = 0
        while n < limit and rows[0][n] not in media and all(r[n] == rows[0][n] for r in rows):
            n += 1
        return rows[0][:n]

    def _score_with_prefix(self, shared: list[int], prompts: list[str], images: list) -> list[float]:
        import copy

        import torch

        model, device, n_prefix = self.loaded.model, self.loaded.device, len(shared)
        prefix_ids = torch.tensor([shared], device=device)
        with torch.inference_mode():
            out = model(input_ids=prefix_ids, use_cache=True, logits_to_keep=1)  # only its cache is used
            cache = getattr(out, "cache", None) or out.past_key_values
        order = sorted(range(len(prompts)), key=lambda i: (images[i] is not None, len(prompts[i])))
        scores = [0.0] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            inputs = dict(encode(self.loaded, [prompts[i] for i in batch], [[images[i]] if images[i] is not None else [] for i in batch],
                                 padding_side="right"))
            full_ids, mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
            if not bool((full_ids[:, :n_prefix] == prefix_ids).all()):  # the processor tokenized differently: no reuse
                for i, p in zip(batch, self._forward([prompts[i] for i in batch], [images[i] for i in batch])):
                    scores[i] = p
                continue
            inputs.pop("token_type_ids", None)
            positions = self._positions(full_ids, mask, inputs)[..., n_prefix:]
            batch_cache = copy.deepcopy(cache)
            batch_cache.batch_repeat_interleave(len(batch))
            # Right padding: each row's last real token is its answer position. Project only those onto the
            # vocabulary (the LM head over every token costs ~10% of a small model's forward pass).
            last = (mask.sum(dim=1) - 1 - n_prefix).tolist()
            keep = sorted(set(last))
            with torch.inference_mode():
                logits = model(input_ids=full_ids[:, n_prefix:], attention_mask=mask, position_ids=positions, use_cache=True,
                               logits_to_keep=torch.tensor(keep, device=device), **{_cache_argument(model): batch_cache}, **inputs).logits
            column = torch.tensor([keep.index(n) for n in last], device=logits.device)
            pair = logits[torch.arange(len(batch), device=logits.device), column][:, [self.yes_id, self.no_id]].float()
            for i, p in zip(batch, torch.softmax(pair, dim=-1)[:, 0].tolist()):
                scores[i] = p
        return scores

    def _positions(self, ids, mask, inputs: dict):
        """Position ids of whole right-padded prompts: 0..L-1, or Qwen-VL's 3-D M-RoPE positions when images are in."""
        import torch

        type_ids = inputs.pop("mm_token_type_ids", None)
        rope_index = getattr(_base_model(self.loaded.model), "get_rope_index", None)
        if rope_index is None or "image_grid_thw" not in inputs:
            return torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).expand(ids.shape[0], -1)
        return rope_index(ids, mm_token_type_ids=type_ids, image_grid_thw=inputs["image_grid_thw"], attention_mask=mask)[0]


_MIN_SHARED_TOKENS = 8  # below this, a separate prefix pass costs more than it saves


def _media_token_ids(loaded: LoadedModel) -> set[int]:
    """Ids of the image / video placeholder tokens of a VLM (none for a text model)."""
    if not loaded.is_vision:
        return set()
    config = loaded.model.config
    names = ("image_token_id", "image_token_index", "video_token_id", "vision_start_token_id")
    ids = {getattr(config, n, None) for n in names}
    token = getattr(loaded.processor, "image_token", None)
    if isinstance(token, str):
        ids.add(loaded.tokenizer.convert_tokens_to_ids(token))
    return {i for i in ids if isinstance(i, int)}


def _base_model(model):
    """The transformers model under a PEFT wrapper, and its inner multimodal model where there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "model", base)


def _cache_argument(model) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (earlier): the model's name for a KV cache input."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
