"""Array adapters: the caller's arrays in, a uniform `ArrayInfo` out.

Every backend receives `ArrayInfo` records (data pointer, shape, element
strides, dtype name, device) so that kernels run on the caller's memory in place.
CPU kinds are handled here; GPU kinds by `wnkernels.cuda`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

__all__ = ["ArrayInfo", "FLOAT_DTYPES"]

# dtype names the kernels support; "norm dtype" is what norms come back as.
FLOAT_DTYPES = {
    "float16": "float32",
    "bfloat16": "float32",
    "float32": "float32",
    "float64": "float64",
}


@dataclass(eq=False)
class ArrayInfo:
    obj: Any                  # the caller's object (kept alive by this record)
    kind: str                 # "numpy", "torch", "torch-cuda", "cupy", "numba", "cai", "dlpack"
    device: Tuple[str, int]   # ("cpu", 0) or ("cuda", ordinal)
    shape: Tuple[int, ...]
    strides: Tuple[int, ...]  # in elements, signed
    dtype: str                # "float16" / "bfloat16" / "float32" / "float64", or another name
    itemsize: int
    ptr: int                  # address of element (0, ..., 0)
    readonly: bool = False
    base: Any = None          # backend-private view (e.g. a NumPy view of a torch tensor)

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def extent(self) -> Tuple[int, int]:
        """[lo, hi) byte range touched by the array (empty arrays: (ptr, ptr))."""
        if self.size == 0:
            return self.ptr, self.ptr
        lo = hi = self.ptr
        for n, s in zip(self.shape, self.strides):
            step = (n - 1) * s * self.itemsize
            if step < 0:
                lo += step
            else:
                hi += step
        return lo, hi + self.itemsize
