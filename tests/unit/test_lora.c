/* test_lora.c - core/lora: PEFT adapter folders generated from C into tests/tmp/lora/,
 * loaded against a tiny 2-layer base; valid adapters, scaling, rank/alpha patterns
 * (ADAPTER-MATH T2), every refusal naming its field or key, adapter sets (validation,
 * equality, reference counts) and the PEFT "linear" mix against its formula. */
#include "tests/unit/harness.h"

#include "core/lora.h"
#include "core/safetensors.h"
#include "tests/unit/st_write.h"

#define DIR_L "tests/tmp/lora"

/* dim 8, 2 heads of 4, 1 kv head, hidden 12, 2 layers:
 * q (8,8)  k,v (4,8)  o (8,8)  gate,up (12,8)  down (8,12) */
static core_config_t base(void)
{
    core_config_t c;
    memset(&c, 0, sizeof c);
    strcpy(c.arch, "LlamaForCausalLM");
    strcpy(c.model_type, "llama");
    c.n_vocab = 32;
    c.dim = 8;
    c.hidden_dim = 12;
    c.n_layers = 2;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.head_dim = 4;
    c.max_pos = 64;
    return c;
}

/* (n_out, n_in) of each module in the base above, written out independently. */
static const int shape_out[CORE_MOD__COUNT] = {8, 4, 4, 8, 12, 12, 8};
static const int shape_in[CORE_MOD__COUNT] = {8, 8, 8, 8, 8, 8, 12};
static const char *const parent[CORE_MOD__COUNT] = {
    "self_attn", "self_attn", "self_attn", "self_attn", "mlp", "mlp", "mlp"};
static const char *const modname[CORE_MOD__COUNT] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"};

/* ---- fixtures --------------------------------------------------------------------- */

enum { FX_MAX = 64 };
typedef struct {
    stw_tensor_t t[FX_MAX];
    char names[FX_MAX][160];
    uint8_t *bufs[FX_MAX];
    size_t n;
} fx_t;

/* Values exact in f32, f16 and bf16: multiples of 1/8 in [-0.75, 0.75]. */
static float fx_val(size_t i, int seed)
{
    return (float)((int)((i * 7 + (size_t)seed * 3) % 13) - 6) * 0.125f;
}

static void fx_add(fx_t *f, const char *name, const char *dtype, int64_t d0, int64_t d1, int seed)
{
    ASSERT(f->n < FX_MAX);
    size_t n = (size_t)(d0 * d1),
           es = strcmp(dtype, "F32") == 0 || strcmp(dtype, "I32") == 0 ? 4 : 2;
    uint8_t *b = calloc(n ? n : 1, es);
    ASSERT(b != NULL);
    for (size_t i = 0; i < n; i++) {
        float v = fx_val(i, seed);
        if (es == 4) {
            memcpy(b + 4 * i, &v, 4);
        } else {
            /* f16 of k/8: exact; bf16: the upper half of the f32 bits */
            uint16_t h;
            if (strcmp(dtype, "BF16") == 0) {
                h = stw_bf16_bits(v);
            } else {
                _Float16 x = (_Float16)v;
                memcpy(&h, &x, 2);
            }
            memcpy(b + 2 * i, &h, 2);
        }
    }
    snprintf(f->names[f->n], sizeof f->names[0], "%s", name);
    f->bufs[f->n] = b;
    f->t[f->n] = (stw_tensor_t){f->names[f->n], dtype, 2, {d0, d1}, b, n * es};
    f->n++;
}

static void fx_key(char *buf, size_t len, const char *prefix, int layer, int m, char ab)
{
    snprintf(buf, len, "%smodel.layers.%d.%s.%s.lora_%c.weight", prefix, layer, parent[m],
             modname[m], ab);
}

/* Added to every pair's seeds, so adapters of one shape can hold different values. */
static int fx_seed_off;

/* A (r, in) and B (out, r) for module m of layer, with the PEFT prefix. */
static void fx_pair_ex(fx_t *f, const char *prefix, const char *dtype, int layer, int m, int r)
{
    char k[160];
    fx_key(k, sizeof k, prefix, layer, m, 'A');
    fx_add(f, k, dtype, r, shape_in[m], layer * 10 + m + fx_seed_off);
    fx_key(k, sizeof k, prefix, layer, m, 'B');
    fx_add(f, k, dtype, shape_out[m], r, layer * 10 + m + 5 + fx_seed_off);
}

static void fx_pair(fx_t *f, int layer, int m, int r)
{
    fx_pair_ex(f, "base_model.model.", "F32", layer, m, r);
}

static void fx_free(fx_t *f)
{
    for (size_t i = 0; i < f->n; i++)
        free(f->bufs[i]);
    f->n = 0;
}

static const char *fx_write(const char *name, const char *config, fx_t *f)
{
    static char dir[256];
    char p[512];
    snprintf(dir, sizeof dir, DIR_L "/%s", name);
    ASSERT_EQ(stw_mkdirs(dir), 0);
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    ASSERT_EQ(stw_write_text(p, config), 0);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    ASSERT_EQ(stw_write(p, f->t, f->n, "{\"format\":\"pt\"}"), 0);
    return dir;
}

/* rank-2 adapter on q and v of both layers */
static void fx_qv(fx_t *f, int r)
{
    for (int l = 0; l < 2; l++) {
        fx_pair(f, l, CORE_MOD_Q, r);
        fx_pair(f, l, CORE_MOD_V, r);
    }
}

#define CFG(extra)                                                                                 \
    "{\"peft_type\":\"LORA\",\"task_type\":\"CAUSAL_LM\",\"r\":2,\"lora_alpha\":16,"               \
    "\"target_modules\":[\"v_proj\",\"q_proj\"],\"lora_dropout\":0.05,\"bias\":\"none\","          \
    "\"fan_in_fan_out\":false,\"use_dora\":false,\"modules_to_save\":null,"                        \
    "\"base_model_name_or_path\":\"tiny\",\"a_future_peft_field\":{\"x\":[1]}" extra "}"

static core_lora_t *load_ok(const char *name, const char *config, fx_t *f)
{
    const char *dir = fx_write(name, config, f);
    core_config_t b = base();
    core_lora_t *l = NULL;
    core_err_t eb, *e = &eb;
    ASSERT_RC(core_lora_load(dir, &b, &l, e), RC_OK, e);
    ASSERT(l != NULL);
    return l;
}

/* The machine-readable reason (core/rc.h CORE_REASON_MAP) each refusal case below must
 * carry, by case name: clients match on these, so they are pinned here. */
static const struct {
    const char *name, *reason;
} want_reasons[] = {
    {"fifo", "unsupported_feature"},      {"shape_rank", "shape_mismatch"},
    {"shape_out", "shape_mismatch"},      {"shape_in", "shape_mismatch"},
    {"not_target", "unbound_tensor"},     {"k_lora_c", "unbound_tensor"},
    {"k_other", "unbound_tensor"},        {"k_zero_pad", "unbound_tensor"},
    {"k_wrong_parent", "unbound_tensor"}, {"k_double_prefix", "unbound_tensor"},
    {"k_suffix", "unbound_tensor"},       {"k_embed", "unsupported_feature"},
    {"k_dora", "unsupported_feature"},    {"k_lm_head", "unsupported_feature"},
    {"k_bias", "unsupported_feature"},    {"k_layer2", "layer_out_of_range"},
    {"k_layer_huge", "layer_out_of_range"}, {"dup_bind", "duplicate_binding"},
    {"nan", "non_finite"},                {"inf16", "non_finite"},
    {"badbf16", "non_finite"},            {"missing_b", "missing_pair"},
    {"missing_a", "missing_pair"},        {"ia3", "unknown_peft_type"},
    {"i32", "bad_dtype"},                 {"empty", "no_tensors"},
    {"c_no_r", "missing_field"},          {"c_no_alpha", "missing_field"},
    {"c_no_targets", "missing_field"},    {"c_no_type", "missing_field"},
    {"c_r0", "duplicate_key"},            {"c_r_zero", "invalid_rank"},
    {"c_r_neg", "invalid_rank"},          {"c_r_big", "invalid_rank"},
    {"c_r_1024", "invalid_rank"},         {"c_r_str", "invalid_rank"},
    {"c_r_frac", "invalid_rank"},         {"c_alpha0", "invalid_alpha"},
    {"c_alpha_f32_inf", "invalid_alpha"}, {"c_alpha_huge", "invalid_config"},
    {"c_alpha_nan", "invalid_config"},    {"c_dora", "unsupported_feature"},
    {"c_mts", "unsupported_feature"},     {"c_bias", "unsupported_feature"},
    {"c_lora_bias", "unsupported_feature"}, {"c_replication", "unsupported_feature"},
    {"c_pissa", "unsupported_feature"},   {"c_loftq", "unsupported_feature"},
    {"c_alora", "unsupported_feature"},   {"c_rslora_str", "invalid_config"},
    {"c_bad_rank_pattern", "invalid_config"}, {"c_rank_pattern_val", "invalid_rank"},
    {"c_alpha_pattern_val", "invalid_alpha"}, {"c_py_escape", "invalid_config"},
    {"c_py_group", "invalid_config"},     {"c_not_object", "invalid_config"},
    {"c_re_stacked", "invalid_config"},   {"c_re_bound", "invalid_config"},
    {"c_re_nested", "invalid_config"},
    {"c_not_json", "invalid_config"},     {"c_type_num", "invalid_config"},
    {"c_unknown_target", "unknown_module"}, {"c_dup_nested", "duplicate_key"},
};

/* Refused with want; the message holds w1 (and w2 if given) and starts with a reason
 * (the one pinned in want_reasons when the case is listed there). */
static void load_fails(const char *name, const char *config, fx_t *f, rc_t want, const char *w1,
                       const char *w2)
{
    const char *dir = fx_write(name, config, f);
    core_config_t b = base();
    core_lora_t *l = NULL;
    core_err_t e;
    e.msg[0] = 0;
    rc_t rc = core_lora_load(dir, &b, &l, &e);
    if (rc != want)
        HARNESS_FAIL("%s: rc %d (%s), want %d", name, rc, e.msg, want);
    ASSERT(l == NULL);
    if ((w1 && !strstr(e.msg, w1)) || (w2 && !strstr(e.msg, w2)))
        HARNESS_FAIL("%s: message lacks '%s'/'%s': %s", name, w1, w2 ? w2 : "", e.msg);
    const char *got = core_err_reason(&e);
    if (!got[0])
        HARNESS_FAIL("%s: refusal without a reason: %s", name, e.msg);
    for (size_t i = 0; i < sizeof want_reasons / sizeof want_reasons[0]; i++)
        if (strcmp(want_reasons[i].name, name) == 0 && strcmp(want_reasons[i].reason, got) != 0)
            HARNESS_FAIL("%s: reason '%s', want '%s': %s", name, got, want_reasons[i].reason,
                         e.msg);
}

static void expect_values(const float *got, size_t n, int seed)
{
    for (size_t i = 0; i < n; i++)
        if (got[i] != fx_val(i, seed))
            HARNESS_FAIL("value %zu: %g != %g (seed %d)", i, got[i], fx_val(i, seed), seed);
}

/* ---- valid adapters ---------------------------------------------------------------- */

TEST(valid_rank2_q_v)
{
    fx_t f = {0};
    fx_qv(&f, 2);
    core_lora_t *l = load_ok("valid", CFG(""), &f);
    ASSERT_EQ(l->n_layers, 2);
    ASSERT_EQ(l->rank, 2);
    ASSERT(l->alpha == 16.0f && !l->rslora);
    ASSERT_EQ(l->target_mask, (1u << CORE_MOD_Q) | (1u << CORE_MOD_V));
    ASSERT_EQ(l->refcount, 1);
    /* per layer: q 2*8 + 8*2, v 2*8 + 4*2 floats */
    ASSERT_EQ(l->n_bytes, 2 * (32 + 24) * sizeof(float));
    for (int layer = 0; layer < 2; layer++) {
        const core_lora_mod_t *q = core_lora_mod(l, layer, CORE_MOD_Q);
        ASSERT(q->A && q->B);
        ASSERT_EQ(q->r, 2);
        ASSERT(q->scale == 8.0f);
        expect_values(q->A, 2 * 8, layer * 10 + CORE_MOD_Q);
        expect_values(q->B, 8 * 2, layer * 10 + CORE_MOD_Q + 5);
        const core_lora_mod_t *v = core_lora_mod(l, layer, CORE_MOD_V);
        expect_values(v->A, 2 * 8, layer * 10 + CORE_MOD_V);
        expect_values(v->B, 4 * 2, layer * 10 + CORE_MOD_V + 5);
        for (int m = 0; m < CORE_MOD__COUNT; m++)
            if (m != CORE_MOD_Q && m != CORE_MOD_V)
                ASSERT(core_lora_mod(l, layer, (core_mod_t)m)->A == NULL);
    }
    char buf[64];
    core_lora_targets_str(l, buf, sizeof buf);
    ASSERT_STREQ(buf, "q_proj,v_proj");
    core_lora_targets_str(l, buf, 10); /* too short for both: never a half name */
    ASSERT_STREQ(buf, "q_proj");
    core_lora_retain(l);
    ASSERT_EQ(l->refcount, 2);
    core_lora_release(l);
    ASSERT_EQ(l->refcount, 1);
    core_lora_release(l);
    fx_free(&f);
}

TEST(f16_bf16_no_prefix_all_modules)
{
    fx_t f = {0};
    for (int m = 0; m < CORE_MOD__COUNT; m++)
        fx_pair_ex(&f, m % 2 ? "" : "base_model.model.", m < 4 ? "F16" : "BF16", 1, m, 2);
    core_lora_t *l = load_ok("f16_bf16",
                             "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4.5,"
                             "\"target_modules\":\"all-linear\"}",
                             &f);
    for (int m = 0; m < CORE_MOD__COUNT; m++) {
        const core_lora_mod_t *md = core_lora_mod(l, 1, (core_mod_t)m);
        ASSERT(md->A != NULL && md->scale == 2.25f);
        expect_values(md->A, (size_t)2 * shape_in[m], 10 + m);
        expect_values(md->B, (size_t)shape_out[m] * 2, 10 + m + 5);
        ASSERT(core_lora_mod(l, 0, (core_mod_t)m)->A == NULL);
    }
    char buf[128];
    core_lora_targets_str(l, buf, sizeof buf);
    ASSERT_STREQ(buf, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj");
    core_lora_release(l);
    fx_free(&f);
}

TEST(rslora_scale)
{
    fx_t f = {0};
    fx_qv(&f, 2);
    core_lora_t *l = load_ok("rslora", CFG(",\"use_rslora\":true"), &f);
    ASSERT(l->rslora);
    ASSERT_NEAR(core_lora_mod(l, 0, CORE_MOD_Q)->scale, 16.0 / sqrt(2.0), 1e-6);
    ASSERT_NEAR(core_lora_mod(l, 1, CORE_MOD_V)->scale, 11.3137085, 1e-5);
    core_lora_release(l);
    fx_free(&f);
}

/* ADAPTER-MATH 8, T2: rank_pattern {"layers.1.self_attn.q_proj": 4},
 * alpha_pattern {"^model.layers.0.self_attn.q_proj": 32}; r=2, alpha=8. */
TEST(t2_rank_alpha_patterns)
{
    fx_t f = {0};
    fx_pair(&f, 0, CORE_MOD_Q, 2);
    fx_pair(&f, 1, CORE_MOD_Q, 4);
    fx_pair(&f, 0, CORE_MOD_V, 2);
    fx_pair(&f, 1, CORE_MOD_V, 2);
    core_lora_t *l = load_ok("t2",
                             "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":8,"
                             "\"target_modules\":[\"q_proj\",\"v_proj\"],"
                             "\"rank_pattern\":{\"layers.1.self_attn.q_proj\":4},"
                             "\"alpha_pattern\":{\"^model.layers.0.self_attn.q_proj\":32}}",
                             &f);
    const core_lora_mod_t *q0 = core_lora_mod(l, 0, CORE_MOD_Q),
                          *q1 = core_lora_mod(l, 1, CORE_MOD_Q);
    ASSERT_EQ(q0->r, 2);
    ASSERT(q0->scale == 16.0f); /* 32 / 2 */
    ASSERT_EQ(q1->r, 4);
    ASSERT(q1->scale == 2.0f); /* 8 / 4 */
    ASSERT(core_lora_mod(l, 0, CORE_MOD_V)->scale == 4.0f);
    ASSERT(core_lora_mod(l, 1, CORE_MOD_V)->scale == 4.0f);
    ASSERT_EQ(l->rank, 2);
    core_lora_release(l);
    /* rank 2 for layer-1 q now contradicts the pattern: refused naming the key */
    fx_free(&f);
    fx_pair(&f, 0, CORE_MOD_Q, 2);
    fx_pair(&f, 1, CORE_MOD_Q, 2);
    load_fails("t2_wrong_rank",
               "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":8,\"target_modules\":[\"q_proj\"],"
               "\"rank_pattern\":{\"layers.1.self_attn.q_proj\":4}}",
               &f, RC_MISMATCH, "model.layers.1.self_attn.q_proj.lora_A.weight", "[4, 8]");
    fx_free(&f);
}

TEST(patterns_first_match_in_json_order)
{
    fx_t f = {0};
    fx_pair(&f, 0, CORE_MOD_Q, 3);
    fx_pair(&f, 1, CORE_MOD_Q, 3);
    fx_pair(&f, 1, CORE_MOD_K, 5);
    core_lora_t *l = load_ok("pat_order",
                             "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":6,"
                             "\"target_modules\":[\"q_proj\",\"k_proj\"],"
                             "\"rank_pattern\":{\"q_proj\":3,\"layers.1.self_attn.q_proj\":4,"
                             "\"self_attn.(k|z)_proj\":5},"
                             "\"alpha_pattern\":{\"layers.1.self_attn.q_proj\":12,\"q_proj\":1.5}}",
                             &f);
    ASSERT_EQ(core_lora_mod(l, 1, CORE_MOD_Q)->r, 3);       /* "q_proj" comes first */
    ASSERT(core_lora_mod(l, 1, CORE_MOD_Q)->scale == 4.0f); /* 12 / 3 */
    ASSERT(core_lora_mod(l, 0, CORE_MOD_Q)->scale == 0.5f); /* 1.5 / 3 */
    ASSERT_EQ(core_lora_mod(l, 1, CORE_MOD_K)->r, 5);
    ASSERT(core_lora_mod(l, 1, CORE_MOD_K)->scale == 6.0f / 5.0f);
    core_lora_release(l);
    fx_free(&f);
}

TEST(target_selection_variants)
{
    fx_t f = {0};
    fx_pair(&f, 1, CORE_MOD_Q, 2);
    /* regex target, PEFT-style fullmatch */
    core_lora_t *l = load_ok("t_regex",
                             "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,"
                             "\"target_modules\":\".*\\\\.(q_proj|v_proj)\"}",
                             &f);
    ASSERT(core_lora_mod(l, 1, CORE_MOD_Q)->scale == 1.0f);
    core_lora_release(l);
    /* layers_to_transform as int and as list, with layers_pattern */
    l = load_ok("t_layers_int",
                "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
                "\"layers_to_transform\":1}",
                &f);
    core_lora_release(l);
    l = load_ok("t_layers_list",
                "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
                "\"layers_to_transform\":[0,1],\"layers_pattern\":\"layers\"}",
                &f);
    core_lora_release(l);
    load_fails("t_layers_miss",
               "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
               "\"layers_to_transform\":[0]}",
               &f, RC_MISMATCH, "model.layers.1.self_attn.q_proj.lora_A.weight",
               "layers_to_transform");
    load_fails("t_layers_pattern_miss",
               "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
               "\"layers_to_transform\":[1],\"layers_pattern\":[\"h\"]}",
               &f, RC_MISMATCH, "lora_A.weight", NULL);
    load_fails("t_regex_miss",
               "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":\"v_proj\"}",
               &f, RC_MISMATCH, "q_proj.lora_A.weight", NULL);
    load_fails("t_exclude",
               "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
               "\"exclude_modules\":[\"layers.1.self_attn.q_proj\"]}",
               &f, RC_MISMATCH, "q_proj.lora_A.weight", NULL);
    load_fails("t_absent_target",
               "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\","
               "\"c_attn\"]}",
               &f, RC_MISMATCH, "c_attn", NULL);
    load_fails("t_bad_regex",
               "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":\"q_proj[\"}",
               &f, RC_INVALID, "target_modules", "q_proj[");
    load_fails("t_empty_list",
               "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[]}", &f,
               RC_INVALID, "target_modules", NULL);
    fx_free(&f);
}

/* ---- refusals ------------------------------------------------------------------------ */

TEST(fan_in_fan_out_refused)
{
    fx_t f = {0};
    fx_qv(&f, 2);
    load_fails("fifo",
               "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":16,\"target_modules\":[\"q_proj\","
               "\"v_proj\"],\"fan_in_fan_out\":true}",
               &f, RC_INVALID, "fan_in_fan_out", "nn.Linear");
    fx_free(&f);
}

TEST(wrong_shape_refused)
{
    fx_t f = {0};
    fx_pair(&f, 0, CORE_MOD_Q, 2);
    fx_add(&f, "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight", "F32", 3, 8, 1);
    fx_add(&f, "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight", "F32", 4, 3, 1);
    load_fails("shape_rank", CFG(""), &f, RC_MISMATCH,
               "model.layers.0.self_attn.v_proj.lora_A.weight", "[3, 8]");
    fx_free(&f);
    fx_pair(&f, 0, CORE_MOD_Q, 2);
    fx_add(&f, "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight", "F32", 2, 8, 1);
    fx_add(&f, "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight", "F32", 8, 2, 1);
    load_fails("shape_out", CFG(""), &f, RC_MISMATCH,
               "model.layers.0.self_attn.v_proj.lora_B.weight", "[4, 2]");
    fx_free(&f);
    fx_add(&f, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "F32", 2, 16, 1);
    fx_add(&f, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", "F32", 8, 2, 1);
    load_fails("shape_in", CFG(""), &f, RC_MISMATCH, "q_proj.lora_A.weight", "[2, 16]");
    fx_free(&f);
}

TEST(module_not_in_target_modules_refused)
{
    fx_t f = {0};
    fx_qv(&f, 2);
    fx_pair(&f, 1, CORE_MOD_K, 2);
    load_fails("not_target", CFG(""), &f, RC_MISMATCH,
               "base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight", "target_modules");
    fx_free(&f);
}

static void one_key_fails(const char *name, const char *key, rc_t want, const char *word)
{
    fx_t f = {0};
    fx_qv(&f, 2);
    fx_add(&f, key, "F32", 2, 8, 0);
    load_fails(name, CFG(""), &f, want, key, word);
    fx_free(&f);
}

TEST(unknown_keys_refused)
{
    one_key_fails("k_lora_c", "base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight",
                  RC_MISMATCH, NULL);
    one_key_fails("k_other", "foo.bar", RC_MISMATCH, NULL);
    one_key_fails("k_zero_pad", "base_model.model.model.layers.01.self_attn.q_proj.lora_A.weight",
                  RC_MISMATCH, NULL);
    one_key_fails("k_wrong_parent", "base_model.model.model.layers.0.mlp.q_proj.lora_A.weight",
                  RC_MISMATCH, NULL);
    one_key_fails("k_double_prefix",
                  "base_model.model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                  RC_MISMATCH, NULL);
    one_key_fails("k_suffix", "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight.x",
                  RC_MISMATCH, NULL);
    one_key_fails("k_embed", "base_model.model.model.embed_tokens.lora_embedding_A", RC_UNSUPPORTED,
                  "embeddings");
    one_key_fails("k_dora",
                  "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
                  RC_UNSUPPORTED, "DoRA");
    one_key_fails("k_lm_head", "base_model.model.lm_head.lora_A.weight", RC_UNSUPPORTED, "lm_head");
    one_key_fails("k_bias", "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias",
                  RC_UNSUPPORTED, "bias");
}

TEST(layer_out_of_range_refused)
{
    one_key_fails("k_layer2", "base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight",
                  RC_MISMATCH, "out of range");
    one_key_fails(
        "k_layer_huge",
        "base_model.model.model.layers.99999999999999999999.self_attn.q_proj.lora_A.weight",
        RC_MISMATCH, "out of range");
}

TEST(duplicate_binding_refused)
{
    fx_t f = {0};
    fx_qv(&f, 2);
    fx_add(&f, "model.layers.0.self_attn.q_proj.lora_A.weight", "F32", 2, 8, 0);
    load_fails("dup_bind", CFG(""), &f, RC_INVALID, "model.layers.0.self_attn.q_proj.lora_A.weight",
               "same weight");
    fx_free(&f);
}

TEST(nan_and_inf_refused)
{
    fx_t f = {0};
    fx_qv(&f, 2);
    float *b = (float *)f.bufs[3]; /* layer 0 v_proj lora_B */
    b[5] = NAN;
    load_fails("nan", CFG(""), &f, RC_INVALID, "model.layers.0.self_attn.v_proj.lora_B.weight",
               "finite");
    b[5] = 0.0f;
    uint16_t inf16 = 0x7c00;
    fx_free(&f);
    fx_pair_ex(&f, "", "F16", 0, CORE_MOD_Q, 2);
    memcpy(f.bufs[0] + 2, &inf16, 2);
    load_fails("inf16", CFG(""), &f, RC_INVALID, "model.layers.0.self_attn.q_proj.lora_A.weight",
               "finite");
    fx_free(&f);
    /* bf16 goes through the fused convert-and-check pass: inf and NaN, first and last. */
    const uint16_t bad_bf16[] = {0x7f80, 0xff80, 0x7fc1};
    for (size_t k = 0; k < sizeof bad_bf16 / sizeof bad_bf16[0]; k++) {
        fx_pair_ex(&f, "", "BF16", 0, CORE_MOD_Q, 2);
        memcpy(f.bufs[1] + (k == 2 ? 0 : 2 * 15), &bad_bf16[k], 2);
        load_fails("badbf16", CFG(""), &f, RC_INVALID,
                   "model.layers.0.self_attn.q_proj.lora_B.weight", "finite");
        fx_free(&f);
    }
}

TEST(missing_b_refused)
{
    fx_t f = {0};
    fx_pair(&f, 0, CORE_MOD_Q, 2);
    fx_add(&f, "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight", "F32", 2, 8, 0);
    load_fails("missing_b", CFG(""), &f, RC_INVALID,
               "model.layers.1.self_attn.v_proj.lora_A.weight", "lora_B");
    fx_free(&f);
    fx_add(&f, "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight", "F32", 4, 2, 0);
    load_fails("missing_a", CFG(""), &f, RC_INVALID, "v_proj.lora_B.weight", "lora_A");
    fx_free(&f);
}

TEST(peft_type_ia3_refused)
{
    fx_t f = {0};
    fx_qv(&f, 2);
    load_fails("ia3",
               "{\"peft_type\":\"IA3\",\"target_modules\":[\"k_proj\",\"v_proj\",\"down_proj\"],"
               "\"feedforward_modules\":[\"down_proj\"]}",
               &f, RC_UNSUPPORTED, "peft_type IA3 is not supported", NULL);
    fx_free(&f);
}

TEST(dtype_and_emptiness_refused)
{
    fx_t f = {0};
    fx_add(&f, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "I32", 2, 8, 0);
    fx_add(&f, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", "F32", 8, 2, 0);
    load_fails("i32", CFG(""), &f, RC_UNSUPPORTED, "q_proj.lora_A.weight", "I32");
    fx_free(&f);
    load_fails("empty", CFG(""), &f, RC_INVALID, "no LoRA tensors", NULL);
}

/* RELIABILITY F9: config fields, each refused naming the field. */
TEST(config_fields_refused)
{
    static const struct {
        const char *name, *config;
        rc_t rc;
        const char *word;
    } cases[] = {
        {"c_no_r", "{\"peft_type\":\"LORA\",\"lora_alpha\":16,\"target_modules\":[\"q_proj\"]}",
         RC_INVALID, "r missing"},
        {"c_no_alpha", "{\"peft_type\":\"LORA\",\"r\":2,\"target_modules\":[\"q_proj\"]}",
         RC_INVALID, "lora_alpha"},
        {"c_no_targets", "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":16}", RC_INVALID,
         "target_modules"},
        {"c_no_type", "{\"r\":2,\"lora_alpha\":16,\"target_modules\":[\"q_proj\"]}", RC_INVALID,
         "peft_type"},
        {"c_r0", CFG(",\"r\":0"), RC_FORMAT, "duplicate"}, /* CFG already has r */
        {"c_r_zero",
         "{\"peft_type\":\"LORA\",\"r\":0,\"lora_alpha\":16,\"target_modules\":[\"q_proj\"]}",
         RC_INVALID, "positive integer"},
        {"c_r_neg",
         "{\"peft_type\":\"LORA\",\"r\":-8,\"lora_alpha\":16,\"target_modules\":[\"q_proj\"]}",
         RC_INVALID, "positive integer"},
        {"c_r_big",
         "{\"peft_type\":\"LORA\",\"r\":1025,\"lora_alpha\":16,\"target_modules\":[\"q_proj\"]}",
         RC_INVALID, "greater than"},
        {"c_r_str",
         "{\"peft_type\":\"LORA\",\"r\":\"8\",\"lora_alpha\":16,\"target_modules\":[\"q_proj\"]}",
         RC_INVALID, "r must be"},
        {"c_r_frac",
         "{\"peft_type\":\"LORA\",\"r\":8.5,\"lora_alpha\":16,\"target_modules\":[\"q_proj\"]}",
         RC_INVALID, "r must be"},
        {"c_alpha0",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":0,\"target_modules\":[\"q_proj\"]}",
         RC_INVALID, "lora_alpha"},
        {"c_alpha_f32_inf",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":1e300,\"target_modules\":[\"q_proj\"]}",
         RC_INVALID, "lora_alpha"},
        {"c_alpha_huge",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":1e309,\"target_modules\":[\"q_proj\"]}",
         RC_FORMAT, "adapter_config.json"},
        {"c_dora",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
         "\"use_dora\":true}",
         RC_UNSUPPORTED, "use_dora"},
        {"c_mts",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
         "\"modules_to_save\":[\"lm_head\"]}",
         RC_UNSUPPORTED, "modules_to_save"},
        {"c_bias",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
         "\"bias\":\"all\"}",
         RC_UNSUPPORTED, "bias"},
        {"c_lora_bias",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
         "\"lora_bias\":true}",
         RC_UNSUPPORTED, "lora_bias"},
        {"c_replication",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
         "\"layer_replication\":[[0,2]]}",
         RC_UNSUPPORTED, "layer_replication"},
        {"c_pissa",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
         "\"init_lora_weights\":\"pissa_niter_4\"}",
         RC_UNSUPPORTED, "init_lora_weights"},
        {"c_loftq",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
         "\"init_lora_weights\":\"loftq\"}",
         RC_UNSUPPORTED, "init_lora_weights"},
        {"c_alora",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
         "\"alora_invocation_tokens\":[5,6]}",
         RC_UNSUPPORTED, "alora_invocation_tokens"},
        {"c_rslora_str",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
         "\"use_rslora\":\"yes\"}",
         RC_INVALID, "use_rslora"},
        {"c_bad_rank_pattern",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
         "\"rank_pattern\":{\"q_proj[\":4}}",
         RC_INVALID, "'q_proj['"},
        {"c_rank_pattern_val",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
         "\"rank_pattern\":{\"q_proj\":0}}",
         RC_INVALID, "rank_pattern['q_proj']"},
        {"c_alpha_pattern_val",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
         "\"alpha_pattern\":{\"q_proj\":\"x\"}}",
         RC_INVALID, "alpha_pattern['q_proj']"},
        /* glibc would read \d as 'd' and silently match nothing: refused */
        {"c_py_escape",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
         "\"alpha_pattern\":{\"layers\\\\.\\\\d+\\\\.self_attn\\\\.q_proj\":4}}",
         RC_INVALID, "Python-only"},
        {"c_py_group",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,"
         "\"target_modules\":\"(?:.*\\\\.q_proj)\"}",
         RC_INVALID, "Python-only"},
        /* regcomp blow-ups found by fuzz_lora_config: refused before regcomp runs */
        {"c_re_stacked",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
         "\"alpha_pattern\":{\"f++++++++++++++++++++++++\":4}}",
         RC_INVALID, "too complex"},
        {"c_re_bound",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
         "\"rank_pattern\":{\"(a{16}){16}b{2}\":4}}",
         RC_INVALID, "too complex"},
        {"c_re_nested",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,"
         "\"target_modules\":\"(((((((((q_proj)+)+)+)+)+)+)+)+)+\"}",
         RC_INVALID, "too complex"},
        {"c_not_object", "[1,2]", RC_INVALID, "object"},
        {"c_not_json", "{\"peft_type\":", RC_FORMAT, "adapter_config.json"},
        /* vLLM's largest max_lora_rank is 512 */
        {"c_r_1024",
         "{\"peft_type\":\"LORA\",\"r\":1024,\"lora_alpha\":16,\"target_modules\":[\"q_proj\"]}",
         RC_INVALID, "greater than 512"},
        {"c_alpha_nan",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":NaN,\"target_modules\":[\"q_proj\"]}",
         RC_FORMAT, "adapter_config.json"},
        {"c_type_num", "{\"peft_type\":7,\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"]}",
         RC_INVALID, "peft_type"},
        {"c_unknown_target",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\","
         "\"to_out.0\"]}",
         RC_MISMATCH, "to_out.0"},
        {"c_dup_nested",
         "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"q_proj\"],"
         "\"rank_pattern\":{\"q_proj\":2,\"q_proj\":4}}",
         RC_FORMAT, "duplicate"},
    };
    fx_t f = {0};
    fx_pair(&f, 0, CORE_MOD_Q, 2);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        load_fails(cases[i].name, cases[i].config, &f, cases[i].rc, cases[i].word, NULL);
    fx_free(&f);
}

TEST(pickle_bin_refused)
{
    ASSERT_EQ(stw_mkdirs(DIR_L "/pickle"), 0);
    ASSERT_EQ(stw_write_text(DIR_L "/pickle/adapter_config.json", CFG("")), 0);
    ASSERT_EQ(stw_write_bytes(DIR_L "/pickle/adapter_model.bin", "\x80\x02}q\x00.", 6), 0);
    core_config_t b = base();
    core_lora_t *l = NULL;
    core_err_t eb, *e = &eb;
    ASSERT_RC(core_lora_load(DIR_L "/pickle", &b, &l, e), RC_UNSUPPORTED, e);
    ASSERT(strstr(e->msg, "pickle .bin adapters are not supported; convert to safetensors"));
    ASSERT_RC(core_lora_load(DIR_L "/no_such_adapter", &b, &l, e), RC_NOT_FOUND, e);
    ASSERT(l == NULL);
}

TEST(from_parts_and_too_many_tensors)
{
    /* more tensors than the base has LoRA slots: refused before any binding */
    fx_t f = {0};
    for (int i = 0; i < 29; i++) {
        char k[64];
        snprintf(k, sizeof k, "t%d", i);
        fx_add(&f, k, "F32", 1, 1, i);
    }
    ASSERT_EQ(stw_mkdirs(DIR_L), 0);
    ASSERT_EQ(stw_write(DIR_L "/many.safetensors", f.t, f.n, NULL), 0);
    core_st_t *st;
    core_err_t eb, *e = &eb;
    ASSERT_RC(core_st_open_file(DIR_L "/many.safetensors", &st, e), RC_OK, e);
    core_config_t b = base();
    core_lora_t *l = NULL;
    ASSERT_RC(core_lora_from_parts(CFG(""), st, &b, &l, e), RC_MISMATCH, e);
    ASSERT(strstr(e->msg, "29 tensors") && l == NULL);
    ASSERT_STREQ(core_err_reason(e), "too_many_tensors");
    core_st_free(st);
    fx_free(&f);
}

/* The reader caps an adapter's file by the base: more tensors than the base has LoRA
 * weights is refused by the reader (before the table is built), with its reason. */
TEST(adapter_reader_caps)
{
    core_config_t b = base();
    core_st_params_t p = core_lora_st_params(&b);
    ASSERT_EQ(p.max_tensors, (size_t)2 * 2 * CORE_MOD__COUNT);
    ASSERT_EQ(p.max_header, (uint64_t)CORE_LORA_MAX_HEADER);
    fx_t f = {0};
    for (int i = 0; i < 29; i++) {
        char k[64];
        snprintf(k, sizeof k, "t%d", i);
        fx_add(&f, k, "F32", 1, 1, i);
    }
    const char *dir = fx_write("many_dir", CFG(""), &f);
    core_lora_t *l = NULL;
    core_err_t eb, *e = &eb;
    ASSERT_RC(core_lora_load(dir, &b, &l, e), RC_LIMIT, e);
    ASSERT_STREQ(core_err_reason(e), "too_many_tensors");
    ASSERT(l == NULL);
    fx_free(&f);
}

/* base_model_name_or_path: informational by default; checked by last path component
 * when the caller names the served base. */
TEST(base_model_name_check)
{
    fx_t f = {0};
    fx_qv(&f, 2);
    fx_write("base_name", CFG(""), &f); /* config says "tiny" */
    core_st_t *st = NULL;
    core_err_t eb, *e = &eb;
    ASSERT_RC(core_st_open_file(DIR_L "/base_name/adapter_model.safetensors", &st, e), RC_OK, e);
    core_config_t b = base();
    core_lora_t *l = NULL;
    core_lora_params_t p = core_lora_default_params();
    ASSERT(p.base_name == NULL);
    ASSERT_RC(core_lora_from_parts_ex(CFG(""), st, &b, &p, &l, e), RC_OK, e);
    core_lora_release(l);
    static const char *const same[] = {"tiny", "/models/TINY", "org/tiny/", ""};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        p.base_name = same[i];
        ASSERT_RC(core_lora_from_parts_ex(CFG(""), st, &b, &p, &l, e), RC_OK, e);
        core_lora_release(l);
    }
    p.base_name = "/models/other-model";
    ASSERT_RC(core_lora_from_parts_ex(CFG(""), st, &b, &p, &l, e), RC_MISMATCH, e);
    ASSERT_STREQ(core_err_reason(e), "base_model_mismatch");
    ASSERT(strstr(e->msg, "other-model") && l == NULL);
    p.base_name = "tinyx";
    ASSERT_RC(core_lora_from_parts_ex(CFG(""), st, &b, &p, &l, e), RC_MISMATCH, e);
    /* a config without the field, or with an empty one, has nothing to check */
    ASSERT_RC(core_lora_from_parts_ex("{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":16,"
                                      "\"target_modules\":[\"q_proj\",\"v_proj\"]}",
                                      st, &b, &p, &l, e),
              RC_OK, e);
    core_lora_release(l);
    ASSERT_RC(core_lora_from_parts_ex("{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":16,"
                                      "\"target_modules\":[\"q_proj\",\"v_proj\"],"
                                      "\"base_model_name_or_path\":7}",
                                      st, &b, &p, &l, e),
              RC_INVALID, e);
    ASSERT_STREQ(core_err_reason(e), "invalid_config");
    core_st_free(st);
    fx_free(&f);
}

/* ---- adapter sets and the "linear" mix ------------------------------------------ */

/* An adapter of rank r on the modules in mask (both layers), alpha, value seed offset. */
static core_lora_t *mk_lora(const char *name, unsigned mask, int r, int alpha, int off)
{
    fx_t f = {0};
    char cfg[256], tm[128] = "";
    fx_seed_off = off;
    for (int m = 0; m < CORE_MOD__COUNT; m++) {
        if (!(mask & (1u << m)))
            continue;
        fx_pair(&f, 0, m, r);
        fx_pair(&f, 1, m, r);
        snprintf(tm + strlen(tm), sizeof tm - strlen(tm), "%s\"%s\"", tm[0] ? "," : "",
                 modname[m]);
    }
    fx_seed_off = 0;
    snprintf(cfg, sizeof cfg,
             "{\"peft_type\":\"LORA\",\"r\":%d,\"lora_alpha\":%d,\"target_modules\":[%s]}", r,
             alpha, tm);
    core_lora_t *l = load_ok(name, cfg, &f);
    fx_free(&f);
    return l;
}

#define QV ((1u << CORE_MOD_Q) | (1u << CORE_MOD_V))

TEST(aset_new_refuses_bad_input)
{
    core_lora_t *a = mk_lora("set_a", QV, 2, 4, 0);
    core_lora_term_t t[CORE_ASET_MAX + 1];
    for (int i = 0; i <= CORE_ASET_MAX; i++)
        t[i] = (core_lora_term_t){a, 1.0f};
    core_aset_t *s = (core_aset_t *)1; /* must come back NULL */
    core_lora_t *mx = (core_lora_t *)1;
    core_err_t e;
    ASSERT_RC(core_aset_new(t, 0, &s, &e), RC_INVALID, &e);
    ASSERT(s == NULL && strstr(e.msg, "0 terms"));
    ASSERT_RC(core_aset_new(t, CORE_ASET_MAX + 1, &s, &e), RC_INVALID, &e);
    ASSERT(strstr(e.msg, "9 terms"));
    ASSERT_RC(core_aset_new(NULL, 1, &s, &e), RC_INVALID, &e);
    t[1].weight = NAN;
    ASSERT_RC(core_aset_new(t, 2, &s, &e), RC_INVALID, &e);
    ASSERT(strstr(e.msg, "term 1") && strstr(e.msg, "finite"));
    t[1].weight = INFINITY;
    ASSERT_RC(core_aset_new(t, 2, &s, &e), RC_INVALID, &e);
    t[1] = (core_lora_term_t){NULL, 1.0f};
    ASSERT_RC(core_aset_new(t, 3, &s, &e), RC_INVALID, &e);
    ASSERT(strstr(e.msg, "term 1"));
    ASSERT_RC(core_lora_mix_linear(t, 3, &mx, &e), RC_INVALID, &e);
    ASSERT(mx == NULL);
    /* an adapter of another layer count */
    core_lora_t three = *a;
    three.n_layers = 3;
    t[1] = (core_lora_term_t){&three, 1.0f};
    ASSERT_RC(core_aset_new(t, 2, &s, &e), RC_INVALID, &e);
    ASSERT(strstr(e.msg, "3 layers") && s == NULL);
    ASSERT_EQ(a->refcount, 1); /* nothing retained on failure */
    t[1] = t[0];
    ASSERT_RC(core_aset_new(t, CORE_ASET_MAX, &s, &e), RC_OK, &e);
    ASSERT_EQ(s->n, CORE_ASET_MAX);
    ASSERT_EQ(s->rank_sum, 2 * CORE_ASET_MAX);
    ASSERT_EQ(a->refcount, 1 + CORE_ASET_MAX);
    core_aset_release(s);
    ASSERT_EQ(a->refcount, 1);
    core_lora_release(a);
}

TEST(aset_refcounts_and_equality)
{
    core_lora_t *a = mk_lora("rc_a", QV, 2, 4, 0), *b = mk_lora("rc_b", QV, 4, 4, 1);
    core_lora_term_t t1[3] = {{a, 0.5f}, {b, -1.0f}, {a, 2.0f}}, t2[1] = {{a, 1.0f}};
    core_aset_t *s1, *s2, *s1b, *s_swap;
    core_err_t e;
    ASSERT_RC(core_aset_new(t1, 3, &s1, &e), RC_OK, &e);
    ASSERT_RC(core_aset_new(t1, 3, &s1b, &e), RC_OK, &e);
    ASSERT_RC(core_aset_new(t2, 1, &s2, &e), RC_OK, &e);
    core_lora_term_t sw[3] = {t1[1], t1[0], t1[2]};
    ASSERT_RC(core_aset_new(sw, 3, &s_swap, &e), RC_OK, &e);
    ASSERT(s1->refcount == 1 && s1->rank_sum == 8 && s2->rank_sum == 2);
    ASSERT_EQ(a->refcount, 1 + 2 + 2 + 1 + 2);
    ASSERT_EQ(b->refcount, 1 + 1 + 1 + 1);
    /* equal: same LoRAs, weights and order; NULL equals only NULL */
    ASSERT(core_aset_equal(s1, s1b) && core_aset_equal(s1, s1) && core_aset_equal(NULL, NULL));
    ASSERT(!core_aset_equal(s1, s_swap) && !core_aset_equal(s1, s2));
    ASSERT(!core_aset_equal(s1, NULL) && !core_aset_equal(NULL, s2));
    s1b->terms[2].weight = 2.5f; /* one weight differs */
    ASSERT(!core_aset_equal(s1, s1b));
    core_aset_release(s1b);
    core_aset_release(s_swap);
    ASSERT_EQ(a->refcount, 1 + 2 + 1);
    /* retain/release balance on a set leaves its LoRAs alone */
    core_aset_retain(s1);
    ASSERT_EQ(s1->refcount, 2);
    core_aset_release(s1);
    ASSERT_EQ(s1->refcount, 1);
    ASSERT_EQ(a->refcount, 4);
    /* the creators let go: the sets keep the LoRAs alive (ASan would flag a free) */
    core_lora_release(a);
    core_lora_release(b);
    ASSERT(a->refcount == 3 && b->refcount == 1);
    ASSERT(core_lora_mod(b, 1, CORE_MOD_V)->A[0] == fx_val(0, 10 + CORE_MOD_V + 1));
    core_aset_release(s1); /* frees b; a lives on in s2 */
    ASSERT_EQ(a->refcount, 1);
    ASSERT(core_lora_mod(a, 0, CORE_MOD_Q)->A[1] == fx_val(1, CORE_MOD_Q));
    core_aset_release(s2); /* frees a: LeakSanitizer checks nothing is left */
}

/* sum_j M[o][j] N[j][i] for an (n_out, r) by (r, n_in) product, in double. */
static double prod_at(const float *B, const float *A, int r, int n_in, int o, int i, double cb,
                      double ca)
{
    double d = 0;
    for (int j = 0; j < r; j++)
        d += cb * B[o * r + j] * ca * A[j * n_in + i];
    return d;
}

TEST(mix_linear_matches_formula)
{
    /* a, b on q and v; c on q and o: o is mixed from c alone */
    core_lora_t *a = mk_lora("mix_a", QV, 2, 16, 0), *b = mk_lora("mix_b", QV, 2, 4, 3);
    core_lora_t *c = mk_lora("mix_c", (1u << CORE_MOD_Q) | (1u << CORE_MOD_O), 2, 8, 7);
    core_lora_term_t t[3] = {{a, 0.7f}, {b, -0.4f}, {c, 1.3f}};
    core_lora_t *mx = NULL;
    core_err_t e;
    ASSERT_RC(core_lora_mix_linear(t, 3, &mx, &e), RC_OK, &e);
    ASSERT(mx->refcount == 1 && mx->rank == 2 && mx->alpha == 2.0f && !mx->rslora);
    ASSERT_EQ(mx->target_mask, QV | (1u << CORE_MOD_O));
    ASSERT_EQ(mx->n_bytes, 2 * 2 * ((8 + 8) + (8 + 4) + (8 + 8)) * sizeof(float));
    double cat_vs_mix = 0;
    for (int layer = 0; layer < 2; layer++)
        for (int m = 0; m < CORE_MOD__COUNT; m++) {
            const core_lora_mod_t *o = core_lora_mod(mx, layer, (core_mod_t)m);
            if (!(mx->target_mask & (1u << m))) {
                ASSERT(o->A == NULL);
                continue;
            }
            ASSERT(o->A && o->B && o->r == 2 && o->scale == 1.0f);
            ASSERT(o->n_out == shape_out[m] && o->n_in == shape_in[m]);
            size_t na = 2 * (size_t)shape_in[m], nb = (size_t)shape_out[m] * 2;
            for (size_t j = 0; j < na + nb; j++) {
                double want = 0;
                for (int k = 0; k < 3; k++) {
                    const core_lora_mod_t *md = core_lora_mod(t[k].lora, layer, (core_mod_t)m);
                    if (!md->A)
                        continue;
                    double ws = (double)t[k].weight * md->scale, c_ = sqrt(fabs(ws));
                    want += j < na ? (ws < 0 ? -c_ : c_) * md->A[j] : c_ * md->B[j - na];
                }
                ASSERT_NEAR(j < na ? o->A[j] : o->B[j - na], want, 1e-5);
            }
            /* B_mix A_mix has cross terms: not sum_k w_k s_k B_k A_k ("cat") */
            for (int oo = 0; oo < shape_out[m]; oo++)
                for (int i = 0; i < shape_in[m]; i++) {
                    double cat = 0;
                    for (int k = 0; k < 3; k++) {
                        const core_lora_mod_t *md = core_lora_mod(t[k].lora, layer, (core_mod_t)m);
                        if (md->A)
                            cat += prod_at(md->B, md->A, 2, shape_in[m], oo, i,
                                           (double)t[k].weight * md->scale, 1.0);
                    }
                    double mix = prod_at(o->B, o->A, 2, shape_in[m], oo, i, 1.0, 1.0);
                    cat_vs_mix = fmax(cat_vs_mix, fabs(cat - mix));
                }
        }
    ASSERT(cat_vs_mix > 0.1);
    /* one term alone at positive weight is exact: sqrt(ws) sqrt(ws) = ws */
    core_lora_t *one = NULL;
    ASSERT_RC(core_lora_mix_linear(&t[0], 1, &one, &e), RC_OK, &e);
    const core_lora_mod_t *q1 = core_lora_mod(one, 1, CORE_MOD_Q), *qa = core_lora_mod(a, 1, CORE_MOD_Q);
    ASSERT_NEAR(prod_at(q1->B, q1->A, 2, 8, 3, 5, 1, 1),
                prod_at(qa->B, qa->A, 2, 8, 3, 5, 0.7 * qa->scale, 1), 1e-5);
    core_lora_release(one);
    core_lora_release(mx);
    ASSERT(a->refcount == 1 && b->refcount == 1 && c->refcount == 1); /* the mix holds none */
    core_lora_release(a);
    core_lora_release(b);
    core_lora_release(c);
}

TEST(mix_linear_refuses_mixed_ranks)
{
    core_lora_t *a = mk_lora("mr_a", QV, 2, 4, 0), *b = mk_lora("mr_b", 1u << CORE_MOD_V, 4, 4, 1);
    core_lora_t *o4 = mk_lora("mr_o", 1u << CORE_MOD_O, 4, 4, 2);
    core_lora_term_t t[2] = {{a, 1.0f}, {b, 1.0f}};
    core_lora_t *mx = NULL;
    core_err_t e;
    ASSERT_RC(core_lora_mix_linear(t, 2, &mx, &e), RC_INVALID, &e);
    ASSERT(mx == NULL && strstr(e.msg, "model.layers.0.self_attn.v_proj") && strstr(e.msg, "rank"));
    /* different ranks in modules no two terms share are fine */
    t[1].lora = o4;
    ASSERT_RC(core_lora_mix_linear(t, 2, &mx, &e), RC_OK, &e);
    ASSERT(core_lora_mod(mx, 0, CORE_MOD_V)->r == 2 && core_lora_mod(mx, 1, CORE_MOD_O)->r == 4);
    core_lora_release(mx);
    core_lora_release(a);
    core_lora_release(b);
    core_lora_release(o4);
}
