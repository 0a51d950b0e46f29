/* safetensors.h - validated, read-only views of safetensors files.
 *
 * A core_st_t is one or more mmapped .safetensors files (a single file, or the shards
 * named by a model.safetensors.index.json) and the table of their tensors. The header of
 * every file is validated before any tensor is exposed: u64 length bound (100 MB) and
 * inside the file, JSON parsed with JSON_REJECT_DUPLICATES, known dtypes, shape products
 * with overflow checks, shape x dtype size == byte length, offsets contiguous, sorted
 * order independent, non-overlapping and covering the whole data buffer, __metadata__ of
 * strings only. Every error names the file and the tensor.
 *
 * Threads: open/free on any one thread; a successfully opened core_st_t is immutable and
 * may be read from any thread. Ownership: the core_st_t owns the mappings; tensor views
 * (names and data pointers) are borrowed until core_st_free(). */
#ifndef CORE_SAFETENSORS_H
#define CORE_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rc.h"

#define CORE_ST_MAX_DIMS 8
#define CORE_ST_MAX_HEADER (100u * 1000u * 1000u) /* as the reference validator */
#define CORE_ST_MAX_TENSORS 100000

typedef enum {
    CORE_DTYPE_F32,
    CORE_DTYPE_F16,
    CORE_DTYPE_BF16,
    CORE_DTYPE_OTHER /* a dtype the format knows but we do not convert (I32, F64, ...) */
} core_dtype_t;

typedef struct {
    const char *name;     /* borrowed */
    core_dtype_t dtype;
    const char *dtype_name; /* as written in the file: "F32", "I32", ... */
    int n_dims;
    int64_t shape[CORE_ST_MAX_DIMS];
    int64_t n_elems;
    const uint8_t *data;  /* borrowed, little-endian, maybe unaligned */
    size_t n_bytes;
} core_st_tensor_t;

typedef struct core_st core_st_t;

/* Caps a caller may tighten (never loosen): adapters take a 16 MiB header and a
 * tensor count from the base model, so header bloat is refused before any table exists.
 * Every refusal's message starts with a reason of CORE_REASON_MAP (core/rc.h). */
typedef struct {
    uint64_t max_header; /* bytes of header JSON (default and ceiling CORE_ST_MAX_HEADER) */
    size_t max_tensors;  /* entries per table (default and ceiling CORE_ST_MAX_TENSORS) */
} core_st_params_t;

core_st_params_t core_st_default_params(void);

/* Parse and validate one header from memory (buf = whole file image). Used by the
 * file opener and by the fuzzer. On success *out holds a core_st_t that borrows buf
 * (buf must outlive it). */
rc_t core_st_parse(const uint8_t *buf, size_t len, const char *label, core_st_t **out,
                   core_err_t *err);

/* core_st_parse held to p (NULL: the defaults). */
rc_t core_st_parse_ex(const uint8_t *buf, size_t len, const char *label,
                      const core_st_params_t *p, core_st_t **out, core_err_t *err);

/* mmap and validate one .safetensors file. OUT: *out, free with core_st_free. */
rc_t core_st_open_file(const char *path, core_st_t **out, core_err_t *err);
/* The same held to p (NULL: the defaults). */
rc_t core_st_open_file_ex(const char *path, const core_st_params_t *p, core_st_t **out,
                          core_err_t *err);

/* Open the weights of a model folder: DIR/model.safetensors, or the shards listed by
 * DIR/model.safetensors.index.json ("weight_map"; shard names must be plain file names
 * inside DIR; every listed tensor must be found in its shard). */
rc_t core_st_open_dir(const char *dir, core_st_t **out, core_err_t *err);

void core_st_free(core_st_t *st);

size_t core_st_count(const core_st_t *st);
const core_st_tensor_t *core_st_at(const core_st_t *st, size_t i);
/* NULL when absent. */
const core_st_tensor_t *core_st_find(const core_st_t *st, const char *name);

/* Convert t to f32 into dst (t->n_elems floats). RC_UNSUPPORTED for CORE_DTYPE_OTHER. */
rc_t core_st_to_f32(const core_st_tensor_t *t, float *dst, core_err_t *err);

/* core_st_to_f32 in one pass that also says whether every value is finite (no inf or
 * NaN). OUT: *finite. */
rc_t core_st_to_f32_check(const core_st_tensor_t *t, float *dst, bool *finite, core_err_t *err);

/* Drop the file pages that lie wholly inside t's bytes from this process's resident set
 * (madvise MADV_DONTNEED on the read-only mapping). t stays readable - the kernel reads
 * the pages back from the file on access - so this is only a memory hint, used after a
 * tensor has been converted so that a model load does not hold the file and the f32 copy
 * resident at once. */
void core_st_release(const core_st_tensor_t *t);

/* Conversions, exposed for tests. */
float core_f16_to_f32(uint16_t h);
float core_bf16_to_f32(uint16_t b);

#endif
