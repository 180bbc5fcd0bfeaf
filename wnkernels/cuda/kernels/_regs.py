"""``regs<R>``: contiguous rows held in registers, 16-byte vector access.

Rows that are one contiguous run in every array, at the same 16-byte phase
(`wnkernels.cuda._plan` checks on the host), move ``W`` elements (16 bytes)
per access (`_vec.vload` / `vstore`).  ``G`` lanes per row (8 / 16 / 32, or
the block) each hold up to ``R`` vectors of their row in registers between
the reduction and the write -- every element is read once (the 2N traffic
floor).  A row starts with ``head < W`` scalar elements up to its first
16-byte boundary (from the span's phase ``ph``), then whole vectors, then a
``< W`` scalar tail: lane ``l`` holds head element ``l`` (if ``l < head``),
vectors ``l, l + G, ..., l + (R - 1) G`` and tail element ``l``, and sums them
in that order.  The source is generated per ``R`` (named registers ``x0, x1,
...``: no local arrays, so nothing spills to memory).  A unit is one block's
rows, as in `_rows`.
"""

from __future__ import annotations

import math

from ._common import BACKWARD, ROW_SCALE, Fields, GEN_CUDA, device

__all__ = ["make", "R_CHOICES"]

# The register counts compiled (each its own strategy code).
R_CHOICES = (1, 2, 4, 8)


def _source(bwd: bool, scale_op: bool, R: int) -> str:
    ks = range(R)
    if bwd:
        head = ("def regs(ptrs, tab, i, unit, eps, sh, shi, t):\n"
                "    o = i * TS\n"
                "    nrows, rowlen, gs, ns = tab[o + NROWS], tab[o + ROWLEN], tab[o + GS], tab[o + NS]\n"
                "    G, ph = tab[o + LANES], tab[o + PH]\n"
                "    gw, v, gv, g, norms, grad_g = spans(ptrs, tab, i)\n"
                "    gwb, vb, gvb, gb, nb, ggb = bases(tab, i)\n"
                "    ks, vks, gwks, gvks, rs, vrs, gwrs, gvrs = dims(tab, i)\n")
        offs = ("        vo, go, qo = off3(r, ks, vks, gwks, gvks)\n"
                "        vo += vb\n        go += gwb\n        qo += gvb\n")
        zero_offs = "    vo = 0\n    go = 0\n    qo = 0\n"
    else:
        # (row scale: w is the per-row scales)
        roles = "    v, w, g, norms = spans(ptrs, tab, i)\n    vb, wb, gb, nb = bases(tab, i)\n"
        head = ("def regs(ptrs, tab, i, unit, eps, sh, shi, t):\n"
                "    o = i * TS\n"
                "    nrows, rowlen, gs = tab[o + NROWS], tab[o + ROWLEN], tab[o + GS]\n"
                "    G, ph = tab[o + LANES], tab[o + PH]\n"
                + roles +
                "    ks, vks, wks, rs, vrs, wrs = dims(tab, i)\n")
        offs = ("        vo, wo = off2(r, ks, vks, wks)\n"
                "        vo += vb\n        wo += wb\n")
        zero_offs = "    vo = 0\n    wo = 0\n"
    src = [head, """\
    lane = t % G
    r = unit * (B // G) + t // G
    act = r < nrows
""", zero_offs, "    if act:\n", offs, """\
    hd = row_head(ph, vo, rowlen)
    nv = (rowlen - hd) // W
    tl = hd + nv * W
    acc = A(0)
    oh = act and lane < hd
    ot = act and tl + lane < rowlen
"""]

    def elem(tag, idx):  # one scalar element (head or tail) into registers
        if not bwd:
            return (f"    x{tag} = S(0)\n    if o{tag}:\n"
                    f"        x{tag} = v[vo + {idx}]\n"
                    f"        y = A(load(x{tag}))\n        acc += y * y\n")
        return (f"    a{tag} = S(0)\n    b{tag} = S(0)\n    if o{tag}:\n"
                f"        a{tag} = gw[go + {idx}]\n        b{tag} = v[vo + {idx}]\n"
                f"        acc += A(load(a{tag})) * A(load(b{tag}))\n")

    src.append(elem("h", "lane"))
    for k in ks:
        at = f"hd + (lane + {k} * G) * W"
        src.append(f"    o{k} = act and lane + {k} * G < nv\n")
        if not bwd:
            src.append(f"    x{k} = vzero()\n    if o{k}:\n"
                       f"        x{k} = vload(v, vo + {at})\n"
                       f"        acc = vsumsq(acc, x{k})\n")
        else:
            src.append(f"    a{k} = vzero()\n    b{k} = vzero()\n    if o{k}:\n"
                       f"        a{k} = vload(gw, go + {at})\n"
                       f"        b{k} = vload(v, vo + {at})\n"
                       f"        acc = vdot(acc, a{k}, b{k})\n")
    src.append(elem("t", "tl + lane"))
    src.append("    tot = lanes_sum(sh, acc, t, G)\n    if act:\n")
    if not bwd:
        src.append("""\
        nrm, scale = fwd_scalars(tot, eps, g[gb + r * gs])
        if lane == 0:
            norms[nb + r] = nrm
""")
        if scale_op:
            src.append("            w[wb + r] = scale_out(g[gb + r * gs], nrm)\n")
        else:
            src.append("        if oh:\n            w[wo + lane] = store(load(xh) * scale)\n")
            for k in ks:
                src.append(f"        if o{k}:\n            vstore(w, wo + hd + (lane + {k} * G)"
                           f" * W, vscale(x{k}, scale))\n")
            src.append("        if ot:\n            w[wo + tl + lane] = store(load(xt) * scale)\n")
    else:
        src.append("""\
        ggs, ca, cb = bwd_scalars(tot, norms[nb + r * ns], g[gb + r * gs])
        if lane == 0:
            grad_g[ggb + r] = ggs
        if oh:
            gv[qo + lane] = store(ca * load(ah) - cb * load(bh))
""")
        for k in ks:
            src.append(f"        if o{k}:\n            vstore(gv, qo + hd + (lane + {k} * G)"
                       f" * W, vgrad(a{k}, b{k}, ca, cb))\n")
        src.append("        if ot:\n"
                   "            gv[qo + tl + lane] = store(ca * load(at) - cb * load(bt))\n")
    return "".join(src)


def make_row_head(W):
    @device
    def row_head(ph, o, rowlen):
        """Scalar elements before a row's first 16-byte boundary (``ph``: the
        span's phase in elements, ``o``: the row's first element)."""
        return min((W - (ph + o) % W) % W, rowlen)
    return row_head


def make(env):
    """{"regs1": ..., "regs2": ..., ...}: one unit function per R."""
    F = env.F
    ns = dict(cuda=GEN_CUDA, math=math, A=env.A, S=env.S, W=env.W, B=env.B,
              TS=F.size, NROWS=Fields.NROWS, ROWLEN=Fields.ROWLEN, GS=Fields.GS,
              NS=Fields.NS, LANES=Fields.LANES, PH=Fields.PH,
              load=env.load, store=env.store, vload=env.vload, vstore=env.vstore,
              vsumsq=env.vsumsq, vdot=env.vdot, vscale=env.vscale, vgrad=env.vgrad,
              vzero=env.vzero, spans=env.spans, bases=env.bases, dims=env.dims,
              off2=env.off2, off3=env.off3, lanes_sum=env.lanes_sum,
              fwd_scalars=env.fwd_scalars, bwd_scalars=env.bwd_scalars,
              scale_out=env.scale_out,
              row_head=make_row_head(env.W))
    out = {}
    for R in R_CHOICES:
        src = _source(env.op == BACKWARD, env.op == ROW_SCALE, R)
        ns_r = dict(ns)
        exec(compile(src, f"<wnkernels regs R={R}>", "exec"), ns_r)
        out[f"regs{R}"] = device(ns_r["regs"])
    return out
