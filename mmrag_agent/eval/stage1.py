"""The stage-1 model as a :class:`~mmrag_agent.eval.baselines.Reranker` (``mmrag eval rerank --reranker stage1``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..inference import YesNoScorer
from ..model_card import ModelCard
from ..models.loading import LoadedModel, load_model
from ..prompts import CandidateView, candidate_view
from .baselines import Reranker, register_reranker


class Stage1Reranker(Reranker):
    """Ranks candidates by the stage-1 P(relevant) (SPEC §1.2), with the prompt of the model's card.

    Args:
        model: Hub id, directory (e.g. a ``mmrag train stage1`` output), ``.gguf``, PEFT adapter directory,
            ``"smollm2"`` (the default), or an already loaded model (e.g. the one being trained).
        data_file: The JSONL the examples come from: relative ``image_path`` values resolve against its folder.
        device: Torch device.
        dtype: Model dtype (``"auto"``: float32 on CPU, bfloat16 on GPU).
        batch_size: Candidates per forward pass.
        max_pixels: Image area bound for vision-language models.
        use_images: Show images to a vision-language model (else their text surrogate).
        max_text_tokens: Token budget of each candidate's text (None: the model card's).
        card: The serving contract to follow instead of the model's own card (e.g. a run in training).
    """

    def __init__(self, model: str | LoadedModel | None = None, data_file: str | Path | None = None, device: str = "cpu",
                 dtype: str = "auto", batch_size: int = 16, max_pixels: int = 448 * 448, use_images: bool = True,
                 max_text_tokens: int | None = None, card: ModelCard | None = None) -> None:
        loaded = model if isinstance(model, LoadedModel) else load_model(model or "smollm2", device=device, dtype=dtype, max_pixels=max_pixels)
        self.name = "stage1"
        self.model = loaded.name
        self.data_file = data_file
        self.scorer = YesNoScorer(loaded, batch_size=batch_size, max_text_tokens=max_text_tokens, use_images=use_images, card=card)

    def score(self, query: str, candidates: Sequence[Any]) -> list[float]:
        return self.scorer.score(query, self.views(candidates))

    def views(self, candidates: Sequence[Any]) -> list[CandidateView]:
        """The candidates as the model sees them (images resolved against the data file, for VLMs only)."""
        return [candidate_view(c, self.data_file, with_image=self.scorer.use_images) for c in candidates]


register_reranker("stage1", lambda model=None, **kw: Stage1Reranker(model, **kw), replace=True)
