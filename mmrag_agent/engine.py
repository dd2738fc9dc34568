"""The end-to-end engine: a LlamaIndex ``RetrieverQueryEngine`` over the stage-1 and stage-2 components.

retrieve text and images -> :class:`~mmrag_agent.postprocessors.Stage1RelevanceFilter` ->
:class:`~mmrag_agent.postprocessors.Stage2ListwiseReranker` -> :class:`~mmrag_agent.postprocessors.ExplainableSynthesizer`;
the same components a LlamaIndex app can use one at a time, and one evidence builder
(:func:`mmrag_agent.explain.build_explained_answer`) reading what the nodes carry.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any, List, Optional

from llama_index.core.base.response.schema import RESPONSE_TYPE, StreamingResponse
from llama_index.core.callbacks import CallbackManager
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle

from .explain import ExplainedAnswer, build_explained_answer
from .inference import Stage2Model
from .models.loading import LoadedModel, load_model
from .postprocessors import ExplainableSynthesizer, Stage1RelevanceFilter, Stage2ListwiseReranker

_TIMINGS: ContextVar[Optional[dict]] = ContextVar("mmrag_timings", default=None)


class MMRAGQueryEngine(RetrieverQueryEngine):
    """Explainable multimodal RAG over an index: retrieve -> stage 1 -> stage 2 -> answer with evidence.

    Text and images are retrieved separately (``k_text`` + ``k_image``; their scores come from different spaces
    and are never compared). Stage 1 scores *every* candidate with P(relevant) and keeps the ``keep`` best (and/or
    those with P >= ``threshold``): the others travel on as evidence only (``return_dropped``), so the
    explanation shows every candidate. Stage 2 sees the kept candidates together and writes reasoning, a ranking
    and the answer citing ``[n]``. ``query`` returns a LlamaIndex ``Response`` whose ``metadata["explanation"]``
    is the :class:`~mmrag_agent.explain.ExplainedAnswer`; :meth:`explain` returns it directly.

    Args:
        retriever: A retriever of text and image nodes (e.g. a ``MultiModalVectorStoreIndex`` retriever).
        stage1: The stage-1 filter; its ``top_n`` / ``threshold`` decide what stage 2 sees.
        stage2: The stage-2 model, shared by the reranker and the synthesizer (one generation per query).
        streaming: Stream the answer's tokens (``StreamingResponse``; stage 2 then runs in the synthesizer).
        callback_manager: LlamaIndex callback manager.

    Example:
        >>> engine = MMRAGQueryEngine.from_defaults(index, model="smollm2")
        >>> response = engine.query("How did revenue change over the year?")
        >>> response.metadata["explanation"].reasoning
    """

    def __init__(self, retriever, stage1: Stage1RelevanceFilter, stage2: Stage2Model, streaming: bool = False,
                 callback_manager: Optional[CallbackManager] = None) -> None:
        self.stage1, self.stage2, self.streaming = stage1, stage2, streaming
        # the reranker passes on what it did not rank (and what stage 1 passed on as evidence): the explanation shows
        # every candidate stage 2 saw; the synthesizer reuses its judgement
        postprocessors = [stage1] if streaming else [stage1, Stage2ListwiseReranker(stage2, return_dropped=True)]
        super().__init__(retriever, response_synthesizer=ExplainableSynthesizer(stage2, streaming=streaming),
                         node_postprocessors=postprocessors, callback_manager=callback_manager or CallbackManager([]))

    @classmethod
    def from_defaults(cls, index, model: str | LoadedModel = "smollm2", stage1_model: str | LoadedModel | None = None,
                      stage2_model: str | LoadedModel | None = None, device: str = "cpu", dtype: str = "auto",
                      max_pixels: int = 448 * 448, batch_size: int = 8, max_new_tokens: Optional[int] = None, k_text: int = 20,
                      k_image: int = 20, keep: Optional[int] = 5, threshold: Optional[float] = None, score_all: bool = True,
                      streaming: bool = False, **kwargs: Any) -> "MMRAGQueryEngine":
        """Build the engine over ``index``, loading each model once (both stages share it when it is the same).

        Args:
            index: The multimodal index (e.g. from :func:`mmrag_agent.indexing.build_index`).
            model: Model of both stages unless ``stage1_model`` / ``stage2_model`` are given (e.g. the stage-1 and
                stage-2 training output directories, whose model cards set the prompts).
            device: Torch device.
            dtype: Model dtype.
            max_pixels: Image area bound.
            batch_size: Stage-1 candidates per forward pass.
            max_new_tokens: Stage-2 generation budget (None: the model card's, else 256).
            k_text: Text candidates retrieved.
            k_image: Image candidates retrieved.
            keep: Candidates stage 1 passes to stage 2 (None: no cap).
            threshold: Minimum P(relevant) to pass stage 1 (None: no threshold).
            score_all: Score every candidate, keep ``keep``: the others are returned as evidence (shown in the
                explanation, never to stage 2). False: stage 1 drops them as in any LlamaIndex app.
            streaming: Stream the answer.
            **kwargs: Passed to the engine (``callback_manager``).
        """
        names = {"stage1": stage1_model or model, "stage2": stage2_model or model}
        loaded: dict[Any, LoadedModel] = {}
        for name in names.values():
            key = id(name) if isinstance(name, LoadedModel) else name
            if key not in loaded:
                loaded[key] = name if isinstance(name, LoadedModel) else load_model(name, device=device, dtype=dtype, max_pixels=max_pixels)
        pick = {stage: loaded[id(n) if isinstance(n, LoadedModel) else n] for stage, n in names.items()}
        stage1 = Stage1RelevanceFilter(pick["stage1"], top_n=keep, threshold=threshold, return_dropped=score_all, batch_size=batch_size)
        stage2 = Stage2Model(pick["stage2"], max_new_tokens=max_new_tokens)
        retriever = index.as_retriever(similarity_top_k=k_text, image_similarity_top_k=k_image)
        return cls(retriever, stage1, stage2, streaming=streaming, **kwargs)

    def explain(self, query: str) -> ExplainedAnswer:
        """Run the pipeline and return the answer with all its evidence (non-streaming)."""
        response = self.query(query)
        if isinstance(response, StreamingResponse):
            for _ in response.response_gen:
                pass
        return response.metadata["explanation"]

    # -- timings of each step, attached to the explanation
    def retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        timings = _TIMINGS.get()
        started = time.perf_counter()
        nodes = self._retriever.retrieve(query_bundle)
        if timings is not None:
            timings["retrieve"] = time.perf_counter() - started
        for postprocessor in self._node_postprocessors:
            started = time.perf_counter()
            nodes = postprocessor.postprocess_nodes(nodes, query_bundle=query_bundle)
            if timings is not None:
                timings["stage1" if postprocessor is self.stage1 else "stage2"] = time.perf_counter() - started
        return nodes

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        if not query_bundle.query_str.strip():
            raise ValueError("the question is empty; ask something")
        timings: dict[str, float] = {}
        token = _TIMINGS.set(timings)
        try:
            started = time.perf_counter()
            response = super()._query(query_bundle)
        finally:
            _TIMINGS.reset(token)
        return self._with_explanation(query_bundle.query_str, response, timings, started)

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        import asyncio

        return await asyncio.to_thread(self._query, query_bundle)

    def _with_explanation(self, query: str, response: RESPONSE_TYPE, timings: dict, started: float) -> RESPONSE_TYPE:
        if response.metadata is None or "explanation" not in response.metadata:  # nothing retrieved
            response.metadata = (response.metadata or {}) | {"explanation": build_explained_answer(query, [], None, timings)}
            if not isinstance(response, StreamingResponse):
                response.response = response.metadata["explanation"].answer
            return response
        before = time.perf_counter() - started - sum(timings.values())
        if not isinstance(response, StreamingResponse):
            response.metadata["explanation"].timings = {**timings, "stage2": timings.get("stage2", 0.0) + max(before, 0.0)}
            return response
        stream = response.response_gen

        def timed():
            began = time.perf_counter()
            yield from stream
            response.metadata["explanation"].timings = {**timings, "stage2": time.perf_counter() - began}

        response.response_gen = timed()
        return response

    def as_tool(self, name: str = "multimodal_document_search",
                description: str = "Answers a question from the indexed documents and images, citing its sources "
                                   "and explaining its reasoning. Input: the question."):
        """This engine as a LlamaIndex ``QueryEngineTool`` that an agent can call."""
        from llama_index.core.tools import QueryEngineTool

        return QueryEngineTool.from_defaults(query_engine=self, name=name, description=description)
