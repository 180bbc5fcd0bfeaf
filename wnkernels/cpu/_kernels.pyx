# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True, embedsignature=True
"""Thin binding over the C kernels in csrc/ (see csrc/wn.h): the CPU executables.

A compiled plan holds the filled C descriptors (``wn_layout``, and a template
``wn_call`` per call) and how to allocate its outputs.  Running it binds the
current data pointers (read by the dispatcher), checks ``out`` against the
inputs by byte ranges, allocates, and calls ``wn_run`` once with the GIL
released.  Kernels never validate: the planner has.
"""
from libc.stdint cimport int32_t, int64_t, uintptr_t
from libc.stdlib cimport free, malloc
from posix.stdlib cimport posix_memalign
from libc.string cimport memcpy, memset

cimport cython
cimport numpy as cnp
import numpy as np

from wnkernels._dispatch cimport Executable
from wnkernels._dlpack cimport wn_DLDataType, wn_DLManagedTensor
from wnkernels import _planner

cnp.import_array()

cdef extern from "wn.h" nogil:
    enum:
        WN_MAXARR
        WN_FORWARD
        WN_BACKWARD
        WN_ROW_SCALE
    ctypedef struct wn_layout:
        int64_t nrows
        int64_t rowlen
        int32_t kept_ndim
        int32_t red_ndim
        const int64_t *kept_shape
        const int64_t *red_shape
        const int64_t *kept_stride[WN_MAXARR]
        const int64_t *red_stride[WN_MAXARR]
    ctypedef struct wn_call:
        int32_t op
        int32_t dtype
        const wn_layout *layout
        const void *v
        const void *grad_w
        const void *g
        int64_t g_stride
        const void *norms
        int64_t norms_stride
        double eps
        void *w
        void *grad_v
        void *norms_out
        void *grad_g
        void *scale
    int wn_run(const wn_call *calls, int64_t ncalls, int nthreads)
    void wn_roofline_copy(void *dst, const void *src, int64_t nbytes, int nthreads)
    void wn_roofline_triad_f32(float *a, const float *b, float s, const float *c,
                               int64_t n, int nthreads)
    void wn_roofline_triad_f64(double *a, const double *b, double s,
                               const double *c, int64_t n, int nthreads)
    const char *wn_isa()
    int wn_have_openmp()
    int wn_threads_lost_to_fork()
    void wn_set_stream_threshold(int64_t nbytes)
    int64_t wn_get_stream_threshold()
    void wn_set_col_budget(int64_t nbytes)
    int64_t wn_get_col_budget()


# ---------------------------------------------------------------- settings

cdef int _nthreads = 1
cdef object _from_dlpack = None


def set_threads(int n):
    global _nthreads
    _nthreads = n


def get_threads():
    return _nthreads


def set_torch(torch):
    """Make torch outputs through ``torch._C._from_dlpack`` (wnkernels never
    imports torch itself: the CPU backend calls this when it meets a tensor)."""
    global _from_dlpack
    if _from_dlpack is None:
        _from_dlpack = getattr(torch._C, "_from_dlpack", None) or torch.from_dlpack


# ---------------------------------------------------------------- output pool
#
# A fresh allocation above glibc's mmap threshold (128 KiB to start) is
# mmap'ed, and the kernel then pays a page fault and the OS's page zeroing
# for every 4 KiB it writes: measured here that costs more than the weight
# norm itself (64 MiB f32: ~6.5 ms of faults vs ~4.7 ms of kernel; a grouped
# call over 50 layers of 256x256 / 512x256x3: 19 ms with faults, 3 ms
# without).  So outputs of at least POOL_MIN_BYTES take blocks kept per exact
# size.  A block belongs to one `_Block` owner, the base of the NumPy arrays
# (or the DLPack manager of the torch tensor) made over it; every view keeps
# its base alive, so a block returns to its size's free list only when no
# result refers to it any more, and a live result is never handed out twice.
#
# This lives in C rather than Python because of where the time goes: right
# after a kernel has swept a weight larger than L2, whatever runs next runs
# from cold caches, and a Python pool (a lock, a dict, a scan with
# sys.getrefcount, an __array_interface__ dict to align the view) took
# ~20 us there on 256x2304 float32, a quarter of the kernel's own time.  Here
# a get is a hash probe and a pointer pop.
#
# A model repeats layer shapes, so nothing caps a size's count; the free
# blocks are capped in bytes (`_pool_cap`), and returning a block over the cap
# first frees the free blocks of the least recently used other sizes.  All of
# the pool is touched with the GIL held (a block returns from its owner's
# dealloc; torch's DLPack deleter takes the GIL first), so it has no lock.

cdef Py_ssize_t POOL_MIN_BYTES = 128 << 10
cdef Py_ssize_t _pool_cap = 1 << 30         # bytes of free blocks kept at most
cdef Py_ssize_t _pool_free_bytes = 0
cdef Py_ssize_t _pool_free_blocks = 0
cdef unsigned long long _pool_tick = 0

cdef enum:
    _NCLASS = 1024                          # size classes (a power of two)

cdef struct _Class:
    Py_ssize_t nbytes                       # 0: an unused slot
    void *head                              # free blocks, linked through their first word
    Py_ssize_t count
    unsigned long long used                 # _pool_tick of its last get or return

cdef _Class _classes[_NCLASS]               # open addressing, linear probing


cdef _Class *_pool_class(Py_ssize_t nbytes) noexcept:
    """nbytes' size class (made if new); NULL once every slot holds another size."""
    cdef size_t h = (<size_t>nbytes * <size_t>0x9E3779B97F4A7C15) >> (64 - 10)
    cdef Py_ssize_t i
    cdef _Class *c
    for i in range(_NCLASS):
        c = &_classes[(h + <size_t>i) & (_NCLASS - 1)]
        if c.nbytes == nbytes:
            return c
        if c.nbytes == 0:
            c.nbytes = nbytes
            return c
    return NULL


cdef void _pool_evict(Py_ssize_t need, _Class *keep) noexcept:
    """Free free blocks of the least recently used sizes other than keep's
    until `need` bytes are gone (or none is left)."""
    global _pool_free_bytes, _pool_free_blocks
    cdef _Class *c
    cdef _Class *old
    cdef Py_ssize_t i
    cdef void *p
    while need > 0:
        old = NULL
        for i in range(_NCLASS):
            c = &_classes[i]
            if c.count and c is not keep and (old is NULL or c.used < old.used):
                old = c
        if old is NULL:
            return
        while old.head != NULL and need > 0:
            p = old.head
            old.head = (<void **>p)[0]
            old.count -= 1
            free(p)
            _pool_free_bytes -= old.nbytes
            _pool_free_blocks -= 1
            need -= old.nbytes


cdef void _pool_give(void *p, Py_ssize_t nbytes) noexcept:
    """A block nobody refers to any more: kept for reuse, or freed."""
    global _pool_tick, _pool_free_bytes, _pool_free_blocks
    cdef _Class *c = _pool_class(nbytes)
    if c is NULL:
        free(p)
        return
    _pool_tick += 1
    c.used = _pool_tick
    if _pool_free_bytes + nbytes > _pool_cap:
        _pool_evict(_pool_free_bytes + nbytes - _pool_cap, c)
        if _pool_free_bytes + nbytes > _pool_cap:
            free(p)
            return
    (<void **>p)[0] = c.head
    c.head = p
    c.count += 1
    _pool_free_bytes += nbytes
    _pool_free_blocks += 1


@cython.final
cdef class _Block:
    """The owner of one pooled output block (see above)."""
    cdef void *data
    cdef Py_ssize_t nbytes

    def __dealloc__(self):
        if self.data != NULL:
            _pool_give(self.data, self.nbytes)


cdef _Block _pool_take(Py_ssize_t nbytes):
    """A block of nbytes (64-byte aligned): a free one of that size, else new."""
    global _pool_tick, _pool_free_bytes, _pool_free_blocks
    cdef _Block b = _Block.__new__(_Block)
    cdef _Class *c = _pool_class(nbytes)
    cdef void *p = NULL
    if c is not NULL:
        _pool_tick += 1
        c.used = _pool_tick
        if c.head != NULL:
            p = c.head
            c.head = (<void **>p)[0]
            c.count -= 1
            _pool_free_bytes -= nbytes
            _pool_free_blocks -= 1
    if p == NULL and posix_memalign(&p, 64, <size_t>nbytes) != 0:
        raise MemoryError()
    b.data = p
    b.nbytes = nbytes
    return b


def pool_clear():
    """Free every free block (live results return theirs when dropped)."""
    global _pool_free_bytes, _pool_free_blocks
    cdef Py_ssize_t i
    cdef void *p
    for i in range(_NCLASS):
        while _classes[i].head != NULL:
            p = _classes[i].head
            _classes[i].head = (<void **>p)[0]
            free(p)
    memset(_classes, 0, sizeof(_classes))
    _pool_free_bytes = 0
    _pool_free_blocks = 0


def pool_info():
    """The pool's state: free bytes and blocks, the cap, the pooled minimum."""
    return {"free_bytes": _pool_free_bytes, "free_blocks": _pool_free_blocks,
            "cap_bytes": _pool_cap, "min_bytes": POOL_MIN_BYTES}


def set_pool_cap(Py_ssize_t nbytes):
    """Set the cap on free bytes kept (returns the previous one)."""
    global _pool_cap
    if nbytes < 0:
        raise ValueError("set_pool_cap: nbytes must be >= 0")
    before = _pool_cap
    _pool_cap = nbytes
    return before


def block_address(a):
    """The address of the pooled block under NumPy output a, or None."""
    base = a.base if isinstance(a, np.ndarray) else None
    return <uintptr_t>(<_Block>base).data if isinstance(base, _Block) else None


# ---------------------------------------------------------------- descriptors

_STORAGE = {"float16": np.float16, "bfloat16": np.uint16,
            "float32": np.float32, "float64": np.float64}


cdef int64_t *_fill_layout(wn_layout *L, layout, int narr) except NULL:
    """Point L into a new int64 block holding the layout's shapes and strides."""
    cdef int k = len(layout.kept_shape), r = len(layout.red_shape), a, d
    cdef int64_t *s = <int64_t *>malloc(sizeof(int64_t) * (k + r) * (1 + narr) + 8)
    if s == NULL:
        raise MemoryError()
    L.nrows = layout.nrows
    L.rowlen = layout.rowlen
    L.kept_ndim = k
    L.red_ndim = r
    for d in range(k):
        s[d] = layout.kept_shape[d]
    for d in range(r):
        s[k + d] = layout.red_shape[d]
    L.kept_shape = s
    L.red_shape = s + k
    for a in range(WN_MAXARR):
        L.kept_stride[a] = NULL
        L.red_stride[a] = NULL
    for a in range(narr):
        for d in range(k):
            s[(k + r) * (1 + a) + d] = layout.kept_strides[a][d]
        for d in range(r):
            s[(k + r) * (1 + a) + k + d] = layout.red_strides[a][d]
        L.kept_stride[a] = s + (k + r) * (1 + a)
        L.red_stride[a] = s + (k + r) * (1 + a) + k
    return s


# ---- outputs
#
# NumPy outputs are made by one PyArray_NewFromDescr with their planned
# strides.  torch outputs are DLPack tensors of memory allocated here (one
# block: the DLManagedTensor, its shape and strides, then the data, 64-byte
# aligned), handed to torch._C._from_dlpack -- about half the cost of
# torch.from_numpy of a NumPy array, and bfloat16 needs no view.  Outputs of
# at least POOL_MIN_BYTES take a pooled block (the DLPack manager keeps the
# block's owner alive).

from cpython.pycapsule cimport (PyCapsule_GetPointer, PyCapsule_IsValid,
                                PyCapsule_New)
from cpython.ref cimport PyObject, Py_DECREF, Py_INCREF as _incref

cdef extern from "numpy/arrayobject.h":
    ctypedef struct PyTypeObject:
        pass
    ctypedef struct PyArray_Descr:
        pass
    # (steals a reference to descr)
    object _NewFromDescr "PyArray_NewFromDescr" (
        PyTypeObject *subtype, PyArray_Descr *descr, int nd, cnp.npy_intp *dims,
        cnp.npy_intp *strides, void *data, int flags, PyObject *obj)


cdef inline object PyArray_NewFromDescr(object descr, int nd, cnp.npy_intp *dims,
                                        cnp.npy_intp *strides, void *data):
    _incref(descr)
    return _NewFromDescr(<PyTypeObject *>np.ndarray, <PyArray_Descr *>descr, nd, dims,
                         strides, data, cnp.NPY_ARRAY_WRITEABLE, NULL)


cdef void _dl_free(wn_DLManagedTensor *m) noexcept nogil:
    """DLPack deleter of an output: its pooled block's owner (if any) is
    dropped under the GIL (torch may free a tensor on any thread)."""
    if m.manager_ctx != NULL:
        with gil:
            Py_DECREF(<object>m.manager_ctx)
    free(m)


cdef void _capsule_free(object cap) noexcept:
    """An unconsumed capsule frees its tensor (a consumer renames it)."""
    if PyCapsule_IsValid(cap, "dltensor"):
        m = <wn_DLManagedTensor *>PyCapsule_GetPointer(cap, "dltensor")
        m.deleter(m)


_DL_DTYPE = {"float16": (2, 16), "bfloat16": (4, 16), "float32": (2, 32),
             "float64": (2, 64)}


cdef class _Out:
    """How one output is allocated: shape, planned strides, dtype; as a NumPy
    array (``descr``: its dtype, bfloat16 as ml_dtypes' when the call's arrays
    are NumPy) or a torch tensor."""
    cdef cnp.npy_intp dims[64]
    cdef cnp.npy_intp bstrides[64]
    cdef int64_t dl_shape[64]
    cdef int64_t dl_strides[64]
    cdef int nd
    cdef bint torch
    cdef object descr
    cdef wn_DLDataType dl_dtype
    cdef Py_ssize_t nbytes, itemsize, lo

    def __init__(self, spec, bint torch, bf16):
        self.nd = len(spec.shape)
        self.torch = torch
        storage = np.dtype(_STORAGE[spec.dtype])
        self.descr = bf16 if spec.dtype == "bfloat16" and not torch else storage
        self.itemsize = storage.itemsize
        self.nbytes = self.itemsize
        self.lo = 0
        for i in range(self.nd):
            n, st = spec.shape[i], spec.strides[i]
            self.dims[i] = n
            self.bstrides[i] = st * self.itemsize
            self.dl_shape[i] = n
            self.dl_strides[i] = st
            self.nbytes *= n
        code, bits = _DL_DTYPE[spec.dtype]
        self.dl_dtype.code = code
        self.dl_dtype.bits = bits
        self.dl_dtype.lanes = 1

    cdef object alloc(self, char **data):
        """A new output (the caller's kind); its data pointer into data[0]."""
        cdef wn_DLManagedTensor *m
        cdef size_t head
        cdef char *p
        cdef _Block buf = None
        if self.nbytes >= POOL_MIN_BYTES:
            buf = _pool_take(self.nbytes)
            p = <char *>buf.data
            if not self.torch:
                a = PyArray_NewFromDescr(self.descr, self.nd, self.dims, self.bstrides, p)
                cnp.set_array_base(<cnp.ndarray>a, buf)
                data[0] = p
                return a
        elif not self.torch:
            a = PyArray_NewFromDescr(self.descr, self.nd, self.dims, self.bstrides, NULL)
            data[0] = <char *>cnp.PyArray_DATA(<cnp.ndarray>a)
            return a
        # torch: a DLPack tensor over our memory (or the pool's buffer)
        head = (sizeof(wn_DLManagedTensor) + 2 * sizeof(int64_t) * self.nd + 63) & ~(<size_t>63)
        m = <wn_DLManagedTensor *>malloc(head + (0 if buf is not None else self.nbytes) + 64)
        if m == NULL:
            raise MemoryError()
        if buf is None:
            p = <char *>m + head
            p += (-(<uintptr_t>p)) & 63
        m.dl_tensor.data = p
        m.dl_tensor.device.device_type = 1          # kDLCPU
        m.dl_tensor.device.device_id = 0
        m.dl_tensor.ndim = self.nd
        m.dl_tensor.dtype = self.dl_dtype
        m.dl_tensor.shape = <int64_t *>(<char *>m + sizeof(wn_DLManagedTensor))
        m.dl_tensor.strides = m.dl_tensor.shape + self.nd
        memcpy(m.dl_tensor.shape, self.dl_shape, sizeof(int64_t) * self.nd)
        memcpy(m.dl_tensor.strides, self.dl_strides, sizeof(int64_t) * self.nd)
        m.dl_tensor.byte_offset = 0
        m.manager_ctx = NULL
        if buf is not None:
            _incref(buf)
            m.manager_ctx = <void *>buf
        m.deleter = _dl_free
        cap = PyCapsule_New(m, "dltensor", _capsule_free)
        data[0] = p
        return _from_dlpack(cap)


cdef inline bint _disjoint(uintptr_t a, Py_ssize_t a_lo, Py_ssize_t a_hi,
                           uintptr_t b, Py_ssize_t b_lo, Py_ssize_t b_hi):
    return a_hi <= a_lo or b_hi <= b_lo or a + a_hi <= b + b_lo or b + b_hi <= a + a_lo


cdef class _Compiled:
    """The C side of one call: its layout and template wn_call, argument
    positions, byte offsets of (row 0, element 0), and its outputs."""
    cdef wn_layout L
    cdef int64_t *store
    cdef wn_call tmpl
    cdef int op
    cdef Py_ssize_t off0, off1, off2        # layout arrays 0..2, bytes
    cdef _Out out0, out1                    # allocated outputs (out0 None: out=)
    cdef bint prepped
    cdef list prep                          # positions to prepare
    # out=: byte spans of out, v and g around their pointers; out may be v
    cdef bint has_out, alias_ok
    cdef Py_ssize_t o_lo, o_hi, v_lo, v_hi, g_lo, g_hi

    def __init__(self, plan, bint torch, bf16):
        lay = plan.layout
        narr = 3 if plan.op == _planner.BACKWARD else 2
        self.store = _fill_layout(&self.L, lay, narr)
        memset(&self.tmpl, 0, sizeof(wn_call))
        self.op = plan.op
        self.tmpl.op = plan.op
        self.tmpl.dtype = {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3}[plan.dtype]
        self.tmpl.layout = &self.L
        self.tmpl.g_stride = plan.g_stride
        self.tmpl.norms_stride = plan.n_stride
        isz = np.dtype(_STORAGE[plan.dtype]).itemsize
        offs = lay.offsets
        self.off0 = offs[0] * isz
        self.off1 = offs[1] * isz
        self.off2 = offs[2] * isz if narr == 3 else 0
        outs = [o for o in plan.outputs]
        self.has_out = outs[0].arg is not None
        self.out0 = None if self.has_out else _Out(outs[0], torch, bf16)
        self.out1 = _Out(outs[1], torch, bf16)
        self.prep = [k for k, a in enumerate(plan.args) if a is not None and a.prep]
        self.prepped = bool(self.prep)
        if self.has_out:
            self.o_lo, self.o_hi = plan.args[2].span
            self.v_lo, self.v_hi = plan.args[0].span
            self.g_lo, self.g_hi = plan.args[1].span
            self.alias_ok = plan.overlaps[0][2]

    def __dealloc__(self):
        free(self.store)

    cdef void bind(self, wn_call *c, const uintptr_t *p, char *d0, char *d1) noexcept:
        """Fill c from the template, the arguments' pointers p and the outputs'
        data d0, d1."""
        memcpy(c, &self.tmpl, sizeof(wn_call))
        if self.op == WN_FORWARD:
            c.v = <const void *>(p[0] + self.off0)
            c.g = <const void *>p[1]
            c.w = <void *>((p[2] if self.has_out else <uintptr_t>d0) + self.off1)
            c.norms_out = d1
        elif self.op == WN_BACKWARD:
            c.grad_w = <const void *>(p[0] + self.off1)
            c.v = <const void *>(p[1] + self.off0)
            c.g = <const void *>p[2]
            c.norms = <const void *>p[3]
            c.grad_v = <void *>(<uintptr_t>d0 + self.off2)
            c.grad_g = d1
        else:
            c.v = <const void *>(p[0] + self.off0)
            c.g = <const void *>p[1]
            c.scale = d0
            c.norms_out = d1

    cdef int check(self, tuple args, const uintptr_t *p, object plan) except -1:
        """Per-call memory checks (out=): out is v itself or clear of v, and
        clear of g; byte ranges first, the exact test when they touch."""
        if not self.has_out:
            return 0
        if (p[2] == p[0] and self.alias_ok) or \
                _disjoint(p[2], self.o_lo, self.o_hi, p[0], self.v_lo, self.v_hi):
            if _disjoint(p[2], self.o_lo, self.o_hi, p[1], self.g_lo, self.g_hi):
                return 0
        _planner.check_overlaps(plan, args)
        return 0


cdef class CpuCall(Executable):
    """One compiled call (weight_norm, weight_norm_backward or row_scale)."""
    cdef _Compiled k
    cdef object prepare

    def __init__(self, plan, bint torch, bf16, prepare):
        self.plan = plan
        self.k = _Compiled(plan, torch, bf16)
        self.prepare = prepare

    cdef object run(self, tuple args, list descs, const uintptr_t *ptrs, double eps):
        cdef uintptr_t p[4]
        cdef wn_call c
        cdef _Compiled k = self.k
        cdef Py_ssize_t i, n = len(args)
        cdef int rc
        for i in range(n):
            p[i] = ptrs[i]
        keep = None
        if k.prepped:
            keep = []
            for i in k.prep:
                y, addr = self.prepare(self.plan, args, i)
                keep.append(y)
                p[i] = addr
        k.check(args, p, self.plan)
        cdef char *d0 = NULL
        cdef char *d1 = NULL
        o0 = k.out0.alloc(&d0) if k.out0 is not None else args[2]
        o1 = k.out1.alloc(&d1)
        k.bind(&c, p, d0, d1)
        c.eps = eps
        if k.L.nrows:
            with nogil:
                rc = wn_run(&c, 1, _nthreads)
            if rc:
                raise MemoryError("wnkernels: out of memory for kernel scratch")
        return o0, o1


cdef class CpuGroup(Executable):
    """A compiled grouped call: one wn_run over every item's call."""
    cdef list items            # _Compiled per item
    cdef Py_ssize_t n, nargs
    cdef object prepare
    cdef bint prepped

    def __init__(self, plan, bint torch, bf16, prepare):
        self.plan = plan
        self.items = [_Compiled(p, torch, bf16) for p in plan.items]
        self.n = len(self.items)
        self.nargs = 4 if plan.op == _planner.BACKWARD else 2
        self.prepare = prepare
        self.prepped = any((<_Compiled>k).prepped for k in self.items)

    cdef object run(self, tuple args, list descs, const uintptr_t *ptrs, double eps):
        cdef Py_ssize_t i, j, na = self.nargs, n = self.n
        cdef _Compiled k
        cdef uintptr_t *pp = NULL
        cdef wn_call *calls
        cdef int rc
        keep = None
        if self.prepped:          # copies first, before anything is allocated
            keep = []
            pp = <uintptr_t *>malloc(sizeof(uintptr_t) * (n * na + 1))
            if pp == NULL:
                raise MemoryError()
            memcpy(pp, ptrs, sizeof(uintptr_t) * n * na)
            try:
                for i in range(n):
                    k = <_Compiled>self.items[i]
                    for j in k.prep:
                        y, addr = self.prepare(self.plan.items[i], args[i * na:(i + 1) * na], j)
                        keep.append(y)
                        pp[i * na + j] = addr
            except BaseException:
                free(pp)
                raise
            ptrs = pp
        calls = <wn_call *>malloc(sizeof(wn_call) * (n + 1))
        if calls == NULL:
            free(pp)
            raise MemoryError()
        cdef char *d0
        cdef char *d1
        try:
            outs = []
            for i in range(n):
                k = <_Compiled>self.items[i]
                o0 = k.out0.alloc(&d0)
                o1 = k.out1.alloc(&d1)
                outs.append((o0, o1))
                k.bind(&calls[i], ptrs + i * na, d0, d1)
                calls[i].eps = eps
            with nogil:
                rc = wn_run(calls, n, _nthreads)
            if rc:
                raise MemoryError("wnkernels: out of memory for kernel scratch")
        finally:
            free(calls)
            free(pp)
        return outs


# ---------------------------------------------------------------- rooflines, facts

def roofline_copy(dst, src, int nthreads=0):
    """dst[...] = src with all threads (both contiguous, same nbytes)."""
    cdef const unsigned char[::1] s = src.reshape(-1).view("u1")
    cdef unsigned char[::1] d = dst.reshape(-1).view("u1")
    if d.shape[0] != s.shape[0]:
        raise ValueError("roofline_copy: dst and src differ in size")
    if nthreads <= 0:
        nthreads = _nthreads
    with nogil:
        wn_roofline_copy(&d[0] if d.shape[0] else NULL,
                         &s[0] if s.shape[0] else NULL, d.shape[0], nthreads)


def roofline_triad(a, b, double s, c, int nthreads=0):
    """a = b * s + c with all threads (contiguous float32 or float64)."""
    cdef float[::1] a32, b32, c32
    cdef double[::1] a64, b64, c64
    if nthreads <= 0:
        nthreads = _nthreads
    if not (a.size == b.size == c.size):
        raise ValueError("roofline_triad: arrays differ in size")
    if a.dtype.name == "float32":
        a32 = a.reshape(-1); b32 = b.reshape(-1); c32 = c.reshape(-1)
        if a32.shape[0]:
            with nogil:
                wn_roofline_triad_f32(&a32[0], &b32[0], <float>s, &c32[0],
                                      a32.shape[0], nthreads)
    else:
        a64 = a.reshape(-1); b64 = b.reshape(-1); c64 = c.reshape(-1)
        if a64.shape[0]:
            with nogil:
                wn_roofline_triad_f64(&a64[0], &b64[0], s, &c64[0],
                                      a64.shape[0], nthreads)


def isa():
    """The instruction-set variant the kernels run: avx512, avx2 or baseline."""
    return wn_isa().decode()


def have_openmp():
    return bool(wn_have_openmp())


def threads_lost_to_fork():
    """True in a process forked after the kernels had started OpenMP threads:
    there every kernel runs on the calling thread (libgomp's thread pool does
    not survive fork), with the same results."""
    return bool(wn_threads_lost_to_fork())


def set_stream_threshold(int64_t nbytes):
    wn_set_stream_threshold(nbytes)


def get_stream_threshold():
    return wn_get_stream_threshold()


def set_col_budget(int64_t nbytes):
    wn_set_col_budget(nbytes)


def get_col_budget():
    return wn_get_col_budget()
