# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True, embedsignature=True
"""The one call path: key -> cached plan -> per-call checks -> allocate -> run.

Every public function builds a key from cheap descriptions of its arguments
(per array: its type, dtype, shape, strides, device, 16-byte phase and
flags; plus ``dim``), looks the key up in the plan cache, and on a miss has
the planner validate the call and a backend compile the plan
(`wnkernels._planner`).  The executable then runs the checks that depend on
the actual memory (overlap of ``out`` with the inputs), allocates the outputs
and executes.  NumPy arrays and torch tensors are keyed here directly from
their attributes; any other kind (CuPy, numba, DLPack, array-interface
objects) is described by its backend first and keyed by that description.
``eps`` is a value, not part of the plan: it is checked on every call.

Nothing here knows about devices: backends supply the executables.
"""

import sys

cimport numpy as cnp
import numpy as np
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.pycapsule cimport PyCapsule_GetPointer
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.math cimport INFINITY
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from wnkernels._dlpack cimport wn_DLTensor

from . import _planner

cnp.import_array()

__all__ = ["weight_norm", "weight_norm_backward", "row_scale", "weight_norm_many",
           "weight_norm_backward_many", "clear_plans", "plan_of", "cached_plans"]

cdef int FWD = 0, BWD = 1, SCALE = 2
cdef int FWD_MANY = 3, BWD_MANY = 4

cdef dict _plans = {}
cdef Py_ssize_t _MAX_PLANS = 4096
cdef object _NOCACHE = object()      # a dim spelling never cached (always validated)
cdef tuple _torch_types = ()         # (torch.Tensor, torch.nn.Parameter) once seen
cdef object _to_dlpack = None        # torch._C._to_dlpack, where torch has it
cdef object _modules = sys.modules


cdef class Executable:
    """Base of every backend's compiled plan (see _dispatch.pxd)."""

    def __init__(self, plan):
        self.plan = plan

    cdef object run(self, tuple args, list descs, const uintptr_t *ptrs, double eps):
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__} of {self.plan!r}>"


cdef class PyExecutable(Executable):
    """An executable written in Python: ``run`` calls
    ``self.execute(args, descs, ptrs, eps)`` with ``ptrs`` as a tuple of ints."""

    cdef object run(self, tuple args, list descs, const uintptr_t *ptrs, double eps):
        cdef Py_ssize_t i, n = len(args)
        return self.execute(args, descs, tuple([ptrs[i] for i in range(n)]), eps)

    def execute(self, args, descs, ptrs, eps):
        raise NotImplementedError


# ------------------------------------------------------------------ keys

cdef inline bint _is_torch(object x):
    global _torch_types, _to_dlpack
    if not _torch_types:
        torch = _modules.get("torch")
        if torch is None:
            return False
        _torch_types = (torch.Tensor, torch.nn.Parameter)
        _to_dlpack = getattr(torch._C, "_to_dlpack", None)
    return type(x) in _torch_types


cdef object _torch_cpu_part(object x, uintptr_t *ptr):
    """A CPU torch tensor's key part read from one torch._C._to_dlpack
    capsule (dtype, shape, strides, data pointer: ~190 ns, against ~420 ns for
    the six attribute calls) plus its negative bit, as one bytes object:
    [DLPack code, bits, ndim, 16-byte phase, neg] + shape + strides (int64).
    None if the capsule says anything else (another device, a dtype outside
    float16/bfloat16/float32/float64): the attribute path describes those."""
    cap = _to_dlpack(x)
    cdef wn_DLTensor *t = <wn_DLTensor *>PyCapsule_GetPointer(cap, "dltensor")
    cdef int nd = t.ndim, code = t.dtype.code, bits = t.dtype.bits
    if t.device.device_type != 1 or t.dtype.lanes != 1 or t.strides == NULL \
            or nd > 64 or not ((code == 2 and (bits == 16 or bits == 32 or bits == 64))
                               or (code == 4 and bits == 16)):
        return None
    cdef uintptr_t p = <uintptr_t>t.data + <uintptr_t>t.byte_offset
    part = PyBytes_FromStringAndSize(NULL, 8 + 16 * nd)
    cdef char *b = PyBytes_AS_STRING(part)
    b[0] = <char>code
    b[1] = <char>bits
    b[2] = <char>nd
    b[3] = <char>(p & 15)
    b[4] = <char>(x.is_neg())
    b[5] = b[6] = b[7] = 0
    memcpy(b + 8, t.shape, 8 * nd)
    memcpy(b + 8 + 8 * nd, t.strides, 8 * nd)
    ptr[0] = p
    return part


cdef object _GENERIC = object()      # key part of an array the backends describe


cdef object _part(object x, Py_ssize_t i, uintptr_t *ptrs):
    """The key part of argument i (and its data pointer into ptrs[i]), or
    _GENERIC for an array kind that only its backend can describe."""
    cdef uintptr_t p
    if x is None:
        ptrs[i] = 0
        return None
    if type(x) is np.ndarray:
        p = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>x)
        ptrs[i] = p
        return (x.dtype, x.shape, x.strides, p & 15,
                cnp.PyArray_ISWRITEABLE(<cnp.ndarray>x))
    if _is_torch(x):
        if _to_dlpack is not None and x.is_cpu:
            try:
                part = _torch_cpu_part(x, &ptrs[i])
            except RuntimeError:  # not strided, or a dtype DLPack has no code for
                part = None
            if part is not None:
                return part
        try:
            p = x.data_ptr()
            ptrs[i] = p
            # a CPU tensor's device as True: no torch.device made or hashed
            return (x.dtype, x.shape, x.stride(), True if x.is_cpu else x.device,
                    x.is_neg(), p & 15)
        except RuntimeError:      # not strided (sparse, ...): the describer says why
            pass
    ptrs[i] = 0
    return _GENERIC


cdef object _dim_key(object dim):
    """dim as a cache key: ints, None, and tuples/lists of ints (NumPy ints
    included) in a canonical form; anything else is never cached."""
    t = type(dim)
    if t is int or dim is None:
        return dim
    if t is tuple or t is list:
        parts = []
        for d in dim:
            if type(d) is int:
                parts.append(d)
            elif isinstance(d, np.integer):
                parts.append(int(d))
            else:
                return _NOCACHE
        return tuple(parts)
    if isinstance(dim, np.integer):
        return int(dim)
    return _NOCACHE


cdef object _key(int op, tuple args, object dimkey, uintptr_t *ptrs, bint *generic):
    """The call's cache key (None: never cached); sets *generic when an
    argument still needs its backend's description (see `_described`)."""
    cdef Py_ssize_t i, n = len(args)
    cdef tuple key = PyTuple_New(n + 2)
    Py_INCREF(op)
    PyTuple_SET_ITEM(key, 0, op)
    Py_INCREF(dimkey)
    PyTuple_SET_ITEM(key, 1, dimkey)
    generic[0] = False
    for i in range(n):
        part = _part(args[i], i, ptrs)
        if part is _GENERIC:
            generic[0] = True
        Py_INCREF(part)
        PyTuple_SET_ITEM(key, i + 2, part)
    return key if dimkey is not _NOCACHE else None


cdef object _described(tuple args, tuple names, object key, uintptr_t *ptrs):
    """(key, descs) once the arguments keyed _GENERIC are described by their
    backends; key None (uncached: the planner will raise) if one cannot be."""
    cdef Py_ssize_t i, n = len(args)
    descs = [None] * n
    parts = list(key) if key is not None else None
    for i in range(n):
        x = args[i]
        if x is None or type(x) is np.ndarray:
            continue
        if _is_torch(x) and key is not None and key[i + 2] is not _GENERIC:
            continue
        try:
            d = _planner.describe(names[i % len(names)], x)
        except (TypeError, ValueError):   # the planner raises it, naming the argument
            return None, descs
        descs[i] = d
        ptrs[i] = d.ptr
        if parts is not None:
            parts[i + 2] = d.key
    return (tuple(parts) if parts is not None else None), descs


cdef inline double _eps(object eps) except? -1.0:
    cdef double e
    if type(eps) is float:
        e = eps
        if e >= 0.0 and e < INFINITY:
            return e
    return _planner.check_eps(eps)


cdef object _miss(int op, tuple args, list descs, object dim, object key, bint cache):
    """Plan and compile a call the cache does not hold (raises on bad input)."""
    if op == FWD_MANY or op == BWD_MANY:
        plan = _planner.plan_group(FWD if op == FWD_MANY else BWD, args, dim)
    else:
        plan = _planner.plan_call(op, args, descs, dim)
    ex = _planner._backend(plan.backend).compile(plan)
    if cache:
        if len(_plans) >= _MAX_PLANS:
            _plans.clear()
        _plans[key] = ex
    return ex


cdef tuple _FWD_NAMES = ("v", "g", "out")
cdef tuple _BWD_NAMES = ("grad_w", "v", "g", "norms")
cdef tuple _SCALE_NAMES = ("v", "g")


cdef object _call(int op, tuple args, tuple names, object dim, object eps):
    cdef uintptr_t ptrs[4]
    cdef list descs = None
    cdef bint generic
    cdef double e = _eps(eps) if op != BWD else 0.0
    key = _key(op, args, _dim_key(dim), ptrs, &generic)
    if generic:
        key, descs = _described(args, names, key, ptrs)
    ex = _plans.get(key) if key is not None else None
    if ex is None:
        ex = _miss(op, args, descs, dim, key, key is not None)
    return (<Executable>ex).run(args, descs, ptrs, e)


# ------------------------------------------------------------------ public API

def weight_norm(v, g, dim=0, *, eps=0.0, out=None):
    """Weight-normalized weight and its per-row norms.

    ``norm = sqrt(sum(v**2 over the reduced axes) + eps)`` and
    ``w = v * (g / norm)``, one norm per kept index (``dim``).

    Parameters
    ----------
    v : array (NumPy, torch, CuPy, numba, or any DLPack / CUDA-array-interface
        array); float16, bfloat16, float32 or float64, any strides.
    g : array of v's dtype, shaped like v with size 1 on the reduced axes
        (``(out, 1, 1, 1)``) or as the kept axes alone (``(out,)``).
    dim : int, tuple of ints, or None
        Kept axes; None or () normalizes the whole array as one row.
    eps : float >= 0, added under the square root.
    out : optional preallocated w (v's shape, dtype and device); may be v.

    Returns
    -------
    (w, norms): w like v; norms in g's shape, float32 for half types.
    Same kind of array as the inputs, on the same device.
    """
    return _call(FWD, (v, g, out), _FWD_NAMES, dim, eps)


def weight_norm_backward(grad_w, v, g, norms, dim=0):
    """Gradients of `weight_norm` with respect to v and g.

    ``grad_g = sum(grad_w * v) / norm`` and
    ``grad_v = (g / norm) * grad_w - (g * grad_g / norm**2) * v``, using
    ``norms`` exactly as `weight_norm` returned them (never recomputed).

    Returns (grad_v, grad_g): grad_v like v, grad_g in g's shape and dtype.
    """
    return _call(BWD, (grad_w, v, g, norms), _BWD_NAMES, dim, 0.0)


def row_scale(v, g, dim=0, *, eps=0.0):
    """Per-row scale ``g / norm`` and the norms, without forming w.

    ``scale`` has g's shape and dtype: ``g / norm`` rounded once to g's dtype,
    with ``norm`` exactly as `weight_norm` returns it (so ``v * scale`` is the
    forward's w for float32 / float64).  v is read once; nothing of v's size is
    written or allocated.  A layer can compute ``y = (x @ v.T) * scale + b``;
    its backward is `weight_norm_backward` with ``grad_w = dy.T @ x``.

    Returns (scale, norms), of the inputs' kind and device.
    """
    return _call(SCALE, (v, g), _SCALE_NAMES, dim, eps)


cdef object _many(int op, tuple seqs, tuple names, object dim, double e):
    cdef Py_ssize_t k, i, n, nseq = len(seqs)
    cdef list descs = None
    cdef bint generic
    cdef uintptr_t *ptrs
    n = len(seqs[0])
    for k in range(1, nseq):
        if len(seqs[k]) != n:
            break
    else:
        k = 0
    if k:     # the planner raises the length error
        _planner.plan_group(op - 3, seqs, dim)
    if type(dim) is list:
        dimkey = tuple([_dim_key(d) for d in dim])
        if any(d is _NOCACHE for d in dimkey):
            dimkey = _NOCACHE
        else:
            dimkey = (True, dimkey)
    else:
        dimkey = _dim_key(dim)
    cdef tuple flat = PyTuple_New(n * nseq)
    for i in range(n):
        for k in range(nseq):
            x = seqs[k][i]
            Py_INCREF(x)
            PyTuple_SET_ITEM(flat, i * nseq + k, x)
    ptrs = <uintptr_t *>malloc(sizeof(uintptr_t) * (n * nseq + 1))
    if ptrs == NULL:
        raise MemoryError()
    try:
        key = _key(op, flat, dimkey, ptrs, &generic)
        if generic:
            key, descs = _described(flat, names, key, ptrs)
        ex = _plans.get(key) if key is not None else None
        if ex is None:
            ex = _miss(op, seqs, descs, dim, key, key is not None)
        return (<Executable>ex).run(flat, descs, ptrs, e)
    finally:
        free(ptrs)


def weight_norm_many(vs, gs, dim=0, *, eps=0.0):
    """`weight_norm` of many weights in one call: ``[(w, norms), ...]``.

    ``vs`` and ``gs`` are sequences of arrays of one dtype and kind (any mix
    of shapes, ranks and layouts); ``dim`` is one value for all or a list with
    one per item.  Results are bitwise equal to the per-tensor calls.  A bad
    item raises the per-tensor call's exception type, naming the item's
    index, and nothing is written.  CPU: one parallel region for the group;
    GPU: one launch, on the caller's stream.
    """
    return _many(FWD_MANY, (tuple(vs), tuple(gs)), ("vs", "gs"), dim, _eps(eps))


def weight_norm_backward_many(grad_ws, vs, gs, norms, dim=0):
    """`weight_norm_backward` of many weights in one call:
    ``[(grad_v, grad_g), ...]`` (see `weight_norm_many`)."""
    return _many(BWD_MANY, (tuple(grad_ws), tuple(vs), tuple(gs), tuple(norms)),
                 ("grad_ws", "vs", "gs", "norms"), dim, 0.0)


# ------------------------------------------------------------------ introspection

def clear_plans():
    """Forget every cached plan (the next call of each kind plans again)."""
    _plans.clear()


def cached_plans():
    """Number of cached plans."""
    return len(_plans)


def _use_torch_dlpack(bint on):
    """Describe CPU torch tensors through torch._C._to_dlpack (the default)
    or through their attributes (tests and A/B timing of the two paths)."""
    global _to_dlpack
    _is_torch(None)
    torch = _modules.get("torch")
    _to_dlpack = getattr(torch._C, "_to_dlpack", None) if on and torch is not None else None


def plan_of(op, *args, dim=0):
    """The cached executable a call would run, or None (tests, debugging):
    ``op`` is "weight_norm", "weight_norm_backward" or "row_scale"."""
    cdef uintptr_t ptrs[4]
    cdef bint generic
    code = {"weight_norm": FWD, "weight_norm_backward": BWD, "row_scale": SCALE}[op]
    names = {FWD: _FWD_NAMES, BWD: _BWD_NAMES, SCALE: _SCALE_NAMES}[code]
    if code == FWD and len(args) == 2:
        args = args + (None,)
    key = _key(code, tuple(args), _dim_key(dim), ptrs, &generic)
    if generic:
        key, _ = _described(tuple(args), names, key, ptrs)
    return _plans.get(key) if key is not None else None
