/* jinja_eval.c - the interpreter of core/jinja and its public entry points; a port of
 * the Interpreter of @huggingface/jinja's runtime.ts (0.5.11). Statements render into a
 * capped output buffer; expressions evaluate to values in the render's arena. Scoping
 * follows the reference: a for loop gets one child scope for all its iterations, `set`
 * writes the current scope, macros run in a child of the caller's scope. Budgets (steps,
 * depth, arena bytes, output bytes) turn runaway templates into RC_LIMIT.
 * Compile: any thread. Render: any thread, concurrently on one template. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/jinja_int.h"

typedef core__jinja_val_t val_t;
typedef core__jinja_node_t node_t;
typedef core__jinja_scope_t scope_t;
typedef core__jinja_ev_t ev_t;

#define MAX_STEPS 5000000u
#define MAX_DEPTH 400u
#define MEM_BASE ((size_t)64 << 20)


static rc_t render_list(ev_t *ev, scope_t *sc, const core__jinja_list_t *l, core__jinja_sb_t *b);

/* ---- scopes ---- */
static scope_t *scope_new(ev_t *ev, scope_t *parent)
{
    scope_t *s = core__jinja_alloc(&ev->a, sizeof *s);
    if (s)
        s->parent = parent;
    return s;
}

static rc_t scope_set(ev_t *ev, scope_t *s, core__jinja_str_t k, val_t *v)
{
    for (size_t i = 0; i < s->n; i++) {
        if (s->k[i].len == k.len && memcmp(s->k[i].s, k.s, k.len) == 0) {
            s->v[i] = v;
            return RC_OK;
        }
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        core__jinja_str_t *nk = core__jinja_alloc(&ev->a, cap * sizeof *nk);
        val_t **nv = core__jinja_alloc(&ev->a, cap * sizeof *nv);
        NEW(nk && nv);
        if (s->n) {
            memcpy(nk, s->k, s->n * sizeof *nk);
            memcpy(nv, s->v, s->n * sizeof *nv);
        }
        s->k = nk;
        s->v = nv;
        s->cap = cap;
    }
    s->k[s->n] = k;
    s->v[s->n++] = v;
    return RC_OK;
}

static val_t *scope_get(const scope_t *s, core__jinja_str_t k)
{
    for (; s; s = s->parent)
        for (size_t i = 0; i < s->n; i++)
            if (s->k[i].len == k.len && memcmp(s->k[i].s, k.s, k.len) == 0)
                return s->v[i];
    return &core__jinja_undef;
}

static core__jinja_str_t cstr(const char *s)
{
    return (core__jinja_str_t){s, strlen(s)};
}

/* ---- jansson -> values (JS Object key order: array indices first, ascending) ---- */
static int index_key(const char *k, size_t len, unsigned long *idx)
{
    if (len == 0 || len > 10 || (len > 1 && k[0] == '0'))
        return 0;
    unsigned long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (k[i] < '0' || k[i] > '9')
            return 0;
        v = v * 10 + (unsigned long)(k[i] - '0');
    }
    *idx = v;
    return v < 4294967295ul;
}

static rc_t from_json(ev_t *ev, const json_t *j, int depth, val_t **out);

static rc_t obj_from_json(ev_t *ev, const json_t *j, int depth, val_t **out)
{
    size_t n = json_object_size(j);
    val_t *o = core__jinja_obj(ev, JV_OBJECT, n);
    NEW(o);
    for (int pass = 0; pass < 2; pass++) {
        for (;;) { /* pass 0: index keys by ascending value, pass 1: the rest in order */
            const char *best = NULL;
            unsigned long best_idx = 0;
            const char *k;
            const json_t *v;
            json_object_foreach((json_t *)j, k, v) {
                unsigned long idx;
                int isidx = index_key(k, strlen(k), &idx);
                if (pass == 1) {
                    if (isidx)
                        continue;
                    val_t *x = NULL;
                    TRY(from_json(ev, v, depth + 1, &x));
                    TRY(core__jinja_obj_set(ev, o, cstr(k), x));
                    continue;
                }
                if (isidx && !core__jinja_obj_get(o, k, strlen(k)) && (!best || idx < best_idx)) {
                    best = k;
                    best_idx = idx;
                }
            }
            if (pass == 1 || !best)
                break;
            val_t *x = NULL;
            TRY(from_json(ev, json_object_get(j, best), depth + 1, &x));
            TRY(core__jinja_obj_set(ev, o, cstr(best), x));
        }
    }
    *out = o;
    return RC_OK;
}

static rc_t from_json(ev_t *ev, const json_t *j, int depth, val_t **out)
{
    if (depth > 1000)
        return core__jinja_fail(ev, NULL, RC_LIMIT, "variables nested too deeply");
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        return obj_from_json(ev, j, depth, out);
    case JSON_ARRAY: {
        val_t *a = core__jinja_arr(ev, json_array_size(j));
        NEW(a);
        for (size_t i = 0; i < json_array_size(j); i++) {
            val_t *x = NULL;
            TRY(from_json(ev, json_array_get(j, i), depth + 1, &x));
            TRY(core__jinja_arr_push(ev, a, x));
        }
        *out = a;
        return RC_OK;
    }
    case JSON_STRING:
        *out = core__jinja_str(ev, json_string_value(j), json_string_length(j));
        break;
    case JSON_INTEGER:
        *out = core__jinja_num(ev, JV_INT, (double)json_integer_value(j));
        break;
    case JSON_REAL: { /* JS: a whole number is an integer whatever its spelling */
        double d = json_real_value(j);
        *out = core__jinja_num(ev, isfinite(d) && d == floor(d) ? JV_INT : JV_FLOAT, d);
        break;
    }
    case JSON_TRUE:
        *out = &core__jinja_true;
        break;
    case JSON_FALSE:
        *out = &core__jinja_false;
        break;
    default:
        *out = &core__jinja_null;
    }
    return *out ? RC_OK : core__jinja_oom(ev);
}

/* ---- expressions ---- */
static rc_t eval_list(ev_t *ev, scope_t *sc, const core__jinja_list_t *l, int tuple, val_t **out)
{
    val_t *a = core__jinja_arr(ev, l->n);
    NEW(a);
    a->flags = tuple ? CORE__JINJA_TUPLE : 0;
    for (size_t i = 0; i < l->n; i++) {
        val_t *x = NULL;
        TRY(core__jinja_eval(ev, sc, l->v[i], &x));
        TRY(core__jinja_arr_push(ev, a, x));
    }
    *out = a;
    return RC_OK;
}

static rc_t eval_object(ev_t *ev, scope_t *sc, const node_t *n, val_t **out)
{
    val_t *o = core__jinja_obj(ev, JV_OBJECT, n->kids.n);
    NEW(o);
    for (size_t i = 0; i < n->kids.n; i++) {
        val_t *k = NULL, *v = NULL;
        TRY(core__jinja_eval(ev, sc, n->kids.v[i], &k));
        if (k->type != JV_STR)
            return core__jinja_fail(ev, n->kids.v[i], RC_FORMAT, "object keys must be strings");
        TRY(core__jinja_eval(ev, sc, n->alt.v[i], &v));
        TRY(core__jinja_obj_set(ev, o, k->u.str, v));
    }
    *out = o;
    return RC_OK;
}

/* utils.ts slice() over n items; calls put(i) for each picked index. */
static rc_t slice_idx(ev_t *ev, val_t *dst, val_t *const *items, long n, const val_t *s0, const val_t *s1,
                      const val_t *s2)
{
    long step = s2->type == JV_UNDEF ? 1 : (long)s2->u.n, start, stop;
    int dir = step > 0 ? 1 : step < 0 ? -1 : 0;
    if (dir >= 0) {
        start = s0->type == JV_UNDEF ? 0 : (long)s0->u.n;
        stop = s1->type == JV_UNDEF ? n : (long)s1->u.n;
        start = start < 0 ? (n + start > 0 ? n + start : 0) : (start < n ? start : n);
        stop = stop < 0 ? (n + stop > 0 ? n + stop : 0) : (stop < n ? stop : n);
    } else {
        start = s0->type == JV_UNDEF ? n - 1 : (long)s0->u.n;
        stop = s1->type == JV_UNDEF ? -1 : (long)s1->u.n;
        start = start < 0 ? (n + start > -1 ? n + start : -1) : (start < n - 1 ? start : n - 1);
        stop = stop < -1 ? (n + stop > -1 ? n + stop : -1) : (stop < n - 1 ? stop : n - 1);
    }
    for (long i = start; dir != 0 && (long)dir * i < (long)dir * stop; i += step)
        TRY(core__jinja_arr_push(ev, dst, items[i]));
    return RC_OK;
}

static rc_t eval_slice(ev_t *ev, scope_t *sc, val_t *obj, const node_t *sl, val_t **out)
{
    if (obj->type != JV_ARRAY && obj->type != JV_STR)
        return core__jinja_fail(ev, sl, RC_FORMAT, "slice object must be an array or string");
    val_t *p[3];
    const node_t *pn[3] = {sl->a, sl->b, sl->c};
    for (int i = 0; i < 3; i++) {
        p[i] = &core__jinja_undef;
        if (pn[i])
            TRY(core__jinja_eval(ev, sc, pn[i], &p[i]));
        if (p[i]->type != JV_INT && p[i]->type != JV_UNDEF)
            return core__jinja_fail(ev, sl, RC_FORMAT, "slice indices must be integers or undefined");
    }
    val_t *dst = core__jinja_arr(ev, 0);
    NEW(dst);
    if (obj->type == JV_ARRAY) {
        TRY(slice_idx(ev, dst, obj->u.arr.v, (long)obj->u.arr.n, p[0], p[1], p[2]));
        *out = dst;
        return RC_OK;
    }
    /* strings slice by code point (Array.from) */
    val_t *cps = core__jinja_arr(ev, 0);
    NEW(cps);
    for (size_t i = 0; i < obj->u.str.len;) {
        size_t s = i;
        core__jinja_utf8_next(obj->u.str.s, obj->u.str.len, &i);
        val_t *c = core__jinja_str(ev, obj->u.str.s + s, i - s);
        NEW(c);
        TRY(core__jinja_arr_push(ev, cps, c));
    }
    TRY(slice_idx(ev, dst, cps->u.arr.v, (long)cps->u.arr.n, p[0], p[1], p[2]));
    core__jinja_sb_t b = {.max = (size_t)-1};
    rc_t rc = RC_OK;
    for (size_t i = 0; !rc && i < dst->u.arr.n; i++)
        rc = core__jinja_sb_add(&b, dst->u.arr.v[i]->u.str.s, dst->u.arr.v[i]->u.str.len);
    if (!rc)
        rc = core__jinja_sb_val(ev, &b, out);
    else
        rc = core_err(ev->err, RC_NOMEM, "template render: out of memory");
    free(b.p);
    return rc;
}

/* String.prototype.at(i) by UTF-16 index; an astral character answers for both halves. */
static val_t *str_at(ev_t *ev, const val_t *s, double di)
{
    long n = (long)core__jinja_utf16_len(s->u.str.s, s->u.str.len), i = (long)di;
    if (i < 0)
        i += n;
    if (i < 0 || i >= n)
        return &core__jinja_undef;
    long u = 0;
    for (size_t p = 0; p < s->u.str.len;) {
        size_t st = p;
        uint32_t cp = core__jinja_utf8_next(s->u.str.s, s->u.str.len, &p);
        u += cp >= 0x10000 ? 2 : 1;
        if (u > i)
            return core__jinja_str(ev, s->u.str.s + st, p - st);
    }
    return &core__jinja_undef;
}

static rc_t eval_member(ev_t *ev, scope_t *sc, const node_t *n, val_t **out)
{
    val_t *obj, *prop, *v = NULL;
    TRY(core__jinja_eval(ev, sc, n->a, &obj));
    if (n->flag && n->b->kind == JN_SLICE)
        return eval_slice(ev, sc, obj, n->b, out);
    if (n->flag)
        TRY(core__jinja_eval(ev, sc, n->b, &prop));
    else if (n->b->kind == JN_INT)
        NEW(prop = core__jinja_num(ev, JV_INT, n->b->num));
    else
        NEW(prop = core__jinja_str(ev, n->b->s.s, n->b->s.len));
    if (obj->type == JV_OBJECT || obj->type == JV_NS) {
        if (prop->type != JV_STR)
            return core__jinja_fail(ev, n, RC_FORMAT, "cannot access property with non-string");
        v = core__jinja_obj_get(obj, prop->u.str.s, prop->u.str.len);
        if (!v && obj->type == JV_OBJECT)
            v = core__jinja_builtin_attr(ev, obj, prop->u.str.s, prop->u.str.len);
    } else if ((obj->type == JV_ARRAY || obj->type == JV_STR) && prop->type == JV_INT) {
        if (obj->type == JV_STR) {
            v = str_at(ev, obj, prop->u.n);
        } else {
            long i = (long)prop->u.n, len = (long)obj->u.arr.n;
            i = i < 0 ? i + len : i;
            v = i >= 0 && i < len ? obj->u.arr.v[i] : NULL;
        }
    } else if (prop->type == JV_STR) {
        v = core__jinja_builtin_attr(ev, obj, prop->u.str.s, prop->u.str.len);
    } else {
        return core__jinja_fail(ev, n, RC_FORMAT, "cannot access property with a non-string key");
    }
    *out = v ? v : &core__jinja_undef;
    return RC_OK;
}

/* Positional values, then one keyword-arguments object last when there are any. */
static rc_t eval_args(ev_t *ev, scope_t *sc, const core__jinja_list_t *l, val_t ***args, size_t *n)
{
    val_t **v = core__jinja_alloc(&ev->a, (l->n + 1) * sizeof *v);
    val_t *kw = NULL;
    NEW(v);
    size_t k = 0;
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i]->kind != JN_KWARG)
            TRY(core__jinja_eval(ev, sc, l->v[i], &v[k++]));
    for (size_t i = 0; i < l->n; i++) {
        if (l->v[i]->kind != JN_KWARG)
            continue;
        if (!kw) {
            NEW(kw = core__jinja_obj(ev, JV_OBJECT, 4));
            kw->flags = CORE__JINJA_KWARGS;
        }
        if (core__jinja_obj_get(kw, l->v[i]->s.s, l->v[i]->s.len))
            return core__jinja_fail(ev, l->v[i], RC_FORMAT, "got multiple values for a keyword argument");
        val_t *x = NULL;
        TRY(core__jinja_eval(ev, sc, l->v[i]->a, &x));
        TRY(core__jinja_obj_set(ev, kw, l->v[i]->s, x));
    }
    if (kw)
        v[k++] = kw;
    *args = v;
    *n = k;
    return RC_OK;
}

static rc_t call_macro(ev_t *ev, scope_t *sc, const node_t *at, const node_t *m, val_t **args, size_t n,
                       val_t **out)
{
    scope_t *ms = scope_new(ev, sc);
    NEW(ms);
    val_t *kw = n && args[n - 1]->type == JV_OBJECT && (args[n - 1]->flags & CORE__JINJA_KWARGS) ? args[--n] : NULL;
    size_t kw_used = 0;
    if (n > m->alt.n)
        return core__jinja_fail(ev, at, RC_FORMAT, "macro '%.*s' takes not more than %zu argument(s)",
                                (int)m->s.len, m->s.s, m->alt.n);
    for (size_t i = 0; i < m->alt.n; i++) { /* bind every name before any default runs */
        const node_t *p = m->alt.v[i];
        val_t *v = i < n ? args[i] : kw ? core__jinja_obj_get(kw, p->s.s, p->s.len) : NULL;
        kw_used += i >= n && v;
        TRY(scope_set(ev, ms, p->s, v ? v : &core__jinja_undef));
    }
    if (kw && kw_used < kw->u.obj.n)
        return core__jinja_fail(ev, at, RC_FORMAT, "macro '%.*s' got an unexpected keyword argument",
                                (int)m->s.len, m->s.s);
    for (size_t i = n; i < m->alt.n; i++) {
        const node_t *p = m->alt.v[i];
        if (p->kind == JN_KWARG && scope_get(ms, p->s)->type == JV_UNDEF &&
            !(kw && core__jinja_obj_get(kw, p->s.s, p->s.len))) {
            val_t *d = NULL;
            TRY(core__jinja_eval(ev, ms, p->a, &d));
            TRY(scope_set(ev, ms, p->s, d));
        }
    }
    core__jinja_sb_t b = {.max = ev->max_bytes};
    rc_t rc = render_list(ev, ms, &m->kids, &b);
    if (!rc && ev->ctl)
        rc = core__jinja_fail(ev, at, RC_FORMAT, "break/continue outside a loop");
    if (!rc)
        rc = core__jinja_sb_val(ev, &b, out);
    free(b.p);
    return rc;
}

static rc_t eval_call(ev_t *ev, scope_t *sc, const node_t *n, val_t **out)
{
    val_t **args = NULL, *fn = NULL;
    size_t na = 0;
    TRY(eval_args(ev, sc, &n->kids, &args, &na));
    TRY(core__jinja_eval(ev, sc, n->a, &fn));
    if (fn->type != JV_FUNC)
        return core__jinja_fail(ev, n, RC_FORMAT, "cannot call something that is not a function");
    if (fn->u.fn.id == JF_MACRO)
        return call_macro(ev, sc, n, fn->u.fn.macro, args, na, out);
    return core__jinja_call_builtin(ev, n, fn, args, na, out);
}

static int is_num_v(const val_t *v)
{
    return v->type == JV_INT || v->type == JV_FLOAT;
}

/* ToNumber(string) for loose ==; NaN when not a number literal. */
static double js_to_number(const char *s, size_t len)
{
    size_t i = 0, e = len, w;
    while (i < e) {
        size_t j = i;
        uint32_t cp = core__jinja_utf8_next(s, e, &j);
        if (!core__jinja_is_space(cp))
            break;
        i = j;
    }
    while (e > i && core__jinja_is_space((unsigned char)s[e - 1]))
        e--;
    if (i == e)
        return 0;
    char buf[64];
    w = e - i;
    if (w >= sizeof buf)
        return NAN;
    memcpy(buf, s + i, w);
    buf[w] = 0;
    const char *p = buf + (buf[0] == '+' || buf[0] == '-');
    if (strcmp(p, "Infinity") == 0)
        return buf[0] == '-' ? -INFINITY : INFINITY;
    int digits = 0;
    for (const char *q = p; *q && *q != 'e' && *q != 'E'; q++)
        digits += *q >= '0' && *q <= '9';
    if (!digits || strpbrk(buf, "xXnNiIpP"))
        return (p == buf && buf[0] == '0' && (buf[1] == 'x' || buf[1] == 'X')) ? (double)strtoull(buf, NULL, 16) : NAN;
    char *end;
    double d = strtod(buf, &end);
    return *end ? NAN : d;
}

/* JS == on the values underneath (left.value == right.value). */
static int loose_eq(ev_t *ev, const val_t *a, const val_t *b)
{
    int an = a->type == JV_NULL || a->type == JV_UNDEF, bn = b->type == JV_NULL || b->type == JV_UNDEF;
    if (an || bn)
        return an && bn;
    if (a->type == JV_BOOL || b->type == JV_BOOL) {
        val_t na = *a, nb = *b;
        if (a->type == JV_BOOL)
            na = (val_t){.type = JV_INT, .u.n = a->u.b};
        if (b->type == JV_BOOL)
            nb = (val_t){.type = JV_INT, .u.n = b->u.b};
        return loose_eq(ev, &na, &nb);
    }
    if ((is_num_v(a) || a->type == JV_STR) && (is_num_v(b) || b->type == JV_STR)) {
        if (a->type == JV_STR && b->type == JV_STR)
            return core__jinja_strict_eq(a, b);
        double x = a->type == JV_STR ? js_to_number(a->u.str.s, a->u.str.len) : a->u.n;
        double y = b->type == JV_STR ? js_to_number(b->u.str.s, b->u.str.len) : b->u.n;
        return x == y;
    }
    if (a->type >= JV_ARRAY && b->type >= JV_ARRAY)
        return a == b;
    /* one container, one primitive: compare the container's String() */
    const val_t *c = a->type >= JV_ARRAY ? a : b, *p = c == a ? b : a;
    if (c->type == JV_FUNC)
        return 0;
    core__jinja_sb_t sb = {.max = (size_t)1 << 20};
    int eq = 0;
    if (core__jinja_append(ev, NULL, &sb, c, 0) == RC_OK) {
        val_t s = {.type = JV_STR, .u.str = {sb.p ? sb.p : "", sb.len}};
        eq = loose_eq(ev, &s, p);
    }
    free(sb.p);
    return eq;
}

static rc_t concat(ev_t *ev, const node_t *at, const val_t *l, const val_t *r, val_t **out)
{
    core__jinja_sb_t b = {.max = ev->max_bytes};
    rc_t rc = core__jinja_append(ev, at, &b, l, 0);
    if (!rc)
        rc = core__jinja_append(ev, at, &b, r, 0);
    if (!rc)
        rc = core__jinja_sb_val(ev, &b, out);
    free(b.p);
    return rc;
}

static rc_t arith(ev_t *ev, const node_t *n, const val_t *l, const val_t *r, val_t **out)
{
    double a = l->u.n, b = r->u.n, res;
    int fl = l->type == JV_FLOAT || r->type == JV_FLOAT;
    switch (n->op) {
    case JOP_ADD: res = a + b; break;
    case JOP_SUB: res = a - b; break;
    case JOP_MUL: res = a * b; break;
    case JOP_DIV: res = a / b; fl = 1; break;
    case JOP_FLOORDIV: res = floor(a / b); break;
    case JOP_MOD: res = fmod(a, b); break;
    case JOP_LT: *out = core__jinja_bool(a < b); return RC_OK;
    case JOP_GT: *out = core__jinja_bool(a > b); return RC_OK;
    case JOP_LE: *out = core__jinja_bool(a <= b); return RC_OK;
    case JOP_GE: *out = core__jinja_bool(a >= b); return RC_OK;
    default: *out = NULL; return RC_OK; /* in / not in: fall through to the generic checks */
    }
    NEW(*out = core__jinja_num(ev, fl ? JV_FLOAT : JV_INT, res));
    return RC_OK;
}

static rc_t power(ev_t *ev, const node_t *n, const val_t *l, const val_t *r, val_t **out)
{
    double a = l->type == JV_BOOL ? l->u.b : l->u.n, b = r->type == JV_BOOL ? r->u.b : r->u.n;
    if (a == 0 && b < 0)
        return core__jinja_fail(ev, n, RC_FORMAT, "0.0 cannot be raised to a negative power");
    double res = pow(a, b);
    if (!isfinite(res))
        return core__jinja_fail(ev, n, RC_FORMAT, "exponentiation result is not a finite real number");
    int fl = l->type == JV_FLOAT || r->type == JV_FLOAT || b < 0;
    NEW(*out = core__jinja_num(ev, fl ? JV_FLOAT : JV_INT, res));
    return RC_OK;
}

static int str_contains(const val_t *hay, const val_t *needle)
{
    if (needle->u.str.len == 0)
        return 1;
    return memmem(hay->u.str.s, hay->u.str.len, needle->u.str.s, needle->u.str.len) != NULL;
}

/* Everything after and/or and ==/!=, in the reference's order of checks. */
static rc_t binary_rest(ev_t *ev, const node_t *n, val_t *l, val_t *r, val_t **out)
{
    core__jinja_op_t op = n->op;
    int in = op == JOP_IN || op == JOP_NOTIN;
    if (l->type == JV_UNDEF || r->type == JV_UNDEF) {
        if (r->type == JV_UNDEF && in) {
            *out = core__jinja_bool(op == JOP_NOTIN);
            return RC_OK;
        }
        return core__jinja_fail(ev, n, RC_FORMAT, "cannot perform an operation on undefined values");
    }
    if (l->type == JV_NULL || r->type == JV_NULL)
        return core__jinja_fail(ev, n, RC_FORMAT, "cannot perform an operation on null values");
    if (op == JOP_CONCAT)
        return concat(ev, n, l, r, out);
    int lnum = is_num_v(l) || l->type == JV_BOOL, rnum = is_num_v(r) || r->type == JV_BOOL;
    if (op == JOP_POW && lnum && rnum)
        return power(ev, n, l, r, out);
    if (is_num_v(l) && is_num_v(r)) {
        TRY(arith(ev, n, l, r, out));
        if (*out)
            return RC_OK;
    } else if (l->type == JV_ARRAY && r->type == JV_ARRAY && op == JOP_ADD) {
        val_t *a = core__jinja_arr(ev, l->u.arr.n + r->u.arr.n);
        NEW(a);
        for (size_t i = 0; i < l->u.arr.n; i++)
            TRY(core__jinja_arr_push(ev, a, l->u.arr.v[i]));
        for (size_t i = 0; i < r->u.arr.n; i++)
            TRY(core__jinja_arr_push(ev, a, r->u.arr.v[i]));
        *out = a;
        return RC_OK;
    } else if (r->type == JV_ARRAY && l->type != JV_ARRAY && in) {
        int member = 0;
        for (size_t i = 0; i < r->u.arr.n && !member; i++)
            member = core__jinja_strict_eq(r->u.arr.v[i], l);
        *out = core__jinja_bool(member == (op == JOP_IN));
        return RC_OK;
    }
    if ((l->type == JV_STR || r->type == JV_STR) && op == JOP_ADD)
        return concat(ev, n, l, r, out);
    if (l->type == JV_STR && r->type == JV_STR && in) {
        *out = core__jinja_bool(str_contains(r, l) == (op == JOP_IN));
        return RC_OK;
    }
    if (l->type == JV_STR && r->type == JV_OBJECT && in) {
        int has = core__jinja_obj_get(r, l->u.str.s, l->u.str.len) != NULL;
        *out = core__jinja_bool(has == (op == JOP_IN));
        return RC_OK;
    }
    return core__jinja_fail(ev, n, RC_FORMAT, "unsupported operand types for a binary operator");
}

static rc_t eval_binary(ev_t *ev, scope_t *sc, const node_t *n, val_t **out)
{
    val_t *l = NULL, *r = NULL;
    TRY(core__jinja_eval(ev, sc, n->a, &l));
    if (n->op == JOP_AND || n->op == JOP_OR) {
        if (core__jinja_truthy(l) == (n->op == JOP_OR)) {
            *out = l;
            return RC_OK;
        }
        return core__jinja_eval(ev, sc, n->b, out);
    }
    TRY(core__jinja_eval(ev, sc, n->b, &r));
    if (n->op == JOP_EQ || n->op == JOP_NE) {
        *out = core__jinja_bool(loose_eq(ev, l, r) == (n->op == JOP_EQ));
        return RC_OK;
    }
    return binary_rest(ev, n, l, r, out);
}

static rc_t eval_unary(ev_t *ev, scope_t *sc, const node_t *n, val_t **out)
{
    val_t *v = NULL;
    TRY(core__jinja_eval(ev, sc, n->a, &v));
    if (n->op == JOP_NOT) {
        *out = core__jinja_bool(!core__jinja_truthy(v));
        return RC_OK;
    }
    if (!is_num_v(v) && v->type != JV_BOOL)
        return core__jinja_fail(ev, n, RC_FORMAT, "bad operand type for unary %c", n->op == JOP_NEG ? '-' : '+');
    double x = v->type == JV_BOOL ? v->u.b : v->u.n;
    NEW(*out = core__jinja_num(ev, v->type == JV_FLOAT ? JV_FLOAT : JV_INT, n->op == JOP_NEG ? -x : x));
    return RC_OK;
}

static rc_t eval_node(ev_t *ev, scope_t *sc, const node_t *n, val_t **out)
{
    switch (n->kind) {
    case JN_STR:
        NEW(*out = core__jinja_str(ev, n->s.s, n->s.len));
        return RC_OK;
    case JN_INT:
    case JN_FLOAT:
        NEW(*out = core__jinja_num(ev, n->kind == JN_INT ? JV_INT : JV_FLOAT, n->num));
        return RC_OK;
    case JN_IDENT:
        *out = scope_get(sc, n->s);
        return RC_OK;
    case JN_ARRAY:
    case JN_TUPLE:
        return eval_list(ev, sc, &n->kids, n->kind == JN_TUPLE, out);
    case JN_OBJECT:
        return eval_object(ev, sc, n, out);
    case JN_MEMBER:
        return eval_member(ev, sc, n, out);
    case JN_CALL:
        return eval_call(ev, sc, n, out);
    case JN_UNARY:
        return eval_unary(ev, sc, n, out);
    case JN_BINARY:
        return eval_binary(ev, sc, n, out);
    case JN_FILTER: {
        val_t *v = NULL;
        TRY(core__jinja_eval(ev, sc, n->a, &v));
        return core__jinja_filter(ev, sc, n->b, v, out);
    }
    case JN_TEST: {
        val_t *v = NULL;
        int res;
        TRY(core__jinja_eval(ev, sc, n->a, &v));
        TRY(core__jinja_test(ev, n, n->s.s, n->s.len, v, NULL, &res));
        *out = core__jinja_bool(res != n->flag);
        return RC_OK;
    }
    case JN_SELECT: {
        val_t *c = NULL;
        TRY(core__jinja_eval(ev, sc, n->b, &c));
        if (!core__jinja_truthy(c)) {
            *out = &core__jinja_undef;
            return RC_OK;
        }
        return core__jinja_eval(ev, sc, n->a, out);
    }
    case JN_TERNARY: {
        val_t *c = NULL;
        TRY(core__jinja_eval(ev, sc, n->a, &c));
        return core__jinja_eval(ev, sc, core__jinja_truthy(c) ? n->b : n->c, out);
    }
    default:
        return core__jinja_fail(ev, n, RC_FORMAT, "unexpected node in an expression");
    }
}

rc_t core__jinja_eval(ev_t *ev, scope_t *sc, const node_t *n, val_t **out)
{
    if (++ev->steps > MAX_STEPS)
        return core__jinja_fail(ev, n, RC_LIMIT, "step budget exhausted");
    if (++ev->depth > MAX_DEPTH)
        return core__jinja_fail(ev, n, RC_LIMIT, "recursion too deep");
    rc_t rc = eval_node(ev, sc, n, out);
    ev->depth--;
    return rc;
}

/* ---- statements ---- */
static rc_t bind_target(ev_t *ev, scope_t *sc, const node_t *target, val_t *v)
{
    if (target->kind == JN_IDENT)
        return scope_set(ev, sc, target->s, v);
    if (target->kind == JN_TUPLE) {
        if (v->type != JV_ARRAY)
            return core__jinja_fail(ev, target, RC_FORMAT, "cannot unpack a non-iterable value");
        if (v->u.arr.n != target->kids.n)
            return core__jinja_fail(ev, target, RC_FORMAT, "too %s items to unpack",
                                    target->kids.n > v->u.arr.n ? "few" : "many");
        for (size_t i = 0; i < target->kids.n; i++) {
            if (target->kids.v[i]->kind != JN_IDENT)
                return core__jinja_fail(ev, target, RC_FORMAT, "cannot unpack to a non-identifier");
            TRY(scope_set(ev, sc, target->kids.v[i]->s, v->u.arr.v[i]));
        }
        return RC_OK;
    }
    return core__jinja_fail(ev, target, RC_FORMAT, "invalid assignment target");
}

static rc_t render_set(ev_t *ev, scope_t *sc, const node_t *n)
{
    val_t *v = NULL;
    if (n->b) {
        TRY(core__jinja_eval(ev, sc, n->b, &v));
    } else {
        core__jinja_sb_t b = {.max = ev->max_bytes};
        rc_t rc = render_list(ev, sc, &n->kids, &b);
        if (!rc && !ev->ctl)
            rc = core__jinja_sb_val(ev, &b, &v);
        free(b.p);
        if (rc || ev->ctl)
            return rc;
    }
    if (n->a->kind != JN_MEMBER || n->a->flag)
        return bind_target(ev, sc, n->a, v);
    val_t *obj = NULL;
    TRY(core__jinja_eval(ev, sc, n->a->a, &obj));
    if (obj->type != JV_NS)
        return core__jinja_fail(ev, n, RC_FORMAT, "cannot assign attribute on non-namespace object");
    if (n->a->b->kind != JN_IDENT)
        return core__jinja_fail(ev, n, RC_FORMAT, "cannot assign to member with non-identifier property");
    return core__jinja_obj_set(ev, obj, n->a->b->s, v);
}

static rc_t loop_object(ev_t *ev, val_t *items, size_t i, val_t **out)
{
    static const char *const names[] = {"index", "index0", "revindex", "revindex0", "first",
                                        "last", "length", "previtem", "nextitem"};
    size_t n = items->u.arr.n;
    double nums[] = {(double)i + 1, (double)i, (double)(n - i), (double)(n - i - 1)};
    val_t *o = core__jinja_obj(ev, JV_OBJECT, 9);
    NEW(o);
    for (size_t k = 0; k < 9; k++) {
        val_t *v = NULL;
        if (k < 4)
            NEW(v = core__jinja_num(ev, JV_INT, nums[k]));
        else if (k == 4 || k == 5)
            v = core__jinja_bool(k == 4 ? i == 0 : i == n - 1);
        else if (k == 6)
            NEW(v = core__jinja_num(ev, JV_INT, (double)n));
        else if (k == 7)
            v = i > 0 ? items->u.arr.v[i - 1] : &core__jinja_undef;
        else
            v = i + 1 < n ? items->u.arr.v[i + 1] : &core__jinja_undef;
        o->u.obj.k[k] = cstr(names[k]);
        o->u.obj.v[k] = v;
    }
    o->u.obj.n = 9;
    *out = o;
    return RC_OK;
}

/* The iterable's items after the optional `if` filter of `for x in xs if cond`. */
static rc_t for_items(ev_t *ev, scope_t *sc, const node_t *n, val_t **out)
{
    const node_t *it = n->b->kind == JN_SELECT ? n->b->a : n->b;
    const node_t *test = n->b->kind == JN_SELECT ? n->b->b : NULL;
    val_t *src = NULL;
    TRY(core__jinja_eval(ev, sc, it, &src));
    if (src->type == JV_OBJECT) {
        val_t *keys = core__jinja_arr(ev, src->u.obj.n);
        NEW(keys);
        for (size_t i = 0; i < src->u.obj.n; i++) {
            val_t *k = core__jinja_str(ev, src->u.obj.k[i].s, src->u.obj.k[i].len);
            NEW(k);
            TRY(core__jinja_arr_push(ev, keys, k));
        }
        src = keys;
    } else if (src->type != JV_ARRAY) {
        return core__jinja_fail(ev, it, RC_FORMAT, "expected an iterable or object in a for loop");
    }
    if (!test) {
        *out = src;
        return RC_OK;
    }
    val_t *kept = core__jinja_arr(ev, 0);
    NEW(kept);
    for (size_t i = 0; i < src->u.arr.n; i++) {
        scope_t *ls = scope_new(ev, sc);
        val_t *c = NULL;
        NEW(ls);
        TRY(bind_target(ev, ls, n->a, src->u.arr.v[i]));
        TRY(core__jinja_eval(ev, ls, test, &c));
        if (core__jinja_truthy(c))
            TRY(core__jinja_arr_push(ev, kept, src->u.arr.v[i]));
    }
    *out = kept;
    return RC_OK;
}

static rc_t render_for(ev_t *ev, scope_t *parent, const node_t *n, core__jinja_sb_t *b)
{
    scope_t *sc = scope_new(ev, parent);
    val_t *items = NULL;
    NEW(sc);
    TRY(for_items(ev, sc, n, &items));
    int none = 1;
    for (size_t i = 0; i < items->u.arr.n; i++) {
        val_t *loop = NULL;
        TRY(loop_object(ev, items, i, &loop));
        TRY(scope_set(ev, sc, cstr("loop"), loop));
        TRY(bind_target(ev, sc, n->a, items->u.arr.v[i]));
        size_t mark = b->len;
        TRY(render_list(ev, sc, &n->kids, b));
        if (ev->ctl) { /* the reference drops a broken iteration's output */
            core__jinja_ctl_t c = ev->ctl;
            ev->ctl = CORE__JINJA_CTL_NONE;
            b->len = mark;
            if (b->p)
                b->p[mark] = 0;
            if (c == CORE__JINJA_CTL_BREAK)
                break;
            continue;
        }
        none = 0;
    }
    return none ? render_list(ev, sc, &n->alt, b) : RC_OK;
}

static rc_t render_node(ev_t *ev, scope_t *sc, const node_t *n, core__jinja_sb_t *b)
{
    const node_t *at = n;
    switch (n->kind) {
    case JN_STR: {
        rc_t rc = core__jinja_sb_add(b, n->s.s, n->s.len);
        if (rc == RC_LIMIT)
            return core__jinja_fail(ev, at, RC_LIMIT, "output exceeds %zu bytes", ev->max_bytes);
        return rc ? core_err(ev->err, rc, "template render: out of memory") : RC_OK;
    }
    case JN_COMMENT:
        return RC_OK;
    case JN_IF: {
        val_t *c = NULL;
        TRY(core__jinja_eval(ev, sc, n->a, &c));
        return render_list(ev, sc, core__jinja_truthy(c) ? &n->kids : &n->alt, b);
    }
    case JN_FOR:
        return render_for(ev, sc, n, b);
    case JN_SET:
        return render_set(ev, sc, n);
    case JN_MACRO: {
        val_t *f = core__jinja_fn(ev, JF_MACRO, NULL);
        NEW(f);
        f->u.fn.macro = n;
        return scope_set(ev, sc, n->s, f);
    }
    case JN_BREAK:
    case JN_CONTINUE:
        ev->ctl = n->kind == JN_BREAK ? CORE__JINJA_CTL_BREAK : CORE__JINJA_CTL_CONTINUE;
        return RC_OK;
    default: {
        val_t *v = NULL;
        TRY(core__jinja_eval(ev, sc, n, &v));
        if (v->type == JV_NULL || v->type == JV_UNDEF)
            return RC_OK;
        return core__jinja_append(ev, at, b, v, 1);
    }
    }
}

static rc_t render_list(ev_t *ev, scope_t *sc, const core__jinja_list_t *l, core__jinja_sb_t *b)
{
    if (++ev->depth > MAX_DEPTH)
        return core__jinja_fail(ev, l->n ? l->v[0] : NULL, RC_LIMIT, "recursion too deep");
    rc_t rc = RC_OK;
    for (size_t i = 0; !rc && i < l->n && !ev->ctl; i++) {
        if (++ev->steps > MAX_STEPS)
            rc = core__jinja_fail(ev, l->v[i], RC_LIMIT, "step budget exhausted");
        else
            rc = render_node(ev, sc, l->v[i], b);
    }
    ev->depth--;
    return rc;
}

/* ---- public ---- */
rc_t core_jinja_compile(const char *src, size_t len, core_jinja_t **out, core_err_t *err)
{
    core_jinja_t *t = calloc(1, sizeof *t);
    core__jinja_tok_t *toks;
    size_t n_toks;
    rc_t rc;
    if (!t || !(t->src = malloc(len + 1))) {
        rc = core_err(err, RC_NOMEM, "template: out of memory");
        goto out;
    }
    if (len)
        memcpy(t->src, src, len);
    t->src[len] = 0;
    t->src_len = len;
    rc = core__jinja_lex(&t->arena, t->src, len, &toks, &n_toks, err);
    if (!rc)
        rc = core__jinja_parse(&t->arena, t->src, len, toks, n_toks, &t->body, err);
out:
    if (rc) {
        core_jinja_free(t);
        return rc;
    }
    *out = t;
    return RC_OK;
}

static rc_t set_globals(ev_t *ev, scope_t *g, const json_t *vars)
{
    static const struct {
        const char *name;
        int fn;
        val_t *v;
    } globals[] = {{"false", -1, &core__jinja_false}, {"true", -1, &core__jinja_true},
                   {"none", -1, &core__jinja_null},   {"True", -1, &core__jinja_true},
                   {"False", -1, &core__jinja_false}, {"None", -1, &core__jinja_null},
                   {"raise_exception", JF_RAISE, NULL}, {"range", JF_RANGE, NULL},
                   {"strftime_now", JF_STRFTIME, NULL}, {"namespace", JF_NAMESPACE, NULL}};
    for (size_t i = 0; i < sizeof globals / sizeof globals[0]; i++) {
        val_t *v = globals[i].v;
        if (!v)
            NEW(v = core__jinja_fn(ev, globals[i].fn, NULL));
        TRY(scope_set(ev, g, cstr(globals[i].name), v));
    }
    if (!vars)
        return RC_OK;
    if (!json_is_object(vars))
        return core_err(ev->err, RC_INVALID, "template variables must be a JSON object");
    const char *k;
    const json_t *jv;
    json_object_foreach((json_t *)vars, k, jv) {
        if (scope_get(g, cstr(k))->type != JV_UNDEF)
            return core_err(ev->err, RC_INVALID, "template variable '%s' is already declared", k);
        val_t *v = NULL;
        TRY(from_json(ev, jv, 0, &v));
        TRY(scope_set(ev, g, cstr(k), v));
    }
    return RC_OK;
}

rc_t core_jinja_render(const core_jinja_t *t, const json_t *vars, size_t max_bytes, char **out,
                       size_t *out_len, core_err_t *err)
{
    ev_t ev = {.t = t, .max_bytes = max_bytes, .err = err};
    size_t extra = max_bytes < ((size_t)1 << 30) ? max_bytes * 8 : (size_t)8 << 30;
    ev.a.limit = MEM_BASE + extra;
    core__jinja_sb_t b = {.max = max_bytes};
    scope_t *g = scope_new(&ev, NULL);
    rc_t rc = g ? set_globals(&ev, g, vars) : core__jinja_oom(&ev);
    if (!rc)
        rc = render_list(&ev, g, &t->body, &b);
    if (!rc && ev.ctl)
        rc = core__jinja_fail(&ev, NULL, RC_FORMAT, "break/continue outside a loop");
    if (!rc && !b.p && !(b.p = calloc(1, 1)))
        rc = core_err(err, RC_NOMEM, "template render: out of memory");
    core__jinja_arena_free(&ev.a);
    if (rc) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    *out_len = b.len;
    return RC_OK;
}

void core_jinja_free(core_jinja_t *t)
{
    if (!t)
        return;
    core__jinja_arena_free(&t->arena);
    free(t->src);
    free(t);
}
