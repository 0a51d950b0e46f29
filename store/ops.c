/* ops.c - the store's changes and the load path: uploads, imports, delete, aliases, pins,
 * broken marks, usage flushes, blob GC (each a task: work() on the pool under wmu where it
 * writes, done() on the store's thread), and the verified load of one version.
 *
 * An adapter is two blobs: adapter_config.json and adapter_model.safetensors, each named
 * by its sha256. Install order for a new version (the crash-safety argument): both temp
 * files fsync'd, validated against the base, renamed into blobs/ and the folder fsync'd,
 * then the row inserted and committed (synchronous=FULL) - all under wmu, so GC can never
 * see the blobs without their row. The caller hears of success only after COMMIT.
 *
 * Tenants: every change names the tenant it acts for and reaches only that tenant's own
 * names. A new version is checked against the tenant's max_stored_bytes inside the insert
 * transaction, before the blobs move (a refusal leaves only temp files, which the task
 * removes); the limit is read on the loop thread when the task is made.
 *
 * Threads: public functions on the store's thread; *_work functions on a pool thread. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/safetensors.h"
#include "core/sha256.h"
#include "store/store_int.h"

/* ---- reading, validating and loading ---- */

/* Whole file into a malloc'd buffer (NUL-terminated), at most max bytes. */
static rc_t ops_read_file(const char *path, uint64_t max, uint8_t **out, size_t *len,
                          core_err_t *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    *out = NULL;
    if (fd < 0)
        return core_err(err, errno == ENOENT ? RC_NOT_FOUND : RC_IO, "%s: %s", path,
                        strerror(errno));
    rc_t rc = RC_OK;
    uint8_t *buf = NULL;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        rc = core_err(err, RC_IO, "%s: not a regular file", path);
        goto out;
    }
    if ((uint64_t)sb.st_size > max) {
        rc = core_err(err, RC_LIMIT, "%s: %lld bytes, more than the limit of %llu", path,
                      (long long)sb.st_size, (unsigned long long)max);
        goto out;
    }
    size_t n = (size_t)sb.st_size, got = 0;
    if (!(buf = malloc(n + 1))) {
        rc = core_err(err, RC_NOMEM, "%s: out of memory", path);
        goto out;
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = core_err(err, RC_IO, "%s: read: %s", path, r ? strerror(errno) : "short file");
            goto out;
        }
        got += (size_t)r;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

rc_t store__read_file(const char *path, uint64_t max, uint8_t **out, size_t *len,
                      core_err_t *err)
{
    return ops_read_file(path, max, out, len, err);
}

static void ops_probe_fill(const core_lora_t *l, uint64_t size, store_adapter_t *p)
{
    memset(p, 0, sizeof *p);
    snprintf(p->kind, sizeof p->kind, "lora");
    p->rank = l->rank;
    p->alpha = l->alpha;
    core_lora_targets_str(l, p->targets, sizeof p->targets);
    p->size = (int64_t)size;
    p->mem_bytes = (int64_t)l->n_bytes;
}

/* The f32 bytes the adapter's tensors declare (what the engine layout will hold): an
 * adapter that could never fit the cache is refused from its header, before any weight
 * is converted (RELIABILITY F14). */
static rc_t ops_declared_fits(store_t *s, const core_st_t *st, core_err_t *err)
{
    uint64_t bytes = 0;
    for (size_t i = 0; i < core_st_count(st); i++) {
        uint64_t n = (uint64_t)core_st_at(st, i)->n_elems;
        if (n > (UINT64_MAX - bytes) / sizeof(float)) {
            bytes = UINT64_MAX;
            break;
        }
        bytes += n * sizeof(float);
    }
    if (bytes <= s->p.cache_budget_bytes)
        return RC_OK;
    return core_err_r(err, RC_LIMIT, "exceeds_cache",
                      "the adapter declares %llu bytes of weights in memory, more than the whole "
                      "adapter cache (--adapter-cache-bytes %llu)",
                      (unsigned long long)bytes, (unsigned long long)s->p.cache_budget_bytes);
}

/* Parse config text + weights image and validate them against the base. */
static rc_t ops_parse(store_t *s, const uint8_t *cfg, size_t cfg_len, const uint8_t *wts,
                      size_t wts_len, core_lora_t **out, core_err_t *err)
{
    core_st_t *st = NULL;
    if (memchr(cfg, 0, cfg_len))
        return core_err(err, RC_FORMAT, "adapter_config.json contains a NUL byte");
    /* capped by the base: header bloat is refused before a tensor table exists (F8) */
    core_st_params_t sp = core_lora_st_params(&s->p.base->cfg);
    rc_t rc = core_st_parse_ex(wts, wts_len, "adapter_model.safetensors", &sp, &st, err);
    if (rc == RC_OK)
        rc = ops_declared_fits(s, st, err);
    if (rc == RC_OK)
        rc = core_lora_from_parts((const char *)cfg, st, &s->p.base->cfg, out, err);
    core_st_free(st); /* the weights were copied to f32 */
    return rc;
}

rc_t store__validate(store_t *s, const char *config_path, const char *weights_path,
                     core_lora_t **lora, store_adapter_t *probe, core_err_t *err)
{
    uint8_t *cfg = NULL, *wts = NULL;
    size_t cfg_len = 0, wts_len = 0;
    core_lora_t *l = NULL;
    rc_t rc = ops_read_file(config_path, STORE_CONFIG_MAX, &cfg, &cfg_len, err);
    if (rc == RC_OK)
        rc = ops_read_file(weights_path, s->p.max_adapter_bytes, &wts, &wts_len, err);
    if (rc == RC_OK)
        rc = ops_parse(s, cfg, cfg_len, wts, wts_len, &l, err);
    if (rc == RC_OK)
        ops_probe_fill(l, wts_len, probe);
    free(cfg);
    free(wts);
    if (rc == RC_OK && lora)
        *lora = l;
    else if (l)
        core_lora_release(l);
    return rc;
}

/* The weights hash runs on a second thread while this one parses and converts: a load
 * then takes about as long as the slower of the two, not their sum. */
typedef struct {
    const uint8_t *buf;
    size_t len;
    char hex[65];
} ops_hash_t;

static void *ops_hash_main(void *arg)
{
    ops_hash_t *h = arg;
    core_sha256_t c;
    uint8_t d[32];
    core_sha256_init(&c);
    core_sha256_update(&c, h->buf, h->len);
    core_sha256_final(&c, d);
    core_sha256_hex(d, h->hex);
    return NULL;
}

static void ops_hash_now(const uint8_t *buf, size_t len, char hex[65])
{
    ops_hash_t h = {.buf = buf, .len = len};
    ops_hash_main(&h);
    memcpy(hex, h.hex, 65);
}

static rc_t ops_verify_parse(store_t *s, const store_adapter_t *row, const uint8_t *cfg,
                             size_t cfg_len, const uint8_t *wts, size_t wts_len,
                             core_lora_t **out, core_err_t *err)
{
    char chex[65];
    ops_hash_t h = {.buf = wts, .len = wts_len};
    pthread_t th;
    bool threaded = pthread_create(&th, NULL, ops_hash_main, &h) == 0;
    if (!threaded)
        ops_hash_main(&h);
    ops_hash_now(cfg, cfg_len, chex);
    core_lora_t *l = NULL;
    rc_t rc = ops_parse(s, cfg, cfg_len, wts, wts_len, &l, err);
    if (threaded)
        pthread_join(th, NULL);
    if (strcmp(chex, row->config_sha256) != 0 || strcmp(h.hex, row->sha256) != 0) {
        rc = core_err_r(err, RC_MISMATCH, "hash_mismatch",
                        "stored bytes do not match their sha256 (%s %s)",
                      strcmp(h.hex, row->sha256) ? "weights" : "config",
                      strcmp(h.hex, row->sha256) ? h.hex : chex);
    }
    if (rc != RC_OK && l)
        core_lora_release(l);
    else
        *out = l;
    return rc;
}

/* Map a blob read-only (blobs are immutable: written once, replaced only by rename), so
 * the hash and the parser read the page cache directly instead of a copy. */
static rc_t ops_map_blob(const char *path, int64_t size, const uint8_t **out, core_err_t *err)
{
    struct stat sb;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    *out = NULL;
    if (fd < 0)
        return core_err(err, errno == ENOENT ? RC_NOT_FOUND : RC_IO, "%s: %s", path,
                        strerror(errno));
    rc_t rc = RC_OK;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))
        rc = core_err(err, RC_IO, "%s: not a regular file", path);
    else if ((int64_t)sb.st_size != size)
        rc = core_err(err, RC_MISMATCH, "weights blob is %lld bytes, the index says %lld",
                      (long long)sb.st_size, (long long)size);
    else if (size == 0)
        rc = core_err(err, RC_MISMATCH, "weights blob is empty");
    if (rc == RC_OK) {
        void *m = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
        if (m == MAP_FAILED)
            rc = core_err(err, RC_IO, "%s: mmap: %s", path, strerror(errno));
        else
            *out = m;
    }
    close(fd);
    return rc;
}

rc_t store__load_verified(store_t *s, const store_adapter_t *row, core_lora_t **out,
                          core_err_t *err)
{
    char cpath[PATH_MAX + 80], wpath[PATH_MAX + 80];
    uint8_t *cfg = NULL;
    const uint8_t *wts = NULL;
    size_t cfg_len = 0;
    *out = NULL;
    if (!store__blob_path(s->data_dir, row->config_sha256, cpath, sizeof cpath) ||
        !store__blob_path(s->data_dir, row->sha256, wpath, sizeof wpath))
        return core_err(err, RC_FORMAT, "adapter %s@%d has no valid blob names", row->name,
                        row->version);
    rc_t rc = ops_read_file(cpath, STORE_CONFIG_MAX, &cfg, &cfg_len, err);
    if (rc == RC_OK)
        rc = ops_map_blob(wpath, row->size, &wts, err);
    if (rc == RC_OK)
        rc = ops_verify_parse(s, row, cfg, cfg_len, wts, (size_t)row->size, out, err);
    free(cfg);
    if (wts)
        munmap((void *)wts, (size_t)row->size);
    return rc;
}

/* ---- tasks ---- */

typedef enum { OP_INSTALL, OP_DELETE, OP_ALIAS_PUT, OP_ALIAS_DELETE, OP_PIN, OP_BROKEN,
               OP_USAGE, OP_GC, OP_FAIL } ops_kind_t;

struct store_upload {
    store_t *s;
    int64_t tenant;
    char name[STORE_NAME_MAX + 1];
    store_blob_writer_t *w[2]; /* STORE_PART_CONFIG, STORE_PART_WEIGHTS */
};

/* Progress of a blocking import (store_import): bytes copied, then verified. */
typedef struct {
    store_progress_fn fn; /* NULL: nobody asked */
    void *user;
    uint64_t done, total, next;
} ops_prog_t;

#define OPS_PROGRESS_STEP (4u << 20) /* report every 4 MiB copied */
#define OPS_COPY_BUF (1u << 20)

typedef struct {
    store_task_t t;
    store_t *s;
    ops_kind_t kind;
    int64_t tenant;             /* whose names the change acts on */
    int64_t max_bytes;          /* install: the tenant's max_stored_bytes, 0 = unlimited */
    ops_prog_t prog;            /* install from a folder: store_import's progress */
    char a[PATH_MAX];           /* name / spec / alias / folder */
    char b[STORE_SPEC_MAX];     /* target / import name */
    bool flag;                  /* pin: pin; import: fail_if_exists */
    bool from_dir;              /* install: copy a folder first */
    store_upload_t *up;         /* install */
    int64_t id;
    store_usage_t *usage;
    size_t n_usage;
    int64_t *ids;
    size_t n_ids;
    store_adapter_t row;
    rc_t rc;
    core_err_t err;
    store_done_fn cb;
    void *user;
} ops_task_t;

static ops_task_t *ops_new(store_t *s, ops_kind_t kind, store_done_fn cb, void *user);
static void ops_submit(ops_task_t *o);

static rc_t ops_install_blobs(void *ctx, core_err_t *err)
{
    store_upload_t *u = ctx;
    rc_t rc = store__blob_install(u->w[STORE_PART_CONFIG], err);
    if (rc == RC_OK)
        rc = store__blob_install(u->w[STORE_PART_WEIGHTS], err);
    return rc;
}

static void ops_prog_report(ops_prog_t *pg, const char *phase)
{
    if (pg->done > pg->total) /* a file grew since it was measured */
        pg->total = pg->done;
    pg->fn(pg->user, phase, pg->done, pg->total);
}

/* Open src for a copy: a regular file of at most max bytes (as blob.c's copy checks). */
static rc_t ops_src_open(const char *src, uint64_t max, int *fd_out, core_err_t *err)
{
    struct stat st;
    rc_t rc = RC_OK;
    /* O_NONBLOCK so a FIFO under the name cannot hang the open. */
    int fd = open(src, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return core_err(err, errno == ENOENT || errno == ENOTDIR ? RC_NOT_FOUND : RC_IO,
                        "open %s: %s", src, strerror(errno));
    if (fstat(fd, &st) != 0)
        rc = core_err(err, RC_IO, "stat %s: %s", src, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = core_err(err, RC_INVALID, "%s is not a regular file", src);
    else if ((uint64_t)st.st_size > max)
        rc = core_err(err, RC_LIMIT, "%s has %llu bytes, over the limit of %llu", src,
                      (unsigned long long)st.st_size, (unsigned long long)max);
    if (rc != RC_OK)
        close(fd);
    else
        *fd_out = fd;
    return rc;
}

/* store__blob_copy_file with progress reports (blob.c's copy has no hook for them).
 * OUT: *out (a finished writer), hex. */
static rc_t ops_copy_file(store_t *s, const char *src, uint64_t max, store_blob_writer_t **out,
                          char hex[STORE_BLOB_HEX], ops_prog_t *pg, core_err_t *err)
{
    int fd = -1;
    uint8_t *buf = NULL;
    store_blob_writer_t *w = NULL;
    *out = NULL;
    if (!pg->fn)
        return store__blob_copy_file(s->data_dir, src, max, out, hex, NULL, err);
    rc_t rc = ops_src_open(src, max, &fd, err);
    if (rc == RC_OK)
        rc = store__blob_writer_new(s->data_dir, max, &w, err);
    if (rc == RC_OK && !(buf = malloc(OPS_COPY_BUF)))
        rc = core_err(err, RC_NOMEM, "copy buffer");
    while (rc == RC_OK) {
        ssize_t n = read(fd, buf, OPS_COPY_BUF);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n < 0)
                rc = core_err(err, RC_IO, "read %s: %s", src, strerror(errno));
            break;
        }
        rc = store__blob_write(w, buf, (size_t)n, err);
        pg->done += (uint64_t)n;
        if (rc == RC_OK && pg->done >= pg->next) {
            ops_prog_report(pg, "copy");
            pg->next = pg->done + OPS_PROGRESS_STEP;
        }
    }
    if (rc == RC_OK)
        rc = store__blob_finish(w, hex, NULL, err);
    free(buf);
    if (fd >= 0)
        close(fd);
    if (rc != RC_OK)
        store__blob_writer_free(w);
    else
        *out = w;
    return rc;
}

static uint64_t ops_file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode) ? (uint64_t)sb.st_size : 0;
}

/* Copy DIR's two files into the upload's writers (imports). */
static rc_t ops_copy_dir(store_t *s, const char *dir, store_upload_t *u,
                        char chex[STORE_BLOB_HEX], char whex[STORE_BLOB_HEX], ops_prog_t *pg,
                        core_err_t *err)
{
    char path[PATH_MAX + 64], cpath[PATH_MAX + 64];
    struct stat sb;
    snprintf(path, sizeof path, "%s/adapter_model.bin", dir);
    bool has_bin = stat(path, &sb) == 0;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    snprintf(cpath, sizeof cpath, "%s/adapter_config.json", dir);
    if (has_bin && stat(path, &sb) != 0)
        return core_err(err, RC_UNSUPPORTED,
                        "%s: pickle .bin adapters are not supported; convert to safetensors", dir);
    if (pg->fn) {
        pg->total = ops_file_size(path) + ops_file_size(cpath);
        pg->done = 0;
        pg->next = OPS_PROGRESS_STEP;
        ops_prog_report(pg, "copy");
    }
    rc_t rc = ops_copy_file(s, path, s->p.max_adapter_bytes, &u->w[STORE_PART_WEIGHTS], whex, pg,
                            err);
    if (rc == RC_OK)
        rc = ops_copy_file(s, cpath, STORE_CONFIG_MAX, &u->w[STORE_PART_CONFIG], chex, pg, err);
    if (rc == RC_OK && pg->fn)
        ops_prog_report(pg, "copy");
    return rc;
}

/* Validate the finished temp files against the base; imports report "verify" around it
 * (the parse and the f32 conversion are one call: only its start and end are known). */
static rc_t ops_validate(ops_task_t *o, store_adapter_t *probe, core_err_t *err)
{
    store_upload_t *u = o->up;
    ops_prog_t *pg = &o->prog;
    if (pg->fn) {
        pg->done = 0;
        ops_prog_report(pg, "verify");
    }
    rc_t rc = store__validate(o->s, store__blob_tmp_path(u->w[STORE_PART_CONFIG]),
                              store__blob_tmp_path(u->w[STORE_PART_WEIGHTS]), NULL, probe, err);
    if (rc == RC_OK && pg->fn) {
        pg->done = pg->total;
        ops_prog_report(pg, "verify");
    }
    return rc;
}

/* Finish, validate, install and index an upload (or a copied folder). */
static rc_t ops_install(ops_task_t *o, core_err_t *err)
{
    store_t *s = o->s;
    store_upload_t *u = o->up;
    store_adapter_t probe;
    char chex[STORE_BLOB_HEX], whex[STORE_BLOB_HEX];
    rc_t rc = o->from_dir ? ops_copy_dir(s, o->a, u, chex, whex, &o->prog, err) : RC_OK;
    if (rc == RC_OK && !u->w[STORE_PART_CONFIG])
        rc = core_err(err, RC_INVALID, "the adapter_config.json part (`config`) is missing");
    if (rc == RC_OK && !u->w[STORE_PART_WEIGHTS])
        rc = core_err(err, RC_INVALID, "the adapter_model.safetensors part (`weights`) is missing");
    if (rc == RC_OK && !o->from_dir && (rc = store__blob_finish(u->w[0], chex, NULL, err)) == RC_OK)
        rc = store__blob_finish(u->w[1], whex, NULL, err);
    if (rc == RC_OK)
        rc = ops_validate(o, &probe, err);
    if (rc == RC_OK && (uint64_t)probe.mem_bytes > s->p.cache_budget_bytes)
        rc = core_err_r(err, RC_LIMIT, "exceeds_cache",
                      "the adapter needs %lld bytes in memory, more than the whole adapter "
                      "cache (--adapter-cache-bytes %llu)",
                      (long long)probe.mem_bytes, (unsigned long long)s->p.cache_budget_bytes);
    if (rc != RC_OK)
        return rc;
    memcpy(probe.config_sha256, chex, sizeof chex);
    memcpy(probe.sha256, whex, sizeof whex);
    store_insert_t in = {.tenant = u->tenant, .max_bytes = o->max_bytes, .name = u->name,
                         .probe = &probe, .reuse_same = o->from_dir, .fail_if_exists = o->flag};
    pthread_mutex_lock(&s->wmu);
    rc = store__w_insert(s, &in, ops_install_blobs, u, &o->row, err);
    pthread_mutex_unlock(&s->wmu);
    return rc;
}

static void ops_work(store_task_t *t)
{
    ops_task_t *o = (ops_task_t *)t;
    store_t *s = o->s;
    int n = 0;
    uint64_t bytes = 0;
    if (o->kind == OP_INSTALL) {
        o->rc = ops_install(o, &o->err);
        return;
    }
    if (o->kind == OP_FAIL)
        return;
    pthread_mutex_lock(&s->wmu);
    switch (o->kind) {
    case OP_DELETE:
        o->rc = store__w_delete(s, o->tenant, o->a, &o->row, &o->ids, &o->n_ids, &o->err);
        break;
    case OP_ALIAS_PUT:
        o->rc = store__w_alias_put(s, o->tenant, o->a, o->b, &o->row, &o->err);
        break;
    case OP_ALIAS_DELETE: o->rc = store__w_alias_delete(s, o->tenant, o->a, &o->err); break;
    case OP_PIN: o->rc = store__w_pin(s, o->id, o->flag, &o->err); break;
    case OP_BROKEN: o->rc = store__w_mark_broken(s, o->id, o->a, &o->err); break;
    case OP_USAGE: o->rc = store__w_usage(s, o->usage, o->n_usage, &o->err); break;
    case OP_GC:
        o->rc = store__w_gc(s, &n, &bytes, &o->err);
        if (o->rc == RC_OK && n)
            fprintf(stderr, "adapterd: store: removed %d unreferenced blobs (%llu bytes)\n", n,
                    (unsigned long long)bytes);
        break;
    default: break;
    }
    pthread_mutex_unlock(&s->wmu);
}

/* After the change committed: the cache follows the index. */
static void ops_apply(ops_task_t *o)
{
    store_t *s = o->s;
    core_err_t err;
    if (o->kind == OP_DELETE)
        store__cache_forget(s, o->ids, o->n_ids);
    if (o->kind == OP_PIN) {
        store__cache_set_pinned(s, o->row.id, o->flag);
        o->row.pinned = o->flag;
        if (o->flag && store__cache_prefetch(s, &o->row, &err) != RC_OK)
            fprintf(stderr, "adapterd: store: pin %s@%d: %s\n", o->row.name, o->row.version,
                    err.msg);
    }
    if (o->kind == OP_GC)
        s->gc_running = false;
}

static void ops_done(store_task_t *t)
{
    ops_task_t *o = (ops_task_t *)t;
    store_t *s = o->s;
    if (o->rc == RC_OK)
        ops_apply(o);
    else if (o->kind == OP_GC)
        s->gc_running = false;
    else if (o->kind == OP_PIN && o->flag && !o->row.pinned)
        store__cache_set_pinned(s, o->id, false); /* store_pin counted it: take it back */
    if (o->rc != RC_OK && !o->cb && o->kind != OP_FAIL)
        fprintf(stderr, "adapterd: store: background change failed: %s\n", o->err.msg);
    if (store__blob_poisoned())
        s->writes_failed = true;
    if (o->cb)
        o->cb(o->user, o->rc, o->rc == RC_OK ? &o->row : NULL, &o->err);
    store_upload_free(o->up);
    free(o->ids);
    free(o->usage);
    free(o);
    store__task_end(s);
}

static ops_task_t *ops_new(store_t *s, ops_kind_t kind, store_done_fn cb, void *user)
{
    ops_task_t *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    o->t.work = ops_work;
    o->t.done = ops_done;
    o->s = s;
    o->kind = kind;
    o->cb = cb;
    o->user = user;
    return o;
}

static void ops_submit(ops_task_t *o)
{
    store__task_submit(o->s, &o->t);
}

/* A change refused before it starts still answers through a task, so cb never runs
 * inside the call. When even that allocation fails, cb runs at once (out of memory). */
static void ops_fail(store_t *s, rc_t rc, const core_err_t *err, store_done_fn cb, void *user)
{
    ops_task_t *o = ops_new(s, OP_FAIL, cb, user);
    if (!o) {
        cb(user, RC_NOMEM, NULL, err);
        return;
    }
    o->rc = rc;
    o->err = *err;
    ops_submit(o);
}

static bool ops_writable(store_t *s, core_err_t *err)
{
    if (!s->writes_failed && !store__blob_poisoned())
        return true;
    s->writes_failed = true;
    core_err(err, RC_UNAVAILABLE,
             "the store stopped accepting changes after an fsync failure; restart the daemon");
    return false;
}

/* ---- uploads ---- */

rc_t store_upload_new(store_t *s, int64_t tenant, const char *name, store_upload_t **out,
                      core_err_t *err)
{
    *out = NULL;
    if (!s->p.base) /* opened for the tenant and key commands */
        return core_err(err, RC_INVALID, "no base model loaded: adapters cannot be added");
    if (!store_name_valid(name))
        return core_err(err, RC_INVALID,
                        "invalid adapter name '%.80s': use 1-%d characters of A-Z a-z 0-9 . _ -, "
                        "starting with a letter or digit", name ? name : "", STORE_NAME_MAX);
    if (!ops_writable(s, err))
        return RC_UNAVAILABLE;
    store_upload_t *u = calloc(1, sizeof *u);
    if (!u)
        return core_err(err, RC_NOMEM, "store: out of memory");
    u->s = s;
    u->tenant = tenant;
    snprintf(u->name, sizeof u->name, "%s", name);
    *out = u;
    return RC_OK;
}

rc_t store_upload_write(store_upload_t *u, store_part_t part, const void *data, size_t len,
                        core_err_t *err)
{
    store_t *s = u->s;
    if (part != STORE_PART_CONFIG && part != STORE_PART_WEIGHTS)
        return core_err(err, RC_INVALID, "unknown upload part");
    if (!u->w[part]) {
        uint64_t max = part == STORE_PART_CONFIG ? STORE_CONFIG_MAX : s->p.max_adapter_bytes;
        rc_t rc = store__blob_writer_new(s->data_dir, max, &u->w[part], err);
        if (rc != RC_OK)
            return rc;
    }
    rc_t rc = store__blob_write(u->w[part], data, len, err);
    if (rc == RC_LIMIT)
        core_err(err, RC_LIMIT, "the %s part is larger than %llu bytes",
                 part == STORE_PART_CONFIG ? "config" : "weights",
                 (unsigned long long)(part == STORE_PART_CONFIG ? STORE_CONFIG_MAX
                                                                : s->p.max_adapter_bytes));
    return rc;
}

void store_upload_commit(store_upload_t *u, store_done_fn cb, void *user)
{
    store_t *s = u->s;
    ops_task_t *o = ops_new(s, OP_INSTALL, cb, user);
    core_err_t err;
    if (!o) {
        store_upload_free(u);
        core_err(&err, RC_NOMEM, "store: out of memory");
        cb(user, RC_NOMEM, NULL, &err);
        return;
    }
    o->up = u;
    o->tenant = u->tenant;
    o->max_bytes = store__tenant_max_bytes(s, u->tenant); /* the loop thread's copy */
    ops_submit(o);
}

void store_upload_free(store_upload_t *u)
{
    if (!u)
        return;
    store__blob_writer_free(u->w[0]);
    store__blob_writer_free(u->w[1]);
    free(u);
}

/* ---- imports ---- */

static rc_t ops_import_task(store_t *s, int64_t tenant, const char *dir, const char *name,
                            const store_import_opts_t *opt, store_done_fn cb, void *user,
                            ops_task_t **out, core_err_t *err)
{
    store_upload_t *u = NULL;
    *out = NULL;
    rc_t rc = store_upload_new(s, tenant, name, &u, err);
    if (rc != RC_OK)
        return rc;
    if (strlen(dir) >= PATH_MAX) {
        store_upload_free(u);
        return core_err(err, RC_INVALID, "adapter folder path is too long");
    }
    ops_task_t *o = ops_new(s, OP_INSTALL, cb, user);
    if (!o) {
        store_upload_free(u);
        return core_err(err, RC_NOMEM, "store: out of memory");
    }
    o->up = u;
    o->tenant = tenant;
    o->max_bytes = store__tenant_max_bytes(s, tenant);
    o->from_dir = true;
    o->flag = opt && opt->fail_if_exists;
    snprintf(o->a, sizeof o->a, "%s", dir);
    *out = o;
    return RC_OK;
}

void store_import_async(store_t *s, int64_t tenant, const char *dir, const char *name,
                        const store_import_opts_t *opt, store_done_fn cb, void *user)
{
    core_err_t err = {{0}};
    ops_task_t *o = NULL;
    rc_t rc = ops_import_task(s, tenant, dir, name, opt, cb, user, &o, &err);
    if (rc != RC_OK) {
        ops_fail(s, rc, &err, cb, user);
        return;
    }
    ops_submit(o);
}

/* Blocking import: the same task, run on this thread. */
rc_t store_import(store_t *s, int64_t tenant, const char *dir, const char *name,
                  store_progress_fn progress, void *progress_user, store_adapter_t *row,
                  core_err_t *err)
{
    ops_task_t *o = NULL;
    rc_t rc = ops_import_task(s, tenant, dir, name, NULL, NULL, NULL, &o, err);
    if (rc != RC_OK)
        return rc;
    o->prog.fn = progress;
    o->prog.user = progress_user;
    ops_work(&o->t);
    rc = o->rc;
    if (rc != RC_OK && err)
        *err = o->err;
    if (rc == RC_OK && row)
        *row = o->row;
    store_upload_free(o->up);
    free(o);
    return rc;
}

static bool ops_is_adapter_dir(const char *dir, const char *entry)
{
    char path[PATH_MAX];
    struct stat sb;
    if ((size_t)snprintf(path, sizeof path, "%s/%s/adapter_config.json", dir, entry) >=
        sizeof path)
        return false;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* One sub-folder of store_import_dir: true when imported. Pass 0 takes adapters, pass 1
 * routers (whose experts may be adapters of pass 0). */
static bool ops_import_entry(store_t *s, int64_t tenant, const char *dir, const char *e,
                             int pass)
{
    char sub[PATH_MAX];
    core_err_t ierr = {{0}};
    bool router = store__is_router_dir(dir, e);
    if (e[0] == '.' || router != (pass == 1) || (!router && !ops_is_adapter_dir(dir, e)))
        return false; /* not a folder of this pass */
    snprintf(sub, sizeof sub, "%s/%s", dir, e);
    if (!store_name_valid(e)) {
        fprintf(stderr, "adapterd: store: skipping '%s': folder name is not a valid "
                        "adapter name\n", sub);
        return false;
    }
    rc_t rc = router ? store_router_import(s, tenant, sub, e, NULL, 0, NULL, &ierr)
                     : store_import(s, tenant, sub, e, NULL, NULL, NULL, &ierr);
    if (rc != RC_OK)
        fprintf(stderr, "adapterd: store: skipping '%s': %s\n", sub, ierr.msg);
    return rc == RC_OK;
}

rc_t store_import_dir(store_t *s, int64_t tenant, const char *dir, int *n_imported,
                      core_err_t *err)
{
    struct dirent **ents = NULL;
    int n_ok = 0;
    if (n_imported)
        *n_imported = 0;
    if (!s->p.base)
        return core_err(err, RC_INVALID, "no base model loaded: adapters cannot be added");
    int n = scandir(dir, &ents, NULL, alphasort); /* sorted: logs read the same every run */
    if (n < 0)
        return core_err(err, RC_IO, "adapters dir '%s': %s", dir, strerror(errno));
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++)
            n_ok += ops_import_entry(s, tenant, dir, ents[i]->d_name, pass);
    for (int i = 0; i < n; i++)
        free(ents[i]);
    free(ents);
    if (n_imported)
        *n_imported = n_ok;
    return RC_OK;
}

/* ---- delete, aliases, pins ---- */

static void ops_simple(store_t *s, int64_t tenant, ops_kind_t kind, const char *a,
                       const char *b, store_done_fn cb, void *user)
{
    core_err_t err;
    if (!ops_writable(s, &err)) {
        ops_fail(s, RC_UNAVAILABLE, &err, cb, user);
        return;
    }
    ops_task_t *o = ops_new(s, kind, cb, user);
    if (!o) {
        core_err(&err, RC_NOMEM, "store: out of memory");
        cb(user, RC_NOMEM, NULL, &err);
        return;
    }
    o->tenant = tenant;
    snprintf(o->a, sizeof o->a, "%s", a ? a : "");
    snprintf(o->b, sizeof o->b, "%s", b ? b : "");
    ops_submit(o);
}

void store_delete(store_t *s, int64_t tenant, const char *spec, store_done_fn cb, void *user)
{
    ops_simple(s, tenant, OP_DELETE, spec, NULL, cb, user);
}

void store_alias_put(store_t *s, int64_t tenant, const char *alias, const char *target,
                     store_done_fn cb, void *user)
{
    core_err_t err;
    if (!target || strlen(target) >= STORE_SPEC_MAX) {
        core_err(&err, RC_NOT_FOUND, "adapter '%.80s' not found", target ? target : "");
        ops_fail(s, RC_NOT_FOUND, &err, cb, user);
        return;
    }
    ops_simple(s, tenant, OP_ALIAS_PUT, alias, target, cb, user);
}

void store_alias_delete(store_t *s, int64_t tenant, const char *alias, store_done_fn cb,
                        void *user)
{
    ops_simple(s, tenant, OP_ALIAS_DELETE, alias, NULL, cb, user);
}

void store_pin(store_t *s, int64_t tenant, const char *spec, bool pin, store_done_fn cb,
               void *user)
{
    core_err_t err = {{0}};
    store_adapter_t row = {0};
    rc_t rc = store__resolve(s, tenant, spec, &row, &err);
    /* Another tenant's published adapter is used, never pinned: as if it did not exist. */
    if (rc == RC_OK && row.shared)
        rc = core_err(&err, RC_NOT_FOUND, "adapter '%.80s' not found", spec);
    store_entry_t *e = rc == RC_OK ? store__cache_find(s, row.id) : NULL;
    bool already = rc == RC_OK && (e ? e->pinned : row.pinned);
    if (rc == RC_OK && pin && !already &&
        store__cache_pinned_bytes(s) + (uint64_t)row.mem_bytes > s->p.cache_budget_bytes)
        rc = core_err(&err, RC_LIMIT,
                      "pinning %s@%d would pin more than the adapter cache holds "
                      "(--adapter-cache-bytes %llu)",
                      row.name, row.version, (unsigned long long)s->p.cache_budget_bytes);
    if (rc == RC_OK && !ops_writable(s, &err))
        rc = RC_UNAVAILABLE;
    ops_task_t *o = rc == RC_OK ? ops_new(s, OP_PIN, cb, user) : NULL;
    if (!o) {
        ops_fail(s, rc == RC_OK ? RC_NOMEM : rc, &err, cb, user);
        return;
    }
    o->id = row.id;
    o->row = row;
    o->flag = pin;
    /* Counted at once, so two pins racing cannot both pass the check: a cold version gets
     * its (pinned) entry now, which also starts its load. */
    if (pin && !already && store__cache_prefetch(s, &row, &err) != RC_OK) {
        free(o);
        ops_fail(s, RC_NOMEM, &err, cb, user);
        return;
    }
    ops_submit(o);
}

/* ---- background changes (no caller waits) ---- */

void store__mark_broken(store_t *s, int64_t id, const char *reason)
{
    ops_task_t *o = ops_new(s, OP_BROKEN, NULL, NULL);
    if (!o)
        return; /* the entry stays broken in memory; the next start re-verifies */
    o->id = id;
    snprintf(o->a, sizeof o->a, "%s", reason);
    ops_submit(o);
}

void store__flush_usage(store_t *s)
{
    if (s->n_usage == 0)
        return;
    ops_task_t *o = ops_new(s, OP_USAGE, NULL, NULL);
    if (!o)
        return;
    o->usage = s->usage; /* the task takes the array */
    o->n_usage = s->n_usage;
    s->usage = NULL;
    s->n_usage = s->cap_usage = 0;
    ops_submit(o);
}

void store__start_gc(store_t *s)
{
    if (s->gc_running)
        return;
    ops_task_t *o = ops_new(s, OP_GC, NULL, NULL);
    if (!o)
        return;
    s->gc_running = true;
    ops_submit(o);
}
