/* test_model_load.c - loading models from folders: round trips (F32/BF16, tied, Qwen2
 * biases, generation_config), fingerprints, and refusals naming the tensor. Folders go
 * under tests/tmp/model_<pid>/ and are removed when the test passes. */
#include <ftw.h>
#include <unistd.h>

#include "tests/unit/model_fixture.h"
#include "tests/unit/st_write.h"

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
