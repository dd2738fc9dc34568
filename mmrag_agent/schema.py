"""Rerank examples: the JSONL data schema shared by training, evaluation and the CLI.

One query a line::

    {"qid": "q1", "query": "What color is the Santa Anita Park logo?",
     "candidates": [{"id": "c1", "modality": "image", "text": "Santa Anita Park", "title": "Santa Anita Park",
                     "image_path": "images/c1.jpg"},
                    {"id": "c2", "modality": "text", "text": "Santa Anita Park is a racetrack ..."}],
     "positives": ["c1"], "answers": ["green"], "qtype": "ImageQ", "keywords": null}

``image_path`` is relative to the JSONL file's folder (see :meth:`Candidate.image_file`). Fields not in the
schema (e.g. MultimodalQA's ``modalities``) are kept as extra attributes and otherwise ignored.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

__all__ = ["Candidate", "DatasetError", "RerankExample", "read_rerank_examples", "resolve_image_path"]


class Candidate(BaseModel):
    """One candidate source of a query: an image (shown by its text surrogate to text models) or a passage.

    Args:
        id: Identifier, unique within the query's candidates; ``positives`` refer to it.
        modality: ``"image"`` or ``"text"``.
        text: The passage, or for an image its text surrogate (caption / alt text / OCR); may be empty.
        title: Optional title (document title, or the image's page title).
        image_path: Optional image file, relative to the JSONL file's folder (or absolute); kept as written.

    Example:
        >>> c = Candidate(id="c1", modality="image", title="Santa Anita Park", text="Grandstand and track")
        >>> c.display_text()
        'Santa Anita Park\\nGrandstand and track'
    """

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    modality: Literal["image", "text"]
    text: str = ""
    title: Optional[str] = None
    image_path: Optional[str] = None

    def display_text(self) -> str:
        """The candidate as a text model reads it: the title (if any), then the text, one per line.

        The text is left out when it only repeats the title (image candidates whose surrogate *is* the
        title). No truncation is applied here; prompt builders apply their token budget.

        Returns:
            ``"title\\ntext"``, ``"title"``, ``"text"`` or ``""``.

        Example:
            >>> Candidate(id="a", modality="image", title="Rocky V", text="Rocky V").display_text()
            'Rocky V'
        """
        title, text = (self.title or "").strip(), self.text.strip()
        if text == title:
            text = ""
        return "\n".join(part for part in (title, text) if part)

    def image_file(self, data_file: str | Path) -> Path | None:
        """Resolve ``image_path`` against the folder of the JSONL file the candidate was read from.

        Args:
            data_file: The JSONL file (not its folder) that holds this candidate.

        Returns:
            The image's path (an absolute ``image_path`` is returned unchanged), or None without an
            ``image_path``. Existence is not checked.

        Example:
            >>> Candidate(id="a", modality="image", image_path="img/a.jpg").image_file("/data/dev.jsonl")
            PosixPath('/data/img/a.jpg')
        """
        if not self.image_path:
            return None
        path = Path(self.image_path)
        return path if path.is_absolute() else Path(data_file).parent / path


class RerankExample(BaseModel):
    """One query with its candidate pool and gold labels.

    Args:
        qid: Query id.
        query: The question.
        candidates: The candidate pool (at least one; ids unique).
        positives: Ids of the relevant candidates; each must be a candidate id. May be empty (a query
            with nothing relevant in its pool); ranking metrics score such a query 0.
        answers: Gold answers (may be empty).
        qtype: Optional category (MultimodalQA ``type``, WebQA ``Qcate``).
        keywords: Optional answer keywords (WebQA ``Keywords_A``).

    Example:
        >>> ex = RerankExample(qid="q1", query="red fox?", positives=["a"],
        ...                    candidates=[{"id": "a", "modality": "text", "text": "A red fox."}])
        >>> ex.candidate_ids()
        ['a']
    """

    model_config = ConfigDict(extra="allow")

    qid: str = Field(min_length=1)
    query: str = Field(min_length=1)
    candidates: list[Candidate] = Field(min_length=1)
    positives: list[str]
    answers: list[str] = Field(default_factory=list)
    qtype: Optional[str] = None
    keywords: Optional[str] = None

    @field_validator("candidates")
    @classmethod
    def _unique_ids(cls, candidates: list[Candidate]) -> list[Candidate]:
        seen: dict[str, int] = {}
        for i, cand in enumerate(candidates):
            if cand.id in seen:
                raise PydanticCustomError("duplicate_candidate_id", "candidate id '{id}' appears twice (candidates[{first}] and candidates[{second}])",
                                          {"id": cand.id, "first": seen[cand.id], "second": i})
            seen[cand.id] = i
        return candidates

    @field_validator("positives")
    @classmethod
    def _positives_are_candidates(cls, positives: list[str], info: ValidationInfo) -> list[str]:
        candidates = info.data.get("candidates")
        if candidates is None:  # candidates invalid: reported on their own
            return positives
        ids = {c.id for c in candidates}
        for i, pid in enumerate(positives):
            if pid not in ids:
                raise PydanticCustomError("positive_not_candidate", "positives[{index}] = '{id}' is not the id of any candidate",
                                          {"index": i, "id": pid})
        return positives

    def candidate_ids(self) -> list[str]:
        """The candidate ids in their given order."""
        return [c.id for c in self.candidates]


class DatasetError(ValueError):
    """A rerank-example file cannot be read; the message names the file, the 1-based line, the field and the fix.

    Attributes:
        path: The file.
        line: 1-based line number (None for file-level problems).
        field: The offending field as a path like ``candidates[2].id`` (None for JSON syntax errors).
        fix: What to change.
    """

    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str, fix: str) -> None:
        self.path, self.line, self.field, self.problem, self.fix = str(path), line, field, problem, fix
        where = f"{path}:{line}" if line is not None else str(path)
        what = f"field '{field}': {problem}" if field else problem
        super().__init__(f"{where}: {what}; fix: {fix}")


_FIXES = {
    "missing": "add the field {field} (schema: qid, query, candidates[{{id, modality, text, title, image_path}}], positives, answers, qtype, keywords)",
    "string_type": "make {field} a JSON string",
    "list_type": "make {field} a JSON list",
    "model_type": "make {field} a JSON object",
    "model_attributes_type": "make {field} a JSON object",
    "literal_error": "use \"image\" or \"text\" for {field}",
    "too_short": "give {field} at least one item (string fields must not be empty)",
    "string_too_short": "give {field} a non-empty value",
    "duplicate_candidate_id": "give every candidate of a query a distinct id",
    "positive_not_candidate": "list in positives only ids that appear in candidates (or add the missing candidate)",
}


def _field_name(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(line)"


def _dataset_error(path: Path, line: int, exc: ValidationError) -> DatasetError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    field = _field_name(first["loc"])
    problem = first["msg"]
    if first["type"] not in ("missing", "duplicate_candidate_id", "positive_not_candidate"):
        problem += f", got {first.get('input')!r}"[:200]
    if len(errors) > 1:
        problem += f" (and {len(errors) - 1} more problem(s) on this line)"
    fix = _FIXES.get(first["type"], "correct {field} to match the rerank-example schema").format(field=field)
    return DatasetError(path, line, field, problem, fix)


def iter_jsonl(path: str | Path, fix: str = "write one JSON object a line") -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` from a JSONL file (``.gz`` too), skipping blank lines.

    Raises:
        DatasetError: For a line that is not valid JSON or not a JSON object; ``fix`` is the advice given.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DatasetError(path, number, None, f"invalid JSON ({exc.msg} at column {exc.colno})", fix) from None
            if not isinstance(record, dict):
                raise DatasetError(path, number, None, f"expected a JSON object, got {type(record).__name__}", fix)
            yield number, record


def read_rerank_examples(path: str | Path, limit: int | None = None) -> list[RerankExample]:
    """Read and validate a rerank-example JSONL file (one query a line; blank lines skipped).

    Args:
        path: The JSONL file (UTF-8).
        limit: Stop after this many examples (lines after them are not read or validated).

    Returns:
        The examples in file order; ``image_path`` values stay as written (resolve them with
        :meth:`Candidate.image_file`).

    Raises:
        DatasetError: At the first bad line: invalid JSON, a line that is not an object, a missing field, a
            wrong type, duplicate candidate ids, a positive that is not a candidate id, or no candidates.
        FileNotFoundError: ``path`` does not exist.

    Example:
        >>> examples = read_rerank_examples("shared/data/mmqa-image/train.jsonl", limit=50)
        >>> examples[0].positives
        ['cadbc8e1fb23d7fe15b88ea1141d2dd2']
    """
    path = Path(path)
    examples: list[RerankExample] = []
    if limit is not None and limit <= 0:
        return examples
    for number, record in iter_jsonl(path, fix="write each example as one complete JSON object on a single line"):
        try:
            examples.append(RerankExample.model_validate(record))
        except ValidationError as exc:
            raise _dataset_error(path, number, exc) from None
        if limit is not None and len(examples) >= limit:
            break
    return examples


def resolve_image_path(image_path: str, data_file: str | Path, allow_outside: bool = False, field: str = "image_path") -> Path:
    """An example's ``image_path`` resolved against the folder of its JSONL file; it must exist and stay inside.

    Args:
        image_path: The candidate's ``image_path`` as written (relative to the data file, or absolute).
        data_file: The JSONL file the candidate was read from.
        allow_outside: Accept a path that leaves the data file's folder (``../``, absolute elsewhere, a link).
        field: Names the field in error messages.

    Returns:
        The resolved path.

    Raises:
        DatasetError: The image leaves the folder (without ``allow_outside``) or does not exist.

    Example:
        >>> resolve_image_path("img/a.jpg", "/data/dev.jsonl")  # /data/img/a.jpg, if it exists
    """
    folder = Path(data_file).resolve().parent
    path = (folder / image_path).resolve()
    if not allow_outside and not path.is_relative_to(folder):
        raise DatasetError(data_file, None, field, f"{image_path!r} points outside {folder}",
                           "keep images inside the data file's folder, or allow paths outside it explicitly")
    if not path.is_file():
        raise DatasetError(data_file, None, field, f"image file {path} does not exist",
                           "fix image_path (relative to the data file's folder) or use the model without images")
    return path
