"""The element types wnkernels computes in, for the front end (one table).

Each backend has its own table beside its kernels (``csrc/wn.c``: the C entry
points per dtype; ``wnkernels/cuda/kernels/_common.py``: storage, accumulation
and compute types).  Adding a dtype means a row here and a row in each of those.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["DType", "DTYPES", "NAMES"]


class DType(NamedTuple):
    name: str          # as NumPy / torch spell it
    itemsize: int
    norm: str          # dtype of the norms a forward returns (float32 for half types)
    code: int          # csrc/wn.h enum wn_dtype


DTYPES = {d.name: d for d in (
    DType("float16", 2, "float32", 0),
    DType("bfloat16", 2, "float32", 1),
    DType("float32", 4, "float32", 2),
    DType("float64", 8, "float64", 3),
)}
NAMES = "float16, bfloat16, float32 or float64"
