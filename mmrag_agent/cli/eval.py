"""``mmrag eval``: benchmark commands.

``mmrag eval rerank --data FILE.jsonl --reranker {random,bm25,embedding,stage1,stage2,pipeline}`` ranks every query's
candidates, prints P@1 / MRR / NDCG@k / Recall@k and optionally writes them as JSON.

Only typer and rich are imported at module level, so ``mmrag --help`` stays fast and torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .common import console, fail, quiet_libraries

eval_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmark rerankers on rerank-example JSONL files.")

_MODEL_FREE = ("random", "bm25")


@eval_app.command("rerank")
def rerank(
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False, readable=True, help="Rerank examples (JSONL, one query a line)."),
    reranker: str = typer.Option(..., "--reranker", help="random | bm25 | embedding | stage1 | stage2 | pipeline (or any registered name). stage2 and pipeline also report source F1 and answer EM/F1."),
    model: Optional[str] = typer.Option(None, "--model", help="Model of the reranker: embedding: 'minilm' (default) or a sentence-transformers id/directory."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate only the first N queries."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random reranker and of --shuffle."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the results as JSON here."),
    k: int = typer.Option(5, "-k", "--k", min=1, help="Cut-off of NDCG and Recall."),
    shuffle: bool = typer.Option(False, "--shuffle", help="Shuffle each query's candidates first (seeded), removing any position cue of the file's order."),
    device: Optional[str] = typer.Option(None, "--device", help="Torch device for model-based rerankers, e.g. cuda:0."),
    per_query: bool = typer.Option(False, "--per-query", help="Also write every query's ranking and metrics to --out."),
    query_batch: Optional[int] = typer.Option(None, "--query-batch", min=1, help="stage2 / pipeline: queries generated as one batch (default 8; 1 = one at a time)."),
    first_stage: Optional[str] = typer.Option(None, "--first-stage", help="stage1 / pipeline: fuse P(relevant) with this retriever's scores on the same candidates: none | bm25 | embedding (default: the model card's, else none)."),
    allow_outside_images: bool = typer.Option(False, "--allow-outside-images", help="Let image_path point outside the data file's folder (e.g. the images of a converted dataset)."),
    fusion_weight: Optional[float] = typer.Option(None, "--fusion-weight", min=0.0, max=1.0, help="stage1 / pipeline: weight of P(relevant) in the fused score (default: the model card's fitted weight, else the zero-shot default)."),
    stage1_model: Optional[str] = typer.Option(None, "--stage1-model", help="pipeline: the stage-1 model (e.g. a `mmrag train stage1` output; default: --model)."),
    reorder: Optional[bool] = typer.Option(None, "--reorder/--keep-order", help="stage2 / pipeline: rank by stage 2's ranking, or keep the order it is given (default: as the stage-2 model card's held-out ranking check decided; no check: keep the order)."),
) -> None:
    """Rank each query's candidates with a reranker and report P@1, MRR, NDCG@k and Recall@k (per-query means)."""
    from ..schema import DatasetError, read_rerank_examples
    from ..eval.baselines import RerankerUnavailable, make_reranker
    from ..eval.rerank import evaluate_reranker, shuffle_candidates

    try:
        examples = read_rerank_examples(data, limit=limit)
    except DatasetError as exc:
        fail(str(exc))
    if not examples:
        fail(f"{data} holds no examples")
    if shuffle:
        examples = shuffle_candidates(examples, seed=seed)

    kwargs: dict = {"seed": seed} if reranker == "random" else {}
    if device is not None:
        if reranker in _MODEL_FREE:
            fail(f"--device is not used by the {reranker} reranker")
        kwargs["device"] = device
    if query_batch is not None:
        if reranker not in ("stage2", "pipeline"):
            fail(f"--query-batch is used by the stage2 and pipeline rerankers, not {reranker}")
        kwargs["query_batch"] = query_batch
    if first_stage is not None and first_stage not in ("none", "bm25", "embedding"):
        fail(f"--first-stage must be none, bm25 or embedding, got {first_stage!r}")
    for name, value, users in (("--first-stage", first_stage, ("stage1", "pipeline")),
                               ("--fusion-weight", fusion_weight, ("stage1", "pipeline")),
                               ("--stage1-model", stage1_model, ("pipeline",)), ("--reorder", reorder, ("stage2", "pipeline"))):
        if value is not None and reranker not in users:
            fail(f"{name} is used by the {' and '.join(users)} reranker{'s' if len(users) > 1 else ''}, not {reranker}")
        if value is not None:
            kwargs[name.lstrip("-").replace("-", "_")] = value
    if reranker in ("stage1", "stage2", "pipeline"):
        kwargs["data_file"] = data  # image paths in the file resolve against its folder
        kwargs["allow_outside"] = allow_outside_images
        try:  # every image is where it should be, before a model loads
            for example in examples:
                for candidate in example.candidates:
                    candidate.image_file(data, allow_outside_images, must_exist=True)
        except DatasetError as exc:
            fail(str(exc).replace("allow images outside it (allow_outside=True)", "pass --allow-outside-images"))
    if reranker not in _MODEL_FREE:
        quiet_libraries()
    try:
        ranker = make_reranker(reranker, model=model, **kwargs)
    except (RerankerUnavailable, ValueError) as exc:
        fail(str(exc))
    except (RuntimeError, OSError) as exc:
        fail(f"cannot load the {reranker} reranker: {exc}", code=1)

    result = evaluate_reranker(examples, ranker, k=k)
    fusion = getattr(ranker, "fusion", None)
    print_result(result, title=f"Rerank {data.name}" + (" (candidates shuffled)" if shuffle else "")
                 + (f"; stage 1 fused with {fusion['first_stage']} at weight {fusion['weight']:g}" if fusion else ""))
    if out is not None:
        written = result.write_json(out, per_query=per_query, data=str(data), limit=limit, seed=seed, shuffled=shuffle,
                                    fusion=fusion)
        console.print(f"wrote {written}")


def print_result(result, title: str) -> None:
    """Print one :class:`~mmrag_agent.eval.rerank.RerankEvalResult` as a rich table."""
    table = Table(title=title)
    extra = [key for key in ("source_f1", "answer_em", "answer_f1") if key in result.metrics]
    for column in ("reranker", "model", "n", "P@1", "MRR", f"NDCG@{result.k}", f"Recall@{result.k}", *extra):
        if column in ("reranker", "model"):
            table.add_column(column, overflow="fold")
        else:  # numbers are never squeezed; the model name folds instead
            table.add_column(column, justify="right", no_wrap=True, min_width=max(len(column), 6))
    m = result.metrics
    table.add_row(result.reranker, result.model or "-", str(result.n),
                  *(f"{m[key]:.4f}" for key in ("p@1", "mrr", f"ndcg@{result.k}", f"recall@{result.k}", *extra)))
    # Piped to a file or a CI log, rich assumes 80 columns and would squeeze the names away: print it whole.
    (console if console.is_terminal else Console(width=200)).print(table)
