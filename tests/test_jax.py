"""wnkernels.jax: the kernels as jax.custom_vjp functions (XLA FFI and pure_callback paths).

Checked against ``jax.grad`` of the formula written in jax.numpy, in float64
(``jax_enable_x64`` is switched on for this module only, and restored).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import ml_dtypes

import wnkernels
import wnkernels.jax as wj
from wnkernels._layout import normalize_dim

BACKENDS = ["ffi", "callback"]


@pytest.fixture(scope="module", autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "ffi" and not wj._ffi.available():
        pytest.skip(f"XLA FFI handler unavailable: {wj._ffi.reason()}")
    old = wj.get_backend()
    wj.set_backend(request.param)
    yield request.param
    wj.set_backend(old)


# ---------------------------------------------------------------- the formula

def _red(ndim, dim):
    kept = normalize_dim(dim, ndim)
    return kept, tuple(a for a in range(ndim) if a not in kept)


def ref_wn(v, g, dim=0, eps=0.0):
    kept, red = _red(v.ndim, dim)
    n = jnp.sqrt(jnp.sum(v * v, axis=red, keepdims=True) + eps)
    return jnp.reshape(g, n.shape) * v / n, n


def ref_rs(v, g, dim=0, eps=0.0):
    kept, red = _red(v.ndim, dim)
    n = jnp.sqrt(jnp.sum(v * v, axis=red, keepdims=True) + eps)
    return jnp.reshape(g, n.shape) / n


def _loss(f):
    # a non-trivial cotangent: d/dw of sum(sin(w) * c)
    def loss(v, g):
        y = f(v, g)
        c = jnp.cos(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape))
        return jnp.sum(jnp.sin(y) * c)
    return loss


def _data(shape, dim, gform="flat", seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    kept, _ = _red(len(shape), dim)
    v = rng.standard_normal(shape)
    if gform == "flat":
        gshape = tuple(shape[k] for k in kept)
    else:
        gshape = tuple(n if a in kept else 1 for a, n in enumerate(shape))
    g = rng.standard_normal(gshape) + 1.5
    return jnp.asarray(v.astype(dtype)), jnp.asarray(g.astype(dtype))


def close(a, b, rtol=1e-12, atol=1e-13):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=rtol, atol=atol)


CASES = [((6, 5), 0), ((5, 7), 1), ((3, 4, 5), 1), ((3, 4, 5), -1), ((3, 4, 5), None),
         ((3, 4, 5), (0, 2)), ((2, 3, 4, 5), (1, 3)), ((7,), 0), ((1, 1), 0),
         ((17, 3, 3), 0), ((4, 33), -2), ((9, 1, 13), 2)]


# ---------------------------------------------------------------- forward / grad

def _fwd_grad(f):
    """One jitted function: (w, norms, grad_v, grad_g) of f's w under _loss."""
    return jax.jit(lambda v, g: f(v, g) + jax.grad(_loss(lambda v, g: f(v, g)[0]), (0, 1))(v, g))


@pytest.mark.parametrize("shape,dim,gform", [c + ("flat",) for c in CASES] +
                         [c + ("keep",) for c in CASES[2:7]])
def test_forward_and_grad_match_formula(backend, shape, dim, gform):
    v, g = _data(shape, dim, gform)
    w, n, gv, gg = _fwd_grad(lambda v, g: wj.weight_norm(v, g, dim))(v, g)
    rw, rn, rv, rg = _fwd_grad(lambda v, g: ref_wn(v, g, dim))(v, g)
    assert w.shape == v.shape and w.dtype == jnp.float64
    assert n.shape == g.shape and n.dtype == jnp.float64
    assert gv.shape == v.shape and gg.shape == g.shape
    close(w, rw)
    close(n, jnp.reshape(rn, g.shape))
    close(gv, rv, rtol=1e-10, atol=1e-12)
    close(gg, rg, rtol=1e-10, atol=1e-12)
    # bitwise the library's own results, forward and backward
    w0, n0 = wnkernels.weight_norm(np.asarray(v), np.asarray(g), dim=dim)
    assert np.array_equal(np.asarray(w), w0) and np.array_equal(np.asarray(n), n0)


def test_grad_eager_equals_jit(backend):
    v, g = _data((5, 7), 1)
    f = jax.grad(_loss(lambda v, g: wj.weight_norm(v, g, 1)[0]), (0, 1))
    for a, b in zip(f(v, g), jax.jit(f)(v, g)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("shape,dim", CASES[2:7])
def test_row_scale_and_grad(backend, shape, dim):
    v, g = _data(shape, dim, "keep", seed=1)
    s, n, sv, sg = _fwd_grad(lambda v, g: wj.row_scale(v, g, dim))(v, g)
    rs, _, rv, rg = _fwd_grad(lambda v, g: (ref_rs(v, g, dim), 0 * g))(v, g)
    _, n_wn = wj.weight_norm(v, g, dim)
    assert s.shape == g.shape and n.shape == g.shape
    assert np.array_equal(np.asarray(n), np.asarray(n_wn))
    close(s, rs)
    close(sv, rv, rtol=1e-10, atol=1e-12)
    close(sg, rg, rtol=1e-10, atol=1e-12)


def test_backward_function_matches_library(backend):
    v, g = _data((8, 3, 5), 0, "keep")
    gw = jnp.asarray(np.random.default_rng(2).standard_normal(v.shape))
    w, n = wj.weight_norm(v, g)
    gv, gg = jax.jit(wj.weight_norm_backward)(gw, v, g, n)
    gv0, gg0 = wnkernels.weight_norm_backward(*(np.asarray(x) for x in (gw, v, g, n)))
    assert np.array_equal(np.asarray(gv), gv0) and np.array_equal(np.asarray(gg), gg0)


def test_value_and_grad_through_a_layer(backend):
    # y = x @ w.T with w = weight_norm(v, g): the usual training step
    v, g = _data((16, 9), 0, seed=3)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((5, 9)))

    def step(f):
        return jax.jit(jax.value_and_grad(
            lambda v, g: jnp.sum(jnp.tanh(x @ f(v, g).T)), (0, 1)))

    (l1, g1), (l2, g2) = (step(lambda v, g: wj.weight_norm(v, g)[0])(v, g),
                          step(lambda v, g: ref_wn(v, g)[0])(v, g))
    close(l1, l2)
    for a, b in zip(g1, g2):
        close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 1e-3, 2.5])
def test_eps(backend, eps):
    v, g = _data((6, 4), 0)
    v = v.at[1].set(0.0)
    w, n = wj.weight_norm(v, g, eps=eps)
    rw, rn = ref_wn(v, g, 0, eps)
    if eps == 0.0:
        # zero row: NaN exactly there (the contract, as PyTorch), nowhere else
        assert np.isnan(np.asarray(w[1])).all() and float(n[1]) == 0.0
        mask = np.ones(6, bool)
        mask[1] = False
        close(w[mask], rw[mask])
        assert np.isfinite(np.asarray(w[mask])).all()
    else:
        close(w, rw)
        close(n, jnp.reshape(rn, (6,)))
        _, _, gv, gg = _fwd_grad(lambda v, g: wj.weight_norm(v, g, eps=eps))(v, g)
        _, _, rv, rg = _fwd_grad(lambda v, g: ref_wn(v, g, 0, eps))(v, g)
        close(gv, rv, rtol=1e-10, atol=1e-12)
        close(gg, rg, rtol=1e-10, atol=1e-12)
        assert np.isfinite(np.asarray(gv)).all()


def test_norms_are_not_differentiable(backend):
    v, g = _data((4, 3), 0)
    gv, gg = jax.jit(jax.grad(lambda v, g: jnp.sum(wj.weight_norm(v, g)[1]), (0, 1)))(v, g)
    assert not np.asarray(gv).any() and not np.asarray(gg).any()


# ---------------------------------------------------------------- vmap

def test_vmap_is_one_batched_call(backend):
    V, G = _data((4, 6, 5), (0, 1), seed=5)
    f = jax.vmap(lambda v, g: wj.weight_norm(v, g)[0])
    close(f(V, G), jax.vmap(lambda v, g: ref_wn(v, g)[0])(V, G))
    # the batch is one kernel call with an extra kept axis, not a loop
    hlo = jax.jit(f).lower(V, G).as_text()
    if backend == "ffi":
        assert hlo.count("wnkernels_wn_run") == 1 and "while" not in hlo
    gl = jax.jit(jax.vmap(jax.grad(_loss(lambda v, g: wj.weight_norm(v, g)[0]), (0, 1))))(V, G)
    gr = jax.jit(jax.vmap(jax.grad(_loss(lambda v, g: ref_wn(v, g)[0]), (0, 1))))(V, G)
    for a, b in zip(gl, gr):
        close(a, b, rtol=1e-10, atol=1e-12)


def test_vmap_unbatched_and_nested(backend):
    V, G = _data((3, 6, 5), (0, 1), seed=6)
    g0 = G[0]
    w = jax.vmap(lambda v: wj.weight_norm(v, g0)[0])(V)         # g not mapped
    close(w, jax.vmap(lambda v: ref_wn(v, g0)[0])(V))
    w = jax.vmap(lambda g: wj.weight_norm(V[0], g)[0])(G)       # v not mapped
    close(w, jax.vmap(lambda g: ref_wn(V[0], g)[0])(G))
    V2 = jnp.stack([V, 2 * V])                                  # (2, 3, 6, 5), g in_axes None
    f = jax.vmap(jax.vmap(lambda v: wj.weight_norm(v, g0)[0]), in_axes=1)
    out = f(V2)
    assert out.shape == (3, 2, 6, 5)
    close(out, jax.vmap(jax.vmap(lambda v: ref_wn(v, g0)[0]), in_axes=1)(V2))
    s = jax.vmap(lambda v: wj.row_scale(v, g0)[0])(V)
    close(s, jax.vmap(lambda v: ref_rs(v, g0).reshape(g0.shape))(V))


# ---------------------------------------------------------------- dtypes

@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-6), (np.float16, 2e-3),
                                       (ml_dtypes.bfloat16, 2e-2)])
def test_low_precision(backend, dtype, tol):
    v, g = _data((12, 7), 0, "keep", seed=7, dtype=dtype)
    w, n = jax.jit(lambda v, g: wj.weight_norm(v, g))(v, g)
    assert w.dtype == jnp.dtype(dtype)
    assert n.dtype == jnp.float32
    w0, n0 = wnkernels.weight_norm(np.asarray(v), np.asarray(g))
    assert np.array_equal(np.asarray(w).view(np.uint8), w0.view(np.uint8))
    assert np.array_equal(np.asarray(n), n0)
    v64, g64 = v.astype(jnp.float64), g.astype(jnp.float64)
    close(w, ref_wn(v64, g64)[0], rtol=tol, atol=tol)
    s, ns = wj.row_scale(v, g)
    assert s.dtype == jnp.dtype(dtype) and np.array_equal(np.asarray(ns), np.asarray(n))
    gv, gg = jax.jit(jax.grad(_loss(lambda v, g: wj.weight_norm(v, g)[0].astype(jnp.float32)),
                              (0, 1)))(v, g)
    assert gv.dtype == jnp.dtype(dtype) and gg.dtype == jnp.dtype(dtype)
    rv, rg = jax.jit(jax.grad(_loss(lambda v, g: ref_wn(v, g)[0].astype(jnp.float32)),
                              (0, 1)))(v64, g64)
    close(gv, rv, rtol=20 * tol, atol=20 * tol)
    close(gg, rg, rtol=20 * tol, atol=20 * tol)


# ---------------------------------------------------------------- edge cases

@pytest.mark.parametrize("shape,dim", [((0, 5), 0), ((5, 0), 0), ((0,), None), ((3, 0, 2), 1)])
@pytest.mark.parametrize("eps", [0.0, 0.25])
def test_empty(backend, shape, dim, eps):
    v, g = _data(shape, dim)
    w, n = jax.jit(lambda v, g: wj.weight_norm(v, g, dim, eps=eps))(v, g)
    w0, n0 = wnkernels.weight_norm(np.asarray(v), np.asarray(g), dim=dim, eps=eps)
    assert w.shape == w0.shape and n.shape == n0.shape
    np.testing.assert_array_equal(np.asarray(n), n0)     # sqrt(eps) for zero-length rows


def test_odd_sizes_and_threads(backend):
    old = wnkernels.get_num_threads()
    try:
        v, g = _data((37, 129), 1, seed=8)
        wnkernels.set_num_threads(1)
        w1 = jax.jit(lambda v, g: wj.weight_norm(v, g, 1)[0])(v, g)
        wnkernels.set_num_threads(max(2, old))
        w2 = jax.jit(lambda v, g: wj.weight_norm(v, g, 1)[0] + 0)(v, g)
        assert np.array_equal(np.asarray(w1), np.asarray(w2))
        close(w1, ref_wn(v, g, 1)[0])
    finally:
        wnkernels.set_num_threads(old)


def test_concurrent_calls(backend):
    from concurrent.futures import ThreadPoolExecutor
    # float32: jax_enable_x64 (this module's fixture) is thread-local
    v, g = _data((64, 33), 0, seed=10, dtype=np.float32)
    f = jax.jit(lambda v, g: wj.weight_norm(v, g))
    want = f(v, g)
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda _: f(v, g), range(16)))
    for w, n in outs:
        assert np.array_equal(np.asarray(w), np.asarray(want[0]))
        assert np.array_equal(np.asarray(n), np.asarray(want[1]))


def test_large_rows_f32():
    v, g = _data((3, 1 << 18), 0, seed=9, dtype=np.float32)
    w, n = jax.jit(lambda v, g: wj.weight_norm(v, g))(v, g)
    _, rn = ref_wn(v.astype(jnp.float64), g.astype(jnp.float64))
    close(n, jnp.reshape(rn, (3,)), rtol=1e-6, atol=0)


# ---------------------------------------------------------------- bad input

def test_bad_input(backend):
    from numpy.exceptions import AxisError
    v, g = _data((6, 5), 0)
    with pytest.raises(ValueError, match="g: expected shape"):
        wj.weight_norm(v, g[:5])
    with pytest.raises(ValueError, match="g: expected shape"):
        jax.jit(lambda v, g: wj.weight_norm(v, g, 1))(v, g)
    with pytest.raises(AxisError):
        wj.weight_norm(v, g, 2)
    with pytest.raises(AxisError):
        wj.weight_norm(v, g, (0, 0))
    with pytest.raises(TypeError, match="dtype"):
        wj.weight_norm(v, g.astype(jnp.float32))
    with pytest.raises(TypeError, match="unsupported dtype"):
        wj.weight_norm(v.astype(jnp.int32), g.astype(jnp.int32))
    with pytest.raises(TypeError, match="unsupported dtype"):
        wj.weight_norm(v.astype(jnp.complex128), g.astype(jnp.complex128))
    with pytest.raises(TypeError, match="g: expected a JAX"):
        wj.weight_norm(v, 1.0)
    with pytest.raises(TypeError, match="v: expected a JAX"):
        wj.weight_norm([[1.0]], g)
    with pytest.raises(ValueError, match="eps"):
        wj.weight_norm(v, g, eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        wj.row_scale(v, g, eps=float("nan"))
    n = wj.weight_norm(v, g)[1]
    with pytest.raises(ValueError, match="grad_w"):
        wj.weight_norm_backward(v[:3], v, g, n)
    with pytest.raises(TypeError, match="norms"):
        wj.weight_norm_backward(v, v, g, n.astype(jnp.float32))


def test_set_backend_rejects_unknown():
    with pytest.raises(ValueError, match="backend"):
        wj.set_backend("gpu")


def test_numpy_inputs_accepted(backend):
    v, g = _data((6, 5), 0)
    w, _ = wj.weight_norm(np.asarray(v), np.asarray(g))
    assert isinstance(w, jax.Array)
    close(w, ref_wn(v, g)[0])


# ---------------------------------------------------------------- imports

def _run(code):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)


def test_import_wnkernels_does_not_import_jax():
    r = _run("import sys, wnkernels, numpy as np\n"
             "wnkernels.weight_norm(np.ones((2, 2)), np.ones(2))\n"
             "assert 'jax' not in sys.modules and 'numba' not in sys.modules, "
             "sorted(m for m in sys.modules if m.startswith(('jax', 'numba')))")
    assert r.returncode == 0, r.stderr


def test_import_without_jax_is_a_clear_error():
    r = _run("import sys\n"
             "class Block:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'jax' or name.startswith('jax.'):\n"
             "            raise ImportError('No module named ' + repr(name))\n"
             "sys.meta_path.insert(0, Block())\n"
             "try:\n"
             "    import wnkernels.jax\n"
             "except ImportError as e:\n"
             "    print(e)\n"
             "else:\n"
             "    raise SystemExit('imported')\n")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "pip install jax" in r.stdout
