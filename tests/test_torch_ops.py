"""wnkernels.torch's custom operators: schema/fake/autograd (opcheck), gradients
(gradcheck, gradgradcheck in float64), agreement with PyTorch's fused kernels
and the float64 reference, and torch.compile keeping the ops in the graph."""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import wnkernels  # noqa: E402
import wnkernels.torch as wt  # noqa: E402
from wnkernels import reference  # noqa: E402
from torch.library import opcheck  # noqa: E402

OPS = torch.ops.wnkernels
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# (shape, dims) -- dims are the ops' kept axes
CASES = [((5, 3, 4), [0]), ((5, 3, 4), [2]), ((5, 3, 4), [1]), ((7, 9), [1]),
         ((4, 3, 2), []), ((3, 4, 5), [0, 2]), ((6,), [0]), ((0, 4), [0]), ((3, 0), [0]),
         ((1, 1), [0])]


def _g_for(v, dims, flat=False):
    shape = [n if k in dims else 1 for k, n in enumerate(v.shape)]
    if flat:
        shape = [v.shape[k] for k in dims] or [1]
    return torch.rand(shape, dtype=v.dtype) + 0.5


def _tol(dtype):
    return {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3,
            torch.bfloat16: 1.6e-2}[dtype]


@pytest.mark.parametrize("shape,dims", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_every_op(shape, dims, dtype):
    v = torch.randn(shape, dtype=dtype)
    g = _g_for(v, dims)
    w, n = OPS.weight_norm(v, g, dims, 0.0, False)
    gw = torch.randn(shape, dtype=dtype)
    calls = [(OPS.weight_norm, (v, g, dims, 0.0, False)),
             (OPS.weight_norm, (v, g, dims, 0.25, True)),
             (OPS.row_scale, (v, g, dims, 0.0))]
    if v.numel() or not g.numel():     # zero-length rows: grad_g is 0/0 = NaN by contract
        calls.append((OPS.weight_norm_backward, (gw, v, g, n, dims)))
    for op, args in calls:
        res = opcheck(op, args)
        assert all(r == "SUCCESS" for r in res.values()), (op, res)


def test_opcheck_strided_and_flat_g():
    v = torch.randn(8, 6, 5, dtype=torch.float32).transpose(0, 2)[::2]   # (3, 6, 8) strided
    for dims in ([0], [2], [0, 1]):
        g = _g_for(v, dims, flat=True)
        w, n = OPS.weight_norm(v, g, dims, 0.0, False)
        assert w.stride() == tuple(wnkernels._planner.dense_strides(v.shape, v.stride()))
        gw = torch.randn_like(v).transpose(0, 1).contiguous().transpose(0, 1)
        for op, args in ((OPS.weight_norm, (v, g, dims, 0.0, False)),
                         (OPS.row_scale, (v, g, dims, 0.0)),
                         (OPS.weight_norm_backward, (gw, v, g, n, dims))):
            res = opcheck(op, args)
            assert all(r == "SUCCESS" for r in res.values()), (op, dims, res)


@pytest.mark.parametrize("shape,dims", [c for c in CASES if 0 not in c[0]])
def test_gradcheck_float64(shape, dims):
    v = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    g = _g_for(v.detach(), dims).requires_grad_()
    dim = wt._ops._as_dim(dims)
    assert torch.autograd.gradcheck(lambda v, g: wt.weight_norm_fn(v, g, dim)[0], (v, g))
    assert torch.autograd.gradgradcheck(lambda v, g: wt.weight_norm_fn(v, g, dim)[0], (v, g))
    assert torch.autograd.gradcheck(lambda v, g: wt.row_scale_fn(v, g, dim)[0], (v, g))
    # the ops' own autograd (what torch.compile traces), not only the eager path
    assert torch.autograd.gradcheck(lambda v, g: OPS.weight_norm(v, g, dims, 0.0, False)[0],
                                    (v, g))
    assert torch.autograd.gradgradcheck(
        lambda v, g: OPS.weight_norm(v, g, dims, 0.0, False)[0], (v, g))
    assert torch.autograd.gradcheck(lambda v, g: OPS.row_scale(v, g, dims, 0.0)[0], (v, g))
    assert torch.autograd.gradcheck(
        lambda v, g: wt.weight_norm_fn(v, g, dim, eps=0.5)[0], (v, g))
    n = wt.weight_norm_fn(v, g, dim)[1].requires_grad_()
    gw = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(wt.weight_norm_backward_fn, (gw, v, g, n, dim))
    assert torch.autograd.gradgradcheck(wt.weight_norm_backward_fn, (gw, v, g, n, dim))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_matches_pytorch_and_reference(dtype, dim):
    torch.manual_seed(1)
    v = torch.randn(33, 17, 5, dtype=dtype)
    dims = wt.normalize_dims(dim, v.dim())
    g = _g_for(v, dims).requires_grad_()
    vv = v.clone().requires_grad_()
    w, n = wt.weight_norm_fn(vv, g, dim)
    gw = torch.randn_like(v)
    w.backward(gw)
    # PyTorch's fused kernel keeps dim 0 or the last one
    tdim = dim % v.dim()
    if tdim in (0, v.dim() - 1):
        wr, nr = torch._weight_norm_interface(v, g.detach(), tdim)
        gvr, ggr = torch.ops.aten._weight_norm_interface_backward(
            gw, v, g.detach(), nr, tdim)
        tol = _tol(dtype)
        torch.testing.assert_close(w, wr, rtol=tol, atol=tol)
        torch.testing.assert_close(vv.grad, gvr, rtol=4 * tol, atol=4 * tol)
        torch.testing.assert_close(g.grad, ggr, rtol=4 * tol, atol=4 * tol)
    f = {torch.float16: np.float16, torch.bfloat16: np.float32}.get(dtype)
    as_np = (lambda t: t.detach().float().numpy()) if f else (lambda t: t.detach().numpy())
    wref, nref = reference.weight_norm(as_np(v), as_np(g), dim)
    np.testing.assert_allclose(as_np(w).astype(np.float64), wref, rtol=_tol(dtype) * 4,
                               atol=_tol(dtype) * 4)
    # the eager op is the library call, bit for bit
    wl, nl = wnkernels.weight_norm(v, g.detach(), dim)
    assert torch.equal(w, wl) and torch.equal(n, nl)


@pytest.mark.parametrize("dtype", DTYPES)
def test_eager_path_and_op_path_agree_bitwise(dtype):
    """Plain tensors in eager mode take an autograd.Function, everything else
    the custom op: same kernels, same bits, same gradients."""
    torch.manual_seed(2)
    v0 = torch.randn(24, 7, 3, dtype=dtype)
    g0 = torch.rand(24, 1, 1, dtype=dtype) + 0.5
    gw = torch.randn_like(v0)
    res = []
    for path in (wt._ops.weight_norm, OPS.weight_norm):
        v, g = v0.clone().requires_grad_(), g0.clone().requires_grad_()
        w, n = path(v, g, [0], 0.0, True)
        w.backward(gw)
        s, n2 = (wt._ops.row_scale if path is wt._ops.weight_norm else OPS.row_scale)(
            v.detach(), g.detach(), [0], 0.0)
        res.append((w, n, v.grad, g.grad, s, n2))
    for a, b in zip(*res):
        assert torch.equal(a, b)
    assert type(wt._ops._EagerWeightNorm.apply(v0, g0, [0], 0.0, False)[0]) is torch.Tensor


def test_norms_not_differentiable_and_expanded_grad():
    v = torch.randn(6, 4, requires_grad=True)
    g = torch.rand(6, 1, requires_grad=True)
    w, n = wt.weight_norm_fn(v, g)
    assert not n.requires_grad
    w.sum().backward()            # grad_w arrives expanded (stride 0)
    v2, g2 = v.detach().clone().requires_grad_(), g.detach().clone().requires_grad_()
    torch._weight_norm(v2, g2, 0).sum().backward()
    torch.testing.assert_close(v.grad, v2.grad)
    torch.testing.assert_close(g.grad, g2.grad)


def test_round_norm_is_lossless_for_half_types():
    for dtype in (torch.float16, torch.bfloat16):
        v = torch.randn(40, 13, dtype=dtype)
        _, n = wnkernels.row_scale(v, torch.ones(40, 1, dtype=dtype))
        g = n.to(dtype)
        w, _ = OPS.weight_norm(v, g, [0], 0.0, True)
        assert torch.equal(w, v)
        w_plain, _ = OPS.weight_norm(v, g, [0], 0.0, False)
        assert not torch.equal(w_plain, v)       # what round_norm is for


def test_bad_input_names_the_argument():
    v = torch.randn(4, 3)
    with pytest.raises(ValueError, match="g"):
        OPS.weight_norm(v, torch.ones(5, 1), [0], 0.0, False)
    with pytest.raises(ValueError, match="eps"):
        wt.weight_norm_fn(v, torch.ones(4, 1), eps=-1.0)
    with pytest.raises(np.exceptions.AxisError):
        wt.weight_norm_fn(v, torch.ones(4, 1), dim=2)
    with pytest.raises(TypeError, match="v"):
        OPS.weight_norm(v.int(), torch.ones(4, 1, dtype=torch.int32), [0], 0.0, False)
    # fake tensors raise the same (shape functions validate like the call)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        fv, fg = torch.empty(4, 3), torch.empty(5, 1)
        with pytest.raises(ValueError, match="g"):
            OPS.weight_norm(fv, fg, [0], 0.0, False)


def _graph_ops(fn, *args):
    """The op names in the FX graphs dynamo/AOT hand to a backend."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    seen = []

    def grab(gm, _inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    out = torch.compile(fn, backend=aot_autograd(fw_compiler=grab, bw_compiler=grab),
                        fullgraph=True)(*args)
    return out, seen


@pytest.mark.slow
def test_compile_keeps_ops_in_graph():
    model = wt.weight_norm(torch.nn.Conv1d(4, 6, 3))
    x = torch.randn(2, 4, 9)

    def step(x):
        y = model(x)
        return y.square().mean()

    loss, ops = _graph_ops(step, x)
    assert "wnkernels.weight_norm.default" in ops
    loss.backward()
    assert "wnkernels.weight_norm_backward.default" in ops
    assert not any("_weight_norm_interface" in o for o in ops)


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_inductor_matches_eager(dynamic):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(wt.weight_norm(torch.nn.Conv1d(4, 8, 3)), torch.nn.GELU(),
                                wt.weight_norm(torch.nn.Linear(7, 5), dim=None))
    x = torch.randn(3, 4, 9)
    ref = model(x)
    ref.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    from torch._inductor.utils import run_and_get_code
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic)
    out, codes = run_and_get_code(lambda x: compiled(x), x)
    assert any("wnkernels.weight_norm" in c for c in codes)
    torch.testing.assert_close(out, ref)
    out.square().sum().backward()
    for p, gr in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, gr)
    if dynamic:    # another batch size still agrees
        x2 = torch.randn(5, 4, 9)
        torch.testing.assert_close(compiled(x2), model(x2))


def test_import_wnkernels_does_not_import_torch():
    code = "import sys, wnkernels; wnkernels.weight_norm; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")
