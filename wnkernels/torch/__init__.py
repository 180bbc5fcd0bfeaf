"""wnkernels for PyTorch: custom operators, the parametrization drop-in, and
model conversion.

* ``torch.ops.wnkernels.weight_norm`` / ``weight_norm_backward`` /
  ``row_scale``: the kernels as custom operators (fake implementations and
  autograd formulas registered; kept in the graph by ``torch.compile``).
  `weight_norm_fn` and `row_scale_fn` call them with the library's ``dim``.
* `weight_norm(module, name="weight", dim=0)`: a lossless drop-in for
  ``torch.nn.utils.parametrizations.weight_norm``.
* `convert(model)`: every weight norm already on a model (PyTorch's
  parametrization or the legacy hook) switched to wnkernels' one;
  `remove_weight_norm(model)` folds any of them into a plain weight.
* `WeightNormLinear` / `WeightNormConv1d` / `WeightNormConv2d`: layers that
  never form w (``y = op(x, v) * scale + b``, fused backward);
  `GroupedWeightNorm(model)`: every weight of a model in one grouped forward
  and one grouped backward per step; `data_dependent_init(model, batch)`.

Importing this module imports torch; ``import wnkernels`` alone does not.
"""

from __future__ import annotations

from typing import Tuple

from torch import Tensor

from ._convert import convert, remove_weight_norm
from ._grouped import GroupedWeightNorm, grouped_weight_norm
from ._init import InitResult, data_dependent_init
from ._layers import WeightNormConv1d, WeightNormConv2d, WeightNormLinear, layers_from_model
from . import _ops
from ._ops import normalize_dims, weight_norm_backward_op
from ._parametrize import WeightNorm, weight_norm

__all__ = ["weight_norm", "WeightNorm", "convert", "remove_weight_norm",
           "weight_norm_fn", "row_scale_fn", "weight_norm_backward_fn",
           "WeightNormLinear", "WeightNormConv1d", "WeightNormConv2d", "layers_from_model",
           "GroupedWeightNorm", "grouped_weight_norm", "data_dependent_init", "InitResult"]


def weight_norm_fn(v: Tensor, g: Tensor, dim=0, *, eps: float = 0.0) -> Tuple[Tensor, Tensor]:
    """(w, norms) like `wnkernels.weight_norm`, differentiable (norms is not)."""
    return _ops.weight_norm(v, g, normalize_dims(dim, v.dim()), float(eps), False)


def weight_norm_backward_fn(grad_w: Tensor, v: Tensor, g: Tensor, norms: Tensor,
                            dim=0) -> Tuple[Tensor, Tensor]:
    """(grad_v, grad_g) like `wnkernels.weight_norm_backward`, differentiable."""
    return weight_norm_backward_op(grad_w, v, g, norms, normalize_dims(dim, v.dim()))


def row_scale_fn(v: Tensor, g: Tensor, dim=0, *, eps: float = 0.0) -> Tuple[Tensor, Tensor]:
    """(scale, norms) like `wnkernels.row_scale`, differentiable (norms is not)."""
    return _ops.row_scale(v, g, normalize_dims(dim, v.dim()), float(eps))
