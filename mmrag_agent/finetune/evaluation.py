"""Held-out evaluation of a model being trained, through the serving code and with the metrics of ``mmrag eval rerank``.

* :func:`evaluate_stage1`: the stage-1 P(relevant) ranking of every held-out query's candidates, scored by
  :class:`~mmrag_agent.eval.stage1.Stage1Reranker` (the scorer serving uses) with the run's model card: P@1,
  MRR, NDCG@k, Recall@k; :func:`score_stage1` keeps the probabilities (the fusion weight is fitted on them).
* :func:`evaluate_stage2`: one greedy stage-2 judgement per held-out query over K candidates by
  :class:`~mmrag_agent.inference.Stage2Model` with the run's model card (the prompt serving builds), parsed by
  :mod:`mmrag_agent.format`: rank metrics of the model's ranking, set F1 of its ranked (cited) ids, answer F1
  and the format rate.
* :func:`generate_completions`: chat prompts in, completions out (the format probe samples with it).

All functions take a :class:`~mmrag_agent.models.LoadedModel`, so the model under training is evaluated
without saving it, and restore its train/eval mode afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from ..model_card import ModelCard
from ..models.generation import Sampling, generate
from ..models.loading import LoadedModel
from ..prompts import render_chat

__all__ = ["eval_mode", "evaluate_stage1", "evaluate_stage2", "generate_completions", "score_stage1", "stage1_metrics"]


@contextmanager
def eval_mode(model):
    """Put ``model`` in eval mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def score_stage1(loaded: LoadedModel, examples: Sequence, card: ModelCard, batch_size: int = 16,
                 data_file: str | Path | None = None, use_images: bool = True) -> list:
    """Stage-1 P(relevant) of every candidate of each example, with the prompt ``card`` says serving builds.

    Returns:
        One :class:`~mmrag_agent.finetune.fusion.QueryScores` per example (candidates in the given order).
    """
    from ..eval.stage1 import Stage1Reranker
    from .fusion import QueryScores

    with eval_mode(loaded.model):
        reranker = Stage1Reranker(loaded, data_file=data_file, batch_size=batch_size, use_images=use_images, card=card,
                                  first_stage="none")
        return [QueryScores(qid=e.qid, ids=e.candidate_ids(), positives=list(e.positives),
                            probabilities=[float(p) for p in reranker.score(e.query, e.candidates)]) for e in examples]


def stage1_metrics(rows: Sequence, k: int = 5) -> dict[str, float]:
    """P@1, MRR, NDCG@k, Recall@k (per-query means, as ``mmrag eval rerank``) of rankings by P(relevant), and ``n``."""
    from ..eval.ranking import ranking_from_scores, ranking_metrics

    rankings = [ranking_from_scores(r.ids, r.probabilities) for r in rows]
    return {**ranking_metrics(rankings, [r.positives for r in rows], k), "n": len(rows)}


def evaluate_stage1(loaded: LoadedModel, examples: Sequence, card: ModelCard, batch_size: int = 16,
                    data_file: str | Path | None = None, use_images: bool = True, k: int = 5) -> dict[str, float]:
    """Rank each held-out query's candidates by stage-1 P(relevant); per-query means of the rank metrics.

    Args:
        loaded: The model and its original processor (e.g. the trainer's model, wrapped).
        examples: Held-out rerank examples.
        card: The run's model card: the prompt (prefix, reasoning, text budget) serving will build.
        batch_size: Candidates per forward pass.
        data_file: JSONL the examples were read from (resolves relative image paths).
        use_images: Show images to vision-language models.
        k: Cut-off of NDCG and Recall.

    Returns:
        ``{"p@1", "mrr", "ndcg@k", "recall@k", "n"}`` (as ``mmrag eval rerank --reranker stage1``).
    """
    return stage1_metrics(score_stage1(loaded, examples, card, batch_size, data_file, use_images), k)


def evaluate_stage2(loaded: LoadedModel, examples: Sequence, card: ModelCard, seed: int = 0, data_file: str | Path | None = None,
                    batch_size: int = 8, constrained: bool = False) -> dict[str, float]:
    """One greedy stage-2 judgement per held-out query (K candidates, one seeded order), parsed and scored.

    The candidates are those of :func:`~mmrag_agent.finetune.datasets.stage2_units` (positives that fit plus hard
    negatives), shown in one shuffled order. Rank metrics use the parser's ``ranking`` (the shown order when
    the model ranked nothing usable: what a caller would get); ``set_f1`` uses only the ids the model ranked
    (its cited sources, retrieval F1); ``answer_f1`` is the token F1 of the answer without its
    citations, max over gold answers (queries without answers are skipped).

    Args:
        loaded: The model and its original processor.
        examples: Held-out rerank examples.
        card: The run's model card: K (``candidates_per_prompt``), prefix, budgets.
        seed: Seed of the candidate selection and order.
        data_file: JSONL the examples were read from.
        batch_size: Prompts per ``generate`` call.
        constrained: Constrain the output to the format as serving does. Off by default: the model is judged on
            what it writes unaided, as GRPO trains it (with the constraint, ``format_rate`` would always be 1).

    Returns:
        ``{"p@1", "mrr", "ndcg@k", "recall@k", "set_f1", "answer_f1", "format_rate", "n"}``.
    """
    from ..eval.answers import answer_f1
    from ..eval.ranking import ranking_metrics, set_prf
    from ..inference import Stage2Model
    from ..prompts import candidate_view
    from .datasets import stage2_units

    k = card.candidates_per_prompt or 5
    units = stage2_units(list(examples), k=k, permutations=1, seed=seed)
    if not units:
        return {"n": 0}
    stage2 = Stage2Model(loaded, card=card, cache_size=0, constrained=constrained)
    with_images = loaded.is_vision
    requests = [(unit.example.query, [candidate_view(c, data_file, with_image=with_images) for c in unit.order]) for unit in units]
    with eval_mode(loaded.model):
        outputs = stage2.run_many(requests, batch_size=batch_size)
    rankings, positives, set_f1s, answer_f1s, formats = [], [], [], [], []
    for unit, out in zip(units, outputs):
        shown = [c.id for c in unit.order]
        gold = set(unit.example.positives) & set(shown)
        ranked = [shown[n - 1] for n in out.ranking]
        rankings.append(ranked)
        positives.append(gold)
        set_f1s.append(set_prf([] if out.used_fallback else ranked, gold).f1)
        formats.append(float(out.format_ok))
        if unit.example.answers:
            answer_f1s.append(answer_f1(out.answer_text, list(unit.example.answers)))
    metrics = ranking_metrics(rankings, positives, k)
    metrics.update(set_f1=sum(set_f1s) / len(set_f1s), format_rate=sum(formats) / len(formats),
                   answer_f1=sum(answer_f1s) / len(answer_f1s) if answer_f1s else float("nan"), n=len(units))
    return metrics


def generate_completions(loaded: LoadedModel, prompts: Sequence[list[dict]], images: Sequence[Sequence[str] | None] | None = None,
                         assistant_prefix: str = "", max_new_tokens: int = 16, sampling: Sampling = Sampling(),
                         batch_size: int = 8) -> list[str]:
    """Completions of chat prompts (the text after the pre-filled ``assistant_prefix``), batched.

    Args:
        loaded: Model and original processor.
        prompts: Chat messages per prompt (image parts as ``{"type": "image"}`` placeholders).
        images: Per prompt, the image files or PIL images of its placeholders, in order (None: text only).
        assistant_prefix: Appended after the generation prompt.
        max_new_tokens: Generation budget.
        sampling: Greedy (default) or sampled decoding, completions per prompt.
        batch_size: Prompts per ``generate`` call.

    Returns:
        ``len(prompts) * sampling.num_return_sequences`` strings, special tokens removed.
    """
    images = list(images) if images is not None else [None] * len(prompts)
    out: list[str] = []
    with eval_mode(loaded.model):
        for start in range(0, len(prompts), batch_size):
            texts = [render_chat(loaded.processor, list(p), assistant_prefix) for p in prompts[start:start + batch_size]]
            out += generate(loaded, texts, [ims or [] for ims in images[start:start + batch_size]], max_new_tokens=max_new_tokens,
                            sampling=sampling)
    return out
