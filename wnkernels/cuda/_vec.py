"""16-byte vector loads and stores of global memory for the ``v*`` kernels.

``vload(a, i)`` reads the 16 bytes at element ``i`` of the 1-D array ``a`` and
returns them as a tuple of ``16 // itemsize`` elements of ``a``'s dtype
(8 float16 / uint16, 4 float32, 2 float64).  ``vstore(a, i, vals)`` writes such a
tuple, each value converted to ``a``'s dtype exactly as ``a[i + k] = vals[k]``
would convert it (so the vector and scalar paths round identically).  The
address ``&a[i]`` must be 16-byte aligned: `_launch` checks that on the host
and uses the scalar kernels otherwise.

On a GPU they are numba intrinsics emitting inline PTX ``ld.global.v4.u32`` /
``st.global.v4.u32`` (four 32-bit registers); the words are then reinterpreted
(bitcast) as the element type.  Inline PTX rather than an LLVM vector load,
because NVVM splits a ``<8 x half>`` (or ``<4 x i32>`` folded into one) load into
two 8-byte ``ld.global.v4.u16``: the 16-byte width is guaranteed only this way.
Both asm statements are marked as having side effects and clobbering memory,
so LLVM keeps them in program order with every other load, store and barrier
(no hoisting, no merging): ``out=v`` (in place) and the block barriers stay
correct by construction; ptxas still schedules the resulting loads freely.

``ldcg(a, i)`` reads one float32 / float64 element through L2 only (see its
docstring): the stream kernels read other blocks' partial sums with it.
``span_at(addr, n, dtype)`` makes an array of a raw device address (the table
kernels' arrays arrive as addresses).

Under the CUDA simulator they are plain Python functions that read / write the
``W`` consecutive elements one by one, and check the alignment that the real
instruction needs (a misaligned vector access faults on a GPU).
"""

from __future__ import annotations

import numpy as np

from ._numba import SIM

__all__ = ["vload", "vstore", "ldcg", "span_at", "width"]


def width(itemsize: int) -> int:
    """Elements per 16-byte vector for an element of ``itemsize`` bytes."""
    return 16 // int(itemsize)


if SIM:
    def _base(a):
        """The NumPy array behind a simulator (in-kernel) device array."""
        while not isinstance(a, np.ndarray):
            d = a.__dict__
            a = d["_item"] if "_item" in d else d["_ary"]
        return a

    def _check(a, i):
        b = _base(a)
        addr = b.__array_interface__["data"][0] + int(i) * b.strides[0]
        if addr % 16 or b.strides[0] != b.itemsize:
            raise RuntimeError(f"misaligned 16-byte vector access at {addr:#x}")
        n = 16 // b.itemsize
        if i < 0 or i + n > b.shape[0]:
            raise IndexError(f"vector access [{i}, {i + n}) out of [0, {b.shape[0]})")
        return b, n

    def vload(a, i):
        b, n = _check(a, i)
        return tuple(b[i + k] for k in range(n))

    def vstore(a, i, vals):
        b, n = _check(a, i)
        if len(vals) != n:
            raise ValueError("vstore: tuple length is not the vector width")
        for k in range(n):
            b[i + k] = vals[k]

    def ldcg(a, i):
        return a[i]

    def span_at(addr, n, dtype):
        """The n elements of ``dtype`` at ``addr`` (host memory under the simulator)."""
        import ctypes
        dt = np.dtype(dtype)
        if n <= 0 or not addr:
            return np.zeros(0, dt)
        return np.frombuffer((ctypes.c_uint8 * (int(n) * dt.itemsize)).from_address(int(addr)),
                             dt, int(n))
else:
    from llvmlite import ir
    from numba.cuda import cgutils, types
    from numba.cuda.extending import intrinsic
    from numba.cuda.core.errors import NumbaTypeError
    from numba.cuda.np.arrayobj import populate_array

    _I32 = ir.IntType(32)
    _V4 = ir.VectorType(_I32, 4)
    _LD = ("ld.global.v4.u32 {$0, $1, $2, $3}, [$4];", "=r,=r,=r,=r,l,~{memory}")
    _ST = ("st.global.v4.u32 [$0], {$1, $2, $3, $4};", "l,r,r,r,r,~{memory}")

    def _check_array(name, array):
        if not (isinstance(array, types.Array) and array.ndim == 1
                and isinstance(array.dtype, (types.Integer, types.Float))
                and array.dtype.bitwidth in (16, 32, 64)):
            raise NumbaTypeError(f"{name}: needs a 1-D array of 16/32/64-bit numbers, "
                                 f"got {array}")
        return 128 // array.dtype.bitwidth

    def _element_ptr(context, builder, arrty, arr, idxty, idx):
        idx = context.cast(builder, idx, idxty, types.intp)
        ary = context.make_array(arrty)(context, builder, value=arr)
        return cgutils.get_item_pointer(context, builder, arrty, ary, [idx],
                                        wraparound=False)

    @intrinsic
    def vload(typingctx, array, index):
        n = _check_array("vload", array)
        if not isinstance(index, types.Integer):
            raise NumbaTypeError(f"vload: index must be an integer, got {index}")
        ret = types.UniTuple(array.dtype, n)

        def codegen(context, builder, sig, args):
            arrty, idxty = sig.args
            ptr = _element_ptr(context, builder, arrty, args[0], idxty, args[1])
            fnty = ir.FunctionType(ir.LiteralStructType([_I32] * 4), [ptr.type])
            res = builder.call(ir.InlineAsm(fnty, *_LD, side_effect=True), [ptr])
            vec = ir.Constant(_V4, ir.Undefined)
            for k in range(4):
                vec = builder.insert_element(vec, builder.extract_value(res, k),
                                             ir.Constant(_I32, k))
            ety = context.get_value_type(arrty.dtype)
            lanes = builder.bitcast(vec, ir.VectorType(ety, n))
            vals = [builder.extract_element(lanes, ir.Constant(_I32, k))
                    for k in range(n)]
            return context.make_tuple(builder, sig.return_type, vals)

        return ret(array, index), codegen

    _CG = {32: ("ld.global.cg.f32 $0, [$1];", "=f,l,~{memory}"),
           64: ("ld.global.cg.f64 $0, [$1];", "=d,l,~{memory}")}

    @intrinsic
    def ldcg(typingctx, array, index):
        """``a[i]`` read through L2 only (``ld.global.cg``): never a stale L1 line,
        for values that other blocks of the same kernel wrote (made visible
        with a fence before an atomic flag that this block has observed)."""
        if not (isinstance(array, types.Array) and array.ndim == 1
                and isinstance(array.dtype, types.Float) and array.dtype.bitwidth in _CG):
            raise NumbaTypeError(f"ldcg: needs a 1-D float32/float64 array, got {array}")
        if not isinstance(index, types.Integer):
            raise NumbaTypeError(f"ldcg: index must be an integer, got {index}")

        def codegen(context, builder, sig, args):
            arrty, idxty = sig.args
            ptr = _element_ptr(context, builder, arrty, args[0], idxty, args[1])
            ety = context.get_value_type(arrty.dtype)
            fnty = ir.FunctionType(ety, [ptr.type])
            return builder.call(ir.InlineAsm(fnty, *_CG[arrty.dtype.bitwidth],
                                             side_effect=True), [ptr])

        return array.dtype(array, index), codegen

    @intrinsic
    def vstore(typingctx, array, index, values):
        n = _check_array("vstore", array)
        if not isinstance(index, types.Integer):
            raise NumbaTypeError(f"vstore: index must be an integer, got {index}")
        if not (isinstance(values, types.BaseTuple) and len(values) == n):
            raise NumbaTypeError(f"vstore: needs a tuple of {n} values, got {values}")

        def codegen(context, builder, sig, args):
            arrty, idxty, valty = sig.args
            arr, idx, vals = args
            ety = context.get_value_type(arrty.dtype)
            lanes = ir.Constant(ir.VectorType(ety, n), ir.Undefined)
            for k in range(n):
                x = builder.extract_value(vals, k)
                x = context.cast(builder, x, valty[k], arrty.dtype)
                lanes = builder.insert_element(lanes, x, ir.Constant(_I32, k))
            vec = builder.bitcast(lanes, _V4)
            ptr = _element_ptr(context, builder, arrty, arr, idxty, idx)
            fnty = ir.FunctionType(ir.VoidType(), [ptr.type] + [_I32] * 4)
            words = [builder.extract_element(vec, ir.Constant(_I32, k)) for k in range(4)]
            builder.call(ir.InlineAsm(fnty, *_ST, side_effect=True), [ptr] + words)
            return context.get_dummy_value()

        return types.void(array, index, values), codegen

    @intrinsic
    def span_at(typingctx, addr, n, dtype):
        """The 1-D C-contiguous array of ``n`` elements of ``dtype`` (a NumPy scalar
        type) at device address ``addr`` (an int64): how a kernel reads the arrays
        of a table item, whose addresses arrive as kernel parameters."""
        if not isinstance(dtype, types.NumberClass):
            raise NumbaTypeError(f"span_at: dtype must be a NumPy scalar type, got {dtype}")
        if not (isinstance(addr, types.Integer) and isinstance(n, types.Integer)):
            raise NumbaTypeError("span_at: address and length must be integers")
        dt = dtype.instance_type
        arrty = types.Array(dt, 1, "C")

        def codegen(context, builder, sig, args):
            a, nn, _ = args
            ety = context.get_data_type(dt)
            ptr = builder.inttoptr(a, ety.as_pointer())
            ary = context.make_array(arrty)(context, builder)
            isz = context.get_constant(types.intp, context.get_abi_sizeof(ety))
            nn = context.cast(builder, nn, sig.args[1], types.intp)
            populate_array(ary, data=ptr, shape=[nn], strides=[isz], itemsize=isz,
                           meminfo=None)
            return ary._getvalue()

        return arrty(addr, n, dtype), codegen
