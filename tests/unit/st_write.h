/* st_write.h - tiny safetensors/file writers for C unit tests (header-only, static).
 *
 * stw_write() lays out well-formed files (offsets assigned in order); stw_write_raw()
 * writes any header text and data bytes verbatim, for hostile cases. Paths go under
 * tests/tmp/ (gitignored); stw_mkdirs() creates the folders. All return 0 on success,
 * -1 on an I/O error. Test-only code: not for untrusted input. */
#ifndef TESTS_ST_WRITE_H
#define TESTS_ST_WRITE_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    const char *name;
    const char *dtype; /* "F32", "F16", "BF16", "I32", ... */
    int n_dims;
    int64_t shape[8];
    const void *data; /* n_bytes little-endian bytes */
    size_t n_bytes;
} stw_tensor_t;

/* mkdir -p */
static inline int stw_mkdirs(const char *path)
{
    char buf[1024];
    size_t n = strlen(path);
    if (n >= sizeof buf)
        return -1;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return -1;
            buf[i] = c;
        }
    }
    return 0;
}

static inline int stw_write_bytes(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    int ok = fwrite(buf, 1, len, f) == len;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

static inline int stw_write_text(const char *path, const char *text)
{
    return stw_write_bytes(path, text, strlen(text));
}

/* u64 LE n_header, then header bytes, then data bytes, verbatim. */
static inline int stw_write_raw_n(const char *path, uint64_t n_header, const char *header,
                                  size_t header_len, const void *data, size_t n_data)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)(n_header >> (8 * i));
    int ok = fwrite(len8, 1, 8, f) == 8;
    if (header_len)
        ok = ok && fwrite(header, 1, header_len, f) == header_len;
    if (n_data)
        ok = ok && fwrite(data, 1, n_data, f) == n_data;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

static inline int stw_write_raw(const char *path, const char *header, const void *data,
                                size_t n_data)
{
    size_t n = strlen(header);
    return stw_write_raw_n(path, n, header, n, data, n_data);
}

/* A valid file: tensors laid out in the given order. metadata_json is the text of the
 * __metadata__ object (e.g. "{\"format\":\"pt\"}") or NULL. */
static inline int stw_write(const char *path, const stw_tensor_t *t, size_t n,
                            const char *metadata_json)
{
    size_t cap = 256 + (metadata_json ? strlen(metadata_json) : 0);
    for (size_t i = 0; i < n; i++)
        cap += strlen(t[i].name) + strlen(t[i].dtype) + 128 + 24 * (size_t)t[i].n_dims;
    char *h = malloc(cap);
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += t[i].n_bytes;
    uint8_t *data = malloc(total ? total : 1);
    if (!h || !data) {
        free(h);
        free(data);
        return -1;
    }
    size_t pos = 0, off = 0;
    pos += (size_t)snprintf(h + pos, cap - pos, "{");
    if (metadata_json)
        pos += (size_t)snprintf(h + pos, cap - pos, "\"__metadata__\":%s%s", metadata_json,
                                n ? "," : "");
    for (size_t i = 0; i < n; i++) {
        pos += (size_t)snprintf(h + pos, cap - pos, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                                i ? "," : "", t[i].name, t[i].dtype);
        for (int d = 0; d < t[i].n_dims; d++)
            pos += (size_t)snprintf(h + pos, cap - pos, "%s%lld", d ? "," : "",
                                    (long long)t[i].shape[d]);
        pos += (size_t)snprintf(h + pos, cap - pos, "],\"data_offsets\":[%zu,%zu]}", off,
                                off + t[i].n_bytes);
        if (t[i].n_bytes)
            memcpy(data + off, t[i].data, t[i].n_bytes);
        off += t[i].n_bytes;
    }
    pos += (size_t)snprintf(h + pos, cap - pos, "}");
    int rc = stw_write_raw(path, h, data, total);
    free(h);
    free(data);
    return rc;
}

/* Exact f32 -> bf16 for values whose low 16 bits are zero (test fixtures). */
static inline uint16_t stw_bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)(u >> 16);
}

#endif
