/* tokenizer.c - loading a Hugging Face tokenizer.json (BPE) into an immutable core_tok_t.
 *
 * Everything the file configures is validated here, so encode/decode never meet a surprise:
 * wrong JSON types, ids out of range or merges naming unknown tokens fail with RC_FORMAT
 * naming the field; components we do not implement fail with RC_UNSUPPORTED naming them.
 * Strings live in one arena addressed by 32-bit offsets (the file is capped at 1 GiB).
 * Encoding is in tok_encode.c, decoding in tok_decode.c, the BPE merge loop and hash maps in
 * tok_bpe.c, the Split regex engine in tok_regex.c. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tok_int.h"
#include "core/unicode.h"

#define TOK_MAX_FILE (1u << 30)

/* GPT-2's pre-tokenizer regex, used by ByteLevel with use_regex. */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static rc_t arena_add(core_tok_t *t, const char *s, size_t len, uint32_t *off, core_err_t *err)
{
    if (t->arena_len + len + 1 > TOK_MAX_FILE)
        return core_err(err, RC_LIMIT, "tokenizer strings exceed 1 GiB");
    if (!core__tok_grow(&t->arena, &t->arena_cap, t->arena_len + len + 1, 1))
        return core_err(err, RC_NOMEM, "tokenizer: out of memory");
    memcpy(t->arena + t->arena_len, s, len);
    t->arena[t->arena_len + len] = 0;
    *off = (uint32_t)t->arena_len;
    t->arena_len += len + 1;
    return RC_OK;
}

static bool get_bool(json_t *o, const char *key, bool dflt)
{
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

/* Required string field: RC_FORMAT naming it when missing or of another type. */
static rc_t get_str(json_t *o, const char *where, const char *key, const char **s, size_t *len,
                    core_err_t *err)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v))
        return core_err(err, RC_FORMAT, "%s.%s: expected a string", where, key);
    *s = json_string_value(v);
    *len = json_string_length(v);
    return RC_OK;
}

/* ---- model ---- */
static rc_t load_vocab(core_tok_t *t, json_t *vocab, core_err_t *err)
{
    if (!json_is_object(vocab))
        return core_err(err, RC_FORMAT, "model.vocab: expected an object");
    const char *key;
    json_t *v;
    json_int_t max_id = -1;
    json_object_foreach(vocab, key, v) {
        if (!json_is_integer(v))
            return core_err(err, RC_FORMAT, "model.vocab['%.64s']: expected an integer id", key);
        json_int_t id = json_integer_value(v);
        if (id < 0 || id >= CORE__TOK_MAX_ID)
            return core_err(err, RC_FORMAT, "model.vocab['%.64s']: id %lld out of range", key,
                            (long long)id);
        max_id = id > max_id ? id : max_id;
    }
    t->n_model = (int32_t)(max_id + 1);
    t->voff = malloc(((size_t)t->n_model + 1) * sizeof *t->voff);
    t->vlen = malloc(((size_t)t->n_model + 1) * sizeof *t->vlen);
    if (!t->voff || !t->vlen)
        return core_err(err, RC_NOMEM, "model.vocab: out of memory");
    memset(t->vlen, 0xFF, ((size_t)t->n_model + 1) * sizeof *t->vlen);
    json_object_foreach(vocab, key, v) {
        int32_t id = (int32_t)json_integer_value(v);
        if (t->vlen[id] != UINT32_MAX)
            return core_err(err, RC_FORMAT, "model.vocab['%.64s']: id %d used twice", key, id);
        size_t len = strlen(key);
        rc_t rc = arena_add(t, key, len, &t->voff[id], err);
        if (rc != RC_OK)
            return rc;
        t->vlen[id] = (uint32_t)len;
    }
    return RC_OK;
}

static rc_t build_vocab_map(core_tok_t *t, core_err_t *err)
{
    core__tok_bpe_t *b = &t->bpe;
    b->strs = (core__tok_strings_t){t->arena, t->voff, t->vlen};
    if (core__tok_strmap_init(&b->vocab, (size_t)t->n_model) != RC_OK)
        return core_err(err, RC_NOMEM, "model.vocab: out of memory");
    for (int32_t id = 0; id < t->n_model; id++)
        if (t->vlen[id] != UINT32_MAX && !core__tok_strmap_put(&b->vocab, &b->strs, id))
            return core_err(err, RC_FORMAT, "model.vocab: token '%.64s' appears twice",
                            t->arena + t->voff[id]);
    return RC_OK;
}

static int32_t vocab_id(const core_tok_t *t, const char *s, size_t len)
{
    return core__tok_strmap_get(&t->bpe.vocab, &t->bpe.strs, s, len);
}

/* One merge: "a b" (split at the one space) or ["a", "b"]. */
static rc_t merge_parts(json_t *m, size_t i, const char **a, size_t *al, const char **b,
                        size_t *bl, core_err_t *err)
{
    if (json_is_string(m)) {
        const char *s = json_string_value(m), *sp = strchr(s, ' ');
        size_t len = json_string_length(m);
        if (!sp || memchr(sp + 1, ' ', len - (size_t)(sp + 1 - s)))
            return core_err(err, RC_FORMAT, "model.merges[%zu]: expected \"a b\"", i);
        *a = s, *al = (size_t)(sp - s), *b = sp + 1, *bl = len - *al - 1;
        return RC_OK;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0));
        *al = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1));
        *bl = json_string_length(json_array_get(m, 1));
        return RC_OK;
    }
    return core_err(err, RC_FORMAT, "model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", i);
}

static rc_t load_merges(core_tok_t *t, json_t *merges, core_err_t *err)
{
    if (merges && !json_is_array(merges))
        return core_err(err, RC_FORMAT, "model.merges: expected an array");
    size_t n = merges ? json_array_size(merges) : 0;
    if (n >= (size_t)INT32_MAX)
        return core_err(err, RC_LIMIT, "model.merges: too many");
    if (core__tok_pairmap_init(&t->bpe.merges, n) != RC_OK)
        return core_err(err, RC_NOMEM, "model.merges: out of memory");
    char *buf = NULL;
    size_t cap = 0;
    rc_t rc = RC_OK;
    for (size_t i = 0; i < n && rc == RC_OK; i++) {
        const char *a = NULL, *b = NULL;
        size_t al = 0, bl = 0;
        rc = merge_parts(json_array_get(merges, i), i, &a, &al, &b, &bl, err);
        if (rc != RC_OK)
            break;
        int32_t ia = vocab_id(t, a, al), ib = vocab_id(t, b, bl);
        if (!core__tok_grow(&buf, &cap, al + bl + 1, 1)) {
            rc = core_err(err, RC_NOMEM, "model.merges: out of memory");
            break;
        }
        memcpy(buf, a, al);
        memcpy(buf + al, b, bl);
        int32_t im = vocab_id(t, buf, al + bl);
        if (ia < 0 || ib < 0 || im < 0)
            rc = core_err(err, RC_FORMAT, "model.merges[%zu]: '%.*s' + '%.*s' not in vocab", i,
                          (int)(al > 40 ? 40 : al), a, (int)(bl > 40 ? 40 : bl), b);
        else
            core__tok_pairmap_put(&t->bpe.merges, ia, ib, (int32_t)i, im);
    }
    free(buf);
    return rc;
}

static rc_t load_model(core_tok_t *t, json_t *model, core_err_t *err)
{
    if (!json_is_object(model))
        return core_err(err, RC_FORMAT, "model: missing or not an object");
    json_t *type = json_object_get(model, "type");
    if (type && (!json_is_string(type) || strcmp(json_string_value(type), "BPE") != 0))
        return core_err(err, RC_UNSUPPORTED, "model.type: only BPE is supported (got %s)",
                        json_is_string(type) ? json_string_value(type) : "non-string");
    const char *bad[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(model, bad[i]);
        if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
            return core_err(err, RC_UNSUPPORTED, "model.%s is not supported", bad[i]);
    }
    rc_t rc = load_vocab(t, json_object_get(model, "vocab"), err);
    if (rc == RC_OK)
        rc = build_vocab_map(t, err);
    if (rc == RC_OK)
        rc = load_merges(t, json_object_get(model, "merges"), err);
    if (rc != RC_OK)
        return rc;
    core__tok_bpe_t *b = &t->bpe;
    b->byte_fallback = get_bool(model, "byte_fallback", false);
    b->fuse_unk = get_bool(model, "fuse_unk", false);
    b->ignore_merges = get_bool(model, "ignore_merges", false);
    json_t *unk = json_object_get(model, "unk_token");
    b->unk_id = json_is_string(unk) ? vocab_id(t, json_string_value(unk), json_string_length(unk))
                                    : -1;
    for (int i = 0; i < 256; i++) {
        char hex[8];
        snprintf(hex, sizeof hex, "<0x%02X>", i);
        b->byte_ids[i] = vocab_id(t, hex, 6);
    }
    return RC_OK;
}

/* ---- added tokens ---- */
static rc_t load_added_one(core_tok_t *t, json_t *a, size_t i, core_err_t *err)
{
    char where[48];
    snprintf(where, sizeof where, "added_tokens[%zu]", i);
    json_t *id = json_object_get(a, "id");
    if (!json_is_integer(id) || json_integer_value(id) < 0 ||
        json_integer_value(id) >= CORE__TOK_MAX_ID)
        return core_err(err, RC_FORMAT, "%s.id: expected an integer in [0, %d)", where,
                        CORE__TOK_MAX_ID);
    const char *s;
    size_t len;
    rc_t rc = get_str(a, where, "content", &s, &len, err);
    if (rc == RC_OK && len == 0)
        rc = core_err(err, RC_FORMAT, "%s.content: empty", where);
    core__tok_added_t *at = &t->added[t->n_added];
    if (rc == RC_OK)
        rc = arena_add(t, s, len, &at->off, err);
    if (rc != RC_OK)
        return rc;
    at->id = (int32_t)json_integer_value(id);
    at->len = (uint32_t)len;
    at->special = get_bool(a, "special", false);
    at->lstrip = get_bool(a, "lstrip", false);
    at->rstrip = get_bool(a, "rstrip", false);
    at->single_word = get_bool(a, "single_word", false);
    at->normalized = get_bool(a, "normalized", !at->special);
    t->added_first[(unsigned char)s[0] >> 6] |= 1ull << ((unsigned char)s[0] & 63);
    t->n_added++;
    return RC_OK;
}

/* Longest first, so the first hit at a position is the longest (leftmost-longest match). */
static int added_cmp(const void *x, const void *y)
{
    const core__tok_added_t *a = x, *b = y;
    return a->len != b->len ? (a->len < b->len ? 1 : -1) : (a->id > b->id) - (a->id < b->id);
}

static rc_t load_added(core_tok_t *t, json_t *arr, core_err_t *err)
{
    if (arr && !json_is_null(arr) && !json_is_array(arr))
        return core_err(err, RC_FORMAT, "added_tokens: expected an array");
    size_t n = json_is_array(arr) ? json_array_size(arr) : 0;
    t->added = calloc(n + 1, sizeof *t->added);
    if (!t->added)
        return core_err(err, RC_NOMEM, "added_tokens: out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(arr, i);
        if (!json_is_object(a))
            return core_err(err, RC_FORMAT, "added_tokens[%zu]: expected an object", i);
        rc_t rc = load_added_one(t, a, i, err);
        if (rc != RC_OK)
            return rc;
    }
    qsort(t->added, t->n_added, sizeof *t->added, added_cmp);
    return RC_OK;
}

/* ---- normalizer ---- */
static rc_t add_norm(core_tok_t *t, core__tok_norm_t nm, core_err_t *err)
{
    if (t->n_norm >= 64)
        return core_err(err, RC_LIMIT, "normalizer: too many steps");
    core__tok_norm_t *p = realloc(t->norm, (t->n_norm + 1) * sizeof *p);
    if (!p)
        return core_err(err, RC_NOMEM, "normalizer: out of memory");
    t->norm = p;
    t->norm[t->n_norm++] = nm;
    return RC_OK;
}

/* Replace patterns must be {"String": s}; regex replacement is not implemented. */
static rc_t get_pattern_string(json_t *o, const char *where, const char **s, size_t *len,
                               core_err_t *err)
{
    json_t *p = json_object_get(o, "pattern");
    if (json_is_object(p) && json_object_get(p, "Regex"))
        return core_err(err, RC_UNSUPPORTED, "%s: Regex pattern is not supported", where);
    rc_t rc = json_is_object(p) ? get_str(p, where, "String", s, len, err)
                                : core_err(err, RC_FORMAT, "%s.pattern: expected an object", where);
    if (rc == RC_OK && *len == 0)
        rc = core_err(err, RC_FORMAT, "%s.pattern: empty string", where);
    return rc;
}

static rc_t load_normalizer(core_tok_t *t, json_t *n, int depth, core_err_t *err)
{
    if (!n || json_is_null(n))
        return RC_OK;
    const char *type = json_string_value(json_object_get(n, "type"));
    if (!json_is_object(n) || !type || depth > 4)
        return core_err(err, RC_FORMAT, "normalizer: expected an object with a type");
    core__tok_norm_t nm = {0};
    const char *s;
    size_t len;
    rc_t rc;
    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(n, "normalizers");
        if (!json_is_array(arr))
            return core_err(err, RC_FORMAT, "normalizer.normalizers: expected an array");
        for (size_t i = 0; i < json_array_size(arr); i++)
            if ((rc = load_normalizer(t, json_array_get(arr, i), depth + 1, err)) != RC_OK)
                return rc;
        return RC_OK;
    }
    if (strcmp(type, "Prepend") == 0) {
        nm.kind = CORE__TOK_NORM_PREPEND;
        if ((rc = get_str(n, "normalizer Prepend", "prepend", &s, &len, err)) != RC_OK ||
            (rc = arena_add(t, s, len, &nm.a_off, err)) != RC_OK)
            return rc;
        nm.a_len = (uint32_t)len;
        return add_norm(t, nm, err);
    }
    if (strcmp(type, "Replace") == 0) {
        nm.kind = CORE__TOK_NORM_REPLACE;
        if ((rc = get_pattern_string(n, "normalizer Replace", &s, &len, err)) != RC_OK ||
            (rc = arena_add(t, s, len, &nm.a_off, err)) != RC_OK)
            return rc;
        nm.a_len = (uint32_t)len;
        if ((rc = get_str(n, "normalizer Replace", "content", &s, &len, err)) != RC_OK ||
            (rc = arena_add(t, s, len, &nm.b_off, err)) != RC_OK)
            return rc;
        nm.b_len = (uint32_t)len;
        return add_norm(t, nm, err);
    }
    if (strcmp(type, "NFC") == 0) {
        nm.kind = CORE__TOK_NORM_NFC;
        return add_norm(t, nm, err);
    }
    return core_err(err, RC_UNSUPPORTED, "normalizer type '%.64s' is not supported", type);
}

/* ---- pre-tokenizer ---- */
static rc_t add_pre(core_tok_t *t, core__tok_pre_t pr, core_err_t *err)
{
    core__tok_pre_t *p = t->n_pre < 64 ? realloc(t->pre, (t->n_pre + 1) * sizeof *p) : NULL;
    if (!p) {
        core__tok_re_free(pr.re);
        return core_err(err, t->n_pre < 64 ? RC_NOMEM : RC_LIMIT, "pre_tokenizer: too many");
    }
    t->pre = p;
    t->pre[t->n_pre++] = pr;
    return RC_OK;
}

static rc_t load_split(core_tok_t *t, json_t *n, core_err_t *err)
{
    static const char *const behaviors[] = {"Isolated", "Removed", "MergedWithPrevious",
                                            "MergedWithNext", "Contiguous"};
    core__tok_pre_t pr = {.kind = CORE__TOK_PRE_SPLIT};
    const char *b = json_string_value(json_object_get(n, "behavior"));
    pr.behavior = -1;
    for (int i = 0; b && i < 5; i++)
        if (strcmp(b, behaviors[i]) == 0)
            pr.behavior = i;
    if (pr.behavior < 0)
        return core_err(err, RC_UNSUPPORTED, "pre_tokenizer Split.behavior '%.32s'",
                        b ? b : "(missing)");
    pr.invert = get_bool(n, "invert", false);
    json_t *p = json_object_get(n, "pattern");
    json_t *rx = json_object_get(p, "Regex"), *str = json_object_get(p, "String");
    core_err_t e2;
    rc_t rc;
    if (json_is_string(rx))
        rc = core__tok_re_compile(json_string_value(rx), json_string_length(rx), &pr.re, &e2);
    else if (json_is_string(str) && json_string_length(str) > 0)
        rc = core__tok_re_literal(json_string_value(str), json_string_length(str), &pr.re, &e2);
    else
        return core_err(err, RC_FORMAT, "pre_tokenizer Split.pattern: expected Regex or String");
    if (rc != RC_OK)
        return core_err(err, rc, "pre_tokenizer Split.pattern: %s", e2.msg);
    return add_pre(t, pr, err);
}

static rc_t load_metaspace(core_tok_t *t, json_t *n, core_err_t *err)
{
    core__tok_pre_t pr = {.kind = CORE__TOK_PRE_METASPACE};
    const char *s;
    size_t len;
    rc_t rc = get_str(n, "pre_tokenizer Metaspace", "replacement", &s, &len, err);
    if (rc == RC_OK && len == 0)
        rc = core_err(err, RC_FORMAT, "pre_tokenizer Metaspace.replacement: empty");
    if (rc != RC_OK || (rc = arena_add(t, s, len, &pr.repl_off, err)) != RC_OK)
        return rc;
    pr.repl_len = (uint32_t)len;
    const char *scheme = json_string_value(json_object_get(n, "prepend_scheme"));
    if (scheme)
        pr.prepend = strcmp(scheme, "always") == 0  ? CORE__TOK_PREPEND_ALWAYS
                     : strcmp(scheme, "first") == 0 ? CORE__TOK_PREPEND_FIRST
                                                    : CORE__TOK_PREPEND_NEVER;
    else
        pr.prepend = get_bool(n, "add_prefix_space", true) ? CORE__TOK_PREPEND_ALWAYS
                                                           : CORE__TOK_PREPEND_NEVER;
    pr.split = get_bool(n, "split", true);
    return add_pre(t, pr, err);
}

static rc_t load_pre(core_tok_t *t, json_t *n, int depth, core_err_t *err)
{
    if (!n || json_is_null(n))
        return RC_OK;
    const char *type = json_string_value(json_object_get(n, "type"));
    if (!json_is_object(n) || !type || depth > 4)
        return core_err(err, RC_FORMAT, "pre_tokenizer: expected an object with a type");
    if (t->n_pre > 0 && t->pre[t->n_pre - 1].kind == CORE__TOK_PRE_BYTELEVEL)
        return core_err(err, RC_UNSUPPORTED, "pre_tokenizer: steps after ByteLevel");
    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(n, "pretokenizers");
        if (!json_is_array(arr))
            return core_err(err, RC_FORMAT, "pre_tokenizer.pretokenizers: expected an array");
        for (size_t i = 0; i < json_array_size(arr); i++) {
            rc_t rc = load_pre(t, json_array_get(arr, i), depth + 1, err);
            if (rc != RC_OK)
                return rc;
        }
        return RC_OK;
    }
    if (strcmp(type, "Split") == 0)
        return load_split(t, n, err);
    if (strcmp(type, "Metaspace") == 0)
        return load_metaspace(t, n, err);
    if (strcmp(type, "ByteLevel") == 0) {
        core__tok_pre_t pr = {.kind = CORE__TOK_PRE_BYTELEVEL};
        pr.add_prefix_space = get_bool(n, "add_prefix_space", true);
        if (get_bool(n, "use_regex", true)) {
            rc_t rc = core__tok_re_compile(gpt2_pattern, sizeof gpt2_pattern - 1, &pr.re, err);
            if (rc != RC_OK)
                return rc;
        }
        t->bpe.byte_level = true;
        return add_pre(t, pr, err);
    }
    return core_err(err, RC_UNSUPPORTED, "pre_tokenizer type '%.64s' is not supported", type);
}

/* ---- post-processor ---- */
static rc_t push_ids(int32_t **v, size_t *n, const int32_t *ids, size_t k, core_err_t *err)
{
    if (*n + k > 64)
        return core_err(err, RC_LIMIT, "post_processor: too many special tokens");
    int32_t *p = realloc(*v, (*n + k + 1) * sizeof *p);
    if (!p)
        return core_err(err, RC_NOMEM, "post_processor: out of memory");
    memcpy(p + *n, ids, k * sizeof *ids);
    *v = p;
    *n += k;
    return RC_OK;
}

static rc_t load_template(core_tok_t *t, json_t *n, core_err_t *err)
{
    json_t *single = json_object_get(n, "single"), *specials = json_object_get(n, "special_tokens");
    if (!json_is_array(single))
        return core_err(err, RC_FORMAT, "post_processor.single: expected an array");
    bool seen_a = false;
    for (size_t i = 0; i < json_array_size(single); i++) {
        json_t *it = json_array_get(single, i);
        if (json_object_get(it, "Sequence")) {
            seen_a = true;
            continue;
        }
        const char *name = json_string_value(json_object_get(json_object_get(it, "SpecialToken"), "id"));
        json_t *ids = json_object_get(json_object_get(specials, name ? name : ""), "ids");
        if (!name || !json_is_array(ids))
            return core_err(err, RC_FORMAT, "post_processor.single[%zu]: unknown special token", i);
        for (size_t k = 0; k < json_array_size(ids); k++) {
            json_t *v = json_array_get(ids, k);
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) >= CORE__TOK_MAX_ID)
                return core_err(err, RC_FORMAT, "post_processor.special_tokens['%.64s'].ids", name);
            int32_t id = (int32_t)json_integer_value(v);
            rc_t rc = seen_a ? push_ids(&t->suffix, &t->n_suffix, &id, 1, err)
                             : push_ids(&t->prefix, &t->n_prefix, &id, 1, err);
            if (rc != RC_OK)
                return rc;
        }
    }
    return RC_OK;
}

/* Bert/Roberta: [cls] A [sep], with cls/sep given as ["token", id]. */
static rc_t load_cls_sep(core_tok_t *t, json_t *n, core_err_t *err)
{
    json_t *cls = json_array_get(json_object_get(n, "cls"), 1);
    json_t *sep = json_array_get(json_object_get(n, "sep"), 1);
    if (!json_is_integer(cls) || !json_is_integer(sep) || json_integer_value(cls) < 0 ||
        json_integer_value(sep) < 0 || json_integer_value(cls) >= CORE__TOK_MAX_ID ||
        json_integer_value(sep) >= CORE__TOK_MAX_ID)
        return core_err(err, RC_FORMAT, "post_processor: cls/sep must be [token, id]");
    int32_t c = (int32_t)json_integer_value(cls), s = (int32_t)json_integer_value(sep);
    rc_t rc = push_ids(&t->prefix, &t->n_prefix, &c, 1, err);
    return rc == RC_OK ? push_ids(&t->suffix, &t->n_suffix, &s, 1, err) : rc;
}

static rc_t load_post(core_tok_t *t, json_t *n, int depth, core_err_t *err)
{
    if (!n || json_is_null(n))
        return RC_OK;
    const char *type = json_string_value(json_object_get(n, "type"));
    if (!json_is_object(n) || !type || depth > 4)
        return core_err(err, RC_FORMAT, "post_processor: expected an object with a type");
    if (strcmp(type, "ByteLevel") == 0)
        return RC_OK; /* only adjusts offsets */
    if (strcmp(type, "TemplateProcessing") == 0)
        return load_template(t, n, err);
    if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0)
        return load_cls_sep(t, n, err);
    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(n, "processors");
        if (!json_is_array(arr))
            return core_err(err, RC_FORMAT, "post_processor.processors: expected an array");
        for (size_t i = 0; i < json_array_size(arr); i++) {
            rc_t rc = load_post(t, json_array_get(arr, i), depth + 1, err);
            if (rc != RC_OK)
                return rc;
        }
        return RC_OK;
    }
    return core_err(err, RC_UNSUPPORTED, "post_processor type '%.64s' is not supported", type);
}

/* ---- decoder ---- */
static rc_t add_dec_repl(core_tok_t *t, const char *from, size_t fl, const char *to, size_t tl,
                         core_err_t *err)
{
    core__tok_repl_t r;
    rc_t rc = arena_add(t, from, fl, &r.from_off, err);
    if (rc == RC_OK)
        rc = arena_add(t, to, tl, &r.to_off, err);
    core__tok_repl_t *p = rc == RC_OK && t->n_dec_repl < 16
                              ? realloc(t->dec_repl, (t->n_dec_repl + 1) * sizeof *p)
                              : NULL;
    if (rc != RC_OK)
        return rc;
    if (!p)
        return core_err(err, RC_LIMIT, "decoder: too many Replace steps");
    r.from_len = (uint32_t)fl;
    r.to_len = (uint32_t)tl;
    t->dec_repl = p;
    t->dec_repl[t->n_dec_repl++] = r;
    return RC_OK;
}

static rc_t load_strip(core_tok_t *t, json_t *n, core_err_t *err)
{
    const char *s;
    size_t len;
    rc_t rc = get_str(n, "decoder Strip", "content", &s, &len, err);
    json_t *start = json_object_get(n, "start"), *stop = json_object_get(n, "stop");
    if (rc == RC_OK && (len == 0 || !json_is_integer(start) || !json_is_integer(stop) ||
                        json_integer_value(start) < 0 || json_integer_value(stop) < 0 ||
                        json_integer_value(start) > 1024 || json_integer_value(stop) > 1024))
        rc = core_err(err, RC_FORMAT, "decoder Strip: content/start/stop invalid");
    if (rc == RC_OK)
        rc = arena_add(t, s, len, &t->strip_off, err);
    t->strip_len = (uint32_t)len;
    t->strip_start = rc == RC_OK ? (size_t)json_integer_value(start) : 0;
    t->strip_stop = rc == RC_OK ? (size_t)json_integer_value(stop) : 0;
    return rc;
}

static rc_t load_decoder(core_tok_t *t, json_t *n, int depth, core_err_t *err)
{
    if (!n || json_is_null(n))
        return RC_OK;
    const char *type = json_string_value(json_object_get(n, "type"));
    if (!json_is_object(n) || !type || depth > 4)
        return core_err(err, RC_FORMAT, "decoder: expected an object with a type");
    const char *s, *c;
    size_t len, clen;
    rc_t rc;
    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(n, "decoders");
        if (!json_is_array(arr))
            return core_err(err, RC_FORMAT, "decoder.decoders: expected an array");
        for (size_t i = 0; i < json_array_size(arr); i++)
            if ((rc = load_decoder(t, json_array_get(arr, i), depth + 1, err)) != RC_OK)
                return rc;
        return RC_OK;
    }
    if (strcmp(type, "ByteLevel") == 0)
        return (t->dec_byte_level = true), RC_OK;
    if (strcmp(type, "ByteFallback") == 0)
        return (t->dec_byte_fallback = true), RC_OK;
    if (strcmp(type, "Fuse") == 0)
        return RC_OK; /* decoding already produces one string */
    if (strcmp(type, "Strip") == 0)
        return load_strip(t, n, err);
    if (strcmp(type, "Replace") == 0) {
        if ((rc = get_pattern_string(n, "decoder Replace", &s, &len, err)) != RC_OK ||
            (rc = get_str(n, "decoder Replace", "content", &c, &clen, err)) != RC_OK)
            return rc;
        return add_dec_repl(t, s, len, c, clen, err);
    }
    if (strcmp(type, "Metaspace") == 0) {
        if ((rc = get_str(n, "decoder Metaspace", "replacement", &s, &len, err)) != RC_OK ||
            (rc = add_dec_repl(t, s, len, " ", 1, err)) != RC_OK)
            return rc;
        const char *scheme = json_string_value(json_object_get(n, "prepend_scheme"));
        bool strip = scheme ? strcmp(scheme, "never") != 0 : get_bool(n, "add_prefix_space", true);
        t->strip_start = strip ? 1 : 0;
        t->strip_len = 1;
        return arena_add(t, " ", 1, &t->strip_off, err);
    }
    return core_err(err, RC_UNSUPPORTED, "decoder type '%.64s' is not supported", type);
}

/* ---- assembly ---- */
static int32_t find_named(const core_tok_t *t, const char *const *names)
{
    for (; *names; names++) {
        int32_t id = core_tok_lookup(t, *names);
        if (id >= 0)
            return id;
    }
    return -1;
}

static rc_t finish(core_tok_t *t, core_err_t *err)
{
    core__tok_bpe_t *b = &t->bpe;
    b->strs = (core__tok_strings_t){t->arena, t->voff, t->vlen};
    for (int i = 0; i < 256; i++) {
        char u8[4];
        size_t l = core_utf8_encode(core__tok_byte_to_cp((uint8_t)i), u8);
        b->bl_ids[i] = vocab_id(t, u8, l);
    }
    t->n_vocab = t->n_model;
    for (size_t i = 0; i < t->n_added; i++)
        t->n_vocab = t->added[i].id >= t->n_vocab ? t->added[i].id + 1 : t->n_vocab;
    t->added_of_id = malloc(((size_t)t->n_vocab + 1) * sizeof *t->added_of_id);
    if (!t->added_of_id)
        return core_err(err, RC_NOMEM, "tokenizer: out of memory");
    memset(t->added_of_id, 0xFF, ((size_t)t->n_vocab + 1) * sizeof *t->added_of_id);
    for (size_t i = 0; i < t->n_added; i++)
        t->added_of_id[t->added[i].id] = (int32_t)i;
    for (size_t i = 0; i < t->n_prefix; i++)
        if (t->prefix[i] >= t->n_vocab)
            return core_err(err, RC_FORMAT, "post_processor: id %d out of vocab", t->prefix[i]);
    for (size_t i = 0; i < t->n_suffix; i++)
        if (t->suffix[i] >= t->n_vocab)
            return core_err(err, RC_FORMAT, "post_processor: id %d out of vocab", t->suffix[i]);
    static const char *const bos[] = {"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", NULL};
    static const char *const eos[] = {"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", NULL};
    t->bos = t->n_prefix ? t->prefix[0] : find_named(t, bos);
    t->eos = find_named(t, eos);
    return RC_OK;
}

static rc_t load_root(core_tok_t *t, json_t *root, core_err_t *err)
{
    if (!json_is_object(root))
        return core_err(err, RC_FORMAT, "tokenizer.json: top level must be an object");
    rc_t rc = load_model(t, json_object_get(root, "model"), err);
    if (rc == RC_OK)
        rc = load_added(t, json_object_get(root, "added_tokens"), err);
    if (rc == RC_OK)
        rc = load_normalizer(t, json_object_get(root, "normalizer"), 0, err);
    if (rc == RC_OK)
        rc = load_pre(t, json_object_get(root, "pre_tokenizer"), 0, err);
    if (rc == RC_OK)
        rc = load_post(t, json_object_get(root, "post_processor"), 0, err);
    if (rc == RC_OK)
        rc = load_decoder(t, json_object_get(root, "decoder"), 0, err);
    if (rc == RC_OK)
        rc = finish(t, err);
    return rc;
}

rc_t core_tok_load_mem(const char *json, size_t len, core_tok_t **out, core_err_t *err)
{
    *out = NULL;
    if (!json || len > TOK_MAX_FILE)
        return core_err(err, RC_LIMIT, "tokenizer.json: larger than 1 GiB");
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return core_err(err, RC_FORMAT, "tokenizer.json: line %d: %s", jerr.line, jerr.text);
    core_tok_t *t = calloc(1, sizeof *t);
    rc_t rc = t ? load_root(t, root, err) : core_err(err, RC_NOMEM, "tokenizer: out of memory");
    json_decref(root);
    if (rc != RC_OK) {
        core_tok_free(t);
        return rc;
    }
    *out = t;
    return RC_OK;
}

rc_t core_tok_load(const char *path, core_tok_t **out, core_err_t *err)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return core_err(err, RC_IO, "%s: cannot open", path);
    char *buf = NULL;
    rc_t rc = RC_OK;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0)
        rc = core_err(err, RC_IO, "%s: cannot determine size", path);
    else if ((unsigned long)size > TOK_MAX_FILE)
        rc = core_err(err, RC_LIMIT, "%s: larger than 1 GiB", path);
    else if (!(buf = malloc((size_t)size + 1)))
        rc = core_err(err, RC_NOMEM, "%s: out of memory", path);
    else if (fread(buf, 1, (size_t)size, f) != (size_t)size)
        rc = core_err(err, RC_IO, "%s: read failed", path);
    fclose(f);
    if (rc == RC_OK) {
        rc = core_tok_load_mem(buf, (size_t)size, out, err);
        if (rc != RC_OK && err) {
            core_err_t e = *err;
            core_err(err, rc, "%s: %s", path, e.msg);
        }
    }
    free(buf);
    return rc;
}

void core_tok_free(core_tok_t *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n_pre; i++)
        core__tok_re_free(t->pre[i].re);
    core__tok_strmap_free(&t->bpe.vocab);
    core__tok_pairmap_free(&t->bpe.merges);
    free(t->arena);
    free(t->voff);
    free(t->vlen);
    free(t->added);
    free(t->added_of_id);
    free(t->norm);
    free(t->pre);
    free(t->prefix);
    free(t->suffix);
    free(t->dec_repl);
    free(t);
}

int core_tok_n_vocab(const core_tok_t *t) { return t->n_vocab; }
int core_tok_bos(const core_tok_t *t) { return t->bos; }
int core_tok_eos(const core_tok_t *t) { return t->eos; }

int core_tok_lookup(const core_tok_t *t, const char *piece)
{
    size_t len = strlen(piece);
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == len && memcmp(t->arena + t->added[i].off, piece, len) == 0)
            return t->added[i].id;
    return vocab_id(t, piece, len);
}

const char *core__tok_piece(const core_tok_t *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->n_vocab)
        return NULL;
    int32_t a = t->added_of_id[id];
    if (a >= 0) {
        *len = t->added[a].len;
        return t->arena + t->added[a].off;
    }
    if (id >= t->n_model || t->vlen[id] == UINT32_MAX)
        return NULL;
    *len = t->vlen[id];
    return t->arena + t->voff[id];
}
