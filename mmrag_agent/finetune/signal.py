"""Dynamic sampling ahead of stage-1 GRPO: give GRPO the prompts whose groups will carry a learning signal.

A GRPO group teaches nothing when all its completions get the same reward (TRL logs the fraction of such groups as
``frac_reward_zero_std``): after the SFT warm start the policy answers most training pairs the same way every
time. DAPO's dynamic sampling over-samples prompts and drops the groups whose rewards do not vary, after paying
for their generation. Stage 1 can predict that before generating: the policy's probability ``p`` of the right
answer is one forward pass (the serving scorer's P(yes)), and a group of ``G`` completions sampled at temperature
``T`` has mixed rewards with probability ``1 - p_T^G - (1 - p_T)^G``, ``p_T = sigmoid(logit(p) / T)`` (format
failures only add variance). :func:`select_signal_records` scores a class-balanced pool ``factor`` times larger
than GRPO will take and keeps, half positives and half negatives, the most likely to carry signal.
"""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

from ..model_card import ModelCard
from ..models.loading import LoadedModel
from ..prompts import render_chat

__all__ = ["mixed_group_probability", "select_signal_records"]


def mixed_group_probability(p_correct: float, generations: int, temperature: float = 1.0) -> float:
    """Probability that ``generations`` answers sampled at ``temperature`` are not all right nor all wrong.

    Example:
        >>> round(mixed_group_probability(0.5, 4), 4), round(mixed_group_probability(0.99, 4), 4)
        (0.875, 0.0394)
    """
    if math.isnan(p_correct):
        return 1.0  # an unusable score: let GRPO look at it
    p = min(max(p_correct, 1e-9), 1 - 1e-9)
    p_t = 1.0 / (1.0 + math.exp(-math.log(p / (1 - p)) / max(temperature, 1e-6)))
    return 1.0 - p_t ** generations - (1.0 - p_t) ** generations


def select_signal_records(loaded: LoadedModel, records: Sequence[dict], card: ModelCard, needed: int, factor: int,
                          generations: int, temperature: float, seed: int = 0, batch_size: int = 16) -> tuple[list[dict], dict[str, Any]]:
    """The ``needed`` stage-1 records likeliest to give GRPO groups with mixed rewards (module docstring).

    Args:
        loaded: The policy (after the warm start) with its original processor.
        records: Stage-1 training records (``prompt``, ``label``, optionally ``images``).
        card: The run's serving card (assistant prefix and text budget of the prompts).
        needed: Prompts GRPO will take (``max_steps`` x prompts per step).
        factor: The pool scored is ``factor * needed`` records, half positives, half negatives where possible.
        generations: ``num_generations`` (G).
        temperature: GRPO's sampling temperature.
        seed: Seed of the pool.
        batch_size: Prompts per forward pass.

    Returns:
        ``(records, info)``: the chosen records (each with ``"signal"``, its predicted mixed-group probability) and
        ``{"pool", "kept", "mean_signal_pool", "mean_signal_kept", "predicted_zero_std_pool", "predicted_zero_std_kept"}``.
    """
    from ..inference import YesNoScorer
    from .evaluation import eval_mode

    rng = random.Random(f"{seed}:grpo-pool")
    by_label = {label: [r for r in records if r["label"] == label] for label in ("yes", "no")}
    for items in by_label.values():
        rng.shuffle(items)
    half = max(1, factor * needed // 2)
    pool = by_label["yes"][:half] + by_label["no"][:half]
    pool += [r for label in ("yes", "no") for r in by_label[label][half:]][: max(0, factor * needed - len(pool))]
    scorer = YesNoScorer(loaded, batch_size=batch_size, card=card)
    prompts = [_scoring_prompt(loaded, r, card.assistant_prefix) for r in pool]
    with eval_mode(loaded.model):
        p_yes = scorer.score_prompts(prompts, [(r.get("images") or [r.get("image")])[0] for r in pool])
    scored = []
    for record, p in zip(pool, p_yes):
        correct = p if record["label"] == "yes" else 1.0 - p
        scored.append({**record, "signal": mixed_group_probability(correct, generations, temperature)})
    kept = []
    for label in ("yes", "no"):
        side = sorted((r for r in scored if r["label"] == label), key=lambda r: -r["signal"])
        kept += side[: (needed + (label == "yes")) // 2]
    if len(kept) < needed:  # one class ran short: fill with the best of the rest
        chosen = {id(r) for r in kept}
        kept += sorted((r for r in scored if id(r) not in chosen), key=lambda r: -r["signal"])[: needed - len(kept)]
    rng.shuffle(kept)

    def mean(values):
        values = list(values)
        return sum(values) / len(values) if values else float("nan")

    info = {"pool": len(scored), "kept": len(kept), "mean_signal_pool": mean(r["signal"] for r in scored),
            "mean_signal_kept": mean(r["signal"] for r in kept),
            "predicted_zero_std_pool": 1 - mean(r["signal"] for r in scored),
            "predicted_zero_std_kept": 1 - mean(r["signal"] for r in kept)}
    return kept, info


def _scoring_prompt(loaded: LoadedModel, record: dict, prefix: str) -> str:
    from ..format import ANSWER_OPEN

    text = render_chat(loaded.processor, record["prompt"], prefix)
    return text if text.endswith(ANSWER_OPEN) else text + ANSWER_OPEN
