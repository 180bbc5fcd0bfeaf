"""The CUDA backend's executables: a compiled `Plan` run on the caller's GPU arrays.

A `CudaCall` binds the arrays of one call (described by `_interop`, the
caller's current stream), makes the copies the plan asks for (uneven g / norms
rows, torch's negative bit), checks ``out`` against the inputs, allocates the
outputs with the planned strides (of the caller's kind, on its device) and
launches the kernels of `_launch`.  Nothing is copied to or from the host.
"""

from __future__ import annotations

from .._arrays import ArrayInfo
from .._dispatch import PyExecutable
from .. import _planner
from . import _interop

__all__ = ["CudaCall", "CudaGroup", "shift"]


def shift(info: ArrayInfo, layout, a: int) -> ArrayInfo:
    """``info`` with ptr moved to (row 0, element 0) of layout array ``a``."""
    off = layout.offsets[a]
    if not off:
        return info
    return ArrayInfo(obj=info.obj, kind=info.kind, device=info.device,
                     shape=info.shape, strides=info.strides, dtype=info.dtype,
                     itemsize=info.itemsize, ptr=info.ptr + off * info.itemsize,
                     readonly=info.readonly, base=info.base)


def _contiguous(info: ArrayInfo) -> ArrayInfo:
    """A C-contiguous copy (torch: negative bit resolved) of a GPU argument."""
    from . import ascontiguous
    if info.kind == "torch-cuda":
        t = info.obj.detach().resolve_neg().resolve_conj().contiguous()
        return _interop.info(t)
    return _interop.info(ascontiguous(info))


def _infos(plan, args, descs):
    out = []
    for k, a in enumerate(args):
        if a is None:
            out.append(None)
            continue
        d = descs[k] if descs is not None and descs[k] is not None else _interop.info(a)
        spec = plan.args[k]
        if spec is not None and spec.prep:
            d = _contiguous(d)
        out.append(d)
    return out


def _check_out(plan, args, infos):
    """out= must be v itself or clear of v, and clear of g (byte ranges; the
    exact test when they touch)."""
    if not plan.overlaps:
        return
    o, v, g = infos[2], infos[0], infos[1]
    lo_o, hi_o = o.extent()
    for other, alias_ok in ((v, plan.overlaps[0][2]), (g, False)):
        if alias_ok and o.ptr == other.ptr:
            continue
        lo, hi = other.extent()
        if not (hi_o <= lo or hi <= lo_o):
            _planner.check_overlaps(plan, args)
            return


def _alloc(like: ArrayInfo, spec):
    obj = _interop.empty(like, spec.shape, spec.dtype, spec.strides)
    return obj, _interop.info(obj)


class CudaCall(PyExecutable):
    """One compiled call on GPU arrays."""

    def execute(self, args, descs, ptrs, eps):
        plan = self.plan
        infos = _infos(plan, args, descs)
        lay = plan.layout
        if plan.op == _planner.FORWARD:
            vi, gi, oi = infos
            _check_out(plan, args, infos)
            if oi is None:
                w, oi = _alloc(vi, plan.outputs[0])
            else:
                w = args[2]
            norms, ni = _alloc(vi, plan.outputs[1])
            if lay.nrows:
                from ._launch import forward
                forward(lay, shift(vi, lay, 0), gi, plan.g_stride, shift(oi, lay, 1), ni, eps)
            return w, norms
        if plan.op == _planner.BACKWARD:
            gwi, vi, gi, ni = infos
            grad_v, gvi = _alloc(vi, plan.outputs[0])
            grad_g, ggi = _alloc(vi, plan.outputs[1])
            if lay.nrows:
                from ._launch import backward
                backward(lay, shift(gwi, lay, 1), shift(vi, lay, 0), gi, plan.g_stride, ni,
                         plan.n_stride, shift(gvi, lay, 2), ggi)
            return grad_v, grad_g
        vi, gi = infos
        scale, si = _alloc(vi, plan.outputs[0])
        norms, ni = _alloc(vi, plan.outputs[1])
        if lay.nrows:
            from ._launch import row_scale
            row_scale(lay, shift(vi, lay, 0), gi, plan.g_stride, si, ni, eps)
        return scale, norms


class CudaGroup(PyExecutable):
    """A compiled grouped call on GPU arrays: one launch for the group."""

    def execute(self, args, descs, ptrs, eps):
        from ._launch import run_group
        plan = self.plan
        na = 4 if plan.op == _planner.BACKWARD else 2
        items = []
        outs = []
        for i, p in enumerate(plan.items):
            a = args[i * na:(i + 1) * na]
            d = descs[i * na:(i + 1) * na] if descs is not None else None
            infos = _infos(p, a, d)
            like = infos[1] if p.op == _planner.BACKWARD else infos[0]
            o0, i0 = _alloc(like, p.outputs[0])
            o1, i1 = _alloc(like, p.outputs[1])
            outs.append((o0, o1))
            items.append((p, infos, i0, i1))
        run_group(plan.op, items, eps)
        return outs
