"""Strategy choice, kernel cache and launch (cuda.core fast path, numba fallback).

Strategy choice: `plan` (its docstring has the rules).  In short: rows that are
one contiguous run in every array, at the same 16-byte phase, move 16 bytes
per access (``ld.global.v4``: 8 half-type elements, 4 float32, 2 float64) --
``regs`` when a row fits in the registers of its lanes (every element read
once), else ``stream``; a kept axis that is the contiguous one runs ``cols``
(16-byte column vectors where aligned); anything else runs the scalar kernels
(``group`` / ``split`` / ``block``).  The plan depends only on the layout, the
arrays' alignment and the device, so a call is bitwise reproducible; the
vector and scalar kernels sum in different (fixed) orders, so they agree to
rounding, not bit for bit.

Ticketed kernels (``stream``, ``cols``) take a ``part`` workspace (partial sums
and per-row scales) and a ``sync`` workspace (ticket / arrival counters, left
zeroed by every launch), both kept per (device, stream): see `_workspace`.

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
import threading
import time

import numpy as np

from ._numba import cuda, SIM
from . import _interop
from . import _kernels as K
from ._vec import width

__all__ = ["configure", "plan", "forward", "backward", "ascontiguous", "compile_times",
           "empty_cache", "Settings"]


class Settings:
    """Module-wide knobs (tests use them to drive the simulator; on a GPU they are
    the tuning points of the strategies)."""
    block = 16 if SIM else 256          # threads per block (power of two)
    max_block = 8 if SIM else 1024      # largest block of the ``regs`` strategy
    max_regs = 8                        # most 16-byte vectors a lane holds (``regs``)
    shuffle = not SIM                   # warp-shuffle reductions (no: shared memory)
    cols_tx = 4 if SIM else 32          # most threads across the columns (``cols``)
    cols_steps = 4                      # reduced indices per thread per ``cols`` item
    stream_vectors = 2                  # 16-byte vectors per thread per ``stream`` item
    l2_bytes = None                     # override the device's L2 size (tests)
    fast_launch = (not SIM) and os.environ.get("WNKERNELS_CUDA_LAUNCH", "") != "numba"
    sm_count = None                     # override the device's SM count (tests)
    fast_launch_error = None            # why the fast path was turned off, if it was
    vector = not SIM                    # 16-byte vector kernels where possible (see above)
    trace = None                        # a list: kernel kinds launched are appended (tests)


_KNOBS = ("block", "max_block", "max_regs", "shuffle", "cols_tx", "cols_steps",
          "stream_vectors", "l2_bytes", "fast_launch", "sm_count", "vector")


def configure(**knobs):
    """Change `Settings` (a knob given as ``None`` is left as it is); returns the
    old values of every knob (``configure(**old)`` restores them)."""
    bad = set(knobs) - set(_KNOBS)
    if bad:
        raise TypeError(f"unknown knob(s): {sorted(bad)}")
    old = {k: getattr(Settings, k) for k in _KNOBS}
    for name in ("block", "max_block"):
        b = knobs.get(name)
        if b is not None and (int(b) < 1 or int(b) & (int(b) - 1) or int(b) > 1024):
            raise ValueError(f"{name} must be a power of two in [1, 1024]")
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
        else:
            value = int(value)
        setattr(Settings, name, value)
    old["sm_count"] = old["sm_count"] or 0
    old["l2_bytes"] = old["l2_bytes"] or 0
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


def _sm_count(ordinal: int) -> int:
    if Settings.sm_count:
        return int(Settings.sm_count)
    return 2 if SIM else _device_fact(ordinal, "MULTIPROCESSOR_COUNT", 108)


def _l2_bytes(ordinal: int) -> int:
    if Settings.l2_bytes:
        return int(Settings.l2_bytes)
    return 1 << 16 if SIM else _device_fact(ordinal, "L2_CACHE_SIZE", 40 << 20)


# ---------------------------------------------------------------- strategy

class Plan:
    """How one call runs: ``name`` (strategy), ``sub`` (its compile-time shape),
    ``block`` (threads per block), ``grid``; ``ph`` (row phase, vector rows);
    ``nchunk`` / ``chunk`` / ``lag`` (ticketed kernels)."""
    __slots__ = ("name", "sub", "block", "grid", "ph", "nchunk", "chunk", "lag")

    def __init__(self, name, sub=0, block=0, grid=1, ph=0, nchunk=1, chunk=0, lag=0):
        self.name, self.sub, self.block, self.grid = name, sub, block, grid
        self.ph, self.nchunk, self.chunk, self.lag = ph, nchunk, chunk, lag

    def __repr__(self):
        return (f"Plan({self.name!r}, sub={self.sub}, block={self.block}, grid={self.grid}, "
                f"ph={self.ph}, nchunk={self.nchunk}, chunk={self.chunk}, lag={self.lag})")


def _pow2(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _is_cols(layout) -> bool:
    """Kept axis contiguous (``dim=-1`` style): coalesce along it."""
    kin = abs(layout.kept_strides[0][-1]) if layout.kept_shape else 0
    rin = abs(layout.red_strides[0][-1]) if layout.red_shape else 1
    return kin == 1 and rin != 1 and layout.nrows > 1


def _row_phase(layout, arrays):
    """The phase (element offset from a 16-byte boundary, in elements) of array 0's
    span base when the 16-byte row kernels (``regs``, ``stream``) can run, else
    None.  They can when every row is one contiguous run (one reduced dim of
    stride 1) in every array, and every row starts at the same phase in every
    array: origins congruent mod 16 bytes (and element-aligned), kept strides
    congruent mod 16 bytes.  Each row then starts with ``< W`` scalar head
    elements up to its first 16-byte boundary (computed per row in the kernel)."""
    if not Settings.vector or layout.nrows == 0 or len(layout.red_shape) != 1:
        return None
    isz = arrays[0].itemsize
    W = width(isz)
    if layout.rowlen < W:
        return None
    o0 = _origin(layout, 0, arrays[0])
    for k, a in enumerate(arrays):
        o = _origin(layout, k, a)
        if layout.red_strides[k][0] != 1 or o % isz or (o - o0) % 16:
            return None
        for n, st, st0 in zip(layout.kept_shape, layout.kept_strides[k],
                              layout.kept_strides[0]):
            if n > 1 and ((st - st0) * isz) % 16:
                return None
    lo, _ = _layout_extent(layout, 0)
    return ((o0 + lo * isz) // isz) % W


def _cols_vector(layout, arrays) -> bool:
    """``cols`` may move 16-byte vectors of columns: one kept dim of stride 1, every
    reduced stride a multiple of the vector width, 16-byte aligned origins."""
    if not Settings.vector or len(layout.kept_shape) != 1:
        return False
    isz = arrays[0].itemsize
    W = width(isz)
    if layout.nrows < W:
        return False
    for k, a in enumerate(arrays):
        if layout.kept_strides[k][0] != 1 or _origin(layout, k, a) % 16:
            return False
        if any(s % W for s in layout.red_strides[k]):
            return False
    return True


def _lanes(rowlen, block):
    """Lanes per row for short rows (``group``, ``regs``): 8 / 16 / 32 for rows of
    <= 64 / 256 / 1024 elements, at most the block."""
    return min(8 if rowlen <= 64 else 16 if rowlen <= 256 else 32, block)


def _regs_shape(layout, W, nsm, block):
    """(G, R, block) for ``regs`` -- G lanes per row holding R vectors each -- or None
    when a row does not fit in registers (or too few rows to fill the GPU)."""
    rowlen, nrows = layout.rowlen, layout.nrows
    nv = _cdiv(rowlen, W)
    if rowlen <= 1024:
        G = _lanes(rowlen, block)
        R = _pow2(_cdiv(nv, G))
        if G >= W - 1 and R <= Settings.max_regs:
            return G, R, block
    if nrows >= nsm or nrows * rowlen <= 2 * block * W * Settings.max_regs * nsm:
        top = Settings.max_block
        B = min(max(_pow2(_cdiv(nv, 4)), min(128, top)), top)
        R = _pow2(_cdiv(nv, B))
        if B >= W - 1 and R <= Settings.max_regs:
            return B, R, B
    return None


def _ticket_plan(name, sub, B, nparts, nchunk, chunk, item_bytes, bwd, nsm, l2):
    """Grid and lag of a ticketed kernel: ``lag`` parts run ahead of the first
    finish, sized so a chunk's re-read (``lag`` parts and finishes later) still
    finds it in L2 -- and never less than ``nchunk - 1``, so a finish is always
    ticketed after all of its row's parts."""
    traffic = item_bytes * (3 if bwd else 2)  # bytes through L2 per part + finish
    lag = int(0.5 * l2 // max(traffic, 1))
    lag = min(max(lag, nchunk - 1), nparts)
    grid = min(2 * nparts, nsm * max(1, 2048 // B))
    return Plan(name, sub, B, grid, nchunk=nchunk, chunk=chunk, lag=lag)


def plan(layout, arrays, nsm, l2, strategy=None, bwd=False):
    """The `Plan` of one call on layout ``arrays`` (ArrayInfo in layout order).

    Default choice (``B`` = ``Settings.block``):

    * ``rowlen == 0``                         -> ``block`` (writes norms / grad_g only)
    * kept axis contiguous (``dim=-1`` style) -> ``cols`` (16-byte column vectors
                                                 where aligned)
    * rows contiguous, same phase everywhere  -> ``regs`` if a row fits in the
                                                 registers of G lanes (8 / 16 / 32 lanes
                                                 for rows <= 64 / 256 / 1024, else a
                                                 block of up to 1024 threads, <= 8
                                                 vectors a lane) and there are enough
                                                 rows; else ``stream``
    * otherwise (scalar access)               -> ``group`` (rows <= 1024), ``split``
                                                 (fewer than 2 x SMs long rows),
                                                 else ``block``

    ``strategy`` (tests, benchmarks) forces ``block``, ``group[:G]``, ``split[:n]``,
    ``cols[:TX]``, ``regs[:G:R]`` or ``stream``.  The plan depends only on the
    layout, the arrays' alignment and the device, so a call is bitwise
    reproducible.
    """
    B = Settings.block
    nrows, rowlen = layout.nrows, layout.rowlen
    isz = arrays[0].itemsize
    W = width(isz)
    name, _, arg = (strategy or "").partition(":")
    if name and name not in ("block", "group", "cols", "split", "regs", "stream"):
        raise ValueError(f"unknown strategy {strategy!r}")
    if rowlen == 0 or nrows == 0:
        return Plan("block", 0, B, max(min(nrows, 16 * nsm), 1))
    ph = _row_phase(layout, arrays) if name in ("", "regs", "stream") else None
    if name in ("regs", "stream") and ph is None:
        raise ValueError(f"strategy {name!r} needs contiguous rows in the same 16-byte "
                         "phase in every array (and the vector kernels enabled)")
    regs = None
    if name == "regs":
        if arg:
            G, R = (int(x) for x in arg.split(":"))
            regs = G, R, (G if G > 32 else B)
        else:
            regs = _regs_shape(layout, W, nsm, B)
            if regs is None:
                raise ValueError("strategy 'regs': the rows do not fit in registers")
    elif not name:
        if _is_cols(layout):
            name = "cols"
        elif ph is not None:
            regs = _regs_shape(layout, W, nsm, B)
            name = "regs" if regs else "stream"
        elif rowlen <= 1024:
            name = "group"
        elif nrows < 2 * nsm and rowlen >= 16 * B:
            name = "split"
        else:
            name = "block"
    if name == "regs":
        G, R, BR = regs
        rpb = BR // G
        return Plan("regs", (G, R), BR, min(_cdiv(nrows, rpb), 16 * nsm), ph=ph)
    if name == "stream":
        chunk = B * W * Settings.stream_vectors
        nchunk = _cdiv(rowlen, chunk)
        p = _ticket_plan("stream", 0, B, nrows * nchunk, nchunk, chunk, chunk * isz, bwd,
                         nsm, l2)
        p.ph = ph
        return p
    if name == "cols":
        VW = W if _cols_vector(layout, arrays) else 1
        TX = int(arg) if arg else min(Settings.cols_tx, B, max(128 // (VW * isz), 1),
                                      _pow2(_cdiv(nrows, VW)))
        chunk = (B // TX) * Settings.cols_steps
        nchunk = _cdiv(rowlen, chunk)
        ntile = _cdiv(nrows, TX * VW)
        return _ticket_plan("cols", (TX, VW), B, ntile * nchunk, nchunk, chunk,
                            chunk * TX * VW * isz, bwd, nsm, l2)
    if name == "group":
        G = int(arg) if arg else _lanes(rowlen, B)
        return Plan("group", G, B, min(_cdiv(nrows, B // G), 16 * nsm))
    if name == "split":
        n = int(arg) if arg else _nchunk(nrows, rowlen, B, nsm)
        nchunk, chunk = _split_plan(rowlen, B, n)
        return Plan("split", 0, B, nrows * nchunk, nchunk=nchunk, chunk=chunk)
    return Plan("block", 0, B, min(nrows, 16 * nsm))


def _nchunk(nrows, rowlen, block, nsm):
    want = _cdiv(8 * nsm, nrows)                # ~8 blocks per SM in all
    most = max(rowlen // (16 * block), 1)       # chunks of >= 16 * block elements
    return max(1, min(want, most))


def _split_plan(rowlen, block, nchunk):
    """(nchunk, chunk): chunks of whole block-strides."""
    chunk = _cdiv(_cdiv(rowlen, nchunk), block) * block
    return _cdiv(rowlen, chunk), chunk


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


def _layout_extent(layout, k):
    """(lo, count): the elements of layout array ``k``, relative to its origin."""
    lo = hi = 0
    for n, s in zip(layout.kept_shape + layout.red_shape,
                    layout.kept_strides[k] + layout.red_strides[k]):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi - lo + 1


def _layout_span(layout, k, a, st):
    """(span, base) of layout array ``k``: every element the layout touches."""
    org = _origin(layout, k, a)
    if layout.nrows == 0 or layout.rowlen == 0:
        return _Arr(org, 0, st, a.obj), 0
    lo, n = _layout_extent(layout, k)
    return _Arr(org + lo * a.itemsize, n, st, a.obj), -lo


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


def _flat(args, where=None):
    """Flatten kernel arguments the way numba's _Kernel._prepare_args does.  With
    ``where`` a list, the flat index of each argument's value (an array's data
    pointer, a scalar; None for tuples) is appended to it."""
    out = []
    for v in args:
        if where is not None:
            where.append(len(out) + 4 if isinstance(v, _Arr) else
                         None if isinstance(v, tuple) else len(out))
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


class _Launcher:
    """One call's launch context: device, stream, and the path to use."""

    def __init__(self, a=None, ordinal=0, handle=0):
        if a is not None:
            ordinal = a.device[1]
            handle = 0 if SIM else _interop.stream_handle(a)
        self.ordinal = ordinal
        self.handle = handle
        self.nsm = _sm_count(ordinal)
        self.block = Settings.block
        self.shuffle = Settings.shuffle

    def __call__(self, kind, dtype, sub, grid, args, nk, nr, block=None):
        grid = max(int(grid), 1)
        if Settings.trace is not None:
            Settings.trace.append((kind, sub))
        key = (kind, dtype, block or self.block, self.shuffle, sub)
        if SIM:
            disp = _dispatcher(*key)
            conv = [_to_sim(v) if isinstance(v, _Arr) else v for v in args]
            disp[grid, key[2]](*conv)
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
                from cuda.core import launch, LaunchConfig
                kern = _compiled(*key, nk, nr, self.ordinal)
                cfg = _LAUNCH_CFG.get((grid, key[2]))
                if cfg is None:
                    cfg = LaunchConfig(grid=grid, block=key[2])
                    _LAUNCH_CFG[(grid, key[2])] = cfg
                st = _stream(self.handle)
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
        disp[grid, key[2], stream](*conv)
        _COMPILE_TIMES.setdefault(key + (nk, nr), time.perf_counter() - t0)


# ---------------------------------------------------------------- entry points

def _plan_for(layout, arrays, L, strategy, bwd):
    return plan(layout, arrays, L.nsm, _l2_bytes(L.ordinal), strategy, bwd)


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
    p = _plan_for(layout, (v, w), L, strategy, False)
    eps = float(eps)
    head = (V, vb, W, wb, G, gb, g_stride, N, eps, nrows, rowlen)
    if p.name == "regs":
        L("fwd_regs", dt, p.sub, p.grid, head + (p.ph, ks, vks, wks), nk, 1, p.block)
    elif p.name == "stream":
        P, Y = _workspace(L, v, dt, nrows * p.nchunk + nrows, nrows)
        L("fwd_stream", dt, 0, p.grid, head + (p.ph, ks, vks, wks, P, Y, p.nchunk, p.chunk,
                                               p.lag), nk, 1, p.block)
    elif p.name == "cols":
        cb = p.sub[0] * p.sub[1]
        P, Y = _workspace(L, v, dt, _cdiv(nrows, cb) * p.nchunk * cb + nrows,
                          _cdiv(nrows, cb))
        L("fwd_cols", dt, p.sub, p.grid, head + (ks, vks, wks, rs, vrs, wrs, P, Y, p.nchunk,
                                                 p.chunk, p.lag), nk, nr, p.block)
    elif p.name == "split":
        P, _ = _workspace(L, v, dt, nrows * p.nchunk, 0)
        L("fwd_part", dt, 0, p.grid,
          (V, vb, P, nrows, rowlen, p.nchunk, p.chunk, ks, vks, rs, vrs), nk, nr)
        L("fwd_finish", dt, 0, p.grid,
          (V, vb, W, wb, G, gb, g_stride, N, P, eps, nrows, rowlen, p.nchunk, p.chunk,
           ks, vks, wks, rs, vrs, wrs), nk, nr)
    else:
        L(f"fwd_{p.name}", dt, p.sub, p.grid, head + (ks, vks, wks, rs, vrs, wrs), nk, nr)


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
    p = _plan_for(layout, (v, grad_w, grad_v), L, strategy, True)
    head = (GW, gwb, V, vb, GV, gvb, G, gb, g_stride, N, nb, norms_stride, GG, nrows, rowlen)
    if p.name == "regs":
        L("bwd_regs", dt, p.sub, p.grid, head + (p.ph, ks, gwks, vks, gvks), nk, 1, p.block)
    elif p.name == "stream":
        P, Y = _workspace(L, v, dt, nrows * p.nchunk + 2 * nrows, nrows)
        L("bwd_stream", dt, 0, p.grid, head + (p.ph, ks, gwks, vks, gvks, P, Y, p.nchunk,
                                               p.chunk, p.lag), nk, 1, p.block)
    elif p.name == "cols":
        cb = p.sub[0] * p.sub[1]
        P, Y = _workspace(L, v, dt, _cdiv(nrows, cb) * p.nchunk * cb + 2 * nrows,
                          _cdiv(nrows, cb))
        L("bwd_cols", dt, p.sub, p.grid, head + (ks, gwks, vks, gvks, rs, gwrs, vrs, gvrs,
                                                 P, Y, p.nchunk, p.chunk, p.lag),
          nk, nr, p.block)
    elif p.name == "split":
        P, _ = _workspace(L, v, dt, nrows * p.nchunk, 0)
        L("bwd_part", dt, 0, p.grid,
          (GW, gwb, V, vb, P, nrows, rowlen, p.nchunk, p.chunk, ks, gwks, vks, rs, gwrs, vrs),
          nk, nr)
        L("bwd_finish", dt, 0, p.grid,
          (GW, gwb, V, vb, GV, gvb, G, gb, g_stride, N, nb, norms_stride, GG, P,
           nrows, rowlen, p.nchunk, p.chunk, ks, gwks, vks, gvks, rs, gwrs, vrs, gvrs),
          nk, nr)
    else:
        L(f"bwd_{p.name}", dt, p.sub, p.grid, head + (ks, gwks, vks, gvks, rs, gwrs, vrs, gvrs),
          nk, nr)


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
    grid = min(_cdiv(n, L.block), 16 * L.nsm)
    L("copy", a.dtype, 0, grid, (S, sb, D, db, n, shape, ss, ds), len(shape), 0)
    return out


# ---------------------------------------------------------------- workspaces

_WORKSPACES: dict = {}
_PER_THREAD_STREAM = 2  # CU_STREAM_PER_THREAD


def _workspace(L, v, dtype, npart, nsync):
    """(part, sync) spans for one launch on L's device and stream.

    ``part``: ``npart`` accumulators (partial sums, then per-row scales);
    ``sync``: ``2 + nsync`` int64 counters, all zero between launches (the
    ticketed kernels leave them so; a new one is zeroed by a kernel on the
    stream).  Both are kept per (device, stream) and grown as needed: launches
    on one stream are ordered, so reusing them there is safe; other streams get
    their own.  `empty_cache` drops them.
    """
    key = (L.ordinal, L.handle)
    if L.handle == _PER_THREAD_STREAM:  # a different stream in every host thread
        key += (threading.get_ident(),)
    ws = _WORKSPACES.setdefault(key, {})
    acc = np.dtype(K.acc_dtype(dtype)).name
    part = ws.get(acc)
    if part is None or part.n < npart:
        part = ws[acc] = _alloc(v, max(npart, 2 * part.n if part else 0, 1024), acc)
    sync = ws.get("sync")
    if nsync and (sync is None or sync.n < 2 + nsync):
        sync = ws["sync"] = _alloc(v, max(2 + nsync, 2 * sync.n if sync else 0, 1024), "int64")
        L("zero", dtype, 0, min(_cdiv(sync.n, L.block), 16 * L.nsm), (sync, sync.n), 1, 0,
)
    return part, sync


def _alloc(v, n, dtype):
    if not isinstance(v, _interop.ArrayInfo):  # a replayed call's array object
        v = _interop.info(v)
    arr = _interop.empty(v, (n,), dtype)
    return _Arr(_interop.info(arr).ptr, n, np.dtype(dtype).type, arr)


def empty_cache() -> None:
    """Release the per-stream workspaces (they are re-made on the next call)."""
    _WORKSPACES.clear()
