/* test_model.c - config parsing, the batched forward pass against a naive reference,
 * the paged KV cache (block sizes agree, all-or-none reservation, accounting), GQA, LoRA
 * and adapter sets in one heterogeneous batch (== alone == merged), validation, and
 * loading from disk.
 *
 * The reference forward below is a plain double-precision triple-loop implementation of
 * one sequence with no cache, written from the HF modeling code, not from core/forward.c.
 * Models are tiny and seeded; folders go under tests/tmp/model_<pid>/. */
#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/lora.h"
#include "core/model.h"
#include "tests/unit/harness.h"
#include "tests/unit/st_write.h"

/* ---- helpers -------------------------------------------------------------------- */

static uint32_t rng_state;
static float frand(void) /* uniform [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return (float)((rng_state >> 8) * (1.0 / 8388608.0)) - 1.0f;
}

static float *rand_vec(size_t n, float scale, float offset)
{
    float *v = malloc(n * sizeof *v);
    ASSERT(v);
    for (size_t i = 0; i < n; i++)
        v[i] = offset + scale * frand();
    return v;
}

static float *dup_vec(const float *src, size_t n)
{
    float *v = malloc(n * sizeof *v);
    ASSERT(v);
    memcpy(v, src, n * sizeof *v);
    return v;
}

static double max_diff(const float *a, const float *b, size_t n)
{
    double d = 0;
    for (size_t i = 0; i < n; i++)
        d = fmax(d, fabs((double)a[i] - (double)b[i]));
    return d;
}

static double max_diff_ref(const float *a, const double *b, size_t n)
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

static core_config_t parse_ok(const char *json)
{
    core_config_t c;
    core_err_t err = {{0}};
    ASSERT_RC(core_config_parse(json, &c, &err), RC_OK, &err);
    return c;
}

/* ---- tiny in-memory models ------------------------------------------------------- */

static core_model_t *tiny_model(const core_config_t *cfg, uint32_t seed)
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

static void tiny_free(core_model_t *m)
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
static core_lora_t *tiny_lora(const core_config_t *c, uint32_t seed, unsigned mask, int r,
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

static void tiny_lora_free(core_lora_t *lo)
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
static core_model_t *tiny_merged(const core_config_t *cfg, uint32_t seed, const core_aset_t *set)
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

static void ref_rmsnorm(double *y, const double *x, const float *w, int dim, double eps)
{
    double ss = 0;
    for (int i = 0; i < dim; i++)
        ss += x[i] * x[i];
    double inv = 1.0 / sqrt(ss / dim + eps);
    for (int i = 0; i < dim; i++)
        y[i] = x[i] * inv * w[i];
}

/* y (n_out) = W x + b */
static void ref_linear(double *y, const double *x, const core_linear_t *L)
{
    for (int o = 0; o < L->n_out; o++) {
        double s = L->b ? L->b[o] : 0.0;
        for (int i = 0; i < L->n_in; i++)
            s += (double)L->w[(size_t)o * L->n_in + i] * x[i];
        y[o] = s;
    }
}

/* transformers' _compute_rope_parameters / _compute_llama3_parameters, literally. */
static double ref_inv_freq(const core_config_t *c, int i)
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
static void ref_rope(double *v, const core_config_t *c, int pos)
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
static void ref_forward(const core_model_t *m, const int32_t *tok, int n, double *logits)
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

static int32_t *seq_tokens(int n, uint32_t seed, int vocab)
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
static core_kv_pool_t *pool_new(const core_config_t *c, int bt, int n_blocks)
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
static core_kv_pool_t *pool_for(const core_config_t *c, int n)
{
    return pool_new(c, 16, n * ((c->max_pos + 15) / 16));
}

/* A set of n weighted LoRAs (each retained by the set). */
static core_aset_t *set_of(int n, core_lora_t *const *lo, const float *w)
{
    core_lora_term_t t[CORE_ASET_MAX];
    core_aset_t *s = NULL;
    core_err_t err = {{0}};
    for (int i = 0; i < n; i++)
        t[i] = (core_lora_term_t){.lora = lo[i], .weight = w[i]};
    ASSERT_RC(core_aset_new(t, n, &s, &err), RC_OK, &err);
    return s;
}

static core_aset_t *set1(core_lora_t *lo, float w)
{
    return set_of(1, &lo, &w);
}

/* One sequence in a fresh cache; logits of every position (n, vocab). */
static float *run_alone(const core_model_t *m, const int32_t *tok, int n, const core_aset_t *s)
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

static void check_vs_ref(const core_model_t *m, int n, uint32_t seed, double tol)
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

/* ---- config parsing --------------------------------------------------------------- */

TEST(mod_names_and_shapes)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    ASSERT_STREQ(core_mod_name(CORE_MOD_Q), "q_proj");
    ASSERT_STREQ(core_mod_name(CORE_MOD_DOWN), "down_proj");
    ASSERT_STREQ(core_mod_parent(CORE_MOD_O), "self_attn");
    ASSERT_STREQ(core_mod_parent(CORE_MOD_GATE), "mlp");
    int o, i;
    core_mod_shape(&c, CORE_MOD_K, &o, &i);
    ASSERT_EQ(o, 16);
    ASSERT_EQ(i, 32);
    core_mod_shape(&c, CORE_MOD_O, &o, &i);
    ASSERT_EQ(o, 32);
    ASSERT_EQ(i, 32);
    core_mod_shape(&c, CORE_MOD_DOWN, &o, &i);
    ASSERT_EQ(o, 32);
    ASSERT_EQ(i, 48);
}

TEST(config_llama)
{
    core_config_t c =
        parse_ok(TINY_JSON(",\"bos_token_id\":1,\"eos_token_id\":2,\"tie_word_embeddings\":false,"
                           "\"rope_scaling\":{\"rope_type\":\"llama3\","
                           "\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                           "\"original_max_position_embeddings\":8192},\"hidden_act\":\"silu\""));
    ASSERT_STREQ(c.arch, "LlamaForCausalLM");
    ASSERT_STREQ(c.model_type, "llama");
    ASSERT_EQ(c.n_vocab, 61);
    ASSERT_EQ(c.dim, 32);
    ASSERT_EQ(c.hidden_dim, 48);
    ASSERT_EQ(c.n_layers, 2);
    ASSERT_EQ(c.n_heads, 4);
    ASSERT_EQ(c.n_kv_heads, 2);
    ASSERT_EQ(c.head_dim, 8);
    ASSERT_EQ(c.max_pos, 64);
    ASSERT_NEAR(c.norm_eps, 1e-5, 1e-12);
    ASSERT_EQ(c.rope_scaling, 2);
    ASSERT_NEAR(c.rope_factor, 8.0, 0);
    ASSERT_NEAR(c.rope_high_freq_factor, 4.0, 0);
    ASSERT_EQ(c.rope_orig_max_pos, 8192);
    ASSERT(!c.tie_embeddings && !c.qkv_bias);
    ASSERT_EQ(c.bos_id, 1);
    ASSERT_EQ(c.n_eos, 1);
    ASSERT_EQ(c.eos_ids[0], 2);
}

TEST(config_defaults)
{
    core_config_t c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,"
                               "\"hidden_size\":64,\"intermediate_size\":128,"
                               "\"num_hidden_layers\":1,\"num_attention_heads\":4,"
                               "\"rope_scaling\":null}");
    ASSERT_EQ(c.n_kv_heads, 4);
    ASSERT_EQ(c.head_dim, 16);
    ASSERT_EQ(c.max_pos, 2048);
    ASSERT_NEAR(c.rope_theta, 10000.0, 0);
    ASSERT_NEAR(c.norm_eps, 1e-6, 1e-12);
    ASSERT_EQ(c.rope_scaling, 0);
    ASSERT_EQ(c.bos_id, -1);
    ASSERT_EQ(c.n_eos, 0);
    ASSERT_STREQ(c.model_type, "llama");
    /* linear scaling with the legacy "type" key; attention_bias gives q/k/v bias */
    c = parse_ok(TINY_JSON(",\"rope_scaling\":{\"type\":\"linear\",\"factor\":2.0},"
                           "\"attention_bias\":true,\"head_dim\":16"));
    ASSERT_EQ(c.rope_scaling, 1);
    ASSERT_NEAR(c.rope_factor, 2.0, 0);
    ASSERT(c.qkv_bias);
    ASSERT_EQ(c.head_dim, 16);
}

TEST(config_mistral_qwen2)
{
    const char *mistral = "{\"architectures\":[\"MistralForCausalLM\"],\"model_type\":\"mistral\","
                          "\"vocab_size\":32000,\"hidden_size\":4096,\"intermediate_size\":14336,"
                          "\"num_hidden_layers\":32,\"num_attention_heads\":32,"
                          "\"num_key_value_heads\":8,\"max_position_embeddings\":32768,"
                          "\"rms_norm_eps\":1e-05,\"rope_theta\":1000000.0,"
                          "\"sliding_window\":4096,\"tie_word_embeddings\":false,"
                          "\"bos_token_id\":1,\"eos_token_id\":2,\"torch_dtype\":\"bfloat16\"}";
    core_config_t c = parse_ok(mistral);
    ASSERT_STREQ(c.model_type, "mistral");
    ASSERT_EQ(c.n_kv_heads, 8);
    ASSERT_EQ(c.head_dim, 128);
    ASSERT_EQ(c.max_pos, 4096); /* never past the sliding window */
    ASSERT_NEAR(c.rope_theta, 1e6, 0);
    ASSERT(!c.qkv_bias);

    const char *qwen = "{\"architectures\":[\"Qwen2ForCausalLM\"],\"model_type\":\"qwen2\","
                       "\"vocab_size\":151936,\"hidden_size\":896,\"intermediate_size\":4864,"
                       "\"num_hidden_layers\":24,\"num_attention_heads\":14,"
                       "\"num_key_value_heads\":2,\"max_position_embeddings\":32768,"
                       "\"rms_norm_eps\":1e-06,\"rope_theta\":1000000.0,"
                       "\"sliding_window\":32768,\"use_sliding_window\":false,"
                       "\"tie_word_embeddings\":true,\"bos_token_id\":151643,"
                       "\"eos_token_id\":[151645,151643]}";
    c = parse_ok(qwen);
    ASSERT(c.qkv_bias);
    ASSERT(c.tie_embeddings);
    ASSERT_EQ(c.head_dim, 64);
    ASSERT_EQ(c.max_pos, 32768);
    ASSERT_EQ(c.n_eos, 2);
    ASSERT_EQ(c.eos_ids[0], 151645);
    ASSERT_EQ(c.eos_ids[1], 151643);
}

/* json must be refused with rc and a message containing needle. */
static void refused(const char *json, rc_t rc, const char *needle)
{
    core_config_t c;
    core_err_t err = {{0}};
    ASSERT_RC(core_config_parse(json, &c, &err), rc, &err);
    if (!strstr(err.msg, needle))
        HARNESS_FAIL("message '%s' does not name '%s'", err.msg, needle);
}

TEST(config_refused)
{
    refused(TINY_JSON(",\"hidden_size\":\"32\""), RC_FORMAT, "config: invalid JSON");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":61,"
            "\"hidden_size\":\"32\"}",
            RC_FORMAT, "hidden_size");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":32}", RC_FORMAT,
            "vocab_size");
    refused("{\"vocab_size\":61}", RC_FORMAT, "architectures");
    refused("{\"architectures\":[\"GPT2LMHeadModel\"]}", RC_UNSUPPORTED, "GPT2LMHeadModel");
    refused("{\"architectures\":\"LlamaForCausalLM\"}", RC_FORMAT, "architectures");
    refused("[1,2]", RC_FORMAT, "object");
    refused("{\"a\":1,", RC_FORMAT, "JSON");
    refused(TINY_JSON(",\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4.0}"), RC_UNSUPPORTED,
            "yarn");
    refused(TINY_JSON(",\"rope_scaling\":{\"type\":\"dynamic\",\"factor\":4.0}"), RC_UNSUPPORTED,
            "dynamic");
    refused(TINY_JSON(",\"rope_scaling\":{\"type\":\"linear\"}"), RC_FORMAT, "factor");
    refused(TINY_JSON(",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0}"), RC_FORMAT,
            "low_freq_factor");
    refused(TINY_JSON(",\"rope_scaling\":\"linear\""), RC_FORMAT, "rope_scaling");
    refused(TINY_JSON(",\"rms_norm_eps\":-1"), RC_FORMAT, "rms_norm_eps");
    refused(TINY_JSON(",\"rope_theta\":\"big\""), RC_FORMAT, "rope_theta");
    refused(TINY_JSON(",\"tie_word_embeddings\":1"), RC_FORMAT, "tie_word_embeddings");
    refused(TINY_JSON(",\"hidden_act\":\"gelu\""), RC_UNSUPPORTED, "gelu");
    refused(TINY_JSON(",\"mlp_bias\":true"), RC_UNSUPPORTED, "mlp_bias");
    refused(TINY_JSON(",\"head_dim\":7"), RC_FORMAT, "head_dim");
    refused(TINY_JSON(",\"eos_token_id\":[2,\"x\"]"), RC_FORMAT, "eos_token_id");
    refused(TINY_JSON(",\"eos_token_id\":[1,2,3,4,5,6,7,8,9]"), RC_LIMIT, "eos_token_id");
    refused(TINY_JSON(",\"bos_token_id\":61"), RC_FORMAT, "bos_token_id");
    /* limits on absurd sizes; the duplicate-key check also runs (last key wins nowhere) */
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":2000000}", RC_LIMIT,
            "vocab_size");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,"
            "\"hidden_size\":100000}",
            RC_LIMIT, "hidden_size");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,"
            "\"intermediate_size\":64,\"num_hidden_layers\":513}",
            RC_LIMIT, "num_hidden_layers");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":0}", RC_FORMAT, "vocab_size");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,"
            "\"intermediate_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
            "\"num_key_value_heads\":3}",
            RC_FORMAT, "num_key_value_heads");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,"
            "\"intermediate_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":6}",
            RC_FORMAT, "num_attention_heads");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,\"vocab_size\":100}",
            RC_FORMAT, "JSON");
}

/* ---- forward -------------------------------------------------------------------- */

TEST(forward_gqa_matches_reference)
{
    /* n_heads 4 over n_kv_heads 2: heads 0,1 read kv head 0, heads 2,3 kv head 1 */
    core_config_t c = parse_ok(TINY_JSON(""));
    ASSERT_EQ(c.n_heads / c.n_kv_heads, 2);
    core_model_t *m = tiny_model(&c, 7);
    check_vs_ref(m, 9, 3, 2e-4);
    check_vs_ref(m, 1, 4, 2e-4);
    tiny_free(m);
}

TEST(forward_mha_and_mqa)
{
    core_config_t c = parse_ok(TINY_JSON_KV("4", ""));
    core_model_t *m = tiny_model(&c, 8);
    check_vs_ref(m, 6, 5, 2e-4);
    tiny_free(m);
    c = parse_ok(TINY_JSON_KV("1", ",\"head_dim\":6"));
    m = tiny_model(&c, 9);
    check_vs_ref(m, 6, 5, 2e-4);
    tiny_free(m);
}

TEST(forward_qkv_bias_and_tied)
{
    core_config_t c =
        parse_ok("{\"architectures\":[\"Qwen2ForCausalLM\"],\"vocab_size\":40,\"hidden_size\":24,"
                 "\"intermediate_size\":40,\"num_hidden_layers\":2,\"num_attention_heads\":6,"
                 "\"num_key_value_heads\":2,\"max_position_embeddings\":32,\"rms_norm_eps\":1e-6,"
                 "\"rope_theta\":1000000.0,\"tie_word_embeddings\":true}");
    ASSERT(c.qkv_bias && c.tie_embeddings);
    core_model_t *m = tiny_model(&c, 11);
    ASSERT(m->lm_head == m->embed && m->layers[1].lin[CORE_MOD_K].b);
    check_vs_ref(m, 8, 7, 2e-4);
    tiny_free(m);
}

TEST(forward_rope_scaling)
{
    const char *plain = TINY_JSON("");
    const char *lin = TINY_JSON(",\"rope_scaling\":{\"type\":\"linear\",\"factor\":4.0}");
    const char *l3 = TINY_JSON(",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,"
                               "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                               "\"original_max_position_embeddings\":64}");
    const char *cfgs[3] = {plain, lin, l3};
    float *out[3];
    int32_t *tok = seq_tokens(12, 8, 61);
    for (int i = 0; i < 3; i++) {
        core_config_t c = parse_ok(cfgs[i]);
        core_model_t *m = tiny_model(&c, 12); /* same weights each time */
        check_vs_ref(m, 12, 8, 2e-4);
        out[i] = run_alone(m, tok, 12, NULL);
        tiny_free(m);
    }
    /* the scalings really change the result */
    ASSERT(max_diff(out[0], out[1], 12 * 61) > 1e-3);
    ASSERT(max_diff(out[0], out[2], 12 * 61) > 1e-3);
    ASSERT(max_diff(out[1], out[2], 12 * 61) > 1e-3);
    free(tok), free(out[0]), free(out[1]), free(out[2]);
}

TEST(forward_batched_equals_alone)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 13);
    const int lens[3] = {1, 4, 7};
    int32_t *tok[3];
    float *alone[3], *got[3];
    core_kv_pool_t *pool = pool_for(&c, 3);
    core_kv_t *kv[3];
    core_fwd_item_t it[3];
    core_fwd_t *f = core_fwd_new(m);
    core_err_t err = {{0}};
    for (int i = 0; i < 3; i++) {
        tok[i] = seq_tokens(lens[i], 20 + i, c.n_vocab);
        alone[i] = run_alone(m, tok[i], lens[i], NULL);
        kv[i] = core_kv_new(pool);
        /* middle item: all logits; the others the last row only */
        got[i] = malloc((size_t)lens[i] * c.n_vocab * sizeof(float));
        it[i] = (core_fwd_item_t){
            .tokens = tok[i], .n_tokens = lens[i], .kv = kv[i], .logits = got[i],
            .all_logits = i == 1};
    }
    ASSERT_RC(core_forward(m, f, it, 3, &err), RC_OK, &err);
    for (int i = 0; i < 3; i++) {
        size_t V = (size_t)c.n_vocab;
        ASSERT_EQ(core_kv_len(kv[i]), lens[i]);
        if (i == 1)
            ASSERT_NEAR(max_diff(got[i], alone[i], lens[i] * V), 0, 1e-5);
        else
            ASSERT_NEAR(max_diff(got[i], alone[i] + (lens[i] - 1) * V, V), 0, 1e-5);
    }
    /* and the batched result is right, not just consistent */
    double *ref = malloc(7 * (size_t)c.n_vocab * sizeof *ref);
    ref_forward(m, tok[2], 7, ref);
    ASSERT_NEAR(max_diff_ref(got[2], ref + 6 * c.n_vocab, (size_t)c.n_vocab), 0, 2e-4);
    for (int i = 0; i < 3; i++) {
        free(tok[i]), free(alone[i]), free(got[i]);
        core_kv_free(kv[i]);
    }
    ASSERT_EQ(core_kv_pool_n_free(pool), core_kv_pool_n_blocks(pool));
    core_kv_pool_free(pool);
    free(ref);
    core_fwd_free(f);
    tiny_free(m);
}

/* Two sequences decoded side by side in blocks of bt positions: a prefills n_pre tokens
 * and b 1, then both decode one token a step until a reaches n. Returns every step's
 * logits of a then b ((n - n_pre + 1) * 2 rows), each checked against one full forward.
 * Then one more token is RC_LIMIT when n == max_pos, leaving the cache alone. */
static float *decode_steps(const core_model_t *m, int bt, uint32_t seed, int n_pre, int n)
{
    const core_config_t *c = &m->cfg;
    size_t V = (size_t)c->n_vocab, n_steps = (size_t)(n - n_pre + 1);
    int32_t *tok = seq_tokens(n, seed + 1, c->n_vocab);
    float *full = run_alone(m, tok, n, NULL), *out = malloc(2 * n_steps * V * sizeof *out);
    core_kv_pool_t *pool = pool_new(c, bt, 2 * ((c->max_pos + bt - 1) / bt));
    core_fwd_t *f = core_fwd_new(m);
    core_kv_t *kv[2] = {core_kv_new(pool), core_kv_new(pool)};
    core_err_t err = {{0}};
    core_fwd_item_t it[2] = {{.tokens = tok, .n_tokens = n_pre, .kv = kv[0]},
                             {.tokens = tok, .n_tokens = 1, .kv = kv[1]}};
    ASSERT_RC(core_fwd_reserve(f, n_pre + 1, 0, 2), RC_OK, NULL);
    for (int s = n_pre; s <= n; s++) {
        it[0].logits = out + (size_t)(s - n_pre) * 2 * V;
        it[1].logits = it[0].logits + V;
        ASSERT_RC(core_forward(m, f, it, 2, &err), RC_OK, &err);
        ASSERT_EQ(core_kv_len(kv[0]), s);
        ASSERT_NEAR(max_diff(it[0].logits, full + (size_t)(s - 1) * V, V), 0, 1e-5);
        ASSERT_NEAR(max_diff(it[1].logits, full + (size_t)(s - n_pre) * V, V), 0, 1e-5);
        it[0].tokens = tok + s;
        it[0].n_tokens = 1;
        it[1].tokens = tok + s - n_pre + 1;
    }
    ASSERT_EQ(core_kv_pool_n_free(pool), core_kv_pool_n_blocks(pool) -
                                             core_kv_pool_blocks_for(pool, n) -
                                             core_kv_pool_blocks_for(pool, n - n_pre + 1));
    if (n == c->max_pos) {
        it[0].tokens = tok;
        ASSERT_RC(core_forward(m, f, it, 1, &err), RC_LIMIT, &err);
        ASSERT_EQ(core_kv_len(kv[0]), n);
        ASSERT_RC(core_kv_reserve(kv[0], 1), RC_LIMIT, NULL);
    }
    free(tok), free(full);
    core_kv_free(kv[0]);
    core_kv_free(kv[1]);
    ASSERT_EQ(core_kv_pool_n_free(pool), core_kv_pool_n_blocks(pool));
    core_kv_pool_free(pool);
    core_fwd_free(f);
    return out;
}

TEST(forward_incremental_decode)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 14);
    free(decode_steps(m, 16, 14, 5, 8));
    tiny_free(m);
}

TEST(kv_paged_block_sizes_agree)
{
    /* prefill 5, decode to 40: crosses block boundaries of 1, 3 and 16 at every size */
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 15);
    size_t n = 2 * 36 * (size_t)c.n_vocab;
    float *b1 = decode_steps(m, 1, 15, 5, 40), *b3 = decode_steps(m, 3, 15, 5, 40);
    float *b16 = decode_steps(m, 16, 15, 5, 40);
    ASSERT_NEAR(max_diff(b1, b3, n), 0, 1e-6);
    ASSERT_NEAR(max_diff(b1, b16, n), 0, 1e-6);
    free(b1), free(b3), free(b16);
    tiny_free(m);
}

TEST(forward_kv_to_max_pos)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 16);
    free(decode_steps(m, 3, 15, 3, 64)); /* 64 = max_pos, 22 blocks of 3 */
    tiny_free(m);
}

TEST(kv_pool_accounting)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    core_kv_pool_t *p = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(core_kv_pool_new(&c, 100, 16, &p, &err), RC_LIMIT, &err);
    ASSERT(p == NULL && strstr(err.msg, "100"));
    ASSERT_RC(core_kv_pool_new(&c, 1 << 20, 0, &p, &err), RC_INVALID, &err);
    p = pool_new(&c, 3, 10);
    ASSERT_EQ(core_kv_pool_blocks_for(p, 0), 0);
    ASSERT_EQ(core_kv_pool_blocks_for(p, 3), 1);
    ASSERT_EQ(core_kv_pool_blocks_for(p, 4), 2);
    core_kv_t *a = core_kv_new(p), *b = core_kv_new(p);
    ASSERT_EQ(core_kv_blocks_needed(a, 7), 3);
    ASSERT_RC(core_kv_reserve(a, 7), RC_OK, NULL);
    ASSERT_EQ(core_kv_pool_n_free(p), 7);
    ASSERT_EQ(core_kv_len(a), 0); /* reserved, not filled */
    ASSERT_EQ(core_kv_blocks_needed(a, 9), 0);
    ASSERT_EQ(core_kv_blocks_needed(a, 10), 1);
    ASSERT_RC(core_kv_reserve(b, 22), RC_BUSY, NULL); /* 8 blocks, 7 free: all or none */
    ASSERT_EQ(core_kv_pool_n_free(p), 7);
    ASSERT_EQ(core_kv_blocks_needed(b, 1), 1);
    ASSERT_RC(core_kv_reserve(b, 65), RC_LIMIT, NULL); /* past max_pos 64 */
    ASSERT_RC(core_kv_reserve(b, 21), RC_OK, NULL);
    ASSERT_EQ(core_kv_pool_n_free(p), 0);
    core_kv_reset(a);
    ASSERT_EQ(core_kv_pool_n_free(p), 3);
    ASSERT_EQ(core_kv_blocks_needed(a, 1), 1);
    core_kv_free(b);
    ASSERT_EQ(core_kv_pool_n_free(p), 10);
    core_kv_free(a);
    core_kv_pool_free(p);
}

/* A pool too short for a step: RC_BUSY, and no cache nor the pool changes. Then reset
 * frees enough, and a reset cache computes exactly what a fresh one does. */
TEST(kv_busy_leaves_everything)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 17);
    core_kv_pool_t *p = pool_new(&c, 4, 6);
    core_fwd_t *f = core_fwd_new(m);
    core_kv_t *a = core_kv_new(p), *b = core_kv_new(p);
    int32_t *tok = seq_tokens(20, 3, c.n_vocab);
    float lg[2 * 61], lg2[61];
    core_err_t err = {{0}};
    core_fwd_item_t it[2] = {{.tokens = tok, .n_tokens = 9, .kv = a, .logits = lg},
                             {.tokens = tok, .n_tokens = 9, .kv = b, .logits = lg + 61}};
    ASSERT_RC(core_forward(m, f, it, 1, &err), RC_OK, &err); /* a: 9 tokens, 3 blocks */
    memcpy(lg2, lg, sizeof lg2);
    it[0].tokens = tok + 9;
    it[0].n_tokens = 4; /* a needs 1 more block, b 3: 4 > 3 free */
    ASSERT_RC(core_forward(m, f, it, 2, &err), RC_BUSY, &err);
    ASSERT(strstr(err.msg, "4") && strstr(err.msg, "3"));
    ASSERT_EQ(core_kv_len(a), 9);
    ASSERT_EQ(core_kv_len(b), 0);
    ASSERT_EQ(core_kv_pool_n_free(p), 3);
    ASSERT_EQ(core_kv_blocks_needed(a, 4), 1);
    ASSERT_EQ(core_kv_blocks_needed(b, 9), 3);
    core_kv_reset(a); /* preemption */
    ASSERT_EQ(core_kv_pool_n_free(p), 6);
    ASSERT_EQ(core_kv_len(a), 0);
    it[0].tokens = tok;
    it[0].n_tokens = 9;
    ASSERT_RC(core_forward(m, f, it, 2, &err), RC_OK, &err);
    ASSERT_EQ(core_kv_pool_n_free(p), 0);
    ASSERT_NEAR(max_diff(lg, lg2, 61), 0, 1e-5); /* 18 rows vs 9 in the GEMM: rounding */
    ASSERT_NEAR(max_diff(lg + 61, lg2, 61), 0, 1e-5);
    core_kv_free(a);
    core_kv_free(b);
    ASSERT_EQ(core_kv_pool_n_free(p), 6);
    core_kv_pool_free(p);
    free(tok);
    core_fwd_free(f);
    tiny_free(m);
}

TEST(forward_validation_mutates_nothing)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 16);
    core_fwd_t *f = core_fwd_new(m);
    core_kv_pool_t *p = pool_for(&c, 2);
    core_kv_t *a = core_kv_new(p), *b = core_kv_new(p);
    float lg[2 * 61];
    int32_t good[3] = {1, 2, 3}, bad[2] = {5, 61}, neg[1] = {-1};
    core_err_t err = {{0}};
    core_fwd_item_t it[2] = {
        {.tokens = good, .n_tokens = 3, .kv = a, .logits = lg},
        {.tokens = bad, .n_tokens = 2, .kv = b, .logits = lg + 61},
    };
    ASSERT_RC(core_fwd_reserve(f, 0, 0, 1), RC_INVALID, NULL);
    ASSERT_RC(core_forward(m, f, it, 2, &err), RC_INVALID, &err);
    ASSERT(strstr(err.msg, "item 1") && strstr(err.msg, "61"));
    ASSERT_EQ(core_kv_len(a), 0);
    ASSERT_EQ(core_kv_len(b), 0);
    ASSERT_EQ(core_kv_pool_n_free(p), core_kv_pool_n_blocks(p));
    it[1].tokens = neg;
    it[1].n_tokens = 1;
    ASSERT_RC(core_forward(m, f, it, 2, &err), RC_INVALID, &err);
    ASSERT(strstr(err.msg, "-1"));
    /* a fills most of its context; then item 1 asks for too much */
    int32_t *many = seq_tokens(64, 1, 61);
    it[1] = (core_fwd_item_t){.tokens = many, .n_tokens = 60, .kv = b, .logits = lg + 61};
    ASSERT_RC(core_forward(m, f, &it[1], 1, &err), RC_OK, &err);
    it[1].n_tokens = 5;
    ASSERT_RC(core_forward(m, f, it, 2, &err), RC_LIMIT, &err);
    ASSERT(strstr(err.msg, "item 1"));
    ASSERT_EQ(core_kv_len(a), 0);
    ASSERT_EQ(core_kv_len(b), 60);
    it[1].n_tokens = 4; /* exactly max_pos is fine */
    ASSERT_RC(core_forward(m, f, it, 2, &err), RC_OK, &err);
    ASSERT_EQ(core_kv_len(b), 64);
    /* two items on one cache */
    it[1].kv = a;
    it[1].n_tokens = 1;
    ASSERT_RC(core_forward(m, f, it, 2, &err), RC_INVALID, &err);
    it[1].kv = b;
    it[0].n_tokens = 0;
    ASSERT_RC(core_forward(m, f, it, 2, &err), RC_INVALID, &err);
    ASSERT_RC(core_forward(m, f, it, 0, &err), RC_OK, &err);
    /* an adapter made for a model with another layer count */
    core_config_t c3 = c;
    c3.n_layers = 3;
    core_lora_t *lo = tiny_lora(&c3, 25, 1u << CORE_MOD_Q, 2, 2.0f);
    core_aset_t *s = set1(lo, 1.0f);
    it[0].n_tokens = 1;
    it[0].aset = s;
    ASSERT_RC(core_forward(m, f, it, 1, &err), RC_MISMATCH, &err);
    ASSERT_EQ(core_kv_len(a), 3);
    core_aset_release(s);
    tiny_lora_free(lo);
    free(many);
    core_kv_free(a);
    core_kv_free(b);
    core_kv_pool_free(p);
    core_fwd_free(f);
    tiny_free(m);
}

/* ---- LoRA and adapter sets ------------------------------------------------------ */

#define ALL_MODS ((1u << CORE_MOD__COUNT) - 1)
#define MOD(m) (1u << CORE_MOD_##m)

TEST(lora_equals_merged)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 17);
    core_lora_t *lo = tiny_lora(&c, 18, ALL_MODS, 3, 6.0f);
    size_t n = 7 * (size_t)c.n_vocab;
    int32_t *tok = seq_tokens(7, 40, c.n_vocab);
    float *base = run_alone(m, tok, 7, NULL);
    float scales[2] = {1.0f, -0.5f};
    for (int i = 0; i < 2; i++) {
        core_aset_t *s = set1(lo, scales[i]);
        float *with = run_alone(m, tok, 7, s);
        core_model_t *mg = tiny_merged(&c, 17, s);
        float *merged = run_alone(mg, tok, 7, NULL);
        ASSERT(max_diff(with, base, n) > 1e-2);
        ASSERT_NEAR(max_diff(with, merged, n), 0, 1e-4);
        free(with), free(merged);
        tiny_free(mg);
        core_aset_release(s);
    }
    /* weight 0 is the base exactly (the term is skipped), alone or beside another */
    core_lora_t *two[2] = {lo, lo};
    core_aset_t *z1 = set1(lo, 0.0f), *z2 = set_of(2, two, (float[]){0.0f, 0.0f});
    float *zero = run_alone(m, tok, 7, z1), *zero2 = run_alone(m, tok, 7, z2);
    ASSERT_NEAR(max_diff(zero, base, n), 0, 0);
    ASSERT_NEAR(max_diff(zero2, base, n), 0, 0);
    core_aset_release(z1);
    core_aset_release(z2);
    ASSERT_EQ(lo->refcount, 1);
    free(zero), free(zero2), free(base), free(tok);
    tiny_lora_free(lo);
    tiny_free(m);
}

TEST(lora_partial_targets)
{
    /* only v_proj and down_proj, and only in layer 1 */
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 19);
    core_lora_t *lo = tiny_lora(&c, 20, MOD(V) | MOD(DOWN), 2, 4.0f);
    for (int k = 0; k < CORE_MOD__COUNT; k++) {
        free(lo->mods[k].A), free(lo->mods[k].B);
        lo->mods[k].A = lo->mods[k].B = NULL;
    }
    core_aset_t *s = set1(lo, 1.0f);
    size_t n = 5 * (size_t)c.n_vocab;
    int32_t *tok = seq_tokens(5, 41, c.n_vocab);
    float *with = run_alone(m, tok, 5, s);
    core_model_t *mg = tiny_merged(&c, 19, s);
    float *merged = run_alone(mg, tok, 5, NULL);
    ASSERT_NEAR(max_diff(with, merged, n), 0, 1e-4);
    free(tok), free(with), free(merged);
    core_aset_release(s);
    tiny_free(mg);
    tiny_lora_free(lo);
    tiny_free(m);
}

/* One heterogeneous step: base rows; sets of ranks 2/4/8 on different module subsets; a
 * 3-term composition with a negative weight; one set on two adjacent items (one segment),
 * an equal-but-distinct set object next to its twin, and sets recurring after a base row
 * and after another set (new segments).
 * Every item equals itself run alone and the merged model W + sum w_i s_i B_i A_i run
 * through the naive double reference; then a decode step of the same mix does too. */
TEST(lora_mixed_batch)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 21);
    core_lora_t *l2 = tiny_lora(&c, 22, MOD(Q) | MOD(V), 2, 4.0f);
    core_lora_t *l4 = tiny_lora(&c, 23, MOD(O) | MOD(GATE) | MOD(DOWN), 4, 8.0f);
    core_lora_t *l8 = tiny_lora(&c, 24, ALL_MODS & ~MOD(K), 8, 4.0f);
    core_lora_t *comp[3] = {l2, l8, l4};
    core_aset_t *s2 = set1(l2, 1.0f), *s4 = set1(l4, 1.0f), *s8 = set1(l8, 0.75f);
    core_aset_t *mix = set_of(3, comp, (float[]){0.7f, -0.5f, 1.2f});
    core_aset_t *mix_twin = set_of(3, comp, (float[]){0.7f, -0.5f, 1.2f});
    ASSERT(core_aset_equal(mix, mix_twin) && !core_aset_equal(mix, s2) &&
           !core_aset_equal(s2, NULL) && core_aset_equal(NULL, NULL));
    ASSERT_EQ(mix->rank_sum, 14);
    enum { N = 10 };
    const core_aset_t *sets[N] = {NULL, s2, s2, s4, mix, mix_twin, NULL, mix, s8, s4};
    int lens[N] = {3, 2, 5, 1, 4, 2, 2, 3, 3, 2};
    int32_t *tok[N];
    float *got[N];
    core_kv_pool_t *pool = pool_for(&c, N);
    core_kv_t *kv[N];
    core_fwd_item_t it[N];
    core_fwd_t *f = core_fwd_new(m);
    core_err_t err = {{0}};
    size_t V = (size_t)c.n_vocab;
    ASSERT_RC(core_fwd_reserve(f, 32, 8, N), RC_OK, NULL);
    for (int i = 0; i < N; i++) {
        tok[i] = malloc((size_t)(lens[i] + 1) * sizeof(int32_t));
        int32_t *t = seq_tokens(lens[i] + 1, 50 + i, c.n_vocab);
        memcpy(tok[i], t, (size_t)(lens[i] + 1) * sizeof(int32_t));
        free(t);
        kv[i] = core_kv_new(pool);
        got[i] = malloc(2 * V * sizeof(float));
        it[i] = (core_fwd_item_t){.tokens = tok[i], .n_tokens = lens[i], .kv = kv[i],
                                  .aset = sets[i], .logits = got[i]};
    }
    ASSERT_RC(core_forward(m, f, it, N, &err), RC_OK, &err);
    for (int i = 0; i < N; i++) { /* then one decode token each */
        it[i].tokens = tok[i] + lens[i];
        it[i].n_tokens = 1;
        it[i].logits = got[i] + V;
    }
    ASSERT_RC(core_forward(m, f, it, N, &err), RC_OK, &err);
    for (int i = 0; i < N; i++) {
        int n = lens[i] + 1;
        float *alone = run_alone(m, tok[i], n, sets[i]);
        core_model_t *mg = tiny_merged(&c, 21, sets[i]);
        double *ref = malloc((size_t)n * V * sizeof *ref);
        ref_forward(mg, tok[i], n, ref);
        for (int k = 0; k < 2; k++) { /* prefill's last row, then the decode row */
            size_t row = (size_t)(n - 2 + k) * V;
            ASSERT_NEAR(max_diff(got[i] + k * V, alone + row, V), 0, 1e-5);
            ASSERT_NEAR(max_diff_ref(got[i] + k * V, ref + row, V), 0, 1e-4);
        }
        if (sets[i]) { /* the adapters really act */
            float *b = run_alone(m, tok[i], n, NULL);
            ASSERT(max_diff(got[i] + V, b + (size_t)(n - 1) * V, V) > 1e-3);
            free(b);
        }
        free(alone), free(ref);
        tiny_free(mg);
    }
    for (int i = 0; i < N; i++) {
        free(tok[i]), free(got[i]);
        core_kv_free(kv[i]);
    }
    core_aset_t *all[5] = {s2, s4, s8, mix, mix_twin};
    for (int i = 0; i < 5; i++)
        core_aset_release(all[i]);
    ASSERT(l2->refcount == 1 && l4->refcount == 1 && l8->refcount == 1);
    core_kv_pool_free(pool);
    core_fwd_free(f);
    tiny_lora_free(l2);
    tiny_lora_free(l4);
    tiny_lora_free(l8);
    tiny_free(m);
}

/* ---- loading from a folder ------------------------------------------------------- */

typedef struct {
    const char *drop;      /* omit this tensor */
    const char *transpose; /* write this 2-D tensor with its shape reversed */
    const char *extra;     /* add this (unexpected) tensor */
    const char *nan_in;    /* put a NaN into this tensor */
    const char *i32;       /* declare this tensor as I32 */
    bool bf16_embed;       /* embeddings as BF16 (the model's values must be exact) */
} write_opts_t;

typedef struct {
    char name[96];
    int64_t shape[2];
    int n_dims;
    const float *data;
} named_t;

static size_t model_tensors(const core_model_t *m, named_t *out)
{
    const core_config_t *c = &m->cfg;
    size_t n = 0;
#define ADD(ptr, d0, d1, ...)                                                                      \
    do {                                                                                           \
        snprintf(out[n].name, sizeof out[n].name, __VA_ARGS__);                                    \
        out[n].shape[0] = (d0), out[n].shape[1] = (d1);                                            \
        out[n].n_dims = (d1) ? 2 : 1;                                                              \
        out[n].data = (ptr);                                                                       \
        n++;                                                                                       \
    } while (0)
    ADD(m->embed, c->n_vocab, c->dim, "model.embed_tokens.weight");
    ADD(m->final_norm, c->dim, 0, "model.norm.weight");
    if (!c->tie_embeddings)
        ADD(m->lm_head, c->n_vocab, c->dim, "lm_head.weight");
    for (int l = 0; l < c->n_layers; l++) {
        const core_layer_t *L = &m->layers[l];
        ADD(L->attn_norm, c->dim, 0, "model.layers.%d.input_layernorm.weight", l);
        ADD(L->mlp_norm, c->dim, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        for (int k = 0; k < CORE_MOD__COUNT; k++) {
            const core_linear_t *lin = &L->lin[k];
            ADD(lin->w, lin->n_out, lin->n_in, "model.layers.%d.%s.%s.weight", l,
                core_mod_parent((core_mod_t)k), core_mod_name((core_mod_t)k));
            if (lin->b)
                ADD(lin->b, lin->n_out, 0, "model.layers.%d.%s.%s.bias", l,
                    core_mod_parent((core_mod_t)k), core_mod_name((core_mod_t)k));
        }
    }
#undef ADD
    return n;
}

static char tmp_root[256];

static const char *dir_for(const char *leaf, char *buf, size_t len)
{
    if (!tmp_root[0])
        snprintf(tmp_root, sizeof tmp_root, "tests/tmp/model_%d", (int)getpid());
    snprintf(buf, len, "%s/%s", tmp_root, leaf);
    ASSERT(stw_mkdirs(buf) == 0);
    return buf;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* Called at the end of a passing test; a failing one keeps its files to look at. */
static void rm_tmp(void)
{
    if (tmp_root[0])
        nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void write_model(const char *dir, const core_model_t *m, const char *config_json,
                        const write_opts_t *o)
{
    named_t *nt = calloc(64 + (size_t)m->cfg.n_layers * 16, sizeof *nt);
    stw_tensor_t *t = calloc(64 + (size_t)m->cfg.n_layers * 16, sizeof *t);
    void *owned[8] = {0};
    int n_owned = 0;
    char path[512];
    ASSERT(nt && t);
    size_t n = model_tensors(m, nt), k = 0;
    static const float inv_freq[4] = {1.0f, 0.1f, 0.01f, 0.001f};
    for (size_t i = 0; i < n; i++) {
        named_t *e = &nt[i];
        if (o->drop && strcmp(e->name, o->drop) == 0)
            continue;
        size_t elems = (size_t)e->shape[0] * (size_t)(e->n_dims == 2 ? e->shape[1] : 1);
        stw_tensor_t *s = &t[k++];
        s->name = e->name;
        s->dtype = "F32";
        s->n_dims = e->n_dims;
        s->shape[0] = e->shape[0];
        s->shape[1] = e->shape[1];
        s->data = e->data;
        s->n_bytes = elems * 4;
        if (o->transpose && strcmp(e->name, o->transpose) == 0) {
            s->shape[0] = e->shape[1];
            s->shape[1] = e->shape[0];
        }
        if (o->i32 && strcmp(e->name, o->i32) == 0)
            s->dtype = "I32";
        if (o->nan_in && strcmp(e->name, o->nan_in) == 0) {
            float *d = dup_vec(e->data, elems);
            d[elems / 2] = NAN;
            s->data = owned[n_owned++] = d;
        }
        if (o->bf16_embed && strcmp(e->name, "model.embed_tokens.weight") == 0) {
            uint16_t *d = malloc(elems * 2);
            for (size_t j = 0; j < elems; j++)
                d[j] = stw_bf16_bits(e->data[j]);
            s->dtype = "BF16";
            s->data = owned[n_owned++] = d;
            s->n_bytes = elems * 2;
        }
    }
    t[k++] = (stw_tensor_t){.name = "model.layers.0.self_attn.rotary_emb.inv_freq",
                            .dtype = "F32",
                            .n_dims = 1,
                            .shape = {4},
                            .data = inv_freq,
                            .n_bytes = sizeof inv_freq};
    if (o->extra)
        t[k++] = (stw_tensor_t){.name = o->extra,
                                .dtype = "F32",
                                .n_dims = 1,
                                .shape = {4},
                                .data = inv_freq,
                                .n_bytes = sizeof inv_freq};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ASSERT(stw_write(path, t, k, "{\"format\":\"pt\"}") == 0);
    snprintf(path, sizeof path, "%s/config.json", dir);
    ASSERT(stw_write_text(path, config_json) == 0);
    for (int i = 0; i < n_owned; i++)
        free(owned[i]);
    free(nt);
    free(t);
}

/* Keep only the high 16 bits so a BF16 copy is exact. */
static void round_to_bf16(float *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        u &= 0xffff0000u;
        memcpy(&v[i], &u, 4);
    }
}

static void same_forward(const core_model_t *a, const core_model_t *b)
{
    int32_t *tok = seq_tokens(6, 60, a->cfg.n_vocab);
    float *x = run_alone(a, tok, 6, NULL), *y = run_alone(b, tok, 6, NULL);
    ASSERT_NEAR(max_diff(x, y, 6 * (size_t)a->cfg.n_vocab), 0, 1e-6);
    free(tok), free(x), free(y);
}

static bool is_hex64(const char *s)
{
    if (strlen(s) != 64)
        return false;
    for (int i = 0; i < 64; i++)
        if (!strchr("0123456789abcdef", s[i]))
            return false;
    return true;
}

TEST(load_roundtrip)
{
    char dir[512], dir2[512], path[600];
    const char *json = TINY_JSON("");
    core_config_t c = parse_ok(json);
    core_model_t *m = tiny_model(&c, 26);
    round_to_bf16(m->embed, (size_t)c.n_vocab * c.dim);
    write_opts_t o = {.bf16_embed = true};
    write_model(dir_for("llama_tiny", dir, sizeof dir), m, json, &o);
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    ASSERT(stw_write_text(path, "{\"bos_token_id\":1,\"eos_token_id\":[2,5],"
                                "\"temperature\":0.6}") == 0);
    core_model_t *ld = NULL, *ld2 = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(core_model_load(dir, &ld, &err), RC_OK, &err);
    ASSERT_STREQ(ld->name, "llama_tiny");
    ASSERT_EQ(ld->cfg.dim, 32);
    ASSERT_EQ(ld->cfg.n_kv_heads, 2);
    ASSERT_EQ(ld->cfg.n_eos, 2);
    ASSERT_EQ(ld->cfg.eos_ids[1], 5);
    ASSERT(ld->lm_head != ld->embed);
    ASSERT(is_hex64(ld->fingerprint));
    same_forward(m, ld);
    /* same again: same fingerprint; trailing slash: same name */
    strcat(dir, "/");
    ASSERT_RC(core_model_load(dir, &ld2, &err), RC_OK, &err);
    ASSERT_STREQ(ld2->fingerprint, ld->fingerprint);
    ASSERT_STREQ(ld2->name, "llama_tiny");
    core_model_free(ld2);
    /* another config over the same weights: another fingerprint */
    const char *json2 = TINY_JSON(",\"rope_scaling\":{\"type\":\"linear\",\"factor\":2.0}");
    write_model(dir_for("llama_tiny2", dir2, sizeof dir2), m, json2, &o);
    ASSERT_RC(core_model_load(dir2, &ld2, &err), RC_OK, &err);
    ASSERT(strcmp(ld2->fingerprint, ld->fingerprint) != 0);
    ASSERT_EQ(ld2->cfg.n_eos, 0); /* no generation_config.json there */
    core_model_free(ld2);
    core_model_free(ld);
    tiny_free(m);
    rm_tmp();
}

TEST(load_tied_qwen2)
{
    char dir[512];
    const char *json = "{\"architectures\":[\"Qwen2ForCausalLM\"],\"model_type\":\"qwen2\","
                       "\"vocab_size\":40,\"hidden_size\":24,\"intermediate_size\":40,"
                       "\"num_hidden_layers\":2,\"num_attention_heads\":6,"
                       "\"num_key_value_heads\":2,\"max_position_embeddings\":32,"
                       "\"rope_theta\":1000000.0,\"tie_word_embeddings\":true}";
    core_config_t c = parse_ok(json);
    core_model_t *m = tiny_model(&c, 27);
    write_opts_t o = {0};
    write_model(dir_for("qwen_tied", dir, sizeof dir), m, json, &o);
    core_model_t *ld = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(core_model_load(dir, &ld, &err), RC_OK, &err);
    ASSERT(ld->cfg.tie_embeddings && ld->cfg.qkv_bias);
    ASSERT(ld->lm_head == ld->embed);
    ASSERT(ld->layers[1].lin[CORE_MOD_V].b && !ld->layers[1].lin[CORE_MOD_O].b);
    same_forward(m, ld);
    core_model_free(ld);
    tiny_free(m);
    rm_tmp();
}

/* Loading must fail with rc and a message containing needle (and maybe needle2). */
static void load_refused(const char *leaf, const write_opts_t *o, const char *json, rc_t rc,
                         const char *needle, const char *needle2)
{
    char dir[512];
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 28), *ld = NULL;
    core_err_t err = {{0}};
    write_model(dir_for(leaf, dir, sizeof dir), m, json ? json : TINY_JSON(""), o);
    ASSERT_RC(core_model_load(dir, &ld, &err), rc, &err);
    ASSERT(ld == NULL);
    if (!strstr(err.msg, needle) || (needle2 && !strstr(err.msg, needle2)))
        HARNESS_FAIL("message '%s' lacks '%s' / '%s'", err.msg, needle, needle2 ? needle2 : "");
    tiny_free(m);
    rm_tmp();
}

TEST(load_refused_wrong_shape)
{
    write_opts_t o = {.transpose = "model.layers.1.self_attn.k_proj.weight"};
    load_refused("bad_shape", &o, NULL, RC_FORMAT, "model.layers.1.self_attn.k_proj.weight",
                 "expected shape [16, 32], got [32, 16]");
}

TEST(load_refused_missing_extra_nan_dtype)
{
    write_opts_t o = {.drop = "model.layers.1.mlp.up_proj.weight"};
    load_refused("missing", &o, NULL, RC_FORMAT, "model.layers.1.mlp.up_proj.weight", "missing");
    o = (write_opts_t){.drop = "lm_head.weight"};
    load_refused("no_head", &o, NULL, RC_FORMAT, "lm_head.weight", NULL);
    o = (write_opts_t){.extra = "model.layers.0.mlp.up_proj.bias"};
    load_refused("extra", &o, NULL, RC_UNSUPPORTED, "model.layers.0.mlp.up_proj.bias", NULL);
    o = (write_opts_t){.nan_in = "model.layers.0.self_attn.o_proj.weight"};
    load_refused("nan", &o, NULL, RC_FORMAT, "model.layers.0.self_attn.o_proj.weight",
                 "non-finite");
    o = (write_opts_t){.i32 = "model.norm.weight"};
    load_refused("i32", &o, NULL, RC_UNSUPPORTED, "model.norm.weight", "I32");
    /* attention_bias=true expects q/k/v/o biases the files do not have */
    o = (write_opts_t){0};
    load_refused("want_bias", &o, TINY_JSON(",\"attention_bias\":true"), RC_FORMAT,
                 "model.layers.0.self_attn.q_proj.bias", "missing");
    load_refused("bad_cfg", &o, TINY_JSON(",\"rope_theta\":\"x\""), RC_FORMAT, "config", NULL);
}

TEST(load_refused_no_folder)
{
    core_model_t *ld = (core_model_t *)1;
    core_err_t err = {{0}};
    ASSERT(core_model_load("tests/tmp/no/such/model", &ld, &err) != RC_OK);
    ASSERT(ld == NULL);
    ASSERT(strstr(err.msg, "config.json"));
}
