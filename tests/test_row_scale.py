"""wnkernels.row_scale: ``scale = g / norm`` in g's shape and dtype, and the norms.

The norms are bitwise those `weight_norm` returns for the same v and g; the
scale is g / norm (norm as returned) rounded once to g's dtype, for every
dtype, dim form and layout; v is read once and nothing of v's size is written
or allocated; errors are `weight_norm`'s.  And the paper's use: a layer that
never forms w gets the same outputs and gradients.
"""

import tracemalloc

import numpy as np
import pytest

import wnkernels
import zoo
from wnkernels import reference


def _scale_ref(g, norms, dtype):
    """g / norm in float64 (exact for these inputs' products), rounded once."""
    with np.errstate(all="ignore"):
        return (zoo.as_f64(g) / zoo.as_f64(norms)).astype(zoo.np_dtype(dtype))


@pytest.mark.parametrize("layout", ["C", "F", "strided", "reversed", "transposed", "mixed"])
@pytest.mark.parametrize("dtype", zoo.DTYPES)
def test_zoo(dtype, layout):
    """Every shape x dim form x g form: norms bitwise the forward's, scale g / norm."""
    def check(case):
        s, n = wnkernels.row_scale(case.v, case.g, case.dim)
        w, n_fwd = wnkernels.weight_norm(case.v, case.g, case.dim)
        if type(s) is not np.ndarray or s.shape != case.g.shape or s.dtype != case.g.dtype:
            return f"scale: {type(s).__name__} {s.shape} {s.dtype}"
        if zoo.bits(n) != zoo.bits(n_fwd):
            return "norms differ from weight_norm's"
        if zoo.bits(s) != zoo.bits(_scale_ref(case.g, n, dtype)):
            return "scale is not g / norm rounded once"
        return None
    zoo.run_all(zoo.forward_cases(dtype, layout), check)


@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("shape,dim", [((4096, 257), 0), ((3, 400001), 0), ((257, 1031), 1),
                                       ((33, 2000), -1), ((9, 300, 7), (0, 2)),
                                       ((2, 3, 40001), (0, 1))])
def test_every_strategy(shape, dim, dtype, rng):
    """Short and long rows, rows split across threads, column mode."""
    v = zoo.random_values(rng, shape, dtype)
    g = zoo.g_for(rng, shape, dim, dtype, 1)
    s, n = wnkernels.row_scale(v, g, dim, eps=0.5)
    _, n_fwd = wnkernels.weight_norm(v, g, dim, eps=0.5)
    assert zoo.bits(n) == zoo.bits(n_fwd)
    assert zoo.bits(s) == zoo.bits(_scale_ref(g, n, dtype))
    n_ref = reference.weight_norm(zoo.as_f64(v), zoo.as_f64(g), dim, eps=0.5)[1]
    assert zoo.compare("norms", n, n_ref, zoo.NORM_RTOL[dtype] * np.abs(n_ref)) is None


def test_w_is_v_times_scale_for_float32_and_float64(rng):
    """The forward's w is v * scale exactly (the scale the forward formed)."""
    for dtype in ("float32", "float64"):
        v = zoo.random_values(rng, (37, 129), dtype)
        g = zoo.g_for(rng, v.shape, 0, dtype)
        s, _ = wnkernels.row_scale(v, g)
        w, _ = wnkernels.weight_norm(v, g)
        assert zoo.bits(w) == zoo.bits(v * s)


def test_nothing_of_v_size_is_allocated(rng):
    """v of 32 MiB: row_scale allocates only its two per-row outputs."""
    v = rng.standard_normal((4096, 2048)).astype(np.float32)
    g = np.ones((4096, 1), np.float32)
    wnkernels.row_scale(v, g)                 # plan once
    tracemalloc.start()
    try:
        s, n = wnkernels.row_scale(v, g)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 16, peak               # 2 x 16 KiB outputs and change


def test_errors_are_weight_norms(rng):
    v = rng.standard_normal((5, 7))
    for g, exc in [(np.ones((7, 1)), ValueError), (np.ones((5, 1), np.float32), TypeError),
                   ([1.0] * 5, TypeError)]:
        with pytest.raises(exc):
            wnkernels.row_scale(v, g)
        with pytest.raises(exc):
            wnkernels.weight_norm(v, g)
    with pytest.raises(ValueError, match="eps"):
        wnkernels.row_scale(v, np.ones((5, 1)), eps=-1.0)
    with pytest.raises(np.exceptions.AxisError):
        wnkernels.row_scale(v, np.ones((5, 1)), 2)


def test_torch_in_torch_out(torch):
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        v = torch.randn(33, 17).to(dtype)
        g = torch.rand(33, 1).to(dtype) + 0.5
        s, n = wnkernels.row_scale(v, g)
        w, n_fwd = wnkernels.weight_norm(v, g)
        assert type(s) is torch.Tensor and s.dtype == dtype and s.shape == g.shape
        assert torch.equal(n, n_fwd)
        ref = (g.double() / n.double()).to(dtype)
        assert torch.equal(s, ref)


def test_a_layer_that_never_forms_w(torch, rng):
    """y = (x @ v.T) * scale + b equals x @ w.T + b, and its gradients through
    weight_norm_backward with grad_w = dy.T x equal autograd's of the w form."""
    x = torch.randn(64, 33, dtype=torch.float64)
    v = torch.randn(17, 33, dtype=torch.float64)
    g = torch.rand(17, 1, dtype=torch.float64) + 0.5
    b = torch.randn(17, dtype=torch.float64)
    s, n = wnkernels.row_scale(v, g)
    y = (x @ v.T) * s.reshape(1, -1) + b
    w, _ = wnkernels.weight_norm(v, g)
    torch.testing.assert_close(y, x @ w.T + b, rtol=1e-13, atol=1e-13)
    dy = torch.randn_like(y)
    grad_w = dy.T @ x
    gv, gg = wnkernels.weight_norm_backward(grad_w, v, g, n)
    vr, gr = v.clone().requires_grad_(), g.clone().requires_grad_()
    wr = gr * vr / vr.norm(dim=1, keepdim=True)
    (x @ wr.T + b).backward(dy)
    torch.testing.assert_close(gv, vr.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gg, gr.grad, rtol=1e-12, atol=1e-12)
