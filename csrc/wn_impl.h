/*
 * Kernel template: included by wn.c once per (instruction set, dtype) with
 *
 *   FN(name)  the suffixed function name          T    storage type
 *   NT        norms type                          CT   forward scaling type
 *   BT        backward elementwise type
 *   LDD(x)    T -> double (accumulation; exact for every T)
 *   LDF(x)    T -> CT        STF(y)   CT -> T
 *   LDB(x)    T -> BT        STB(y)   BT -> T
 *   WN_FLUSH    0: float64 lanes; k > 0: float32 lanes flushed every k steps
 *   TOV8D(const CT *f)           8 consecutive CT values as a wn_v8d vector
 *   VLOAD16(CT *f, const T *p)   16 contiguous elements -> CT
 *   VSTORE16(T *p, const CT *f)  16 CT values -> contiguous elements
 *   STREAM(dst, src, nbytes)  streaming store of a 64-byte-aligned L1 buffer
 *
 * Two strategies, both with one parallel region per call:
 *
 *   rows     the innermost reduced dim is v's fastest axis.  Each row is cut
 *            into pieces (wn_rowgeom); a piece's sum of squares (or dot
 *            product) uses 32 double lanes, and the row total adds the piece
 *            totals in order with Neumaier compensation.  Many rows: threads
 *            take whole rows, so a row is re-read from L1/L2 by the second
 *            pass.  Few rows: every row's pieces are split across the
 *            threads, one barrier per row, and the second pass walks the
 *            thread's pieces backwards so its last-read data is still cached.
 *   columns  the innermost kept dim is v's fastest axis (dim=-1 of a
 *            C-contiguous matrix).  A block of adjacent kept indices is
 *            accumulated side by side while the reduced elements stream by
 *            (vectorized along the kept axis); then the block is rescaled.
 *            Blocks are sized so they are still in L2 for the second pass.
 *
 * Both orders are fixed by the layout alone: thread count never changes bits.
 */

#define WN_BUFBYTES 1024
#define WN_COLBLK 4096      /* widest column block (a 16 KiB run of float32) */
#define WN_COLBLK_MIN 64    /* column block if the scratch allocation fails */
#define WN_COLSCR 9         /* scratch doubles per column of a block */

/* ---- runs along one strided dim (the vectorized inner loops) ---------- */

#if WN_FLUSH
/* Lanes 0..31 (four 8-double vectors) += the float32 lanes of (a0 | a1). */
WN_INLINE void FN(flush)(wn_v8d *restrict a, wn_v16f a0, wn_v16f a1)
{
    float f[32];
    memcpy(f, &a0, sizeof a0);
    memcpy(f + 16, &a1, sizeof a1);
    for (int k = 0; k < 4; k++) a[k] += TOV8D(f + 8 * k);
}
#endif

/* Contiguous runs into the 32 lanes held as four 8-double vectors (element
 * i of the run goes to lane i % 32).  Kept in registers by the callers: an
 * in-memory lane array costs a store-forwarding chain per step. */
WN_INLINE void FN(vsumsq)(wn_v8d *restrict a, const T *restrict x, int64_t n)
{
    int64_t i = 0;
#if WN_FLUSH
    /* float32 and 16-bit inputs: the lanes accumulate in float32 for
     * WN_FLUSH steps of 32 elements, then are added into the float64
     * lanes.  A float32 partial of k positive terms is within about
     * (k + 1) * 2^-24 of its exact value (products of 16-bit values are
     * exact, so k * 2^-24 there), which keeps norms well inside the 1e-6
     * bound at a fraction of the conversion work of float64 lanes. */
    while (i + WN_LANES <= n) {
        wn_v16f a0 = {0}, a1 = {0};
        for (int k = 0; k < WN_FLUSH && i + WN_LANES <= n; k++, i += WN_LANES) {
            float f[WN_LANES];
            VLOAD16(f, x + i);
            VLOAD16(f + 16, x + i + 16);
            wn_v16f t0, t1;
            memcpy(&t0, f, sizeof t0);
            memcpy(&t1, f + 16, sizeof t1);
            a0 += t0 * t0;
            a1 += t1 * t1;
        }
        FN(flush)(a, a0, a1);
    }
#else
    for (; i + WN_LANES <= n; i += WN_LANES) {
        CT f[WN_LANES];
        VLOAD16(f, x + i);
        VLOAD16(f + 16, x + i + 16);
        for (int k = 0; k < 4; k++) {
            wn_v8d t = TOV8D(f + 8 * k);
            a[k] += t * t;
        }
    }
#endif
    for (int j = 0; i < n; i++, j++) {
        double t = LDD(x[i]);
        a[j >> 3][j & 7] += t * t;
    }
}

WN_INLINE void FN(vdot)(wn_v8d *restrict acc, const T *restrict a,
                        const T *restrict b, int64_t n)
{
    int64_t i = 0;
#if WN_FLUSH
    while (i + WN_LANES <= n) {
        wn_v16f a0 = {0}, a1 = {0};
        for (int k = 0; k < WN_FLUSH && i + WN_LANES <= n; k++, i += WN_LANES) {
            float fa[WN_LANES], fb[WN_LANES];
            VLOAD16(fa, a + i);
            VLOAD16(fa + 16, a + i + 16);
            VLOAD16(fb, b + i);
            VLOAD16(fb + 16, b + i + 16);
            wn_v16f x0, x1, y0, y1;
            memcpy(&x0, fa, sizeof x0);
            memcpy(&x1, fa + 16, sizeof x1);
            memcpy(&y0, fb, sizeof y0);
            memcpy(&y1, fb + 16, sizeof y1);
            a0 += x0 * y0;
            a1 += x1 * y1;
        }
        FN(flush)(acc, a0, a1);
    }
#else
    for (; i + WN_LANES <= n; i += WN_LANES) {
        CT fa[WN_LANES], fb[WN_LANES];
        VLOAD16(fa, a + i);
        VLOAD16(fa + 16, a + i + 16);
        VLOAD16(fb, b + i);
        VLOAD16(fb + 16, b + i + 16);
        for (int k = 0; k < 4; k++)
            acc[k] += TOV8D(fa + 8 * k) * TOV8D(fb + 8 * k);
    }
#endif
    for (int j = 0; i < n; i++, j++)
        acc[j >> 3][j & 7] += LDD(a[i]) * LDD(b[i]);
}

/* Strided or contiguous run into the lane array `acc` (same lane rule). */
WN_INLINE void FN(lane_sumsq)(double *restrict acc, const T *restrict x,
                              int64_t n, int64_t s)
{
    /* Runs shorter than the lanes (e.g. the 3x3 taps of a ConvTranspose
     * weight normalized over dim=1) only meet the tail below: skip moving
     * the lanes through vector registers.  Same additions, same bits. */
    if (s == 1 && n >= WN_LANES) {
        wn_v8d a[4];
        memcpy(a, acc, sizeof a);
        FN(vsumsq)(a, x, n);
        memcpy(acc, a, sizeof a);
        return;
    }
    int64_t i = 0;
    for (; i + WN_LANES <= n; i += WN_LANES)
        for (int j = 0; j < WN_LANES; j++) {
            double t = LDD(x[(i + j) * s]);
            acc[j] += t * t;
        }
    for (int j = 0; i < n; i++, j++) {
        double t = LDD(x[i * s]);
        acc[j] += t * t;
    }
}

WN_INLINE void FN(lane_dot)(double *restrict acc, const T *restrict a,
                            int64_t sa, const T *restrict b, int64_t sb,
                            int64_t n)
{
    if (sa == 1 && sb == 1 && n >= WN_LANES) {
        wn_v8d la[4];
        memcpy(la, acc, sizeof la);
        FN(vdot)(la, a, b, n);
        memcpy(acc, la, sizeof la);
        return;
    }
    int64_t i = 0;
    for (; i + WN_LANES <= n; i += WN_LANES)
        for (int j = 0; j < WN_LANES; j++)
            acc[j] += LDD(a[(i + j) * sa]) * LDD(b[(i + j) * sb]);
    for (int j = 0; i < n; i++, j++)
        acc[j] += LDD(a[i * sa]) * LDD(b[i * sb]);
}

/* 16 elements of w = v * scale (contiguous). */
WN_INLINE void FN(scale16)(T *w, const T *v, CT scale)
{
    CT f[16];
    VLOAD16(f, v);
    for (int j = 0; j < 16; j++) f[j] *= scale;
    VSTORE16(w, f);
}

/* 16 elements of grad_v = a * grad_w - b * v (contiguous). */
WN_INLINE void FN(bwd16)(T *gv, const T *gw, const T *v, BT a, BT b)
{
    CT fg[16], fv[16];
    VLOAD16(fg, gw);
    VLOAD16(fv, v);
    for (int j = 0; j < 16; j++) fg[j] = (CT)(a * (BT)fg[j] - b * (BT)fv[j]);
    VSTORE16(gv, fg);
}

/* w = v * scale.  With `nt`, a contiguous w is written with streaming
 * stores (no read-for-ownership of w's lines) through an L1 buffer. */
WN_INLINE void FN(scale_run)(T *w, int64_t sw, const T *v, int64_t sv,
                             int64_t n, CT scale, int nt)
{
    int64_t i = 0;
    if (sw == 1 && sv == 1) {
        if (nt) {
            enum { B = WN_BUFBYTES / sizeof(T) };
            T buf[B] __attribute__((aligned(64)));
            for (; i < n && ((uintptr_t)(w + i) & 63); i++)
                w[i] = STF(LDF(v[i]) * scale);
            for (; i + B <= n; i += B) {
                for (int j = 0; j < B; j += 16) FN(scale16)(buf + j, v + i + j, scale);
                STREAM(w + i, buf, sizeof buf);
            }
        }
        for (; i + 16 <= n; i += 16) FN(scale16)(w + i, v + i, scale);
        for (; i < n; i++) w[i] = STF(LDF(v[i]) * scale);
    } else {
        for (; i < n; i++) w[i * sw] = STF(LDF(v[i * sv]) * scale);
    }
}

/* grad_v = a * grad_w - b * v */
WN_INLINE void FN(bwd_run)(T *gv, int64_t sgv, const T *gw, int64_t sgw,
                           const T *v, int64_t sv, int64_t n, BT a, BT b,
                           int nt)
{
    int64_t i = 0;
    if (sgv == 1 && sgw == 1 && sv == 1) {
        if (nt) {
            enum { B = WN_BUFBYTES / sizeof(T) };
            T buf[B] __attribute__((aligned(64)));
            for (; i < n && ((uintptr_t)(gv + i) & 63); i++)
                gv[i] = STB(a * LDB(gw[i]) - b * LDB(v[i]));
            for (; i + B <= n; i += B) {
                for (int j = 0; j < B; j += 16) FN(bwd16)(buf + j, gw + i + j, v + i + j, a, b);
                STREAM(gv + i, buf, sizeof buf);
            }
        }
        for (; i + 16 <= n; i += 16) FN(bwd16)(gv + i, gw + i, v + i, a, b);
        for (; i < n; i++) gv[i] = STB(a * LDB(gw[i]) - b * LDB(v[i]));
    } else {
        for (; i < n; i++)
            gv[i * sgv] = STB(a * LDB(gw[i * sgw]) - b * LDB(v[i * sv]));
    }
}

/* Contiguous runs with a per-element scale (column mode): y = x * sc[i]. */
WN_INLINE void FN(scalev16)(T *y, const T *x, const CT *sc)
{
    CT f[16];
    VLOAD16(f, x);
    for (int j = 0; j < 16; j++) f[j] *= sc[j];
    VSTORE16(y, f);
}

WN_INLINE void FN(bwdv16)(T *z, const T *y, const T *x, const BT *a, const BT *b)
{
    CT fy[16], fx[16];
    VLOAD16(fy, y);
    VLOAD16(fx, x);
    for (int j = 0; j < 16; j++) fy[j] = (CT)(a[j] * (BT)fy[j] - b[j] * (BT)fx[j]);
    VSTORE16(z, fy);
}

WN_INLINE void FN(scalev_run)(T *y, const T *x, const CT *sc, int64_t n, int nt)
{
    int64_t i = 0;
    if (nt) {
        enum { B = WN_BUFBYTES / sizeof(T) };
        T buf[B] __attribute__((aligned(64)));
        for (; i < n && ((uintptr_t)(y + i) & 63); i++) y[i] = STF(LDF(x[i]) * sc[i]);
        for (; i + B <= n; i += B) {
            for (int j = 0; j < B; j += 16) FN(scalev16)(buf + j, x + i + j, sc + i + j);
            STREAM(y + i, buf, sizeof buf);
        }
    }
    for (; i + 16 <= n; i += 16) FN(scalev16)(y + i, x + i, sc + i);
    for (; i < n; i++) y[i] = STF(LDF(x[i]) * sc[i]);
}

WN_INLINE void FN(bwdv_run)(T *z, const T *y, const T *x, const BT *a,
                            const BT *b, int64_t n, int nt)
{
    int64_t i = 0;
    if (nt) {
        enum { B = WN_BUFBYTES / sizeof(T) };
        T buf[B] __attribute__((aligned(64)));
        for (; i < n && ((uintptr_t)(z + i) & 63); i++)
            z[i] = STB(a[i] * LDB(y[i]) - b[i] * LDB(x[i]));
        for (; i + B <= n; i += B) {
            for (int j = 0; j < B; j += 16)
                FN(bwdv16)(buf + j, y + i + j, x + i + j, a + i + j, b + i + j);
            STREAM(z + i, buf, sizeof buf);
        }
    }
    for (; i + 16 <= n; i += 16) FN(bwdv16)(z + i, y + i, x + i, a + i, b + i);
    for (; i < n; i++) z[i] = STB(a[i] * LDB(y[i]) - b[i] * LDB(x[i]));
}

/* ---- row mode: pieces ------------------------------------------------- */

WN_INLINE int64_t FN(inner_stride)(const wn_layout *L, int a)
{
    return L->red_ndim > 0 ? L->red_stride[a][L->red_ndim - 1] : 1;
}

static double FN(piece_sumsq)(const wn_layout *L, const wn_rowgeom *G,
                              const T *v, const int64_t *ro, int64_t p)
{
    double acc[WN_LANES] = {0};
    const int64_t sv = FN(inner_stride)(L, 0);
    wn_piece P;
    wn_piece_begin(L, G, 1, p, ro, &P);
    for (int64_t s = 0; s < P.nseg; s++) {
        if (s) wn_piece_next(L, G, 1, &P);
        FN(lane_sumsq)(acc, v + P.off[0], P.nin, sv);
    }
    return wn_lanes_total(acc);
}

static double FN(piece_dot)(const wn_layout *L, const wn_rowgeom *G,
                            const T *v, const T *gw, const int64_t *ro,
                            int64_t p)
{
    double acc[WN_LANES] = {0};
    const int64_t sv = FN(inner_stride)(L, 0), sgw = FN(inner_stride)(L, 1);
    wn_piece P;
    wn_piece_begin(L, G, 2, p, ro, &P);
    for (int64_t s = 0; s < P.nseg; s++) {
        if (s) wn_piece_next(L, G, 2, &P);
        FN(lane_dot)(acc, v + P.off[0], sv, gw + P.off[1], sgw, P.nin);
    }
    return wn_lanes_total(acc);
}

static void FN(piece_scale)(const wn_layout *L, const wn_rowgeom *G,
                            const T *v, T *w, const int64_t *ro, int64_t p,
                            CT scale, int nt)
{
    const int64_t sv = FN(inner_stride)(L, 0), sw = FN(inner_stride)(L, 1);
    wn_piece P;
    wn_piece_begin(L, G, 2, p, ro, &P);
    for (int64_t s = 0; s < P.nseg; s++) {
        if (s) wn_piece_next(L, G, 2, &P);
        FN(scale_run)(w + P.off[1], sw, v + P.off[0], sv, P.nin, scale, nt);
    }
}

static void FN(piece_bwd)(const wn_layout *L, const wn_rowgeom *G,
                          const T *v, const T *gw, T *gv, const int64_t *ro,
                          int64_t p, BT a, BT b, int nt)
{
    const int64_t sv = FN(inner_stride)(L, 0), sgw = FN(inner_stride)(L, 1),
                  sgv = FN(inner_stride)(L, 2);
    wn_piece P;
    wn_piece_begin(L, G, 3, p, ro, &P);
    for (int64_t s = 0; s < P.nseg; s++) {
        if (s) wn_piece_next(L, G, 3, &P);
        FN(bwd_run)(gv + P.off[2], sgv, gw + P.off[1], sgw, v + P.off[0], sv,
                    P.nin, a, b, nt);
    }
}

/* ---- per-row scalars (the math of CONTRACT.md, in one place) ---------- */

/* norm = sqrt(sum v^2 + eps); scale = g / norm, formed before it meets v. */
WN_INLINE CT FN(fwd_row_scalars)(double sumsq, double eps, T g, NT *norm_out)
{
    NT norm = (NT)sqrt(sumsq + eps);
    *norm_out = norm;
    return LDF(g) / (CT)norm;
}

/* grad_g = dot / norm;  grad_v = a * grad_w - b * v with
 * a = g / norm,  b = g * grad_g / norm^2 = a * grad_g / norm.
 * In float64 with one division (1/norm): a few float64 ulps, far below the
 * rounding to the output type for every type but float64 itself. */
WN_INLINE void FN(bwd_row_scalars)(double dot, NT norm_in, T g, T *grad_g,
                                   BT *a, BT *b)
{
    double inv = 1.0 / (double)norm_in, gd = LDD(g);
    double gg = dot * inv, ad = gd * inv;
    *grad_g = STB((BT)gg);
    *a = (BT)ad;
    *b = (BT)(ad * gg * inv);
}

/* ---- row mode drivers -------------------------------------------------- */

/* One thread's share of a row-mode forward (all of it outside a team). */
WN_INLINE void FN(fwd_rows_team)(const wn_layout *L, const wn_rowplan *P,
                                 const T *v, const T *g, int64_t gs, T *w,
                                 NT *norms, double eps, int nt)
{
    const wn_rowgeom G = P->G;
    double *part = P->part;
    if (P->simple) {
        /* One contiguous piece per row at a fixed row stride: the same
         * arithmetic as below without the layout walking (short rows
         * would otherwise spend more time there than on data). */
        const int64_t sv = L->kept_ndim ? L->kept_stride[0][0] : 0;
        const int64_t sw = L->kept_ndim ? L->kept_stride[1][0] : 0;
        const int64_t n = L->rowlen;
        /* Rows in batches: all sums first, then all square roots and
         * divisions (independent, so they pipeline instead of each row
         * waiting on its own sqrt -> divide chain), then the scaling
         * while the batch is still in L1 (which sizes the batch). */
        const int rb = wn_row_batch(n, sizeof(T), 1);
        const int64_t nbatch = (L->nrows + rb - 1) / rb;
#pragma omp for schedule(static)
        for (int64_t bt = 0; bt < nbatch; bt++) {
            const int64_t r0 = bt * rb;
            const int nb = L->nrows - r0 < rb ? (int)(L->nrows - r0) : rb;
            double tot[WN_ROWBATCH];
            CT scale[WN_ROWBATCH];
            for (int k = 0; k < nb; k++) {
                wn_v8d acc[4] = {{0}};
                FN(vsumsq)(acc, v + (r0 + k) * sv, n);
                tot[k] = wn_v8d_total(acc);
            }
            for (int k = 0; k < nb; k++)
                scale[k] = FN(fwd_row_scalars)(tot[k], eps, g[(r0 + k) * gs],
                                               &norms[r0 + k]);
            for (int k = 0; k < nb; k++)
                FN(scale_run)(w + (r0 + k) * sw, 1, v + (r0 + k) * sv, 1, n,
                              scale[k], nt);
        }
    } else if (!P->split) {
#pragma omp for schedule(static)
        for (int64_t r = 0; r < L->nrows; r++) {
            int64_t ro[2];
            wn_row_offsets(L, 2, r, ro);
            wn_ksum k = {0.0, 0.0};
            for (int64_t p = 0; p < G.npieces; p++)
                wn_ksum_add(&k, FN(piece_sumsq)(L, &G, v, ro, p));
            CT scale = FN(fwd_row_scalars)(wn_ksum_value(&k), eps,
                                           g[r * gs], &norms[r]);
            for (int64_t p = 0; p < G.npieces; p++)
                FN(piece_scale)(L, &G, v, w, ro, p, scale, nt);
        }
    } else {
        const int tid = wn_thread_num(), nteam = wn_num_threads();
        const int64_t lo = G.npieces * tid / nteam,
                      hi = G.npieces * (tid + 1) / nteam;
        for (int64_t r = 0; r < L->nrows; r++) {
            int64_t ro[2];
            double *pr = part + r * G.npieces;
            wn_row_offsets(L, 2, r, ro);
            for (int64_t p = lo; p < hi; p++)
                pr[p] = FN(piece_sumsq)(L, &G, v, ro, p);
#pragma omp barrier
            wn_ksum k = {0.0, 0.0};
            for (int64_t p = 0; p < G.npieces; p++) wn_ksum_add(&k, pr[p]);
            NT norm;
            CT scale = FN(fwd_row_scalars)(wn_ksum_value(&k), eps,
                                           g[r * gs], &norm);
            if (tid == 0) norms[r] = norm;
            for (int64_t p = hi - 1; p >= lo; p--)
                FN(piece_scale)(L, &G, v, w, ro, p, scale, nt);
        }
    }
    if (nt) wn_sfence();
}

static void FN(fwd_rows)(const wn_layout *L, const T *v, const T *g,
                         int64_t gs, T *w, NT *norms, double eps, int nth,
                         int nt)
{
    const wn_rowplan P = wn_rowplan_make(L, nth, 2);
    WN_TEAM(nth, FN(fwd_rows_team)(L, &P, v, g, gs, w, norms, eps, nt));
    free(P.part);
}

/* One thread's share of a row-mode backward (all of it outside a team). */
WN_INLINE void FN(bwd_rows_team)(const wn_layout *L, const wn_rowplan *P,
                                 const T *v, const T *gw, const T *g, int64_t gs,
                                 const NT *norms, int64_t ns, T *gv, T *grad_g,
                                 int nt)
{
    const wn_rowgeom G = P->G;
    double *part = P->part;
    if (P->simple) {
        const int64_t sv = L->kept_ndim ? L->kept_stride[0][0] : 0;
        const int64_t sgw = L->kept_ndim ? L->kept_stride[1][0] : 0;
        const int64_t sgv = L->kept_ndim ? L->kept_stride[2][0] : 0;
        const int64_t n = L->rowlen;
        const int rb = wn_row_batch(n, sizeof(T), 2);
        const int64_t nbatch = (L->nrows + rb - 1) / rb;
#pragma omp for schedule(static)
        for (int64_t bt = 0; bt < nbatch; bt++) {
            const int64_t r0 = bt * rb;
            const int nb = L->nrows - r0 < rb ? (int)(L->nrows - r0) : rb;
            double tot[WN_ROWBATCH];
            BT a[WN_ROWBATCH], b[WN_ROWBATCH];
            for (int k = 0; k < nb; k++) {
                wn_v8d acc[4] = {{0}};
                FN(vdot)(acc, v + (r0 + k) * sv, gw + (r0 + k) * sgw, n);
                tot[k] = wn_v8d_total(acc);
            }
            for (int k = 0; k < nb; k++)
                FN(bwd_row_scalars)(tot[k], norms[(r0 + k) * ns], g[(r0 + k) * gs],
                                    &grad_g[r0 + k], &a[k], &b[k]);
            for (int k = 0; k < nb; k++)
                FN(bwd_run)(gv + (r0 + k) * sgv, 1, gw + (r0 + k) * sgw, 1,
                            v + (r0 + k) * sv, 1, n, a[k], b[k], nt);
        }
    } else if (!P->split) {
#pragma omp for schedule(static)
        for (int64_t r = 0; r < L->nrows; r++) {
            int64_t ro[3];
            wn_row_offsets(L, 3, r, ro);
            wn_ksum k = {0.0, 0.0};
            for (int64_t p = 0; p < G.npieces; p++)
                wn_ksum_add(&k, FN(piece_dot)(L, &G, v, gw, ro, p));
            BT a, b;
            FN(bwd_row_scalars)(wn_ksum_value(&k), norms[r * ns],
                                g[r * gs], &grad_g[r], &a, &b);
            for (int64_t p = 0; p < G.npieces; p++)
                FN(piece_bwd)(L, &G, v, gw, gv, ro, p, a, b, nt);
        }
    } else {
        const int tid = wn_thread_num(), nteam = wn_num_threads();
        const int64_t lo = G.npieces * tid / nteam,
                      hi = G.npieces * (tid + 1) / nteam;
        for (int64_t r = 0; r < L->nrows; r++) {
            int64_t ro[3];
            double *pr = part + r * G.npieces;
            wn_row_offsets(L, 3, r, ro);
            for (int64_t p = lo; p < hi; p++)
                pr[p] = FN(piece_dot)(L, &G, v, gw, ro, p);
#pragma omp barrier
            wn_ksum k = {0.0, 0.0};
            for (int64_t p = 0; p < G.npieces; p++) wn_ksum_add(&k, pr[p]);
            BT a, b;
            T ggr;
            FN(bwd_row_scalars)(wn_ksum_value(&k), norms[r * ns],
                                g[r * gs], &ggr, &a, &b);
            if (tid == 0) grad_g[r] = ggr;
            for (int64_t p = hi - 1; p >= lo; p--)
                FN(piece_bwd)(L, &G, v, gw, gv, ro, p, a, b, nt);
        }
    }
    if (nt) wn_sfence();
}

static void FN(bwd_rows)(const wn_layout *L, const T *v, const T *gw,
                         const T *g, int64_t gs, const NT *norms, int64_t ns,
                         T *gv, T *grad_g, int nth, int nt)
{
    const wn_rowplan P = wn_rowplan_make(L, nth, 3);
    WN_TEAM(nth, FN(bwd_rows_team)(L, &P, v, gw, g, gs, norms, ns, gv, grad_g,
                                   nt));
    free(P.part);
}

/* ---- column mode ------------------------------------------------------- */

WN_INLINE void FN(col_flush)(double *restrict acc, double *restrict sum,
                             double *restrict comp, int64_t nc)
{
    for (int64_t c = 0; c < nc; c++) {
        wn_ksum k = {sum[c], comp[c]};
        wn_ksum_add(&k, acc[c]);
        sum[c] = k.sum;
        comp[c] = k.comp;
        acc[c] = 0.0;
    }
}

/* Superchunk totals of columns [r0, r0+nc) over superchunks [s0, s1):
 * out[c] = Neumaier sum over s of (Neumaier sum over WN_COLCHUNK-step chunks
 * of the plain per-column sums).  gw == NULL: sum of squares of v, else the
 * dot product of v and gw.  Phases that split superchunks across threads
 * combine the same per-superchunk values in the same order. */
static void FN(col_total)(const wn_layout *L, const wn_colgeom *G, int64_t r0,
                          int64_t nc, int64_t s0, int64_t s1, const T *v,
                          const T *gw, double *restrict scr, double *restrict out)
{
    const int K = L->kept_ndim, narr = gw ? 2 : 1;
    const int64_t cv = L->kept_stride[0][K - 1];
    const int64_t cg = gw ? L->kept_stride[1][K - 1] : 0;
    /* scratch: 5 * nc doubles (plain lanes, chunk Neumaier pair, total pair) */
    double *restrict acc = scr, *restrict sum = scr + nc, *restrict comp = scr + 2 * nc;
    wn_ksum *restrict tot = (wn_ksum *)(scr + 3 * nc);
    int64_t base[2];
    wn_row_offsets(L, narr, r0, base);
    for (int64_t c = 0; c < nc; c++) tot[c].sum = tot[c].comp = 0.0;

    for (int64_t s = s0; s < s1; s++) {
        const int64_t e0 = s * G->sc;
        const int64_t e1 = e0 + G->sc < L->rowlen ? e0 + G->sc : L->rowlen;
        for (int64_t c = 0; c < nc; c++) acc[c] = sum[c] = comp[c] = 0.0;
        wn_redctr C;
        wn_redctr_seek(L, narr, e0, &C);
        for (int64_t e = e0; e < e1; e++) {
            const T *x = v + base[0] + C.off[0];
            if (!gw) {
                if (cv == 1)
                    for (int64_t c = 0; c < nc; c++) { double t = LDD(x[c]); acc[c] += t * t; }
                else
                    for (int64_t c = 0; c < nc; c++) { double t = LDD(x[c * cv]); acc[c] += t * t; }
            } else {
                const T *y = gw + base[1] + C.off[1];
                if (cv == 1 && cg == 1)
                    for (int64_t c = 0; c < nc; c++) acc[c] += LDD(x[c]) * LDD(y[c]);
                else
                    for (int64_t c = 0; c < nc; c++) acc[c] += LDD(x[c * cv]) * LDD(y[c * cg]);
            }
            if ((e + 1) % WN_COLCHUNK == 0 || e + 1 == e1)
                FN(col_flush)(acc, sum, comp, nc);
            wn_redctr_next(L, narr, &C);
        }
        for (int64_t c = 0; c < nc; c++) {
            wn_ksum k = {sum[c], comp[c]};
            wn_ksum_add(&tot[c], wn_ksum_value(&k));
        }
    }
    for (int64_t c = 0; c < nc; c++) out[c] = wn_ksum_value(&tot[c]);
}

/* Second pass over superchunks [s0, s1) of columns [r0, r0+nc): forward
 * (gv == NULL) w = v * scale[c]; backward gv = a[c] * gw - b[c] * v. */
static void FN(col_apply)(const wn_layout *L, const wn_colgeom *G, int64_t r0,
                          int64_t nc, int64_t s0, int64_t s1, const T *v,
                          T *w, const CT *scale, const T *gw, T *gv,
                          const BT *ca, const BT *cb, int nt)
{
    const int K = L->kept_ndim, narr = gv ? 3 : 2;
    const int64_t cv = L->kept_stride[0][K - 1], c1 = L->kept_stride[1][K - 1];
    const int64_t c2 = gv ? L->kept_stride[2][K - 1] : 0;
    int64_t base[3];
    wn_row_offsets(L, narr, r0, base);
    const int64_t e0 = s0 * G->sc;
    const int64_t e1 = s1 * G->sc < L->rowlen ? s1 * G->sc : L->rowlen;
    wn_redctr C;
    wn_redctr_seek(L, narr, e0, &C);
    for (int64_t e = e0; e < e1; e++) {
        const T *x = v + base[0] + C.off[0];
        if (!gv) {
            T *y = w + base[1] + C.off[1];
            if (cv == 1 && c1 == 1)
                FN(scalev_run)(y, x, scale, nc, nt);
            else
                for (int64_t c = 0; c < nc; c++) y[c * c1] = STF(LDF(x[c * cv]) * scale[c]);
        } else {
            const T *y = gw + base[1] + C.off[1];
            T *z = gv + base[2] + C.off[2];
            if (cv == 1 && c1 == 1 && c2 == 1)
                FN(bwdv_run)(z, y, x, ca, cb, nc, nt);
            else
                for (int64_t c = 0; c < nc; c++)
                    z[c * c2] = STB(ca[c] * LDB(y[c * c1]) - cb[c] * LDB(x[c * cv]));
        }
        wn_redctr_next(L, narr, &C);
    }
}

/* One thread's share of a column-mode call (all of it outside a team). */
WN_INLINE void FN(cols_team)(const wn_layout *L, const wn_colgeom *Gp,
                             int64_t units, double *scratch, double *part,
                             void *scal, const T *v, const T *gw, const T *g,
                             int64_t gs, double eps, T *w, void *norms_out,
                             const NT *norms_in, int64_t ns, T *gv, T *grad_g,
                             int nt)
{
    const wn_colgeom G = *Gp;
    const int bwd = gw != NULL;
    double small[WN_COLSCR * WN_COLBLK_MIN];
    double *scr = scratch ? scratch + (size_t)wn_thread_num() * WN_COLSCR * WN_COLBLK
                          : small;
    double *tot = scr + 5 * G.cb;
    if (!part) {
        CT *scale = (CT *)(scr + 6 * G.cb);
        BT *ca = (BT *)(scr + 7 * G.cb), *cb = (BT *)(scr + 8 * G.cb);
#pragma omp for schedule(static)
        for (int64_t u = 0; u < units; u++) {
            const int64_t r0 = (u / G.nblk) * G.m + (u % G.nblk) * G.cb;
            const int64_t nc = G.m - r0 % G.m < G.cb ? G.m - r0 % G.m : G.cb;
            FN(col_total)(L, &G, r0, nc, 0, G.nsc, v, gw, scr, tot);
            for (int64_t c = 0; c < nc; c++) {
                const int64_t r = r0 + c;
                if (bwd)
                    FN(bwd_row_scalars)(tot[c], norms_in[r * ns], g[r * gs],
                                        &grad_g[r], &ca[c], &cb[c]);
                else
                    scale[c] = FN(fwd_row_scalars)(tot[c], eps, g[r * gs],
                                                   (NT *)norms_out + r);
            }
            FN(col_apply)(L, &G, r0, nc, 0, G.nsc, v, w, scale, gw, gv, ca, cb, nt);
        }
    } else {
        /* Each thread's share of the items, walked forwards in pass 1
         * and backwards in pass 3: its last reads are its first
         * re-reads, while they are still in cache. */
        const int64_t nitems = units * G.nsc;
        const int tid = wn_thread_num(), nteam = wn_num_threads();
        const int64_t lo = nitems * tid / nteam, hi = nitems * (tid + 1) / nteam;
        for (int64_t i = lo; i < hi; i++) {
            const int64_t u = i / G.nsc, s = i % G.nsc;
            const int64_t r0 = (u / G.nblk) * G.m + (u % G.nblk) * G.cb;
            const int64_t nc = G.m - r0 % G.m < G.cb ? G.m - r0 % G.m : G.cb;
            FN(col_total)(L, &G, r0, nc, s, s + 1, v, gw, scr, tot);
            for (int64_t c = 0; c < nc; c++) part[s * L->nrows + r0 + c] = tot[c];
        }
#pragma omp barrier
        CT *scale = (CT *)scal;
        BT *ca = (BT *)scal, *cb = (BT *)scal + L->nrows;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < L->nrows; r++) {
            wn_ksum k = {0.0, 0.0};
            for (int64_t s = 0; s < G.nsc; s++) wn_ksum_add(&k, part[s * L->nrows + r]);
            if (bwd)
                FN(bwd_row_scalars)(wn_ksum_value(&k), norms_in[r * ns],
                                    g[r * gs], &grad_g[r], &ca[r], &cb[r]);
            else
                scale[r] = FN(fwd_row_scalars)(wn_ksum_value(&k), eps,
                                               g[r * gs], (NT *)norms_out + r);
        }
        for (int64_t i = hi - 1; i >= lo; i--) {
            const int64_t u = i / G.nsc, s = i % G.nsc;
            const int64_t r0 = (u / G.nblk) * G.m + (u % G.nblk) * G.cb;
            const int64_t nc = G.m - r0 % G.m < G.cb ? G.m - r0 % G.m : G.cb;
            FN(col_apply)(L, &G, r0, nc, s, s + 1, v, w, scale + r0, gw, gv,
                          ca + r0, cb + r0, nt);
        }
    }
    if (nt) wn_sfence();
}

/* Column strategy.  Few superchunks (short reduced extent): each thread
 * takes whole column blocks and runs both passes while the block is in L2.
 * Many superchunks with several threads: (1) all threads sum superchunks of
 * the blocks into `part`, (2) per-column totals and scalars, (3) the second
 * pass, walked backwards so its first reads hit what (1) left in cache.
 * Both routes compute the same per-superchunk values and combine them in
 * the same order. */
static void FN(cols)(const wn_layout *L, const T *v, const T *gw, const T *g,
                     int64_t gs, double eps, T *w, void *norms_out,
                     const NT *norms_in, int64_t ns, T *gv, T *grad_g, int nth,
                     int nt)
{
    const int bwd = gw != NULL;
    /* Per-thread scratch on the heap (column blocks are wide: a few hundred
     * KiB would be unkind to small thread stacks); if that allocation
     * fails, narrow blocks on the stack.  Block width never changes bits. */
    double *scratch = malloc(sizeof(double) * WN_COLSCR * WN_COLBLK * nth);
    const wn_colgeom G = wn_colgeom_make(L, sizeof(T), bwd ? 2 : 1, wn_col_budget,
                                         scratch ? WN_COLBLK : WN_COLBLK_MIN);
    const int64_t units = G.nouter * G.nblk;
    double *part = NULL;
    void *scal = NULL;
    if (G.nsc > 1 && nth > 1) {
        part = malloc(sizeof(double) * G.nsc * L->nrows);
        scal = malloc((bwd ? 2 * sizeof(BT) : sizeof(CT)) * L->nrows);
        if (!part || !scal) { free(part); free(scal); part = NULL; scal = NULL; }
    }

    WN_TEAM(nth, FN(cols_team)(L, &G, units, scratch, part, scal, v, gw, g, gs,
                               eps, w, norms_out, norms_in, ns, gv, grad_g, nt));
    free(part);
    free(scal);
    free(scratch);
}

/* ---- entry points for this (ISA, dtype) -------------------------------- */

static void FN(forward)(const wn_layout *L, const void *v, const void *g,
                        int64_t gs, void *w, void *norms, double eps, int nth,
                        int nt)
{
    if (wn_use_columns(L))
        FN(cols)(L, (const T *)v, NULL, (const T *)g, gs, eps, (T *)w, norms,
                 NULL, 0, NULL, NULL, nth, nt);
    else
        FN(fwd_rows)(L, (const T *)v, (const T *)g, gs, (T *)w, (NT *)norms,
                     eps, nth, nt);
}

static void FN(backward)(const wn_layout *L, const void *gw, const void *v,
                         const void *g, int64_t gs, const void *norms,
                         int64_t ns, void *gv, void *grad_g, int nth, int nt)
{
    if (wn_use_columns(L))
        FN(cols)(L, (const T *)v, (const T *)gw, (const T *)g, gs, 0.0, NULL,
                 NULL, (const NT *)norms, ns, (T *)gv, (T *)grad_g, nth, nt);
    else
        FN(bwd_rows)(L, (const T *)v, (const T *)gw, (const T *)g, gs,
                     (const NT *)norms, ns, (T *)gv, (T *)grad_g, nth, nt);
}
