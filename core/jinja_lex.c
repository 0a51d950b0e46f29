/* jinja_lex.c - the preprocessing and tokenizer of core/jinja, a port of
 * @huggingface/jinja's lexer.ts (0.5.11): trailing-newline drop, lstrip_blocks,
 * trim_blocks and {% generation %} removal as string rewrites, then one left-to-right
 * scan. The reference works on UTF-16 but only ever compares against ASCII, so a byte
 * scan gives the same tokens; JS \s (which includes some non-ASCII spaces) is decoded.
 * Every rewritten byte keeps its offset in the original source so errors say line:col.
 * Called only while compiling; no shared state. */
#include <stdio.h>
#include <string.h>

#include "core/jinja_int.h"

/* A rewritten source: bytes plus the original offset of each byte. */
typedef struct {
    char *p;
    size_t *map;
    size_t n;
} pre_t;

static rc_t pre_alloc(core__jinja_arena_t *a, pre_t *o, size_t n)
{
    o->p = core__jinja_alloc(a, n + 1);
    o->map = core__jinja_alloc(a, (n + 1) * sizeof(size_t));
    o->n = 0;
    return o->p && o->map ? RC_OK : RC_NOMEM;
}

static void pre_put(pre_t *o, const pre_t *in, size_t i)
{
    o->p[o->n] = in->p[i];
    o->map[o->n++] = in->map[i];
}

/* Length in bytes of a JS \s character at s[i], 0 if none. */
static size_t ws_len(const char *s, size_t n, size_t i)
{
    if (i >= n)
        return 0;
    if ((unsigned char)s[i] < 0x80)
        return core__jinja_is_space((unsigned char)s[i]) ? 1 : 0;
    size_t j = i;
    uint32_t cp = core__jinja_utf8_next(s, n, &j);
    return core__jinja_is_space(cp) ? j - i : 0;
}

/* First index at or after i that is not JS \s. */
static size_t skip_space(const char *s, size_t n, size_t i)
{
    for (size_t w = ws_len(s, n, i); w > 0; w = ws_len(s, n, i))
        i += w;
    return i;
}

/* JS multiline ^: the start, or after \n \r U+2028 U+2029. */
static int line_start(const pre_t *in, size_t i)
{
    if (i == 0)
        return 1;
    char c = in->p[i - 1];
    if (c == '\n' || c == '\r')
        return 1;
    return i >= 3 && (unsigned char)in->p[i - 3] == 0xE2 && (unsigned char)in->p[i - 2] == 0x80 &&
           ((unsigned char)c == 0xA8 || (unsigned char)c == 0xA9);
}

/* template.replace(/^[ \t]*({[#%-])/gm, "$1") */
static rc_t pre_lstrip(core__jinja_arena_t *a, const pre_t *in, pre_t *o)
{
    if (pre_alloc(a, o, in->n))
        return RC_NOMEM;
    size_t i = 0;
    while (i < in->n) {
        if (line_start(in, i)) {
            size_t j = i;
            while (j < in->n && (in->p[j] == ' ' || in->p[j] == '\t'))
                j++;
            if (j + 1 < in->n && in->p[j] == '{' && strchr("#%-", in->p[j + 1]) && in->p[j + 1]) {
                pre_put(o, in, j);
                pre_put(o, in, j + 1);
                i = j + 2;
                continue;
            }
        }
        pre_put(o, in, i++);
    }
    return RC_OK;
}

/* template.replace(/([#%-]})\n/g, "$1") */
static rc_t pre_trim(core__jinja_arena_t *a, const pre_t *in, pre_t *o)
{
    if (pre_alloc(a, o, in->n))
        return RC_NOMEM;
    size_t i = 0;
    while (i < in->n) {
        if (i + 2 < in->n && in->p[i] && strchr("#%-", in->p[i]) && in->p[i + 1] == '}' &&
            in->p[i + 2] == '\n') {
            pre_put(o, in, i);
            pre_put(o, in, i + 1);
            i += 3;
            continue;
        }
        pre_put(o, in, i++);
    }
    return RC_OK;
}

/* Matches {%(-?)\s*(?:end)?generation\s*(-?)%} at i; returns its end or 0. */
static size_t gen_tag(const pre_t *in, size_t i, int *lstrip, int *rstrip)
{
    const char *s = in->p;
    size_t n = in->n;
    if (i + 1 >= n || s[i] != '{' || s[i + 1] != '%')
        return 0;
    i += 2;
    *lstrip = i < n && s[i] == '-';
    i += (size_t)*lstrip;
    i = skip_space(s, n, i);
    if (i + 3 <= n && memcmp(s + i, "end", 3) == 0 && !(i + 10 <= n && memcmp(s + i, "generation", 10) == 0))
        i += 3;
    if (!(i + 10 <= n && memcmp(s + i, "generation", 10) == 0))
        return 0;
    i += 10;
    i = skip_space(s, n, i);
    *rstrip = i < n && s[i] == '-';
    i += (size_t)*rstrip;
    if (i + 1 >= n || s[i] != '%' || s[i + 1] != '}')
        return 0;
    return i + 2;
}

/* The transformers {% generation %} / {% endgeneration %} tags vanish, taking the
 * whitespace around them when they carry '-'. */
static rc_t pre_generation(core__jinja_arena_t *a, const pre_t *in, pre_t *o)
{
    if (pre_alloc(a, o, in->n))
        return RC_NOMEM;
    size_t i = 0, done = 0; /* done: end of the last match */
    while (i < in->n) {
        int ls = 0, rs = 0;
        size_t end = gen_tag(in, i, &ls, &rs);
        if (end == 0) {
            pre_put(o, in, i++);
            continue;
        }
        if (ls) { /* drop the whitespace run already copied before the tag */
            size_t q = i, w;
            while (q > done) {
                size_t k = q - 1;
                while (k > done && ((unsigned char)in->p[k] & 0xC0) == 0x80)
                    k--;
                w = ws_len(in->p, in->n, k);
                if (w == 0 || k + w != q)
                    break;
                q = k;
            }
            o->n -= i - q;
        }
        size_t j = skip_space(in->p, in->n, end);
        if (!rs)
            for (size_t k = end; k < j; k++)
                pre_put(o, in, k);
        i = done = j;
    }
    return RC_OK;
}

static rc_t preprocess(core__jinja_arena_t *a, const char *src, size_t len, pre_t *out)
{
    pre_t p0, p1, p2;
    if (pre_alloc(a, &p0, len))
        return RC_NOMEM;
    memcpy(p0.p, src, len);
    for (size_t i = 0; i < len; i++)
        p0.map[i] = i;
    p0.n = len && src[len - 1] == '\n' ? len - 1 : len;
    if (pre_lstrip(a, &p0, &p1) || pre_trim(a, &p1, &p2) || pre_generation(a, &p2, out))
        return RC_NOMEM;
    out->map[out->n] = len;
    return RC_OK;
}

void core__jinja_linecol(const char *src, size_t len, size_t pos, char *buf, size_t cap)
{
    size_t line = 1, col = 1;
    for (size_t i = 0; i < pos && i < len; i++) {
        if (src[i] == '\n') {
            line++;
            col = 1;
        } else if (((unsigned char)src[i] & 0xC0) != 0x80) {
            col++;
        }
    }
    snprintf(buf, cap, "%zu:%zu", line, col);
}

/* ---- the scan ---- */
typedef struct {
    core__jinja_arena_t *a;
    const char *src; /* original, for messages */
    size_t src_len;
    pre_t in;
    size_t i;
    core__jinja_tok_t *t;
    size_t n, cap;
    int depth; /* curly brackets open inside an expression */
    core_err_t *err;
} lex_t;

static rc_t lex_fail(lex_t *l, size_t i, const char *what)
{
    char lc[48];
    core__jinja_linecol(l->src, l->src_len, l->in.map[i < l->in.n ? i : l->in.n], lc, sizeof lc);
    return core_err(l->err, RC_FORMAT, "template %s: %s", lc, what);
}

static rc_t lex_push(lex_t *l, core__jinja_tok_type_t type, const char *s, size_t len, size_t at)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        core__jinja_tok_t *t = core__jinja_alloc(l->a, cap * sizeof *t);
        if (!t)
            return RC_NOMEM;
        if (l->n)
            memcpy(t, l->t, l->n * sizeof *t);
        l->t = t;
        l->cap = cap;
    }
    l->t[l->n++] = (core__jinja_tok_t){type, s, len, l->in.map[at]};
    return RC_OK;
}

static int last_type(const lex_t *l)
{
    return l->n ? (int)l->t[l->n - 1].type : -1;
}

static void strip_trailing(lex_t *l)
{
    if (last_type(l) != JT_TEXT)
        return;
    core__jinja_tok_t *t = &l->t[l->n - 1];
    while (t->len > 0) {
        size_t k = t->len - 1;
        while (k > 0 && ((unsigned char)t->s[k] & 0xC0) == 0x80)
            k--;
        size_t w = ws_len(t->s, t->len, k);
        if (w == 0 || k + w != t->len)
            break;
        t->len = k;
    }
    if (t->len == 0)
        l->n--;
}

static void skip_ws(lex_t *l)
{
    l->i = skip_space(l->in.p, l->in.n, l->i);
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int is_word(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static int hexval(char c)
{
    if (is_digit(c))
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int hex_at(const lex_t *l, size_t i, size_t k, uint32_t *v)
{
    *v = 0;
    for (size_t j = 0; j < k; j++) {
        int h = i + j < l->in.n ? hexval(l->in.p[i + j]) : -1;
        if (h < 0)
            return 0;
        *v = *v * 16 + (uint32_t)h;
    }
    return 1;
}

/* One backslash escape at l->i (past the backslash) appended to out. */
static rc_t lex_escape(lex_t *l, char *out, size_t *o)
{
    static const char from[] = "ntrbfv'\"\\", to[] = "\n\t\r\b\f\v'\"\\";
    char e = l->in.p[l->i++];
    if (e == 'x' || e == 'u') {
        size_t k = e == 'x' ? 2 : 4;
        uint32_t v;
        if (!hex_at(l, l->i, k, &v))
            return lex_fail(l, l->i, "invalid hexadecimal escape sequence");
        l->i += k;
        uint32_t lo;
        if (v >= 0xD800 && v < 0xDC00 && l->i + 6 <= l->in.n && l->in.p[l->i] == '\\' &&
            l->in.p[l->i + 1] == 'u' && hex_at(l, l->i + 2, 4, &lo) && lo >= 0xDC00 && lo < 0xE000) {
            v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
            l->i += 6;
        } else if (v >= 0xD800 && v < 0xE000) {
            v = 0xFFFD; /* a lone surrogate has no UTF-8 form */
        }
        *o += core__jinja_utf8_put(v, out + *o);
        return RC_OK;
    }
    const char *f = e ? strchr(from, e) : NULL;
    if (!f)
        return lex_fail(l, l->i - 1, "unexpected escaped character");
    out[(*o)++] = to[f - from];
    return RC_OK;
}

static rc_t lex_string(lex_t *l)
{
    size_t at = l->i;
    char q = l->in.p[l->i++];
    /* decoded text is never longer than the source (\u escapes shrink or stay) */
    char *out = core__jinja_alloc(l->a, l->in.n - l->i + 4);
    size_t o = 0;
    if (!out)
        return RC_NOMEM;
    for (;;) {
        if (l->i >= l->in.n)
            return lex_fail(l, at, "unterminated string literal");
        char c = l->in.p[l->i];
        if (c == q)
            break;
        if (c == '\\') {
            l->i++;
            if (l->i >= l->in.n)
                return lex_fail(l, at, "unterminated string literal");
            rc_t rc = lex_escape(l, out, &o);
            if (rc)
                return rc;
            continue;
        }
        out[o++] = c;
        l->i++;
    }
    l->i++;
    return lex_push(l, JT_STR, out, o, at);
}

static rc_t lex_digits(lex_t *l)
{
    size_t s = l->i;
    while (l->i < l->in.n && is_digit(l->in.p[l->i]))
        l->i++;
    return l->i > s && l->i >= l->in.n ? lex_fail(l, l->i, "unexpected end of input") : RC_OK;
}

/* Digits with an optional fraction, starting at l->i; from: where the token starts. */
static rc_t lex_number(lex_t *l, size_t from, int allow_frac, core__jinja_tok_type_t empty_type)
{
    size_t d0 = l->i;
    rc_t rc = lex_digits(l);
    if (rc)
        return rc;
    if (l->i > d0 && allow_frac && l->in.p[l->i] == '.' && l->i + 1 < l->in.n &&
        is_digit(l->in.p[l->i + 1])) {
        l->i++;
        rc = lex_digits(l);
        if (rc)
            return rc;
    }
    core__jinja_tok_type_t type = l->i > d0 ? JT_NUM : empty_type;
    return lex_push(l, type, l->in.p + from, l->i - from, from);
}

static const struct {
    const char *seq;
    core__jinja_tok_type_t type;
} lex_table[] = {
    {"{%", JT_OPEN_STMT}, {"%}", JT_CLOSE_STMT}, {"{{", JT_OPEN_EXPR}, {"}}", JT_CLOSE_EXPR},
    {"(", JT_LPAREN},     {")", JT_RPAREN},      {"{", JT_LBRACE},     {"}", JT_RBRACE},
    {"[", JT_LBRACKET},   {"]", JT_RBRACKET},    {",", JT_COMMA},      {".", JT_DOT},
    {":", JT_COLON},      {"|", JT_PIPE},        {"<=", JT_CMP},       {">=", JT_CMP},
    {"==", JT_CMP},       {"!=", JT_CMP},        {"<", JT_CMP},        {">", JT_CMP},
    {"+", JT_ADD},        {"-", JT_ADD},         {"~", JT_ADD},        {"**", JT_POW},
    {"*", JT_MUL},        {"//", JT_MUL},        {"/", JT_MUL},        {"%", JT_MUL},
    {"=", JT_EQUALS},
};

static int lex_starts(const lex_t *l, const char *seq)
{
    size_t k = strlen(seq);
    return l->i + k <= l->in.n && memcmp(l->in.p + l->i, seq, k) == 0;
}

/* Text outside tags, when the previous token allows it; *done if one was pushed. */
static rc_t lex_text(lex_t *l, int *done)
{
    int lt = last_type(l);
    *done = 0;
    if (!(lt == -1 || lt == JT_CLOSE_STMT || lt == JT_CLOSE_EXPR || lt == JT_COMMENT))
        return RC_OK;
    size_t s = l->i;
    const char *p = l->in.p;
    while (l->i < l->in.n && !(p[l->i] == '{' && l->i + 1 < l->in.n &&
                               (p[l->i + 1] == '%' || p[l->i + 1] == '{' || p[l->i + 1] == '#')))
        l->i++;
    if (l->i == s)
        return RC_OK;
    *done = 1;
    return lex_push(l, JT_TEXT, p + s, l->i - s, s);
}

static rc_t lex_comment(lex_t *l)
{
    size_t at = l->i;
    l->i += 2;
    int strip_before = l->i < l->in.n && l->in.p[l->i] == '-';
    l->i += (size_t)strip_before;
    size_t s = l->i;
    while (!(l->i + 1 < l->in.n && l->in.p[l->i] == '#' && l->in.p[l->i + 1] == '}')) {
        if (l->i + 2 >= l->in.n)
            return lex_fail(l, at, "missing end of comment tag");
        l->i++;
    }
    size_t len = l->i - s;
    int strip_after = len > 0 && l->in.p[l->i - 1] == '-';
    if (strip_before)
        strip_trailing(l);
    rc_t rc = lex_push(l, JT_COMMENT, l->in.p + s, len - (size_t)strip_after, at);
    l->i += 2;
    if (strip_after)
        skip_ws(l);
    return rc;
}

/* +/- : binary after an operand, else a unary sign possibly glued to a number. */
static rc_t lex_sign(lex_t *l, int *done)
{
    int lt = last_type(l);
    *done = 0;
    if (lt == JT_TEXT || lt == -1)
        return lex_fail(l, l->i, "unexpected character");
    if (lt == JT_IDENT || lt == JT_NUM || lt == JT_STR || lt == JT_RPAREN || lt == JT_RBRACKET)
        return RC_OK;
    *done = 1;
    size_t from = l->i++;
    return lex_number(l, from, 1, JT_UNARY);
}

static rc_t lex_table_match(lex_t *l, int *done)
{
    *done = 0;
    for (size_t k = 0; k < sizeof lex_table / sizeof lex_table[0]; k++) {
        if (lex_table[k].type == JT_CLOSE_EXPR && l->depth > 0)
            continue;
        if (!lex_starts(l, lex_table[k].seq))
            continue;
        size_t len = strlen(lex_table[k].seq);
        rc_t rc = lex_push(l, lex_table[k].type, l->in.p + l->i, len, l->i);
        if (lex_table[k].type == JT_OPEN_EXPR)
            l->depth = 0;
        else if (lex_table[k].type == JT_LBRACE)
            l->depth++;
        else if (lex_table[k].type == JT_RBRACE)
            l->depth--;
        l->i += len;
        *done = 1;
        return rc;
    }
    return RC_OK;
}

/* One step of the reference's main loop. */
static rc_t lex_step(lex_t *l)
{
    int done;
    rc_t rc = lex_text(l, &done);
    if (rc || done)
        return rc;
    if (lex_starts(l, "{#"))
        return lex_comment(l);
    if (lex_starts(l, "{%-") || lex_starts(l, "{{-")) {
        strip_trailing(l);
        int stmt = l->in.p[l->i + 1] == '%';
        if (!stmt)
            l->depth = 0;
        rc = lex_push(l, stmt ? JT_OPEN_STMT : JT_OPEN_EXPR, l->in.p + l->i, 2, l->i);
        l->i += 3;
        return rc;
    }
    size_t w0 = l->i;
    skip_ws(l);
    if (l->i > w0 && l->i >= l->in.n)
        return lex_fail(l, l->i, "unexpected end of input");
    if (lex_starts(l, "-%}") || lex_starts(l, "-}}")) {
        int stmt = l->in.p[l->i + 1] == '%';
        rc = lex_push(l, stmt ? JT_CLOSE_STMT : JT_CLOSE_EXPR, l->in.p + l->i + 1, 2, l->i);
        l->i += 3;
        skip_ws(l);
        return rc;
    }
    char c = l->in.p[l->i];
    if (c == '-' || c == '+') {
        rc = lex_sign(l, &done);
        if (rc || done)
            return rc;
    }
    rc = lex_table_match(l, &done);
    if (rc || done)
        return rc;
    if (c == '\'' || c == '"')
        return lex_string(l);
    if (is_digit(c))
        return lex_number(l, l->i, last_type(l) != JT_DOT, JT_NUM);
    if (is_word(c)) {
        size_t s = l->i;
        while (l->i < l->in.n && is_word(l->in.p[l->i]))
            l->i++;
        if (l->i >= l->in.n)
            return lex_fail(l, l->i, "unexpected end of input");
        return lex_push(l, JT_IDENT, l->in.p + s, l->i - s, s);
    }
    return lex_fail(l, l->i, "unexpected character");
}

rc_t core__jinja_lex(core__jinja_arena_t *a, const char *src, size_t len,
                     core__jinja_tok_t **toks, size_t *n_toks, core_err_t *err)
{
    lex_t l = {.a = a, .src = src, .src_len = len, .err = err};
    rc_t rc = preprocess(a, src, len, &l.in);
    if (rc)
        return core_err(err, rc, "template: out of memory");
    while (l.i < l.in.n) {
        rc = lex_step(&l);
        if (rc)
            return rc == RC_NOMEM ? core_err(err, rc, "template: out of memory") : rc;
    }
    *toks = l.t;
    *n_toks = l.n;
    return RC_OK;
}
