"""Stage 2 and the full pipeline as rerankers that also select sources and answer (``--reranker stage2|pipeline``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from llama_index.core.schema import ImageNode, NodeWithScore, TextNode

from ..models import load_model
from ..models.scoring import YesNoScorer
from ..postprocessors.stage2 import Stage2Model
from .baselines import Reranker, register_reranker
from .stage1 import _view


@dataclass
class Judgement:
    """A full ranking of the candidate ids, the selected (cited) sources, and the answer."""

    ranking: list[str]
    selected: list[str]
    answer: str


class Stage2Reranker(Reranker):
    """Stage 2 on the first ``keep`` candidates (``pipeline=False``), or stage 1 then stage 2 (``pipeline=True``).

    The ranking is stage 2's ranked ids, then the other shown candidates (stage-2 fallback order), then the
    candidates stage 2 did not see (stage-1 order in the pipeline, the given order otherwise). The selected
    sources are the ranked ids; the answer is the stage-2 answer.

    Args:
        model: Model of both stages (default ``"smollm2"``).
        pipeline: Run stage 1 first and show stage 2 its ``keep`` best candidates.
        keep: Candidates shown to stage 2 (SPEC default K = 5).
        device: Torch device.
        dtype: Model dtype.
        max_new_tokens: Stage-2 generation budget.
        batch_size: Stage-1 candidates per forward pass.
        query_batch: Queries whose stage-2 generations run as one batch (:meth:`judge_many`).
    """

    def __init__(self, model: str | None = None, pipeline: bool = False, keep: int = 5, device: str = "cpu", dtype: str = "auto",
                 max_new_tokens: int = 256, batch_size: int = 16, query_batch: int = 8) -> None:
        self.name = "pipeline" if pipeline else "stage2"
        self.model = model or "smollm2"
        loaded = load_model(self.model, device=device, dtype=dtype)
        self.stage1 = YesNoScorer(loaded, batch_size=batch_size) if pipeline else None
        self.stage2 = Stage2Model(loaded, max_new_tokens=max_new_tokens)
        self.keep = keep
        if query_batch < 1:
            raise ValueError(f"query_batch must be >= 1, got {query_batch}")
        self.query_batch = query_batch

    def judge(self, example) -> Judgement:
        return self.judge_many([example])[0]

    def judge_many(self, examples: Sequence[Any]) -> list[Judgement]:
        """Judge several examples: stage 1 per example, then one batched stage-2 generation per ``query_batch``."""
        ordered = [self._stage1_order(example) for example in examples]
        shown = [candidates[: self.keep] for candidates in ordered]
        results = self.stage2.run_many([(ex.query, [_node(c) for c in s]) for ex, s in zip(examples, shown)], self.query_batch)
        judgements = []
        for candidates, visible, result in zip(ordered, shown, results):
            ranked = [visible[i - 1].id for i in result.output.ranking]
            rest = [c.id for c in candidates if c.id not in set(ranked)]
            judgements.append(Judgement(ranking=ranked + rest, selected=ranked, answer=result.output.answer))
        return judgements

    def _stage1_order(self, example) -> list:
        candidates = list(example.candidates)
        if self.stage1 is not None:
            scores = self.stage1.score(example.query, [_view(c) for c in candidates])
            candidates = [c for _, c in sorted(zip(scores, candidates), key=lambda pair: -pair[0])]
        return candidates

    def score(self, query: str, candidates: Sequence[Any]) -> list[float]:
        raise NotImplementedError("stage 2 ranks a whole list: use judge(example)")

    def rank(self, example) -> list[str]:
        return self.judge(example).ranking


def _node(candidate) -> NodeWithScore:
    view = _view(candidate)
    metadata = {"title": candidate.title} if candidate.title else {}
    if view.image is not None or candidate.modality == "image":
        node = ImageNode(id_=candidate.id, image_path=view.image, text=candidate.text or "", metadata=metadata)
    else:
        node = TextNode(id_=candidate.id, text=candidate.text or "", metadata=metadata)
    return NodeWithScore(node=node, score=None)


register_reranker("stage2", lambda model=None, **kw: Stage2Reranker(model, pipeline=False, **kw), replace=True)
register_reranker("pipeline", lambda model=None, **kw: Stage2Reranker(model, pipeline=True, **kw), replace=True)
