# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True, embedsignature=True
"""Thin binding over the C kernels in csrc/ (see csrc/wn.h).

Arguments arrive validated from wnkernels._frontend: raw data addresses, a
`Layout`, and dtype codes.  The GIL is released while a kernel runs.
"""
from libc.stdint cimport int64_t, uintptr_t

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
