/* store.h - the adapter index (sqlite, WAL) and the adapters resident in memory.
 *
 * DATA_DIR/adapterd.db holds one row per imported adapter version: name, version, kind,
 * rank, alpha, targets, base fingerprint, sha256, size, path, created. The schema version
 * is PRAGMA user_version: a newer daemon migrates an older file, an older daemon refuses a
 * newer file. Importing validates the folder against the base model (core_lora_load),
 * hashes the weights file, and inserts a new version unless the newest version of that
 * name has the same sha256. In this first slice adapters are referenced in place (path)
 * and kept resident once loaded; blobs, budgets and eviction come with the store issue.
 *
 * Names: 1-64 chars of [A-Za-z0-9._-], starting with a letter or digit; never used as
 * paths. "NAME@VERSION" selects a version, "NAME" the newest.
 *
 * Threads: every function locks the store; callable from any thread (the loop thread
 * calls acquire, which may load from disk on first use - acceptable for small adapters
 * until async loads arrive). Ownership: acquire returns a retained core_lora_t (caller
 * releases); list returns a malloc'd array (caller frees). */
#ifndef STORE_STORE_H
#define STORE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "core/lora.h"
#include "core/model.h"
#include "core/rc.h"

#define STORE_NAME_MAX 64

typedef struct {
    int64_t id;
    char name[STORE_NAME_MAX + 1];
    int version;
    char kind[16];       /* "lora" */
    int rank;
    double alpha;
    char targets[128];   /* "q_proj,v_proj" */
    char base_fingerprint[65];
    char sha256[65];     /* of adapter_model.safetensors */
    int64_t size;        /* bytes of adapter_model.safetensors */
    char path[4096];
    int64_t created;     /* unix seconds */
} store_adapter_t;

typedef struct store store_t;

rc_t store_open(const char *data_dir, const core_model_t *base, store_t **out, core_err_t *err);
void store_close(store_t *s);

/* true when name matches the documented charset and length. */
int store_name_valid(const char *name);

/* Validate DIR as a PEFT LoRA for the base and index it under name. OUT: row (optional). */
rc_t store_import(store_t *s, const char *dir, const char *name, store_adapter_t *row,
                  core_err_t *err);
/* Import every sub-folder of dir that holds an adapter_config.json, named after the
 * sub-folder. Bad ones are logged to stderr and skipped; returns RC_OK unless dir
 * cannot be read. OUT: *n_imported (optional). */
rc_t store_import_dir(store_t *s, const char *dir, int *n_imported, core_err_t *err);

/* spec = "NAME" or "NAME@VERSION". RC_NOT_FOUND when unknown. OUT: *lora retained,
 * row (optional). */
rc_t store_acquire(store_t *s, const char *spec, core_lora_t **lora, store_adapter_t *row,
                   core_err_t *err);

/* Newest version of every name, ordered by name. OUT: *rows malloc'd, *n. */
rc_t store_list(store_t *s, store_adapter_t **rows, size_t *n, core_err_t *err);

#endif
