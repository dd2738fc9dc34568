"""JSON Lines files read defensively: every problem is one :class:`DatasetError` line naming the file, line and fix.

Lines are UTF-8 (a BOM is accepted; any other encoding is refused with the line and column of the first invalid
byte, as JSON Lines requires UTF-8), and files gzip-compressed or not (recognised by content). Refused, with the
line: invalid JSON, nesting deeper than :data:`MAX_JSON_DEPTH`, integers longer than :data:`MAX_INT_DIGITS`
digits, lines over :data:`MAX_LINE_BYTES`; and a ``.gz`` name on a file that is not gzip, a truncated gzip stream.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterator

__all__ = ["DatasetError", "iter_jsonl", "MAX_INT_DIGITS", "MAX_JSON_DEPTH", "MAX_LINE_BYTES"]

#: Limits on one JSONL line: nesting depth, digits of an integer, bytes.
MAX_JSON_DEPTH = 200
MAX_INT_DIGITS = 64
MAX_LINE_BYTES = 64 << 20


class DatasetError(ValueError):
    """A rerank-example file cannot be read; the message names the file, the 1-based line, the field and the fix.

    The message is always one line: control characters in the file name, the qid or the problem are escaped.

    Attributes:
        path: The file.
        line: 1-based line number (None for file-level problems).
        field: The offending field as a path like ``candidates[2].id`` (None for JSON syntax errors).
        fix: What to change.
        qid: The query id of the offending example, when known.
    """

    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str, fix: str,
                 qid: str | None = None) -> None:
        self.path, self.line, self.field, self.problem, self.fix, self.qid = str(path), line, field, problem, fix, qid
        where = _one_line(str(path), 300) + (f":{line}" if line is not None else "")
        if qid is not None:
            where += f": qid {_one_line(repr(qid), 80)}"
        what = f"field '{field}': {problem}" if field else problem
        super().__init__(f"{where}: {_one_line(what, 500)}; fix: {_one_line(fix, 300)}")


def _one_line(text: str, limit: int) -> str:
    """``text`` with control characters escaped, cut to ``limit`` characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def iter_jsonl(path: str | Path, fix: str = "write one JSON object a line") -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` from a JSONL file (gzip-compressed too), skipping blank lines.

    Raises:
        DatasetError: For a line that is not UTF-8, not valid JSON, not a JSON object, nested deeper than
            :data:`MAX_JSON_DEPTH`, holding an integer of more than :data:`MAX_INT_DIGITS` digits or longer
            than :data:`MAX_LINE_BYTES`; for a ``.gz`` name on a file that is not gzip, or a damaged gzip
            stream. ``fix`` is the advice given for JSON problems.
    """
    path = Path(path)
    with open(path, "rb") as raw_file:
        compressed = raw_file.read(2) == b"\x1f\x8b"
        raw_file.seek(0)
        if path.suffix == ".gz" and not compressed:
            raise DatasetError(path, None, None, "named .gz but not gzip-compressed",
                               f"rename it to {path.with_suffix('').name} or compress it with gzip")
        fh: BinaryIO = gzip.GzipFile(fileobj=raw_file) if compressed else raw_file
        number = 0
        while True:
            number += 1
            try:
                raw = fh.readline(MAX_LINE_BYTES + 1)
            except (OSError, EOFError, zlib.error) as exc:
                raise DatasetError(path, number, None, f"damaged gzip data ({exc})", "re-create the .gz file") from None
            if not raw:
                return
            if len(raw) > MAX_LINE_BYTES:
                raise DatasetError(path, number, None, f"line longer than {MAX_LINE_BYTES >> 20} MiB", fix)
            record = _parse_line(path, number, raw, fix)
            if record is not None:
                yield number, record


def _parse_line(path: Path, number: int, raw: bytes, fix: str) -> dict | None:
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(path, number, None, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                           "save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 IN > OUT") from None
    if not text.strip():
        return None
    try:
        record = json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise DatasetError(path, number, None, f"invalid JSON ({exc.msg} at column {exc.colno})", fix) from None
    except RecursionError:
        raise DatasetError(path, number, None, "JSON nested too deeply", f"nest at most {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # _bounded_int
        raise DatasetError(path, number, None, str(exc), f"write numbers of at most {MAX_INT_DIGITS} digits (or as strings)") from None
    if not isinstance(record, dict):
        raise DatasetError(path, number, None, f"expected a JSON object, got {type(record).__name__}", fix)
    if _depth(record) > MAX_JSON_DEPTH:
        raise DatasetError(path, number, None, f"JSON nested more than {MAX_JSON_DEPTH} levels deep", f"nest at most {MAX_JSON_DEPTH} levels")
    return record


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer with {len(text.lstrip('-'))} digits (more than {MAX_INT_DIGITS})")
    return int(text)


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
