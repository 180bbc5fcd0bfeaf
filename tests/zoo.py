"""The array zoo and the tolerance rules every wnkernels test uses.

The zoo (after bottleneck's): odd sizes, 0-d to 5-D, every form of ``dim``,
and every memory layout a caller can hand over (C, Fortran, stepped slices,
negative strides, permuted axes, read-only, misaligned starts). Strided views
are cut out of buffers filled with NaN, so a kernel that reads an element it
should skip poisons its result; output buffers are filled with a sentinel, so
a stray write shows up as a changed gap.

Tolerances are derived from the arithmetic, never from what an implementation
happened to output. With ``u(d)`` the unit roundoff bound ``eps(d)`` of dtype
``d`` and ``c`` the compute dtype (float32 for the half types)::

    norms   |err| <= r_acc * norm + tiny
    w       |err| <= (round(d) + r_acc + 4 eps(c)) * |w| + tiny(d)
    grad_g  |err| <= r_acc * sum|grad_w v| / norm + (round(d) + 4 eps(c)) * |grad_g| + tiny(d)
    grad_v  |err| <= round(d) |grad_v| + 4 eps(c) (|a| + |b|) + |g v / norm^2| * tol(grad_g) + tiny(d)

where ``a = g/norm * grad_w`` and ``b = g grad_g / norm^2 * v`` are the two terms
of grad_v (their difference may cancel), ``round(d)`` is ``eps(d)`` for the half
types (the float32 result is rounded once more) and 0 otherwise, and ``r_acc``
is the accumulation accuracy of a row sum: 1e-6 relative for float32
accumulation (CONTRACT.md: float32 norms within 1e-6 of the float64 truth) and
a few ulps for float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence

import numpy as np

from wnkernels import reference

try:  # bfloat16 NumPy arrays are an optional part of the zoo
    import ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes is in the test extra
    ml_dtypes = None

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

DTYPES = ("float16", "bfloat16", "float32", "float64")
HALF = ("float16", "bfloat16")

# Machine epsilon (spacing at 1.0) and smallest subnormal, per dtype name.
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}
TINY = {"float16": 2.0**-24, "bfloat16": 2.0**-133, "float32": 2.0**-149,
        "float64": 2.0**-1074}
COMPUTE = {"float16": "float32", "bfloat16": "float32", "float32": "float32",
           "float64": "float64"}
NORM_DTYPE = COMPUTE  # half types return float32 norms

# Relative accuracy of a row sum (sum of squares, or the grad_w.v dot product
# measured against sum|grad_w v|). float32: the contract's 1e-6; float64:
# "a few ulps" -- 4 ulps on a norm is 8 ulps on its square, which is the sum.
ACC_RTOL = {"float16": 1e-6, "bfloat16": 1e-6, "float32": 1e-6, "float64": 8 * EPS["float64"]}
NORM_RTOL = {"float16": 1e-6, "bfloat16": 1e-6, "float32": 1e-6, "float64": 4 * EPS["float64"]}


def round_err(dtype: str) -> float:
    """Relative error added by rounding the compute-precision result to ``dtype``."""
    return EPS[dtype] if dtype in HALF else 0.0


def np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        if ml_dtypes is None:  # pragma: no cover
            import pytest
            pytest.skip("ml_dtypes is not installed")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def torch_dtype(name: str):
    return getattr(torch, name)


def dtype_name(a) -> str:
    """'float32' etc. for a NumPy array or a torch tensor."""
    if torch is not None and isinstance(a, torch.Tensor):
        return str(a.dtype).replace("torch.", "")
    return np.asarray(a).dtype.name


def as_f64(a) -> np.ndarray:
    """Any NumPy array or torch tensor as a float64 NumPy array (exact)."""
    if torch is not None and isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a).astype(np.float64)


# ---------------------------------------------------------------------------
# Shapes, dims, layouts

SHAPES = [
    (), (1,), (7,), (1000,), (3, 5), (1, 17), (17, 1), (33, 129), (3, 5, 7),
    (2, 3, 5, 7), (2, 3, 1, 5, 4), (1025, 3), (3, 1031),
]

EMPTY_SHAPES = [(0,), (0, 5), (5, 0), (3, 0, 4), (0, 0), (2, 0, 3, 1)]


def dim_forms(ndim: int) -> List[Any]:
    """Every way to name kept axes for an ``ndim``-D array, each once."""
    forms: List[Any] = [None, ()]
    if ndim == 0:
        return forms
    for d in range(ndim):
        forms.append(d)
        forms.append(d - ndim)
    forms.append((0,))
    if ndim >= 2:
        forms += [(0, ndim - 1), (ndim - 1, 0), (-1,)]
    if ndim >= 3:
        forms += [(0, 2), (-1, -3), (1,)]
    if ndim >= 4:
        forms += [(1, 2), (0, 1, 3)]
    forms.append(tuple(range(ndim)))  # every axis kept: rows of one element
    out: List[Any] = []
    for f in forms:
        if f not in out:
            out.append(f)
    return out


LAYOUTS = ("C", "F", "strided", "reversed", "transposed", "readonly", "offset", "mixed")


def _strided_in(values: np.ndarray, steps: Sequence[int], fill) -> np.ndarray:
    """A view equal to ``values`` cut with ``steps`` out of a ``fill``-ed buffer."""
    buf = np.full(tuple(n * s + 1 for n, s in zip(values.shape, steps)), fill,
                  dtype=values.dtype)
    sl = tuple(slice(1, 1 + n * s, s) for n, s in zip(values.shape, steps))
    buf[sl] = values
    return buf[sl]


def layout(values: np.ndarray, kind: str, rng: np.random.Generator,
           fill=np.nan) -> np.ndarray:
    """A new array equal to ``values`` (same shape and dtype) laid out as ``kind``.

    Gaps of strided layouts hold ``fill`` (NaN: a kernel that reads them fails).
    """
    nd = values.ndim
    if nd == 0 and kind not in ("offset",):
        out = values.copy()  # a 0-d array has no strides to vary
    elif kind == "C":
        out = np.ascontiguousarray(values).copy()
    elif kind == "F":
        out = np.asfortranarray(values).copy()
    elif kind == "strided":
        out = _strided_in(values, [2 + (ax % 2) for ax in range(nd)], fill)
    elif kind == "reversed":
        rev = (slice(None, None, -1),) * nd
        out = np.ascontiguousarray(values[rev])[rev]
    elif kind == "transposed":
        perm = rng.permutation(nd)
        if nd >= 2 and (perm == np.arange(nd)).all():
            perm = np.arange(nd)[::-1]
        out = np.ascontiguousarray(values.transpose(perm)).transpose(np.argsort(perm))
    elif kind == "readonly":
        out = np.ascontiguousarray(values).copy()
    elif kind == "offset":  # data pointer one element past an aligned start
        buf = np.full(values.size + 1, fill, dtype=values.dtype)
        out = buf[1:].reshape(values.shape)
        out[...] = values
    elif kind == "mixed":  # permuted + stepped + even axes reversed, read-only
        perm = rng.permutation(nd)
        permuted = np.ascontiguousarray(values.transpose(perm))
        rev = tuple(slice(None, None, -1) if ax % 2 == 0 else slice(None)
                    for ax in range(nd))
        buf = _strided_in(permuted[rev], [1 + (ax % 3) for ax in range(nd)], fill)
        out = buf[rev].transpose(np.argsort(perm))
    else:  # pragma: no cover
        raise ValueError(kind)
    if kind in ("readonly", "mixed"):
        out.setflags(write=False)
    assert out.shape == values.shape and out.dtype == values.dtype
    assert np.array_equal(out.astype(np.float64), values.astype(np.float64), equal_nan=True)
    return out


def random_values(rng: np.random.Generator, shape, dtype: str, kind: str = "v") -> np.ndarray:
    """Random C-contiguous values of ``dtype``.

    ``v``: magnitudes in [0.25, 2) with random signs (no row is near zero, so
    g/norm stays finite in float16); ``g``: magnitudes in [0.5, 2); ``grad``:
    standard normal.
    """
    if kind == "grad":
        x = rng.standard_normal(shape)
    else:
        lo = 0.25 if kind == "v" else 0.5
        x = rng.uniform(lo, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return np.asarray(x).astype(np_dtype(dtype))


def g_for(rng, v_shape, dim, dtype: str, form: int = 0) -> np.ndarray:
    """g for ``v_shape``/``dim`` in form ``form`` of `reference.g_shapes`."""
    shapes = reference.g_shapes(v_shape, dim)
    return random_values(rng, shapes[form % len(shapes)], dtype, "g")


@dataclass
class Case:
    """One call: v (and g) laid out somehow, with a dim and a g form."""
    id: str
    v: np.ndarray
    g: np.ndarray
    dim: Any


def forward_cases(dtype: str, layout_kind: str, seed: int = 0,
                  shapes=SHAPES) -> Iterator[Case]:
    """Every shape x every dim form x every g form, v in ``layout_kind``."""
    rng = np.random.default_rng([seed, DTYPES.index(dtype), LAYOUTS.index(layout_kind)])
    for shape in shapes:
        for dim in dim_forms(len(shape)):
            for form, g_shape in enumerate(reference.g_shapes(shape, dim)):
                v = layout(random_values(rng, shape, dtype), layout_kind, rng)
                g = random_values(rng, g_shape, dtype, "g")
                # g in a layout too (cycled), where it has axes to play with
                g = layout(g, LAYOUTS[(form + len(shape)) % len(LAYOUTS)], rng)
                yield Case(f"shape={shape} dim={dim!r} g.shape={g_shape}", v, g, dim)


# ---------------------------------------------------------------------------
# Comparisons: each returns None when fine, else a message naming the worst element

def compare(name: str, got, ref: np.ndarray, tol: np.ndarray) -> Optional[str]:
    """``got`` against float64 ``ref`` with elementwise tolerance ``tol``.

    NaN must sit exactly where ``ref`` has NaN, infinities must match in
    position and sign, and finite values must be within ``tol``.  A finite
    ``ref`` beyond the range of ``got``'s dtype (it rounds to +-inf there) may
    come back as that infinity, or finite within ``tol``.
    """
    got64 = as_f64(got)
    if got64.shape != ref.shape:
        return f"{name}: shape {got64.shape}, expected {ref.shape}"
    nan_got, nan_ref = np.isnan(got64), np.isnan(ref)
    if not np.array_equal(nan_got, nan_ref):
        idx = np.argwhere(nan_got != nan_ref)[0]
        return (f"{name}: NaN mismatch at {tuple(idx)}: got {got64[tuple(idx)]!r}, "
                f"expected {ref[tuple(idx)]!r} ({int((nan_got != nan_ref).sum())} elements)")
    with np.errstate(over="ignore"):
        rounded = np.asarray(ref).astype(np_dtype(dtype_name(got))).astype(np.float64)
    overflow = np.isinf(rounded) & np.isfinite(ref) & (got64 == rounded)
    if overflow.any():            # correctly rounded to the dtype's infinity
        ref = np.where(overflow, rounded, ref)
    inf_ref = np.isinf(ref)
    if not np.array_equal(got64[inf_ref], ref[inf_ref]) or np.isinf(got64[~inf_ref]).any():
        idx = np.argwhere(np.isinf(got64) != inf_ref)
        idx = tuple(idx[0]) if len(idx) else tuple(np.argwhere(inf_ref)[0])
        return f"{name}: inf mismatch at {idx}: got {got64[idx]!r}, expected {ref[idx]!r}"
    finite = np.isfinite(ref)
    with np.errstate(invalid="ignore"):
        excess = np.where(finite, np.abs(got64 - ref) - tol, -np.inf)
    if excess.size and excess.max() > 0:
        idx = np.unravel_index(np.argmax(excess), excess.shape)
        err = abs(got64[idx] - ref[idx])
        return (f"{name}: at {tuple(int(i) for i in idx)} got {got64[idx]!r}, expected "
                f"{ref[idx]!r} (error {err:.3g} > tolerance {np.broadcast_to(tol, ref.shape)[idx]:.3g}; "
                f"{int((excess > 0).sum())} of {ref.size} elements out)")
    return None


def forward_tolerances(v, g, dim, eps, dtype: str):
    """(w_ref, norms_ref, w_tol, norms_tol) from the float64 reference."""
    w_ref, n_ref = reference.weight_norm(v, g, dim, eps=eps)
    c = COMPUTE[dtype]
    nd = NORM_DTYPE[dtype]
    n_tol = NORM_RTOL[dtype] * np.abs(n_ref) + TINY[nd]
    w_tol = (round_err(dtype) + NORM_RTOL[dtype] + 4 * EPS[c]) * np.abs(w_ref) + TINY[dtype]
    return w_ref, n_ref, w_tol, n_tol


def check_forward(w, norms, v, g, dim, eps=0.0, dtype: Optional[str] = None) -> Optional[str]:
    """All forward checks: dtypes, shapes, values. None when fine."""
    dtype = dtype or dtype_name(v)
    if dtype_name(w) != dtype:
        return f"w dtype {dtype_name(w)}, expected {dtype}"
    if dtype_name(norms) != NORM_DTYPE[dtype]:
        return f"norms dtype {dtype_name(norms)}, expected {NORM_DTYPE[dtype]}"
    if tuple(norms.shape) != tuple(g.shape):
        return f"norms shape {tuple(norms.shape)}, expected g's shape {tuple(g.shape)}"
    w_ref, n_ref, w_tol, n_tol = forward_tolerances(as_f64(v), as_f64(g), dim, eps, dtype)
    return compare("norms", norms, n_ref, n_tol) or compare("w", w, w_ref, w_tol)


def backward_tolerances(grad_w, v, g, norms, dim, dtype: str):
    """(grad_v_ref, grad_g_ref, grad_v_tol, grad_g_tol) from the reference."""
    gw64, v64, g64, n64 = (as_f64(a) for a in (grad_w, v, g, norms))
    gv_ref, gg_ref = reference.weight_norm_backward(gw64, v64, g64, n64, dim)
    kept = reference.kept_axes(dim, v64.ndim)
    reduced = tuple(ax for ax in range(v64.ndim) if ax not in kept)
    keep = reference.g_shapes(v64.shape, dim)[0]
    c = COMPUTE[dtype]
    with np.errstate(all="ignore"):
        n_k = n64.reshape(keep)
        g_k = g64.reshape(keep)
        abs_dot = np.sum(np.abs(gw64 * v64), axis=reduced, keepdims=True) / np.abs(n_k)
        gg_k = gg_ref.reshape(keep)
        gg_tol_k = (ACC_RTOL[dtype] * abs_dot
                    + (round_err(dtype) + 4 * EPS[c]) * np.abs(gg_k) + TINY[dtype])
        a = np.abs(g_k / n_k * gw64)
        b = np.abs(g_k * gg_k / (n_k * n_k) * v64)
        dv = np.abs(g_k / (n_k * n_k) * v64) * gg_tol_k
        gv_tol = round_err(dtype) * np.abs(gv_ref) + 4 * EPS[c] * (a + b) + dv + TINY[dtype]
    return gv_ref, gg_ref, gv_tol, gg_tol_k.reshape(g64.shape)


def check_backward(grad_v, grad_g, grad_w, v, g, norms, dim, dtype=None) -> Optional[str]:
    dtype = dtype or dtype_name(v)
    if dtype_name(grad_v) != dtype:
        return f"grad_v dtype {dtype_name(grad_v)}, expected {dtype}"
    if dtype_name(grad_g) != dtype_name(g):
        return f"grad_g dtype {dtype_name(grad_g)}, expected g's dtype {dtype_name(g)}"
    if tuple(grad_g.shape) != tuple(g.shape):
        return f"grad_g shape {tuple(grad_g.shape)}, expected g's shape {tuple(g.shape)}"
    gv_ref, gg_ref, gv_tol, gg_tol = backward_tolerances(grad_w, v, g, norms, dim, dtype)
    return compare("grad_g", grad_g, gg_ref, gg_tol) or compare("grad_v", grad_v, gv_ref, gv_tol)


def reference_norms(v, g, dim, eps=0.0) -> np.ndarray:
    """Norms as the forward returns them: g's shape, float32 for half types."""
    dtype = dtype_name(v)
    _, n = reference.weight_norm(as_f64(v), as_f64(g), dim, eps=eps)
    return n.astype(NORM_DTYPE[dtype])


def snapshot(*arrays) -> List[bytes]:
    """Bit patterns of arrays (NumPy or torch), to prove nothing was written."""
    out = []
    for a in arrays:
        if torch is not None and isinstance(a, torch.Tensor):
            raw = torch.empty(0, dtype=torch.uint8)
            raw.set_(a.untyped_storage())
            out.append(raw.numpy().tobytes())
        elif isinstance(a, np.ndarray):
            base = a
            while isinstance(base.base, np.ndarray):
                base = base.base
            if base.dtype.hasobject:
                out.append(repr(base.tolist()).encode())
            else:
                out.append(np.ascontiguousarray(base).view(np.uint8).tobytes())
        else:
            out.append(repr(a).encode())
    return out


def bits(a) -> bytes:
    """Bit pattern of an array's logical elements (C order), NumPy or torch."""
    if torch is not None and isinstance(a, torch.Tensor):
        a = a.detach().contiguous()
        if a.numel() == 0:
            return b""
        return a.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[a.dtype.itemsize]).numpy().tobytes()
    return np.ascontiguousarray(a).tobytes()



def run_all(cases, check) -> None:
    """Run ``check(case)`` (returns None or a message) over all cases; report every failure.

    A check that raises counts as a failure with the exception as its message,
    so one bad layout does not hide the others.
    """
    failures = []
    n = 0
    for case in cases:
        n += 1
        try:
            msg = check(case)
        except Exception as exc:  # noqa: BLE001 - reported below with the case id
            msg = f"raised {type(exc).__name__}: {exc}"
        if msg:
            failures.append(f"{getattr(case, 'id', case)}: {msg}")
    assert n, "no cases ran"
    assert not failures, (f"{len(failures)} of {n} cases fail, e.g.:\n  "
                          + "\n  ".join(failures[:12]))


# The CPU kernels' instruction-set variants, best first (WNKERNELS_ISA names).
ISA_ORDER = ("avx512bf16", "avx512", "avx2", "baseline")


def isa_variants(best: str) -> List[str]:
    """The variants at or below `best` (the one this CPU runs), best first."""
    return list(ISA_ORDER[ISA_ORDER.index(best):]) if best in ISA_ORDER else ["baseline"]
