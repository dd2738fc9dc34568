"""Stage 2 and the full pipeline as rerankers that also select sources and answer (``--reranker stage2|pipeline``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..inference import Stage2Model, descending_order
from ..model_card import ModelCard, stage2_reorders
from ..models.loading import LoadedModel, load_model
from ..prompts import candidate_view
from .baselines import Reranker, register_reranker
from .ranking import ranking_metrics
from .stage1 import Stage1Reranker


@dataclass
class Judgement:
    """A full ranking of the candidate ids, the selected (cited) sources, and the answer (citations removed).

    ``ranking`` is the one the reranker returns: ``stage2_ranking`` (stage 2's order of the shown candidates, then
    the rest) when stage 2 reorders, else ``input_ranking`` (the order stage 2 was given).
    """

    ranking: list[str]
    selected: list[str]
    answer: str
    input_ranking: list[str] = field(default_factory=list)
    stage2_ranking: list[str] = field(default_factory=list)


class Stage2Reranker(Reranker):
    """Stage 2 on the first ``keep`` candidates (``pipeline=False``), or stage 1 then stage 2 (``pipeline=True``).

    When stage 2 reorders (``reorder``), the ranking is stage 2's ranked ids, then the other shown candidates
    (stage-2 fallback order), then the candidates stage 2 did not see (stage-1 order in the pipeline, the given
    order otherwise); when it does not, the ranking is the order stage 2 was given. The selected sources are the
    ranked ids; the answer is the stage-2 answer without its citations.

    Args:
        model: The stage-2 model (default ``"smollm2"``), or an already loaded model.
        pipeline: Run stage 1 first and show stage 2 its ``keep`` best candidates.
        stage1_model: Pipeline: the stage-1 model (a ``mmrag train stage1`` output, or loaded); None: ``model``.
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
        reorder: Let stage 2's ranking replace the order it is given (None: only when the stage-2 model card's
            held-out ``ranking_check`` says it ranks better, :func:`~mmrag_agent.model_card.stage2_reorders`).
        card: The stage-2 serving contract to follow instead of the model's own card.
    """

    def __init__(self, model: str | LoadedModel | None = None, pipeline: bool = False, keep: int | None = None,
                 data_file: str | Path | None = None, device: str = "cpu", dtype: str = "auto", max_new_tokens: int | None = None,
                 batch_size: int = 16, query_batch: int = 8, first_stage: str | None = None,
                 fusion_weight: float | None = None, allow_outside: bool = False, stage1_model: str | LoadedModel | None = None,
                 reorder: bool | None = None, card: ModelCard | None = None) -> None:
        if query_batch < 1:
            raise ValueError(f"query_batch must be >= 1, got {query_batch}")
        loaded = model if isinstance(model, LoadedModel) else load_model(model or "smollm2", device=device, dtype=dtype)
        self.name = "pipeline" if pipeline else "stage2"
        self.model = loaded.name
        self.data_file, self.allow_outside = data_file, allow_outside
        if pipeline:
            judge = stage1_model if isinstance(stage1_model, LoadedModel) else \
                load_model(stage1_model, device=device, dtype=dtype) if stage1_model else loaded
            self.stage1 = Stage1Reranker(judge, data_file=data_file, device=device, batch_size=batch_size, first_stage=first_stage,
                                         fusion_weight=fusion_weight, allow_outside=allow_outside)
        else:
            self.stage1 = None
        self.stage2 = Stage2Model(loaded, max_new_tokens=max_new_tokens, card=card)
        self.reorder = stage2_reorders(self.stage2.card) if reorder is None else reorder
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
            stage2_ranking = ranked + [c.id for c in candidates if c.id not in set(ranked)]
            input_ranking = [c.id for c in candidates]
            judgements.append(Judgement(ranking=stage2_ranking if self.reorder else input_ranking,
                                        selected=[] if output.used_fallback else ranked, answer=output.answer_text,
                                        input_ranking=input_ranking, stage2_ranking=stage2_ranking))
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


def ranking_check(reranker: Stage2Reranker, examples: Sequence[Any], k: int = 5) -> dict[str, Any]:
    """Whether stage 2's ranking beats the order it is given, on held-out ``examples``: the model card's ``ranking_check``.

    Each example is judged once; the metrics of stage 2's ranking and of its input order (the fused stage-1 order
    in a pipeline) are computed on the same judgements. ``reorder`` is true only when stage 2 is at least as good
    on both P@1 and MRR and better on one of them: on ties and losses the input order stands.

    Args:
        reranker: A :class:`Stage2Reranker` (a pipeline, to check against stage 1's order).
        examples: Held-out rerank examples.
        k: Cut-off of NDCG@k and Recall@k.

    Returns:
        ``{"queries", "input", "stage2", "reorder", "rule"}``; ``input`` and ``stage2`` hold P@1, MRR, NDCG@k and
        Recall@k.

    Example:
        >>> check = ranking_check(Stage2Reranker("runs/stage2", pipeline=True, stage1_model="runs/stage1"), held_out)
        >>> check["reorder"], check["stage2"]["p@1"] - check["input"]["p@1"]
    """
    if not examples:
        raise ValueError("ranking_check needs at least one held-out example")
    judgements = reranker.judge_many(examples)
    positives = [list(e.positives) for e in examples]
    input_metrics = ranking_metrics([j.input_ranking for j in judgements], positives, k)
    stage2_metrics = ranking_metrics([j.stage2_ranking for j in judgements], positives, k)
    pairs = [(stage2_metrics[m], input_metrics[m]) for m in ("p@1", "mrr")]
    reorder = all(a >= b for a, b in pairs) and any(a > b for a, b in pairs)
    return {"queries": len(examples), "input": input_metrics, "stage2": stage2_metrics, "reorder": reorder,
            "input_order": "fused stage 1" if reranker.stage1 is not None else "as given",
            "rule": "reorder when stage 2's P@1 and MRR are both at least the input order's and one is higher"}


register_reranker("stage2", lambda model=None, **kw: Stage2Reranker(model, pipeline=False, **kw), replace=True)
register_reranker("pipeline", lambda model=None, **kw: Stage2Reranker(model, pipeline=True, **kw), replace=True)
