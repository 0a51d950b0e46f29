/* gemm.h - the one door to BLAS (only core/gemm.c includes cblas.h).
 *
 * Row-major everywhere. core_gemm_nt computes C = alpha * A * B^T + beta * C with
 * A: (m, k), B: (n, k), C: (m, n) - the shape of a linear layer applied to a batch of
 * rows (x: (T, in), W: (out, in) -> y: (T, out)). core_gemm_nn takes B as (k, n).
 * As in BLAS, beta == 0 means C's old contents are never read (they may be garbage/NaN),
 * and alpha == 0 means A and B are not read.
 *
 * Paths: for few rows (m <= CORE_GEMM_KERNEL_MAX_M: decode steps, LoRA shrink/expand) on a
 * CPU with AVX2 and FMA, core_gemm_nt uses our own kernel (core/kernel_avx2.c) that streams
 * each row of B once for all m rows of A - decode is bound by reading the weights, and
 * BLAS sgemm re-reads them or packs them at few rows. Larger m goes to BLAS (prefill).
 * Both paths split n over the compute pool (core/pool.h); products too small to repay a
 * hand-off (a LoRA shrink/expand of a few rows) stay on the calling thread.
 *
 * Threads: core_gemm_init(n) once at start-up, before other calls: it starts the pool of n
 * compute threads (n <= 0: one per online CPU) and makes BLAS single-threaded so the two
 * pools never oversubscribe the cores. Products are callable from any thread; one runs
 * threaded at a time, a concurrent one runs on its caller's thread (pool.h). Without
 * core_gemm_init everything runs on the calling thread except BLAS's own threads. */
#ifndef CORE_GEMM_H
#define CORE_GEMM_H

#include <stdbool.h>
#include <stddef.h>

/* Largest m that takes the few-row kernel under CORE_GEMM_AUTO (tuned: see gemm.c). */
#define CORE_GEMM_KERNEL_MAX_M 32

void core_gemm_init(int n_threads);
void core_gemm_nt(float *C, const float *A, const float *B, size_t m, size_t n, size_t k,
                  float alpha, float beta);
void core_gemm_nn(float *C, const float *A, const float *B, size_t m, size_t n, size_t k,
                  float alpha, float beta);

/* Tests and benchmarks: core_gemm_nt on a forced path (any m). CORE_GEMM_KERNEL falls back
 * to BLAS when the CPU lacks AVX2/FMA (core_gemm_kernel_available says which). */
typedef enum { CORE_GEMM_AUTO, CORE_GEMM_BLAS, CORE_GEMM_KERNEL } core_gemm_path_t;
void core_gemm_nt_path(core_gemm_path_t path, float *C, const float *A, const float *B,
                       size_t m, size_t n, size_t k, float alpha, float beta);
bool core_gemm_kernel_available(void);

#endif
