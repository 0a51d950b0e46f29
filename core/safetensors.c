/* safetensors.c - validated, read-only views of safetensors files.
 *
 * Every header is checked the way the reference validator (safetensors/src/tensor.rs)
 * checks it, before any tensor is exposed: 8-byte LE length N <= 100 MB and N + 8 <= file,
 * JSON starting with '{' (trailing JSON whitespace allowed, leading whitespace refused as
 * the reference does), duplicate keys refused (TOB-SFTN-7), known dtypes, shapes of
 * non-negative integers whose products are overflow-checked, end - begin == byte size,
 * offsets that, sorted, run contiguously from 0 and cover the data buffer exactly (no
 * holes, no overlap, no trailing polyglot bytes). A zero-size tensor may share its offset
 * with the next one (the reference accepts it; it reads no bytes). The tensor count is
 * capped before the table is allocated, and __metadata__ is a small map of strings only.
 *
 * Threads: open/free on one thread; an opened core_st_t is immutable afterwards.
 * Ownership: the core_st_t owns its mappings, names and index; views borrow them. */
#include "core/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Metadata is inert text; a cap keeps a 10 MB "chat_template" out (RELIABILITY F7). */
#define ST_MAX_METADATA (64u * 1024u)
/* A weight index is JSON text listing tensor names; real ones are well under 1 MB. */
#define ST_MAX_INDEX_FILE (64u * 1024u * 1024u)

typedef struct {
    void *addr; /* NULL when the image is borrowed (core_st_parse) */
    size_t len;
} st_map_t;

struct core_st {
    core_st_params_t p;  /* caps every file of this table is held to */
    core_st_tensor_t *t; /* n tensors; names owned (malloc'd) */
    int *file_of;        /* n: index into labels of the file holding tensor i */
    size_t n, cap;
    st_map_t *maps; /* n_files mappings */
    char **labels;  /* n_files labels, owned */
    size_t n_files;
    uint32_t *slots; /* open-addressing index: tensor index + 1, 0 = empty */
    size_t n_slots;  /* power of two >= 2n */
};

typedef struct {
    const char *name;
    core_dtype_t dtype;
    unsigned bits;
} st_dtype_t;

/* Every dtype the format defines (safetensors 0.6); bits per element. */
static const st_dtype_t st_dtypes[] = {
    {"F32", CORE_DTYPE_F32, 32},          {"F16", CORE_DTYPE_F16, 16},
    {"BF16", CORE_DTYPE_BF16, 16},        {"BOOL", CORE_DTYPE_OTHER, 8},
    {"F4", CORE_DTYPE_OTHER, 4},          {"F6_E2M3", CORE_DTYPE_OTHER, 6},
    {"F6_E3M2", CORE_DTYPE_OTHER, 6},     {"U8", CORE_DTYPE_OTHER, 8},
    {"I8", CORE_DTYPE_OTHER, 8},          {"F8_E5M2", CORE_DTYPE_OTHER, 8},
    {"F8_E4M3", CORE_DTYPE_OTHER, 8},     {"F8_E8M0", CORE_DTYPE_OTHER, 8},
    {"F8_E4M3FNUZ", CORE_DTYPE_OTHER, 8}, {"F8_E5M2FNUZ", CORE_DTYPE_OTHER, 8},
    {"I16", CORE_DTYPE_OTHER, 16},        {"U16", CORE_DTYPE_OTHER, 16},
    {"I32", CORE_DTYPE_OTHER, 32},        {"U32", CORE_DTYPE_OTHER, 32},
    {"C64", CORE_DTYPE_OTHER, 64},        {"F64", CORE_DTYPE_OTHER, 64},
    {"I64", CORE_DTYPE_OTHER, 64},        {"U64", CORE_DTYPE_OTHER, 64},
};

static const st_dtype_t *st_dtype_find(const char *name)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(st_dtypes[i].name, name) == 0)
            return &st_dtypes[i];
    return NULL;
}

/* ---- conversions ---------------------------------------------------------------- */

static float st_bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float core_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in f32 (2^-24 and mant are exact) */
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (exp == 31) /* inf, or nan keeping its payload */
        return st_bits_to_f32(sign | 0x7f800000u | (mant << 13));
    return st_bits_to_f32(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

float core_bf16_to_f32(uint16_t b)
{
    return st_bits_to_f32((uint32_t)b << 16);
}

/* bf16 is the top half of an f32: bit moves only, written (restrict, memcpy stores) so
 * the compiler vectorises it - adapter loads convert tens of MB each. */
static void st_bf16_rows(const uint8_t *restrict p, float *restrict dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u = ((uint32_t)p[2 * i] | ((uint32_t)p[2 * i + 1] << 8)) << 16;
        memcpy(&dst[i], &u, sizeof u);
    }
}

/* The same, also OR-ing "exponent all ones" (inf or NaN) into the result: one pass. */
static bool st_bf16_rows_finite(const uint8_t *restrict p, float *restrict dst, size_t n)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t h = (uint32_t)p[2 * i] | ((uint32_t)p[2 * i + 1] << 8);
        bad |= (uint32_t)((h & 0x7f80u) == 0x7f80u);
        uint32_t u = h << 16;
        memcpy(&dst[i], &u, sizeof u);
    }
    return bad == 0;
}

static bool st_f32_finite(const float *restrict v, size_t n)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], sizeof u);
        bad |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
    }
    return bad == 0;
}

rc_t core_st_to_f32_check(const core_st_tensor_t *t, float *dst, bool *finite, core_err_t *err)
{
    if (t->dtype == CORE_DTYPE_BF16) {
        *finite = st_bf16_rows_finite(t->data, dst, (size_t)t->n_elems);
        return RC_OK;
    }
    rc_t rc = core_st_to_f32(t, dst, err);
    *finite = rc == RC_OK && st_f32_finite(dst, (size_t)t->n_elems);
    return rc;
}

rc_t core_st_to_f32(const core_st_tensor_t *t, float *dst, core_err_t *err)
{
    size_t n = (size_t)t->n_elems;
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case CORE_DTYPE_F32:
        if (n)
            memcpy(dst, p, n * sizeof(float));
        return RC_OK;
    case CORE_DTYPE_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = core_f16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        return RC_OK;
    case CORE_DTYPE_BF16:
        st_bf16_rows(p, dst, n);
        return RC_OK;
    default:
        return core_err(err, RC_UNSUPPORTED,
                        "tensor '%s': dtype %s is not supported (need F32, F16 or BF16)", t->name,
                        t->dtype_name);
    }
}

/* ---- table and index ------------------------------------------------------------ */

static uint64_t st_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static rc_t st_reserve(core_st_t *st, size_t extra, core_err_t *err)
{
    if (st->n + extra <= st->cap)
        return RC_OK;
    size_t cap = st->n + extra;
    core_st_tensor_t *t = realloc(st->t, cap * sizeof *t);
    if (!t)
        return core_err(err, RC_NOMEM, "safetensors: out of memory for %zu tensors", cap);
    st->t = t;
    int *f = realloc(st->file_of, cap * sizeof *f);
    if (!f)
        return core_err(err, RC_NOMEM, "safetensors: out of memory for %zu tensors", cap);
    st->file_of = f;
    st->cap = cap;
    return RC_OK;
}

static rc_t st_add_file(core_st_t *st, const char *label, void *addr, size_t len, core_err_t *err)
{
    st_map_t *m = realloc(st->maps, (st->n_files + 1) * sizeof *m);
    if (!m)
        return core_err(err, RC_NOMEM, "%s: out of memory", label);
    st->maps = m;
    char **l = realloc(st->labels, (st->n_files + 1) * sizeof *l);
    if (!l)
        return core_err(err, RC_NOMEM, "%s: out of memory", label);
    st->labels = l;
    char *copy = strdup(label);
    if (!copy)
        return core_err(err, RC_NOMEM, "%s: out of memory", label);
    st->labels[st->n_files] = copy;
    st->maps[st->n_files] = (st_map_t){addr, len};
    st->n_files++;
    return RC_OK;
}

/* Builds the name index; a name seen twice (only possible across shards, since one
 * header rejects duplicate keys) is refused naming both files. */
static rc_t st_index_build(core_st_t *st, core_err_t *err)
{
    size_t n_slots = 16;
    while (n_slots < 2 * st->n)
        n_slots *= 2;
    free(st->slots);
    st->slots = calloc(n_slots, sizeof *st->slots);
    if (!st->slots)
        return core_err(err, RC_NOMEM, "safetensors: out of memory for the tensor index");
    st->n_slots = n_slots;
    for (size_t i = 0; i < st->n; i++) {
        size_t j = (size_t)st_hash(st->t[i].name) & (n_slots - 1);
        while (st->slots[j]) {
            size_t k = st->slots[j] - 1;
            if (strcmp(st->t[k].name, st->t[i].name) == 0)
                return core_err_r(err, RC_FORMAT, "duplicate_key",
                                  "tensor '%s' appears in both %s and %s",
                                st->t[i].name, st->labels[st->file_of[k]],
                                st->labels[st->file_of[i]]);
            j = (j + 1) & (n_slots - 1);
        }
        st->slots[j] = (uint32_t)(i + 1);
    }
    return RC_OK;
}

static long st_find_index(const core_st_t *st, const char *name)
{
    if (!st->n_slots)
        return -1;
    size_t j = (size_t)st_hash(name) & (st->n_slots - 1);
    while (st->slots[j]) {
        size_t k = st->slots[j] - 1;
        if (strcmp(st->t[k].name, name) == 0)
            return (long)k;
        j = (j + 1) & (st->n_slots - 1);
    }
    return -1;
}

/* ---- header validation ---------------------------------------------------------- */

typedef struct {
    uint64_t begin, end;
    size_t idx;
    unsigned bits; /* per element, of the entry's dtype */
} st_span_t;

static int st_span_cmp(const void *a, const void *b)
{
    const st_span_t *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static rc_t st_metadata_check(const json_t *meta, const char *label, core_err_t *err)
{
    if (!json_is_object(meta))
        return core_err_r(err, RC_FORMAT, "bad_metadata",
                          "%s: __metadata__ must be an object of strings", label);
    size_t total = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)meta, k, v)
    {
        if (!json_is_string(v))
            return core_err_r(err, RC_FORMAT, "bad_metadata", "%s: __metadata__ '%.100s' is not a string",
                              label, k);
        total += strlen(k) + json_string_length(v);
        if (total > ST_MAX_METADATA)
            return core_err_r(err, RC_LIMIT, "metadata_too_large",
                              "%s: __metadata__ larger than %u bytes (at '%.100s')", label,
                              ST_MAX_METADATA, k);
    }
    return RC_OK;
}

/* Shape entries are non-negative JSON integers (the product is checked later, in offset
 * order, as the reference does). */
static rc_t st_shape_parse(const json_t *shape, core_st_tensor_t *t, const char *label,
                           core_err_t *err)
{
    if (!json_is_array(shape))
        return core_err_r(err, RC_FORMAT, "tensor_invalid_info",
                          "%s: tensor '%.200s': shape must be an array", label, t->name);
    size_t nd = json_array_size(shape);
    if (nd > CORE_ST_MAX_DIMS)
        return core_err_r(err, RC_FORMAT, "tensor_invalid_info",
                          "%s: tensor '%.200s': %zu dimensions (max %d)", label, t->name, nd,
                          CORE_ST_MAX_DIMS);
    for (size_t d = 0; d < nd; d++) {
        json_t *e = json_array_get(shape, d);
        if (!json_is_integer(e) || json_integer_value(e) < 0)
            return core_err_r(err, RC_FORMAT, "tensor_invalid_info",
                              "%s: tensor '%.200s': shape[%zu] is not a non-negative integer",
                              label, t->name, d);
        t->shape[d] = (int64_t)json_integer_value(e);
    }
    t->n_dims = (int)nd;
    return RC_OK;
}

/* [begin, end] as two non-negative JSON integers; their order is checked in st_spans_check. */
static rc_t st_offsets_parse(const json_t *offs, st_span_t *span, const char *label,
                             const char *name, core_err_t *err)
{
    json_t *b = json_array_get(offs, 0), *e = json_array_get(offs, 1);
    if (!json_is_array(offs) || json_array_size(offs) != 2 || !json_is_integer(b) ||
        !json_is_integer(e) || json_integer_value(b) < 0 || json_integer_value(e) < 0)
        return core_err_r(err, RC_FORMAT, "invalid_offset",
                          "%s: tensor '%.200s': data_offsets must be [begin, end], non-negative "
                          "integers",
                          label, name);
    span->begin = (uint64_t)json_integer_value(b);
    span->end = (uint64_t)json_integer_value(e);
    return RC_OK;
}

/* One tensor entry {"dtype", "shape", "data_offsets"}, its fields' types only; other
 * fields are refused. */
static rc_t st_entry_parse(const char *name, json_t *v, core_st_tensor_t *t, st_span_t *span,
                           const char *label, core_err_t *err)
{
    memset(t, 0, sizeof *t);
    t->name = name;
    if (!json_is_object(v))
        return core_err_r(err, RC_FORMAT, "tensor_invalid_info",
                          "%s: tensor '%.200s': entry is not an object", label, name);
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x)
    {
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
            return core_err_r(err, RC_FORMAT, "tensor_invalid_info",
                              "%s: tensor '%.200s': unknown field '%.100s'", label, name, k);
    }
    json_t *dt = json_object_get(v, "dtype");
    if (!json_is_string(dt))
        return core_err_r(err, RC_FORMAT, "bad_dtype",
                          "%s: tensor '%.200s': dtype missing or not a string", label, name);
    const st_dtype_t *d = st_dtype_find(json_string_value(dt));
    if (!d)
        return core_err_r(err, RC_FORMAT, "bad_dtype", "%s: tensor '%.200s': unknown dtype '%.32s'",
                          label, name, json_string_value(dt));
    t->dtype = d->dtype;
    t->dtype_name = d->name;
    span->bits = d->bits;
    rc_t rc = st_shape_parse(json_object_get(v, "shape"), t, label, err);
    if (rc)
        return rc;
    return st_offsets_parse(json_object_get(v, "data_offsets"), span, label, name, err);
}

/* The reference's per-tensor checks, in its order: element count and bit size without
 * overflow, whole bytes, and a span of exactly that many bytes. */
static rc_t st_size_check(core_st_tensor_t *t, const st_span_t *span, const char *label,
                          core_err_t *err)
{
    uint64_t n = 1, bits;
    for (int d = 0; d < t->n_dims; d++)
        if (__builtin_mul_overflow(n, (uint64_t)t->shape[d], &n))
            return core_err_r(err, RC_FORMAT, "validation_overflow",
                              "%s: tensor '%.200s': shape product overflows", label, t->name);
    if (n > (uint64_t)INT64_MAX || __builtin_mul_overflow(n, (uint64_t)span->bits, &bits))
        return core_err_r(err, RC_FORMAT, "validation_overflow",
                          "%s: tensor '%.200s': byte size overflows", label, t->name);
    if (bits % 8)
        return core_err_r(err, RC_FORMAT, "misaligned",
                          "%s: tensor '%.200s': %s data is not a whole number of bytes", label,
                          t->name, t->dtype_name);
    if (span->end - span->begin != bits / 8)
        return core_err_r(err, RC_FORMAT, "tensor_invalid_info",
                          "%s: tensor '%.200s': data_offsets span %llu bytes but %s%s needs %llu",
                          label, t->name, (unsigned long long)(span->end - span->begin),
                          t->dtype_name, t->n_dims ? " shape" : " scalar",
                          (unsigned long long)(bits / 8));
    t->n_elems = (int64_t)n;
    t->n_bytes = (size_t)(bits / 8);
    return RC_OK;
}

/* Sorted by offsets, spans must chain from 0 to exactly the data buffer's end; each
 * tensor's size is checked in that order (the reference's validate()). A span that runs
 * past the buffer is an invalid offset; bytes left after the last one are an incomplete
 * buffer (the reference reports both as MetadataIncompleteBuffer; we name the overrun
 * precisely). */
static rc_t st_spans_check(core_st_t *st, size_t first, st_span_t *spans, size_t n,
                           uint64_t data_len, const char *label, core_err_t *err)
{
    qsort(spans, n, sizeof *spans, st_span_cmp);
    uint64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        core_st_tensor_t *t = &st->t[first + spans[i].idx];
        if (spans[i].begin != at || spans[i].end < spans[i].begin)
            return core_err_r(err, RC_FORMAT, "invalid_offset",
                              "%s: tensor '%.200s': invalid offsets [%llu, %llu] (expected begin "
                              "%llu: offsets must be contiguous, without holes or overlap)",
                              label, t->name, (unsigned long long)spans[i].begin,
                              (unsigned long long)spans[i].end, (unsigned long long)at);
        if (spans[i].end > data_len)
            return core_err_r(err, RC_FORMAT, "invalid_offset",
                              "%s: tensor '%.200s': data_offsets end %llu is past the data buffer "
                              "(%llu bytes)",
                              label, t->name, (unsigned long long)spans[i].end,
                              (unsigned long long)data_len);
        rc_t rc = st_size_check(t, &spans[i], label, err);
        if (rc)
            return rc;
        at = spans[i].end;
    }
    if (at != data_len)
        return core_err_r(err, RC_FORMAT, "metadata_incomplete_buffer",
                          "%s: tensors cover %llu bytes but the data buffer has %llu (holes or "
                          "trailing bytes are not allowed)",
                          label, (unsigned long long)at, (unsigned long long)data_len);
    return RC_OK;
}

/* Entries of one header into st (names copied); data pointers into data. */
static rc_t st_entries_add(core_st_t *st, json_t *root, const uint8_t *data, uint64_t data_len,
                           const char *label, int file, core_err_t *err)
{
    size_t n_entries = json_object_size(root) - (json_object_get(root, "__metadata__") != NULL);
    if (n_entries > st->p.max_tensors || st->n + n_entries > st->p.max_tensors)
        return core_err_r(err, RC_LIMIT, "too_many_tensors", "%s: too many tensors (%zu, max %zu)",
                          label, st->n + n_entries, st->p.max_tensors);
    rc_t rc = st_reserve(st, n_entries, err);
    if (rc)
        return rc;
    st_span_t *spans = malloc((n_entries ? n_entries : 1) * sizeof *spans);
    if (!spans)
        return core_err(err, RC_NOMEM, "%s: out of memory", label);
    size_t first = st->n;
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v)
    {
        if (strcmp(k, "__metadata__") == 0)
            continue;
        char *name = strdup(k);
        if (!name) {
            rc = core_err(err, RC_NOMEM, "%s: out of memory", label);
            goto out;
        }
        core_st_tensor_t *t = &st->t[st->n];
        rc = st_entry_parse(name, v, t, &spans[st->n - first], label, err);
        st->file_of[st->n] = file;
        st->n++; /* counted even on error so that core_st_free frees the name */
        if (rc)
            goto out;
        spans[st->n - 1 - first].idx = st->n - 1 - first;
    }
    rc = st_spans_check(st, first, spans, st->n - first, data_len, label, err);
    if (rc)
        goto out;
    for (size_t i = 0; i < st->n - first; i++)
        st->t[first + spans[i].idx].data = data + spans[i].begin;
out:
    free(spans);
    return rc;
}

/* The deepest a valid header nests: root object, tensor entry, shape array. */
#define ST_MAX_DEPTH 3

/* Colons outside strings at depth 1 = top-level keys of a well-formed object; also the
 * deepest nesting. Counted before jansson builds ~5 allocations per entry, so header
 * bloat (RELIABILITY F8) and deep nesting are refused in a few ms; other malformed text is
 * left for jansson to report. */
static size_t st_count_top_keys(const uint8_t *p, size_t n, int *max_depth)
{
    size_t keys = 0;
    int depth = 0, in_str = 0;
    *max_depth = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '{' || c == '[') {
            if (++depth > *max_depth)
                *max_depth = depth;
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == ':' && depth == 1) {
            keys++;
        }
    }
    return keys;
}

/* The 8-byte length and what can be said of the header before parsing it, in the
 * reference's order. OUT: *hlen. */
static rc_t st_header_check(const core_st_t *st, const uint8_t *buf, size_t len,
                            const char *label, uint64_t *hlen, core_err_t *err)
{
    if (len < 8)
        return core_err_r(err, RC_FORMAT, "header_too_small",
                          "%s: header too small (file of %zu bytes)", label, len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | buf[i];
    if (n > st->p.max_header)
        return core_err_r(err, RC_LIMIT, "header_too_large",
                          "%s: header too large (%llu bytes, max %llu)", label,
                          (unsigned long long)n, (unsigned long long)st->p.max_header);
    if (n > len - 8)
        return core_err_r(err, RC_FORMAT, "invalid_header_length",
                          "%s: invalid header length %llu (file has %zu bytes)", label,
                          (unsigned long long)n, len);
    /* Leading whitespace is refused as the reference does; trailing is JSON's own. */
    if (n == 0 || buf[8] != '{')
        return core_err_r(err, RC_FORMAT, "invalid_header_start",
                          "%s: invalid header start (JSON must begin with '{')", label);
    int depth;
    size_t n_keys = st_count_top_keys(buf + 8, (size_t)n, &depth);
    if (n_keys > st->p.max_tensors &&
        (n_keys > st->p.max_tensors + 1 || !memmem(buf + 8, n, "\"__metadata__\"", 14)))
        return core_err_r(err, RC_LIMIT, "too_many_tensors", "%s: too many tensors (%zu, max %zu)",
                          label, n_keys, st->p.max_tensors);
    if (depth > ST_MAX_DEPTH)
        return core_err_r(err, RC_FORMAT, "invalid_header",
                          "%s: header nests %d levels deep (a valid header has %d)", label, depth,
                          ST_MAX_DEPTH);
    *hlen = n;
    return RC_OK;
}

/* jansson refuses integers past 2^63 - 1 while parsing; name the field they were in
 * (the last "data_offsets" or "shape" key before the error) as the reference would. */
static const char *st_json_reason(const json_error_t *jerr, const uint8_t *text, size_t n)
{
    if (json_error_code(jerr) == json_error_duplicate_key)
        return "duplicate_key";
    if (json_error_code(jerr) != json_error_numeric_overflow || jerr->position <= 0)
        return "invalid_header";
    size_t at = (size_t)jerr->position < n ? (size_t)jerr->position : n;
    for (size_t i = at; i-- > 0;) {
        if (i + 14 <= at && memcmp(text + i, "\"data_offsets\"", 14) == 0)
            return "invalid_offset";
        if (i + 7 <= at && memcmp(text + i, "\"shape\"", 7) == 0)
            return "validation_overflow";
        if (text[i] == '{') /* the entry's start: the number was in neither */
            break;
    }
    return "invalid_header";
}

/* Validates the image buf[0..len) and appends its tensors to st. */
static rc_t st_parse_into(core_st_t *st, const uint8_t *buf, size_t len, const char *label,
                          int file, core_err_t *err)
{
    uint64_t n = 0;
    rc_t rc = st_header_check(st, buf, len, label, &n, err);
    if (rc)
        return rc;
    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return core_err_r(err, RC_FORMAT, st_json_reason(&jerr, buf + 8, (size_t)n),
                          "%s: header JSON: %s (at byte %d)", label, jerr.text, jerr.position);
    if (!json_is_object(root)) {
        rc = core_err_r(err, RC_FORMAT, "invalid_header", "%s: header is not a JSON object",
                        label);
        goto out;
    }
    json_t *meta = json_object_get(root, "__metadata__");
    if (meta) {
        rc = st_metadata_check(meta, label, err);
        if (rc)
            goto out;
    }
    rc = st_entries_add(st, root, buf + 8 + n, (uint64_t)len - 8 - n, label, file, err);
out:
    json_decref(root);
    return rc;
}

/* ---- public API ----------------------------------------------------------------- */

void core_st_free(core_st_t *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < st->n; i++)
        free((char *)st->t[i].name);
    for (size_t i = 0; i < st->n_files; i++) {
        if (st->maps[i].addr)
            munmap(st->maps[i].addr, st->maps[i].len);
        free(st->labels[i]);
    }
    free(st->t);
    free(st->file_of);
    free(st->maps);
    free(st->labels);
    free(st->slots);
    free(st);
}

/* The end of every opener: on success hand st to the caller, else free it. */
static rc_t st_publish(core_st_t *st, rc_t rc, core_st_t **out)
{
    if (rc) {
        core_st_free(st);
        return rc;
    }
    *out = st;
    return RC_OK;
}

core_st_params_t core_st_default_params(void)
{
    return (core_st_params_t){.max_header = CORE_ST_MAX_HEADER, .max_tensors = CORE_ST_MAX_TENSORS};
}

/* An empty table held to p (NULL: the defaults), whose caps never exceed the defaults. */
static core_st_t *st_new(const core_st_params_t *p)
{
    core_st_t *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->p = core_st_default_params();
    if (p && p->max_header < st->p.max_header)
        st->p.max_header = p->max_header;
    if (p && p->max_tensors < st->p.max_tensors)
        st->p.max_tensors = p->max_tensors;
    return st;
}

rc_t core_st_parse(const uint8_t *buf, size_t len, const char *label, core_st_t **out,
                   core_err_t *err)
{
    return core_st_parse_ex(buf, len, label, NULL, out, err);
}

rc_t core_st_parse_ex(const uint8_t *buf, size_t len, const char *label,
                      const core_st_params_t *p, core_st_t **out, core_err_t *err)
{
    *out = NULL;
    core_st_t *st = st_new(p);
    if (!st)
        return core_err(err, RC_NOMEM, "%s: out of memory", label);
    rc_t rc = st_add_file(st, label, NULL, len, err);
    if (!rc)
        rc = st_parse_into(st, buf, len, label, 0, err);
    if (!rc)
        rc = st_index_build(st, err);
    return st_publish(st, rc, out);
}

/* mmaps path read-only (an empty file maps to NULL, len 0). */
static rc_t st_map_file(const char *path, void **addr, size_t *len, core_err_t *err)
{
    *addr = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return core_err(err, errno == ENOENT ? RC_NOT_FOUND : RC_IO, "%s: %s", path,
                        strerror(errno));
    rc_t rc = RC_OK;
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        rc = core_err(err, RC_IO, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(sb.st_mode)) {
        rc = core_err(err, RC_IO, "%s: not a regular file", path);
        goto out;
    }
    if (sb.st_size > 0) {
        void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            rc = core_err(err, RC_IO, "%s: mmap: %s", path, strerror(errno));
            goto out;
        }
        *addr = p;
        *len = (size_t)sb.st_size;
    }
out:
    close(fd);
    return rc;
}

/* Maps path and appends its tensors to st under label. */
static rc_t st_open_into(core_st_t *st, const char *path, const char *label, core_err_t *err)
{
    void *addr;
    size_t len;
    rc_t rc = st_map_file(path, &addr, &len, err);
    if (rc)
        return rc;
    rc = st_add_file(st, label, addr, len, err);
    if (rc) {
        if (addr)
            munmap(addr, len);
        return rc;
    }
    static const uint8_t empty[1];
    return st_parse_into(st, addr ? addr : empty, len, label, (int)st->n_files - 1, err);
}

rc_t core_st_open_file(const char *path, core_st_t **out, core_err_t *err)
{
    return core_st_open_file_ex(path, NULL, out, err);
}

rc_t core_st_open_file_ex(const char *path, const core_st_params_t *p, core_st_t **out,
                          core_err_t *err)
{
    *out = NULL;
    core_st_t *st = st_new(p);
    if (!st)
        return core_err(err, RC_NOMEM, "%s: out of memory", path);
    rc_t rc = st_open_into(st, path, path, err);
    if (!rc)
        rc = st_index_build(st, err);
    return st_publish(st, rc, out);
}

static char *st_path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static rc_t st_read_text(const char *path, char **text, size_t *len, core_err_t *err)
{
    void *addr;
    size_t n;
    rc_t rc = st_map_file(path, &addr, &n, err);
    if (rc)
        return rc;
    if (n > ST_MAX_INDEX_FILE) {
        munmap(addr, n);
        return core_err(err, RC_LIMIT, "%s: index file too large (%zu bytes)", path, n);
    }
    *text = malloc(n + 1);
    if (!*text) {
        if (addr)
            munmap(addr, n);
        return core_err(err, RC_NOMEM, "%s: out of memory", path);
    }
    if (n)
        memcpy(*text, addr, n);
    (*text)[n] = 0;
    *len = n;
    if (addr)
        munmap(addr, n);
    return RC_OK;
}

/* A shard is a plain file name inside the model folder. */
static int st_shard_name_ok(const char *s)
{
    return s[0] && !strchr(s, '/') && !strstr(s, "..") && strcmp(s, ".") != 0;
}

static long st_file_index(const core_st_t *st, const char *label)
{
    for (size_t i = 0; i < st->n_files; i++)
        if (strcmp(st->labels[i], label) == 0)
            return (long)i;
    return -1;
}

/* Opens every shard named by weight_map once, then checks each listed tensor is in it. */
static rc_t st_open_shards(core_st_t *st, const char *dir, json_t *map, const char *ipath,
                           core_err_t *err)
{
    const char *k;
    json_t *v;
    if (json_object_size(map) > CORE_ST_MAX_TENSORS)
        return core_err(err, RC_LIMIT, "%s: weight_map lists too many tensors", ipath);
    json_object_foreach(map, k, v)
    {
        if (!json_is_string(v) || !st_shard_name_ok(json_string_value(v)))
            return core_err(err, RC_FORMAT,
                            "%s: weight_map['%s'] must be a plain file name in the folder", ipath,
                            k);
        const char *shard = json_string_value(v);
        if (st_file_index(st, shard) >= 0)
            continue;
        char *path = st_path_join(dir, shard);
        if (!path)
            return core_err(err, RC_NOMEM, "%s: out of memory", ipath);
        rc_t rc = st_open_into(st, path, shard, err);
        free(path);
        if (rc)
            return rc;
    }
    rc_t rc = st_index_build(st, err);
    if (rc)
        return rc;
    json_object_foreach(map, k, v)
    {
        long i = st_find_index(st, k);
        const char *shard = json_string_value(v);
        if (i < 0 || strcmp(st->labels[st->file_of[i]], shard) != 0)
            return core_err(err, RC_FORMAT, "%s: tensor '%s' listed in weight_map is not in %s",
                            ipath, k, shard);
    }
    return RC_OK;
}

static rc_t st_open_index(core_st_t *st, const char *dir, const char *ipath, core_err_t *err)
{
    char *text = NULL;
    size_t len = 0;
    rc_t rc = st_read_text(ipath, &text, &len, err);
    if (rc)
        return rc;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return core_err(err, RC_FORMAT, "%s: %s (line %d)", ipath, jerr.text, jerr.line);
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(root) || !json_is_object(map))
        rc = core_err(err, RC_FORMAT, "%s: \"weight_map\" object missing", ipath);
    else
        rc = st_open_shards(st, dir, map, ipath, err);
    json_decref(root);
    return rc;
}

rc_t core_st_open_dir(const char *dir, core_st_t **out, core_err_t *err)
{
    *out = NULL;
    char *single = st_path_join(dir, "model.safetensors");
    char *index = st_path_join(dir, "model.safetensors.index.json");
    core_st_t *st = NULL;
    rc_t rc = RC_OK;
    if (!single || !index) {
        rc = core_err(err, RC_NOMEM, "%s: out of memory", dir);
        goto out;
    }
    if (access(single, F_OK) == 0) {
        rc = core_st_open_file(single, out, err);
        goto out;
    }
    if (access(index, F_OK) != 0) {
        rc = core_err(err, RC_NOT_FOUND,
                      "%s: neither model.safetensors nor "
                      "model.safetensors.index.json found",
                      dir);
        goto out;
    }
    st = st_new(NULL);
    if (!st) {
        rc = core_err(err, RC_NOMEM, "%s: out of memory", dir);
        goto out;
    }
    rc = st_open_index(st, dir, index, err);
    if (rc) {
        core_st_free(st);
        goto out;
    }
    *out = st;
out:
    free(single);
    free(index);
    return rc;
}

size_t core_st_count(const core_st_t *st)
{
    return st->n;
}

const core_st_tensor_t *core_st_at(const core_st_t *st, size_t i)
{
    return i < st->n ? &st->t[i] : NULL;
}

const core_st_tensor_t *core_st_find(const core_st_t *st, const char *name)
{
    long i = st_find_index(st, name);
    return i < 0 ? NULL : &st->t[i];
}

void core_st_release(const core_st_tensor_t *t)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)t->data + page - 1) & ~(page - 1);
    uintptr_t hi = ((uintptr_t)t->data + t->n_bytes) & ~(page - 1);
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
}
