"""CPU threads: how many to use, chosen from the cores and what else is running.

Measured on a 2-core machine (README, "Threads"): torch's default (every core, busy-waiting OpenMP threads) is the
faster choice on a quiet machine and several times slower when another job holds a core, because the waiting
threads fight it. :func:`configure_threads` therefore picks the threads from the load other processes put on the
machine now (sampled from ``/proc/stat`` over a quarter second, so a job that just ended does not count, as it
would in the 1-minute load average), and sets a passive OpenMP wait policy, so the default holds up in both
situations.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["busy_cores", "choose_threads", "configure_threads"]


def busy_cores(window: float = 0.25) -> float | None:
    """CPU cores kept busy right now, from ``/proc/stat`` sampled ``window`` seconds apart; None where it cannot be read.

    Example:
        >>> 0.0 <= (busy_cores() or 0.0) <= (os.cpu_count() or 1)
        True
    """
    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(values), values[3] + values[4]

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (1.0 - (idle1 - idle0) / (total1 - total0))


def choose_threads(cores: int | None = None, load: float | None = None) -> int:
    """Threads for this process: the cores other processes leave free (at least one).

    Args:
        cores: CPU cores available (default: those this process may run on).
        load: Cores other processes keep busy (default: :func:`busy_cores`, else the 1-minute load average).

    Example:
        >>> choose_threads(cores=2, load=0.1), choose_threads(cores=2, load=1.2), choose_threads(cores=16, load=3.4)
        (2, 1, 13)
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load is None:
        load = busy_cores()
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


def configure_threads(threads: int | None = None) -> int:
    """Use ``threads`` CPU threads (None: :func:`choose_threads`), with a passive OpenMP wait policy.

    Call it before torch is imported when possible (the OpenMP settings are read when torch starts); when torch is
    already imported, its thread count is set directly. An explicit ``OMP_NUM_THREADS`` in the environment wins
    over the automatic choice.

    Returns:
        The thread count in effect.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads is None:
        preset = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(preset) if preset.isdigit() and int(preset) > 0 else choose_threads()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)
    return threads
