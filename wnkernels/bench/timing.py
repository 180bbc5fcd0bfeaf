"""Timing: wall-clock and CUDA-event timers, interleaved measurement, and a
watch on what other processes use of the machine while we measure."""

from __future__ import annotations

import gc
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

__all__ = ["CpuTimer", "CudaWallTimer", "CudaEventTimer", "measure", "OtherLoad",
           "busy_warning", "SETTLE_S"]


class CpuTimer:
    """Wall-clock samples of ``number`` back-to-back calls (``perf_counter``)."""

    kind = "wall clock"

    def sample(self, fn: Callable[[], Any], number: int) -> float:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - t0) / number

    def calibrate(self, fn: Callable[[], Any], min_time: float, max_number: int = 10**6) -> int:
        """Calls per sample so that a sample lasts about ``min_time`` (at least one call)."""
        number = 1
        while True:
            t = self.sample(fn, number) * number
            if t >= 0.2 * min_time or number >= max_number:
                break
            number = min(max_number, number * 10)
        per_call = max(t / number, 1e-9)
        return int(min(max_number, max(1, math.ceil(min_time / per_call))))


class CudaWallTimer(CpuTimer):
    """Wall clock per call, including launch cost: ``number`` calls, then one synchronize."""

    kind = "wall clock"

    def __init__(self, torch):
        self.torch = torch

    def sample(self, fn, number):
        self.torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        self.torch.cuda.synchronize()
        return (time.perf_counter() - t0) / number


class CudaEventTimer(CpuTimer):
    """GPU time per call from CUDA events.

    The calls are enqueued behind a ``torch.cuda._sleep`` kernel long enough to cover the
    host's enqueueing, so the events time the GPU's work back to back, not the launch rate
    of the host (which is what `CudaWallTimer` measures).
    """

    kind = "GPU time (CUDA events)"
    MAX_CALLS = 200  # stays well inside the launch queue (~1024 pending launches)

    def __init__(self, torch):
        self.torch = torch
        self._sleep = getattr(torch.cuda, "_sleep", None)
        self._cycles_per_s = self._calibrate_sleep() if self._sleep else 0.0
        self._host_s: Dict[int, float] = {}  # id(fn) -> host seconds per call

    def _calibrate_sleep(self) -> float:
        torch = self.torch
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        cycles = 10**7
        self._sleep(cycles)  # warm-up
        torch.cuda.synchronize()
        start.record()
        self._sleep(cycles)
        end.record()
        end.synchronize()
        return cycles / max(start.elapsed_time(end) * 1e-3, 1e-6)

    def sample(self, fn, number):
        torch = self.torch
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        host = self._host_s.get(id(fn))
        if self._sleep is not None and host is not None:
            pad = 1.5 * host * number + 50e-6
            self._sleep(int(pad * self._cycles_per_s))
        t0 = time.perf_counter()
        start.record()
        for _ in range(number):
            fn()
        end.record()
        enqueue = time.perf_counter() - t0
        end.synchronize()
        # Learn the host's enqueue cost per call (an overestimate when the first sample
        # blocked on a full queue: harmless, the pad only grows).
        self._host_s[id(fn)] = max(self._host_s.get(id(fn), 0.0), enqueue / number)
        return start.elapsed_time(end) * 1e-3 / number

    def calibrate(self, fn, min_time, max_number=MAX_CALLS):
        return super().calibrate(fn, min_time, max_number=min(max_number, self.MAX_CALLS))


# Pause between two contenders' samples: OpenMP worker threads (wnkernels' and torch's
# runtimes are distinct) spin for a while after a parallel region; on a 2-core machine a
# spinning pool steals a core from whoever runs next.
SETTLE_S = 0.005


def measure(contenders: Dict[str, Callable[[], Any]], timer: CpuTimer, *, repeat: int,
            min_time: float, on_round: Optional[Callable[[], None]] = None,
            settle: float = SETTLE_S) -> Dict[str, Dict[str, Any]]:
    """Interleaved samples of every contender: ``repeat`` rounds in rotating order."""
    names = list(contenders)
    number = {}
    for name in names:
        contenders[name]()  # warm-up (caches, page faults, lazy initialization)
        number[name] = timer.calibrate(contenders[name], min_time)
    samples: Dict[str, List[float]] = {n: [] for n in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeat):
            for name in names[r % len(names):] + names[:r % len(names)]:
                if settle:
                    time.sleep(settle)
                samples[name].append(timer.sample(contenders[name], number[name]))
            if on_round is not None:
                on_round()
    finally:
        if gc_was_enabled:
            gc.enable()
    return {n: {"time_s": float(np.median(samples[n])), "min_s": min(samples[n]),
                "samples_s": samples[n], "calls_per_sample": number[n]} for n in names}


class OtherLoad:
    """CPU time used by *other* processes over an interval, in CPUs (from /proc/stat minus
    this process's own CPU time). On a 2-core machine one busy neighbour makes a 2-thread
    OpenMP kernel wait a whole scheduler slice (milliseconds) at every barrier."""

    def __init__(self):
        self.start = self._snapshot()

    @staticmethod
    def _snapshot():
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / hz  # all but idle and iowait
        t = os.times()
        return time.monotonic(), busy, t.user + t.system

    def cpus(self) -> Optional[float]:
        end = self._snapshot()
        if self.start is None or end is None or end[0] - self.start[0] <= 0:
            return None
        others = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return max(0.0, others / (end[0] - self.start[0]))


def busy_warning(cpus: Optional[float], when: str) -> Optional[str]:
    if cpus is None or cpus < 0.25:
        return None
    return (f"warning: other processes used {cpus:.1f} CPUs {when}: multi-threaded timings "
            f"are unreliable on a busy machine; rerun when it is idle")
