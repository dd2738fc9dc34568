"""The stage-1 model as a :class:`~mmrag_agent.eval.baselines.Reranker` (``mmrag eval rerank --reranker stage1``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..inference import YesNoScorer
from ..inference.fusion import ZERO_SHOT_WEIGHT, fuse
from ..model_card import ModelCard
from ..models.loading import LoadedModel, load_model
from ..prompts import CandidateView, candidate_view
from .baselines import Reranker, make_reranker, register_reranker


class Stage1Reranker(Reranker):
    """Ranks candidates by the stage-1 P(relevant), with the prompt of the model's card; optionally
    fused with a first-stage retriever's scores on the same candidates (:func:`mmrag_agent.inference.fusion.fuse`),
    as :class:`~mmrag_agent.postprocessors.Stage1RelevanceFilter` ranks in use.

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
        first_stage: ``"none"`` (stage 1 alone), ``"bm25"``, ``"embedding"`` (all-MiniLM-L6-v2), or a
            :class:`~mmrag_agent.eval.baselines.Reranker` whose scores are fused; None: the card's retriever, else none.
        fusion_weight: Weight of P(relevant) in the fused score (None: the card's, else the zero-shot default).
        allow_outside: Let ``image_path`` point outside the data file's folder (e.g. a converted dataset's images).
    """

    def __init__(self, model: str | LoadedModel | None = None, data_file: str | Path | None = None, device: str = "cpu",
                 dtype: str = "auto", batch_size: int = 16, max_pixels: int = 448 * 448, use_images: bool = True,
                 max_text_tokens: int | None = None, card: ModelCard | None = None, first_stage: str | Reranker | None = None,
                 fusion_weight: float | None = None, allow_outside: bool = False) -> None:
        loaded = model if isinstance(model, LoadedModel) else load_model(model or "smollm2", device=device, dtype=dtype, max_pixels=max_pixels)
        self.name = "stage1"
        self.model = loaded.name
        self.data_file, self.allow_outside = data_file, allow_outside
        self.scorer = YesNoScorer(loaded, batch_size=batch_size, max_text_tokens=max_text_tokens, use_images=use_images, card=card)
        fitted = self.scorer.card.fusion or {}
        first_stage = first_stage if first_stage is not None else fitted.get("first_stage", "none")
        self.first_stage = None if first_stage == "none" else first_stage if isinstance(first_stage, Reranker) else \
            make_reranker(first_stage, device=device) if first_stage == "embedding" else make_reranker(first_stage)
        self.fusion_weight = fusion_weight if fusion_weight is not None else fitted.get("weight", ZERO_SHOT_WEIGHT)

    @property
    def fusion(self) -> dict | None:
        """What the ranking fuses: ``{"first_stage", "weight"}``, or None for stage 1 alone."""
        return None if self.first_stage is None else {"first_stage": self.first_stage.name, "weight": self.fusion_weight}

    def score(self, query: str, candidates: Sequence[Any]) -> list[float]:
        probabilities = self.scorer.score(query, self.views(candidates))
        if self.first_stage is None:
            return probabilities
        return fuse(probabilities, self.first_stage.score(query, candidates), self.fusion_weight)

    def views(self, candidates: Sequence[Any]) -> list[CandidateView]:
        """The candidates as the model sees them (images resolved against the data file, for VLMs only)."""
        return [candidate_view(c, self.data_file, with_image=self.scorer.use_images, allow_outside=self.allow_outside) for c in candidates]


register_reranker("stage1", lambda model=None, **kw: Stage1Reranker(model, **kw), replace=True)
