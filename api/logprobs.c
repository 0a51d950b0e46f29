/* logprobs.c - per-token log-probabilities (see logprobs.h).
 *
 * Each entry keeps its token, its logprob (or none) and up to API_LP_TOP_MAX alternatives
 * (id, logprob), found with one pass over the logits and a small insertion-sorted list.
 * The log-sum-exp is taken around the row's maximum, in double, so large logits do not
 * overflow. Threads: see logprobs.h. */
#include "api/logprobs.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "api/json_util.h"
#include "core/unicode.h"

typedef struct {
    int32_t id;
    double lp;
} lp_alt_t;

typedef struct {
    int32_t token;
    bool has;          /* a logprob (false: the first prompt token) */
    double lp;
    int n_top;
    lp_alt_t top[API_LP_TOP_MAX];
} lp_entry_t;

struct api_lp {
    const core_tok_t *tok;
    int top;
    size_t offset0;
    lp_entry_t *e;
    size_t n, cap;
};

api_lp_t *api__lp_new(const core_tok_t *tok, int top, size_t offset0)
{
    api_lp_t *lp = calloc(1, sizeof *lp);
    if (!lp)
        return NULL;
    lp->tok = tok;
    lp->top = top < 0 ? 0 : top > API_LP_TOP_MAX ? API_LP_TOP_MAX : top;
    lp->offset0 = offset0;
    return lp;
}

void api__lp_free(api_lp_t *lp)
{
    if (!lp)
        return;
    free(lp->e);
    free(lp);
}

/* log sum exp of the row, around its maximum. */
static double lp_lse(const float *logits, int n_vocab)
{
    float mx = logits[0];
    for (int i = 1; i < n_vocab; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int i = 0; i < n_vocab; i++)
        sum += exp((double)logits[i] - (double)mx);
    return (double)mx + log(sum);
}

double api__lp_of(const float *logits, int n_vocab, int32_t token)
{
    return (double)logits[token] - lp_lse(logits, n_vocab);
}

/* The k largest logits, largest first (ties: smaller id first). */
static int lp_top(const float *logits, int n_vocab, int k, lp_alt_t *out)
{
    int n = 0;
    for (int i = 0; i < n_vocab && k > 0; i++) {
        if (n == k && logits[i] <= out[n - 1].lp)
            continue;
        int at = n < k ? n++ : k - 1;
        while (at > 0 && logits[i] > out[at - 1].lp) {
            out[at] = out[at - 1];
            at--;
        }
        out[at] = (lp_alt_t){i, logits[i]};
    }
    return n;
}

bool api__lp_add(api_lp_t *lp, const float *logits, int n_vocab, int32_t token)
{
    if (lp->n == lp->cap) {
        size_t cap = lp->cap ? lp->cap * 2 : 64;
        lp_entry_t *e = realloc(lp->e, cap * sizeof *e);
        if (!e)
            return false;
        lp->e = e;
        lp->cap = cap;
    }
    lp_entry_t *e = &lp->e[lp->n++];
    memset(e, 0, sizeof *e);
    e->token = token;
    if (!logits || token < 0 || token >= n_vocab)
        return true;
    double lse = lp_lse(logits, n_vocab);
    e->has = true;
    e->lp = (double)logits[token] - lse;
    e->n_top = lp_top(logits, n_vocab, lp->top, e->top);
    for (int i = 0; i < e->n_top; i++)
        e->top[i].lp -= lse;
    return true;
}

size_t api__lp_count(const api_lp_t *lp)
{
    return lp->n;
}

double api__lp_sum(const api_lp_t *lp, size_t from)
{
    double s = 0;
    for (size_t i = from; i < lp->n; i++)
        s += lp->e[i].has ? lp->e[i].lp : 0;
    return s;
}

/* The token decoded alone (special tokens kept). New reference. */
static json_t *lp_token_text(const api_lp_t *lp, int32_t id, size_t *len)
{
    char *text = NULL;
    size_t n = 0;
    core_err_t err;
    *len = 0;
    if (core_tok_decode(lp->tok, &id, 1, false, &text, &n, &err) != RC_OK)
        return json_string("");
    json_t *s = api__json_text(text, n);
    *len = n;
    free(text);
    return s;
}

static json_t *lp_top_json(const api_lp_t *lp, const lp_entry_t *e)
{
    if (!e->has)
        return json_null();
    json_t *o = json_object();
    for (int i = 0; o && i < e->n_top; i++) {
        size_t len;
        json_t *s = lp_token_text(lp, e->top[i].id, &len);
        json_object_set_new(o, json_string_value(s), json_real(e->top[i].lp));
        json_decref(s);
    }
    return o;
}

json_t *api__lp_json(const api_lp_t *lp, size_t from, size_t to)
{
    json_t *tokens = json_array(), *lps = json_array(), *tops = json_array(),
           *offs = json_array();
    size_t off = lp->offset0;
    for (size_t i = 0; i < from && i < lp->n; i++) {
        size_t len;
        json_decref(lp_token_text(lp, lp->e[i].token, &len));
        off += len;
    }
    for (size_t i = from; i < to && i < lp->n; i++) {
        const lp_entry_t *e = &lp->e[i];
        size_t len;
        json_array_append_new(tokens, lp_token_text(lp, e->token, &len));
        json_array_append_new(lps, e->has ? json_real(e->lp) : json_null());
        json_array_append_new(tops, lp->top ? lp_top_json(lp, e) : json_null());
        json_array_append_new(offs, json_integer((json_int_t)off));
        off += len;
    }
    return json_pack("{s:o,s:o,s:o,s:o}", "tokens", tokens, "token_logprobs", lps,
                     "top_logprobs", tops, "text_offset", offs);
}

static bool lp_utf8_valid(const char *s, size_t n)
{
    for (size_t i = 0, k; i < n; i += k) {
        uint32_t cp;
        k = core_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (k == 0)
            return false;
    }
    return true;
}

static json_t *lp_bytes_json(const char *s, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        json_array_append_new(arr, json_integer((unsigned char)s[i]));
    return arr;
}

/* {"token", "logprob", "bytes"} of one token. The text is the token decoded alone; the
 * bytes are that text's, unless the token's raw bytes are not UTF-8 on their own (a
 * piece of a character, which the text shows as U+FFFD): then the raw bytes, as OpenAI
 * gives them so that a client can join the pieces of a split character. New reference. */
static json_t *lp_chat_token(const api_lp_t *lp, int32_t id, json_t *logprob)
{
    char *text = NULL, *raw = NULL;
    size_t n = 0, n_raw = 0;
    core_err_t err;
    if (core_tok_decode(lp->tok, &id, 1, false, &text, &n, &err) != RC_OK)
        n = 0;
    json_t *bytes;
    if (core_tok_token_bytes(lp->tok, id, &raw, &n_raw, &err) == RC_OK &&
        !lp_utf8_valid(raw, n_raw))
        bytes = lp_bytes_json(raw, n_raw);
    else
        bytes = lp_bytes_json(text, n);
    json_t *o = json_pack("{s:o,s:o,s:o}", "token", api__json_text(text ? text : "", n),
                          "logprob", logprob, "bytes", bytes);
    free(text);
    free(raw);
    return o;
}

json_t *api__lp_chat_json(const api_lp_t *lp, size_t from, size_t to)
{
    json_t *content = json_array();
    for (size_t i = from; content && i < to && i < lp->n; i++) {
        const lp_entry_t *e = &lp->e[i];
        json_t *o = lp_chat_token(lp, e->token, e->has ? json_real(e->lp) : json_null());
        json_t *tops = json_array();
        for (int k = 0; tops && k < e->n_top; k++)
            json_array_append_new(tops, lp_chat_token(lp, e->top[k].id, json_real(e->top[k].lp)));
        json_object_set_new(o, "top_logprobs", tops);
        json_array_append_new(content, o);
    }
    return json_pack("{s:o}", "content", content);
}

json_t *api__lp_tokens_json(const api_lp_t *lp, size_t from, size_t to)
{
    json_t *arr = json_array();
    for (size_t i = from; arr && i < to && i < lp->n; i++) {
        const lp_entry_t *e = &lp->e[i];
        size_t len;
        json_array_append_new(arr, json_pack("{s:o,s:i,s:o}", "token",
                                             lp_token_text(lp, e->token, &len), "token_id",
                                             e->token, "logprob",
                                             e->has ? json_real(e->lp) : json_null()));
    }
    return arr;
}
