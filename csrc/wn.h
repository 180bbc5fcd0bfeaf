/*
 * wnkernels: fused Weight Normalization kernels for the CPU.
 *
 * For each row k (one per kept index):
 *     norm_k   = sqrt(sum_i v_i^2 + eps)
 *     w_i      = v_i * (g_k / norm_k)
 *     grad_g_k = sum_i grad_w_i * v_i / norm_k
 *     grad_v_i = (g_k / norm_k) * grad_w_i - (g_k * grad_g_k / norm_k^2) * v_i
 *
 * A call describes its arrays as `nrows` rows of `rowlen` elements through a
 * wn_layout (the Python front end builds one from any shape, dim and strides;
 * a C caller can fill one by hand).  A table of calls -- one, or a whole
 * model's weights -- runs in one parallel region (wn_run).  Kernels never
 * validate: the caller has checked shapes, dtypes and overlap.
 *
 * Summation order depends only on each call's layout, never on the thread
 * count, the other calls of the table or the instruction set, so results are
 * bitwise identical however a table is split across threads.
 */
#ifndef WN_H
#define WN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element types.  Half types are stored as 16-bit patterns (uint16). */
enum wn_dtype { WN_F16 = 0, WN_BF16 = 1, WN_F32 = 2, WN_F64 = 3, WN_NDTYPES = 4 };

/* Operations. */
enum wn_op {
    WN_FORWARD = 0,     /* norms, w = v * (g / norm)                        */
    WN_BACKWARD = 1,    /* grad_g, grad_v, from the given norms             */
    WN_ROW_SCALE = 2    /* norms, scale = g / norm; v read once, no w       */
};

/* Most dims (after coalescing) the kernels walk, and arrays per layout. */
#define WN_MAXDIM 64
#define WN_MAXARR 3

/*
 * Rows x reduced elements.  kept_* and red_* are coalesced dims, outer to
 * inner; strides are signed and in elements, one set per array:
 *   forward / row scale:  array 0 = v,  array 1 = w (row scale: unused)
 *   backward:             array 0 = v,  array 1 = grad_w,  array 2 = grad_v
 * Row r is the C-order flat index over kept_shape; g, norms, grad_g and
 * scale are indexed by r.  kept_ndim == 0 means one row; red_ndim == 0
 * means rowlen 1.  The shape and stride arrays belong to the caller and
 * must outlive the call.
 */
typedef struct {
    int64_t nrows;
    int64_t rowlen;
    int32_t kept_ndim;
    int32_t red_ndim;
    const int64_t *kept_shape;               /* [kept_ndim] */
    const int64_t *red_shape;                /* [red_ndim]  */
    const int64_t *kept_stride[WN_MAXARR];   /* per array, [kept_ndim] */
    const int64_t *red_stride[WN_MAXARR];    /* per array, [red_ndim]  */
} wn_layout;

/*
 * One call.  Pointers are to (row 0, element 0) of each layout array.  g is
 * read at g[r * g_stride], the backward's norms at norms[r * norms_stride];
 * norms_out (norm dtype: float32 for half types, else the element type),
 * grad_g and scale (element type) are written contiguously.  w may be v
 * itself (in place).  Unused pointers are NULL.
 */
typedef struct {
    int32_t op;                  /* enum wn_op    */
    int32_t dtype;               /* enum wn_dtype */
    const wn_layout *layout;
    const void *v;
    const void *grad_w;          /* backward */
    const void *g;
    int64_t g_stride;
    const void *norms;           /* backward: the forward's norms */
    int64_t norms_stride;
    double eps;                  /* forward, row scale */
    void *w;                     /* forward */
    void *grad_v;                /* backward */
    void *norms_out;             /* forward, row scale */
    void *grad_g;                /* backward */
    void *scale;                 /* row scale */
} wn_call;

/*
 * Run every call of the table with up to `nthreads` threads, in one parallel
 * region: rows (or column blocks) of all calls are shared out by bytes, and
 * calls whose rows must be split across threads (few long rows, long
 * column reductions) are worked on by the whole team.  Returns 0, or -1 if
 * a scratch allocation failed (nothing is then written for the calls that
 * needed it; callers treat it as out of memory).
 */
int wn_run(const wn_call *calls, int64_t ncalls, int nthreads);

/* Same-size rooflines, all threads: dst = src; a = b * s + c. */
void wn_roofline_copy(void *dst, const void *src, int64_t nbytes, int nthreads);
void wn_roofline_triad_f32(float *a, const float *b, float s, const float *c,
                           int64_t n, int nthreads);
void wn_roofline_triad_f64(double *a, const double *b, double s,
                           const double *c, int64_t n, int nthreads);

/* The instruction set the kernels dispatched to ("avx512", "avx2", "baseline"). */
const char *wn_isa(void);
/* Whether the library was built with OpenMP. */
int wn_have_openmp(void);
/* 1 in a process forked after the kernels had started OpenMP threads: it
 * runs every kernel on the calling thread (libgomp cannot cross a fork). */
int wn_threads_lost_to_fork(void);
/* Output size (bytes) above which contiguous outputs use streaming stores. */
void wn_set_stream_threshold(int64_t nbytes);
int64_t wn_get_stream_threshold(void);
/* Column strategy: bytes of each input a column block keeps cached between
 * its two passes (tuning knob; results do not depend on it). */
void wn_set_col_budget(int64_t nbytes);
int64_t wn_get_col_budget(void);

#ifdef __cplusplus
}
#endif
#endif /* WN_H */
