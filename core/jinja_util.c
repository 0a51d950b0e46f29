/* jinja_util.c - the small pieces under core/jinja: the bump arena with a byte budget,
 * the capped output buffer, UTF-8 helpers, JavaScript's number formatting and
 * JSON.stringify's string quoting (the reference is JS, so its output is JS's).
 * Pure functions and caller-owned state; any thread. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/jinja_int.h"

struct core__jinja_chunk {
    core__jinja_chunk_t *next;
    size_t used, cap;
    max_align_t data[];
};

#define CHUNK_MIN ((size_t)64 << 10)

void *core__jinja_alloc(core__jinja_arena_t *a, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    if (n == 0)
        n = sizeof(max_align_t);
    core__jinja_chunk_t *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > CHUNK_MIN ? n : CHUNK_MIN;
        if (a->limit && (a->total + cap > a->limit || cap > a->limit)) {
            a->over = 1;
            return NULL;
        }
        c = malloc(sizeof *c + cap);
        if (!c)
            return NULL;
        c->used = 0;
        c->cap = cap;
        a->total += cap;
        if (a->head && cap == n) { /* a big block: keep filling the current chunk */
            c->next = a->head->next;
            a->head->next = c;
        } else {
            c->next = a->head;
            a->head = c;
        }
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

char *core__jinja_strdup(core__jinja_arena_t *a, const char *s, size_t n)
{
    char *p = core__jinja_alloc(a, n + 1);
    if (p && n)
        memcpy(p, s, n);
    return p;
}

void core__jinja_arena_free(core__jinja_arena_t *a)
{
    core__jinja_chunk_t *c = a->head;
    while (c) {
        core__jinja_chunk_t *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
    a->total = 0;
}

rc_t core__jinja_sb_add(core__jinja_sb_t *b, const char *s, size_t n)
{
    if (n > b->max - b->len)
        return RC_LIMIT;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return RC_NOMEM;
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return RC_OK;
}

rc_t core__jinja_sb_addc(core__jinja_sb_t *b, char c)
{
    return core__jinja_sb_add(b, &c, 1);
}

uint32_t core__jinja_utf8_next(const char *s, size_t n, size_t *i)
{
    const unsigned char *p = (const unsigned char *)s + *i;
    size_t left = n - *i;
    uint32_t c = p[0];
    size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (k == 0 || k > left) {
        (*i)++;
        return c < 0x80 ? c : 0xFFFD;
    }
    if (k == 1) {
        (*i)++;
        return c;
    }
    uint32_t cp = c & (0x7F >> k);
    for (size_t j = 1; j < k; j++) {
        if ((p[j] & 0xC0) != 0x80) {
            (*i)++;
            return 0xFFFD;
        }
        cp = cp << 6 | (p[j] & 0x3F);
    }
    *i += k;
    return cp;
}

size_t core__jinja_utf8_put(uint32_t cp, char *out)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

int core__jinja_is_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000 || c == 0xFEFF;
}

/* Shortest round-trip digits of v > 0: digits into d (no dot), returns the decimal
 * exponent n such that v = 0.d * 10^n (ECMAScript Number::toString's n). */
static int shortest_digits(double v, char *d, size_t *k)
{
    char tmp[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*e", p - 1, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    size_t j = 0;
    char *e = strchr(tmp, 'e');
    for (char *q = tmp; q < e; q++)
        if (*q >= '0' && *q <= '9')
            d[j++] = *q;
    while (j > 1 && d[j - 1] == '0')
        j--;
    d[j] = 0;
    *k = j;
    return atoi(e + 1) + 1;
}

size_t core__jinja_num_str(double v, char *buf)
{
    if (isnan(v))
        return (size_t)sprintf(buf, "NaN");
    if (isinf(v))
        return (size_t)sprintf(buf, v < 0 ? "-Infinity" : "Infinity");
    if (v == 0)
        return (size_t)sprintf(buf, "0");
    char d[24], *o = buf;
    if (v < 0) {
        *o++ = '-';
        v = -v;
    }
    size_t k;
    int n = shortest_digits(v, d, &k);
    if ((int)k <= n && n <= 21) {
        o += sprintf(o, "%s", d);
        for (int i = (int)k; i < n; i++)
            *o++ = '0';
    } else if (0 < n && n <= 21) {
        o += sprintf(o, "%.*s.%s", n, d, d + n);
    } else if (-6 < n && n <= 0) {
        o += sprintf(o, "0.");
        for (int i = 0; i < -n; i++)
            *o++ = '0';
        o += sprintf(o, "%s", d);
    } else {
        o += sprintf(o, "%c", d[0]);
        if (k > 1)
            o += sprintf(o, ".%s", d + 1);
        o += sprintf(o, "e%c%d", n - 1 >= 0 ? '+' : '-', abs(n - 1));
    }
    *o = 0;
    return (size_t)(o - buf);
}

static rc_t put_u16(core__jinja_sb_t *b, uint32_t u)
{
    char tmp[16];
    snprintf(tmp, sizeof tmp, "\\u%04x", u & 0xFFFFu);
    return core__jinja_sb_add(b, tmp, 6);
}

rc_t core__jinja_json_quote(core__jinja_sb_t *b, const char *s, size_t n, int ascii)
{
    rc_t rc = core__jinja_sb_addc(b, '"');
    size_t i = 0;
    while (!rc && i < n) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\b' ? "\\b"
                        : c == '\f' ? "\\f" : c == '\n' ? "\\n" : c == '\r' ? "\\r"
                        : c == '\t' ? "\\t" : NULL;
        if (esc) {
            rc = core__jinja_sb_add(b, esc, 2);
            i++;
        } else if (c < 0x20 || (ascii && c == 0x7f)) {
            rc = put_u16(b, c);
            i++;
        } else if (c < 0x80 || !ascii) {
            rc = core__jinja_sb_addc(b, (char)c);
            i++;
        } else {
            uint32_t cp = core__jinja_utf8_next(s, n, &i);
            if (cp >= 0x10000) {
                cp -= 0x10000;
                rc = put_u16(b, 0xD800 + (cp >> 10));
                if (!rc)
                    rc = put_u16(b, 0xDC00 + (cp & 0x3FF));
            } else {
                rc = put_u16(b, cp);
            }
        }
    }
    return rc ? rc : core__jinja_sb_addc(b, '"');
}

size_t core__jinja_utf16_len(const char *s, size_t n)
{
    size_t u = 0;
    for (size_t i = 0; i < n;)
        u += core__jinja_utf8_next(s, n, &i) >= 0x10000 ? 2 : 1;
    return u;
}

/* parseInt(s, 10) / parseFloat(s); NaN when no number starts the string. */
double core__jinja_js_parse(const char *s, size_t len, int integer)
{
    char buf[128];
    size_t i = 0;
    while (i < len) {
        size_t j = i;
        if (!core__jinja_is_space(core__jinja_utf8_next(s, len, &j)))
            break;
        i = j;
    }
    size_t k = len - i < sizeof buf - 1 ? len - i : sizeof buf - 1;
    memcpy(buf, s + i, k);
    buf[k] = 0;
    const char *p = buf + (buf[0] == '+' || buf[0] == '-');
    if (!integer && strncmp(p, "Infinity", 8) == 0)
        return buf[0] == '-' ? -INFINITY : INFINITY;
    if (!(p[0] >= '0' && p[0] <= '9') && !(!integer && p[0] == '.' && p[1] >= '0' && p[1] <= '9'))
        return NAN;
    size_t e = (size_t)(p - buf);
    while (buf[e] >= '0' && buf[e] <= '9')
        e++;
    if (!integer) {
        if (buf[e] == '.')
            for (e++; buf[e] >= '0' && buf[e] <= '9'; e++) {
            }
        if ((buf[e] == 'e' || buf[e] == 'E')) {
            size_t f = e + 1 + (buf[e + 1] == '+' || buf[e + 1] == '-');
            if (buf[f] >= '0' && buf[f] <= '9')
                for (e = f; buf[e] >= '0' && buf[e] <= '9'; e++) {
                }
        }
    }
    buf[e] = 0;
    return strtod(buf, NULL);
}
