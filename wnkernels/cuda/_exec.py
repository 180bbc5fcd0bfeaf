"""The CUDA backend's executables: a compiled `Plan` run on the caller's GPU arrays.

An executable plans its items once (`_plan.plan_item`: a strategy per item),
lays them out as one launch (`_plan.Launch`) and uploads the item table to the
device.  Each run binds the call's arrays (described by `_interop`), makes
the copies the plan asks for (uneven g / norms rows, torch's negative bit),
checks ``out`` against the inputs, allocates the outputs with the planned
strides (of the caller's kind, on its device), and launches -- one launch for
a single call and one for a grouped call (up to `MAX_PTRS` span addresses per
launch: the parameter space of a kernel is 4 KiB) -- on the caller's stream,
with no host synchronization and nothing copied to or from the host.

Vector strategies assume the outputs they write start 16-byte aligned (every
allocator used here aligns to 256 bytes or more); a run whose fresh outputs
are not takes a plan without vector strategies instead.
"""

from __future__ import annotations

from .._arrays import ArrayInfo
from .._dispatch import PyExecutable
from .. import _planner
from . import _interop
from ._launch import Settings, launch, l2_bytes, settings_epoch, sm_count, to_device_table
from ._plan import Launch, plan_item

__all__ = ["CudaCall", "CudaGroup", "MAX_PTRS"]

MAX_PTRS = 480      # span addresses per launch (int64 kernel parameters, < 4 KiB)


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


def _outputs(plan, like, args):
    """The call's outputs (objects, infos) in plan order (out= passed through)."""
    objs, infos = [], []
    for spec in plan.outputs:
        if spec.arg is not None:
            obj = args[spec.arg]
        else:
            obj = _interop.empty(like, spec.shape, spec.dtype, spec.strides)
        objs.append(obj)
        infos.append(_interop.info(obj))
    return objs, infos


def _data(infos, oinfos):
    """An item's data pointers by source (`_plan`'s ("arg", k) / ("out", j))."""
    data = {("arg", k): (i.ptr if i is not None else 0) for k, i in enumerate(infos)}
    data.update({("out", j): oi.ptr for j, oi in enumerate(oinfos)})
    return data


def _like(plan, infos):
    return infos[1] if plan.op == _planner.BACKWARD else infos[0]


class _Compiled:
    """One planned launch list: the launches, their device tables, the stream-
    independent kernel key."""

    def __init__(self, plans, like, vector):
        S = Settings
        dev = like.device[1]
        nsm, l2 = sm_count(dev), l2_bytes(dev)
        saved = S.vector
        S.vector = vector and saved
        try:
            items = [plan_item(p, S, nsm, l2, S.strategy) for p in plans]
        finally:
            S.vector = saved
        npa = len(items[0].roles) if items else 1
        per = max(MAX_PTRS // npa, 1)
        self.launches = []
        for k in range(0, len(items), per):
            chunk = items[k:k + per]
            slots = 1 << max(len(chunk) - 1, 0).bit_length() if len(chunk) > 1 else 1
            lau = Launch(chunk, slots=min(slots, per))
            tab = to_device_table(like, lau.tab) if lau.nitems else None
            self.launches.append((k, len(chunk), lau, tab))
        self.vector = any(lau.vector for _, _, lau, _ in self.launches)
        self.key = (plans[0].op if plans else 0, plans[0].dtype if plans else "float32",
                    S.block, S.shuffle)
        self.epoch = settings_epoch()


def _aligned(infos) -> bool:
    return all(i is None or i.ptr % 16 == 0 for i in infos)


class _Runner(PyExecutable):
    """Shared state: the compiled launches (vector and, lazily, scalar-only)."""

    def _state(self, plans, like, aligned):
        st = getattr(self, "_st", None)
        if st is None or st[0].epoch != settings_epoch():
            st = self._st = [_Compiled(plans, like, True), None]
        if not aligned and st[0].vector:
            if st[1] is None:
                st[1] = _Compiled(plans, like, False)
            return st[1]
        return st[0]


class CudaCall(_Runner):
    """One compiled call on GPU arrays."""

    def execute(self, args, descs, ptrs, eps):
        plan = self.plan
        infos = _infos(plan, args, descs)
        like = _like(plan, infos)
        _check_out(plan, args, infos)
        objs, oinfos = _outputs(plan, like, args)
        comp = self._state([plan], like, _aligned(
            [oi for spec, oi in zip(plan.outputs, oinfos) if spec.arg is None]))
        _run(comp, [_data(infos, oinfos)], like, _interop.stream_handle(like), eps)
        return objs[0], objs[1]


class CudaGroup(_Runner):
    """A compiled grouped call on GPU arrays: one launch for the group."""

    def execute(self, args, descs, ptrs, eps):
        plan = self.plan
        na = 4 if plan.op == _planner.BACKWARD else 2
        datas, outs, fresh, like = [], [], [], None
        for i, p in enumerate(plan.items):
            a = args[i * na:(i + 1) * na]
            d = descs[i * na:(i + 1) * na] if descs is not None else None
            infos = _infos(p, a, d)
            lk = _like(p, infos)
            like = like or lk
            objs, oinfos = _outputs(p, lk, a)
            outs.append((objs[0], objs[1]))
            fresh += oinfos
            datas.append(_data(infos, oinfos))
        if like is not None:
            comp = self._state(list(plan.items), like, _aligned(fresh))
            _run(comp, datas, like, _interop.stream_handle(like), eps)
        return outs


def _run(comp, datas, like, handle, eps):
    """Every launch of ``comp``; ``datas``: per item, its data pointers."""
    for k, n, lau, tab in comp.launches:
        if lau.nitems:
            launch(lau, comp.key, lau.ptrs(datas[k:k + n]), tab, like, handle, eps)
