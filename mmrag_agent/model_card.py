"""``model_card.json``: what training writes beside a model and serving reads back, so both build the same prompt.

A training output directory (``mmrag train``, :func:`mmrag_agent.finetune.train_stage1` / ``train_stage2``) holds
the adapter or model, its processor and this card. :func:`mmrag_agent.models.load_model` reads it, and every
component that takes a model directory (``Stage1RelevanceFilter(model=DIR)``, ``Stage2Model``, ``mmrag ask
--stage2-model DIR``, ``mmrag eval rerank --model DIR``) takes its prompt settings from it::

    {"card_version": 1, "stage": 1, "prompt_version": "1", "assistant_prefix": "<answer>", "reasoning": false,
     "max_text_tokens": 256, "candidates_per_prompt": null, "max_new_tokens": 16,
     "base_model": "...", "kind": "lora",
     "fusion": {"weight": 0.3, "first_stage": "embedding", ...},
     "metrics": {...}, "training": {...}}

A model without a card (any hub or zero-shot model) is served with the defaults of :func:`default_card`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .format import STAGE1_PREFIX, STAGE1_REASONING_PREFIX, STAGE2_PREFIX
from .prompts import PROMPT_VERSION

__all__ = ["CARD_VERSION", "MODEL_CARD", "ModelCard", "ModelCardError", "card_for", "default_card", "read_model_card",
           "stage2_reorders", "write_model_card"]

MODEL_CARD = "model_card.json"
CARD_VERSION = 1


class ModelCardError(ValueError):
    """A model card that cannot be used; the message names the file, the field and the fix."""


@dataclass
class ModelCard:
    """The serving contract of a trained model, plus how it was trained.

    Attributes:
        stage: 1 (point-wise relevance) or 2 (list-wise rank and answer).
        prompt_version: :data:`mmrag_agent.prompts.PROMPT_VERSION` the model was trained with.
        assistant_prefix: Text the assistant turn is pre-filled with, in training and in serving.
        reasoning: Stage 1: ``<think>`` reasoning before the yes/no answer.
        max_text_tokens: Token budget of each candidate's text in the prompt.
        candidates_per_prompt: Stage 2: K, the candidates shown per prompt (None for stage 1).
        max_new_tokens: Completion budget the model was trained with (GRPO ``max_completion_length``).
        base_model: The base weights (hub id, directory or preset); None when unknown.
        kind: ``"lora"``, ``"full"`` or ``"base"`` (no training: the defaults of an untrained model).
        fusion: Stage 1: how P(relevant) is fused with the first-stage retrieval score (``weight``,
            ``first_stage`` and the held-out metrics the weight was fitted on); None: no fitted fusion.
        ranking_check: Stage 2: the held-out check of whether its ranking beats the order it is given (the fused
            stage-1 order): ``{"queries", "input", "stage2", "reorder", ...}``. Serving lets stage 2 reorder nodes
            only when ``reorder`` is true (:func:`stage2_reorders`); None (no check, any zero-shot model): the
            incoming order stands and stage 2 only judges, cites and answers.
        metrics: Held-out metrics of the final model.
        training: Everything else about the run (data, rewards, steps, warm start, history, config, versions).
    """

    stage: int
    prompt_version: str = PROMPT_VERSION
    assistant_prefix: str = ""
    reasoning: bool = False
    max_text_tokens: int = 256
    candidates_per_prompt: int | None = None
    max_new_tokens: int | None = None
    base_model: str | None = None
    kind: str = "base"
    fusion: dict[str, Any] | None = None
    ranking_check: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    card_version: int = CARD_VERSION

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ModelCardError(f"stage must be 1 or 2, got {self.stage!r}")
        if not isinstance(self.assistant_prefix, str):
            raise ModelCardError(f"assistant_prefix must be a string, got {self.assistant_prefix!r}")
        if not isinstance(self.max_text_tokens, int) or self.max_text_tokens < 1:
            raise ModelCardError(f"max_text_tokens must be a positive integer, got {self.max_text_tokens!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model card") -> "ModelCard":
        """A card from its JSON form (including the cards of version 0, whose settings sat under ``config``)."""
        if not isinstance(data, dict):
            raise ModelCardError(f"{where}: expected a JSON object, got {type(data).__name__}")
        data = _upgrade(data)
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:  # a missing "stage"
            raise ModelCardError(f"{where}: {exc}; re-run training or fix the file") from None
        except ModelCardError as exc:
            raise ModelCardError(f"{where}: {exc}") from None


def stage2_reorders(card: ModelCard | None) -> bool:
    """Whether a stage-2 model's ranking replaces the order it is given: only when its card records a held-out
    check (``ranking_check``) in which it ranked better than that order. A reranker that ranks worse than its
    input does harm, so a model without such a check (any zero-shot model) keeps the incoming order.

    Example:
        >>> stage2_reorders(ModelCard(stage=2, ranking_check={"reorder": True}))
        True
        >>> stage2_reorders(None)
        False
    """
    return bool(card is not None and card.ranking_check and card.ranking_check.get("reorder") is True)


def default_card(stage: int, reasoning: bool = False) -> ModelCard:
    """How a model without a card (zero-shot) is prompted: the default prefix of its stage.

    Example:
        >>> default_card(2).assistant_prefix
        '<think>'
    """
    if stage == 1:
        return ModelCard(stage=1, assistant_prefix=STAGE1_REASONING_PREFIX if reasoning else STAGE1_PREFIX, reasoning=reasoning,
                         max_new_tokens=256 if reasoning else 16)
    return ModelCard(stage=2, assistant_prefix=STAGE2_PREFIX, candidates_per_prompt=5, max_new_tokens=256)


def card_for(card: ModelCard | None, stage: int, reasoning: bool | None = None) -> ModelCard:
    """The card to serve ``stage`` with: the model's own card when it was trained for that stage (and, for
    stage 1, the same reasoning mode), else the defaults of :func:`default_card`.

    One directory can serve both stages (a stage-2 model started from stage 1 is often used for both), so a
    card of the other stage does not apply.

    Example:
        >>> card_for(None, stage=1).assistant_prefix
        '<answer>'
    """
    if card is not None and card.stage == stage and (reasoning is None or card.reasoning == reasoning):
        return card
    return default_card(stage, reasoning=bool(reasoning))


def write_model_card(output_dir: str | Path, card: ModelCard) -> Path:
    """Write ``card`` (with library versions and a timestamp in ``training``) to ``output_dir/model_card.json``."""
    import peft
    import torch
    import transformers
    import trl

    card.training.setdefault("versions", {"trl": trl.__version__, "transformers": transformers.__version__,
                                          "peft": peft.__version__, "torch": torch.__version__})
    card.training.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    path = Path(output_dir) / MODEL_CARD
    path.write_text(json.dumps(card.to_dict(), indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return path


def read_model_card(model_dir: str | Path) -> ModelCard | None:
    """The card of a model directory, or None when it has none (a plain model, a hub id).

    Raises:
        ModelCardError: The file exists but is not a usable card (the message names the file and the fix).
    """
    path = Path(model_dir) / MODEL_CARD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCardError(f"{path}: not readable JSON ({exc}); re-run training or remove the file") from None
    return ModelCard.from_dict(data, where=str(path))


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Version-0 cards kept the serving settings in ``config``; the prompt then was version 1."""
    if "card_version" in data:
        return data
    config = data.get("config") or {}
    stage = data.get("stage")
    out = {"stage": stage, "prompt_version": "1", "base_model": data.get("base_model"), "kind": data.get("kind", "lora"),
           "assistant_prefix": config.get("assistant_prefix", ""), "reasoning": bool(config.get("reasoning", False)),
           "max_text_tokens": config.get("max_text_tokens", 256), "max_new_tokens": config.get("max_completion_length"),
           "candidates_per_prompt": config.get("k") if stage == 2 else None,
           "metrics": (data.get("final_metrics") or {}).get("held_out") or {},
           "training": {k: v for k, v in data.items() if k not in ("stage", "base_model", "kind")}}
    return out
