"""CPU torch tensors: torch in -> torch out, and agreement with PyTorch's fused kernels.

PyTorch's ``torch._weight_norm_interface`` / ``_weight_norm_interface_backward``
accept only dim 0 and dim ndim-1 (a non-negative int). Against those, the
tolerance is flash-attention style: wnkernels may miss the float64 truth by at
most twice what PyTorch's own result misses it by, plus a small atol.
"""

import subprocess
import sys

import numpy as np
import pytest

import wnkernels
import zoo
from wnkernels import reference

torch = pytest.importorskip("torch")

TORCH_DTYPES = {name: getattr(torch, name) for name in zoo.DTYPES}


def _rand(shape, dtype, kind="v", seed=0):
    rng = np.random.default_rng([seed, len(shape), *shape])
    vals = zoo.random_values(rng, shape, "float64", kind)
    return torch.from_numpy(np.ascontiguousarray(vals)).to(TORCH_DTYPES[dtype])


def _g(shape, dim, dtype, form=0, seed=1):
    return _rand(reference.g_shapes(shape, dim)[form], dtype, "g", seed)


def _atol(dtype, scale):
    """Small absolute slack: half an ulp of the largest value in the half types, a few ulps else."""
    return (0.5 if dtype in zoo.HALF else 8.0) * zoo.EPS[dtype] * scale


def _max_err(a, ref):
    with np.errstate(invalid="ignore"):
        d = np.abs(zoo.as_f64(a) - ref)
    return float(np.max(d)) if d.size else 0.0


# --------------------------------------------------------------------------- kinds

@pytest.mark.parametrize("dtype", zoo.DTYPES)
def test_torch_in_torch_out(dtype):
    v = _rand((6, 5, 4), dtype)
    for dim in [0, 1, -1, (0, 2), None]:
        for form in range(2):
            g = _g(tuple(v.shape), dim, dtype, form)
            w, n = wnkernels.weight_norm(v, g, dim)
            assert isinstance(w, torch.Tensor) and isinstance(n, torch.Tensor)
            assert w.dtype == v.dtype and w.device.type == "cpu" and w.shape == v.shape
            assert n.dtype == TORCH_DTYPES[zoo.NORM_DTYPE[dtype]] and n.shape == g.shape
            assert zoo.check_forward(w, n, v, g, dim) is None, (dim, form)
            gw = _rand(tuple(v.shape), dtype, "grad", 2)
            gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, dim)
            assert isinstance(gv, torch.Tensor) and isinstance(gg, torch.Tensor)
            assert gv.dtype == v.dtype and gg.dtype == g.dtype and gg.shape == g.shape
            assert gv.device.type == "cpu" and gg.device.type == "cpu"
            assert zoo.check_backward(gv, gg, gw, v, g, n, dim) is None, (dim, form)


def _torch_layouts(values):
    """(name, tensor equal to values) in torch layouts NumPy tests cannot make."""
    nd = values.dim()
    out = [("contiguous", values.clone())]
    perm = list(range(nd))[::-1]
    out.append(("permuted", values.permute(perm).contiguous().permute(perm)))
    big = torch.full([2 * s + 1 for s in values.shape], float("nan"), dtype=values.dtype)
    sl = tuple(slice(1, 1 + 2 * s, 2) for s in values.shape)
    big[sl] = values
    out.append(("stepped+offset", big[sl]))
    if nd == 4:
        out.append(("channels_last", values.contiguous(memory_format=torch.channels_last)))
    return out


@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("shape", [(7, 33), (5, 3, 3, 9), (3, 5, 7)])
def test_torch_layouts(shape, dtype):
    values = _rand(shape, dtype)
    nd = len(shape)
    for name, v in _torch_layouts(values):
        assert torch.equal(torch.nan_to_num(v), values)
        for dim in zoo.dim_forms(nd):
            for form in range(len(reference.g_shapes(shape, dim))):
                g = _g(shape, dim, dtype, form)
                w, n = wnkernels.weight_norm(v, g, dim)
                msg = zoo.check_forward(w, n, v, g, dim)
                assert msg is None, (name, dim, form, msg)
                gw = _torch_layouts(_rand(shape, dtype, "grad", 3))[-1][1]
                gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, dim)
                msg = zoo.check_backward(gv, gg, gw, v, g, n, dim)
                assert msg is None, (name, dim, form, msg)


def test_expanded_tensor():
    """Stride-0 tensors (expand) are valid inputs."""
    v = _rand((1, 9), "float32").expand(4, 9)
    g = _rand((4, 1), "float32", "g")
    w, n = wnkernels.weight_norm(v, g, 0)
    assert zoo.check_forward(w, n, v, g, 0) is None
    gw = torch.ones(()).expand(4, 9)
    gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, 0)
    assert zoo.check_backward(gv, gg, gw, v, g, n, 0) is None


def test_parameters_and_requires_grad():
    """nn.Parameters (requires_grad) are CPU tensors like any other."""
    v = torch.nn.Parameter(_rand((4, 6), "float32"))
    g = torch.nn.Parameter(_rand((4, 1), "float32", "g"))
    w, n = wnkernels.weight_norm(v, g, 0)
    assert zoo.check_forward(w, n, v, g, 0) is None
    gv, gg = wnkernels.weight_norm_backward(_rand((4, 6), "float32", "grad"), v, g, n, 0)
    assert gv.shape == v.shape and gg.shape == g.shape


@pytest.mark.parametrize("dtype", zoo.DTYPES)
def test_out_and_in_place(dtype):
    v = _rand((9, 17), dtype)
    g = _g((9, 17), 0, dtype)
    out = torch.full((17, 9), -7.0, dtype=v.dtype).t()  # a non-contiguous out
    w, n = wnkernels.weight_norm(v, g, 0, out=out)
    assert w is out
    assert zoo.check_forward(out, n, v, g, 0) is None
    v2 = v.clone()
    w, n = wnkernels.weight_norm(v2, g, 0, out=v2)
    assert w is v2
    assert zoo.check_forward(v2, n, v, g, 0) is None


@pytest.mark.parametrize("dtype", zoo.DTYPES)
def test_dlpack_and_attribute_descriptions_agree(dtype):
    """CPU tensors are keyed from one torch._C._to_dlpack capsule, other
    tensors from their attributes: both give the same plans' results, bit
    for bit, on every layout (transposed, sliced, negative-bit, 0-d, empty,
    Parameters), and a capsule's key never stands in for a different layout."""
    from wnkernels import _dispatch
    base = _rand((7, 12), dtype)
    cases = [(base, 0), (base.t(), 1), (base[1:, ::3], 0), (base[:, 5], 0),
             (base.reshape(84)[3], None), (base[:0], 0),
             (torch.nn.Parameter(base.clone()), 0)]
    if dtype != "bfloat16":            # torch has no negative-bit views of bfloat16
        cases.append((base._neg_view(), 0))
    try:
        for v, dim in cases:
            g = _g(tuple(v.shape), dim, dtype).reshape(reference.g_shapes(tuple(v.shape), dim)[0])
            gw = _rand(tuple(v.shape), dtype, "grad").reshape(v.shape)
            res = []
            for on in (True, False):
                _dispatch._use_torch_dlpack(on)
                w, n = wnkernels.weight_norm(v, g, dim)
                gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, dim)
                res.append([zoo.bits(x.detach()) for x in (w, n, gv, gg)])
            assert res[0] == res[1], (tuple(v.shape), v.stride(), dim)
            assert zoo.check_forward(w, n, v.detach().resolve_neg(), g, dim) is None
    finally:
        _dispatch._use_torch_dlpack(True)


@pytest.mark.parametrize("dtype", zoo.DTYPES)
def test_same_bits_as_numpy(dtype):
    """A torch tensor and a NumPy array holding the same values in the same layout agree bitwise."""
    t = _rand((33, 65), dtype)
    g = _g((33, 65), 1, dtype)
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        a = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        ga = g.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    else:
        a, ga = t.numpy(), g.numpy()
    wt, nt = wnkernels.weight_norm(t, g, 1)
    wa, na = wnkernels.weight_norm(a, ga, 1)
    assert zoo.bits(wt) == zoo.bits(wa) and zoo.bits(nt) == zoo.bits(na)


def test_numpy_use_does_not_import_torch():
    code = ("import sys, numpy as np, wnkernels\n"
            "w, n = wnkernels.weight_norm(np.ones((3, 4)), np.ones((3, 1)))\n"
            "wnkernels.weight_norm_backward(w, np.ones((3, 4)), np.ones((3, 1)), n)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------- PyTorch agreement

FUSED_SHAPES = [(7, 33), (33, 7), (1, 129), (129, 1), (17, 5, 3), (3, 4, 5, 6), (1000, 17), (5, 1031)]


@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("last", [False, True], ids=["dim0", "dimlast"])
@pytest.mark.parametrize("shape", FUSED_SHAPES)
def test_against_pytorch_fused(shape, last, dtype):
    """Forward and backward within 2x PyTorch's own error (+ atol) of the float64 truth."""
    dim = len(shape) - 1 if last else 0
    v = _rand(shape, dtype)
    gw = _rand(shape, dtype, "grad", 5)
    for form in range(len(reference.g_shapes(shape, dim))):
        g = _g(shape, dim, dtype, form)
        tw, tn = torch._weight_norm_interface(v, g, dim)
        w, n = wnkernels.weight_norm(v, g, dim)
        w_ref, n_ref = reference.weight_norm(zoo.as_f64(v), zoo.as_f64(g), dim)
        assert n.dtype == tn.dtype and w.dtype == tw.dtype
        assert tuple(n.shape) == tuple(g.shape)
        scale = float(np.max(np.abs(w_ref)))
        assert _max_err(w, w_ref) <= 2 * _max_err(tw, w_ref) + _atol(dtype, scale)
        nd = zoo.NORM_DTYPE[dtype]
        assert _max_err(n, n_ref) <= 2 * _max_err(tn.reshape(n.shape), n_ref) + _atol(
            nd, float(np.max(n_ref)))
        # backward, all three from the same (PyTorch's) norms
        tgv, tgg = torch.ops.aten._weight_norm_interface_backward(gw, v, g, tn, dim)
        gv, gg = wnkernels.weight_norm_backward(gw, v, g, tn.reshape(g.shape), dim)
        gv_ref, gg_ref = reference.weight_norm_backward(
            zoo.as_f64(gw), zoo.as_f64(v), zoo.as_f64(g), zoo.as_f64(tn).reshape(g.shape), dim)
        assert gv.dtype == tgv.dtype and gg.dtype == tgg.dtype
        # grad_v and grad_g are differences/sums that may cancel to ~0 (rows of one
        # element: grad_v = 0 exactly), so atol scales with the size of their terms.
        keep = reference.g_shapes(shape, dim)[0]
        red = tuple(ax for ax in range(len(shape)) if ax != dim)
        g_k, n_k = zoo.as_f64(g).reshape(keep), zoo.as_f64(tn).reshape(keep)
        terms_gv = np.abs(g_k / n_k * zoo.as_f64(gw)) + np.abs(
            g_k * gg_ref.reshape(keep) / n_k ** 2 * zoo.as_f64(v))
        terms_gg = np.sum(np.abs(zoo.as_f64(gw) * zoo.as_f64(v)), axis=red) / n_k.squeeze(red)
        assert _max_err(gv, gv_ref) <= 2 * _max_err(tgv, gv_ref) + _atol(
            dtype, float(np.max(terms_gv)))
        assert _max_err(gg, gg_ref) <= 2 * _max_err(tgg.reshape(gg.shape), gg_ref) + _atol(
            dtype, float(np.max(terms_gg)))


@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("last", [False, True], ids=["dim0", "dimlast"])
def test_nan_exactly_where_pytorch(last, dtype):
    """eps=0: zero rows give NaN in w, grad_v, grad_g exactly where PyTorch does."""
    shape = (6, 9, 7)
    dim = 2 if last else 0
    v = _rand(shape, dtype)
    gw = _rand(shape, dtype, "grad", 4)
    if last:
        v[..., [1, 4]] = 0
        gw[..., 4] = 0
    else:
        v[[1, 4]] = 0
        gw[4] = 0
    g = _g(shape, dim, dtype)
    g.view(-1)[2] = 0  # g = 0 on a non-zero row: finite (w = 0)
    tw, tn = torch._weight_norm_interface(v, g, dim)
    w, n = wnkernels.weight_norm(v, g, dim)
    assert torch.equal(torch.isnan(w), torch.isnan(tw))
    assert torch.isnan(w).any()
    assert torch.equal(torch.isnan(n), torch.isnan(tn))
    assert torch.equal(n == 0, tn == 0)
    tgv, tgg = torch.ops.aten._weight_norm_interface_backward(gw, v, g, tn, dim)
    gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, dim)
    assert torch.equal(torch.isnan(gv), torch.isnan(tgv))
    assert torch.equal(torch.isnan(gg), torch.isnan(tgg))
    assert torch.isnan(gg).any()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_eps_zero_values_match_pytorch(dtype):
    """With eps=0 the numbers are PyTorch's, to float tolerance."""
    v = _rand((64, 3, 3, 3), dtype)
    g = _g((64, 3, 3, 3), 0, dtype)
    tw, tn = torch._weight_norm_interface(v, g, 0)
    w, n = wnkernels.weight_norm(v, g, 0, eps=0.0)
    rtol = 4 * zoo.EPS[dtype] + zoo.NORM_RTOL[dtype]
    torch.testing.assert_close(w, tw, rtol=rtol, atol=0)
    torch.testing.assert_close(n, tn, rtol=rtol, atol=0)
