/* test_gemm.c - core_gemm_nt's kernel and BLAS paths against a naive double-precision
 * product, BLAS semantics of alpha/beta (beta 0 never reads C), the masked k tail at a
 * page boundary, and the thread pool's chunking and busy fallback. */
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/gemm.h"
#include "core/pool.h"
#include "tests/unit/harness.h"

static uint32_t rng_state = 12345;

static float frand(void)
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)((rng_state >> 8) & 0xFFFF) / 32768.0f - 1.0f;
}

static void fill(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = frand();
}

/* C (m, n) must equal alpha A B^T + beta C0 (beta 0: C0 ignored) within float rounding:
 * the error bound scales with sum |alpha a b| + |beta c0|. Returns 1 when it matches. */
static int check_nt(const float *C, const float *A, const float *B, const float *C0, size_t m,
                    size_t n, size_t k, float alpha, float beta, int b_trans)
{
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double s = 0.0, mag = 0.0;
            for (size_t t = 0; t < k; t++) {
                double b = b_trans ? B[j * k + t] : B[t * n + j];
                s += (double)A[i * k + t] * b;
                mag += fabs((double)A[i * k + t] * b);
            }
            double want = (double)alpha * s, bound = fabs((double)alpha) * mag;
            if (beta != 0.0f) {
                want += (double)beta * C0[i * n + j];
                bound += fabs((double)beta * C0[i * n + j]);
            }
            double got = C[i * n + j];
            if (!(fabs(got - want) <= 2e-6 * bound + 1e-30)) {
                fprintf(stderr, "m=%zu n=%zu k=%zu alpha=%g beta=%g C[%zu][%zu] = %.9g, want %.9g\n",
                        m, n, k, alpha, beta, i, j, got, want);
                return 0;
            }
        }
    return 1;
}

/* Every shape of a small grid on one path, unaligned pointers (offset by one float). */
static void grid(core_gemm_path_t path, size_t m_max)
{
    static const size_t ns[] = {1, 2, 3, 5, 7, 13, 34};
    static const size_t ks[] = {1, 3, 7, 8, 9, 15, 16, 17, 31, 64, 100, 257};
    static const float ab[][2] = {{1.0f, 0.0f}, {0.5f, 0.0f}, {1.5f, 1.0f}, {-2.0f, 0.25f}};
    size_t cap = (m_max > 34 ? m_max : 34) * 257 + 2; /* largest (rows, k) + offset */
    float *A = malloc(cap * sizeof *A), *B = malloc(cap * sizeof *B);
    float *C = malloc(cap * sizeof *C), *C0 = malloc(cap * sizeof *C0);
    ASSERT(A && B && C && C0);
    for (size_t m = 1; m <= m_max; m++)
        for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
            for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++)
                for (size_t a = 0; a < sizeof ab / sizeof *ab; a++) {
                    size_t n = ns[ni], k = ks[ki];
                    float alpha = ab[a][0], beta = ab[a][1];
                    fill(A + 1, m * k);
                    fill(B + 1, n * k);
                    fill(C0, m * n);
                    for (size_t i = 0; i < m * n; i++) /* beta 0: garbage must not leak */
                        C[1 + i] = beta == 0.0f ? NAN : C0[i];
                    core_gemm_nt_path(path, C + 1, A + 1, B + 1, m, n, k, alpha, beta);
                    ASSERT(check_nt(C + 1, A + 1, B + 1, C0, m, n, k, alpha, beta, 1));
                }
    free(A);
    free(B);
    free(C);
    free(C0);
}

TEST(kernel_matches_naive_grid)
{
    if (!core_gemm_kernel_available()) {
        fprintf(stderr, "# no AVX2/FMA: kernel path falls back to BLAS\n");
    }
    grid(CORE_GEMM_KERNEL, 40);
}

TEST(blas_matches_naive_grid)
{
    grid(CORE_GEMM_BLAS, 9);
}

TEST(auto_matches_naive_around_threshold)
{
    size_t ms[] = {CORE_GEMM_KERNEL_MAX_M - 1, CORE_GEMM_KERNEL_MAX_M,
                   CORE_GEMM_KERNEL_MAX_M + 1};
    for (size_t t = 0; t < 3; t++) {
        size_t m = ms[t], n = 37, k = 45;
        float *A = malloc(m * k * 4), *B = malloc(n * k * 4), *C = malloc(m * n * 4);
        float *C0 = malloc(m * n * 4);
        fill(A, m * k);
        fill(B, n * k);
        fill(C0, m * n);
        memcpy(C, C0, m * n * 4);
        core_gemm_nt(C, A, B, m, n, k, 0.75f, -0.5f);
        ASSERT(check_nt(C, A, B, C0, m, n, k, 0.75f, -0.5f, 1));
        free(A), free(B), free(C), free(C0);
    }
}

/* Large enough to be split over the pool (and over k-chunks and row panels). */
static void threaded_case(size_t m, size_t n, size_t k, float alpha, float beta)
{
    float *A = malloc(m * k * 4), *B = malloc(n * k * 4), *C0 = malloc(m * n * 4);
    float *Ck = malloc(m * n * 4), *Cb = malloc(m * n * 4);
    ASSERT(A && B && C0 && Ck && Cb);
    fill(A, m * k);
    fill(B, n * k);
    fill(C0, m * n);
    for (size_t i = 0; i < m * n; i++) {
        Ck[i] = beta == 0.0f ? NAN : C0[i];
        Cb[i] = Ck[i];
    }
    core_gemm_nt_path(CORE_GEMM_KERNEL, Ck, A, B, m, n, k, alpha, beta);
    core_gemm_nt_path(CORE_GEMM_BLAS, Cb, A, B, m, n, k, alpha, beta);
    ASSERT(check_nt(Ck, A, B, C0, m, n, k, alpha, beta, 1));
    ASSERT(check_nt(Cb, A, B, C0, m, n, k, alpha, beta, 1));
    /* the two paths agree with each other as closely as with the exact result */
    for (size_t i = 0; i < m * n; i++)
        ASSERT_NEAR(Ck[i], Cb[i], 1e-4 * (1.0 + fabs(Cb[i])));
    free(A), free(B), free(C0), free(Ck), free(Cb);
}

TEST(kernel_and_blas_agree_threaded)
{
    core_gemm_init(2);
    ASSERT(core_pool_n_threads() >= 1);
    threaded_case(1, 1000, 1030, 1.0f, 0.0f);
    threaded_case(5, 777, 2817, 1.0f, 1.0f);
    threaded_case(16, 1024, 1024, 0.5f, 0.0f);
    threaded_case(32, 301, 513, -1.0f, 2.0f);
    threaded_case(70, 129, 200, 1.0f, 0.0f); /* two row panels */
    threaded_case(3, 2816, 16, 2.0f, 1.0f);  /* LoRA expand shape */
    threaded_case(16, 16, 1024, 1.0f, 0.0f); /* LoRA shrink shape */
    core_pool_shutdown();
}

TEST(alpha_zero_reads_neither_a_nor_b)
{
    float A[6] = {NAN, NAN, NAN, NAN, NAN, NAN}, B[6] = {NAN, NAN, NAN, NAN, NAN, NAN};
    float C[4] = {1, 2, 3, 4};
    core_gemm_nt(C, A, B, 2, 2, 3, 0.0f, 2.0f);
    ASSERT_NEAR(C[0], 2.0, 0);
    ASSERT_NEAR(C[3], 8.0, 0);
    C[1] = NAN;
    core_gemm_nt(C, A, B, 2, 2, 3, 0.0f, 0.0f);
    ASSERT_NEAR(C[1], 0.0, 0);
}

/* B's last row ends at a page followed by an inaccessible page: the masked k tail must not
 * load past it (k not a multiple of 8; n >= 8 takes the short-row path). A likewise. */
TEST(k_tail_never_reads_past_the_end)
{
    static const size_t shapes[][3] = {{3, 5, 13}, {2, 9, 13}, {5, 16, 20}, {1, 2, 1030}};
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *map = mmap(NULL, 8 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT(map != MAP_FAILED);
    ASSERT(mprotect(map + 3 * page, page, PROT_NONE) == 0);
    ASSERT(mprotect(map + 7 * page, page, PROT_NONE) == 0);
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        size_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        float *B = (float *)(map + 3 * page) - n * k; /* ends at the first guard page */
        float *A = (float *)(map + 7 * page) - m * k; /* ends at the second */
        float C[128], C0[128] = {0};
        fill(A, m * k);
        fill(B, n * k);
        core_gemm_nt_path(CORE_GEMM_KERNEL, C, A, B, m, n, k, 1.0f, 0.0f);
        ASSERT(check_nt(C, A, B, C0, m, n, k, 1.0f, 0.0f, 1));
    }
    munmap(map, 8 * page);
}

TEST(gemm_nn_matches_naive)
{
    core_gemm_init(2);
    size_t m = 7, n = 300, k = 65;
    float *A = malloc(m * k * 4), *B = malloc(k * n * 4), *C = malloc(m * n * 4);
    float *C0 = malloc(m * n * 4);
    fill(A, m * k);
    fill(B, k * n);
    fill(C0, m * n);
    memcpy(C, C0, m * n * 4);
    core_gemm_nn(C, A, B, m, n, k, 1.0f, 0.5f);
    ASSERT(check_nt(C, A, B, C0, m, n, k, 1.0f, 0.5f, 0));
    free(A), free(B), free(C), free(C0);
    core_pool_shutdown();
}

/* ---- pool ---------------------------------------------------------------------- */

typedef struct {
    int hits[1000];
    size_t grain;
    int misaligned;
} cover_t;

static void on_cover(void *arg, size_t b, size_t e)
{
    cover_t *c = arg;
    if (b % c->grain)
        __atomic_store_n(&c->misaligned, 1, __ATOMIC_RELAXED);
    for (size_t i = b; i < e; i++)
        __atomic_fetch_add(&c->hits[i], 1, __ATOMIC_RELAXED);
}

TEST(pool_covers_range_once_on_grain_bounds)
{
    core_pool_init(3);
    ASSERT_EQ(core_pool_n_threads(), 3);
    size_t sizes[] = {1, 2, 7, 8, 9, 100, 999, 1000};
    size_t grains[] = {1, 4, 8, 64};
    for (size_t s = 0; s < 8; s++)
        for (size_t g = 0; g < 4; g++) {
            static cover_t c;
            memset(&c, 0, sizeof c);
            c.grain = grains[g];
            for (int rep = 0; rep < 50; rep++)
                core_pool_for(sizes[s], grains[g], on_cover, &c);
            ASSERT_EQ(c.misaligned, 0);
            for (size_t i = 0; i < 1000; i++)
                ASSERT_EQ(c.hits[i], i < sizes[s] ? 50 : 0);
        }
    core_pool_for(0, 1, on_cover, NULL); /* n == 0 calls nothing */
    core_pool_shutdown();
    ASSERT_EQ(core_pool_n_threads(), 1);
}

static void on_nested(void *arg, size_t b, size_t e)
{
    cover_t *c = arg;
    for (size_t i = b; i < e; i++)
        core_pool_for(1, 1, on_cover, c); /* pool busy: runs inline, no deadlock */
    (void)c;
}

TEST(pool_nested_call_runs_inline)
{
    core_pool_init(2);
    static cover_t c;
    memset(&c, 0, sizeof c);
    c.grain = 1;
    core_pool_for(64, 1, on_nested, &c);
    ASSERT_EQ(c.hits[0], 64);
    core_pool_shutdown();
}

static void *concurrent_main(void *arg)
{
    (void)arg;
    size_t m = 4, n = 500, k = 300;
    float *A = malloc(m * k * 4), *B = malloc(n * k * 4), *C = malloc(m * n * 4);
    float C0[1] = {0};
    int ok = 1;
    for (size_t i = 0; i < m * k; i++)
        A[i] = (float)(i % 7) - 3.0f;
    for (size_t i = 0; i < n * k; i++)
        B[i] = (float)(i % 5) - 2.0f;
    for (int rep = 0; rep < 50 && ok; rep++) {
        core_gemm_nt(C, A, B, m, n, k, 1.0f, 0.0f);
        ok = check_nt(C, A, B, C0, m, n, k, 1.0f, 0.0f, 1);
    }
    free(A), free(B), free(C);
    return (void *)(intptr_t)ok;
}

TEST(gemm_from_two_threads_at_once)
{
    core_gemm_init(2);
    pthread_t t[2];
    void *r0, *r1;
    ASSERT(pthread_create(&t[0], NULL, concurrent_main, NULL) == 0);
    ASSERT(pthread_create(&t[1], NULL, concurrent_main, NULL) == 0);
    pthread_join(t[0], &r0);
    pthread_join(t[1], &r1);
    ASSERT(r0 == (void *)1 && r1 == (void *)1);
    core_pool_shutdown();
}
