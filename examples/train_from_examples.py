"""Train both stages on real questions and measure what each phase buys, on held-out questions. One command:

    .venv/bin/python examples/train_from_examples.py --threads 1          # the full run: ~50 minutes on one CPU core
    .venv/bin/python examples/train_from_examples.py --smoke --threads 1  # a few steps, a few questions: ~5 minutes

Data: ``../shared/data/mmqa-image/train.jsonl`` (606 real MultimodalQA questions over image candidates given by
their Wikipedia titles), split by question with seed 0 into train (80%) and held-out (20%). Model: SmolLM2-135M-
Instruct (the offline ``smollm2`` preset) with LoRA (SPEC §4: r 16, alpha 32, attention + MLP projections).

Stage 1 (SPEC §3): held-out P@1 / MRR of the stage-1 P(relevant) ranking zero-shot, after the SFT warm start only,
and after GRPO. Stage 2 (SPEC §4), started from the stage-1 adapter: rank metrics of the generated ``<rank>``,
answer F1 of ``<answer>`` and the format rate, before and after stage-2 GRPO (and after its warm start).

Reference rerankers on the same held-out questions, candidates shuffled (seed 0) so that the file's order (a
positive listed first in half the queries) is no cue: random, BM25, all-MiniLM-L6-v2, and the trained stage-1
model once more on the shuffled candidates (``--reference-only`` adds them to an existing run).

Writes ``OUT/results.json`` (every number, timings per phase and per GRPO step), ``OUT/held_out.png`` (held-out
metrics per phase, reference rerankers as lines), and each stage's ``training_curves.png`` / ``model_card.json``
under ``OUT/stage1`` and ``OUT/stage2``. These are small-model measurements on titles, not MultimodalQA leaderboard scores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mmqa-image" / "train.jsonl"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Rerank examples (JSONL).")
    p.add_argument("--model", default="smollm2", help="Base model.")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "train-from-examples", help="Output folder.")
    p.add_argument("--stage1-steps", type=int, default=20, help="Stage-1 GRPO steps.")
    p.add_argument("--stage2-steps", type=int, default=10, help="Stage-2 GRPO steps (0: skip stage 2).")
    p.add_argument("--sft-steps", type=int, default=100, help="SFT warm-start steps of stage 1 (40 steps at lr 2e-4 left P@1 at chance).")
    p.add_argument("--stage2-sft-steps", type=int, default=20, help="SFT warm-start steps of stage 2.")
    p.add_argument("--sft-batch-size", type=int, default=8, help="Sequences per stage-1 SFT warm-start step.")
    p.add_argument("--stage2-sft-batch-size", type=int, default=4, help="Sequences per stage-2 SFT warm-start step.")
    p.add_argument("--sft", default="auto", choices=["auto", "on", "off"], help="Warm start: auto runs it when the format probe fails.")
    p.add_argument("--prompts-per-step", type=int, default=2, help="Prompts per GRPO step (each with --generations completions).")
    p.add_argument("--generations", type=int, default=4, help="Completions per prompt (GRPO group size).")
    p.add_argument("--stage2-prompts-per-step", type=int, default=1, help="Stage-2 prompts per GRPO step.")
    p.add_argument("--stage2-max-tokens", type=int, default=96, help="Stage-2 completion budget (SPEC default 256).")
    p.add_argument("--stage2-k", type=int, default=3, help="Stage-2 candidates per prompt (SPEC default 5).")
    p.add_argument("--eval-queries", type=int, default=60, help="Held-out questions for stage 1 (121 = all of the 20%%).")
    p.add_argument("--stage2-eval-queries", type=int, default=20, help="Held-out questions for stage 2 (one generation each).")
    p.add_argument("--eval-every", type=int, default=20, help="Stage-1 held-out evaluation every N GRPO steps (each ~2 minutes).")
    p.add_argument("--lr", type=float, default=5e-5,
                   help="GRPO learning rate (SPEC default 1e-5 with LoRA; higher here because the run is only tens of steps).")
    p.add_argument("--sft-lr", type=float, default=4e-4, help="SFT warm-start learning rate.")
    p.add_argument("--assistant-prefix", default="", help="Stage-1 assistant pre-fill, e.g. '<answer>'.")
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient (SPEC 0.04; 0 skips the reference forward pass).")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    p.add_argument("--smoke", action="store_true", help="A few steps and questions: proves the pipeline end to end.")
    p.add_argument("--reference-only", action="store_true",
                   help="Only (re)compute the reference rerankers for the run in --out and redraw its figure.")
    args = p.parse_args()
    if args.smoke:
        args.stage1_steps, args.stage2_steps, args.sft_steps, args.stage2_sft_steps, args.sft_batch_size = 3, 2, 3, 2, 4
        args.stage2_sft_batch_size = 4
        args.eval_queries, args.stage2_eval_queries, args.eval_every = 4, 2, 2
        args.prompts_per_step, args.stage2_prompts_per_step, args.stage2_max_tokens = 2, 1, 48
    return args


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mmrag_agent.finetune").setLevel(logging.INFO)
    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    if args.threads:
        torch.set_num_threads(args.threads)
    from mmrag_agent.finetune import Stage1Config, Stage2Config, train_stage1, train_stage2

    if args.reference_only:
        results = json.loads((args.out / "results.json").read_text())
        results["reference"] = reference_rerankers(args)
        finish(results, args.out)
        return
    common = dict(data=str(args.data), split_seed=0, held_out_fraction=0.2, seed=0, gradient_checkpointing=False,
                  num_generations=args.generations, learning_rate=args.lr, sft_learning_rate=args.sft_lr, sft_warm_start=args.sft,
                  save_steps=50, report_to="none", beta=args.beta)
    results: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}

    # ---- stage 1: zero-shot -> SFT warm start -> GRPO, held-out P@1 / MRR after each
    began = time.perf_counter()
    s1 = train_stage1(Stage1Config(
        model_name_or_path=args.model, output_dir=str(args.out / "stage1"), max_steps=args.stage1_steps, sft_max_steps=args.sft_steps,
        per_device_train_batch_size=args.prompts_per_step * args.generations, max_eval_queries=args.eval_queries,
        sft_batch_size=args.sft_batch_size,
        eval_every=args.eval_every, assistant_prefix=args.assistant_prefix, **common))
    results["stage1"] = summarize(s1.model_card, time.perf_counter() - began)
    report("stage 1", results["stage1"], ("p@1", "mrr", "ndcg@5"))

    # ---- stage 2: from the stage-1 adapter; rank metrics and answer F1 before / after GRPO
    if args.stage2_steps > 0:
        began = time.perf_counter()
        s2 = train_stage2(Stage2Config(
            stage1_output=str(s1.output_dir), output_dir=str(args.out / "stage2"), max_steps=args.stage2_steps,
            sft_max_steps=args.stage2_sft_steps, sft_batch_size=args.stage2_sft_batch_size, format_probe_prompts=4,
            per_device_train_batch_size=args.stage2_prompts_per_step * args.generations,
            max_completion_length=args.stage2_max_tokens, k=args.stage2_k, permutations=2, max_eval_queries=args.stage2_eval_queries,
            eval_every=max(args.stage2_steps, 1), eval_batch_size=4, **common))
        results["stage2"] = summarize(s2.model_card, time.perf_counter() - began)
        report("stage 2", results["stage2"], ("p@1", "mrr", "set_f1", "answer_f1", "format_rate"))

    results["reference"] = reference_rerankers(args)
    finish(results, args.out)


def reference_rerankers(args) -> dict:
    """Random, BM25, MiniLM and the trained stage-1 model on the stage-1 held-out questions, candidates shuffled."""
    from mmrag_agent.eval.baselines import make_reranker
    from mmrag_agent.eval.rerank import evaluate_reranker, shuffle_candidates
    from mmrag_agent.eval.stage1 import Stage1Reranker
    from mmrag_agent.finetune.datasets import split_by_question
    from mmrag_agent.schema import read_rerank_examples

    _, held_out = split_by_question(read_rerank_examples(args.data), 0.2, seed=0)
    held_out = shuffle_candidates(held_out[: args.eval_queries], seed=0)
    rerankers = {"random": make_reranker("random", seed=0), "bm25": make_reranker("bm25"),
                 "all-MiniLM-L6-v2": make_reranker("embedding", model="minilm")}
    if (args.out / "stage1" / "adapter_config.json").exists() or (args.out / "stage1" / "config.json").exists():
        rerankers["stage 1 trained (shuffled)"] = Stage1Reranker(str(args.out / "stage1"))
    out = {}
    for name, reranker in rerankers.items():
        out[name] = {**evaluate_reranker(held_out, reranker, show_progress=False).metrics, "n": len(held_out)}
        print(f"  reference {name:<28} " + "  ".join(f"{m} {out[name][m]:.4f}" for m in ("p@1", "mrr", "ndcg@5")))
    return out


def finish(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_phases(results, out / "held_out.png")
    print(f"\nwrote {out / 'results.json'}, {out / 'held_out.png'}, and {out}/stage*/training_curves.png")


def summarize(card, seconds: float) -> dict:
    """The numbers of one stage (from its ``ModelCard``): held-out metrics per phase, warm start, GRPO speed, wall clock."""
    card = card.training
    phases: dict = {}
    for record in card["held_out_history"]:
        phases[record["phase"]] = {k: v for k, v in record.items() if k != "phase"}
    phases.setdefault("final", phases.get("grpo"))
    train = card["final_metrics"]["train"]
    warm = card["sft_warm_start"]
    return {
        "held_out": {"zero_shot": phases.get("initial"), "after_sft": phases.get("sft"), "after_grpo": phases.get("final")},
        "held_out_queries": card["data"]["held_out_queries"], "train_queries": card["data"]["train_queries"],
        "train_records": card["data"]["train_records"],
        "sft": {"ran": warm.get("ran"), "probe_format_rate": (warm.get("probe") or {}).get("format_rate"),
                "steps": warm.get("steps"), "seconds": warm.get("seconds"), "loss_first_last": _ends(warm.get("loss"))},
        "grpo": {"steps": card["steps"], "seconds": train["train_runtime"], "seconds_per_step": train["step_time"],
                 "reward_last_steps": train["reward"], "format_rate_last_steps": train["format_rate"],
                 "frac_reward_zero_std_last_steps": train["frac_reward_zero_std"]},
        "eval_seconds": {p: (r or {}).get("eval_seconds") for p, r in phases.items()},
        "wall_seconds": round(seconds, 1),
    }


def report(title: str, summary: dict, metrics: tuple[str, ...]) -> None:
    print(f"\n{title}: {summary['train_queries']} train / {summary['held_out_queries']} held-out questions, "
          f"{summary['wall_seconds']:.0f} s in all")
    for phase, record in summary["held_out"].items():
        values = "  ".join(f"{m} {record[m]:.4f}" for m in metrics if record and isinstance(record.get(m), (int, float)))
        print(f"  {phase:<11} {values or '-'}")
    sft, grpo = summary["sft"], summary["grpo"]
    print(f"  SFT: ran={sft['ran']} probe format rate={sft['probe_format_rate']} {sft['steps']} steps {sft['seconds']} s; "
          f"GRPO: {grpo['steps']} steps, {grpo['seconds_per_step']} s/step, last reward {grpo['reward_last_steps']}, "
          f"format {grpo['format_rate_last_steps']}, zero-std groups {grpo['frac_reward_zero_std_last_steps']}")


def plot_phases(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in ("stage1", "stage2") if s in results]
    fig, axes = plt.subplots(1, len(stages), figsize=(6 * len(stages), 4), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        phases = [p for p, r in results[stage]["held_out"].items() if r]
        metrics = ["p@1", "mrr"] + (["answer_f1", "format_rate"] if stage == "stage2" else [])
        width = 0.8 / len(metrics)
        for i, metric in enumerate(metrics):
            ax.bar([j + i * width for j in range(len(phases))], [results[stage]["held_out"][p].get(metric, 0) or 0 for p in phases],
                   width, label=metric)
        ax.set_xticks([j + width * (len(metrics) - 1) / 2 for j in range(len(phases))], phases)
        if stage == "stage1":  # reference rerankers on the same questions: their P@1 as lines
            styles = iter([":", "--", "-."])
            for name, record in results.get("reference", {}).items():
                if "trained" not in name:
                    ax.axhline(record["p@1"], color="grey", linestyle=next(styles, ":"), linewidth=1, label=f"P@1 {name}")
        ax.set_ylim(0, 1)
        ax.set_title(f"{stage}: held-out ({results[stage]['held_out_queries']} questions)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _ends(values):
    return [values[0], values[-1]] if values else None


if __name__ == "__main__":
    main()
