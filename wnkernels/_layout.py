"""Shape/stride normalization shared by every backend.

Any weight-norm call is described as ``nrows`` rows (one per kept index) of
``rowlen`` reduced elements each.  `make_layout` turns the caller's ``dim`` and
the arrays' shapes and strides into that description without copying data:

* kept axes are taken in increasing axis order; row ``r`` is the C-order flat
  index over them, which is also the order of ``g``, ``norms`` and ``grad_g``;
* reduced axes are re-ordered by decreasing ``|stride|`` of the first array
  (so the innermost reduced axis is the fastest in memory), flipped where that
  array's stride is negative, and adjacent axes that are contiguous relative to
  each other in *every* array are merged;
* size-1 axes are dropped; a zero-size reduced axis is kept as ``(0,)``.

Strides are in elements (not bytes) and signed; ``offsets[a]`` is the element
offset of row 0 / element 0 of array ``a`` from its data pointer (non-zero only
where a reduced axis was flipped).  Backends consume `Layout` as is: kernels
never look at the original shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

__all__ = ["Layout", "normalize_dim", "make_layout"]

Shape = Tuple[int, ...]


@dataclass(frozen=True)
class Layout:
    nrows: int                      # number of rows (product of kept sizes)
    rowlen: int                     # reduced elements per row
    kept_shape: Shape               # coalesced kept dims, outer -> inner (C order of rows)
    red_shape: Shape                # coalesced reduced dims, outer -> inner
    kept_strides: Tuple[Shape, ...]  # per array: element strides over kept_shape
    red_strides: Tuple[Shape, ...]   # per array: element strides over red_shape
    offsets: Tuple[int, ...]         # per array: element offset of (row 0, element 0)


def normalize_dim(dim, ndim: int) -> Tuple[int, ...]:
    """Kept axes as a sorted tuple of non-negative ints.

    ``None`` or ``()`` keeps no axis (the whole array is one row).  Raises
    `numpy.exceptions.AxisError` for an axis out of range or repeated, and
    TypeError for a ``dim`` that is not an int, a tuple/list of ints or None.
    """
    if dim is None:
        return ()
    if isinstance(dim, (bool, np.bool_)):
        raise TypeError(f"dim must be an int, a tuple of ints or None, got {dim!r}")
    if isinstance(dim, (int, np.integer)):
        dims = (int(dim),)
    elif isinstance(dim, (tuple, list)):
        dims = tuple(dim)
        for d in dims:
            if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
                raise TypeError(
                    f"dim must be an int, a tuple of ints or None, got {dim!r}")
        dims = tuple(int(d) for d in dims)
    else:
        raise TypeError(f"dim must be an int, a tuple of ints or None, got {dim!r}")
    out = []
    for d in dims:
        if not -ndim <= d < ndim:
            raise np.exceptions.AxisError(d, ndim, "dim")
        d %= ndim
        if d in out:
            raise np.exceptions.AxisError(f"dim: repeated axis {d} in {dim!r}")
        out.append(d)
    return tuple(sorted(out))


def _coalesce(shape, strides, sizes_only_order):
    """Merge adjacent dims (in the given order) that are contiguous in every array."""
    out_shape: list = []
    out_strides: list = [[] for _ in strides]
    for ax in sizes_only_order:
        n = shape[ax]
        if n == 1:
            continue
        if out_shape and all(
                st[-1] == s[ax] * n for st, s in zip(out_strides, strides)):
            out_shape[-1] *= n
            for st, s in zip(out_strides, strides):
                st[-1] = s[ax]
            continue
        out_shape.append(n)
        for st, s in zip(out_strides, strides):
            st.append(s[ax])
    return tuple(out_shape), tuple(tuple(st) for st in out_strides)


def make_layout(shape: Sequence[int], kept: Sequence[int],
                strides: Sequence[Sequence[int]]) -> Layout:
    """Describe arrays of one `shape` (element `strides` each) as rows x elements.

    ``strides[0]`` (the primary input, v) decides the reduced-axis order.
    """
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    strides = [list(map(int, s)) for s in strides]
    kept_set = set(kept)
    nrows = 1
    for ax in kept:
        nrows *= shape[ax]
    reduced = [ax for ax in range(ndim) if ax not in kept_set]
    rowlen = 1
    for ax in reduced:
        rowlen *= shape[ax]

    offsets = [0] * len(strides)
    if nrows and rowlen:
        # Flip reduced axes that run backwards in v: the sum does not care
        # about order, and forward strides vectorize.
        for ax in reduced:
            if strides[0][ax] < 0 and shape[ax] > 1:
                for a, s in enumerate(strides):
                    offsets[a] += (shape[ax] - 1) * s[ax]
                    s[ax] = -s[ax]
    # Stable sort keeps equal-|stride| axes in axis order (deterministic).
    red_order = sorted(reduced, key=lambda ax: -abs(strides[0][ax]))
    kept_shape, kept_strides = _coalesce(shape, strides, sorted(kept))
    red_shape, red_strides = _coalesce(shape, strides, red_order)
    if rowlen == 0:
        red_shape, red_strides = (0,), tuple((0,) for _ in strides)
    if nrows == 0:
        kept_shape, kept_strides = (0,), tuple((0,) for _ in strides)
    return Layout(nrows, rowlen, kept_shape, red_shape, kept_strides,
                  red_strides, tuple(offsets))
