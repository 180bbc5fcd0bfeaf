/*
 * Shared helpers for the kernel templates: half-precision conversions,
 * layout walking, and the fixed-order summation primitives.
 *
 * Everything here is `static inline` so each instruction-set variant of the
 * kernels (compiled under its own `#pragma GCC target`) inlines its own copy.
 */
#ifndef WN_COMMON_H
#define WN_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wn.h"

#define WN_INLINE static inline __attribute__((always_inline))
/* Fully unroll the loop over a lane block's vectors (keeps them in registers). */
#define WN_UNROLL _Pragma("GCC unroll 16")

/* Lane accumulators per row piece: element i of a run goes to lane i % 32.
 * Explicit lanes make the summation order a function of the layout only, so
 * every ISA variant (SSE2, AVX2, AVX-512) and thread count gives the same
 * bits, and the compiler vectorizes them without -ffast-math. */
#define WN_LANES 32
/* Elements per piece: the unit the row total combines (Neumaier, in order)
 * and the unit long rows are split across threads by. */
#define WN_PIECE 4096
/* Column mode: reduced steps accumulated plainly before a Neumaier flush. */
#define WN_COLCHUNK 128

/* ---- bit casts and 16-bit float conversions (exact, round-to-nearest-even) */

WN_INLINE float wn_u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
WN_INLINE uint32_t wn_f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* IEEE binary16 -> float32, branch-free so loops vectorize (F. Giesen). */
WN_INLINE float wn_h2f(uint16_t h)
{
    float mag = wn_u2f((uint32_t)(h & 0x7fffu) << 13) * 0x1p112f;
    uint32_t r = wn_f2u(mag);
    r |= (mag >= 65536.0f) ? (255u << 23) : 0u;         /* Inf / NaN */
    r |= ((h & 0x7fffu) > 0x7c00u) ? 0x00400000u : 0u;  /* NaN: quiet, as F16C */
    return wn_u2f(r | ((uint32_t)(h & 0x8000u) << 16));
}

/* float32 -> binary16, round to nearest even; NaN -> quiet NaN keeping the
 * top payload bits (what F16C's vcvtps2ph does, so all variants agree). */
WN_INLINE uint16_t wn_f2h(float x)
{
    uint32_t f = wn_f2u(x);
    uint32_t sign = f & 0x80000000u;
    f ^= sign;
    uint32_t infnan = (f > (255u << 23)) ? (0x7e00u | ((f >> 13) & 0x3ffu)) : 0x7c00u;
    /* subnormal results: let the FPU round by adding 0.5 (2^-1) */
    uint32_t sub = wn_f2u(wn_u2f(f) + 0.5f) - wn_f2u(0.5f);
    uint32_t nrm = (f + ((uint32_t)(15 - 127) << 23) + 0xfffu + ((f >> 13) & 1u)) >> 13;
    uint32_t o = (f >= (143u << 23)) ? infnan : (f < (113u << 23) ? sub : nrm);
    return (uint16_t)(o | (sign >> 16));
}

WN_INLINE float wn_bf2f(uint16_t h) { return wn_u2f((uint32_t)h << 16); }

/* float64 -> float32 rounded to odd (truncated, last bit set if inexact): a
 * 16-bit rounding of the result is then the correctly rounded 16-bit value of
 * the float64 (24 >= 11 + 2 bits), where rounding to nearest twice is not. */
WN_INLINE float wn_d2f_odd(double d)
{
    float f = (float)d;
    if ((double)f != d && d == d) {
        uint32_t u = wn_f2u(f);
        if (fabs((double)f) > fabs(d)) u -= 1;     /* rounded away from zero: back */
        f = wn_u2f(u | 1u);
    }
    return f;
}

/* float32 -> bfloat16, round to nearest even; NaN stays a quiet NaN. */
WN_INLINE uint16_t wn_f2bf(float x)
{
    uint32_t u = wn_f2u(x);
    uint32_t rne = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = (u >> 16) | 0x40u;
    return (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u) ? nan : rne);
}

/* ---- summation */

/* Fixed pairwise tree over the 32 lanes. */
WN_INLINE double wn_lanes_total(double *acc)
{
    for (int w = WN_LANES / 2; w >= 1; w /= 2)
        for (int j = 0; j < w; j++)
            acc[j] += acc[j + w];
    return acc[0];
}

/* Neumaier (improved Kahan) accumulation of the piece totals of a row. */
typedef struct { double sum, comp; } wn_ksum;

WN_INLINE void wn_ksum_add(wn_ksum *k, double x)
{
    double t = k->sum + x;
    if (fabs(k->sum) >= fabs(x))
        k->comp += (k->sum - t) + x;
    else
        k->comp += (x - t) + k->sum;
    k->sum = t;
}

WN_INLINE double wn_ksum_value(const wn_ksum *k)
{
    /* An Inf/NaN total makes comp NaN: the plain sum is the right answer. */
    return isfinite(k->sum) ? k->sum + k->comp : k->sum;
}

/* ---- layout walking */

/* Element offsets (per array) of row r. */
WN_INLINE void wn_row_offsets(const wn_layout *L, int narr, int64_t r,
                              int64_t *off)
{
    for (int a = 0; a < narr; a++) off[a] = 0;
    for (int d = L->kept_ndim - 1; d >= 0; d--) {
        int64_t n = L->kept_shape[d], i = r % n;
        r /= n;
        for (int a = 0; a < narr; a++) off[a] += i * L->kept_stride[a][d];
    }
}

/*
 * Row-mode geometry.  A row is `nseg` runs ("segments") of `n_in` elements
 * along the innermost reduced dim.  Pieces: `k` whole segments when a
 * segment is short, else WN_PIECE-sized parts of one segment.
 */
typedef struct {
    int64_t n_in, nseg, k, ppseg, npieces;
    int router;                        /* number of outer reduced dims */
} wn_rowgeom;

WN_INLINE wn_rowgeom wn_rowgeom_make(const wn_layout *L)
{
    wn_rowgeom G;
    G.router = L->red_ndim > 0 ? L->red_ndim - 1 : 0;
    G.n_in = L->red_ndim > 0 ? L->red_shape[L->red_ndim - 1] : 1;
    G.nseg = G.n_in ? L->rowlen / G.n_in : 0;
    if (G.n_in <= WN_PIECE) {
        G.k = WN_PIECE / (G.n_in ? G.n_in : 1);
        G.ppseg = 1;
        G.npieces = (G.nseg + G.k - 1) / G.k;
    } else {
        G.k = 1;
        G.ppseg = (G.n_in + WN_PIECE - 1) / WN_PIECE;
        G.npieces = G.nseg * G.ppseg;
    }
    return G;
}

/* Rows that are one contiguous piece each, at one row stride per array:
 * the short-row fast path (same arithmetic, no layout walking).  The piece
 * total of the general path added to an empty Neumaier sum is the piece
 * total itself, so both paths give the same bits. */
WN_INLINE int wn_simple_rows(const wn_layout *L, int narr, const wn_rowgeom *G)
{
    if (L->kept_ndim > 1 || L->red_ndim != 1 || G->npieces != 1) return 0;
    for (int a = 0; a < narr; a++)
        if (L->red_stride[a][0] != 1) return 0;
    return 1;
}

/* Short rows (WN_MODE_SHORT): simple rows of at most WN_SHORT_MAX elements
 * go in batches of WN_SB rows.  Each row's 32 lanes are formed in registers
 * exactly as vsumsq / vdot form them and reduced by the same tree, the last
 * three levels for eight rows at once; then the batch's scalars in one
 * vectorizable loop.  Same bits as the simple path, a few ns per row. */
#define WN_SHORT_MAX 64
#ifndef WN_SB
#define WN_SB 32
#endif

/* Rows per short batch: WN_SB for rows shorter than 16 (the dense pass
 * spreads whole vectors of row scalars), else 8: measured on 65536x64
 * float32 (v, grad_w, grad_v beyond the L3), 8-row batches ran the backward
 * in half the time of 32-row ones.  Batching never changes bits. */
WN_INLINE int wn_short_batch(int64_t rowlen) { return rowlen < 16 ? WN_SB : 8; }

/* narr == 3: the backward, short below 16 elements and at 16 and 32 (the
 * lengths short_bwd unrolls at compile time: 262144x16 float32 1.43x,
 * 16384x32 1.22x the simple path, 131072x32 even), and at 64 on variants
 * without AVX-512 (`avx512` 0): on Zen 3 (AVX2) short ran 1024x64 to
 * 16384x64 1.12x and 65536x64 1.03x the simple path (csrc/ab.c, 2 threads,
 * float32), while with AVX-512 on Zen 4 it ran 65536x64 out of cache at
 * 0.85-0.87x, so there rows of 64 stay simple, as do the other lengths. */
WN_INLINE int wn_short_rows(const wn_layout *L, int narr, const wn_rowgeom *G, int avx512)
{
    const int64_t n = L->rowlen;
    return (n <= (narr == 3 ? 16 : WN_SHORT_MAX) ||
            (narr == 3 && (n == 32 || (n == 64 && !avx512))))
           && wn_simple_rows(L, narr, G);
}

/* Rows per batch in the short-row path: as many as keep the batch's inputs
 * within 16 KiB (half an L1), at most WN_ROWBATCH.  Batching changes no
 * arithmetic. */
#define WN_ROWBATCH 8

WN_INLINE int wn_row_batch(int64_t n, int64_t itemsize, int ninputs)
{
    int64_t rb = (16 << 10) / (n * itemsize * ninputs + 1);
    return rb < 1 ? 1 : rb > WN_ROWBATCH ? WN_ROWBATCH : (int)rb;
}

/* Iterator over the segments of one piece. */
typedef struct {
    int64_t idx[WN_MAXDIM];
    int64_t off[WN_MAXARR];            /* element offset of the segment start */
    int64_t nseg;                      /* segments in this piece */
    int64_t in0, nin;                  /* element range within each segment */
} wn_piece;

WN_INLINE void wn_piece_begin(const wn_layout *L, const wn_rowgeom *G,
                              int narr, int64_t p, const int64_t *row_off,
                              wn_piece *P)
{
    int64_t s0;
    if (G->ppseg == 1) {
        s0 = p * G->k;
        P->nseg = G->nseg - s0 < G->k ? G->nseg - s0 : G->k;
        P->in0 = 0;
        P->nin = G->n_in;
    } else {
        s0 = p / G->ppseg;
        P->nseg = 1;
        P->in0 = (p % G->ppseg) * WN_PIECE;
        P->nin = G->n_in - P->in0 < WN_PIECE ? G->n_in - P->in0 : WN_PIECE;
    }
    for (int a = 0; a < narr; a++) {
        int64_t s_in = L->red_ndim > 0 ? L->red_stride[a][L->red_ndim - 1] : 0;
        P->off[a] = row_off[a] + P->in0 * s_in;
    }
    for (int d = G->router - 1; d >= 0; d--) {
        int64_t n = L->red_shape[d], i = s0 % n;
        s0 /= n;
        P->idx[d] = i;
        for (int a = 0; a < narr; a++) P->off[a] += i * L->red_stride[a][d];
    }
}

WN_INLINE void wn_piece_next(const wn_layout *L, const wn_rowgeom *G, int narr,
                             wn_piece *P)
{
    for (int d = G->router - 1; d >= 0; d--) {
        for (int a = 0; a < narr; a++) P->off[a] += L->red_stride[a][d];
        if (++P->idx[d] < L->red_shape[d]) return;
        for (int a = 0; a < narr; a++)
            P->off[a] -= L->red_shape[d] * L->red_stride[a][d];
        P->idx[d] = 0;
    }
}

/* Iterator over all reduced elements of a row, in flat order (column mode). */
typedef struct {
    int64_t idx[WN_MAXDIM];
    int64_t off[WN_MAXARR];
} wn_redctr;

WN_INLINE void wn_redctr_next(const wn_layout *L, int narr, wn_redctr *C)
{
    for (int d = L->red_ndim - 1; d >= 0; d--) {
        for (int a = 0; a < narr; a++) C->off[a] += L->red_stride[a][d];
        if (++C->idx[d] < L->red_shape[d]) return;
        for (int a = 0; a < narr; a++)
            C->off[a] -= L->red_shape[d] * L->red_stride[a][d];
        C->idx[d] = 0;
    }
}

WN_INLINE void wn_redctr_seek(const wn_layout *L, int narr, int64_t e,
                              wn_redctr *C)
{
    memset(C->idx, 0, sizeof(C->idx));
    for (int a = 0; a < narr; a++) C->off[a] = 0;
    for (int d = L->red_ndim - 1; d >= 0; d--) {
        int64_t n = L->red_shape[d], i = e % n;
        e /= n;
        C->idx[d] = i;
        for (int a = 0; a < narr; a++) C->off[a] += i * L->red_stride[a][d];
    }
}

/*
 * Column-mode geometry: the innermost kept dim ("columns", m of them) is
 * v's fastest axis.  Columns go in blocks of cb; the reduced extent goes in
 * superchunks of sc steps (at most 16 per row, a multiple of WN_COLCHUNK).
 * sc depends on rowlen only, so the summation order is fixed by the shape.
 */
typedef struct {
    int64_t m, nouter, cb, nblk, sc, nsc;
} wn_colgeom;

WN_INLINE wn_colgeom wn_colgeom_make(const wn_layout *L, int64_t itemsize,
                                     int ninputs, int64_t budget, int64_t maxcb)
{
    wn_colgeom G;
    G.m = L->kept_shape[L->kept_ndim - 1];
    G.nouter = L->nrows / G.m;
    int64_t sc = (L->rowlen + 15) / 16;
    sc = (sc + WN_COLCHUNK - 1) / WN_COLCHUNK * WN_COLCHUNK;
    G.sc = sc < 8 * WN_COLCHUNK ? 8 * WN_COLCHUNK : sc;
    G.nsc = (L->rowlen + G.sc - 1) / G.sc;
    /* One superchunk: size blocks to stay in L2 between the passes.  More:
     * the data cannot stay in L2, so take wide blocks (long contiguous runs
     * per reduced step stream well). */
    int64_t minc = 64 / itemsize, cb = maxcb;
    if (G.nsc == 1) {
        cb = budget / (L->rowlen * itemsize * ninputs);
        cb = cb < minc ? minc : cb > maxcb ? maxcb : cb - cb % minc;
    }
    G.cb = cb > G.m ? G.m : cb;
    G.nblk = (G.m + G.cb - 1) / G.cb;
    return G;
}

/* ---- tasks: one call of a wn_run table, prepared (wn.c) -------------- */

#define WN_BUFBYTES 1024
#define WN_COLBLK 4096      /* widest column block (a 16 KiB run of float32) */
#define WN_COLBLK_MIN 64    /* column block if the scratch allocation fails */
#define WN_COLSCR 9         /* scratch doubles per column of a block */

/*
 * How a call's work is cut.  Independent units (whole rows, batches of short
 * rows, column blocks) go to whichever thread the byte split of the table
 * gives them; a team call is worked on by every thread of the region at
 * once (a barrier per row, or per phase).  Either way each row's arithmetic
 * is the same, so the cut never changes bits.
 */
enum wn_mode {
    WN_MODE_SIMPLE,      /* rows that are one contiguous piece: units = batches of rows */
    WN_MODE_SHORT,       /* ... of at most WN_SHORT_MAX elements: units = WN_SB rows     */
    WN_MODE_ROWS,        /* any rows: units = rows                                     */
    WN_MODE_SPLIT,       /* few long rows, every row's pieces split over the team      */
    WN_MODE_COLS,        /* kept axis fastest: units = column blocks                   */
    WN_MODE_COLS_SPLIT   /* ... with long reductions split over the team               */
};

typedef struct wn_task wn_task;
/* Units [u0, u1) of an independent task; scratch: this thread's column scratch. */
typedef void (*wn_units_fn)(const wn_task *t, int64_t u0, int64_t u1, double *scratch);
/* A team task, called by every thread of the team (or alone, outside one). */
typedef void (*wn_team_fn)(const wn_task *t, double *scratch);

struct wn_task {
    const wn_call *c;
    int mode;
    int nt;                  /* streaming stores for the output */
    int rb;                  /* SIMPLE: rows per batch */
    wn_rowgeom rg;           /* row modes */
    wn_colgeom cg;           /* column modes */
    int64_t nunits;          /* independent units (0 for team tasks) */
    int64_t unit_bytes;      /* bytes read per unit (the share-out weight) */
    double *part;            /* SPLIT: nrows x npieces; COLS_SPLIT: nsc x nrows */
    void *scal;              /* COLS_SPLIT: per-row scalars */
    wn_units_fn units;
    wn_team_fn team;
};

/* Column mode applies when the innermost kept dim is v's fastest axis. */
WN_INLINE int wn_use_columns(const wn_layout *L)
{
    if (L->kept_ndim == 0 || L->red_ndim == 0 || L->rowlen <= 1) return 0;
    int64_t ks = L->kept_stride[0][L->kept_ndim - 1];
    int64_t rs = L->red_stride[0][L->red_ndim - 1];
    return L->kept_shape[L->kept_ndim - 1] > 1 && llabs(ks) < llabs(rs);
}

#endif /* WN_COMMON_H */
