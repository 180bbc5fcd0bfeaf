"""The one place that imports numba-cuda (lazily, from `wnkernels.cuda`).

numba-cuda 0.30.4 refers to ``numpy.row_stack``, which NumPy 2.5 removed: alias it
to ``numpy.vstack`` (the same function) before numba.cuda is imported.
"""

import os

import numpy

if not hasattr(numpy, "row_stack"):
    numpy.row_stack = numpy.vstack

from numba import cuda  # noqa: E402  (numba-cuda's target, via its redirector)
from numba.cuda import types  # noqa: E402,F401

try:
    from numba.cuda.core import config as _config
    SIM = bool(_config.ENABLE_CUDASIM)
except ImportError:  # pragma: no cover - older layouts
    SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

__all__ = ["cuda", "types", "SIM"]
