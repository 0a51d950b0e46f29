/* jinja_value.c - runtime values of core/jinja: constructors in the render arena,
 * truthiness and equality with the reference's JavaScript semantics, string conversion
 * (RuntimeValue.toString vs the JS value's String()), tojson exactly as the reference's
 * toJSON, and the jansson -> value conversion with JS's Object key order.
 * Used by one render at a time; the four constants are never written. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/jinja_int.h"

typedef core__jinja_val_t val_t;

val_t core__jinja_undef = {.type = JV_UNDEF};
val_t core__jinja_null = {.type = JV_NULL};
val_t core__jinja_true = {.type = JV_BOOL, .u.b = 1};
val_t core__jinja_false = {.type = JV_BOOL, .u.b = 0};

rc_t core__jinja_oom(core__jinja_ev_t *ev)
{
    if (ev->a.over)
        return core_err(ev->err, RC_LIMIT, "template render: memory budget exceeded");
    return core_err(ev->err, RC_NOMEM, "template render: out of memory");
}

rc_t core__jinja_fail(core__jinja_ev_t *ev, const core__jinja_node_t *at, rc_t rc, const char *fmt, ...)
{
    char lc[48], msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!at)
        return core_err(ev->err, rc, "template: %s", msg);
    core__jinja_linecol(ev->t->src, ev->t->src_len, at->pos, lc, sizeof lc);
    return core_err(ev->err, rc, "template %s: %s", lc, msg);
}

val_t *core__jinja_num(core__jinja_ev_t *ev, core__jinja_vtype_t type, double n)
{
    val_t *v = core__jinja_alloc(&ev->a, sizeof *v);
    if (v) {
        v->type = type;
        v->u.n = n;
    }
    return v;
}

val_t *core__jinja_str(core__jinja_ev_t *ev, const char *s, size_t len)
{
    val_t *v = core__jinja_alloc(&ev->a, sizeof *v);
    if (v) {
        v->type = JV_STR;
        v->u.str = (core__jinja_str_t){s, len};
    }
    return v;
}

val_t *core__jinja_bool(int b)
{
    return b ? &core__jinja_true : &core__jinja_false;
}

val_t *core__jinja_arr(core__jinja_ev_t *ev, size_t cap)
{
    val_t *v = core__jinja_alloc(&ev->a, sizeof *v);
    if (!v)
        return NULL;
    v->type = JV_ARRAY;
    if (cap) {
        v->u.arr.v = core__jinja_alloc(&ev->a, cap * sizeof(val_t *));
        if (!v->u.arr.v)
            return NULL;
        v->u.arr.cap = cap;
    }
    return v;
}

val_t *core__jinja_obj(core__jinja_ev_t *ev, core__jinja_vtype_t type, size_t cap)
{
    val_t *v = core__jinja_alloc(&ev->a, sizeof *v);
    if (!v)
        return NULL;
    v->type = type;
    if (cap) {
        v->u.obj.k = core__jinja_alloc(&ev->a, cap * sizeof(core__jinja_str_t));
        v->u.obj.v = core__jinja_alloc(&ev->a, cap * sizeof(val_t *));
        if (!v->u.obj.k || !v->u.obj.v)
            return NULL;
        v->u.obj.cap = cap;
    }
    return v;
}

val_t *core__jinja_fn(core__jinja_ev_t *ev, int id, val_t *self)
{
    val_t *v = core__jinja_alloc(&ev->a, sizeof *v);
    if (v) {
        v->type = JV_FUNC;
        v->u.fn.id = id;
        v->u.fn.self = self;
    }
    return v;
}

rc_t core__jinja_arr_push(core__jinja_ev_t *ev, val_t *arr, val_t *x)
{
    if (arr->u.arr.n == arr->u.arr.cap) {
        size_t cap = arr->u.arr.cap ? arr->u.arr.cap * 2 : 8;
        val_t **v = core__jinja_alloc(&ev->a, cap * sizeof *v);
        if (!v)
            return core__jinja_oom(ev);
        if (arr->u.arr.n)
            memcpy(v, arr->u.arr.v, arr->u.arr.n * sizeof *v);
        arr->u.arr.v = v;
        arr->u.arr.cap = cap;
    }
    arr->u.arr.v[arr->u.arr.n++] = x;
    return RC_OK;
}

val_t *core__jinja_obj_get(const val_t *o, const char *k, size_t len)
{
    for (size_t i = 0; i < o->u.obj.n; i++)
        if (o->u.obj.k[i].len == len && memcmp(o->u.obj.k[i].s, k, len) == 0)
            return o->u.obj.v[i];
    return NULL;
}

/* Map.set: an existing key keeps its place. */
rc_t core__jinja_obj_set(core__jinja_ev_t *ev, val_t *o, core__jinja_str_t k, val_t *x)
{
    for (size_t i = 0; i < o->u.obj.n; i++) {
        if (o->u.obj.k[i].len == k.len && memcmp(o->u.obj.k[i].s, k.s, k.len) == 0) {
            o->u.obj.v[i] = x;
            return RC_OK;
        }
    }
    if (o->u.obj.n == o->u.obj.cap) {
        size_t cap = o->u.obj.cap ? o->u.obj.cap * 2 : 8;
        core__jinja_str_t *nk = core__jinja_alloc(&ev->a, cap * sizeof *nk);
        val_t **nv = core__jinja_alloc(&ev->a, cap * sizeof *nv);
        if (!nk || !nv)
            return core__jinja_oom(ev);
        if (o->u.obj.n) {
            memcpy(nk, o->u.obj.k, o->u.obj.n * sizeof *nk);
            memcpy(nv, o->u.obj.v, o->u.obj.n * sizeof *nv);
        }
        o->u.obj.k = nk;
        o->u.obj.v = nv;
        o->u.obj.cap = cap;
    }
    o->u.obj.k[o->u.obj.n] = k;
    o->u.obj.v[o->u.obj.n++] = x;
    return RC_OK;
}

int core__jinja_truthy(const val_t *v)
{
    switch (v->type) {
    case JV_BOOL:
        return v->u.b;
    case JV_INT:
    case JV_FLOAT:
        return v->u.n != 0 && !isnan(v->u.n);
    case JV_STR:
        return v->u.str.len > 0;
    case JV_ARRAY:
        return v->u.arr.n > 0;
    case JV_OBJECT:
        return v->u.obj.n > 0;
    case JV_NS:
    case JV_FUNC:
        return 1;
    default:
        return 0;
    }
}

static int is_num(const val_t *v)
{
    return v->type == JV_INT || v->type == JV_FLOAT;
}

/* JS === on the values underneath. */
int core__jinja_strict_eq(const val_t *a, const val_t *b)
{
    if (is_num(a) && is_num(b))
        return a->u.n == b->u.n;
    if (a->type != b->type)
        return 0;
    switch (a->type) {
    case JV_UNDEF:
    case JV_NULL:
        return 1;
    case JV_BOOL:
        return a->u.b == b->u.b;
    case JV_STR:
        return a->u.str.len == b->u.str.len && memcmp(a->u.str.s, b->u.str.s, a->u.str.len) == 0;
    default: /* containers and functions: identity */
        return a == b;
    }
}

rc_t core__jinja_sb_val(core__jinja_ev_t *ev, const core__jinja_sb_t *b, val_t **out)
{
    char *s = core__jinja_strdup(&ev->a, b->len ? b->p : "", b->len);
    *out = s ? core__jinja_str(ev, s, b->len) : NULL;
    return *out ? RC_OK : core__jinja_oom(ev);
}

static rc_t sb_rc(core__jinja_ev_t *ev, const core__jinja_node_t *at, rc_t rc)
{
    if (rc == RC_LIMIT)
        return core__jinja_fail(ev, at, RC_LIMIT, "output exceeds %zu bytes", ev->max_bytes);
    if (rc)
        return core_err(ev->err, rc, "template render: out of memory");
    return RC_OK;
}

#define SB(x)                                                                           \
    do {                                                                                \
        rc_t rc_ = (x);                                                                 \
        if (rc_)                                                                        \
            return sb_rc(ev, at, rc_);                                                  \
    } while (0)

static rc_t put_num(core__jinja_ev_t *ev, const core__jinja_node_t *at, core__jinja_sb_t *b, double n)
{
    char buf[48];
    size_t k = core__jinja_num_str(n, buf);
    SB(core__jinja_sb_add(b, buf, k));
    return RC_OK;
}

/* FloatValue.toString: whole numbers keep one decimal ("2.0", "-0.0"). */
static rc_t put_float(core__jinja_ev_t *ev, const core__jinja_node_t *at, core__jinja_sb_t *b, double n)
{
    char buf[48];
    if (n == 0 && signbit(n)) {
        SB(core__jinja_sb_add(b, "-0.0", 4));
        return RC_OK;
    }
    if (isfinite(n) && n == floor(n) && fabs(n) < 1e21) {
        int k = snprintf(buf, sizeof buf, "%.1f", n);
        SB(core__jinja_sb_add(b, buf, (size_t)k));
        return RC_OK;
    }
    return put_num(ev, at, b, n);
}

rc_t core__jinja_append(core__jinja_ev_t *ev, const core__jinja_node_t *at, core__jinja_sb_t *b,
                        const val_t *v, int rt)
{
    static const core__jinja_json_opts_t plain = {0};
    switch (v->type) {
    case JV_STR:
        SB(core__jinja_sb_add(b, v->u.str.s, v->u.str.len));
        return RC_OK;
    case JV_INT:
        return put_num(ev, at, b, v->u.n);
    case JV_FLOAT:
        return rt ? put_float(ev, at, b, v->u.n) : put_num(ev, at, b, v->u.n);
    case JV_BOOL:
        SB(core__jinja_sb_add(b, v->u.b ? "true" : "false", v->u.b ? 4 : 5));
        return RC_OK;
    case JV_NULL:
        SB(core__jinja_sb_add(b, "null", 4));
        return RC_OK;
    case JV_UNDEF:
        SB(core__jinja_sb_add(b, "undefined", 9));
        return RC_OK;
    case JV_ARRAY:
        if (rt)
            return core__jinja_tojson(ev, at, b, v, &plain, 0);
        for (size_t i = 0; i < v->u.arr.n; i++) { /* Array.prototype.join(",") */
            if (i)
                SB(core__jinja_sb_addc(b, ','));
            rc_t rc = core__jinja_append(ev, at, b, v->u.arr.v[i], 1);
            if (rc)
                return rc;
        }
        return RC_OK;
    case JV_OBJECT:
    case JV_NS:
        if (rt)
            return core__jinja_tojson(ev, at, b, v, &plain, 0);
        SB(core__jinja_sb_add(b, "[object Map]", 12));
        return RC_OK;
    default:
        return core__jinja_fail(ev, at, RC_FORMAT, "cannot convert a function to a string");
    }
}

static int key_cmp(const void *x, const void *y)
{
    const core__jinja_str_t *a = *(core__jinja_str_t *const *)x, *b = *(core__jinja_str_t *const *)y;
    int c = memcmp(a->s, b->s, a->len < b->len ? a->len : b->len);
    return c ? c : (a->len > b->len) - (a->len < b->len);
}

static rc_t json_pad(core__jinja_ev_t *ev, const core__jinja_node_t *at, core__jinja_sb_t *b, int indent, int depth)
{
    SB(core__jinja_sb_addc(b, '\n'));
    for (long i = 0; i < (long)indent * depth; i++)
        SB(core__jinja_sb_addc(b, ' '));
    return RC_OK;
}

static rc_t json_obj(core__jinja_ev_t *ev, const core__jinja_node_t *at, core__jinja_sb_t *b, const val_t *v,
                     const core__jinja_json_opts_t *o, int depth, const char *isep, const char *ksep)
{
    size_t n = v->u.obj.n;
    size_t *order = malloc((n ? n : 1) * sizeof *order);
    const core__jinja_str_t **keys = malloc((n ? n : 1) * sizeof *keys);
    rc_t rc = order && keys ? RC_OK : core_err(ev->err, RC_NOMEM, "template render: out of memory");
    for (size_t i = 0; !rc && i < n; i++)
        keys[i] = &v->u.obj.k[i];
    if (!rc && o->sort_keys)
        qsort(keys, n, sizeof *keys, key_cmp);
    for (size_t i = 0; !rc && i < n; i++)
        order[i] = (size_t)(keys[i] - v->u.obj.k);
    if (!rc)
        rc = sb_rc(ev, at, core__jinja_sb_addc(b, '{'));
    for (size_t i = 0; !rc && i < n; i++) {
        const core__jinja_str_t *k = &v->u.obj.k[order[i]];
        if (i)
            rc = sb_rc(ev, at, core__jinja_sb_add(b, isep, strlen(isep)));
        if (!rc && o->indent)
            rc = json_pad(ev, at, b, o->indent, depth + 1);
        if (!rc)
            rc = sb_rc(ev, at, core__jinja_json_quote(b, k->s, k->len, o->ascii));
        if (!rc)
            rc = sb_rc(ev, at, core__jinja_sb_add(b, ksep, strlen(ksep)));
        if (!rc)
            rc = core__jinja_tojson(ev, at, b, v->u.obj.v[order[i]], o, depth + 1);
    }
    if (!rc && o->indent && n)
        rc = json_pad(ev, at, b, o->indent, depth);
    if (!rc)
        rc = sb_rc(ev, at, core__jinja_sb_addc(b, '}'));
    free(order);
    free(keys);
    return rc;
}

rc_t core__jinja_tojson(core__jinja_ev_t *ev, const core__jinja_node_t *at, core__jinja_sb_t *b, const val_t *v,
                        const core__jinja_json_opts_t *o, int depth)
{
    const char *isep = o->item_sep ? o->item_sep : o->indent ? "," : ", ";
    const char *ksep = o->key_sep ? o->key_sep : ": ";
    if (depth > 500)
        return core__jinja_fail(ev, at, RC_LIMIT, "tojson: nesting too deep");
    switch (v->type) {
    case JV_NULL:
        SB(core__jinja_sb_add(b, "null", 4));
        return RC_OK;
    case JV_UNDEF:
        SB(o->undef_null ? core__jinja_sb_add(b, "null", 4) : core__jinja_sb_add(b, "undefined", 9));
        return RC_OK;
    case JV_INT:
    case JV_FLOAT:
        if (!isfinite(v->u.n)) {
            SB(core__jinja_sb_add(b, "null", 4));
            return RC_OK;
        }
        return put_num(ev, at, b, v->u.n);
    case JV_BOOL:
        return core__jinja_append(ev, at, b, v, 1);
    case JV_STR:
        SB(core__jinja_json_quote(b, v->u.str.s, v->u.str.len, o->ascii));
        return RC_OK;
    case JV_ARRAY:
        if (v->flags & CORE__JINJA_TUPLE) /* the reference's toJSON knows no TupleValue */
            return core__jinja_fail(ev, at, RC_FORMAT, "cannot convert a tuple to JSON");
        SB(core__jinja_sb_addc(b, '['));
        for (size_t i = 0; i < v->u.arr.n; i++) {
            if (i)
                SB(core__jinja_sb_add(b, isep, strlen(isep)));
            if (o->indent) {
                rc_t rc = json_pad(ev, at, b, o->indent, depth + 1);
                if (rc)
                    return rc;
            }
            rc_t rc = core__jinja_tojson(ev, at, b, v->u.arr.v[i], o, depth + 1);
            if (rc)
                return rc;
        }
        if (o->indent && v->u.arr.n) {
            rc_t rc = json_pad(ev, at, b, o->indent, depth);
            if (rc)
                return rc;
        }
        SB(core__jinja_sb_addc(b, ']'));
        return RC_OK;
    case JV_OBJECT:
    case JV_NS:
        return json_obj(ev, at, b, v, o, depth, isep, ksep);
    default:
        return core__jinja_fail(ev, at, RC_FORMAT, "cannot convert a function to JSON");
    }
}
