"""Stage-2 completion parsing: a table of well-formed and malformed completions, plus a no-raise fuzz."""

from __future__ import annotations

import random

import pytest

from mmrag_agent.format import Stage2Output, parse_stage2_output
from mmrag_agent.format import stage2_format_ok as format_reward_ok

GOOD = "<think>[3] shows the logo.</think><rank>[3] > [1]</rank><answer>Green [3].</answer>"

# id, completion, K, fallback_order, ranking, cited, answer, format_ok, used_fallback, warning substrings
CASES = [
    # --- well formed ---
    ("good", GOOD, 3, None, [3, 1], [3], "Green [3].", True, False, []),
    ("good-whitespace", "\n<think>\n r \n</think>\n<rank> [2] > [1] > [3] </rank>\n<answer> Blue [2][1] </answer>\n", 3, None,
     [2, 1, 3], [2, 1], "Blue [2][1]", True, False, []),
    ("good-single", "<think>x</think><rank>[1]</rank><answer>yes [1]</answer>", 1, None, [1], [1], "yes [1]", True, False, []),
    ("partial-not-padded", "<think>x</think><rank>[2]</rank><answer>a [2]</answer>", 5, None, [2], [2], "a [2]", True, False, []),
    ("comma-sep", "<think>x</think><rank>[3], [1]</rank><answer>a</answer>", 3, None, [3, 1], [], "a", True, False, []),
    ("semicolon-newline-sep", "<think>x</think><rank>[2];\n[3]\n[1]</rank><answer>a</answer>", 3, None, [2, 3, 1], [], "a", True,
     False, []),
    ("double-gt", "<think>x</think><rank>[1] >> [2]</rank><answer>a</answer>", 3, None, [1, 2], [], "a", True, False, []),
    ("cite-list", "<think>x</think><rank>[1] > [3]</rank><answer>both [1, 3] and [3]</answer>", 3, None, [1, 3], [1, 3],
     "both [1, 3] and [3]", True, False, []),
    ("non-citation-brackets", "<think>x</think><rank>[1]</rank><answer>Paris [citation needed] [a]</answer>", 3, None, [1], [],
     "Paris [citation needed] [a]", True, False, []),
    # --- well-formed tags, problems in the content ---
    ("cited-not-ranked", "<think>x</think><rank>[1]</rank><answer>a [2]</answer>", 3, None, [1], [2], "a [2]", True, False,
     ["cited but not ranked: [2]"]),
    ("cited-out-of-range", "<think>x</think><rank>[1]</rank><answer>a [9] [1] [1]</answer>", 3, None, [1], [1], "a [9] [1] [1]",
     True, False, ["cited id out of range: 9"]),
    ("id-out-of-range", "<think>x</think><rank>[4] > [2]</rank><answer>a</answer>", 3, None, [2], [], "a", True, False,
     ["id out of range: 4"]),
    ("repeated-id", "<think>x</think><rank>[2] > [2] > [1]</rank><answer>a</answer>", 3, None, [2, 1], [], "a", True, False,
     ["repeated id: 2"]),
    ("zero-and-negative", "<think>x</think><rank>[0] > [-1] > [3]</rank><answer>a</answer>", 3, None, [3], [], "a", False, False,
     ["id out of range: 0", "id out of range: -1"]),
    ("non-numeric", "<think>x</think><rank>[a] > [1.5] > [2]</rank><answer>a</answer>", 3, None, [2], [], "a", False, False,
     ["non-numeric id 'a'", "non-numeric id '1.5'"]),
    ("all-invalid-fallback", "<think>x</think><rank>[7] > [a]</rank><answer>a [2]</answer>", 3, [2, 3, 1], [2, 3, 1], [2], "a [2]",
     False, True, ["id out of range: 7", "no usable id", "fell back"]),
    ("bare-ids-gt", "<think>x</think><rank>3 > 1</rank><answer>a</answer>", 3, None, [3, 1], [], "a", False, False,
     ["ids without brackets"]),
    ("bare-ids-comma", "<think>x</think><rank>3, 1</rank><answer>a</answer>", 3, None, [3, 1], [], "a", False, False,
     ["ids without brackets"]),
    ("rank-with-words", "<think>x</think><rank>[3] (most relevant) > [1]</rank><answer>a</answer>", 3, None, [3, 1], [], "a", False,
     False, ["ignored text in <rank>: '(most relevant)'"]),
    ("ids-in-one-bracket", "<think>x</think><rank>[3, 1]</rank><answer>a</answer>", 3, None, [3, 1], [], "a", False, False,
     ["several ids in one bracket"]),
    ("empty-rank", "<think>x</think><rank>  </rank><answer>a [1]</answer>", 3, None, [1, 2, 3], [1], "a [1]", False, True,
     ["empty <rank>", "fell back"]),
    ("empty-answer", "<think>x</think><rank>[1]</rank><answer>  </answer>", 3, None, [1], [], "", False, False, ["empty answer"]),
    ("empty-think", "<think> </think><rank>[1]</rank><answer>a</answer>", 3, None, [1], [], "a", False, False, ["empty <think>"]),
    # --- missing / unclosed / duplicated / misplaced tags ---
    ("missing-think", "<rank>[1]</rank><answer>a</answer>", 3, None, [1], [], "a", False, False, ["missing <think> section"]),
    ("missing-think-open", "r</think><rank>[1]</rank><answer>a</answer>", 3, None, [1], [], "a", False, False,
     ["missing <think> opening tag"]),
    ("missing-rank", "<think>t</think><answer>a [2]</answer>", 3, None, [1, 2, 3], [2], "a [2]", False, True,
     ["missing <rank> section", "fell back"]),
    ("missing-rank-stage1-order", "<think>t</think><answer>a</answer>", 3, [3, 1, 2], [3, 1, 2], [], "a", False, True,
     ["missing <rank>", "fell back to the stage-1 order [3, 1, 2]"]),
    ("answer-without-tags", "<think>t</think><rank>[1]</rank>The answer is X [1].", 3, None, [1], [1], "The answer is X [1].",
     False, False, ["answer without <answer> tags"]),
    ("no-tags-at-all", "Paris [2]", 2, None, [1, 2], [2], "Paris [2]", False, True,
     ["missing <think>", "missing <rank>", "answer without <answer> tags", "fell back"]),
    ("empty-completion", "", 2, None, [1, 2], [], "", False, True, ["missing <answer> section", "empty answer", "fell back"]),
    ("unclosed-think", "<think>reasoning <rank>[2]</rank><answer>b</answer>", 3, None, [2], [], "b", False, False,
     ["unclosed <think>"]),
    ("unclosed-think-to-end", "<think>long reasoning that was cut", 3, None, [1, 2, 3], [], "", False, True,
     ["unclosed <think>", "empty answer", "fell back"]),
    ("unclosed-rank", "<think>t</think><rank>[2] > [1]<answer>a</answer>", 3, None, [2, 1], [], "a", False, False,
     ["unclosed <rank>"]),
    ("unclosed-answer", "<think>t</think><rank>[1]</rank><answer>a [1]", 3, None, [1], [1], "a [1]", False, False,
     ["unclosed <answer>"]),
    ("duplicate-think", "<think>a</think><think>b</think><rank>[1]</rank><answer>x</answer>", 3, None, [1], [], "x", False, False,
     ["duplicate <think>"]),
    ("duplicate-rank", "<think>t</think><rank>[2]</rank><rank>[1]</rank><answer>x</answer>", 3, None, [2], [], "x", False, False,
     ["duplicate <rank>"]),
    ("duplicate-answer", "<think>t</think><rank>[1]</rank><answer>x [1]</answer><answer>y [2]</answer>", 3, None, [1], [1], "x [1]",
     False, False, ["duplicate <answer>"]),
    ("out-of-order-rank-first", "<rank>[2] > [1]</rank><think>t</think><answer>a</answer>", 3, None, [2, 1], [], "a", False, False,
     ["tags out of order"]),
    ("out-of-order-answer-first", "<answer>a [1]</answer><think>t</think><rank>[1]</rank>", 3, None, [1], [1], "a [1]", False,
     False, ["tags out of order"]),
    ("case-variation", "<Think>t</Think><RANK>[1]</RANK><Answer>a [1]</Answer>", 3, None, [1], [1], "a [1]", False, False,
     ["non-canonical tag '<Answer>'"]),
    ("whitespace-in-tags", "< think >t</ think ><rank >[2]</rank><answer>a</ answer >", 3, None, [2], [], "a", False, False,
     ["non-canonical tag '< think >'"]),
    ("stray-text", "Sure! " + GOOD + " Hope this helps.", 3, None, [3, 1], [3], "Green [3].", False, False, ["stray text"]),
    ("stray-close", "<think>a</think> b</think><rank>[1]</rank><answer>x</answer>", 3, None, [1], [], "x", False, False,
     ["stray </think>", "stray text"]),
    ("nested-open", "<think>a <think> b</think><rank>[1]</rank><answer>x</answer>", 3, None, [1], [], "x", False, False,
     ["nested <think>"]),
]


@pytest.mark.parametrize("name,text,k,fallback,ranking,cited,answer,format_ok,used_fallback,warns", CASES,
                         ids=[c[0] for c in CASES])
def test_parse_table(name, text, k, fallback, ranking, cited, answer, format_ok, used_fallback, warns):
    out = parse_stage2_output(text, k, fallback)
    assert isinstance(out, Stage2Output)
    assert out.ranking == ranking
    assert out.cited == cited
    assert out.answer == answer
    assert out.format_ok is format_ok
    assert out.used_fallback is used_fallback
    assert out.raw == text
    joined = "\n".join(out.warnings)
    for fragment in warns:
        assert fragment in joined, (fragment, out.warnings)
    if format_ok and not warns:
        assert out.warnings == []
    assert format_reward_ok(text) is format_ok


def test_table_size_and_reasoning():
    assert len(CASES) >= 30
    assert parse_stage2_output(GOOD, 3).reasoning == "[3] shows the logo."
    assert parse_stage2_output("<think>a</think><think>b</think><rank>[1]</rank><answer>x</answer>", 2).reasoning == "a"
    assert parse_stage2_output("<think>long reasoning that was cut", 2).reasoning == "long reasoning that was cut"
    assert parse_stage2_output("r</think><rank>[1]</rank><answer>a</answer>", 2).reasoning == "r"


def test_format_reward_ok_cases():
    assert format_reward_ok(GOOD)
    assert format_reward_ok("<think>t</think>\n\n<rank>[2]</rank>\n<answer>a</answer>\n")
    assert not format_reward_ok("<think></think><rank></rank><answer></answer>")
    assert not format_reward_ok(GOOD + GOOD)
    assert not format_reward_ok("<think>t <answer>x</answer></think><rank>[1]</rank><answer>a</answer>")
    assert not format_reward_ok(None)
    assert format_reward_ok([{"role": "assistant", "content": GOOD}])


def test_chat_completion_and_select():
    out = parse_stage2_output([{"role": "assistant", "content": GOOD}], 3)
    assert out.ranking == [3, 1] and out.format_ok
    assert any("read as text" in w for w in out.warnings)
    assert out.select(["a", "b", "c"]) == ["c", "a"]
    assert parse_stage2_output(None, 2).ranking == [1, 2]


def test_caller_errors_raise():
    with pytest.raises(ValueError):
        parse_stage2_output(GOOD, -1)
    with pytest.raises(ValueError):
        parse_stage2_output(GOOD, 3, fallback_order=[4])
    out = parse_stage2_output("<rank>[1]</rank>", 0)
    assert out.ranking == [] and out.used_fallback


def test_fuzz_never_raises():
    rng = random.Random(0)
    pieces = ["<think>", "</think>", "<rank>", "</rank>", "<answer>", "</answer>", "<Rank>", "< answer >", "[1]", "[2]", "[0]",
              "[-3]", "[a]", "[1.5]", "[", "]", ">", ">>", ",", ";", "\n", " ", "3", "text", "<", "/", "[9]", "</ think>"]
    for _ in range(400):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        k = rng.randint(0, 4)
        out = parse_stage2_output(text, k)
        assert len(set(out.ranking)) == len(out.ranking) and all(1 <= n <= k for n in out.ranking)
        assert len(set(out.cited)) == len(out.cited) and all(1 <= n <= k for n in out.cited)
        assert out.format_ok is format_reward_ok(text)
        assert out.used_fallback or out.ranking
        if not out.format_ok:
            assert out.warnings, text


N = 200_000  # a quadratic scanner needs minutes on inputs this long; a linear one well under a second
HOSTILE = {
    "lt-then-spaces": "<" + " " * N + "x",
    "close-slash-spaces": "< /" + " " * N + "x",
    "unclosed-brackets-in-rank": "<rank>" + "[" * N,
    "bracket-digit-runs-in-rank": "<rank>" + "[1" * N + "</rank>",
    "nested-brackets-then-close": "<answer>" + "[" * N + "1]</answer>",
    "spaces-inside-brackets": "<answer>" + "[ " * N + "1]</answer>",
    "many-tags": "<think>" * N,
    "huge-ids": "<think>t</think><rank>[" + "9" * 5000 + "]</rank><answer>a [" + "7" * 5000 + "]</answer>",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_completions_parse_in_linear_time_and_never_raise(name):
    from mmrag_agent.finetune.rewards import stage2_answer_reward, stage2_format_reward, stage2_rank_reward

    text = HOSTILE[name]
    out = parse_stage2_output(text, 5)
    assert isinstance(out.ranking, list) and all(1 <= n <= 5 for n in out.ranking) and all(1 <= n <= 5 for n in out.cited)
    assert stage2_format_reward([text]) in ([0.0], [1.0])
    stage2_rank_reward([text], gold_ids=[[1]], k=5)
    stage2_answer_reward([text], answers=[["a"]])


def test_deeply_nested_chat_completion_is_read_without_recursion():
    nested: list = [{"role": "assistant", "content": "<think>t</think><rank>[1]</rank><answer>a [1]</answer>"}]
    for _ in range(5000):
        nested = [nested]
    assert parse_stage2_output(nested, 1).cited == [1]
