"""Ranking metrics over candidate ids: P@1, MRR, NDCG@k, Recall@k, and set precision/recall/F1.

Conventions shared by the per-query functions (all return floats in [0, 1]):

* ``ranked`` is a sequence of candidate ids, best first; ``positives`` any iterable of the relevant ids
  (binary relevance; duplicates in ``positives`` are ignored).
* An id that is not a positive (including an id that is not a candidate at all) is non-relevant.
* A **repeated id counts as wrong**: it keeps its position but earns no gain the second time, so a ranking
  cannot score twice for one positive.
* A query with **no positives** scores 0 on every ranking metric (there is nothing to rank first).
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple, Sequence

from ..inference.scoring import descending_order

__all__ = [
    "SetPRF", "mrr", "ndcg_at_k", "precision_at_1", "query_metrics", "ranking_from_scores", "ranking_metrics",
    "recall_at_k", "set_prf",
]


def _gains(ranked: Sequence[str], positives: set[str]) -> list[int]:
    seen: set[str] = set()
    gains = []
    for cid in ranked:
        gains.append(1 if cid in positives and cid not in seen else 0)
        seen.add(cid)
    return gains


def precision_at_1(ranked: Sequence[str], positives: Iterable[str]) -> float:
    """1.0 when the top-ranked id is a positive, else 0.0 (also for an empty ranking).

    Example:
        >>> precision_at_1(["b", "a"], {"a"})
        0.0
    """
    return float(bool(ranked) and ranked[0] in set(positives))


def mrr(ranked: Sequence[str], positives: Iterable[str]) -> float:
    """Reciprocal rank of the first positive (1-based), 0.0 when no positive is ranked. No cut-off.

    Example:
        >>> mrr(["b", "a", "c"], {"a", "c"})
        0.5
    """
    for rank, gain in enumerate(_gains(ranked, set(positives)), start=1):
        if gain:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], positives: Iterable[str], k: int = 5) -> float:
    """NDCG@k with binary gains and a log2 discount.

    ``DCG = sum_{i<=k} rel_i / log2(i + 1)``; the ideal DCG puts ``min(|positives|, k)`` positives first.

    Args:
        ranked: Ids, best first.
        positives: Relevant ids.
        k: Cut-off (>= 1).

    Returns:
        DCG / ideal DCG, or 0.0 without positives.

    Example:
        >>> round(ndcg_at_k(["b", "a"], {"a"}, k=5), 4)  # 1/log2(3)
        0.6309
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    pos = set(positives)
    if not pos:
        return 0.0
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(_gains(ranked[:k], pos)))
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(pos), k)))
    return dcg / ideal


def recall_at_k(ranked: Sequence[str], positives: Iterable[str], k: int = 5) -> float:
    """Fraction of the positives found in the top k (repeats count once); 0.0 without positives.

    Example:
        >>> recall_at_k(["a", "x", "b"], {"a", "b", "c"}, k=2)
        0.3333333333333333
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    pos = set(positives)
    if not pos:
        return 0.0
    return sum(_gains(ranked[:k], pos)) / len(pos)


class SetPRF(NamedTuple):
    """``(precision, recall, f1)`` of a selected id set."""

    precision: float
    recall: float
    f1: float


def set_prf(selected: Iterable[str], positives: Iterable[str], repeats_are_wrong: bool = False) -> SetPRF:
    """Set precision, recall and F1 of the selected sources against the positives (WebQA retrieval F1).

    ``precision = |S & P| / |S|``, ``recall = |S & P| / |P|``, ``F1 = 2PR / (P + R)`` (0 when P + R = 0).

    Empty-set edge cases, chosen so that only a correct selection scores:

    * nothing selected and no positives: ``(1, 1, 1)`` (correctly selected nothing);
    * nothing selected, some positives: ``(0, 0, 0)``;
    * something selected, no positives: ``(0, 0, 0)`` (every selection is wrong; recall, 0/0, is 0).

    Args:
        selected: Selected ids (order irrelevant).
        positives: Relevant ids.
        repeats_are_wrong: Count each repetition of an id as one more wrong selection (|S| is then the
            length of ``selected``), as stage-2 rewards do for generated rankings; default: set semantics.

    Returns:
        :class:`SetPRF` ``(precision, recall, f1)``.

    Example:
        >>> set_prf(["a", "x"], ["a", "b", "c"]).f1  # P = 1/2, R = 1/3, F1 = 2/5
        0.4
    """
    sel_list = list(selected)
    sel, pos = set(sel_list), set(positives)
    if not sel_list or not pos:
        ok = float(not sel_list and not pos)
        return SetPRF(ok, ok, ok)
    hits = len(sel & pos)
    precision = hits / (len(sel_list) if repeats_are_wrong else len(sel))
    recall = hits / len(pos)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return SetPRF(precision, recall, f1)


def query_metrics(ranked: Sequence[str], positives: Iterable[str], k: int = 5) -> dict[str, float]:
    """The per-query ranking metrics: ``{"p@1", "mrr", f"ndcg@{k}", f"recall@{k}"}``.

    Example:
        >>> query_metrics(["a", "b"], {"a"}, k=5)["mrr"]
        1.0
    """
    pos = set(positives)
    ranked = list(ranked)
    return {"p@1": precision_at_1(ranked, pos), "mrr": mrr(ranked, pos), f"ndcg@{k}": ndcg_at_k(ranked, pos, k),
            f"recall@{k}": recall_at_k(ranked, pos, k)}


def ranking_metrics(ranked_ids_per_query: Sequence[Sequence[str]], positives_per_query: Sequence[Iterable[str]], k: int = 5) -> dict[str, float]:
    """Average the per-query metrics of :func:`query_metrics` over queries (each query weighs the same).

    Args:
        ranked_ids_per_query: One ranking (ids, best first) per query.
        positives_per_query: The positives of each query, aligned with the rankings.
        k: Cut-off of NDCG and Recall; it names the keys.

    Returns:
        ``{"p@1": ..., "mrr": ..., "ndcg@5": ..., "recall@5": ...}`` (for k = 5).

    Raises:
        ValueError: The two sequences differ in length, or are empty.

    Example:
        >>> ranking_metrics([["a", "b"], ["b", "a"]], [{"a"}, {"a"}])["p@1"]
        0.5
    """
    if len(ranked_ids_per_query) != len(positives_per_query):
        raise ValueError(f"{len(ranked_ids_per_query)} rankings but {len(positives_per_query)} positive sets; give one of each per query")
    if not ranked_ids_per_query:
        raise ValueError("no queries to average over")
    totals: dict[str, float] = {}
    for ranked, pos in zip(ranked_ids_per_query, positives_per_query):
        for name, value in query_metrics(ranked, pos, k).items():
            totals[name] = totals.get(name, 0.0) + value
    return {name: total / len(ranked_ids_per_query) for name, total in totals.items()}


def ranking_from_scores(ids: Sequence[str], scores: Sequence[float]) -> list[str]:
    """Ids sorted by descending score; ties keep the given order (stable). NaN scores rank last.

    Example:
        >>> ranking_from_scores(["a", "b", "c"], [0.1, 0.5, 0.5])
        ['b', 'c', 'a']
    """
    if len(ids) != len(scores):
        raise ValueError(f"{len(scores)} scores for {len(ids)} ids")
    return [ids[i] for i in descending_order(scores)]
