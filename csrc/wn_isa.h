/*
 * One instruction-set variant of every kernel: wn.c includes this file under
 * a `#pragma GCC target(...)` with ISA set to the variant's name, so the same
 * C source is compiled for AVX-512, AVX2 and baseline x86-64 (or once, on
 * other architectures) and dispatched at run time.
 */
#include "wn_common.h"

#define WN_CAT_(a, b, c) a##_##b##_##c
#define WN_CAT(a, b, c) WN_CAT_(a, b, c)

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

/* Generic 16-element conversions (auto-vectorized); float16 overrides them
 * with F16C instructions where the variant has them. */
#define VLOAD16(f, p) do { for (int j_ = 0; j_ < 16; j_++) (f)[j_] = LDF((p)[j_]); } while (0)
#define VSTORE16(p, f) do { for (int j_ = 0; j_ < 16; j_++) (p)[j_] = STF((f)[j_]); } while (0)
/* CT is float for every type but float64.  AVX-512 widens 8 floats in one
 * instruction; GCC's generic lowering of the conversion takes three. */
#if defined(__AVX512F__)
#define TOV8D_F32(f) ((wn_v8d)_mm512_cvtps_pd(_mm256_loadu_ps(f)))
#else
#define TOV8D_F32(f) wn_v8d_from_f32(f)
#endif
#define TOV8D(f) TOV8D_F32(f)

/* float32: float32 lanes flushed every 4 steps (relative error of a
 * partial <= 5 * 2^-24); float64: float64 lanes; 16-bit types: products
 * are exact in float32, flushed every 16 steps (<= 16 * 2^-24). */
#define WN_FLUSH 4

/* float32 */
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
#include "wn_impl.h"
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

/* float64 */
#undef WN_FLUSH
#define WN_FLUSH 0
#undef TOV8D
#define TOV8D(f) wn_v8d_from_f64(f)
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
#include "wn_impl.h"
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

#undef TOV8D
#define TOV8D(f) TOV8D_F32(f)

#undef WN_FLUSH
#define WN_FLUSH 16

/* float16 (IEEE binary16 bit patterns), computed in float32 */
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
#if defined(__AVX512F__)
#undef VLOAD16
#undef VSTORE16
#define VLOAD16(f, p) _mm512_storeu_ps((f), _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p))))
#define VSTORE16(p, f) _mm256_storeu_si256((__m256i *)(p), \
    _mm512_cvtps_ph(_mm512_loadu_ps(f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
#elif defined(__F16C__)
#undef VLOAD16
#undef VSTORE16
#define VLOAD16(f, p) do { \
    _mm256_storeu_ps((f), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))); \
    _mm256_storeu_ps((f) + 8, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p) + 1))); \
} while (0)
#define VSTORE16(p, f) do { \
    _mm_storeu_si128((__m128i *)(p), _mm256_cvtps_ph(_mm256_loadu_ps(f), \
                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); \
    _mm_storeu_si128((__m128i *)(p) + 1, _mm256_cvtps_ph(_mm256_loadu_ps((f) + 8), \
                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); \
} while (0)
#endif
#include "wn_impl.h"
#undef VLOAD16
#undef VSTORE16
#define VLOAD16(f, p) do { for (int j_ = 0; j_ < 16; j_++) (f)[j_] = LDF((p)[j_]); } while (0)
#define VSTORE16(p, f) do { for (int j_ = 0; j_ < 16; j_++) (p)[j_] = STF((f)[j_]); } while (0)
#undef FN
#undef LDD
#undef LDF
#undef STF
#undef LDB
#undef STB

/* bfloat16 (bit patterns), computed in float32; T, NT, CT, BT as float16 */
#define FN(name) WN_CAT(name, bf16, ISA)
#if defined(__AVX512BW__)
/* Same rounding as wn_f2bf, packed in a register: the compiler's
 * memory-destination vpmovdw is slow on some cores (Zen 4). */
#undef VSTORE16
#define VSTORE16(p, f) do { \
    const __m512i u_ = _mm512_castps_si512(_mm512_loadu_ps(f)); \
    const __m512i odd_ = _mm512_and_si512(_mm512_srli_epi32(u_, 16), _mm512_set1_epi32(1)); \
    __m512i r_ = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u_, \
                     _mm512_set1_epi32(0x7fff)), odd_), 16); \
    const __mmask16 nan_ = _mm512_cmp_ps_mask(_mm512_castsi512_ps(u_), \
                               _mm512_castsi512_ps(u_), _CMP_UNORD_Q); \
    r_ = _mm512_mask_or_epi32(r_, nan_, _mm512_srli_epi32(u_, 16), _mm512_set1_epi32(0x40)); \
    const __m512i even_ = _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, \
        38, 36, 34, 32, 30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0); \
    _mm256_storeu_si256((__m256i *)(p), \
        _mm512_castsi512_si256(_mm512_permutexvar_epi16(even_, r_))); \
} while (0)
#endif
#define LDD(x) ((double)wn_bf2f(x))
#define LDF(x) wn_bf2f(x)
#define STF(y) wn_f2bf(y)
#define LDB(x) wn_bf2f(x)
#define STB(y) wn_f2bf(y)
#include "wn_impl.h"
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

#undef STREAM
#undef WN_FLUSH
#undef TOV8D
#undef TOV8D_F32
#undef VLOAD16
#undef VSTORE16
