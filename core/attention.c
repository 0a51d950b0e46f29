/* attention.c - batch attention over the paged KV cache (see attention.h): the split of
 * (item, kv head) pairs over the compute pool, the kernel dispatch and the portable
 * kernel. The AVX2/FMA kernel, same algorithm, is core/attention_avx2.c. */
#include "core/attention.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "core/pool.h"

/* A call below this many multiply-adds runs on the calling thread: a pool hand-off costs
 * ~1 us when the worker spins but far more when it sleeps, and single-sequence decode at
 * short context is ~10 us of attention per layer. */
#ifndef ATTN_SERIAL_MACS
#define ATTN_SERIAL_MACS ((size_t)64 * 1024)
#endif

typedef void (*attn_kernel_fn)(const core__attn_job_t *j);

static atomic_int g_avx2_ok = -1; /* -1 unknown, else 0/1 */

bool core__attn_avx2_available(void)
{
    int ok = atomic_load(&g_avx2_ok);
    if (ok < 0) {
        __builtin_cpu_init();
        ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        atomic_store(&g_avx2_ok, ok);
    }
    return ok;
}

/* ---- portable kernel ------------------------------------------------------------- */

/* sum a[i] b[i] with eight independent partial sums (no -ffast-math: one running sum
 * would be a single dependency chain). */
static float dot_c(const float *restrict a, const float *restrict b, size_t n)
{
    float s[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            s[k] += a[i + k] * b[i + k];
    float t = 0.0f;
    for (; i < n; i++)
        t += a[i] * b[i];
    return t + ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

/* y += p x, in blocks of 8 so it vectorizes at -O2. */
static void axpy_c(float *restrict y, float p, const float *restrict x, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            y[i + k] += p * x[i + k];
    for (; i < n; i++)
        y[i] += p * x[i];
}

/* Scores of one tile -> exp(score - running max), rescaling the head's running sum and
 * partial output when the max grows. sc: n scores; returns nothing, updates *m, *s. */
static void softmax_tile_c(float *sc, size_t n, float *m, float *s, float *out, size_t hd)
{
    float mx = *m;
    for (size_t j = 0; j < n; j++)
        mx = sc[j] > mx ? sc[j] : mx;
    if (mx > *m) {
        if (*m != -INFINITY) { /* the output is still all zero before the first tile */
            float f = expf(*m - mx);
            *s *= f;
            for (size_t i = 0; i < hd; i++)
                out[i] *= f;
        }
        *m = mx;
    }
    float sum = 0.0f;
    for (size_t j = 0; j < n; j++) {
        sc[j] = expf(sc[j] - mx);
        sum += sc[j];
    }
    *s += sum;
}

void core__attn_group_c(const core__attn_job_t *jb)
{
    size_t hd = jb->head_dim, g = (size_t)jb->n_q;
    float m[CORE__ATTN_MAX_GROUP], s[CORE__ATTN_MAX_GROUP];
    float sc[CORE__ATTN_MAX_GROUP][CORE__ATTN_TILE];
    const float *rows[CORE__ATTN_TILE];
    for (size_t h = 0; h < g; h++) {
        m[h] = -INFINITY;
        s[h] = 0.0f;
        memset(jb->out + h * hd, 0, hd * sizeof(float));
    }
    for (size_t p0 = 0; p0 < jb->ctx; p0 += CORE__ATTN_TILE) {
        size_t n = jb->ctx - p0 < CORE__ATTN_TILE ? jb->ctx - p0 : CORE__ATTN_TILE;
        core__attn_rows(jb->kv, jb->kv_dim, jb->kv_off, p0, n, rows);
        for (size_t h = 0; h < g; h++) {
            for (size_t j = 0; j < n; j++)
                sc[h][j] = dot_c(jb->q + h * hd, rows[j], hd) * jb->scale;
            softmax_tile_c(sc[h], n, &m[h], &s[h], jb->out + h * hd, hd);
        }
        /* each V row once for the whole group */
        for (size_t j = 0; j < n; j++) {
            const float *v = rows[j] + jb->kv->v_offset;
            for (size_t h = 0; h < g; h++)
                axpy_c(jb->out + h * hd, sc[h][j], v, hd);
        }
    }
    for (size_t h = 0; h < g; h++)
        for (size_t i = 0; i < hd; i++)
            jb->out[h * hd + i] /= s[h];
}

/* ---- the batch -------------------------------------------------------------------- */

typedef struct {
    const core__attn_t *a;
    attn_kernel_fn kernel;
} attn_run_t;

/* Every token of item pairs [begin, end): pair p is item p / n_kv_heads, kv head
 * p % n_kv_heads. Items are visited in order, so the row offset is a running sum. */
static void attn_task(void *arg, size_t begin, size_t end)
{
    const attn_run_t *r = arg;
    const core__attn_t *a = r->a;
    size_t nkv = (size_t)a->n_kv_heads, hd = (size_t)a->head_dim;
    size_t qd = (size_t)a->n_heads * hd, group = (size_t)a->n_heads / nkv;
    int item = (int)(begin / nkv);
    size_t row = 0;
    core__attn_kv_t kv;
    for (int i = 0; i < item; i++) {
        a->view(a->view_ctx, i, &kv);
        row += (size_t)kv.n_tokens;
    }
    a->view(a->view_ctx, item, &kv);
    core__attn_job_t jb = {.kv = &kv, .kv_dim = nkv * hd, .head_dim = hd,
                           .scale = 1.0f / sqrtf((float)hd)};
    for (size_t p = begin; p < end; p++) {
        if ((int)(p / nkv) != item) {
            row += (size_t)kv.n_tokens;
            a->view(a->view_ctx, ++item, &kv);
        }
        size_t kvh = p % nkv;
        jb.kv_off = kvh * hd;
        for (int t = 0; t < kv.n_tokens; t++) {
            jb.ctx = (size_t)kv.len + (size_t)t + 1; /* itself and everything before */
            for (size_t h0 = 0; h0 < group; h0 += CORE__ATTN_MAX_GROUP) {
                size_t at = (row + (size_t)t) * qd + (kvh * group + h0) * hd;
                jb.q = a->q + at;
                jb.out = a->out + at;
                jb.n_q = (int)(group - h0 < CORE__ATTN_MAX_GROUP ? group - h0
                                                                  : CORE__ATTN_MAX_GROUP);
                r->kernel(&jb);
            }
        }
    }
}

static attn_kernel_fn pick_kernel(core__attn_impl_t impl)
{
    if (impl != CORE__ATTN_PORTABLE && core__attn_avx2_available())
        return core__attn_group_avx2;
    return core__attn_group_c;
}

void core__attention(const core__attn_t *a)
{
    if (!a || a->n_items < 1)
        return;
    attn_run_t r = {a, pick_kernel(a->impl)};
    size_t n = (size_t)a->n_items * (size_t)a->n_kv_heads;
    size_t macs = 0, per_pos = 2 * (size_t)a->n_heads * (size_t)a->head_dim;
    for (int i = 0; i < a->n_items && macs < ATTN_SERIAL_MACS; i++) {
        core__attn_kv_t kv;
        a->view(a->view_ctx, i, &kv);
        macs += (size_t)kv.n_tokens * ((size_t)kv.len + (size_t)kv.n_tokens) * per_pos;
    }
    if (macs < ATTN_SERIAL_MACS || core_pool_n_threads() < 2)
        attn_task(&r, 0, n);
    else
        core_pool_for(n, 1, attn_task, &r);
}
