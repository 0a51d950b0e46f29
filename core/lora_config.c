/* lora_config.c - adapter_config.json for LoRA adapters: the fields that change the math,
 * refused features, rank/alpha patterns, target/exclude selectors and layer selection, and
 * the targeting test PEFT applies to each module path (tuners_utils).
 *
 * The config is untrusted: parsed by the caller with duplicate keys refused; unknown keys
 * ignored (PEFT adds fields every release); every field that changes the math and that we do
 * not implement is refused by name. Patterns use POSIX extended regexes standing in for
 * Python's re; Python-only syntax and patterns whose compilation could blow up are refused.
 *
 * Threads: any; nothing global. */
#include "core/lora_int.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
double core__lora_pat_resolve(const lora_pat_t *p, const char *path, double def)
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

void core__lora_cfg_free(lora_cfg_t *c)
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

rc_t core__lora_cfg_parse(const json_t *root, lora_cfg_t *c, core_err_t *err)
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

bool core__lora_cfg_targets(const lora_cfg_t *c, const char *path, int layer)
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

void core__lora_mod_path(char *buf, size_t len, int layer, core_mod_t m)
{
    snprintf(buf, len, "model.layers.%d.%s.%s", layer, core_mod_parent(m), core_mod_name(m));
}

/* Every target_modules entry must name some linear layer of the base (vLLM #4915):
 * a typo would otherwise leave the author believing a module was adapted. */
rc_t core__lora_cfg_targets_exist(const lora_cfg_t *c, const core_config_t *base, core_err_t *err)
{
    if (c->target.kind != SEL_LIST)
        return RC_OK;
    char path[96];
    for (size_t i = 0; i < json_array_size(c->target.list); i++) {
        const char *t = json_string_value(json_array_get(c->target.list, i));
        bool found = false, exact;
        for (int l = 0; l < base->n_layers && !found; l++)
            for (int m = 0; m < CORE_MOD__COUNT && !found; m++) {
                core__lora_mod_path(path, sizeof path, l, (core_mod_t)m);
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
rc_t core__lora_cfg_base_name(const json_t *root, const char *served, core_err_t *err)
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
