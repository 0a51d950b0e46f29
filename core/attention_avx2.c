/* attention_avx2.c - the AVX2/FMA attention kernel (see attention.h). Built with
 * -mavx2 -mfma; core/attention.c calls it only after checking the CPU at run time.
 *
 * Same algorithm as the portable kernel: tiles of CORE__ATTN_TILE positions; for each
 * query head of the group, the tile's scores (8 positions at a time, their 8 dot products
 * reduced together), an online-softmax update with a vectorised exp, then the tile's V
 * rows accumulated into all heads' outputs at once (each V row loaded once per group). A
 * tile's K and V rows (8 KB each at head_dim 64) stay in L1 while the group's heads reuse
 * them, so the cache is streamed from memory once per group. The group size is a
 * compile-time constant in each specialisation (8, 4, 2, 1) so the per-head accumulators
 * live in registers. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "core/attention.h"
#include "core/avx2_util.h"

#define INLINE static inline __attribute__((always_inline))

INLINE float hmax(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* e^x for x <= 0 (softmax arguments): Cephes' expf - x = n ln2 + r with ln2 split in two,
 * a degree-5 polynomial for e^r, 2^n built in the exponent bits - within ~2 ulp of expf.
 * Below -87.3 the result is clamped to ~1e-38 instead of reaching 0, which no softmax sum
 * can notice. */
INLINE __m256 exp_ps(__m256 x)
{
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
    __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f),
                                               _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
                                  23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* sc[j] = scale * q . rows[j] for j < n; hd8 = head_dim rounded down to 8. */
INLINE void scores(float *sc, const float *q, const float *const *rows, size_t n, size_t hd,
                   size_t hd8, float scale)
{
    __m256 vs = _mm256_set1_ps(scale);
    size_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 acc[8];
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++)
            acc[k] = _mm256_setzero_ps();
        for (size_t c = 0; c < hd8; c += 8) {
            __m256 qv = _mm256_loadu_ps(q + c);
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++)
                acc[k] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rows[j + k] + c), acc[k]);
        }
        __m256 r = core__hsum8x8(acc);
        if (hd8 < hd) {
            float t[8] = {0};
            for (int k = 0; k < 8; k++)
                for (size_t i = hd8; i < hd; i++)
                    t[k] += q[i] * rows[j + k][i];
            r = _mm256_add_ps(r, _mm256_loadu_ps(t));
        }
        _mm256_storeu_ps(sc + j, _mm256_mul_ps(r, vs));
    }
    for (; j < n; j++) {
        __m256 acc = _mm256_setzero_ps();
        for (size_t c = 0; c < hd8; c += 8)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), _mm256_loadu_ps(rows[j] + c), acc);
        float t = core__hsum(acc);
        for (size_t i = hd8; i < hd; i++)
            t += q[i] * rows[j][i];
        sc[j] = t * scale;
    }
}

/* Online-softmax update of one head for a tile of n scores: sc becomes
 * exp(sc - max), the running max *m, sum *s and partial output out follow. */
INLINE void softmax_tile(float *sc, size_t n, float *m, float *s, float *out, size_t hd)
{
    size_t j = 0;
    __m256 vmx = _mm256_set1_ps(*m);
    for (; j + 8 <= n; j += 8)
        vmx = _mm256_max_ps(vmx, _mm256_loadu_ps(sc + j));
    float mx = hmax(vmx);
    for (; j < n; j++)
        mx = sc[j] > mx ? sc[j] : mx;
    if (mx > *m) {
        if (*m != -INFINITY) { /* the output is still all zero before the first tile */
            float f = expf(*m - mx);
            *s *= f;
            size_t i = 0;
            for (; i + 8 <= hd; i += 8)
                _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(out + i),
                                                        _mm256_set1_ps(f)));
            for (; i < hd; i++)
                out[i] *= f;
        }
        *m = mx;
    }
    __m256 vm = _mm256_set1_ps(mx), vsum = _mm256_setzero_ps();
    for (j = 0; j + 8 <= n; j += 8) {
        __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(sc + j), vm));
        _mm256_storeu_ps(sc + j, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = core__hsum(vsum);
    if (j < n) { /* tail through a padded vector: the same exp as the full lanes */
        float t[8];
        size_t r = n - j;
        for (size_t k = 0; k < 8; k++)
            t[k] = k < r ? sc[j + k] - mx : -87.3f;
        _mm256_storeu_ps(t, exp_ps(_mm256_loadu_ps(t)));
        for (size_t k = 0; k < r; k++) {
            sc[j + k] = t[k];
            sum += t[k];
        }
    }
    *s += sum;
}

/* Columns [c, c + 8C) of the G heads' outputs += sum_j p[h][j] v_j: G*C accumulators,
 * independent FMA chains over j (one chain per register would wait on FMA latency). */
INLINE void accumulate_cols(float *out, const float (*p)[CORE__ATTN_TILE],
                            const float *const *rows, size_t voff, size_t n, size_t hd,
                            size_t c, int G, int C)
{
    __m256 acc[CORE__ATTN_MAX_GROUP][8];
#pragma GCC unroll 8
    for (int h = 0; h < G; h++)
#pragma GCC unroll 8
        for (int k = 0; k < C; k++)
            acc[h][k] = _mm256_loadu_ps(out + (size_t)h * hd + c + 8 * (size_t)k);
    for (size_t j = 0; j < n; j++) {
        __m256 v[8];
#pragma GCC unroll 8
        for (int k = 0; k < C; k++)
            v[k] = _mm256_loadu_ps(rows[j] + voff + c + 8 * (size_t)k);
#pragma GCC unroll 8
        for (int h = 0; h < G; h++) {
            __m256 ph = _mm256_broadcast_ss(&p[h][j]);
#pragma GCC unroll 8
            for (int k = 0; k < C; k++)
                acc[h][k] = _mm256_fmadd_ps(ph, v[k], acc[h][k]);
        }
    }
#pragma GCC unroll 8
    for (int h = 0; h < G; h++)
#pragma GCC unroll 8
        for (int k = 0; k < C; k++)
            _mm256_storeu_ps(out + (size_t)h * hd + c + 8 * (size_t)k, acc[h][k]);
}

/* The tile's V rows into the G heads' outputs: out_h += sum_j p[h][j] v_j, each V row
 * loaded once for the group. */
INLINE void accumulate(float *out, const float (*p)[CORE__ATTN_TILE], const float *const *rows,
                       size_t voff, size_t n, size_t hd, size_t hd8, int G)
{
    const int C = G >= 8 ? 1 : 8 / G; /* about 8 accumulators */
    size_t c = 0;
    for (; c + 8 * (size_t)C <= hd8; c += 8 * (size_t)C)
        accumulate_cols(out, p, rows, voff, n, hd, c, G, C);
    for (; c < hd8; c += 8)
        accumulate_cols(out, p, rows, voff, n, hd, c, G, 1);
    for (size_t i = hd8; i < hd; i++)
        for (size_t j = 0; j < n; j++)
            for (int h = 0; h < G; h++)
                out[(size_t)h * hd + i] += p[h][j] * rows[j][voff + i];
}

/* Ask for a tile's K and V rows (head_dim floats each) ahead of use: the rows of one KV
 * head are kv_dim floats apart and scattered over blocks, a pattern the hardware
 * prefetchers follow poorly, so without this the kernel waits on memory latency. */
INLINE void prefetch_rows(const float *const *rows, size_t n, size_t voff, size_t hd)
{
    for (size_t j = 0; j < n; j++)
        for (size_t i = 0; i < hd; i += 16) {
            _mm_prefetch((const char *)(rows[j] + i), _MM_HINT_T0);
            _mm_prefetch((const char *)(rows[j] + voff + i), _MM_HINT_T0);
        }
}

/* Heads h0 .. h0+G-1 of the job. */
INLINE void group_g(const core__attn_job_t *jb, size_t h0, int G)
{
    size_t hd = jb->head_dim, hd8 = hd & ~(size_t)7, voff = jb->kv->v_offset;
    const float *q = jb->q + h0 * hd;
    float *out = jb->out + h0 * hd;
    float m[CORE__ATTN_MAX_GROUP], s[CORE__ATTN_MAX_GROUP];
    float sc[CORE__ATTN_MAX_GROUP][CORE__ATTN_TILE];
    const float *rows[CORE__ATTN_TILE], *next[CORE__ATTN_TILE];
    for (int h = 0; h < G; h++) {
        m[h] = -INFINITY;
        s[h] = 0.0f;
    }
    memset(out, 0, (size_t)G * hd * sizeof(float));
    size_t n = jb->ctx < CORE__ATTN_TILE ? jb->ctx : CORE__ATTN_TILE;
    core__attn_rows(jb->kv, jb->kv_dim, jb->kv_off, 0, n, rows);
    prefetch_rows(rows, n, voff, hd);
    for (size_t p0 = 0; p0 < jb->ctx; p0 += CORE__ATTN_TILE) {
        n = jb->ctx - p0 < CORE__ATTN_TILE ? jb->ctx - p0 : CORE__ATTN_TILE;
        if (p0) /* prefetched when the previous tile started */
            memcpy(rows, next, sizeof rows);
        size_t p1 = p0 + CORE__ATTN_TILE;
        if (p1 < jb->ctx) {
            size_t n1 = jb->ctx - p1 < CORE__ATTN_TILE ? jb->ctx - p1 : CORE__ATTN_TILE;
            core__attn_rows(jb->kv, jb->kv_dim, jb->kv_off, p1, n1, next);
            prefetch_rows(next, n1, voff, hd);
        }
        for (int h = 0; h < G; h++) {
            scores(sc[h], q + (size_t)h * hd, rows, n, hd, hd8, jb->scale);
            softmax_tile(sc[h], n, &m[h], &s[h], out + (size_t)h * hd, hd);
        }
        accumulate(out, (const float (*)[CORE__ATTN_TILE])sc, rows, voff, n, hd, hd8, G);
    }
    for (int h = 0; h < G; h++) {
        __m256 vs = _mm256_set1_ps(s[h]);
        float *o = out + (size_t)h * hd;
        size_t i = 0;
        for (; i + 8 <= hd; i += 8)
            _mm256_storeu_ps(o + i, _mm256_div_ps(_mm256_loadu_ps(o + i), vs));
        for (; i < hd; i++)
            o[i] /= s[h];
    }
}

static void group_8(const core__attn_job_t *jb, size_t h0) { group_g(jb, h0, 8); }
static void group_4(const core__attn_job_t *jb, size_t h0) { group_g(jb, h0, 4); }
static void group_2(const core__attn_job_t *jb, size_t h0) { group_g(jb, h0, 2); }
static void group_1(const core__attn_job_t *jb, size_t h0) { group_g(jb, h0, 1); }

void core__attn_group_avx2(const core__attn_job_t *jb)
{
    size_t h0 = 0, n = (size_t)jb->n_q;
    while (h0 < n) {
        size_t rem = n - h0;
        if (rem >= 8)
            group_8(jb, h0), h0 += 8;
        else if (rem >= 4)
            group_4(jb, h0), h0 += 4;
        else if (rem >= 2)
            group_2(jb, h0), h0 += 2;
        else
            group_1(jb, h0), h0 += 1;
    }
}
