"""The table kernel: one launch runs a table of items, each with its own strategy.

A single call is a table of one item; a grouped call (a model's weights) is
one launch of many.  An item's strategy is a *code* (`CODES`); the kernel for
a set of codes is generated with a branch per code present (`make_kernel`),
specialized on (op, dtype, block, reduction form, codes, padded dims, number
of pointers).  Because each strategy's arithmetic depends only on its item's
table record -- never on the launch grid, the block's other work or the
group -- an item computes exactly the same bits alone and in any group.

The launch: blocks first take *units* of the independent items (codes in
`INDEPENDENT`: a block's rows) in grid-stride order -- the item of unit ``u``
by binary search over the items' first units -- then every block joins each
ticketed item's ticket loop in table order (`TICKETED`, see `_tickets`).

Kernel parameters (and `signature`)::

    ptrs    UniTuple(int64, NPTR)  the items' span addresses, NPA per item (`ROLES`)
    tab     int64[:]               the items' records, TS fields each (`Fields`)
    part    A[:]                   ticketed items' partial sums / scalars (per call)
    sync    int64[:]               ticketed items' counters, zeroed (per call)
    eps     float64
    nunits  int64                  units of all independent items
    nindep  int64                  independent items (they come first in the table)
    nitems  int64
"""

from __future__ import annotations

import numpy as np

from ._common import Env, Fields, GEN_CUDA, acc_dtype, quiet, device
from .._numba import types

__all__ = ["CODES", "CODE", "INDEPENDENT", "TICKETED", "make_kernel", "signature",
           "kernel_name"]

CODES = ("rows", "regs1", "regs2", "regs4", "regs8", "stream", "chunks", "cols", "colsv")
CODE = {name: k for k, name in enumerate(CODES)}
INDEPENDENT = ("rows", "regs1", "regs2", "regs4", "regs8")
TICKETED = ("stream", "chunks", "cols", "colsv")
# The modules that build each code's function.
_MODULE = {"rows": "_rows", "regs1": "_regs", "regs2": "_regs", "regs4": "_regs",
           "regs8": "_regs", "stream": "_tickets", "chunks": "_tickets", "cols": "_cols",
           "colsv": "_cols"}
_OPS = {0: "fwd", 1: "bwd", 2: "scale"}


def kernel_name(op, dtype, codes) -> str:
    return f"wn_{_OPS[op]}_{dtype}_{'_'.join(codes)}"


def _find_source(TS, U0):
    return (
        "def find(tab, u, nindep):\n"
        "    lo = 0\n"
        "    hi = nindep - 1\n"
        "    while lo < hi:\n"
        "        mid = (lo + hi + 1) // 2\n"
        f"        if tab[mid * {TS} + {U0}] <= u:\n"
        "            lo = mid\n"
        "        else:\n"
        "            hi = mid - 1\n"
        "    return lo\n")


def make_kernel(op: int, dtype: str, block: int, shuffle: bool, codes, nk: int, nr: int):
    """The Python function of the table kernel for these items (jit it with
    ``cuda.jit`` or compile it with ``compile_ptx`` against `signature`).

    ``block`` is the number of threads per block (a power of two, >= 32 with
    ``shuffle``); ``codes`` the strategies present (a sorted tuple of `CODES`);
    ``nk`` / ``nr`` the kept / reduced dims every item is padded to.
    """
    from importlib import import_module
    B = int(block)
    if B & (B - 1) or B < 1:
        raise ValueError("block must be a power of two")
    if shuffle and B < 32:
        raise ValueError("the shuffle reduction needs blocks of >= 32 threads")
    codes = tuple(sorted(set(codes), key=CODES.index))
    bad = [c for c in codes if c not in CODE]
    if bad or not codes:
        raise ValueError(f"unknown or no strategy codes: {codes!r}")
    env = Env(op, dtype, B, shuffle, nk, nr)
    fns = {}
    for mod in dict.fromkeys(_MODULE[c] for c in codes):
        fns.update(import_module(f"{__package__}.{mod}").make(env))
    F = env.F
    vw = env.W if "colsv" in codes else 1
    indep = [c for c in codes if c in INDEPENDENT]
    ticketed = [c for c in codes if c in TICKETED]
    lines = ["def kernel(ptrs, tab, part, sync, eps, nunits, nindep, nitems):",
             f"    sh = cuda.shared.array({B * vw}, ATY)",
             "    shi = cuda.shared.array(2, types.int64)",
             "    t = cuda.threadIdx.x"]
    if indep:
        lines += ["    u = cuda.blockIdx.x",
                  "    while u < nunits:",       # block-uniform: every thread reaches
                  "        i = find(tab, u, nindep)",     # the reductions
                  f"        o = i * {F.size}",
                  f"        code = tab[o + {Fields.CODE}]",
                  f"        unit = u - tab[o + {Fields.U0}]"]
        for k, c in enumerate(indep):
            lines.append(f"        {'if' if k == 0 else 'elif'} code == {CODE[c]}:")
            lines.append(f"            f_{c}(ptrs, tab, i, unit, eps, sh, shi, t)")
        lines.append("        u += cuda.gridDim.x")
    if ticketed:
        lines += ["    i = nindep",
                  "    while i < nitems:",
                  f"        code = tab[i * {F.size} + {Fields.CODE}]"]
        for k, c in enumerate(ticketed):
            lines.append(f"        {'if' if k == 0 else 'elif'} code == {CODE[c]}:")
            lines.append(f"            f_{c}(ptrs, tab, i, part, sync, eps, sh, shi, t)")
        lines.append("        i += 1")
    ns = {f"f_{c}": fns[c] for c in codes}
    find = device(_exec(_find_source(F.size, Fields.U0), "find", {}))
    ns.update(cuda=GEN_CUDA, types=types, ATY=env.ATY, find=find)
    fn = _exec("\n".join(lines) + "\n", "kernel", ns)
    fn.__name__ = fn.__qualname__ = kernel_name(op, dtype, codes)
    return quiet(fn)


def _exec(src, name, ns):
    exec(compile(src, f"<wnkernels {name}>", "exec"), ns)
    return ns[name]


def signature(op: int, dtype: str, nptr: int) -> tuple:
    """Numba argument types of the table kernel with ``nptr`` pointers."""
    P = types.Array({np.float32: types.float32, np.float64: types.float64}[acc_dtype(dtype)],
                    1, "C")
    I = types.Array(types.int64, 1, "C")
    i8 = types.int64
    return (types.UniTuple(i8, nptr), I, P, I, types.float64, i8, i8, i8)

