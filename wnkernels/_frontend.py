"""The front end: validation, layout normalization and backend dispatch.

Everything the user passes is checked here, before any output is allocated or
any kernel runs, so a bad call raises and writes nothing.  Arrays are then
described as rows x reduced elements (`wnkernels._layout.Layout`) and handed
to the CPU kernels (csrc/ via wnkernels._cpu) or the CUDA kernels
(wnkernels.cuda) without copying.  The front end never loops over data.
"""

from __future__ import annotations

import os
import sys
import threading
from functools import lru_cache
from math import isfinite

import numpy as np

try:
    from . import _cpu as _cpu_ext
except ImportError as e:  # pragma: no cover - a source checkout without a build
    raise ImportError(
        "wnkernels' compiled extension (wnkernels._cpu) is missing: install the "
        "package (pip install .) or build it in place (python setup.py "
        "build_ext --inplace). If you ran Python from the source directory, "
        "the source tree shadows the installed package.") from e
from ._arrays import FLOAT_DTYPES, ArrayInfo
from ._layout import make_layout, normalize_dim

_fast_forward = _cpu_ext.fast_forward
_fast_forward_out = _cpu_ext.fast_forward_out
_fast_backward = _cpu_ext.fast_backward

__all__ = ["weight_norm", "weight_norm_backward", "set_num_threads",
           "get_num_threads", "empty_cache"]

# ---------------------------------------------------------------- threads


def _default_threads() -> int:
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


_threads = _default_threads()


def set_num_threads(n: int) -> None:
    """Number of threads the CPU kernels use (default: all usable cores, or
    ``OMP_NUM_THREADS``).  Results are bitwise identical for every value."""
    global _threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _threads = int(n)


def get_num_threads() -> int:
    """Number of threads the CPU kernels use."""
    return _threads


# ------------------------------------------------------------- array intake

_cuda_mod = None
_ml_bf16 = None


def _cuda():
    global _cuda_mod
    if _cuda_mod is None:
        from . import cuda as mod
        _cuda_mod = mod
    return _cuda_mod


def _bf16_dtype():
    global _ml_bf16
    if _ml_bf16 is None:
        import ml_dtypes
        _ml_bf16 = np.dtype(ml_dtypes.bfloat16)
    return _ml_bf16


_LIBRARY = {"numpy": "NumPy", "torch": "torch", "torch-cuda": "torch",
            "cupy": "CuPy", "numba": "numba", "cai": "CUDA array interface",
            "dlpack": "DLPack"}


def _torch_tensor_type():
    torch = sys.modules.get("torch")
    return torch.Tensor if torch is not None else None


def _numpy_info(name: str, arr: np.ndarray, kind: str, obj, dtype_name=None):
    if dtype_name is None:
        dtype_name = arr.dtype.name
        if dtype_name in FLOAT_DTYPES and not arr.dtype.isnative:
            if name == "out":
                raise ValueError("out: byte-swapped arrays cannot be written")
            arr = arr.astype(arr.dtype.newbyteorder("="))  # rare: one copy
        if dtype_name == "bfloat16":                       # ml_dtypes.bfloat16
            arr = arr.view(np.uint16)
    itemsize = arr.dtype.itemsize
    if not arr.flags.aligned:
        if name == "out":
            raise ValueError("out: array is not aligned to its itemsize")
        arr = arr.copy()
    strides = tuple(s // itemsize for s in arr.strides)
    return ArrayInfo(obj=obj, kind=kind, device=("cpu", 0), shape=arr.shape,
                     strides=strides, dtype=dtype_name, itemsize=itemsize,
                     ptr=arr.__array_interface__["data"][0],
                     readonly=not arr.flags.writeable, base=arr)


def _info(name: str, x) -> ArrayInfo:
    """Describe one argument; TypeError for anything that is not an array."""
    if isinstance(x, np.ndarray):
        return _numpy_info(name, x, "numpy", x)
    tt = _torch_tensor_type()
    if tt is not None and isinstance(x, tt):
        if x.is_conj() or x.is_neg():   # the data pointer ignores these bits
            if name == "out":   # resolving copies: writes would be lost
                raise ValueError("out: a tensor with the negative/conjugate bit "
                                 "set cannot be written in place")
            x = x.resolve_conj().resolve_neg()
        if x.is_cuda:
            return _cuda().info(x)
        if x.layout is not sys.modules["torch"].strided or x.device.type != "cpu":
            raise TypeError(f"{name}: only strided CPU or CUDA torch tensors are "
                            f"supported, got layout={x.layout} device={x.device}")
        dtype_name = str(x.dtype).replace("torch.", "")
        t = x.detach()
        if dtype_name == "bfloat16":
            arr = t.view(sys.modules["torch"].int16).numpy().view(np.uint16)
        elif dtype_name in FLOAT_DTYPES:
            arr = t.numpy()
        else:
            arr = None
        if arr is None:
            raise TypeError(f"{name}: unsupported dtype {x.dtype}; expected "
                            "float16, bfloat16, float32 or float64")
        info = _numpy_info(name, arr, "torch", x, dtype_name)
        info.readonly = False
        return info
    if isinstance(x, (int, float, complex, bool, np.generic)) or x is None \
            or isinstance(x, (list, tuple, str, bytes)):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if _maybe_gpu(x) and _cuda().is_gpu_array(x):
        return _cuda().info(x)
    if hasattr(x, "__array_interface__") or hasattr(x, "__dlpack__"):
        try:
            arr = np.from_dlpack(x) if hasattr(x, "__dlpack__") else np.asarray(x)
        except (TypeError, BufferError, RuntimeError) as e:
            raise TypeError(f"{name}: cannot read array of type "
                            f"{type(x).__name__}: {e}") from None
        return _numpy_info(name, arr, "numpy", arr)
    raise TypeError(f"{name} must be an array, got {type(x).__name__}")


def _maybe_gpu(x) -> bool:
    if hasattr(x, "__cuda_array_interface__"):
        return True
    mod = type(x).__module__
    if mod.startswith(("cupy", "numba")):
        return True
    dev = getattr(x, "__dlpack_device__", None)
    if dev is not None:
        try:
            return dev()[0] in (2, 3, 13)   # kDLCUDA, kDLCUDAHost, kDLCUDAManaged
        except Exception:
            return False
    return False


def _check_family(infos) -> None:
    libs = {_LIBRARY[i.kind] for i in infos.values()}
    if len(libs) > 1:
        names = ", ".join(f"{n}: {_LIBRARY[i.kind]}" for n, i in infos.items())
        raise TypeError(f"all arrays must be of one kind, got {names}")
    devs = {i.device for i in infos.values()}
    if len(devs) > 1:
        names = ", ".join(f"{n}: {i.device[0]}:{i.device[1]}"
                          for n, i in infos.items())
        raise ValueError(f"all arrays must be on one device, got {names}")


def _check_dtypes(infos, norms=None) -> str:
    for n, i in infos.items():
        if i.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{n}: unsupported dtype {i.dtype}; expected "
                            "float16, bfloat16, float32 or float64")
    dts = {i.dtype for i in infos.values()}
    if len(dts) > 1:
        names = ", ".join(f"{n}: {i.dtype}" for n, i in infos.items())
        raise TypeError(f"arrays must share one dtype, got {names}")
    dtype = dts.pop()
    if norms is not None and norms.dtype != FLOAT_DTYPES[dtype]:
        raise TypeError(f"norms: expected dtype {FLOAT_DTYPES[dtype]} (as "
                        f"weight_norm returns it for {dtype}), got {norms.dtype}")
    return dtype


def _g_shapes(vshape, kept):
    keep = tuple(n if ax in kept else 1 for ax, n in enumerate(vshape))
    flat = tuple(vshape[ax] for ax in kept)
    return (keep, flat) if kept else (keep, (), (1,))


def _check_g_shape(name, info, vshape, kept, dim):
    allowed = _g_shapes(vshape, kept)
    if info.shape not in allowed:
        want = " or ".join(str(s) for s in dict.fromkeys(allowed))
        raise ValueError(f"{name}: expected shape {want} for v of shape "
                         f"{tuple(vshape)} with dim={dim!r}, got {info.shape}")


def _row_stride(info: ArrayInfo):
    """Element stride between consecutive rows of a per-row array (g, norms),
    or None when its rows are not evenly spaced (then it is copied)."""
    dims = [(n, s) for n, s in zip(info.shape, info.strides) if n != 1]
    if not dims:
        return 0
    for (n_out, s_out), (n_in, s_in) in zip(dims, dims[1:]):
        if s_out != s_in * n_in:
            return None
    return dims[-1][1]


def _overlaps(a: ArrayInfo, b: ArrayInfo) -> bool:
    lo_a, hi_a = a.extent()
    lo_b, hi_b = b.extent()
    if hi_a <= lo_b or hi_b <= lo_a:
        return False
    if a.base is not None and b.base is not None and a.device[0] == "cpu":
        try:
            return bool(np.shares_memory(a.base, b.base, max_work=10**6))
        except np.exceptions.TooHardError:
            return True
    return True


def _may_overlap_itself(info: ArrayInfo) -> bool:
    """Whether two elements of the array may share memory: axes taken by
    increasing |stride|, each must step past everything the smaller ones
    reach.  Exact for broadcast (zero) strides and for every layout a
    transpose or slice of a dense array has; a few exotic interleavings that
    do not overlap are refused too."""
    if info.size == 0:
        return False
    reach = 0
    for st, n in sorted((abs(st), n) for n, st in zip(info.shape, info.strides) if n > 1):
        if st <= reach:
            return True
        reach += st * (n - 1)
    return False


def _check_eps(eps) -> float:
    if eps.__class__ is float and 0.0 <= eps < _INF:
        return eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating,
                                                     np.integer)):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not (eps >= 0.0 and isfinite(eps)):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    return eps


_INF = float("inf")


@lru_cache(maxsize=512)
def _layout(shape, kept, strides):
    return make_layout(shape, kept, strides)


# ------------------------------------------------------------- allocation

class _BufferPool:
    """Reuses large CPU output buffers once the caller has dropped them.

    A fresh multi-MiB NumPy allocation is mmap'ed, and the kernel then pays a
    page fault plus the kernel's page zeroing for every 4 KiB it writes:
    measured here that costs more than the weight-norm itself (64 MiB f32:
    ~6.5 ms of faults vs ~4.7 ms of kernel).  Buffers of at least `MIN_BYTES`
    are kept per exact size; one is reused when nothing but the pool refers to
    it (every view of an output keeps its base buffer alive, so a live result
    is never handed out twice).  The pool holds at most `MAX_PER_SIZE`
    buffers of a size and `MAX_POOLED_BYTES` in all; to make room for a new
    size it drops buffers nobody uses, oldest sizes first.
    `wnkernels.empty_cache()` releases everything.
    """

    MIN_BYTES = 1 << 20
    MAX_PER_SIZE = 4
    MAX_POOLED_BYTES = 1 << 30

    def __init__(self):
        self._lock = threading.Lock()
        self._bufs = {}                   # nbytes -> [uint8 arrays]

    def get(self, nbytes: int) -> np.ndarray:
        if nbytes < self.MIN_BYTES:
            return np.empty(nbytes, np.uint8)
        with self._lock:
            bufs = self._bufs.setdefault(nbytes, [])
            for raw in bufs:
                # Free when only the pool refers to the owning array: every
                # view handed out (and every view of those) has raw as base.
                # refs: the list, getrefcount's argument, the loop variable.
                if sys.getrefcount(raw) == 3:
                    return self._aligned(raw, nbytes)
            raw = np.empty(nbytes + 64, np.uint8)
            if len(bufs) < self.MAX_PER_SIZE:
                self._make_room_locked(nbytes)
                if self._pooled_bytes_locked() + nbytes <= self.MAX_POOLED_BYTES:
                    # (re-inserted: making room drops emptied size lists)
                    self._bufs.setdefault(nbytes, bufs).append(raw)
            return self._aligned(raw, nbytes)

    def _make_room_locked(self, nbytes: int) -> None:
        for size in list(self._bufs):
            bufs = self._bufs[size]
            i = 0
            while i < len(bufs) and \
                    self._pooled_bytes_locked() + nbytes > self.MAX_POOLED_BYTES:
                if sys.getrefcount(bufs[i]) == 2:     # the list, the argument
                    del bufs[i]
                else:
                    i += 1
            if not bufs:
                del self._bufs[size]

    @staticmethod
    def _aligned(raw: np.ndarray, nbytes: int) -> np.ndarray:
        off = (-raw.__array_interface__["data"][0]) % 64   # cache-line align
        return raw[off:off + nbytes]

    def _pooled_bytes_locked(self) -> int:
        # Counted in the sizes handed out (each buffer also carries <64 bytes
        # of alignment slack), so a cap that fits given sizes exactly holds them.
        return sum(size * len(bufs) for size, bufs in self._bufs.items())

    def clear(self) -> None:
        with self._lock:
            self._bufs.clear()


_pool = _BufferPool()
_cpu_ext.set_pool(_pool.get, _BufferPool.MIN_BYTES)


def empty_cache() -> None:
    """Release the CPU output buffers wnkernels keeps for reuse, and the small
    per-stream GPU workspaces (partial sums, ticket counters) if the GPU path
    has run."""
    _pool.clear()
    launch = sys.modules.get("wnkernels.cuda._launch")
    if launch is not None:
        launch.empty_cache()
    if _gpu_fast is not None:
        _gpu_fast.clear()


def _empty_like(info: ArrayInfo, shape, dtype: str, like_strides: bool):
    """New array of `info`'s kind and device; with like_strides, in the same
    axis order as `info` (so the kernels see matching strides)."""
    if info.device[0] == "cuda":
        strides = _dense_strides(info) if like_strides else None
        obj = _cuda().empty(info, tuple(shape), dtype, strides)
        return obj, _cuda().info(obj)
    np_dtype = np.dtype(np.uint16 if dtype == "bfloat16" else dtype)
    dense, perm = _dense_order(shape, info.strides) if like_strides else (shape, None)
    nbytes = np_dtype.itemsize
    for n in dense:
        nbytes *= n
    arr = _pool.get(nbytes).view(np_dtype).reshape(dense)
    if perm is not None:
        arr = arr.transpose(perm)
    user = arr
    if info.kind == "torch":
        torch = sys.modules["torch"]
        user = torch.from_numpy(arr)
        if dtype == "bfloat16":
            user = user.view(torch.bfloat16)
    elif dtype == "bfloat16":
        user = arr.view(_bf16_dtype())
    strides = tuple(s // arr.itemsize for s in arr.strides)
    return user, ArrayInfo(obj=user, kind=info.kind, device=info.device,
                           shape=arr.shape, strides=strides, dtype=dtype,
                           itemsize=arr.itemsize,
                           ptr=arr.__array_interface__["data"][0], base=arr)


def _axis_order(strides):
    """Axes from slowest to fastest (stable), or None if already C order."""
    order = sorted(range(len(strides)), key=lambda i: -abs(strides[i]))
    return None if order == list(range(len(strides))) else order


def _dense_order(shape, strides):
    """(shape to allocate, axis permutation or None) for a dense output in
    the axis order of an array with `strides`: allocate C-contiguous in the
    returned shape, then transpose by the permutation."""
    order = _axis_order(strides)
    if order is None:
        return tuple(shape), None
    return tuple(shape[i] for i in order), tuple(np.argsort(order).tolist())


def _dense_strides(info: ArrayInfo):
    """Element strides of a dense array with `info`'s axis order."""
    order = _axis_order(info.strides) or list(range(len(info.shape)))
    strides = [0] * len(info.shape)
    step = 1
    for ax in reversed(order):
        strides[ax] = step
        step *= max(info.shape[ax], 1)
    return tuple(strides)


def _contiguous(info: ArrayInfo) -> ArrayInfo:
    """A C-contiguous copy of a small per-row array (g or norms)."""
    if info.device[0] == "cuda":
        return _cuda().info(_cuda().ascontiguous(info))
    arr = np.ascontiguousarray(info.base)
    return ArrayInfo(obj=arr, kind=info.kind, device=info.device,
                     shape=arr.shape, strides=(1,) * arr.ndim if arr.size else
                     tuple(0 for _ in arr.shape), dtype=info.dtype,
                     itemsize=info.itemsize,
                     ptr=arr.__array_interface__["data"][0], base=arr)


def _per_row(info: ArrayInfo):
    """(info, row stride) for g / norms, copying only if rows are uneven."""
    stride = _row_stride(info)
    if stride is None:
        info = _contiguous(info)
        stride = 1
    return info, stride


# ------------------------------------------------------------- public API

def weight_norm(v, g, dim=0, *, eps=0.0, out=None):
    """Weight-normalized weight and its per-row norms.

    ``norm = sqrt(sum(v**2 over the reduced axes) + eps)`` and
    ``w = v * (g / norm)``, one norm per kept index (``dim``).

    Parameters
    ----------
    v : array (NumPy, torch, CuPy, numba, or any DLPack / CUDA-array-interface
        array); float16, bfloat16, float32 or float64, any strides.
    g : array of v's dtype, shaped like v with size 1 on the reduced axes
        (``(out, 1, 1, 1)``) or as the kept axes alone (``(out,)``).
    dim : int, tuple of ints, or None
        Kept axes; None or () normalizes the whole array as one row.
    eps : float >= 0, added under the square root.
    out : optional preallocated w (v's shape, dtype and device); may be v.

    Returns
    -------
    (w, norms): w like v; norms in g's shape, float32 for half types.
    Same kind of array as the inputs, on the same device.
    """
    if out is not None:
        res = _fast_forward_out(v, g, out, dim, eps, _threads)
        if res is not None:
            return res
    else:
        res = _fast_forward(v, g, dim, eps, _threads)
        if res is not None:
            return res
        if _gpu_fast is not None:
            res = _gpu_fast.forward(v, g, dim, _check_eps(eps))
            if res is not None:
                return res
    return _weight_norm(v, g, dim, eps, out)


def weight_norm_backward(grad_w, v, g, norms, dim=0):
    """Gradients of `weight_norm` with respect to v and g.

    ``grad_g = sum(grad_w * v) / norm`` and
    ``grad_v = (g / norm) * grad_w - (g * grad_g / norm**2) * v``, using
    ``norms`` exactly as `weight_norm` returned them (never recomputed).

    Returns (grad_v, grad_g): grad_v like v, grad_g in g's shape and dtype.
    """
    res = _fast_backward(grad_w, v, g, norms, dim, _threads)
    if res is not None:
        return res
    if _gpu_fast is not None:
        res = _gpu_fast.backward(grad_w, v, g, norms, dim)
        if res is not None:
            return res
    return _weight_norm_backward(grad_w, v, g, norms, dim)


# wnkernels.cuda._fast once a torch CUDA call has been remembered (None before:
# CPU calls never import the GPU backend).
_gpu_fast = None


def _gpu_record(remember: bool, info: ArrayInfo):
    """A launch record when this validated call may be remembered for the GPU
    fast path (torch CUDA tensors, no out=, no copies), else None."""
    if not remember or info.kind != "torch-cuda":
        return None
    from .cuda import _launch
    return _launch.new_record()


def _gpu_fast_module():
    """wnkernels.cuda._fast, also making `weight_norm` consult it from now on."""
    global _gpu_fast
    from .cuda import _fast
    _gpu_fast = _fast
    return _fast


def _weight_norm(v, g, dim, eps, out):
    """The validating path of `weight_norm` (any array kind, any call)."""
    eps = _check_eps(eps)
    infos = {"v": _info("v", v), "g": _info("g", g)}
    if out is not None:
        infos["out"] = _info("out", out)
    _check_family(infos)
    oi = infos.pop("out", None)
    dtype = _check_dtypes(infos)
    vi, gi = infos["v"], infos["g"]
    kept = normalize_dim(dim, len(vi.shape))
    _check_g_shape("g", gi, vi.shape, kept, dim)
    if oi is not None:
        if oi.dtype != dtype:
            raise ValueError(f"out: expected dtype {dtype} (v's), got {oi.dtype}")
        if oi.shape != vi.shape:
            raise ValueError(f"out: expected shape {vi.shape} (v's), got {oi.shape}")
        if oi.readonly:
            raise ValueError("out: array is read-only")
        if _may_overlap_itself(oi):
            raise ValueError(f"out: overlaps itself (shape {oi.shape}, strides "
                             f"{oi.strides}: two elements may share memory)")
        alias = oi.ptr == vi.ptr and oi.strides == vi.strides
        if not alias and _overlaps(oi, vi):
            raise ValueError("out: overlaps v without being v itself "
                             f"(out strides {oi.strides}, v strides {vi.strides})")
        if _overlaps(oi, gi):
            raise ValueError("out: overlaps g")
    g_in = gi
    gi, g_stride = _per_row(gi)
    g_copied = gi is not g_in

    norm_dtype = FLOAT_DTYPES[dtype]
    if oi is None:
        w, oi = _empty_like(vi, vi.shape, dtype, like_strides=True)
    else:
        w = out
    norms, ni = _empty_like(gi, gi.shape, norm_dtype, like_strides=False)

    layout = _layout(vi.shape, kept, (vi.strides, oi.strides))
    if layout.nrows:
        if vi.device[0] == "cuda":
            record = _gpu_record(out is None and not g_copied, vi)
            _cuda().forward(layout, _shift(vi, layout, 0), gi, g_stride,
                            _shift(oi, layout, 1), ni, eps, record=record)
            if record is not None:
                _gpu_fast_module().remember_forward(v, g, dim, w, norms, record,
                                                    vi.device[1], dtype)
        else:
            _cpu_ext.forward(_CODES[dtype], layout, _ptr(vi, layout, 0), gi.ptr,
                           g_stride, _ptr(oi, layout, 1), ni.ptr, eps, _threads)
    if not g_copied:
        _remember_forward(dim, (v, g, out), (vi, gi, oi), layout, dtype, g_stride)
    return w, norms


def _weight_norm_backward(grad_w, v, g, norms, dim):
    """The validating path of `weight_norm_backward`."""
    infos = {"grad_w": _info("grad_w", grad_w), "v": _info("v", v),
             "g": _info("g", g), "norms": _info("norms", norms)}
    _check_family(infos)
    ni = infos.pop("norms")
    dtype = _check_dtypes(infos, norms=ni)
    infos["norms"] = ni
    gwi, vi, gi = infos["grad_w"], infos["v"], infos["g"]
    kept = normalize_dim(dim, len(vi.shape))
    if gwi.shape != vi.shape:
        raise ValueError(f"grad_w: expected shape {vi.shape} (v's), got {gwi.shape}")
    _check_g_shape("g", gi, vi.shape, kept, dim)
    _check_g_shape("norms", ni, vi.shape, kept, dim)
    g_in, n_in = gi, ni
    gi, g_stride = _per_row(gi)
    ni, n_stride = _per_row(ni)
    copied = gi is not g_in or ni is not n_in

    grad_v, gvi = _empty_like(vi, vi.shape, dtype, like_strides=True)
    grad_g, ggi = _empty_like(gi, gi.shape, dtype, like_strides=False)

    layout = _layout(vi.shape, kept, (vi.strides, gwi.strides, gvi.strides))
    if layout.nrows:
        if vi.device[0] == "cuda":
            record = _gpu_record(not copied, vi)
            _cuda().backward(layout, _shift(gwi, layout, 1), _shift(vi, layout, 0),
                             gi, g_stride, ni, n_stride, _shift(gvi, layout, 2),
                             ggi, record=record)
            if record is not None:
                _gpu_fast_module().remember_backward(grad_w, v, g, norms, dim, grad_v,
                                                     grad_g, record, vi.device[1], dtype)
        else:
            _cpu_ext.backward(_CODES[dtype], layout, _ptr(gwi, layout, 1),
                            _ptr(vi, layout, 0), gi.ptr, g_stride, ni.ptr,
                            n_stride, _ptr(gvi, layout, 2), ggi.ptr, _threads)
    plan = None if copied else _cpu_plan_key(dim, (grad_w, v, g, norms),
                                             (gwi, vi, gi, ni))
    if plan is not None:
        key, view = plan
        _cpu_ext.remember_backward(
            key, layout, _CODES[dtype], g_stride, n_stride,
            *_dense_order(vi.shape, vi.strides), vi.base.dtype, gi.shape,
            ni.base.dtype, (view, view))                # grad_g in v's dtype
    return grad_v, grad_g


_CODES = {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3}


def _remember_forward(dim, args, infos, layout, dtype, g_stride):
    """Remember a validated CPU forward for `_cpu.fast_forward` (or, with
    out=, `fast_forward_out`).  args/infos: v, g, out (None without out=)."""
    out = args[2]
    vi, gi, oi = infos
    if out is None:
        args, infos = args[:2], infos[:2]
    plan = _cpu_plan_key(dim, args, infos)
    if plan is None:
        return
    key, view = plan
    norm_dtype = np.dtype(FLOAT_DTYPES[dtype])
    views = (view, None)                               # norms: float32 for bf16
    if out is None:
        _cpu_ext.remember_forward(
            key, layout, _CODES[dtype], g_stride, *_dense_order(vi.shape, vi.strides),
            vi.base.dtype, gi.shape, norm_dtype, views)
    else:
        extents = [tuple(x - i.ptr for x in i.extent()) for i in (vi, oi, gi)]
        _cpu_ext.remember_forward_out(
            key, layout, _CODES[dtype], g_stride, vi.base.dtype, gi.shape,
            norm_dtype, extents, oi.strides == vi.strides, views)


def _cpu_plan_key(dim, args, infos):
    """(key, view) under which a validated CPU call may be remembered for
    `_cpu.fast_forward` / `fast_backward`, or None.

    NumPy calls are keyed on the arrays the kernels read (dtype, shape, strides),
    which must be plain, native and aligned; bfloat16 travels as uint16 bits, so
    ml_dtypes calls are not remembered (a real uint16 call must still raise).
    Torch calls are keyed on the tensors as given, and only when the kernels
    read them in place: no negative/conjugate bit resolved and no aligning
    copy.  The view is the torch dtype (bfloat16, else None) that the uint16
    outputs of a bfloat16 call are viewed as; None for NumPy keys.
    """
    if dim is not None and type(dim) is not int:
        return None
    kind = infos[0].kind
    bases = [i.base for i in infos]
    if not all(type(b) is np.ndarray and b.dtype.isnative and b.flags.aligned
               for b in bases):
        return None
    if kind == "numpy":
        if not all(b.dtype.name in FLOAT_DTYPES for b in bases):
            return None
        return _cpu_ext.plan_key(tuple(bases), dim), None
    if kind == "torch":
        if not all(i.obj is a and i.ptr == a.data_ptr() for a, i in zip(args, infos)):
            return None
        torch = sys.modules["torch"]
        _cpu_ext.set_torch(torch)
        view = torch.bfloat16 if infos[0].dtype == "bfloat16" else None
        return _cpu_ext.plan_key(tuple(args), dim), view
    return None


def _ptr(info: ArrayInfo, layout, a: int) -> int:
    """Address of (row 0, element 0) of array `a` of the layout."""
    return info.ptr + layout.offsets[a] * info.itemsize


def _shift(info: ArrayInfo, layout, a: int) -> ArrayInfo:
    """`info` with ptr moved to (row 0, element 0) of array `a`."""
    off = layout.offsets[a]
    if not off:
        return info
    return ArrayInfo(obj=info.obj, kind=info.kind, device=info.device,
                     shape=info.shape, strides=info.strides, dtype=info.dtype,
                     itemsize=info.itemsize, ptr=info.ptr + off * info.itemsize,
                     readonly=info.readonly, base=info.base)


