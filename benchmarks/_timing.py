"""Timing helpers shared by the benchmark scripts.

Every speed claim is a ratio of two measurements taken in the same process, interleaved over
rounds so that drifting machine load hits both sides alike (:func:`interleaved`). Wall-clock
medians (:func:`median_seconds`) time work that may run on several threads or on an
accelerator; process CPU time (:func:`cpu_seconds`) times single-threaded work on a shared
machine, where other processes inflate wall time but not our CPU time.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping

import torch

__all__ = ["cpu_model", "cpu_seconds", "interleaved", "machine_line", "median_seconds", "timed"]


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    fn: Callable[[], object],
    repeats: int,
    warmup: int = 2,
    device: torch.device | None = None,
) -> float:
    """Median wall time of ``fn`` in seconds, device work included (syncs on CUDA)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_seconds(fn: Callable[[], object]) -> float:
    """Process CPU time (all threads) of one call of ``fn``, in seconds."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    """Runs ``fn()`` once; returns its result, wall seconds and process CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def interleaved(
    fns: Mapping[str, Callable[[], object]],
    rounds: int,
    measure: Callable[[Callable[[], object]], float],
) -> dict[str, float]:
    """Best (lowest) ``measure(fn)`` of each function over ``rounds`` interleaved rounds.

    Every round measures every function once; odd rounds run them in reverse order, so no
    function always follows the same one (caches, allocator state, turbo).
    """
    best = dict.fromkeys(fns, float("inf"))
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            best[name] = min(best[name], measure(fns[name]))
    return best


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_line() -> str:
    """One line naming the machine: CPU model and count, torch and Python versions."""
    return (
        f"{cpu_model()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )
