"""pytest-benchmark suite of wnkernels: the cases of ``wnkernels.bench``, one group per
case and direction (roofline, wnkernels, torch, NumPy side by side).

Run with ``pytest bench/ --benchmark-only`` (add ``--bench-threads N`` to pin the CPU
thread count, ``--bench-compare`` to add torch.compile and jax.jit, ``-k 4096x4096`` to
pick cases, ``--benchmark-json PATH`` to keep the numbers). Without ``--benchmark-only``
every benchmark here is skipped, so a plain ``pytest`` never spends minutes timing.

pytest-benchmark runs each test's rounds back to back; ``wnkernels bench`` interleaves
the contenders round by round and is the steadier instrument on a noisy machine. Both
draw their cases and workloads from ``wnkernels.bench``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import pytest

from wnkernels import bench as wnbench

BENCH_DIR = Path(__file__).resolve().parent


def pytest_addoption(parser):
    group = parser.getgroup("wnkernels bench")
    group.addoption("--bench-threads", type=int, default=None, metavar="N",
                    help="CPU threads for wnkernels, the roofline and torch "
                         "(default: wnkernels' default, all cores)")
    group.addoption("--bench-compare", action="store_true",
                    help="also time the compiled peers (torch.compile, jax.jit) where "
                         "installed, as `wnkernels bench --compare` does")


def pytest_collection_modifyitems(config, items):
    ours = [it for it in items if BENCH_DIR in Path(str(it.path)).resolve().parents]
    if not ours:
        return
    if not config.pluginmanager.hasplugin("benchmark"):
        reason = "pytest-benchmark is not installed (pip install 'wnkernels[bench]')"
    elif not config.getoption("benchmark_only", False):
        reason = "benchmarks run only with `pytest bench/ --benchmark-only`"
    else:
        return
    for it in ours:
        it.add_marker(pytest.mark.skip(reason=reason))


class WorkloadCache:
    """One case's arrays alive at a time (the largest hold several GiB), plus the
    roofline time of each (case, direction), measured beside the first test that needs it."""

    def __init__(self, factory: Callable[[wnbench.Case], Any]):
        self.factory = factory
        self.case: Optional[wnbench.Case] = None
        self.workload: Any = None
        self.error: Optional[BaseException] = None
        self.roofline: Dict[Tuple[str, str], float] = {}

    def get(self, case: wnbench.Case):
        if case != self.case:
            self.release()
            self.case = case
            try:
                self.workload = self.factory(case)
                self.workload.check()
            except BaseException as exc:  # re-raised for every test of this case
                self.error = exc
        if isinstance(self.error, wnbench.SkipCase):
            pytest.skip(str(self.error))
        if self.error is not None:
            pytest.fail(f"{case.name}: {type(self.error).__name__}: {self.error}",
                        pytrace=False)
        return self.workload

    def roofline_time(self, case: wnbench.Case, direction: str) -> float:
        key = (case.name, direction)
        if key not in self.roofline:
            wl = self.get(case)
            fn = wl.contenders(direction)["roofline"]
            res = wnbench.measure({"roofline": fn}, wl.timer, repeat=5, min_time=0.05)
            self.roofline[key] = res["roofline"]["time_s"]
        return self.roofline[key]

    def release(self):
        if self.workload is not None:
            self.workload.close()
        self.case = self.workload = self.error = None
        import gc
        gc.collect()


@pytest.fixture(scope="session")
def bench_threads(request):
    """Set the thread count once for wnkernels and torch (CPU); returns it."""
    import wnkernels
    n = request.config.getoption("--bench-threads", default=None)
    if n is not None:
        wnkernels.set_num_threads(n)
    n = wnkernels.get_num_threads()
    torch = wnbench.import_torch()
    saved = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    yield n
    if torch is not None:
        torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def bench_peers(request):
    """The compiled peers to build (``--bench-compare``), else none."""
    return wnbench.PEERS if request.config.getoption("--bench-compare", default=False) else ()


@pytest.fixture(scope="session")
def cpu_workloads(bench_threads, bench_peers):
    cache = WorkloadCache(lambda case: wnbench.CpuWorkload(case, peers=bench_peers))
    yield cache
    cache.release()


@pytest.fixture(scope="session")
def group_workloads(bench_threads):
    cache = WorkloadCache(lambda group: wnbench.GroupWorkload(group))
    yield cache
    cache.release()


@pytest.fixture(scope="session")
def cuda_workloads(bench_peers):
    cache = WorkloadCache(lambda case: wnbench.CudaWorkload(case, peers=bench_peers))
    yield cache
    cache.release()


@pytest.fixture
def contender():
    """``contender(workload, direction, impl)``: the callable, or skip the test saying
    why it is missing (torch or a peer not installed, --bench-compare not given)."""
    return _contender


def _contender(workload, direction: str, impl: str):
    fn = workload.contenders(direction).get(impl)
    if fn is None:
        st = workload.peer_status.get(impl)
        why = (st["message"] if st else "--bench-compare not given" if impl in wnbench.PEERS
               else "torch not installed")
        pytest.skip(f"{impl} is not available here ({why})")
    return fn


@pytest.fixture
def bench_record():
    """``bench_record(benchmark, case, direction, impl, roofline_s, **extra)``."""
    return _record


def _record(benchmark, case: wnbench.Case, direction: str, impl: str, roofline_s: float,
            threads: Optional[int] = None, **extra) -> None:
    """extra_info: bytes moved, GB/s and % of the same-size roofline (from the median)."""
    nbytes = case.bytes_moved(direction)
    info = {"case": case.name, "direction": direction, "impl": impl,
            "shape": list(case.shape), "dtype": case.dtype, "dim": case.dim,
            "bytes_moved": nbytes, "roofline_s": roofline_s,
            "roofline_GB/s": nbytes / roofline_s / 1e9}
    if threads is not None:
        info["threads"] = threads
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:
        t = stats.median
        info.update({"time_s": t, "GB/s": nbytes / t / 1e9,
                     "pct_roofline": 100.0 * roofline_s / t})
    info.update(extra)
    benchmark.extra_info.update(info)
