"""A strided element copy on the GPU: makes a small per-row array (g, norms)
contiguous for array kinds that have no copy of their own (numba, CUDA array
interface and DLPack objects)."""

from __future__ import annotations

import numpy as np

from ._numba import cuda as _numba_cuda, SIM
from .kernels._common import cuda, quiet, storage_dtype, _off2

__all__ = ["copy_kernel"]

_KERNELS: dict = {}


def _make(nd: int, B: int):
    def copy(src, sb, dst, db, n, shape, sstr, dstr):
        i = cuda.blockIdx.x * B + cuda.threadIdx.x
        while i < n:
            a, b = _off2(i, shape, sstr, dstr)
            dst[db + b] = src[sb + a]
            i += cuda.gridDim.x * B
    copy.__name__ = copy.__qualname__ = f"wn_copy_{nd}"
    return quiet(copy)


def copy_kernel(src, dst, block, nsm, handle):
    """``dst`` (ArrayInfo, C-contiguous) = ``src`` (ArrayInfo, any strides)."""
    from ._launch import _Arr, _to_numba, _to_sim
    st = storage_dtype(src.dtype)
    isz = np.dtype(st).itemsize
    lo = sum(min(0, (n - 1) * s) for n, s in zip(src.shape, src.strides))
    hi = sum(max(0, (n - 1) * s) for n, s in zip(src.shape, src.strides))
    S = _Arr(src.ptr + lo * isz, hi - lo + 1, st, src.obj)
    D = _Arr(dst.ptr, dst.size, st, dst.obj)
    shape = tuple(src.shape) or (1,)
    ss = tuple(src.strides) or (0,)
    ds = tuple(dst.strides) or (0,)
    key = (len(shape), block, st)
    k = _KERNELS.get(key)
    if k is None:
        k = _KERNELS[key] = _numba_cuda.jit(_make(len(shape), block))
    grid = max(min(-(-dst.size // block), 16 * nsm), 1)
    conv = [_to_sim(a) if SIM else _to_numba(a) for a in (S, D)]
    args = (conv[0], -lo, conv[1], 0, dst.size, shape, ss, ds)
    if SIM:
        k[grid, block](*args)
    else:
        k[grid, block, _numba_cuda.external_stream(handle) if handle else 0](*args)

