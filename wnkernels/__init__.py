"""wnkernels: fused Weight Normalization kernels.

    w = g * v / ||v||        (one norm per kept index, see CONTRACT.md)

``weight_norm`` / ``weight_norm_backward`` run C/OpenMP kernels on CPU arrays
(NumPy, torch) and Numba CUDA kernels on GPU arrays (torch, CuPy, numba, any
``__cuda_array_interface__`` / DLPack array), in place on the caller's memory.
The float64 NumPy reference of the math is ``wnkernels.reference``.
"""

from ._frontend import (empty_cache, get_num_threads, set_num_threads,
                        weight_norm, weight_norm_backward)

__version__ = "0.1.0"
__all__ = ["weight_norm", "weight_norm_backward", "set_num_threads",
           "get_num_threads", "empty_cache", "__version__"]
