"""wnkernels' C entry ``wn_run`` as an XLA FFI handler, with no C++ to build.

The handler is a Numba ``cfunc`` that speaks the XLA FFI C ABI
(``xla/ffi/api/c_api.h``, shipped in ``jax.ffi.include_dir()``) directly:

* called with the *metadata extension* (XLA asks, when the target is
  registered, which FFI version the handler was built for), it answers with the
  version of the API that called it and no traits;
* called to execute, it reads one attribute, ``desc`` (an int64 array made at
  trace time from the planner's `Layout`, see `descriptor`), takes the data
  pointers of the argument and result buffers, fills a ``wn_layout`` and a
  ``wn_call`` (``csrc/wn.h``) on its stack and calls ``wn_run`` -- the very
  kernels ``wnkernels.weight_norm`` runs -- writing straight into XLA's result
  buffers.  No Python, no GIL, no copy.

Buffers XLA hands a custom call are dense, row-major (JAX's default layout),
so their strides follow from their shapes alone; the descriptor holds them.
Struct offsets below are those of c_api.h on LP64 (x86-64, aarch64 Linux and
macOS); the module refuses to register anywhere else.
"""

from __future__ import annotations

import ctypes
import struct
import sys
import threading

import numpy as np

from .._planner import FORWARD

__all__ = ["available", "target_name", "descriptor", "NTHREADS"]

_TARGET = "wnkernels_wn_run"
_lock = threading.Lock()
_state = {"done": False, "error": None}

# Thread count the handler passes to wn_run (synced from
# wnkernels.get_num_threads() whenever wnkernels.jax traces a call).
NTHREADS = np.ones(1, dtype=np.int64)

# ---- descriptor (int64 words) -------------------------------------------
#  0 op | dtype << 32         1 nrows        2 rowlen
#  3 kept_ndim | red_ndim << 32                4 g_stride     5 norms_stride
#  6 eps (float64 bits)       7 number of arguments (buffers)
#  8.. kept_shape, red_shape, kept_stride[0..2], red_stride[0..2]
#      (each kept_ndim / red_ndim long; strides of absent arrays are zeros)
_HDR = 8


def descriptor(op: int, dtype_code: int, layout, g_stride: int, n_stride: int,
               eps: float, nargs: int) -> np.ndarray:
    kn, rn = len(layout.kept_shape), len(layout.red_shape)
    words = [op | (dtype_code << 32), layout.nrows, layout.rowlen, kn | (rn << 32),
             g_stride, n_stride, struct.unpack("<q", struct.pack("<d", eps))[0], nargs]
    words += list(layout.kept_shape) + list(layout.red_shape)
    for a in range(3):
        words += list(layout.kept_strides[a]) if a < len(layout.kept_strides) else [0] * kn
    for a in range(3):
        words += list(layout.red_strides[a]) if a < len(layout.red_strides) else [0] * rn
    return np.asarray(words, dtype=np.int64)


def target_name() -> str:
    return _TARGET


def available() -> bool:
    """Register the handler once; False (with the reason in `reason()`) where
    it cannot be (no Numba, not LP64, ...)."""
    if _state["done"]:
        return _state["error"] is None
    with _lock:
        if not _state["done"]:
            try:
                _register()
            except Exception as e:  # pragma: no cover - environment dependent
                _state["error"] = f"{type(e).__name__}: {e}"
            _state["done"] = True
    return _state["error"] is None


def reason():
    return _state["error"]


def _register() -> None:
    if ctypes.sizeof(ctypes.c_void_p) != 8 or sys.byteorder != "little":
        raise RuntimeError("the FFI handler is written for 64-bit little-endian (LP64)")
    import jax
    _check_header()
    from llvmlite import ir
    from numba import carray, cfunc, njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    from ..cpu import _kernels

    lib = ctypes.CDLL(_kernels.__file__)
    wn_run = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                              ctypes.c_int)(ctypes.cast(lib.wn_run, ctypes.c_void_p).value)
    nthreads_addr = NTHREADS.ctypes.data
    msg = _MSG
    msg_addr = ctypes.cast(msg, ctypes.c_void_p).value

    i64 = ir.IntType(64)

    @intrinsic
    def as_ptr(typingctx, addr):
        def codegen(context, builder, sig, args):
            return builder.inttoptr(args[0], cgutils.voidptr_t)
        return types.voidptr(types.int64), codegen

    @intrinsic
    def as_addr(typingctx, p):
        def codegen(context, builder, sig, args):
            return builder.ptrtoint(args[0], i64)
        return types.int64(types.voidptr), codegen

    @intrinsic
    def scratch(typingctx):
        # 32 int64 words on the handler's stack (entry-block alloca)
        def codegen(context, builder, sig, args):
            p = cgutils.alloca_once(builder, ir.ArrayType(i64, 32))
            return builder.bitcast(p, cgutils.voidptr_t)
        return types.voidptr(), codegen

    @intrinsic
    def call1(typingctx, fn, arg):
        # (int64 (*)(int64))fn(arg): XLA_FFI_Error_Create
        def codegen(context, builder, sig, args):
            fnty = ir.FunctionType(i64, [i64])
            f = builder.inttoptr(args[0], fnty.as_pointer())
            return builder.call(f, [args[1]])
        return types.int64(types.int64, types.int64), codegen

    @njit(inline="always")
    def words(addr, n):
        return carray(as_ptr(addr), n, dtype=np.int64)

    @njit(inline="always")
    def i32(addr, n):
        return carray(as_ptr(addr), n, dtype=np.int32)

    @cfunc(types.int64(types.voidptr), nopython=True)
    def handler(frame_p):
        frame = carray(frame_p, 22, dtype=np.int64)   # XLA_FFI_CallFrame, 176 bytes
        api = frame[2]
        ext = frame[1]
        if ext != 0:
            e = words(ext, 4)
            if i32(ext + 8, 1)[0] == 1:               # XLA_FFI_Extension_Metadata
                md = e[3]                             # XLA_FFI_Metadata *
                m = words(md, 6)
                av = i32(api + 16 + 16, 2)            # the api's own major, minor
                m[1] = 24                             # XLA_FFI_Api_Version_STRUCT_SIZE
                m[2] = 0
                mv = i32(md + 24, 3)
                mv[0] = av[0]
                mv[1] = av[1]
                mv[2] = 0                             # traits
                m[5] = 0                              # state_type_id: unknown
                return 0
        if (frame[4] & 0xFFFFFFFF) != 3:              # only the EXECUTE stage
            return 0
        args = words(frame[9], 4)                     # void **args
        rets = words(frame[14], 4)                    # void **rets
        attrs = words(frame[20], 1)                   # void **attrs: the one array attr
        arr = words(attrs[0], 3)                      # XLA_FFI_Array {dtype, size, data}
        d = words(arr[2], arr[1])
        op = d[0] & 0xFFFFFFFF
        kn = d[3] & 0xFFFFFFFF
        rn = d[3] >> 32
        base = arr[2]
        o = _HDR * 8
        kshape = base + o
        rshape = kshape + 8 * kn
        kst = rshape + 8 * rn
        rst = kst + 3 * 8 * kn

        s = scratch()
        S = carray(s, 32, dtype=np.int64)
        for i in range(32):
            S[i] = 0
        sa = as_addr(s)
        # wn_layout at S[0..10]
        S[0] = d[1]
        S[1] = d[2]
        S[2] = d[3]
        S[3] = kshape
        S[4] = rshape
        for a in range(3):
            S[5 + a] = kst + a * 8 * kn
            S[8 + a] = rst + a * 8 * rn
        # wn_call at S[11..24]
        S[11] = d[0]                                  # op, dtype
        S[12] = sa                                    # layout
        S[16] = d[4]                                  # g_stride
        S[18] = d[5]                                  # norms_stride
        S[19] = d[6]                                  # eps bits
        if op == 1:                                   # backward: grad_w, v, g, norms
            S[13] = words(args[1], 4)[3]              # v
            S[14] = words(args[0], 4)[3]              # grad_w
            S[15] = words(args[2], 4)[3]              # g
            S[17] = words(args[3], 4)[3]              # norms
            S[21] = words(rets[0], 4)[3]              # grad_v
            S[23] = words(rets[1], 4)[3]              # grad_g
        else:
            S[13] = words(args[0], 4)[3]              # v
            S[15] = words(args[1], 4)[3]              # g
            if op == 0:
                S[20] = words(rets[0], 4)[3]          # w
            else:
                S[24] = words(rets[0], 4)[3]          # scale
            S[22] = words(rets[1], 4)[3]              # norms_out
        if d[1] <= 0:
            return 0
        nth = words(nthreads_addr, 1)[0]
        rc = wn_run(sa + 88, 1, nth)
        if rc != 0:
            ea = scratch()
            E = carray(ea, 4, dtype=np.int64)
            E[0] = 28                                 # XLA_FFI_Error_Create_Args size
            E[1] = 0
            E[2] = msg_addr
            E[3] = 8                                  # RESOURCE_EXHAUSTED
            return call1(words(api, 7)[6], as_addr(ea))
        return 0

    jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(handler.ctypes), platform="cpu")
    _state["keep"] = (handler, wn_run, lib)
    _self_test(jax)


def _check_header() -> None:
    """The offsets above are c_api.h's for API major version 0: refuse any
    other header (a future ABI break) rather than read the wrong fields."""
    import os
    import re

    import jax
    path = os.path.join(jax.ffi.include_dir(), "xla", "ffi", "api", "c_api.h")
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return                         # headers not shipped: the self-test decides
    m = re.search(r"#define XLA_FFI_API_MAJOR (\d+)", text)
    if m is None or int(m.group(1)) != 0:
        raise RuntimeError(f"unsupported XLA FFI API major version in {path}")
    body = re.search(r"struct XLA_FFI_CallFrame \{(.*?)\};", text, re.S)
    fields = re.findall(r"^\s*(?:const )?(\w+)\*? \*?(\w+);", body.group(1), re.M) if body else []
    want = [("size_t", "struct_size"), ("XLA_FFI_Extension_Base", "extension_start"),
            ("XLA_FFI_Api", "api"), ("XLA_FFI_ExecutionContext", "ctx"),
            ("XLA_FFI_ExecutionStage", "stage"), ("XLA_FFI_Args", "args"),
            ("XLA_FFI_Rets", "rets"), ("XLA_FFI_Attrs", "attrs"), ("XLA_FFI_Future", "future")]
    if fields != want:
        raise RuntimeError(f"XLA_FFI_CallFrame in {path} is not the layout this handler reads: "
                           f"{fields}")


def _self_test(jax) -> None:
    """One tiny call through the handler, compared with the library's."""
    import wnkernels
    from .._dtypes import DTYPES
    from .._planner import plan_call

    v = np.arange(1.0, 13.0, dtype=np.float32).reshape(4, 3)
    g = np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)
    plan = plan_call(FORWARD, [v, g, None], None, 0)
    desc = descriptor(FORWARD, DTYPES["float32"].code, plan.layout, plan.g_stride,
                      plan.n_stride, 0.0, 2)
    shapes = (jax.ShapeDtypeStruct(v.shape, v.dtype), jax.ShapeDtypeStruct(g.shape, g.dtype))
    call = jax.ffi.ffi_call(_TARGET, shapes)
    cpu = jax.devices("cpu")[0]
    w, n = jax.jit(lambda v, g: call(v, g, desc=desc))(jax.device_put(v, cpu),
                                                        jax.device_put(g, cpu))
    w0, n0 = wnkernels.weight_norm(v, g)
    if not (np.array_equal(np.asarray(w), w0) and np.array_equal(np.asarray(n), n0)):
        raise RuntimeError("the FFI handler's self-test gave results that differ from "
                           "wnkernels.weight_norm")


_MSG = ctypes.create_string_buffer(b"wnkernels: out of memory for kernel scratch")
