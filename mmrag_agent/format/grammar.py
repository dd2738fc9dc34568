"""The grammar both stages write: tags, answer words, assistant prefixes, citations, rank tokens; stage-1 parsing and
the gold completions. Part of :mod:`mmrag_agent.format` (import from there)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
RANK_OPEN, RANK_CLOSE = "<rank>", "</rank>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
YES, NO = "yes", "no"

#: Default text the assistant turn is pre-filled with, in training and in serving (a model card may record
#: another). Stage 1 opens the answer tag, so the next token is the yes/no word P(relevant) is read from;
#: its reasoning mode opens ``<think>``; stage 2 opens ``<think>``, which keeps small models in the format.
STAGE1_PREFIX = ANSWER_OPEN
STAGE1_REASONING_PREFIX = THINK_OPEN
STAGE2_PREFIX = THINK_OPEN

#: Candidate numbers longer than this are not numbers but noise (and never reach ``int()``).
MAX_ID_DIGITS = 6


# Tag spellings: any case, whitespace inside the brackets. The two optional whitespace runs are separated by a
# mandatory "/" or by the tag name, so no input makes this backtrack more than its length.
_TAG = re.compile(r"<\s*(?:(/)\s*)?(think|rank|answer)\s*>", re.IGNORECASE)
_CANON = {"think": (THINK_OPEN, THINK_CLOSE), "rank": (RANK_OPEN, RANK_CLOSE), "answer": (ANSWER_OPEN, ANSWER_CLOSE)}
_ORDER = ("think", "rank", "answer")
_STRICT_SEQUENCE = [tag for name in _ORDER for tag in _CANON[name]]
_RANK_SEPARATORS = frozenset(" \t\r\n\f\v>,;")


def candidate_marker(position: int) -> str:
    """The short id naming the candidate at 1-based ``position`` in a stage-2 prompt.

    Example:
        >>> candidate_marker(3)
        '[3]'
    """
    return f"[{position}]"


def completion_text(completion: Any) -> str:
    """The text of one completion: a string as is, or the assistant text of a chat completion.

    Accepts what TRL hands reward functions (``[{"role": "assistant", "content": ...}]``, content a string or
    ``{"type": "text", "text": ...}`` parts). Nesting is walked iteratively, so no depth makes it raise.

    Example:
        >>> completion_text([{"role": "assistant", "content": "<answer>yes</answer>"}])
        '<answer>yes</answer>'
    """
    if isinstance(completion, str):
        return completion
    texts: list[str] = []
    stack: list[Any] = [completion]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            if item.get("role", "assistant") != "assistant":
                continue
            content = item.get("content", item.get("text"))
            if content is not None:
                stack.append(content)
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        elif item is not None:
            texts.append(str(item))
    return "".join(texts)


# ------------------------------------------------------------------------------------------------ citations
@dataclass(frozen=True)
class Citation:
    """One bracketed citation in an answer: ``[3]`` or ``[1, 3]``.

    Attributes:
        start: Offset of ``[`` in the text.
        end: Offset after ``]``.
        ids: The candidate numbers, as written (1-based; not checked against K here).
    """

    start: int
    end: int
    ids: tuple[int, ...]


def find_citations(text: str) -> Iterator[Citation]:
    """Every citation in ``text``, in order: ``[n]``, ``[n, m]``, ``[n; m]`` (``[1][3]`` is two).

    A bracket holding anything but numbers of at most :data:`MAX_ID_DIGITS` digits separated by ``,`` or ``;``
    (``[citation needed]``, ``[a]``, ``[1.5]``) is not a citation. One pass over the text.

    Example:
        >>> [c.ids for c in find_citations("Paris [1, 3] and [2][4], not [x]")]
        [(1, 3), (2,), (4,)]
    """
    start, end = text.find("["), -1
    while start >= 0:
        if end < start:  # each "]" is searched for once, so the scan stays linear
            end = text.find("]", start + 1)
            if end < 0:
                return
        inner_open = text.find("[", start + 1, end)
        if inner_open >= 0:  # "[a [1]": restart at the inner bracket
            start = inner_open
            continue
        ids = _citation_ids(text[start + 1:end])
        if ids:
            yield Citation(start, end + 1, ids)
        start = text.find("[", end + 1)


def _citation_ids(inner: str) -> tuple[int, ...] | None:
    pieces = inner.replace(";", ",").split(",")
    ids = []
    for piece in pieces:
        piece = piece.strip()
        if not piece.isascii() or not piece.isdigit() or len(piece) > MAX_ID_DIGITS:
            return None
        ids.append(int(piece))
    return tuple(ids)


def strip_citations(text: str) -> str:
    """``text`` without its citations, whitespace collapsed: what answer metrics and rewards score.

    Example:
        >>> strip_citations("Paris [1, 3], then Rome [2][4].")
        'Paris , then Rome .'
    """
    parts, last = [], 0
    for citation in find_citations(text):
        parts.append(text[last:citation.start])
        last = citation.end
    parts.append(text[last:])
    return " ".join(" ".join(parts).split())


# ------------------------------------------------------------------------------------------------ stage 1
@dataclass
class Stage1Output:
    """A parsed stage-1 completion.

    Attributes:
        answer: ``"yes"`` or ``"no"`` when the completion is in the format, else None.
        reasoning: The ``<think>`` text (reasoning mode), stripped; ``""`` when absent.
        format_ok: The completion is exactly the stage-1 format (whitespace around the tags allowed).
    """

    answer: str | None
    reasoning: str = ""
    format_ok: bool = False


def parse_stage1_output(text: Any, reasoning: bool | None = None) -> Stage1Output:
    """Parse a stage-1 completion (prefix included): ``<answer>yes|no</answer>``, optionally after ``<think>``.

    Args:
        text: The assistant text (pre-filled prefix plus completion), or a chat completion.
        reasoning: True: ``<think>...</think>`` must come first; False: it must not; None: either.

    Returns:
        A :class:`Stage1Output`; ``answer`` is None unless the format holds exactly (tags canonical, each once,
        only whitespace outside them; the answer word in any case, whitespace around it allowed).

    Example:
        >>> parse_stage1_output("<answer> Yes </answer>").answer
        'yes'
        >>> parse_stage1_output("<think>a chart</think><answer>no</answer>", reasoning=False).format_ok
        False
    """
    raw = completion_text(text)
    tags = list(_TAG.finditer(raw))
    spelled = [m.group(0) for m in tags]
    with_think = spelled == [THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE]
    if not (spelled == [ANSWER_OPEN, ANSWER_CLOSE] and reasoning is not True or with_think and reasoning is not False):
        return Stage1Output(None)
    outside = [raw[:tags[0].start()], raw[tags[-1].end():]] + ([raw[tags[1].end():tags[2].start()]] if with_think else [])
    word = raw[tags[-2].end():tags[-1].start()].strip().lower()
    if any(s.strip() for s in outside) or word not in (YES, NO):
        return Stage1Output(None)
    thought = raw[tags[0].end():tags[1].start()].strip() if with_think else ""
    return Stage1Output(word, thought, True)


def stage1_completion(label: str, reasoning: bool = False, prefix: str = "") -> str:
    """The gold-formatted stage-1 completion after ``prefix`` (what the SFT warm start teaches).

    Example:
        >>> stage1_completion("no")
        '<answer>no</answer>'
        >>> stage1_completion("yes", prefix=STAGE1_PREFIX)
        'yes</answer>'
    """
    answer = f"{ANSWER_OPEN}{label}{ANSWER_CLOSE}"
    if reasoning:
        verdict = "helps answer" if label == YES else "does not help answer"
        answer = f"{THINK_OPEN}Judged alone, the candidate {verdict} the question.{THINK_CLOSE}{answer}"
    return _after_prefix(answer, prefix)


def stage2_completion(gold_positions: Sequence[int], answer: str | None, prefix: str = "") -> str:
    """The gold-formatted stage-2 completion after ``prefix``: template reasoning, gold ids ranked, answer cited.

    The reasoning is a fixed template (not gold reasoning): the warm start teaches the format; GRPO shapes the
    reasoning.

    Example:
        >>> stage2_completion([3, 1], "green")
        '<think>Candidates [3], [1] are relevant to the question; the others are not.</think><rank>[3] > [1]</rank><answer>green [3]</answer>'
    """
    marks = [candidate_marker(i) for i in gold_positions]
    if marks:
        lead = f"Candidate {marks[0]} is" if len(marks) == 1 else f"Candidates {', '.join(marks)} are"
        think = f"{lead} relevant to the question; the others are not."
    else:
        think = "No candidate is relevant to the question."
    text = (answer or "unknown") + (f" {marks[0]}" if marks else "")
    full = f"{THINK_OPEN}{think}{THINK_CLOSE}{RANK_OPEN}{' > '.join(marks)}{RANK_CLOSE}{ANSWER_OPEN}{text}{ANSWER_CLOSE}"
    return _after_prefix(full, prefix)


def _after_prefix(full: str, prefix: str) -> str:
    if not full.startswith(prefix):
        raise ValueError(f"assistant prefix {prefix!r} is not the start of the format ({full[:40]!r}...)")
    return full[len(prefix):]



def _is_rank_list(body: str) -> bool:
    """``[3] > [1]``: one or more bracketed ids, separators between them, nothing else."""
    items = 0
    for kind, _token in _rank_tokens(body):
        if kind == "bracket":
            ids = _citation_ids(_token)
            if ids is None or len(ids) != 1:
                return False
            items += 1
        elif kind != "sep":  # a word or a stray bracket
            return False
    return items > 0


def _rank_tokens(body: str) -> Iterator[tuple[str, str]]:
    """Split a rank body into ``("bracket", inner)``, ``("sep", text)`` and ``("word", text)`` tokens, linearly."""
    i, n, close = 0, len(body), -1
    while i < n:
        ch = body[i]
        if ch in _RANK_SEPARATORS:
            j = i
            while j < n and body[j] in _RANK_SEPARATORS:
                j += 1
            yield "sep", body[i:j]
        elif ch in "[]":
            if ch == "[" and close < i:  # the next "]", searched for once per "]" (linear)
                close = body.find("]", i + 1)
                close = n if close < 0 else close
            if ch == "]" or close >= n or body.find("[", i + 1, close) >= 0:  # stray, unclosed or nested: skipped
                yield "stray", ch
                j = i + 1
            else:
                yield "bracket", body[i + 1:close]
                j = close + 1
        else:
            j = i
            while j < n and body[j] not in _RANK_SEPARATORS and body[j] not in "[]":
                j += 1
            yield "word", body[i:j]
        i = j



def stage2_output_regex(num_candidates: int, prefix: str = "") -> str:
    """The stage-2 format as a regular expression, for generation engines that constrain by regex (TRL's
    ``vllm_structured_outputs_regex``): what follows ``prefix`` (``""`` or ``"<think>"``).

    It holds the tags in order, reasoning and answer without ``<``, ``>`` or brackets except citations ``[1]``..``[K]``,
    and a ranking of one to K such ids. A regular expression cannot require the ids to be distinct (the rank reward
    penalises repeats); :class:`mmrag_agent.inference.constrained.Stage2Grammar` also enforces that, with
    transformers. Linear to match: every repetition starts with a literal bracket.

    Example:
        >>> import re
        >>> bool(re.fullmatch(stage2_output_regex(3), "<think>x [2]</think><rank>[2] > [1]</rank><answer>red [2]</answer>"))
        True
    """
    if num_candidates < 1 or prefix not in ("", THINK_OPEN):
        raise ValueError(f"need K >= 1 and a prefix of '' or {THINK_OPEN!r}, got K={num_candidates}, prefix={prefix!r}")
    ids = "|".join(str(n) for n in range(num_candidates, 0, -1))
    cite, free = rf"\[(?:{ids})\]", r"[^<>\[\]]*"
    text = rf"{free}(?:{cite}{free})*"
    rank = rf"{cite}(?: > {cite}){{0,{num_candidates - 1}}}"
    body = rf"{text}{re.escape(THINK_CLOSE + RANK_OPEN)}{rank}{re.escape(RANK_CLOSE + ANSWER_OPEN)}{text}{re.escape(ANSWER_CLOSE)}"
    return body if prefix else re.escape(THINK_OPEN) + body
