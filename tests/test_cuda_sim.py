"""The CUDA kernels under numba-cuda's simulator (no GPU needed).

The simulator must be switched on before ``numba.cuda`` is first imported, and
switching it on for the whole pytest process would turn real-GPU tests into
simulator runs.  So:

* ``NUMBA_ENABLE_CUDASIM=1 pytest tests/test_cuda_sim.py`` runs every test here
  in-process, on simulator "device arrays" (``numba.cuda.to_device``);
* a plain ``pytest`` run executes ``test_simulator_suite``, which runs this file
  in a subprocess with the simulator on, and skips the in-process tests.

The simulator runs one Python thread per CUDA thread and has no warp shuffles:
blocks are 8 threads (``wnkernels.cuda.configure``), shapes tiny, and the
shared-memory reductions are the ones exercised (the shuffle variants are
compiled to PTX by test_cuda_ptx.py).  Results are checked against the float64
reference with the tolerances of tests/zoo.py.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import zoo

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"
HAVE_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None

# In a plain run these are deselected by conftest.py (they run inside
# test_simulator_suite's subprocess instead), not skipped.
sim_only = pytest.mark.simulator

if not HAVE_NUMBA_CUDA:
    pytest.skip("numba-cuda is not installed (pip install 'numba-cuda[cu13]')",
                allow_module_level=True)



@pytest.mark.simulator_wrapper
def test_simulator_suite():
    """This file, in a subprocess with NUMBA_ENABLE_CUDASIM=1 (the simulator
    must be on before numba.cuda is imported).  Runs from tests/ so the
    installed wnkernels is the one tested."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "no:randomly", os.path.abspath(__file__)],
        cwd=os.path.dirname(os.path.abspath(__file__)), env=env,
        capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout


if SIM:
    from numba import cuda
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    import wnkernels.cuda as wc
    from wnkernels.cuda import _launch
    from wnkernels._layout import make_layout, normalize_dim
    from wnkernels._frontend import _shift
    from wnkernels import reference

DTYPES = zoo.DTYPES
STRATEGIES = ("block", "group", "cols", "split")


# ---------------------------------------------------------------- helpers

def to_sim(x: np.ndarray):
    """A simulator device array equal to ``x`` with the same strides (its own copy
    of the memory that ``x`` spans, gaps included)."""
    x = np.asarray(x)
    lo = hi = 0
    for n, s in zip(x.shape, x.strides):
        if n == 0:
            lo = hi = 0
            break
        lo += min(0, (n - 1) * s)
        hi += max(0, (n - 1) * s)
    nbytes = hi - lo + x.itemsize if x.size else 0
    ptr = x.__array_interface__["data"][0]
    if nbytes:
        region = np.frombuffer((ctypes.c_char * nbytes).from_address(ptr + lo),
                               np.uint8).copy()
        view = np.ndarray(x.shape, x.dtype, buffer=region, offset=-lo,
                          strides=x.strides)
    else:
        view = np.empty(x.shape, x.dtype)
    if not x.flags.writeable:
        view.setflags(write=False)
    return FakeCUDAArray(view)


def host(d) -> np.ndarray:
    return np.array(d._ary)


NORM = {"float16": "float32", "bfloat16": "float32", "float32": "float32",
        "float64": "float64"}


def run_forward(v, g, dim, eps=0.0, strategy=None, w=None):
    """wnkernels.cuda.forward on host arrays v (any strides) and flat g; host results."""
    vd, gd = to_sim(v), to_sim(np.ascontiguousarray(g).reshape(-1))
    vi, gi = wc.info(vd), wc.info(gd)
    wd = wc.empty(vi, vi.shape, vi.dtype) if w is None else w
    wi = wc.info(wd)
    lay = make_layout(vi.shape, normalize_dim(dim, len(vi.shape)), [vi.strides, wi.strides])
    nd = wc.empty(vi, (lay.nrows,), NORM[vi.dtype])
    wc.forward(lay, _shift(vi, lay, 0), gi, 1 if lay.nrows > 1 else 0,
               _shift(wi, lay, 1), wc.info(nd), eps, strategy=strategy)
    return host(wd), host(nd)


def run_backward(gw, v, g, norms, dim, strategy=None):
    gwd, vd = to_sim(gw), to_sim(v)
    gd = to_sim(np.ascontiguousarray(g).reshape(-1))
    nd = to_sim(np.ascontiguousarray(norms).reshape(-1))
    vi, gwi, gi, ni = wc.info(vd), wc.info(gwd), wc.info(gd), wc.info(nd)
    gvd = wc.empty(vi, vi.shape, vi.dtype)
    gvi = wc.info(gvd)
    lay = make_layout(vi.shape, normalize_dim(dim, len(vi.shape)),
                      [vi.strides, gwi.strides, gvi.strides])
    ggd = wc.empty(vi, (lay.nrows,), vi.dtype)
    st = 1 if lay.nrows > 1 else 0
    wc.backward(lay, _shift(gwi, lay, 1), _shift(vi, lay, 0), gi, st, ni, st,
                _shift(gvi, lay, 2), wc.info(ggd), strategy=strategy)
    return host(gvd), host(ggd)


def flat_g_shape(shape, dim):
    return reference.g_shapes(shape, dim)[1] or (1,)


def check_both(v, dim, dtype, strategy, rng, eps=0.0):
    g = zoo.random_values(rng, flat_g_shape(v.shape, dim), dtype, "g")
    w, n = run_forward(v, g, dim, eps, strategy)
    n = n.reshape(g.shape)
    err = zoo.check_forward(w, n, v, g, dim, eps, dtype)
    assert err is None, f"forward [{strategy}] {err}"
    gw = zoo.random_values(rng, v.shape, dtype, "grad")
    gv, gg = run_backward(gw, v, g, n, dim, strategy)
    err = zoo.check_backward(gv, gg.reshape(g.shape), gw, v, g, n, dim, dtype)
    assert err is None, f"backward [{strategy}] {err}"


@pytest.fixture(autouse=True)
def _small_blocks():
    """Simulator-sized launches: 8-thread blocks, 2 'SMs'; restored afterwards."""
    if not SIM:
        yield
        return
    old = wc.configure(block=8, cols_tx=4, sm_count=2)
    yield
    wc.configure(**old)


# ---------------------------------------------------------------- interop

@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_info_and_empty(dtype):
    base = zoo.random_values(np.random.default_rng(1), (6, 10), dtype)
    d = to_sim(base)[1:5, ::-3]
    assert wc.is_gpu_array(d)
    i = wc.info(d)
    assert i.kind == "numba" and i.device == ("cuda", 0)
    assert i.dtype == dtype and i.itemsize == 2 + 2 * (dtype == "float32") + 6 * (dtype == "float64")
    assert i.shape == (4, 4) and i.strides == (10, -3)
    assert i.ptr == d._ary.__array_interface__["data"][0]
    e = wc.empty(i, (3, 4), dtype)
    ei = wc.info(e)
    assert ei.shape == (3, 4) and ei.strides == (4, 1) and ei.dtype == dtype
    f = wc.info(wc.empty(i, (3, 4, 5), dtype, strides=(1, 15, 3)))
    assert f.strides == (1, 15, 3)


@sim_only
def test_is_gpu_array_rejects_cpu_objects():
    assert not wc.is_gpu_array(np.zeros(3))
    assert not wc.is_gpu_array([1.0, 2.0])
    assert not wc.is_gpu_array(3.0)
    torch = pytest.importorskip("torch")
    assert not wc.is_gpu_array(torch.zeros(3))


def test_is_gpu_array_is_cheap_for_numpy():
    """No numba (or torch) import for a NumPy array."""
    code = ("import sys, numpy as np\n"
            "import wnkernels.cuda as wc\n"
            "before = {m for m in ('numba', 'torch', 'cupy') if m in sys.modules}\n"
            "assert not wc.is_gpu_array(np.zeros(3))\n"
            "after = {m for m in ('numba', 'torch', 'cupy') if m in sys.modules}\n"
            "assert after == before, after - before\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_dlpack_parser_reads_strides_and_dtypes():
    """The DLPack capsule reader (used for CUDA DLPack objects) on CPU producers."""
    from wnkernels.cuda._interop import _dlpack_info
    a = np.arange(60, dtype=np.float32).reshape(3, 4, 5)[:, ::2, 1:]
    i = _dlpack_info(a)
    assert i.kind == "dlpack" and i.dtype == "float32" and i.itemsize == 4
    assert i.shape == a.shape and i.strides == tuple(s // 4 for s in a.strides)
    assert i.ptr == a.__array_interface__["data"][0]
    torch = pytest.importorskip("torch")
    t = torch.zeros(4, 6, dtype=torch.bfloat16)[1:, ::3]
    j = _dlpack_info(t)
    assert j.dtype == "bfloat16" and j.shape == (3, 2) and j.strides == (6, 3)
    assert j.ptr == t.data_ptr()


def test_cai_parser():
    from wnkernels.cuda._interop import _cai_info

    class Fake:
        __cuda_array_interface__ = {"shape": (3, 4), "strides": None, "typestr": "<f2",
                                    "data": (0, True), "version": 3}
    i = _cai_info(Fake())
    assert (i.kind, i.dtype, i.shape, i.strides, i.readonly) == \
        ("cai", "float16", (3, 4), (4, 1), True)


# ---------------------------------------------------------------- every strategy, every dtype

@sim_only
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_every_strategy(dtype, strategy):
    rng = np.random.default_rng([DTYPES.index(dtype), STRATEGIES.index(strategy)])
    v = zoo.random_values(rng, (5, 37), dtype)
    check_both(v, 0, dtype, strategy, rng)


# (shape, dim, layout kind): kept / reduced dims of several counts, flipped,
# stepped and permuted memory.
LAYOUT_CASES = [
    ((5, 3, 4), 1, "C"),            # kept middle axis: 2 reduced dims
    ((4, 3, 5, 2), (0, 2), "C"),    # 2 kept dims
    ((3, 11), None, "C"),           # one row
    ((9, 6), -1, "C"),              # kept axis contiguous (cols)
    ((6, 7), 0, "reversed"),        # negative strides (flipped reduced axis)
    ((4, 5, 3), 0, "strided"),      # gaps (NaN filled) in every axis
    ((3, 4, 5), 2, "transposed"),
    ((3, 2, 4), (0, 2), "mixed"),
    ((7, 5), 0, "F"),               # kept axis contiguous, via Fortran order
]


@sim_only
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", LAYOUT_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_layouts_float32(case, strategy):
    shape, dim, kind = case
    rng = np.random.default_rng(LAYOUT_CASES.index(case))
    v = zoo.layout(zoo.random_values(rng, shape, "float32"), kind, rng)
    check_both(v, dim, "float32", strategy, rng)


@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LAYOUT_CASES[:6], ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_layouts_auto_strategy(case, dtype):
    shape, dim, kind = case
    rng = np.random.default_rng([LAYOUT_CASES.index(case), DTYPES.index(dtype)])
    v = zoo.layout(zoo.random_values(rng, shape, dtype), kind, rng)
    check_both(v, dim, dtype, None, rng)


@sim_only
@pytest.mark.parametrize("block", (1, 4, 32))
def test_block_sizes(block):
    wc.configure(block=block, cols_tx=min(4, block))
    rng = np.random.default_rng(block)
    for strategy in STRATEGIES:
        v = zoo.random_values(rng, (3, 41), "float32")
        if strategy == "group":
            strategy = f"group:{min(block, 8)}"
        check_both(v, 0, "float32", strategy, rng)


@sim_only
def test_split_chunking():
    """A row split into many chunks, partial sums combined in a fixed order."""
    rng = np.random.default_rng(7)
    v = zoo.random_values(rng, (2, 150), "float32")
    for nchunk in (1, 2, 5, 9):
        check_both(v, 0, "float32", f"split:{nchunk}", rng)


@sim_only
def test_auto_choice_in_simulator():
    """Default strategy choice on the simulator's tiny device."""
    rng = np.random.default_rng(3)
    for shape, dim in [((4, 9), 0), ((2, 600), 0), ((40, 3), 0), ((6, 40), -1)]:
        check_both(zoo.random_values(rng, shape, "float64"), dim, "float64", None, rng)


# ---------------------------------------------------------------- edge cases

@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", (0.0, 0.25))
def test_zero_length_rows(dtype, eps):
    v = np.zeros((3, 0), zoo.np_dtype(dtype))
    g = zoo.random_values(np.random.default_rng(0), (3,), dtype, "g")
    w, n = run_forward(v, g, 0, eps)
    assert w.shape == (3, 0)
    np.testing.assert_array_equal(n, np.full(3, np.sqrt(eps), NORM[dtype]))
    gv, gg = run_backward(v, v, g, n, 0)
    gg = gg.astype(np.float64)
    if eps == 0:
        assert np.isnan(gg).all()
    else:
        np.testing.assert_array_equal(gg, 0.0)


@sim_only
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("dtype", ("float16", "float32"))
def test_nan_inf_stay_in_their_row(dtype, strategy):
    rng = np.random.default_rng(11)
    v = zoo.random_values(rng, (5, 20), dtype)
    v[1, 3] = np.nan
    v[3, 7] = np.inf
    v[4] = 0  # zero row with eps=0: NaN there too (as PyTorch)
    check_both(v, 0, dtype, strategy, rng)
    g = zoo.random_values(rng, (5,), dtype, "g")
    w, n = run_forward(v, g, 0, 0.0, strategy)
    w = w.astype(np.float64)
    assert np.isfinite(w[[0, 2]]).all() and np.isnan(w[1]).all()


@sim_only
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("dtype", ("float32", "float64"))
def test_scale_is_exactly_one_when_g_is_the_norm(dtype, strategy):
    """g taken from the kernel's own norms: w == v bit for bit (scale formed first)."""
    rng = np.random.default_rng(5)
    v = zoo.random_values(rng, (4, 33), dtype)
    g = zoo.random_values(rng, (4,), dtype, "g")
    _, n = run_forward(v, g, 0, 0.0, strategy)
    w, _ = run_forward(v, n.astype(dtype), 0, 0.0, strategy)
    assert w.tobytes() == v.tobytes()


@sim_only
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bitwise_reproducible(strategy):
    rng = np.random.default_rng(9)
    v = zoo.random_values(rng, (6, 45), "float32")
    g = zoo.random_values(rng, (6,), "float32", "g")
    gw = zoo.random_values(rng, (6, 45), "float32", "grad")
    first = run_forward(v, g, 0, 0.0, strategy)
    again = run_forward(v, g, 0, 0.0, strategy)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first, again))
    b1 = run_backward(gw, v, g, first[1], 0, strategy)
    b2 = run_backward(gw, v, g, first[1], 0, strategy)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(b1, b2))


@sim_only
def test_in_place_forward():
    """out=v: each element is read before the same thread overwrites it."""
    rng = np.random.default_rng(2)
    v = zoo.random_values(rng, (5, 30), "float32")
    g = zoo.random_values(rng, (5,), "float32", "g")
    for strategy in STRATEGIES:
        vd = to_sim(v)
        w, n = run_forward(v, g, 0, 0.0, strategy, w=None)
        # in place: the output array is v's own memory
        vi = wc.info(vd)
        lay = make_layout(vi.shape, (0,), [vi.strides, vi.strides])
        nd = wc.empty(vi, (5,), "float32")
        wc.forward(lay, vi, wc.info(to_sim(g)), 1, vi, wc.info(nd), 0.0, strategy=strategy)
        assert host(vd).tobytes() == w.tobytes()


@sim_only
def test_g_and_norms_strides():
    """g read with a negative stride, norms with stride 2 (backward)."""
    rng = np.random.default_rng(4)
    v = zoo.random_values(rng, (4, 9), "float64")
    gbuf = zoo.random_values(rng, (4,), "float64", "g")
    gd = to_sim(gbuf)[::-1]
    vd = to_sim(v)
    vi = wc.info(vd)
    wd = wc.empty(vi, vi.shape, "float64")
    lay = make_layout(vi.shape, (0,), [vi.strides, vi.strides])
    nd = wc.empty(vi, (4,), "float64")
    wc.forward(lay, vi, wc.info(gd), -1, wc.info(wd), wc.info(nd), 0.0)
    g = gbuf[::-1]
    assert zoo.check_forward(host(wd), host(nd), v, g, 0) is None
    nbuf = np.zeros(8)
    nbuf[::2] = host(nd)
    gw = zoo.random_values(rng, (4, 9), "float64", "grad")
    gwd = to_sim(gw)
    gvd = wc.empty(vi, vi.shape, "float64")
    ggd = wc.empty(vi, (4,), "float64")
    lay3 = make_layout(vi.shape, (0,), [vi.strides] * 3)
    wc.backward(lay3, wc.info(gwd), vi, wc.info(gd), -1, wc.info(to_sim(nbuf)), 2,
                wc.info(gvd), wc.info(ggd))
    assert zoo.check_backward(host(gvd), host(ggd), gw, v, g, host(nd), 0) is None


@sim_only
def test_ascontiguous_copy():
    rng = np.random.default_rng(6)
    base = zoo.random_values(rng, (4, 6, 3), "bfloat16")
    d = to_sim(base)[::-1, ::2, 1:]
    c = wc.ascontiguous(wc.info(d))
    ci = wc.info(c)
    assert ci.strides == (6, 2, 1)
    assert host(c).tobytes() == np.ascontiguousarray(base[::-1, ::2, 1:]).tobytes()


@sim_only
def test_choose_heuristics_for_real_gpus():
    """Strategy choice for the issue's benchmark shapes (132 SMs, 256 threads)."""
    def pick(shape, dim, order="C"):
        a = np.empty(shape, np.float32, order=order)
        kept = normalize_dim(dim, len(shape))
        st = tuple(s // 4 for s in a.strides)
        return _launch.choose(make_layout(shape, kept, [st, st]), 256, 132)[0]
    assert pick((4096, 4096), 0) == "block"
    assert pick((1048576, 64), 0) == "group"
    assert pick((8, 16777216), 0) == "split"
    assert pick((64, 512, 512), 0) == "split"
    assert pick((512, 256, 3, 3), 0) == "block"
    assert pick((4096, 4096), -1) == "cols"
    assert pick((1 << 20, 32), -1) == "split"
    assert pick((1024, 262144), 0) == "block"


# ---------------------------------------------------------------- through the front end

@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ("C", "mixed"))
def test_front_end_on_simulator_arrays(dtype, kind):
    """wnkernels.weight_norm / weight_norm_backward route simulator arrays here."""
    import wnkernels
    rng = np.random.default_rng([DTYPES.index(dtype), zoo.LAYOUTS.index(kind)])
    for shape, dim in [((6, 5), 0), ((3, 4, 5), (0, 2)), ((5, 7), -1)]:
        v = zoo.layout(zoo.random_values(rng, shape, dtype), kind, rng)
        g = zoo.g_for(rng, shape, dim, dtype)
        w, n = wnkernels.weight_norm(to_sim(v), to_sim(g), dim)
        assert wc.is_gpu_array(w) and wc.is_gpu_array(n)
        err = zoo.check_forward(host(w), host(n), v, g, dim, 0.0, dtype)
        assert err is None, f"{shape} dim={dim}: {err}"
        gw = zoo.layout(zoo.random_values(rng, shape, dtype, "grad"), kind, rng)
        gv, gg = wnkernels.weight_norm_backward(to_sim(gw), to_sim(v), to_sim(g), n, dim)
        err = zoo.check_backward(host(gv), host(gg), gw, v, g, host(n), dim, dtype)
        assert err is None, f"{shape} dim={dim}: {err}"


# ---------------------------------------------------------------- 16-byte vector kernels
#
# On a GPU the v* kernels (16-byte ld.global.v4 / st.global.v4) run wherever rows
# are contiguous and 16-byte aligned; under the simulator the scalar kernels are
# the default, so these tests switch the vector path on.  The simulator's
# vload / vstore read the W consecutive elements in Python and raise on a
# misaligned or out-of-range vector access (a fault on a GPU).

VEC_STRATEGIES = ("block", "group", "split:3")
VEC_W = {"float16": 8, "bfloat16": 8, "float32": 4, "float64": 2}


@pytest.fixture
def vector_on():
    old = wc.configure(vector=True)
    _launch.Settings.trace = []
    yield _launch.Settings.trace
    _launch.Settings.trace = None
    wc.configure(**old)


def _vector_kinds(trace):
    return [k for k in trace if k.split("_", 1)[1].startswith("v")]


@sim_only
@pytest.mark.parametrize("strategy", VEC_STRATEGIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_vector_rows(dtype, strategy, vector_on):
    """Several aligned contiguous rows (rowlen a multiple of W): every vector kernel."""
    W = VEC_W[dtype]
    rng = np.random.default_rng([DTYPES.index(dtype), VEC_STRATEGIES.index(strategy), 40])
    v = zoo.random_values(rng, (3, 3 * W * 8 // 2), dtype)   # 1.5 block-strides of vectors
    check_both(v, 0, dtype, strategy, rng)
    assert len(_vector_kinds(vector_on)) == len(vector_on) > 0, vector_on


@sim_only
@pytest.mark.parametrize("strategy", VEC_STRATEGIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_vector_tail(dtype, strategy, vector_on):
    """One row (dim=None) whose length is not a multiple of W: vectors, then a
    scalar tail; split chunks stay whole multiples of block x W."""
    W = VEC_W[dtype]
    rng = np.random.default_rng([DTYPES.index(dtype), VEC_STRATEGIES.index(strategy), 41])
    v = zoo.random_values(rng, (2 * 8 * W + W - 1,), dtype)
    check_both(v, None, dtype, strategy, rng)
    assert len(_vector_kinds(vector_on)) == len(vector_on) > 0, vector_on


@sim_only
@pytest.mark.parametrize("dtype", ("float16", "float32"))
def test_vector_multi_dims_and_nan(dtype, vector_on):
    """Two kept dims (kept strides multiples of 16 bytes), merged reduced dims,
    NaN / inf / a zero row staying in their rows."""
    W = VEC_W[dtype]
    rng = np.random.default_rng(42)
    v = zoo.random_values(rng, (2, 3, 2, W), dtype)
    v[0, 1, 1, 0] = np.nan
    v[1, 0, 0, 1] = np.inf
    v[1, 2] = 0
    check_both(v, (0, 1), dtype, "block", rng)
    g = zoo.random_values(rng, (6,), dtype, "g")
    w, _ = run_forward(v, g, (0, 1), 0.0, "group:4")
    w = w.astype(np.float64).reshape(6, -1)
    assert np.isnan(w[[1, 5]]).all() and np.isnan(w[3]).any()
    assert np.isfinite(w[[0, 2, 4]]).all()
    assert len(_vector_kinds(vector_on)) == len(vector_on), vector_on


@sim_only
def test_vector_falls_back_when_misaligned(vector_on):
    """Rows that do not start on 16 bytes, or are not contiguous, run the scalar
    kernels (correctly); the simulator's vload would raise otherwise."""
    rng = np.random.default_rng(43)
    base = zoo.random_values(rng, (3, 33), "float32")
    cases = [(base[:, 1:], 0),              # row starts 4 bytes past 16
             (base[:, :30], 0),             # row stride 132 bytes
             (base[:, ::2], 0),             # not contiguous
             (base[:, :32].T, -1)]          # kept axis contiguous (cols)
    for v, dim in cases:
        del vector_on[:]
        check_both(v, dim, "float32", None, rng)
        assert not _vector_kinds(vector_on), (v.strides, vector_on)


@sim_only
@pytest.mark.parametrize("strategy", VEC_STRATEGIES)
def test_vector_in_place_and_reproducible(strategy, vector_on):
    """out=v on the vector path equals the out-of-place result bit for bit, and
    repeated calls are bitwise identical."""
    rng = np.random.default_rng(44)
    v = zoo.random_values(rng, (3, 36), "float32")
    g = zoo.random_values(rng, (3,), "float32", "g")
    w1, n1 = run_forward(v, g, 0, 0.0, strategy)
    w2, n2 = run_forward(v, g, 0, 0.0, strategy)
    assert w1.tobytes() == w2.tobytes() and n1.tobytes() == n2.tobytes()
    vd = to_sim(v)
    vi = wc.info(vd)
    lay = make_layout(vi.shape, (0,), [vi.strides, vi.strides])
    nd = wc.empty(vi, (3,), "float32")
    wc.forward(lay, vi, wc.info(to_sim(g)), 1, vi, wc.info(nd), 0.0, strategy=strategy)
    assert host(vd).tobytes() == w1.tobytes()
    assert len(_vector_kinds(vector_on)) == len(vector_on), vector_on


@sim_only
def test_vector_scale_is_exactly_one_when_g_is_the_norm(vector_on):
    rng = np.random.default_rng(45)
    v = zoo.random_values(rng, (4, 36), "float64")
    g = zoo.random_values(rng, (4,), "float64", "g")
    _, n = run_forward(v, g, 0, 0.0, "block")
    w, _ = run_forward(v, n, 0, 0.0, "block")
    assert w.tobytes() == v.tobytes()


@sim_only
def test_vector_ok_rules():
    """Host-side eligibility: pointer and every kept stride 16-byte multiples,
    one contiguous reduced dim, in every array; the knob switches it off."""
    from types import SimpleNamespace as NS
    old = wc.configure(vector=True)
    try:
        def ok(shape, dim, strides, ptrs, itemsize=4):
            lay = make_layout(shape, normalize_dim(dim, len(shape)), strides)
            arrs = [NS(ptr=p, itemsize=itemsize) for p in ptrs]
            return _launch._vector_ok(lay, arrs)
        C = (8, 1)
        assert ok((4, 8), 0, [C, C], [0x1000, 0x2000])
        assert not ok((4, 8), 0, [C, C], [0x1000, 0x2004])        # w misaligned
        assert not ok((4, 6), 0, [(6, 1), (6, 1)], [0x1000, 0x1000])  # 24-byte rows
        assert ok((1, 6), 0, [(6, 1), (6, 1)], [0x1000, 0x1000])  # one row: no stride
        assert ok((4, 6), 0, [(8, 1), (8, 1)], [0x1000, 0x1000])  # padded rows
        assert not ok((4, 8), 0, [(1, 4), (1, 4)], [0x1000, 0x1000])  # cols layout
        assert not ok((4, 8), 0, [(16, 2), (8, 1)], [0x1000, 0x1000])  # v strided
        assert not ok((4, 2), 0, [(2, 1), (2, 1)], [0x1000, 0x1000])  # row < W
        assert ok((4, 8), 0, [C, C], [0x1000, 0x2000], itemsize=2)  # 16 B rows, W=8
        assert not ok((4, 12), 0, [(12, 1), (12, 1)], [0x1000, 0x2000], itemsize=2)
        assert ok((4, 16), 0, [(16, 1), (16, 1)], [0x1000, 0x2000], itemsize=2)
        wc.configure(vector=False)
        assert not ok((4, 8), 0, [C, C], [0x1000, 0x2000])
    finally:
        wc.configure(**old)


@sim_only
def test_simulator_vload_checks_alignment():
    from wnkernels.cuda import _vec
    a = FakeCUDAArray(np.arange(12, dtype=np.float32))
    assert _vec.vload(a, 4) == (4.0, 5.0, 6.0, 7.0)
    with pytest.raises(RuntimeError):
        _vec.vload(a, 1)
    with pytest.raises(IndexError):
        _vec.vload(a, 12)
    _vec.vstore(a, 8, (1.0, 2.0, 3.0, 4.0))
    assert list(a._ary[8:]) == [1.0, 2.0, 3.0, 4.0]
