/* index.c - the adapter index in DATA_DIR/adapterd.db.
 *
 * Two connections. The writer (wdb) is the only one that writes or checkpoints (Debian's
 * sqlite 3.40 has the WAL-reset bug that needs two writers: RELIABILITY finding 4); it is
 * used only under wmu, by tasks on the pool and at open. The reader (rdb, query_only) is
 * the loop thread's: lookups never wait for a writer's fsync (WAL readers see the last
 * commit without locks) and never take wmu. The reader's statements are in index_read.c.
 *
 * Tenants: every writer change acts on the caller's own names (w_resolve never looks at
 * published names); GC and the schema-1 fix-up look at every tenant's rows.
 *
 * Migrations are a table of steps; step i takes user_version i to i+1 in one transaction
 * with the new user_version. A file newer than the last step is refused: an older daemon
 * must not write a schema it does not know.
 *
 * Every statement is prepared with bound parameters; constant text only goes through
 * sqlite3_exec (pragmas, migration steps). Every sqlite3_step of a write transaction
 * passes the "sql" failpoint first. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store/fault.h"
#include "store/store_int.h"

#define STORE_DB_FILE "adapterd.db"
#define STORE_BUSY_TIMEOUT_MS 5000

/* Step i takes user_version i to i+1. Append only: never edit a released step. */
static const char *const idx_migrations[] = {
    /* 0 -> 1: the first slice's index (adapters referenced in place by path). */
    "CREATE TABLE adapters ("
    "  id INTEGER PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL,"
    "  kind TEXT NOT NULL, rank INTEGER NOT NULL, alpha REAL NOT NULL, targets TEXT NOT NULL,"
    "  base_fingerprint TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,"
    "  path TEXT NOT NULL, created INTEGER NOT NULL, UNIQUE(name, version));",
    /* 1 -> 2: tenants, content-addressed blobs, states, usage, pins, aliases. Rows of
     * schema 1 keep their folder in legacy_path until open copies it into blobs. */
    "CREATE TABLE tenants ("
    "  id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created INTEGER NOT NULL);"
    "INSERT INTO tenants (id, name, created) VALUES (1, 'default', CAST(strftime('%s','now') AS INTEGER));"
    "CREATE TABLE adapters2 ("
    "  id INTEGER PRIMARY KEY,"
    "  tenant_id INTEGER NOT NULL REFERENCES tenants(id),"
    "  name TEXT NOT NULL, version INTEGER NOT NULL CHECK (version >= 1),"
    "  kind TEXT NOT NULL, rank INTEGER NOT NULL, alpha REAL NOT NULL, targets TEXT NOT NULL,"
    "  base_fingerprint TEXT NOT NULL, sha256 TEXT NOT NULL, config_sha256 TEXT NOT NULL,"
    "  size INTEGER NOT NULL, mem_bytes INTEGER NOT NULL, created INTEGER NOT NULL,"
    "  last_used INTEGER NOT NULL DEFAULT 0, n_requests INTEGER NOT NULL DEFAULT 0,"
    "  pinned INTEGER NOT NULL DEFAULT 0,"
    "  state TEXT NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'broken', 'deleted')),"
    "  reason TEXT NOT NULL DEFAULT '', legacy_path TEXT,"
    "  UNIQUE (tenant_id, name, version));"
    "INSERT INTO adapters2 (id, tenant_id, name, version, kind, rank, alpha, targets,"
    "  base_fingerprint, sha256, config_sha256, size, mem_bytes, created, legacy_path)"
    "  SELECT id, 1, name, version, kind, rank, alpha, targets, base_fingerprint, sha256, '',"
    "  size, 0, created, path FROM adapters;"
    "DROP TABLE adapters;"
    "ALTER TABLE adapters2 RENAME TO adapters;"
    "CREATE INDEX adapters_sha256 ON adapters (sha256);"
    "CREATE TABLE aliases ("
    "  id INTEGER PRIMARY KEY,"
    "  tenant_id INTEGER NOT NULL REFERENCES tenants(id),"
    "  name TEXT NOT NULL,"
    "  adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE RESTRICT,"
    "  updated INTEGER NOT NULL,"
    "  UNIQUE (tenant_id, name));",
    /* 2 -> 3: tenants get quotas and a fair-share weight (-1 = the serve flag's default);
     * API keys (only their sha256 is kept); published names (one publisher per name). */
    "ALTER TABLE tenants ADD COLUMN max_concurrent INTEGER NOT NULL DEFAULT -1;"
    "ALTER TABLE tenants ADD COLUMN tokens_per_min INTEGER NOT NULL DEFAULT -1;"
    "ALTER TABLE tenants ADD COLUMN max_stored_bytes INTEGER NOT NULL DEFAULT -1;"
    "ALTER TABLE tenants ADD COLUMN share REAL NOT NULL DEFAULT 1 CHECK (share > 0);"
    "CREATE TABLE api_keys ("
    "  id TEXT PRIMARY KEY,"
    "  tenant_id INTEGER NOT NULL REFERENCES tenants(id),"
    "  role TEXT NOT NULL CHECK (role IN ('admin', 'tenant')),"
    "  hash TEXT NOT NULL UNIQUE,"
    "  label TEXT NOT NULL DEFAULT '',"
    "  created INTEGER NOT NULL,"
    "  revoked INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE published ("
    "  name TEXT PRIMARY KEY,"
    "  tenant_id INTEGER NOT NULL REFERENCES tenants(id),"
    "  published INTEGER NOT NULL);",
    /* 3 -> 4: routers (kind xlora/phatgoose/arrow rows of adapters) and their experts,
     * adapter versions fixed at registration, in expert order. The index on adapter_id
     * serves the delete check ("is this version an expert of a live router?"). */
    "CREATE TABLE router_experts ("
    "  router_id INTEGER NOT NULL REFERENCES adapters(id),"
    "  idx INTEGER NOT NULL,"
    "  adapter_id INTEGER NOT NULL REFERENCES adapters(id),"
    "  PRIMARY KEY (router_id, idx));"
    "CREATE INDEX router_experts_adapter ON router_experts (adapter_id);",
};
#define IDX_SCHEMA_VERSION ((int)(sizeof idx_migrations / sizeof idx_migrations[0]))

/* ---- small helpers ---- */

rc_t store__idx_err(sqlite3 *db, core_err_t *err, const char *what)
{
    const char *file = sqlite3_db_filename(db, "main");
    return core_err(err, RC_IO, "adapter index %s: %s: %s", file ? file : "", what,
                    sqlite3_errmsg(db));
}

static void idx_copy(char *dst, size_t cap, const unsigned char *src)
{
    snprintf(dst, cap, "%s", src ? (const char *)src : "");
}

/* Bind by a type string: 't' text, 'i' int64, 'd' double, 'n' int (as int64). */
static void idx_bind(sqlite3_stmt *st, const char *types, va_list ap)
{
    for (int i = 0; types[i]; i++) {
        switch (types[i]) {
        case 't': sqlite3_bind_text(st, i + 1, va_arg(ap, const char *), -1, SQLITE_TRANSIENT); break;
        case 'i': sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t)); break;
        case 'n': sqlite3_bind_int64(st, i + 1, va_arg(ap, int)); break;
        case 'd': sqlite3_bind_double(st, i + 1, va_arg(ap, double)); break;
        }
    }
}

rc_t store__w_stmt(store_t *s, sqlite3_stmt **out, core_err_t *err, const char *sql,
                   const char *types, ...)
{
    sqlite3_stmt *st = NULL;
    va_list ap;
    if (out)
        *out = NULL;
    if (sqlite3_prepare_v2(s->wdb, sql, -1, &st, NULL) != SQLITE_OK)
        return store__idx_err(s->wdb, err, "prepare");
    va_start(ap, types);
    idx_bind(st, types, ap);
    va_end(ap);
    if (store__fp("sql")) {
        sqlite3_finalize(st);
        return core_err(err, RC_IO, "adapter index: injected I/O error");
    }
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW && out) {
        *out = st;
        return RC_OK;
    }
    sqlite3_finalize(st);
    if ((r & 0xff) == SQLITE_CONSTRAINT)
        return core_err(err, RC_EXISTS, "adapter index: %s", sqlite3_errmsg(s->wdb));
    if (r != SQLITE_DONE && r != SQLITE_ROW)
        return store__idx_err(s->wdb, err, sql);
    return out ? RC_NOT_FOUND : RC_OK;
}

static rc_t w_exec(store_t *s, const char *sql, core_err_t *err)
{
    return store__w_stmt(s, NULL, err, sql, "");
}

static rc_t w_begin(store_t *s, core_err_t *err)
{
    return w_exec(s, "BEGIN IMMEDIATE", err);
}

/* Commit when rc is RC_OK, else roll back; returns the outcome. */
static rc_t w_end(store_t *s, rc_t rc, core_err_t *err)
{
    if (rc == RC_OK) {
        rc = w_exec(s, "COMMIT", err);
        if (rc == RC_OK)
            return RC_OK;
    }
    sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/* ---- schema ---- */

/* PRAGMA NAME's integer value. */
static rc_t idx_pragma_int(sqlite3 *db, const char *name, int *out, core_err_t *err)
{
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA %s", name);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return store__idx_err(db, err, sql);
    rc_t rc = RC_OK;
    if (sqlite3_step(st) == SQLITE_ROW)
        *out = sqlite3_column_int(st, 0);
    else
        rc = store__idx_err(db, err, sql);
    sqlite3_finalize(st);
    return rc;
}

static rc_t idx_user_version(sqlite3 *db, int *out, core_err_t *err)
{
    return idx_pragma_int(db, "user_version", out, err);
}

/* PRAGMA NAME reads back as WANT (RELIABILITY D9: checked, not assumed). */
static rc_t idx_expect_pragma(sqlite3 *db, const char *name, int want, core_err_t *err)
{
    int v = -1;
    rc_t rc = idx_pragma_int(db, name, &v, err);
    if (rc == RC_OK && v != want)
        rc = core_err(err, RC_IO, "adapter index %s: PRAGMA %s is %d, adapterd needs %d",
                      sqlite3_db_filename(db, "main"), name, v, want);
    return rc;
}

/* Refuses a newer schema before anything writes to the file (journal_mode = WAL
 * rewrites its header). OUT: *v. */
static rc_t idx_check_version(sqlite3 *db, int *v, core_err_t *err)
{
    rc_t rc = idx_user_version(db, v, err);
    if (rc != RC_OK)
        return rc;
    if (*v > IDX_SCHEMA_VERSION)
        return core_err(err, RC_UNSUPPORTED,
                        "adapter index %s has schema version %d, newer than this adapterd "
                        "supports (%d): upgrade adapterd (the file was left untouched)",
                        sqlite3_db_filename(db, "main"), *v, IDX_SCHEMA_VERSION);
    if (*v < 0)
        return core_err(err, RC_FORMAT, "adapter index: schema version %d is invalid", *v);
    return RC_OK;
}

static rc_t idx_migrate(sqlite3 *db, core_err_t *err)
{
    int v = 0;
    rc_t rc = idx_check_version(db, &v, err);
    if (rc != RC_OK)
        return rc;
    for (; v < IDX_SCHEMA_VERSION; v++) {
        char pragma[64];
        snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", v + 1);
        if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
            return store__idx_err(db, err, "begin migration");
        if (sqlite3_exec(db, idx_migrations[v], NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_exec(db, pragma, NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            rc = core_err(err, RC_IO, "adapter index %s: migration %d -> %d: %s",
                          sqlite3_db_filename(db, "main"), v, v + 1, sqlite3_errmsg(db));
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            return rc;
        }
    }
    return RC_OK;
}

/* The settings the design depends on (RELIABILITY D9), checked, not assumed. */
static rc_t idx_check_wal(sqlite3 *db, core_err_t *err)
{
    sqlite3_stmt *st = NULL;
    rc_t rc = RC_OK;
    if (sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL) != SQLITE_OK)
        return store__idx_err(db, err, "journal_mode");
    if (sqlite3_step(st) != SQLITE_ROW ||
        strcmp((const char *)sqlite3_column_text(st, 0), "wal") != 0)
        rc = core_err(err, RC_IO, "adapter index: WAL journal mode could not be enabled "
                                  "(a network filesystem?)");
    sqlite3_finalize(st);
    return rc;
}

static rc_t idx_open_writer(store_t *s, const char *path, core_err_t *err)
{
    static const char *const pragmas[] = {
        "PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL", "PRAGMA foreign_keys = ON",
        "PRAGMA mmap_size = 0",
    };
    if (sqlite3_open_v2(path, &s->wdb, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK)
        return core_err(err, RC_IO, "open '%s': %s", path,
                        s->wdb ? sqlite3_errmsg(s->wdb) : "out of memory");
    sqlite3_busy_timeout(s->wdb, STORE_BUSY_TIMEOUT_MS);
    int v = 0;
    rc_t rc = idx_check_version(s->wdb, &v, err);
    if (rc != RC_OK)
        return rc;
    for (size_t i = 0; i < sizeof pragmas / sizeof pragmas[0]; i++)
        if (sqlite3_exec(s->wdb, pragmas[i], NULL, NULL, NULL) != SQLITE_OK)
            return store__idx_err(s->wdb, err, pragmas[i]);
    rc = idx_check_wal(s->wdb, err);
    if (rc == RC_OK) /* 2 = FULL: a commit is on disk before the 201 */
        rc = idx_expect_pragma(s->wdb, "synchronous", 2, err);
    if (rc == RC_OK) /* no mmap of the db file: the WAL-reset bug's other half */
        rc = idx_expect_pragma(s->wdb, "mmap_size", 0, err);
    if (rc == RC_OK)
        rc = idx_migrate(s->wdb, err);
    return rc;
}

static rc_t idx_open_reader(store_t *s, const char *path, core_err_t *err)
{
    if (sqlite3_open_v2(path, &s->rdb, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
        return core_err(err, RC_IO, "open '%s' (reader): %s", path,
                        s->rdb ? sqlite3_errmsg(s->rdb) : "out of memory");
    sqlite3_busy_timeout(s->rdb, STORE_BUSY_TIMEOUT_MS);
    if (sqlite3_exec(s->rdb, "PRAGMA query_only = 1", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(s->rdb, "PRAGMA mmap_size = 0", NULL, NULL, NULL) != SQLITE_OK)
        return store__idx_err(s->rdb, err, "reader pragmas");
    /* The reader can never write, so the writer stays the only connection that commits
     * and therefore the only one that checkpoints (sqlite 3.40's WAL-reset bug). */
    rc_t rc = idx_expect_pragma(s->rdb, "query_only", 1, err);
    if (rc == RC_OK)
        rc = idx_expect_pragma(s->rdb, "mmap_size", 0, err);
    if (rc != RC_OK)
        return rc;
    return store__idx_prepare_reader(s, err);
}

rc_t store__index_open(store_t *s, core_err_t *err)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", s->data_dir, STORE_DB_FILE);
    rc_t rc = idx_open_writer(s, path, err);
    if (rc == RC_OK)
        rc = idx_open_reader(s, path, err);
    return rc;
}

void store__index_close(store_t *s)
{
    /* The reader first, so the writer is the last connection (it checkpoints on close). */
    for (int i = 0; i < RS__COUNT; i++)
        sqlite3_finalize(s->rst[i]);
    sqlite3_close(s->rdb);
    sqlite3_close(s->wdb);
    s->rdb = s->wdb = NULL;
}

/* ---- writer (callers hold wmu) ---- */

/* Prepare sql on the writer and bind the arguments (see idx_bind). */
static rc_t w_prepare(store_t *s, const char *sql, const char *types, va_list ap,
                      sqlite3_stmt **st, core_err_t *err)
{
    if (sqlite3_prepare_v2(s->wdb, sql, -1, st, NULL) != SQLITE_OK)
        return store__idx_err(s->wdb, err, "prepare");
    idx_bind(*st, types, ap);
    return RC_OK;
}

/* One row through the writer (inside its transaction). RC_NOT_FOUND when none. */
static rc_t w_row(store_t *s, const char *sql, const char *types, store_adapter_t *row,
                  core_err_t *err, ...)
{
    sqlite3_stmt *st = NULL;
    va_list ap;
    va_start(ap, err);
    rc_t rc = w_prepare(s, sql, types, ap, &st, err);
    va_end(ap);
    if (rc != RC_OK)
        return rc;
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW)
        store__idx_row_read(st, row);
    else if (r == SQLITE_DONE)
        rc = RC_NOT_FOUND;
    else
        rc = store__idx_err(s->wdb, err, "lookup");
    sqlite3_finalize(st);
    return rc;
}

/* An integer from a one-row query (0 when no row or NULL). */
static rc_t w_int(store_t *s, const char *sql, const char *types, int64_t *out,
                  core_err_t *err, ...)
{
    sqlite3_stmt *st = NULL;
    va_list ap;
    *out = 0;
    va_start(ap, err);
    rc_t rc = w_prepare(s, sql, types, ap, &st, err);
    va_end(ap);
    if (rc != RC_OK)
        return rc;
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return (r == SQLITE_ROW || r == SQLITE_DONE) ? RC_OK : store__idx_err(s->wdb, err, "query");
}

#define W_NEWEST_LIVE                                                                     \
    "SELECT " STORE_IDX_COLS " FROM adapters AS a WHERE a.tenant_id = ?1 AND a.name = ?2"  \
    " AND a.state != 'deleted' ORDER BY a.version DESC LIMIT 1"

/* Resolve a spec in tenant's own names through the writer (inside its transaction):
 * changes never reach a name another tenant publishes. */
static rc_t w_resolve(store_t *s, int64_t tenant, const char *spec, store_adapter_t *row,
                      core_err_t *err)
{
    char name[STORE_NAME_MAX + 1];
    int version = 0;
    rc_t rc = store__spec_parse(spec, name, &version, err);
    if (rc != RC_OK)
        return rc;
    if (version == 0) {
        rc = w_row(s, "SELECT " STORE_IDX_COLS " FROM aliases AS al JOIN adapters AS a ON a.id ="
                      " al.adapter_id WHERE al.tenant_id = ?1 AND al.name = ?2",
                   "it", row, err, tenant, name);
        if (rc != RC_NOT_FOUND)
            return rc;
        rc = w_row(s, W_NEWEST_LIVE, "it", row, err, tenant, name);
    } else {
        rc = w_row(s, "SELECT " STORE_IDX_COLS " FROM adapters AS a WHERE a.tenant_id = ?1 AND"
                      " a.name = ?2 AND a.version = ?3 AND a.state != 'deleted'",
                   "itn", row, err, tenant, name, version);
    }
    if (rc == RC_NOT_FOUND)
        core_err(err, rc, "adapter '%.80s' not found", spec);
    return rc;
}

static rc_t w_is_alias(store_t *s, int64_t tenant, const char *name, bool *yes,
                       core_err_t *err)
{
    int64_t n = 0;
    rc_t rc = w_int(s, "SELECT COUNT(*) FROM aliases WHERE tenant_id = ?1 AND name = ?2",
                    "it", &n, err, tenant, name);
    *yes = n > 0;
    return rc;
}

static rc_t w_insert_row(store_t *s, int64_t tenant, const store_adapter_t *r,
                         core_err_t *err)
{
    return store__w_stmt(s, NULL, err,
                  "INSERT INTO adapters (tenant_id, name, version, kind, rank, alpha, targets,"
                  " base_fingerprint, sha256, config_sha256, size, mem_bytes, created)"
                  " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                  "itntndttttiii", tenant, r->name, r->version, r->kind, r->rank,
                  r->alpha, r->targets, r->base_fingerprint, r->sha256, r->config_sha256,
                  r->size, r->mem_bytes, r->created);
}

/* The tenant's storage quota: its live versions' weights plus the new ones. Checked in
 * the insert transaction (BEGIN IMMEDIATE), so two uploads cannot both pass it. */
static rc_t w_quota(store_t *s, const store_insert_t *in, core_err_t *err)
{
    int64_t stored = 0;
    if (in->max_bytes <= 0)
        return RC_OK;
    rc_t rc = w_int(s, "SELECT COALESCE(SUM(size), 0) FROM adapters WHERE tenant_id = ?1"
                       " AND state != 'deleted'",
                    "i", &stored, err, in->tenant);
    if (rc == RC_OK && stored + in->probe->size > in->max_bytes)
        rc = core_err(err, RC_QUOTA,
                      "tenant storage quota: %lld bytes stored + %lld new > limit %lld "
                      "(max_stored_bytes)",
                      (long long)stored, (long long)in->probe->size, (long long)in->max_bytes);
    return rc;
}

/* A router's experts must still be live LoRA rows when its row commits: a delete may
 * have run since the loop thread resolved them. Both transactions are BEGIN IMMEDIATE,
 * so this check and the delete's "expert of a live router" check cannot interleave. */
static rc_t w_experts_live(store_t *s, const store_insert_t *in, core_err_t *err)
{
    for (int i = 0; i < in->n_experts; i++) {
        store_adapter_t r;
        rc_t rc = w_row(s, "SELECT " STORE_IDX_COLS " FROM adapters AS a WHERE a.id = ?1", "i",
                        &r, err, in->experts[i]);
        if (rc == RC_NOT_FOUND)
            return core_err(err, RC_NOT_FOUND, "expert %d of router '%s' no longer exists", i + 1,
                            in->name);
        if (rc != RC_OK)
            return rc;
        if (r.state == STORE_STATE_DELETED)
            return core_err(err, RC_NOT_FOUND, "expert '%s@%d' of router '%s' was deleted",
                            r.name, r.version, in->name);
        if (store_kind_is_router(r.kind))
            return core_err(err, RC_INVALID,
                            "expert '%s@%d' of router '%s' is a router: experts are LoRA adapters",
                            r.name, r.version, in->name);
    }
    return RC_OK;
}

/* Whether row id has exactly in's experts, in order (none for an adapter). */
static rc_t w_same_experts(store_t *s, int64_t id, const store_insert_t *in, bool *same,
                           core_err_t *err)
{
    sqlite3_stmt *st = NULL;
    int i = 0, r;
    *same = true;
    if (sqlite3_prepare_v2(s->wdb,
                           "SELECT adapter_id FROM router_experts WHERE router_id = ?1 ORDER BY idx",
                           -1, &st, NULL) != SQLITE_OK)
        return store__idx_err(s->wdb, err, "prepare");
    sqlite3_bind_int64(st, 1, id);
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (i >= in->n_experts || sqlite3_column_int64(st, 0) != in->experts[i])
            *same = false;
        i++;
    }
    sqlite3_finalize(st);
    if (r != SQLITE_DONE)
        return store__idx_err(s->wdb, err, "router experts");
    if (i != in->n_experts)
        *same = false;
    return RC_OK;
}

static rc_t w_insert_experts(store_t *s, int64_t router_id, const store_insert_t *in,
                             core_err_t *err)
{
    rc_t rc = RC_OK;
    for (int i = 0; rc == RC_OK && i < in->n_experts; i++)
        rc = store__w_stmt(s, NULL, err,
                           "INSERT INTO router_experts (router_id, idx, adapter_id)"
                           " VALUES (?1, ?2, ?3)",
                           "ini", router_id, i, in->experts[i]);
    return rc;
}

/* The reuse rule of imports: the newest live version has the same bytes (and, for a
 * router, the same experts), so importing it again is that row. */
static rc_t w_reusable(store_t *s, const store_insert_t *in, const store_adapter_t *newest,
                       bool *yes, core_err_t *err)
{
    *yes = in->reuse_same && newest->state == STORE_STATE_READY &&
           strcmp(newest->kind, in->probe->kind) == 0 &&
           strcmp(newest->sha256, in->probe->sha256) == 0 &&
           strcmp(newest->config_sha256, in->probe->config_sha256) == 0 &&
           strcmp(newest->base_fingerprint, s->p.base->fingerprint) == 0;
    return *yes ? w_same_experts(s, newest->id, in, yes, err) : RC_OK;
}

/* Inside the transaction: the checks, then install, then the row. */
static rc_t w_insert_tx(store_t *s, const store_insert_t *in,
                        rc_t (*install)(void *, core_err_t *), void *ctx, store_adapter_t *row,
                        core_err_t *err)
{
    bool alias = false;
    store_adapter_t newest;
    int64_t max_v = 0;
    rc_t rc = w_is_alias(s, in->tenant, in->name, &alias, err);
    if (rc == RC_OK && alias)
        return core_err(err, RC_EXISTS, "'%s' is an alias: adapters and aliases share names",
                        in->name);
    if (rc == RC_OK)
        rc = w_row(s, W_NEWEST_LIVE, "it", &newest, err, in->tenant, in->name);
    if (rc == RC_OK && in->fail_if_exists)
        return core_err(err, RC_EXISTS, "The lora adapter '%s' has already been loaded.",
                        in->name);
    bool reuse = false;
    if (rc == RC_OK && (rc = w_reusable(s, in, &newest, &reuse, err)) == RC_OK && reuse) {
        *row = newest;
        return install(ctx, err); /* the blobs exist; installing again is a no-op */
    }
    if (rc != RC_OK && rc != RC_NOT_FOUND)
        return rc;
    rc = w_experts_live(s, in, err);
    if (rc != RC_OK)
        return rc;
    rc = w_int(s, "SELECT MAX(version) FROM adapters WHERE tenant_id = ?1 AND name = ?2", "it",
               &max_v, err, in->tenant, in->name);
    if (rc == RC_OK)
        rc = w_quota(s, in, err); /* before install: a refusal moves no blob */
    if (rc == RC_OK)
        rc = install(ctx, err);
    if (rc != RC_OK)
        return rc;
    *row = *in->probe;
    snprintf(row->name, sizeof row->name, "%s", in->name);
    snprintf(row->base_fingerprint, sizeof row->base_fingerprint, "%s", s->p.base->fingerprint);
    row->version = (int)max_v + 1;
    row->created = (int64_t)time(NULL);
    row->state = STORE_STATE_READY;
    rc = w_insert_row(s, in->tenant, row, err);
    int64_t id = sqlite3_last_insert_rowid(s->wdb);
    if (rc == RC_OK) /* the router's experts commit with its row */
        rc = w_insert_experts(s, id, in, err);
    if (rc == RC_OK) /* read back: tenant_id and published as stored */
        rc = w_row(s, "SELECT " STORE_IDX_COLS " FROM adapters AS a WHERE a.id = ?1", "i", row,
                   err, id);
    return rc;
}

rc_t store__w_insert(store_t *s, const store_insert_t *in,
                     rc_t (*install)(void *, core_err_t *), void *ctx, store_adapter_t *row,
                     core_err_t *err)
{
    rc_t rc = w_begin(s, err);
    if (rc != RC_OK)
        return rc;
    rc = w_insert_tx(s, in, install, ctx, row, err);
    return w_end(s, rc, err);
}

/* RC_EXISTS when version id of name is an expert of a router that is not deleted. */
static rc_t w_router_using(store_t *s, int64_t id, const char *name, int version,
                           core_err_t *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->wdb,
                           "SELECT r.name, r.version FROM router_experts AS re JOIN adapters AS r"
                           " ON r.id = re.router_id WHERE re.adapter_id = ?1 AND"
                           " r.state != 'deleted' ORDER BY r.id LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK)
        return store__idx_err(s->wdb, err, "prepare");
    sqlite3_bind_int64(st, 1, id);
    int r = sqlite3_step(st);
    rc_t rc = RC_OK;
    if (r == SQLITE_ROW)
        rc = core_err(err, RC_EXISTS,
                      "adapter '%s@%d' is an expert of router '%s@%d'; delete the router first",
                      name, version, (const char *)sqlite3_column_text(st, 0),
                      sqlite3_column_int(st, 1));
    else if (r != SQLITE_DONE)
        rc = store__idx_err(s->wdb, err, "router experts");
    sqlite3_finalize(st);
    return rc;
}

/* The ids a delete affects, and a refusal when an alias points at one or a live router
 * uses one as an expert. */
static rc_t w_delete_ids(store_t *s, int64_t tenant, const char *spec, const char *name,
                         int version, int64_t **ids, size_t *n, core_err_t *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->wdb,
                           "SELECT a.id, a.version, (SELECT al.name FROM aliases AS al WHERE"
                           " al.adapter_id = a.id LIMIT 1) FROM adapters AS a WHERE"
                           " a.tenant_id = ?1 AND a.name = ?2 AND a.state != 'deleted' AND"
                           " (?3 = 0 OR a.version = ?3) ORDER BY a.version",
                           -1, &st, NULL) != SQLITE_OK)
        return store__idx_err(s->wdb, err, "prepare");
    sqlite3_bind_int64(st, 1, tenant);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 3, version);
    rc_t rc = RC_OK;
    int r;
    while (rc == RC_OK && (r = sqlite3_step(st)) == SQLITE_ROW) {
        if (sqlite3_column_type(st, 2) != SQLITE_NULL) {
            rc = core_err(err, RC_EXISTS, "alias '%s' points at %s@%d: repoint or delete it first",
                          (const char *)sqlite3_column_text(st, 2), name,
                          sqlite3_column_int(st, 1));
            break;
        }
        rc = w_router_using(s, sqlite3_column_int64(st, 0), name, sqlite3_column_int(st, 1), err);
        if (rc != RC_OK)
            break;
        int64_t *nv = realloc(*ids, (*n + 1) * sizeof *nv);
        if (!nv) {
            rc = core_err(err, RC_NOMEM, "store: out of memory");
            break;
        }
        *ids = nv;
        (*ids)[(*n)++] = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    if (rc == RC_OK && *n == 0)
        rc = core_err(err, RC_NOT_FOUND, "adapter '%.80s' not found", spec);
    return rc;
}

rc_t store__w_delete(store_t *s, int64_t tenant, const char *spec, store_adapter_t *row,
                     int64_t **ids, size_t *n_ids, core_err_t *err)
{
    char name[STORE_NAME_MAX + 1];
    int version = 0;
    *ids = NULL;
    *n_ids = 0;
    rc_t rc = store__spec_parse(spec, name, &version, err);
    if (rc != RC_OK)
        return rc;
    if ((rc = w_begin(s, err)) != RC_OK)
        return rc;
    rc = w_delete_ids(s, tenant, spec, name, version, ids, n_ids, err);
    for (size_t i = 0; rc == RC_OK && i < *n_ids; i++)
        rc = store__w_stmt(s, NULL, err, "UPDATE adapters SET state = 'deleted' WHERE id = ?1", "i",
                    (*ids)[i]);
    /* The name's last live version gone: its publication goes too, in this transaction,
     * so a deleted name never resolves for anyone (nor comes back with a new upload). */
    if (rc == RC_OK)
        rc = store__w_stmt(s, NULL, err,
                    "DELETE FROM published WHERE tenant_id = ?1 AND name = ?2 AND NOT EXISTS"
                    " (SELECT 1 FROM adapters WHERE tenant_id = ?1 AND name = ?2"
                    " AND state != 'deleted')",
                    "it", tenant, name);
    if (rc == RC_OK)
        rc = w_row(s, "SELECT " STORE_IDX_COLS " FROM adapters AS a WHERE a.id = ?1", "i", row, err,
                   (*ids)[*n_ids - 1]);
    rc = w_end(s, rc, err);
    if (rc != RC_OK) {
        free(*ids);
        *ids = NULL;
        *n_ids = 0;
    }
    return rc;
}

rc_t store__w_alias_put(store_t *s, int64_t tenant, const char *alias, const char *target,
                        store_adapter_t *row, core_err_t *err)
{
    int64_t n_named = 0;
    if (!store_name_valid(alias))
        return core_err(err, RC_INVALID, "invalid alias name '%.80s'", alias);
    rc_t rc = w_begin(s, err);
    if (rc != RC_OK)
        return rc;
    rc = w_int(s, "SELECT COUNT(*) FROM adapters WHERE tenant_id = ?1 AND name = ?2", "it",
               &n_named, err, tenant, alias);
    if (rc == RC_OK && n_named > 0)
        rc = core_err(err, RC_EXISTS, "'%s' is an adapter name: adapters and aliases share names",
                      alias);
    if (rc == RC_OK)
        rc = w_resolve(s, tenant, target, row, err);
    if (rc == RC_OK && row->state != STORE_STATE_READY)
        rc = core_err(err, RC_UNAVAILABLE, "adapter %s@%d is %s: %s", row->name, row->version,
                      store_state_str(row->state), row->reason);
    if (rc == RC_OK)
        rc = store__w_stmt(s, NULL, err,
                    "INSERT INTO aliases (tenant_id, name, adapter_id, updated)"
                    " VALUES (?1, ?2, ?3, ?4) ON CONFLICT (tenant_id, name) DO UPDATE SET"
                    " adapter_id = excluded.adapter_id, updated = excluded.updated",
                    "itii", tenant, alias, row->id, (int64_t)time(NULL));
    return w_end(s, rc, err);
}

rc_t store__w_alias_delete(store_t *s, int64_t tenant, const char *alias, core_err_t *err)
{
    int64_t n = 0;
    if (!store_name_valid(alias))
        return core_err(err, RC_INVALID, "invalid alias name '%.80s'", alias);
    rc_t rc = w_begin(s, err);
    if (rc != RC_OK)
        return rc;
    rc = w_int(s, "SELECT COUNT(*) FROM aliases WHERE tenant_id = ?1 AND name = ?2", "it", &n,
               err, tenant, alias);
    if (rc == RC_OK && n == 0)
        rc = core_err(err, RC_NOT_FOUND, "alias '%s' not found", alias);
    if (rc == RC_OK)
        rc = store__w_stmt(s, NULL, err, "DELETE FROM aliases WHERE tenant_id = ?1 AND name = ?2", "it",
                    tenant, alias);
    return w_end(s, rc, err);
}

static rc_t w_simple_tx(store_t *s, core_err_t *err, const char *sql, const char *types,
                        int64_t a, const char *b)
{
    rc_t rc = w_begin(s, err);
    if (rc != RC_OK)
        return rc;
    if (types[1] == 't')
        rc = store__w_stmt(s, NULL, err, sql, types, a, b);
    else
        rc = store__w_stmt(s, NULL, err, sql, types, a);
    return w_end(s, rc, err);
}

rc_t store__w_pin(store_t *s, int64_t id, bool pin, core_err_t *err)
{
    return w_simple_tx(s, err,
                       pin ? "UPDATE adapters SET pinned = 1 WHERE id = ?1"
                           : "UPDATE adapters SET pinned = 0 WHERE id = ?1",
                       "i", id, NULL);
}

rc_t store__w_mark_broken(store_t *s, int64_t id, const char *reason, core_err_t *err)
{
    return w_simple_tx(s, err,
                       "UPDATE adapters SET state = 'broken', reason = ?2 WHERE id = ?1"
                       " AND state = 'ready'",
                       "it", id, reason);
}

rc_t store__w_usage(store_t *s, const store_usage_t *u, size_t n, core_err_t *err)
{
    rc_t rc = w_begin(s, err);
    for (size_t i = 0; rc == RC_OK && i < n; i++)
        rc = store__w_stmt(s, NULL, err,
                    "UPDATE adapters SET n_requests = n_requests + ?2,"
                    " last_used = MAX(last_used, ?3) WHERE id = ?1",
                    "iii", u[i].id, u[i].n, u[i].last_used);
    return w_end(s, rc, err);
}

/* ---- blob GC ---- */

typedef struct {
    char (*hex)[STORE_BLOB_HEX];
    size_t n;
} idx_keep_t;

static int idx_hexcmp(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

static bool idx_keep(void *ctx, const char *hex)
{
    const idx_keep_t *k = ctx;
    /* No live blobs: k->hex is NULL, which bsearch must not be given. */
    return k->n > 0 && bsearch(hex, k->hex, k->n, sizeof *k->hex, idx_hexcmp) != NULL;
}

/* Every blob a row that is not deleted names, sorted. */
static rc_t idx_live_blobs(store_t *s, idx_keep_t *k, core_err_t *err)
{
    sqlite3_stmt *st = NULL;
    rc_t rc = RC_OK;
    if (sqlite3_prepare_v2(s->wdb,
                           "SELECT sha256 FROM adapters WHERE state != 'deleted' UNION"
                           " SELECT config_sha256 FROM adapters WHERE state != 'deleted'",
                           -1, &st, NULL) != SQLITE_OK)
        return store__idx_err(s->wdb, err, "prepare");
    size_t cap = 0;
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (k->n == cap) {
            cap = cap ? cap * 2 : 64;
            void *nv = realloc(k->hex, cap * sizeof *k->hex);
            if (!nv) {
                rc = core_err(err, RC_NOMEM, "store: out of memory");
                break;
            }
            k->hex = nv;
        }
        idx_copy(k->hex[k->n++], STORE_BLOB_HEX, sqlite3_column_text(st, 0));
    }
    if (rc == RC_OK && r != SQLITE_DONE)
        rc = store__idx_err(s->wdb, err, "gc query");
    sqlite3_finalize(st);
    if (rc == RC_OK && k->n)
        qsort(k->hex, k->n, sizeof *k->hex, idx_hexcmp);
    return rc;
}

rc_t store__w_gc(store_t *s, int *n_removed, uint64_t *bytes, core_err_t *err)
{
    idx_keep_t k = {0};
    *n_removed = 0;
    *bytes = 0;
    /* A read transaction keeps the set stable; installs wait on wmu, held by the caller. */
    rc_t rc = idx_live_blobs(s, &k, err);
    if (rc == RC_OK)
        rc = store__blob_gc(s->data_dir, idx_keep, &k, n_removed, bytes, err);
    free(k.hex);
    return rc;
}

/* ---- rows of schema 1 ---- */

typedef struct {
    int64_t id;
    char path[PATH_MAX];
    char sha256[STORE_BLOB_HEX];
} idx_legacy_t;

static rc_t idx_legacy_rows(store_t *s, idx_legacy_t **rows, size_t *n, core_err_t *err)
{
    sqlite3_stmt *st = NULL;
    rc_t rc = RC_OK;
    *rows = NULL;
    *n = 0;
    if (sqlite3_prepare_v2(s->wdb,
                           "SELECT id, legacy_path, sha256 FROM adapters WHERE legacy_path IS"
                           " NOT NULL AND state != 'deleted'",
                           -1, &st, NULL) != SQLITE_OK)
        return store__idx_err(s->wdb, err, "prepare");
    while (sqlite3_step(st) == SQLITE_ROW) {
        idx_legacy_t *nv = realloc(*rows, (*n + 1) * sizeof *nv);
        if (!nv) {
            rc = core_err(err, RC_NOMEM, "store: out of memory");
            break;
        }
        *rows = nv;
        nv[*n].id = sqlite3_column_int64(st, 0);
        idx_copy(nv[*n].path, sizeof nv[*n].path, sqlite3_column_text(st, 1));
        idx_copy(nv[*n].sha256, sizeof nv[*n].sha256, sqlite3_column_text(st, 2));
        (*n)++;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Copy one legacy folder into blobs and point the row at them, or mark it broken. */
static rc_t idx_legacy_one(store_t *s, const idx_legacy_t *l, core_err_t *err)
{
    char cfg[PATH_MAX + 32], wts[PATH_MAX + 32], chex[STORE_BLOB_HEX], whex[STORE_BLOB_HEX];
    store_blob_writer_t *cw = NULL, *ww = NULL;
    store_adapter_t probe;
    core_err_t why = {{0}};
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", l->path);
    snprintf(wts, sizeof wts, "%s/adapter_model.safetensors", l->path);
    rc_t rc = store__blob_copy_file(s->data_dir, cfg, STORE_CONFIG_MAX, &cw, chex, NULL, &why);
    if (rc == RC_OK)
        rc = store__blob_copy_file(s->data_dir, wts, s->p.max_adapter_bytes, &ww, whex, NULL, &why);
    if (rc == RC_OK && strcmp(whex, l->sha256) != 0)
        rc = core_err(&why, RC_MISMATCH, "its weights changed since it was imported");
    if (rc == RC_OK)
        rc = store__validate(s, store__blob_tmp_path(cw), store__blob_tmp_path(ww), NULL, &probe,
                             &why);
    if (rc == RC_OK && (rc = store__blob_install(cw, &why)) == RC_OK)
        rc = store__blob_install(ww, &why);
    store__blob_writer_free(cw);
    store__blob_writer_free(ww);
    rc_t wrc = w_begin(s, err);
    if (wrc != RC_OK)
        return wrc;
    if (rc == RC_OK)
        wrc = store__w_stmt(s, NULL, err,
                     "UPDATE adapters SET config_sha256 = ?2, mem_bytes = ?3, legacy_path = NULL"
                     " WHERE id = ?1",
                     "iti", l->id, chex, probe.mem_bytes);
    else
        wrc = store__w_stmt(s, NULL, err,
                     "UPDATE adapters SET state = 'broken', reason = ?2, legacy_path = NULL"
                     " WHERE id = ?1",
                     "it", l->id, why.msg);
    return w_end(s, wrc, err);
}

rc_t store__w_legacy_fixup(store_t *s, core_err_t *err)
{
    idx_legacy_t *rows = NULL;
    size_t n = 0;
    rc_t rc = idx_legacy_rows(s, &rows, &n, err);
    for (size_t i = 0; rc == RC_OK && i < n; i++)
        rc = idx_legacy_one(s, &rows[i], err);
    free(rows);
    return rc;
}
