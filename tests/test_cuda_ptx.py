"""Every GPU kernel specialization compiles to PTX for sm_80 and sm_90, and fits.

No GPU is needed: ``numba.cuda.compile_ptx`` runs NVVM and nvJitLink links the
PTX for sm_90 (numba-cuda[cu13] ships both).  The compiles run in
subprocesses with ``NUMBA_ENABLE_CUDASIM`` removed from the environment (the
simulator has no compiler), two of them in parallel, each a share of the kernels; this
module itself never imports numba.  Run this file as a script
(``python tests/test_cuda_ptx.py [SHARD NSHARDS]``) to see the raw per-kernel summary
(JSON: PTX facts, registers, compile seconds).

Checked for each (op, dtype, strategy codes, reduction form, dims):

* PTX for the requested target, one ``.entry``, no local memory (no spills,
  no stack-allocated tuples);
* the kernel's parameter list, type by type, is exactly what the fast launch
  path (``wnkernels.cuda._launch.flat``) passes -- so flat-argument launches
  through ``cuda.core`` agree with numba's own argument marshalling;
* shuffle variants use ``shfl.sync.bfly`` (but ``cols`` / ``colsv``, which sum
  columns in shared memory) and shared-memory variants none;
* the 16-byte vector strategies (``regs*``, ``stream``, ``colsv``) load with
  ``ld.global.v4`` (16-byte accesses: ``.v4`` of 32-bit or ``.v2`` of 64-bit
  lanes) and store with ``st.global.v4``; the scalar ones have no vector
  accesses;
* the ticketed strategies (``stream``, ``chunks``, ``cols``, ``colsv``) use
  integer atomics and read other blocks' results with ``ld.global.cg``; the
  others have no atomics;
* (sm_90) linked by nvJitLink, every kernel the planner can choose at the GPU
  defaults fits its block: registers x block <= 65,536, no spills -- the
  kernels carry ``launch_bounds = block``, and the planner never asks for more
  than 256 threads.
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
BLOCK = 256            # the GPU default (wnkernels.cuda._launch.Settings.block)
REGISTERS_PER_BLOCK = 65536
# 16-byte global accesses: four 32-bit or two 64-bit lanes (any cache qualifier)
VLD = re.compile(r"\bld\.global(?:\.\w+)*?\.(?:v4\.[bfsu]32|v2\.[bfsu]64)\b")
VST = re.compile(r"\bst\.global(?:\.\w+)*?\.(?:v4\.[bfsu]32|v2\.[bfsu]64)\b")
VECTOR = ("regs1", "regs2", "regs4", "regs8", "stream", "colsv")
# Strategies with no block-wide reduction: a column's per-thread sums are added
# over the block's rows in shared memory in a fixed order (no shuffles either way).
COLUMN_SUMS = ("cols", "colsv")


def _variants(cc):
    """(op, dtype, shuffle, codes, nk, nr) to compile for one compute capability."""
    from wnkernels.cuda import kernels as K
    out = []
    ops = (K.FORWARD, K.BACKWARD, K.ROW_SCALE)
    if cc != "9.0":      # another target: every strategy of every op, float32
        return [(op, "float32", True, (code,), 1, 1) for op in ops for code in K.CODES]
    # every strategy of every op for float32 and bfloat16 (the bit-trick loads and
    # rounding stores); float16 / float64 (other vector widths) for the strategies
    # whose code depends on the width
    for op in ops:
        for dtype in ("float32", "bfloat16"):
            for code in K.CODES:
                out.append((op, dtype, True, (code,), 1, 1))
    for op in ops:
        for dtype in ("float16", "float64"):
            for code in ("rows", "regs2", "regs8", "stream", "chunks", "colsv"):
                out.append((op, dtype, True, (code,), 1, 1))
    for op in ops:                                       # a mixed group's kernel
        out.append((op, "float32", True, ("rows", "regs4", "stream", "cols"), 1, 1))
    for code in ("rows", "regs2", "stream", "cols"):
        out.append((K.FORWARD, "float32", False, (code,), 1, 1))   # shared-memory form
        out.append((K.BACKWARD, "float16", True, (code,), 2, 3))   # several dims
    return out


def _cost(variant) -> float:
    """A rough relative compile time (16-bit types, register-resident rows, column
    vectors and mixed kernels take longest), to balance the shards."""
    op, dtype, _, codes, _, _ = variant
    c = sum({"regs8": 6, "regs4": 3, "colsv": 3, "stream": 2, "regs2": 1.5}.get(x, 1)
            for x in codes)
    return c * (2.5 if dtype in ("float16", "bfloat16") else 1) * (1.5 if op == 1 else 1)


def _shards(n: int):
    """Every (cc, variant) job, dealt into ``n`` shards of about equal cost."""
    jobs = sorted(((cc, v) for cc in CCS for v in _variants(cc)), key=lambda j: -_cost(j[1]))
    shards, load = [[] for _ in range(n)], [0.0] * n
    for job in jobs:
        k = load.index(min(load))
        shards[k].append(job)
        load[k] += _cost(job[1])
    return shards


def _expected_params(op, dtype, nptr):
    """PTX parameter types the fast launch path passes for this signature."""
    import ctypes
    import numpy as np
    from numba.cuda import types
    from wnkernels.cuda import kernels as K, _launch as L
    args = []
    for t in K.signature(op, dtype, nptr):
        if isinstance(t, types.Array):
            args.append(L._Arr(0, 1, np.dtype(str(t.dtype)).type, None))
        elif isinstance(t, types.BaseTuple):
            args.append((0,) * len(t))
        elif t == types.float64:
            args.append(0.0)
        else:
            args.append(0)
    return ["f64" if isinstance(a, ctypes.c_double) else "u64" for a in L.flat(args)]


def _link(ptx: str, cc: str):
    """(registers, spill bytes) of the kernel, from nvJitLink's ptxas info log."""
    from cuda.bindings import nvjitlink
    arch = "sm_" + cc.replace(".", "")
    h = nvjitlink.create(2, [f"-arch={arch}", "-verbose"])
    try:
        b = ptx.encode()
        nvjitlink.add_data(h, nvjitlink.InputType.PTX, b, len(b), "kernel.ptx")
        nvjitlink.complete(h)
        log = bytearray(nvjitlink.get_info_log_size(h))
        nvjitlink.get_info_log(h, log)
    finally:
        nvjitlink.destroy(h)
    text = log.decode(errors="replace")
    regs = re.search(r"[Uu]sed (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores", text)
    return (int(regs[1]) if regs else None, int(spill[1]) if spill else 0)


def main(shard: int, nshards: int) -> int:
    """Compile shard ``shard`` of ``nshards`` (`_shards`); JSON results on stdout."""
    os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
    import time
    from wnkernels.cuda._numba import cuda, SIM
    from wnkernels.cuda import kernels as K
    assert not SIM
    results = []
    t0 = time.perf_counter()
    for cc, (op, dtype, shuffle, codes, nk, nr) in _shards(nshards)[shard]:
        major, minor = (int(x) for x in cc.split("."))
        nptr = len(K.ROLES[op])
        t1 = time.perf_counter()
        fn = K.make_kernel(op, dtype, BLOCK, shuffle, codes, nk, nr)
        info = dict(cc=cc, op=op, dtype=dtype, shuffle=shuffle, codes=list(codes), nk=nk,
                    nr=nr)
        try:
            ptx, _ = cuda.compile_ptx(fn, K.signature(op, dtype, nptr), cc=(major, minor),
                                      launch_bounds=BLOCK)
        except Exception as e:  # reported per kernel, judged by the test
            results.append(dict(info, error=f"{type(e).__name__}: {e}"[:2000]))
            continue
        regs = spill = None
        if cc == "9.0":
            try:
                regs, spill = _link(ptx, cc)
            except Exception as e:
                info["link_error"] = f"{type(e).__name__}: {e}"[:500]
        entries = re.findall(r"\.entry\s+(\S+)\(", ptx)
        params = re.findall(r"\.param\s+\.(\w+)\s", ptx)
        results.append(dict(
            info, target=(re.search(r"\.target\s+(\w+)", ptx) or [None, None])[1],
            entries=len(entries), params=params, expected=_expected_params(op, dtype, nptr),
            local=".local" in ptx or "__local_depot" in ptx,
            maxntid=bool(re.search(rf"\.maxntid\s+{BLOCK}\b", ptx)),
            shfl=ptx.count("shfl.sync.bfly"), ldcg=ptx.count("ld.global.cg"),
            atom=len(re.findall(r"\batom\.", ptx)),
            vld=len(VLD.findall(ptx)), vst=len(VST.findall(ptx)), regs=regs, spill=spill,
            seconds=round(time.perf_counter() - t1, 2), error=None))
    json.dump({"seconds": time.perf_counter() - t0, "results": results,
               "ticketed": list(K.TICKETED)}, sys.stdout)
    return 0


# ---------------------------------------------------------------- the tests

SHARDS = 2             # compile processes (CI has two cores)


def _compile_shard(k):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    # The installed wnkernels is tested (no source-tree path is added).
    return subprocess.run([sys.executable, os.path.abspath(__file__), str(k), str(SHARDS)],
                          cwd=HERE, env=env, capture_output=True, text=True, timeout=2400)


@pytest.fixture(scope="module")
def ptx_results():
    """{cc: {"results": [...], "ticketed": [...]}} from every shard."""
    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("numba-cuda is not installed (pip install 'numba-cuda[cu13]')")
    with concurrent.futures.ThreadPoolExecutor(SHARDS) as pool:
        runs = list(pool.map(_compile_shard, range(SHARDS)))
    out = {cc: {"results": [], "ticketed": None} for cc in CCS}
    for k, r in enumerate(runs):
        assert r.returncode == 0, f"shard {k}:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
        data = json.loads(r.stdout)
        errs = [x["error"] for x in data["results"] if x["error"]]
        if errs and all(("NVRTC" in e or "NVVM" in e or "libnvvm" in e) and
                        "not found" in e.lower() for e in errs):
            pytest.skip(f"no NVVM/NVRTC available to compile PTX: {errs[0][:300]}")
        for x in data["results"]:
            out[x["cc"]]["results"].append(x)
            out[x["cc"]]["ticketed"] = data["ticketed"]
    for cc in CCS:
        assert len(out[cc]["results"]) == len(_variants(cc)), cc
    return out


def _name(x):
    return f"op{x['op']}/{x['dtype']}/{'+'.join(x['codes'])}/shuffle={x['shuffle']}/{x['nk']},{x['nr']}"


@pytest.mark.parametrize("cc", CCS)
def test_every_specialization_compiles(ptx_results, cc):
    data = ptx_results[cc]
    bad = [f"{_name(x)}: {x['error']}" for x in data["results"] if x["error"]]
    assert not bad, "\n".join(bad)
    want = "sm_" + cc.replace(".", "")
    for x in data["results"]:
        assert x["target"] == want, _name(x)
        assert x["entries"] == 1, _name(x)
        assert not x["local"], f"{_name(x)}: uses local memory"
        assert x["maxntid"], f"{_name(x)}: no launch bounds"


@pytest.mark.parametrize("cc", CCS)
def test_flat_launch_arguments_match_the_kernel_abi(ptx_results, cc):
    for x in ptx_results[cc]["results"]:
        assert x["params"] == x["expected"], (
            f"{_name(x)}: kernel params {x['params']} but the fast path passes {x['expected']}")


@pytest.mark.parametrize("cc", CCS)
def test_reduction_forms(ptx_results, cc):
    for x in ptx_results[cc]["results"]:
        if x["shuffle"] and set(x["codes"]) - set(COLUMN_SUMS):
            assert x["shfl"] > 0, f"{_name(x)}: no warp shuffle"
        else:
            assert x["shfl"] == 0, f"{_name(x)}: unexpected shuffle"


@pytest.mark.parametrize("cc", CCS)
def test_vector_strategies_use_16_byte_accesses(ptx_results, cc):
    seen = set()
    for x in ptx_results[cc]["results"]:
        if any(c in VECTOR for c in x["codes"]):
            seen.update(c for c in x["codes"] if c in VECTOR)
            assert x["vld"] > 0, f"{_name(x)}: no 16-byte ld.global.v4"
            if x["op"] != 2:                         # row scale writes no w
                assert x["vst"] > 0, f"{_name(x)}: no 16-byte st.global.v4"
        else:
            assert x["vld"] == x["vst"] == 0, f"{_name(x)}: unexpected vector access"
    assert seen == set(VECTOR)


@pytest.mark.parametrize("cc", CCS)
def test_ticketed_strategies_synchronize_through_l2(ptx_results, cc):
    """Ticket / arrival counters are integer atomics; other blocks' partials and
    scalars are read with ld.global.cg; nothing else uses atomics (no float ones)."""
    ticketed = set(ptx_results[cc]["ticketed"])
    for x in ptx_results[cc]["results"]:
        if ticketed & set(x["codes"]):
            assert x["atom"] > 0 and x["ldcg"] > 0, _name(x)
        else:
            assert x["atom"] == 0 and x["ldcg"] == 0, _name(x)


def test_every_kernel_fits_its_block(ptx_results):
    """Linked for sm_90: registers x 256 threads within a block's 65,536, and no
    spills, for every strategy the planner can choose (and the mixed groups)."""
    data = ptx_results["9.0"]
    rows = [x for x in data["results"] if not x["error"]]
    errs = [x.get("link_error") for x in rows if x.get("link_error")]
    if errs and all("nvJitLink" in e or "not found" in e.lower() for e in errs):
        pytest.skip(f"nvJitLink is not available: {errs[0]}")
    for x in rows:
        assert x["regs"] is not None, f"{_name(x)}: no register count ({x.get('link_error')})"
        assert x["regs"] * BLOCK <= REGISTERS_PER_BLOCK, f"{_name(x)}: {x['regs']} registers"
        assert x["spill"] == 0, f"{_name(x)}: {x['spill']} bytes of spills"


def test_vector_regexes():
    assert VLD.search("ld.global.v4.u32 {%r1, %r2, %r3, %r4}, [%rd6];")
    assert VLD.search("ld.global.nc.v4.f32 {%f1, %f2, %f3, %f4}, [%rd6];")
    assert VLD.search("ld.global.v2.f64 {%fd1, %fd2}, [%rd6];")
    assert not VLD.search("ld.global.v2.f32 {%f1, %f2}, [%rd6];")
    assert not VLD.search("ld.global.u16 %rs1, [%rd6];")
    assert VST.search("st.global.v4.b32 [%rd8], {%r1, %r2, %r3, %r4};")


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0,
                  int(sys.argv[2]) if len(sys.argv) > 2 else 1))
