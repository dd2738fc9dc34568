"""Constrained stage-2 decoding: every completion is in the output format, whatever the model.

:class:`Stage2Grammar` is a ``transformers.LogitsProcessor``. At each step it masks the tokens that would leave
the grammar of :mod:`mmrag_agent.format`::

    <think> reasoning </think><rank>[i] > [j] ...</rank><answer> answer citing [i] </answer>

* reasoning and answer are free text without ``<`` ``>`` and without brackets, except citations ``[n]`` of shown
  candidates (``1..K``); each holds at least one visible character;
* the ranking holds one to K distinct ids of shown candidates;
* the tags are forced once opened, and each part has a token budget, so the completion always closes in time;
* the prompt's own text cannot be copied into the reasoning or the answer: not 16 letters and digits in a row of its
  scaffolding (instructions, candidate headers: "Text candidate" is out) and not 40 of anything it shows (question
  and candidates included), compared on letters and digits only, lower-cased, so no other tokenization or
  spacing of the same words gets round it; the answer is one paragraph, and no span of five tokens is written twice.

Why a processor of our own rather than a grammar engine (xgrammar, outlines): the rules that matter here depend
on each prompt (K, which ids are still unused, which phrases are scaffolding), distinctness of ids is not a
context-free property, and the tokenizer-level trie needs nothing beyond the tokenizer. The same format is
available to TRL's vLLM generation as a regular expression, :func:`mmrag_agent.format.stage2_output_regex`
(without the distinctness of ids, which vLLM's regex cannot express; the rank reward penalises repeats).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Optional, Sequence
from weakref import WeakKeyDictionary

from ..format import ANSWER_CLOSE, ANSWER_OPEN, RANK_CLOSE, RANK_OPEN, THINK_CLOSE, THINK_OPEN, candidate_marker

__all__ = ["Stage2Grammar", "scaffold_phrases"]

_SPECIAL = "<>[]"  # characters free text may not hold (tags and citations are produced by the grammar only)
_REPEAT = 5  # free text never repeats a span of this many tokens (small models loop otherwise)
_COPY_PROMPT = 40  # letters and digits in a row free text may not copy from the prompt
_COPY_SCAFFOLD = 16  # ... from the scaffold's wording (about three words)
_ANSWER_WORDS = 4  # tokens of answer the budget keeps room for


def scaffold_phrases(num_candidates: int) -> list[str]:
    """The prompt's own wording that a completion must never echo (instructions and candidate headers)."""
    from ..prompts import STAGE2_ASK, STAGE2_SYSTEM, stage2_instruction

    sentences = [STAGE2_SYSTEM, stage2_instruction(num_candidates), STAGE2_ASK]
    pieces = [p.strip() for s in sentences for p in s.replace(THINK_OPEN, ".").replace(THINK_CLOSE, ".").replace(RANK_OPEN, ".")
              .replace(RANK_CLOSE, ".").replace(ANSWER_OPEN, ".").replace(ANSWER_CLOSE, ".").split(".") if p.strip()]
    return pieces + ["Text candidate", "Image candidate", "Image description"]  # the headers of the candidate list


def _norm(text: str) -> str:
    """Letters and digits only, lower-cased: how copies are compared (any spacing, punctuation or tokenization)."""
    return "".join(c for c in text.lower() if c.isalnum())


def _visible(text: str) -> bool:
    """Holds a letter or digit: what makes a part say something (punctuation alone does not)."""
    return any(c.isalnum() for c in text)


class _Vocabulary:
    """Per tokenizer: every token's text, the free-text masks, and the tokens by their letters and digits."""

    def __init__(self, tokenizer) -> None:
        import torch

        size = len(tokenizer)
        self.text = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        special = set(tokenizer.all_special_ids)
        self.usable = [i not in special and bool(t) for i, t in enumerate(self.text)]
        self.free = torch.tensor([u and not any(c in t for c in _SPECIAL) for u, t in zip(self.usable, self.text)])
        self.visible_free = self.free & torch.tensor([_visible(t) for t in self.text])
        self._norms = sorted((_norm(t), i) for i, t in enumerate(self.text) if self.usable[i] and _norm(t))
        self._norm_keys = [n for n, _ in self._norms]
        self.line_breaks = [i for i, t in enumerate(self.text) if "\n" in t or "\r" in t]
        self.eos = tokenizer.eos_token_id
        self.tokenizer = tokenizer



    def starting_with(self, prefix: str) -> list[int]:
        """Tokens whose letters and digits start with ``prefix`` (a binary search over the sorted ones)."""
        low = bisect_left(self._norm_keys, prefix)
        high = bisect_left(self._norm_keys, prefix + "\U0010ffff")
        return [i for _, i in self._norms[low:high]]


_VOCABULARIES: "WeakKeyDictionary[object, _Vocabulary]" = WeakKeyDictionary()
_LOCK = threading.Lock()


def _vocabulary(tokenizer) -> _Vocabulary:
    with _LOCK:
        vocab = _VOCABULARIES.get(tokenizer)
        if vocab is None:
            vocab = _VOCABULARIES[tokenizer] = _Vocabulary(tokenizer)
        return vocab


@dataclass
class _Row:
    """The grammar state of one sequence: its part, and either free text or a choice among literal token sequences."""

    k: int
    part: str = "think"  # start | think | rank | answer | done
    pending: list[tuple[tuple[int, ...], str]] = field(default_factory=list)  # a choice: (token ids left, goal)
    visible: bool = False  # the current free part holds a letter or digit
    part_tokens: int = 0
    generated: int = 0
    ranked: list[int] = field(default_factory=list)
    tail: str = ""  # the letters and digits of the current free part (its last 64)
    sources: list[tuple[str, int]] = field(default_factory=list)  # (text not to copy, longest copy allowed + 1)
    written: list[int] = field(default_factory=list)  # every free-text token of the completion
    repeats: dict[tuple[int, ...], set[int]] = field(default_factory=dict)  # written spans: context -> next token


class Stage2Grammar:
    """A ``LogitsProcessor`` that keeps stage-2 generation in the output format (module docstring).

    Tags, citations and rank ids are written as the tokenizer's own tokenization of those literals (so each costs a
    known number of tokens, and the budget is planned exactly); free text is any token without ``<>[]``.

    Args:
        tokenizer: The model's tokenizer.
        num_candidates: K per prompt of the batch (``[1]..[K]`` are the valid ids), in batch order.
        max_new_tokens: The generation budget: each part is closed in time to fit.
        assistant_prefix: What the assistant turn was pre-filled with (``"<think>"`` or ``""``).

    Example:
        >>> grammar = Stage2Grammar(loaded.tokenizer, [5], max_new_tokens=160, assistant_prefix="<think>")
        >>> generate(loaded, prompts, max_new_tokens=160, logits_processors=[grammar])
    """

    def __init__(self, tokenizer, num_candidates: Sequence[int], max_new_tokens: int, assistant_prefix: str = THINK_OPEN) -> None:
        if assistant_prefix not in ("", THINK_OPEN):
            raise ValueError(f"constrained decoding starts after '' or {THINK_OPEN!r}, not {assistant_prefix!r}")
        if any(k < 1 for k in num_candidates):
            raise ValueError("every prompt needs at least one candidate")
        self.vocab = _vocabulary(tokenizer)
        self.max_new_tokens = max_new_tokens
        self._tokenizer = tokenizer
        self._cache: dict[str, tuple[int, ...]] = {}
        self._citations: dict[tuple[int, ...], list[tuple[tuple[int, ...], str]]] = {}
        k_max = max(num_candidates)
        self.close_think = self._ids(THINK_CLOSE + RANK_OPEN)
        self.close_rank = self._ids(RANK_CLOSE + ANSWER_OPEN)
        self.close_answer = self._ids(ANSWER_CLOSE)
        # The budget is planned backwards: the answer's closing tag (after a citation in progress), a few words of
        # answer, the rank's closing and one id, the reasoning's closing; the reasoning gets what is left (at most half).
        longest_id = max(len(self._ids(candidate_marker(n))) for n in range(1, k_max + 1))
        self.answer_reserve = len(self.close_answer) + longest_id + 1
        self.rank_reserve = self.answer_reserve + _ANSWER_WORDS + len(self.close_rank)
        self.think_reserve = self.rank_reserve + len(self.close_think) + longest_id + 1
        if max_new_tokens < self.think_reserve + 2:
            raise ValueError(f"max_new_tokens={max_new_tokens} is too small for the stage-2 format; give at least {self.think_reserve + 2}")
        self.think_budget = min(max_new_tokens // 2, max_new_tokens - self.think_reserve)
        self.rows = [_Row(k) for k in num_candidates]
        for row in self.rows if not assistant_prefix else ():
            row.part, row.pending = "start", [(self._ids(THINK_OPEN), "think")]
        self._seen: Optional[int] = None

    def _ids(self, text: str) -> tuple[int, ...]:
        """The tokenizer's own tokenization of a literal (cached)."""
        if text not in self._cache:
            self._cache[text] = tuple(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._cache[text]

    def _opening(self, texts: Sequence[str], goal: str) -> list[tuple[tuple[int, ...], str]]:
        """The token sequences of ``texts`` that free text can open (their first token is not free text)."""
        out = []
        for text in texts:
            ids = self._ids(text)
            if ids and not bool(self.vocab.free[ids[0]]):
                out.append((ids, goal))
        return out

    def __call__(self, input_ids, scores):
        """Advance each sequence by its last token, then mask what would leave the grammar."""
        import torch

        if self._seen is not None:
            for row, token in zip(self.rows, input_ids[:, -1].tolist()):
                self._advance(row, token)
        else:  # the first call sees the prompts: what the completion may not copy
            scaffold = [(_norm(p), min(len(_norm(p)), _COPY_SCAFFOLD)) for p in scaffold_phrases(max(r.k for r in self.rows))]
            for row, prompt in zip(self.rows, input_ids.tolist()):
                text = _norm("".join(self.vocab.text[i] for i in prompt if 0 <= i < len(self.vocab.text)))
                row.sources = [(text, _COPY_PROMPT)] + [(p, n) for p, n in scaffold if n]
        self._seen = input_ids.shape[1]
        mask = torch.stack([self._allowed(row, scores.shape[1]) for row in self.rows])
        return scores.masked_fill(~mask, float("-inf"))

    # -- what may come next
    def _free_alternatives(self, row: _Row) -> list[tuple[tuple[int, ...], str]]:
        if not row.visible:
            return []  # citations and the closing tags follow something said
        ids = tuple(row.ranked) if row.part == "answer" else tuple(range(1, row.k + 1))  # the answer cites what it ranked
        if ids not in self._citations:
            self._citations[ids] = self._opening([f"{lead}{candidate_marker(n)}" for n in ids for lead in ("", " ")], "cite")
        cites = self._citations[ids]
        closing = [(self.close_think, "rank")] if row.part == "think" else [(self.close_answer, "done")]
        return cites + closing

    def _allowed(self, row: _Row, width: int):
        import torch

        vocab = self.vocab
        allowed = torch.zeros(width, dtype=torch.bool)
        if row.part == "done":
            allowed[vocab.eos] = True
        elif row.pending:
            allowed[[ids[0] for ids, _ in row.pending]] = True
        elif self._must_close(row):
            row.pending = [(self.close_think, "rank")] if row.part == "think" else [(self.close_answer, "done")]
            return self._allowed(row, width)
        else:
            allowed[: len(vocab.free)] = vocab.free if row.visible else vocab.visible_free
            allowed[[ids[0] for ids, _ in self._free_alternatives(row)]] = True
            context = tuple(row.written[-(_REPEAT - 1):])
            if len(context) == _REPEAT - 1:
                allowed[list(row.repeats.get(context, ()))] = False  # no span of _REPEAT tokens is written twice
            allowed[self._copying(row)] = False
            if row.part == "answer":
                allowed[vocab.line_breaks] = False  # the answer is one paragraph
        return allowed

    def _copying(self, row: _Row) -> list[int]:
        """Tokens that would make the free part copy a span of a source (the prompt, the scaffold) that is too long."""
        banned: list[int] = []
        for source, limit in row.sources:
            low, high = 0, min(len(row.tail), limit - 1)  # the longest end of the tail found in the source
            while low < high:
                mid = (low + high + 1) // 2
                low, high = (mid, high) if row.tail[-mid:] in source else (low, mid - 1)
            if low == 0:  # no copy under way (a single token longer than the limit is not looked for)
                continue
            match = row.tail[-low:] if low else ""
            start = source.find(match)
            for _ in range(64):  # each place the copy could go on from
                if start < 0:
                    break
                rest = source[start + low: start + limit]  # what would complete a copy of `limit` characters
                if len(rest) == limit - low:
                    banned += self.vocab.starting_with(rest)
                start = source.find(match, start + 1)
        return banned

    def _must_close(self, row: _Row) -> bool:
        if row.part == "think":
            return row.visible and row.part_tokens >= self.think_budget
        return row.visible and row.generated >= self.max_new_tokens - self.answer_reserve

    def _rank_choices(self, row: _Row) -> list[tuple[tuple[int, ...], str]]:
        room = self.max_new_tokens - row.generated - self.rank_reserve
        if len(row.ranked) == row.k or (row.ranked and room < 6):  # every id ranked, or no room for another
            return [(self.close_rank, "answer")]
        lead = " > " if row.ranked else ""
        choices = [(self._ids(f"{lead}{candidate_marker(n)}"), f"id {n}") for n in range(1, row.k + 1) if n not in row.ranked]
        return choices + ([(self.close_rank, "answer")] if row.ranked else [])

    # -- reading what was generated
    def _advance(self, row: _Row, token: int) -> None:
        row.generated += 1
        row.part_tokens += 1
        if row.part == "done":
            return
        if not row.pending:
            openings = [(ids, goal) for ids, goal in self._free_alternatives(row) if ids[0] == token]
            if not openings:  # free text
                text = self.vocab.text[token]
                row.visible = row.visible or _visible(text)
                row.tail = (row.tail + _norm(text))[-64:]
                if len(row.written) >= _REPEAT - 1:
                    row.repeats.setdefault(tuple(row.written[-(_REPEAT - 1):]), set()).add(token)
                row.written.append(token)
                return
            row.pending = openings
        else:
            row.pending = [(ids, goal) for ids, goal in row.pending if ids[0] == token]
        finished = [goal for ids, goal in row.pending if len(ids) == 1]
        row.pending = [(ids[1:], goal) for ids, goal in row.pending if len(ids) > 1]
        if finished and not row.pending:
            self._enter(row, finished[0])
        elif not finished and not row.pending:  # off the grammar (only if the mask was bypassed): end cleanly
            row.part = "done"

    def _enter(self, row: _Row, goal: str) -> None:
        if goal == "cite":  # back to the free text the citation interrupted
            row.tail = ""
        elif goal.startswith("id "):
            row.ranked.append(int(goal[3:]))
            row.pending = self._rank_choices(row)
        elif goal == "rank":
            row.part, row.part_tokens = "rank", 0
            row.pending = self._rank_choices(row)
        else:  # think, answer, done
            row.part, row.part_tokens, row.visible, row.tail = goal, 0, False, ""
