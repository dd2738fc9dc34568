"""Stage 2 as a LlamaIndex node postprocessor: list-wise reranking that keeps the ranked (cited) nodes."""

from __future__ import annotations

from typing import Any, List, Optional

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore

from ..inference import Stage2Model
from ..model_card import stage2_reorders
from ..models.loading import LoadedModel
from .base import LOAD_DEFAULTS, ModelReranker, annotated_copy, node_view, resolve_model


def stage2_model(model: Any, owner: str, max_new_tokens: Optional[int] = None, max_text_tokens: Optional[int] = None,
                 **load_options: Any) -> Stage2Model:
    """A :class:`~mmrag_agent.inference.Stage2Model` given as is, or over ``model`` (a name or a loaded model).

    Raises:
        ValueError: A ``Stage2Model`` was given together with options it already has.
    """
    if isinstance(model, Stage2Model):
        if max_new_tokens is not None or max_text_tokens is not None or any(v is not None for v in load_options.values()):
            raise ValueError(f"{owner}: model= is a Stage2Model, which already has its budgets and model; set them on it")
        return model
    options = {k: v for k, v in load_options.items() if v is not None}
    return Stage2Model(resolve_model(model, {**LOAD_DEFAULTS, **options}, owner), max_new_tokens=max_new_tokens,
                       max_text_tokens=max_text_tokens)


def judged_nodes(nodes: List[NodeWithScore]) -> List[NodeWithScore]:
    """The nodes a stage-2 step judges: those stage 1 kept (nodes returned only as evidence are left out)."""
    return [n for n in nodes if n.node.metadata.get("stage1_kept", True)]


class Stage2ListwiseReranker(ModelReranker):
    """Judge nodes list-wise with the stage-2 model; rerank them by its ranking only where that is known to help.

    The model sees the query and the nodes at once (images as pixels for vision-language models) in the prompt it
    was trained with (its model card), and writes reasoning, a ranking and an answer.

    * **Reordering** (``reorder`` true, or by default when the model card's held-out ``ranking_check`` found stage
      2 ranking better than the order it was given): the ranked nodes are kept in the model's order, score 1 / rank;
      when the output has no usable ranking, the incoming (stage-1) order, with a warning.
    * **Otherwise** (the default for a model without such a check, e.g. any zero-shot model: a reranker that ranks
      worse than its input does harm): the shown nodes keep their incoming order and scores, and stage 2's
      judgement is evidence on them.

    Returned nodes are copies carrying ``stage2_position`` (their ``[n]``), ``stage2_rank`` (1 = most relevant,
    None: not ranked), ``stage2_cited`` and ``stage2_reordered``. Give the same
    :class:`~mmrag_agent.inference.Stage2Model` to an :class:`~mmrag_agent.postprocessors.ExplainableSynthesizer`
    and the model generates once per query.

    Args:
        model: A :class:`~mmrag_agent.inference.Stage2Model` to share, a loaded model, or a name (hub id, directory,
            ``.gguf``, adapter directory, ``"smollm2"``).
        top_n: Keep at most this many ranked nodes (None: all ranked; without reordering, all shown).
        reorder: Let the model's ranking replace the incoming order (None: as the model card's ``ranking_check``
            decided, :func:`~mmrag_agent.model_card.stage2_reorders`; no check: keep the incoming order).
        return_dropped: Also return the nodes shown but not ranked (``stage2_rank=None``) and the nodes stage 1
            returned only as evidence, after the ranked ones, for an explanation.
        max_new_tokens: Generation budget (None: the model card's, else 256).
        max_text_tokens: Token budget of each node's text (None: the model card's).
        device: Torch device (loading option).
        dtype: Model dtype (loading option).
        max_pixels: Upper bound on an image's area given to the model (loading option).
        callback_manager: LlamaIndex callback manager.

    Example:
        >>> stage2 = Stage2Model(load_model("runs/stage2", device="cuda"))
        >>> engine = index.as_query_engine(node_postprocessors=[stage1, Stage2ListwiseReranker(stage2)],
        ...                                response_synthesizer=ExplainableSynthesizer(stage2))
    """

    model: str = Field(description="The model's name: hub id, directory, .gguf file, adapter directory or preset.")
    top_n: Optional[int] = Field(default=None, ge=1, description="Keep at most this many ranked nodes (None: all ranked).")
    return_dropped: bool = Field(default=False, description="Also return unranked and dropped nodes, as evidence.")
    reorder: bool = Field(description="Whether stage 2's ranking replaces the incoming order (default: the model card's "
                                      "held-out ranking_check; none: keep the incoming order).")

    _stage2: Stage2Model = PrivateAttr()

    def __init__(self, model: str | LoadedModel | Stage2Model = "smollm2", *, top_n: Optional[int] = None,
                 return_dropped: bool = False, reorder: Optional[bool] = None, max_new_tokens: Optional[int] = None, max_text_tokens: Optional[int] = None,
                 device: Optional[str] = None, dtype: Optional[str] = None, max_pixels: Optional[int] = None,
                 callback_manager: Optional[CallbackManager] = None) -> None:
        stage2 = stage2_model(model, "Stage2ListwiseReranker", max_new_tokens, max_text_tokens, device=device, dtype=dtype,
                              max_pixels=max_pixels)
        super().__init__(model=stage2.loaded.name, top_n=top_n, return_dropped=return_dropped,
                         reorder=stage2_reorders(stage2.card) if reorder is None else reorder, callback_manager=callback_manager or CallbackManager([]))
        self._stage2 = stage2

    @classmethod
    def class_name(cls) -> str:
        return "Stage2ListwiseReranker"

    @property
    def stage2(self) -> Stage2Model:
        return self._stage2

    def _rerank(self, nodes: List[NodeWithScore], query: str) -> List[NodeWithScore]:
        shown = judged_nodes(nodes)
        if not shown:
            return list(nodes) if self.return_dropped else []
        output = self._stage2.run(query, [node_view(n.node) for n in shown])
        cited = set(output.cited)
        rank_of = {position: rank for rank, position in enumerate(output.ranking, start=1)}

        def judged(position: int, score: Optional[float]) -> NodeWithScore:
            evidence = {"stage2_position": position, "stage2_rank": rank_of.get(position), "stage2_cited": position in cited,
                        "stage2_reordered": self.reorder}
            return NodeWithScore(node=annotated_copy(shown[position - 1].node, evidence), score=score)

        if self.reorder:
            kept = output.ranking[: self.top_n]
            out = [judged(position, 1.0 / rank_of[position]) for position in kept]
        else:  # the incoming order stands; stage 2's ranking is evidence on the nodes
            kept = list(range(1, len(shown) + 1))[: self.top_n]
            out = [judged(position, shown[position - 1].score) for position in kept]
        if self.return_dropped:
            out += [judged(position, shown[position - 1].score) for position in range(1, len(shown) + 1) if position not in kept]
            out += [n for n in nodes if not n.node.metadata.get("stage1_kept", True)]
        return out
