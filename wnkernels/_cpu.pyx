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
    int wn_threads_lost_to_fork()
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


# ---------------------------------------------------------------- fast path
#
# Small calls are dominated by argument handling, not by the kernel.  The
# Python front end validates a call fully and then remembers its "plan" (the
# filled wn_layout, dtype code, g stride and output allocation) under a key of
# everything validation looked at: the kind of arrays, their dtypes, shapes
# and strides, and dim (`plan_key`).  A later call with the same key skips
# straight to allocation and the kernel.  Two kinds of argument take this
# path: plain, aligned, native-byte-order NumPy arrays, and plain CPU torch
# tensors (torch.Tensor or nn.Parameter, strided, no negative bit, aligned
# data), read through their data pointers.  Forward calls with `out=` have
# plans of their own (keyed on out too); each such call still checks that out
# is writable and, by byte ranges, that it is v itself or clear of v and g.
# Anything else returns None and goes through the front end.

from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.ref cimport Py_INCREF

cdef enum:
    _FWD = 0
    _FWD_OUT = 1
    _BWD = 2


cdef class _Plan:
    cdef wn_layout L
    cdef int dtype
    cdef int64_t g_stride, n_stride
    cdef Py_ssize_t off_v, off_w, off_gw        # byte offsets of (row 0, element 0)
    cdef object out_shape, out_perm, out_dtype, norm_shape, norm_dtype
    cdef Py_ssize_t out_nbytes
    # the alignment each argument's data pointer needs (torch tensors)
    cdef Py_ssize_t align[4]
    # torch plans: the dtypes to view the outputs as (bfloat16 results are
    # allocated as uint16 bits), None where from_numpy gives the right one
    cdef object t_out_view, t_norm_view
    # out= plans: [lo, hi) byte ranges of v, out and g around their data
    # pointers, and whether out may be v itself (same strides)
    cdef Py_ssize_t v_lo, v_hi, o_lo, o_hi, g_lo, g_hi
    cdef bint alias_ok


cdef list _plans = [{}, {}, {}]               # by _FWD, _FWD_OUT, _BWD
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


cdef inline bint _plain(object a):
    return type(a) is np.ndarray and cnp.PyArray_ISALIGNED(<cnp.ndarray>a)


cdef inline bint _plain_tensor(object t):
    # Strided layout and no conjugate bit follow from a key match: keys hold
    # float dtypes, which never carry the conjugate bit, and building a key
    # (t.stride()) raises for any layout but strided (callers catch that).
    return type(t) in _torch_types and t.is_cpu and not t.is_neg()


cdef tuple _key(tuple arrays, dim, bint torch):
    """(per array (dtype, shape, strides)..., dim, torch): NumPy strides in
    bytes, torch strides in elements; the flag keeps the kinds apart."""
    cdef Py_ssize_t i, n = len(arrays)
    cdef tuple key = PyTuple_New(n + 2)
    for i in range(n):
        a = arrays[i]
        part = (a.dtype, a.shape, a.stride() if torch else a.strides)
        Py_INCREF(part)
        PyTuple_SET_ITEM(key, i, part)
    Py_INCREF(dim)
    PyTuple_SET_ITEM(key, n, dim)
    flag = bool(torch)
    Py_INCREF(flag)
    PyTuple_SET_ITEM(key, n + 1, flag)
    return key


def plan_key(tuple arrays, dim):
    """The key a fast-path call of these arrays looks up (the front end
    remembers validated calls under it): NumPy arrays or CPU torch tensors."""
    return _key(arrays, dim, type(arrays[0]) is not np.ndarray)


cdef _Plan _find(int kind, tuple arrays, dim, char **ptr, bint *torch):
    """The plan remembered for these arrays, with their data pointers in ptr;
    None when there is none or an array is not plain."""
    cdef Py_ssize_t i, n = len(arrays)
    cdef uintptr_t addr
    cdef _Plan p
    if dim is not None and type(dim) is not int:     # bools, tuples: front end
        return None
    for i in range(n):
        if not _plain(arrays[i]):
            break
    else:
        i = n
    if i == n:
        torch[0] = False
    elif _torch_types:
        for i in range(n):
            if not _plain_tensor(arrays[i]):
                return None
        torch[0] = True
    else:
        return None
    try:
        plan = (<dict>_plans[kind]).get(_key(arrays, dim, torch[0]))
    except RuntimeError:                   # a tensor that is not strided
        return None
    if plan is None:
        return None
    p = <_Plan>plan
    for i in range(n):
        if torch[0]:
            addr = arrays[i].data_ptr()
            if addr % p.align[i]:
                return None
            ptr[i] = <char *>addr
        else:
            ptr[i] = <char *>cnp.PyArray_DATA(<cnp.ndarray>arrays[i])
    return p


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
                      norm_shape, norm_dtype, torch_views):
    cdef _Plan p = _Plan()
    cdef Py_ssize_t isz = np.dtype(out_dtype).itemsize
    _fill(&p.L, layout, narr)
    p.dtype = dtype
    p.g_stride = g_stride
    p.n_stride = n_stride
    offs = layout.offsets
    p.off_v = offs[0] * isz
    p.off_w = offs[narr - 1] * isz
    p.off_gw = offs[1] * isz if narr == 3 else 0
    p.out_shape = tuple(out_shape)
    p.out_perm = None if out_perm is None else tuple(out_perm)
    p.out_dtype = out_dtype
    p.norm_shape = tuple(norm_shape)
    p.norm_dtype = norm_dtype
    p.out_nbytes = isz
    for n in p.out_shape:
        p.out_nbytes *= n
    # forward (v, g[, out]), backward (grad_w, v, g, norms): elements of v's
    # dtype, but for a backward's norms (remember_backward sets align[3])
    p.align[0] = p.align[1] = p.align[2] = p.align[3] = isz
    p.t_out_view, p.t_norm_view = torch_views
    return p


cdef void _store(int kind, key, _Plan p):
    cdef dict plans = _plans[kind]
    if len(plans) >= _MAX_PLANS:
        plans.clear()
    plans[key] = p


def remember_forward(key, layout, int dtype, int64_t g_stride, out_shape,
                     out_perm, out_dtype, norm_shape, norm_dtype, torch_views):
    """Register a validated forward call (see the fast-path note) under its
    `plan_key`.  `torch_views`: the torch dtypes to view (w, norms) as after
    from_numpy, None each where no view is needed (and for NumPy calls)."""
    _store(_FWD, key, _make_plan(layout, 2, dtype, g_stride, 0, out_shape,
                                 out_perm, out_dtype, norm_shape, norm_dtype,
                                 torch_views))


def remember_forward_out(key, layout, int dtype, int64_t g_stride, out_dtype,
                         norm_shape, norm_dtype, extents, bint alias_ok,
                         torch_views):
    """Register a validated forward call with out= (see the fast-path note).
    `extents`: the [lo, hi) byte ranges of v, out and g around their data
    pointers; `alias_ok`: out may be v itself (their strides are equal)."""
    cdef _Plan p = _make_plan(layout, 2, dtype, g_stride, 0, (), None, out_dtype,
                              norm_shape, norm_dtype, torch_views)
    (p.v_lo, p.v_hi), (p.o_lo, p.o_hi), (p.g_lo, p.g_hi) = extents
    p.alias_ok = alias_ok
    _store(_FWD_OUT, key, p)


def remember_backward(key, layout, int dtype, int64_t g_stride,
                      int64_t n_stride, out_shape, out_perm, out_dtype,
                      grad_g_shape, norm_dtype, torch_views):
    """Register a validated backward call (see the fast-path note)."""
    p = _make_plan(layout, 3, dtype, g_stride, n_stride, out_shape, out_perm,
                   out_dtype, grad_g_shape, out_dtype, torch_views)
    p.align[3] = np.dtype(norm_dtype).itemsize     # the norms argument
    _store(_BWD, key, p)


cdef inline object _as_torch(object a, object view):
    t = _from_numpy(a)
    return t if view is None else t.view(view)


cdef inline bint _disjoint(char *a, Py_ssize_t a_lo, Py_ssize_t a_hi,
                           char *b, Py_ssize_t b_lo, Py_ssize_t b_hi):
    return a_hi <= a_lo or b_hi <= b_lo or a + a_hi <= b + b_lo \
        or b + b_hi <= a + a_lo


cdef inline bint _eps_ok(eps):
    cdef double e
    if type(eps) is not float:
        return False
    e = eps
    return e >= 0.0 and isfinite(e)


cdef object _run_forward(_Plan p, char *pv, char *pg, double e, int nthreads,
                         bint torch, object out, char *po):
    w = _alloc_out(p) if out is None else None
    norms = np.empty(p.norm_shape, p.norm_dtype)
    cdef char *pw = (<char *>cnp.PyArray_DATA(<cnp.ndarray>w)) if out is None else po
    cdef char *pn = <char *>cnp.PyArray_DATA(<cnp.ndarray>norms)
    pv += p.off_v
    pw += p.off_w
    if p.L.nrows:
        with nogil:
            wn_forward(p.dtype, &p.L, pv, pg, p.g_stride, pw, pn, e, nthreads)
    if torch:
        norms = _as_torch(norms, p.t_norm_view)
        return (out, norms) if out is not None else (_as_torch(w, p.t_out_view), norms)
    return (out if out is not None else w), norms


def fast_forward(v, g, dim, eps, int nthreads):
    """(w, norms) for a remembered call, else None."""
    cdef char *ptr[2]
    cdef bint torch
    if not _eps_ok(eps):
        return None
    p = _find(_FWD, (v, g), dim, ptr, &torch)
    if p is None:
        return None
    return _run_forward(p, ptr[0], ptr[1], eps, nthreads, torch, None, NULL)


def fast_forward_out(v, g, out, dim, eps, int nthreads):
    """(out, norms) for a remembered call with out=, else None (also when out
    is not writable, or overlaps v without being v, or overlaps g: the front
    end then decides, exactly, and raises)."""
    cdef char *ptr[3]
    cdef bint torch
    if not _eps_ok(eps):
        return None
    p = _find(_FWD_OUT, (v, g, out), dim, ptr, &torch)
    if p is None:
        return None
    if not torch and not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out):
        return None
    cdef char *pv = ptr[0]
    cdef char *pg = ptr[1]
    cdef char *po = ptr[2]
    if not (po == pv and p.alias_ok) and \
            not _disjoint(po, p.o_lo, p.o_hi, pv, p.v_lo, p.v_hi):
        return None
    if not _disjoint(po, p.o_lo, p.o_hi, pg, p.g_lo, p.g_hi):
        return None
    return _run_forward(p, pv, pg, eps, nthreads, torch, out, po)


def fast_backward(grad_w, v, g, norms, dim, int nthreads):
    """(grad_v, grad_g) for a remembered call, else None."""
    cdef char *ptr[4]
    cdef bint torch
    p = _find(_BWD, (grad_w, v, g, norms), dim, ptr, &torch)
    if p is None:
        return None
    grad_v = _alloc_out(p)
    grad_g = np.empty(p.norm_shape, p.norm_dtype)
    cdef char *pgw = ptr[0] + p.off_gw
    cdef char *pv = ptr[1] + p.off_v
    cdef char *pgv = <char *>cnp.PyArray_DATA(<cnp.ndarray>grad_v) + p.off_w
    cdef char *pgg = <char *>cnp.PyArray_DATA(<cnp.ndarray>grad_g)
    if p.L.nrows:
        with nogil:
            wn_backward(p.dtype, &p.L, pgw, pv, ptr[2], p.g_stride, ptr[3],
                        p.n_stride, pgv, pgg, nthreads)
    if torch:
        return _as_torch(grad_v, p.t_out_view), _as_torch(grad_g, p.t_norm_view)
    return grad_v, grad_g


def forget_plans():
    """Drop every remembered call (tests use this)."""
    for plans in _plans:
        plans.clear()
