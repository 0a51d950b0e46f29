/* test_attention.c - core__attention (portable and AVX2/FMA kernels, serial and on the
 * pool) against a naive double-precision causal attention over a paged cache: GQA groups
 * 1..16, head_dim 32/64/128/6, block sizes 1/3/16 with a shuffled block table, contexts
 * crossing block and tile boundaries, prefill and decode items in one batch. Also: an
 * item's result does not depend on the rest of the batch, and peaked softmax (large
 * scores) stays finite and exact. */
#include <stdint.h>
#include <stdlib.h>

#include "core/attention.h"
#include "core/pool.h"
#include "tests/unit/harness.h"

static uint32_t rng_state = 777;

static float frand(void)
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)((rng_state >> 8) & 0xFFFF) / 32768.0f - 1.0f;
}

#define MAX_ITEMS 8

/* A batch over one paged arena: block id b holds K then V of bt positions (kv_dim each)
 * followed by some padding, so block_stride is not 2 * bt * kv_dim. */
typedef struct {
    int n_heads, n_kv, hd, bt, n_items;
    size_t kvd, qd, stride, T;
    float *arena, *q, *out;
    int *table[MAX_ITEMS];
    int len[MAX_ITEMS], n_tok[MAX_ITEMS];
} batch_t;

static void view(void *ctx, int i, core__attn_kv_t *out)
{
    const batch_t *b = ctx;
    *out = (core__attn_kv_t){.base = b->arena, .table = b->table[i], .block_stride = b->stride,
                             .v_offset = (size_t)b->bt * b->kvd, .block_tokens = b->bt,
                             .len = b->len[i], .n_tokens = b->n_tok[i]};
}

/* Items with the given cached lengths and new tokens; blocks handed out shuffled. */
static void batch_make(batch_t *b, int n_heads, int n_kv, int hd, int bt, int n_items,
                       const int *len, const int *n_tok, float q_scale)
{
    memset(b, 0, sizeof *b);
    b->n_heads = n_heads, b->n_kv = n_kv, b->hd = hd, b->bt = bt, b->n_items = n_items;
    b->kvd = (size_t)n_kv * hd, b->qd = (size_t)n_heads * hd;
    b->stride = 2 * (size_t)bt * b->kvd + 5;
    int n_blocks = 0, nb[MAX_ITEMS];
    for (int i = 0; i < n_items; i++) {
        b->len[i] = len[i], b->n_tok[i] = n_tok[i];
        nb[i] = (len[i] + n_tok[i] + bt - 1) / bt;
        n_blocks += nb[i];
        b->T += (size_t)n_tok[i];
    }
    int *ids = malloc((size_t)n_blocks * sizeof *ids);
    for (int k = 0; k < n_blocks; k++)
        ids[k] = k;
    for (int k = n_blocks - 1; k > 0; k--) { /* shuffle */
        rng_state = rng_state * 1664525u + 1013904223u;
        int r = (int)((rng_state >> 8) % (uint32_t)(k + 1)), t = ids[k];
        ids[k] = ids[r], ids[r] = t;
    }
    size_t floats = (size_t)n_blocks * b->stride;
    b->arena = malloc(floats * sizeof(float));
    for (size_t k = 0; k < floats; k++)
        b->arena[k] = frand();
    for (int i = 0, at = 0; i < n_items; i++) {
        b->table[i] = malloc((size_t)nb[i] * sizeof(int));
        for (int k = 0; k < nb[i]; k++)
            b->table[i][k] = ids[at++];
    }
    free(ids);
    b->q = malloc(b->T * b->qd * sizeof(float));
    b->out = malloc(b->T * b->qd * sizeof(float));
    for (size_t k = 0; k < b->T * b->qd; k++)
        b->q[k] = frand() * q_scale;
}

static void batch_free(batch_t *b)
{
    free(b->arena);
    free(b->q);
    free(b->out);
    for (int i = 0; i < b->n_items; i++)
        free(b->table[i]);
}

static const float *row_of(const batch_t *b, int i, int pos)
{
    return b->arena + (size_t)b->table[i][pos / b->bt] * b->stride +
           (size_t)(pos % b->bt) * b->kvd;
}

static void run(batch_t *b, core__attn_impl_t impl)
{
    for (size_t k = 0; k < b->T * b->qd; k++)
        b->out[k] = NAN; /* written, never read */
    core__attn_t a = {.n_heads = b->n_heads, .n_kv_heads = b->n_kv, .head_dim = b->hd,
                      .n_items = b->n_items, .view = view, .view_ctx = b, .q = b->q,
                      .out = b->out, .impl = impl};
    core__attention(&a);
}

/* Max |out - reference| over the batch, reference in double. */
static double max_err(const batch_t *b)
{
    int group = b->n_heads / b->n_kv;
    double worst = 0.0, scale = 1.0 / sqrt((double)b->hd);
    size_t row = 0;
    for (int i = 0; i < b->n_items; i++)
        for (int t = 0; t < b->n_tok[i]; t++, row++)
            for (int h = 0; h < b->n_heads; h++) {
                int ctx = b->len[i] + t + 1;
                size_t ko = (size_t)(h / group) * b->hd;
                const float *q = b->q + row * b->qd + (size_t)h * b->hd;
                double *sc = malloc((size_t)ctx * sizeof *sc), mx = -INFINITY, sum = 0.0;
                for (int p = 0; p < ctx; p++) {
                    double s = 0.0;
                    for (int d = 0; d < b->hd; d++)
                        s += (double)q[d] * row_of(b, i, p)[ko + d];
                    sc[p] = s * scale;
                    mx = sc[p] > mx ? sc[p] : mx;
                }
                for (int p = 0; p < ctx; p++)
                    sum += sc[p] = exp(sc[p] - mx);
                for (int d = 0; d < b->hd; d++) {
                    double o = 0.0;
                    for (int p = 0; p < ctx; p++)
                        o += sc[p] / sum * row_of(b, i, p)[(size_t)b->bt * b->kvd + ko + d];
                    double got = b->out[row * b->qd + (size_t)h * b->hd + d];
                    double e = fabs(got - o);
                    worst = !(e <= worst) ? e : worst; /* NaN propagates */
                }
                free(sc);
            }
    return worst;
}

static int n_impls(core__attn_impl_t *impls)
{
    int n = 0;
    impls[n++] = CORE__ATTN_PORTABLE;
    if (core__attn_avx2_available())
        impls[n++] = CORE__ATTN_AVX2;
    else
        fprintf(stderr, "# no AVX2/FMA on this CPU: portable kernel only\n");
    return n;
}

/* Every impl on one shape: three items (a prefill from empty, a decode, a chunked
 * prefill on a cache) whose contexts cross block and tile (32) boundaries. */
static void check_shape(int n_heads, int n_kv, int hd, int bt)
{
    const int len[3] = {0, 37, 61}, n_tok[3] = {5, 1, 4};
    core__attn_impl_t impls[2];
    for (int k = 0, n = n_impls(impls); k < n; k++) {
        batch_t b;
        batch_make(&b, n_heads, n_kv, hd, bt, 3, len, n_tok, 1.0f);
        run(&b, impls[k]);
        double e = max_err(&b);
        if (!(e <= 2e-6))
            HARNESS_FAIL("heads %d/%d hd %d bt %d impl %d: max error %g", n_heads, n_kv, hd, bt,
                         (int)impls[k], e);
        batch_free(&b);
    }
}

TEST(gqa_groups_head_dims_block_sizes)
{
    const int groups[] = {1, 2, 4, 8}, hds[] = {32, 64, 128, 6}, bts[] = {1, 3, 16};
    for (int g = 0; g < 4; g++)
        for (int h = 0; h < 4; h++)
            for (int k = 0; k < 3; k++)
                check_shape(2 * groups[g], 2, hds[h], bts[k]);
}

TEST(odd_groups_split_into_kernel_calls)
{
    check_shape(3, 1, 64, 16);  /* 2 + 1 */
    check_shape(14, 2, 32, 3);  /* 4 + 2 + 1 */
    check_shape(16, 1, 64, 16); /* two calls of 8 */
    check_shape(12, 1, 20, 3);  /* head_dim 20: one vector and a scalar tail */
}

/* Scores in the hundreds: exp overflows without the max subtraction, and the max grows
 * from tile to tile so the online rescale runs. */
TEST(peaked_softmax_is_exact)
{
    const int len[2] = {90, 0}, n_tok[2] = {1, 3};
    core__attn_impl_t impls[2];
    for (int k = 0, n = n_impls(impls); k < n; k++) {
        batch_t b;
        batch_make(&b, 8, 2, 64, 16, 2, len, n_tok, 60.0f);
        run(&b, impls[k]);
        ASSERT_NEAR(max_err(&b), 0.0, 1e-5);
        batch_free(&b);
    }
}

/* Large enough for the pool (above the serial threshold), on 3 threads: same answer, and
 * each item's rows are bit-identical to that item computed alone. */
TEST(pool_matches_and_items_are_independent)
{
    const int len[6] = {100, 7, 250, 31, 64, 0}, n_tok[6] = {1, 1, 1, 2, 1, 9};
    core_pool_init(3);
    core__attn_impl_t impls[2];
    for (int k = 0, n = n_impls(impls); k < n; k++) {
        batch_t b;
        batch_make(&b, 16, 4, 64, 16, 6, len, n_tok, 1.0f);
        run(&b, impls[k]);
        ASSERT_NEAR(max_err(&b), 0.0, 2e-6);
        float *all = malloc(b.T * b.qd * sizeof(float));
        memcpy(all, b.out, b.T * b.qd * sizeof(float));
        /* item 2 alone: a one-item batch viewing the same cache */
        batch_t one = b;
        one.n_items = 1, one.table[0] = b.table[2], one.len[0] = b.len[2];
        one.n_tok[0] = b.n_tok[2], one.q = b.q + 2 * b.qd;
        one.out = malloc(b.qd * sizeof(float));
        one.T = 1;
        run(&one, impls[k]);
        ASSERT(memcmp(one.out, all + 2 * b.qd, b.qd * sizeof(float)) == 0);
        free(one.out);
        free(all);
        batch_free(&b);
    }
    core_pool_shutdown();
}
