"""CPU backend of wnkernels: C kernels (``csrc/``) behind a thin Cython binding.

The backend protocol (the CUDA backend, `wnkernels.cuda`, implements the same):

* ``describe(name, x) -> ArrayInfo`` -- NumPy arrays (any strides, read-only,
  byte-swapped or misaligned too: the planner has those copied), CPU torch
  tensors (read through NumPy views of their memory), and objects with
  ``__array_interface__`` or a CPU ``__dlpack__``;
* ``compile(plan) -> Executable`` -- a `wnkernels._planner.Plan` (one call) or
  ``GroupPlan`` (a grouped call) made runnable: the C descriptors (``wn_layout``
  / ``wn_call``, see ``csrc/wn.h``) are filled once; each run binds the current
  data pointers, allocates the outputs and calls ``wn_run`` once, with the
  GIL released;
* ``empty_cache()`` -- release what the backend keeps between calls.

Threads: ``set_num_threads`` / ``get_num_threads`` (default: the usable cores,
or ``OMP_NUM_THREADS``); results are bitwise identical for every value.
"""

from __future__ import annotations

import os
import sys

import numpy as np

try:
    from . import _kernels
except ImportError as e:  # pragma: no cover - a source checkout without a build
    raise ImportError(
        "wnkernels' compiled extension (wnkernels.cpu._kernels) is missing: install "
        "the package (pip install .) or build it in place (python setup.py "
        "build_ext --inplace). If you ran Python from the source directory, the "
        "source tree shadows the installed package.") from e

from .._arrays import ArrayInfo
from .._dtypes import DTYPES, NAMES

__all__ = ["describe", "compile", "empty_cache", "set_num_threads", "get_num_threads",
           "isa"]


# ---------------------------------------------------------------- threads

def _default_threads() -> int:
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def set_num_threads(n: int) -> None:
    """Number of threads the CPU kernels use (default: all usable cores, or
    ``OMP_NUM_THREADS``).  Results are bitwise identical for every value."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _kernels.set_threads(int(n))


def get_num_threads() -> int:
    """Number of threads the CPU kernels use."""
    return _kernels.get_threads()


_kernels.set_threads(_default_threads())


def isa() -> str:
    """The instruction-set variant the kernels run: avx512bf16 (AVX-512 with
    AVX512_BF16 bfloat16 stores), avx512, avx2 or baseline."""
    return _kernels.isa()


# ---------------------------------------------------------------- intake

_ml_bf16 = None


def _bf16_dtype():
    global _ml_bf16
    if _ml_bf16 is None:
        import ml_dtypes
        _ml_bf16 = np.dtype(ml_dtypes.bfloat16)
    return _ml_bf16


def _numpy_info(name: str, arr: np.ndarray, kind: str, obj, dtype_name=None) -> ArrayInfo:
    """Describe a NumPy view; bfloat16 (ml_dtypes) is read as its uint16 bits."""
    native = True
    if dtype_name is None:
        dtype_name = arr.dtype.name
        native = arr.dtype.isnative or arr.dtype.itemsize == 1
        if dtype_name == "bfloat16":
            arr = arr.view(np.uint16 if native else np.dtype(">u2"))
    itemsize = arr.dtype.itemsize
    strides = tuple(s // itemsize for s in arr.strides)
    ptr = arr.__array_interface__["data"][0]
    aligned = bool(arr.flags.aligned) and all(s % itemsize == 0 for s in arr.strides)
    return ArrayInfo(obj=obj, kind=kind, device=("cpu", 0), shape=arr.shape,
                     strides=strides, dtype=dtype_name, itemsize=itemsize, ptr=ptr,
                     readonly=not arr.flags.writeable, base=arr, aligned=aligned,
                     native=native)


def describe(name: str, x) -> ArrayInfo:
    """`ArrayInfo` of a CPU array argument (see the module docstring)."""
    if isinstance(x, np.ndarray):
        return _numpy_info(name, x, "numpy", x)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return _torch_info(name, x, torch)
    try:
        arr = np.from_dlpack(x) if hasattr(x, "__dlpack__") else np.asarray(x)
    except (TypeError, BufferError, RuntimeError, ValueError) as e:
        raise TypeError(f"{name}: cannot read array of type {type(x).__name__}: {e}") \
            from None
    return _numpy_info(name, arr, "numpy", arr)


def _torch_info(name: str, x, torch) -> ArrayInfo:
    if x.layout is not torch.strided or x.device.type != "cpu":
        raise TypeError(f"{name}: only strided CPU or CUDA torch tensors are "
                        f"supported, got layout={x.layout} device={x.device}")
    dtype_name = str(x.dtype).replace("torch.", "")
    if dtype_name not in DTYPES:
        raise TypeError(f"{name}: unsupported dtype {x.dtype}; expected {NAMES}")
    _kernels.set_torch(torch)
    if x.is_neg() or x.is_conj():   # the data pointer ignores these bits: read a copy
        isz = x.element_size()
        ptr = x.data_ptr()
        return ArrayInfo(obj=x, kind="torch", device=("cpu", 0), shape=tuple(x.shape),
                         strides=tuple(x.stride()), dtype=dtype_name, itemsize=isz,
                         ptr=ptr, aligned=ptr % isz == 0, resolve=True)
    info = _numpy_info(name, _torch_view(x, dtype_name), "torch", x, dtype_name)
    info.readonly = False
    return info


class _Interface:
    """An ``__array_interface__`` over a tensor's memory that keeps the tensor
    alive (the NumPy view's base)."""
    __slots__ = ("__array_interface__", "tensor")


def _torch_view(x, dtype_name: str) -> np.ndarray:
    """A NumPy view of a CPU tensor's elements (bfloat16 as uint16), made
    from the tensor's metadata and data pointer.  Not ``Tensor.numpy()``: that
    marks the tensor's storage non-resizable for good, and FSDP2 frees its
    unsharded parameters with ``untyped_storage().resize_(0)`` after each
    forward ("Trying to resize storage that is not resizable")."""
    isz = x.element_size()
    typestr = "<u2" if dtype_name == "bfloat16" else np.dtype(dtype_name).newbyteorder("<").str
    if x.numel() == 0:
        return np.empty(tuple(x.shape), np.dtype(typestr))
    holder = _Interface()
    holder.tensor = x
    holder.__array_interface__ = {
        "data": (x.data_ptr(), False), "shape": tuple(x.shape),
        "strides": tuple(s * isz for s in x.stride()), "typestr": typestr, "version": 3}
    return np.asarray(holder)


# ---------------------------------------------------------------- preparation

def prepare(plan, args, k: int):
    """Argument k of a call as the plan's executable reads it when the plan
    says to copy it: a C-contiguous, aligned, native-order copy (NumPy: its
    bits, bfloat16 as uint16), or the tensor with its negative bit resolved and
    contiguous (torch).  Returns (array, data pointer)."""
    x = args[k]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        y = x.detach().resolve_neg().resolve_conj().contiguous()
        return y, y.data_ptr()
    b = describe(plan.args[k].name, x).base
    y = np.ascontiguousarray(b.astype(b.dtype.newbyteorder("=")))
    return y, y.__array_interface__["data"][0]


# ---------------------------------------------------------------- allocation
# Outputs of at least 128 KiB come from a pool of reused blocks kept in the
# extension (see `_kernels.pyx`): a fresh mmap'ed buffer costs a page fault per
# 4 KiB written.

def empty_cache() -> None:
    """Release the output blocks kept for reuse (live results keep theirs)."""
    _kernels.pool_clear()


# ---------------------------------------------------------------- compile

def compile(plan):
    """The executable of a `Plan` or `GroupPlan` (see the module docstring)."""
    from .._planner import GroupPlan
    torch = plan.kind == "torch"
    bf16 = _bf16_dtype() if plan.dtype == "bfloat16" and not torch else None
    if isinstance(plan, GroupPlan):
        return _kernels.CpuGroup(plan, torch, bf16, prepare)
    return _kernels.CpuCall(plan, torch, bf16, prepare)
