/* router.c - routers as stored objects (store.h "routers"): registration (store_router_put,
 * a task; store_router_import, blocking, from a folder), the expert links, and the parts a
 * resident router entry holds (config text and parsed weights, verified against the row).
 *
 * A router is a row of adapters whose kind is a router kind, two blobs (its config JSON and
 * its weights: X-LoRA classifier, PHATGOOSE gates, or the Arrow prototypes computed here
 * once with core_router_arrow_save) and its router_experts rows: adapter row ids fixed at
 * registration. Registration validates by building the router for real: every expert is
 * read and verified from its blobs (store__load_verified) and core_router_from_parts runs
 * against the base. Then the blobs go through the install protocol exactly like an upload's
 * (temp files fsync'd, then under wmu: checks, rename + folder fsync, row and expert rows in
 * one transaction with the quota check), so a crash leaves the old state or the new one.
 *
 * Expert specs are resolved for the tenant on the loop thread when the call is made (an
 * alias swap that committed before the call is honoured); the insert transaction checks
 * again that each is still live, because the delete's "expert of a live router" check can
 * only see routers that committed.
 *
 * Threads: public functions on the store's thread; rput_work on a pool thread (or, for
 * the blocking import, the caller's). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/safetensors.h"
#include "core/sha256.h"
#include "store/store_int.h"

bool store_kind_is_router(const char *kind)
{
    return kind && (strcmp(kind, "xlora") == 0 || strcmp(kind, "phatgoose") == 0 ||
                    strcmp(kind, "arrow") == 0);
}

rc_t store__err_named(core_err_t *err, rc_t rc, const core_err_t *inner, const char *label)
{
    core_err_t in = {{0}};
    if (inner)
        in = *inner; /* err and inner may be one buffer */
    const char *reason = core_err_reason(&in);
    const char *rest = in.msg + (reason[0] ? strlen(reason) + 2 : 0);
    if (reason[0])
        return core_err_r(err, rc, reason, "%.200s: %.300s", label, rest);
    return core_err(err, rc, "%.200s: %.300s", label, rest);
}

/* The reader caps for a router's weights: a 16 MiB header, and no more tensors than a gate
 * per module (PHATGOOSE), a prototype per module (Arrow) or a classifier's layers. */
static core_st_params_t rt_st_params(const store_t *s)
{
    core_st_params_t sp = core_st_default_params();
    sp.max_header = CORE_LORA_MAX_HEADER;
    sp.max_tensors = (size_t)s->p.base->cfg.n_layers * CORE_MOD__COUNT + 16;
    return sp;
}

/* ---- parts in memory ---- */

void store__rparts_retain(store_rparts_t *p)
{
    __atomic_add_fetch(&p->refcount, 1, __ATOMIC_RELAXED);
}

void store__rparts_release(store_rparts_t *p)
{
    if (!p || __atomic_sub_fetch(&p->refcount, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    core_st_free(p->st);
    free(p->weights);
    free(p->config);
    free(p);
}

static void rt_hash(const uint8_t *buf, size_t len, char hex[65])
{
    core_sha256_t c;
    uint8_t d[32];
    core_sha256_init(&c);
    core_sha256_update(&c, buf, len);
    core_sha256_final(&c, d);
    core_sha256_hex(d, hex);
}

/* Both blobs of row read and checked against its sha256s. */
static rc_t rt_read_blobs(store_t *s, const store_adapter_t *row, uint8_t **cfg, size_t *cfg_len,
                          uint8_t **wts, size_t *wts_len, core_err_t *err)
{
    char cpath[PATH_MAX + 80], wpath[PATH_MAX + 80], chex[65], whex[65];
    if (!store__blob_path(s->data_dir, row->config_sha256, cpath, sizeof cpath) ||
        !store__blob_path(s->data_dir, row->sha256, wpath, sizeof wpath))
        return core_err(err, RC_FORMAT, "router %s@%d has no valid blob names", row->name,
                        row->version);
    rc_t rc = store__read_file(cpath, STORE_CONFIG_MAX, cfg, cfg_len, err);
    if (rc == RC_OK)
        rc = store__read_file(wpath, (uint64_t)row->size, wts, wts_len, err);
    if (rc == RC_LIMIT || (rc == RC_OK && *wts_len != (size_t)row->size))
        return core_err_r(err, RC_MISMATCH, "hash_mismatch",
                          "weights blob size differs from the index's %lld bytes",
                          (long long)row->size);
    if (rc != RC_OK)
        return rc;
    rt_hash(*cfg, *cfg_len, chex);
    rt_hash(*wts, *wts_len, whex);
    if (strcmp(chex, row->config_sha256) != 0 || strcmp(whex, row->sha256) != 0)
        return core_err_r(err, RC_MISMATCH, "hash_mismatch",
                          "stored bytes do not match their sha256 (%s %s)",
                          strcmp(whex, row->sha256) ? "weights" : "config",
                          strcmp(whex, row->sha256) ? whex : chex);
    if (memchr(*cfg, 0, *cfg_len))
        return core_err_r(err, RC_FORMAT, "invalid_config", "router config contains a NUL byte");
    return RC_OK;
}

rc_t store__rparts_load(store_t *s, const store_adapter_t *row, store_rparts_t **out,
                        core_err_t *err)
{
    uint8_t *cfg = NULL, *wts = NULL;
    size_t cfg_len = 0, wts_len = 0;
    core_st_t *st = NULL;
    *out = NULL;
    rc_t rc = rt_read_blobs(s, row, &cfg, &cfg_len, &wts, &wts_len, err);
    core_st_params_t sp = rt_st_params(s);
    if (rc == RC_OK)
        rc = core_st_parse_ex(wts, wts_len, "router weights", &sp, &st, err);
    store_rparts_t *p = rc == RC_OK ? calloc(1, sizeof *p) : NULL;
    if (rc == RC_OK && !p)
        rc = core_err(err, RC_NOMEM, "store: out of memory");
    if (rc != RC_OK) {
        core_st_free(st);
        free(cfg);
        free(wts);
        return rc;
    }
    *p = (store_rparts_t){.config = (char *)cfg, .weights = wts, .weights_len = wts_len,
                          .st = st, .refcount = 1};
    *out = p;
    return RC_OK;
}

/* ---- expert links ---- */

rc_t store_router_experts(store_t *s, int64_t id, char (**specs)[STORE_SPEC_MAX], int *n,
                          core_err_t *err)
{
    store_adapter_t row, rows[CORE_ROUTER_MAX_EXPERTS];
    *specs = NULL;
    *n = 0;
    rc_t rc = store__row_by_id(s, id, &row, err);
    if (rc == RC_OK && !store_kind_is_router(row.kind))
        rc = RC_NOT_FOUND;
    if (rc == RC_NOT_FOUND)
        return core_err(err, RC_NOT_FOUND, "router %lld not found", (long long)id);
    int k = 0;
    if (rc == RC_OK)
        rc = store__router_expert_rows(s, id, rows, &k, err);
    if (rc != RC_OK)
        return rc;
    char(*v)[STORE_SPEC_MAX] = calloc(k ? (size_t)k : 1, sizeof *v);
    if (!v)
        return core_err(err, RC_NOMEM, "store: out of memory");
    for (int i = 0; i < k; i++)
        snprintf(v[i], sizeof v[i], "%s@%d", rows[i].name, rows[i].version);
    *specs = v;
    *n = k;
    return RC_OK;
}

/* ---- registration ---- */

typedef struct {
    store_task_t t;
    store_t *s;
    int64_t tenant;
    int64_t max_bytes;               /* the tenant's max_stored_bytes, 0 = unlimited */
    char name[STORE_NAME_MAX + 1];
    core_router_kind_t kind;
    char *config;                    /* NUL-terminated copy */
    size_t config_len;
    uint8_t *weights;                /* copy, or NULL */
    size_t weights_len;
    int n;
    store_adapter_t experts[CORE_ROUTER_MAX_EXPERTS]; /* resolved at the call */
    bool reuse_same;                 /* imports: an identical newest version is reused */
    store_adapter_t row;
    rc_t rc;                         /* set before the work: a refusal the task reports */
    core_err_t err;
    store_done_fn cb;
    void *user;
} rput_t;

static void rput_free(rput_t *p)
{
    free(p->config);
    free(p->weights);
    free(p);
}

/* Resolve the expert specs for the tenant now. */
static rc_t rput_resolve(rput_t *p, const char *const *specs, core_err_t *err)
{
    store_t *s = p->s;
    for (int i = 0; i < p->n; i++) {
        char label[STORE_NAME_MAX + STORE_SPEC_MAX + 40];
        store_adapter_t *r = &p->experts[i];
        core_err_t e = {{0}};
        snprintf(label, sizeof label, "router '%s': expert '%.80s'", p->name, specs[i]);
        rc_t rc = store__resolve(s, p->tenant, specs[i], r, &e);
        if (rc != RC_OK)
            return store__err_named(err, rc, &e, label);
        if (store_kind_is_router(r->kind))
            return core_err(err, RC_INVALID, "%s: %s@%d is a %s router; experts are LoRA adapters",
                            label, r->name, r->version, r->kind);
        if (r->state == STORE_STATE_BROKEN)
            return core_err(err, RC_UNAVAILABLE, "%s: adapter %s@%d is broken: %s", label,
                            r->name, r->version, r->reason);
        if (strcmp(r->base_fingerprint, s->p.base->fingerprint) != 0)
            return core_err(err, RC_MISMATCH, "%s: adapter %s@%d was imported for a different "
                                              "base model", label, r->name, r->version);
    }
    return RC_OK;
}

/* The expert specs: the caller's, or the config's names. */
static rc_t rput_specs(rput_t *p, const store_router_src_t *src, core_err_t *err)
{
    char names[CORE_ROUTER_MAX_EXPERTS][CORE_ROUTER_MAX_NAME];
    const char *specs[CORE_ROUTER_MAX_EXPERTS];
    int n = 0;
    rc_t rc = core_router_cfg_experts(p->config, &p->kind, names, &n, err);
    if (rc != RC_OK)
        return rc;
    if (src->experts && src->n_experts != n)
        return core_err_r(err, RC_INVALID, "invalid_config",
                          "router '%s': its config names %d experts, %d given", p->name, n,
                          src->n_experts);
    if (n < 1 || n > CORE_ROUTER_MAX_EXPERTS)
        return core_err_r(err, RC_INVALID, "invalid_config", "router '%s': %d experts", p->name, n);
    for (int i = 0; i < n; i++)
        specs[i] = src->experts ? src->experts[i] : names[i];
    for (int i = 0; i < n; i++)
        if (!specs[i] || strlen(specs[i]) >= STORE_SPEC_MAX)
            return core_err(err, RC_NOT_FOUND, "router '%s': expert %d: adapter '%.80s' not found",
                            p->name, i + 1, specs[i] ? specs[i] : "");
    if (p->kind == CORE_ROUTER_ARROW && src->weights)
        return core_err_r(err, RC_INVALID, "unbound_tensor",
                          "router '%s': an Arrow router takes no weights (its prototypes are "
                          "computed from the experts)", p->name);
    p->n = n;
    return rput_resolve(p, specs, err);
}

/* Copy src and check what the loop thread can check. */
static rc_t rput_fill(rput_t *p, const char *name, const store_router_src_t *src,
                      core_err_t *err)
{
    store_t *s = p->s;
    if (!s->p.base)
        return core_err(err, RC_INVALID, "no base model loaded: routers cannot be added");
    if (!store_name_valid(name))
        return core_err(err, RC_INVALID,
                        "invalid router name '%.80s': use 1-%d characters of A-Z a-z 0-9 . _ -, "
                        "starting with a letter or digit", name ? name : "", STORE_NAME_MAX);
    snprintf(p->name, sizeof p->name, "%s", name);
    if (s->writes_failed || store__blob_poisoned()) {
        s->writes_failed = true;
        return core_err(err, RC_UNAVAILABLE, "the store stopped accepting changes after an "
                                             "fsync failure; restart the daemon");
    }
    if (!src || !src->config || (src->weights_len && !src->weights))
        return core_err(err, RC_INVALID, "router '%s': no config", name);
    if (src->config_len > STORE_CONFIG_MAX || src->weights_len > s->p.max_adapter_bytes)
        return core_err(err, RC_LIMIT, "router '%s': the %s is larger than %llu bytes", name,
                        src->config_len > STORE_CONFIG_MAX ? "config" : "weights",
                        (unsigned long long)(src->config_len > STORE_CONFIG_MAX
                                                 ? STORE_CONFIG_MAX : s->p.max_adapter_bytes));
    if (memchr(src->config, 0, src->config_len))
        return core_err_r(err, RC_FORMAT, "invalid_config", "router config contains a NUL byte");
    p->config = malloc(src->config_len + 1);
    p->weights = src->weights ? malloc(src->weights_len ? src->weights_len : 1) : NULL;
    if (!p->config || (src->weights && !p->weights))
        return core_err(err, RC_NOMEM, "store: out of memory");
    memcpy(p->config, src->config, src->config_len);
    p->config[src->config_len] = 0;
    p->config_len = src->config_len;
    if (src->weights)
        memcpy(p->weights, src->weights, src->weights_len);
    p->weights_len = src->weights_len;
    p->max_bytes = store__tenant_max_bytes(s, p->tenant);
    return rput_specs(p, src, err);
}

static void rput_work(store_task_t *t);
static void rput_done(store_task_t *t);

/* A task for name; NULL only when out of memory. A refusal is left in ->rc. */
static rput_t *rput_new(store_t *s, int64_t tenant, const char *name,
                        const store_router_src_t *src, bool reuse_same)
{
    rput_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->t = (store_task_t){rput_work, rput_done};
    p->s = s;
    p->tenant = tenant;
    p->reuse_same = reuse_same;
    p->rc = rput_fill(p, name, src, &p->err);
    return p;
}

/* Load every expert from its verified blobs. */
static rc_t rput_experts(rput_t *p, core_lora_t **loras, core_err_t *err)
{
    for (int i = 0; i < p->n; i++) {
        core_err_t e = {{0}};
        const store_adapter_t *r = &p->experts[i];
        if (store__load_verified(p->s, r, &loras[i], &e) != RC_OK) {
            char label[STORE_NAME_MAX * 2 + 64];
            snprintf(label, sizeof label, "router '%s': expert %s@%d cannot be loaded", p->name,
                     r->name, r->version);
            return store__err_named(err, RC_UNAVAILABLE, &e, label);
        }
    }
    return RC_OK;
}

/* The row fields of a built router (store.h "routers"). */
static void rput_probe(const rput_t *p, const core_router_t *r, size_t weights_len,
                       store_adapter_t *probe)
{
    core_lora_t u;
    memset(probe, 0, sizeof *probe);
    memset(&u, 0, sizeof u);
    snprintf(probe->kind, sizeof probe->kind, "%s", core_router_kind_name(r->kind));
    for (int e = 0; e < r->n_experts; e++) {
        u.target_mask |= r->experts[e]->target_mask;
        if (r->experts[e]->rank > probe->rank)
            probe->rank = r->experts[e]->rank;
    }
    core_lora_targets_str(&u, probe->targets, sizeof probe->targets);
    probe->alpha = 0;
    probe->size = (int64_t)weights_len;
    probe->mem_bytes = (int64_t)r->n_bytes;
    (void)p;
}

/* Both parts into finished (fsync'd) temp blobs. OUT: w[0] config, w[1] weights, hexes. */
static rc_t rput_write_blobs(rput_t *p, const uint8_t *wts, size_t wts_len,
                             store_blob_writer_t *w[2], store_adapter_t *probe, core_err_t *err)
{
    store_t *s = p->s;
    rc_t rc = store__blob_writer_new(s->data_dir, STORE_CONFIG_MAX, &w[0], err);
    if (rc == RC_OK)
        rc = store__blob_write(w[0], p->config, p->config_len, err);
    if (rc == RC_OK)
        rc = store__blob_finish(w[0], probe->config_sha256, NULL, err);
    if (rc == RC_OK)
        rc = store__blob_writer_new(s->data_dir, s->p.max_adapter_bytes, &w[1], err);
    if (rc == RC_OK)
        rc = store__blob_write(w[1], wts, wts_len, err);
    if (rc == RC_OK)
        rc = store__blob_finish(w[1], probe->sha256, NULL, err);
    return rc;
}

static rc_t rput_install(void *ctx, core_err_t *err)
{
    store_blob_writer_t **w = ctx;
    rc_t rc = store__blob_install(w[0], err);
    if (rc == RC_OK)
        rc = store__blob_install(w[1], err);
    return rc;
}

/* Write the blobs and index the row with its experts (the install protocol). */
static rc_t rput_commit(rput_t *p, const core_router_t *r, const uint8_t *wts, size_t wts_len,
                        core_err_t *err)
{
    store_t *s = p->s;
    store_blob_writer_t *w[2] = {NULL, NULL};
    store_adapter_t probe;
    int64_t ids[CORE_ROUTER_MAX_EXPERTS];
    rput_probe(p, r, wts_len, &probe);
    rc_t rc = RC_OK;
    /* in use, a router holds its parts and every expert at once */
    uint64_t need = (uint64_t)probe.mem_bytes;
    for (int i = 0; i < p->n; i++)
        need += (uint64_t)p->experts[i].mem_bytes;
    if (need > s->p.cache_budget_bytes)
        rc = core_err_r(err, RC_LIMIT, "exceeds_cache",
                        "the router needs %llu bytes in memory with its experts, more than the "
                        "whole adapter cache (--adapter-cache-bytes %llu)",
                        (unsigned long long)need, (unsigned long long)s->p.cache_budget_bytes);
    if (rc == RC_OK)
        rc = rput_write_blobs(p, wts, wts_len, w, &probe, err);
    for (int i = 0; i < p->n; i++)
        ids[i] = p->experts[i].id;
    store_insert_t in = {.tenant = p->tenant, .max_bytes = p->max_bytes, .name = p->name,
                         .probe = &probe, .reuse_same = p->reuse_same, .experts = ids,
                         .n_experts = p->n};
    if (rc == RC_OK) {
        pthread_mutex_lock(&s->wmu);
        rc = store__w_insert(s, &in, rput_install, w, &p->row, err);
        pthread_mutex_unlock(&s->wmu);
    }
    store__blob_writer_free(w[0]);
    store__blob_writer_free(w[1]);
    return rc;
}

/* Build the router against the base (the validation), then commit it. */
static rc_t rput_run(rput_t *p, core_err_t *err)
{
    store_t *s = p->s;
    core_lora_t *loras[CORE_ROUTER_MAX_EXPERTS] = {0};
    core_st_t *st = NULL;
    core_router_t *r = NULL;
    uint8_t *img = NULL;
    size_t img_len = 0;
    core_st_params_t sp = rt_st_params(s);
    rc_t rc = rput_experts(p, loras, err);
    if (rc == RC_OK && p->weights)
        rc = core_st_parse_ex(p->weights, p->weights_len, "router weights", &sp, &st, err);
    if (rc == RC_OK)
        rc = core_router_from_parts(p->config, st, loras, p->n, &s->p.base->cfg, &r, err);
    /* Arrow: the prototypes (an SVD per module and expert) are computed once, here, and
     * stored as the weights blob, so a load reads them instead of recomputing. */
    if (rc == RC_OK && r->kind == CORE_ROUTER_ARROW)
        rc = core_router_arrow_save(r, &img, &img_len, err);
    if (rc == RC_OK)
        rc = img ? rput_commit(p, r, img, img_len, err)
                 : rput_commit(p, r, p->weights, p->weights_len, err);
    free(img);
    core_router_release(r);
    core_st_free(st);
    for (int i = 0; i < p->n; i++)
        if (loras[i])
            core_lora_release(loras[i]);
    return rc;
}

static void rput_work(store_task_t *t)
{
    rput_t *p = (rput_t *)t;
    if (p->rc == RC_OK)
        p->rc = rput_run(p, &p->err);
}

static void rput_done(store_task_t *t)
{
    rput_t *p = (rput_t *)t;
    store_t *s = p->s;
    if (store__blob_poisoned())
        s->writes_failed = true;
    if (p->cb)
        p->cb(p->user, p->rc, p->rc == RC_OK ? &p->row : NULL, &p->err);
    rput_free(p);
    store__task_end(s);
}

void store_router_put(store_t *s, int64_t tenant, const char *name,
                      const store_router_src_t *src, store_done_fn cb, void *user)
{
    rput_t *p = rput_new(s, tenant, name, src, false);
    if (!p) {
        core_err_t err;
        core_err(&err, RC_NOMEM, "store: out of memory");
        cb(user, RC_NOMEM, NULL, &err);
        return;
    }
    p->cb = cb;
    p->user = user;
    store__task_submit(s, &p->t); /* a refusal too: cb never runs inside the call */
}

/* ---- folders ---- */

static bool rt_is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static bool rt_is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

bool store__is_router_dir(const char *dir, const char *entry)
{
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, entry) >= sizeof path)
        return false;
    return rt_is_dir(path) && core_router_dir_is_router(path);
}

/* A folder's router files, in core_router_load_dir's order: the config (xlora_config.json,
 * router_config.json, else an X-LoRA adapter_config.json) and its weights file (NULL when
 * the kind has none: Arrow). OUT: *cfg, *wts malloc'd. */
static rc_t rimp_read(store_t *s, const char *dir, uint8_t **cfg, size_t *cfg_len,
                      uint8_t **wts, size_t *wts_len, core_err_t *err)
{
    static const char *const files[] = {"xlora_config.json", "router_config.json",
                                         "adapter_config.json"};
    char path[PATH_MAX + 64];
    char names[CORE_ROUTER_MAX_EXPERTS][CORE_ROUTER_MAX_NAME];
    core_router_kind_t kind;
    int n = 0;
    size_t f = 0;
    for (; f < 3; f++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[f]);
        if (rt_is_file(path))
            break;
    }
    if (f == 3)
        return core_err(err, RC_NOT_FOUND, "%.200s: no router config", dir);
    rc_t rc = store__read_file(path, STORE_CONFIG_MAX, cfg, cfg_len, err);
    if (rc == RC_OK && memchr(*cfg, 0, *cfg_len))
        rc = core_err_r(err, RC_FORMAT, "invalid_config", "%s: contains a NUL byte", path);
    if (rc == RC_OK)
        rc = core_router_cfg_experts((const char *)*cfg, &kind, names, &n, err);
    if (rc != RC_OK || kind == CORE_ROUTER_ARROW)
        return rc;
    const char *w = kind == CORE_ROUTER_PHATGOOSE ? "router_gates.safetensors"
                    : f == 2                      ? "adapter_model.safetensors"
                                                  : "xlora_classifier.safetensors";
    snprintf(path, sizeof path, "%s/%s", dir, w);
    return store__read_file(path, s->p.max_adapter_bytes, wts, wts_len, err);
}

/* Import DIR/<expert>/ as "<name>.<expert>" when that folder exists. OUT: spec (or "" when
 * there is no such folder). */
static rc_t rimp_expert(store_t *s, int64_t tenant, const char *dir, const char *name,
                        const char *expert, char spec[STORE_SPEC_MAX], core_err_t *err)
{
    char sub[PATH_MAX + CORE_ROUTER_MAX_NAME], aname[STORE_NAME_MAX * 2 + CORE_ROUTER_MAX_NAME];
    char label[STORE_NAME_MAX + CORE_ROUTER_MAX_NAME + 32];
    store_adapter_t row;
    core_err_t e = {{0}};
    spec[0] = 0;
    snprintf(sub, sizeof sub, "%s/%s", dir, expert);
    if (!rt_is_dir(sub))
        return RC_OK;
    snprintf(label, sizeof label, "router '%s': expert '%s'", name, expert);
    snprintf(aname, sizeof aname, "%s.%s", name, expert);
    if (!store_name_valid(aname))
        return core_err(err, RC_INVALID, "%s: '%.80s' is not a valid adapter name", label, aname);
    rc_t rc = store_import(s, tenant, sub, aname, NULL, NULL, &row, &e);
    if (rc != RC_OK)
        return store__err_named(err, rc, &e, label);
    snprintf(spec, STORE_SPEC_MAX, "%s@%d", row.name, row.version);
    return RC_OK;
}

/* The experts: sub-folders imported first, else the caller's specs or the config's names.
 * A refused expert refuses the router; the experts imported before it stay. They are valid
 * adapters in their own right, and importing the folder again after the fix reuses them
 * (an identical newest version is not imported twice), so no half-state needs undoing -
 * while deleting them here could race a request that already resolved one. */
static rc_t rimp_specs(store_t *s, int64_t tenant, const char *dir, const char *name,
                       const char *cfg, const char *const *experts, int n_experts,
                       char specs[][STORE_SPEC_MAX], int *n, core_err_t *err)
{
    char names[CORE_ROUTER_MAX_EXPERTS][CORE_ROUTER_MAX_NAME];
    core_router_kind_t kind;
    rc_t rc = core_router_cfg_experts(cfg, &kind, names, n, err);
    if (rc != RC_OK)
        return rc;
    if (experts && n_experts != *n)
        return core_err_r(err, RC_INVALID, "invalid_config",
                          "router '%s': its config names %d experts, %d given", name, *n,
                          n_experts);
    for (int i = 0; rc == RC_OK && i < *n; i++) {
        rc = rimp_expert(s, tenant, dir, name, names[i], specs[i], err);
        if (rc == RC_OK && !specs[i][0])
            snprintf(specs[i], STORE_SPEC_MAX, "%.*s", STORE_SPEC_MAX - 1,
                     experts ? experts[i] : names[i]);
    }
    return rc;
}

rc_t store_router_import(store_t *s, int64_t tenant, const char *dir, const char *name,
                         const char *const *experts, int n_experts, store_adapter_t *row,
                         core_err_t *err)
{
    uint8_t *cfg = NULL, *wts = NULL;
    size_t cfg_len = 0, wts_len = 0;
    char specs[CORE_ROUTER_MAX_EXPERTS][STORE_SPEC_MAX];
    const char *sp[CORE_ROUTER_MAX_EXPERTS];
    int n = 0;
    if (!s->p.base)
        return core_err(err, RC_INVALID, "no base model loaded: routers cannot be added");
    if (!store_name_valid(name))
        return core_err(err, RC_INVALID, "invalid router name '%.80s'", name ? name : "");
    rc_t rc = rimp_read(s, dir, &cfg, &cfg_len, &wts, &wts_len, err);
    if (rc == RC_OK)
        rc = rimp_specs(s, tenant, dir, name, (const char *)cfg, experts, n_experts, specs, &n,
                        err);
    for (int i = 0; i < n; i++)
        sp[i] = specs[i];
    store_router_src_t src = {.config = (const char *)cfg, .config_len = cfg_len,
                              .weights = wts, .weights_len = wts_len, .experts = sp,
                              .n_experts = n};
    rput_t *p = rc == RC_OK ? rput_new(s, tenant, name, &src, true) : NULL;
    if (rc == RC_OK && !p)
        rc = core_err(err, RC_NOMEM, "store: out of memory");
    if (p) {
        rput_work(&p->t); /* blocking: the task's work on this thread */
        rc = p->rc;
        if (rc != RC_OK && err)
            *err = p->err;
        else if (row)
            *row = p->row;
        rput_free(p);
    }
    free(cfg);
    free(wts);
    return rc;
}
