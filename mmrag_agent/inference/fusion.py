"""Fusion of stage-1 P(relevant) with the first-stage retrieval score: rank better than either alone.

A reranker exists to rank better than the retriever in front of it. A small stage-1 model can carry signal the
retriever lacks while ranking worse alone; fusing lets that signal count without giving up the retriever's order,
and a weight fitted on held-out questions decides how much (0 when it adds nothing). The fused score is::

    fused = weight * P(relevant) + (1 - weight) * normalised retrieval score

The retrieval scores are min-max normalised per query and per group of comparable scores (the candidates
retrieved from one vector space: text and image scores of a multimodal index are never compared; a group whose
scores are all equal normalises to 1.0). A candidate without a retrieval score is ranked by P(relevant) alone.
``weight`` 1.0 is stage 1 alone, 0.0 the retrieval order. Training fits the weight on held-out questions and
records it in the model card (:func:`fit_fusion_weight`); a model without a fitted weight gets
:data:`ZERO_SHOT_WEIGHT`.
"""

from __future__ import annotations

import math
from typing import Callable, Hashable, Optional, Sequence

__all__ = ["ZERO_SHOT_WEIGHT", "fit_fusion_weight", "fuse", "normalise_per_group"]

#: The fusion weight of a model without a fitted one (zero-shot): the retrieval order decides. Measured on the 606
#: MultimodalQA questions with the offline SmolLM2-135M (``benchmarks/fusion_weights.py``, see the README): no
#: positive weight ranked better than all-MiniLM-L6-v2 or BM25 alone (P@1 0.3795 alone; 0.3762-0.3564 for weights
#: 0.05-0.7), and even breaking the retriever's ties by P(relevant) cost BM25 0.7 points P@1. So an untrained judge
#: never reorders; its P(relevant) is still computed and shown as evidence, and ``top_n`` keeps the retriever's best.
ZERO_SHOT_WEIGHT = 0.0


def normalise_per_group(scores: Sequence[Optional[float]], groups: Optional[Sequence[Hashable]] = None) -> list[Optional[float]]:
    """Min-max normalise ``scores`` within each group (one group without ``groups``); None stays None.

    Example:
        >>> normalise_per_group([0.2, 0.6, 0.4, 9.0], groups=["text", "text", "text", "image"])
        [0.0, 1.0, 0.5, 1.0]
    """
    groups = list(groups) if groups is not None else [0] * len(scores)
    bounds: dict[Hashable, tuple[float, float]] = {}
    for score, group in zip(scores, groups):
        if score is not None and not math.isnan(score):
            low, high = bounds.get(group, (score, score))
            bounds[group] = (min(low, score), max(high, score))
    out: list[Optional[float]] = []
    for score, group in zip(scores, groups):
        if score is None or math.isnan(score):
            out.append(None)
            continue
        low, high = bounds[group]
        out.append((score - low) / (high - low) if high > low else 1.0)
    return out


def fuse(probabilities: Sequence[float], retrieval_scores: Sequence[Optional[float]], weight: float,
         groups: Optional[Sequence[Hashable]] = None) -> list[float]:
    """The fused scores: ``weight * P + (1 - weight) * normalised retrieval score`` (module docstring).

    Args:
        probabilities: Stage-1 P(relevant) per candidate (NaN: no usable score; fused NaN, ranked last).
        retrieval_scores: The first-stage scores (None where a candidate has none).
        weight: Weight of P(relevant), in [0, 1]. At 0 the retrieval order decides (ties keep the given order).
        groups: Per candidate, the group of comparable retrieval scores (e.g. its modality).

    Returns:
        One score per candidate; higher is better.

    Raises:
        ValueError: ``weight`` is outside [0, 1] or the lengths differ.

    Example:
        >>> [round(s, 2) for s in fuse([0.9, 0.1], [0.2, 0.8], weight=0.3)]
        [0.27, 0.73]
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    if len(probabilities) != len(retrieval_scores):
        raise ValueError(f"{len(probabilities)} probabilities for {len(retrieval_scores)} retrieval scores")
    normalised = normalise_per_group(retrieval_scores, groups)
    if weight == 0.0:  # the retrieval order alone (a NaN P does not matter then)
        return [p if r is None else r for p, r in zip(probabilities, normalised)]
    return [p if r is None else weight * p + (1.0 - weight) * r for p, r in zip(probabilities, normalised)]


def fit_fusion_weight(queries: Sequence[tuple[Sequence[float], Sequence[float], Sequence[bool]]],
                      metric: Callable[[Sequence[float], Sequence[bool]], float],
                      grid: Sequence[float] = tuple(i / 20 for i in range(21))) -> tuple[float, dict[float, float]]:
    """The weight in ``grid`` with the best mean ``metric`` over held-out queries (ties: the smaller weight).

    Args:
        queries: Per query, ``(probabilities, retrieval scores, is_positive flags)`` of its candidates.
        metric: Scores one query's fused ranking, e.g. MRR: ``metric(fused_scores, is_positive)``.
        grid: Candidate weights.

    Returns:
        ``(best weight, {weight: mean metric})``.

    Example:
        >>> fit_fusion_weight([([0.9, 0.1], [0.1, 0.9], [True, False])], metric=lambda s, y: float(s[0] > s[1]))[0]
        0.55
    """
    if not queries:
        raise ValueError("no held-out queries to fit the fusion weight on")
    table = {}
    for weight in grid:
        values = [metric(fuse(p, r, weight), labels) for p, r, labels in queries]
        table[weight] = sum(values) / len(values)
    best = max(sorted(table), key=lambda w: (table[w], -w))
    return best, table
