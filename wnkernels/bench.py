"""The benchmark suite and its runner (``wnkernels bench``).

Each case of the suite is timed, forward and backward, against:

* a **roofline** measured at the case's own size in the same process, right beside the
  kernel: the forward against an all-core copy of v's bytes (it must read v and write w,
  2·N·itemsize bytes), the backward against an all-core triad ``a = b*s + c`` of that size
  (read grad_w and v, write grad_v: 3·N·itemsize bytes). Caches make a small copy run
  several times faster than a large one, so one machine-wide figure would flatter the
  large cases and insult the small ones;
* PyTorch's fused kernels, ``torch._weight_norm_interface`` and
  ``torch.ops.aten._weight_norm_interface_backward`` (when torch is installed), on views of
  the same memory with the same thread count;
* a NumPy baseline (CPU only): ``g * v / sqrt((v*v).sum(axes, keepdims=True))`` and the
  backward formula written the same way.

Before anything is timed, every case checks wnkernels' results once against a float64
NumPy reference of the math (``np.allclose`` with a tolerance for the dtype), so a broken
build cannot report a fast wrong answer. Measurements are interleaved: each round takes
one sample of every contender, in a rotating order, so slow drifts of the machine (other
processes, frequency, page cache) hit all of them alike. A sample loops enough calls to
last ``min_time`` (per-call time = sample / calls); the reported time is the median over
the rounds.

The same cases drive the pytest-benchmark suite in ``bench/`` (``CPU_CASES``,
``CUDA_CASES``, `CpuWorkload`, `CudaWorkload`), so the case list lives here only.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "Case",
    "CPU_CASES",
    "CUDA_CASES",
    "CheckError",
    "CpuWorkload",
    "CudaWorkload",
    "run_suite",
    "add_arguments",
    "run_from_args",
    "main",
]

DIRECTIONS = ("forward", "backward")
# Bytes a direction must move, in units of N·itemsize: the forward reads v and writes w;
# the backward reads grad_w and v and writes grad_v (g, norms and grad_g are one value per
# row: negligible on every case of the suite).
TRAFFIC = {"forward": 2, "backward": 3}
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
SHORT_DTYPE = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64"}
# Relative tolerance of the pre-flight check per output dtype (absolute tolerance is the
# same fraction of the largest reference value, which covers the cancellation in grad_v).
# Generous on purpose: the test suite checks accuracy; this only catches broken builds.
CHECK_RTOL = {"float16": 4e-3, "bfloat16": 2e-2, "float32": 1e-5, "float64": 1e-10}


# ----------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class Case:
    """One benchmark shape: ``v`` of ``shape`` and ``dtype``, kept axis ``dim``."""

    shape: Tuple[int, ...]
    dtype: str = "float32"
    dim: int = 0
    large: bool = False      # a bandwidth case (held to the roofline targets)
    wall_clock: bool = False  # a latency case: GPU timing by wall clock, not CUDA events
    label: str = ""          # extra words for the name ("latency")

    @property
    def name(self) -> str:
        parts = ["x".join(map(str, self.shape)), SHORT_DTYPE[self.dtype]]
        if self.dim != 0:
            parts.append(f"dim={self.dim}")
        if self.label:
            parts.append(self.label)
        return " ".join(parts)

    @property
    def id(self) -> str:
        """The name as a pytest id (no spaces or '=')."""
        return self.name.replace(" ", "-").replace("=", "")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def kept_axis(self) -> int:
        return self.dim % self.ndim

    @property
    def reduced_axes(self) -> Tuple[int, ...]:
        return tuple(a for a in range(self.ndim) if a != self.kept_axis)

    @property
    def g_shape(self) -> Tuple[int, ...]:
        """Keep-dims shape of g (size 1 on every reduced axis), what PyTorch passes."""
        return tuple(n if a == self.kept_axis else 1 for a, n in enumerate(self.shape))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return ITEMSIZE[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize

    def bytes_moved(self, direction: str) -> int:
        return TRAFFIC[direction] * self.nbytes


CPU_CASES: Tuple[Case, ...] = (
    Case((4096, 4096), "float32", large=True),
    Case((4096, 4096), "float64", large=True),
    Case((4096, 4096), "bfloat16", large=True),
    Case((4096, 4096), "float32", dim=-1, large=True),
    Case((65536, 64), "float32"),
    Case((8, 1048576), "float32", large=True),
    Case((512, 256, 3, 3), "float32"),
    Case((256, 2304), "float32"),
    Case((64, 64), "float32", wall_clock=True, label="latency"),
)

# The GPU suite of issue 4.
CUDA_CASES: Tuple[Case, ...] = (
    Case((4096, 4096), "float32", large=True),
    Case((4096, 4096), "float16", large=True),
    Case((4096, 4096), "bfloat16", large=True),
    Case((4096, 4096), "float64", large=True),
    Case((16384, 4096), "bfloat16", large=True),
    Case((1024, 262144), "float32", large=True),
    Case((1048576, 64), "float32", large=True),
    Case((8, 16777216), "float32", large=True),
    Case((64, 512, 512), "float16", large=True),
    Case((512, 256, 3, 3), "float32"),
    Case((4096, 4096), "float32", dim=-1, large=True),
    Case((64, 64), "float32", wall_clock=True, label="latency"),
)


def benchmark_matrix(cases: Sequence[Case],
                     impls: Sequence[str]) -> List[Tuple[Case, str, str, str]]:
    """``(case, direction, impl, test id)`` in run order (a case's tests back to back), for
    the pytest-benchmark suite in ``bench/``; ``"wnkernels out="`` is forward only."""
    return [(c, d, i, f"{c.id}-{d}-{i.replace(' out=', '_out').replace(' ', '_')}")
            for c in cases for d in DIRECTIONS for i in impls
            if not (i == "wnkernels out=" and d == "backward")]


def select_cases(cases: Sequence[Case], patterns: Optional[Sequence[str]]) -> List[Case]:
    """Cases whose name contains any of ``patterns`` (case-insensitive; all if none)."""
    if not patterns:
        return list(cases)
    pats = [p.lower() for p in patterns]
    return [c for c in cases if any(p in c.name.lower() for p in pats)]


class CheckError(RuntimeError):
    """wnkernels' result disagrees with the float64 reference: the case is not timed."""


class SkipCase(RuntimeError):
    """The case cannot run here (a missing optional package)."""


# ------------------------------------------------------------------ optional imports

def _import_torch():
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


def _import_wnkernels():
    import wnkernels
    return wnkernels


def _roofline_primitives():
    """``(copy, triad)`` from the compiled extension, with a clear error if missing."""
    try:
        from wnkernels.cpu import _kernels as _cpu
        return _cpu.roofline_copy, _cpu.roofline_triad
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(
            "wnkernels bench: the compiled extension (wnkernels._cpu with roofline_copy "
            f"and roofline_triad) is not available: {exc}. Build or reinstall wnkernels."
        ) from exc


# --------------------------------------------------------------- bfloat16 as NumPy bits
# The NumPy baseline and the reference work on raw bfloat16 bits (uint16), so neither
# needs ml_dtypes: bf16 -> f32 is a 16-bit shift, f32 -> bf16 rounds to nearest even.

def _bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16
    return rounded.astype(np.uint16)


def _to_f64_numpy(x: Any) -> np.ndarray:
    """Any CPU result (NumPy of any float dtype incl. ml_dtypes bf16, CPU torch) as f64."""
    if type(x).__module__.startswith("torch"):
        return x.detach().to(dtype=_import_torch().float64).numpy()
    x = np.asarray(x)
    if x.dtype.name == "bfloat16":
        return _bf16_bits_to_f32(x.view(np.uint16)).astype(np.float64)
    return x.astype(np.float64)


# -------------------------------------------------------------- the float64 reference

def _reference(xp: Any, v64, g64, grad_w64, axes: Tuple[int, ...]):
    """The math of CONTRACT.md in float64 (``xp`` is numpy or torch): w, norms, grad_v, grad_g."""
    if xp is np:
        rowsum = lambda x: x.sum(axis=axes, keepdims=True)  # noqa: E731
    else:
        rowsum = lambda x: x.sum(dim=axes, keepdim=True)  # noqa: E731
    norms = xp.sqrt(rowsum(v64 * v64))
    w = g64 * v64 / norms
    grad_g = rowsum(grad_w64 * v64) / norms
    grad_v = (g64 / norms) * grad_w64 - (g64 * grad_g / (norms * norms)) * v64
    return w, norms, grad_v, grad_g


def _violation(xp: Any, x, ref, rtol: float) -> float:
    """max |x - ref| / (atol + rtol·|ref|) with atol = rtol·max|ref|: ≤ 1 is np.allclose."""
    atol = rtol * float(xp.max(xp.abs(ref)))
    return float(xp.max(xp.abs(x - ref) / (atol + rtol * xp.abs(ref))))


def _check_outputs(xp: Any, name: str,
                   results: Dict[str, Tuple[Any, Any, float]]) -> Dict[str, float]:
    """Raise CheckError unless every ``(got, ref, rtol)`` is within tolerance."""
    report = {}
    for what, (got, ref, rtol) in results.items():
        if tuple(got.shape) != tuple(ref.shape):
            raise CheckError(
                f"{name}: {what} has shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
        viol = _violation(xp, got, ref, rtol)
        if not viol <= 1.0:  # also catches NaN
            raise CheckError(
                f"{name}: {what} differs from the float64 reference by {viol:.3g}x the "
                f"tolerance (rtol={rtol:g}); not timing a wrong answer")
        report[what] = viol
    return report


# ------------------------------------------------------------------------ timers

class CpuTimer:
    """Wall-clock samples of ``number`` back-to-back calls (``perf_counter``)."""

    kind = "wall clock"

    def sample(self, fn: Callable[[], Any], number: int) -> float:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - t0) / number

    def calibrate(self, fn: Callable[[], Any], min_time: float, max_number: int = 10**6) -> int:
        """Calls per sample so that a sample lasts about ``min_time`` (at least one call)."""
        number = 1
        while True:
            t = self.sample(fn, number) * number
            if t >= 0.2 * min_time or number >= max_number:
                break
            number = min(max_number, number * 10)
        per_call = max(t / number, 1e-9)
        return int(min(max_number, max(1, math.ceil(min_time / per_call))))


class CudaWallTimer(CpuTimer):
    """Wall clock per call, including launch cost: ``number`` calls, then one synchronize."""

    kind = "wall clock"

    def __init__(self, torch):
        self.torch = torch

    def sample(self, fn, number):
        self.torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        self.torch.cuda.synchronize()
        return (time.perf_counter() - t0) / number


class CudaEventTimer(CpuTimer):
    """GPU time per call from CUDA events.

    The calls are enqueued behind a ``torch.cuda._sleep`` kernel long enough to cover the
    host's enqueueing, so the events time the GPU's work back to back, not the launch rate
    of the host (which is what `CudaWallTimer` measures).
    """

    kind = "GPU time (CUDA events)"
    MAX_CALLS = 200  # stays well inside the launch queue (~1024 pending launches)

    def __init__(self, torch):
        self.torch = torch
        self._sleep = getattr(torch.cuda, "_sleep", None)
        self._cycles_per_s = self._calibrate_sleep() if self._sleep else 0.0
        self._host_s: Dict[int, float] = {}  # id(fn) -> host seconds per call

    def _calibrate_sleep(self) -> float:
        torch = self.torch
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        cycles = 10**7
        self._sleep(cycles)  # warm-up
        torch.cuda.synchronize()
        start.record()
        self._sleep(cycles)
        end.record()
        end.synchronize()
        return cycles / max(start.elapsed_time(end) * 1e-3, 1e-6)

    def sample(self, fn, number):
        torch = self.torch
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        host = self._host_s.get(id(fn))
        if self._sleep is not None and host is not None:
            pad = 1.5 * host * number + 50e-6
            self._sleep(int(pad * self._cycles_per_s))
        t0 = time.perf_counter()
        start.record()
        for _ in range(number):
            fn()
        end.record()
        enqueue = time.perf_counter() - t0
        end.synchronize()
        # Learn the host's enqueue cost per call (an overestimate when the first sample
        # blocked on a full queue: harmless, the pad only grows).
        self._host_s[id(fn)] = max(self._host_s.get(id(fn), 0.0), enqueue / number)
        return start.elapsed_time(end) * 1e-3 / number

    def calibrate(self, fn, min_time, max_number=MAX_CALLS):
        return super().calibrate(fn, min_time, max_number=min(max_number, self.MAX_CALLS))


# --------------------------------------------------------------------- workloads

class _Workload:
    """Data and contenders of one case; subclasses build them for one device."""

    timer: CpuTimer
    case: Case

    def contenders(self, direction: str) -> Dict[str, Callable[[], Any]]:
        """Ordered {name: zero-argument callable}; the first one is the roofline."""
        raise NotImplementedError

    def check(self) -> Dict[str, float]:
        raise NotImplementedError

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


class CpuWorkload(_Workload):
    """One CPU case: NumPy arrays for wnkernels, torch views of them, NumPy baselines."""

    def __init__(self, case: Case, *, use_torch: bool = True, seed: int = 0):
        self.case = case
        self.timer = CpuTimer()
        wn = _import_wnkernels()
        torch = _import_torch() if use_torch else None
        copy, triad = _roofline_primitives()
        self.wn, self.torch = wn, torch
        dim, axes = case.dim, case.reduced_axes
        self.first_call_s: Dict[str, float] = {}

        v32, g32, gw32 = _rng_arrays(case, seed)
        if case.dtype == "bfloat16":
            # Keep the data as raw bf16 bits; every consumer views the same memory.
            self._bits = tuple(_f32_to_bf16_bits(x) for x in (v32, g32, gw32))
            v_f, g_f, gw_f = (_bf16_bits_to_f32(b) for b in self._bits)
            ml_dtypes = _import_ml_dtypes()
            if ml_dtypes is not None:
                v, g, gw = (b.view(ml_dtypes.bfloat16) for b in self._bits)
            elif torch is not None:
                v, g, gw = (torch.from_numpy(b.view(np.int16)).view(torch.bfloat16)
                            for b in self._bits)
            else:
                raise SkipCase("the bfloat16 case needs ml_dtypes or torch installed")
        else:
            v, g, gw = (x.astype(case.dtype) for x in (v32, g32, gw32))
            v_f, g_f, gw_f = v, g, gw
        del v32, g32, gw32
        self.v, self.g, self.grad_w = v, g, gw
        self._reference_inputs = (v_f, g_f, gw_f)

        # wnkernels: the forward allocates w like torch does; "out=" reuses a buffer.
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

        # PyTorch: views of the same memory.
        if torch is not None:
            def as_torch(x):
                if isinstance(x, np.ndarray):
                    if x.dtype.name == "bfloat16":
                        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
                    return torch.from_numpy(x)
                return x
            self.tv, self.tg, self.tgw = as_torch(v), as_torch(g), as_torch(gw)
            self.tdim = case.kept_axis  # torch wants 0 or ndim-1, not -1
            _, self.t_norms = torch._weight_norm_interface(self.tv, self.tg, self.tdim)
            # wnkernels called on the torch tensors, as a framework calls it
            self.t_norms_wn = wn.weight_norm(self.tv, self.tg, dim)[1]

        # NumPy baseline (half types computed in float32 with conversions, as a NumPy
        # user would write it).
        if case.dtype == "bfloat16":
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
            out["numpy"] = self._np_backward
        return out

    def check(self):
        case = self.case
        v_f, g_f, gw_f = (np.asarray(x, dtype=np.float64) for x in self._reference_inputs)
        w, norms, grad_v, grad_g = _reference(np, v_f, g_f, gw_f, case.reduced_axes)
        rt = CHECK_RTOL[case.dtype]
        rt_norm = CHECK_RTOL["float64" if case.dtype == "float64" else "float32"]
        return _check_outputs(np, case.name, {
            "w": (_to_f64_numpy(self.w_wn), w, rt),
            "norms": (_to_f64_numpy(self.norms_wn), norms, rt_norm),
            "grad_v": (_to_f64_numpy(self.grad_v_wn), grad_v, rt),
            "grad_g": (_to_f64_numpy(self.grad_g_wn), grad_g, rt),
        })


class CudaWorkload(_Workload):
    """One GPU case on torch CUDA tensors (the current device and stream)."""

    def __init__(self, case: Case, *, use_torch: bool = True, seed: int = 0, torch=None):
        torch = torch or _require_cuda()
        self.case, self.torch, self.use_torch = case, torch, use_torch
        self.wn = wn = _import_wnkernels()
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
        torch.cuda.synchronize()

    def contenders(self, direction):
        torch, wn, dim, tdim = self.torch, self.wn, self.case.dim, self.tdim
        v, g, gw = self.v, self.g, self.grad_w
        if direction == "forward":
            src, dst, w_out = self.r_src, self.r_dst, self.w_out
            out = {
                "roofline": lambda: dst.copy_(src),
                "wnkernels": lambda: wn.weight_norm(v, g, dim),
                "wnkernels out=": lambda: wn.weight_norm(v, g, dim, out=w_out),
            }
            if self.use_torch:
                out["torch"] = lambda: torch._weight_norm_interface(v, g, tdim)
        else:
            a, b, c = self.t_a, self.t_b, self.t_c
            norms = self.norms_wn
            out = {
                "roofline": lambda: torch.add(c, b, alpha=1.0001, out=a),
                "wnkernels": lambda: wn.weight_norm_backward(gw, v, g, norms, dim),
            }
            if self.use_torch:
                bwd = torch.ops.aten._weight_norm_interface_backward
                tn = self.t_norms
                out["torch"] = lambda: bwd(gw, v, g, tn, tdim)
        return out

    def check(self):
        torch, case = self.torch, self.case
        f64 = torch.float64
        w, norms, grad_v, grad_g = _reference(
            torch, self.v.to(f64), self.g.to(f64), self.grad_w.to(f64), case.reduced_axes)
        rt = CHECK_RTOL[case.dtype]
        rt_norm = CHECK_RTOL["float64" if case.dtype == "float64" else "float32"]
        report = _check_outputs(torch, case.name, {
            "w": (self.w_wn.to(f64), w, rt),
            "norms": (self.norms_wn.to(f64), norms, rt_norm),
            "grad_v": (self.grad_v_wn.to(f64), grad_v, rt),
            "grad_g": (self.grad_g_wn.to(f64), grad_g, rt),
        })
        del w, norms, grad_v, grad_g
        torch.cuda.empty_cache()
        return report


def _require_cuda():
    torch = _import_torch()
    if torch is None:
        raise RuntimeError("wnkernels bench --device cuda needs PyTorch with CUDA "
                           "(pip install torch); torch is not installed")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"wnkernels bench --device cuda: no CUDA device available to PyTorch "
            f"{torch.__version__} (torch.cuda.is_available() is False; "
            f"torch.version.cuda={torch.version.cuda})")
    return torch


# ---------------------------------------------------------------------- measuring

# Pause between two contenders' samples: OpenMP worker threads (wnkernels' and torch's
# runtimes are distinct) spin for a while after a parallel region; on a 2-core machine a
# spinning pool steals a core from whoever runs next.
SETTLE_S = 0.005


def measure(contenders: Dict[str, Callable[[], Any]], timer: CpuTimer, *, repeat: int,
            min_time: float, on_round: Optional[Callable[[], None]] = None,
            settle: float = SETTLE_S) -> Dict[str, Dict[str, Any]]:
    """Interleaved samples of every contender: ``repeat`` rounds in rotating order."""
    names = list(contenders)
    number = {}
    for name in names:
        contenders[name]()  # warm-up (caches, page faults, lazy initialization)
        number[name] = timer.calibrate(contenders[name], min_time)
    samples: Dict[str, List[float]] = {n: [] for n in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeat):
            for name in names[r % len(names):] + names[:r % len(names)]:
                if settle:
                    time.sleep(settle)
                samples[name].append(timer.sample(contenders[name], number[name]))
            if on_round is not None:
                on_round()
    finally:
        if gc_was_enabled:
            gc.enable()
    return {n: {"time_s": float(np.median(samples[n])), "min_s": min(samples[n]),
                "samples_s": samples[n], "calls_per_sample": number[n]} for n in names}


def _direction_result(case: Case, direction: str, timings: Dict[str, Dict[str, Any]]):
    nbytes = case.bytes_moved(direction)
    roof = timings["roofline"]["time_s"]
    for t in timings.values():
        t["gbps"] = nbytes / t["time_s"] / 1e9
        t["pct_roofline"] = 100.0 * roof / t["time_s"]
    res: Dict[str, Any] = {"bytes_moved": nbytes, "results": timings}
    wn = timings["wnkernels"]["time_s"]
    for peer in ("torch", "numpy"):
        if peer in timings:
            res[f"speedup_vs_{peer}"] = timings[peer]["time_s"] / wn
    return res


def _geomean(xs: Sequence[float]) -> Optional[float]:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None


def summarize(case_results: List[Dict[str, Any]]) -> Dict[str, Any]:
    vs_torch, vs_numpy, roof_large = [], [], []
    for cr in case_results:
        if cr["status"] != "ok":
            continue
        for d in DIRECTIONS:
            dr = cr[d]
            if "speedup_vs_torch" in dr:
                vs_torch.append((dr["speedup_vs_torch"], cr["case"], d))
            if "speedup_vs_numpy" in dr:
                vs_numpy.append(dr["speedup_vs_numpy"])
            if cr["large"]:
                roof_large.append((dr["results"]["wnkernels"]["pct_roofline"], cr["case"], d))
    out: Dict[str, Any] = {
        "cases_ok": sum(cr["status"] == "ok" for cr in case_results),
        "cases_failed": [cr["case"] for cr in case_results if cr["status"] == "check failed"],
        "cases_error": [cr["case"] for cr in case_results if cr["status"] == "error"],
        "cases_skipped": [cr["case"] for cr in case_results if cr["status"] == "skipped"],
        "geomean_speedup_vs_torch": _geomean([s for s, _, _ in vs_torch]),
        "geomean_speedup_vs_numpy": _geomean(vs_numpy),
    }
    if vs_torch:
        s, c, d = min(vs_torch)
        out["worst_vs_torch"] = {"case": c, "direction": d, "speedup": s}
    if roof_large:
        p, c, d = min(roof_large)
        out["lowest_pct_roofline_large"] = {"case": c, "direction": d, "pct_roofline": p}
    return out


# ------------------------------------------------------------------------ output

def _fmt_time(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:7.3f} {unit}"
    return f"{s / 1e-9:7.1f} ns"


def _fmt_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


ROOFLINE_LABEL = {("cpu", "forward"): "roofline (copy)", ("cpu", "backward"): "roofline (triad)",
                  ("cuda", "forward"): "roofline (copy_)", ("cuda", "backward"): "roofline (triad)"}


def format_case(cr: Dict[str, Any], device: str) -> str:
    head = (f"== {cr['case']}  ({'x'.join(map(str, cr['shape']))} {cr['dtype']}, dim={cr['dim']}, "
            f"{cr['elements']:,} elements, {_fmt_bytes(cr['bytes'])}) ==")
    if cr["status"] != "ok":
        return f"{head}\n  {cr['status'].upper()}: {cr['message']}"
    lines = [head]
    timer = cr.get("timer")
    if timer:
        lines[0] += f"  [{timer}]"
    lines.append(f"  {'direction':<9} {'implementation':<17} {'time/call':>10} {'GB/s':>8} "
                 f"{'% roof':>7} {'vs torch':>9} {'vs NumPy':>9}")
    for d in DIRECTIONS:
        dr = cr[d]
        first = True
        for name, t in dr["results"].items():
            label = ROOFLINE_LABEL[(device, d)] if name == "roofline" else name
            vt = vn = ""
            if name == "wnkernels":
                if "speedup_vs_torch" in dr:
                    vt = f"{dr['speedup_vs_torch']:8.2f}x"
                if "speedup_vs_numpy" in dr:
                    vn = f"{dr['speedup_vs_numpy']:8.1f}x"
            lines.append(f"  {d if first else '':<9} {label:<17} {_fmt_time(t['time_s']):>10} "
                         f"{t['gbps']:8.1f} {t['pct_roofline']:6.1f}% {vt:>9} {vn:>9}")
            first = False
    fc = cr.get("first_call_s")
    if fc and device == "cuda":
        lines.append(f"  first call (includes compile): forward {fc['forward']:.3f} s, "
                     f"backward {fc['backward']:.3f} s")
    return "\n".join(lines)


def format_summary(summary: Dict[str, Any], threads: Optional[int]) -> str:
    parts = []
    gt = summary.get("geomean_speedup_vs_torch")
    if not summary["cases_ok"]:
        parts.append("no case was measured")
    elif gt is not None:
        w = summary["worst_vs_torch"]
        parts.append(f"geometric-mean speed-up vs torch {gt:.2f}x; worst "
                     f"{w['case']} {w['direction']} {w['speedup']:.2f}x")
    else:
        parts.append("no torch comparison (torch not installed or --no-torch)")
    gn = summary.get("geomean_speedup_vs_numpy")
    if gn is not None:
        parts.append(f"vs NumPy {gn:.1f}x")
    lo = summary.get("lowest_pct_roofline_large")
    if lo:
        parts.append(f"lowest % of roofline on a large case: {lo['case']} {lo['direction']} "
                     f"{lo['pct_roofline']:.1f}%")
    line = "Summary" + (f" ({threads} threads)" if threads else "") + ": " + "; ".join(parts)
    if summary.get("warning"):
        line += "\n" + summary["warning"]
    if summary["cases_failed"]:
        line += f"\nCHECK FAILED (not timed): {', '.join(summary['cases_failed'])}"
    if summary["cases_error"]:
        line += f"\nERROR (not timed): {', '.join(summary['cases_error'])}"
    if summary["cases_skipped"]:
        line += f"\nskipped: {', '.join(summary['cases_skipped'])}"
    return line


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(mod: str) -> Optional[str]:
    try:
        from importlib.metadata import version
        return version(mod)
    except Exception:
        return None


def machine_info(device: str, threads: Optional[int]) -> Dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "threads": threads,
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in
                     ("wnkernels", "numpy", "torch", "ml_dtypes", "numba-cuda", "numba")},
    }
    wn_mod = sys.modules.get("wnkernels")
    if wn_mod is not None and getattr(wn_mod, "__version__", None):
        info["versions"]["wnkernels"] = wn_mod.__version__
    if device == "cuda":
        torch = _import_torch()
        if torch is not None and torch.cuda.is_available():
            p = torch.cuda.get_device_properties(torch.cuda.current_device())
            info["gpu"] = {"name": p.name, "memory_bytes": p.total_memory,
                           "multiprocessors": p.multi_processor_count,
                           "capability": f"{p.major}.{p.minor}",
                           "torch_cuda": torch.version.cuda}
    return info


class OtherLoad:
    """CPU time used by *other* processes over an interval, in CPUs (from /proc/stat minus
    this process's own CPU time). On a 2-core machine one busy neighbour makes a 2-thread
    OpenMP kernel wait a whole scheduler slice (milliseconds) at every barrier."""

    def __init__(self):
        self.start = self._snapshot()

    @staticmethod
    def _snapshot():
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / hz  # all but idle and iowait
        t = os.times()
        return time.monotonic(), busy, t.user + t.system

    def cpus(self) -> Optional[float]:
        end = self._snapshot()
        if self.start is None or end is None or end[0] - self.start[0] <= 0:
            return None
        others = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return max(0.0, others / (end[0] - self.start[0]))


def _busy_warning(cpus: Optional[float], when: str) -> Optional[str]:
    if cpus is None or cpus < 0.25:
        return None
    return (f"warning: other processes used {cpus:.1f} CPUs {when}: multi-threaded timings "
            f"are unreliable on a busy machine; rerun when it is idle")


# ------------------------------------------------------------------------ progress

class _Progress:
    """tqdm when installed, else a one-line stderr counter; or nothing."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.bar = total, 0, None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="round", file=sys.stderr, leave=False,
                                dynamic_ncols=True)
            except ImportError:
                self.bar = None
        self.desc = ""

    def describe(self, text: str) -> None:
        self.desc = text
        if self.bar is not None:
            self.bar.set_description(text, refresh=True)
        elif self.enabled:
            self._counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            self._counter()

    def _counter(self):
        sys.stderr.write(f"\r[{self.done}/{self.total}] {self.desc}\033[K")
        sys.stderr.flush()

    def write(self, text: str, file=None) -> None:
        file = file or sys.stdout
        if self.bar is not None:
            self.bar.write(text, file=file)
        else:
            if self.enabled:
                sys.stderr.write("\r\033[K")
                sys.stderr.flush()
            print(text, file=file, flush=True)
            if self.enabled and self.done < self.total:
                self._counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


# ------------------------------------------------------------------------ the runner

def run_suite(cases: Sequence[Case], *, device: str = "cpu", repeat: int = 7,
              min_time: float = 0.1, threads: Optional[int] = None, use_torch: bool = True,
              progress: bool = True, out=None, seed: int = 0) -> Dict[str, Any]:
    """Check, then time, every case; print a table per case to ``out``; return the data."""
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    out = out or sys.stdout
    if device == "cuda":
        torch = _require_cuda()
    elif device == "cpu":
        torch = _import_torch() if use_torch else None
    else:
        raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}")
    wn = _import_wnkernels()
    if device == "cpu":
        _roofline_primitives()  # fail early and clearly without the extension
    saved_torch_threads = torch.get_num_threads() if torch is not None else None
    if threads is not None:
        wn.set_num_threads(threads)
    n_threads = wn.get_num_threads()
    if torch is not None and device == "cpu":
        torch.set_num_threads(n_threads)

    load = OtherLoad()
    time.sleep(0.3)
    busy_before = load.cpus()
    msg = _busy_warning(busy_before, "just before the run")
    if msg:
        print(msg, file=sys.stderr, flush=True)
    load = OtherLoad()

    results: Dict[str, Any] = {
        "device": device,
        "machine": machine_info(device, n_threads),
        "config": {"repeat": repeat, "min_time_s": min_time, "threads": n_threads,
                   "torch": torch is not None and use_torch, "seed": seed,
                   "settle_s": SETTLE_S},
        "cases": [],
    }
    bar = _Progress(total=len(cases) * len(DIRECTIONS) * repeat, enabled=progress)
    try:
        for case in cases:
            cr: Dict[str, Any] = {"case": case.name, "shape": list(case.shape),
                                  "dtype": case.dtype, "dim": case.dim,
                                  "elements": case.size, "bytes": case.nbytes,
                                  "large": case.large, "status": "ok"}
            bar.describe(f"{case.name}: preparing")
            done_before = bar.done
            workload = None
            try:
                if device == "cuda":
                    workload = CudaWorkload(case, use_torch=use_torch, seed=seed, torch=torch)
                else:
                    workload = CpuWorkload(case, use_torch=use_torch, seed=seed)
                bar.describe(f"{case.name}: checking")
                cr["check"] = workload.check()
                cr["first_call_s"] = workload.first_call_s
                cr["timer"] = workload.timer.kind
                for d in DIRECTIONS:
                    bar.describe(f"{case.name} {d}")
                    timings = measure(workload.contenders(d), workload.timer, repeat=repeat,
                                      min_time=min_time, on_round=bar.update)
                    cr[d] = _direction_result(case, d, timings)
            except CheckError as exc:
                cr["status"], cr["message"] = "check failed", str(exc)
            except SkipCase as exc:
                cr["status"], cr["message"] = "skipped", str(exc)
            except Exception as exc:  # a crash in one case must not hide the others
                cr["status"] = "error"
                cr["message"] = f"{type(exc).__name__}: {exc}"
            if cr["status"] != "ok":
                bar.update(len(DIRECTIONS) * repeat - (bar.done - done_before))
            if workload is not None:
                workload.close()
            del workload
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            results["cases"].append(cr)
            bar.write(format_case(cr, device) + "\n", file=out)
    finally:
        bar.close()
        if saved_torch_threads is not None and device == "cpu":
            torch.set_num_threads(saved_torch_threads)
    results["summary"] = summarize(results["cases"])
    busy_during = load.cpus()
    results["machine"]["other_load_cpus"] = {"before": busy_before, "during": busy_during}
    msg = _busy_warning(busy_during, "on average during the run")
    if msg:
        results["summary"]["warning"] = msg
    print(format_summary(results["summary"], n_threads if device == "cpu" else None),
          file=out, flush=True)
    return results


# ------------------------------------------------------------------------ the CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``wnkernels bench``."""
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="which suite to run (default: cpu)")
    p.add_argument("--json", metavar="PATH",
                   help="also write every measurement and the machine info to PATH")
    p.add_argument("--cases", metavar="SUBSTR", nargs="+",
                   help="run only the cases whose name contains one of these substrings "
                        "(e.g. --cases 4096x4096 latency); see --list")
    p.add_argument("--list", action="store_true", help="list the suite's cases and exit")
    p.add_argument("--repeat", type=int, default=7, metavar="N",
                   help="interleaved rounds per contender; the median is reported (default: 7)")
    p.add_argument("--min-time", type=float, default=0.1, metavar="SECONDS",
                   help="shortest timing sample; fast calls are looped to fill it (default: 0.1)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for wnkernels, the roofline and torch "
                        "(default: wnkernels' default, all cores)")
    p.add_argument("--no-torch", action="store_true",
                   help="do not import or time PyTorch on the CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)


def run_from_args(args: argparse.Namespace) -> int:
    suite = CUDA_CASES if args.device == "cuda" else CPU_CASES
    if args.list:
        for c in suite:
            print(f"{c.name:<28} shape={c.shape} dtype={c.dtype} dim={c.dim}"
                  f"{' (large)' if c.large else ''}")
        return 0
    cases = select_cases(suite, args.cases)
    if not cases:
        print(f"wnkernels bench: no case matches {args.cases}; --list shows them",
              file=sys.stderr)
        return 2
    if args.repeat < 1 or args.min_time < 0 or (args.threads is not None and args.threads < 1):
        print("wnkernels bench: --repeat and --threads must be >= 1, --min-time >= 0",
              file=sys.stderr)
        return 2
    try:
        results = run_suite(cases, device=args.device, repeat=args.repeat,
                            min_time=args.min_time, threads=args.threads,
                            use_torch=args.device == "cuda" or not args.no_torch,
                            progress=not args.no_progress,
                            seed=args.seed)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}", file=sys.stderr)
    summary = results["summary"]
    return 1 if summary["cases_failed"] or summary["cases_error"] else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``wnkernels`` console script: ``wnkernels bench [options]``."""
    parser = argparse.ArgumentParser(prog="wnkernels", description="wnkernels command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    bench = sub.add_parser("bench", help="benchmark wnkernels against the memory roofline, "
                                         "PyTorch and NumPy",
                           description="Time wnkernels' forward and backward on every "
                           "case of the suite (--list) beside a same-size memory roofline "
                           "(all-core copy / triad), PyTorch's fused kernels and NumPy, after "
                           "checking its results against a float64 reference.")
    add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return run_from_args(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2
