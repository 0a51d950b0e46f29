/* sampler.c - next-token choice: greedy, or temperature + top-k + top-p + seeded draw.
 *
 * The PRNG is xoshiro256** seeded through splitmix64 (Blackman & Vigna), so a seed gives
 * the same draws on every platform. Buffers (probabilities, candidate indices) are sized
 * once in core_sampler_new; core_sampler_sample never allocates. Ties in the candidate
 * order break towards the lower token id, so results do not depend on qsort internals.
 * NaN logits count as -inf. Threads: a sampler belongs to one sequence on one thread. */
#include "core/sampler.h"

#include <math.h>
#include <stdlib.h>

struct core_sampler {
    core_sampler_params_t p;
    int n_vocab;
    float *probs;  /* (n_vocab) unnormalised exp((l - max) / T) */
    int32_t *cand; /* (n_vocab) candidate token ids */
    uint64_t s[4]; /* xoshiro256** state */
};

core_sampler_params_t core_sampler_default_params(void)
{
    return (core_sampler_params_t){.temperature = 1.0f, .top_p = 1.0f, .top_k = 0, .seed = 0};
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double uniform01(uint64_t s[4])
{
    return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53;
}

core_sampler_t *core_sampler_new(core_sampler_params_t p, int n_vocab)
{
    if (n_vocab <= 0)
        return NULL;
    core_sampler_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->probs = malloc((size_t)n_vocab * sizeof *s->probs);
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    if (!s->probs || !s->cand) {
        core_sampler_free(s);
        return NULL;
    }
    s->p = p;
    s->n_vocab = n_vocab;
    uint64_t x = p.seed;
    for (int i = 0; i < 4; i++)
        s->s[i] = splitmix64(&x);
    return s;
}

void core_sampler_free(core_sampler_t *s)
{
    if (!s)
        return;
    free(s->probs);
    free(s->cand);
    free(s);
}

/* First index of the largest logit; NaN never wins; all-NaN gives 0. */
static int32_t argmax(const float *l, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[best] || (isnan(l[best]) && !isnan(l[i])))
            best = i;
    return best;
}

/* "a ranks before b": higher probability, then lower id. */
static int ranks_before(const float *p, int32_t a, int32_t b)
{
    return p[a] > p[b] || (p[a] == p[b] && a < b);
}

static int cand_cmp(const void *x, const void *y, void *ctx)
{
    const float *p = ctx;
    int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    return ranks_before(p, a, b) ? -1 : ranks_before(p, b, a) ? 1 : 0;
}

/* Min-heap (worst candidate at the root) sift-down over h[0..n). */
static void heap_down(int32_t *h, int n, int i, const float *p)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && ranks_before(p, h[w], h[l]))
            w = l;
        if (r < n && ranks_before(p, h[w], h[r]))
            w = r;
        if (w == i)
            return;
        int32_t t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* The k best ids into cand[0..k), sorted best first. O(n log k). */
static int select_top_k(const float *p, int n, int k, int32_t *cand)
{
    int m = 0;
    for (int32_t i = 0; i < n; i++) {
        if (m < k) {
            cand[m++] = i;
            if (m == k)
                for (int j = k / 2 - 1; j >= 0; j--)
                    heap_down(cand, k, j, p);
        } else if (ranks_before(p, i, cand[0])) {
            cand[0] = i;
            heap_down(cand, k, 0, p);
        }
    }
    qsort_r(cand, (size_t)m, sizeof *cand, cand_cmp, (void *)p);
    return m;
}

/* Candidates that can be in the nucleus: a token below (1 - top_p) / (n - 1) of the mass
 * cannot be needed (all of those together hold less than 1 - top_p; llama2.c's trick),
 * so only the rest is sorted. */
static int select_nucleus_pool(const float *p, int n, double sum, float top_p, int32_t *cand)
{
    double cut = n > 1 ? (1.0 - top_p) / (n - 1) * sum : 0.0;
    int m = 0;
    for (int32_t i = 0; i < n; i++)
        if (p[i] >= cut && p[i] > 0)
            cand[m++] = i;
    if (m == 0)
        cand[m++] = argmax(p, n);
    qsort_r(cand, (size_t)m, sizeof *cand, cand_cmp, (void *)p);
    return m;
}

/* Draw from cand[0..m) with weights p, keeping the shortest prefix whose mass reaches
 * top_p of the candidates' total (at least one). */
static int32_t draw_sorted(core_sampler_t *s, const int32_t *cand, int m, float top_p)
{
    const float *p = s->probs;
    double total = 0;
    for (int i = 0; i < m; i++)
        total += p[cand[i]];
    double need = (double)top_p * total, cum = 0;
    int keep = m;
    for (int i = 0; i < m; i++) {
        cum += p[cand[i]];
        if (cum >= need) {
            keep = i + 1;
            break;
        }
    }
    if (keep < m)
        total = cum;
    double r = uniform01(s->s) * total, acc = 0;
    for (int i = 0; i < keep; i++) {
        acc += p[cand[i]];
        if (r < acc)
            return cand[i];
    }
    return cand[keep - 1]; /* rounding at the top end */
}

int32_t core_sampler_sample(core_sampler_t *s, const float *logits)
{
    int n = s->n_vocab;
    float t = s->p.temperature;
    int k = s->p.top_k > 0 && s->p.top_k < n ? s->p.top_k : 0;
    float top_p = s->p.top_p > 1.0f || isnan(s->p.top_p) ? 1.0f : s->p.top_p;
    int32_t best = argmax(logits, n);
    if (!(t > 0) || k == 1 || isinf(logits[best]) || isnan(logits[best]))
        return best;

    /* softmax numerators; 1/T applied to the difference so large logits cannot overflow */
    float *p = s->probs, mx = logits[best];
    double sum = 0;
    for (int i = 0; i < n; i++) {
        float d = (logits[i] - mx) / t;
        p[i] = isnan(d) ? 0.0f : expf(d);
        sum += p[i];
    }
    if (k)
        return draw_sorted(s, s->cand, select_top_k(p, n, k, s->cand), top_p);
    if (top_p < 1.0f)
        return draw_sorted(s, s->cand, select_nucleus_pool(p, n, sum, top_p, s->cand), top_p);

    /* plain sampling: no ordering needed */
    double r = uniform01(s->s) * sum, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += p[i];
        if (r < acc)
            return i;
    }
    return best;
}
