"""wnkernels: fused Weight Normalization kernels.

    w = g * v / ||v||        (one norm per kept index: see the README's contract)

``weight_norm`` / ``weight_norm_backward`` / ``row_scale`` and their grouped
forms run C/OpenMP kernels on CPU arrays (NumPy, torch) and Numba CUDA kernels
on GPU arrays (torch, CuPy, numba, any ``__cuda_array_interface__`` / DLPack
array), in place on the caller's memory.  The float64 NumPy reference of the
math is ``wnkernels.reference`` (importable without the compiled extension).
"""

__version__ = "0.2.0"
__all__ = ["weight_norm", "weight_norm_backward", "row_scale", "weight_norm_many",
           "weight_norm_backward_many", "set_num_threads", "get_num_threads",
           "empty_cache", "__version__"]

try:
    from ._dispatch import (row_scale, weight_norm, weight_norm_backward,
                            weight_norm_backward_many, weight_norm_many)
    from .cpu import get_num_threads, set_num_threads
except ImportError as _e:  # pragma: no cover - a source tree without a build
    _missing = _e

    def __getattr__(name):
        if name in __all__:
            raise ImportError(
                "wnkernels' compiled extensions are missing: install the package "
                "(pip install .) or build them in place (python setup.py build_ext "
                "--inplace); wnkernels.reference works without them. If you ran "
                "Python from the source directory, the source tree shadows the "
                f"installed package. ({_missing})") from _missing
        raise AttributeError(name)


def empty_cache() -> None:
    """Release what wnkernels keeps between calls: the CPU output buffers kept
    for reuse, and the GPU workspaces if the GPU path has run."""
    import sys
    from . import cpu
    cpu.empty_cache()
    cuda = sys.modules.get("wnkernels.cuda")
    if cuda is not None:
        cuda.empty_cache()
