/* gemm.h - the one door to BLAS (only core/gemm.c includes cblas.h).
 *
 * Row-major everywhere. core_gemm_nt computes C = alpha * A * B^T + beta * C with
 * A: (m, k), B: (n, k), C: (m, n) - the shape of a linear layer applied to a batch of
 * rows (x: (T, in), W: (out, in) -> y: (T, out)). core_gemm_nn takes B as (k, n).
 * Threads: callable from any thread; BLAS threading is set once by core_gemm_init. */
#ifndef CORE_GEMM_H
#define CORE_GEMM_H

#include <stddef.h>

void core_gemm_init(int n_threads);
void core_gemm_nt(float *C, const float *A, const float *B, size_t m, size_t n, size_t k,
                  float alpha, float beta);
void core_gemm_nn(float *C, const float *A, const float *B, size_t m, size_t n, size_t k,
                  float alpha, float beta);

#endif
