"""wnkernels' kernels as PyTorch custom operators (namespace ``wnkernels``).

    torch.ops.wnkernels.weight_norm(v, g, dims, eps, round_norm) -> (w, norms)
    torch.ops.wnkernels.weight_norm_backward(grad_w, v, g, norms, dims) -> (grad_v, grad_g)
    torch.ops.wnkernels.row_scale(v, g, dims, eps) -> (scale, norms)

``dims`` lists the kept axes (non-negative, increasing; empty: the whole
tensor is one row) -- the library's ``dim`` after `normalize_dims`.  Each op
runs the same kernels as `wnkernels.weight_norm` & co. on CPU and CUDA
tensors, has a fake implementation built from the planner's output specs (so
``torch.compile`` and meta tensors see exactly the shapes, dtypes and strides
the kernels produce), and an autograd formula: the forward's gradient is the
fused backward kernel; the backward's own gradient (double backward) and
row_scale's gradient are written with torch operations, as is the forward's
backward when a graph of it is asked for (``create_graph=True``).

``round_norm`` (forward only, half types): the scale is ``g / norm`` with the
norm first rounded to v's dtype, so that ``g`` set from the norms gives a scale
of exactly 1 (the lossless drop-in, see `wnkernels.torch.weight_norm`).  Its
backward uses that same rounded norm.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

import wnkernels
from .._arrays import ArrayInfo
from .._layout import normalize_dim
from .._planner import BACKWARD, FORWARD, ROW_SCALE, dense_strides, plan_call

__all__ = ["normalize_dims", "output_specs", "weight_norm", "row_scale"]

_HALF = (torch.float16, torch.bfloat16)


def normalize_dims(dim, ndim: int) -> List[int]:
    """The library's ``dim`` (int, negative, None, tuple) as the ops' ``dims``."""
    return list(normalize_dim(dim, ndim))


def _as_dim(dims: Sequence[int]):
    return dims[0] if len(dims) == 1 else tuple(dims)


def _info(name: str, t: Tensor) -> ArrayInfo:
    """A tensor's description from its metadata only (works on fake and meta
    tensors: no data pointer is read)."""
    dev = t.device
    cuda = dev.type == "cuda"
    return ArrayInfo(obj=None, kind="torch-cuda" if cuda else "torch",
                     device=("cuda", dev.index or 0) if cuda else ("cpu", 0),
                     shape=tuple(t.shape), strides=tuple(t.stride()),
                     dtype=str(t.dtype).replace("torch.", ""), itemsize=t.element_size(),
                     ptr=0)


def output_specs(op: int, args: Sequence[Optional[Tensor]], dims: Sequence[int]):
    """The planner's `OutSpec`s for ``op`` on tensors described by metadata
    alone (raises what the call would raise)."""
    names = {FORWARD: ("v", "g", "out"), BACKWARD: ("grad_w", "v", "g", "norms"),
             ROW_SCALE: ("v", "g")}[op]
    descs = [None if a is None else _info(n, a) for n, a in zip(names, args)]
    return plan_call(op, args, descs, _as_dim(dims)).outputs


def _empty_like_spec(spec, like: Tensor) -> Tensor:
    return torch.empty_strided(spec.shape, spec.strides, dtype=getattr(torch, spec.dtype),
                               device=like.device)


def _fake(op: int, args, dims, like: Tensor):
    return tuple(_empty_like_spec(s, like) for s in output_specs(op, args, dims))


def _keepdim_shape(shape, dims) -> List[int]:
    return [n if k in dims else 1 for k, n in enumerate(shape)]


# ---------------------------------------------------------------- forward

def _forward(v: Tensor, g: Tensor, dims: List[int], eps: float,
             round_norm: bool) -> Tuple[Tensor, Tensor]:
    dim = _as_dim(dims)
    if not (round_norm and v.dtype in _HALF):
        return wnkernels.weight_norm(v, g, dim, eps=eps)
    # the norm rounded to v's dtype before the division: one read of v for
    # the norms, one fused pass for w = v * a (computed in float32, rounded once)
    _, norms = wnkernels.row_scale(v, g, dim, eps=eps)
    shape = _keepdim_shape(v.shape, dims)
    a = g.float().reshape(shape) / norms.to(v.dtype).float().reshape(shape)
    # w laid out as the planner lays out the forward's w (the call above validated)
    w = torch.empty_strided(v.shape, dense_strides(v.shape, v.stride()), dtype=v.dtype,
                            device=v.device)
    torch.mul(v, a, out=w)
    return w, norms


def _backward(grad_w: Tensor, v: Tensor, g: Tensor, norms: Tensor,
              dims: List[int]) -> Tuple[Tensor, Tensor]:
    return wnkernels.weight_norm_backward(grad_w, v, g, norms, _as_dim(dims))


def _row_scale(v: Tensor, g: Tensor, dims: List[int], eps: float) -> Tuple[Tensor, Tensor]:
    return wnkernels.row_scale(v, g, _as_dim(dims), eps=eps)


@torch.library.custom_op("wnkernels::weight_norm", mutates_args=())
def weight_norm_op(v: Tensor, g: Tensor, dims: List[int], eps: float,
                   round_norm: bool) -> Tuple[Tensor, Tensor]:
    return _forward(v, g, dims, eps, round_norm)


@weight_norm_op.register_fake
def _(v, g, dims, eps, round_norm):
    return _fake(FORWARD, (v, g, None), dims, v)


def _fwd_setup(ctx, inputs, output):
    v, g, dims, _eps, round_norm = inputs
    _w, norms = output
    if round_norm and v.dtype in _HALF:
        norms = norms.to(v.dtype).float()
    ctx.save_for_backward(v, g, norms)
    ctx.dims = dims
    ctx.mark_non_differentiable(output[1])


def _fwd_grads(ctx, grad_w, backward):
    if grad_w is None:
        return None, None, None, None, None
    v, g, norms = ctx.saved_tensors
    if torch.is_grad_enabled():     # create_graph: a differentiable backward
        grad_v, grad_g = _backward_formula(grad_w, v, g, norms, ctx.dims, tie=True)
    else:
        grad_v, grad_g = backward(grad_w, v, g, norms, ctx.dims)
    return grad_v, grad_g, None, None, None


def _fwd_backward(ctx, grad_w, _grad_norms):
    return _fwd_grads(ctx, grad_w, weight_norm_backward_op)


weight_norm_op.register_autograd(_fwd_backward, setup_context=_fwd_setup)


# ---------------------------------------------------------------- backward

@torch.library.custom_op("wnkernels::weight_norm_backward", mutates_args=())
def weight_norm_backward_op(grad_w: Tensor, v: Tensor, g: Tensor, norms: Tensor,
                            dims: List[int]) -> Tuple[Tensor, Tensor]:
    return _backward(grad_w, v, g, norms, dims)


@weight_norm_backward_op.register_fake
def _(grad_w, v, g, norms, dims):
    return _fake(BACKWARD, (grad_w, v, g, norms), dims, v)


def _reduced(dims, ndim) -> List[int]:
    return [k for k in range(ndim) if k not in dims]


def _backward_formula(grad_w, v, g, norms, dims, tie: bool):
    """The backward written with torch operations (differentiable).  With
    ``tie`` the norm is v's (its value the saved one, its derivative v / norm:
    the forward's double backward); without, ``norms`` is an input of its own
    (the backward op's partial derivatives)."""
    red = _reduced(dims, v.dim())
    shape = _keepdim_shape(v.shape, dims)
    ct = torch.float64 if v.dtype == torch.float64 else torch.float32
    gw, vv, gg = grad_w.to(ct), v.to(ct), g.to(ct).reshape(shape)
    n = norms.to(ct).reshape(shape)
    if tie:
        sq = (vv * vv).sum(red, keepdim=True) if red else vv * vv
        n = n.detach() + (sq - sq.detach()) / (2 * n.detach())
    dot = (gw * vv).sum(red, keepdim=True) if red else gw * vv
    ghat = dot / n
    grad_v = (gg / n) * gw - (gg * ghat / (n * n)) * vv
    return grad_v.to(v.dtype), ghat.reshape(g.shape).to(g.dtype)


def _bwd_setup(ctx, inputs, output):
    grad_w, v, g, norms, dims = inputs
    ctx.save_for_backward(grad_w, v, g, norms)
    ctx.dims = dims


def _bwd_backward(ctx, gg_v, gg_g):
    saved = ctx.saved_tensors
    create = torch.is_grad_enabled()     # a graph of this gradient wanted
    with torch.enable_grad():
        ins = [t if create and t.requires_grad else t.detach().requires_grad_()
               for t in saved]
        outs = _backward_formula(*ins, ctx.dims, tie=False)
        pairs = [(o, c) for o, c in zip(outs, (gg_v, gg_g)) if c is not None]
        grads = torch.autograd.grad([o for o, _ in pairs], ins, [c for _, c in pairs],
                                    allow_unused=True, create_graph=create)
    return (*grads, None)


weight_norm_backward_op.register_autograd(_bwd_backward, setup_context=_bwd_setup)


# ---------------------------------------------------------------- row scale

@torch.library.custom_op("wnkernels::row_scale", mutates_args=())
def row_scale_op(v: Tensor, g: Tensor, dims: List[int], eps: float) -> Tuple[Tensor, Tensor]:
    return _row_scale(v, g, dims, eps)


@row_scale_op.register_fake
def _(v, g, dims, eps):
    return _fake(ROW_SCALE, (v, g), dims, v)


def _scale_setup(ctx, inputs, output):
    v, g, dims, _eps = inputs
    ctx.save_for_backward(v, g, output[1])
    ctx.dims = dims
    ctx.mark_non_differentiable(output[1])


def _scale_backward(ctx, grad_scale, _grad_norms):
    """scale = g / n: d/dg = 1 / n, d/dv = -(g / n^3) v."""
    if grad_scale is None:
        return None, None, None, None
    v, g, norms = ctx.saved_tensors
    shape = _keepdim_shape(v.shape, ctx.dims)
    ct = torch.float64 if v.dtype == torch.float64 else torch.float32
    n = norms.to(ct).reshape(shape)
    gs = grad_scale.to(ct).reshape(shape)
    grad_g = (gs / n).reshape(g.shape).to(g.dtype)
    grad_v = (-(gs * g.to(ct).reshape(shape)) / (n * n * n)) * v.to(ct)
    return grad_v.to(v.dtype), grad_g, None, None


row_scale_op.register_autograd(_scale_backward, setup_context=_scale_setup)


# ---------------------------------------------------------------- eager calls
# A Python custom op costs ~2x an autograd.Function per call in eager mode
# (its autograd and dispatch layers are Python), which a small layer feels.
# Plain tensors outside torch.compile and torch.func therefore take an
# autograd.Function with the same kernels and the same gradient functions;
# everything else (compiling, fake / meta / DTensor subclasses, functorch
# transforms) takes the op.

class _EagerWeightNorm(torch.autograd.Function):
    # ctx-style forward: a separate setup_context makes apply() bind its
    # arguments through inspect.signature on every call (~10 us)
    @staticmethod
    def forward(ctx, v, g, dims, eps, round_norm):
        out = _forward(v, g, dims, eps, round_norm)
        _fwd_setup(ctx, (v, g, dims, eps, round_norm), out)
        return out

    @staticmethod
    def backward(ctx, grad_w, _grad_norms):
        return _fwd_grads(ctx, grad_w, _backward)


class _EagerRowScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, g, dims, eps):
        out = _row_scale(v, g, dims, eps)
        _scale_setup(ctx, (v, g, dims, eps), out)
        return out

    backward = staticmethod(_scale_backward)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _eager(v: Tensor, g: Tensor) -> bool:
    # meta tensors are plain Tensors too: they take the op (its fake
    # implementation), as the kernels cannot read them (meta-device init,
    # FSDP2's deferred initialization)
    return (type(v) in _PLAIN and type(g) in _PLAIN and v.device.type != "meta"
            and not torch.compiler.is_compiling()
            and not torch._C._are_functorch_transforms_active())


def weight_norm(v: Tensor, g: Tensor, dims: List[int], eps: float = 0.0,
                round_norm: bool = False) -> Tuple[Tensor, Tensor]:
    """``wnkernels::weight_norm`` (or, on plain tensors in eager mode, the same
    kernels and gradients through an autograd.Function)."""
    if _eager(v, g):
        return _EagerWeightNorm.apply(v, g, dims, eps, round_norm)
    return weight_norm_op(v, g, dims, eps, round_norm)


def row_scale(v: Tensor, g: Tensor, dims: List[int], eps: float = 0.0) -> Tuple[Tensor, Tensor]:
    """``wnkernels::row_scale`` (eager plain tensors: an autograd.Function)."""
    if _eager(v, g):
        return _EagerRowScale.apply(v, g, dims, eps)
    return row_scale_op(v, g, dims, eps)


# ---------------------------------------------------------------- DTensor
# Sharding strategies, so that the ops take DTensors (FSDP2's sharded
# parameters outside forward, tensor parallelism): every row is computed where
# it lies, so v sharded on a kept axis (and g / norms on the matching axis)
# needs no communication; any other placement is redistributed to one of
# these by DTensor (e.g. FSDP2's Shard(0) for dim=2: all-gathered).

def _register_dtensor_sharding():
    try:
        from torch.distributed.tensor import Replicate, Shard
        from torch.distributed.tensor.experimental import register_sharding
    except ImportError:     # pragma: no cover - torch without distributed
        return

    def g_axis(g, v, dims, k):
        """The axis of g (and norms, grad_g, scale) holding v's kept axis k:
        k for a keep-dims g, its rank among the kept axes for a flat one."""
        return k if g.ndim == v.ndim else list(dims).index(k)

    @register_sharding(torch.ops.wnkernels.weight_norm.default)
    def _(v, g, dims, eps, round_norm):
        out = [([Replicate(), Replicate()], [Replicate(), Replicate(), None, None, None])]
        for k in dims:
            gk = g_axis(g, v, dims, k)
            out.append(([Shard(k), Shard(gk)], [Shard(k), Shard(gk), None, None, None]))
        return out

    @register_sharding(torch.ops.wnkernels.weight_norm_backward.default)
    def _(grad_w, v, g, norms, dims):
        out = [([Replicate(), Replicate()], [Replicate()] * 4 + [None])]
        for k in dims:
            gk = g_axis(g, v, dims, k)
            out.append(([Shard(k), Shard(gk)], [Shard(k), Shard(k), Shard(gk), Shard(gk), None]))
        return out

    @register_sharding(torch.ops.wnkernels.row_scale.default)
    def _(v, g, dims, eps):
        out = [([Replicate(), Replicate()], [Replicate(), Replicate(), None, None])]
        for k in dims:
            gk = g_axis(g, v, dims, k)
            out.append(([Shard(gk), Shard(gk)], [Shard(k), Shard(gk), None, None]))
        return out


_register_dtensor_sharding()
