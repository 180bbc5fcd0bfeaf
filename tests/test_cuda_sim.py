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
    from wnkernels.cuda._exec import shift as _shift
    from wnkernels import reference

DTYPES = zoo.DTYPES
STRATEGIES = ("block", "group", "cols", "split")


# ---------------------------------------------------------------- helpers

def to_sim(x: np.ndarray, shift: int = 0):
    """A simulator device array equal to ``x`` with the same strides (its own copy
    of the memory that ``x`` spans, gaps included), its first element ``shift``
    bytes past a 64-byte boundary."""
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
        region = np.zeros(nbytes + 128, np.uint8)
        at = -region.__array_interface__["data"][0] % 64 + shift
        region[at:at + nbytes] = np.frombuffer((ctypes.c_char * nbytes).from_address(ptr + lo),
                                               np.uint8)
        view = np.ndarray(x.shape, x.dtype, buffer=region, offset=at - lo,
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


def run_forward(v, g, dim, eps=0.0, strategy=None, w=None, shift=0):
    """wnkernels.cuda.forward on host arrays v (any strides; placed ``shift`` bytes
    past a 64-byte boundary) and flat g; ``w``: the device array to write; host
    results."""
    vd, gd = to_sim(v, shift), to_sim(np.ascontiguousarray(g).reshape(-1))
    vi, gi = wc.info(vd), wc.info(gd)
    wd = wc.empty(vi, vi.shape, vi.dtype) if w is None else w
    wi = wc.info(wd)
    lay = make_layout(vi.shape, normalize_dim(dim, len(vi.shape)), [vi.strides, wi.strides])
    nd = wc.empty(vi, (lay.nrows,), NORM[vi.dtype])
    wc.forward(lay, _shift(vi, lay, 0), gi, 1 if lay.nrows > 1 else 0,
               _shift(wi, lay, 1), wc.info(nd), eps, strategy=strategy)
    return host(wd), host(nd)


def run_backward(gw, v, g, norms, dim, strategy=None, shift=None, gv=None):
    """wnkernels.cuda.backward on host arrays; ``shift``: place gw and v that many
    bytes past a 64-byte boundary; ``gv``: the grad_v device array to write."""
    gwd = gw if shift is None else to_sim(gw, shift)
    vd = v if shift is None else to_sim(v, shift)
    gwd = to_sim(gwd) if isinstance(gwd, np.ndarray) else gwd
    vd = to_sim(vd) if isinstance(vd, np.ndarray) else vd
    gd = to_sim(np.ascontiguousarray(g).reshape(-1))
    nd = to_sim(np.ascontiguousarray(norms).reshape(-1))
    vi, gwi, gi, ni = wc.info(vd), wc.info(gwd), wc.info(gd), wc.info(nd)
    gvd = wc.empty(vi, vi.shape, vi.dtype) if gv is None else gv
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
# On a GPU, rows that are one contiguous run at the same 16-byte phase in every
# array run ``regs`` (row held in registers) or ``stream`` (ticketed chunks), and
# a contiguous kept axis runs ``cols`` with 16-byte column vectors where aligned.
# Under the simulator the scalar kernels are the default, so these tests switch
# the vector path on.  The simulator's vload / vstore read the W consecutive
# elements in Python and raise on a misaligned or out-of-range vector access (a
# fault on a GPU).

VEC_W = {"float16": 8, "bfloat16": 8, "float32": 4, "float64": 2}
ROW_STRATEGIES = ("regs", "stream")


@pytest.fixture
def vector_on():
    """Vector kernels on; stream items of one vector per thread (many chunks);
    an L2 so small that each chunk's finish follows its row's parts closely."""
    old = wc.configure(vector=True, stream_vectors=1, cols_steps=1, l2_bytes=1)
    _launch.Settings.trace = []
    yield _launch.Settings.trace
    _launch.Settings.trace = None
    wc.configure(**old)


def _kinds(trace):
    return [k for k, _ in trace if k != "zero"]


def _vector_only(trace):
    """Every launch was a 16-byte vector kernel (``regs``, ``stream``, or
    ``cols`` with a vector of columns per thread)."""
    kinds = [(k, s) for k, s in trace if k != "zero"]
    return bool(kinds) and all(k.endswith(("regs", "stream")) or
                               (k.endswith("cols") and s[1] > 1) for k, s in kinds)


@sim_only
@pytest.mark.parametrize("strategy", ROW_STRATEGIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_vector_rows(dtype, strategy, vector_on):
    """Rows whose length is not a multiple of W: each row starts at another phase
    (scalar head up to its first 16-byte boundary, vectors, scalar tail)."""
    W = VEC_W[dtype]
    rng = np.random.default_rng([DTYPES.index(dtype), ROW_STRATEGIES.index(strategy), 40])
    v = zoo.random_values(rng, (5, 3 * W * 4 + W // 2 + 1), dtype)
    check_both(v, 0, dtype, strategy, rng)
    assert _vector_only(vector_on), vector_on


@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_vector_origin_phases(dtype, vector_on):
    """Origin phases 0, 1, W/2, W-1 elements past 16 bytes, the same in v, w, grad_w
    and grad_v (outputs laid out like v); rows shorter than two vectors; one row."""
    W = VEC_W[dtype]
    isz = 16 // W
    rng = np.random.default_rng([DTYPES.index(dtype), 46])
    base = zoo.random_values(rng, (3, 6 * W + 3), dtype)
    n = 5 * W + 1
    for k in sorted({0, 1, W // 2, W - 1}):
        for strategy in ROW_STRATEGIES:
            del vector_on[:]
            check_both_alike(base, np.s_[:, :n], 0, dtype, strategy, rng, shift=k * isz)
            assert _vector_only(vector_on), (k, vector_on)
    check_both(zoo.random_values(rng, (3, W + 1), dtype), 0, dtype, "regs", rng)
    check_both(zoo.random_values(rng, (7 * W + 3,), dtype), None, dtype, "stream", rng)


@sim_only
@pytest.mark.parametrize("gr", ((8, 1), (8, 2), (8, 4)))
def test_regs_shapes(gr, vector_on):
    """Lanes x vectors per lane: rows from one scalar element to G x R vectors."""
    G, R = gr
    rng = np.random.default_rng([G, R, 47])
    for rowlen in sorted({1, 3, 4, 5, G * R * 4 - 1, G * R * 4, G * R * 4 + 3}):
        v = zoo.random_values(rng, (3, rowlen), "float32")
        if rowlen < 4:   # below one vector: the vector kernels are not eligible
            with pytest.raises(ValueError):
                run_forward(v, v[:, 0], 0, 0.0, f"regs:{G}:{R}")
            continue
        check_both(v, 0, "float32", f"regs:{G}:{R}", rng)


@sim_only
@pytest.mark.parametrize("l2", (1, 4096, 1 << 30))
@pytest.mark.parametrize("strategy", ("stream", "cols"))
def test_ticket_lag(strategy, l2, vector_on):
    """The finish items trail the parts by the minimum (nchunk - 1), a few
    hundred, or all of the parts: same results, the counters left at zero."""
    wc.configure(l2_bytes=l2)
    rng = np.random.default_rng([l2 % 97, 48])
    shape, dim = ((3, 131), 0) if strategy == "stream" else ((37, 12), -1)
    v = zoo.random_values(rng, shape, "float32")
    check_both(v, dim, "float32", strategy, rng)
    ws = _launch._WORKSPACES[(0, 0)]
    assert not host_of(ws["sync"]).any(), "ticket counters not left at zero"


def host_of(span):
    return np.array(span.owner._ary if hasattr(span.owner, "_ary") else span.owner)


def check_both_alike(base, sl, dim, dtype, strategy, rng, shift=0):
    """check_both on ``v = base[sl]`` with w, grad_w and grad_v laid out like v
    (views of arrays shaped like ``base``, ``shift`` bytes past 64)."""
    v = base[sl]
    g = zoo.random_values(rng, flat_g_shape(v.shape, dim), dtype, "g")
    wd = to_sim(np.zeros_like(base), shift)[sl]
    w, n = run_forward(v, g, dim, 0.0, strategy, w=wd, shift=shift)
    n = n.reshape(g.shape)
    assert zoo.check_forward(w, n, v, g, dim, 0.0, dtype) is None, strategy
    gw = zoo.random_values(rng, base.shape, dtype, "grad")[sl]
    gvd = to_sim(np.zeros_like(base), shift)[sl]
    gv, gg = run_backward(gw, v, g, n, dim, strategy, shift=shift, gv=gvd)
    assert zoo.check_backward(gv, gg.reshape(g.shape), gw, v, g, n, dim, dtype) is None


@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_cols_vector(dtype, vector_on):
    """dim=-1: 16-byte column vectors where every array's reduced stride allows,
    a partial last vector of columns, reversed rows; the scalar fallback when an
    array is not 16-byte aligned or its reduced stride is not a whole vector."""
    W = VEC_W[dtype]
    rng = np.random.default_rng([DTYPES.index(dtype), 49])
    base = zoo.random_values(rng, (7, 4 * W), dtype)
    for sl, vec in [(np.s_[:, :], True), (np.s_[:, :3 * W + 1], True),
                    (np.s_[::-2, :2 * W], True), (np.s_[:, 1:3 * W], False)]:
        del vector_on[:]
        check_both_alike(base, sl, -1, dtype, "cols", rng)
        vws = {s[1] for k, s in vector_on if k.endswith("cols")}
        assert vws == ({W} if vec else {1}), (sl, vector_on)
    del vector_on[:]
    check_both(base[:, :3 * W + 1], -1, dtype, "cols", rng)  # fresh outputs: stride 3W+1
    assert {s[1] for k, s in vector_on if k.endswith("cols")} == {1}, vector_on


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
    for strategy in ROW_STRATEGIES:
        check_both(v, (0, 1), dtype, strategy, rng)
        g = zoo.random_values(rng, (6,), dtype, "g")
        w, _ = run_forward(v, g, (0, 1), 0.0, strategy)
        w = w.astype(np.float64).reshape(6, -1)
        assert np.isnan(w[[1, 5]]).all() and np.isnan(w[3]).any()
        assert np.isfinite(w[[0, 2, 4]]).all()
    assert _vector_only(vector_on), vector_on


@sim_only
def test_vector_falls_back_when_phases_differ(vector_on):
    """Rows not contiguous, or not at the same phase in v and w, run the scalar
    kernels (correctly); the simulator's vload would raise otherwise."""
    rng = np.random.default_rng(43)
    base = zoo.random_values(rng, (3, 33), "float32")
    for v in (base[:, ::2], base[:, 1:]):
        del vector_on[:]
        check_both(v, 0, "float32", None, rng)
        expect_vector = v.strides[1] == 4   # base[:, 1:]: w (fresh) has another phase
        assert _vector_only(vector_on) is False or expect_vector, (v.strides, vector_on)
    # w contiguous (phase 0 for every 32-element row), v rows at phase 1: scalar
    v = base[:, 1:]
    g = zoo.random_values(rng, (3,), "float32", "g")
    del vector_on[:]
    w, n = run_forward(v, g, 0)
    assert zoo.check_forward(w, n, v, g, 0) is None
    assert not any(k.endswith(("regs", "stream")) for k in _kinds(vector_on)), vector_on


@sim_only
@pytest.mark.parametrize("strategy", ROW_STRATEGIES + ("cols",))
def test_vector_in_place_and_reproducible(strategy, vector_on):
    """out=v on the vector path equals the out-of-place result bit for bit, and
    repeated calls are bitwise identical."""
    rng = np.random.default_rng(44)
    v = zoo.random_values(rng, (8, 36), "float32")
    dim = 1 if strategy == "cols" else 0
    nr = v.shape[dim]
    g = zoo.random_values(rng, (nr,), "float32", "g")
    w1, n1 = run_forward(v, g, dim, 0.0, strategy)
    w2, n2 = run_forward(v, g, dim, 0.0, strategy)
    assert w1.tobytes() == w2.tobytes() and n1.tobytes() == n2.tobytes()
    vd = to_sim(v)
    vi = wc.info(vd)
    lay = make_layout(vi.shape, (dim,), [vi.strides, vi.strides])
    nd = wc.empty(vi, (nr,), "float32")
    wc.forward(lay, vi, wc.info(to_sim(g)), 1, vi, wc.info(nd), 0.0, strategy=strategy)
    assert host(vd).tobytes() == w1.tobytes()
    assert _vector_only(vector_on), vector_on


@sim_only
@pytest.mark.parametrize("strategy", ROW_STRATEGIES)
def test_vector_scale_is_exactly_one_when_g_is_the_norm(strategy, vector_on):
    rng = np.random.default_rng(45)
    v = zoo.random_values(rng, (4, 37), "float64")
    g = zoo.random_values(rng, (4,), "float64", "g")
    _, n = run_forward(v, g, 0, 0.0, strategy)
    w, _ = run_forward(v, n, 0, 0.0, strategy)
    assert w.tobytes() == v.tobytes()


@sim_only
def test_row_phase_rules():
    """Host-side eligibility of the vector row kernels: one contiguous reduced dim,
    the same phase in every array for every row; the knob switches it off."""
    from types import SimpleNamespace as NS
    old = wc.configure(vector=True)
    try:
        def ph(shape, dim, strides, ptrs, itemsize=4):
            lay = make_layout(shape, normalize_dim(dim, len(shape)), strides)
            arrs = [NS(ptr=p, itemsize=itemsize) for p in ptrs]
            return _launch._row_phase(lay, arrs)
        C = (8, 1)
        assert ph((4, 8), 0, [C, C], [0x1000, 0x2000]) == 0
        assert ph((4, 8), 0, [C, C], [0x1004, 0x2004]) == 1       # same phase: fine
        assert ph((4, 8), 0, [C, C], [0x1000, 0x2004]) is None    # phases differ
        assert ph((4, 6), 0, [(6, 1), (6, 1)], [0x1000, 0x1000]) == 0  # row r: phase 2r
        assert ph((4, 6), 0, [(6, 1), (8, 1)], [0x1000, 0x1000]) is None
        assert ph((4, 8), 0, [(1, 4), (1, 4)], [0x1000, 0x1000]) is None  # cols layout
        assert ph((4, 8), 0, [(16, 2), (8, 1)], [0x1000, 0x1000]) is None  # v strided
        assert ph((4, 2), 0, [(2, 1), (2, 1)], [0x1000, 0x1000]) is None  # row < W
        assert ph((4, 12), 0, [(12, 1), (12, 1)], [0x1002, 0x2002], itemsize=2) == 1
        assert ph((4, 8), 0, [C, C], [0x1001, 0x2001]) is None    # not element-aligned
        wc.configure(vector=False)
        assert ph((4, 8), 0, [C, C], [0x1000, 0x2000]) is None
    finally:
        wc.configure(**old)


@sim_only
def test_plans_for_real_gpus():
    """The plan for the issue's benchmark shapes on an H100 (132 SMs, 50 MiB L2)
    with the GPU defaults."""
    from types import SimpleNamespace as NS
    gpu = dict(block=256, max_block=1024, cols_tx=32, cols_steps=4, stream_vectors=2,
               vector=True)
    old = wc.configure(**gpu)
    try:
        def pl(shape, dim, dtype="float32", bwd=False):
            isz = np.dtype(zoo.np_dtype(dtype)).itemsize
            a = np.empty(shape, zoo.np_dtype(dtype))
            st = tuple(s // isz for s in a.strides)
            lay = make_layout(shape, normalize_dim(dim, len(shape)), [st] * (2 + bwd))
            return _launch.plan(lay, [NS(ptr=1 << 20, itemsize=isz)] * (2 + bwd), 132,
                                50 << 20, bwd=bwd)
        p = pl((4096, 4096), 0)
        assert (p.name, p.sub, p.block) == ("regs", (256, 4), 256)
        p = pl((4096, 4096), 0, "float16")
        assert (p.name, p.sub, p.block) == ("regs", (128, 4), 128)
        p = pl((4096, 4096), 0, "float64")
        assert (p.name, p.sub, p.block) == ("regs", (512, 4), 512)
        assert pl((16384, 4096), 0, "bfloat16").name == "regs"
        p = pl((1048576, 64), 0)
        assert (p.name, p.sub, p.block) == ("regs", (8, 2), 256)
        assert pl((512, 256, 3, 3), 0).name == "regs"
        for shape, dt in (((8, 16777216), "float32"), ((64, 512, 512), "float16"),
                          ((1024, 262144), "float32")):
            for bwd in (False, True):
                p = pl(shape, 0, dt, bwd)
                assert p.name == "stream", (shape, p)
                assert p.nchunk - 1 <= p.lag <= p.nchunk * shape[0], p
                assert p.grid == 132 * 8
        p = pl((1024, 262144), 0)
        assert p.lag > p.grid          # finishes trail the parts by more than a wave
        p = pl((4096, 4096), -1)
        assert (p.name, p.sub) == ("cols", (8, 4)) and p.chunk == 128, p
        p = pl((1 << 20, 32), -1)
        assert (p.name, p.sub, p.nchunk) == ("cols", (8, 4), 8192), p
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


@sim_only
def test_ticket_order():
    """Every part and finish item gets exactly one ticket, and (lag >= nchunk - 1)
    every finish comes after all of its row's parts: a finish only ever waits on
    items with earlier tickets, which is what guarantees progress."""
    from wnkernels.cuda._kernels import decode
    for nrows, nchunk in ((1, 1), (1, 7), (5, 1), (4, 6), (9, 13)):
        np_ = nrows * nchunk
        for lag in sorted({nchunk - 1, nchunk, (np_ + nchunk) // 2, np_}):
            if lag > np_:
                continue
            seen, done = set(), {}
            for tk in range(2 * np_):
                fin, r, c = decode(tk, np_, lag, nchunk)
                assert 0 <= r < nrows and 0 <= c < nchunk
                assert (fin, r, c) not in seen
                seen.add((fin, r, c))
                if fin:
                    assert done.get(r, 0) == nchunk, (nrows, nchunk, lag, tk)
                else:
                    done[r] = done.get(r, 0) + 1
            assert len(seen) == 2 * np_
            # finishes of a row walk its chunks in reverse
            order = [decode(tk, np_, lag, nchunk) for tk in range(2 * np_)]
            for r in range(nrows):
                assert [c for f, rr, c in order if f and rr == r] == list(range(nchunk))[::-1]


# ---------------------------------------------------------------- blocks running at once
#
# The simulator runs a grid's blocks one after another, so in the tests above one
# block takes every ticket.  Here the blocks of each launch run concurrently
# (one Python thread per block manager, each with its own shared memory; started
# in a shuffled order), so part and finish items interleave across blocks,
# finishes wait on other blocks' arrivals, and the last-block combine, the
# published scales and the exit protocol run under real contention.  A launch
# that has not finished in time is a deadlock.

class _ConcurrentBlocks:
    def __init__(self, seed, timeout=600):
        self.rng = np.random.default_rng(seed)
        self.timeout = timeout

    def __enter__(self):
        import threading
        from numba.cuda.simulator import kernel as K, kernelapi as KA
        rng, timeout = self.rng, self.timeout

        def shared(mod):
            per = mod.__dict__.setdefault("_per_block_shared", {})
            bid = tuple(threading.current_thread().blockIdx)
            if bid not in per:
                per[bid] = KA.FakeCUDAShared(mod._shared._dynshared_size)
            return per[bid]

        def call(kern, *args):
            if kern._device or K._kernel_context:
                return self.orig_call(kern, *args)
            grid, block = K.normalize_kernel_dimensions(kern.grid_dim, kern.block_dim)
            mod = KA.FakeCUDAModule(grid, block, kern.dynshared_size)
            args = [K.FakeWithinKernelCUDAArray(a) if isinstance(a, FakeCUDAArray) else a
                    for a in args]
            errors = []

            def run(point):
                try:
                    K.BlockManager(kern.fn, grid, block, kern._debug).run(point, *args)
                except BaseException as e:  # reported below
                    errors.append(e)

            points = list(np.ndindex(*grid))
            rng.shuffle(points)
            with K._push_kernel_context(mod), KA.swapped_cuda_module(kern.fn, mod):
                threads = [threading.Thread(target=run, args=(p,), daemon=True)
                           for p in points]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join(timeout)
                    assert not th.is_alive(), "deadlock: a block did not finish"
            if errors:
                raise errors[0]

        self.K, self.KA = K, KA
        self.orig_call = K.FakeCUDAKernel.__call__
        self.orig_shared = KA.FakeCUDAModule.shared
        K.FakeCUDAKernel.__call__ = call
        KA.FakeCUDAModule.shared = property(shared)
        return self

    def __exit__(self, *exc):
        self.K.FakeCUDAKernel.__call__ = self.orig_call
        self.KA.FakeCUDAModule.shared = self.orig_shared


@sim_only
@pytest.mark.parametrize("strategy,shape,dim", [("stream", (3, 97), 0),
                                                ("cols", (33, 12), -1),
                                                ("cols", (19, 7), -1)])
def test_ticketed_kernels_with_concurrent_blocks(strategy, shape, dim, vector_on):
    """stream and cols with every block of a launch running at once (see above):
    right results, bitwise the same as sequential blocks, counters left at zero."""
    wc.configure(sm_count=1, block=8)
    rng = np.random.default_rng([len(shape), 52])
    v = zoo.random_values(rng, shape, "float32")
    g = zoo.random_values(rng, flat_g_shape(shape, dim), "float32", "g")
    gw = zoo.random_values(rng, shape, "float32", "grad")
    w0, n0 = run_forward(v, g, dim, 0.0, strategy)
    gv0, gg0 = run_backward(gw, v, g, n0, dim, strategy)
    del vector_on[:]
    for seed in range(2):
        with _ConcurrentBlocks(seed):
            w, n = run_forward(v, g, dim, 0.0, strategy)
            gv, gg = run_backward(gw, v, g, n0, dim, strategy)
        assert w.tobytes() == w0.tobytes() and n.tobytes() == n0.tobytes(), seed
        assert gv.tobytes() == gv0.tobytes() and gg.tobytes() == gg0.tobytes(), seed
        assert not host_of(_launch._WORKSPACES[(0, 0)]["sync"]).any()
    grids = {k for k, _ in vector_on}
    assert grids == {f"fwd_{strategy}", f"bwd_{strategy}"}, vector_on
