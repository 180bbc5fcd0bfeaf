"""Host-side (Python) cost of a GPU call, measurable without a GPU.

Runs `wnkernels.weight_norm` / `weight_norm_backward` on stand-ins for torch CUDA
tensors (host memory behind them), with output allocation done by CPU
``torch.empty`` and the driver launch (``cuda.core.launch``) stubbed out, and
prints microseconds per call for the validating path and for the remembered fast
path (`wnkernels.cuda._fast`).  On a GPU add the real CUDA allocations and the
launch itself; `wnkernels bench --device cuda` measures the whole call there.

    python bench/gpu_host_overhead.py
"""
import time, sys, types
import numpy as np, torch
import wnkernels
from wnkernels import _frontend
from wnkernels.cuda import _interop, _launch, _fast
import wnkernels.cuda as wc

real = torch
class FakeCudaTensor:
    is_cuda = True
    def __init__(self, t): self.t = t; self.dtype = t.dtype; self.device = real.device("cuda", 0); self.shape = t.shape
    def stride(self): return self.t.stride()
    def element_size(self): return self.t.element_size()
    def data_ptr(self): return self.t.data_ptr()
    def is_neg(self): return False
    def is_conj(self): return False
    def dim(self): return self.t.dim()
FakeCudaTensor.__module__ = "torch.fake"

fake = types.SimpleNamespace(
    Tensor=(real.Tensor, FakeCudaTensor), float16=real.float16, float32=real.float32,
    float64=real.float64, bfloat16=real.bfloat16, device=real.device, strided=real.strided,
    empty=lambda shape, dtype=None, device=None: FakeCudaTensor(real.empty(shape, dtype=dtype)),
    empty_strided=lambda shape, st, dtype=None, device=None: FakeCudaTensor(real.empty_strided(shape, st, dtype=dtype)),
    _C=types.SimpleNamespace(_cuda_getCurrentRawStream=lambda i: 0))
def empty(like, shape, dtype, strides=None):
    t = real.empty(shape, dtype=getattr(real, dtype)) if strides is None else real.empty_strided(shape, strides, dtype=getattr(real, dtype))
    return FakeCudaTensor(t)
_interop.empty = wc.empty = empty
_interop.stream_handle = lambda a: 0
_interop._pointer_device = lambda p: 0
_frontend._torch_tensor_type = lambda: (real.Tensor, FakeCudaTensor)
n_launch = [0]
def fake_launch(self, key, grid, args, nk, nr, flat=None):
    if flat is None:
        flat = _launch._flat(args)
    n_launch[0] += 1
_launch._Launcher._launch = fake_launch
_launch._context_guard = lambda o: None
core = types.ModuleType("cuda.core")
core.launch = lambda st, cfg, kern, *flat: n_launch.__setitem__(0, n_launch[0] + 1)
core.LaunchConfig = lambda grid, block: (grid, block)
core.Stream = types.SimpleNamespace(from_handle=lambda h: h)
sys.modules["cuda.core"] = core
_launch._compiled = lambda *a: "kern"
_launch.Settings.fast_launch = True
_launch._sm_count = lambda o: 132
_launch._l2_bytes = lambda o: 50 << 20

def bench(f, n=5000):
    for _ in range(300): f()
    best = 1e9
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n): f()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best

for shape in ((64, 64), (4096, 4096), (8, 1 << 24)):
    v = FakeCudaTensor(real.ones(shape)); g = FakeCudaTensor(real.ones(shape[0], 1))
    nrm = wnkernels.weight_norm(v, g)[1]
    slow_f = bench(lambda: _frontend._weight_norm(v, g, 0, 0.0, None), 2000)
    slow_b = bench(lambda: _frontend._weight_norm_backward(v, v, g, nrm, 0), 2000)
    sys.modules["torch"] = fake
    try:
        wnkernels.weight_norm_backward(v, v, g, nrm)
        n0 = n_launch[0]; r = wnkernels.weight_norm(v, g); assert r is not None
        fast_f = bench(lambda: wnkernels.weight_norm(v, g))
        fast_b = bench(lambda: wnkernels.weight_norm_backward(v, v, g, nrm))
        assert _fast._FWD and _fast._BWD
    finally:
        sys.modules["torch"] = real
    print(f"{shape} (CPU allocation of the stand-in outputs included): validating fwd {slow_f:.1f} us, bwd {slow_b:.1f} us | remembered fwd {fast_f:.1f} us, bwd {fast_b:.1f} us")
pre_w = FakeCudaTensor(real.empty(64, 64)); pre_n = FakeCudaTensor(real.empty(64, 1))
fake.empty = lambda *a, **k: pre_n
fake.empty_strided = lambda *a, **k: pre_w
sys.modules["torch"] = fake
v = FakeCudaTensor(real.ones(64, 64)); g = FakeCudaTensor(real.ones(64, 1))
print("remembered fwd without allocation:", round(bench(lambda: wnkernels.weight_norm(v, g)), 2), "us")
print("  _fast.forward alone:", round(bench(lambda: _fast.forward(v, g, 0, 0.0)), 2), "us")
rec = next(iter(_fast._FWD.values()))[0]
ptrs = (1, 2, 3, 4)
print("  Recipe.run alone:", round(bench(lambda: rec.run(v, ptrs, None, 0, 0.0)), 2), "us")
print("  key alone:", round(bench(lambda: _fast._fwd_key(v, g, 0)), 2), "us")
sys.modules["torch"] = real
