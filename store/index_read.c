/* index_read.c - the loop thread's queries on the index (the reader connection, rdb,
 * query_only): spec parsing, resolution for a tenant, lists. index.c opens the
 * connections and owns the writer.
 *
 * Resolution for tenant T (store.h "Tenants"): T's alias, then T's NAME (newest live) or
 * NAME@V; only when T has no alias and no live adapter of that name does the published
 * table answer: the publisher P's NAME / NAME@V (P's aliases are never visible), with
 * row->shared set. Whatever fails, the message is the same "adapter 'SPEC' not found", so
 * another tenant's unpublished adapter cannot be told from a name that does not exist.
 *
 * Every statement is prepared once (persistent) with bound parameters; each use resets
 * it and clears its bindings. Threads: the store's thread only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_int.h"

/* The newest live version per (tenant, name); a row of another tenant is listed only
 * when its owner publishes the name and ?1 has neither a live adapter nor an alias of
 * that name (its own would shadow it). */
#define IDX_LIST_SQL                                                                       \
    "SELECT " STORE_IDX_COLS " FROM adapters AS a WHERE a.state != 'deleted'"              \
    " AND a.version = (SELECT MAX(b.version) FROM adapters AS b WHERE"                     \
    " b.tenant_id = a.tenant_id AND b.name = a.name AND b.state != 'deleted')"             \
    " AND (a.tenant_id = ?1 OR (EXISTS (SELECT 1 FROM published AS p WHERE"                \
    " p.name = a.name AND p.tenant_id = a.tenant_id)"                                      \
    " AND NOT EXISTS (SELECT 1 FROM adapters AS c WHERE c.tenant_id = ?1"                  \
    " AND c.name = a.name AND c.state != 'deleted')"                                       \
    " AND NOT EXISTS (SELECT 1 FROM aliases AS al WHERE al.tenant_id = ?1"                 \
    " AND al.name = a.name))) ORDER BY a.name, a.tenant_id"

static const char *const idx_rsql[RS__COUNT] = {
    [RS_BY_NAME_NEWEST] = "SELECT " STORE_IDX_COLS " FROM adapters AS a WHERE a.tenant_id = ?1"
                          " AND a.name = ?2 AND a.state != 'deleted'"
                          " ORDER BY a.version DESC LIMIT 1",
    [RS_BY_NAME_VERSION] = "SELECT " STORE_IDX_COLS " FROM adapters AS a WHERE a.tenant_id = ?1"
                           " AND a.name = ?2 AND a.version = ?3 AND a.state != 'deleted'",
    [RS_ALIAS_TARGET] = "SELECT " STORE_IDX_COLS " FROM aliases AS al JOIN adapters AS a"
                        " ON a.id = al.adapter_id WHERE al.tenant_id = ?1 AND al.name = ?2",
    [RS_LIST] = IDX_LIST_SQL,
    [RS_VERSIONS] = "SELECT " STORE_IDX_COLS " FROM adapters AS a WHERE a.tenant_id = ?1"
                    " AND a.name = ?2 AND a.state != 'deleted' ORDER BY a.version",
    [RS_ALIASES] = "SELECT al.name, a.name, a.version, al.updated FROM aliases AS al"
                   " JOIN adapters AS a ON a.id = al.adapter_id WHERE al.tenant_id = ?1"
                   " ORDER BY al.name",
    [RS_BY_ID] = "SELECT " STORE_IDX_COLS " FROM adapters AS a WHERE a.id = ?1",
    /* Every tenant's pins: the cache is shared. */
    [RS_PINNED] = "SELECT " STORE_IDX_COLS " FROM adapters AS a WHERE a.pinned = 1"
                  " AND a.state = 'ready' ORDER BY a.id",
    [RS_PUBLISHER] = "SELECT p.tenant_id FROM published AS p WHERE p.name = ?2"
                     " AND p.tenant_id != ?1",
    [RS_OWNS] = "SELECT EXISTS (SELECT 1 FROM adapters WHERE tenant_id = ?1 AND name = ?2"
                " AND state != 'deleted') OR EXISTS (SELECT 1 FROM aliases WHERE"
                " tenant_id = ?1 AND name = ?2)",
    [RS_ROUTER_EXPERTS] = "SELECT " STORE_IDX_COLS " FROM router_experts AS re JOIN adapters AS a"
                          " ON a.id = re.adapter_id WHERE re.router_id = ?1 ORDER BY re.idx",
};

rc_t store__idx_prepare_reader(store_t *s, core_err_t *err)
{
    for (int i = 0; i < RS__COUNT; i++)
        if (sqlite3_prepare_v3(s->rdb, idx_rsql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->rst[i],
                               NULL) != SQLITE_OK)
            return store__idx_err(s->rdb, err, "prepare");
    return RC_OK;
}

/* ---- rows ---- */

static void idx_copy(char *dst, size_t cap, const unsigned char *src)
{
    snprintf(dst, cap, "%s", src ? (const char *)src : "");
}

static store_state_t idx_state(const unsigned char *t)
{
    if (t && strcmp((const char *)t, "broken") == 0)
        return STORE_STATE_BROKEN;
    if (t && strcmp((const char *)t, "deleted") == 0)
        return STORE_STATE_DELETED;
    return STORE_STATE_READY;
}

const char *store_state_str(store_state_t st)
{
    return st == STORE_STATE_BROKEN ? "broken" : st == STORE_STATE_DELETED ? "deleted" : "ready";
}

/* Column order is STORE_IDX_COLS. */
void store__idx_row_read(sqlite3_stmt *st, store_adapter_t *r)
{
    memset(r, 0, sizeof *r);
    r->id = sqlite3_column_int64(st, 0);
    idx_copy(r->name, sizeof r->name, sqlite3_column_text(st, 1));
    r->version = sqlite3_column_int(st, 2);
    idx_copy(r->kind, sizeof r->kind, sqlite3_column_text(st, 3));
    r->rank = sqlite3_column_int(st, 4);
    r->alpha = sqlite3_column_double(st, 5);
    idx_copy(r->targets, sizeof r->targets, sqlite3_column_text(st, 6));
    idx_copy(r->base_fingerprint, sizeof r->base_fingerprint, sqlite3_column_text(st, 7));
    idx_copy(r->sha256, sizeof r->sha256, sqlite3_column_text(st, 8));
    idx_copy(r->config_sha256, sizeof r->config_sha256, sqlite3_column_text(st, 9));
    r->size = sqlite3_column_int64(st, 10);
    r->mem_bytes = sqlite3_column_int64(st, 11);
    r->created = sqlite3_column_int64(st, 12);
    r->last_used = sqlite3_column_int64(st, 13);
    r->n_requests = sqlite3_column_int64(st, 14);
    r->pinned = sqlite3_column_int(st, 15) != 0;
    r->state = idx_state(sqlite3_column_text(st, 16));
    idx_copy(r->reason, sizeof r->reason, sqlite3_column_text(st, 17));
    r->tenant_id = sqlite3_column_int64(st, 18);
    r->published = sqlite3_column_int(st, 19) != 0;
}

rc_t store__spec_parse(const char *spec, char name[STORE_NAME_MAX + 1], int *version,
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

/* ---- single rows ---- */

static void r_done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* Step a bound reader statement for one row. RC_NOT_FOUND when none. */
static rc_t r_one(store_t *s, store_rstmt_t which, store_adapter_t *row, core_err_t *err)
{
    sqlite3_stmt *st = s->rst[which];
    int r = sqlite3_step(st);
    rc_t rc = RC_OK;
    if (r == SQLITE_ROW)
        store__idx_row_read(st, row);
    else if (r == SQLITE_DONE)
        rc = RC_NOT_FOUND;
    else
        rc = store__idx_err(s->rdb, err, "lookup");
    r_done(st);
    return rc;
}

/* An integer from a one-row statement bound with (tenant, name). RC_NOT_FOUND: no row. */
static rc_t r_int(store_t *s, store_rstmt_t which, int64_t tenant, const char *name,
                  int64_t *out, core_err_t *err)
{
    sqlite3_stmt *st = s->rst[which];
    sqlite3_bind_int64(st, 1, tenant);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_TRANSIENT);
    int r = sqlite3_step(st);
    rc_t rc = RC_OK;
    if (r == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    else if (r == SQLITE_DONE)
        rc = RC_NOT_FOUND;
    else
        rc = store__idx_err(s->rdb, err, "lookup");
    r_done(st);
    return rc;
}

static rc_t r_by_name(store_t *s, int64_t tenant, const char *name, int version,
                      store_adapter_t *row, core_err_t *err)
{
    store_rstmt_t w = version > 0 ? RS_BY_NAME_VERSION : RS_BY_NAME_NEWEST;
    sqlite3_bind_int64(s->rst[w], 1, tenant);
    sqlite3_bind_text(s->rst[w], 2, name, -1, SQLITE_TRANSIENT);
    if (version > 0)
        sqlite3_bind_int(s->rst[w], 3, version);
    return r_one(s, w, row, err);
}

/* The tenant that publishes name for tenant to use: RC_NOT_FOUND when tenant has an
 * adapter or alias of that name itself (it shadows), or nobody else publishes it. */
static rc_t r_publisher(store_t *s, int64_t tenant, const char *name, bool check_own,
                        int64_t *publisher, core_err_t *err)
{
    int64_t owns = 0;
    rc_t rc = check_own ? r_int(s, RS_OWNS, tenant, name, &owns, err) : RC_OK;
    if (rc != RC_OK)
        return rc;
    if (owns)
        return RC_NOT_FOUND;
    return r_int(s, RS_PUBLISHER, tenant, name, publisher, err);
}

rc_t store__resolve(store_t *s, int64_t tenant, const char *spec, store_adapter_t *row,
                    core_err_t *err)
{
    char name[STORE_NAME_MAX + 1];
    int version = 0;
    int64_t publisher = 0;
    rc_t rc = store__spec_parse(spec, name, &version, err);
    if (rc != RC_OK)
        return rc;
    rc = RC_NOT_FOUND;
    if (version == 0) {
        sqlite3_bind_int64(s->rst[RS_ALIAS_TARGET], 1, tenant);
        sqlite3_bind_text(s->rst[RS_ALIAS_TARGET], 2, name, -1, SQLITE_TRANSIENT);
        rc = r_one(s, RS_ALIAS_TARGET, row, err);
    }
    if (rc == RC_NOT_FOUND)
        rc = r_by_name(s, tenant, name, version, row, err);
    /* NAME not found already means no alias and no live version: skip that check. */
    if (rc == RC_NOT_FOUND)
        rc = r_publisher(s, tenant, name, version > 0, &publisher, err);
    if (rc == RC_OK && publisher) {
        rc = r_by_name(s, publisher, name, version, row, err);
        row->shared = rc == RC_OK;
    }
    if (rc == RC_NOT_FOUND)
        core_err(err, rc, "adapter '%.80s' not found", spec);
    return rc;
}

rc_t store_resolve(store_t *s, int64_t tenant, const char *spec, store_adapter_t *row,
                   core_err_t *err)
{
    return store__resolve(s, tenant, spec, row, err);
}

rc_t store__row_by_id(store_t *s, int64_t id, store_adapter_t *row, core_err_t *err)
{
    sqlite3_bind_int64(s->rst[RS_BY_ID], 1, id);
    return r_one(s, RS_BY_ID, row, err);
}

rc_t store__router_expert_rows(store_t *s, int64_t id, store_adapter_t *rows, int *n,
                               core_err_t *err)
{
    sqlite3_stmt *st = s->rst[RS_ROUTER_EXPERTS];
    rc_t rc = RC_OK;
    int r;
    *n = 0;
    sqlite3_bind_int64(st, 1, id);
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == CORE_ROUTER_MAX_EXPERTS) {
            rc = core_err(err, RC_FORMAT, "router row %lld has more than %d experts",
                          (long long)id, CORE_ROUTER_MAX_EXPERTS);
            break;
        }
        store__idx_row_read(st, &rows[(*n)++]);
    }
    if (rc == RC_OK && r != SQLITE_DONE)
        rc = store__idx_err(s->rdb, err, "router experts");
    r_done(st);
    return rc;
}

/* ---- lists ---- */

/* Collect the rows of a bound reader statement; rows not owned by viewer (> 0) are
 * marked shared. */
static rc_t r_rows(store_t *s, store_rstmt_t which, int64_t viewer, store_adapter_t **rows,
                   size_t *n, core_err_t *err)
{
    sqlite3_stmt *st = s->rst[which];
    store_adapter_t *v = NULL;
    size_t len = 0, cap = 0;
    rc_t rc = RC_OK;
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (len == cap) {
            size_t c = cap ? cap * 2 : 16;
            store_adapter_t *nv = realloc(v, c * sizeof *nv);
            if (!nv) {
                rc = core_err(err, RC_NOMEM, "store: out of memory");
                break;
            }
            v = nv;
            cap = c;
        }
        store__idx_row_read(st, &v[len]);
        v[len].shared = viewer > 0 && v[len].tenant_id != viewer;
        len++;
    }
    if (rc == RC_OK && r != SQLITE_DONE)
        rc = store__idx_err(s->rdb, err, "list");
    r_done(st);
    if (rc != RC_OK) {
        free(v);
        return rc;
    }
    *rows = v;
    *n = len;
    return RC_OK;
}

rc_t store_list(store_t *s, int64_t tenant, store_adapter_t **rows, size_t *n,
                core_err_t *err)
{
    *rows = NULL;
    *n = 0;
    sqlite3_bind_int64(s->rst[RS_LIST], 1, tenant);
    return r_rows(s, RS_LIST, tenant, rows, n, err);
}

rc_t store__pinned_rows(store_t *s, store_adapter_t **rows, size_t *n, core_err_t *err)
{
    *rows = NULL;
    *n = 0;
    return r_rows(s, RS_PINNED, 0, rows, n, err);
}

static rc_t r_versions(store_t *s, int64_t owner, int64_t viewer, const char *name,
                       store_adapter_t **rows, size_t *n, core_err_t *err)
{
    sqlite3_bind_int64(s->rst[RS_VERSIONS], 1, owner);
    sqlite3_bind_text(s->rst[RS_VERSIONS], 2, name, -1, SQLITE_TRANSIENT);
    return r_rows(s, RS_VERSIONS, viewer, rows, n, err);
}

rc_t store_versions(store_t *s, int64_t tenant, const char *name, store_adapter_t **rows,
                    size_t *n, core_err_t *err)
{
    int64_t publisher = 0;
    *rows = NULL;
    *n = 0;
    if (!store_name_valid(name))
        return core_err(err, RC_INVALID, "invalid adapter name '%.80s'", name ? name : "");
    rc_t rc = r_versions(s, tenant, tenant, name, rows, n, err);
    if (rc == RC_OK && *n == 0) {
        free(*rows);
        *rows = NULL;
        rc = r_publisher(s, tenant, name, true, &publisher, err);
        if (rc == RC_OK)
            rc = r_versions(s, publisher, tenant, name, rows, n, err);
    }
    if (rc == RC_OK && *n == 0) {
        free(*rows);
        *rows = NULL;
        rc = RC_NOT_FOUND;
    }
    if (rc == RC_NOT_FOUND)
        return core_err(err, RC_NOT_FOUND, "adapter '%s' not found", name);
    return rc;
}

rc_t store_aliases(store_t *s, int64_t tenant, store_alias_t **rows, size_t *n,
                   core_err_t *err)
{
    sqlite3_stmt *st = s->rst[RS_ALIASES];
    store_alias_t *v = NULL;
    size_t len = 0, cap = 0;
    rc_t rc = RC_OK;
    int r;
    *rows = NULL;
    *n = 0;
    sqlite3_bind_int64(st, 1, tenant);
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (len == cap) {
            size_t c = cap ? cap * 2 : 16;
            store_alias_t *nv = realloc(v, c * sizeof *nv);
            if (!nv) {
                rc = core_err(err, RC_NOMEM, "store: out of memory");
                break;
            }
            v = nv;
            cap = c;
        }
        store_alias_t *a = &v[len++];
        idx_copy(a->name, sizeof a->name, sqlite3_column_text(st, 0));
        snprintf(a->target, sizeof a->target, "%s@%d", (const char *)sqlite3_column_text(st, 1),
                 sqlite3_column_int(st, 2));
        a->updated = sqlite3_column_int64(st, 3);
    }
    if (rc == RC_OK && r != SQLITE_DONE)
        rc = store__idx_err(s->rdb, err, "aliases");
    r_done(st);
    if (rc != RC_OK) {
        free(v);
        return rc;
    }
    *rows = v;
    *n = len;
    return RC_OK;
}
