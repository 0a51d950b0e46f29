/* tok_encode.c - text -> ids: added tokens, normalizer, pre-tokenizers, BPE, post-processor.
 *
 * The order is HF tokenizers': added tokens are split out of the raw text first (special
 * ones only when parse_special); every remaining segment is normalized and pre-tokenized on
 * its own (so Llama-2's Prepend adds a U+2581 to each segment, as HF does), each pre-token
 * goes through BPE, and the post_processor's ids wrap the result when add_special.
 * All state lives in an enc_t on the caller's stack; the tokenizer is only read.
 * Strings are referenced by offset into enc_t.buf because it may move when it grows. */
#include <stdlib.h>
#include <string.h>

#include "core/tok_int.h"
#include "core/unicode.h"

typedef struct {
    size_t off, len;
} span_t;

typedef struct {
    size_t start, end; /* code point indices */
    bool match;
} run_t;

typedef struct {
    char *buf;
    size_t len, cap;
    span_t *pieces, *next;
    size_t n_pieces, cap_pieces, n_next, cap_next;
    uint32_t *cps;
    uint8_t *cats;
    size_t *offs; /* byte offset of each code point of the current piece (+1 for the end) */
    size_t cap_cps, cap_cats, cap_offs;
    run_t *runs;
    size_t cap_runs;
    core__tok_re_ctx_t re;
    core__tok_bpe_scratch_t bpe;
    int32_t *ids;
    size_t n_ids, cap_ids;
    core_err_t *err;
} enc_t;

static rc_t nomem(enc_t *e)
{
    return core_err(e->err, RC_NOMEM, "tokenizer encode: out of memory");
}

/* Append bytes (which may point into e->buf) and return their span. */
static rc_t buf_add(enc_t *e, const char *s, size_t off_in_buf, bool from_buf, size_t len,
                    span_t *out)
{
    if (!core__tok_grow(&e->buf, &e->cap, e->len + len + 1, 1))
        return nomem(e);
    memmove(e->buf + e->len, from_buf ? e->buf + off_in_buf : s, len);
    out->off = e->len;
    out->len = len;
    e->len += len;
    return RC_OK;
}

static rc_t piece_push(enc_t *e, span_t sp)
{
    if (sp.len == 0)
        return RC_OK;
    if (!core__tok_grow(&e->next, &e->cap_next, e->n_next + 1, sizeof *e->next))
        return nomem(e);
    e->next[e->n_next++] = sp;
    return RC_OK;
}

/* next becomes the current piece list. */
static void pieces_swap(enc_t *e)
{
    span_t *p = e->pieces;
    size_t c = e->cap_pieces;
    e->pieces = e->next;
    e->cap_pieces = e->cap_next;
    e->n_pieces = e->n_next;
    e->next = p;
    e->cap_next = c;
    e->n_next = 0;
}

/* ---- normalizers ---- */
static rc_t norm_replace(const core_tok_t *t, enc_t *e, const core__tok_norm_t *nm, span_t *cur)
{
    const char *pat = t->arena + nm->a_off, *to = t->arena + nm->b_off;
    span_t out = {e->len, 0}, piece;
    size_t i = 0, start = 0;
    rc_t rc = RC_OK;
    while (rc == RC_OK && i + nm->a_len <= cur->len) {
        if (memcmp(e->buf + cur->off + i, pat, nm->a_len) != 0) {
            i++;
            continue;
        }
        rc = buf_add(e, NULL, cur->off + start, true, i - start, &piece);
        if (rc == RC_OK)
            rc = buf_add(e, to, 0, false, nm->b_len, &piece);
        i += nm->a_len;
        start = i;
    }
    if (rc == RC_OK)
        rc = buf_add(e, NULL, cur->off + start, true, cur->len - start, &piece);
    out.len = e->len - out.off;
    *cur = out;
    return rc;
}

/* NFC is applied as the identity: text that is already NFC (nearly all real text) is
 * unchanged by it. Decomposed input may tokenize differently from HF. */
static rc_t normalize(const core_tok_t *t, enc_t *e, span_t *cur)
{
    for (size_t k = 0; k < t->n_norm; k++) {
        const core__tok_norm_t *nm = &t->norm[k];
        span_t a, b;
        rc_t rc = RC_OK;
        if (nm->kind == CORE__TOK_NORM_PREPEND && cur->len > 0) {
            size_t old = cur->off;
            rc = buf_add(e, t->arena + nm->a_off, 0, false, nm->a_len, &a);
            if (rc == RC_OK)
                rc = buf_add(e, NULL, old, true, cur->len, &b);
            cur->off = a.off;
            cur->len = a.len + b.len;
        } else if (nm->kind == CORE__TOK_NORM_REPLACE) {
            rc = norm_replace(t, e, nm, cur);
        }
        if (rc != RC_OK)
            return rc;
    }
    return RC_OK;
}

/* ---- pre-tokenizers ---- */
static rc_t decode_piece(enc_t *e, span_t sp, size_t *n)
{
    if (!core__tok_grow(&e->cps, &e->cap_cps, sp.len + 1, sizeof *e->cps) ||
        !core__tok_grow(&e->cats, &e->cap_cats, sp.len + 1, 1) ||
        !core__tok_grow(&e->offs, &e->cap_offs, sp.len + 1, sizeof *e->offs))
        return nomem(e);
    const unsigned char *s = (const unsigned char *)e->buf + sp.off;
    size_t k = 0;
    for (size_t i = 0; i < sp.len; k++) {
        size_t l = core_utf8_decode(s + i, sp.len - i, &e->cps[k]);
        if (l == 0) /* cannot happen: inputs and configured strings are valid UTF-8 */
            return core_err(e->err, RC_INTERNAL, "tokenizer: invalid UTF-8 after normalizing");
        e->cats[k] = (uint8_t)core_unicode_cat(e->cps[k]);
        e->offs[k] = i;
        i += l;
    }
    e->offs[k] = sp.len;
    *n = k;
    return RC_OK;
}

static rc_t run_push(enc_t *e, size_t *n, size_t start, size_t end, bool match)
{
    if (start == end)
        return RC_OK;
    if (!core__tok_grow(&e->runs, &e->cap_runs, *n + 1, sizeof *e->runs))
        return nomem(e);
    e->runs[(*n)++] = (run_t){start, end, match};
    return RC_OK;
}

/* HF's SplitDelimiterBehavior over the alternating gap/match runs (in place). */
static size_t runs_apply(run_t *r, size_t n, int behavior)
{
    size_t k = 0;
    bool prev = false;
    if (behavior == CORE__TOK_SPLIT_MERGED_NEXT) {
        for (size_t i = n; i-- > 0;) { /* fold from the right, then restore order */
            if (r[i].match && !prev && k > 0)
                r[n - k].start = r[i].start;
            else
                r[n - ++k] = r[i];
            prev = r[i].match;
        }
        memmove(r, r + n - k, k * sizeof *r);
        return k;
    }
    for (size_t i = 0; i < n; i++) {
        bool merge = behavior == CORE__TOK_SPLIT_MERGED_PREV ? r[i].match && !prev
                     : behavior == CORE__TOK_SPLIT_CONTIGUOUS ? r[i].match == prev
                                                              : false;
        if (behavior == CORE__TOK_SPLIT_REMOVED && r[i].match) {
            prev = true;
            continue;
        }
        if (merge && k > 0)
            r[k - 1].end = r[i].end;
        else
            r[k++] = r[i];
        prev = r[i].match;
    }
    return k;
}

static rc_t split_piece(enc_t *e, const core__tok_re_t *re, int behavior, bool invert,
                        span_t sp)
{
    size_t n = 0, n_runs = 0, pos = 0, ms = 0, me = 0;
    rc_t rc = decode_piece(e, sp, &n);
    core__tok_re_text_t txt = {e->cps, e->cats, n};
    while (rc == RC_OK && pos < n) {
        rc = core__tok_re_find(re, &e->re, &txt, pos, &ms, &me);
        if (rc == RC_NOT_FOUND) {
            rc = RC_OK;
            break;
        }
        if (rc == RC_OK)
            rc = run_push(e, &n_runs, pos, ms, invert);
        if (rc == RC_OK)
            rc = run_push(e, &n_runs, ms, me, !invert);
        pos = me;
    }
    if (rc == RC_LIMIT)
        return core_err(e->err, RC_LIMIT, "tokenizer: Split regex exceeded its step budget");
    if (rc == RC_NOMEM)
        return nomem(e);
    if (rc == RC_OK)
        rc = run_push(e, &n_runs, pos, n, invert);
    n_runs = rc == RC_OK ? runs_apply(e->runs, n_runs, behavior) : 0;
    for (size_t i = 0; rc == RC_OK && i < n_runs; i++)
        rc = piece_push(e, (span_t){sp.off + e->offs[e->runs[i].start],
                                    e->offs[e->runs[i].end] - e->offs[e->runs[i].start]});
    return rc;
}

static rc_t metaspace_piece(const core_tok_t *t, enc_t *e, const core__tok_pre_t *pr,
                            span_t sp, bool first)
{
    const char *rep = t->arena + pr->repl_off;
    size_t rl = pr->repl_len;
    span_t out = {e->len, 0}, tmp;
    rc_t rc = RC_OK;
    bool starts = sp.len > 0 && (e->buf[sp.off] == ' ' ||
                                 (sp.len >= rl && memcmp(e->buf + sp.off, rep, rl) == 0));
    if (!starts && (pr->prepend == CORE__TOK_PREPEND_ALWAYS ||
                    (pr->prepend == CORE__TOK_PREPEND_FIRST && first)))
        rc = buf_add(e, rep, 0, false, rl, &tmp);
    for (size_t i = 0; rc == RC_OK && i < sp.len; i++)
        rc = e->buf[sp.off + i] == ' ' ? buf_add(e, rep, 0, false, rl, &tmp)
                                       : buf_add(e, NULL, sp.off + i, true, 1, &tmp);
    out.len = e->len - out.off;
    if (rc != RC_OK || !pr->split)
        return rc == RC_OK ? piece_push(e, out) : rc;
    size_t start = 0; /* a piece starts at every replacement char (MergedWithNext) */
    for (size_t i = 1; rc == RC_OK && i + rl <= out.len; i++)
        if (memcmp(e->buf + out.off + i, rep, rl) == 0) {
            rc = piece_push(e, (span_t){out.off + start, i - start});
            start = i;
        }
    return rc == RC_OK ? piece_push(e, (span_t){out.off + start, out.len - start}) : rc;
}

static rc_t pre_step(const core_tok_t *t, enc_t *e, const core__tok_pre_t *pr, bool at_start)
{
    rc_t rc = RC_OK;
    for (size_t i = 0; rc == RC_OK && i < e->n_pieces; i++) {
        span_t sp = e->pieces[i];
        switch (pr->kind) {
        case CORE__TOK_PRE_SPLIT:
            rc = split_piece(e, pr->re, pr->behavior, pr->invert, sp);
            break;
        case CORE__TOK_PRE_METASPACE:
            rc = metaspace_piece(t, e, pr, sp, at_start && i == 0);
            break;
        default: /* ByteLevel: bytes are mapped later, in BPE */
            if (pr->add_prefix_space && e->buf[sp.off] != ' ') {
                span_t a, b;
                size_t old = sp.off;
                rc = buf_add(e, " ", 0, false, 1, &a);
                if (rc == RC_OK)
                    rc = buf_add(e, NULL, old, true, sp.len, &b);
                sp = (span_t){a.off, sp.len + 1};
            }
            if (rc == RC_OK)
                rc = pr->re ? split_piece(e, pr->re, CORE__TOK_SPLIT_ISOLATED, false, sp)
                            : piece_push(e, sp);
            break;
        }
    }
    pieces_swap(e);
    return rc;
}

/* One text segment between added tokens. */
static rc_t enc_segment(const core_tok_t *t, enc_t *e, const char *s, size_t len, bool at_start)
{
    span_t cur;
    e->len = 0;
    e->n_pieces = e->n_next = 0;
    if (len == 0)
        return RC_OK;
    rc_t rc = buf_add(e, s, 0, false, len, &cur);
    if (rc == RC_OK)
        rc = normalize(t, e, &cur);
    if (rc != RC_OK || cur.len == 0)
        return rc;
    if (!core__tok_grow(&e->pieces, &e->cap_pieces, 1, sizeof *e->pieces))
        return nomem(e);
    e->pieces[0] = cur;
    e->n_pieces = 1;
    for (size_t k = 0; rc == RC_OK && k < t->n_pre; k++)
        rc = pre_step(t, e, &t->pre[k], at_start);
    for (size_t i = 0; rc == RC_OK && i < e->n_pieces; i++) {
        rc = core__tok_bpe_word(&t->bpe, &e->bpe, e->buf + e->pieces[i].off, e->pieces[i].len,
                                &e->ids, &e->n_ids, &e->cap_ids);
        if (rc == RC_NOMEM)
            return nomem(e);
    }
    return rc;
}

/* ---- added tokens ---- */
static bool is_word_cp(uint32_t cp)
{
    uint32_t m = CORE_UCAT_MASK_L | CORE_UCAT_MASK_M | CORE_UCAT_BIT(CORE_UCAT_ND) |
                 CORE_UCAT_BIT(CORE_UCAT_PC);
    return (m >> core_unicode_cat(cp)) & 1;
}

/* Code point ending just before byte i (text is valid UTF-8). */
static size_t prev_cp(const char *s, size_t i, uint32_t *cp)
{
    size_t j = i;
    while (j > 0 && ((unsigned char)s[j - 1] & 0xC0) == 0x80 && i - j < 3)
        j--;
    j = j > 0 ? j - 1 : 0;
    core_utf8_decode((const unsigned char *)s + j, i - j, cp);
    return i - j;
}

static bool single_word_ok(const char *s, size_t len, size_t start, size_t end)
{
    uint32_t cp;
    if (start > 0 && (prev_cp(s, start, &cp), is_word_cp(cp)))
        return false;
    return !(end < len && core_utf8_decode((const unsigned char *)s + end, len - end, &cp) &&
             is_word_cp(cp));
}

/* The longest added token at byte pos, or -1. */
static int32_t added_at(const core_tok_t *t, const char *s, size_t len, size_t pos,
                        bool parse_special)
{
    unsigned char c = (unsigned char)s[pos];
    if (!((t->added_first[c >> 6] >> (c & 63)) & 1))
        return -1;
    for (size_t i = 0; i < t->n_added; i++) {
        const core__tok_added_t *a = &t->added[i];
        if ((a->special && !parse_special) || a->len > len - pos ||
            memcmp(s + pos, t->arena + a->off, a->len) != 0)
            continue;
        if (a->single_word && !single_word_ok(s, len, pos, pos + a->len))
            continue;
        return (int32_t)i;
    }
    return -1;
}

static rc_t push_id(enc_t *e, int32_t id)
{
    if (!core__tok_grow(&e->ids, &e->cap_ids, e->n_ids + 1, sizeof *e->ids))
        return nomem(e);
    e->ids[e->n_ids++] = id;
    return RC_OK;
}

static rc_t enc_text(const core_tok_t *t, enc_t *e, const char *text, size_t len,
                     bool parse_special)
{
    size_t seg = 0, pos = 0;
    rc_t rc = RC_OK;
    while (rc == RC_OK && pos < len) {
        int32_t k = added_at(t, text, len, pos, parse_special);
        if (k < 0) {
            pos++;
            continue;
        }
        const core__tok_added_t *a = &t->added[k];
        size_t ms = pos, me = pos + a->len;
        uint32_t cp;
        while (a->lstrip && ms > seg) { /* lstrip/rstrip swallow neighbouring whitespace */
            size_t l = prev_cp(text, ms, &cp);
            if (!core_unicode_is_space(cp))
                break;
            ms -= l;
        }
        rc = enc_segment(t, e, text + seg, ms - seg, seg == 0);
        if (rc == RC_OK)
            rc = push_id(e, a->id);
        size_t l;
        while (a->rstrip && me < len &&
               (l = core_utf8_decode((const unsigned char *)text + me, len - me, &cp)) &&
               core_unicode_is_space(cp))
            me += l;
        seg = pos = me;
    }
    return rc == RC_OK ? enc_segment(t, e, text + seg, len - seg, seg == 0) : rc;
}

core_tok_encode_params_t core_tok_encode_default_params(void)
{
    return (core_tok_encode_params_t){.add_special = true, .parse_special = true};
}

rc_t core_tok_encode(const core_tok_t *t, const char *text, size_t len,
                     core_tok_encode_params_t params, int32_t **ids, size_t *n_ids,
                     core_err_t *err)
{
    *ids = NULL;
    *n_ids = 0;
    if (!text && len)
        return core_err(err, RC_INVALID, "tokenizer encode: NULL text");
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t l = core_utf8_decode((const unsigned char *)text + i, len - i, &cp);
        if (l == 0)
            return core_err(err, RC_INVALID, "tokenizer encode: invalid UTF-8 at byte %zu", i);
        i += l;
    }
    enc_t e = {.err = err};
    e.re.budget = 100000000ull + 1000ull * len;
    rc_t rc = RC_OK;
    for (size_t i = 0; rc == RC_OK && params.add_special && i < t->n_prefix; i++)
        rc = push_id(&e, t->prefix[i]);
    if (rc == RC_OK)
        rc = enc_text(t, &e, text ? text : "", len, params.parse_special);
    for (size_t i = 0; rc == RC_OK && params.add_special && i < t->n_suffix; i++)
        rc = push_id(&e, t->suffix[i]);
    if (rc == RC_OK && !e.ids)
        rc = core__tok_grow(&e.ids, &e.cap_ids, 1, sizeof *e.ids) ? RC_OK : nomem(&e);
    if (rc == RC_OK) {
        *ids = e.ids;
        *n_ids = e.n_ids;
        e.ids = NULL;
    }
    free(e.ids);
    free(e.buf);
    free(e.pieces);
    free(e.next);
    free(e.cps);
    free(e.cats);
    free(e.offs);
    free(e.runs);
    core__tok_re_ctx_free(&e.re);
    core__tok_bpe_scratch_free(&e.bpe);
    return rc;
}
