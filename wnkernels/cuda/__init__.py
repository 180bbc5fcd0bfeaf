"""GPU backend of wnkernels: fused weight-norm kernels written with numba-cuda.

The front end validates arguments and turns every call into a `Layout`
(``nrows`` rows x ``rowlen`` reduced elements, with per-array element strides);
this package runs that layout on the caller's GPU arrays in place, on the
caller's current stream, without host synchronization or host copies.

Modules:

* `_interop`  -- recognize GPU arrays (torch, CuPy, numba, CUDA array interface,
  DLPack), describe them as `ArrayInfo`, allocate outputs, find the stream;
* `_kernels`  -- the kernels, one factory per strategy, with the precision and
  determinism rules: scalar ``block`` / ``group`` / ``split`` for any layout;
  16-byte vector ``regs`` (row held in registers) and ``stream`` (ticketed,
  L2-aware chunks) for contiguous rows; ``cols`` (ticketed, coalesced along a
  contiguous kept axis, 16-byte column vectors where aligned);
* `_vec`      -- the ``ld.global.v4`` / ``st.global.v4`` / ``ld.global.cg``
  intrinsics (plain Python under the CUDA simulator);
* `_launch`   -- the plan (strategy, block, chunking), kernel cache, per-stream
  workspaces, and the launch paths (flat arguments through ``cuda.core``,
  numba's dispatcher as the fallback and under the CUDA simulator);
* `_numba`    -- the one import of numba-cuda (with the NumPy 2.5
  ``row_stack`` fix).

Importing this package is cheap: numba is imported on the first call that needs
it, never for CPU arrays.
"""

from __future__ import annotations

from ._interop import is_gpu_array, info, empty

__all__ = ["claims", "describe", "compile", "empty_cache", "is_gpu_array", "info", "empty",
           "ascontiguous", "forward", "backward", "configure", "compile_times",
           "simulator_active"]


# ---------------------------------------------------------------- backend protocol

def claims(x) -> bool:
    """Whether ``x`` is a GPU array this backend runs on in place."""
    return is_gpu_array(x)


def describe(name: str, x):
    """`ArrayInfo` of a GPU array argument (torch's negative bit noted: the
    planner has such a tensor read through a resolved copy)."""
    i = info(x)
    if i.kind == "torch-cuda":
        i.resolve = bool(x.is_neg() or x.is_conj())
    return i


def compile(plan):
    """The executable of a `wnkernels._planner.Plan` or ``GroupPlan``."""
    from .._planner import GroupPlan
    from ._exec import CudaCall, CudaGroup
    return CudaGroup(plan) if isinstance(plan, GroupPlan) else CudaCall(plan)


def empty_cache() -> None:
    """Release the per-stream workspaces (partial sums, ticket counters)."""
    import sys
    launch = sys.modules.get("wnkernels.cuda._launch")
    if launch is not None:
        launch.empty_cache()


def forward(layout, v, g, g_stride, w, norms, eps: float, *, strategy=None) -> None:
    """Fused forward: ``norms[r] = sqrt(sum v_r^2 + eps)``, ``w = v * (g / norms)``.

    ``layout`` describes arrays ``[v, w]``; ``g`` is read at ``g.ptr + r *
    g_stride`` elements; ``norms`` is contiguous (float32 for half types).
    ``strategy`` (testing) forces ``"block"``, ``"group[:G]"``, ``"split[:nchunk]"``,
    ``"cols[:TX]"``, ``"regs[:G:R]"`` or ``"stream"``; by default it is chosen from
    the layout (`_launch.plan`).
    """
    from . import _launch
    _launch.forward(layout, v, g, g_stride, w, norms, eps, strategy=strategy)


def backward(layout, grad_w, v, g, g_stride, norms, norms_stride, grad_v, grad_g,
             *, strategy=None) -> None:
    """Fused backward: ``grad_g = sum(grad_w * v) / norms`` and
    ``grad_v = (g / norms) * grad_w - (g * grad_g / norms^2) * v``.

    ``layout`` describes arrays ``[v, grad_w, grad_v]``; ``norms`` is read with
    ``norms_stride`` elements between rows and never recomputed; ``grad_g`` is
    contiguous, in g's dtype.
    """
    from . import _launch
    _launch.backward(layout, grad_w, v, g, g_stride, norms, norms_stride, grad_v,
                     grad_g, strategy=strategy)


def ascontiguous(a):
    """A C-contiguous copy of GPU array info ``a`` (small per-row arrays: g, norms),
    of the same kind, on the same device and stream; returns the new array."""
    if a.kind == "torch-cuda":
        return a.obj.contiguous()
    if a.kind == "cupy":
        import cupy
        with cupy.cuda.Device(a.device[1]):
            return cupy.ascontiguousarray(a.obj)
    from . import _launch
    return _launch.ascontiguous(a)


def configure(**knobs) -> dict:
    """Set launch knobs (``block``, ``max_block``, ``max_regs``, ``shuffle``,
    ``cols_tx``, ``cols_steps``, ``stream_vectors``, ``l2_bytes``, ``fast_launch``,
    ``sm_count``, ``vector``); returns the previous values.  See `_launch.Settings`
    (``vector``: use the 16-byte vector kernels where the layout allows; on by
    default on a GPU, off under the simulator)."""
    from . import _launch
    return _launch.configure(**knobs)


def compile_times() -> dict:
    """Compile time in seconds of each kernel specialization built in this process."""
    from . import _launch
    return _launch.compile_times()


def simulator_active() -> bool:
    """True when numba-cuda runs under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1)."""
    from ._numba import SIM
    return SIM
