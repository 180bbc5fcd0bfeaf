"""Settings, kernel cache, workspaces and the launch paths of the GPU backend.

Kernels (`kernels.make_kernel`) are compiled once per (op, dtype, block,
reduction form, strategy codes, padded dims) and numba specializes them per
number of pointers; every kernel carries ``launch_bounds = block``, so ptxas
keeps its registers within what a block of that size may hold.  On a GPU the
default path launches the compiled kernel through ``cuda.core.launch`` with
flat arguments built here exactly as numba's own ``_Kernel.launch`` builds them
(array = meminfo 0, parent 0, nitems, itemsize, data pointer, shape, byte
strides; int64 / float64 scalars as ctypes; tuples flattened), skipping numba's
per-call type dispatch and argument conversion.  ``WNKERNELS_CUDA_LAUNCH=numba``
forces numba's dispatcher, which is also the fallback if the fast path cannot
be set up, and the only path under the CUDA simulator.  Before a launch the
device's primary context is made current if it is not (one driver query).

Workspaces of ticketed items (``part``: partial sums and per-row scalars;
``sync``: counters) are allocated for each call from the caller's own
allocator, on the caller's stream, ``sync`` zeroed there: no state is kept
between calls, so concurrent kernels on one stream or many, a stream handle
reused after its stream was destroyed, and CUDA-graph capture and replay
(the zeroing is captured with the kernel) are all safe.
"""

from __future__ import annotations

import ctypes
import os
import time

import numpy as np

from ._numba import cuda, SIM
from . import _interop
from . import kernels as K

__all__ = ["Settings", "configure", "settings_epoch", "sm_count", "l2_bytes", "launch",
           "ascontiguous", "compile_times", "compiled", "empty_cache"]


class Settings:
    """Module-wide knobs (tests use them to drive the simulator; on a GPU they are
    the tuning points of the strategies)."""
    block = 16 if SIM else 256          # threads per block (power of two)
    max_regs = 8                        # most 16-byte vectors a lane holds (``regs``)
    shuffle = not SIM                   # warp-shuffle reductions (no: shared memory)
    cols_tx = 4 if SIM else 32          # most threads across the columns (``cols``)
    cols_steps = 4                      # reduced indices per thread per ``cols`` item
    stream_vectors = 2                  # 16-byte vectors per thread per ``stream`` item
    l2_bytes = None                     # override the device's L2 size (tests)
    fast_launch = (not SIM) and os.environ.get("WNKERNELS_CUDA_LAUNCH", "") != "numba"
    sm_count = None                     # override the device's SM count (tests)
    fast_launch_error = None            # why the fast path was turned off, if it was
    vector = not SIM                    # 16-byte vector kernels where possible
    trace = None                        # a list: the codes of each launch are appended (tests)
    strategy = None                     # force one strategy for every item (tests)


_KNOBS = ("block", "max_regs", "shuffle", "cols_tx", "cols_steps", "stream_vectors",
          "l2_bytes", "fast_launch", "sm_count", "vector", "strategy")
_EPOCH = [0]


def settings_epoch() -> int:
    """Bumped by every `configure`: compiled plans re-plan when it moved."""
    return _EPOCH[0]


def configure(**knobs):
    """Change `Settings` (a knob given as ``None`` is left as it is); returns the
    old values of every knob (``configure(**old)`` restores them)."""
    bad = set(knobs) - set(_KNOBS)
    if bad:
        raise TypeError(f"unknown knob(s): {sorted(bad)}")
    old = {k: getattr(Settings, k) for k in _KNOBS}
    b = knobs.get("block")
    if b is not None and (int(b) < 1 or int(b) & (int(b) - 1) or int(b) > 1024):
        raise ValueError("block must be a power of two in [1, 1024]")
    if knobs.get("shuffle") and SIM:
        raise ValueError("the CUDA simulator has no warp shuffles")
    for name in ("max_regs", "cols_tx", "cols_steps", "stream_vectors"):
        if knobs.get(name) is not None and int(knobs[name]) < 1:
            raise ValueError(f"{name} must be >= 1")
    for name, value in knobs.items():
        if value is None:
            continue
        if name in ("shuffle", "vector"):
            value = bool(value)
        elif name == "fast_launch":
            value = bool(value) and not SIM
        elif name in ("sm_count", "l2_bytes"):  # 0: the device's own
            value = int(value) or None
        elif name == "strategy":                # "": the planner's own choice
            value = str(value) or None
        else:
            value = int(value)
        setattr(Settings, name, value)
    _EPOCH[0] += 1
    old["sm_count"] = old["sm_count"] or 0
    old["l2_bytes"] = old["l2_bytes"] or 0
    old["strategy"] = old["strategy"] or ""
    return old


# ---------------------------------------------------------------- device facts

_DEVICE_FACTS: dict = {}


def _device_fact(ordinal: int, attr: str, default: int) -> int:
    key = (ordinal, attr)
    n = _DEVICE_FACTS.get(key)
    if n is None:
        try:
            n = int(getattr(cuda.gpus[ordinal], attr))
        except Exception:
            n = default
        _DEVICE_FACTS[key] = n
    return n


def sm_count(ordinal: int) -> int:
    if Settings.sm_count:
        return int(Settings.sm_count)
    return 2 if SIM else _device_fact(ordinal, "MULTIPROCESSOR_COUNT", 108)


def l2_bytes(ordinal: int) -> int:
    if Settings.l2_bytes:
        return int(Settings.l2_bytes)
    return 1 << 16 if SIM else _device_fact(ordinal, "L2_CACHE_SIZE", 40 << 20)


# ---------------------------------------------------------------- kernel cache

_DISPATCHERS: dict = {}
_COMPILED: dict = {}
_COMPILE_TIMES: dict = {}
_LAUNCH_CFG: dict = {}
_STREAMS: dict = {}


def compile_times() -> dict:
    """Seconds each kernel specialization took to compile (first call) in this process."""
    return dict(_COMPILE_TIMES)


def _dispatcher(key):
    d = _DISPATCHERS.get(key)
    if d is None:
        op, dtype, block, shuffle, codes, nk, nr = key
        fn = K.make_kernel(op, dtype, block, shuffle, codes, nk, nr)
        d = cuda.jit(fn) if SIM else cuda.jit(fn, launch_bounds=block)
        _DISPATCHERS[key] = d
    return d


def compiled(key, nptr: int, ordinal: int = 0):
    """The numba kernel object of one specialization (compiled for the current
    device): ``.regs`` / ``.max_threads_per_block`` and friends tell its resources."""
    t0 = time.perf_counter()
    kern = _dispatcher(key).compile(K.signature(key[0], key[1], nptr))
    _COMPILE_TIMES.setdefault(key + (nptr,), time.perf_counter() - t0)
    return kern


def _cufunc(key, nptr, ordinal):
    """cuda.core kernel handle of one specialization on one device (fast path)."""
    k = _COMPILED.get((key, nptr, ordinal))
    if k is None:
        kern = compiled(key, nptr, ordinal)
        if getattr(kern, "debug", False) or getattr(kern, "cooperative", False):
            raise RuntimeError("fast launch supports plain kernels only")
        k = kern._codelibrary.get_cufunc().kernel
        _COMPILED[(key, nptr, ordinal)] = k
    return k


# ---------------------------------------------------------------- arguments

class _Arr:
    """A 1-D span of device memory: ``n`` elements of ``dtype`` at ``addr``."""
    __slots__ = ("addr", "n", "dtype", "owner")

    def __init__(self, addr, n, dtype, owner):
        self.addr = addr
        self.n = n
        self.dtype = dtype
        self.owner = owner


def _arr(obj) -> _Arr:
    i = _interop.info(obj)
    return _Arr(i.ptr, i.size, np.dtype(i.dtype if i.dtype != "bfloat16" else "uint16").type,
                obj)


def _to_sim(x):
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    nbytes = x.n * np.dtype(x.dtype).itemsize
    if nbytes == 0:
        return FakeCUDAArray(np.empty(0, x.dtype))
    buf = (ctypes.c_uint8 * nbytes).from_address(x.addr)
    return FakeCUDAArray(np.frombuffer(buf, dtype=x.dtype, count=x.n))


def _to_numba(x):
    desc = {"shape": (x.n,), "strides": None, "typestr": np.dtype(x.dtype).str,
            "data": (x.addr, False), "version": 3}
    return cuda.from_cuda_array_interface(desc, owner=x.owner, sync=False)


def flat(args):
    """Flatten kernel arguments the way numba's _Kernel._prepare_args does."""
    out = []
    for v in args:
        if isinstance(v, _Arr):
            isz = np.dtype(v.dtype).itemsize
            out += (0, 0, v.n, isz, v.addr, v.n, isz)
        elif isinstance(v, tuple):
            out.extend(ctypes.c_int64(int(e)) for e in v)
        elif isinstance(v, float):
            out.append(ctypes.c_double(v))
        else:
            out.append(ctypes.c_int64(int(v)))
    return out


def _stream(handle):
    """The cuda.core Stream of a raw stream handle (cached)."""
    st = _STREAMS.get(handle)
    if st is None:
        from cuda.core import Stream
        st = _STREAMS[handle] = Stream.from_handle(handle)
    return st


_CTX_HANDLE: dict = {}


def _context_guard(ordinal):
    """None when the device's primary context is already current on this thread
    (one driver query), else a context manager that makes it current."""
    try:
        from cuda.bindings import driver as drv
        want = _CTX_HANDLE.get(ordinal)
        if want is None:
            with cuda.gpus[ordinal]:
                want = _CTX_HANDLE[ordinal] = int(drv.cuCtxGetCurrent()[1])
        if int(drv.cuCtxGetCurrent()[1]) == want:
            return None
    except Exception:
        pass
    return cuda.gpus[ordinal]


def _launch_kernel(key, nptr, grid, block, args, ordinal, handle):
    if Settings.trace is not None:
        Settings.trace.append(key[4])
    if SIM:
        disp = _dispatcher(key)
        conv = [_to_sim(v) if isinstance(v, _Arr) else v for v in args]
        disp[grid, block](*conv)
        return
    guard = _context_guard(ordinal)
    if guard is None:
        _launch_device(key, nptr, grid, block, args, ordinal, handle)
    else:
        with guard:
            _launch_device(key, nptr, grid, block, args, ordinal, handle)


def _launch_device(key, nptr, grid, block, args, ordinal, handle):
    if Settings.fast_launch:
        try:
            from cuda.core import launch, LaunchConfig
            kern = _cufunc(key, nptr, ordinal)
            cfg = _LAUNCH_CFG.get((grid, block))
            if cfg is None:
                cfg = _LAUNCH_CFG[(grid, block)] = LaunchConfig(grid=grid, block=block)
            st = _stream(handle)
            fl = flat(args)
        except Exception as e:  # set-up failed: numba's dispatcher from now on
            Settings.fast_launch = False
            Settings.fast_launch_error = repr(e)
        else:
            launch(st, cfg, kern, *fl)
            return
    disp = _dispatcher(key)
    conv = [_to_numba(v) if isinstance(v, _Arr) else v for v in args]
    stream = cuda.external_stream(handle) if handle else 0
    disp[grid, block, stream](*conv)


# ---------------------------------------------------------------- one launch

_DUMMIES: dict = {}


def _dummy(like, dtype):
    """A 1-element array of ``like``'s kind and device, for the workspace
    parameters of launches without ticketed items (never accessed)."""
    key = (like.kind, like.device, dtype)
    d = _DUMMIES.get(key)
    if d is None:
        d = _DUMMIES[key] = _arr(_interop.empty(like, (1,), dtype))
    return d


def launch(lau, key_base, ptrs, tab, like, handle, eps):
    """Run `_plan.Launch` ``lau``: ``key_base`` = (op, dtype, block, shuffle);
    ``ptrs`` the span addresses; ``tab`` the device table (`_Arr`); ``like`` an
    `ArrayInfo` of the call's kind and device (workspace allocation); ``handle``
    the stream."""
    if not lau.nitems:
        return
    op, dtype, block, shuffle = key_base
    key = (op, dtype, block, shuffle, lau.codes, lau.nk, lau.nr)
    acc = np.dtype(K.acc_dtype(dtype)).name
    if lau.npart:
        part = _arr(_interop.empty(like, (lau.npart,), acc))
        sync = _arr(_interop.zeros(like, (lau.nsync,), "int64", handle))
    else:
        part, sync = _dummy(like, acc), _dummy(like, "int64")
    args = (ptrs, tab, part, sync, float(eps), lau.nunits, lau.nindep, lau.nitems)
    _launch_kernel(key, len(ptrs), lau.grid, block, args, like.device[1], handle)


def to_device_table(like, host: np.ndarray) -> _Arr:
    """The int64 item table in device memory of ``like``'s kind and device."""
    return _arr(_interop.to_device(like, host))


# ---------------------------------------------------------------- small helpers

def ascontiguous(a):
    """A C-contiguous copy of GPU array info ``a`` (small per-row arrays of kinds
    without a copy of their own): a strided element copy on a's stream."""
    out = _interop.empty(a, a.shape, a.dtype)
    o = _interop.info(out)
    if o.size == 0:
        return out
    _copy(a, o)
    return out


def _copy(src, dst):
    """dst = src element by element (``dst`` C-contiguous): a strided copy kernel."""
    from ._copy import copy_kernel
    copy_kernel(src, dst, Settings.block, sm_count(src.device[1]),
                0 if SIM else _interop.stream_handle(src))


def empty_cache() -> None:
    """Release the small cached device arrays (dummy workspaces)."""
    _DUMMIES.clear()
