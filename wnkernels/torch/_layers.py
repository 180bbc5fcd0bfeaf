"""Weight-normed layers that never materialize the weight.

    WeightNormLinear(in_features, out_features, bias=True, *, eps=0.0)
    WeightNormConv1d(in_channels, out_channels, kernel_size, stride=1, padding=0,
                     dilation=1, groups=1, bias=True, padding_mode="zeros", *, eps=0.0)
    WeightNormConv2d(...)   # the same, 2-D

Each holds ``weight_g`` (g, keep-dims shape ``(out, 1, ...)`` as PyTorch's
weight norm gives it) and ``weight_v`` (v, the weight's shape), and computes

    y = op(x, v) * scale + b,     scale = g / ||v||  (per output channel)

with ``scale`` from wnkernels' ``row_scale`` (the ``wnkernels::row_scale`` op
under torch.compile) (v read once, nothing of
v's size written).  This is exact algebra: the op is linear in the weight and
``w = v * scale`` per output channel.  The backward runs the op's own weight
gradient ``G = dL/dW`` (for ``W = v * scale``, i.e. ``dy^T x`` for Linear, the
convolution's weight gradient for conv) and then wnkernels' fused
``weight_norm_backward(G, v, g, norms)`` for ``(grad_v, grad_g)``; the input
gradient is the op's input gradient of ``dy * scale`` against v (or of dy
against ``v * scale``, whichever temporary is smaller).  No w is kept for the
backward: the layer saves its input, v, g, the norms and the scale.

Only ``dim=0`` (one norm per output channel) factorizes like this; modules
normalized over other axes stay with the drop-in `weight_norm`.  ConvTranspose
is not provided (its weight's axis 0 is the input channel).

``from_module(m)`` builds a layer from an ``nn.Linear`` / ``nn.Conv1d`` /
``nn.Conv2d`` -- plain (g set losslessly from the weight's norms) or carrying a
weight norm (wnkernels' drop-in, PyTorch's parametrization or the legacy hook:
g and v copied bit for bit).  ``to_module()`` goes back.  State dicts of
weight-normed ``nn`` modules (``parametrizations.weight.original0/1`` or legacy
``weight_g``/``weight_v``) load into the layers directly.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.utils import parametrize

from ._convert import _weight_norms
from . import _ops
from ._ops import weight_norm_backward_op
from ._parametrize import torch_dim

__all__ = ["WeightNormLinear", "WeightNormConv1d", "WeightNormConv2d", "layers_from_model"]

_HALF = (torch.float16, torch.bfloat16)
_DIMS0 = [0]


def _scale_and_norms(v: Tensor, g: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """(scale flat (out,), norms as the backward wants them).  Half types: the
    norm rounded to v's dtype first, as the drop-in does, so that g set from
    the norms gives a scale of exactly 1."""
    scale, norms = _ops.row_scale(v, g, _DIMS0, eps)
    if v.dtype in _HALF:
        norms = norms.to(v.dtype).float()
        scale = (g.float() / norms).to(v.dtype)
    return scale.reshape(-1), norms


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v, g, bias, eps):
        scale, norms = _scale_and_norms(v, g, eps)
        y = F.linear(x, v)
        y.mul_(scale)
        if bias is not None:
            y.add_(bias)
        ctx.save_for_backward(x, v, g, norms, scale)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, v, g, norms, scale = ctx.saved_tensors
        nx, nv, ng, nb = ctx.needs_input_grad[:4]
        gx = gv = gg = gb = None
        if nx:
            if dy.numel() <= v.numel():
                gx = (dy * scale) @ v
            else:
                gx = dy @ (v * scale[:, None])
        if nv or ng or nb:
            dy2 = dy.reshape(-1, dy.shape[-1])
            if nv or ng:
                gw = dy2.t() @ x.reshape(-1, x.shape[-1])
                gv, gg = weight_norm_backward_op(gw, v, g, norms, _DIMS0)
            if nb:
                gb = dy2.sum(0)
        return gx, gv, gg, gb, None


class _ConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v, g, bias, stride, padding, dilation, groups, eps):
        nd = v.dim() - 2
        scale, norms = _scale_and_norms(v, g, eps)
        y = torch.ops.aten.convolution(x, v, None, stride, padding, dilation, False,
                                       [0] * nd, groups)
        shape = (1, -1) + (1,) * nd
        y.mul_(scale.view(shape))
        if bias is not None:
            y.add_(bias.view(shape))
        ctx.save_for_backward(x, v, g, norms, scale)
        ctx.conf = (list(stride), list(padding), list(dilation), groups)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, v, g, norms, scale = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        nd = v.dim() - 2
        nx, nv, ng, nb = ctx.needs_input_grad[:4]
        gx = gv = gg = gb = None
        nw = nv or ng
        bias_sizes = [v.shape[0]] if nb else None
        conv_bw = torch.ops.aten.convolution_backward
        if nx and dy.numel() > v.numel():
            # the smaller temporary: w = v * scale (transient), one call for all
            w = v * scale.view((-1,) + (1,) * (nd + 1))
            gx, gw, gb = conv_bw(dy, x, w, bias_sizes, stride, padding, dilation, False,
                                 [0] * nd, groups, [True, nw, nb])
            del w
        else:
            if nx:
                gx = conv_bw(dy * scale.view((1, -1) + (1,) * nd), x, v, None, stride,
                             padding, dilation, False, [0] * nd, groups,
                             [True, False, False])[0]
            gw = None
            if nw or nb:
                _, gw, gb = conv_bw(dy, x, v, bias_sizes, stride, padding, dilation, False,
                                    [0] * nd, groups, [False, nw, nb])
        if nw:
            gv, gg = weight_norm_backward_op(gw, v, g, norms, _DIMS0)
        return gx, gv, gg, gb, None, None, None, None, None


# ---------------------------------------------------------------- shared helpers

def _check_eps(eps) -> float:
    eps = float(eps)
    if not eps >= 0 or math.isinf(eps):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    return eps


def _check_g(name: str, g: Tensor, out: int, ndim: int) -> None:
    ok = (g.shape == (out,) + (1,) * (ndim - 1)) or (g.shape == (out,))
    if not ok:
        raise ValueError(f"{name}: weight_g must have shape ({out}, 1, ...) or ({out},), "
                         f"got {tuple(g.shape)}")


def weight_norm_state(module: nn.Module, name: str = "weight"):
    """``(kind, g, v, kept_dims, eps)`` of the weight norm on ``module.<name>``
    (kind "wnkernels", "torch" or "legacy"), or None if it has none.  g and v
    are the Parameters themselves."""
    for nm, kind, dim in _weight_norms(module):
        if nm != name:
            continue
        if kind == "legacy":
            g, v = getattr(module, name + "_g"), getattr(module, name + "_v")
            eps = 0.0
        else:
            plist = module.parametrizations[name]
            g, v = plist.original0, plist.original1
            eps = float(getattr(plist[0], "eps", 0.0))
        return kind, g, v, torch_dim(dim, v.dim()), eps
    return None


class _WeightNormLayer(nn.Module):
    """What the three layers share: parameters, ``weight`` on demand,
    ``from_module`` / ``to_module``, loading weight-normed state dicts."""

    _nn_type: type = nn.Module

    def _init_params(self, shape, bias: bool, eps: float, factory) -> None:
        self.eps = _check_eps(eps)
        self.weight_v = nn.Parameter(torch.empty(shape, **factory))
        self.weight_g = nn.Parameter(torch.empty((shape[0],) + (1,) * (len(shape) - 1),
                                                 **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(shape[0], **factory))
        else:
            self.register_parameter("bias", None)
        self._register_load_state_dict_pre_hook(_rename_weight_norm_keys, with_module=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """v and bias as ``nn.Linear`` / ``nn.Conv`` initialize their weight and
        bias; g = ||v|| (so the weight starts equal to v)."""
        v = self.weight_v
        if v.is_meta:
            return
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = v[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)
        self.reset_g()

    @torch.no_grad()
    def reset_g(self) -> None:
        """g = the norms of v (rounded to v's dtype): the weight becomes v exactly."""
        ones = torch.ones_like(self.weight_g)
        _, norms = _ops.row_scale(self.weight_v, ones, _DIMS0, self.eps)
        self.weight_g.copy_(norms.reshape(self.weight_g.shape))

    def _check(self) -> None:
        v, g = self.weight_v, self.weight_g
        _check_g(type(self).__name__, g, v.shape[0], v.dim())
        if g.dtype != v.dtype:
            raise TypeError(f"{type(self).__name__}: weight_g ({g.dtype}) and weight_v "
                            f"({v.dtype}) must share one dtype")

    @property
    def weight(self) -> Tensor:
        """w = g * v / ||v|| (materialized on demand, differentiable)."""
        return _ops.weight_norm(self.weight_v, self.weight_g, _DIMS0, self.eps, True)[0]

    @torch.no_grad()
    def scale(self) -> Tensor:
        """The per-output-channel ``g / ||v||`` the forward multiplies by."""
        return _scale_and_norms(self.weight_v, self.weight_g, self.eps)[0]

    # -- conversion
    @classmethod
    def _hyper(cls, m: nn.Module) -> dict:
        raise NotImplementedError

    @classmethod
    def from_module(cls, module: nn.Module, *, eps: Optional[float] = None):
        """A layer computing what ``module`` computes, from an ``nn.Linear`` /
        ``nn.Conv1d`` / ``nn.Conv2d`` (matching the class) that is plain or
        carries a weight norm with dim=0 (wnkernels' drop-in, PyTorch's
        parametrization, the legacy hook).  g, v and bias are copied bit for
        bit (a plain module's g is set from its weight's norms, losslessly:
        the layer's ``weight`` equals the module's).  ``eps``: default the
        drop-in's eps, else 0."""
        if not isinstance(module, cls._nn_type) or isinstance(module, _WeightNormLayer):
            raise TypeError(f"{cls.__name__}.from_module: module must be an "
                            f"{cls._nn_type.__name__}, got {type(module).__name__}")
        state = weight_norm_state(module)
        if state is None:
            weight = module.weight.detach()
            v = weight.clone()
            g = None
            m_eps = 0.0
        else:
            kind, g, v, dims, m_eps = state
            if dims != _DIMS0:
                raise ValueError(f"{cls.__name__}.from_module: the module's weight norm "
                                 f"keeps axes {dims}; the layer needs dim=0 (one norm per "
                                 "output channel) -- keep the drop-in for other dims")
            v = v.detach().clone()
            g = g.detach().clone()
        eps = m_eps if eps is None else eps
        layer = cls(**cls._hyper(module), bias=module.bias is not None, eps=eps,
                    device="meta", dtype=v.dtype)
        layer.weight_v = nn.Parameter(v)
        if g is None:
            layer.weight_g = nn.Parameter(torch.empty(layer.weight_g.shape, dtype=v.dtype,
                                                      device=v.device))
            layer.reset_g()
        else:
            layer.weight_g = nn.Parameter(g.reshape(layer.weight_g.shape))
        if module.bias is not None:
            layer.bias = nn.Parameter(module.bias.detach().clone())
        layer.train(module.training)
        return layer

    def to_module(self, *, weight_norm: bool = True) -> nn.Module:
        """The equivalent ``nn`` module: with wnkernels' drop-in weight norm
        holding copies of g and v (default), or (``weight_norm=False``) a
        plain module whose weight is the current w."""
        from ._convert import _install
        v = self.weight_v
        m = self._nn_type(**self._hyper(self), bias=self.bias is not None, device="meta",
                          dtype=v.dtype)
        if self.bias is not None:
            m.bias = nn.Parameter(self.bias.detach().clone())
        if weight_norm:
            m.weight = nn.Parameter(v.detach().clone())
            _install(m, "weight", 0, nn.Parameter(self.weight_g.detach().clone()),
                     nn.Parameter(v.detach().clone()), self.eps)
        else:
            with torch.no_grad():
                m.weight = nn.Parameter(self.weight.detach().clone())
        m.train(self.training)
        return m

    def extra_repr(self) -> str:
        s = self._repr_core()
        if self.bias is None:
            s += ", bias=False"
        if self.eps:
            s += f", eps={self.eps}"
        return s


def _rename_weight_norm_keys(module, state_dict, prefix, local_metadata, strict,
                             missing_keys, unexpected_keys, error_msgs):
    """Load a weight-normed ``nn`` module's state dict: the parametrization's
    ``parametrizations.weight.original0/1`` become ``weight_g``/``weight_v``
    (legacy-hook keys already are these); g of shape (out,) is reshaped."""
    g_key, v_key = prefix + "parametrizations.weight.original0", \
        prefix + "parametrizations.weight.original1"
    if g_key in state_dict and v_key in state_dict:
        state_dict[prefix + "weight_g"] = state_dict.pop(g_key)
        state_dict[prefix + "weight_v"] = state_dict.pop(v_key)
    gk = prefix + "weight_g"
    if gk in state_dict and isinstance(state_dict[gk], Tensor):
        g = state_dict[gk]
        if g.numel() == module.weight_g.numel() and g.shape != module.weight_g.shape:
            state_dict[gk] = g.reshape(module.weight_g.shape)


class WeightNormLinear(_WeightNormLayer):
    """``nn.Linear`` with weight norm (dim=0) that never forms the weight:
    ``y = (x @ v.T) * (g / ||v||) + b``."""

    _nn_type = nn.Linear

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 eps: float = 0.0, device=None, dtype=None):
        super().__init__()
        for nm, val in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 0:
                raise ValueError(f"{nm} must be a non-negative int, got {val!r}")
        self.in_features = in_features
        self.out_features = out_features
        self._init_params((out_features, in_features), bias, eps,
                          {"device": device, "dtype": dtype})

    @classmethod
    def _hyper(cls, m):
        return {"in_features": m.in_features, "out_features": m.out_features}

    def _repr_core(self):
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def forward(self, x: Tensor) -> Tensor:
        self._check()
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"input: last dimension must be in_features="
                             f"{self.in_features}, got shape {tuple(x.shape)}")
        return _LinearFn.apply(x, self.weight_v, self.weight_g, self.bias, self.eps)


class _WeightNormConvNd(_WeightNormLayer):
    _nd = 0

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", *, eps=0.0,
                 device=None, dtype=None):
        super().__init__()
        # nn.Conv's own validation and conventions, on a meta module
        ref = self._nn_type(in_channels, out_channels, kernel_size, stride=stride,
                            padding=padding, dilation=dilation, groups=groups, bias=False,
                            padding_mode=padding_mode, device="meta")
        for a in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                  "dilation", "groups", "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(self, a, getattr(ref, a))
        self._init_params(tuple(ref.weight.shape), bias, eps,
                          {"device": device, "dtype": dtype})

    @classmethod
    def _hyper(cls, m):
        return {a: getattr(m, a) for a in ("in_channels", "out_channels", "kernel_size",
                                           "stride", "padding", "dilation", "groups",
                                           "padding_mode")}

    def _repr_core(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0,) * self._nd:
            s += f", padding={self.padding!r}"
        if self.dilation != (1,) * self._nd:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s

    def _padded(self, x: Tensor) -> Tuple[Tensor, List[int]]:
        """x padded as nn.Conv pads it, and the padding left for the convolution."""
        nd = self._nd
        if self.padding_mode != "zeros":
            return F.pad(x, self._reversed_padding_repeated_twice,
                         mode=self.padding_mode), [0] * nd
        if self.padding == "valid":
            return x, [0] * nd
        if self.padding == "same":
            r = self._reversed_padding_repeated_twice   # (left, right) per dim, reversed
            left = [r[2 * (nd - 1 - i)] for i in range(nd)]
            extra = []
            for i in reversed(range(nd)):
                extra += [0, r[2 * (nd - 1 - i) + 1] - left[i]]
            if any(extra):
                x = F.pad(x, extra)
            return x, left
        return x, list(self.padding)

    def forward(self, x: Tensor) -> Tensor:
        self._check()
        nd = self._nd
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a Tensor, got {type(x).__name__}")
        if x.dim() not in (nd + 1, nd + 2):
            raise ValueError(f"input: expected a {nd + 1}-D (unbatched) or {nd + 2}-D "
                             f"(batched) tensor, got shape {tuple(x.shape)}")
        unbatched = x.dim() == nd + 1
        if unbatched:
            x = x.unsqueeze(0)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"input: expected {self.in_channels} channels (dim 1), got "
                             f"shape {tuple(x.shape)}")
        x, pad = self._padded(x)
        y = _ConvFn.apply(x, self.weight_v, self.weight_g, self.bias, list(self.stride), pad,
                          list(self.dilation), self.groups, self.eps)
        return y.squeeze(0) if unbatched else y


class WeightNormConv1d(_WeightNormConvNd):
    """``nn.Conv1d`` with weight norm (dim=0) that never forms the weight:
    ``y = conv1d(x, v) * (g / ||v||)[:, None] + b``."""
    _nn_type = nn.Conv1d
    _nd = 1


class WeightNormConv2d(_WeightNormConvNd):
    """``nn.Conv2d`` with weight norm (dim=0) that never forms the weight:
    ``y = conv2d(x, v) * (g / ||v||)[:, None, None] + b``."""
    _nn_type = nn.Conv2d
    _nd = 2


_LAYERS = (WeightNormLinear, WeightNormConv1d, WeightNormConv2d)


def layers_from_model(model: nn.Module, *, plain: bool = False) -> List[str]:
    """Replace, in place, every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d``
    (exactly those types, not subclasses) of ``model`` that carries a dim=0 weight norm (any kind) -- and, with
    ``plain=True``, every plain one too -- by the matching layer built with
    ``from_module``.  Returns the qualified names replaced.  The new layers hold
    new Parameters: build the optimizer afterwards."""
    done = []
    for qual, parent in list(model.named_modules()):
        for cname, child in list(parent.named_children()):
            base = parametrize.type_before_parametrizations(child)
            cls = next((c for c in _LAYERS if base is c._nn_type), None)
            if cls is None:
                continue
            state = weight_norm_state(child)
            if state is None and not plain:
                continue
            if state is not None and state[3] != _DIMS0:
                continue
            setattr(parent, cname, cls.from_module(child))
            done.append(f"{qual}.{cname}" if qual else cname)
    return done
