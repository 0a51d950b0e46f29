/* blob.c - content-addressed blob files and their temp files (contract in store/blob.h).
 *
 * A writer owns one temp file in DATA_DIR/tmp from writer_new until install renames it
 * (or removes it, when the blob exists already) or writer_free removes it. Every write,
 * fsync, rename and unlink first asks store__fp() whether to fail or crash there, so the
 * crash and I/O-error tests can walk every step of the install protocol.
 *
 * Invariant: a file at blobs/<hex> is always complete and its sha256 is <hex>, because the
 * only way a file gets there is rename() of a temp file that was fully written and fsync'd.
 * The poisoned flag is one process-wide atomic: once any fsync has failed, no new writer
 * is handed out (see "fsyncgate" in blob.h). */
#include "store/blob.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/sha256.h"
#include "store/fault.h"

#define BLOB_COPY_BUF (1u << 20)
#define BLOB_NAME_TRIES 8

struct store_blob_writer {
    int fd;             /* -1 once finished (or failed to open) */
    bool failed;        /* a write failed part-way: the file no longer matches the hash */
    bool finished;      /* finish succeeded: hex is valid, no more writes */
    bool tmp_exists;    /* tmp_path still names our file (free must remove it) */
    uint64_t max_bytes;
    uint64_t n_bytes;
    core_sha256_t sha;
    char hex[STORE_BLOB_HEX];
    char *data_dir;
    char *tmp_path;
};

static atomic_bool blob_poison_flag;

bool store__blob_poisoned(void)
{
    return atomic_load(&blob_poison_flag);
}

static void blob_poison(void)
{
    atomic_store(&blob_poison_flag, true);
}

static rc_t blob_errno_rc(int e)
{
    return (e == ENOSPC || e == EDQUOT) ? RC_NOSPACE : RC_IO;
}

/* "a/b" or "a/b/c" (c may be NULL) in a new string; NULL when out of memory. */
static char *blob_join(const char *a, const char *b, const char *c)
{
    char *s = NULL;
    int n = c ? asprintf(&s, "%s/%s/%s", a, b, c) : asprintf(&s, "%s/%s", a, b);
    return n < 0 ? NULL : s;
}

static bool blob_is_hex64(const char *s)
{
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false; /* also stops at a NUL before 64 digits */
    return s[64] == '\0';
}

/* fsync an open file. Any failure poisons the process: the kernel may already have
 * dropped the dirty pages and marked them clean, so a retry could falsely succeed. */
static rc_t blob_fsync_fd(int fd, const char *path, core_err_t *err)
{
    int e = 0;
    if (store__fp("fsync"))
        e = EIO;
    else if (fsync(fd) != 0)
        e = errno;
    if (!e)
        return RC_OK;
    blob_poison();
    return core_err(err, blob_errno_rc(e), "fsync %s: %s", path, strerror(e));
}

/* fsync a folder so the names created or removed in it are durable. */
static rc_t blob_fsync_dir(const char *path, core_err_t *err)
{
    if (store__fp("fsync_dir")) {
        blob_poison();
        return core_err(err, RC_IO, "fsync %s: %s", path, strerror(EIO));
    }
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return core_err(err, RC_IO, "open %s: %s", path, strerror(errno));
    int e = fsync(fd) != 0 ? errno : 0;
    close(fd);
    if (!e)
        return RC_OK;
    blob_poison();
    return core_err(err, blob_errno_rc(e), "fsync %s: %s", path, strerror(e));
}

/* unlink through the failpoint; returns 0 or an errno value (ENOENT counts as done). */
static int blob_unlink_at(int dirfd, const char *path)
{
    if (store__fp("unlink"))
        return EIO;
    if (unlinkat(dirfd, path, 0) != 0 && errno != ENOENT)
        return errno;
    return 0;
}

/* mkdir that accepts an existing folder. OUT: *created. */
static rc_t blob_mkdir(const char *path, bool *created, core_err_t *err)
{
    struct stat st;
    if (mkdir(path, 0700) == 0) {
        *created = true;
        return RC_OK;
    }
    if (errno != EEXIST)
        return core_err(err, RC_IO, "mkdir %s: %s", path, strerror(errno));
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return core_err(err, RC_IO, "%s exists and is not a folder", path);
    return RC_OK;
}

rc_t store__blob_dirs(const char *data_dir, core_err_t *err)
{
    char *blobs = blob_join(data_dir, "blobs", NULL);
    char *tmp = blob_join(data_dir, "tmp", NULL);
    bool created = false;
    rc_t rc = RC_NOMEM;
    if (!blobs || !tmp) {
        core_err(err, rc, "blob folder paths");
        goto out;
    }
    rc = blob_mkdir(blobs, &created, err);
    if (rc == RC_OK)
        rc = blob_mkdir(tmp, &created, err);
    /* A new folder's own name lives in DATA_DIR: without this fsync a power cut could lose
     * blobs/ after an index row already points into it. */
    if (rc == RC_OK && created)
        rc = blob_fsync_dir(data_dir, err);
out:
    free(blobs);
    free(tmp);
    return rc;
}

/* 16 random hex digits. The name only has to be unlikely to collide (O_EXCL catches the
 * rest), so never wait for the entropy pool: /dev/urandom when getrandom would block or
 * does not exist. */
static rc_t blob_random_name(char name[17], core_err_t *err)
{
    uint8_t r[8];
    ssize_t n = getrandom(r, sizeof r, GRND_NONBLOCK);
    if (n != (ssize_t)sizeof r) {
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        n = fd < 0 ? -1 : read(fd, r, sizeof r);
        if (fd >= 0)
            close(fd);
        if (n != (ssize_t)sizeof r)
            return core_err(err, RC_IO, "no random bytes for a temp file name");
    }
    for (int i = 0; i < 8; i++)
        snprintf(name + 2 * i, 3, "%02x", r[i]);
    return RC_OK;
}

/* Create w->tmp_path with O_EXCL under a fresh random name; retries a name collision. */
static rc_t blob_tmp_open(store_blob_writer_t *w, core_err_t *err)
{
    for (int i = 0; i < BLOB_NAME_TRIES; i++) {
        char name[17 + 5];
        rc_t rc = blob_random_name(name, err);
        if (rc != RC_OK)
            return rc;
        memcpy(name + 16, ".part", 6);
        free(w->tmp_path);
        w->tmp_path = blob_join(w->data_dir, "tmp", name);
        if (!w->tmp_path)
            return core_err(err, RC_NOMEM, "temp file path");
        w->fd = open(w->tmp_path, O_CREAT | O_EXCL | O_CLOEXEC | O_WRONLY, 0600);
        if (w->fd >= 0) {
            w->tmp_exists = true;
            return RC_OK;
        }
        if (errno != EEXIST)
            return core_err(err, blob_errno_rc(errno), "create %s: %s", w->tmp_path,
                            strerror(errno));
    }
    return core_err(err, RC_IO, "no free temp file name in %s/tmp", w->data_dir);
}

rc_t store__blob_writer_new(const char *data_dir, uint64_t max_bytes,
                            store_blob_writer_t **out, core_err_t *err)
{
    *out = NULL;
    if (store__blob_poisoned())
        return core_err(err, RC_IO, "the store stopped accepting writes after an fsync "
                                    "failure; restart the daemon");
    store_blob_writer_t *w = calloc(1, sizeof *w);
    if (!w)
        return core_err(err, RC_NOMEM, "blob writer");
    w->fd = -1;
    w->max_bytes = max_bytes;
    core_sha256_init(&w->sha);
    w->data_dir = strdup(data_dir);
    rc_t rc = w->data_dir ? blob_tmp_open(w, err) : core_err(err, RC_NOMEM, "blob writer");
    if (rc != RC_OK) {
        store__blob_writer_free(w);
        return rc;
    }
    *out = w;
    return RC_OK;
}

/* write(2) all of len bytes, retrying EINTR and short writes. 0 or an errno value. */
static int blob_write_all(int fd, const uint8_t *p, size_t len)
{
    while (len > 0) {
        if (store__fp("write"))
            return EIO;
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno;
        if (n == 0)
            return EIO; /* no progress on a regular file: do not spin */
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

rc_t store__blob_write(store_blob_writer_t *w, const void *data, size_t len, core_err_t *err)
{
    if (w->finished || w->fd < 0)
        return core_err(err, RC_INVALID, "write to a finished blob writer");
    if (w->failed)
        return core_err(err, RC_IO, "%s: an earlier write failed", w->tmp_path);
    if (len == 0)
        return RC_OK; /* data may be NULL */
    if (len > w->max_bytes - w->n_bytes)
        return core_err(err, RC_LIMIT, "blob larger than the limit of %llu bytes",
                        (unsigned long long)w->max_bytes);
    int e = blob_write_all(w->fd, data, len);
    if (e) {
        /* Part of this call may be on disk: the file no longer matches n_bytes/hash. */
        w->failed = true;
        return core_err(err, blob_errno_rc(e), "write %s: %s", w->tmp_path, strerror(e));
    }
    core_sha256_update(&w->sha, data, len);
    w->n_bytes += len;
    return RC_OK;
}

uint64_t store__blob_size(const store_blob_writer_t *w)
{
    return w->n_bytes;
}

rc_t store__blob_finish(store_blob_writer_t *w, char hex[STORE_BLOB_HEX], uint64_t *n_bytes,
                        core_err_t *err)
{
    if (w->finished || w->fd < 0)
        return core_err(err, RC_INVALID, "blob writer finished twice");
    if (w->failed)
        return core_err(err, RC_IO, "%s: an earlier write failed", w->tmp_path);
    rc_t rc = blob_fsync_fd(w->fd, w->tmp_path, err);
    if (rc != RC_OK) {
        w->failed = true;
        return rc;
    }
    /* After a good fsync the data is durable; close's result adds nothing (and close must
     * not be retried on EINTR on Linux). */
    close(w->fd);
    w->fd = -1;
    uint8_t digest[32];
    core_sha256_final(&w->sha, digest);
    core_sha256_hex(digest, w->hex);
    w->finished = true;
    memcpy(hex, w->hex, STORE_BLOB_HEX);
    if (n_bytes)
        *n_bytes = w->n_bytes;
    return RC_OK;
}

const char *store__blob_tmp_path(const store_blob_writer_t *w)
{
    return w->tmp_path;
}

/* Move the temp file to blob_path. When that blob exists already the fresh, verified copy
 * replaces it anyway (rename is atomic, readers keep their open file): the same name means
 * the same bytes, unless the old copy was damaged on disk - then this repairs it.
 * OUT: *renamed (true when this call created a name that did not exist). */
static rc_t blob_place(store_blob_writer_t *w, const char *blob_path, bool *renamed,
                       core_err_t *err)
{
    struct stat st;
    bool existed = stat(blob_path, &st) == 0 && S_ISREG(st.st_mode);
    int e = store__fp("rename") ? EIO : 0;
    if (!e && rename(w->tmp_path, blob_path) != 0)
        e = errno;
    if (e)
        return core_err(err, blob_errno_rc(e), "rename %s to %s: %s", w->tmp_path, blob_path,
                        strerror(e));
    w->tmp_exists = false;
    *renamed = !existed;
    return RC_OK;
}

rc_t store__blob_install(store_blob_writer_t *w, core_err_t *err)
{
    if (!w->finished || !w->tmp_exists)
        return core_err(err, RC_INVALID, "install of an unfinished or installed blob writer");
    char *blobs = blob_join(w->data_dir, "blobs", NULL);
    char *path = blob_join(w->data_dir, "blobs", w->hex);
    bool renamed = false;
    rc_t rc = RC_NOMEM;
    if (!blobs || !path) {
        core_err(err, rc, "blob path");
        goto out;
    }
    rc = blob_place(w, path, &renamed, err);
    /* fsync even when the blob existed: an earlier process may have crashed between its
     * rename and this fsync, and an index row is about to point at the name. */
    if (rc == RC_OK)
        rc = blob_fsync_dir(blobs, err);
    /* A failed install means "not installed": take back a name this call added, so the
     * folder is as before (GC would remove it later anyway). Best effort. */
    if (rc != RC_OK && renamed)
        blob_unlink_at(AT_FDCWD, path);
out:
    free(blobs);
    free(path);
    return rc;
}

void store__blob_writer_free(store_blob_writer_t *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    /* A leftover (failed unlink) is removed by clean_tmp at the next start. */
    if (w->tmp_exists)
        blob_unlink_at(AT_FDCWD, w->tmp_path);
    free(w->tmp_path);
    free(w->data_dir);
    free(w);
}

/* Open src for copying: a regular file no larger than max_bytes. OUT: *fd_out. */
static rc_t blob_src_open(const char *src, uint64_t max_bytes, int *fd_out, core_err_t *err)
{
    /* O_NONBLOCK so a FIFO under the name cannot hang the open; it changes nothing for
     * the regular files we accept. */
    int fd = open(src, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return core_err(err, errno == ENOENT || errno == ENOTDIR ? RC_NOT_FOUND : RC_IO,
                        "open %s: %s", src, strerror(errno));
    struct stat st;
    rc_t rc = RC_OK;
    if (fstat(fd, &st) != 0)
        rc = core_err(err, RC_IO, "stat %s: %s", src, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = core_err(err, RC_INVALID, "%s is not a regular file", src);
    else if ((uint64_t)st.st_size > max_bytes)
        rc = core_err(err, RC_LIMIT, "%s has %llu bytes, over the limit of %llu", src,
                      (unsigned long long)st.st_size, (unsigned long long)max_bytes);
    if (rc != RC_OK) {
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return RC_OK;
}

/* Read fd to its end into w (the writer enforces max_bytes if the file grew). */
static rc_t blob_copy_fd(int fd, const char *src, store_blob_writer_t *w, core_err_t *err)
{
    uint8_t *buf = malloc(BLOB_COPY_BUF);
    if (!buf)
        return core_err(err, RC_NOMEM, "copy buffer");
    rc_t rc = RC_OK;
    for (;;) {
        ssize_t n = read(fd, buf, BLOB_COPY_BUF);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = core_err(err, RC_IO, "read %s: %s", src, strerror(errno));
            break;
        }
        if (n == 0)
            break;
        rc = store__blob_write(w, buf, (size_t)n, err);
        if (rc != RC_OK)
            break;
    }
    free(buf);
    return rc;
}

rc_t store__blob_copy_file(const char *data_dir, const char *src, uint64_t max_bytes,
                           store_blob_writer_t **out, char hex[STORE_BLOB_HEX],
                           uint64_t *n_bytes, core_err_t *err)
{
    *out = NULL;
    int fd = -1;
    store_blob_writer_t *w = NULL;
    rc_t rc = blob_src_open(src, max_bytes, &fd, err);
    if (rc == RC_OK)
        rc = store__blob_writer_new(data_dir, max_bytes, &w, err);
    if (rc == RC_OK)
        rc = blob_copy_fd(fd, src, w, err);
    if (rc == RC_OK)
        rc = store__blob_finish(w, hex, n_bytes, err);
    if (fd >= 0)
        close(fd);
    if (rc != RC_OK) {
        store__blob_writer_free(w);
        return rc;
    }
    *out = w;
    return RC_OK;
}

bool store__blob_path(const char *data_dir, const char *hex, char *buf, size_t cap)
{
    if (!hex || !blob_is_hex64(hex))
        return false;
    int n = snprintf(buf, cap, "%s/blobs/%s", data_dir, hex);
    return n >= 0 && (size_t)n < cap;
}

bool store__blob_exists(const char *data_dir, const char *hex, uint64_t *size)
{
    char path[4096];
    struct stat st;
    if (!store__blob_path(data_dir, hex, path, sizeof path))
        return false;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return false;
    if (size)
        *size = (uint64_t)st.st_size;
    return true;
}

/* Open DATA_DIR/sub for listing. A missing folder is an empty one (*out stays NULL). */
static rc_t blob_opendir(const char *data_dir, const char *sub, char **path, DIR **out,
                         core_err_t *err)
{
    *out = NULL;
    *path = blob_join(data_dir, sub, NULL);
    if (!*path)
        return core_err(err, RC_NOMEM, "folder path");
    *out = opendir(*path);
    if (!*out && errno != ENOENT)
        return core_err(err, RC_IO, "open %s: %s", *path, strerror(errno));
    return RC_OK;
}

rc_t store__blob_clean_tmp(const char *data_dir, int *n_removed, core_err_t *err)
{
    char *path = NULL;
    DIR *d = NULL;
    int n = 0;
    rc_t rc = blob_opendir(data_dir, "tmp", &path, &d, err);
    for (struct dirent *de; rc == RC_OK && d && (de = readdir(d)) != NULL;) {
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
            !S_ISREG(st.st_mode))
            continue;
        int e = blob_unlink_at(dirfd(d), de->d_name);
        if (e)
            rc = core_err(err, RC_IO, "unlink %s/%s: %s", path, de->d_name, strerror(e));
        else
            n++;
    }
    if (d)
        closedir(d);
    free(path);
    if (n_removed)
        *n_removed = n;
    return rc;
}

/* One pass of gc over DATA_DIR/blobs. */
typedef struct {
    DIR *d;
    const char *path;
    store_blob_keep_fn keep;
    void *ctx;
    int n_removed;
    uint64_t bytes_removed;
} blob_gc_t;

/* One folder entry: remove it if it is a blob that keep() does not want. */
static rc_t blob_gc_one(blob_gc_t *g, const char *name, core_err_t *err)
{
    struct stat st;
    if (!blob_is_hex64(name) ||
        fstatat(dirfd(g->d), name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
        return RC_OK;
    char hex[STORE_BLOB_HEX];
    memcpy(hex, name, STORE_BLOB_HEX);
    if (g->keep(g->ctx, hex))
        return RC_OK;
    int e = blob_unlink_at(dirfd(g->d), name);
    if (e)
        return core_err(err, RC_IO, "unlink %s/%s: %s", g->path, name, strerror(e));
    g->n_removed++;
    g->bytes_removed += (uint64_t)st.st_size;
    return RC_OK;
}

rc_t store__blob_gc(const char *data_dir, store_blob_keep_fn keep, void *ctx, int *n_removed,
                    uint64_t *bytes_removed, core_err_t *err)
{
    char *path = NULL;
    blob_gc_t g = {.keep = keep, .ctx = ctx};
    rc_t rc = keep ? blob_opendir(data_dir, "blobs", &path, &g.d, err)
                   : core_err(err, RC_INVALID, "gc without a keep function");
    g.path = path;
    /* Removing entries while reading the folder is safe: readdir still returns every
     * entry that was neither removed nor added since opendir. */
    for (struct dirent *de; rc == RC_OK && g.d && (de = readdir(g.d)) != NULL;)
        rc = blob_gc_one(&g, de->d_name, err);
    if (g.d)
        closedir(g.d);
    /* Make the removals durable even when a later unlink failed (keeping the first error). */
    if (g.n_removed > 0) {
        core_err_t e2;
        rc_t rc2 = blob_fsync_dir(path, rc == RC_OK ? err : &e2);
        if (rc == RC_OK)
            rc = rc2;
    }
    free(path);
    if (n_removed)
        *n_removed = g.n_removed;
    if (bytes_removed)
        *bytes_removed = g.bytes_removed;
    return rc;
}
