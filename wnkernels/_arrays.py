"""Array descriptions: the caller's arrays in, a uniform `ArrayInfo` out.

Every backend describes the arrays it claims as `ArrayInfo` records (data
pointer, shape, element strides, dtype name, device), so that planning is the
same for all of them and kernels run on the caller's memory in place.  CPU
kinds are described by `wnkernels.cpu`, GPU kinds by `wnkernels.cuda`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

__all__ = ["ArrayInfo"]


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
    aligned: bool = True      # the data pointer is a multiple of the itemsize
    native: bool = True       # native byte order (NumPy can hand over others)
    resolve: bool = False     # a torch tensor with the negative bit (read through a copy)
    stream: Any = None        # GPU: the stream the array's producer names (CUDA array
                              # interface / numba), if any

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def key(self):
        """Everything planning reads from this array, without its address (the
        plan cache's key part for array kinds the dispatcher has no fast key
        for): a plan made for one array serves any array with the same key."""
        return (self.kind, self.device, self.dtype, self.shape, self.strides,
                self.ptr & 15, self.readonly, self.aligned, self.native, self.resolve)

    def extent(self) -> Tuple[int, int]:
        """[lo, hi) byte range touched by the array (empty arrays: (ptr, ptr))."""
        lo, hi = self.span()
        return self.ptr + lo, self.ptr + hi

    def span(self) -> Tuple[int, int]:
        """[lo, hi) byte range touched, relative to the data pointer."""
        if self.size == 0:
            return 0, 0
        lo = hi = 0
        for n, s in zip(self.shape, self.strides):
            step = (n - 1) * s * self.itemsize
            if step < 0:
                lo += step
            else:
                hi += step
        return lo, hi + self.itemsize
