/* lora.c - PEFT LoRA adapters: adapter_config.json + adapter_model.safetensors to engine
 * layout, validated against the base model.
 *
 * Both files are untrusted. The config is parsed here with duplicate keys refused and read
 * by core/lora_config.c (fields, patterns, selectors). The tensor keys are authoritative for
 * what is adapted (ADAPTER-MATH 1.2): each key must bind exactly one (layer, module, A|B)
 * slot of the base, target_modules / exclude_modules / layers_to_transform only
 * cross-check them (a key the config would not have created is refused, never dropped).
 * Ranks and alphas are resolved per module as PEFT's get_pattern_key does (1.4).
 *
 * Threads: load on any thread; the result is immutable and refcounted with atomics.
 * Ownership: A and B of every module live in one f32 arena owned by the adapter. */
#include "core/lora_int.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "core/safetensors.h"

/* The adapter plus its arena; core_lora_t is the public head. */
typedef struct {
    core_lora_t pub;
    float *arena;
    size_t arena_mapped; /* bytes when the arena is its own mapping, else 0 (malloc) */
} lora_priv_t;

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
        core__lora_mod_path(path, sizeof path, s.layer, s.m);
        if (!core__lora_cfg_targets(c, path, s.layer))
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
            core__lora_mod_path(path, sizeof path, l, (core_mod_t)m);
            int r = (int)core__lora_pat_resolve(&c->rank_pat, path, c->r);
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
        core__lora_mod_path(path, sizeof path, i / CORE_MOD__COUNT, (core_mod_t)(i % CORE_MOD__COUNT));
        double alpha = core__lora_pat_resolve(&c->alpha_pat, path, c->alpha);
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
    rc_t rc = core__lora_cfg_parse(root, &c, err);
    if (!rc)
        rc = core__lora_cfg_base_name(root, p ? p->base_name : NULL, err);
    if (!rc)
        rc = core__lora_cfg_targets_exist(&c, base, err);
    if (!rc)
        rc = lora_build(st, &c, base, out, err);
    core__lora_cfg_free(&c);
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
    return core_lora_load_ex(dir, base, NULL, out, err);
}

rc_t core_lora_load_ex(const char *dir, const core_config_t *base, const core_lora_params_t *p,
                       core_lora_t **out, core_err_t *err)
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
        rc = core_lora_from_parts_ex(text, st, base, p, out, err);
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
