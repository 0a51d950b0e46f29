/* store.c - the adapter index in DATA_DIR/adapterd.db and the adapters resident in memory.
 *
 * One sqlite connection (WAL, synchronous=FULL, foreign keys on, busy timeout) and one
 * mutex that guards it, its prepared statements and the resident map. Every statement
 * that carries data is prepared once at open and bound per call; only fixed pragmas and
 * the migration steps (constant text) go through sqlite3_exec.
 *
 * The schema version lives in PRAGMA user_version. Migrations are a table of steps: step
 * i upgrades version i to i+1, each in its own transaction together with the new
 * user_version, so a crash leaves the file at one version or the next. A file newer than
 * the last step is refused (an older daemon must not write a schema it does not know).
 *
 * Resident map: a small array of (name, version, lora). Each entry holds one reference;
 * acquire hands out extra ones. Imports load and hash outside the lock (pure work on the
 * caller's folder); everything that touches the db or the map runs under the lock.
 * Threads: any; see store.h. */
#include "store/store.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/sha256.h"

#define STORE_DB_FILE "adapterd.db"
#define STORE_WEIGHTS_FILE "adapter_model.safetensors"
#define STORE_CONFIG_FILE "adapter_config.json"
#define STORE_BUSY_TIMEOUT_MS 5000

/* Step i takes user_version i to i+1. Append only: never edit a released step. */
static const char *const store_migrations[] = {
    /* 0 -> 1: the adapter index of the first slice. */
    "CREATE TABLE adapters ("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  kind TEXT NOT NULL,"
    "  rank INTEGER NOT NULL,"
    "  alpha REAL NOT NULL,"
    "  targets TEXT NOT NULL,"
    "  base_fingerprint TEXT NOT NULL,"
    "  sha256 TEXT NOT NULL,"
    "  size INTEGER NOT NULL,"
    "  path TEXT NOT NULL,"
    "  created INTEGER NOT NULL,"
    "  UNIQUE(name, version));",
};
#define STORE_SCHEMA_VERSION ((int)(sizeof store_migrations / sizeof store_migrations[0]))

#define STORE_COLS \
    "id, name, version, kind, rank, alpha, targets, base_fingerprint, sha256, size, path, created"

typedef enum {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_NEWEST,
    ST_VERSION,
    ST_INSERT,
    ST_LIST,
    ST__COUNT
} store_stmt_t;

static const char *const store_sql[ST__COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_NEWEST] = "SELECT " STORE_COLS " FROM adapters WHERE name = ?1"
                  " ORDER BY version DESC LIMIT 1",
    [ST_VERSION] = "SELECT " STORE_COLS " FROM adapters WHERE name = ?1 AND version = ?2",
    [ST_INSERT] = "INSERT INTO adapters (name, version, kind, rank, alpha, targets,"
                  " base_fingerprint, sha256, size, path, created)"
                  " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    [ST_LIST] = "SELECT " STORE_COLS " FROM adapters AS a WHERE version ="
                " (SELECT MAX(version) FROM adapters AS b WHERE b.name = a.name)"
                " ORDER BY name",
};

typedef struct {
    char name[STORE_NAME_MAX + 1];
    int version;
    core_lora_t *lora; /* one reference held by the map */
} store_resident_t;

struct store {
    pthread_mutex_t mu;
    sqlite3 *db;
    sqlite3_stmt *st[ST__COUNT];
    const core_model_t *base;
    store_resident_t *res;
    size_t n_res, cap_res;
};

/* ---- small helpers ---- */

int store_name_valid(const char *name)
{
    if (!name)
        return 0;
    size_t n = strlen(name);
    if (n < 1 || n > STORE_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-')))
            return 0;
    }
    return 1;
}

static rc_t store_db_err(store_t *s, core_err_t *err, const char *what)
{
    const char *file = sqlite3_db_filename(s->db, "main");
    return core_err(err, RC_IO, "adapter index %s: %s: %s", file ? file : "", what,
                    sqlite3_errmsg(s->db));
}

/* mkdir -p; an existing folder is fine. */
static rc_t store_mkdirs(const char *dir, core_err_t *err)
{
    char buf[PATH_MAX];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof buf)
        return core_err(err, RC_INVALID, "data dir '%s': bad path length", dir);
    memcpy(buf, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return core_err(err, RC_IO, "data dir: mkdir '%s': %s", buf, strerror(errno));
        buf[i] = c;
    }
    return RC_OK;
}

static void store_copy(char *dst, size_t cap, const unsigned char *src)
{
    snprintf(dst, cap, "%s", src ? (const char *)src : "");
}

/* Column order is STORE_COLS. */
static void store_row_read(sqlite3_stmt *st, store_adapter_t *row)
{
    memset(row, 0, sizeof *row);
    row->id = sqlite3_column_int64(st, 0);
    store_copy(row->name, sizeof row->name, sqlite3_column_text(st, 1));
    row->version = sqlite3_column_int(st, 2);
    store_copy(row->kind, sizeof row->kind, sqlite3_column_text(st, 3));
    row->rank = sqlite3_column_int(st, 4);
    row->alpha = sqlite3_column_double(st, 5);
    store_copy(row->targets, sizeof row->targets, sqlite3_column_text(st, 6));
    store_copy(row->base_fingerprint, sizeof row->base_fingerprint, sqlite3_column_text(st, 7));
    store_copy(row->sha256, sizeof row->sha256, sqlite3_column_text(st, 8));
    row->size = sqlite3_column_int64(st, 9);
    store_copy(row->path, sizeof row->path, sqlite3_column_text(st, 10));
    row->created = sqlite3_column_int64(st, 11);
}

/* Run a prepared statement that returns no rows. */
static rc_t store_step_done(store_t *s, store_stmt_t which, core_err_t *err)
{
    sqlite3_stmt *st = s->st[which];
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (r != SQLITE_DONE)
        return store_db_err(s, err, store_sql[which]);
    return RC_OK;
}

/* Fetch one row by name (version 0 = newest). RC_NOT_FOUND when absent. */
static rc_t store_row_get(store_t *s, const char *name, int version, store_adapter_t *row,
                          core_err_t *err)
{
    sqlite3_stmt *st = s->st[version > 0 ? ST_VERSION : ST_NEWEST];
    rc_t rc = RC_OK;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    if (version > 0)
        sqlite3_bind_int(st, 2, version);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW)
        store_row_read(st, row);
    else if (r == SQLITE_DONE)
        rc = RC_NOT_FOUND;
    else
        rc = store_db_err(s, err, "lookup");
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

/* ---- schema ---- */

static rc_t store_user_version(store_t *s, int *out, core_err_t *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
        return store_db_err(s, err, "read user_version");
    rc_t rc = RC_OK;
    if (sqlite3_step(st) == SQLITE_ROW)
        *out = sqlite3_column_int(st, 0);
    else
        rc = store_db_err(s, err, "read user_version");
    sqlite3_finalize(st);
    return rc;
}

/* One step per transaction; user_version moves with the step. */
static rc_t store_migrate(store_t *s, core_err_t *err)
{
    int v = 0;
    rc_t rc = store_user_version(s, &v, err);
    if (rc != RC_OK)
        return rc;
    if (v > STORE_SCHEMA_VERSION)
        return core_err(err, RC_UNSUPPORTED,
                        "database schema version %d is newer than this adapterd supports (%d); "
                        "upgrade adapterd", v, STORE_SCHEMA_VERSION);
    if (v < 0)
        return core_err(err, RC_FORMAT, "database schema version %d is invalid", v);
    for (; v < STORE_SCHEMA_VERSION; v++) {
        char pragma[64];
        snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", v + 1);
        if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
            return store_db_err(s, err, "begin migration");
        if (sqlite3_exec(s->db, store_migrations[v], NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_exec(s->db, pragma, NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            rc = core_err(err, RC_IO, "adapter index %s: migration %d -> %d: %s",
                          sqlite3_db_filename(s->db, "main"), v, v + 1, sqlite3_errmsg(s->db));
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            return rc;
        }
    }
    return RC_OK;
}

static rc_t store_configure(store_t *s, core_err_t *err)
{
    static const char *const pragmas[] = {
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = FULL",
        "PRAGMA foreign_keys = ON",
    };
    sqlite3_busy_timeout(s->db, STORE_BUSY_TIMEOUT_MS);
    for (size_t i = 0; i < sizeof pragmas / sizeof pragmas[0]; i++)
        if (sqlite3_exec(s->db, pragmas[i], NULL, NULL, NULL) != SQLITE_OK)
            return store_db_err(s, err, pragmas[i]);
    rc_t rc = store_migrate(s, err);
    if (rc != RC_OK)
        return rc;
    for (int i = 0; i < ST__COUNT; i++)
        if (sqlite3_prepare_v3(s->db, store_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i],
                               NULL) != SQLITE_OK)
            return store_db_err(s, err, "prepare");
    return RC_OK;
}

/* ---- open / close ---- */

rc_t store_open(const char *data_dir, const core_model_t *base, store_t **out, core_err_t *err)
{
    *out = NULL;
    if (!data_dir || !base)
        return core_err(err, RC_INVALID, "store_open: data dir and base model are required");
    rc_t rc = store_mkdirs(data_dir, err);
    if (rc != RC_OK)
        return rc;
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", data_dir, STORE_DB_FILE) >= sizeof path)
        return core_err(err, RC_INVALID, "data dir '%s': path too long", data_dir);
    store_t *s = calloc(1, sizeof *s);
    if (!s)
        return core_err(err, RC_NOMEM, "store: out of memory");
    pthread_mutex_init(&s->mu, NULL);
    s->base = base;
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        rc = core_err(err, RC_IO, "open '%s': %s", path,
                      s->db ? sqlite3_errmsg(s->db) : "out of memory");
        goto out;
    }
    rc = store_configure(s, err);
out:
    if (rc != RC_OK) {
        store_close(s);
        return rc;
    }
    *out = s;
    return RC_OK;
}

void store_close(store_t *s)
{
    if (!s)
        return;
    for (int i = 0; i < ST__COUNT; i++)
        sqlite3_finalize(s->st[i]);
    sqlite3_close(s->db);
    for (size_t i = 0; i < s->n_res; i++)
        core_lora_release(s->res[i].lora);
    free(s->res);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* ---- resident map (callers hold the lock) ---- */

static store_resident_t *store_res_find(store_t *s, const char *name, int version)
{
    for (size_t i = 0; i < s->n_res; i++)
        if (s->res[i].version == version && strcmp(s->res[i].name, name) == 0)
            return &s->res[i];
    return NULL;
}

/* Takes over the caller's reference to lora. */
static rc_t store_res_add(store_t *s, const char *name, int version, core_lora_t *lora,
                          core_err_t *err)
{
    if (s->n_res == s->cap_res) {
        size_t cap = s->cap_res ? s->cap_res * 2 : 8;
        store_resident_t *r = realloc(s->res, cap * sizeof *r);
        if (!r)
            return core_err(err, RC_NOMEM, "store: out of memory");
        s->res = r;
        s->cap_res = cap;
    }
    store_resident_t *e = &s->res[s->n_res++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->version = version;
    e->lora = lora;
    return RC_OK;
}

/* ---- import ---- */

/* What import learns from the folder before it takes the lock. */
typedef struct {
    core_lora_t *lora;
    char sha256[65];
    int64_t size;
    char path[PATH_MAX];
} store_probe_t;

static rc_t store_probe(store_t *s, const char *dir, store_probe_t *p, core_err_t *err)
{
    char weights[PATH_MAX + 64];
    struct stat sb;
    if (!realpath(dir, p->path))
        return core_err(err, RC_NOT_FOUND, "adapter folder '%s': %s", dir, strerror(errno));
    rc_t rc = core_lora_load(p->path, &s->base->cfg, &p->lora, err);
    if (rc != RC_OK)
        return rc;
    snprintf(weights, sizeof weights, "%s/%s", p->path, STORE_WEIGHTS_FILE);
    rc = core_sha256_file(weights, p->sha256, err);
    if (rc == RC_OK && stat(weights, &sb) != 0)
        rc = core_err(err, RC_IO, "stat '%s': %s", weights, strerror(errno));
    if (rc != RC_OK) {
        core_lora_release(p->lora);
        p->lora = NULL;
        return rc;
    }
    p->size = (int64_t)sb.st_size;
    return RC_OK;
}

static rc_t store_insert(store_t *s, const store_adapter_t *r, core_err_t *err)
{
    sqlite3_stmt *st = s->st[ST_INSERT];
    sqlite3_bind_text(st, 1, r->name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 2, r->version);
    sqlite3_bind_text(st, 3, r->kind, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 4, r->rank);
    sqlite3_bind_double(st, 5, r->alpha);
    sqlite3_bind_text(st, 6, r->targets, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 7, r->base_fingerprint, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 8, r->sha256, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 9, r->size);
    sqlite3_bind_text(st, 10, r->path, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 11, r->created);
    return store_step_done(s, ST_INSERT, err);
}

static void store_row_fill(store_t *s, const char *name, const store_probe_t *p,
                           store_adapter_t *r)
{
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    snprintf(r->kind, sizeof r->kind, "lora");
    r->rank = p->lora->rank;
    r->alpha = p->lora->alpha;
    core_lora_targets_str(p->lora, r->targets, sizeof r->targets);
    snprintf(r->base_fingerprint, sizeof r->base_fingerprint, "%s", s->base->fingerprint);
    memcpy(r->sha256, p->sha256, sizeof r->sha256);
    r->size = p->size;
    snprintf(r->path, sizeof r->path, "%s", p->path);
    r->created = (int64_t)time(NULL);
}

/* Under the lock, inside BEGIN IMMEDIATE: reuse the newest row when it is the same
 * content at the same place for the same base, else insert version newest+1. */
static rc_t store_import_locked(store_t *s, const char *name, const store_probe_t *p,
                                store_adapter_t *row, core_err_t *err)
{
    store_adapter_t newest;
    rc_t rc = store_row_get(s, name, 0, &newest, err);
    if (rc == RC_OK && strcmp(newest.sha256, p->sha256) == 0 &&
        strcmp(newest.path, p->path) == 0 &&
        strcmp(newest.base_fingerprint, s->base->fingerprint) == 0) {
        *row = newest;
        return RC_OK;
    }
    if (rc != RC_OK && rc != RC_NOT_FOUND)
        return rc;
    store_row_fill(s, name, p, row);
    row->version = rc == RC_OK ? newest.version + 1 : 1;
    rc = store_insert(s, row, err);
    if (rc == RC_OK)
        row->id = sqlite3_last_insert_rowid(s->db);
    return rc;
}

rc_t store_import(store_t *s, const char *dir, const char *name, store_adapter_t *row,
                  core_err_t *err)
{
    if (!store_name_valid(name))
        return core_err(err, RC_INVALID,
                        "invalid adapter name '%.80s': use 1-%d characters of A-Z a-z 0-9 . _ -, "
                        "starting with a letter or digit", name ? name : "", STORE_NAME_MAX);
    store_probe_t p = {0};
    rc_t rc = store_probe(s, dir, &p, err);
    if (rc != RC_OK)
        return rc;
    store_adapter_t r;
    pthread_mutex_lock(&s->mu);
    rc = store_step_done(s, ST_BEGIN, err);
    if (rc != RC_OK)
        goto out;
    rc = store_import_locked(s, name, &p, &r, err);
    if (rc == RC_OK)
        rc = store_step_done(s, ST_COMMIT, err);
    if (rc != RC_OK) {
        store_step_done(s, ST_ROLLBACK, NULL);
        goto out;
    }
    /* The freshly loaded adapter becomes the resident copy unless one is there already. */
    if (!store_res_find(s, r.name, r.version) &&
        store_res_add(s, r.name, r.version, p.lora, NULL) == RC_OK)
        p.lora = NULL;
    if (row)
        *row = r;
out:
    pthread_mutex_unlock(&s->mu);
    if (p.lora)
        core_lora_release(p.lora);
    return rc;
}

static bool store_is_adapter_dir(const char *dir, const char *entry)
{
    char path[PATH_MAX];
    struct stat sb;
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, entry) >= sizeof path)
        return false;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return false;
    if ((size_t)snprintf(path, sizeof path, "%s/%s/%s", dir, entry, STORE_CONFIG_FILE) >=
        sizeof path)
        return false;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

rc_t store_import_dir(store_t *s, const char *dir, int *n_imported, core_err_t *err)
{
    struct dirent **ents = NULL;
    int n = scandir(dir, &ents, NULL, alphasort); /* sorted: logs read the same every run */
    int n_ok = 0;
    if (n_imported)
        *n_imported = 0;
    if (n < 0)
        return core_err(err, RC_IO, "adapters dir '%s': %s", dir, strerror(errno));
    for (int i = 0; i < n; i++) {
        const char *e = ents[i]->d_name;
        if (e[0] != '.' && store_is_adapter_dir(dir, e)) {
            char sub[PATH_MAX];
            core_err_t ierr = {{0}};
            store_adapter_t row;
            snprintf(sub, sizeof sub, "%s/%s", dir, e);
            if (!store_name_valid(e)) {
                fprintf(stderr, "adapterd: store: skipping '%s': folder name is not a valid "
                                "adapter name\n", sub);
            } else if (store_import(s, sub, e, &row, &ierr) != RC_OK) {
                fprintf(stderr, "adapterd: store: skipping '%s': %s\n", sub, ierr.msg);
            } else {
                n_ok++;
            }
        }
        free(ents[i]);
    }
    free(ents);
    if (n_imported)
        *n_imported = n_ok;
    return RC_OK;
}

/* ---- acquire / list ---- */

/* "NAME" -> version 0 (newest); "NAME@V" -> V >= 1. */
static rc_t store_spec_parse(const char *spec, char name[STORE_NAME_MAX + 1], int *version,
                             core_err_t *err)
{
    const char *at = spec ? strchr(spec, '@') : NULL;
    size_t n = at ? (size_t)(at - spec) : (spec ? strlen(spec) : 0);
    *version = 0;
    if (n < 1 || n > STORE_NAME_MAX)
        return core_err(err, RC_INVALID, "invalid adapter name '%.80s'", spec ? spec : "");
    memcpy(name, spec, n);
    name[n] = '\0';
    if (!store_name_valid(name))
        return core_err(err, RC_INVALID, "invalid adapter name '%.80s'", spec);
    if (!at)
        return RC_OK;
    const char *v = at + 1;
    size_t nd = strspn(v, "0123456789");
    long val = (nd >= 1 && nd <= 9 && v[nd] == '\0') ? strtol(v, NULL, 10) : 0;
    if (val < 1)
        return core_err(err, RC_INVALID, "invalid adapter version in '%.80s'", spec);
    *version = (int)val;
    return RC_OK;
}

/* Load a row's adapter from disk after checking it is still the bytes we indexed. */
static rc_t store_load_row(store_t *s, const store_adapter_t *r, core_lora_t **out,
                           core_err_t *err)
{
    char weights[sizeof r->path + 64];
    char hex[65];
    core_err_t herr = {{0}};
    if (strcmp(r->base_fingerprint, s->base->fingerprint) != 0)
        return core_err(err, RC_MISMATCH, "adapter %s@%d was imported for a different base model",
                        r->name, r->version);
    snprintf(weights, sizeof weights, "%s/%s", r->path, STORE_WEIGHTS_FILE);
    if (core_sha256_file(weights, hex, &herr) != RC_OK)
        return core_err(err, RC_MISMATCH, "adapter %s@%d changed on disk (%s)", r->name,
                        r->version, herr.msg);
    if (strcmp(hex, r->sha256) != 0)
        return core_err(err, RC_MISMATCH, "adapter %s@%d changed on disk", r->name, r->version);
    return core_lora_load(r->path, &s->base->cfg, out, err);
}

rc_t store_acquire(store_t *s, const char *spec, core_lora_t **lora, store_adapter_t *row,
                   core_err_t *err)
{
    char name[STORE_NAME_MAX + 1];
    int version = 0;
    store_adapter_t r;
    *lora = NULL;
    rc_t rc = store_spec_parse(spec, name, &version, err);
    if (rc != RC_OK)
        return rc;
    pthread_mutex_lock(&s->mu);
    rc = store_row_get(s, name, version, &r, err);
    if (rc == RC_NOT_FOUND) {
        core_err(err, rc, "adapter '%s' not found", spec);
        goto out;
    }
    if (rc != RC_OK)
        goto out;
    store_resident_t *e = store_res_find(s, r.name, r.version);
    if (!e) {
        core_lora_t *l = NULL;
        rc = store_load_row(s, &r, &l, err);
        if (rc == RC_OK && (rc = store_res_add(s, r.name, r.version, l, err)) != RC_OK)
            core_lora_release(l);
        if (rc != RC_OK)
            goto out;
        e = &s->res[s->n_res - 1];
    }
    core_lora_retain(e->lora);
    *lora = e->lora;
    if (row)
        *row = r;
out:
    pthread_mutex_unlock(&s->mu);
    return rc;
}

rc_t store_list(store_t *s, store_adapter_t **rows, size_t *n, core_err_t *err)
{
    store_adapter_t *v = NULL;
    size_t len = 0, cap = 0;
    rc_t rc = RC_OK;
    *rows = NULL;
    *n = 0;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = s->st[ST_LIST];
    int r = sqlite3_step(st);
    for (; r == SQLITE_ROW; r = sqlite3_step(st)) {
        if (len == cap) {
            size_t c = cap ? cap * 2 : 16;
            store_adapter_t *nv = realloc(v, c * sizeof *nv);
            if (!nv) {
                rc = core_err(err, RC_NOMEM, "store: out of memory");
                goto out;
            }
            v = nv;
            cap = c;
        }
        store_row_read(st, &v[len++]);
    }
    if (r != SQLITE_DONE)
        rc = store_db_err(s, err, "list");
out:
    sqlite3_reset(st);
    pthread_mutex_unlock(&s->mu);
    if (rc != RC_OK) {
        free(v);
        return rc;
    }
    *rows = v;
    *n = len;
    return RC_OK;
}
