"""wnkernels.torch.weight_norm (the drop-in), convert and remove_weight_norm,
against PyTorch's parametrization and its legacy hook."""

import copy
import io
import pickle

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402
from torch.nn.utils.parametrizations import weight_norm as torch_weight_norm  # noqa: E402

import wnkernels.torch as wt  # noqa: E402

# the models under conversion use PyTorch's deprecated legacy hook on purpose
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
DIMS = (0, 1, 2, -1, -2, -3, None)
TOL = {torch.float32: 1e-6, torch.float64: 1e-14, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def _conv(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Conv1d(6, 8, 5).to(dtype)


def _pair(dtype, dim, seed=0):
    """(ours, PyTorch's) on the same initial weight."""
    a, b = _conv(dtype, seed), _conv(dtype, seed)
    return wt.weight_norm(a, dim=dim), torch_weight_norm(b, dim=dim)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", DIMS)
def test_registration_is_lossless_and_structure_matches(dtype, dim):
    w0 = _conv(dtype).weight.detach().clone()
    ours, theirs = _pair(dtype, dim)
    assert torch.equal(ours.weight, w0)                     # every bit kept
    p = ours.parametrizations.weight
    assert isinstance(p[0], wt.WeightNorm)
    sd, tsd = ours.state_dict(), theirs.state_dict()
    assert list(sd) == list(tsd)
    for k in sd:
        assert sd[k].shape == tsd[k].shape and sd[k].dtype == tsd[k].dtype, k
    assert torch.equal(p.original1, w0)
    torch.testing.assert_close(p.original0.float(), tsd["parametrizations.weight.original0"]
                               .float(), rtol=TOL[dtype], atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", (0, 1, -1, None))
def test_forward_and_gradients_match_pytorch(dtype, dim):
    ours, theirs = _pair(dtype, dim)
    theirs.load_state_dict(ours.state_dict())           # identical parameters
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():                                # move g off the norms
        for m in (ours, theirs):
            m.parametrizations.weight.original0.mul_(1.5)
    x = torch.randn(3, 6, 11, generator=g).to(dtype)
    y, yt = ours(x), theirs(x)
    tol = TOL[dtype] * 8
    torch.testing.assert_close(y, yt, rtol=tol, atol=tol)
    dy = torch.randn(y.shape, generator=g).to(dtype)
    y.backward(dy)
    yt.backward(dy)
    for (n, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=tol * 4, atol=tol * 4, msg=n)


def test_state_dicts_load_both_ways():
    ours, theirs = _pair(torch.float32, 0, seed=0)
    other_ours, other_theirs = _pair(torch.float32, 0, seed=1)
    other_ours.load_state_dict(theirs.state_dict())
    other_theirs.load_state_dict(ours.state_dict())
    for k, t in theirs.state_dict().items():
        assert torch.equal(other_ours.state_dict()[k], t)
    for k, t in ours.state_dict().items():
        assert torch.equal(other_theirs.state_dict()[k], t)


@pytest.mark.parametrize("dim", (0, 1, None))
def test_loads_legacy_checkpoint(dim):
    legacy = nn.utils.weight_norm(_conv(seed=4), dim=dim)
    sd = legacy.state_dict()
    assert "weight_g" in sd and "weight_v" in sd
    ours = wt.weight_norm(_conv(seed=5), dim=dim)
    ours.load_state_dict(sd)
    p = ours.parametrizations.weight
    assert torch.equal(p.original0, sd["weight_g"]) and torch.equal(p.original1, sd["weight_v"])
    x = torch.randn(2, 6, 9)
    torch.testing.assert_close(ours(x), legacy(x), rtol=1e-6, atol=1e-6)


def test_remove_parametrizations_cached_deepcopy_pickle():
    m = wt.weight_norm(_conv(seed=6))
    w = m.weight.detach().clone()
    with parametrize.cached():
        assert m.weight is m.weight                   # computed once inside cached()
    c = copy.deepcopy(m)
    assert torch.equal(c.weight, w) and c.weight.data_ptr() != m.weight.data_ptr()
    with pytest.raises(RuntimeError, match="state_dict"):   # as PyTorch's does
        pickle.dumps(m)
    with pytest.raises(RuntimeError, match="state_dict"):
        pickle.dumps(torch_weight_norm(_conv()))
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = wt.weight_norm(_conv(seed=7))
    m2.load_state_dict(torch.load(buf))
    assert torch.equal(m2.weight, w)
    parametrize.remove_parametrizations(m, "weight")
    assert isinstance(m.weight, nn.Parameter) and torch.equal(m.weight, w)
    assert not parametrize.is_parametrized(m)


def test_eps_option_and_zero_rows():
    m = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        m.weight[1] = 0
    plain = wt.weight_norm(copy.deepcopy(m))
    assert torch.isnan(plain.weight[1]).all()               # PyTorch's result: 0/0
    theirs = torch_weight_norm(copy.deepcopy(m))
    assert torch.isnan(theirs.weight[1]).all()
    safe = wt.weight_norm(copy.deepcopy(m), eps=1e-12)
    assert torch.isfinite(safe.weight).all() and torch.equal(safe.weight[1], torch.zeros(4))
    assert "eps=1e-12" in repr(safe)
    with pytest.raises(ValueError, match="eps"):
        wt.weight_norm(nn.Linear(2, 2), eps=-1.0)
    with pytest.raises(ValueError, match="bias2"):
        wt.weight_norm(nn.Linear(2, 2), name="bias2")


def test_other_parameter_name_and_module_kinds():
    m = wt.weight_norm(nn.Linear(5, 4), name="bias", dim=0)
    assert "parametrizations.bias.original0" in m.state_dict()
    for mod in (nn.Conv2d(3, 4, 3), nn.ConvTranspose1d(4, 6, 4), nn.Embedding(7, 5)):
        w0 = mod.weight.detach().clone()
        wt.weight_norm(mod)
        assert torch.equal(mod.weight, w0)


# ---------------------------------------------------------------- convert

class _Net(nn.Module):
    """A model mixing every kind: PyTorch's parametrization (dims 0 and None),
    the legacy hook (dims 0 and 1), wnkernels' own, and plain layers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(8)
        self.a = torch_weight_norm(nn.Conv1d(3, 8, 5))
        self.b = nn.utils.weight_norm(nn.Conv1d(8, 8, 3, padding=1))
        self.c = nn.utils.weight_norm(nn.ConvTranspose1d(8, 4, 4, stride=2), dim=1)
        self.d = torch_weight_norm(nn.Conv1d(4, 4, 1), dim=None)
        self.e = wt.weight_norm(nn.Conv1d(4, 2, 3))
        self.f = nn.Conv1d(2, 2, 1)

    def forward(self, x):
        for m in (self.a, self.b, self.c, self.d, self.e, self.f):
            x = torch.tanh(m(x))
        return x


def _params(model):
    return {n: p for n, p in model.named_parameters()}


def test_convert_keeps_parameters_and_outputs():
    model = _Net()
    ref = _Net()               # same seed: same values (legacy hooks cannot deepcopy)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    objects = {id(p) for p in model.parameters()}
    x = torch.randn(2, 3, 20)
    y_ref = ref(x)
    done = wt.convert(model)
    assert done == [("a.weight", "torch"), ("b.weight", "legacy"), ("c.weight", "legacy"),
                    ("d.weight", "torch")]
    assert {id(p) for p in model.parameters()} == objects      # the same Parameters
    for m in (model.a, model.b, model.c, model.d, model.e):
        assert isinstance(m.parametrizations.weight[0], wt.WeightNorm)
    assert model.c.parametrizations.weight[0].dim == 1
    assert model.d.parametrizations.weight[0].dim == -1
    after = {n: p for n, p in model.named_parameters()}
    # legacy names weight_g/weight_v became original0/original1, values untouched
    rename = {"b.weight_g": "b.parametrizations.weight.original0",
              "b.weight_v": "b.parametrizations.weight.original1",
              "c.weight_g": "c.parametrizations.weight.original0",
              "c.weight_v": "c.parametrizations.weight.original1"}
    for n, t in before.items():
        assert torch.equal(after[rename.get(n, n)], t), n
    y = model(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    rp = _params(ref)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, rp[{v: k for k, v in rename.items()}.get(n, n)].grad,
                                   rtol=1e-4, atol=1e-6, msg=n)
    assert wt.convert(model) == []                           # idempotent
    assert torch.equal(copy.deepcopy(model)(x), y)            # legacy hooks could not copy


def test_converted_model_loads_checkpoints_saved_before():
    old = _Net()
    sd = old.state_dict()                         # legacy keys for b and c
    assert "b.weight_g" in sd
    fresh = _Net()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    wt.convert(fresh)
    fresh.load_state_dict(sd)
    x = torch.randn(2, 3, 20)
    torch.testing.assert_close(fresh(x), old(x), rtol=1e-5, atol=1e-6)


def test_optimizer_state_survives_convert():
    model = _Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(2, 3, 20)
    model(x).sum().backward()
    opt.step()
    wt.convert(model)
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()                                     # same Parameter objects: state applies
    assert all(opt.state[p]["step"] == 2 for p in model.parameters())


def test_remove_weight_norm_every_kind():
    model = _Net()
    x = torch.randn(2, 3, 20)
    y = model(x)
    wt.remove_weight_norm(model)
    for m in model.modules():
        assert not parametrize.is_parametrized(m)
        assert not any(k for k in m._forward_pre_hooks)
    names = {n for n, _ in model.named_parameters()}
    assert {"a.weight", "b.weight", "c.weight", "d.weight", "e.weight"} <= names
    torch.testing.assert_close(model(x), y, rtol=1e-6, atol=1e-7)
    converted = _Net()
    wt.convert(converted)
    y2 = converted(x)
    wt.remove_weight_norm(converted)
    assert torch.equal(converted(x), y2)
