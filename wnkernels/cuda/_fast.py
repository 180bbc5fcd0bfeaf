"""Remembered GPU calls: the front end's fast path for torch CUDA tensors.

A call that went through full validation on torch CUDA tensors (no ``out=``, no
copies of ``g`` / ``norms``) is remembered under a key of everything the
validation and the plan looked at: dim, and per tensor its dtype, shape, strides,
negative bit, device, and -- for the tensors read or written with 16-byte
vectors -- its address modulo 16.  A later call with the same key skips
validation, layout and planning: it allocates the outputs (same strides as the
validated call's), rewrites the pointers in the recorded launches (`_launch.Recipe`)
and launches them on the caller's current stream.  Anything else returns None
and takes the validating path.
"""

from __future__ import annotations

import sys

from . import _launch

__all__ = ["forward", "backward", "remember_forward", "remember_backward", "clear"]

_FWD: dict = {}
_BWD: dict = {}
_LIMIT = 512  # remembered calls per direction (all forgotten when full)


def clear() -> None:
    _FWD.clear()
    _BWD.clear()


def _t(x):
    """Key part of one tensor: dtype, shape, strides, negative bit, device, and its
    address modulo 16 (last: dropped for tensors only read element by element)."""
    return (x.dtype, x.shape, x.stride(), x.is_neg(), x.device, x.data_ptr() % 16)


def _fwd_key(v, g, dim):
    return (dim, _t(v), _t(g)[:5])


def _bwd_key(grad_w, v, g, norms, dim):
    return (dim, _t(grad_w), _t(v), _t(g)[:5], _t(norms)[:5])


def _stream(torch, index):
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is not None:
        return int(raw(index))
    return int(torch.cuda.current_stream(index).cuda_stream)


def _is_cuda_tensor(torch, *xs):
    return all(isinstance(x, torch.Tensor) and x.is_cuda for x in xs)


def forward(v, g, dim, eps):
    """(w, norms) for a remembered call, else None."""
    torch = sys.modules.get("torch")
    if torch is None or not _is_cuda_tensor(torch, v, g):
        return None
    try:
        entry = _FWD.get(_fwd_key(v, g, dim))
    except TypeError:  # an unhashable dim (list)
        return None
    if entry is None:
        return None
    rec, w_strides, w_mod, n_shape, n_dtype = entry
    dev = v.device
    w = torch.empty_strided(v.shape, w_strides, dtype=v.dtype, device=dev)
    if w.data_ptr() % 16 != w_mod:
        return None
    n = torch.empty(n_shape, dtype=n_dtype, device=dev)
    rec.run(v, (v.data_ptr(), g.data_ptr(), w.data_ptr(), n.data_ptr()),
            (v, g, w, n), _stream(torch, dev.index), eps)
    return w, n


def backward(grad_w, v, g, norms, dim):
    """(grad_v, grad_g) for a remembered call, else None."""
    torch = sys.modules.get("torch")
    if torch is None or not _is_cuda_tensor(torch, grad_w, v, g, norms):
        return None
    try:
        entry = _BWD.get(_bwd_key(grad_w, v, g, norms, dim))
    except TypeError:
        return None
    if entry is None:
        return None
    rec, gv_strides, gv_mod, gg_shape = entry
    dev = v.device
    gv = torch.empty_strided(v.shape, gv_strides, dtype=v.dtype, device=dev)
    if gv.data_ptr() % 16 != gv_mod:
        return None
    gg = torch.empty(gg_shape, dtype=v.dtype, device=dev)
    ptrs = tuple(x.data_ptr() for x in (grad_w, v, g, norms, gv, gg))
    rec.run(v, ptrs, (grad_w, v, g, norms, gv, gg), _stream(torch, dev.index))
    return gv, gg


def _remember(table, key, record, objs, ordinal, dtype, extra):
    rec = _launch.Recipe.make(record, [(x, x.data_ptr()) for x in objs], ordinal, dtype)
    if rec is None:
        return
    if len(table) >= _LIMIT:
        table.clear()
    table[key] = (rec,) + extra


def remember_forward(v, g, dim, w, norms, record, ordinal, dtype):
    """Remember a validated forward on torch CUDA tensors (see the module doc)."""
    try:
        key = _fwd_key(v, g, dim)
        hash(key)
    except (TypeError, AttributeError):
        return
    _remember(_FWD, key, record, (v, g, w, norms), ordinal, dtype,
              (tuple(w.stride()), w.data_ptr() % 16, tuple(norms.shape), norms.dtype))


def remember_backward(grad_w, v, g, norms, dim, grad_v, grad_g, record, ordinal, dtype):
    try:
        key = _bwd_key(grad_w, v, g, norms, dim)
        hash(key)
    except (TypeError, AttributeError):
        return
    _remember(_BWD, key, record, (grad_w, v, g, norms, grad_v, grad_g), ordinal, dtype,
              (tuple(grad_v.stride()), grad_v.data_ptr() % 16, tuple(grad_g.shape)))
