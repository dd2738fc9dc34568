"""Evaluate a :class:`~mmrag_agent.eval.baselines.Reranker` on rerank examples."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from .baselines import Reranker
from .ranking import query_metrics, ranking_metrics

__all__ = ["RerankEvalResult", "evaluate_reranker", "shuffle_candidates"]


@dataclass
class RerankEvalResult:
    """The outcome of :func:`evaluate_reranker`.

    Attributes:
        reranker: Registry name of the reranker (e.g. ``"bm25"``).
        model: The model it ran (e.g. ``"sentence-transformers/all-MiniLM-L6-v2"``), None for model-free ones.
        n: Number of queries.
        k: Cut-off of NDCG and Recall.
        metrics: Per-query averages: ``{"p@1", "mrr", "ndcg@{k}", "recall@{k}"}``, each in [0, 1].
        per_query: One dict per query: ``qid``, ``ranking`` (ids, best first), ``positives`` and that
            query's metrics.
    """

    reranker: str
    model: Optional[str]
    n: int
    k: int
    metrics: dict[str, float]
    per_query: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_json(self, per_query: bool = False, **extra: Any) -> dict[str, Any]:
        """A JSON-serialisable dict: ``{"reranker", "model", "n", "metrics"}`` plus ``k``.

        Args:
            per_query: Also include the ``per_query`` list (rankings and metrics of every query).
            **extra: More top-level keys (e.g. ``data=...``); one that names a result key raises ValueError.

        Returns:
            E.g. ``{"reranker": "bm25", "model": None, "n": 606, "metrics": {"p@1": 0.61, "mrr": 0.72,
            "ndcg@5": 0.71, "recall@5": 0.82}, "k": 5}``.

        Example:
            >>> json.dumps(result.to_json(data="dev.jsonl"))
        """
        out: dict[str, Any] = {"reranker": self.reranker, "model": self.model, "n": self.n, "metrics": dict(self.metrics), "k": self.k}
        clash = sorted(set(out) & set(extra))
        if clash:
            raise ValueError(f"extra keys {clash} would replace result keys; rename them")
        out.update(extra)
        if per_query:
            out["per_query"] = self.per_query
        return out

    def write_json(self, path: str | Path, per_query: bool = False, **extra: Any) -> Path:
        """Write :meth:`to_json` to ``path`` (parent folders created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(per_query=per_query, **extra), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


def evaluate_reranker(examples: Sequence, reranker: Reranker, k: int = 5, show_progress: bool = True) -> RerankEvalResult:
    """Rank every example's candidates with ``reranker`` and average the ranking metrics per query.

    Args:
        examples: :class:`~mmrag_agent.schema.RerankExample` objects (e.g. from
            :func:`~mmrag_agent.schema.read_rerank_examples`).
        reranker: Any :class:`~mmrag_agent.eval.baselines.Reranker`.
        k: Cut-off of NDCG and Recall (names the metric keys).
        show_progress: Show a tqdm progress bar (on stderr).

    Returns:
        :class:`RerankEvalResult` with the averages and the per-query rankings.

    Raises:
        ValueError: ``examples`` is empty.

    Example:
        >>> examples = read_rerank_examples("dev.jsonl")
        >>> result = evaluate_reranker(examples, make_reranker("bm25"))
        >>> result.metrics["p@1"]
    """
    from tqdm.auto import tqdm

    if not examples:
        raise ValueError("no examples to evaluate")
    rankings, positives, per_query, extras = [], [], [], []
    # rerankers that also select sources and answer (stage 2, pipeline): judge_many(examples) or judge(example)
    judge_many = getattr(reranker, "judge_many", None)
    if judge_many is None and callable(getattr(reranker, "judge", None)):
        judge_many = lambda chunk: [reranker.judge(example) for example in chunk]  # noqa: E731
    step = max(int(getattr(reranker, "query_batch", 1)), 1) if judge_many is not None else 1
    with tqdm(total=len(examples), desc=f"rerank ({reranker.name})", unit="query", disable=not show_progress) as bar:
        for start in range(0, len(examples), step):
            chunk = examples[start:start + step]
            judgements = judge_many(chunk) if judge_many is not None else [None] * len(chunk)
            for example, judgement in zip(chunk, judgements):
                if judgement is None:
                    ranking, extra = reranker.rank(example), {}
                else:
                    ranking, extra = judgement.ranking, answer_metrics(judgement, example)
                rankings.append(ranking)
                positives.append(example.positives)
                extras.append(extra)
                per_query.append({"qid": example.qid, "ranking": ranking, "positives": list(example.positives),
                                  **query_metrics(ranking, example.positives, k), **extra})
            bar.update(len(chunk))
    metrics = ranking_metrics(rankings, positives, k)
    for key in dict.fromkeys(key for extra in extras for key in extra if key not in ("answer", "selected")):
        values = [extra[key] for extra in extras if key in extra]
        metrics[key] = sum(values) / len(values)
    return RerankEvalResult(reranker=reranker.name, model=reranker.model, n=len(examples), k=k, metrics=metrics, per_query=per_query)


def answer_metrics(judgement, example) -> dict[str, Any]:
    """Source F1 of the selected candidates (WebQA retrieval F1) and, with gold answers, MultimodalQA EM/F1."""
    from .answers import mmqa_em_f1
    from .ranking import set_prf

    out: dict[str, Any] = {"selected": list(judgement.selected), "answer": judgement.answer,
                           "source_f1": set_prf(judgement.selected, example.positives).f1}
    if example.answers:
        out["answer_em"], out["answer_f1"] = mmqa_em_f1(judgement.answer, list(example.answers))
    return out


def shuffle_candidates(examples: Sequence, seed: int = 0) -> list:
    """Copies of ``examples`` with each candidate list shuffled, reproducibly per (seed, qid).

    Use it when the data's candidate order carries a position cue (in ``mmqa-image/train.jsonl`` a
    positive comes first in half the queries): rerankers break ties by the given order, so a reranker
    with many tied scores would otherwise inherit that cue.

    Args:
        examples: Rerank examples (not modified).
        seed: Shuffle seed.

    Returns:
        New examples, same order, candidates permuted.
    """
    out = []
    for ex in examples:
        rng = random.Random(int.from_bytes(hashlib.sha256(f"{seed}\x00{ex.qid}".encode()).digest()[:8], "big"))
        candidates = list(ex.candidates)
        rng.shuffle(candidates)
        out.append(ex.model_copy(update={"candidates": candidates}))
    return out
