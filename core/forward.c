/* forward.c - the batched forward pass of a Llama-family model.
 *
 * One core_forward call runs every new token of every item as one batch of T rows: each
 * linear layer is ONE GEMM over all T rows (the weights are read once per step), then
 * every distinct LoRA of the step adds its low-rank delta to the rows whose adapter set
 * names it (one shrink + one expand per LoRA over all its rows, so each A and B is read
 * once per step, mixed ranks without padding, base-only rows skipped), and attention
 * (core/attention.c) runs every item against its own paged KV cache, over (item, KV head)
 * pairs on the compute pool. Layout: activations are row-major
 * (T, width), row r belonging to the item whose token range contains r, in item order.
 *
 * The KV cache is core/kv.c; routed rows (routers, X-LoRA's scaling pass) are
 * core/forward_route.c.
 *
 * Threads: a core_fwd_t, a pool and its caches belong to one thread at a time; the model
 * is only read. No threads are created here: the GEMM and the per-LoRA tasks run on the
 * compute pool (core/pool.h), in an order that never changes a sum, so a step's results
 * are bit-identical run to run. Everything that can fail (validation, scratch growth, KV
 * blocks) happens at the top of core_forward before any cache is touched, so a failed
 * step appends nothing. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/attention.h"
#include "core/forward_int.h"
#include "core/gemm.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/pool.h"

/* ---- scratch -------------------------------------------------------------------- */

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
    free(f->xl);
    free(f->logits);
    free(f->plora);
    free(f->ltasks);
    free(f->pidx);
    free(f->prow);
    free(f->pw);
    free(f->xg);
    free(f->slab);
    free(f->h);
    free(f->lam), free(f->rplora), free(f->rprow), free(f->rpw);
    free(f->xs), free(f->xs_at), free(f->xh), free(f->xscr);
    free(f->sub), free(f->rkv), free(f->rkv_n);
    free(f);
}

/* Grow a scratch buffer whose old contents do not matter. */
static rc_t grow(float **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return RC_OK;
    if (need > SIZE_MAX / sizeof **p)
        return RC_NOMEM;
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

/* LoRA rows one wave of lora_add holds in a step of n_rows rows: all of them (at most
 * CORE_ASET_MAX per row) when that is few, else LORA_WAVE_ROWS or n_rows, whichever is
 * more - one LoRA's rows always fit. Each row costs a slab row and a gather row of the
 * widest module (12 KB each at hidden 2816): a prefill of thousands of rows runs in
 * several waves rather than holding eight slabs of its whole width. */
#ifndef LORA_WAVE_ROWS
#define LORA_WAVE_ROWS 256
#endif

static size_t wave_rows(size_t n_rows)
{
    size_t all = n_rows * CORE_ASET_MAX;
    if (all <= LORA_WAVE_ROWS)
        return all;
    return n_rows > LORA_WAVE_ROWS ? n_rows : LORA_WAVE_ROWS;
}

/* The LoRA plan of n_items items and n_rows rows (each item's set names at most
 * CORE_ASET_MAX LoRAs) and the buffers of one wave at rank max_rank. */
static rc_t lora_grow(core_fwd_t *f, size_t n_rows, size_t n_items, size_t max_rank)
{
    const core_config_t *c = &f->m->cfg;
    size_t qd = (size_t)c->n_heads * (size_t)c->head_dim, width = (size_t)c->dim;
    size_t kvd = (size_t)c->n_kv_heads * (size_t)c->head_dim, hid = (size_t)c->hidden_dim;
    width = qd > width ? qd : width, width = kvd > width ? kvd : width;
    width = hid > width ? hid : width;
    /* a routed item may bring CORE_ROUTER_MAX_EXPERTS LoRAs to one module's plan */
    size_t wave = wave_rows(n_rows), n_lora = n_items * CORE_ROUTER_MAX_EXPERTS;
    size_t n_prow = n_rows * CORE_ASET_MAX;
    rc_t rc;
    if ((rc = grow(&f->xg, &f->cap_xg, wave * width)) ||
        (rc = grow(&f->slab, &f->cap_slab, wave * width)) ||
        (rc = grow(&f->h, &f->cap_h, wave * (max_rank ? max_rank : 1))))
        return rc;
    f->cap_wave = wave > f->cap_wave ? wave : f->cap_wave; /* xg and slab hold it */
    if (n_prow > f->cap_prow) {
        size_t *r = malloc(n_prow * sizeof *r);
        float *w = malloc(n_prow * sizeof *w);
        if (!r || !w) {
            free(r), free(w);
            return RC_NOMEM;
        }
        free(f->prow), free(f->pw);
        f->prow = r, f->pw = w, f->cap_prow = n_prow;
    }
    if (n_lora > f->cap_plora) {
        fwd_plora_t *p = malloc(n_lora * sizeof *p);
        fwd_ltask_t *t = malloc(n_lora * sizeof *t);
        int *x = malloc(n_lora * sizeof *x);
        if (!p || !t || !x) {
            free(p), free(t), free(x);
            return RC_NOMEM;
        }
        free(f->plora), free(f->ltasks), free(f->pidx);
        f->plora = p, f->ltasks = t, f->pidx = x, f->cap_plora = n_lora;
    }
    return RC_OK;
}

/* Every buffer a step of n_rows rows, n_out logit rows (n_items items, n_items > 1 when
 * the logits go through scratch) and shrink rank max_rank needs. */
static rc_t fwd_grow(core_fwd_t *f, size_t n_rows, size_t n_out, size_t n_items,
                     size_t max_rank)
{
    const core_config_t *c = &f->m->cfg;
    size_t lg_rows = n_items > 1 ? n_out : 0;
    rc_t rc;
    if ((rc = fwd_reserve_rows(f, n_rows)) ||
        (rc = grow(&f->xl, &f->cap_xl, n_out * (size_t)c->dim)) ||
        (rc = grow(&f->logits, &f->cap_lg, lg_rows * (size_t)c->n_vocab)))
        return rc;
    return lora_grow(f, n_rows, n_items, max_rank);
}

rc_t core_fwd_reserve(core_fwd_t *f, int max_rows, int max_rank, int max_items)
{
    if (!f || max_rows < 1 || max_rank < 0 || max_items < 1)
        return RC_INVALID;
    /* n_items <= n_rows (each item has a token); one logit row per item is the common
     * case, all_logits items grow the logit rows later */
    size_t items = (size_t)(max_items < max_rows ? max_items : max_rows);
    return fwd_grow(f, (size_t)max_rows, items, items, (size_t)max_rank);
}

/* ---- validation and reservation ------------------------------------------------- */

typedef struct {
    size_t n_rows;   /* T: all new tokens */
    size_t n_out;    /* rows whose logits are wanted */
    size_t max_rank; /* widest module of any LoRA term the step applies */
} batch_dims_t;

/* The widest module rank of l (rank_pattern may exceed the config's r). */
static size_t lora_max_rank(const core_lora_t *l)
{
    size_t r = 0;
    for (int k = 0; k < l->n_layers * CORE_MOD__COUNT; k++)
        if (l->mods[k].A && (size_t)l->mods[k].r > r)
            r = (size_t)l->mods[k].r;
    return r;
}

static rc_t check_aset(const core_config_t *c, const core_aset_t *s, int i, core_err_t *err)
{
    if (s->n < 1 || s->n > CORE_ASET_MAX)
        return core_err(err, RC_INVALID, "item %d: adapter set has %d terms", i, s->n);
    for (int k = 0; k < s->n; k++) {
        const core_lora_t *l = s->terms[k].lora;
        if (!l || !isfinite(s->terms[k].weight))
            return core_err(err, RC_INVALID, "item %d: adapter set term %d is invalid", i, k);
        if (l->n_layers != c->n_layers)
            return core_err(err, RC_MISMATCH, "item %d: adapter %d has %d layers, model %d", i,
                            k, l->n_layers, c->n_layers);
    }
    return RC_OK;
}

static rc_t check_item(const core_model_t *m, const core_fwd_item_t *it, int i, core_err_t *err)
{
    const core_config_t *c = &m->cfg;
    if (!it->tokens || it->n_tokens < 1 || !it->kv || !it->logits)
        return core_err(err, RC_INVALID, "item %d: needs tokens, n_tokens >= 1, kv and logits", i);
    const core_kv_pool_t *p = it->kv->pool;
    if (p->n_layers != c->n_layers || p->kv_dim != c->n_kv_heads * c->head_dim)
        return core_err(err, RC_INVALID, "item %d: kv cache was made for another model", i);
    if (it->aset) {
        rc_t rc = check_aset(c, it->aset, i, err);
        if (rc)
            return rc;
    }
    if (it->router) {
        rc_t rc = core__route_check(c, it, i, err);
        if (rc)
            return rc;
        const core_kv_t *ks = it->kv_scaling;
        if (it->router->kind == CORE_ROUTER_XLORA &&
            (!ks || ks == it->kv || ks->pool->n_layers != c->n_layers ||
             ks->pool->kv_dim != p->kv_dim || ks->len != it->kv->len))
            return core_err(err, RC_INVALID, "item %d: an X-LoRA item needs its own scaling "
                            "cache holding as many positions as its cache", i);
    }
    for (int t = 0; t < it->n_tokens; t++)
        if (it->tokens[t] < 0 || it->tokens[t] >= c->n_vocab)
            return core_err(err, RC_INVALID,
                            "item %d: token id %d (index %d) is outside the vocab of %d", i,
                            (int)it->tokens[t], t, c->n_vocab);
    int max_pos = c->max_pos < p->max_pos ? c->max_pos : p->max_pos;
    if (it->n_tokens > max_pos - it->kv->len)
        return core_err(err, RC_LIMIT, "item %d: %d cached + %d new tokens exceed the context of %d",
                        i, it->kv->len, it->n_tokens, max_pos);
    return RC_OK;
}

/* Two items sharing a cache are found by stamping each cache with this step (linear in
 * the batch, not pairwise); the stamp is bookkeeping, not cache contents. */
static rc_t check_batch(core_fwd_t *f, const core_fwd_item_t *items, int n_items,
                        batch_dims_t *d, core_err_t *err)
{
    memset(d, 0, sizeof *d);
    f->n_steps++;
    for (int i = 0; i < n_items; i++) {
        const core_fwd_item_t *it = &items[i];
        rc_t rc = check_item(f->m, it, i, err);
        if (rc)
            return rc;
        if (it->kv->claimed_by == f && it->kv->claimed_step == f->n_steps)
            return core_err(err, RC_INVALID, "item %d shares its kv cache with an earlier item", i);
        it->kv->claimed_by = f;
        it->kv->claimed_step = f->n_steps;
        if (it->kv_scaling && it->router && it->router->kind == CORE_ROUTER_XLORA) {
            core_kv_t *ks = it->kv_scaling;
            if (ks->claimed_by == f && ks->claimed_step == f->n_steps)
                return core_err(err, RC_INVALID, "item %d shares its scaling cache", i);
            ks->claimed_by = f;
            ks->claimed_step = f->n_steps;
        }
        d->n_rows += (size_t)it->n_tokens;
        d->n_out += it->all_logits ? (size_t)it->n_tokens : 1;
        if (it->router) {
            size_t r = core__route_max_rank(it);
            d->max_rank = r > d->max_rank ? r : d->max_rank;
            continue;
        }
        /* a set repeated on adjacent items was measured already */
        if (!it->aset || (i > 0 && core_aset_equal(items[i - 1].aset, it->aset)))
            continue;
        for (int k = 0; k < it->aset->n; k++) {
            size_t r = lora_max_rank(it->aset->terms[k].lora);
            d->max_rank = r > d->max_rank ? r : d->max_rank;
        }
    }
    return RC_OK;
}

/* Every cache the step appends to: each item's, and the scaling caches of X-LoRA items. */
static rc_t reserve_items(core_fwd_t *f, const core_fwd_item_t *items, int n_items,
                          core_err_t *err)
{
    int n = 0;
    for (int i = 0; i < n_items; i++) {
        f->rkv[n] = items[i].kv, f->rkv_n[n++] = items[i].n_tokens;
        if (items[i].router && items[i].router->kind == CORE_ROUTER_XLORA)
            f->rkv[n] = items[i].kv_scaling, f->rkv_n[n++] = items[i].n_tokens;
    }
    return core__kv_reserve_all(f->rkv, f->rkv_n, n, err);
}

/* The distinct LoRAs of set s (NULL: none) with their summed weights; zero sums are left
 * out (they add exactly nothing). Returns how many. */
static int set_loras(const core_aset_t *s, const core_lora_t **l, float *w)
{
    int n = 0, m = 0;
    for (int k = 0; s && k < s->n; k++) {
        int j = 0;
        while (j < n && l[j] != s->terms[k].lora)
            j++;
        if (j == n)
            l[n] = s->terms[k].lora, w[n++] = 0.0f;
        w[j] += s->terms[k].weight;
    }
    for (int j = 0; j < n; j++)
        if (w[j] != 0.0f)
            l[m] = l[j], w[m++] = w[j];
    return m;
}

/* Plan index of LoRA l, added with no rows on first use. */
static int plan_index(core_fwd_t *f, const core_lora_t *l)
{
    size_t p = 0;
    while (p < f->n_plora && f->plora[p].lora != l)
        p++;
    if (p == f->n_plora)
        f->plora[f->n_plora++] = (fwd_plora_t){.lora = l};
    return (int)p;
}

/* Once per step: the distinct LoRAs of the items' sets, each with its rows in row order
 * and their weights, so lora_add reads each LoRA's A and B once per module however many
 * sequences use it. Pass 1 counts the rows of each LoRA, pass 2 fills them in. */
static void build_plan(core_fwd_t *f, const core_fwd_item_t *items, int n_items)
{
    const core_lora_t *l[CORE_ASET_MAX];
    float w[CORE_ASET_MAX];
    f->n_plora = 0;
    for (int i = 0; i < n_items; i++) {
        int n = set_loras(items[i].aset, l, w), *idx = f->pidx + (size_t)i * CORE_ASET_MAX;
        bool same = i > 0 && core_aset_equal(items[i - 1].aset, items[i].aset);
        for (int k = 0; k < n; k++) {
            idx[k] = same ? idx[k - CORE_ASET_MAX] : plan_index(f, l[k]);
            f->plora[idx[k]].n_rows += (size_t)items[i].n_tokens;
        }
    }
    for (size_t p = 0, at = 0; p < f->n_plora; p++) {
        f->plora[p].at = at;
        at += f->plora[p].n_rows;
        f->plora[p].n_rows = 0;
    }
    size_t row = 0;
    for (int i = 0; i < n_items; row += (size_t)items[i].n_tokens, i++) {
        int n = set_loras(items[i].aset, l, w);
        for (int k = 0; k < n; k++) {
            fwd_plora_t *pl = &f->plora[f->pidx[(size_t)i * CORE_ASET_MAX + (size_t)k]];
            for (int t = 0; t < items[i].n_tokens; t++, pl->n_rows++) {
                f->prow[pl->at + pl->n_rows] = row + (size_t)t;
                f->pw[pl->at + pl->n_rows] = w[k];
            }
        }
    }
    for (size_t p = 0; p < f->n_plora; p++) {
        fwd_plora_t *pl = &f->plora[p];
        pl->contiguous = f->prow[pl->at + pl->n_rows - 1] - f->prow[pl->at] == pl->n_rows - 1;
    }
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

/* y = x W^T + b over all rows: ONE GEMM, the weights read once for the whole step.
 * x: (n_rows, n_in)  y: (n_rows, n_out). */
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

/* A wave of LoRA tasks whose total work is below this many multiply-adds runs on the
 * calling thread (tiny models, a single decode row), and a scatter below LORA_SERIAL_ADDS
 * floats: a hand-off to the pool costs more. */
#ifndef LORA_SERIAL_MACS
#define LORA_SERIAL_MACS ((size_t)64 * 1024)
#endif
#ifndef LORA_SERIAL_ADDS
#define LORA_SERIAL_ADDS ((size_t)32 * 1024)
#endif
#define LORA_SCATTER_GRAIN 64 /* columns */

/* One wave of lora_add: tasks t[0 .. n_tasks) of one module. */
typedef struct {
    const fwd_plan_t *plan;
    const float *x; /* (T, n_in) */
    float *y;       /* (T, n_out) */
    size_t n_in, n_out, n_tasks;
    fwd_ltask_t *t;
} lora_wave_t;

/* One LoRA on its rows: H = X_l A^T (X_l gathered unless contiguous), row i of H scaled by
 * w_i s, then out = H B^T - or y += H B^T in place when out is NULL. A and B are read
 * once for all rows. Called on a pool thread, its products stay on that thread (the
 * pool is busy, pool.h). */
static void lora_task_run(const lora_wave_t *w, const fwd_ltask_t *t)
{
    const fwd_plora_t *pl = t->pl;
    const size_t *rows = w->plan->prow + pl->at;
    const float *wt = w->plan->pw + pl->at;
    size_t n = pl->n_rows, r = (size_t)t->lm->r, n_in = w->n_in;
    const float *xs = w->x + rows[0] * n_in;
    if (!pl->contiguous) {
        for (size_t i = 0; i < n; i++)
            memcpy(t->xg + i * n_in, w->x + rows[i] * n_in, n_in * sizeof(float));
        xs = t->xg;
    }
    core_gemm_nt(t->h, xs, t->lm->A, n, r, n_in, 1.0f, 0.0f);
    for (size_t i = 0; i < n; i++) {
        float c = wt[i] * t->lm->scale;
        for (size_t k = 0; k < r; k++)
            t->h[i * r + k] *= c;
    }
    if (t->out)
        core_gemm_nt(t->out, t->h, t->lm->B, n, w->n_out, r, 1.0f, 0.0f);
    else
        core_gemm_nt(w->y + rows[0] * w->n_out, t->h, t->lm->B, n, w->n_out, r, 1.0f, 1.0f);
}

static void lora_tasks(void *arg, size_t begin, size_t end)
{
    const lora_wave_t *w = arg;
    for (size_t i = begin; i < end; i++)
        lora_task_run(w, &w->t[i]);
}

/* Columns [c0, c1) of y += every task's slab at its rows, task after task in plan order:
 * each element's sum runs in the same order whichever thread adds which columns. */
static void lora_scatter(void *arg, size_t c0, size_t c1)
{
    const lora_wave_t *w = arg;
    for (size_t k = 0; k < w->n_tasks; k++) {
        const fwd_ltask_t *t = &w->t[k];
        const size_t *rows = w->plan->prow + t->pl->at;
        for (size_t i = 0; i < t->pl->n_rows; i++) {
            float *yr = w->y + rows[i] * w->n_out;
            const float *sr = t->out + i * w->n_out;
            for (size_t c = c0; c < c1; c++)
                yr[c] += sr[c];
        }
    }
}

/* Run a wave of macs multiply-adds over slab_rows slab rows: the tasks in parallel, each
 * into its own slab, then the slabs added into y. A lone task with contiguous rows skips
 * the slab and gets the whole pool for its own products instead. */
static void lora_wave_run(lora_wave_t *w, size_t macs, size_t slab_rows)
{
    fwd_ltask_t *t0 = &w->t[0];
    if (w->n_tasks == 1 && t0->pl->contiguous) {
        t0->out = NULL;
        lora_task_run(w, t0);
        return;
    }
    if (w->n_tasks == 1 || macs < LORA_SERIAL_MACS)
        lora_tasks(w, 0, w->n_tasks);
    else
        core_pool_for(w->n_tasks, 1, lora_tasks, w);
    if (slab_rows * w->n_out < LORA_SERIAL_ADDS)
        lora_scatter(w, 0, w->n_out);
    else
        core_pool_for(w->n_out, LORA_SCATTER_GRAIN, lora_scatter, w);
}

/* y[rows of l] += (w_row s_l) (x[rows of l] A_l^T) B_l^T for every LoRA l of the plan
 * that targets this module: each LoRA's A and B read once for all its rows, at its own
 * rank (no padding); base-only rows belong to no LoRA. The LoRAs are packed into waves
 * that fit the slab (one wave in a decode step). x: (T, n_in)  y: (T, n_out)
 * A_l: (r_l, n_in)  B_l: (n_out, r_l). */
void core__fwd_plan_add(const core_fwd_t *f, const fwd_plan_t *plan, int layer, core_mod_t mod,
                        const float *x, float *y, const core_linear_t *L)
{
    size_t n_in = (size_t)L->n_in, n_out = (size_t)L->n_out, rows = 0, hf = 0, macs = 0;
    lora_wave_t w = {plan, x, y, n_in, n_out, 0, f->ltasks};
    for (size_t p = 0; p < plan->n; p++) {
        const fwd_plora_t *pl = &plan->p[p];
        const core_lora_mod_t *lm = core_lora_mod(pl->lora, layer, mod);
        if (!lm->A || !pl->n_rows)
            continue;
        size_t n = pl->n_rows, r = (size_t)lm->r;
        if (w.n_tasks && (rows + n > f->cap_wave || hf + n * r > f->cap_h)) {
            lora_wave_run(&w, macs, rows);
            w.n_tasks = rows = hf = macs = 0;
        }
        f->ltasks[w.n_tasks++] = (fwd_ltask_t){pl, lm, f->xg + rows * n_in, f->h + hf,
                                               f->slab + rows * n_out};
        rows += n, hf += n * r, macs += n * r * (n_in + n_out);
    }
    if (w.n_tasks)
        lora_wave_run(&w, macs, rows);
}

/* The adapter sets' delta (the step's plan), then the routed rows' (a plan per module). */
static void lora_add(core_fwd_t *f, int layer, core_mod_t mod, const float *x, float *y,
                     const core_linear_t *L)
{
    fwd_plan_t plan = {f->plora, f->n_plora, f->prow, f->pw};
    core__fwd_plan_add(f, &plan, layer, mod, x, y, L);
    core__route_add(f, layer, mod, x, y, L);
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

/* Write the n new rows of k and v of layer l at positions len.. of the cache.
 * k, v: (n, kv_dim). */
static void kv_write(const core_kv_t *kv, int l, const float *k, const float *v, int n)
{
    const core_kv_pool_t *p = kv->pool;
    size_t kvd = (size_t)p->kv_dim, span = (size_t)p->block_tokens * kvd;
    for (int t = 0; t < n; t++) {
        int pos = kv->len + t;
        float *K = kv_block(p, kv->table[pos / p->block_tokens], l);
        size_t at = (size_t)(pos % p->block_tokens) * kvd;
        memcpy(K + at, k + (size_t)t * kvd, kvd * sizeof(float));
        memcpy(K + span + at, v + (size_t)t * kvd, kvd * sizeof(float));
    }
}

/* Items of the step and the layer, for attn_view. */
typedef struct {
    const core_fwd_item_t *items;
    int l;
} attn_items_t;

/* core__attention's view of item i's cache at layer l (called from pool threads, reads
 * only): K of block id b at kv_block(p, b, l), its V block_tokens rows further. */
static void attn_view(void *ctx, int i, core__attn_kv_t *out)
{
    const attn_items_t *a = ctx;
    const core_kv_t *kv = a->items[i].kv;
    const core_kv_pool_t *p = kv->pool;
    *out = (core__attn_kv_t){.base = kv_block(p, 0, a->l), .table = kv->table,
                             .block_stride = p->block_floats,
                             .v_offset = (size_t)p->block_tokens * (size_t)p->kv_dim,
                             .block_tokens = p->block_tokens, .len = kv->len,
                             .n_tokens = a->items[i].n_tokens};
}

/* ---- the forward pass ------------------------------------------------------------ */

/* Attention block of layer l: x += o_proj(attention(rope(q), rope(k), v)). */
static void attn_block(const core_model_t *m, core_fwd_t *f, const core_fwd_item_t *items,
                       int n_items, int l, size_t T)
{
    const core_config_t *c = &m->cfg;
    const core_layer_t *L = &m->layers[l];
    size_t hd = (size_t)c->head_dim;
    size_t kvd = (size_t)c->n_kv_heads * hd, dim = (size_t)c->dim;

    /* q, k, v projections: one GEMM each over all rows, then the adapter segments */
    rmsnorm(f->xn, f->x, L->attn_norm, T, dim, c->norm_eps);
    float *outs[3] = {f->q, f->k, f->v};
    for (int k = CORE_MOD_Q; k <= CORE_MOD_V; k++) {
        linear(outs[k], f->xn, &L->lin[k], T);
        lora_add(f, l, (core_mod_t)k, f->xn, outs[k], &L->lin[k]);
    }
    rope(f->q, f->cos, f->sin, T, (size_t)c->n_heads, hd);
    rope(f->k, f->cos, f->sin, T, (size_t)c->n_kv_heads, hd);

    /* append k, v to each item's cache, then attend over it: all items in one call */
    size_t row = 0;
    for (int i = 0; i < n_items; i++) {
        kv_write(items[i].kv, l, f->k + row * kvd, f->v + row * kvd, items[i].n_tokens);
        row += (size_t)items[i].n_tokens;
    }
    attn_items_t ai = {items, l};
    core__attention(&(core__attn_t){.n_heads = c->n_heads, .n_kv_heads = c->n_kv_heads,
                                    .head_dim = c->head_dim, .n_items = n_items,
                                    .view = attn_view, .view_ctx = &ai, .q = f->q,
                                    .out = f->att});

    /* o_proj (+ adapters) into xn, residual */
    linear(f->xn, f->att, &L->lin[CORE_MOD_O], T);
    lora_add(f, l, CORE_MOD_O, f->att, f->xn, &L->lin[CORE_MOD_O]);
    for (size_t i = 0; i < T * dim; i++)
        f->x[i] += f->xn[i];
}

/* SwiGLU block of layer l: x += down(silu(gate(xn)) * up(xn)). */
static void mlp_block(const core_model_t *m, core_fwd_t *f, int l, size_t T)
{
    const core_config_t *c = &m->cfg;
    const core_layer_t *L = &m->layers[l];
    size_t dim = (size_t)c->dim, hid = (size_t)c->hidden_dim;

    rmsnorm(f->xn, f->x, L->mlp_norm, T, dim, c->norm_eps);
    linear(f->gate, f->xn, &L->lin[CORE_MOD_GATE], T);
    lora_add(f, l, CORE_MOD_GATE, f->xn, f->gate, &L->lin[CORE_MOD_GATE]);
    linear(f->up, f->xn, &L->lin[CORE_MOD_UP], T);
    lora_add(f, l, CORE_MOD_UP, f->xn, f->up, &L->lin[CORE_MOD_UP]);
    for (size_t i = 0; i < T * hid; i++) {
        float g = f->gate[i];
        f->gate[i] = g / (1.0f + expf(-g)) * f->up[i];
    }
    linear(f->xn, f->gate, &L->lin[CORE_MOD_DOWN], T);
    lora_add(f, l, CORE_MOD_DOWN, f->gate, f->xn, &L->lin[CORE_MOD_DOWN]);
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
    /* When the callers' buffers are already consecutive rows in item order (the engine
     * lays them out so), the GEMM writes there directly: no copy of n_out x vocab. */
    bool direct = true;
    for (int i = 1, o2 = items[0].all_logits ? items[0].n_tokens : 1; direct && i < n_items; i++) {
        direct = items[i].logits == items[0].logits + (size_t)o2 * vocab;
        o2 += items[i].all_logits ? items[i].n_tokens : 1;
    }
    float *dst = direct ? items[0].logits : f->logits;
    core_gemm_nt(dst, f->xl, m->lm_head, n_out, vocab, dim, 1.0f, 0.0f);
    if (direct)
        return;
    o = 0;
    for (int i = 0; i < n_items; i++) {
        size_t k = items[i].all_logits ? (size_t)items[i].n_tokens : 1;
        memcpy(items[i].logits, f->logits + o * vocab, k * vocab * sizeof(float));
        o += k;
    }
}

/* Embeddings, then every layer, over the items' rows (T of them); LoRA plans built. */
static void run_layers(const core_model_t *m, core_fwd_t *f, const core_fwd_item_t *items,
                       int n_items, size_t T)
{
    build_plan(f, items, n_items);
    f->cur = items, f->n_cur = n_items;
    size_t dim = (size_t)m->cfg.dim, row = 0;
    for (int i = 0; i < n_items; i++)
        for (int t = 0; t < items[i].n_tokens; t++, row++)
            memcpy(f->x + row * dim, m->embed + (size_t)items[i].tokens[t] * dim,
                   dim * sizeof(float));
    rope_tables(f, items, n_items);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        attn_block(m, f, items, n_items, l, T);
        mlp_block(m, f, l, T);
    }
}

/* X-LoRA's first pass (ADAPTER-MATH 2.3): the X-LoRA items' tokens through their scaling
 * caches with every expert at scaling_pass_value, the final-norm hidden states turned
 * into each item's scalings for the real pass. */
static void xlora_scaling_pass(const core_model_t *m, core_fwd_t *f,
                               const core_fwd_item_t *items, int n_items)
{
    int n_sub = core__xlora_sub_items(f, items, n_items);
    size_t T = 0, dim = (size_t)m->cfg.dim;
    for (int i = 0; i < n_sub; i++)
        T += (size_t)f->sub[i].n_tokens;
    f->scaling_pass = true;
    run_layers(m, f, f->sub, n_sub, T);
    f->scaling_pass = false;
    rmsnorm(f->xh, f->x, m->final_norm, T, dim, m->cfg.norm_eps);
    for (int i = 0; i < n_sub; i++)
        f->sub[i].kv->len += f->sub[i].n_tokens;
    core__xlora_scalings(f, items, n_items);
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
    if ((rc = check_batch(f, items, n_items, &d, err)))
        return rc;
    /* scratch before blocks: a failure after taking blocks would leave them reserved */
    if ((rc = fwd_grow(f, d.n_rows, d.n_out, (size_t)n_items, d.max_rank)) ||
        (rc = core__route_grow(f, items, n_items, d.n_rows)))
        return core_err(err, rc, "forward: out of memory for a batch of %zu tokens", d.n_rows);
    if ((rc = reserve_items(f, items, n_items, err)))
        return rc;
    if (f->n_xlora)
        xlora_scaling_pass(m, f, items, n_items);
    run_layers(m, f, items, n_items, d.n_rows);
    logits_out(m, f, items, n_items, d.n_out);
    for (int i = 0; i < n_items; i++)
        items[i].kv->len += items[i].n_tokens;
    return RC_OK;
}
