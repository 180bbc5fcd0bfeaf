"""The GPU kernels, by strategy (numba-cuda).

* `_common`  -- the dtype table (the one place a dtype is added), the item table
  layout, the per-row math (`Env.fwd_scalars` / `Env.bwd_scalars`), reductions;
* `_rows`    -- scalar access, any layout, G lanes (or a block) per row;
* `_regs`    -- contiguous rows held in registers, 16-byte vectors;
* `_tickets` -- ticketed chunks of long rows: ``stream`` (vectors), ``chunks`` (scalar);
* `_cols`    -- ticketed column tiles when the kept axis is the contiguous one;
* `_table`   -- the kernel that runs a table of items, each with its strategy.

Device helpers are ``inline="always"`` so that ``compile_ptx`` works without a GPU.
"""

from ._common import (DTYPES, TABLE, FORWARD, BACKWARD, ROW_SCALE, ROLES, LAYOUT, Fields,
                      storage_dtype, acc_dtype, norm_dtype, compute_dtype, vec_width)
from ._table import CODES, CODE, INDEPENDENT, TICKETED, make_kernel, signature, kernel_name

__all__ = ["DTYPES", "TABLE", "FORWARD", "BACKWARD", "ROW_SCALE", "ROLES", "LAYOUT",
           "Fields", "storage_dtype", "acc_dtype", "norm_dtype", "compute_dtype", "vec_width",
           "CODES", "CODE", "INDEPENDENT", "TICKETED", "make_kernel", "signature",
           "kernel_name"]
