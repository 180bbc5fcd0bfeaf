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
# kernel.  Two kinds of argument take this path, each with its own plans:
# plain, aligned, native-byte-order NumPy arrays, and plain strided CPU torch
# tensors (torch.Tensor or nn.Parameter, no negative/conjugate bit, aligned
# data), read through their data pointers.  Forward calls with `out=` have
# plans of their own (keyed on out too); each call still checks that out is
# writable and, by byte ranges, that it is v itself or clear of v and g.
# Anything else returns None and goes through the front end.

cdef class _Plan:
    cdef wn_layout L
    cdef int dtype
    cdef int64_t g_stride, n_stride
    cdef Py_ssize_t off_v, off_w, off_gw        # byte offsets of (row 0, element 0)
    cdef object out_shape, out_perm, out_dtype, norm_shape, norm_dtype
    cdef Py_ssize_t out_nbytes
    cdef Py_ssize_t itemsize, norm_itemsize     # of v's dtype, of norms' dtype
    # torch plans: the dtypes to view the outputs as (bfloat16 results are
    # allocated as uint16 bits), None where from_numpy gives the right one
    cdef object t_out_view, t_norm_view
    # out= plans: [lo, hi) byte ranges of v, out and g around their data
    # pointers, and whether out may be v itself (same strides)
    cdef Py_ssize_t v_lo, v_hi, o_lo, o_hi, g_lo, g_hi
    cdef bint alias_ok


cdef dict _fwd_plans = {}
cdef dict _bwd_plans = {}
cdef dict _tfwd_plans = {}                    # torch tensors
cdef dict _tbwd_plans = {}
cdef dict _ofwd_plans = {}                    # forward with out=, NumPy or torch
cdef Py_ssize_t _MAX_PLANS = 1024
# Outputs at least this large come from the front end's buffer pool.
cdef Py_ssize_t POOL_MIN_BYTES = 1 << 20
cdef object _pool_get = None
# Set by `set_torch` once the front end has remembered a torch call.
cdef tuple _torch_types = ()
cdef object _from_numpy = None


def set_pool(get, Py_ssize_t min_bytes):
    """Large outputs: `get(nbytes)` returns a uint8 buffer to view."""
    global _pool_get, POOL_MIN_BYTES
    _pool_get = get
    POOL_MIN_BYTES = min_bytes


def set_torch(torch):
    """Enable the torch-tensor fast path (the front end calls this with the
    imported torch module; wnkernels never imports torch itself)."""
    global _torch_types, _from_numpy
    _torch_types = (torch.Tensor, torch.nn.Parameter)
    _from_numpy = torch.from_numpy


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
                      norm_shape, norm_dtype, t_out_view, t_norm_view):
    cdef _Plan p = _Plan()
    _fill(&p.L, layout, narr)
    p.dtype = dtype
    p.g_stride = g_stride
    p.n_stride = n_stride
    p.itemsize = np.dtype(out_dtype).itemsize
    p.norm_itemsize = np.dtype(norm_dtype).itemsize
    offs = layout.offsets
    p.off_v = offs[0] * p.itemsize
    p.off_w = offs[narr - 1] * p.itemsize
    p.off_gw = offs[1] * p.itemsize if narr == 3 else 0
    p.out_shape = tuple(out_shape)
    p.out_perm = None if out_perm is None else tuple(out_perm)
    p.out_dtype = out_dtype
    p.norm_shape = tuple(norm_shape)
    p.norm_dtype = norm_dtype
    p.out_nbytes = p.itemsize
    for n in p.out_shape:
        p.out_nbytes *= n
    p.t_out_view = t_out_view
    p.t_norm_view = t_norm_view
    return p


cdef bint _store(dict plans, key, _Plan p):
    if len(plans) >= _MAX_PLANS:
        plans.clear()
    try:
        plans[key] = p
    except TypeError:                      # e.g. dim given as a list
        return False
    return True


def remember_forward(key, layout, int dtype, int64_t g_stride, out_shape,
                     out_perm, out_dtype, norm_shape, norm_dtype, torch_views=None):
    """Register a validated forward call shape (see the fast-path note).
    `torch_views`: (w view dtype, norms view dtype) for a torch-tensor key
    (`torch_key`), None for a NumPy key."""
    t = torch_views or (None, None)
    _store(_fwd_plans if torch_views is None else _tfwd_plans, key,
           _make_plan(layout, 2, dtype, g_stride, 0, out_shape, out_perm,
                      out_dtype, norm_shape, norm_dtype, t[0], t[1]))


def remember_forward_out(key, layout, int dtype, int64_t g_stride, out_dtype,
                         norm_shape, norm_dtype, extents, bint alias_ok,
                         torch_views=None):
    """Register a validated forward call with out= (see the fast-path
    note).  `extents`: the [lo, hi) byte ranges of v, out and g around their
    data pointers."""
    t = torch_views or (None, None)
    cdef _Plan p = _make_plan(layout, 2, dtype, g_stride, 0, (), None, out_dtype,
                              norm_shape, norm_dtype, t[0], t[1])
    (p.v_lo, p.v_hi), (p.o_lo, p.o_hi), (p.g_lo, p.g_hi) = extents
    p.alias_ok = alias_ok
    _store(_ofwd_plans, key, p)


def remember_backward(key, layout, int dtype, int64_t g_stride,
                      int64_t n_stride, out_shape, out_perm, out_dtype,
                      grad_g_shape, torch_views=None):
    """Register a validated backward call shape (see the fast-path note)."""
    t = torch_views or (None, None)
    _store(_bwd_plans if torch_views is None else _tbwd_plans, key,
           _make_plan(layout, 3, dtype, g_stride, n_stride, out_shape,
                      out_perm, out_dtype, grad_g_shape, out_dtype, t[0], t[1]))


cdef inline bint _plain(object a):
    return type(a) is np.ndarray and cnp.PyArray_ISALIGNED(<cnp.ndarray>a)


cdef inline bint _plain_tensor(object t):
    # Strided layout and no conjugate bit follow from a key match: keys hold
    # float dtypes, which never carry the conjugate bit, and building a key
    # (t.stride()) raises for any layout but strided (callers catch that).
    return type(t) in _torch_types and t.is_cpu and not t.is_neg()


def torch_key(*tensors):
    """The key part of CPU torch tensors, as fast_forward/backward build it."""
    return tuple((t.dtype, t.shape, t.stride()) for t in tensors)


cdef inline bint _plain_dim(dim):
    return dim is None or type(dim) is int           # bools, tuples: front end


cdef inline char *_tptr(object t, Py_ssize_t itemsize, bint *ok):
    cdef uintptr_t a = t.data_ptr()
    if a % itemsize:
        ok[0] = False
    return <char *>a


cdef inline char *_nptr(object a):
    return <char *>cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline object _as_torch(object a, object view):
    t = _from_numpy(a)
    return t if view is None else t.view(view)


cdef object _run_forward(_Plan p, char *pv, char *pg, double e, int nthreads,
                         bint torch, object out=None, char *po=NULL):
    w = _alloc_out(p) if out is None else None
    norms = np.empty(p.norm_shape, p.norm_dtype)
    cdef char *pw = (_nptr(w) if out is None else po) + p.off_w
    cdef char *pn = _nptr(norms)
    pv += p.off_v
    if p.L.nrows:
        with nogil:
            wn_forward(p.dtype, &p.L, pv, pg, p.g_stride, pw, pn, e, nthreads)
    if out is not None:
        return out, (_as_torch(norms, p.t_norm_view) if torch else norms)
    if torch:
        return _as_torch(w, p.t_out_view), _as_torch(norms, p.t_norm_view)
    return w, norms


cdef inline bint _disjoint(char *a, Py_ssize_t a_lo, Py_ssize_t a_hi,
                           char *b, Py_ssize_t b_lo, Py_ssize_t b_hi):
    return a_hi <= a_lo or b_hi <= b_lo or a + a_hi <= b + b_lo \
        or b + b_hi <= a + a_lo


cdef object _run_backward(_Plan p, char *pgw, char *pv, char *pg, char *pn,
                          int nthreads, bint torch):
    grad_v = _alloc_out(p)
    grad_g = np.empty(p.norm_shape, p.norm_dtype)
    cdef char *pgv = _nptr(grad_v) + p.off_w
    cdef char *pgg = _nptr(grad_g)
    pgw += p.off_gw
    pv += p.off_v
    if p.L.nrows:
        with nogil:
            wn_backward(p.dtype, &p.L, pgw, pv, pg, p.g_stride, pn, p.n_stride,
                        pgv, pgg, nthreads)
    if torch:
        return _as_torch(grad_v, p.t_out_view), _as_torch(grad_g, p.t_norm_view)
    return grad_v, grad_g


cdef inline bint _eps_ok(eps):
    cdef double e
    if type(eps) is not float:
        return False
    e = eps
    return e >= 0.0 and isfinite(e)


def fast_forward(v, g, dim, eps, int nthreads):
    """(w, norms) for a remembered call shape, else None."""
    if not (_eps_ok(eps) and _plain_dim(dim)):
        return None
    cdef bint ok = True
    cdef _Plan p
    cdef char *pv
    cdef char *pg
    if _plain(v) and _plain(g):
        try:
            plan = _fwd_plans.get((v.dtype, v.shape, v.strides, g.dtype,
                                   g.shape, g.strides, dim))
        except TypeError:
            return None
        if plan is None:
            return None
        p = <_Plan>plan
        return _run_forward(p, _nptr(v), _nptr(g), eps, nthreads, False)
    if _torch_types and _plain_tensor(v) and _plain_tensor(g):
        try:
            plan = _tfwd_plans.get(((v.dtype, v.shape, v.stride()),
                                    (g.dtype, g.shape, g.stride()), dim))
        except RuntimeError:               # not strided (sparse, mkldnn, ...)
            return None
        if plan is None:
            return None
        p = <_Plan>plan
        pv = _tptr(v, p.itemsize, &ok)
        pg = _tptr(g, p.itemsize, &ok)
        if not ok:
            return None
        return _run_forward(p, pv, pg, eps, nthreads, True)
    return None


def fast_forward_out(v, g, out, dim, eps, int nthreads):
    """(out, norms) for a remembered call shape with out=, else None (also
    when out is not writable, or overlaps v without being v, or overlaps g:
    the front end then decides, exactly, and raises)."""
    if not (_eps_ok(eps) and _plain_dim(dim)):
        return None
    cdef bint ok = True, torch
    cdef _Plan p
    cdef char *pv
    cdef char *pg
    cdef char *po
    if _plain(v) and _plain(g) and _plain(out):
        if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out):
            return None
        try:
            plan = _ofwd_plans.get((v.dtype, v.shape, v.strides, g.dtype, g.shape,
                                    g.strides, out.dtype, out.shape, out.strides,
                                    dim))
        except TypeError:
            return None
        if plan is None:
            return None
        p = <_Plan>plan
        pv, pg, po, torch = _nptr(v), _nptr(g), _nptr(out), False
    elif _torch_types and _plain_tensor(v) and _plain_tensor(g) \
            and _plain_tensor(out):
        try:
            plan = _ofwd_plans.get(((v.dtype, v.shape, v.stride()),
                                    (g.dtype, g.shape, g.stride()),
                                    (out.dtype, out.shape, out.stride()), dim))
        except RuntimeError:
            return None
        if plan is None:
            return None
        p = <_Plan>plan
        pv = _tptr(v, p.itemsize, &ok)
        pg = _tptr(g, p.itemsize, &ok)
        po = _tptr(out, p.itemsize, &ok)
        torch = True
        if not ok:
            return None
    else:
        return None
    if not (po == pv and p.alias_ok) and \
            not _disjoint(po, p.o_lo, p.o_hi, pv, p.v_lo, p.v_hi):
        return None
    if not _disjoint(po, p.o_lo, p.o_hi, pg, p.g_lo, p.g_hi):
        return None
    return _run_forward(p, pv, pg, eps, nthreads, torch, out, po)


def fast_backward(grad_w, v, g, norms, dim, int nthreads):
    """(grad_v, grad_g) for a remembered call shape, else None."""
    if not _plain_dim(dim):
        return None
    cdef bint ok = True
    cdef _Plan p
    cdef char *pgw
    cdef char *pv
    cdef char *pg
    cdef char *pn
    if _plain(grad_w) and _plain(v) and _plain(g) and _plain(norms):
        try:
            plan = _bwd_plans.get((grad_w.dtype, grad_w.shape, grad_w.strides,
                                   v.dtype, v.shape, v.strides, g.dtype, g.shape,
                                   g.strides, norms.dtype, norms.shape,
                                   norms.strides, dim))
        except TypeError:
            return None
        if plan is None:
            return None
        p = <_Plan>plan
        return _run_backward(p, _nptr(grad_w), _nptr(v), _nptr(g), _nptr(norms),
                             nthreads, False)
    if _torch_types and _plain_tensor(grad_w) and _plain_tensor(v) \
            and _plain_tensor(g) and _plain_tensor(norms):
        try:
            plan = _tbwd_plans.get(((grad_w.dtype, grad_w.shape, grad_w.stride()),
                                    (v.dtype, v.shape, v.stride()),
                                    (g.dtype, g.shape, g.stride()),
                                    (norms.dtype, norms.shape, norms.stride()), dim))
        except RuntimeError:
            return None
        if plan is None:
            return None
        p = <_Plan>plan
        pgw = _tptr(grad_w, p.itemsize, &ok)
        pv = _tptr(v, p.itemsize, &ok)
        pg = _tptr(g, p.itemsize, &ok)
        pn = _tptr(norms, p.norm_itemsize, &ok)
        if not ok:
            return None
        return _run_backward(p, pgw, pv, pg, pn, nthreads, True)
    return None


def forget_plans():
    """Drop every remembered call shape (tests use this)."""
    _fwd_plans.clear()
    _bwd_plans.clear()
    _tfwd_plans.clear()
    _tbwd_plans.clear()
    _ofwd_plans.clear()
