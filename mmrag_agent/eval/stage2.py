"""Stage 2 and the full pipeline as rerankers that also select sources and answer (``--reranker stage2|pipeline``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..inference import Stage2Model, descending_order
from ..models.loading import LoadedModel, load_model
from ..prompts import candidate_view
from .baselines import Reranker, register_reranker
from .stage1 import Stage1Reranker


@dataclass
class Judgement:
    """A full ranking of the candidate ids, the selected (cited) sources, and the answer (citations removed)."""

    ranking: list[str]
    selected: list[str]
    answer: str


class Stage2Reranker(Reranker):
    """Stage 2 on the first ``keep`` candidates (``pipeline=False``), or stage 1 then stage 2 (``pipeline=True``).

    The ranking is stage 2's ranked ids, then the other shown candidates (stage-2 fallback order), then the
    candidates stage 2 did not see (stage-1 order in the pipeline, the given order otherwise). The selected
    sources are the ranked ids; the answer is the stage-2 answer without its citations.

    Args:
        model: Model of both stages (default ``"smollm2"``), or an already loaded model.
        pipeline: Run stage 1 first and show stage 2 its ``keep`` best candidates.
        keep: Candidates shown to stage 2 (the method's default K = 5; None: the model card's).
        data_file: The JSONL the examples come from (resolves relative ``image_path``).
        device: Torch device.
        dtype: Model dtype.
        max_new_tokens: Stage-2 generation budget (None: the model card's).
        batch_size: Stage-1 candidates per forward pass.
        query_batch: Queries whose stage-2 generations run as one batch (:meth:`judge_many`).
        first_stage: Pipeline: the retriever stage 1 is fused with (``none``, ``bm25``, ``embedding``; None: the card's).
        fusion_weight: Pipeline: the weight of P(relevant) (None: the card's, else the zero-shot default).
        allow_outside: Let ``image_path`` point outside the data file's folder (e.g. a converted dataset's images).
    """

    def __init__(self, model: str | LoadedModel | None = None, pipeline: bool = False, keep: int | None = None,
                 data_file: str | Path | None = None, device: str = "cpu", dtype: str = "auto", max_new_tokens: int | None = None,
                 batch_size: int = 16, query_batch: int = 8, first_stage: str | None = None,
                 fusion_weight: float | None = None, allow_outside: bool = False) -> None:
        if query_batch < 1:
            raise ValueError(f"query_batch must be >= 1, got {query_batch}")
        loaded = model if isinstance(model, LoadedModel) else load_model(model or "smollm2", device=device, dtype=dtype)
        self.name = "pipeline" if pipeline else "stage2"
        self.model = loaded.name
        self.data_file, self.allow_outside = data_file, allow_outside
        self.stage1 = Stage1Reranker(loaded, data_file=data_file, device=device, batch_size=batch_size, first_stage=first_stage,
                                     fusion_weight=fusion_weight, allow_outside=allow_outside) if pipeline else None
        self.stage2 = Stage2Model(loaded, max_new_tokens=max_new_tokens)
        self.keep = keep or self.stage2.card.candidates_per_prompt or 5
        self.query_batch = query_batch

    @property
    def fusion(self) -> dict | None:
        """Pipeline: what stage 1 fuses (``{"first_stage", "weight"}``); None otherwise."""
        return self.stage1.fusion if self.stage1 is not None else None

    def judge(self, example) -> Judgement:
        return self.judge_many([example])[0]

    def judge_many(self, examples: Sequence[Any]) -> list[Judgement]:
        """Judge several examples: stage 1 per example, then one batched stage-2 generation per ``query_batch``."""
        ordered = [self._stage1_order(example) for example in examples]
        shown = [candidates[: self.keep] for candidates in ordered]
        with_images = self.stage2.loaded.is_vision
        outputs = self.stage2.run_many([(ex.query, [candidate_view(c, self.data_file, with_image=with_images, allow_outside=self.allow_outside)
                                                    for c in s])
                                        for ex, s in zip(examples, shown)], self.query_batch)
        judgements = []
        for candidates, visible, output in zip(ordered, shown, outputs):
            ranked = [visible[i - 1].id for i in output.ranking]
            rest = [c.id for c in candidates if c.id not in set(ranked)]
            judgements.append(Judgement(ranking=ranked + rest, selected=[] if output.used_fallback else ranked,
                                        answer=output.answer_text))
        return judgements

    def _stage1_order(self, example) -> list:
        candidates = list(example.candidates)
        if self.stage1 is not None:  # the fused stage 1, as the filter ranks in use
            candidates = [candidates[i] for i in descending_order(self.stage1.score(example.query, candidates))]
        return candidates

    def score(self, query: str, candidates: Sequence[Any]) -> list[float]:
        raise NotImplementedError("stage 2 ranks a whole list: use judge(example)")

    def rank(self, example) -> list[str]:
        return self.judge(example).ranking


register_reranker("stage2", lambda model=None, **kw: Stage2Reranker(model, pipeline=False, **kw), replace=True)
register_reranker("pipeline", lambda model=None, **kw: Stage2Reranker(model, pipeline=True, **kw), replace=True)
