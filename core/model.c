/* model.c - Llama-family config parsing, weight loading and the model fingerprint.
 *
 * The forward pass and KV cache live in core/forward.c. Everything read here comes from
 * files the operator (or an uploader) supplied, so every JSON field and tensor is checked
 * and errors name the field or tensor. Threads: load on any one thread; the loaded model
 * is immutable. Ownership: core_model_load allocates all weights in one arena owned by a
 * private wrapper around core_model_t; core_model_free only takes models it created. */
#include "core/model.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/safetensors.h"
#include "core/sha256.h"

/* Caps on config sizes: far above any real model, low enough that products stay in
 * range and a hostile config cannot ask for absurd allocations up front. */
#define CAP_DIM (1 << 16)
#define CAP_HIDDEN (1 << 18)
#define CAP_LAYERS 512
#define CAP_VOCAB (1 << 20)
#define CAP_HEADS 1024
#define CAP_HEAD_DIM 1024
#define CAP_MAX_POS (1 << 24)
#define CAP_JSON_BYTES (4u << 20)

static const char *const mod_names[CORE_MOD__COUNT] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
};

const char *core_mod_name(core_mod_t m)
{
    return (unsigned)m < CORE_MOD__COUNT ? mod_names[m] : "?";
}

const char *core_mod_parent(core_mod_t m)
{
    if ((unsigned)m >= CORE_MOD__COUNT)
        return "?";
    return m <= CORE_MOD_O ? "self_attn" : "mlp";
}

void core_mod_shape(const core_config_t *cfg, core_mod_t m, int *n_out, int *n_in)
{
    int q = cfg->n_heads * cfg->head_dim, kv = cfg->n_kv_heads * cfg->head_dim;
    int o = 0, i = 0;
    switch (m) {
    case CORE_MOD_Q:
        o = q, i = cfg->dim;
        break;
    case CORE_MOD_K:
    case CORE_MOD_V:
        o = kv, i = cfg->dim;
        break;
    case CORE_MOD_O:
        o = cfg->dim, i = q;
        break;
    case CORE_MOD_GATE:
    case CORE_MOD_UP:
        o = cfg->hidden_dim, i = cfg->dim;
        break;
    case CORE_MOD_DOWN:
        o = cfg->dim, i = cfg->hidden_dim;
        break;
    default:
        break;
    }
    *n_out = o;
    *n_in = i;
}

/* ---- config.json ---------------------------------------------------------------- */

/* Llama with attention_bias=true also has an o_proj bias; Qwen2 has q/k/v bias only. */
static bool cfg_o_bias(const core_config_t *c)
{
    return c->qkv_bias && strcmp(c->arch, "Qwen2ForCausalLM") != 0;
}

/* Optional (absent or null -> def) or required integer in [lo, hi]. Values above hi are
 * RC_LIMIT (absurd size), anything else malformed is RC_FORMAT. */
static rc_t get_int(const json_t *o, const char *key, bool required, long long def, long long lo,
                    long long hi, int *out, core_err_t *err)
{
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required)
            return core_err(err, RC_FORMAT, "config: missing field '%s'", key);
        *out = (int)def;
        return RC_OK;
    }
    if (!json_is_integer(v))
        return core_err(err, RC_FORMAT, "config: field '%s' must be an integer", key);
    long long x = json_integer_value(v);
    if (x > hi)
        return core_err(err, RC_LIMIT, "config: field '%s' = %lld exceeds the limit %lld", key, x,
                        hi);
    if (x < lo)
        return core_err(err, RC_FORMAT, "config: field '%s' = %lld is below %lld", key, x, lo);
    *out = (int)x;
    return RC_OK;
}

/* Optional or required finite number in (lo, hi]. */
static rc_t get_num(const json_t *o, const char *key, bool required, double def, double lo,
                    double hi, float *out, core_err_t *err)
{
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required)
            return core_err(err, RC_FORMAT, "config: missing field '%s'", key);
        *out = (float)def;
        return RC_OK;
    }
    if (!json_is_number(v))
        return core_err(err, RC_FORMAT, "config: field '%s' must be a number", key);
    double x = json_number_value(v);
    if (!isfinite(x) || !(x > lo) || !(x <= hi))
        return core_err(err, RC_FORMAT, "config: field '%s' = %g is out of range (%g, %g]", key, x,
                        lo, hi);
    *out = (float)x;
    return RC_OK;
}

static rc_t get_bool(const json_t *o, const char *key, bool def, bool *out, core_err_t *err)
{
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return RC_OK;
    }
    if (!json_is_boolean(v))
        return core_err(err, RC_FORMAT, "config: field '%s' must be true or false", key);
    *out = json_is_true(v);
    return RC_OK;
}

/* Optional string; NULL when absent or null. */
static rc_t get_str(const json_t *o, const char *key, const char **out, core_err_t *err)
{
    const json_t *v = json_object_get(o, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return RC_OK;
    if (!json_is_string(v))
        return core_err(err, RC_FORMAT, "config: field '%s' must be a string", key);
    *out = json_string_value(v);
    return RC_OK;
}

static rc_t parse_arch(const json_t *root, core_config_t *c, core_err_t *err)
{
    static const char *const archs[][2] = {
        {"LlamaForCausalLM", "llama"},
        {"MistralForCausalLM", "mistral"},
        {"Qwen2ForCausalLM", "qwen2"},
    };
    const json_t *a = json_object_get(root, "architectures");
    if (!a)
        return core_err(err, RC_FORMAT, "config: missing field 'architectures'");
    if (!json_is_array(a) || json_array_size(a) == 0 || !json_is_string(json_array_get(a, 0)))
        return core_err(err, RC_FORMAT,
                        "config: field 'architectures' must be a non-empty list of strings");
    const char *arch = json_string_value(json_array_get(a, 0));
    size_t i;
    for (i = 0; i < sizeof archs / sizeof archs[0]; i++)
        if (strcmp(arch, archs[i][0]) == 0)
            break;
    if (i == sizeof archs / sizeof archs[0])
        return core_err(err, RC_UNSUPPORTED,
                        "config: architectures[0] '%.64s' is not supported (LlamaForCausalLM, "
                        "MistralForCausalLM, Qwen2ForCausalLM)",
                        arch);
    snprintf(c->arch, sizeof c->arch, "%s", archs[i][0]);
    const char *mt;
    rc_t rc = get_str(root, "model_type", &mt, err);
    if (rc)
        return rc;
    if (mt && strlen(mt) >= sizeof c->model_type)
        return core_err(err, RC_FORMAT, "config: field 'model_type' is too long");
    snprintf(c->model_type, sizeof c->model_type, "%s", mt ? mt : archs[i][1]);
    return RC_OK;
}

static rc_t parse_sizes(const json_t *root, core_config_t *c, core_err_t *err)
{
    rc_t rc;
    if ((rc = get_int(root, "vocab_size", true, 0, 1, CAP_VOCAB, &c->n_vocab, err)) ||
        (rc = get_int(root, "hidden_size", true, 0, 1, CAP_DIM, &c->dim, err)) ||
        (rc = get_int(root, "intermediate_size", true, 0, 1, CAP_HIDDEN, &c->hidden_dim, err)) ||
        (rc = get_int(root, "num_hidden_layers", true, 0, 1, CAP_LAYERS, &c->n_layers, err)) ||
        (rc = get_int(root, "num_attention_heads", true, 0, 1, CAP_HEADS, &c->n_heads, err)) ||
        (rc = get_int(root, "num_key_value_heads", false, c->n_heads, 1, c->n_heads, &c->n_kv_heads,
                      err)))
        return rc;
    if (c->n_heads % c->n_kv_heads != 0)
        return core_err(err, RC_FORMAT,
                        "config: num_attention_heads %d is not a multiple of "
                        "num_key_value_heads %d",
                        c->n_heads, c->n_kv_heads);
    const json_t *hd = json_object_get(root, "head_dim");
    if ((!hd || json_is_null(hd)) && c->dim % c->n_heads != 0)
        return core_err(err, RC_FORMAT,
                        "config: hidden_size %d is not a multiple of num_attention_heads %d "
                        "and no head_dim is given",
                        c->dim, c->n_heads);
    if ((rc = get_int(root, "head_dim", false, c->dim / c->n_heads, 2, CAP_HEAD_DIM, &c->head_dim,
                      err)))
        return rc;
    /* RoPE rotates the two halves of each head against each other. */
    if (c->head_dim % 2 != 0)
        return core_err(err, RC_FORMAT, "config: field 'head_dim' = %d must be even", c->head_dim);
    return get_int(root, "max_position_embeddings", false, 2048, 1, CAP_MAX_POS, &c->max_pos, err);
}

static rc_t parse_rope_scaling(const json_t *root, core_config_t *c, core_err_t *err)
{
    const json_t *rs = json_object_get(root, "rope_scaling");
    c->rope_scaling = 0;
    c->rope_factor = 1.0f;
    c->rope_low_freq_factor = c->rope_high_freq_factor = 0.0f;
    c->rope_orig_max_pos = 0;
    if (!rs || json_is_null(rs))
        return RC_OK;
    if (!json_is_object(rs))
        return core_err(err, RC_FORMAT, "config: field 'rope_scaling' must be an object or null");
    const char *type, *rtype;
    rc_t rc = get_str(rs, "rope_type", &rtype, err);
    if (rc || (rc = get_str(rs, "type", &type, err)))
        return rc;
    if (rtype)
        type = rtype;
    if (!type)
        return core_err(err, RC_FORMAT, "config: rope_scaling has no 'rope_type' or 'type'");
    if (strcmp(type, "default") == 0)
        return RC_OK;
    if (strcmp(type, "linear") == 0) {
        c->rope_scaling = 1;
        return get_num(rs, "factor", true, 1, 0, 1e6, &c->rope_factor, err);
    }
    if (strcmp(type, "llama3") != 0)
        return core_err(err, RC_UNSUPPORTED,
                        "config: rope_scaling type '%.32s' is not supported (linear, llama3)",
                        type);
    c->rope_scaling = 2;
    if ((rc = get_num(rs, "factor", true, 1, 0, 1e6, &c->rope_factor, err)) ||
        (rc = get_num(rs, "low_freq_factor", true, 1, 0, 1e6, &c->rope_low_freq_factor, err)) ||
        (rc = get_num(rs, "high_freq_factor", true, 1, 0, 1e6, &c->rope_high_freq_factor, err)) ||
        (rc = get_int(rs, "original_max_position_embeddings", true, 0, 1, CAP_MAX_POS,
                      &c->rope_orig_max_pos, err)))
        return rc;
    /* The smoothing divides by (high - low). */
    if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
        return core_err(err, RC_FORMAT,
                        "config: rope_scaling high_freq_factor must exceed low_freq_factor");
    return RC_OK;
}

/* bos/eos ids: an int, a list of ints, or null; each in [0, n_vocab). Shared with
 * generation_config.json, which overrides when it has the field. */
static rc_t parse_ids(const json_t *o, const char *key, int n_vocab, int *ids, int cap, int *n,
                      core_err_t *err)
{
    const json_t *v = json_object_get(o, key);
    if (!v)
        return RC_OK;
    *n = 0;
    if (json_is_null(v))
        return RC_OK;
    size_t len = json_is_array(v) ? json_array_size(v) : 1;
    if (!json_is_array(v) && !json_is_integer(v))
        return core_err(err, RC_FORMAT, "config: field '%s' must be an integer or a list", key);
    if (len > (size_t)cap) {
        if (cap == 1) /* bos: the first of a list is the one a tokenizer would prepend */
            len = 1;
        else
            return core_err(err, RC_LIMIT, "config: field '%s' has more than %d ids", key, cap);
    }
    for (size_t i = 0; i < len; i++) {
        const json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_integer(e))
            return core_err(err, RC_FORMAT, "config: field '%s' must hold integers", key);
        json_int_t id = json_integer_value(e);
        if (id < 0 || id >= n_vocab)
            return core_err(err, RC_FORMAT, "config: field '%s': id %lld is outside the vocab", key,
                            (long long)id);
        ids[(*n)++] = (int)id;
    }
    return RC_OK;
}

static rc_t parse_special(const json_t *root, core_config_t *c, core_err_t *err)
{
    int n_bos = c->bos_id >= 0, bos = c->bos_id;
    rc_t rc = parse_ids(root, "bos_token_id", c->n_vocab, &bos, 1, &n_bos, err);
    if (rc || (rc = parse_ids(root, "eos_token_id", c->n_vocab, c->eos_ids, CORE_MAX_EOS, &c->n_eos,
                              err)))
        return rc;
    c->bos_id = n_bos ? bos : -1;
    return RC_OK;
}

/* Options that would change the math in ways we do not implement are refused; a sliding
 * window is honoured by never letting a sequence grow past it. */
static rc_t parse_variants(const json_t *root, core_config_t *c, core_err_t *err)
{
    const char *act;
    bool mlp_bias = false, attn_bias = false, use_sw = false;
    rc_t rc = get_str(root, "hidden_act", &act, err);
    if (rc)
        return rc;
    if (act && strcmp(act, "silu") != 0)
        return core_err(err, RC_UNSUPPORTED, "config: hidden_act '%.32s' is not supported (silu)",
                        act);
    if ((rc = get_bool(root, "mlp_bias", false, &mlp_bias, err)) ||
        (rc = get_bool(root, "attention_bias", false, &attn_bias, err)) ||
        (rc = get_bool(root, "tie_word_embeddings", false, &c->tie_embeddings, err)))
        return rc;
    if (mlp_bias)
        return core_err(err, RC_UNSUPPORTED, "config: field 'mlp_bias' = true is not supported");
    bool qwen = strcmp(c->arch, "Qwen2ForCausalLM") == 0;
    c->qkv_bias = qwen || (strcmp(c->arch, "LlamaForCausalLM") == 0 && attn_bias);
    if (qwen && (rc = get_bool(root, "use_sliding_window", false, &use_sw, err)))
        return rc;
    if (strcmp(c->arch, "MistralForCausalLM") == 0 || use_sw) {
        int sw;
        if ((rc = get_int(root, "sliding_window", false, CAP_MAX_POS, 1, CAP_MAX_POS, &sw, err)))
            return rc;
        if (sw < c->max_pos)
            c->max_pos = sw;
    }
    return RC_OK;
}

rc_t core_config_parse(const char *json_text, core_config_t *out, core_err_t *err)
{
    json_error_t jerr;
    core_config_t c;
    rc_t rc;
    if (!json_text || !out)
        return core_err(err, RC_INVALID, "config: no text");
    memset(&c, 0, sizeof c);
    c.bos_id = -1;
    json_t *root = json_loads(json_text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return core_err(err, RC_FORMAT, "config: invalid JSON at line %d: %s", jerr.line,
                        jerr.text);
    if (!json_is_object(root)) {
        rc = core_err(err, RC_FORMAT, "config: not a JSON object");
        goto out;
    }
    if ((rc = parse_arch(root, &c, err)) || (rc = parse_sizes(root, &c, err)) ||
        (rc = get_num(root, "rms_norm_eps", false, 1e-6, 0, 1, &c.norm_eps, err)) ||
        (rc = get_num(root, "rope_theta", false, 10000, 0, 1e12, &c.rope_theta, err)) ||
        (rc = parse_rope_scaling(root, &c, err)) || (rc = parse_variants(root, &c, err)) ||
        (rc = parse_special(root, &c, err)))
        goto out;
    *out = c;
out:
    json_decref(root);
    return rc;
}

/* ---- loading -------------------------------------------------------------------- */

typedef struct {
    core_model_t pub; /* first: core_model_free casts back */
    float *arena;
} model_owned_t;

/* Read a whole small file. RC_NOT_FOUND when it does not exist. OUT: *text (malloc). */
static rc_t read_text(const char *path, char **text, core_err_t *err)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    rc_t rc = RC_OK;
    struct stat st;
    *text = NULL;
    if (!f)
        return core_err(err, errno == ENOENT ? RC_NOT_FOUND : RC_IO, "%s: %s", path,
                        strerror(errno));
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = core_err(err, RC_IO, "%s: not a regular file", path);
        goto out;
    }
    if ((unsigned long long)st.st_size > CAP_JSON_BYTES) {
        rc = core_err(err, RC_LIMIT, "%s: larger than %u bytes", path, CAP_JSON_BYTES);
        goto out;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        rc = core_err(err, RC_NOMEM, "%s: out of memory", path);
        goto out;
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    if (n != (size_t)st.st_size) {
        rc = core_err(err, RC_IO, "%s: short read", path);
        goto out;
    }
    buf[n] = '\0';
    *text = buf;
    buf = NULL;
out:
    free(buf);
    fclose(f);
    return rc;
}

/* generation_config.json overrides bos/eos when present. */
static rc_t load_generation_config(const char *dir, core_config_t *c, core_err_t *err)
{
    char path[4096], *text = NULL;
    json_t *root = NULL;
    json_error_t jerr;
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    rc_t rc = read_text(path, &text, err);
    if (rc == RC_NOT_FOUND)
        return RC_OK;
    if (rc)
        return rc;
    root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root || !json_is_object(root)) {
        rc = core_err(err, RC_FORMAT, "%s: invalid JSON object (line %d: %s)", path,
                      root ? 0 : jerr.line, root ? "" : jerr.text);
        goto out;
    }
    if ((rc = parse_special(root, c, err))) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
        core_err(err, rc, "generation_config.json: %s", msg);
    }
out:
    json_decref(root);
    free(text);
    return rc;
}

/* One expected tensor: name, shape and where its f32 copy goes. */
typedef struct {
    char name[80];
    int n_dims;
    int64_t shape[2];
    float **dst;
} want_t;

static void want_add(want_t *w, size_t *n, float **dst, int64_t d0, int64_t d1, const char *fmt,
                     ...) __attribute__((format(printf, 6, 7)));
static void want_add(want_t *w, size_t *n, float **dst, int64_t d0, int64_t d1, const char *fmt,
                     ...)
{
    want_t *e = &w[(*n)++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->name, sizeof e->name, fmt, ap);
    va_end(ap);
    e->n_dims = d1 ? 2 : 1;
    e->shape[0] = d0;
    e->shape[1] = d1;
    e->dst = dst;
}

/* The full tensor list of a model of this config, pointing into m's fields. */
static size_t want_list(core_model_t *m, want_t *w)
{
    const core_config_t *c = &m->cfg;
    size_t n = 0;
    want_add(w, &n, &m->embed, c->n_vocab, c->dim, "model.embed_tokens.weight");
    for (int l = 0; l < c->n_layers; l++) {
        core_layer_t *L = &m->layers[l];
        want_add(w, &n, &L->attn_norm, c->dim, 0, "model.layers.%d.%s.weight", l,
                 "input_layernorm");
        for (int k = 0; k < CORE_MOD__COUNT; k++) {
            char mid[64];
            int n_out, n_in;
            core_mod_shape(c, (core_mod_t)k, &n_out, &n_in);
            L->lin[k].n_out = n_out;
            L->lin[k].n_in = n_in;
            snprintf(mid, sizeof mid, "%s.%s", core_mod_parent((core_mod_t)k),
                     core_mod_name((core_mod_t)k));
            want_add(w, &n, &L->lin[k].w, n_out, n_in, "model.layers.%d.%s.weight", l, mid);
            if ((k <= CORE_MOD_V && c->qkv_bias) || (k == CORE_MOD_O && cfg_o_bias(c)))
                want_add(w, &n, &L->lin[k].b, n_out, 0, "model.layers.%d.%s.bias", l, mid);
        }
        want_add(w, &n, &L->mlp_norm, c->dim, 0, "model.layers.%d.%s.weight", l,
                 "post_attention_layernorm");
    }
    want_add(w, &n, &m->final_norm, c->dim, 0, "model.norm.weight");
    if (!c->tie_embeddings)
        want_add(w, &n, &m->lm_head, c->n_vocab, c->dim, "lm_head.weight");
    return n;
}

static size_t want_elems(const want_t *w)
{
    return (size_t)w->shape[0] * (size_t)(w->n_dims == 2 ? w->shape[1] : 1);
}

static int want_cmp(const void *a, const void *b)
{
    return strcmp(((const want_t *)a)->name, ((const want_t *)b)->name);
}

static void shape_str(char *buf, size_t len, int n_dims, const int64_t *shape)
{
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < n_dims && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

/* Find, shape-check, convert and finite-check one tensor into dst. */
static rc_t load_tensor(const core_st_t *st, const want_t *w, float *dst, core_err_t *err)
{
    const core_st_tensor_t *t = core_st_find(st, w->name);
    char want_s[64], got_s[160];
    if (!t)
        return core_err(err, RC_FORMAT, "tensor '%s' is missing", w->name);
    bool same = t->n_dims == w->n_dims;
    for (int i = 0; same && i < w->n_dims; i++)
        same = t->shape[i] == w->shape[i];
    if (!same) {
        shape_str(want_s, sizeof want_s, w->n_dims, w->shape);
        shape_str(got_s, sizeof got_s, t->n_dims, t->shape);
        return core_err(err, RC_FORMAT, "tensor '%s': expected shape %s, got %s", w->name, want_s,
                        got_s);
    }
    if (t->dtype == CORE_DTYPE_OTHER)
        return core_err(err, RC_UNSUPPORTED,
                        "tensor '%s': dtype %s is not supported "
                        "(F32, F16, BF16)",
                        w->name, t->dtype_name);
    rc_t rc = core_st_to_f32(t, dst, err);
    core_st_release(t); /* the f32 copy is what we keep: let the file pages go */
    if (rc)
        return rc;
    size_t n = want_elems(w);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(dst[i]))
            return core_err(err, RC_FORMAT, "tensor '%s': non-finite value at index %zu", w->name,
                            i);
    return RC_OK;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Every tensor in the files must be one we expect: an extra one means an architecture
 * variant we would silently compute wrong. Rotary inv_freq buffers are derived data. */
static rc_t check_unexpected(const core_st_t *st, const want_t *w, size_t n_want, bool tied,
                             core_err_t *err)
{
    want_t key;
    for (size_t i = 0; i < core_st_count(st); i++) {
        const char *name = core_st_at(st, i)->name;
        if (ends_with(name, "rotary_emb.inv_freq"))
            continue;
        /* A tied checkpoint may still carry lm_head.weight; transformers overwrites it
         * with the embeddings, so it is ignored here too. */
        if (tied && strcmp(name, "lm_head.weight") == 0)
            continue;
        size_t len = strlen(name);
        bool known = len < sizeof key.name;
        if (known) {
            memcpy(key.name, name, len + 1);
            known = bsearch(&key, w, n_want, sizeof *w, want_cmp) != NULL;
        }
        if (!known)
            return core_err(err, RC_UNSUPPORTED, "tensor '%.200s' is not part of a %s model", name,
                            "Llama-family");
    }
    return RC_OK;
}

/* sha256 over a canonical text of the config and the sorted tensor names and shapes:
 * equal fingerprints mean an adapter trained on one fits the other. */
static void fingerprint(core_model_t *m, const want_t *w, size_t n_want)
{
    const core_config_t *c = &m->cfg;
    char buf[1024];
    core_sha256_t h;
    uint8_t digest[32];
    core_sha256_init(&h);
    int len =
        snprintf(buf, sizeof buf,
                 "adapterd-model-v1\narch=%s\nmodel_type=%s\nvocab=%d\ndim=%d\n"
                 "hidden=%d\nlayers=%d\nheads=%d\nkv_heads=%d\nhead_dim=%d\nmax_pos=%d\n"
                 "norm_eps=%.9g\nrope_theta=%.9g\nrope_scaling=%d\nrope_factor=%.9g\n"
                 "rope_low=%.9g\nrope_high=%.9g\nrope_orig=%d\ntied=%d\nqkv_bias=%d\n",
                 c->arch, c->model_type, c->n_vocab, c->dim, c->hidden_dim, c->n_layers, c->n_heads,
                 c->n_kv_heads, c->head_dim, c->max_pos, c->norm_eps, c->rope_theta,
                 c->rope_scaling, c->rope_factor, c->rope_low_freq_factor, c->rope_high_freq_factor,
                 c->rope_orig_max_pos, c->tie_embeddings, c->qkv_bias);
    core_sha256_update(&h, buf, (size_t)len);
    for (size_t i = 0; i < n_want; i++) {
        char shape[64];
        shape_str(shape, sizeof shape, w[i].n_dims, w[i].shape);
        len = snprintf(buf, sizeof buf, "%s %s\n", w[i].name, shape);
        core_sha256_update(&h, buf, (size_t)len);
    }
    core_sha256_final(&h, digest);
    core_sha256_hex(digest, m->fingerprint);
}

static void set_name(core_model_t *m, const char *dir)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && dir[b - 1] != '/')
        b--;
    if (n == b || (n - b == 1 && dir[b] == '.'))
        snprintf(m->name, sizeof m->name, "model");
    else
        snprintf(m->name, sizeof m->name, "%.*s", (int)(n - b), dir + b);
}

/* Allocate the arena and fill every expected tensor from st, reporting progress. */
static rc_t load_weights(model_owned_t *o, const core_st_t *st, const core_model_load_params_t *lp,
                         core_err_t *err)
{
    core_model_t *m = &o->pub;
    const core_config_t *c = &m->cfg;
    /* 3 norms/embeddings + lm_head, per layer 2 norms + 7 weights + up to 4 biases. */
    size_t cap = 4 + (size_t)c->n_layers * 13, n_want, total = 0;
    want_t *w = malloc(cap * sizeof *w);
    rc_t rc = RC_OK;
    if (!w)
        return core_err(err, RC_NOMEM, "model: out of memory");
    n_want = want_list(m, w);
    for (size_t i = 0; i < n_want; i++)
        total += (want_elems(&w[i]) + 15) & ~(size_t)15; /* 64-byte aligned starts */
    o->arena = aligned_alloc(64, total * sizeof(float));
    if (!o->arena) {
        rc = core_err(err, RC_NOMEM, "model: cannot allocate %zu MB of weights",
                      total * sizeof(float) >> 20);
        goto out;
    }
    size_t off = 0;
    for (size_t i = 0; i < n_want; i++) {
        *w[i].dst = o->arena + off;
        if ((rc = load_tensor(st, &w[i], o->arena + off, err)))
            goto out;
        off += (want_elems(&w[i]) + 15) & ~(size_t)15;
        if (lp && lp->progress)
            lp->progress(lp->user, off * sizeof(float), total * sizeof(float));
    }
    if (c->tie_embeddings)
        m->lm_head = m->embed;
    qsort(w, n_want, sizeof *w, want_cmp);
    if ((rc = check_unexpected(st, w, n_want, c->tie_embeddings, err)))
        goto out;
    fingerprint(m, w, n_want);
out:
    free(w);
    return rc;
}

rc_t core_model_load(const char *dir, core_model_t **out, core_err_t *err)
{
    return core_model_load_ex(dir, NULL, out, err);
}

rc_t core_model_load_ex(const char *dir, const core_model_load_params_t *lp, core_model_t **out,
                        core_err_t *err)
{
    char path[4096], *text = NULL;
    core_st_t *st = NULL;
    model_owned_t *o = NULL;
    rc_t rc;
    *out = NULL;
    if (strlen(dir) > 3000)
        return core_err(err, RC_INVALID, "model: path too long");
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((rc = read_text(path, &text, err)))
        goto out;
    o = calloc(1, sizeof *o);
    if (!o) {
        rc = core_err(err, RC_NOMEM, "model: out of memory");
        goto out;
    }
    if ((rc = core_config_parse(text, &o->pub.cfg, err)) ||
        (rc = load_generation_config(dir, &o->pub.cfg, err)))
        goto out;
    o->pub.layers = calloc((size_t)o->pub.cfg.n_layers, sizeof *o->pub.layers);
    if (!o->pub.layers) {
        rc = core_err(err, RC_NOMEM, "model: out of memory");
        goto out;
    }
    if ((rc = core_st_open_dir(dir, &st, err)) || (rc = load_weights(o, st, lp, err)))
        goto out;
    set_name(&o->pub, dir);
    *out = &o->pub;
    o = NULL;
out:
    if (st)
        core_st_free(st);
    core_model_free(o ? &o->pub : NULL);
    free(text);
    return rc;
}

void core_model_free(core_model_t *m)
{
    if (!m)
        return;
    model_owned_t *o = (model_owned_t *)m;
    free(o->arena);
    free(o->pub.layers);
    free(o);
}
