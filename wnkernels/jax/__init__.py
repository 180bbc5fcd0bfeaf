"""wnkernels' CPU kernels in JAX: ``jax.custom_vjp`` functions over the fused kernels.

    from wnkernels.jax import weight_norm, row_scale
    w, norms = weight_norm(v, g, dim=0)           # jit, grad, vmap all work
    scale, norms = row_scale(v, g, dim=0)

Same meaning as `wnkernels.weight_norm` / `wnkernels.row_scale` (``dim``: int,
negative, None, tuple of kept axes; ``g`` in keep-dims or flat kept shape;
``norms`` in g's shape, float32 for half types; ``eps`` under the square root),
on JAX CPU arrays.  ``w`` and ``scale`` are differentiable in ``v`` and ``g``;
``norms`` is not (its cotangent is ignored, as in PyTorch's fused op).  The
forward's gradient is wnkernels' fused backward kernel, run on the norms the
forward saved.  `weight_norm_backward` is that kernel on its own (not itself
differentiable).

How the kernels are reached (`get_backend` / `set_backend`):

* ``"ffi"`` (default where it can be set up): an XLA FFI custom call.  The
  handler is a small Numba ``cfunc`` speaking the XLA FFI C ABI that calls the
  C entry ``wn_run`` directly on XLA's buffers (see `wnkernels.jax._ffi`): no
  Python, no GIL, no copies, outputs written in place.  Built once per process
  on first use (1.5-2.5 s of Numba compilation on this 2-core machine).
* ``"callback"``: ``jax.pure_callback`` into `wnkernels.weight_norm` & co.
  (needs no Numba; costs a Python round trip and a copy of each result).

Batching (``jax.vmap``, nested too) folds the mapped axis into an extra kept
axis, so a batch is one kernel call, not a loop (``jax.custom_batching.custom_vmap``).
Every check runs at trace time with the library's own messages and exception
types.  Only CPU arrays are supported: under a GPU default device, place the
inputs on the CPU (``jax.device_put(x, jax.devices("cpu")[0])``).

Threads: the FFI path runs with ``wnkernels.get_num_threads()`` as it was when
a function was last traced (any count gives bitwise the same results).
"""

from __future__ import annotations

import functools
from typing import Tuple

try:
    import jax
    import jax.numpy as jnp
    from jax.custom_batching import custom_vmap
except ImportError as _e:  # pragma: no cover - exercised only without jax
    raise ImportError(
        "wnkernels.jax needs JAX, which is not installed: pip install jax "
        "(the CPU wheels are enough).  The rest of wnkernels works without it.") from _e

import numpy as np

import wnkernels
from .._arrays import ArrayInfo
from .._dtypes import DTYPES
from .._layout import normalize_dim
from .._planner import BACKWARD, FORWARD, ROW_SCALE, _c_strides, check_eps, plan_call
from . import _ffi

__all__ = ["weight_norm", "row_scale", "weight_norm_backward", "set_backend",
           "get_backend"]

_BACKENDS = ("ffi", "callback")
_backend = None


def get_backend() -> str:
    """``"ffi"`` or ``"callback"``: how calls traced from now on reach the kernels."""
    global _backend
    if _backend is None:
        _backend = "ffi" if _ffi.available() else "callback"
    return _backend


def set_backend(name: str) -> None:
    """Choose ``"ffi"`` or ``"callback"`` for calls traced from now on (already
    compiled functions keep theirs)."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {name!r}")
    if name == "ffi" and not _ffi.available():
        raise RuntimeError(f"the XLA FFI handler is unavailable here: {_ffi.reason()}")
    _backend = name


# ------------------------------------------------------------------ intake

def _as_array(name: str, x):
    if isinstance(x, jax.Array):            # concrete arrays and tracers
        return x
    if isinstance(x, np.ndarray):
        return jnp.asarray(x)
    raise TypeError(f"{name}: expected a JAX (or NumPy) array, got {type(x).__name__}")


def _info(name: str, x) -> ArrayInfo:
    """A description from shape and dtype alone (tracers included)."""
    shape = tuple(int(n) for n in x.shape)
    dt = np.dtype(x.dtype)
    return ArrayInfo(obj=None, kind="numpy", device=("cpu", 0), shape=shape,
                     strides=_c_strides(shape), dtype=dt.name, itemsize=dt.itemsize,
                     ptr=0)


def _plan(op, arrays, kept):
    names = {FORWARD: ("v", "g"), BACKWARD: ("grad_w", "v", "g", "norms"),
             ROW_SCALE: ("v", "g")}[op]
    descs = [_info(n, a) for n, a in zip(names, arrays)]
    if op == FORWARD:
        descs.append(None)
        arrays = list(arrays) + [None]
    return plan_call(op, list(arrays), descs, kept)


def _check_cpu(*xs) -> None:
    for x in xs:
        try:
            plats = {d.platform for d in x.devices()}
        except Exception:       # a tracer: placement is the caller's (jit's) business
            continue
        if plats != {"cpu"}:
            raise ValueError(f"wnkernels.jax runs on CPU arrays; got an array on "
                             f"{', '.join(sorted(plats))}")


# ------------------------------------------------------------------ kernel calls

def _host(op: int, kept: Tuple[int, ...], eps: float):
    """The pure_callback body: the library call on the host arrays."""
    dim = kept

    def run(*arrays):
        arrays = [np.asarray(a) for a in arrays]
        if op == FORWARD:
            return wnkernels.weight_norm(arrays[0], arrays[1], dim=dim, eps=eps)
        if op == ROW_SCALE:
            return wnkernels.row_scale(arrays[0], arrays[1], dim=dim, eps=eps)
        return wnkernels.weight_norm_backward(*arrays, dim=dim)
    return run


def _raw(op: int, kept: Tuple[int, ...], eps: float, backend: str, *arrays):
    plan = _plan(op, arrays, kept)
    shapes = tuple(jax.ShapeDtypeStruct(o.shape, jnp.dtype(o.dtype)) for o in plan.outputs)
    if backend == "ffi":
        _ffi.NTHREADS[0] = wnkernels.get_num_threads()
        desc = _ffi.descriptor(op, DTYPES[plan.dtype].code, plan.layout, plan.g_stride,
                               plan.n_stride, eps, len(arrays))
        # vmap never reaches this call (see _kernel), hence no vmap_method
        return tuple(jax.ffi.ffi_call(_ffi.target_name(), shapes)(*arrays, desc=desc))
    # vmap never reaches this one either; "sequential" would only be a
    # correct (slow) fallback were it to.
    return tuple(jax.pure_callback(_host(op, kept, eps), shapes, *arrays,
                                   vmap_method="sequential"))


@functools.lru_cache(maxsize=None)
def _kernel(op: int, kept: Tuple[int, ...], eps: float, backend: str):
    """The kernel call for fixed static parameters, with its batching rule:
    a mapped axis becomes a leading kept axis (g, norms: flat kept shape)."""

    @custom_vmap
    def call(*arrays):
        return _raw(op, kept, eps, backend, *arrays)

    @call.def_vmap
    def _batched(axis_size, in_batched, *arrays):
        arrays = [a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)
                  for a, b in zip(arrays, in_batched)]
        out = _kernel(op, (0,) + tuple(k + 1 for k in kept), eps, backend)(*arrays)
        return out, (True,) * len(out)

    return call


# ------------------------------------------------------------------ public API

def _prepare(v, g, dim, eps=0.0):
    v = _as_array("v", v)
    g = _as_array("g", g)
    _check_cpu(v, g)
    eps = check_eps(eps)
    kept = normalize_dim(dim, len(v.shape))
    # full validation (dtypes, g's shape) with the library's messages
    _plan(FORWARD, (v, g), dim if not isinstance(dim, list) else tuple(dim))
    flat = tuple(int(v.shape[k]) for k in kept)
    return v, g, kept, flat, eps


def _keepdims(vshape, kept):
    return tuple(n if k in kept else 1 for k, n in enumerate(vshape))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _wn(kept, eps, backend, v, g):
    return _kernel(FORWARD, kept, eps, backend)(v, g)


def _wn_fwd(kept, eps, backend, v, g):
    w, norms = _kernel(FORWARD, kept, eps, backend)(v, g)
    return (w, norms), (v, g, norms)


def _wn_bwd(kept, eps, backend, res, cts):
    v, g, norms = res
    ct_w, _ct_norms = cts           # norms are not differentiable
    grad_v, grad_g = _kernel(BACKWARD, kept, 0.0, backend)(ct_w.astype(v.dtype), v, g, norms)
    return grad_v, grad_g


_wn.defvjp(_wn_fwd, _wn_bwd)


def weight_norm(v, g, dim=0, *, eps: float = 0.0):
    """``(w, norms)`` with ``w = g * v / ||v||`` per kept index (see the module
    docstring); differentiable in ``v`` and ``g`` (``w`` only)."""
    v, g, kept, flat, eps = _prepare(v, g, dim, eps)
    w, norms = _wn(kept, eps, get_backend(), v, jnp.reshape(g, flat))
    return w, jnp.reshape(norms, g.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _rs(kept, eps, backend, v, g):
    return _kernel(ROW_SCALE, kept, eps, backend)(v, g)


def _rs_fwd(kept, eps, backend, v, g):
    scale, norms = _kernel(ROW_SCALE, kept, eps, backend)(v, g)
    return (scale, norms), (v, g, norms)


def _rs_bwd(kept, eps, backend, res, cts):
    # scale = g / n, n = sqrt(sum v^2 + eps):  d/dg = 1/n,  d/dv = -(g / n^3) v
    v, g, norms = res
    ct, _ct_norms = cts
    acc = jnp.promote_types(norms.dtype, jnp.float32)
    inv = 1.0 / norms.astype(acc)
    ctg = ct.astype(acc)
    grad_g = (ctg * inv).astype(g.dtype)
    coef = -(ctg * g.astype(acc)) * inv * inv * inv
    coef = jnp.reshape(coef, _keepdims(v.shape, kept))
    grad_v = (v.astype(acc) * coef).astype(v.dtype)
    return grad_v, grad_g


_rs.defvjp(_rs_fwd, _rs_bwd)


def row_scale(v, g, dim=0, *, eps: float = 0.0):
    """``(scale, norms)`` with ``scale = g / ||v||`` in g's shape and dtype;
    ``scale`` is differentiable in ``v`` and ``g``, ``norms`` is not."""
    v, g, kept, flat, eps = _prepare(v, g, dim, eps)
    scale, norms = _rs(kept, eps, get_backend(), v, jnp.reshape(g, flat))
    return jnp.reshape(scale, g.shape), jnp.reshape(norms, g.shape)


def weight_norm_backward(grad_w, v, g, norms, dim=0):
    """``(grad_v, grad_g)``: the fused backward kernel on the forward's norms
    (as `wnkernels.weight_norm_backward`; not itself differentiable)."""
    grad_w = _as_array("grad_w", grad_w)
    norms = _as_array("norms", norms)
    v, g, kept, flat, _ = _prepare(v, g, dim)
    _check_cpu(grad_w, norms)
    _plan(BACKWARD, (grad_w, v, g, norms), dim if not isinstance(dim, list) else tuple(dim))
    grad_v, grad_g = _kernel(BACKWARD, kept, 0.0, get_backend())(
        grad_w, v, jnp.reshape(g, flat), jnp.reshape(norms, flat))
    return grad_v, jnp.reshape(grad_g, g.shape)
