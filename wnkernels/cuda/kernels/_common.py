"""What every GPU strategy shares: the dtype table, the item table, the math.

The math (per row r; the same formulas and precision as the C kernels)::

    forward   norm  = NT(sqrt(float64(sum v^2) + eps))      (NT: the norms' type)
              scale = C(g) / C(norm)                        (C: the compute type)
              w     = store(load(v) * scale)
    row scale scale = float64(g) / float64(norm), rounded once to the storage type
    backward  inv   = 1 / float64(norm)
              gg    = float64(sum grad_w v) * inv           -> grad_g = store(C(gg))
              a     = C(float64(g) * inv)
              b     = C(a64 * gg * inv)                     (a64: a before rounding)
              grad_v = store(a * load(grad_w) - b * load(v))

`fwd_scalars` / `bwd_scalars` / `scale_out` are the only place these are
written; every strategy calls them.  The sums themselves are accumulated in ``A``:

    dtype     storage  A        C        norms
    float16   float16  float32  float32  float32
    bfloat16  uint16   float32  float32  float32   (bf16->f32 is ``u << 16``;
                                                     f32->bf16 rounds to nearest even)
    float32   float32  float64  float32  float32   (1e-6 relative norms for long rows)
    float64   float64  float64  float64  float64

A dtype is added here (`TABLE`) and nowhere else in the GPU backend.

The item table.  A launch runs a table of items (one per weight; a single call
is a table of one).  Item ``i``'s arrays arrive as kernel parameters (``ptrs``:
``NPA`` span addresses per item, in `ROLES` order), everything else in an int64
device array ``tab``: ``TS`` fields per item, laid out by `Fields`.  Each array
is a 1-D span of its storage type from its lowest touched element; element
(row ``r``, reduced index ``j``) of layout array ``a`` is at
``base_a + off(r; kept shape, kept strides_a) + off(j; red shape, red strides_a)``
with ``off`` the mixed-radix decomposition of a flat index dotted with signed
element strides (dims padded to the kernel's ``NK`` / ``NR`` with size-1
dims, which add nothing).
"""

from __future__ import annotations

import math
import time

import numpy as np

from .._numba import cuda as _numba_cuda, SIM, types
from .._vec import width

__all__ = ["cuda", "DTYPES", "TABLE", "FORWARD", "BACKWARD", "ROW_SCALE", "ROLES", "LAYOUT",
           "Fields", "storage_dtype", "acc_dtype", "norm_dtype", "compute_dtype",
           "vec_width", "device", "quiet", "Env", "decode", "exec_source"]

# ---------------------------------------------------------------- the dtype table

# dtype: (storage, accumulation, compute, norms)
TABLE = {
    "float16": (np.float16, np.float32, np.float32, np.float32),
    "bfloat16": (np.uint16, np.float32, np.float32, np.float32),
    "float32": (np.float32, np.float64, np.float32, np.float32),
    "float64": (np.float64, np.float64, np.float64, np.float64),
}
DTYPES = tuple(TABLE)


def storage_dtype(dtype: str):
    return TABLE[dtype][0]


def acc_dtype(dtype: str):
    return TABLE[dtype][1]


def compute_dtype(dtype: str):
    return TABLE[dtype][2]


def norm_dtype(dtype: str):
    return TABLE[dtype][3]


def vec_width(dtype: str) -> int:
    """Elements per 16-byte vector of ``dtype``'s storage type (8, 8, 4, 2)."""
    return width(np.dtype(storage_dtype(dtype)).itemsize)


# ---------------------------------------------------------------- operations, roles

# Operation codes (wnkernels._planner's, csrc/wn.h's).
FORWARD, BACKWARD, ROW_SCALE = 0, 1, 2
# The arrays of an item, in ``ptrs`` order (row scale's per-row "scale" output
# stands where the forward's w does, so both unpack their spans alike).
ROLES = {FORWARD: ("v", "w", "g", "norms"),
         ROW_SCALE: ("v", "scale", "g", "norms"),
         BACKWARD: ("grad_w", "v", "grad_v", "g", "norms", "grad_g")}
# The layout arrays (rows x elements, strided) of each op, in layout order, by role
# (row scale: the forward's layout; its "w" is never written, nor passed).
LAYOUT = {FORWARD: ("v", "w"), ROW_SCALE: ("v", "w"),
          BACKWARD: ("v", "grad_w", "grad_v")}


class Fields:
    """Positions in an item's ``tab`` record for ``op`` and dims (nk, nr)."""
    CODE, NROWS, ROWLEN, GS, NS, U0, NU, LANES, PH, NCHUNK, CHUNK, LAG, POFF, SOFF = range(14)
    HEADER = 16

    def __init__(self, op: int, nk: int, nr: int):
        self.op, self.nk, self.nr = op, nk, nr
        self.npa = len(ROLES[op])
        self.narr = len(LAYOUT[op])
        self.base = self.HEADER                    # npa element bases
        self.length = self.base + self.npa         # npa span lengths
        self.ks = self.length + self.npa           # nk kept sizes
        self.kst = self.ks + nk                    # narr x nk kept strides
        self.rs = self.kst + self.narr * nk        # nr reduced sizes
        self.rst = self.rs + nr                    # narr x nr reduced strides
        self.size = self.rst + self.narr * nr      # TS


# ---------------------------------------------------------------- device helpers

if SIM:
    # The simulator runs kernels as Python: libdevice is a stub there, and
    # NumPy warnings (0/0, inf-inf in NaN rows) must stay quiet.
    def _bf16_to_f32(u):
        return np.uint32(int(u) << 16).view(np.float32)

    def _f32_to_bf16(x):
        b = int(np.float32(x).view(np.uint32))
        if x != x:
            return ((b >> 16) | 0x40) & 0xFFFF
        return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF

    def pause():
        """A spinning thread gives the others a turn (simulated blocks may run
        concurrently in tests)."""
        time.sleep(1e-4)

    def _d2f_odd(d):
        f = np.float32(d)
        if float(f) != float(d) and d == d:
            u = int(np.array(f).view(np.uint32))
            if abs(float(f)) > abs(float(d)):
                u -= 1
            f = np.array(u | 1, np.uint32).view(np.float32)[()]
        return f

    def quiet(fn):
        def kernel(*args):
            with np.errstate(all="ignore"):
                fn(*args)
        kernel.__name__ = fn.__name__
        return kernel

    def device(fn):
        return fn

    class _SimCuda:
        """``cuda`` for every kernel module under the simulator: the fake ``cuda``
        module of the launch in progress (the simulator swaps it into the
        kernel's own globals only, and device functions live in other modules)."""
        def __getattr__(self, name):
            from numba.cuda.simulator import kernel as simk
            ctx = simk._get_kernel_context()
            return getattr(ctx if ctx is not None else _numba_cuda, name)

    cuda = GEN_CUDA = _SimCuda()
else:
    cuda = GEN_CUDA = _numba_cuda

    from numba.cuda import libdevice

    def device(fn):
        return cuda.jit(device=True, inline="always")(fn)

    @device
    def _bf16_to_f32(u):
        return libdevice.int_as_float(np.int32(np.int32(u) << np.int32(16)))

    @device
    def _f32_to_bf16(x):
        b = np.int64(libdevice.float_as_int(x)) & 0xFFFFFFFF
        if x != x:  # NaN: keep it a (quiet) NaN, never round it to inf
            return np.uint16(((b >> 16) | 0x40) & 0xFFFF)
        return np.uint16(((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF)

    @device
    def _d2f_odd(d):
        f = np.float32(d)
        if np.float64(f) != d and d == d:
            u = np.int64(libdevice.float_as_int(f)) & 0xFFFFFFFF
            if abs(np.float64(f)) > abs(d):
                u -= 1
            f = libdevice.int_as_float(np.int32(u | 1))
        return f

    def quiet(fn):
        return fn

    @device
    def pause():
        """Back off while another block finishes a row (``nanosleep``)."""
        cuda.nanosleep(np.uint32(128))


_FULL_MASK = 0xFFFFFFFF


def exec_source(src, *names, **ns):
    """Compile generated source; returns the named function(s)."""
    exec(compile(src, f"<wnkernels generated: {', '.join(names)}>", "exec"), ns)
    fns = tuple(ns[n] for n in names)
    return fns[0] if len(fns) == 1 else fns


def _numba_type(npt):
    return {np.float32: types.float32, np.float64: types.float64}[npt]


# ---------------------------------------------------------------- indexing

@device
def _off1(i, shape, s0):
    """Dot of the mixed-radix digits of flat index ``i`` over ``shape`` with ``s0``."""
    n = len(shape)
    if n == 1:
        return i * s0[0]
    o = 0
    for d in range(n - 1, 0, -1):
        q = i // shape[d]
        o += (i - q * shape[d]) * s0[d]
        i = q
    return o + i * s0[0]


@device
def _off2(i, shape, s0, s1):
    n = len(shape)
    if n == 1:
        return i * s0[0], i * s1[0]
    o0 = 0
    o1 = 0
    for d in range(n - 1, 0, -1):
        q = i // shape[d]
        k = i - q * shape[d]
        o0 += k * s0[d]
        o1 += k * s1[d]
        i = q
    return o0 + i * s0[0], o1 + i * s1[0]


@device
def _off3(i, shape, s0, s1, s2):
    n = len(shape)
    if n == 1:
        return i * s0[0], i * s1[0], i * s2[0]
    o0 = 0
    o1 = 0
    o2 = 0
    for d in range(n - 1, 0, -1):
        q = i // shape[d]
        k = i - q * shape[d]
        o0 += k * s0[d]
        o1 += k * s1[d]
        o2 += k * s2[d]
        i = q
    return o0 + i * s0[0], o1 + i * s1[0], o2 + i * s2[0]


@device
def decode(tk, np_, lag, nchunk):
    """(finish?, row, chunk) of ticket ``tk`` of a ticketed item with ``np_`` parts
    (row-major: row ``p // nchunk``, chunk ``p % nchunk``) and as many finishes:
    ``lag`` parts, then parts and finishes alternating, then the last ``lag``
    finishes; a row's finishes take its chunks in reverse.  With ``lag >=
    nchunk - 1`` every finish comes after all of its row's parts."""
    fin = True
    if tk < lag:
        fin = False
        p = tk
    else:
        u = tk - lag
        m = 2 * (np_ - lag)
        if u < m:
            fin = u % 2 == 1
            p = u // 2 if fin else lag + u // 2
        else:
            p = np_ - lag + (u - m)
    r = p // nchunk
    c = p - r * nchunk
    if fin:
        c = nchunk - 1 - c
    return fin, r, c


# ---------------------------------------------------------------- the environment

class Env:
    """The device functions shared by one kernel's strategies: for ``op`` on
    ``dtype`` with blocks of ``B`` threads (``shuffle``: warp-shuffle
    reductions, else shared memory), items with ``nk`` kept / ``nr`` reduced
    dims.  Attributes are numba device functions (plain Python under the
    simulator) and the constants strategies build on."""

    def __init__(self, op: int, dtype: str, B: int, shuffle: bool, nk: int, nr: int):
        from .._vec import vload, vstore, ldcg, span_at
        self.op, self.dtype, self.B, self.shuffle, self.nk, self.nr = (
            op, dtype, int(B), bool(shuffle), int(nk), int(nr))
        S, A, C, NT = TABLE[dtype]
        self.S, self.A, self.C, self.NT = S, A, C, NT
        self.ATY = _numba_type(A)
        self.CTY = _numba_type(C)
        self.W = vec_width(dtype)
        self.F = Fields(op, nk, nr)
        self.vload, self.vstore, self.ldcg, self.span_at = vload, vstore, ldcg, span_at
        self.off1, self.off2, self.off3, self.decode, self.pause = (
            _off1, _off2, _off3, decode, pause)
        self._dtype_ops()
        self._reducers()
        self._scalars()
        self._vectors()
        self._items()

    # -- element load / store
    def _dtype_ops(self):
        C = self.C
        if self.dtype == "bfloat16":
            self.load, self.store = _bf16_to_f32, _f32_to_bf16
        else:
            @device
            def load(x):
                return C(x)

            @device
            def store(x):
                return x
            self.load, self.store = load, store

    # -- fixed-order sums returning the total to every thread of the block / group
    def _reducers(self):
        A, B = self.A, self.B
        NW = max(B // 32, 1)
        if self.shuffle:
            @device
            def block_sum(sh, x, t):
                off = 16
                while off > 0:
                    x += cuda.shfl_xor_sync(_FULL_MASK, x, off)
                    off //= 2
                if t % 32 == 0:
                    sh[t // 32] = x
                cuda.syncthreads()
                tot = A(0)
                for k in range(NW):
                    tot += sh[k]
                cuda.syncthreads()
                return tot

            @device
            def group_sum(sh, x, t, G):
                """Sum over the G (<= 32, a power of two) lanes of t's group."""
                off = G // 2
                while off > 0:
                    x += cuda.shfl_xor_sync(_FULL_MASK, x, off)
                    off //= 2
                return x
        else:
            @device
            def block_sum(sh, x, t):
                sh[t] = x
                cuda.syncthreads()
                s = B // 2
                while s > 0:
                    if t < s:
                        sh[t] += sh[t + s]
                    cuda.syncthreads()
                    s //= 2
                tot = sh[0]
                cuda.syncthreads()
                return tot

            @device
            def group_sum(sh, x, t, G):
                sh[t] = x
                cuda.syncthreads()
                lane = t % G
                s = G // 2
                while s > 0:
                    if lane < s:
                        sh[t] += sh[t + s]
                    cuda.syncthreads()
                    s //= 2
                tot = sh[t - lane]
                cuda.syncthreads()
                return tot

        @device
        def lanes_sum(sh, x, t, G):
            """The row total of a row's G lanes: a group (G <= 32) or the block."""
            if G == B:
                return block_sum(sh, x, t)
            return group_sum(sh, x, t, G)

        self.block_sum, self.group_sum, self.lanes_sum = block_sum, group_sum, lanes_sum

    # -- the per-row math (see the module docstring): the only copy
    def _scalars(self):
        C, NT, load, store = self.C, self.NT, self.load, self.store

        @device
        def fwd_scalars(tot, eps, gval):
            """(norm as stored, scale) of a row with sum of squares ``tot``."""
            nrm = NT(math.sqrt(np.float64(tot) + eps))
            return nrm, load(gval) / C(nrm)

        @device
        def bwd_scalars(dot, nrm, gval):
            """(grad_g as stored, a, b) of a row with dot product ``dot``."""
            inv = 1.0 / np.float64(nrm)
            gg = np.float64(dot) * inv
            ad = np.float64(load(gval)) * inv
            return store(C(gg)), C(ad), C(ad * gg * inv)

        if self.dtype in ("float16", "bfloat16"):
            @device
            def scale_out(gval, nrm):
                """g / norm in float64, rounded once to the storage type (rounded
                to odd in float32 first: then the 16-bit rounding is exact)."""
                return store(_d2f_odd(np.float64(load(gval)) / np.float64(nrm)))
        else:
            @device
            def scale_out(gval, nrm):
                """g / norm in float64, rounded once to the storage type."""
                return C(np.float64(load(gval)) / np.float64(nrm))

        self.fwd_scalars, self.bwd_scalars, self.scale_out = fwd_scalars, bwd_scalars, scale_out

    # -- per-vector element loops, unrolled (constant tuple indices: the W values
    #    stay in registers); elements in order 0..W-1, the scalar arithmetic
    def _vectors(self):
        W, A, S = self.W, self.A, self.S
        idx = range(W)
        src = (
            "def vsumsq(acc, t):\n"
            + "".join(f"    x = A(load(t[{k}]))\n    acc += x * x\n" for k in idx)
            + "    return acc\n\n"
            "def vdot(acc, ta, tb):\n"
            + "".join(f"    acc += A(load(ta[{k}])) * A(load(tb[{k}]))\n" for k in idx)
            + "    return acc\n\n"
            "def vscale(t, s):\n    return ("
            + "".join(f"store(load(t[{k}]) * s), " for k in idx) + ")\n\n"
            "def vgrad(ta, tb, ca, cb):\n    return ("
            + "".join(f"store(ca * load(ta[{k}]) - cb * load(tb[{k}])), " for k in idx)
            + ")\n\n"
            f"def vzero():\n    z = S(0)\n    return ({'z, ' * W})\n")
        fns = exec_source(src, "vsumsq", "vdot", "vscale", "vgrad", "vzero", A=A,
                          load=self.load, store=self.store, S=S)
        self.vsumsq, self.vdot, self.vscale, self.vgrad, self.vzero = (device(f) for f in fns)

    # -- reading an item: its spans, its dims
    def _items(self):
        F, S, NT = self.F, self.S, self.NT
        span_at = self.span_at
        roles = ROLES[self.op]
        dt = {"v": S, "w": S, "g": S, "grad_w": S, "grad_v": S, "grad_g": S, "scale": S,
              "norms": NT}
        lines = ["def spans(ptrs, tab, i):", f"    o = i * {F.size}", f"    p = i * {F.npa}"]
        for k, role in enumerate(roles):
            lines.append(f"    a{k} = span_at(ptrs[p + {k}], tab[o + {F.length + k}], "
                         f"D_{role})")
        lines.append("    return " + ", ".join(f"a{k}" for k in range(F.npa)))
        lines.append("")
        lines.append("def bases(tab, i):")
        lines.append(f"    o = i * {F.size}")
        lines.append("    return " + ", ".join(f"tab[o + {F.base + k}]" for k in range(F.npa)))
        lines.append("")

        def tup(start, n):
            return "(" + "".join(f"tab[o + {start + d}], " for d in range(n)) + ")"
        lines.append("def dims(tab, i):")
        lines.append(f"    o = i * {F.size}")
        parts = [tup(F.ks, F.nk)]
        parts += [tup(F.kst + a * F.nk, F.nk) for a in range(F.narr)]
        parts += [tup(F.rs, F.nr)]
        parts += [tup(F.rst + a * F.nr, F.nr) for a in range(F.narr)]
        lines.append("    return " + ", ".join(parts))
        ns = {f"D_{r}": dt[r] for r in roles}
        fns = exec_source("\n".join(lines) + "\n", "spans", "bases", "dims",
                          span_at=span_at, **ns)
        self.spans, self.bases, self.dims = (device(f) for f in fns)
