/* tok_decode.c - ids -> text, whole or streamed, as HF's decoders would produce it.
 *
 * Each id becomes bytes: an added token its content (special ones dropped when skipping),
 * a <0xNN> piece its byte (ByteFallback), a byte-level piece its original bytes, other
 * pieces their text after the Replace steps (U+2581 -> space). The bytes then go through
 * one streaming stage: Strip's leading/trailing characters are removed at the ends of the
 * whole text, complete UTF-8 is emitted, a partial character waits for its next bytes, and
 * invalid bytes become U+FFFD (one per maximal invalid subpart, as from_utf8_lossy and
 * TextDecoder do). core_tok_decode is the stream run to its end, so both always agree.
 * A stream belongs to one thread; the tokenizer is only read. */
#include <stdlib.h>
#include <string.h>

#include "core/tok_int.h"
#include "core/unicode.h"

struct core_tok_stream {
    const core_tok_t *t;
    bool skip_special;
    char *pend; /* bytes not yet emitted: a partial character, or a possible leading strip */
    size_t n_pend, cap_pend;
    char *hold; /* trailing Strip characters withheld until more text follows */
    size_t n_hold, cap_hold, n_held_chars;
    char *out; /* the piece handed back, borrowed until the next call */
    size_t n_out, cap_out;
    char *tok; /* bytes of the current token */
    size_t n_tok, cap_tok;
    size_t stripped; /* leading Strip characters removed so far */
    bool started;    /* past the leading Strip */
};

static bool add(char **buf, size_t *n, size_t *cap, const void *s, size_t len)
{
    if (!core__tok_grow(buf, cap, *n + len + 1, 1))
        return false;
    if (len > 0)
        memcpy(*buf + *n, s, len);
    *n += len;
    (*buf)[*n] = 0;
    return true;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                          : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                                                 : -1;
}

/* Byte-level piece -> bytes; a piece with a char outside the mapping is kept as is (HF). */
static bool byte_level_bytes(core_tok_stream_t *s, const char *p, size_t len)
{
    size_t start = s->n_tok;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t l = core_utf8_decode((const unsigned char *)p + i, len - i, &cp);
        int b = l ? core__tok_cp_to_byte(cp) : -1;
        if (b < 0) {
            s->n_tok = start;
            return add(&s->tok, &s->n_tok, &s->cap_tok, p, len);
        }
        unsigned char c = (unsigned char)b;
        if (!add(&s->tok, &s->n_tok, &s->cap_tok, &c, 1))
            return false;
        i += l;
    }
    return true;
}

/* Apply the decoder's Replace steps to p, leaving the result in s->tok. */
static bool replaced_bytes(core_tok_stream_t *s, const char *p, size_t len)
{
    const core_tok_t *t = s->t;
    if (!add(&s->tok, &s->n_tok, &s->cap_tok, p, len))
        return false;
    for (size_t r = 0; r < t->n_dec_repl; r++) {
        const core__tok_repl_t *rp = &t->dec_repl[r];
        const char *from = t->arena + rp->from_off, *to = t->arena + rp->to_off;
        if (!memmem(s->tok, s->n_tok, from, rp->from_len))
            continue;
        char *src = s->tok;
        size_t n = s->n_tok;
        s->tok = NULL;
        s->n_tok = s->cap_tok = 0;
        bool ok = add(&s->tok, &s->n_tok, &s->cap_tok, "", 0);
        for (size_t i = 0; ok && i < n;) {
            if (i + rp->from_len <= n && memcmp(src + i, from, rp->from_len) == 0) {
                ok = add(&s->tok, &s->n_tok, &s->cap_tok, to, rp->to_len);
                i += rp->from_len;
            } else {
                ok = add(&s->tok, &s->n_tok, &s->cap_tok, src + i, 1);
                i++;
            }
        }
        free(src);
        if (!ok)
            return false;
    }
    return true;
}

static rc_t token_bytes(core_tok_stream_t *s, int32_t id)
{
    const core_tok_t *t = s->t;
    size_t len;
    const char *p = core__tok_piece(t, id, &len);
    s->n_tok = 0;
    if (!p)
        return RC_INVALID;
    int32_t a = t->added_of_id[id];
    bool ok;
    if (a >= 0)
        ok = (t->added[a].special && s->skip_special) || add(&s->tok, &s->n_tok, &s->cap_tok, p, len);
    else if (t->dec_byte_fallback && len == 6 && memcmp(p, "<0x", 3) == 0 && p[5] == '>' &&
             hexval(p[3]) >= 0 && hexval(p[4]) >= 0) {
        unsigned char b = (unsigned char)(hexval(p[3]) * 16 + hexval(p[4]));
        ok = add(&s->tok, &s->n_tok, &s->cap_tok, &b, 1);
    } else if (t->dec_byte_level)
        ok = byte_level_bytes(s, p, len);
    else
        ok = replaced_bytes(s, p, len);
    return ok ? RC_OK : RC_NOMEM;
}

/* Length of a UTF-8 sequence starting with c, 0 if c cannot start one. */
static size_t seq_need(unsigned char c)
{
    return c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                                                 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
}

static bool cont_ok(unsigned char lead, size_t idx, unsigned char b)
{
    if (idx == 1 && lead == 0xE0)
        return b >= 0xA0 && b <= 0xBF;
    if (idx == 1 && lead == 0xED)
        return b >= 0x80 && b <= 0x9F;
    if (idx == 1 && lead == 0xF0)
        return b >= 0x90 && b <= 0xBF;
    if (idx == 1 && lead == 0xF4)
        return b >= 0x80 && b <= 0x8F;
    return (b & 0xC0) == 0x80;
}

/* Leading Strip: drop up to strip_start copies of the strip char at the very start.
 * Returns false while the pending bytes could still be (a prefix of) one. */
static bool strip_leading(core_tok_stream_t *s)
{
    const core_tok_t *t = s->t;
    const char *c = t->arena + t->strip_off;
    size_t cl = t->strip_len;
    while (!s->started && s->stripped < t->strip_start && s->n_pend > 0) {
        size_t k = s->n_pend < cl ? s->n_pend : cl;
        if (memcmp(s->pend, c, k) != 0)
            break;
        if (k < cl)
            return false;
        memmove(s->pend, s->pend + cl, s->n_pend - cl);
        s->n_pend -= cl;
        s->stripped++;
    }
    if (s->n_pend > 0)
        s->started = true;
    return true;
}

/* Append text to out, withholding up to strip_stop trailing strip chars in hold. */
static bool emit_text(core_tok_stream_t *s, const char *p, size_t len)
{
    const core_tok_t *t = s->t;
    if (t->strip_stop == 0)
        return add(&s->out, &s->n_out, &s->cap_out, p, len);
    const char *c = t->arena + t->strip_off;
    size_t cl = t->strip_len;
    for (size_t i = 0; i < len;) {
        if (i + cl <= len && memcmp(p + i, c, cl) == 0) {
            if (!add(&s->hold, &s->n_hold, &s->cap_hold, c, cl))
                return false;
            s->n_held_chars++;
            i += cl;
            continue;
        }
        if (s->n_hold && !add(&s->out, &s->n_out, &s->cap_out, s->hold, s->n_hold))
            return false;
        s->n_hold = s->n_held_chars = 0;
        if (!add(&s->out, &s->n_out, &s->cap_out, p + i, 1))
            return false;
        i++;
    }
    /* Only the last strip_stop chars can be cut; older ones are certain to stay. */
    while (s->n_held_chars > t->strip_stop) {
        if (!add(&s->out, &s->n_out, &s->cap_out, s->hold, cl))
            return false;
        memmove(s->hold, s->hold + cl, s->n_hold - cl);
        s->n_hold -= cl;
        s->n_held_chars--;
    }
    return true;
}

/* Move complete characters from pend to out; final turns a partial tail into U+FFFD. */
static bool drain(core_tok_stream_t *s, bool final)
{
    static const char repl[] = "\xEF\xBF\xBD";
    const unsigned char *u = (const unsigned char *)s->pend;
    size_t i = 0, n = s->n_pend, run = 0; /* run: start of valid bytes not yet emitted */
    bool ok = true;
    while (ok && i < n) {
        size_t need = seq_need(u[i]), k = 1;
        while (need && k < need && i + k < n && cont_ok(u[i], k, u[i + k]))
            k++;
        if (need && k == need) {
            i += k;
            continue;
        }
        if (need && i + k == n && !final)
            break; /* a character still arriving */
        ok = emit_text(s, s->pend + run, i - run) && emit_text(s, repl, 3);
        i += k;
        run = i;
    }
    /* pend is NULL until the first push: no pointer arithmetic on it when empty (UB). */
    ok = ok && (i == run || emit_text(s, s->pend + run, i - run));
    if (n > i)
        memmove(s->pend, s->pend + i, n - i);
    s->n_pend = n - i;
    return ok;
}

core_tok_stream_t *core_tok_stream_new(const core_tok_t *t, bool skip_special)
{
    core_tok_stream_t *s = calloc(1, sizeof *s);
    if (s) {
        s->t = t;
        s->skip_special = skip_special;
        s->started = t->strip_start == 0;
    }
    return s;
}

void core_tok_stream_free(core_tok_stream_t *s)
{
    if (!s)
        return;
    free(s->pend);
    free(s->hold);
    free(s->out);
    free(s->tok);
    free(s);
}

rc_t core_tok_stream_push(core_tok_stream_t *s, int32_t id, const char **piece, size_t *len)
{
    s->n_out = 0;
    *piece = "";
    *len = 0;
    rc_t rc = token_bytes(s, id);
    if (rc != RC_OK)
        return rc;
    if (!add(&s->pend, &s->n_pend, &s->cap_pend, s->tok, s->n_tok))
        return RC_NOMEM;
    if (strip_leading(s) && !drain(s, false))
        return RC_NOMEM;
    if (s->out) {
        *piece = s->out;
        *len = s->n_out;
    }
    return RC_OK;
}

rc_t core_tok_stream_flush(core_tok_stream_t *s, const char **piece, size_t *len)
{
    s->n_out = 0;
    *piece = "";
    *len = 0;
    s->started = true; /* a pending strip-char prefix is just text now */
    if (!drain(s, true))
        return RC_NOMEM;
    s->n_hold = s->n_held_chars = 0; /* trailing Strip */
    if (s->out) {
        *piece = s->out;
        *len = s->n_out;
    }
    return RC_OK;
}

rc_t core_tok_decode(const core_tok_t *t, const int32_t *ids, size_t n_ids, bool skip_special,
                     char **text, size_t *len, core_err_t *err)
{
    *text = NULL;
    *len = 0;
    core_tok_stream_t *s = core_tok_stream_new(t, skip_special);
    char *buf = malloc(1);
    size_t n = 0, cap = 1;
    rc_t rc = s && buf ? RC_OK : core_err(err, RC_NOMEM, "tokenizer decode: out of memory");
    const char *p;
    size_t pl;
    for (size_t i = 0; rc == RC_OK && i <= n_ids; i++) {
        if (i < n_ids && (ids[i] < 0 || ids[i] >= t->n_vocab || !core__tok_piece(t, ids[i], &pl)))
            rc = core_err(err, RC_INVALID, "tokenizer decode: id %d at %zu out of range",
                          (int)ids[i], i);
        else if ((rc = i < n_ids ? core_tok_stream_push(s, ids[i], &p, &pl)
                                 : core_tok_stream_flush(s, &p, &pl)) != RC_OK ||
                 !add(&buf, &n, &cap, p, pl))
            rc = core_err(err, RC_NOMEM, "tokenizer decode: out of memory");
    }
    core_tok_stream_free(s);
    if (rc != RC_OK) {
        free(buf);
        return rc;
    }
    buf[n] = 0;
    *text = buf;
    *len = n;
    return RC_OK;
}

rc_t core_tok_token_bytes(const core_tok_t *t, int32_t id, char **bytes, size_t *len,
                          core_err_t *err)
{
    size_t pl;
    *bytes = NULL;
    *len = 0;
    if (id < 0 || id >= t->n_vocab || !core__tok_piece(t, id, &pl))
        return core_err(err, RC_INVALID, "tokenizer: token id %d out of range", (int)id);
    core_tok_stream_t *s = core_tok_stream_new(t, false); /* its token buffer is the answer */
    rc_t rc = s ? token_bytes(s, id) : RC_NOMEM;
    if (rc == RC_OK && !s->tok && !add(&s->tok, &s->n_tok, &s->cap_tok, "", 0))
        rc = RC_NOMEM;
    if (rc != RC_OK) {
        core_tok_stream_free(s);
        return core_err(err, rc, "tokenizer: out of memory");
    }
    *bytes = s->tok;
    *len = s->n_tok;
    s->tok = NULL;
    core_tok_stream_free(s);
    return RC_OK;
}
