/* gemm.c - BLAS calls, row-major. The only file that includes cblas.h. */
#include "core/gemm.h"

#include <cblas.h>

/* OpenBLAS exports this; declared here so we need no OpenBLAS-specific header. */
void openblas_set_num_threads(int n);

void core_gemm_init(int n_threads)
{
    if (n_threads > 0)
        openblas_set_num_threads(n_threads);
}

void core_gemm_nt(float *C, const float *A, const float *B, size_t m, size_t n, size_t k,
                  float alpha, float beta)
{
    if (m == 1) {
        /* One row: y = alpha * B x + beta * y is a gemv, which streams B once. */
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)n, (int)k, alpha, B, (int)k, A, 1, beta,
                    C, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)k, alpha, A,
                (int)k, B, (int)k, beta, C, (int)n);
}

void core_gemm_nn(float *C, const float *A, const float *B, size_t m, size_t n, size_t k,
                  float alpha, float beta)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, alpha, A,
                (int)k, B, (int)n, beta, C, (int)n);
}
