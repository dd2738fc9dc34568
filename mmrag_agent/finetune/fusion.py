"""The fusion weight of a trained stage-1 model, fitted on held-out questions and written to its model card.

Serving ranks by ``w * P(relevant) + (1 - w) * normalised retrieval score`` (:mod:`mmrag_agent.inference.fusion`).
After training, :func:`fit_fusion` scores every held-out question's candidates once with the trained model and once
with the first-stage retriever (all-MiniLM-L6-v2 or BM25, as ``mmrag eval rerank`` runs them), and fits ``w`` on a
grid. Fitting on the questions one reports flatters the fusion, so the reported numbers are **cross-fitted**: the
held-out questions fall into folds (by a hash of the qid), each fold is ranked with the weight fitted on the other
folds, and the metrics are the means over all questions so ranked. Serving gets the weight fitted on all of them.

The card's ``fusion`` then reads::

    {"weight": 0.35, "first_stage": "embedding", "first_stage_model": "sentence-transformers/all-MiniLM-L6-v2",
     "fitted_on": {"questions": 121, "metric": "mrr", "folds": 10, "fold_weights": [0.3, 0.4, ...], "grid": [0.0, 0.05, ..., 1.0]},
     "metrics": {"stage1": {...}, "first_stage": {...}, "fused": {...}, "fused_in_sample": {...}},
     "other_first_stages": {"bm25": {"weight": ..., "fold_weights": [...], "metrics": {...}}}}

where ``fused`` is cross-fitted and ``fused_in_sample`` uses the served weight on the questions it was fitted on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..eval.ranking import ranking_from_scores, ranking_metrics
from ..inference.fusion import fit_fusion_weight, fuse, normalise_per_group

__all__ = ["FUSION_GRID", "QueryScores", "add_listwise_offsets", "cross_fit", "first_stage_retrievers", "fit_fusion", "query_metric", "retriever_scores"]

#: The weights of P(relevant) tried: 0, 0.05, ..., 0.9, then 0.91, ..., 1. A small model's P(relevant) often spans
#: a tenth of [0, 1] within a question while the min-max normalised retrieval score spans all of it, so the weights
#: where both count lie close to 1.
FUSION_GRID = tuple(round(i / 20, 2) for i in range(19)) + tuple(round(0.9 + i / 100, 2) for i in range(1, 11))


@dataclass
class QueryScores:
    """One held-out question's candidates with their stage-1 probabilities and first-stage scores.

    Attributes:
        qid: The question.
        ids: Candidate ids, in the order scored (ties keep it).
        positives: The relevant ids.
        probabilities: Stage-1 P(relevant) per candidate.
        retrieval: Per retriever name, its score per candidate.
    """

    qid: str
    ids: list[str]
    positives: list[str]
    probabilities: list[float]
    retrieval: dict[str, list[float]] = field(default_factory=dict)

    @property
    def flags(self) -> list[bool]:
        positives = set(self.positives)
        return [i in positives for i in self.ids]


def query_metric(name: str):
    """``metric(scores, is_positive) -> float`` of one query for :func:`~mmrag_agent.inference.fusion.fit_fusion_weight`:
    ``"p@1"`` or ``"mrr"`` of the ranking by descending score (ties keep the given order).

    Example:
        >>> query_metric("mrr")([0.2, 0.9, 0.5], [False, False, True])
        0.5
    """
    if name not in ("p@1", "mrr"):
        raise ValueError(f"fusion metric must be p@1 or mrr, got {name!r}")

    def metric(scores: Sequence[float], flags: Sequence[bool]) -> float:
        ranking = ranking_from_scores(list(range(len(scores))), list(scores))
        rank = next((r for r, i in enumerate(ranking, start=1) if flags[i]), None)
        if rank is None:
            return 0.0
        return float(rank == 1) if name == "p@1" else 1.0 / rank

    return metric


def _metrics(rows: Sequence[QueryScores], scores_of, k: int = 5) -> dict[str, float]:
    rankings = [ranking_from_scores(r.ids, scores_of(r)) for r in rows]
    return {**ranking_metrics(rankings, [r.positives for r in rows], k), "n": len(rows)}


def _fold(qid: str, folds: int, seed: int) -> int:
    return int(hashlib.sha256(f"fusion:{seed}:{qid}".encode()).hexdigest(), 16) % folds


def cross_fit(rows: Sequence[QueryScores], retriever: str, folds: int = 10, metric: str = "mrr",
              grid: Sequence[float] = FUSION_GRID, seed: int = 0) -> dict[str, Any]:
    """Fit the weight of P(relevant) against ``retriever`` with cross-fitting, and on all ``rows`` for serving.

    Args:
        rows: Held-out questions with ``retrieval[retriever]`` scores.
        retriever: The first stage's name in ``rows[i].retrieval``.
        folds: Folds of questions (by a hash of the qid and ``seed``); each is ranked with the weight fitted on the rest.
        metric: ``"mrr"`` or ``"p@1"``, the per-query metric the weight maximises (ties: the smaller weight).
        grid: The weights tried.
        seed: Seed of the fold assignment.

    Returns:
        ``{"weight", "fold_weights", "metrics": {"first_stage", "fused", "fused_in_sample"}}``; ``fused`` is the
        cross-fitted ranking's metrics over all questions.

    Raises:
        ValueError: Fewer questions than folds.

    Example:
        >>> fitted = cross_fit(rows, "embedding", folds=2)
        >>> fitted["metrics"]["fused"]["p@1"] - fitted["metrics"]["first_stage"]["p@1"]
    """
    if len(rows) < folds:
        raise ValueError(f"{len(rows)} held-out questions cannot be split into {folds} folds")
    measure = query_metric(metric)

    def fit(subset: Sequence[QueryScores]) -> float:
        return fit_fusion_weight([(r.probabilities, r.retrieval[retriever], r.flags) for r in subset], measure, grid)[0]

    assignment = {r.qid: _fold(r.qid, folds, seed) for r in rows}
    if len(set(assignment.values())) < folds:  # a hash left a fold empty (tiny sets): deal the questions out in turn
        assignment = {r.qid: i % folds for i, r in enumerate(sorted(rows, key=lambda r: _fold(r.qid, 1_000_003, seed)))}
    fold_weights = [fit([r for r in rows if assignment[r.qid] != f]) for f in range(folds)]
    weight = fit(rows)
    return {"weight": weight, "fold_weights": fold_weights, "metrics": {
        "first_stage": _metrics(rows, lambda r: r.retrieval[retriever]),
        "fused": _metrics(rows, lambda r: fuse(r.probabilities, r.retrieval[retriever], fold_weights[assignment[r.qid]])),
        "fused_in_sample": _metrics(rows, lambda r: fuse(r.probabilities, r.retrieval[retriever], weight))}}


def first_stage_retrievers(first_stage: str, device: str = "cpu", others: Sequence[str] = ("embedding", "bm25")) -> dict:
    """The retrievers the fusion is fitted against, built before training starts so that a missing model fails fast.

    Args:
        first_stage: ``"embedding"`` (all-MiniLM-L6-v2), ``"bm25"`` or ``"none"`` (no retriever).
        device: Device of the embedding model.
        others: Retrievers also fitted for comparison when available (one that cannot be built is left out).

    Returns:
        ``{name: Reranker}``, ``first_stage`` first; empty for ``"none"``.

    Raises:
        ValueError: ``first_stage``'s retriever cannot be built (one line, with the fix).
    """
    from ..eval.baselines import make_reranker

    if first_stage == "none":
        return {}
    out = {}
    for name in [first_stage] + [n for n in others if n != first_stage]:
        try:
            out[name] = make_reranker(name, device=device) if name == "embedding" else make_reranker(name)
        except Exception as exc:  # noqa: BLE001 - any failure to build it (a missing model, a missing package)
            if name == first_stage:
                raise ValueError(f"first_stage={name!r}: cannot build the retriever ({' '.join(str(exc).split())}); install "
                                 "mmrag-agent[offline] for all-MiniLM-L6-v2, or use first_stage bm25 or none") from None
    return out


def retriever_scores(rows: Sequence[QueryScores], examples: Sequence, retrievers: dict) -> None:
    """Add each retriever's scores on every question's candidates to ``rows[i].retrieval[name]``."""
    by_qid = {e.qid: e for e in examples}
    for name, retriever in retrievers.items():
        for row in rows:
            example = by_qid[row.qid]
            row.retrieval[name] = [float(s) for s in retriever.score(example.query, example.candidates)]


def add_listwise_offsets(records: list[dict], examples: Sequence, retriever, scale: float) -> None:
    """Set each stage-1 training record's ``listwise_offset``: ``scale`` x the first-stage retriever's score of its
    candidate, min-max normalised over its question's candidates as serving normalises it (``sft_listwise_retrieval``).

    Args:
        records: Stage-1 records with ``qid`` and ``candidate_id`` (:func:`~.datasets.stage1_records`); changed in place.
        examples: The training examples the records come from.
        retriever: A reranker with ``score(query, candidates)`` (the first stage, e.g. all-MiniLM-L6-v2).
        scale: The offset of the retriever's best candidate over its worst, in units of the yes-no logit margin.

    Example:
        >>> add_listwise_offsets(records, train_examples, make_reranker("bm25"), 2.0)
        >>> max(r["listwise_offset"] for r in records)
        2.0
    """
    by_qid = {str(e.qid): e for e in examples}
    offsets: dict[tuple[str, str], float] = {}
    for qid in dict.fromkeys(str(r["qid"]) for r in records):
        example = by_qid[qid]
        normalised = normalise_per_group([float(s) for s in retriever.score(example.query, example.candidates)])
        offsets.update({(qid, str(c.id)): scale * n for c, n in zip(example.candidates, normalised)})
    for record in records:
        record["listwise_offset"] = offsets[(str(record["qid"]), str(record["candidate_id"]))]


def fit_fusion(rows: Sequence[QueryScores], examples: Sequence, first_stage: str, retrievers: dict | None = None, folds: int = 10,
               metric: str = "mrr", seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """The model card's ``fusion`` record (module docstring) from the trained model's held-out probabilities.

    Args:
        rows: Held-out questions scored by the trained stage 1 (:class:`QueryScores`).
        examples: The same held-out examples (the retrievers score their candidates).
        first_stage: ``"embedding"``, ``"bm25"`` or ``"none"`` (stage 1 alone: weight 1.0, nothing fitted).
        retrievers: From :func:`first_stage_retrievers` (None: built here); the ones other than ``first_stage`` are
            fitted too, for comparison (``other_first_stages``).
        folds: Cross-fitting folds; at most one per question (fewer questions: one fold each).
        metric: The metric the weight maximises.
        seed: Seed of the fold assignment.
        device: Device of the embedding model when the retrievers are built here.

    Returns:
        The ``fusion`` dict; the weight is the one serving uses.
    """
    stage1 = _metrics(rows, lambda r: r.probabilities)
    if first_stage == "none":
        return {"weight": 1.0, "first_stage": "none", "first_stage_model": None,
                "fitted_on": {"questions": len(rows)}, "metrics": {"stage1": stage1}}
    retrievers = retrievers if retrievers is not None else first_stage_retrievers(first_stage, device)
    retriever_scores(rows, examples, retrievers)
    names = list(retrievers)
    folds = max(2, min(folds, len(rows)))
    fits = {name: cross_fit(rows, name, folds, metric, FUSION_GRID, seed) for name in names}
    main = fits[first_stage]
    return {"weight": main["weight"], "first_stage": first_stage, "first_stage_model": retrievers[first_stage].model,
            "fitted_on": {"questions": len(rows), "metric": metric, "folds": folds, "fold_weights": main["fold_weights"],
                          "seed": seed, "grid": list(FUSION_GRID)},
            "metrics": {"stage1": stage1, **main["metrics"]},
            "other_first_stages": {name: {"weight": fits[name]["weight"], "first_stage_model": retrievers[name].model,
                                          "fold_weights": fits[name]["fold_weights"], "metrics": fits[name]["metrics"]}
                                   for name in names if name != first_stage}}
