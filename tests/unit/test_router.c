/* test_router.c - core/router: PHATGOOSE routing against a double-precision evaluation of
 * ADAPTER-MATH 3.1, Arrow prototypes against power iteration (3.3) and their saved form,
 * every refusal naming its field, key or expert, and router folders of each format loaded
 * from /tmp/router-test-<pid>/ (X-LoRA's classifier math: test_router_xlora.c). Experts for
 * the math tests are built in memory; folder tests write PEFT LoRA folders. */
#include "tests/unit/harness.h"

#include "tests/unit/router_fixture.h"


/* Softmax of s/T over the kept candidates, 0 elsewhere. */
static void ref_topk_softmax(const double *s, uint32_t mask, int n, int k, double T, double *lam)
{
    double mx = -INFINITY, sum = 0;
    for (int e = 0; e < n; e++)
        if ((mask >> e & 1u) && ref_kept(s, mask, n, k, e) && s[e] > mx)
            mx = s[e];
    for (int e = 0; e < n; e++) {
        lam[e] = (mask >> e & 1u) && ref_kept(s, mask, n, k, e) ? exp((s[e] - mx) / T) : 0;
        sum += lam[e];
    }
    for (int e = 0; e < n; e++)
        lam[e] /= sum;
}

static void ref_ln(const float *x, int n, double *y)
{
    double mean = 0, var = 0;
    for (int j = 0; j < n; j++)
        mean += x[j];
    mean /= n;
    for (int j = 0; j < n; j++)
        var += (x[j] - mean) * (x[j] - mean);
    var /= n;
    for (int j = 0; j < n; j++)
        y[j] = (x[j] - mean) / sqrt(var + 1e-5);
}

/* PHATGOOSE 3.1: LN(x) . LN(g_e) / sqrt(d) / T over candidates, top-k, softmax. */
static void ref_phatgoose(const float *g, uint32_t cand, int ne, int n, const float *x, int k,
                          double T, double *lam)
{
    double lx[16], lg[16], s[8] = {0};
    ref_ln(x, n, lx);
    for (int e = 0; e < ne; e++) {
        if (!(cand >> e & 1u))
            continue;
        ref_ln(g + e * n, n, lg);
        for (int j = 0; j < n; j++)
            s[e] += lx[j] * lg[j];
        s[e] /= sqrt((double)n);
    }
    ref_topk_softmax(s, cand, ne, k, T, lam);
}

static void check_row(const float *lam, const double *ref, int ne, double tol)
{
    double sum = 0;
    for (int e = 0; e < ne; e++) {
        ASSERT_NEAR(lam[e], ref[e], tol);
        if (ref[e] == 0)
            ASSERT(lam[e] == 0.0f); /* not kept: exactly zero */
        sum += lam[e];
    }
    ASSERT_NEAR(sum, 1.0, 1e-5);
}

/* ---- PHATGOOSE ------------------------------------------------------------------ */

#define PG_CFG(extra) "{\"router_type\":\"phatgoose\",\"experts\":[\"e0\",\"e1\",\"e2\"]" extra "}"

/* 3 experts: e0 on q and v, e1 on q only, e2 on q and v. Gates for q and v of both layers
 * (the caller may change the set). */
static void pg_experts(core_lora_t **ex)
{
    ex[0] = mk_expert(MQ | MV, 2, 11);
    ex[1] = mk_expert(MQ, 3, 12);
    ex[2] = mk_expert(MQ | MV, 2, 13);
}

static void pg_gates(tset_t *s, float **g, const char *prefix)
{
    char key[160];
    rng = 99;
    for (int l = 0; l < 2; l++)
        for (int m = 0; m < CORE_MOD__COUNT; m++) {
            if (m != 0 && m != 2)
                continue;
            snprintf(key, sizeof key, "%smodel.layers.%d.%s.%s.phatgoose_gate", prefix, l,
                     parent[m], modname[m]);
            g[l * 2 + (m == 2)] = ts_add(s, key, 3, 8);
        }
}

TEST(phatgoose_matches_reference)
{
    core_lora_t *ex[3];
    pg_experts(ex);
    tset_t s = {0};
    float *g[4];
    pg_gates(&s, g, "base_model.model.");
    core_st_t *st = ts_open(&s);
    core_router_t *r = build_ok(PG_CFG(",\"temperature\":2.0"), st, ex, 3);
    ASSERT_EQ(r->kind, CORE_ROUTER_PHATGOOSE);
    ASSERT_STREQ(core_router_kind_name(r->kind), "phatgoose");
    ASSERT_EQ(r->top_k, 2);
    ASSERT_NEAR(r->temperature, 2.0, 0);
    ASSERT_STREQ(r->names[2], "e2");
    ASSERT(r->n_bytes >= 4 * 3 * 8 * 4);
    ASSERT_EQ(r->cand[1 * CORE_MOD__COUNT + CORE_MOD_V], 5u); /* e1 does not target v */
    ASSERT_EQ(ex[0]->refcount, 2);

    rng = 7;
    float *x = rand_floats(4 * 8), lam[4 * 3];
    double ref[3];
    struct {
        int layer, m, gi, top_k;
        float temp;
        uint32_t cand;
    } cases[] = {
        {1, CORE_MOD_Q, 2, 0, 0, 7},   /* top-2 of 3, T from the config */
        {0, CORE_MOD_V, 1, 0, 0, 5},   /* e1 is no candidate */
        {1, CORE_MOD_Q, 2, 1, 0, 7},   /* top_k override */
        {1, CORE_MOD_Q, 2, 3, 0.5f, 7}, /* all three, temperature override */
        {1, CORE_MOD_V, 3, 3, 0, 5},   /* top_k clamped to the 2 candidates */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        core_route_params_t p = {cases[c].top_k, cases[c].temp};
        core_router_route(r, &p, cases[c].layer, (core_mod_t)cases[c].m, x, 4, 8, lam);
        int k = cases[c].top_k ? cases[c].top_k : 2;
        double T = cases[c].temp > 0 ? cases[c].temp : 2.0;
        int n_nonzero = 0;
        for (int t = 0; t < 4; t++) {
            ref_phatgoose(g[cases[c].gi], cases[c].cand, 3, 8, x + t * 8, k, T, ref);
            check_row(lam + t * 3, ref, 3, 1e-6);
            for (int e = 0; e < 3; e++)
                n_nonzero += lam[t * 3 + e] != 0;
        }
        int n_cand = __builtin_popcount(cases[c].cand);
        ASSERT_EQ(n_nonzero, 4 * (k < n_cand ? k : n_cand));
    }
    /* a module no expert targets routes nothing */
    lam[0] = 5;
    core_router_route(r, NULL, 0, CORE_MOD_K, x, 4, 8, lam);
    for (int i = 0; i < 12; i++)
        ASSERT(lam[i] == 0.0f);
    core_router_release(r);
    ASSERT_EQ(ex[0]->refcount, 1);
    core_st_free(st);
    ts_free(&s);
    free(x);
    for (int i = 0; i < 3; i++)
        mk_free(ex[i]);
    tmp_clean();
}

TEST(phatgoose_ties_go_to_lower_index)
{
    core_lora_t *ex[3];
    pg_experts(ex);
    tset_t s = {0};
    float *g[4];
    pg_gates(&s, g, "");
    /* layer 0 q: e0 = e2 = u, e1 = -u; the input is u */
    float *gq = g[0];
    for (int j = 0; j < 8; j++) {
        gq[0 * 8 + j] = gq[2 * 8 + j] = (float)(j * j % 5) - 1.5f;
        gq[1 * 8 + j] = -gq[j];
    }
    core_st_t *st = ts_open(&s);
    core_router_t *r = build_ok(PG_CFG(",\"top_k\":1"), st, ex, 3);
    ASSERT_EQ(r->top_k, 1);
    float lam[3];
    core_router_route(r, NULL, 0, CORE_MOD_Q, gq, 1, 8, lam);
    ASSERT(lam[0] == 1.0f && lam[1] == 0.0f && lam[2] == 0.0f);
    core_route_params_t p = {2, 0};
    core_router_route(r, &p, 0, CORE_MOD_Q, gq, 1, 8, lam);
    ASSERT_NEAR(lam[0], 0.5, 1e-7);
    ASSERT_NEAR(lam[2], 0.5, 1e-7);
    ASSERT(lam[1] == 0.0f);
    core_router_release(r);
    core_st_free(st);
    ts_free(&s);
    for (int i = 0; i < 3; i++)
        mk_free(ex[i]);
    tmp_clean();
}

TEST(phatgoose_refusals)
{
    core_lora_t *ex[3];
    pg_experts(ex);
    tset_t s = {0};
    float *g[4];

    /* a gate for k_proj, which no expert targets */
    pg_gates(&s, g, "");
    ts_add(&s, "model.layers.0.self_attn.k_proj.phatgoose_gate", 3, 8);
    core_st_t *st = ts_open(&s);
    expect_refused(PG_CFG(""), st, ex, 3, RC_MISMATCH, "unbound_tensor", "k_proj");
    core_st_free(st);
    ts_free(&s);

    /* layer 1 v_proj's gate missing */
    pg_gates(&s, g, "");
    free(s.data[--s.n]);
    st = ts_open(&s);
    expect_refused(PG_CFG(""), st, ex, 3, RC_INVALID, "missing_field",
                   "model.layers.1.self_attn.v_proj");
    core_st_free(st);
    expect_refused(PG_CFG(""), NULL, ex, 3, RC_INVALID, "missing_field", "layers.0");
    ts_free(&s);

    /* the same gate twice (with and without the prefix) */
    pg_gates(&s, g, "");
    ts_add(&s, "base_model.model.model.layers.0.self_attn.q_proj.phatgoose_gate", 3, 8);
    st = ts_open(&s);
    expect_refused(PG_CFG(""), st, ex, 3, RC_INVALID, "duplicate_binding", "q_proj");
    core_st_free(st);
    ts_free(&s);

    /* not a gate key; layer out of range; leading zero */
    const char *bad[] = {"model.layers.0.self_attn.q_proj.weight",
                         "model.layers.2.self_attn.q_proj.phatgoose_gate",
                         "model.layers.00.self_attn.q_proj.phatgoose_gate"};
    const char *why[] = {"unbound_tensor", "layer_out_of_range", "unbound_tensor"};
    for (int i = 0; i < 3; i++) {
        pg_gates(&s, g, "");
        ts_add(&s, bad[i], 3, 8);
        st = ts_open(&s);
        expect_refused(PG_CFG(""), st, ex, 3, RC_MISMATCH, why[i], bad[i]);
        core_st_free(st);
        ts_free(&s);
    }

    /* wrong shape: 2 rows for 3 experts */
    pg_gates(&s, g, "");
    s.t[1].shape[0] = 2, s.t[1].n_bytes = 2 * 8 * 4;
    st = ts_open(&s);
    expect_refused(PG_CFG(""), st, ex, 3, RC_MISMATCH, "shape_mismatch", s.names[1]);
    core_st_free(st);
    ts_free(&s);

    /* NaN in a candidate row is refused; in e1's row of v_proj (not a candidate) ignored */
    pg_gates(&s, g, "");
    g[0][2 * 8 + 3] = NAN;
    st = ts_open(&s);
    expect_refused(PG_CFG(""), st, ex, 3, RC_INVALID, "non_finite", "expert 'e2'");
    core_st_free(st);
    ts_free(&s);
    pg_gates(&s, g, "");
    g[1][1 * 8 + 3] = NAN;
    st = ts_open(&s);
    core_router_t *r = build_ok(PG_CFG(""), st, ex, 3);
    for (int j = 0; j < 8; j++)
        ASSERT(r->vec[CORE_MOD_V][8 + j] == 0.0f);
    core_router_release(r);

    /* config refusals */
    expect_refused(PG_CFG(",\"top_k\":4"), st, ex, 3, RC_INVALID, "invalid_config", "top_k");
    expect_refused(PG_CFG(",\"top_k\":0"), st, ex, 3, RC_INVALID, "invalid_config", "top_k");
    expect_refused(PG_CFG(",\"temperature\":0"), st, ex, 3, RC_INVALID, "invalid_config",
                   "temperature");
    expect_refused(PG_CFG(""), st, ex, 2, RC_INVALID, "invalid_config", "3 experts, 2 given");
    expect_refused("{\"router_type\":\"smear\",\"experts\":[\"a\"]}", st, ex, 1, RC_UNSUPPORTED,
                   "unsupported_feature", "smear");
    expect_refused("{\"router_type\":\"arrow\"}", st, ex, 1, RC_INVALID, "missing_field",
                   "experts");
    expect_refused("{\"router_type\":\"arrow\",\"experts\":[\"a\",\"a\"]}", NULL, ex, 2,
                   RC_INVALID, "invalid_config", "twice");
    expect_refused("{\"router_type\":\"arrow\",\"experts\":[\"a\"],\"experts\":[\"b\"]}", NULL,
                   ex, 1, RC_FORMAT, "duplicate_key", NULL);
    core_st_free(st);
    ts_free(&s);
    for (int i = 0; i < 3; i++)
        mk_free(ex[i]);
    tmp_clean();
}

/* ---- Arrow ---------------------------------------------------------------------- */

/* sigma_max^2 and the unit top right singular vector of M = B A by power iteration on
 * M^T M (2000 steps, double). */
static double power_top(const core_lora_mod_t *md, double *v)
{
    int n = md->n_in, o = md->n_out, r = md->r;
    double M[12 * 12], w[12], lam = 0;
    for (int i = 0; i < o; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int c = 0; c < r; c++)
                s += (double)md->B[i * r + c] * md->A[c * n + j];
            M[i * n + j] = s;
        }
    for (int j = 0; j < n; j++)
        v[j] = 1.0 + 0.1 * j;
    for (int it = 0; it < 2000; it++) {
        double nn = 0;
        for (int i = 0; i < o; i++) {
            w[i] = 0;
            for (int j = 0; j < n; j++)
                w[i] += M[i * n + j] * v[j];
        }
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int i = 0; i < o; i++)
                s += M[i * n + j] * w[i];
            v[j] = s;
            nn += s * s;
        }
        nn = sqrt(nn);
        for (int j = 0; j < n; j++)
            v[j] /= nn;
        lam = nn;
    }
    return lam;
}

/* ||M v||^2 and M^T M v for a float v. */
static double mtm(const core_lora_mod_t *md, const float *v, double *out)
{
    int n = md->n_in, o = md->n_out, r = md->r;
    double z[16] = {0}, y[12] = {0}, nn = 0;
    for (int c = 0; c < r; c++)
        for (int j = 0; j < n; j++)
            z[c] += (double)md->A[c * n + j] * v[j];
    for (int i = 0; i < o; i++) {
        for (int c = 0; c < r; c++)
            y[i] += (double)md->B[i * r + c] * z[c];
        nn += y[i] * y[i];
    }
    for (int j = 0; j < n; j++) {
        double s = 0;
        for (int i = 0; i < o; i++) {
            double mij = 0;
            for (int c = 0; c < r; c++)
                mij += (double)md->B[i * r + c] * md->A[c * n + j];
            s += mij * y[i];
        }
        out[j] = s;
    }
    return nn;
}

TEST(arrow_prototypes_are_top_singular_vectors)
{
    core_lora_t *ex[3];
    ex[0] = mk_expert(MQ | MD, 3, 21);
    ex[1] = mk_expert(MQ | MK, 10, 22); /* rank 10 > n_in 8: A^T has dependent columns */
    ex[2] = mk_expert(MD, 1, 23);
    /* a repeated row of A: rank 2 of 3 on e0's layer-1 q */
    core_lora_mod_t *md0 = &ex[0]->mods[CORE_MOD__COUNT + CORE_MOD_Q];
    memcpy(md0->A + 16, md0->A, 8 * sizeof(float));
    core_router_t *r =
        build_ok("{\"router_type\":\"arrow\",\"experts\":[\"a\",\"b\",\"c\"]}", NULL, ex, 3);
    ASSERT_EQ(r->top_k, 3);
    int checked = 0;
    for (int k = 0; k < 2 * CORE_MOD__COUNT; k++) {
        if (!r->vec[k]) {
            ASSERT_EQ(r->cand[k], 0u);
            continue;
        }
        int n_in = shape_in[k % CORE_MOD__COUNT];
        for (int e = 0; e < 3; e++) {
            const float *v = r->vec[k] + e * n_in;
            const core_lora_mod_t *md = &ex[e]->mods[k];
            if (!md->A) {
                for (int j = 0; j < n_in; j++)
                    ASSERT(v[j] == 0.0f);
                continue;
            }
            double pv[12], out[12], norm = 0, big = 0;
            double sig2 = power_top(md, pv);
            double nn = mtm(md, v, out);
            for (int j = 0; j < n_in; j++) {
                norm += (double)v[j] * v[j];
                if (fabs(v[j]) > fabs(big))
                    big = v[j];
            }
            ASSERT_NEAR(norm, 1.0, 1e-6);
            ASSERT(big > 0);
            ASSERT_NEAR(nn / sig2, 1.0, 1e-4);
            for (int j = 0; j < n_in; j++)
                ASSERT_NEAR(out[j], sig2 * v[j], 1e-4 * sig2);
            checked++;
        }
    }
    ASSERT_EQ(checked, 2 * 5); /* q: e0 e1, k: e1, down: e0 e2 */
    core_router_release(r);
    for (int i = 0; i < 3; i++)
        mk_free(ex[i]);
}

/* Saved prototypes come back as they were computed, and the image is checked like gates. */
TEST(arrow_save_round_trip)
{
    core_lora_t *ex[2];
    ex[0] = mk_expert(MQ | MD, 3, 31);
    ex[1] = mk_expert(MQ | MK, 2, 32);
    const char *cfg = "{\"router_type\":\"arrow\",\"experts\":[\"a\",\"b\"],\"top_k\":1}";
    core_router_t *r = build_ok(cfg, NULL, ex, 2);
    uint8_t *buf = NULL;
    size_t len = 0;
    core_err_t e = {{0}};
    ASSERT_RC(core_router_arrow_save(r, &buf, &len, &e), RC_OK, &e);
    core_st_t *st = NULL;
    ASSERT_RC(core_st_parse(buf, len, "arrow.safetensors", &st, &e), RC_OK, &e);
    int n_saved = 0;
    for (int k = 0; k < 2 * CORE_MOD__COUNT; k++)
        n_saved += r->vec[k] != NULL;
    ASSERT_EQ((int)core_st_count(st), n_saved);
    core_router_t *r2 = build_ok(cfg, st, ex, 2);
    for (int k = 0; k < 2 * CORE_MOD__COUNT; k++) {
        ASSERT((r->vec[k] == NULL) == (r2->vec[k] == NULL));
        for (int j = 0; r->vec[k] && j < 2 * shape_in[k % CORE_MOD__COUNT]; j++)
            ASSERT_NEAR(r2->vec[k][j], r->vec[k][j], 1e-6);
    }
    /* a PHATGOOSE gate file is no Arrow image */
    core_router_release(r2);
    core_router_release(r);
    core_st_free(st);
    free(buf);
    tset_t ts = {0};
    float *g = ts_add(&ts, "model.layers.0.self_attn.q_proj.phatgoose_gate", 2, 8);
    (void)g;
    core_st_t *bad = ts_open(&ts);
    expect_refused(cfg, bad, ex, 2, RC_MISMATCH, "unbound_tensor", "arrow_prototype");
    core_st_free(bad);
    ts_free(&ts);
    for (int i = 0; i < 2; i++)
        mk_free(ex[i]);
}

TEST(arrow_route_matches_reference)
{
    core_lora_t *ex[4];
    for (int e = 0; e < 4; e++)
        ex[e] = mk_expert(e == 3 ? MV : MQ | MV, 2 + e, 31 + (uint32_t)e);
    core_router_t *r = build_ok("{\"router_type\":\"arrow\",\"experts\":[\"a\",\"b\",\"c\","
                                "\"d\"],\"temperature\":0.25}",
                                NULL, ex, 4);
    rng = 5;
    float *x = rand_floats(6 * 8), lam[6 * 4];
    double ref[4], pv[4][12], s[4];
    int layer = 1;
    for (int mi = 0; mi < 2; mi++) {
        core_mod_t m = mi ? CORE_MOD_V : CORE_MOD_Q;
        uint32_t cand = mi ? 15u : 7u;
        for (int e = 0; e < 4; e++)
            if (cand >> e & 1u)
                power_top(&ex[e]->mods[layer * CORE_MOD__COUNT + m], pv[e]);
        for (int k = 1; k <= 3; k += 2) {
            core_route_params_t p = {k == 3 ? 0 : 1, 0};
            core_router_route(r, &p, layer, m, x, 6, 8, lam);
            for (int t = 0; t < 6; t++) {
                for (int e = 0; e < 4; e++) {
                    s[e] = 0;
                    for (int j = 0; (cand >> e & 1u) && j < 8; j++)
                        s[e] += x[t * 8 + j] * pv[e][j];
                    s[e] = fabs(s[e]);
                }
                ref_topk_softmax(s, cand, 4, k, 0.25, ref);
                check_row(lam + t * 4, ref, 4, 2e-4);
            }
        }
    }
    /* the wrong input width routes nothing */
    core_router_route(r, NULL, 0, CORE_MOD_Q, x, 1, 12, lam);
    for (int e = 0; e < 4; e++)
        ASSERT(lam[e] == 0.0f);
    core_router_release(r);
    /* Arrow takes no tensors */
    tset_t ts = {0};
    ts_add(&ts, "model.layers.0.self_attn.q_proj.phatgoose_gate", 4, 8);
    core_st_t *st = ts_open(&ts);
    expect_refused("{\"router_type\":\"arrow\",\"experts\":[\"a\",\"b\",\"c\",\"d\"]}", st, ex,
                   4, RC_MISMATCH, "unbound_tensor", "phatgoose_gate");
    core_st_free(st);
    ts_free(&ts);
    free(x);
    for (int i = 0; i < 4; i++)
        mk_free(ex[i]);
    tmp_clean();
}

/* ---- folders ---------------------------------------------------------------------- */

/* DIR/<name>: a PEFT LoRA on the modules in mask, rank 2; extra goes into the config. */
static void write_expert(const char *dir, const char *name, unsigned mask, const char *extra)
{
    char d[512], p[600], key[160], cfg[1024], tm[256] = "";
    snprintf(d, sizeof d, "%s/%s", dir, name);
    ASSERT(stw_mkdirs(d) == 0);
    tset_t s = {0};
    for (int m = 0; m < CORE_MOD__COUNT; m++) {
        if (!(mask & (1u << m)))
            continue;
        snprintf(tm + strlen(tm), sizeof tm - strlen(tm), "%s\"%s\"", tm[0] ? "," : "",
                 modname[m]);
        for (int l = 0; l < 2; l++) {
            snprintf(key, sizeof key, "base_model.model.model.layers.%d.%s.%s.lora_A.weight", l,
                     parent[m], modname[m]);
            ts_add(&s, key, 2, shape_in[m]);
            snprintf(key, sizeof key, "base_model.model.model.layers.%d.%s.%s.lora_B.weight", l,
                     parent[m], modname[m]);
            ts_add(&s, key, shape_out[m], 2);
        }
    }
    snprintf(cfg, sizeof cfg,
             "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4,\"target_modules\":[%s]%s}", tm,
             extra ? extra : "");
    snprintf(p, sizeof p, "%s/adapter_config.json", d);
    ASSERT(stw_write_text(p, cfg) == 0);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", d);
    ts_write(&s, p);
    ts_free(&s);
}

static const char *mk_dir(const char *name)
{
    static char d[256];
    snprintf(d, sizeof d, "%s/%s", tmp_dir(), name);
    ASSERT(stw_mkdirs(d) == 0);
    return d;
}

static void write_file(const char *dir, const char *file, const char *text)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    ASSERT(stw_write_text(p, text) == 0);
}

static void write_st(const char *dir, const char *file, tset_t *s)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    ts_write(s, p);
    ts_free(s);
}

static core_router_t *load_ok(const char *dir, core_router_kind_t kind, int n)
{
    core_config_t b = base();
    core_router_t *r = NULL;
    core_err_t e = {{0}};
    ASSERT(core_router_dir_is_router(dir));
    ASSERT_RC(core_router_load_dir(dir, &b, NULL, &r, &e), RC_OK, &e);
    ASSERT_EQ(r->kind, kind);
    ASSERT_EQ(r->n_experts, n);
    for (int i = 0; i < n; i++)
        ASSERT_EQ(r->experts[i]->refcount, 1); /* only the router holds them */
    return r;
}

static void load_refused(const char *dir, const core_lora_params_t *lp, rc_t want,
                         const char *reason, const char *needle)
{
    core_config_t b = base();
    core_router_t *r = (core_router_t *)1;
    core_err_t e = {{0}};
    int got = core_router_load_dir(dir, &b, lp, &r, &e);
    ASSERT(r == NULL);
    if (got != (int)want || strcmp(core_err_reason(&e), reason) != 0 ||
        (needle && !strstr(e.msg, needle)))
        HARNESS_FAIL("load_dir: rc %d (want %d), '%s' (want %s ... %s)", got, (int)want, e.msg,
                     reason, needle ? needle : "");
}

TEST(load_dir_each_format)
{
    /* PEFT X-LoRA */
    const char *d = mk_dir("peft");
    write_expert(d, "e0", MQ, NULL);
    write_expert(d, "e1", MV | MD, NULL);
    write_file(d, "adapter_config.json",
               "{\"peft_type\":\"XLORA\",\"hidden_size\":8,\"adapters\":{\"e1\":\"e1\","
               "\"e0\":\"e0\"},\"top_k_lora\":1}");
    tset_t s = {0};
    ts_add(&s, "base_model.internal_xlora_classifier.layers.0.weight", 2, 8);
    write_st(d, "adapter_model.safetensors", &s);
    core_router_t *r = load_ok(d, CORE_ROUTER_XLORA, 2);
    ASSERT_STREQ(r->names[0], "e1");
    ASSERT(r->experts[0]->mods[CORE_MOD_V].A && !r->experts[0]->mods[CORE_MOD_Q].A);
    ASSERT_EQ(r->xlora.n_slots, 6);
    ASSERT_EQ(r->top_k, 1);
    core_router_release(r);

    /* original X-LoRA */
    d = mk_dir("orig");
    write_expert(d, "a", MQ | MK, NULL);
    write_expert(d, "b", MQ, NULL);
    write_file(d, "xlora_config.json",
               "{\"hidden_size\":8,\"adapters\":[\"a\",\"b\"],\"xlora_depth\":2,"
               "\"layerwise_scalings\":true}");
    ts_add(&s, "inner.0.weight", 4, 8);
    ts_add(&s, "inner.0.bias", 4, 0);
    ts_add(&s, "last.weight", 2 * 4, 4);
    write_st(d, "xlora_classifier.safetensors", &s);
    r = load_ok(d, CORE_ROUTER_XLORA, 2);
    ASSERT(r->xlora.layerwise);
    ASSERT_EQ(r->xlora.n_slots, 4);
    core_router_release(r);

    /* PHATGOOSE */
    d = mk_dir("pg");
    write_expert(d, "x", MU, NULL);
    write_expert(d, "y", MU | MD, NULL);
    write_file(d, "router_config.json",
               "{\"router_type\":\"phatgoose\",\"experts\":[\"x\",\"y\"],\"top_k\":1}");
    ts_add(&s, "model.layers.0.mlp.up_proj.phatgoose_gate", 2, 8);
    ts_add(&s, "model.layers.1.mlp.up_proj.phatgoose_gate", 2, 8);
    ts_add(&s, "model.layers.0.mlp.down_proj.phatgoose_gate", 2, 12);
    ts_add(&s, "model.layers.1.mlp.down_proj.phatgoose_gate", 2, 12);
    write_st(d, "router_gates.safetensors", &s);
    r = load_ok(d, CORE_ROUTER_PHATGOOSE, 2);
    ASSERT_EQ(r->top_k, 1);
    ASSERT(r->vec[CORE_MOD__COUNT + CORE_MOD_DOWN] != NULL);
    core_router_release(r);

    /* Arrow */
    d = mk_dir("arrow");
    write_expert(d, "p", MO, NULL);
    write_expert(d, "q", MO, NULL);
    write_expert(d, "r", MO, NULL);
    write_file(d, "router_config.json", "{\"router_type\":\"arrow\",\"experts\":[\"p\",\"q\",\"r\"]}");
    r = load_ok(d, CORE_ROUTER_ARROW, 3);
    ASSERT_EQ(r->top_k, 3);
    core_router_retain(r);
    ASSERT_EQ(r->refcount, 2);
    core_router_release(r);
    core_router_release(r);

    /* not routers */
    ASSERT(!core_router_dir_is_router(mk_dir("arrow/p")));
    ASSERT(!core_router_dir_is_router(mk_dir("empty")));
    tmp_clean();
}

TEST(load_dir_refusals_name_the_expert)
{
    const char *d = mk_dir("bad");
    write_expert(d, "good", MQ, NULL);
    write_expert(d, "dora", MQ, ",\"use_dora\":true");
    write_file(d, "router_config.json",
               "{\"router_type\":\"arrow\",\"experts\":[\"good\",\"dora\"]}");
    load_refused(d, NULL, RC_UNSUPPORTED, "unsupported_feature", "expert 'dora': ");

    write_file(d, "router_config.json",
               "{\"router_type\":\"arrow\",\"experts\":[\"good\",\"gone\"]}");
    write_expert(d, "gone", MQ, NULL);
    char p[512];
    snprintf(p, sizeof p, "%s/gone/adapter_model.safetensors", d);
    ASSERT(remove(p) == 0);
    load_refused(d, NULL, RC_NOT_FOUND, "", "expert 'gone': ");

    write_file(d, "router_config.json",
               "{\"router_type\":\"arrow\",\"experts\":[\"good\",\"..\"]}");
    load_refused(d, NULL, RC_INVALID, "invalid_config", "expert name '..'");

    /* the loader params reach the experts */
    write_expert(d, "other", MQ, ",\"base_model_name_or_path\":\"org/other-model\"");
    write_file(d, "router_config.json",
               "{\"router_type\":\"arrow\",\"experts\":[\"good\",\"other\"]}");
    core_lora_params_t lp = core_lora_default_params();
    lp.base_name = "tiny-llama";
    load_refused(d, &lp, RC_MISMATCH, "base_model_mismatch", "expert 'other': ");
    core_config_t b = base();
    core_router_t *r = NULL;
    core_err_t e = {{0}};
    ASSERT_RC(core_router_load_dir(d, &b, NULL, &r, &e), RC_OK, &e);
    core_router_release(r);

    /* classifier or gates file missing; a LoRA folder is no router */
    const char *x = mk_dir("nocls");
    write_expert(x, "a", MQ, NULL);
    write_file(x, "xlora_config.json", "{\"hidden_size\":8,\"adapters\":[\"a\"]}");
    load_refused(x, NULL, RC_NOT_FOUND, "", "xlora_classifier.safetensors");
    x = mk_dir("nogates");
    write_expert(x, "a", MQ, NULL);
    write_file(x, "router_config.json", "{\"router_type\":\"phatgoose\",\"experts\":[\"a\"]}");
    load_refused(x, NULL, RC_NOT_FOUND, "", "router_gates.safetensors");
    load_refused(mk_dir("nocls/a"), NULL, RC_UNSUPPORTED, "unknown_peft_type", "LORA");
    load_refused(mk_dir("none"), NULL, RC_NOT_FOUND, "", "no router config");
    tmp_clean();
}
