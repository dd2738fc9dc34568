"""Fusion of stage-1 P(relevant) with a first-stage retriever, swept over weights on one rerank-example file.

Stage 1 scores every candidate once; the retriever's scores (BM25 and all-MiniLM-L6-v2 on the same candidates)
are fused with them at each weight of a grid (``mmrag_agent.inference.fusion.fuse``), and P@1 / MRR of every
ranking is printed as a table beside the retrievers alone. This is how the zero-shot default weight
(``ZERO_SHOT_WEIGHT``) was chosen: the largest weight that ranks no worse than the retriever alone.

    python benchmarks/fusion_weights.py --data ../shared/data/mmqa-image/train.jsonl --model smollm2 --threads 1
    python benchmarks/fusion_weights.py --data held_out.jsonl --model runs/stage1          # a trained model

Candidates are shuffled (seed 0) first, so no reranker inherits the file's order.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="Rerank examples (JSONL).")
    parser.add_argument("--model", default="smollm2", help="Stage-1 model (hub id, directory, preset).")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N questions.")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads.")
    parser.add_argument("--grid", default="0,0.02,0.05,0.1,0.2,0.3,0.4,0.5,0.7,1.0", help="Weights of P(relevant) to try.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the per-candidate scores and the table as JSON.")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from tqdm.auto import tqdm

    from mmrag_agent.eval.baselines import make_reranker
    from mmrag_agent.eval.ranking import ranking_from_scores, ranking_metrics
    from mmrag_agent.eval.rerank import shuffle_candidates
    from mmrag_agent.eval.stage1 import Stage1Reranker
    from mmrag_agent.inference.fusion import fuse
    from mmrag_agent.schema import read_rerank_examples

    examples = shuffle_candidates(read_rerank_examples(args.data, limit=args.limit), seed=0)
    started = time.perf_counter()
    stage1 = Stage1Reranker(args.model, data_file=args.data)
    retrievers = {"bm25": make_reranker("bm25"), "embedding": make_reranker("embedding")}
    rows = []
    for ex in tqdm(examples, desc="scoring", unit="question"):
        rows.append({"qid": ex.qid, "ids": ex.candidate_ids(), "positives": list(ex.positives),
                     "p": stage1.score(ex.query, ex.candidates),
                     **{name: r.score(ex.query, ex.candidates) for name, r in retrievers.items()}})
    seconds = time.perf_counter() - started

    def metrics(scores_of) -> dict:
        rankings = [ranking_from_scores(r["ids"], scores_of(r)) for r in rows]
        return ranking_metrics(rankings, [r["positives"] for r in rows], 5)

    table = [("stage 1 alone", None, metrics(lambda r: r["p"]))]
    for name in retrievers:
        table.append((f"{name} alone", None, metrics(lambda r, n=name: r[n])))
    for name in retrievers:
        for weight in (float(w) for w in args.grid.split(",")):
            table.append((f"fused with {name}", weight, metrics(lambda r, n=name, w=weight: fuse(r["p"], r[n], w))))
    print(f"\n{len(rows)} questions from {args.data}; stage 1 = {args.model}; scored in {seconds:.0f} s\n")
    print("| ranking | weight of P | P@1 | MRR | NDCG@5 | Recall@5 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, weight, m in table:
        print(f"| {label} | {'-' if weight is None else f'{weight:g}'} | {m['p@1']:.4f} | {m['mrr']:.4f} | {m['ndcg@5']:.4f} | {m['recall@5']:.4f} |")
    if args.out:
        args.out.write_text(json.dumps({"data": str(args.data), "model": args.model, "rows": rows,
                                        "table": [{"ranking": l, "weight": w, **m} for l, w, m in table]}, indent=1))


if __name__ == "__main__":
    main()
