"""``rows``: scalar element access, any layout, G lanes per row.

``G`` (a table field) is 8, 16 or 32 lanes -- ``B / G`` rows per block, the row
total from a warp butterfly -- or the whole block (``G == B``) for long rows.
Lane ``l`` sums the row's elements ``l, l + G, ...`` in order; the lanes are
combined in a fixed tree (`Env.lanes_sum`); the row's scalars come from
`Env.fwd_scalars` / `Env.bwd_scalars`; a second pass over the same elements
writes w (forward) or grad_v (backward).  Row scale skips the second pass and
stores the scale.  A unit is one block's rows: ``B / G`` consecutive rows.
"""

from __future__ import annotations

from ._common import BACKWARD, ROW_SCALE, Fields, device

__all__ = ["make"]


def make(env):
    """{code name: unit function(ptrs, tab, i, unit, eps, sh, shi, t)} for env."""
    B, A = env.B, env.A
    F = env.F
    TS, NROWS, ROWLEN, GS, NS, LANES = (F.size, Fields.NROWS, Fields.ROWLEN, Fields.GS,
                                        Fields.NS, Fields.LANES)
    load, store = env.load, env.store
    spans, bases, dims = env.spans, env.bases, env.dims
    off1, off2, off3 = env.off1, env.off2, env.off3
    lanes_sum, fwd_scalars, bwd_scalars = env.lanes_sum, env.fwd_scalars, env.bwd_scalars
    scale_out = env.scale_out
    IS_SCALE = env.op == ROW_SCALE

    if env.op == BACKWARD:
        @device
        def rows(ptrs, tab, i, unit, eps, sh, shi, t):
            o = i * TS
            nrows, rowlen = tab[o + NROWS], tab[o + ROWLEN]
            gs, ns, G = tab[o + GS], tab[o + NS], tab[o + LANES]
            gw, v, gv, g, norms, grad_g = spans(ptrs, tab, i)
            gwb, vb, gvb, gb, nb, ggb = bases(tab, i)
            ks, vks, gwks, gvks, rs, vrs, gwrs, gvrs = dims(tab, i)
            lane = t % G
            r = unit * (B // G) + t // G
            act = r < nrows
            vo = 0
            go = 0
            qo = 0
            acc = A(0)
            if act:
                vo, go, qo = off3(r, ks, vks, gwks, gvks)
                vo += vb
                go += gwb
                qo += gvb
                j = lane
                while j < rowlen:
                    a, b = off2(j, rs, gwrs, vrs)
                    acc += A(load(gw[go + a])) * A(load(v[vo + b]))
                    j += G
            tot = lanes_sum(sh, acc, t, G)
            if act:
                ggs, ca, cb = bwd_scalars(tot, norms[nb + r * ns], g[gb + r * gs])
                if lane == 0:
                    grad_g[ggb + r] = ggs
                j = lane
                while j < rowlen:
                    a, b, c = off3(j, rs, gwrs, vrs, gvrs)
                    gv[qo + c] = store(ca * load(gw[go + a]) - cb * load(v[vo + b]))
                    j += G
        return {"rows": rows}

    @device
    def rows(ptrs, tab, i, unit, eps, sh, shi, t):
        o = i * TS
        nrows, rowlen = tab[o + NROWS], tab[o + ROWLEN]
        gs, G = tab[o + GS], tab[o + LANES]
        v, w, g, norms = spans(ptrs, tab, i)         # row scale: w is the scales
        vb, wb, gb, nb = bases(tab, i)
        ks, vks, wks, rs, vrs, wrs = dims(tab, i)
        lane = t % G
        r = unit * (B // G) + t // G
        act = r < nrows
        vo = 0
        wo = 0
        acc = A(0)
        if act:
            vo, wo = off2(r, ks, vks, wks)
            vo += vb
            wo += wb
            j = lane
            while j < rowlen:
                x = A(load(v[vo + off1(j, rs, vrs)]))
                acc += x * x
                j += G
        tot = lanes_sum(sh, acc, t, G)
        if act:
            nrm, scale = fwd_scalars(tot, eps, g[gb + r * gs])
            if lane == 0:
                norms[nb + r] = nrm
                if IS_SCALE:
                    w[wb + r] = scale_out(g[gb + r * gs], nrm)
            if not IS_SCALE:
                j = lane
                while j < rowlen:
                    a, b = off2(j, rs, vrs, wrs)
                    w[wo + b] = store(load(v[vo + a]) * scale)
                    j += G
    return {"rows": rows}
