"""The float64 reference (wnkernels.reference) against independent formulations.

The reference is the yardstick for every other test, so it is checked here
against things that share none of its code: the plain whole-array formula,
PyTorch's float64 autograd (any dim) and fused kernels (dims 0 and last),
and central finite differences of the forward.
"""

import numpy as np
import pytest

import zoo
from wnkernels import reference


def _reduced(ndim, dim):
    kept = reference.kept_axes(dim, ndim)
    return tuple(ax for ax in range(ndim) if ax not in kept)


@pytest.mark.parametrize("dim, ndim, kept", [
    (None, 3, ()), ((), 3, ()), (0, 3, (0,)), (-1, 3, (2,)), ((2, 0), 3, (0, 2)),
    ((-1, -3), 3, (0, 2)), ([1], 2, (1,)), (np.int64(1), 2, (1,)), (None, 0, ()),
])
def test_kept_axes(dim, ndim, kept):
    assert reference.kept_axes(dim, ndim) == kept


@pytest.mark.parametrize("dim, ndim", [(2, 2), (-3, 2), ((0, 0), 2), ((1, -1), 2), (0, 0)])
def test_kept_axes_rejects_bad_dims(dim, ndim):
    with pytest.raises(np.exceptions.AxisError):
        reference.kept_axes(dim, ndim)


@pytest.mark.parametrize("shape, dim, shapes", [
    ((4, 3, 2), 0, ((4, 1, 1), (4,))),
    ((4, 3, 2), -1, ((1, 1, 2), (2,))),
    ((4, 3, 2), (2, 0), ((4, 1, 2), (4, 2))),
    ((4, 3), None, ((1, 1), (), (1,))),
    ((5,), None, ((1,), ())),
    ((5,), 0, ((5,),)),
    ((), None, ((), (1,))),
])
def test_g_shapes(shape, dim, shapes):
    assert reference.g_shapes(shape, dim) == shapes


def test_whole_array_is_plain_formula(rng):
    v = rng.standard_normal((3, 4, 5))
    g = np.array(1.75)
    w, n = reference.weight_norm(v, g, None)
    truth = np.sqrt(np.sum(v.ravel() ** 2))
    np.testing.assert_allclose(n, truth, rtol=1e-15)
    np.testing.assert_allclose(w, 1.75 * v / truth, rtol=1e-15)
    assert n.shape == ()
    for dim in [(), None]:
        for g2 in [np.array([1.75]), np.full((1, 1, 1), 1.75)]:
            w2, n2 = reference.weight_norm(v, g2, dim)
            np.testing.assert_array_equal(w2, w)
            assert n2.shape == g2.shape


def test_rows_get_norm_g(rng):
    """Each row of w has Euclidean norm |g_k| (eps = 0) and v's direction."""
    v = rng.standard_normal((6, 7, 8))
    g = rng.uniform(-2, 2, (6, 1, 8))
    w, _ = reference.weight_norm(v, g, (0, 2))
    np.testing.assert_allclose(np.sqrt(np.sum(w ** 2, axis=1, keepdims=True)), np.abs(g),
                               rtol=1e-14)
    assert (np.sign(w) == np.sign(v) * np.sign(g)).all()


@pytest.mark.parametrize("shape", [(4, 3, 5), (2, 3, 4, 5)])
def test_dim_forms_agree(shape, rng):
    """Negative/positive/tuple spellings and g forms give identical results."""
    v = rng.standard_normal(shape)
    nd = len(shape)
    for a, b in [(0, -nd), (nd - 1, -1), ((0,), 0), ((0, 2), (2, 0)), ((0, 2), (-nd + 2, -nd)),
                 (None, ())]:
        g_keep = rng.uniform(0.5, 2, reference.g_shapes(shape, a)[0])
        w1, n1 = reference.weight_norm(v, g_keep, a)
        w2, n2 = reference.weight_norm(v, g_keep, b)
        np.testing.assert_array_equal(w1, w2)
        np.testing.assert_array_equal(n1, n2)
        flat = reference.g_shapes(shape, a)[1]
        w3, n3 = reference.weight_norm(v, g_keep.reshape(flat), a)
        np.testing.assert_array_equal(w1, w3)
        assert n3.shape == flat


@pytest.mark.parametrize("dim", zoo.dim_forms(4))
def test_against_torch_autograd(dim, torch, rng):
    """Forward and backward against torch float64 autograd of the textbook formula."""
    shape = (3, 4, 5, 2)
    v = rng.standard_normal(shape)
    g = rng.uniform(-2, 2, reference.g_shapes(shape, dim)[0])
    gw = rng.standard_normal(shape)
    eps = 0.125
    red = _reduced(4, dim)
    tv = torch.tensor(v, requires_grad=True)
    tg = torch.tensor(g, requires_grad=True)
    tn = torch.sqrt((tv * tv).sum(dim=red, keepdim=True) + eps) if red else torch.sqrt(tv * tv + eps)
    tw = tg * (tv / tn)
    tw.backward(torch.tensor(gw))
    w, n = reference.weight_norm(v, g, dim, eps=eps)
    np.testing.assert_allclose(w, tw.detach().numpy(), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(n, tn.detach().numpy().reshape(g.shape), rtol=1e-14)
    gv, gg = reference.weight_norm_backward(gw, v, g, n, dim)
    np.testing.assert_allclose(gv, tv.grad.numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(gg, tg.grad.numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 6), (1, 9), (9, 1)])
@pytest.mark.parametrize("last", [False, True])
def test_against_torch_fused(shape, last, torch, rng):
    """Against torch._weight_norm_interface (and its backward) in float64."""
    dim = len(shape) - 1 if last else 0
    v = rng.standard_normal(shape)
    g = rng.uniform(-2, 2, reference.g_shapes(shape, dim)[0])
    gw = rng.standard_normal(shape)
    tw, tn = torch._weight_norm_interface(torch.tensor(v), torch.tensor(g), dim)
    w, n = reference.weight_norm(v, g, dim)
    np.testing.assert_allclose(w, tw.numpy(), rtol=1e-14)
    np.testing.assert_allclose(n, tn.numpy().reshape(n.shape), rtol=1e-14)
    tgv, tgg = torch.ops.aten._weight_norm_interface_backward(
        torch.tensor(gw), torch.tensor(v), torch.tensor(g), tn, dim)
    gv, gg = reference.weight_norm_backward(gw, v, g, n, dim)
    np.testing.assert_allclose(gv, tgv.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gg, tgg.numpy().reshape(gg.shape), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dim", [0, -1, (0, 2), None])
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_backward_is_the_gradient(dim, eps, rng):
    """<grad_w, dw> = <grad_v, dv> + <grad_g, dg> by central differences."""
    shape = (3, 4, 2)
    v = rng.standard_normal(shape)
    g = rng.uniform(-2, 2, reference.g_shapes(shape, dim)[-1])
    gw = rng.standard_normal(shape)
    _, n = reference.weight_norm(v, g, dim, eps=eps)
    gv, gg = reference.weight_norm_backward(gw, v, g, n, dim)
    h = 1e-6
    for _ in range(5):
        dv = rng.standard_normal(shape)
        dg = rng.standard_normal(g.shape)
        wp, _ = reference.weight_norm(v + h * dv, g + h * dg, dim, eps=eps)
        wm, _ = reference.weight_norm(v - h * dv, g - h * dg, dim, eps=eps)
        lhs = np.sum(gw * (wp - wm)) / (2 * h)
        rhs = np.sum(gv * dv) + np.sum(gg * dg)
        assert lhs == pytest.approx(rhs, rel=1e-7, abs=1e-8)


def test_backward_uses_given_norms(rng):
    v = rng.standard_normal((4, 6))
    g = rng.uniform(0.5, 2, (4, 1))
    gw = rng.standard_normal((4, 6))
    norms = rng.uniform(1, 3, (4, 1))
    gv, gg = reference.weight_norm_backward(gw, v, g, norms, 0)
    np.testing.assert_allclose(gg, np.sum(gw * v, axis=1, keepdims=True) / norms, rtol=1e-15)
    np.testing.assert_allclose(gv, g / norms * gw - g * gg / norms ** 2 * v, rtol=1e-14)


@pytest.mark.parametrize("eps", [0.0, 0.25])
def test_empty(eps):
    w, n = reference.weight_norm(np.zeros((3, 0)), np.ones((3, 1)), 0, eps=eps)
    assert w.shape == (3, 0)
    np.testing.assert_array_equal(n, np.full((3, 1), np.sqrt(eps)))
    gv, gg = reference.weight_norm_backward(np.zeros((3, 0)), np.zeros((3, 0)),
                                            np.ones((3, 1)), n, 0)
    assert gv.shape == (3, 0)
    if eps == 0:
        assert np.isnan(gg).all()
    else:
        np.testing.assert_array_equal(gg, np.zeros((3, 1)))
    w, n = reference.weight_norm(np.zeros((0, 4)), np.ones((0, 1)), 0, eps=eps)
    assert w.shape == (0, 4) and n.shape == (0, 1)


def test_zero_row_and_nonfinite_stay_in_their_row():
    v = np.ones((4, 3))
    v[1] = 0.0
    v[2, 1] = np.nan
    v[3, 0] = np.inf
    w, n = reference.weight_norm(v, np.ones((4, 1)), 0)
    np.testing.assert_array_equal(n[:, 0], [np.sqrt(3), 0.0, np.nan, np.inf])
    assert np.isfinite(w[0]).all()
    assert np.isnan(w[1]).all() and np.isnan(w[2]).all()
    np.testing.assert_array_equal(w[3], [np.nan, 0.0, 0.0])  # inf/inf, 1/inf


@pytest.mark.parametrize("dtype", zoo.DTYPES)
def test_low_precision_inputs_are_exact(dtype, rng):
    v = zoo.random_values(rng, (5, 9), dtype)
    g = zoo.random_values(rng, (5,), dtype, "g")
    w, n = reference.weight_norm(v, g, 0)
    w64, n64 = reference.weight_norm(v.astype(np.float64), g.astype(np.float64), 0)
    assert w.dtype == n.dtype == np.float64
    np.testing.assert_array_equal(w, w64)
    np.testing.assert_array_equal(n, n64)


def test_bad_shapes_and_eps():
    v = np.ones((3, 4))
    with pytest.raises(ValueError, match="g"):
        reference.weight_norm(v, np.ones((1, 3)), 0)
    with pytest.raises(ValueError, match="eps"):
        reference.weight_norm(v, np.ones((3,)), 0, eps=-1.0)
    with pytest.raises(ValueError, match="grad_w"):
        reference.weight_norm_backward(np.ones((4, 3)), v, np.ones(3), np.ones(3), 0)
    with pytest.raises(ValueError, match="norms"):
        reference.weight_norm_backward(v, v, np.ones(3), np.ones(4), 0)
    with pytest.raises(TypeError):
        reference.weight_norm(np.ones((3, 4), np.int32), np.ones(3), 0)
