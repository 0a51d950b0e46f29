/* api.c - the route table, rc -> HTTP status, and error bodies.
 *
 * Routes are a static table (redis's command table). A route is an exact path, or a
 * prefix, one path segment as its parameter, and a suffix ("/v1/adapters/" SPEC "/pin").
 * The parameter is one non-empty segment (no '/'), percent-decoded before the handler
 * sees it. A path some route fits with another method is 405 with an Allow header listing
 * the methods the fitting routes have; any other path is 404. Routes marked local_only
 * (vLLM's load/unload of server-side folders) do not exist unless allow_local_paths: they
 * answer the same 404 as an unknown path. Handlers live in completions.c (generation),
 * misc.c and adapters.c (answers at once), admin.c (adapter admin, store changes) and
 * upload.c (multipart uploads). This is the one place in adapterd that turns an rc_t into
 * an HTTP status. Threads: the loop thread (see api.h). */
#include "api/api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api/json_util.h"
#include "api/metrics.h"
#include "api/tenancy.h"

typedef struct {
    const char *method;
    const char *path;         /* the whole path, or what precedes the parameter */
    const char *suffix;       /* NULL: no parameter; else what follows it ("" for nothing) */
    api_handler_fn fn;        /* routes without a parameter */
    api_param_handler_fn pfn; /* routes with one */
    bool local_only;          /* only with allow_local_paths */
    const char *pattern;      /* metrics and log label of routes with a parameter */
    api_access_t access;      /* who may call it (tenancy.h) */
} api_route_t;

#define API_ADAPTERS "/v1/adapters/"
#define API_ALIASES "/v1/aliases/"
#define API_TENANTS "/v1/admin/tenants/"
#define API_KEYS "/v1/admin/keys/"

#define PUB API_ACCESS_PUBLIC
#define TEN API_ACCESS_TENANT
#define ADM API_ACCESS_ADMIN

static const api_route_t api_routes[] = {
    {"POST", "/v1/completions", NULL, api__h_completions, NULL, false, NULL, TEN},
    {"POST", "/v1/chat/completions", NULL, api__h_chat, NULL, false, NULL, TEN},
    {"POST", "/v1/score", NULL, api__h_score, NULL, false, NULL, TEN},
    {"GET", "/v1/models", NULL, api__h_models, NULL, false, NULL, TEN},
    {"GET", "/healthz", NULL, api__h_healthz, NULL, false, NULL, PUB},
    {"GET", "/readyz", NULL, api__h_readyz, NULL, false, NULL, PUB},
    {"GET", "/metrics", NULL, api__h_metrics, NULL, false, NULL, ADM},
    {"POST", "/tokenize", NULL, api__h_tokenize, NULL, false, NULL, TEN},
    {"POST", "/detokenize", NULL, api__h_detokenize, NULL, false, NULL, TEN},
    {"GET", "/lora-adapters", NULL, api__h_lora_adapters, NULL, false, NULL, TEN},
    {"GET", "/v1/adapters", NULL, api__h_adapters_list, NULL, false, NULL, TEN},
    {"POST", "/v1/adapters", NULL, api__h_upload, NULL, false, NULL, TEN},
    {"POST", "/v1/routers", NULL, api__h_router_create, NULL, false, NULL, TEN},
    {"GET", API_ADAPTERS, "", NULL, api__hp_adapter_get, false, API_ADAPTERS "{spec}", TEN},
    {"POST", API_ADAPTERS, "", NULL, api__hp_upload, false, API_ADAPTERS "{spec}", TEN},
    {"DELETE", API_ADAPTERS, "", NULL, api__hp_adapter_delete, false, API_ADAPTERS "{spec}", TEN},
    {"POST", API_ADAPTERS, "/pin", NULL, api__hp_adapter_pin, false, API_ADAPTERS "{spec}/pin",
     ADM},
    {"POST", API_ADAPTERS, "/unpin", NULL, api__hp_adapter_unpin, false,
     API_ADAPTERS "{spec}/unpin", ADM},
    {"POST", API_ADAPTERS, "/publish", NULL, api__hp_adapter_publish, false,
     API_ADAPTERS "{spec}/publish", ADM},
    {"POST", API_ADAPTERS, "/unpublish", NULL, api__hp_adapter_unpublish, false,
     API_ADAPTERS "{spec}/unpublish", ADM},
    {"GET", "/v1/aliases", NULL, api__h_aliases_list, NULL, false, NULL, TEN},
    {"GET", API_ALIASES, "", NULL, api__hp_alias_get, false, API_ALIASES "{name}", TEN},
    {"PUT", API_ALIASES, "", NULL, api__hp_alias_put, false, API_ALIASES "{name}", TEN},
    {"DELETE", API_ALIASES, "", NULL, api__hp_alias_delete, false, API_ALIASES "{name}", TEN},
    {"GET", "/v1/me", NULL, api__h_me, NULL, false, NULL, TEN},
    {"GET", "/v1/admin/tenants", NULL, api__h_tenants_list, NULL, false, NULL, ADM},
    {"POST", "/v1/admin/tenants", NULL, api__h_tenant_create, NULL, false, NULL, ADM},
    {"GET", API_TENANTS, "", NULL, api__hp_tenant_get, false, API_TENANTS "{name}", ADM},
    {"PATCH", API_TENANTS, "", NULL, api__hp_tenant_patch, false, API_TENANTS "{name}", ADM},
    {"GET", "/v1/admin/keys", NULL, api__h_keys_list, NULL, false, NULL, ADM},
    {"POST", "/v1/admin/keys", NULL, api__h_key_create, NULL, false, NULL, ADM},
    {"DELETE", API_KEYS, "", NULL, api__hp_key_revoke, false, API_KEYS "{id}", ADM},
    {"POST", "/v1/load_lora_adapter", NULL, api__h_vllm_load, NULL, true, NULL, ADM},
    {"POST", "/v1/unload_lora_adapter", NULL, api__h_vllm_unload, NULL, true, NULL, ADM},
};
#define API_N_ROUTES (sizeof api_routes / sizeof api_routes[0])

/* Does path fit r? OUT: the raw parameter span (routes with one). */
static bool route_fits(const api_route_t *r, const char *path, const char **param,
                       size_t *n_param)
{
    if (!r->suffix)
        return strcmp(r->path, path) == 0;
    size_t n_pre = strlen(r->path), n_suf = strlen(r->suffix), n = strlen(path);
    if (n <= n_pre + n_suf || strncmp(path, r->path, n_pre) != 0 ||
        strcmp(path + n - n_suf, r->suffix) != 0)
        return false;
    *param = path + n_pre;
    *n_param = n - n_pre - n_suf;
    return memchr(*param, '/', *n_param) == NULL;
}

/* The route for method + path. OUT: *route (NULL when none fits with this method), the
 * parameter span, and allow: the methods of the routes the path fits (for a 405). */
static void route_find(api_t *a, const char *method, const char *path, const api_route_t **route,
                       const char **param, size_t *n_param, char *allow, size_t cap)
{
    size_t n_allow = 0;
    *route = NULL;
    allow[0] = '\0';
    for (size_t i = 0; i < API_N_ROUTES; i++) {
        const api_route_t *r = &api_routes[i];
        const char *p = NULL;
        size_t n = 0;
        if ((r->local_only && !a->p.allow_local_paths) || !route_fits(r, path, &p, &n))
            continue;
        if (strcmp(r->method, method) == 0) {
            *route = r;
            *param = p;
            *n_param = n;
            return;
        }
        n_allow += (size_t)snprintf(allow + n_allow, cap - n_allow, "%s%s", n_allow ? ", " : "",
                                    r->method);
        if (n_allow >= cap)
            n_allow = cap - 1;
    }
}

api_t *api_new(const api_params_t *p)
{
    api_t *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->p = *p;
    if (!(a->quota = api__quota_new())) {
        free(a);
        return NULL;
    }
    api_metrics_init(); /* notes the start time for adapterd_start_time_seconds */
    a->model_name = p->model_name ? p->model_name : (p->model ? p->model->name : "model");
    a->created = (int64_t)time(NULL);
    /* Seeds and ids need to differ between runs, not to be secret. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    a->rng = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 16) ^
             (uint64_t)(uintptr_t)a;
    return a;
}

void api_free(api_t *a)
{
    if (a)
        api__quota_free(a->quota);
    free(a);
}

/* Runs a route that takes a parameter: decoded first (a bad escape is a bad name). */
static void route_call_param(api_t *a, const api_route_t *r, const api_request_t *req,
                             const char *param, size_t n_param, api_sink_t *sink, api_job_t **job)
{
    char buf[API_PARAM_MAX + 1];
    char msg[256];
    if (!api__pct_decode(param, n_param, buf, sizeof buf)) {
        snprintf(msg, sizeof msg,
                 "`%.*s` is not a valid name: 1-%d characters of A-Z a-z 0-9 . _ - "
                 "(optionally @VERSION)",
                 (int)(n_param < 100 ? n_param : 100), param, STORE_NAME_MAX);
        api_send_error(sink, 400, NULL, "invalid_name", msg);
        return;
    }
    r->pfn(a, req, buf, sink, job);
}

static const api_route_t *route_of_path(api_t *a, const char *path, const char **param,
                                        size_t *n_param);

/* A public route (or a path only public routes fit: its 405 needs no key). */
static bool path_is_public(api_t *a, const char *method, const char *path,
                           const api_route_t *r)
{
    const char *param = NULL;
    size_t n_param = 0;
    (void)method;
    if (!r)
        r = route_of_path(a, path, &param, &n_param);
    return r && r->access == API_ACCESS_PUBLIC;
}

bool api__auth_route(api_t *a, api_request_t *req, api_caller_t *who, api_fail_t *f)
{
    char allow[128];
    const api_route_t *r = NULL;
    const char *param = NULL;
    size_t n_param = 0;
    const char *method = req->method ? req->method : "", *path = req->path ? req->path : "";
    route_find(a, method, path, &r, &param, &n_param, allow, sizeof allow);
    if (path_is_public(a, method, path, r))
        return true;
    if (!api__authenticate(a, req, who, f))
        return false;
    req->caller = who;
    api__note_caller(req, who);
    return !r || api__authorize(who, r->access, f);
}

/* Authenticate (every route but the public ones, before the route is even known to
 * exist) and authorize. false: the answer went out. OUT: *who, req->caller. */
static bool route_auth(api_t *a, api_request_t *req, api_caller_t *who, api_sink_t *sink)
{
    api_fail_t f;
    if (api__auth_route(a, req, who, &f))
        return true;
    api__send_fail(sink, &f);
    return false;
}

void api_handle(api_t *a, const api_request_t *req0, api_sink_t *sink, api_job_t **job)
{
    char allow[128];
    const api_route_t *r = NULL;
    const char *param = NULL;
    size_t n_param = 0;
    api_request_t rq = *req0, *req = &rq;
    api_caller_t who;
    *job = NULL;
    const char *method = req->method ? req->method : "";
    const char *path = req->path ? req->path : "";
    route_find(a, method, path, &r, &param, &n_param, allow, sizeof allow);
    if (!route_auth(a, req, &who, sink))
        return;
    if (r && r->pfn) {
        route_call_param(a, r, req, param, n_param, sink, job);
        return;
    }
    if (r) {
        r->fn(a, req, sink, job);
        return;
    }
    char msg[256];
    if (allow[0]) {
        char hdr[160];
        snprintf(hdr, sizeof hdr, "Allow: %s\r\n", allow);
        snprintf(msg, sizeof msg, "method %.20s is not allowed on %.100s (allowed: %s)", method,
                 path, allow);
        api__send_error_hdr(sink, 405, NULL, "method_not_allowed", msg, hdr);
        return;
    }
    snprintf(msg, sizeof msg, "no route for %.20s %.200s", method, path);
    api_send_error(sink, 404, NULL, "not_found", msg);
}

void api_set_draining(api_t *a, bool draining)
{
    a->draining = draining;
}

/* The first route path fits, whatever its method (a 405 is counted under it). */
static const api_route_t *route_of_path(api_t *a, const char *path, const char **param,
                                        size_t *n_param)
{
    for (size_t i = 0; path && i < API_N_ROUTES; i++) {
        const api_route_t *r = &api_routes[i];
        if ((!r->local_only || a->p.allow_local_paths) && route_fits(r, path, param, n_param))
            return r;
    }
    return NULL;
}

const char *api_route_name(api_t *a, const char *method, const char *path)
{
    (void)method;
    const char *param = NULL;
    size_t n_param = 0;
    const api_route_t *r = route_of_path(a, path, &param, &n_param);
    if (!r)
        return "other";
    return r->pattern ? r->pattern : r->path;
}

bool api_route_adapter(api_t *a, const char *method, const char *path, char *out, size_t cap)
{
    (void)method;
    const char *param = NULL;
    size_t n_param = 0;
    const api_route_t *r = route_of_path(a, path, &param, &n_param);
    if (cap)
        out[0] = '\0';
    if (!r || !r->suffix || strcmp(r->path, API_ADAPTERS) != 0 || cap == 0)
        return false;
    if (!api__pct_decode(param, n_param, out, cap)) {
        out[0] = '\0';
        return false;
    }
    return true;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool api__pct_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n)
                return false;
            int h = hex_value(s[i + 1]), l = hex_value(s[i + 2]);
            if (h < 0 || l < 0)
                return false;
            c = h * 16 + l;
            i += 2;
        }
        if (c == 0 || o + 1 >= cap)
            return false;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return true;
}

void api_job_cancel(api_t *a, api_job_t *job)
{
    if (job)
        job->ops->cancel(a, job);
}

void api_job_free(api_t *a, api_job_t *job)
{
    if (job)
        job->ops->free(a, job);
}

int api_status_of(rc_t rc)
{
    switch (rc) {
    case RC_OK: return 200;
    case RC_INVALID:
    case RC_FORMAT: return 400;
    case RC_NOT_FOUND: return 404;
    case RC_EXISTS: return 409;
    case RC_MISMATCH:
    case RC_UNSUPPORTED: return 422;
    case RC_LIMIT: return 413; /* handlers answer 400 where a limit is not about size */
    case RC_BUSY:
    case RC_QUOTA: return 429;
    case RC_AUTH: return 401;
    case RC_CANCELLED:
    case RC_UNAVAILABLE: return 503;
    case RC_NOSPACE: return 507;
    default: return 500;
    }
}

void api_send_error(api_sink_t *sink, int status, const char *type, const char *code,
                    const char *message)
{
    /* 429 and 503 tell the client when to come back: the engine queue drains within a
     * step; a broken adapter may be re-uploaded and a full cache frees as sequences end. */
    api__send_error_hdr(sink, status, type, code, message,
                        (status == 429 || status == 503) ? "Retry-After: 1\r\n" : NULL);
}

bool api__list_adapters(api_t *a, int64_t tenant, api_sink_t *sink, store_adapter_t **rows,
                        size_t *n)
{
    core_err_t err = {{0}};
    *rows = NULL;
    *n = 0;
    if (!a->p.store)
        return true;
    rc_t rc = store_list(a->p.store, tenant, rows, n, &err);
    if (rc != RC_OK) {
        api_send_error(sink, api_status_of(rc), NULL, rc_name(rc), err.msg);
        return false;
    }
    return true;
}
