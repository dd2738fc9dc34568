"""Training records of both stages: the split, balance, hard negatives, permutations, gold ids, prompts, images."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from mmrag_agent.schema import DatasetError
from mmrag_agent.finetune.datasets import split_by_question, stage1_records, stage2_records, to_dataset
from mmrag_agent.prompts import stage2_messages
from mmrag_agent.prompts import CandidateView
from mmrag_agent.schema import RerankExample, read_rerank_examples

SHARED_MMQA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mmqa-image" / "train.jsonl"


def _example(qid: str, n: int, positives: list[int], **extra) -> RerankExample:
    cands = [{"id": f"{qid}-c{i}", "modality": "image" if i % 2 else "text", "title": f"Title {qid} {i}",
              "text": f"passage {i} of {qid}"} for i in range(n)]
    return RerankExample(qid=qid, query=f"question {qid}?", candidates=cands, positives=[f"{qid}-c{i}" for i in positives],
                         answers=[f"answer {qid}"], **extra)


EXAMPLES = [_example("q1", 10, [0]), _example("q2", 8, [1, 4]), _example("q3", 3, [0, 1]), _example("q4", 5, []),
            _example("q5", 12, [2, 3, 5, 7, 9, 11]), _example("q6", 2, [1], qtype="color", keywords="red")]


def _user_text(record: dict) -> str:
    content = record["prompt"][-1]["content"]
    return content if isinstance(content, str) else "".join(p.get("text") or "" for p in content)


# --- split --------------------------------------------------------------------------------------------------

def test_split_is_deterministic_disjoint_and_independent_of_order():
    examples = [_example(f"q{i}", 3, [0]) for i in range(50)]
    train, held = split_by_question(examples, 0.2, seed=0)
    assert len(held) == 10 and len(train) == 40
    assert not {e.qid for e in train} & {e.qid for e in held}
    assert [e.qid for e in train] == [e.qid for e in examples if e.qid not in {h.qid for h in held}]  # input order kept
    train_r, held_r = split_by_question(examples[::-1], 0.2, seed=0)
    assert {e.qid for e in held_r} == {e.qid for e in held}  # the file order does not matter
    assert {e.qid for e in split_by_question(examples, 0.2, seed=1)[1]} != {e.qid for e in held}
    assert split_by_question(examples, 0.0)[1] == [] and split_by_question(examples, 1.0)[0] == []
    twice = examples + [examples[0]]  # a repeated qid lands on one side only
    t, h = split_by_question(twice, 0.5)
    assert sum(e.qid == "q0" for e in t) in (0, 2) and sum(e.qid == "q0" for e in h) in (0, 2)
    with pytest.raises(ValueError):
        split_by_question(examples, 1.5)


# --- stage 1 ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("per_positive", [1, 2])
def test_stage1_is_balanced_with_hard_negatives_from_the_same_query(per_positive):
    records = stage1_records(EXAMPLES, negatives_per_positive=per_positive, seed=0)
    by_ex = {e.qid: e for e in EXAMPLES}
    assert "q4" not in {r["qid"] for r in records}  # no positive: no balanced units
    for qid, ex in by_ex.items():
        mine = [r for r in records if r["qid"] == qid]
        labels = Counter(r["label"] for r in mine)
        pool = len(ex.candidates) - len(ex.positives)
        if ex.positives:
            assert labels["yes"] == len(ex.positives)
            assert labels["no"] == min(len(ex.positives) * per_positive, pool)
        for r in mine:
            assert r["candidate_id"] in ex.candidate_ids()  # negatives come from this query's own pool
            assert (r["label"] == "yes") == (r["candidate_id"] in ex.positives)
        assert len({r["candidate_id"] for r in mine}) == len(mine)  # sampled without replacement
    # q1: 1 positive, 9 negatives available -> exactly 1 (or 2) sampled; q3: 2 positives, 1 negative -> 1
    assert Counter(r["label"] for r in records if r["qid"] == "q3") == {"yes": 2, "no": 1}


def test_stage1_is_deterministic_and_the_seed_changes_the_sample():
    a, b = stage1_records(EXAMPLES, seed=3), stage1_records(EXAMPLES, seed=3)
    assert a == b
    negs = lambda recs: [(r["qid"], r["candidate_id"]) for r in recs if r["label"] == "no"]
    assert any(negs(stage1_records(EXAMPLES, seed=s)) != negs(a) for s in range(4, 8))
    # a query's records do not depend on the other queries
    alone = stage1_records([EXAMPLES[0]], seed=3)
    assert alone == [r for r in a if r["qid"] == "q1"]


def test_stage1_prompt_is_the_shared_stage1_prompt_with_the_query_first():
    record = stage1_records([EXAMPLES[0]], seed=0)[0]
    assert set(record) == {"prompt", "label", "weight", "qid", "candidate_id"} and record["weight"] == 1.0
    system, user = record["prompt"]
    assert system["role"] == "system" and user["role"] == "user" and isinstance(user["content"], str)
    cand = next(c for c in EXAMPLES[0].candidates if c.id == record["candidate_id"])
    assert user["content"].index("question q1?") < user["content"].index(cand.title) < user["content"].index("<answer>yes</answer>")
    reasoning = stage1_records([EXAMPLES[0]], seed=0, reasoning=True)[0]
    assert "<think>" in _user_text(reasoning)
    with pytest.raises(ValueError):
        stage1_records(EXAMPLES, negatives_per_positive=-1)


def _image_example(tmp_path: Path) -> Path:
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "img" / "a.png")
    row = {"qid": "qi", "query": "What color is it?", "positives": ["a", "t"], "answers": ["red"],
           "candidates": [{"id": "a", "modality": "image", "title": "A red square", "text": "red", "image_path": "img/a.png"},
                          {"id": "t", "modality": "text", "text": "The square is red."},
                          {"id": "n1", "modality": "text", "text": "Unrelated."}, {"id": "n2", "modality": "text", "text": "Also unrelated."}]}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    return path


def test_stage1_with_images_adds_the_image_path_and_an_image_part(tmp_path):
    data = _image_example(tmp_path)
    records = stage1_records(read_rerank_examples(data), with_images=True, data_file=data)
    image_rec = next(r for r in records if r["candidate_id"] == "a")
    assert image_rec["image"] == str(tmp_path / "img" / "a.png")
    assert {"type": "image"} in image_rec["prompt"][1]["content"]
    assert all("image" not in r for r in records if r["candidate_id"] != "a")
    without = stage1_records(read_rerank_examples(data), with_images=False, data_file=data)
    assert all("image" not in r and isinstance(r["prompt"][1]["content"], str) for r in without)
    ds = to_dataset(records)  # mixed string / part contents and a partial "image" column become one schema
    assert len(ds) == len(records) and "image" in ds.column_names
    assert [row["image"] for row in ds] == [r.get("image") for r in records]
    (tmp_path / "img" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"data.jsonl:1: qid 'qi': field 'candidates\[0\].image_path': image file .*does not exist"):
        stage1_records(read_rerank_examples(data), with_images=True, data_file=data)


# --- stage 2 ------------------------------------------------------------------------------------------------

def test_stage2_picks_all_positives_that_fit_plus_hard_negatives():
    records = stage2_records(EXAMPLES, k=5, permutations=3, seed=0)
    by_ex = {e.qid: e for e in EXAMPLES}
    for r in records:
        ex = by_ex[r["qid"]]
        assert set(r["candidate_ids"]) <= set(ex.candidate_ids())
        assert len(r["candidate_ids"]) == min(5, len(ex.candidates))
        shown_pos = [c for c in r["candidate_ids"] if c in ex.positives]
        assert len(shown_pos) == min(5, len(ex.positives))  # every positive that fits
        assert (r["answers"], r["keywords"], r["qtype"]) == (ex.answers, ex.keywords, ex.qtype)
    q5 = [r for r in records if r["qid"] == "q5"]  # 6 positives > K: 5 positives, no negative
    assert all(len(r["gold_ids"]) == 5 for r in q5)
    assert Counter(r["qid"] for r in records) == {"q1": 3, "q2": 3, "q3": 3, "q5": 3, "q6": 2}  # q6: 2! = 2 orders
    with pytest.raises(ValueError):
        stage2_records(EXAMPLES, k=0)


def test_stage2_permutations_differ_and_gold_ids_follow_them():
    records = [r for r in stage2_records(EXAMPLES, k=5, permutations=3, seed=0) if r["qid"] == "q2"]
    orders = [tuple(r["candidate_ids"]) for r in records]
    assert len(set(orders)) == 3 and {frozenset(o) for o in orders} == {frozenset(orders[0])}  # same K, new order
    assert [r["permutation"] for r in records] == [0, 1, 2]
    for r in records:
        assert r["gold_ids"] == [i for i, cid in enumerate(r["candidate_ids"], start=1) if cid in ("q2-c1", "q2-c4")]
        text = _user_text(r)
        for i, cid in enumerate(r["candidate_ids"], start=1):  # [i] is followed by candidate i's own title
            n = cid.split("-c")[1]
            assert f"[{i}] Image candidate: Title q2 {n}" in text or f"[{i}] Text candidate: Title q2 {n}" in text


def test_stage2_is_deterministic_with_a_seed():
    assert stage2_records(EXAMPLES, seed=7) == stage2_records(EXAMPLES, seed=7)
    orders = lambda s: [tuple(r["candidate_ids"]) for r in stage2_records(EXAMPLES, seed=s)]
    assert orders(7) != orders(8)


def test_stage2_prompt_puts_the_query_before_the_candidates_and_asks_for_three_tags_in_order():
    record = stage2_records([EXAMPLES[1]], k=4, permutations=1)[0]
    text = _user_text(record)
    assert record["prompt"][0]["role"] == "system"
    assert text.index("question q2?") < text.index("Candidates:\n[1] ") < text.index("\n[4] ")
    assert "numbered [1] to [4]" in text
    assert text.index("<think>") < text.index("<rank>") < text.index("<answer>")
    cut = stage2_messages("q?", [CandidateView(text="word " * 50, title="T")], with_images=False, tokenizer=_WordTokenizer(), max_text_tokens=5)
    assert "word word word word word ..." in cut[1]["content"] and "word " * 6 not in cut[1]["content"]
    with pytest.raises(ValueError):
        stage2_messages("q?", [], with_images=False)


class _WordTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}

    def decode(self, ids):
        return " ".join(ids)


def test_stage2_with_images_lists_image_paths_in_placeholder_order(tmp_path):
    data = _image_example(tmp_path)
    records = stage2_records(read_rerank_examples(data), k=3, permutations=2, with_images=True, data_file=data)
    for r in records:
        parts = r["prompt"][1]["content"]
        n_images = sum(p["type"] == "image" for p in parts) if isinstance(parts, list) else 0
        assert len(r["images"]) == n_images == ("a" in r["candidate_ids"])
    ds = to_dataset(records)
    assert ds.column_names == ["prompt", "gold_ids", "answers", "keywords", "qtype", "candidate_ids", "qid", "permutation", "images"]
    assert all(isinstance(m["content"], list) for row in ds for m in row["prompt"])


def test_to_dataset_columns_and_empty_input():
    ds = to_dataset(stage1_records(EXAMPLES))
    assert ds.column_names == ["prompt", "label", "weight", "qid", "candidate_id"] and set(ds["label"]) == {"yes", "no"}
    with pytest.raises(ValueError, match="no records"):
        to_dataset([])


# --- the real MultimodalQA image questions -----------------------------------------------------------------

def test_real_mmqa_image_train_end_to_end():
    if not SHARED_MMQA.exists():
        pytest.skip(f"shared data not present: {SHARED_MMQA}")
    examples = read_rerank_examples(SHARED_MMQA)
    train, held = split_by_question(examples, 0.2, seed=0)
    assert (len(train), len(held)) == (485, 121)
    s1_train, s1_held = stage1_records(train, seed=0), stage1_records(held, seed=0)
    s2_train, s2_held = stage2_records(train, seed=0), stage2_records(held, seed=0)
    labels = Counter(r["label"] for r in s1_train)
    assert labels["yes"] == sum(len(e.positives) for e in train) and 0.9 < labels["no"] / labels["yes"] <= 1.0
    assert (len(s1_train), len(s1_held), len(s2_train), len(s2_held)) == (1171, 299, 1454, 362)
    for r in s2_train:
        assert 1 <= len(r["gold_ids"]) <= len(r["candidate_ids"]) <= 5
        assert all(1 <= g <= len(r["candidate_ids"]) for g in r["gold_ids"]) and r["answers"]
    first = s2_train[0]
    assert _user_text(first).index(next(e.query for e in train if e.qid == first["qid"])) < _user_text(first).index("\n[1] ")
    assert len(to_dataset(s1_train)) == 1171 and len(to_dataset(s2_train)) == 1454
