/* router_gate.c - per-module expert vectors and per-token routing (ADAPTER-MATH 3.1, 3.3,
 * 7.3): PHATGOOSE gates read from router_gates.safetensors, Arrow prototypes computed from
 * the experts, and core_router_route, which scores a module's input rows against them.
 *
 * vec[k] holds one row per expert of module k: LN(g_e)/sqrt(n_in) (PHATGOOSE) or the unit
 * prototype v_e (Arrow); rows of experts that do not target module k stay zero and those
 * experts are never candidates there (cand[k]). Construction computes in double.
 * Threads: routing reads an immutable router; it never allocates, locks or logs. */
#include "core/router_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LN_EPS 1e-5 /* PHATGOOSE's no-affine LayerNorm */
#define GATE_PREFIX "base_model.model."
#define GATE_SUFFIX ".phatgoose_gate"
#define PROTO_SUFFIX ".arrow_prototype"

static void mod_path(char *buf, size_t len, int k)
{
    core_mod_t m = (core_mod_t)(k % CORE_MOD__COUNT);
    snprintf(buf, len, "model.layers.%d.%s.%s", k / CORE_MOD__COUNT, core_mod_parent(m),
             core_mod_name(m));
}

/* n_in of module k (every module of a layer has its base shape). */
static int mod_n_in(const core_config_t *base, int k)
{
    int n_out, n_in;
    core_mod_shape(base, (core_mod_t)(k % CORE_MOD__COUNT), &n_out, &n_in);
    return n_in;
}

static rc_t alloc_vec(core_router_t *r, core_err_t *err)
{
    size_t nk = (size_t)r->n_layers * CORE_MOD__COUNT;
    r->vec = calloc(nk, sizeof *r->vec);
    if (!r->vec)
        return core_err(err, RC_NOMEM, "router: out of memory");
    r->n_bytes += nk * sizeof *r->vec;
    return RC_OK;
}

/* ---- PHATGOOSE gates ------------------------------------------------------------ */

static rc_t gate_refuse(const char *key, const char *suffix, core_err_t *err)
{
    return core_err_r(err, RC_MISMATCH, "unbound_tensor",
                      "tensor '%.200s' does not name a %s (expected "
                      "[base_model.model.]model.layers.{i}.{self_attn|mlp}.{q,k,v,o,gate,up,"
                      "down}_proj%s)",
                      key, strcmp(suffix, GATE_SUFFIX) ? "saved Arrow prototype" : "PHATGOOSE gate",
                      suffix);
}

/* The module slot k of a gate key ending in suffix (gates, or saved Arrow prototypes). */
static rc_t gate_key(const char *key, const char *suffix, int n_layers, int *k,
                     core_err_t *err)
{
    const char *p = key;
    if (strncmp(p, GATE_PREFIX, strlen(GATE_PREFIX)) == 0)
        p += strlen(GATE_PREFIX);
    if (strncmp(p, "model.layers.", 13) != 0)
        return gate_refuse(key, suffix, err);
    p += 13;
    /* decimal, no leading zeros, so one module has one spelling */
    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9'))
        return gate_refuse(key, suffix, err);
    long layer = 0;
    for (; *p >= '0' && *p <= '9'; p++)
        if (layer <= 100000000)
            layer = layer * 10 + (*p - '0');
    if (*p++ != '.')
        return gate_refuse(key, suffix, err);
    for (int m = 0; m < CORE_MOD__COUNT; m++) {
        const char *par = core_mod_parent((core_mod_t)m), *name = core_mod_name((core_mod_t)m);
        size_t lp = strlen(par), ln = strlen(name);
        if (strncmp(p, par, lp) != 0 || p[lp] != '.' || strncmp(p + lp + 1, name, ln) != 0 ||
            strcmp(p + lp + 1 + ln, suffix) != 0)
            continue;
        if (layer >= n_layers)
            return core_err_r(err, RC_MISMATCH, "layer_out_of_range",
                              "tensor '%.200s': layer %ld out of range (the base has %d layers)",
                              key, layer, n_layers);
        *k = (int)layer * CORE_MOD__COUNT + m;
        return RC_OK;
    }
    return gate_refuse(key, suffix, err);
}

/* Every key binds one module some expert targets; every such module gets one gate. */
static rc_t gate_bind(const core_router_t *r, const core_st_t *st, const char *suffix,
                      const core_st_tensor_t **bound, core_err_t *err)
{
    char path[96];
    size_t n = st ? core_st_count(st) : 0;
    for (size_t i = 0; i < n; i++) {
        const core_st_tensor_t *t = core_st_at(st, i);
        int k = 0;
        rc_t rc = gate_key(t->name, suffix, r->n_layers, &k, err);
        if (rc)
            return rc;
        mod_path(path, sizeof path, k);
        if (!r->cand[k])
            return core_err_r(err, RC_MISMATCH, "unbound_tensor",
                              "tensor '%.200s': no expert targets %s", t->name, path);
        if (bound[k])
            return core_err_r(err, RC_INVALID, "duplicate_binding",
                              "tensor '%.200s' binds the same gate as '%.200s'", t->name,
                              bound[k]->name);
        bound[k] = t;
    }
    for (int k = 0; k < r->n_layers * CORE_MOD__COUNT; k++)
        if (r->cand[k] && !bound[k]) {
            mod_path(path, sizeof path, k);
            return core_err_r(err, RC_INVALID, "missing_field",
                              "%s: no vector for %s (tensor '%s%s')",
                              strcmp(suffix, GATE_SUFFIX) ? "arrow prototypes"
                                                          : "router_gates.safetensors",
                              path, path, suffix);
        }
    return RC_OK;
}

/* LN(g)/sqrt(n) in place: no-affine LayerNorm, biased variance, computed in double. */
static void gate_norm(float *g, int n)
{
    double mean = 0, var = 0;
    for (int j = 0; j < n; j++)
        mean += g[j];
    mean /= n;
    for (int j = 0; j < n; j++)
        var += ((double)g[j] - mean) * ((double)g[j] - mean);
    var /= n;
    double f = 1.0 / sqrt(var + LN_EPS) / sqrt((double)n);
    for (int j = 0; j < n; j++)
        g[j] = (float)(((double)g[j] - mean) * f);
}

/* A saved prototype row back to unit length (a zero row stays zero). */
static void proto_norm(float *v, int n)
{
    double ss = 0;
    for (int j = 0; j < n; j++)
        ss += (double)v[j] * v[j];
    if (ss > 0)
        for (int j = 0; j < n; j++)
            v[j] = (float)(v[j] / sqrt(ss));
}

/* The gate tensor t of module k into vec[k]: shape (n_experts, n_in), candidate rows finite
 * and normalised (gates: LN/sqrt(n); saved prototypes: unit length), the other rows
 * (experts not targeting k) ignored and zeroed. */
static rc_t gate_fill(core_router_t *r, int k, int n_in, const core_st_tensor_t *t,
                      core_err_t *err)
{
    if (t->dtype == CORE_DTYPE_OTHER)
        return core_err_r(err, RC_UNSUPPORTED, "bad_dtype",
                          "tensor '%.200s': dtype %s is not supported (F32, F16 or BF16)",
                          t->name, t->dtype_name);
    if (t->n_dims != 2 || t->shape[0] != r->n_experts || t->shape[1] != n_in)
        return core_err_r(err, RC_MISMATCH, "shape_mismatch",
                          "tensor '%.200s': expected shape [%d, %d] (experts, in_features)",
                          t->name, r->n_experts, n_in);
    size_t n = (size_t)r->n_experts * n_in;
    float *v = malloc(n * sizeof *v);
    if (!v)
        return core_err(err, RC_NOMEM, "router: out of memory");
    r->vec[k] = v;
    r->n_bytes += n * sizeof *v;
    rc_t rc = core_st_to_f32(t, v, err);
    if (rc)
        return rc;
    for (int e = 0; e < r->n_experts; e++) {
        float *row = v + (size_t)e * n_in;
        if (!(r->cand[k] >> e & 1u)) {
            memset(row, 0, (size_t)n_in * sizeof *row);
            continue;
        }
        for (int j = 0; j < n_in; j++)
            if (!isfinite(row[j]))
                return core_err_r(err, RC_INVALID, "non_finite",
                                  "tensor '%.200s': row %d (expert '%s') value %d is not finite",
                                  t->name, e, r->names[e], j);
        if (r->kind == CORE_ROUTER_ARROW)
            proto_norm(row, n_in);
        else
            gate_norm(row, n_in);
    }
    return RC_OK;
}

rc_t core__router_phatgoose_build(core_router_t *r, const core_st_t *st,
                                  const core_config_t *base, core_err_t *err)
{
    size_t nk = (size_t)r->n_layers * CORE_MOD__COUNT;
    const core_st_tensor_t **bound = calloc(nk, sizeof *bound);
    rc_t rc = bound ? alloc_vec(r, err) : core_err(err, RC_NOMEM, "router: out of memory");
    if (!rc)
        rc = gate_bind(r, st, GATE_SUFFIX, bound, err);
    for (size_t k = 0; !rc && k < nk; k++)
        if (bound[k])
            rc = gate_fill(r, (int)k, mod_n_in(base, (int)k), bound[k], err);
    free(bound);
    return rc;
}

/* ---- Arrow prototypes ---------------------------------------------------------- */

/* Cyclic Jacobi on the symmetric n x n matrix C (destroyed: its diagonal ends as the
 * eigenvalues); V gets the eigenvectors as columns. */
static void jacobi_eigen(double *C, double *V, int n)
{
    for (int i = 0; i < n * n; i++)
        V[i] = (i % (n + 1)) == 0;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0, all = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                all += C[i * n + j] * C[i * n + j];
                if (i != j)
                    off += C[i * n + j] * C[i * n + j];
            }
        if (off <= 1e-30 * all || off == 0)
            return;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                double apq = C[p * n + q];
                if (apq == 0)
                    continue;
                /* t = tan(phi) zeroing C[p][q] (the smaller root: stable) */
                double th = (C[q * n + q] - C[p * n + p]) / (2 * apq);
                double t = (th >= 0 ? 1.0 : -1.0) / (fabs(th) + sqrt(th * th + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (int i = 0; i < n; i++) { /* C J */
                    double x = C[i * n + p], y = C[i * n + q];
                    C[i * n + p] = c * x - s * y;
                    C[i * n + q] = s * x + c * y;
                }
                for (int i = 0; i < n; i++) { /* J^T C */
                    double x = C[p * n + i], y = C[q * n + i];
                    C[p * n + i] = c * x - s * y;
                    C[q * n + i] = s * x + c * y;
                }
                for (int i = 0; i < n; i++) { /* V J */
                    double x = V[i * n + p], y = V[i * n + q];
                    V[i * n + p] = c * x - s * y;
                    V[i * n + q] = s * x + c * y;
                }
            }
    }
}

/* A^T = Q R by modified Gram-Schmidt, twice per column (re-orthogonalisation keeps Q
 * orthonormal to rounding). A: (r, n) rows = Q's columns, stored Q[j*n + i]; R: (r, r)
 * upper triangular. A dependent column becomes a zero column with R[j][j] = 0. */
static void qr_at(const float *A, int r, int n, double *Q, double *R)
{
    for (int j = 0; j < r; j++) {
        double *q = Q + (size_t)j * n, n0 = 0, nn = 0;
        for (int i = 0; i < n; i++) {
            q[i] = A[(size_t)j * n + i];
            n0 += q[i] * q[i];
        }
        for (int pass = 0; pass < 2; pass++)
            for (int c = 0; c < j; c++) {
                const double *qc = Q + (size_t)c * n;
                double d = 0;
                for (int i = 0; i < n; i++)
                    d += qc[i] * q[i];
                for (int i = 0; i < n; i++)
                    q[i] -= d * qc[i];
                R[c * r + j] += d;
            }
        for (int i = 0; i < n; i++)
            nn += q[i] * q[i];
        bool indep = nn > 1e-24 * n0 && nn > 0;
        R[j * r + j] = indep ? sqrt(nn) : 0;
        for (int i = 0; i < n; i++)
            q[i] = indep ? q[i] / R[j * r + j] : 0;
    }
}

/* C = R (B^T B) R^T, (r, r): M^T M = Q C Q^T for M = B A. */
static void gram_core(const float *B, int n_out, int r, const double *R, double *G, double *T,
                      double *C)
{
    for (int a = 0; a < r; a++)
        for (int b = 0; b < r; b++) {
            double s = 0;
            for (int o = 0; o < n_out; o++)
                s += (double)B[(size_t)o * r + a] * B[(size_t)o * r + b];
            G[a * r + b] = s;
        }
    for (int a = 0; a < r; a++)
        for (int b = 0; b < r; b++) {
            double s = 0;
            for (int c = a; c < r; c++) /* R is upper triangular */
                s += R[a * r + c] * G[c * r + b];
            T[a * r + b] = s;
        }
    for (int a = 0; a < r; a++)
        for (int b = 0; b < r; b++) {
            double s = 0;
            for (int c = b; c < r; c++)
                s += T[a * r + c] * R[b * r + c];
            C[a * r + b] = s;
        }
}

/* v = the top right singular vector of B A (unit, largest-magnitude component positive;
 * zero when A is zero). Exact up to rounding: QR of A^T, then the top eigenvector w of
 * the r x r core, v = Q w. */
static rc_t proto(const core_lora_mod_t *md, float *out, core_err_t *err)
{
    int r = md->r, n = md->n_in;
    size_t rr = (size_t)r * r;
    double *Q = malloc((size_t)n * r * sizeof *Q), *W = calloc(5 * rr, sizeof *W);
    double *v = malloc((size_t)n * sizeof *v);
    if (!Q || !W || !v) {
        free(Q), free(W), free(v);
        return core_err(err, RC_NOMEM, "router: out of memory");
    }
    double *R = W, *G = W + rr, *T = W + 2 * rr, *C = W + 3 * rr, *V = W + 4 * rr;
    qr_at(md->A, r, n, Q, R);
    gram_core(md->B, md->n_out, r, R, G, T, C);
    jacobi_eigen(C, V, r);
    int top = 0;
    for (int i = 1; i < r; i++)
        if (C[i * r + i] > C[top * r + top])
            top = i;
    double norm = 0, big = 0;
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < r; j++)
            s += Q[(size_t)j * n + i] * V[j * r + top];
        v[i] = s;
        norm += s * s;
        if (fabs(s) > fabs(big))
            big = s;
    }
    double f = norm > 0 ? (big < 0 ? -1.0 : 1.0) / sqrt(norm) : 0;
    for (int i = 0; i < n; i++)
        out[i] = (float)(v[i] * f);
    free(Q), free(W), free(v);
    return RC_OK;
}

/* Prototypes saved by core_router_arrow_save: bound and read like gates. */
static rc_t arrow_read(core_router_t *r, const core_st_t *st, const core_config_t *base,
                       core_err_t *err)
{
    size_t nk = (size_t)r->n_layers * CORE_MOD__COUNT;
    const core_st_tensor_t **bound = calloc(nk, sizeof *bound);
    rc_t rc = bound ? alloc_vec(r, err) : core_err(err, RC_NOMEM, "router: out of memory");
    if (!rc)
        rc = gate_bind(r, st, PROTO_SUFFIX, bound, err);
    for (size_t k = 0; !rc && k < nk; k++)
        if (bound[k])
            rc = gate_fill(r, (int)k, mod_n_in(base, (int)k), bound[k], err);
    free(bound);
    return rc;
}

rc_t core__router_arrow_build(core_router_t *r, const core_st_t *st, const core_config_t *base,
                              core_err_t *err)
{
    if (st && core_st_count(st) > 0)
        return arrow_read(r, st, base, err);
    rc_t rc = alloc_vec(r, err);
    for (int k = 0; !rc && k < r->n_layers * CORE_MOD__COUNT; k++) {
        if (!r->cand[k])
            continue;
        int n_in = mod_n_in(base, k);
        size_t n = (size_t)r->n_experts * n_in;
        r->vec[k] = calloc(n, sizeof *r->vec[k]);
        if (!r->vec[k])
            return core_err(err, RC_NOMEM, "router: out of memory");
        r->n_bytes += n * sizeof *r->vec[k];
        for (int e = 0; !rc && e < r->n_experts; e++)
            if (r->cand[k] >> e & 1u)
                rc = proto(&r->experts[e]->mods[k], r->vec[k] + (size_t)e * n_in, err);
    }
    return rc;
}

/* ---- routing ------------------------------------------------------------------- */

/* x . u in eight independent float lanes (the compiler vectorises it; a double sum one
 * element at a time cannot be, and it was most of a routed step's cost), the lanes and the
 * tail added in double. */
static double dot8(const float *x, const float *u, size_t n)
{
    float acc[8] = {0};
    size_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += x[j + l] * u[j + l];
    double s = 0;
    for (int l = 0; l < 8; l++)
        s += acc[l];
    for (; j < n; j++)
        s += (double)x[j] * u[j];
    return s;
}

/* sum(x) and sum((x - c)^2), each in eight float lanes added in double (as dot8). */
static double sum8(const float *x, size_t n)
{
    float acc[8] = {0};
    size_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += x[j + l];
    double s = 0;
    for (int l = 0; l < 8; l++)
        s += acc[l];
    for (; j < n; j++)
        s += x[j];
    return s;
}

static double sqdev8(const float *x, size_t n, float c)
{
    float acc[8] = {0};
    size_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += (x[j + l] - c) * (x[j + l] - c);
    double s = 0;
    for (int l = 0; l < 8; l++)
        s += acc[l];
    for (; j < n; j++)
        s += ((double)x[j] - c) * ((double)x[j] - c);
    return s;
}

/* Raw scores of one row over the candidates: PHATGOOSE LN(x) . vec_e, Arrow |x . v_e|.
 * A PHATGOOSE row of vec is LN(g)/sqrt(n), centred at construction, so sum(u) = 0 and
 * LN(x) . u = inv * (x . u - mean * sum(u)) = inv * (x . u): the mean drops out. */
static void row_scores(const core_router_t *r, const float *vec, uint32_t cand, const float *x,
                       size_t n_in, double *score)
{
    double inv = 1;
    if (r->kind == CORE_ROUTER_PHATGOOSE) {
        double mean = sum8(x, n_in) / (double)n_in;
        double var = sqdev8(x, n_in, (float)mean) / (double)n_in;
        inv = 1.0 / sqrt(var + LN_EPS);
    }
    for (int e = 0; e < r->n_experts; e++) {
        if (!(cand >> e & 1u))
            continue;
        double dot = dot8(x, vec + (size_t)e * n_in, n_in);
        score[e] = r->kind == CORE_ROUTER_PHATGOOSE ? inv * dot : fabs(dot);
    }
}

void core_router_route(const core_router_t *r, const core_route_params_t *p, int layer,
                       core_mod_t m, const float *x, size_t n_rows, size_t n_in, float *lam)
{
    int ne = r->n_experts;
    memset(lam, 0, n_rows * (size_t)ne * sizeof *lam);
    int k = layer * CORE_MOD__COUNT + (int)m;
    if (r->kind == CORE_ROUTER_XLORA || !r->vec || layer < 0 || layer >= r->n_layers ||
        (int)m < 0 || m >= CORE_MOD__COUNT || !r->vec[k] || n_in == 0)
        return;
    uint32_t cand = r->cand[k];
    int e0 = __builtin_ctz(cand);
    if ((size_t)r->experts[e0]->mods[k].n_in != n_in)
        return; /* not this module's input: route nothing rather than read out of bounds */
    int top_k = p && p->top_k > 0 ? p->top_k : r->top_k;
    double T = p && p->temperature > 0 ? p->temperature : r->temperature;
    double score[CORE_ROUTER_MAX_EXPERTS];
    int kept[CORE_ROUTER_MAX_EXPERTS];
    for (size_t t = 0; t < n_rows; t++) {
        row_scores(r, r->vec[k], cand, x + t * n_in, n_in, score);
        int nk = core__router_topk(score, cand, ne, top_k, kept);
        /* softmax over the kept scores / T; kept[0] holds the maximum */
        double sum = 0, w[CORE_ROUTER_MAX_EXPERTS];
        for (int i = 0; i < nk; i++) {
            w[i] = exp((score[kept[i]] - score[kept[0]]) / T);
            sum += w[i];
        }
        for (int i = 0; i < nk; i++)
            lam[t * (size_t)ne + (size_t)kept[i]] = (float)(w[i] / sum);
    }
}

/* ---- saving Arrow prototypes ------------------------------------------------------ */

/* in_features of routed module k (from an expert that targets it). */
static int vec_n_in(const core_router_t *r, int k)
{
    for (int e = 0; e < r->n_experts; e++)
        if (r->experts[e]->mods[k].A)
            return r->experts[e]->mods[k].n_in;
    return 0;
}

/* The safetensors header of the routed modules' prototypes (F32, in slot order). */
static char *arrow_header(const core_router_t *r, size_t *data_len)
{
    json_t *h = json_object();
    char key[128], path[96];
    size_t at = 0;
    for (int k = 0; h && k < r->n_layers * CORE_MOD__COUNT; k++) {
        if (!r->vec[k])
            continue;
        int n_in = vec_n_in(r, k);
        size_t bytes = (size_t)r->n_experts * (size_t)n_in * sizeof(float);
        mod_path(path, sizeof path, k);
        snprintf(key, sizeof key, "%s%s", path, PROTO_SUFFIX);
        json_object_set_new(h, key, json_pack("{s:s,s:[i,i],s:[I,I]}", "dtype", "F32", "shape",
                                              r->n_experts, n_in, "data_offsets",
                                              (json_int_t)at, (json_int_t)(at + bytes)));
        at += bytes;
    }
    char *text = h ? json_dumps(h, JSON_COMPACT) : NULL;
    json_decref(h);
    *data_len = at;
    return text;
}

rc_t core_router_arrow_save(const core_router_t *r, uint8_t **buf, size_t *len,
                            core_err_t *err)
{
    *buf = NULL;
    *len = 0;
    if (r->kind != CORE_ROUTER_ARROW || !r->vec)
        return core_err(err, RC_INVALID, "arrow save: not an Arrow router");
    size_t data = 0;
    char *hdr = arrow_header(r, &data);
    if (!hdr)
        return core_err(err, RC_NOMEM, "arrow save: out of memory");
    size_t hn = strlen(hdr), pad = (8 - hn % 8) % 8; /* spaces keep the data 8-aligned */
    uint64_t n = hn + pad;
    uint8_t *b = malloc(8 + n + data);
    if (!b) {
        free(hdr);
        return core_err(err, RC_NOMEM, "arrow save: out of memory");
    }
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(n >> (8 * i)); /* the length is little-endian */
    memcpy(b + 8, hdr, hn);
    memset(b + 8 + hn, ' ', pad);
    free(hdr);
    uint8_t *d = b + 8 + n;
    for (int k = 0; k < r->n_layers * CORE_MOD__COUNT; k++) {
        if (!r->vec[k])
            continue;
        size_t bytes = (size_t)r->n_experts * (size_t)vec_n_in(r, k) * sizeof(float);
        memcpy(d, r->vec[k], bytes); /* F32 little-endian: the host's order (x86-64) */
        d += bytes;
    }
    *buf = b;
    *len = 8 + n + data;
    return RC_OK;
}
