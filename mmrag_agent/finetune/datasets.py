"""Training sets of the two GRPO stages built from rerank examples, in TRL's conversational format.

* :func:`split_by_question`: a deterministic train / held-out split by qid (no query in both).
* :func:`stage1_units` / :func:`stage1_records`: point-wise units ``(query, candidate, yes|no)``: every candidate of
  every question with class-balancing weights, or balanced by sampling hard negatives from the same query's
  candidates; prompts from :func:`mmrag_agent.prompts.stage1_messages`.
* :func:`stage2_units` / :func:`stage2_records`: list-wise units (query + K candidates in several shuffled
  orders); prompts from :func:`mmrag_agent.prompts.stage2_messages`; gold ids follow each order.
* :func:`to_dataset`: records to a :class:`datasets.Dataset` that ``trl.GRPOTrainer`` accepts.

Candidates are shown through :func:`mmrag_agent.prompts.candidate_view` (image paths resolved against the data
file), the same view and the same prompt builders serving uses, so a trained model is served its training prompt.

Every random choice uses a generator seeded by ``(seed, qid)``, so a query's records do not depend on the
other queries or on their order. Every column other than ``prompt`` reaches the reward functions as a
keyword argument (``label`` and ``weight`` for stage 1; ``gold_ids``, ``answers``, ``keywords``, ``qtype``,
``candidate_ids`` for stage 2).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..format import NO, YES
from ..prompts import candidate_view, stage1_messages, stage2_messages
from ..schema import Candidate, RerankExample

__all__ = ["Stage1Unit", "Stage2Unit", "split_by_question", "stage1_records", "stage1_units", "stage2_records", "stage2_units",
           "to_dataset"]


@dataclass
class Stage1Unit:
    """One point-wise training unit: a query, one of its candidates, whether it is relevant (``"yes"``/``"no"``), and
    its loss weight (1.0 when the classes were balanced by sampling)."""

    example: RerankExample
    candidate: Candidate
    label: str
    weight: float = 1.0


@dataclass
class Stage2Unit:
    """One list-wise unit: a query's K chosen candidates in one shown order (``order[0]`` is ``[1]``)."""

    example: RerankExample
    order: list[Candidate]
    permutation: int

    @property
    def gold_ids(self) -> list[int]:
        """1-based positions of the positives in this order, ascending."""
        positives = set(self.example.positives)
        return [i for i, c in enumerate(self.order, start=1) if c.id in positives]


def split_by_question(examples: Sequence[RerankExample], held_out_fraction: float = 0.2,
                      seed: int = 0) -> tuple[list[RerankExample], list[RerankExample]]:
    """Split examples into train and held-out sets by qid, deterministically.

    The distinct qids are ordered by a hash of ``(seed, qid)`` and the first ``round(n * held_out_fraction)``
    are held out, so the split depends only on the set of qids and the seed (not on file order), and
    repeated qids always land on the same side.

    Args:
        examples: The examples.
        held_out_fraction: Fraction of distinct qids to hold out, in [0, 1].
        seed: Changes which qids are held out.

    Returns:
        ``(train, held_out)``, each in the input order.

    Raises:
        ValueError: ``held_out_fraction`` outside [0, 1].

    Example:
        >>> train, held_out = split_by_question(read_rerank_examples("shared/data/mmqa-image/train.jsonl"))
        >>> len(train), len(held_out)
        (485, 121)
    """
    if not 0.0 <= held_out_fraction <= 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1], got {held_out_fraction}")
    qids = sorted({e.qid for e in examples}, key=lambda q: hashlib.sha256(f"{seed}:{q}".encode()).hexdigest())
    held = set(qids[: round(len(qids) * held_out_fraction)])
    return [e for e in examples if e.qid not in held], [e for e in examples if e.qid in held]


def stage1_units(examples: Sequence[RerankExample], negatives_per_positive: int | None = 1, seed: int = 0) -> list[Stage1Unit]:
    """Stage-1 units of the questions that have a positive, the classes balanced one of two ways.

    * ``negatives_per_positive=N`` (balanced by sampling): every positive of a query, plus ``min(len(positives) * N,
      #non-positives)`` hard negatives sampled without replacement from its other candidates; weight 1.0 each.
    * ``negatives_per_positive=None`` (balanced by weighting): **every** candidate of every query, weighted so that
      each class carries half of the total weight and the mean weight is 1.0 (``n / (2 * n_yes)`` for a positive,
      ``n / (2 * n_no)`` for a negative): nothing the data holds is thrown away.

    A query's units are shuffled (seeded by ``(seed, qid)``). Queries without positives are skipped.

    Raises:
        ValueError: ``negatives_per_positive`` < 0.

    Example:
        >>> units = stage1_units(examples, negatives_per_positive=None)
        >>> round(sum(u.weight for u in units) / len(units), 6)
        1.0
    """
    if negatives_per_positive is not None and negatives_per_positive < 0:
        raise ValueError(f"negatives_per_positive must be >= 0 or None (every candidate), got {negatives_per_positive}")
    units: list[Stage1Unit] = []
    for ex in examples:
        positives = set(ex.positives)
        if not positives:
            continue
        rng = _rng(seed, "stage1", ex.qid)
        pos = [c for c in ex.candidates if c.id in positives]
        pool = [c for c in ex.candidates if c.id not in positives]
        neg = pool if negatives_per_positive is None else rng.sample(pool, min(len(pos) * negatives_per_positive, len(pool)))
        chosen = [(c, YES) for c in pos] + [(c, NO) for c in neg]
        rng.shuffle(chosen)
        units += [Stage1Unit(ex, cand, label) for cand, label in chosen]
    if negatives_per_positive is None and units:
        counts = {label: sum(u.label == label for u in units) for label in (YES, NO)}
        present = [label for label in (YES, NO) if counts[label]]
        for unit in units:
            unit.weight = len(units) / (len(present) * counts[unit.label])
    return units


def stage1_records(examples: Sequence[RerankExample], negatives_per_positive: int | None = 1, seed: int = 0,
                   with_images: bool = False, reasoning: bool = False, *, data_file: str | Path | None = None,
                   tokenizer=None, max_text_tokens: int | None = 256) -> list[dict]:
    """Stage-1 training records of :func:`stage1_units`, in TRL's conversational prompt format.

    Args:
        examples: Rerank examples.
        negatives_per_positive: Negatives sampled per positive (default 1: a 1:1 balance where the pool allows);
            None: every candidate, class-balancing weights in ``"weight"`` (:func:`stage1_units`).
        seed: Seed of the sampling and shuffling.
        with_images: Show image candidates' images (vision-language models): the record gets ``"image"`` (the
            file path) and its prompt an image part. Candidates without ``image_path`` stay text-only.
        reasoning: Ask for ``<think>`` reasoning before the answer.
        data_file: The JSONL file the examples were read from; relative ``image_path`` values are resolved
            against its folder (required with ``with_images``).
        tokenizer: Cuts candidate text to ``max_text_tokens`` tokens (no cut without it).
        max_text_tokens: Token budget of the candidate text.

    Returns:
        Records ``{"prompt": [system, user messages], "label": "yes" | "no", "weight": ..., "qid": ...,
        "candidate_id": ...}`` (plus ``"image"`` when an image is shown), grouped by query.

    Raises:
        ValueError: ``negatives_per_positive`` < 0.
        mmrag_agent.schema.DatasetError: ``with_images`` and a candidate's image is missing or outside the folder.

    Example:
        >>> recs = stage1_records(read_rerank_examples("train.jsonl"))
        >>> recs[0]["label"], recs[0]["prompt"][1]["role"]
        ('no', 'user')
    """
    records: list[dict] = []
    for unit in stage1_units(examples, negatives_per_positive, seed):
        view = candidate_view(unit.candidate, data_file, with_image=with_images)
        record = {"prompt": stage1_messages(unit.example.query, view, with_image=with_images, tokenizer=tokenizer,
                                            max_text_tokens=max_text_tokens, reasoning=reasoning),
                  "label": unit.label, "weight": unit.weight, "qid": unit.example.qid, "candidate_id": unit.candidate.id}
        if view.image is not None:
            record["image"] = view.image
        records.append(record)
    return records


def stage2_units(examples: Sequence[RerankExample], k: int = 5, permutations: int = 3, seed: int = 0) -> list[Stage2Unit]:
    """Stage-2 units: each query with K candidates shown in several distinct orders.

    Per query: up to ``k`` positives (a seeded sample when there are more), filled up to ``k`` with hard
    negatives sampled from its other candidates (fewer when the pool is smaller). The same K candidates are
    then shown in ``min(permutations, K!)`` distinct shuffled orders, so that position is not a cue. Queries
    without positives are skipped.

    Raises:
        ValueError: ``k`` < 1 or ``permutations`` < 1.
    """
    if k < 1 or permutations < 1:
        raise ValueError(f"k and permutations must be >= 1, got k={k}, permutations={permutations}")
    units: list[Stage2Unit] = []
    for ex in examples:
        positives = set(ex.positives)
        if not positives:
            continue
        rng = _rng(seed, "stage2", ex.qid)
        pos = [c for c in ex.candidates if c.id in positives]
        pool = [c for c in ex.candidates if c.id not in positives]
        chosen = rng.sample(pos, min(k, len(pos)))
        chosen += rng.sample(pool, min(k - len(chosen), len(pool)))
        units += [Stage2Unit(ex, order, p) for p, order in enumerate(_distinct_orders(chosen, permutations, rng))]
    return units


def stage2_records(examples: Sequence[RerankExample], k: int = 5, permutations: int = 3, seed: int = 0,
                   with_images: bool = False, *, data_file: str | Path | None = None, tokenizer=None,
                   max_text_tokens: int | None = 256) -> list[dict]:
    """Stage-2 training records of :func:`stage2_units`, in TRL's conversational prompt format.

    Args:
        examples: Rerank examples.
        k: Candidates per prompt (K).
        permutations: Distinct candidate orders per query.
        seed: Seed of the selection and the orders.
        with_images: Show image candidates' images (vision-language models): the record gets ``"images"``
            (file paths, in the order of the prompt's image parts).
        data_file: The JSONL file the examples were read from (resolves relative ``image_path``).
        tokenizer: Cuts each candidate's text to ``max_text_tokens`` tokens (no cut without it).
        max_text_tokens: Token budget of each candidate's text.

    Returns:
        Records ``{"prompt", "gold_ids", "answers", "keywords", "qtype", "candidate_ids", "qid",
        "permutation"}`` (plus ``"images"`` with ``with_images``). ``gold_ids`` are the 1-based positions of
        the positives in that order (ascending); ``candidate_ids`` the original ids in the shown order.

    Raises:
        ValueError: ``k`` < 1 or ``permutations`` < 1.
        mmrag_agent.schema.DatasetError: ``with_images`` and a candidate's image is missing or outside the folder.

    Example:
        >>> recs = stage2_records(read_rerank_examples("train.jsonl"), k=5)
        >>> len(recs[0]["candidate_ids"]), recs[0]["gold_ids"]
        (5, [2])
    """
    records: list[dict] = []
    for unit in stage2_units(examples, k, permutations, seed):
        ex = unit.example
        shown = [candidate_view(c, data_file, with_image=with_images) for c in unit.order]
        record = {"prompt": stage2_messages(ex.query, shown, with_images, tokenizer, max_text_tokens),
                  "gold_ids": unit.gold_ids, "answers": list(ex.answers), "keywords": ex.keywords, "qtype": ex.qtype,
                  "candidate_ids": [c.id for c in unit.order], "qid": ex.qid, "permutation": unit.permutation}
        if with_images:
            record["images"] = [v.image for v in shown if v.image is not None]
        records.append(record)
    return records


def to_dataset(records: Sequence[dict]):
    """Turn stage-1 / stage-2 records into a :class:`datasets.Dataset` for ``trl.GRPOTrainer``.

    When any prompt has structured content (image parts), every message content is made a list of parts,
    because an Arrow column cannot mix strings and lists (TRL and chat templates accept both forms). A column
    missing from some records (``"image"`` of text candidates) is None there, which TRL reads as "no image".

    Args:
        records: Records from :func:`stage1_records` or :func:`stage2_records`.

    Returns:
        A ``datasets.Dataset`` with one row per record.

    Raises:
        ValueError: ``records`` is empty.

    Example:
        >>> ds = to_dataset(stage1_records(examples))
        >>> ds.column_names
        ['prompt', 'label', 'weight', 'qid', 'candidate_id']
    """
    from datasets import Dataset

    if not records:
        raise ValueError("no records to turn into a dataset (no example had a positive?)")
    structured = any(isinstance(m["content"], list) for r in records for m in r["prompt"])
    if structured:
        records = [{**r, "prompt": [{**m, "content": _as_parts(m["content"])} for m in r["prompt"]]} for r in records]
    columns = list(dict.fromkeys(key for r in records for key in r))  # e.g. "image" only on image candidates
    return Dataset.from_list([{key: r.get(key) for key in columns} for r in records])



def _rng(seed: int, stage: str, qid: str) -> random.Random:
    return random.Random(f"{seed}:{stage}:{qid}")




def _distinct_orders(items: list, count: int, rng: random.Random) -> list[list]:
    count = min(count, math.factorial(len(items)))
    if math.factorial(len(items)) <= 24:  # small K: draw from the full list of orders
        return [list(o) for o in rng.sample(list(itertools.permutations(items)), count)]
    orders, seen = [], set()
    while len(orders) < count:
        order = rng.sample(items, len(items))
        key = tuple(id(x) for x in order)
        if key not in seen:
            seen.add(key)
            orders.append(order)
    return orders


def _as_parts(content: Any) -> list[dict]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content
