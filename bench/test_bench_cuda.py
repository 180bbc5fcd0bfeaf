"""GPU benchmarks: every case of ``wnkernels.bench.CUDA_CASES`` (the suite of issue 4) on
torch CUDA tensors, forward and backward, against a same-size device-to-device ``copy_``
(forward) or triad ``torch.add(c, b, alpha=s, out=a)`` (backward) and PyTorch's CUDA
kernels. pytest-benchmark times each call plus a ``torch.cuda.synchronize()`` (wall
clock); ``extra_info`` adds the GPU time per call from CUDA events (wall clock for the
latency case), GB/s and % of the roofline. Skipped without a CUDA device.
"""

import pytest

from wnkernels import bench as wnbench

torch = wnbench.import_torch()
if torch is None:
    _skip = "torch is not installed (the GPU suite runs on torch CUDA tensors)"
elif not torch.cuda.is_available():
    _skip = f"no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False)"
else:
    _skip = None
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")

IMPLS = ("roofline", "wnkernels torch", "wnkernels out=", "torch") + wnbench.PEERS
MATRIX = [pytest.param(c, d, i, id=tid)
          for c, d, i, tid in wnbench.benchmark_matrix(wnbench.CUDA_CASES, IMPLS)]


@pytest.mark.parametrize("case, direction, impl", MATRIX)
def test_cuda(benchmark, cuda_workloads, bench_record, contender, case, direction, impl):
    workload = cuda_workloads.get(case)
    fn = contender(workload, direction, impl)
    roofline_s = cuda_workloads.roofline_time(case, direction)
    # GPU time of this contender alone (CUDA events; wall clock for the latency case).
    gpu = wnbench.measure({impl: fn}, workload.timer, repeat=5, min_time=0.05)[impl]
    sync = torch.cuda.synchronize

    def call_and_wait():
        fn()
        sync()

    benchmark.group = f"cuda {case.name} {direction}"
    benchmark(call_and_wait)
    bench_record(benchmark, case, direction, impl, roofline_s,
                 device=torch.cuda.get_device_name(),
                 timer=workload.timer.kind, gpu_time_s=gpu["time_s"],
                 gpu_GB_per_s=case.bytes_moved(direction) / gpu["time_s"] / 1e9,
                 gpu_pct_roofline=100.0 * roofline_s / gpu["time_s"])
