"""GPU backend of wnkernels: fused weight-norm kernels written with numba-cuda.

The backend protocol (as `wnkernels.cpu`): ``describe(name, x)`` GPU arrays as
`ArrayInfo` (``claims(x)`` says whether it does), ``compile(plan)`` a planned
call into an executable, ``empty_cache()``.  Calls run on the caller's arrays
in place, on the caller's stream, without host synchronization or host copies.

Modules:

* `_interop`  -- recognize GPU arrays (torch, CuPy, numba, CUDA array interface,
  DLPack), describe them, allocate outputs, find the stream;
* `kernels`   -- the kernels, one module per strategy, and the table kernel that
  runs a list of items (a call, or a grouped call) in one launch;
* `_plan`     -- a strategy per item, the item table, the launch grid;
* `_launch`   -- settings (`configure`), kernel cache, per-call workspaces, the
  launch paths (flat arguments through ``cuda.core``; numba's dispatcher as
  the fallback and under the CUDA simulator);
* `_exec`     -- the executables (`CudaCall`, `CudaGroup`);
* `_vec`      -- ``ld.global.v4`` / ``st.global.v4`` / ``ld.global.cg`` and
  raw-address arrays (plain Python under the CUDA simulator);
* `_numba`    -- the one import of numba-cuda.

Importing this package is cheap: numba is imported on the first call that needs
it, never for CPU arrays.
"""

from __future__ import annotations

from ._interop import is_gpu_array, info, empty

__all__ = ["claims", "describe", "compile", "empty_cache", "is_gpu_array", "info", "empty",
           "ascontiguous", "configure", "compile_times", "simulator_active"]


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
    """Release the small device arrays the backend keeps (dummy workspaces)."""
    import sys
    launch = sys.modules.get("wnkernels.cuda._launch")
    if launch is not None:
        launch.empty_cache()


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
    """Set launch knobs (``block``, ``max_regs``, ``shuffle``, ``cols_tx``,
    ``cols_steps``, ``stream_vectors``, ``l2_bytes``, ``fast_launch``,
    ``sm_count``, ``vector``, ``strategy``); returns the previous values
    (``configure(**old)`` restores them).  See `_launch.Settings` (``vector``:
    use the 16-byte vector kernels where the layout allows, on by default on a
    GPU, off under the simulator; ``strategy``: force one for every item, e.g.
    ``"regs:8:2"``, ``""`` for the planner's choice).  Cached plans re-plan."""
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
