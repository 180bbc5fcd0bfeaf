"""Property-based tests (hypothesis): every call form against the float64 reference.

Hypothesis draws the whole call -- ndim 0..5 with 0/1/odd sizes, every spelling of
``dim`` (int, negative int, None, (), tuples in any order, NumPy ints), a memory
layout per argument (permuted axes, stepped and negative slices, zero strides,
read-only, offset starts), the dtype, ``eps`` (0, positive floats, Python ints,
NumPy scalars), the values (per-call magnitude from the tiny to the huge end of
the range where squares stay representable, with NaN / +-inf / +-0 / subnormals
dropped in), NumPy or torch arrays, and ``out=`` (none, a fresh array in its own
layout, or ``v`` itself) -- and checks forward and backward against
``wnkernels.reference`` with the tolerances of ``zoo.py``, plus: outputs of the
caller's kind, inputs untouched, ``out`` returned, w never aliasing v by accident.

Profiles (``HYPOTHESIS_PROFILE``):

* ``ci`` (default): a fixed, derandomized budget -- the same examples every run,
  a couple of minutes on a 2-core machine;
* ``long``: 20,000 fresh random examples per test, for a run by hand before a
  release or after touching the front end or a kernel.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import wnkernels  # noqa: E402
import zoo  # noqa: E402

settings.register_profile(
    "ci", max_examples=int(os.environ.get("WNKERNELS_HYPOTHESIS_EXAMPLES", "1000")),
    derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "long", max_examples=20_000, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

KINDS = ("numpy", "torch") if zoo.torch is not None else ("numpy",)
# Most elements a drawn v may have: the reference and the checks run in
# extended precision, so this bounds an example's cost (~ms).
MAX_ELEMENTS = 2048
SIZES = (0, 1, 1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33, 64, 65, 127)

# Magnitude classes of a call's values: |v| ~ scale.  The ends are the edge of
# the range where the kernels promise accuracy (squares and products stay
# representable in the accumulation type: test_forward.py's
# test_extreme_magnitudes_in_range); beyond it only the overflow behaviour is
# promised, which test_forward.py checks on its own.
SCALES = {
    "float16": (1.0, 6e4 / 2, 1e-7),
    "bfloat16": (1.0, 1e18, 1e-18),
    "float32": (1.0, 1e18, 1e-18),
    "float64": (1.0, 1e150, 1e-150),
}
# The backward also needs g/norm * grad_w (~ 1/scale) within the output dtype:
# float16 tops out at 65504, so its small end is 1e-3 there.
BWD_SCALES = dict(SCALES, float16=(1.0, 6e4 / 2, 1e-3))
# Smallest sum of squares the accumulation type holds as a normal number
# (float32 lanes for the 16-bit types and float32, float64 for float64).
ACC_TINY = {"float16": 2.0**-126, "bfloat16": 2.0**-126, "float32": 2.0**-126,
            "float64": 2.0**-1022}
SUBNORMAL = {"float16": 2.0**-20, "bfloat16": 2.0**-130, "float32": 2.0**-140,
             "float64": 2.0**-1060}
SPECIALS = ("nan", "inf", "-inf", "0", "-0", "subnormal")


# ----------------------------------------------------------------- strategies

@st.composite
def shapes(draw):
    ndim = draw(st.integers(0, 5))
    shape, budget = [], MAX_ELEMENTS
    for _ in range(ndim):
        n = draw(st.sampled_from([s for s in SIZES if s <= max(budget, 1)]))
        shape.append(n)
        budget //= max(n, 1)
    return tuple(shape)


@st.composite
def dims(draw, ndim):
    """Any accepted spelling of the kept axes."""
    forms = ["none", "empty"] + (["int", "tuple", "npint"] if ndim else [])
    form = draw(st.sampled_from(forms))
    if form == "none":
        return None
    if form == "empty":
        return ()
    if form in ("int", "npint"):
        d = draw(st.integers(-ndim, ndim - 1))
        return np.int64(d) if form == "npint" else d
    axes = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    return tuple(a - ndim if draw(st.booleans()) else a for a in axes)


@st.composite
def layouts(draw, ndim, kind, *, writable=False):
    """How one array sits in memory: (perm, steps, zero-stride axis, offset, readonly)."""
    perm = tuple(draw(st.permutations(range(ndim)))) if draw(st.booleans()) else tuple(range(ndim))
    step_choices = [1, 1, 2, 3] + ([-1, -2] if kind == "numpy" else [])
    steps = tuple(draw(st.sampled_from(step_choices)) for _ in range(ndim))
    zero = None
    if ndim and not writable and draw(st.integers(0, 5)) == 0:
        zero = draw(st.integers(0, ndim - 1))
    offset = draw(st.integers(0, 2))
    readonly = kind == "numpy" and not writable and draw(st.booleans())
    return perm, steps, zero, offset, readonly


def _element_dtype(dtype, kind):
    if kind == "torch":
        return zoo.torch_dtype(dtype)
    return zoo.np_dtype(dtype)


def place(values: np.ndarray, dtype: str, kind: str, lay):
    """An array of ``kind`` equal to ``values`` (float64, logical shape), laid out
    as ``lay`` inside a NaN-filled buffer (stray reads poison the result)."""
    perm, steps, zero, offset, readonly = lay
    shape = values.shape
    if zero is not None:       # zero stride along `zero`: every index reads index 0
        values = np.broadcast_to(np.take(values, [0], axis=zero) if shape[zero] else values,
                                 shape).copy()
    phys = tuple(shape[a] for a in perm)
    ext = tuple(max(n, 1) * abs(s) for n, s in zip(phys, (steps[a] for a in perm)))
    count = math.prod(ext) + offset
    itemsize = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}[dtype]
    # element strides of the physical (C-order) buffer, in logical axis order
    cstr, acc = [0] * len(phys), 1
    for i in range(len(phys) - 1, -1, -1):
        cstr[i] = acc
        acc *= ext[i]
    strides = [0] * len(shape)
    start = offset
    for i, a in enumerate(perm):
        s = steps[a] * cstr[i]
        if zero == a:
            s = 0
        elif s < 0 and shape[a]:
            start += (shape[a] - 1) * -s
        strides[a] = s
    buf = np.full(count, np.nan)
    view = np.lib.stride_tricks.as_strided(buf[start:] if count else buf, shape,
                                           [s * 8 for s in strides], writeable=True)
    if values.size:   # (along a zero stride every write hits the same element)
        view[...] = values
    if kind == "numpy":
        typed = buf.astype(zoo.np_dtype(dtype))
        out = np.lib.stride_tricks.as_strided(typed[start:] if count else typed, shape,
                                              [s * itemsize for s in strides],
                                              writeable=not readonly)
        return out
    torch = zoo.torch
    tbuf = torch.from_numpy(buf).to(zoo.torch_dtype(dtype))
    return torch.as_strided(tbuf, shape, strides, start)


def draw_values(draw, rng, shape, dtype, role, scales=SCALES, dim=None):
    """float64 values exactly representable in ``dtype``.  ``v``: magnitudes in
    [0.25, 2) x a drawn scale, with specials dropped in; ``grad``: standard
    like v at scale 1 (products with v stay in range), specials but subnormals; ``g``:
    [0.5, 2)."""
    if role == "g":
        x = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    elif role == "grad":
        # Magnitudes >= 0.25 (no tiny tail): with norms near 1e18 a tiny grad_w
        # makes b = g * grad_g / norm^2 subnormal in float32, and a 1-element
        # row's grad_v = a * grad_w - b * v (exactly 0) then cancels to b's
        # rounding, beyond the stated tolerance (a known range limit).
        x = rng.uniform(0.25, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    else:
        scale = draw(st.sampled_from(scales[dtype]))
        x = rng.uniform(0.25, 2.0, shape) * rng.choice([-1.0, 1.0], shape) * scale
    x = np.asarray(x, np.float64)
    if x.size and role != "g":
        specials = SPECIALS if role == "v" else SPECIALS[:-1]
        for special in draw(st.lists(st.sampled_from(specials), max_size=3)):
            flat = x.reshape(-1)
            i = int(rng.integers(flat.size))
            flat[i] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "0": 0.0,
                       "-0": -0.0, "subnormal": SUBNORMAL[dtype]}[special]
    # values as the dtype holds them (the reference sees exactly these)
    x = np.asarray(x.astype(zoo.np_dtype(dtype)).astype(np.float64))
    if role == "v" and x.size:
        # A row whose sum of squares underflows the accumulation type (only
        # subnormals and zeros) is outside the accuracy promise: give it a 1.
        kept = zoo.reference.kept_axes(dim, x.ndim)
        red = tuple(a for a in range(x.ndim) if a not in kept)
        xl = x.astype(np.longdouble)    # float64 squares of subnormals underflow
        with np.errstate(all="ignore"):
            ss = np.sum(xl * xl, axis=red, keepdims=True) if red else xl * xl
        bad = np.broadcast_to((ss > 0) & (ss < ACC_TINY[dtype]), x.shape)
        x = np.where(bad & (x != 0), 1.0, x)
    return x


@st.composite
def forward_calls(draw, scales=SCALES, outs=("none", "none", "fresh", "v")):
    dtype = draw(st.sampled_from(zoo.DTYPES))
    kind = draw(st.sampled_from(KINDS))
    shape = draw(shapes())
    ndim = len(shape)
    dim = draw(dims(ndim))
    g_shapes = zoo.reference.g_shapes(shape, dim)
    g_shape = draw(st.sampled_from(g_shapes))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    out_form = draw(st.sampled_from(outs))
    v_lay = draw(layouts(ndim, kind, writable=out_form == "v"))
    g_lay = draw(layouts(len(g_shape), kind))
    v64 = draw_values(draw, rng, shape, dtype, "v", scales, dim)
    g64 = draw_values(draw, rng, g_shape, dtype, "g")
    eps = draw(st.sampled_from([0.0, 0, 1e-12, 0.5, 3, "np"]))
    if eps == "np":
        eps = np.float32(0.25)
    v = place(v64, dtype, kind, v_lay)
    g = place(g64, dtype, kind, g_lay)
    out = None
    if out_form == "fresh":
        out = place(np.zeros(shape), dtype, kind, draw(layouts(ndim, kind, writable=True)))
    elif out_form == "v":
        out = v
    return dict(dtype=dtype, kind=kind, v=v, g=g, dim=dim, eps=eps, out=out)


def _kind_of(x):
    return "torch" if zoo.torch is not None and isinstance(x, zoo.torch.Tensor) else "numpy"


def _check_forward_call(c):
    v, g, out = c["v"], c["g"], c["out"]
    # copies before the call (out may be v; as_f64 of a float64 tensor is a view)
    v64, g64 = np.array(zoo.as_f64(v)), np.array(zoo.as_f64(g))
    protected = (g,) if out is v else (v, g)
    before = zoo.snapshot(*protected)
    w, norms = wnkernels.weight_norm(v, g, c["dim"], eps=c["eps"], out=out)
    assert _kind_of(w) == _kind_of(norms) == c["kind"]
    if out is not None:
        assert w is out
    elif w.size and v.size:
        if c["kind"] == "numpy":
            assert not np.shares_memory(w, v)
        else:
            assert w.untyped_storage().data_ptr() != v.untyped_storage().data_ptr()
    assert zoo.snapshot(*protected) == before, "an input was modified"
    msg = zoo.check_forward(w, norms, v64, g64, c["dim"], eps=float(c["eps"]), dtype=c["dtype"])
    assert msg is None, msg
    return w, norms, v64, g64


@given(forward_calls())
def test_forward_properties(c):
    _check_forward_call(c)


@st.composite
def backward_calls(draw):
    c = draw(forward_calls(BWD_SCALES, outs=("none",)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = tuple(c["v"].shape)
    gw64 = draw_values(draw, rng, shape, c["dtype"], "grad")
    c["grad_w"] = place(gw64, c["dtype"], c["kind"], draw(layouts(len(shape), c["kind"])))
    c["norms_from"] = draw(st.sampled_from(["forward", "forward", "given"]))
    c["seed"] = draw(st.integers(0, 2**32 - 1))
    return c


@given(backward_calls())
def test_backward_properties(c):
    _, norms, _, _ = _check_forward_call(c)
    if c["norms_from"] == "given":   # other norms (of v's scale): the backward must use them
        rng = np.random.default_rng(c["seed"])
        n_fwd = zoo.as_f64(norms)
        scale = np.where(np.isfinite(n_fwd) & (n_fwd > 0), n_fwd, 1.0)
        n64 = scale * rng.uniform(0.5, 2.0, tuple(norms.shape))
        ndt = zoo.NORM_DTYPE[c["dtype"]]
        norms = (np.asarray(n64, ndt) if c["kind"] == "numpy"
                 else zoo.torch.tensor(n64).to(zoo.torch_dtype(ndt)))
    gw, v, g = c["grad_w"], c["v"], c["g"]
    before = zoo.snapshot(gw, v, g, norms)
    grad_v, grad_g = wnkernels.weight_norm_backward(gw, v, g, norms, c["dim"])
    assert _kind_of(grad_v) == _kind_of(grad_g) == c["kind"]
    assert zoo.snapshot(gw, v, g, norms) == before, "an input was modified"
    msg = zoo.check_backward(grad_v, grad_g, gw, v, g, norms, c["dim"], dtype=c["dtype"])
    assert msg is None, msg


@given(forward_calls())
def test_repeated_call_gives_the_same_bits(c):
    """A call repeated on new arrays with the same description (the cached path)
    gives the same bits as the first one (the planning path)."""
    if c["out"] is not None and c["out"] is c["v"]:
        return   # in place: the second call would see the first one's output
    r1 = wnkernels.weight_norm(c["v"], c["g"], c["dim"], eps=c["eps"], out=c["out"])
    b1 = [zoo.bits(x) for x in r1]
    r2 = wnkernels.weight_norm(c["v"], c["g"], c["dim"], eps=c["eps"], out=c["out"])
    assert [zoo.bits(x) for x in r2] == b1
