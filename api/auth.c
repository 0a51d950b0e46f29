/* auth.c - who is calling: bearer keys, roles, acting for a tenant (tenancy.h).
 *
 * The 401 answer is one constant body whatever went wrong (no header, a scheme other
 * than Bearer, an unknown or revoked key), so a client cannot tell a revoked key from a
 * mistyped one, and the store's comparison is constant-time, so timing does not tell
 * either. Threads: the loop thread. */
#include <string.h>
#include <strings.h>

#include "api/tenancy.h"

#define AUTH_MESSAGE "missing or invalid API key: send the header `Authorization: Bearer KEY`"
#define AUTH_HEADERS "WWW-Authenticate: Bearer realm=\"adapterd\"\r\n"

static bool auth_fail(api_fail_t *f)
{
    api__fail(f, 401, "invalid_api_key", AUTH_MESSAGE);
    snprintf(f->headers, sizeof f->headers, "%s", AUTH_HEADERS);
    return false;
}

/* The key of an `Authorization: Bearer KEY` value (RFC 6750: the scheme is
 * case-insensitive, one or more spaces follow it). NULL when absent or malformed. */
static const char *bearer_token(const char *v, size_t *len)
{
    if (!v || strncasecmp(v, "Bearer ", 7) != 0)
        return NULL;
    v += 7;
    while (*v == ' ')
        v++;
    size_t n = strlen(v);
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    *len = n;
    return n ? v : NULL;
}

static void caller_of(api_t *a, const store_tenant_t *t, bool admin, const char *key_id,
                      api_caller_t *who)
{
    memset(who, 0, sizeof *who);
    who->tenant = t->id;
    snprintf(who->tenant_name, sizeof who->tenant_name, "%s", t->name);
    who->admin = admin;
    snprintf(who->key_id, sizeof who->key_id, "%s", key_id ? key_id : "");
    store_tenant_effective(a->p.store, t, &who->quota);
}

/* X-Adapterd-Tenant: an admin acts for the named tenant; a tenant key may only name its
 * own tenant (a header some proxy sets for everyone must not fail those requests). */
static bool act_as(api_t *a, const char *name, api_caller_t *who, api_fail_t *f)
{
    if (!name || strcmp(name, who->tenant_name) == 0)
        return true;
    if (!who->admin)
        return api__fail(f, 403, "permission_denied",
                         "X-Adapterd-Tenant may name another tenant only with an admin key");
    store_tenant_t t;
    if (!store_name_valid(name) || store_tenant_by_name(a->p.store, name, &t) != RC_OK)
        return api__fail(f, 404, "tenant_not_found", "tenant '%.64s' not found", name);
    char key_id[sizeof who->key_id];
    snprintf(key_id, sizeof key_id, "%s", who->key_id);
    caller_of(a, &t, true, key_id, who);
    return true;
}

/* No store (unit tests of routes without adapters): everyone is an admin of "default". */
static void caller_default(api_caller_t *who)
{
    memset(who, 0, sizeof *who);
    who->tenant = STORE_TENANT_DEFAULT;
    snprintf(who->tenant_name, sizeof who->tenant_name, "default");
    who->admin = true;
    who->quota.share = 1;
}

bool api__authenticate(api_t *a, const api_request_t *req, api_caller_t *who, api_fail_t *f)
{
    store_t *s = a->p.store;
    store_tenant_t t;
    if (!s) {
        caller_default(who);
        return true;
    }
    if (store_n_active_keys(s) == 0) { /* open mode */
        if (store_tenant(s, STORE_TENANT_DEFAULT, &t) != RC_OK)
            return api__fail(f, 500, "internal", "the tenant 'default' is missing");
        caller_of(a, &t, true, NULL, who);
        return act_as(a, req->act_as, who, f);
    }
    size_t len = 0;
    const char *key = bearer_token(req->authorization, &len);
    store_key_t k;
    if (!key || !store_auth(s, key, len, &k) || store_tenant(s, k.tenant_id, &t) != RC_OK)
        return auth_fail(f);
    caller_of(a, &t, k.role == STORE_ROLE_ADMIN, k.id, who);
    return act_as(a, req->act_as, who, f);
}

bool api__authorize(const api_caller_t *who, api_access_t need, api_fail_t *f)
{
    if (need == API_ACCESS_ADMIN && !who->admin)
        return api__fail(f, 403, "permission_denied", "this route needs an admin key");
    return true;
}

const api_caller_t *api__who(const api_request_t *req)
{
    static const api_caller_t nobody = {.tenant = STORE_TENANT_DEFAULT,
                                        .tenant_name = "default",
                                        .admin = false,
                                        .quota = {.share = 1}};
    return req->caller ? req->caller : &nobody;
}

void api__note_caller(const api_request_t *req, const api_caller_t *who)
{
    if (!req->note)
        return;
    snprintf(req->note->tenant, sizeof req->note->tenant, "%s", who->tenant_name);
    snprintf(req->note->key_id, sizeof req->note->key_id, "%s", who->key_id);
}
