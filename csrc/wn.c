/*
 * wnkernels CPU kernels: run-time dispatch over instruction-set variants,
 * and the roofline primitives the benchmarks compare against.
 *
 * The kernel source (wn_impl.h) is compiled once per variant under
 * `#pragma GCC target`, so a portable build still runs AVX-512 code where
 * the CPU has it.  Every variant sums in the same fixed lanes and order
 * (and the build disables FMA contraction), so all variants return the same
 * bits.  WNKERNELS_ISA=avx512|avx2|baseline forces a variant (for testing).
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wn.h"
/* Included before any target pragma: baseline helpers inline into every variant. */
#include "wn_common.h"

#if defined(__x86_64__) || defined(_M_X64)
#define WN_X86 1
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
static inline int wn_thread_num(void) { return omp_get_thread_num(); }
static inline int wn_num_threads(void) { return omp_get_num_threads(); }
int wn_have_openmp(void) { return 1; }
#else
static inline int wn_thread_num(void) { return 0; }
static inline int wn_num_threads(void) { return 1; }
int wn_have_openmp(void) { return 0; }
#endif

#ifdef _OPENMP
#include <pthread.h>
/* libgomp cannot be used in a child forked after its thread pool started:
 * the child's first parallel region waits forever for threads that fork did
 * not copy (multiprocessing's default start method on Linux, data-loader
 * workers).  Such a child runs every kernel on its calling thread; results
 * do not depend on the thread count, so only speed changes. */
static volatile int wn_pool_started = 0, wn_pool_lost = 0;
static void wn_forked_child(void)
{
    if (wn_pool_started) wn_pool_lost = 1;
}
__attribute__((constructor)) static void wn_watch_fork(void)
{
    pthread_atfork(NULL, NULL, wn_forked_child);
}
/* The team size to use for a request of n threads (1: no OpenMP region). */
static inline int wn_team_threads(int n)
{
    if (n <= 1 || wn_pool_lost) return 1;
    wn_pool_started = 1;
    return n;
}
int wn_threads_lost_to_fork(void) { return wn_pool_lost; }
#else
static inline int wn_team_threads(int n) { (void)n; return 1; }
int wn_threads_lost_to_fork(void) { return 0; }
#endif

/* Run `call` (a function call) on a team of `nth` threads, or directly with
 * one: an OpenMP region with if(0) still builds and tears down a team, which
 * measured ~0.55 us per call here, more than a 64x64 kernel's own work.  A
 * worksharing loop or barrier in `call` then binds to no team and runs
 * serially. */
#define WN_TEAM(nth, call)                                                     \
    do {                                                                       \
        const int wn_team_size_ = (nth);                                       \
        if (wn_team_size_ > 1) {                                               \
            _Pragma("omp parallel num_threads(wn_team_size_)")                 \
            call;                                                              \
        } else {                                                               \
            call;                                                              \
        }                                                                      \
    } while (0)

#ifdef WN_X86
static inline void wn_sfence(void) { _mm_sfence(); }
#else
static inline void wn_sfence(void) { __sync_synchronize(); }
#endif

/* Column-mode block budget (bytes of each input kept in L2 between passes). */
static int64_t wn_col_budget = 256 * 1024;
/* Outputs at least this large (bytes) are written with streaming stores:
 * they cannot stay in cache anyway, and skipping the read-for-ownership of
 * w saves a third of the traffic.  Smaller outputs stay cached for whoever
 * reads them next.  Set from the last-level cache size on first use. */
static int64_t wn_stream_threshold = -1;

static int64_t wn_llc_bytes(void)
{
    /* Virtual machines report odd sizes (320 MiB seen here for a 32 MiB
     * L3): trust only a plausible per-socket figure. */
#ifdef _SC_LEVEL3_CACHE_SIZE
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 >= (4L << 20) && l3 <= (128L << 20)) return l3;
#endif
    return 32 << 20;
}

void wn_set_stream_threshold(int64_t nbytes) { wn_stream_threshold = nbytes; }
int64_t wn_get_stream_threshold(void)
{
    if (wn_stream_threshold < 0) wn_stream_threshold = wn_llc_bytes();
    return wn_stream_threshold;
}
void wn_set_col_budget(int64_t nbytes) { wn_col_budget = nbytes > 0 ? nbytes : 1; }
int64_t wn_get_col_budget(void) { return wn_col_budget; }

typedef void (*wn_fwd_fn)(const wn_layout *, const void *, const void *,
                          int64_t, void *, void *, double, int, int);
typedef void (*wn_bwd_fn)(const wn_layout *, const void *, const void *,
                          const void *, int64_t, const void *, int64_t, void *,
                          void *, int, int);

#ifdef WN_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,prefer-vector-width=512")
#define ISA avx512
#include "wn_isa.h"
#undef ISA
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2")
#define ISA avx2
#include "wn_isa.h"
#undef ISA
#pragma GCC pop_options
#endif

#define ISA baseline
#include "wn_isa.h"
#undef ISA

#define WN_TABLE(kind, isa) \
    { kind##_f16_##isa, kind##_bf16_##isa, kind##_f32_##isa, kind##_f64_##isa }

enum { WN_ISA_BASELINE, WN_ISA_AVX2, WN_ISA_AVX512, WN_NISA };
static const char *const wn_isa_names[WN_NISA] = {"baseline", "avx2", "avx512"};
static const wn_fwd_fn wn_fwd_table[WN_NISA][4] = {
    WN_TABLE(forward, baseline),
#ifdef WN_X86
    WN_TABLE(forward, avx2),
    WN_TABLE(forward, avx512),
#endif
};
static const wn_bwd_fn wn_bwd_table[WN_NISA][4] = {
    WN_TABLE(backward, baseline),
#ifdef WN_X86
    WN_TABLE(backward, avx2),
    WN_TABLE(backward, avx512),
#endif
};

static int wn_isa_detect(void)
{
    static int isa = -1;   /* benign race: every thread computes the same */
    if (isa >= 0) return isa;
    int best = WN_ISA_BASELINE;
#ifdef WN_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        best = WN_ISA_AVX2;
    if (best == WN_ISA_AVX2 && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq"))
        best = WN_ISA_AVX512;
#endif
    const char *want = getenv("WNKERNELS_ISA");
    if (want)
        for (int i = 0; i <= best; i++)
            if (!strcmp(want, wn_isa_names[i])) best = i;
    isa = best;
    return isa;
}

const char *wn_isa(void) { return wn_isa_names[wn_isa_detect()]; }

static const int64_t wn_itemsize[4] = {2, 2, 4, 8};

/* Below ~64 KiB of input per thread, waking another thread costs more than
 * it saves (and on a busy machine a sleeping team member costs far more).
 * Results do not depend on the thread count, so this is only about speed. */
#define WN_BYTES_PER_THREAD (64 << 10)

static int wn_threads_for(int dtype, const wn_layout *L, int nthreads, int ninputs)
{
    int64_t bytes = L->nrows * L->rowlen * wn_itemsize[dtype] * ninputs;
    int64_t useful = bytes / WN_BYTES_PER_THREAD;
    if (useful < 1) useful = 1;
    return wn_team_threads(nthreads < useful ? nthreads : (int)useful);
}

/* Streaming stores pay off when the output is large and has a contiguous
 * axis the strategy writes along (the kept axis in column mode). */
static int wn_stream_ok(int dtype, const wn_layout *L, int out)
{
    if (L->nrows * L->rowlen * wn_itemsize[dtype] < wn_get_stream_threshold()) return 0;
    if (wn_use_columns(L)) return L->kept_stride[out][L->kept_ndim - 1] == 1;
    return L->red_ndim >= 1 && L->red_stride[out][L->red_ndim - 1] == 1;
}

void wn_forward(int dtype, const wn_layout *L, const void *v, const void *g,
                int64_t g_stride, void *w, void *norms, double eps, int nthreads)
{
    if (L->nrows <= 0) return;
    wn_fwd_table[wn_isa_detect()][dtype](L, v, g, g_stride, w, norms, eps,
                                         wn_threads_for(dtype, L, nthreads, 1),
                                         wn_stream_ok(dtype, L, 1));
}

void wn_backward(int dtype, const wn_layout *L, const void *grad_w,
                 const void *v, const void *g, int64_t g_stride,
                 const void *norms, int64_t norms_stride, void *grad_v,
                 void *grad_g, int nthreads)
{
    if (L->nrows <= 0) return;
    wn_bwd_table[wn_isa_detect()][dtype](L, grad_w, v, g, g_stride, norms,
                                         norms_stride, grad_v, grad_g,
                                         wn_threads_for(dtype, L, nthreads, 2),
                                         wn_stream_ok(dtype, L, 2));
}

/* ---- rooflines: what the same threads reach on a plain copy / triad ---- */

/* One thread's share of a copy (all of it outside a team). */
static void wn_copy_share(void *dst, const void *src, int64_t nbytes)
{
    int64_t t = wn_thread_num(), n = wn_num_threads();
    int64_t lo = (nbytes * t / n) & ~(int64_t)63;
    int64_t hi = t + 1 == n ? nbytes : (nbytes * (t + 1) / n) & ~(int64_t)63;
    memcpy((char *)dst + lo, (const char *)src + lo, (size_t)(hi - lo));
}

void wn_roofline_copy(void *dst, const void *src, int64_t nbytes, int nthreads)
{
    WN_TEAM(wn_team_threads(nthreads), wn_copy_share(dst, src, nbytes));
}

/* Plain loops: SSE2 already saturates memory bandwidth on these sizes. */
#define WN_TRIAD(T, name)                                                      \
    static void name##_share(T *a, const T *b, T s, const T *c, int64_t n)     \
    {                                                                          \
        _Pragma("omp for schedule(static)")                                    \
        for (int64_t i = 0; i < n; i++) a[i] = b[i] * s + c[i];               \
    }                                                                          \
    void name(T *a, const T *b, T s, const T *c, int64_t n, int nthreads)      \
    {                                                                          \
        WN_TEAM(wn_team_threads(nthreads), name##_share(a, b, s, c, n));       \
    }
WN_TRIAD(float, wn_roofline_triad_f32)
WN_TRIAD(double, wn_roofline_triad_f64)
