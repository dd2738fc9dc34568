"""Rule-based GRPO rewards of the two stages, with TRL's signature ``f(completions, **columns)``.

TRL calls each reward function with ``completions`` (strings, or for conversational datasets one message
list per completion, ``[{"role": "assistant", "content": "..."}]``) and every dataset column as a keyword
list aligned with it (``label`` for stage 1; ``gold_ids``, ``answers``, ``keywords``, ``qtype``,
``candidate_ids`` for stage 2), plus extras such as ``prompts`` and ``trainer_state`` (ignored here).
A function returns one float per completion, or None where the reward does not apply to that example.

Weights and options are keyword parameters, so a variant is ``functools.partial(stage2_total_reward,
format_weight=0.2)``; TRL names a partial after the wrapped function's ``__name__``.

Stage 1: ``<answer>yes</answer>`` / ``<answer>no</answer>`` (optionally after ``<think>...</think>``).
Stage 2: ``<think>...</think><rank>[3] > [1]</rank><answer>... [3]</answer>``. Both are read by the parsers of
:mod:`mmrag_agent.format`, the same code that reads the model's output at inference and in held-out
evaluation, so the format rewarded in training is the format read in use (citations included: ``[1, 3]`` and
``[1][3]`` count alike everywhere). Rank and answer rewards are **gated**: 0 when the format is invalid
(``gated=False`` scores what the tolerant parser recovers).
"""

from __future__ import annotations

from typing import Any, Sequence

from ..eval.ranking import ndcg_at_k, set_prf
from ..format import MAX_ID_DIGITS, Stage2Output, completion_text, parse_stage1_output, parse_stage2_output, stage2_format_ok

__all__ = [
    "completion_text", "stage1_accuracy_reward", "stage1_format_reward", "stage1_total_reward",
    "stage2_answer_reward", "stage2_format_reward", "stage2_rank_reward", "stage2_total_reward",
]





# --- stage 1 ----------------------------------------------------------------------------------------------

def _stage1_answer(text: str, reasoning: bool | None) -> str | None:
    return parse_stage1_output(text, reasoning).answer


def stage1_format_reward(completions: Sequence[Any], reasoning: bool | None = None, prefix: str = "",
                         **kwargs: Any) -> list[float]:
    """1.0 when a completion is exactly ``<answer>yes|no</answer>`` (whitespace around allowed), else 0.0.

    Args:
        completions: Completions (strings or conversational).
        reasoning: True: require ``<think>...</think>`` before the answer; False: forbid it; None: accept both.
        prefix: Text the assistant turn was pre-filled with (e.g. ``"<answer>"``), put before each completion.
        **kwargs: Dataset columns and TRL extras (ignored).

    Returns:
        One 0/1 score per completion.

    Example:
        >>> stage1_format_reward(["<answer>yes</answer>", "yes"])
        [1.0, 0.0]
    """
    return [float(_stage1_answer(prefix + completion_text(c), reasoning) is not None) for c in completions]


def stage1_accuracy_reward(completions: Sequence[Any], label: Sequence[Any], reasoning: bool | None = None,
                           prefix: str = "", **kwargs: Any) -> list[float]:
    """1.0 when the yes/no equals the label, else 0.0; gated: 0.0 when the format is invalid.

    Args:
        completions: Completions (strings or conversational).
        label: Per completion ``"yes"`` / ``"no"`` (also True / False / 1 / 0).
        reasoning: Format variant, as in :func:`stage1_format_reward`.
        prefix: Pre-filled assistant text put before each completion.
        **kwargs: Other columns and TRL extras (ignored).

    Returns:
        One 0/1 score per completion.

    Example:
        >>> stage1_accuracy_reward(["<answer>no</answer>", "no"], label=["no", "no"])
        [1.0, 0.0]
    """
    return [float(_stage1_answer(prefix + completion_text(c), reasoning) == _label(y)) for c, y in zip(completions, label, strict=True)]


def stage1_total_reward(completions: Sequence[Any], label: Sequence[Any], accuracy_weight: float = 1.0,
                        format_weight: float = 0.1, reasoning: bool | None = None, prefix: str = "",
                        **kwargs: Any) -> list[float]:
    """``accuracy_weight * relevance_accuracy + format_weight * format`` (defaults 1.0 and 0.1).

    Example:
        >>> stage1_total_reward(["<answer>yes</answer>", "<answer>no</answer>", "maybe"], label=["yes"] * 3)
        [1.1, 0.1, 0.0]
    """
    fmt = stage1_format_reward(completions, reasoning, prefix)
    acc = stage1_accuracy_reward(completions, label, reasoning, prefix)
    return [round(accuracy_weight * a + format_weight * f, 12) for a, f in zip(acc, fmt)]


def _label(value: Any) -> str:
    if isinstance(value, str):
        return value.strip().lower()
    return "yes" if value else "no"


# --- stage 2 ----------------------------------------------------------------------------------------------

def _parse(completion: Any, prefix: str, num_candidates: int) -> Stage2Output:
    return parse_stage2_output(prefix + completion_text(completion), num_candidates)


def stage2_format_reward(completions: Sequence[Any], prefix: str = "", **kwargs: Any) -> list[float]:
    """1.0 when ``<think>``, ``<rank>``, ``<answer>`` appear once each, in order, well formed; else 0.0.

    The rule is :func:`~mmrag_agent.format.stage2_format_ok`, the same check the
    stage-2 parser reports as ``format_ok`` at inference and in held-out evaluation: each of the six tags
    exactly once and spelled canonically, only whitespace outside the three blocks, non-empty ``<think>`` and
    ``<answer>``, and a rank body of bracketed integer ids separated by ``>``, ``,``, ``;`` or whitespace
    (``[3] > [1]``). Whether ids are in range or repeated is judged by :func:`stage2_rank_reward`.

    Args:
        completions: Completions (strings or conversational).
        prefix: Pre-filled assistant text put before each completion.
        **kwargs: Dataset columns and TRL extras (ignored).

    Returns:
        One 0/1 score per completion.

    Example:
        >>> stage2_format_reward(["<think>t</think><rank>[2]</rank><answer>a [2]</answer>", "<answer>a</answer>"])
        [1.0, 0.0]
    """
    return [float(stage2_format_ok(prefix + completion_text(c))) for c in completions]


def stage2_rank_reward(completions: Sequence[Any], gold_ids: Sequence[Sequence[int]], candidate_ids: Sequence[Sequence[str]] | None = None,
                       k: int = 5, gated: bool = True, prefix: str = "", **kwargs: Any) -> list[float | None]:
    """Rank quality: the mean of NDCG@K and set F1 of the ranked ids against the gold ids.

    Ids are the 1-based positions ``[n]`` of the prompt. An id out of ``1..K``, a non-numeric id, or a
    repeated id counts as wrong: it takes its place in the ranking without gain and counts as one more
    selected id in the F1's precision (:func:`~mmrag_agent.eval.ranking.set_prf` with ``repeats_are_wrong``).

    Args:
        completions: Completions (strings or conversational).
        gold_ids: Per completion, the 1-based positions of the positives.
        candidate_ids: Per completion, the candidate ids shown (their number is K); without it, ``k``.
        k: K when ``candidate_ids`` is not given.
        gated: 0.0 for a completion whose format is invalid (:func:`stage2_format_reward`); False scores
            whatever ids the tolerant parser finds in ``<rank>`` (bare ids too).
        prefix: Pre-filled assistant text put before each completion.
        **kwargs: Other columns and TRL extras (ignored).

    Returns:
        Per completion a score in [0, 1], or None when the example has no gold id (not applicable).

    Example:
        >>> stage2_rank_reward(["<think>.</think><rank>[3] > [1]</rank><answer>x</answer>"], gold_ids=[[1, 3]])
        [1.0]
    """
    scores: list[float | None] = []
    for i, (completion, gold) in enumerate(zip(completions, gold_ids, strict=True)):
        positives = {str(g) for g in gold or []}
        if not positives:
            scores.append(None)
            continue
        size = len(candidate_ids[i]) if candidate_ids is not None and candidate_ids[i] is not None else k
        parsed = _parse(completion, prefix, size)
        if gated and not parsed.format_ok:
            scores.append(0.0)
            continue
        ranked = [_position(item, size) for item in parsed.ranked_as_written]
        ndcg = ndcg_at_k(ranked, positives, k=max(size, 1))
        f1 = set_prf(ranked, positives, repeats_are_wrong=True).f1
        scores.append((ndcg + f1) / 2)
    return scores


def stage2_answer_reward(completions: Sequence[Any], answers: Sequence[Sequence[str]] | None,
                         keywords: Sequence[Any] | None = None, qtype: Sequence[str | None] | None = None,
                         gated: bool = True, answers_are_list: bool = False, prefix: str = "", **kwargs: Any) -> list[float | None]:
    """Answer accuracy of the ``<answer>`` text, with citations ``[n]`` removed.

    With keywords for the example (WebQA ``Keywords_A``): WebQA keyword accuracy for its category
    (``qtype``, ``"Others"`` when missing). Otherwise: the token F1 after normalisation, max over the gold
    answers. Metrics come from :mod:`mmrag_agent.eval.answers` (imported on first call).

    Args:
        completions: Completions (strings or conversational).
        answers: Per completion, the gold answers (None / empty: not applicable unless keywords are given).
        keywords: Per completion, WebQA keywords (a string or list) or None.
        qtype: Per completion, the question category (WebQA ``Qcate``).
        gated: 0.0 for a completion whose format is invalid; False scores the answer the tolerant parser
            finds (the first ``<answer>``, or the text after the last tag).
        answers_are_list: Read an example's several gold answers as the members of one list answer
            (MultimodalQA list questions, e.g. three actors) scored together, instead of alternatives (the
            by default the max over them, which gives full credit for naming one member).
        prefix: Pre-filled assistant text put before each completion.
        **kwargs: Other columns and TRL extras (ignored).

    Returns:
        Per completion a score in [0, 1] (0.0 for an empty answer), or None without answers and keywords.
        Keywords ``"TBD"`` (WebQA's placeholder on text questions) count as no keywords.

    Example:
        >>> stage2_answer_reward(["<think>.</think><rank>[1]</rank><answer>baseball [1]</answer>"], answers=[["baseball"]])
        [1.0]
    """
    from mmrag_agent.eval.answers import answer_f1, webqa_accuracy

    scores: list[float | None] = []
    for i, completion in enumerate(completions):
        golds = [a for a in (answers[i] if answers is not None else None) or [] if a]
        kw = keywords[i] if keywords is not None else None
        if not (isinstance(kw, str) and kw.strip() and kw.strip().upper() != "TBD") and not (isinstance(kw, list) and kw):
            kw = None  # WebQA writes "TBD" for text questions: score those against the answers
        if not golds and kw is None:
            scores.append(None)
            continue
        parsed = _parse(completion, prefix, 0)  # the answer does not depend on K
        text = parsed.answer_text if parsed.format_ok or not gated else ""
        if not text:
            scores.append(0.0)
            continue
        if kw is not None:
            value = webqa_accuracy(text, kw, (qtype[i] if qtype is not None else None) or "Others")
        else:
            value = answer_f1(text, [golds] if answers_are_list and len(golds) > 1 else list(golds))
        scores.append(_unit(value))
    return scores


def stage2_total_reward(completions: Sequence[Any], gold_ids: Sequence[Sequence[int]], answers: Sequence[Sequence[str]] | None = None,
                        keywords: Sequence[Any] | None = None, qtype: Sequence[str | None] | None = None,
                        candidate_ids: Sequence[Sequence[str]] | None = None, k: int = 5, rank_weight: float = 1.0,
                        answer_weight: float = 1.0, format_weight: float = 0.1, answers_are_list: bool = False,
                        prefix: str = "", **kwargs: Any) -> list[float]:
    """Format-gated ``rank_weight * rank_quality + answer_weight * answer_accuracy`` plus ``format_weight * format``.

    A part that does not apply to an example (no gold ids; no answers nor keywords) is left out of its sum.
    by default weights 1.0, 1.0 and 0.1, so a perfect completion scores 2.1. ``candidate_ids`` / ``k``
    are as in :func:`stage2_rank_reward`; ``keywords``, ``qtype``, ``answers_are_list`` as in
    :func:`stage2_answer_reward`.

    Example:
        >>> stage2_total_reward(["<think>.</think><rank>[2]</rank><answer>x</answer>", "[2]"], gold_ids=[[2], [2]])
        [1.1, 0.0]
    """
    fmt = stage2_format_reward(completions, prefix)
    rank = stage2_rank_reward(completions, gold_ids, candidate_ids, k, True, prefix)
    answer = (stage2_answer_reward(completions, answers, keywords, qtype, True, answers_are_list, prefix)
              if answers is not None or keywords is not None else [None] * len(fmt))
    totals = []
    for f, r, a in zip(fmt, rank, answer):
        gated = rank_weight * (r or 0.0) + answer_weight * (a or 0.0) if f else 0.0
        totals.append(round(gated + format_weight * f, 12))
    return totals


def _position(item: str, size: int) -> str:
    """``"3"`` for a valid 1-based id; a marker that matches no gold id for anything else."""
    valid = item.isascii() and item.isdigit() and len(item) <= MAX_ID_DIGITS and 1 <= int(item) <= size
    return str(int(item)) if valid else f"invalid:{item[:20]}"


def _unit(value: float) -> float:
    value = float(value)
    return value / 100.0 if value > 1.0 + 1e-9 else max(value, 0.0)  # tolerate a metric reported x100 (MultimodalQA style)
