"""The stage-2 completion: the strict format check and the tolerant parser. Part of :mod:`mmrag_agent.format`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

from .grammar import (
    _CANON, _ORDER, _RANK_SEPARATORS, _STRICT_SEQUENCE, _TAG, MAX_ID_DIGITS, _is_rank_list, _rank_tokens, completion_text,
    find_citations, strip_citations,
)

T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ stage 2
@dataclass
class Stage2Output:
    """A parsed stage-2 completion.

    Attributes:
        reasoning: The ``<think>`` text, stripped (the explanation); ``""`` when absent.
        ranking: 1-based candidate numbers, most relevant first: valid (``1..K``) and without repeats. Partial
            when the model ranked only some candidates (missing ids are *not* appended); the fallback order
            when nothing usable was ranked (then ``used_fallback`` is true).
        answer: The ``<answer>`` text, stripped, citations kept as written; ``""`` when absent.
        cited: Valid candidate numbers cited in the answer (:func:`find_citations`), in order of first
            appearance, without repeats.
        raw: The completion as given.
        warnings: One line per repair or problem found; empty for a clean, well-formed completion.
        format_ok: :func:`stage2_format_ok` of the completion.
        used_fallback: ``ranking`` is the fallback (stage-1) order, not the model's.
        ranked_as_written: Every id written in ``<rank>``, in order and as written (``"3"``, ``"9"``, ``"a"``):
            repeated, out-of-range and non-numeric ones included. The ``rank_quality`` reward scores this list,
            so that an invalid id costs something instead of vanishing.

    Example:
        >>> out = parse_stage2_output("<think>[2] names it</think><rank>[2]</rank><answer>Rome [2]</answer>", 3)
        >>> out.select(["a", "b", "c"])
        ['b']
    """

    reasoning: str
    ranking: list[int]
    answer: str
    cited: list[int]
    raw: str
    warnings: list[str] = field(default_factory=list)
    format_ok: bool = False
    used_fallback: bool = False
    ranked_as_written: list[str] = field(default_factory=list)

    def select(self, items: Sequence[T]) -> list[T]:
        """The items in ``ranking`` order (``items[n - 1]`` for each ranked ``n``).

        Example:
            >>> Stage2Output("", [3, 1], "", [], "").select(["a", "b", "c"])
            ['c', 'a']
        """
        return [items[n - 1] for n in self.ranking]

    @property
    def answer_text(self) -> str:
        """The answer without its citations (what answer metrics and the answer reward score)."""
        return strip_citations(self.answer)


def stage2_format_ok(text: Any) -> bool:
    """Whether a completion is exactly in the stage-2 format (the ``format`` reward of the method).

    The rule: the six tags ``<think> </think> <rank> </rank> <answer> </answer>`` appear exactly once each
    (counting any spelling: ``<Answer>`` or ``< rank >`` count, and make the format invalid), in this order;
    only whitespace lies outside them; each of the three holds something besides whitespace; and the rank
    holds only bracketed ids (``[3]``, at most :data:`MAX_ID_DIGITS` digits) separated by ``>``, ``,``, ``;`` or
    whitespace. Whether the ids are in range or repeated is not a matter of format (the ``rank_quality`` reward
    judges that). With a pre-filled assistant turn, check the prefix plus the completion.

    Args:
        text: The completion: a string, or a chat completion (list of ``{"content": ...}`` messages).

    Returns:
        True when the completion is well formed; never raises.

    Example:
        >>> stage2_format_ok("<think>c1 shows it</think>\\n<rank>[1] > [2]</rank>\\n<answer>red [1]</answer>")
        True
        >>> stage2_format_ok("<think>x</think><rank>1, 2</rank><answer>red</answer>")
        False
    """
    text = completion_text(text)
    tags = list(_TAG.finditer(text))
    if [m.group(0) for m in tags] != _STRICT_SEQUENCE:
        return False
    outside = [text[:tags[0].start()], text[tags[1].end():tags[2].start()], text[tags[3].end():tags[4].start()],
               text[tags[5].end():]]
    think, rank, answer = (text[tags[i].end():tags[i + 1].start()] for i in (0, 2, 4))
    return not any(s.strip() for s in outside) and bool(think.strip()) and bool(answer.strip()) and _is_rank_list(rank)


def _sections(text: str, warn: Callable[[str], None]) -> tuple[dict[str, str], list[str], int, list[tuple[int, int]]]:
    """Split into sections: ({name: content}, names in order found, end of the last section, stray spans)."""
    found: dict[str, str] = {}
    order: list[str] = []
    stray: list[tuple[int, int]] = []
    last_end = 0

    def store(name: str, content: str) -> None:
        if name in found:
            warn(f"duplicate <{name}> section ignored (the first one is used)")
        else:
            found[name] = content
            order.append(name)

    current: tuple[str, int] | None = None  # (name, content start) of the open section
    pos = 0  # end of the last tag
    for m in _TAG.finditer(text):
        is_close, name = bool(m.group(1)), m.group(2).lower()
        if m.group(0) != _CANON[name][is_close]:
            warn(f"non-canonical tag {m.group(0)!r}")
        if current is None:
            if not is_close:
                stray.append((pos, m.start()))
                current = (name, m.end())
            elif name not in found:  # e.g. the assistant turn was pre-filled with "<think>"
                warn(f"missing <{name}> opening tag: the text before </{name}> is taken as its content")
                store(name, text[pos:m.start()])
                last_end = m.end()
            else:
                warn(f"stray </{name}> tag")
                stray.append((pos, m.start()))
        else:
            open_name, start = current
            if is_close and name == open_name:
                store(open_name, text[start:m.start()])
                current, last_end = None, m.end()
            elif name == open_name:  # a second <x> inside <x>: keep it as text
                warn(f"nested <{name}> tag inside <{name}>")
                continue
            else:
                warn(f"unclosed <{open_name}>: it ends at {m.group(0)!r}")
                store(open_name, text[start:m.start()])
                current, last_end = None, m.start()
                if is_close:
                    warn(f"stray </{name}> tag")
                else:
                    current = (name, m.end())
        pos = m.end()
    if current is not None:
        warn(f"unclosed <{current[0]}>: it runs to the end of the completion")
        store(current[0], text[current[1]:])
        last_end = len(text)
    else:
        stray.append((pos, len(text)))
    return found, order, last_end, stray


def _parse_ranking(content: str, k: int, warn: Callable[[str], None]) -> tuple[list[int], list[str]]:
    ranking: list[int] = []
    written: list[str] = []
    ignored: list[str] = []
    bare = False
    for kind, token in _rank_tokens(content):
        if kind in ("sep", "stray"):
            continue
        if kind == "bracket":
            pieces = "".join(" " if c in _RANK_SEPARATORS else c for c in token).split()
            if not pieces:
                warn("empty [] in <rank>")
            elif len(pieces) > 1:
                warn(f"several ids in one bracket in <rank>: {'[' + token + ']'!r}")
        elif _is_int(token):
            pieces, bare = [token], True
        else:
            ignored.append(token)
            continue
        for piece in pieces:
            written.append(piece)
            if not _is_int(piece):
                warn(f"non-numeric id {_clip(piece)!r} in <rank>")
                continue
            n = _bounded_int(piece)
            if n is None or not 1 <= n <= k:
                warn(f"id out of range: {_clip(piece)} (valid: 1..{k})")
            elif n in ranking:
                warn(f"repeated id: {n}")
            else:
                ranking.append(n)
    if bare:
        warn("ids without brackets in <rank>")
    if ignored:
        warn(f"ignored text in <rank>: {_clip(' '.join(ignored))!r}")
    return ranking, written


def _is_int(piece: str) -> bool:
    digits = piece[1:] if piece[:1] in "+-" else piece
    return digits.isascii() and digits.isdigit()


def _bounded_int(piece: str) -> int | None:
    """The integer of a signed digit string, or None when it has more than MAX_ID_DIGITS digits."""
    digits = piece.lstrip("+-")
    return int(piece) if len(digits.lstrip("0")) <= MAX_ID_DIGITS else None


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _citations(answer: str, k: int, warn: Callable[[str], None]) -> list[int]:
    cited: list[int] = []
    for citation in find_citations(answer):
        for n in citation.ids:
            if not 1 <= n <= k:
                warn(f"cited id out of range: {n} (valid: 1..{k})")
            elif n not in cited:
                cited.append(n)
    return cited


def _fallback(fallback_order: Sequence[int] | None, k: int) -> list[int]:
    if fallback_order is None:
        return list(range(1, k + 1))
    order: list[int] = []
    for n in fallback_order:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= k:
            raise ValueError(f"fallback_order must hold candidate numbers 1..{k}, got {n!r}")
        if n not in order:
            order.append(n)
    return order


def parse_stage2_output(text: Any, num_candidates: int, fallback_order: Sequence[int] | None = None) -> Stage2Output:
    """Parse a stage-2 completion for ``num_candidates`` candidates numbered ``[1]..[K]``.

    Tolerant by design, never raising on model output, linear in its length:

    * tags in any case or with inner whitespace (``<Answer>``, ``< rank >``) are read (``format_ok`` false);
    * a missing tag leaves its field empty; a missing opening tag (``...</think>``, as with a pre-filled
      ``<think>``) takes the text before the closing tag; an unclosed tag runs to the next tag or the end;
    * a duplicated section: the first is used; tags out of order are read by name;
    * without ``<answer>`` tags, the text after the last section (or the whole text when there is no tag at
      all) is the answer;
    * rank ids: ``[3] > [1]``, ``3 > 1``, ``[3], [1]``, ``;``, newlines and ``>>`` all work; ids that are out of
      range (including 0 and negatives), repeated or non-numeric (``[a]``, ``[1.5]``) are dropped;
    * when no valid id is left (or there is no ``<rank>``), ``ranking`` is ``fallback_order`` (the stage-1
      order; default ``1..K``) and ``used_fallback`` is true. A partial ranking is **not** completed with the
      missing ids: the ranked ids are the cited sources.

    Args:
        text: The completion (a string, or a chat completion: a list of ``{"content": ...}`` messages), with
            any pre-filled assistant prefix in front.
        num_candidates: K, the number of candidates shown to the model.
        fallback_order: Order used when the ranking is unusable: 1-based candidate numbers (stage-1 order).

    Returns:
        A :class:`Stage2Output`; every problem found is described in its ``warnings``.

    Raises:
        ValueError: ``num_candidates`` is negative or ``fallback_order`` holds a number outside ``1..K``
            (caller errors, not model output).

    Example:
        >>> out = parse_stage2_output("<think>[3] shows the logo.</think><rank>[3] > [1]</rank>"
        ...                           "<answer>Green [3].</answer>", num_candidates=3)
        >>> out.ranking, out.cited, out.answer, out.format_ok
        ([3, 1], [3], 'Green [3].', True)
        >>> parse_stage2_output("Green, see [2]", 3, fallback_order=[2, 3, 1]).ranking
        [2, 3, 1]
    """
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 0:
        raise ValueError(f"num_candidates must be a non-negative int, got {num_candidates!r}")
    fallback = _fallback(fallback_order, num_candidates)
    warnings: list[str] = []
    warn = warnings.append
    raw = completion_text(text)
    if not isinstance(text, str):
        warn(f"completion of type {type(text).__name__} read as text")

    found, order, last_end, stray = _sections(raw, warn)
    present = [name for name in _ORDER if name in found]
    if order != present:
        warn(f"tags out of order: {' '.join(f'<{n}>' for n in order)}")
    for name in ("think", "rank"):
        if name not in found:
            warn(f"missing <{name}> section")
    if "think" in found and not found["think"].strip():
        warn("empty <think>")

    tail = [(a, b) for a, b in stray if a >= last_end]
    if "answer" in found:
        answer = found["answer"].strip()
    else:
        answer = " ".join(raw[a:b].strip() for a, b in tail if raw[a:b].strip())
        warn("answer without <answer> tags: the text after the last section is taken" if answer
             else "missing <answer> section")
        stray = [(a, b) for a, b in stray if a < last_end]
    if any(raw[a:b].strip() for a, b in stray):
        warn("stray text outside tags")
    if not answer:
        warn("empty answer")

    ranking, written = _parse_ranking(found.get("rank", ""), num_candidates, warn)
    used_fallback = not ranking
    if used_fallback:
        if "rank" in found:
            warn("no usable id in <rank>" if found["rank"].strip() else "empty <rank>")
        warn(f"fell back to the stage-1 order {fallback}")
        ranking = list(fallback)

    cited = _citations(answer, num_candidates, warn)
    unranked = [n for n in cited if n not in ranking]
    if unranked and not used_fallback:
        warn(f"cited but not ranked: {unranked}")
    return Stage2Output(reasoning=found.get("think", "").strip(), ranking=ranking, answer=answer, cited=cited, raw=raw,
                        warnings=warnings, format_ok=stage2_format_ok(raw), used_fallback=used_fallback,
                        ranked_as_written=written)
