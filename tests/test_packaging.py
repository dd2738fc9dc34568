"""The built wheel carries what `mmrag demo` needs: it runs from an empty folder, outside the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip().splitlines()[-1:]}")
    return next(out.glob("mmrag_agent-*.whl"))


def test_the_wheel_ships_the_demo_folder_and_the_page_style(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("mmrag_agent/data/demo_docs/company/quarterly-report.md", "mmrag_agent/data/demo_docs/space/astronaut.jpg",
                   "mmrag_agent/data/demo_docs/space/astronaut.jpg.txt", "mmrag_agent/explain/page.css"):
        assert needed in names, needed
    assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) or "tiny_models" in n for n in names)


def test_demo_runs_from_the_installed_wheel_in_an_empty_folder(wheel, tmp_path, minilm):
    target, empty = tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}  # the wheel's package, not the source tree's
    proc = subprocess.run([sys.executable, "-c", "import mmrag_agent, sys; print(mmrag_agent.__file__); from mmrag_agent.cli import main; "
                           "sys.argv = ['mmrag', 'demo', '--questions', '0', '--store', 'store']; main()"],
                          capture_output=True, text=True, env=env, cwd=empty, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[0].startswith(str(target))
    assert "13 indexed, 0 unchanged" in proc.stdout and "space/astronaut.jpg" in proc.stdout
    assert sorted(p.name for p in empty.iterdir()) == ["store"]  # it wrote only where it was told
