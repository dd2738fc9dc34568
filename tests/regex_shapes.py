"""A static check for regular-expression shapes that backtrack super-linearly, and a finder of a module's patterns.

Flagged: an unbounded quantifier nested in another (``(a+)+``, ``(\\s*)*``), and two unbounded quantifiers whose
characters overlap with only optional items between them (``\\s+(.+?)``, ``.+?\\s*#*\\s*$``): on a failing match
the engine tries every way of splitting the run between them. Possessive quantifiers and atomic groups never
backtrack and are not flagged. The character sets are compared on a sample of characters, which is enough for
the patterns of this project (ASCII classes, ``\\s``, ``\\w``, ``.``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import ModuleType

try:
    import re._constants as C
    import re._parser as sre_parse
except ImportError:  # Python 3.10
    import sre_constants as C
    import sre_parse

_SAMPLE = [chr(c) for c in range(0x250)] + ["\u00a0", "\u2003", "\u3000", "\u00e9", "\u4e2d", "\U0001F600"]
_CATEGORIES = {C.CATEGORY_DIGIT: r"\d", C.CATEGORY_NOT_DIGIT: r"\D", C.CATEGORY_SPACE: r"\s", C.CATEGORY_NOT_SPACE: r"\S",
               C.CATEGORY_WORD: r"\w", C.CATEGORY_NOT_WORD: r"\W"}
_REPEATS = (C.MAX_REPEAT, C.MIN_REPEAT)
_FUNCTIONS = {"compile", "match", "search", "fullmatch", "findall", "finditer", "sub", "subn", "split"}


def risky_shapes(pattern: str, flags: int = 0) -> list[str]:
    """Descriptions of the super-linear shapes in ``pattern`` (empty when there are none)."""
    problems: list[str] = []
    _sequence(list(sre_parse.parse(pattern, flags)), problems, nested=False)
    return problems


def module_patterns(module: ModuleType) -> list[tuple[str, int]]:
    """Every regular expression of a module: compiled ones among its globals (in containers too) and literal
    patterns passed to ``re.<function>`` in its source."""
    found: list[tuple[str, int]] = []
    for value in vars(module).values():
        values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple, set, frozenset)) else [value]
        found += [(v.pattern, v.flags) for v in values if isinstance(v, re.Pattern) and isinstance(v.pattern, str)]
    tree = ast.parse(Path(module.__file__).read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "re" and node.func.attr in _FUNCTIONS and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.args[0].value, 0))
    return found


def _unbounded(item) -> bool:
    op, av = item
    return op in _REPEATS and av[1] == C.MAXREPEAT


def _optional(item) -> bool:
    op, av = item
    return (op in _REPEATS and av[0] == 0) or op == C.AT


def _sequence(items: list, problems: list[str], nested: bool) -> None:
    for index, item in enumerate(items):
        op, av = item
        if op in _REPEATS:
            if av[1] == C.MAXREPEAT and nested:
                problems.append("nested unbounded quantifiers")
            _sequence(list(av[2]), problems, nested or av[1] == C.MAXREPEAT)
        elif op == C.SUBPATTERN:
            _sequence(list(av[-1]), problems, nested)
        elif op == C.BRANCH:
            for branch in av[1]:
                _sequence(list(branch), problems, nested)
        trailing = _edge(item, last=True)
        if trailing is None:
            continue
        for following in items[index + 1:]:
            leading = _edge(following, last=False)
            if leading is not None and _chars(trailing) & _chars(leading):
                problems.append("adjacent unbounded quantifiers over the same characters")
                break
            if not _optional(following):
                break


def _edge(item, last: bool):
    """The unbounded repeat an item starts (or ends) with, if any."""
    op, av = item
    if _unbounded(item):
        return item
    if op == C.SUBPATTERN and av[-1]:
        return _edge(list(av[-1])[-1 if last else 0], last)
    if op in _REPEATS and av[1] in (0, 1) and av[2]:  # an optional group: look inside
        return _edge(list(av[2])[-1 if last else 0], last)
    return None


def _chars(item) -> frozenset[str]:
    """The sample characters an item can consume."""
    op, av = item
    if op in _REPEATS:
        return frozenset().union(*(_chars(i) for i in av[2]))
    if op == C.SUBPATTERN:
        return frozenset().union(*(_chars(i) for i in av[-1]))
    if op == C.BRANCH:
        return frozenset().union(*(_chars(i) for branch in av[1] for i in branch))
    return frozenset(c for c in _SAMPLE if _matches(item, c))


def _matches(item, c: str) -> bool:
    op, av = item
    if op == C.LITERAL:
        return ord(c) == av
    if op == C.NOT_LITERAL:
        return ord(c) != av
    if op == C.ANY:
        return c != "\n"
    if op == C.CATEGORY:
        return re.match(_CATEGORIES.get(av, r"[\s\S]"), c) is not None
    if op == C.IN:
        negate = any(o == C.NEGATE for o, _ in av)
        hit = any(_member(o, a, c) for o, a in av if o != C.NEGATE)
        return hit != negate
    return False


def _member(op, av, c: str) -> bool:
    if op == C.LITERAL:
        return ord(c) == av
    if op == C.RANGE:
        return av[0] <= ord(c) <= av[1]
    if op == C.CATEGORY:
        return re.match(_CATEGORIES.get(av, r"[\s\S]"), c) is not None
    return True  # unknown set member: assume it overlaps
