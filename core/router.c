/* router.c - routers over LoRA experts (core/router.h): config detection and expert
 * names, construction from parts, loading a router folder, reference counts.
 * PHATGOOSE gates, Arrow prototypes and routing live in core/router_gate.c, the X-LoRA
 * classifier and its scalings in core/router_xlora.c.
 *
 * Configs, classifier/gate files and expert folders are untrusted: JSON is parsed with
 * duplicate keys refused, expert names are checked before they become paths, and every
 * refusal starts with a reason of CORE_REASON_MAP and names the field, key or expert.
 * Threads: construct on any thread; a built router is immutable and refcounted (atomic). */
#include "core/router_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char *core_router_kind_name(core_router_kind_t k)
{
    switch (k) {
    case CORE_ROUTER_XLORA:
        return "xlora";
    case CORE_ROUTER_PHATGOOSE:
        return "phatgoose";
    case CORE_ROUTER_ARROW:
        return "arrow";
    }
    return "unknown";
}

/* ---- config: kind and expert names -------------------------------------------------- */

static bool json_is_set(const json_t *v)
{
    return v && !json_is_null(v);
}

/* Names become folder names under the router's folder (DIR/<name>), so they are held to a
 * plain portable alphabet: no '/', no "..", no leading '.' or '-'. */
static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > ROUTER_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool alnum = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        if (!alnum && (i == 0 || (ch != '.' && ch != '_' && ch != '-')))
            return false;
    }
    return true;
}

static rc_t cfg_add_name(router_cfg_t *c, const char *name, core_err_t *err)
{
    if (c->n >= CORE_ROUTER_MAX_EXPERTS)
        return core_err_r(err, RC_INVALID, "invalid_config", "%s: more than %d experts", c->file,
                          CORE_ROUTER_MAX_EXPERTS);
    if (!name_ok(name))
        return core_err_r(err, RC_INVALID, "invalid_config",
                          "%s: expert name '%.80s' must be 1-%d characters of A-Z a-z 0-9 . _ - "
                          "starting with a letter or digit",
                          c->file, name, ROUTER_NAME_MAX);
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->names[i], name) == 0)
            return core_err_r(err, RC_INVALID, "invalid_config",
                              "%s: expert name '%s' appears twice", c->file, name);
    snprintf(c->names[c->n++], CORE_ROUTER_MAX_NAME, "%s", name);
    return RC_OK;
}

/* A list of names, or a map whose keys are the names in insertion order (jansson keeps
 * it), which is the expert order of PEFT's ordered dict. */
static rc_t cfg_names(router_cfg_t *c, const json_t *v, const char *field, bool allow_list,
                      bool allow_map, core_err_t *err)
{
    rc_t rc = RC_OK;
    if (!json_is_set(v))
        return core_err_r(err, RC_INVALID, "missing_field", "%s: %s missing", c->file, field);
    if (allow_list && json_is_array(v)) {
        size_t i;
        const json_t *e;
        json_array_foreach(v, i, e) {
            if (!json_is_string(e))
                return core_err_r(err, RC_INVALID, "invalid_config",
                                  "%s: %s[%zu] is not a string", c->file, field, i);
            if ((rc = cfg_add_name(c, json_string_value(e), err)))
                return rc;
        }
    } else if (allow_map && json_is_object(v)) {
        const char *key;
        const json_t *e;
        json_object_foreach((json_t *)v, key, e) {
            if ((rc = cfg_add_name(c, key, err)))
                return rc;
        }
    } else {
        return core_err_r(err, RC_INVALID, "invalid_config", "%s: %s must be %s", c->file, field,
                          allow_list && allow_map ? "a list or a map of expert names"
                          : allow_list            ? "a list of expert names"
                                                  : "a map of expert names to paths");
    }
    if (c->n == 0)
        return core_err_r(err, RC_INVALID, "invalid_config", "%s: %s names no experts", c->file,
                          field);
    return RC_OK;
}

static rc_t cfg_ours(router_cfg_t *c, const json_t *type, core_err_t *err)
{
    c->file = "router_config.json";
    if (!json_is_string(type))
        return core_err_r(err, RC_INVALID, "invalid_config", "%s: router_type is not a string",
                          c->file);
    const char *t = json_string_value(type);
    if (strcmp(t, "phatgoose") == 0)
        c->kind = CORE_ROUTER_PHATGOOSE;
    else if (strcmp(t, "arrow") == 0)
        c->kind = CORE_ROUTER_ARROW;
    else
        return core_err_r(err, RC_UNSUPPORTED, "unsupported_feature",
                          "%s: router_type '%.64s' is not supported (phatgoose, arrow)", c->file,
                          t);
    return cfg_names(c, json_object_get(c->root, "experts"), "experts", true, false, err);
}

/* router_type -> ours; peft_type XLORA -> PEFT X-LoRA; adapters alone -> the original
 * X-LoRA repo's xlora_config.json (it carries no peft_type). */
static rc_t cfg_kind(router_cfg_t *c, core_err_t *err)
{
    const json_t *type = json_object_get(c->root, "router_type");
    if (json_is_set(type))
        return cfg_ours(c, type, err);
    const json_t *pt = json_object_get(c->root, "peft_type");
    c->kind = CORE_ROUTER_XLORA;
    if (json_is_set(pt)) {
        c->file = "adapter_config.json";
        c->peft = true;
        if (!json_is_string(pt))
            return core_err_r(err, RC_INVALID, "invalid_config", "%s: peft_type is not a string",
                              c->file);
        if (strcmp(json_string_value(pt), "XLORA") != 0)
            return core_err_r(err, RC_UNSUPPORTED, "unknown_peft_type",
                              "%s: peft_type %.64s is not a router (only XLORA)", c->file,
                              json_string_value(pt));
        return cfg_names(c, json_object_get(c->root, "adapters"), "adapters", false, true, err);
    }
    c->file = "xlora_config.json";
    if (!json_is_set(json_object_get(c->root, "adapters")))
        return core_err_r(err, RC_INVALID, "invalid_config",
                          "router config: neither router_type, peft_type XLORA nor adapters");
    return cfg_names(c, json_object_get(c->root, "adapters"), "adapters", true, true, err);
}

rc_t core__router_cfg_parse(const char *config_json, router_cfg_t *c, core_err_t *err)
{
    memset(c, 0, sizeof *c);
    c->file = "router config";
    json_error_t jerr;
    c->root = json_loads(config_json, JSON_REJECT_DUPLICATES, &jerr);
    if (!c->root)
        return core_err_r(err, RC_FORMAT,
                          json_error_code(&jerr) == json_error_duplicate_key ? "duplicate_key"
                                                                             : "invalid_config",
                          "router config: %s (line %d)", jerr.text, jerr.line);
    rc_t rc = json_is_object(c->root)
                  ? cfg_kind(c, err)
                  : core_err_r(err, RC_FORMAT, "invalid_config", "router config: not a JSON object");
    if (rc)
        core__router_cfg_free(c);
    return rc;
}

void core__router_cfg_free(router_cfg_t *c)
{
    json_decref(c->root);
    c->root = NULL;
}

rc_t core_router_cfg_experts(const char *config_json, core_router_kind_t *kind,
                             char names[][CORE_ROUTER_MAX_NAME], int *n, core_err_t *err)
{
    router_cfg_t c;
    *n = 0;
    rc_t rc = core__router_cfg_parse(config_json, &c, err);
    if (rc)
        return rc;
    *kind = c.kind;
    for (int i = 0; i < c.n; i++)
        memcpy(names[i], c.names[i], CORE_ROUTER_MAX_NAME);
    *n = c.n;
    core__router_cfg_free(&c);
    return RC_OK;
}

/* ---- shared helpers --------------------------------------------------------------- */

rc_t core__router_convert(const core_st_tensor_t *t, float *dst, core_err_t *err)
{
    if (t->dtype == CORE_DTYPE_OTHER)
        return core_err_r(err, RC_UNSUPPORTED, "bad_dtype",
                          "tensor '%.200s': dtype %s is not supported (F32, F16 or BF16)",
                          t->name, t->dtype_name);
    bool finite = true;
    rc_t rc = core_st_to_f32_check(t, dst, &finite, err);
    for (int64_t i = 0; rc == RC_OK && !finite && i < t->n_elems; i++)
        if (!isfinite(dst[i]))
            return core_err_r(err, RC_INVALID, "non_finite",
                              "tensor '%.200s': value %lld is not finite (%g)", t->name,
                              (long long)i, (double)dst[i]);
    return rc;
}

int core__router_topk(const double *score, uint32_t mask, int n, int k, int *kept)
{
    uint32_t left = mask;
    int n_kept = 0;
    while (n_kept < k && left) {
        int best = -1;
        /* ascending with a strict '>' keeps the lower index on ties */
        for (int e = 0; e < n; e++)
            if ((left >> e & 1u) && (best < 0 || score[e] > score[best]))
                best = e;
        kept[n_kept++] = best;
        left &= ~(1u << best);
    }
    return n_kept;
}

/* ---- construction ------------------------------------------------------------------ */

/* Each expert must be a LoRA of this base: same layer count, module shapes of the base. */
static rc_t check_experts(const router_cfg_t *c, core_lora_t *const *experts, int n,
                          const core_config_t *base, core_err_t *err)
{
    if (n != c->n)
        return core_err_r(err, RC_INVALID, "invalid_config", "%s names %d experts, %d given",
                          c->file, c->n, n);
    for (int e = 0; e < n; e++) {
        const core_lora_t *l = experts[e];
        if (!l)
            return core_err(err, RC_INVALID, "expert '%s': NULL", c->names[e]);
        if (l->n_layers != base->n_layers || !l->mods)
            return core_err_r(err, RC_MISMATCH, "shape_mismatch",
                              "expert '%s': %d layers, the base has %d", c->names[e],
                              l->n_layers, base->n_layers);
        for (int k = 0; k < base->n_layers * CORE_MOD__COUNT; k++) {
            const core_lora_mod_t *md = &l->mods[k];
            int n_out, n_in;
            core_mod_shape(base, (core_mod_t)(k % CORE_MOD__COUNT), &n_out, &n_in);
            if (md->A && (!md->B || md->r <= 0 || md->n_in != n_in || md->n_out != n_out))
                return core_err_r(err, RC_MISMATCH, "shape_mismatch",
                                  "expert '%s': layer %d %s is not a LoRA of the base's shape",
                                  c->names[e], k / CORE_MOD__COUNT,
                                  core_mod_name((core_mod_t)(k % CORE_MOD__COUNT)));
        }
    }
    return RC_OK;
}

/* A router holding one reference to each expert, with cand filled; NULL when out of memory. */
static core_router_t *router_new(const router_cfg_t *c, core_lora_t *const *experts,
                                 const core_config_t *base)
{
    core_router_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    size_t nk = (size_t)base->n_layers * CORE_MOD__COUNT;
    r->cand = calloc(nk, sizeof *r->cand);
    if (!r->cand) {
        free(r);
        return NULL;
    }
    r->n_bytes = nk * sizeof *r->cand;
    r->kind = c->kind;
    r->refcount = 1;
    r->n_layers = base->n_layers;
    r->dim = base->dim;
    r->temperature = 1.0f;
    r->n_experts = c->n;
    for (int e = 0; e < c->n; e++) {
        memcpy(r->names[e], c->names[e], CORE_ROUTER_MAX_NAME);
        r->experts[e] = experts[e];
        core_lora_retain(experts[e]);
        for (size_t k = 0; k < nk; k++)
            if (experts[e]->mods[k].A)
                r->cand[k] |= 1u << e;
    }
    return r;
}

/* top_k and temperature of router_config.json (PHATGOOSE and ARROW). */
static rc_t cfg_route_fields(const router_cfg_t *c, core_router_t *r, core_err_t *err)
{
    int def = r->kind == CORE_ROUTER_PHATGOOSE ? 2 : 3;
    r->top_k = def < c->n ? def : c->n;
    const json_t *v = json_object_get(c->root, "top_k");
    if (json_is_set(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > c->n)
            return core_err_r(err, RC_INVALID, "invalid_config",
                              "%s: top_k must be an integer in 1..%d (the number of experts)",
                              c->file, c->n);
        r->top_k = (int)json_integer_value(v);
    }
    v = json_object_get(c->root, "temperature");
    if (json_is_set(v)) {
        double t = json_is_number(v) ? json_number_value(v) : NAN;
        if (!(isfinite(t) && t > 0 && t < 1e30))
            return core_err_r(err, RC_INVALID, "invalid_config",
                              "%s: temperature must be a finite number > 0", c->file);
        r->temperature = (float)t;
    }
    return RC_OK;
}

static rc_t router_build(core_router_t *r, const router_cfg_t *c, const core_st_t *st,
                         const core_config_t *base, core_err_t *err)
{
    rc_t rc;
    switch (r->kind) {
    case CORE_ROUTER_PHATGOOSE:
        rc = cfg_route_fields(c, r, err);
        return rc ? rc : core__router_phatgoose_build(r, st, base, err);
    case CORE_ROUTER_ARROW:
        rc = cfg_route_fields(c, r, err);
        return rc ? rc : core__router_arrow_build(r, st, base, err);
    case CORE_ROUTER_XLORA:
        return core__router_xlora_build(r, c, st, base, err);
    }
    return core_err(err, RC_INTERNAL, "router kind %d", (int)r->kind);
}

rc_t core_router_from_parts(const char *config_json, const struct core_st *st,
                            core_lora_t *const *experts, int n, const core_config_t *base,
                            core_router_t **out, core_err_t *err)
{
    *out = NULL;
    if (!config_json || !base || base->n_layers <= 0 || base->dim <= 0 || n < 0 ||
        (n > 0 && !experts))
        return core_err(err, RC_INVALID, "router: no config, experts or base");
    router_cfg_t c;
    rc_t rc = core__router_cfg_parse(config_json, &c, err);
    if (rc)
        return rc;
    core_router_t *r = NULL;
    rc = check_experts(&c, experts, n, base, err);
    if (rc)
        goto out;
    r = router_new(&c, experts, base);
    if (!r) {
        rc = core_err(err, RC_NOMEM, "router: out of memory");
        goto out;
    }
    rc = router_build(r, &c, st, base, err);
out:
    if (rc)
        core_router_release(r);
    else
        *out = r;
    core__router_cfg_free(&c);
    return rc;
}

void core_router_retain(core_router_t *r)
{
    __atomic_add_fetch(&r->refcount, 1, __ATOMIC_RELAXED);
}

void core_router_release(core_router_t *r)
{
    if (!r || __atomic_sub_fetch(&r->refcount, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    if (r->vec)
        for (int k = 0; k < r->n_layers * CORE_MOD__COUNT; k++)
            free(r->vec[k]);
    free(r->vec);
    free(r->cand);
    core__router_xlora_free(&r->xlora);
    for (int e = 0; e < r->n_experts; e++)
        core_lora_release(r->experts[e]);
    free(r);
}

/* ---- folders ---------------------------------------------------------------------- */

static bool file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static rc_t read_text(const char *path, char **text, core_err_t *err)
{
    *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return core_err(err, file_exists(path) ? RC_IO : RC_NOT_FOUND, "%s: cannot open", path);
    rc_t rc = RC_OK;
    char *buf = malloc(ROUTER_MAX_CONFIG + 1);
    size_t n = buf ? fread(buf, 1, ROUTER_MAX_CONFIG + 1, f) : 0;
    if (!buf)
        rc = core_err(err, RC_NOMEM, "%s: out of memory", path);
    else if (ferror(f))
        rc = core_err(err, RC_IO, "%s: read error", path);
    else if (n > ROUTER_MAX_CONFIG)
        rc = core_err_r(err, RC_LIMIT, "invalid_config", "%s: larger than %u bytes", path,
                        ROUTER_MAX_CONFIG);
    else if (memchr(buf, 0, n))
        rc = core_err_r(err, RC_FORMAT, "invalid_config", "%s: contains a NUL byte", path);
    fclose(f);
    if (rc) {
        free(buf);
        return rc;
    }
    buf[n] = 0;
    *text = buf;
    return RC_OK;
}

static rc_t join(char *buf, size_t len, const char *dir, const char *name, core_err_t *err)
{
    int w = snprintf(buf, len, "%s/%s", dir, name);
    if (w < 0 || (size_t)w >= len)
        return core_err(err, RC_INVALID, "%.200s: path too long", dir);
    return RC_OK;
}

/* Is the adapter_config.json text a PEFT X-LoRA config? */
static bool text_is_xlora(const char *text)
{
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
    const json_t *pt = json_object_get(root, "peft_type");
    bool yes = json_is_string(pt) && strcmp(json_string_value(pt), "XLORA") == 0;
    json_decref(root);
    return yes;
}

/* The config text of DIR: xlora_config.json, router_config.json, else adapter_config.json
 * (whose peft_type decides; a LoRA's is refused by the parser as unknown_peft_type). */
static rc_t dir_config(const char *dir, char **text, core_err_t *err)
{
    static const char *const files[] = {"xlora_config.json", "router_config.json",
                                         "adapter_config.json"};
    char path[4096];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        rc_t rc = join(path, sizeof path, dir, files[i], err);
        if (rc)
            return rc;
        if (file_exists(path))
            return read_text(path, text, err);
    }
    return core_err(err, RC_NOT_FOUND,
                    "%.200s: no router config (xlora_config.json, router_config.json or an "
                    "adapter_config.json with peft_type XLORA)",
                    dir);
}

bool core_router_dir_is_router(const char *dir)
{
    char path[4096];
    if (join(path, sizeof path, dir, "xlora_config.json", NULL) == RC_OK && file_exists(path))
        return true;
    if (join(path, sizeof path, dir, "router_config.json", NULL) == RC_OK && file_exists(path))
        return true;
    char *text = NULL;
    if (join(path, sizeof path, dir, "adapter_config.json", NULL) != RC_OK ||
        read_text(path, &text, NULL) != RC_OK)
        return false;
    bool yes = text_is_xlora(text);
    free(text);
    return yes;
}

/* DIR/<name> as a LoRA; a refusal keeps the loader's reason first and names the expert. */
static rc_t expert_load(const char *dir, const char *name, const core_config_t *base,
                        const core_lora_params_t *lp, core_lora_t **out, core_err_t *err)
{
    char path[4096];
    rc_t rc = join(path, sizeof path, dir, name, err);
    if (rc)
        return rc;
    core_err_t e = {{0}};
    rc = core_lora_load_ex(path, base, lp, out, &e);
    if (!rc)
        return RC_OK;
    const char *reason = core_err_reason(&e);
    const char *rest = e.msg + (reason[0] ? strlen(reason) + 2 : 0);
    if (reason[0])
        return core_err_r(err, rc, reason, "expert '%s': %.440s", name, rest);
    return core_err(err, rc, "expert '%s': %.440s", name, rest);
}

/* The classifier (XLORA) or gates (PHATGOOSE) file of a config; NULL for ARROW. */
static const char *dir_weights(const router_cfg_t *c)
{
    if (c->kind == CORE_ROUTER_PHATGOOSE)
        return "router_gates.safetensors";
    if (c->kind == CORE_ROUTER_XLORA)
        return c->peft ? "adapter_model.safetensors" : "xlora_classifier.safetensors";
    return NULL;
}

static rc_t dir_open_weights(const char *dir, const router_cfg_t *c, const core_config_t *base,
                             core_st_t **st, core_err_t *err)
{
    const char *file = dir_weights(c);
    if (!file)
        return RC_OK;
    char path[4096];
    rc_t rc = join(path, sizeof path, dir, file, err);
    if (rc)
        return rc;
    core_st_params_t sp = core_st_default_params();
    sp.max_header = CORE_LORA_MAX_HEADER;
    /* a gate per module, or a weight and a bias per classifier layer */
    sp.max_tensors = c->kind == CORE_ROUTER_PHATGOOSE
                         ? (size_t)base->n_layers * CORE_MOD__COUNT
                         : 2 * ROUTER_MAX_LIN;
    return core_st_open_file_ex(path, &sp, st, err);
}

rc_t core_router_load_dir(const char *dir, const core_config_t *base,
                          const core_lora_params_t *lp, core_router_t **out, core_err_t *err)
{
    *out = NULL;
    if (!dir || !base || base->n_layers <= 0)
        return core_err(err, RC_INVALID, "router: no folder or base");
    char *text = NULL;
    core_st_t *st = NULL;
    core_lora_t *experts[CORE_ROUTER_MAX_EXPERTS] = {0};
    router_cfg_t c = {0};
    rc_t rc = dir_config(dir, &text, err);
    if (!rc)
        rc = core__router_cfg_parse(text, &c, err);
    if (!rc)
        rc = dir_open_weights(dir, &c, base, &st, err);
    for (int e = 0; !rc && e < c.n; e++)
        rc = expert_load(dir, c.names[e], base, lp, &experts[e], err);
    if (!rc)
        rc = core_router_from_parts(text, st, experts, c.n, base, out, err);
    for (int e = 0; e < c.n; e++)
        core_lora_release(experts[e]); /* the router holds its own references */
    core_st_free(st);
    core__router_cfg_free(&c);
    free(text);
    return rc;
}
