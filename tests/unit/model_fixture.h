/* model_fixture.h - shared by test_model.c and test_model_load.c (header-only, test code):
 * seeded tiny in-memory models and LoRAs, a naive double-precision reference forward of one
 * sequence with no cache (written from the HF modeling code, not from core/forward.c),
 * and helpers that run core_forward. */
#ifndef TESTS_MODEL_FIXTURE_H
#define TESTS_MODEL_FIXTURE_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/lora.h"
#include "core/model.h"
#include "tests/unit/harness.h"

/* ---- helpers -------------------------------------------------------------------- */

static uint32_t rng_state;
static inline float frand(void) /* uniform [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return (float)((rng_state >> 8) * (1.0 / 8388608.0)) - 1.0f;
}

static inline float *rand_vec(size_t n, float scale, float offset)
{
    float *v = malloc(n * sizeof *v);
    ASSERT(v);
    for (size_t i = 0; i < n; i++)
        v[i] = offset + scale * frand();
    return v;
}

static inline float *dup_vec(const float *src, size_t n)
{
    float *v = malloc(n * sizeof *v);
    ASSERT(v);
    memcpy(v, src, n * sizeof *v);
    return v;
}

static inline double max_diff(const float *a, const float *b, size_t n)
{
    double d = 0;
    for (size_t i = 0; i < n; i++)
        d = fmax(d, fabs((double)a[i] - (double)b[i]));
    return d;
}

static inline double max_diff_ref(const float *a, const double *b, size_t n)
{
    double d = 0;
    for (size_t i = 0; i < n; i++)
        d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

/* The tiny test model: 61 tokens, dim 32, 2 layers, 4 heads over kv heads, head_dim 8. */
#define TINY_JSON_KV(kv, extra)                                                                    \
    "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\","                          \
    "\"vocab_size\":61,\"hidden_size\":32,\"intermediate_size\":48,"                               \
    "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":" kv ","            \
    "\"max_position_embeddings\":64,\"rms_norm_eps\":1e-5,\"rope_theta\":10000.0" extra "}"
#define TINY_JSON(extra) TINY_JSON_KV("2", extra)

static inline core_config_t parse_ok(const char *json)
{
    core_config_t c;
    core_err_t err = {{0}};
    ASSERT_RC(core_config_parse(json, &c, &err), RC_OK, &err);
    return c;
}

/* ---- tiny in-memory models ------------------------------------------------------- */

static inline core_model_t *tiny_model(const core_config_t *cfg, uint32_t seed)
{
    core_model_t *m = calloc(1, sizeof *m);
    ASSERT(m);
    rng_state = seed;
    m->cfg = *cfg;
    size_t dim = (size_t)cfg->dim, vocab = (size_t)cfg->n_vocab;
    m->embed = rand_vec(vocab * dim, 1.0f, 0.0f);
    m->final_norm = rand_vec(dim, 0.2f, 1.0f);
    m->lm_head = cfg->tie_embeddings ? m->embed : rand_vec(vocab * dim, 0.3f, 0.0f);
    m->layers = calloc((size_t)cfg->n_layers, sizeof *m->layers);
    ASSERT(m->layers);
    for (int l = 0; l < cfg->n_layers; l++) {
        core_layer_t *L = &m->layers[l];
        L->attn_norm = rand_vec(dim, 0.2f, 1.0f);
        L->mlp_norm = rand_vec(dim, 0.2f, 1.0f);
        for (int k = 0; k < CORE_MOD__COUNT; k++) {
            core_linear_t *lin = &L->lin[k];
            core_mod_shape(cfg, (core_mod_t)k, &lin->n_out, &lin->n_in);
            lin->w = rand_vec((size_t)lin->n_out * lin->n_in, 1.5f / sqrtf((float)lin->n_in), 0.0f);
            if (k <= CORE_MOD_V && cfg->qkv_bias)
                lin->b = rand_vec((size_t)lin->n_out, 0.3f, 0.0f);
        }
    }
    return m;
}

static inline void tiny_free(core_model_t *m)
{
    free(m->embed);
    free(m->final_norm);
    if (m->lm_head != m->embed)
        free(m->lm_head);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        free(m->layers[l].attn_norm);
        free(m->layers[l].mlp_norm);
        for (int k = 0; k < CORE_MOD__COUNT; k++) {
            free(m->layers[l].lin[k].w);
            free(m->layers[l].lin[k].b);
        }
    }
    free(m->layers);
    free(m);
}

/* A LoRA on the modules in mask (bit per core_mod_t), every layer, rank r. */
static inline core_lora_t *tiny_lora(const core_config_t *c, uint32_t seed, unsigned mask, int r,
                              float alpha)
{
    core_lora_t *lo = calloc(1, sizeof *lo);
    ASSERT(lo);
    rng_state = seed;
    lo->n_layers = c->n_layers;
    lo->rank = r;
    lo->alpha = alpha;
    lo->target_mask = mask;
    lo->refcount = 1;
    lo->mods = calloc((size_t)c->n_layers * CORE_MOD__COUNT, sizeof *lo->mods);
    ASSERT(lo->mods);
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < CORE_MOD__COUNT; k++) {
            if (!(mask & (1u << k)))
                continue;
            core_lora_mod_t *md = &lo->mods[l * CORE_MOD__COUNT + k];
            int n_out, n_in;
            core_mod_shape(c, (core_mod_t)k, &n_out, &n_in);
            md->r = r;
            md->n_out = n_out, md->n_in = n_in;
            md->scale = alpha / (float)r;
            md->A = rand_vec((size_t)r * n_in, 0.4f, 0.0f);
            md->B = rand_vec((size_t)n_out * r, 0.4f, 0.0f);
        }
    return lo;
}

static inline void tiny_lora_free(core_lora_t *lo)
{
    for (int i = 0; i < lo->n_layers * CORE_MOD__COUNT; i++) {
        free(lo->mods[i].A);
        free(lo->mods[i].B);
    }
    free(lo->mods);
    free(lo);
}

/* tiny_model(cfg, seed) with W += sum_i w_i s_i B_i A_i over the set's terms on every
 * targeted module: the merged model PEFT's merge_and_unload gives. set may be NULL. */
static inline core_model_t *tiny_merged(const core_config_t *cfg, uint32_t seed, const core_aset_t *set)
{
    core_model_t *m = tiny_model(cfg, seed);
    for (int t = 0; set && t < set->n; t++)
        for (int l = 0; l < m->cfg.n_layers; l++)
            for (int k = 0; k < CORE_MOD__COUNT; k++) {
                const core_lora_mod_t *md = core_lora_mod(set->terms[t].lora, l, (core_mod_t)k);
                core_linear_t *lin = &m->layers[l].lin[k];
                double ws = (double)set->terms[t].weight * md->scale;
                for (int o = 0; md->A && o < lin->n_out; o++)
                    for (int i = 0; i < lin->n_in; i++) {
                        double d = 0;
                        for (int j = 0; j < md->r; j++)
                            d += (double)md->B[o * md->r + j] * md->A[j * lin->n_in + i];
                        lin->w[(size_t)o * lin->n_in + i] += (float)(ws * d);
                    }
            }
    return m;
}

/* ---- the naive reference (double, one sequence, no cache) ------------------------ */

static inline void ref_rmsnorm(double *y, const double *x, const float *w, int dim, double eps)
{
    double ss = 0;
    for (int i = 0; i < dim; i++)
        ss += x[i] * x[i];
    double inv = 1.0 / sqrt(ss / dim + eps);
    for (int i = 0; i < dim; i++)
        y[i] = x[i] * inv * w[i];
}

/* y (n_out) = W x + b */
static inline void ref_linear(double *y, const double *x, const core_linear_t *L)
{
    for (int o = 0; o < L->n_out; o++) {
        double s = L->b ? L->b[o] : 0.0;
        for (int i = 0; i < L->n_in; i++)
            s += (double)L->w[(size_t)o * L->n_in + i] * x[i];
        y[o] = s;
    }
}

/* transformers' _compute_rope_parameters / _compute_llama3_parameters, literally. */
static inline double ref_inv_freq(const core_config_t *c, int i)
{
    double f = 1.0 / pow(c->rope_theta, (2.0 * i) / c->head_dim);
    if (c->rope_scaling == 1)
        return f / c->rope_factor;
    if (c->rope_scaling != 2)
        return f;
    double low_wl = c->rope_orig_max_pos / c->rope_low_freq_factor;
    double high_wl = c->rope_orig_max_pos / c->rope_high_freq_factor;
    double wl = 2 * M_PI / f;
    double fl = wl > low_wl ? f / c->rope_factor : f;
    double smooth = (c->rope_orig_max_pos / wl - c->rope_low_freq_factor) /
                    (c->rope_high_freq_factor - c->rope_low_freq_factor);
    double smoothed = (1 - smooth) * fl / c->rope_factor + smooth * fl;
    int medium = !(wl < high_wl) && !(wl > low_wl);
    return medium ? smoothed : fl;
}

/* rotate_half: out = x*cos + rotate_half(x)*sin, cos/sin = cat(freqs, freqs). */
static inline void ref_rope(double *v, const core_config_t *c, int pos)
{
    int hd = c->head_dim, half = hd / 2;
    double rot[1024]; /* head_dim <= 1024 */
    for (int i = 0; i < hd; i++)
        rot[i] = i < half ? -v[i + half] : v[i - half];
    for (int i = 0; i < hd; i++) {
        double a = pos * ref_inv_freq(c, i % half);
        v[i] = v[i] * cos(a) + rot[i] * sin(a);
    }
}

/* logits: (n, n_vocab) for every position. */
static inline void ref_forward(const core_model_t *m, const int32_t *tok, int n, double *logits)
{
    const core_config_t *c = &m->cfg;
    int dim = c->dim, hd = c->head_dim, H = c->n_heads, KV = c->n_kv_heads;
    int qd = H * hd, kvd = KV * hd, hid = c->hidden_dim;
    double *x = calloc((size_t)n * dim, sizeof *x), *xn = calloc((size_t)dim, sizeof *xn);
    double *q = calloc((size_t)n * qd, sizeof *q), *k = calloc((size_t)n * kvd, sizeof *k);
    double *v = calloc((size_t)n * kvd, sizeof *v), *att = calloc((size_t)qd, sizeof *att);
    double *o = calloc((size_t)dim, sizeof *o), *g = calloc((size_t)hid, sizeof *g);
    double *u = calloc((size_t)hid, sizeof *u), *p = calloc((size_t)n, sizeof *p);
    ASSERT(x && xn && q && k && v && att && o && g && u && p);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < dim; i++)
            x[t * dim + i] = m->embed[(size_t)tok[t] * dim + i];
    for (int l = 0; l < c->n_layers; l++) {
        const core_layer_t *L = &m->layers[l];
        for (int t = 0; t < n; t++) {
            ref_rmsnorm(xn, x + t * dim, L->attn_norm, dim, c->norm_eps);
            ref_linear(q + t * qd, xn, &L->lin[CORE_MOD_Q]);
            ref_linear(k + t * kvd, xn, &L->lin[CORE_MOD_K]);
            ref_linear(v + t * kvd, xn, &L->lin[CORE_MOD_V]);
            for (int h = 0; h < H; h++)
                ref_rope(q + t * qd + h * hd, c, t);
            for (int h = 0; h < KV; h++)
                ref_rope(k + t * kvd + h * hd, c, t);
        }
        for (int t = 0; t < n; t++) {
            for (int h = 0; h < H; h++) {
                int kh = h / (H / KV);
                double mx = -1e300, sum = 0;
                for (int j = 0; j <= t; j++) {
                    double s = 0;
                    for (int i = 0; i < hd; i++)
                        s += q[t * qd + h * hd + i] * k[j * kvd + kh * hd + i];
                    p[j] = s / sqrt((double)hd);
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j <= t; j++)
                    sum += p[j] = exp(p[j] - mx);
                for (int i = 0; i < hd; i++) {
                    double a = 0;
                    for (int j = 0; j <= t; j++)
                        a += p[j] / sum * v[j * kvd + kh * hd + i];
                    att[h * hd + i] = a;
                }
            }
            ref_linear(o, att, &L->lin[CORE_MOD_O]);
            for (int i = 0; i < dim; i++)
                x[t * dim + i] += o[i];
            ref_rmsnorm(xn, x + t * dim, L->mlp_norm, dim, c->norm_eps);
            ref_linear(g, xn, &L->lin[CORE_MOD_GATE]);
            ref_linear(u, xn, &L->lin[CORE_MOD_UP]);
            for (int i = 0; i < hid; i++)
                g[i] = g[i] / (1 + exp(-g[i])) * u[i];
            ref_linear(o, g, &L->lin[CORE_MOD_DOWN]);
            for (int i = 0; i < dim; i++)
                x[t * dim + i] += o[i];
        }
    }
    for (int t = 0; t < n; t++) {
        ref_rmsnorm(xn, x + t * dim, m->final_norm, dim, c->norm_eps);
        for (int w = 0; w < c->n_vocab; w++) {
            double s = 0;
            for (int i = 0; i < dim; i++)
                s += (double)m->lm_head[(size_t)w * dim + i] * xn[i];
            logits[(size_t)t * c->n_vocab + w] = s;
        }
    }
    free(x), free(xn), free(q), free(k), free(v), free(att), free(o), free(g), free(u), free(p);
}

/* ---- running core_forward -------------------------------------------------------- */

static inline int32_t *seq_tokens(int n, uint32_t seed, int vocab)
{
    int32_t *t = malloc((size_t)n * sizeof *t);
    ASSERT(t);
    for (int i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        t[i] = (int32_t)((seed >> 8) % (uint32_t)vocab);
    }
    return t;
}

/* A pool of exactly n_blocks blocks of bt positions. */
static inline core_kv_pool_t *pool_new(const core_config_t *c, int bt, int n_blocks)
{
    size_t bb = (size_t)c->n_layers * 2 * (size_t)bt * (size_t)(c->n_kv_heads * c->head_dim) *
                sizeof(float);
    core_kv_pool_t *p = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(core_kv_pool_new(c, bb * (size_t)n_blocks + bb / 2, bt, &p, &err), RC_OK, &err);
    ASSERT_EQ(core_kv_pool_block_bytes(p), bb);
    ASSERT_EQ(core_kv_pool_n_blocks(p), n_blocks);
    ASSERT_EQ(core_kv_pool_n_free(p), n_blocks);
    ASSERT_EQ(core_kv_pool_block_tokens(p), bt);
    return p;
}

/* A pool big enough for n sequences of max_pos, blocks of 16. */
static inline core_kv_pool_t *pool_for(const core_config_t *c, int n)
{
    return pool_new(c, 16, n * ((c->max_pos + 15) / 16));
}

/* A set of n weighted LoRAs (each retained by the set). */
static inline core_aset_t *set_of(int n, core_lora_t *const *lo, const float *w)
{
    core_lora_term_t t[CORE_ASET_MAX];
    core_aset_t *s = NULL;
    core_err_t err = {{0}};
    for (int i = 0; i < n; i++)
        t[i] = (core_lora_term_t){.lora = lo[i], .weight = w[i]};
    ASSERT_RC(core_aset_new(t, n, &s, &err), RC_OK, &err);
    return s;
}

static inline core_aset_t *set1(core_lora_t *lo, float w)
{
    return set_of(1, &lo, &w);
}

/* One sequence in a fresh cache; logits of every position (n, vocab). */
static inline float *run_alone(const core_model_t *m, const int32_t *tok, int n, const core_aset_t *s)
{
    core_fwd_t *f = core_fwd_new(m);
    core_kv_pool_t *pool = pool_for(&m->cfg, 1);
    core_kv_t *kv = core_kv_new(pool);
    float *logits = malloc((size_t)n * m->cfg.n_vocab * sizeof *logits);
    core_err_t err = {{0}};
    ASSERT(f && kv && logits);
    core_fwd_item_t it = {
        .tokens = tok, .n_tokens = n, .kv = kv, .aset = s, .logits = logits, .all_logits = true};
    ASSERT_RC(core_forward(m, f, &it, 1, &err), RC_OK, &err);
    ASSERT_EQ(core_kv_len(kv), n);
    core_kv_free(kv);
    ASSERT_EQ(core_kv_pool_n_free(pool), core_kv_pool_n_blocks(pool));
    core_kv_pool_free(pool);
    core_fwd_free(f);
    return logits;
}

static inline void check_vs_ref(const core_model_t *m, int n, uint32_t seed, double tol)
{
    int32_t *tok = seq_tokens(n, seed, m->cfg.n_vocab);
    size_t nv = (size_t)n * m->cfg.n_vocab;
    double *ref = malloc(nv * sizeof *ref);
    ref_forward(m, tok, n, ref);
    float *got = run_alone(m, tok, n, NULL);
    double d = max_diff_ref(got, ref, nv), mag = 0;
    for (size_t i = 0; i < nv; i++)
        mag = fmax(mag, fabs(ref[i]));
    ASSERT(mag > 0.5); /* the logits are not trivially small */
    ASSERT_NEAR(d, 0.0, tol);
    free(tok), free(ref), free(got);
}

#endif
