"""Threads: bitwise-identical results for every thread count, the thread-count API,
its default (all usable cores, or OMP_NUM_THREADS), concurrent Python callers,
and the GIL released while a kernel runs.
"""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import wnkernels
import zoo

# Every work-splitting strategy: many rows; few long rows (split into blocks);
# kept axis innermost (dim=-1 of a C matrix); a middle kept axis; a tuple of
# kept axes; the whole array as one row; a Fortran-ordered dim=0.
SHAPES = [
    ((4096, 257), 0),
    ((3, 400001), 0),
    ((257, 1031), 1),
    ((33, 257, 65), 1),
    ((9, 301, 7), (0, 2)),
    ((700001,), None),
    ((1031, 257), 0),  # made Fortran-ordered below
]
THREADS = [1, 2, 3, 4]


def _inputs(shape, dim, dtype, seed=0):
    rng = np.random.default_rng([seed, *shape])
    v = zoo.random_values(rng, shape, dtype)
    if shape == (1031, 257):
        v = np.asfortranarray(v)
    g = zoo.g_for(rng, shape, dim, dtype)
    gw = zoo.random_values(rng, shape, dtype, "grad")
    return v, g, gw


def _all_results(v, g, gw, dim):
    w, n = wnkernels.weight_norm(v, g, dim)
    w_eps, n_eps = wnkernels.weight_norm(v, g, dim, eps=0.5)
    gv, gg = wnkernels.weight_norm_backward(gw, v, g, n, dim)
    return [zoo.bits(a) for a in (w, n, w_eps, n_eps, gv, gg)]


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("shape, dim", SHAPES)
def test_bitwise_identical_for_every_thread_count(shape, dim, dtype):
    v, g, gw = _inputs(shape, dim, dtype)
    results = {}
    for n in THREADS:
        wnkernels.set_num_threads(n)
        results[n] = _all_results(v, g, gw, dim)
    names = ["w", "norms", "w(eps)", "norms(eps)", "grad_v", "grad_g"]
    for n in THREADS[1:]:
        differ = [name for name, a, b in zip(names, results[1], results[n]) if a != b]
        assert not differ, f"{differ} differ between 1 and {n} threads"
    # and the results are right (not identically wrong)
    w, n = wnkernels.weight_norm(v, g, dim)
    assert zoo.check_forward(w, n, v, g, dim) is None


def test_call_to_call_identical():
    v, g, gw = _inputs((3, 400001), 0, "float32")
    wnkernels.set_num_threads(2)
    first = _all_results(v, g, gw, 0)
    for _ in range(3):
        assert _all_results(v, g, gw, 0) == first


def test_get_returns_what_was_set():
    for n in [1, 3, 2, 7, 1]:
        wnkernels.set_num_threads(n)
        assert wnkernels.get_num_threads() == n
    assert isinstance(wnkernels.get_num_threads(), int)


def _child(code, **env):
    """Run ``code`` in a fresh interpreter that imports this wnkernels; return its stdout."""
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(wnkernels.__file__)))
    child_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}
    child_env["PYTHONPATH"] = pkg_root + os.pathsep + child_env.get("PYTHONPATH", "")
    child_env.update(env)
    res = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def _usable_cores():
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def test_default_is_all_usable_cores():
    code = "import wnkernels; print(wnkernels.get_num_threads())"
    assert int(_child(code)) == _usable_cores()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_default_follows_cpu_affinity():
    """'Usable' cores: a process pinned to one core defaults to one thread."""
    if _usable_cores() < 2:
        pytest.skip("needs 2 usable cores")
    cpu = min(os.sched_getaffinity(0))
    code = (f"import os; os.sched_setaffinity(0, {{{cpu}}}); import wnkernels; "
            "print(wnkernels.get_num_threads())")
    assert int(_child(code)) == 1


@pytest.mark.parametrize("n", ["1", "3"])
def test_default_respects_omp_num_threads(n):
    code = "import wnkernels; print(wnkernels.get_num_threads())"
    assert int(_child(code, OMP_NUM_THREADS=n)) == int(n)


def test_omp_num_threads_does_not_change_results():
    code = ("import numpy as np, wnkernels\n"
            "rng = np.random.default_rng(5)\n"
            "v = rng.standard_normal((3, 400001)).astype(np.float32)\n"
            "g = rng.uniform(1, 2, (3, 1)).astype(np.float32)\n"
            "w, n = wnkernels.weight_norm(v, g, 0)\n"
            "import hashlib; print(hashlib.sha256(w.tobytes() + n.tobytes()).hexdigest())\n")
    assert _child(code, OMP_NUM_THREADS="1") == _child(code, OMP_NUM_THREADS="3")


def test_concurrent_python_threads():
    """4 Python threads calling at once each get exactly their serial results."""
    jobs = [((257, 1031), 1, "float32"), ((4096, 257), 0, "float64"),
            ((3, 200001), 0, "bfloat16"), ((9, 301, 7), (0, 2), "float16")]
    inputs = [_inputs(shape, dim, dtype, seed=i) for i, (shape, dim, dtype) in enumerate(jobs)]
    wnkernels.set_num_threads(2)
    expected = [_all_results(v, g, gw, dim) for (v, g, gw), (_, dim, _) in zip(inputs, jobs)]
    errors = []
    barrier = threading.Barrier(len(jobs))

    def worker(i):
        (v, g, gw), (_, dim, _) = inputs[i], jobs[i]
        try:
            barrier.wait()
            for _ in range(8):
                if _all_results(v, g, gw, dim) != expected[i]:
                    errors.append(f"job {i}: result differs from the serial one")
                    return
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(f"job {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker hangs"
    assert not errors, errors


def test_gil_is_released_while_a_kernel_runs():
    """A Python thread keeps running while another thread is inside a long kernel call."""
    v = np.random.default_rng(0).standard_normal((8, 2_000_001))
    g = np.ones((8, 1))
    wnkernels.set_num_threads(1)
    wnkernels.weight_norm(v, g, 0)  # warm up (page faults of the first output)
    t0 = time.perf_counter()
    wnkernels.weight_norm(v, g, 0)
    one_call = time.perf_counter() - t0
    if one_call < 0.005:
        pytest.skip(f"one call takes {one_call:.4f}s: too short to tell")
    calls = max(2, int(0.3 / one_call))

    done = threading.Event()
    spans = []

    def kernel_thread():
        start = time.perf_counter()
        for _ in range(calls):
            wnkernels.weight_norm(v, g, 0)
        spans.append((start, time.perf_counter()))
        done.set()

    ticks = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        t = threading.Thread(target=kernel_thread)
        t.start()
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0005)
        t.join()
    finally:
        sys.setswitchinterval(old)
    start, end = spans[0]
    inside = [x for x in ticks if start <= x <= end]
    # With the GIL held through each call, the main thread could only tick between
    # calls: nearly all of the time would sit in gaps about one call long. Released,
    # only scheduler noise leaves gaps. Judge by the share of time spent in long gaps.
    gaps = np.diff([start] + inside + [end])
    long_gap = max(0.003, one_call / 4)
    stalled = gaps[gaps > long_gap].sum()
    assert stalled < 0.5 * (end - start), (
        f"main thread stalled for {stalled:.3f}s of {end - start:.3f}s "
        f"({calls} calls of {one_call:.4f}s each)")


_FORK_CHILD = r"""
import os, sys
import numpy as np
import wnkernels
from wnkernels.cpu import _kernels as _cpu
v = np.random.default_rng(5).standard_normal((512, 1024)).astype(np.float32)
g = np.ones((512, 1), np.float32)
gw = np.random.default_rng(6).standard_normal((512, 1024)).astype(np.float32)
wnkernels.set_num_threads(2)
w, n = wnkernels.weight_norm(v, g)             # 2 MiB: a two-thread team runs
gv, gg = wnkernels.weight_norm_backward(gw, v, g, n)
assert not _cpu.threads_lost_to_fork()
pid = os.fork()
if pid == 0:                                   # the child: libgomp's pool is gone
    ok = _cpu.threads_lost_to_fork()
    w2, n2 = wnkernels.weight_norm(v, g)
    gv2, gg2 = wnkernels.weight_norm_backward(gw, v, g, n2)
    a, b, c = (np.empty(1 << 20, np.float32) for _ in range(3))
    _cpu.roofline_copy(a, b); _cpu.roofline_triad(a, b, 2.0, c)
    same = all(x.tobytes() == y.tobytes() for x, y in zip((w, n, gv, gg), (w2, n2, gv2, gg2)))
    os._exit(0 if ok and same else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), _cpu.threads_lost_to_fork())
"""


def test_forked_child_runs_kernels_without_hanging():
    """A process forked after the kernels used an OpenMP team (multiprocessing's
    default on Linux) runs its kernels on one thread, with the same bits; before,
    its first multi-threaded call waited forever on threads fork had not copied."""
    if not hasattr(os, "fork") or not wnkernels.cpu._kernels.have_openmp():
        pytest.skip("needs fork and an OpenMP build")
    assert _child(_FORK_CHILD) == "0 False"     # child exit code; parent keeps its threads
