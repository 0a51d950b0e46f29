/* tenant.c - tenants, API keys and published names (store.h "tenants and API keys").
 *
 * The tenant and active-key tables are copied into memory at open (s->tn) so the lookups
 * every request makes (store_auth, store_tenant) never touch sqlite. The index stays the
 * authority: a change commits first (a task: work() on a pool thread under wmu through the
 * writer), and only then does done(), on the loop thread, update the memory tables. The
 * one exception is a revoke, which drops the key from memory before its write, so a
 * failed or slow write can only refuse a key, never keep one alive.
 *
 * Secrets: a key's secret exists only in its add task and the callback; the index and
 * memory keep sha256(secret). store_auth compares every active hash in full with no
 * early exit, so its timing depends on the number of keys, not on what matched.
 *
 * Threads: public functions and done() on the loop thread; *_work on a pool thread,
 * which reads only its task (never s->tn) and the writer connection. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/sha256.h"
#include "store/fault.h"
#include "store/store_int.h"

#define TN_SECRET_RAW 32  /* random bytes of a secret: 256 bits */
#define TN_SECRET_B64 43  /* their base64url length, no padding */
#define TN_ID_RAW (STORE_KEY_ID_LEN / 2)
#define TN_LABEL_MAX 64

typedef struct {
    store_key_t k;
    uint8_t hash[32]; /* sha256 of the secret */
} tn_key_t;

struct store_tenants {
    store_tenant_t *t;
    size_t n_t, cap_t;
    tn_key_t *k; /* active keys only */
    size_t n_k, cap_k;
    size_t n_pending_t, n_pending_k; /* tasks that will append: reserved in advance */
};

#define TN_TENANT_COLS \
    "id, name, created, max_concurrent, tokens_per_min, max_stored_bytes, share"
#define TN_KEY_COLS "id, tenant_id, role, label, created, revoked, hash"

/* ---- sqlite helpers ---- */

/* Commit when rc is RC_OK, else roll back; returns the outcome. */
static rc_t tn_end(store_t *s, rc_t rc, core_err_t *err)
{
    if (rc == RC_OK && (rc = store__w_stmt(s, NULL, err, "COMMIT", "")) == RC_OK)
        return RC_OK;
    sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static void tn_copy(char *dst, size_t cap, const unsigned char *src)
{
    snprintf(dst, cap, "%s", src ? (const char *)src : "");
}

/* Row readers (also for tn_rows: true keeps the row). Column order TN_TENANT_COLS. */
static bool tn_tenant_read(sqlite3_stmt *st, void *dst)
{
    store_tenant_t *t = dst;
    memset(t, 0, sizeof *t);
    t->id = sqlite3_column_int64(st, 0);
    tn_copy(t->name, sizeof t->name, sqlite3_column_text(st, 1));
    t->created = sqlite3_column_int64(st, 2);
    t->max_concurrent = sqlite3_column_int64(st, 3);
    t->tokens_per_min = sqlite3_column_int64(st, 4);
    t->max_stored_bytes = sqlite3_column_int64(st, 5);
    t->share = sqlite3_column_double(st, 6);
    return true;
}

/* Column order TN_KEY_COLS (the hash is read by tn_active_read). */
static bool tn_key_read(sqlite3_stmt *st, void *dst)
{
    store_key_t *k = dst;
    memset(k, 0, sizeof *k);
    tn_copy(k->id, sizeof k->id, sqlite3_column_text(st, 0));
    k->tenant_id = sqlite3_column_int64(st, 1);
    const unsigned char *role = sqlite3_column_text(st, 2);
    k->role = role && strcmp((const char *)role, "admin") == 0 ? STORE_ROLE_ADMIN
                                                                : STORE_ROLE_TENANT;
    tn_copy(k->label, sizeof k->label, sqlite3_column_text(st, 3));
    k->created = sqlite3_column_int64(st, 4);
    k->revoked = sqlite3_column_int64(st, 5);
    return true;
}

static bool tn_unhex(const unsigned char *hex, uint8_t out[32])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; hex && i < 64; i++) {
        const char *d = hex[i] ? strchr(digits, hex[i]) : NULL;
        if (!d)
            return false;
        out[i / 2] = (uint8_t)(i % 2 ? out[i / 2] | (d - digits) : (d - digits) << 4);
    }
    return hex && hex[64] == '\0';
}

/* Grow *v to hold want elements of size bytes. */
static bool tn_reserve(void **v, size_t *cap, size_t want, size_t size)
{
    if (want <= *cap)
        return true;
    size_t c = *cap ? *cap * 2 : 8;
    while (c < want)
        c *= 2;
    void *nv = realloc(*v, c * size);
    if (!nv)
        return false;
    *v = nv;
    *cap = c;
    return true;
}

static bool tn_active_read(sqlite3_stmt *st, void *dst)
{
    tn_key_t *k = dst;
    tn_key_read(st, &k->k);
    /* Only this file writes hashes; a damaged one can never match, so skip it loudly. */
    if (tn_unhex(sqlite3_column_text(st, 6), k->hash))
        return true;
    fprintf(stderr, "adapterd: store: API key %s has a malformed hash: ignored\n", k->k.id);
    return false;
}

/* Append the rows of a reader query (?1 bound to arg, if it has one) to *v. */
static rc_t tn_rows(store_t *s, const char *sql, int64_t arg, bool (*read)(sqlite3_stmt *, void *),
                    size_t size, void **v, size_t *n, size_t *cap, core_err_t *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->rdb, sql, -1, &st, NULL) != SQLITE_OK)
        return store__idx_err(s->rdb, err, "prepare");
    if (sqlite3_bind_parameter_count(st) > 0)
        sqlite3_bind_int64(st, 1, arg);
    rc_t rc = RC_OK;
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (!tn_reserve(v, cap, *n + 1, size)) {
            rc = core_err(err, RC_NOMEM, "store: out of memory");
            break;
        }
        *n += read(st, (char *)*v + *n * size);
    }
    if (rc == RC_OK && r != SQLITE_DONE)
        rc = store__idx_err(s->rdb, err, "query");
    sqlite3_finalize(st);
    return rc;
}

/* ---- open / close ---- */

rc_t store__tenant_open(store_t *s, core_err_t *err)
{
    store_tenants_t *tn = calloc(1, sizeof *tn);
    if (!tn)
        return core_err(err, RC_NOMEM, "store: out of memory");
    s->tn = tn;
    rc_t rc = tn_rows(s, "SELECT " TN_TENANT_COLS " FROM tenants ORDER BY id", 0, tn_tenant_read,
                      sizeof *tn->t, (void **)&tn->t, &tn->n_t, &tn->cap_t, err);
    if (rc == RC_OK)
        rc = tn_rows(s, "SELECT " TN_KEY_COLS " FROM api_keys WHERE revoked = 0", 0,
                     tn_active_read, sizeof *tn->k, (void **)&tn->k, &tn->n_k, &tn->cap_k, err);
    return rc; /* on failure store_close calls store__tenant_close */
}

void store__tenant_close(store_t *s)
{
    if (!s->tn)
        return;
    if (s->tn->k)
        explicit_bzero(s->tn->k, s->tn->cap_k * sizeof *s->tn->k);
    free(s->tn->k);
    free(s->tn->t);
    free(s->tn);
    s->tn = NULL;
}

/* ---- lookups ---- */

/* By id, or by name when name is not NULL. */
static const store_tenant_t *tn_find(store_t *s, int64_t id, const char *name)
{
    for (size_t i = 0; s->tn && i < s->tn->n_t; i++)
        if (name ? strcmp(s->tn->t[i].name, name) == 0 : s->tn->t[i].id == id)
            return &s->tn->t[i];
    return NULL;
}

static int64_t tn_inherit(int64_t v, int64_t dflt)
{
    return v == STORE_QUOTA_INHERIT ? dflt : v;
}

void store_tenant_effective(const store_t *s, const store_tenant_t *t, store_tenant_t *out)
{
    *out = *t;
    out->max_concurrent = tn_inherit(t->max_concurrent, s->p.default_max_concurrent);
    out->tokens_per_min = tn_inherit(t->tokens_per_min, s->p.default_tokens_per_min);
    out->max_stored_bytes = tn_inherit(t->max_stored_bytes, s->p.default_max_stored_bytes);
}

int64_t store__tenant_max_bytes(store_t *s, int64_t tenant)
{
    const store_tenant_t *t = tn_find(s, tenant, NULL);
    if (!t) /* not loaded yet (a tenant made since): it can only inherit so far */
        return s->p.default_max_stored_bytes;
    return tn_inherit(t->max_stored_bytes, s->p.default_max_stored_bytes);
}

rc_t store_tenant(store_t *s, int64_t id, store_tenant_t *out)
{
    const store_tenant_t *t = tn_find(s, id, NULL);
    if (t)
        *out = *t;
    return t ? RC_OK : RC_NOT_FOUND;
}

rc_t store_tenant_by_name(store_t *s, const char *name, store_tenant_t *out)
{
    const store_tenant_t *t = name ? tn_find(s, 0, name) : NULL;
    if (t)
        *out = *t;
    return t ? RC_OK : RC_NOT_FOUND;
}

static int tn_by_name(const void *a, const void *b)
{
    return strcmp(((const store_tenant_t *)a)->name, ((const store_tenant_t *)b)->name);
}

rc_t store_tenants(store_t *s, store_tenant_t **rows, size_t *n, core_err_t *err)
{
    size_t len = s->tn ? s->tn->n_t : 0;
    *rows = NULL;
    *n = 0;
    store_tenant_t *v = malloc((len ? len : 1) * sizeof *v);
    if (!v)
        return core_err(err, RC_NOMEM, "store: out of memory");
    if (len)
        memcpy(v, s->tn->t, len * sizeof *v);
    qsort(v, len, sizeof *v, tn_by_name);
    *rows = v;
    *n = len;
    return RC_OK;
}

rc_t store_tenant_bytes(store_t *s, int64_t tenant, int64_t *bytes, core_err_t *err)
{
    sqlite3_stmt *st = NULL;
    *bytes = 0;
    if (!tn_find(s, tenant, NULL))
        return core_err(err, RC_NOT_FOUND, "tenant %lld not found", (long long)tenant);
    if (sqlite3_prepare_v2(s->rdb,
                           "SELECT COALESCE(SUM(size), 0) FROM adapters WHERE tenant_id = ?1"
                           " AND state != 'deleted'",
                           -1, &st, NULL) != SQLITE_OK)
        return store__idx_err(s->rdb, err, "tenant bytes");
    sqlite3_bind_int64(st, 1, tenant);
    rc_t rc = RC_OK;
    if (sqlite3_step(st) == SQLITE_ROW)
        *bytes = sqlite3_column_int64(st, 0);
    else
        rc = store__idx_err(s->rdb, err, "tenant bytes");
    sqlite3_finalize(st);
    return rc;
}

const char *store_role_str(store_role_t r)
{
    return r == STORE_ROLE_ADMIN ? "admin" : "tenant";
}

size_t store_n_active_keys(store_t *s)
{
    return s->tn ? s->tn->n_k : 0;
}

bool store_auth(store_t *s, const char *secret, size_t len, store_key_t *out)
{
    /* The length is not secret (every secret has the same shape): refuse early. */
    if (!s->tn || !secret || len == 0 || len > STORE_KEY_SECRET_MAX)
        return false;
    uint8_t d[32];
    core_sha256_t c;
    core_sha256_init(&c);
    core_sha256_update(&c, secret, len);
    core_sha256_final(&c, d);
    explicit_bzero(&c, sizeof c);
    size_t pick = 0;
    unsigned hit = 0;
    for (size_t i = 0; i < s->tn->n_k; i++) {
        unsigned diff = 0;
        for (int j = 0; j < 32; j++)
            diff |= (unsigned)(s->tn->k[i].hash[j] ^ d[j]);
        /* eq is 1 when diff == 0 (diff <= 255, so diff - 1 wraps only then); the index
         * is chosen by masks, not by a branch on the comparison. */
        unsigned eq = (diff - 1u) >> (sizeof(unsigned) * 8 - 1);
        size_t mask = (size_t)0 - (size_t)eq;
        pick = (pick & ~mask) | (i & mask);
        hit |= eq;
    }
    explicit_bzero(d, sizeof d);
    if (!hit)
        return false;
    if (out)
        *out = s->tn->k[pick].k;
    return true;
}

/* Keys of tenant (0 = all), from the index: revoked ones are not kept in memory. */
rc_t store_keys(store_t *s, int64_t tenant, store_key_t **rows, size_t *n, core_err_t *err)
{
    size_t cap = 0;
    *rows = NULL;
    *n = 0;
    rc_t rc = tn_rows(s, "SELECT " TN_KEY_COLS " FROM api_keys WHERE ?1 = 0 OR tenant_id = ?1"
                         " ORDER BY created, rowid", tenant, tn_key_read, sizeof **rows,
                      (void **)rows, n, &cap, err);
    if (rc != RC_OK) {
        free(*rows);
        *rows = NULL;
        *n = 0;
    }
    return rc;
}

/* ---- tasks ---- */

typedef enum { TN_TENANT_PUT, TN_KEY_ADD, TN_KEY_REVOKE, TN_PUBLISH } tn_kind_t;

/* One change. The public call fills a template on its stack and tn_go copies it into the
 * heap task (or, out of memory, answers from the template). */
typedef struct {
    store_task_t t;
    store_t *s;
    tn_kind_t kind;
    bool refused;              /* failed before it started: work() does nothing */
    bool reserved;             /* a memory-table slot is held for done() */
    bool flag;                 /* tenant put: create; publish: publish */
    store_tenant_t tenant;     /* tenant put: in, then the stored row; publish: .id */
    store_key_t key;           /* key add: in (tenant, role, label), then the row */
    uint8_t hash[32];          /* key add: sha256 of the secret */
    char secret[STORE_KEY_SECRET_MAX + 1];
    char name[STORE_NAME_MAX + 1]; /* publish */
    rc_t rc;
    core_err_t err;
    store_tenant_fn tenant_cb;
    store_key_fn key_cb;
    store_done_fn done_cb;
    void *user;
} tn_task_t;

static void tn_work(store_task_t *t);
static void tn_done(store_task_t *t);

/* Give back the memory-table slot tn_reserve_slot held for o. */
static void tn_unreserve(store_t *s, tn_task_t *o)
{
    if (o->reserved && o->kind == TN_TENANT_PUT)
        s->tn->n_pending_t--;
    if (o->reserved && o->kind == TN_KEY_ADD)
        s->tn->n_pending_k--;
    o->reserved = false;
}

static void tn_answer(tn_task_t *o, const store_adapter_t *row)
{
    bool ok = o->rc == RC_OK;
    if (o->tenant_cb)
        o->tenant_cb(o->user, o->rc, ok ? &o->tenant : NULL, &o->err);
    if (o->key_cb)
        o->key_cb(o->user, o->rc, ok ? &o->key : NULL, ok && o->secret[0] ? o->secret : NULL,
                  &o->err);
    if (o->done_cb)
        o->done_cb(o->user, o->rc, ok ? row : NULL, &o->err);
}

/* Run the change in tmpl. rc != RC_OK: refused before it started (tmpl->err says why); it
 * still answers through the executor, so a callback never runs inside its own call. */
static void tn_go(store_t *s, tn_task_t *tmpl, rc_t rc)
{
    tn_task_t *o = malloc(sizeof *o);
    if (!o) {
        tn_unreserve(s, tmpl);
        tmpl->rc = core_err(&tmpl->err, RC_NOMEM, "store: out of memory");
        tn_answer(tmpl, NULL);
        return;
    }
    *o = *tmpl;
    o->t = (store_task_t){.work = tn_work, .done = tn_done};
    o->s = s;
    o->refused = rc != RC_OK;
    o->rc = rc;
    store__task_submit(s, &o->t);
}

static rc_t tn_writable(store_t *s, core_err_t *err)
{
    if (!s->writes_failed && !store__blob_poisoned())
        return RC_OK;
    s->writes_failed = true;
    return core_err(err, RC_UNAVAILABLE,
                    "the store stopped accepting changes after an fsync failure; restart the "
                    "daemon");
}

/* done() appends to a memory table without failing: room is made before the task runs
 * (n + tasks in flight + 1). */
static rc_t tn_reserve_slot(void **v, size_t *cap, size_t n, size_t *pending, size_t size,
                            core_err_t *err)
{
    if (!tn_reserve(v, cap, n + *pending + 1, size))
        return core_err(err, RC_NOMEM, "store: out of memory");
    ++*pending;
    return RC_OK;
}

/* ---- tenant put ---- */

static rc_t tn_put_tx(store_t *s, tn_task_t *o, core_err_t *err)
{
    const store_tenant_t *t = &o->tenant;
    sqlite3_stmt *st = NULL;
    rc_t rc;
    if (o->flag) {
        rc = store__w_stmt(s, NULL, err,
                  "INSERT INTO tenants (name, created, max_concurrent, tokens_per_min,"
                  " max_stored_bytes, share) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                  "tiiiid", t->name, (int64_t)time(NULL), t->max_concurrent,
                  t->tokens_per_min, t->max_stored_bytes, t->share);
        if (rc == RC_EXISTS)
            return core_err(err, RC_EXISTS, "tenant '%s' already exists", t->name);
    } else {
        rc = store__w_stmt(s, NULL, err,
                  "UPDATE tenants SET max_concurrent = ?2, tokens_per_min = ?3,"
                  " max_stored_bytes = ?4, share = ?5 WHERE name = ?1",
                  "tiiid", t->name, t->max_concurrent, t->tokens_per_min,
                  t->max_stored_bytes, t->share);
        if (rc == RC_OK && sqlite3_changes(s->wdb) == 0)
            return core_err(err, RC_NOT_FOUND, "tenant '%s' not found", t->name);
    }
    if (rc == RC_OK)
        rc = store__w_stmt(s, &st, err,
                           "SELECT " TN_TENANT_COLS " FROM tenants WHERE name = ?1", "t",
                  t->name);
    if (rc == RC_OK)
        tn_tenant_read(st, &o->tenant);
    sqlite3_finalize(st);
    return rc;
}

static rc_t tn_put_check(const store_tenant_t *t, core_err_t *err)
{
    if (!store_name_valid(t->name))
        return core_err(err, RC_INVALID,
                        "invalid tenant name '%.80s': use 1-%d characters of A-Z a-z 0-9 . _ -,"
                        " starting with a letter or digit", t->name, STORE_NAME_MAX);
    if (!isfinite(t->share) || t->share <= 0)
        return core_err(err, RC_INVALID, "tenant '%s': share must be a number > 0", t->name);
    if (t->max_concurrent < -1 || t->tokens_per_min < -1 || t->max_stored_bytes < -1)
        return core_err(err, RC_INVALID,
                        "tenant '%s': quotas are -1 (inherit), 0 (unlimited) or a limit",
                        t->name);
    return RC_OK;
}

void store_tenant_put(store_t *s, const store_tenant_t *t, bool create, store_tenant_fn cb,
                      void *user)
{
    store_tenants_t *tn = s->tn;
    tn_task_t o = {.kind = TN_TENANT_PUT, .tenant = *t, .flag = create, .tenant_cb = cb,
                   .user = user};
    o.tenant.name[STORE_NAME_MAX] = '\0';
    rc_t rc = tn_put_check(&o.tenant, &o.err);
    if (rc == RC_OK)
        rc = tn_writable(s, &o.err);
    if (rc == RC_OK)
        rc = tn_reserve_slot((void **)&tn->t, &tn->cap_t, tn->n_t, &tn->n_pending_t,
                             sizeof *tn->t, &o.err);
    o.reserved = rc == RC_OK;
    tn_go(s, &o, rc);
}

/* ---- API keys ---- */

static rc_t tn_random(void *buf, size_t n, core_err_t *err)
{
    uint8_t *p = buf;
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(p + got, n - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return core_err(err, RC_IO, "getrandom: %s", r < 0 ? strerror(errno) : "no bytes");
        got += (size_t)r;
    }
    return RC_OK;
}

/* 32 bytes -> 43 chars of base64url without padding: bit i of the output is bit i of in. */
static void tn_b64url(const uint8_t in[TN_SECRET_RAW], char out[TN_SECRET_B64 + 1])
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (int c = 0; c < TN_SECRET_B64; c++) {
        int bit = c * 6, byte = bit / 8, shift = bit % 8;
        unsigned v = (unsigned)in[byte] << 8 | (byte + 1 < TN_SECRET_RAW ? in[byte + 1] : 0);
        out[c] = a[(v >> (10 - shift)) & 63];
    }
    out[TN_SECRET_B64] = '\0';
}

/* A fresh id and secret in o; hex = the hex of o->hash = sha256(secret). */
static rc_t tn_key_make(tn_task_t *o, char hex[65], core_err_t *err)
{
    uint8_t raw[TN_ID_RAW + TN_SECRET_RAW];
    char b64[TN_SECRET_B64 + 1];
    core_sha256_t c;
    rc_t rc = tn_random(raw, sizeof raw, err);
    if (rc == RC_OK) {
        for (int i = 0; i < TN_ID_RAW; i++)
            snprintf(o->key.id + 2 * i, 3, "%02x", raw[i]);
        tn_b64url(raw + TN_ID_RAW, b64);
        snprintf(o->secret, sizeof o->secret, "adk_%s_%s", o->key.id, b64);
        core_sha256_init(&c);
        core_sha256_update(&c, o->secret, strlen(o->secret));
        core_sha256_final(&c, o->hash);
        core_sha256_hex(o->hash, hex);
    }
    explicit_bzero(raw, sizeof raw);
    explicit_bzero(b64, sizeof b64);
    explicit_bzero(&c, sizeof c);
    return rc;
}

static rc_t tn_key_add_tx(store_t *s, tn_task_t *o, core_err_t *err)
{
    sqlite3_stmt *st = NULL;
    char hex[65];
    rc_t rc = store__w_stmt(s, &st, err, "SELECT id FROM tenants WHERE id = ?1", "i", o->key.tenant_id);
    sqlite3_finalize(st);
    if (rc == RC_NOT_FOUND)
        return core_err(err, rc, "tenant %lld not found", (long long)o->key.tenant_id);
    o->key.created = (int64_t)time(NULL);
    /* 48-bit ids can collide (the hash, practically never): draw again, a few times. */
    for (int attempt = 0; rc == RC_OK && attempt < 4; attempt++) {
        o->secret[0] = '\0';
        if ((rc = tn_key_make(o, hex, err)) != RC_OK)
            break;
        rc = store__w_stmt(s, NULL, err,
                  "INSERT INTO api_keys (id, tenant_id, role, hash, label, created)"
                  " VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                  "tittti", o->key.id, o->key.tenant_id, store_role_str(o->key.role), hex,
                  o->key.label, o->key.created);
        if (rc == RC_OK)
            return RC_OK;
        if (rc == RC_EXISTS)
            rc = attempt < 3 ? RC_OK : core_err(err, RC_INTERNAL, "no unique API key id drawn");
    }
    return rc;
}

static bool tn_label_valid(const char *label)
{
    size_t n = strlen(label);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)label[i] < 0x20 || (unsigned char)label[i] > 0x7e)
            return false;
    return n <= TN_LABEL_MAX;
}

void store_key_add(store_t *s, int64_t tenant, store_role_t role, const char *label,
                   store_key_fn cb, void *user)
{
    store_tenants_t *tn = s->tn;
    tn_task_t o = {.kind = TN_KEY_ADD, .key = {.tenant_id = tenant, .role = role},
                   .key_cb = cb, .user = user};
    rc_t rc = RC_OK;
    label = label ? label : "";
    if (role != STORE_ROLE_TENANT && role != STORE_ROLE_ADMIN)
        rc = core_err(&o.err, RC_INVALID, "unknown key role %d", (int)role);
    else if (!tn_label_valid(label))
        rc = core_err(&o.err, RC_INVALID, "key label: up to %d printable ASCII characters",
                      TN_LABEL_MAX);
    else
        snprintf(o.key.label, sizeof o.key.label, "%s", label);
    if (rc == RC_OK)
        rc = tn_writable(s, &o.err);
    if (rc == RC_OK)
        rc = tn_reserve_slot((void **)&tn->k, &tn->cap_k, tn->n_k, &tn->n_pending_k,
                             sizeof *tn->k, &o.err);
    o.reserved = rc == RC_OK;
    tn_go(s, &o, rc);
}

static rc_t tn_revoke_tx(store_t *s, tn_task_t *o, core_err_t *err)
{
    sqlite3_stmt *st = NULL;
    rc_t rc = store__w_stmt(s, &st, err, "SELECT " TN_KEY_COLS " FROM api_keys WHERE id = ?1", "t",
                   o->key.id);
    if (rc == RC_OK)
        tn_key_read(st, &o->key);
    sqlite3_finalize(st);
    if (rc == RC_NOT_FOUND)
        return core_err(err, rc, "API key '%s' not found", o->key.id);
    if (rc != RC_OK || o->key.revoked != 0) /* revoked before: unchanged */
        return rc;
    o->key.revoked = (int64_t)time(NULL);
    return store__w_stmt(s, NULL, err, "UPDATE api_keys SET revoked = ?2 WHERE id = ?1", "ti",
                o->key.id, o->key.revoked);
}

/* Out of the active set now: from this call on, store_auth refuses the key. */
static void tn_key_forget(store_t *s, const char *id)
{
    store_tenants_t *tn = s->tn;
    for (size_t i = 0; i < tn->n_k; i++)
        if (strcmp(tn->k[i].k.id, id) == 0) {
            tn->k[i] = tn->k[--tn->n_k];
            explicit_bzero(&tn->k[tn->n_k], sizeof tn->k[tn->n_k]);
            return;
        }
}

void store_key_revoke(store_t *s, const char *id, store_key_fn cb, void *user)
{
    tn_task_t o = {.kind = TN_KEY_REVOKE, .key_cb = cb, .user = user};
    rc_t rc = RC_OK;
    if (!id || strlen(id) != STORE_KEY_ID_LEN) {
        rc = core_err(&o.err, RC_NOT_FOUND, "API key '%.40s' not found", id ? id : "");
    } else {
        tn_key_forget(s, id); /* first: even a refused write leaves the key unusable */
        memcpy(o.key.id, id, sizeof o.key.id);
        rc = tn_writable(s, &o.err);
    }
    tn_go(s, &o, rc);
}

/* ---- published names ---- */

static rc_t tn_publish_tx(store_t *s, tn_task_t *o, core_err_t *err)
{
    sqlite3_stmt *st = NULL;
    int64_t tenant = o->tenant.id, owner = 0;
    rc_t rc = store__w_stmt(s, &st, err, "SELECT tenant_id FROM published WHERE name = ?1", "t",
                   o->name);
    if (rc == RC_OK)
        owner = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (rc != RC_OK && rc != RC_NOT_FOUND)
        return rc;
    if (!o->flag) {
        if (owner != tenant)
            return core_err(err, RC_NOT_FOUND, "'%s' is not published by this tenant", o->name);
        return store__w_stmt(s, NULL, err, "DELETE FROM published WHERE name = ?1", "t", o->name);
    }
    rc = store__w_stmt(s, &st, err,
              "SELECT id FROM adapters WHERE tenant_id = ?1 AND name = ?2"
              " AND state != 'deleted' LIMIT 1", "it", tenant, o->name);
    sqlite3_finalize(st);
    if (rc == RC_NOT_FOUND)
        return core_err(err, rc, "adapter '%s' not found", o->name);
    if (rc != RC_OK || owner == tenant) /* publishing again changes nothing */
        return rc;
    if (owner != 0)
        return core_err(err, RC_EXISTS, "'%s' is already published by another tenant", o->name);
    return store__w_stmt(s, NULL, err, "INSERT INTO published (name, tenant_id, published)"
                " VALUES (?1, ?2, ?3)", "tii", o->name, tenant, (int64_t)time(NULL));
}

/* The callback's row: the newest version as the tenant now resolves it. */
static void tn_publish_row(tn_task_t *o, store_adapter_t *row)
{
    core_err_t err;
    if (store_resolve(o->s, o->tenant.id, o->name, row, &err) == RC_OK)
        return;
    /* Committed, but no live version is left to show (deleted since): a bare row. */
    memset(row, 0, sizeof *row);
    snprintf(row->name, sizeof row->name, "%s", o->name);
    row->tenant_id = o->tenant.id;
    row->published = o->flag;
}

void store_publish(store_t *s, int64_t tenant, const char *name, bool publish,
                   store_done_fn cb, void *user)
{
    tn_task_t o = {.kind = TN_PUBLISH, .tenant = {.id = tenant}, .flag = publish,
                   .done_cb = cb, .user = user};
    rc_t rc = tn_writable(s, &o.err);
    if (!store_name_valid(name))
        rc = core_err(&o.err, RC_INVALID, "invalid adapter name '%.80s'", name ? name : "");
    else
        snprintf(o.name, sizeof o.name, "%s", name);
    tn_go(s, &o, rc);
}

/* ---- task bodies ---- */

static void tn_work(store_task_t *t)
{
    tn_task_t *o = (tn_task_t *)t;
    store_t *s = o->s;
    if (o->refused)
        return;
    pthread_mutex_lock(&s->wmu);
    rc_t rc = store__w_stmt(s, NULL, &o->err, "BEGIN IMMEDIATE", "");
    if (rc == RC_OK) {
        switch (o->kind) {
        case TN_TENANT_PUT: rc = tn_put_tx(s, o, &o->err); break;
        case TN_KEY_ADD: rc = tn_key_add_tx(s, o, &o->err); break;
        case TN_KEY_REVOKE: rc = tn_revoke_tx(s, o, &o->err); break;
        case TN_PUBLISH: rc = tn_publish_tx(s, o, &o->err); break;
        }
        rc = tn_end(s, rc, &o->err);
    }
    pthread_mutex_unlock(&s->wmu);
    o->rc = rc;
    if (rc != RC_OK) /* a failed add hands out nothing */
        explicit_bzero(o->secret, sizeof o->secret);
}

/* After the commit the memory tables follow, into the slot reserved at submit. */
static void tn_apply(store_t *s, tn_task_t *o)
{
    store_tenants_t *tn = s->tn;
    if (o->kind == TN_TENANT_PUT) {
        size_t i = 0;
        while (i < tn->n_t && tn->t[i].id != o->tenant.id)
            i++;
        tn->t[i] = o->tenant;
        tn->n_t += i == tn->n_t;
    } else if (o->kind == TN_KEY_ADD) {
        tn->k[tn->n_k].k = o->key;
        memcpy(tn->k[tn->n_k++].hash, o->hash, sizeof o->hash);
    }
}

static void tn_done(store_task_t *t)
{
    tn_task_t *o = (tn_task_t *)t;
    store_t *s = o->s;
    store_adapter_t row;
    if (o->rc == RC_OK)
        tn_apply(s, o); /* into the slot reserved at submit */
    tn_unreserve(s, o);
    if (store__blob_poisoned())
        s->writes_failed = true;
    if (o->kind == TN_PUBLISH && o->rc == RC_OK)
        tn_publish_row(o, &row);
    tn_answer(o, &row);
    explicit_bzero(o, sizeof *o); /* the secret and its hash */
    free(o);
    store__task_end(s);
}
