"""wnkernels.torch's layers that never materialize w (WeightNormLinear,
WeightNormConv1d, WeightNormConv2d): outputs and every gradient against the
float64 reference math, PyTorch's parametrization and wnkernels' drop-in on the
same parameters; gradcheck in float64; from_module / to_module bit-exactness;
state dicts of weight-normed nn modules; half types; errors; torch.compile."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
from torch.func import functional_call  # noqa: E402
from torch.nn.utils.parametrizations import weight_norm as torch_wn  # noqa: E402

import wnkernels.torch as wt  # noqa: E402
from wnkernels import reference  # noqa: E402

# (layer class, nn module factory, input shape)
CONFIGS = [
    ("linear", lambda: nn.Linear(7, 5), (3, 7)),
    ("linear-3d-nobias", lambda: nn.Linear(6, 4, bias=False), (2, 3, 6)),
    ("conv1d", lambda: nn.Conv1d(4, 6, 3), (2, 4, 11)),
    ("conv1d-stride-pad-groups", lambda: nn.Conv1d(4, 6, 3, stride=2, padding=2, groups=2),
     (2, 4, 12)),
    ("conv1d-same-dilation", lambda: nn.Conv1d(3, 5, 4, padding="same", dilation=3), (2, 3, 13)),
    ("conv1d-reflect-nobias", lambda: nn.Conv1d(3, 5, 5, padding=2, padding_mode="reflect",
                                                bias=False), (2, 3, 9)),
    ("conv1d-depthwise-circular", lambda: nn.Conv1d(4, 8, 3, padding=1, groups=4,
                                                    padding_mode="circular"), (1, 4, 7)),
    ("conv1d-unbatched", lambda: nn.Conv1d(3, 4, 2), (3, 8)),
    ("conv2d", lambda: nn.Conv2d(3, 6, 3, padding=1), (2, 3, 7, 6)),
    ("conv2d-rect-stride-dil", lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), dilation=(1, 2),
                                                 groups=2), (2, 4, 9, 8)),
    ("conv2d-same-even-replicate", lambda: nn.Conv2d(3, 4, (2, 4), padding="same",
                                                     padding_mode="replicate"), (2, 3, 6, 7)),
    ("conv2d-same-even-zeros", lambda: nn.Conv2d(3, 4, (2, 3), padding="same"), (1, 3, 5, 6)),
    ("conv2d-valid", lambda: nn.Conv2d(2, 3, 3, padding="valid"), (2, 2, 5, 5)),
]
IDS = [c[0] for c in CONFIGS]
LAYER = {nn.Linear: wt.WeightNormLinear, nn.Conv1d: wt.WeightNormConv1d,
         nn.Conv2d: wt.WeightNormConv2d}


@pytest.fixture(autouse=True)
def _ignore_same_padding_warning():
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using padding='same'", category=UserWarning)
        yield


def _build(factory, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    m = factory().to(dtype)
    torch_wn(m)
    with torch.no_grad():     # g away from ||v||, so the scale matters
        m.parametrizations.weight.original0.mul_(
            torch.rand_like(m.parametrizations.weight.original0) + 0.5)
    layer = LAYER[type(m).__mro__[1]].from_module(m)
    return m, layer


def _reference_forward(m, layer, x):
    """float64 reference: w from wnkernels.reference, then the plain nn op.
    (No deepcopy + remove_parametrizations: in PyTorch a deepcopy shares the
    parametrized class, and removing the copy's parametrization breaks the
    original's ``weight``.)"""
    pl = m.parametrizations.weight
    g, v = pl.original0.detach().double(), pl.original1.detach().double()
    w, _ = reference.weight_norm(v.numpy(), g.numpy(), 0)
    plain = layer.to_module(weight_norm=False).double()
    params = {"weight": torch.from_numpy(np.ascontiguousarray(w))}
    if m.bias is not None:
        params["bias"] = m.bias.detach().double()
    with torch.no_grad():
        return functional_call(plain, params, (x.double(),))


@pytest.mark.parametrize("name,factory,xshape", CONFIGS, ids=IDS)
def test_matches_pytorch_dropin_and_reference(name, factory, xshape):
    m, layer = _build(factory)
    drop, _ = _build(factory)      # the same values (seeded), converted to the drop-in
    wt.convert(drop)
    torch.manual_seed(1)
    x = torch.randn(xshape, dtype=torch.float64)
    outs, grads = [], []
    for mod in (m, drop, layer):
        xx = x.clone().requires_grad_()
        y = mod(xx)
        dy = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(2))
        y.backward(dy)
        params = dict(mod.named_parameters())
        g = params.get("parametrizations.weight.original0", params.get("weight_g"))
        v = params.get("parametrizations.weight.original1", params.get("weight_v"))
        outs.append(y.detach())
        grads.append([xx.grad, g.grad.reshape(-1), v.grad,
                      None if mod.bias is None else mod.bias.grad])
    ref = _reference_forward(m, layer, x)
    for y in outs:
        torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    for gl in grads[1:]:
        for a, b in zip(grads[0], gl):
            if a is None:
                assert b is None
            else:
                torch.testing.assert_close(b, a, rtol=1e-11, atol=1e-12)


def _reference_grads(layer, x, dy):
    """float64 reference of (grad_x, grad_g, grad_v, grad_b) through the plain op with W
    from the reference forward and the reference backward formula."""
    v, g = layer.weight_v.detach().double(), layer.weight_g.detach().double()
    w, norms = reference.weight_norm(v.numpy(), g.numpy(), 0)
    W = torch.from_numpy(np.ascontiguousarray(w)).requires_grad_()
    xx = x.detach().double().requires_grad_()
    fake = copy.deepcopy(layer).double()
    nn_mod = fake.to_module(weight_norm=False)
    y = functional_call(nn_mod, {"weight": W, **({"bias": fake.bias} if fake.bias is not None
                                                 else {})}, (xx,))
    y.backward(dy.double())
    gv, gg = reference.weight_norm_backward(W.grad.numpy(), v.numpy(), g.numpy(), norms, 0)
    return xx.grad, torch.from_numpy(np.asarray(gg)), torch.from_numpy(np.asarray(gv))


@pytest.mark.parametrize("name,factory,xshape", CONFIGS[::3], ids=IDS[::3])
def test_gradients_against_reference_formula(name, factory, xshape):
    """dL/dv, dL/dg = weight_norm_backward(G, v, g, norms) with G = the op's weight
    gradient for W = weight_norm(v, g): checked against the float64 reference."""
    _, layer = _build(factory)
    x = torch.randn(xshape, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    gx, gg, gv = _reference_grads(layer, x, dy)
    torch.testing.assert_close(x.grad, gx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.weight_g.grad, gg.reshape(layer.weight_g.shape),
                               rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(layer.weight_v.grad, gv, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name,factory,xshape", CONFIGS, ids=IDS)
def test_gradcheck_float64(name, factory, xshape):
    _, layer = _build(factory)
    x = torch.randn(xshape, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in layer.named_parameters()]

    def fn(x, *ps):
        return functional_call(layer, dict(zip(names, ps)), (x,))
    assert torch.autograd.gradcheck(fn, (x, *params), fast_mode=True)


@pytest.mark.parametrize("cls,factory,xshape", [
    (wt.WeightNormLinear, lambda: nn.Linear(5, 3), (4, 5)),
    (wt.WeightNormConv1d, lambda: nn.Conv1d(2, 3, 3), (2, 2, 6)),
    (wt.WeightNormConv2d, lambda: nn.Conv2d(2, 3, 2), (2, 2, 4, 4))])
@pytest.mark.parametrize("kind", ["plain", "torch", "legacy", "wnkernels"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_from_module_is_bit_identical(cls, factory, xshape, kind, dtype):
    torch.manual_seed(0)
    m = factory().to(dtype)
    plain_w = m.weight.detach().clone()
    if kind == "torch":
        torch_wn(m)
    elif kind == "legacy":
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.nn.utils.weight_norm(m)
    elif kind == "wnkernels":
        wt.weight_norm(m)
    layer = cls.from_module(m)
    assert layer.weight_v.dtype == dtype and layer.weight_g.shape == (
        (m.weight.shape[0],) + (1,) * (m.weight.dim() - 1))
    if kind == "plain":
        assert torch.equal(layer.weight_v, plain_w)
        assert torch.equal(layer.weight, plain_w)           # lossless: scale is exactly 1
        assert torch.equal(layer.scale(), torch.ones_like(layer.scale()))
    else:
        st = wt._layers.weight_norm_state(m)
        assert torch.equal(layer.weight_g, st[1].reshape(layer.weight_g.shape))
        assert torch.equal(layer.weight_v, st[2])
        assert layer.weight_v.data_ptr() != st[2].data_ptr()     # copies, not aliases
    assert torch.equal(layer.bias, m.bias)
    # back again: a module carrying wnkernels' drop-in with the same bits
    back = layer.to_module()
    pl = back.parametrizations.weight
    assert torch.equal(pl.original0, layer.weight_g) and torch.equal(pl.original1,
                                                                     layer.weight_v)
    plain = layer.to_module(weight_norm=False)
    assert type(plain) is type(back).__mro__[1] and torch.equal(plain.weight, layer.weight)
    x = torch.randn(xshape, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else (1e-5 if dtype == torch.float32 else 5e-2)
    torch.testing.assert_close(layer(x), m(x), rtol=tol, atol=tol)
    torch.testing.assert_close(back(x), m(x), rtol=tol, atol=tol)


def test_state_dicts_of_weight_normed_modules_load():
    torch.manual_seed(0)
    m = torch_wn(nn.Conv1d(3, 4, 3))
    layer = wt.WeightNormConv1d(3, 4, 3)
    layer.load_state_dict(m.state_dict())
    assert torch.equal(layer.weight_g, m.parametrizations.weight.original0)
    assert torch.equal(layer.weight_v, m.parametrizations.weight.original1)
    legacy = {"weight_g": torch.rand(4), "weight_v": torch.randn(4, 3, 3),
              "bias": torch.randn(4)}     # flat g is reshaped
    layer.load_state_dict(legacy)
    assert torch.equal(layer.weight_g.reshape(-1), legacy["weight_g"])
    sd = layer.state_dict()
    assert set(sd) == {"weight_g", "weight_v", "bias"}
    copy.deepcopy(layer).load_state_dict(sd)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cls,args,xshape", [
    (wt.WeightNormLinear, (8, 6), (4, 8)), (wt.WeightNormConv1d, (4, 6, 3), (2, 4, 10)),
    (wt.WeightNormConv2d, (3, 4, 3), (2, 3, 6, 6))])
def test_half_types(dtype, cls, args, xshape):
    torch.manual_seed(0)
    ref = cls(*args, dtype=torch.float64)
    with torch.no_grad():
        ref.weight_g.mul_(torch.rand_like(ref.weight_g) + 0.5)
    layer = copy.deepcopy(ref).to(dtype)
    x = torch.randn(xshape, dtype=torch.float64)
    xh = x.to(dtype).requires_grad_()
    xr = xh.detach().double().requires_grad_()
    yh, yr = layer(xh), copy.deepcopy(layer).double()(xr)
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(yh.double(), yr, rtol=tol, atol=tol)
    assert yh.dtype == dtype
    yh.float().square().sum().backward()
    assert layer.weight_g.grad.dtype == dtype and layer.weight_v.grad.dtype == dtype
    assert torch.isfinite(layer.weight_v.grad).all()
    # lossless g for the half types too: the scale is exactly 1 after reset_g
    layer.reset_g()
    assert torch.equal(layer.scale(), torch.ones_like(layer.scale()))


def test_frozen_and_input_grads():
    torch.manual_seed(0)
    layer = wt.WeightNormConv1d(3, 4, 3).double()
    layer.weight_v.requires_grad_(False)
    x = torch.randn(2, 3, 8, dtype=torch.float64)   # no input grad wanted
    layer(x).sum().backward()
    assert layer.weight_v.grad is None and layer.weight_g.grad is not None
    assert layer.bias.grad is not None


def test_new_layers_start_as_their_weight():
    torch.manual_seed(0)
    for layer in (wt.WeightNormLinear(9, 4), wt.WeightNormConv2d(2, 3, (2, 3))):
        assert torch.equal(layer.weight, layer.weight_v)
        assert "weight_g" in dict(layer.named_parameters())
        repr(layer)


def test_layers_from_model():
    torch.manual_seed(0)
    model = nn.Sequential(torch_wn(nn.Conv1d(2, 4, 3)), nn.ReLU(), wt.weight_norm(
        nn.Conv1d(4, 4, 1), dim=1), nn.Flatten(), torch_wn(nn.Linear(16, 3)), nn.Linear(3, 2))
    x = torch.randn(2, 2, 6)
    before = model(x)
    done = wt.layers_from_model(model)
    assert done == ["0", "4"]                      # dim=1 and the plain Linear stay
    assert isinstance(model[0], wt.WeightNormConv1d) and isinstance(model[4],
                                                                    wt.WeightNormLinear)
    torch.testing.assert_close(model(x), before)
    assert wt.layers_from_model(model, plain=True) == ["5"]


def test_double_backward_raises():
    layer = wt.WeightNormLinear(3, 2).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()


def test_bad_inputs_name_the_argument():
    layer = wt.WeightNormLinear(3, 2)
    with pytest.raises(ValueError, match="in_features=3"):
        layer(torch.randn(4, 5))
    with pytest.raises(TypeError, match="input"):
        layer([1.0, 2.0, 3.0])
    conv = wt.WeightNormConv2d(3, 2, 3)
    with pytest.raises(ValueError, match="channels"):
        conv(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="4-D"):
        conv(torch.randn(5, 5))
    with pytest.raises(ValueError, match="eps"):
        wt.WeightNormConv1d(2, 2, 1, eps=-1.0)
    with pytest.raises(ValueError, match="in_features"):
        wt.WeightNormLinear(-1, 2)
    with pytest.raises(ValueError, match="groups"):
        wt.WeightNormConv1d(3, 2, 1, groups=2)
    with pytest.raises(TypeError, match="nn.Linear|Linear"):
        wt.WeightNormLinear.from_module(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="dim=0"):
        wt.WeightNormConv1d.from_module(torch_wn(nn.Conv1d(2, 3, 2), dim=1))
    bad = wt.WeightNormLinear(3, 2)
    bad.weight_g = nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="weight_g"):
        bad(torch.randn(1, 3))


# raised inside Dynamo (torch 2.13) when it traces any autograd.Function's ctx
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    """torch.compile(fullgraph=True) through the layers (aot_eager backend: the
    autograd.Function's forward and backward traced, wnkernels ops in the graph)."""
    import torch._dynamo
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(wt.WeightNormConv1d(3, 4, 3, padding=1), nn.ReLU(),
                          wt.WeightNormConv1d(4, 4, 3), nn.Flatten(),
                          wt.WeightNormLinear(4 * 6, 2))
    x = torch.randn(2, 3, 8)
    y0 = model(x)
    y0.square().sum().backward()
    g0 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    explain = torch._dynamo.explain(model)(x)
    assert explain.graph_break_count == 0
    cm = torch.compile(model, fullgraph=True, backend="aot_eager")
    y1 = cm(x)
    y1.square().sum().backward()
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    for a, p in zip(g0, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=0, atol=0)
