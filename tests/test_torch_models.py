"""Real HuggingFace models with wnkernels in place of PyTorch's weight norm.

Tiny configurations of four transformers models that use weight norm, built
from configs with random weights (nothing is downloaded):

* Wav2Vec2Model: the positional conv (a grouped Conv1d, weight norm **dim=2**);
* EncodecModel: every conv of the encoder and decoder (dim=0);
* DacModel: every conv and the quantizer projections after
  ``apply_weight_norm()`` (dim=0);
* SpeechT5HifiGan (a HiFi-GAN vocoder): its convs and transposed convs after
  ``apply_weight_norm()`` (dim=0).

transformers registers PyTorch's parametrization
(``torch.nn.utils.parametrizations.weight_norm``) when it exists and the
legacy hook (``torch.nn.utils.weight_norm``) otherwise; both are tested, the
legacy one by building the model with the parametrization hidden (what it
builds on a PyTorch without it, and what HiFi-GAN/BigVGAN-style code does).

Each test: `wnkernels.torch.convert` on one copy, the other left as PyTorch
made it; outputs and the gradient of every parameter agree within float32
tolerance (``RTOL``/``ATOL``: the weights differ from PyTorch's by an ulp
where PyTorch's own kernel rounds differently, and a tiny model carries that
through a few layers), converted models load the state dicts saved before
conversion, `remove_weight_norm` gives the same outputs, and a model built
with wnkernels' weight norm from the start loads PyTorch's state dict.

Without transformers (fast): a HiFi-GAN-style model on the legacy hook (the
README's example), every ``dim`` of both kinds on Conv1d / ConvTranspose1d /
Linear, and convert / remove_weight_norm on a deepcopy leaving the original
working.
"""

import copy
import warnings

import pytest

torch = pytest.importorskip("torch")
import wnkernels.torch as wt  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402

try:
    import transformers
except ImportError:     # pragma: no cover - the test extra installs it
    transformers = None

# the real models take seconds each (transformers' import: ~5 s, once): slow
needs_transformers = pytest.mark.skipif(transformers is None,
                                        reason="transformers is not installed")

# float32, relative to the largest output / the model's largest gradient
# (measured worst: outputs 6e-7, gradients 3.3e-7; see the module docstring)
RTOL, ATOL = 1e-5, 1e-5


# ---------------------------------------------------------------- the models

def _wav2vec2():
    cfg = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        feat_extract_norm="group", do_stable_layer_norm=False, mask_time_prob=0.0)
    return transformers.Wav2Vec2Model(cfg)


def _wav2vec2_inputs():
    return (torch.randn(2, 160, generator=torch.Generator().manual_seed(5)),)


def _wav2vec2_run(model, x):
    return model(x).last_hidden_state


def _encodec():
    cfg = transformers.EncodecConfig(
        target_bandwidths=[12.0], sampling_rate=8000, audio_channels=1, hidden_size=16,
        num_filters=4, num_residual_layers=1, upsampling_ratios=[4, 2], codebook_size=16,
        codebook_dim=16, num_lstm_layers=1, kernel_size=3, last_kernel_size=3,
        residual_kernel_size=3, compress=2)
    return transformers.EncodecModel(cfg)


def _encodec_run(model, x):
    # encoder -> decoder: every weight-normed conv, differentiably (the
    # quantizer's argmin between them passes no gradient to the encoder)
    return model.decoder(model.encoder(x))


def _dac():
    cfg = transformers.DacConfig(
        encoder_hidden_size=4, downsampling_ratios=[2, 2], decoder_hidden_size=16,
        upsampling_ratios=[2, 2], n_codebooks=2, codebook_size=16, codebook_dim=4,
        hidden_size=32, sampling_rate=8000)
    model = transformers.DacModel(cfg)
    model.apply_weight_norm()
    return model


def _audio_inputs():
    return (torch.randn(2, 1, 64, generator=torch.Generator().manual_seed(7)),)


def _dac_run(model, x):
    out = model(x)      # quantizer with straight-through gradients: all of it
    return out.audio_values, out.loss


def _hifigan():
    cfg = transformers.SpeechT5HifiGanConfig(
        model_in_dim=8, upsample_initial_channel=16, upsample_rates=(2, 2),
        upsample_kernel_sizes=(4, 4), resblock_kernel_sizes=(3,),
        resblock_dilation_sizes=((1, 3),))
    model = transformers.SpeechT5HifiGan(cfg)
    model.apply_weight_norm()
    return model


def _mel_inputs():
    return (torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(3)),)


def _hifigan_run(model, x):
    return model(x)


# name: (build, inputs, run, how many weight norms, their dim)
MODELS = {
    "wav2vec2": (_wav2vec2, _wav2vec2_inputs, _wav2vec2_run, 1, 2),
    "encodec": (_encodec, _audio_inputs, _encodec_run, 20, 0),
    "dac": (_dac, _audio_inputs, _dac_run, 36, 0),
    # SpeechT5's HiFi-GAN vocoder: ConvTranspose1d weights too (dim=0 is
    # their input-channel axis)
    "hifigan": (_hifigan, _mel_inputs, _hifigan_run, 12, 0),
}
KINDS = ("torch", "legacy")


def build(name: str, kind: str, *, seed: int = 0, with_wnkernels: bool = False):
    """The model, in eval mode (no dropout), its weight norms of ``kind``:
    "torch" (the parametrization) or "legacy" (the hook, transformers'
    fallback when the parametrization is missing); ``with_wnkernels``: built
    with wnkernels' weight_norm in the parametrization's place."""
    maker = MODELS[name][0]
    pz = torch.nn.utils.parametrizations
    saved = pz.weight_norm
    try:
        if with_wnkernels:
            pz.weight_norm = wt.weight_norm
        elif kind == "legacy":
            del pz.weight_norm
        torch.manual_seed(seed)
        with warnings.catch_warnings():     # the legacy hook's FutureWarning
            warnings.simplefilter("ignore", FutureWarning)
            model = maker()
    finally:
        pz.weight_norm = saved
    return model.eval()


def _norms(model):
    from wnkernels.torch._convert import _weight_norms
    return [(f"{q}.{n}" if q else n, kind, dim) for q, m in model.named_modules()
            for n, kind, dim in _weight_norms(m)]


def _outputs(name, model, inputs):
    out = MODELS[name][2](model, *inputs)
    return out if isinstance(out, tuple) else (out,)


def _loss(outs):
    # a fixed random cotangent per output: every gradient is exercised
    gen = torch.Generator().manual_seed(11)
    return sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs)


def _forward_backward(name, model, inputs):
    model.zero_grad(set_to_none=True)
    outs = _outputs(name, model, inputs)
    _loss(outs).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return [o.detach() for o in outs], grads


def _assert_outputs_close(got, want, what, rtol=RTOL, atol=ATOL):
    """Within rtol, and atol relative to the output's largest element."""
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        scale = float(b.abs().max()) if b.numel() else 1.0
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale,
                                   msg=lambda m: f"{what} output {k}: {m}")


def _assert_grads_close(got, want, what):
    """Every gradient within RTOL, and ATOL relative to the model's largest
    gradient: some are 0 in exact arithmetic (a key projection's bias, which
    softmax cancels) and hold only rounding noise in both models."""
    assert got.keys() == want.keys(), what
    scale = max(float(w.abs().max()) for w in want.values() if w is not None and w.numel())
    for n, w in want.items():
        g = got[n]
        assert g is not None and w is not None, (what, n)
        torch.testing.assert_close(g, w, rtol=RTOL, atol=ATOL * scale,
                                   msg=lambda m: f"{what} grad {n}: {m}")


def _pair(name, kind):
    """(PyTorch's model, the same model converted, convert's report)."""
    ref = build(name, kind)
    if kind == "torch":
        ours = copy.deepcopy(ref)
    else:
        # the legacy hook's module cannot be deepcopied (its weight is a
        # non-leaf tensor attribute, pytorch#103001): the same build again
        ours = build(name, kind)
        with pytest.raises(RuntimeError, match="deepcopy"):
            copy.deepcopy(ref)
    sd = ref.state_dict()
    for k, t in ours.state_dict().items():
        assert torch.equal(t, sd[k]), k
    params = dict(ours.named_parameters())
    report = wt.convert(ours)
    # the same Parameter objects (values, identity: optimizer state survives)
    after = dict(ours.named_parameters())
    assert after.keys() == params.keys() or kind == "legacy"
    for n, p in params.items():
        if kind == "legacy":     # weight_g/v move to parametrizations.weight.original0/1
            n = n.replace("weight_g", "parametrizations.weight.original0") \
                 .replace("weight_v", "parametrizations.weight.original1")
        assert after[n] is p, n
    return ref, ours, report


# ---------------------------------------------------------------- the tests

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.slow
@needs_transformers
def test_convert_matches_pytorch(name, kind):
    """convert() reports every weight norm, leaves only wnkernels' ones, and the
    outputs and every parameter's gradient match PyTorch's model."""
    _, inputs, _, count, dim = MODELS[name]
    ref, ours, report = _pair(name, kind)
    found = _norms(ref)
    assert len(found) == count and {k for _, k, _ in found} == {kind}
    assert {d for _, _, d in found} == {dim}
    assert report == [(q, kind) for q, _, _ in found]
    assert [(q, k, d) for q, k, d in _norms(ours)] == [(q, "wnkernels", d) for q, _, d in found]
    if kind == "torch":     # the state dict's keys and values: unchanged
        sd = ref.state_dict()
        assert ours.state_dict().keys() == sd.keys()
        for k, t in ours.state_dict().items():
            assert torch.equal(t, sd[k]), k

    x = inputs()
    want_out, want_grad = _forward_backward(name, ref, x)
    got_out, got_grad = _forward_backward(name, ours, x)
    _assert_outputs_close(got_out, want_out, name)
    rename = (lambda n: n.replace("parametrizations.weight.original0", "weight_g")
              .replace("parametrizations.weight.original1", "weight_v")) \
        if kind == "legacy" else (lambda n: n)
    assert {rename(n) for n in got_grad} == set(want_grad)
    _assert_grads_close({rename(n): g for n, g in got_grad.items()}, want_grad, name)
    # the converted model deep-copies (the legacy hook's does not)
    clone = copy.deepcopy(ours)
    _assert_outputs_close(_outputs(name, clone, x), got_out, f"{name} deepcopy", 0, 0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.slow
@needs_transformers
def test_converted_loads_state_dict_saved_before(name, kind):
    """A checkpoint of PyTorch's model (other weights: seed 1), saved before
    conversion -- legacy weight_g/weight_v keys included -- loads strictly into
    the converted model, which then computes what that model computes."""
    _, inputs, _, _, _ = MODELS[name]
    _, ours, _ = _pair(name, kind)
    other = build(name, kind, seed=1)
    sd = copy.deepcopy(other.state_dict())
    ours.load_state_dict(sd, strict=True)
    now = ours.state_dict()
    for k, t in other.state_dict().items():
        if kind == "legacy":
            k = k.replace("weight_g", "parametrizations.weight.original0") \
                 .replace("weight_v", "parametrizations.weight.original1")
        assert torch.equal(now[k], t), k
    x = inputs()
    with torch.no_grad():
        _assert_outputs_close(_outputs(name, ours, x), _outputs(name, other, x), name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.slow
@needs_transformers
def test_remove_weight_norm_same_outputs(name, kind):
    """remove_weight_norm folds wnkernels' weight norms (after convert) and
    PyTorch's / the legacy hook's (unconverted) into plain weights, with the
    same outputs."""
    _, inputs, _, _, _ = MODELS[name]
    ref, ours, _ = _pair(name, kind)
    x = inputs()
    with torch.no_grad():
        before_ours, before_ref = _outputs(name, ours, x), _outputs(name, ref, x)
        for model in (ours, ref):
            wt.remove_weight_norm(model)
            assert _norms(model) == []
            assert not any(parametrize.is_parametrized(m) for m in model.modules())
            assert not any("weight_g" in n or "original" in n for n, _ in model.named_parameters())
        # the folded weight is the one the forward computed: the same outputs
        _assert_outputs_close(_outputs(name, ours, x), before_ours, f"{name} folded",
                              1e-6, 1e-7)
        _assert_outputs_close(_outputs(name, ref, x), before_ref, f"{name} torch folded",
                              1e-6, 1e-7)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.slow
@needs_transformers
def test_built_with_wnkernels_loads_pytorch_state_dict(name, kind):
    """A model built with wnkernels' weight_norm in place of PyTorch's (the
    model code's weight_norm call pointed at ours) has PyTorch's state-dict
    keys, loads PyTorch's checkpoint (legacy keys too) and matches it."""
    _, inputs, _, count, dim = MODELS[name]
    ref = build(name, kind)
    ours = build(name, kind, with_wnkernels=True)
    found = _norms(ours)
    assert len(found) == count and {(k, d) for _, k, d in found} == {("wnkernels", dim)}
    if kind == "torch":
        assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.load_state_dict(copy.deepcopy(ref.state_dict()), strict=True)
    x = inputs()
    want_out, want_grad = _forward_backward(name, ref, x)
    got_out, got_grad = _forward_backward(name, ours, x)
    _assert_outputs_close(got_out, want_out, name)
    if kind == "legacy":
        got_grad = {n.replace("parametrizations.weight.original0", "weight_g")
                    .replace("parametrizations.weight.original1", "weight_v"): g
                    for n, g in got_grad.items()}
    _assert_grads_close(got_grad, want_grad, name)


# ---------------------------------------------------------------- without transformers

class _ResBlock(nn.Module):
    def __init__(self, ch, k=3, dilations=(1, 3)):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.utils.weight_norm(nn.Conv1d(ch, ch, k, dilation=d, padding=d * (k - 1) // 2))
            for d in dilations)

    def forward(self, x):
        for conv in self.convs:
            x = x + conv(torch.nn.functional.leaky_relu(x, 0.1))
        return x


class _LegacyHifiGan(nn.Module):
    """A HiFi-GAN-style generator written against the legacy hook
    (``torch.nn.utils.weight_norm``, as HiFi-GAN, BigVGAN and many vocoder
    repositories are), with its own ``remove_weight_norm``."""

    def __init__(self):
        super().__init__()
        wn = nn.utils.weight_norm
        self.conv_pre = wn(nn.Conv1d(8, 16, 7, padding=3))
        self.ups = nn.ModuleList([wn(nn.ConvTranspose1d(16, 8, 4, stride=2, padding=1)),
                                  wn(nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1))])
        self.blocks = nn.ModuleList([_ResBlock(8), _ResBlock(4)])
        self.conv_post = wn(nn.Conv1d(4, 1, 7, padding=3))

    def forward(self, mel):
        x = self.conv_pre(mel)
        for up, block in zip(self.ups, self.blocks):
            x = block(up(torch.nn.functional.leaky_relu(x, 0.1)))
        return torch.tanh(self.conv_post(torch.nn.functional.leaky_relu(x)))

    def remove_weight_norm(self):
        for m in [self.conv_pre, *self.ups, *(c for b in self.blocks for c in b.convs),
                  self.conv_post]:
            nn.utils.remove_weight_norm(m)


def _legacy_hifigan(seed=0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _LegacyHifiGan()


def test_legacy_hook_model_convert():
    """The README's legacy-hook example: a HiFi-GAN-style model converted in
    one line gives PyTorch's outputs and gradients, loads its legacy
    checkpoint (weight_g/weight_v), deep-copies, and folds with
    wnkernels.torch.remove_weight_norm (the model's own remove_weight_norm,
    torch.nn.utils.remove_weight_norm per layer, no longer applies)."""
    ref, ours = _legacy_hifigan(), _legacy_hifigan()
    report = wt.convert(ours)
    assert len(report) == 8 and {k for _, k in report} == {"legacy"}
    assert report[0] == ("conv_pre.weight", "legacy")
    mel = torch.randn(2, 8, 12, generator=torch.Generator().manual_seed(0))
    want_out, want_grad = _fb(ref, mel)
    got_out, got_grad = _fb(ours, mel)
    _assert_outputs_close(got_out, want_out, "hifigan")
    _assert_grads_close(_legacy_names(got_grad), want_grad, "hifigan")

    other = _legacy_hifigan(seed=1)
    ckpt = other.state_dict()
    assert "conv_pre.weight_g" in ckpt
    ours.load_state_dict(ckpt, strict=True)
    with torch.no_grad():
        _assert_outputs_close([ours(mel)], [other(mel)], "hifigan after load")
        clone = copy.deepcopy(ours)
        folded = wt.remove_weight_norm(clone)
        assert _norms(folded) == []
        _assert_outputs_close([folded(mel)], [ours(mel)], "hifigan folded", 1e-6, 1e-7)
    with pytest.raises(ValueError, match="weight_norm of 'weight' not found"):
        ours.remove_weight_norm()


def _fb(model, x):
    model.zero_grad(set_to_none=True)
    out = model(x)
    _loss((out,)).backward()
    return [out.detach()], {n: p.grad for n, p in model.named_parameters()}


def _legacy_names(grads):
    return {n.replace("parametrizations.weight.original0", "weight_g")
            .replace("parametrizations.weight.original1", "weight_v"): g
            for n, g in grads.items()}


@pytest.mark.parametrize("module,dim", [(m, d) for m in ("conv", "convT", "linear")
                                        for d in (0, 1, 2, -2, -1, None)
                                        if not (m == "linear" and d == 2)])  # 2 axes
@pytest.mark.parametrize("kind", KINDS)
def test_convert_every_dim(kind, dim, module):
    """convert() keeps each dim's meaning, for both kinds: weight, g's shape,
    and gradients as PyTorch's (legacy dim=None and -1 are the whole tensor,
    like the parametrization's)."""
    make = {"conv": lambda: nn.Conv1d(6, 4, 3), "convT": lambda: nn.ConvTranspose1d(6, 4, 3),
            "linear": lambda: nn.Linear(5, 4)}[module]
    apply = nn.utils.parametrizations.weight_norm if kind == "torch" else nn.utils.weight_norm
    mods = []
    for _ in range(2):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            mods.append(apply(make(), dim=dim))
    ref, ours = mods
    assert wt.convert(ours) == [("weight", kind)]
    assert wt.convert(ours) == []        # already wnkernels': nothing to do
    g = ours.parametrizations.weight.original0
    want_g = ref.parametrizations.weight.original0 if kind == "torch" else ref.weight_g
    assert g.shape == want_g.shape and torch.equal(g, want_g)
    torch.testing.assert_close(ours.weight, ref.weight, rtol=1e-6, atol=1e-7)
    x = torch.randn(3, 6, 7) if module != "linear" else torch.randn(3, 5)
    _, want_grad = _fb(ref, x)
    _, got_grad = _fb(ours, x)
    if kind == "legacy":
        got_grad = _legacy_names(got_grad)
    _assert_grads_close(got_grad, want_grad, f"{module} dim={dim}")


def test_convert_and_fold_leave_a_deepcopy_intact():
    """convert / remove_weight_norm on a deepcopy must not break the original:
    PyTorch's parametrize gives a deepcopy the original's (dynamically made)
    class, and remove_parametrizations deletes the weight property from that
    class -- every copy then fails with "'ParametrizedLinear' object has no
    attribute 'weight'"."""
    x = torch.randn(2, 3)
    for make in (nn.utils.parametrizations.weight_norm, wt.weight_norm):
        for act in (wt.convert, wt.remove_weight_norm):
            torch.manual_seed(0)
            original = make(nn.Linear(3, 4))
            want = original(x)
            copied = copy.deepcopy(original)
            act(copied)
            torch.testing.assert_close(copied(x), want, rtol=1e-6, atol=1e-7)
            assert torch.equal(original(x), want), (make, act)
