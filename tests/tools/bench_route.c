/* bench_route.c - batched decode of routed sequences (issue 7) against single adapters.
 *
 * usage: bench_route BENCH_DIR [N_STEPS] [N_REPEATS] [CONFIGS]
 * BENCH_DIR holds model/ and adapters/a00..a31 (tools/make_bench_model.py; rank 16, alpha
 * 32, all seven projections). Drives core_forward directly, 16 sequences in one batch:
 *   (s) each sequence on its own adapter a00..a15 (the baseline);
 *   (p) each routed by one PHATGOOSE router over a00..a07, top-2 (random gates);
 *   (a) each routed by one Arrow router over a00..a07, top-2 (prototypes computed by the
 *       constructor, whose time is reported);
 *   (x) each routed by one X-LoRA router over a00..a07 (depth-1 random classifier,
 *       top_k_lora 2, softmax): two passes per step, so reported on its own;
 *   (b) all on the base, for context ("# " line only).
 * Every sequence first prefills a 64-token prompt (not timed), then runs N_STEPS decode
 * steps (default 32), each timed; a configuration's rate is sequences / median step time
 * over N_REPEATS rounds (default 3). In a round every configuration prefills, then their
 * decode steps alternate (step 0 of each, step 1 of each, ...): a burst of other load on
 * a shared machine then hits all of them alike. CONFIGS picks some of "spaxb"
 * (default all). Routers are built in memory (core_router_from_parts) from seeded random
 * gates / classifier. "# " lines give each configuration's median and fastest step.
 * A "# " line per PHATGOOSE/Arrow router gives, at layer 0 q_proj of the first decode
 * step, the experts kept per token and distinct over the batch, and the time routing
 * every module of one step takes (core_router_route called here, outside the forward).
 * Prints "BENCH <name> <value> <unit>" lines; target from the issue: routed PHATGOOSE and
 * Arrow >= 0.6 of single. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "core/gemm.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/pool.h"
#include "core/router.h"
#include "core/safetensors.h"

#define N_SEQ 16
#define N_ADAPTERS 16 /* a00..a15: the single baseline; routers use a00..a07 */
#define N_EXPERTS 8
#define TOP_K 2
#define PROMPT 64
#define MAX_STEPS 256

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void die(const char *what, const core_err_t *err)
{
    fprintf(stderr, "bench_route: %s: %s\n", what, err ? err->msg : "");
    exit(1);
}

static void bench_line(const char *name, double v, const char *unit)
{
    printf("BENCH %s %.3f %s\n", name, v, unit);
    fflush(stdout);
}

static void target(const char *name, double v, double want)
{
    bench_line(name, v, "ratio");
    printf("# %s = %.3f, target >= %.2f: %s\n", name, v, want, v >= want ? "met" : "MISSED");
}

static long rss_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, n))
            v = atol(line + n + 1);
    if (f)
        fclose(f);
    return v;
}

/* ---- seeded random values ---------------------------------------------------------- */

static uint32_t g_rng = 20240607u;

static float rand_unit(void) /* (0, 1) */
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 17;
    g_rng ^= g_rng << 5;
    return ((g_rng >> 8) + 0.5f) / 16777216.0f;
}

/* Box-Muller; one value per call is plenty for a few MB of fixtures. */
static float rand_normal(void)
{
    float u = rand_unit(), v = rand_unit();
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

static float *rand_floats(size_t n, float scale)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    if (!p)
        die("out of memory", NULL);
    for (size_t i = 0; i < n; i++)
        p[i] = scale * rand_normal();
    return p;
}

/* ---- an in-memory safetensors image (F32 tensors, offsets in order) ------------------ */

typedef struct {
    char name[160];
    int n_dims;
    int64_t shape[2];
    const float *data;
} img_tensor_t;

/* u64 header length, header JSON padded with spaces to 8 bytes, data. Caller frees. */
static uint8_t *st_image(const img_tensor_t *t, int n, size_t *len)
{
    size_t cap = 64, total = 0;
    for (int i = 0; i < n; i++) {
        cap += strlen(t[i].name) + 128;
        total += sizeof(float) * (size_t)t[i].shape[0] * (size_t)(t[i].n_dims > 1 ? t[i].shape[1] : 1);
    }
    char *h = malloc(cap);
    if (!h)
        die("out of memory", NULL);
    size_t pos = 0, off = 0;
    pos += (size_t)snprintf(h + pos, cap - pos, "{");
    for (int i = 0; i < n; i++) {
        size_t nb = sizeof(float) * (size_t)t[i].shape[0] *
                    (size_t)(t[i].n_dims > 1 ? t[i].shape[1] : 1);
        pos += (size_t)snprintf(h + pos, cap - pos, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld",
                                i ? "," : "", t[i].name, (long long)t[i].shape[0]);
        if (t[i].n_dims > 1)
            pos += (size_t)snprintf(h + pos, cap - pos, ",%lld", (long long)t[i].shape[1]);
        pos += (size_t)snprintf(h + pos, cap - pos, "],\"data_offsets\":[%zu,%zu]}", off, off + nb);
        off += nb;
    }
    pos += (size_t)snprintf(h + pos, cap - pos, "}");
    while (pos % 8 && pos + 1 < cap)
        h[pos++] = ' ';
    uint8_t *buf = malloc(8 + pos + total);
    if (!buf)
        die("out of memory", NULL);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)pos >> (8 * i));
    memcpy(buf + 8, h, pos);
    off = 8 + pos;
    for (int i = 0; i < n; i++) {
        size_t nb = sizeof(float) * (size_t)t[i].shape[0] *
                    (size_t)(t[i].n_dims > 1 ? t[i].shape[1] : 1);
        memcpy(buf + off, t[i].data, nb);
        off += nb;
    }
    free(h);
    *len = off;
    return buf;
}

/* ---- routers ----------------------------------------------------------------------- */

/* "\"a00\",\"a01\",..." for the router_config experts list. */
static void expert_list(char *buf, size_t cap)
{
    size_t pos = 0;
    for (int e = 0; e < N_EXPERTS; e++)
        pos += (size_t)snprintf(buf + pos, cap - pos, "%s\"a%02d\"", e ? "," : "", e);
}

static core_router_t *router_build(const char *cfg, const uint8_t *img, size_t len,
                                   core_lora_t **experts, const core_model_t *m,
                                   const char *what)
{
    core_err_t err = {{0}};
    core_st_t *st = NULL;
    core_router_t *r = NULL;
    if (img && core_st_parse(img, len, what, &st, &err) != RC_OK)
        die(what, &err);
    if (core_router_from_parts(cfg, st, experts, N_EXPERTS, &m->cfg, &r, &err) != RC_OK)
        die(what, &err);
    if (st)
        core_st_free(st);
    return r;
}

/* One gate (n_experts, n_in) per targeted module, random normal from the fixed seed. */
static core_router_t *phatgoose_new(core_lora_t **experts, const core_model_t *m)
{
    const core_config_t *c = &m->cfg;
    int n = c->n_layers * CORE_MOD__COUNT;
    img_tensor_t *t = calloc((size_t)n, sizeof *t);
    if (!t)
        die("out of memory", NULL);
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < CORE_MOD__COUNT; k++) {
            img_tensor_t *x = &t[l * CORE_MOD__COUNT + k];
            int n_out, n_in;
            core_mod_shape(c, (core_mod_t)k, &n_out, &n_in);
            snprintf(x->name, sizeof x->name, "model.layers.%d.%s.%s.phatgoose_gate", l,
                     core_mod_parent((core_mod_t)k), core_mod_name((core_mod_t)k));
            x->n_dims = 2;
            x->shape[0] = N_EXPERTS;
            x->shape[1] = n_in;
            x->data = rand_floats((size_t)N_EXPERTS * n_in, 1.0f);
        }
    size_t len;
    uint8_t *img = st_image(t, n, &len);
    char names[256], cfg[512];
    expert_list(names, sizeof names);
    snprintf(cfg, sizeof cfg, "{\"router_type\":\"phatgoose\",\"experts\":[%s],\"top_k\":%d}",
             names, TOP_K);
    core_router_t *r = router_build(cfg, img, len, experts, m, "phatgoose router");
    for (int i = 0; i < n; i++)
        free((void *)t[i].data);
    free(t);
    free(img);
    return r;
}

/* Arrow: no tensors; the constructor computes the prototypes. OUT: *build_s its time. */
static core_router_t *arrow_new(core_lora_t **experts, const core_model_t *m, double *build_s)
{
    char names[256], cfg[512];
    expert_list(names, sizeof names);
    snprintf(cfg, sizeof cfg, "{\"router_type\":\"arrow\",\"experts\":[%s],\"top_k\":%d}",
             names, TOP_K);
    double t0 = now_s();
    core_router_t *r = router_build(cfg, NULL, 0, experts, m, "arrow router");
    *build_s = now_s() - t0;
    return r;
}

/* X-LoRA, PEFT layout: a depth-1 classifier (n_experts, dim) + bias, not layerwise. */
static core_router_t *xlora_new(core_lora_t **experts, const core_model_t *m)
{
    int dim = m->cfg.dim;
    img_tensor_t t[2] = {
        {.name = "base_model.internal_xlora_classifier.layers.0.weight", .n_dims = 2,
         .shape = {N_EXPERTS, dim}, .data = rand_floats((size_t)N_EXPERTS * dim, 1.0f / sqrtf((float)dim))},
        {.name = "base_model.internal_xlora_classifier.layers.0.bias", .n_dims = 1,
         .shape = {N_EXPERTS, 0}, .data = rand_floats(N_EXPERTS, 0.1f)},
    };
    size_t len;
    uint8_t *img = st_image(t, 2, &len);
    char map[512], cfg[1024];
    size_t pos = 0;
    for (int e = 0; e < N_EXPERTS; e++)
        pos += (size_t)snprintf(map + pos, sizeof map - pos, "%s\"a%02d\":\"a%02d\"", e ? "," : "", e, e);
    snprintf(cfg, sizeof cfg,
             "{\"peft_type\":\"XLORA\",\"hidden_size\":%d,\"adapters\":{%s},\"xlora_depth\":1,"
             "\"layerwise_scalings\":false,\"top_k_lora\":%d,\"enable_softmax\":true}",
             dim, map, TOP_K);
    core_router_t *r = router_build(cfg, img, len, experts, m, "xlora router");
    free((void *)t[0].data);
    free((void *)t[1].data);
    free(img);
    return r;
}

/* ---- decode runs ------------------------------------------------------------------- */

typedef struct {
    const core_model_t *m;
    core_kv_pool_t *pool;
    core_fwd_t *f;
    int32_t *toks; /* N_SEQ * (PROMPT + MAX_STEPS) seeded ids */
    float *logits; /* N_SEQ * n_vocab */
    int n_steps, n_repeats;
} bench_t;

/* What one sequence runs: an adapter set, a router, or neither (the base). */
typedef struct {
    const core_aset_t *aset;
    const core_router_t *router;
} seq_t;

/* One configuration: what each sequence runs, its caches and items while a round runs,
 * and every timed step so far. */
typedef struct {
    char key; /* its letter in CONFIGS */
    seq_t seqs[N_SEQ];
    core_kv_t *kv[N_SEQ], *kvs[N_SEQ]; /* kvs: X-LoRA's scaling-pass caches, else NULL */
    core_fwd_item_t items[N_SEQ];
    double t[16 * MAX_STEPS];
    int nt;
} config_t;

static void config_set(config_t *c, char key, const core_aset_t *const *sets,
                       const core_router_t *r)
{
    c->key = key;
    c->nt = 0;
    for (int s = 0; s < N_SEQ; s++)
        c->seqs[s] = (seq_t){.aset = sets ? sets[s] : NULL, .router = r};
}

/* New caches and one prefill step of the N_SEQ prompts (not timed). */
static void config_prefill(bench_t *B, config_t *c)
{
    core_err_t err = {{0}};
    int stride = PROMPT + MAX_STEPS;
    for (int s = 0; s < N_SEQ; s++) {
        const core_router_t *r = c->seqs[s].router;
        c->kvs[s] = NULL;
        if (!(c->kv[s] = core_kv_new(B->pool)))
            die("kv_new", NULL);
        if (r && r->kind == CORE_ROUTER_XLORA && !(c->kvs[s] = core_kv_new(B->pool)))
            die("kv_new (scaling)", NULL);
        c->items[s] = (core_fwd_item_t){.tokens = B->toks + s * stride, .n_tokens = PROMPT,
                                        .kv = c->kv[s], .aset = c->seqs[s].aset, .router = r,
                                        .kv_scaling = c->kvs[s],
                                        .logits = B->logits + (size_t)s * B->m->cfg.n_vocab};
    }
    if (core_forward(B->m, B->f, c->items, N_SEQ, &err) != RC_OK)
        die("prefill", &err);
}

/* Decode step `step` of all N_SEQ sequences, timed into c->t. */
static void config_step(bench_t *B, config_t *c, int step)
{
    core_err_t err = {{0}};
    int stride = PROMPT + MAX_STEPS;
    for (int s = 0; s < N_SEQ; s++) {
        c->items[s].tokens = B->toks + s * stride + PROMPT + step;
        c->items[s].n_tokens = 1;
    }
    double t0 = now_s();
    if (core_forward(B->m, B->f, c->items, N_SEQ, &err) != RC_OK)
        die("decode", &err);
    c->t[c->nt++] = now_s() - t0;
}

static void config_free_caches(config_t *c)
{
    for (int s = 0; s < N_SEQ; s++) {
        core_kv_free(c->kv[s]);
        if (c->kvs[s])
            core_kv_free(c->kvs[s]);
    }
}

/* One round: every chosen configuration prefills, then their decode steps alternate (step
 * 0 of each, step 1 of each, ...), so a burst of other load on a shared machine lands on
 * all of them alike instead of skewing one ratio. */
static void run_round(bench_t *B, config_t *cf, int n_cf, const char *want)
{
    for (int k = 0; k < n_cf; k++)
        if (strchr(want, cf[k].key))
            config_prefill(B, &cf[k]);
    for (int step = 0; step < B->n_steps; step++)
        for (int k = 0; k < n_cf; k++)
            if (strchr(want, cf[k].key))
                config_step(B, &cf[k], step);
    for (int k = 0; k < n_cf; k++)
        if (strchr(want, cf[k].key))
            config_free_caches(&cf[k]);
}

/* Decode tokens/s of the N_SEQ concurrent sequences: N_SEQ / median step time (0 when
 * the configuration did not run). Also prints the median and fastest step. */
static double config_rate(config_t *c, const char *name)
{
    if (!c->nt)
        return 0;
    double med = median(c->t, (size_t)c->nt); /* sorts: t[0] is the fastest */
    printf("# %s: step median %.1f ms, fastest %.1f ms over %d steps\n", name, med * 1e3,
           c->t[0] * 1e3, c->nt);
    return N_SEQ / med;
}

/* ---- routing probe: what the routed pass sees at layer 0 ---------------------------- */

/* For PHATGOOSE / Arrow: the layer-0 q_proj input of the first decode step of every
 * sequence (RMSNorm of its token's embedding times input_layernorm) routed by r: mean
 * experts kept per token, distinct experts over the batch (one shrink + expand each), and
 * the time core_router_route takes for every module of every layer of one decode step. */
static void route_probe(const bench_t *B, const core_router_t *r, const char *name)
{
    const core_config_t *c = &B->m->cfg;
    int dim = c->dim, stride = PROMPT + MAX_STEPS;
    float *x = malloc(sizeof(float) * N_SEQ * (size_t)(dim > c->hidden_dim ? dim : c->hidden_dim));
    float lam[N_SEQ * N_EXPERTS];
    if (!x)
        die("out of memory", NULL);
    for (int s = 0; s < N_SEQ; s++) {
        const float *e = B->m->embed + (size_t)B->toks[s * stride + PROMPT] * dim;
        double ss = 0;
        for (int i = 0; i < dim; i++)
            ss += (double)e[i] * e[i];
        float inv = 1.0f / sqrtf((float)(ss / dim) + c->norm_eps);
        for (int i = 0; i < dim; i++)
            x[(size_t)s * dim + i] = e[i] * inv * B->m->layers[0].attn_norm[i];
    }
    core_route_params_t rp = {0};
    core_router_route(r, &rp, 0, CORE_MOD_Q, x, N_SEQ, (size_t)dim, lam);
    int kept = 0;
    uint32_t used = 0;
    for (int i = 0; i < N_SEQ * N_EXPERTS; i++)
        if (lam[i] != 0.0f) {
            kept++;
            used |= 1u << (i % N_EXPERTS);
        }
    /* timing: random rows of each module's width through every module */
    size_t n_x = (size_t)N_SEQ * (size_t)(dim > c->hidden_dim ? dim : c->hidden_dim);
    for (size_t i = 0; i < n_x; i++)
        x[i] = rand_normal();
    int reps = 20;
    double t0 = now_s();
    for (int k = 0; k < reps; k++)
        for (int l = 0; l < c->n_layers; l++)
            for (int mm = 0; mm < CORE_MOD__COUNT; mm++) {
                int n_out, n_in;
                core_mod_shape(c, (core_mod_t)mm, &n_out, &n_in);
                core_router_route(r, &rp, l, (core_mod_t)mm, x, N_SEQ, (size_t)n_in, lam);
            }
    double per_step = (now_s() - t0) / reps;
    printf("# %s layer-0 q_proj: %.2f experts kept per token, %d of %d distinct over %d "
           "tokens; routing every module of one step: %.3f ms\n",
           name, (double)kept / N_SEQ, __builtin_popcount(used), N_EXPERTS, N_SEQ, per_step * 1e3);
    free(x);
}

static void setup(bench_t *B, const core_model_t *m)
{
    core_err_t err = {{0}};
    B->m = m;
    B->f = core_fwd_new(m);
    /* A round holds every configuration's caches at once: 5 x 16 sequences plus X-LoRA's
     * scaling-pass caches, each up to PROMPT + n_steps positions in blocks of 16. */
    const core_config_t *c = &m->cfg;
    size_t per_tok = 2 * sizeof(float) * (size_t)c->n_layers * (size_t)c->n_kv_heads * c->head_dim;
    size_t per_cache = (size_t)(PROMPT + B->n_steps + 15) / 16 * 16 * per_tok;
    size_t kv_budget = (6 * N_SEQ + 4) * per_cache;
    if (!B->f || core_fwd_reserve(B->f, N_SEQ * PROMPT, N_EXPERTS * 16, N_SEQ) != RC_OK ||
        core_kv_pool_new(&m->cfg, kv_budget, 16, &B->pool, &err) != RC_OK)
        die("fwd/kv pool", &err);
    B->toks = malloc(sizeof(int32_t) * N_SEQ * (PROMPT + MAX_STEPS));
    B->logits = malloc(sizeof(float) * N_SEQ * (size_t)m->cfg.n_vocab);
    if (!B->toks || !B->logits)
        die("out of memory", NULL);
    uint32_t rng = 12345;
    for (int i = 0; i < N_SEQ * (PROMPT + MAX_STEPS); i++) {
        rng = rng * 1664525u + 1013904223u;
        B->toks[i] = (int32_t)((rng >> 8) % (uint32_t)m->cfg.n_vocab);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_route BENCH_DIR [N_STEPS] [N_REPEATS] [CONFIGS]\n");
        return 2;
    }
    bench_t B = {.n_steps = argc > 2 ? atoi(argv[2]) : 32, .n_repeats = argc > 3 ? atoi(argv[3]) : 3};
    if (B.n_steps < 1 || B.n_steps > MAX_STEPS || B.n_repeats < 1 || B.n_repeats > 16) {
        fprintf(stderr, "bench_route: N_STEPS 1..%d, N_REPEATS 1..16\n", MAX_STEPS);
        return 2;
    }
    const char *want = argc > 4 ? argv[4] : "spaxb";
    core_gemm_init(0);
    printf("# %d compute threads, kernel %s\n", core_pool_n_threads(),
           core_gemm_kernel_available() ? "AVX2/FMA" : "unavailable (BLAS only)");

    char path[4096];
    core_err_t err = {{0}};
    core_model_t *m = NULL;
    snprintf(path, sizeof path, "%s/model", argv[1]);
    if (core_model_load(path, &m, &err) != RC_OK)
        die(path, &err);
    core_lora_t *loras[N_ADAPTERS];
    for (int i = 0; i < N_ADAPTERS; i++) {
        snprintf(path, sizeof path, "%s/adapters/a%02d", argv[1], i);
        if (core_lora_load(path, &m->cfg, &loras[i], &err) != RC_OK)
            die(path, &err);
    }
    setup(&B, m);

    core_aset_t *single[N_SEQ];
    for (int s = 0; s < N_SEQ; s++) {
        core_lora_term_t term = {loras[s % N_ADAPTERS], 1.0f};
        if (core_aset_new(&term, 1, &single[s], &err) != RC_OK)
            die("aset_new", &err);
    }

    double arrow_build = 0;
    core_router_t *pg = phatgoose_new(loras, m);
    core_router_t *ar = arrow_new(loras, m, &arrow_build);
    core_router_t *xl = xlora_new(loras, m);
    bench_line("route_arrow_build_s", arrow_build, "s");
    printf("# router bytes: phatgoose %zu, arrow %zu, xlora %zu; experts a00..a%02d top_k %d\n",
           pg->n_bytes, ar->n_bytes, xl->n_bytes, N_EXPERTS - 1, TOP_K);

    route_probe(&B, pg, "phatgoose");
    route_probe(&B, ar, "arrow");

    enum { C_S, C_P, C_A, C_X, C_B, C__N };
    static config_t cf[C__N];
    config_set(&cf[C_S], 's', (const core_aset_t *const *)single, NULL);
    config_set(&cf[C_P], 'p', NULL, pg);
    config_set(&cf[C_A], 'a', NULL, ar);
    config_set(&cf[C_X], 'x', NULL, xl);
    config_set(&cf[C_B], 'b', NULL, NULL);
    for (int r = 0; r < B.n_repeats; r++)
        run_round(&B, cf, C__N, want);

    double s1 = config_rate(&cf[C_S], "single"), p = config_rate(&cf[C_P], "phatgoose");
    double a = config_rate(&cf[C_A], "arrow"), x = config_rate(&cf[C_X], "xlora");
    double b = config_rate(&cf[C_B], "base");
    if (s1 > 0)
        bench_line("route_single_tok_s", s1, "tok/s");
    if (p > 0)
        bench_line("route_phatgoose_tok_s", p, "tok/s");
    if (a > 0)
        bench_line("route_arrow_tok_s", a, "tok/s");
    if (x > 0)
        bench_line("route_xlora_tok_s", x, "tok/s");
    if (s1 > 0 && p > 0)
        target("route_phatgoose_over_single", p / s1, 0.6);
    if (s1 > 0 && a > 0)
        target("route_arrow_over_single", a / s1, 0.6);
    if (s1 > 0 && x > 0) {
        bench_line("route_xlora_over_single", x / s1, "ratio");
        printf("# X-LoRA runs a scaling pass (the base without lm_head) and the routed pass "
               "per step\n");
    }
    if (b > 0) {
        printf("# route_base_tok_s %.3f tok/s (16 on the base, for context)", b);
        if (s1 > 0)
            printf("; single/base %.3f", s1 / b);
        printf("\n");
    }

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("# rss steady %.1f MB, peak %.1f MB\n", rss_kb("VmRSS:") / 1e3, ru.ru_maxrss / 1e3);

    core_router_release(pg);
    core_router_release(ar);
    core_router_release(xl);
    for (int s = 0; s < N_SEQ; s++)
        core_aset_release(single[s]);
    for (int i = 0; i < N_ADAPTERS; i++)
        core_lora_release(loras[i]);
    core_kv_pool_free(B.pool);
    core_fwd_free(B.f);
    free(B.toks);
    free(B.logits);
    core_model_free(m);
    return 0;
}
