"""Stage 2: list-wise reranking with reasoning, and the explained answer (SPEC §1.3).

One model call per query: :class:`Stage2Model` shows the query and the K kept candidates as ``[1]..[K]`` and
generates ``<think>`` reasoning, a ``<rank>`` of the relevant ids and an ``<answer>`` citing them. The parsed
result is cached, so a :class:`Stage2ListwiseReranker` and an :class:`ExplainableSynthesizer` sharing one
``Stage2Model`` in a query engine generate once, not twice.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.schema import NodeWithScore

from ..models.generation import generate
from ..models.loading import LoadedModel, load_model
from ..prompts import ANSWER_CLOSE, ANSWER_OPEN, THINK_OPEN, render_chat, stage2_messages
from .base import ModelReranker, annotated_copy
from .stage1 import EVIDENCE_KEYS, node_to_candidate
from .stage2_output import Stage2Output, parse_stage2_output

STAGE2_KEYS = ["stage2_rank", "stage2_cited"]


@dataclass
class Stage2Result:
    """One stage-2 judgement: the parsed output and the nodes it refers to.

    Attributes:
        output: Parsed completion (reasoning, 1-based ranking and citations, answer, raw text, warnings).
        candidates: The nodes shown to the model, in order (``[1]`` is ``candidates[0]``).
    """

    output: Stage2Output
    candidates: List[NodeWithScore]

    @property
    def ranked(self) -> List[NodeWithScore]:
        """The ranked nodes, most relevant first (the cited sources)."""
        return [self.candidates[i - 1] for i in self.output.ranking]

    @property
    def sources(self) -> List[NodeWithScore]:
        """The ranked nodes (the cited sources), then the other candidates stage 2 saw."""
        ranked = self.ranked
        seen = {n.node.node_id for n in ranked}
        return ranked + [n for n in self.candidates if n.node.node_id not in seen]

    @property
    def cited(self) -> List[NodeWithScore]:
        """The nodes the answer cites as ``[n]``, in order of first citation."""
        return [self.candidates[i - 1] for i in self.output.cited]

    def metadata(self) -> dict:
        """Evidence for ``Response.metadata``: reasoning, ranking and citations as node ids, raw output, warnings."""
        return {
            "reasoning": self.output.reasoning,
            "ranking": [n.node.node_id for n in self.ranked],
            "cited_node_ids": [n.node.node_id for n in self.cited],
            "answer": self.output.answer,
            "raw_output": self.output.raw,
            "warnings": list(self.output.warnings),
            "format_ok": self.output.format_ok,
            "used_fallback": self.output.used_fallback,
        }


class Stage2Model:
    """The stage-2 model call: prompt, generate, parse, and remember the result per (query, candidates).

    Args:
        loaded: The model (from :func:`mmrag_agent.models.load_model`).
        max_new_tokens: Generation budget for reasoning, ranking and answer.
        max_text_tokens: Token budget of each candidate's text.
        assistant_prefix: Text the assistant turn starts with (``<think>`` helps small models keep the format).
        cache_size: Results remembered (the reranker and the synthesizer of one query share one).
    """

    def __init__(self, loaded: LoadedModel, max_new_tokens: int = 256, max_text_tokens: int = 256,
                 assistant_prefix: str = THINK_OPEN, cache_size: int = 32) -> None:
        self.loaded = loaded
        self.max_new_tokens = max_new_tokens
        self.max_text_tokens = max_text_tokens
        self.assistant_prefix = assistant_prefix
        self.cache_size = cache_size
        self.generations = 0  # model calls made (a cache hit makes none)
        self._cache: OrderedDict[tuple, Stage2Result] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(query: str, nodes: Sequence[NodeWithScore]) -> tuple:
        return (query, tuple(n.node.node_id for n in nodes))

    def prompt(self, query: str, nodes: Sequence[NodeWithScore]) -> tuple[str, list]:
        """The rendered prompt and the images it shows, in order."""
        candidates = [node_to_candidate(n.node) for n in nodes]
        with_images = self.loaded.is_vision
        messages = stage2_messages(query, candidates, with_images, self.loaded.tokenizer, self.max_text_tokens)
        images = [c.image for c in candidates if with_images and c.image is not None]
        return render_chat(self.loaded.processor, messages, self.assistant_prefix), images

    def lookup(self, query: str, nodes: Sequence[NodeWithScore]) -> Optional[Stage2Result]:
        with self._lock:
            return self._cache.get(self.key(query, nodes))

    def remember(self, query: str, nodes: Sequence[NodeWithScore], result: Stage2Result) -> None:
        with self._lock:
            self._cache[self.key(query, nodes)] = result
            self._cache.move_to_end(self.key(query, nodes))
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def run(self, query: str, nodes: Sequence[NodeWithScore]) -> Stage2Result:
        """The stage-2 judgement of ``nodes`` for ``query`` (generated once, then served from the cache)."""
        return self.run_many([(query, nodes)], batch_size=1)[0]

    def run_many(self, requests: Sequence[tuple[str, Sequence[NodeWithScore]]], batch_size: int = 8) -> list[Stage2Result]:
        """Stage-2 judgements of several ``(query, nodes)`` requests, generated ``batch_size`` prompts at a time.

        Greedy decoding of a left-padded batch gives the same completions as :meth:`run` up to floating-point
        noise, and on a CPU or GPU a batch of small prompts costs little more than one. Cached requests are
        served from the cache.

        Args:
            requests: ``(query, nodes)`` pairs.
            batch_size: Prompts per ``generate`` call (bounded by memory: K images each for a VLM).

        Returns:
            One :class:`Stage2Result` per request, in order.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        results: list[Optional[Stage2Result]] = [self.lookup(q, n) for q, n in requests]
        todo = [i for i, r in enumerate(results) if r is None]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            prompts, images = zip(*(self.prompt(*requests[i]) for i in chunk))
            completions = generate(self.loaded, list(prompts), list(images), max_new_tokens=self.max_new_tokens, stop=ANSWER_CLOSE)
            for i, completion in zip(chunk, completions):
                results[i] = self._finish(*requests[i], completion)
        return results  # type: ignore[return-value]

    def stream_answer(self, query: str, nodes: Sequence[NodeWithScore]) -> tuple[Iterator[str], "_Pending"]:
        """Stream the answer's text as it is generated; the full result lands in ``pending.result`` at the end."""
        from transformers import TextIteratorStreamer

        pending = _Pending()
        cached = self.lookup(query, nodes)
        if cached is not None:
            pending.result = cached
            return iter([cached.output.answer]), pending
        prompt, images = self.prompt(query, nodes)
        streamer = TextIteratorStreamer(self.loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
        worker = threading.Thread(target=lambda: pending.set(generate(self.loaded, [prompt], [images], self.max_new_tokens,
                                                                     stop=ANSWER_CLOSE, streamer=streamer)[0]), daemon=True)
        worker.start()

        def answer_deltas() -> Iterator[str]:
            text, sent = "", 0
            for delta in streamer:
                text += delta
                start = text.find(ANSWER_OPEN)
                if start < 0:
                    continue
                answer = text[start + len(ANSWER_OPEN):].split(ANSWER_CLOSE, 1)[0]
                safe = len(answer) - _partial_tag_suffix(answer)  # hold back what may be the start of </answer>
                if safe > sent:
                    yield answer[sent:safe]
                    sent = safe
            worker.join()
            pending.result = self._finish(query, nodes, pending.completion or text)
            if sent == 0 and pending.result.output.answer:  # no <answer> tag streamed: the parser found the answer
                yield pending.result.output.answer

        return answer_deltas(), pending

    def _finish(self, query: str, nodes: Sequence[NodeWithScore], completion: str) -> Stage2Result:
        self.generations += 1
        output = parse_stage2_output(self.assistant_prefix + completion, len(nodes), fallback_order=list(range(1, len(nodes) + 1)))
        result = Stage2Result(output=output, candidates=list(nodes))
        self.remember(query, nodes, result)
        return result


class _Pending:
    def __init__(self) -> None:
        self.completion: Optional[str] = None
        self.result: Optional[Stage2Result] = None

    def set(self, completion: str) -> None:
        self.completion = completion


def _partial_tag_suffix(text: str, tag: str = ANSWER_CLOSE) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def shared_stage2_model(model: str, loaded: Optional[LoadedModel], stage2: Optional[Stage2Model], **load_kwargs) -> Stage2Model:
    """The ``Stage2Model`` to use: the one given, one over ``loaded``, or one over a newly loaded ``model``."""
    if stage2 is not None:
        return stage2
    max_new_tokens = load_kwargs.pop("max_new_tokens", 256)
    max_text_tokens = load_kwargs.pop("max_text_tokens", 256)
    return Stage2Model(loaded or load_model(model, **load_kwargs), max_new_tokens=max_new_tokens, max_text_tokens=max_text_tokens)


class Stage2ListwiseReranker(ModelReranker):
    """Rerank nodes list-wise with the stage-2 model and keep the ones it ranks (the cited sources).

    The model sees the query and all nodes at once (images as pixels for vision-language models) and writes
    reasoning, a ranking and an answer; this postprocessor keeps the ranked nodes in the model's order. When the
    output has no usable ranking it falls back to the incoming (stage-1) order, with a warning in the metadata.
    Returned nodes carry ``stage2_rank`` (1 = most relevant) and ``stage2_cited``; their score is 1 / rank.

    Example:
        >>> stage2 = Stage2Model(load_model("Qwen/Qwen2-VL-2B-Instruct", device="cuda"))
        >>> engine = index.as_query_engine(node_postprocessors=[stage1, Stage2ListwiseReranker(stage2=stage2)],
        ...                                response_synthesizer=ExplainableSynthesizer(stage2=stage2))
    """

    model: str = Field(default="smollm2", description="Hub id, directory, .gguf, PEFT adapter directory or 'smollm2'.")
    top_n: Optional[int] = Field(default=None, description="Keep at most this many ranked nodes (None: all ranked).")
    device: str = Field(default="cpu", description="Torch device.")
    dtype: str = Field(default="auto", description="Model dtype ('auto': float32 on CPU, bfloat16 on GPU).")
    max_new_tokens: int = Field(default=256, gt=0, description="Generation budget (reasoning, ranking and answer).")
    max_pixels: int = Field(default=448 * 448, gt=0, description="Upper bound on an image's area given to the model.")
    max_text_tokens: int = Field(default=256, gt=0, description="Token budget of each node's text.")

    _stage2: Stage2Model = PrivateAttr()

    def __init__(self, stage2: Optional[Stage2Model] = None, loaded: Optional[LoadedModel] = None, **kwargs: Any) -> None:
        """Args: ``stage2``: a ``Stage2Model`` to share with an ExplainableSynthesizer; ``loaded``: a model to reuse."""
        if stage2 is not None or loaded is not None:
            kwargs.setdefault("model", (stage2.loaded if stage2 else loaded).name)
        super().__init__(**kwargs)
        self._stage2 = shared_stage2_model(self.model, loaded, stage2, device=self.device, dtype=self.dtype, max_pixels=self.max_pixels,
                                           max_new_tokens=self.max_new_tokens, max_text_tokens=self.max_text_tokens)

    @classmethod
    def class_name(cls) -> str:
        return "Stage2ListwiseReranker"

    @property
    def stage2(self) -> Stage2Model:
        return self._stage2

    def _rerank(self, nodes: List[NodeWithScore], query: str) -> List[NodeWithScore]:
        result = self._stage2.run(query, nodes)
        cited = set(result.output.cited)
        kept = []
        for rank, position in enumerate(result.output.ranking[: self.top_n] if self.top_n else result.output.ranking, start=1):
            node = annotated_copy(result.candidates[position - 1].node, {"stage2_rank": rank, "stage2_cited": position in cited},
                                  EVIDENCE_KEYS + STAGE2_KEYS)
            kept.append(NodeWithScore(node=node, score=1.0 / rank))
        # The synthesizer receives these nodes: let it find this judgement instead of generating again.
        self._stage2.remember(query, kept, result)
        return kept
