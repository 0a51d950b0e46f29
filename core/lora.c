/* lora.c - PEFT LoRA adapters: adapter_config.json + adapter_model.safetensors to engine
 * layout, validated against the base model.
 *
 * Both files are untrusted. The config is parsed with duplicate keys refused; unknown keys
 * are ignored (PEFT adds fields every release) but every field that changes the math and
 * that we do not implement is refused by name. The tensor keys are authoritative for
 * what is adapted (ADAPTER-MATH 1.2): each key must bind exactly one (layer, module, A|B)
 * slot of the base, target_modules / exclude_modules / layers_to_transform only
 * cross-check them (a key the config would not have created is refused, never dropped).
 * Ranks and alphas are resolved per module as PEFT's get_pattern_key does (1.4), with
 * POSIX extended regexes standing in for Python's re: patterns using Python-only syntax
 * fail to compile and are refused by name.
 *
 * Threads: load on any thread; the result is immutable and refcounted with atomics.
 * Ownership: A and B of every module live in one f32 arena owned by the adapter. */
#include "core/lora.h"

#include <jansson.h>
#include <math.h>
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "core/safetensors.h"

#define LORA_MAX_RANK 512 /* the largest max_lora_rank vLLM allows */
#define LORA_MAX_CONFIG (1u << 20) /* adapter_config.json is a few hundred bytes */
#define LORA_MAX_PATTERNS 4096
#define LORA_PREFIX "base_model.model."

/* The adapter plus its arena; core_lora_t is the public head. */
typedef struct {
    core_lora_t pub;
    float *arena;
    size_t arena_mapped; /* bytes when the arena is its own mapping, else 0 (malloc) */
} lora_priv_t;

/* A list of names or one regex, as target_modules / exclude_modules are written. */
typedef struct {
    enum { SEL_NONE, SEL_LIST, SEL_REGEX, SEL_ALL_LINEAR } kind;
    const json_t *list; /* borrowed from the config root */
    regex_t re;
} lora_sel_t;

/* rank_pattern / alpha_pattern: keys in JSON order, compiled as (.*\.)?(k)$. */
typedef struct {
    size_t n;
    const char **key; /* borrowed */
    double *value;
    regex_t *re;
} lora_pat_t;

typedef struct {
    int r;
    double alpha;
    bool rslora;
    lora_pat_t rank_pat, alpha_pat;
    lora_sel_t target, exclude;
    int *layers; /* layers_to_transform, n_layers_sel entries; NULL = all */
    size_t n_layers_sel;
    regex_t *layer_re; /* layers_pattern */
    size_t n_layer_re;
} lora_cfg_t;

/* ---- small JSON helpers ---------------------------------------------------------- */

static bool json_is_set(const json_t *v)
{
    return v && !json_is_null(v);
}

/* Refuses a non-bool (when present) and reports its truth. */
static rc_t get_bool(const json_t *root, const char *key, bool *out, core_err_t *err)
{
    const json_t *v = json_object_get(root, key);
    *out = false;
    if (!json_is_set(v))
        return RC_OK;
    if (!json_is_boolean(v))
        return core_err_r(err, RC_INVALID, "invalid_config", "adapter_config.json: %s must be true or false", key);
    *out = json_is_true(v);
    return RC_OK;
}

/* Python's re and POSIX ERE agree on the syntax PEFT configs use (. * + ? | () [] {} ^ $
 * and escaped punctuation), but glibc reads "\d" as a plain 'd', so a pattern would
 * silently stop matching. Escaped letters/digits and "(?" groups are refused instead. */
static bool re_portable(const char *pat)
{
    if (strstr(pat, "(?"))
        return false;
    for (const char *p = pat; *p; p++) {
        if (*p != '\\')
            continue;
        p++;
        if (!*p || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))
            return false;
    }
    return true;
}

/* A {n}, {n,} or {n,m} bound at p (just after '{'). OUT: *max (n when no m), *end (the
 * '}'). false when malformed. */
static bool re_brace(const char *p, long *max, const char **end)
{
    char *q = NULL;
    long lo = strtol(p, &q, 10), hi = lo;
    if (q == p || lo < 0)
        return false;
    if (*q == ',') {
        const char *r = q + 1;
        hi = *r == '}' ? 32 : strtol(r, &q, 10); /* "{n,}": count it as the cap */
        if (*r == '}')
            q = (char *)r;
    }
    if (*q != '}' || hi < lo)
        return false;
    *max = hi;
    *end = q;
    return true;
}

/* glibc's regcomp copies a subexpression once per repeat it sits under: stacked repeats
 * ("a++++") double the tree per operator, bounds multiply it, nesting compounds both, so a
 * 100-byte pattern can take gigabytes (found by fuzz_lora_config). PEFT patterns need none
 * of that, so the shape is capped: 256 bytes, no repeat right after a repeat, bounds at
 * most 32 and their product at most 256, groups nested at most 8 deep. */
static bool re_bounded(const char *pat)
{
    long product = 1;
    int depth = 0;
    bool prev_rep = false;
    if (strlen(pat) > 256)
        return false;
    for (const char *p = pat; *p; p++) {
        bool rep = *p == '*' || *p == '+' || *p == '?' || *p == '{';
        if (rep && prev_rep)
            return false;
        prev_rep = rep;
        if (*p == '\\' && p[1]) {
            p++;
        } else if (*p == '[') { /* a bracket expression: its ']' may come first */
            const char *q = strchr(p + (p[1] == ']' ? 2 : 1), ']');
            if (!q)
                return false;
            p = q;
        } else if (*p == '(' && ++depth > 8) {
            return false;
        } else if (*p == ')') {
            depth--;
        } else if (*p == '{') {
            long max = 0;
            if (!re_brace(p + 1, &max, &p) || max > 32 || (product *= max ? max : 1) > 256)
                return false;
        }
    }
    return true;
}

static rc_t re_compile(regex_t *re, const char *fmt, const char *pat, const char *field,
                       core_err_t *err)
{
    if (!re_bounded(pat))
        return core_err_r(err, RC_INVALID, "invalid_config",
                          "adapter_config.json: %s pattern '%.200s' is too complex (at most "
                          "256 bytes, no repeat after a repeat, {n,m} bounds up to 32, groups "
                          "nested 8 deep)",
                          field, pat);
    if (!re_portable(pat))
        return core_err_r(err, RC_INVALID, "invalid_config",
                        "adapter_config.json: %s pattern '%.200s' uses Python-only regex syntax "
                        "(escapes like \\d, or (?...) groups); write [0-9] or plain groups",
                        field, pat);
    size_t n = strlen(fmt) + strlen(pat) + 1;
    char *src = malloc(n);
    if (!src)
        return core_err(err, RC_NOMEM, "adapter_config.json: out of memory");
    snprintf(src, n, fmt, pat);
    int bad = regcomp(re, src, REG_EXTENDED | REG_NOSUB);
    free(src);
    if (bad)
        return core_err_r(err, RC_INVALID, "invalid_config",
                        "adapter_config.json: %s pattern '%.200s' is not a valid POSIX extended "
                        "regex",
                        field, pat);
    return RC_OK;
}

/* ---- config: scalars and refused features ----------------------------------------- */

static rc_t cfg_peft_type(const json_t *root, core_err_t *err)
{
    const json_t *v = json_object_get(root, "peft_type");
    if (!json_is_set(v))
        return core_err_r(err, RC_INVALID, "missing_field", "adapter_config.json: peft_type missing");
    if (!json_is_string(v))
        return core_err_r(err, RC_INVALID, "invalid_config",
                          "adapter_config.json: peft_type is not a string");
    if (strcmp(json_string_value(v), "LORA") != 0)
        return core_err_r(err, RC_UNSUPPORTED, "unknown_peft_type", "peft_type %.64s is not supported (only LORA)",
                        json_string_value(v));
    return RC_OK;
}

static rc_t cfg_rank_value(const json_t *v, const char *what, int *out, core_err_t *err)
{
    if (!json_is_integer(v) || json_integer_value(v) <= 0)
        return core_err_r(err, RC_INVALID, "invalid_rank", "adapter_config.json: %s must be a positive integer",
                        what);
    if (json_integer_value(v) > LORA_MAX_RANK)
        return core_err_r(err, RC_INVALID, "invalid_rank", "adapter_config.json: %s = %lld is greater than %d", what,
                        (long long)json_integer_value(v), LORA_MAX_RANK);
    *out = (int)json_integer_value(v);
    return RC_OK;
}

static rc_t cfg_alpha_value(const json_t *v, const char *what, double *out, core_err_t *err)
{
    /* checked in f32, the type the scale is used in: 1e300 would become inf, 1e-50 zero */
    float f = json_is_number(v) ? (float)json_number_value(v) : 0.0f;
    if (!isfinite(f) || !(f > 0))
        return core_err_r(err, RC_INVALID, "invalid_alpha", "adapter_config.json: %s must be a finite number > 0",
                        what);
    *out = json_number_value(v);
    return RC_OK;
}

/* Fields whose meaning we do not implement: refused by name, never silently ignored. */
static rc_t cfg_refused(const json_t *root, core_err_t *err)
{
    static const char *const flags[] = {"use_dora", "lora_bias", "use_bdlora"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        const json_t *v = json_object_get(root, flags[i]);
        if (json_is_set(v) && !json_is_false(v))
            return core_err_r(err, RC_UNSUPPORTED, "unsupported_feature", "adapter_config.json: %s is not supported",
                            flags[i]);
    }
    static const char *const objs[] = {
        "layer_replication", "alora_invocation_tokens", "trainable_token_indices",
        "arrow_config",      "velora_config",           "monteclora_config",
        "kasa_config"};
    for (size_t i = 0; i < sizeof objs / sizeof objs[0]; i++) {
        const json_t *v = json_object_get(root, objs[i]);
        if (json_is_set(v) && !(json_is_array(v) && json_array_size(v) == 0) &&
            !(json_is_object(v) && json_object_size(v) == 0))
            return core_err_r(err, RC_UNSUPPORTED, "unsupported_feature", "adapter_config.json: %s is not supported",
                            objs[i]);
    }
    const json_t *mts = json_object_get(root, "modules_to_save");
    if (json_is_set(mts) && !(json_is_array(mts) && json_array_size(mts) == 0))
        return core_err_r(err, RC_UNSUPPORTED, "unsupported_feature",
                        "adapter_config.json: modules_to_save is not supported (full module "
                        "replacements)");
    const json_t *bias = json_object_get(root, "bias");
    if (json_is_set(bias) &&
        !(json_is_string(bias) && strcmp(json_string_value(bias), "none") == 0))
        return core_err_r(err, RC_UNSUPPORTED, "unsupported_feature",
                        "adapter_config.json: bias other than \"none\" is "
                        "not supported");
    const json_t *init = json_object_get(root, "init_lora_weights");
    if (json_is_string(init)) {
        const char *s = json_string_value(init);
        if (strncmp(s, "pissa", 5) == 0 || !strcmp(s, "olora") || !strcmp(s, "corda") ||
            !strcmp(s, "loftq") || !strcmp(s, "lora_ga") || !strcmp(s, "mica"))
            return core_err_r(err, RC_UNSUPPORTED, "unsupported_feature",
                            "adapter_config.json: init_lora_weights \"%.32s\" is not supported "
                            "(it modifies the base weights; convert the adapter first)",
                            s);
    }
    bool fifo;
    rc_t rc = get_bool(root, "fan_in_fan_out", &fifo, err);
    if (rc)
        return rc;
    if (fifo)
        return core_err_r(err, RC_INVALID, "unsupported_feature",
                        "adapter_config.json: fan_in_fan_out must be false: Llama linear layers "
                        "are nn.Linear (PEFT would silently override it; please fix the config)");
    return RC_OK;
}

/* ---- config: patterns and selectors ------------------------------------------------- */

static void pat_free(lora_pat_t *p)
{
    for (size_t i = 0; i < p->n; i++)
        regfree(&p->re[i]);
    free(p->key);
    free(p->value);
    free(p->re);
    memset(p, 0, sizeof *p);
}

static rc_t pat_parse(const json_t *root, const char *field, bool is_rank, lora_pat_t *p,
                      core_err_t *err)
{
    const json_t *obj = json_object_get(root, field);
    if (!json_is_set(obj))
        return RC_OK;
    if (!json_is_object(obj))
        return core_err_r(err, RC_INVALID, "invalid_config", "adapter_config.json: %s must be an object", field);
    size_t n = json_object_size(obj);
    if (n > LORA_MAX_PATTERNS)
        return core_err_r(err, RC_LIMIT, "invalid_config", "adapter_config.json: %s has %zu entries", field, n);
    p->key = calloc(n + 1, sizeof *p->key);
    p->value = calloc(n + 1, sizeof *p->value);
    p->re = calloc(n + 1, sizeof *p->re);
    if (!p->key || !p->value || !p->re)
        return core_err(err, RC_NOMEM, "adapter_config.json: out of memory");
    const char *k;
    json_t *v;
    char what[300];
    json_object_foreach((json_t *)obj, k, v)
    {
        snprintf(what, sizeof what, "%s['%.200s']", field, k);
        int r = 0;
        rc_t rc = is_rank ? cfg_rank_value(v, what, &r, err)
                          : cfg_alpha_value(v, what, &p->value[p->n], err);
        if (rc)
            return rc;
        if (is_rank)
            p->value[p->n] = r;
        rc = re_compile(&p->re[p->n], "^(.*\\.)?(%s)$", k, field, err);
        if (rc)
            return rc;
        p->key[p->n++] = k;
    }
    return RC_OK;
}

/* First key (JSON order) whose regex matches path, else an exact key, else def. */
static double pat_resolve(const lora_pat_t *p, const char *path, double def)
{
    for (size_t i = 0; i < p->n; i++)
        if (regexec(&p->re[i], path, 0, NULL, 0) == 0)
            return p->value[i];
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->key[i], path) == 0)
            return p->value[i];
    return def;
}

static rc_t sel_parse(const json_t *root, const char *field, bool required, lora_sel_t *s,
                      core_err_t *err)
{
    const json_t *v = json_object_get(root, field);
    s->kind = SEL_NONE;
    if (!json_is_set(v)) {
        if (required)
            return core_err_r(err, RC_INVALID, "missing_field", "adapter_config.json: %s missing", field);
        return RC_OK;
    }
    if (json_is_string(v)) {
        if (strcmp(json_string_value(v), "all-linear") == 0 && required) {
            s->kind = SEL_ALL_LINEAR;
            return RC_OK;
        }
        rc_t rc = re_compile(&s->re, "^(%s)$", json_string_value(v), field, err);
        if (!rc)
            s->kind = SEL_REGEX;
        return rc;
    }
    if (!json_is_array(v))
        return core_err_r(err, RC_INVALID, "invalid_config", "adapter_config.json: %s must be a list or a string",
                        field);
    for (size_t i = 0; i < json_array_size(v); i++)
        if (!json_is_string(json_array_get(v, i)))
            return core_err_r(err, RC_INVALID, "invalid_config", "adapter_config.json: %s[%zu] is not a string", field,
                            i);
    if (required && json_array_size(v) == 0)
        return core_err_r(err, RC_INVALID, "invalid_config", "adapter_config.json: %s is empty", field);
    s->kind = SEL_LIST;
    s->list = v;
    return RC_OK;
}

static void sel_free(lora_sel_t *s)
{
    if (s->kind == SEL_REGEX)
        regfree(&s->re);
    s->kind = SEL_NONE;
}

/* PEFT: path == t, or path ends with "." + t. */
static bool name_match(const char *t, const char *path, bool *exact)
{
    size_t n = strlen(path), m = strlen(t);
    *exact = strcmp(path, t) == 0;
    return *exact || (m < n && path[n - m - 1] == '.' && strcmp(path + n - m, t) == 0);
}

/* Any entry of list matches; *exact when one equals path itself. */
static bool sel_list_match(const json_t *list, const char *path, bool *exact)
{
    bool found = false, ex;
    *exact = false;
    for (size_t i = 0; i < json_array_size(list); i++) {
        if (name_match(json_string_value(json_array_get(list, i)), path, &ex))
            found = true;
        *exact = *exact || ex;
    }
    return found;
}

static rc_t cfg_layers(const json_t *root, lora_cfg_t *c, core_err_t *err)
{
    const json_t *v = json_object_get(root, "layers_to_transform");
    if (!json_is_set(v))
        return RC_OK;
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (n > LORA_MAX_PATTERNS)
        return core_err_r(err, RC_LIMIT, "invalid_config", "adapter_config.json: layers_to_transform too long");
    c->layers = calloc(n + 1, sizeof *c->layers);
    if (!c->layers)
        return core_err(err, RC_NOMEM, "adapter_config.json: out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX)
            return core_err_r(err, RC_INVALID, "invalid_config",
                            "adapter_config.json: layers_to_transform must be an integer or a "
                            "list of non-negative integers");
        c->layers[c->n_layers_sel++] = (int)json_integer_value(e);
    }
    const json_t *lp = json_object_get(root, "layers_pattern");
    if (!json_is_set(lp) || (json_is_array(lp) && json_array_size(lp) == 0))
        return RC_OK;
    size_t np = json_is_array(lp) ? json_array_size(lp) : 1;
    if (np > LORA_MAX_PATTERNS)
        return core_err_r(err, RC_LIMIT, "invalid_config", "adapter_config.json: layers_pattern too long");
    c->layer_re = calloc(np, sizeof *c->layer_re);
    if (!c->layer_re)
        return core_err(err, RC_NOMEM, "adapter_config.json: out of memory");
    for (size_t i = 0; i < np; i++) {
        const json_t *e = json_is_array(lp) ? json_array_get(lp, i) : lp;
        if (!json_is_string(e))
            return core_err_r(err, RC_INVALID, "invalid_config",
                            "adapter_config.json: layers_pattern must be a "
                            "string or a list of strings");
        /* PEFT: re.match(rf".*?\.{p}\.(\d+)\.", key) */
        rc_t rc = re_compile(&c->layer_re[i], "^.*\\.(%s)\\.[0-9]+\\.", json_string_value(e),
                             "layers_pattern", err);
        if (rc)
            return rc;
        c->n_layer_re++;
    }
    return RC_OK;
}

static void cfg_free(lora_cfg_t *c)
{
    pat_free(&c->rank_pat);
    pat_free(&c->alpha_pat);
    sel_free(&c->target);
    sel_free(&c->exclude);
    for (size_t i = 0; i < c->n_layer_re; i++)
        regfree(&c->layer_re[i]);
    free(c->layer_re);
    free(c->layers);
}

static rc_t cfg_parse(const json_t *root, lora_cfg_t *c, core_err_t *err)
{
    if (!json_is_object(root))
        return core_err_r(err, RC_INVALID, "invalid_config", "adapter_config.json: not a JSON object");
    rc_t rc = cfg_peft_type(root, err);
    if (!rc)
        rc = cfg_refused(root, err);
    if (rc)
        return rc;
    const json_t *r = json_object_get(root, "r");
    if (!r)
        return core_err_r(err, RC_INVALID, "missing_field", "adapter_config.json: r missing");
    const json_t *a = json_object_get(root, "lora_alpha");
    if (!a)
        return core_err_r(err, RC_INVALID, "missing_field", "adapter_config.json: lora_alpha missing");
    rc = cfg_rank_value(r, "r", &c->r, err);
    if (!rc)
        rc = cfg_alpha_value(a, "lora_alpha", &c->alpha, err);
    if (!rc)
        rc = get_bool(root, "use_rslora", &c->rslora, err);
    if (!rc)
        rc = pat_parse(root, "rank_pattern", true, &c->rank_pat, err);
    if (!rc)
        rc = pat_parse(root, "alpha_pattern", false, &c->alpha_pat, err);
    if (!rc)
        rc = sel_parse(root, "target_modules", true, &c->target, err);
    if (!rc)
        rc = sel_parse(root, "exclude_modules", false, &c->exclude, err);
    if (!rc)
        rc = cfg_layers(root, c, err);
    return rc;
}

/* ---- which modules the config targets (tuners_utils.check_target_module_exists) ----- */

static bool cfg_layer_ok(const lora_cfg_t *c, const char *path, int layer)
{
    if (!c->layers)
        return true;
    if (c->n_layer_re) {
        bool any = false;
        for (size_t i = 0; i < c->n_layer_re && !any; i++)
            any = regexec(&c->layer_re[i], path, 0, NULL, 0) == 0;
        if (!any)
            return false;
    }
    for (size_t i = 0; i < c->n_layers_sel; i++)
        if (c->layers[i] == layer)
            return true;
    return false;
}

static bool cfg_targets(const lora_cfg_t *c, const char *path, int layer)
{
    bool exact;
    if (c->exclude.kind == SEL_REGEX && regexec(&c->exclude.re, path, 0, NULL, 0) == 0)
        return false;
    if (c->exclude.kind == SEL_LIST && sel_list_match(c->exclude.list, path, &exact))
        return false;
    switch (c->target.kind) {
    case SEL_ALL_LINEAR:
        return true;
    case SEL_REGEX:
        return regexec(&c->target.re, path, 0, NULL, 0) == 0;
    case SEL_LIST:
        if (!sel_list_match(c->target.list, path, &exact))
            return false;
        return exact || cfg_layer_ok(c, path, layer);
    default:
        return false;
    }
}

static void mod_path(char *buf, size_t len, int layer, core_mod_t m)
{
    snprintf(buf, len, "model.layers.%d.%s.%s", layer, core_mod_parent(m), core_mod_name(m));
}

/* Every target_modules entry must name some linear layer of the base (vLLM #4915):
 * a typo would otherwise leave the author believing a module was adapted. */
static rc_t cfg_targets_exist(const lora_cfg_t *c, const core_config_t *base, core_err_t *err)
{
    if (c->target.kind != SEL_LIST)
        return RC_OK;
    char path[96];
    for (size_t i = 0; i < json_array_size(c->target.list); i++) {
        const char *t = json_string_value(json_array_get(c->target.list, i));
        bool found = false, exact;
        for (int l = 0; l < base->n_layers && !found; l++)
            for (int m = 0; m < CORE_MOD__COUNT && !found; m++) {
                mod_path(path, sizeof path, l, (core_mod_t)m);
                found = name_match(t, path, &exact);
            }
        if (!found)
            return core_err_r(err, RC_MISMATCH, "unknown_module",
                            "adapter_config.json: target_modules entry '%.100s' matches no linear "
                            "layer of the base model",
                            t);
    }
    return RC_OK;
}

/* ---- tensor keys ---------------------------------------------------------------- */

/* A key that is not a plain LoRA A/B weight of a decoder linear: say what it is. */
static rc_t key_refuse(const char *key, core_err_t *err)
{
    static const struct {
        const char *part, *what;
    } known[] = {
        {"lora_embedding_", "LoRA on embeddings is not supported"},
        {"lora_magnitude_vector", "DoRA (lora_magnitude_vector) is not supported"},
        {"lm_head", "LoRA on lm_head is not supported"},
        {"trainable_tokens", "trainable tokens are not supported"},
        {"embed_tokens", "embedding replacements are not supported"},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strstr(key, known[i].part))
            return core_err_r(err, RC_UNSUPPORTED, "unsupported_feature", "tensor '%.200s': %s", key, known[i].what);
    size_t n = strlen(key);
    if (n >= 5 && strcmp(key + n - 5, ".bias") == 0)
        return core_err_r(err, RC_UNSUPPORTED, "unsupported_feature", "tensor '%.200s': bias tensors are not supported",
                        key);
    return core_err_r(err, RC_MISMATCH, "unbound_tensor",
                    "tensor '%.200s' does not name a LoRA weight of the base model (expected "
                    "[base_model.model.]model.layers.{i}.{self_attn|mlp}.{q,k,v,o,gate,up,"
                    "down}_proj.lora_{A|B}.weight)",
                    key);
}

typedef struct {
    int layer;
    core_mod_t m;
    int is_b;
} lora_slot_t;

/* Decimal layer index without leading zeros; *p advanced past it. -1 when malformed. */
static long key_layer(const char **p)
{
    const char *s = *p;
    if (s[0] < '0' || s[0] > '9' || (s[0] == '0' && s[1] >= '0' && s[1] <= '9'))
        return -1;
    long v = 0;
    for (; *s >= '0' && *s <= '9'; s++)
        if (v <= 100000000)
            v = v * 10 + (*s - '0');
    *p = s;
    return v;
}

static rc_t key_parse(const char *key, int n_layers, lora_slot_t *out, core_err_t *err)
{
    const char *p = key;
    if (strncmp(p, LORA_PREFIX, strlen(LORA_PREFIX)) == 0)
        p += strlen(LORA_PREFIX);
    if (strncmp(p, "model.layers.", 13) != 0)
        return key_refuse(key, err);
    p += 13;
    long layer = key_layer(&p);
    if (layer < 0 || *p != '.')
        return key_refuse(key, err);
    p++;
    for (int m = 0; m < CORE_MOD__COUNT; m++) {
        const char *par = core_mod_parent((core_mod_t)m), *name = core_mod_name((core_mod_t)m);
        size_t lp = strlen(par), ln = strlen(name);
        if (strncmp(p, par, lp) != 0 || p[lp] != '.' || strncmp(p + lp + 1, name, ln) != 0)
            continue;
        const char *suf = p + lp + 1 + ln;
        if (strcmp(suf, ".lora_A.weight") != 0 && strcmp(suf, ".lora_B.weight") != 0)
            return key_refuse(key, err);
        if (layer >= n_layers)
            return core_err_r(err, RC_MISMATCH, "layer_out_of_range",
                            "tensor '%.200s': layer %ld out of range (the base has %d layers)", key,
                            layer, n_layers);
        *out = (lora_slot_t){(int)layer, (core_mod_t)m, suf[6] == 'B'};
        return RC_OK;
    }
    return key_refuse(key, err);
}

/* ---- binding tensors to modules ---------------------------------------------------- */

typedef struct {
    const core_st_tensor_t *a, *b; /* per slot, NULL when absent */
} lora_bind_t;

static rc_t bind_keys(const core_st_t *st, const lora_cfg_t *c, const core_config_t *base,
                      lora_bind_t *bind, core_err_t *err)
{
    char path[96];
    for (size_t i = 0; i < core_st_count(st); i++) {
        const core_st_tensor_t *t = core_st_at(st, i);
        lora_slot_t s = {0, CORE_MOD_Q, 0};
        rc_t rc = key_parse(t->name, base->n_layers, &s, err);
        if (rc)
            return rc;
        mod_path(path, sizeof path, s.layer, s.m);
        if (!cfg_targets(c, path, s.layer))
            return core_err_r(err, RC_MISMATCH, "unbound_tensor",
                            "tensor '%.200s': module %s is not selected by target_modules / "
                            "exclude_modules / layers_to_transform",
                            t->name, path);
        lora_bind_t *b = &bind[s.layer * CORE_MOD__COUNT + s.m];
        const core_st_tensor_t **slot = s.is_b ? &b->b : &b->a;
        if (*slot)
            return core_err_r(err, RC_INVALID, "duplicate_binding", "tensor '%.200s' binds the same weight as '%.200s'",
                            t->name, (*slot)->name);
        *slot = t;
    }
    return RC_OK;
}

static rc_t check_tensor(const core_st_tensor_t *t, int64_t d0, int64_t d1, const char *why,
                         core_err_t *err)
{
    if (t->dtype == CORE_DTYPE_OTHER)
        return core_err_r(err, RC_UNSUPPORTED, "bad_dtype",
                        "tensor '%.200s': dtype %s is not supported (F32, "
                        "F16 or BF16)",
                        t->name, t->dtype_name);
    if (t->n_dims != 2 || t->shape[0] != d0 || t->shape[1] != d1) {
        char got[64] = "";
        size_t n = 0;
        for (int d = 0; d < t->n_dims && n < sizeof got; d++)
            n += (size_t)snprintf(got + n, sizeof got - n, "%s%lld", d ? ", " : "",
                                  (long long)t->shape[d]);
        return core_err_r(err, RC_MISMATCH, "shape_mismatch", "tensor '%.200s': shape [%s], expected [%lld, %lld] (%s)",
                        t->name, got, (long long)d0, (long long)d1, why);
    }
    return RC_OK;
}

/* Pairs, shapes and ranks of every bound slot; *n_floats = total f32 to hold. */
static rc_t check_slots(const lora_bind_t *bind, const lora_cfg_t *c, const core_config_t *base,
                        int *ranks, size_t *n_floats, core_err_t *err)
{
    char path[96];
    *n_floats = 0;
    for (int l = 0; l < base->n_layers; l++)
        for (int m = 0; m < CORE_MOD__COUNT; m++) {
            const lora_bind_t *b = &bind[l * CORE_MOD__COUNT + m];
            if (!b->a && !b->b)
                continue;
            if (!b->a || !b->b)
                return core_err_r(err, RC_INVALID, "missing_pair", "tensor '%.200s' has no matching lora_%c",
                                (b->a ? b->a : b->b)->name, b->a ? 'B' : 'A');
            int n_out, n_in;
            core_mod_shape(base, (core_mod_t)m, &n_out, &n_in);
            mod_path(path, sizeof path, l, (core_mod_t)m);
            int r = (int)pat_resolve(&c->rank_pat, path, c->r);
            rc_t rc =
                check_tensor(b->a, r, n_in, "rank from the config, in_features from the base", err);
            if (!rc)
                rc = check_tensor(b->b, n_out, r,
                                  "out_features from the base, rank from the config", err);
            if (rc)
                return rc;
            ranks[l * CORE_MOD__COUNT + m] = r;
            *n_floats += (size_t)r * ((size_t)n_in + (size_t)n_out);
        }
    if (*n_floats == 0)
        return core_err_r(err, RC_INVALID, "no_tensors", "adapter_model.safetensors holds no LoRA tensors");
    return RC_OK;
}

static rc_t convert_finite(const core_st_tensor_t *t, float *dst, core_err_t *err)
{
    bool finite = true;
    rc_t rc = core_st_to_f32_check(t, dst, &finite, err);
    for (int64_t i = 0; rc == RC_OK && !finite && i < t->n_elems; i++)
        if (!isfinite(dst[i]))
            return core_err_r(err, RC_INVALID, "non_finite", "tensor '%.200s': value %lld is not finite (%g)",
                            t->name, (long long)i, (double)dst[i]);
    return rc;
}

/* Converts every bound pair into the arena and fills mods, scales and the mask. */
static rc_t fill_mods(lora_priv_t *lp, const lora_bind_t *bind, const int *ranks,
                      const lora_cfg_t *c, core_err_t *err)
{
    core_lora_t *l = &lp->pub;
    float *at = lp->arena;
    char path[96];
    for (int i = 0; i < l->n_layers * CORE_MOD__COUNT; i++) {
        if (!bind[i].a)
            continue;
        core_lora_mod_t *md = &l->mods[i];
        md->r = ranks[i];
        md->n_in = (int)bind[i].a->shape[1];
        md->n_out = (int)bind[i].b->shape[0];
        md->A = at;
        at += bind[i].a->n_elems;
        md->B = at;
        at += bind[i].b->n_elems;
        rc_t rc = convert_finite(bind[i].a, md->A, err);
        if (!rc)
            rc = convert_finite(bind[i].b, md->B, err);
        if (rc)
            return rc;
        mod_path(path, sizeof path, i / CORE_MOD__COUNT, (core_mod_t)(i % CORE_MOD__COUNT));
        double alpha = pat_resolve(&c->alpha_pat, path, c->alpha);
        md->scale = (float)(c->rslora ? alpha / sqrt((double)md->r) : alpha / md->r);
        l->target_mask |= 1u << (i % CORE_MOD__COUNT);
    }
    return RC_OK;
}

/* The f32 arena. A large one is its own mapping, populated in one call: a load writes
 * every byte of fresh memory once, and taking a page fault per 4 KiB costs about as much
 * as the conversion itself. (Transparent huge pages halved the median load but added
 * 80-200 ms compaction stalls to one load in ten here: predictable latency won.) */
static void lora_arena_alloc(lora_priv_t *lp, size_t bytes)
{
    /* Below glibc's largest mmap threshold (32 MiB) malloc reuses memory freed by earlier
     * adapters, already faulted in: faster than any fresh mapping. */
    if (bytes < ((size_t)32 << 20)) {
        lp->arena = malloc(bytes ? bytes : 1);
        return;
    }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED)
        return;
    lp->arena = p;
    lp->arena_mapped = bytes;
}

static void lora_arena_free(lora_priv_t *lp)
{
    if (lp->arena_mapped)
        munmap(lp->arena, lp->arena_mapped);
    else
        free(lp->arena);
    lp->arena = NULL;
}

static rc_t lora_build(const core_st_t *st, const lora_cfg_t *c, const core_config_t *base,
                       core_lora_t **out, core_err_t *err)
{
    size_t n_slots = (size_t)base->n_layers * CORE_MOD__COUNT, n_floats = 0;
    if (core_st_count(st) > 2 * n_slots)
        return core_err_r(err, RC_MISMATCH, "too_many_tensors",
                        "adapter has %zu tensors; the base has only %zu LoRA "
                        "weights",
                        core_st_count(st), 2 * n_slots);
    lora_bind_t *bind = calloc(n_slots, sizeof *bind);
    int *ranks = calloc(n_slots, sizeof *ranks);
    lora_priv_t *lp = calloc(1, sizeof *lp);
    rc_t rc = RC_OK;
    if (!bind || !ranks || !lp) {
        rc = core_err(err, RC_NOMEM, "adapter: out of memory");
        goto out;
    }
    rc = bind_keys(st, c, base, bind, err);
    if (!rc)
        rc = check_slots(bind, c, base, ranks, &n_floats, err);
    if (rc)
        goto out;
    lp->pub.mods = calloc(n_slots, sizeof *lp->pub.mods);
    lora_arena_alloc(lp, n_floats * sizeof(float));
    if (!lp->pub.mods || !lp->arena) {
        rc = core_err(err, RC_NOMEM, "adapter: out of memory for %zu weights", n_floats);
        goto out;
    }
    lp->pub.n_layers = base->n_layers;
    lp->pub.rank = c->r;
    lp->pub.alpha = (float)c->alpha;
    lp->pub.rslora = c->rslora;
    lp->pub.n_bytes = n_floats * sizeof(float);
    lp->pub.refcount = 1;
    rc = fill_mods(lp, bind, ranks, c, err);
out:
    if (rc && lp) {
        free(lp->pub.mods);
        lora_arena_free(lp);
        free(lp);
    } else if (!rc) {
        *out = &lp->pub;
    }
    free(bind);
    free(ranks);
    return rc;
}

/* The part after the last '/' (a hub id "org/name" or a local path). */
static const char *path_base(const char *s)
{
    const char *slash = strrchr(s, '/');
    while (slash && slash[1] == '\0' && slash > s) { /* "dir/" */
        const char *prev = slash - 1;
        while (prev > s && *prev != '/')
            prev--;
        return *prev == '/' ? prev + 1 : prev;
    }
    return slash ? slash + 1 : s;
}

static size_t path_base_len(const char *b)
{
    const char *slash = strchr(b, '/');
    return slash ? (size_t)(slash - b) : strlen(b);
}

/* base_model_name_or_path against the served base's name, when the operator gave one:
 * last path components, case-insensitively ("meta-llama/Llama-2-7b-hf" matches a local
 * "/models/llama-2-7b-hf"). Absent or empty in the config: nothing to check. */
static rc_t cfg_base_name(const json_t *root, const char *served, core_err_t *err)
{
    const json_t *v = json_object_get(root, "base_model_name_or_path");
    if (!json_is_set(v))
        return RC_OK;
    if (!json_is_string(v))
        return core_err_r(err, RC_INVALID, "invalid_config",
                          "adapter_config.json: base_model_name_or_path is not a string");
    if (!served || !served[0] || !json_string_value(v)[0])
        return RC_OK;
    const char *a = path_base(json_string_value(v)), *b = path_base(served);
    size_t na = path_base_len(a), nb = path_base_len(b);
    if (na == nb && strncasecmp(a, b, na) == 0)
        return RC_OK;
    return core_err_r(err, RC_MISMATCH, "base_model_mismatch",
                      "adapter_config.json: base_model_name_or_path '%.200s' is not the served "
                      "base model '%.100s'",
                      json_string_value(v), served);
}

/* ---- public API ----------------------------------------------------------------- */

core_lora_params_t core_lora_default_params(void)
{
    return (core_lora_params_t){.base_name = NULL};
}

core_st_params_t core_lora_st_params(const core_config_t *base)
{
    core_st_params_t p = core_st_default_params();
    p.max_header = CORE_LORA_MAX_HEADER;
    if (base->n_layers > 0)
        p.max_tensors = 2 * (size_t)base->n_layers * CORE_MOD__COUNT;
    return p;
}

rc_t core_lora_from_parts(const char *config_json, const struct core_st *st,
                          const core_config_t *base, core_lora_t **out, core_err_t *err)
{
    return core_lora_from_parts_ex(config_json, st, base, NULL, out, err);
}

rc_t core_lora_from_parts_ex(const char *config_json, const struct core_st *st,
                             const core_config_t *base, const core_lora_params_t *p,
                             core_lora_t **out, core_err_t *err)
{
    *out = NULL;
    if (base->n_layers <= 0)
        return core_err(err, RC_INVALID, "base model has no layers");
    json_error_t jerr;
    json_t *root = json_loads(config_json, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return core_err_r(err, RC_FORMAT,
                          json_error_code(&jerr) == json_error_duplicate_key ? "duplicate_key"
                                                                             : "invalid_config",
                          "adapter_config.json: %s (line %d)", jerr.text, jerr.line);
    lora_cfg_t c;
    memset(&c, 0, sizeof c);
    rc_t rc = cfg_parse(root, &c, err);
    if (!rc)
        rc = cfg_base_name(root, p ? p->base_name : NULL, err);
    if (!rc)
        rc = cfg_targets_exist(&c, base, err);
    if (!rc)
        rc = lora_build(st, &c, base, out, err);
    cfg_free(&c);
    json_decref(root);
    return rc;
}

static bool file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static rc_t read_config(const char *path, char **text, core_err_t *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return core_err(err, file_exists(path) ? RC_IO : RC_NOT_FOUND, "%s: cannot open", path);
    rc_t rc = RC_OK;
    char *buf = malloc(LORA_MAX_CONFIG + 1);
    if (!buf) {
        rc = core_err(err, RC_NOMEM, "%s: out of memory", path);
        goto out;
    }
    size_t n = fread(buf, 1, LORA_MAX_CONFIG + 1, f);
    if (ferror(f))
        rc = core_err(err, RC_IO, "%s: read error", path);
    else if (n > LORA_MAX_CONFIG)
        rc = core_err_r(err, RC_LIMIT, "invalid_config", "%s: larger than %u bytes", path, LORA_MAX_CONFIG);
    else if (memchr(buf, 0, n))
        rc = core_err_r(err, RC_FORMAT, "invalid_config", "%s: contains a NUL byte", path);
    if (rc) {
        free(buf);
        goto out;
    }
    buf[n] = 0;
    *text = buf;
out:
    fclose(f);
    return rc;
}

rc_t core_lora_load(const char *dir, const core_config_t *base, core_lora_t **out, core_err_t *err)
{
    *out = NULL;
    char cfg_path[4096], st_path[4096], bin_path[4096];
    snprintf(cfg_path, sizeof cfg_path, "%s/adapter_config.json", dir);
    snprintf(st_path, sizeof st_path, "%s/adapter_model.safetensors", dir);
    snprintf(bin_path, sizeof bin_path, "%s/adapter_model.bin", dir);
    if (!file_exists(st_path) && file_exists(bin_path))
        return core_err_r(err, RC_UNSUPPORTED, "unsupported_feature",
                        "%s: pickle .bin adapters are not supported; convert "
                        "to safetensors",
                        dir);
    char *text = NULL;
    rc_t rc = read_config(cfg_path, &text, err);
    if (rc)
        return rc;
    core_st_t *st = NULL;
    core_st_params_t sp = core_lora_st_params(base);
    rc = core_st_open_file_ex(st_path, &sp, &st, err);
    if (!rc)
        rc = core_lora_from_parts(text, st, base, out, err);
    core_st_free(st); /* weights were copied to f32 */
    free(text);
    return rc;
}

void core_lora_retain(core_lora_t *l)
{
    __atomic_add_fetch(&l->refcount, 1, __ATOMIC_RELAXED);
}

void core_lora_release(core_lora_t *l)
{
    if (!l || __atomic_sub_fetch(&l->refcount, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    lora_priv_t *lp = (lora_priv_t *)l; /* pub is the first member */
    free(lp->pub.mods);
    lora_arena_free(lp);
    free(lp);
}

void core_lora_targets_str(const core_lora_t *l, char *buf, size_t len)
{
    if (!len)
        return;
    buf[0] = 0;
    size_t n = 0;
    for (int m = 0; m < CORE_MOD__COUNT; m++) {
        if (!(l->target_mask & (1u << m)))
            continue;
        int w = snprintf(buf + n, len - n, "%s%s", n ? "," : "", core_mod_name((core_mod_t)m));
        if (w < 0 || (size_t)w >= len - n) {
            buf[n] = 0; /* never a half name */
            return;
        }
        n += (size_t)w;
    }
}

/* Declared in core/aset.c (the "linear" mix builds its LoRA in our layout): a LoRA of
 * n_layers with zeroed mods and a zeroed arena of n_floats floats (*arena) that the
 * caller carves into A and B; refcount 1, freed by core_lora_release. NULL when out of
 * memory. */
core_lora_t *core__lora_alloc(int n_layers, size_t n_floats, float **arena);

core_lora_t *core__lora_alloc(int n_layers, size_t n_floats, float **arena)
{
    lora_priv_t *lp = calloc(1, sizeof *lp);
    if (!lp)
        return NULL;
    lp->pub.mods = calloc((size_t)n_layers * CORE_MOD__COUNT, sizeof *lp->pub.mods);
    lp->arena = calloc(n_floats ? n_floats : 1, sizeof(float));
    if (!lp->pub.mods || !lp->arena) {
        free(lp->pub.mods);
        lora_arena_free(lp);
        free(lp);
        return NULL;
    }
    lp->pub.n_layers = n_layers;
    lp->pub.refcount = 1;
    *arena = lp->arena;
    return &lp->pub;
}
