"""CPU benchmarks of grouped calls on real models' weight sets (``wnkernels.bench.CPU_GROUPS``:
the DAC 44 kHz codec's 78 weight-normed convs, Encodec 24 kHz's 36, 50 small layers).

Each group ("<set> <direction>") holds the roofline (a copy / triad of the set's total
bytes), wnkernels' grouped call on torch tensors, a loop of wnkernels' per-tensor calls and
a loop of PyTorch's fused kernels, so pytest-benchmark's table compares them directly.
Results are checked against the float64 reference, and the grouped results bitwise against
the per-tensor calls, before a set is timed.
"""

import pytest

from wnkernels import bench as wnbench

IMPLS = ("roofline", "wnkernels many torch", "wnkernels loop", "torch loop")
MATRIX = [pytest.param(g, d, i, id=f"{g.id}-{d}-{i.replace(' ', '_')}")
          for g in wnbench.CPU_GROUPS for d in wnbench.DIRECTIONS for i in IMPLS]


@pytest.mark.parametrize("group, direction, impl", MATRIX)
def test_cpu_group(benchmark, group_workloads, bench_threads, group, direction, impl):
    workload = group_workloads.get(group)
    fn = workload.contenders(direction).get(impl)
    if fn is None:
        pytest.skip(f"{impl} is not available here (torch not installed)")
    roofline_s = group_workloads.roofline_time(group, direction)
    benchmark.group = f"{group.name} {direction}"
    benchmark(fn)
    nbytes = group.bytes_moved(direction)
    info = {"case": group.name, "direction": direction, "impl": impl,
            "weights": len(group.cases), "dtype": group.dtype, "bytes_moved": nbytes,
            "roofline_s": roofline_s, "threads": bench_threads}
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:
        info.update({"time_s": stats.median, "GB/s": nbytes / stats.median / 1e9,
                     "pct_roofline": 100.0 * roofline_s / stats.median})
    benchmark.extra_info.update(info)
