"""wnkernels' weight-norm drop-in on PyTorch's distributed engines: a 2-process
DistributedDataParallel run and a 2-process FSDP2 (``fully_shard``) run, gloo
on CPU over localhost, each giving the first step's gradients and the
parameters after 3 SGD-with-momentum and 3 Adam steps of a single-process run
on the concatenated batch.

The ranks are subprocesses (`_dist_worker.py`) with a wall-clock limit: a hang
kills them and fails the test instead of blocking CI.

Tolerance: float32 with rtol=1e-5, atol=1e-6 (measured worst, DDP and FSDP2
alike: 7.5e-9 absolute on the gradients, 1e-7 on the parameters after 3 Adam
steps, on values of order 0.01-1).  The distributed runs differ from the single-process one only in
the order of float32 additions -- each rank sums the batch gradient over its
4 samples and the all-reduce/reduce-scatter adds the two halves, where the
single process sums all 8 at once; the conv/matmul kernels also block
differently for a batch of 4 than of 8 -- so the gradients agree to a few
float32 roundings of their magnitude (~1e-7 relative), and 3 optimizer steps
compound that by at most a small factor (Adam divides by sqrt(v), which maps a
relative error in the gradient to the same relative error in the update).
"""

import os
import socket
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
import wnkernels  # noqa: E402
import wnkernels.torch as wt  # noqa: E402

import _dist_worker as worker  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WORLD = 2
TIMEOUT_S = 150          # both ranks, start-up (imports) included; ~16 s measured
RTOL, ATOL = 1e-5, 1e-6

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(mode: str, tmp_path, attempts: int = 2):
    """Run the WORLD ranks of `_dist_worker` in `mode`; returns each rank's
    record.  Kills every rank and fails on a timeout or a non-zero exit (a
    port taken between `_free_port` and the rendezvous: tried again)."""
    for attempt in range(attempts):
        try:
            return _run_ranks_once(mode, tmp_path, _free_port())
        except _PortTaken:
            if attempt == attempts - 1:
                raise


class _PortTaken(Exception):
    pass


def _run_ranks_once(mode: str, tmp_path, port: int):
    out = str(tmp_path / f"{mode}.pt")
    logs = [tmp_path / f"{mode}.{rank}.log" for rank in range(WORLD)]
    procs = []
    for rank in range(WORLD):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        with open(logs[rank], "w") as log:     # files, not pipes: no rank blocks on output
            procs.append(subprocess.Popen(
                [sys.executable, os.path.join(HERE, "_dist_worker.py"), mode, out], env=env,
                stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for p in procs:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        hung = [r for r, p in enumerate(procs) if p.poll() is None]
        for r in hung:
            procs[r].kill()
            procs[r].wait()
    logs = [path.read_text() for path in logs]
    if hung:
        pytest.fail(f"{mode}: rank(s) {hung} still running after {TIMEOUT_S} s (killed):\n"
                    + "\n".join(f"--- rank {r}\n{log[-3000:]}" for r, log in enumerate(logs)))
    bad = [r for r, p in enumerate(procs) if p.returncode != 0]
    if bad and any("Address already in use" in logs[r] or "EADDRINUSE" in logs[r]
                   for r in bad):
        raise _PortTaken(port)
    if bad:
        pytest.fail(f"{mode}: rank(s) {bad} failed:\n"
                    + "\n".join(f"--- rank {r} (exit {procs[r].returncode})\n{logs[r][-4000:]}"
                                for r in bad))
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]


@pytest.mark.slow
def test_a_hung_run_is_killed_and_fails(tmp_path, monkeypatch):
    """The time bound: a rank that never joins leaves the other waiting in the
    rendezvous; the harness kills it at TIMEOUT_S and fails the test."""
    monkeypatch.setattr(sys.modules[__name__], "TIMEOUT_S", 4)
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="still running after 4 s"):
        _run_ranks("hang", tmp_path)
    assert time.monotonic() - start < 30


@pytest.fixture(scope="module")
def reference():
    """The single-process run on the whole batch, per optimizer (the model
    with g of shape () for dim=None, as DDP's; the FSDP2 model's (1,) g holds
    the same value)."""
    x, y = worker.batch()
    return {name: worker.train(worker.build_model(), x, y, name) for name in worker.OPTIMIZERS}


def _compare(got, want, what):
    assert set(got) == set(want), what
    for name in want:
        g, w = got[name], want[name]
        if g.shape != w.shape:          # FSDP2's dim=None g: (1,) for ()
            assert g.numel() == w.numel() == 1, (what, name, g.shape, w.shape)
            g = g.reshape(w.shape)
        torch.testing.assert_close(g, w, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what} {name}: {m}")


def _check_against_reference(records, reference):
    for opt_name, want in reference.items():
        got = records[0][opt_name]
        _compare(got["grads"], want["grads"], f"{opt_name} step-0 grad")
        _compare(got["params"], want["params"], f"{opt_name} params after {worker.STEPS} steps")
        # each rank's loss is over its half batch: their mean is the whole batch's
        mean_loss = torch.tensor([r[opt_name]["losses"] for r in records]).mean(0)
        torch.testing.assert_close(mean_loss, torch.tensor(want["losses"]), rtol=RTOL, atol=0)
        # the ranks hold one model: the same parameters to the bit
        for r in range(1, WORLD):
            other = records[r][opt_name]["params"]
            for name, p in got["params"].items():
                assert torch.equal(other[name], p), (opt_name, r, name)


def test_reference_is_a_real_weight_norm_model(reference):
    """The model trains wnkernels' parametrization on every dim used (so the
    distributed runs below are runs of the drop-in, not of plain layers)."""
    model = worker.build_model()
    dims = {n: m.parametrizations.weight[0].dim for n, m in model.named_children()}
    assert dims == {"conv0": 0, "pos": 2, "conv1": 1, "head": -1}
    assert all(isinstance(m.parametrizations.weight[0], wt.WeightNorm)
               for m in model.children())
    names = set(reference["sgd"]["grads"])
    assert "pos.parametrizations.weight.original0" in names
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0
               for g in reference["sgd"]["grads"].values())


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path, reference):
    _check_against_reference(_run_ranks("ddp", tmp_path), reference)


def test_op_leaves_parameter_storage_resizable():
    """FSDP2 frees each unsharded parameter after forward with
    ``untyped_storage().resize_(0)``; the ops must not pin the storage of the
    tensors they read (``Tensor.numpy()`` marks it non-resizable for good)."""
    lin = wt.weight_norm(torch.nn.Linear(6, 4))
    lin(torch.randn(2, 6)).sum().backward()
    for name, p in lin.named_parameters():
        assert p.untyped_storage().resizable(), name
    v, g = torch.randn(5, 3), torch.rand(5, 1) + 0.5
    wnkernels.weight_norm(v, g, 0)
    wnkernels.row_scale(v, g, 0)
    assert v.untyped_storage().resizable() and g.untyped_storage().resizable()


@pytest.fixture(scope="module")
def fsdp_records(tmp_path_factory):
    return _run_ranks("fsdp", tmp_path_factory.mktemp("fsdp"))


@pytest.mark.slow
def test_fsdp2_two_processes_match_single_process(fsdp_records, reference):
    _check_against_reference(fsdp_records, reference)


@pytest.mark.slow
def test_fsdp2_weight_read_outside_forward(fsdp_records):
    """``layer.weight`` on the sharded model outside forward (g and v are
    DTensors there: logging, remove_weight_norm before export) -- PyTorch's
    parametrization gives a DTensor; ours must give the weight too."""
    got = fsdp_records[0]["weight_outside_forward"]
    errors = {k: v for k, v in got.items() if isinstance(v, str)}
    assert not errors, errors
    # the Adam-trained model's weights, from its final g and v
    params = fsdp_records[0]["adam"]["params"]
    for name, w in got.items():
        g = params[f"{name}.parametrizations.weight.original0"]
        v = params[f"{name}.parametrizations.weight.original1"]
        dim = {"conv0": 0, "pos": 2, "conv1": 1, "head": -1}[name]
        want = torch._weight_norm(v, g.reshape(()) if dim == -1 else g, dim)
        torch.testing.assert_close(w, want, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_dtensor_parameters(fsdp_records):
    """wnkernels' parametrization on DTensor g and v sharded over the 2 ranks
    (a kept axis, a reduced axis, the whole tensor): the weight and the
    gradients of g and v are the single-process ones.  (PyTorch's own
    parametrization fails the backward of most of these cases:
    aten._weight_norm_interface_backward has no DTensor sharding strategy.)"""
    got = fsdp_records[0]["dtensor"]
    errors = {str(c): r for c, r in zip(worker.DTENSOR_CASES, got) if isinstance(r, str)}
    assert not errors, errors
    for (shape, dim, _), rec in zip(worker.DTENSOR_CASES, got):
        _, g, v = worker.dtensor_case(shape, dim)
        g.requires_grad_()
        v.requires_grad_()
        w = torch._weight_norm(v, g, -1 if dim is None else dim)
        (w.sin() * w).sum().backward()
        for key, want in (("w", w), ("grad_g", g.grad), ("grad_v", v.grad)):
            torch.testing.assert_close(rec[key], want.detach(), rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"{shape} dim={dim} {key}: {m}")


@pytest.mark.slow
def test_fsdp2_meta_device_init(fsdp_records, reference):
    """FSDP2's deferred initialization: the drop-in registered on the meta
    device, the model sharded, materialized (to_empty) and loaded from a full
    state dict, then trained with Adam: the single-process run's gradients
    and parameters."""
    got = fsdp_records[0]["meta_init"]
    assert not isinstance(got, str), got
    want = reference["adam"]
    _compare(got["grads"], want["grads"], "meta-init adam step-0 grad")
    _compare(got["params"], want["params"], f"meta-init adam params after {worker.STEPS} steps")
