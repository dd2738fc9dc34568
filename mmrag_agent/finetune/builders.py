"""Convert WebQA and MultimodalQA into rerank-example JSONL, the input of both training stages.

Source formats (field names as published by the datasets' authors):

* **WebQA** ``WebQA_train_val.json``: one JSON object mapping ``Guid`` to a record with ``Q`` (the quoted
  question), ``A`` (a list with one quoted answer), ``Qcate``, ``split`` (``train`` / ``val``), optional
  ``Keywords_A``, and the evidence lists ``img_posFacts`` / ``img_negFacts`` (``image_id``, ``title``,
  ``caption``, ``url``, ``imgUrl``) and ``txt_posFacts`` / ``txt_negFacts`` (``snippet_id``, ``fact``,
  ``title``, ``url``). Images are the ``imgs.tsv`` entries, conventionally extracted to ``<image_id>.jpg``.
  ``Keywords_A`` is ``"TBD"`` on text questions; that placeholder is written as no keywords.
* **MultimodalQA** ``MMQA_{split}.jsonl``: one question a line with ``qid``, ``question``, ``answers``
  (``[{answer, type, modality, text_instances, image_instances, table_indices}]``), ``metadata`` (``type``,
  ``modalities``, ``image_doc_ids``, ``text_doc_ids``, ``table_id``, ...) and ``supporting_context``
  (``[{doc_id, doc_part}]``); ``MMQA_images.jsonl`` (``id``, ``title``, ``url``, ``path``) and
  ``MMQA_texts.jsonl`` (``id``, ``title``, ``url``, ``text``) hold the documents. Tables are not candidates.

Candidate ids are the datasets' own ids (``image_id`` as a string, ``snippet_id``, MMQA ``doc_id``), so they
are stable across runs; the candidate order is shuffled per query with a seed derived from the qid, so that
positives are not listed first (a tie-keeping ranker would otherwise profit from the order).
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Iterable, Iterator

from pydantic import ValidationError

from ..schema import DatasetError, RerankExample, iter_jsonl

__all__ = ["build_mmqa", "build_webqa"]

logger = logging.getLogger(__name__)

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


def build_webqa(path: str | Path, out: str | Path, split: str | None = "val", images_dir: str | Path | None = None,
                limit: int | None = None, *, skip_without_positives: bool = True, shuffle: bool = True) -> int:
    """Convert WebQA's ``WebQA_train_val.json`` into rerank-example JSONL.

    Each question becomes one line: candidates are its positive and negative image and text facts (image
    facts: ``text`` = caption, ``title`` = title; text facts: ``text`` = fact), ``positives`` are the ids of
    ``img_posFacts`` and ``txt_posFacts``, ``answers`` the unquoted ``A``, ``qtype`` = ``Qcate`` and
    ``keywords`` = ``Keywords_A`` when present.

    Args:
        path: ``WebQA_train_val.json`` (a JSON object keyed by guid).
        out: Output JSONL file (parent folders are created; an existing file is replaced).
        split: Keep records whose ``split`` equals this (``"train"`` / ``"val"``); None or ``"all"`` keeps all.
        images_dir: Folder of extracted images named ``<image_id>.<ext>``; when given, image candidates get an
            ``image_path`` relative to ``out``'s folder (``.jpg`` is assumed for files not found; their count is
            logged as a warning).
        limit: Stop after writing this many lines.
        skip_without_positives: Leave out questions without any positive fact.
        shuffle: Shuffle each question's candidates with a seed derived from its guid (deterministic).

    Returns:
        The number of lines written.

    Raises:
        DatasetError: The file is not JSON, not an object of records, or a record lacks ``Q`` / a fact id or has
            a field of the wrong type; the message names the file, the guid and the field.

    Example:
        >>> build_webqa("WebQA_train_val.json", "data/webqa-val.jsonl", split="val", images_dir="data/images")
        4966
        >>> read_rerank_examples("data/webqa-val.jsonl")[0].candidates[0].image_path  # for an image fact
        'images/30013526.jpg'
    """
    path, out = Path(path), Path(out)
    try:
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetError(path, exc.lineno, None, f"invalid JSON ({exc.msg} at column {exc.colno})",
                           "give the original WebQA_train_val.json (one JSON object keyed by guid)") from None
    if not isinstance(data, dict):
        raise DatasetError(path, None, None, f"expected a JSON object keyed by guid, got {type(data).__name__}",
                           "give the original WebQA_train_val.json (one JSON object keyed by guid)")
    state = _ImageLocator(images_dir, out)

    def rows() -> Iterator[tuple[dict, str]]:
        for guid, record in data.items():
            where = f"[{guid}]"
            if not isinstance(record, dict):
                raise DatasetError(path, None, where, f"expected an object, got {type(record).__name__}",
                                   "give each guid a WebQA record object")
            if split not in (None, "all") and record.get("split") != split:
                continue
            row = _webqa_row(path, str(guid), record, state)
            if row["positives"] or not skip_without_positives:
                yield row, where

    written = _write_rows(path, out, rows(), limit, shuffle)
    state.report(path)
    if not written:
        seen = sorted({str(r.get("split")) for r in data.values() if isinstance(r, dict)})
        logger.warning("%s: no question written for split=%r (splits in the file: %s)", path, split, ", ".join(seen))
    return written


def build_mmqa(questions: str | Path, images: str | Path | None, texts: str | Path | None, out: str | Path,
               images_dir: str | Path | None = None, limit: int | None = None, *,
               skip_without_positives: bool = True, shuffle: bool = True) -> int:
    """Convert MultimodalQA questions and their image / text documents into rerank-example JSONL.

    Candidates are the question's ``metadata.image_doc_ids`` (when ``images`` is given) and
    ``metadata.text_doc_ids`` (when ``texts`` is given), plus any gold document not listed there. Image
    candidates show their Wikipedia title (``title`` and ``text``), text candidates their paragraph.
    ``positives`` are the ``supporting_context`` documents and the answers' ``image_instances`` /
    ``text_instances`` of the included modalities; ``answers`` are the answer strings, ``qtype`` is
    ``metadata.type`` and ``metadata.modalities`` is kept as the extra field ``modalities``. Passing
    ``texts=None`` builds an image-only set like ``shared/data/mmqa-image``.

    Args:
        questions: ``MMQA_{train,dev}.jsonl`` (the test split has no gold evidence). Any of the three files
            may be gzipped (``.jsonl.gz``, as released).
        images: ``MMQA_images.jsonl``, or None to leave image candidates out.
        texts: ``MMQA_texts.jsonl``, or None to leave text candidates out.
        out: Output JSONL file (parent folders are created; an existing file is replaced).
        images_dir: The ``final_dataset_images`` folder; when given, image candidates get ``image_path`` =
            the document's ``path`` inside it, relative to ``out``'s folder.
        limit: Stop after writing this many lines.
        skip_without_positives: Leave out questions without a gold document of the included modalities
            (e.g. table-only questions).
        shuffle: Shuffle each question's candidates with a seed derived from its qid (deterministic).

    Returns:
        The number of lines written. Distractor ids missing from the document files are skipped (counted in
        a logged warning).

    Raises:
        DatasetError: A line is not a JSON object, lacks a required field (``qid``, ``question``; ``id`` and
            ``title`` of a document) or has one of the wrong type, or a gold document is missing from the
            document files; the message names the file, the 1-based line and the field.

    Example:
        >>> n = build_mmqa("MMQA_dev.jsonl", "MMQA_images.jsonl", None, "data/mmqa-image/dev.jsonl",
        ...                images_dir="final_dataset_images")  # image questions only, with image paths
        >>> read_rerank_examples("data/mmqa-image/dev.jsonl")[0].candidates[0].image_path
        '../../final_dataset_images/...'
    """
    if images is None and texts is None:
        raise ValueError("give MMQA_images.jsonl, MMQA_texts.jsonl or both: without documents there are no candidates")
    questions, out = Path(questions), Path(out)
    docs: dict[str, dict[str, dict]] = {}
    if images is not None:
        docs["image"] = _read_docs(Path(images), ("id", "title"), ("path", "url"))
    if texts is not None:
        docs["text"] = _read_docs(Path(texts), ("id", "title", "text"), ("url",))
    images_root = Path(images_dir) if images_dir is not None else None
    missing = [0]

    def rows() -> Iterator[tuple[dict, str]]:
        for number, record in iter_jsonl(questions):
            row = _mmqa_row(questions, number, record, docs, images_root, out, missing)
            if row["positives"] or not skip_without_positives:
                yield row, number

    written = _write_rows(questions, out, rows(), limit, shuffle)
    if missing[0]:
        logger.warning("%s: %d distractor document id(s) are not in the document files and were skipped", questions, missing[0])
    return written


# --- WebQA ------------------------------------------------------------------------------------------------

class _ImageLocator:
    def __init__(self, images_dir: str | Path | None, out: Path) -> None:
        self.root, self.out_dir, self.missing = (Path(images_dir) if images_dir is not None else None), out.parent, 0

    def image_path(self, image_id: str) -> str | None:
        if self.root is None:
            return None
        found = next((self.root / f"{image_id}{ext}" for ext in _IMAGE_EXTS if (self.root / f"{image_id}{ext}").is_file()), None)
        if found is None:
            self.missing += 1
            found = self.root / f"{image_id}.jpg"
        return _relative(found, self.out_dir)

    def report(self, source: Path) -> None:
        if self.missing:
            logger.warning("%s: %d image file(s) not found in %s; their image_path assumes <image_id>.jpg", source, self.missing, self.root)


def _webqa_row(path: Path, guid: str, record: dict, images: _ImageLocator) -> dict:
    where = f"[{guid}]"
    query = _unquote(_need_str(path, None, record, "Q", where, "give the question as a string"))
    answers = record.get("A", [])
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise DatasetError(path, None, f"{where}.A", f"expected a list of strings, got {answers!r}"[:200], "give A as a list of answer strings")
    keywords = record.get("Keywords_A")
    if isinstance(keywords, list):
        keywords = " ".join(str(k) for k in keywords)
    if isinstance(keywords, str) and keywords.strip().upper() == "TBD":
        keywords = None  # WebQA's placeholder on text questions: no keywords, score against the answer
    candidates: list[dict] = []
    positives: list[str] = []
    for key, positive in (("img_posFacts", True), ("txt_posFacts", True), ("img_negFacts", False), ("txt_negFacts", False)):
        facts = record.get(key) or []
        if not isinstance(facts, list):
            raise DatasetError(path, None, f"{where}.{key}", f"expected a list, got {type(facts).__name__}", f"give {key} as a list of fact objects")
        for i, fact in enumerate(facts):
            field = f"{where}.{key}[{i}]"
            if not isinstance(fact, dict):
                raise DatasetError(path, None, field, f"expected an object, got {type(fact).__name__}", "give each fact as an object")
            if key.startswith("img"):
                cid = _need_id(path, None, fact, "image_id", field)
                cand = {"id": cid, "modality": "image", "text": _opt_str(fact.get("caption")), "title": _opt_str(fact.get("title")) or None}
                image_path = images.image_path(cid)
                if image_path:
                    cand["image_path"] = image_path
            else:
                cid = _need_id(path, None, fact, "snippet_id", field)
                cand = {"id": cid, "modality": "text", "text": _opt_str(fact.get("fact")), "title": _opt_str(fact.get("title")) or None}
            if any(c["id"] == cid for c in candidates):
                continue  # the same fact listed twice: keep the first (positive) one
            candidates.append(cand)
            if positive:
                positives.append(cid)
    return {"qid": guid, "query": query, "candidates": candidates, "positives": positives,
            "answers": _dedupe(_unquote(a) for a in answers), "qtype": _opt_str(record.get("Qcate")) or None,
            "keywords": str(keywords).strip() if keywords not in (None, "") else None}


# --- MultimodalQA -----------------------------------------------------------------------------------------

def _read_docs(path: Path, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, dict]:
    docs: dict[str, dict] = {}
    for number, record in iter_jsonl(path):
        doc = {name: _need_str(path, number, record, name, "", f"give every document a string {name}") for name in required}
        for name in optional:
            value = record.get(name)
            if value is not None and not isinstance(value, str):
                raise DatasetError(path, number, name, f"expected a string, got {value!r}"[:200], f"make {name} a string")
            doc[name] = value
        docs[doc["id"]] = doc
    return docs


def _mmqa_row(path: Path, number: int, record: dict, docs: dict[str, dict[str, dict]], images_root: Path | None,
              out: Path, missing: list[int]) -> dict:
    qid = _need_str(path, number, record, "qid", "", "give every question its qid")
    query = _need_str(path, number, record, "question", "", "give every question its text")
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise DatasetError(path, number, "metadata", f"expected an object, got {type(metadata).__name__}", "give metadata as an object")
    answers, gold = _mmqa_answers(path, number, record.get("answers") or [])
    support = record.get("supporting_context") or []
    if not isinstance(support, list):
        raise DatasetError(path, number, "supporting_context", f"expected a list, got {type(support).__name__}", "give supporting_context as a list of {doc_id, doc_part}")
    for i, item in enumerate(support):
        if not isinstance(item, dict):
            raise DatasetError(path, number, f"supporting_context[{i}]", f"expected an object, got {type(item).__name__}", "give {doc_id, doc_part} objects")
        gold.append((_need_id(path, number, item, "doc_id", f"supporting_context[{i}]"), item.get("doc_part"), f"supporting_context[{i}].doc_id"))
    candidates: list[dict] = []
    positives: list[str] = []
    for modality, listed in (("image", "image_doc_ids"), ("text", "text_doc_ids")):
        if modality not in docs:
            continue
        ids = metadata.get(listed) or []
        if not isinstance(ids, list) or not all(isinstance(d, str) for d in ids):
            raise DatasetError(path, number, f"metadata.{listed}", f"expected a list of document ids, got {ids!r}"[:200], f"give metadata.{listed} as a list of strings")
        golds = [(doc_id, field) for doc_id, part, field in gold if part == modality]
        for doc_id, field in golds:
            if doc_id not in docs[modality]:
                raise DatasetError(path, number, field, f"gold {modality} document '{doc_id}' is not in the {modality} file",
                                   f"pass the MMQA_{modality}s.jsonl that holds every document of this split")
        for doc_id in _dedupe([*ids, *(d for d, _ in golds)]):
            doc = docs[modality].get(doc_id)
            if doc is None:
                missing[0] += 1
                continue
            candidates.append(_mmqa_candidate(modality, doc, images_root, out))
        positives += [d for d in _dedupe(d for d, _ in golds) if d not in positives]
    row = {"qid": qid, "query": query, "candidates": candidates, "positives": positives, "answers": answers,
           "qtype": _opt_str(metadata.get("type")) or None}
    if isinstance(metadata.get("modalities"), list):
        row["modalities"] = metadata["modalities"]
    return row


def _mmqa_answers(path: Path, number: int, answers: Any) -> tuple[list[str], list[tuple[str, str, str]]]:
    if not isinstance(answers, list):
        raise DatasetError(path, number, "answers", f"expected a list, got {type(answers).__name__}", "give answers as a list of {answer, ...} objects")
    texts, gold = [], []
    for i, answer in enumerate(answers):
        if not isinstance(answer, dict):  # the README's short form: plain answer strings
            texts.append(str(answer))
            continue
        if "answer" not in answer:
            raise DatasetError(path, number, f"answers[{i}].answer", "field required", "give every answer its answer string")
        texts.append(str(answer["answer"]))
        for key, part in (("image_instances", "image"), ("text_instances", "text")):
            for j, inst in enumerate(answer.get(key) or []):
                if isinstance(inst, dict) and inst.get("doc_id"):
                    gold.append((str(inst["doc_id"]), part, f"answers[{i}].{key}[{j}].doc_id"))
    return _dedupe(texts), gold


def _mmqa_candidate(modality: str, doc: dict, images_root: Path | None, out: Path) -> dict:
    if modality == "image":
        cand = {"id": doc["id"], "modality": "image", "text": doc["title"], "title": doc["title"]}
        if images_root is not None and doc.get("path"):
            cand["image_path"] = _relative(images_root / doc["path"], out.parent)
        return cand
    return {"id": doc["id"], "modality": "text", "text": doc["text"], "title": doc["title"] or None}


# --- shared helpers ---------------------------------------------------------------------------------------

def _write_rows(source: Path, out: Path, rows: Iterable[tuple[dict, Any]], limit: int | None, shuffle: bool) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    written = 0
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for row, where in rows:
                if limit is not None and written >= limit:
                    break
                if shuffle:
                    random.Random(f"candidates:{row['qid']}").shuffle(row["candidates"])
                try:
                    RerankExample.model_validate(row)
                except ValidationError as exc:
                    err = exc.errors(include_url=False)[0]
                    line, field = (where, None) if isinstance(where, int) else (None, where)
                    raise DatasetError(source, line, field, f"converted record is invalid: {'.'.join(map(str, err['loc']))}: {err['msg']}",
                                       "check this record's question text and evidence ids") from None
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                written += 1
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("%s -> %s: %d examples", source, out, written)
    return written


def _need_str(path: Path, line: int | None, record: dict, name: str, where: str, fix: str) -> str:
    field = f"{where}.{name}" if where else name
    if name not in record or record[name] is None:
        raise DatasetError(path, line, field, "field required", fix)
    if not isinstance(record[name], str):
        raise DatasetError(path, line, field, f"expected a string, got {record[name]!r}"[:200], fix)
    return record[name]


def _need_id(path: Path, line: int | None, record: dict, name: str, where: str) -> str:
    value = record.get(name)
    if value is None or value == "" or isinstance(value, (bool, dict, list, float)):
        raise DatasetError(path, line, f"{where}.{name}", "field required" if value in (None, "") else f"expected an id, got {value!r}",
                           f"give every item its {name} (a string or integer)")
    return str(value)


def _opt_str(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def _relative(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()
