/* test_multipart.c - api/multipart: the streaming multipart/form-data parser.
 *
 * Bodies are built like curl -F builds them; every parse collects the parts (names and
 * data byte-exactly) and an event hash, and checks that the result does not depend on how
 * the body was cut into feeds: whole, byte by byte, every two-way split, random chunks.
 * The hostile side: malformed boundaries, heads, delimiters, truncations, limits, refusing
 * callbacks, and a fixed-seed mutation loop (run under ASan/UBSan). */
#include "tests/unit/harness.h"

#include <stdbool.h>
#include <stdint.h>

#include "api/multipart.h"

#define B_CURL "------------------------d74496d66958873e"

/* ---- a growable byte buffer ---- */

typedef struct {
    char *p;
    size_t n, cap;
} buf_t;

static void buf_add(buf_t *b, const void *d, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        ASSERT(b->p != NULL);
    }
    if (n)
        memcpy(b->p + b->n, d, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void buf_str(buf_t *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

/* ---- a fixed-seed PRNG (xorshift64*) ---- */

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* ---- bodies ---- */

typedef struct {
    const char *name;
    const char *filename; /* NULL: a plain field */
    const char *data;
    size_t len;
} part_t;

/* What curl -F name=@file sends: preamble and epilogue may be NULL. */
static buf_t body_build(const char *boundary, const part_t *parts, int n, const char *preamble,
                        const char *epilogue)
{
    buf_t b = {0};
    buf_add(&b, "", 0);
    if (preamble)
        buf_str(&b, preamble);
    for (int i = 0; i < n; i++) {
        buf_str(&b, i ? "\r\n--" : "--");
        buf_str(&b, boundary);
        buf_str(&b, "\r\nContent-Disposition: form-data; name=\"");
        buf_str(&b, parts[i].name);
        buf_str(&b, "\"");
        if (parts[i].filename) {
            buf_str(&b, "; filename=\"");
            buf_str(&b, parts[i].filename);
            buf_str(&b, "\"\r\nContent-Type: application/octet-stream");
        }
        buf_str(&b, "\r\n\r\n");
        buf_add(&b, parts[i].data, parts[i].len);
    }
    buf_str(&b, "\r\n--");
    buf_str(&b, boundary);
    buf_str(&b, "--\r\n");
    if (epilogue)
        buf_str(&b, epilogue);
    return b;
}

/* ---- the collector: callbacks that record what the parser hands out ---- */

#define COL_MAX 8

typedef struct {
    int n_parts, n_ended;
    bool in_part;
    int bad; /* protocol violations seen by the callbacks */
    char name[COL_MAX][API_MP_NAME_MAX + 1];
    buf_t data[COL_MAX];
    uint64_t hash; /* FNV-1a over events and data bytes (not over piece boundaries) */
    /* refusals, -1 for none: refuse on_part of part k, on_data once part k has more than
     * refuse_data_after bytes, on_part_end of part k */
    int refuse_part, refuse_data, refuse_end;
    size_t refuse_data_after;
    int n_calls_after_refusal;
    bool refused;
} col_t;

static void col_init(col_t *c)
{
    memset(c, 0, sizeof *c);
    c->hash = 1469598103934665603ull;
    c->refuse_part = c->refuse_data = c->refuse_end = -1;
}

static void col_free(col_t *c)
{
    for (int i = 0; i < COL_MAX; i++)
        free(c->data[i].p);
    memset(c->data, 0, sizeof c->data);
}

static void col_hash(col_t *c, const void *d, size_t n)
{
    const unsigned char *s = d;
    for (size_t i = 0; i < n; i++)
        c->hash = (c->hash ^ s[i]) * 1099511628211ull;
}

static bool col_on_part(void *user, const char *name, core_err_t *err)
{
    col_t *c = user;
    c->n_calls_after_refusal += c->refused;
    c->bad += c->in_part || strlen(name) == 0 || strlen(name) > API_MP_NAME_MAX;
    c->in_part = true;
    col_hash(c, "P", 1);
    col_hash(c, name, strlen(name) + 1);
    if (c->n_parts < COL_MAX)
        snprintf(c->name[c->n_parts], sizeof c->name[0], "%s", name);
    c->n_parts++;
    if (c->n_parts - 1 == c->refuse_part) {
        c->refused = true;
        snprintf(err->msg, sizeof err->msg, "part '%s' not wanted", name);
        return false;
    }
    return true;
}

static bool col_on_data(void *user, const char *data, size_t len, core_err_t *err)
{
    col_t *c = user;
    int k = c->n_parts - 1;
    c->n_calls_after_refusal += c->refused;
    c->bad += !c->in_part || len == 0;
    col_hash(c, data, len);
    if (k >= 0 && k < COL_MAX)
        buf_add(&c->data[k], data, len);
    if (k == c->refuse_data && k < COL_MAX && c->data[k].n > c->refuse_data_after) {
        c->refused = true;
        snprintf(err->msg, sizeof err->msg, "part too large");
        return false;
    }
    return true;
}

static bool col_on_part_end(void *user, core_err_t *err)
{
    col_t *c = user;
    c->n_calls_after_refusal += c->refused;
    c->bad += !c->in_part;
    c->in_part = false;
    col_hash(c, "E", 1);
    c->n_ended++;
    if (c->n_ended - 1 == c->refuse_end) {
        c->refused = true;
        snprintf(err->msg, sizeof err->msg, "end refused");
        return false;
    }
    (void)err;
    return true;
}

static api_mp_callbacks_t col_callbacks(col_t *c)
{
    api_mp_callbacks_t cb = {c, col_on_part, col_on_data, col_on_part_end};
    return cb;
}

/* ---- parsing helpers ---- */

/* Feed body cut at the given ascending offsets, then finish; stops at the first error. */
static rc_t parse_cuts(const char *boundary, const char *body, size_t len, const size_t *cuts,
                       size_t n_cuts, col_t *c, core_err_t *err)
{
    api_mp_callbacks_t cb = col_callbacks(c);
    api_mp_t *p = NULL;
    rc_t rc = api__mp_new(boundary, &cb, &p, err);
    ASSERT_RC(rc, RC_OK, err);
    size_t at = 0;
    for (size_t k = 0; k <= n_cuts && rc == RC_OK; k++) {
        size_t end = k < n_cuts ? cuts[k] : len;
        rc = api__mp_feed(p, body + at, end - at, err);
        at = end;
    }
    if (rc == RC_OK)
        rc = api__mp_finish(p, err);
    api__mp_free(p);
    return rc;
}

static rc_t parse_whole(const char *boundary, const char *body, size_t len, col_t *c,
                        core_err_t *err)
{
    return parse_cuts(boundary, body, len, NULL, 0, c, err);
}

/* Pieces of 1..max_chunk bytes drawn from seed; max_chunk 1: byte by byte. */
static rc_t parse_random(const char *boundary, const char *body, size_t len, uint64_t seed,
                         size_t max_chunk, col_t *c, core_err_t *err)
{
    size_t cap = len + 1, n = 0, at = 0;
    size_t *cuts = malloc(cap * sizeof *cuts);
    ASSERT(cuts != NULL);
    while (at < len) {
        at += max_chunk == 1 ? 1 : 1 + rng_next(&seed) % max_chunk;
        if (at < len)
            cuts[n++] = at;
    }
    rc_t rc = parse_cuts(boundary, body, len, cuts, n, c, err);
    free(cuts);
    return rc;
}

static void expect_parts(col_t *c, const part_t *parts, int n)
{
    ASSERT_EQ(c->bad, 0);
    ASSERT_EQ(c->n_parts, n);
    ASSERT_EQ(c->n_ended, n);
    ASSERT(!c->in_part);
    for (int i = 0; i < n && i < COL_MAX; i++) {
        ASSERT_STREQ(c->name[i], parts[i].name);
        ASSERT_EQ(c->data[i].n, parts[i].len);
        ASSERT(parts[i].len == 0 || memcmp(c->data[i].p, parts[i].data, parts[i].len) == 0);
    }
}

/* The body parses to parts whole, byte by byte, at every two-way split and in random
 * chunks of up to 64 KiB and of up to 7 bytes. */
static void check_all_chunkings(const char *boundary, const buf_t *body, const part_t *parts, int n)
{
    core_err_t err = {{0}};
    col_t c;
    col_init(&c);
    ASSERT_RC(parse_whole(boundary, body->p, body->n, &c, &err), RC_OK, &err);
    expect_parts(&c, parts, n);
    uint64_t want = c.hash;
    col_free(&c);

    col_init(&c);
    ASSERT_RC(parse_random(boundary, body->p, body->n, 1, 1, &c, &err), RC_OK, &err);
    expect_parts(&c, parts, n);
    col_free(&c);

    for (size_t cut = 0; cut <= body->n; cut++) {
        col_init(&c);
        ASSERT_RC(parse_cuts(boundary, body->p, body->n, &cut, 1, &c, &err), RC_OK, &err);
        if (c.hash != want)
            expect_parts(&c, parts, n); /* names the difference */
        ASSERT_EQ(c.hash, want);
        ASSERT_EQ(c.bad, 0);
        col_free(&c);
    }
    for (uint64_t seed = 1; seed <= 200; seed++) {
        col_init(&c);
        size_t max = seed % 2 ? 7 : 65536;
        ASSERT_RC(parse_random(boundary, body->p, body->n, seed, max, &c, &err), RC_OK, &err);
        ASSERT_EQ(c.hash, want);
        ASSERT_EQ(c.bad, 0);
        col_free(&c);
    }
}

/* Parses whole and byte by byte; both must give rc want and the same message. */
static void expect_rc(const char *boundary, const char *body, size_t len, rc_t want,
                      core_err_t *err)
{
    core_err_t err1 = {{0}};
    col_t c;
    col_init(&c);
    ASSERT_RC(parse_whole(boundary, body, len, &c, err), want, err);
    ASSERT_EQ(c.bad, 0);
    col_free(&c);
    col_init(&c);
    ASSERT_RC(parse_random(boundary, body, len, 1, 1, &c, &err1), want, &err1);
    ASSERT_EQ(c.bad, 0);
    col_free(&c);
    if (want != RC_OK) {
        ASSERT_STREQ(err->msg, err1.msg);
        ASSERT(strstr(err->msg, "offset") != NULL || strstr(err->msg, "refused") != NULL);
    }
}

static void expect_str_rc(const char *boundary, const char *body, rc_t want, core_err_t *err)
{
    expect_rc(boundary, body, strlen(body), want, err);
}

/* The curl-like adapter upload used by several tests. */
static const char cfg_json[] = "{\"r\": 8, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\"]}";

static buf_t curl_body(part_t parts[2], char *weights, size_t n_weights)
{
    for (size_t i = 0; i < n_weights; i++)
        weights[i] = (char)(i * 7 + i / 256);
    parts[0] = (part_t){"config", "adapter_config.json", cfg_json, strlen(cfg_json)};
    parts[1] = (part_t){"weights", "adapter_model.safetensors", weights, n_weights};
    return body_build(B_CURL, parts, 2, NULL, NULL);
}

/* ================= boundary from Content-Type ================= */

TEST(boundary_unquoted_and_quoted)
{
    char b[API_MP_BOUNDARY_MAX + 1];
    core_err_t err = {{0}};
    ASSERT_RC(api__mp_boundary("multipart/form-data; boundary=" B_CURL, b, &err), RC_OK, &err);
    ASSERT_STREQ(b, B_CURL);
    ASSERT_RC(api__mp_boundary(" Multipart/Form-DATA ;charset=utf-8;BOUNDARY=\"a b'()+_,-./:=?\"",
                               b, &err),
              RC_OK, &err);
    ASSERT_STREQ(b, "a b'()+_,-./:=?");
    /* a quoted parameter before may hold ';' and "boundary=" */
    ASSERT_RC(
        api__mp_boundary("multipart/form-data; x=\"y;boundary=evil\\\"\"; boundary=good;", b, &err),
        RC_OK, &err);
    ASSERT_STREQ(b, "good");
    /* backslash escapes inside the quoted boundary */
    ASSERT_RC(api__mp_boundary("multipart/form-data; boundary=\"a\\bc\"", b, &err), RC_OK, &err);
    ASSERT_STREQ(b, "abc");
}

TEST(boundary_lengths)
{
    char b[API_MP_BOUNDARY_MAX + 1], ct[200];
    core_err_t err = {{0}};
    char seventy[72];
    memset(seventy, 'x', 71);
    seventy[70] = '\0';
    snprintf(ct, sizeof ct, "multipart/form-data; boundary=%s", seventy);
    ASSERT_RC(api__mp_boundary(ct, b, &err), RC_OK, &err);
    ASSERT_EQ(strlen(b), 70);
    seventy[70] = 'x';
    seventy[71] = '\0';
    snprintf(ct, sizeof ct, "multipart/form-data; boundary=\"%s\"", seventy);
    ASSERT_RC(api__mp_boundary(ct, b, &err), RC_INVALID, &err);
    ASSERT(strstr(err.msg, "70") != NULL);
    ASSERT_RC(api__mp_boundary("multipart/form-data; boundary=\"\"", b, &err), RC_INVALID, &err);
    ASSERT_RC(api__mp_boundary("multipart/form-data; boundary=", b, &err), RC_INVALID, &err);
    ASSERT_RC(api__mp_boundary("multipart/form-data; boundary=x", b, &err), RC_OK, &err);
    ASSERT_STREQ(b, "x");
}

TEST(boundary_errors)
{
    char b[API_MP_BOUNDARY_MAX + 1];
    core_err_t err = {{0}};
    ASSERT_RC(api__mp_boundary("multipart/form-data", b, &err), RC_INVALID, &err);
    ASSERT(strstr(err.msg, "no boundary") != NULL);
    ASSERT_RC(api__mp_boundary("multipart/form-data; charset=utf-8", b, &err), RC_INVALID, &err);
    ASSERT_RC(api__mp_boundary("multipart/form-data; boundary=\"a@b\"", b, &err), RC_INVALID, &err);
    ASSERT_RC(api__mp_boundary("multipart/form-data; boundary=a@b", b, &err), RC_INVALID, &err);
    ASSERT_RC(api__mp_boundary("multipart/form-data; boundary=a*b", b, &err), RC_INVALID, &err);
    ASSERT_RC(api__mp_boundary("multipart/form-data; boundary=\"ab \"", b, &err), RC_INVALID, &err);
    ASSERT_RC(api__mp_boundary("multipart/form-data; boundary=\"a\\\"b\"", b, &err), RC_INVALID,
              &err);
    ASSERT_RC(api__mp_boundary("multipart/form-data; boundary=\"a\rb\"", b, &err), RC_INVALID,
              &err);
    ASSERT_RC(api__mp_boundary("multipart/form-data; boundary=\"abc", b, &err), RC_INVALID, &err);
    ASSERT_RC(api__mp_boundary("multipart/form-data; boundary=a; boundary=b", b, &err), RC_INVALID,
              &err);
    ASSERT_RC(api__mp_boundary("multipart/form-data boundary=a", b, &err), RC_INVALID, &err);
    ASSERT_RC(api__mp_boundary("multipart/form-data; boundary a", b, &err), RC_INVALID, &err);
    ASSERT_RC(api__mp_boundary("multipart/form-data; boundary=a b", b, &err), RC_INVALID, &err);
    ASSERT_STREQ(b, "");
}

TEST(boundary_media_type_unsupported)
{
    char b[API_MP_BOUNDARY_MAX + 1];
    core_err_t err = {{0}};
    ASSERT_RC(api__mp_boundary("text/plain; boundary=abc", b, &err), RC_UNSUPPORTED, &err);
    ASSERT_RC(api__mp_boundary("multipart/mixed; boundary=abc", b, &err), RC_UNSUPPORTED, &err);
    ASSERT_RC(api__mp_boundary("multipart/form-datax; boundary=abc", b, &err), RC_UNSUPPORTED,
              &err);
    ASSERT_RC(api__mp_boundary("multipart; boundary=abc", b, &err), RC_UNSUPPORTED, &err);
    ASSERT_RC(api__mp_boundary("application/json", b, &err), RC_UNSUPPORTED, &err);
    ASSERT_RC(api__mp_boundary("", b, &err), RC_UNSUPPORTED, &err);
    ASSERT_RC(api__mp_boundary(NULL, b, &err), RC_UNSUPPORTED, &err);
    ASSERT(strstr(err.msg, "multipart/form-data") != NULL);
}

TEST(new_rejects_bad_boundary)
{
    api_mp_t *p = (api_mp_t *)&p;
    core_err_t err = {{0}};
    char long_b[80];
    memset(long_b, 'b', sizeof long_b - 1);
    long_b[79] = '\0';
    ASSERT(api__mp_new(long_b, NULL, &p, &err) != RC_OK);
    ASSERT(p == NULL);
    ASSERT(api__mp_new("", NULL, &p, &err) != RC_OK);
    ASSERT(api__mp_new(NULL, NULL, &p, &err) != RC_OK);
    ASSERT(api__mp_new("a\r\nb", NULL, &p, &err) != RC_OK);
    api__mp_free(NULL);
}

/* ================= well-formed bodies ================= */

TEST(curl_upload_all_chunkings)
{
    part_t parts[2];
    char weights[600];
    buf_t body = curl_body(parts, weights, sizeof weights);
    check_all_chunkings(B_CURL, &body, parts, 2);
    free(body.p);
}

TEST(callbacks_may_be_null)
{
    part_t parts[2];
    char weights[100];
    buf_t body = curl_body(parts, weights, sizeof weights);
    api_mp_t *p = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(api__mp_new(B_CURL, NULL, &p, &err), RC_OK, &err);
    ASSERT_RC(api__mp_feed(p, body.p, body.n, &err), RC_OK, &err);
    ASSERT_RC(api__mp_finish(p, &err), RC_OK, &err);
    ASSERT_RC(api__mp_finish(p, &err), RC_OK, &err);
    ASSERT_RC(api__mp_feed(p, "x", 1, NULL), RC_FORMAT, NULL); /* data after the end */
    ASSERT_RC(api__mp_finish(p, &err), RC_FORMAT, &err);
    ASSERT(strstr(err.msg, "after the end") != NULL);
    api__mp_free(p);
    free(body.p);
}

/* Every prefix of the boundary after CRLF "--", "\r\n-", lone CRs, the boundary without
 * CRLF, CR CR LF before the real delimiter: all data. */
TEST(tricky_data_all_chunkings)
{
    const char *b = "XyZ-boundary";
    buf_t d = {0};
    buf_str(&d, "\r");
    for (size_t k = 0; k < strlen(b); k++) {
        buf_str(&d, "\r\n--");
        buf_add(&d, b, k);
        buf_str(&d, "!\r");
    }
    buf_str(&d, "\r\n-\r\n\r\n-x\r\r\r\n\n--XyZ-boundary\n--XyZ-boundary--XyZ-boundary\r\n");
    buf_str(&d, "\r\n--XyZ-boundar\r\n--XyZ-boundar");
    buf_str(&d, "\r\r");
    buf_t e = {0};
    buf_str(&e, "--XyZ-boundary\r\n-\r\n--XyZ-boundar\r");
    part_t parts[3] = {{"a", "a.bin", d.p, d.n}, {"b", NULL, e.p, e.n}, {"c", "c", "\r\n-", 3}};
    buf_t body = body_build(b, parts, 3, NULL, NULL);
    check_all_chunkings(b, &body, parts, 3);
    free(body.p);
    free(d.p);
    free(e.p);
}

TEST(binary_and_empty_parts)
{
    char bin[256 * 3];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (char)(i % 256);
    part_t parts[4] = {{"empty", "e.json", "", 0},
                       {"bin", "b.safetensors", bin, sizeof bin},
                       {"empty2", NULL, "", 0},
                       {"x.y_z-9", NULL, "v", 1}};
    buf_t body = body_build("b", parts, 4, NULL, NULL);
    check_all_chunkings("b", &body, parts, 4);
    free(body.p);
    /* the longest boundary */
    char b70[71];
    memset(b70, '=', 70);
    b70[70] = '\0';
    body = body_build(b70, parts, 4, NULL, NULL);
    check_all_chunkings(b70, &body, parts, 4);
    free(body.p);
}

TEST(preamble_and_epilogue)
{
    part_t parts[2] = {{"config", "c.json", "{}", 2}, {"weights", "w", "W", 1}};
    buf_t body = body_build("bb", parts, 2, "preamble --bb not a delimiter\r\n-bb\r\n",
                            "epilogue\r\n--bb\r\nContent-Disposition: junk\r\n\r\n\0");
    check_all_chunkings("bb", &body, parts, 2);
    free(body.p);
    /* a preamble of just CRLF, transport padding after delimiters */
    const char *s = "\r\n--bb \t \r\nContent-Disposition: form-data; name=a\r\n\r\nA"
                    "\r\n--bb\t\r\ncontent-disposition:form-data;name=\"b\"\r\n\r\nB\r\n--bb--";
    part_t p2[2] = {{"a", NULL, "A", 1}, {"b", NULL, "B", 1}};
    buf_t b2 = {0};
    buf_str(&b2, s);
    check_all_chunkings("bb", &b2, p2, 2);
    free(b2.p);
}

TEST(preamble_limit)
{
    core_err_t err = {{0}};
    part_t parts[1] = {{"a", NULL, "x", 1}};
    char pre[1100];
    memset(pre, 'p', sizeof pre);
    memcpy(pre + 1024, "\r\n", 3);
    buf_t body = body_build("bb", parts, 1, pre, NULL);
    expect_rc("bb", body.p, body.n, RC_OK, &err);
    free(body.p);
    memcpy(pre + 1025, "\r\n", 3);
    body = body_build("bb", parts, 1, pre, NULL);
    expect_rc("bb", body.p, body.n, RC_LIMIT, &err);
    ASSERT(strstr(err.msg, "preamble") != NULL);
    free(body.p);
    /* a long stream without any delimiter fails early, not at the end */
    col_t c;
    col_init(&c);
    api_mp_callbacks_t cb = col_callbacks(&c);
    api_mp_t *p = NULL;
    ASSERT_RC(api__mp_new("bb", &cb, &p, &err), RC_OK, &err);
    ASSERT_RC(api__mp_feed(p, pre, 1000, &err), RC_OK, &err);
    ASSERT_RC(api__mp_feed(p, pre, 100, &err), RC_LIMIT, &err);
    api__mp_free(p);
}

TEST(names_and_params)
{
    /* parameters in any order, token or quoted, escapes, other params and headers ignored */
    const char *s =
        "--q\r\n"
        "X-Other: whatever; name=\"evil\"\r\n"
        "CONTENT-DISPOSITION: Form-Data; filename=\"a\\\"b; name=\\\"evil\\\".json\"; "
        "NAME=\"con\\fig\"; filename*=UTF-8''x.json\r\n"
        "Content-Type: application/json\r\n\r\n"
        "{}\r\n--q\r\n"
        "Content-Disposition: form-data ; name = weights ; filename=\"\xc3\xa9.bin\" ;\r\n"
        "\r\nW\r\n--q--";
    buf_t body = {0};
    buf_str(&body, s);
    part_t parts[2] = {{"config", NULL, "{}", 2}, {"weights", NULL, "W", 1}};
    check_all_chunkings("q", &body, parts, 2);
    free(body.p);
}

/* The parser hands data out as it arrives: at most a delimiter's length is held back. */
TEST(streams_without_buffering)
{
    const char *b = B_CURL;
    size_t n_delim = strlen(b) + 4;
    col_t c;
    col_init(&c);
    api_mp_callbacks_t cb = col_callbacks(&c);
    api_mp_t *p = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(api__mp_new(b, &cb, &p, &err), RC_OK, &err);
    buf_t head = {0};
    buf_str(&head, "--" B_CURL "\r\nContent-Disposition: form-data; name=\"weights\"\r\n\r\n");
    ASSERT_RC(api__mp_feed(p, head.p, head.n, &err), RC_OK, &err);
    uint64_t seed = 42;
    size_t fed = 0, total = 4u << 20;
    char *chunk = malloc(65536);
    buf_t all = {0};
    while (fed < total) {
        size_t n = 1 + rng_next(&seed) % 65536;
        n = n < total - fed ? n : total - fed;
        for (size_t i = 0; i < n; i++) {
            uint64_t r = rng_next(&seed);
            /* many CRs and delimiter starts */
            chunk[i] = r % 5 == 0 ? '\r' : r % 5 == 1 ? '\n' : r % 5 == 2 ? '-' : (char)(r >> 32);
        }
        if (n > 10 && seed % 3 == 0)
            memcpy(chunk + n - 8, "\r\n--" B_CURL, 8);
        buf_add(&all, chunk, n);
        ASSERT_RC(api__mp_feed(p, chunk, n, &err), RC_OK, &err);
        fed += n;
        ASSERT(c.data[0].n <= fed);
        ASSERT(c.data[0].n + n_delim > fed);
    }
    ASSERT_RC(api__mp_feed(p, "\r\n--" B_CURL "--", n_delim + 2, &err), RC_OK, &err);
    ASSERT_RC(api__mp_finish(p, &err), RC_OK, &err);
    ASSERT_EQ(c.n_ended, 1);
    ASSERT_EQ(c.data[0].n, total);
    ASSERT(memcmp(c.data[0].p, all.p, total) == 0);
    api__mp_free(p);
    col_free(&c);
    free(chunk);
    free(all.p);
    free(head.p);
}

TEST(large_body_random_chunks)
{
    size_t n = 3u << 20;
    char *w = malloc(n);
    part_t parts[2];
    buf_t body = curl_body(parts, w, n);
    core_err_t err = {{0}};
    for (uint64_t seed = 7; seed < 10; seed++) {
        col_t c;
        col_init(&c);
        ASSERT_RC(parse_random(B_CURL, body.p, body.n, seed, 65536, &c, &err), RC_OK, &err);
        expect_parts(&c, parts, 2);
        col_free(&c);
    }
    free(body.p);
    free(w);
}

/* ================= malformed bodies ================= */

TEST(truncated_bodies)
{
    part_t parts[2];
    char weights[40];
    buf_t body = curl_body(parts, weights, sizeof weights);
    /* the close delimiter's "--" ends at body.n - 2 (CRLF follows) */
    size_t close_end = body.n - 2;
    core_err_t err = {{0}};
    for (size_t len = 0; len <= body.n; len++) {
        col_t c;
        col_init(&c);
        rc_t rc = parse_whole(B_CURL, body.p, len, &c, &err);
        ASSERT_EQ(c.bad, 0);
        if (len < close_end) {
            ASSERT_RC(rc, RC_FORMAT, &err);
            ASSERT(strstr(err.msg, "before the closing boundary") != NULL);
        } else {
            ASSERT_RC(rc, RC_OK, &err);
            expect_parts(&c, parts, 2);
        }
        col_free(&c);
    }
    free(body.p);
}

TEST(delimiter_followed_by_junk)
{
    core_err_t err = {{0}};
    const char *ok = "--b\r\nContent-Disposition: form-data; name=a\r\n\r\nA\r\n--b--";
    expect_str_rc("b", ok, RC_OK, &err);
    expect_str_rc("b", "--b\r\nContent-Disposition: form-data; name=a\r\n\r\nA\r\n--bX\r\n",
                  RC_FORMAT, &err);
    ASSERT(strstr(err.msg, "after a boundary") != NULL);
    ASSERT(strstr(err.msg, "offset 53") != NULL);
    expect_str_rc("b", "--b \tx\r\n", RC_FORMAT, &err);
    expect_str_rc("b", "--b\rContent", RC_FORMAT, &err);
    expect_str_rc("b", "--b-x", RC_FORMAT, &err);
    expect_str_rc("b", "--b\n", RC_FORMAT, &err);
    /* a close delimiter before any part */
    expect_str_rc("b", "--b--\r\n", RC_FORMAT, &err);
    ASSERT(strstr(err.msg, "before any part") != NULL);
    /* no delimiter at all: all preamble */
    expect_str_rc("b", "hello", RC_FORMAT, &err);
    expect_str_rc("b", "", RC_FORMAT, &err);
}

TEST(head_errors)
{
    core_err_t err = {{0}};
    const char *pre = "--b\r\n";
    struct {
        const char *head;
        const char *msg;
    } cases[] = {
        {"Content-Disposition: form-data\r\n\r\n", "no name"},
        {"Content-Disposition: form-data; filename=\"x\"\r\n\r\n", "no name"},
        {"Content-Type: text/plain\r\n\r\n", "no Content-Disposition"},
        {"\r\n", "no Content-Disposition"},
        {"Content-Disposition: attachment; name=a\r\n\r\n", "not form-data"},
        {"Content-Disposition: form-data; name=\"\"\r\n\r\n", "empty"},
        {"Content-Disposition: form-data; name=\"a b\"\r\n\r\n", "outside"},
        {"Content-Disposition: form-data; name=\"../x\"\r\n\r\n", "outside"},
        {"Content-Disposition: form-data; name=\"\xc3\xa9\"\r\n\r\n", "outside"},
        {"Content-Disposition: form-data; name=a/b\r\n\r\n", "expected ';'"},
        {"Content-Disposition: form-data; name=a; name=b\r\n\r\n", "two name"},
        {"Content-Disposition: form-data; name=\"a\r\n\r\n", "malformed parameter value"},
        {"Content-Disposition: form-data; name=a\r\nContent-Disposition: form-data; name=b\r\n"
         "\r\n",
         "two Content-Disposition"},
        {"Content-Disposition form-data; name=a\r\n\r\n", "without ':'"},
        {"Content-Disposition: form-data; name=a\r\nnonsense\r\n\r\n", "without ':'"},
        {"Content Disposition: form-data; name=a\r\n\r\n", "header name"},
        {": form-data; name=a\r\n\r\n", "header name"},
        {"Content-Disposition: form-data; name=a\nX: y\r\n\r\n", "bare LF"},
        {"Content-Disposition: form-data; name=a\r\n\n", "bare LF"},
        {"Content-Disposition: form-data; name=a\rX: y\r\n\r\n", "CR without LF"},
        {"Content-Disposition: form-data; name=a\r\n \tX\r\n\r\n", "whitespace"},
        {"Content-Disposition: form-data; name=a\r\nX: \x01\r\n\r\n", "control byte 0x01"},
        {"Content-Disposition: form-data; name=a\r\nX: \x7f\r\n\r\n", "control byte 0x7f"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        buf_t body = {0};
        buf_str(&body, pre);
        buf_str(&body, cases[i].head);
        buf_str(&body, "data\r\n--b--\r\n");
        expect_rc("b", body.p, body.n, RC_FORMAT, &err);
        if (!strstr(err.msg, cases[i].msg))
            HARNESS_FAIL("case %zu: '%s' lacks '%s'", i, err.msg, cases[i].msg);
        free(body.p);
    }
    /* a NUL byte in a head */
    const char nul[] = "--b\r\nContent-Disposition: form-data; name=a\r\nX: \0\r\n\r\n\r\n--b--";
    expect_rc("b", nul, sizeof nul - 1, RC_FORMAT, &err);
    ASSERT(strstr(err.msg, "0x00") != NULL);
    /* the exact offset of a bare LF */
    expect_str_rc("b", "--b\r\nContent-Disposition: form-data; name=a\nX", RC_FORMAT, &err);
    ASSERT(strstr(err.msg, "offset 43") != NULL);
}

TEST(name_lengths)
{
    core_err_t err = {{0}};
    char name[70];
    memset(name, 'n', sizeof name);
    name[64] = '\0';
    part_t parts[1] = {{name, NULL, "x", 1}};
    buf_t body = body_build("b", parts, 1, NULL, NULL);
    col_t c;
    col_init(&c);
    ASSERT_RC(parse_whole("b", body.p, body.n, &c, &err), RC_OK, &err);
    expect_parts(&c, parts, 1);
    col_free(&c);
    free(body.p);
    name[64] = 'n';
    name[65] = '\0';
    body = body_build("b", parts, 1, NULL, NULL);
    expect_rc("b", body.p, body.n, RC_FORMAT, &err);
    ASSERT(strstr(err.msg, "longer than 64") != NULL);
    free(body.p);
}

TEST(head_limits)
{
    core_err_t err = {{0}};
    const char *cd = "--b\r\nContent-Disposition: form-data; name=a\r\n";
    /* a head of exactly API_MP_HEAD_MAX bytes (CRLF CRLF included) is fine */
    size_t fixed = strlen(cd) - 5 + strlen("X: \r\n\r\n");
    buf_t body = {0};
    buf_str(&body, cd);
    buf_str(&body, "X: ");
    for (size_t i = fixed; i < API_MP_HEAD_MAX; i++)
        buf_str(&body, "v");
    buf_str(&body, "\r\n\r\nD\r\n--b--");
    expect_rc("b", body.p, body.n, RC_OK, &err);
    free(body.p);
    /* one byte more fails */
    body = (buf_t){0};
    buf_str(&body, cd);
    buf_str(&body, "X: ");
    for (size_t i = fixed; i <= API_MP_HEAD_MAX; i++)
        buf_str(&body, "v");
    buf_str(&body, "\r\n\r\nD\r\n--b--");
    expect_rc("b", body.p, body.n, RC_LIMIT, &err);
    ASSERT(strstr(err.msg, "4096") != NULL);
    ASSERT(strstr(err.msg, "offset 5") != NULL);
    free(body.p);
    /* 16 lines pass, 17 fail */
    for (int lines = 16; lines <= 17; lines++) {
        body = (buf_t){0};
        buf_str(&body, cd);
        for (int i = 1; i < lines; i++)
            buf_str(&body, "X-Pad: 1\r\n");
        buf_str(&body, "\r\nD\r\n--b--");
        expect_rc("b", body.p, body.n, lines == 16 ? RC_OK : RC_LIMIT, &err);
        free(body.p);
    }
}

/* ================= callbacks refusing, sticky errors ================= */

static void refusal_case(int which, const char *want_msg)
{
    part_t parts[2];
    char weights[300];
    buf_t body = curl_body(parts, weights, sizeof weights);
    col_t c;
    col_init(&c);
    if (which == 0)
        c.refuse_part = 1;
    else if (which == 1) {
        c.refuse_data = 1;
        c.refuse_data_after = 100;
    } else {
        c.refuse_end = 0;
    }
    api_mp_callbacks_t cb = col_callbacks(&c);
    api_mp_t *p = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(api__mp_new(B_CURL, &cb, &p, &err), RC_OK, &err);
    rc_t rc = RC_OK;
    for (size_t i = 0; i < body.n && rc == RC_OK; i += 16) {
        size_t n = body.n - i < 16 ? body.n - i : 16;
        rc = api__mp_feed(p, body.p + i, n, &err);
    }
    ASSERT_RC(rc, RC_INVALID, &err);
    ASSERT_STREQ(err.msg, want_msg);
    /* sticky: feed and finish say it again, callbacks are not called again */
    memset(&err, 0, sizeof err);
    ASSERT_RC(api__mp_feed(p, body.p, body.n, &err), RC_INVALID, &err);
    ASSERT_STREQ(err.msg, want_msg);
    ASSERT_RC(api__mp_feed(p, NULL, 0, NULL), RC_INVALID, NULL);
    memset(&err, 0, sizeof err);
    ASSERT_RC(api__mp_finish(p, &err), RC_INVALID, &err);
    ASSERT_STREQ(err.msg, want_msg);
    ASSERT_EQ(c.n_calls_after_refusal, 0);
    api__mp_free(p);
    col_free(&c);
    free(body.p);
}

TEST(callback_refuses_part)
{
    refusal_case(0, "part 'weights' not wanted");
}

TEST(callback_refuses_data)
{
    refusal_case(1, "part too large");
}

TEST(callback_refuses_part_end)
{
    refusal_case(2, "end refused");
}

static bool refuse_silently(void *user, const char *name, core_err_t *err)
{
    (void)user, (void)name, (void)err;
    return false;
}

TEST(callback_refuses_without_message)
{
    api_mp_callbacks_t cb = {NULL, refuse_silently, NULL, NULL};
    api_mp_t *p = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(api__mp_new("b", &cb, &p, &err), RC_OK, &err);
    const char *s = "--b\r\nContent-Disposition: form-data; name=a\r\n\r\n";
    ASSERT_RC(api__mp_feed(p, s, strlen(s), &err), RC_INVALID, &err);
    ASSERT(strstr(err.msg, "on_part") != NULL);
    ASSERT(strstr(err.msg, "offset 47") != NULL);
    api__mp_free(p);
}

TEST(format_errors_are_sticky)
{
    api_mp_t *p = NULL;
    core_err_t err = {{0}}, err2 = {{0}};
    ASSERT_RC(api__mp_new("b", NULL, &p, &err), RC_OK, &err);
    ASSERT_RC(api__mp_feed(p, "--b\r\nbad\n", 9, &err), RC_FORMAT, &err);
    ASSERT_RC(api__mp_feed(p, "\r\n--b--", 7, &err2), RC_FORMAT, &err2);
    ASSERT_STREQ(err.msg, err2.msg);
    ASSERT_RC(api__mp_finish(p, &err2), RC_FORMAT, &err2);
    ASSERT_STREQ(err.msg, err2.msg);
    api__mp_free(p);
}

/* ================= fuzz-style mutations ================= */

static void mutate(buf_t *b, uint64_t *seed)
{
    static const char *const snippets[] = {"\r\n--fz", "\r\n--fz--", "\r\n", "\r",    "\n",
                                           "--",       "\"",         ";",    "name=", "\\",
                                           ":",        "\r\n\r\n",   " "};
    int n_ops = 1 + (int)(rng_next(seed) % 4);
    for (int k = 0; k < n_ops && b->n > 0; k++) {
        size_t at = rng_next(seed) % b->n;
        uint64_t op = rng_next(seed) % 5;
        if (op == 0) {
            b->p[at] = (char)rng_next(seed);
        } else if (op == 1) { /* delete a span */
            size_t len = 1 + rng_next(seed) % 8;
            len = len < b->n - at ? len : b->n - at;
            memmove(b->p + at, b->p + at + len, b->n - at - len);
            b->n -= len;
        } else if (op == 2 || op == 3) { /* insert a snippet or a random byte */
            const char *s = snippets[rng_next(seed) % (sizeof snippets / sizeof snippets[0])];
            char one = (char)rng_next(seed);
            size_t len = op == 2 ? strlen(s) : 1;
            buf_t t = {0};
            buf_add(&t, b->p, at);
            buf_add(&t, op == 2 ? s : &one, len);
            buf_add(&t, b->p + at, b->n - at);
            free(b->p);
            *b = t;
        } else { /* truncate */
            b->n = at;
        }
    }
}

TEST(fuzz_mutations)
{
    char bin[64];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (char)(i * 37);
    part_t parts[3] = {{"config", "adapter_config.json", cfg_json, strlen(cfg_json)},
                       {"weights", "adapter_model.safetensors", bin, sizeof bin},
                       {"e", NULL, "", 0}};
    buf_t base = body_build("fz", parts, 3, "pre\r\n", "epi");
    uint64_t seed = 0x5eed;
    int n_ok = 0, n_err = 0;
    for (int iter = 0; iter < 20000; iter++) {
        buf_t b = {0};
        buf_add(&b, base.p, base.n);
        mutate(&b, &seed);
        col_t c1, c2;
        core_err_t e1 = {{0}}, e2 = {{0}};
        col_init(&c1);
        col_init(&c2);
        rc_t r1 = parse_whole("fz", b.p, b.n, &c1, &e1);
        rc_t r2 = parse_random("fz", b.p, b.n, seed, 1 + iter % 13, &c2, &e2);
        /* any outcome is fine as long as it does not depend on the chunking */
        ASSERT(r1 == RC_OK || r1 == RC_FORMAT || r1 == RC_LIMIT);
        ASSERT_EQ(r1, r2);
        ASSERT_STREQ(e1.msg, e2.msg);
        ASSERT_EQ(c1.hash, c2.hash);
        ASSERT_EQ(c1.bad, 0);
        ASSERT_EQ(c2.bad, 0);
        if (r1 == RC_OK) {
            ASSERT_EQ(c1.n_parts, c1.n_ended);
            n_ok++;
        } else {
            ASSERT(strstr(e1.msg, "offset") != NULL);
            n_err++;
        }
        col_free(&c1);
        col_free(&c2);
        free(b.p);
    }
    /* the mutations reach both outcomes */
    ASSERT(n_ok > 100);
    ASSERT(n_err > 100);
    free(base.p);
}
