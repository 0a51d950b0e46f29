/* gemm.c - shape dispatch between our few-row kernel and BLAS, threaded over the pool.
 * The only file that includes cblas.h.
 *
 * BLAS runs single-threaded inside each pool thread (core_gemm_init), on a slice of
 * columns of C (rows of B), so there is one set of compute threads, not two competing
 * ones: OpenBLAS's idle threads spin for a long time after each call, which would steal a
 * core from our pool in steps that mix prefill (BLAS) with LoRA products (kernel). */
#include "core/gemm.h"

#include <cblas.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/pool.h"

/* OpenBLAS exports this; declared here so we need no OpenBLAS-specific header. */
void openblas_set_num_threads(int n);

/* core/kernel_avx2.c (compiled with -mavx2 -mfma; only called when the CPU has both). */
size_t core__kernel_pack_floats(size_t m, size_t k);
void core__kernel_pack(float *dst, const float *A, size_t lda, size_t m, size_t k);
void core__kernel_nt_avx2(float *C, size_t ldc, const float *Ap, const float *B, size_t ldb,
                          size_t m, size_t j0, size_t j1, size_t k, float alpha, float beta);

/* A product runs on the calling thread unless B is large (a memory-bound few-row product
 * wants both cores' bandwidth) or the arithmetic is: a hand-off to the pool costs ~1 us
 * when the worker is spinning on its own core, but tens of us to milliseconds when it
 * sleeps or shares a core with another process, and a LoRA shrink/expand (B of rank x
 * width floats, even for a 16-row segment) is only ~10-50 us of work. Measured with
 * bench_batch: threading everything made 16 distinct adapters 6x slower, threading above
 * 96K MACs made a shared 16-row composition 1.5x slower than these thresholds. */
#ifndef SERIAL_WEIGHTS
#define SERIAL_WEIGHTS ((size_t)256 * 1024) /* floats of B (1 MB) */
#endif
#ifndef SERIAL_MACS
#define SERIAL_MACS ((size_t)2 * 1024 * 1024)
#endif
/* Columns per pool grain: a multiple of the kernel's block width (4). */
#define GRAIN_KERNEL 8
#define GRAIN_BLAS 64

static atomic_int g_kernel_ok = -1; /* -1 unknown, else 0/1 */

/* Packed copy of A for the kernel, one per calling thread, grown (never per call once
 * warm) and freed at thread exit through the key's destructor. */
static pthread_once_t g_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t g_key;
static _Thread_local float *t_pack;
static _Thread_local size_t t_pack_cap;

static void key_make(void)
{
    pthread_key_create(&g_key, free);
}

static float *pack_buf(size_t n)
{
    if (n <= t_pack_cap)
        return t_pack;
    float *p = aligned_alloc(32, (n * sizeof(float) + 31) & ~(size_t)31);
    if (!p)
        return NULL;
    free(t_pack);
    t_pack = p;
    t_pack_cap = n;
    pthread_once(&g_key_once, key_make);
    pthread_setspecific(g_key, p);
    return p;
}

bool core_gemm_kernel_available(void)
{
    int ok = atomic_load(&g_kernel_ok);
    if (ok < 0) {
        __builtin_cpu_init();
        ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        atomic_store(&g_kernel_ok, ok);
    }
    return ok;
}

void core_gemm_init(int n_threads)
{
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    openblas_set_num_threads(1);
    core_pool_init(n_threads);
    (void)core_gemm_kernel_available();
}

typedef struct {
    float *C;
    const float *A, *B; /* A packed for the kernel */
    size_t m, n, k;
    float alpha, beta;
    bool b_trans; /* nt: B is (n, k); nn: B is (k, n) */
} job_t;

static void kernel_cols(void *arg, size_t j0, size_t j1)
{
    const job_t *j = arg;
    core__kernel_nt_avx2(j->C, j->n, j->A, j->B, j->k, j->m, j0, j1, j->k, j->alpha, j->beta);
}

static void blas_cols(void *arg, size_t j0, size_t j1)
{
    const job_t *j = arg;
    int m = (int)j->m, nc = (int)(j1 - j0), k = (int)j->k, n = (int)j->n;
    if (j->b_trans)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nc, k, j->alpha, j->A, k,
                    j->B + j0 * j->k, k, j->beta, j->C + j0, n);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, nc, k, j->alpha, j->A, k,
                    j->B + j0, n, j->beta, j->C + j0, n);
}

/* alpha == 0 (or k == 0): C = beta C without reading A or B; beta 0 writes zeros. */
static void scale_only(float *C, size_t m, size_t n, float beta)
{
    for (size_t i = 0; i < m * n; i++)
        C[i] = beta == 0.0f ? 0.0f : beta * C[i];
}

static void run(const job_t *j, core_pool_fn fn, size_t grain)
{
    if (j->n * j->k < SERIAL_WEIGHTS && j->m * j->n * j->k < SERIAL_MACS)
        fn((void *)j, 0, j->n);
    else
        core_pool_for(j->n, grain, fn, (void *)j);
}

void core_gemm_nt_path(core_gemm_path_t path, float *C, const float *A, const float *B,
                       size_t m, size_t n, size_t k, float alpha, float beta)
{
    if (m == 0 || n == 0)
        return;
    if (alpha == 0.0f || k == 0) {
        scale_only(C, m, n, beta);
        return;
    }
    job_t j = {C, A, B, m, n, k, alpha, beta, true};
    bool kernel = path == CORE_GEMM_KERNEL ||
                  (path == CORE_GEMM_AUTO && m <= CORE_GEMM_KERNEL_MAX_M);
    float *packed = NULL;
    if (kernel && core_gemm_kernel_available())
        packed = pack_buf(core__kernel_pack_floats(m, k));
    if (!packed) { /* BLAS path, or no memory for the packed copy */
        run(&j, blas_cols, GRAIN_BLAS);
        return;
    }
    core__kernel_pack(packed, A, k, m, k);
    j.A = packed;
    run(&j, kernel_cols, GRAIN_KERNEL);
}

void core_gemm_nt(float *C, const float *A, const float *B, size_t m, size_t n, size_t k,
                  float alpha, float beta)
{
    core_gemm_nt_path(CORE_GEMM_AUTO, C, A, B, m, n, k, alpha, beta);
}

void core_gemm_nn(float *C, const float *A, const float *B, size_t m, size_t n, size_t k,
                  float alpha, float beta)
{
    if (m == 0 || n == 0)
        return;
    if (alpha == 0.0f || k == 0) {
        scale_only(C, m, n, beta);
        return;
    }
    job_t j = {C, A, B, m, n, k, alpha, beta, false};
    run(&j, blas_cols, GRAIN_BLAS);
}
