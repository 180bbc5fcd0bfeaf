"""Compiled peers for ``wnkernels bench --compare``: torch.compile and jax.jit.

Each peer compiles the formula a user would write, ``w = g · v / ‖v‖`` with the norm
``sqrt(Σ v²)`` over the reduced axes (half types computed in float32 and rounded back,
as the NumPy baseline does), and the backward as the vector-Jacobian product of that
formula (``torch.func.vjp`` under torch.compile, ``jax.vjp`` under jax.jit): what each
framework's autodiff makes of weight normalization. The compile and a warm-up run happen
when the peer is built (the first call's time is reported, never timed); the peer's
results are checked against the float64 reference like wnkernels' own before it is timed.

A peer whose package is not installed (or cannot run on the case's device) is *absent*:
reported as such, never an error.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Dict, Tuple

import numpy as np

__all__ = ["PEERS", "PeerAbsent", "Peer", "build_peer"]

PEERS = ("torch.compile", "jax.jit")


class PeerAbsent(RuntimeError):
    """The peer's package is not installed or cannot run here."""


class Peer:
    """A compiled forward and backward on the case's data: ``forward()`` returns
    ``(w, norms)``, ``backward()`` returns ``(grad_v, grad_g)``, each finished (no
    asynchronous work left pending)."""

    def __init__(self, name: str, forward: Callable[[], Any], backward: Callable[[], Any],
                 to_numpy: Callable[[Any], np.ndarray]):
        self.name, self.forward, self.backward, self.to_numpy = name, forward, backward, to_numpy
        self.first_call_s: Dict[str, float] = {}
        for d, fn in (("forward", forward), ("backward", backward)):
            t0 = time.perf_counter()
            fn()
            self.first_call_s[d] = time.perf_counter() - t0

    def results(self) -> Tuple[np.ndarray, ...]:
        """(w, norms, grad_v, grad_g) as NumPy arrays (bfloat16 as ml_dtypes)."""
        w, n = self.forward()
        gv, gg = self.backward()
        return tuple(self.to_numpy(x) for x in (w, n, gv, gg))


def _compute_dtype(name: str) -> str:
    return "float32" if name in ("float16", "bfloat16") else name


# ------------------------------------------------------------------ torch.compile

def _torch_peer(case, v, g, grad_w, torch) -> Peer:
    if torch is None:
        raise PeerAbsent("torch is not in use (not installed, or --no-torch)")
    axes = case.reduced_axes
    cdt = getattr(torch, _compute_dtype(case.dtype))

    def fwd(v, g):
        vf, gf = v.to(cdt), g.to(cdt)
        norms = torch.sqrt((vf * vf).sum(axes, keepdim=True))
        return (gf * vf / norms).to(v.dtype), norms

    def w_of(v, g):
        return fwd(v, g)[0]

    def bwd(gw, v, g):
        _, pull = torch.func.vjp(w_of, v, g)
        return pull(gw)

    # One case's functions at a time: a fresh Dynamo state per case keeps the recompile
    # limit out of the way (the same code objects are traced for every case).
    # (On CUDA the compiled kernels run on torch's current stream, which the GPU timer
    # measures; nothing to synchronize here.)
    torch._dynamo.reset()
    cf = torch.compile(fwd, dynamic=False)
    cb = torch.compile(bwd, dynamic=False)
    from .workloads import _to_numpy
    return Peer("torch.compile", lambda: cf(v, g), lambda: cb(grad_w, v, g), _to_numpy)


# ------------------------------------------------------------------------ jax.jit

def _import_jax():
    try:
        import jax
        import jax.numpy  # noqa: F401
    except ImportError as exc:
        raise PeerAbsent(f"jax is not installed ({exc})") from None
    jax.config.update("jax_enable_x64", True)  # float64 cases; dtypes are always explicit
    return jax


def _jax_peer(case, v, g, grad_w, device: str) -> Peer:
    """XLA's CPU client runs its own thread pool (all usable cores; it has no setting
    for a thread count), whatever ``--threads`` says."""
    jax = _import_jax()
    if device != "cpu":
        # Its kernels would run on jax's own streams, outside what the GPU timer
        # (CUDA events on torch's current stream) measures.
        raise PeerAbsent("jax.jit is compared on the CPU only")
    jnp = jax.numpy
    dev = jax.devices("cpu")[0]
    axes = case.reduced_axes
    cdt = _compute_dtype(case.dtype)

    def fwd(v, g):
        vf, gf = v.astype(cdt), g.astype(cdt)
        norms = jnp.sqrt(jnp.sum(vf * vf, axis=axes, keepdims=True))
        return (gf * vf / norms).astype(v.dtype), norms

    def bwd(gw, v, g):
        _, pull = jax.vjp(lambda v, g: fwd(v, g)[0], v, g)
        return pull(gw)

    from .workloads import _to_numpy
    jv, jg, jgw = (jax.device_put(_to_numpy(x), dev) for x in (v, g, grad_w))
    jf, jb = jax.jit(fwd), jax.jit(bwd)
    block = jax.block_until_ready
    return Peer("jax.jit", lambda: block(jf(jv, jg)), lambda: block(jb(jgw, jv, jg)),
                np.asarray)


def build_peer(name: str, case, v, g, grad_w, *, torch=None, device: str = "cpu") -> Peer:
    """The compiled peer ``name`` on the case's data (torch tensors for torch.compile,
    anything `_to_numpy` reads for jax.jit), compiled and run once; raises `PeerAbsent`."""
    builders = {"torch.compile": lambda: _torch_peer(case, v, g, grad_w, torch),
                "jax.jit": lambda: _jax_peer(case, v, g, grad_w, device)}
    if name not in builders:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    # Importing and running a compiler raises its own deprecation notices: not this
    # benchmark's concern, nor errors under pytest's -W error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return builders[name]()
