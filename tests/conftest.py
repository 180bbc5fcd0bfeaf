"""Shared pytest configuration for the wnkernels test suite.

* Warnings are errors (a RuntimeWarning from a stray 0/0 in a front end is a bug).
* Every test leaves the thread count as it found it.
* ``slow`` marks the few tests that take seconds (they still run by default;
  deselect with ``-m "not slow"``).
"""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # `import zoo` from the tests


SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"


def pytest_configure(config):
    config.addinivalue_line("filterwarnings", "error")
    # raised inside torch's own Inductor (torch 2.13), not by wnkernels
    config.addinivalue_line(
        "filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
    config.addinivalue_line("markers", "slow: takes seconds; deselect with -m 'not slow'")
    config.addinivalue_line("markers", "simulator: runs in-process under NUMBA_ENABLE_CUDASIM=1")
    config.addinivalue_line("markers", "simulator_wrapper: runs the simulator tests in a subprocess")


def pytest_collection_modifyitems(config, items):
    """CUDA-simulator tests need the simulator switched on before numba.cuda
    is imported: in a plain run they execute inside test_simulator_suite's
    subprocess, so they are deselected here (not skipped); under the
    simulator the wrapper is deselected instead."""
    drop = "simulator_wrapper" if SIMULATOR else "simulator"
    keep = [it for it in items if it.get_closest_marker(drop) is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[it for it in items if it not in keep])
        items[:] = keep


@pytest.fixture(autouse=True)
def _cwd_outside_source(monkeypatch):
    """Run from tests/: subprocesses started with `python -c` put their cwd
    first on sys.path, and from the repository root that would import the
    source tree (no compiled extension) instead of the installed package."""
    monkeypatch.chdir(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _restore_num_threads():
    """Undo any set_num_threads a test makes."""
    wnkernels = sys.modules.get("wnkernels")
    before = wnkernels.get_num_threads() if hasattr(wnkernels, "get_num_threads") else None
    yield
    if before is not None:
        wnkernels.set_num_threads(before)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: reproducible, different per test."""
    seed = [ord(c) for c in request.node.nodeid]
    return np.random.default_rng(seed)


@pytest.fixture
def torch():
    return pytest.importorskip("torch")
