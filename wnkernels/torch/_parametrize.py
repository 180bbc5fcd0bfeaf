"""The drop-in for ``torch.nn.utils.parametrizations.weight_norm``.

Same structure as PyTorch's: a parametrization registered on ``name`` whose
originals are ``original0`` (g) and ``original1`` (v), so the state_dict keys
are ``parametrizations.<name>.original0/1`` and state dicts load both ways;
legacy ``<name>_g`` / ``<name>_v`` checkpoints (the old
``torch.nn.utils.weight_norm`` hook) load too.  ``dim`` follows PyTorch's
parametrization: an int (negative counts from the end) keeps that axis, and
``None`` or ``-1`` normalize the whole tensor (g then has shape ``()``).

The weight is computed by the ``wnkernels::weight_norm`` op.  Registration is
lossless: g is set from the same kernel's norms (rounded to the parameter's
dtype for the half types, whose forward then divides by the norm rounded the
same way), so ``g / norm`` is exactly 1 and the weight keeps its bits.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._planner import check_eps
from . import _ops
from ._ops import normalize_dims

__all__ = ["WeightNorm", "weight_norm", "torch_dim"]

_HALF = (torch.float16, torch.bfloat16)


def torch_dim(dim: Optional[int], ndim: int) -> List[int]:
    """PyTorch's parametrization ``dim`` (None and -1: the whole tensor) as the
    ops' kept axes."""
    if dim is None or dim == -1:
        return []
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int or None, got {dim!r}")
    return normalize_dims(dim, ndim)


def g_shape(shape, dims) -> Tuple[int, ...]:
    """g's shape as PyTorch gives it: size 1 on every reduced axis, or () for
    the whole tensor."""
    if not dims:
        return ()
    return tuple(n if k in dims else 1 for k, n in enumerate(shape))


class WeightNorm(nn.Module):
    """The parametrization: ``forward(g, v)`` is the weight, ``right_inverse(w)``
    gives (g, v) with g the kernel's norms of w, so that the weight keeps its
    bits.  ``eps`` (default 0: PyTorch's results) is added under the root."""

    def __init__(self, dim: Optional[int] = 0, eps: float = 0.0):
        super().__init__()
        if dim is None:
            dim = -1
        self.dim = dim
        self.eps = float(eps)

    def _dims(self, v: Tensor) -> List[int]:
        return torch_dim(self.dim, v.dim())

    def forward(self, weight_g: Tensor, weight_v: Tensor) -> Tensor:
        return _ops.weight_norm(weight_v, weight_g, self._dims(weight_v), self.eps, True)[0]

    @torch.no_grad()
    def right_inverse(self, weight: Tensor) -> Tuple[Tensor, Tensor]:
        dims = self._dims(weight)
        g = torch.empty(g_shape(weight.shape, dims), dtype=weight.dtype, device=weight.device)
        g.fill_(1)
        _, norms = _ops.row_scale(weight, g, dims, self.eps)
        # into g's own (torch-allocated, resizable) storage: the norms' memory
        # is the kernels' DLPack buffer, whose storage FSDP2 could not resize
        return g.copy_(norms.reshape(g.shape)), weight

    def extra_repr(self) -> str:
        return f"dim={self.dim}" + (f", eps={self.eps}" if self.eps else "")


def _legacy_hook(name: str):
    """A load_state_dict pre-hook turning legacy ``<name>_g`` / ``<name>_v``
    keys into the parametrization's (as PyTorch's own does)."""
    def hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
             error_msgs):
        g_key, v_key = f"{prefix}{name}_g", f"{prefix}{name}_v"
        if g_key in state_dict and v_key in state_dict:
            state_dict[f"{prefix}parametrizations.{name}.original0"] = state_dict.pop(g_key)
            state_dict[f"{prefix}parametrizations.{name}.original1"] = state_dict.pop(v_key)
    return hook


def weight_norm(module: nn.Module, name: str = "weight", dim: Optional[int] = 0, *,
                eps: float = 0.0) -> nn.Module:
    """Apply wnkernels' weight normalization to ``module.<name>`` (a drop-in for
    ``torch.nn.utils.parametrizations.weight_norm``; see the module docstring).
    Returns the module."""
    eps = check_eps(eps)
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(f"module has no tensor parameter {name!r}")
    torch_dim(dim, weight.dim())   # validates dim against the weight
    parametrize.register_parametrization(module, name, WeightNorm(dim, eps), unsafe=True)
    module._register_load_state_dict_pre_hook(_legacy_hook(name))
    return module
