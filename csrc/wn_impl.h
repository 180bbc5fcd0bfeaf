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
 *   VF, VD                       this ISA's native float / double vectors
 *   LOADVF(p) / LOADVD(p)        WN_VFL elements at p as a VF (exact) / f64: as a VD
 *   WN_NVF, WN_NVD               how many of them make 32 lanes
 *   WN_VFL, WN_VDL               lanes per VF / VD
 *   CV, CVL                      the CT vector type (VF or VD) and its lanes
 *   LOADCV(p) / STORECV(p, x)    CVL contiguous elements <-> a CV (LDF / STF exactly)
 *   LOADC(p)                     CVL contiguous CT values as a CV
 *   SCALE_OUT(q)                 float64 q -> T, rounded once (row scale's output)
 *   STREAM(dst, src, nbytes)  streaming store of a 64-byte-aligned L1 buffer
 *   LOADCV2 / STORECV2 (LOADVF2 / UNPAIRVF)  optional: two vectors of
 *                                contiguous elements in a cheaper lane order
 *                                (see below)
 *
 * Each (ISA, dtype) provides two entry points over a prepared wn_task (see
 * wn_common.h, made by wn.c): `units` runs a range of a task's independent
 * units on the calling thread; `team` runs a team task's share on every
 * thread of the current team.  Forward and row scale (w == NULL: no second
 * pass) share the forward bodies.  Two strategies:
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

/* Two vectors' worth (2 * CVL contiguous elements) in an order LOADCV2 and
 * STORECV2 agree on, for elementwise passes whose scalars are the same for
 * every element: the natural order unless the dtype's variant has a cheaper
 * one (bfloat16 on AVX2: even / odd halves of each dword).  A variant with
 * such an order may give the sums LOADVF2 / UNPAIRVF too (no default: the
 * sums keep their one-vector loop without them, whose code is tuned). */
#ifndef LOADCV2
#define LOADCV2(p, a, b) do { *(a) = LOADCV(p); *(b) = LOADCV((p) + CVL); } while (0)
#define STORECV2(p, a, b) do { STORECV((p), (a)); STORECV((p) + CVL, (b)); } while (0)
#define WN_CV2_DEFAULT
#endif

/* Elements of T in one 64-byte cache line (a streaming store's unit; a whole
 * number of vectors in every variant). */
#define WN_LINE ((int64_t)(64 / sizeof(T)))

/* ---- runs along one strided dim (the vectorized inner loops) ---------- */

/* The 32 lanes: element i of a run goes to lane i % 32, each lane a float64
 * total in the caller's `acc[32]` (L1).  The hot loops hold their partials
 * in VF / VD registers of this ISA's native width (WN_NVF / WN_NVD of them:
 * 2 / 4 zmm, 4 / 8 ymm or 8 / 16 xmm), so every variant computes the same
 * lanes in the same order and gives the same bits.  (Wider-than-native GCC
 * vectors are lowered through the stack on AVX2 and SSE: several times
 * slower.) */

/* Contiguous run of n elements into the lanes. */
WN_INLINE void FN(vsumsq)(double *restrict acc, const T *restrict x, int64_t n)
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
        VF p[WN_NVF];
        for (int q = 0; q < WN_NVF; q++) p[q] = (VF){0};
#ifdef LOADVF2
        /* lanes in pairs of registers in even / odd order (see LOADVF2),
         * each lane the same additions in the same order */
        for (int k = 0; k < WN_FLUSH && i + WN_LANES <= n; k++, i += WN_LANES)
            WN_UNROLL
            for (int q = 0; q < WN_NVF; q += 2) {
                VF e, o;
                LOADVF2(x + i + q * WN_VFL, &e, &o);
                p[q] += e * e;
                p[q + 1] += o * o;
            }
        for (int q = 0; q < WN_NVF; q += 2) UNPAIRVF(&p[q], &p[q + 1]);
#else
        for (int k = 0; k < WN_FLUSH && i + WN_LANES <= n; k++, i += WN_LANES)
            WN_UNROLL
            for (int q = 0; q < WN_NVF; q++) {
                const VF t = LOADVF(x + i + q * WN_VFL);
                p[q] += t * t;
            }
#endif
        for (int q = 0; q < WN_NVF; q++) WN_FLUSH1(acc + q * WN_VFL, p[q]);
    }
#else
    if (i + WN_LANES <= n) {
        VD a[WN_NVD];
        for (int q = 0; q < WN_NVD; q++) memcpy(&a[q], acc + q * WN_VDL, sizeof a[q]);
        for (; i + WN_LANES <= n; i += WN_LANES)
            WN_UNROLL
            for (int q = 0; q < WN_NVD; q++) {
                const VD t = LOADVD(x + i + q * WN_VDL);
                a[q] += t * t;
            }
        for (int q = 0; q < WN_NVD; q++) memcpy(acc + q * WN_VDL, &a[q], sizeof a[q]);
    }
#endif
    for (int j = 0; i < n; i++, j++) {
        double t = LDD(x[i]);
        acc[j] += t * t;
    }
}

/* Contiguous runs of a and b: the lanes of the dot product. */
WN_INLINE void FN(vdot)(double *restrict acc, const T *restrict a,
                        const T *restrict b, int64_t n)
{
    int64_t i = 0;
#if WN_FLUSH
    while (i + WN_LANES <= n) {
        VF p[WN_NVF];
        for (int q = 0; q < WN_NVF; q++) p[q] = (VF){0};
#ifdef LOADVF2
        for (int k = 0; k < WN_FLUSH && i + WN_LANES <= n; k++, i += WN_LANES)
            WN_UNROLL
            for (int q = 0; q < WN_NVF; q += 2) {
                VF ae, ao, be, bo;
                LOADVF2(a + i + q * WN_VFL, &ae, &ao);
                LOADVF2(b + i + q * WN_VFL, &be, &bo);
                p[q] += ae * be;
                p[q + 1] += ao * bo;
            }
        for (int q = 0; q < WN_NVF; q += 2) UNPAIRVF(&p[q], &p[q + 1]);
#else
        for (int k = 0; k < WN_FLUSH && i + WN_LANES <= n; k++, i += WN_LANES)
            WN_UNROLL
            for (int q = 0; q < WN_NVF; q++)
                p[q] += LOADVF(a + i + q * WN_VFL) * LOADVF(b + i + q * WN_VFL);
#endif
        for (int q = 0; q < WN_NVF; q++) WN_FLUSH1(acc + q * WN_VFL, p[q]);
    }
#else
    if (i + WN_LANES <= n) {
        VD s[WN_NVD];
        for (int q = 0; q < WN_NVD; q++) memcpy(&s[q], acc + q * WN_VDL, sizeof s[q]);
        for (; i + WN_LANES <= n; i += WN_LANES)
            WN_UNROLL
            for (int q = 0; q < WN_NVD; q++)
                s[q] += LOADVD(a + i + q * WN_VDL) * LOADVD(b + i + q * WN_VDL);
        for (int q = 0; q < WN_NVD; q++) memcpy(acc + q * WN_VDL, &s[q], sizeof s[q]);
    }
#endif
    for (int j = 0; i < n; i++, j++)
        acc[j] += LDD(a[i]) * LDD(b[i]);
}

/* Strided or contiguous run into the lanes (same lane rule). */
WN_INLINE void FN(lane_sumsq)(double *restrict acc, const T *restrict x,
                              int64_t n, int64_t s)
{
    /* Runs shorter than the lanes (e.g. the 3x3 taps of a ConvTranspose
     * weight normalized over dim=1) only meet the tail loop. */
    if (s == 1) {
        FN(vsumsq)(acc, x, n);
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
    if (sa == 1 && sb == 1) {
        FN(vdot)(acc, a, b, n);
        return;
    }
    int64_t i = 0;
    for (; i + WN_LANES <= n; i += WN_LANES)
        for (int j = 0; j < WN_LANES; j++)
            acc[j] += LDD(a[(i + j) * sa]) * LDD(b[(i + j) * sb]);
    for (int j = 0; i < n; i++, j++)
        acc[j] += LDD(a[i * sa]) * LDD(b[i * sb]);
}

/* ---- the elementwise passes, CVL elements (one CV register) at a time --
 * Each element goes through exactly the scalar arithmetic (LDF, one CT
 * multiply / the backward's two products and a difference, STF rounding),
 * vector or tail alike. */

/* Elements the next streamed block of a run takes, with `left` elements
 * left from a line-aligned position: a whole buffer of `b`, else the whole
 * lines left (a row or step shorter than the buffer: rows of 64, the
 * positional convs' 512-byte steps), else 0 (the tail, stored normally). */
#define WN_NT_RUN(left, b) ((left) >= (b) ? (int64_t)(b) : (left) / WN_LINE * WN_LINE)

/* w = v * scale.  With `nt`, a contiguous w is written with streaming
 * stores (no read-for-ownership of w's lines) through an L1 buffer. */
WN_INLINE void FN(scale_run)(T *w, int64_t sw, const T *v, int64_t sv,
                             int64_t n, CT scale, int nt)
{
    int64_t i = 0;
    if (sw == 1 && sv == 1) {
        /* broadcast (x - 0 is x, -0 included; 0 + x would turn -0 into +0) */
        const CV s = scale - (CV){0};
        if (nt) {
            enum { B = WN_BUFBYTES / sizeof(T) };
            T buf[B] __attribute__((aligned(64)));
            for (; i < n && ((uintptr_t)(w + i) & 63); i++)
                w[i] = STF(LDF(v[i]) * scale);
            for (int64_t m; (m = WN_NT_RUN(n - i, B)); i += m) {
                int64_t j = 0;
                for (; j + 2 * CVL <= m; j += 2 * CVL) {
                    CV x, y;
                    LOADCV2(v + i + j, &x, &y);
                    STORECV2(buf + j, x * s, y * s);
                }
                for (; j < m; j += CVL) STORECV(buf + j, LOADCV(v + i + j) * s);
                STREAM(w + i, buf, m * sizeof(T));
            }
        }
        for (; i + 2 * CVL <= n; i += 2 * CVL) {
            CV x, y;
            LOADCV2(v + i, &x, &y);
            STORECV2(w + i, x * s, y * s);
        }
        for (; i + CVL <= n; i += CVL) STORECV(w + i, LOADCV(v + i) * s);
#ifdef LDPCV
        /* the tail through a mask: the same products, elementwise */
        if (i < n) STPCV(w + i, (int)(n - i), LDPCV(v + i, (int)(n - i)) * s);
#else
        for (; i < n; i++) w[i] = STF(LDF(v[i]) * scale);
#endif
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
        const CV va = a - (CV){0}, vb = b - (CV){0};   /* broadcasts, -0 kept */
        if (nt) {
            enum { B = WN_BUFBYTES / sizeof(T) };
            T buf[B] __attribute__((aligned(64)));
            for (; i < n && ((uintptr_t)(gv + i) & 63); i++)
                gv[i] = STB(a * LDB(gw[i]) - b * LDB(v[i]));
            for (int64_t m; (m = WN_NT_RUN(n - i, B)); i += m) {
                int64_t j = 0;
                for (; j + 2 * CVL <= m; j += 2 * CVL) {
                    CV g0, g1, x0, x1;
                    LOADCV2(gw + i + j, &g0, &g1);
                    LOADCV2(v + i + j, &x0, &x1);
                    STORECV2(buf + j, va * g0 - vb * x0, va * g1 - vb * x1);
                }
                for (; j < m; j += CVL)
                    STORECV(buf + j, va * LOADCV(gw + i + j) - vb * LOADCV(v + i + j));
                STREAM(gv + i, buf, m * sizeof(T));
            }
        }
        for (; i + 2 * CVL <= n; i += 2 * CVL) {
            CV g0, g1, x0, x1;
            LOADCV2(gw + i, &g0, &g1);
            LOADCV2(v + i, &x0, &x1);
            STORECV2(gv + i, va * g0 - vb * x0, va * g1 - vb * x1);
        }
        for (; i + CVL <= n; i += CVL)
            STORECV(gv + i, va * LOADCV(gw + i) - vb * LOADCV(v + i));
#ifdef LDPCV
        if (i < n) {
            const int m = (int)(n - i);
            STPCV(gv + i, m, va * LDPCV(gw + i, m) - vb * LDPCV(v + i, m));
        }
#else
        for (; i < n; i++) gv[i] = STB(a * LDB(gw[i]) - b * LDB(v[i]));
#endif
    } else {
        for (; i < n; i++)
            gv[i * sgv] = STB(a * LDB(gw[i * sgw]) - b * LDB(v[i * sv]));
    }
}

/* Contiguous runs with a per-element scale (column mode): y = x * sc[i]. */
WN_INLINE void FN(scalev_run)(T *y, const T *x, const CT *sc, int64_t n, int nt)
{
    int64_t i = 0;
    if (nt) {
        enum { B = WN_BUFBYTES / sizeof(T) };
        T buf[B] __attribute__((aligned(64)));
        for (; i < n && ((uintptr_t)(y + i) & 63); i++) y[i] = STF(LDF(x[i]) * sc[i]);
        for (int64_t m; (m = WN_NT_RUN(n - i, B)); i += m) {
            for (int64_t j = 0; j < m; j += CVL)
                STORECV(buf + j, LOADCV(x + i + j) * LOADC(sc + i + j));
            STREAM(y + i, buf, m * sizeof(T));
        }
    }
    for (; i + CVL <= n; i += CVL) STORECV(y + i, LOADCV(x + i) * LOADC(sc + i));
    for (; i < n; i++) y[i] = STF(LDF(x[i]) * sc[i]);
}

/* z = a[i] * y - b[i] * x (column mode backward). */
WN_INLINE void FN(bwdv_run)(T *z, const T *y, const T *x, const BT *a,
                            const BT *b, int64_t n, int nt)
{
    int64_t i = 0;
    if (nt) {
        enum { B = WN_BUFBYTES / sizeof(T) };
        T buf[B] __attribute__((aligned(64)));
        for (; i < n && ((uintptr_t)(z + i) & 63); i++)
            z[i] = STB(a[i] * LDB(y[i]) - b[i] * LDB(x[i]));
        for (int64_t m; (m = WN_NT_RUN(n - i, B)); i += m) {
            for (int64_t j = 0; j < m; j += CVL)
                STORECV(buf + j, LOADC(a + i + j) * LOADCV(y + i + j)
                                 - LOADC(b + i + j) * LOADCV(x + i + j));
            STREAM(z + i, buf, m * sizeof(T));
        }
    }
    for (; i + CVL <= n; i += CVL)
        STORECV(z + i, LOADC(a + i) * LOADCV(y + i) - LOADC(b + i) * LOADCV(x + i));
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
    double acc[WN_LANES] __attribute__((aligned(64)));
    WN_ZERO(acc);
    const int64_t sv = FN(inner_stride)(L, 0);
    wn_piece P;
    wn_piece_begin(L, G, 1, p, ro, &P);
    for (int64_t s = 0; s < P.nseg; s++) {
        if (s) wn_piece_next(L, G, 1, &P);
        FN(lane_sumsq)(acc, v + P.off[0], P.nin, sv);
    }
    return WN_TOTAL(acc);
}

static double FN(piece_dot)(const wn_layout *L, const wn_rowgeom *G,
                            const T *v, const T *gw, const int64_t *ro,
                            int64_t p)
{
    double acc[WN_LANES] __attribute__((aligned(64)));
    WN_ZERO(acc);
    const int64_t sv = FN(inner_stride)(L, 0), sgw = FN(inner_stride)(L, 1);
    wn_piece P;
    wn_piece_begin(L, G, 2, p, ro, &P);
    for (int64_t s = 0; s < P.nseg; s++) {
        if (s) wn_piece_next(L, G, 2, &P);
        FN(lane_dot)(acc, v + P.off[0], sv, gw + P.off[1], sgw, P.nin);
    }
    return WN_TOTAL(acc);
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

/* ---- per-row scalars (the math, once for this backend) ------------------ */

/* norm = sqrt(sum v^2 + eps); scale = g / norm with the norm as stored,
 * formed before it meets v (so g == norm gives a scale of exactly 1): one
 * correctly rounded CT division.  The row scale call returns g / norm in T:
 * the quotient in float64, rounded once to T (SCALE_OUT). */
WN_INLINE CT FN(fwd_row_scalars)(double sumsq, double eps, T g, NT *norm_out)
{
    NT norm = (NT)sqrt(sumsq + eps);
    *norm_out = norm;
    return LDF(g) / (CT)norm;
}

/* grad_g = dot / norm;  grad_v = a * grad_w - b * v with
 * a = g / norm,  b = a * grad_g / norm  (= g * grad_g / norm^2).
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

/* Row r of a forward or row-scale call: its scalars from the row's sum of
 * squares; stores the norm (and the rounded scale) when `store`. */
WN_INLINE CT FN(fwd_row)(const wn_call *c, int64_t r, double sumsq, int store)
{
    NT norm;
    const CT s = FN(fwd_row_scalars)(sumsq, c->eps,
                                     ((const T *)c->g)[r * c->g_stride], &norm);
    if (store) {
        ((NT *)c->norms_out)[r] = norm;
        if (c->scale)
            ((T *)c->scale)[r] = SCALE_OUT(LDD(((const T *)c->g)[r * c->g_stride]) / (double)norm);
    }
    return s;
}

/* Row r of a backward call: its scalars from the row's dot product; stores
 * grad_g when `store`. */
WN_INLINE void FN(bwd_row)(const wn_call *c, int64_t r, double dot, int store,
                           BT *a, BT *b)
{
    T gg;
    FN(bwd_row_scalars)(dot, ((const NT *)c->norms)[r * c->norms_stride],
                        ((const T *)c->g)[r * c->g_stride], &gg, a, b);
    if (store) ((T *)c->grad_g)[r] = gg;
}

/* ---- short rows (WN_MODE_SHORT) ----------------------------------------- */

#if WN_FLUSH && WN_SHORT_MAX / WN_LANES > WN_FLUSH
#error "short rows: a row's float32 lane partials must not need a flush"
#endif
#if WN_SB % 16 || WN_SB % CVL
#error "short rows: a batch is whole groups of CVL rows"
#endif

/* m (1 <= m <= WN_VDL) elements at p as doubles (LDD, exact), zeros beyond. */
WN_INLINE VD FN(ldptd)(const T *p, int m)
{
#ifdef LDPTD
    return LDPTD(p, m);
#else
    if (m >= WN_VDL) {   /* a whole vector: the compiler widens it as one */
        double d[WN_VDL] __attribute__((aligned(64)));
        for (int l = 0; l < WN_VDL; l++) d[l] = LDD(p[l]);
        return WN_LD_F64(d);
    }
    /* part of one: lanes set in the register (stored to memory and loaded
     * back as a vector they stall on store forwarding: rows of 24 under
     * AVX2 ran 3.3x slower) */
    VD d = (VD){0};
    WN_UNROLL
    for (int l = 0; l < WN_VDL; l++)
        if (l < m) d[l] = LDD(p[l]);
    return d;
#endif
}

/* One contiguous row of n <= WN_SHORT_MAX elements: its 32 lanes formed in
 * registers exactly as vsumsq (y == NULL) or vdot (x . y) form them in the
 * caller's acc (zeroed lanes; whole 32-element blocks in float32 partials,
 * for float32 and 16-bit types, added to the lanes; the tail's float64
 * products added lane by lane; lanes a tail does not reach get nothing, and
 * adding the zeros of a padded vector to a lane -- never -0, since it
 * started at +0 -- leaves it as it is), then the tree's levels w = 16 and 8
 * (lane j += lane j + w).  The 8 lanes left go to out[0 .. 8). */
WN_INLINE void FN(short_lanes)(const T *restrict x, const T *restrict y, int n,
                               const int nmax, double *restrict out)
{
    VD a[WN_NVD];
    WN_UNROLL
    for (int q = 0; q < WN_NVD; q++) a[q] = (VD){0};
    const int nblk = n / WN_LANES;
#if WN_FLUSH
    if (nblk) {
        VF p[WN_NVF];
        WN_UNROLL
        for (int q = 0; q < WN_NVF; q++) p[q] = (VF){0};
        for (int b = 0; b < nblk; b++)
            WN_UNROLL
            for (int q = 0; q < WN_NVF; q++) {
                const VF t = LOADVF(x + b * WN_LANES + q * WN_VFL);
                p[q] += y ? t * LOADVF(y + b * WN_LANES + q * WN_VFL) : t * t;
            }
        WN_UNROLL
        for (int q = 0; q < WN_NVF; q++) {
            VD lo, hi;
            WN_WIDEN(p[q], &lo, &hi);
            a[2 * q] += lo;
            a[2 * q + 1] += hi;
        }
    }
#else
    for (int b = 0; b < nblk; b++)
        WN_UNROLL
        for (int q = 0; q < WN_NVD; q++) {
            const VD t = LOADVD(x + b * WN_LANES + q * WN_VDL);
            a[q] += y ? t * LOADVD(y + b * WN_LANES + q * WN_VDL) : t * t;
        }
#endif
    const int i0 = nblk * WN_LANES, r = n - i0;
    WN_UNROLL
    for (int q = 0; q < WN_NVD; q++)
        if (q * WN_VDL < r) {
            const int m = r - q * WN_VDL < WN_VDL ? r - q * WN_VDL : WN_VDL;
            const VD t = FN(ldptd)(x + i0 + q * WN_VDL, m);
            a[q] += y ? t * FN(ldptd)(y + i0 + q * WN_VDL, m) : t * t;
        }
    /* The tree's levels.  With n <= nmax < 32 (nmax a compile-time bound)
     * only the first ceil(nmax / WN_VDL) vectors were reached (`live`,
     * rounded up to a power of two); the others still hold exactly +0, and
     * adding +0 to a lane changes nothing -- a lane is never -0, having
     * started at +0 -- so the levels that would only add those are left out:
     * the tree starts at w = live / 2 vectors (a loop bound, not a test in
     * the unrolled body, which kept the lanes from living in registers).
     * Same bits; three fewer additions a row of 8. */
    int live = nmax < WN_LANES ? (nmax + WN_VDL - 1) / WN_VDL : WN_NVD;
    live = live <= 1 ? 1 : live <= 2 ? 2 : live <= 4 ? 4 : live <= 8 ? 8 : live <= 16 ? 16 : 32;
    WN_UNROLL
    for (int m = live / 2; m * WN_VDL >= 8; m /= 2)   /* live <= WN_NVD, both powers of 2 */
        WN_UNROLL
        for (int q = 0; q < m; q++) a[q] += a[q + m];
    WN_UNROLL
    for (int q = 0; q < 8 / WN_VDL; q++) WN_ST_F64(out + q * WN_VDL, a[q]);
}

/* Row totals of rows [r0, r0 + nb) of a batch (nb <= WN_SB): tot[k], and
 * zeros for the batch's unused slots. */
WN_INLINE void FN(short_totals)(const T *v, int64_t sv, const T *gw, int64_t sgw,
                                int64_t r0, int nb, int n, const int nmax,
                                double *restrict tot)
{
    double lanes[WN_SB * 8] __attribute__((aligned(64)));
    for (int k = 0; k < nb; k++)
        FN(short_lanes)(v + (r0 + k) * sv, gw ? gw + (r0 + k) * sgw : NULL, n, nmax,
                        lanes + 8 * k);
    const int nh = (nb + 7) / 8 * 8;
    for (int k = nb; k < nh; k++) memset(lanes + 8 * k, 0, 8 * sizeof(double));
    for (int h = 0; h < nh; h += 8) WN_HSUM8(lanes + 8 * h, tot + h);
    for (int k = nh; k < WN_SB; k++) tot[k] = 0.0;   /* slots a batch of rb < WN_SB leaves */
}

/* Dense short rows (back to back in every array, n dividing CVL): the
 * batch is one run; vector j of it holds CVL / n whole rows, whose scalars
 * a shuffle of the row scalars spreads out (index l / n).  Each element
 * gets the same product as in scale_run / bwd_run. */
WN_INLINE CVI FN(short_spread)(int n)
{
    CVI idx;
    for (int l = 0; l < CVL; l++) idx[l] = l / n;
    return idx;
}

WN_INLINE void FN(short_scale_dense)(T *restrict w, const T *restrict v,
                                     const CT *restrict s, int nb, int n, CVI idx)
{
    const int rpv = CVL / n;
    int64_t i = 0;
    /* groups of CVL rows: n vectors, their scalars from one vector load */
    for (int k = 0; k + CVL <= nb; k += CVL) {
        const CV sv = LOADC(s + k);
        for (int q = 0; q < n; q++, i += CVL)
            STORECV(w + i, LOADCV(v + i) * __builtin_shuffle(sv, idx + q * rpv));
    }
    for (const int64_t ne = (int64_t)nb * n; i < ne; i++)
        w[i] = STF(LDF(v[i]) * s[i / n]);
}

WN_INLINE void FN(short_bwd_dense)(T *restrict gv, const T *restrict gw,
                                   const T *restrict v, const BT *restrict a,
                                   const BT *restrict b, int nb, int n, CVI idx)
{
    const int rpv = CVL / n;
    int64_t i = 0;
    for (int k = 0; k + CVL <= nb; k += CVL) {
        const CV av = LOADC(a + k), bv = LOADC(b + k);
        for (int q = 0; q < n; q++, i += CVL) {
            const CVI x = idx + q * rpv;
            STORECV(gv + i, __builtin_shuffle(av, x) * LOADCV(gw + i)
                            - __builtin_shuffle(bv, x) * LOADCV(v + i));
        }
    }
    for (const int64_t ne = (int64_t)nb * n; i < ne; i++)
        gv[i] = STB(a[i / n] * LDB(gw[i]) - b[i / n] * LDB(v[i]));
}

/* Forward / row scale over batches [u0, u1) of WN_SB short rows: all sums,
 * then the batch's scalars in one loop over the batch (fwd_row_scalars,
 * vectorized across rows; unused slots compute on row r0's g and are
 * dropped), then the scaling while the batch is in L1. */
WN_INLINE void FN(short_fwd_n)(const wn_task *t, int64_t u0, int64_t u1, const int n,
                               const int nmax)
{
    const wn_call *c = t->c;
    const wn_layout *L = c->layout;
    const T *v = (const T *)c->v, *g = (const T *)c->g;
    T *w = (T *)c->w;
    NT *norms = (NT *)c->norms_out;
    const int64_t sv = L->kept_ndim ? L->kept_stride[0][0] : 0;
    const int64_t sw = L->kept_ndim ? L->kept_stride[1][0] : 0;
    const int64_t gs = c->g_stride;
    const double eps = c->eps;
    const int rb = t->rb;   /* rows per batch, <= WN_SB */
    const int dense = sv == n && sw == n && n < CVL && CVL % n == 0 && !t->nt;
    const CVI idx = FN(short_spread)(n);
    for (int64_t bt = u0; bt < u1; bt++) {
        const int64_t r0 = bt * rb;
        const int nb = L->nrows - r0 < rb ? (int)(L->nrows - r0) : rb;
        double tot[WN_SB] __attribute__((aligned(64)));
        FN(short_totals)(v, sv, NULL, 0, r0, nb, n, nmax, tot);
        T gk[WN_SB];
        NT nk[WN_SB];
        CT sk[WN_SB] __attribute__((aligned(64)));
        if (gs == 1 && nb == rb)
            memcpy(gk, g + r0, rb * sizeof *gk);
        else
            for (int k = 0; k < rb; k++) gk[k] = g[(r0 + (k < nb ? k : 0)) * gs];
        if (c->scale) {
            for (int k = 0; k < nb; k++) sk[k] = FN(fwd_row)(c, r0 + k, tot[k], 1);
        } else {
            for (int k = 0; k < rb; k++)
                sk[k] = FN(fwd_row_scalars)(tot[k], eps, gk[k], &nk[k]);
            for (int k = 0; k < nb; k++) norms[r0 + k] = nk[k];
        }
        if (!w) continue;
        if (dense) {
            FN(short_scale_dense)(w + r0 * sw, v + r0 * sv, sk, nb, n, idx);
        } else {
            for (int k = 0; k < nb; k++)
                FN(scale_run)(w + (r0 + k) * sw, 1, v + (r0 + k) * sv, 1, n, sk[k], t->nt);
        }
    }
}

/* Backward over batches [u0, u1) of WN_SB short rows (as short_fwd). */
WN_INLINE void FN(short_bwd_n)(const wn_task *t, int64_t u0, int64_t u1, const int n,
                               const int nmax)
{
    const wn_call *c = t->c;
    const wn_layout *L = c->layout;
    const T *v = (const T *)c->v, *gw = (const T *)c->grad_w, *g = (const T *)c->g;
    const NT *norms = (const NT *)c->norms;
    T *gv = (T *)c->grad_v, *grad_g = (T *)c->grad_g;
    const int64_t sv = L->kept_ndim ? L->kept_stride[0][0] : 0;
    const int64_t sgw = L->kept_ndim ? L->kept_stride[1][0] : 0;
    const int64_t sgv = L->kept_ndim ? L->kept_stride[2][0] : 0;
    const int64_t gs = c->g_stride, ns = c->norms_stride;
    const int rb = t->rb;
    const int dense = sv == n && sgw == n && sgv == n && n < CVL && CVL % n == 0 && !t->nt;
    const CVI idx = FN(short_spread)(n);
    for (int64_t bt = u0; bt < u1; bt++) {
        const int64_t r0 = bt * rb;
        const int nb = L->nrows - r0 < rb ? (int)(L->nrows - r0) : rb;
        double tot[WN_SB] __attribute__((aligned(64)));
        FN(short_totals)(v, sv, gw, sgw, r0, nb, n, nmax, tot);
        T gk[WN_SB], ggk[WN_SB];
        NT nk[WN_SB];
        BT a[WN_SB] __attribute__((aligned(64))), b[WN_SB] __attribute__((aligned(64)));
        if (gs == 1 && ns == 1 && nb == rb) {
            memcpy(gk, g + r0, rb * sizeof *gk);
            memcpy(nk, norms + r0, rb * sizeof *nk);
        } else {
            for (int k = 0; k < rb; k++) {
                const int64_t r = r0 + (k < nb ? k : 0);
                gk[k] = g[r * gs];
                nk[k] = norms[r * ns];
            }
        }
        for (int k = 0; k < rb; k++)
            FN(bwd_row_scalars)(tot[k], nk[k], gk[k], &ggk[k], &a[k], &b[k]);
        for (int k = 0; k < nb; k++) grad_g[r0 + k] = ggk[k];
        if (dense) {
            FN(short_bwd_dense)(gv + r0 * sgv, gw + r0 * sgw, v + r0 * sv, a, b, nb, n, idx);
        } else {
            for (int k = 0; k < nb; k++)
                FN(bwd_run)(gv + (r0 + k) * sgv, 1, gw + (r0 + k) * sgw, 1,
                            v + (r0 + k) * sv, 1, n, a[k], b[k], t->nt);
        }
    }
}

/* The short-row paths with the row length a compile-time constant for the
 * common lengths (rows of 8 .. 64: the lane loops unroll fully, with no tail
 * tests or spilled lanes), else as a variable under a compile-time bound
 * (rows under 8, under 16, or up to WN_SHORT_MAX: the tree's levels that
 * would only add zeros are left out).  Same arithmetic either way. */
#define WN_SHORT_DISPATCH(body, t, u0, u1)                                     \
    do {                                                                       \
        const int n_ = (int)(t)->c->layout->rowlen;                            \
        switch (n_) {                                                          \
        case 8: body(t, u0, u1, 8, 8); break;                                  \
        case 16: body(t, u0, u1, 16, 16); break;                               \
        case 32: body(t, u0, u1, 32, 32); break;                               \
        case 64: body(t, u0, u1, 64, 64); break;                               \
        default:                                                               \
            if (n_ < 8) body(t, u0, u1, n_, 8);                                \
            else if (n_ < 16) body(t, u0, u1, n_, 16);                         \
            else body(t, u0, u1, n_, WN_SHORT_MAX);                            \
        }                                                                      \
    } while (0)

static void FN(short_fwd)(const wn_task *t, int64_t u0, int64_t u1)
{
    WN_SHORT_DISPATCH(FN(short_fwd_n), t, u0, u1);
}

static void FN(short_bwd)(const wn_task *t, int64_t u0, int64_t u1)
{
    WN_SHORT_DISPATCH(FN(short_bwd_n), t, u0, u1);
}
#undef WN_SHORT_DISPATCH

/* ---- row modes ---------------------------------------------------------- */

/* Forward / row scale, units [u0, u1): batches of simple rows, or rows. */
static void FN(fwd_rows)(const wn_task *t, int64_t u0, int64_t u1)
{
    const wn_call *c = t->c;
    const wn_layout *L = c->layout;
    const wn_rowgeom *G = &t->rg;
    const T *v = (const T *)c->v;
    T *w = (T *)c->w;                 /* NULL: row scale (no second pass) */
    const int nt = t->nt;
    if (t->mode == WN_MODE_SHORT) {
        FN(short_fwd)(t, u0, u1);
        return;
    }
    if (t->mode == WN_MODE_SIMPLE) {
        /* One contiguous piece per row at a fixed row stride: the same
         * arithmetic as the general path without the layout walking (short
         * rows would otherwise spend more time there than on data).  Rows
         * in batches: all sums first, then all square roots and divisions
         * (independent, so they pipeline instead of each row waiting on its
         * own sqrt -> divide chain), then the scaling while the batch is
         * still in L1 (which sizes the batch).  The piece total added to an
         * empty Neumaier sum is the piece total itself: same bits. */
        const int64_t sv = L->kept_ndim ? L->kept_stride[0][0] : 0;
        const int64_t sw = L->kept_ndim ? L->kept_stride[1][0] : 0;
        const int64_t n = L->rowlen;
        const int rb = t->rb;
        for (int64_t bt = u0; bt < u1; bt++) {
            const int64_t r0 = bt * rb;
            const int nb = L->nrows - r0 < rb ? (int)(L->nrows - r0) : rb;
            double tot[WN_ROWBATCH];
            CT scale[WN_ROWBATCH];
            for (int k = 0; k < nb; k++) {
                double acc[WN_LANES] __attribute__((aligned(64)));
                WN_ZERO(acc);
                FN(vsumsq)(acc, v + (r0 + k) * sv, n);
                tot[k] = WN_TOTAL(acc);
            }
            for (int k = 0; k < nb; k++)
                scale[k] = FN(fwd_row)(c, r0 + k, tot[k], 1);
            if (w)
                for (int k = 0; k < nb; k++)
                    FN(scale_run)(w + (r0 + k) * sw, 1, v + (r0 + k) * sv, 1, n,
                                  scale[k], nt);
        }
        return;
    }
    for (int64_t r = u0; r < u1; r++) {
        int64_t ro[2];
        wn_row_offsets(L, 2, r, ro);
        wn_ksum k = {0.0, 0.0};
        for (int64_t p = 0; p < G->npieces; p++)
            wn_ksum_add(&k, FN(piece_sumsq)(L, G, v, ro, p));
        const CT scale = FN(fwd_row)(c, r, wn_ksum_value(&k), 1);
        if (w)
            for (int64_t p = 0; p < G->npieces; p++)
                FN(piece_scale)(L, G, v, w, ro, p, scale, nt);
    }
}

/* Forward / row scale, few long rows: each row's pieces are split over the
 * team (one barrier per row); the second pass walks the thread's pieces
 * backwards so it starts on what it read last, still in cache. */
static void FN(fwd_split)(const wn_task *t)
{
    const wn_call *c = t->c;
    const wn_layout *L = c->layout;
    const wn_rowgeom *G = &t->rg;
    const T *v = (const T *)c->v;
    T *w = (T *)c->w;
    const int tid = wn_thread_num(), nteam = wn_num_threads();
    const int64_t lo = G->npieces * tid / nteam, hi = G->npieces * (tid + 1) / nteam;
    for (int64_t r = 0; r < L->nrows; r++) {
        int64_t ro[2];
        double *pr = t->part + r * G->npieces;
        wn_row_offsets(L, 2, r, ro);
        for (int64_t p = lo; p < hi; p++)
            pr[p] = FN(piece_sumsq)(L, G, v, ro, p);
#pragma omp barrier
        wn_ksum k = {0.0, 0.0};
        for (int64_t p = 0; p < G->npieces; p++) wn_ksum_add(&k, pr[p]);
        const CT scale = FN(fwd_row)(c, r, wn_ksum_value(&k), tid == 0);
        if (w)
            for (int64_t p = hi - 1; p >= lo; p--)
                FN(piece_scale)(L, G, v, w, ro, p, scale, t->nt);
    }
}

/* Backward, units [u0, u1): batches of simple rows, or rows. */
static void FN(bwd_rows)(const wn_task *t, int64_t u0, int64_t u1)
{
    const wn_call *c = t->c;
    const wn_layout *L = c->layout;
    const wn_rowgeom *G = &t->rg;
    const T *v = (const T *)c->v, *gw = (const T *)c->grad_w;
    T *gv = (T *)c->grad_v;
    const int nt = t->nt;
    if (t->mode == WN_MODE_SHORT) {
        FN(short_bwd)(t, u0, u1);
        return;
    }
    if (t->mode == WN_MODE_SIMPLE) {
        const int64_t sv = L->kept_ndim ? L->kept_stride[0][0] : 0;
        const int64_t sgw = L->kept_ndim ? L->kept_stride[1][0] : 0;
        const int64_t sgv = L->kept_ndim ? L->kept_stride[2][0] : 0;
        const int64_t n = L->rowlen;
        const int rb = t->rb;
        for (int64_t bt = u0; bt < u1; bt++) {
            const int64_t r0 = bt * rb;
            const int nb = L->nrows - r0 < rb ? (int)(L->nrows - r0) : rb;
            double tot[WN_ROWBATCH];
            BT a[WN_ROWBATCH], b[WN_ROWBATCH];
            for (int k = 0; k < nb; k++) {
                double acc[WN_LANES] __attribute__((aligned(64)));
                WN_ZERO(acc);
                FN(vdot)(acc, v + (r0 + k) * sv, gw + (r0 + k) * sgw, n);
                tot[k] = WN_TOTAL(acc);
            }
            for (int k = 0; k < nb; k++)
                FN(bwd_row)(c, r0 + k, tot[k], 1, &a[k], &b[k]);
            for (int k = 0; k < nb; k++)
                FN(bwd_run)(gv + (r0 + k) * sgv, 1, gw + (r0 + k) * sgw, 1,
                            v + (r0 + k) * sv, 1, n, a[k], b[k], nt);
        }
        return;
    }
    for (int64_t r = u0; r < u1; r++) {
        int64_t ro[3];
        wn_row_offsets(L, 3, r, ro);
        wn_ksum k = {0.0, 0.0};
        for (int64_t p = 0; p < G->npieces; p++)
            wn_ksum_add(&k, FN(piece_dot)(L, G, v, gw, ro, p));
        BT a, b;
        FN(bwd_row)(c, r, wn_ksum_value(&k), 1, &a, &b);
        for (int64_t p = 0; p < G->npieces; p++)
            FN(piece_bwd)(L, G, v, gw, gv, ro, p, a, b, nt);
    }
}

/* Backward, few long rows (as fwd_split). */
static void FN(bwd_split)(const wn_task *t)
{
    const wn_call *c = t->c;
    const wn_layout *L = c->layout;
    const wn_rowgeom *G = &t->rg;
    const T *v = (const T *)c->v, *gw = (const T *)c->grad_w;
    T *gv = (T *)c->grad_v;
    const int tid = wn_thread_num(), nteam = wn_num_threads();
    const int64_t lo = G->npieces * tid / nteam, hi = G->npieces * (tid + 1) / nteam;
    for (int64_t r = 0; r < L->nrows; r++) {
        int64_t ro[3];
        double *pr = t->part + r * G->npieces;
        wn_row_offsets(L, 3, r, ro);
        for (int64_t p = lo; p < hi; p++)
            pr[p] = FN(piece_dot)(L, G, v, gw, ro, p);
#pragma omp barrier
        wn_ksum k = {0.0, 0.0};
        for (int64_t p = 0; p < G->npieces; p++) wn_ksum_add(&k, pr[p]);
        BT a, b;
        FN(bwd_row)(c, r, wn_ksum_value(&k), tid == 0, &a, &b);
        for (int64_t p = hi - 1; p >= lo; p--)
            FN(piece_bwd)(L, G, v, gw, gv, ro, p, a, b, t->nt);
    }
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

#ifndef WN_COL4_MIN
#define WN_COL4_MIN 1024               /* columns; see col_steps           */
#endif

/* Plain per-column sums over `n` steps (from counter C) of the nc columns at
 * x0 (kept stride cx; y0: the dot product with y0, kept stride cy), started at
 * zero, into acc[0 .. nc): per column the running sum of LDD(x)^2 (or
 * LDD(x) * LDD(y)) in step order -- what a chunk adds to its columns. */
WN_INLINE void FN(col_steps)(const wn_layout *L, wn_redctr C, int64_t n, const T *x0,
                             int64_t cx, const T *y0, int64_t cy, int64_t nc,
                             double *restrict acc)
{
    const int narr = y0 ? 2 : 1;
    for (int64_t c = 0; c < nc; c++) acc[c] = 0.0;
    int64_t e = 0;
    /* Contiguous columns, acc over 8 KiB: four steps per pass over acc,
     * each column's additions still in step order (the same bits as one
     * step at a time); acc (up to 32 KiB) then moves through L1 a quarter
     * as often -- on 4096x4096 dim=-1 the one-step walk ran the first pass
     * at half the speed of a plain read of v.  With 1024 columns (8 KiB of
     * acc, at home in L1) four steps ran the backward 0.95x. */
    if (cx == 1 && (!y0 || cy == 1) && nc > WN_COL4_MIN)
        for (; e + 4 <= n; e += 4) {
            const T *x[4], *y[4] = {0};
            for (int k = 0; k < 4; k++) {
                x[k] = x0 + C.off[0];
                if (y0) y[k] = y0 + C.off[1];
                wn_redctr_next(L, narr, &C);
            }
            if (!y0)
                for (int64_t c = 0; c < nc; c++) {
                    const double t0 = LDD(x[0][c]), t1 = LDD(x[1][c]);
                    const double t2 = LDD(x[2][c]), t3 = LDD(x[3][c]);
                    acc[c] = acc[c] + t0 * t0 + t1 * t1 + t2 * t2 + t3 * t3;
                }
            else
                for (int64_t c = 0; c < nc; c++)
                    acc[c] = acc[c] + LDD(x[0][c]) * LDD(y[0][c]) + LDD(x[1][c]) * LDD(y[1][c])
                             + LDD(x[2][c]) * LDD(y[2][c]) + LDD(x[3][c]) * LDD(y[3][c]);
        }
    for (; e < n; e++) {
        const T *x = x0 + C.off[0];
        if (!y0) {
            if (cx == 1)
                for (int64_t c = 0; c < nc; c++) { double t = LDD(x[c]); acc[c] += t * t; }
            else
                for (int64_t c = 0; c < nc; c++) { double t = LDD(x[c * cx]); acc[c] += t * t; }
        } else {
            const T *y = y0 + C.off[1];
            if (cx == 1 && cy == 1)
                for (int64_t c = 0; c < nc; c++) acc[c] += LDD(x[c]) * LDD(y[c]);
            else
                for (int64_t c = 0; c < nc; c++) acc[c] += LDD(x[c * cx]) * LDD(y[c * cy]);
        }
        wn_redctr_next(L, narr, &C);
    }
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

/* ---- column mode, contiguous panels ------------------------------------
 * When the kept axis has stride 1 in every array (dim=-1 of a C-contiguous
 * weight, the Wav2Vec2 / HuBERT positional conv's dim=2), a block's columns
 * go in panels of WN_CP: a panel's per-column plain sums live in WN_CPV VD
 * registers while a chunk of WN_COLCHUNK reduced steps streams by (a tight
 * loop along the innermost reduced dim), then go into the chunk's Neumaier
 * flush exactly as col_total adds them, so both paths give the same bits. */
#undef WN_CPV
#undef WN_CP
/* A panel is 128 columns on every variant: a whole 512-byte float32 step
 * of the positional convs, so a chunk streams sequentially.  On AVX-512 its
 * 16 accumulators fit the 32 registers; on AVX2 (32 of 16 registers) and
 * SSE2 the compiler keeps part of them in L1, which costs less than more
 * walks down each chunk: 64-column panels ran the backward of Wav2Vec2's
 * 768x48x128 dim=2 1.17x and HuBERT-large's 1.52x slower on Zen 4 (AVX-512),
 * and on Zen 3 (AVX2) 32-column panels ran 36864x128 / 65536x128 dim=1 (their
 * layouts) 1.45-1.63x slower backward, 1.05-1.12x forward (csrc/ab.c,
 * 2 threads, both builds -falign-loops=64; bits the same). */
#define WN_CP 128                      /* columns per panel                 */
#define WN_CPV (WN_CP / WN_VDL)        /* VD accumulators per panel        */

#define WN_PFD 16                      /* prefetch distance, steps          */
/* A panel's lines WN_PFD steps ahead, into L1 (a prefetch never faults). */
WN_INLINE void FN(colp_prefetch)(const T *p, const int nq)
{
    WN_UNROLL
    for (size_t o = 0; o < nq * WN_VDL * sizeof(T); o += 64)
        __builtin_prefetch((const char *)p + o, 0, 3);
}

/* Whether a column-mode call's blocks take the panel path: the kept axis
 * contiguous in every array, and a step's block no wider than WN_PANEL_MAX
 * bytes per input.  Wider blocks (dim=-1 of a large matrix) stream whole
 * rows step by step in col_total instead: measured on 4096x4096 dim=-1, the
 * panel order (one panel down a chunk, then the next) left the hardware
 * prefetchers behind and ran the backward 25-50% slower; on the Wav2Vec2 /
 * HuBERT positional convs (128 columns, 512 B per step) panels ran the
 * forward 5-10% and HuBERT's backward 25-30% faster.  Bits are the same
 * either way. */
#define WN_PANEL_MAX 2048
WN_INLINE int FN(col_dense)(const wn_layout *L, int narr, int64_t cb)
{
    for (int a = 0; a < narr; a++)
        if (L->kept_stride[a][L->kept_ndim - 1] != 1) return 0;
    return cb * (int64_t)sizeof(T) <= WN_PANEL_MAX;
}

/* Steps of a chunk run along the innermost reduced dim; after `run` of
 * them, move the counter on (carrying into the outer reduced dims). */
WN_INLINE void FN(col_skip)(const wn_layout *L, int narr, wn_redctr *C, int64_t run)
{
    const int R = L->red_ndim - 1;
    C->idx[R] += run - 1;
    for (int a = 0; a < narr; a++) C->off[a] += (run - 1) * L->red_stride[a][R];
    wn_redctr_next(L, narr, C);
}

/* col_steps for one panel of nq * WN_VDL contiguous columns at x0 (nq: a
 * constant, WN_CPV or WN_CPV / 2; y0: the dot product with y0, else
 * squares): the same per-column sums in the same step order, held in
 * registers, walked along the innermost reduced dim. */
WN_INLINE void FN(colp_chunk)(const wn_layout *L, wn_redctr C, int64_t n,
                              const T *x0, const T *y0, double *restrict acc,
                              const int nq)
{
    const int R = L->red_ndim - 1, narr = y0 ? 2 : 1;
    const int64_t n_in = L->red_shape[R], sx = L->red_stride[0][R];
    const int64_t sy = y0 ? L->red_stride[1][R] : 0;
    VD a[WN_CPV];
    WN_UNROLL
    for (int q = 0; q < nq; q++) a[q] = (VD){0};
    while (n > 0) {
        const int64_t run = n < n_in - C.idx[R] ? n : n_in - C.idx[R];
        const T *x = x0 + C.off[0];
        if (y0) {
            const T *y = y0 + C.off[1];
            for (int64_t e = 0; e < run; e++, x += sx, y += sy) {
                FN(colp_prefetch)(x + WN_PFD * sx, nq);
                FN(colp_prefetch)(y + WN_PFD * sy, nq);
#if WN_FLUSH
                WN_UNROLL
                for (int q = 0; q < nq / 2; q++) {
                    VD xl, xh, yl, yh;
                    WN_WIDEN(LOADVF(x + q * WN_VFL), &xl, &xh);
                    WN_WIDEN(LOADVF(y + q * WN_VFL), &yl, &yh);
                    a[2 * q] += xl * yl;
                    a[2 * q + 1] += xh * yh;
                }
#else
                WN_UNROLL
                for (int q = 0; q < nq; q++)
                    a[q] += LOADVD(x + q * WN_VDL) * LOADVD(y + q * WN_VDL);
#endif
            }
        } else {
            for (int64_t e = 0; e < run; e++, x += sx) {
                FN(colp_prefetch)(x + WN_PFD * sx, nq);
#if WN_FLUSH
                WN_UNROLL
                for (int q = 0; q < nq / 2; q++) {
                    VD xl, xh;
                    WN_WIDEN(LOADVF(x + q * WN_VFL), &xl, &xh);
                    a[2 * q] += xl * xl;
                    a[2 * q + 1] += xh * xh;
                }
#else
                WN_UNROLL
                for (int q = 0; q < nq; q++) {
                    const VD t = LOADVD(x + q * WN_VDL);
                    a[q] += t * t;
                }
#endif
            }
        }
        n -= run;
        if (n) FN(col_skip)(L, narr, &C, run);
    }
    WN_UNROLL
    for (int q = 0; q < nq; q++) WN_ST_F64(acc + q * WN_VDL, a[q]);
}

/* Superchunk totals of columns [r0, r0+nc) over superchunks [s0, s1):
 * out[c] = Neumaier sum over s of (Neumaier sum over WN_COLCHUNK-step chunks
 * of the plain per-column sums).  gw == NULL: sum of squares of v, else the
 * dot product of v and gw.  A chunk's plain sums come step by step
 * (col_steps) or, for `dense` blocks, panel by panel (colp_chunk: a chunk of
 * a block stays in L1/L2 across its panels); both give the same values.
 * Phases that split superchunks across threads combine the same
 * per-superchunk values in the same order.  scr: 5 * nc doubles. */
static void FN(col_total)(const wn_layout *L, const wn_colgeom *G, int64_t r0,
                          int64_t nc, int64_t s0, int64_t s1, const T *v,
                          const T *gw, int dense, double *restrict scr,
                          double *restrict out)
{
    const int K = L->kept_ndim, narr = gw ? 2 : 1;
    const int64_t cv = L->kept_stride[0][K - 1];
    const int64_t cg = gw ? L->kept_stride[1][K - 1] : 0;
    double *restrict acc = scr, *restrict sum = scr + nc, *restrict comp = scr + 2 * nc;
    wn_ksum *restrict tot = (wn_ksum *)(scr + 3 * nc);
    int64_t base[2];
    wn_row_offsets(L, narr, r0, base);
    const T *x0 = v + base[0], *y0 = gw ? gw + base[1] : NULL;
    for (int64_t c = 0; c < nc; c++) tot[c].sum = tot[c].comp = 0.0;
    for (int64_t s = s0; s < s1; s++) {
        const int64_t e0 = s * G->sc;
        const int64_t e1 = e0 + G->sc < L->rowlen ? e0 + G->sc : L->rowlen;
        for (int64_t c = 0; c < nc; c++) sum[c] = comp[c] = 0.0;
        for (int64_t ce = e0; ce < e1; ce += WN_COLCHUNK) {
            const int64_t n = e1 - ce < WN_COLCHUNK ? e1 - ce : WN_COLCHUNK;
            wn_redctr C;
            wn_redctr_seek(L, narr, ce, &C);
            /* dense: full panels in registers, then a half panel, the
             * rest step by step */
            int64_t full = dense ? nc - nc % WN_CP : 0;
            for (int64_t p = 0; p < full; p += WN_CP)
                FN(colp_chunk)(L, C, n, x0 + p, y0 ? y0 + p : NULL, acc + p, WN_CPV);
            if (dense && nc - full >= WN_CP / 2) {
                FN(colp_chunk)(L, C, n, x0 + full, y0 ? y0 + full : NULL, acc + full,
                               WN_CPV / 2);
                full += WN_CP / 2;
            }
            if (full < nc)
                FN(col_steps)(L, C, n, x0 + full * cv, cv, y0 ? y0 + full * cg : NULL, cg,
                              nc - full, acc + full);
            FN(col_flush)(acc, sum, comp, nc);
        }
        for (int64_t c = 0; c < nc; c++) {
            wn_ksum k = {sum[c], comp[c]};
            wn_ksum_add(&tot[c], wn_ksum_value(&k));
        }
    }
    for (int64_t c = 0; c < nc; c++) out[c] = wn_ksum_value(&tot[c]);
}

/* One step of a full panel's backward second pass: z = a * y - b * x, as
 * bwdv_run computes it, unrolled over the panel's vectors. */
WN_INLINE void FN(colp_step)(const T *x, const T *y, T *z, const BT *ca, const BT *cb)
{
    WN_UNROLL
    for (int q = 0; q < WN_CP / CVL; q++)
        STORECV(z + q * CVL, LOADC(ca + q * CVL) * LOADCV(y + q * CVL)
                             - LOADC(cb + q * CVL) * LOADCV(x + q * CVL));
}

/* col_apply's backward for panel blocks: chunks last to first (the first
 * pass left the last ones in cache), panel by panel.  With `nt`, full
 * panels whose steps are whole aligned cache lines stream out through L1. */
static void FN(colp_bwd_apply)(const wn_layout *L, const wn_colgeom *G, int64_t r0,
                               int64_t nc, int64_t s0, int64_t s1, const T *v,
                               const T *gw, T *gv, const BT *ca, const BT *cb, int nt)
{
    const int R = L->red_ndim - 1;
    const int64_t n_in = L->red_shape[R];
    const int64_t sx = L->red_stride[0][R], sy = L->red_stride[1][R], sz = L->red_stride[2][R];
    int64_t base[3];
    wn_row_offsets(L, 3, r0, base);
    const int64_t e0 = s0 * G->sc;
    const int64_t e1 = s1 * G->sc < L->rowlen ? s1 * G->sc : L->rowlen;
    const int64_t clast = e0 + (e1 - 1 - e0) / WN_COLCHUNK * WN_COLCHUNK;
    T buf[WN_CP] __attribute__((aligned(64)));
    const int lines = nt && (WN_CP * sizeof(T)) % 64 == 0 && (sz * sizeof(T)) % 64 == 0;
    for (int64_t ce = clast; ce >= e0; ce -= WN_COLCHUNK) {
        const int64_t n0 = e1 - ce < WN_COLCHUNK ? e1 - ce : WN_COLCHUNK;
        wn_redctr C0;
        wn_redctr_seek(L, 3, ce, &C0);
        for (int64_t p = 0; p < nc; p += WN_CP) {
            const int np = nc - p < WN_CP ? (int)(nc - p) : WN_CP;
            wn_redctr C = C0;
            for (int64_t n = n0; n > 0;) {
                const int64_t run = n < n_in - C.idx[R] ? n : n_in - C.idx[R];
                const T *x = v + base[0] + p + C.off[0], *y = gw + base[1] + p + C.off[1];
                T *z = gv + base[2] + p + C.off[2];
                if (np == WN_CP && lines && !((uintptr_t)z & 63)) {
                    for (int64_t e = 0; e < run; e++, x += sx, y += sy, z += sz) {
                        FN(colp_step)(x, y, buf, ca + p, cb + p);
                        STREAM(z, buf, sizeof buf);
                    }
                } else if (np == WN_CP) {
                    for (int64_t e = 0; e < run; e++, x += sx, y += sy, z += sz)
                        FN(colp_step)(x, y, z, ca + p, cb + p);
                } else {
                    for (int64_t e = 0; e < run; e++, x += sx, y += sy, z += sz)
                        FN(bwdv_run)(z, y, x, ca + p, cb + p, np, 0);
                }
                n -= run;
                if (n) FN(col_skip)(L, 3, &C, run);
            }
        }
    }
}

/* First and last+1 column of column-mode unit u (a block of one outer index). */
WN_INLINE int64_t FN(col_unit)(const wn_colgeom *G, int64_t u, int64_t *nc)
{
    const int64_t r0 = (u / G->nblk) * G->m + (u % G->nblk) * G->cb;
    *nc = G->m - r0 % G->m < G->cb ? G->m - r0 % G->m : G->cb;
    return r0;
}

/* Column units [u0, u1): each a whole column block, both passes while the
 * block is in cache.  `scr`: this thread's WN_COLSCR * cb doubles. */
static void FN(cols_units)(const wn_task *t, int64_t u0, int64_t u1, double *scr)
{
    const wn_call *c = t->c;
    const wn_layout *L = c->layout;
    const wn_colgeom *G = &t->cg;
    const int bwd = c->op == WN_BACKWARD;
    const T *v = (const T *)c->v, *gw = bwd ? (const T *)c->grad_w : NULL;
    double *tot = scr + 5 * G->cb;
    CT *scale = (CT *)(scr + 6 * G->cb);
    BT *ca = (BT *)(scr + 7 * G->cb), *cb = (BT *)(scr + 8 * G->cb);
    const int dense = FN(col_dense)(L, bwd ? 3 : (c->w ? 2 : 1), G->cb);
    for (int64_t u = u0; u < u1; u++) {
        int64_t nc;
        const int64_t r0 = FN(col_unit)(G, u, &nc);
        FN(col_total)(L, G, r0, nc, 0, G->nsc, v, gw, dense, scr, tot);
        for (int64_t k = 0; k < nc; k++) {
            if (bwd) FN(bwd_row)(c, r0 + k, tot[k], 1, &ca[k], &cb[k]);
            else scale[k] = FN(fwd_row)(c, r0 + k, tot[k], 1);
        }
        if (!bwd && !c->w) continue;
        if (dense && bwd && t->nt)
            FN(colp_bwd_apply)(L, G, r0, nc, 0, G->nsc, v, gw, (T *)c->grad_v, ca, cb, t->nt);
        else
            FN(col_apply)(L, G, r0, nc, 0, G->nsc, v, (T *)c->w, scale, gw,
                          (T *)c->grad_v, ca, cb, t->nt);
    }
}

/* Column mode with long reductions, the whole team: (1) all threads sum
 * superchunks of the blocks into `part`, (2) per-column totals and scalars,
 * (3) the second pass, walked backwards so its first reads hit what (1)
 * left in cache.  Computes the same per-superchunk values as cols_units and
 * combines them in the same order. */
static void FN(cols_split)(const wn_task *t, double *scr)
{
    const wn_call *c = t->c;
    const wn_layout *L = c->layout;
    const wn_colgeom *G = &t->cg;
    const int bwd = c->op == WN_BACKWARD;
    const T *v = (const T *)c->v, *gw = bwd ? (const T *)c->grad_w : NULL;
    double *part = t->part, *tot = scr + 5 * G->cb;
    const int64_t nitems = G->nouter * G->nblk * G->nsc;
    const int tid = wn_thread_num(), nteam = wn_num_threads();
    const int64_t lo = nitems * tid / nteam, hi = nitems * (tid + 1) / nteam;
    const int dense = FN(col_dense)(L, bwd ? 3 : (c->w ? 2 : 1), G->cb);
    for (int64_t i = lo; i < hi; i++) {
        int64_t nc;
        const int64_t s = i % G->nsc, r0 = FN(col_unit)(G, i / G->nsc, &nc);
        FN(col_total)(L, G, r0, nc, s, s + 1, v, gw, dense, scr, tot);
        for (int64_t k = 0; k < nc; k++) part[s * L->nrows + r0 + k] = tot[k];
    }
#pragma omp barrier
    CT *scale = (CT *)t->scal;
    BT *ca = (BT *)t->scal, *cb = (BT *)t->scal + L->nrows;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < L->nrows; r++) {
        wn_ksum k = {0.0, 0.0};
        for (int64_t s = 0; s < G->nsc; s++) wn_ksum_add(&k, part[s * L->nrows + r]);
        if (bwd) FN(bwd_row)(c, r, wn_ksum_value(&k), 1, &ca[r], &cb[r]);
        else scale[r] = FN(fwd_row)(c, r, wn_ksum_value(&k), 1);
    }
    /* (the worksharing loop's implicit barrier: every scalar is out) */
    if (!bwd && !c->w) return;
    for (int64_t i = hi - 1; i >= lo; i--) {
        int64_t nc;
        const int64_t s = i % G->nsc, r0 = FN(col_unit)(G, i / G->nsc, &nc);
        if (dense && bwd && t->nt)
            FN(colp_bwd_apply)(L, G, r0, nc, s, s + 1, v, gw, (T *)c->grad_v, ca + r0,
                               cb + r0, t->nt);
        else
            FN(col_apply)(L, G, r0, nc, s, s + 1, v, (T *)c->w, scale + r0, gw,
                          (T *)c->grad_v, ca + r0, cb + r0, t->nt);
    }
}

/* ---- entry points for this (ISA, dtype): a task's units, or its team work */

static void FN(units)(const wn_task *t, int64_t u0, int64_t u1, double *scr)
{
    if (t->mode == WN_MODE_COLS)
        FN(cols_units)(t, u0, u1, scr);
    else if (t->c->op == WN_BACKWARD)
        FN(bwd_rows)(t, u0, u1);
    else
        FN(fwd_rows)(t, u0, u1);
    if (t->nt) wn_sfence();
}

static void FN(team)(const wn_task *t, double *scr)
{
    if (t->mode == WN_MODE_COLS_SPLIT)
        FN(cols_split)(t, scr);
    else if (t->c->op == WN_BACKWARD)
        FN(bwd_split)(t);
    else
        FN(fwd_split)(t);
    if (t->nt) wn_sfence();
}

#ifdef WN_CV2_DEFAULT
#undef LOADCV2
#undef STORECV2
#undef WN_CV2_DEFAULT
#endif
#undef WN_LINE
