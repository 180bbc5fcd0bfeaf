/*
 * Paired A/B timing of two builds of the C kernels, in one process.
 *
 * These machines are shared VMs whose speed drifts by 2x within a minute, so
 * timings taken in separate processes (or minutes apart) cannot resolve a
 * 5-10% change.  This program loads two builds of csrc/wn.c (each a shared
 * library loaded RTLD_LOCAL, so the two never mix), alternates samples
 * of the same call between them (A B, B A, ...) and reports, besides each
 * build's median and minimum, the median of the per-round ratios A/B with
 * its quartiles: two identical builds give 1.00 +- a few percent here.  It
 * also checks that both builds produce the same bits.
 *
 * Build two revisions (flags as setup.py's) and compare:
 *
 *   F="-O3 -std=gnu11 -ffp-contract=off -fno-math-errno -fno-strict-aliasing -fno-wrapv \
 *      -fopenmp -fPIC -shared"
 *   git show REV:csrc/...  (all of csrc/ into old/), then
 *   gcc $F -Iold old/wn.c -o libold.so;  gcc $F -Icsrc csrc/wn.c -o libnew.so
 *   gcc -O2 -Icsrc csrc/ab.c -o ab -ldl
 *   ./ab ./libold.so ./libnew.so 2048 64 bwd 1
 *
 * Arguments: LIB_A LIB_B ROWS ROWLEN fwd|bwd THREADS [DIM [DTYPE]]; a
 * C-contiguous ROWS x ROWLEN matrix, DIM 0 (rows, the default) or 1 (the
 * kept axis innermost: column mode), DTYPE f32 (the default), f64 or bf16.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "wn.h"

typedef int (*run_fn)(const wn_call *, int64_t, int);

#define ROUNDS 41

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void *xalloc(size_t n)
{
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) {
        fprintf(stderr, "ab: out of memory\n");
        exit(1);
    }
    return p;
}

/* p[i] = x in the dtype (bfloat16: truncated, which gives some bfloat16) */
static void put(void *p, int dtype, int64_t i, float x)
{
    if (dtype == WN_F64) {
        ((double *)p)[i] = x;
    } else if (dtype == WN_BF16) {
        uint32_t u;
        memcpy(&u, &x, 4);
        ((uint16_t *)p)[i] = (uint16_t)(u >> 16);
    } else {
        ((float *)p)[i] = x;
    }
}

static run_fn load(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    run_fn f = h ? (run_fn)dlsym(h, "wn_run") : NULL;
    if (!f) {
        fprintf(stderr, "ab: %s: %s\n", path, dlerror());
        exit(1);
    }
    return f;
}

int main(int argc, char **argv)
{
    if (argc < 7) {
        fprintf(stderr, "usage: ab LIB_A LIB_B ROWS ROWLEN fwd|bwd THREADS [DIM [f32|f64|bf16]]\n");
        return 2;
    }
    const run_fn fn[2] = {load(argv[1]), load(argv[2])};
    const int64_t R = atoll(argv[3]), N = atoll(argv[4]);
    const int bwd = strcmp(argv[5], "bwd") == 0, nth = atoi(argv[6]);
    const int dim = argc > 7 ? atoi(argv[7]) : 0;
    const char *dt = argc > 8 ? argv[8] : "f32";
    const int dtype = !strcmp(dt, "f64") ? WN_F64 : !strcmp(dt, "bf16") ? WN_BF16 : WN_F32;
    if (R < 1 || N < 1 || nth < 1 || (dim != 0 && dim != 1) ||
        (dtype == WN_F32 && strcmp(dt, "f32"))) {
        fprintf(stderr, "ab: ROWS, ROWLEN, THREADS >= 1; DIM 0 or 1; DTYPE f32, f64 or bf16\n");
        return 2;
    }
    const int64_t size = R * N, nk = dim ? N : R;
    /* element and norm sizes (norms are float32 for bfloat16) */
    const size_t isz = dtype == WN_F64 ? 8 : dtype == WN_BF16 ? 2 : 4;
    const size_t nsz = dtype == WN_F64 ? 8 : 4;
    void *v = xalloc(isz * size), *gw = xalloc(isz * size), *g = xalloc(isz * nk);
    void *out[2], *nrm[2], *gg[2];
    for (int b = 0; b < 2; b++) {
        out[b] = xalloc(isz * size);
        nrm[b] = xalloc(nsz * nk);
        gg[b] = xalloc(isz * nk);
    }
    srand(1);
    for (int64_t i = 0; i < size; i++) {
        put(v, dtype, i, rand() / (float)RAND_MAX - 0.5f);
        put(gw, dtype, i, rand() / (float)RAND_MAX - 0.5f);
    }
    for (int64_t i = 0; i < nk; i++) put(g, dtype, i, 1.0f + (float)(i % 7));

    /* dim 0: rows of N contiguous elements; dim 1: N columns kept (stride
     * 1), R reduced steps of stride N */
    int64_t kshape[1] = {nk}, rshape[1] = {dim ? R : N};
    int64_t kstride[1] = {dim ? 1 : N}, rstride[1] = {dim ? N : 1};
    const wn_layout L = {nk, dim ? R : N, 1, 1, kshape, rshape,
                         {kstride, kstride, kstride}, {rstride, rstride, rstride}};
    wn_call c[2];
    for (int b = 0; b < 2; b++) {
        memset(&c[b], 0, sizeof c[b]);
        c[b].dtype = dtype;
        c[b].layout = &L;
        c[b].v = v;
        c[b].g = g;
        c[b].g_stride = 1;
        c[b].norms_stride = 1;
        c[b].op = WN_FORWARD;
        c[b].w = out[b];
        c[b].norms_out = nrm[b];
        if (fn[b](&c[b], 1, nth)) return 1;
        if (bwd) {        /* from this build's own norms (they agree: checked below) */
            c[b].op = WN_BACKWARD;
            c[b].grad_w = gw;
            c[b].norms = nrm[0];
            c[b].grad_v = out[b];
            c[b].grad_g = gg[b];
            c[b].w = NULL;
            c[b].norms_out = NULL;
        }
    }
    const int same_norms = memcmp(nrm[0], nrm[1], nsz * nk) == 0;
    /* calls per sample: about 20 ms */
    int reps = 0;
    for (double t0 = now(); now() - t0 < 0.02; reps++) fn[0](&c[0], 1, nth);
    if (reps < 1) reps = 1;
    double t[2][ROUNDS], ratio[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        for (int s = 0; s < 2; s++) {
            const int b = s ^ (r & 1);            /* A B, then B A, ... */
            const double t0 = now();
            for (int k = 0; k < reps; k++) fn[b](&c[b], 1, nth);
            t[b][r] = (now() - t0) / reps * 1e6;
        }
        ratio[r] = t[0][r] / t[1][r];
    }
    const int same = same_norms && memcmp(out[0], out[1], isz * size) == 0 &&
                     (!bwd || memcmp(gg[0], gg[1], isz * nk) == 0);
    for (int b = 0; b < 2; b++) qsort(t[b], ROUNDS, sizeof(double), cmp_double);
    qsort(ratio, ROUNDS, sizeof(double), cmp_double);
    printf("%lldx%lld %s dim=%d %s threads=%d: A median %.2f min %.2f us | "
           "B median %.2f min %.2f us | A/B %.3f (quartiles %.3f %.3f) | bits %s\n",
           (long long)R, (long long)N, dt, dim, bwd ? "bwd" : "fwd", nth, t[0][ROUNDS / 2],
           t[0][0], t[1][ROUNDS / 2], t[1][0], ratio[ROUNDS / 2], ratio[ROUNDS / 4],
           ratio[3 * ROUNDS / 4], same ? "same" : "DIFFER");
    return same ? 0 : 3;
}
