"""What the stage-1 and stage-2 postprocessors share: node views, evidence keys, rerank events, model options.

Each step writes its evidence into the metadata of the nodes it returns (copies; the input nodes are never
changed), under the keys of :data:`EVIDENCE_KEYS`, hidden from LLM prompts and embeddings. The explained answer
(:func:`mmrag_agent.explain.build_explained_answer`) is read back from those keys, whichever way the components
were assembled.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, List, Optional

from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, ImageNode, MetadataMode, NodeWithScore, QueryBundle

from ..models.loading import LoadedModel, load_model
from ..prompts import CandidateView

dispatcher = get_dispatcher(__name__)

#: Metadata keys the postprocessors write. Stage 1: ``retrieval_score`` (the retriever's score),
#: ``relevance_probability`` (P(relevant)), ``relevance_reasoning`` (reasoning mode), ``stage1_kept`` (False on
#: nodes returned only as evidence, see ``return_dropped``). Stage 2: ``stage2_position`` (its ``[n]`` in the
#: prompt), ``stage2_rank`` (1 = most relevant; None when shown but not ranked), ``stage2_cited``.
STAGE1_KEYS = ["retrieval_score", "relevance_probability", "relevance_reasoning", "stage1_kept", "fused_score"]
STAGE2_KEYS = ["stage2_position", "stage2_rank", "stage2_cited"]
EVIDENCE_KEYS = STAGE1_KEYS + STAGE2_KEYS

#: Loading options and their defaults (they apply only when a model is loaded by name).
LOAD_DEFAULTS: dict[str, Any] = {"device": "cpu", "dtype": "auto", "attn_implementation": None, "adapter": None,
                                 "min_pixels": None, "max_pixels": 448 * 448}


def node_view(node: BaseNode) -> CandidateView:
    """How a LlamaIndex node is shown to the models: image nodes with their pixels and surrogate text."""
    title = node.metadata.get("title") or node.metadata.get("file_name")
    if isinstance(node, ImageNode):
        image = (node.image_path or node.resolve_image()) if (node.image_path or node.image or node.image_url) else None
        return CandidateView(text=node.text or "", title=title, image=image, modality="image", key=node.node_id)
    return CandidateView(text=node.get_content(metadata_mode=MetadataMode.NONE), title=title, modality="text", key=node.node_id)


def annotated_copy(node: BaseNode, evidence: dict) -> BaseNode:
    """A copy of ``node`` with ``evidence`` added to its metadata, kept out of LLM prompts and embeddings."""
    copy = node.model_copy()
    copy.metadata = dict(copy.metadata) | evidence
    copy.excluded_llm_metadata_keys = list(dict.fromkeys(copy.excluded_llm_metadata_keys + EVIDENCE_KEYS))
    copy.excluded_embed_metadata_keys = list(dict.fromkeys(copy.excluded_embed_metadata_keys + EVIDENCE_KEYS))
    return copy


def resolve_model(model: Any, load_options: dict[str, Any], owner: str) -> LoadedModel:
    """``model`` loaded with ``load_options``, or an already loaded model used as it is.

    Raises:
        ValueError: A loaded model was given together with loading options, which would be ignored.
    """
    if isinstance(model, LoadedModel):
        given = {k: v for k, v in load_options.items() if v != LOAD_DEFAULTS[k]}
        if given:
            raise ValueError(f"{owner}: {', '.join(sorted(given))} only apply when loading a model by name, and model= is "
                             "already loaded; pass them to load_model() instead, or pass the model's name")
        return model
    return load_model(model, **load_options)


class ModelReranker(BaseNodePostprocessor):
    """Base of the stage-1 and stage-2 postprocessors: subclasses implement :meth:`_rerank` only.

    It checks the query and emits LlamaIndex's ``ReRankStartEvent`` / ``ReRankEndEvent`` and the callback
    manager's RERANKING event; the base class runs the model in a worker thread for ``apostprocess_nodes``.
    Subclasses define the ``model`` and ``top_n`` fields.
    """

    @abstractmethod
    def _rerank(self, nodes: List[NodeWithScore], query: str) -> List[NodeWithScore]:
        """The nodes to return, best first."""

    def _postprocess_nodes(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        if query_bundle is None:
            raise ValueError(f"{self.class_name()} needs the query: pass query_bundle or query_str")
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n or len(nodes), model_name=self.model))
        if not nodes:
            dispatcher.event(ReRankEndEvent(nodes=[]))
            return []
        with self.callback_manager.event(CBEventType.RERANKING, payload={
            EventPayload.NODES: nodes, EventPayload.MODEL_NAME: self.model,
            EventPayload.QUERY_STR: query_bundle.query_str, EventPayload.TOP_K: self.top_n,
        }) as event:
            kept = self._rerank(nodes, query_bundle.query_str)
            event.on_end(payload={EventPayload.NODES: kept})
        dispatcher.event(ReRankEndEvent(nodes=kept))
        return kept
