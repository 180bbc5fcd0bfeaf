# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True, embedsignature=True
"""Thin binding over the C kernels in csrc/ (see csrc/wn.h).

Arguments arrive validated from wnkernels._frontend: raw data addresses, a
`Layout`, and dtype codes.  The GIL is released while a kernel runs.
"""
from libc.stdint cimport int64_t, uintptr_t
from libc.math cimport isfinite

cimport numpy as cnp
import numpy as np

cnp.import_array()

cdef extern from "wn.h" nogil:
    enum:
        WN_MAXDIM
        WN_MAXARR
    ctypedef struct wn_layout:
        int64_t nrows
        int64_t rowlen
        int kept_ndim
        int red_ndim
        int64_t kept_shape[WN_MAXDIM]
        int64_t red_shape[WN_MAXDIM]
        int64_t kept_stride[WN_MAXARR][WN_MAXDIM]
        int64_t red_stride[WN_MAXARR][WN_MAXDIM]
    void wn_forward(int dtype, const wn_layout *L, const void *v, const void *g,
                    int64_t g_stride, void *w, void *norms, double eps, int nthreads)
    void wn_backward(int dtype, const wn_layout *L, const void *grad_w,
                     const void *v, const void *g, int64_t g_stride,
                     const void *norms, int64_t norms_stride, void *grad_v,
                     void *grad_g, int nthreads)
    void wn_roofline_copy(void *dst, const void *src, int64_t nbytes, int nthreads)
    void wn_roofline_triad_f32(float *a, const float *b, float s, const float *c,
                               int64_t n, int nthreads)
    void wn_roofline_triad_f64(double *a, const double *b, double s,
                               const double *c, int64_t n, int nthreads)
    const char *wn_isa()
    int wn_have_openmp()
    void wn_set_stream_threshold(int64_t nbytes)
    int64_t wn_get_stream_threshold()
    void wn_set_col_budget(int64_t nbytes)
    int64_t wn_get_col_budget()

# dtype name -> kernel code (csrc/wn.h enum wn_dtype)
DTYPE_CODES = {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3}

cdef int _fill(wn_layout *L, layout, int narr) except -1:
    cdef int d, a
    kept = layout.kept_shape
    red = layout.red_shape
    if len(kept) > WN_MAXDIM or len(red) > WN_MAXDIM or narr > WN_MAXARR:
        raise ValueError("too many dimensions")
    L.nrows = layout.nrows
    L.rowlen = layout.rowlen
    L.kept_ndim = len(kept)
    L.red_ndim = len(red)
    for d in range(L.kept_ndim):
        L.kept_shape[d] = kept[d]
    for d in range(L.red_ndim):
        L.red_shape[d] = red[d]
    for a in range(narr):
        ks = layout.kept_strides[a]
        rs = layout.red_strides[a]
        for d in range(L.kept_ndim):
            L.kept_stride[a][d] = ks[d]
        for d in range(L.red_ndim):
            L.red_stride[a][d] = rs[d]
    return 0


def forward(int dtype, layout, uintptr_t v, uintptr_t g, int64_t g_stride,
            uintptr_t w, uintptr_t norms, double eps, int nthreads):
    """w = v * (g / norm), norm = sqrt(sum v^2 + eps); layout arrays [v, w]."""
    cdef wn_layout L
    _fill(&L, layout, 2)
    with nogil:
        wn_forward(dtype, &L, <const void *>v, <const void *>g, g_stride,
                   <void *>w, <void *>norms, eps, nthreads)


def backward(int dtype, layout, uintptr_t grad_w, uintptr_t v, uintptr_t g,
             int64_t g_stride, uintptr_t norms, int64_t norms_stride,
             uintptr_t grad_v, uintptr_t grad_g, int nthreads):
    """Backward of `forward`; layout arrays [v, grad_w, grad_v]."""
    cdef wn_layout L
    _fill(&L, layout, 3)
    with nogil:
        wn_backward(dtype, &L, <const void *>grad_w, <const void *>v,
                    <const void *>g, g_stride, <const void *>norms, norms_stride,
                    <void *>grad_v, <void *>grad_g, nthreads)


def roofline_copy(dst, src, int nthreads=0):
    """dst[...] = src with all threads (both contiguous, same nbytes)."""
    cdef const unsigned char[::1] s = src.reshape(-1).view("u1")
    cdef unsigned char[::1] d = dst.reshape(-1).view("u1")
    if d.shape[0] != s.shape[0]:
        raise ValueError("roofline_copy: dst and src differ in size")
    if nthreads <= 0:
        from wnkernels import get_num_threads
        nthreads = get_num_threads()
    with nogil:
        wn_roofline_copy(&d[0] if d.shape[0] else NULL,
                         &s[0] if s.shape[0] else NULL, d.shape[0], nthreads)


def roofline_triad(a, b, double s, c, int nthreads=0):
    """a = b * s + c with all threads (contiguous float32 or float64)."""
    cdef float[::1] a32, b32, c32
    cdef double[::1] a64, b64, c64
    if nthreads <= 0:
        from wnkernels import get_num_threads
        nthreads = get_num_threads()
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


def set_stream_threshold(int64_t nbytes):
    wn_set_stream_threshold(nbytes)


def get_stream_threshold():
    return wn_get_stream_threshold()


def set_col_budget(int64_t nbytes):
    wn_set_col_budget(nbytes)


def get_col_budget():
    return wn_get_col_budget()


# ---------------------------------------------------------------- fast path
#
# Small calls are dominated by argument handling, not by the kernel.  The
# Python front end validates a call fully and then remembers its "plan" (the
# filled wn_layout, dtype code, g stride and output allocation) under a key of
# everything validation looked at: array types, dtypes, shapes, strides and
# dim.  A later call with the same key skips straight to allocation and the
# kernel.  Only plain, aligned, native-byte-order NumPy arrays without `out=`
# take this path; anything else returns None and goes through the front end.

cdef class _Plan:
    cdef wn_layout L
    cdef int dtype
    cdef int64_t g_stride, n_stride
    cdef Py_ssize_t off_v, off_w, off_gw        # byte offsets of (row 0, element 0)
    cdef object out_shape, out_perm, out_dtype, norm_shape, norm_dtype
    cdef Py_ssize_t out_nbytes


cdef dict _fwd_plans = {}
cdef dict _bwd_plans = {}
cdef Py_ssize_t _MAX_PLANS = 1024
# Outputs at least this large come from the front end's buffer pool.
cdef Py_ssize_t POOL_MIN_BYTES = 1 << 20
cdef object _pool_get = None


def set_pool(get, Py_ssize_t min_bytes):
    """Large outputs: `get(nbytes)` returns a uint8 buffer to view."""
    global _pool_get, POOL_MIN_BYTES
    _pool_get = get
    POOL_MIN_BYTES = min_bytes


cdef object _alloc_out(_Plan p):
    if p.out_nbytes >= POOL_MIN_BYTES and _pool_get is not None:
        out = _pool_get(p.out_nbytes).view(p.out_dtype).reshape(p.out_shape)
    else:
        out = np.empty(p.out_shape, p.out_dtype)
    if p.out_perm is not None:
        out = out.transpose(p.out_perm)
    return out


cdef _Plan _make_plan(layout, int narr, int dtype, int64_t g_stride,
                      int64_t n_stride, out_shape, out_perm, out_dtype,
                      norm_shape, norm_dtype, Py_ssize_t itemsize):
    cdef _Plan p = _Plan()
    _fill(&p.L, layout, narr)
    p.dtype = dtype
    p.g_stride = g_stride
    p.n_stride = n_stride
    offs = layout.offsets
    p.off_v = offs[0] * itemsize
    p.off_w = offs[narr - 1] * itemsize
    p.off_gw = offs[1] * itemsize if narr == 3 else 0
    p.out_shape = tuple(out_shape)
    p.out_perm = None if out_perm is None else tuple(out_perm)
    p.out_dtype = out_dtype
    p.norm_shape = tuple(norm_shape)
    p.norm_dtype = norm_dtype
    p.out_nbytes = np.dtype(out_dtype).itemsize
    for n in p.out_shape:
        p.out_nbytes *= n
    return p


def remember_forward(key, layout, int dtype, int64_t g_stride, out_shape,
                     out_perm, out_dtype, norm_shape, norm_dtype):
    """Register a validated forward call shape (see the fast-path note)."""
    if len(_fwd_plans) >= _MAX_PLANS:
        _fwd_plans.clear()
    try:
        hash(key)
    except TypeError:                      # e.g. dim given as a list
        return
    _fwd_plans[key] = _make_plan(layout, 2, dtype, g_stride, 0, out_shape,
                                 out_perm, out_dtype, norm_shape, norm_dtype,
                                 np.dtype(out_dtype).itemsize)


def remember_backward(key, layout, int dtype, int64_t g_stride,
                      int64_t n_stride, out_shape, out_perm, out_dtype,
                      grad_g_shape):
    """Register a validated backward call shape (see the fast-path note)."""
    if len(_bwd_plans) >= _MAX_PLANS:
        _bwd_plans.clear()
    try:
        hash(key)
    except TypeError:
        return
    _bwd_plans[key] = _make_plan(layout, 3, dtype, g_stride, n_stride,
                                 out_shape, out_perm, out_dtype, grad_g_shape,
                                 out_dtype, np.dtype(out_dtype).itemsize)


cdef inline bint _plain(object a):
    return type(a) is np.ndarray and cnp.PyArray_ISALIGNED(<cnp.ndarray>a)


def fast_forward(v, g, dim, eps, int nthreads):
    """(w, norms) for a remembered call shape, else None."""
    if not (_plain(v) and _plain(g)) or type(eps) is not float:
        return None
    if dim is not None and type(dim) is not int:   # bools, tuples: front end
        return None
    cdef double e = eps
    if not (e >= 0.0 and isfinite(e)):
        return None
    try:
        key = (v.dtype, v.shape, v.strides, g.dtype, g.shape, g.strides, dim)
        plan = _fwd_plans.get(key)
    except TypeError:                      # unhashable dim (a list)
        return None
    if plan is None:
        return None
    cdef _Plan p = <_Plan>plan
    w = _alloc_out(p)
    norms = np.empty(p.norm_shape, p.norm_dtype)
    cdef char *pv = <char *>cnp.PyArray_DATA(<cnp.ndarray>v) + p.off_v
    cdef char *pg = <char *>cnp.PyArray_DATA(<cnp.ndarray>g)
    cdef char *pw = <char *>cnp.PyArray_DATA(<cnp.ndarray>w) + p.off_w
    cdef char *pn = <char *>cnp.PyArray_DATA(<cnp.ndarray>norms)
    if p.L.nrows:
        with nogil:
            wn_forward(p.dtype, &p.L, pv, pg, p.g_stride, pw, pn, e, nthreads)
    return w, norms


def fast_backward(grad_w, v, g, norms, dim, int nthreads):
    """(grad_v, grad_g) for a remembered call shape, else None."""
    if not (_plain(grad_w) and _plain(v) and _plain(g) and _plain(norms)):
        return None
    if dim is not None and type(dim) is not int:
        return None
    try:
        key = (grad_w.dtype, grad_w.shape, grad_w.strides, v.dtype, v.shape,
               v.strides, g.dtype, g.shape, g.strides, norms.dtype,
               norms.shape, norms.strides, dim)
        plan = _bwd_plans.get(key)
    except TypeError:
        return None
    if plan is None:
        return None
    cdef _Plan p = <_Plan>plan
    grad_v = _alloc_out(p)
    grad_g = np.empty(p.norm_shape, p.norm_dtype)
    cdef char *pgw = <char *>cnp.PyArray_DATA(<cnp.ndarray>grad_w) + p.off_gw
    cdef char *pv = <char *>cnp.PyArray_DATA(<cnp.ndarray>v) + p.off_v
    cdef char *pg = <char *>cnp.PyArray_DATA(<cnp.ndarray>g)
    cdef char *pn = <char *>cnp.PyArray_DATA(<cnp.ndarray>norms)
    cdef char *pgv = <char *>cnp.PyArray_DATA(<cnp.ndarray>grad_v) + p.off_w
    cdef char *pgg = <char *>cnp.PyArray_DATA(<cnp.ndarray>grad_g)
    if p.L.nrows:
        with nogil:
            wn_backward(p.dtype, &p.L, pgw, pv, pg, p.g_stride, pn, p.n_stride,
                        pgv, pgg, nthreads)
    return grad_v, grad_g


def forget_plans():
    """Drop every remembered call shape (tests use this)."""
    _fwd_plans.clear()
    _bwd_plans.clear()
