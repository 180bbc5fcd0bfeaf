"""CPU-backend properties beyond the public math: every instruction-set
variant and every tuning knob gives the same bits, and reused output buffers
are never handed out while a result still uses them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import wnkernels
import zoo
from wnkernels import _dispatch
from wnkernels.cpu import _kernels as _cpu

# Shapes that reach every strategy: many rows, few long rows (rows split
# across threads), short segments, column mode with one and many
# superchunks, tuple dims, strided input.
CASES = [
    ((257, 33), 0), ((3, 40001), 0), ((33, 7, 5), 1), ((300, 37), 1),
    ((3000, 11), 1), ((9, 6, 5, 4), (0, 2)), ((17, 19), None),
    ((2500, 130), 1), ((40, 9, 100), 2),
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
    # reversed (strided) and C-contiguous: a contiguous kept axis takes the
    # column panels, a reversed one the per-step path
    for x in (v, v.copy()):
        w, n = wnkernels.weight_norm(x, g, dim, eps=1e-3)
        gv, gg = wnkernels.weight_norm_backward(gw, x, g, n, dim)
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
    variants = zoo.isa_variants(best)
    if len(variants) < 2:
        pytest.skip(f"this CPU runs only the {best} variant")
    digests = {isa: _digest({"WNKERNELS_ISA": isa}) for isa in variants}
    assert len(set(digests.values())) == 1, digests


def test_forced_isa_is_reported():
    out = subprocess.run(
        [sys.executable, "-c", "from wnkernels.cpu import _kernels as _cpu; print(_cpu.isa())"],
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


def test_a_group_larger_than_the_cache_streams_with_the_same_bits():
    """A grouped call's outputs stream once the whole table's traffic passes the
    threshold, even when every item alone is below it: the bits stay those of
    the per-tensor calls (which, each below the threshold, do not stream).  A
    backward streams from half the threshold, counting its three arrays."""
    rng = np.random.default_rng(11)
    shapes = [(33, 17), (64, 1, 7), (5, 300), (128, 9, 3), (7, 1)]
    vs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    gs = [rng.standard_normal((s[0],)).astype(np.float32) for s in shapes]
    gws = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    moved = sum(2 * v.nbytes for v in vs)
    before = _cpu.get_stream_threshold()
    try:
        _cpu.set_stream_threshold(max(v.nbytes for v in vs) * 2 + 1)
        assert moved >= _cpu.get_stream_threshold()
        many = wnkernels.weight_norm_many(vs, gs)
        # backward: an item moves 3 * nbytes, the table 3 * the sum
        _cpu.set_stream_threshold(max(v.nbytes for v in vs) * 6 + 1)
        assert 3 * sum(v.nbytes for v in vs) * 2 >= _cpu.get_stream_threshold()
        back = wnkernels.weight_norm_backward_many(gws, vs, gs, [n for _, n in many])
    finally:
        _cpu.set_stream_threshold(before)
    for k in range(len(shapes)):
        w, n = wnkernels.weight_norm(vs[k], gs[k])
        gv, gg = wnkernels.weight_norm_backward(gws[k], vs[k], gs[k], n)
        for a, b in ((many[k][0], w), (many[k][1], n), (back[k][0], gv), (back[k][1], gg)):
            assert a.tobytes() == b.tobytes(), shapes[k]


def test_reused_buffers_never_alias_live_results():
    wnkernels.empty_cache()              # only this test's buffers in the pool
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


def test_cached_plan_matches_and_still_validates():
    """A call whose plan is cached (wnkernels._dispatch) gives the planning
    call's bits and still rejects what the planner rejects."""
    rng = np.random.default_rng(3)
    v = rng.standard_normal((33, 17)).astype(np.float32)
    g = rng.standard_normal((33, 1)).astype(np.float32)
    gw = rng.standard_normal((33, 17)).astype(np.float32)
    _dispatch.clear_plans()
    assert _dispatch.plan_of("weight_norm", v, g) is None
    w0, n0 = wnkernels.weight_norm(v, g, 0)          # planned, cached
    gv0, gg0 = wnkernels.weight_norm_backward(gw, v, g, n0, 0)
    assert _dispatch.plan_of("weight_norm", v, g) is not None
    assert _dispatch.plan_of("weight_norm_backward", gw, v, g, n0) is not None
    w1, n1 = wnkernels.weight_norm(v.copy(), g.copy(), 0)          # cached
    gv1, gg1 = wnkernels.weight_norm_backward(gw.copy(), v.copy(), g.copy(), n1, 0)
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
    with pytest.raises(TypeError):
        wnkernels.weight_norm(v, g, (False,))
    # same shape and strides, but misaligned data: a plan of its own (a copy)
    buf = np.empty(v.size * 4 + 4, np.uint8)[1:1 + v.size * 4]
    mis = np.ndarray(v.shape, np.float32, buffer=buf)
    mis[...] = v
    assert not mis.flags.aligned
    for _ in range(2):
        w2, n2 = wnkernels.weight_norm(mis, g, 0)
        assert w2.tobytes() == w0.tobytes() and n2.tobytes() == n0.tobytes()


def test_every_argument_form_is_cached():
    """Tuple and list dims, NumPy-int dims, int eps, out=, backward, row_scale:
    after one call each form runs from the cache."""
    rng = np.random.default_rng(5)
    v = rng.standard_normal((4, 5, 6)).astype(np.float32)
    _dispatch.clear_plans()
    for dim in [(0, 2), [2, 0], np.int64(1), -1, None]:
        g = zoo.g_for(rng, v.shape, dim, "float32")
        for eps in (0.0, 1, np.float32(0.5)):
            w, n = wnkernels.weight_norm(v, g, dim, eps=eps)
            assert _dispatch.plan_of("weight_norm", v, g, dim=dim) is not None, dim
        out = np.empty_like(v)
        w2, _ = wnkernels.weight_norm(v, g, dim, eps=1, out=out)
        assert w2 is out
        assert _dispatch.plan_of("weight_norm", v, g, out, dim=dim) is not None
        wnkernels.weight_norm_backward(v, v, g, n, dim)
        assert _dispatch.plan_of("weight_norm_backward", v, v, g, n, dim=dim) is not None
        wnkernels.row_scale(v, g, dim)
        assert _dispatch.plan_of("row_scale", v, g, dim=dim) is not None


def test_cache_never_accepts_what_the_planner_rejects():
    """Plans are keyed on the arguments' own dtypes: bfloat16 travels as uint16
    bits inside, so a uint16 call of the same shape must still fail."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    v = np.ones((8, 5), ml_dtypes.bfloat16)
    g = np.ones((8, 1), ml_dtypes.bfloat16)
    _dispatch.clear_plans()
    for _ in range(2):
        wnkernels.weight_norm(v, g)
    with pytest.raises(TypeError):
        wnkernels.weight_norm(v.view(np.uint16), g.view(np.uint16))


def _torch_bits(t):
    torch = pytest.importorskip("torch")
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.contiguous().numpy().tobytes()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("case", ["rows", "transposed", "dim=-1", "dim=None"])
def test_torch_cached_path_matches(dtype, case):
    """A cached torch call runs straight from the tensors' data pointers, with
    the planning call's bits, the same tensor types, dtypes and strides, for
    every dtype and layout."""
    torch = pytest.importorskip("torch")
    tdt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(9)
    v = torch.randn(33, 65, generator=gen).to(tdt)
    gw = torch.randn(33, 65, generator=gen).to(tdt)
    dim = {"rows": 0, "transposed": 0, "dim=-1": -1, "dim=None": None}[case]
    if case == "transposed":
        v, gw = v.t(), gw.t()                    # strided: kept axis is fast
    gshape = [1] * v.dim() if dim is None else \
        [n if ax == dim % v.dim() else 1 for ax, n in enumerate(v.shape)]
    g = torch.nn.Parameter(torch.rand(gshape, generator=gen).to(tdt) + 0.5)
    v = torch.nn.Parameter(v)
    _dispatch.clear_plans()
    w0, n0 = wnkernels.weight_norm(v, g, dim)            # planned, cached
    gv0, gg0 = wnkernels.weight_norm_backward(gw, v, g, n0, dim)
    assert _dispatch.plan_of("weight_norm", v, g, dim=dim) is not None
    assert _dispatch.plan_of("weight_norm_backward", gw, v, g, n0, dim=dim) is not None
    cached = wnkernels.weight_norm(v, g, dim) + wnkernels.weight_norm_backward(gw, v, g, n0, dim)
    for ref, got in zip((w0, n0, gv0, gg0), cached):
        assert type(got) is torch.Tensor and got.dtype == ref.dtype
        assert got.shape == ref.shape and got.stride() == ref.stride()
        assert not got.requires_grad
        assert _torch_bits(got) == _torch_bits(ref)
    # and a NumPy call of the same data agrees
    if dtype != "bfloat16":
        w, n = wnkernels.weight_norm(v.detach().numpy(), g.detach().numpy(), dim)
        assert w.tobytes() == w0.detach().contiguous().numpy().tobytes()
        assert n.tobytes() == n0.numpy().tobytes()


def test_odd_tensors_after_a_cached_plain_call():
    """Tensors with the shape and strides of a cached call but data the kernels
    cannot read in place (negative bit, misaligned data), or arguments the
    planner rejects, get the right answer or error."""
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(8, 5, generator=gen)
    g = torch.rand(8, 1, generator=gen) + 0.5
    gw = torch.randn(8, 5, generator=gen)
    _dispatch.clear_plans()
    w0, n0 = wnkernels.weight_norm(v, g)
    gv0, gg0 = wnkernels.weight_norm_backward(gw, v, g, n0)
    neg = (-v)._neg_view()                       # same values, negative bit set
    assert neg.is_neg() and neg.stride() == v.stride()
    for _ in range(2):
        w1, n1 = wnkernels.weight_norm(neg, g)
        assert torch.equal(w1, w0) and torch.equal(n1, n0)
        gv1, gg1 = wnkernels.weight_norm_backward(gw, neg, g, n0)
        assert torch.equal(gv1, gv0) and torch.equal(gg1, gg0)
    assert neg.is_neg() and torch.equal(neg, v)  # the input is untouched
    buf = np.zeros(v.numel() * 4 + 4, np.uint8)[1:1 + v.numel() * 4]
    mis = torch.from_numpy(np.ndarray((8, 5), np.float32, buffer=buf))
    mis.copy_(v)
    assert mis.data_ptr() % 4 and mis.stride() == v.stride()
    for _ in range(2):
        w2, n2 = wnkernels.weight_norm(mis, g)
        assert torch.equal(w2, w0) and torch.equal(n2, n0)
        gv2, gg2 = wnkernels.weight_norm_backward(gw, mis, g, n0)
        assert torch.equal(gv2, gv0) and torch.equal(gg2, gg0)
    sparse = v.to_sparse()                       # same dtype and shape, no strides
    with pytest.raises(TypeError, match="strided"):
        wnkernels.weight_norm(sparse, g)
    with pytest.raises(ValueError, match="eps"):
        wnkernels.weight_norm(v, g, eps=-1.0)
    with pytest.raises(TypeError):
        wnkernels.weight_norm(v, g, False)       # hashes like dim=0
    with pytest.raises(TypeError):
        wnkernels.weight_norm(v, g.numpy())      # mixed torch / NumPy
    with pytest.raises(TypeError):
        wnkernels.weight_norm(v.to(torch.int32), g.to(torch.int32))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_cached_out_still_checks_overlap(kind):
    """A cached forward with out= returns the caller's out (in place too),
    while an out of the same key that overlaps v without being v, or
    overlaps g, still raises and writes nothing: the overlap is checked on
    every call, not at planning only."""
    rng = np.random.default_rng(4)
    wrap = (lambda a: a) if kind == "numpy" else pytest.importorskip("torch").from_numpy
    bits = (lambda a: np.asarray(a).tobytes())
    v = rng.standard_normal((16, 9)).astype(np.float32)
    g = (rng.random((16, 1)) + 0.5).astype(np.float32)
    w_ref, n_ref = wnkernels.weight_norm(v, g)
    _dispatch.clear_plans()
    tv, tg = wrap(v), wrap(g)
    for _ in range(2):
        out = wrap(np.full_like(v, np.nan))
        w, n = wnkernels.weight_norm(tv, tg, out=out)
        assert w is out and bits(out) == bits(w_ref) and bits(n) == bits(n_ref)
    assert _dispatch.plan_of("weight_norm", tv, tg, out) is not None
    # in place: planned by one call, run from the cache by the next
    for _ in range(2):
        x = wrap(v.copy())
        w, n = wnkernels.weight_norm(x, tg, out=x)
        assert w is x and bits(x) == bits(w_ref) and bits(n) == bits(n_ref)
    # same shapes and strides as a cached call, but out overlaps v one row off
    buf = np.zeros((17, 9), np.float32)
    buf[1:] = v
    wnkernels.weight_norm(wrap(np.zeros((16, 9), np.float32)), tg,
                          out=wrap(np.zeros((16, 9), np.float32)))
    before = buf.copy()
    with pytest.raises(ValueError, match="out"):
        wnkernels.weight_norm(wrap(buf[1:]), tg, out=wrap(buf[:-1]))
    assert bits(buf) == bits(before)
    # out overlapping g (g lives inside out's memory), after a cached call with
    # the same strides but separate memory
    def strided_g():
        gbuf = np.zeros((16, 9), np.float32)
        gbuf[:, :1] = g
        return gbuf, gbuf[:, :1]                # g: (16, 1), row stride 9
    _, gsep = strided_g()
    for _ in range(2):
        wnkernels.weight_norm(tv, wrap(gsep), out=wrap(np.zeros_like(v)))
    gbuf, gin = strided_g()
    with pytest.raises(ValueError, match="out"):
        wnkernels.weight_norm(tv, wrap(gin), out=wrap(gbuf))
    assert bits(gbuf[:, :1]) == bits(g) and not gbuf[:, 1:].any()
    # interleaved but disjoint (ranges touch, no element shared): accepted
    both = np.zeros((16, 18), np.float32)
    both[:, ::2] = v
    for _ in range(2):
        w, _ = wnkernels.weight_norm(wrap(both[:, ::2]), tg, out=wrap(both[:, 1::2]))
        assert bits(np.ascontiguousarray(both[:, 1::2])) == bits(w_ref)
    if kind == "numpy":
        ro = np.zeros_like(v)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            wnkernels.weight_norm(v, g, out=ro)
        assert not ro.any()


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
    # rows that share elements without a zero stride (row stride 2 < 3 columns)
    buf = np.zeros(16, np.float32)
    rows = np.lib.stride_tricks.as_strided(buf, (4, 3), (8, 4))
    with pytest.raises(ValueError, match="overlaps itself"):
        wnkernels.weight_norm(np.ones((4, 3), np.float32), np.ones((4, 1), np.float32),
                              out=rows)
    assert not buf.any()
    # transposed and sliced outputs do not overlap themselves: accepted
    for ok in (np.zeros((3, 4), np.float32).T, np.zeros((4, 6), np.float32)[:, ::2],
               np.zeros((8, 3), np.float32)[::-2]):
        w, _ = wnkernels.weight_norm(np.ones((4, 3), np.float32),
                                     np.ones((4, 1), np.float32), out=ok)
        assert w is ok and np.allclose(ok, 1 / np.sqrt(3))


def test_pool_reuses_every_output_of_a_repeated_grouped_call():
    """A model repeats layer shapes: every output of a grouped call over 25 weights
    of one shape comes back from the pool on the next call (none is fresh)."""
    from wnkernels.cpu import _kernels
    wnkernels.empty_cache()
    vs = [np.ones((64, 1024), np.float32) for _ in range(25)]     # 256 KiB each
    gs = [np.ones(64, np.float32) for _ in range(25)]
    assert vs[0].nbytes >= _kernels.pool_info()["min_bytes"]
    first = {_kernels.block_address(w) for w, _ in wnkernels.weight_norm_many(vs, gs)}
    assert len(first) == 25 and None not in first
    info = _kernels.pool_info()            # the first call's outputs are all back
    assert info["free_blocks"] == 25 and info["free_bytes"] == 25 * vs[0].nbytes
    outs = wnkernels.weight_norm_many(vs, gs)
    assert {_kernels.block_address(w) for w, _ in outs} == first
    assert _kernels.pool_info()["free_blocks"] == 0
    del outs
    wnkernels.empty_cache()
    assert _kernels.pool_info()["free_bytes"] == 0


def test_pool_makes_room_for_new_sizes():
    """Under its cap on free bytes the pool frees the free blocks of the least
    recently used sizes, so a new size is still pooled (and reused), while a
    live result keeps its block."""
    from wnkernels.cpu import _kernels
    wnkernels.empty_cache()
    before = _kernels.set_pool_cap(3 << 20)
    try:
        def out(rows):
            return wnkernels.weight_norm(np.ones((rows, 1024), np.float32),
                                         np.full((rows, 1), 2.0, np.float32))[0]
        live = out(257)                              # 1 MiB + 4 KiB, stays in use
        live_addr = _kernels.block_address(live)
        for rows in (256, 258, 259):                 # dropped right away
            out(rows)
            assert _kernels.pool_info()["free_bytes"] <= 3 << 20
        # the third return went over the cap: the oldest size (256 rows) was freed
        assert _kernels.pool_info()["free_bytes"] == (258 + 259) * 4096
        a = out(512)                                 # 2 MiB
        addr = _kernels.block_address(a)
        del a                                        # pooled: both older sizes freed for it
        info = _kernels.pool_info()
        assert (info["free_bytes"], info["free_blocks"]) == (2 << 20, 1)
        b = out(512)
        assert _kernels.block_address(b) == addr     # reused
        assert addr != live_addr and _kernels.block_address(live) == live_addr
        np.testing.assert_array_equal(live, np.full((257, 1024), 2 / 32, np.float32))
        del b, live                                  # live's return frees b's block
        info = _kernels.pool_info()
        assert (info["free_bytes"], info["free_blocks"]) == (257 * 4096, 1)
        _kernels.set_pool_cap(0)                     # nothing kept: a return frees
        wnkernels.empty_cache()
        out(512)
        assert _kernels.pool_info()["free_bytes"] == 0
    finally:
        _kernels.set_pool_cap(before)
        wnkernels.empty_cache()
    with pytest.raises(ValueError, match="nbytes"):
        _kernels.set_pool_cap(-1)


def test_pool_takes_back_torch_outputs_freed_on_another_thread():
    """A torch output's DLPack deleter runs on whichever thread frees the
    tensor; it takes the GIL and returns the block, which is then reused."""
    torch = pytest.importorskip("torch")
    import threading
    from wnkernels.cpu import _kernels
    wnkernels.empty_cache()
    v, g = torch.ones(512, 1024), torch.ones(512, 1)
    box = [wnkernels.weight_norm(v, g)[0]]
    addr = box[0].data_ptr()
    t = threading.Thread(target=box.clear)
    t.start()
    t.join()
    assert _kernels.pool_info()["free_blocks"] == 1
    w, _ = wnkernels.weight_norm(v * 2, g)
    assert w.data_ptr() == addr
    torch.testing.assert_close(w, torch.full((512, 1024), 1 / 32))
    del w
    wnkernels.empty_cache()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim,cut", [
    ((2500, 130), 1, None),         # full panels and a stepped rest, 2 superchunks
    ((1500, 200), 1, None),         # a full panel, a half panel, a stepped rest
    ((3000, 64), -1, None),         # a half panel, blocks split over threads
    ((700, 37), 1, None),           # narrower than a panel: the step walk, one superchunk
    ((40, 9, 100), 2, 1),           # reduced dims that do not coalesce
    ((3, 1100, 2, 96), (2, 3), 2),  # two kept dims, several column blocks
    ((1103, 1500), 1, None),        # 2 superchunks, so one block wider than 1024 columns:
                                    # four steps per pass, three left at the end
])
@pytest.mark.parametrize("stream", [0, 1 << 40])
def test_column_panels_match_the_per_step_path(dtype, shape, dim, cut, stream):
    """A contiguous kept axis takes the register-held column panels; a kept
    stride of 2 takes the per-step column path.  Same values, same bits."""
    rng = np.random.default_rng(sum(shape))
    npdt = zoo.np_dtype(dtype)
    kept = dim if isinstance(dim, tuple) else (dim,)
    kept = tuple(k % len(shape) for k in kept)
    g = rng.standard_normal([n if i in kept else 1 for i, n in enumerate(shape)]).astype(npdt)
    wide = list(shape)
    wide[-1] *= 2
    if cut is not None:
        wide[cut] += 1
    base_v = rng.standard_normal(wide).astype(npdt)
    base_gw = rng.standard_normal(wide).astype(npdt)
    index = tuple(slice(1, None) if i == cut else slice(None) for i in range(len(shape) - 1))
    strided_v, strided_gw = base_v[index + (slice(None, None, 2),)], base_gw[index + (slice(None, None, 2),)]
    dense_v, dense_gw = strided_v.copy(), strided_gw.copy()
    if cut is not None:     # a slice: the reduced dims keep their gap
        dense_v = np.empty(wide, npdt)[index + (slice(0, shape[-1]),)]
        dense_gw = np.empty(wide, npdt)[index + (slice(0, shape[-1]),)]
        dense_v[...], dense_gw[...] = strided_v, strided_gw
    before = _cpu.get_stream_threshold()
    try:
        _cpu.set_stream_threshold(stream)
        res = []
        for v, gw in ((dense_v, dense_gw), (strided_v, strided_gw)):
            w, n = wnkernels.weight_norm(v, g, dim, eps=1e-3)
            gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, dim)
            scale, n2 = wnkernels.row_scale(v, g, dim, eps=1e-3)
            res.append([np.ascontiguousarray(a).view(np.uint8) for a in (w, n, gv, gg, scale, n2)])
    finally:
        _cpu.set_stream_threshold(before)
    for a, b in zip(*res):
        assert np.array_equal(a, b)


_BF16_EDGES = r"""
import hashlib, numpy as np, ml_dtypes, wnkernels
bf = ml_dtypes.bfloat16
rng = np.random.default_rng(3)
v = rng.standard_normal((64, 300)).astype(np.float32)
# rows whose results are float32 subnormals (AVX512_BF16 would flush them),
# cross the bfloat16 / float32 subnormal boundary, overflow, or are NaN / inf
g = np.array([2.0 ** -e for e in range(120, 152)] + [1.0, 3e38, np.inf, np.nan] * 8,
             np.float32).reshape(64, 1)
v[5, 7], v[9, 0], v[11, 3] = np.nan, np.inf, -np.inf
v, g = v.astype(bf), g.astype(bf)
gw = rng.standard_normal((64, 300)).astype(bf)
h = hashlib.sha256()
w, n = wnkernels.weight_norm(v, g)
gv, gg = wnkernels.weight_norm_backward(gw, v, g, n)
wt, nt = wnkernels.weight_norm(v.T.copy(), g.T.copy(), 1)      # column mode
gvt, ggt = wnkernels.weight_norm_backward(gw.T.copy(), v.T.copy(), g.T.copy(), nt, 1)
for a in (wt, gvt, ggt):
    h.update(np.ascontiguousarray(a).view(np.uint8).tobytes())
for a in (w, n, gv, gg):
    h.update(np.ascontiguousarray(a).view(np.uint8).tobytes())
print(h.hexdigest())
"""


def test_bfloat16_stores_agree_on_subnormals_and_specials():
    """The avx512bf16 variant's hardware bfloat16 conversion flushes float32
    subnormals; those lanes take the integer path, so every variant stores
    the same bits for subnormal, overflowing, NaN and infinite results."""
    best = _cpu.isa()
    variants = zoo.isa_variants(best)
    if len(variants) < 2:
        pytest.skip(f"this CPU runs only the {best} variant")
    digests = set()
    for isa in variants:
        out = subprocess.run([sys.executable, "-c", _BF16_EDGES],
                             env=dict(os.environ, WNKERNELS_ISA=isa),
                             capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


def test_kernels_built_without_wrapping_signed_arithmetic():
    """The C kernels are compiled with -fno-wrapv, undoing the -fwrapv that
    Python's own CFLAGS put first: under -fwrapv GCC cannot count the
    kernels' int64 loops (the row backward of 65536x64 float32 ran 1.7x
    slower).  Read from the DWARF producer strings, which record the options
    in effect; a build without debug information cannot be checked."""
    import shutil
    if shutil.which("readelf") is None:
        pytest.skip("needs readelf")
    out = subprocess.run(["readelf", "--debug-dump=info", _cpu.__file__],
                         capture_output=True, text=True).stdout
    producers = [line for line in out.splitlines() if "DW_AT_producer" in line]
    if not producers:
        pytest.skip("extension built without debug information")
    c_units = [p for p in producers if "GNU C" in p]
    assert c_units, producers[:3]
    for p in c_units:
        flags = p.split()
        assert "-fwrapv" not in flags, p
        assert "-ffp-contract=off" in flags, p
