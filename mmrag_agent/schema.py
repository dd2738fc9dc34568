"""Rerank examples: the JSONL data schema shared by training, evaluation and the CLI.

One query a line::

    {"qid": "q1", "query": "What color is the Santa Anita Park logo?",
     "candidates": [{"id": "c1", "modality": "image", "text": "Santa Anita Park", "title": "Santa Anita Park",
                     "image_path": "images/c1.jpg"},
                    {"id": "c2", "modality": "text", "text": "Santa Anita Park is a racetrack ..."}],
     "positives": ["c1"], "answers": ["green"], "qtype": "ImageQ", "keywords": null}

``image_path`` is relative to the JSONL file's folder and may not lead outside it (``..``, an absolute path
or a symlink elsewhere) unless the caller allows it (see :func:`resolve_image_path`). Fields not in the
schema (e.g. MultimodalQA's ``modalities``) are kept as extra attributes and otherwise ignored.

Files are read by :func:`mmrag_agent.jsonl.iter_jsonl`: UTF-8 (a BOM is accepted; any other encoding is
refused with the line of the first invalid byte, as JSON Lines requires UTF-8), gzip-compressed or not
(recognised by content). Every problem is one :class:`DatasetError` line naming the file, the line and the
fix: invalid JSON, nesting deeper than :data:`MAX_JSON_DEPTH`, integers longer than :data:`MAX_INT_DIGITS`
digits, lines over :data:`MAX_LINE_BYTES`, a ``.gz`` name on a file that is not gzip, a truncated gzip stream.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from .jsonl import MAX_INT_DIGITS, MAX_JSON_DEPTH, MAX_LINE_BYTES, DatasetError, iter_jsonl

__all__ = ["Candidate", "DatasetError", "RerankExample", "iter_jsonl", "load_candidate_image", "read_rerank_examples",
           "resolve_image_path", "MAX_INT_DIGITS", "MAX_JSON_DEPTH", "MAX_LINE_BYTES"]



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

    _source: Optional[tuple] = PrivateAttr(default=None)  # (line, qid, index) when read from a file

    def image_file(self, data_file: str | Path, allow_outside: bool = False, must_exist: bool = False) -> Path | None:
        """Resolve ``image_path`` against the folder of the JSONL file the candidate was read from.

        Delegates to :func:`resolve_image_path`; a candidate read by :func:`read_rerank_examples` names its
        line and qid in the error.

        Args:
            data_file: The JSONL file (not its folder) that holds this candidate.
            allow_outside: Allow a path that leads outside the JSONL file's folder.
            must_exist: Also require the file to exist.

        Returns:
            The image's resolved path, or None without an ``image_path``.

        Raises:
            DatasetError: ``image_path`` leads outside the folder and ``allow_outside`` is False, or (with
                ``must_exist``) names no file; the message names the line and qid of a candidate read from a file.

        Example:
            >>> Candidate(id="a", modality="image", image_path="img/a.jpg").image_file("/data/dev.jsonl")
            PosixPath('/data/img/a.jpg')
        """
        if not self.image_path:
            return None
        line, qid, index = self._source or (None, None, None)
        field = f"candidates[{index}].image_path" if index is not None else "image_path"
        return resolve_image_path(self.image_path, data_file, allow_outside, field, must_exist=must_exist, line=line, qid=qid)


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


def resolve_image_path(image_path: str, data_file: str | Path, allow_outside: bool = False, field: str = "image_path", *,
                       must_exist: bool = True, line: int | None = None, qid: str | None = None) -> Path:
    """The image a candidate's ``image_path`` names: resolved against the folder of its JSONL file.

    The path (``..`` and symlinks resolved) must stay inside that folder unless ``allow_outside``: a data
    file from elsewhere cannot make training or evaluation read, e.g., ``../../../../etc/passwd`` or
    ``/home/me/.ssh/id_rsa``.

    Args:
        image_path: The candidate's ``image_path`` as written in the file.
        data_file: The JSONL file (not its folder).
        allow_outside: Accept a path that leads outside the data file's folder.
        field: The field named in the error, e.g. ``candidates[2].image_path``.
        must_exist: Also require the file to exist.
        line: The 1-based line of the candidate's example (named in the error).
        qid: The example's qid (named in the error).

    Returns:
        The resolved absolute path.

    Raises:
        DatasetError: The path leads outside the folder (and ``allow_outside`` is False), is not a path, or (with
            ``must_exist``) names no file.

    Example:
        >>> resolve_image_path("img/a.jpg", "/data/dev.jsonl")  # if /data/img/a.jpg exists
        PosixPath('/data/img/a.jpg')
        >>> resolve_image_path("../../etc/passwd", "/data/dev.jsonl", line=3, qid="q7")
        Traceback (most recent call last):
        DatasetError: /data/dev.jsonl:3: qid 'q7': field 'image_path': '../../etc/passwd' leads outside ...
    """
    folder = Path(os.path.realpath(Path(data_file).absolute().parent))
    if "\x00" in image_path:
        raise DatasetError(data_file, line, field, "contains a NUL character", "give the image's path relative to the data file's folder", qid)
    resolved = Path(os.path.realpath(folder / image_path))  # an absolute image_path replaces the folder
    if not allow_outside and not resolved.is_relative_to(folder):
        raise DatasetError(data_file, line, field, f"{image_path!r} leads outside the data file's folder {folder}",
                           "keep images in (or under) the folder of the JSONL file, or allow images outside it "
                           "(allow_outside=True) if you trust this file", qid)
    if must_exist and not resolved.is_file():
        raise DatasetError(data_file, line, field, f"image file {resolved} does not exist",
                           "fix image_path (relative to the data file's folder) or use the model without images", qid)
    return resolved


def load_candidate_image(candidate: "Candidate", data_file: str | Path, allow_outside: bool = False,
                         max_side: int | None = None, max_pixels: int | None = None):
    """Open a candidate's image safely (see :func:`mmrag_agent.media.load_image`), or say which line is at fault.

    Args:
        candidate: An image candidate with an ``image_path``.
        data_file: The JSONL file it was read from.
        allow_outside: Accept an ``image_path`` that leads outside the data file's folder.
        max_side: Downscale so that the longer side is at most this.
        max_pixels: Decompression-bomb guard (default: :data:`mmrag_agent.media.DEFAULT_MAX_IMAGE_PIXELS`).

    Returns:
        A :class:`mmrag_agent.media.LoadedImage`.

    Raises:
        DatasetError: No ``image_path``, a path outside the folder, or a missing, unreadable or corrupt image;
            the message names the file, line, qid and field.

    Example:
        >>> ex = read_rerank_examples("dev.jsonl")[0]
        >>> load_candidate_image(ex.candidates[0], "dev.jsonl", max_side=448).image.size
        (448, 336)
    """
    from .media import DEFAULT_MAX_IMAGE_PIXELS, ImageRejected, load_image

    line, qid, index = candidate._source or (None, None, None)
    field = f"candidates[{index}].image_path" if index is not None else "image_path"
    if not candidate.image_path:
        raise DatasetError(data_file, line, field, f"candidate '{candidate.id}' has no image_path", "add the image's path", qid)
    path = candidate.image_file(data_file, allow_outside=allow_outside, must_exist=True)
    try:
        return load_image(path, max_pixels=max_pixels or DEFAULT_MAX_IMAGE_PIXELS, max_side=max_side)
    except ImageRejected as exc:
        raise DatasetError(data_file, line, field, f"image {candidate.image_path!r}: {exc}", "replace or re-export the image, "
                           "or fix image_path", qid) from None
    except OSError as exc:
        raise DatasetError(data_file, line, field, f"image {candidate.image_path!r} cannot be read ({exc.strerror or exc})",
                           "fix image_path (relative to the data file's folder) or the file's permissions", qid) from None


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


def read_rerank_examples(path: str | Path, limit: int | None = None) -> list[RerankExample]:
    """Read and validate a rerank-example JSONL file (one query a line; blank lines skipped).

    Args:
        path: The JSONL file (UTF-8).
        limit: Stop after this many examples (lines after them are not read or validated).

    Returns:
        The examples in file order; ``image_path`` values stay as written (resolve them with
        :meth:`Candidate.image_file` or :func:`resolve_image_path`; open them with :func:`load_candidate_image`,
        whose errors name the line and qid).

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
            example = RerankExample.model_validate(record)
        except ValidationError as exc:
            raise _dataset_error(path, number, exc) from None
        for index, candidate in enumerate(example.candidates):
            candidate._source = (number, example.qid, index)
        examples.append(example)
        if limit is not None and len(examples) >= limit:
            break
    return examples
