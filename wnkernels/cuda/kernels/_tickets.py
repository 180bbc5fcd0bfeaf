"""Ticketed items: rows too long (or too few) for one block each.

Every row (or, in `_cols`, every tile of columns) is cut into ``nchunk``
chunks: ``nrows x nchunk`` *part* items (a chunk's partial sum) and as many
*finish* items (the chunk's second pass).  The blocks of the launch take items
in the order of an integer ticket counter; the order (`_common.decode`) puts
``lag`` parts first, then parts and finishes alternating, then the remaining
finishes, a row's finishes walking its chunks in reverse -- so a chunk's
second read follows its first by about ``lag`` items, while it is still in L2
(the host sizes ``lag`` from the L2 size, never below ``nchunk - 1``).

The block that completes a row's last part (an integer arrival counter) sums
the row's partials in chunk order -- fixed, so results are bitwise
reproducible whichever blocks took which chunks -- computes the row's scalars
and publishes them; finishes wait for that flag.  A finish waits only on parts
with earlier tickets, held by running blocks that never wait on later
tickets: the kernel progresses whatever the residency.  Row scale has no
finishes.  Memory order: partials and scalars are written, fenced
(``threadfence``), then the counter is bumped; readers observe the counter,
fence, and read with ``ld.global.cg`` (L2, never a stale L1 line).

Workspaces are per call (`wnkernels.cuda._launch`): ``part`` (float
accumulators: partials then per-row scalars) from offset ``POFF`` and ``sync``
(int64 counters, zeroed for the call: the ticket counter, then one arrival
counter per row) from offset ``SOFF``.

Two strategies here: ``stream`` (contiguous rows, 16-byte vectors, as in
`_regs`) and ``chunks`` (any layout, scalar access).
"""

from __future__ import annotations

from ._common import BACKWARD, ROW_SCALE, Fields, cuda, device

__all__ = ["make", "protocol"]


def protocol(env):
    """The ticket protocol's device functions for env (shared with `_cols`)."""
    B, A = env.B, env.A
    ldcg, pause, block_sum, decode = env.ldcg, env.pause, env.block_sum, env.decode
    IS_SCALE = env.op == ROW_SCALE

    @device
    def ticket(tk, np_, lag, nchunk):
        """(finish?, row, chunk) of ticket tk (row scale: parts only, in order)."""
        if IS_SCALE:
            r = tk // nchunk
            return False, r, tk - r * nchunk
        return decode(tk, np_, lag, nchunk)

    @device
    def first(sync, so, shi, t):
        # every thread has read the block's previous ticket (the last item's
        # final ``take``) before thread 0 overwrites it
        cuda.syncthreads()
        if t == 0:
            shi[0] = cuda.atomic.add(sync, so, 1)
        cuda.syncthreads()
        return shi[0]

    @device
    def prefetch(sync, so, shi, t):
        cuda.syncthreads()  # every thread has read the current ticket
        if t == 0:
            shi[0] = cuda.atomic.add(sync, so, 1)

    @device
    def take(shi):
        cuda.syncthreads()
        return shi[0]

    @device
    def arrive(sync, so, shi, t, r, nchunk):
        """After a part's partials are written: True (in every thread) for the block
        that completed row ``r``'s parts."""
        cuda.threadfence()
        cuda.syncthreads()
        if t == 0:
            last = cuda.atomic.add(sync, so + 1 + r, 1) == nchunk - 1
            if last:
                cuda.threadfence()
            shi[1] = 1 if last else 0
        cuda.syncthreads()
        return shi[1] != 0

    @device
    def publish(sync, so, t, r):
        cuda.threadfence()
        cuda.syncthreads()
        if t == 0:
            cuda.atomic.add(sync, so + 1 + r, 1)  # nchunk + 1: the row's scalars are out

    @device
    def wait(sync, so, t, r, nchunk):
        if t == 0:
            while cuda.atomic.add(sync, so + 1 + r, 0) <= nchunk:
                pause()
            cuda.threadfence()
        cuda.syncthreads()

    @device
    def combine(part, base, nchunk, sh, t):
        """Sum of a row's nchunk partials, the whole block at once: thread t takes
        chunks t, t + B, ... in order, then the block's fixed tree."""
        acc = A(0)
        q = t
        while q < nchunk:
            acc += ldcg(part, base + q)
            q += B
        return block_sum(sh, acc, t)

    return ticket, first, prefetch, take, arrive, publish, wait, combine


def make(env):
    """{"stream": ..., "chunks": ...}: item functions
    (ptrs, tab, i, part, sync, eps, sh, shi, t), the whole item's ticket loop."""
    from ._regs import make_row_head
    B, A, C, W = env.B, env.A, env.C, env.W
    F = env.F
    TS = F.size
    NROWS, ROWLEN, GS, NS, PH = Fields.NROWS, Fields.ROWLEN, Fields.GS, Fields.NS, Fields.PH
    NCHUNK, CHUNK, LAG, POFF, SOFF = (Fields.NCHUNK, Fields.CHUNK, Fields.LAG, Fields.POFF,
                                      Fields.SOFF)
    load, store = env.load, env.store
    vload, vstore, ldcg = env.vload, env.vstore, env.ldcg
    vsumsq, vdot, vscale, vgrad = env.vsumsq, env.vdot, env.vscale, env.vgrad
    spans, bases, dims = env.spans, env.bases, env.dims
    off1, off2, off3 = env.off1, env.off2, env.off3
    block_sum, fwd_scalars, bwd_scalars = env.block_sum, env.fwd_scalars, env.bwd_scalars
    scale_out = env.scale_out
    ticket, first, prefetch, take, arrive, publish, wait, combine = protocol(env)
    row_head = make_row_head(W)
    IS_SCALE = env.op == ROW_SCALE

    # ---------------------------------------- contiguous segments, 16-byte vectors
    # Elements [s, e) of a row whose element 0 is at index o: the < W scalar head
    # elements [s, a) (lane k takes s + k), whole vectors from a (o + a is 16-byte
    # aligned in every array), lane l of `step` taking vectors l, l + step, ...,
    # then the < W tail elements one by one.

    @device
    def chunk_bounds(hd, c, chunk, rowlen):
        """(s, a, e) of chunk c of a row: chunk 0 also takes the scalar head."""
        a = min(hd + c * chunk, rowlen)
        e = min(hd + (c + 1) * chunk, rowlen)
        s = 0 if c == 0 else a
        return s, a, e

    @device
    def vbounds(ph, vo, c, chunk, rowlen):
        """`chunk_bounds` of chunk c of the row at vo (``stream``: 16-byte phase ph)."""
        return chunk_bounds(row_head(ph, vo, rowlen), c, chunk, rowlen)

    @device
    def sbounds(ph, vo, c, chunk, rowlen):
        """(s, a, e) of chunk c with scalar access (``chunks``: no head)."""
        s = c * chunk
        return s, s, min(s + chunk, rowlen)

    @device
    def seg_sumsq(v, o, s, a, e, lane, step):
        acc = A(0)
        j = s + lane
        if j < a:
            x = A(load(v[o + j]))
            acc += x * x
        nv = (e - a) // W
        j = lane
        while j < nv:
            acc = vsumsq(acc, vload(v, o + a + j * W))
            j += step
        j = a + nv * W + lane
        while j < e:
            x = A(load(v[o + j]))
            acc += x * x
            j += step
        return acc

    @device
    def seg_scale(v, vo, w, wo, s, a, e, lane, step, scale):
        j = s + lane
        if j < a:
            w[wo + j] = store(load(v[vo + j]) * scale)
        nv = (e - a) // W
        j = lane
        while j < nv:
            k = a + j * W
            vstore(w, wo + k, vscale(vload(v, vo + k), scale))
            j += step
        j = a + nv * W + lane
        while j < e:
            w[wo + j] = store(load(v[vo + j]) * scale)
            j += step

    @device
    def seg_dot(gw, go, v, vo, s, a, e, lane, step):
        acc = A(0)
        j = s + lane
        if j < a:
            acc += A(load(gw[go + j])) * A(load(v[vo + j]))
        nv = (e - a) // W
        j = lane
        while j < nv:
            k = a + j * W
            acc = vdot(acc, vload(gw, go + k), vload(v, vo + k))
            j += step
        j = a + nv * W + lane
        while j < e:
            acc += A(load(gw[go + j])) * A(load(v[vo + j]))
            j += step
        return acc

    @device
    def seg_grad(gw, go, v, vo, gv, qo, s, a, e, lane, step, ca, cb):
        j = s + lane
        if j < a:
            gv[qo + j] = store(ca * load(gw[go + j]) - cb * load(v[vo + j]))
        nv = (e - a) // W
        j = lane
        while j < nv:
            k = a + j * W
            vstore(gv, qo + k, vgrad(vload(gw, go + k), vload(v, vo + k), ca, cb))
            j += step
        j = a + nv * W + lane
        while j < e:
            gv[qo + j] = store(ca * load(gw[go + j]) - cb * load(v[vo + j]))
            j += step

    # ---------------------------------------- any layout, scalar access
    # Chunk c of a row: reduced indices [c * chunk, min((c + 1) * chunk, rowlen)),
    # thread t taking t, t + B, ... of them.

    @device
    def cseg_sumsq(v, vo, j0, j1, rs, vrs, t):
        acc = A(0)
        j = j0 + t
        while j < j1:
            x = A(load(v[vo + off1(j, rs, vrs)]))
            acc += x * x
            j += B
        return acc

    @device
    def cseg_scale(v, vo, w, wo, j0, j1, rs, vrs, wrs, t, scale):
        j = j0 + t
        while j < j1:
            a, b = off2(j, rs, vrs, wrs)
            w[wo + b] = store(load(v[vo + a]) * scale)
            j += B

    @device
    def cseg_dot(gw, go, v, vo, j0, j1, rs, gwrs, vrs, t):
        acc = A(0)
        j = j0 + t
        while j < j1:
            a, b = off2(j, rs, gwrs, vrs)
            acc += A(load(gw[go + a])) * A(load(v[vo + b]))
            j += B
        return acc

    @device
    def cseg_grad(gw, go, v, vo, gv, qo, j0, j1, rs, gwrs, vrs, gvrs, t, ca, cb):
        j = j0 + t
        while j < j1:
            a, b, c = off3(j, rs, gwrs, vrs, gvrs)
            gv[qo + c] = store(ca * load(gw[go + a]) - cb * load(v[vo + b]))
            j += B

    if env.op == BACKWARD:
        def make_bwd(vector):
            bounds = vbounds if vector else sbounds

            @device
            def item(ptrs, tab, i, part, sync, eps, sh, shi, t):
                o = i * TS
                nrows, rowlen, gs, ns = tab[o + NROWS], tab[o + ROWLEN], tab[o + GS], tab[o + NS]
                ph, nchunk, chunk, lag = tab[o + PH], tab[o + NCHUNK], tab[o + CHUNK], tab[o + LAG]
                po, so = tab[o + POFF], tab[o + SOFF]
                gw, v, gv, g, norms, grad_g = spans(ptrs, tab, i)
                gwb, vb, gvb, gb, nb, ggb = bases(tab, i)
                ks, vks, gwks, gvks, rs, vrs, gwrs, gvrs = dims(tab, i)
                np_ = nrows * nchunk
                tk = first(sync, so, shi, t)
                while tk < 2 * np_:
                    prefetch(sync, so, shi, t)
                    fin, r, c = ticket(tk, np_, lag, nchunk)
                    vo, go, qo = off3(r, ks, vks, gwks, gvks)
                    vo += vb
                    go += gwb
                    qo += gvb
                    s, a, e = bounds(ph, vo, c, chunk, rowlen)
                    if not fin:
                        if vector:
                            acc = seg_dot(gw, go, v, vo, s, a, e, t, B)
                        else:
                            acc = cseg_dot(gw, go, v, vo, s, e, rs, gwrs, vrs, t)
                        tot = block_sum(sh, acc, t)
                        if t == 0:
                            part[po + r * nchunk + c] = tot
                        if arrive(sync, so, shi, t, r, nchunk):
                            tot = combine(part, po + r * nchunk, nchunk, sh, t)
                            if t == 0:
                                ggs, ca, cb = bwd_scalars(tot, norms[nb + r * ns], g[gb + r * gs])
                                grad_g[ggb + r] = ggs
                                part[po + np_ + 2 * r] = ca
                                part[po + np_ + 2 * r + 1] = cb
                            publish(sync, so, t, r)
                    else:
                        wait(sync, so, t, r, nchunk)
                        ca = C(ldcg(part, po + np_ + 2 * r))
                        cb = C(ldcg(part, po + np_ + 2 * r + 1))
                        if vector:
                            seg_grad(gw, go, v, vo, gv, qo, s, a, e, t, B, ca, cb)
                        else:
                            cseg_grad(gw, go, v, vo, gv, qo, s, e, rs, gwrs, vrs, gvrs, t, ca, cb)
                    tk = take(shi)
            return item
        return {"stream": make_bwd(True), "chunks": make_bwd(False)}

    def make_fwd(vector):
        bounds = vbounds if vector else sbounds

        @device
        def item(ptrs, tab, i, part, sync, eps, sh, shi, t):
            o = i * TS
            nrows, rowlen, gs = tab[o + NROWS], tab[o + ROWLEN], tab[o + GS]
            ph, nchunk, chunk, lag = tab[o + PH], tab[o + NCHUNK], tab[o + CHUNK], tab[o + LAG]
            po, so = tab[o + POFF], tab[o + SOFF]
            v, w, g, norms = spans(ptrs, tab, i)        # row scale: w is the scales
            vb, wb, gb, nb = bases(tab, i)
            ks, vks, wks, rs, vrs, wrs = dims(tab, i)
            np_ = nrows * nchunk
            ntk = np_ if IS_SCALE else 2 * np_
            tk = first(sync, so, shi, t)
            while tk < ntk:
                prefetch(sync, so, shi, t)
                fin, r, c = ticket(tk, np_, lag, nchunk)
                vo, wo = off2(r, ks, vks, wks)
                vo += vb
                wo += wb
                s, a, e = bounds(ph, vo, c, chunk, rowlen)
                if not fin:
                    if vector:
                        acc = seg_sumsq(v, vo, s, a, e, t, B)
                    else:
                        acc = cseg_sumsq(v, vo, s, e, rs, vrs, t)
                    tot = block_sum(sh, acc, t)
                    if t == 0:
                        part[po + r * nchunk + c] = tot
                    if arrive(sync, so, shi, t, r, nchunk):
                        tot = combine(part, po + r * nchunk, nchunk, sh, t)
                        if t == 0:
                            nrm, scale = fwd_scalars(tot, eps, g[gb + r * gs])
                            norms[nb + r] = nrm
                            if IS_SCALE:
                                w[wb + r] = scale_out(g[gb + r * gs], nrm)
                            else:
                                part[po + np_ + r] = scale
                        if not IS_SCALE:
                            publish(sync, so, t, r)
                else:
                    wait(sync, so, t, r, nchunk)
                    scale = C(ldcg(part, po + np_ + r))
                    if vector:
                        seg_scale(v, vo, w, wo, s, a, e, t, B, scale)
                    else:
                        cseg_scale(v, vo, w, wo, s, e, rs, vrs, wrs, t, scale)
                tk = take(shi)
        return item

    return {"stream": make_fwd(True), "chunks": make_fwd(False)}
