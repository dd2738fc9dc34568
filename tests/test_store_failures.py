"""Every store failure, through the CLI: one line with the fix, exit code 2, no traceback, nothing lost.

Each test makes its own store by indexing a small folder with the real offline text model, damages it the way a
user (or an attacker) would, and runs ``mmrag`` on it: in-process with typer's runner, or as a subprocess where
the real standard error, a second process, a full disk or a read-only mount is the point.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmrag_agent.cli import app
from mmrag_agent.indexing import FolderIndexer, close_stores, open_store

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def make_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "fox.txt").write_text("The red fox hunts rodents at dawn and dusk.")
    (root / "revenue.md").write_text("# Revenue\n\nRevenue grew by ten percent in the third quarter.")
    (root / "coffee.html").write_text("<html><body><p>Finer grinds extract coffee faster.</p></body></html>")
    return root


@pytest.fixture
def indexed(tmp_path, minilm):
    """(folder, store) of a fresh index of three files, written in this test's own folder."""
    folder = make_folder(tmp_path / "docs")
    FolderIndexer(folder, text_model=minilm, image_model="text", ocr="off", show_progress=False).run()
    close_stores()
    return folder, folder / ".mmrag"


def cli(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    close_stores()
    return result


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if "%|" not in line]  # progress bars may come first
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def run_cli(*args: str, timeout: int = 300, wrap: list[str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mmrag_agent.cli", *map(str, args)]
    return subprocess.run((wrap or []) + command, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=timeout)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def point_ids(store: Path) -> set[str]:
    index_store = open_store(store)
    ids = {p.id for c in index_store.collections for p in index_store.iter_points(c)}
    close_stores()
    return ids


# ------------------------------------------------------------------------------------ metadata
@pytest.mark.parametrize("content,reason", [
    (b"", "(empty file)"),
    (b'{"text_model": "x", "image', "not valid JSON"),
    (b'{"text_model": 3}', "field 'text_model' is not a string"),
    (b'{"text_model": "a", "image_model": "b", "text_dim": 384, "image_dim": 384, "format_version": 1}', "field 'root' is missing"),
    (b'{"format_version": ' + b"9" * 5000 + b"}", "integer with 5000 digits"),
    (b"[" * 100_000, "not valid JSON"),
])
def test_damaged_metadata_file_is_one_line_for_search_and_index(indexed, content, reason):
    folder, store = indexed
    (store / "mmrag.index.json").write_bytes(content)
    for args in (["search", "fox", "--store", store], ["index", folder]):
        assert_one_line_error(cli(*args), f"the index metadata {store / 'mmrag.index.json'} is damaged", reason,
                              f"mmrag index {folder} --rebuild")


def test_rebuild_recovers_from_a_damaged_metadata_file(indexed):
    folder, store = indexed
    (store / "mmrag.index.json").write_bytes(b"")
    result = cli("index", folder, "--rebuild", "--image-model", "text", "--ocr", "off")
    assert result.exit_code == 0 and "3 indexed," in result.output, result.output
    hits = cli("search", "a fox hunting", "--store", store, "-k", "1")
    assert hits.exit_code == 0 and "fox.txt" in hits.output


# -------------------------------------------------------------------------------- collections
def _segment(store: Path) -> Path:
    return next((store / "mmrag_text" / "segments").iterdir())


DAMAGE = {
    "payload page cut to 0 bytes": lambda s: os.truncate(next(_segment(s).glob("payload_storage/page_*.dat")), 0),
    "segment description overwritten": lambda s: (_segment(s) / "segment.json").write_bytes(os.urandom(64)),
    "version file overwritten": lambda s: (_segment(s) / "version.info").write_bytes(b"\xff\xfe garbage"),
    "write-ahead log header overwritten": lambda s: (s / "mmrag_text" / "wal" / "first-index").write_bytes(b"\x00junk"),
    "deleted-flags file cut (engine panics)": lambda s: (_segment(s) / "vector_storage" / "deleted" / "status.dat").write_bytes(b""),
    "engine config emptied": lambda s: (s / "mmrag_text" / "edge_config.json").write_bytes(b""),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_collection_files_are_one_line_with_the_rebuild_command(indexed, damage):
    folder, store = indexed
    DAMAGE[damage](store)
    for args in (["search", "fox", "--store", store], ["index", folder]):
        assert_one_line_error(cli(*args), f"the index store {store} is damaged (", f"run `mmrag index {folder} --rebuild`")


def test_engine_panic_prints_no_backtrace_and_rebuild_works_on_the_damaged_store(indexed):
    folder, store = indexed
    DAMAGE["deleted-flags file cut (engine panics)"](store)
    proc = run_cli("search", "fox", "--store", store)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "is damaged" in proc.stderr and "panicked" not in proc.stderr
    result = cli("index", folder, "--rebuild", "--image-model", "text", "--ocr", "off")
    assert result.exit_code == 0 and "3 indexed," in result.output, result.output
    assert cli("search", "fox", "--store", store).exit_code == 0


@pytest.mark.parametrize("how", ["collection folder emptied", "segments and log deleted", "collection files all 0 bytes"])
def test_emptied_collection_is_refused_instead_of_returning_no_hits(indexed, how):
    folder, store = indexed
    shard = store / "mmrag_text"
    if how == "collection folder emptied":
        shutil.rmtree(shard)
        shard.mkdir()
        expected = "is missing or empty but 3 points were indexed"
    elif how == "segments and log deleted":  # the engine opens this as a valid, empty collection
        for sub in ("segments", "wal"):
            shutil.rmtree(shard / sub)
            (shard / sub).mkdir()
        expected = "the collection mmrag_text holds no points but 3 were indexed"
    else:
        for path in shard.rglob("*"):
            if path.is_file():
                os.truncate(path, 0)
        expected = "is damaged ("
    assert_one_line_error(cli("search", "fox", "--store", store), expected, "--rebuild")


# ------------------------------------------------------------------------------ trust and roots
def _plant_legacy_store(store: Path, marker: Path) -> None:
    """A store as the previous version wrote it (qdrant-client local mode), with a pickle that runs code when loaded."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(store / "qdrant"))
    client.create_collection("mmrag_text", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    client.upsert("mmrag_text", points=[models.PointStruct(id=1, vector=[1.0, 0, 0, 0], payload={"rel_path": "fox.txt"})])
    client.close()
    database = next((store / "qdrant").rglob("storage.sqlite"))
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE points SET point = ?", (pickle.dumps(_MakesMarker(str(marker))),))


class _MakesMarker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_store_of_the_previous_version_is_refused_without_loading_it_and_rebuild_replaces_it(tmp_path, minilm):
    folder = make_folder(tmp_path / "docs")
    store, marker = folder / ".mmrag", tmp_path / "code-ran"
    _plant_legacy_store(store, marker)
    proof = subprocess.run([sys.executable, "-c", f"from qdrant_client import QdrantClient; QdrantClient(path={str(store / 'qdrant')!r})"],
                           capture_output=True, text=True)
    assert marker.is_dir(), proof.stderr  # loading that store the old way runs the planted code
    marker.rmdir()

    for args in (["search", "fox", "--store", store], ["index", folder], ["export", tmp_path / "x.jsonl", "--store", store]):
        assert_one_line_error(cli(*args), "written by an earlier mmrag-agent", f"mmrag index {folder} --rebuild")
    assert not marker.exists()
    result = cli("index", folder, "--rebuild", "--image-model", "text", "--ocr", "off")
    assert result.exit_code == 0 and "3 indexed," in result.output, result.output
    assert not (store / "qdrant").exists() and not marker.exists()
    assert cli("search", "fox", "--store", store).exit_code == 0


def test_store_that_came_with_a_copy_of_the_folder_is_not_trusted(indexed, tmp_path):
    folder, store = indexed
    copy = tmp_path / "unpacked" / "docs"
    shutil.copytree(folder, copy)
    (copy / "fox.txt").write_text("An attacker's copy.")  # the copy's store claims content the copy does not have
    for args in (["search", "fox", "--store", copy / ".mmrag"], ["index", copy]):
        assert_one_line_error(cli(*args), f"was written at {store}", "moved or copied", f"mmrag index {copy} --rebuild")
    result = cli("index", copy, "--rebuild", "--image-model", "text", "--ocr", "off")
    assert result.exit_code == 0 and "3 indexed," in result.output


def test_export_and_import_moves_an_index_with_its_folder_without_re_embedding(indexed, tmp_path):
    folder, store = indexed
    moved = tmp_path / "elsewhere" / "docs"
    shutil.copytree(folder, moved)
    export = tmp_path / "docs.jsonl.gz"
    result = cli("export", export, "--store", moved / ".mmrag")
    assert result.exit_code == 0 and "exported 3 text and 0 image points" in result.output, result.output
    result = cli("import", export, moved, "--rebuild")
    assert result.exit_code == 0 and "imported 3 text and 0 image points" in result.output, result.output
    again = cli("index", moved, "--image-model", "text", "--ocr", "off")
    assert " 3 unchanged" in again.output and "0 indexed," in again.output, again.output  # nothing re-embedded
    index_store = open_store(moved / ".mmrag")
    payloads = [p.payload for p in index_store.iter_points(index_store.text_collection)]
    assert {p["file_path"] for p in payloads} == {str(moved / n) for n in ("fox.txt", "revenue.md", "coffee.html")}
    assert point_ids(store) == {p.id for p in index_store.iter_points(index_store.text_collection)}  # same ids


def test_indexing_another_folder_into_a_store_is_refused_and_its_points_stay(indexed, tmp_path):
    folder, store = indexed
    other = make_folder(tmp_path / "other")
    before = point_ids(store)
    assert_one_line_error(cli("index", other, "--store", store), f"belongs to the folder {folder}, not {other}", "--rebuild")
    assert point_ids(store) == before


@pytest.mark.parametrize("lines,expected", [
    (lambda ls: ls[:-1], "without its end line (the file was cut short)"),
    (lambda ls: ls[:1] + [ls[1].replace('"c": "text"', '"c": "audio"')] + ls[2:], "line 2: field c must be 'text' or 'images'"),
    (lambda ls: ls[:2] + [ls[2].replace('"rel_path": "', '"rel_path": "../../')] + ls[3:], "line 3: payload rel_path"),
    (lambda ls: ls[:1] + ["{not json"] + ls[2:], "line 2: not valid JSON"),
    (lambda ls: ["{}"] + ls[1:], "line 1: not an mmrag index export"),
])
def test_bad_export_file_is_refused_by_line_and_the_partial_import_removed(indexed, tmp_path, lines, expected):
    folder, store = indexed
    export = tmp_path / "docs.jsonl"
    assert cli("export", export, "--store", store).exit_code == 0
    export.write_text("\n".join(lines(export.read_text().splitlines())) + "\n")
    target = tmp_path / "target"
    assert_one_line_error(cli("import", export, folder, "--store", target), expected)
    if target.exists():
        assert not any(target.iterdir()), list(target.iterdir())  # nothing half-imported is left


# ------------------------------------------------------------------------- locks, disks, servers
def test_second_writer_and_readers_get_one_line_while_a_store_is_in_use(indexed):
    folder, store = indexed
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mmrag_agent.indexing import open_store; "
                               f"open_store({str(store)!r}, create=True); print('ready', flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "ready"
        for args in (["index", folder], ["search", "fox", "--store", store]):
            assert_one_line_error(cli(*args), f"the index store {store} is in use by another process")
    finally:
        holder.kill()
        holder.wait()
    assert cli("search", "fox", "--store", store).exit_code == 0


def test_unreachable_server_fails_fast_in_one_line():
    started = time.monotonic()
    for args in (["index", str(REPO / "mmrag_agent" / "data" / "demo_docs"), "--qdrant-url", "http://127.0.0.1:9"],
                 ["search", "fox", "--qdrant-url", "http://127.0.0.1:9"]):
        assert_one_line_error(cli(*args), "cannot reach the Qdrant server at http://127.0.0.1:9", "--qdrant-url")
    assert time.monotonic() - started < 20


def _unshare(script: str) -> list[str] | None:
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        return None
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script + ' && exec "$@"', "sh"]


def test_read_only_store_is_searched_and_nothing_is_created_or_changed(indexed):
    folder, store = indexed
    wrap = _unshare(f"mount --bind {store} {store} && mount -o remount,ro,bind {store}")
    if wrap is None:
        pytest.skip("needs a private mount namespace (unshare -m, as root) to make the store read-only")
    before = snapshot(store)
    proc = run_cli("search", "a fox hunting", "--store", store, "-k", "1", wrap=wrap)
    assert proc.returncode == 0, proc.stderr
    assert "fox.txt" in proc.stdout and "read-only" in proc.stderr
    assert snapshot(store) == before
    proc = run_cli("index", folder, "--image-model", "text", "--ocr", "off", wrap=wrap)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: the index store {store} is not writable; make it writable, or index " \
                                                           "into another --store"


@pytest.mark.slow
def test_full_disk_is_one_line_not_a_crash_and_indexing_resumes_after_space_is_freed(tmp_path, minilm):
    folder = make_folder(tmp_path / "docs")
    disk = tmp_path / "disk"
    disk.mkdir()
    cli_command = f"{sys.executable} -m mmrag_agent.cli index {folder} --store {disk}/store --image-model text --ocr off"
    script = (f"mount -t tmpfs -o size=256m tmpfs {disk} && {cli_command} > {tmp_path}/1.out 2>&1; echo $? > {tmp_path}/1.rc; "
              f"head -c 200000000 /dev/zero > {disk}/filler && echo 'Otters hold hands while they sleep.' > {folder}/otter.txt && "
              f"{cli_command} > {tmp_path}/2.out 2>&1; echo $? > {tmp_path}/2.rc; rm {disk}/filler && {cli_command} > {tmp_path}/3.out 2>&1; "
              f"echo $? > {tmp_path}/3.rc; true")
    wrap = _unshare("true")
    if wrap is None:
        pytest.skip("needs a private mount namespace (unshare -m, as root) for a small disk")
    subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=ENV, cwd=REPO, timeout=600, check=True)
    rc = [int((tmp_path / f"{i}.rc").read_text()) for i in (1, 2, 3)]
    out = [(tmp_path / f"{i}.out").read_text() for i in (1, 2, 3)]
    assert rc[0] == 0 and "3 indexed," in out[0], out[0]
    assert rc[1] == 2, out[1]  # not -7 (SIGBUS): the engine's mmap writes are never started on a full disk
    error = out[1].strip().splitlines()
    assert error[-1].startswith("error: not enough free space on the device holding") and "run the command again" in error[-1]
    assert "Traceback" not in out[1]
    assert rc[2] == 0 and "1 indexed," in out[2] and " 3 unchanged" in out[2], out[2]
