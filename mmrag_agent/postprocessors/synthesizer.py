"""The explained answer as a LlamaIndex response synthesizer.

:class:`ExplainableSynthesizer` implements the hooks ``BaseSynthesizer`` defines (``get_response`` /
``aget_response``, and ``_get_metadata_for_response``), so the base class keeps its dispatcher span, events,
empty-response handling and streaming. The nodes themselves (images and evidence included) reach
``get_response`` through ``response_kwargs``.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generator, List, Optional, Sequence

from llama_index.core.base.response.schema import RESPONSE_TYPE
from llama_index.core.callbacks import CallbackManager
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.response_synthesizers.base import BaseSynthesizer
from llama_index.core.schema import BaseNode, NodeWithScore, QueryType, TextNode

from ..explain import build_explained_answer
from ..format import Stage2Output
from ..inference import Stage2Model
from ..models.llm import as_llm
from ..models.loading import LoadedModel
from .base import node_view
from .stage2 import judged_nodes, stage2_model


@dataclass
class _Call:
    """One synthesis: its nodes, the judgement once made, and the response metadata (filled as it becomes known)."""

    nodes: List[NodeWithScore]
    query: str = ""
    judgement: Optional[tuple[tuple[str, ...], Stage2Output]] = None
    metadata: dict = field(default_factory=dict)


_CALL: ContextVar[Optional[_Call]] = ContextVar("mmrag_synthesis", default=None)


class ExplainableSynthesizer(BaseSynthesizer):
    """Answer with the stage-2 model and return its reasoning, ranking and citations with the answer.

    If a :class:`~mmrag_agent.postprocessors.Stage2ListwiseReranker` sharing the same
    :class:`~mmrag_agent.inference.Stage2Model` already judged the nodes, its judgement is used (one generation per
    query); otherwise the model judges the nodes stage 1 kept. The returned ``Response`` has the answer as text,
    ``source_nodes`` ranked ones first, and ``metadata`` with ``explanation`` (an
    :class:`~mmrag_agent.explain.ExplainedAnswer` built from what the nodes carry), ``reasoning``, ``ranking`` and
    ``cited_node_ids`` (node ids), ``answer``, ``raw_output``, ``warnings``, ``format_ok`` and ``used_fallback``.
    With ``streaming=True`` the answer's tokens stream as they are generated; the metadata is complete when the
    stream ends.

    Args:
        model: A :class:`~mmrag_agent.inference.Stage2Model` to share with a reranker, a loaded model, or a name.
        streaming: Stream the answer.
        max_new_tokens: Generation budget (None: the model card's, else 256).
        max_text_tokens: Token budget of each node's text (None: the model card's).
        device: Torch device (loading option).
        dtype: Model dtype (loading option).
        max_pixels: Upper bound on an image's area given to the model (loading option).
        callback_manager: LlamaIndex callback manager.

    Example:
        >>> synth = ExplainableSynthesizer(stage2)
        >>> engine = RetrieverQueryEngine(retriever, node_postprocessors=[stage1], response_synthesizer=synth)
        >>> engine.query("Which city hosted the 1992 Olympics?").metadata["explanation"].reasoning
    """

    def __init__(self, model: str | LoadedModel | Stage2Model = "smollm2", *, streaming: bool = False,
                 max_new_tokens: Optional[int] = None, max_text_tokens: Optional[int] = None, device: Optional[str] = None,
                 dtype: Optional[str] = None, max_pixels: Optional[int] = None, callback_manager: Optional[CallbackManager] = None) -> None:
        self._stage2 = stage2_model(model, "ExplainableSynthesizer", max_new_tokens, max_text_tokens, device=device, dtype=dtype,
                                    max_pixels=max_pixels)
        # BaseSynthesizer wants an LLM (else it reaches for Settings.llm, i.e. OpenAI): the same weights, wrapped.
        super().__init__(llm=as_llm(self._stage2.loaded, max_new_tokens=self._stage2.max_new_tokens),
                         callback_manager=callback_manager or CallbackManager([]), streaming=streaming)

    @property
    def stage2(self) -> Stage2Model:
        return self._stage2

    def _get_prompts(self) -> PromptDictType:
        return {}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        """The stage-2 prompt is fixed by training (:mod:`mmrag_agent.prompts`, the model card); nothing to update."""

    # -- the base class's entry points, with the nodes passed on to get_response
    def synthesize(self, query: QueryType, nodes: List[NodeWithScore], additional_source_nodes: Optional[Sequence[NodeWithScore]] = None,
                   **response_kwargs: Any) -> RESPONSE_TYPE:
        token = _CALL.set(_Call(list(nodes) + list(additional_source_nodes or [])))
        try:
            return super().synthesize(query, nodes, additional_source_nodes, candidate_nodes=list(nodes), **response_kwargs)
        finally:
            _CALL.reset(token)

    async def asynthesize(self, query: QueryType, nodes: List[NodeWithScore],
                          additional_source_nodes: Optional[Sequence[NodeWithScore]] = None, **response_kwargs: Any) -> RESPONSE_TYPE:
        token = _CALL.set(_Call(list(nodes) + list(additional_source_nodes or [])))
        try:
            return await super().asynthesize(query, nodes, additional_source_nodes, candidate_nodes=list(nodes), **response_kwargs)
        finally:
            _CALL.reset(token)

    # -- the hooks BaseSynthesizer defines
    def get_response(self, query_str: str, text_chunks: Sequence[str], candidate_nodes: Optional[List[NodeWithScore]] = None,
                     **response_kwargs: Any) -> str | Generator[str, None, None]:
        """The answer for ``query_str``: from the nodes (``candidate_nodes``), or from plain text chunks."""
        nodes = candidate_nodes if candidate_nodes is not None else [NodeWithScore(node=TextNode(text=t)) for t in text_chunks]
        call = _CALL.get() or _Call(nodes)
        call.query = query_str
        judged = [n for n in nodes if "stage2_position" in n.node.metadata]
        if judged:  # a reranker sharing this Stage2Model judged them: reuse its judgement
            call.judgement = self._stage2.recall(query_str, [n.node.node_id for n in judged])
        if call.judgement is None:
            shown = judged_nodes(nodes)
            if not shown:  # stage 1 kept nothing: no judgement, and the explanation says so
                self._fill_metadata(call)
                answer = call.metadata["explanation"].answer
                return iter([answer]) if self._streaming else answer
            views = [node_view(n.node) for n in shown]
            if self._streaming:
                deltas, pending = self._stage2.stream(query_str, views)
                return self._stream(deltas, pending, call, tuple(v.key for v in views))
            call.judgement = (tuple(v.key for v in views), self._stage2.run(query_str, views))
        self._fill_metadata(call)
        answer = call.metadata["explanation"].answer
        return iter([answer]) if self._streaming else answer

    async def aget_response(self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any) -> str | Generator[str, None, None]:
        return await asyncio.to_thread(self.get_response, query_str, text_chunks, **response_kwargs)

    def _get_metadata_for_response(self, nodes: List[BaseNode]) -> Optional[dict]:
        call = _CALL.get()
        return call.metadata if call is not None else {}

    def _prepare_response_output(self, response_str, source_nodes: List[NodeWithScore]) -> RESPONSE_TYPE:
        """The base's response, its source nodes in the model's ranking (ranked ones first) when it is known."""
        call = _CALL.get()
        if call is not None and call.judgement is not None:
            ranked = call.metadata.get("ranking", [])
            position = {key: i for i, key in enumerate(ranked)}
            source_nodes = sorted(source_nodes, key=lambda n: position.get(n.node.node_id, len(ranked)))
        return super()._prepare_response_output(response_str, source_nodes)

    # -- helpers
    def _stream(self, deltas, pending, call: _Call, keys: tuple) -> Generator[str, None, None]:
        streamed = False
        for delta in deltas:
            streamed = True
            yield delta
        call.judgement = (keys, pending.output)
        self._fill_metadata(call)
        if not streamed:  # no answer at all: say so in plain words, as the non-streaming response does
            yield call.metadata["explanation"].answer

    def _fill_metadata(self, call: _Call) -> None:
        """The response metadata, filled in place (a streaming response holds the same dict)."""
        explained = build_explained_answer(call.query, call.nodes, call.judgement)
        keys, output = call.judgement if call.judgement else ((), None)
        ranking = [keys[p - 1] for p in output.ranking] if output else []
        call.metadata.update(
            explanation=explained, reasoning=explained.reasoning, ranking=ranking,
            cited_node_ids=[keys[p - 1] for p in output.cited] if output else [], answer=output.answer if output else "",
            raw_output=explained.raw_output, warnings=list(explained.warnings),
            format_ok=bool(output and output.format_ok), used_fallback=bool(output and output.used_fallback))
