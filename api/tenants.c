/* tenants.c - the admin API of tenants, API keys and publishing, and GET /v1/me.
 *
 *   GET/POST /v1/admin/tenants, GET/PATCH /v1/admin/tenants/{name}
 *   GET/POST /v1/admin/keys (?tenant=NAME), DELETE /v1/admin/keys/{id} (revoke)
 *   POST /v1/adapters/{name}/publish and /unpublish
 * All admin-only (the route table says so). Quotas travel as null (inherit the serve
 * flag's default), 0 (unlimited) or a limit; "effective" shows what applies. A new key's
 * secret is in the 201 answer and nowhere else, ever. Changes are store tasks; each
 * request is a small pending job answered from the store's callback.
 * Threads: the loop thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/tenancy.h"

/* Every handler here needs the store (unit tests run routes without one). */
#define NEED_STORE(a, sink)                                                                  \
    do {                                                                                     \
        if (!(a)->p.store) {                                                                 \
            api_send_error(sink, 503, NULL, "store_unavailable",                             \
                           "this server has no adapter store");                              \
            return;                                                                          \
        }                                                                                    \
    } while (0)

/* ---- JSON ---- */

static json_t *quota_value(int64_t v)
{
    return v == STORE_QUOTA_INHERIT ? json_null() : json_integer(v);
}

static json_t *quotas_json(const store_tenant_t *t)
{
    return json_pack("{s:o,s:o,s:o}", "max_concurrent", quota_value(t->max_concurrent),
                     "tokens_per_min", quota_value(t->tokens_per_min), "max_stored_bytes",
                     quota_value(t->max_stored_bytes));
}

static json_t *tenant_json(api_t *a, const store_tenant_t *t)
{
    store_tenant_t eff;
    int64_t bytes = 0;
    core_err_t err = {{0}};
    store_tenant_effective(a->p.store, t, &eff);
    json_t *o = json_pack("{s:s,s:I,s:s,s:I,s:f,s:o}", "object", "tenant", "id", (json_int_t)t->id,
                          "name", t->name, "created", (json_int_t)t->created, "share", t->share,
                          "effective", quotas_json(&eff));
    json_t *q = quotas_json(t);
    if (o && q)
        json_object_update(o, q);
    json_decref(q);
    if (o && store_tenant_bytes(a->p.store, t->id, &bytes, &err) == RC_OK)
        json_object_set_new(o, "stored_bytes", json_integer(bytes));
    return o;
}

static json_t *key_json(api_t *a, const store_key_t *k, const char *secret)
{
    store_tenant_t t;
    const char *tenant = store_tenant(a->p.store, k->tenant_id, &t) == RC_OK ? t.name : "";
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:s,s:I,s:o}", "object", "api_key", "id", k->id,
                          "tenant", tenant, "role", store_role_str(k->role), "label", k->label,
                          "created", (json_int_t)k->created, "revoked",
                          k->revoked ? json_integer(k->revoked) : json_null());
    if (o && secret) /* the one and only time the secret is shown */
        json_object_set_new(o, "key", json_string(secret));
    return o;
}

/* ---- pending jobs ---- */

typedef struct {
    api_job_t base;
    api_t *a;
    api_sink_t *sink;
    int status; /* of a success: 200 or 201 */
    bool answered;
} tjob_t;

static void tjob_cancel(api_t *a, api_job_t *job)
{
    (void)a;
    (void)job; /* the change goes on; its answer still ends the sink */
}

static void tjob_free(api_t *a, api_job_t *job)
{
    (void)a;
    free(job);
}

static const api_job_ops_t tjob_ops = {tjob_cancel, tjob_free};

static tjob_t *tjob_new(api_t *a, api_sink_t *sink, int status)
{
    tjob_t *j = calloc(1, sizeof *j);
    if (!j) {
        api_send_error(sink, 500, NULL, "nomem", "out of memory");
        return NULL;
    }
    j->base.ops = &tjob_ops;
    j->a = a;
    j->sink = sink;
    j->status = status;
    return j;
}

/* After the store call: a synchronous executor answered already (no job pending). */
static void tjob_started(tjob_t *j, api_job_t **job)
{
    if (j->answered) {
        free(j);
        *job = NULL;
        return;
    }
    *job = &j->base;
}

static void send_store_fail(api_sink_t *sink, rc_t rc, const core_err_t *err, const char *what)
{
    api_fail_t f;
    const char *msg = err && err->msg[0] ? err->msg : rc_str(rc);
    if (rc == RC_NOT_FOUND)
        api__fail(&f, 404, what, "%s", msg);
    else if (rc == RC_EXISTS)
        api__fail(&f, 409, "name_conflict", "%s", msg);
    else if (rc == RC_INVALID)
        api__fail(&f, 400, "invalid_value", "%s", msg);
    else
        api__fail_store(&f, rc, err);
    api__send_fail(sink, &f);
}

static void on_tenant(void *user, rc_t rc, const store_tenant_t *t, const core_err_t *err)
{
    tjob_t *j = user;
    j->answered = true;
    if (rc != RC_OK || !t)
        send_store_fail(j->sink, rc, err, "tenant_not_found");
    else
        api__send_json(j->sink, j->status, tenant_json(j->a, t));
}

static void on_key(void *user, rc_t rc, const store_key_t *k, const char *secret,
                   const core_err_t *err)
{
    tjob_t *j = user;
    j->answered = true;
    if (rc != RC_OK || !k)
        send_store_fail(j->sink, rc, err, "key_not_found");
    else
        api__send_json(j->sink, j->status, key_json(j->a, k, secret));
}

/* ---- tenants ---- */

void api__h_tenants_list(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    NEED_STORE(a, sink);
    (void)req;
    (void)job;
    store_tenant_t *rows = NULL;
    size_t n = 0;
    core_err_t err = {{0}};
    rc_t rc = store_tenants(a->p.store, &rows, &n, &err);
    if (rc != RC_OK) {
        send_store_fail(sink, rc, &err, "tenant_not_found");
        return;
    }
    json_t *data = json_array();
    for (size_t i = 0; data && i < n; i++)
        json_array_append_new(data, tenant_json(a, &rows[i]));
    free(rows);
    api__send_json(sink, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}

static bool tenant_find(api_t *a, const char *name, store_tenant_t *t, api_fail_t *f)
{
    if (store_name_valid(name) && store_tenant_by_name(a->p.store, name, t) == RC_OK)
        return true;
    return api__fail(f, 404, "tenant_not_found", "tenant '%.64s' not found", name);
}

void api__hp_tenant_get(api_t *a, const api_request_t *req, const char *name, api_sink_t *sink,
                        api_job_t **job)
{
    NEED_STORE(a, sink);
    (void)req;
    (void)job;
    store_tenant_t t;
    api_fail_t f;
    if (tenant_find(a, name, &t, &f))
        api__send_json(sink, 200, tenant_json(a, &t));
    else
        api__send_fail(sink, &f);
}

/* A quota field: absent keeps *v; null is inherit; else an integer >= 0. */
static bool quota_field(const json_t *root, const char *key, int64_t *v, api_fail_t *f)
{
    const json_t *x = json_object_get(root, key);
    long long n = 0;
    if (!x)
        return true;
    if (json_is_null(x)) {
        *v = STORE_QUOTA_INHERIT;
        return true;
    }
    if (!api__get_int(root, key, 0, INT64_MAX, &n, f))
        return false;
    *v = n;
    return true;
}

/* The quota fields and share of a tenant body, over t's current values. */
static bool tenant_fields(const json_t *root, store_tenant_t *t, api_fail_t *f)
{
    return quota_field(root, "max_concurrent", &t->max_concurrent, f) &&
           quota_field(root, "tokens_per_min", &t->tokens_per_min, f) &&
           quota_field(root, "max_stored_bytes", &t->max_stored_bytes, f) &&
           api__get_num(root, "share", 0, 1e6, true, &t->share, f);
}

static void tenant_put(api_t *a, api_sink_t *sink, const store_tenant_t *t, bool create,
                       api_job_t **job)
{
    tjob_t *j = tjob_new(a, sink, create ? 201 : 200);
    if (!j)
        return;
    store_tenant_put(a->p.store, t, create, on_tenant, j);
    tjob_started(j, job);
}

void api__h_tenant_create(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    NEED_STORE(a, sink);
    static const char *const fields[] = {"name",           "max_concurrent", "tokens_per_min",
                                         "max_stored_bytes", "share",        NULL};
    api_fail_t f;
    json_t *root = NULL;
    const char *name = NULL;
    store_tenant_t t = {.max_concurrent = STORE_QUOTA_INHERIT,
                        .tokens_per_min = STORE_QUOTA_INHERIT,
                        .max_stored_bytes = STORE_QUOTA_INHERIT,
                        .share = 1};
    bool ok = api__parse_body(req, &root, &f) && api__check_fields(root, fields, &f) &&
              api__get_str(root, "name", &name, NULL, &f) && tenant_fields(root, &t, &f);
    if (ok && !name)
        ok = api__fail(&f, 400, "missing_field", "`name` is required");
    if (ok && !store_name_valid(name))
        ok = api__fail(&f, 400, "invalid_name",
                       "`name` must be 1-%d characters of A-Z a-z 0-9 . _ -, starting with a "
                       "letter or digit",
                       STORE_NAME_MAX);
    if (ok) {
        snprintf(t.name, sizeof t.name, "%s", name);
        tenant_put(a, sink, &t, true, job);
    } else {
        api__send_fail(sink, &f);
    }
    json_decref(root);
}

void api__hp_tenant_patch(api_t *a, const api_request_t *req, const char *name, api_sink_t *sink,
                          api_job_t **job)
{
    NEED_STORE(a, sink);
    static const char *const fields[] = {"max_concurrent", "tokens_per_min", "max_stored_bytes",
                                         "share", NULL};
    api_fail_t f;
    json_t *root = NULL;
    store_tenant_t t;
    bool ok = tenant_find(a, name, &t, &f) && api__parse_body(req, &root, &f) &&
              api__check_fields(root, fields, &f) && tenant_fields(root, &t, &f);
    if (ok)
        tenant_put(a, sink, &t, false, job);
    else
        api__send_fail(sink, &f);
    json_decref(root);
}

/* ---- keys ---- */

/* ?tenant=NAME (NAME plain: tenant names need no escapes). OUT: *tenant 0 = all. */
static bool keys_query(api_t *a, const char *query, int64_t *tenant, api_fail_t *f)
{
    char name[STORE_NAME_MAX + 1];
    store_tenant_t t;
    *tenant = 0;
    if (!query || !*query)
        return true;
    size_t n = strcspn(query + 7, "&");
    if (strncmp(query, "tenant=", 7) != 0 || n > STORE_NAME_MAX)
        return api__fail(f, 400, "invalid_query", "the only query parameter is tenant=NAME");
    memcpy(name, query + 7, n);
    name[n] = '\0';
    if (!tenant_find(a, name, &t, f))
        return false;
    *tenant = t.id;
    return true;
}

void api__h_keys_list(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    NEED_STORE(a, sink);
    (void)job;
    api_fail_t f;
    int64_t tenant = 0;
    store_key_t *rows = NULL;
    size_t n = 0;
    core_err_t err = {{0}};
    if (!keys_query(a, req->query, &tenant, &f)) {
        api__send_fail(sink, &f);
        return;
    }
    rc_t rc = store_keys(a->p.store, tenant, &rows, &n, &err);
    if (rc != RC_OK) {
        send_store_fail(sink, rc, &err, "key_not_found");
        return;
    }
    json_t *data = json_array();
    for (size_t i = 0; data && i < n; i++)
        json_array_append_new(data, key_json(a, &rows[i], NULL));
    free(rows);
    api__send_json(sink, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}

static bool key_role(const json_t *root, store_role_t *role, api_fail_t *f)
{
    const char *r = NULL;
    if (!api__get_str(root, "role", &r, NULL, f))
        return false;
    if (!r || strcmp(r, "tenant") == 0)
        *role = STORE_ROLE_TENANT;
    else if (strcmp(r, "admin") == 0)
        *role = STORE_ROLE_ADMIN;
    else
        return api__fail(f, 400, "invalid_value", "`role` must be \"tenant\" or \"admin\"");
    return true;
}

void api__h_key_create(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    NEED_STORE(a, sink);
    static const char *const fields[] = {"tenant", "role", "label", NULL};
    api_fail_t f;
    json_t *root = NULL;
    const char *tenant = NULL, *label = NULL;
    store_role_t role = STORE_ROLE_TENANT;
    store_tenant_t t;
    bool ok = api__parse_body(req, &root, &f) && api__check_fields(root, fields, &f) &&
              api__get_str(root, "tenant", &tenant, NULL, &f) &&
              api__get_str(root, "label", &label, NULL, &f) && key_role(root, &role, &f);
    if (ok && !tenant)
        ok = api__fail(&f, 400, "missing_field", "`tenant` is required");
    ok = ok && tenant_find(a, tenant, &t, &f);
    tjob_t *j = ok ? tjob_new(a, sink, 201) : NULL;
    if (j) {
        store_key_add(a->p.store, t.id, role, label ? label : "", on_key, j);
        tjob_started(j, job);
    } else if (!ok) {
        api__send_fail(sink, &f);
    }
    json_decref(root);
}

void api__hp_key_revoke(api_t *a, const api_request_t *req, const char *id, api_sink_t *sink,
                        api_job_t **job)
{
    NEED_STORE(a, sink);
    (void)req;
    tjob_t *j = tjob_new(a, sink, 200);
    if (!j)
        return;
    store_key_revoke(a->p.store, id, on_key, j);
    tjob_started(j, job);
}

/* ---- publishing ---- */

static void answer_publish(api_t *a, api_sink_t *sink, int64_t tenant, const char *name, rc_t rc,
                           const store_adapter_t *row, const core_err_t *err)
{
    (void)tenant;
    (void)name;
    if (rc != RC_OK || !row) {
        api_fail_t f;
        api__fail_store(&f, rc, err);
        api__send_fail(sink, &f);
        return;
    }
    api__send_json(sink, 200, api__adapter_json(a, row));
}

static void publish(api_t *a, const api_request_t *req, const char *name, bool on,
                    api_sink_t *sink, api_job_t **job)
{
    NEED_STORE(a, sink);
    const api_caller_t *who = api__who(req);
    if (!store_name_valid(name)) { /* a whole name: versions are published together */
        api_send_error(sink, 400, NULL, "invalid_name",
                       "publish takes an adapter NAME (every version), not NAME@V or an alias");
        return;
    }
    api_change_t *c = api__change_new(a, who->tenant, sink, answer_publish, name);
    if (!c) {
        api_send_error(sink, 500, NULL, "nomem", "out of memory");
        return;
    }
    store_publish(a->p.store, who->tenant, name, on, api__change_done, c);
    api__change_started(a, c, job);
}

void api__hp_adapter_publish(api_t *a, const api_request_t *req, const char *name,
                             api_sink_t *sink, api_job_t **job)
{
    publish(a, req, name, true, sink, job);
}

void api__hp_adapter_unpublish(api_t *a, const api_request_t *req, const char *name,
                               api_sink_t *sink, api_job_t **job)
{
    publish(a, req, name, false, sink, job);
}

/* ---- GET /v1/me ---- */

void api__h_me(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    (void)job;
    const api_caller_t *who = api__who(req);
    int64_t bytes = 0;
    core_err_t err = {{0}};
    json_t *o = json_pack("{s:s,s:s,s:s,s:o,s:f,s:o}", "object", "caller", "tenant",
                          who->tenant_name, "role", who->admin ? "admin" : "tenant", "key_id",
                          who->key_id[0] ? json_string(who->key_id) : json_null(), "share",
                          who->quota.share, "quotas", quotas_json(&who->quota));
    if (o && a->p.store && store_tenant_bytes(a->p.store, who->tenant, &bytes, &err) == RC_OK)
        json_object_set_new(o, "stored_bytes", json_integer(bytes));
    api__send_json(sink, 200, o);
}
