"""Strategy choice, kernel cache and launch (cuda.core fast path, numba fallback).

Strategy choice (``choose``), from the `Layout` alone (``B`` threads per block):

* ``rowlen == 0``                                  -> ``block`` (writes norms / grad_g only)
* v's innermost kept stride is 1 and its innermost
  reduced stride is not (``dim=-1`` style)         -> ``cols`` if that gives at least one
                                                      block per SM, else ``split`` for long
                                                      rows, else ``cols``
* ``rowlen <= 64 / 256 / 1024``                    -> ``group`` with 8 / 16 / 32 lanes a row
* fewer rows than ``2 x SMs`` and ``rowlen >= 16 B`` -> ``split`` into enough chunks
                                                      (>= 16 B elements each) to give
                                                      ~8 blocks per SM
* otherwise                                        -> ``block``

The choice, chunking and block size depend only on the shape and device, so a
given call is bitwise reproducible.

Vector path.  ``block``, ``group`` and ``split`` have ``v*`` variants
(``fwd_vblock`` ...) that move 16 bytes per load/store (``ld.global.v4``; 8
half-type elements, 4 float32, 2 float64) and are used when `_vector_ok` holds:
``Settings.vector`` is on (default on a GPU, off under the simulator), rows are
contiguous in every array of the layout (one reduced dim, stride 1), and every
row starts 16-byte aligned in every array (origin pointer % 16 == 0 and every
kept stride, in bytes, a multiple of 16).  Otherwise the scalar kernels run.
The vector kernels sum in a different (equally fixed) order than the scalar
ones, so the two paths agree to rounding, not bit for bit: a given call is
still bitwise reproducible, because the path depends only on the layout and
the arrays' alignment.  ``split`` chunks are whole multiples of ``block x W``
elements on the vector path, so chunk boundaries stay aligned.

Launch paths.  Kernels are compiled once per (kind, dtype, block, shuffle, sub)
and numba specializes them per (kept dims, reduced dims).  On a GPU the default
path launches the compiled kernel through ``cuda.core.launch`` with flat
arguments built here exactly as numba's own ``_Kernel.launch`` builds them
(array = meminfo 0, parent 0, nitems, itemsize, data pointer, shape, byte
strides; int64 / float64 scalars as ctypes; tuples flattened), skipping numba's
per-call type dispatch and argument conversion.  Set ``WNKERNELS_CUDA_LAUNCH=numba``
to force numba's dispatcher, which is also the fallback if the fast path cannot
be set up, and the only path under the CUDA simulator.  Before a launch the
device's primary context is made current if it is not (one driver query).

Addresses.  ``ArrayInfo.ptr`` of a layout array is the address of its
(row 0, element 0), i.e. with ``layout.offsets`` already applied (the front
end's ``_shift``).  Each array is handed to the kernels as the 1-D span of exactly the
elements the layout touches, plus a base offset into it.
"""

from __future__ import annotations

import ctypes
import os
import time

import numpy as np

from ._numba import cuda, SIM
from . import _interop
from . import _kernels as K

__all__ = ["configure", "choose", "forward", "backward", "ascontiguous", "compile_times",
           "Settings"]


class Settings:
    """Module-wide knobs (tests use them to drive the simulator)."""
    block = 16 if SIM else 256          # threads per block (power of two)
    shuffle = not SIM                   # warp-shuffle reductions (no: shared memory)
    cols_tx = 4 if SIM else 32          # rows per block in the ``cols`` strategy
    fast_launch = (not SIM) and os.environ.get("WNKERNELS_CUDA_LAUNCH", "") != "numba"
    sm_count = None                     # override the device's SM count (tests)
    fast_launch_error = None            # why the fast path was turned off, if it was
    vector = not SIM                    # 16-byte vector kernels where aligned (see above)
    trace = None                        # a list: kernel kinds launched are appended (tests)


def configure(block=None, shuffle=None, cols_tx=None, fast_launch=None, sm_count=None,
              vector=None):
    """Change `Settings` (``None`` leaves a knob as it is); returns the old values."""
    old = dict(block=Settings.block, shuffle=Settings.shuffle, cols_tx=Settings.cols_tx,
               fast_launch=Settings.fast_launch, sm_count=Settings.sm_count,
               vector=Settings.vector)
    if block is not None:
        b = int(block)
        if b < 1 or b & (b - 1) or b > 1024:
            raise ValueError("block must be a power of two in [1, 1024]")
        Settings.block = b
    if shuffle is not None:
        if shuffle and SIM:
            raise ValueError("the CUDA simulator has no warp shuffles")
        Settings.shuffle = bool(shuffle)
    if cols_tx is not None:
        Settings.cols_tx = int(cols_tx)
    if fast_launch is not None:
        Settings.fast_launch = bool(fast_launch) and not SIM
    if sm_count is not None:  # 0 goes back to the device's own count
        Settings.sm_count = int(sm_count) or None
    if vector is not None:
        Settings.vector = bool(vector)
    return old


# ---------------------------------------------------------------- device facts

_SM_COUNT: dict = {}


def _sm_count(ordinal: int) -> int:
    if Settings.sm_count:
        return int(Settings.sm_count)
    if SIM:
        return 2
    n = _SM_COUNT.get(ordinal)
    if n is None:
        try:
            n = int(cuda.gpus[ordinal].MULTIPROCESSOR_COUNT)
        except Exception:
            n = 108
        _SM_COUNT[ordinal] = n
    return n


# ---------------------------------------------------------------- strategy

def choose(layout, block: int, nsm: int):
    """(strategy, sub) for ``layout``: sub is G for group, TX for cols, nchunk for split."""
    nrows, rowlen = layout.nrows, layout.rowlen
    if rowlen == 0:
        return "block", 0
    kin = abs(layout.kept_strides[0][-1]) if layout.kept_shape else 0
    rin = abs(layout.red_strides[0][-1]) if layout.red_shape else 1
    if kin == 1 and rin != 1 and nrows > 1:
        tx = min(Settings.cols_tx, block)
        if -(-nrows // tx) >= nsm or rowlen < 16 * block:
            return "cols", tx
        return "split", _nchunk(nrows, rowlen, block, nsm)
    if rowlen <= 1024:
        g = 8 if rowlen <= 64 else 16 if rowlen <= 256 else 32
        return "group", min(g, block)
    if nrows < 2 * nsm and rowlen >= 16 * block:
        return "split", _nchunk(nrows, rowlen, block, nsm)
    return "block", 0


def _vector_ok(layout, arrays) -> bool:
    """True when the 16-byte vector kernels may run on layout ``arrays`` (ArrayInfo
    in layout order, ``ptr`` at row 0 / element 0): each row is one contiguous
    run (one reduced dim of stride 1) in every array, and starts 16-byte aligned
    in every array (origin % 16 == 0, every kept stride a multiple of 16 bytes)."""
    if not Settings.vector or layout.nrows == 0 or len(layout.red_shape) != 1:
        return False
    if layout.rowlen < 16 // arrays[0].itemsize:
        return False
    for k, a in enumerate(arrays):
        if layout.red_strides[k][0] != 1 or _origin(layout, k, a) % 16:
            return False
        for n, st in zip(layout.kept_shape, layout.kept_strides[k]):
            if n > 1 and (st * a.itemsize) % 16:
                return False
    return True


def _nchunk(nrows, rowlen, block, nsm):
    want = -(-8 * nsm // nrows)                 # ~8 blocks per SM in all
    most = max(rowlen // (16 * block), 1)       # chunks of >= 16 * block elements
    return max(1, min(want, most))


# ---------------------------------------------------------------- kernel cache

_DISPATCHERS: dict = {}
_COMPILED: dict = {}
_COMPILE_TIMES: dict = {}
_LAUNCH_CFG: dict = {}
_STREAMS: dict = {}


def compile_times() -> dict:
    """Seconds each kernel specialization took to compile (first call) in this process."""
    return dict(_COMPILE_TIMES)


def _dispatcher(kind, dtype, block, shuffle, sub):
    key = (kind, dtype, block, shuffle, sub)
    d = _DISPATCHERS.get(key)
    if d is None:
        d = cuda.jit(K.make_kernel(kind, dtype, block, shuffle, sub))
        _DISPATCHERS[key] = d
    return d


def _compiled(kind, dtype, block, shuffle, sub, nk, nr, ordinal):
    """cuda.core kernel handle of one specialization on one device (fast path)."""
    key = (kind, dtype, block, shuffle, sub, nk, nr, ordinal)
    k = _COMPILED.get(key)
    if k is None:
        t0 = time.perf_counter()
        disp = _dispatcher(kind, dtype, block, shuffle, sub)
        kern = disp.compile(K.signature(kind, dtype, nk, nr))
        if getattr(kern, "debug", False) or getattr(kern, "cooperative", False):
            raise RuntimeError("fast launch supports plain kernels only")
        k = kern._codelibrary.get_cufunc().kernel
        _COMPILE_TIMES[key[:-1]] = time.perf_counter() - t0
        _COMPILED[key] = k
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


def _span(a, st, lo, n):
    """Span of array info ``a`` from element ``lo`` (relative to a.ptr), n elements."""
    return _Arr(a.ptr + lo * a.itemsize, n, st, a.obj)


def _extent(a):
    """(lo, count) of the elements that ``a`` touches, relative to ``a.ptr``."""
    lo = hi = 0
    for n, s in zip(a.shape, a.strides):
        if n == 0:
            return 0, 0
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi - lo + 1


def _array_span(a, st):
    lo, n = _extent(a)
    return _span(a, st, lo, n), -lo


def _rows_span(a, st, nrows, stride):
    """Span of ``nrows`` elements of ``a`` read at ``ptr + r * stride``."""
    lo = min(0, (nrows - 1) * stride)
    return _span(a, st, lo, abs((nrows - 1) * stride) + 1), -lo


def _origin(layout, k, a):
    """Address of (row 0, element 0) of layout array ``k``: the front end
    hands every layout array over with ``ptr`` already moved there
    (``_frontend._shift`` applies ``layout.offsets``)."""
    return a.ptr


def _layout_span(layout, k, a, st):
    """(span, base) of layout array ``k``: every element the layout touches."""
    org = _origin(layout, k, a)
    if layout.nrows == 0 or layout.rowlen == 0:
        return _Arr(org, 0, st, a.obj), 0
    lo = hi = 0
    for n, s in zip(layout.kept_shape + layout.red_shape,
                    layout.kept_strides[k] + layout.red_strides[k]):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return _Arr(org + lo * a.itemsize, hi - lo + 1, st, a.obj), -lo


def _pad(shape, strides_list):
    if shape:
        return tuple(shape), [tuple(s) for s in strides_list]
    return (1,), [(0,) for _ in strides_list]


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


def _flat(args):
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


class _Launcher:
    """One call's launch context: device, stream, and the path to use."""

    def __init__(self, a):
        self.ordinal = a.device[1]
        self.handle = 0 if SIM else _interop.stream_handle(a)
        self.nsm = _sm_count(self.ordinal)
        self.block = Settings.block
        self.shuffle = Settings.shuffle

    def __call__(self, kind, dtype, sub, grid, args, nk, nr):
        grid = max(int(grid), 1)
        if Settings.trace is not None:
            Settings.trace.append(kind)
        key = (kind, dtype, self.block, self.shuffle, sub)
        if SIM:
            disp = _dispatcher(*key)
            conv = [_to_sim(v) if isinstance(v, _Arr) else v for v in args]
            disp[grid, self.block](*conv)
            return
        guard = _context_guard(self.ordinal)
        if guard is None:
            self._launch(key, grid, args, nk, nr)
        else:
            with guard:
                self._launch(key, grid, args, nk, nr)

    def _launch(self, key, grid, args, nk, nr):
        if Settings.fast_launch:
            try:
                from cuda.core import launch, LaunchConfig, Stream
                kern = _compiled(*key, nk, nr, self.ordinal)
                cfg = _LAUNCH_CFG.get((grid, self.block))
                if cfg is None:
                    cfg = LaunchConfig(grid=grid, block=self.block)
                    _LAUNCH_CFG[(grid, self.block)] = cfg
                st = _STREAMS.get(self.handle)
                if st is None:
                    st = Stream.from_handle(self.handle)
                    _STREAMS[self.handle] = st
                flat = _flat(args)
            except Exception as e:  # set-up failed: numba's dispatcher from now on
                Settings.fast_launch = False
                Settings.fast_launch_error = repr(e)
            else:
                launch(st, cfg, kern, *flat)
                return
        disp = _dispatcher(*key)
        t0 = time.perf_counter()
        conv = [_to_numba(v) if isinstance(v, _Arr) else v for v in args]
        stream = cuda.external_stream(self.handle) if self.handle else 0
        disp[grid, self.block, stream](*conv)
        _COMPILE_TIMES.setdefault(key + (nk, nr), time.perf_counter() - t0)


def _grid_rows(strategy, sub, nrows, block, nsm):
    cap = 16 * nsm
    if strategy == "group":
        return min(-(-nrows // (block // sub)), cap)
    if strategy == "cols":
        return min(-(-nrows // sub), cap)
    return min(nrows, cap)


def _split_plan(layout, block, nchunk, vec=1):
    """(nchunk, chunk): chunks of whole block-strides (of ``vec``-element vectors)."""
    step = block * vec
    chunk = -(-layout.rowlen // nchunk)
    chunk = -(-chunk // step) * step
    nchunk = -(-layout.rowlen // chunk)
    return nchunk, chunk


# ---------------------------------------------------------------- entry points

def forward(layout, v, g, g_stride, w, norms, eps, strategy=None):
    L = _Launcher(v)
    dt = v.dtype
    st = K.storage_dtype(dt)
    nt = K.norm_dtype(dt)
    nrows, rowlen = layout.nrows, layout.rowlen
    V, vb = _layout_span(layout, 0, v, st)
    W, wb = _layout_span(layout, 1, w, st)
    G, gb = _rows_span(g, st, nrows, g_stride)
    N, nb = _rows_span(norms, nt, nrows, 1)
    ks, (vks, wks) = _pad(layout.kept_shape, layout.kept_strides[:2])
    rs, (vrs, wrs) = _pad(layout.red_shape, layout.red_strides[:2])
    nk, nr = len(ks), len(rs)
    strat, sub = _pick(layout, L, strategy)
    vec = strat != "cols" and _vector_ok(layout, (v, w))
    x = "v" if vec else ""
    eps = float(eps)
    if strat == "split":
        nchunk, chunk = _split_plan(layout, L.block, sub, K.vec_width(dt) if vec else 1)
        P = _workspace(v, dt, nrows * nchunk)
        L(f"fwd_{x}part", dt, 0, nrows * nchunk,
          (V, vb, P, nrows, rowlen, nchunk, chunk, ks, vks, rs, vrs), nk, nr)
        L(f"fwd_{x}finish", dt, 0, nrows * nchunk,
          (V, vb, W, wb, G, gb, g_stride, N, P, eps, nrows, rowlen, nchunk, chunk,
           ks, vks, wks, rs, vrs, wrs), nk, nr)
        return
    grid = _grid_rows(strat, sub, nrows, L.block, L.nsm)
    L(f"fwd_{x}{strat}", dt, sub, grid,
      (V, vb, W, wb, G, gb, g_stride, N, eps, nrows, rowlen, ks, vks, wks, rs, vrs, wrs),
      nk, nr)


def backward(layout, grad_w, v, g, g_stride, norms, norms_stride, grad_v, grad_g,
             strategy=None):
    L = _Launcher(v)
    dt = v.dtype
    st = K.storage_dtype(dt)
    nt = K.norm_dtype(dt)
    nrows, rowlen = layout.nrows, layout.rowlen
    V, vb = _layout_span(layout, 0, v, st)
    GW, gwb = _layout_span(layout, 1, grad_w, st)
    GV, gvb = _layout_span(layout, 2, grad_v, st)
    G, gb = _rows_span(g, st, nrows, g_stride)
    N, nb = _rows_span(norms, nt, nrows, norms_stride)
    GG, ggb = _rows_span(grad_g, st, nrows, 1)
    ks, (vks, gwks, gvks) = _pad(layout.kept_shape, layout.kept_strides[:3])
    rs, (vrs, gwrs, gvrs) = _pad(layout.red_shape, layout.red_strides[:3])
    nk, nr = len(ks), len(rs)
    strat, sub = _pick(layout, L, strategy)
    vec = strat != "cols" and _vector_ok(layout, (v, grad_w, grad_v))
    x = "v" if vec else ""
    if strat == "split":
        nchunk, chunk = _split_plan(layout, L.block, sub, K.vec_width(dt) if vec else 1)
        P = _workspace(v, dt, nrows * nchunk)
        L(f"bwd_{x}part", dt, 0, nrows * nchunk,
          (GW, gwb, V, vb, P, nrows, rowlen, nchunk, chunk, ks, gwks, vks, rs, gwrs, vrs),
          nk, nr)
        L(f"bwd_{x}finish", dt, 0, nrows * nchunk,
          (GW, gwb, V, vb, GV, gvb, G, gb, g_stride, N, nb, norms_stride, GG, P,
           nrows, rowlen, nchunk, chunk, ks, gwks, vks, gvks, rs, gwrs, vrs, gvrs),
          nk, nr)
        return
    grid = _grid_rows(strat, sub, nrows, L.block, L.nsm)
    L(f"bwd_{x}{strat}", dt, sub, grid,
      (GW, gwb, V, vb, GV, gvb, G, gb, g_stride, N, nb, norms_stride, GG,
       nrows, rowlen, ks, gwks, vks, gvks, rs, gwrs, vrs, gvrs), nk, nr)


def ascontiguous(a):
    """A C-contiguous copy of array info ``a`` (of a kind without its own copy)."""
    out = _interop.empty(a, a.shape, a.dtype)
    o = _interop.info(out)
    n = o.size
    if n == 0:
        return out
    L = _Launcher(a)
    st = K.storage_dtype(a.dtype)
    S, sb = _array_span(a, st)
    D, db = _array_span(o, st)
    shape, (ss, ds) = _pad(tuple(a.shape), [tuple(a.strides), tuple(o.strides)])
    grid = min(-(-n // L.block), 16 * L.nsm)
    L("copy", a.dtype, 0, grid, (S, sb, D, db, n, shape, ss, ds), len(shape), 0)
    return out


def _pick(layout, L, strategy):
    if strategy is None:
        return choose(layout, L.block, L.nsm)
    name, _, arg = strategy.partition(":")
    if name not in ("block", "group", "cols", "split"):
        raise ValueError(f"unknown strategy {strategy!r}")
    if name == "group":
        return name, int(arg) if arg else min(8, L.block)
    if name == "cols":
        return name, int(arg) if arg else min(Settings.cols_tx, L.block)
    if name == "split":
        return name, int(arg) if arg else _nchunk(layout.nrows, max(layout.rowlen, 1),
                                                  L.block, L.nsm)
    return name, 0


def _workspace(v, dtype, n):
    """Per-(row, chunk) partial sums, allocated like v (same device and stream)."""
    acc = np.dtype(K.acc_dtype(dtype)).name
    arr = _interop.empty(v, (n,), acc)
    a = _interop.info(arr)
    a.base = arr
    return _Arr(a.ptr, n, K.acc_dtype(dtype), arr)
