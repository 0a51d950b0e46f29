/* quota.c - per-tenant quotas of generation requests and stored bytes (tenancy.h).
 *
 * The state of a tenant is made on its first request and kept (tenants are few and never
 * deleted). The token bucket is charged prompt + max_tokens up front, because what a
 * request will generate is unknown when it is admitted; the unused part is refunded at its
 * end, so a tenant is billed for what it used. A request larger than the bucket itself
 * would never pass, so it is admitted when the bucket is full (the bucket goes negative
 * and the tenant waits it out). Threads: the loop thread. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/tenancy.h"

typedef struct {
    int64_t tenant;
    char name[STORE_NAME_MAX + 1];
    int64_t held;   /* generation requests admitted and not yet ended */
    double tokens;  /* bucket level (may be negative after a large request) */
    double t_fill;  /* monotonic seconds of the last refill */
    bool filled;    /* the bucket has been initialised */
} quota_tenant_t;

struct api_quota {
    quota_tenant_t *t;
    size_t n, cap;
};

static double quota_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

api_quota_t *api__quota_new(void)
{
    return calloc(1, sizeof(api_quota_t));
}

void api__quota_free(api_quota_t *q)
{
    if (q)
        free(q->t);
    free(q);
}

static quota_tenant_t *quota_find(api_quota_t *q, int64_t tenant, const char *name)
{
    for (size_t i = 0; i < q->n; i++)
        if (q->t[i].tenant == tenant)
            return &q->t[i];
    if (!name)
        return NULL;
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 8;
        quota_tenant_t *t = realloc(q->t, cap * sizeof *t);
        if (!t)
            return NULL;
        q->t = t;
        q->cap = cap;
    }
    quota_tenant_t *e = &q->t[q->n++];
    memset(e, 0, sizeof *e);
    e->tenant = tenant;
    snprintf(e->name, sizeof e->name, "%s", name);
    return e;
}

/* Refill at tokens_per_min / 60 per second, up to the capacity. A changed (lowered)
 * quota caps the level at once. */
static void bucket_refill(quota_tenant_t *e, int64_t per_min, double now)
{
    double cap = (double)per_min;
    if (!e->filled) {
        e->tokens = cap;
        e->filled = true;
    } else {
        e->tokens += (now - e->t_fill) * cap / 60.0;
    }
    if (e->tokens > cap)
        e->tokens = cap;
    e->t_fill = now;
}

/* f holds the message already: add Retry-After and the x-ratelimit pair of unit. */
static bool quota_refuse(api_fail_t *f, const char *tenant, const char *which,
                         const char *unit, double retry, long long limit, long long remaining)
{
    long long secs = (long long)ceil(retry < 1 ? 1 : retry);
    snprintf(f->headers, sizeof f->headers,
             "Retry-After: %lld\r\nx-ratelimit-limit-%s: %lld\r\nx-ratelimit-remaining-%s: %lld\r\n",
             secs, unit, limit, unit, remaining < 0 ? 0 : remaining);
    api_metrics_observe_quota(tenant, which);
    return false;
}

bool api__quota_admit(api_t *a, const api_caller_t *who, int64_t tokens, api_ticket_t *t,
                      api_fail_t *f)
{
    memset(t, 0, sizeof *t);
    quota_tenant_t *e = quota_find(a->quota, who->tenant, who->tenant_name);
    if (!e)
        return api__fail(f, 500, "nomem", "out of memory");
    int64_t max_c = who->quota.max_concurrent, tpm = who->quota.tokens_per_min;
    if (max_c > 0 && e->held >= max_c) {
        api__fail(f, 429, "concurrency_quota_exceeded",
                  "tenant concurrency quota: %lld requests already running (limit %lld)",
                  (long long)e->held, (long long)max_c);
        return quota_refuse(f, who->tenant_name, "concurrency", "requests", 1, max_c, 0);
    }
    if (tpm > 0) {
        bucket_refill(e, tpm, quota_now());
        double need = tokens < tpm ? (double)tokens : (double)tpm;
        if (e->tokens < need) {
            api__fail(f, 429, "token_rate_quota_exceeded",
                      "tenant token quota: this request needs %lld tokens (prompt + "
                      "max_tokens), %lld are left of the %lld per minute",
                      (long long)tokens, (long long)(e->tokens < 0 ? 0 : e->tokens),
                      (long long)tpm);
            return quota_refuse(f, who->tenant_name, "tokens", "tokens",
                                (need - e->tokens) * 60.0 / (double)tpm, tpm,
                                (long long)e->tokens);
        }
        e->tokens -= (double)tokens;
    }
    e->held++;
    t->tenant = who->tenant;
    t->tokens = tpm > 0 ? tokens : 0;
    t->held = true;
    return true;
}

void api__quota_release(api_t *a, api_ticket_t *t, int64_t used)
{
    if (!t->held)
        return;
    t->held = false;
    quota_tenant_t *e = quota_find(a->quota, t->tenant, NULL);
    if (!e)
        return;
    if (e->held > 0)
        e->held--;
    if (t->tokens > used && used >= 0)
        e->tokens += (double)(t->tokens - used);
}

bool api__quota_storage(api_t *a, const api_caller_t *who, uint64_t incoming, api_fail_t *f)
{
    int64_t max = who->quota.max_stored_bytes, used = 0;
    core_err_t err = {{0}};
    if (max <= 0 || !a->p.store)
        return true;
    if (store_tenant_bytes(a->p.store, who->tenant, &used, &err) != RC_OK)
        return api__fail(f, 503, "store_unavailable", "%s", err.msg);
    if ((uint64_t)used + incoming <= (uint64_t)max)
        return true;
    api__fail(f, 429, "storage_quota_exceeded",
              "tenant storage quota: %lld bytes stored, and this upload would pass the limit "
              "of %lld bytes (delete adapters to make room)",
              (long long)used, (long long)max);
    return quota_refuse(f, who->tenant_name, "storage", "bytes", 3600, max, max - used);
}

void api__quota_metrics(api_t *a, api_mtext_t *t)
{
    static const char *const lbl[] = {"tenant"};
    api_quota_t *q = a->quota;
    api_mtext_family(t, "adapterd_tenant_requests_in_flight",
                     "Generation requests of the tenant waiting or running.", "gauge");
    for (size_t i = 0; q && i < q->n; i++) {
        const char *v[] = {q->t[i].name};
        api_mtext_sample(t, "adapterd_tenant_requests_in_flight", lbl, v, 1,
                         (double)q->t[i].held);
    }
}
