"""Data-dependent initialization of weight-normed layers (Salimans & Kingma
2016, section 3).

    data_dependent_init(model, batch, *, init_scale=1.0, eps=1e-10)

For each weight-normed layer, with ``t = (v . x) / ||v||`` its output at g = 1
and b = 0, the init sets

    g = init_scale / sqrt(var[t] + eps),    b = -mean[t] * g

per output channel (mean and variance over the batch and every position), so
the layer's pre-activations on ``batch`` have zero mean and unit variance
(``init_scale``) per channel.  v is kept as it is.  On a model this runs in
one forward pass, layer by layer in forward order: a forward pre-hook sets the
layer's g = 1, b = 0, the forward hook measures t, writes g and b, and
re-runs the layer so that later layers see the re-initialized output.  A layer
called several times is initialized at its first call.

Layers handled: ``nn.Linear``, ``nn.Conv1d/2d/3d`` and wnkernels'
``WeightNorm*`` layers whose weight norm keeps axis 0 (the output channel),
and ``nn.ConvTranspose*`` with ``groups=1`` whose weight norm keeps axis 1 --
with any kind of weight norm (wnkernels' drop-in, PyTorch's parametrization,
the legacy hook).  Other weight norms (e.g. Wav2Vec2's positional conv,
``dim=2``; ConvTranspose with the default dim=0, which normalizes per input
channel) have no per-channel g to set: they are left as they are and reported
in ``skipped``.  A layer without bias gets g only (unit variance about its
mean, which stays).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import torch
from torch import Tensor, nn

from ._layers import WeightNormLinear, _WeightNormLayer, weight_norm_state

__all__ = ["data_dependent_init", "InitResult"]


@dataclass
class InitResult:
    """What `data_dependent_init` did: the qualified names of the layers it
    initialized (forward order) and ``(name, reason)`` of those it left."""
    initialized: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)


def _target(module: nn.Module):
    """(g, bias, the weight's ndim) for a supported layer, or a reason string."""
    if isinstance(module, _WeightNormLayer):
        return module.weight_g, module.bias, module.weight_v.dim()
    state = weight_norm_state(module)
    if state is None:
        return None
    _, g, v, dims, _ = state
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        if module.groups != 1:
            return "ConvTranspose with groups > 1: g is not per output channel"
        want = [1]
    elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        want = [0]
    else:
        return f"{type(module).__name__} is not a Linear / Conv layer"
    if dims != want:
        return (f"weight norm keeps axes {dims}, not the output channel axis {want}: "
                "no per-channel g")
    return g, getattr(module, "bias", None), v.dim()


def _channel_axis(module: nn.Module, out: Tensor, weight_ndim: int) -> int:
    if isinstance(module, (nn.Linear, WeightNormLinear)):
        return out.dim() - 1
    # conv: (N, C, ...) batched, (C, ...) unbatched
    return 0 if out.dim() == weight_ndim - 1 else 1


def _call(model: nn.Module, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


@torch.no_grad()
def data_dependent_init(module_or_model: nn.Module, batch, *, init_scale: float = 1.0,
                        eps: float = 1e-10) -> InitResult:
    """Set g and bias of every weight-normed layer of ``module_or_model`` so
    that its outputs on ``batch`` have per-channel mean 0 and standard
    deviation ``init_scale`` (see the module docstring).  ``batch``: a Tensor
    (``model(batch)``), a tuple/list (``model(*batch)``) or a dict
    (``model(**batch)``).  Returns an `InitResult`."""
    model = module_or_model
    if not isinstance(model, nn.Module):
        raise TypeError(f"module_or_model must be an nn.Module, got {type(model).__name__}")
    init_scale, eps = float(init_scale), float(eps)
    if not init_scale > 0 or init_scale == float("inf"):
        raise ValueError(f"init_scale must be finite and > 0, got {init_scale}")
    if not eps >= 0 or eps == float("inf"):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    result = InitResult()
    targets = {}
    for qual, m in model.named_modules():
        t = _target(m)
        if t is None:
            continue
        if isinstance(t, str):
            result.skipped.append((qual, t))
            continue
        targets[m] = (qual, *t)
    if not targets:
        raise ValueError("module_or_model: no weight-normed Linear/Conv layer to "
                         "initialize" + (f" (skipped: {result.skipped})" if result.skipped
                                         else ""))
    done = set()
    handles = []

    def pre(m, args, kwargs):
        if m in done:
            return None
        _, g, b, _ = targets[m]
        g.fill_(1)
        if b is not None:
            b.zero_()
        return None

    def post(m, args, kwargs, out):
        if m in done:
            return None
        done.add(m)
        qual, g, b, wdim = targets[m]
        if not isinstance(out, Tensor):
            raise TypeError(f"{qual or type(m).__name__}: output is not a Tensor")
        ax = _channel_axis(m, out, wdim)
        ct = torch.float64 if out.dtype == torch.float64 else torch.float32
        t = out.to(ct)
        red = [k for k in range(t.dim()) if k != ax]
        var, mean = torch.var_mean(t, dim=red, correction=0)
        scale = init_scale / torch.sqrt(var + eps)
        g.copy_(scale.reshape(g.shape).to(g.dtype))
        if b is not None:
            b.copy_((-mean * scale).to(b.dtype))
        result.initialized.append(qual)
        return m(*args, **kwargs)      # the re-initialized layer's output, for later layers

    try:
        for m in targets:
            handles.append(m.register_forward_pre_hook(pre, prepend=True, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True))
        _call(model, batch)
    finally:
        for h in handles:
            h.remove()
    for m, (qual, *_rest) in targets.items():
        if m not in done:
            result.skipped.append((qual, "not called by the forward pass"))
    return result
