/* jinja_builtin.c - filters, is-tests, global functions and string/dict methods of
 * core/jinja, following @huggingface/jinja's runtime.ts (0.5.11) case by case: which
 * filter exists depends on the operand's type, and anything the reference does not
 * know raises. String case mapping uses the C.UTF-8 locale (created once). */
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <wctype.h>

#include "core/jinja_int.h"

typedef core__jinja_val_t val_t;
typedef core__jinja_node_t node_t;
typedef core__jinja_ev_t ev_t;

#define FAIL(...) core__jinja_fail(ev, at, RC_FORMAT, __VA_ARGS__)

static int name_is(const char *s, size_t len, const char *lit)
{
    return strlen(lit) == len && memcmp(s, lit, len) == 0;
}

/* ---- string helpers ---- */
typedef struct {
    core__jinja_sb_t b;
    ev_t *ev;
    const node_t *at;
} out_t;

static rc_t out_val(out_t *o, rc_t rc, val_t **out)
{
    if (rc == RC_LIMIT)
        rc = core__jinja_fail(o->ev, o->at, RC_LIMIT, "output exceeds %zu bytes", o->ev->max_bytes);
    else if (rc)
        rc = core_err(o->ev->err, rc, "template render: out of memory");
    else
        rc = core__jinja_sb_val(o->ev, &o->b, out);
    free(o->b.p);
    return rc;
}

static locale_t utf8_locale;
static pthread_once_t utf8_once = PTHREAD_ONCE_INIT;
static void utf8_init(void)
{
    utf8_locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
}

static uint32_t map_case(uint32_t c, int upper)
{
    if (c < 0x80)
        return upper ? (c >= 'a' && c <= 'z' ? c - 32 : c) : (c >= 'A' && c <= 'Z' ? c + 32 : c);
    pthread_once(&utf8_once, utf8_init);
    if (!utf8_locale)
        return c;
    return (uint32_t)(upper ? towupper_l((wint_t)c, utf8_locale) : towlower_l((wint_t)c, utf8_locale));
}

static rc_t str_case(ev_t *ev, const node_t *at, const val_t *s, int upper, val_t **out)
{
    out_t o = {.b = {.max = (size_t)-1}, .ev = ev, .at = at};
    rc_t rc = RC_OK;
    char buf[8];
    for (size_t i = 0; !rc && i < s->u.str.len;) {
        uint32_t c = core__jinja_utf8_next(s->u.str.s, s->u.str.len, &i);
        if (upper && c == 0xDF)
            rc = core__jinja_sb_add(&o.b, "SS", 2);
        else
            rc = core__jinja_sb_add(&o.b, buf, core__jinja_utf8_put(map_case(c, upper), buf));
    }
    return out_val(&o, rc, out);
}

static int is_word(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

/* titleCase: value.replace(/\b\w/g, upper) - ASCII word characters only. */
static rc_t str_title(ev_t *ev, const val_t *s, val_t **out)
{
    char *p = core__jinja_strdup(&ev->a, s->u.str.s, s->u.str.len);
    NEW(p);
    for (size_t i = 0; i < s->u.str.len; i++)
        if (is_word(p[i]) && (i == 0 || !is_word(p[i - 1])) && p[i] >= 'a' && p[i] <= 'z')
            p[i] = (char)(p[i] - 32);
    NEW(*out = core__jinja_str(ev, p, s->u.str.len));
    return RC_OK;
}

static rc_t str_capitalize(ev_t *ev, const node_t *at, const val_t *s, val_t **out)
{
    if (s->u.str.len == 0) {
        *out = (val_t *)s;
        return RC_OK;
    }
    size_t i = 0;
    core__jinja_utf8_next(s->u.str.s, s->u.str.len, &i);
    val_t first = {.type = JV_STR, .u.str = {s->u.str.s, i}};
    val_t *up = NULL;
    TRY(str_case(ev, at, &first, 1, &up));
    out_t o = {.b = {.max = (size_t)-1}, .ev = ev, .at = at};
    rc_t rc = core__jinja_sb_add(&o.b, up->u.str.s, up->u.str.len);
    if (!rc)
        rc = core__jinja_sb_add(&o.b, s->u.str.s + i, s->u.str.len - i);
    return out_val(&o, rc, out);
}

/* JS trim / trimStart / trimEnd (which: 1 start, 2 end, 3 both). */
static val_t *str_trim(ev_t *ev, const val_t *s, int which)
{
    const char *p = s->u.str.s;
    size_t b = 0, e = s->u.str.len;
    while ((which & 1) && b < e) {
        size_t j = b;
        if (!core__jinja_is_space(core__jinja_utf8_next(p, e, &j)))
            break;
        b = j;
    }
    while ((which & 2) && e > b) {
        size_t k = e - 1;
        while (k > b && ((unsigned char)p[k] & 0xC0) == 0x80)
            k--;
        size_t j = k;
        if (!core__jinja_is_space(core__jinja_utf8_next(p, e, &j)) || j != e)
            break;
        e = k;
    }
    return core__jinja_str(ev, p + b, e - b);
}

static rc_t str_indent(ev_t *ev, const node_t *at, const val_t *s, long width, int first, int blank, val_t **out)
{
    out_t o = {.b = {.max = ev->max_bytes}, .ev = ev, .at = at};
    rc_t rc = RC_OK;
    const char *p = s->u.str.s, *end = p + s->u.str.len;
    for (size_t line = 0; !rc; line++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if ((first || line > 0) && (blank || len > 0))
            for (long k = 0; !rc && k < width; k++)
                rc = core__jinja_sb_addc(&o.b, ' ');
        if (!rc)
            rc = core__jinja_sb_add(&o.b, p, len);
        if (!nl)
            break;
        if (!rc)
            rc = core__jinja_sb_addc(&o.b, '\n');
        p = nl + 1;
    }
    return out_val(&o, rc, out);
}

/* utils.ts replace(): count < 0 or null = all; an empty needle matches between code points. */
static rc_t str_replace(ev_t *ev, const node_t *at, const val_t *s, const val_t *from, const val_t *to,
                        double count, val_t **out)
{
    if (count == 0) {
        *out = (val_t *)s;
        return RC_OK;
    }
    double left = count < 0 || isnan(count) ? INFINITY : count;
    out_t o = {.b = {.max = ev->max_bytes}, .ev = ev, .at = at};
    rc_t rc = RC_OK;
    const char *p = s->u.str.s;
    size_t n = s->u.str.len, i = 0, fl = from->u.str.len;
    while (!rc && i <= n) {
        if (left > 0 && (fl == 0 || (i + fl <= n && memcmp(p + i, from->u.str.s, fl) == 0))) {
            rc = core__jinja_sb_add(&o.b, to->u.str.s, to->u.str.len);
            left--;
            if (fl) {
                i += fl;
                continue;
            }
        }
        if (i == n || rc)
            break;
        size_t j = i;
        if (fl == 0)
            core__jinja_utf8_next(p, n, &j);
        else
            j = i + 1;
        rc = core__jinja_sb_add(&o.b, p + i, j - i);
        i = j;
    }
    return out_val(&o, rc, out);
}

static rc_t push_str(ev_t *ev, val_t *arr, const char *s, size_t len)
{
    val_t *v = core__jinja_str(ev, s, len);
    NEW(v);
    return core__jinja_arr_push(ev, arr, v);
}

/* First index at or after i whose code point is (space=1) / is not (space=0) JS \s. */
static size_t skip_class(const char *p, size_t len, size_t i, int space)
{
    while (i < len) {
        size_t j = i;
        if (core__jinja_is_space(core__jinja_utf8_next(p, len, &j)) != space)
            break;
        i = j;
    }
    return i;
}

/* Python str.split as the reference implements it. */
static rc_t str_split(ev_t *ev, const node_t *at, const val_t *s, val_t **args, size_t n, val_t **out)
{
    const val_t *sep = n > 0 ? args[0] : &core__jinja_null;
    const val_t *ms = n > 1 ? args[1] : NULL;
    if (sep->type != JV_STR && sep->type != JV_NULL)
        return FAIL("sep argument must be a string or null");
    if (ms && ms->type != JV_INT)
        return FAIL("maxsplit argument must be a number");
    double max = ms ? ms->u.n : -1;
    val_t *arr = core__jinja_arr(ev, 0);
    NEW(arr);
    const char *p = s->u.str.s;
    size_t len = s->u.str.len;
    if (sep->type == JV_NULL) {
        val_t *t = str_trim(ev, s, 1);
        NEW(t);
        p = t->u.str.s;
        len = t->u.str.len;
        size_t i = 0;
        while (i < len) {
            size_t st = i;
            i = skip_class(p, len, i, 0);
            if (max != -1 && (double)arr->u.arr.n >= max) {
                i = len; /* the rest, trailing whitespace included */
                TRY(push_str(ev, arr, p + st, i - st));
                break;
            }
            TRY(push_str(ev, arr, p + st, i - st));
            i = skip_class(p, len, i, 1);
        }
        *out = arr;
        return RC_OK;
    }
    size_t sl = sep->u.str.len, st = 0;
    if (sl == 0)
        return FAIL("empty separator");
    for (size_t i = 0; i + sl <= len;) {
        if (memcmp(p + i, sep->u.str.s, sl) == 0 && !(max != -1 && (double)arr->u.arr.n >= max)) {
            TRY(push_str(ev, arr, p + st, i - st));
            i += sl;
            st = i;
        } else {
            i++;
        }
    }
    TRY(push_str(ev, arr, p + st, len - st));
    *out = arr;
    return RC_OK;
}

static int affix(const val_t *s, const val_t *x, int end)
{
    size_t n = x->u.str.len;
    if (n > s->u.str.len)
        return 0;
    return memcmp(s->u.str.s + (end ? s->u.str.len - n : 0), x->u.str.s, n) == 0;
}

static rc_t str_affix(ev_t *ev, const node_t *at, const val_t *s, val_t **args, size_t n, int end, val_t **out)
{
    if (n == 0)
        return FAIL("startswith()/endswith() requires at least one argument");
    if (args[0]->type == JV_STR) {
        *out = core__jinja_bool(affix(s, args[0], end));
        return RC_OK;
    }
    if (args[0]->type != JV_ARRAY)
        return FAIL("startswith()/endswith() argument must be a string or tuple of strings");
    for (size_t i = 0; i < args[0]->u.arr.n; i++) {
        if (args[0]->u.arr.v[i]->type != JV_STR)
            return FAIL("startswith()/endswith() tuple elements must be strings");
        if (affix(s, args[0]->u.arr.v[i], end)) {
            *out = &core__jinja_true;
            return RC_OK;
        }
    }
    *out = &core__jinja_false;
    return RC_OK;
}

/* ---- tests ---- */
rc_t core__jinja_test(ev_t *ev, const node_t *at, const char *name, size_t len, const val_t *v,
                      const val_t *arg, int *res)
{
    core__jinja_vtype_t t = v->type;
#define IS(lit) name_is(name, len, lit)
    if (IS("boolean")) *res = t == JV_BOOL;
    else if (IS("callable")) *res = t == JV_FUNC;
    else if (IS("odd") || IS("even")) {
        if (t != JV_INT)
            return FAIL("cannot apply odd/even to a non-integer");
        *res = (fmod(v->u.n, 2) != 0) == IS("odd");
    } else if (IS("false")) *res = t == JV_BOOL && !v->u.b;
    else if (IS("true")) *res = t == JV_BOOL && v->u.b;
    else if (IS("none")) *res = t == JV_NULL;
    else if (IS("string")) *res = t == JV_STR;
    else if (IS("number")) *res = t == JV_INT || t == JV_FLOAT;
    else if (IS("integer")) *res = t == JV_INT;
    else if (IS("iterable")) *res = (t == JV_ARRAY && !(v->flags & CORE__JINJA_TUPLE)) || t == JV_STR;
    else if (IS("mapping")) *res = t == JV_OBJECT;
    else if (IS("sequence")) *res = t == JV_ARRAY || t == JV_OBJECT || t == JV_STR;
    else if (IS("lower") || IS("upper")) {
        if (t != JV_STR)
            return FAIL("cannot apply lower/upper test to a non-string");
        val_t *m = NULL;
        TRY(str_case(ev, at, v, IS("upper"), &m));
        *res = core__jinja_strict_eq(m, v);
    } else if (IS("defined")) *res = t != JV_UNDEF;
    else if (IS("undefined")) *res = t == JV_UNDEF;
    else if (IS("equalto") || IS("eq")) {
        if (!arg)
            return FAIL("test 'equalto' needs an argument");
        *res = core__jinja_strict_eq(v, arg);
    } else
        return FAIL("unknown test '%.*s'", (int)len, name);
#undef IS
    return RC_OK;
}

/* ---- builtin attributes and calls ---- */
val_t *core__jinja_builtin_attr(ev_t *ev, val_t *v, const char *k, size_t len)
{
    static const struct {
        const char *name;
        int id;
    } smeth[] = {{"upper", JF_S_UPPER},   {"lower", JF_S_LOWER},         {"strip", JF_S_STRIP},
                 {"title", JF_S_TITLE},   {"capitalize", JF_S_CAPITALIZE}, {"rstrip", JF_S_RSTRIP},
                 {"lstrip", JF_S_LSTRIP}, {"startswith", JF_S_STARTSWITH}, {"endswith", JF_S_ENDSWITH},
                 {"split", JF_S_SPLIT},   {"replace", JF_S_REPLACE}},
      ometh[] = {{"get", JF_O_GET}, {"items", JF_O_ITEMS}, {"keys", JF_O_KEYS}, {"values", JF_O_VALUES}};
    if ((v->type == JV_STR || v->type == JV_ARRAY) && name_is(k, len, "length")) {
        double n = v->type == JV_STR ? (double)core__jinja_utf16_len(v->u.str.s, v->u.str.len) : (double)v->u.arr.n;
        return core__jinja_num(ev, JV_INT, n);
    }
    if (v->type == JV_STR)
        for (size_t i = 0; i < sizeof smeth / sizeof smeth[0]; i++)
            if (name_is(k, len, smeth[i].name))
                return core__jinja_fn(ev, smeth[i].id, v);
    if (v->type == JV_OBJECT)
        for (size_t i = 0; i < sizeof ometh / sizeof ometh[0]; i++)
            if (name_is(k, len, ometh[i].name))
                return core__jinja_fn(ev, ometh[i].id, v);
    return NULL;
}

static rc_t obj_view(ev_t *ev, const val_t *o, int what, val_t **out)
{
    val_t *arr = core__jinja_arr(ev, o->u.obj.n);
    NEW(arr);
    for (size_t i = 0; i < o->u.obj.n; i++) {
        val_t *k = core__jinja_str(ev, o->u.obj.k[i].s, o->u.obj.k[i].len), *x = o->u.obj.v[i];
        NEW(k);
        if (what == JF_O_ITEMS) {
            NEW(x = core__jinja_arr(ev, 2));
            TRY(core__jinja_arr_push(ev, x, k));
            TRY(core__jinja_arr_push(ev, x, o->u.obj.v[i]));
        } else if (what == JF_O_KEYS) {
            x = k;
        }
        TRY(core__jinja_arr_push(ev, arr, x));
    }
    *out = arr;
    return RC_OK;
}

static rc_t fn_range(ev_t *ev, const node_t *at, val_t **args, size_t n, val_t **out)
{
    if (n < 1 || n > 3)
        return FAIL("range() takes 1 to 3 arguments");
    for (size_t i = 0; i < n; i++)
        if (args[i]->type != JV_INT && args[i]->type != JV_FLOAT)
            return FAIL("range() arguments must be numbers");
    double start = n == 1 ? 0 : args[0]->u.n, stop = n == 1 ? args[0]->u.n : args[1]->u.n;
    double step = n == 3 ? args[2]->u.n : 1;
    if (step == 0)
        return FAIL("range() step must not be zero");
    double count = ceil((stop - start) / step);
    if (count > 1e7)
        return core__jinja_fail(ev, at, RC_LIMIT, "range() too long");
    val_t *arr = core__jinja_arr(ev, count > 0 ? (size_t)count : 0);
    NEW(arr);
    for (double x = start; step > 0 ? x < stop : x > stop; x += step) {
        val_t *v = core__jinja_num(ev, x == floor(x) ? JV_INT : JV_FLOAT, x);
        NEW(v);
        TRY(core__jinja_arr_push(ev, arr, v));
    }
    *out = arr;
    return RC_OK;
}

static rc_t fn_strftime(ev_t *ev, const node_t *at, val_t **args, size_t n, val_t **out)
{
    static const char *const months[] = {"January", "February", "March", "April", "May", "June", "July",
                                         "August", "September", "October", "November", "December"};
    if (n < 1 || args[0]->type != JV_STR)
        return FAIL("strftime_now() needs a format string");
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    out_t o = {.b = {.max = ev->max_bytes}, .ev = ev, .at = at};
    rc_t rc = RC_OK;
    const char *f = args[0]->u.str.s;
    size_t len = args[0]->u.str.len;
    for (size_t i = 0; !rc && i < len; i++) {
        char buf[32];
        int k = -1;
        char c = i + 1 < len && f[i] == '%' ? f[i + 1] : 0;
        switch (c) {
        case 'Y': k = snprintf(buf, sizeof buf, "%d", tm.tm_year + 1900); break;
        case 'm': k = snprintf(buf, sizeof buf, "%02d", tm.tm_mon + 1); break;
        case 'd': k = snprintf(buf, sizeof buf, "%02d", tm.tm_mday); break;
        case 'b': k = snprintf(buf, sizeof buf, "%.3s", months[tm.tm_mon]); break;
        case 'B': k = snprintf(buf, sizeof buf, "%s", months[tm.tm_mon]); break;
        case 'H': k = snprintf(buf, sizeof buf, "%02d", tm.tm_hour); break;
        case 'M': k = snprintf(buf, sizeof buf, "%02d", tm.tm_min); break;
        case '%': k = snprintf(buf, sizeof buf, "%%"); break;
        default: break;
        }
        if (k >= 0) {
            rc = core__jinja_sb_add(&o.b, buf, (size_t)k);
            i++;
        } else {
            rc = core__jinja_sb_addc(&o.b, f[i]);
        }
    }
    return out_val(&o, rc, out);
}

static rc_t fn_namespace(ev_t *ev, const node_t *at, val_t **args, size_t n, val_t **out)
{
    val_t *kw = n && args[n - 1]->type == JV_OBJECT && (args[n - 1]->flags & CORE__JINJA_KWARGS) ? args[--n] : NULL;
    if (n > 1)
        return FAIL("namespace expected at most 1 argument");
    val_t *ns = core__jinja_obj(ev, JV_NS, 8);
    NEW(ns);
    if (n == 1 && args[0]->type == JV_OBJECT) {
        for (size_t i = 0; i < args[0]->u.obj.n; i++)
            TRY(core__jinja_obj_set(ev, ns, args[0]->u.obj.k[i], args[0]->u.obj.v[i]));
    } else if (n == 1 && args[0]->type == JV_ARRAY) {
        for (size_t i = 0; i < args[0]->u.arr.n; i++) {
            const val_t *pair = args[0]->u.arr.v[i];
            if (pair->type != JV_ARRAY || pair->u.arr.n != 2 || pair->u.arr.v[0]->type != JV_STR)
                return FAIL("namespace expected an object or an iterable of [key, value] pairs");
            TRY(core__jinja_obj_set(ev, ns, pair->u.arr.v[0]->u.str, pair->u.arr.v[1]));
        }
    } else if (n == 1) {
        return FAIL("namespace argument is not iterable");
    }
    for (size_t i = 0; kw && i < kw->u.obj.n; i++)
        TRY(core__jinja_obj_set(ev, ns, kw->u.obj.k[i], kw->u.obj.v[i]));
    *out = ns;
    return RC_OK;
}

static rc_t fn_raise(ev_t *ev, const node_t *at, val_t **args, size_t n)
{
    (void)at;
    /* The caller's error carries only this message, so an empty one (no argument, an
     * undefined or empty string) gets a fixed text: a 400 must say why. */
    static const char no_msg[] = "the template called raise_exception() without a message";
    if (n == 0)
        return core_err(ev->err, RC_INVALID, "%s", no_msg);
    core__jinja_sb_t b = {.max = 400};
    rc_t rc = args[0]->type == JV_UNDEF ? RC_OK : core__jinja_append(ev, NULL, &b, args[0], 0);
    rc = core_err(ev->err, RC_INVALID, "%s", rc == RC_OK && b.p && b.p[0] ? b.p : no_msg);
    free(b.p);
    return rc;
}

static rc_t str_method(ev_t *ev, const node_t *at, int id, val_t *s, val_t **args, size_t n, val_t **out)
{
    switch (id) {
    case JF_S_UPPER:
    case JF_S_LOWER:
        return str_case(ev, at, s, id == JF_S_UPPER, out);
    case JF_S_STRIP:
    case JF_S_LSTRIP:
    case JF_S_RSTRIP:
        NEW(*out = str_trim(ev, s, id == JF_S_STRIP ? 3 : id == JF_S_LSTRIP ? 1 : 2));
        return RC_OK;
    case JF_S_TITLE:
        return str_title(ev, s, out);
    case JF_S_CAPITALIZE:
        return str_capitalize(ev, at, s, out);
    case JF_S_STARTSWITH:
    case JF_S_ENDSWITH:
        return str_affix(ev, at, s, args, n, id == JF_S_ENDSWITH, out);
    case JF_S_SPLIT:
        return str_split(ev, at, s, args, n, out);
    default: { /* replace(old, new[, count]) */
        if (n < 2)
            return FAIL("replace() requires at least two arguments");
        if (args[0]->type != JV_STR || args[1]->type != JV_STR)
            return FAIL("replace() arguments must be strings");
        const val_t *count = &core__jinja_null;
        if (n > 2)
            count = args[2]->type == JV_OBJECT && (args[2]->flags & CORE__JINJA_KWARGS)
                        ? core__jinja_obj_get(args[2], "count", 5) : args[2];
        if (!count)
            count = &core__jinja_null;
        if (count->type != JV_INT && count->type != JV_NULL)
            return FAIL("replace() count argument must be a number or null");
        return str_replace(ev, at, s, args[0], args[1], count->type == JV_INT ? count->u.n : -1, out);
    }
    }
}

rc_t core__jinja_call_builtin(ev_t *ev, const node_t *at, val_t *fn, val_t **args, size_t n, val_t **out)
{
    int id = fn->u.fn.id;
    switch (id) {
    case JF_RAISE:
        return fn_raise(ev, at, args, n);
    case JF_RANGE:
        return fn_range(ev, at, args, n, out);
    case JF_STRFTIME:
        return fn_strftime(ev, at, args, n, out);
    case JF_NAMESPACE:
        return fn_namespace(ev, at, args, n, out);
    case JF_O_GET: {
        if (n < 1 || args[0]->type != JV_STR)
            return FAIL("object key must be a string");
        val_t *v = core__jinja_obj_get(fn->u.fn.self, args[0]->u.str.s, args[0]->u.str.len);
        *out = v ? v : n > 1 ? args[1] : &core__jinja_null;
        return RC_OK;
    }
    case JF_O_ITEMS:
    case JF_O_KEYS:
    case JF_O_VALUES:
        return obj_view(ev, fn->u.fn.self, id, out);
    default:
        return str_method(ev, at, id, fn->u.fn.self, args, n, out);
    }
}

/* ---- filters ---- */
static rc_t tojson_val(ev_t *ev, const node_t *at, const val_t *v, const core__jinja_json_opts_t *o, val_t **out)
{
    out_t ob = {.b = {.max = ev->max_bytes}, .ev = ev, .at = at};
    rc_t rc = core__jinja_tojson(ev, at, &ob.b, v, o, 0);
    if (rc) {
        free(ob.b.p);
        return rc;
    }
    return out_val(&ob, RC_OK, out);
}

/* join over raw JS values: null/undefined join as "". */
static rc_t join_vals(ev_t *ev, const node_t *at, val_t *const *v, size_t n, const val_t *sep, val_t **out)
{
    out_t o = {.b = {.max = ev->max_bytes}, .ev = ev, .at = at};
    rc_t rc = RC_OK;
    for (size_t i = 0; !rc && i < n; i++) {
        if (i)
            rc = core__jinja_sb_add(&o.b, sep->u.str.s, sep->u.str.len);
        if (!rc && v[i]->type != JV_NULL && v[i]->type != JV_UNDEF) {
            rc = core__jinja_append(ev, at, &o.b, v[i], 0);
            if (rc) {
                free(o.b.p);
                return rc;
            }
        }
    }
    return out_val(&o, rc, out);
}

static val_t *kwarg(val_t **args, size_t *n, const char *name)
{
    if (*n && args[*n - 1]->type == JV_OBJECT && (args[*n - 1]->flags & CORE__JINJA_KWARGS))
        return core__jinja_obj_get(args[*n - 1], name, strlen(name));
    return NULL;
}

/* Drops a trailing keyword object from the positional count. */
static size_t positional(val_t **args, size_t n)
{
    return n && args[n - 1]->type == JV_OBJECT && (args[n - 1]->flags & CORE__JINJA_KWARGS) ? n - 1 : n;
}

static rc_t filter_plain(ev_t *ev, const node_t *at, const char *f, size_t fl, val_t *v, val_t **out);

static rc_t filter_tojson(ev_t *ev, const node_t *at, val_t *v, val_t **args, size_t n, val_t **out)
{
    core__jinja_json_opts_t o = {.undef_null = 1};
    val_t *ind = kwarg(args, &n, "indent"), *asc = kwarg(args, &n, "ensure_ascii");
    val_t *sk = kwarg(args, &n, "sort_keys"), *sep = kwarg(args, &n, "separators");
    if (ind && ind->type != JV_INT && ind->type != JV_NULL)
        return FAIL("if set, indent must be a number");
    if ((asc && asc->type != JV_BOOL) || (sk && sk->type != JV_BOOL))
        return FAIL("ensure_ascii / sort_keys must be booleans");
    if (ind && ind->type == JV_INT) {
        if (ind->u.n > 64)
            return core__jinja_fail(ev, at, RC_LIMIT, "tojson indent too large");
        o.indent = ind->u.n > 0 ? (int)ind->u.n : 0;
    }
    o.ascii = asc && asc->u.b;
    o.sort_keys = sk && sk->u.b;
    char *seps[2] = {0};
    if (sep && sep->type == JV_ARRAY) {
        if (sep->u.arr.n != 2 || sep->u.arr.v[0]->type != JV_STR || sep->u.arr.v[1]->type != JV_STR)
            return FAIL("separators must be a tuple of two strings");
        for (int i = 0; i < 2; i++)
            NEW(seps[i] = core__jinja_strdup(&ev->a, sep->u.arr.v[i]->u.str.s, sep->u.arr.v[i]->u.str.len));
        o.item_sep = seps[0];
        o.key_sep = seps[1];
    } else if (sep && sep->type != JV_NULL) {
        return FAIL("if set, separators must be a tuple of two strings");
    }
    return tojson_val(ev, at, v, &o, out);
}

static rc_t get_attr_path(ev_t *ev, val_t *item, const val_t *path, val_t **out)
{
    const char *p = path->u.str.s, *end = p + path->u.str.len;
    val_t *v = item;
    (void)ev;
    for (;;) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        size_t len = dot ? (size_t)(dot - p) : (size_t)(end - p);
        if (v->type == JV_OBJECT || v->type == JV_NS) {
            v = core__jinja_obj_get(v, p, len);
            if (!v)
                v = &core__jinja_undef;
        } else if (v->type == JV_ARRAY) {
            double idx = core__jinja_js_parse(p, len, 1);
            if (isnan(idx) || idx < 0 || idx >= (double)v->u.arr.n) {
                *out = &core__jinja_undef;
                return RC_OK;
            }
            v = v->u.arr.v[(size_t)idx];
        } else {
            *out = &core__jinja_undef;
            return RC_OK;
        }
        if (!dot)
            break;
        p = dot + 1;
    }
    *out = v;
    return RC_OK;
}

static rc_t filter_selectattr(ev_t *ev, const node_t *at, const node_t *call, val_t *v, int select, val_t **out)
{
    for (size_t i = 0; i < v->u.arr.n; i++)
        if (v->u.arr.v[i]->type != JV_OBJECT && v->u.arr.v[i]->type != JV_NS)
            return FAIL("selectattr/rejectattr can only be applied to an array of objects");
    if (call->kids.n < 1)
        return FAIL("selectattr/rejectattr needs an attribute name");
    for (size_t i = 0; i < call->kids.n; i++)
        if (call->kids.v[i]->kind != JN_STR)
            return FAIL("arguments of selectattr/rejectattr must be strings");
    const core__jinja_str_t attr = call->kids.v[0]->s;
    const core__jinja_str_t *test = call->kids.n > 1 ? &call->kids.v[1]->s : NULL;
    val_t *arg = NULL;
    if (call->kids.n > 2)
        NEW(arg = core__jinja_str(ev, call->kids.v[2]->s.s, call->kids.v[2]->s.len));
    val_t *res = core__jinja_arr(ev, 0);
    NEW(res);
    for (size_t i = 0; i < v->u.arr.n; i++) {
        val_t *a = core__jinja_obj_get(v->u.arr.v[i], attr.s, attr.len);
        int r = 0;
        if (a && test)
            TRY(core__jinja_test(ev, at, test->s, test->len, a, arg, &r));
        else if (a)
            r = core__jinja_truthy(a);
        if (r == select)
            TRY(core__jinja_arr_push(ev, res, v->u.arr.v[i]));
    }
    *out = res;
    return RC_OK;
}

static rc_t filter_map(ev_t *ev, const node_t *at, val_t *v, val_t **args, size_t n, val_t **out)
{
    val_t *attr = kwarg(args, &n, "attribute"), *dflt = kwarg(args, &n, "default");
    if (!attr)
        return FAIL("map without attribute= is not supported");
    if (attr->type != JV_STR)
        return FAIL("attribute must be a string");
    val_t *res = core__jinja_arr(ev, v->u.arr.n);
    NEW(res);
    for (size_t i = 0; i < v->u.arr.n; i++) {
        val_t *x = v->u.arr.v[i];
        if (x->type != JV_OBJECT && x->type != JV_NS)
            return FAIL("items in map must be objects");
        TRY(get_attr_path(ev, x, attr, &x));
        if (x->type == JV_UNDEF && dflt)
            x = dflt;
        TRY(core__jinja_arr_push(ev, res, x));
    }
    *out = res;
    return RC_OK;
}

static rc_t filter_join(ev_t *ev, const node_t *at, val_t *v, val_t **args, size_t n, val_t **out)
{
    val_t empty = {.type = JV_STR, .u.str = {"", 0}};
    val_t *sep = positional(args, n) > 0 ? args[0] : kwarg(args, &n, "separator");
    if (!sep)
        sep = &empty;
    if (sep->type != JV_STR)
        return FAIL("separator must be a string");
    if (v->type == JV_ARRAY)
        return join_vals(ev, at, v->u.arr.v, v->u.arr.n, sep, out);
    if (v->type != JV_STR)
        return FAIL("cannot apply filter \"join\" to this type");
    val_t *cps = core__jinja_arr(ev, 0); /* a string joins its code points */
    NEW(cps);
    for (size_t i = 0; i < v->u.str.len;) {
        size_t s0 = i;
        core__jinja_utf8_next(v->u.str.s, v->u.str.len, &i);
        TRY(push_str(ev, cps, v->u.str.s + s0, i - s0));
    }
    return join_vals(ev, at, cps->u.arr.v, cps->u.arr.n, sep, out);
}

/* int(default) / float(default): strings parse, numbers pass through unchanged. */
static rc_t filter_number(ev_t *ev, const node_t *at, int isint, val_t *v, val_t **args, size_t n, val_t **out)
{
    val_t *d = positional(args, n) > 0 ? args[0] : kwarg(args, &n, "default");
    if (!d)
        NEW(d = core__jinja_num(ev, isint ? JV_INT : JV_FLOAT, 0));
    if (v->type == JV_STR) {
        double x = core__jinja_js_parse(v->u.str.s, v->u.str.len, isint);
        if (isnan(x))
            *out = d;
        else
            NEW(*out = core__jinja_num(ev, isint ? JV_INT : JV_FLOAT, x));
        return RC_OK;
    }
    if (v->type == JV_INT || v->type == JV_FLOAT) {
        *out = v;
        return RC_OK;
    }
    if (v->type == JV_BOOL) {
        NEW(*out = core__jinja_num(ev, isint ? JV_INT : JV_FLOAT, v->u.b));
        return RC_OK;
    }
    return FAIL("cannot apply filter \"%s\" to this type", isint ? "int" : "float");
}

static rc_t filter_default(ev_t *ev, const node_t *at, val_t *v, val_t **args, size_t n, val_t **out)
{
    size_t np = positional(args, n);
    val_t *d = np > 0 ? args[0] : NULL, *flag = np > 1 ? args[1] : kwarg(args, &n, "boolean");
    if (flag && flag->type != JV_BOOL)
        return FAIL("`default` filter flag must be a boolean");
    if (v->type != JV_UNDEF && !(flag && flag->u.b && !core__jinja_truthy(v))) {
        *out = v;
        return RC_OK;
    }
    if (!d)
        NEW(d = core__jinja_str(ev, "", 0));
    *out = d;
    return RC_OK;
}

static rc_t filter_indent(ev_t *ev, const node_t *at, val_t *v, val_t **args, size_t n, val_t **out)
{
    size_t np = positional(args, n);
    val_t *w = np > 0 ? args[0] : kwarg(args, &n, "width");
    val_t *first = np > 1 ? args[1] : kwarg(args, &n, "first");
    val_t *blank = np > 2 ? args[2] : kwarg(args, &n, "blank");
    if (w && w->type != JV_INT)
        return FAIL("width must be a number");
    long width = w ? (long)w->u.n : 4;
    if (width > 1000)
        return core__jinja_fail(ev, at, RC_LIMIT, "indent width too large");
    return str_indent(ev, at, v, width, first && core__jinja_truthy(first), blank && core__jinja_truthy(blank), out);
}

/* Evaluated call arguments: positional values, then one keyword object if any. */
static rc_t filter_args(ev_t *ev, core__jinja_scope_t *sc, const node_t *call, val_t ***args, size_t *n)
{
    val_t **a = core__jinja_alloc(&ev->a, (call->kids.n + 1) * sizeof *a), *kw = NULL;
    size_t k = 0;
    NEW(a);
    for (size_t i = 0; i < call->kids.n; i++) {
        const node_t *x = call->kids.v[i];
        if (x->kind != JN_KWARG) {
            TRY(core__jinja_eval(ev, sc, x, &a[k++]));
            continue;
        }
        if (!kw) {
            NEW(kw = core__jinja_obj(ev, JV_OBJECT, 4));
            kw->flags = CORE__JINJA_KWARGS;
        }
        val_t *y = NULL;
        TRY(core__jinja_eval(ev, sc, x->a, &y));
        TRY(core__jinja_obj_set(ev, kw, x->s, y));
    }
    if (kw)
        a[k++] = kw;
    *args = a;
    *n = k;
    return RC_OK;
}

/* filter(args...): the names the reference handles with arguments, in its order. */
static rc_t filter_call(ev_t *ev, core__jinja_scope_t *sc, const node_t *call, val_t *v, val_t **out)
{
    const node_t *at = call;
    if (call->a->kind != JN_IDENT)
        return FAIL("unknown filter");
    const char *f = call->a->s.s;
    size_t fl = call->a->s.len, n = 0;
    val_t **args = NULL;
    if (v->type == JV_ARRAY && (name_is(f, fl, "selectattr") || name_is(f, fl, "rejectattr")))
        return filter_selectattr(ev, at, call, v, name_is(f, fl, "selectattr"), out); /* reads its literals */
    TRY(filter_args(ev, sc, call, &args, &n));
    if (name_is(f, fl, "tojson"))
        return filter_tojson(ev, at, v, args, n, out);
    if (name_is(f, fl, "join"))
        return filter_join(ev, at, v, args, n, out);
    if (name_is(f, fl, "int") || name_is(f, fl, "float"))
        return filter_number(ev, at, name_is(f, fl, "int"), v, args, n, out);
    if (name_is(f, fl, "default"))
        return filter_default(ev, at, v, args, n, out);
    if (v->type == JV_ARRAY && name_is(f, fl, "map"))
        return filter_map(ev, at, v, args, n, out);
    if (v->type == JV_STR && name_is(f, fl, "indent"))
        return filter_indent(ev, at, v, args, n, out);
    if (v->type == JV_STR && name_is(f, fl, "replace"))
        return str_method(ev, at, JF_S_REPLACE, v, args, n, out);
    if (v->type == JV_OBJECT) {
        val_t *m = core__jinja_builtin_attr(ev, v, f, fl);
        if (m && m->type == JV_FUNC)
            return core__jinja_call_builtin(ev, at, m, args, n, out);
    }
    return FAIL("unknown or unsupported filter \"%.*s\" for this type", (int)fl, f);
}

rc_t core__jinja_filter(ev_t *ev, core__jinja_scope_t *sc, const node_t *fnode, val_t *v, val_t **out)
{
    if (fnode->kind == JN_CALL)
        return filter_call(ev, sc, fnode, v, out);
    return filter_plain(ev, fnode, fnode->s.s, fnode->s.len, v, out);
}

static rc_t filter_array(ev_t *ev, const node_t *at, const char *f, size_t fl, val_t *v, val_t **out)
{
    static const core__jinja_json_opts_t raw = {0};
    size_t n = v->u.arr.n;
    if (name_is(f, fl, "list")) *out = v;
    else if (name_is(f, fl, "first")) *out = n ? v->u.arr.v[0] : &core__jinja_undef;
    else if (name_is(f, fl, "last")) *out = n ? v->u.arr.v[n - 1] : &core__jinja_undef;
    else if (name_is(f, fl, "length")) NEW(*out = core__jinja_num(ev, JV_INT, (double)n));
    else if (name_is(f, fl, "reverse")) {
        NEW(*out = core__jinja_arr(ev, n));
        for (size_t i = n; i > 0; i--)
            TRY(core__jinja_arr_push(ev, *out, v->u.arr.v[i - 1]));
    } else if (name_is(f, fl, "join")) {
        val_t empty = {.type = JV_STR, .u.str = {"", 0}};
        return join_vals(ev, at, v->u.arr.v, n, &empty, out);
    } else if (name_is(f, fl, "string")) {
        return tojson_val(ev, at, v, &raw, out);
    } else {
        return FAIL("unknown or unsupported array filter \"%.*s\"", (int)fl, f);
    }
    return RC_OK;
}

static rc_t filter_string(ev_t *ev, const node_t *at, const char *f, size_t fl, val_t *v, val_t **out)
{
    if (name_is(f, fl, "length"))
        NEW(*out = core__jinja_num(ev, JV_INT, (double)core__jinja_utf16_len(v->u.str.s, v->u.str.len)));
    else if (name_is(f, fl, "upper") || name_is(f, fl, "lower"))
        return str_case(ev, at, v, name_is(f, fl, "upper"), out);
    else if (name_is(f, fl, "title"))
        return str_title(ev, v, out);
    else if (name_is(f, fl, "capitalize"))
        return str_capitalize(ev, at, v, out);
    else if (name_is(f, fl, "trim"))
        NEW(*out = str_trim(ev, v, 3));
    else if (name_is(f, fl, "indent"))
        return str_indent(ev, at, v, 4, 0, 0, out);
    else if (name_is(f, fl, "join") || name_is(f, fl, "string"))
        *out = v;
    else if (name_is(f, fl, "int") || name_is(f, fl, "float")) {
        int isint = name_is(f, fl, "int");
        double x = core__jinja_js_parse(v->u.str.s, v->u.str.len, isint);
        NEW(*out = core__jinja_num(ev, isint ? JV_INT : JV_FLOAT, isnan(x) ? 0 : x));
    } else
        return FAIL("unknown string filter \"%.*s\"", (int)fl, f);
    return RC_OK;
}

static rc_t filter_scalar(ev_t *ev, const node_t *at, const char *f, size_t fl, val_t *v, val_t **out)
{
    if (v->type == JV_BOOL) {
        double x = v->u.b;
        if (name_is(f, fl, "bool")) *out = v;
        else if (name_is(f, fl, "int") || name_is(f, fl, "float"))
            NEW(*out = core__jinja_num(ev, name_is(f, fl, "int") ? JV_INT : JV_FLOAT, x));
        else if (name_is(f, fl, "string"))
            NEW(*out = core__jinja_str(ev, v->u.b ? "true" : "false", v->u.b ? 4 : 5));
        else
            return FAIL("unknown boolean filter \"%.*s\"", (int)fl, f);
        return RC_OK;
    }
    if (name_is(f, fl, "abs"))
        NEW(*out = core__jinja_num(ev, v->type, fabs(v->u.n)));
    else if (name_is(f, fl, "int"))
        NEW(*out = core__jinja_num(ev, JV_INT, floor(v->u.n)));
    else if (name_is(f, fl, "float"))
        NEW(*out = core__jinja_num(ev, JV_FLOAT, v->u.n));
    else if (name_is(f, fl, "string")) {
        out_t o = {.b = {.max = 64}, .ev = ev, .at = at};
        rc_t rc = core__jinja_append(ev, at, &o.b, v, 1);
        return out_val(&o, rc, out);
    } else
        return FAIL("unknown number filter \"%.*s\"", (int)fl, f);
    return RC_OK;
}

static rc_t filter_plain(ev_t *ev, const node_t *at, const char *f, size_t fl, val_t *v, val_t **out)
{
    static const core__jinja_json_opts_t js = {.undef_null = 1};
    if (name_is(f, fl, "safe")) {
        *out = v;
        return RC_OK;
    }
    if (name_is(f, fl, "tojson"))
        return tojson_val(ev, at, v, &js, out);
    switch (v->type) {
    case JV_ARRAY:
        return filter_array(ev, at, f, fl, v, out);
    case JV_STR:
        return filter_string(ev, at, f, fl, v, out);
    case JV_INT:
    case JV_FLOAT:
    case JV_BOOL:
        return filter_scalar(ev, at, f, fl, v, out);
    case JV_OBJECT:
        if (name_is(f, fl, "items"))
            return obj_view(ev, v, JF_O_ITEMS, out);
        if (name_is(f, fl, "length")) {
            NEW(*out = core__jinja_num(ev, JV_INT, (double)v->u.obj.n));
            return RC_OK;
        }
        if (name_is(f, fl, "keys") || name_is(f, fl, "values"))
            return obj_view(ev, v, name_is(f, fl, "keys") ? JF_O_KEYS : JF_O_VALUES, out);
        if (name_is(f, fl, "get"))
            return FAIL("object key must be a string");
        return FAIL("unknown object filter \"%.*s\"", (int)fl, f);
    default:
        return FAIL("cannot apply filter \"%.*s\" to this type", (int)fl, f);
    }
}
