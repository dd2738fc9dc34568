"""Shared fixtures: tiny real models built from configs, the offline text model, folders of real files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mmrag_agent.indexing import close_local_clients

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_CLIP = SHARED / "model-configs" / "clip-vit-base-patch32"


@pytest.fixture(autouse=True)
def _release_qdrant_paths():
    yield
    close_local_clients()


def _train_clip_tokenizer(out: Path) -> None:
    """A small byte-level BPE tokenizer in CLIP's format (used when ../shared is absent)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                  end_of_word_suffix="</w>", initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["a photo of a red fox in the snow", "quarterly revenue grew in the third quarter",
              "a sunset over a calm lake", "bar chart line chart photo of a cat"] * 50
    tokenizer.train_from_iterator(corpus, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    CLIPTokenizer(vocab=model["vocab"], merges=merges).save_pretrained(out)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A randomly initialised CLIP with the real ViT-B/32 processor and tokenizer files when available."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessorPil, CLIPModel

    out = tmp_path_factory.mktemp("tiny-clip")
    if SHARED_CLIP.is_dir():
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json", "preprocessor_config.json"):
            if (SHARED_CLIP / name).exists():
                shutil.copy(SHARED_CLIP / name, out / name)
    else:
        _train_clip_tokenizer(out)
        CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 from the offline wheel (skipped when not installed)."""
    from mmrag_agent.indexing.embeddings import offline_minilm_path, resolve_text_embedding

    if offline_minilm_path() is None:
        pytest.skip("all-MiniLM-L6-v2 wheel not installed: pip install 'mmrag-agent[offline]'")
    return resolve_text_embedding("minilm")


@pytest.fixture
def mock_text_model():
    """A deterministic stand-in text embedding, for tests of bookkeeping where the model is not under test."""
    from llama_index.core.embeddings import MockEmbedding

    return MockEmbedding(embed_dim=8)


SHARED_QWEN2_VL = SHARED / "model-configs" / "Qwen2-VL-2B-Instruct"


def _tiny(tmp_path_factory, kind: str) -> Path:
    from tiny_models import build_tiny_model

    return build_tiny_model(kind, tmp_path_factory.mktemp(f"tiny-{kind}"))


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 text model with a locally trained tokenizer and a Qwen-style chat template."""
    return _tiny(tmp_path_factory, "qwen2")


@pytest.fixture(scope="session")
def tiny_qwen2_vl_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2-VL with the local tokenizer and a Qwen2-VL image processor."""
    return _tiny(tmp_path_factory, "qwen2_vl")


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2.5-VL."""
    return _tiny(tmp_path_factory, "qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory) -> Path:
    """A tiny random LLaVA (CLIP vision tower, Qwen2 language model) with its stock processor."""
    return _tiny(tmp_path_factory, "llava")


@pytest.fixture(scope="session")
def tiny_idefics3_dir(tmp_path_factory) -> Path:
    """A tiny random Idefics3 (SmolVLM's architecture) with its stock processor."""
    return _tiny(tmp_path_factory, "idefics3")


@pytest.fixture(scope="session")
def shrunken_qwen2_vl_dir(tmp_path_factory) -> Path:
    """The real Qwen2-VL-2B processor, tokenizer and chat template over a 2-layer random architecture."""
    if not SHARED_QWEN2_VL.is_dir():
        pytest.skip("../shared/model-configs/Qwen2-VL-2B-Instruct not present")
    from tiny_models import build_shrunken_qwen2_vl

    return build_shrunken_qwen2_vl(SHARED_QWEN2_VL, tmp_path_factory.mktemp("shrunken-qwen2-vl"))
