"""Hostile rerank-example files: every problem is one DatasetError line naming the file, the line and the fix."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from files import write_image

from mmrag_agent.schema import DatasetError, load_candidate_image, read_rerank_examples, resolve_image_path

EXAMPLE = {"qid": "q1", "query": "Which café is red?", "positives": ["c1"],
           "candidates": [{"id": "c1", "modality": "image", "text": "a red café", "image_path": "img/c1.png"},
                          {"id": "c2", "modality": "text", "text": "A blue door."}]}


def _line(**changes) -> bytes:
    return json.dumps(EXAMPLE | changes, ensure_ascii=False).encode("utf-8") + b"\n"


def _error(path: Path) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        read_rerank_examples(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)) and "; fix: " in message
    return info.value


@pytest.mark.parametrize("name, second_line, words", [
    ("latin1", json.dumps(EXAMPLE, ensure_ascii=False).encode("latin-1") + b"\n", ["not UTF-8", "byte 0xe9", "iconv"]),
    ("binary", b"\xff\xfe\x00{\x00\n", ["not UTF-8", "byte 0xff"]),
    ("deep", b'{"qid": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", ["nested too deeply"]),
    ("moderately-deep", b'{"qid": ' + b"[" * 500 + b"]" * 500 + b"}\n", ["nested more than 200 levels"]),
    ("digits", b'{"qid": "q", "n": ' + b"9" * 5000 + b"}\n", ["5000 digits", "at most 64 digits"]),
    ("negative-digits", b'{"qid": "q", "n": -' + b"9" * 100 + b"}\n", ["100 digits"]),
])
def test_bad_lines_give_one_line_errors_with_file_and_line(tmp_path, name, second_line, words):
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(_line() + second_line + _line(qid="q3"))
    error = _error(path)
    assert error.line == 2 and str(error).startswith(f"{path}:2: ")
    for word in words:
        assert word in str(error)


def test_gzip_is_recognised_by_content_and_a_fake_gz_is_refused(tmp_path):
    real = tmp_path / "real.jsonl.gz"
    real.write_bytes(gzip.compress(_line() + _line(qid="q2")))
    assert [e.qid for e in read_rerank_examples(real)] == ["q1", "q2"]
    unnamed = tmp_path / "compressed.jsonl"  # gzip without the .gz name is read too
    unnamed.write_bytes(real.read_bytes())
    assert len(read_rerank_examples(unnamed)) == 2

    fake = tmp_path / "fake.jsonl.gz"
    fake.write_bytes(_line())
    error = _error(fake)
    assert error.line is None and "named .gz but not gzip-compressed" in str(error) and "fake.jsonl" in error.fix

    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(gzip.compress(_line() * 200)[:-40])
    assert "damaged gzip data" in str(_error(truncated))


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _line())
    assert read_rerank_examples(path)[0].query == "Which café is red?"


def test_control_characters_in_a_qid_do_not_break_the_one_line_message(tmp_path):
    path = tmp_path / "ctrl.jsonl"
    path.write_bytes(_line(qid="q\n1\x1b[31m", candidates=[{"id": "c1", "modality": "image", "image_path": "../../etc/passwd"}]))
    candidate = read_rerank_examples(path)[0].candidates[0]
    with pytest.raises(DatasetError) as info:
        candidate.image_file(path)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


@pytest.mark.parametrize("image_path", ["../../../../etc/passwd", "/etc/passwd", "img/../../secret.png", "link/c1.png"])
def test_image_path_may_not_leave_the_data_files_folder(tmp_path, image_path):
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", data / "link")  # a symlink out of the folder counts as leaving it
    path = data / "dev.jsonl"
    path.write_bytes(_line() + _line(qid="q2", candidates=[{"id": "c1", "modality": "image", "image_path": image_path}]))
    example = read_rerank_examples(path)[1]
    with pytest.raises(DatasetError) as info:
        example.candidates[0].image_file(path)
    error = info.value
    assert (error.line, error.qid, error.field) == (2, "q2", "candidates[0].image_path")
    assert str(error).startswith(f"{path}:2: qid 'q2': field 'candidates[0].image_path': ") and "leads outside" in str(error)
    allowed = example.candidates[0].image_file(path, allow_outside=True)  # the caller may allow it
    assert allowed == Path(os.path.realpath(data / image_path))
    with pytest.raises(DatasetError, match="leads outside"):
        resolve_image_path(image_path, path)


def test_image_path_inside_the_folder_resolves_against_it_not_the_working_directory(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    write_image(data / "img" / "c1.png", size=(40, 30))
    path = data / "dev.jsonl"
    path.write_bytes(_line())
    monkeypatch.chdir(tmp_path)
    candidate = read_rerank_examples(path)[0].candidates[0]
    assert candidate.image_file(path) == (data / "img" / "c1.png").resolve()
    loaded = load_candidate_image(candidate, path, max_side=20)
    assert (loaded.width, loaded.height) == (40, 30) and max(loaded.image.size) == 20


@pytest.mark.parametrize("content, words", [(b"", "not a readable image"), (b"\x89PNG\r\n\x1a\n" + os.urandom(64), "image"),
                                            (None, "does not exist")])
def test_a_bad_image_names_the_line_and_the_qid(tmp_path, content, words):
    (tmp_path / "img").mkdir()
    if content is not None:
        (tmp_path / "img" / "c1.png").write_bytes(content)
    path = tmp_path / "dev.jsonl"
    path.write_bytes(_line(qid="q0") + b"\n" + _line(qid="q7"))
    candidate = read_rerank_examples(path)[1].candidates[0]
    with pytest.raises(DatasetError) as info:
        load_candidate_image(candidate, path)
    assert str(info.value).startswith(f"{path}:3: qid 'q7': field 'candidates[0].image_path': ") and words in str(info.value)
