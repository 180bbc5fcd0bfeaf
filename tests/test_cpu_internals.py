"""CPU-backend properties beyond the public math: every instruction-set
variant and every tuning knob gives the same bits, and reused output buffers
are never handed out while a result still uses them."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import wnkernels
from wnkernels import _cpu

# Shapes that reach every strategy: many rows, few long rows (rows split
# across threads), short segments, column mode with one and many
# superchunks, tuple dims, strided input.
CASES = [
    ((257, 33), 0), ((3, 40001), 0), ((33, 7, 5), 1), ((300, 37), 1),
    ((3000, 11), 1), ((9, 6, 5, 4), (0, 2)), ((17, 19), None),
]
DTYPES = ["float16", "float32", "float64", "bfloat16"]

_DIGEST = r"""
import hashlib, json, sys
import numpy as np, wnkernels
cases = json.loads(sys.argv[1])
h = hashlib.sha256()
for shape, dim, dtype in cases:
    dim = tuple(dim) if isinstance(dim, list) else dim
    rng = np.random.default_rng(len(shape) * 1000 + sum(shape))
    if dtype == "bfloat16":
        import ml_dtypes
        npdt = ml_dtypes.bfloat16
    else:
        npdt = np.dtype(dtype)
    v = rng.standard_normal(shape).astype(npdt)
    v = v[..., ::-1] if v.ndim > 1 else v
    kept = () if dim is None else (dim if isinstance(dim, tuple) else (dim,))
    kept = tuple(k % len(shape) for k in kept)
    g = rng.standard_normal([n if i in kept else 1 for i, n in enumerate(shape)]).astype(npdt)
    gw = rng.standard_normal(shape).astype(npdt)
    w, n = wnkernels.weight_norm(v, g, dim, eps=1e-3)
    gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, dim)
    for a in (w, n, gv, gg):
        h.update(np.ascontiguousarray(a).view(np.uint8).tobytes())
print(h.hexdigest())
"""


def _digest(env_extra):
    cases = [[list(s), list(d) if isinstance(d, tuple) else d, dt]
             for s, d in CASES for dt in DTYPES]
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", _DIGEST, json.dumps(cases)],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_isa_variants_agree_bitwise():
    """AVX-512, AVX2 and baseline builds sum in the same lanes and order."""
    best = _cpu.isa()
    variants = {"avx512": ["avx512", "avx2", "baseline"],
                "avx2": ["avx2", "baseline"]}.get(best, ["baseline"])
    if len(variants) < 2:
        pytest.skip(f"this CPU runs only the {best} variant")
    digests = {isa: _digest({"WNKERNELS_ISA": isa}) for isa in variants}
    assert len(set(digests.values())) == 1, digests


def test_forced_isa_is_reported():
    out = subprocess.run(
        [sys.executable, "-c", "from wnkernels import _cpu; print(_cpu.isa())"],
        env=dict(os.environ, WNKERNELS_ISA="baseline"), capture_output=True,
        text=True, check=True)
    assert out.stdout.strip() == "baseline"


def _run_all():
    rng = np.random.default_rng(7)
    res = []
    for shape, dim in CASES:
        v = rng.standard_normal(shape).astype(np.float32)
        kept = () if dim is None else (dim if isinstance(dim, tuple) else (dim,))
        g = rng.standard_normal([n if i in kept else 1
                                 for i, n in enumerate(shape)]).astype(np.float32)
        gw = rng.standard_normal(shape).astype(np.float32)
        w, n = wnkernels.weight_norm(v, g, dim)
        res += [w.copy(), n.copy(), *[a.copy() for a in
                wnkernels.weight_norm_backward(gw, v, g, n, dim)]]
    return res


@pytest.mark.parametrize("knob,values", [
    ("stream_threshold", [0, 1 << 40]),       # streaming stores on / off
    ("col_budget", [1, 64 << 10, 1 << 30]),   # column block sizes
])
def test_tuning_knobs_do_not_change_bits(knob, values):
    get, set_ = getattr(_cpu, "get_" + knob), getattr(_cpu, "set_" + knob)
    before = get()
    try:
        results = []
        for value in values:
            set_(value)
            results.append(_run_all())
    finally:
        set_(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()


def test_reused_buffers_never_alias_live_results():
    v = np.random.default_rng(1).standard_normal((1024, 512)).astype(np.float32)
    g = np.ones((1024, 1), np.float32)
    w1, _ = wnkernels.weight_norm(v, g)
    keep = w1[::2]                       # a view keeps the buffer in use
    expect = keep.copy()
    del w1
    w2, _ = wnkernels.weight_norm(v * 3, g * 2)
    assert not np.shares_memory(keep, w2)
    np.testing.assert_array_equal(keep, expect)
    addr = w2.__array_interface__["data"][0]
    del w2
    w3, _ = wnkernels.weight_norm(v, g)   # w2's buffer is free again: reused
    assert w3.__array_interface__["data"][0] == addr
    wnkernels.empty_cache()


def test_reused_buffers_behind_torch_tensors():
    torch = pytest.importorskip("torch")
    v = torch.randn(1024, 512)
    g = torch.ones(1024, 1)
    a, _ = wnkernels.weight_norm(v, g)
    b, _ = wnkernels.weight_norm(v * 2, g)
    assert a.data_ptr() != b.data_ptr()
    torch.testing.assert_close(a * 2, wnkernels.weight_norm(v, g * 2)[0])


def test_fast_path_matches_and_still_validates():
    """A remembered call shape (wnkernels._cpu fast path) gives the validating
    path's bits and rejects what the front end rejects."""
    rng = np.random.default_rng(3)
    v = rng.standard_normal((33, 17)).astype(np.float32)
    g = rng.standard_normal((33, 1)).astype(np.float32)
    gw = rng.standard_normal((33, 17)).astype(np.float32)
    _cpu.forget_plans()
    w0, n0 = wnkernels.weight_norm(v, g, 0)          # validating path, remembered
    gv0, gg0 = wnkernels.weight_norm_backward(gw, v, g, n0, 0)
    w1, n1 = wnkernels.weight_norm(v, g, 0)          # fast path
    gv1, gg1 = wnkernels.weight_norm_backward(gw, v, g, n1, 0)
    for a, b in [(w0, w1), (n0, n1), (gv0, gv1), (gg0, gg1)]:
        assert a.tobytes() == b.tobytes()
    with pytest.raises(ValueError, match="eps"):
        wnkernels.weight_norm(v, g, 0, eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        wnkernels.weight_norm(v, g, 0, eps=float("nan"))
    with pytest.raises(TypeError):
        wnkernels.weight_norm(v, g, False)           # hashes like dim=0
    with pytest.raises(TypeError):
        wnkernels.weight_norm_backward(gw, v, g, n0, False)
    # same shape and strides, but misaligned data: handled by the front end
    buf = np.empty(v.size * 4 + 4, np.uint8)[1:1 + v.size * 4]
    mis = np.ndarray(v.shape, np.float32, buffer=buf)
    mis[...] = v
    assert not mis.flags.aligned
    w2, n2 = wnkernels.weight_norm(mis, g, 0)
    assert w2.tobytes() == w0.tobytes() and n2.tobytes() == n0.tobytes()


def test_fast_path_never_accepts_what_the_front_end_rejects():
    """Plans are keyed on the arrays the kernels read; bfloat16 travels as
    uint16 bits, so a uint16 call of the same shape must still fail."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    v = np.ones((8, 5), ml_dtypes.bfloat16)
    g = np.ones((8, 1), ml_dtypes.bfloat16)
    _cpu.forget_plans()
    for _ in range(2):
        wnkernels.weight_norm(v, g)
    with pytest.raises(TypeError):
        wnkernels.weight_norm(v.view(np.uint16), g.view(np.uint16))


def test_torch_fast_path_matches_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    v = rng.standard_normal((65, 33)).astype(np.float32)
    g = rng.standard_normal((65, 1)).astype(np.float32)
    gw = rng.standard_normal((65, 33)).astype(np.float32)
    _cpu.forget_plans()
    tv = torch.from_numpy(v).requires_grad_(True)
    for _ in range(2):                           # validating path, then fast path
        tw, tn = wnkernels.weight_norm(tv, torch.from_numpy(g))
        tgv, tgg = wnkernels.weight_norm_backward(torch.from_numpy(gw), tv,
                                                  torch.from_numpy(g), tn)
        assert isinstance(tw, torch.Tensor) and isinstance(tgg, torch.Tensor)
        w, n = wnkernels.weight_norm(v, g)
        gv, gg = wnkernels.weight_norm_backward(gw, v, g, n)
        assert tw.numpy().tobytes() == w.tobytes()
        assert tgv.numpy().tobytes() == gv.tobytes()
    with pytest.raises(TypeError):
        wnkernels.weight_norm(tv, g)             # mixed torch / NumPy


def test_out_that_overlaps_itself_is_rejected():
    torch = pytest.importorskip("torch")
    v = torch.ones(4, 3)
    out = torch.zeros(1, 3).expand(4, 3)        # writable, every row aliased
    with pytest.raises(ValueError, match="out"):
        wnkernels.weight_norm(v, torch.ones(4, 1), out=out)
    assert torch.count_nonzero(out) == 0
    neg = torch.zeros(4, 3)._neg_view()
    with pytest.raises(ValueError, match="out"):
        wnkernels.weight_norm(v, torch.ones(4, 1), out=neg)


def test_pool_makes_room_for_new_sizes(monkeypatch):
    """Under its byte cap the pool drops unused buffers of old sizes, so a
    new size is still pooled (and reused) while live results are kept."""
    from wnkernels._frontend import _BufferPool
    pool = _BufferPool()
    monkeypatch.setattr(_BufferPool, "MAX_POOLED_BYTES", 3 << 20)
    live = pool.get(1 << 20)                 # stays in use
    for size in (1 << 20, (1 << 20) + 64, (1 << 20) + 128):
        pool.get(size)                       # dropped right away
    a = pool.get(2 << 20)
    assert [b is a.base for b in pool._bufs[2 << 20]] == [True]   # pooled
    base_id = id(a.base)                     # the pool keeps it alive
    del a
    assert id(pool.get(2 << 20).base) == base_id   # reused, not a malloc accident
    assert pool._pooled_bytes_locked() == 3 << 20
    assert live.base is not None and any(
        b is live.base for bufs in pool._bufs.values() for b in bufs)
