"""GPU array adapters: recognize, describe (`ArrayInfo`), allocate, find the stream.

Kinds and what they map to:

    kind          recognized by                          stream used        new arrays
    torch-cuda    torch.Tensor with .is_cuda             torch current      torch.empty
    cupy          cupy.ndarray                           cupy current       cupy.empty
    numba         numba device arrays (and the CUDA      the array's own    numba device_array
                  simulator's FakeCUDAArray)             (.stream)
    cai           any __cuda_array_interface__ object    the one it names   numba device_array
                                                         (else legacy)
    dlpack        __dlpack__ with a CUDA __dlpack_device__ legacy default   numba device_array
                                                         (passed to __dlpack__)

torch tensors are described from ``data_ptr()``/``stride()`` (torch's
``__cuda_array_interface__`` cannot carry bfloat16); DLPack capsules are read with
ctypes and kept alive in ``ArrayInfo.base``.  Nothing here imports torch or cupy
unless the object comes from them, and numba is imported only for numba/CAI/DLPack
objects.  Strides are in elements; ``ptr`` is the address of element ``(0, ..., 0)``
(for the simulator, the host address of the simulated array's buffer).
"""

from __future__ import annotations

import ctypes

from .._arrays import ArrayInfo

__all__ = ["ArrayInfo", "is_gpu_array", "info", "empty", "zeros", "to_device",
           "stream_handle"]

# DLPack device types that are device memory the kernels can address.
_DL_CUDA = (2, 13)          # kDLCUDA, kDLCUDAManaged
_DL_FLOAT = {(2, 16): "float16", (2, 32): "float32", (2, 64): "float64",
             (4, 16): "bfloat16"}
_DL_OTHER = {0: "int", 1: "uint", 2: "float", 5: "complex", 6: "bool"}


def _is_numba_device_array(x) -> bool:
    # numba DeviceNDArray and the simulator's FakeCUDAArray both set this class
    # attribute (numba.cuda.is_cuda_array is missing from the simulator's API).
    return bool(getattr(type(x), "__cuda_ndarray__", False))


def is_gpu_array(x) -> bool:
    """True for arrays in GPU memory that the CUDA kernels can work on in place."""
    t = type(x)
    mod = t.__module__ or ""
    if mod == "numpy" or t.__name__ == "ndarray" and mod.startswith("numpy"):
        return False
    if mod.startswith("torch"):
        return bool(getattr(x, "is_cuda", False))
    if mod.startswith("cupy"):
        return hasattr(x, "__cuda_array_interface__")
    if mod.startswith("numba"):
        if _is_numba_device_array(x):
            return True
    try:
        if hasattr(x, "__cuda_array_interface__"):
            return True
    except Exception:  # some objects raise from the property on CPU data
        return False
    dev = getattr(x, "__dlpack_device__", None)
    if dev is not None and hasattr(x, "__dlpack__"):
        try:
            return int(dev()[0]) in _DL_CUDA
        except Exception:
            return False
    return False


# ---------------------------------------------------------------- info

def info(x) -> ArrayInfo:
    """`ArrayInfo` of a GPU array (see `is_gpu_array`)."""
    mod = type(x).__module__ or ""
    if mod.startswith("torch"):
        return _torch_info(x)
    if mod.startswith("cupy"):
        return _cupy_info(x)
    if _is_numba_device_array(x):
        return _numba_info(x)
    if hasattr(x, "__cuda_array_interface__"):
        return _cai_info(x)
    if hasattr(x, "__dlpack__"):
        return _dlpack_info(x)
    raise TypeError(f"not a GPU array: {type(x).__name__}")


def _torch_info(x) -> ArrayInfo:
    name = str(x.dtype)
    name = name[6:] if name.startswith("torch.") else name
    dev = x.device
    return ArrayInfo(obj=x, kind="torch-cuda", device=("cuda", int(dev.index or 0)),
                     shape=tuple(x.shape), strides=tuple(x.stride()), dtype=name,
                     itemsize=int(x.element_size()), ptr=int(x.data_ptr()),
                     readonly=False)


def _np_dtype_name(dt) -> str:
    return dt.name  # "bfloat16" for ml_dtypes.bfloat16, "float16", ...


def _cupy_info(x) -> ArrayInfo:
    isz = int(x.itemsize)
    return ArrayInfo(obj=x, kind="cupy", device=("cuda", int(x.device.id)),
                     shape=tuple(x.shape),
                     strides=tuple(int(s) // isz for s in x.strides),
                     dtype=_np_dtype_name(x.dtype), itemsize=isz,
                     ptr=int(x.data.ptr), readonly=False)


def _numba_info(x) -> ArrayInfo:
    ary = getattr(x, "_ary", None)
    if ary is not None:  # the simulator: a NumPy array in host memory
        isz = int(ary.itemsize)
        return ArrayInfo(obj=x, kind="numba", device=("cuda", 0),
                         shape=tuple(ary.shape),
                         strides=tuple(int(s) // isz for s in ary.strides),
                         dtype=_np_dtype_name(ary.dtype), itemsize=isz,
                         ptr=int(ary.__array_interface__["data"][0]),
                         readonly=not ary.flags.writeable)
    isz = int(x.dtype.itemsize)
    cai = x.__cuda_array_interface__
    ptr = int(cai["data"][0] or 0)
    return ArrayInfo(obj=x, kind="numba", device=("cuda", _pointer_device(ptr)),
                     shape=tuple(x.shape),
                     strides=tuple(int(s) // isz for s in x.strides),
                     dtype=_np_dtype_name(x.dtype), itemsize=isz, ptr=ptr,
                     readonly=False)


def _pointer_device(ptr: int) -> int:
    """Ordinal of the device that owns ``ptr`` (0 when unknown or null)."""
    if not ptr:
        return 0
    try:
        from cuda.bindings import driver
        attr = driver.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
        err, ordinal = driver.cuPointerGetAttribute(attr, ptr)
        if int(err) == 0:
            return int(ordinal)
    except Exception:
        pass
    return 0


def _cai_info(x) -> ArrayInfo:
    import numpy as np
    cai = x.__cuda_array_interface__
    dt = np.dtype(cai["typestr"])
    if "descr" in cai and dt.kind == "V":
        dt = np.dtype(cai["descr"]) if len(cai["descr"]) > 1 else dt
    isz = int(dt.itemsize)
    shape = tuple(int(n) for n in cai["shape"])
    if cai.get("strides") is None:
        strides, acc = [], 1
        for n in reversed(shape):
            strides.append(acc)
            acc *= n
        strides = tuple(reversed(strides))
    else:
        strides = tuple(int(s) // isz for s in cai["strides"])
    ptr, readonly = cai["data"]
    ptr = int(ptr or 0)
    name = _np_dtype_name(dt) if dt.kind != "V" else f"void{8 * isz}"
    return ArrayInfo(obj=x, kind="cai", device=("cuda", _pointer_device(ptr)),
                     shape=shape, strides=strides, dtype=name, itemsize=isz,
                     ptr=ptr, readonly=bool(readonly), stream=cai.get("stream"))


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8),
                ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice),
                ("ndim", ctypes.c_int32), ("dtype", _DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


def _dlpack_info(x) -> ArrayInfo:
    capsule = None
    try:
        on_gpu = int(x.__dlpack_device__()[0]) in _DL_CUDA
    except Exception:
        on_gpu = False
    if on_gpu:   # the kernels run on the legacy default stream: the producer syncs to it
        try:
            capsule = x.__dlpack__(stream=_LEGACY)
        except TypeError:                 # a producer without the stream argument
            pass
    if capsule is None:
        capsule = x.__dlpack__()
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    addr = get(capsule, b"dltensor")
    t = ctypes.cast(addr, ctypes.POINTER(_DLTensor)).contents
    ndim = int(t.ndim)
    shape = tuple(int(t.shape[i]) for i in range(ndim))
    code, bits, lanes = int(t.dtype.code), int(t.dtype.bits), int(t.dtype.lanes)
    if lanes == 1 and (code, bits) in _DL_FLOAT:
        name = _DL_FLOAT[(code, bits)]
    else:
        name = f"{_DL_OTHER.get(code, 'dltype')}{bits}" + ("" if lanes == 1 else f"x{lanes}")
    isz = max(bits * lanes // 8, 1)
    if t.strides:
        strides = tuple(int(t.strides[i]) for i in range(ndim))
    else:
        strides, acc = [], 1
        for n in reversed(shape):
            strides.append(acc)
            acc *= n
        strides = tuple(reversed(strides))
    ptr = int(t.data or 0) + int(t.byte_offset)
    dev = int(t.device.device_id) if int(t.device.device_type) in _DL_CUDA else 0
    # The capsule (not consumed) keeps the producer's memory alive as long as
    # this record lives.
    return ArrayInfo(obj=x, kind="dlpack", device=("cuda", dev), shape=shape,
                     strides=strides, dtype=name, itemsize=isz, ptr=ptr,
                     readonly=False, base=capsule)


# ---------------------------------------------------------------- allocation

def _np_dtype(name: str):
    import numpy as np
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _dense_order(shape, strides):
    """Axes from outermost to innermost for dense element ``strides``."""
    return sorted(range(len(shape)), key=lambda ax: -abs(strides[ax]))


def empty(like: ArrayInfo, shape, dtype: str, strides=None):
    """New array of ``like``'s kind and device: C-contiguous, or the given dense
    element ``strides`` (a permutation of a C-contiguous layout)."""
    shape = tuple(int(n) for n in shape)
    if strides is not None:
        strides = tuple(int(s) for s in strides)
    if like.kind == "torch-cuda":
        import torch
        tdt = getattr(torch, dtype)
        dev = like.obj.device
        if strides is None:
            return torch.empty(shape, dtype=tdt, device=dev)
        return torch.empty_strided(shape, strides, dtype=tdt, device=dev)
    if like.kind == "cupy":
        import cupy
        with cupy.cuda.Device(like.device[1]):
            if strides is None:
                return cupy.empty(shape, dtype=_np_dtype(dtype))
            order = _dense_order(shape, strides)
            base = cupy.empty(tuple(shape[ax] for ax in order), dtype=_np_dtype(dtype))
            inv = [0] * len(order)
            for i, ax in enumerate(order):
                inv[ax] = i
            return base.transpose(inv)
    return _numba_empty(like.device[1], shape, _np_dtype(dtype), strides)


def _numba_empty(ordinal, shape, dt, strides):
    from ._numba import cuda, SIM
    bstrides = None if strides is None else tuple(s * dt.itemsize for s in strides)
    if SIM or ordinal == 0:
        return cuda.device_array(shape, dtype=dt, strides=bstrides)
    with cuda.gpus[ordinal]:
        return cuda.device_array(shape, dtype=dt, strides=bstrides)


# ---------------------------------------------------------------- streams

# CU_STREAM_LEGACY: the legacy default stream, as the CUDA array interface and
# DLPack name it (1); 2 is the per-thread default stream.
_LEGACY = 1


def stream_handle(a: ArrayInfo) -> int:
    """The stream to run on for ``a``'s kind: torch's / CuPy's current stream; a
    numba array's own stream (0: the default stream); the stream a CUDA array
    interface names (the legacy default stream when it names none); the legacy
    default stream for DLPack objects (whose producers were asked to make their
    work visible to it, `_dlpack_info`)."""
    if a.kind == "torch-cuda":
        import torch
        return int(torch.cuda.current_stream(a.obj.device).cuda_stream)
    if a.kind == "cupy":
        import cupy
        with cupy.cuda.Device(a.device[1]):
            return int(cupy.cuda.get_current_stream().ptr)
    if a.kind == "numba":
        s = getattr(a.obj, "stream", 0)
        return int(s) if s else 0
    if a.kind == "cai":
        return int(a.stream) if a.stream is not None else _LEGACY
    return _LEGACY


def to_device(like: ArrayInfo, host):
    """A copy of the NumPy array ``host`` in device memory of ``like``'s kind and
    device (synchronous: small tables, once per plan)."""
    import numpy as np
    host = np.ascontiguousarray(host)
    if like.kind == "torch-cuda":
        import torch
        return torch.from_numpy(host).to(like.obj.device)
    if like.kind == "cupy":
        import cupy
        with cupy.cuda.Device(like.device[1]):
            return cupy.asarray(host)
    from ._numba import cuda, SIM
    if SIM or like.device[1] == 0:
        return cuda.to_device(host)
    with cuda.gpus[like.device[1]]:
        return cuda.to_device(host)


def zeros(like: ArrayInfo, shape, dtype: str, handle: int):
    """A zeroed array of ``like``'s kind and device, the zeroing ordered on stream
    ``handle`` (so it is captured with the kernel in a CUDA graph)."""
    if like.kind == "torch-cuda":
        import torch
        return torch.zeros(tuple(shape), dtype=getattr(torch, dtype), device=like.obj.device)
    if like.kind == "cupy":
        import cupy
        with cupy.cuda.Device(like.device[1]):
            return cupy.zeros(tuple(shape), dtype=dtype)
    from ._numba import cuda, SIM
    arr = empty(like, shape, dtype)
    if SIM:
        arr._ary[...] = 0
        return arr
    from numba.cuda.cudadrv.driver import device_memset
    stream = cuda.external_stream(handle) if handle else 0
    device_memset(arr, 0, arr.nbytes, stream=stream)
    return arr
