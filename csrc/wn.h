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
 * wn_layout (built by the Python front end from any shape, dim and strides).
 * Kernels never validate: the front end has checked shapes, dtypes, overlap.
 *
 * Summation order depends only on the layout, never on the thread count, so
 * results are bitwise identical for any number of threads.
 */
#ifndef WN_H
#define WN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element types.  Half types are stored as 16-bit patterns (uint16). */
enum wn_dtype { WN_F16 = 0, WN_BF16 = 1, WN_F32 = 2, WN_F64 = 3 };

#define WN_MAXDIM 64
#define WN_MAXARR 3

/*
 * Rows x reduced elements.  kept_* and red_* are coalesced dims, outer to
 * inner; strides are signed and in elements, one set per array:
 *   forward:  array 0 = v,      array 1 = w
 *   backward: array 0 = v,      array 1 = grad_w,   array 2 = grad_v
 * Row r is the C-order flat index over kept_shape; g, norms and grad_g are
 * indexed by r.  kept_ndim == 0 means one row; red_ndim == 0 means rowlen 1.
 */
typedef struct {
    int64_t nrows;
    int64_t rowlen;
    int kept_ndim;
    int red_ndim;
    int64_t kept_shape[WN_MAXDIM];
    int64_t red_shape[WN_MAXDIM];
    int64_t kept_stride[WN_MAXARR][WN_MAXDIM];
    int64_t red_stride[WN_MAXARR][WN_MAXDIM];
} wn_layout;

/*
 * Forward.  g is read at g[r * g_stride]; norms (float32 for half types,
 * else the element type) is written contiguously.  w may be v itself.
 */
void wn_forward(int dtype, const wn_layout *L, const void *v, const void *g,
                int64_t g_stride, void *w, void *norms, double eps,
                int nthreads);

/*
 * Backward.  norms is read at norms[r * norms_stride] (its dtype as the
 * forward returns it); grad_g (element type) is written contiguously.
 */
void wn_backward(int dtype, const wn_layout *L, const void *grad_w,
                 const void *v, const void *g, int64_t g_stride,
                 const void *norms, int64_t norms_stride, void *grad_v,
                 void *grad_g, int nthreads);

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
