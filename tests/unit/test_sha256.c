/* test_sha256.c - core/sha256 against the FIPS 180-4 / NIST example vectors, on both the
 * portable path (ADAPTERD_SHA256_PORTABLE=1) and the default path (the SHA extensions on a
 * CPU that has them), plus randomized comparisons of the two paths. */
#include "tests/unit/harness.h"

#include <cpuid.h>
#include <stdint.h>

#include "core/sha256.h"
#include "core/sha256_int.h"
#include "tests/unit/st_write.h"

static void hash_hex(const void *data, size_t len, char hex[65])
{
    core_sha256_t c;
    uint8_t d[32];
    core_sha256_init(&c);
    core_sha256_update(&c, data, len);
    core_sha256_final(&c, d);
    core_sha256_hex(d, hex);
}

TEST(empty)
{
    char hex[65];
    hash_hex("", 0, hex);
    ASSERT_STREQ(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(abc)
{
    char hex[65];
    hash_hex("abc", 3, hex);
    ASSERT_STREQ(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(two_blocks_448_bits)
{
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    char hex[65];
    hash_hex(m, strlen(m), hex);
    ASSERT_STREQ(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(million_a_in_odd_chunks)
{
    static char a[1000];
    memset(a, 'a', sizeof a);
    core_sha256_t c;
    core_sha256_init(&c);
    /* chunks of 1..997 bytes exercise every buffer boundary */
    size_t done = 0, step = 1;
    while (done < 1000000) {
        size_t n = step < 1000000 - done ? step : 1000000 - done;
        core_sha256_update(&c, a, n);
        done += n;
        step = step % 997 + 1;
    }
    uint8_t d[32];
    char hex[65];
    core_sha256_final(&c, d);
    core_sha256_hex(d, hex);
    ASSERT_STREQ(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(padding_boundaries_match_one_shot)
{
    /* lengths 55, 56, 63, 64 straddle the length field; byte-by-byte == one shot */
    static uint8_t m[130];
    for (size_t i = 0; i < sizeof m; i++)
        m[i] = (uint8_t)(i * 7 + 3);
    size_t lens[] = {55, 56, 57, 63, 64, 65, 119, 120, 128};
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        char one[65], bytes[65];
        hash_hex(m, lens[k], one);
        core_sha256_t c;
        uint8_t d[32];
        core_sha256_init(&c);
        for (size_t i = 0; i < lens[k]; i++)
            core_sha256_update(&c, m + i, 1);
        core_sha256_final(&c, d);
        core_sha256_hex(d, bytes);
        ASSERT_STREQ(one, bytes);
    }
    char hex[65];
    /* 896-bit NIST vector */
    const char *m2 = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmn"
                     "opqklmnopqrlmnopqrsmnopqrstnopqrstu";
    hash_hex(m2, strlen(m2), hex);
    ASSERT_STREQ(hex, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

TEST(file)
{
    ASSERT_EQ(stw_mkdirs("tests/tmp/sha"), 0);
    ASSERT_EQ(stw_write_text("tests/tmp/sha/abc.txt", "abc"), 0);
    char hex[65];
    core_err_t eb, *e = &eb;
    ASSERT_RC(core_sha256_file("tests/tmp/sha/abc.txt", hex, e), RC_OK, e);
    ASSERT_STREQ(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    ASSERT_RC(core_sha256_file("tests/tmp/sha/missing", hex, e), RC_NOT_FOUND, e);
    ASSERT(strstr(e->msg, "missing") != NULL);
}

/* ---- both paths ------------------------------------------------------------------ */

/* The path is chosen at core_sha256_init, so flipping the variable between hashes is
 * enough. Each TEST runs in its own process, so this never leaks into other tests. */
static void use_portable(int on)
{
    if (on)
        ASSERT_EQ(setenv("ADAPTERD_SHA256_PORTABLE", "1", 1), 0);
    else
        ASSERT_EQ(unsetenv("ADAPTERD_SHA256_PORTABLE"), 0);
}

/* the same CPUID check as core/sha256.c */
static int cpu_has_sha(void)
{
    unsigned a, b, c, d;
    int sse = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_1) && (c & bit_SSSE3);
    return sse && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_SHA);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rng_next(void) /* xorshift64*: reproducible across runs */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dULL;
}

/* Hash len bytes fed in random-sized update calls (0..len bytes each, zero included). */
static void hash_split_hex(const uint8_t *data, size_t len, char hex[65])
{
    core_sha256_t c;
    uint8_t d[32];
    core_sha256_init(&c);
    size_t done = 0;
    while (done < len) {
        size_t n = (size_t)(rng_next() % (len - done + 1));
        /* mostly short pieces, so the partial-block buffer sees every fill level */
        if (rng_next() % 2)
            n %= 130;
        core_sha256_update(&c, data + done, n);
        done += n;
    }
    core_sha256_final(&c, d);
    core_sha256_hex(d, hex);
}

TEST(fips_vectors_both_paths)
{
    static const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    static const char *m896 =
        "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmn"
        "opqklmnopqrlmnopqrsmnopqrstnopqrstu";
    static char million[1000000];
    memset(million, 'a', sizeof million);
    for (int portable = 1; portable >= 0; portable--) {
        use_portable(portable);
        char hex[65];
        hash_hex("", 0, hex);
        ASSERT_STREQ(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        hash_hex("abc", 3, hex);
        ASSERT_STREQ(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        hash_hex(m448, strlen(m448), hex);
        ASSERT_STREQ(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
        hash_hex(m896, strlen(m896), hex);
        ASSERT_STREQ(hex, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
        /* one call: 15625 blocks in one run */
        hash_hex(million, sizeof million, hex);
        ASSERT_STREQ(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
        /* misaligned start: the block function must not assume 16-byte alignment */
        static char shifted[1000000 + 3];
        memset(shifted, 'a', sizeof shifted);
        hash_hex(shifted + 3, 1000000, hex);
        ASSERT_STREQ(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    }
}

TEST(ni_block_function_direct)
{
    if (!cpu_has_sha()) {
        fprintf(stderr, "CPU has no SHA extensions: nothing to check\n");
        return;
    }
    /* the 448-bit vector padded by hand to two blocks (FIPS 180-4 5.1.1), at an odd
     * address, compressed in one call */
    static uint8_t raw[1 + 128];
    uint8_t *blk = raw + 1;
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    memset(raw, 0, sizeof raw);
    memcpy(blk, m, 56);
    blk[56] = 0x80;
    blk[126] = 0x01; /* 448 bits = 0x1c0, big-endian in the last 8 bytes */
    blk[127] = 0xc0;
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    core__sha256_blocks_ni(h, blk, 2);
    static const uint32_t want[8] = {0x248d6a61, 0xd20638b8, 0xe5c02693, 0x0c3e6039,
                                     0xa33ce459, 0x64ff2167, 0xf6ecedd4, 0x19db06c1};
    for (int i = 0; i < 8; i++)
        ASSERT_EQ(h[i], want[i]);
    /* zero blocks leaves the state alone */
    core__sha256_blocks_ni(h, blk, 0);
    for (int i = 0; i < 8; i++)
        ASSERT_EQ(h[i], want[i]);
}

TEST(random_lengths_and_splits_match_portable)
{
    /* 16 spare bytes so every message can start at any offset mod 16 */
    static uint8_t buf[5000 + 16];
    for (int iter = 0; iter < 400; iter++) {
        size_t len = (size_t)(rng_next() % 5001);
        size_t off = (size_t)(rng_next() % 16);
        for (size_t i = 0; i < len; i++)
            buf[off + i] = (uint8_t)rng_next();
        char port_one[65], port_split[65], fast_one[65], fast_split[65];
        use_portable(1);
        hash_hex(buf + off, len, port_one);
        hash_split_hex(buf + off, len, port_split);
        use_portable(0);
        hash_hex(buf + off, len, fast_one);
        hash_split_hex(buf + off, len, fast_split);
        if (strcmp(port_one, fast_one) != 0)
            fprintf(stderr, "iter %d len %zu off %zu\n", iter, len, off);
        ASSERT_STREQ(port_one, fast_one);
        ASSERT_STREQ(port_one, port_split);
        ASSERT_STREQ(port_one, fast_split);
    }
}

TEST(file_larger_than_read_buffer)
{
    /* 2 MiB + 12345 bytes: two full 1 MiB reads and a partial one. The digest is
     * hashlib.sha256(bytes(((i*31 + (i>>8)) & 255) for i in range(N))).hexdigest(). */
    size_t n = 2 * 1048576 + 12345;
    uint8_t *data = malloc(n);
    ASSERT(data != NULL);
    for (size_t i = 0; i < n; i++)
        data[i] = (uint8_t)((i * 31 + (i >> 8)) & 255);
    ASSERT_EQ(stw_mkdirs("tests/tmp/sha"), 0);
    ASSERT_EQ(stw_write_bytes("tests/tmp/sha/big.bin", data, n), 0);
    free(data);
    const char *want = "2592fe184c82d148ad4328a07b635affc168d3e65bddc5c0c565d2bb37302090";
    for (int portable = 1; portable >= 0; portable--) {
        use_portable(portable);
        char hex[65];
        core_err_t eb, *e = &eb;
        ASSERT_RC(core_sha256_file("tests/tmp/sha/big.bin", hex, e), RC_OK, e);
        ASSERT_STREQ(hex, want);
    }
    remove("tests/tmp/sha/big.bin");
    /* a directory opens but cannot be read: the read error names the path */
    core_err_t eb, *e = &eb;
    char hex[65];
    ASSERT_RC(core_sha256_file("tests/tmp/sha", hex, e), RC_IO, e);
    ASSERT(strstr(e->msg, "tests/tmp/sha") != NULL);
    ASSERT(strstr(e->msg, "read") != NULL);
}
