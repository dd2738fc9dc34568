"""One demo question under three thread settings, timed in the same run: torch's default, one thread, and ours.

    python benchmarks/threads.py                 # as the machine is
    python benchmarks/threads.py --busy 1        # with one busy-looping process holding a core, started here

* ``torch default``: every core, OpenMP's active wait (what the CLI did before ``--threads``);
* ``1 thread``: ``OMP_NUM_THREADS=1``;
* ``ours``: the CLI's default: the cores other processes leave free (from the load average), passive OpenMP wait.

Each setting answers the first demo question with ``mmrag ask`` on an index of the bundled demo folder (built
once, first), in its own process, ``--repeats`` times; the table gives the median wall time, the median of the
``stage 2`` time the CLI prints, and the load average before each run. The last line is
``ours_vs_default=<default/ours> ours_vs_one=<one/ours>`` (above 1: ours is faster).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTION = "How did revenue change over the year?"
SETTINGS = {
    "torch default": ({"OMP_WAIT_POLICY": "ACTIVE"}, ["--threads", str(os.cpu_count() or 1)]),
    "1 thread": ({"OMP_NUM_THREADS": "1"}, ["--threads", "1"]),
    "ours": ({}, []),
}


def _spin() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--busy", type=int, default=0, help="Busy-looping processes to start beside the runs (a loaded machine).")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mmrag-threads-"))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")} | {"HF_HUB_OFFLINE": "1"}
    mmrag = [sys.executable, "-m", "mmrag_agent.cli"]
    subprocess.run(mmrag + ["demo", "--questions", "0", "--store", str(work / "store")], env=env, check=True, capture_output=True)
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for spinner in spinners:
        spinner.start()
    time.sleep(5 if spinners else 0)
    rows = {}
    try:
        for _ in range(args.repeats):
            for name, (extra_env, flags) in SETTINGS.items():
                load = os.getloadavg()[0]
                started = time.perf_counter()
                proc = subprocess.run(mmrag + flags + ["ask", QUESTION, "--store", str(work / "store"), "--max-new-tokens",
                                                       str(args.max_new_tokens)], env=env | extra_env, capture_output=True, text=True)
                wall = time.perf_counter() - started
                if proc.returncode != 0:
                    sys.exit(f"{name}: mmrag ask failed: {proc.stderr.strip().splitlines()[-1:]}")
                stage2 = re.search(r"stage2 ([0-9.]+) s", proc.stdout)
                rows.setdefault(name, []).append((wall, float(stage2.group(1)) if stage2 else float("nan"), load))
    finally:
        for spinner in spinners:
            spinner.terminate()
    print(f"\none demo question, {args.repeats} runs per setting, {args.busy} busy process(es) started beside, {os.cpu_count()} cores\n")
    print("| threads | median wall s | median stage-2 s | load before (1 min) |")
    print("| --- | ---: | ---: | --- |")
    medians = {}
    for name, runs in rows.items():
        medians[name] = statistics.median(w for w, _, _ in runs)
        print(f"| {name} | {medians[name]:.1f} | {statistics.median(s for _, s, _ in runs):.1f} | "
              f"{', '.join(f'{l:.1f}' for _, _, l in runs)} |")
    print(f"\nours_vs_default={medians['torch default'] / medians['ours']:.2f} ours_vs_one={medians['1 thread'] / medians['ours']:.2f}")


if __name__ == "__main__":
    main()
