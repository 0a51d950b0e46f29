/* test_api_tenancy.c - authentication, roles and quotas in the api (api/auth.c,
 * api/quota.c), without a network: open mode, bearer keys (accepted spellings, one 401
 * body for every failure), admin-only routes, acting for another tenant, the pre-auth body
 * cap, and the quota arithmetic (concurrency, token bucket with refunds, storage). */
#include "tests/unit/api_fixture.h"

#include "api/tenancy.h"

/* store_key_add's answer (synchronous executor: before the call returns). */
typedef struct {
    rc_t rc;
    store_key_t key;
    char secret[STORE_KEY_SECRET_MAX + 1];
} key_out_t;

static void on_key(void *user, rc_t rc, const store_key_t *k, const char *secret,
                   const core_err_t *err)
{
    (void)err;
    key_out_t *o = user;
    o->rc = rc;
    if (k)
        o->key = *k;
    snprintf(o->secret, sizeof o->secret, "%s", secret ? secret : "");
}

typedef struct {
    rc_t rc;
    store_tenant_t t;
} tenant_out_t;

static void on_tenant(void *user, rc_t rc, const store_tenant_t *t, const core_err_t *err)
{
    (void)err;
    tenant_out_t *o = user;
    o->rc = rc;
    if (t)
        o->t = *t;
}

static int64_t add_tenant(fx_t *f, const char *name, int64_t max_c, int64_t tpm)
{
    store_tenant_t t = {.max_concurrent = max_c,
                        .tokens_per_min = tpm,
                        .max_stored_bytes = STORE_QUOTA_INHERIT,
                        .share = 1};
    snprintf(t.name, sizeof t.name, "%s", name);
    tenant_out_t o = {0};
    store_tenant_put(f->store, &t, true, on_tenant, &o);
    ASSERT_EQ(o.rc, RC_OK);
    return o.t.id;
}

static void add_key(fx_t *f, int64_t tenant, store_role_t role, key_out_t *o)
{
    memset(o, 0, sizeof *o);
    store_key_add(f->store, tenant, role, "test", on_key, o);
    ASSERT_EQ(o->rc, RC_OK);
    ASSERT(strncmp(o->secret, "adk_", 4) == 0);
}

/* One request with an Authorization value (NULL: none) and X-Adapterd-Tenant (or NULL). */
static void call_as(fx_t *f, const char *method, const char *path, const char *auth,
                    const char *act_as, resp_t *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->rec.mu, NULL);
    pthread_cond_init(&r->rec.cv, NULL);
    r->sink = (api_sink_t){&r->rec, rec_begin, rec_write, rec_end};
    api_request_t req = {.method = method,
                         .path = path,
                         .request_id = "t",
                         .authorization = auth,
                         .act_as = act_as};
    api_job_t *job = NULL;
    api_handle(f->api, &req, &r->sink, &job);
    rec_wait(&r->rec);
    api_job_free(f->api, job);
    ASSERT_EQ(r->rec.n_end, 1);
}

TEST(open_mode_is_admin_of_default)
{
    fx_t f;
    fx_init(&f, "open", false);
    resp_t r;
    call_as(&f, "GET", "/v1/me", NULL, NULL, &r);
    ASSERT_EQ(r.rec.status, 200);
    ASSERT(strstr(r.rec.body, "default") != NULL);
    ASSERT(strstr(r.rec.body, "admin") != NULL);
    resp_free(&r);
    call_as(&f, "GET", "/metrics", NULL, NULL, &r);
    ASSERT_EQ(r.rec.status, 200);
    resp_free(&r);
    fx_close(&f);
}

TEST(one_401_body_for_every_failure)
{
    fx_t f;
    fx_init(&f, "auth401", false);
    key_out_t k;
    add_key(&f, STORE_TENANT_DEFAULT, STORE_ROLE_TENANT, &k);
    char good[200], bad[200], lower[200];
    snprintf(good, sizeof good, "Bearer %s", k.secret);
    snprintf(bad, sizeof bad, "Bearer %sx", k.secret);
    snprintf(lower, sizeof lower, "bearer   %s ", k.secret);
    const char *fails[] = {NULL, "", "Basic abc", "Bearer", "Bearer ", bad, k.secret};
    char *first = NULL;
    for (size_t i = 0; i < sizeof fails / sizeof fails[0]; i++) {
        resp_t r;
        call_as(&f, "GET", i % 2 ? "/v1/models" : "/no/such/path", fails[i], NULL, &r);
        ASSERT_EQ(r.rec.status, 401);
        ASSERT(strstr(r.rec.headers, "WWW-Authenticate: Bearer") != NULL);
        if (!first)
            first = strdup(r.rec.body);
        else
            ASSERT_STREQ(r.rec.body, first);
        resp_free(&r);
    }
    free(first);
    resp_t r;
    call_as(&f, "GET", "/v1/models", good, NULL, &r);
    ASSERT_EQ(r.rec.status, 200);
    resp_free(&r);
    call_as(&f, "GET", "/v1/models", lower, NULL, &r); /* scheme case, spaces around */
    ASSERT_EQ(r.rec.status, 200);
    resp_free(&r);
    call_as(&f, "GET", "/healthz", NULL, NULL, &r); /* probes need no key */
    ASSERT_EQ(r.rec.status, 200);
    resp_free(&r);
    call_as(&f, "GET", "/readyz", NULL, NULL, &r);
    ASSERT(r.rec.status == 200 || r.rec.status == 503);
    resp_free(&r);
    fx_close(&f);
}

TEST(revoked_key_refused_at_once)
{
    fx_t f;
    fx_init(&f, "revoke", false);
    key_out_t k, k2, out;
    add_key(&f, STORE_TENANT_DEFAULT, STORE_ROLE_TENANT, &k);
    add_key(&f, STORE_TENANT_DEFAULT, STORE_ROLE_TENANT, &k2);
    char h[200], h2[200];
    snprintf(h, sizeof h, "Bearer %s", k.secret);
    snprintf(h2, sizeof h2, "Bearer %s", k2.secret);
    resp_t r;
    call_as(&f, "GET", "/v1/models", h, NULL, &r);
    ASSERT_EQ(r.rec.status, 200);
    resp_free(&r);
    store_key_revoke(f.store, k.key.id, on_key, &out);
    ASSERT_EQ(out.rc, RC_OK);
    call_as(&f, "GET", "/v1/models", h, NULL, &r);
    ASSERT_EQ(r.rec.status, 401);
    resp_free(&r);
    call_as(&f, "GET", "/v1/models", h2, NULL, &r);
    ASSERT_EQ(r.rec.status, 200);
    resp_free(&r);
    fx_close(&f);
}

TEST(roles_and_acting_for_a_tenant)
{
    fx_t f;
    fx_init(&f, "roles", false);
    int64_t acme = add_tenant(&f, "acme", STORE_QUOTA_INHERIT, STORE_QUOTA_INHERIT);
    add_tenant(&f, "other", STORE_QUOTA_INHERIT, STORE_QUOTA_INHERIT);
    key_out_t ten, adm;
    add_key(&f, acme, STORE_ROLE_TENANT, &ten);
    add_key(&f, STORE_TENANT_DEFAULT, STORE_ROLE_ADMIN, &adm);
    char ht[200], ha[200];
    snprintf(ht, sizeof ht, "Bearer %s", ten.secret);
    snprintf(ha, sizeof ha, "Bearer %s", adm.secret);
    const char *admin_paths[][2] = {{"GET", "/metrics"},
                                    {"GET", "/v1/admin/tenants"},
                                    {"GET", "/v1/admin/keys"},
                                    {"POST", "/v1/adapters/x/pin"},
                                    {"POST", "/v1/adapters/x/publish"}};
    for (size_t i = 0; i < sizeof admin_paths / sizeof admin_paths[0]; i++) {
        resp_t r;
        call_as(&f, admin_paths[i][0], admin_paths[i][1], ht, NULL, &r);
        ASSERT_EQ(r.rec.status, 403);
        ASSERT(strstr(r.rec.body, "permission_denied") != NULL);
        resp_free(&r);
    }
    resp_t r;
    call_as(&f, "GET", "/v1/admin/tenants", ha, NULL, &r);
    ASSERT_EQ(r.rec.status, 200);
    ASSERT(strstr(r.rec.body, "acme") != NULL);
    resp_free(&r);
    call_as(&f, "GET", "/v1/me", ha, "acme", &r); /* an admin acts for acme */
    ASSERT_EQ(r.rec.status, 200);
    ASSERT(strstr(r.rec.body, "acme") != NULL);
    resp_free(&r);
    call_as(&f, "GET", "/v1/me", ha, "nobody", &r);
    ASSERT_EQ(r.rec.status, 404);
    ASSERT(strstr(r.rec.body, "tenant_not_found") != NULL);
    resp_free(&r);
    call_as(&f, "GET", "/v1/me", ht, "other", &r); /* a tenant key cannot */
    ASSERT_EQ(r.rec.status, 403);
    resp_free(&r);
    call_as(&f, "GET", "/v1/me", ht, "acme", &r); /* its own name is fine */
    ASSERT_EQ(r.rec.status, 200);
    resp_free(&r);
    fx_close(&f);
}

TEST(unauthenticated_large_body_refused_before_reading)
{
    fx_t f;
    fx_init(&f, "preauth", false);
    key_out_t k;
    add_key(&f, STORE_TENANT_DEFAULT, STORE_ROLE_TENANT, &k);
    resp_t r;
    memset(&r, 0, sizeof r);
    pthread_mutex_init(&r.rec.mu, NULL);
    pthread_cond_init(&r.rec.cv, NULL);
    r.sink = (api_sink_t){&r.rec, rec_begin, rec_write, rec_end};
    api_request_t req = {.method = "POST", .path = "/v1/completions", .request_id = "t",
                         .body_len = API_PRE_AUTH_BODY_MAX + 1};
    api_body_t *body = NULL;
    size_t max = 0;
    ASSERT_EQ(api_body_begin(f.api, &req, &r.sink, &body, &max), API_BODY_ANSWERED);
    ASSERT_EQ(r.rec.status, 401);
    ASSERT(body == NULL);
    resp_free(&r);
    req.body_len = API_PRE_AUTH_BODY_MAX; /* small: read, then answered by api_handle */
    memset(&r.rec, 0, sizeof r.rec);
    ASSERT_EQ(api_body_begin(f.api, &req, &r.sink, &body, &max), API_BODY_WHOLE);
    ASSERT_EQ(r.rec.n_begin, 0);
    fx_close(&f);
}

static api_caller_t caller(int64_t tenant, const char *name, int64_t max_c, int64_t tpm,
                           int64_t bytes)
{
    api_caller_t w;
    memset(&w, 0, sizeof w);
    w.tenant = tenant;
    snprintf(w.tenant_name, sizeof w.tenant_name, "%s", name);
    w.quota.max_concurrent = max_c;
    w.quota.tokens_per_min = tpm;
    w.quota.max_stored_bytes = bytes;
    w.quota.share = 1;
    return w;
}

TEST(concurrency_quota)
{
    fx_t f;
    fx_init(&f, "qconc", false);
    api_caller_t w = caller(7, "q", 2, 0, 0), other = caller(8, "o", 2, 0, 0);
    api_ticket_t t1, t2, t3, t4;
    api_fail_t e;
    ASSERT(api__quota_admit(f.api, &w, 10, &t1, &e));
    ASSERT(api__quota_admit(f.api, &w, 10, &t2, &e));
    ASSERT(!api__quota_admit(f.api, &w, 10, &t3, &e));
    ASSERT_EQ(e.status, 429);
    ASSERT_STREQ(e.code, "concurrency_quota_exceeded");
    ASSERT(strstr(e.headers, "Retry-After: 1\r\n") != NULL);
    ASSERT(strstr(e.headers, "x-ratelimit-limit-requests: 2\r\n") != NULL);
    ASSERT(api__quota_admit(f.api, &other, 10, &t4, &e)); /* another tenant is not affected */
    api__quota_release(f.api, &t1, 5);
    api__quota_release(f.api, &t1, 5); /* a second release is a no-op */
    ASSERT(api__quota_admit(f.api, &w, 10, &t3, &e));
    ASSERT(!api__quota_admit(f.api, &w, 10, &t1, &e));
    fx_close(&f);
}

TEST(token_bucket_charges_up_front_and_refunds)
{
    fx_t f;
    fx_init(&f, "qtok", false);
    api_caller_t w = caller(9, "t", 0, 100, 0);
    api_ticket_t a, b, c;
    api_fail_t e;
    ASSERT(api__quota_admit(f.api, &w, 60, &a, &e)); /* 40 left */
    ASSERT(!api__quota_admit(f.api, &w, 60, &b, &e));
    ASSERT_STREQ(e.code, "token_rate_quota_exceeded");
    ASSERT(strstr(e.headers, "x-ratelimit-limit-tokens: 100\r\n") != NULL);
    /* 20 tokens short at 100/min: about 12 s */
    const char *ra = strstr(e.headers, "Retry-After: ");
    ASSERT(ra != NULL);
    long secs = strtol(ra + 13, NULL, 10);
    ASSERT(secs >= 11 && secs <= 13);
    api__quota_release(f.api, &a, 10); /* used 10 of 60: 50 back, 90 left */
    ASSERT(api__quota_admit(f.api, &w, 60, &b, &e));
    api__quota_release(f.api, &b, 60);
    fx_close(&f);
    fx_init(&f, "qtok2", false);
    /* larger than the bucket: passes only when it is full, then the tenant waits */
    ASSERT(api__quota_admit(f.api, &w, 150, &c, &e));
    ASSERT(!api__quota_admit(f.api, &w, 1, &a, &e));
    api__quota_release(f.api, &c, 150);
    fx_close(&f);
}

TEST(storage_quota_before_upload)
{
    fx_t f;
    fx_init(&f, "qbytes", false);
    fx_import(&f); /* "alpha" for the default tenant */
    int64_t used = 0;
    core_err_t err = {{0}};
    ASSERT_RC(store_tenant_bytes(f.store, STORE_TENANT_DEFAULT, &used, &err), RC_OK, &err);
    ASSERT(used > 0);
    api_caller_t w = caller(STORE_TENANT_DEFAULT, "default", 0, 0, used + 100);
    api_fail_t e;
    ASSERT(api__quota_storage(f.api, &w, 100, &e));
    ASSERT(!api__quota_storage(f.api, &w, 101, &e));
    ASSERT_EQ(e.status, 429);
    ASSERT_STREQ(e.code, "storage_quota_exceeded");
    ASSERT(strstr(e.headers, "Retry-After: 3600\r\n") != NULL);
    fx_close(&f);
}
