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

Strategies (all deterministic: fixed reduction trees, no atomics):

``block``   one block of ``B`` threads per row (grid-stride over rows); thread ``t``
            sums elements ``t, t+B, ...``; block tree reduction; second pass writes.
``group``   ``G`` (8/16/32) lanes per row, ``B/G`` rows per block, for short rows;
            the group reduces with ``shfl_xor`` butterflies (or shared memory).
``split``   few long rows: each row is cut into ``nchunk`` chunks of ``chunk``
            elements, one block per (row, chunk).  Kernel 1 (``*_part``) writes one
            partial sum per block to a small workspace; kernel 2 (``*_finish``) sums a
            row's partials in chunk order (thread 0, fixed order), then scales its
            chunk.  Kernel 2 walks the chunks in reverse launch order so the chunks
            read last by kernel 1 are re-read first, while they are still in L2.
``cols``    kept axis contiguous (``dim=-1``): a block is ``TX`` consecutive rows x
            ``TY = B/TX`` threads along the reduction, so each warp load touches
            ``TX`` adjacent rows (coalesced along the kept axis, no transpose);
            the ``TY`` partials of a row are summed in order by thread ``ty == 0``.

Vector variants (``VKINDS``: ``fwd_vblock``, ``bwd_vblock``, ``fwd_vgroup``,
``bwd_vgroup``, ``fwd_vpart``, ``fwd_vfinish``, ``bwd_vpart``, ``bwd_vfinish``).
Same strategies and arguments as their scalar counterparts, for rows that are one
contiguous run (stride 1) in every array and start 16-byte aligned (`_launch`
checks the pointers and kept strides on the host; the reduced-dim tuples are
ignored).  Global memory moves 16 bytes at a time through `_vec.vload` /
`_vec.vstore` (``ld.global.v4`` / ``st.global.v4``): ``W`` = 8 elements for
float16 / bfloat16, 4 for float32, 2 for float64.  A row segment ``[s, end)``
(``s`` a multiple of ``W``) is walked as: lane ``l`` of ``n`` cooperating
threads takes vectors ``l, l+n, l+2n, ...`` (elements in order within each
vector), then the ``< W`` tail elements ``s + nv*W + l, ...`` one by one.  Each
element goes through exactly the scalar kernels' arithmetic (same load
conversion, same per-element formula, same store rounding), so ``w`` and
``grad_v`` get the same per-element expression; only the order of each
thread's partial sum differs from the scalar kernels (a fixed order too, so
results are bitwise reproducible; scalar and vector paths agree to rounding).
Under the simulator ``vload``/``vstore`` are plain Python (and check alignment),
so the same kernel source is tested there.

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

import numpy as np

from ._numba import cuda, SIM, types
from ._vec import vload, vstore

__all__ = ["DTYPES", "KINDS", "VKINDS", "make_kernel", "signature", "storage_dtype",
           "acc_dtype", "norm_dtype", "vec_width"]

DTYPES = ("float16", "bfloat16", "float32", "float64")
KINDS = ("fwd_block", "bwd_block", "fwd_group", "bwd_group", "fwd_cols",
         "bwd_cols", "fwd_part", "fwd_finish", "bwd_part", "bwd_finish", "copy")
# 16-byte vector variants (contiguous, 16-byte aligned rows; see the module docstring)
VKINDS = ("fwd_vblock", "bwd_vblock", "fwd_vgroup", "bwd_vgroup",
          "fwd_vpart", "fwd_vfinish", "bwd_vpart", "bwd_vfinish")
KINDS = KINDS + VKINDS

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

    def _quiet(fn):
        def kernel(*args):
            with np.errstate(all="ignore"):
                fn(*args)
        kernel.__name__ = fn.__name__
        return kernel

    def _device(fn):
        return fn
else:
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
    return 16 // np.dtype(_STORAGE[dtype]).itemsize


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
    ns = dict(A=A, load=load, store=store)
    exec(compile(src, f"<wnkernels vector helpers W={W}>", "exec"), ns)
    return tuple(_device(ns[n]) for n in ("vsumsq", "vdot", "vscale", "vgrad"))


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


def make_kernel(kind: str, dtype: str, block: int, shuffle: bool, sub: int = 0):
    """The Python function of one kernel (jit it with ``cuda.jit`` or ``compile_ptx``).

    ``block`` is the number of threads per block (a power of two, >= 32 when
    ``shuffle``); ``sub`` is ``G`` (lanes per row) for ``group`` and ``TX`` (rows per
    block) for ``cols``.
    """
    B = int(block)
    if B & (B - 1) or B < 1:
        raise ValueError("block must be a power of two")
    if shuffle and B < 32:
        raise ValueError("the shuffle reduction needs blocks of >= 32 threads")
    G = int(sub) if kind.endswith("group") else 32
    if kind.endswith("group") and (G & (G - 1) or G > 32 or G > B or G < 1):
        raise ValueError("group size must be a power of two <= min(32, block)")
    TX = int(sub) if kind.endswith("cols") else 1
    if kind.endswith("cols") and (TX < 1 or B % TX):
        raise ValueError("cols: rows per block must divide the block")
    TY = B // TX
    load, store, A, C, NT = _dtype_helpers(dtype)
    block_sum, group_sum, ATY = _reducers(A, B, shuffle, G)
    CTY = _numba_type(C)
    RPB = B // G
    SH = B  # shared scratch length (both reduction forms fit in B)
    W = vec_width(dtype)
    vsumsq, vdot, vscale, vgrad = _vec_helpers(W, load, store, A)

    # -------------------------------------------- contiguous row segments, 16-byte vectors
    # Elements [s, end) of a row whose element 0 is at index o (of every array
    # involved), s a multiple of W, &array[o] 16-byte aligned (checked on the host).
    # ``lane`` of ``step`` cooperating threads takes vectors lane, lane+step, ...
    # (each vector's W elements in order), then the < W tail elements one by one.

    @_device
    def seg_sumsq(v, o, s, end, lane, step):
        acc = A(0)
        nv = (end - s) // W
        j = lane
        while j < nv:
            acc = vsumsq(acc, vload(v, o + s + j * W))
            j += step
        j = s + nv * W + lane
        while j < end:
            x = A(load(v[o + j]))
            acc += x * x
            j += step
        return acc

    @_device
    def seg_scale(v, vo, w, wo, s, end, lane, step, scale):
        nv = (end - s) // W
        j = lane
        while j < nv:
            k = s + j * W
            vstore(w, wo + k, vscale(vload(v, vo + k), scale))
            j += step
        j = s + nv * W + lane
        while j < end:
            w[wo + j] = store(load(v[vo + j]) * scale)
            j += step

    @_device
    def seg_dot(gw, go, v, vo, s, end, lane, step):
        acc = A(0)
        nv = (end - s) // W
        j = lane
        while j < nv:
            k = s + j * W
            acc = vdot(acc, vload(gw, go + k), vload(v, vo + k))
            j += step
        j = s + nv * W + lane
        while j < end:
            acc += A(load(gw[go + j])) * A(load(v[vo + j]))
            j += step
        return acc

    @_device
    def seg_grad(gw, go, v, vo, gv, qo, s, end, lane, step, ca, cb):
        nv = (end - s) // W
        j = lane
        while j < nv:
            k = s + j * W
            vstore(gv, qo + k, vgrad(vload(gw, go + k), vload(v, vo + k), ca, cb))
            j += step
        j = s + nv * W + lane
        while j < end:
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

    # ------------------------------------------------------------ kept axis contiguous
    def fwd_cols(v, vb, w, wb, g, gb, gs, norms, eps, nrows, rowlen,
                 ks, vks, wks, rs, vrs, wrs):
        sh = cuda.shared.array(SH, ATY)
        shs = cuda.shared.array(TX, CTY)
        t = cuda.threadIdx.x
        tx = t % TX
        ty = t // TX
        base = cuda.blockIdx.x * TX
        while base < nrows:
            r = base + tx
            active = r < nrows
            vo = 0
            wo = 0
            acc = A(0)
            if active:
                vo, wo = _off2(r, ks, vks, wks)
                vo += vb
                wo += wb
                j = ty
                while j < rowlen:
                    x = A(load(v[vo + _off1(j, rs, vrs)]))
                    acc += x * x
                    j += TY
            sh[t] = acc
            cuda.syncthreads()
            if ty == 0 and active:
                tot = A(0)
                for y in range(TY):
                    tot += sh[y * TX + tx]
                nrm = NT(math.sqrt(tot + A(eps)))
                norms[r] = nrm
                shs[tx] = load(g[gb + r * gs]) / C(nrm)
            cuda.syncthreads()
            if active:
                scale = shs[tx]
                j = ty
                while j < rowlen:
                    a, b = _off2(j, rs, vrs, wrs)
                    w[wo + b] = store(load(v[vo + a]) * scale)
                    j += TY
            # sh is free again (read before the barrier); shs is rewritten only
            # after the next iteration's first barrier.
            base += cuda.gridDim.x * TX

    def bwd_cols(gw, gwb, v, vb, gv, gvb, g, gb, gs, norms, nb, ns, grad_g,
                 nrows, rowlen, ks, gwks, vks, gvks, rs, gwrs, vrs, gvrs):
        sh = cuda.shared.array(SH, ATY)
        sha = cuda.shared.array(TX, CTY)
        shb = cuda.shared.array(TX, CTY)
        t = cuda.threadIdx.x
        tx = t % TX
        ty = t // TX
        base = cuda.blockIdx.x * TX
        while base < nrows:
            r = base + tx
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
                j = ty
                while j < rowlen:
                    a, b = _off2(j, rs, gwrs, vrs)
                    acc += A(load(gw[go + a])) * A(load(v[vo + b]))
                    j += TY
            sh[t] = acc
            cuda.syncthreads()
            if ty == 0 and active:
                tot = A(0)
                for y in range(TY):
                    tot += sh[y * TX + tx]
                nrm = A(norms[nb + r * ns])
                ggrad = tot / nrm
                grad_g[r] = store(C(ggrad))
                gA = A(load(g[gb + r * gs]))
                sha[tx] = C(gA / nrm)
                shb[tx] = C(gA * ggrad / (nrm * nrm))
            cuda.syncthreads()
            if active:
                ca = sha[tx]
                cb = shb[tx]
                j = ty
                while j < rowlen:
                    a, b, c = _off3(j, rs, gwrs, vrs, gvrs)
                    gv[qo + c] = store(ca * load(gw[go + a]) - cb * load(v[vo + b]))
                    j += TY
            base += cuda.gridDim.x * TX

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

    # ------------------------------------------------------------ 16-byte vector variants
    # Same structure as the scalar kernels above; rows are contiguous (the
    # reduced-index tuples rs / *rs are unused) and 16-byte aligned.

    def fwd_vblock(v, vb, w, wb, g, gb, gs, norms, eps, nrows, rowlen,
                   ks, vks, wks, rs, vrs, wrs):
        sh = cuda.shared.array(SH, ATY)
        t = cuda.threadIdx.x
        r = cuda.blockIdx.x
        while r < nrows:
            vo, wo = _off2(r, ks, vks, wks)
            vo += vb
            wo += wb
            acc = seg_sumsq(v, vo, 0, rowlen, t, B)
            tot = block_sum(sh, acc, t)
            nrm = NT(math.sqrt(tot + A(eps)))
            if t == 0:
                norms[r] = nrm
            scale = load(g[gb + r * gs]) / C(nrm)
            seg_scale(v, vo, w, wo, 0, rowlen, t, B, scale)
            r += cuda.gridDim.x

    def bwd_vblock(gw, gwb, v, vb, gv, gvb, g, gb, gs, norms, nb, ns, grad_g,
                   nrows, rowlen, ks, gwks, vks, gvks, rs, gwrs, vrs, gvrs):
        sh = cuda.shared.array(SH, ATY)
        t = cuda.threadIdx.x
        r = cuda.blockIdx.x
        while r < nrows:
            go, vo, qo = _off3(r, ks, gwks, vks, gvks)
            go += gwb
            vo += vb
            qo += gvb
            acc = seg_dot(gw, go, v, vo, 0, rowlen, t, B)
            tot = block_sum(sh, acc, t)
            nrm = A(norms[nb + r * ns])
            ggrad = tot / nrm
            if t == 0:
                grad_g[r] = store(C(ggrad))
            gA = A(load(g[gb + r * gs]))
            ca = C(gA / nrm)
            cb = C(gA * ggrad / (nrm * nrm))
            seg_grad(gw, go, v, vo, gv, qo, 0, rowlen, t, B, ca, cb)
            r += cuda.gridDim.x

    def fwd_vgroup(v, vb, w, wb, g, gb, gs, norms, eps, nrows, rowlen,
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
                acc = seg_sumsq(v, vo, 0, rowlen, lane, G)
            tot = group_sum(sh, acc, t)
            if active:
                nrm = NT(math.sqrt(tot + A(eps)))
                if lane == 0:
                    norms[r] = nrm
                scale = load(g[gb + r * gs]) / C(nrm)
                seg_scale(v, vo, w, wo, 0, rowlen, lane, G, scale)
            base += cuda.gridDim.x * RPB

    def bwd_vgroup(gw, gwb, v, vb, gv, gvb, g, gb, gs, norms, nb, ns, grad_g,
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
                acc = seg_dot(gw, go, v, vo, 0, rowlen, lane, G)
            tot = group_sum(sh, acc, t)
            if active:
                nrm = A(norms[nb + r * ns])
                ggrad = tot / nrm
                if lane == 0:
                    grad_g[r] = store(C(ggrad))
                gA = A(load(g[gb + r * gs]))
                ca = C(gA / nrm)
                cb = C(gA * ggrad / (nrm * nrm))
                seg_grad(gw, go, v, vo, gv, qo, 0, rowlen, lane, G, ca, cb)
            base += cuda.gridDim.x * RPB

    def fwd_vpart(v, vb, part, nrows, rowlen, nchunk, chunk, ks, vks, rs, vrs):
        sh = cuda.shared.array(SH, ATY)
        t = cuda.threadIdx.x
        nblk = nrows * nchunk
        bid = cuda.blockIdx.x
        while bid < nblk:
            r = bid // nchunk
            c = bid - r * nchunk
            vo = vb + _off1(r, ks, vks)
            s = c * chunk  # chunk is a multiple of W (host side)
            acc = seg_sumsq(v, vo, s, min(s + chunk, rowlen), t, B)
            tot = block_sum(sh, acc, t)
            if t == 0:
                part[bid] = tot
            bid += cuda.gridDim.x

    def fwd_vfinish(v, vb, w, wb, g, gb, gs, norms, part, eps, nrows, rowlen,
                    nchunk, chunk, ks, vks, wks, rs, vrs, wrs):
        shs = cuda.shared.array(1, CTY)
        t = cuda.threadIdx.x
        nblk = nrows * nchunk
        k = cuda.blockIdx.x
        while k < nblk:
            bid = nblk - 1 - k  # reverse of fwd_vpart's order: L2 still holds these
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
            s = c * chunk
            seg_scale(v, vo + vb, w, wo + wb, s, min(s + chunk, rowlen), t, B, scale)
            cuda.syncthreads()
            k += cuda.gridDim.x

    def bwd_vpart(gw, gwb, v, vb, part, nrows, rowlen, nchunk, chunk,
                  ks, gwks, vks, rs, gwrs, vrs):
        sh = cuda.shared.array(SH, ATY)
        t = cuda.threadIdx.x
        nblk = nrows * nchunk
        bid = cuda.blockIdx.x
        while bid < nblk:
            r = bid // nchunk
            c = bid - r * nchunk
            go, vo = _off2(r, ks, gwks, vks)
            s = c * chunk
            acc = seg_dot(gw, go + gwb, v, vo + vb, s, min(s + chunk, rowlen), t, B)
            tot = block_sum(sh, acc, t)
            if t == 0:
                part[bid] = tot
            bid += cuda.gridDim.x

    def bwd_vfinish(gw, gwb, v, vb, gv, gvb, g, gb, gs, norms, nb, ns, grad_g,
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
            s = c * chunk
            seg_grad(gw, go + gwb, v, vo + vb, gv, qo + gvb, s, min(s + chunk, rowlen),
                     t, B, ca, cb)
            cuda.syncthreads()
            k += cuda.gridDim.x

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
        "fwd_vblock": fwd_vblock, "bwd_vblock": bwd_vblock,
        "fwd_vgroup": fwd_vgroup, "bwd_vgroup": bwd_vgroup,
        "fwd_vpart": fwd_vpart, "fwd_vfinish": fwd_vfinish,
        "bwd_vpart": bwd_vpart, "bwd_vfinish": bwd_vfinish,
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
    (a ``v*`` kernel takes exactly the arguments of its scalar counterpart)."""
    if kind in VKINDS:
        kind = kind.replace("_v", "_", 1)
    S = _arr(_STORAGE[dtype])
    N = _arr(_NORM[dtype])
    P = _arr(_ACC[dtype])
    i8 = types.int64
    f8 = types.float64
    K = types.UniTuple(i8, nk)
    R = types.UniTuple(i8, nr)
    if kind in ("fwd_block", "fwd_group", "fwd_cols"):
        return (S, i8, S, i8, S, i8, i8, N, f8, i8, i8, K, K, K, R, R, R)
    if kind in ("bwd_block", "bwd_group", "bwd_cols"):
        return (S, i8, S, i8, S, i8, S, i8, i8, N, i8, i8, S, i8, i8,
                K, K, K, K, R, R, R, R)
    if kind == "copy":
        return (S, i8, S, i8, i8, K, K, K)
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
