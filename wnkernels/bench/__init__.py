"""The benchmark suite and its runner (``wnkernels bench``).

Each case is timed, forward and backward, against:

* a **roofline** measured at the case's own size in the same process, right beside the
  kernel: the forward against an all-core copy of v's bytes (it must read v and write w,
  2·N·itemsize bytes), the backward against an all-core triad ``a = b*s + c`` of that size
  (read grad_w and v, write grad_v: 3·N·itemsize bytes). Caches make a small copy run
  several times faster than a large one, so one machine-wide figure would flatter the
  large cases and insult the small ones;
* PyTorch's fused kernels, ``torch._weight_norm_interface`` and
  ``torch.ops.aten._weight_norm_interface_backward`` (when torch is installed), on views of
  the same memory with the same thread count -- the headline ratio is wnkernels called on
  those torch tensors (what a framework sees) against them; wnkernels on NumPy arrays is
  reported beside it;
* a NumPy baseline (CPU only): ``g * v / sqrt((v*v).sum(axes, keepdims=True))`` and the
  backward formula written the same way;
* with ``--compare``, compiled peers (`peers`): torch.compile (Inductor) and jax.jit of that
  formula, the backward as its vector-Jacobian product, each compiled once and warmed up
  outside the timing; a peer that is not installed is reported absent;
* for a model's weight set (DAC, Encodec, 50 small layers): wnkernels' grouped calls
  against a loop of per-tensor calls, PyTorch's and wnkernels' own.

Before anything is timed, every case checks wnkernels' results (and each compiled peer's)
against `wnkernels.reference` (on a sample of rows), so a broken build cannot report a
fast wrong answer. Measurements are interleaved: each round takes one sample of every
contender, in a rotating order, so slow drifts of the machine hit all of them alike. A
sample loops enough calls to last ``min_time``; the reported time is the median over
the rounds.

The summary's headline is the geometric mean, per direction and over both, of wnkernels
on torch tensors against PyTorch (the grouped calls against PyTorch's loop), with the
worst case; then the same against each compiled peer and against the fastest rival per
case. ``--plot PATH`` draws the tables as one chart (`plot`; matplotlib, an optional extra).

Modules: `cases` (the suites), `timing` (timers, interleaved measurement), `workloads`
(data, contenders, the check), `peers` (torch.compile, jax.jit), `report` (figures,
tables, machine facts), `plot` (the chart), `cli` (the runner and ``wnkernels bench``).
The pytest-benchmark suite in ``bench/`` draws its cases and workloads from here.
"""

from .cases import (CPU_CASES, CPU_GROUPS, CUDA_CASES, CUDA_GROUPS, DAC_44KHZ, DIRECTIONS,
                    ENCODEC_24KHZ, SMALL_50, Case, GroupCase, benchmark_matrix, select_cases)
from .cli import add_arguments, main, run_from_args, run_suite
from .peers import PEERS, Peer, PeerAbsent, build_peer
from .plot import plot_results, require_matplotlib
from .report import direction_result, summarize
from .timing import CpuTimer, CudaEventTimer, CudaWallTimer, measure
from .workloads import (CheckError, CpuWorkload, CudaWorkload, GroupWorkload, SkipCase,
                        import_torch)

__all__ = ["Case", "GroupCase", "CPU_CASES", "CUDA_CASES", "CPU_GROUPS", "CUDA_GROUPS",
           "DAC_44KHZ", "ENCODEC_24KHZ", "SMALL_50", "DIRECTIONS", "CheckError", "SkipCase",
           "CpuWorkload", "CudaWorkload", "GroupWorkload", "CpuTimer", "CudaWallTimer",
           "CudaEventTimer", "measure", "run_suite", "add_arguments", "run_from_args", "main",
           "benchmark_matrix", "select_cases", "direction_result", "summarize", "import_torch",
           "PEERS", "Peer", "PeerAbsent", "build_peer", "plot_results", "require_matplotlib"]
