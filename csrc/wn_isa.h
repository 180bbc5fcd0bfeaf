/*
 * One instruction-set variant of every kernel: wn.c includes this file under
 * a `#pragma GCC target(...)` with ISA set to the variant's name, so the same
 * C source is compiled for AVX-512, AVX2 and baseline x86-64 (or once, on
 * other architectures) and dispatched at run time.
 *
 * Everything ISA-specific lives here: the native vector width, exact loads
 * and rounding stores of each element type, the 32-lane tree, streaming
 * stores.  The arithmetic is the same in every variant (no FMA contraction,
 * the same lanes and order), so all of them return the same bits.
 */
#include "wn_common.h"

#define WN_CAT_(a, b, c) a##_##b##_##c
#define WN_CAT(a, b, c) WN_CAT_(a, b, c)

/* ---- native vectors ---------------------------------------------------- */

#if defined(__AVX512F__)
#define WN_VB 64
#elif defined(__AVX__)
#define WN_VB 32
#else
#define WN_VB 16
#endif
#define WN_VFL (WN_VB / 4)                 /* float lanes of a VF  */
#define WN_VDL (WN_VB / 8)                 /* double lanes of a VD */
#define WN_NVF (WN_LANES / WN_VFL)         /* VFs holding 32 lanes */
#define WN_NVD (WN_LANES / WN_VDL)         /* VDs holding 32 lanes */
#define VF WN_CAT(wn, vf, ISA)
#define VD WN_CAT(wn, vd, ISA)
typedef float VF __attribute__((vector_size(WN_VB), aligned(4)));
typedef double VD __attribute__((vector_size(WN_VB), aligned(8)));
/* shuffle indices of a VF / VD */
#define VFI WN_CAT(wn, vfi, ISA)
#define VDI WN_CAT(wn, vdi, ISA)
typedef int32_t VFI __attribute__((vector_size(WN_VB)));
typedef int64_t VDI __attribute__((vector_size(WN_VB)));

/* Unaligned loads and stores through intrinsics: GCC expands a memcpy into a
 * vector through the stack (and generic tuning splits 256-bit accesses). */
#if WN_VB == 64
#define WN_LD_F32(p) ((VF)_mm512_loadu_ps(p))
#define WN_ST_F32(p, x) _mm512_storeu_ps((p), (__m512)(x))
#define WN_LD_F64(p) ((VD)_mm512_loadu_pd(p))
#define WN_ST_F64(p, x) _mm512_storeu_pd((p), (__m512d)(x))
#elif WN_VB == 32
#define WN_LD_F32(p) ((VF)_mm256_loadu_ps(p))
#define WN_ST_F32(p, x) _mm256_storeu_ps((p), (__m256)(x))
#define WN_LD_F64(p) ((VD)_mm256_loadu_pd(p))
#define WN_ST_F64(p, x) _mm256_storeu_pd((p), (__m256d)(x))
#elif defined(__SSE2__)
#define WN_LD_F32(p) ((VF)_mm_loadu_ps(p))
#define WN_ST_F32(p, x) _mm_storeu_ps((p), (__m128)(x))
#define WN_LD_F64(p) ((VD)_mm_loadu_pd(p))
#define WN_ST_F64(p, x) _mm_storeu_pd((p), (__m128d)(x))
#else
#define WN_LD_F32(p) ({ VF v_; memcpy(&v_, (p), sizeof v_); v_; })
#define WN_ST_F32(p, x) do { VF v_ = (x); memcpy((p), &v_, sizeof v_); } while (0)
#define WN_LD_F64(p) ({ VD v_; memcpy(&v_, (p), sizeof v_); v_; })
#define WN_ST_F64(p, x) do { VD v_ = (x); memcpy((p), &v_, sizeof v_); } while (0)
#endif

/* 16-bit types: WN_VFL values at p, exactly, as a VF (bfloat16 is the high
 * half of a float32; float16 through F16C where the variant has it), and a
 * VF rounded to nearest even into WN_VFL values at p, exactly as wn_f2h /
 * wn_f2bf round (NaN stays a quiet NaN). */
#if WN_VB == 64
#define WN_LD_BF16(p) ((VF)_mm512_castsi512_ps(_mm512_slli_epi32( \
    _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16)))
#define WN_LD_F16(p) ((VF)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p))))
#define WN_ST_F16(p, x) _mm256_storeu_si256((__m256i *)(p), \
    _mm512_cvtps_ph((__m512)(x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
/* The rounding packed in a register: the compiler's memory-destination
 * vpmovdw is slow on some cores (Zen 4). */
WN_INLINE void WN_CAT(wn, st_bf16, ISA)(uint16_t *p, VF x)
{
#ifdef __AVX512BF16__
    /* AVX512_BF16 rounds to nearest even and quiets NaNs exactly as below,
     * but treats float32 subnormal inputs as zero: those take the integer
     * path, so every variant stores the same bits. */
    if (!_mm512_fpclass_ps_mask((__m512)x, 0x20)) {
        _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh((__m512)x));
        return;
    }
#endif
    const __m512i u = _mm512_castps_si512((__m512)x);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u,
                    _mm512_set1_epi32(0x7fff)), odd), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask((__m512)x, (__m512)x, _CMP_UNORD_Q);
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    const __m512i even = _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40,
        38, 36, 34, 32, 30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    _mm256_storeu_si256((__m256i *)p,
                        _mm512_castsi512_si256(_mm512_permutexvar_epi16(even, r)));
}
#elif WN_VB == 32
#define WN_LD_BF16(p) ((VF)_mm256_castsi256_ps(_mm256_slli_epi32( \
    _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16)))
#define WN_LD_F16(p) ((VF)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p))))
#define WN_ST_F16(p, x) _mm_storeu_si128((__m128i *)(p), \
    _mm256_cvtps_ph((__m256)(x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
WN_INLINE void WN_CAT(wn, st_bf16, ISA)(uint16_t *p, VF x)
{
    const __m256i u = _mm256_castps_si256((__m256)x);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u,
                    _mm256_set1_epi32(0x7fff)), odd), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps((__m256)x, (__m256)x, _CMP_UNORD_Q));
    const __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    r = _mm256_blendv_epi8(r, q, nan);
    /* every value fits 16 bits unsigned: the saturating pack is exact */
    _mm_storeu_si128((__m128i *)p, _mm_packus_epi32(_mm256_castsi256_si128(r),
                                                    _mm256_extracti128_si256(r, 1)));
}
/* Two VFs of 16 contiguous bfloat16 values for the elementwise passes with
 * one scalar pair for the whole run (row mode), in even / odd order: *e gets
 * elements 0, 2, .., 14 and *o elements 1, 3, .., 15, exactly; the store
 * puts them back in place, rounded as st_bf16 rounds.  A dword holds an
 * even element in its low half and the next odd one in its high half, so
 * neither direction needs a shuffle (st_bf16 packs with two, and the
 * widening load is one more a vector; Zen 3's two shuffle/shift pipes bound
 * the bfloat16 passes).  Never for sums: their lanes follow element order. */
#define WN_LD2_BF16(p, e, o) do {                                              \
        const __m256i x_ = _mm256_loadu_si256((const __m256i *)(p));           \
        *(e) = (VF)_mm256_castsi256_ps(_mm256_slli_epi32(x_, 16));             \
        *(o) = (VF)_mm256_castsi256_ps(_mm256_and_si256(x_,                    \
                                           _mm256_set1_epi32((int)0xffff0000)));\
    } while (0)
/* x rounded to nearest even in the high half (a quiet NaN for a NaN) */
WN_INLINE __m256i WN_CAT(wn, rnd_bf16, ISA)(VF x)
{
    const __m256i u = _mm256_castps_si256((__m256)x);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps((__m256)x, (__m256)x, _CMP_UNORD_Q));
    return _mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x400000)), nan);
}
WN_INLINE void WN_CAT(wn, st2_bf16, ISA)(uint16_t *p, VF e, VF o)
{
    const __m256i lo = _mm256_srli_epi32(WN_CAT(wn, rnd_bf16, ISA)(e), 16);
    const __m256i hi = _mm256_and_si256(WN_CAT(wn, rnd_bf16, ISA)(o),
                                        _mm256_set1_epi32((int)0xffff0000));
    _mm256_storeu_si256((__m256i *)p, _mm256_or_si256(lo, hi));
}
#define WN_ST2_BF16(p, e, o) WN_CAT(wn, st2_bf16, ISA)((p), (e), (o))
/* The sums can load that way too if their lanes are put back in order
 * before they leave the registers: lanes of an even / odd pair of float32
 * partials (from WN_LD2_BF16) back to two VFs in element order. */
#define WN_UNPAIR(e, o) do {                                                   \
        const __m256 l_ = _mm256_unpacklo_ps((__m256)*(e), (__m256)*(o));       \
        const __m256 h_ = _mm256_unpackhi_ps((__m256)*(e), (__m256)*(o));       \
        *(e) = (VF)_mm256_permute2f128_ps(l_, h_, 0x20);                        \
        *(o) = (VF)_mm256_permute2f128_ps(l_, h_, 0x31);                        \
    } while (0)
#elif defined(__SSE2__)
#define WN_LD_BF16(p) ((VF)_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), \
    _mm_loadl_epi64((const __m128i *)(p)))))
#define WN_LD_F16(p) ((VF){wn_h2f((p)[0]), wn_h2f((p)[1]), wn_h2f((p)[2]), wn_h2f((p)[3])})
#define WN_ST_F16(p, x) do { const VF x_ = (x); \
    for (int l_ = 0; l_ < 4; l_++) (p)[l_] = wn_f2h(x_[l_]); } while (0)
WN_INLINE void WN_CAT(wn, st_bf16, ISA)(uint16_t *p, VF x)
{
    const __m128i u = _mm_castps_si128((__m128)x);
    const __m128i odd = _mm_and_si128(_mm_srli_epi32(u, 16), _mm_set1_epi32(1));
    __m128i r = _mm_srli_epi32(_mm_add_epi32(_mm_add_epi32(u, _mm_set1_epi32(0x7fff)), odd), 16);
    const __m128i nan = _mm_castps_si128(_mm_cmpunord_ps((__m128)x, (__m128)x));
    const __m128i q = _mm_or_si128(_mm_srli_epi32(u, 16), _mm_set1_epi32(0x40));
    r = _mm_or_si128(_mm_and_si128(nan, q), _mm_andnot_si128(nan, r));
    /* SSE2 packs with signed saturation: sign-extend the 16-bit patterns first */
    r = _mm_srai_epi32(_mm_slli_epi32(r, 16), 16);
    _mm_storel_epi64((__m128i *)p, _mm_packs_epi32(r, r));
}
#else
#define WN_LD_BF16(p) ((VF){wn_bf2f((p)[0]), wn_bf2f((p)[1]), wn_bf2f((p)[2]), wn_bf2f((p)[3])})
#define WN_LD_F16(p) ((VF){wn_h2f((p)[0]), wn_h2f((p)[1]), wn_h2f((p)[2]), wn_h2f((p)[3])})
#define WN_ST_F16(p, x) do { const VF x_ = (x); \
    for (int l_ = 0; l_ < 4; l_++) (p)[l_] = wn_f2h(x_[l_]); } while (0)
WN_INLINE void WN_CAT(wn, st_bf16, ISA)(uint16_t *p, VF x)
{
    for (int l = 0; l < 4; l++) p[l] = wn_f2bf(x[l]);
}
#endif
#define WN_ST_BF16(p, x) WN_CAT(wn, st_bf16, ISA)((p), (x))

/* ---- the 32 lanes (see wn_impl.h) -------------------------------------- */

/* acc[0 .. WN_VFL) += the float32 values of p, widened exactly. */
WN_INLINE void WN_CAT(wn, flush, ISA)(double *acc, VF p)
{
#if WN_VB == 64
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256((__m512)p));
    const __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps((__m512)p, 1));
#elif WN_VB == 32
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128((__m256)p));
    const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps((__m256)p, 1));
#elif defined(__SSE2__)
    const __m128d lo = _mm_cvtps_pd((__m128)p);
    const __m128d hi = _mm_cvtps_pd(_mm_movehl_ps((__m128)p, (__m128)p));
#endif
#if defined(__SSE2__) || WN_VB > 16
    WN_ST_F64(acc, WN_LD_F64(acc) + (VD)lo);
    WN_ST_F64(acc + WN_VDL, WN_LD_F64(acc + WN_VDL) + (VD)hi);
#else
    for (int l = 0; l < WN_VFL; l++) acc[l] += (double)p[l];
#endif
}
#define WN_FLUSH1 WN_CAT(wn, flush, ISA)

/* The lanes' fixed pairwise tree (at each level lane j += lane j + w, for
 * w = 16, 8, ..., 1), on this ISA's registers. */
WN_INLINE double WN_CAT(wn, total, ISA)(const double *acc)
{
    VD a[WN_NVD];
    WN_UNROLL
    for (int q = 0; q < WN_NVD; q++) a[q] = WN_LD_F64(acc + q * WN_VDL);
    WN_UNROLL
    for (int m = WN_NVD / 2; m >= 1; m /= 2)
        WN_UNROLL
        for (int q = 0; q < m; q++) a[q] += a[q + m];
    double l[WN_VDL];
    memcpy(l, &a[0], sizeof l);
    WN_UNROLL
    for (int w = WN_VDL / 2; w >= 1; w /= 2)
        WN_UNROLL
        for (int j = 0; j < w; j++) l[j] += l[j + w];
    return l[0];
}
#define WN_TOTAL WN_CAT(wn, total, ISA)

WN_INLINE void WN_CAT(wn, zero, ISA)(double *acc)
{
    const VD z = {0};
    WN_UNROLL
    for (int q = 0; q < WN_NVD; q++) WN_ST_F64(acc + q * WN_VDL, z);
}
#define WN_ZERO WN_CAT(wn, zero, ISA)

/* ---- short rows (see short_fwd in wn_impl.h) --------------------------- */

/* A VF's float32 values widened exactly into two VDs (lanes lo, then hi). */
WN_INLINE void WN_CAT(wn, widen, ISA)(VF p, VD *lo, VD *hi)
{
#if WN_VB == 64
    *lo = (VD)_mm512_cvtps_pd(_mm512_castps512_ps256((__m512)p));
    *hi = (VD)_mm512_cvtps_pd(_mm512_extractf32x8_ps((__m512)p, 1));
#elif WN_VB == 32
    *lo = (VD)_mm256_cvtps_pd(_mm256_castps256_ps128((__m256)p));
    *hi = (VD)_mm256_cvtps_pd(_mm256_extractf128_ps((__m256)p, 1));
#elif defined(__SSE2__)
    *lo = (VD)_mm_cvtps_pd((__m128)p);
    *hi = (VD)_mm_cvtps_pd(_mm_movehl_ps((__m128)p, (__m128)p));
#else
    for (int l = 0; l < WN_VDL; l++) { (*lo)[l] = (double)p[l]; (*hi)[l] = (double)p[l + WN_VDL]; }
#endif
}
#define WN_WIDEN WN_CAT(wn, widen, ISA)

/* Eight rows' last three levels of the lanes' tree: `l` holds, per row k,
 * the 8 lanes l[8k + j] left after the levels w = 16 and 8; out[k] gets
 * ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)) -- at each level lane j
 * += lane j + w, the order of wn_lanes_total -- for all eight rows at once
 * (a transpose folded into the adds).  l and out are 64-byte aligned. */
WN_INLINE void WN_CAT(wn, hsum8, ISA)(const double *l, double *out)
{
#if WN_VB == 64
    const __m512d r0 = _mm512_load_pd(l), r1 = _mm512_load_pd(l + 8),
                  r2 = _mm512_load_pd(l + 16), r3 = _mm512_load_pd(l + 24),
                  r4 = _mm512_load_pd(l + 32), r5 = _mm512_load_pd(l + 40),
                  r6 = _mm512_load_pd(l + 48), r7 = _mm512_load_pd(l + 56);
    /* w = 4: pairs of rows; 128-bit lanes [a(m0 m1), a(m2 m3), b(..), b(..)] */
#define WN_H4(a, b) _mm512_add_pd(_mm512_shuffle_f64x2(a, b, 0x44), _mm512_shuffle_f64x2(a, b, 0xEE))
    const __m512d s02 = WN_H4(r0, r2), s46 = WN_H4(r4, r6), s13 = WN_H4(r1, r3), s57 = WN_H4(r5, r7);
#undef WN_H4
    /* w = 2: [a(p0 p1), b(..), c(..), d(..)] */
#define WN_H2(a, b) _mm512_add_pd(_mm512_shuffle_f64x2(a, b, 0x88), _mm512_shuffle_f64x2(a, b, 0xDD))
    const __m512d pe = WN_H2(s02, s46), po = WN_H2(s13, s57);   /* rows 0 2 4 6 / 1 3 5 7 */
#undef WN_H2
    /* w = 1 */
    _mm512_store_pd(out, _mm512_add_pd(_mm512_unpacklo_pd(pe, po), _mm512_unpackhi_pd(pe, po)));
#elif WN_VB == 32
    for (int h = 0; h < 2; h++) {
        const double *q = l + 32 * h;
        /* w = 4: the row's two halves */
        const __m256d m0 = _mm256_add_pd(_mm256_load_pd(q), _mm256_load_pd(q + 4));
        const __m256d m1 = _mm256_add_pd(_mm256_load_pd(q + 8), _mm256_load_pd(q + 12));
        const __m256d m2 = _mm256_add_pd(_mm256_load_pd(q + 16), _mm256_load_pd(q + 20));
        const __m256d m3 = _mm256_add_pd(_mm256_load_pd(q + 24), _mm256_load_pd(q + 28));
        /* w = 2: [a.p0 a.p1 b.p0 b.p1] for rows (0, 2) and (1, 3) */
        const __m256d p02 = _mm256_add_pd(_mm256_permute2f128_pd(m0, m2, 0x20),
                                          _mm256_permute2f128_pd(m0, m2, 0x31));
        const __m256d p13 = _mm256_add_pd(_mm256_permute2f128_pd(m1, m3, 0x20),
                                          _mm256_permute2f128_pd(m1, m3, 0x31));
        /* w = 1 */
        _mm256_store_pd(out + 4 * h, _mm256_add_pd(_mm256_unpacklo_pd(p02, p13),
                                                   _mm256_unpackhi_pd(p02, p13)));
    }
#else
    for (int k = 0; k < 8; k++) {
        double a[8];
        memcpy(a, l + 8 * k, sizeof a);
        for (int w = 4; w >= 1; w /= 2)
            for (int j = 0; j < w; j++) a[j] += a[j + w];
        out[k] = a[0];
    }
#endif
}
#define WN_HSUM8 WN_CAT(wn, hsum8, ISA)

/* AVX-512: m (1 <= m <= lanes) elements through a mask, zeros beyond. */
#if WN_VB == 64
#define WN_HAVE_MASK 1
#define WN_M16(m) ((__mmask16)((1u << (m)) - 1u))
#define WN_M8(m) ((__mmask8)((1u << (m)) - 1u))
#define WN_LDP_F32(p, m) ((VF)_mm512_maskz_loadu_ps(WN_M16(m), (p)))
#define WN_STP_F32(p, m, x) _mm512_mask_storeu_ps((p), WN_M16(m), (__m512)(x))
#define WN_LDP_F64(p, m) ((VD)_mm512_maskz_loadu_pd(WN_M8(m), (p)))
#define WN_STP_F64(p, m, x) _mm512_mask_storeu_pd((p), WN_M8(m), (__m512d)(x))
#define WN_LDP_F16(p, m) ((VF)_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(WN_M16(m), (p))))
#define WN_STP_F16(p, m, x) _mm256_mask_storeu_epi16((p), WN_M16(m), \
    _mm512_cvtps_ph((__m512)(x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
#define WN_LDP_BF16(p, m) ((VF)_mm512_castsi512_ps(_mm512_slli_epi32( \
    _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(WN_M16(m), (p))), 16)))
WN_INLINE void WN_CAT(wn, stp_bf16, ISA)(uint16_t *p, int m, VF x)
{
    uint16_t b[16] __attribute__((aligned(32)));
    WN_ST_BF16(b, x);
    _mm256_mask_storeu_epi16(p, WN_M16(m), _mm256_load_si256((const __m256i *)b));
}
#define WN_STP_BF16(p, m, x) WN_CAT(wn, stp_bf16, ISA)((p), (m), (x))
/* as doubles: m <= 8 elements */
#define WN_LDPD_F32(p, m) ((VD)_mm512_cvtps_pd(_mm256_maskz_loadu_ps(WN_M8(m), (p))))
#define WN_LDPD_F64(p, m) WN_LDP_F64(p, m)
#define WN_LDPD_F16(p, m) ((VD)_mm512_cvtps_pd(_mm256_cvtph_ps(_mm_maskz_loadu_epi16(WN_M8(m), (p)))))
#define WN_LDPD_BF16(p, m) ((VD)_mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_slli_epi32( \
    _mm256_cvtepu16_epi32(_mm_maskz_loadu_epi16(WN_M8(m), (p))), 16))))
#endif

/* Streaming (non-temporal) copy of a 64-byte-aligned L1 buffer to a
 * 64-byte-aligned destination; nbytes is a multiple of 64. */
WN_INLINE void WN_CAT(wn, stream, ISA)(void *dst, const void *src, size_t nbytes)
{
#if defined(__AVX512F__)
    for (size_t i = 0; i < nbytes; i += 64)
        _mm512_stream_si512((__m512i *)((char *)dst + i),
                            _mm512_load_si512((const char *)src + i));
#elif defined(__AVX__)
    for (size_t i = 0; i < nbytes; i += 32)
        _mm256_stream_si256((__m256i *)((char *)dst + i),
                            _mm256_load_si256((const __m256i *)((const char *)src + i)));
#elif defined(__SSE2__)
    for (size_t i = 0; i < nbytes; i += 16)
        _mm_stream_si128((__m128i *)((char *)dst + i),
                         _mm_load_si128((const __m128i *)((const char *)src + i)));
#else
    memcpy(dst, src, nbytes);
#endif
}
#define STREAM(d, s, n) WN_CAT(wn, stream, ISA)((d), (s), (n))

/* ---- the dtypes: one block each (see the list in wn_impl.h) ------------- */

#ifndef WN_BF16_ONLY   /* the avx512bf16 variant differs from avx512 in bfloat16 only */
/* float32: float32 lane partials flushed every 4 steps (relative error of a
 * partial <= 5 * 2^-24); computed in float32. */
#define FN(name) WN_CAT(name, f32, ISA)
#define T float
#define NT float
#define CT float
#define BT float
#define LDD(x) ((double)(x))
#define LDF(x) (x)
#define STF(y) (y)
#define LDB(x) (x)
#define STB(y) ((float)(y))
#define WN_FLUSH 4
#define LOADVF(p) WN_LD_F32(p)
#define CV VF
#define CVI VFI
#define CVL WN_VFL
#define LOADCV(p) WN_LD_F32(p)
#define STORECV(p, x) WN_ST_F32(p, x)
#define LOADC(p) WN_LD_F32(p)
#define SCALE_OUT(q) ((float)(q))
#ifdef WN_HAVE_MASK
#define LDPCV(p, m) WN_LDP_F32(p, m)
#define STPCV(p, m, x) WN_STP_F32(p, m, x)
#define LDPTD(p, m) WN_LDPD_F32(p, m)
#endif
#include "wn_impl.h"
#undef LDPCV
#undef STPCV
#undef LDPTD
#undef FN
#undef T
#undef NT
#undef CT
#undef BT
#undef LDD
#undef LDF
#undef STF
#undef LDB
#undef STB
#undef WN_FLUSH
#undef LOADVF
#undef CV
#undef CVI
#undef CVL
#undef LOADCV
#undef STORECV
#undef LOADC
#undef SCALE_OUT

/* float64: float64 lanes; computed in float64. */
#define FN(name) WN_CAT(name, f64, ISA)
#define T double
#define NT double
#define CT double
#define BT double
#define LDD(x) (x)
#define LDF(x) (x)
#define STF(y) (y)
#define LDB(x) (x)
#define STB(y) (y)
#define WN_FLUSH 0
#define LOADVD(p) WN_LD_F64(p)
#define CV VD
#define CVI VDI
#define CVL WN_VDL
#define LOADCV(p) WN_LD_F64(p)
#define STORECV(p, x) WN_ST_F64(p, x)
#define LOADC(p) WN_LD_F64(p)
#define SCALE_OUT(q) (q)
#ifdef WN_HAVE_MASK
#define LDPCV(p, m) WN_LDP_F64(p, m)
#define STPCV(p, m, x) WN_STP_F64(p, m, x)
#define LDPTD(p, m) WN_LDPD_F64(p, m)
#endif
#include "wn_impl.h"
#undef LDPCV
#undef STPCV
#undef LDPTD
#undef FN
#undef T
#undef NT
#undef CT
#undef BT
#undef LDD
#undef LDF
#undef STF
#undef LDB
#undef STB
#undef WN_FLUSH
#undef LOADVD
#undef CV
#undef CVI
#undef CVL
#undef LOADCV
#undef STORECV
#undef LOADC
#undef SCALE_OUT

#endif /* WN_BF16_ONLY */

/* float16 (IEEE binary16 bit patterns), computed in float32; products of two
 * 16-bit values are exact in float32: partials flushed every 16 steps
 * (<= 16 * 2^-24). */
#define FN(name) WN_CAT(name, f16, ISA)
#define T uint16_t
#define NT float
#define CT float
#define BT float
#define LDD(x) ((double)wn_h2f(x))
#define LDF(x) wn_h2f(x)
#define STF(y) wn_f2h(y)
#define LDB(x) wn_h2f(x)
#define STB(y) wn_f2h(y)
#define WN_FLUSH 16
#define LOADVF(p) WN_LD_F16(p)
#define CV VF
#define CVI VFI
#define CVL WN_VFL
#define LOADCV(p) WN_LD_F16(p)
#define STORECV(p, x) WN_ST_F16(p, x)
#define LOADC(p) WN_LD_F32(p)
#define SCALE_OUT(q) wn_f2h(wn_d2f_odd(q))
#ifdef WN_HAVE_MASK
#define LDPCV(p, m) WN_LDP_F16(p, m)
#define STPCV(p, m, x) WN_STP_F16(p, m, x)
#define LDPTD(p, m) WN_LDPD_F16(p, m)
#endif
#ifndef WN_BF16_ONLY   /* float16's macros stay: bfloat16 shares some */
#include "wn_impl.h"
#endif
#undef LDPCV
#undef STPCV
#undef LDPTD
#undef FN
#undef T
#undef LDD
#undef LDF
#undef STF
#undef LDB
#undef STB
#undef LOADVF
#undef LOADCV
#undef STORECV
#undef SCALE_OUT

/* bfloat16 (bit patterns), computed in float32; NT, CT, BT, WN_FLUSH, CV,
 * CVL and LOADC as float16. */
#define FN(name) WN_CAT(name, bf16, ISA)
#define T uint16_t
#define LDD(x) ((double)wn_bf2f(x))
#define LDF(x) wn_bf2f(x)
#define STF(y) wn_f2bf(y)
#define LDB(x) wn_bf2f(x)
#define STB(y) wn_f2bf(y)
#define LOADVF(p) WN_LD_BF16(p)
#define LOADCV(p) WN_LD_BF16(p)
#define STORECV(p, x) WN_ST_BF16(p, x)
#ifdef WN_LD2_BF16
#define LOADCV2(p, a, b) WN_LD2_BF16(p, a, b)
#define STORECV2(p, a, b) WN_ST2_BF16(p, a, b)
#define LOADVF2(p, a, b) WN_LD2_BF16(p, a, b)
#define UNPAIRVF(a, b) WN_UNPAIR(a, b)
#endif
#define SCALE_OUT(q) wn_f2bf(wn_d2f_odd(q))
#ifdef WN_HAVE_MASK
#define LDPCV(p, m) WN_LDP_BF16(p, m)
#define STPCV(p, m, x) WN_STP_BF16(p, m, x)
#define LDPTD(p, m) WN_LDPD_BF16(p, m)
#endif
#include "wn_impl.h"
#undef LDPCV
#undef STPCV
#undef LDPTD
#undef FN
#undef T
#undef NT
#undef CT
#undef BT
#undef LDD
#undef LDF
#undef STF
#undef LDB
#undef STB
#undef WN_FLUSH
#undef LOADVF
#undef CV
#undef CVI
#undef CVL
#undef LOADCV
#undef STORECV
#undef LOADCV2
#undef STORECV2
#undef LOADVF2
#undef UNPAIRVF
#undef LOADC
#undef SCALE_OUT

#undef WN_LD2_BF16
#undef WN_ST2_BF16
#undef WN_UNPAIR
#undef STREAM
#undef WN_WIDEN
#undef WN_HSUM8
#undef WN_HAVE_MASK
#undef WN_FLUSH1
#undef WN_TOTAL
#undef WN_ZERO
#undef WN_LD_F32
#undef WN_ST_F32
#undef WN_LD_F64
#undef WN_ST_F64
#undef WN_LD_F16
#undef WN_ST_F16
#undef WN_LD_BF16
#undef WN_ST_BF16
#undef VF
#undef VD
#undef VFI
#undef VDI
#undef WN_VB
#undef WN_VFL
#undef WN_VDL
#undef WN_NVF
#undef WN_NVD
