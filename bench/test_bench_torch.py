"""Training-step benchmarks of wnkernels' PyTorch integration (CPU).

pytest-benchmark (``pytest bench/test_bench_torch.py --benchmark-only``) times one
training step (zero_grad, forward, loss, backward, SGD step) of

* single layers -- ``layer``: wnkernels' WeightNormLinear / WeightNormConv1d (no w
  materialized), ``dropin``: ``wnkernels.torch.weight_norm``, ``torch``: PyTorch's
  ``parametrizations.weight_norm``, ``plain``: the nn layer without weight norm;
* real models built from their transformers configs with random weights (DAC, Encodec) --
  ``torch``: PyTorch's per-module parametrization, ``convert``: ``wnkernels.torch.convert``,
  ``grouped``: convert + ``GroupedWeightNorm`` (one grouped forward, one grouped backward
  per step), ``grouped-32M``: the same in chunks of at most 32 MiB of v, ``layers``: convert + ``layers_from_model`` (Conv1d/Linear without w).

Run as a script (``python bench/test_bench_torch.py [--rounds N] [--models]``) it prints
interleaved step times (min / median / max over rounds, every variant timed in turn each
round, so machine noise hits all alike) and memory per variant, each measured in a fresh
subprocess: the step's peak RSS above the RSS before it (Linux VmHWM after resetting it
through /proc/self/clear_refs, after two warm-up steps, .grad freed and
``wnkernels.empty_cache()``: parameters and optimizer state are the baseline; glibc's mmap threshold fixed at
64 KiB so that freed blocks return to the OS) and the bytes saved for backward
(``torch.autograd.graph.saved_tensors_hooks``, parameters excluded, each storage once).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import pytest

torch = pytest.importorskip("torch") if __name__ != "__main__" else __import__("torch")
from torch import nn  # noqa: E402

import wnkernels.torch as wt  # noqa: E402

# ------------------------------------------------------------------ layer cases

LAYER_CASES = {
    # name: (nn factory, input shape)  -- weight-dominant and activation-dominant
    "conv1d-1024x1024x7-x1x256": (lambda: nn.Conv1d(1024, 1024, 7, padding=3), (1, 1024, 256)),
    "conv1d-256x256x7-x4x2048": (lambda: nn.Conv1d(256, 256, 7, padding=3), (4, 256, 2048)),
    "linear-4096x4096-x16": (lambda: nn.Linear(4096, 4096), (16, 4096)),
}
LAYER_VARIANTS = ("layer", "dropin", "torch", "plain")


def build_layer(case: str, variant: str):
    factory, xshape = LAYER_CASES[case]
    torch.manual_seed(0)
    m = factory()
    if variant == "layer":
        cls = wt.WeightNormLinear if isinstance(m, nn.Linear) else wt.WeightNormConv1d
        m = cls.from_module(m)
    elif variant == "dropin":
        wt.weight_norm(m)
    elif variant == "torch":
        torch.nn.utils.parametrizations.weight_norm(m)
    x = torch.randn(xshape, requires_grad=True)   # a layer inside a network
    return m, (x,), lambda y: y.square().mean(), None


# ------------------------------------------------------------------ real models

MODEL_VARIANTS = ("torch", "convert", "grouped", "grouped-32M", "layers")


def _dac(small: bool):
    from transformers import DacConfig, DacModel
    cfg = (DacConfig(encoder_hidden_size=16, decoder_hidden_size=128, hidden_size=64,
                     n_codebooks=4, codebook_size=256, codebook_dim=8) if small
           else DacConfig())
    m = DacModel(cfg)
    m.apply_weight_norm()          # PyTorch's parametrization (what HF applies for training)
    x = torch.randn(1, 1, 2048 if not small else 4096)

    def loss(out):
        a = out.audio_values.reshape(1, -1)
        t = min(a.shape[-1], x.shape[-1])
        return out.loss.mean() + (a[:, :t] - x.reshape(1, -1)[:, :t]).abs().mean()
    return m, (x,), loss


def _encodec(small: bool):
    from transformers import EncodecConfig, EncodecModel
    cfg = (EncodecConfig(num_filters=16, hidden_size=64, num_lstm_layers=1) if small
           else EncodecConfig())
    m = EncodecModel(cfg)
    x = torch.randn(1, 1, 4800)

    class AutoEncoder(nn.Module):    # encoder + decoder: gradients reach every weight
        def __init__(self, e):
            super().__init__()
            self.e = e

        def forward(self, x):
            return self.e.decoder(self.e.encoder(x))

    return AutoEncoder(m), (x,), lambda y: (y[..., :x.shape[-1]] - x).square().mean()


MODELS = {"dac-16khz": lambda: _dac(False), "dac-small": lambda: _dac(True),
          "encodec-24khz": lambda: _encodec(False), "encodec-small": lambda: _encodec(True)}


def build_model(name: str, variant: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model, args, loss = MODELS[name]()
    grouped = None
    if variant != "torch":
        wt.convert(model)
    if variant == "layers":
        wt.layers_from_model(model)
    if variant == "grouped":
        grouped = wt.GroupedWeightNorm(model).install()
    if variant == "grouped-32M":     # chunks of <= 32 MiB of v: bounded grad_w backlog
        grouped = wt.GroupedWeightNorm(model, max_group_bytes=32 << 20).install()
    return model, args, loss, grouped


# ------------------------------------------------------------------ the step

def make_step(model, args, loss_fn):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(*args))
        loss.backward()
        opt.step()
        return loss
    return step


def saved_bytes(model, args, loss_fn) -> int:
    """Bytes autograd keeps for the backward of one forward (parameters excluded,
    each storage counted once)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model(*args))
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return -1


def memory_of(kind: str, name: str, variant: str) -> dict:
    build = build_layer if kind == "layer" else build_model
    model, args, loss_fn, _ = build(name, variant)
    step = make_step(model, args, loss_fn)
    step()
    step()                                  # warm: plans, optimizer state, allocator
    model.zero_grad(set_to_none=True)       # the step starts without .grad (zero_grad)
    import gc
    import wnkernels
    wnkernels.empty_cache()                 # wnkernels' reusable output buffers: counted
    gc.collect()                            # in the step (as torch's fresh allocations are)
    before = _status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return {"peak_step_bytes": None, "saved_bytes": saved_bytes(model, args, loss_fn)}
    step()
    peak = _status("VmHWM")
    return {"peak_step_bytes": peak - before, "saved_bytes": saved_bytes(model, args, loss_fn)}


# ------------------------------------------------------------------ pytest-benchmark

@pytest.mark.parametrize("variant", LAYER_VARIANTS)
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_step(benchmark, case, variant):
    model, args, loss_fn, _ = build_layer(case, variant)
    step = make_step(model, args, loss_fn)
    step()
    benchmark.group = f"torch step {case}"
    benchmark.extra_info.update({"case": case, "variant": variant,
                                 "saved_bytes": saved_bytes(model, args, loss_fn)})
    benchmark(step)


@pytest.mark.parametrize("variant", MODEL_VARIANTS)
@pytest.mark.parametrize("name", ["dac-small", "encodec-small"])
def test_model_step(benchmark, name, variant):
    pytest.importorskip("transformers")
    model, args, loss_fn, _ = build_model(name, variant)
    step = make_step(model, args, loss_fn)
    step()
    benchmark.group = f"torch step {name}"
    benchmark.extra_info.update({"model": name, "variant": variant})
    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)


# ------------------------------------------------------------------ script

def _interleaved(builds, rounds: int):
    steps = {}
    for key, (model, args, loss_fn) in builds.items():
        steps[key] = make_step(model, args, loss_fn)
        steps[key]()                        # warm-up
    return _time_rounds(steps, rounds)


def _time_rounds(steps, rounds: int):
    """Per-step times of already warmed-up steps, interleaved round by round."""
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, st in steps.items():
            t0 = time.perf_counter()
            st()
            times[k].append(time.perf_counter() - t0)
    return times


def weights_only_step(model, grouped):
    """Only the weight norms of a model: every weight recomputed (per module, or in
    one grouped call) and its backward run with fixed random grad_w's."""
    from torch.nn.utils import parametrize as P
    mods = [(m, n) for m in model.modules() if P.is_parametrized(m)
            for n in m.parametrizations]
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(getattr(m, n).shape, generator=gen) for m, n in mods]

    def step():
        model.zero_grad(set_to_none=True)
        if grouped is None:
            ws = [getattr(m, n) for m, n in mods]
        else:
            with grouped:
                ws = [getattr(m, n) for m, n in mods]
        torch.autograd.backward(ws, grads)
    return step, len(mods), sum(g.numel() for g in grads)


def _weights_only(name, rounds):
    steps = {}
    for v in ("torch", "convert", "grouped"):
        model, _args, _loss, grouped = build_model(name, v)
        if grouped is not None:
            grouped.remove()
        steps[v], n, numel = weights_only_step(model, grouped)
        steps[v]()
    times = _time_rounds(steps, rounds)
    print(f"\n{name}: weight norms only ({n} weights, {numel / 1e6:.1f}M elements, "
          f"forward + backward, {rounds} interleaved rounds)")
    base = statistics.median(times["torch"])
    for v, ts in times.items():
        print(f"  {v:9s} {_fmt_t(ts)} {statistics.median(ts) / base:9.3f}")
    sys.stdout.flush()


def _fmt_t(ts):
    return (f"{min(ts) * 1e3:9.1f} {statistics.median(ts) * 1e3:9.1f} "
            f"{max(ts) * 1e3:9.1f}")


def _mem(kind, name, variant):
    # a fixed mmap threshold: every large block is mapped and unmapped (glibc's
    # dynamic threshold would otherwise recycle freed blocks without RSS changing)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, __file__, "--mem", kind, name, variant],
                         capture_output=True, text=True, timeout=900, env=env)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": (out.stderr or out.stdout)[-300:]}


def _fmt_b(b):
    return "      n/a" if b is None else f"{b / 2**20:9.1f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10, help="0: memory only")
    ap.add_argument("--layers", action="store_true", help="the single-layer cases")
    ap.add_argument("--models", nargs="*", default=None,
                    help=f"real models to run (of {list(MODELS)}); none given: all")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--weights-only", action="store_true",
                    help="time only the models' weight norms (forward + backward)")
    ap.add_argument("--mem", nargs=3, metavar=("KIND", "NAME", "VARIANT"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.mem:
        print(json.dumps(memory_of(*a.mem)))
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"wnkernels threads {__import__('wnkernels').get_num_threads()}")
    if a.weights_only:
        for m in (a.models or list(MODELS)):
            _weights_only(m, a.rounds)
        return
    jobs = []
    if a.layers or a.models is None:
        jobs += [("layer", c, LAYER_VARIANTS) for c in LAYER_CASES]
    if a.models is not None or not a.layers:
        jobs += [("model", m, MODEL_VARIANTS) for m in (a.models or list(MODELS))]
    for kind, name, variants in jobs:
        build = build_layer if kind == "layer" else build_model
        builds = {}
        for v in variants:
            model, args, loss_fn, _ = build(name, v)
            builds[v] = (model, args, loss_fn)
        times = _interleaved(builds, a.rounds) if a.rounds > 0 else {v: [0.0] for v in builds}
        del builds
        base = statistics.median(times["torch"]) or 1.0
        print(f"\n{name}  ({a.rounds} interleaved rounds)")
        print(f"  {'variant':9s} {'min ms':>9s} {'med ms':>9s} {'max ms':>9s} "
              f"{'med/torch':>9s} {'peakMiB':>9s} {'savedMiB':>9s}")
        for v in variants:
            mem = {} if a.no_memory else _mem(kind, name, v)
            if "error" in mem:
                print(f"  {v}: memory run failed: {mem['error']}")
                mem = {}
            print(f"  {v:9s} {_fmt_t(times[v])} {statistics.median(times[v]) / base:9.3f} "
                  f"{_fmt_b(mem.get('peak_step_bytes'))} {_fmt_b(mem.get('saved_bytes'))}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
