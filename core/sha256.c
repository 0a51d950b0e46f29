/* sha256.c - SHA-256 as specified in FIPS 180-4 (sections 4.1.2, 4.2.2, 5.1.1, 6.2).
 *
 * Incremental: update buffers partial 64-byte blocks and hands every whole run of blocks
 * to one block function; final pads with 0x80, zeros and the 64-bit big-endian bit length.
 * Byte order is handled explicitly, so the portable code is endian-independent.
 *
 * Two block functions compute the same thing: the portable C below (~210 MB/s) and
 * core/sha256_ni.c with the x86 SHA extensions (~1.5 GB/s on the dev EPYC), used when the CPU has
 * SHA and SSE4.1 unless ADAPTERD_SHA256_PORTABLE=1 forces the portable one (so tests compare both
 * on one machine). Threads: a context belongs to one thread; the path choice is a process-wide
 * atomic, re-read at each core_sha256_init. */
#include "core/sha256.h"

#include <cpuid.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/sha256_int.h"

/* core_sha256_file reads this much per read(): large enough that syscalls and page-cache
 * copies are a small share of the hash time, small enough to sit in L2/L3. */
#define SHA256_FILE_CHUNK ((size_t)1 << 20)

static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotr(uint32_t x, int n)
{
    return (x >> n) | (x << (32 - n));
}

/* One 512-bit block (FIPS 180-4 6.2.2). */
static void sha256_block(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[64];
    for (int t = 0; t < 16; t++)
        w[t] = (uint32_t)p[4 * t] << 24 | (uint32_t)p[4 * t + 1] << 16 |
               (uint32_t)p[4 * t + 2] << 8 | p[4 * t + 3];
    for (int t = 16; t < 64; t++) {
        uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
        uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
        w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int t = 0; t < 64; t++) {
        uint32_t S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
        uint32_t ch = (e & f) ^ (~e & g);
        uint32_t t1 = hh + S1 + ch + sha256_k[t] + w[t];
        uint32_t S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
        uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
        uint32_t t2 = S0 + maj;
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
}

static void sha256_blocks_portable(uint32_t h[8], const uint8_t *p, size_t n_blocks)
{
    for (; n_blocks; n_blocks--, p += 64)
        sha256_block(h, p);
}

typedef void sha256_blocks_fn(uint32_t h[8], const uint8_t *p, size_t n_blocks);

static atomic_int g_ni_ok = -1; /* CPU check: -1 not yet, else 0/1 */
/* The block function for update/final. Chosen again at every init so a test can flip
 * ADAPTERD_SHA256_PORTABLE between hashes; both functions give identical results, so a
 * context that sees another thread's choice mid-stream still hashes correctly. */
static _Atomic(sha256_blocks_fn *) g_blocks = sha256_blocks_portable;

/* CPUID rather than __builtin_cpu_supports("sha"): clang (14, Debian 12) rejects the "sha"
 * feature name, and CC=clang should still build. */
static bool sha256_ni_available(void)
{
    int ok = atomic_load(&g_ni_ok);
    if (ok < 0) {
        unsigned a, b, c, d;
        bool sse = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_1) && (c & bit_SSSE3);
        bool sha = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_SHA);
        ok = sse && sha;
        atomic_store(&g_ni_ok, ok);
    }
    return ok;
}

static void sha256_blocks_choose(void)
{
    const char *force = getenv("ADAPTERD_SHA256_PORTABLE");
    bool portable = (force && strcmp(force, "1") == 0) || !sha256_ni_available();
    sha256_blocks_fn *want = portable ? sha256_blocks_portable : core__sha256_blocks_ni;
    /* store only on a change: every hash starts here, on any thread */
    if (atomic_load_explicit(&g_blocks, memory_order_relaxed) != want)
        atomic_store_explicit(&g_blocks, want, memory_order_relaxed);
}

static void sha256_blocks(uint32_t h[8], const uint8_t *p, size_t n_blocks)
{
    atomic_load_explicit(&g_blocks, memory_order_relaxed)(h, p, n_blocks);
}

void core_sha256_init(core_sha256_t *c)
{
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, h0, sizeof h0);
    c->n_bytes = 0;
    c->n_buf = 0;
    sha256_blocks_choose();
}

void core_sha256_update(core_sha256_t *c, const void *data, size_t len)
{
    const uint8_t *p = data;
    if (!len) /* data may then be NULL, which memcpy must not see */
        return;
    c->n_bytes += len;
    if (c->n_buf) {
        size_t take = 64 - c->n_buf < len ? 64 - c->n_buf : len;
        memcpy(c->buf + c->n_buf, p, take);
        c->n_buf += take;
        p += take;
        len -= take;
        if (c->n_buf < 64)
            return;
        sha256_blocks(c->h, c->buf, 1);
        c->n_buf = 0;
    }
    size_t n_blocks = len / 64;
    if (n_blocks) {
        sha256_blocks(c->h, p, n_blocks);
        p += n_blocks * 64;
        len -= n_blocks * 64;
    }
    if (len)
        memcpy(c->buf, p, len);
    c->n_buf = len;
}

void core_sha256_final(core_sha256_t *c, uint8_t out[32])
{
    uint64_t bits = c->n_bytes * 8;
    c->buf[c->n_buf++] = 0x80;
    if (c->n_buf > 56) {
        memset(c->buf + c->n_buf, 0, 64 - c->n_buf);
        sha256_blocks(c->h, c->buf, 1);
        c->n_buf = 0;
    }
    memset(c->buf + c->n_buf, 0, 56 - c->n_buf);
    for (int i = 0; i < 8; i++)
        c->buf[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_blocks(c->h, c->buf, 1);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(c->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(c->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)c->h[i];
    }
    c->n_buf = 0;
}

void core_sha256_hex(const uint8_t digest[32], char hex[65])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 15];
    }
    hex[64] = 0;
}

rc_t core_sha256_file(const char *path, char hex[65], core_err_t *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return core_err(err, errno == ENOENT ? RC_NOT_FOUND : RC_IO, "%s: %s", path,
                        strerror(errno));
    rc_t rc = RC_OK;
    /* heap, not stack: callers may run on small-stack worker threads */
    uint8_t *buf = malloc(SHA256_FILE_CHUNK);
    if (!buf) {
        rc = core_err(err, RC_NOMEM, "%s: read buffer", path);
        goto out;
    }
    /* the whole file is read once, front to back: let the kernel read ahead further */
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    core_sha256_t c;
    core_sha256_init(&c);
    for (;;) {
        ssize_t n = read(fd, buf, SHA256_FILE_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = core_err(err, RC_IO, "%s: read: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        core_sha256_update(&c, buf, (size_t)n);
    }
    uint8_t d[32];
    core_sha256_final(&c, d);
    core_sha256_hex(d, hex);
out:
    free(buf);
    close(fd);
    return rc;
}
