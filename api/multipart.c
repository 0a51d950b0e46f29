/* multipart.c - streaming multipart/form-data parser (RFC 7578 on RFC 2046 section 5.1).
 * See api/multipart.h for the contract.
 *
 * A byte-driven state machine: PREAMBLE -> (delimiter) AFTER_DELIM -> HEAD -> DATA ->
 * (delimiter) AFTER_DELIM -> ... -> EPILOGUE after the close delimiter -> DONE on finish;
 * ERROR is sticky. The delimiter is CRLF "--" boundary. Its first byte, CR, occurs nowhere
 * else in it (bchars hold no CR), which keeps the search simple and linear: a delimiter
 * can only start at a CR, and when a partial match fails, no later start lies inside the
 * bytes already matched. So the only state carried across feeds is how many leading bytes
 * of the delimiter the input ended with (n_carry); those bytes are the delimiter's own,
 * so they need no buffer of their own. The first delimiter may sit at the very start of
 * the body, without a CRLF before it: the parser starts with a virtual CRLF already
 * "matched", and bytes that turn out not to be a delimiter are preamble, discarded.
 * Threads: one parser belongs to one thread. */
#include "api/multipart.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MP_PREAMBLE_MAX 1024
#define MP_HEAD_LINES_MAX 16
#define MP_DELIM_MAX (API_MP_BOUNDARY_MAX + 4) /* CRLF "--" boundary */
#define MP_VIRTUAL_CRLF 2                      /* the CRLF assumed before the body */

typedef enum {
    MP_PREAMBLE,    /* before the first delimiter: bytes are discarded */
    MP_AFTER_DELIM, /* after a delimiter: "--" (close), or padding and CRLF */
    MP_HEAD,        /* a part head, buffered up to API_MP_HEAD_MAX */
    MP_DATA,        /* part data, handed out as it comes */
    MP_EPILOGUE,    /* after the close delimiter: ignored */
    MP_DONE,        /* finish succeeded */
    MP_ERROR,       /* sticky: rc and err hold the first error */
} mp_state_t;

typedef enum {
    MP_AD_START, /* right after the boundary */
    MP_AD_DASH,  /* one '-' seen: the second makes the close delimiter */
    MP_AD_PAD,   /* transport padding (spaces, tabs) */
    MP_AD_CR,    /* CR seen: LF starts the part head */
} mp_after_t;

struct api_mp {
    api_mp_callbacks_t cb;
    mp_state_t state;
    mp_after_t after;
    rc_t rc;        /* RC_OK, or the sticky error */
    core_err_t err; /* its message; also the buffer handed to callbacks */
    char delim[MP_DELIM_MAX];
    size_t n_delim;
    size_t n_carry;    /* the input so far ends with delim[0..n_carry) */
    size_t offset;     /* body bytes consumed by earlier feeds */
    size_t n_preamble; /* bytes discarded as preamble, the virtual CRLF included */
    size_t n_parts;    /* parts started */
    /* the current part head */
    size_t head_off;   /* body offset of head[0] */
    size_t n_head;     /* bytes in head */
    size_t line_start; /* index in head of the current line */
    size_t n_lines;    /* complete non-empty lines */
    bool head_cr;      /* the last head byte was CR */
    bool have_disposition;
    char name[API_MP_NAME_MAX + 1];
    char head[API_MP_HEAD_MAX];
};

/* ---- character classes (ASCII only: no locale, no sign surprises) ---- */

static bool mp_is_alnum(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* RFC 7230 tchar: the characters of a token. */
static bool mp_is_tchar(unsigned char c)
{
    return mp_is_alnum(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* RFC 2046 bchars: the characters of a boundary (space too, but not last). */
static bool mp_is_bchar(unsigned char c)
{
    return mp_is_alnum(c) || (c != '\0' && strchr("'()+_,-./:=? ", c) != NULL);
}

/* The charset of a form field name we accept: [A-Za-z0-9._-]. */
static bool mp_is_namechar(unsigned char c)
{
    return mp_is_alnum(c) || c == '.' || c == '_' || c == '-';
}

/* Control bytes other than HTAB, and DEL. */
static bool mp_is_ctl(unsigned char c)
{
    return (c < 0x20 && c != '\t') || c == 0x7f;
}

static bool mp_ieq(const char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && strncasecmp(s, lit, n) == 0;
}

/* ---- a small lexer for header values: tokens, quoted-strings, parameters ---- */

typedef struct {
    const char *s;
    size_t n, i;
} mp_lex_t;

typedef struct {
    const char *name; /* borrowed from the lexer's string */
    size_t n_name;
    size_t val_at; /* index in the lexer's string where the value starts */
    char *val;     /* unescaped value, truncated to cap bytes (not NUL-terminated) */
    size_t cap;
    size_t n_val; /* full unescaped length; may exceed cap */
} mp_param_t;

static void mp_ows(mp_lex_t *lx)
{
    while (lx->i < lx->n && (lx->s[lx->i] == ' ' || lx->s[lx->i] == '\t'))
        lx->i++;
}

/* Length of the token at lx->i (0 if none); advances past it. */
static size_t mp_token(mp_lex_t *lx)
{
    size_t start = lx->i;
    while (lx->i < lx->n && mp_is_tchar((unsigned char)lx->s[lx->i]))
        lx->i++;
    return lx->i - start;
}

/* A token or a quoted-string (backslash escapes any byte but a control one, as
 * browsers escape '"' in file names). false when malformed, lx->i at the fault. */
static bool mp_value(mp_lex_t *lx, mp_param_t *pm)
{
    size_t k = 0;
    if (lx->i < lx->n && lx->s[lx->i] == '"') {
        lx->i++;
        for (;;) {
            if (lx->i >= lx->n)
                return false; /* unterminated */
            unsigned char c = (unsigned char)lx->s[lx->i];
            if (c == '"')
                break;
            if (c == '\\' && lx->i + 1 < lx->n)
                c = (unsigned char)lx->s[++lx->i];
            if (mp_is_ctl(c))
                return false;
            if (k < pm->cap)
                pm->val[k] = (char)c;
            k++;
            lx->i++;
        }
        lx->i++; /* the closing quote */
    } else {
        size_t start = lx->i, n = mp_token(lx);
        if (n == 0)
            return false;
        memcpy(pm->val, lx->s + start, n < pm->cap ? n : pm->cap);
        k = n;
    }
    pm->n_val = k;
    return true;
}

/* The next `; name=value` of a parameter list (empty parameters, as in a trailing ';',
 * are skipped). 1: a parameter in *pm; 0: end of input; -1: malformed at lx->i, *what
 * says what. */
static int mp_param_next(mp_lex_t *lx, mp_param_t *pm, const char **what)
{
    for (;;) {
        mp_ows(lx);
        if (lx->i == lx->n)
            return 0;
        if (lx->s[lx->i] != ';') {
            *what = "expected ';' before a parameter";
            return -1;
        }
        lx->i++;
        mp_ows(lx);
        if (lx->i < lx->n && lx->s[lx->i] != ';')
            break;
    }
    pm->name = lx->s + lx->i;
    pm->n_name = mp_token(lx);
    if (pm->n_name == 0) {
        *what = "expected a parameter name";
        return -1;
    }
    mp_ows(lx);
    if (lx->i == lx->n || lx->s[lx->i] != '=') {
        *what = "expected '=' after a parameter name";
        return -1;
    }
    lx->i++;
    mp_ows(lx);
    pm->val_at = lx->i;
    if (!mp_value(lx, pm)) {
        *what = "malformed parameter value (token or quoted-string expected)";
        return -1;
    }
    return 1;
}

/* ---- the boundary ---- */

static rc_t mp_boundary_check(const char *b, size_t n, core_err_t *err)
{
    if (n == 0)
        return core_err(err, RC_INVALID, "multipart boundary is empty");
    if (n > API_MP_BOUNDARY_MAX)
        return core_err(err, RC_INVALID, "multipart boundary is %zu chars, longer than %d", n,
                        API_MP_BOUNDARY_MAX);
    for (size_t i = 0; i < n; i++)
        if (!mp_is_bchar((unsigned char)b[i]))
            return core_err(err, RC_INVALID,
                            "multipart boundary has byte 0x%02x at char %zu, outside the "
                            "RFC 2046 bchars",
                            (unsigned char)b[i], i);
    if (b[n - 1] == ' ')
        return core_err(err, RC_INVALID, "multipart boundary ends with a space");
    return RC_OK;
}

/* "type/subtype" at the start of a Content-Type: RC_UNSUPPORTED unless multipart/form-data. */
static rc_t mp_media_type(mp_lex_t *lx, core_err_t *err)
{
    mp_ows(lx);
    size_t start = lx->i, n_type = mp_token(lx);
    bool ok = n_type > 0 && mp_ieq(lx->s + start, n_type, "multipart");
    if (ok && lx->i < lx->n && lx->s[lx->i] == '/') {
        lx->i++;
        size_t sub = lx->i, n_sub = mp_token(lx);
        ok = mp_ieq(lx->s + sub, n_sub, "form-data");
    } else {
        ok = false;
    }
    if (!ok)
        return core_err(err, RC_UNSUPPORTED, "Content-Type '%.64s' is not multipart/form-data",
                        lx->s);
    return RC_OK;
}

rc_t api__mp_boundary(const char *content_type, char boundary[API_MP_BOUNDARY_MAX + 1],
                      core_err_t *err)
{
    char val[API_MP_BOUNDARY_MAX + 1], found_val[API_MP_BOUNDARY_MAX + 1];
    mp_param_t pm = {.val = val, .cap = sizeof val};
    const char *what = "";
    bool found = false;
    boundary[0] = '\0'; /* stays empty on errors */
    if (!content_type)
        return core_err(err, RC_UNSUPPORTED, "no Content-Type; multipart/form-data expected");
    mp_lex_t lx = {content_type, strlen(content_type), 0};
    rc_t rc = mp_media_type(&lx, err);
    if (rc != RC_OK)
        return rc;
    for (;;) {
        int r = mp_param_next(&lx, &pm, &what);
        if (r < 0)
            return core_err(err, RC_INVALID, "Content-Type: %s at char %zu", what, lx.i);
        if (r == 0)
            break;
        if (!mp_ieq(pm.name, pm.n_name, "boundary"))
            continue;
        if (found)
            return core_err(err, RC_INVALID, "Content-Type has two boundary parameters");
        found = true;
        rc = mp_boundary_check(val, pm.n_val, err);
        if (rc != RC_OK)
            return rc;
        memcpy(found_val, val, pm.n_val);
        found_val[pm.n_val] = '\0';
    }
    if (!found)
        return core_err(err, RC_INVALID, "Content-Type multipart/form-data has no boundary");
    memcpy(boundary, found_val, strlen(found_val) + 1);
    return RC_OK;
}

/* ---- parser life cycle and errors ---- */

rc_t api__mp_new(const char *boundary, const api_mp_callbacks_t *cb, api_mp_t **out,
                 core_err_t *err)
{
    *out = NULL;
    /* api__mp_boundary already checked it; checked again so a caller's slip cannot
     * overflow delim. */
    size_t n = boundary ? strnlen(boundary, API_MP_BOUNDARY_MAX + 1) : 0;
    rc_t rc = mp_boundary_check(boundary ? boundary : "", n, err);
    if (rc != RC_OK)
        return rc;
    api_mp_t *p = calloc(1, sizeof *p);
    if (!p)
        return core_err(err, RC_NOMEM, "multipart parser: out of memory");
    if (cb)
        p->cb = *cb;
    memcpy(p->delim, "\r\n--", 4);
    memcpy(p->delim + 4, boundary, n);
    p->n_delim = n + 4;
    p->n_carry = MP_VIRTUAL_CRLF;
    p->state = MP_PREAMBLE;
    p->rc = RC_OK;
    *out = p;
    return RC_OK;
}

void api__mp_free(api_mp_t *p)
{
    free(p);
}

static rc_t mp_fail(api_mp_t *p, rc_t rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static rc_t mp_fail(api_mp_t *p, rc_t rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err.msg, sizeof p->err.msg, fmt, ap);
    va_end(ap);
    p->rc = rc;
    p->state = MP_ERROR;
    return rc;
}

/* After a callback returned ok: RC_OK, or RC_INVALID with the callback's message. */
static rc_t mp_callback_done(api_mp_t *p, bool ok, const char *which, size_t at)
{
    if (ok)
        return RC_OK;
    if (p->err.msg[0] == '\0')
        return mp_fail(p, RC_INVALID, "multipart upload refused by %s (at byte offset %zu)", which,
                       at);
    p->rc = RC_INVALID;
    p->state = MP_ERROR;
    return RC_INVALID;
}

/* ---- part heads ---- */

static rc_t mp_name_check(api_mp_t *p, const mp_param_t *pm, size_t at)
{
    if (pm->n_val == 0)
        return mp_fail(p, RC_FORMAT, "part name is empty (at byte offset %zu)", at);
    if (pm->n_val > API_MP_NAME_MAX)
        return mp_fail(p, RC_FORMAT, "part name is longer than %d chars (at byte offset %zu)",
                       API_MP_NAME_MAX, at);
    for (size_t i = 0; i < pm->n_val; i++)
        if (!mp_is_namechar((unsigned char)pm->val[i]))
            return mp_fail(p, RC_FORMAT,
                           "part name has byte 0x%02x outside [A-Za-z0-9._-] (at byte offset "
                           "%zu)",
                           (unsigned char)pm->val[i], at);
    memcpy(p->name, pm->val, pm->n_val);
    p->name[pm->n_val] = '\0';
    return RC_OK;
}

/* The value of a Content-Disposition line; base: body offset of the value's first byte. */
static rc_t mp_disposition(api_mp_t *p, mp_lex_t *lx, size_t base)
{
    char val[API_MP_NAME_MAX + 1];
    mp_param_t pm = {.val = val, .cap = sizeof val};
    const char *what = "";
    bool have_name = false;
    if (p->have_disposition)
        return mp_fail(p, RC_FORMAT,
                       "part head has two Content-Disposition lines (at byte "
                       "offset %zu)",
                       base);
    p->have_disposition = true;
    mp_ows(lx);
    size_t start = lx->i, n_type = mp_token(lx);
    if (!mp_ieq(lx->s + start, n_type, "form-data"))
        return mp_fail(p, RC_FORMAT, "Content-Disposition is not form-data (at byte offset %zu)",
                       base + start);
    for (;;) {
        int r = mp_param_next(lx, &pm, &what);
        if (r < 0)
            return mp_fail(p, RC_FORMAT, "Content-Disposition: %s (at byte offset %zu)", what,
                           base + lx->i);
        if (r == 0)
            break;
        if (!mp_ieq(pm.name, pm.n_name, "name"))
            continue; /* filename and the rest: accepted, never used */
        if (have_name)
            return mp_fail(p, RC_FORMAT,
                           "Content-Disposition has two name parameters (at "
                           "byte offset %zu)",
                           base + pm.val_at);
        have_name = true;
        rc_t rc = mp_name_check(p, &pm, base + pm.val_at);
        if (rc != RC_OK)
            return rc;
    }
    if (!have_name)
        return mp_fail(p, RC_FORMAT,
                       "Content-Disposition has no name parameter (at byte "
                       "offset %zu)",
                       base);
    return RC_OK;
}

/* One complete non-empty head line, head[at..at+len), CRLF excluded. */
static rc_t mp_head_line(api_mp_t *p, size_t at, size_t len)
{
    const char *line = p->head + at;
    size_t off = p->head_off + at;
    const char *colon = memchr(line, ':', len);
    if (!colon)
        return mp_fail(p, RC_FORMAT, "part head line without ':' (at byte offset %zu)", off);
    size_t n_name = (size_t)(colon - line);
    mp_lex_t name = {line, n_name, 0};
    if (n_name == 0 || mp_token(&name) != n_name)
        return mp_fail(p, RC_FORMAT, "malformed header name in part head (at byte offset %zu)",
                       off);
    if (!mp_ieq(line, n_name, "content-disposition"))
        return RC_OK; /* Content-Type and others: accepted, ignored */
    mp_lex_t lx = {colon + 1, len - n_name - 1, 0};
    return mp_disposition(p, &lx, off + n_name + 1);
}

/* The empty line ended the head: the part starts. at: body offset of its first data byte. */
static rc_t mp_head_end(api_mp_t *p, size_t at)
{
    if (!p->have_disposition)
        return mp_fail(p, RC_FORMAT,
                       "part head has no Content-Disposition (part head at byte "
                       "offset %zu)",
                       p->head_off);
    p->state = MP_DATA;
    p->n_carry = 0;
    p->n_parts++;
    if (!p->cb.on_part)
        return RC_OK;
    p->err.msg[0] = '\0';
    return mp_callback_done(p, p->cb.on_part(p->cb.user, p->name, &p->err), "on_part", at);
}

/* A head line's CRLF was just stored. at: body offset of the next byte. */
static rc_t mp_head_line_end(api_mp_t *p, size_t at)
{
    size_t len = p->n_head - 2 - p->line_start;
    if (len == 0)
        return mp_head_end(p, at);
    p->n_lines++;
    if (p->n_lines > MP_HEAD_LINES_MAX)
        return mp_fail(p, RC_LIMIT,
                       "part head has more than %d lines (part head at byte "
                       "offset %zu)",
                       MP_HEAD_LINES_MAX, p->head_off);
    rc_t rc = mp_head_line(p, p->line_start, len);
    p->line_start = p->n_head;
    return rc;
}

static void mp_head_begin(api_mp_t *p, size_t at)
{
    p->state = MP_HEAD;
    p->head_off = at;
    p->n_head = 0;
    p->line_start = 0;
    p->n_lines = 0;
    p->head_cr = false;
    p->have_disposition = false;
    p->name[0] = '\0';
}

/* Head bytes from d[*i]; stops after the head's empty line or at the end of d. */
static rc_t mp_head(api_mp_t *p, const char *d, size_t n, size_t *i)
{
    while (*i < n && p->state == MP_HEAD) {
        unsigned char c = (unsigned char)d[*i];
        size_t at = p->offset + *i;
        ++*i;
        if (p->n_head == API_MP_HEAD_MAX)
            return mp_fail(p, RC_LIMIT,
                           "part head is longer than %d bytes (part head at byte "
                           "offset %zu)",
                           API_MP_HEAD_MAX, p->head_off);
        p->head[p->n_head++] = (char)c;
        if (p->head_cr) {
            if (c != '\n')
                return mp_fail(p, RC_FORMAT, "CR without LF in part head (at byte offset %zu)",
                               at - 1);
            p->head_cr = false;
            rc_t rc = mp_head_line_end(p, at + 1);
            if (rc != RC_OK)
                return rc;
        } else if (c == '\r') {
            p->head_cr = true;
        } else if (c == '\n') {
            return mp_fail(p, RC_FORMAT, "bare LF in part head (at byte offset %zu)", at);
        } else if (mp_is_ctl(c)) {
            return mp_fail(p, RC_FORMAT, "control byte 0x%02x in part head (at byte offset %zu)", c,
                           at);
        } else if ((c == ' ' || c == '\t') && p->n_head - 1 == p->line_start) {
            return mp_fail(p, RC_FORMAT,
                           "part head line starts with whitespace (obs-fold is "
                           "not accepted; at byte offset %zu)",
                           at);
        }
    }
    return RC_OK;
}

/* ---- delimiters and data ---- */

/* Preamble bytes are counted and dropped; part data goes to on_data. at: body offset
 * just past d[n-1] (for messages). */
static rc_t mp_emit(api_mp_t *p, const char *d, size_t n, size_t at)
{
    if (n == 0)
        return RC_OK;
    if (p->state == MP_PREAMBLE) {
        p->n_preamble += n;
        if (p->n_preamble > MP_PREAMBLE_MAX + MP_VIRTUAL_CRLF)
            return mp_fail(p, RC_LIMIT,
                           "preamble before the first boundary is longer than %d "
                           "bytes (at byte offset %d)",
                           MP_PREAMBLE_MAX, MP_PREAMBLE_MAX);
        return RC_OK;
    }
    if (!p->cb.on_data)
        return RC_OK;
    p->err.msg[0] = '\0';
    return mp_callback_done(p, p->cb.on_data(p->cb.user, d, n, &p->err), "on_data", at);
}

/* A whole delimiter was matched; at: body offset just past it. */
static rc_t mp_delim_found(api_mp_t *p, size_t at)
{
    bool part_ended = p->state == MP_DATA;
    p->state = MP_AFTER_DELIM;
    p->after = MP_AD_START;
    p->n_carry = 0;
    if (!part_ended || !p->cb.on_part_end)
        return RC_OK;
    p->err.msg[0] = '\0';
    return mp_callback_done(p, p->cb.on_part_end(p->cb.user, &p->err), "on_part_end", at);
}

/* Preamble or part data from d[*i]: up to the next delimiter or the end of d. */
static rc_t mp_data(api_mp_t *p, const char *d, size_t n, size_t *i)
{
    size_t at = *i;
    if (p->n_carry > 0) {
        /* the last feed ended with delim[0..n_carry): does this one complete it? */
        size_t want = p->n_delim - p->n_carry, m = n - at < want ? n - at : want;
        if (memcmp(d + at, p->delim + p->n_carry, m) == 0) {
            p->n_carry += m;
            *i = at + m;
            return m < want ? RC_OK : mp_delim_found(p, p->offset + *i);
        }
        /* no: those bytes were data; CR occurs only first in delim, so no delimiter
         * starts inside them */
        size_t k = p->n_carry;
        p->n_carry = 0;
        rc_t rc = mp_emit(p, p->delim, k, p->offset + at);
        if (rc != RC_OK)
            return rc;
    }
    size_t start = at;
    while (at < n) {
        const char *cr = memchr(d + at, '\r', n - at);
        if (!cr)
            break;
        size_t j = (size_t)(cr - d), m = n - j < p->n_delim ? n - j : p->n_delim;
        if (memcmp(cr, p->delim, m) != 0) {
            at = j + 1;
            continue;
        }
        rc_t rc = mp_emit(p, d + start, j - start, p->offset + j);
        if (rc != RC_OK)
            return rc;
        *i = j + m;
        if (m < p->n_delim) {
            p->n_carry = m; /* d ends with a delimiter's start */
            return RC_OK;
        }
        return mp_delim_found(p, p->offset + *i);
    }
    *i = n;
    return mp_emit(p, d + start, n - start, p->offset + n);
}

/* One byte after a delimiter; at: its body offset. */
static rc_t mp_after_delim(api_mp_t *p, unsigned char c, size_t at)
{
    bool pad = c == ' ' || c == '\t';
    if (p->after == MP_AD_START && c == '-') {
        p->after = MP_AD_DASH;
        return RC_OK;
    }
    if ((p->after == MP_AD_START || p->after == MP_AD_PAD) && (pad || c == '\r')) {
        p->after = pad ? MP_AD_PAD : MP_AD_CR;
        return RC_OK;
    }
    if (p->after == MP_AD_CR && c == '\n') {
        mp_head_begin(p, at + 1);
        return RC_OK;
    }
    if (p->after == MP_AD_DASH && c == '-') {
        if (p->n_parts == 0)
            return mp_fail(p, RC_FORMAT, "closing boundary before any part (at byte offset %zu)",
                           at);
        p->state = MP_EPILOGUE;
        return RC_OK;
    }
    return mp_fail(p, RC_FORMAT,
                   "unexpected byte 0x%02x after a boundary (CRLF or \"--\" "
                   "expected; at byte offset %zu)",
                   c, at);
}

/* ---- feeding ---- */

rc_t api__mp_feed(api_mp_t *p, const char *data, size_t len, core_err_t *err)
{
    size_t i = 0;
    if (p->state == MP_DONE)
        mp_fail(p, RC_FORMAT, "data after the end of input (at byte offset %zu)", p->offset);
    while (i < len && p->state != MP_ERROR) {
        switch (p->state) {
        case MP_PREAMBLE:
        case MP_DATA:
            mp_data(p, data, len, &i);
            break;
        case MP_AFTER_DELIM:
            mp_after_delim(p, (unsigned char)data[i], p->offset + i);
            i++;
            break;
        case MP_HEAD:
            mp_head(p, data, len, &i);
            break;
        case MP_EPILOGUE:
            i = len; /* not parsed */
            break;
        case MP_DONE:
        case MP_ERROR:
            break;
        }
    }
    if (p->state == MP_ERROR) {
        if (err)
            *err = p->err;
        return p->rc;
    }
    p->offset += len;
    return RC_OK;
}

rc_t api__mp_finish(api_mp_t *p, core_err_t *err)
{
    if (p->state == MP_EPILOGUE)
        p->state = MP_DONE;
    else if (p->state != MP_DONE && p->state != MP_ERROR)
        mp_fail(p, RC_FORMAT, "body ended before the closing boundary (at byte offset %zu)",
                p->offset);
    if (p->state == MP_ERROR) {
        if (err)
            *err = p->err;
        return p->rc;
    }
    return RC_OK;
}
