"""One rank of the 2-process runs of tests/test_torch_distributed.py.

    python _dist_worker.py MODE OUT
        MODE: "ddp" (DistributedDataParallel) or "fsdp" (FSDP2 ``fully_shard``);
              "hang": the last rank never joins (tests the time limit)
        env:  RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (gloo, CPU)

Each rank trains the shared model (`build_model`, wnkernels' drop-in weight
norm on every layer) on its slice of the global batch (`batch`) with each
optimizer of `OPTIMIZERS` for `STEPS` steps, and saves (``torch.save``)
{optimizer: {"grads": the first step's gradients, "params": the parameters
after the last step, "losses": the per-step losses}} as full tensors (FSDP2's
shards gathered), to OUT.RANK; FSDP2 adds "weight_outside_forward" (each
layer's weight read on the sharded model, see `_weights_outside_forward`)
"dtensor" (the parametrization on DTensor g and v, `_dtensor_cases`) and
"meta_init" (FSDP2's meta-device initialization path, `_meta_init`).
The test compares them with a single-process run on the whole batch (`train`,
also used by the test itself).
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

import wnkernels
import wnkernels.torch as wt

STEPS = 3
GLOBAL_BATCH = 8
OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
}


class Net(nn.Module):
    """Every weight-norm ``dim`` the audio models use: dim=0 (HiFi-GAN, DAC,
    Encodec convs and Linear), dim=2 on a grouped conv (Wav2Vec2's positional
    conv), dim=1 and the whole tensor (dim=None).  ``flat_g_for_none`` gives
    the dim=None layer a g of shape (1,) instead of () (FSDP2 rejects scalar
    parameters, PyTorch's own parametrization's () g included)."""

    def __init__(self, flat_g_for_none: bool = False):
        super().__init__()
        self.conv0 = wt.weight_norm(nn.Conv1d(3, 8, 5, padding=2), dim=0)
        self.pos = wt.weight_norm(nn.Conv1d(8, 8, 4, padding=2, groups=2), dim=2)
        self.conv1 = wt.weight_norm(nn.Conv1d(8, 6, 3, padding=1), dim=1)
        self.head = wt.weight_norm(nn.Linear(6 * 8, 5), dim=None)
        if flat_g_for_none:
            plist = self.head.parametrizations.weight
            plist.original0 = nn.Parameter(plist.original0.detach().reshape(1))

    def forward(self, x):
        h = torch.tanh(self.conv0(x))
        h = h + torch.nn.functional.gelu(self.pos(h)[..., :-1])
        h = torch.tanh(self.conv1(h))
        return self.head(h.flatten(1))


def build_model(flat_g_for_none: bool = False) -> Net:
    torch.manual_seed(1234)
    return Net(flat_g_for_none)


def batch():
    gen = torch.Generator().manual_seed(99)
    x = torch.randn(GLOBAL_BATCH, 3, 8, generator=gen)
    y = torch.randn(GLOBAL_BATCH, 5, generator=gen)
    return x, y


def _full(t):
    """A plain tensor of the full value (a DTensor's shards gathered)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().clone()


def train(model: nn.Module, x, y, opt_name: str, params_of=None):
    """STEPS steps of mean-squared-error training; returns the record the
    worker saves.  ``params_of``: the module whose named_parameters to report
    (DDP's wrapped module), default ``model``."""
    named = dict((params_of or model).named_parameters())
    opt = OPTIMIZERS[opt_name](list(named.values()))
    grads, losses = None, []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        losses.append(loss.detach().item())
        if step == 0:
            grads = {n: _full(p.grad) for n, p in named.items()}
        opt.step()
    return {"grads": grads, "params": {n: _full(p) for n, p in named.items()},
            "losses": losses}


def _weights_outside_forward(net):
    """``layer.weight`` read outside forward on the sharded model (its g and
    v are DTensors then: the op runs on DTensors), as full tensors, or the
    error it raised."""
    got = {}
    for name in ("conv0", "pos", "conv1", "head"):
        try:
            got[name] = _full(getattr(net, name).weight)
        except Exception as e:     # reported by the test
            got[name] = f"{type(e).__name__}: {e}"
    return got


# (shape, dim, v's placement) of the DTensor cases: a kept axis sharded (no
# communication), a reduced axis sharded (redistributed), the whole tensor
DTENSOR_CASES = [((6, 4, 3), 0, 0), ((6, 4, 3), 2, 0), ((6, 4, 3), 1, 1),
                 ((6, 4, 3), None, 0), ((4, 6), 1, 0), ((4, 6), 0, None)]


def dtensor_case(shape, dim):
    """g, v of a layer with wnkernels' weight norm on a weight of ``shape``."""
    torch.manual_seed(len(shape) * 10 + (3 if dim is None else dim))
    lin = nn.Linear(1, 1)
    lin.weight = nn.Parameter(torch.randn(shape))
    wt.weight_norm(lin, dim=dim)
    plist = lin.parametrizations.weight
    return lin, plist.original0.detach().clone(), plist.original1.detach().clone()


def _dtensor_cases(mesh):
    """wnkernels' parametrization on DTensor g and v (what tensor parallelism
    hands it, and FSDP2 outside forward): the weight, its placements, and the
    gradients of sum(sin(w) * w), as full tensors, or the error raised."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    got = []
    for shape, dim, axis in DTENSOR_CASES:
        lin, g, v = dtensor_case(shape, dim)
        plist = lin.parametrizations.weight
        vp = Replicate() if axis is None else Shard(axis)
        gp = Shard(axis) if axis is not None and g.dim() and g.shape[axis] > 1 else Replicate()
        plist.original0 = nn.Parameter(distribute_tensor(g, mesh, [gp]))
        plist.original1 = nn.Parameter(distribute_tensor(v, mesh, [vp]))
        try:
            w = lin.weight
            (w.sin() * w).sum().backward()
            got.append({"w": _full(w), "placements": str(w.placements),
                        "grad_g": _full(plist.original0.grad),
                        "grad_v": _full(plist.original1.grad)})
        except Exception as e:     # reported by the test
            got.append(f"{type(e).__name__}: {e}")
    return got


def _meta_init(mesh, xs, ys):
    """FSDP2's deferred initialization: the model built on the meta device
    (the drop-in registered there), sharded, materialized with to_empty and
    loaded from the full state dict of `build_model` (what a checkpoint
    gives), then trained with Adam -- the record of `train`, or the error."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         set_model_state_dict)
    from torch.distributed.fsdp import fully_shard
    try:
        with torch.device("meta"):
            net = Net(flat_g_for_none=True)
        for layer in (net.conv0, net.pos, net.conv1, net.head):
            fully_shard(layer, mesh=mesh)
        fully_shard(net, mesh=mesh)
        net.to_empty(device="cpu")
        full = build_model(flat_g_for_none=True).state_dict()
        set_model_state_dict(net, full, options=StateDictOptions(full_state_dict=True))
        return train(net, xs, ys, "adam")
    except Exception as e:     # reported by the test
        return f"{type(e).__name__}: {e}"


def main(mode: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)          # 2 ranks on CI's 2 cores
    wnkernels.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if mode == "hang" and rank == world - 1:
        return      # never joins: the other ranks wait in the rendezvous (the harness's test)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, y = batch()
        n = GLOBAL_BATCH // world
        xs, ys = x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]
        result = {}
        for opt_name in OPTIMIZERS:
            if mode == "ddp":
                net = build_model()
                ddp = nn.parallel.DistributedDataParallel(net)
                result[opt_name] = train(ddp, xs, ys, opt_name, params_of=net)
            elif mode == "fsdp":
                from torch.distributed.device_mesh import init_device_mesh
                from torch.distributed.fsdp import fully_shard
                mesh = init_device_mesh("cpu", (world,))
                net = build_model(flat_g_for_none=True)
                for layer in (net.conv0, net.pos, net.conv1, net.head):
                    fully_shard(layer, mesh=mesh)
                fully_shard(net, mesh=mesh)
                kinds = {type(p).__name__ for p in net.parameters()}
                assert kinds == {"DTensor"}, kinds     # really sharded
                result[opt_name] = train(net, xs, ys, opt_name)
                result["weight_outside_forward"] = _weights_outside_forward(net)
            else:
                raise ValueError(mode)
        if mode == "fsdp":
            result["dtensor"] = _dtensor_cases(mesh)
            result["meta_init"] = _meta_init(mesh, xs, ys)
        torch.save(result, f"{out}.{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
