"""Fused weight-norm CUDA kernels (numba-cuda), one factory per strategy.

Math, per row ``r`` (the set of elements that share the kept index)::

    norm_r   = sqrt(sum_i v_i^2 + eps)
    w_i      = v_i * (g_r / norm_r)                  # scale formed first, then one multiply
    grad_g_r = (sum_i grad_w_i * v_i) / norm_r
    grad_v_i = (g_r / norm_r) * grad_w_i - (g_r * grad_g_r / norm_r^2) * v_i

Precision.  ``A`` is the accumulation type, ``C`` the element compute type:

    dtype     storage  A        C        norms
    float16   float16  float32  float32  float32
    bfloat16  uint16   float32  float32  float32   (bit tricks: bf16->f32 is ``u << 16``,
                                                     f32->bf16 rounds to nearest even)
    float32   float32  float64  float32  float32   (1e-6 relative norms for long rows)
    float64   float64  float64  float64  float64

The forward's scale is ``C(g) / C(norm)`` with the norm *as stored*, so ``g == norm``
gives a scale of exactly 1.  The backward uses the given norms, never recomputes them.

Addressing.  Every array is passed as a 1-D span of its storage type plus an element
``base`` offset; element ``(row r, reduced index j)`` of array ``a`` lives at
``base_a + off(r; kept_shape, kept_strides_a) + off(j; red_shape, red_strides_a)``,
where ``off`` is the mixed-radix decomposition of a flat index over a shape dotted
with signed element strides.  Shapes and strides are int64 UniTuples, so numba
specializes every kernel on the number of kept / reduced dims (1 dim: a multiply,
no division).  This one scheme covers every `wnkernels._layout.Layout`.

Strategies (all deterministic: fixed reduction trees and combine orders; the
only atomics are integer ticket / arrival counters, never on floating point).

Scalar element access (any layout):

``block``   one block of ``B`` threads per row (grid-stride over rows); thread ``t``
            sums elements ``t, t+B, ...``; block tree reduction; second pass writes.
``group``   ``G`` (8/16/32) lanes per row, ``B/G`` rows per block, for short rows;
            the group reduces with ``shfl_xor`` butterflies (or shared memory).
``split``   few long rows: each row is cut into ``nchunk`` chunks of ``chunk``
            elements, one block per (row, chunk).  Kernel 1 (``*_part``) writes one
            partial sum per block to a small workspace; kernel 2 (``*_finish``) sums a
            row's partials in chunk order (thread 0, fixed order), then scales its
            chunk, walking the chunks in reverse launch order (L2 still holds the
            chunks kernel 1 read last).

16-byte vector access (``VKINDS``; rows one contiguous run, every array at the same
16-byte phase -- `_launch` checks on the host).  Global memory moves 16 bytes at a
time through `_vec.vload` / `_vec.vstore` (``ld.global.v4`` / ``st.global.v4``):
``W`` = 8 elements for float16 / bfloat16, 4 for float32, 2 for float64.  A row
starts with ``head < W`` scalar elements up to its first 16-byte boundary
(computed per row from the span's phase ``ph``), then whole vectors, then a
``< W``-element scalar tail:

``regs``    ``G`` lanes per row (8/16/32, or a whole block of up to 1024 threads),
            each holding up to ``R`` vectors of its row in registers (generated
            source, `_regs_source`): the row is read once, reduced, and written
            from the registers -- the 2N traffic floor.
``stream``  rows too long for registers (or too few to fill the GPU): chunks of
            ``B x W x stream_vectors`` elements, "part" and "finish" items taken in
            ticket order, the finishes trailing the parts by an L2-sized lag so a
            chunk's second read hits L2 (protocol: the comment above ``fwd_stream``).

``cols``    kept axis contiguous (``dim=-1``): the same ticketed stream over tiles of
            ``CB = TX x VW`` consecutive kept indices (16-byte vectors of ``VW = W``
            columns where the strides allow, else ``VW = 1``, any layout) x chunks
            of reduced indices; every warp access covers whole 128-byte lines along
            the kept axis (coalesced, no transpose).

Each element goes through exactly the same arithmetic in every kernel (same load
conversion, same per-element formula, same store rounding); only the order of
the partial sums differs between strategies (a fixed order in each, so results
are bitwise reproducible; strategies agree to rounding).  Under the simulator
``vload``/``vstore`` are plain Python (and check alignment), so the same kernel
source is tested there.

Reductions.  ``shuffle=True`` uses warp shuffles (butterfly within each warp, then
every thread sums the per-warp partials in warp order); ``shuffle=False`` uses a
shared-memory tree, the only form the CUDA simulator can run.  Both are fixed-order,
so results are bitwise identical from run to run (not between the two forms).

``copy`` is a plain strided element copy (used to make a small per-row array
contiguous for array kinds that have no copy of their own).

Device helpers are ``inline="always"`` so that ``compile_ptx`` works without a GPU.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ._numba import cuda, SIM, types
from ._vec import vload, vstore, ldcg, width

__all__ = ["DTYPES", "KINDS", "VKINDS", "TICKETED", "make_kernel", "signature", "storage_dtype",
           "acc_dtype", "norm_dtype", "vec_width"]

DTYPES = ("float16", "bfloat16", "float32", "float64")
# scalar element access, any layout
KINDS = ("fwd_block", "bwd_block", "fwd_group", "bwd_group", "fwd_part", "fwd_finish",
         "bwd_part", "bwd_finish", "fwd_cols", "bwd_cols", "copy", "zero")
# 16-byte vector access: rows one contiguous run, every array in the same phase
VKINDS = ("fwd_regs", "bwd_regs", "fwd_stream", "bwd_stream")
KINDS = KINDS + VKINDS
# ticketed kernels: take a ``part`` / ``sync`` workspace (see `_launch`)
TICKETED = ("fwd_stream", "bwd_stream", "fwd_cols", "bwd_cols")

_STORAGE = {"float16": np.float16, "bfloat16": np.uint16,
            "float32": np.float32, "float64": np.float64}
_ACC = {"float16": np.float32, "bfloat16": np.float32,
        "float32": np.float64, "float64": np.float64}
_COMPUTE = {"float16": np.float32, "bfloat16": np.float32,
            "float32": np.float32, "float64": np.float64}
_NORM = {"float16": np.float32, "bfloat16": np.float32,
         "float32": np.float32, "float64": np.float64}


def storage_dtype(dtype: str):
    return _STORAGE[dtype]


def acc_dtype(dtype: str):
    return _ACC[dtype]


def norm_dtype(dtype: str):
    return _NORM[dtype]


_FULL_MASK = 0xFFFFFFFF

if SIM:
    # The simulator runs kernels as Python: libdevice is a stub there, and
    # numpy warnings (0/0, inf-inf in NaN rows) must stay quiet.
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

    def _quiet(fn):
        def kernel(*args):
            with np.errstate(all="ignore"):
                fn(*args)
        kernel.__name__ = fn.__name__
        return kernel

    def _device(fn):
        return fn

    class _SimCuda:
        """``cuda`` for generated kernel source under the simulator, which swaps
        its fake ``cuda`` module into *this* module's globals during a launch."""
        def __getattr__(self, name):
            return getattr(globals()["cuda"], name)

    _GEN_CUDA = _SimCuda()
else:
    _GEN_CUDA = cuda

    from numba.cuda import libdevice

    def _device(fn):
        return cuda.jit(device=True, inline="always")(fn)

    @_device
    def _bf16_to_f32(u):
        return libdevice.int_as_float(np.int32(np.int32(u) << np.int32(16)))

    @_device
    def _f32_to_bf16(x):
        b = np.int64(libdevice.float_as_int(x)) & 0xFFFFFFFF
        if x != x:  # NaN: keep it a (quiet) NaN, never round it to inf
            return np.uint16(((b >> 16) | 0x40) & 0xFFFF)
        return np.uint16(((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF)

    def _quiet(fn):
        return fn

    @_device
    def pause():
        """Back off while another block finishes a row (``nanosleep``)."""
        cuda.nanosleep(np.uint32(128))


# ---------------------------------------------------------------- indexing

@_device
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


@_device
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


@_device
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


@_device
def decode(tk, np_, lag, nchunk):
    """(finish?, row, chunk) of ticket ``tk`` of a ticketed kernel with ``np_`` parts
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


# ---------------------------------------------------------------- factories

def _dtype_helpers(dtype):
    """(load, store, A, C, NT) for one dtype: load -> C value, store C value -> storage."""
    A = _ACC[dtype]
    C = _COMPUTE[dtype]
    NT = _NORM[dtype]
    if dtype == "bfloat16":
        load = _bf16_to_f32
        store = _f32_to_bf16
    else:
        @_device
        def load(x):
            return C(x)

        @_device
        def store(x):
            return x
    return load, store, A, C, NT


def vec_width(dtype: str) -> int:
    """Elements per 16-byte vector of ``dtype``'s storage type (8, 8, 4, 2)."""
    return width(np.dtype(_STORAGE[dtype]).itemsize)


def _exec_src(src, *names, **ns):
    """Compile generated helper source; returns the named function(s)."""
    exec(compile(src, f"<wnkernels generated: {', '.join(names)}>", "exec"), ns)
    fns = tuple(ns[n] for n in names)
    return fns[0] if len(fns) == 1 else fns


def _vec_helpers(W, load, store, A):
    """Per-vector element loops, unrolled (constant tuple indices, so the W values
    stay in registers).  Elements are taken in order 0..W-1, exactly the
    arithmetic of the scalar kernels applied element by element."""
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
        + ")\n")
    fns = _exec_src(src, "vsumsq", "vdot", "vscale", "vgrad", A=A, load=load, store=store)
    return tuple(_device(f) for f in fns)


def _col_helpers(VW, load, store, A, C, S):
    """Tuples of VW consecutive columns for the ``cols`` kernels: loads (one 16-byte
    vector when all VW columns exist, else element by element with zeros past
    ``n``), stores, per-column accumulators and scales.  Same per-element
    arithmetic as everywhere else."""
    idx = range(VW)

    def tup(fmt):
        return "(" + "".join(fmt.format(k=k) + ", " for k in idx) + ")"

    if VW == 1:
        io = ("def cload(a, o, n):\n    return (a[o],)\n\n"
              "def cstore(a, o, n, x):\n    a[o] = x[0]\n\n")
    else:
        io = ("def cload(a, o, n):\n    if n >= VW:\n        return vload(a, o)\n"
              "    z = S(0)\n    return " + tup("a[o + {k}] if n > {k} else z") + "\n\n"
              "def cstore(a, o, n, x):\n    if n >= VW:\n        vstore(a, o, x)\n"
              "    else:\n"
              + "".join(f"        if n > {k}:\n            a[o + {k}] = x[{k}]\n" for k in idx)
              + "\n")
    src = (io
           + "def czero():\n    z = A(0)\n    return " + tup("z") + "\n\n"
           + "def cput(sh, i, acc):\n"
           + "".join(f"    sh[i + {k}] = acc[{k}]\n" for k in idx) + "\n"
           + "def cparts(p, i, n):\n    z = A(0)\n    return "
           + tup("ldcg(p, i + {k}) if n > {k} else z") + "\n\n"
           + "def cscales(p, i, n, step):\n    z = C(0)\n    return "
           + tup("C(ldcg(p, i + {k} * step)) if n > {k} else z") + "\n\n"
           + "def cadd(acc, x):\n    return " + tup("acc[{k}] + x[{k}]") + "\n\n"
           + "def csq(acc, x):\n    return "
           + tup("acc[{k}] + A(load(x[{k}])) * A(load(x[{k}]))") + "\n\n"
           + "def cdot(acc, a, b):\n    return "
           + tup("acc[{k}] + A(load(a[{k}])) * A(load(b[{k}]))") + "\n\n"
           + "def cscale(x, s):\n    return " + tup("store(load(x[{k}]) * s[{k}])") + "\n\n"
           + "def cgrad(a, b, ca, cb):\n    return "
           + tup("store(ca[{k}] * load(a[{k}]) - cb[{k}] * load(b[{k}]))") + "\n")
    names = ("czero", "cload", "cstore", "cput", "cparts", "cscales", "cadd", "csq", "cdot",
             "cscale", "cgrad")
    fns = _exec_src(src, *names, VW=VW, load=load, store=store, A=A, C=C, S=S,
                    vload=vload, vstore=vstore, ldcg=ldcg)
    return tuple(_device(f) for f in fns)


def _regs_source(kind, R):
    """Source of ``fwd_regs`` or ``bwd_regs`` with R vectors per lane, unrolled into
    named registers (x0, x1, ...: no local arrays, so nothing spills to memory).

    Lane ``l`` of a row's G lanes holds head element ``l`` (if l < head), vectors
    ``l, l + G, ..., l + (R-1) G`` and tail element ``l`` (if it exists); it sums
    them in that order, the lanes' sums are reduced in a fixed tree, and the
    registers are scaled and stored."""
    fwd = kind == "fwd_regs"
    ks = range(R)
    if fwd:
        head = ("def fwd_regs(v, vb, w, wb, g, gb, gs, norms, eps, nrows, rowlen, ph,\n"
                "             ks, vks, wks):\n")
        offs = ("            vo, wo = _off2(r, ks, vks, wks)\n"
                "            vo += vb\n            wo += wb\n")
        zero_offs = "        vo = 0\n        wo = 0\n"
    else:
        head = ("def bwd_regs(gw, gwb, v, vb, gv, gvb, g, gb, gs, norms, nb, ns, grad_g,\n"
                "             nrows, rowlen, ph, ks, gwks, vks, gvks):\n")
        offs = ("            go, vo, qo = _off3(r, ks, gwks, vks, gvks)\n"
                "            go += gwb\n            vo += vb\n            qo += gvb\n")
        zero_offs = "        go = 0\n        vo = 0\n        qo = 0\n"
    src = [head, """\
    sh = cuda.shared.array(SH, ATY)
    t = cuda.threadIdx.x
    lane = t % G
    base = cuda.blockIdx.x * RPB
    while base < nrows:  # block-uniform: every lane reaches the reduction
        r = base + t // G
        act = r < nrows
""", zero_offs, "        if act:\n", offs, """\
        head = row_head(ph, vo, rowlen)
        nv = (rowlen - head) // W
        tl = head + nv * W
        acc = A(0)
        oh = act and lane < head
        ot = act and tl + lane < rowlen
"""]

    def elem(tag, idx):  # one scalar element (head or tail) into registers
        if fwd:
            return (f"        x{tag} = S(0)\n        if o{tag}:\n"
                    f"            x{tag} = v[vo + {idx}]\n"
                    f"            y = A(load(x{tag}))\n            acc += y * y\n")
        return (f"        a{tag} = S(0)\n        b{tag} = S(0)\n        if o{tag}:\n"
                f"            a{tag} = gw[go + {idx}]\n            b{tag} = v[vo + {idx}]\n"
                f"            acc += A(load(a{tag})) * A(load(b{tag}))\n")

    src.append(elem("h", "lane"))
    for k in ks:
        at = f"head + (lane + {k} * G) * W"
        src.append(f"        o{k} = act and lane + {k} * G < nv\n")
        if fwd:
            src.append(f"        x{k} = VZ()\n        if o{k}:\n"
                       f"            x{k} = vload(v, vo + {at})\n"
                       f"            acc = vsumsq(acc, x{k})\n")
        else:
            src.append(f"        a{k} = VZ()\n        b{k} = VZ()\n        if o{k}:\n"
                       f"            a{k} = vload(gw, go + {at})\n"
                       f"            b{k} = vload(v, vo + {at})\n"
                       f"            acc = vdot(acc, a{k}, b{k})\n")
    src.append(elem("t", "tl + lane"))
    src.append("        tot = REDUCE(sh, acc, t)\n        if act:\n")
    if fwd:
        src.append("""\
            nrm = NT(math.sqrt(tot + A(eps)))
            if lane == 0:
                norms[r] = nrm
            scale = load(g[gb + r * gs]) / C(nrm)
            if oh:
                w[wo + lane] = store(load(xh) * scale)
""")
        for k in ks:
            src.append(f"            if o{k}:\n                vstore(w, wo + head + (lane + {k} * G)"
                       f" * W, vscale(x{k}, scale))\n")
        src.append("            if ot:\n                w[wo + tl + lane] = store(load(xt) * scale)\n")
    else:
        src.append("""\
            nrm = A(norms[nb + r * ns])
            ggrad = tot / nrm
            if lane == 0:
                grad_g[r] = store(C(ggrad))
            gA = A(load(g[gb + r * gs]))
            ca = C(gA / nrm)
            cb = C(gA * ggrad / (nrm * nrm))
            if oh:
                gv[qo + lane] = store(ca * load(ah) - cb * load(bh))
""")
        for k in ks:
            src.append(f"            if o{k}:\n                vstore(gv, qo + head + (lane + {k} * G)"
                       f" * W, vgrad(a{k}, b{k}, ca, cb))\n")
        src.append("            if ot:\n"
                   "                gv[qo + tl + lane] = store(ca * load(at) - cb * load(bt))\n")
    src.append("        base += cuda.gridDim.x * RPB\n")
    return "".join(src)


def _numba_type(npt):
    return {np.float32: types.float32, np.float64: types.float64}[npt]


def _reducers(A, B, shuffle, G):
    """Block-wide and group-wide fixed-order sums returning the total to every thread."""
    ATY = _numba_type(A)
    NW = max(B // 32, 1)

    if shuffle:
        @_device
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

        @_device
        def group_sum(sh, x, t):
            off = G // 2
            while off > 0:
                x += cuda.shfl_xor_sync(_FULL_MASK, x, off)
                off //= 2
            return x
    else:
        @_device
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

        @_device
        def group_sum(sh, x, t):
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

    return block_sum, group_sum, ATY


def make_kernel(kind: str, dtype: str, block: int, shuffle: bool, sub=0):
    """The Python function of one kernel (jit it with ``cuda.jit`` or ``compile_ptx``).

    ``block`` is the number of threads per block (a power of two, >= 32 when
    ``shuffle``); ``sub`` is ``G`` (lanes per row) for ``group``, ``(G, R)`` (lanes
    per row, vectors per lane) for ``regs`` and ``(TX, VW)`` (threads across the
    columns, columns per thread: 1 or the vector width) for ``cols``.
    """
    B = int(block)
    if B & (B - 1) or B < 1:
        raise ValueError("block must be a power of two")
    if shuffle and B < 32:
        raise ValueError("the shuffle reduction needs blocks of >= 32 threads")
    W = vec_width(dtype)
    G, RR, TX, VW = 32, 1, 1, 1
    if kind.endswith("group"):
        G = int(sub)
    elif kind.endswith("regs"):
        G, RR = (int(x) for x in sub)
        if not 1 <= RR <= 16:
            raise ValueError("regs: 1 to 16 vectors per lane")
        if G < W - 1:
            raise ValueError("regs: a row's lanes must cover its < W head elements")
    elif kind.endswith("cols"):
        TX, VW = (int(x) for x in sub)
        if TX < 1 or B % TX:
            raise ValueError("cols: threads across the columns must divide the block")
        if VW not in (1, W):
            raise ValueError("cols: 1 column per thread or one 16-byte vector")
    if kind.endswith(("group", "regs")) and G != B and (G & (G - 1) or G > 32 or G > B
                                                         or G < 1):
        raise ValueError("lanes per row: a power of two <= min(32, block), or the block")
    TY = B // TX
    CB = TX * VW  # columns per tile
    load, store, A, C, NT = _dtype_helpers(dtype)
    block_sum, group_sum, ATY = _reducers(A, B, shuffle, min(G, 32))
    CTY = _numba_type(C)
    S = _STORAGE[dtype]
    RPB = B // G
    SH = B  # shared scratch length (both reduction forms fit in B)
    SHC = B * VW
    vsumsq, vdot, vscale, vgrad = _vec_helpers(W, load, store, A)
    vzero = _device(_exec_src(f"def vzero():\n    z = S(0)\n    return ({'z, ' * W})\n",
                              "vzero", S=S))
    czero, cload, cstore, cput, cparts, cscales, cadd, csq, cdot, cscale, cgrad = _col_helpers(
        VW, load, store, A, C, S)

    # -------------------------------------------- contiguous row segments, 16-byte vectors
    # Elements [s, e) of a row whose element 0 is at index o of each array,
    # walked as: the < W scalar head elements [s, a) (lane k takes s + k), the
    # whole vectors from a (o + a is 16-byte aligned in every array: `_launch`
    # checks that all arrays share each row's phase), lane ``l`` of ``step``
    # cooperating threads taking vectors l, l + step, ..., then the < W tail
    # elements one by one.  Needs step >= W - 1 (step is 8 or more).

    @_device
    def row_head(ph, o, rowlen):
        """Scalar elements before a row's first 16-byte boundary (``ph``: the
        span's phase in elements, ``o``: the row's first element)."""
        return min((W - (ph + o) % W) % W, rowlen)

    @_device
    def seg_sumsq(v, o, s, a, e, lane, step):
        acc = A(0)
        j = s + lane
        if j < a:
            x = A(load(v[o + j]))
            acc += x * x
        nv = (e - a) // W
        j = lane
        while j < nv:
            acc = vsumsq(acc, vload(v, o + a + j * W))
            j += step
        j = a + nv * W + lane
        while j < e:
            x = A(load(v[o + j]))
            acc += x * x
            j += step
        return acc

    @_device
    def seg_scale(v, vo, w, wo, s, a, e, lane, step, scale):
        j = s + lane
        if j < a:
            w[wo + j] = store(load(v[vo + j]) * scale)
        nv = (e - a) // W
        j = lane
        while j < nv:
            k = a + j * W
            vstore(w, wo + k, vscale(vload(v, vo + k), scale))
            j += step
        j = a + nv * W + lane
        while j < e:
            w[wo + j] = store(load(v[vo + j]) * scale)
            j += step

    @_device
    def seg_dot(gw, go, v, vo, s, a, e, lane, step):
        acc = A(0)
        j = s + lane
        if j < a:
            acc += A(load(gw[go + j])) * A(load(v[vo + j]))
        nv = (e - a) // W
        j = lane
        while j < nv:
            k = a + j * W
            acc = vdot(acc, vload(gw, go + k), vload(v, vo + k))
            j += step
        j = a + nv * W + lane
        while j < e:
            acc += A(load(gw[go + j])) * A(load(v[vo + j]))
            j += step
        return acc

    @_device
    def seg_grad(gw, go, v, vo, gv, qo, s, a, e, lane, step, ca, cb):
        j = s + lane
        if j < a:
            gv[qo + j] = store(ca * load(gw[go + j]) - cb * load(v[vo + j]))
        nv = (e - a) // W
        j = lane
        while j < nv:
            k = a + j * W
            vstore(gv, qo + k, vgrad(vload(gw, go + k), vload(v, vo + k), ca, cb))
            j += step
        j = a + nv * W + lane
        while j < e:
            gv[qo + j] = store(ca * load(gw[go + j]) - cb * load(v[vo + j]))
            j += step

    # ------------------------------------------------------------ block per row
    def fwd_block(v, vb, w, wb, g, gb, gs, norms, eps, nrows, rowlen,
                  ks, vks, wks, rs, vrs, wrs):
        sh = cuda.shared.array(SH, ATY)
        t = cuda.threadIdx.x
        r = cuda.blockIdx.x
        while r < nrows:
            vo, wo = _off2(r, ks, vks, wks)
            vo += vb
            wo += wb
            acc = A(0)
            j = t
            while j < rowlen:
                x = A(load(v[vo + _off1(j, rs, vrs)]))
                acc += x * x
                j += B
            tot = block_sum(sh, acc, t)
            nrm = NT(math.sqrt(tot + A(eps)))
            if t == 0:
                norms[r] = nrm
            scale = load(g[gb + r * gs]) / C(nrm)
            j = t
            while j < rowlen:
                a, b = _off2(j, rs, vrs, wrs)
                w[wo + b] = store(load(v[vo + a]) * scale)
                j += B
            r += cuda.gridDim.x

    def bwd_block(gw, gwb, v, vb, gv, gvb, g, gb, gs, norms, nb, ns, grad_g,
                  nrows, rowlen, ks, gwks, vks, gvks, rs, gwrs, vrs, gvrs):
        sh = cuda.shared.array(SH, ATY)
        t = cuda.threadIdx.x
        r = cuda.blockIdx.x
        while r < nrows:
            go, vo, qo = _off3(r, ks, gwks, vks, gvks)
            go += gwb
            vo += vb
            qo += gvb
            acc = A(0)
            j = t
            while j < rowlen:
                a, b = _off2(j, rs, gwrs, vrs)
                acc += A(load(gw[go + a])) * A(load(v[vo + b]))
                j += B
            tot = block_sum(sh, acc, t)
            nrm = A(norms[nb + r * ns])
            ggrad = tot / nrm
            if t == 0:
                grad_g[r] = store(C(ggrad))
            gA = A(load(g[gb + r * gs]))
            ca = C(gA / nrm)
            cb = C(gA * ggrad / (nrm * nrm))
            j = t
            while j < rowlen:
                a, b, c = _off3(j, rs, gwrs, vrs, gvrs)
                gv[qo + c] = store(ca * load(gw[go + a]) - cb * load(v[vo + b]))
                j += B
            r += cuda.gridDim.x

    # ------------------------------------------------------------ G lanes per row
    def fwd_group(v, vb, w, wb, g, gb, gs, norms, eps, nrows, rowlen,
                  ks, vks, wks, rs, vrs, wrs):
        sh = cuda.shared.array(SH, ATY)
        t = cuda.threadIdx.x
        lane = t % G
        base = cuda.blockIdx.x * RPB
        while base < nrows:  # block-uniform loop: every lane reaches the reduction
            r = base + t // G
            active = r < nrows
            vo = 0
            wo = 0
            acc = A(0)
            if active:
                vo, wo = _off2(r, ks, vks, wks)
                vo += vb
                wo += wb
                j = lane
                while j < rowlen:
                    x = A(load(v[vo + _off1(j, rs, vrs)]))
                    acc += x * x
                    j += G
            tot = group_sum(sh, acc, t)
            if active:
                nrm = NT(math.sqrt(tot + A(eps)))
                if lane == 0:
                    norms[r] = nrm
                scale = load(g[gb + r * gs]) / C(nrm)
                j = lane
                while j < rowlen:
                    a, b = _off2(j, rs, vrs, wrs)
                    w[wo + b] = store(load(v[vo + a]) * scale)
                    j += G
            base += cuda.gridDim.x * RPB

    def bwd_group(gw, gwb, v, vb, gv, gvb, g, gb, gs, norms, nb, ns, grad_g,
                  nrows, rowlen, ks, gwks, vks, gvks, rs, gwrs, vrs, gvrs):
        sh = cuda.shared.array(SH, ATY)
        t = cuda.threadIdx.x
        lane = t % G
        base = cuda.blockIdx.x * RPB
        while base < nrows:
            r = base + t // G
            active = r < nrows
            go = 0
            vo = 0
            qo = 0
            acc = A(0)
            if active:
                go, vo, qo = _off3(r, ks, gwks, vks, gvks)
                go += gwb
                vo += vb
                qo += gvb
                j = lane
                while j < rowlen:
                    a, b = _off2(j, rs, gwrs, vrs)
                    acc += A(load(gw[go + a])) * A(load(v[vo + b]))
                    j += G
            tot = group_sum(sh, acc, t)
            if active:
                nrm = A(norms[nb + r * ns])
                ggrad = tot / nrm
                if lane == 0:
                    grad_g[r] = store(C(ggrad))
                gA = A(load(g[gb + r * gs]))
                ca = C(gA / nrm)
                cb = C(gA * ggrad / (nrm * nrm))
                j = lane
                while j < rowlen:
                    a, b, c = _off3(j, rs, gwrs, vrs, gvrs)
                    gv[qo + c] = store(ca * load(gw[go + a]) - cb * load(v[vo + b]))
                    j += G
            base += cuda.gridDim.x * RPB

    # ------------------------------------------------------------ row split over blocks
    def fwd_part(v, vb, part, nrows, rowlen, nchunk, chunk, ks, vks, rs, vrs):
        sh = cuda.shared.array(SH, ATY)
        t = cuda.threadIdx.x
        nblk = nrows * nchunk
        bid = cuda.blockIdx.x
        while bid < nblk:
            r = bid // nchunk
            c = bid - r * nchunk
            vo = vb + _off1(r, ks, vks)
            end = min((c + 1) * chunk, rowlen)
            acc = A(0)
            j = c * chunk + t
            while j < end:
                x = A(load(v[vo + _off1(j, rs, vrs)]))
                acc += x * x
                j += B
            tot = block_sum(sh, acc, t)
            if t == 0:
                part[bid] = tot
            bid += cuda.gridDim.x

    def fwd_finish(v, vb, w, wb, g, gb, gs, norms, part, eps, nrows, rowlen,
                   nchunk, chunk, ks, vks, wks, rs, vrs, wrs):
        shs = cuda.shared.array(1, CTY)
        t = cuda.threadIdx.x
        nblk = nrows * nchunk
        k = cuda.blockIdx.x
        while k < nblk:
            bid = nblk - 1 - k  # reverse of fwd_part's order: L2 still holds these
            r = bid // nchunk
            c = bid - r * nchunk
            if t == 0:
                tot = A(0)
                for p in range(nchunk):  # fixed order: bitwise reproducible
                    tot += part[r * nchunk + p]
                nrm = NT(math.sqrt(tot + A(eps)))
                if c == 0:
                    norms[r] = nrm
                shs[0] = load(g[gb + r * gs]) / C(nrm)
            cuda.syncthreads()
            scale = shs[0]
            vo, wo = _off2(r, ks, vks, wks)
            vo += vb
            wo += wb
            end = min((c + 1) * chunk, rowlen)
            j = c * chunk + t
            while j < end:
                a, b = _off2(j, rs, vrs, wrs)
                w[wo + b] = store(load(v[vo + a]) * scale)
                j += B
            cuda.syncthreads()
            k += cuda.gridDim.x

    def bwd_part(gw, gwb, v, vb, part, nrows, rowlen, nchunk, chunk,
                 ks, gwks, vks, rs, gwrs, vrs):
        sh = cuda.shared.array(SH, ATY)
        t = cuda.threadIdx.x
        nblk = nrows * nchunk
        bid = cuda.blockIdx.x
        while bid < nblk:
            r = bid // nchunk
            c = bid - r * nchunk
            go, vo = _off2(r, ks, gwks, vks)
            go += gwb
            vo += vb
            end = min((c + 1) * chunk, rowlen)
            acc = A(0)
            j = c * chunk + t
            while j < end:
                a, b = _off2(j, rs, gwrs, vrs)
                acc += A(load(gw[go + a])) * A(load(v[vo + b]))
                j += B
            tot = block_sum(sh, acc, t)
            if t == 0:
                part[bid] = tot
            bid += cuda.gridDim.x

    def bwd_finish(gw, gwb, v, vb, gv, gvb, g, gb, gs, norms, nb, ns, grad_g,
                   part, nrows, rowlen, nchunk, chunk,
                   ks, gwks, vks, gvks, rs, gwrs, vrs, gvrs):
        shs = cuda.shared.array(2, CTY)
        t = cuda.threadIdx.x
        nblk = nrows * nchunk
        k = cuda.blockIdx.x
        while k < nblk:
            bid = nblk - 1 - k
            r = bid // nchunk
            c = bid - r * nchunk
            if t == 0:
                tot = A(0)
                for p in range(nchunk):
                    tot += part[r * nchunk + p]
                nrm = A(norms[nb + r * ns])
                ggrad = tot / nrm
                if c == 0:
                    grad_g[r] = store(C(ggrad))
                gA = A(load(g[gb + r * gs]))
                shs[0] = C(gA / nrm)
                shs[1] = C(gA * ggrad / (nrm * nrm))
            cuda.syncthreads()
            ca = shs[0]
            cb = shs[1]
            go, vo, qo = _off3(r, ks, gwks, vks, gvks)
            go += gwb
            vo += vb
            qo += gvb
            end = min((c + 1) * chunk, rowlen)
            j = c * chunk + t
            while j < end:
                a, b, cc = _off3(j, rs, gwrs, vrs, gvrs)
                gv[qo + cc] = store(ca * load(gw[go + a]) - cb * load(v[vo + b]))
                j += B
            cuda.syncthreads()
            k += cuda.gridDim.x

    # ------------------------------------------------------------ rows held in registers
    # ``fwd_regs`` / ``bwd_regs`` (generated: `_regs_source`): G lanes per row (G == B:
    # a block per row), each lane holding up to R 16-byte vectors of its row (plus
    # one head and one tail element) in registers between the reduction and the
    # write, so every element is read from global memory exactly once.
    if kind in ("fwd_regs", "bwd_regs"):
        ns = dict(cuda=_GEN_CUDA, math=math, A=A, C=C, NT=NT, S=S, W=W, G=G, RPB=RPB, SH=SH,
                  ATY=ATY, load=load, store=store, vload=vload, vstore=vstore,
                  vsumsq=vsumsq, vdot=vdot, vscale=vscale, vgrad=vgrad, VZ=vzero,
                  REDUCE=block_sum if G == B else group_sum, _off2=_off2, _off3=_off3,
                  row_head=row_head)
        exec(compile(_regs_source(kind, RR), f"<wnkernels {kind} R={RR}>", "exec"), ns)
        fn = ns[kind]
        fn.__name__ = fn.__qualname__ = f"wn_{kind}_{dtype}"
        return _quiet(fn)

    # ------------------------------------------------------------ ticketed streams
    # ``stream`` (contiguous rows) and ``cols`` (kept axis contiguous) cut every row
    # (or tile of CB columns) into ``nchunk`` chunks: 2 x nrows x nchunk work items,
    # a "part" (partial sum of one chunk) and a "finish" (scale one chunk) each.
    # Blocks take items in ticket order (an integer atomic counter: `next`), the
    # order being ``lag`` parts first, then parts and finishes alternating, then
    # the remaining finishes (`decode`); a row's finishes walk its chunks in
    # reverse.  ``lag`` (>= nchunk - 1, set by `_launch` from the L2 size) puts
    # a chunk's re-read shortly after its first read, while it is still in L2.
    #
    # The block completing a row's last part (integer arrival counter) sums the
    # row's partials in chunk order -- fixed, so results are bitwise reproducible
    # -- and publishes the scale(s); finishes wait for that flag.  A finish waits
    # only on parts with earlier tickets, held by running blocks that never wait
    # on later tickets: the kernel always progresses, whatever the residency.
    # The last block to leave zeroes the counters, so ``sync`` is all zeros
    # between launches (the next launch on the stream finds it clean).
    #
    # Memory order: partials and scales are written, fenced (``threadfence``), then
    # the counter is bumped; readers observe the counter, fence, and read with
    # ``ld.global.cg`` (L2, never a stale L1 line).

    @_device
    def first(sync, shi, t):
        if t == 0:
            shi[0] = cuda.atomic.add(sync, 0, 1)
        cuda.syncthreads()
        return shi[0]

    @_device
    def prefetch(sync, shi, t):
        cuda.syncthreads()  # every thread has read the current ticket
        if t == 0:
            shi[0] = cuda.atomic.add(sync, 0, 1)

    @_device
    def take(shi):
        cuda.syncthreads()
        return shi[0]

    @_device
    def arrive(sync, shi, t, r, nchunk):
        """After a part's partials are written: True (in every thread) for the block
        that completed row ``r``'s parts."""
        cuda.threadfence()
        cuda.syncthreads()
        if t == 0:
            last = cuda.atomic.add(sync, 2 + r, 1) == nchunk - 1
            if last:
                cuda.threadfence()
            shi[1] = 1 if last else 0
        cuda.syncthreads()
        return shi[1] != 0

    @_device
    def publish(sync, t, r):
        cuda.threadfence()
        cuda.syncthreads()
        if t == 0:
            cuda.atomic.add(sync, 2 + r, 1)  # nchunk + 1: the row's scale is out

    @_device
    def wait(sync, t, r, nchunk):
        if t == 0:
            while cuda.atomic.add(sync, 2 + r, 0) <= nchunk:
                pause()
            cuda.threadfence()
        cuda.syncthreads()

    @_device
    def leave(sync, shi, t, nsync):
        cuda.syncthreads()
        if t == 0:
            cuda.threadfence()
            shi[1] = 1 if cuda.atomic.add(sync, 1, 1) == cuda.gridDim.x - 1 else 0
        cuda.syncthreads()
        if shi[1] != 0:  # every block is out: leave the counters zeroed
            i = t
            while i < nsync:
                sync[2 + i] = 0
                i += B
            if t == 0:
                sync[0] = 0
                sync[1] = 0

    @_device
    def combine(part, base, nchunk, sh, t):
        """Sum of a row's nchunk partials, the whole block at once: thread t takes
        chunks t, t + B, ... in order, then the block's fixed tree."""
        acc = A(0)
        q = t
        while q < nchunk:
            acc += ldcg(part, base + q)
            q += B
        return block_sum(sh, acc, t)

    @_device
    def ccombine(part, base, n, nchunk, sh, t, ty):
        """The tile's partials per column: thread (tx, ty) sums chunks ty, ty + TY,
        ... of its n columns into ``sh`` (summed over ty in order by the caller)."""
        acc = czero()
        q = ty
        while q < nchunk:
            acc = cadd(acc, cparts(part, base + q * CB, n))
            q += TY
        cput(sh, t * VW, acc)
        cuda.syncthreads()

    @_device
    def csum(sh, tx, k):
        """Column k of thread column tx: the TY per-thread sums, in ty order."""
        tot = A(0)
        for y in range(TY):
            tot += sh[(y * TX + tx) * VW + k]
        return tot

    @_device
    def cflush(sh, acc, part, i, n, t, tx, ty):
        """A cols part item's per-column sums (over ty, in order) to part[i + k]."""
        cput(sh, t * VW, acc)
        cuda.syncthreads()
        if ty == 0:
            for k in range(n):
                part[i + k] = csum(sh, tx, k)

    @_device
    def tile_bounds(r, c, tx, nrows, chunk, rowlen):
        """(first column, columns, first and end reduced index) of thread column tx
        in cols item (tile r, chunk c)."""
        c0 = r * CB + tx * VW
        j0 = c * chunk
        return c0, min(VW, nrows - c0), j0, min(j0 + chunk, rowlen)

    @_device
    def chunk_bounds(head, c, chunk, rowlen):
        """(s, a, e) of chunk c of a row: chunk 0 also takes the scalar head."""
        a = min(head + c * chunk, rowlen)
        e = min(head + (c + 1) * chunk, rowlen)
        s = 0 if c == 0 else a
        return s, a, e

    def fwd_stream(v, vb, w, wb, g, gb, gs, norms, eps, nrows, rowlen, ph, ks, vks, wks,
                   part, sync, nchunk, chunk, lag):
        sh = cuda.shared.array(SH, ATY)
        shi = cuda.shared.array(2, types.int64)
        t = cuda.threadIdx.x
        np_ = nrows * nchunk
        tk = first(sync, shi, t)
        while tk < 2 * np_:
            prefetch(sync, shi, t)
            fin, r, c = decode(tk, np_, lag, nchunk)
            vo, wo = _off2(r, ks, vks, wks)
            vo += vb
            wo += wb
            s, a, e = chunk_bounds(row_head(ph, vo, rowlen), c, chunk, rowlen)
            if not fin:
                tot = block_sum(sh, seg_sumsq(v, vo, s, a, e, t, B), t)
                if t == 0:
                    part[r * nchunk + c] = tot
                if arrive(sync, shi, t, r, nchunk):
                    tot = combine(part, r * nchunk, nchunk, sh, t)
                    if t == 0:
                        nrm = NT(math.sqrt(tot + A(eps)))
                        norms[r] = nrm
                        part[np_ + r] = load(g[gb + r * gs]) / C(nrm)
                    publish(sync, t, r)
            else:
                wait(sync, t, r, nchunk)
                seg_scale(v, vo, w, wo, s, a, e, t, B, C(ldcg(part, np_ + r)))
            tk = take(shi)
        leave(sync, shi, t, nrows)

    def bwd_stream(gw, gwb, v, vb, gv, gvb, g, gb, gs, norms, nb, ns, grad_g, nrows, rowlen,
                   ph, ks, gwks, vks, gvks, part, sync, nchunk, chunk, lag):
        sh = cuda.shared.array(SH, ATY)
        shi = cuda.shared.array(2, types.int64)
        t = cuda.threadIdx.x
        np_ = nrows * nchunk
        tk = first(sync, shi, t)
        while tk < 2 * np_:
            prefetch(sync, shi, t)
            fin, r, c = decode(tk, np_, lag, nchunk)
            go, vo, qo = _off3(r, ks, gwks, vks, gvks)
            go += gwb
            vo += vb
            qo += gvb
            s, a, e = chunk_bounds(row_head(ph, vo, rowlen), c, chunk, rowlen)
            if not fin:
                tot = block_sum(sh, seg_dot(gw, go, v, vo, s, a, e, t, B), t)
                if t == 0:
                    part[r * nchunk + c] = tot
                if arrive(sync, shi, t, r, nchunk):
                    tot = combine(part, r * nchunk, nchunk, sh, t)
                    if t == 0:
                        nrm = A(norms[nb + r * ns])
                        ggrad = tot / nrm
                        grad_g[r] = store(C(ggrad))
                        gA = A(load(g[gb + r * gs]))
                        part[np_ + 2 * r] = C(gA / nrm)
                        part[np_ + 2 * r + 1] = C(gA * ggrad / (nrm * nrm))
                    publish(sync, t, r)
            else:
                wait(sync, t, r, nchunk)
                ca = C(ldcg(part, np_ + 2 * r))
                cb = C(ldcg(part, np_ + 2 * r + 1))
                seg_grad(gw, go, v, vo, gv, qo, s, a, e, t, B, ca, cb)
            tk = take(shi)
        leave(sync, shi, t, nrows)

    # ------------------------------------------------------------ kept axis contiguous
    # ``cols``: the ticketed stream over tiles of CB = TX x VW consecutive kept
    # indices ("columns", contiguous in memory) x chunks of ``chunk`` reduced
    # indices.  Thread (tx, ty) owns columns tile*CB + tx*VW + [0, VW) and walks
    # reduced indices ty, ty + TY, ... of the chunk, so each warp access covers
    # TX x VW adjacent columns (coalesced along the kept axis; no transpose).
    # VW = W moves 16-byte vectors (one kept dim of stride 1, reduced strides
    # multiples of W, origins 16-byte aligned: `_launch` checks); VW = 1 is any
    # layout.  Partials of a chunk: sum over ty in order (ty == 0 threads).

    def fwd_cols(v, vb, w, wb, g, gb, gs, norms, eps, nrows, rowlen,
                 ks, vks, wks, rs, vrs, wrs, part, sync, nchunk, chunk, lag):
        sh = cuda.shared.array(SHC, ATY)
        shi = cuda.shared.array(2, types.int64)
        t = cuda.threadIdx.x
        tx = t % TX
        ty = t // TX
        ntile = (nrows + CB - 1) // CB
        np_ = ntile * nchunk
        tk = first(sync, shi, t)
        while tk < 2 * np_:
            prefetch(sync, shi, t)
            fin, r, c = decode(tk, np_, lag, nchunk)
            c0, n, j0, j1 = tile_bounds(r, c, tx, nrows, chunk, rowlen)
            vo = 0
            wo = 0
            if n > 0:
                vo, wo = _off2(c0, ks, vks, wks)
                vo += vb
                wo += wb
            if not fin:
                acc = czero()
                if n > 0:
                    j = j0 + ty
                    while j < j1:
                        acc = csq(acc, cload(v, vo + _off1(j, rs, vrs), n))
                        j += TY
                cflush(sh, acc, part, (r * nchunk + c) * CB + tx * VW, n, t, tx, ty)
                if arrive(sync, shi, t, r, nchunk):
                    ccombine(part, r * nchunk * CB + tx * VW, n, nchunk, sh, t, ty)
                    if ty == 0:
                        for k in range(n):
                            nrm = NT(math.sqrt(csum(sh, tx, k) + A(eps)))
                            norms[c0 + k] = nrm
                            part[np_ * CB + c0 + k] = load(g[gb + (c0 + k) * gs]) / C(nrm)
                    publish(sync, t, r)
            else:
                wait(sync, t, r, nchunk)
                if n > 0:
                    sc = cscales(part, np_ * CB + c0, n, 1)
                    j = j0 + ty
                    while j < j1:
                        a, b = _off2(j, rs, vrs, wrs)
                        cstore(w, wo + b, n, cscale(cload(v, vo + a, n), sc))
                        j += TY
            tk = take(shi)
        leave(sync, shi, t, ntile)

    def bwd_cols(gw, gwb, v, vb, gv, gvb, g, gb, gs, norms, nb, ns, grad_g, nrows, rowlen,
                 ks, gwks, vks, gvks, rs, gwrs, vrs, gvrs, part, sync, nchunk, chunk, lag):
        sh = cuda.shared.array(SHC, ATY)
        shi = cuda.shared.array(2, types.int64)
        t = cuda.threadIdx.x
        tx = t % TX
        ty = t // TX
        ntile = (nrows + CB - 1) // CB
        np_ = ntile * nchunk
        tk = first(sync, shi, t)
        while tk < 2 * np_:
            prefetch(sync, shi, t)
            fin, r, c = decode(tk, np_, lag, nchunk)
            c0, n, j0, j1 = tile_bounds(r, c, tx, nrows, chunk, rowlen)
            go = 0
            vo = 0
            qo = 0
            if n > 0:
                go, vo, qo = _off3(c0, ks, gwks, vks, gvks)
                go += gwb
                vo += vb
                qo += gvb
            if not fin:
                acc = czero()
                if n > 0:
                    j = j0 + ty
                    while j < j1:
                        a, b = _off2(j, rs, gwrs, vrs)
                        acc = cdot(acc, cload(gw, go + a, n), cload(v, vo + b, n))
                        j += TY
                cflush(sh, acc, part, (r * nchunk + c) * CB + tx * VW, n, t, tx, ty)
                if arrive(sync, shi, t, r, nchunk):
                    ccombine(part, r * nchunk * CB + tx * VW, n, nchunk, sh, t, ty)
                    if ty == 0:
                        for k in range(n):
                            nrm = A(norms[nb + (c0 + k) * ns])
                            ggrad = csum(sh, tx, k) / nrm
                            grad_g[c0 + k] = store(C(ggrad))
                            gA = A(load(g[gb + (c0 + k) * gs]))
                            part[np_ * CB + 2 * (c0 + k)] = C(gA / nrm)
                            part[np_ * CB + 2 * (c0 + k) + 1] = C(gA * ggrad / (nrm * nrm))
                    publish(sync, t, r)
            else:
                wait(sync, t, r, nchunk)
                if n > 0:
                    ca = cscales(part, np_ * CB + 2 * c0, n, 2)
                    cb = cscales(part, np_ * CB + 2 * c0 + 1, n, 2)
                    j = j0 + ty
                    while j < j1:
                        a, b, q = _off3(j, rs, gwrs, vrs, gvrs)
                        cstore(gv, qo + q, n, cgrad(cload(gw, go + a, n), cload(v, vo + b, n),
                                                    ca, cb))
                        j += TY
            tk = take(shi)
        leave(sync, shi, t, ntile)

    def zero(a, n):
        """a[:n] = 0 (a new ``sync`` workspace)."""
        i = cuda.blockIdx.x * B + cuda.threadIdx.x
        while i < n:
            a[i] = 0
            i += cuda.gridDim.x * B

    # ------------------------------------------------------------ strided copy
    def copy(src, sb, dst, db, n, shape, sstr, dstr):
        """dst = src element by element (a small per-row array made contiguous)."""
        i = cuda.blockIdx.x * B + cuda.threadIdx.x
        while i < n:
            a, b = _off2(i, shape, sstr, dstr)
            dst[db + b] = src[sb + a]
            i += cuda.gridDim.x * B

    fn = {
        "copy": copy,
        "fwd_block": fwd_block, "bwd_block": bwd_block,
        "fwd_group": fwd_group, "bwd_group": bwd_group,
        "fwd_cols": fwd_cols, "bwd_cols": bwd_cols,
        "fwd_part": fwd_part, "fwd_finish": fwd_finish,
        "bwd_part": bwd_part, "bwd_finish": bwd_finish,
        "fwd_stream": fwd_stream, "bwd_stream": bwd_stream,
        "zero": zero,
    }[kind]
    fn.__name__ = f"wn_{kind}_{dtype}"
    fn.__qualname__ = fn.__name__
    return _quiet(fn)


# ---------------------------------------------------------------- signatures

def _arr(npt):
    scalar = {np.float16: types.float16, np.uint16: types.uint16,
              np.float32: types.float32, np.float64: types.float64}[npt]
    return types.Array(scalar, 1, "C")


def signature(kind: str, dtype: str, nk: int, nr: int) -> tuple:
    """Numba argument types of one kernel for ``nk`` kept and ``nr`` reduced dims
    (``regs`` and ``stream`` rows are one contiguous run: no reduced-dim tuples)."""
    S = _arr(_STORAGE[dtype])
    N = _arr(_NORM[dtype])
    P = _arr(_ACC[dtype])
    Y = types.Array(types.int64, 1, "C")
    i8 = types.int64
    f8 = types.float64
    K = types.UniTuple(i8, nk)
    R = types.UniTuple(i8, nr)
    fwd = (S, i8, S, i8, S, i8, i8, N, f8, i8, i8)        # v .. rowlen
    bwd = (S, i8, S, i8, S, i8, S, i8, i8, N, i8, i8, S, i8, i8)
    ticket = (P, Y, i8, i8, i8)                          # part, sync, nchunk, chunk, lag
    if kind in ("fwd_block", "fwd_group"):
        return fwd + (K, K, K, R, R, R)
    if kind in ("bwd_block", "bwd_group"):
        return bwd + (K, K, K, K, R, R, R, R)
    if kind == "fwd_regs":
        return fwd + (i8, K, K, K)
    if kind == "bwd_regs":
        return bwd + (i8, K, K, K, K)
    if kind == "fwd_stream":
        return fwd + (i8, K, K, K) + ticket
    if kind == "bwd_stream":
        return bwd + (i8, K, K, K, K) + ticket
    if kind == "fwd_cols":
        return fwd + (K, K, K, R, R, R) + ticket
    if kind == "bwd_cols":
        return bwd + (K, K, K, K, R, R, R, R) + ticket
    if kind == "copy":
        return (S, i8, S, i8, i8, K, K, K)
    if kind == "zero":
        return (Y, i8)
    if kind == "fwd_part":
        return (S, i8, P, i8, i8, i8, i8, K, K, R, R)
    if kind == "fwd_finish":
        return (S, i8, S, i8, S, i8, i8, N, P, f8, i8, i8, i8, i8,
                K, K, K, R, R, R)
    if kind == "bwd_part":
        return (S, i8, S, i8, P, i8, i8, i8, i8, K, K, K, R, R, R)
    if kind == "bwd_finish":
        return (S, i8, S, i8, S, i8, S, i8, i8, N, i8, i8, S, P, i8, i8, i8, i8,
                K, K, K, K, R, R, R, R)
    raise KeyError(kind)
