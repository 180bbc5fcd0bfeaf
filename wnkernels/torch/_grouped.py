"""Whole-model grouped recompute: every weight-normed weight of a model in one
``weight_norm_many`` call, their backward in one ``weight_norm_backward_many``.

    gwn = GroupedWeightNorm(model)          # after wnkernels.torch.convert / weight_norm
    for x, y in data:
        opt.zero_grad()
        with gwn:                            # all weights computed here, in one call
            loss = loss_fn(model(x), y)
        loss.backward()                      # all (grad_g, grad_v) in one call
        opt.step()

or ``gwn.install()`` once, after which every ``model(...)`` call does the same by
itself (a forward pre-hook and an always-called forward hook on the model;
``gwn.remove()`` undoes it).

How: one ``torch.autograd.Function`` takes every (g, v) and returns every w
(one grouped forward per dtype/device/eps group -- normally one); its backward
receives every grad_w and runs one grouped backward.  The w's are handed to
the modules through PyTorch's parametrization cache
(``torch.nn.utils.parametrize.cached()``, pre-filled), so the modules' forward
code is unchanged.  g and v are read from the modules at each entry, so the
optimizer may step (in place) between entries and the next entry sees the new
values.  Results are bitwise equal to the per-module drop-in (the grouped
kernels are bitwise equal to the per-tensor ones; for the half types the
drop-in's rounded-norm forward is reproduced exactly from the grouped norms).

Memory: the one grouped backward runs once every grad_w has arrived (and,
its autograd node being made at the start of the forward, after every other
backward node), so all grad_w's of the model are alive together: about one
more copy of the weights than the per-module path at the backward's peak.
``max_group_bytes=`` splits the model into consecutive chunks of at most that
many bytes of v, each computed (one grouped call) when its first weight is
used, so each chunk's backward runs as soon as its grad_w's are in.

Limits: no double backward (``create_graph=True`` raises); a weight used
twice inside one entry gets one grad_w (the sum), which may round differently
from the per-module path's two backward calls; not for torch.compile (the
parametrization cache refuses tracing -- compile the per-module drop-in
instead).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.utils import parametrize

import wnkernels
from ._convert import _weight_norms, convert as _convert_model
from ._ops import _keepdim_shape

__all__ = ["GroupedWeightNorm", "grouped_weight_norm"]

_HALF = (torch.float16, torch.bfloat16)


def _lib_dim(dims):
    return dims[0] if len(dims) == 1 else tuple(dims)


class _GroupedFn(torch.autograd.Function):
    """forward(plan, *gs, *vs) -> (*ws).  ``plan``: the kept axes per item,
    the eps, and the items' grouping (indices sharing dtype, device, eps)."""

    @staticmethod
    def forward(ctx, plan, *tensors):
        dims_list, eps_list, groups = plan
        n = len(dims_list)
        gs, vs = tensors[:n], tensors[n:]
        ws: List[Optional[Tensor]] = [None] * n
        norms: List[Optional[Tensor]] = [None] * n
        for idx in groups:
            vsg = [vs[i] for i in idx]
            gsg = [gs[i] for i in idx]
            res = wnkernels.weight_norm_many(vsg, gsg, [_lib_dim(dims_list[i]) for i in idx],
                                             eps=eps_list[idx[0]])
            half = vsg[0].dtype in _HALF
            for i, (w, nrm) in zip(idx, res):
                v, g = vs[i], gs[i]
                if half:   # the drop-in's forward: norm rounded to v's dtype first
                    ks = _keepdim_shape(v.shape, dims_list[i])
                    nrm = nrm.to(v.dtype).float()
                    a = g.float().reshape(ks) / nrm.reshape(ks)
                    w = torch.empty_like(w)
                    torch.mul(v, a, out=w)
                ws[i], norms[i] = w, nrm
        ctx.set_materialize_grads(False)
        ctx.plan = plan
        ctx.save_for_backward(*gs, *vs, *norms)
        return tuple(ws)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_ws):
        dims_list, _eps_list, groups = ctx.plan
        n = len(dims_list)
        saved = ctx.saved_tensors
        gs, vs, norms = saved[:n], saved[n:2 * n], saved[2 * n:]
        need = [ctx.needs_input_grad[1 + i] or ctx.needs_input_grad[1 + n + i]
                for i in range(n)]
        grad_g: List[Optional[Tensor]] = [None] * n
        grad_v: List[Optional[Tensor]] = [None] * n
        for idx in groups:
            idx = [i for i in idx if need[i] and grad_ws[i] is not None]
            if not idx:
                continue
            res = wnkernels.weight_norm_backward_many(
                [grad_ws[i] for i in idx], [vs[i] for i in idx], [gs[i] for i in idx],
                [norms[i] for i in idx], [_lib_dim(dims_list[i]) for i in idx])
            for i, (gv, gg) in zip(idx, res):
                grad_v[i] = gv if ctx.needs_input_grad[1 + n + i] else None
                grad_g[i] = gg if ctx.needs_input_grad[1 + i] else None
        return (None, *grad_g, *grad_v)


def grouped_weight_norm(gs, vs, dims_list, eps=0.0) -> Tuple[Tensor, ...]:
    """Differentiable grouped weight norm of tensors: ``ws`` for the pairs
    ``(gs[i], vs[i])`` with kept axes ``dims_list[i]`` (the ops' ``dims``:
    lists of non-negative ints, [] = whole tensor); ``eps`` one float or one
    per item.  Items sharing dtype, device and eps go in one grouped call."""
    gs, vs = list(gs), list(vs)
    n = len(vs)
    if len(gs) != n or len(dims_list) != n:
        raise ValueError(f"gs ({len(gs)}), vs ({n}) and dims_list ({len(dims_list)}) "
                         "must have one item per weight")
    eps_list = [float(e) for e in (eps if isinstance(eps, (list, tuple)) else [eps] * n)]
    if len(eps_list) != n:
        raise ValueError(f"eps: one value or one per weight ({n}), got {len(eps_list)}")
    keys: Dict[tuple, List[int]] = {}
    for i, (g, v) in enumerate(zip(gs, vs)):
        if not isinstance(v, Tensor) or not isinstance(g, Tensor):
            raise TypeError(f"vs[{i}] and gs[{i}] must be Tensors")
        keys.setdefault((v.dtype, v.device, eps_list[i]), []).append(i)
    plan = ([list(d) for d in dims_list], eps_list, [tuple(ix) for ix in keys.values()])
    if n == 0:
        return ()
    return _GroupedFn.apply(plan, *gs, *vs)


class _LazyChunks(dict):
    """The parametrization cache while a chunked `GroupedWeightNorm` is active:
    a chunk's weights are computed (one grouped call) when the first of them
    is asked for.  So each chunk's autograd node is created next to its first
    module's use, and the engine runs its backward as soon as that chunk's
    grad_w's are in (a node made at the start of the forward would run last,
    with every grad_w of the model waiting)."""

    def __init__(self, owner: "GroupedWeightNorm", base: dict):
        super().__init__(base)
        self._owner = owner
        self._where = {}
        self._inputs = owner._inputs()
        for a, b in owner._chunks(self._inputs[1]):
            for i in range(a, b):
                _, module, name = owner.entries[i]
                self._where[(id(module), name)] = (a, b)

    def get(self, key, default=None):
        if key in self:
            return self[key]
        ab = self._where.get(key)
        if ab is None:
            return default
        a, b = ab
        gs, vs, dims, eps = self._inputs
        ws = grouped_weight_norm(gs[a:b], vs[a:b], dims[a:b], eps[a:b])
        for i, w in zip(range(a, b), ws):
            _, module, name = self._owner.entries[i]
            self[(id(module), name)] = w
            self._where.pop((id(module), name), None)
        return self[key]


class GroupedWeightNorm:
    """Every wnkernels weight norm of ``model`` recomputed in one grouped call
    per step (see the module docstring).  ``convert=True`` first converts
    PyTorch's / legacy weight norms on the model (`wnkernels.torch.convert`);
    otherwise finding one is a ValueError.  ``max_group_bytes``: see the
    module docstring (None: one grouped call for the whole model)."""

    def __init__(self, model: nn.Module, *, convert: bool = False,
                 max_group_bytes: Optional[int] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if max_group_bytes is not None and (not isinstance(max_group_bytes, int)
                                            or max_group_bytes <= 0):
            raise ValueError(f"max_group_bytes must be a positive int or None, got "
                             f"{max_group_bytes!r}")
        self.model = model
        self.max_group_bytes = max_group_bytes
        if convert:
            _convert_model(model)
        self._depth = 0
        self._ctx = None
        self._handles: List = []
        self.refresh()

    def refresh(self) -> None:
        """Re-scan the model (after adding or removing weight norms)."""
        entries, foreign = [], []
        for qual, module in self.model.named_modules():
            for name, kind, _ in _weight_norms(module):
                q = f"{qual}.{name}" if qual else name
                if kind == "wnkernels":
                    entries.append((q, module, name))
                else:
                    foreign.append(q)
        if foreign:
            raise ValueError(f"model: {len(foreign)} weight norm(s) are not wnkernels' "
                             f"(e.g. {foreign[0]!r}): call wnkernels.torch.convert(model) "
                             "first, or pass convert=True")
        self.entries = entries

    @property
    def names(self) -> List[str]:
        """Qualified names of the weights recomputed, in module order."""
        return [q for q, _, _ in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def _inputs(self):
        gs, vs, dims, eps = [], [], [], []
        for _, module, name in self.entries:
            plist = module.parametrizations[name]
            v = plist.original1
            gs.append(plist.original0)
            vs.append(v)
            dims.append(plist[0]._dims(v))
            eps.append(plist[0].eps)
        return gs, vs, dims, eps

    def _chunks(self, vs) -> List[Tuple[int, int]]:
        """Consecutive (start, stop) ranges of at most max_group_bytes of v."""
        if self.max_group_bytes is None:
            return [(0, len(vs))]
        out, start, size = [], 0, 0
        for i, v in enumerate(vs):
            nb = v.numel() * v.element_size()
            if i > start and size + nb > self.max_group_bytes:
                out.append((start, i))
                start, size = i, 0
            size += nb
        out.append((start, len(vs)))
        return out

    def compute(self) -> Tuple[Tensor, ...]:
        """Every weight, in `names` order, from one grouped call per chunk
        (differentiable with respect to every g and v)."""
        gs, vs, dims, eps = self._inputs()
        out: List[Tensor] = []
        for a, b in self._chunks(vs):
            out += grouped_weight_norm(gs[a:b], vs[a:b], dims[a:b], eps[a:b])
        return tuple(out)

    def __enter__(self) -> "GroupedWeightNorm":
        self._depth += 1
        if self._depth == 1:
            ctx = parametrize.cached()
            ctx.__enter__()
            self._ctx = ctx
            try:
                if self.max_group_bytes is None:
                    for (_, module, name), w in zip(self.entries, self.compute()):
                        parametrize._cache[(id(module), name)] = w
                else:
                    parametrize._cache = _LazyChunks(self, parametrize._cache)
            except BaseException:
                self._exit()
                raise
        return self

    def _exit(self, *exc) -> None:
        ctx, self._ctx = self._ctx, None
        self._depth = 0
        if ctx is not None:
            ctx.__exit__(*(exc or (None, None, None)))

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth <= 0:
            self._exit(*exc)

    # -- hooks: every model(...) call does a grouped step by itself
    def install(self) -> "GroupedWeightNorm":
        """Make every call of ``model(...)`` compute its weights grouped (until
        `remove`).  Returns self."""
        if self._handles:
            return self
        self._handles = [
            self.model.register_forward_pre_hook(lambda *_: self.__enter__() and None),
            self.model.register_forward_hook(lambda *_: self.__exit__(None, None, None),
                                             always_call=True),
        ]
        return self

    def remove(self) -> None:
        """Undo `install`."""
        for h in self._handles:
            h.remove()
        self._handles = []
