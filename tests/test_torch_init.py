"""Data-dependent initialization (Salimans & Kingma 2016, section 3):
wnkernels.torch.data_dependent_init sets g and bias so that every weight-normed
layer's outputs on the batch have per-channel mean 0 and std 1, layer by layer
in forward order; every kind of weight norm; the float64 formula; errors."""

import warnings

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
from torch.nn.utils.parametrizations import weight_norm as torch_wn  # noqa: E402

import wnkernels.torch as wt  # noqa: E402


def legacy_wn(m, dim=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(m, dim=dim)


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    m = nn.Sequential(
        legacy_wn(nn.Conv1d(3, 8, 3)), nn.LeakyReLU(0.1),                   # 0
        torch_wn(nn.Conv1d(8, 8, 5, dilation=2)), nn.Tanh(),                # 2
        wt.weight_norm(nn.ConvTranspose1d(8, 4, 4, stride=2), dim=1), nn.ReLU(),   # 4
        wt.WeightNormConv1d(4, 6, 3, padding=1), nn.ELU(),                  # 6
        wt.weight_norm(nn.Conv1d(6, 6, 3, bias=False)), nn.Flatten(),       # 8
        wt.WeightNormLinear(6 * 28, 7),                                     # 10
    )
    return m.to(dtype)


def _channel_stats(model, x):
    outs = {}
    hooks = [mod.register_forward_hook(lambda _m, _a, o, k=k: outs.__setitem__(k, o))
             for k, mod in model.named_children()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    stats = {}
    for k, o in outs.items():
        ax = o.dim() - 1 if o.dim() == 2 else 1
        red = [d for d in range(o.dim()) if d != ax]
        o = o.double()
        stats[k] = (o.mean(red), o.std(red, correction=0))
    return stats


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_model_outputs_are_standardized(dtype):
    model = _model(dtype)
    x = (torch.randn(16, 3, 24) * 3 + 1).to(dtype)
    res = wt.data_dependent_init(model, x)
    assert res.initialized == ["0", "2", "4", "6", "8", "10"] and res.skipped == []
    # one forward with the final parameters: every layer standardized on the inputs
    # the re-initialized earlier layers give it (so the order was respected)
    stats = _channel_stats(model, x)
    tol = 1e-9 if dtype == torch.float64 else 2e-5     # eps=1e-10 under the root
    for k in res.initialized:
        mean, std = stats[k]
        torch.testing.assert_close(std, torch.ones_like(std), rtol=0, atol=tol)
        if k != "8":                       # no bias: the mean stays
            torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=tol)


def test_single_module_against_float64_formula():
    torch.manual_seed(0)
    layer = torch_wn(nn.Linear(5, 3)).double()
    x = torch.randn(64, 5, dtype=torch.float64) * 2 + 0.5
    v = layer.parametrizations.weight.original1.detach()
    t = x @ (v / v.norm(dim=1, keepdim=True)).T       # the paper's t = v.x / ||v||
    res = wt.data_dependent_init(layer, x, init_scale=0.5)
    assert res.initialized == [""]
    g = 0.5 / torch.sqrt(t.var(0, correction=0) + 1e-10)
    torch.testing.assert_close(layer.parametrizations.weight.original0.reshape(-1), g,
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(layer.bias, -t.mean(0) * g, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(layer.parametrizations.weight.original1, v, rtol=0, atol=0)
    y = layer(x)
    torch.testing.assert_close(y.std(0, correction=0), torch.full((3,), 0.5,
                                                                  dtype=torch.float64))


def test_conv2d_layer_and_batch_forms():
    torch.manual_seed(0)
    layer = wt.WeightNormConv2d(3, 4, 3, padding=1)

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = layer

        def forward(self, a, scale=1.0):
            return self.conv(a * scale)
    model = Two()
    x = torch.randn(8, 3, 6, 6)
    for batch in ((x, 2.0), {"a": x, "scale": 2.0}):
        res = wt.data_dependent_init(model, batch)
        assert res.initialized == ["conv"]
        y = model(x, 2.0)
        torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(4), rtol=0, atol=2e-6)
        torch.testing.assert_close(y.std((0, 2, 3), correction=0), torch.ones(4), rtol=0,
                                   atol=2e-5)


def test_skipped_layers_are_reported_and_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(
        torch_wn(nn.Conv1d(3, 4, 3)),
        wt.weight_norm(nn.Conv1d(4, 4, 3, padding=1), dim=2),          # per kernel tap
        wt.weight_norm(nn.ConvTranspose1d(4, 4, 2)),                   # dim=0: input channel
        torch_wn(nn.Linear(4, 2)))                                      # never called
    model.forward = lambda x: model[2](model[1](model[0](x)))
    before = {k: p.clone() for k, p in model.named_parameters()}
    res = wt.data_dependent_init(model, torch.randn(4, 3, 10))
    assert res.initialized == ["0"]
    skipped = dict(res.skipped)
    assert set(skipped) == {"1", "2", "3"}
    assert "axes [2]" in skipped["1"] and "not called" in skipped["3"]
    for k, p in model.named_parameters():
        if not k.startswith("0."):
            assert torch.equal(p, before[k]), k


def test_shared_layer_initialized_once():
    torch.manual_seed(0)
    lin = wt.WeightNormLinear(4, 4)
    model = nn.Sequential(lin, nn.Tanh(), lin)
    res = wt.data_dependent_init(model, torch.randn(32, 4))
    assert res.initialized == ["0"]        # named_modules lists the shared layer once


def test_errors():
    with pytest.raises(TypeError, match="module_or_model"):
        wt.data_dependent_init("model", torch.randn(2, 3))
    with pytest.raises(ValueError, match="no weight-normed"):
        wt.data_dependent_init(nn.Linear(3, 2), torch.randn(2, 3))
    layer = wt.WeightNormLinear(3, 2)
    with pytest.raises(ValueError, match="init_scale"):
        wt.data_dependent_init(layer, torch.randn(2, 3), init_scale=0.0)
    with pytest.raises(ValueError, match="eps"):
        wt.data_dependent_init(layer, torch.randn(2, 3), eps=-1.0)
    g = layer.weight_g.clone()
    with pytest.raises(ValueError):            # the forward's own error; hooks removed
        wt.data_dependent_init(layer, torch.randn(2, 4))
    assert not layer._forward_hooks and not layer._forward_pre_hooks
    assert g.shape == layer.weight_g.shape
