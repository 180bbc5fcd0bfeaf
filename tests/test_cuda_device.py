"""The CUDA path on a real GPU, through the public API.

Skipped (module-level, with the reason) where torch has no CUDA device — CI
has none; there the kernels run under the simulator (test_cuda_sim.py) and
are compiled to PTX and linked (test_cuda_ptx.py).  On a GPU machine this file
checks torch CUDA tensors, numba device arrays and CuPy arrays against the
float64 reference and torch's own CUDA kernels, on every strategy's shapes and
on strided layouts; same kind of array out on the same device; the caller's
stream; CUDA graphs; grouped calls; bitwise repeatability.  Every test runs
under a watchdog: a deadlocked ticketed kernel ends the run with a traceback
(`PER_TEST_SECONDS`) instead of hanging it.  (Written without a GPU at hand:
the first GPU session must run it.)
"""

import faulthandler
import os

import numpy as np
import pytest

import zoo

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device (the simulator suite covers the kernels in CI)",
                allow_module_level=True)

import wnkernels  # noqa: E402

DEV = "cuda"
PER_TEST_SECONDS = int(os.environ.get("WNKERNELS_DEVICE_TEST_SECONDS", "300"))


@pytest.fixture(autouse=True)
def _watchdog():
    """A test that has not finished in PER_TEST_SECONDS (a kernel waiting on a
    ticket that never comes) dumps every thread's traceback and ends the process."""
    faulthandler.dump_traceback_later(PER_TEST_SECONDS, exit=True)
    yield
    torch.cuda.synchronize()
    faulthandler.cancel_dump_traceback_later()
# (shape, dim): block rows, short rows (group), few long rows (split),
# dim=-1 (cols), a middle axis, a tuple, the whole array.
CASES = [((257, 1031), 0), ((4096, 64), 0), ((3, 100003), 0), ((33, 1031), -1),
         ((6, 37, 9), 1), ((5, 7, 9), (0, 2)), ((17, 19), None), ((64, 4096), 0),
         ((130, 1024), -1), ((1000, 257), 0), ((16, 65537), 0), ((2, 1 << 21), 0)]


def _cuda(a, dtype):
    """A float64 NumPy array as a CUDA tensor of `dtype` (values exact)."""
    return torch.as_tensor(zoo.as_f64(a)).to(DEV, getattr(torch, dtype))


def _layout(t, kind):
    if kind == "C" or t.ndim < 2:
        return t
    if kind == "F":
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    big = torch.empty(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype, device=t.device)
    big[..., ::2] = t
    return big[..., ::2]


@pytest.mark.parametrize("kind", ["C", "F", "strided"])
@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("shape,dim", CASES)
def test_torch_cuda_against_reference(shape, dim, dtype, kind):
    rng = np.random.default_rng([len(shape), sum(shape), zoo.DTYPES.index(dtype)])
    v = _layout(_cuda(zoo.random_values(rng, shape, "float64"), dtype), kind)
    g = _cuda(zoo.g_for(rng, shape, dim, "float64"), dtype)
    w, n = wnkernels.weight_norm(v, g, dim)
    assert w.is_cuda and n.is_cuda and w.device == v.device
    assert zoo.check_forward(w, n, v, g, dim, 0.0, dtype) is None
    gw = _layout(_cuda(zoo.random_values(rng, shape, "float64", "grad"), dtype), kind)
    gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, dim)
    assert gv.is_cuda and gg.is_cuda
    assert zoo.check_backward(gv, gg, gw, v, g, n, dim, dtype) is None
    # bitwise repeatable
    w2, n2 = wnkernels.weight_norm(v, g, dim)
    gv2, gg2 = wnkernels.weight_norm_backward(gw, v, g, n, dim)
    for a, b in [(w, w2), (n, n2), (gv, gv2), (gg, gg2)]:
        assert torch.equal(a.view(torch.uint8) if a.dtype == torch.bfloat16 else a,
                           b.view(torch.uint8) if b.dtype == torch.bfloat16 else b)


@pytest.mark.parametrize("dtype", zoo.DTYPES)
@pytest.mark.parametrize("last", [False, True], ids=["dim0", "dimlast"])
def test_close_to_torch_cuda(dtype, last):
    rng = np.random.default_rng(5)
    v = _cuda(zoo.random_values(rng, (513, 257), "float64"), dtype)
    dim = 1 if last else 0
    g = _cuda(zoo.g_for(rng, (513, 257), dim, "float64"), dtype)
    w, n = wnkernels.weight_norm(v, g, dim)
    tw, tn = torch._weight_norm_interface(v, g, dim)
    torch.testing.assert_close(w, tw)
    torch.testing.assert_close(n, tn)
    gw = _cuda(zoo.random_values(rng, (513, 257), "float64", "grad"), dtype)
    gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, dim)
    tgv, tgg = torch.ops.aten._weight_norm_interface_backward(gw, v, g, tn, dim)
    torch.testing.assert_close(gv, tgv, rtol=2e-2 if dtype in zoo.HALF else 1e-5,
                               atol=2e-2 if dtype in zoo.HALF else 1e-5)
    torch.testing.assert_close(gg, tgg, rtol=2e-2 if dtype in zoo.HALF else 1e-5,
                               atol=2e-2 if dtype in zoo.HALF else 1e-5)


def test_runs_on_the_callers_stream():
    rng = np.random.default_rng(6)
    v = _cuda(zoo.random_values(rng, (1024, 4096), "float64"), "float32")
    g = _cuda(zoo.g_for(rng, (1024, 4096), 0, "float64"), "float32")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        v2 = v * 2                      # queued on `side`; wnkernels must follow it
        w, n = wnkernels.weight_norm(v2, g)
    side.synchronize()
    assert zoo.check_forward(w, n, v * 2, g, 0) is None


def test_numba_device_arrays_in_numba_out():
    cuda = pytest.importorskip("numba.cuda")
    rng = np.random.default_rng(7)
    v = zoo.random_values(rng, (65, 129), "float32")
    g = zoo.g_for(rng, (65, 129), 0, "float32")
    w, n = wnkernels.weight_norm(cuda.to_device(v), cuda.to_device(g))
    assert cuda.is_cuda_array(w) and cuda.is_cuda_array(n)
    assert zoo.check_forward(w.copy_to_host(), n.copy_to_host(), v, g, 0) is None


def test_cupy_arrays_in_cupy_out():
    cp = pytest.importorskip("cupy")
    rng = np.random.default_rng(8)
    v = zoo.random_values(rng, (65, 129), "float64")
    g = zoo.g_for(rng, (65, 129), 0, "float64")
    w, n = wnkernels.weight_norm(cp.asarray(v), cp.asarray(g))
    assert isinstance(w, cp.ndarray) and isinstance(n, cp.ndarray)
    assert zoo.check_forward(cp.asnumpy(w), cp.asnumpy(n), v, g, 0) is None


def test_mixed_devices_and_kinds_are_rejected():
    v = torch.ones(8, 4, device=DEV)
    with pytest.raises(ValueError):
        wnkernels.weight_norm(v, torch.ones(8, 1))          # CUDA v, CPU g
    with pytest.raises(TypeError):
        wnkernels.weight_norm(v, np.ones((8, 1), np.float32))


@pytest.fixture
def trace():
    from wnkernels.cuda import _launch
    _launch.Settings.trace = []
    yield _launch.Settings.trace
    _launch.Settings.trace = None


@pytest.mark.parametrize("shape,dim,code", [
    ((4096, 4096), 0, "regs4"), ((65536, 64), 0, "regs2"), ((8, 1 << 22), 0, "stream"),
    ((1536, 768, 16), 0, "regs4"), ((1024, 1024), -1, "colsv"), ((1024, 1023), -1, "cols"),
    ((3, 1 << 20), 0, "stream")])
def test_the_planned_kernels_run(shape, dim, code, trace):
    """The GPU plan picks the 16-byte kernels for aligned shapes (and the results
    are right): rows in registers, the ticketed stream, column vectors."""
    rng = np.random.default_rng(9)
    v = _cuda(zoo.random_values(rng, shape, "float64"), "float32")
    g = _cuda(zoo.g_for(rng, shape, dim, "float64"), "float32")
    w, n = wnkernels.weight_norm(v, g, dim)
    gw = _cuda(zoo.random_values(rng, shape, "float64", "grad"), "float32")
    gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, dim)
    s, n2 = wnkernels.row_scale(v, g, dim)
    torch.cuda.synchronize()
    assert trace == [(code,)] * 3, trace
    assert zoo.check_forward(w, n, v, g, dim) is None
    assert zoo.check_backward(gv, gg, gw, v, g, n, dim) is None
    assert torch.equal(n, n2)


def test_every_compiled_kernel_fits_its_block():
    """Registers per thread x block within the device's limit for each kernel
    this session compiled (the PTX test checks the same through nvJitLink)."""
    from wnkernels.cuda import _launch
    rng = np.random.default_rng(14)
    for shape, dim, dt in (((4096, 4096), 0, "float32"), ((2048, 8192), 0, "bfloat16"),
                           ((512, 1024), -1, "float64")):
        v = _cuda(zoo.random_values(rng, shape, "float64"), dt)
        g = _cuda(zoo.g_for(rng, shape, dim, "float64"), dt)
        w, n = wnkernels.weight_norm(v, g, dim)
        wnkernels.weight_norm_backward(v, v, g, n, dim)
    torch.cuda.synchronize()
    seen = 0
    for (key, nptr, ordinal) in list(_launch._COMPILED):
        kern = _launch.compiled(key, nptr, ordinal)
        block = key[2]
        regs = kern.regs_per_thread
        print(f"{key[:2]} {key[4]}: {regs} registers, max {kern.max_threads_per_block} "
              f"threads per block, {kern.local_mem_per_thread} bytes local")
        assert kern.max_threads_per_block >= block, key
        assert regs * block <= 65536, key
        seen += 1
    assert seen


def test_workspaces_are_per_call_and_graph_safe():
    """Ticketed kernels repeated, on two streams at once, and captured in a CUDA
    graph then replayed (and an eager call on the same stream after it): every
    result right -- no counter state is kept between calls."""
    rng = np.random.default_rng(10)
    for shape, dim in (((4, 300001), 0), ((999, 512), -1)):
        v = _cuda(zoo.random_values(rng, shape, "float64"), "float32")
        g = _cuda(zoo.g_for(rng, shape, dim, "float64"), "float32")
        for _ in range(3):
            w, n = wnkernels.weight_norm(v, g, dim)
            gv, gg = wnkernels.weight_norm_backward(v, v, g, n, dim)
        assert zoo.check_forward(w, n, v, g, dim) is None
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):                  # warm up (plans and compiles)
                wnkernels.weight_norm(v, g, dim)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            wg, ng = wnkernels.weight_norm(v, g, dim)
        for k in range(3):
            v.mul_(1.5)
            graph.replay()
            torch.cuda.synchronize()
            assert zoo.check_forward(wg, ng, v, g, dim) is None, k
        w2, n2 = wnkernels.weight_norm(v, g, dim)
        assert zoo.check_forward(w2, n2, v, g, dim) is None


def test_concurrent_streams():
    """Ticketed kernels on two streams at once: their own workspaces, right results."""
    rng = np.random.default_rng(11)
    vs = [_cuda(zoo.random_values(rng, (6, 1 << 20), "float64"), "float32") for _ in range(2)]
    gs = [_cuda(zoo.g_for(rng, (6, 1 << 20), 0, "float64"), "float32") for _ in range(2)]
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    out = []
    for _ in range(5):
        for s, v, g in zip(streams, vs, gs):
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                out.append((v, g) + tuple(wnkernels.weight_norm(v, g)))
    torch.cuda.synchronize()
    for v, g, w, n in out:
        assert zoo.check_forward(w, n, v, g, 0) is None


def test_compile_times_are_reported():
    import wnkernels.cuda as wc
    v = torch.ones(64, 64, device=DEV)
    wnkernels.weight_norm(v, torch.ones(64, 1, device=DEV))
    times = wc.compile_times()
    assert times and all(t > 0 for t in times.values())


@pytest.mark.parametrize("shape,dim", [((64, 64), 0), ((8, 1 << 20), 0), ((512, 1024), -1),
                                       ((33, 1031), 0)])
def test_cached_calls(shape, dim):
    """The second call with the same description runs its cached plan: bitwise
    the same results, eps taken per call, the caller's stream followed."""
    from wnkernels import _dispatch
    rng = np.random.default_rng(12)
    v = _cuda(zoo.random_values(rng, shape, "float64"), "float32")
    g = _cuda(zoo.g_for(rng, shape, dim, "float64"), "float32")
    gw = _cuda(zoo.random_values(rng, shape, "float64", "grad"), "float32")
    w1, n1 = wnkernels.weight_norm(v, g, dim)
    gv1, gg1 = wnkernels.weight_norm_backward(gw, v, g, n1, dim)
    assert _dispatch.plan_of("weight_norm", v, g, dim=dim) is not None
    w2, n2 = wnkernels.weight_norm(v, g, dim)
    gv2, gg2 = wnkernels.weight_norm_backward(gw, v, g, n1, dim)
    for a, b in ((w1, w2), (n1, n2), (gv1, gv2), (gg1, gg2)):
        assert torch.equal(a, b)
    w3, n3 = wnkernels.weight_norm(v, g, dim, eps=0.25)
    assert zoo.check_forward(w3, n3, v, g, dim, 0.25) is None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)        # the input is produced late on `side`
        v2 = v * 3
        w4, n4 = wnkernels.weight_norm(v2, g, dim)
    side.synchronize()
    assert zoo.check_forward(w4, n4, v * 3, g, dim) is None


def test_numba_arrays_on_their_stream():
    """A numba array produced on a stream of its own: the kernels follow it."""
    cuda = pytest.importorskip("numba.cuda")
    rng = np.random.default_rng(15)
    v = zoo.random_values(rng, (257, 1031), "float32")
    g = zoo.g_for(rng, (257, 1031), 0, "float32")
    s = cuda.stream()
    vd = cuda.to_device(v, stream=s)
    gd = cuda.to_device(g, stream=s)
    w, n = wnkernels.weight_norm(vd, gd)
    s.synchronize()
    cuda.synchronize()
    assert zoo.check_forward(w.copy_to_host(), n.copy_to_host(), v, g, 0) is None


def test_grouped_calls_match_single_calls():
    """A DAC-like weight set in one launch per direction, bitwise the per-tensor
    calls."""
    rng = np.random.default_rng(16)
    shapes = [(64, 1, 7), (128, 64, 7), (1536, 1024, 7), (1024, 8, 1), (8, 1024, 1),
              (512, 256, 16)]
    vs = [_cuda(zoo.random_values(rng, s, "float64"), "float32") for s in shapes]
    gs = [_cuda(zoo.g_for(rng, s, 0, "float64"), "float32") for s in shapes]
    gws = [_cuda(zoo.random_values(rng, s, "float64", "grad"), "float32") for s in shapes]
    fw = wnkernels.weight_norm_many(vs, gs)
    bw = wnkernels.weight_norm_backward_many(gws, vs, gs, [n for _, n in fw])
    for k in range(len(shapes)):
        w, n = wnkernels.weight_norm(vs[k], gs[k])
        gv, gg = wnkernels.weight_norm_backward(gws[k], vs[k], gs[k], n)
        for a, b in ((fw[k][0], w), (fw[k][1], n), (bw[k][0], gv), (bw[k][1], gg)):
            assert torch.equal(a, b), shapes[k]


def test_random_calls_against_the_reference():
    """200 random shapes / dims / dtypes, forward and backward on torch CUDA
    tensors, against the float64 reference."""
    rng = np.random.default_rng(17)
    for k in range(200):
        ndim = int(rng.integers(1, 5))
        shape = tuple(int(x) for x in rng.choice([1, 2, 3, 7, 16, 33, 64, 129, 1000],
                                                 size=ndim))
        if np.prod(shape) > 4_000_000:
            continue
        dim = None if rng.random() < 0.1 else int(rng.integers(-ndim, ndim))
        dtype = zoo.DTYPES[int(rng.integers(4))]
        v = _cuda(zoo.random_values(rng, shape, "float64"), dtype)
        g = _cuda(zoo.g_for(rng, shape, dim, "float64"), dtype)
        w, n = wnkernels.weight_norm(v, g, dim)
        assert zoo.check_forward(w, n, v, g, dim, 0.0, dtype) is None, (k, shape, dim, dtype)
        gw = _cuda(zoo.random_values(rng, shape, "float64", "grad"), dtype)
        gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, dim)
        assert zoo.check_backward(gv, gg, gw, v, g, n, dim, dtype) is None, (k, shape, dim)


def test_call_latency_is_reported():
    """Not a timing assertion: prints the 64x64 wall-clock per call next to
    torch's (the benchmark proper is `wnkernels bench --device cuda`)."""
    import time
    v = torch.randn(64, 64, device=DEV)
    g = torch.randn(64, 1, device=DEV)
    for f in (lambda: wnkernels.weight_norm(v, g), lambda: torch._weight_norm_interface(v, g, 0)):
        for _ in range(100):
            f()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(2000):
            f()
        torch.cuda.synchronize()
        print(f"{(time.perf_counter() - t) / 2000 * 1e6:.1f} us/call")


def test_negative_bit_is_honoured():
    """A tensor whose negative bit is set (torch._neg_view) is read as its values,
    and is refused as out= (a write through the data pointer would be lost)."""
    rng = np.random.default_rng(13)
    v = _cuda(zoo.random_values(rng, (17, 33), "float64"), "float32")
    g = _cuda(zoo.g_for(rng, (17, 33), 0, "float64"), "float32")
    nv = torch._neg_view(v)
    assert nv.is_neg()
    w, n = wnkernels.weight_norm(nv, g)
    assert zoo.check_forward(w, n, -v, g, 0) is None
    with pytest.raises(ValueError):
        wnkernels.weight_norm(v, g, out=torch._neg_view(torch.empty_like(v)))
