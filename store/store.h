/* store.h - the adapter store: a sqlite index, content-addressed blob files, and the
 * adapters resident in memory (a byte budget, LRU eviction, pins, single-flight loads).
 *
 * Index: DATA_DIR/adapterd.db (WAL, synchronous=FULL, foreign keys on), schema version in
 * PRAGMA user_version (a newer daemon migrates an older file; an older daemon refuses a
 * newer one). Tables: tenants, adapters (one row per version), aliases. Exactly one
 * connection writes (and checkpoints): the writer, used only inside store tasks under the
 * writer lock. The loop thread reads through a second, query-only connection.
 * Blobs: DATA_DIR/blobs/<sha256> for both files of an adapter (config and weights), written
 * by store/blob.c's install protocol before the index row that names them commits. A crash
 * at any instant leaves the old state or the new one. Blobs no live row references are
 * collected at open and by store_tick every gc_interval_ms.
 *
 * Names (adapters and aliases share one namespace per tenant): 1-64 chars of
 * [A-Za-z0-9._-], starting with a letter or digit. A spec is "NAME" (an alias, else the
 * newest version of that name), or "NAME@VERSION". Names never become paths. Versions
 * count up per name and are never reused, even after a delete.
 *
 * Tenants: every name-based call takes the tenant it acts for (a tenant id; the tenant
 * "default", id STORE_TENANT_DEFAULT, always exists). A tenant sees its own adapters and
 * aliases, plus the names an admin *published*: a published name (global: at most one
 * tenant publishes a given name) resolves, for every other tenant that has no adapter or
 * alias of that name, to the publisher's adapter. Other tenants may use a published
 * adapter (resolve, acquire, list) but never change it (delete, alias, pin act on the
 * caller's own names only: RC_NOT_FOUND otherwise). An unpublished adapter of another
 * tenant is RC_NOT_FOUND with the same message as a name that does not exist.
 * API keys belong to a tenant and carry a role; the index stores only their sha256.
 *
 * Resident cache: an adapter is loaded on first use by a task on the executor (a pool
 * thread): read both blobs, verify their sha256 (a mismatch marks the version broken:
 * RC_UNAVAILABLE for every request that needs it, state "broken" in listings), parse and
 * validate against the base, convert to f32. N acquires of one cold adapter start one load
 * and all wait for it; a failed load answers all of them. Resident adapters count their
 * in-memory bytes (mem_bytes) against cache_budget_bytes. A resident adapter is in use while
 * anyone besides the cache holds a reference to its core_lora_t (a waiting request, a
 * running sequence through its core_aset_t): in-use and pinned adapters are never evicted;
 * others are evicted least recently used first when a load needs room. When no room can
 * be made, the load waits (the requests behind it wait too: admission waits, it does not
 * thrash) until references are dropped, for at most load_wait_ms (then RC_BUSY, which the
 * api answers 503 cache_full with Retry-After). An adapter larger than the whole budget is refused
 * (RC_LIMIT) at import and at acquire.
 *
 * Threads: every function here runs on one thread, the loop thread (or the only thread of
 * a tool that uses a synchronous executor), except where it says otherwise. Callbacks run
 * on that thread too, never inside the call that registers them - except with a
 * synchronous executor, where a change's callback runs before the call returns.
 * Ownership: rows are plain values; lists are malloc'd (caller frees); loras handed out are
 * retained for the caller (core_lora_release when done). */
#ifndef STORE_STORE_H
#define STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/lora.h"
#include "core/model.h"
#include "core/rc.h"
#include "core/router.h"

#define STORE_NAME_MAX 64
#define STORE_SPEC_MAX (STORE_NAME_MAX + 12) /* "NAME@VERSION" */
#define STORE_TENANT_DEFAULT 1 /* the tenant "default": exists in every index */

/* ---- the executor: where blocking work runs -------------------------------------- */

/* A unit of blocking work. work() runs on a pool thread, then done() on the store's
 * thread. The store allocates and frees tasks. */
typedef struct store_task {
    void (*work)(struct store_task *t);
    void (*done)(struct store_task *t);
} store_task_t;

/* The server passes uv_queue_work; NULL submit runs work() then done() inside the call
 * (start-up, tools, the import command, tests). */
typedef struct {
    void *ctx;
    void (*submit)(void *ctx, store_task_t *t);
} store_exec_t;

typedef struct store store_t;

/* ---- open / close ------------------------------------------------------------------ */

typedef struct {
    const char *data_dir;          /* required; created if missing */
    const core_model_t *base;      /* required; borrowed for the store's life */
    uint64_t cache_budget_bytes;   /* resident adapter bytes (f32 in memory), default 2 GiB */
    uint64_t max_adapter_bytes;    /* weights file cap for uploads and imports, default 1 GiB */
    uint64_t load_wait_ms;         /* longest wait for cache room, default 30000 */
    uint64_t gc_interval_ms;       /* blob GC period in store_tick, default 600000; 0 = never */
    store_exec_t exec;
    /* Hold an exclusive lock on DATA_DIR/adapterd.lock for the store's life (the daemon and
     * the import command both do), so two processes never write one index. */
    bool lock;
    /* Quotas of tenants whose own value is STORE_QUOTA_INHERIT (the serve flags
     * --tenant-max-concurrent, --tenant-tokens-per-min, --tenant-max-stored-bytes);
     * 0 = unlimited, the default. */
    int64_t default_max_concurrent, default_tokens_per_min, default_max_stored_bytes;
} store_params_t;

store_params_t store_default_params(void);

/* Opens (creating or migrating) the index, empties DATA_DIR/tmp, collects unreferenced
 * blobs and copies the files of rows migrated from schema 1 (which referenced folders in
 * place) into blobs. base may be NULL (the tenant and key commands): then uploads and
 * imports fail RC_INVALID and pins are not loaded. RC_BUSY when another process holds the lock (the message says which
 * file and what to do), RC_UNSUPPORTED for a newer schema. Blocking: call before the loop
 * runs. OUT: *out. */
rc_t store_open(const store_params_t *p, store_t **out, core_err_t *err);
/* Frees everything. No task may be in flight (store_n_tasks == 0). */
void store_close(store_t *s);
/* Tasks submitted and not yet done (the server drains them before store_close). */
int store_n_tasks(const store_t *s);

/* Housekeeping, from a timer (~every 100 ms) and after requests end: retries loads that
 * wait for room, fails waits past load_wait_ms, flushes usage counters (last_used,
 * request counts) to the index every few seconds, runs GC every gc_interval_ms. */
void store_tick(store_t *s, uint64_t now_ms);

/* true when name matches the documented charset and length. */
bool store_name_valid(const char *name);

/* ---- rows -------------------------------------------------------------------------- */

typedef enum {
    STORE_STATE_READY,   /* servable */
    STORE_STATE_BROKEN,  /* its blobs failed verification or a load: never served */
    STORE_STATE_DELETED, /* kept only so its version number is never reused */
} store_state_t;

typedef struct {
    int64_t id;
    int64_t tenant_id;   /* the owner */
    bool shared;         /* resolved for another tenant through a published name */
    bool published;      /* its name is published by its owner */
    char name[STORE_NAME_MAX + 1];
    int version;
    char kind[16];       /* "lora", or a router's: "xlora", "phatgoose", "arrow" */
    int rank;
    double alpha;
    char targets[128];   /* "q_proj,v_proj" */
    char base_fingerprint[65];
    char sha256[65];        /* of adapter_model.safetensors (its blob name) */
    char config_sha256[65]; /* of adapter_config.json (its blob name) */
    int64_t size;        /* bytes of adapter_model.safetensors */
    int64_t mem_bytes;   /* bytes resident in memory once loaded (f32 A and B) */
    int64_t created;     /* unix seconds */
    int64_t last_used;   /* unix seconds, 0 = never */
    int64_t n_requests;  /* requests that used this version */
    bool pinned;         /* explicit pin: kept resident */
    store_state_t state;
    char reason[256];    /* why broken, else "" */
} store_adapter_t;

/* What the cache knows of a row right now. */
typedef struct {
    bool resident;    /* loaded and in memory */
    bool loading;     /* a load is running or waiting for room */
    int n_users;      /* references held besides the cache's (0 when not resident) */
    bool broken;      /* a load found it broken (the index says so shortly after) */
    char reason[256]; /* why, when broken */
} store_runtime_t;

const char *store_state_str(store_state_t st); /* "ready", "broken", "deleted" */

/* Resolve a spec for tenant now (its alias -> the target version; its NAME -> newest
 * live version; NAME@V; else a name published by another tenant, resolved in that
 * tenant, row->shared set). RC_NOT_FOUND for unknown, deleted or foreign unpublished
 * (message "adapter 'SPEC' not found" in every case), RC_INVALID for a malformed spec. */
rc_t store_resolve(store_t *s, int64_t tenant, const char *spec, store_adapter_t *row,
                   core_err_t *err);
/* Newest live version of every name tenant owns, then of every name others published
 * that tenant does not shadow (shared set), ordered by name. OUT: *rows malloc'd, *n. */
rc_t store_list(store_t *s, int64_t tenant, store_adapter_t **rows, size_t *n,
                core_err_t *err);
/* Every live version of name (own, else published), oldest first. RC_NOT_FOUND when none. */
rc_t store_versions(store_t *s, int64_t tenant, const char *name, store_adapter_t **rows,
                    size_t *n, core_err_t *err);
void store_runtime(store_t *s, int64_t id, store_runtime_t *rt);

typedef struct {
    char name[STORE_NAME_MAX + 1];
    char target[STORE_SPEC_MAX]; /* "NAME@VERSION" */
    int64_t updated;             /* unix seconds */
} store_alias_t;
/* Every alias of tenant, ordered by name. OUT: *rows malloc'd, *n. */
rc_t store_aliases(store_t *s, int64_t tenant, store_alias_t **rows, size_t *n,
                   core_err_t *err);

typedef struct {
    uint64_t budget_bytes, resident_bytes, pinned_bytes;
    int n_resident, n_loading, n_waiting_room;
    uint64_t n_hits, n_misses, n_loads, n_load_failures, n_evictions;
    double load_ms_total;        /* sum of load task times (read + verify + parse) */
} store_stats_t;
void store_stats(store_t *s, store_stats_t *out);

/* ---- acquire: the adapters a request applies ---------------------------------------- */

typedef struct {
    char spec[STORE_SPEC_MAX]; /* in */
    store_adapter_t row;       /* out: the resolved row (valid once resolved) */
    core_lora_t *lora;         /* out: retained for the caller on success (adapters) */
    core_router_t *router;     /* out: retained for the caller on success when the spec
                                * names a router (then lora is NULL); see "routers" */
} store_want_t;

typedef struct store_wait store_wait_t;
/* rc RC_OK: every want has its lora (the caller owns those references). Otherwise none
 * does (the store released what it had), and err says which spec failed and why. */
typedef void (*store_ready_fn)(void *user, rc_t rc, const core_err_t *err);

/* Resolve every want now (so an alias swap that committed before this call is honoured)
 * and take references to the resident ones. RC_OK with *wait NULL: all n are resident,
 * the loras are filled, no callback. RC_OK with *wait set: some must load; cb is called
 * once, later, on this thread, unless store_wait_cancel is called first. Any other rc:
 * failed now (unknown name RC_NOT_FOUND, broken RC_UNAVAILABLE, larger than the budget
 * RC_LIMIT; nothing retained). wants must stay valid until cb runs or the wait is
 * cancelled. Counts a request for each row. */
rc_t store_acquire(store_t *s, int64_t tenant, store_want_t *wants, int n, store_ready_fn cb,
                   void *user, store_wait_t **wait, core_err_t *err);
/* The request went away: cb will not be called; references taken are released. */
void store_wait_cancel(store_t *s, store_wait_t *wait);

/* ---- changes (asynchronous: a task on the executor; cb on this thread) -------------- */

/* row: the row written or affected (NULL on failure). */
typedef void (*store_done_fn)(void *user, rc_t rc, const store_adapter_t *row,
                              const core_err_t *err);

/* An upload in progress: the loop thread streams both files into temp blobs, then
 * store_upload_commit validates, installs the blobs and indexes a new version. */
typedef struct store_upload store_upload_t;
typedef enum { STORE_PART_CONFIG, STORE_PART_WEIGHTS } store_part_t;

/* RC_INVALID for a bad name, RC_UNAVAILABLE when the store no longer accepts writes. */
rc_t store_upload_new(store_t *s, int64_t tenant, const char *name, store_upload_t **out,
                      core_err_t *err);
/* Append to one file. RC_LIMIT past max_adapter_bytes (weights) or 64 KiB (config),
 * RC_NOSPACE, RC_IO. (The write goes to the page cache; fsync happens in commit.) */
rc_t store_upload_write(store_upload_t *u, store_part_t part, const void *data, size_t len,
                        core_err_t *err);
/* Takes u. Validates the pair against the base model (RC_MISMATCH/RC_UNSUPPORTED/
 * RC_FORMAT/RC_INVALID with the reason), RC_LIMIT when larger than the cache budget,
 * RC_EXISTS when the name is an alias, RC_INVALID when a part is missing, RC_QUOTA when
 * the tenant's stored bytes (weights of its live versions) plus this one would pass its
 * max_stored_bytes (checked inside the insert transaction); then fsyncs,
 * installs and inserts version newest+1 in one transaction. cb gets the new row. */
void store_upload_commit(store_upload_t *u, store_done_fn cb, void *user);
/* Abandon an upload (client gone): temp files removed. NULL-safe. */
void store_upload_free(store_upload_t *u);

typedef struct {
    bool fail_if_exists; /* RC_EXISTS when the name has a live version (vLLM's rule) */
} store_import_opts_t;
/* Copy DIR/adapter_config.json and DIR/adapter_model.safetensors into blobs and index
 * them as name: a new version, unless the newest version of name has the same two
 * sha256s (then that row, unchanged). Same validation as uploads. */
void store_import_async(store_t *s, int64_t tenant, const char *dir, const char *name,
                        const store_import_opts_t *o, store_done_fn cb, void *user);
/* Progress of a blocking import: phase "copy" (bytes of both files copied into tmp/ so
 * far, of total) then "verify" (bytes parsed and checked, of total); called often enough
 * for a progress bar (every few MiB), on the caller's thread. */
typedef void (*store_progress_fn)(void *user, const char *phase, uint64_t done,
                                  uint64_t total);
/* Blocking form (start-up, the import command): runs on the caller's thread. progress
 * may be NULL. */
rc_t store_import(store_t *s, int64_t tenant, const char *dir, const char *name,
                  store_progress_fn progress, void *progress_user, store_adapter_t *row,
                  core_err_t *err);
/* Import every sub-folder of dir that holds an adapter_config.json, named after the
 * sub-folder, for tenant. Bad ones are logged to stderr and skipped. Blocking.
 * OUT: *n_imported. */
rc_t store_import_dir(store_t *s, int64_t tenant, const char *dir, int *n_imported,
                      core_err_t *err);

/* spec "NAME" deletes every version, "NAME@V" one. Requests already holding the adapter
 * finish on it; new ones get RC_NOT_FOUND at once (the cache forgets it before cb).
 * RC_EXISTS when an alias points at a version to delete (repoint or delete it first).
 * cb's row is the (last) version deleted. */
void store_delete(store_t *s, int64_t tenant, const char *spec, store_done_fn cb, void *user);

/* Point alias at target (a spec, resolved now: "NAME" means its newest version at this
 * moment). Creates or repoints in one transaction: the hot swap. RC_EXISTS when alias is
 * an adapter name; RC_NOT_FOUND when target is unknown. cb's row is the target version. */
void store_alias_put(store_t *s, int64_t tenant, const char *alias, const char *target,
                     store_done_fn cb, void *user);
void store_alias_delete(store_t *s, int64_t tenant, const char *alias, store_done_fn cb,
                        void *user);

/* Pin (keep resident, load now) or unpin a version. RC_LIMIT when the pinned bytes would
 * pass the budget. Persists across restarts. cb's row is the version. */
void store_pin(store_t *s, int64_t tenant, const char *spec, bool pin, store_done_fn cb,
               void *user);

/* Publish (or withdraw) tenant's NAME (every version; aliases cannot be published) so
 * other tenants can use it. RC_NOT_FOUND when tenant has no live version of name,
 * RC_EXISTS when another tenant already publishes that name. Persists. cb's row is the
 * newest version (published updated). Who may publish is the api's decision (admins). */
void store_publish(store_t *s, int64_t tenant, const char *name, bool publish,
                   store_done_fn cb, void *user);

/* ---- routers (core/router.h) ----------------------------------------------------------
 * A router is stored like an adapter: a row of the adapters table (one namespace with
 * adapters and aliases, versions, aliases may point at it, publish, pin, delete) whose kind
 * is "xlora", "phatgoose" or "arrow". Its config blob is the router's config JSON as given
 * (an X-LoRA adapter_config.json or xlora_config.json, or a router_config.json); its
 * weights blob is the X-LoRA classifier, the PHATGOOSE gates, or the Arrow prototypes
 * computed once at registration (core_router_arrow_save). Its experts are adapter versions
 * (kind "lora") its tenant can resolve, fixed at registration as row ids in expert order
 * (table router_experts); deleting an expert version that a live router uses is RC_EXISTS
 * naming the router. Row fields: rank = its widest expert's config r, alpha 0, targets the
 * union of its experts', size = weights blob bytes, mem_bytes = the bytes of its own parts
 * in memory (its experts count on their own rows).
 * store_acquire of a router's spec takes the router's parts and every expert through the
 * resident cache like adapters (loads, single flight, budget, pins), then builds a
 * core_router_t (core_router_from_parts) for the want: want->router, retained for the
 * caller; want->lora stays NULL. A router that can no longer be built (an expert broken)
 * is RC_UNAVAILABLE naming the expert. */

bool store_kind_is_router(const char *kind);

/* The experts of router row id, in expert order, as "NAME@VERSION". OUT: *specs malloc'd
 * (n_experts entries), *n. RC_NOT_FOUND when id is not a router. */
rc_t store_router_experts(store_t *s, int64_t id, char (**specs)[STORE_SPEC_MAX], int *n,
                          core_err_t *err);

typedef struct {
    const char *config;        /* the router config JSON (not NUL-terminated) */
    size_t config_len;
    const uint8_t *weights;    /* classifier or gates (safetensors); NULL for Arrow */
    size_t weights_len;
    /* Specs resolved for the tenant now (aliases and NAME to their current version) in
     * expert order; NULL: the config's expert names (core_router_cfg_experts) as specs. */
    const char *const *experts;
    int n_experts;
} store_router_src_t;

/* Register a router as a new version of name (a task; cb gets the new row). Validates by
 * building it against the base with its experts loaded (RC_NOT_FOUND naming an unknown
 * expert, RC_INVALID when the number of experts differs from the config's, the router's
 * own refusals with their reasons). Same name rules, quota and RC_EXISTS-for-an-alias as
 * uploads. src is copied before the call returns. */
void store_router_put(store_t *s, int64_t tenant, const char *name,
                      const store_router_src_t *src, store_done_fn cb, void *user);

/* Blocking import of a router folder (core_router_dir_is_router(dir)) as name. When the
 * expert sub-folders DIR/<expert>/ exist, each is first imported as the adapter
 * "<name>.<expert>" (same validation as any adapter; a refused one refuses the router,
 * the message naming the expert), and those versions become the experts; otherwise
 * experts[0 .. n_experts) (or, when NULL, the config's expert names) name adapters
 * already in the store. A new version unless the newest version of name has the same
 * config, weights and experts. store_import_dir imports router sub-folders this way. */
rc_t store_router_import(store_t *s, int64_t tenant, const char *dir, const char *name,
                         const char *const *experts, int n_experts, store_adapter_t *row,
                         core_err_t *err);

/* ---- tenants and API keys ------------------------------------------------------------
 * Both tables are read into memory at open and kept current by the calls below, so the
 * per-request lookups (store_auth, store_tenant) touch no database. Tenant names follow
 * the adapter name rule. Tenants are never deleted (their rows own adapters); a tenant
 * without active keys can do nothing. */

#define STORE_QUOTA_INHERIT (-1) /* use the store_params_t default */

typedef struct {
    int64_t id;
    char name[STORE_NAME_MAX + 1];
    int64_t created;
    /* As set: STORE_QUOTA_INHERIT, 0 = unlimited, or the limit. */
    int64_t max_concurrent;   /* sequences waiting or running at once */
    int64_t tokens_per_min;   /* prompt + generated tokens per minute */
    int64_t max_stored_bytes; /* weights bytes of its live adapter versions */
    double share;             /* fair-share weight of its sequences, > 0, default 1 */
} store_tenant_t;

/* The tenant's effective quotas: inherit replaced by the params' defaults. */
void store_tenant_effective(const store_t *s, const store_tenant_t *t, store_tenant_t *out);

/* In-memory lookups (loop thread). RC_NOT_FOUND when unknown. */
rc_t store_tenant(store_t *s, int64_t id, store_tenant_t *out);
rc_t store_tenant_by_name(store_t *s, const char *name, store_tenant_t *out);
/* Every tenant, by name. OUT: *rows malloc'd, *n. */
rc_t store_tenants(store_t *s, store_tenant_t **rows, size_t *n, core_err_t *err);
/* Weights bytes of tenant's live (ready or broken) versions, from the index. */
rc_t store_tenant_bytes(store_t *s, int64_t tenant, int64_t *bytes, core_err_t *err);

typedef void (*store_tenant_fn)(void *user, rc_t rc, const store_tenant_t *t,
                                const core_err_t *err);
/* Create tenant t->name with t's quotas and share (create: RC_EXISTS when the name is
 * taken), or update an existing one (!create: RC_NOT_FOUND when unknown; every quota
 * field and share are written as given). RC_INVALID for a bad name, a share <= 0 or a
 * quota < -1. Task; cb gets the row as stored (with its id). */
void store_tenant_put(store_t *s, const store_tenant_t *t, bool create, store_tenant_fn cb,
                      void *user);

typedef enum { STORE_ROLE_TENANT = 0, STORE_ROLE_ADMIN = 1 } store_role_t;
const char *store_role_str(store_role_t r); /* "tenant", "admin" */

#define STORE_KEY_ID_LEN 12 /* hex chars of a key's public id */

typedef struct {
    char id[STORE_KEY_ID_LEN + 1]; /* public, random: names the key in lists and revokes */
    int64_t tenant_id;
    store_role_t role;
    char label[STORE_NAME_MAX + 1]; /* free text chosen by the operator, may be "" */
    int64_t created;
    int64_t revoked;                /* unix seconds, 0 = active */
} store_key_t;

/* The secret handed out once: "adk_" ID "_" 43 base64url chars (256 random bits from
 * getrandom). Only sha256(secret) is stored. */
#define STORE_KEY_SECRET_MAX 96

/* Active keys (auth is required once there is at least one). Loop thread. */
size_t store_n_active_keys(store_t *s);
/* Authenticate a presented secret: sha256 it and compare against every active key's
 * hash in constant time (no early exit, so timing does not depend on which key or how
 * much of it matched). true and *out on a match. Loop thread. */
bool store_auth(store_t *s, const char *secret, size_t len, store_key_t *out);
/* Keys of tenant (0 = all), active and revoked, oldest first. OUT: *rows malloc'd. */
rc_t store_keys(store_t *s, int64_t tenant, store_key_t **rows, size_t *n, core_err_t *err);

/* secret: NUL-terminated, only in this callback, only on success (never stored). */
typedef void (*store_key_fn)(void *user, rc_t rc, const store_key_t *k, const char *secret,
                             const core_err_t *err);
/* A new key for tenant (RC_NOT_FOUND when unknown). label: "" or up to 64 printable
 * ASCII chars (RC_INVALID otherwise). Task. */
void store_key_add(store_t *s, int64_t tenant, store_role_t role, const char *label,
                   store_key_fn cb, void *user);
/* Revoke key id (RC_NOT_FOUND when unknown; revoking a revoked key is RC_OK, unchanged).
 * The key leaves store_auth's table during this call, before the write (fail-safe: a
 * failed write still refuses the key until restart), so the next request with it fails.
 * Task; cb gets the key with revoked set. */
void store_key_revoke(store_t *s, const char *id, store_key_fn cb, void *user);

#endif
