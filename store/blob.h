/* blob.h - private to store/: content-addressed blob files and the temp files that
 * uploads and imports stream into.
 *
 * Layout: DATA_DIR/blobs/<sha256 hex> holds finished blobs (64 lower-case hex digits, no
 * extension); DATA_DIR/tmp/ holds files being written ("<random>.part"). Both folders are
 * on the same filesystem (same parent), so rename() is atomic.
 *
 * Install protocol (RELIABILITY 3.1, the ALICE rule): write the temp file while hashing,
 * fsync it, rename it to blobs/<hex>, fsync the blobs folder. Only then may an index row
 * point at the blob. A crash before the rename leaves a temp file (start-up empties tmp/);
 * a crash after it leaves an unreferenced blob (garbage collection removes it). A blob
 * already present under the same name should be the same bytes (same sha256); it is
 * replaced by the fresh copy all the same (atomically), so re-uploading an adapter whose
 * stored copy was damaged repairs it. The folder is fsync'd either way.
 *
 * fsync failures are final ("fsyncgate"): after any failed fsync, store__blob_poisoned()
 * returns true for the rest of the process and every later writer_new fails with RC_IO,
 * because Linux may have dropped the dirty pages and a retry could report a false success.
 * ENOSPC/EDQUOT from write or fsync is RC_NOSPACE (the api answers 507).
 *
 * Every write/fsync/rename/unlink on these paths first calls store__fp() (store/fault.h),
 * so tests can crash or fail the k-th operation.
 *
 * Threads: a writer belongs to one thread at a time (it may be handed from the loop thread,
 * which streams an upload into it, to a pool thread, which finishes and installs it).
 * GC and install of one data dir must not run at the same time: the store serialises them
 * under its writer lock. Ownership: writers are freed with store__blob_writer_free. */
#ifndef STORE_BLOB_H
#define STORE_BLOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rc.h"

#define STORE_BLOB_HEX 65 /* 64 hex digits + NUL */

typedef struct store_blob_writer store_blob_writer_t;

/* Create the folders DATA_DIR/blobs and DATA_DIR/tmp if missing (mode 0700). */
rc_t store__blob_dirs(const char *data_dir, core_err_t *err);

/* Open a new temp file DATA_DIR/tmp/<random>.part (O_CREAT|O_EXCL|O_CLOEXEC, 0600).
 * max_bytes caps what may be written (RC_LIMIT past it). OUT: *out. */
rc_t store__blob_writer_new(const char *data_dir, uint64_t max_bytes,
                            store_blob_writer_t **out, core_err_t *err);
/* Append len bytes and hash them. RC_LIMIT when the total would pass max_bytes (nothing
 * of this call is written), RC_NOSPACE on ENOSPC/EDQUOT, RC_IO otherwise. Short writes
 * and EINTR are retried. */
rc_t store__blob_write(store_blob_writer_t *w, const void *data, size_t len, core_err_t *err);
/* Bytes written so far. */
uint64_t store__blob_size(const store_blob_writer_t *w);
/* fsync the temp file and finish the hash. After this no more writes. OUT: hex (the
 * sha256 of everything written), *n_bytes (optional). */
rc_t store__blob_finish(store_blob_writer_t *w, char hex[STORE_BLOB_HEX], uint64_t *n_bytes,
                        core_err_t *err);
/* The temp file's path (valid until install or free): loaders read it to validate the
 * content before it is installed. */
const char *store__blob_tmp_path(const store_blob_writer_t *w);
/* After finish: rename the temp file to DATA_DIR/blobs/<hex> (replacing a blob of that name),
 * then fsync DATA_DIR/blobs. */
rc_t store__blob_install(store_blob_writer_t *w, core_err_t *err);
/* Close, remove the temp file if it is still there, free. NULL-safe. */
void store__blob_writer_free(store_blob_writer_t *w);

/* A finished writer holding a copy of the file at src (imports from a folder).
 * RC_NOT_FOUND when src does not exist, RC_LIMIT when larger than max_bytes. OUT: *out,
 * hex, *n_bytes (optional). */
rc_t store__blob_copy_file(const char *data_dir, const char *src, uint64_t max_bytes,
                           store_blob_writer_t **out, char hex[STORE_BLOB_HEX],
                           uint64_t *n_bytes, core_err_t *err);

/* DATA_DIR/blobs/<hex> into buf. Returns false when it does not fit or hex is not 64
 * lower-case hex digits (a blob name never comes from a client). */
bool store__blob_path(const char *data_dir, const char *hex, char *buf, size_t cap);
/* Whether blobs/<hex> exists as a regular file. OUT: *size (optional). */
bool store__blob_exists(const char *data_dir, const char *hex, uint64_t *size);

/* Remove every regular file in DATA_DIR/tmp (start-up, before any writer exists).
 * OUT: *n_removed (optional). */
rc_t store__blob_clean_tmp(const char *data_dir, int *n_removed, core_err_t *err);

/* Remove every blob (a 64-hex name in DATA_DIR/blobs) for which keep(ctx, hex) is false;
 * other names are left alone. keep is called once per blob. Then fsync the folder if
 * anything was removed. OUT: *n_removed, *bytes_removed (optional). */
typedef bool (*store_blob_keep_fn)(void *ctx, const char *hex);
rc_t store__blob_gc(const char *data_dir, store_blob_keep_fn keep, void *ctx, int *n_removed,
                    uint64_t *bytes_removed, core_err_t *err);

/* True after any fsync failed in this process (see above). */
bool store__blob_poisoned(void);

#endif
