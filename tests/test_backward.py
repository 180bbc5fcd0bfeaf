"""wnkernels.weight_norm_backward on NumPy arrays against the float64 reference."""

import numpy as np
import pytest

import wnkernels
import zoo
from wnkernels import reference


def _backward_cases(dtype, layout, seed=1):
    """The forward zoo plus grad_w (in another layout) and the norms as the forward returns them."""
    rng = np.random.default_rng([seed, zoo.DTYPES.index(dtype), zoo.LAYOUTS.index(layout)])
    for i, case in enumerate(zoo.forward_cases(dtype, layout, seed=seed)):
        grad_w = zoo.layout(zoo.random_values(rng, case.v.shape, dtype, "grad"),
                            zoo.LAYOUTS[(zoo.LAYOUTS.index(layout) + 1 + i) % len(zoo.LAYOUTS)],
                            rng)
        norms = zoo.reference_norms(case.v, case.g, case.dim)
        if i % 3 == 0 and norms.ndim:  # norms with strides of their own now and then
            norms = zoo.layout(norms, "reversed", rng)
        case.grad_w, case.norms = grad_w, norms
        yield case


def _backward_case(case):
    args = (case.grad_w, case.v, case.g, case.norms)
    before = zoo.snapshot(*args)
    grad_v, grad_g = wnkernels.weight_norm_backward(*args, dim=case.dim)
    if type(grad_v) is not np.ndarray or type(grad_g) is not np.ndarray:
        return f"returned {type(grad_v).__name__}, {type(grad_g).__name__}"
    if zoo.snapshot(*args) != before:
        return "an input was modified"
    if grad_v.size and (np.shares_memory(grad_v, case.v) or np.shares_memory(grad_v, case.grad_w)):
        return "grad_v shares memory with an input"
    return zoo.check_backward(grad_v, grad_g, *args, case.dim)


@pytest.mark.parametrize("layout", zoo.LAYOUTS)
@pytest.mark.parametrize("dtype", zoo.DTYPES)
def test_zoo(dtype, layout):
    zoo.run_all(_backward_cases(dtype, layout), _backward_case)


def test_dim_is_positional_and_defaults_to_0(rng):
    v = rng.standard_normal((3, 5))
    g = rng.uniform(1, 2, (3, 1))
    gw = rng.standard_normal((3, 5))
    n = zoo.reference_norms(v, g, 0)
    a = wnkernels.weight_norm_backward(gw, v, g, n)
    b = wnkernels.weight_norm_backward(gw, v, g, n, 0)
    c = wnkernels.weight_norm_backward(gw, v, g, n, dim=0)
    for x, y in [(a, b), (a, c)]:
        assert zoo.bits(x[0]) == zoo.bits(y[0]) and zoo.bits(x[1]) == zoo.bits(y[1])
    assert zoo.check_backward(*a, gw, v, g, n, 0) is None


@pytest.mark.parametrize("dtype", zoo.DTYPES)
def test_round_trip_with_forward_norms(dtype, rng):
    """The norms the forward returns are what the backward takes."""
    for shape, dim in [((7, 5, 3), 0), ((7, 5, 3), -1), ((7, 5, 3), (0, 2)), ((7, 5, 3), None)]:
        v = zoo.random_values(rng, shape, dtype)
        for form in range(2):
            g = zoo.g_for(rng, shape, dim, dtype, form)
            gw = zoo.random_values(rng, shape, dtype, "grad")
            _, norms = wnkernels.weight_norm(v, g, dim)
            gv, gg = wnkernels.weight_norm_backward(gw, v, g, norms, dim)
            assert gg.shape == g.shape and gg.dtype == g.dtype and gv.dtype == v.dtype
            assert zoo.check_backward(gv, gg, gw, v, g, norms, dim) is None


@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("dim", [0, -1, 1, (0, 2), None])
def test_uses_the_given_norms(dtype, dim, rng):
    """Norms that are not v's row norms are used as given, never recomputed."""
    shape = (6, 5, 4)
    v = zoo.random_values(rng, shape, dtype)
    g = zoo.g_for(rng, shape, dim, dtype)
    gw = zoo.random_values(rng, shape, dtype, "grad")
    true_norms = zoo.reference_norms(v, g, dim)
    norms = (true_norms * rng.uniform(1.5, 3.0, true_norms.shape)).astype(true_norms.dtype)
    gv, gg = wnkernels.weight_norm_backward(gw, v, g, norms, dim)
    assert zoo.check_backward(gv, gg, gw, v, g, norms, dim) is None
    # and it is far from the result with the true norms (so the check above has teeth)
    gv_true, gg_true, _, _ = zoo.backward_tolerances(gw, v, g, true_norms, dim, dtype)
    assert np.max(np.abs(zoo.as_f64(gg) - gg_true)) > 0.1 * np.max(np.abs(gg_true))


@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("shape, dim", [((4096, 257), 0), ((3, 400001), 0), ((257, 1031), 1),
                                        ((17, 129, 33), 1), ((9, 300, 7), (0, 2)),
                                        ((5, 100003), None)])
def test_kernel_strategies(shape, dim, dtype, rng):
    v = zoo.random_values(rng, shape, dtype)
    g = zoo.g_for(rng, shape, dim, dtype)
    gw = zoo.random_values(rng, shape, dtype, "grad")
    n = zoo.reference_norms(v, g, dim)
    gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, dim)
    msg = zoo.check_backward(gv, gg, gw, v, g, n, dim)
    assert msg is None, msg


def test_broadcast_grad_w(rng):
    """grad_w of a sum is a broadcast 1 (stride 0): read in place like any stride."""
    v = rng.standard_normal((6, 9))
    g = rng.uniform(1, 2, (6, 1))
    n = zoo.reference_norms(v, g, 0)
    gw = np.broadcast_to(np.array(1.0), v.shape)
    gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, 0)
    assert zoo.check_backward(gv, gg, gw, v, g, n, 0) is None


@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("shape", zoo.EMPTY_SHAPES)
def test_empty(shape, dtype, rng):
    """Zero-length rows: grad_g = 0/norm: NaN for norm 0 (eps=0), 0 for norm sqrt(eps)."""
    for dim in zoo.dim_forms(len(shape)):
        for eps in [0.0, 0.25]:
            v = np.zeros(shape, zoo.np_dtype(dtype))
            g = zoo.g_for(rng, shape, dim, dtype)
            norms = np.full(g.shape, np.sqrt(eps), zoo.NORM_DTYPE[dtype])
            gv, gg = wnkernels.weight_norm_backward(v.copy(), v, g, norms, dim)
            assert gv.shape == shape and gv.dtype == v.dtype
            assert gg.shape == g.shape and gg.dtype == g.dtype
            kept = reference.kept_axes(dim, len(shape))
            rowlen = int(np.prod([shape[ax] for ax in range(len(shape)) if ax not in kept]))
            if gg.size and rowlen == 0:
                gg64 = zoo.as_f64(gg)
                assert np.isnan(gg64).all() if eps == 0 else (gg64 == 0).all(), (dim, eps, gg64)
            assert zoo.check_backward(gv, gg, v.copy(), v, g, norms, dim) is None


@pytest.mark.parametrize("dtype", zoo.DTYPES)
def test_zero_norm_rows_are_nan(dtype, rng):
    """Zero rows with eps=0 (norm 0): NaN in that row's grad_v and grad_g, like PyTorch."""
    v = zoo.random_values(rng, (5, 8), dtype)
    v[2] = 0
    g = zoo.g_for(rng, v.shape, 0, dtype)
    gw = zoo.random_values(rng, v.shape, dtype, "grad")
    n = zoo.reference_norms(v, g, 0)
    assert n[2, 0] == 0
    gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, 0)
    gv64, gg64 = zoo.as_f64(gv), zoo.as_f64(gg)
    assert np.isnan(gv64[2]).all() and np.isnan(gg64[2]).all()
    assert np.isfinite(np.delete(gv64, 2, axis=0)).all()
    assert zoo.check_backward(gv, gg, gw, v, g, n, 0) is None


@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("dim", [0, -1, (0, 2)])
def test_nonfinite_stays_in_its_row(dtype, dim, rng):
    shape = (5, 6, 7)
    v = zoo.random_values(rng, shape, dtype)
    gw = zoo.random_values(rng, shape, dtype, "grad").astype(np.float64)
    g = zoo.g_for(rng, shape, dim, dtype)
    n = zoo.reference_norms(v, g, dim)
    keep = reference.g_shapes(shape, dim)[0]
    rows = np.broadcast_to(np.arange(n.size).reshape(keep), shape)
    gw[tuple(np.argwhere(rows == 1)[0])] = np.nan
    gw[tuple(np.argwhere(rows == 3)[-1])] = np.inf
    gw = gw.astype(zoo.np_dtype(dtype))
    gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, dim)
    assert zoo.check_backward(gv, gg, gw, v, g, n, dim) is None
    bad = np.zeros(n.size, bool)
    bad[[1, 3]] = True
    assert not np.isfinite(zoo.as_f64(gg).ravel()[bad]).any()
    assert np.isfinite(zoo.as_f64(gg).ravel()[~bad]).all()
    assert np.isfinite(zoo.as_f64(gv)[~bad[rows]]).all()


def test_ml_dtypes_bfloat16(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    v = rng.standard_normal((5, 11)).astype(ml_dtypes.bfloat16)
    g = rng.uniform(1, 2, (5,)).astype(ml_dtypes.bfloat16)
    gw = rng.standard_normal((5, 11)).astype(ml_dtypes.bfloat16)
    n = zoo.reference_norms(v, g, 0)
    assert n.dtype == np.float32
    gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, 0)
    assert gv.dtype == ml_dtypes.bfloat16 and gg.dtype == ml_dtypes.bfloat16 and gg.shape == (5,)
    assert zoo.check_backward(gv, gg, gw, v, g, n, 0) is None


def test_repeated_calls_identical(rng):
    v = rng.standard_normal((301, 517)).astype(np.float32)
    g = rng.uniform(1, 2, (301, 1)).astype(np.float32)
    gw = rng.standard_normal((301, 517)).astype(np.float32)
    n = zoo.reference_norms(v, g, 0)
    first = wnkernels.weight_norm_backward(gw, v, g, n, 0)
    for _ in range(3):
        again = wnkernels.weight_norm_backward(gw, v, g, n, 0)
        assert zoo.bits(again[0]) == zoo.bits(first[0])
        assert zoo.bits(again[1]) == zoo.bits(first[1])
