"""What a user sees: one-line errors before anything loads, data printed as text, threads chosen from the load."""

from __future__ import annotations

import os
import time

import pytest
from typer.testing import CliRunner

from mmrag_agent.cli import app
from mmrag_agent.explain import CandidateEvidence, ExplainedAnswer
from mmrag_agent.runtime import choose_threads, configure_threads

runner = CliRunner()
HOSTILE = "[/INST] [/quote] [bold red]not bold[/bold red] [/b] \x1b[31mred\x1b[0m [link=file:///etc/passwd]x[/link]"


def _one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_options_fail_in_one_line_before_any_model_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "docs").mkdir()
    started = time.perf_counter()
    result = runner.invoke(app, ["index", str(tmp_path / "docs"), "--ocr", "maybe"])
    _one_line_error(result, "'maybe' is not one of 'auto', 'on', 'off'", "index --help")
    _one_line_error(runner.invoke(app, ["index", str(tmp_path / "docs"), "--text-model", "no-such-org/no-such-model"]),
                    "'no-such-org/no-such-model' is not in the local cache", "minilm")
    _one_line_error(runner.invoke(app, ["ask", "a question?", "--stage1-model", "./no-such-run"]), "no model at ./no-such-run")
    _one_line_error(runner.invoke(app, ["ask", "   "]), "the question is empty")
    _one_line_error(runner.invoke(app, ["ask", "q?", "--html", str(tmp_path / "missing" / "page.html")]), "does not exist")
    _one_line_error(runner.invoke(app, ["ask", "q?", "--html", str(tmp_path)]), "is a folder")
    assert time.perf_counter() - started < 60  # no model was loaded for any of them (each would take seconds)
    assert not (tmp_path / "docs" / ".mmrag").exists()  # nothing was created by the failed commands


def test_documents_and_model_output_are_printed_as_text_never_as_markup(minilm, tmp_path, monkeypatch):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "tricky.txt").write_text(f"Notes {HOSTILE} end.")
    assert runner.invoke(app, ["index", str(folder), "--image-model", "text", "--ocr", "off"]).exit_code == 0
    from mmrag_agent.indexing import close_local_clients

    close_local_clients()
    result = runner.invoke(app, ["search", f"notes {HOSTILE}", "--store", str(folder / ".mmrag"), "-k", "1"])
    assert result.exit_code == 0, result.output
    assert "[/INST] [/quote] [bold red]not bold[/bold red]" in result.output  # literally, no MarkupError
    assert "\x1b" not in result.output and "\\x1b[31mred" in result.output  # control characters shown escaped


def test_an_explained_answer_with_hostile_text_and_nan_prints_plainly(capsys):
    from mmrag_agent.cli.answers import print_explained

    candidate = CandidateEvidence(node_id="n1", modality="text", source=f"docs/{HOSTILE}.txt", text=HOSTILE, retrieval_score=0.5,
                                  stage1_probability=float("nan"), kept_by_stage1=True, stage2_position=1, stage2_rank=1, cited=True)
    explained = ExplainedAnswer(question=f"Why {HOSTILE}?", answer=f"Because {HOSTILE} [1]", reasoning=HOSTILE, candidates=[candidate],
                                warnings=[HOSTILE], timings={"stage2": 1.0})
    print_explained(explained)
    out = capsys.readouterr().out
    assert out.count("[/INST] [/quote]") >= 4 and "\x1b" not in out
    assert "P(relevant) NaN" in out
    empty = ExplainedAnswer(question="q?", answer="No answer: the model did not write a usable one.", reasoning="", answered=False)
    print_explained(empty)
    assert "the model gave no usable answer" in capsys.readouterr().out


def test_threads_follow_the_load_and_the_option(monkeypatch):
    assert choose_threads(cores=2, load=0.0) == 2 and choose_threads(cores=2, load=1.1) == 1 and choose_threads(cores=2, load=5.0) == 1
    assert choose_threads(cores=16, load=3.4) == 13
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    import torch

    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1 and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
        result = runner.invoke(app, ["--threads", "2", "eval", "rerank", "--help"])
        assert result.exit_code == 0 and torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
        with pytest.raises(ValueError):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)


def test_eval_images_outside_the_data_folder_need_the_flag(tiny_qwen2_vl_dir, tmp_path):
    import json

    from files import write_image

    write_image(tmp_path / "outside.png", size=(32, 32))
    (tmp_path / "data").mkdir()
    row = {"qid": "q1", "query": "Which one?", "positives": ["a"],
           "candidates": [{"id": "a", "modality": "image", "text": "a square", "image_path": "../outside.png"},
                          {"id": "b", "modality": "text", "text": "a passage"}]}
    data = tmp_path / "data" / "x.jsonl"
    data.write_text(json.dumps(row))
    args = ["eval", "rerank", "--data", str(data), "--reranker", "stage1", "--model", str(tiny_qwen2_vl_dir)]
    refused = runner.invoke(app, args)
    _one_line_error(refused, "x.jsonl:1", "qid 'q1'", "leads outside the data file's folder")
    allowed = runner.invoke(app, args + ["--allow-outside-images"])
    assert allowed.exit_code == 0, allowed.output


def test_the_training_summary_fits_80_columns_with_full_headers(monkeypatch):
    from rich.console import Console

    from mmrag_agent.cli import train as train_cli
    from mmrag_agent.model_card import ModelCard

    history = [{"step": s, "phase": phase, "p@1": 0.25, "mrr": 0.5, "ndcg@5": 0.5, "recall@5": 1.0, "set_f1": 0.2,
                "answer_f1": 0.1, "format_rate": 0.95} for s, phase in ((0, "initial"), (0, "sft"), (120, "final"))]
    training = {"data": {"held_out_queries": 60}, "held_out_history": history, "steps": 120,
                "final_metrics": {"train": {"over_last_steps": 5, "reward": 1.0, "format_rate": 1.0, "frac_reward_zero_std": 0.0,
                                            "step_time": 9.5}},
                "sft_warm_start": {"ran": True, "steps": 30, "mode": "on"}}
    console = Console(width=80, record=True, force_terminal=False)
    monkeypatch.setattr(train_cli, "console", console)
    train_cli.print_summary(ModelCard(stage=2, assistant_prefix="<think>", training=training), "runs/stage2")
    table = console.export_text().split("steps 120")[0]
    assert all(len(line) <= 80 for line in table.splitlines())
    for header in ("P@1", "MRR", "NDCG@5", "R@5", "src F1", "ans F1", "format", "initial", "final", "0.950"):
        assert header in table, table
    assert "…" not in table


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="busy_cores reads Linux's /proc/stat")
def test_a_job_holding_a_core_is_seen_now_not_a_minute_later():
    import multiprocessing

    from mmrag_agent.runtime import busy_cores

    spinner = multiprocessing.get_context("fork").Process(target=_spin, args=(5.0,))
    spinner.start()
    try:
        time.sleep(0.5)
        busy = busy_cores(window=0.5)
    finally:
        spinner.terminate()
        spinner.join()
    assert busy is not None and busy >= 0.8, busy  # the spinning process's core, whatever else runs
    if (os.cpu_count() or 1) == 2:
        assert choose_threads(load=busy) == 1
