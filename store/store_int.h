/* store_int.h - private to store/: the store struct shared by its files.
 *
 *   store.c  open/close, the data-dir lock, tick, stats, the task plumbing
 *   index.c  sqlite: schema and migrations, the two connections, the writer's statements
 *            (tasks, under wmu)
 *   index_read.c  the reader's statements (loop thread): resolution across tenants and
 *            published names, lists
 *   cache.c  resident adapters: acquire, waits, single-flight loads, budget, LRU
 *   ops.c    changes: uploads, imports, delete, aliases, pins (tasks)
 *   router.c routers: registration (put, import), their experts, their parts in memory
 *   blob.c   blob files (blob.h); fault.c failpoints (fault.h)
 *
 * Threads: fields marked [loop] belong to the store's thread; [w] to whoever holds wmu
 * (a task's work(), or open/close); [any] are set at open and read-only afterwards. */
#ifndef STORE_STORE_INT_H
#define STORE_STORE_INT_H

#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>

#include "store/blob.h"
#include "store/store.h"

#define STORE_CONFIG_MAX (64u * 1024u) /* adapter_config.json cap (core/lora.c agrees) */

/* Reader statements (loop thread). */
typedef enum {
    RS_BY_NAME_NEWEST,
    RS_BY_NAME_VERSION,
    RS_ALIAS_TARGET,
    RS_LIST,
    RS_VERSIONS,
    RS_ALIASES,
    RS_BY_ID,
    RS_PINNED,
    RS_PUBLISHER,
    RS_OWNS,
    RS_ROUTER_EXPERTS,
    RS__COUNT
} store_rstmt_t;

/* A resident (or loading, or failed) adapter version. [loop] */
typedef enum { SE_QUEUED, SE_LOADING, SE_READY, SE_BROKEN } store_entry_state_t;

/* A router's parts in memory (router.c): what core_router_from_parts needs besides the
 * experts, verified against the row's sha256s. Immutable once loaded; refcounted (atomic)
 * like a core_lora_t: the cache holds one reference, a wait one while it waits. */
typedef struct store_rparts {
    char *config;        /* NUL-terminated config JSON */
    uint8_t *weights;    /* the weights blob's bytes (st borrows them) */
    size_t weights_len;
    struct core_st *st;  /* parsed weights */
    int refcount;
} store_rparts_t;

typedef struct store_entry {
    struct store_entry *next;
    int64_t id;
    store_adapter_t row;     /* as resolved when the entry was made */
    store_entry_state_t state;
    core_lora_t *lora;       /* SE_READY, an adapter: the cache's reference */
    store_rparts_t *parts;   /* SE_READY, a router: the cache's reference */
    uint64_t last_use;       /* LRU clock value of the last acquire */
    uint64_t queued_ms;      /* SE_QUEUED: since when it waits for room */
    bool pinned;
    rc_t fail_rc;            /* SE_BROKEN */
    char fail_msg[512];
} store_entry_t;

/* Usage not yet written to the index. [loop] */
typedef struct {
    int64_t id;
    int64_t n;
    int64_t last_used;
} store_usage_t;

typedef struct store_tenants store_tenants_t; /* tenant.c (declared again below) */

struct store {
    store_params_t p;                     /* [any] data_dir points at data_dir below */
    char data_dir[PATH_MAX];              /* [any] */
    int lock_fd;                          /* [any] */
    store_tenants_t *tn;                  /* [loop] tenants and keys (tenant.c) */

    sqlite3 *rdb;                         /* [loop] query_only */
    sqlite3_stmt *rst[RS__COUNT];         /* [loop] */
    pthread_mutex_t wmu;                  /* guards wdb and blob install/GC */
    sqlite3 *wdb;                         /* [w] the only writer and checkpointer */

    int n_tasks;                          /* [loop] */
    bool writes_failed;                   /* [loop] copy of store__blob_poisoned() */

    store_entry_t *entries;               /* [loop] */
    struct store_wait *waits;             /* [loop] */
    uint64_t clock;                       /* [loop] LRU clock */
    uint64_t now_ms;                      /* [loop] last tick */
    uint64_t next_flush_ms, next_gc_ms;   /* [loop] */
    bool gc_running;                      /* [loop] */
    store_usage_t *usage;                 /* [loop] */
    size_t n_usage, cap_usage;
    store_stats_t stats;                  /* [loop] counters (bytes computed on demand) */
};

/* ---- tenant.c: tenants, API keys, published names ----
 * The tenant and key tables live in memory (s->tn) for per-request lookups without the
 * database; tenant.c keeps them in step with the index. */
typedef struct store_tenants store_tenants_t;
/* Read the tenants and keys tables into s->tn (at open, after migrations). */
rc_t store__tenant_open(store_t *s, core_err_t *err);
void store__tenant_close(store_t *s);
/* The effective max_stored_bytes of tenant (0 = unlimited), for a task to carry (loop). */
int64_t store__tenant_max_bytes(store_t *s, int64_t tenant);

/* ---- store.c ---- */
/* Run t on the executor (counts n_tasks; done() must call store__task_end). */
void store__task_submit(store_t *s, store_task_t *t);
void store__task_end(store_t *s);
uint64_t store__now_ms(void);

/* ---- index.c ---- */
rc_t store__index_open(store_t *s, core_err_t *err);
void store__index_close(store_t *s);

/* ---- index_read.c ----
 * The row columns every adapter query selects (alias a for adapters); read back by
 * store__idx_row_read. tenant_id and published ride along; shared is the caller's. */
#define STORE_IDX_COLS                                                                     \
    "a.id, a.name, a.version, a.kind, a.rank, a.alpha, a.targets, a.base_fingerprint,"     \
    " a.sha256, a.config_sha256, a.size, a.mem_bytes, a.created, a.last_used,"             \
    " a.n_requests, a.pinned, a.state, a.reason, a.tenant_id,"                             \
    " EXISTS (SELECT 1 FROM published AS p WHERE p.name = a.name"                          \
    " AND p.tenant_id = a.tenant_id)"
void store__idx_row_read(sqlite3_stmt *st, store_adapter_t *r);
/* RC_IO naming the index file, what failed and sqlite's message (index.c). */
rc_t store__idx_err(sqlite3 *db, core_err_t *err, const char *what);
/* Writer (under wmu): prepare sql, bind the arguments (types: 't' text, 'i' int64_t, 'n'
 * int, 'd' double), step through the "sql" failpoint. With out, a row is left in *out for
 * the caller to read and finalize (RC_NOT_FOUND when there is none). A constraint
 * violation is RC_EXISTS (the caller words the message). */
rc_t store__w_stmt(store_t *s, sqlite3_stmt **out, core_err_t *err, const char *sql,
                   const char *types, ...);
/* Prepare the reader statements on s->rdb (at open, after the migrations). */
rc_t store__idx_prepare_reader(store_t *s, core_err_t *err);
/* Reader queries (loop thread). Resolve a spec for tenant: its alias, its name, else a
 * name another tenant publishes (row->shared). RC_NOT_FOUND "adapter 'SPEC' not found". */
rc_t store__resolve(store_t *s, int64_t tenant, const char *spec, store_adapter_t *row,
                    core_err_t *err);
/* Ready rows pinned by an operator, every tenant's (open makes them resident).
 * OUT: *rows malloc'd. */
rc_t store__pinned_rows(store_t *s, store_adapter_t **rows, size_t *n, core_err_t *err);
rc_t store__row_by_id(store_t *s, int64_t id, store_adapter_t *row, core_err_t *err);
/* The expert rows of router id in expert order (at most CORE_ROUTER_MAX_EXPERTS).
 * OUT: rows[0 .. *n); *n 0 when id has none (not a router). */
rc_t store__router_expert_rows(store_t *s, int64_t id, store_adapter_t *rows, int *n,
                               core_err_t *err);
/* "NAME" or "NAME@V" -> name and version (0 = none given). */
rc_t store__spec_parse(const char *spec, char name[STORE_NAME_MAX + 1], int *version,
                       core_err_t *err);

/* Writer transactions (hold wmu). Each runs BEGIN IMMEDIATE ... COMMIT. */
typedef struct {
    int64_t tenant;               /* the owner of the new version */
    int64_t max_bytes;            /* the tenant's max_stored_bytes, 0 = unlimited */
    const char *name;
    const store_adapter_t *probe; /* kind, rank, alpha, targets, sha256s, size, mem_bytes */
    bool reuse_same;              /* imports: keep the newest row when its hashes match */
    bool fail_if_exists;
    const int64_t *experts;       /* a router's expert rows in expert order (n_experts) */
    int n_experts;
} store_insert_t;
/* Insert version newest+1 (RC_EXISTS when name is an alias, or fail_if_exists and live;
 * RC_QUOTA when the tenant's live bytes plus probe->size pass max_bytes; RC_NOT_FOUND
 * when an expert was deleted meanwhile) and its router_experts rows.
 * install(ctx) runs inside the transaction, after the checks and before the INSERT: it
 * installs the blobs. OUT: row. */
rc_t store__w_insert(store_t *s, const store_insert_t *in, rc_t (*install)(void *ctx, core_err_t *),
                     void *ctx, store_adapter_t *row, core_err_t *err);
/* The writer acts on tenant's own names only (never a published one of another tenant).
 * Deleting the last live version of a name also withdraws its publication. */
rc_t store__w_delete(store_t *s, int64_t tenant, const char *spec, store_adapter_t *row,
                     int64_t **ids, size_t *n_ids, core_err_t *err);
rc_t store__w_alias_put(store_t *s, int64_t tenant, const char *alias, const char *target,
                        store_adapter_t *row, core_err_t *err);
rc_t store__w_alias_delete(store_t *s, int64_t tenant, const char *alias, core_err_t *err);
rc_t store__w_pin(store_t *s, int64_t id, bool pin, core_err_t *err);
rc_t store__w_mark_broken(store_t *s, int64_t id, const char *reason, core_err_t *err);
rc_t store__w_usage(store_t *s, const store_usage_t *u, size_t n, core_err_t *err);
/* Blobs referenced by rows that are not deleted; GC under wmu. */
rc_t store__w_gc(store_t *s, int *n_removed, uint64_t *bytes, core_err_t *err);
/* Rows migrated from schema 1 (legacy_path set): copy their files into blobs. */
rc_t store__w_legacy_fixup(store_t *s, core_err_t *err);

/* ---- cache.c ---- */
void store__cache_close(store_t *s);
void store__cache_tick(store_t *s);
/* Forget ids (deleted): later acquires miss; holders keep their references. */
void store__cache_forget(store_t *s, const int64_t *ids, size_t n);
/* The entry of id, or NULL. */
store_entry_t *store__cache_find(store_t *s, int64_t id);
/* Make id resident now-ish (pin): starts a load when cold. */
rc_t store__cache_prefetch(store_t *s, const store_adapter_t *row, core_err_t *err);
void store__cache_set_pinned(store_t *s, int64_t id, bool pinned);
uint64_t store__cache_pinned_bytes(store_t *s);

/* ---- ops.c ---- */
/* Validate a config + weights pair in files (the load path uses the same).
 * OUT: *lora (optional, else released), probe fields. */
rc_t store__validate(store_t *s, const char *config_path, const char *weights_path,
                     core_lora_t **lora, store_adapter_t *probe, core_err_t *err);
/* Background changes: persist a broken mark, flush usage counters, collect blobs. */
void store__mark_broken(store_t *s, int64_t id, const char *reason);
void store__flush_usage(store_t *s);
void store__start_gc(store_t *s);
/* Read, verify (sha256 of both files against row) and load one version. */
rc_t store__load_verified(store_t *s, const store_adapter_t *row, core_lora_t **out,
                          core_err_t *err);
/* Whole file into a malloc'd buffer (NUL-terminated), at most max bytes. */
rc_t store__read_file(const char *path, uint64_t max, uint8_t **out, size_t *len,
                      core_err_t *err);

/* ---- router.c ---- */
/* Read and verify a router row's two blobs and parse its weights (a load task). */
rc_t store__rparts_load(store_t *s, const store_adapter_t *row, store_rparts_t **out,
                        core_err_t *err);
void store__rparts_retain(store_rparts_t *p);
void store__rparts_release(store_rparts_t *p);
/* err = "LABEL: " + inner's message, keeping inner's reason (CORE_REASON_MAP) first so the
 * api can still lift it. inner may be err. Returns rc. */
rc_t store__err_named(core_err_t *err, rc_t rc, const core_err_t *inner, const char *label);
/* Is sub-folder dir/entry a router folder (store_import_dir). */
bool store__is_router_dir(const char *dir, const char *entry);

#endif
