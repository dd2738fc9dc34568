"""GRPO rewards of both stages: hand-written completions (well formed and malformed) with hand-computed values.

Stage-2 arithmetic used below (gold ids {1, 3}, K = 5, binary gains, log2 discount):
    ideal DCG = 1 + 1/log2(3) = 1.630930
    a gold id at rank 1 gives 1, at rank 2 gives 1/log2(3) = 0.630930, at rank 3 gives 1/log2(4) = 0.5
    rank reward = (NDCG@5 + set F1) / 2, a repeated / out-of-range / non-numeric id being one more wrong id
"""

from __future__ import annotations

import functools
import sys
import types

import pytest

from mmrag_agent.finetune.rewards import (
    completion_text, stage1_accuracy_reward, stage1_format_reward, stage1_total_reward, stage2_answer_reward,
    stage2_format_reward, stage2_rank_reward, stage2_total_reward,
)
from mmrag_agent.format import parse_stage2_output

# --- stage 1 ------------------------------------------------------------------------------------------------

STAGE1 = [
    # (completion, label, format, accuracy, total = accuracy + 0.1 * format)
    ("<answer>yes</answer>", "yes", 1, 1, 1.1),
    ("  <answer> no </answer>\n", "no", 1, 1, 1.1),              # whitespace around is allowed
    ("<answer>YES</answer>", "yes", 1, 1, 1.1),                   # the word is case-insensitive
    ("<answer>no</answer>", "yes", 1, 0, 0.1),                    # wrong label: format bonus only
    ("yes", "yes", 0, 0, 0.0),                                    # right word, no tags: gated to 0
    ("<answer>yes</answer> because the title matches", "yes", 0, 0, 0.0),  # trailing text
    ("<answer>yes</answer><answer>no</answer>", "yes", 0, 0, 0.0),  # two answers
    ("<answer>maybe</answer>", "no", 0, 0, 0.0),                  # not yes/no
    ("<answer>yes", "yes", 0, 0, 0.0),                            # unclosed
    ("", "no", 0, 0, 0.0),                                        # empty
    ("<think>The title names the film.</think>\n<answer>yes</answer>", "yes", 1, 1, 1.1),  # reasoning form
    ("<think>a</think><think>b</think><answer>yes</answer>", "yes", 0, 0, 0.0),  # two thinks
    ("<answer>yes</answer><think>late</think>", "yes", 0, 0, 0.0),  # wrong order
    ([{"role": "assistant", "content": "<answer>no</answer>"}], "no", 1, 1, 1.1),  # conversational
    ([{"role": "assistant", "content": [{"type": "text", "text": "<answer>no</answer>"}]}], "no", 1, 1, 1.1),  # parts
]


@pytest.mark.parametrize("completion, label, fmt, acc, total", STAGE1)
def test_stage1_rewards(completion, label, fmt, acc, total):
    assert stage1_format_reward([completion]) == [fmt]
    assert stage1_accuracy_reward([completion], label=[label]) == [acc]
    assert stage1_total_reward([completion], label=[label]) == [pytest.approx(total)]


def test_stage1_options_batch_and_trl_extras():
    plain, thought = "<answer>yes</answer>", "<think>t</think><answer>yes</answer>"
    assert stage1_format_reward([plain, thought], reasoning=True) == [0.0, 1.0]
    assert stage1_format_reward([plain, thought], reasoning=False) == [1.0, 0.0]
    # the assistant turn pre-filled with "<answer>": the completion continues it
    assert stage1_total_reward(["yes</answer>", "no</answer>"], label=["yes", "yes"], prefix="<answer>") == [1.1, pytest.approx(0.1)]
    # labels as booleans / ints; extra TRL keyword arguments are ignored
    assert stage1_accuracy_reward([plain, plain], label=[True, 0], prompts=["p", "p"], completion_ids=[[1], [2]],
                                  trainer_state=None, qid=["q", "q"], candidate_id=["a", "b"]) == [1.0, 0.0]
    heavy = functools.partial(stage1_total_reward, format_weight=0.5, accuracy_weight=2.0)
    assert heavy([plain, "<answer>no</answer>"], label=["yes", "yes"]) == [2.5, 0.5]  # 2*1 + 0.5*1; 0 + 0.5*1
    with pytest.raises(ValueError):
        stage1_accuracy_reward([plain], label=["yes", "no"])  # misaligned columns are an error, not a silent zip


# --- stage 2: format and rank -------------------------------------------------------------------------------

def _c(rank: str, think: str = "Candidate 3 shows the poster; 1 names the year.", answer: str = "baseball [3]") -> str:
    return f"<think>{think}</think>\n<rank>{rank}</rank>\n<answer>{answer}</answer>"


GOLD = [1, 3]
STAGE2_RANK = [
    # (completion, format, rank reward against gold {1, 3} with K = 5)
    (_c("[3] > [1]"), 1, 1.0),                 # NDCG 1, P = R = 1 -> F1 1
    (_c("[1] > [3]"), 1, 1.0),
    (_c("[1], [3]"), 1, 1.0),                  # commas also separate ids
    (_c("[3]"), 1, 0.639907),                  # NDCG 1/1.630930 = 0.613147; P 1, R 1/2 -> F1 2/3; mean 0.639907
    (_c("[3] > [2]"), 1, 0.556574),            # NDCG 0.613147; P 1/2, R 1/2 -> F1 1/2; mean 0.556574
    (_c("[2] > [3] > [1]"), 1, 0.746713),      # DCG 0.630930 + 0.5 -> NDCG 0.693426; P 2/3, R 1 -> F1 0.8
    (_c("[3] > [3]"), 1, 0.556574),            # repeat: no second gain, counts as a wrong pick -> as [3] > [2]
    (_c("[3] > [9]"), 1, 0.556574),            # out of range (K = 5): wrong -> as [3] > [2]
    (_c("[3] > [a]"), 0, 0.0),                 # non-numeric id: not a well-formed rank body -> gated
    (_c("[0] > [1]"), 1, 0.443426),            # [0] out of range; gold at rank 2: NDCG 0.386853; F1 1/2
    (_c(""), 0, 0.0),                          # empty rank: malformed (nothing to cite)
    (_c("[3] > [1]", answer=""), 0, 0.0),      # empty answer: malformed
    (_c("[3] > [1]", think=" "), 0, 0.0),      # empty reasoning: malformed
    (_c("[3] ; [1]"), 1, 1.0),                 # ";" and whitespace also separate ids
    (_c("[3]\n[1]"), 1, 1.0),
    ("<Think>t</Think><rank>[3] > [1]</rank><answer>x</answer>", 0, 0.0),  # non-canonical tag spelling
    (_c("3 > 1"), 0, 0.0),                     # ids without brackets: malformed rank body -> gated
    (_c("[3] then [1]"), 0, 0.0),              # words in the rank body
    ("<rank>[3] > [1]</rank><answer>baseball</answer>", 0, 0.0),  # missing <think>
    ("<think>t</think><rank>[3] > [1]</rank>", 0, 0.0),             # missing <answer>
    ("<rank>[3] > [1]</rank><think>t</think><answer>baseball</answer>", 0, 0.0),  # wrong order
    ("<think>a</think><think>b</think><rank>[1]</rank><answer>x</answer>", 0, 0.0),  # duplicate tag
    (_c("[1]") + "<answer>again</answer>", 0, 0.0),                   # duplicate answer
    ("<think>t<rank>[1] > [3]</rank><answer>x</answer>", 0, 0.0),     # unclosed think
    ("Sure! " + _c("[1] > [3]"), 0, 0.0),                            # text outside the tags
    ("", 0, 0.0),
]


@pytest.mark.parametrize("completion, fmt, rank", STAGE2_RANK)
def test_stage2_format_and_rank(completion, fmt, rank):
    assert stage2_format_reward([completion]) == [fmt]
    assert parse_stage2_output(completion, 5).format_ok is bool(fmt)  # training rewards what inference reads
    assert stage2_rank_reward([completion], gold_ids=[GOLD], candidate_ids=[list("abcde")]) == [pytest.approx(rank, abs=1e-6)]
    conversational = [{"role": "assistant", "content": completion}]
    assert stage2_rank_reward([conversational], gold_ids=[GOLD], k=5) == [pytest.approx(rank, abs=1e-6)]


def test_stage2_rank_options():
    # K from candidate_ids: with 2 candidates, [1] > [2] against gold {2}: NDCG@2 = 0.630930, F1 = 2/3 -> 0.648798
    assert stage2_rank_reward([_c("[1] > [2]")], gold_ids=[[2]], candidate_ids=[["x", "y"]]) == [pytest.approx(0.648798, abs=1e-6)]
    # with 2 candidates, [3] is out of range even though 3 is a gold position elsewhere
    assert stage2_rank_reward([_c("[3]")], gold_ids=[[1]], candidate_ids=[["x", "y"]]) == [0.0]
    # ungated: the rank block of a malformed completion is scored: [3] alone -> 0.639907
    malformed = "<rank>[3]</rank><answer>x</answer>"
    assert stage2_rank_reward([malformed], gold_ids=[GOLD], gated=False) == [pytest.approx(0.639907, abs=1e-6)]
    assert stage2_rank_reward([malformed], gold_ids=[GOLD]) == [0.0]
    # ungated, invalid ids still cost: [3] > [a] scores as [3] > [2] (a wrong pick), bare ids are read
    assert stage2_rank_reward([_c("[3] > [a]")], gold_ids=[GOLD], gated=False) == [pytest.approx(0.556574, abs=1e-6)]
    assert stage2_rank_reward([_c("3 > 1")], gold_ids=[GOLD], gated=False) == [pytest.approx(1.0)]
    # no gold id: not applicable
    assert stage2_rank_reward([_c("[1]")], gold_ids=[[]]) == [None]
    # pre-filled "<think>"
    assert stage2_format_reward(["t</think><rank>[1]</rank><answer>x</answer>"], prefix="<think>") == [1.0]


# --- stage 2: answers ---------------------------------------------------------------------------------------

@pytest.fixture
def fake_answers(monkeypatch):
    """A stand-in for mmrag_agent.eval.answers that records its calls (the plumbing, not the metric)."""
    calls = []
    module = types.ModuleType("mmrag_agent.eval.answers")

    def answer_f1(prediction, golds):
        calls.append(("f1", prediction, golds))
        return 1.0 if prediction.lower() in [" ".join(g).lower() if isinstance(g, list) else g.lower() for g in golds] else 0.25

    def webqa_accuracy(prediction, keywords, qcate):
        calls.append(("webqa", prediction, keywords, qcate))
        return 0.5

    module.answer_f1, module.webqa_accuracy = answer_f1, webqa_accuracy
    monkeypatch.setitem(sys.modules, "mmrag_agent.eval.answers", module)
    return calls


def test_stage2_answer_reward_plumbing(fake_answers):
    completions = [_c("[3]", answer="Baseball [3]"), _c("[3]", answer="  [1] [3] "), "<answer>baseball</answer>",
                   _c("[1]", answer="red [2]"), _c("[1]", answer="x"), _c("[1]", answer="red")]
    scores = stage2_answer_reward(completions, answers=[["baseball"], ["baseball"], ["baseball"], ["red"], [], []],
                                  keywords=[None, None, None, "red", None, "red"], qtype=[None, None, None, "color", None, None])
    # citation stripped -> "Baseball" matches; only citations -> empty answer 0; malformed -> gated 0;
    # keywords -> WebQA accuracy with the category; no answers and no keywords -> None; keywords without qtype -> "Others"
    assert scores == [1.0, 0.0, 0.0, 0.5, None, 0.5]
    assert fake_answers == [("f1", "Baseball", ["baseball"]), ("webqa", "red", "red", "color"), ("webqa", "red", "red", "Others")]
    assert stage2_answer_reward(["<answer>baseball</answer>"], answers=[["baseball"]], gated=False) == [1.0]
    fake_answers.clear()
    # WebQA's "TBD" keywords (text questions) fall back to the answers; a list answer is passed as one gold
    stage2_answer_reward([_c("[1]", answer="a")], answers=[["a"]], keywords=["TBD"], qtype=["text"])
    stage2_answer_reward([_c("[1]", answer="a")], answers=[["a", "b"]], answers_are_list=True)
    assert fake_answers == [("f1", "a", ["a"]), ("f1", "a", [["a", "b"]])]


def test_stage2_total_reward(fake_answers):
    good, rank_only = _c("[3] > [1]", answer="baseball [3]"), _c("[3]", answer="football")
    # good: rank 1.0 + answer 1.0 + 0.1 * 1 = 2.1; rank_only: 0.639907 + 0.25 + 0.1 = 0.989907; malformed: 0
    totals = stage2_total_reward([good, rank_only, "<answer>baseball</answer>"], gold_ids=[GOLD] * 3, answers=[["baseball"]] * 3)
    assert totals == [pytest.approx(2.1), pytest.approx(0.989907, abs=1e-6), 0.0]
    # without answers the answer part is left out: 1.0 + 0.1
    assert stage2_total_reward([good], gold_ids=[GOLD]) == [pytest.approx(1.1)]
    weighted = functools.partial(stage2_total_reward, rank_weight=2.0, answer_weight=0.5, format_weight=0.0)
    assert weighted([good], gold_ids=[GOLD], answers=[["baseball"]], qid=["q"], trainer_state=None) == [pytest.approx(2.5)]


def test_reward_names_for_trl_logs():
    from trl.trainer.utils import get_callable_name

    funcs = [stage1_format_reward, stage1_accuracy_reward, stage1_total_reward, stage2_format_reward,
             stage2_rank_reward, stage2_answer_reward, stage2_total_reward]
    assert [f.__name__ for f in funcs] == ["stage1_format_reward", "stage1_accuracy_reward", "stage1_total_reward",
                                           "stage2_format_reward", "stage2_rank_reward", "stage2_answer_reward", "stage2_total_reward"]
    assert get_callable_name(functools.partial(stage2_total_reward, format_weight=0.2)) == "stage2_total_reward"


def test_completion_text_forms():
    assert completion_text("abc") == "abc"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": [{"type": "text", "text": "b"}]}]) == "ab"
    assert completion_text([{"role": "user", "content": "ignored"}]) == ""
    assert completion_text(None) == ""


# --- with the real answer metrics ----------------------------------------------------------------------------

def test_stage2_answer_reward_with_the_real_metrics():
    from mmrag_agent.eval.answers import webqa_accuracy

    completions = [_c("[1]", answer="The Bad News Bears [1]"), _c("[1]", answer="bad bears"), _c("[1]", answer="[1]"),
                   _c("[1]", answer="The marquee is red [1]")]
    scores = stage2_answer_reward(completions, answers=[["The Bad News Bears"], ["The Bad News Bears"], ["x"], ["It is red."]],
                                  keywords=[None, None, None, "red"], qtype=[None, None, None, "color"])
    # 1: identical after normalisation -> 1.0
    # 2: tokens {bad, bears} vs {bad, news, bears} (article dropped): P 1, R 2/3 -> F1 0.8
    # 3: only a citation -> empty answer -> 0.0
    # 4: WebQA color: the answer's colour words {red} vs keywords {red} -> 1.0 (as the metric itself says)
    assert scores[:3] == [pytest.approx(1.0), pytest.approx(0.8), 0.0]
    assert scores[3] == pytest.approx(webqa_accuracy("The marquee is red", "red", "color")) and 0.0 < scores[3] <= 1.0
    assert all(0.0 <= s <= 1.0 for s in scores)
    # a MultimodalQA list answer: naming one of three actors is full credit as alternatives (max over golds),
    # but P 1, R 2/6 -> F1 0.5 against the whole list ("xander berkeley aaron stanford shane west")
    actors = [["Xander Berkeley", "Aaron Stanford", "Shane West"]]
    one = [_c("[1]", answer="Shane West [1]")]
    assert stage2_answer_reward(one, answers=actors) == [pytest.approx(1.0)]
    assert stage2_answer_reward(one, answers=actors, answers_are_list=True) == [pytest.approx(0.5)]
