/* attention.h - causal attention of a whole batch over the paged KV cache, one layer per
 * call. Private to core/ (core/forward.c calls it once per layer).
 *
 * core__attention computes, for every new token t of every item and every query head h,
 * out = softmax(q . K^T * scale) V over the item's positions 0 .. len + t (it sees itself
 * and everything before), with scale = 1/sqrt(head_dim). The cache must already hold the
 * new tokens' K and V. Work is split over (item, kv head) pairs on the compute pool (one
 * hand-off per call; a small call runs on the calling thread): the n_heads / n_kv_heads
 * query heads that share a KV head are processed together, so each K and V row is read
 * once for the whole group. Softmax is computed online in f32 (a running max subtracted
 * before exp, the partial output rescaled when the max grows) over tiles of positions
 * gathered across blocks, so no scratch is needed beyond a small stack tile and nothing
 * allocates per call.
 *
 * The cache layout stays forward.c's: it describes an item's cache for one layer through
 * the view callback (block table, K of block id 0 and the strides), which may be called
 * from any pool thread, concurrently, and must only read.
 *
 * Dispatch: the AVX2/FMA kernel (core/attention_avx2.c, built with -mavx2 -mfma) when the
 * CPU has both, else portable C. Both agree with a double-precision reference to ~1e-6
 * relative; for a given path and item the result does not depend on the other items of
 * the batch or on the thread count.
 *
 * Threads: may be called from any thread; it must not be called from inside a pool task
 * (it would run serially there, which is correct but slow). Tasks never call the pool. */
#ifndef CORE_ATTENTION_H
#define CORE_ATTENTION_H

#include <stdbool.h>
#include <stddef.h>

/* Query heads one kernel call processes together; larger GQA groups are split. */
#define CORE__ATTN_MAX_GROUP 8

/* One item's cache for the layer being computed. K of position p is the row
 * base + table[p / block_tokens] * block_stride + (p % block_tokens) * kv_dim (kv_dim
 * floats: every KV head, head_dim apart); its V row is v_offset floats after it. */
typedef struct {
    const float *base;
    const int *table;
    size_t block_stride; /* floats between consecutive block ids */
    size_t v_offset;     /* floats from a K row to its V row */
    int block_tokens;    /* >= 1 */
    int len;             /* positions cached before this step's tokens */
    int n_tokens;        /* new tokens of the item (>= 1), at positions len .. */
} core__attn_kv_t;

/* Fills *out with item i's view (0 <= i < n_items). */
typedef void (*core__attn_view_fn)(void *ctx, int i, core__attn_kv_t *out);

typedef enum {
    CORE__ATTN_AUTO = 0,  /* AVX2/FMA when the CPU has it */
    CORE__ATTN_PORTABLE,  /* plain C (tests) */
    CORE__ATTN_AVX2,      /* only when core__attn_avx2_available() */
} core__attn_impl_t;

typedef struct {
    int n_heads, n_kv_heads, head_dim; /* n_heads a multiple of n_kv_heads */
    int n_items;
    core__attn_view_fn view;
    void *view_ctx;
    const float *q; /* (T, n_heads * head_dim): the items' new rows in item order */
    float *out;     /* same shape; written, never read */
    core__attn_impl_t impl;
} core__attn_t;

void core__attention(const core__attn_t *a);
bool core__attn_avx2_available(void);

/* ---- kernels (attention.c, attention_avx2.c) ---------------------------------------
 * One token's n_q query heads sharing one KV head over positions 0 .. ctx-1. */
typedef struct {
    const float *q;  /* n_q heads, head_dim apart */
    float *out;      /* same layout */
    int n_q;         /* 1 .. CORE__ATTN_MAX_GROUP */
    size_t ctx;      /* >= 1 */
    const core__attn_kv_t *kv;
    size_t kv_off;   /* the KV head's offset within a row (kv head * head_dim) */
    size_t kv_dim, head_dim;
    float scale;
} core__attn_job_t;

void core__attn_group_c(const core__attn_job_t *j);
void core__attn_group_avx2(const core__attn_job_t *j);

/* Positions per softmax tile (gathered across block boundaries). */
#define CORE__ATTN_TILE 32

/* K row pointers of positions p0 .. p0+n-1 (n <= CORE__ATTN_TILE) into rows. */
static inline void core__attn_rows(const core__attn_kv_t *kv, size_t kv_dim, size_t kv_off,
                                   size_t p0, size_t n, const float **rows)
{
    size_t bt = (size_t)kv->block_tokens;
    size_t b = p0 / bt, r = p0 % bt;
    const float *blk = kv->base + (size_t)kv->table[b] * kv->block_stride + kv_off;
    for (size_t j = 0; j < n; j++) {
        rows[j] = blk + r * kv_dim;
        if (++r == bt && j + 1 < n) {
            r = 0;
            blk = kv->base + (size_t)kv->table[++b] * kv->block_stride + kv_off;
        }
    }
}

#endif
