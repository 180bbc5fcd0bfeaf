"""The data and contenders of each case, and the check of wnkernels' results.

Every workload checks wnkernels' outputs against `wnkernels.reference` (on a
sample of rows: the reference works in extended precision) before anything is
timed, so a broken build cannot report a fast wrong answer.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Sequence

import numpy as np

from .. import reference
from .cases import Case, GroupCase
from .timing import CpuTimer, CudaEventTimer, CudaWallTimer

__all__ = ["CheckError", "SkipCase", "CpuWorkload", "CudaWorkload", "GroupWorkload",
           "import_torch", "require_cuda", "roofline_primitives", "CHECK_RTOL"]

# Relative tolerance of the pre-flight check per output dtype (absolute tolerance is the
# same fraction of the largest reference value, which covers the cancellation in grad_v).
# Generous on purpose: the test suite checks accuracy; this only catches broken builds.
CHECK_RTOL = {"float16": 4e-3, "bfloat16": 2e-2, "float32": 1e-5, "float64": 1e-10}
# Rows (kept indices) the check compares with the reference.
CHECK_ROWS = 32


class CheckError(RuntimeError):
    """wnkernels' result disagrees with the float64 reference: the case is not timed."""


class SkipCase(RuntimeError):
    """The case cannot run here (a missing optional package)."""


# ------------------------------------------------------------------ optional imports

def import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _import_ml_dtypes():
    try:
        import ml_dtypes
    except ImportError:
        return None
    return ml_dtypes


def require_cuda():
    torch = import_torch()
    if torch is None:
        raise RuntimeError("wnkernels bench --device cuda needs PyTorch with CUDA "
                           "(pip install torch); torch is not installed")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"wnkernels bench --device cuda: no CUDA device available to PyTorch "
            f"{torch.__version__} (torch.cuda.is_available() is False; "
            f"torch.version.cuda={torch.version.cuda})")
    return torch


def roofline_primitives():
    """``(copy, triad)`` from the compiled extension, with a clear error if missing."""
    try:
        from ..cpu import _kernels
        return _kernels.roofline_copy, _kernels.roofline_triad
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(
            "wnkernels bench: the compiled extension (wnkernels.cpu._kernels with "
            f"roofline_copy and roofline_triad) is not available: {exc}. Build or "
            "reinstall wnkernels.") from exc


# --------------------------------------------------------------- bfloat16 as NumPy bits
# The NumPy baseline works on raw bfloat16 bits (uint16), so it needs no ml_dtypes:
# bf16 -> f32 is a 16-bit shift, f32 -> bf16 rounds to nearest even.

def _bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16
    return rounded.astype(np.uint16)


def _to_numpy(x: Any) -> np.ndarray:
    """A torch tensor (any device) or NumPy array as a NumPy array of its own dtype
    (torch bfloat16 as ml_dtypes' bfloat16)."""
    if not type(x).__module__.startswith("torch"):
        return np.asarray(x)
    torch = import_torch()
    x = x.detach().cpu()
    if x.dtype == torch.bfloat16:
        ml_dtypes = _import_ml_dtypes()
        if ml_dtypes is None:
            raise SkipCase("bfloat16 outside torch needs ml_dtypes installed")
        return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return x.numpy()


def _to_f64(x: Any) -> np.ndarray:
    """Any result (NumPy of any float dtype incl. ml_dtypes bf16, torch on any device)
    as a float64 NumPy array."""
    if type(x).__module__.startswith("torch"):
        return x.detach().to(dtype=import_torch().float64).cpu().numpy()
    x = np.asarray(x)
    if x.dtype.name == "bfloat16":
        return _bf16_bits_to_f32(x.view(np.uint16)).astype(np.float64)
    return x.astype(np.float64)


# ------------------------------------------------------------------------ the check

def _violation(x, ref, rtol: float, scale=None) -> float:
    """max |x - ref| / (atol + rtol·|ref|) with atol = rtol·max|scale| (``scale``
    defaults to ``ref``): <= 1 is np.allclose."""
    if not ref.size:
        return 0.0
    atol = rtol * float(np.max(np.abs(ref if scale is None else scale)))
    return float(np.max(np.abs(x - ref) / (atol + rtol * np.abs(ref) + 1e-300)))


def _rows(case: Case, a):
    """The check's sample of rows of a v-shaped (or g-shaped) array."""
    ax = case.kept_axis
    n = case.shape[ax]
    idx = np.unique(np.linspace(0, n - 1, min(n, CHECK_ROWS)).astype(np.int64))
    if type(a).__module__.startswith("torch"):
        torch = import_torch()
        return a.index_select(ax, torch.as_tensor(idx, device=a.device))
    return np.take(a, idx, axis=ax)


def check_case(case: Case, v, g, grad_w, w, norms, grad_v, grad_g) -> Dict[str, float]:
    """Raise CheckError unless wnkernels' outputs match `wnkernels.reference` on a
    sample of rows; returns the worst violation per output (<= 1 passes)."""
    s = lambda a: _to_f64(_rows(case, a))  # noqa: E731
    v64, g64, gw64 = s(v), s(g), s(grad_w)
    w_ref, n_ref = reference.weight_norm(v64, g64, case.dim)
    n_got = s(norms)
    gv_ref, gg_ref = reference.weight_norm_backward(gw64, v64, g64, n_got, case.dim)
    # grad_v is a difference of two terms that cancel exactly on length-1 rows (and
    # nearly wherever grad_w is parallel to v): its error is measured against the size
    # of the terms, |g/n·grad_w| (the backward of a zero v gives exactly that term).
    gv_terms, _ = reference.weight_norm_backward(gw64, np.zeros_like(v64), g64, n_got, case.dim)
    rt = CHECK_RTOL[case.dtype]
    rt_norm = CHECK_RTOL["float64" if case.dtype == "float64" else "float32"]
    report = {}
    for what, got, ref, tol, scale in (
            ("w", s(w), w_ref, rt, None), ("norms", n_got, n_ref, rt_norm, None),
            ("grad_v", s(grad_v), gv_ref, rt, np.maximum(np.abs(gv_ref), np.abs(gv_terms))),
            ("grad_g", s(grad_g), gg_ref, rt, None)):
        if got.shape != ref.shape:
            raise CheckError(f"{case.name}: {what} has shape {got.shape}, expected {ref.shape}")
        viol = _violation(got, ref, tol, scale)
        if not viol <= 1.0:  # also catches NaN
            raise CheckError(
                f"{case.name}: {what} differs from the float64 reference by {viol:.3g}x the "
                f"tolerance (rtol={tol:g}); not timing a wrong answer")
        report[what] = viol
    return report


# --------------------------------------------------------------------- workloads

class _Workload:
    """Data and contenders of one case; subclasses build them for one device."""

    timer: CpuTimer
    # name -> `peers.Peer` built, name -> {"status": ok / absent / error / check failed,
    # ...}; read-only class defaults for a workload without peers (a weight set)
    peers: Dict[str, Any] = {}
    peer_status: Dict[str, Dict[str, Any]] = {}

    def contenders(self, direction: str) -> Dict[str, Callable[[], Any]]:
        """Ordered {name: zero-argument callable}; the first one is the roofline."""
        raise NotImplementedError

    def check(self) -> Dict[str, float]:
        raise NotImplementedError

    # ---- compiled peers (``--compare``): torch.compile, jax.jit

    def _build_peers(self, names: Sequence[str], v, g, grad_w, *, device: str) -> None:
        """Compile each peer on (v, g, grad_w); one that is absent or fails to build is
        recorded in `peer_status`, never raised."""
        from .peers import PeerAbsent, build_peer
        self.peers, self.peer_status = {}, {}
        for name in names:
            try:
                peer = build_peer(name, self.case, v, g, grad_w, torch=self.torch,
                                  device=device)
            except PeerAbsent as exc:
                self.peer_status[name] = {"status": "absent", "message": str(exc)}
            except Exception as exc:  # a peer's compiler failing is its own result
                self.peer_status[name] = {"status": "error",
                                          "message": f"{type(exc).__name__}: {exc}"}
            else:
                self.peers[name] = peer
                self.peer_status[name] = {"status": "ok", "first_call_s": peer.first_call_s}

    def _check_peers(self) -> None:
        """Each peer's results against the float64 reference, as wnkernels' own; a peer
        that fails is dropped (not timed) and its status says why."""
        for name, peer in list(self.peers.items()):
            try:
                self.peer_status[name]["check"] = check_case(
                    self.case, self.v, self.g, self.grad_w, *peer.results())
            except CheckError as exc:
                del self.peers[name]
                self.peer_status[name].update(status="check failed", message=str(exc))

    def _peer_contenders(self, direction: str) -> Dict[str, Callable[[], Any]]:
        return {name: getattr(peer, direction) for name, peer in self.peers.items()}

    def close(self) -> None:
        """Drop the arrays (a case can hold several GiB)."""
        self.__dict__.clear()


def _rng_arrays(case: Case, seed: int):
    """v, g (keep-dims), grad_w as float32 (float64 for f64 cases): v ~ N(0,1), g ~ U(0.5,1.5)."""
    rng = np.random.default_rng(seed)
    base = np.float64 if case.dtype == "float64" else np.float32
    v = rng.standard_normal(case.shape, dtype=base)
    g = rng.uniform(0.5, 1.5, case.g_shape).astype(base)
    grad_w = rng.standard_normal(case.shape, dtype=base)
    return v, g, grad_w


def _cpu_arrays(case: Case, seed: int, torch):
    """(v, g, grad_w) of the case's dtype (bfloat16: ml_dtypes, else torch views of
    the bits), and the bits of bfloat16 ones (None otherwise)."""
    v32, g32, gw32 = _rng_arrays(case, seed)
    if case.dtype != "bfloat16":
        return tuple(x.astype(case.dtype) for x in (v32, g32, gw32)), None
    bits = tuple(_f32_to_bf16_bits(x) for x in (v32, g32, gw32))
    ml_dtypes = _import_ml_dtypes()
    if ml_dtypes is not None:
        return tuple(b.view(ml_dtypes.bfloat16) for b in bits), bits
    if torch is not None:
        return tuple(torch.from_numpy(b.view(np.int16)).view(torch.bfloat16)
                     for b in bits), bits
    raise SkipCase("the bfloat16 case needs ml_dtypes or torch installed")


def _as_torch(torch, x):
    if isinstance(x, np.ndarray):
        if x.dtype.name == "bfloat16":
            return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(x)
    return x


class CpuWorkload(_Workload):
    """One CPU case: NumPy arrays, torch views of the same memory, NumPy baselines.

    Contenders: the same-size roofline (all-core copy / triad), wnkernels on the
    NumPy arrays (and with ``out=``), wnkernels on the torch tensors (what a
    framework sees), PyTorch's fused kernels, the compiled ``peers`` asked for
    (``--compare``), NumPy."""

    def __init__(self, case: Case, *, use_torch: bool = True, seed: int = 0,
                 peers: Sequence[str] = ()):
        import wnkernels as wn
        self.case = case
        self.timer = CpuTimer()
        torch = import_torch() if use_torch else None
        copy, triad = roofline_primitives()
        self.wn, self.torch = wn, torch
        dim, axes = case.dim, case.reduced_axes
        self.first_call_s: Dict[str, float] = {}
        (v, g, gw), self._bits = _cpu_arrays(case, seed, torch)
        self.v, self.g, self.grad_w = v, g, gw

        t0 = time.perf_counter()
        self.w_wn, self.norms_wn = wn.weight_norm(v, g, dim)
        self.first_call_s["forward"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.grad_v_wn, self.grad_g_wn = wn.weight_norm_backward(gw, v, g, self.norms_wn, dim)
        self.first_call_s["backward"] = time.perf_counter() - t0
        self.w_out = self.w_wn  # a warm, already-faulted buffer for out=

        # Roofline buffers: same bytes as v, filled (never lazily-zeroed pages).
        rdtype = np.float64 if case.dtype == "float64" else np.float32
        relem = -(-case.nbytes // np.dtype(rdtype).itemsize)
        self.r_src, self.r_dst, self.r_c = (np.full(relem, 1.0 + i, rdtype) for i in range(3))
        self._copy, self._triad = copy, triad

        if torch is not None:
            self.tv, self.tg, self.tgw = (_as_torch(torch, x) for x in (v, g, gw))
            self.tdim = case.kept_axis  # torch wants 0 or ndim-1, not -1
            _, self.t_norms = torch._weight_norm_interface(self.tv, self.tg, self.tdim)
            self.t_norms_wn = wn.weight_norm(self.tv, self.tg, dim)[1]
        self._build_peers(peers, *((self.tv, self.tg, self.tgw) if torch is not None
                                   else (v, g, gw)), device="cpu")

        # NumPy baseline (half types computed in float32 with conversions, as a NumPy
        # user would write it).
        if self._bits is not None:
            bv, bg, bgw = self._bits

            def np_forward():
                vf, gf = _bf16_bits_to_f32(bv), _bf16_bits_to_f32(bg)
                norms = np.sqrt((vf * vf).sum(axis=axes, keepdims=True))
                return _f32_to_bf16_bits(gf * vf / norms), norms
            self._np_norms = np_forward()[1]

            def np_backward():
                vf, gf, gwf = (_bf16_bits_to_f32(b) for b in (bv, bg, bgw))
                norms = self._np_norms
                grad_g = (gwf * vf).sum(axis=axes, keepdims=True) / norms
                grad_v = (gf / norms) * gwf - (gf * grad_g / (norms * norms)) * vf
                return _f32_to_bf16_bits(grad_v), _f32_to_bf16_bits(grad_g)
        else:
            def np_forward():
                norms = np.sqrt((v * v).sum(axis=axes, keepdims=True))
                return g * v / norms, norms
            self._np_norms = np_forward()[1]

            def np_backward():
                norms = self._np_norms
                grad_g = (gw * v).sum(axis=axes, keepdims=True) / norms
                grad_v = (g / norms) * gw - (g * grad_g / (norms * norms)) * v
                return grad_v, grad_g
        self._np_forward, self._np_backward = np_forward, np_backward

    def contenders(self, direction):
        wn, torch, dim = self.wn, self.torch, self.case.dim
        v, g, gw = self.v, self.g, self.grad_w
        if direction == "forward":
            src, dst, w_out = self.r_src, self.r_dst, self.w_out
            copy = self._copy
            out = {
                "roofline": lambda: copy(dst, src),
                "wnkernels": lambda: wn.weight_norm(v, g, dim),
                "wnkernels out=": lambda: wn.weight_norm(v, g, dim, out=w_out),
            }
            if torch is not None:
                tv, tg, tdim = self.tv, self.tg, self.tdim
                out["wnkernels torch"] = lambda: wn.weight_norm(tv, tg, dim)
                out["torch"] = lambda: torch._weight_norm_interface(tv, tg, tdim)
            out.update(self._peer_contenders(direction))
            out["numpy"] = self._np_forward
        else:
            a, b, c = self.r_dst, self.r_src, self.r_c
            triad = self._triad
            norms = self.norms_wn
            out = {
                "roofline": lambda: triad(a, b, 1.0001, c),
                "wnkernels": lambda: wn.weight_norm_backward(gw, v, g, norms, dim),
            }
            if torch is not None:
                tv, tg, tgw, tn, tdim = self.tv, self.tg, self.tgw, self.t_norms, self.tdim
                tnw = self.t_norms_wn
                bwd = torch.ops.aten._weight_norm_interface_backward
                out["wnkernels torch"] = lambda: wn.weight_norm_backward(tgw, tv, tg, tnw, dim)
                out["torch"] = lambda: bwd(tgw, tv, tg, tn, tdim)
            out.update(self._peer_contenders(direction))
            out["numpy"] = self._np_backward
        return out

    def check(self):
        report = check_case(self.case, self.v, self.g, self.grad_w, self.w_wn, self.norms_wn,
                            self.grad_v_wn, self.grad_g_wn)
        self._check_peers()
        return report


class CudaWorkload(_Workload):
    """One GPU case on torch CUDA tensors (the current device and stream)."""

    def __init__(self, case: Case, *, use_torch: bool = True, seed: int = 0, torch=None,
                 peers: Sequence[str] = ()):
        import wnkernels as wn
        torch = torch or require_cuda()
        self.case, self.torch, self.use_torch, self.wn = case, torch, use_torch, wn
        self.timer = CudaWallTimer(torch) if case.wall_clock else CudaEventTimer(torch)
        dev = torch.device("cuda", torch.cuda.current_device())
        gen = torch.Generator(device=dev)
        gen.manual_seed(seed)
        dtype = getattr(torch, case.dtype)
        base = torch.float64 if case.dtype == "float64" else torch.float32
        self.v = torch.randn(case.shape, generator=gen, device=dev, dtype=base).to(dtype)
        self.g = (torch.rand(case.g_shape, generator=gen, device=dev, dtype=base) + 0.5).to(dtype)
        self.grad_w = torch.randn(case.shape, generator=gen, device=dev, dtype=base).to(dtype)
        self.tdim = case.kept_axis
        self.first_call_s: Dict[str, float] = {}

        # The first calls compile the kernels (JIT): reported, never timed.
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        self.w_wn, self.norms_wn = wn.weight_norm(self.v, self.g, case.dim)
        torch.cuda.synchronize()
        self.first_call_s["forward"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.grad_v_wn, self.grad_g_wn = wn.weight_norm_backward(
            self.grad_w, self.v, self.g, self.norms_wn, case.dim)
        torch.cuda.synchronize()
        self.first_call_s["backward"] = time.perf_counter() - t0
        self.w_out = self.w_wn

        # Roofline: same-size device-to-device copy_ (forward) and triad (backward; half
        # types as float32 of the same byte size).
        self.r_src = torch.empty(case.shape, device=dev, dtype=dtype).fill_(1.0)
        self.r_dst = torch.empty_like(self.r_src).fill_(2.0)
        tdtype = base if case.itemsize >= 4 else torch.float32
        telem = -(-case.nbytes // (8 if tdtype == torch.float64 else 4))
        self.t_a, self.t_b, self.t_c = (torch.full((telem,), 1.0 + i, device=dev, dtype=tdtype)
                                        for i in range(3))
        if use_torch:
            _, self.t_norms = torch._weight_norm_interface(self.v, self.g, self.tdim)
        self._build_peers(peers, self.v, self.g, self.grad_w, device="cuda")
        torch.cuda.synchronize()

    def contenders(self, direction):
        torch, wn, dim, tdim = self.torch, self.wn, self.case.dim, self.tdim
        v, g, gw = self.v, self.g, self.grad_w
        if direction == "forward":
            src, dst, w_out = self.r_src, self.r_dst, self.w_out
            out = {
                "roofline": lambda: dst.copy_(src),
                "wnkernels torch": lambda: wn.weight_norm(v, g, dim),
                "wnkernels out=": lambda: wn.weight_norm(v, g, dim, out=w_out),
            }
            if self.use_torch:
                out["torch"] = lambda: torch._weight_norm_interface(v, g, tdim)
            out.update(self._peer_contenders(direction))
        else:
            a, b, c = self.t_a, self.t_b, self.t_c
            norms = self.norms_wn
            out = {
                "roofline": lambda: torch.add(c, b, alpha=1.0001, out=a),
                "wnkernels torch": lambda: wn.weight_norm_backward(gw, v, g, norms, dim),
            }
            if self.use_torch:
                bwd = torch.ops.aten._weight_norm_interface_backward
                tn = self.t_norms
                out["torch"] = lambda: bwd(gw, v, g, tn, tdim)
            out.update(self._peer_contenders(direction))
        return out

    def check(self):
        report = check_case(self.case, self.v, self.g, self.grad_w, self.w_wn, self.norms_wn,
                            self.grad_v_wn, self.grad_g_wn)
        self._check_peers()
        self.torch.cuda.empty_cache()
        return report


class GroupWorkload(_Workload):
    """A model's weight set: wnkernels' grouped calls against a loop of per-tensor
    calls (wnkernels' own and PyTorch's), on torch tensors (or NumPy arrays without
    torch); the roofline moves the set's total bytes."""

    def __init__(self, group: GroupCase, *, device: str = "cpu", use_torch: bool = True,
                 seed: int = 0):
        import wnkernels as wn
        self.case, self.wn, self.device = group, wn, device
        torch = require_cuda() if device == "cuda" else (import_torch() if use_torch else None)
        self.torch = torch
        cases = group.cases
        arrays = [_rng_arrays(c, seed + k) for k, c in enumerate(cases)]
        if torch is not None:
            dt = getattr(torch, group.dtype)
            dev = "cuda" if device == "cuda" else "cpu"
            arrays = [tuple(torch.from_numpy(x).to(dev, dt) for x in a) for a in arrays]
        self.vs = [a[0] for a in arrays]
        self.gs = [a[1] for a in arrays]
        self.gws = [a[2] for a in arrays]
        self.dim = group.dim
        if device == "cuda":
            self.timer = CudaEventTimer(torch)
        else:
            self.timer = CpuTimer()
        self.first_call_s = {}
        sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        self.fw = wn.weight_norm_many(self.vs, self.gs, self.dim)
        sync()
        self.first_call_s["forward"] = time.perf_counter() - t0
        self.norms = [n for _, n in self.fw]
        t0 = time.perf_counter()
        self.bw = wn.weight_norm_backward_many(self.gws, self.vs, self.gs, self.norms, self.dim)
        sync()
        self.first_call_s["backward"] = time.perf_counter() - t0
        if torch is not None:
            self.t_norms = [torch._weight_norm_interface(v, g, self.dim)[1]
                            for v, g in zip(self.vs, self.gs)]
        if device == "cpu":
            copy, triad = roofline_primitives()
            relem = -(-group.nbytes // 4)
            self.r_src, self.r_dst, self.r_c = (np.full(relem, 1.0 + i, np.float32)
                                                for i in range(3))
            self._copy, self._triad = copy, triad
        else:
            n = -(-group.nbytes // 4)
            self.t_a, self.t_b, self.t_c = (torch.full((n,), 1.0 + i, device="cuda")
                                            for i in range(3))

    def contenders(self, direction):
        wn, torch, dim = self.wn, self.torch, self.dim
        vs, gs, gws, norms = self.vs, self.gs, self.gws, self.norms
        many_name = "wnkernels many" + (" torch" if torch is not None else "")
        if direction == "forward":
            if self.device == "cpu":
                src, dst, copy = self.r_src, self.r_dst, self._copy
                out = {"roofline": lambda: copy(dst, src)}
            else:
                a, b = self.t_a, self.t_b
                out = {"roofline": lambda: a.copy_(b)}
            out[many_name] = lambda: wn.weight_norm_many(vs, gs, dim)
            out["wnkernels loop"] = lambda: [wn.weight_norm(v, g, dim) for v, g in zip(vs, gs)]
            if torch is not None:
                f = torch._weight_norm_interface
                out["torch loop"] = lambda: [f(v, g, dim) for v, g in zip(vs, gs)]
        else:
            if self.device == "cpu":
                a, b, c, triad = self.r_dst, self.r_src, self.r_c, self._triad
                out = {"roofline": lambda: triad(a, b, 1.0001, c)}
            else:
                a, b, c = self.t_a, self.t_b, self.t_c
                out = {"roofline": lambda: torch.add(c, b, alpha=1.0001, out=a)}
            out[many_name] = lambda: wn.weight_norm_backward_many(gws, vs, gs, norms, dim)
            out["wnkernels loop"] = lambda: [wn.weight_norm_backward(gw, v, g, n, dim)
                                             for gw, v, g, n in zip(gws, vs, gs, norms)]
            if torch is not None:
                f = torch.ops.aten._weight_norm_interface_backward
                tn = self.t_norms
                out["torch loop"] = lambda: [f(gw, v, g, n, dim)
                                             for gw, v, g, n in zip(gws, vs, gs, tn)]
        return out

    def check(self):
        """Each item against the reference (sampled rows), and the grouped results
        bitwise the per-tensor calls."""
        wn, dim = self.wn, self.dim
        worst: Dict[str, float] = {}
        for k, case in enumerate(self.case.cases):
            rep = check_case(case, self.vs[k], self.gs[k], self.gws[k], self.fw[k][0],
                             self.fw[k][1], self.bw[k][0], self.bw[k][1])
            for key, val in rep.items():
                worst[key] = max(worst.get(key, 0.0), val)
            w, n = wn.weight_norm(self.vs[k], self.gs[k], dim)
            gv, gg = wn.weight_norm_backward(self.gws[k], self.vs[k], self.gs[k], n, dim)
            for name, a, b in (("w", self.fw[k][0], w), ("norms", self.fw[k][1], n),
                               ("grad_v", self.bw[k][0], gv), ("grad_g", self.bw[k][1], gg)):
                if not np.array_equal(_to_f64(a), _to_f64(b), equal_nan=True):
                    raise CheckError(f"{self.case.name}: item {k} {case.shape}: the grouped "
                                     f"{name} differs from the per-tensor call's")
        return worst

