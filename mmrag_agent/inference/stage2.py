"""Stage 2: one generation per query that ranks the K candidates and answers with citations.

:class:`Stage2Model` shows the query and the candidates as ``[1]..[K]`` (images as pixels for vision-language
models) in the prompt the model was trained on (its card's assistant prefix and budgets), generates, and parses
the completion with :func:`mmrag_agent.format.parse_stage2_output`. When the ranking is unusable, the fallback
is the order the candidates came in (the stage-1 order). Results are remembered per (query, candidate keys), so
a reranker and a synthesizer that share one ``Stage2Model`` generate once per query.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Iterable, Iterator, Optional, Sequence

from ..format import ANSWER_CLOSE, ANSWER_OPEN, THINK_OPEN, Stage2Output, parse_stage2_output
from ..model_card import ModelCard, card_for
from ..models.generation import generate
from ..models.loading import LoadedModel
from ..prompts import CandidateView, render_chat, stage2_messages
from .constrained import Stage2Grammar

logger = logging.getLogger(__name__)

Request = tuple[str, Sequence[CandidateView]]


class Stage2Model:
    """The stage-2 model call: prompt, generate, parse, and remember the result per (query, candidates).

    Args:
        loaded: The model (from :func:`mmrag_agent.models.load_model`).
        max_new_tokens: Generation budget for reasoning, ranking and answer (None: the card's, else 256).
        max_text_tokens: Token budget of each candidate's text (None: the card's).
        cache_size: Results remembered (the reranker and the synthesizer of one query share one).
        card: The serving contract to follow instead of the model's own card.
        constrained: Keep generation in the output format (:class:`~mmrag_agent.inference.constrained.Stage2Grammar`):
            reasoning, a ranking of distinct shown ids, an answer citing only shown ids, never the prompt's own
            wording. On by default; needs the assistant prefix ``"<think>"`` or ``""``.

    Example:
        >>> stage2 = Stage2Model(load_model("runs/stage2"))
        >>> out = stage2.run("Which film has a bear?", [CandidateView(text="The Bad News Bears", key="c1")])
        >>> out.ranking, out.answer, out.reasoning
    """

    def __init__(self, loaded: LoadedModel, max_new_tokens: Optional[int] = None, max_text_tokens: Optional[int] = None,
                 cache_size: int = 32, card: Optional[ModelCard] = None, constrained: bool = True) -> None:
        self.loaded = loaded
        self.card = card or card_for(loaded.card, stage=2)
        self.max_new_tokens = max_new_tokens or self.card.max_new_tokens or 256
        self.max_text_tokens = max_text_tokens or self.card.max_text_tokens
        self.cache_size = cache_size
        if constrained and self.card.assistant_prefix not in ("", THINK_OPEN):
            logger.warning("constrained stage-2 decoding is off: it starts after '' or %r, and this model's assistant prefix is %r",
                           THINK_OPEN, self.card.assistant_prefix)
            constrained = False
        self.constrained = constrained
        self.generations = 0  # completions parsed (a cache hit makes none)
        self._cache: OrderedDict[tuple, Stage2Output] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def assistant_prefix(self) -> str:
        return self.card.assistant_prefix

    def messages(self, query: str, candidates: Sequence[CandidateView]) -> list[dict]:
        """The chat messages of one judgement: those the model was trained on."""
        return stage2_messages(query, candidates, self.loaded.is_vision, self.loaded.tokenizer, self.max_text_tokens)

    def prompt(self, query: str, candidates: Sequence[CandidateView]) -> tuple[str, list]:
        """The rendered prompt (with the card's assistant prefix) and the images it shows, in order."""
        images = [c.image for c in candidates if self.loaded.is_vision and c.image is not None]
        return render_chat(self.loaded.processor, self.messages(query, candidates), self.assistant_prefix), images

    def run(self, query: str, candidates: Sequence[CandidateView]) -> Stage2Output:
        """The stage-2 judgement of ``candidates`` for ``query`` (generated once, then served from the cache)."""
        return self.run_many([(query, candidates)], batch_size=1)[0]

    def run_many(self, requests: Sequence[Request], batch_size: int = 8) -> list[Stage2Output]:
        """Judgements of several ``(query, candidates)`` requests, generated ``batch_size`` prompts at a time.

        Greedy decoding of a left-padded batch gives the same completions as :meth:`run` up to floating-point
        noise, and a batch of small prompts costs little more than one. Cached requests are served from the
        cache.

        Args:
            requests: ``(query, candidates)`` pairs.
            batch_size: Prompts per ``generate`` call (bounded by memory: K images each for a VLM).

        Returns:
            One :class:`~mmrag_agent.format.Stage2Output` per request, in order.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        results: list[Optional[Stage2Output]] = [self.lookup(q, c) for q, c in requests]
        todo = [i for i, r in enumerate(results) if r is None]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            prompts, images = zip(*(self.prompt(*requests[i]) for i in chunk))
            completions = generate(self.loaded, list(prompts), list(images), max_new_tokens=self.max_new_tokens, stop=ANSWER_CLOSE,
                                   logits_processors=self._processors(list(prompts), [len(requests[i][1]) for i in chunk]))
            for i, completion in zip(chunk, completions):
                results[i] = self.finish(*requests[i], completion)
        return results  # type: ignore[return-value]

    def stream(self, query: str, candidates: Sequence[CandidateView]) -> tuple[Iterator[str], "PendingResult"]:
        """Stream the answer's text as it is generated; the parsed result lands in ``pending.output`` at the end.

        Only the ``<answer>`` text is streamed: never a tag, never a partial ``</answer>``.
        """
        from transformers import TextIteratorStreamer

        pending = PendingResult()
        cached = self.lookup(query, candidates)
        if cached is not None:
            pending.output = cached
            return iter([cached.answer] if cached.answer else []), pending
        prompt, images = self.prompt(query, candidates)
        streamer = TextIteratorStreamer(self.loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
        processors = self._processors([prompt], [len(candidates)])

        def work() -> None:
            try:
                pending.completion = generate(self.loaded, [prompt], [images], self.max_new_tokens, stop=ANSWER_CLOSE,
                                              streamer=streamer, logits_processors=processors)[0]
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
                pending.error = exc
                streamer.end()

        worker = threading.Thread(target=work, daemon=True)
        worker.start()

        def deltas() -> Iterator[str]:
            sent = yield from answer_deltas(streamer, self.assistant_prefix)
            worker.join()
            if pending.error is not None:
                raise pending.error
            pending.output = self.finish(query, candidates, pending.completion or "")
            if not sent and pending.output.answer:  # no <answer> tag streamed: the parser found the answer
                yield pending.output.answer

        return deltas(), pending

    def finish(self, query: str, candidates: Sequence[CandidateView], completion: str) -> Stage2Output:
        """Parse a completion (after the assistant prefix) and remember it; the fallback is the incoming order."""
        self.generations += 1
        output = parse_stage2_output(self.assistant_prefix + completion, len(candidates))
        self.remember(query, candidates, output)
        return output

    # -- the cache: results per (query, candidate keys); candidates without keys are never cached
    def lookup(self, query: str, candidates: Sequence[CandidateView]) -> Optional[Stage2Output]:
        key = _key(query, candidates)
        with self._lock:
            return self._cache.get(key) if key else None

    def recall(self, query: str, keys: Sequence[str]) -> Optional[tuple[tuple[str, ...], Stage2Output]]:
        """The latest judgement of ``query`` whose candidates include every key of ``keys``: ``(shown keys in
        prompt order, output)``, or None. A synthesizer after a reranker finds the reranker's judgement this way."""
        wanted = set(keys)
        with self._lock:
            for (cached_query, shown), output in reversed(self._cache.items()):
                if cached_query == query and wanted <= set(shown):
                    return shown, output
        return None

    def remember(self, query: str, candidates: Sequence[CandidateView], output: Stage2Output) -> None:
        key = _key(query, candidates)
        if key is None:
            return
        with self._lock:
            self._cache[key] = output
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _processors(self, prompts: list[str], counts: list[int]) -> list:
        if not self.constrained:
            return []
        return [Stage2Grammar(self.loaded.tokenizer, counts, self.max_new_tokens, self.assistant_prefix)]


class PendingResult:
    """Filled when a stream ends: the raw ``completion`` and the parsed ``output`` (or the ``error`` raised)."""

    def __init__(self) -> None:
        self.completion: Optional[str] = None
        self.output: Optional[Stage2Output] = None
        self.error: Optional[BaseException] = None


def _key(query: str, candidates: Sequence[CandidateView]) -> Optional[tuple]:
    keys = tuple(c.key for c in candidates)
    return None if any(k is None for k in keys) else (query, keys)


def answer_deltas(chunks: Iterable[str], prefix: str = ""):
    """The text of the ``<answer>`` section of a streamed completion, as it grows: never a tag, never a partial
    ``</answer>``, no surrounding whitespace; together the deltas equal the parser's ``answer``. Returns (as the
    generator's value) whether anything was yielded.

    Example:
        >>> list(answer_deltas(["<think>x</think><ans", "wer> Par", "is [1]</an", "swer>"]))
        ['Par', 'is [1]']
    """
    text, sent = prefix, 0
    for chunk in chunks:
        text += chunk
        start = text.find(ANSWER_OPEN)
        if start < 0:
            continue
        answer = text[start + len(ANSWER_OPEN):].split(ANSWER_CLOSE, 1)[0].lstrip()
        # hold back what may be the start of </answer>, and trailing whitespace (the parser strips it)
        safe = len(answer[:len(answer) - _partial_tag_suffix(answer)].rstrip())
        if safe > sent:
            yield answer[sent:safe]
            sent = safe
    return sent > 0


def _partial_tag_suffix(text: str, tag: str = ANSWER_CLOSE) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
