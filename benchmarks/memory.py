"""Peak memory while indexing: a 200 MB text file and a folder of 200 phone-size photos, each under 2 GB.

Generates (and keeps, in ``--workdir``) two folders:

* ``text``: one ``.txt`` file of ``--text-mb`` MB of varied English-like prose in paragraphs;
* ``photos``: ``--photos`` JPEGs of 4032x3024 (a 12-megapixel phone camera), each a gradient sky with
  shapes and sensor noise, about 3 MB on disk like a real photo.

Each case is indexed into a fresh store in a separate process, whose peak resident set size is reported:
the kernel's high-water mark of the process's memory (``VmHWM``, read by the process as it ends; ``ru_maxrss``
would include the parent's size at the fork), or for a run stopped at a cap the largest RSS sampled every
50 ms. Cases: the text file; the photos as image-as-text (the default without CLIP
weights; OCR off); the photos with the CLIP ViT-B/32 architecture (random weights; pixels embedded); and the
first ``--ocr-photos`` photos as image-as-text with OCR (RapidOCR takes ~10 s a photo on this CPU, and its
memory does not grow with the number of photos). The text embedding is llama-index's ``MockEmbedding`` of 384
dimensions (MiniLM's size): the pipeline's memory is measured, not the model's; ``--text-model minilm`` uses
the real model (hours for 200 MB on a CPU).

The stores are the embedded Qdrant Edge store, in the workdir unless ``--store-dir`` says otherwise; the RSS
includes the engine's own memory (it runs in the indexing process).

With ``--baseline-src DIR`` (a checkout of the code being replaced, e.g. ``git worktree add /tmp/base
2aa9fd4``), every case also runs on that code, stopped when its RSS passes ``--baseline-cap-gb`` or its time
``--baseline-cap-s``; a stopped run is reported as "> cap".

    OMP_NUM_THREADS=1 python benchmarks/memory.py [--text-mb 200] [--photos 200] [--ocr-photos 20]
                                                  [--baseline-src /tmp/base] [--workdir /tmp/mmrag-memory]
                                                  [--store-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil

import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

TARGET_GB = 2.0
WORDS = ("harbour lantern glacier meadow archive compass violin protein canyon orbit theorem market library engine "
         "river mountain harvest signal pigment circuit keeper tide gull pier storm ledger quarry beacon ferry dune "
         "the a of and to in is was for on with as by at from that this which it its were be are an").split()

CHILD = r"""
import json, sys, time
settings = json.loads(sys.argv[1])
from llama_index.core.embeddings import MockEmbedding
import mmrag_agent
from mmrag_agent.indexing import FolderIndexer
text_model = MockEmbedding(embed_dim=384) if settings["text_model"] == "mock" else settings["text_model"]
started = time.perf_counter()
report = FolderIndexer(settings["folder"], store=settings["store"], text_model=text_model, image_model=settings["image_model"],
                       ocr=settings["ocr"], show_progress=False).run()
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": time.perf_counter() - started, "indexed": len(report.indexed), "failed": len(report.failed),
                  "text_points": report.text_points, "image_points": report.image_points, "peak_bytes": peak,
                  "code": mmrag_agent.__file__, "first_failure": report.failed[0].reason if report.failed else None}))
"""


def make_text(path: Path, megabytes: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    target = megabytes * 1_000_000
    with open(path, "w", encoding="utf-8") as fh:
        written, number = 0, 0
        while written < target:
            sentences = []
            for _ in range(rng.randrange(3, 9)):
                words = [rng.choice(WORDS) for _ in range(rng.randrange(6, 22))]
                sentences.append(" ".join(words).capitalize() + rng.choice(".!?."))
            paragraph = f"{number}. " + " ".join(sentences) + "\n\n"
            fh.write(paragraph)
            written += len(paragraph)
            number += 1


def make_photo(args: tuple[Path, int]) -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    path, seed = args
    width, height = 4032, 3024
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    sky = rng.uniform(0, 255, 3) * (1 - y) + rng.uniform(0, 255, 3) * y + rng.uniform(-60, 60, 3) * x
    image = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x0, y0, r = rng.integers(0, width), rng.integers(0, height), rng.integers(40, 600)
        draw.ellipse((x0, y0, x0 + r, y0 + r * rng.uniform(0.3, 1.5)), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, (height, width, 1)).astype(np.int16)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)


def prepare(workdir: Path, text_mb: int, photos: int, ocr_photos: int) -> dict[str, Path]:
    text = workdir / f"text-{text_mb}mb"
    if not (text / "corpus.txt").is_file() or (text / "corpus.txt").stat().st_size < text_mb * 1_000_000:
        text.mkdir(parents=True, exist_ok=True)
        print(f"writing {text_mb} MB of text ...", flush=True)
        make_text(text / "corpus.txt", text_mb)
    folder = workdir / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    missing = [(folder / f"IMG_{i:04d}.jpg", i) for i in range(photos) if not (folder / f"IMG_{i:04d}.jpg").is_file()]
    if missing:
        print(f"writing {len(missing)} photos of 4032x3024 ...", flush=True)
        with Pool(min(2, os.cpu_count() or 1)) as pool:
            pool.map(make_photo, missing)
    selected = workdir / f"photos-{photos}"
    few = workdir / f"photos-{ocr_photos}"
    for target, count in ((selected, photos), (few, ocr_photos)):
        if not target.is_dir() or len(list(target.iterdir())) != count:
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            for i in range(count):
                os.link(folder / f"IMG_{i:04d}.jpg", target / f"IMG_{i:04d}.jpg")
    return {"text": text, "photos": selected, "ocr_photos": few}


def folder_size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def measure(settings: dict, src: Path | None, cap_bytes: int | None, cap_seconds: float | None) -> dict:
    """Run one indexing in a child process; its peak RSS, stopping it at the caps."""
    import psutil

    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), TOKENIZERS_PARALLELISM="false")
    if src is not None:
        env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        # run from a neutral folder: `python -c` puts the working directory first on sys.path, before PYTHONPATH
        child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(settings)], stdout=out, stderr=err, env=env, text=True,
                                 cwd=tempfile.gettempdir())
        watched, stopped, sampled = psutil.Process(child.pid), None, 0
        while child.poll() is None:
            try:
                sampled = max(sampled, watched.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            if cap_bytes and sampled > cap_bytes:
                stopped = f"stopped at {sampled / 2**30:.1f} GB"
            elif cap_seconds and time.perf_counter() - started > cap_seconds:
                stopped = f"stopped after {cap_seconds:.0f} s"
            if stopped:
                child.kill()
                child.wait()
                break
            time.sleep(0.05)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    result = {"peak_gb": sampled / 2**30, "seconds": time.perf_counter() - started, "stopped": stopped}
    if stopped is None:
        if child.returncode != 0:
            result["error"] = (stderr.strip().splitlines() or ["exit code %d" % child.returncode])[-1][:120]
        else:
            result.update(json.loads(stdout.strip().splitlines()[-1]))
            result["peak_gb"] = max(sampled, result.pop("peak_bytes")) / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-mb", type=int, default=200)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--ocr-photos", type=int, default=20)
    parser.add_argument("--text-model", default="mock", help="mock (MockEmbedding, 384 dims) or minilm")
    parser.add_argument("--no-clip", action="store_true", help="skip the CLIP case")
    parser.add_argument("--baseline-src", type=Path, help="a checkout of the replaced code, run on the same cases")
    parser.add_argument("--baseline-cap-gb", type=float, default=4.0)
    parser.add_argument("--baseline-cap-s", type=float, default=900.0)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mmrag-memory")
    parser.add_argument("--store-dir", type=Path, help="where the stores go (default: the workdir)")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    folders = prepare(args.workdir, args.text_mb, args.photos, args.ocr_photos)
    empty = args.workdir / "empty"
    empty.mkdir(exist_ok=True)
    cases = [("empty folder (imports, models)", empty, "text", "off"), ("text file", folders["text"], "text", "off"),
             ("photos, image-as-text", folders["photos"], "text", "off")]
    if not args.no_clip:
        clip_dir = args.workdir / "clip"
        if not (clip_dir / "config.json").is_file():
            from indexing import clip_model

            shutil.rmtree(clip_dir, ignore_errors=True)
            _, label = clip_model(args.workdir)
        cases.append(("photos, CLIP ViT-B/32 arch.", folders["photos"], str(clip_dir), "off"))
    if args.ocr_photos:
        cases.append(("photos, image-as-text + OCR", folders["ocr_photos"], "text", "on"))

    codes = [("this code", None, None, None)]
    if args.baseline_src:
        codes.append(("baseline", args.baseline_src.resolve(), int(args.baseline_cap_gb * 2**30), args.baseline_cap_s))
    rows = []
    for name, folder, image_model, ocr in cases:
        count, size = folder_size(folder)
        count = max(count, 1)
        for code, src, cap_bytes, cap_seconds in codes:
            store = (args.store_dir or args.workdir) / "mmrag-memory-store"
            shutil.rmtree(store, ignore_errors=True)
            settings = {"folder": str(folder), "store": str(store), "text_model": args.text_model, "image_model": image_model, "ocr": ocr}
            print(f"indexing {name} ({count} file(s), {size / 1e6:.0f} MB) with {code} ...", flush=True)
            result = measure(settings, src, cap_bytes, cap_seconds)
            rows.append((name, f"{count} x {size / count / 1e6:.1f} MB", code, result))
            print("  " + json.dumps(result), flush=True)
            shutil.rmtree(store, ignore_errors=True)

    print()
    print("| case | input | code | peak RSS (GB) | seconds | points (text/image) | note |")
    print("| --- | --- | --- | ---: | ---: | --- | --- |")
    for name, size, code, r in rows:
        peak = f"> {r['peak_gb']:.2f}" if r["stopped"] else f"{r['peak_gb']:.2f}"
        points = f"{r['text_points']}/{r['image_points']}" if "text_points" in r else "-"
        note = r["stopped"] or r.get("error") or f"{r['indexed']} indexed, {r['failed']} failed"
        if r.get("first_failure"):
            note += f" ({r['first_failure'][:90]}...)"
        print(f"| {name} | {size} | {code} | {peak} | {r['seconds']:.0f} | {points} | {note} |")
    ours = [r for _, _, code, r in rows if code == "this code"]
    ok = all(r["peak_gb"] < TARGET_GB and not r["stopped"] and "error" not in r for r in ours)
    worst = max(r["peak_gb"] for r in ours)
    print(f"\ntarget: every case under {TARGET_GB:.0f} GB peak RSS with this code: {'met' if ok else 'NOT met'} "
          f"(highest {worst:.2f} GB)")


if __name__ == "__main__":
    main()
