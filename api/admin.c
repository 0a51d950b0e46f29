/* admin.c - the adapter store's admin API (docs/API.md, "Adapter admin"): list and show
 * adapters and aliases (answered at once from the index), and the changes - delete, alias
 * put/delete, pin/unpin, vLLM's load/unload of server-side folders - which run as store
 * tasks and are answered from the store's callback through a pending job (api_change_t).
 *
 * A change is never stopped by its client going away: the index change is what the client
 * asked for, and stopping half-way would leave the client unsure whether it happened. So
 * cancel only marks the job; the callback still answers and ends the sink, and the server
 * frees the job after that end. The callback touches nothing of the job after the answer
 * (the server may free it inside end).
 * Threads: the loop thread (store callbacks run there too). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/json_util.h"
#include "api/tenancy.h"

/* ---- pending changes ----------------------------------------------------------------- */

struct api_change {
    api_job_t base; /* first: the generic job */
    api_t *a;
    api_sink_t *sink; /* borrowed: the server keeps it until api_job_free */
    api_change_answer_fn answer;
    int64_t tenant; /* the namespace the change acts in */
    char arg[API_PARAM_MAX + 1];
    char *arg2;     /* the store call's second string (malloc'd, or NULL) */
    bool answered;  /* the store's callback ran */
    bool cancelled; /* the client went away (the answer goes nowhere, but still ends) */
};

static void change_cancel(api_t *a, api_job_t *job)
{
    (void)a;
    ((api_change_t *)job)->cancelled = true;
}

static void change_free(api_t *a, api_job_t *job)
{
    (void)a;
    free(((api_change_t *)job)->arg2);
    free(job);
}

static const api_job_ops_t change_ops = {change_cancel, change_free};

api_change_t *api__change_new(api_t *a, int64_t tenant, api_sink_t *sink,
                              api_change_answer_fn answer, const char *arg)
{
    api_change_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->base.ops = &change_ops;
    c->a = a;
    c->sink = sink;
    c->answer = answer;
    c->tenant = tenant;
    snprintf(c->arg, sizeof c->arg, "%s", arg ? arg : "");
    return c;
}

void api__change_done(void *user, rc_t rc, const store_adapter_t *row, const core_err_t *err)
{
    api_change_t *c = user;
    c->answered = true;
    /* Last touch of c: once the answer ends the sink the server may free the job. */
    c->answer(c->a, c->sink, c->tenant, c->arg, rc, row, err);
}

void api__change_started(api_t *a, api_change_t *c, api_job_t **job)
{
    /* A synchronous executor answers inside the store call: then the response is complete
     * and no job is pending (the server never saw this one). */
    if (c->answered) {
        change_free(a, &c->base);
        *job = NULL;
        return;
    }
    *job = &c->base;
}

/* ---- JSON of rows ---------------------------------------------------------------------- */

/* A router's experts as "NAME@VERSION" specs, in expert order ([] if unreadable). */
static json_t *router_experts_json(api_t *a, const store_adapter_t *r)
{
    char (*specs)[STORE_SPEC_MAX] = NULL;
    int n = 0;
    core_err_t err = {{0}};
    json_t *arr = json_array();
    if (store_router_experts(a->p.store, r->id, &specs, &n, &err) == RC_OK)
        for (int i = 0; arr && i < n; i++)
            json_array_append_new(arr, json_string(specs[i]));
    free(specs);
    return arr;
}

json_t *api__adapter_json(api_t *a, const store_adapter_t *r)
{
    store_runtime_t rt = {0};
    char id[STORE_SPEC_MAX + 8];
    if (a->p.store)
        store_runtime(a->p.store, r->id, &rt);
    snprintf(id, sizeof id, "%s@%d", r->name, r->version);
    json_t *o = json_pack(
        "{s:s,s:s,s:s,s:i,s:s,s:i,s:f,s:o,s:s,s:s,s:s,s:I,s:I,s:I,s:o,s:I,s:b,s:s,s:b,s:b,s:i}",
        "object", "adapter", "id", id, "name", r->name, "version", r->version, "kind", r->kind,
        "rank", r->rank, "alpha", r->alpha, "target_modules", api__csv_json(r->targets),
        "base_fingerprint", r->base_fingerprint, "sha256", r->sha256, "config_sha256",
        r->config_sha256, "size_bytes", (json_int_t)r->size, "memory_bytes",
        (json_int_t)r->mem_bytes, "created", (json_int_t)r->created, "last_used",
        r->last_used ? json_integer(r->last_used) : json_null(), "requests",
        (json_int_t)r->n_requests, "pinned", r->pinned, "state",
        store_state_str(rt.broken ? STORE_STATE_BROKEN : r->state), "resident", rt.resident,
        "loading", rt.loading, "in_use", rt.n_users);
    if (o) { /* shared: another tenant's adapter this caller may use, not change */
        json_object_set_new(o, "shared", json_boolean(r->shared));
        json_object_set_new(o, "published", json_boolean(r->published));
    }
    if (o && a->p.store && store_kind_is_router(r->kind))
        json_object_set_new(o, "experts", router_experts_json(a, r));
    /* A load that just found it broken knows before the index does. */
    const char *why = r->state == STORE_STATE_BROKEN ? r->reason : rt.broken ? rt.reason : NULL;
    if (o && why)
        json_object_set_new(o, "reason", api__json_text(why, strlen(why)));
    return o;
}

static json_t *alias_json(const store_alias_t *al)
{
    return json_pack("{s:s,s:s,s:s,s:I}", "object", "alias", "name", al->name, "adapter",
                     al->target, "updated", (json_int_t)al->updated);
}

/* ---- errors ------------------------------------------------------------------------------ */

bool api__fail_store(api_fail_t *f, rc_t rc, const core_err_t *err)
{
    const char *msg = err && err->msg[0] ? err->msg : rc_str(rc);
    switch (rc) {
    case RC_LIMIT:
    case RC_MISMATCH:
    case RC_UNSUPPORTED:
    case RC_FORMAT:
        /* a refused adapter file: the status and code as below, plus error.reason */
        api__fail(f, rc == RC_LIMIT ? 413 : 422, rc == RC_LIMIT ? "adapter_too_large" : rc_name(rc),
                  "%s", msg);
        api__fail_reason(f, err);
        return false;
    case RC_NOT_FOUND:
        return api__fail(f, 404, "adapter_not_found", "%s", msg);
    case RC_INVALID:
        return api__fail(f, 400, "invalid_name", "%s", msg);
    case RC_EXISTS:
        return api__fail(f, 409, "name_conflict", "%s", msg);
    case RC_UNAVAILABLE:
        return api__fail(f, 503, "store_unavailable", "%s", msg);
    case RC_NOSPACE:
        return api__fail(f, 507, "insufficient_storage", "%s", msg);
    case RC_QUOTA: /* only deletes make room: no point retrying within the hour */
        api__fail(f, 429, "storage_quota_exceeded", "%s", msg);
        snprintf(f->headers, sizeof f->headers, "Retry-After: 3600\r\n");
        return false;
    default:
        return api__fail_rc(f, rc, err);
    }
}

static bool fail_no_store(api_fail_t *f)
{
    return api__fail(f, 503, "store_unavailable", "this server has no adapter store");
}

static void send_fail_store(api_sink_t *sink, rc_t rc, const core_err_t *err)
{
    api_fail_t f;
    api__fail_store(&f, rc, err);
    api__send_fail(sink, &f);
}

/* ---- names and specs ------------------------------------------------------------------- */

static bool fail_name(api_fail_t *f, const char *what, const char *s)
{
    return api__fail(f, 400, "invalid_name",
                     "%s `%.100s` is not valid: 1-%d characters of A-Z a-z 0-9 . _ -, starting "
                     "with a letter or digit",
                     what, s, STORE_NAME_MAX);
}

/* NAME or NAME@VERSION (VERSION a positive decimal). OUT: name, *version (0: none). */
static bool spec_parse(const char *spec, char name[STORE_NAME_MAX + 1], int *version, api_fail_t *f)
{
    const char *at = strchr(spec, '@');
    size_t n = at ? (size_t)(at - spec) : strlen(spec);
    *version = 0;
    if (n == 0 || n > STORE_NAME_MAX)
        return fail_name(f, "the adapter name in", spec);
    memcpy(name, spec, n);
    name[n] = '\0';
    if (!store_name_valid(name))
        return fail_name(f, "the adapter name in", spec);
    if (!at)
        return true;
    const char *v = at + 1;
    size_t nv = strlen(v);
    if (nv == 0 || nv > 9 || v[0] == '0' || strspn(v, "0123456789") != nv)
        return api__fail(f, 400, "invalid_name",
                         "`%.100s`: the version after @ must be a positive decimal number", spec);
    *version = atoi(v);
    return true;
}

/* The alias called name. RC_NOT_FOUND when there is none. OUT: *out. */
static rc_t alias_find(api_t *a, int64_t tenant, const char *name, store_alias_t *out,
                       core_err_t *err)
{
    store_alias_t *rows = NULL;
    size_t n = 0;
    rc_t rc = store_aliases(a->p.store, tenant, &rows, &n, err);
    if (rc != RC_OK)
        return rc;
    rc = RC_NOT_FOUND;
    for (size_t i = 0; i < n && rc == RC_NOT_FOUND; i++) {
        if (strcmp(rows[i].name, name) == 0) {
            *out = rows[i];
            rc = RC_OK;
        }
    }
    free(rows);
    return rc;
}

/* Admin POSTs without fields (pin, unpin) take no body, or an empty JSON object. */
static bool empty_body(const api_request_t *req, api_fail_t *f)
{
    static const char *const none[] = {NULL};
    json_t *root = NULL;
    size_t i = 0;
    while (i < req->body_len && strchr(" \t\r\n", req->body[i]))
        i++;
    if (i == req->body_len)
        return true;
    bool ok = api__parse_body(req, &root, f) && api__check_fields(root, none, f);
    json_decref(root);
    return ok;
}

/* ---- GET: adapters and aliases ---------------------------------------------------------- */

void api__h_adapters_list(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    (void)req;
    (void)job;
    store_adapter_t *rows = NULL;
    size_t n = 0;
    if (!api__list_adapters(a, api__who(req)->tenant, sink, &rows, &n))
        return;
    json_t *data = json_array();
    for (size_t i = 0; data && i < n; i++)
        json_array_append_new(data, api__adapter_json(a, &rows[i]));
    free(rows);
    api__send_json(sink, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}

/* {"object": "adapter.versions", ...} of every live version of name. RC_NOT_FOUND: none. */
static rc_t adapter_versions(api_t *a, int64_t tenant, const char *name, json_t **out,
                             core_err_t *err)
{
    store_adapter_t *rows = NULL;
    store_alias_t *al = NULL;
    size_t n = 0, n_al = 0, len = strlen(name);
    rc_t rc = store_versions(a->p.store, tenant, name, &rows, &n, err);
    if (rc == RC_OK)
        rc = store_aliases(a->p.store, tenant, &al, &n_al, err);
    if (rc != RC_OK) {
        free(rows);
        return rc;
    }
    json_t *data = json_array(), *aliases = json_array();
    for (size_t i = 0; data && i < n; i++)
        json_array_append_new(data, api__adapter_json(a, &rows[i]));
    for (size_t i = 0; aliases && i < n_al; i++)
        if (strncmp(al[i].target, name, len) == 0 && al[i].target[len] == '@')
            json_array_append_new(aliases, json_string(al[i].name));
    *out = json_pack("{s:s,s:s,s:o,s:o}", "object", "adapter.versions", "name", name, "data", data,
                     "aliases", aliases);
    free(rows);
    free(al);
    return RC_OK;
}

/* GET /v1/adapters/NAME (every version), NAME@V or ALIAS (one adapter object). */
void api__hp_adapter_get(api_t *a, const api_request_t *req, const char *spec, api_sink_t *sink,
                         api_job_t **job)
{
    (void)req;
    (void)job;
    api_fail_t f;
    core_err_t err = {{0}};
    char name[STORE_NAME_MAX + 1];
    int version = 0;
    json_t *doc = NULL;
    store_adapter_t row;
    if (!a->p.store || !spec_parse(spec, name, &version, &f)) {
        if (!a->p.store)
            fail_no_store(&f);
        api__send_fail(sink, &f);
        return;
    }
    rc_t rc = version ? RC_NOT_FOUND : adapter_versions(a, api__who(req)->tenant, name, &doc, &err);
    if (rc == RC_NOT_FOUND) { /* NAME@V, or an alias */
        rc = store_resolve(a->p.store, api__who(req)->tenant, spec, &row, &err);
        if (rc == RC_OK)
            doc = api__adapter_json(a, &row);
    }
    if (rc == RC_NOT_FOUND)
        api_send_error(sink, 404, NULL, "adapter_not_found", "no adapter or alias by that name");
    else if (rc != RC_OK)
        send_fail_store(sink, rc, &err);
    else
        api__send_json(sink, 200, doc);
}

void api__h_aliases_list(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    (void)req;
    (void)job;
    store_alias_t *rows = NULL;
    size_t n = 0;
    core_err_t err = {{0}};
    rc_t rc = a->p.store ? store_aliases(a->p.store, api__who(req)->tenant, &rows, &n, &err) : RC_OK;
    if (rc != RC_OK) {
        send_fail_store(sink, rc, &err);
        return;
    }
    json_t *data = json_array();
    for (size_t i = 0; data && i < n; i++)
        json_array_append_new(data, alias_json(&rows[i]));
    free(rows);
    api__send_json(sink, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}

void api__hp_alias_get(api_t *a, const api_request_t *req, const char *name, api_sink_t *sink,
                       api_job_t **job)
{
    (void)req;
    (void)job;
    api_fail_t f;
    store_alias_t al;
    core_err_t err = {{0}};
    if (!store_name_valid(name)) {
        fail_name(&f, "the alias name", name);
        api__send_fail(sink, &f);
        return;
    }
    rc_t rc = a->p.store ? alias_find(a, api__who(req)->tenant, name, &al, &err) : RC_NOT_FOUND;
    if (rc == RC_NOT_FOUND)
        api_send_error(sink, 404, NULL, "alias_not_found", "no alias by that name");
    else if (rc != RC_OK)
        send_fail_store(sink, rc, &err);
    else
        api__send_json(sink, 200, alias_json(&al));
}

/* ---- changes -------------------------------------------------------------------------------- */

/* Start a change on the store: the job is made first so a synchronous executor's
 * callback has somewhere to answer. start runs the store call with (user = c) on copies
 * of arg and arg2 the job owns, so they outlive the task whatever the store keeps. */
typedef void (*change_start_fn)(api_t *a, const char *arg, const char *arg2, api_change_t *c);

static void change_run(api_t *a, const api_request_t *req, api_sink_t *sink,
                       api_change_answer_fn answer, const char *arg, const char *arg2,
                       change_start_fn start, api_job_t **job)
{
    api_change_t *c = api__change_new(a, api__who(req)->tenant, sink, answer, arg);
    if (c && arg2) {
        c->arg2 = strdup(arg2);
        if (!c->arg2) {
            change_free(a, &c->base);
            c = NULL;
        }
    }
    if (!c) {
        api_send_error(sink, 500, NULL, "nomem", "out of memory");
        return;
    }
    start(a, c->arg, c->arg2, c);
    api__change_started(a, c, job);
}

static void answer_deleted(api_t *a, api_sink_t *sink, int64_t tenant,
                        const char *spec, rc_t rc,
                           const store_adapter_t *row, const core_err_t *err)
{
    (void)tenant;
    (void)a;
    (void)spec;
    char id[STORE_SPEC_MAX + 8];
    if (rc == RC_EXISTS && err && strstr(err->msg, "is an expert of router")) {
        api_send_error(sink, 409, NULL, "expert_in_use", err->msg);
        return;
    }
    if (rc == RC_EXISTS) {
        api_send_error(sink, 409, NULL, "alias_conflict",
                       err && err->msg[0] ? err->msg
                                          : "an alias points at a version to delete: repoint or "
                                            "delete the alias first");
        return;
    }
    if (rc != RC_OK || !row) {
        send_fail_store(sink, rc, err);
        return;
    }
    snprintf(id, sizeof id, "%s@%d", row->name, row->version);
    api__send_json(sink, 200,
                   json_pack("{s:s,s:s,s:b}", "object", "adapter.deleted", "id", id, "deleted", 1));
}

static void start_delete(api_t *a, const char *spec, const char *unused, api_change_t *c)
{
    (void)unused;
    store_delete(a->p.store, c->tenant, spec, api__change_done, c);
}

void api__hp_adapter_delete(api_t *a, const api_request_t *req, const char *spec, api_sink_t *sink,
                            api_job_t **job)
{
    (void)req;
    api_fail_t f;
    char name[STORE_NAME_MAX + 1];
    int version;
    if (!a->p.store || !spec_parse(spec, name, &version, &f)) {
        if (!a->p.store)
            fail_no_store(&f);
        api__send_fail(sink, &f);
        return;
    }
    change_run(a, req, sink, answer_deleted, spec, NULL, start_delete, job);
}

static void answer_pin(api_t *a, api_sink_t *sink, int64_t tenant,
                        const char *spec, rc_t rc,
                       const store_adapter_t *row, const core_err_t *err)
{
    (void)tenant;
    (void)spec;
    if (rc != RC_OK || !row) {
        send_fail_store(sink, rc, err);
        return;
    }
    api__send_json(sink, 200, api__adapter_json(a, row));
}

static void start_pin(api_t *a, const char *spec, const char *pin, api_change_t *c)
{
    store_pin(a->p.store, c->tenant, spec, pin != NULL, api__change_done, c);
}

static void adapter_pin(api_t *a, const api_request_t *req, const char *spec, bool pin,
                        api_sink_t *sink, api_job_t **job)
{
    api_fail_t f;
    char name[STORE_NAME_MAX + 1];
    int version;
    if (!a->p.store || !spec_parse(spec, name, &version, &f) || !empty_body(req, &f)) {
        if (!a->p.store)
            fail_no_store(&f);
        api__send_fail(sink, &f);
        return;
    }
    change_run(a, req, sink, answer_pin, spec, pin ? "pin" : NULL, start_pin, job);
}

void api__hp_adapter_pin(api_t *a, const api_request_t *req, const char *spec, api_sink_t *sink,
                         api_job_t **job)
{
    adapter_pin(a, req, spec, true, sink, job);
}

void api__hp_adapter_unpin(api_t *a, const api_request_t *req, const char *spec, api_sink_t *sink,
                           api_job_t **job)
{
    adapter_pin(a, req, spec, false, sink, job);
}

static void answer_alias_put(api_t *a, api_sink_t *sink, int64_t tenant,
                        const char *alias, rc_t rc,
                             const store_adapter_t *row, const core_err_t *err)
{
    store_alias_t al;
    core_err_t e2 = {{0}};
    if (rc == RC_EXISTS) {
        api_send_error(sink, 409, NULL, "name_conflict",
                       err && err->msg[0] ? err->msg : "the alias name is an adapter's name");
        return;
    }
    if (rc != RC_OK || !row) {
        send_fail_store(sink, rc, err);
        return;
    }
    /* The row is the target version; the alias row has the commit time. */
    if (alias_find(a, tenant, alias, &al, &e2) != RC_OK) {
        snprintf(al.name, sizeof al.name, "%s", alias);
        snprintf(al.target, sizeof al.target, "%s@%d", row->name, row->version);
        al.updated = (int64_t)time(NULL);
    }
    api__send_json(sink, 200, alias_json(&al));
}

static void start_alias_put(api_t *a, const char *alias, const char *target, api_change_t *c)
{
    store_alias_put(a->p.store, c->tenant, alias, target, api__change_done, c);
}

/* The body of PUT /v1/aliases/ALIAS: {"adapter": "NAME" or "NAME@V"}. OUT: target. */
static bool alias_body(const api_request_t *req, char target[STORE_SPEC_MAX], api_fail_t *f)
{
    static const char *const fields[] = {"adapter", NULL};
    json_t *root = NULL;
    const char *spec = NULL;
    char name[STORE_NAME_MAX + 1];
    int version;
    bool ok = api__parse_body(req, &root, f) && api__check_fields(root, fields, f) &&
              api__get_str(root, "adapter", &spec, NULL, f);
    if (ok && !spec)
        ok = api__fail(f, 400, "missing_field", "`adapter` is required (\"NAME\" or \"NAME@V\")");
    if (ok && strlen(spec) >= STORE_SPEC_MAX)
        ok = fail_name(f, "`adapter`", spec);
    if (ok && spec_parse(spec, name, &version, f))
        snprintf(target, STORE_SPEC_MAX, "%s", spec);
    else
        ok = false;
    json_decref(root);
    return ok;
}

void api__hp_alias_put(api_t *a, const api_request_t *req, const char *alias, api_sink_t *sink,
                       api_job_t **job)
{
    api_fail_t f;
    char target[STORE_SPEC_MAX];
    bool ok = a->p.store ? true : fail_no_store(&f);
    if (ok && !store_name_valid(alias))
        ok = fail_name(&f, "the alias name", alias);
    if (ok && !alias_body(req, target, &f))
        ok = false;
    if (!ok) {
        api__send_fail(sink, &f);
        return;
    }
    change_run(a, req, sink, answer_alias_put, alias, target, start_alias_put, job);
}

static void answer_alias_deleted(api_t *a, api_sink_t *sink, int64_t tenant,
                        const char *alias, rc_t rc,
                                 const store_adapter_t *row, const core_err_t *err)
{
    (void)tenant;
    (void)a;
    (void)row;
    if (rc == RC_NOT_FOUND) {
        api_send_error(sink, 404, NULL, "alias_not_found", "no alias by that name");
        return;
    }
    if (rc != RC_OK) {
        send_fail_store(sink, rc, err);
        return;
    }
    api__send_json(
        sink, 200,
        json_pack("{s:s,s:s,s:b}", "object", "alias.deleted", "name", alias, "deleted", 1));
}

static void start_alias_delete(api_t *a, const char *alias, const char *unused, api_change_t *c)
{
    (void)unused;
    store_alias_delete(a->p.store, c->tenant, alias, api__change_done, c);
}

void api__hp_alias_delete(api_t *a, const api_request_t *req, const char *alias, api_sink_t *sink,
                          api_job_t **job)
{
    (void)req;
    api_fail_t f;
    bool ok = a->p.store ? true : fail_no_store(&f);
    if (ok && !store_name_valid(alias))
        ok = fail_name(&f, "the alias name", alias);
    if (!ok) {
        api__send_fail(sink, &f);
        return;
    }
    change_run(a, req, sink, answer_alias_deleted, alias, NULL, start_alias_delete, job);
}

/* ---- vLLM: load / unload a server-side folder -------------------------------------------- */

static void send_text(api_sink_t *sink, int status, const char *text)
{
    sink->begin(sink->self, status, "text/plain; charset=utf-8", false, NULL);
    sink->write(sink->self, text, strlen(text));
    sink->end(sink->self);
}

/* path resolved (realpath: symlinks and .. gone) equals a root or lies under one. One
 * answer for "outside" and "does not exist", so the endpoint never tells what exists
 * outside the roots. OUT: real. (realpath stats a few folders on the loop thread: cheap
 * next to the import itself, which runs on the executor.) */
/* real (already resolved) lies inside one of the roots. */
static bool inside_roots(api_t *a, const char *real)
{
    char root[PATH_MAX];
    for (int i = 0; i < a->p.n_adapter_roots; i++) {
        const char *r = a->p.adapter_roots[i];
        if (!r || !realpath(r, root))
            continue;
        size_t n = strlen(root);
        if (n == 1 || (strncmp(real, root, n) == 0 && (real[n] == '\0' || real[n] == '/')))
            return true;
    }
    return false;
}

/* The folder and both files it holds resolve (symlinks followed) inside a root: a link
 * inside a root (the Hugging Face cache layout) is fine, one that leads out is not. */
static bool path_confined(api_t *a, const char *path, char real[PATH_MAX], api_fail_t *f)
{
    static const char *const files[] = {"adapter_config.json", "adapter_model.safetensors"};
    char file[PATH_MAX + 64], freal[PATH_MAX];
    bool ok = realpath(path, real) && inside_roots(a, real);
    for (size_t i = 0; ok && i < sizeof files / sizeof files[0]; i++) {
        snprintf(file, sizeof file, "%s/%s", real, files[i]);
        ok = !realpath(file, freal) || inside_roots(a, freal); /* missing: the import says so */
    }
    if (ok)
        return true;
    return api__fail(f, 400, "invalid_path",
                     "`lora_path` must be an existing folder inside one of the "
                     "--adapter-roots folders, and its files must be inside one too");
}

/* A required string field without NUL bytes. OUT: *s borrowed. */
static bool req_str(const json_t *root, const char *key, const char **s, api_fail_t *f)
{
    size_t len = 0;
    *s = NULL;
    if (!api__get_str(root, key, s, &len, f))
        return false;
    if (!*s)
        return api__fail(f, 400, "missing_field", "`%s` is required", key);
    if (len == 0 || strlen(*s) != len)
        return api__fail(f, 400, "invalid_value", "`%s` must be a non-empty string without NUL",
                         key);
    return true;
}

static void answer_vllm_load(api_t *a, api_sink_t *sink, int64_t tenant,
                        const char *name, rc_t rc,
                             const store_adapter_t *row, const core_err_t *err)
{
    char msg[STORE_NAME_MAX + 96];
    store_alias_t al;
    core_err_t e2 = {{0}};
    (void)row;
    if (rc == RC_OK) {
        snprintf(msg, sizeof msg, "Success: LoRA adapter '%s' added successfully.", name);
        send_text(sink, 200, msg);
    } else if (rc == RC_EXISTS && alias_find(a, tenant, name, &al, &e2) == RC_OK) {
        snprintf(msg, sizeof msg, "'%s' is the name of an alias.", name);
        api_send_error(sink, 400, NULL, "name_conflict", msg);
    } else if (rc == RC_EXISTS) {
        snprintf(msg, sizeof msg, "The lora adapter '%s' has already been loaded.", name);
        api_send_error(sink, 400, NULL, "adapter_exists", msg);
    } else if (rc == RC_LIMIT || rc == RC_MISMATCH || rc == RC_UNSUPPORTED || rc == RC_FORMAT ||
               rc == RC_INVALID) {
        api_send_error(sink, 422, NULL, rc == RC_LIMIT ? "adapter_too_large" : rc_name(rc),
                       err && err->msg[0] ? err->msg : rc_str(rc));
    } else if (rc == RC_NOT_FOUND) { /* inside a root, so saying what is missing is fine */
        api_send_error(sink, 400, NULL, "invalid_path",
                       err && err->msg[0] ? err->msg : "the folder holds no PEFT adapter");
    } else {
        send_fail_store(sink, rc, err);
    }
}

static void start_vllm_load(api_t *a, const char *name, const char *dir, api_change_t *c)
{
    static const store_import_opts_t opts = {.fail_if_exists = true};
    store_import_async(a->p.store, c->tenant, dir, name, &opts, api__change_done, c);
}

void api__h_vllm_load(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    static const char *const fields[] = {"lora_name", "lora_path", "load_inplace", NULL};
    api_fail_t f;
    json_t *root = NULL;
    const char *name = NULL, *path = NULL;
    bool inplace = false;
    char *real = malloc(PATH_MAX);
    bool ok = real ? true : api__fail(&f, 500, "nomem", "out of memory");
    ok = ok && (a->p.store ? true : fail_no_store(&f)) && api__parse_body(req, &root, &f) &&
         api__check_fields(root, fields, &f) && req_str(root, "lora_name", &name, &f) &&
         req_str(root, "lora_path", &path, &f) && api__get_bool(root, "load_inplace", &inplace, &f);
    if (ok && !store_name_valid(name))
        ok = fail_name(&f, "`lora_name`", name);
    if (ok && !path_confined(a, path, real, &f))
        ok = false;
    if (ok)
        change_run(a, req, sink, answer_vllm_load, name, real, start_vllm_load, job);
    else
        api__send_fail(sink, &f);
    json_decref(root);
    free(real);
}

static void answer_vllm_unload(api_t *a, api_sink_t *sink, int64_t tenant,
                        const char *name, rc_t rc,
                               const store_adapter_t *row, const core_err_t *err)
{
    (void)tenant;
    char msg[STORE_NAME_MAX + 96];
    (void)a;
    (void)row;
    if (rc == RC_OK) {
        snprintf(msg, sizeof msg, "Success: LoRA adapter '%s' removed successfully.", name);
        send_text(sink, 200, msg);
    } else if (rc == RC_NOT_FOUND) {
        snprintf(msg, sizeof msg, "The lora adapter '%s' cannot be found.", name);
        api_send_error(sink, 404, NULL, "adapter_not_found", msg);
    } else if (rc == RC_EXISTS) {
        api_send_error(sink, 409, NULL, "alias_conflict",
                       err && err->msg[0] ? err->msg : "an alias points at this adapter");
    } else {
        send_fail_store(sink, rc, err);
    }
}

void api__h_vllm_unload(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    static const char *const fields[] = {"lora_name", "lora_int_id", NULL};
    api_fail_t f;
    json_t *root = NULL;
    const char *name = NULL;
    long long id = 0;
    bool ok = (a->p.store ? true : fail_no_store(&f)) && api__parse_body(req, &root, &f) &&
              api__check_fields(root, fields, &f) && req_str(root, "lora_name", &name, &f) &&
              api__get_int(root, "lora_int_id", LLONG_MIN, LLONG_MAX, &id, &f);
    if (ok && !store_name_valid(name))
        ok = fail_name(&f, "`lora_name`", name);
    if (ok)
        change_run(a, req, sink, answer_vllm_unload, name, NULL, start_delete, job);
    else
        api__send_fail(sink, &f);
    json_decref(root);
}
