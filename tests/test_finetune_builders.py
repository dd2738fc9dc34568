"""WebQA / MultimodalQA builders: tiny files in the real source formats, converted and read back with the schema."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from mmrag_agent.finetune.builders import build_mmqa, build_webqa
from mmrag_agent.schema import DatasetError, read_rerank_examples

# --- WebQA_train_val.json: {guid: record}; field names as in the released file ------------------------------

def _img(image_id: int, title: str, caption: str) -> dict:
    return {"image_id": image_id, "title": title, "caption": caption, "url": f"https://commons.wikimedia.org/wiki/File:{image_id}.jpg",
            "imgUrl": f"https://upload.wikimedia.org/{image_id}.jpg"}


def _txt(snippet_id: str, title: str, fact: str) -> dict:
    return {"snippet_id": snippet_id, "title": title, "fact": fact, "url": f"https://en.wikipedia.org/wiki/{title.replace(' ', '_')}"}


WEBQA = {
    "d5bbc8720dba11ecb1e81171463288e9": {
        "Guid": "d5bbc8720dba11ecb1e81171463288e9", "split": "val", "Qcate": "color", "topic": "buildings",
        "Q": "\"What color is the marquee of the Castro Theatre?\"", "A": ["\"The marquee of the Castro Theatre is red.\""],
        "Keywords_A": "red",
        "img_posFacts": [_img(30013526, "Castro Theatre", "Castro Theatre, San Francisco The Castro Theatre in San Francisco.")],
        "img_negFacts": [_img(30013527, "Roxie Theater", "The Roxie Theater."), _img(30013528, "Fox Theatre", "Fox Theatre at night.")],
        "txt_posFacts": [],
        "txt_negFacts": [_txt("d5bb0001", "Castro District", "The Castro is a neighborhood in San Francisco.")],
    },
    "d5bb8982": {
        "Guid": "d5bb8982", "split": "val", "Qcate": "text", "topic": "airports",
        "Q": "SPN is an example of what thing 11mi west of downtown Belgrade?", "A": ["\"Airport\""],
        "Keywords_A": "TBD",  # WebQA's placeholder on text questions
        "img_posFacts": [], "img_negFacts": [_img(30099999, "Belgrade", "Belgrade skyline.")],
        "txt_posFacts": [_txt("snip-a", "Belgrade Nikola Tesla Airport", "It is the largest and busiest airport in Serbia."),
                         _txt("snip-b", "Saipan International Airport", "Saipan International Airport (IATA: SPN) is a public airport.")],
        "txt_negFacts": [_txt("snip-c", "Surcin", "Surcin is a suburb of Belgrade.")],
    },
    "d5bbtrain": {
        "Guid": "d5bbtrain", "split": "train", "Qcate": "YesNo", "Q": "Is the sky blue?", "A": ["\"Yes.\""], "Keywords_A": "Yes",
        "img_posFacts": [_img(30000001, "Sky", "A blue sky.")], "img_negFacts": [], "txt_posFacts": [], "txt_negFacts": [],
    },
}


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_webqa_val_split_ids_positives_modalities_answers_and_keywords(tmp_path):
    src = _write_json(tmp_path / "WebQA_train_val.json", WEBQA)
    out = tmp_path / "out" / "webqa-val.jsonl"
    assert build_webqa(src, out) == 2  # default split "val": the train record is left out
    first, second = read_rerank_examples(out)
    assert first.qid == "d5bbc8720dba11ecb1e81171463288e9" and second.qid == "d5bb8982"
    assert first.query == "What color is the marquee of the Castro Theatre?"  # WebQA's quotes removed
    assert first.answers == ["The marquee of the Castro Theatre is red."]
    assert (first.qtype, first.keywords) == ("color", "red")
    assert sorted(first.candidate_ids()) == ["30013526", "30013527", "30013528", "d5bb0001"]
    assert first.positives == ["30013526"]  # image_id becomes a string id
    by_id = {c.id: c for c in first.candidates}
    assert by_id["30013526"].modality == "image" and by_id["30013526"].title == "Castro Theatre"
    assert by_id["30013526"].text.startswith("Castro Theatre, San Francisco")  # caption is the surrogate
    assert by_id["d5bb0001"].modality == "text" and by_id["d5bb0001"].text == "The Castro is a neighborhood in San Francisco."
    assert all(c.image_path is None for c in first.candidates)  # no images_dir given
    assert second.positives == ["snip-a", "snip-b"] and second.answers == ["Airport"]
    assert (second.qtype, second.keywords) == ("text", None)  # "TBD" is no keyword
    assert read_rerank_examples(out)[0].keywords == "red"
    assert {c.modality for c in second.candidates} == {"image", "text"}


def test_webqa_image_paths_are_relative_to_the_output_file(tmp_path, caplog):
    src = _write_json(tmp_path / "WebQA_train_val.json", WEBQA)
    images = tmp_path / "images"
    images.mkdir()
    (images / "30013526.jpg").write_bytes(b"jpg")
    (images / "30013527.png").write_bytes(b"png")  # another extension is found too
    out = tmp_path / "data" / "webqa.jsonl"
    with caplog.at_level(logging.WARNING):
        build_webqa(src, out, images_dir=images)
    ex = read_rerank_examples(out)[0]
    paths = {c.id: c.image_path for c in ex.candidates if c.modality == "image"}
    assert paths == {"30013526": "../images/30013526.jpg", "30013527": "../images/30013527.png", "30013528": "../images/30013528.jpg"}
    assert ex.candidates[[c.id for c in ex.candidates].index("30013526")].image_file(out, allow_outside=True) == (images / "30013526.jpg").resolve()
    assert "not found" in caplog.text  # 30013528 and 30099999 have no file: counted in a warning


def test_webqa_split_all_limit_and_stable_candidate_order(tmp_path):
    src = _write_json(tmp_path / "WebQA_train_val.json", WEBQA)
    assert build_webqa(src, tmp_path / "all.jsonl", split=None) == 3
    assert build_webqa(src, tmp_path / "train.jsonl", split="train") == 1
    assert build_webqa(src, tmp_path / "one.jsonl", split="all", limit=1) == 1
    build_webqa(src, tmp_path / "again.jsonl", split=None)
    assert (tmp_path / "all.jsonl").read_text() == (tmp_path / "again.jsonl").read_text()  # deterministic
    unshuffled = tmp_path / "plain.jsonl"
    build_webqa(src, unshuffled, shuffle=False)
    assert read_rerank_examples(unshuffled)[0].candidate_ids() == ["30013526", "30013527", "30013528", "d5bb0001"]  # pos, then neg


@pytest.mark.parametrize("change, field, words", [
    (lambda r: r.pop("Q"), "[d5bb8982].Q", ["field required"]),
    (lambda r: r["img_negFacts"][0].pop("image_id"), "[d5bb8982].img_negFacts[0].image_id", ["field required"]),
    (lambda r: r["txt_posFacts"][1].update(snippet_id=None), "[d5bb8982].txt_posFacts[1].snippet_id", ["field required"]),
    (lambda r: r.update(txt_negFacts="oops"), "[d5bb8982].txt_negFacts", ["expected a list"]),
    (lambda r: r.update(A=[1]), "[d5bb8982].A", ["list of strings"]),
])
def test_webqa_errors_name_the_file_guid_and_field(tmp_path, change, field, words):
    data = json.loads(json.dumps(WEBQA))
    change(data["d5bb8982"])
    src = _write_json(tmp_path / "WebQA_train_val.json", data)
    with pytest.raises(DatasetError) as info:
        build_webqa(src, tmp_path / "out.jsonl")
    err = info.value
    assert err.path == str(src) and err.field == field
    assert all(w in str(err) for w in words) and "fix:" in str(err)
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written


def test_webqa_file_level_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"g": {"Q": "x",\n "A": [', encoding="utf-8")
    with pytest.raises(DatasetError, match="invalid JSON") as info:
        build_webqa(bad, tmp_path / "o.jsonl")
    assert info.value.line == 2
    with pytest.raises(DatasetError, match="keyed by guid"):
        build_webqa(_write_json(tmp_path / "list.json", [1, 2]), tmp_path / "o.jsonl")


# --- MultimodalQA: MMQA_dev.jsonl + MMQA_images.jsonl + MMQA_texts.jsonl ----------------------------------

def _answer(text: str, modality: str, image_ids=(), text_ids=()) -> dict:
    return {"answer": text, "type": "string", "modality": modality,
            "text_instances": [{"doc_id": d, "part": "text", "start_byte": 0, "text": text} for d in text_ids],
            "table_indices": [], "image_instances": [{"doc_id": d, "doc_part": "image"} for d in image_ids]}


def _question(qid: str, question: str, qtype: str, modalities: list, answers: list, support: list,
              image_ids: list, text_ids: list) -> dict:
    return {"qid": qid, "question": question, "answers": answers,
            "metadata": {"type": qtype, "modalities": modalities, "wiki_entities_in_question": [], "wiki_entities_in_answers": [],
                         "pseudo_language_question": "", "rephrasing_meta": {"accuracy": 1.0, "edit_distance": 0.5, "confidence": 0.8},
                         "image_doc_ids": image_ids, "text_doc_ids": text_ids, "intermediate_answers": [], "table_id": "tab1"},
            "supporting_context": [{"doc_id": d, "doc_part": p} for d, p in support]}


QUESTIONS = [
    _question("q1", "What sports is the Ben Piazza 1976 movie title?", "Compose(ImageQ,TableQ)", ["table", "image"],
              [_answer("baseball", "image", image_ids=["i1"])], [("tab1", "table"), ("i1", "image")], ["i1", "i2", "i3", "i9"], ["t1", "t2"]),
    _question("q2", "Which of these films have a poster with a boxer or were written by Tod Carroll?", "Compose(TextQ,ImageListQ)", ["text", "image"],
              [_answer("Rocky V", "image", image_ids=["i2"]), _answer("Clean and Sober", "image", image_ids=["i3"])],
              [("t1", "text"), ("i2", "image")], ["i1", "i2", "i3"], ["t1", "t2"]),
    _question("q3", "How many games did the team win in 1998?", "TableQ", ["table"],
              [{"answer": "12", "type": "string", "modality": "table", "table_indices": [[3, 2]]}], [("tab1", "table")], ["i4"], []),
]
IMAGES = [{"title": t, "url": f"https://en.wikipedia.org/wiki/{i}", "id": i, "path": f"{i}.jpg"}
          for i, t in [("i1", "The Bad News Bears"), ("i2", "Rocky V"), ("i3", "Clean and Sober"), ("i4", "Mask (1985 film)")]]
TEXTS = [{"title": "Tod Carroll", "url": "https://en.wikipedia.org/wiki/Tod_Carroll", "id": "t1", "text": "Tod Carroll wrote Clean and Sober."},
         {"title": "Ben Piazza", "url": "https://en.wikipedia.org/wiki/Ben_Piazza", "id": "t2", "text": "Ben Piazza was an American actor."}]


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def mmqa(tmp_path):
    return (_write_jsonl(tmp_path / "MMQA_dev.jsonl", QUESTIONS), _write_jsonl(tmp_path / "MMQA_images.jsonl", IMAGES),
            _write_jsonl(tmp_path / "MMQA_texts.jsonl", TEXTS))


def test_mmqa_images_and_texts(tmp_path, mmqa, caplog):
    questions, images, texts = mmqa
    out = tmp_path / "mmqa.jsonl"
    with caplog.at_level(logging.WARNING):
        assert build_mmqa(questions, images, texts, out) == 2  # q3 (table-only evidence) has no positive: skipped
    q1, q2 = read_rerank_examples(out)
    assert "1 distractor" in caplog.text  # i9 is not in MMQA_images.jsonl: skipped, counted
    assert sorted(q1.candidate_ids()) == ["i1", "i2", "i3", "t1", "t2"] and q1.positives == ["i1"]
    assert q1.answers == ["baseball"] and q1.qtype == "Compose(ImageQ,TableQ)" and q1.keywords is None
    assert q1.modalities == ["table", "image"]  # metadata.modalities kept as an extra field
    by_id = {c.id: c for c in q1.candidates}
    assert (by_id["i1"].modality, by_id["i1"].title, by_id["i1"].text) == ("image", "The Bad News Bears", "The Bad News Bears")
    assert (by_id["t2"].modality, by_id["t2"].title, by_id["t2"].text) == ("text", "Ben Piazza", "Ben Piazza was an American actor.")
    assert sorted(q2.positives) == ["i2", "i3", "t1"]  # supporting_context plus the answers' image_instances
    assert q2.answers == ["Rocky V", "Clean and Sober"]


def test_mmqa_image_only_like_the_shared_mmqa_image_set(tmp_path, mmqa):
    questions, images, _ = mmqa
    out = tmp_path / "sub" / "mmqa-image.jsonl"
    assert build_mmqa(questions, images, None, out, images_dir=tmp_path / "final_dataset_images") == 2
    q1, q2 = read_rerank_examples(out)
    assert {c.modality for c in q1.candidates + q2.candidates} == {"image"}
    assert sorted(q2.positives) == ["i2", "i3"]
    assert {c.id: c.image_path for c in q1.candidates} == {i: f"../final_dataset_images/{i}.jpg" for i in ("i1", "i2", "i3")}
    assert build_mmqa(questions, images, None, tmp_path / "all.jsonl", skip_without_positives=False) == 3
    q3 = read_rerank_examples(tmp_path / "all.jsonl")[2]
    assert q3.positives == [] and q3.candidate_ids() == ["i4"] and q3.answers == ["12"]
    assert build_mmqa(questions, images, texts=None, out=tmp_path / "lim.jsonl", limit=1) == 1
    gz = tmp_path / "MMQA_dev.jsonl.gz"  # the released files are gzipped
    gz.write_bytes(gzip.compress(questions.read_bytes()))
    build_mmqa(gz, images, None, tmp_path / "from-gz.jsonl", images_dir=tmp_path / "final_dataset_images")
    assert (tmp_path / "from-gz.jsonl").read_text() == out.read_text().replace("../final_dataset_images", "final_dataset_images")


@pytest.mark.parametrize("target, change, line, field, words", [
    ("questions", lambda rows: rows[1].pop("qid"), 2, "qid", ["field required"]),
    ("questions", lambda rows: rows[0]["supporting_context"][1].update(doc_id="i404"), 1, "supporting_context[1].doc_id", ["i404", "not in the image file"]),
    ("questions", lambda rows: rows[1]["metadata"].update(image_doc_ids="i1"), 2, "metadata.image_doc_ids", ["list of document ids"]),
    ("questions", lambda rows: rows.insert(1, "{broken"), 2, None, ["invalid JSON"]),
    ("images", lambda rows: rows[2].pop("title"), 3, "title", ["field required"]),
    ("texts", lambda rows: rows[0].update(text=7), 1, "text", ["expected a string"]),
])
def test_mmqa_errors_name_the_file_line_and_field(tmp_path, target, change, line, field, words):
    rows = {"questions": json.loads(json.dumps(QUESTIONS)), "images": json.loads(json.dumps(IMAGES)), "texts": json.loads(json.dumps(TEXTS))}
    change(rows[target])
    paths = {name: _write_jsonl(tmp_path / f"{name}.jsonl", data) for name, data in rows.items()}
    with pytest.raises(DatasetError) as info:
        build_mmqa(paths["questions"], paths["images"], paths["texts"], tmp_path / "out.jsonl")
    err = info.value
    assert (err.path, err.line, err.field) == (str(paths[target]), line, field)
    assert all(w in str(err) for w in words)


def test_mmqa_needs_some_documents(tmp_path, mmqa):
    with pytest.raises(ValueError, match="MMQA_images"):
        build_mmqa(mmqa[0], None, None, tmp_path / "out.jsonl")
