"""Switching a model's weight norms to wnkernels, and folding them away.

`convert` finds every weight norm registered on a model -- PyTorch's
parametrization (``torch.nn.utils.parametrizations.weight_norm``) or the legacy
hook (``torch.nn.utils.weight_norm``, still used by HiFi-GAN, BigVGAN, DAC and
Encodec) -- and registers wnkernels' parametrization in its place, moving the
same g and v Parameter objects over (their values, identities and optimizer
state untouched).  `remove_weight_norm` folds any of the three kinds into a
plain weight for inference.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._parametrize import WeightNorm, _legacy_hook

__all__ = ["convert", "remove_weight_norm"]


def _torch_parametrization():
    from torch.nn.utils.parametrizations import _WeightNorm
    return _WeightNorm


def _legacy_hooks(module: nn.Module):
    from torch.nn.utils.weight_norm import WeightNorm as LegacyWeightNorm
    return [(k, h) for k, h in module._forward_pre_hooks.items()
            if isinstance(h, LegacyWeightNorm)]


def _weight_norms(module: nn.Module):
    """(name, kind, dim) of every weight norm registered directly on module;
    kind is "wnkernels", "torch" or "legacy"."""
    found = []
    if parametrize.is_parametrized(module):
        tp = _torch_parametrization()
        for name, plist in module.parametrizations.items():
            if len(plist) != 1:
                continue
            p = plist[0]
            if isinstance(p, WeightNorm):
                found.append((name, "wnkernels", p.dim))
            elif isinstance(p, tp):
                found.append((name, "torch", p.dim))
    for _, h in _legacy_hooks(module):
        found.append((h.name, "legacy", h.dim))
    return found


def _install(module: nn.Module, name: str, dim, g: nn.Parameter, v: nn.Parameter,
             eps: float) -> None:
    """Register wnkernels' parametrization on the plain weight ``name`` and
    give it the Parameters g and v (their values are not recomputed)."""
    parametrize.register_parametrization(module, name, WeightNorm(dim, eps), unsafe=True)
    plist = module.parametrizations[name]
    plist.original0 = g
    plist.original1 = v
    module._register_load_state_dict_pre_hook(_legacy_hook(name))


def convert(model: nn.Module, *, eps: float = 0.0) -> List[Tuple[str, str]]:
    """Replace every weight norm on ``model`` (PyTorch's parametrization or the
    legacy hook) by wnkernels' one, in place.  g and v stay the same Parameter
    objects with the same values, so the weights agree with PyTorch's within
    its rounding and checkpoints saved before conversion load after it
    (legacy ``weight_g``/``weight_v`` keys included).  Returns the converted
    (qualified name, former kind) pairs, in module order."""
    converted = []
    for qual, module in model.named_modules():
        for name, kind, dim in _weight_norms(module):
            if kind == "wnkernels":
                continue
            if kind == "torch":
                # swap the parametrization in its list: original0/1 stay the
                # same Parameters, and the module's class -- which a deepcopy
                # shares with the original (PyTorch's parametrize) -- is left
                # alone, where remove_parametrizations would delete the
                # property from it and break every copy
                module.parametrizations[name][0] = WeightNorm(dim, eps)
                module._register_load_state_dict_pre_hook(_legacy_hook(name))
            else:
                g, v = getattr(module, name + "_g"), getattr(module, name + "_v")
                torch.nn.utils.remove_weight_norm(module, name)
                _install(module, name, dim, g, v, eps)
            converted.append((f"{qual}.{name}" if qual else name, kind))
    return converted


def remove_weight_norm(model: nn.Module) -> nn.Module:
    """Fold every weight norm on ``model`` (wnkernels', PyTorch's
    parametrization, or the legacy hook) into a plain weight Parameter holding
    the current weight.  Returns the model."""
    for _, module in model.named_modules():
        for name, kind, _ in _weight_norms(module):
            if kind == "legacy":
                torch.nn.utils.remove_weight_norm(module, name)
            else:
                _own_class(module)
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a parametrized class of its own.  A deepcopy
    shares the class with the original, and remove_parametrizations deletes
    the parametrized property from the class: without this, folding a copy
    breaks the original ('ParametrizedConv1d' object has no attribute 'weight')."""
    cls = type(module)
    ns = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, ns)
