"""Trainer callbacks of the GRPO runs (periodic held-out evaluation, one progress bar), the held-out evaluation's
progress bar (:func:`evaluate_in_chunks`) and the curves PNG.

TRL's ``GRPOTrainer`` logs, every ``logging_steps``: ``reward`` (the weighted total), ``reward_std``,
``frac_reward_zero_std`` (the fraction of prompt groups whose completions all got the same reward, i.e.
that teach nothing: the method wants it visible), and ``rewards/<function>/mean`` per reward function. The
mean of the stage's format reward is the **format rate**. These callbacks read those logs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from transformers import TrainerCallback

__all__ = ["HeldOutEvalCallback", "ProgressBarCallback", "append_held_out", "evaluate_in_chunks", "format_rate_key",
           "load_held_out_history", "plot_curves", "train_summary"]


def format_rate_key(logs: dict[str, Any]) -> str | None:
    """The log key of the format reward's mean (``rewards/stage1_format_reward/mean``), if logged."""
    return next((k for k in logs if k.startswith("rewards/") and "format" in k and k.endswith("/mean")), None)


def load_held_out_history(out: Path, resume: str | None) -> list[dict]:
    """The held-out records of a resumed run (``out/held_out.jsonl``); a fresh run starts an empty file."""
    path = out / "held_out.jsonl"
    if resume and path.is_file():
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    path.unlink(missing_ok=True)
    return []


def append_held_out(history: list[dict], path: Path | None, step: int, phase: str, metrics: dict) -> dict:
    """Append ``{"step", "phase", **metrics}`` to ``history`` and, as one JSON line, to ``path``; returns the record."""
    record = {"step": step, "phase": phase, **metrics}
    history.append(record)
    if path is not None:
        with Path(path).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    return record


def train_summary(logs: list[dict], last: int = 10) -> dict:
    """Means over the last ``last`` logged GRPO steps of reward, format rate, frac_reward_zero_std and step time;
    the total runtime."""
    steps = [h for h in logs if "reward" in h][-last:]
    key = next((format_rate_key(h) for h in steps if format_rate_key(h)), None)

    def mean(name):
        values = [h[name] for h in steps if name and isinstance(h.get(name), (int, float))]
        return sum(values) / len(values) if values else None

    end = next((h for h in reversed(logs) if "train_runtime" in h), {})
    return {"reward": mean("reward"), "format_rate": mean(key), "frac_reward_zero_std": mean("frac_reward_zero_std"),
            "step_time": mean("step_time"), "over_last_steps": len(steps), "train_runtime": end.get("train_runtime")}


def evaluate_in_chunks(evaluate: Callable[[Sequence], dict], examples: Sequence, chunk_size: int, desc: str = "evaluation",
                       progress: bool = True, counts: dict[str, Callable[[Sequence], int]] | None = None) -> dict:
    """Evaluate ``examples`` a chunk at a time under a progress bar, and combine the chunks' means exactly.

    ``evaluate(chunk)`` returns per-unit means and ``"n"`` (the units it averaged over). Each metric of the
    whole is the mean of the chunks' values weighted by their ``n``, or by ``counts[metric](chunk)`` for a
    metric averaged over fewer units (NaN values and zero weights are left out), so the result equals one
    call over all examples.

    Args:
        evaluate: The evaluation of a list of examples.
        examples: All examples.
        chunk_size: Examples per call (e.g. one generation batch).
        desc: The bar's label.
        progress: Show the bar (it moves from the first chunk, with an ETA, and is removed when done).
        counts: Per metric, the number of units of a chunk it averages over (default: the chunk's ``n``).

    Returns:
        The combined metrics, ``"n"`` the total.

    Example:
        >>> evaluate_in_chunks(lambda chunk: {"p@1": sum(chunk) / len(chunk), "n": len(chunk)}, [1, 0, 1], 2)
        {'p@1': 0.6666666666666666, 'n': 3}
    """
    from tqdm.auto import tqdm

    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    n = 0
    with tqdm(total=len(examples), desc=desc, unit="question", disable=not progress, leave=False, dynamic_ncols=True) as bar:
        for start in range(0, len(examples), max(chunk_size, 1)):
            chunk = examples[start:start + max(chunk_size, 1)]
            metrics = evaluate(chunk)
            for key, value in metrics.items():
                if key == "n":
                    continue
                weight = (counts or {}).get(key, lambda _: metrics.get("n", len(chunk)))(chunk)
                totals.setdefault(key, 0.0)
                weights.setdefault(key, 0.0)
                if isinstance(value, (int, float)) and not math.isnan(value) and weight:
                    totals[key] += weight * value
                    weights[key] += weight
            n += int(metrics.get("n", 0))
            bar.update(len(chunk))
    return {**{key: totals[key] / weights[key] if weights[key] else float("nan") for key in totals}, "n": n}


class HeldOutEvalCallback(TrainerCallback):
    """Evaluate on held-out questions every ``every`` optimizer steps and once more after the last step.

    Args:
        evaluate: ``evaluate(model) -> dict`` of metrics (``p@1`` ...) for the model being trained.
        every: Steps between evaluations (0: never).
        history: A list to append ``{"step", "phase", **metrics}`` records to (shared with the caller,
            who may have recorded the ``initial`` / ``sft`` evaluations before GRPO began).
        path: A JSONL file the records are appended to as they come (``held_out.jsonl``).
    """

    def __init__(self, evaluate: Callable[[Any], dict], every: int, history: list[dict], path: str | Path | None = None) -> None:
        self.evaluate = evaluate
        self.every = every
        self.history = history
        self.path = Path(path) if path is not None else None

    def _run(self, state, model, phase: str) -> None:
        if not state.is_world_process_zero:
            return
        metrics = self.evaluate(model)
        append_held_out(self.history, self.path, state.global_step, phase, metrics)
        state.log_history.append({"step": state.global_step, **{f"held_out/{k}": v for k, v in metrics.items()}})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every > 0 and state.global_step % self.every == 0 and state.global_step < state.max_steps:
            self._run(state, model, "grpo")

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.every <= 0:
            return
        last = self.history[-1] if self.history else None
        if last is not None and last["step"] == state.global_step and last["phase"] == "grpo":
            last["phase"] = "final"
        else:
            self._run(state, model, "final")


class ProgressBarCallback(TrainerCallback):
    """One tqdm bar over the GRPO steps, its postfix the latest reward, format rate, zero-std fraction and P@1.

    Replaces transformers' default progress / printer callbacks (which print every log dict).
    """

    def __init__(self, history: list[dict] | None = None, desc: str = "GRPO") -> None:
        self.bar = None
        self.history = history if history is not None else []
        self.desc = desc
        self.postfix: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc, unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            if self.history:
                self.postfix["held-out P@1"] = f"{self.history[-1].get('p@1', float('nan')):.3f}"
            self.bar.set_postfix(self.postfix, refresh=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        key = format_rate_key(logs)
        for name, value in (("loss", logs.get("loss") if "reward" not in logs else None), ("reward", logs.get("reward")),
                            ("format", logs.get(key) if key else None), ("zero-std", logs.get("frac_reward_zero_std"))):
            if isinstance(value, (int, float)):
                self.postfix[name] = f"{value:.3f}"

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def plot_curves(log_history: list[dict], held_out: list[dict], path: str | Path, title: str = "") -> Path:
    """Write a PNG of reward, format rate, ``frac_reward_zero_std`` and held-out P@1 / MRR over steps.

    Args:
        log_history: ``trainer.state.log_history`` (train logs with ``step``).
        held_out: Held-out records ``{"step", "phase", "p@1", "mrr", ...}`` (``answer_f1`` too for stage 2).
        path: The PNG to write.
        title: Figure title.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    train = [h for h in log_history if "reward" in h and "step" in h]
    key = next((format_rate_key(h) for h in train if format_rate_key(h)), None)

    def series(rows: list[dict], name: str | None) -> tuple[list, list]:
        points = [(r["step"], r[name]) for r in rows if name and isinstance(r.get(name), (int, float)) and not math.isnan(r[name])]
        return [p[0] for p in points], [p[1] for p in points]

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = [(axes[0][0], "reward", "mean reward (weighted total)"), (axes[0][1], key, "format rate"),
              (axes[1][0], "frac_reward_zero_std", "frac_reward_zero_std (groups that teach nothing)")]
    for ax, name, label in panels:
        xs, ys = series(train, name)
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        if name != "reward":
            ax.set_ylim(-0.05, 1.05)
    ax = axes[1][1]
    for metric in ("p@1", "mrr", "answer_f1"):
        xs, ys = series(held_out, metric)
        if xs:
            ax.plot(xs, ys, marker="o", label=metric)
    for record in held_out:
        if record.get("phase") in ("initial", "sft") and isinstance(record.get("p@1"), (int, float)):
            offset = (4, 4) if record["phase"] == "initial" else (4, -10)
            ax.annotate(record["phase"], (record["step"], record["p@1"]), fontsize=7, textcoords="offset points", xytext=offset)
    ax.set_title("held-out metrics", fontsize=10)
    ax.set_xlabel("GRPO step")
    ax.set_ylim(-0.05, 1.05)
    if ax.lines:
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
