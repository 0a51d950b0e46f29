/* router_xlora.c - X-LoRA (ADAPTER-MATH 2): the config's fields, the slot numbering of 2.4,
 * the classifier bound from PEFT's adapter_model.safetensors or the original repo's
 * xlora_classifier.safetensors, and the per-token scalings S (n_slots, n_experts).
 *
 * Classifier keys are untrusted: each binds one linear layer's weight or bias exactly
 * once, layers sort by their numeric index, shapes must chain from hidden_size to the
 * output width, and the layer count must equal xlora_depth.
 * Threads: core_xlora_scalings reads an immutable router and caller scratch only. */
#include "core/router_int.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/gemm.h"

#define PEFT_KEY "internal_xlora_classifier.layers."

/* ---- config fields -------------------------------------------------------------- */

/* Absent or null: def. Otherwise a boolean. */
static rc_t get_bool(const router_cfg_t *c, const char *key, bool def, bool *out, core_err_t *err)
{
    const json_t *v = json_object_get(c->root, key);
    *out = def;
    if (!v || json_is_null(v))
        return RC_OK;
    if (!json_is_boolean(v))
        return core_err_r(err, RC_INVALID, "invalid_config", "%s: %s must be true or false",
                          c->file, key);
    *out = json_is_true(v);
    return RC_OK;
}

/* Absent or null: def. Otherwise a finite number. */
static rc_t get_num(const router_cfg_t *c, const char *key, double def, double *out,
                    core_err_t *err)
{
    const json_t *v = json_object_get(c->root, key);
    *out = def;
    if (!v || json_is_null(v))
        return RC_OK;
    double d = json_is_number(v) ? json_number_value(v) : NAN;
    if (!isfinite(d) || fabs(d) > 1e30)
        return core_err_r(err, RC_INVALID, "invalid_config", "%s: %s must be a finite number",
                          c->file, key);
    *out = d;
    return RC_OK;
}

/* Absent or null: def. Otherwise an integer in lo..hi. */
static rc_t get_int(const router_cfg_t *c, const char *key, int def, int lo, int hi, int *out,
                    core_err_t *err)
{
    const json_t *v = json_object_get(c->root, key);
    *out = def;
    if (!v || json_is_null(v))
        return RC_OK;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return core_err_r(err, RC_INVALID, "invalid_config", "%s: %s must be an integer in %d..%d",
                          c->file, key, lo, hi);
    *out = (int)json_integer_value(v);
    return RC_OK;
}

typedef struct {
    int depth;
    bool use_bias;
} xcfg_t;

static rc_t cfg_hidden(const router_cfg_t *c, const core_config_t *base, core_err_t *err)
{
    const json_t *v = json_object_get(c->root, "hidden_size");
    if (!v || json_is_null(v))
        return core_err_r(err, RC_INVALID, "missing_field", "%s: hidden_size missing", c->file);
    if (!json_is_integer(v))
        return core_err_r(err, RC_INVALID, "invalid_config", "%s: hidden_size is not an integer",
                          c->file);
    if (json_integer_value(v) != base->dim)
        return core_err_r(err, RC_MISMATCH, "shape_mismatch",
                          "%s: hidden_size %lld, the base's is %d", c->file,
                          (long long)json_integer_value(v), base->dim);
    return RC_OK;
}

/* scaling_pass_value: absent 0, null 1/n_experts (PEFT's runtime meaning of None). */
static rc_t cfg_pass_value(const router_cfg_t *c, core_xlora_t *x, core_err_t *err)
{
    const json_t *v = json_object_get(c->root, "scaling_pass_value");
    double d = 0;
    rc_t rc = RC_OK;
    if (v && json_is_null(v))
        d = 1.0 / c->n;
    else
        rc = get_num(c, "scaling_pass_value", 0.0, &d, err);
    x->scaling_pass_value = (float)d;
    return rc;
}

static rc_t cfg_fields(const router_cfg_t *c, core_router_t *r, const core_config_t *base,
                       xcfg_t *xc, core_err_t *err)
{
    core_xlora_t *x = &r->xlora;
    double temp = 1, g = 1;
    rc_t rc = cfg_hidden(c, base, err);
    if (!rc)
        rc = get_bool(c, "enable_softmax", true, &x->softmax, err);
    if (!rc)
        rc = get_bool(c, "enable_softmax_topk", false, &x->softmax_topk, err);
    if (!rc)
        rc = get_bool(c, "layerwise_scalings", false, &x->layerwise, err);
    if (!rc)
        rc = get_num(c, "softmax_temperature", 1.0, &temp, err);
    if (!rc && !(temp > 0))
        rc = core_err_r(err, RC_INVALID, "invalid_config", "%s: softmax_temperature must be > 0",
                        c->file);
    if (!rc)
        rc = get_int(c, "top_k_lora", 0, 0, c->n, &r->top_k, err);
    if (!rc)
        rc = get_int(c, "xlora_depth", 1, 1, ROUTER_MAX_LIN, &xc->depth, err);
    if (!rc)
        rc = cfg_pass_value(c, x, err);
    if (!rc)
        rc = get_num(c, "global_scaling_weight", 1.0, &g, err);
    /* PEFT's classifier is nn.Linear layers with ReLU between them; the original repo
     * makes both optional */
    xc->use_bias = true;
    x->relu = true;
    if (!rc && !c->peft)
        rc = get_bool(c, "use_bias", true, &xc->use_bias, err);
    if (!rc && !c->peft)
        rc = get_bool(c, "enable_relu_and_dropout", true, &x->relu, err);
    r->temperature = (float)temp;
    x->global_scaling = (float)g;
    return rc;
}

/* 2.4: every module some expert targets, layer by layer in core_mod_t order. */
static rc_t slots_number(core_router_t *r, core_err_t *err)
{
    core_xlora_t *x = &r->xlora;
    size_t nk = (size_t)r->n_layers * CORE_MOD__COUNT;
    x->slot_of = malloc(nk * sizeof *x->slot_of);
    if (!x->slot_of)
        return core_err(err, RC_NOMEM, "router: out of memory");
    r->n_bytes += nk * sizeof *x->slot_of;
    for (size_t k = 0; k < nk; k++)
        x->slot_of[k] = r->cand[k] ? x->n_slots++ : -1;
    return RC_OK;
}

/* ---- classifier keys ------------------------------------------------------------ */

typedef struct {
    long idx; /* numeric index; LONG_MAX for the original repo's "last" */
    const core_st_tensor_t *w, *b;
} lin_bind_t;

/* "<digits>" without leading zeros followed by ".weight" or ".bias", to the end. */
static bool key_index(const char *p, long *idx, bool *is_bias)
{
    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9'))
        return false;
    long v = 0;
    for (; *p >= '0' && *p <= '9'; p++)
        if (v <= 100000000)
            v = v * 10 + (*p - '0');
    *idx = v;
    *is_bias = strcmp(p, ".bias") == 0;
    return *is_bias || strcmp(p, ".weight") == 0;
}

static bool key_parse(const char *key, bool peft, long *idx, bool *is_bias)
{
    if (peft) {
        const char *p = strstr(key, PEFT_KEY);
        return p && key_index(p + strlen(PEFT_KEY), idx, is_bias);
    }
    if (strncmp(key, "inner.", 6) == 0)
        return key_index(key + 6, idx, is_bias);
    *idx = LONG_MAX;
    *is_bias = strcmp(key, "last.bias") == 0;
    return *is_bias || strcmp(key, "last.weight") == 0;
}

static rc_t key_bind(lin_bind_t *L, int *n, const core_st_tensor_t *t, long idx, bool is_bias,
                     core_err_t *err)
{
    int i = 0;
    while (i < *n && L[i].idx != idx)
        i++;
    if (i == *n) {
        if (*n == ROUTER_MAX_LIN)
            return core_err_r(err, RC_MISMATCH, "shape_mismatch",
                              "tensor '%.200s': the classifier has more than %d linear layers",
                              t->name, ROUTER_MAX_LIN);
        L[(*n)++] = (lin_bind_t){idx, NULL, NULL};
    }
    const core_st_tensor_t **slot = is_bias ? &L[i].b : &L[i].w;
    if (*slot)
        return core_err_r(err, RC_INVALID, "duplicate_binding",
                          "tensor '%.200s' binds the same classifier %s as '%.200s'", t->name,
                          is_bias ? "bias" : "weight", (*slot)->name);
    *slot = t;
    return RC_OK;
}

static rc_t cls_bind(const router_cfg_t *c, const xcfg_t *xc, const core_st_t *st,
                     lin_bind_t *L, int *n, core_err_t *err)
{
    size_t count = st ? core_st_count(st) : 0;
    for (size_t i = 0; i < count; i++) {
        const core_st_tensor_t *t = core_st_at(st, i);
        long idx;
        bool is_bias;
        if (!key_parse(t->name, c->peft, &idx, &is_bias))
            return core_err_r(err, RC_MISMATCH, "unbound_tensor",
                              "tensor '%.200s' is not an X-LoRA classifier weight (expected %s)",
                              t->name,
                              c->peft ? "...internal_xlora_classifier.layers.{k}.{weight|bias}"
                                      : "inner.{k}.{weight|bias} or last.{weight|bias}");
        if (is_bias && !xc->use_bias)
            return core_err_r(err, RC_MISMATCH, "unbound_tensor",
                              "tensor '%.200s': %s has use_bias false", t->name, c->file);
        rc_t rc = key_bind(L, n, t, idx, is_bias, err);
        if (rc)
            return rc;
    }
    for (int i = 1; i < *n; i++) /* insertion sort by index: at most 8 */
        for (int j = i; j > 0 && L[j - 1].idx > L[j].idx; j--) {
            lin_bind_t tmp = L[j];
            L[j] = L[j - 1];
            L[j - 1] = tmp;
        }
    return RC_OK;
}

/* Every layer has a weight; the original repo's "last" exists; depth matches. */
static rc_t cls_complete(const router_cfg_t *c, const xcfg_t *xc, const lin_bind_t *L, int n,
                         core_err_t *err)
{
    if (n == 0)
        return core_err_r(err, RC_INVALID, "no_tensors", "%s holds no classifier tensors",
                          c->peft ? "adapter_model.safetensors" : "xlora_classifier.safetensors");
    for (int i = 0; i < n; i++)
        if (!L[i].w)
            return core_err_r(err, RC_INVALID, "missing_field",
                              "tensor '%.200s' has no matching weight", L[i].b->name);
    if (!c->peft && L[n - 1].idx != LONG_MAX)
        return core_err_r(err, RC_INVALID, "missing_field",
                          "xlora_classifier.safetensors: last.weight missing");
    if (n != xc->depth)
        return core_err_r(err, RC_MISMATCH, "shape_mismatch",
                          "%s: xlora_depth %d, but the classifier has %d linear layer%s", c->file,
                          xc->depth, n, n == 1 ? "" : "s");
    return RC_OK;
}

static rc_t lin_shape(const lin_bind_t *b, int n_in, long want_out, core_err_t *err)
{
    const core_st_tensor_t *w = b->w;
    if (w->n_dims != 2 || w->shape[1] != n_in || w->shape[0] < 1 || w->shape[0] > INT_MAX ||
        (want_out > 0 && w->shape[0] != want_out)) {
        if (want_out > 0)
            return core_err_r(err, RC_MISMATCH, "shape_mismatch",
                              "tensor '%.200s': expected shape [%ld, %d] (experts, or slots x "
                              "experts when layerwise; in: the previous layer's out or "
                              "hidden_size)",
                              w->name, want_out, n_in);
        return core_err_r(err, RC_MISMATCH, "shape_mismatch",
                          "tensor '%.200s': expected shape [out, %d] (in: the previous layer's "
                          "out, or hidden_size)",
                          w->name, n_in);
    }
    if (b->b && (b->b->n_dims != 1 || b->b->shape[0] != w->shape[0]))
        return core_err_r(err, RC_MISMATCH, "shape_mismatch",
                          "tensor '%.200s': expected shape [%lld]", b->b->name,
                          (long long)w->shape[0]);
    return RC_OK;
}

/* Shapes chain from dim to the output width; weights converted and finite. */
static rc_t cls_fill(core_router_t *r, const lin_bind_t *L, int n, core_err_t *err)
{
    core_xlora_t *x = &r->xlora;
    x->lin = calloc((size_t)n, sizeof *x->lin);
    if (!x->lin)
        return core_err(err, RC_NOMEM, "router: out of memory");
    x->n_lin = n;
    long out = x->layerwise ? (long)x->n_slots * r->n_experts : r->n_experts;
    int n_in = r->dim;
    for (int i = 0; i < n; i++) {
        rc_t rc = lin_shape(&L[i], n_in, i == n - 1 ? out : 0, err);
        if (rc)
            return rc;
        core_xlora_lin_t *lin = &x->lin[i];
        lin->n_in = n_in;
        lin->n_out = (int)L[i].w->shape[0];
        size_t nw = (size_t)lin->n_out * n_in, nb = L[i].b ? (size_t)lin->n_out : 0;
        lin->W = malloc(nw * sizeof *lin->W);
        lin->b = nb ? malloc(nb * sizeof *lin->b) : NULL;
        if (!lin->W || (nb && !lin->b))
            return core_err(err, RC_NOMEM, "router: out of memory");
        r->n_bytes += (nw + nb) * sizeof(float);
        rc = core__router_convert(L[i].w, lin->W, err);
        if (!rc && nb)
            rc = core__router_convert(L[i].b, lin->b, err);
        if (rc)
            return rc;
        n_in = lin->n_out;
    }
    return RC_OK;
}

rc_t core__router_xlora_build(core_router_t *r, const router_cfg_t *c, const core_st_t *st,
                              const core_config_t *base, core_err_t *err)
{
    xcfg_t xc;
    lin_bind_t L[ROUTER_MAX_LIN];
    int n = 0;
    rc_t rc = cfg_fields(c, r, base, &xc, err);
    if (!rc)
        rc = slots_number(r, err);
    if (!rc)
        rc = cls_bind(c, &xc, st, L, &n, err);
    if (!rc)
        rc = cls_complete(c, &xc, L, n, err);
    if (!rc)
        rc = cls_fill(r, L, n, err);
    return rc;
}

void core__router_xlora_free(core_xlora_t *x)
{
    for (int i = 0; x->lin && i < x->n_lin; i++) {
        free(x->lin[i].W);
        free(x->lin[i].b);
    }
    free(x->lin);
    free(x->slot_of);
    memset(x, 0, sizeof *x);
}

/* ---- scalings ------------------------------------------------------------------- */

static size_t cls_width(const core_xlora_t *x)
{
    size_t w = 1;
    for (int i = 0; i < x->n_lin; i++)
        if ((size_t)x->lin[i].n_out > w)
            w = (size_t)x->lin[i].n_out;
    return w;
}

size_t core_xlora_scratch_floats(const core_router_t *r, size_t n_rows)
{
    if (r->kind != CORE_ROUTER_XLORA)
        return 0;
    return 2 * n_rows * cls_width(&r->xlora);
}

/* In place over one slot's n values: max-subtracted softmax of v / T over every entry, or
 * over the nonzero ones only (zeros stay zero). */
static void softmax_d(double *v, int n, double T, bool nonzero_only)
{
    double mx = -INFINITY, sum = 0;
    for (int e = 0; e < n; e++)
        if ((!nonzero_only || v[e] != 0) && v[e] > mx)
            mx = v[e];
    if (mx == -INFINITY)
        return;
    for (int e = 0; e < n; e++)
        if (!nonzero_only || v[e] != 0) {
            v[e] = exp((v[e] - mx) / T);
            sum += v[e];
        }
    for (int e = 0; e < n; e++)
        if (!nonzero_only || v[e] != 0)
            v[e] /= sum;
}

/* One slot: logits in, lambda out (softmax, top-k with no renormalisation, softmax over
 * the kept nonzero entries). */
static void slot_scale(const core_router_t *r, const float *logit, double T, int top_k,
                       float *out)
{
    int ne = r->n_experts;
    double v[CORE_ROUTER_MAX_EXPERTS];
    for (int e = 0; e < ne; e++)
        v[e] = logit[e];
    if (r->xlora.softmax)
        softmax_d(v, ne, T, false);
    if (top_k > 0 && top_k < ne) {
        int kept[CORE_ROUTER_MAX_EXPERTS];
        uint32_t all = ne == 32 ? 0xffffffffu : (1u << ne) - 1;
        int nk = core__router_topk(v, all, ne, top_k, kept);
        uint32_t keep = 0;
        for (int i = 0; i < nk; i++)
            keep |= 1u << kept[i];
        for (int e = 0; e < ne; e++)
            if (!(keep >> e & 1u))
                v[e] = 0;
    }
    if (r->xlora.softmax_topk)
        softmax_d(v, ne, 1.0, true);
    for (int e = 0; e < ne; e++)
        out[e] = (float)v[e];
}

void core_xlora_scalings(const core_router_t *r, const core_route_params_t *p, const float *h,
                         size_t n_rows, float *S, float *scratch)
{
    const core_xlora_t *x = &r->xlora;
    if (r->kind != CORE_ROUTER_XLORA || n_rows == 0 || x->n_lin == 0)
        return;
    size_t width = cls_width(x), ne = (size_t)r->n_experts, ns = (size_t)x->n_slots;
    float *buf[2] = {scratch, scratch + n_rows * width};
    const float *in = h;
    /* the classifier over all rows: Linear, then ReLU before every further Linear */
    for (int l = 0; l < x->n_lin; l++) {
        const core_xlora_lin_t *lin = &x->lin[l];
        float *y = buf[l & 1];
        size_t no = (size_t)lin->n_out;
        core_gemm_nt(y, in, lin->W, n_rows, no, (size_t)lin->n_in, 1.0f, 0.0f);
        bool relu = x->relu && l + 1 < x->n_lin;
        for (size_t t = 0; t < n_rows; t++)
            for (size_t o = 0; o < no; o++) {
                float v = y[t * no + o] + (lin->b ? lin->b[o] : 0.0f);
                y[t * no + o] = relu && v < 0 ? 0.0f : v;
            }
        in = y;
    }
    double T = p && p->temperature > 0 ? p->temperature : r->temperature;
    int top_k = p && p->top_k > 0 ? p->top_k : r->top_k;
    size_t n_fin = x->layerwise ? ns * ne : ne;
    for (size_t t = 0; t < n_rows; t++) {
        float *St = S + t * ns * ne;
        for (size_t s = 0; s < ns; s++) {
            if (!x->layerwise && s > 0) { /* broadcast: every slot equals slot 0 */
                memcpy(St + s * ne, St, ne * sizeof *St);
                continue;
            }
            slot_scale(r, in + t * n_fin + s * ne, T, top_k, St + s * ne);
        }
    }
}
