/* test_safetensors.c - core/safetensors: exact dtype conversion, valid files and
 * sharded folders, and the hostile files of RELIABILITY.md F1-F8 and F11, all written
 * from C into tests/tmp/st/. */
#include "tests/unit/harness.h"

#include <time.h>

#include "core/safetensors.h"
#include "tests/unit/st_write.h"

#define DIR_ST "tests/tmp/st"

static void st_dir(void)
{
    ASSERT_EQ(stw_mkdirs(DIR_ST), 0);
}

static char *st_path(const char *name)
{
    static char buf[512];
    snprintf(buf, sizeof buf, DIR_ST "/%s", name);
    return buf;
}

/* Writes header+data under name and opens it; frees the result on success. */
static rc_t open_raw(const char *name, const char *header, const void *data, size_t n,
                     core_err_t *e)
{
    st_dir();
    const char *p = st_path(name);
    ASSERT_EQ(stw_write_raw(p, header, data, n), 0);
    core_st_t *st = NULL;
    e->msg[0] = 0;
    rc_t rc = core_st_open_file(p, &st, e);
    if (rc == RC_OK)
        ASSERT(st != NULL);
    else
        ASSERT(st == NULL);
    core_st_free(st);
    return rc;
}

/* Refused with want and the machine-readable reason; the message names the file and, if
 * given, the word. */
static void refused(const char *name, const char *reason, const char *header, const void *data,
                    size_t n, rc_t want, const char *word)
{
    core_err_t eb, *e = &eb;
    rc_t rc = open_raw(name, header, data, n, e);
    if (rc != want)
        HARNESS_FAIL("%s: rc %d (%s), want %d", name, rc, e->msg, want);
    if (strcmp(core_err_reason(e), reason) != 0)
        HARNESS_FAIL("%s: reason '%s', want '%s': %s", name, core_err_reason(e), reason, e->msg);
    if (!strstr(e->msg, name))
        HARNESS_FAIL("%s: message does not name the file: %s", name, e->msg);
    if (word && !strstr(e->msg, word))
        HARNESS_FAIL("%s: message lacks '%s': %s", name, word, e->msg);
}

static void accepted(const char *name, const char *header, const void *data, size_t n)
{
    core_err_t eb, *e = &eb;
    rc_t rc = open_raw(name, header, data, n, e);
    if (rc != RC_OK)
        HARNESS_FAIL("%s: refused (%d): %s", name, rc, e->msg);
}

static const uint8_t zeros[64];

/* ---- conversions ---------------------------------------------------------------- */

TEST(f16_exact)
{
    ASSERT_EQ(core_f16_to_f32(0x3c00), 1);
    ASSERT(core_f16_to_f32(0xc000) == -2.0f);
    ASSERT(core_f16_to_f32(0x7bff) == 65504.0f);
    ASSERT(core_f16_to_f32(0x3555) == 0.333251953125f);
    ASSERT(core_f16_to_f32(0x0001) == ldexpf(1.0f, -24));    /* smallest subnormal */
    ASSERT(core_f16_to_f32(0x03ff) == ldexpf(1023.0f, -24)); /* largest subnormal */
    ASSERT(core_f16_to_f32(0x8001) == -ldexpf(1.0f, -24));
    ASSERT(core_f16_to_f32(0x0400) == ldexpf(1.0f, -14)); /* smallest normal */
    float z = core_f16_to_f32(0x8000);
    ASSERT(z == 0.0f && signbit(z));
    ASSERT(isinf(core_f16_to_f32(0x7c00)) && core_f16_to_f32(0x7c00) > 0);
    ASSERT(isinf(core_f16_to_f32(0xfc00)) && core_f16_to_f32(0xfc00) < 0);
    ASSERT(isnan(core_f16_to_f32(0x7e00)));
    ASSERT(isnan(core_f16_to_f32(0x7c01)));
}

TEST(f16_matches_hardware_for_all_values)
{
    /* _Float16 is exact IEEE binary16 in gcc on x86-64: every bit pattern must agree. */
#if defined(__FLT16_MAX__)
    for (uint32_t h = 0; h < 65536; h++) {
        _Float16 x;
        uint16_t b = (uint16_t)h;
        memcpy(&x, &b, 2);
        float want = (float)x, got = core_f16_to_f32(b);
        if (isnan(want))
            ASSERT(isnan(got));
        else if (memcmp(&want, &got, 4) != 0)
            HARNESS_FAIL("f16 0x%04x: got %a want %a", h, got, want);
    }
#else
    ASSERT(core_f16_to_f32(0x3c00) == 1.0f);
#endif
}

TEST(bf16_exact)
{
    ASSERT(core_bf16_to_f32(0x3f80) == 1.0f);
    ASSERT(core_bf16_to_f32(0xc049) == -3.140625f);
    ASSERT(core_bf16_to_f32(0x0001) == ldexpf(1.0f, -133)); /* f32 subnormal */
    ASSERT(isinf(core_bf16_to_f32(0x7f80)));
    ASSERT(isnan(core_bf16_to_f32(0x7fc0)));
    for (uint32_t b = 0; b < 65536; b += 7) {
        float f = core_bf16_to_f32((uint16_t)b);
        uint32_t u;
        memcpy(&u, &f, 4);
        ASSERT_EQ(u, b << 16);
    }
}

/* ---- valid files ------------------------------------------------------------------ */

static int write_valid(const char *path)
{
    static const float f32[6] = {1.5f, -2.0f, 0.0f, 3.25f, 1e-8f, -65504.0f};
    static const uint16_t f16[4] = {0x3c00, 0x0001, 0xfc00, 0x3555};
    static uint16_t bf16[3];
    bf16[0] = stw_bf16_bits(1.0f);
    bf16[1] = stw_bf16_bits(-3.140625f);
    bf16[2] = 0x7f80;
    static const int32_t i32[2] = {7, -7};
    static const float scalar = 42.0f;
    stw_tensor_t t[] = {
        {"a.f32", "F32", 2, {2, 3}, f32, sizeof f32},
        {"b.f16", "F16", 1, {4}, f16, sizeof f16},
        {"c.bf16", "BF16", 3, {1, 3, 1}, bf16, sizeof bf16},
        {"d.i32", "I32", 1, {2}, i32, sizeof i32},
        {"e.scalar", "F32", 0, {0}, &scalar, 4},
        {"f.empty", "F32", 2, {0, 5}, NULL, 0},
    };
    return stw_write(path, t, sizeof t / sizeof t[0], "{\"format\":\"pt\"}");
}

TEST(valid_file_exact_values)
{
    st_dir();
    const char *p = st_path("valid.safetensors");
    ASSERT_EQ(write_valid(p), 0);
    core_st_t *st;
    core_err_t eb, *e = &eb;
    ASSERT_RC(core_st_open_file(p, &st, e), RC_OK, e);
    ASSERT_EQ(core_st_count(st), 6);
    ASSERT(core_st_find(st, "nope") == NULL);

    const core_st_tensor_t *a = core_st_find(st, "a.f32");
    ASSERT(a && a->dtype == CORE_DTYPE_F32 && a->n_dims == 2);
    ASSERT_EQ(a->shape[0], 2);
    ASSERT_EQ(a->shape[1], 3);
    ASSERT_EQ(a->n_elems, 6);
    ASSERT_EQ(a->n_bytes, 24);
    float buf[8];
    ASSERT_RC(core_st_to_f32(a, buf, e), RC_OK, e);
    ASSERT(buf[0] == 1.5f && buf[3] == 3.25f && buf[4] == 1e-8f && buf[5] == -65504.0f);

    const core_st_tensor_t *b = core_st_find(st, "b.f16");
    ASSERT(b && b->dtype == CORE_DTYPE_F16);
    ASSERT_RC(core_st_to_f32(b, buf, e), RC_OK, e);
    ASSERT(buf[0] == 1.0f && buf[1] == ldexpf(1.0f, -24) && isinf(buf[2]) && buf[2] < 0);
    ASSERT(buf[3] == 0.333251953125f);

    const core_st_tensor_t *c = core_st_find(st, "c.bf16");
    ASSERT(c && c->dtype == CORE_DTYPE_BF16 && c->n_elems == 3);
    ASSERT_RC(core_st_to_f32(c, buf, e), RC_OK, e);
    ASSERT(buf[0] == 1.0f && buf[1] == -3.140625f && isinf(buf[2]));

    const core_st_tensor_t *d = core_st_find(st, "d.i32");
    ASSERT(d && d->dtype == CORE_DTYPE_OTHER);
    ASSERT_STREQ(d->dtype_name, "I32");
    ASSERT_RC(core_st_to_f32(d, buf, e), RC_UNSUPPORTED, e);
    ASSERT(strstr(e->msg, "d.i32") && strstr(e->msg, "I32"));

    const core_st_tensor_t *s = core_st_find(st, "e.scalar");
    ASSERT(s && s->n_dims == 0 && s->n_elems == 1);
    ASSERT_RC(core_st_to_f32(s, buf, e), RC_OK, e);
    ASSERT(buf[0] == 42.0f);
    const core_st_tensor_t *z = core_st_find(st, "f.empty");
    ASSERT(z && z->n_elems == 0 && z->n_bytes == 0);

    for (size_t i = 0; i < core_st_count(st); i++)
        ASSERT(core_st_find(st, core_st_at(st, i)->name) == core_st_at(st, i));
    ASSERT(core_st_at(st, 6) == NULL);
    core_st_free(st);
}

TEST(parse_from_memory_borrows_buffer)
{
    static const char h[] = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    uint8_t buf[8 + sizeof h - 1 + 4];
    uint64_t n = sizeof h - 1;
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(n >> (8 * i));
    memcpy(buf + 8, h, n);
    float v = 2.5f;
    memcpy(buf + 8 + n, &v, 4);
    core_st_t *st;
    core_err_t eb, *e = &eb;
    ASSERT_RC(core_st_parse(buf, sizeof buf, "mem", &st, e), RC_OK, e);
    const core_st_tensor_t *t = core_st_find(st, "x");
    ASSERT(t && t->data == buf + 8 + n);
    core_st_free(st);
    ASSERT_RC(core_st_parse(buf, sizeof buf - 1, "mem", &st, e), RC_FORMAT, e);
    ASSERT(strstr(e->msg, "mem") != NULL);
}

TEST(many_tensors_lookup)
{
    enum { N = 3000 };
    static stw_tensor_t t[N];
    static char names[N][32];
    static float vals[N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "model.layers.%d.w", i);
        vals[i] = (float)i;
        t[i] = (stw_tensor_t){names[i], "F32", 1, {1}, &vals[i], 4};
    }
    st_dir();
    const char *p = st_path("many.safetensors");
    ASSERT_EQ(stw_write(p, t, N, NULL), 0);
    core_st_t *st;
    core_err_t eb, *e = &eb;
    ASSERT_RC(core_st_open_file(p, &st, e), RC_OK, e);
    for (int i = 0; i < N; i++) {
        const core_st_tensor_t *x = core_st_find(st, names[i]);
        ASSERT(x != NULL);
        float f;
        memcpy(&f, x->data, 4);
        ASSERT(f == (float)i);
    }
    core_st_free(st);
}

/* ---- folders ----------------------------------------------------------------------- */

static void write_shards(const char *dir)
{
    ASSERT_EQ(stw_mkdirs(dir), 0);
    static const float a[2] = {1, 2}, b[3] = {3, 4, 5};
    stw_tensor_t s1[] = {{"w.a", "F32", 1, {2}, a, 8}};
    stw_tensor_t s2[] = {{"w.b", "F32", 1, {3}, b, 12}, {"w.c", "F32", 1, {1}, a, 4}};
    char p[512];
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", dir);
    ASSERT_EQ(stw_write(p, s1, 1, NULL), 0);
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
    ASSERT_EQ(stw_write(p, s2, 2, NULL), 0);
}

static void write_index(const char *dir, const char *map)
{
    char p[512], text[1024];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    snprintf(text, sizeof text, "{\"metadata\":{\"total_size\":24},\"weight_map\":%s}", map);
    ASSERT_EQ(stw_write_text(p, text), 0);
}

TEST(open_dir_single)
{
    const char *dir = DIR_ST "/dir_single";
    ASSERT_EQ(stw_mkdirs(dir), 0);
    ASSERT_EQ(write_valid(DIR_ST "/dir_single/model.safetensors"), 0);
    core_st_t *st;
    core_err_t eb, *e = &eb;
    ASSERT_RC(core_st_open_dir(dir, &st, e), RC_OK, e);
    ASSERT_EQ(core_st_count(st), 6);
    core_st_free(st);
    ASSERT_RC(core_st_open_dir(DIR_ST "/no_such_dir", &st, e), RC_NOT_FOUND, e);
    ASSERT(st == NULL);
}

TEST(open_dir_sharded)
{
    const char *dir = DIR_ST "/dir_sharded";
    write_shards(dir);
    write_index(dir, "{\"w.a\":\"model-00001-of-00002.safetensors\","
                     "\"w.b\":\"model-00002-of-00002.safetensors\","
                     "\"w.c\":\"model-00002-of-00002.safetensors\"}");
    core_st_t *st;
    core_err_t eb, *e = &eb;
    ASSERT_RC(core_st_open_dir(dir, &st, e), RC_OK, e);
    ASSERT_EQ(core_st_count(st), 3);
    float buf[3];
    ASSERT_RC(core_st_to_f32(core_st_find(st, "w.b"), buf, e), RC_OK, e);
    ASSERT(buf[0] == 3 && buf[2] == 5);
    ASSERT_RC(core_st_to_f32(core_st_find(st, "w.a"), buf, e), RC_OK, e);
    ASSERT(buf[1] == 2);
    core_st_free(st);
}

static void dir_refused(const char *name, const char *map, rc_t want, const char *word)
{
    char dir[256];
    snprintf(dir, sizeof dir, DIR_ST "/%s", name);
    write_shards(dir);
    write_index(dir, map);
    core_st_t *st = NULL;
    core_err_t eb, *e = &eb;
    rc_t rc = core_st_open_dir(dir, &st, e);
    if (rc != want)
        HARNESS_FAIL("%s: rc %d (%s), want %d", name, rc, rc ? e->msg : "", want);
    ASSERT(st == NULL);
    if (!strstr(e->msg, word))
        HARNESS_FAIL("%s: message lacks '%s': %s", name, word, e->msg);
}

TEST(open_dir_hostile_index)
{
    dir_refused("shard_slash", "{\"w.a\":\"../dir_sharded/model-00001-of-00002.safetensors\"}",
                RC_FORMAT, "w.a");
    dir_refused("shard_abs", "{\"w.a\":\"/etc/passwd\"}", RC_FORMAT, "w.a");
    dir_refused("shard_dotdot", "{\"w.a\":\"..\"}", RC_FORMAT, "w.a");
    dir_refused("shard_notstr", "{\"w.a\":3}", RC_FORMAT, "w.a");
    dir_refused("shard_missing_file", "{\"w.a\":\"nope.safetensors\"}", RC_NOT_FOUND,
                "nope.safetensors");
    /* listed tensor absent from its shard */
    dir_refused("shard_absent",
                "{\"w.a\":\"model-00001-of-00002.safetensors\","
                "\"w.zz\":\"model-00001-of-00002.safetensors\"}",
                RC_FORMAT, "w.zz");
    /* listed under the wrong shard */
    dir_refused("shard_wrong",
                "{\"w.a\":\"model-00002-of-00002.safetensors\","
                "\"w.b\":\"model-00002-of-00002.safetensors\"}",
                RC_FORMAT, "w.a");
    dir_refused("shard_dupkey",
                "{\"w.a\":\"model-00001-of-00002.safetensors\","
                "\"w.a\":\"model-00001-of-00002.safetensors\"}",
                RC_FORMAT, "duplicate");
    dir_refused("shard_nomap", "[]", RC_FORMAT, "weight_map");
}

TEST(open_dir_tensor_in_two_shards)
{
    const char *dir = DIR_ST "/dir_two";
    write_shards(dir);
    static const float a[2] = {1, 2};
    stw_tensor_t s3[] = {{"w.a", "F32", 1, {2}, a, 8}};
    ASSERT_EQ(stw_write(DIR_ST "/dir_two/extra.safetensors", s3, 1, NULL), 0);
    write_index(dir, "{\"w.a\":\"model-00001-of-00002.safetensors\","
                     "\"w.b\":\"model-00002-of-00002.safetensors\","
                     "\"x\":\"extra.safetensors\"}");
    core_st_t *st = NULL;
    core_err_t eb, *e = &eb;
    ASSERT_RC(core_st_open_dir(dir, &st, e), RC_FORMAT, e);
    ASSERT(strstr(e->msg, "w.a") && strstr(e->msg, "extra.safetensors"));
}

/* ---- F1: header length --------------------------------------------------------------- */

TEST(f1_header_length)
{
    st_dir();
    core_st_t *st = NULL;
    core_err_t eb, *e = &eb;
    ASSERT_EQ(stw_write_bytes(st_path("f1_short"), "\x02\0\0\0", 4), 0);
    ASSERT_RC(core_st_open_file(st_path("f1_short"), &st, e), RC_FORMAT, e);
    ASSERT(strstr(e->msg, "f1_short") && strstr(e->msg, "too small"));
    ASSERT_EQ(stw_write_bytes(st_path("f1_empty"), "", 0), 0);
    ASSERT_RC(core_st_open_file(st_path("f1_empty"), &st, e), RC_FORMAT, e);

    ASSERT_EQ(stw_write_raw_n(st_path("f1_zero"), 0, NULL, 0, NULL, 0), 0);
    ASSERT_RC(core_st_open_file(st_path("f1_zero"), &st, e), RC_FORMAT, e);
    ASSERT_EQ(stw_write_raw_n(st_path("f1_max"), UINT64_MAX, "{}", 2, NULL, 0), 0);
    ASSERT_RC(core_st_open_file(st_path("f1_max"), &st, e), RC_LIMIT, e);
    ASSERT(strstr(e->msg, "too large"));
    ASSERT_EQ(stw_write_raw_n(st_path("f1_100m1"), 100000001ull, "{}", 2, NULL, 0), 0);
    ASSERT_RC(core_st_open_file(st_path("f1_100m1"), &st, e), RC_LIMIT, e);
    ASSERT_EQ(stw_write_raw_n(st_path("f1_beyond"), 3, "{}", 2, NULL, 0), 0);
    ASSERT_RC(core_st_open_file(st_path("f1_beyond"), &st, e), RC_FORMAT, e);
    ASSERT(strstr(e->msg, "invalid header length"));
    ASSERT(st == NULL);
    /* N + 8 == file size, zero tensors: valid (the PEFT layer refuses empty adapters) */
    accepted("f1_empty_ok", "{}", NULL, 0);
    accepted("f1_meta_only", "{\"__metadata__\":{\"format\":\"pt\"}}", NULL, 0);
}

/* ---- F2: header text ----------------------------------------------------------------- */

#define T1 "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"

TEST(f2_header_text)
{
    refused("f2_start", "invalid_header_start", "[" T1 "]", zeros, 4, RC_FORMAT, "start");
    /* leading whitespace: refused, as the reference validator does */
    refused("f2_leading_ws", "invalid_header_start", " " T1, zeros, 4, RC_FORMAT, "start");
    accepted("f2_trailing_spaces", T1 "    ", zeros, 4);
    accepted("f2_trailing_tab", T1 " \t", zeros, 4);
    refused("f2_utf8", "invalid_header", "{\"t\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
            zeros, 4, RC_FORMAT, "JSON");
    refused("f2_notjson", "invalid_header", "{not json}", zeros, 0, RC_FORMAT, "JSON");
    refused("f2_garbage", "invalid_header", T1 "x", zeros, 4, RC_FORMAT, "JSON");
    refused("f2_entry_array", "tensor_invalid_info", "{\"t\":[1,2]}", zeros, 0, RC_FORMAT, "'t'");
    refused("f2_unknown_field", "tensor_invalid_info",
            "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", zeros, 4,
            RC_FORMAT, "'x'");
    refused("f2_no_dtype", "bad_dtype", "{\"t\":{\"shape\":[1],\"data_offsets\":[0,4]}}", zeros, 4, RC_FORMAT,
            "dtype");
    /* depth 3000 */
    size_t depth = 3000;
    char *deep = malloc(2 * depth + 16);
    ASSERT(deep != NULL);
    size_t n = 0;
    n += (size_t)sprintf(deep, "{\"a\":");
    for (size_t i = 0; i < depth; i++)
        deep[n++] = '[';
    for (size_t i = 0; i < depth; i++)
        deep[n++] = ']';
    deep[n++] = '}';
    deep[n] = 0;
    refused("f2_deep", "invalid_header", deep, NULL, 0, RC_FORMAT, "nests");
    free(deep);
}

/* ---- F3: duplicates ---------------------------------------------------------------- */

TEST(f3_duplicates)
{
    refused("f3_same", "duplicate_key",
            "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
            "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
            zeros, 4, RC_FORMAT, "duplicate");
    /* the xz.aliyun polyglot: U8[4] and F32[1] over the same 4 bytes */
    refused("f3_u8_f32", "duplicate_key",
            "{\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
            "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
            zeros, 4, RC_FORMAT, "duplicate");
    refused("f3_meta", "duplicate_key", "{\"__metadata__\":{\"a\":\"1\"},\"__metadata__\":{\"a\":\"2\"}}", NULL, 0,
            RC_FORMAT, "duplicate");
    refused("f3_meta_key", "duplicate_key", "{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}", NULL, 0, RC_FORMAT,
            "duplicate");
}

/* ---- F4: offsets ----------------------------------------------------------------- */

#define E2(o1, o2)                                                                                 \
    "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":" o1 "},"                            \
    "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":" o2 "}}"

TEST(f4_offsets)
{
    refused("f4_gap", "invalid_offset", E2("[0,4]", "[8,12]"), zeros, 12, RC_FORMAT, "'b'");
    refused("f4_overlap", "invalid_offset",
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
            "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
            zeros, 12, RC_FORMAT, "'b'");
    refused("f4_out_of_file", "invalid_offset", E2("[0,4]", "[4,8]"), zeros, 4, RC_FORMAT, "past");
    refused("f4_end_lt_begin", "invalid_offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}",
            zeros, 4, RC_FORMAT, "'a'");
    refused("f4_negative", "invalid_offset", E2("[0,4]", "[-4,0]"), zeros, 8, RC_FORMAT, "'b'");
    refused("f4_float", "invalid_offset", E2("[0,4]", "[4.0,8]"), zeros, 8, RC_FORMAT, "'b'");
    refused("f4_huge", "invalid_offset", E2("[0,4]", "[4,9223372036854775808]"), zeros, 8, RC_FORMAT, "JSON");
    refused("f4_wrap", "invalid_offset",
            "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":"
            "[9223372036854775807,3]}}",
            zeros, 4, RC_FORMAT, "'a'");
    refused("f4_short_arr", "invalid_offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", zeros,
            4, RC_FORMAT, "'a'");
    /* unsorted but contiguous: accepted after sorting */
    accepted("f4_unsorted", E2("[4,8]", "[0,4]"), zeros, 8);
    /* zero-size tensor sharing its offset with the next: accepted (reads no bytes),
     * as the reference validator does */
    accepted("f4_zero_shared",
             "{\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
             zeros, 8);
}

TEST(f4_unsorted_data_pointers)
{
    st_dir();
    const char *p = st_path("f4_unsorted_ptr");
    float v[2] = {1.0f, 2.0f};
    ASSERT_EQ(stw_write_raw(p, E2("[4,8]", "[0,4]"), v, 8), 0);
    core_st_t *st;
    core_err_t eb, *e = &eb;
    ASSERT_RC(core_st_open_file(p, &st, e), RC_OK, e);
    float x;
    ASSERT_RC(core_st_to_f32(core_st_find(st, "a"), &x, e), RC_OK, e);
    ASSERT(x == 2.0f);
    ASSERT_RC(core_st_to_f32(core_st_find(st, "b"), &x, e), RC_OK, e);
    ASSERT(x == 1.0f);
    core_st_free(st);
}

/* ---- F5: shape and dtype vs bytes ----------------------------------------------------- */

TEST(f5_shape_dtype)
{
    refused("f5_i32_short", "tensor_invalid_info", "{\"t\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,4]}}",
            zeros, 4, RC_FORMAT, "'t'");
    refused("f5_wrap", "validation_overflow",
            "{\"t\":{\"dtype\":\"F32\",\"shape\":[4194305,4194305,211106198978564],"
            "\"data_offsets\":[0,16]}}",
            zeros, 16, RC_FORMAT, "overflow");
    refused("f5_2x_max", "validation_overflow",
            "{\"t\":{\"dtype\":\"U8\",\"shape\":[2,9223372036854775807],\"data_offsets\":[0,16]}}",
            zeros, 16, RC_FORMAT, "overflow");
    refused("f5_bits_overflow", "validation_overflow",
            "{\"t\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,16]}}",
            zeros, 16, RC_FORMAT, "overflow");
    refused("f5_f4_odd", "misaligned", "{\"t\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,1]}}", zeros,
            1, RC_FORMAT, "whole number of bytes");
    accepted("f5_f4_even", "{\"t\":{\"dtype\":\"F4\",\"shape\":[4],\"data_offsets\":[0,2]}}", zeros,
             2);
    refused("f5_f128", "bad_dtype", "{\"t\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]}}", zeros,
            16, RC_FORMAT, "F128");
    refused("f5_neg_dim", "tensor_invalid_info", "{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
            zeros, 4, RC_FORMAT, "shape");
    refused("f5_frac_dim", "tensor_invalid_info", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}",
            zeros, 4, RC_FORMAT, "shape");
    refused("f5_str_dim", "tensor_invalid_info", "{\"t\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}",
            zeros, 4, RC_FORMAT, "shape");
    refused("f5_nine_dims", "tensor_invalid_info",
            "{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
            zeros, 4, RC_FORMAT, "dimensions");
}

/* ---- F6: trailing bytes ------------------------------------------------------------- */

TEST(f6_trailing_bytes)
{
    refused("f6_polyglot", "metadata_incomplete_buffer", T1, "\0\0\0\0PK\x03\x04", 8, RC_FORMAT, "trailing");
    refused("f6_one_extra", "metadata_incomplete_buffer", "{}", zeros, 1, RC_FORMAT, "trailing");
}

/* ---- F7: metadata ------------------------------------------------------------------ */

TEST(f7_metadata)
{
    refused("f7_nonstring", "bad_metadata", "{\"__metadata__\":{\"n\":1}}", NULL, 0, RC_FORMAT, "'n'");
    refused("f7_notobject", "bad_metadata", "{\"__metadata__\":[\"a\"]}", NULL, 0, RC_FORMAT, "__metadata__");
    size_t big = 10u * 1000u * 1000u;
    char *h = malloc(big + 64);
    ASSERT(h != NULL);
    int n = sprintf(h, "{\"__metadata__\":{\"chat_template\":\"");
    memset(h + n, 'x', big);
    strcpy(h + n + big, "\"}}");
    refused("f7_huge", "metadata_too_large", h, NULL, 0, RC_LIMIT, "chat_template");
    free(h);
    /* a template is inert text: accepted and never evaluated */
    accepted("f7_template", "{\"__metadata__\":{\"chat_template\":\"{{ 7*7 }}{% raw %}\"}}", NULL,
             0);
}

/* ---- F8: header bloat ---------------------------------------------------------------- */

TEST(f8_too_many_tensors)
{
    size_t n = CORE_ST_MAX_TENSORS + 1;
    size_t cap = n * 80 + 16;
    char *h = malloc(cap);
    ASSERT(h != NULL);
    size_t pos = 0;
    h[pos++] = '{';
    for (size_t i = 0; i < n; i++)
        pos += (size_t)snprintf(
            h + pos, cap - pos,
            "%s\"t%zu\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[%zu,%zu]}", i ? "," : "",
            i, i, i + 1);
    h[pos++] = '}';
    h[pos] = 0;
    uint8_t *data = calloc(n, 1);
    ASSERT(data != NULL);
    st_dir();
    ASSERT_EQ(stw_write_raw(st_path("f8_bloat"), h, data, n), 0);
    core_st_t *st = NULL;
    core_err_t eb, *e = &eb;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ASSERT_RC(core_st_open_file(st_path("f8_bloat"), &st, e), RC_LIMIT, e);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ASSERT(st == NULL && strstr(e->msg, "too many tensors"));
    double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    fprintf(stderr, "# f8: refused %zu entries in %.1f ms\n", n, ms);
    ASSERT(ms < 5000); /* loose: ASan builds are slow; the release figure is reported */
    free(h);
    free(data);
}

/* ---- reasons, caps and the reference's edge cases ----------------------------------- */

TEST(f1_reasons)
{
    core_err_t eb, *e = &eb;
    core_st_t *st = NULL;
    static const struct {
        const char *name;
        uint64_t n;
        const char *header;
        const char *reason;
    } cases[] = {
        {"f1r_zero", 0, "", "invalid_header_start"}, /* "" does not start with '{' */
        {"f1r_max", UINT64_MAX, "{}", "header_too_large"},
        {"f1r_100m1", 100000001ull, "{}", "header_too_large"},
        {"f1r_beyond", 3, "{}", "invalid_header_length"},
    };
    st_dir();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *h = cases[i].header;
        ASSERT_EQ(stw_write_raw_n(st_path(cases[i].name), cases[i].n, h, strlen(h), NULL, 0), 0);
        ASSERT(core_st_open_file(st_path(cases[i].name), &st, e) != RC_OK);
        if (strcmp(core_err_reason(e), cases[i].reason) != 0)
            HARNESS_FAIL("%s: reason '%s', want '%s': %s", cases[i].name, core_err_reason(e),
                         cases[i].reason, e->msg);
    }
    ASSERT_EQ(stw_write_bytes(st_path("f1r_short"), "\x02\0\0\0", 4), 0);
    ASSERT(core_st_open_file(st_path("f1r_short"), &st, e) == RC_FORMAT);
    ASSERT_STREQ(core_err_reason(e), "header_too_small");
}

TEST(reason_prefix_only_known_names)
{
    core_err_t e;
    core_err(&e, RC_FORMAT, "adapter_config.json: r missing");
    ASSERT_STREQ(core_err_reason(&e), "");
    core_err(&e, RC_FORMAT, "not_a_reason: x");
    ASSERT_STREQ(core_err_reason(&e), "");
    ASSERT_EQ(core_err_r(&e, RC_LIMIT, "too_many_tensors", "%d", 7), RC_LIMIT);
    ASSERT_STREQ(e.msg, "too_many_tensors: 7");
    ASSERT_STREQ(core_err_reason(&e), "too_many_tensors");
    ASSERT_STREQ(core_err_reason(NULL), "");
}

/* Zero-size tensors: anywhere in the chain, even two at one offset or at the very end,
 * since they read no bytes (the reference accepts them; huntr F002). */
TEST(f4_zero_size_rules)
{
    accepted("f4z_two_same",
             "{\"z1\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
             "\"z2\":{\"dtype\":\"F32\",\"shape\":[3,0],\"data_offsets\":[0,0]},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
             zeros, 4);
    accepted("f4z_end",
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"z\":{\"dtype\":\"BF16\",\"shape\":[0],\"data_offsets\":[4,4]}}",
             zeros, 4);
    accepted("f4z_scalar", "{\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}",
             zeros, 4);
    /* ...but never inside another tensor's bytes */
    refused("f4z_inside", "invalid_offset",
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
            "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
            zeros, 8, RC_FORMAT, "'z'");
    refused("f4z_past_end", "invalid_offset",
            "{\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]}}", zeros, 4,
            RC_FORMAT, "'z'");
    /* a shape number past 2^63 is an overflow, not a syntax error */
    refused("f5_huge_dim", "validation_overflow",
            "{\"t\":{\"dtype\":\"F32\",\"shape\":[18446744073709551617],"
            "\"data_offsets\":[0,4]}}",
            zeros, 4, RC_FORMAT, "JSON");
}

/* Nesting deeper than a header ever needs is refused before jansson builds it; brackets
 * inside strings do not count. */
TEST(f2_depth_prescan)
{
    refused("f2_depth4", "invalid_header",
            "{\"t\":{\"dtype\":\"F32\",\"shape\":[[1]],\"data_offsets\":[0,4]}}", zeros, 4,
            RC_FORMAT, "nests");
    refused("f2_meta_obj", "bad_metadata", "{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}", NULL, 0,
            RC_FORMAT, "'a'");
    accepted("f2_brackets_in_name",
             "{\"[[[[{{\\\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", zeros, 4);
}

/* Callers tighten the caps: an adapter's few dozen tensors and a 16 MiB header. The count
 * is refused before the JSON is parsed (no table, no jansson objects). */
TEST(params_tighten_caps)
{
    core_st_params_t p = core_st_default_params();
    ASSERT_EQ(p.max_tensors, CORE_ST_MAX_TENSORS);
    ASSERT_EQ(p.max_header, CORE_ST_MAX_HEADER);
    p.max_tensors = 2;
    p.max_header = 200;
    st_dir();
    const char *path = st_path("caps");
    core_err_t eb, *e = &eb;
    core_st_t *st = NULL;
    ASSERT_EQ(stw_write_raw(path, E2("[0,4]", "[4,8]"), zeros, 8), 0);
    ASSERT_RC(core_st_open_file_ex(path, &p, &st, e), RC_OK, e);
    core_st_free(st);
    const char *three = "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                        "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
                        "\"c\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}";
    ASSERT_EQ(stw_write_raw(path, three, zeros, 3), 0);
    ASSERT(core_st_open_file_ex(path, &p, &st, e) == RC_LIMIT && st == NULL);
    ASSERT_STREQ(core_err_reason(e), "too_many_tensors");
    /* __metadata__ is not a tensor */
    p.max_tensors = 3;
    ASSERT_EQ(stw_write_raw(path, "{\"__metadata__\":{},\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
                                  "\"data_offsets\":[0,1]},\"b\":{\"dtype\":\"U8\",\"shape\":"
                                  "[1],\"data_offsets\":[1,2]},\"c\":{\"dtype\":\"U8\",\"shape\""
                                  ":[1],\"data_offsets\":[2,3]}}",
                            zeros, 3),
              0);
    ASSERT_RC(core_st_open_file_ex(path, &p, &st, e), RC_OK, e);
    core_st_free(st);
    /* the header cap; a cap can only tighten, never loosen, the defaults */
    char big[400];
    memset(big, ' ', sizeof big - 1);
    big[sizeof big - 1] = 0;
    memcpy(big, "{}", 2);
    ASSERT_EQ(stw_write_raw(path, big, NULL, 0), 0);
    ASSERT(core_st_open_file_ex(path, &p, &st, e) == RC_LIMIT);
    ASSERT_STREQ(core_err_reason(e), "header_too_large");
    p.max_header = UINT64_MAX;
    ASSERT_EQ(stw_write_raw_n(path, 100000001ull, "{}", 2, NULL, 0), 0);
    ASSERT(core_st_parse_ex((const uint8_t *)"\x01\xe1\xf5\x05\0\0\0\0{}", 10, "mem", &p, &st,
                            e) == RC_LIMIT);
    ASSERT_STREQ(core_err_reason(e), "header_too_large");
}

/* ---- F11: dtypes ------------------------------------------------------------------ */

TEST(f11_nonfinite_values_are_data)
{
    /* the format does not check values; NaN/Inf are refused by the adapter layer */
    uint32_t nan = 0x7fc00000u;
    accepted("f11_nan", T1, &nan, 4);
}

/* core_st_release is only a residency hint: a released multi-page tensor must read back
 * the same bytes (the kernel pages them in again from the file). */
TEST(release_keeps_data_readable)
{
    core_err_t eb, *e = &eb;
    enum { N = 3 * 4096 }; /* floats: several whole pages inside the tensor */
    float *vals = malloc(N * sizeof *vals);
    for (int i = 0; i < N; i++)
        vals[i] = (float)i * 0.25f - 7.0f;
    st_dir();
    const char *p = st_path("release.safetensors");
    stw_tensor_t t = {.name = "w", .dtype = "F32", .n_dims = 1, .shape = {N}, .data = vals,
                      .n_bytes = N * sizeof(float)};
    ASSERT_EQ(stw_write(p, &t, 1, NULL), 0);
    core_st_t *st = NULL;
    ASSERT_RC(core_st_open_file(p, &st, e), RC_OK, e);
    const core_st_tensor_t *w = core_st_find(st, "w");
    ASSERT(w != NULL);
    float *out = malloc(N * sizeof *out);
    ASSERT_RC(core_st_to_f32(w, out, e), RC_OK, e);
    core_st_release(w);
    core_st_release(w); /* twice is harmless */
    memset(out, 0, N * sizeof *out);
    ASSERT_RC(core_st_to_f32(w, out, e), RC_OK, e);
    ASSERT(memcmp(out, vals, N * sizeof *out) == 0);
    core_st_free(st);
    free(out);
    free(vals);
}
