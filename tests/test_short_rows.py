"""Short rows (the CPU's WN_MODE_SHORT: contiguous rows of at most 64 elements,
e.g. DAC's 1024x8x1 quantizer projections, 8192x8, 65536x64).

The short-row strategy forms each row's 32 lanes in registers and reduces
eight rows' lane trees at once; it must give exactly the bits of the generic
row path (same lanes, same order), for every dtype, row length, row count
(including counts that are not a multiple of the batch), layout, thread
count and instruction-set variant, alone and in a grouped call -- and be
within the accuracy bounds of the float64 reference and agree with PyTorch.
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import wnkernels
import zoo
from wnkernels.cpu import _kernels as _cpu

DTYPES = list(zoo.DTYPES)
ROWLENS = list(range(1, 71))          # 1..64 take the short path, 65..70 the generic one
NROWS = [1, 7, 33, 70]                # single rows, partial batches and groups of 8


def _data(rng, shape, dtype, specials=True):
    v = zoo.random_values(rng, shape, dtype)
    gw = zoo.random_values(rng, shape, dtype, "grad")
    if specials and v.ndim >= 2 and v.shape[0] >= 4 and v.shape[-1] >= 1:
        v[1] = 0                                    # a zero row: NaN (eps=0)
        v[2, ..., -1] = np.inf                      # inf in a row's tail
        v[3, ..., 0] = np.nan                       # NaN at a row's start
        gw[1] = -0.0
        v[0] = -np.abs(v[0])
        gw[0] = np.abs(gw[0]) * 0                   # products of -0: grad_g's sign
    return v, gw


def _generic_view(values):
    """The same rows with kept axes the layout cannot merge (the generic row
    path): a (A, B, n) slice of an (A, B + 1, n) array, dim=(0, 1)."""
    rows, n = values.shape
    a = 1 if rows % 2 else 2
    b = rows // a
    big = np.zeros((a, b + 1, n), values.dtype)
    big[:, :b, :] = values.reshape(a, b, n)
    return big[:, :b, :]


def _results(v, g, gw, dim, eps=0.0):
    w, n = wnkernels.weight_norm(v, g, dim, eps=eps)
    gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, dim)
    return w, n, gv, gg


def _flatbits(arrays):
    return [zoo.bits(np.ascontiguousarray(a).reshape(-1)) for a in arrays]


@pytest.mark.parametrize("dtype", DTYPES)
def test_same_bits_as_the_generic_row_path(dtype):
    """Every row length 1..70 and row count: the short path (contiguous rows)
    and the generic path (the same rows behind unmergeable kept axes) agree
    bit for bit, specials included."""
    rng = np.random.default_rng([1, DTYPES.index(dtype)])
    for n in ROWLENS:
        for rows in (7, 70):
            v, gw = _data(rng, (rows, n), dtype)
            g = zoo.random_values(rng, (rows, 1), dtype, "g")
            with np.errstate(all="ignore"):
                short = _results(v, g, gw, 0, eps=0.0) + _results(v, g, gw, 0, eps=0.25)
                vg, gwg = _generic_view(v), _generic_view(gw)
                gg_ = g.reshape(vg.shape[0], vg.shape[1], 1)
                generic = _results(vg, gg_, gwg, (0, 1), 0.0) + _results(vg, gg_, gwg, (0, 1), 0.25)
            assert _flatbits(short) == _flatbits(generic), (dtype, n, rows)


@pytest.mark.parametrize("dtype", DTYPES)
def test_against_reference_and_torch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng([2, DTYPES.index(dtype)])
    for n in ROWLENS:
        rows = NROWS[n % len(NROWS)]
        v, gw = _data(rng, (rows, n, 1), dtype, specials=False)
        g = zoo.random_values(rng, (rows, 1, 1), dtype, "g")
        w, nrm = wnkernels.weight_norm(v, g, 0)
        assert zoo.check_forward(w, nrm, v, g, 0) is None, (n, rows)
        gv, gg = wnkernels.weight_norm_backward(gw, v, g, nrm, 0)
        assert zoo.check_backward(gv, gg, gw, v, g, nrm, 0) is None, (n, rows)
        if dtype in ("float32", "float64"):
            tv, tg, tgw = (torch.from_numpy(np.ascontiguousarray(a)) for a in (v, g, gw))
            tw, tn = torch._weight_norm_interface(tv, tg, 0)
            ww, wn_ = wnkernels.weight_norm(tv, tg, 0)
            tol = 1e-5 if dtype == "float32" else 1e-12
            np.testing.assert_allclose(ww.numpy(), tw.numpy(), rtol=tol, atol=tol)
            np.testing.assert_allclose(wn_.numpy(), tn.numpy(), rtol=tol, atol=tol)
            tgv, tgg = torch.ops.aten._weight_norm_interface_backward(tgw, tv, tg, tn, 0)
            gv2, gg2 = wnkernels.weight_norm_backward(tgw, tv, tg, tn, 0)
            np.testing.assert_allclose(gv2.numpy(), tgv.numpy(), rtol=tol, atol=10 * tol)
            np.testing.assert_allclose(gg2.numpy(), tgg.numpy(), rtol=tol, atol=10 * tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_and_transposed_layouts(dtype):
    """Rows at a wider stride, reversed rows, reversed elements, a transposed
    weight and out= in place: each against the contiguous call's bits (same
    rows, same order) or, where the element order differs, the reference."""
    rng = np.random.default_rng([3, DTYPES.index(dtype)])
    for n in (1, 3, 8, 16, 31, 33, 64):
        rows = 37
        v, gw = _data(rng, (rows, n), dtype)
        g = zoo.random_values(rng, (rows, 1), dtype, "g")
        with np.errstate(all="ignore"):
            base = _flatbits(_results(v, g, gw, 0))
            # rows at a wider stride (and g / grad_w at their own strides)
            wide = np.zeros((rows, n + 5), v.dtype)
            wide[:, 2:n + 2] = v
            wgw = np.zeros((rows, n + 3), v.dtype)
            wgw[:, :n] = gw
            gs = np.zeros((rows, 3), v.dtype)
            gs[:, 1] = g[:, 0]
            assert _flatbits(_results(wide[:, 2:n + 2], gs[:, 1:2], wgw[:, :n], 0)) == base
            # rows in reverse order: the same rows, results reversed
            r = _results(v[::-1], g[::-1], gw[::-1], 0)
            assert _flatbits([a[::-1] for a in r]) == base
            # out= v itself
            vv = v.copy()
            w, nrm = wnkernels.weight_norm(vv, g, 0, out=vv)
            assert w is vv or np.shares_memory(w, vv)
            assert _flatbits([vv, nrm]) == base[:2]
        # reversed elements and a transposed (column-mode) weight: the reference
        vf = zoo.random_values(rng, (rows, n), dtype)
        for vx, gx, dim in ((vf[:, ::-1], g, 0), (vf.T, g.T, 1),
                            (np.asfortranarray(vf), g, 0)):
            w, nrm = wnkernels.weight_norm(vx, gx, dim)
            assert zoo.check_forward(w, nrm, vx, gx, dim) is None, (n, dim)
            gwx = zoo.random_values(rng, vx.shape, dtype, "grad")
            gv, gg = wnkernels.weight_norm_backward(gwx, vx, gx, nrm, dim)
            assert zoo.check_backward(gv, gg, gwx, vx, gx, nrm, dim) is None, (n, dim)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_bitwise_identical_for_every_thread_count(dtype):
    rng = np.random.default_rng([4, DTYPES.index(dtype)])
    cases = []
    for rows, n in ((8192, 8), (4097, 5), (3000, 64), (1025, 17), (20000, 1)):
        v, gw = _data(rng, (rows, n), dtype)
        cases.append((v, zoo.random_values(rng, (rows, 1), dtype, "g"), gw))
    before = wnkernels.get_num_threads()
    try:
        seen = None
        for nth in (1, 2, 3, 4):
            wnkernels.set_num_threads(nth)
            with np.errstate(all="ignore"):
                got = [_flatbits(_results(v, g, gw, 0, eps=1e-3)) for v, g, gw in cases]
            if seen is None:
                seen = got
            assert got == seen, nth
    finally:
        wnkernels.set_num_threads(before)


def test_grouped_calls_equal_single_calls():
    rng = np.random.default_rng(5)
    for dtype in DTYPES:
        shapes = [(1024, 8, 1), (33, 64), (7, 3), (100, 65), (5, 8, 2)]
        vs, gs, gws = [], [], []
        for s in shapes:
            v, gw = _data(rng, s, dtype)
            vs.append(v)
            gws.append(gw)
            gs.append(zoo.random_values(rng, (s[0],) + (1,) * (len(s) - 1), dtype, "g"))
        with np.errstate(all="ignore"):
            many = wnkernels.weight_norm_many(vs, gs, 0, eps=0.5)
            single = [wnkernels.weight_norm(v, g, 0, eps=0.5) for v, g in zip(vs, gs)]
            assert [_flatbits(p) for p in many] == [_flatbits(p) for p in single]
            norms = [p[1] for p in single]
            bmany = wnkernels.weight_norm_backward_many(gws, vs, gs, norms, 0)
            bsingle = [wnkernels.weight_norm_backward(gw, v, g, n, 0)
                       for gw, v, g, n in zip(gws, vs, gs, norms)]
            assert [_flatbits(p) for p in bmany] == [_flatbits(p) for p in bsingle]


def test_row_scale_on_short_rows():
    rng = np.random.default_rng(6)
    for dtype in DTYPES:
        for n in (1, 8, 40, 64):
            v = zoo.random_values(rng, (70, n), dtype)
            g = zoo.random_values(rng, (70, 1), dtype, "g")
            scale, nrm = wnkernels.row_scale(v, g, 0)
            w, n2 = wnkernels.weight_norm(v, g, 0)
            assert zoo.bits(nrm) == zoo.bits(n2)
            ref = zoo.as_f64(g) / zoo.as_f64(nrm)
            np.testing.assert_allclose(zoo.as_f64(scale), ref, rtol=2 * zoo.EPS[dtype])


def test_empty_and_nan_rows_stay_isolated():
    for dtype in DTYPES:
        v = np.ones((40, 8), zoo.np_dtype(dtype))
        v[5, 3] = np.nan
        g = np.ones((40, 1), v.dtype)
        w, n = wnkernels.weight_norm(v, g, 0)
        wf, nf = zoo.as_f64(w), zoo.as_f64(n)
        assert np.isnan(wf[5]).all() and np.isnan(nf[5])
        rest = np.delete(np.arange(40), 5)
        assert np.isfinite(wf[rest]).all() and np.allclose(nf[rest], np.sqrt(8))
        for shape in ((0, 8), (5, 0)):
            e = np.ones(shape, v.dtype)
            w, n = wnkernels.weight_norm(e, np.ones((shape[0], 1), v.dtype), 0)
            assert w.shape == shape and n.shape == (shape[0], 1)


_DIGEST = r"""
import hashlib, sys
import numpy as np, wnkernels, ml_dtypes
h = hashlib.sha256()
for dt in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64):
    rng = np.random.default_rng(9)
    for n in range(1, 70, 3):
        v = rng.standard_normal((45, n)).astype(dt)
        v[4, 0] = np.inf
        g = (rng.random((45, 1)) + 0.5).astype(dt)
        gw = rng.standard_normal((45, n)).astype(dt)
        with np.errstate(all="ignore"):
            w, nr = wnkernels.weight_norm(v, g, 0, eps=1e-3)
            gv, gg = wnkernels.weight_norm_backward(gw, v, g, nr, 0)
            w2, _ = wnkernels.weight_norm(v[::2], g[::2], 0)
        for a in (w, nr, gv, gg, w2):
            h.update(np.ascontiguousarray(a).view(np.uint8).tobytes())
print(h.hexdigest())
"""


def _digest_under(isa):
    env = dict(os.environ, WNKERNELS_ISA=isa)
    run = subprocess.run([sys.executable, "-c", _DIGEST], env=env,
                         capture_output=True, text=True, check=True)
    return run.stdout.strip()


def test_isa_variants_agree_bitwise():
    """AVX-512, AVX2 and baseline: the same bits on short rows (each variant
    at or below the one this CPU runs)."""
    below = zoo.isa_variants(_cpu.isa())
    if len(below) < 2:
        pytest.skip("this CPU runs only the baseline variant")
    assert len({_digest_under(isa) for isa in below}) == 1
