"""Every real CUDA kernel specialization compiles to PTX for sm_80 and sm_90.

No GPU is needed: ``numba.cuda.compile_ptx`` runs NVVM (numba-cuda[cu13] ships
it).  The compiles run in subprocesses with ``NUMBA_ENABLE_CUDASIM`` removed from
the environment (the simulator has no compiler), one per compute capability, in
parallel; this module itself never imports numba.  Run this file as a script
(``python tests/test_cuda_ptx.py 9.0``) to see the raw per-kernel summary.

Checked for each (kind, dtype, reduction form, dims):

* PTX for the requested target, one ``.entry``, no local memory (no spills,
  no stack-allocated tuples);
* the kernel's parameter list, type by type, is exactly what the fast launch
  path (``wnkernels.cuda._launch._flat``) passes -- so flat-argument launches
  through ``cuda.core`` agree with numba's own argument marshalling;
* shuffle variants use ``shfl.sync.bfly`` and shared-memory variants none;
* the 16-byte vector kernels (``regs``, ``stream``, and ``cols`` with a vector
  of columns per thread) load with ``ld.global.v4`` (16-byte accesses: ``.v4``
  of 32-bit or ``.v2`` of 64-bit lanes) and store with ``st.global.v4``; the
  scalar kernels have no vector accesses;
* the ticketed kernels (``stream``, ``cols``) use integer atomics and read
  other blocks' results with ``ld.global.cg``; no other kernel has atomics.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CCS = ("8.0", "9.0")
BLOCK = 256
# 16-byte global accesses: four 32-bit or two 64-bit lanes (any cache qualifier)
VLD = re.compile(r"\bld\.global(?:\.\w+)*?\.(?:v4\.[bfsu]32|v2\.[bfsu]64)\b")
VST = re.compile(r"\bst\.global(?:\.\w+)*?\.(?:v4\.[bfsu]32|v2\.[bfsu]64)\b")


def _variants(cc):
    """(kind, dtype, shuffle, sub, nk, nr) to compile for one compute capability."""
    from wnkernels.cuda import _kernels as K
    out = []
    for dtype in K.DTYPES:
        W = K.vec_width(dtype)
        for kind in K.KINDS:
            if kind in ("copy", "zero"):
                out.append((kind, dtype, False, 0, 1, 1))
            elif kind.endswith("regs"):
                for shuffle in (True, False):
                    out.append((kind, dtype, shuffle, (8, 2), 1, 1))
                out.append((kind, dtype, True, (BLOCK, 4), 1, 1))   # a block per row
            elif kind.endswith("stream"):
                out += [(kind, dtype, True, 0, 1, 1), (kind, dtype, False, 0, 1, 1)]
            elif kind.endswith("cols"):
                out += [(kind, dtype, True, (32, 1), 1, 1), (kind, dtype, True, (32, 1), 2, 3),
                        (kind, dtype, False, (8, W), 1, 1), (kind, dtype, True, (8, W), 1, 2)]
            else:
                sub = 16 if "group" in kind else 0
                out += [(kind, dtype, True, sub, 1, 1), (kind, dtype, False, sub, 1, 1),
                        (kind, dtype, True, sub, 2, 3)]   # several kept / reduced dims
    for kind in ("fwd_regs", "bwd_regs", "fwd_stream", "bwd_stream"):
        out.append((kind, "float32", True, (BLOCK, 4) if "regs" in kind else 0, 2, 1))
    if cc == "9.0":
        for g in (8, 32):
            out += [("fwd_group", "float32", True, g, 1, 1), ("bwd_group", "float32", True, g, 1, 1)]
        out += [("fwd_regs", "float32", True, (32, 8), 1, 1),
                ("bwd_regs", "float16", True, (32, 8), 1, 1)]
    return out


def _is_vector(x) -> bool:
    """Kernels that move 16-byte vectors: regs, stream, and cols with VW > 1."""
    if x["kind"].endswith(("regs", "stream")):
        return True
    return x["kind"].endswith("cols") and x["sub"][1] > 1


def _expected_params(kind, dtype, nk, nr):
    """PTX parameter types the fast launch path passes for this signature."""
    import ctypes
    import numpy as np
    from numba.cuda import types
    from wnkernels.cuda import _kernels as K, _launch as L
    args = []
    for t in K.signature(kind, dtype, nk, nr):
        if isinstance(t, types.Array):
            args.append(L._Arr(0, 1, np.dtype(str(t.dtype)).type, None))
        elif isinstance(t, types.BaseTuple):
            args.append((0,) * len(t))
        elif t == types.float64:
            args.append(0.0)
        else:
            args.append(0)
    return ["f64" if isinstance(a, ctypes.c_double) else "u64" for a in L._flat(args)]


def main(cc: str) -> int:
    os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
    import time
    from wnkernels.cuda._numba import cuda, SIM
    from wnkernels.cuda import _kernels as K
    assert not SIM
    major, minor = (int(x) for x in cc.split("."))
    results = []
    t0 = time.perf_counter()
    for kind, dtype, shuffle, sub, nk, nr in _variants(cc):
        fn = K.make_kernel(kind, dtype, BLOCK, shuffle, sub)
        try:
            ptx, _ = cuda.compile_ptx(fn, K.signature(kind, dtype, nk, nr),
                                      cc=(major, minor))
        except Exception as e:  # reported per kernel, judged by the test
            results.append(dict(kind=kind, dtype=dtype, shuffle=shuffle, sub=sub,
                                nk=nk, nr=nr, error=f"{type(e).__name__}: {e}"[:2000]))
            continue
        entries = re.findall(r"\.entry\s+(\S+)\(", ptx)
        params = re.findall(r"\.param\s+\.(\w+)\s", ptx)
        results.append(dict(
            kind=kind, dtype=dtype, shuffle=shuffle, sub=sub, nk=nk, nr=nr,
            target=(re.search(r"\.target\s+(\w+)", ptx) or [None, None])[1],
            entries=len(entries), params=params,
            expected=_expected_params(kind, dtype, nk, nr),
            local=".local" in ptx or "__local_depot" in ptx,
            shfl=ptx.count("shfl.sync.bfly"), ldcg=ptx.count("ld.global.cg"),
            atom=len(re.findall(r"\batom\.", ptx)),
            vld=len(VLD.findall(ptx)), vst=len(VST.findall(ptx)), error=None))
    json.dump({"cc": cc, "seconds": time.perf_counter() - t0, "results": results,
               "ticketed": list(K.TICKETED)}, sys.stdout)
    return 0


# ---------------------------------------------------------------- the tests

def _compile_all(cc):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    # The installed wnkernels is tested (no source-tree path is added).
    r = subprocess.run([sys.executable, os.path.abspath(__file__), cc], cwd=HERE,
                       env=env, capture_output=True, text=True, timeout=900)
    return r


@pytest.fixture(scope="module")
def ptx_results():
    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("numba-cuda is not installed (pip install 'numba-cuda[cu13]')")
    with concurrent.futures.ThreadPoolExecutor(len(CCS)) as pool:
        runs = dict(zip(CCS, pool.map(_compile_all, CCS)))
    out = {}
    for cc, r in runs.items():
        assert r.returncode == 0, f"cc {cc}:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
        data = json.loads(r.stdout)
        errs = [x["error"] for x in data["results"] if x["error"]]
        if errs and all(("NVRTC" in e or "NVVM" in e or "libnvvm" in e) and
                        "not found" in e.lower() for e in errs):
            pytest.skip(f"no NVVM/NVRTC available to compile PTX: {errs[0][:300]}")
        out[cc] = data
    return out


@pytest.mark.parametrize("cc", CCS)
def test_every_specialization_compiles(ptx_results, cc):
    data = ptx_results[cc]
    bad = [f"{x['kind']}/{x['dtype']}/shuffle={x['shuffle']}/nk={x['nk']},nr={x['nr']}: "
           f"{x['error']}" for x in data["results"] if x["error"]]
    assert not bad, "\n".join(bad)
    want = "sm_" + cc.replace(".", "")
    for x in data["results"]:
        name = f"{x['kind']}/{x['dtype']}/shuffle={x['shuffle']}/{x['nk']},{x['nr']}"
        assert x["target"] == want, name
        assert x["entries"] == 1, name
        assert not x["local"], f"{name}: uses local memory"


@pytest.mark.parametrize("cc", CCS)
def test_flat_launch_arguments_match_the_kernel_abi(ptx_results, cc):
    for x in ptx_results[cc]["results"]:
        assert x["params"] == x["expected"], (
            f"{x['kind']}/{x['dtype']}/{x['nk']},{x['nr']}: kernel params "
            f"{x['params']} but the fast path passes {x['expected']}")


@pytest.mark.parametrize("cc", CCS)
def test_reduction_forms(ptx_results, cc):
    for x in ptx_results[cc]["results"]:
        reduces = x["kind"].endswith(("block", "group", "part", "regs", "stream"))
        if x["shuffle"] and reduces:
            assert x["shfl"] > 0, f"{x['kind']}/{x['dtype']}: no warp shuffle"
        if not x["shuffle"]:
            assert x["shfl"] == 0, f"{x['kind']}/{x['dtype']}: unexpected shuffle"


@pytest.mark.parametrize("cc", CCS)
def test_vector_kernels_use_16_byte_accesses(ptx_results, cc):
    seen = set()
    for x in ptx_results[cc]["results"]:
        name = f"{x['kind']}/{x['dtype']}/sub={x['sub']}/shuffle={x['shuffle']}/{x['nk']},{x['nr']}"
        if _is_vector(x):
            seen.add(x["kind"])
            assert x["vld"] > 0, f"{name}: no 16-byte ld.global.v4"
            assert x["vst"] > 0, f"{name}: no 16-byte st.global.v4"
        else:
            assert x["vld"] == x["vst"] == 0, f"{name}: unexpected vector access"
    assert seen == {"fwd_regs", "bwd_regs", "fwd_stream", "bwd_stream", "fwd_cols", "bwd_cols"}


@pytest.mark.parametrize("cc", CCS)
def test_ticketed_kernels_synchronize_through_l2(ptx_results, cc):
    """Ticket / arrival counters are integer atomics; other blocks' partials and
    scales are read with ld.global.cg; nothing else uses atomics (no float ones)."""
    ticketed = set(ptx_results[cc]["ticketed"])
    for x in ptx_results[cc]["results"]:
        name = f"{x['kind']}/{x['dtype']}/sub={x['sub']}"
        if x["kind"] in ticketed:
            assert x["atom"] > 0 and x["ldcg"] > 0, name
        else:
            assert x["atom"] == 0 and x["ldcg"] == 0, name


def test_vector_regexes():
    assert VLD.search("ld.global.v4.u32 {%r1, %r2, %r3, %r4}, [%rd6];")
    assert VLD.search("ld.global.nc.v4.f32 {%f1, %f2, %f3, %f4}, [%rd6];")
    assert VLD.search("ld.global.v2.f64 {%fd1, %fd2}, [%rd6];")
    assert not VLD.search("ld.global.v2.f32 {%f1, %f2}, [%rd6];")
    assert not VLD.search("ld.global.u16 %rs1, [%rd6];")
    assert VST.search("st.global.v4.b32 [%rd8], {%r1, %r2, %r3, %r4};")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "9.0"))
