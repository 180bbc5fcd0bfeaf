"""Float64 NumPy reference of weight normalization: the math, once, in code.

This module is the specification the compiled kernels are tested against. It
is written for clarity, not speed: it makes temporaries the size of ``v``.
Inputs of every float dtype (``float16`` and ``ml_dtypes.bfloat16`` included)
are cast exactly to float64 and results come back as float64 arrays, so they
are the "truth" that the kernels' rounding errors are measured from. Where the
platform has an extended ``numpy.longdouble`` (x86: 64-bit mantissa) the
arithmetic runs in it and is rounded to float64 once at the end, so the truth
stays within about half an ulp of float64 even for rows of millions of
elements; elsewhere it runs in float64 (NumPy's pairwise sums).

A *row* is the set of elements of ``v`` that share one kept index; ``dim``
names the kept axes (see `kept_axes`). For row ``k`` with elements ``i``::

    norm_k    = sqrt( sum_i v_i**2 + eps )
    w_i       = v_i * (g_k / norm_k)
    grad_g_k  = sum_i grad_w_i * v_i / norm_k
    grad_v_i  = (g_k / norm_k) * grad_w_i - (g_k * grad_g_k / norm_k**2) * v_i

``grad_v`` and ``grad_g`` are the vector-Jacobian product of ``w(v, g)`` with
``grad_w`` (``eps`` only enters through the given ``norms``). ``g``, ``norms``
and ``grad_g`` hold one value per row, in either of two shapes: the keep-dims
shape (``v.shape`` with 1 on every reduced axis) or the flat shape (the sizes
of the kept axes in increasing axis order; ``()`` or ``(1,)`` when the whole
array is one row). Results come back in ``g``'s shape.

Edge cases follow from the formulas with IEEE arithmetic: a zero row with
``eps=0`` has ``norm = 0`` and ``w = 0 * (g / 0) = NaN``; a zero-length row has
``norm = sqrt(eps)`` and ``grad_g = 0 / sqrt(eps)`` (NaN for ``eps=0``); NaN or
inf in one row only reaches that row's outputs. In extended precision the
intermediate ``sum v**2`` cannot overflow or underflow for float64 inputs; in
plain float64 it overflows beyond ~1.8e308 (``|v|`` around 1e154 and up).
"""

from __future__ import annotations

import operator
from typing import Tuple

import numpy as np

__all__ = ["kept_axes", "g_shapes", "weight_norm", "weight_norm_backward"]

# Working precision: extended where the platform has it (see the module docstring).
_WORK = np.longdouble if np.finfo(np.longdouble).nmant >= 63 else np.float64


def kept_axes(dim, ndim: int) -> Tuple[int, ...]:
    """The kept axes named by ``dim`` as a sorted tuple of non-negative ints.

    ``dim`` is an int (negative counts from the end), ``None`` or ``()``
    (no kept axis: the whole array is one row), or a tuple/list of ints
    (several kept axes, in any order). Raises `numpy.exceptions.AxisError`
    for an axis out of range or named twice.
    """
    if dim is None:
        return ()
    if isinstance(dim, (tuple, list)):
        dims = [operator.index(d) for d in dim]
    else:
        dims = [operator.index(dim)]
    axes = []
    for d in dims:
        if not -ndim <= d < ndim:
            raise np.exceptions.AxisError(d, ndim, "dim")
        d %= ndim
        if d in axes:
            raise np.exceptions.AxisError(f"dim: axis {d} repeated in {dim!r}")
        axes.append(d)
    return tuple(sorted(axes))


def g_shapes(v_shape, dim) -> Tuple[Tuple[int, ...], ...]:
    """The shapes ``g`` may have for ``v_shape`` and ``dim``: keep-dims, flat.

    For the whole-array case the flat shape ``()`` and ``(1,)`` are both
    accepted. The first entry is always the keep-dims shape.
    """
    v_shape = tuple(v_shape)
    kept = kept_axes(dim, len(v_shape))
    keepdims = tuple(n if ax in kept else 1 for ax, n in enumerate(v_shape))
    flat = tuple(v_shape[ax] for ax in kept)
    shapes = [keepdims, flat]
    if not kept:
        shapes.append((1,))
    out = []
    for s in shapes:
        if s not in out:
            out.append(s)
    return tuple(out)


def _as_work(name: str, a) -> np.ndarray:
    """``a`` as a NumPy array of the working precision (exact for every float type)."""
    a = np.asarray(a)
    if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
        raise TypeError(f"{name}: expected a floating-point array, got dtype {a.dtype}")
    return a.astype(np.float64).astype(_WORK)


def _row_sum(x: np.ndarray, reduced) -> np.ndarray:
    """Sum over the ``reduced`` axes, keeping them as size 1.

    The reduced axes are moved last and made contiguous first, so that NumPy
    sums each row pairwise (it sums strided axes one element after another).
    """
    kept = [ax for ax in range(x.ndim) if ax not in reduced]
    rows = np.ascontiguousarray(np.transpose(x, kept + list(reduced)))
    rowlen = int(np.prod([x.shape[ax] for ax in reduced], dtype=np.int64))
    rows = rows.reshape(tuple(x.shape[ax] for ax in kept) + (rowlen,))
    keepdims = tuple(1 if ax in reduced else n for ax, n in enumerate(x.shape))
    return np.sum(rows, axis=-1).reshape(keepdims)


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _rows_view(v_shape, dim, g_shape, name: str):
    """(kept axes, reduced axes, keep-dims shape) after checking ``g_shape``."""
    kept = kept_axes(dim, len(v_shape))
    reduced = tuple(ax for ax in range(len(v_shape)) if ax not in kept)
    allowed = g_shapes(v_shape, dim)
    if tuple(g_shape) not in allowed:
        raise ValueError(
            f"{name} has shape {tuple(g_shape)}; for v of shape {tuple(v_shape)} "
            f"and dim={dim!r} it must be one of {list(allowed)}")
    return kept, reduced, allowed[0]


def weight_norm(v, g, dim=0, eps: float = 0.0):
    """Forward weight norm, the truth in float64: returns ``(w, norms)``.

    ``norms = sqrt(sum over each row of v**2 + eps)`` in ``g``'s shape;
    ``w = v * (g / norms)`` (broadcast over each row) in ``v``'s shape.
    Both are float64 arrays whatever the input dtypes.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    v_ = _as_work("v", v)
    g_ = _as_work("g", g)
    _, reduced, keepdims = _rows_view(v_.shape, dim, g_.shape, "g")
    with np.errstate(all="ignore"):
        norms = np.sqrt(_row_sum(v_ * v_, reduced) + _WORK(eps))
        w = v_ * (g_.reshape(keepdims) / norms)
    return _f64(w), _f64(norms).reshape(g_.shape)


def weight_norm_backward(grad_w, v, g, norms, dim=0):
    """Backward weight norm, the truth in float64: returns ``(grad_v, grad_g)``.

    With ``norms`` used exactly as given (never recomputed from ``v``)::

        grad_g = sum over each row of (grad_w * v) / norms
        grad_v = (g / norms) * grad_w - (g * grad_g / norms**2) * v

    ``grad_g`` has ``g``'s shape, ``grad_v`` has ``v``'s shape; both float64.
    """
    gw_ = _as_work("grad_w", grad_w)
    v_ = _as_work("v", v)
    g_ = _as_work("g", g)
    n_ = _as_work("norms", norms)
    if gw_.shape != v_.shape:
        raise ValueError(
            f"grad_w has shape {gw_.shape}, v has shape {v_.shape}; they must match")
    _, reduced, keepdims = _rows_view(v_.shape, dim, g_.shape, "g")
    _rows_view(v_.shape, dim, n_.shape, "norms")
    g_k = g_.reshape(keepdims)
    n_k = n_.reshape(keepdims)
    with np.errstate(all="ignore"):
        grad_g = _row_sum(gw_ * v_, reduced) / n_k
        grad_v = (g_k / n_k) * gw_ - (g_k * grad_g / (n_k * n_k)) * v_
    return _f64(grad_v), _f64(grad_g).reshape(g_.shape)
