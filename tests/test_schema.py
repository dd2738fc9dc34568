"""Rerank-example schema: parsing, display text, image paths, and errors that name the line, field and fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmrag_agent.schema import Candidate, DatasetError, RerankExample, read_rerank_examples

GOOD = {"qid": "q1", "query": "What color is the Santa Anita Park logo?",
        "candidates": [{"id": "c1", "modality": "image", "title": "Santa Anita Park", "text": "Santa Anita Park", "image_path": "img/c1.jpg"},
                       {"id": "c2", "modality": "text", "title": "Kentucky Derby", "text": "A horse race in Louisville."}],
        "positives": ["c1"], "answers": ["green"], "qtype": "ImageQ", "modalities": ["image"]}


def _write(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def _with(**changes) -> dict:
    record = json.loads(json.dumps(GOOD))
    record.update(changes)
    return record


def test_reads_valid_lines_skips_blank_ones_and_keeps_extra_fields(tmp_path):
    path = _write(tmp_path / "dev.jsonl", [GOOD, "", "   ", _with(qid="q2", answers=[], qtype=None)])
    examples = read_rerank_examples(path)
    assert [e.qid for e in examples] == ["q1", "q2"]
    first = examples[0]
    assert first.candidate_ids() == ["c1", "c2"] and first.positives == ["c1"] and first.keywords is None
    assert first.modalities == ["image"]  # extra field kept, not validated
    assert first.candidates[0].image_path == "img/c1.jpg"  # kept as written
    assert first.candidates[0].image_file(path) == tmp_path / "img" / "c1.jpg"
    assert first.candidates[1].image_file(path) is None
    assert Candidate(id="a", modality="image", image_path="/abs/a.png").image_file(path, allow_outside=True) == Path("/abs/a.png")
    assert read_rerank_examples(path, limit=1)[0].qid == "q1" and len(read_rerank_examples(path, limit=1)) == 1


def test_limit_stops_before_later_bad_lines(tmp_path):
    path = _write(tmp_path / "dev.jsonl", [GOOD, "{not json"])
    assert len(read_rerank_examples(path, limit=1)) == 1
    with pytest.raises(DatasetError):
        read_rerank_examples(path)


def test_display_text_is_title_then_text_without_repeating_the_title():
    assert Candidate(id="a", modality="text", title="Fox", text="A red fox.").display_text() == "Fox\nA red fox."
    assert Candidate(id="a", modality="image", title="Rocky V", text="Rocky V").display_text() == "Rocky V"
    assert Candidate(id="a", modality="image", text="only a caption").display_text() == "only a caption"
    assert Candidate(id="a", modality="image", title="Only title").display_text() == "Only title"
    assert Candidate(id="a", modality="image").display_text() == ""


BAD_CASES = [
    # (description, line written at line 3 after a good line and a blank line, field, words in the message)
    ("bad json", '{"qid": "q1", "query": ', None, ["invalid JSON", "column"]),
    ("not an object", '["q1"]', None, ["expected a JSON object", "list"]),
    ("missing query", {k: v for k, v in GOOD.items() if k != "query"}, "query", ["Field required", "add the field query"]),
    ("missing candidate id", _with(candidates=[{"modality": "image", "text": "x"}], positives=[]), "candidates[0].id", ["Field required"]),
    ("id not a string", _with(candidates=[{"id": 7, "modality": "image"}], positives=[]), "candidates[0].id", ["string", "got 7"]),
    ("positives a string", _with(positives="c1"), "positives", ["list", "make positives a JSON list"]),
    ("bad modality", _with(candidates=[{"id": "c1", "modality": "video"}]), "candidates[0].modality", ["'video'", "\"image\" or \"text\""]),
    ("duplicate ids", _with(candidates=[{"id": "c1", "modality": "image"}, {"id": "c1", "modality": "text"}]), "candidates",
     ["'c1' appears twice", "candidates[0] and candidates[1]", "distinct id"]),
    ("positive not a candidate", _with(positives=["c1", "zz"]), "positives", ["positives[1] = 'zz'", "only ids that appear in candidates"]),
    ("empty candidates", _with(candidates=[], positives=[]), "candidates", ["at least 1", "at least one item"]),
    ("empty query", _with(query=""), "query", ["at least 1 character", "non-empty"]),
    ("answers not strings", _with(answers=[3]), "answers[0]", ["string", "got 3"]),
]


@pytest.mark.parametrize("what, line, field, words", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_each_malformed_line_is_reported_with_file_line_field_and_fix(tmp_path, what, line, field, words):
    path = _write(tmp_path / "bad.jsonl", [GOOD, "", line])
    with pytest.raises(DatasetError) as info:
        read_rerank_examples(path)
    err = info.value
    message = str(err)
    assert isinstance(err, ValueError)
    assert err.line == 3 and message.startswith(f"{path}:3: ")  # 1-based, blank lines counted
    assert err.field == field
    if field:
        assert f"field '{field}'" in message
    assert "; fix: " in message and err.fix
    for word in words:
        assert word in message, message


def test_several_problems_on_one_line_are_counted(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [{"candidates": [], "positives": "x"}])
    with pytest.raises(DatasetError, match=r"more problem\(s\) on this line"):
        read_rerank_examples(path)


def test_models_validate_when_built_in_python():
    ex = RerankExample(qid="q", query="fox", candidates=[Candidate(id="a", modality="text", text="fox")], positives=[])
    assert ex.positives == [] and ex.answers == []
    with pytest.raises(ValueError, match="not the id of any candidate"):
        RerankExample(qid="q", query="fox", candidates=[{"id": "a", "modality": "text"}], positives=["b"])
