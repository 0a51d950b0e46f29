/* tenancy.h - private to api/: who is calling, what they may do, and their quotas.
 *
 * Authentication (auth.c): every route but GET /healthz and /readyz authenticates before
 * anything else is looked at, the route included, so an unauthenticated client learns
 * nothing (401 with one fixed body, the same for a missing, malformed, unknown or revoked
 * key). The store compares key hashes in constant time (store_auth). With no active key
 * in the store the daemon is in open mode: every request is an admin of "default".
 * Roles: an admin key manages everything (tenants, keys, publishing, pins, metrics, vLLM
 * load/unload) and may act for another tenant with X-Adapterd-Tenant; a tenant key
 * manages and uses its own adapters and uses published ones.
 *
 * Quotas (quota.c), per tenant, effective values from store_tenant_effective:
 *   max_concurrent    generation requests waiting or running at once
 *   tokens_per_min    a token bucket of that capacity, refilled continuously; a request
 *                     takes prompt + max_tokens when admitted and gets back what it did
 *                     not generate when it ends
 *   max_stored_bytes  checked before an upload's body is read (Content-Length) and again
 *                     by the store when it commits
 * Over quota: 429 with Retry-After (seconds until the request could pass) and the
 * x-ratelimit-* headers of the quota that refused it. Quota state lives in memory (loop
 * thread); a restart starts every bucket full.
 *
 * Threads: the loop thread. */
#ifndef API_TENANCY_H
#define API_TENANCY_H

#include "api/json_util.h"
#include "api/metrics.h"

typedef enum { API_ACCESS_PUBLIC, API_ACCESS_TENANT, API_ACCESS_ADMIN } api_access_t;

/* The authenticated caller of one request. */
typedef struct api_caller {
    int64_t tenant;                       /* the namespace the request acts in */
    char tenant_name[STORE_NAME_MAX + 1];
    bool admin;
    char key_id[STORE_KEY_ID_LEN + 1];    /* "" in open mode */
    store_tenant_t quota;                 /* effective quotas and share of tenant */
} api_caller_t;

/* Authenticate req (Authorization, X-Adapterd-Tenant). false: f filled (401
 * invalid_api_key with WWW-Authenticate; 403 when a tenant key names another tenant; 404
 * tenant_not_found for an admin naming an unknown one). OUT: *who. */
bool api__authenticate(api_t *a, const api_request_t *req, api_caller_t *who, api_fail_t *f);
/* As api_handle does it: public routes pass; others authenticate, then the route's level
 * is checked (a path no route fits passes here, to be answered 404 after). Sets
 * req->caller = who and notes the caller. false: f filled. */
bool api__auth_route(api_t *a, api_request_t *req, api_caller_t *who, api_fail_t *f);
/* false (403 permission_denied) when who may not use a route of level need. */
bool api__authorize(const api_caller_t *who, api_access_t need, api_fail_t *f);
/* The caller of a request the api authenticated (never NULL inside a handler). */
const api_caller_t *api__who(const api_request_t *req);
/* Note tenant and key for the access log (req->note may be NULL). */
void api__note_caller(const api_request_t *req, const api_caller_t *who);

/* ---- quotas ---- */

typedef struct api_quota api_quota_t;
api_quota_t *api__quota_new(void);
void api__quota_free(api_quota_t *q);

/* A generation request's hold on its tenant's quotas, released exactly once. */
typedef struct {
    int64_t tenant;
    int64_t tokens; /* taken from the bucket */
    bool held;
} api_ticket_t;

/* Admit a generation request of `tokens` (prompt + max_tokens) for who, or fail 429 with
 * its Retry-After and x-ratelimit headers in f. OUT: *t (held on success). */
bool api__quota_admit(api_t *a, const api_caller_t *who, int64_t tokens, api_ticket_t *t,
                      api_fail_t *f);
/* The request ended having used `used` of its tokens: the rest go back to the bucket. */
void api__quota_release(api_t *a, api_ticket_t *t, int64_t used);
/* An upload of about incoming bytes would pass who's max_stored_bytes: fail 429. */
bool api__quota_storage(api_t *a, const api_caller_t *who, uint64_t incoming, api_fail_t *f);
/* Per-tenant gauges at scrape time: sequences held, bucket tokens left. */
void api__quota_metrics(api_t *a, api_mtext_t *t);

#endif
