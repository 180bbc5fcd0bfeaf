"""``cols`` / ``colsv``: the kept axis is the contiguous one (``dim=-1``).

The ticket protocol of `_tickets` over tiles of ``CB = TX x VW`` consecutive
kept indices ("columns", contiguous in memory) x chunks of ``chunk`` reduced
indices.  Thread (tx, ty) owns columns ``tile * CB + tx * VW + [0, VW)`` and
walks reduced indices ty, ty + TY, ... of the chunk (``TY = B / TX``), so each
warp access covers ``TX x VW`` adjacent columns: coalesced along the kept
axis, no transpose.  ``colsv`` moves 16-byte vectors of ``VW = W`` columns
(one kept dim of stride 1, reduced strides multiples of W, 16-byte aligned
origins: the host checks); ``cols`` (``VW = 1``) takes any layout.  A chunk's
partials: the per-thread column sums added over ty in order (ty == 0
threads), so the sum order is fixed by the tile geometry.  ``TX`` is a table
field (``LANES``).
"""

from __future__ import annotations

from ._common import BACKWARD, ROW_SCALE, Fields, cuda, device, exec_source
from ._tickets import protocol

__all__ = ["make"]


def _helpers(env, VW):
    """Tuples of VW consecutive columns: loads (one 16-byte vector when all VW
    columns exist, else element by element with zeros past ``n``), stores,
    per-column accumulators and scales.  The same per-element arithmetic as
    everywhere else."""
    idx = range(VW)

    def tup(fmt):
        return "(" + "".join(fmt.format(k=k) + ", " for k in idx) + ")"

    if VW == 1:
        io = ("def cload(a, o, n):\n    return (a[o],)\n\n"
              "def cstore(a, o, n, x):\n    a[o] = x[0]\n\n")
    else:
        io = ("def cload(a, o, n):\n    if n >= VW:\n        return vload(a, o)\n"
              "    z = S(0)\n    return " + tup("a[o + {k}] if n > {k} else z") + "\n\n"
              "def cstore(a, o, n, x):\n    if n >= VW:\n        vstore(a, o, x)\n"
              "    else:\n"
              + "".join(f"        if n > {k}:\n            a[o + {k}] = x[{k}]\n" for k in idx)
              + "\n")
    src = (io
           + "def czero():\n    z = A(0)\n    return " + tup("z") + "\n\n"
           + "def cput(sh, i, acc):\n"
           + "".join(f"    sh[i + {k}] = acc[{k}]\n" for k in idx) + "\n"
           + "def cparts(p, i, n):\n    z = A(0)\n    return "
           + tup("ldcg(p, i + {k}) if n > {k} else z") + "\n\n"
           + "def cscales(p, i, n, step):\n    z = C(0)\n    return "
           + tup("C(ldcg(p, i + {k} * step)) if n > {k} else z") + "\n\n"
           + "def cadd(acc, x):\n    return " + tup("acc[{k}] + x[{k}]") + "\n\n"
           + "def csq(acc, x):\n    return "
           + tup("acc[{k}] + A(load(x[{k}])) * A(load(x[{k}]))") + "\n\n"
           + "def cdot(acc, a, b):\n    return "
           + tup("acc[{k}] + A(load(a[{k}])) * A(load(b[{k}]))") + "\n\n"
           + "def cscale(x, s):\n    return " + tup("store(load(x[{k}]) * s[{k}])") + "\n\n"
           + "def cgrad(a, b, ca, cb):\n    return "
           + tup("store(ca[{k}] * load(a[{k}]) - cb[{k}] * load(b[{k}]))") + "\n")
    names = ("czero", "cload", "cstore", "cput", "cparts", "cscales", "cadd", "csq", "cdot",
             "cscale", "cgrad")
    fns = exec_source(src, *names, VW=VW, load=env.load, store=env.store, A=env.A,
                      C=env.C, S=env.S, vload=env.vload, vstore=env.vstore, ldcg=env.ldcg)
    return tuple(device(f) for f in fns)


def make(env):
    """{"cols": ..., "colsv": ...}: item functions (as `_tickets.make`'s)."""
    return {"cols": _make(env, 1), "colsv": _make(env, env.W)}


def _make(env, VW):
    B, A = env.B, env.A
    F = env.F
    TS = F.size
    NROWS, ROWLEN, GS, NS, LANES = (Fields.NROWS, Fields.ROWLEN, Fields.GS, Fields.NS,
                                    Fields.LANES)
    NCHUNK, CHUNK, LAG, POFF, SOFF = (Fields.NCHUNK, Fields.CHUNK, Fields.LAG, Fields.POFF,
                                      Fields.SOFF)
    spans, bases, dims = env.spans, env.bases, env.dims
    off1, off2, off3 = env.off1, env.off2, env.off3
    fwd_scalars, bwd_scalars = env.fwd_scalars, env.bwd_scalars
    scale_out = env.scale_out
    ticket, first, prefetch, take, arrive, publish, wait, _ = protocol(env)
    czero, cload, cstore, cput, cparts, cscales, cadd, csq, cdot, cscale, cgrad = \
        _helpers(env, VW)
    IS_SCALE = env.op == ROW_SCALE

    @device
    def ccombine(part, base, n, nchunk, sh, t, ty, TY, CB):
        """The tile's partials per column: thread (tx, ty) sums chunks ty, ty + TY,
        ... of its n columns into ``sh`` (summed over ty in order by the caller)."""
        acc = czero()
        q = ty
        while q < nchunk:
            acc = cadd(acc, cparts(part, base + q * CB, n))
            q += TY
        cput(sh, t * VW, acc)
        cuda.syncthreads()

    @device
    def csum(sh, tx, k, TX, TY):
        """Column k of thread column tx: the TY per-thread sums, in ty order."""
        tot = A(0)
        for y in range(TY):
            tot += sh[(y * TX + tx) * VW + k]
        return tot

    @device
    def cflush(sh, acc, part, i, n, t, tx, ty, TX, TY):
        """A part item's per-column sums (over ty, in order) to part[i + k]."""
        cput(sh, t * VW, acc)
        cuda.syncthreads()
        if ty == 0:
            for k in range(n):
                part[i + k] = csum(sh, tx, k, TX, TY)

    @device
    def tile_bounds(r, c, tx, nrows, chunk, rowlen, CB):
        """(first column, columns, first and end reduced index) of thread column tx
        in item (tile r, chunk c)."""
        c0 = r * CB + tx * VW
        j0 = c * chunk
        return c0, min(VW, nrows - c0), j0, min(j0 + chunk, rowlen)

    if env.op == BACKWARD:
        @device
        def item(ptrs, tab, i, part, sync, eps, sh, shi, t):
            o = i * TS
            nrows, rowlen, gs, ns = tab[o + NROWS], tab[o + ROWLEN], tab[o + GS], tab[o + NS]
            TX, nchunk, chunk, lag = tab[o + LANES], tab[o + NCHUNK], tab[o + CHUNK], tab[o + LAG]
            po, so = tab[o + POFF], tab[o + SOFF]
            gw, v, gv, g, norms, grad_g = spans(ptrs, tab, i)
            gwb, vb, gvb, gb, nb, ggb = bases(tab, i)
            ks, vks, gwks, gvks, rs, vrs, gwrs, gvrs = dims(tab, i)
            TY = B // TX
            CB = TX * VW
            tx = t % TX
            ty = t // TX
            ntile = (nrows + CB - 1) // CB
            np_ = ntile * nchunk
            tk = first(sync, so, shi, t)
            while tk < 2 * np_:
                prefetch(sync, so, shi, t)
                fin, r, c = ticket(tk, np_, lag, nchunk)
                c0, n, j0, j1 = tile_bounds(r, c, tx, nrows, chunk, rowlen, CB)
                vo = 0
                go = 0
                qo = 0
                if n > 0:
                    vo, go, qo = off3(c0, ks, vks, gwks, gvks)
                    vo += vb
                    go += gwb
                    qo += gvb
                if not fin:
                    acc = czero()
                    if n > 0:
                        j = j0 + ty
                        while j < j1:
                            a, b = off2(j, rs, gwrs, vrs)
                            acc = cdot(acc, cload(gw, go + a, n), cload(v, vo + b, n))
                            j += TY
                    cflush(sh, acc, part, po + (r * nchunk + c) * CB + tx * VW, n, t, tx, ty,
                           TX, TY)
                    if arrive(sync, so, shi, t, r, nchunk):
                        ccombine(part, po + r * nchunk * CB + tx * VW, n, nchunk, sh, t, ty,
                                 TY, CB)
                        if ty == 0:
                            for k in range(n):
                                q = c0 + k
                                ggs, ca, cb = bwd_scalars(csum(sh, tx, k, TX, TY),
                                                          norms[nb + q * ns], g[gb + q * gs])
                                grad_g[ggb + q] = ggs
                                part[po + np_ * CB + 2 * q] = ca
                                part[po + np_ * CB + 2 * q + 1] = cb
                        publish(sync, so, t, r)
                else:
                    wait(sync, so, t, r, nchunk)
                    if n > 0:
                        ca = cscales(part, po + np_ * CB + 2 * c0, n, 2)
                        cb = cscales(part, po + np_ * CB + 2 * c0 + 1, n, 2)
                        j = j0 + ty
                        while j < j1:
                            a, b, q = off3(j, rs, gwrs, vrs, gvrs)
                            cstore(gv, qo + q, n, cgrad(cload(gw, go + a, n),
                                                        cload(v, vo + b, n), ca, cb))
                            j += TY
                tk = take(shi)
        return item

    @device
    def item(ptrs, tab, i, part, sync, eps, sh, shi, t):
        o = i * TS
        nrows, rowlen, gs = tab[o + NROWS], tab[o + ROWLEN], tab[o + GS]
        TX, nchunk, chunk, lag = tab[o + LANES], tab[o + NCHUNK], tab[o + CHUNK], tab[o + LAG]
        po, so = tab[o + POFF], tab[o + SOFF]
        v, w, g, norms = spans(ptrs, tab, i)           # row scale: w is the scales
        vb, wb, gb, nb = bases(tab, i)
        ks, vks, wks, rs, vrs, wrs = dims(tab, i)
        TY = B // TX
        CB = TX * VW
        tx = t % TX
        ty = t // TX
        ntile = (nrows + CB - 1) // CB
        np_ = ntile * nchunk
        ntk = np_ if IS_SCALE else 2 * np_
        tk = first(sync, so, shi, t)
        while tk < ntk:
            prefetch(sync, so, shi, t)
            fin, r, c = ticket(tk, np_, lag, nchunk)
            c0, n, j0, j1 = tile_bounds(r, c, tx, nrows, chunk, rowlen, CB)
            vo = 0
            wo = 0
            if n > 0:
                vo, wo = off2(c0, ks, vks, wks)
                vo += vb
                wo += wb
            if not fin:
                acc = czero()
                if n > 0:
                    j = j0 + ty
                    while j < j1:
                        acc = csq(acc, cload(v, vo + off1(j, rs, vrs), n))
                        j += TY
                cflush(sh, acc, part, po + (r * nchunk + c) * CB + tx * VW, n, t, tx, ty, TX, TY)
                if arrive(sync, so, shi, t, r, nchunk):
                    ccombine(part, po + r * nchunk * CB + tx * VW, n, nchunk, sh, t, ty, TY, CB)
                    if ty == 0:
                        for k in range(n):
                            q = c0 + k
                            nrm, scale = fwd_scalars(csum(sh, tx, k, TX, TY), eps, g[gb + q * gs])
                            norms[nb + q] = nrm
                            if IS_SCALE:
                                w[wb + q] = scale_out(g[gb + q * gs], nrm)
                            else:
                                part[po + np_ * CB + q] = scale
                    if not IS_SCALE:
                        publish(sync, so, t, r)
            else:
                wait(sync, so, t, r, nchunk)
                if n > 0:
                    sc = cscales(part, po + np_ * CB + c0, n, 1)
                    j = j0 + ty
                    while j < j1:
                        a, b = off2(j, rs, vrs, wrs)
                        cstore(w, wo + b, n, cscale(cload(v, vo + a, n), sc))
                        j += TY
            tk = take(shi)
    return item
