"""wnkernels.weight_norm on NumPy arrays against the float64 reference.

Covers the array zoo (every shape x dim form x g form x layout x dtype),
eps, empty arrays, NaN/inf, extreme magnitudes, ``out=`` and in-place calls.
Tolerances come from zoo.py (derived from the arithmetic, not measured).
"""

import numpy as np
import pytest

import wnkernels
import zoo
from wnkernels import reference


def _forward_case(case, **kw):
    before = zoo.snapshot(case.v, case.g)
    w, norms = wnkernels.weight_norm(case.v, case.g, dim=case.dim, **kw)
    if type(w) is not np.ndarray or type(norms) is not np.ndarray:
        return f"returned {type(w).__name__}, {type(norms).__name__}; expected NumPy arrays"
    if zoo.snapshot(case.v, case.g) != before:
        return "an input was modified"
    if w.size and np.shares_memory(w, case.v):
        return "w shares memory with v"
    return zoo.check_forward(w, norms, case.v, case.g, case.dim, **kw)


@pytest.mark.parametrize("layout", zoo.LAYOUTS)
@pytest.mark.parametrize("dtype", zoo.DTYPES)
def test_zoo(dtype, layout):
    """0-d..5-D, odd sizes, every dim form and g form, v and g in many layouts."""
    zoo.run_all(zoo.forward_cases(dtype, layout), _forward_case)


@pytest.mark.parametrize("dtype", zoo.DTYPES)
def test_dim_spellings_give_identical_results(dtype, rng):
    """-1 and ndim-1, (2, 0) and (0, 2), None and (): the same call, bit for bit."""
    v = zoo.random_values(rng, (4, 5, 6), dtype)
    for a, b in [(0, -3), (2, -1), ((0, 2), (2, 0)), ((0, 2), (-1, -3)), (None, ()),
                 (1, (1,)), (1, np.int64(1)), ((0, 1), (np.intp(1), np.int32(0)))]:
        g = zoo.g_for(rng, v.shape, a, dtype)
        wa, na = wnkernels.weight_norm(v, g, dim=a)
        wb, nb = wnkernels.weight_norm(v, g, dim=b)
        assert zoo.bits(wa) == zoo.bits(wb), (a, b)
        assert zoo.bits(na) == zoo.bits(nb), (a, b)


def test_dim_is_positional_and_defaults_to_0(rng):
    v = rng.standard_normal((3, 5))
    g = rng.uniform(1, 2, (3, 1))
    w0, n0 = wnkernels.weight_norm(v, g)
    w1, n1 = wnkernels.weight_norm(v, g, 0)
    assert zoo.bits(w0) == zoo.bits(w1) and zoo.bits(n0) == zoo.bits(n1)
    assert zoo.check_forward(w0, n0, v, g, 0) is None
    g1 = rng.uniform(1, 2, (1, 5))
    w, n = wnkernels.weight_norm(v, g1, 1, eps=0.5)
    assert zoo.check_forward(w, n, v, g1, 1, eps=0.5) is None


@pytest.mark.parametrize("dtype", zoo.DTYPES)
def test_g_forms_agree(dtype, rng):
    """Keep-dims and flat g give the same w; norms come back in g's shape."""
    v = zoo.random_values(rng, (3, 4, 5), dtype)
    for dim in [0, 1, -1, (0, 2), None]:
        shapes = reference.g_shapes(v.shape, dim)
        g0 = zoo.random_values(rng, shapes[0], dtype, "g")
        results = [wnkernels.weight_norm(v, g0.reshape(s), dim) for s in shapes]
        for s, (w, n) in zip(shapes, results):
            assert n.shape == s
            assert zoo.bits(w) == zoo.bits(results[0][0])
            assert zoo.bits(n) == zoo.bits(results[0][1])


# --------------------------------------------------------------------------- shapes

# Shapes that send the kernels down each of their paths: many short rows,
# few long rows, kept axis innermost (dim=-1 of a C matrix), a middle kept
# axis, a tuple of kept axes, and the same on other layouts.
STRATEGY_CASES = [
    ((4096, 257), 0, "C"),
    ((3, 400001), 0, "C"),
    ((257, 1031), 1, "C"),
    ((257, 1031), 0, "F"),
    ((17, 129, 33), 1, "C"),
    ((9, 300, 7), (0, 2), "C"),
    ((2, 3, 40001), (0, 1), "C"),
    ((1031, 257), -1, "strided"),
    ((5, 100003), None, "reversed"),
    ((70001, 3), 1, "transposed"),
]


@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("shape, dim, layout", STRATEGY_CASES)
def test_kernel_strategies(shape, dim, layout, dtype, rng):
    v = zoo.layout(zoo.random_values(rng, shape, dtype), layout, rng)
    for form in range(2):
        g = zoo.g_for(rng, shape, dim, dtype, form)
        w, n = wnkernels.weight_norm(v, g, dim=dim)
        assert zoo.check_forward(w, n, v, g, dim) is None, zoo.check_forward(w, n, v, g, dim)


@pytest.mark.parametrize("ndim", [6, 8, 12])
def test_many_dimensions(ndim, rng):
    """No fixed limit on ndim: size-1 and mergeable axes are common in practice."""
    shape = tuple([2, 1, 3][i % 3] for i in range(ndim))
    for layout in ["C", "transposed", "mixed"]:
        v = zoo.layout(zoo.random_values(rng, shape, "float64"), layout, rng)
        for dim in [0, -1, (0, 2, ndim - 1), None, tuple(range(0, ndim, 2))]:
            g = zoo.g_for(rng, shape, dim, "float64", 1)
            w, n = wnkernels.weight_norm(v, g, dim=dim)
            assert zoo.check_forward(w, n, v, g, dim) is None, (layout, dim)


def test_broadcast_input(rng):
    """Zero strides (np.broadcast_to) are read in place like any stride."""
    row = rng.standard_normal((1, 37))
    v = np.broadcast_to(row, (5, 37))
    for dim in [0, 1, None]:
        gd = zoo.g_for(rng, v.shape, dim, "float64")
        w, n = wnkernels.weight_norm(v, gd, dim=dim)
        assert zoo.check_forward(w, n, v, gd, dim) is None
    g_b = np.broadcast_to(np.array([[1.5]]), (5, 1))
    w, n = wnkernels.weight_norm(v, g_b, 0)
    assert zoo.check_forward(w, n, v, g_b, 0) is None


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_byteswapped_is_right_or_refused(dtype, rng):
    """Non-native byte order: a correct result or a TypeError/ValueError, never garbage."""
    v = rng.standard_normal((4, 9)).astype(np.dtype(dtype).newbyteorder())
    g = rng.uniform(1, 2, (4, 1)).astype(np.dtype(dtype).newbyteorder())
    try:
        w, n = wnkernels.weight_norm(v, g, 0)
    except (TypeError, ValueError):
        return
    assert zoo.check_forward(w, n, v.astype(dtype), g.astype(dtype), 0, dtype=dtype) is None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_unaligned_is_right_or_refused(dtype, rng):
    """A data pointer not aligned to the itemsize: correct, or a clean error."""
    itemsize = np.dtype(dtype).itemsize
    buf = np.zeros(itemsize * 40 + 1, np.uint8)
    v = buf[1:].view(dtype).reshape(4, 10)
    assert not v.flags.aligned
    vals = rng.standard_normal((4, 10)).astype(dtype)
    v[...] = vals
    g = rng.uniform(1, 2, (4,)).astype(dtype)
    try:
        w, n = wnkernels.weight_norm(v, g, 0)
    except (TypeError, ValueError):
        return
    assert zoo.check_forward(w, n, vals, g, 0) is None


# --------------------------------------------------------------------------- eps

@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("eps", [1e-12, 1e-3, 0.5, 100.0])
def test_eps_is_added_under_the_sqrt(dtype, eps, rng):
    for shape, dim in [((7, 33), 0), ((33, 7), -1), ((3, 5, 4), (0, 2)), ((17,), None)]:
        v = zoo.random_values(rng, shape, dtype)
        g = zoo.g_for(rng, shape, dim, dtype)
        w, n = wnkernels.weight_norm(v, g, dim, eps=eps)
        msg = zoo.check_forward(w, n, v, g, dim, eps=eps)
        assert msg is None, (shape, dim, msg)


@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("dim", [0, -1])
def test_zero_rows(dtype, dim):
    """eps=0: norm 0 and w NaN in zero rows only; eps>0: norm sqrt(eps), w 0."""
    v = np.ones((5, 6), dtype=zoo.np_dtype(dtype))
    if dim == 0:
        v[[1, 3]] = 0
    else:
        v[:, [1, 3]] = 0
    zero = np.zeros(5 if dim == 0 else 6, bool)
    zero[[1, 3]] = True
    g = np.full(5 if dim == 0 else 6, 2.0).astype(zoo.np_dtype(dtype))
    g = g.reshape((5, 1) if dim == 0 else (1, 6))
    w, n = wnkernels.weight_norm(v, g, dim)
    rows = w.astype(np.float64) if dim == 0 else w.astype(np.float64).T
    assert np.isnan(rows[zero]).all()
    assert np.isfinite(rows[~zero]).all()
    assert (n.ravel()[zero] == 0).all()
    assert zoo.check_forward(w, n, v, g, dim) is None
    eps = 0.0625
    w, n = wnkernels.weight_norm(v, g, dim, eps=eps)
    np.testing.assert_array_equal(n.ravel()[zero], np.sqrt(eps))
    rows = w.astype(np.float64) if dim == 0 else w.astype(np.float64).T
    assert (rows[zero] == 0).all()
    assert zoo.check_forward(w, n, v, g, dim, eps=eps) is None


def test_eps_accepts_python_int_and_numpy_float(rng):
    v = rng.standard_normal((3, 4))
    g = rng.uniform(1, 2, (3, 1))
    for eps in [1, np.float64(0.25), np.float32(0.5)]:
        w, n = wnkernels.weight_norm(v, g, 0, eps=eps)
        assert zoo.check_forward(w, n, v, g, 0, eps=float(eps)) is None


# --------------------------------------------------------------------------- empty

@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("eps", [0.0, 0.25])
@pytest.mark.parametrize("shape", zoo.EMPTY_SHAPES)
def test_empty(shape, eps, dtype, rng):
    """Zero rows give empty outputs; zero-length rows give norms = sqrt(eps)."""
    for dim in zoo.dim_forms(len(shape)):
        for form in range(len(reference.g_shapes(shape, dim))):
            v = np.zeros(shape, zoo.np_dtype(dtype))
            g = zoo.g_for(rng, shape, dim, dtype, form)
            w, n = wnkernels.weight_norm(v, g, dim, eps=eps)
            assert w.shape == shape and w.dtype == v.dtype
            assert n.shape == g.shape and n.dtype == zoo.NORM_DTYPE[dtype]
            if n.size:
                kept = reference.kept_axes(dim, len(shape))
                rowlen = int(np.prod([shape[ax] for ax in range(len(shape)) if ax not in kept]))
                if rowlen == 0:  # sqrt(0) and sqrt(0.25) are exact in every dtype
                    np.testing.assert_array_equal(n.astype(np.float64), np.sqrt(eps))
            msg = zoo.check_forward(w, n, v, g, dim, eps=eps)
            assert msg is None, (dim, g.shape, msg)


# --------------------------------------------------------------------------- non-finite

@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("dim", [0, -1, 1, (0, 2)])
def test_nonfinite_stays_in_its_row(dtype, dim, rng):
    """NaN/inf in a row reach that row's outputs and nowhere else."""
    shape = (6, 7, 9)
    vals = zoo.random_values(rng, shape, dtype).astype(np.float64)
    kept = reference.kept_axes(dim, 3)
    # poison rows 1 (NaN), 2 (+inf), 4 (-inf and NaN), by kept index
    rows = np.arange(int(np.prod([shape[a] for a in kept]))).reshape([shape[a] for a in kept])
    row_of = np.broadcast_to(rows.reshape(reference.g_shapes(shape, dim)[0]), shape)
    for row, bad in [(1, [np.nan]), (2, [np.inf]), (4, [-np.inf, np.nan])]:
        where = np.argwhere(row_of == row)
        for b, idx in zip(bad, where[[0, len(where) // 2]]):
            vals[tuple(idx)] = b
    for layout in ["C", "mixed"]:
        v = zoo.layout(vals.astype(zoo.np_dtype(dtype)), layout, rng)
        g = zoo.g_for(rng, shape, dim, dtype)
        w, n = wnkernels.weight_norm(v, g, dim)
        msg = zoo.check_forward(w, n, v, g, dim)
        assert msg is None, (layout, msg)
        nn = n.astype(np.float64).ravel()
        assert np.isnan(nn[[1, 4]]).all() and nn[2] == np.inf
        assert np.isfinite(nn[[0, 3, 5]]).all()


def test_nan_in_g_stays_in_its_row(rng):
    v = rng.standard_normal((4, 5))
    g = np.array([1.0, np.nan, np.inf, 2.0]).reshape(4, 1)
    w, n = wnkernels.weight_norm(v, g, 0)
    assert np.isfinite(n).all()
    assert np.isnan(w[1]).all() and np.isinf(w[2]).all()
    assert zoo.check_forward(w, n, v, g, 0) is None


# --------------------------------------------------------------------------- magnitudes

@pytest.mark.parametrize("dtype, scale", [
    ("float32", 1e18), ("float32", 1e-18),
    ("float64", 1e150), ("float64", 1e-150),
    ("float16", 6e4), ("float16", 1e-7), ("bfloat16", 1e18), ("bfloat16", 1e-18),
])
def test_extreme_magnitudes_in_range(dtype, scale, rng):
    """Squares that stay in the accumulation type's range give accurate results.

    float16 6e4 squared (3.6e9) and 1e-7 squared (1e-14) are fine in the float32
    accumulator; float32/bfloat16 squares stay within float32 for |v| in 1e-18..1e18;
    float64 squares of 1e+-150 stay within float64 (the reference itself
    overflows beyond ~1e154, so that is where testing stops).
    """
    shape = (5, 63)
    vals = rng.uniform(0.5, 1.0, shape) * scale * rng.choice([-1, 1], shape)
    v = vals.astype(zoo.np_dtype(dtype))
    g = zoo.g_for(rng, shape, 0, dtype)
    w, n = wnkernels.weight_norm(v, g, 0)
    assert zoo.check_forward(w, n, v, g, 0) is None, zoo.check_forward(w, n, v, g, 0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("scale", [1e30, 1e20, 1e-30, 3e-39])
def test_extreme_magnitudes_out_of_float32_range(dtype, scale, torch, rng):
    """|v|^2 beyond float32's range: overflow/underflow of the sum is allowed.

    The contract promises accuracy, not range; PyTorch's float32 kernel returns
    norm=inf, w=0 for 1e20 and norm=0, w=inf for 1e-30. Each row must be either
    accurate (float64-like range) or exactly PyTorch's outcome -- and never NaN,
    since PyTorch has none here.
    """
    shape = (4, 31)
    vals = rng.uniform(0.5, 1.0, shape) * scale * rng.choice([-1, 1], shape)
    v = vals.astype(zoo.np_dtype(dtype))
    g = zoo.random_values(rng, (4, 1), dtype, "g")
    w, n = wnkernels.weight_norm(v, g, 0)
    w64, n64 = zoo.as_f64(w), zoo.as_f64(n)
    assert not np.isnan(w64).any() and not np.isnan(n64).any()
    w_ref, n_ref, w_tol, n_tol = zoo.forward_tolerances(zoo.as_f64(v), zoo.as_f64(g), 0, 0.0,
                                                        dtype)
    tw, tn = torch._weight_norm_interface(torch.tensor(zoo.as_f64(v)).to(zoo.torch_dtype(dtype)),
                                          torch.tensor(zoo.as_f64(g)).to(zoo.torch_dtype(dtype)), 0)
    tw, tn = zoo.as_f64(tw), zoo.as_f64(tn)
    for k in range(shape[0]):
        accurate = (np.all(np.abs(n64[k] - n_ref[k]) <= n_tol[k])
                    and np.all(np.abs(w64[k] - w_ref[k]) <= w_tol[k]))
        like_torch = np.isinf(tn[k]).all() or (tn[k] == 0).all()
        like_torch = like_torch and np.array_equal(n64[k], tn[k]) and np.array_equal(w64[k], tw[k])
        assert accurate or like_torch, (k, n64[k], n_ref[k], tn[k])


# --------------------------------------------------------------------------- out=

OUT_LAYOUTS = ["C", "F", "strided", "reversed", "transposed", "offset"]


@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("out_layout", OUT_LAYOUTS)
def test_out(out_layout, dtype, rng):
    """out= of any layout is written and returned; its gaps are not touched."""
    sentinel = -7.0
    for shape, dim in [((5, 7, 3), 0), ((5, 7, 3), -1), ((5, 7, 3), (0, 2)), ((5, 7, 3), None),
                       ((33, 65), 1), ((1,), 0), ((), None), ((0, 5), 0), ((3, 0), 0)]:
        v = zoo.layout(zoo.random_values(rng, shape, dtype), "transposed", rng)
        g = zoo.g_for(rng, shape, dim, dtype, 1)
        out = zoo.layout(np.full(shape, sentinel).astype(v.dtype), out_layout, rng, fill=sentinel)
        root = out
        while isinstance(root.base, np.ndarray):
            root = root.base
        gaps_before = np.count_nonzero(root.astype(np.float64) == sentinel) - out.size
        w, n = wnkernels.weight_norm(v, g, dim, out=out)
        assert w is out
        assert zoo.check_forward(w, n, v, g, dim) is None, (shape, dim)
        # the gaps still hold the sentinel (out's own elements may too, by chance: not here)
        assert np.count_nonzero(root.astype(np.float64) == sentinel) == gaps_before


@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("shape, dim, layout", STRATEGY_CASES[:7] + [((3, 5), None, "C")])
def test_in_place(shape, dim, layout, dtype, rng):
    """out=v overwrites v with w on every kernel path."""
    values = zoo.random_values(rng, shape, dtype)
    v = zoo.layout(values, layout, rng)
    g = zoo.g_for(rng, shape, dim, dtype, 1)
    w_ref, n_ref, w_tol, n_tol = zoo.forward_tolerances(zoo.as_f64(values), zoo.as_f64(g), dim,
                                                        0.0, dtype)
    w, n = wnkernels.weight_norm(v, g, dim, out=v)
    assert w is v
    assert zoo.compare("norms", n, n_ref, n_tol) is None
    assert zoo.compare("w", v, w_ref, w_tol) is None


def test_in_place_through_another_view(rng):
    """out= a different view object of exactly v's memory is in place too."""
    v = rng.standard_normal((6, 40))[:, ::2]
    values = v.copy()
    g = rng.uniform(1, 2, (6, 1))
    out = v[...]
    assert out is not v
    w, n = wnkernels.weight_norm(v, g, 0, out=out)
    assert w is out
    assert zoo.check_forward(w, n, values, g, 0) is None


@pytest.mark.parametrize("make_out", [
    lambda v: v[::-1],            # same memory, rows swapped
    lambda v: v.T,                # same memory, transposed (square)
])
def test_out_aliasing_v_differently_is_right_or_refused(make_out, rng):
    """out= over v's memory in another order: ValueError or a correct w, never a mix."""
    v = rng.standard_normal((64, 64))
    values = v.copy()
    g = rng.uniform(1, 2, (64, 1))
    out = make_out(v)
    try:
        w, n = wnkernels.weight_norm(v, g, 0, out=out)
    except ValueError:
        np.testing.assert_array_equal(v, values)
        return
    assert zoo.check_forward(w, n, values, g, 0) is None


def test_ml_dtypes_bfloat16_numpy_in_numpy_out(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    v = rng.standard_normal((5, 11)).astype(ml_dtypes.bfloat16)
    g = rng.uniform(1, 2, (5,)).astype(ml_dtypes.bfloat16)
    w, n = wnkernels.weight_norm(v, g, 0)
    assert type(w) is np.ndarray and w.dtype == ml_dtypes.bfloat16
    assert type(n) is np.ndarray and n.dtype == np.float32 and n.shape == (5,)


def test_repeated_calls_identical(rng):
    v = rng.standard_normal((301, 517)).astype(np.float32)
    g = rng.uniform(1, 2, (301, 1)).astype(np.float32)
    first = wnkernels.weight_norm(v, g, 0)
    for _ in range(3):
        again = wnkernels.weight_norm(v, g, 0)
        assert zoo.bits(again[0]) == zoo.bits(first[0])
        assert zoo.bits(again[1]) == zoo.bits(first[1])


# --------------------------------------------------------------------------- no copies

NO_COPY_CASES = [
    ("stepped", lambda a: a[:, ::2], 0),
    ("dim-last", lambda a: a[:, :1024], 1),
    ("reversed", lambda a: a[::-1, 1024:], 0),
    ("fortran", lambda a: np.asfortranarray(a[:, :1024]), 0),
    ("transposed", lambda a: a.T, 0),
    ("tuple-dim", lambda a: a.reshape(64, 32, 2048)[:, :, ::2], (0, 2)),
    ("whole", lambda a: a[:, ::2], None),
]


@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("name, view, dim", NO_COPY_CASES, ids=[c[0] for c in NO_COPY_CASES])
def test_inputs_are_read_in_place(name, view, dim, dtype):
    """No copy of v (or grad_w) and no temporary its size: peak traced memory ~ the outputs.

    NumPy reports its data allocations to tracemalloc, so a transposed, contiguous
    or widened (half -> float32) copy of the input would show up in the peak.
    """
    import tracemalloc
    base = zoo.random_values(np.random.default_rng(3), (2048, 2048), dtype)
    v = view(base)
    if name == "fortran":
        base = None  # v is its own copy, made before measuring
    g = zoo.g_for(np.random.default_rng(4), v.shape, dim, dtype)
    slack = 0.25 * v.size * v.itemsize  # far less than any copy of v
    tracemalloc.start()
    try:
        w, n = wnkernels.weight_norm(v, g, dim)
        _, peak = tracemalloc.get_traced_memory()
        assert peak <= w.nbytes + n.nbytes + slack, f"forward peak {peak} B for w of {w.nbytes} B"
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        gv, gg = wnkernels.weight_norm_backward(v, v, g, n, dim)
        _, peak = tracemalloc.get_traced_memory()
        assert peak - before <= gv.nbytes + gg.nbytes + slack, (
            f"backward peak {peak - before} B for grad_v of {gv.nbytes} B")
    finally:
        tracemalloc.stop()
