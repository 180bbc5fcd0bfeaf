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

#ifdef WN_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,prefer-vector-width=512")
#define ISA avx512
#include "wn_isa.h"
#undef ISA
#pragma GCC pop_options

/* AVX-512 with AVX512_BF16 (Zen 4, Sapphire Rapids): bfloat16 stores in
 * one instruction; the other dtypes are the avx512 variant's. */
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,bmi,bmi2,prefer-vector-width=512")
#define ISA avx512bf16
#define WN_BF16_ONLY
#include "wn_isa.h"
#undef WN_BF16_ONLY
#undef ISA
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,tune=haswell")
#define ISA avx2
#include "wn_isa.h"
#undef ISA
#pragma GCC pop_options
#endif

#define ISA baseline
#include "wn_isa.h"
#undef ISA

/* Per (ISA, dtype): a task's independent units, and its team work. */
typedef struct { wn_units_fn units; wn_team_fn team; } wn_entry;
#define WN_ENTRY(d, isa) { units_##d##_##isa, team_##d##_##isa }
#define WN_ROW(isa) \
    { WN_ENTRY(f16, isa), WN_ENTRY(bf16, isa), WN_ENTRY(f32, isa), WN_ENTRY(f64, isa) }

enum { WN_ISA_BASELINE, WN_ISA_AVX2, WN_ISA_AVX512, WN_ISA_AVX512BF16, WN_NISA };
static const char *const wn_isa_names[WN_NISA] = {"baseline", "avx2", "avx512", "avx512bf16"};
static const wn_entry wn_table[WN_NISA][WN_NDTYPES] = {
    WN_ROW(baseline),
#ifdef WN_X86
    WN_ROW(avx2),
    WN_ROW(avx512),
    { WN_ENTRY(f16, avx512), WN_ENTRY(bf16, avx512bf16), WN_ENTRY(f32, avx512),
      WN_ENTRY(f64, avx512) },
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
    if (best == WN_ISA_AVX512 && __builtin_cpu_supports("avx512bf16"))
        best = WN_ISA_AVX512BF16;
#endif
    const char *want = getenv("WNKERNELS_ISA");
    if (want)
        for (int i = 0; i <= best; i++)
            if (!strcmp(want, wn_isa_names[i])) best = i;
    isa = best;
    return isa;
}

const char *wn_isa(void) { return wn_isa_names[wn_isa_detect()]; }

static const int64_t wn_itemsize[WN_NDTYPES] = {2, 2, 4, 8};

/* Below ~64 KiB of input per thread, waking another thread costs more than
 * it saves (and on a busy machine a sleeping team member costs far more).
 * Results do not depend on the thread count, so this is only about speed. */
#define WN_BYTES_PER_THREAD (64 << 10)

/* Bytes a call reads (its weight when a table is shared out). */
static int64_t wn_call_bytes(const wn_call *c)
{
    const wn_layout *L = c->layout;
    return L->nrows * L->rowlen * wn_itemsize[c->dtype] * (c->op == WN_BACKWARD ? 2 : 1);
}

/* Streaming stores pay off when the output cannot stay cached for its
 * reader and has a contiguous axis the strategy writes along (the kept axis
 * in column mode).  A forward's w is read right after the call (by the layer
 * that uses it), so a single forward streams only when w is itself at least
 * the threshold (the last-level cache).  A grouped call's outputs are read
 * only after the whole group has run, and a backward's grad_v only after the
 * rest of the backward pass (by the optimizer), so there it is the bytes
 * moved that decide: the whole table's (`table_bytes`, inputs and outputs)
 * or the single backward's own (grad_w, v, grad_v).  A backward's two inputs
 * must also stay cached between its passes, so it streams from half the
 * threshold: measured on Zen 4 (32 MiB L3, 2 threads, torch tensors, one
 * process), grad_v streamed ran 512x256x16 1.35-1.53x, 384x384x16 1.37x,
 * 512x512x7 1.18x, 768x48x128 dim=2 1.22x faster (16-54 MiB moved), and
 * 512x256x8 0.75x, 256x256x16 0.81x (12 MiB moved).  Stores never change a
 * result's bits, so an item computes the same alone and in a group. */
static int wn_stream_ok(const wn_call *c, int64_t table_bytes)
{
    const wn_layout *L = c->layout;
    const int out = c->op == WN_BACKWARD ? 2 : 1;
    const int64_t thr = wn_get_stream_threshold();
    const int64_t bytes = L->nrows * L->rowlen * wn_itemsize[c->dtype];
    if (c->op == WN_ROW_SCALE) return 0;
    if (c->op == WN_BACKWARD) {
        const int64_t moved = table_bytes > 3 * bytes ? table_bytes : 3 * bytes;
        if (2 * moved < thr) return 0;
    } else if (bytes < thr && table_bytes < thr) {
        return 0;
    }
    if (wn_use_columns(L)) return L->kept_stride[out][L->kept_ndim - 1] == 1;
    return L->red_ndim >= 1 && L->red_stride[out][L->red_ndim - 1] == 1;
}

/* A call's task: its strategy and geometry for a team of nth threads.
 * `colscr`: whether per-thread column scratch of full width exists. */
static void wn_prepare(const wn_call *c, int nth, int colscr, const wn_entry *e,
                       int64_t table_bytes, wn_task *t)
{
    const wn_layout *L = c->layout;
    const int64_t isz = wn_itemsize[c->dtype];
    const int bwd = c->op == WN_BACKWARD, nin = bwd ? 2 : 1, narr = bwd ? 3 : 2;
    memset(t, 0, sizeof *t);
    t->c = c;
    t->units = e->units;
    t->team = e->team;
    t->nt = wn_stream_ok(c, table_bytes);
    if (wn_use_columns(L)) {
        t->cg = wn_colgeom_make(L, isz, nin, wn_col_budget,
                                colscr ? WN_COLBLK : WN_COLBLK_MIN);
        if (t->cg.nsc > 1 && nth > 1) {
            t->part = malloc(sizeof(double) * t->cg.nsc * L->nrows);
            t->scal = malloc(2 * sizeof(double) * L->nrows);
            if (t->part && t->scal) {
                t->mode = WN_MODE_COLS_SPLIT;
                return;
            }
            free(t->part);
            free(t->scal);
            t->part = NULL;
            t->scal = NULL;
        }
        t->mode = WN_MODE_COLS;
        t->nunits = t->cg.nouter * t->cg.nblk;
        t->unit_bytes = t->cg.cb * L->rowlen * isz * nin + 64;
        return;
    }
    t->rg = wn_rowgeom_make(L);
    if (L->nrows < 2 * (int64_t)nth && t->rg.npieces >= 2) {
        t->part = malloc(sizeof(double) * L->nrows * t->rg.npieces);
        if (t->part) {
            t->mode = WN_MODE_SPLIT;
            return;
        }
    }
    /* Per row, a square root, a division and the loop set-up: weigh it as
     * 64 bytes so tables of short rows still share out evenly. */
    const int64_t row_bytes = L->rowlen * isz * nin + 64;
    if (wn_short_rows(L, narr, &t->rg, wn_isa_detect() >= WN_ISA_AVX512)) {
        /* a few ns of fixed work per row: weigh it as 16 bytes */
        t->mode = WN_MODE_SHORT;
        t->rb = wn_short_batch(L->rowlen);
        t->nunits = (L->nrows + t->rb - 1) / t->rb;
        t->unit_bytes = (L->rowlen * isz * nin + 16) * t->rb;
    } else if (wn_simple_rows(L, narr, &t->rg)) {
        t->mode = WN_MODE_SIMPLE;
        t->rb = wn_row_batch(L->rowlen, isz, nin);
        t->nunits = (L->nrows + t->rb - 1) / t->rb;
        t->unit_bytes = row_bytes * t->rb;
    } else {
        t->mode = WN_MODE_ROWS;
        t->nunits = L->nrows;
        t->unit_bytes = row_bytes;
    }
}

/* One thread's share of a table: the independent units whose first byte
 * falls in [lo, hi) of the concatenated units (in table order), then its
 * part of every team task.  Outside a team (nth == 1) it is all of it. */
static void wn_share(const wn_task *tasks, int64_t ntask, const int64_t *start,
                     int64_t total, double *scratch)
{
    const int tid = wn_thread_num(), nteam = wn_num_threads();
    double *scr = scratch ? scratch + (size_t)tid * WN_COLSCR * WN_COLBLK : NULL;
    double small[WN_COLSCR * WN_COLBLK_MIN];
    if (!scr) scr = small;
    const int64_t lo = (int64_t)((double)total * tid / nteam);
    const int64_t hi = tid + 1 == nteam ? total : (int64_t)((double)total * (tid + 1) / nteam);
    for (int64_t i = 0; i < ntask; i++) {
        const wn_task *t = &tasks[i];
        if (!t->nunits) continue;
        const int64_t a = start[i], b = a + t->nunits * t->unit_bytes;
        if (b <= lo || a >= hi) continue;
        /* unit u starts at a + u * unit_bytes: take those starting in [lo, hi) */
        int64_t u0 = lo <= a ? 0 : (lo - a + t->unit_bytes - 1) / t->unit_bytes;
        int64_t u1 = hi >= b ? t->nunits : (hi - a + t->unit_bytes - 1) / t->unit_bytes;
        if (u0 < u1) t->units(t, u0, u1, scr);
    }
    for (int64_t i = 0; i < ntask; i++)
        if (tasks[i].team) tasks[i].team(&tasks[i], scr);
}

#define WN_STACK_TASKS 16

int wn_run(const wn_call *calls, int64_t ncalls, int nthreads)
{
    wn_task stack_tasks[WN_STACK_TASKS];
    int64_t stack_start[WN_STACK_TASKS];
    wn_task *tasks = stack_tasks;
    int64_t *start = stack_start;
    int rc = 0;
    if (ncalls <= 0) return 0;
    if (ncalls > WN_STACK_TASKS) {
        tasks = malloc(sizeof(wn_task) * ncalls);
        start = malloc(sizeof(int64_t) * ncalls);
        if (!tasks || !start) {
            free(tasks);
            free(start);
            return -1;
        }
    }
    /* Team size from the bytes of the whole table. */
    int64_t bytes = 0, moved = 0;
    int anycols = 0;
    for (int64_t i = 0; i < ncalls; i++) {
        const wn_layout *L = calls[i].layout;
        if (L->nrows <= 0) continue;
        bytes += wn_call_bytes(&calls[i]);
        if (calls[i].op != WN_ROW_SCALE) moved += L->nrows * L->rowlen * wn_itemsize[calls[i].dtype];
        anycols |= wn_use_columns(L);
    }
    moved = ncalls > 1 ? moved + bytes : 0;    /* a group's traffic (see wn_stream_ok) */
    int64_t useful = bytes / WN_BYTES_PER_THREAD;
    if (useful < 1) useful = 1;
    const int nth = wn_team_threads(nthreads < useful ? nthreads : (int)useful);
    /* Per-thread column scratch (blocks are wide: a few hundred KiB would
     * be unkind to small thread stacks); without it, narrow blocks on the
     * stack.  Block width never changes bits. */
    double *scratch = anycols ? malloc(sizeof(double) * WN_COLSCR * WN_COLBLK * nth) : NULL;
    const wn_entry *row = wn_table[wn_isa_detect()];
    int64_t ntask = 0, total = 0;
    for (int64_t i = 0; i < ncalls; i++) {
        if (calls[i].layout->nrows <= 0) continue;
        wn_task *t = &tasks[ntask];
        wn_prepare(&calls[i], nth, scratch != NULL, &row[calls[i].dtype], moved, t);
        if (t->mode == WN_MODE_SPLIT || t->mode == WN_MODE_COLS_SPLIT) {
            t->nunits = 0;
        } else {
            t->team = NULL;
            start[ntask] = total;
            total += t->nunits * t->unit_bytes;
        }
        ntask++;
    }
    WN_TEAM(nth, wn_share(tasks, ntask, start, total, scratch));
    for (int64_t i = 0; i < ntask; i++) {
        free(tasks[i].part);
        free(tasks[i].scal);
    }
    free(scratch);
    if (tasks != stack_tasks) {
        free(tasks);
        free(start);
    }
    return rc;
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
