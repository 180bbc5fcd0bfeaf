"""Timing of wnkernels.jax against a jax.jit of the formula (CPU).

    python -m wnkernels.jax._bench [--repeats 7] [--shapes 64x64,1024x8,4096x4096]

For each shape (float32, dim=0): the forward and ``value_and_grad`` of
``sum(w * c)``, jitted, through the FFI handler, through pure_callback and as
the jax.numpy formula; plus the library call on NumPy arrays (the kernel's own
time) and an empty jitted call (JAX's dispatch floor).  Best and median per
call, in microseconds, over ``repeats`` batches of calls.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _time_all(cases, repeats, target_s=0.15):
    """Best and median microseconds per call of each ``name: (fn, args)``,
    the variants interleaved repeat by repeat (load drift hits all alike)."""
    import jax
    plan = {}
    for name, (fn, args) in cases.items():
        jax.block_until_ready(fn(*args))
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        one = max(time.perf_counter() - t0, 1e-7)
        plan[name] = max(1, min(2000, int(target_s / repeats / one)))
    per = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (fn, args) in cases.items():
            n = plan[name]
            t0 = time.perf_counter()
            for _ in range(n):
                out = fn(*args)
            jax.block_until_ready(out)
            per[name].append((time.perf_counter() - t0) / n * 1e6)
    return {name: (min(p), statistics.median(p)) for name, p in per.items()}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--shapes", default="64x64,1024x8,4096x4096")
    a = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    import wnkernels
    import wnkernels.jax as wj

    def formula(v, g):
        n = jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))
        return jnp.reshape(g, n.shape) * v / n, jnp.reshape(n, g.shape)

    def make(f):
        fwd = jax.jit(lambda v, g: f(v, g))
        vg = jax.jit(jax.value_and_grad(lambda v, g, c: jnp.sum(f(v, g)[0] * c), (0, 1)))
        return fwd, vg

    rows = []
    noop = jax.jit(lambda v, g: (v, g))
    print(f"jax {jax.__version__}, wnkernels threads {wnkernels.get_num_threads()}, "
          f"best/median of {a.repeats} (us per call)")
    for spec in a.shapes.split(","):
        shape = tuple(int(s) for s in spec.split("x"))
        rng = np.random.default_rng(0)
        vn = rng.standard_normal(shape).astype(np.float32)
        gn = (rng.standard_normal(shape[0]) + 1.5).astype(np.float32)
        cn = rng.standard_normal(shape).astype(np.float32)
        v, g, c = jnp.asarray(vn), jnp.asarray(gn), jnp.asarray(cn)
        cases = {"noop jit": (noop, (v, g))}
        n0 = wnkernels.weight_norm(vn, gn)[1]
        cases["library (numpy)"] = (lambda v, g: wnkernels.weight_norm(v, g), (vn, gn))
        cases["library (numpy) bwd"] = (
            lambda gw, v, g, n: wnkernels.weight_norm_backward(gw, v, g, n), (cn, vn, gn, n0))
        for name, be in (("wnkernels.jax ffi", "ffi"), ("wnkernels.jax callback", "callback"),
                         ("jax.jit formula", None)):
            if be is not None:
                wj.set_backend(be)
                f = lambda v, g: wj.weight_norm(v, g)
            else:
                f = formula
            fwd, vg = make(f)
            # trace now, under this backend (jit traces on the first call)
            jax.block_until_ready((fwd(v, g), vg(v, g, c)))
            cases[name] = (fwd, (v, g))
            cases[name + " vg"] = (vg, (v, g, c))
        wj.set_backend("ffi")
        t = _time_all(cases, a.repeats)
        res = {"noop jit": (t["noop jit"], None),
               "library (numpy)": (t["library (numpy)"], t["library (numpy) bwd"])}
        for name in ("wnkernels.jax ffi", "wnkernels.jax callback", "jax.jit formula"):
            res[name] = (t[name], t[name + " vg"])
        print(f"\n{spec} float32 dim=0                 forward            "
              f"value_and_grad (library: backward)")
        for name, (f, b) in res.items():
            fs = f"{f[0]:10.1f} / {f[1]:10.1f}"
            bs = "" if b is None else f"{b[0]:10.1f} / {b[1]:10.1f}"
            print(f"  {name:26s} {fs}   {bs}")
        rows.append((spec, res))
    return rows


if __name__ == "__main__":
    main()
