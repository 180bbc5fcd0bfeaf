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
        capture_output=True, text=True, timeout=2400)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout


if SIM:
    from numba import cuda
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    import wnkernels
    import wnkernels.cuda as wc
    from wnkernels.cuda import _launch, _plan
    from wnkernels import reference

DTYPES = zoo.DTYPES
# Strategies any layout can take (scalar access), and the 16-byte vector ones.
SCALAR = ("rows", "rows:8", "chunks:3")
VECTOR = ("regs", "stream")


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


class forced:
    """Run with ``strategy`` forced for every item (None: the planner's choice)."""

    def __init__(self, strategy):
        self.strategy = strategy or ""

    def __enter__(self):
        self.old = wc.configure(strategy=self.strategy)

    def __exit__(self, *exc):
        wc.configure(strategy=self.old["strategy"])


def run_forward(v, g, dim, eps=0.0, strategy=None, out=None, shift=0):
    """wnkernels.weight_norm on simulator copies of host arrays v (placed ``shift``
    bytes past a 64-byte boundary) and g; ``out``: a device array; host results."""
    with forced(strategy):
        w, n = wnkernels.weight_norm(to_sim(v, shift), to_sim(g), dim, eps=eps, out=out)
    return host(w), host(n)


def run_backward(gw, v, g, norms, dim, strategy=None, shift=0):
    with forced(strategy):
        gv, gg = wnkernels.weight_norm_backward(to_sim(gw, shift), to_sim(v, shift),
                                                to_sim(g), to_sim(norms), dim)
    return host(gv), host(gg)


def run_scale(v, g, dim, eps=0.0, strategy=None, shift=0):
    with forced(strategy):
        s, n = wnkernels.row_scale(to_sim(v, shift), to_sim(g), dim, eps=eps)
    return host(s), host(n)


def check_all(v, dim, dtype, strategy, rng, eps=0.0, shift=0):
    """Forward, backward and row scale of one strategy against the reference;
    row scale's norms bitwise the forward's."""
    g = zoo.g_for(rng, v.shape, dim, dtype, 1)
    w, n = run_forward(v, g, dim, eps, strategy, shift=shift)
    err = zoo.check_forward(w, n, v, g, dim, eps, dtype)
    assert err is None, f"forward [{strategy}] {err}"
    gw = zoo.random_values(rng, v.shape, dtype, "grad")
    gv, gg = run_backward(gw, v, g, n, dim, strategy, shift=shift)
    err = zoo.check_backward(gv, gg, gw, v, g, n, dim, dtype)
    assert err is None, f"backward [{strategy}] {err}"
    s, n2 = run_scale(v, g, dim, eps, strategy, shift=shift)
    assert n2.tobytes() == n.tobytes(), f"row scale [{strategy}]: other norms"
    with np.errstate(all="ignore"):
        s_ref = (zoo.as_f64(g) / n.astype(np.float64)).astype(zoo.np_dtype(dtype))
    assert zoo.bits(s) == zoo.bits(s_ref.reshape(s.shape)), \
        f"row scale [{strategy}]: scale != g / norm"


@pytest.fixture(autouse=True)
def _small_blocks():
    """Simulator-sized launches: 8-thread blocks, 2 'SMs'; restored afterwards."""
    if not SIM:
        yield
        return
    old = wc.configure(block=8, cols_tx=4, sm_count=2)
    _launch.Settings.trace = []
    yield
    _launch.Settings.trace = None
    wc.configure(**old)


def trace():
    return list(_launch.Settings.trace)


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


def test_cai_parser_and_streams():
    """The CUDA array interface reader, and the stream each GPU kind runs on: a
    numba array's own, the one an interface names (the legacy default when it
    names none), the legacy default for DLPack objects (which are asked to sync
    to it)."""
    from wnkernels.cuda._interop import _cai_info, stream_handle, _dlpack_info

    class Fake:
        __cuda_array_interface__ = {"shape": (3, 4), "strides": None, "typestr": "<f2",
                                    "data": (0, True), "version": 3}
    i = _cai_info(Fake())
    assert (i.kind, i.dtype, i.shape, i.strides, i.readonly) == \
        ("cai", "float16", (3, 4), (4, 1), True)
    assert stream_handle(i) == 1                      # none named: legacy default

    class OnStream:
        __cuda_array_interface__ = {"shape": (2,), "strides": None, "typestr": "<f4",
                                    "data": (0, False), "version": 3, "stream": 0xBEEF}
    assert stream_handle(_cai_info(OnStream())) == 0xBEEF

    class Producer:
        seen = []

        def __dlpack__(self, stream=None):
            Producer.seen.append(stream)
            return np.zeros(3, np.float32).__dlpack__()

        def __dlpack_device__(self):
            return (2, 0)
    d = _dlpack_info(Producer())
    assert Producer.seen == [1] and stream_handle(d) == 1
    from types import SimpleNamespace as NS
    from wnkernels._arrays import ArrayInfo
    arr = ArrayInfo(obj=NS(stream=7), kind="numba", device=("cuda", 0), shape=(1,),
                    strides=(1,), dtype="float32", itemsize=4, ptr=0)
    assert stream_handle(arr) == 7
    arr.obj = NS(stream=0)
    assert stream_handle(arr) == 0


# ---------------------------------------------------------------- every strategy, every dtype

@sim_only
@pytest.mark.parametrize("strategy", SCALAR + (None,))
@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_every_strategy(dtype, strategy):
    rng = np.random.default_rng([DTYPES.index(dtype), len(strategy or "")])
    check_all(zoo.random_values(rng, (5, 37), dtype), 0, dtype, strategy, rng)


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
@pytest.mark.parametrize("strategy", SCALAR)
@pytest.mark.parametrize("case", LAYOUT_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_layouts_float32(case, strategy):
    shape, dim, kind = case
    rng = np.random.default_rng(LAYOUT_CASES.index(case))
    v = zoo.layout(zoo.random_values(rng, shape, "float32"), kind, rng)
    check_all(v, dim, "float32", strategy, rng)


@sim_only
@pytest.mark.parametrize("case", LAYOUT_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_layouts_cols(case):
    """``cols`` takes any layout whose kept axis is a fast one too."""
    shape, dim, kind = case
    rng = np.random.default_rng([LAYOUT_CASES.index(case), 3])
    v = zoo.layout(zoo.random_values(rng, shape, "float32"), kind, rng)
    check_all(v, dim, "float32", "cols", rng)


@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LAYOUT_CASES[:6], ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_layouts_auto_strategy(case, dtype):
    shape, dim, kind = case
    rng = np.random.default_rng([LAYOUT_CASES.index(case), DTYPES.index(dtype)])
    v = zoo.layout(zoo.random_values(rng, shape, dtype), kind, rng)
    check_all(v, dim, dtype, None, rng)


@sim_only
@pytest.mark.parametrize("block", (1, 4, 32))
def test_block_sizes(block):
    wc.configure(block=block, cols_tx=min(4, block))
    rng = np.random.default_rng(block)
    for strategy in ("rows", f"rows:{min(block, 8)}", "chunks:3", "cols"):
        v = zoo.random_values(rng, (3, 41), "float32")
        check_all(v, 0, "float32", strategy, rng)


@sim_only
def test_chunked_rows():
    """A row split into many chunks, partial sums combined in a fixed order."""
    rng = np.random.default_rng(7)
    v = zoo.random_values(rng, (2, 150), "float32")
    for nchunk in (1, 2, 5, 9):
        check_all(v, 0, "float32", f"chunks:{nchunk}", rng)


@sim_only
def test_auto_choice_in_simulator():
    """Default strategy choice on the simulator's tiny device."""
    rng = np.random.default_rng(3)
    got = []
    for shape, dim in [((4, 9), 0), ((2, 1600), 0), ((40, 3), 0), ((6, 40), -1)]:
        del _launch.Settings.trace[:]
        check_all(zoo.random_values(rng, shape, "float64"), dim, "float64", None, rng)
        got.append(trace()[0])
    assert got == [("rows",), ("chunks",), ("rows",), ("cols",)], got


# ---------------------------------------------------------------- edge cases

@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", (0.0, 0.25))
def test_zero_length_rows(dtype, eps):
    v = np.zeros((3, 0), zoo.np_dtype(dtype))
    g = zoo.random_values(np.random.default_rng(0), (3,), dtype, "g")
    w, n = run_forward(v, g, 0, eps)
    assert w.shape == (3, 0)
    np.testing.assert_array_equal(n, np.full(3, np.sqrt(eps), zoo.NORM_DTYPE[dtype]))
    gv, gg = run_backward(v, v, g, n, 0)
    gg = gg.astype(np.float64)
    if eps == 0:
        assert np.isnan(gg).all()
    else:
        np.testing.assert_array_equal(gg, 0.0)


@sim_only
@pytest.mark.parametrize("strategy", SCALAR)
@pytest.mark.parametrize("dtype", ("float16", "float32"))
def test_nan_inf_stay_in_their_row(dtype, strategy):
    rng = np.random.default_rng(11)
    v = zoo.random_values(rng, (5, 20), dtype)
    v[1, 3] = np.nan
    v[3, 7] = np.inf
    v[4] = 0  # zero row with eps=0: NaN there too (as PyTorch)
    check_all(v, 0, dtype, strategy, rng)
    g = zoo.random_values(rng, (5,), dtype, "g")
    w, n = run_forward(v, g, 0, 0.0, strategy)
    w = w.astype(np.float64)
    assert np.isfinite(w[[0, 2]]).all() and np.isnan(w[1]).all()


@sim_only
@pytest.mark.parametrize("strategy", SCALAR)
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
@pytest.mark.parametrize("strategy", SCALAR + ("cols",))
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
    for strategy in SCALAR:
        w, n = run_forward(v, g, 0, 0.0, strategy)
        vd = to_sim(v)
        with forced(strategy):
            r, _ = wnkernels.weight_norm(vd, to_sim(g), 0, out=vd)
        assert r is vd and host(vd).tobytes() == w.tobytes()


@sim_only
def test_g_and_norms_strides():
    """g read with a negative stride, norms with stride 2 (backward)."""
    rng = np.random.default_rng(4)
    v = zoo.random_values(rng, (4, 9), "float64")
    gbuf = zoo.random_values(rng, (4,), "float64", "g")
    gd = to_sim(gbuf)[::-1]
    w, n = wnkernels.weight_norm(to_sim(v), gd, 0)
    g = gbuf[::-1]
    assert zoo.check_forward(host(w), host(n), v, g, 0) is None
    nbuf = np.zeros(8)
    nbuf[::2] = host(n)
    gw = zoo.random_values(rng, (4, 9), "float64", "grad")
    gv, gg = wnkernels.weight_norm_backward(to_sim(gw), to_sim(v), gd, to_sim(nbuf)[::2], 0)
    assert zoo.check_backward(host(gv), host(gg), gw, v, g, host(n), 0) is None


@sim_only
def test_uneven_g_is_copied_on_the_device():
    """A g whose rows are not evenly spaced (2 kept dims, one stepped) is made
    contiguous by the backend's own copy kernel first."""
    rng = np.random.default_rng(12)
    v = zoo.random_values(rng, (3, 4, 5), "float32")
    gbuf = zoo.random_values(rng, (3, 8, 1), "float32", "g")
    gd = to_sim(gbuf)[:, ::2]
    w, n = wnkernels.weight_norm(to_sim(v), gd, (0, 1))
    assert zoo.check_forward(host(w), host(n), v, gbuf[:, ::2], (0, 1)) is None


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
def test_aliased_arguments_are_never_confused():
    """backward(v, v, g, n) (grad_w is v) is planned by description, not by
    identity: a later call with separate arrays of the same description reads
    each of its own."""
    rng = np.random.default_rng(13)
    v = zoo.random_values(rng, (4, 9), "float32")
    g = zoo.random_values(rng, (4,), "float32", "g")
    w, n = run_forward(v, g, 0)
    vd = to_sim(v)
    gv1, gg1 = wnkernels.weight_norm_backward(vd, vd, to_sim(g), to_sim(n), 0)
    assert zoo.check_backward(host(gv1), host(gg1), v, v, g, n, 0) is None
    gw = zoo.random_values(rng, (4, 9), "float32", "grad")
    gv2, gg2 = wnkernels.weight_norm_backward(to_sim(gw), to_sim(v), to_sim(g), to_sim(n), 0)
    assert zoo.check_backward(host(gv2), host(gg2), gw, v, g, n, 0) is None


@sim_only
def test_settings_changes_replan_cached_calls():
    """A cached plan follows `configure`: a forced strategy reaches the next
    call with the same arguments' description."""
    rng = np.random.default_rng(14)
    v = zoo.random_values(rng, (4, 9), "float32")
    g = zoo.random_values(rng, (4,), "float32", "g")
    for strategy, codes in (("rows", ("rows",)), ("chunks:2", ("chunks",)),
                            ("rows", ("rows",))):
        del _launch.Settings.trace[:]
        run_forward(v, g, 0, 0.0, strategy)
        assert trace() == [codes], (strategy, trace())


# ---------------------------------------------------------------- through the front end

@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ("C", "mixed"))
def test_front_end_on_simulator_arrays(dtype, kind):
    """Simulator arrays in, simulator arrays out, every dim form."""
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


# ---------------------------------------------------------------- grouped calls

@sim_only
@pytest.mark.parametrize("vector", (False, True))
def test_grouped_calls_are_one_launch_and_bitwise_the_single_calls(vector):
    """A model-like weight set -- rows of many lengths and layouts, a dim=-1
    item, few long rows (ticketed), an empty one, per-item dims -- in one
    launch per direction, each item bitwise its own single call."""
    wc.configure(vector=vector, stream_vectors=1, cols_steps=1)
    rng = np.random.default_rng(15)
    shapes = [((6, 3, 7), 0), ((2, 90), 0), ((9, 8), -1), ((5, 4, 1), 0), ((0, 3), 0),
              ((4, 5), None), ((3, 4, 5), (0, 2)), ((7, 33), 0)]
    for dtype in ("float32", "bfloat16"):
        vs = [zoo.random_values(rng, s, dtype) for s, _ in shapes]
        gs = [zoo.g_for(rng, s, d, dtype) for s, d in shapes]
        gws = [zoo.random_values(rng, s, dtype, "grad") for s, _ in shapes]
        dims = [d for _, d in shapes]
        del _launch.Settings.trace[:]
        fw = wnkernels.weight_norm_many([to_sim(v) for v in vs], [to_sim(g) for g in gs], dims)
        assert len(trace()) == 1, trace()
        del _launch.Settings.trace[:]
        bw = wnkernels.weight_norm_backward_many(
            [to_sim(x) for x in gws], [to_sim(v) for v in vs], [to_sim(g) for g in gs],
            [n for _, n in fw], dims)
        assert len(trace()) == 1, trace()
        for k, (s, d) in enumerate(shapes):
            w, n = wnkernels.weight_norm(to_sim(vs[k]), to_sim(gs[k]), d)
            assert host(fw[k][0]).tobytes() == host(w).tobytes(), (dtype, s)
            assert host(fw[k][1]).tobytes() == host(n).tobytes(), (dtype, s)
            gv, gg = wnkernels.weight_norm_backward(to_sim(gws[k]), to_sim(vs[k]),
                                                    to_sim(gs[k]), n, d)
            assert host(bw[k][0]).tobytes() == host(gv).tobytes(), (dtype, s)
            assert host(bw[k][1]).tobytes() == host(gg).tobytes(), (dtype, s)
            assert zoo.check_forward(host(w), host(n), vs[k], gs[k], d, 0.0, dtype) is None


@sim_only
def test_grouped_call_with_a_bad_item_writes_nothing():
    rng = np.random.default_rng(16)
    vs = [to_sim(zoo.random_values(rng, (4, 5), "float32")) for _ in range(3)]
    gs = [to_sim(zoo.random_values(rng, (4, 1), "float32", "g")) for _ in range(3)]
    gs[2] = to_sim(zoo.random_values(rng, (5, 1), "float32", "g"))
    before = [host(x).tobytes() for x in vs + gs]
    with pytest.raises(ValueError, match=r"item 2"):
        wnkernels.weight_norm_many(vs, gs)
    assert [host(x).tobytes() for x in vs + gs] == before


# ---------------------------------------------------------------- 16-byte vector kernels
#
# On a GPU, rows that are one contiguous run at the same 16-byte phase in every
# array run ``regs`` (row held in registers) or ``stream`` (ticketed chunks), and
# a contiguous kept axis runs ``colsv`` with 16-byte column vectors where aligned.
# Under the simulator the scalar kernels are the default, so these tests switch
# the vector path on.  The simulator's vload / vstore read the W consecutive
# elements in Python and raise on a misaligned or out-of-range vector access (a
# fault on a GPU).

VEC_W = {"float16": 8, "bfloat16": 8, "float32": 4, "float64": 2}


@pytest.fixture
def vector_on():
    """Vector kernels on; stream items of one vector per thread (many chunks);
    an L2 so small that each chunk's finish follows its row's parts closely."""
    wc.configure(vector=True, stream_vectors=1, cols_steps=1, l2_bytes=1)
    yield _launch.Settings.trace


def _vector_only(tr):
    """Every launch ran 16-byte vector strategies only."""
    return bool(tr) and all(all(c.startswith(("regs", "stream", "colsv")) for c in codes)
                            for codes in tr)


@sim_only
@pytest.mark.parametrize("strategy", VECTOR + (None,))
@pytest.mark.parametrize("dtype", DTYPES)
def test_vector_rows(dtype, strategy, vector_on):
    """Rows whose length is not a multiple of W: each row starts at another phase
    (scalar head up to its first 16-byte boundary, vectors, scalar tail)."""
    W = VEC_W[dtype]
    rng = np.random.default_rng([DTYPES.index(dtype), len(strategy or ""), 40])
    v = zoo.random_values(rng, (5, 3 * W * 4 + W // 2 + 1), dtype)
    check_all(v, 0, dtype, strategy, rng)
    assert _vector_only(vector_on), vector_on


@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_vector_origin_phases(dtype, vector_on):
    """v's first element 0, 1, W/2, W-1 elements past 16 bytes: the fresh outputs
    are at phase 0, so only rows whose phases line up run the vector kernels
    (rows of W + r elements, row r at phase r * ... in general they differ) --
    here rows of a multiple of W so every row shares v's phase when it is 0."""
    W = VEC_W[dtype]
    isz = 16 // W
    rng = np.random.default_rng([DTYPES.index(dtype), 46])
    v = zoo.random_values(rng, (3, 5 * W), dtype)
    for k in sorted({0, 1, W // 2, W - 1}):
        del vector_on[:]
        check_all(v, 0, dtype, None, rng, shift=k * isz)
        assert _vector_only(vector_on) == (k == 0), (k, vector_on)
    check_all(zoo.random_values(rng, (3, W + 1), dtype), 0, dtype, "regs", rng)
    check_all(zoo.random_values(rng, (7 * W + 3,), dtype), None, dtype, "stream", rng)


@sim_only
@pytest.mark.parametrize("gr", ((8, 1), (8, 2), (8, 4)))
def test_regs_shapes(gr, vector_on):
    """Lanes x vectors per lane: rows from one scalar element to G x R vectors."""
    G, R = gr
    rng = np.random.default_rng([G, R, 47])
    for rowlen in sorted({1, 3, 4, 5, G * R * 4 - 1, G * R * 4, G * R * 4 + 3}):
        v = zoo.random_values(rng, (3, rowlen), "float32")
        if rowlen < 4 or rowlen > G * R * 4:   # not eligible: below a vector, or too long
            with pytest.raises(ValueError):
                run_forward(v, v[:, 0], 0, 0.0, f"regs:{G}:{R}")
            continue
        check_all(v, 0, "float32", f"regs:{G}:{R}", rng)


@sim_only
@pytest.mark.parametrize("l2", (1, 4096, 1 << 30))
@pytest.mark.parametrize("strategy", ("stream", "colsv", "cols", "chunks:4"))
def test_ticket_lag(strategy, l2, vector_on):
    """The finish items trail the parts by the minimum (nchunk - 1), a few
    hundred, or all of the parts: the same results."""
    wc.configure(l2_bytes=l2)
    rng = np.random.default_rng([l2 % 97, 48])
    shape, dim = ((3, 131), 0) if strategy in ("stream", "chunks:4") else ((37, 12), -1)
    check_all(zoo.random_values(rng, shape, "float32"), dim, "float32", strategy, rng)


@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_cols_vector(dtype, vector_on):
    """dim=-1: 16-byte column vectors where every array's reduced stride allows
    (a partial last vector of columns; reversed rows), the scalar ``cols`` when
    an array is not 16-byte aligned or its reduced stride is not a whole vector."""
    W = VEC_W[dtype]
    rng = np.random.default_rng([DTYPES.index(dtype), 49])
    base = zoo.random_values(rng, (7, 4 * W), dtype)
    for v, vec in [(base, True), (base[::-2], True), (base[:, :3 * W + 1], False),
                   (base[:, 1:3 * W], False)]:
        del vector_on[:]
        check_all(v, -1, dtype, None, rng)
        assert {c for codes in vector_on for c in codes} == ({"colsv"} if vec else {"cols"}), \
            (v.shape, v.strides, vector_on)


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
    for strategy in VECTOR:
        check_all(v, (0, 1), dtype, strategy, rng)
        g = zoo.random_values(rng, (2, 3), dtype, "g")
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
        check_all(v, 0, "float32", None, rng)
        assert not any(c.startswith(("regs", "stream")) for codes in vector_on for c in codes)
        with pytest.raises(ValueError):
            run_forward(v, base[:, 0], 0, 0.0, "regs")


@sim_only
@pytest.mark.parametrize("strategy", VECTOR + ("colsv",))
def test_vector_in_place_and_reproducible(strategy, vector_on):
    """out=v on the vector path equals the out-of-place result bit for bit, and
    repeated calls are bitwise identical."""
    rng = np.random.default_rng(44)
    v = zoo.random_values(rng, (8, 36), "float32")
    dim = 1 if strategy == "colsv" else 0
    g = zoo.random_values(rng, (v.shape[dim],), "float32", "g")
    w1, n1 = run_forward(v, g, dim, 0.0, strategy)
    w2, n2 = run_forward(v, g, dim, 0.0, strategy)
    assert w1.tobytes() == w2.tobytes() and n1.tobytes() == n2.tobytes()
    vd = to_sim(v)
    with forced(strategy):
        wnkernels.weight_norm(vd, to_sim(g), dim, out=vd)
    assert host(vd).tobytes() == w1.tobytes()
    assert _vector_only(vector_on), vector_on


@sim_only
@pytest.mark.parametrize("strategy", VECTOR)
def test_vector_scale_is_exactly_one_when_g_is_the_norm(strategy, vector_on):
    rng = np.random.default_rng(45)
    v = zoo.random_values(rng, (4, 37), "float64")
    g = zoo.random_values(rng, (4,), "float64", "g")
    _, n = run_forward(v, g, 0, 0.0, strategy)
    w, _ = run_forward(v, n, 0, 0.0, strategy)
    assert w.tobytes() == v.tobytes()


def _plan_of(shape, dim, dtype="float32", op=0, phases=None):
    """The front end's plan of a call on fresh C-contiguous arrays (the GPU
    planner only reads its description)."""
    from wnkernels import _planner
    v = np.zeros(shape, zoo.np_dtype(dtype))
    g = np.zeros(reference.g_shapes(shape, dim)[0], v.dtype)
    args = (v, g, None) if op == 0 else (v, v, g, g.astype(zoo.NORM_DTYPE[dtype]))
    p = _planner.plan_call(op, args, None, dim)
    if phases is not None:
        p.args = tuple(a._replace(phase=ph) if a is not None else a
                       for a, ph in zip(p.args, phases))
    return p


@sim_only
def test_row_phase_rules():
    """Host-side eligibility of the vector row kernels: one contiguous reduced dim,
    the same phase in every array for every row; the knob switches it off."""
    def ph(shape, phase=0, dtype="float32", op=0):
        return _plan.row_phase(_plan_of(shape, 0, dtype, op, (phase,) * 4), True)
    assert ph((4, 8)) == 0
    assert ph((4, 8), 4) is None            # v at phase 4 bytes, fresh w at 0: differ
    assert ph((4, 6)) == 0                  # row r at phase 2r: each row has its head
    assert ph((4, 2)) is None               # rows shorter than a vector
    assert ph((4, 12), dtype="float16") == 0
    assert ph((4, 8), 4, op=1) is None      # backward: grad_v fresh at phase 0
    p = _plan_of((4, 8), 0)
    assert _plan.row_phase(p, False) is None
    pt = _plan_of((8, 4), 0)
    pt.layout = __import__("wnkernels._layout", fromlist=["x"]).make_layout(
        (8, 4), (1,), [(4, 1), (4, 1)])     # kept axis contiguous: a cols layout
    assert _plan.row_phase(pt, True) is None


@sim_only
def test_plans_for_real_gpus():
    """The strategies for the issue's benchmark shapes on an H100 (132 SMs, 50 MiB
    L2) with the GPU defaults; every plan fits a block of <= 256 threads."""
    from types import SimpleNamespace as NS
    S = NS(block=256, max_regs=8, cols_tx=32, cols_steps=4, stream_vectors=2, vector=True)

    def pl(shape, dim, dtype="float32", op=0):
        p = _plan_of(shape, dim, dtype, op)
        return _plan.plan_item(p, S, 132, 50 << 20), _plan.plan_strategy(p, S, 132)
    F = __import__("wnkernels.cuda.kernels", fromlist=["Fields"]).Fields
    it, st = pl((4096, 4096), 0)
    assert st[:2] == ("regs4", 256), st
    it, st = pl((4096, 4096), 0, "float16")
    assert st[:2] == ("regs2", 256), st
    it, st = pl((4096, 4096), 0, "float64")
    assert st[:2] == ("regs8", 256), st
    assert pl((16384, 4096), 0, "bfloat16")[1][0].startswith("regs")
    it, st = pl((1048576, 64), 0)
    assert st[:2] == ("regs2", 8), st
    assert pl((512, 256, 3, 3), 0)[1][0].startswith("regs")
    for shape, dt in (((8, 16777216), "float32"), ((64, 512, 512), "float16"),
                      ((1024, 262144), "float32"), ((1536, 768, 16), "float32")):
        for op in (0, 1):
            it, st = pl(shape, 0, dt, op)
            assert st[0] == "stream" or (shape[0] >= 132 and st[0].startswith("regs")), \
                (shape, st)
            if st[0] == "stream":
                nchunk, lag = it.rec[F.NCHUNK], it.rec[F.LAG]
                assert nchunk - 1 <= lag <= nchunk * shape[0], it
                assert it.grid == 132 * 8
    it, st = pl((4096, 4096), -1)
    assert st[:2] == ("colsv", 8) and st[4] == 128, st
    it, st = pl((1 << 20, 32), -1)
    assert st[:2] == ("colsv", 8) and st[3] == 8192, st


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
    from wnkernels.cuda.kernels._common import decode
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
# finishes wait on other blocks' arrivals, and the last-block combine and the
# published scalars run under real contention.  A launch that has not finished
# in time is a deadlock.

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
@pytest.mark.parametrize("strategy,shape,dim", [("stream", (3, 97), 0), ("chunks:3", (3, 97), 0),
                                                ("colsv", (33, 12), -1),
                                                ("cols", (19, 7), -1)])
def test_ticketed_kernels_with_concurrent_blocks(strategy, shape, dim, vector_on):
    """Ticketed strategies with every block of a launch running at once (see
    above): right results, bitwise the same as sequential blocks."""
    wc.configure(sm_count=1, block=8)
    rng = np.random.default_rng([len(shape), 52])
    v = zoo.random_values(rng, shape, "float32")
    g = zoo.g_for(rng, shape, dim, "float32")
    gw = zoo.random_values(rng, shape, "float32", "grad")
    w0, n0 = run_forward(v, g, dim, 0.0, strategy)
    gv0, gg0 = run_backward(gw, v, g, n0, dim, strategy)
    s0, _ = run_scale(v, g, dim, 0.0, strategy)
    for seed in range(2):
        with _ConcurrentBlocks(seed):
            w, n = run_forward(v, g, dim, 0.0, strategy)
            gv, gg = run_backward(gw, v, g, n0, dim, strategy)
            s, _ = run_scale(v, g, dim, 0.0, strategy)
        assert w.tobytes() == w0.tobytes() and n.tobytes() == n0.tobytes(), seed
        assert gv.tobytes() == gv0.tobytes() and gg.tobytes() == gg0.tobytes(), seed
        assert s.tobytes() == s0.tobytes(), seed
    assert {c for codes in vector_on for c in codes} == {strategy.split(":")[0]}, vector_on
