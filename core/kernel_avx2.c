/* kernel_avx2.c - the few-row product C = alpha A B^T + beta C with AVX2/FMA.
 *
 * Decode multiplies a handful of activation rows A (m, k) by a weight matrix B (n, k) that
 * is far larger than the caches, so the cost is reading B once (m = 1) or the multiply-adds
 * (m = 16: ~5 GFLOP per step of the bench model). This kernel streams B in blocks of NB rows
 * (3, or 4 when m <= 2) and multiplies each block, one k-chunk of KC floats at a time while
 * it sits in L1, by every row of A. A is packed first (gemm.c, once per call): rows of a
 * 1024-float chunk 4 KB apart would share L1 sets and evict each other. Register tile: MB
 * (<= 4) rows of A x NB rows of B, one 8-wide accumulator each (4x3: 12 FMAs per 7 loads,
 * no spills), reduced once per output at the end. Short rows (k <= 32: a LoRA expand) take
 * a path that reduces 8 outputs together. Any m, n, k; unaligned pointers; the k tail of B
 * uses masked loads, which never touch memory past the end of a row.
 *
 * Built alone with -mavx2 -mfma (Makefile); gemm.c calls it only after checking the CPU.
 * Called on a column range [j0, j1) so the thread pool can split n. Never allocates.
 * Threads: reentrant; no shared state. */
#include "core/gemm.h"

#include <immintrin.h>
#include <stdint.h>

#include "core/avx2_util.h"

/* Internal entry points (declared in gemm.c). A is packed first (core__kernel_pack into
 * core__kernel_pack_floats(m, k) floats): per panel of up to PANEL_M rows, per k-chunk, the
 * panel's rows contiguous and zero-padded to a multiple of 8. Unpacked, rows of A that are
 * a multiple of 4 KB apart (k = 1024) all map to the same L1 sets and evict each other. */
size_t core__kernel_pack_floats(size_t m, size_t k);
void core__kernel_pack(float *dst, const float *A, size_t lda, size_t m, size_t k);
void core__kernel_nt_avx2(float *C, size_t ldc, const float *Ap, const float *B, size_t ldb,
                          size_t m, size_t j0, size_t j1, size_t k, float alpha, float beta);

#define MB_MAX 4
#define NB_MAX 4
/* Rows of A whose k-chunk partial sums we keep at once; the kernel loops over panels. */
#define PANEL_M 64
#ifndef NB_WIDE
#define NB_WIDE 3
#endif

typedef struct {
    const float *A, *B; /* packed A at row i0, B at row j, both at the chunk's start */
    size_t lda, ldb;    /* lda: the chunk's padded length */
    size_t len;         /* floats in this chunk */
    __m256i tail;       /* lanes < len % 8 set (used when len % 8 != 0) */
    int first;          /* first chunk: accumulators start at zero */
} chunk_t;

/* acc[i*NB + j] += A_i . B_j over one k-chunk, MB x NB accumulators in registers. */
static inline __attribute__((always_inline)) void tile(const chunk_t *c, __m256 *acc,
                                                       const int MB, const int NB)
{
    __m256 r[MB_MAX][NB_MAX];
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NB; j++)
            r[i][j] = c->first ? _mm256_setzero_ps() : acc[i * NB + j];
    size_t kk = 0;
    for (; kk + 8 <= c->len; kk += 8) {
        __m256 b[NB_MAX];
#pragma GCC unroll 4
        for (int j = 0; j < NB; j++)
            b[j] = _mm256_loadu_ps(c->B + (size_t)j * c->ldb + kk);
#pragma GCC unroll 4
        for (int i = 0; i < MB; i++) {
            __m256 a = _mm256_loadu_ps(c->A + (size_t)i * c->lda + kk);
            /* keep a in a register: GCC would otherwise fold the load into every FMA and
             * the loop would issue more loads than FMAs (load-port bound) */
            __asm__("" : "+x"(a));
#pragma GCC unroll 4
            for (int j = 0; j < NB; j++)
                r[i][j] = _mm256_fmadd_ps(a, b[j], r[i][j]);
        }
    }
    if (kk < c->len) {
        __m256 b[NB_MAX];
#pragma GCC unroll 4
        for (int j = 0; j < NB; j++)
            b[j] = _mm256_maskload_ps(c->B + (size_t)j * c->ldb + kk, c->tail);
#pragma GCC unroll 4
        for (int i = 0; i < MB; i++) {
            __m256 a = _mm256_loadu_ps(c->A + (size_t)i * c->lda + kk); /* zero-padded */
#pragma GCC unroll 4
            for (int j = 0; j < NB; j++)
                r[i][j] = _mm256_fmadd_ps(a, b[j], r[i][j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NB; j++)
            acc[i * NB + j] = r[i][j];
}

/* One instantiation per tile shape, so each keeps its accumulators in registers. */
#define TILE_FN(MB, NB)                                                                  \
    static void tile_##MB##x##NB(const chunk_t *c, __m256 *acc)                          \
    {                                                                                    \
        tile(c, acc, MB, NB);                                                            \
    }
TILE_FN(1, 2)
TILE_FN(2, 2)
TILE_FN(3, 2)
TILE_FN(4, 2)
TILE_FN(1, 4)
TILE_FN(2, 4)
TILE_FN(1, 3)
TILE_FN(2, 3)
TILE_FN(3, 3)
TILE_FN(4, 3)
TILE_FN(1, 1)
TILE_FN(2, 1)
TILE_FN(3, 1)
TILE_FN(4, 1)

typedef void (*tile_fn)(const chunk_t *c, __m256 *acc);

/* [mb-1][nb-1]; 3x4 and 4x4 never occur (NB 4 only for m <= 2). */
static const tile_fn TILES[MB_MAX][NB_MAX] = {
    {tile_1x1, tile_1x2, tile_1x3, tile_1x4},
    {tile_2x1, tile_2x2, tile_2x3, tile_2x4},
    {tile_3x1, tile_3x2, tile_3x3, 0},
    {tile_4x1, tile_4x2, tile_4x3, 0},
};

/* Row-tile height for the next rows: 4s, and a remainder of 3, 2 or 1 (never 4+1 = 1
 * wasted-ish tile when 3+2 is available). With NB 4 the tile is at most 2 rows high so
 * it fits the 16 ymm registers. */
static int next_mb(size_t left, int nb)
{
    int cap = nb == 4 ? 2 : 4;
    if (left >= (size_t)cap + 2 || left == (size_t)cap)
        return cap;
    if (left == 5) /* 3 + 2 */
        return 3;
    return (int)left < cap ? (int)left : cap;
}

/* k-chunk length: a tile's 4 rows of packed A and 3 rows of B (7 x 4 KB) stay in L1
 * (32 KB) across the row tiles of a block; longer rows (down_proj, k = 2816) are chunked.
 * Chunks are long so the per-chunk cost (loading/storing the accumulators) is noise. */
#define KC 1024

static size_t round8(size_t x)
{
    return (x + 7) & ~(size_t)7;
}

/* Row stride of a packed chunk: padded to 8 floats, plus one cache line so that rows of a
 * 1024-float chunk are not 4 KB apart (they would all map to the same L1 sets). */
static size_t packed_stride(size_t len)
{
    return round8(len) + 16;
}

/* Floats of one packed panel of pm rows. */
static size_t panel_floats(size_t pm, size_t k)
{
    size_t full = k / KC, rest = k % KC;
    return pm * (full * packed_stride(KC) + (rest ? packed_stride(rest) : 0));
}

size_t core__kernel_pack_floats(size_t m, size_t k)
{
    size_t full = m / PANEL_M, rest = m % PANEL_M;
    return full * panel_floats(PANEL_M, k) + (rest ? panel_floats(rest, k) : 0);
}

void core__kernel_pack(float *dst, const float *A, size_t lda, size_t m, size_t k)
{
    for (size_t i0 = 0; i0 < m; i0 += PANEL_M) {
        size_t pm = m - i0 < PANEL_M ? m - i0 : PANEL_M;
        for (size_t k0 = 0; k0 < k; k0 += KC) {
            size_t len = k - k0 < KC ? k - k0 : KC, ls = packed_stride(len);
            for (size_t i = 0; i < pm; i++, dst += ls) {
                const float *src = A + (i0 + i) * lda + k0;
                for (size_t t = 0; t < ls; t++)
                    dst[t] = t < len ? src[t] : 0.0f;
            }
        }
    }
}

/* C[i][0..nb) for the pm rows of one packed panel against an nb-row block of B, k in
 * chunks of KC: the block's chunk of B stays in L1 for all row tiles, A comes from L2. */
static void block(float *C, size_t ldc, const float *Ap, const float *B, size_t ldb, size_t pm,
                  size_t k, int nb, float alpha, float beta, __m256 *acc)
{
    chunk_t c = {.ldb = ldb};
    for (size_t k0 = 0; k0 < k; k0 += KC) {
        c.len = k - k0 < KC ? k - k0 : KC;
        c.lda = packed_stride(c.len);
        c.tail = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(c.len % 8)),
                                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        c.first = k0 == 0;
        c.B = B + k0;
        for (size_t i = 0; i < pm;) {
            int mb = next_mb(pm - i, nb);
            c.A = Ap + i * c.lda;
            TILES[mb - 1][nb - 1](&c, acc + i * (size_t)nb);
            i += (size_t)mb;
        }
        Ap += pm * c.lda;
    }
    for (size_t i = 0; i < pm; i++)
        for (int j = 0; j < nb; j++) {
            float dot = alpha * core__hsum(acc[i * (size_t)nb + (size_t)j]);
            float *out = C + i * ldc + (size_t)j;
            /* beta 0: C's old contents are not read (they may be NaN), as in BLAS */
            *out = beta == 0.0f ? dot : dot + beta * *out;
        }
}

/* Short rows (k <= SMALL_K: a LoRA expand, k = rank): a per-output horizontal sum would
 * cost more than the dot product, so 8 rows of B are reduced together into one vector of
 * 8 outputs. C[i][0..8) for the pm rows of a packed panel (one k-chunk: k <= KC). */
#define SMALL_K 32
static void block8_small_k(float *C, size_t ldc, const float *Ap, const float *B, size_t ldb,
                           size_t pm, size_t k, float alpha, float beta)
{
    size_t lda = packed_stride(k);
    __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(k % 8)),
                                      _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    for (size_t i = 0; i < pm; i++) {
        const float *a = Ap + i * lda;
        __m256 acc[8];
        for (int j = 0; j < 8; j++)
            acc[j] = _mm256_setzero_ps();
        size_t kk = 0;
        for (; kk + 8 <= k; kk += 8) {
            __m256 x = _mm256_loadu_ps(a + kk);
            for (int j = 0; j < 8; j++)
                acc[j] = _mm256_fmadd_ps(x, _mm256_loadu_ps(B + (size_t)j * ldb + kk), acc[j]);
        }
        if (kk < k) {
            __m256 x = _mm256_loadu_ps(a + kk); /* zero-padded */
            for (int j = 0; j < 8; j++)
                acc[j] = _mm256_fmadd_ps(x, _mm256_maskload_ps(B + (size_t)j * ldb + kk, tail),
                                         acc[j]);
        }
        __m256 r = _mm256_mul_ps(va, core__hsum8x8(acc));
        float *out = C + i * ldc;
        if (beta != 0.0f) /* beta 0: C is not read */
            r = _mm256_fmadd_ps(vb, _mm256_loadu_ps(out), r);
        _mm256_storeu_ps(out, r);
    }
}

void core__kernel_nt_avx2(float *C, size_t ldc, const float *Ap, const float *B, size_t ldb,
                          size_t m, size_t j0, size_t j1, size_t k, float alpha, float beta)
{
    __m256 acc[PANEL_M * NB_MAX];
    if (k <= SMALL_K) {
        for (size_t i0 = 0; i0 < m; i0 += PANEL_M) {
            size_t pm = m - i0 < PANEL_M ? m - i0 : PANEL_M, j = j0;
            for (; j + 8 <= j1; j += 8)
                block8_small_k(C + i0 * ldc + j, ldc, Ap, B + j * ldb, ldb, pm, k, alpha, beta);
            for (; j < j1; j++) /* the last < 8 columns */
                block(C + i0 * ldc + j, ldc, Ap, B + j * ldb, ldb, pm, k, 1, alpha, beta, acc);
            Ap += panel_floats(pm, k);
        }
        return;
    }
    int nb_full = m <= 2 ? 4 : NB_WIDE;
    for (size_t i0 = 0; i0 < m; i0 += PANEL_M) {
        size_t pm = m - i0 < PANEL_M ? m - i0 : PANEL_M;
        for (size_t j = j0; j < j1;) {
            size_t left = j1 - j;
            int nb = left >= (size_t)nb_full ? nb_full : (int)left;
            block(C + i0 * ldc + j, ldc, Ap, B + j * ldb, ldb, pm, k, nb, alpha, beta, acc);
            j += (size_t)nb;
        }
        Ap += panel_floats(pm, k);
    }
}
