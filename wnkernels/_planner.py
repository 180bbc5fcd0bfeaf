"""Validation and planning: every check on a call's arguments, in one place.

A call is planned from the *descriptions* of its arguments (`ArrayInfo`: kind,
device, dtype, shape, strides, 16-byte phase, flags) and ``dim`` -- never from
their data, and without allocating anything.  The `Plan` says what the call
produces (each output's shape, dtype and strides), how its arrays are read (the
rows x elements `Layout`), which arguments must be copied first (uneven
per-row arrays, misaligned or byte-swapped NumPy input, torch's negative
bit) and which overlaps must be checked per call.  A backend compiles a plan
into an executable (`wnkernels._dispatch.Executable`) that the dispatcher
caches under the arguments' keys; every later call with the same key runs it
directly.  `Plan.outputs` is also what a framework's shape function needs.

Errors: `TypeError` (not an array, wrong dtype, mixed kinds), `ValueError`
(shapes, out, eps, devices), `numpy.exceptions.AxisError` (dim), each naming
the argument and the shapes.  Grouped calls prefix the message with the item.
"""

from __future__ import annotations

import sys
from math import isfinite
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ._arrays import ArrayInfo
from ._dtypes import DTYPES, NAMES
from ._layout import make_layout, normalize_dim

__all__ = ["FORWARD", "BACKWARD", "ROW_SCALE", "OP_NAMES", "Plan", "GroupPlan",
           "OutSpec", "describe", "check_eps", "plan_call", "plan_group",
           "check_overlaps", "dense_strides"]

# Operations (the codes of csrc/wn.h enum wn_op).
FORWARD, BACKWARD, ROW_SCALE = 0, 1, 2
OP_NAMES = {FORWARD: "weight_norm", BACKWARD: "weight_norm_backward",
            ROW_SCALE: "row_scale"}
# Argument names per operation, in call order.
ARG_NAMES = {FORWARD: ("v", "g", "out"), BACKWARD: ("grad_w", "v", "g", "norms"),
             ROW_SCALE: ("v", "g")}

_LIBRARY = {"numpy": "NumPy", "torch": "torch", "torch-cuda": "torch",
            "cupy": "CuPy", "numba": "numba", "cai": "CUDA array interface",
            "dlpack": "DLPack"}


# ------------------------------------------------------------------ intake

def _maybe_gpu(x) -> bool:
    """Cheap pre-check (no numba import) for objects the CUDA backend may claim."""
    if hasattr(x, "__cuda_array_interface__"):
        return True
    mod = type(x).__module__ or ""
    if mod.startswith(("cupy", "numba")):
        return True
    dev = getattr(x, "__dlpack_device__", None)
    if dev is not None:
        try:
            return dev()[0] in (2, 3, 13)   # kDLCUDA, kDLCUDAHost, kDLCUDAManaged
        except Exception:
            return False
    return False


def _backend(name: str):
    if name == "cpu":
        from . import cpu
        return cpu
    from . import cuda
    return cuda


def describe(name: str, x) -> ArrayInfo:
    """`ArrayInfo` of argument ``name`` from the backend that claims it;
    TypeError for anything that is not an array of a supported kind."""
    if isinstance(x, np.ndarray):
        return _backend("cpu").describe(name, x)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        if x.is_cuda:
            return _backend("cuda").describe(name, x)
        return _backend("cpu").describe(name, x)
    if isinstance(x, (int, float, complex, bool, np.generic, list, tuple, str, bytes)) \
            or x is None:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if _maybe_gpu(x) and _backend("cuda").claims(x):
        return _backend("cuda").describe(name, x)
    if hasattr(x, "__array_interface__") or hasattr(x, "__dlpack__"):
        return _backend("cpu").describe(name, x)
    raise TypeError(f"{name} must be an array, got {type(x).__name__}")


def check_eps(eps) -> float:
    """eps as a float: a real number, finite and >= 0."""
    if eps.__class__ is float and 0.0 <= eps < _INF:
        return eps
    if isinstance(eps, (bool, np.bool_)) or not isinstance(
            eps, (int, float, np.floating, np.integer)):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not (eps >= 0.0 and isfinite(eps)):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    return eps


_INF = float("inf")


# ------------------------------------------------------------------ plans

class OutSpec(NamedTuple):
    """One output: ``shape``, ``dtype`` (name), element ``strides`` (dense), and
    ``arg`` -- the argument position it is (``out=``) or None (allocated)."""
    name: str
    shape: Tuple[int, ...]
    dtype: str
    strides: Tuple[int, ...]
    arg: Optional[int] = None


class ArgSpec(NamedTuple):
    """How one argument is read: ``prep`` is None (in place), "copy" (a
    C-contiguous, aligned, native copy first) or "resolve" (torch's negative
    bit resolved, contiguous); ``span``: its [lo, hi) bytes around its data
    pointer; ``phase``: its address mod 16 when planned (part of its key)."""
    name: str
    shape: Tuple[int, ...]
    strides: Tuple[int, ...]
    itemsize: int
    span: Tuple[int, int]
    phase: int
    prep: Optional[str]


class Plan:
    """What one call does, decided from its arguments' descriptions (see the
    module docstring).  ``layout`` arrays: forward [v, w]; backward
    [v, grad_w, grad_v]; row scale [v, w] (the forward's layout; w is not
    written).  ``g_stride`` / ``n_stride``: element
    stride between the rows of g / norms (after any copy).  ``overlaps``:
    (output arg, input arg, alias allowed) pairs checked per call."""

    __slots__ = ("op", "backend", "kind", "device", "dtype", "layout", "args",
                 "outputs", "g_stride", "n_stride", "overlaps", "kept", "dim")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)

    @property
    def prepped(self) -> bool:
        return any(a.prep for a in self.args if a is not None)

    def __repr__(self):
        outs = ", ".join(f"{o.name}{o.shape}:{o.dtype}" for o in self.outputs)
        return (f"Plan({OP_NAMES[self.op]}, {self.kind}, {self.dtype}, rows={self.layout.nrows} "
                f"x {self.layout.rowlen}, outputs=[{outs}])")


class GroupPlan:
    """A grouped call: one `Plan` per item (all of one backend, kind and dtype)."""

    __slots__ = ("op", "backend", "kind", "device", "dtype", "items")

    def __init__(self, op, items):
        self.op = op
        self.items = tuple(items)
        first = self.items[0] if self.items else None
        self.backend = first.backend if first else "cpu"
        self.kind = first.kind if first else "numpy"
        self.device = first.device if first else ("cpu", 0)
        self.dtype = first.dtype if first else "float32"


def dense_strides(shape, strides) -> Tuple[int, ...]:
    """Element strides of a dense array of ``shape`` with the axis order of
    ``strides`` (outermost = largest |stride|; ties keep axis order)."""
    order = sorted(range(len(shape)), key=lambda i: -abs(strides[i]))
    out = [0] * len(shape)
    step = 1
    for ax in reversed(order):
        out[ax] = step
        step *= max(shape[ax], 1)
    return tuple(out)


def _c_strides(shape) -> Tuple[int, ...]:
    return dense_strides(shape, range(len(shape), 0, -1))


def _check_family(infos: Dict[str, ArrayInfo]) -> None:
    libs = {_LIBRARY[i.kind] for i in infos.values()}
    if len(libs) > 1:
        names = ", ".join(f"{n}: {_LIBRARY[i.kind]}" for n, i in infos.items())
        raise TypeError(f"all arrays must be of one kind, got {names}")
    devs = {i.device for i in infos.values()}
    if len(devs) > 1:
        names = ", ".join(f"{n}: {i.device[0]}:{i.device[1]}" for n, i in infos.items())
        raise ValueError(f"all arrays must be on one device, got {names}")


def _check_dtypes(infos: Dict[str, ArrayInfo], norms: Optional[ArrayInfo] = None) -> str:
    for n, i in infos.items():
        if i.dtype not in DTYPES:
            raise TypeError(f"{n}: unsupported dtype {i.dtype}; expected {NAMES}")
    dts = {i.dtype for i in infos.values()}
    if len(dts) > 1:
        names = ", ".join(f"{n}: {i.dtype}" for n, i in infos.items())
        raise TypeError(f"arrays must share one dtype, got {names}")
    dtype = dts.pop()
    if norms is not None and norms.dtype != DTYPES[dtype].norm:
        raise TypeError(f"norms: expected dtype {DTYPES[dtype].norm} (as weight_norm "
                        f"returns it for {dtype}), got {norms.dtype}")
    return dtype


def _g_shapes(vshape, kept):
    keep = tuple(n if ax in kept else 1 for ax, n in enumerate(vshape))
    flat = tuple(vshape[ax] for ax in kept)
    return (keep, flat) if kept else (keep, (), (1,))


def _check_g_shape(name, info, vshape, kept, dim):
    allowed = _g_shapes(vshape, kept)
    if info.shape not in allowed:
        want = " or ".join(str(s) for s in dict.fromkeys(allowed))
        raise ValueError(f"{name}: expected shape {want} for v of shape "
                         f"{tuple(vshape)} with dim={dim!r}, got {info.shape}")


def _row_stride(shape, strides):
    """Element stride between consecutive rows of a per-row array (g, norms),
    or None when its rows are not evenly spaced (then it is copied)."""
    dims = [(n, s) for n, s in zip(shape, strides) if n != 1]
    if not dims or 0 in shape:      # one row, or none
        return 0
    for (n_out, s_out), (n_in, s_in) in zip(dims, dims[1:]):
        if s_out != s_in * n_in:
            return None
    return dims[-1][1]


def _may_overlap_itself(shape, strides) -> bool:
    """Whether two elements of an array may share memory: axes taken by
    increasing |stride|, each must step past everything the smaller ones
    reach.  Exact for broadcast (zero) strides and for every layout a
    transpose or slice of a dense array has; a few exotic interleavings that
    do not overlap are refused too."""
    if 0 in shape:
        return False
    reach = 0
    for st, n in sorted((abs(st), n) for n, st in zip(shape, strides) if n > 1):
        if st <= reach:
            return True
        reach += st * (n - 1)
    return False


def _arg(name: str, info: ArrayInfo, prep: Optional[str]) -> ArgSpec:
    return ArgSpec(name, tuple(info.shape), tuple(info.strides), info.itemsize,
                   info.span(), info.ptr & 15, prep)


def _read_prep(info: ArrayInfo) -> Optional[str]:
    """How an input must be prepared before the kernels read it in place."""
    if info.resolve:
        return "resolve"
    if not info.aligned or not info.native:
        return "copy"
    return None


def _strides_after(info: ArrayInfo, prep: Optional[str]) -> Tuple[int, ...]:
    return _c_strides(info.shape) if prep else tuple(info.strides)


def _per_row(info: ArrayInfo, prep: Optional[str]):
    """(prep, row stride) for g / norms: copied (contiguous) if rows are uneven."""
    stride = _row_stride(info.shape, _strides_after(info, prep))
    if stride is None:
        return "copy" if prep is None else prep, _row_stride(info.shape, _c_strides(info.shape))
    return prep, stride


def _describe_all(op, args, descs) -> Dict[str, Optional[ArrayInfo]]:
    infos = {}
    for i, (name, x) in enumerate(zip(ARG_NAMES[op], args)):
        if x is None and name == "out":
            infos[name] = None
            continue
        d = descs[i] if descs is not None else None
        infos[name] = d if d is not None else describe(name, x)
    return infos


def plan_call(op: int, args: Sequence[Any], descs: Optional[Sequence] = None,
              dim=0) -> Plan:
    """Validate one call of ``op`` on ``args`` (in call order; ``descs``: any
    descriptions already made, by position) and plan it.  Raises on bad input."""
    infos = _describe_all(op, args, descs)
    present = {n: i for n, i in infos.items() if i is not None}
    _check_family(present)
    if op == BACKWARD:
        ni = present["norms"]
        dtype = _check_dtypes({n: i for n, i in present.items() if n != "norms"}, norms=ni)
    else:
        oi = present.pop("out", None)
        dtype = _check_dtypes(present)
        if oi is not None:
            present["out"] = oi
    vi, gi = present["v"], present["g"]
    ndim = len(vi.shape)
    kept = normalize_dim(dim, ndim)
    _check_g_shape("g", gi, vi.shape, kept, dim)
    names = ARG_NAMES[op]
    pos = {n: k for k, n in enumerate(names)}
    argspecs: List[Optional[ArgSpec]] = [None] * len(names)
    overlaps = []

    v_prep = _read_prep(vi)
    g_prep, g_stride = _per_row(gi, _read_prep(gi))
    argspecs[pos["v"]] = _arg("v", vi, v_prep)
    argspecs[pos["g"]] = _arg("g", gi, g_prep)
    v_strides = _strides_after(vi, v_prep)
    w_dense = dense_strides(vi.shape, vi.strides)
    n_stride = 0

    if op == BACKWARD:
        gwi, ni = present["grad_w"], present["norms"]
        if gwi.shape != vi.shape:
            raise ValueError(f"grad_w: expected shape {vi.shape} (v's), got {gwi.shape}")
        _check_g_shape("norms", ni, vi.shape, kept, dim)
        gw_prep = _read_prep(gwi)
        n_prep, n_stride = _per_row(ni, _read_prep(ni))
        argspecs[pos["grad_w"]] = _arg("grad_w", gwi, gw_prep)
        argspecs[pos["norms"]] = _arg("norms", ni, n_prep)
        outputs = (OutSpec("grad_v", tuple(vi.shape), dtype, w_dense),
                   OutSpec("grad_g", tuple(gi.shape), dtype, _c_strides(gi.shape)))
        lay_strides = (v_strides, _strides_after(gwi, gw_prep), w_dense)
    else:
        norms = OutSpec("norms", tuple(gi.shape), DTYPES[dtype].norm, _c_strides(gi.shape))
        if op == ROW_SCALE:
            outputs = (OutSpec("scale", tuple(gi.shape), dtype, _c_strides(gi.shape)), norms)
            # the forward's layout (as if w were allocated), so that every
            # backend sums each row exactly as weight_norm(v, g) does
            lay_strides = (v_strides, w_dense)
        else:
            oi = present.get("out")
            if oi is None:
                outputs = (OutSpec("w", tuple(vi.shape), dtype, w_dense), norms)
                lay_strides = (v_strides, w_dense)
            else:
                _check_out(oi, vi, dtype)
                argspecs[pos["out"]] = _arg("out", oi, None)
                outputs = (OutSpec("w", tuple(vi.shape), dtype, tuple(oi.strides),
                                   arg=pos["out"]), norms)
                lay_strides = (v_strides, tuple(oi.strides))
                alias_ok = v_prep is None and tuple(oi.strides) == tuple(vi.strides)
                overlaps = [(pos["out"], pos["v"], alias_ok), (pos["out"], pos["g"], False)]
    layout = make_layout(vi.shape, kept, lay_strides)
    plan = Plan(op=op, backend=_backend_name(vi), kind=vi.kind, device=vi.device,
                dtype=dtype, layout=layout, args=tuple(argspecs), outputs=outputs,
                g_stride=g_stride, n_stride=n_stride, overlaps=tuple(overlaps),
                kept=kept, dim=dim)
    return plan


def _backend_name(info: ArrayInfo) -> str:
    return "cuda" if info.device[0] == "cuda" else "cpu"


def _check_out(oi: ArrayInfo, vi: ArrayInfo, dtype: str) -> None:
    if oi.dtype != dtype:
        raise ValueError(f"out: expected dtype {dtype} (v's), got {oi.dtype}")
    if oi.shape != vi.shape:
        raise ValueError(f"out: expected shape {vi.shape} (v's), got {oi.shape}")
    if oi.readonly:
        raise ValueError("out: array is read-only")
    if not oi.native:
        raise ValueError("out: byte-swapped arrays cannot be written")
    if not oi.aligned:
        raise ValueError("out: array is not aligned to its itemsize")
    if oi.resolve:
        raise ValueError("out: a tensor with the negative/conjugate bit set cannot be "
                         "written in place")
    if _may_overlap_itself(oi.shape, oi.strides):
        raise ValueError(f"out: overlaps itself (shape {oi.shape}, strides "
                         f"{oi.strides}: two elements may share memory)")


def check_overlaps(plan: Plan, args: Sequence[Any]) -> None:
    """The exact form of the per-call overlap checks of ``plan`` (executors run
    it when the byte ranges of an output and an input intersect): raises
    ValueError if ``out`` overlaps v without being v itself, or overlaps g."""
    names = ARG_NAMES[plan.op]
    infos = {}
    for o, i, alias_ok in plan.overlaps:
        for k in (o, i):
            if k not in infos:
                infos[k] = describe(names[k], args[k])
        a, b = infos[o], infos[i]
        if alias_ok and a.ptr == b.ptr and tuple(a.strides) == tuple(b.strides):
            continue
        if _overlaps(a, b):
            what = names[i]
            if what == "v":
                raise ValueError("out: overlaps v without being v itself "
                                 f"(out strides {a.strides}, v strides {b.strides})")
            raise ValueError(f"out: overlaps {what}")


def _overlaps(a: ArrayInfo, b: ArrayInfo) -> bool:
    lo_a, hi_a = a.extent()
    lo_b, hi_b = b.extent()
    if hi_a <= lo_b or hi_b <= lo_a:
        return False
    if a.base is not None and b.base is not None and a.device[0] == "cpu":
        try:
            return bool(np.shares_memory(a.base, b.base, max_work=10**6))
        except np.exceptions.TooHardError:
            return True
    return True


# ------------------------------------------------------------------ groups

def plan_group(op: int, seqs: Sequence[Sequence[Any]], dims) -> GroupPlan:
    """Validate and plan a grouped call: ``seqs`` are the per-argument sequences
    (e.g. vs, gs), ``dims`` one dim for all or a list with one per item.  Every
    item is planned as the single call would be; an error names the item."""
    lens = {len(s) for s in seqs}
    names = [f"{n}s" for n in ARG_NAMES[op] if n != "out"]
    if len(lens) > 1:
        got = ", ".join(f"{n}: {len(s)}" for n, s in zip(names, seqs))
        raise ValueError(f"{OP_NAMES[op]}_many: the sequences differ in length ({got})")
    n = lens.pop() if lens else 0
    if isinstance(dims, list):
        if len(dims) != n:
            raise ValueError(f"{OP_NAMES[op]}_many: dim is a list of {len(dims)} for "
                             f"{n} items (give one dim, or one per item)")
        per = dims
    else:
        per = [dims] * n
    items = []
    for i in range(n):
        args = tuple(s[i] for s in seqs)
        if op == FORWARD:
            args = args + (None,)
        try:
            items.append(plan_call(op, args, None, per[i]))
        except (TypeError, ValueError) as e:   # AxisError is a ValueError
            raise _with_item(e, i, names) from None
    if items:
        first = items[0]
        for i, p in enumerate(items[1:], 1):
            if (p.kind, p.device) != (first.kind, first.device):
                raise _with_item(TypeError(
                    f"all items must be arrays of one kind on one device: item 0 is "
                    f"{first.kind} on {first.device[0]}:{first.device[1]}, this one "
                    f"{p.kind} on {p.device[0]}:{p.device[1]}"), i, names)
            if p.dtype != first.dtype:
                raise _with_item(TypeError(
                    f"all items must share one dtype: item 0 is {first.dtype}, this one "
                    f"{p.dtype}"), i, names)
    return GroupPlan(op, items)


def _with_item(e: Exception, i: int, names) -> Exception:
    msg = f"item {i} ({', '.join(f'{n}[{i}]' for n in names)}): {e}"
    if isinstance(e, np.exceptions.AxisError):
        return np.exceptions.AxisError(msg)
    return type(e)(msg)
