/* store.c - opening and closing the store, the data-dir lock, the task plumbing,
 * housekeeping (store_tick) and names. See store.h for the contract and store_int.h for
 * how the files split the work.
 *
 * Open order: lock DATA_DIR/adapterd.lock (flock, exclusive, non-blocking: a second
 * daemon or an `adapterd import` against a running daemon is refused, so the index never
 * has two writing processes), blob folders, index (migrations), tenants and keys (tenant.c),
 * empty tmp/, copy rows of schema 1 into blobs, collect unreferenced blobs, then start
 * loading pinned adapters (every tenant's: the cache is shared).
 * Without a base model (the tenant and key commands) nothing is loaded, and the rows of
 * schema 1 wait for a daemon: validating them needs the base.
 * Threads: the store's thread. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "store/store_int.h"

#define STORE_FLUSH_MS 5000

store_params_t store_default_params(void)
{
    return (store_params_t){
        .cache_budget_bytes = 2ull << 30,
        .max_adapter_bytes = 1ull << 30,
        .load_wait_ms = 30000,
        .gc_interval_ms = 600000,
    };
}

bool store_name_valid(const char *name)
{
    if (!name)
        return false;
    size_t n = strlen(name);
    if (n < 1 || n > STORE_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-')))
            return false;
    }
    return true;
}

uint64_t store__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- tasks ---- */

void store__task_submit(store_t *s, store_task_t *t)
{
    s->n_tasks++;
    if (s->p.exec.submit) {
        s->p.exec.submit(s->p.exec.ctx, t);
        return;
    }
    t->work(t);
    t->done(t);
}

void store__task_end(store_t *s)
{
    s->n_tasks--;
}

int store_n_tasks(const store_t *s)
{
    return s->n_tasks;
}

/* ---- open / close ---- */

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

static rc_t store_lock(store_t *s, core_err_t *err)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/adapterd.lock", s->data_dir);
    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lock_fd < 0)
        return core_err(err, RC_IO, "open '%s': %s", path, strerror(errno));
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) == 0)
        return RC_OK;
    if (errno == EWOULDBLOCK)
        return core_err(err, RC_BUSY,
                        "data dir '%s' is in use by another adapterd process (%s is locked): "
                        "stop it, or while it runs add adapters with POST /v1/adapters",
                        s->data_dir, path);
    return core_err(err, RC_IO, "lock '%s': %s", path, strerror(errno));
}

/* Start-up cleanup and repair, before anything else writes. */
static rc_t store_recover(store_t *s, core_err_t *err)
{
    int n_tmp = 0, n_gc = 0;
    uint64_t gc_bytes = 0;
    rc_t rc = store__blob_clean_tmp(s->data_dir, &n_tmp, err);
    if (rc == RC_OK && n_tmp)
        fprintf(stderr, "adapterd: store: removed %d unfinished upload file(s)\n", n_tmp);
    pthread_mutex_lock(&s->wmu);
    if (rc == RC_OK && s->p.base)
        rc = store__w_legacy_fixup(s, err);
    if (rc == RC_OK)
        rc = store__w_gc(s, &n_gc, &gc_bytes, err);
    pthread_mutex_unlock(&s->wmu);
    if (rc == RC_OK && n_gc)
        fprintf(stderr, "adapterd: store: removed %d unreferenced blob(s), %llu bytes\n", n_gc,
                (unsigned long long)gc_bytes);
    return rc;
}

/* Pinned adapters become resident at start-up (loads run once the executor does). */
static void store_load_pinned(store_t *s)
{
    store_adapter_t *rows = NULL;
    size_t n = 0;
    core_err_t err = {{0}};
    if (store__pinned_rows(s, &rows, &n, &err) != RC_OK) {
        fprintf(stderr, "adapterd: store: pinned adapters: %s\n", err.msg);
        return;
    }
    uint64_t pinned = 0;
    for (size_t i = 0; i < n; i++) {
        /* A budget lowered since the pins were made: the pins that no longer fit are not
         * loaded (they would block every other load), and say so. */
        if (pinned + (uint64_t)rows[i].mem_bytes > s->p.cache_budget_bytes) {
            fprintf(stderr, "adapterd: store: pinned %s@%d not loaded: pinned adapters exceed "
                            "--adapter-cache-bytes %llu\n", rows[i].name, rows[i].version,
                    (unsigned long long)s->p.cache_budget_bytes);
            continue;
        }
        pinned += (uint64_t)rows[i].mem_bytes;
        if (store__cache_prefetch(s, &rows[i], &err) != RC_OK)
            fprintf(stderr, "adapterd: store: pin %s@%d: %s\n", rows[i].name, rows[i].version,
                    err.msg);
    }
    free(rows);
}

static rc_t store_open_steps(store_t *s, core_err_t *err)
{
    rc_t rc = store_mkdirs(s->data_dir, err);
    if (rc == RC_OK && s->p.lock)
        rc = store_lock(s, err);
    if (rc == RC_OK)
        rc = store__blob_dirs(s->data_dir, err);
    if (rc == RC_OK)
        rc = store__index_open(s, err);
    if (rc == RC_OK)
        rc = store__tenant_open(s, err);
    if (rc == RC_OK)
        rc = store_recover(s, err);
    return rc;
}

rc_t store_open(const store_params_t *p, store_t **out, core_err_t *err)
{
    *out = NULL;
    if (!p || !p->data_dir)
        return core_err(err, RC_INVALID, "store_open: a data dir is required");
    if (strlen(p->data_dir) >= PATH_MAX - 128)
        return core_err(err, RC_INVALID, "data dir '%.80s...': path too long", p->data_dir);
    store_t *s = calloc(1, sizeof *s);
    if (!s)
        return core_err(err, RC_NOMEM, "store: out of memory");
    s->p = *p;
    snprintf(s->data_dir, sizeof s->data_dir, "%s", p->data_dir);
    s->p.data_dir = s->data_dir;
    s->lock_fd = -1;
    pthread_mutex_init(&s->wmu, NULL);
    s->now_ms = store__now_ms();
    s->next_flush_ms = s->now_ms + STORE_FLUSH_MS;
    s->next_gc_ms = s->now_ms + p->gc_interval_ms;
    rc_t rc = store_open_steps(s, err);
    if (rc != RC_OK) {
        store_close(s);
        return rc;
    }
    if (s->p.base)
        store_load_pinned(s);
    *out = s;
    return RC_OK;
}

void store_close(store_t *s)
{
    if (!s)
        return;
    store__cache_close(s);
    /* Usage counted since the last flush is written now, synchronously. */
    if (s->n_usage && s->wdb) {
        core_err_t err;
        pthread_mutex_lock(&s->wmu);
        store__w_usage(s, s->usage, s->n_usage, &err);
        pthread_mutex_unlock(&s->wmu);
    }
    free(s->usage);
    if (s->tn) /* NULL when open failed before the tenants were read */
        store__tenant_close(s);
    store__index_close(s);
    if (s->lock_fd >= 0)
        close(s->lock_fd); /* releases the flock */
    pthread_mutex_destroy(&s->wmu);
    free(s);
}

/* ---- housekeeping ---- */

void store_tick(store_t *s, uint64_t now_ms)
{
    (void)now_ms; /* the store keeps its own monotonic clock, in ms like uv_now */
    s->now_ms = store__now_ms();
    store__cache_tick(s);
    if (s->now_ms >= s->next_flush_ms) {
        s->next_flush_ms = s->now_ms + STORE_FLUSH_MS;
        store__flush_usage(s);
    }
    if (s->p.gc_interval_ms && s->now_ms >= s->next_gc_ms) {
        s->next_gc_ms = s->now_ms + s->p.gc_interval_ms;
        store__start_gc(s);
    }
}
