"""weight_norm_many / weight_norm_backward_many: a whole set of weights in one call.

Any mix of shapes, ranks, layouts and dims of one dtype and kind; results
bitwise equal to the per-tensor calls (whatever the thread count: the set is
shared out by bytes, each row's arithmetic unchanged); a bad item raises the
per-tensor call's exception type naming the item's index, and nothing is
written; cached like single calls.
"""

import numpy as np
import pytest

import wnkernels
import zoo
from wnkernels import _dispatch

# A model-like set: conv weights (dim=0), a ConvTranspose normalized over dim=1,
# short rows (1024 x 8), one huge row, a dim=-1 matrix, strided and transposed
# views, a whole-array norm, an empty weight, a tuple dim.
SET = [((64, 1, 7), 0, "C"), ((128, 64, 7), 0, "C"), ((256, 128, 7), 0, "C"),
       ((1024, 8, 1), 0, "C"), ((16, 8, 4), 1, "C"), ((3, 200001), 0, "C"),
       ((300, 37), -1, "C"), ((33, 9, 5), 0, "strided"), ((40, 30), 0, "transposed"),
       ((17, 19), None, "C"), ((0, 5), 0, "C"), ((6, 4, 5), (0, 2), "mixed")]


def _arrays(rng, dtype, kind="numpy"):
    vs, gs, gws = [], [], []
    for shape, dim, lay in SET:
        v = zoo.layout(zoo.random_values(rng, shape, dtype), lay, rng)
        g = zoo.g_for(rng, shape, dim, dtype, 1)
        gw = zoo.random_values(rng, shape, dtype, "grad")
        if kind == "torch":
            import torch
            v, g, gw = (torch.from_numpy(np.ascontiguousarray(a.astype(np.float64)))
                        .to(zoo.torch_dtype(dtype)) for a in (v, g, gw))
        vs.append(v)
        gs.append(g)
        gws.append(gw)
    return vs, gs, gws, [d for _, d, _ in SET]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", zoo.DTYPES)
def test_bitwise_the_single_calls(dtype, threads, rng):
    wnkernels.set_num_threads(threads)
    vs, gs, gws, dims = _arrays(rng, dtype)
    fw = wnkernels.weight_norm_many(vs, gs, dims, eps=1e-4)
    bw = wnkernels.weight_norm_backward_many(gws, vs, gs, [n for _, n in fw], dims)
    assert len(fw) == len(bw) == len(SET)
    for k, (shape, dim, _) in enumerate(SET):
        w, n = wnkernels.weight_norm(vs[k], gs[k], dim, eps=1e-4)
        gv, gg = wnkernels.weight_norm_backward(gws[k], vs[k], gs[k], n, dim)
        for got, ref in ((fw[k][0], w), (fw[k][1], n), (bw[k][0], gv), (bw[k][1], gg)):
            assert type(got) is type(ref) and got.shape == ref.shape, (k, shape)
            assert got.dtype == ref.dtype and got.strides == ref.strides, (k, shape)
            assert zoo.bits(got) == zoo.bits(ref), (k, shape)
        assert zoo.check_forward(w, n, vs[k], gs[k], dim, 1e-4, dtype) is None


def test_torch_tensors(torch, rng):
    vs, gs, gws, dims = _arrays(rng, "bfloat16", "torch")
    fw = wnkernels.weight_norm_many(vs, gs, dims)
    for k, (_, dim, _) in enumerate(SET):
        w, n = wnkernels.weight_norm(vs[k], gs[k], dim)
        assert type(fw[k][0]) is torch.Tensor and fw[k][0].dtype == torch.bfloat16
        assert zoo.bits(fw[k][0]) == zoo.bits(w) and zoo.bits(fw[k][1]) == zoo.bits(n)


def test_one_dim_for_all(rng):
    vs = [zoo.random_values(rng, s, "float32") for s in [(4, 5), (6, 2, 3), (1, 7)]]
    gs = [zoo.g_for(rng, v.shape, 0, "float32") for v in vs]
    for (w, n), v, g in zip(wnkernels.weight_norm_many(vs, gs), vs, gs):
        w1, n1 = wnkernels.weight_norm(v, g)
        assert zoo.bits(w) == zoo.bits(w1) and zoo.bits(n) == zoo.bits(n1)
    g_last = [zoo.g_for(rng, v.shape, -1, "float32") for v in vs]
    for (w, n), v, g in zip(wnkernels.weight_norm_many(vs, g_last, -1), vs, g_last):
        assert zoo.bits(w) == zoo.bits(wnkernels.weight_norm(v, g, -1)[0])


def test_empty_group():
    assert wnkernels.weight_norm_many([], []) == []
    assert wnkernels.weight_norm_backward_many([], [], [], []) == []


def test_cached_like_single_calls(rng):
    vs = [zoo.random_values(rng, s, "float64") for s in [(4, 5), (6, 3)]]
    gs = [zoo.g_for(rng, v.shape, 0, "float64") for v in vs]
    _dispatch.clear_plans()
    wnkernels.weight_norm_many(vs, gs)
    assert _dispatch.cached_plans() == 1
    r = wnkernels.weight_norm_many([v.copy() for v in vs], [g.copy() for g in gs])
    assert _dispatch.cached_plans() == 1          # the same plan ran
    assert zoo.bits(r[1][0]) == zoo.bits(wnkernels.weight_norm(vs[1], gs[1])[0])


def _written(*arrays):
    return zoo.snapshot(*arrays)


@pytest.mark.parametrize("bad,exc,match", [
    (lambda vs, gs: gs.__setitem__(2, np.ones((9, 1))), ValueError, r"item 2 \(vs\[2\], gs\[2\]\).*g"),
    (lambda vs, gs: vs.__setitem__(1, vs[1].astype(np.float32)), TypeError, r"item 1"),
    (lambda vs, gs: vs.__setitem__(3, [1.0, 2.0]), TypeError, r"item 3.*array"),
])
def test_a_bad_item_is_named_and_nothing_is_written(bad, exc, match, rng):
    vs = [zoo.random_values(rng, (4 + k, 3), "float64") for k in range(5)]
    gs = [zoo.g_for(rng, v.shape, 0, "float64") for v in vs]
    bad(vs, gs)
    before = _written(*[a for a in vs + gs if isinstance(a, np.ndarray)])
    with pytest.raises(exc, match=match):
        wnkernels.weight_norm_many(vs, gs)
    assert _written(*[a for a in vs + gs if isinstance(a, np.ndarray)]) == before


def test_bad_dims_and_lengths(rng):
    vs = [zoo.random_values(rng, (4, 3), "float64") for _ in range(3)]
    gs = [zoo.g_for(rng, v.shape, 0, "float64") for v in vs]
    with pytest.raises(np.exceptions.AxisError, match="item 1"):
        wnkernels.weight_norm_many(vs, gs, [0, 5, 0])
    with pytest.raises(ValueError, match="dim is a list of 2 for 3 items"):
        wnkernels.weight_norm_many(vs, gs, [0, 0])
    with pytest.raises(ValueError, match="differ in length"):
        wnkernels.weight_norm_many(vs, gs[:2])
    with pytest.raises(ValueError, match="eps"):
        wnkernels.weight_norm_many(vs, gs, eps=-1.0)
    with pytest.raises(TypeError, match="item 1.*one dtype"):
        wnkernels.weight_norm_many([vs[0], vs[1].astype(np.float32)],
                                   [gs[0], gs[1].astype(np.float32)])


def test_mixed_kinds_are_refused(torch, rng):
    v = zoo.random_values(rng, (4, 3), "float32")
    g = zoo.g_for(rng, v.shape, 0, "float32")
    with pytest.raises(TypeError, match="item 1"):
        wnkernels.weight_norm_many([v, torch.from_numpy(v)], [g, torch.from_numpy(g)])
