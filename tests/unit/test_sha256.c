/* test_sha256.c - core/sha256 against the FIPS 180-4 / NIST example vectors. */
#include "tests/unit/harness.h"

#include "core/sha256.h"
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
