"""Accuracy bounds of CONTRACT.md, measured against the float64 (extended) reference.

* float32 norms within 1e-6 relative of the float64 truth for rows of up to 2^24
  elements (PyTorch's CPU kernel misses by ~1e-5 at 2^20 and ~6.5e-4 at 2^24);
* float64 norms within a few ulps (here: 4).

The data are all-positive-mean rows (uniform in [0.5, 1.5)), the hard case for
a naive running sum: every addition adds to a large total.
"""

import numpy as np
import pytest

import wnkernels
from wnkernels import reference

F32_RTOL = 1e-6


def _rel_err(got, truth):
    return np.max(np.abs(np.asarray(got, np.float64) - truth) / truth)


@pytest.mark.parametrize("layout", ["row", "dim-last", "whole"])
def test_float32_norms_2_20(layout):
    rng = np.random.default_rng(20)
    n = 2**20
    if layout == "row":          # 3 contiguous rows, dim=0
        v = rng.uniform(0.5, 1.5, (3, n)).astype(np.float32)
        g, dim = np.ones((3, 1), np.float32), 0
    elif layout == "dim-last":   # kept axis innermost: rows run down the columns
        v = rng.uniform(0.5, 1.5, (n, 3)).astype(np.float32)
        g, dim = np.ones((1, 3), np.float32), 1
    else:                        # dim=None: the whole array one row
        v = rng.uniform(0.5, 1.5, (n,)).astype(np.float32)
        g, dim = np.ones((), np.float32), None
    _, truth = reference.weight_norm(v, g, dim)
    w, norms = wnkernels.weight_norm(v, g, dim)
    assert norms.dtype == np.float32
    err = _rel_err(norms, truth)
    assert err <= F32_RTOL, f"relative error {err:.3g} > {F32_RTOL}"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_norms_2_24(dtype):
    """One row of 2^24 elements (float32 accumulation for bfloat16 too)."""
    rng = np.random.default_rng(24)
    vals = rng.uniform(0.5, 1.5, 2**24).astype(np.float32)
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        vals = vals.astype(ml_dtypes.bfloat16)
    v = vals.reshape(1, -1)
    g = np.ones((1, 1), v.dtype)
    _, truth = reference.weight_norm(v, g, 0)
    _, norms = wnkernels.weight_norm(v, g, 0)
    assert norms.dtype == np.float32
    err = _rel_err(norms, truth)
    assert err <= F32_RTOL, f"relative error {err:.3g} > {F32_RTOL}"
    # the backward's dot product is accumulated the same way: grad_g = sum(grad_w v)/norm
    gw = np.ones_like(v)
    _, grad_g = wnkernels.weight_norm_backward(gw, v, g, truth.astype(np.float32), 0)
    _, gg_truth = reference.weight_norm_backward(gw, v, g, truth.astype(np.float32), 0)
    err = _rel_err(grad_g, gg_truth)
    tol = F32_RTOL + (2.0**-7 if dtype == "bfloat16" else 0)  # bf16 grad_g is rounded to bf16
    assert err <= tol, f"grad_g relative error {err:.3g} > {tol}"


@pytest.mark.parametrize("shape, dim", [((7, 1000), 0), ((1000, 7), 1), ((7, 100003), 0),
                                        ((100003, 5), -1), ((30, 40, 50), 1), ((3, 1001), None)])
def test_float64_norms_within_4_ulps(shape, dim):
    rng = np.random.default_rng(64)
    v = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    g = np.ones(reference.g_shapes(shape, dim)[0])
    _, truth = reference.weight_norm(v, g, dim)
    _, norms = wnkernels.weight_norm(v, g, dim)
    ulps = np.abs(norms - truth) / np.spacing(truth)
    assert ulps.max() <= 4, f"{ulps.max():.1f} ulps"


@pytest.mark.parametrize("shape, dim", [((7, 1000), 0), ((1000, 7), 1), ((30, 40, 50), 1)])
def test_float64_w_within_a_few_ulps(shape, dim):
    """w = v * (g / norm): the norm's <= 4 ulps plus two roundings."""
    rng = np.random.default_rng(65)
    v = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    g = rng.uniform(0.5, 2.0, reference.g_shapes(shape, dim)[0])
    w_truth, _ = reference.weight_norm(v, g, dim)
    w, _ = wnkernels.weight_norm(v, g, dim)
    ulps = np.abs(w - w_truth) / np.spacing(np.abs(w_truth))
    assert ulps.max() <= 6, f"{ulps.max():.1f} ulps"
