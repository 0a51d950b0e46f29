/* cli.c - `adapterd tenant ...` and `adapterd key ...` (see cli.h).
 *
 * Each command opens the store without a model and with a synchronous executor, makes one
 * store call, prints, and closes. The store's change calls report through a callback; with
 * the synchronous executor it runs inside the call, so each command copies what the
 * callback saw into a cli_result_t on its stack and reads it once the call returns.
 * A key's secret exists only in that result, is written to stdout once and then wiped.
 * Main thread only. */
#include "server/cli.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/rc.h"
#include "store/store.h"

typedef struct {
    bool done; /* the callback ran */
    rc_t rc;
    core_err_t err;
    store_tenant_t tenant;
    store_key_t key;
    char secret[STORE_KEY_SECRET_MAX + 1];
} cli_result_t;

static void on_tenant(void *user, rc_t rc, const store_tenant_t *t, const core_err_t *err)
{
    cli_result_t *r = user;
    r->done = true;
    r->rc = rc;
    if (err)
        r->err = *err;
    if (rc == RC_OK && t)
        r->tenant = *t;
}

static void on_key(void *user, rc_t rc, const store_key_t *k, const char *secret,
                   const core_err_t *err)
{
    cli_result_t *r = user;
    r->done = true;
    r->rc = rc;
    if (err)
        r->err = *err;
    if (rc == RC_OK && k)
        r->key = *k;
    if (rc == RC_OK && secret)
        snprintf(r->secret, sizeof r->secret, "%s", secret);
}

/* The store said no: print why. An argument it refuses exits 2 like a bad flag. */
static int cli_fail(const char *what, rc_t rc, const core_err_t *err)
{
    fprintf(stderr, "adapterd: %s: %s%s%s\n", what, rc_str(rc), err->msg[0] ? ": " : "", err->msg);
    return rc == RC_INVALID ? 2 : 1;
}

/* A change call's callback always runs inside the call with a synchronous executor; if it
 * did not, the store broke that promise and nothing can be reported. */
static int cli_check(const char *what, const cli_result_t *r)
{
    if (!r->done) {
        fprintf(stderr, "adapterd: %s: internal error: the store did not finish the change\n",
                what);
        return 1;
    }
    return r->rc == RC_OK ? 0 : cli_fail(what, r->rc, &r->err);
}

static int cli_open(const srv_config_t *cfg, store_t **out)
{
    store_params_t sp = store_default_params();
    sp.data_dir = cfg->data_dir;
    sp.base = NULL; /* tenants and keys need no model */
    sp.exec = (store_exec_t){.ctx = NULL, .submit = NULL};
    sp.lock = true;
    sp.default_max_concurrent = cfg->tenant_max_concurrent;
    sp.default_tokens_per_min = cfg->tenant_tokens_per_min;
    sp.default_max_stored_bytes = (int64_t)cfg->tenant_max_stored_bytes;
    core_err_t err = {{0}};
    rc_t rc = store_open(&sp, out, &err);
    if (rc == RC_BUSY) {
        cli_fail(cfg->data_dir, rc, &err);
        fprintf(stderr,
                "adapterd: a daemon is serving %s; while it runs, manage tenants and keys "
                "through its admin API instead (POST /v1/admin/tenants, POST /v1/admin/keys)\n",
                cfg->data_dir);
        return 1;
    }
    if (rc != RC_OK) {
        cli_fail(cfg->data_dir, rc, &err);
        return 1; /* the folder, not an argument, is at fault */
    }
    return 0;
}

/* ---- formatting --------------------------------------------------------------------- */

static const char *fmt_quota(int64_t v, char *buf, size_t cap)
{
    if (v == STORE_QUOTA_INHERIT)
        return "inherit";
    if (v == 0)
        return "unlimited";
    snprintf(buf, cap, "%lld", (long long)v);
    return buf;
}

/* ISO 8601 UTC ("2024-05-01T12:00:00Z"), or "-" for 0 (never). */
static const char *fmt_time(int64_t t, char *buf, size_t cap)
{
    struct tm tm;
    time_t tt = (time_t)t;
    if (t == 0 || !gmtime_r(&tt, &tm) || strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        return "-";
    return buf;
}

static void print_tenant_line(const store_tenant_t *t)
{
    char a[24], b[24], c[24];
    printf("%s id=%lld max_concurrent=%s tokens_per_min=%s max_stored_bytes=%s share=%g\n", t->name,
           (long long)t->id, fmt_quota(t->max_concurrent, a, sizeof a),
           fmt_quota(t->tokens_per_min, b, sizeof b), fmt_quota(t->max_stored_bytes, c, sizeof c),
           t->share);
}

/* ---- tenant ------------------------------------------------------------------------- */

static int check_name(const char *name)
{
    if (store_name_valid(name))
        return 0;
    fprintf(stderr,
            "adapterd: tenant name '%s' is invalid: 1-64 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit\n",
            name);
    return 2;
}

/* add: a new row from the flags; set: the stored row with the given flags laid over it. */
static int tenant_put(store_t *s, const srv_config_t *cfg, bool create)
{
    store_tenant_t t;
    memset(&t, 0, sizeof t);
    char what[128];
    snprintf(what, sizeof what, "tenant %s", cfg->cli_arg);
    if (create) {
        snprintf(t.name, sizeof t.name, "%s", cfg->cli_arg);
        t.max_concurrent = STORE_QUOTA_INHERIT;
        t.tokens_per_min = STORE_QUOTA_INHERIT;
        t.max_stored_bytes = STORE_QUOTA_INHERIT;
        t.share = 1;
    } else if (store_tenant_by_name(s, cfg->cli_arg, &t) != RC_OK) {
        fprintf(stderr, "adapterd: tenant '%s' not found\n", cfg->cli_arg);
        return 1;
    }
    if (cfg->given & SRV_GIVEN_MAX_CONCURRENT)
        t.max_concurrent = cfg->q_max_concurrent;
    if (cfg->given & SRV_GIVEN_TOKENS_PER_MIN)
        t.tokens_per_min = cfg->q_tokens_per_min;
    if (cfg->given & SRV_GIVEN_MAX_STORED_BYTES)
        t.max_stored_bytes = cfg->q_max_stored_bytes;
    if (cfg->given & SRV_GIVEN_SHARE)
        t.share = cfg->share;
    cli_result_t r = {0};
    store_tenant_put(s, &t, create, on_tenant, &r);
    if (r.done && r.rc == RC_EXISTS) {
        fprintf(stderr, "adapterd: tenant '%s' already exists (change it with tenant set)\n",
                cfg->cli_arg);
        return 1;
    }
    int status = cli_check(what, &r);
    if (status == 0)
        print_tenant_line(&r.tenant);
    return status;
}

static int tenant_list(store_t *s)
{
    store_tenant_t *rows = NULL;
    size_t n = 0;
    core_err_t err = {{0}};
    rc_t rc = store_tenants(s, &rows, &n, &err);
    if (rc != RC_OK)
        return cli_fail("tenant list", rc, &err);
    int w = 4; /* "name" */
    for (size_t i = 0; i < n; i++)
        if ((int)strlen(rows[i].name) > w)
            w = (int)strlen(rows[i].name);
    printf("%-*s %6s %14s %14s %16s %s\n", w, "name", "id", "max_concurrent", "tokens_per_min",
           "max_stored_bytes", "share");
    for (size_t i = 0; i < n; i++) {
        char a[24], b[24], c[24];
        printf("%-*s %6lld %14s %14s %16s %g\n", w, rows[i].name, (long long)rows[i].id,
               fmt_quota(rows[i].max_concurrent, a, sizeof a),
               fmt_quota(rows[i].tokens_per_min, b, sizeof b),
               fmt_quota(rows[i].max_stored_bytes, c, sizeof c), rows[i].share);
    }
    free(rows);
    return 0;
}

/* ---- key ---------------------------------------------------------------------------- */

static int find_tenant(store_t *s, const char *name, store_tenant_t *t)
{
    if (store_tenant_by_name(s, name, t) == RC_OK)
        return 0;
    fprintf(stderr, "adapterd: tenant '%s' not found (create it with adapterd tenant add)\n", name);
    return 1;
}

static int key_add(store_t *s, const srv_config_t *cfg)
{
    store_tenant_t t;
    int status = find_tenant(s, cfg->tenant, &t);
    if (status != 0)
        return status;
    store_role_t role = strcmp(cfg->role, "admin") == 0 ? STORE_ROLE_ADMIN : STORE_ROLE_TENANT;
    cli_result_t r = {0};
    store_key_add(s, t.id, role, cfg->label, on_key, &r);
    status = cli_check("key add", &r);
    if (status == 0) {
        /* The secret exists nowhere else: a failed write must not pass for success. */
        bool written = printf("%s\n", r.secret) > 0 && fflush(stdout) == 0;
        if (written)
            fprintf(stderr,
                    "key %s for tenant %s (role %s) created; store the secret now, it is not "
                    "shown again\n",
                    r.key.id, t.name, store_role_str(role));
        else
            fprintf(stderr,
                    "adapterd: key %s created but its secret could not be written to stdout; "
                    "revoke it (adapterd key revoke %s)\n",
                    r.key.id, r.key.id);
        status = written ? 0 : 1;
    }
    explicit_bzero(r.secret, sizeof r.secret);
    return status;
}

static const char *tenant_name_of(const store_tenant_t *ts, size_t n, int64_t id)
{
    for (size_t i = 0; i < n; i++)
        if (ts[i].id == id)
            return ts[i].name;
    return "?";
}

static void print_keys(const store_key_t *ks, size_t n, const store_tenant_t *ts, size_t n_ts)
{
    int wt = 6, wl = 5; /* "tenant", "label" */
    for (size_t i = 0; i < n; i++) {
        int lt = (int)strlen(tenant_name_of(ts, n_ts, ks[i].tenant_id));
        int ll = (int)strlen(ks[i].label);
        wt = lt > wt ? lt : wt;
        wl = ll > wl ? ll : wl;
    }
    printf("%-12s %-*s %-6s %-*s %-20s %s\n", "id", wt, "tenant", "role", wl, "label", "created",
           "revoked");
    for (size_t i = 0; i < n; i++) {
        char c[32], r[32];
        printf("%-12s %-*s %-6s %-*s %-20s %s\n", ks[i].id, wt,
               tenant_name_of(ts, n_ts, ks[i].tenant_id), store_role_str(ks[i].role), wl,
               ks[i].label[0] ? ks[i].label : "-", fmt_time(ks[i].created, c, sizeof c),
               fmt_time(ks[i].revoked, r, sizeof r));
    }
}

static int key_list(store_t *s, const srv_config_t *cfg)
{
    store_tenant_t t = {.id = 0}; /* 0: every tenant's keys */
    if (cfg->tenant[0] && find_tenant(s, cfg->tenant, &t) != 0)
        return 1;
    store_key_t *keys = NULL;
    store_tenant_t *ts = NULL;
    size_t n = 0, n_ts = 0;
    core_err_t err = {{0}};
    int status = 0;
    rc_t rc = store_keys(s, t.id, &keys, &n, &err);
    if (rc == RC_OK)
        rc = store_tenants(s, &ts, &n_ts, &err);
    if (rc != RC_OK) {
        status = cli_fail("key list", rc, &err);
        goto out;
    }
    print_keys(keys, n, ts, n_ts);
out:
    free(keys);
    free(ts);
    return status;
}

static int key_revoke(store_t *s, const char *id)
{
    cli_result_t r = {0};
    store_key_revoke(s, id, on_key, &r);
    if (r.done && r.rc == RC_NOT_FOUND) {
        fprintf(stderr, "adapterd: key '%s' not found\n", id);
        return 1;
    }
    int status = cli_check("key revoke", &r);
    if (status == 0)
        printf("key %s revoked\n", r.key.id);
    return status;
}

/* ---- dispatch ----------------------------------------------------------------------- */

static int cli_dispatch(store_t *s, const srv_config_t *cfg)
{
    const char *a = cfg->cli_action;
    if (cfg->cmd == SRV_CMD_TENANT) {
        if (strcmp(a, "list") == 0)
            return tenant_list(s);
        return tenant_put(s, cfg, strcmp(a, "add") == 0);
    }
    if (strcmp(a, "add") == 0)
        return key_add(s, cfg);
    if (strcmp(a, "list") == 0)
        return key_list(s, cfg);
    return key_revoke(s, cfg->cli_arg);
}

int srv_cli_run(const srv_config_t *cfg)
{
    /* flags.c has checked the action, its argument and the flags; names are checked
     * here, before the store is opened, so a typo never waits on the lock. */
    if (cfg->cmd == SRV_CMD_TENANT && cfg->cli_arg && check_name(cfg->cli_arg) != 0)
        return 2;
    store_t *s = NULL;
    int status = cli_open(cfg, &s);
    if (status != 0)
        return status;
    status = cli_dispatch(s, cfg);
    if (store_n_tasks(s) == 0)
        store_close(s);
    else /* cannot happen with a synchronous executor; the lock dies with the process */
        fprintf(stderr, "adapterd: internal error: store tasks left running at exit\n");
    if (fflush(stdout) != 0 && status == 0) {
        fprintf(stderr, "adapterd: writing stdout failed\n");
        status = 1;
    }
    return status;
}
