"""Host-side planning of the GPU kernels: a strategy per item, the item table.

`plan_item` turns one call's `wnkernels._planner.Plan` into an `Item`: its
strategy code and parameters (`plan_strategy` has the rules), its table
record, the workspace it needs, and how each of its span addresses is formed
from a data pointer (a fixed byte delta).  `Launch` lays a list of items out
as one table (independent items first), assigns their units and workspace
offsets, and picks the grid.  Everything here depends only on the plans, the
16-byte phases the planner recorded and the device facts, so a call is
bitwise reproducible -- and an item is planned the same alone or in a group.
"""

from __future__ import annotations

import numpy as np

from .._planner import BACKWARD, FORWARD, ROW_SCALE
from ._vec import width
from .kernels import (CODE, Fields, INDEPENDENT, LAYOUT, ROLES, norm_dtype,
                      storage_dtype)
from .kernels._regs import R_CHOICES

__all__ = ["Item", "Launch", "plan_item", "plan_strategy", "lanes"]


def _pow2(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def lanes(rowlen: int, block: int) -> int:
    """Lanes per row for short rows (``rows``, ``regs``): 8 / 16 / 32 for rows of
    <= 64 / 256 / 1024 elements, at most the block."""
    return min(8 if rowlen <= 64 else 16 if rowlen <= 256 else 32, block)


class Item:
    """One item of a launch (see the module docstring)."""
    __slots__ = ("code", "op", "dtype", "rec", "nunits", "npart", "nsync", "grid", "roles",
                 "vector", "nk", "nr", "layout")

    def __repr__(self):
        keep = ("LANES", "PH", "NCHUNK", "CHUNK", "LAG")
        fields = {k: self.rec[getattr(Fields, k)] for k in keep if self.rec[getattr(Fields, k)]}
        return f"Item({self.code}, rows={self.rec[Fields.NROWS]}, rowlen={self.rec[Fields.ROWLEN]}, {fields})"


# ---------------------------------------------------------------- strategy

def _origin_phase(plan, a: int) -> int:
    """Phase (bytes mod 16) of (row 0, element 0) of layout array ``a``: its
    argument's address mod 16 when planned (outputs allocated per call: 0)."""
    role = LAYOUT[plan.op][a]
    isz = np.dtype(storage_dtype(plan.dtype)).itemsize
    if plan.op == ROW_SCALE and role == "w":     # as the forward's fresh w
        return (plan.layout.offsets[a] * isz) % 16
    src = _source(plan.op, role)
    if src[0] == "arg":
        ph = plan.args[src[1]].phase
    else:
        out = plan.outputs[src[1]]
        ph = plan.args[out.arg].phase if out.arg is not None else 0
    return (ph + plan.layout.offsets[a] * isz) % 16


def _layout_span(layout, a):
    """(lo, count): the elements of layout array ``a``, relative to its origin."""
    if layout.nrows == 0 or layout.rowlen == 0:
        return 0, 0
    lo = hi = 0
    for n, s in zip(layout.kept_shape + layout.red_shape,
                    layout.kept_strides[a] + layout.red_strides[a]):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi - lo + 1


def _arrays(plan):
    """The layout arrays of the plan (row scale: the forward's, v and w)."""
    return range(len(LAYOUT[plan.op]))


def row_phase(plan, vector: bool):
    """The phase (elements from a 16-byte boundary) of array 0's span base when the
    16-byte row kernels (``regs``, ``stream``) can run, else None: every row one
    contiguous run (one reduced dim of stride 1) in every array, at the same
    phase in every array (origins congruent mod 16 bytes, kept strides too)."""
    lay = plan.layout
    if not vector or lay.nrows == 0 or len(lay.red_shape) != 1:
        return None
    isz = np.dtype(storage_dtype(plan.dtype)).itemsize
    W = width(isz)
    if lay.rowlen < W:
        return None
    o0 = _origin_phase(plan, 0)
    for a in _arrays(plan):
        o = _origin_phase(plan, a)
        if lay.red_strides[a][0] != 1 or o % isz or (o - o0) % 16:
            return None
        for n, st, st0 in zip(lay.kept_shape, lay.kept_strides[a], lay.kept_strides[0]):
            if n > 1 and ((st - st0) * isz) % 16:
                return None
    lo, _ = _layout_span(lay, 0)
    return ((o0 + lo * isz) % 16) // isz


def _is_cols(lay) -> bool:
    """Kept axis contiguous (``dim=-1`` style): coalesce along it."""
    kin = abs(lay.kept_strides[0][-1]) if lay.kept_shape else 0
    rin = abs(lay.red_strides[0][-1]) if lay.red_shape else 1
    return kin == 1 and rin != 1 and lay.nrows > 1


def _cols_vector(plan, vector: bool) -> bool:
    """``colsv`` may move 16-byte vectors of columns: one kept dim of stride 1, every
    reduced stride a multiple of the vector width, 16-byte aligned origins."""
    lay = plan.layout
    if not vector or len(lay.kept_shape) != 1:
        return False
    isz = np.dtype(storage_dtype(plan.dtype)).itemsize
    W = width(isz)
    if lay.nrows < W:
        return False
    for a in _arrays(plan):
        if lay.kept_strides[a][0] != 1 or _origin_phase(plan, a) % 16:
            return False
        if any(s % W for s in lay.red_strides[a]):
            return False
    return True


def _regs_shape(lay, W, nsm, B, max_regs):
    """(G, R) for ``regs`` -- G lanes per row holding R vectors each -- or None when
    a row does not fit in registers (or too few rows to fill the GPU)."""
    rowlen, nrows = lay.rowlen, lay.nrows
    nv = _cdiv(rowlen, W)
    top = min(max_regs, R_CHOICES[-1])
    if rowlen <= 1024:
        G = lanes(rowlen, B)
        R = _pow2(_cdiv(nv, G))
        if G >= W - 1 and R <= top:
            return G, R
    if nrows >= nsm or nrows * rowlen <= 2 * B * W * top * nsm:
        R = _pow2(_cdiv(nv, B))
        if B >= W - 1 and R <= top:
            return B, R
    return None


def plan_strategy(plan, S, nsm, strategy=None):
    """(code, lanes, ph, nchunk, chunk) of one call on a device with ``nsm``
    SMs under settings ``S`` (`_launch.Settings`).

    Default choice (``B`` = ``S.block``):

    * ``rowlen == 0``                    -> ``rows`` (writes norms / grad_g only)
    * kept axis contiguous (``dim=-1``)  -> ``colsv`` where 16-byte column vectors
                                            fit, else ``cols``
    * rows contiguous, one 16-byte phase -> ``regs<R>`` if a row fits the registers
                                            of G lanes (8 / 16 / 32 for rows <= 64 /
                                            256 / 1024, else the block; R <= 8
                                            vectors a lane) with enough rows; else
                                            ``stream``
    * otherwise (scalar access)          -> ``rows`` (G lanes for rows <= 1024),
                                            ``chunks`` (fewer than 2 x SMs rows of
                                            >= 16 blocks' worth), else ``rows`` with
                                            a block per row

    ``strategy`` (tests, benchmarks) forces ``rows[:G]``, ``regs[:G:R]``,
    ``stream``, ``chunks[:nchunk]``, ``cols[:TX]`` or ``colsv[:TX]``.
    """
    lay = plan.layout
    B = S.block
    isz = np.dtype(storage_dtype(plan.dtype)).itemsize
    W = width(isz)
    nrows, rowlen = lay.nrows, lay.rowlen
    name, _, arg = (strategy or "").partition(":")
    if name and name not in ("rows", "regs", "stream", "chunks", "cols", "colsv"):
        raise ValueError(f"unknown strategy {strategy!r}")
    if rowlen == 0:
        return "rows", min(8, B), 0, 0, 0
    ph = row_phase(plan, S.vector) if name in ("", "regs", "stream") else None
    if name in ("regs", "stream") and ph is None:
        raise ValueError(f"strategy {name!r} needs contiguous rows in the same 16-byte "
                         "phase in every array (and the vector kernels enabled)")
    if name == "colsv" and not _cols_vector(plan, True):
        raise ValueError("strategy 'colsv' needs 16-byte aligned column vectors")
    if not name:
        if _is_cols(lay):
            name = "colsv" if _cols_vector(plan, S.vector) else "cols"
        elif ph is not None:
            name = "regs" if _regs_shape(lay, W, nsm, B, S.max_regs) else "stream"
        elif rowlen <= 1024:
            name = "rows"
        elif nrows < 2 * nsm and rowlen >= 16 * B:
            name = "chunks"
        else:
            name = "rows"
            arg = str(B)
    if name == "rows":
        return "rows", int(arg) if arg else lanes(rowlen, B), 0, 0, 0
    if name == "regs":
        if arg:
            G, R = (int(x) for x in arg.split(":"))
        else:
            G, R = _regs_shape(lay, W, nsm, B, S.max_regs) or (None, None)
            if G is None:
                raise ValueError("strategy 'regs': the rows do not fit in registers")
        if R not in R_CHOICES:
            raise ValueError(f"regs: R must be one of {R_CHOICES}")
        if G * R < _cdiv(rowlen, W):
            raise ValueError(f"regs: {G} lanes x {R} vectors do not hold rows of {rowlen}")
        if G != B and (G & (G - 1) or G > 32 or G > B) or G < W - 1:
            raise ValueError("regs: lanes per row: a power of two <= min(32, block), "
                             "or the block; at least W - 1")
        return f"regs{R}", G, ph, 0, 0
    if name == "stream":
        chunk = B * W * S.stream_vectors
        return "stream", 0, ph, _cdiv(rowlen, chunk), chunk
    if name == "chunks":
        n = int(arg) if arg else max(1, min(_cdiv(8 * nsm, nrows), max(rowlen // (16 * B), 1)))
        chunk = _cdiv(_cdiv(rowlen, n), B) * B
        return "chunks", 0, 0, _cdiv(rowlen, chunk), chunk
    VW = W if name == "colsv" else 1
    TX = int(arg) if arg else min(S.cols_tx, B, max(128 // (VW * isz), 1),
                                  _pow2(_cdiv(nrows, VW)))
    if TX < 1 or B % TX:
        raise ValueError("cols: threads across the columns must divide the block")
    chunk = (B // TX) * S.cols_steps
    return name, TX, 0, _cdiv(rowlen, chunk), chunk


# ---------------------------------------------------------------- roles and spans

def _source(op, role):
    """Where a role's data pointer comes from: ("arg", k) or ("out", k)."""
    return {
        FORWARD: {"v": ("arg", 0), "w": ("out", 0), "g": ("arg", 1), "norms": ("out", 1)},
        ROW_SCALE: {"v": ("arg", 0), "g": ("arg", 1), "scale": ("out", 0),
                    "norms": ("out", 1)},
        BACKWARD: {"grad_w": ("arg", 0), "v": ("arg", 1), "grad_v": ("out", 0),
                   "g": ("arg", 2), "norms": ("arg", 3), "grad_g": ("out", 1)},
    }[op][role]


def _roles(plan):
    """Per role: (source, byte delta from its data pointer to its span, span
    length, element base of the origin in the span)."""
    lay = plan.layout
    isz = np.dtype(storage_dtype(plan.dtype)).itemsize
    nsz = np.dtype(norm_dtype(plan.dtype)).itemsize
    nrows = lay.nrows
    layout_of = {r: a for a, r in enumerate(LAYOUT[plan.op])}
    out = []
    for role in ROLES[plan.op]:
        src = _source(plan.op, role)
        if role in layout_of:
            a = layout_of[role]
            lo, n = _layout_span(lay, a)
            out.append((src, (lay.offsets[a] + lo) * isz, n, -lo))
        elif role in ("g", "norms") and src[0] == "arg":
            s = plan.g_stride if role == "g" else plan.n_stride
            sz = isz if role == "g" else nsz
            lo = min(0, (nrows - 1) * s)
            out.append((src, lo * sz, abs((nrows - 1) * s) + 1 if nrows else 0, -lo))
        else:   # a contiguous per-row output
            out.append((src, 0, nrows, 0))
    return tuple(out)


def _pad(shape, strides, n):
    """Shape and strides padded to n dims with leading size-1 dims (they add 0)."""
    k = n - len(shape)
    return (1,) * k + tuple(shape), [(0,) * k + tuple(s) for s in strides]


def plan_item(plan, S, nsm, l2, strategy=None) -> Item:
    """The `Item` of one call (see the module docstring)."""
    lay = plan.layout
    code, G, ph, nchunk, chunk = plan_strategy(plan, S, nsm, strategy)
    it = Item()
    it.code, it.op, it.dtype, it.layout = code, plan.op, plan.dtype, lay
    it.roles = _roles(plan)
    it.vector = code.startswith(("regs", "stream", "colsv"))
    it.nk, it.nr = max(len(lay.kept_shape), 1), max(len(lay.red_shape), 1)
    B = S.block
    nrows = lay.nrows
    it.nunits = it.npart = it.nsync = 0
    it.grid = 1
    lag = 0
    isz = np.dtype(storage_dtype(plan.dtype)).itemsize
    bwd = plan.op == BACKWARD
    if code in INDEPENDENT:
        it.nunits = _cdiv(nrows, B // G) if nrows else 0
        it.grid = max(min(it.nunits, 16 * nsm), 1)
    else:
        if code in ("cols", "colsv"):
            VW = width(isz) if code == "colsv" else 1
            ntile = _cdiv(nrows, G * VW)
            nparts = ntile * nchunk
            item_bytes = chunk * G * VW * isz
            it.npart = nparts * G * VW + (2 if bwd else 1) * nrows
            it.nsync = 1 + ntile
        else:
            nparts = nrows * nchunk
            item_bytes = chunk * isz
            it.npart = nparts + (2 if bwd else 1) * nrows
            it.nsync = 1 + nrows
        traffic = item_bytes * (3 if bwd else 2)   # bytes through L2 per part + finish
        lag = int(0.5 * l2 // max(traffic, 1))
        lag = min(max(lag, nchunk - 1), nparts)
        it.grid = max(min(2 * nparts, nsm * max(1, 2048 // B)), 1)
    rec = [0] * Fields.HEADER
    rec[Fields.CODE] = CODE[code]
    rec[Fields.NROWS], rec[Fields.ROWLEN] = nrows, lay.rowlen
    rec[Fields.GS], rec[Fields.NS] = plan.g_stride, plan.n_stride
    rec[Fields.NU] = it.nunits
    rec[Fields.LANES], rec[Fields.PH] = G, ph
    rec[Fields.NCHUNK], rec[Fields.CHUNK], rec[Fields.LAG] = nchunk, chunk, lag
    it.rec = rec
    return it


class Launch:
    """A list of items laid out as one launch: the table (independent items
    first, each with its first unit; ticketed items with their workspace
    offsets), the grid, the workspace sizes and the kernel's codes."""

    def __init__(self, items, slots=None):
        # items with no rows have no work (their outputs are empty)
        self.keep = [j for j, it in enumerate(items) if it.rec[Fields.NROWS] > 0]
        self.items = [items[j] for j in self.keep]
        self.order = sorted(range(len(self.items)),
                            key=lambda k: self.items[k].code not in INDEPENDENT)
        items = [self.items[k] for k in self.order]
        op = items[0].op if items else FORWARD
        self.nk = max([it.nk for it in items] + [1])
        self.nr = max([it.nr for it in items] + [1])
        F = Fields(op, self.nk, self.nr)
        self.fields = F
        self.codes = tuple(sorted({it.code for it in items}, key=list(CODE).index))
        self.nitems = len(items)
        self.nindep = sum(it.code in INDEPENDENT for it in items)
        self.slots = max(slots or self.nitems, self.nitems)
        tab = np.zeros(max(self.nitems, 1) * F.size, np.int64)
        u = po = so = 0
        self.grid = 1
        for i, it in enumerate(items):
            rec = list(it.rec)
            rec[Fields.U0] = u
            u += it.nunits
            rec[Fields.POFF], rec[Fields.SOFF] = po, so
            po += it.npart
            so += it.nsync
            o = i * F.size
            tab[o:o + Fields.HEADER] = rec
            for k, (_, _, n, base) in enumerate(it.roles):
                tab[o + F.base + k] = base
                tab[o + F.length + k] = n
            self._dims(tab, o, it.layout)
            self.grid = max(self.grid, it.grid)
        self.nunits, self.npart, self.nsync = u, po, so
        self.tab = tab
        self.vector = any(it.vector for it in items)

    def _dims(self, tab, o, lay):
        """An item's dims, padded to the launch's NK / NR."""
        F = self.fields
        if lay.kept_shape:
            ks, kst = _pad(lay.kept_shape, lay.kept_strides[:F.narr], F.nk)
        else:
            ks, kst = (1,) * F.nk, [(0,) * F.nk] * F.narr
        if lay.red_shape:
            rs, rst = _pad(lay.red_shape, lay.red_strides[:F.narr], F.nr)
        else:
            rs, rst = (1,) * F.nr, [(0,) * F.nr] * F.narr
        tab[o + F.ks:o + F.ks + F.nk] = ks
        tab[o + F.rs:o + F.rs + F.nr] = rs
        for a in range(F.narr):
            tab[o + F.kst + a * F.nk:o + F.kst + (a + 1) * F.nk] = kst[a]
            tab[o + F.rst + a * F.nr:o + F.rst + (a + 1) * F.nr] = rst[a]

    def ptrs(self, data):
        """The launch's ``ptrs`` parameter: ``data[k][source]`` is the data pointer
        of ("arg", j) or ("out", j) of item k (in the order given to the
        constructor); padded with zeros to the launch's slots."""
        out = []
        for k in self.order:
            d = data[self.keep[k]]
            for src, delta, _, _ in self.items[k].roles:
                out.append(d[src] + delta)
        F = self.fields
        out += [0] * ((self.slots - self.nitems) * F.npa)
        return tuple(out)
