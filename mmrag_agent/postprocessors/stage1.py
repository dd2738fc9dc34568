"""Stage 1: the point-wise relevance filter, as a LlamaIndex node postprocessor."""

from __future__ import annotations

import logging
import math
from typing import List, Optional

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore

from ..inference import YesNoScorer, select_top
from ..inference.fusion import ZERO_SHOT_WEIGHT, fuse
from ..models.loading import LoadedModel
from .base import ModelReranker, annotated_copy, node_view, resolve_model

logger = logging.getLogger(__name__)


class Stage1RelevanceFilter(ModelReranker):
    """Score each retrieved node alone with a (fine-tuned) model and keep the relevant ones.

    P(relevant) is the softmax over the logits of ``yes`` and ``no`` at the answer position, one forward pass per
    node, batched. Image nodes are shown as pixels to vision-language models and as their text surrogate
    to text-only models. The prompt is the one the model was trained with (its model card). Nodes are ranked by
    the **fused score** ``w * P(relevant) + (1 - w) * retrieval score`` (min-max normalised per query and per
    modality, :mod:`mmrag_agent.inference.fusion`), so that the filter never throws away what the retriever knew:
    ``w`` is the weight training fitted (model card), else :data:`~mmrag_agent.inference.fusion.ZERO_SHOT_WEIGHT`
    (0: the retrieval order; an untrained judge never reorders), or ``fusion_weight``. Returned nodes are copies carrying
    ``relevance_probability``, ``retrieval_score`` and ``fused_score`` in their metadata, and the fused score as
    their score. A NaN probability (overflowed logits) is ranked last, with a warning.

    Args:
        model: Hub id, directory (e.g. a ``mmrag train stage1`` output), ``.gguf`` file, PEFT adapter directory,
            ``"smollm2"``, or an already loaded model (:func:`~mmrag_agent.models.load_model`) to share.
        top_n: Keep at most this many nodes (None: no cap).
        threshold: Keep only nodes with P(relevant) >= threshold (None: no threshold).
        fusion_weight: Weight of P(relevant) in the fused score, in [0, 1] (1: stage 1 alone; None: the model
            card's fitted weight, else the zero-shot default).
        return_dropped: Score every candidate, keep ``top_n``: the nodes not kept are returned too, after the
            kept ones, with ``stage1_kept=False`` in their metadata, as evidence for an explanation. Stage-2
            components judge only the kept ones.
        batch_size: Nodes per forward pass.
        max_text_tokens: Token budget of each node's text (None: the model card's, else 256).
        reasoning: Generate ``<think>`` reasoning before scoring (None: as the model was trained).
        max_new_tokens: Reasoning budget (None: the model card's).
        device: Torch device, e.g. ``"cpu"`` or ``"cuda:0"`` (loading option).
        dtype: ``"auto"`` (float32 on CPU, bfloat16 on GPU), ``"float32"``, ``"float16"``, ``"bfloat16"`` (loading option).
        attn_implementation: e.g. ``"sdpa"`` (loading option).
        max_pixels: Upper bound on an image's area given to the model (loading option).
        min_pixels: Lower bound on an image's area, Qwen-VL processors (loading option).
        adapter: A PEFT adapter directory applied on top of ``model`` (loading option).
        callback_manager: LlamaIndex callback manager.

    Example:
        >>> stage1 = Stage1RelevanceFilter("Qwen/Qwen2-VL-2B-Instruct", top_n=5, device="cuda")
        >>> engine = index.as_query_engine(llm=llm, node_postprocessors=[stage1])
    """

    model: str = Field(description="The model's name: hub id, directory, .gguf file, adapter directory or preset.")
    top_n: Optional[int] = Field(default=5, ge=1, description="Keep at most this many nodes (None: keep all that pass).")
    threshold: Optional[float] = Field(default=None, ge=0.0, le=1.0, description="Keep nodes with P(relevant) >= this.")
    return_dropped: bool = Field(default=False, description="Also return the nodes not kept (stage1_kept=False), as evidence.")
    fusion_weight: float = Field(ge=0.0, le=1.0, description="Weight of P(relevant) in the fused score (1: stage 1 alone).")
    batch_size: int = Field(default=8, gt=0, description="Nodes per forward pass.")
    max_text_tokens: int = Field(description="Token budget of each node's text.")
    reasoning: bool = Field(description="Generate <think> reasoning before scoring; returned as relevance_reasoning.")
    max_new_tokens: int = Field(description="Generation budget of the reasoning mode.")

    _loaded: LoadedModel = PrivateAttr()
    _scorer: YesNoScorer = PrivateAttr()

    def __init__(self, model: str | LoadedModel = "smollm2", *, top_n: Optional[int] = 5, threshold: Optional[float] = None,
                 return_dropped: bool = False, fusion_weight: Optional[float] = None, batch_size: int = 8, max_text_tokens: Optional[int] = None,
                 reasoning: Optional[bool] = None, max_new_tokens: Optional[int] = None, device: str = "cpu", dtype: str = "auto",
                 attn_implementation: Optional[str] = None, max_pixels: int = 448 * 448, min_pixels: Optional[int] = None,
                 adapter: Optional[str] = None, callback_manager: Optional[CallbackManager] = None) -> None:
        loaded = resolve_model(model, dict(device=device, dtype=dtype, attn_implementation=attn_implementation, adapter=adapter,
                                           min_pixels=min_pixels, max_pixels=max_pixels), "Stage1RelevanceFilter")
        scorer = YesNoScorer(loaded, batch_size=batch_size, max_text_tokens=max_text_tokens, reasoning=reasoning,
                             max_new_tokens=max_new_tokens)
        if fusion_weight is None:
            fusion_weight = scorer.card.fusion["weight"] if scorer.card.fusion else ZERO_SHOT_WEIGHT
        super().__init__(model=loaded.name, top_n=top_n, threshold=threshold, return_dropped=return_dropped,
                         fusion_weight=fusion_weight, batch_size=batch_size,
                         max_text_tokens=scorer.max_text_tokens, reasoning=scorer.reasoning, max_new_tokens=scorer.max_new_tokens,
                         callback_manager=callback_manager or CallbackManager([]))
        self._loaded, self._scorer = loaded, scorer

    @classmethod
    def class_name(cls) -> str:
        return "Stage1RelevanceFilter"

    @property
    def scorer(self) -> YesNoScorer:
        """The scorer (the model, its card and the prompt it builds)."""
        return self._scorer

    def _rerank(self, nodes: List[NodeWithScore], query: str) -> List[NodeWithScore]:
        views = [node_view(n.node) for n in nodes]
        reasonings: Optional[List[str]] = None
        if self.reasoning:
            probabilities, reasonings = self._scorer.score_with_reasoning(query, views)
        else:
            probabilities = self._scorer.score(query, views)
        nan = sum(math.isnan(p) for p in probabilities)
        if nan:
            logger.warning("stage 1: P(relevant) is NaN for %d of %d candidates (the model's logits overflowed; try dtype="
                           "'float32'); they are ranked last", nan, len(probabilities))
        retrieval = [n.score for n in nodes]
        fused = fuse(probabilities, retrieval, self.fusion_weight, groups=[v.modality for v in views])
        order, kept = select_top(fused, self.top_n, self.threshold, threshold_on=probabilities)  # the threshold is on P
        out = []
        for i in order:
            if i not in kept and not self.return_dropped:
                continue
            evidence = {"retrieval_score": retrieval[i], "relevance_probability": probabilities[i], "fused_score": fused[i],
                        "stage1_kept": i in kept}
            if reasonings is not None:
                evidence["relevance_reasoning"] = reasonings[i]
            out.append(NodeWithScore(node=annotated_copy(nodes[i].node, evidence), score=fused[i]))
        out.sort(key=lambda n: not n.node.metadata["stage1_kept"])  # stable: kept first, each part best first
        return out
