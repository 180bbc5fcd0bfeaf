"""Whole-model grouped recompute (wnkernels.torch.GroupedWeightNorm): one
grouped forward and one grouped backward per step, bitwise equal to the
per-module drop-in (weights, outputs, every gradient, and the parameters after
several optimizer steps), in every dtype; the hook mode; conversion; frozen and
unused weights; errors."""

import copy

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402
from torch.nn.utils.parametrizations import weight_norm as torch_wn  # noqa: E402

import wnkernels  # noqa: E402
import wnkernels.torch as wt  # noqa: E402


class Net(nn.Module):
    """Mixed shapes, ranks and dims: conv2d dim=0, conv2d dim=1 (no bias),
    conv1d dim=2, conv1d dim=-2 (= 1), linear over the whole tensor."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 4, (1, 3), bias=False)
        self.c3 = nn.Conv1d(32, 6, 3)
        self.c4 = nn.Conv1d(6, 6, 1)
        self.fc = nn.Linear(6 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = self.c2(x).flatten(1, 2)          # (N, 32, 6)
        x = torch.tanh(self.c3(x))
        x = self.c4(x) + x
        return self.fc(x.flatten(1))


DIMS = {"c1": 0, "c2": 1, "c3": 2, "c4": -2, "fc": None}


def make(dtype=torch.float32, seed=0, kind="wnkernels"):
    torch.manual_seed(seed)
    net = Net().to(dtype)
    reg = wt.weight_norm if kind == "wnkernels" else torch_wn
    for name, dim in DIMS.items():
        reg(getattr(net, name), dim=dim)
    with torch.no_grad():       # g away from ||v||
        for name in DIMS:
            g = getattr(net, name).parametrizations.weight.original0
            g.mul_(torch.rand(g.shape, dtype=torch.float32).to(dtype) + 0.5)
    return net


def _steps(net, xs, grouped=None, lr=0.05):
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    outs, grads, weights = [], [], []
    for x in xs:
        opt.zero_grad()
        if grouped is None:
            with torch.no_grad():
                weights.append([getattr(net, n).weight.clone() for n in DIMS])
            y = net(x)
        else:
            with grouped:
                weights.append([getattr(net, n).weight.detach().clone() for n in DIMS])
                y = net(x)
        (y.float().square().mean()).backward()
        outs.append(y.detach())
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
        opt.step()
    return outs, grads, weights, {n: p.detach().clone() for n, p in net.named_parameters()}


def _assert_bitwise(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_bitwise(x, y)
    else:
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16,
                                   torch.float16])
def test_bitwise_equal_to_per_module_dropin(dtype):
    torch.manual_seed(1)
    xs = [torch.randn(2, 3, 8, 8).to(dtype) for _ in range(3)]
    ref = _steps(make(dtype), xs)
    net = make(dtype)
    got = _steps(net, xs, wt.GroupedWeightNorm(net))
    _assert_bitwise(got, ref)      # outputs, weights, every gradient, params after 3 steps


def test_one_grouped_call_each_way(monkeypatch):
    net = make()
    gwn = wt.GroupedWeightNorm(net)
    assert gwn.names == [f"{n}.weight" for n in DIMS] and len(gwn) == 5
    calls = {"many": 0, "bmany": 0, "single": 0, "bsingle": 0}
    for attr, key in (("weight_norm_many", "many"), ("weight_norm_backward_many", "bmany"),
                      ("weight_norm", "single"), ("weight_norm_backward", "bsingle")):
        orig = getattr(wnkernels, attr)

        def spy(*a, _orig=orig, _key=key, **k):
            calls[_key] += 1
            return _orig(*a, **k)
        monkeypatch.setattr(wnkernels, attr, spy)
    x = torch.randn(2, 3, 8, 8)
    with gwn:
        y = net(x)
        y2 = net(x)          # the same cached weights, no recompute
    assert calls == {"many": 1, "bmany": 0, "single": 0, "bsingle": 0}
    (y + y2).sum().backward()
    assert calls == {"many": 1, "bmany": 1, "single": 0, "bsingle": 0}
    # outside the context the per-module path is back
    net(x)
    assert calls["single"] == 5 and not parametrize._cache_enabled


def test_install_hooks_match_context():
    torch.manual_seed(1)
    xs = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    net_a, net_b = make(), make()
    a = _steps(net_a, xs, wt.GroupedWeightNorm(net_a))
    gwn = wt.GroupedWeightNorm(net_b).install()
    assert gwn.install() is gwn            # idempotent
    b = _steps(net_b, xs)                  # plain model(x) calls: the hooks group them
    _assert_bitwise(a[0], b[0])
    _assert_bitwise(a[1], b[1])
    _assert_bitwise(a[3], b[3])
    assert not parametrize._cache_enabled
    gwn.remove()
    assert not net_b._forward_pre_hooks and not net_b._forward_hooks


def test_hooks_release_the_cache_on_error():
    net = make()
    wt.GroupedWeightNorm(net).install()
    with pytest.raises(RuntimeError):
        net(torch.randn(2, 4, 8, 8))       # wrong channels: conv raises
    assert not parametrize._cache_enabled and not parametrize._cache


def test_convert_and_foreign_weight_norms():
    net = make(kind="torch")
    with pytest.raises(ValueError, match="convert"):
        wt.GroupedWeightNorm(net)
    ref = make(kind="torch")
    gwn = wt.GroupedWeightNorm(net, convert=True)
    assert len(gwn) == 5
    x = torch.randn(2, 3, 8, 8)
    with gwn:
        y = net(x)
    y.sum().backward()
    yr = ref(x)
    yr.sum().backward()
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-6)   # PyTorch's rounding
    for (n, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_frozen_and_unused_weights_match_dropin():
    ref, net = make(torch.float64), make(torch.float64)
    for m in (ref, net):
        m.c1.parametrizations.weight.original0.requires_grad_(False)
        m.c3.parametrizations.weight.original1.requires_grad_(False)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)

    def partial(m):            # fc unused
        h = m.c2(torch.relu(m.c1(x))).flatten(1, 2)
        return m.c4(torch.tanh(m.c3(h))).sum()
    partial(ref).backward()
    with wt.GroupedWeightNorm(net):
        out = partial(net)
    out.backward()
    for (n, p), q in zip(net.named_parameters(), ref.parameters()):
        if q.grad is None:
            assert p.grad is None, n
        else:
            assert torch.equal(p.grad, q.grad), n
    assert net.fc.parametrizations.weight.original1.grad is None


def test_model_under_no_grad_and_deepcopy():
    net = make()
    gwn = wt.GroupedWeightNorm(net)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad(), gwn:
        y = net(x)
    assert not y.requires_grad
    torch.testing.assert_close(y, net(x), rtol=0, atol=0)
    twin = copy.deepcopy(net)
    with wt.GroupedWeightNorm(twin):
        torch.testing.assert_close(twin(x), y, rtol=0, atol=0)


def test_grouped_weight_norm_function_and_errors():
    torch.manual_seed(0)
    vs = [torch.randn(4, 3, dtype=torch.float64, requires_grad=True),
          torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)]
    gs = [torch.rand(4, 1, dtype=torch.float64, requires_grad=True),
          torch.rand(1, 1, 3, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(
        lambda *t: wt.grouped_weight_norm(t[:2], t[2:], [[0], [2]], eps=[0.0, 0.5]),
        (*gs, *vs))
    ws = wt.grouped_weight_norm(gs, vs, [[0], [2]])
    for w, v, g, d in zip(ws, vs, gs, (0, 2)):
        assert torch.equal(w, wt.weight_norm_fn(v, g, d)[0])
    with pytest.raises(RuntimeError):         # no double backward
        (gw,) = torch.autograd.grad(ws[0].sum(), vs[0], create_graph=True)
        gw.sum().backward()
    with pytest.raises(ValueError, match="dims_list"):
        wt.grouped_weight_norm(gs, vs, [[0]])
    with pytest.raises(ValueError, match="eps"):
        wt.grouped_weight_norm(gs, vs, [[0], [2]], eps=[0.0])
    with pytest.raises(TypeError, match=r"vs\[1\]"):
        wt.grouped_weight_norm(gs, [vs[0], 1.0], [[0], [2]])
    with pytest.raises(ValueError, match="1"):    # the library names the bad item
        wt.grouped_weight_norm(gs, [vs[0], vs[0]], [[0], [2]])
    with pytest.raises(TypeError, match="model"):
        wt.GroupedWeightNorm("net")
    assert wt.grouped_weight_norm([], [], []) == ()


def test_chunks_are_bitwise_equal_and_count(monkeypatch):
    torch.manual_seed(1)
    xs = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    ref = _steps(make(), xs)
    net = make()
    gwn = wt.GroupedWeightNorm(net, max_group_bytes=1500)
    calls = []
    orig = wnkernels.weight_norm_many
    monkeypatch.setattr(wnkernels, "weight_norm_many",
                        lambda vs, *a, **k: calls.append(len(vs)) or orig(vs, *a, **k))
    got = _steps(net, xs, gwn)
    _assert_bitwise(got, ref)
    # v bytes 864, 384, 2304, 144, 480: chunks (c1, c2), (c3,), (c4, fc) per step
    assert calls == [2, 1, 2] * 2
    with pytest.raises(ValueError, match="max_group_bytes"):
        wt.GroupedWeightNorm(net, max_group_bytes=0)
