/* cache.c - the adapters resident in memory: acquire, waits, single-flight loads on the
 * executor, the byte budget and LRU eviction.
 *
 * One entry per adapter version the cache knows: QUEUED (wants room), LOADING (a task
 * runs), READY (lora held), BROKEN (verification or validation failed: answered at once).
 * Entries are kept in arrival order, so QUEUED entries start strictly first come, first
 * served (a large adapter is not starved by small ones behind it).
 *
 * A wait is one request's set of wants, as items: one per adapter want, and for a router
 * want its own row (the entry holds the router's parts: config text and parsed weights,
 * store_rparts_t) followed by one item per expert (ordinary adapter entries). It holds
 * references to the items already resident (so they cannot be evicted under it) and counts
 * the ones still loading. When an entry becomes READY every wait that wants it gets a
 * reference; when a load fails every wait that wants it fails (and drops what it held).
 * When every item is held, each router want gets a core_router_t built from its parts and
 * experts (core_router_from_parts retains the experts, so a running sequence keeps them in
 * use through the router), and the wait's own references are dropped.
 *
 * Budget: READY and LOADING entries count their bytes (a router's parts count its row's
 * mem_bytes). A READY entry is idle when the cache holds the only reference (refcount 1:
 * no wait, no running sequence, no set or router holds it); only idle, unpinned entries
 * are evicted, least recently used first. Reading the
 * refcount without a lock is safe: only this thread hands out new references, so a count
 * of 1 can only grow through us.
 *
 * Threads: the store's thread; load tasks' work() touches only its task. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "store/store_int.h"

#define STORE_LOAD_NICE 10

/* One entry a wait needs (see above). */
typedef struct {
    int want;               /* index into wants */
    int64_t id;
    store_adapter_t row;    /* as resolved: a cold entry is made from it */
    core_lora_t *lora;      /* held reference (adapter) */
    store_rparts_t *parts;  /* held reference (router parts) */
} wait_item_t;

struct store_wait {
    struct store_wait *next;
    store_t *s;
    store_want_t *wants;
    int n;
    wait_item_t *items;
    int n_items, cap_items;
    int n_pending;          /* items not held yet */
    store_ready_fn cb;
    void *user;
    uint64_t since_ms;
    bool in_call;  /* inside store_acquire: record the outcome instead of calling cb */
    bool marked;   /* chosen to finish by the walk in progress (see cache_finish_marked) */
    bool finished;
    rc_t rc;
    core_err_t err;
};

typedef struct {
    store_task_t t;
    store_t *s;
    int64_t id;
    store_adapter_t row;
    core_lora_t *lora;
    store_rparts_t *parts;  /* a router row's load */
    rc_t rc;
    core_err_t err;
    double ms;
} cache_load_t;

static void cache_pump(store_t *s);

/* ---- entries ---- */

store_entry_t *store__cache_find(store_t *s, int64_t id)
{
    for (store_entry_t *e = s->entries; e; e = e->next)
        if (e->id == id)
            return e;
    return NULL;
}

static store_entry_t *cache_add(store_t *s, const store_adapter_t *row)
{
    store_entry_t *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->id = row->id;
    e->row = *row;
    e->state = SE_QUEUED;
    e->queued_ms = s->now_ms;
    e->pinned = row->pinned;
    store_entry_t **p = &s->entries;
    while (*p)
        p = &(*p)->next;
    *p = e;
    return e;
}

/* References besides nobody's: the entry's object's refcount (READY only). */
static int entry_refs(const store_entry_t *e)
{
    if (e->lora)
        return __atomic_load_n(&e->lora->refcount, __ATOMIC_ACQUIRE);
    if (e->parts)
        return __atomic_load_n(&e->parts->refcount, __ATOMIC_ACQUIRE);
    return 0;
}

/* Dropping the cache's reference may free tens of MB (munmap takes milliseconds), so
 * the release runs on the executor, off the loop thread. */
typedef struct {
    store_task_t t;
    store_t *s;
    core_lora_t *lora;
    store_rparts_t *parts;
} cache_release_t;

static void release_work(store_task_t *t)
{
    cache_release_t *r = (cache_release_t *)t;
    if (r->lora)
        core_lora_release(r->lora);
    store__rparts_release(r->parts);
}

static void release_done(store_task_t *t)
{
    cache_release_t *r = (cache_release_t *)t;
    store__task_end(r->s);
    free(r);
}

static void cache_release_obj(store_t *s, core_lora_t *lora, store_rparts_t *parts)
{
    cache_release_t *r = calloc(1, sizeof *r);
    if (!r) {
        if (lora)
            core_lora_release(lora);
        store__rparts_release(parts);
        return;
    }
    *r = (cache_release_t){.t = {release_work, release_done}, .s = s, .lora = lora,
                           .parts = parts};
    store__task_submit(s, &r->t);
}

static void cache_remove(store_t *s, store_entry_t *e)
{
    for (store_entry_t **p = &s->entries; *p; p = &(*p)->next) {
        if (*p == e) {
            *p = e->next;
            break;
        }
    }
    if (e->lora || e->parts)
        cache_release_obj(s, e->lora, e->parts);
    free(e);
}

static uint64_t cache_entry_bytes(const store_entry_t *e)
{
    if (e->state == SE_READY && e->lora)
        return e->lora->n_bytes;
    if (e->state == SE_READY && e->parts)
        return (uint64_t)e->row.mem_bytes;
    return e->state == SE_LOADING ? (uint64_t)e->row.mem_bytes : 0;
}

static uint64_t cache_used(store_t *s)
{
    uint64_t used = 0;
    for (store_entry_t *e = s->entries; e; e = e->next)
        used += cache_entry_bytes(e);
    return used;
}

static bool cache_idle(const store_entry_t *e)
{
    return e->state == SE_READY && !e->pinned && entry_refs(e) == 1;
}

uint64_t store__cache_pinned_bytes(store_t *s)
{
    uint64_t b = 0;
    for (store_entry_t *e = s->entries; e; e = e->next)
        if (e->pinned)
            b += (uint64_t)e->row.mem_bytes;
    return b;
}

/* Evict idle entries, least recently used first, until need more bytes fit. */
static bool cache_make_room(store_t *s, uint64_t need)
{
    uint64_t used = cache_used(s);
    while (used + need > s->p.cache_budget_bytes) {
        store_entry_t *victim = NULL;
        for (store_entry_t *e = s->entries; e; e = e->next)
            if (cache_idle(e) && (!victim || e->last_use < victim->last_use))
                victim = e;
        if (!victim)
            return false;
        used -= cache_entry_bytes(victim);
        s->stats.n_evictions++;
        cache_remove(s, victim);
    }
    return true;
}

/* ---- waits ---- */

static void wait_unlink(store_t *s, struct store_wait *w)
{
    for (struct store_wait **p = &s->waits; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            return;
        }
    }
}

static bool item_held(const wait_item_t *it)
{
    return it->lora || it->parts;
}

/* Take a reference to READY entry e for it. */
static void item_take(store_entry_t *e, wait_item_t *it)
{
    if (e->lora) {
        core_lora_retain(e->lora);
        it->lora = e->lora;
    } else {
        store__rparts_retain(e->parts);
        it->parts = e->parts;
    }
}

/* Drop the references the items hold. */
static void wait_release_items(struct store_wait *w)
{
    for (int i = 0; i < w->n_items; i++) {
        wait_item_t *it = &w->items[i];
        if (it->lora)
            core_lora_release(it->lora);
        store__rparts_release(it->parts);
        it->lora = NULL;
        it->parts = NULL;
    }
}

static void wait_release(struct store_wait *w)
{
    wait_release_items(w);
    for (int i = 0; i < w->n; i++) {
        if (w->wants[i].lora)
            core_lora_release(w->wants[i].lora);
        if (w->wants[i].router)
            core_router_release(w->wants[i].router);
        w->wants[i].lora = NULL;
        w->wants[i].router = NULL;
    }
}

static void wait_free(struct store_wait *w)
{
    free(w->items);
    free(w);
}

/* Router want i from its items: own = the parts, then n_exp experts in expert order. */
static rc_t wait_build(store_t *s, store_want_t *want, wait_item_t *own, int n_exp,
                       core_err_t *err)
{
    core_lora_t *ex[CORE_ROUTER_MAX_EXPERTS];
    core_err_t e = {{0}};
    char label[STORE_NAME_MAX + 48];
    for (int j = 0; j < n_exp; j++)
        ex[j] = own[1 + j].lora;
    rc_t rc = core_router_from_parts(own->parts->config, own->parts->st, ex, n_exp,
                                     &s->p.base->cfg, &want->router, &e);
    if (rc == RC_OK)
        return RC_OK;
    snprintf(label, sizeof label, "router %s@%d cannot be built", own->row.name,
             own->row.version);
    return store__err_named(err, RC_UNAVAILABLE, &e, label);
}

/* Every item is held: hand the adapters to their wants, build the routers, and drop the
 * wait's remaining references (each router holds its own to its experts). */
static rc_t wait_complete(store_t *s, struct store_wait *w, core_err_t *err)
{
    int k = 0;
    for (int i = 0; i < w->n; i++) {
        wait_item_t *own = &w->items[k];
        int n_exp = 0;
        while (k + 1 + n_exp < w->n_items && w->items[k + 1 + n_exp].want == i)
            n_exp++;
        if (own->lora) {
            w->wants[i].lora = own->lora; /* the wait's reference becomes the caller's */
            own->lora = NULL;
        } else {
            rc_t rc = wait_build(s, &w->wants[i], own, n_exp, err);
            if (rc != RC_OK)
                return rc;
        }
        k += 1 + n_exp;
    }
    wait_release_items(w);
    return RC_OK;
}

/* The wait is over: unlinked, and its callback runs (or, inside store_acquire, the
 * outcome is recorded for the caller). */
static void wait_finish(store_t *s, struct store_wait *w, rc_t rc, const core_err_t *err)
{
    core_err_t built;
    wait_unlink(s, w);
    if (rc == RC_OK && (rc = wait_complete(s, w, &built)) != RC_OK)
        err = &built;
    if (rc != RC_OK)
        wait_release(w);
    w->finished = true;
    w->rc = rc;
    if (err)
        w->err = *err;
    if (w->in_call)
        return;
    w->cb(w->user, rc, &w->err);
    wait_free(w);
}

static bool wait_wants(const struct store_wait *w, int64_t id)
{
    for (int i = 0; i < w->n_items; i++)
        if (w->items[i].id == id)
            return true;
    return false;
}

/* Finish every marked wait with rc. Callbacks may acquire or cancel (changing the list),
 * so the walk marks first and then takes one marked wait at a time from the head; waits
 * added by a callback are not marked. */
static void cache_finish_marked(store_t *s, rc_t rc, const core_err_t *err)
{
    for (;;) {
        struct store_wait *w = s->waits;
        while (w && !w->marked)
            w = w->next;
        if (!w)
            return;
        w->marked = false;
        wait_finish(s, w, rc, err);
    }
}

/* Entry e became READY: hand references to every wait that wants it. */
static void cache_deliver(store_t *s, store_entry_t *e)
{
    for (struct store_wait *w = s->waits; w; w = w->next) {
        for (int i = 0; i < w->n_items; i++) {
            wait_item_t *it = &w->items[i];
            if (it->id != e->id || item_held(it))
                continue;
            item_take(e, it);
            w->n_pending--;
        }
        w->marked = w->n_pending == 0;
    }
    e->last_use = ++s->clock;
    cache_finish_marked(s, RC_OK, NULL);
}

/* Every wait that wants id fails with rc. */
static void cache_fail_waits(store_t *s, int64_t id, rc_t rc, const core_err_t *err)
{
    for (struct store_wait *w = s->waits; w; w = w->next)
        w->marked = wait_wants(w, id);
    cache_finish_marked(s, rc, err);
}

/* ---- loads ---- */

/* Loads are background work: on a machine with few cores the loop thread (and the
 * engine) must win the CPU over a hash and a conversion running at once, so the pool
 * thread that loads lowers its own priority (Linux: per thread; the hash thread it starts
 * inherits it). Once per thread. */
static void load_nice(void)
{
    static _Thread_local bool done;
    if (done)
        return;
    done = true;
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), STORE_LOAD_NICE);
}

static void load_work(store_task_t *t)
{
    cache_load_t *l = (cache_load_t *)t;
    struct timespec a, b;
    load_nice();
    clock_gettime(CLOCK_MONOTONIC, &a);
    if (store_kind_is_router(l->row.kind))
        l->rc = store__rparts_load(l->s, &l->row, &l->parts, &l->err);
    else
        l->rc = store__load_verified(l->s, &l->row, &l->lora, &l->err);
    clock_gettime(CLOCK_MONOTONIC, &b);
    l->ms = (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6;
}

/* Failures that say the stored bytes are bad (never retried) versus passing ones. */
static bool load_permanent(rc_t rc)
{
    return rc == RC_MISMATCH || rc == RC_FORMAT || rc == RC_UNSUPPORTED || rc == RC_INVALID ||
           rc == RC_NOT_FOUND || rc == RC_LIMIT;
}

static void load_failed(store_t *s, store_entry_t *e, cache_load_t *l)
{
    core_err_t err;
    s->stats.n_load_failures++;
    if (!load_permanent(l->rc)) {
        core_err(&err, RC_UNAVAILABLE, "adapter %s@%d could not be loaded: %s", l->row.name,
                 l->row.version, l->err.msg);
        int64_t id = e->id;
        cache_remove(s, e); /* the next request tries again */
        cache_fail_waits(s, id, RC_UNAVAILABLE, &err);
        return;
    }
    core_err(&err, RC_UNAVAILABLE, "adapter %s@%d is broken: %s", l->row.name, l->row.version,
             l->err.msg);
    e->state = SE_BROKEN;
    e->fail_rc = RC_UNAVAILABLE;
    snprintf(e->fail_msg, sizeof e->fail_msg, "%s", err.msg);
    fprintf(stderr, "adapterd: store: %s\n", err.msg);
    store__mark_broken(s, e->id, l->err.msg);
    cache_fail_waits(s, e->id, RC_UNAVAILABLE, &err);
}

static void load_done(store_task_t *t)
{
    cache_load_t *l = (cache_load_t *)t;
    store_t *s = l->s;
    store_entry_t *e = store__cache_find(s, l->id);
    s->stats.load_ms_total += l->ms;
    if (!e) { /* forgotten (deleted) while loading and nobody waits */
        if (l->lora)
            core_lora_release(l->lora);
        store__rparts_release(l->parts);
    } else if (l->rc != RC_OK) {
        load_failed(s, e, l);
    } else {
        s->stats.n_loads++;
        e->state = SE_READY;
        e->lora = l->lora; /* the cache's reference */
        e->parts = l->parts;
        cache_deliver(s, e);
        e = store__cache_find(s, l->id); /* a callback's acquire may have evicted it */
        if (e && e->row.state == STORE_STATE_DELETED && cache_idle(e))
            cache_remove(s, e);
    }
    free(l);
    store__task_end(s);
    cache_pump(s);
}

static bool load_start(store_t *s, store_entry_t *e)
{
    cache_load_t *l = calloc(1, sizeof *l);
    if (!l)
        return false;
    l->t.work = load_work;
    l->t.done = load_done;
    l->s = s;
    l->id = e->id;
    l->row = e->row;
    e->state = SE_LOADING;
    store__task_submit(s, &l->t);
    return true;
}

/* Start queued loads in arrival order while there is room. */
static void cache_pump(store_t *s)
{
    for (store_entry_t *e = s->entries; e; e = e->next) {
        if (e->state != SE_QUEUED)
            continue;
        if (!cache_make_room(s, (uint64_t)e->row.mem_bytes) || !load_start(s, e))
            return;
        /* load_start may have completed synchronously and changed the list: restart. */
        cache_pump(s);
        return;
    }
}

/* ---- acquire ---- */

static rc_t acquire_check(store_t *s, const store_adapter_t *r, core_err_t *err)
{
    if (r->state == STORE_STATE_BROKEN)
        return core_err(err, RC_UNAVAILABLE, "adapter %s@%d is broken: %s", r->name, r->version,
                        r->reason);
    if (strcmp(r->base_fingerprint, s->p.base->fingerprint) != 0)
        return core_err(err, RC_MISMATCH, "adapter %s@%d was imported for a different base model",
                        r->name, r->version);
    if ((uint64_t)r->mem_bytes > s->p.cache_budget_bytes)
        return core_err(err, RC_LIMIT,
                        "adapter %s@%d needs %lld bytes in memory, more than the whole adapter "
                        "cache (--adapter-cache-bytes %llu)",
                        r->name, r->version, (long long)r->mem_bytes,
                        (unsigned long long)s->p.cache_budget_bytes);
    return RC_OK;
}

static void usage_count(store_t *s, int64_t id)
{
    int64_t now = (int64_t)time(NULL);
    for (size_t i = 0; i < s->n_usage; i++) {
        if (s->usage[i].id == id) {
            s->usage[i].n++;
            s->usage[i].last_used = now;
            return;
        }
    }
    if (s->n_usage == s->cap_usage) {
        size_t cap = s->cap_usage ? s->cap_usage * 2 : 16;
        store_usage_t *nv = realloc(s->usage, cap * sizeof *nv);
        if (!nv)
            return; /* a lost count is not worth failing a request */
        s->usage = nv;
        s->cap_usage = cap;
    }
    s->usage[s->n_usage++] = (store_usage_t){id, 1, now};
}

/* Append an item for want i. */
static rc_t wait_add_item(struct store_wait *w, int want, const store_adapter_t *row,
                          core_err_t *err)
{
    if (w->n_items == w->cap_items) {
        int cap = w->cap_items ? w->cap_items * 2 : 8;
        wait_item_t *nv = realloc(w->items, (size_t)cap * sizeof *nv);
        if (!nv)
            return core_err(err, RC_NOMEM, "store: out of memory");
        w->items = nv;
        w->cap_items = cap;
    }
    w->items[w->n_items++] = (wait_item_t){.want = want, .id = row->id, .row = *row};
    return RC_OK;
}

/* A router want's experts as items after its own, each checked like a want of its own
 * (a broken expert is RC_UNAVAILABLE naming it). */
static rc_t acquire_experts(store_t *s, struct store_wait *w, int want, const store_adapter_t *r,
                            core_err_t *err)
{
    store_adapter_t rows[CORE_ROUTER_MAX_EXPERTS];
    char label[STORE_NAME_MAX + 32];
    int n = 0;
    uint64_t need = (uint64_t)r->mem_bytes;
    rc_t rc = store__router_expert_rows(s, r->id, rows, &n, err);
    snprintf(label, sizeof label, "router %s@%d", r->name, r->version);
    if (rc == RC_OK && n == 0)
        rc = core_err(err, RC_UNAVAILABLE, "%s has no experts in the index", label);
    for (int j = 0; j < n; j++)
        need += (uint64_t)rows[j].mem_bytes;
    /* its parts and every expert are resident at once while it is used */
    if (rc == RC_OK && need > s->p.cache_budget_bytes)
        rc = core_err(err, RC_LIMIT,
                      "%s needs %llu bytes in memory with its experts, more than the whole "
                      "adapter cache (--adapter-cache-bytes %llu)",
                      label, (unsigned long long)need,
                      (unsigned long long)s->p.cache_budget_bytes);
    for (int j = 0; rc == RC_OK && j < n; j++) {
        if (rows[j].state == STORE_STATE_DELETED)
            rc = core_err(err, RC_UNAVAILABLE, "%s: its expert %s@%d was deleted", label,
                          rows[j].name, rows[j].version);
        else if ((rc = acquire_check(s, &rows[j], err)) != RC_OK)
            rc = store__err_named(err, rc, err, label);
        else
            rc = wait_add_item(w, want, &rows[j], err);
    }
    return rc;
}

/* Resolve want i for tenant into items: its own row, and a router's experts. */
static rc_t acquire_resolve(store_t *s, int64_t tenant, struct store_wait *w, int i,
                            core_err_t *err)
{
    store_want_t *want = &w->wants[i];
    rc_t rc = store__resolve(s, tenant, want->spec, &want->row, err);
    if (rc == RC_OK)
        rc = acquire_check(s, &want->row, err);
    if (rc == RC_OK)
        rc = wait_add_item(w, i, &want->row, err);
    if (rc == RC_OK && store_kind_is_router(want->row.kind))
        rc = acquire_experts(s, w, i, &want->row, err);
    return rc;
}

/* Take the resident reference of one item if there is one. Entries are keyed by row id,
 * unique across tenants: two tenants' adapters of one name never share an entry, while a
 * published adapter is one entry for all its users. OUT: *pending. */
static rc_t acquire_item(store_t *s, wait_item_t *it, bool *pending, core_err_t *err)
{
    usage_count(s, it->id);
    store_entry_t *e = store__cache_find(s, it->id);
    if (e && e->state == SE_BROKEN)
        return core_err(err, e->fail_rc, "%s", e->fail_msg);
    if (e && e->state == SE_READY) {
        s->stats.n_hits++;
        item_take(e, it);
        e->last_use = ++s->clock;
        return RC_OK;
    }
    s->stats.n_misses++;
    if (!e && !cache_add(s, &it->row))
        return core_err(err, RC_NOMEM, "store: out of memory");
    *pending = true;
    return RC_OK;
}

/* Resolve every want and take what is resident. OUT: w->items, w->n_pending. */
static rc_t acquire_all(store_t *s, int64_t tenant, struct store_wait *w, core_err_t *err)
{
    rc_t rc = RC_OK;
    for (int i = 0; i < w->n && rc == RC_OK; i++)
        rc = acquire_resolve(s, tenant, w, i, err);
    for (int k = 0; k < w->n_items && rc == RC_OK; k++) {
        bool pending = false;
        rc = acquire_item(s, &w->items[k], &pending, err);
        w->n_pending += pending;
    }
    return rc;
}

rc_t store_acquire(store_t *s, int64_t tenant, store_want_t *wants, int n, store_ready_fn cb,
                   void *user, store_wait_t **wait, core_err_t *err)
{
    *wait = NULL;
    /* The wait for room is measured from now, not from the last tick. */
    s->now_ms = store__now_ms();
    for (int i = 0; i < n; i++) {
        wants[i].lora = NULL;
        wants[i].router = NULL;
    }
    if (!s->p.base) /* opened for the tenant and key commands: nothing can load */
        return core_err(err, RC_INVALID, "no base model loaded: adapters cannot be loaded");
    struct store_wait *w = calloc(1, sizeof *w);
    if (!w)
        return core_err(err, RC_NOMEM, "store: out of memory");
    *w = (struct store_wait){.s = s, .wants = wants, .n = n, .cb = cb, .user = user,
                             .since_ms = s->now_ms, .in_call = true};
    rc_t rc = acquire_all(s, tenant, w, err);
    if (rc == RC_OK && w->n_pending == 0)
        rc = wait_complete(s, w, err); /* all resident: no wait, no callback */
    if (rc != RC_OK || w->n_pending == 0) {
        if (rc != RC_OK)
            wait_release(w);
        wait_free(w);
        return rc;
    }
    w->next = s->waits;
    s->waits = w;
    cache_pump(s); /* with a synchronous executor the loads finish right here */
    if (!w->finished) {
        w->in_call = false;
        *wait = w;
        return RC_OK;
    }
    rc = w->rc;
    if (rc != RC_OK)
        *err = w->err;
    wait_free(w);
    return rc;
}

void store_wait_cancel(store_t *s, store_wait_t *w)
{
    if (!w)
        return;
    wait_unlink(s, w);
    wait_release(w);
    wait_free(w);
}

/* ---- housekeeping ---- */

/* Waits stuck behind a full cache longer than load_wait_ms fail with RC_UNAVAILABLE. */
static void cache_expire(store_t *s)
{
    bool any = false;
    for (struct store_wait *w = s->waits; w; w = w->next) {
        bool stuck = false;
        for (int i = 0; i < w->n_items && !stuck; i++) {
            const wait_item_t *it = &w->items[i];
            store_entry_t *e = item_held(it) ? NULL : store__cache_find(s, it->id);
            stuck = e && e->state == SE_QUEUED && s->now_ms - e->queued_ms >= s->p.load_wait_ms;
        }
        w->marked = stuck;
        any |= stuck;
    }
    if (!any)
        return;
    core_err_t err;
    core_err(&err, RC_BUSY,
             "the adapter cache (%llu bytes) is full of adapters in use; retry shortly",
             (unsigned long long)s->p.cache_budget_bytes);
    cache_finish_marked(s, RC_BUSY, &err);
}

/* Queued entries nobody waits for any more (and not pinned) are dropped. */
static void cache_drop_orphans(store_t *s)
{
    store_entry_t *e = s->entries, *next;
    for (; e; e = next) {
        next = e->next;
        if (e->state != SE_QUEUED || e->pinned)
            continue;
        bool wanted = false;
        for (struct store_wait *w = s->waits; w && !wanted; w = w->next)
            wanted = wait_wants(w, e->id);
        if (!wanted)
            cache_remove(s, e);
    }
}

void store__cache_tick(store_t *s)
{
    cache_expire(s);
    cache_drop_orphans(s);
    cache_pump(s);
}

void store__cache_forget(store_t *s, const int64_t *ids, size_t n)
{
    core_err_t err;
    for (size_t i = 0; i < n; i++) {
        store_entry_t *e = store__cache_find(s, ids[i]);
        if (!e)
            continue;
        if (e->state == SE_LOADING) { /* its waits still get it; then it goes */
            e->row.state = STORE_STATE_DELETED;
            e->pinned = false;
            continue;
        }
        core_err(&err, RC_NOT_FOUND, "adapter %s@%d was deleted", e->row.name, e->row.version);
        cache_remove(s, e); /* holders keep their own references */
        cache_fail_waits(s, ids[i], RC_NOT_FOUND, &err);
    }
}

rc_t store__cache_prefetch(store_t *s, const store_adapter_t *row, core_err_t *err)
{
    if (!s->p.base) /* no base model: a pin is only recorded, the daemon loads it */
        return RC_OK;
    store_entry_t *e = store__cache_find(s, row->id);
    if (!e && !(e = cache_add(s, row)))
        return core_err(err, RC_NOMEM, "store: out of memory");
    e->pinned = true;
    cache_pump(s);
    return RC_OK;
}

void store__cache_set_pinned(store_t *s, int64_t id, bool pinned)
{
    store_entry_t *e = store__cache_find(s, id);
    if (e)
        e->pinned = pinned;
}

void store_runtime(store_t *s, int64_t id, store_runtime_t *rt)
{
    store_entry_t *e = store__cache_find(s, id);
    memset(rt, 0, sizeof *rt);
    if (!e)
        return;
    rt->resident = e->state == SE_READY;
    rt->loading = e->state == SE_LOADING || e->state == SE_QUEUED;
    rt->broken = e->state == SE_BROKEN;
    if (rt->broken)
        snprintf(rt->reason, sizeof rt->reason, "%.255s", e->fail_msg);
    if (rt->resident)
        rt->n_users = entry_refs(e) - 1;
}

void store_stats(store_t *s, store_stats_t *out)
{
    *out = s->stats;
    out->budget_bytes = s->p.cache_budget_bytes;
    out->resident_bytes = 0;
    out->pinned_bytes = store__cache_pinned_bytes(s);
    out->n_resident = out->n_loading = out->n_waiting_room = 0;
    for (store_entry_t *e = s->entries; e; e = e->next) {
        out->resident_bytes += e->state == SE_READY ? cache_entry_bytes(e) : 0;
        out->n_resident += e->state == SE_READY;
        out->n_loading += e->state == SE_LOADING;
        out->n_waiting_room += e->state == SE_QUEUED;
    }
}

void store__cache_close(store_t *s)
{
    while (s->waits) {
        struct store_wait *w = s->waits;
        s->waits = w->next;
        wait_release(w);
        wait_free(w);
    }
    while (s->entries) {
        store_entry_t *e = s->entries;
        s->entries = e->next;
        if (e->lora)
            core_lora_release(e->lora);
        store__rparts_release(e->parts);
        free(e);
    }
}
