/* test_router_xlora.c - core/router X-LoRA: classifiers in both key layouts (PEFT with
 * and without dropout indices, the original inner/last), the scalings pipeline of
 * ADAPTER-MATH 2.2-2.4 against a double-precision reference, slot numbering, the
 * scaling-pass value, and every refusal naming its key. Split from test_router.c. */
#include "tests/unit/harness.h"

#include "tests/unit/router_fixture.h"

/* ---- X-LoRA --------------------------------------------------------------------- */

/* Experts on different modules: e0 q; e1 v, down; e2 q, up. Slots per layer: q v up down. */
static void xl_experts(core_lora_t **ex)
{
    ex[0] = mk_expert(MQ, 2, 41);
    ex[1] = mk_expert(MV | MD, 2, 42);
    ex[2] = mk_expert(MQ | MU, 4, 43);
}

#define XL_PEFT(extra)                                                                         \
    "{\"peft_type\":\"XLORA\",\"hidden_size\":8,\"adapters\":{\"e0\":\"./e0\",\"e1\":\"./e1\"," \
    "\"e2\":\"./e2\"},\"xlora_size\":5,\"xlora_dropout_p\":0.2,\"task_type\":\"CAUSAL_LM\"" extra "}"
#define XL_ORIG(extra)                                                                          \
    "{\"hidden_size\":8,\"adapters\":[\"e0\",\"e1\",\"e2\"],\"base_model_id\":\"x\"" extra "}"

typedef struct {
    int n_lin;
    const float *W[4], *b[4];
    int n_in[4], n_out[4];
    bool relu;
} ref_cls_t;

static void ref_logits(const ref_cls_t *c, const float *h, double *out)
{
    double a[64], y[64];
    for (int j = 0; j < c->n_in[0]; j++)
        a[j] = h[j];
    for (int l = 0; l < c->n_lin; l++) {
        for (int o = 0; o < c->n_out[l]; o++) {
            y[o] = c->b[l] ? c->b[l][o] : 0;
            for (int j = 0; j < c->n_in[l]; j++)
                y[o] += (double)c->W[l][o * c->n_in[l] + j] * a[j];
            if (c->relu && l + 1 < c->n_lin && y[o] < 0)
                y[o] = 0;
        }
        memcpy(a, y, sizeof(double) * (size_t)c->n_out[l]);
    }
    memcpy(out, a, sizeof(double) * (size_t)c->n_out[c->n_lin - 1]);
}

typedef struct {
    bool softmax, softmax_topk, layerwise;
    double T;
    int top_k;
} ref_opt_t;

/* 2.2-2.3 for one token: S (n_slots, 3). */
static void ref_scalings(const ref_cls_t *c, const ref_opt_t *o, const float *h, int ns,
                         double *S)
{
    double lg[64];
    ref_logits(c, h, lg);
    for (int s = 0; s < ns; s++) {
        double *v = S + s * 3;
        memcpy(v, lg + (o->layerwise ? s * 3 : 0), 3 * sizeof(double));
        if (o->softmax) {
            double mx = fmax(v[0], fmax(v[1], v[2])), sum = 0;
            for (int e = 0; e < 3; e++)
                sum += (v[e] = exp((v[e] - mx) / o->T));
            for (int e = 0; e < 3; e++)
                v[e] /= sum;
        }
        if (o->top_k > 0) {
            double keep[3];
            for (int e = 0; e < 3; e++)
                keep[e] = ref_kept(v, 7u, 3, o->top_k, e);
            for (int e = 0; e < 3; e++)
                v[e] *= keep[e];
        }
        if (o->softmax_topk) {
            double mx = -INFINITY, sum = 0;
            for (int e = 0; e < 3; e++)
                if (v[e] != 0)
                    mx = fmax(mx, v[e]);
            for (int e = 0; e < 3; e++)
                if (v[e] != 0)
                    sum += (v[e] = exp(v[e] - mx));
            for (int e = 0; e < 3; e++)
                v[e] /= sum;
        }
    }
}

static void check_scalings(const core_router_t *r, const core_route_params_t *p,
                           const ref_cls_t *c, const ref_opt_t *o)
{
    enum { NR = 5 };
    int ns = r->xlora.n_slots;
    rng = 77;
    float *h = rand_floats(NR * 8);
    for (int i = 0; i < NR * 8; i++)
        h[i] *= 3; /* spread the logits */
    float *S = malloc(sizeof(float) * NR * (size_t)ns * 3);
    float *scratch = malloc(sizeof(float) * core_xlora_scratch_floats(r, NR));
    ASSERT(S && scratch);
    core_xlora_scalings(r, p, h, NR, S, scratch);
    double ref[64 * 3];
    int zeros = 0;
    for (int t = 0; t < NR; t++) {
        ref_scalings(c, o, h + t * 8, ns, ref);
        for (int i = 0; i < ns * 3; i++) {
            ASSERT_NEAR(S[t * ns * 3 + i], ref[i], 2e-5);
            if (ref[i] == 0) {
                ASSERT(S[t * ns * 3 + i] == 0.0f);
                zeros++;
            }
        }
    }
    if (o->top_k > 0 && o->top_k < 3)
        ASSERT_EQ(zeros, NR * ns * (3 - o->top_k));
    free(h);
    free(S);
    free(scratch);
}

TEST(xlora_slots_follow_targeted_modules)
{
    core_lora_t *ex[3];
    xl_experts(ex);
    tset_t s = {0};
    ts_add(&s, "base_model.internal_xlora_classifier.layers.0.weight", 3, 8);
    ts_add(&s, "base_model.internal_xlora_classifier.layers.0.bias", 3, 0);
    core_st_t *st = ts_open(&s);
    core_router_t *r = build_ok(XL_PEFT(""), st, ex, 3);
    ASSERT_EQ(r->kind, CORE_ROUTER_XLORA);
    ASSERT_EQ(r->xlora.n_slots, 8);
    const int want[CORE_MOD__COUNT] = {0, -1, 1, -1, -1, 2, 3};
    for (int l = 0; l < 2; l++)
        for (int m = 0; m < CORE_MOD__COUNT; m++)
            ASSERT_EQ(core_router_slot(r, l, (core_mod_t)m), want[m] < 0 ? -1 : want[m] + 4 * l);
    /* defaults */
    ASSERT(r->xlora.softmax && !r->xlora.softmax_topk && !r->xlora.layerwise && r->xlora.relu);
    ASSERT_EQ(r->top_k, 0);
    ASSERT_NEAR(r->temperature, 1.0, 0);
    ASSERT_NEAR(r->xlora.scaling_pass_value, 0.0, 0);
    ASSERT_NEAR(r->xlora.global_scaling, 1.0, 0);
    ASSERT_EQ(r->xlora.n_lin, 1);
    ASSERT(r->n_bytes >= 4 * (3 * 8 + 3));
    /* route() on an X-LoRA router is all zeros */
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, lam[3] = {1, 1, 1};
    core_router_route(r, NULL, 0, CORE_MOD_Q, x, 1, 8, lam);
    ASSERT(lam[0] == 0.0f && lam[1] == 0.0f && lam[2] == 0.0f);
    core_router_release(r);
    core_st_free(st);
    ts_free(&s);
    for (int i = 0; i < 3; i++)
        mk_free(ex[i]);
    tmp_clean();
}

TEST(xlora_expert_order_from_the_map)
{
    core_err_t e = {{0}};
    char names[CORE_ROUTER_MAX_EXPERTS][CORE_ROUTER_MAX_NAME];
    int n = 0;
    core_router_kind_t kind = CORE_ROUTER_ARROW;
    ASSERT_RC(core_router_cfg_experts("{\"peft_type\":\"XLORA\",\"adapters\":{\"zeta\":\"/a\","
                                      "\"alpha\":\"/b\",\"mid.1\":\"/c\"}}",
                                      &kind, names, &n, &e),
              RC_OK, &e);
    ASSERT_EQ(kind, CORE_ROUTER_XLORA);
    ASSERT_EQ(n, 3);
    ASSERT_STREQ(names[0], "zeta");
    ASSERT_STREQ(names[1], "alpha");
    ASSERT_STREQ(names[2], "mid.1");
    ASSERT_RC(core_router_cfg_experts("{\"adapters\":[\"b\",\"a\"],\"xlora_depth\":1}", &kind,
                                      names, &n, &e),
              RC_OK, &e);
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(names[0], "b");
    ASSERT_RC(core_router_cfg_experts("{\"router_type\":\"arrow\",\"experts\":[\"x\"]}", &kind,
                                      names, &n, &e),
              RC_OK, &e);
    ASSERT_EQ(kind, CORE_ROUTER_ARROW);
    ASSERT_EQ(n, 1);
    /* refusals */
    expect_err(core_router_cfg_experts("{\"peft_type\":\"LORA\",\"r\":8}", &kind, names, &n, &e),
               RC_UNSUPPORTED, &e, "unknown_peft_type", "LORA");
    expect_err(core_router_cfg_experts("{\"hidden_size\":8}", &kind, names, &n, &e), RC_INVALID,
               &e, "invalid_config", NULL);
    expect_err(core_router_cfg_experts("[1]", &kind, names, &n, &e), RC_FORMAT, &e,
               "invalid_config", NULL);
    expect_err(core_router_cfg_experts("{\"peft_type\":\"XLORA\",\"adapters\":[\"a\"]}", &kind,
                                       names, &n, &e),
               RC_INVALID, &e, "invalid_config", "adapters");
    expect_err(core_router_cfg_experts("{\"peft_type\":\"XLORA\"}", &kind, names, &n, &e),
               RC_INVALID, &e, "missing_field", "adapters");
    const char *bad[] = {"../x", ".hidden", "a/b", "", "-x",
                         "a1234567890123456789012345678901234567890123456789012345678901234"}; /* 65 chars */
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char cfg[256];
        snprintf(cfg, sizeof cfg, "{\"adapters\":[\"ok\",\"%s\"]}", bad[i]);
        expect_err(core_router_cfg_experts(cfg, &kind, names, &n, &e), RC_INVALID, &e,
                   "invalid_config", "expert name");
    }
}

TEST(xlora_depth1_softmax_broadcast)
{
    core_lora_t *ex[3];
    xl_experts(ex);
    tset_t s = {0};
    rng = 3;
    ref_cls_t c = {1, {0}, {0}, {8}, {3}, true};
    c.W[0] = ts_add(&s, "base_model.internal_xlora_classifier.layers.0.weight", 3, 8);
    c.b[0] = ts_add(&s, "base_model.internal_xlora_classifier.layers.0.bias", 3, 0);
    core_st_t *st = ts_open(&s);
    core_router_t *r = build_ok(XL_PEFT(",\"softmax_temperature\":0.7"), st, ex, 3);
    ref_opt_t o = {true, false, false, 0.7, 0};
    check_scalings(r, NULL, &c, &o);
    /* temperature and top_k overrides */
    core_route_params_t p = {1, 2.5f};
    o.T = 2.5, o.top_k = 1;
    check_scalings(r, &p, &c, &o);
    core_router_release(r);
    /* top_k_lora 1 with and without softmax_topk (the kept entry becomes 1) */
    r = build_ok(XL_PEFT(",\"top_k_lora\":1"), st, ex, 3);
    o = (ref_opt_t){true, false, false, 1.0, 1};
    check_scalings(r, NULL, &c, &o);
    core_router_release(r);
    r = build_ok(XL_PEFT(",\"top_k_lora\":2,\"enable_softmax_topk\":true"), st, ex, 3);
    o = (ref_opt_t){true, true, false, 1.0, 2};
    check_scalings(r, NULL, &c, &o);
    core_router_release(r);
    /* no softmax: raw logits, top-k zeroing */
    r = build_ok(XL_PEFT(",\"enable_softmax\":false,\"top_k_lora\":2"), st, ex, 3);
    o = (ref_opt_t){false, false, false, 1.0, 2};
    check_scalings(r, NULL, &c, &o);
    core_router_release(r);
    core_st_free(st);
    ts_free(&s);
    for (int i = 0; i < 3; i++)
        mk_free(ex[i]);
    tmp_clean();
}

/* Depth 2, PEFT layout with Linear indices a and b (0,3 with dropout; 0,2 without). */
static void depth2_peft(int ia, int ib, bool layerwise)
{
    core_lora_t *ex[3];
    xl_experts(ex);
    tset_t s = {0};
    char k[160];
    int out = layerwise ? 8 * 3 : 3;
    rng = 4;
    ref_cls_t c = {2, {0}, {0}, {8, 5}, {5, out}, true};
    /* keys written last layer first: binding sorts by index */
    snprintf(k, sizeof k, "base_model.internal_xlora_classifier.layers.%d.weight", ib);
    c.W[1] = ts_add(&s, k, out, 5);
    snprintf(k, sizeof k, "base_model.internal_xlora_classifier.layers.%d.bias", ib);
    c.b[1] = ts_add(&s, k, out, 0);
    snprintf(k, sizeof k, "base_model.internal_xlora_classifier.layers.%d.weight", ia);
    c.W[0] = ts_add(&s, k, 5, 8);
    snprintf(k, sizeof k, "base_model.internal_xlora_classifier.layers.%d.bias", ia);
    c.b[0] = ts_add(&s, k, 5, 0);
    core_st_t *st = ts_open(&s);
    core_router_t *r = build_ok(layerwise ? XL_PEFT(",\"xlora_depth\":2,\"layerwise_scalings\":true")
                                          : XL_PEFT(",\"xlora_depth\":2"),
                                st, ex, 3);
    ASSERT_EQ(r->xlora.n_lin, 2);
    ASSERT_EQ(r->xlora.lin[0].n_out, 5);
    ref_opt_t o = {true, false, layerwise, 1.0, 0};
    check_scalings(r, NULL, &c, &o);
    /* the ReLU matters: without it the reference differs */
    c.relu = false;
    double a[64], b2[64];
    float h[8];
    rng = 9;
    int differ = 0;
    for (int t = 0; t < 8; t++) {
        for (int j = 0; j < 8; j++)
            h[j] = 3 * frand();
        ref_logits(&c, h, a);
        c.relu = true;
        ref_logits(&c, h, b2);
        c.relu = false;
        differ += fabs(a[0] - b2[0]) > 1e-3;
    }
    ASSERT(differ > 0);
    core_router_release(r);
    /* xlora_depth must equal the layers found */
    expect_refused(XL_PEFT(""), st, ex, 3, RC_MISMATCH, "shape_mismatch", "xlora_depth 1");
    expect_refused(XL_PEFT(",\"xlora_depth\":3"), st, ex, 3, RC_MISMATCH, "shape_mismatch",
                   "xlora_depth 3");
    /* the other scalings layout is refused by shape */
    expect_refused(layerwise ? XL_PEFT(",\"xlora_depth\":2")
                             : XL_PEFT(",\"xlora_depth\":2,\"layerwise_scalings\":true"),
                   st, ex, 3, RC_MISMATCH, "shape_mismatch", "layers.");
    core_st_free(st);
    ts_free(&s);
    for (int i = 0; i < 3; i++)
        mk_free(ex[i]);
    tmp_clean();
}

TEST(xlora_depth2_peft_dropout_indices)
{
    depth2_peft(0, 3, false);
}

TEST(xlora_depth2_peft_no_dropout_layerwise)
{
    depth2_peft(0, 2, true);
}

TEST(xlora_original_inner_last)
{
    core_lora_t *ex[3];
    xl_experts(ex);
    tset_t s = {0};
    rng = 6;
    ref_cls_t c = {2, {0}, {0}, {8, 6}, {6, 3}, true};
    c.W[1] = ts_add(&s, "last.weight", 3, 6);
    c.b[1] = ts_add(&s, "last.bias", 3, 0);
    c.W[0] = ts_add(&s, "inner.0.weight", 6, 8);
    c.b[0] = ts_add(&s, "inner.0.bias", 6, 0);
    core_st_t *st = ts_open(&s);
    core_router_t *r = build_ok(XL_ORIG(",\"xlora_depth\":2"), st, ex, 3);
    ref_opt_t o = {true, false, false, 1.0, 0};
    check_scalings(r, NULL, &c, &o);
    core_router_release(r);
    /* enable_relu_and_dropout false: no ReLU between the layers */
    r = build_ok(XL_ORIG(",\"xlora_depth\":2,\"enable_relu_and_dropout\":false"), st, ex, 3);
    ASSERT(!r->xlora.relu);
    c.relu = false;
    check_scalings(r, NULL, &c, &o);
    core_router_release(r);
    /* use_bias false with biases present; PEFT keys in an original file */
    expect_refused(XL_ORIG(",\"xlora_depth\":2,\"use_bias\":false"), st, ex, 3, RC_MISMATCH,
                   "unbound_tensor", "use_bias");
    expect_refused(XL_PEFT(",\"xlora_depth\":2"), st, ex, 3, RC_MISMATCH, "unbound_tensor",
                   "is not an X-LoRA classifier weight");
    core_st_free(st);
    ts_free(&s);

    /* depth 1: last only, no bias */
    rng = 8;
    ref_cls_t c1 = {1, {0}, {0}, {8}, {3}, true};
    c1.W[0] = ts_add(&s, "last.weight", 3, 8);
    st = ts_open(&s);
    r = build_ok(XL_ORIG(",\"use_bias\":false,\"top_k_lora\":1,\"enable_softmax_topk\":true"), st,
                 ex, 3);
    o = (ref_opt_t){true, true, false, 1.0, 1};
    check_scalings(r, NULL, &c1, &o);
    core_router_release(r);
    core_st_free(st);
    ts_free(&s);
    /* inner without last */
    ts_add(&s, "inner.0.weight", 3, 8);
    st = ts_open(&s);
    expect_refused(XL_ORIG(""), st, ex, 3, RC_INVALID, "missing_field", "last.weight");
    core_st_free(st);
    ts_free(&s);
    for (int i = 0; i < 3; i++)
        mk_free(ex[i]);
    tmp_clean();
}

TEST(xlora_scaling_pass_value)
{
    core_lora_t *ex[3];
    xl_experts(ex);
    tset_t s = {0};
    ts_add(&s, "internal_xlora_classifier.layers.0.weight", 3, 8);
    core_st_t *st = ts_open(&s);
    core_router_t *r = build_ok(XL_PEFT(",\"scaling_pass_value\":null"), st, ex, 3);
    ASSERT_NEAR(r->xlora.scaling_pass_value, 1.0 / 3, 1e-7);
    core_router_release(r);
    r = build_ok(XL_PEFT(",\"scaling_pass_value\":0.25,\"global_scaling_weight\":0.5"), st, ex, 3);
    ASSERT_NEAR(r->xlora.scaling_pass_value, 0.25, 0);
    ASSERT_NEAR(r->xlora.global_scaling, 0.5, 0);
    core_router_release(r);
    expect_refused(XL_PEFT(",\"scaling_pass_value\":\"x\""), st, ex, 3, RC_INVALID,
                   "invalid_config", "scaling_pass_value");
    core_st_free(st);
    ts_free(&s);
    for (int i = 0; i < 3; i++)
        mk_free(ex[i]);
    tmp_clean();
}

TEST(xlora_refusals)
{
    core_lora_t *ex[3];
    xl_experts(ex);
    tset_t s = {0};
    float *w = ts_add(&s, "base_model.internal_xlora_classifier.layers.0.weight", 3, 8);
    core_st_t *st = ts_open(&s);
    expect_refused("{\"peft_type\":\"XLORA\",\"adapters\":{\"e0\":\"\",\"e1\":\"\",\"e2\":\"\"}}",
                   st, ex, 3, RC_INVALID, "missing_field", "hidden_size");
    expect_refused("{\"peft_type\":\"XLORA\",\"hidden_size\":16,\"adapters\":{\"e0\":\"\","
                   "\"e1\":\"\",\"e2\":\"\"}}",
                   st, ex, 3, RC_MISMATCH, "shape_mismatch", "hidden_size 16");
    expect_refused(XL_PEFT(",\"top_k_lora\":4"), st, ex, 3, RC_INVALID, "invalid_config",
                   "top_k_lora");
    expect_refused(XL_PEFT(",\"softmax_temperature\":0"), st, ex, 3, RC_INVALID,
                   "invalid_config", "softmax_temperature");
    expect_refused(XL_PEFT(",\"enable_softmax\":1"), st, ex, 3, RC_INVALID, "invalid_config",
                   "enable_softmax");
    expect_refused(XL_PEFT(""), NULL, ex, 3, RC_INVALID, "no_tensors", NULL);
    core_lora_t *two[2] = {ex[0], ex[1]};
    expect_refused(XL_PEFT(""), st, two, 2, RC_INVALID, "invalid_config", "3 experts");
    core_st_free(st);
    ts_free(&s);

    /* unbound key, duplicate binding, bias without weight, wrong shapes, NaN */
    struct {
        const char *key;
        int64_t d0, d1;
        rc_t rc;
        const char *reason, *needle;
    } cases[] = {
        {"base_model.internal_xlora_classifier.layers.0.extra", 3, 8, RC_MISMATCH,
         "unbound_tensor", "layers.0.extra"},
        {"lm_head.weight", 3, 8, RC_MISMATCH, "unbound_tensor", "lm_head.weight"},
        {"other.internal_xlora_classifier.layers.0.weight", 3, 8, RC_INVALID,
         "duplicate_binding", "other."},
        {"internal_xlora_classifier.layers.1.bias", 3, 0, RC_INVALID, "missing_field",
         "layers.1.bias"},
        {"internal_xlora_classifier.layers.0.bias", 4, 0, RC_MISMATCH, "shape_mismatch",
         "layers.0.bias"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ts_add(&s, "base_model.internal_xlora_classifier.layers.0.weight", 3, 8);
        ts_add(&s, cases[i].key, cases[i].d0, cases[i].d1);
        st = ts_open(&s);
        expect_refused(XL_PEFT(""), st, ex, 3, cases[i].rc, cases[i].reason, cases[i].needle);
        core_st_free(st);
        ts_free(&s);
    }
    ts_add(&s, "base_model.internal_xlora_classifier.layers.0.weight", 4, 8);
    st = ts_open(&s);
    expect_refused(XL_PEFT(""), st, ex, 3, RC_MISMATCH, "shape_mismatch", "[3, 8]");
    core_st_free(st);
    ts_free(&s);
    ts_add(&s, "base_model.internal_xlora_classifier.layers.0.weight", 3, 6);
    st = ts_open(&s);
    expect_refused(XL_PEFT(""), st, ex, 3, RC_MISMATCH, "shape_mismatch", "layers.0.weight");
    core_st_free(st);
    ts_free(&s);
    w = ts_add(&s, "base_model.internal_xlora_classifier.layers.0.weight", 3, 8);
    w[5] = INFINITY;
    st = ts_open(&s);
    expect_refused(XL_PEFT(""), st, ex, 3, RC_INVALID, "non_finite", "layers.0.weight");
    core_st_free(st);
    ts_free(&s);
    /* an expert of another base */
    core_lora_t *odd = mk_expert(MQ, 2, 5);
    odd->mods[CORE_MOD_Q].n_in = 16;
    core_lora_t *ex2[3] = {ex[0], odd, ex[2]};
    ts_add(&s, "base_model.internal_xlora_classifier.layers.0.weight", 3, 8);
    st = ts_open(&s);
    expect_refused(XL_PEFT(""), st, ex2, 3, RC_MISMATCH, "shape_mismatch", "expert 'e1'");
    core_st_free(st);
    ts_free(&s);
    mk_free(odd);
    for (int i = 0; i < 3; i++)
        mk_free(ex[i]);
    tmp_clean();
}

