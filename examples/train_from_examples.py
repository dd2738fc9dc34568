"""Train both stages on real questions with the recipe, and measure what each phase buys on held-out questions.

    .venv/bin/python examples/train_from_examples.py                 # the recipe (defaults), both stages
    .venv/bin/python examples/train_from_examples.py --smoke         # a few steps and questions: the pipeline end to end
    .venv/bin/python examples/train_from_examples.py --data mmqa-image/train.jsonl   # larger data, same format

Data: ``--data`` (rerank-example JSONL, see the README's "Rerank-example format"), by default the bundled
``examples/rerank-example.jsonl`` (24 questions: the recipe end to end, not a measurement); the README's numbers
come from 606 MultimodalQA image questions (Wikipedia titles) converted with ``mmrag_agent.finetune.builders``.
Split by question with seed 0 into train (80%) and held-out (20%). Model:
SmolLM2-135M-Instruct (the offline ``smollm2`` preset) with LoRA (r 16, alpha 32, attention + MLP projections).

Stage 1, the recipe (README, "Real learning on this CPU"), held-out P@1 / MRR after each phase:

1. every candidate of every training question, the two classes balanced by loss weights;
2. the SFT warm start over whole epochs, each question's candidates in one pass with the tokens they share (system
   prompt, instruction, question) computed once, a list-wise term over them beside the point-wise loss (on the
   margins plus the first-stage retriever's normalised score, ``--listwise-retrieval``: it trains the fused
   ranking), LoRA on the last ``--lora-layers`` layers;
3. GRPO on the prompts likeliest to give groups with reward variance (dynamic sampling predicted from the policy's
   own P(yes)), groups of ``--generations``, no KL term (``--beta 0``);
4. the fusion weight with the first-stage retriever (``--first-stage``, default all-MiniLM-L6-v2), cross-fitted on
   the held-out questions and written to the model card.

Stage 2 starts from the stage-1 adapter with K = 5 candidates: a warm start over whole epochs of a subset
of the training questions, a few GRPO steps, then format rate, rank metrics, source F1 and answer F1 of unconstrained
greedy completions before and after; then the pipeline (fused stage 1, then stage 2 on its top K) on held-out
questions, ranked by stage 2 and by stage 1's order: the stage-2 card records whether stage 2 ranked better, and
serving lets it reorder only then.

Writes ``OUT/results.json`` (every number; wall time per phase; the machine's load before and after), ``OUT/held_out.png``,
``OUT/held_out.jsonl`` (the held-out questions, for ``mmrag eval rerank``) and each stage's ``model_card.json`` /
``training_curves.png`` under ``OUT/stage1`` and ``OUT/stage2``. Small-model measurements on titles, not leaderboard scores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_DATA = ROOT / "examples" / "rerank-example.jsonl"


def auto_threads() -> int:
    """Torch threads: the cores the 1-minute load average leaves idle (both cores of an idle 2-core machine), at least 1.
    Oversubscribed cores make multi-threaded torch slower, not faster (measured 4x slower at load 8 on 2 cores)."""
    cores = os.cpu_count() or 1
    return max(1, min(cores, int(cores - os.getloadavg()[0] + 0.5)))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=BUNDLED_DATA, help="Rerank examples (JSONL). Default: the bundled examples/rerank-example.jsonl.")
    p.add_argument("--model", default="smollm2", help="Base model.")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "train-from-examples", help="Output folder.")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the idle cores, see auto_threads).")
    # stage 1
    p.add_argument("--sft-epochs", type=float, default=2.0, help="Stage-1 warm start: whole passes over every candidate of every training question.")
    p.add_argument("--sft-lr", type=float, default=4e-4, help="Stage-1 warm-start learning rate (linear decay).")
    p.add_argument("--questions-per-step", type=int, default=1, help="Stage-1 warm start: questions (all their candidates) per optimizer step.")
    p.add_argument("--listwise", type=float, default=1.0, help="Stage-1 warm start: weight of the list-wise term over each question's candidates (0: point-wise only).")
    p.add_argument("--listwise-retrieval", type=float, default=4.0, help="Stage-1 warm start: the first-stage retriever's normalised score times this is added to each candidate's margin in the list-wise term, which then trains the fused ranking (0: stage 1 alone).")
    p.add_argument("--lora-layers", type=int, default=10, help="LoRA on the last N of the model's layers (0: all).")
    p.add_argument("--stage1-steps", type=int, default=16, help="Stage-1 GRPO steps.")
    p.add_argument("--prompts-per-step", type=int, default=2, help="Stage-1 prompts per GRPO step.")
    p.add_argument("--generations", type=int, default=8, help="Completions per prompt (GRPO group size).")
    p.add_argument("--temperature", type=float, default=1.0, help="GRPO sampling temperature.")
    p.add_argument("--pool-factor", type=int, default=4, help="Dynamic sampling: score this many times the GRPO prompts, keep the likeliest to carry signal (0: off).")
    p.add_argument("--lr", type=float, default=2e-5, help="GRPO learning rate.")
    p.add_argument("--beta", type=float, default=0.0, help="KL coefficient (0: no reference forward pass, as DAPO).")
    p.add_argument("--stage1-output", type=Path, default=None, help="Reuse a trained stage 1 (its output folder, with the same --data) instead of training it.")
    p.add_argument("--first-stage", default="embedding", choices=["embedding", "bm25", "none"], help="Retriever the fusion weight is fitted against.")
    p.add_argument("--eval-queries", type=int, default=None, help="Held-out questions for stage 1 (default: all of the 20%%).")
    # stage 2
    p.add_argument("--stage2-k", type=int, default=5, help="Stage-2 candidates per prompt (the method's 5).")
    p.add_argument("--stage2-train-queries", type=int, default=120, help="Training questions of the stage-2 warm start and GRPO.")
    p.add_argument("--stage2-sft-lr", type=float, default=4e-4, help="Stage-2 warm-start learning rate (at 1e-4 the format was not learned in one epoch).")
    p.add_argument("--stage2-sft-epochs", type=float, default=1.0, help="Stage-2 warm start: whole passes over its questions (one order each).")
    p.add_argument("--stage2-steps", type=int, default=6, help="Stage-2 GRPO steps (0: skip stage 2).")
    p.add_argument("--stage2-temperature", type=float, default=0.7, help="Stage-2 GRPO sampling temperature (at 1.0 the 135M model's samples left the format: every group had zero reward variance).")
    p.add_argument("--stage2-generations", type=int, default=4, help="Stage-2 completions per prompt.")
    p.add_argument("--stage2-max-tokens", type=int, default=96, help="Stage-2 completion budget (the method's default 256).")
    p.add_argument("--stage2-eval-queries", type=int, default=60, help="Held-out questions for stage 2 (one greedy generation each).")
    p.add_argument("--pipeline-queries", type=int, default=60, help="Held-out questions of the pipeline check (fused stage 1, then stage 2 on its top K, ranked by stage 2 and by stage 1's order), recorded in the stage-2 card (0: skip; serving then keeps stage 1's order).")
    p.add_argument("--verbose", action="store_true", help="Keep the libraries' warnings, logs and loading bars.")
    p.add_argument("--smoke", action="store_true", help="A few steps and questions: proves the pipeline end to end.")
    args = p.parse_args(argv)
    if args.smoke:
        args.sft_epochs, args.stage1_steps, args.stage2_steps, args.eval_queries, args.stage2_eval_queries = 0.05, 2, 1, 6, 4
        args.stage2_train_queries, args.stage2_sft_epochs, args.stage2_max_tokens, args.pipeline_queries = 4, 1.0, 48, 4
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not Path(args.data).is_file():
        print(f"--data: {args.data} not found; pass a rerank-example JSONL file (README, \"Rerank-example format\")", file=sys.stderr)
        return 2
    threads = args.threads or auto_threads()
    from mmrag_agent.cli.common import quiet_libraries, set_verbose

    set_verbose(args.verbose)
    quiet_libraries("mmrag_agent.finetune")  # the libraries' warnings and loading bars only with --verbose
    import datasets
    import torch

    datasets.disable_progress_bars()
    torch.set_num_threads(threads)
    from mmrag_agent.finetune import Stage1Config, Stage2Config, train_stage1, train_stage2

    began_all = time.perf_counter()
    results: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "machine": {"threads": threads, "cores": os.cpu_count(), "load_before": list(os.getloadavg())}}
    common = dict(data=str(args.data), split_seed=0, held_out_fraction=0.2, seed=0, gradient_checkpointing=False, save_steps=1000,
                  report_to="none", beta=args.beta, lora_layers=args.lora_layers or None, sft_warm_start="on")
    print(f"data {args.data}; {threads} torch threads; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)

    # ---- stage 1: zero-shot -> SFT warm start (whole epochs) -> GRPO on signal -> fusion, held-out after each
    began = time.perf_counter()
    if args.stage1_output:  # reuse: its card holds the held-out metrics, the fusion and the data split
        from mmrag_agent.model_card import read_model_card

        s1_dir, s1_card = Path(args.stage1_output), read_model_card(args.stage1_output)
    else:
        s1 = train_stage1(Stage1Config(
            model_name_or_path=args.model, output_dir=str(args.out / "stage1"), max_steps=args.stage1_steps, sft_epochs=args.sft_epochs,
            sft_learning_rate=args.sft_lr, sft_questions_per_step=args.questions_per_step, sft_listwise_weight=args.listwise,
            sft_listwise_retrieval=args.listwise_retrieval,
            learning_rate=args.lr, num_generations=args.generations, per_device_train_batch_size=args.prompts_per_step * args.generations,
            temperature=args.temperature, grpo_pool_factor=args.pool_factor, max_eval_queries=args.eval_queries,
            eval_every=max(args.stage1_steps, 1), max_text_tokens=64, first_stage=args.first_stage, **common))
        s1_dir, s1_card = s1.output_dir, s1.model_card
    results["stage1"] = summarize(s1_card, time.perf_counter() - began, s1_dir)
    results["stage1"]["output_dir"] = str(s1_dir)
    report("stage 1" + (f" (reused from {s1_dir})" if args.stage1_output else ""), results["stage1"], ("p@1", "mrr", "ndcg@5"))

    # ---- stage 2: from the stage-1 adapter, K = 5; format rate, source F1, answer F1 before / after
    if args.stage2_steps > 0:
        began = time.perf_counter()
        s2 = train_stage2(Stage2Config(
            stage1_output=str(s1_dir), output_dir=str(args.out / "stage2"), max_steps=args.stage2_steps, k=args.stage2_k,
            sft_epochs=args.stage2_sft_epochs, sft_learning_rate=args.stage2_sft_lr, sft_batch_size=4, permutations=1, max_train_queries=args.stage2_train_queries,
            learning_rate=args.lr, num_generations=args.stage2_generations, per_device_train_batch_size=args.stage2_generations,
            temperature=args.stage2_temperature, max_completion_length=args.stage2_max_tokens, max_eval_queries=args.stage2_eval_queries,
            eval_every=max(args.stage2_steps, 1), eval_batch_size=8, max_text_tokens=64, ranking_check_queries=args.pipeline_queries, **common))
        results["stage2"] = summarize(s2.model_card, time.perf_counter() - began, s2.output_dir)
        report("stage 2", results["stage2"], ("p@1", "mrr", "set_f1", "answer_f1", "format_rate"))

    # ---- reference rankings on the same held-out questions (shuffled as in training), and the pipeline
    held_out = held_out_examples(args, s1_card)
    results["reference"] = reference_rankings(held_out, s1_card)
    if args.stage2_steps > 0 and args.pipeline_queries > 0:
        results["pipeline"] = pipeline_check(args, s2.model_card, s1_dir)
    results["machine"].update(load_after=list(os.getloadavg()), wall_minutes=round((time.perf_counter() - began_all) / 60, 1))
    finish(results, args.out)
    return 0


def held_out_examples(args, card) -> list:
    """The stage-1 held-out questions, candidates shuffled as training shuffled them; written to OUT/held_out.jsonl."""
    from mmrag_agent.eval.rerank import shuffle_candidates
    from mmrag_agent.finetune.datasets import split_by_question
    from mmrag_agent.schema import read_rerank_examples

    _, held_out = split_by_question(read_rerank_examples(args.data), 0.2, seed=0)
    held_out = shuffle_candidates(held_out[: card.training["data"]["held_out_queries"]], seed=0)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "held_out.jsonl").open("w", encoding="utf-8") as f:
        for example in held_out:  # image paths are kept as they are: relative to the data file's folder
            f.write(json.dumps(example.model_dump(exclude_none=True), ensure_ascii=False) + "\n")
    return held_out


def reference_rankings(held_out: list, card) -> dict:
    """Random, BM25, MiniLM, stage 1 alone and the cross-fitted fusions, all on the stage-1 held-out questions."""
    from mmrag_agent.eval.baselines import make_reranker
    from mmrag_agent.eval.rerank import evaluate_reranker

    fusion = card.fusion or {}
    out = {"random": {**evaluate_reranker(held_out, make_reranker("random", seed=0), show_progress=False).metrics, "n": len(held_out)}}
    if fusion.get("first_stage") not in (None, "none"):
        fits = {fusion["first_stage"]: fusion, **fusion.get("other_first_stages", {})}
        for name, fitted in fits.items():
            out[name] = fitted["metrics"]["first_stage"]
            out[f"stage 1 fused with {name} (cross-fitted)"] = {**fitted["metrics"]["fused"], "weight": fitted["weight"],
                                                                "fold_weights": fitted.get("fold_weights") or fitted["fitted_on"]["fold_weights"]}
    out["stage 1 alone"] = card.metrics
    for name, record in out.items():
        print(f"  {name:<42} " + "  ".join(f"{m} {record[m]:.4f}" for m in ("p@1", "mrr", "ndcg@5") if m in record), flush=True)
    return out


def pipeline_check(args, card2, s1_dir: Path) -> dict:
    """The pipeline on held-out questions, from the stage-2 card's ``ranking_check`` (written by training): the fused
    stage 1, then stage 2 on its top K, ranked by stage 2 and by stage 1's order; serving ranks by the one it chose."""
    check = card2.ranking_check
    if not check:
        return {}
    served = check["stage2"] if check["reorder"] else check["input"]
    command = (f"mmrag eval rerank --data {args.out / 'held_out.jsonl'} --reranker pipeline --model {args.out / 'stage2'} "
               f"--stage1-model {s1_dir} --limit {check['queries']}")
    for name, record in (("pipeline, stage 2's order", check["stage2"]), ("pipeline, stage 1's order", check["input"])):
        print(f"  {name} ({check['queries']} questions): " + "  ".join(f"{m} {record[m]:.4f}" for m in ("p@1", "mrr", "ndcg@5")), flush=True)
    print(f"  serving ranks by {'stage 2' if check['reorder'] else 'the fused stage 1'} (the card's ranking_check)", flush=True)
    return {**served, "n": check["queries"], "served_order": "stage 2" if check["reorder"] else "fused stage 1",
            "check": check, "command": command, "wall_seconds": check.get("seconds")}


def finish(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_phases(results, out / "held_out.png")
    print(f"\nwrote {out / 'results.json'}, {out / 'held_out.png'}, and {out}/stage*/training_curves.png; "
          f"{results['machine']['wall_minutes']} minutes, load {results['machine']['load_before'][0]:.2f} -> "
          f"{results['machine']['load_after'][0]:.2f}", flush=True)


def summarize(card, seconds: float, output_dir: Path) -> dict:
    """The numbers of one stage (its ``ModelCard`` and TRL's logs): held-out metrics and wall time per phase."""
    training = card.training
    logs = json.loads((Path(output_dir) / "log_history.json").read_text())
    zero_std = [h["frac_reward_zero_std"] for h in logs if "frac_reward_zero_std" in h]
    phases: dict = {}
    for record in training["held_out_history"]:
        phases[record["phase"]] = {k: v for k, v in record.items() if k != "phase"}
    phases.setdefault("final", phases.get("grpo"))
    train = training["final_metrics"]["train"]
    warm = training["sft_warm_start"]
    prompts = training.get("grpo_prompts") or {}
    return {
        "held_out": {"zero_shot": phases.get("initial"), "after_sft": phases.get("sft"), "after_grpo": phases.get("final")},
        "held_out_queries": training["data"]["held_out_queries"], "train_queries": training["data"]["train_queries"],
        "train_records": training["data"]["train_records"],
        "sft": {"trainer": warm.get("trainer"), "steps": warm.get("steps"), "epochs": warm.get("epochs"), "seconds": warm.get("seconds"),
                "loss_first_last": _ends(warm.get("loss"))},
        "grpo": {"steps": training["steps"], "seconds": prompts.get("seconds"), "seconds_per_step": train["step_time"],
                 "prompts": prompts.get("records"), "selection": prompts.get("selection"),
                 "reward_last_steps": train["reward"], "format_rate_last_steps": train["format_rate"],
                 "frac_reward_zero_std_per_step": zero_std,
                 "frac_reward_zero_std_mean": sum(zero_std) / len(zero_std) if zero_std else None},
        "fusion": card.fusion, "fusion_seconds": training.get("fusion_seconds"),
        "eval_seconds": {p: (r or {}).get("eval_seconds") for p, r in phases.items()},
        "wall_seconds": round(seconds, 1),
    }


def report(title: str, summary: dict, metrics: tuple[str, ...]) -> None:
    print(f"\n{title}: {summary['train_queries']} train questions ({summary['train_records']} records) / "
          f"{summary['held_out_queries']} held-out, {summary['wall_seconds'] / 60:.1f} min in all", flush=True)
    for phase, record in summary["held_out"].items():
        values = "  ".join(f"{m} {record[m]:.4f}" for m in metrics if record and isinstance(record.get(m), (int, float)))
        print(f"  {phase:<11} {values or '-'}")
    sft, grpo = summary["sft"], summary["grpo"]
    print(f"  SFT ({sft['trainer']}): {sft['steps']} steps, {sft['epochs']} epochs, {sft['seconds']} s; GRPO: {grpo['steps']} steps "
          f"in {grpo['seconds']} s on {grpo['prompts']} prompts, frac_reward_zero_std {grpo['frac_reward_zero_std_mean']}", flush=True)


def plot_phases(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in ("stage1", "stage2") if s in results]
    fig, axes = plt.subplots(1, len(stages), figsize=(6.5 * len(stages), 4.2), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        bars = {p: r for p, r in results[stage]["held_out"].items() if r}
        if stage == "stage1":
            bars.update({name.replace(" (cross-fitted)", ""): r for name, r in results.get("reference", {}).items()
                         if name.startswith("stage 1 fused")})
        metrics = ["p@1", "mrr"] + (["set_f1", "answer_f1", "format_rate"] if stage == "stage2" else [])
        width = 0.8 / len(metrics)
        for i, metric in enumerate(metrics):
            ax.bar([j + i * width for j in range(len(bars))], [r.get(metric, 0) or 0 for r in bars.values()], width, label=metric)
        ax.set_xticks([j + width * (len(metrics) - 1) / 2 for j in range(len(bars))],
                      [n.replace("stage 1 fused with ", "fused\n") for n in bars], fontsize=8)
        if stage == "stage1":  # the retrievers alone on the same questions: their P@1 as lines
            styles = iter([":", "--", "-."])
            for name in ("random", "bm25", "embedding"):
                if name in results.get("reference", {}):
                    ax.axhline(results["reference"][name]["p@1"], color="grey", linestyle=next(styles), linewidth=1, label=f"P@1 {name}")
        ax.set_ylim(0, 1)
        ax.set_title(f"{stage}: held-out ({results[stage]['held_out_queries']} questions)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _ends(values):
    return [values[0], values[-1]] if values else None


if __name__ == "__main__":
    sys.exit(main())
