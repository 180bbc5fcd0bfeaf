"""CPU benchmarks: every case of ``wnkernels.bench.CPU_CASES``, forward and backward.

Each group ("<case> <direction>") holds the same-size roofline (all-core copy / triad),
wnkernels (allocating, with ``out=`` for the forward, and called on torch tensors as a
framework calls it), PyTorch's fused kernels, with ``--bench-compare`` torch.compile and
jax.jit, and the NumPy baseline, so pytest-benchmark's table compares them directly;
``extra_info`` carries GB/s and % of the roofline. wnkernels' results are checked
against a float64 reference before a case is timed.
"""

import pytest

from wnkernels import bench as wnbench

IMPLS = ("roofline", "wnkernels", "wnkernels out=", "wnkernels torch", "torch") + \
    wnbench.PEERS + ("numpy",)
MATRIX = [pytest.param(c, d, i, id=tid)
          for c, d, i, tid in wnbench.benchmark_matrix(wnbench.CPU_CASES, IMPLS)]


@pytest.mark.parametrize("case, direction, impl", MATRIX)
def test_cpu(benchmark, cpu_workloads, bench_threads, bench_record, contender, case, direction,
             impl):
    workload = cpu_workloads.get(case)
    fn = contender(workload, direction, impl)
    roofline_s = cpu_workloads.roofline_time(case, direction)
    benchmark.group = f"{case.name} {direction}"
    benchmark(fn)
    bench_record(benchmark, case, direction, impl, roofline_s, threads=bench_threads)
