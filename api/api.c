/* api.c - the route table, rc -> HTTP status, and error bodies.
 *
 * Routes are a static table (redis's command table): an exact path and a method. A path
 * in the table with another method is 405 with an Allow header listing the methods it
 * has; any other path is 404. Handlers live in completions.c (generation, pending jobs),
 * misc.c and adapters.c (everything that answers at once). This is the one place in
 * adapterd that turns an rc_t into an HTTP status. Threads: the loop thread (see api.h). */
#include "api/api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api/json_util.h"

typedef struct {
    const char *method;
    const char *path;
    api_handler_fn fn;
} api_route_t;

static const api_route_t api_routes[] = {
    {"POST", "/v1/completions", api__h_completions},
    {"GET", "/v1/models", api__h_models},
    {"GET", "/healthz", api__h_healthz},
    {"POST", "/tokenize", api__h_tokenize},
    {"POST", "/detokenize", api__h_detokenize},
    {"GET", "/lora-adapters", api__h_lora_adapters},
};
#define API_N_ROUTES (sizeof api_routes / sizeof api_routes[0])

api_t *api_new(const api_params_t *p)
{
    api_t *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->p = *p;
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
    free(a);
}

void api_handle(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    char allow[128] = "";
    size_t n_allow = 0;
    *job = NULL;
    const char *method = req->method ? req->method : "";
    const char *path = req->path ? req->path : "";
    for (size_t i = 0; i < API_N_ROUTES; i++) {
        if (strcmp(api_routes[i].path, path) != 0)
            continue;
        if (strcmp(api_routes[i].method, method) == 0) {
            api_routes[i].fn(a, req, sink, job);
            return;
        }
        n_allow += (size_t)snprintf(allow + n_allow, sizeof allow - n_allow, "%s%s",
                                    n_allow ? ", " : "", api_routes[i].method);
    }
    char msg[256];
    if (n_allow) {
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
    case RC_BUSY: return 429;
    case RC_CANCELLED: return 503;
    default: return 500;
    }
}

void api_send_error(api_sink_t *sink, int status, const char *type, const char *code,
                    const char *message)
{
    /* 429 tells the client when to come back (the engine queue drains within a step). */
    api__send_error_hdr(sink, status, type, code, message,
                        status == 429 ? "Retry-After: 1\r\n" : NULL);
}

bool api__list_adapters(api_t *a, api_sink_t *sink, store_adapter_t **rows, size_t *n)
{
    core_err_t err = {{0}};
    *rows = NULL;
    *n = 0;
    if (!a->p.store)
        return true;
    rc_t rc = store_list(a->p.store, rows, n, &err);
    if (rc != RC_OK) {
        api_send_error(sink, api_status_of(rc), NULL, rc_name(rc), err.msg);
        return false;
    }
    return true;
}
