/* forward.c - the KV cache and the batched forward pass of a Llama-family model.
 *
 * One core_forward call runs every new token of every item as one batch of T rows: the
 * linear layers are one GEMM over all T rows (the weights are read once per step), each
 * item's LoRA adds its low-rank delta to its own rows, and attention runs per item
 * against that item's own KV cache. Layout: activations are row-major (T, width), row r
 * belonging to the item whose token range contains r, in item order.
 *
 * Threads: a core_fwd_t and a core_kv_t belong to one thread at a time; the model is only
 * read. No threads are created here (BLAS has its own). Nothing allocates after the
 * validation/reservation phase at the top of core_forward, so a failed step leaves every
 * cache as it was. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/gemm.h"
#include "core/lora.h"
#include "core/model.h"

/* ---- KV cache ------------------------------------------------------------------- */

struct core_kv {
    int n_layers, kv_dim, max_pos;
    int len;        /* positions filled */
    int cap;        /* positions allocated in every layer's k and v */
    float **k, **v; /* n_layers x (cap, kv_dim) */
};

core_kv_t *core_kv_new(const core_config_t *cfg)
{
    core_kv_t *kv = calloc(1, sizeof *kv);
    if (!kv)
        return NULL;
    kv->n_layers = cfg->n_layers;
    kv->kv_dim = cfg->n_kv_heads * cfg->head_dim;
    kv->max_pos = cfg->max_pos;
    kv->k = calloc((size_t)cfg->n_layers, sizeof *kv->k);
    kv->v = calloc((size_t)cfg->n_layers, sizeof *kv->v);
    if (!kv->k || !kv->v) {
        core_kv_free(kv);
        return NULL;
    }
    return kv;
}

void core_kv_free(core_kv_t *kv)
{
    if (!kv)
        return;
    for (int l = 0; kv->k && l < kv->n_layers; l++)
        free(kv->k[l]);
    for (int l = 0; kv->v && l < kv->n_layers; l++)
        free(kv->v[l]);
    free(kv->k);
    free(kv->v);
    free(kv);
}

int core_kv_len(const core_kv_t *kv)
{
    return kv->len;
}

/* Make room for need positions (doubling, capped at max_pos). On failure the cache keeps
 * its contents and old capacity (buffers already grown are merely larger than cap). */
static rc_t kv_reserve(core_kv_t *kv, int need)
{
    if (need <= kv->cap)
        return RC_OK;
    int cap = kv->cap ? kv->cap : 16;
    while (cap < need)
        cap = cap > kv->max_pos / 2 ? kv->max_pos : cap * 2;
    if (cap > kv->max_pos)
        cap = kv->max_pos;
    size_t bytes = (size_t)cap * (size_t)kv->kv_dim * sizeof(float);
    for (int l = 0; l < kv->n_layers; l++) {
        float *k = realloc(kv->k[l], bytes);
        if (!k)
            return RC_NOMEM;
        kv->k[l] = k;
        float *v = realloc(kv->v[l], bytes);
        if (!v)
            return RC_NOMEM;
        kv->v[l] = v;
    }
    kv->cap = cap;
    return RC_OK;
}

/* ---- scratch -------------------------------------------------------------------- */

struct core_fwd {
    const core_model_t *m;
    double *inv_freq; /* (head_dim/2) RoPE frequencies, scaling applied */
    size_t cap_rows;  /* rows of the per-token buffers below */
    float *block;     /* one allocation carved into: */
    float *x, *xn;    /* (rows, dim) residual stream, normalized / projection output */
    float *q, *att;   /* (rows, n_heads*head_dim) */
    float *k, *v;     /* (rows, n_kv_heads*head_dim) */
    float *gate, *up; /* (rows, hidden_dim) */
    float *cos, *sin; /* (rows, head_dim/2) */
    size_t cap_lora;  /* floats of lora_tmp */
    float *lora_tmp;  /* (rows, r) shrink output */
    size_t cap_scores;
    float *scores;  /* (ctx) attention weights of one head */
    size_t cap_out; /* logit rows */
    float *xl;      /* (out rows, dim) hidden states whose logits are wanted */
    float *logits;  /* (out rows, n_vocab) when several items share the lm_head GEMM */
};

/* transformers' _compute_llama3_parameters: long wavelengths are slowed by factor,
 * short ones kept, the band between interpolated smoothly. */
static double llama3_freq(const core_config_t *c, double f)
{
    double old = c->rope_orig_max_pos, lo = c->rope_low_freq_factor;
    double hi = c->rope_high_freq_factor, factor = c->rope_factor;
    double wavelen = 2.0 * M_PI / f;
    if (wavelen < old / hi)
        return f;
    if (wavelen > old / lo)
        return f / factor;
    double smooth = (old / wavelen - lo) / (hi - lo);
    return (1.0 - smooth) * f / factor + smooth * f;
}

core_fwd_t *core_fwd_new(const core_model_t *m)
{
    const core_config_t *c = &m->cfg;
    core_fwd_t *f = calloc(1, sizeof *f);
    int half = c->head_dim / 2;
    if (!f)
        return NULL;
    f->m = m;
    f->inv_freq = malloc((size_t)half * sizeof *f->inv_freq);
    if (!f->inv_freq) {
        free(f);
        return NULL;
    }
    for (int i = 0; i < half; i++) {
        double fr = pow((double)c->rope_theta, -2.0 * i / c->head_dim);
        if (c->rope_scaling == 1)
            fr /= c->rope_factor;
        else if (c->rope_scaling == 2)
            fr = llama3_freq(c, fr);
        f->inv_freq[i] = fr;
    }
    return f;
}

void core_fwd_free(core_fwd_t *f)
{
    if (!f)
        return;
    free(f->inv_freq);
    free(f->block);
    free(f->lora_tmp);
    free(f->scores);
    free(f->xl);
    free(f->logits);
    free(f);
}

/* Grow a scratch buffer whose old contents do not matter. */
static rc_t grow(float **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return RC_OK;
    float *n = malloc(need * sizeof *n);
    if (!n)
        return RC_NOMEM;
    free(*p);
    *p = n;
    *cap = need;
    return RC_OK;
}

static rc_t fwd_reserve_rows(core_fwd_t *f, size_t rows)
{
    const core_config_t *c = &f->m->cfg;
    size_t dim = (size_t)c->dim, qd = (size_t)c->n_heads * (size_t)c->head_dim;
    size_t kvd = (size_t)c->n_kv_heads * (size_t)c->head_dim, hid = (size_t)c->hidden_dim;
    size_t half = (size_t)c->head_dim / 2;
    if (rows <= f->cap_rows)
        return RC_OK;
    size_t width = 2 * dim + 2 * qd + 2 * kvd + 2 * hid + 2 * half;
    float *b = malloc(rows * width * sizeof *b);
    if (!b)
        return RC_NOMEM;
    free(f->block);
    f->block = b;
    f->cap_rows = rows;
    f->x = b, b += rows * dim;
    f->xn = b, b += rows * dim;
    f->q = b, b += rows * qd;
    f->att = b, b += rows * qd;
    f->k = b, b += rows * kvd;
    f->v = b, b += rows * kvd;
    f->gate = b, b += rows * hid;
    f->up = b, b += rows * hid;
    f->cos = b, b += rows * half;
    f->sin = b;
    return RC_OK;
}

/* ---- validation ----------------------------------------------------------------- */

typedef struct {
    size_t n_rows;   /* T: all new tokens */
    size_t n_out;    /* rows whose logits are wanted */
    size_t max_ctx;  /* longest kv_len + n_tokens */
    size_t max_rank; /* widest LoRA module among the items */
} batch_dims_t;

static rc_t check_item(const core_model_t *m, const core_fwd_item_t *it, int i, core_err_t *err)
{
    const core_config_t *c = &m->cfg;
    if (!it->tokens || it->n_tokens < 1 || !it->kv || !it->logits)
        return core_err(err, RC_INVALID, "item %d: needs tokens, n_tokens >= 1, kv and logits", i);
    if (it->kv->n_layers != c->n_layers || it->kv->kv_dim != c->n_kv_heads * c->head_dim)
        return core_err(err, RC_INVALID, "item %d: kv cache was made for another model", i);
    if (it->lora && it->lora->n_layers != c->n_layers)
        return core_err(err, RC_MISMATCH, "item %d: adapter has %d layers, model %d", i,
                        it->lora->n_layers, c->n_layers);
    if (!isfinite(it->lora_scale))
        return core_err(err, RC_INVALID, "item %d: lora_scale is not finite", i);
    for (int t = 0; t < it->n_tokens; t++)
        if (it->tokens[t] < 0 || it->tokens[t] >= c->n_vocab)
            return core_err(err, RC_INVALID,
                            "item %d: token id %d (index %d) is outside the "
                            "vocab of %d",
                            i, (int)it->tokens[t], t, c->n_vocab);
    if (it->n_tokens > c->max_pos - it->kv->len)
        return core_err(err, RC_LIMIT,
                        "item %d: %d cached + %d new tokens exceed the "
                        "context of %d",
                        i, it->kv->len, it->n_tokens, c->max_pos);
    return RC_OK;
}

static rc_t check_batch(const core_model_t *m, const core_fwd_item_t *items, int n_items,
                        batch_dims_t *d, core_err_t *err)
{
    memset(d, 0, sizeof *d);
    for (int i = 0; i < n_items; i++) {
        const core_fwd_item_t *it = &items[i];
        rc_t rc = check_item(m, it, i, err);
        if (rc)
            return rc;
        for (int j = 0; j < i; j++)
            if (items[j].kv == it->kv)
                return core_err(err, RC_INVALID, "items %d and %d share one kv cache", j, i);
        d->n_rows += (size_t)it->n_tokens;
        d->n_out += it->all_logits ? (size_t)it->n_tokens : 1;
        if ((size_t)(it->kv->len + it->n_tokens) > d->max_ctx)
            d->max_ctx = (size_t)(it->kv->len + it->n_tokens);
        if (!it->lora)
            continue;
        for (int k = 0; k < it->lora->n_layers * CORE_MOD__COUNT; k++)
            if (it->lora->mods[k].A && (size_t)it->lora->mods[k].r > d->max_rank)
                d->max_rank = (size_t)it->lora->mods[k].r;
    }
    return RC_OK;
}

/* All allocation of a step happens here, before any cache is touched. */
static rc_t reserve(core_fwd_t *f, core_fwd_item_t *items, int n_items, const batch_dims_t *d,
                    core_err_t *err)
{
    const core_config_t *c = &f->m->cfg;
    rc_t rc;
    if ((rc = fwd_reserve_rows(f, d->n_rows)) ||
        (rc = grow(&f->lora_tmp, &f->cap_lora, d->n_rows * (d->max_rank ? d->max_rank : 1))) ||
        (rc = grow(&f->scores, &f->cap_scores, d->max_ctx)))
        goto out;
    /* xl holds cap_out rows; logits, when present, always cap_out rows too. It is only
     * needed when several items share the lm_head GEMM. */
    if (d->n_out > f->cap_out) {
        free(f->xl);
        free(f->logits);
        f->logits = NULL;
        f->cap_out = 0;
        f->xl = malloc(d->n_out * (size_t)c->dim * sizeof(float));
        if (!f->xl) {
            rc = RC_NOMEM;
            goto out;
        }
        f->cap_out = d->n_out;
    }
    if (n_items > 1 && !f->logits) {
        f->logits = malloc(f->cap_out * (size_t)c->n_vocab * sizeof(float));
        if (!f->logits) {
            rc = RC_NOMEM;
            goto out;
        }
    }
    for (int i = 0; i < n_items; i++)
        if ((rc = kv_reserve(items[i].kv, items[i].kv->len + items[i].n_tokens)))
            goto out;
out:
    if (rc)
        core_err(err, rc, "forward: out of memory for a batch of %zu tokens", d->n_rows);
    return rc;
}

/* ---- kernels (shape contracts in the comments; none allocates) ----------------- */

/* y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w.  x, y: (n_rows, dim); y may equal x. */
static void rmsnorm(float *y, const float *x, const float *w, size_t n_rows, size_t dim, float eps)
{
    for (size_t r = 0; r < n_rows; r++) {
        const float *xr = x + r * dim;
        float *yr = y + r * dim;
        double ss = 0.0;
        for (size_t i = 0; i < dim; i++)
            ss += (double)xr[i] * xr[i];
        float inv = (float)(1.0 / sqrt(ss / (double)dim + (double)eps));
        for (size_t i = 0; i < dim; i++)
            yr[i] = xr[i] * inv * w[i];
    }
}

/* y = x W^T + b over all rows.  x: (n_rows, n_in)  y: (n_rows, n_out). */
static void linear(float *y, const float *x, const core_linear_t *L, size_t n_rows)
{
    size_t n_out = (size_t)L->n_out;
    core_gemm_nt(y, x, L->w, n_rows, n_out, (size_t)L->n_in, 1.0f, 0.0f);
    if (!L->b)
        return;
    for (size_t r = 0; r < n_rows; r++)
        for (size_t o = 0; o < n_out; o++)
            y[r * n_out + o] += L->b[o];
}

/* y[rows of s] += s * (x[rows of s] A^T) B^T for every segment s of consecutive items
 * sharing one adapter and scale, so each segment is one shrink and one expand GEMM.
 * x: (T, n_in)  y: (T, n_out)  A: (r, n_in)  B: (n_out, r)  tmp: (T, r). */
static void lora_add(const core_fwd_item_t *items, int n_items, int layer, core_mod_t mod,
                     const float *x, float *y, const core_linear_t *L, float *tmp)
{
    size_t n_in = (size_t)L->n_in, n_out = (size_t)L->n_out, row = 0;
    for (int i = 0; i < n_items;) {
        const core_fwd_item_t *it = &items[i];
        size_t n_rows = 0;
        int j = i;
        for (; j < n_items && items[j].lora == it->lora && items[j].lora_scale == it->lora_scale;
             j++)
            n_rows += (size_t)items[j].n_tokens;
        if (it->lora && it->lora_scale != 0.0f) {
            const core_lora_mod_t *lm = core_lora_mod(it->lora, layer, mod);
            if (lm->A) {
                size_t r = (size_t)lm->r;
                core_gemm_nt(tmp, x + row * n_in, lm->A, n_rows, r, n_in, 1.0f, 0.0f);
                core_gemm_nt(y + row * n_out, tmp, lm->B, n_rows, n_out, r,
                             lm->scale * it->lora_scale, 1.0f);
            }
        }
        row += n_rows;
        i = j;
    }
}

/* HF rotate_half RoPE on each head: the first and second halves of a head are the two
 * coordinates of each rotated pair.  x: (n_rows, n_heads*hd)  cs, sn: (n_rows, hd/2). */
static void rope(float *x, const float *cs, const float *sn, size_t n_rows, size_t n_heads,
                 size_t hd)
{
    size_t half = hd / 2;
    for (size_t r = 0; r < n_rows; r++)
        for (size_t h = 0; h < n_heads; h++) {
            float *v = x + (r * n_heads + h) * hd;
            const float *c = cs + r * half, *s = sn + r * half;
            for (size_t i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * s[i];
                v[i + half] = b * c[i] + a * s[i];
            }
        }
}

/* cos/sin of position * inv_freq for every row of the batch (positions continue each
 * item's cache). */
static void rope_tables(core_fwd_t *f, const core_fwd_item_t *items, int n_items)
{
    size_t half = (size_t)f->m->cfg.head_dim / 2, row = 0;
    for (int i = 0; i < n_items; i++)
        for (int t = 0; t < items[i].n_tokens; t++, row++) {
            double pos = (double)(items[i].kv->len + t);
            for (size_t k = 0; k < half; k++) {
                double a = pos * f->inv_freq[k];
                f->cos[row * half + k] = (float)cos(a);
                f->sin[row * half + k] = (float)sin(a);
            }
        }
}

/* sum a[i] b[i]. Eight independent partial sums: a single running sum is one long
 * dependency chain the compiler may not reorder (no -ffast-math), which made attention
 * dominate decode at long context. */
static float dot(const float *restrict a, const float *restrict b, size_t n)
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
static void axpy(float *restrict y, float p, const float *restrict x, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            y[i + k] += p * x[i + k];
    for (; i < n; i++)
        y[i] += p * x[i];
}

/* Causal attention of one item's n new rows against its cache (already holding them).
 * q, out: (n, n_heads*hd) for this item; K, V: (ctx, n_kv*hd); scores: (ctx). */
static void attend(const core_config_t *c, const float *q, float *out, const float *K,
                   const float *V, int kv_len, int n, float *scores)
{
    size_t hd = (size_t)c->head_dim, qd = (size_t)c->n_heads * hd;
    size_t kvd = (size_t)c->n_kv_heads * hd;
    int group = c->n_heads / c->n_kv_heads;
    float scale = 1.0f / sqrtf((float)hd);
    for (int t = 0; t < n; t++) {
        size_t ctx = (size_t)kv_len + (size_t)t + 1; /* sees itself and everything before */
        for (int h = 0; h < c->n_heads; h++) {
            const float *qh = q + (size_t)t * qd + (size_t)h * hd;
            size_t kvo = (size_t)(h / group) * hd;
            float mx = -INFINITY, sum = 0.0f;
            for (size_t j = 0; j < ctx; j++) {
                scores[j] = dot(qh, K + j * kvd + kvo, hd) * scale;
                mx = scores[j] > mx ? scores[j] : mx;
            }
            for (size_t j = 0; j < ctx; j++) {
                scores[j] = expf(scores[j] - mx);
                sum += scores[j];
            }
            float *oh = out + (size_t)t * qd + (size_t)h * hd;
            memset(oh, 0, hd * sizeof *oh);
            for (size_t j = 0; j < ctx; j++)
                axpy(oh, scores[j] / sum, V + j * kvd + kvo, hd);
        }
    }
}

/* ---- the forward pass ------------------------------------------------------------ */

/* Attention block of layer l: x += o_proj(attention(rope(q), rope(k), v)). */
static void attn_block(const core_model_t *m, core_fwd_t *f, const core_fwd_item_t *items,
                       int n_items, int l, size_t T)
{
    const core_config_t *c = &m->cfg;
    const core_layer_t *L = &m->layers[l];
    size_t hd = (size_t)c->head_dim, qd = (size_t)c->n_heads * hd;
    size_t kvd = (size_t)c->n_kv_heads * hd, dim = (size_t)c->dim;

    /* q, k, v projections: one GEMM each over all rows, then each item's LoRA */
    rmsnorm(f->xn, f->x, L->attn_norm, T, dim, c->norm_eps);
    float *outs[3] = {f->q, f->k, f->v};
    for (int k = CORE_MOD_Q; k <= CORE_MOD_V; k++) {
        linear(outs[k], f->xn, &L->lin[k], T);
        lora_add(items, n_items, l, (core_mod_t)k, f->xn, outs[k], &L->lin[k], f->lora_tmp);
    }
    rope(f->q, f->cos, f->sin, T, (size_t)c->n_heads, hd);
    rope(f->k, f->cos, f->sin, T, (size_t)c->n_kv_heads, hd);

    /* append k, v to each item's cache, then attend over it */
    size_t row = 0;
    for (int i = 0; i < n_items; i++) {
        const core_fwd_item_t *it = &items[i];
        size_t n = (size_t)it->n_tokens, at = (size_t)it->kv->len;
        memcpy(it->kv->k[l] + at * kvd, f->k + row * kvd, n * kvd * sizeof(float));
        memcpy(it->kv->v[l] + at * kvd, f->v + row * kvd, n * kvd * sizeof(float));
        attend(c, f->q + row * qd, f->att + row * qd, it->kv->k[l], it->kv->v[l], it->kv->len,
               it->n_tokens, f->scores);
        row += n;
    }

    /* o_proj (+LoRA) into xn, residual */
    linear(f->xn, f->att, &L->lin[CORE_MOD_O], T);
    lora_add(items, n_items, l, CORE_MOD_O, f->att, f->xn, &L->lin[CORE_MOD_O], f->lora_tmp);
    for (size_t i = 0; i < T * dim; i++)
        f->x[i] += f->xn[i];
}

/* SwiGLU block of layer l: x += down(silu(gate(xn)) * up(xn)). */
static void mlp_block(const core_model_t *m, core_fwd_t *f, const core_fwd_item_t *items,
                      int n_items, int l, size_t T)
{
    const core_config_t *c = &m->cfg;
    const core_layer_t *L = &m->layers[l];
    size_t dim = (size_t)c->dim, hid = (size_t)c->hidden_dim;

    rmsnorm(f->xn, f->x, L->mlp_norm, T, dim, c->norm_eps);
    linear(f->gate, f->xn, &L->lin[CORE_MOD_GATE], T);
    lora_add(items, n_items, l, CORE_MOD_GATE, f->xn, f->gate, &L->lin[CORE_MOD_GATE], f->lora_tmp);
    linear(f->up, f->xn, &L->lin[CORE_MOD_UP], T);
    lora_add(items, n_items, l, CORE_MOD_UP, f->xn, f->up, &L->lin[CORE_MOD_UP], f->lora_tmp);
    for (size_t i = 0; i < T * hid; i++) {
        float g = f->gate[i];
        f->gate[i] = g / (1.0f + expf(-g)) * f->up[i];
    }
    linear(f->xn, f->gate, &L->lin[CORE_MOD_DOWN], T);
    lora_add(items, n_items, l, CORE_MOD_DOWN, f->gate, f->xn, &L->lin[CORE_MOD_DOWN], f->lora_tmp);
    for (size_t i = 0; i < T * dim; i++)
        f->x[i] += f->xn[i];
}

/* Final norm and lm_head for the wanted rows only, as one GEMM; then scatter. */
static void logits_out(const core_model_t *m, core_fwd_t *f, core_fwd_item_t *items, int n_items,
                       size_t n_out)
{
    const core_config_t *c = &m->cfg;
    size_t dim = (size_t)c->dim, vocab = (size_t)c->n_vocab, row = 0, o = 0;
    for (int i = 0; i < n_items; i++) {
        size_t n = (size_t)items[i].n_tokens, k = items[i].all_logits ? n : 1;
        memcpy(f->xl + o * dim, f->x + (row + n - k) * dim, k * dim * sizeof(float));
        row += n;
        o += k;
    }
    rmsnorm(f->xl, f->xl, m->final_norm, n_out, dim, c->norm_eps);
    float *dst = n_items == 1 ? items[0].logits : f->logits;
    core_gemm_nt(dst, f->xl, m->lm_head, n_out, vocab, dim, 1.0f, 0.0f);
    if (n_items == 1)
        return;
    o = 0;
    for (int i = 0; i < n_items; i++) {
        size_t k = items[i].all_logits ? (size_t)items[i].n_tokens : 1;
        memcpy(items[i].logits, f->logits + o * vocab, k * vocab * sizeof(float));
        o += k;
    }
}

rc_t core_forward(const core_model_t *m, core_fwd_t *f, core_fwd_item_t *items, int n_items,
                  core_err_t *err)
{
    batch_dims_t d;
    rc_t rc;
    if (!m || !f || f->m != m || n_items < 0 || (n_items > 0 && !items))
        return core_err(err, RC_INVALID, "forward: bad arguments");
    if (n_items == 0)
        return RC_OK;
    if ((rc = check_batch(m, items, n_items, &d, err)) ||
        (rc = reserve(f, items, n_items, &d, err)))
        return rc;

    /* embeddings of every new token, item after item */
    size_t dim = (size_t)m->cfg.dim, row = 0;
    for (int i = 0; i < n_items; i++)
        for (int t = 0; t < items[i].n_tokens; t++, row++)
            memcpy(f->x + row * dim, m->embed + (size_t)items[i].tokens[t] * dim,
                   dim * sizeof(float));
    rope_tables(f, items, n_items);

    for (int l = 0; l < m->cfg.n_layers; l++) {
        attn_block(m, f, items, n_items, l, d.n_rows);
        mlp_block(m, f, items, n_items, l, d.n_rows);
    }
    logits_out(m, f, items, n_items, d.n_out);
    for (int i = 0; i < n_items; i++)
        items[i].kv->len += items[i].n_tokens;
    return RC_OK;
}
