"""Tiny, randomly initialised models for tests and benchmarks, built offline from small configs.

Test scaffolding: it lives beside the tests, outside the runtime package.

* :func:`train_tiny_tokenizer`: a byte-level BPE tokenizer in Qwen's format (special tokens, chat template).
* :func:`build_tiny_model`: a tiny Qwen2 text model, Qwen2-VL, Qwen2.5-VL, LLaVA (CLIP vision tower) or
  Idefics3 (SmolVLM's architecture) saved as a loadable directory.
* :func:`build_shrunken_qwen2_vl`: the real Qwen2-VL-2B processor, tokenizer and chat template (from a
  directory of the real non-weight files) over a shrunken architecture.

Nothing here downloads anything. The weights are random: these models exercise code paths and speed,
never quality.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

#: A Qwen-style chat template (ChatML with vision placeholders), written for the tiny tokenizer.
QWEN_STYLE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

_CORPUS = [
    "<answer>yes</answer>", "<answer>no</answer>", "<think>The candidate mentions the answer.</think>",
    "<rank>[1] > [2] > [3]</rank>", "Question: which city hosted the 1992 olympics? Candidate: Barcelona",
    "Is the candidate relevant to the question? Answer with yes or no.",
    "a photo of a red fox in the snow", "quarterly revenue grew in the third quarter",
    "You are a helpful assistant. The image shows a sunset over a calm lake.",
]


def train_tiny_tokenizer(out: str | Path, vocab_size: int = 512):
    """Train a byte-level BPE tokenizer with Qwen's special tokens and a Qwen-style chat template.

    ``yes`` and ``no`` come out as single tokens after ``<answer>``, as with the real Qwen tokenizers.

    Returns:
        The tokenizer (also saved to ``out``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_CORPUS * 100, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:], padding_side="left",
    )
    wrapped.chat_template = QWEN_STYLE_CHAT_TEMPLATE
    wrapped.save_pretrained(out)
    return wrapped


def _token_ids(tokenizer) -> dict:
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    return ids | {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                  "bos_token_id": tokenizer.pad_token_id}


def _tiny_text_config(vocab_size: int, hidden: int = 64, layers: int = 2) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)


def build_tiny_model(kind: str, out: str | Path, seed: int = 0, image_size: int = 448) -> Path:
    """Save a tiny randomly initialised model with tokenizer (and processor for VLMs) to ``out``.

    Args:
        kind: ``"qwen2"`` (text), ``"qwen2_vl"``, ``"qwen2_5_vl"``, ``"llava"`` or ``"idefics3"``.
        out: Directory to create.
        seed: Torch seed for the weights.
        image_size: Default ``max_pixels`` side for the image processor (images are resized to fit).

    Returns:
        ``out`` as a Path, loadable with :func:`mmrag_agent.models.load_model`.
    """
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tiny_tokenizer(out)
    ids = _token_ids(tokenizer)
    torch.manual_seed(seed)
    if kind in _OTHER_VLMS:
        return _OTHER_VLMS[kind](out, tokenizer, image_size)
    if kind == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        config = Qwen2Config(**_tiny_text_config(len(tokenizer)), eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"])
        Qwen2ForCausalLM(config).save_pretrained(out)
        return out
    text = _tiny_text_config(len(tokenizer)) | {
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        "eos_token_id": ids["eos_token_id"], "pad_token_id": ids["pad_token_id"], "bos_token_id": ids["bos_token_id"]}
    if kind == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        vision = dict(depth=2, embed_dim=32, num_heads=2, hidden_size=64, mlp_ratio=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        model = Qwen2VLForConditionalGeneration(config)
    elif kind == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        model = Qwen2_5_VLForConditionalGeneration(config)
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}; use qwen2, qwen2_vl, qwen2_5_vl, llava or idefics3")
    model.save_pretrained(out)
    _save_qwen_image_processor(out, max_pixels=image_size * image_size)
    return out


def _save_qwen_image_processor(out: Path, max_pixels: int, min_pixels: int = 56 * 56) -> None:
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2,
                             temporal_patch_size=2).save_pretrained(out)


#: A ChatML template that marks an image with one ``<image>`` placeholder (LLaVA and Idefics3 processors expand it).
IMAGE_PLACEHOLDER_CHAT_TEMPLATE = QWEN_STYLE_CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>")


def _with_image_placeholder(out: Path, tokenizer, extra_tokens: list[str]):
    tokenizer.add_tokens(["<image>", *extra_tokens], special_tokens=True)
    tokenizer.chat_template = IMAGE_PLACEHOLDER_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return tokenizer


def _build_llava(out: Path, tokenizer, image_size: int) -> Path:
    """LLaVA: a CLIP vision tower, a projector and a Qwen2 language model; fixed 56x56 crops (4x4 patches)."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, Qwen2Config
    from transformers.models.clip import CLIPImageProcessorPil

    tokenizer = _with_image_placeholder(out, tokenizer, [])
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14)
    text = Qwen2Config(**_tiny_text_config(len(tokenizer)), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1)
    LlavaForConditionalGeneration(config).save_pretrained(out)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, image_token="<image>", chat_template=IMAGE_PLACEHOLDER_CHAT_TEMPLATE).save_pretrained(out)
    return out


def _build_idefics3(out: Path, tokenizer, image_size: int) -> Path:
    """Idefics3 (SmolVLM): a SigLIP-style vision tower with pixel shuffle and a Llama language model."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, LlamaConfig
    from transformers.models.idefics3 import Idefics3ImageProcessorPil
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

    grid = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tokenizer = _with_image_placeholder(out, tokenizer, ["<fake_token_around_image>", "<end_of_utterance>", "<global-img>", *grid])
    vision = Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14)
    text = LlamaConfig(**_tiny_text_config(len(tokenizer)), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = Idefics3Config(vision_config=vision.to_dict(), text_config=text.to_dict(), scale_factor=2,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    Idefics3ForConditionalGeneration(config).save_pretrained(out)
    # Images are resized to fit ``image_size`` on their longest edge, then split into 56x56 tiles plus a global view.
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": image_size}, max_image_size={"longest_edge": 56})
    Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,  # (56 / 14)^2 / 2^2
                      chat_template=IMAGE_PLACEHOLDER_CHAT_TEMPLATE).save_pretrained(out)
    return out


_OTHER_VLMS = {"llava": _build_llava, "idefics3": _build_idefics3}


def build_shrunken_qwen2_vl(real_files: str | Path, out: str | Path, seed: int = 0, layers: int = 2) -> Path:
    """The real Qwen2-VL-2B tokenizer, chat template and image processor over a shrunken architecture.

    Args:
        real_files: Directory with the real non-weight files (config, tokenizer, preprocessor, chat template).
        out: Directory to create.
        seed: Torch seed.
        layers: Text and vision layers to keep.
    """
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    real_files, out = Path(real_files), Path(out)
    shutil.copytree(real_files, out, dirs_exist_ok=True)
    config = Qwen2VLConfig.from_pretrained(out)
    text, vision = config.text_config, config.vision_config
    text.num_hidden_layers, text.hidden_size, text.intermediate_size = layers, 128, 256
    if getattr(text, "layer_types", None):
        text.layer_types = text.layer_types[:layers]
    text.max_window_layers = min(getattr(text, "max_window_layers", layers), layers)
    text.num_attention_heads, text.num_key_value_heads = 4, 2
    text.rope_parameters = dict(text.rope_parameters or {}) | {"rope_type": "default", "mrope_section": [4, 6, 6]}
    vision.depth, vision.embed_dim, vision.num_heads, vision.hidden_size = layers, 64, 4, 128
    torch.manual_seed(seed)
    Qwen2VLForConditionalGeneration(config).save_pretrained(out)
    template = out / "chat_template.json"
    if template.exists():  # transformers 5 also reads chat_template.jinja; keep the real one either way
        (out / "chat_template.jinja").write_text(json.loads(template.read_text())["chat_template"])
    return out
