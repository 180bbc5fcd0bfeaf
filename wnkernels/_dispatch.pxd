# The executable interface between the dispatcher and the backends.
from libc.stdint cimport uintptr_t


cdef class Executable:
    # The device-independent plan (wnkernels._planner.Plan / GroupPlan) it runs.
    cdef readonly object plan
    # Run on `args` (the call's array arguments by position, None where absent),
    # whose data pointers the dispatcher read into `ptrs`; `descs`: their
    # ArrayInfo where the dispatcher had to describe them (other array kinds),
    # else None; `eps` validated.  Returns the call's results.
    cdef object run(self, tuple args, list descs, const uintptr_t *ptrs, double eps)
