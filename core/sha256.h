/* sha256.h - SHA-256 (FIPS 180-4), incremental. Used for blob hashes and the base-model
 * fingerprint. Threads: a context belongs to one thread. */
#ifndef CORE_SHA256_H
#define CORE_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t n_bytes;
    uint8_t buf[64];
    size_t n_buf;
} core_sha256_t;

void core_sha256_init(core_sha256_t *c);
void core_sha256_update(core_sha256_t *c, const void *data, size_t len);
void core_sha256_final(core_sha256_t *c, uint8_t out[32]);
/* hex: 65 bytes (64 hex digits + NUL). */
void core_sha256_hex(const uint8_t digest[32], char hex[65]);
/* Hash a whole file. */
#include "core/rc.h"
rc_t core_sha256_file(const char *path, char hex[65], core_err_t *err);

#endif
