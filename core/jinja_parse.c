/* jinja_parse.c - tokens to AST for core/jinja, a port of @huggingface/jinja's
 * parser.ts (0.5.11) with the same precedence ladder (lowest first): ternary / select,
 * or, and, not, comparison and membership, + - ~, * / // %, **, is-tests, filters,
 * unary sign, member access and calls, primary. Nodes live in the template's arena.
 * Nesting is capped (PARSE_MAX_DEPTH) so a hostile template cannot blow the C stack.
 * Called only while compiling; no shared state. */
#include <stdlib.h>
#include <string.h>

#include "core/jinja_int.h"

#define PARSE_MAX_DEPTH 200

typedef core__jinja_node_t node_t;

typedef struct {
    core__jinja_arena_t *a;
    const char *src;
    size_t src_len;
    const core__jinja_tok_t *t;
    size_t n, cur;
    int depth;
    core_err_t *err;
} parser_t;

#define TRY(x)                                                                          \
    do {                                                                                \
        rc_t rc_ = (x);                                                                 \
        if (rc_)                                                                        \
            return rc_;                                                                 \
    } while (0)

static rc_t parse_expr(parser_t *p, node_t **out);
static rc_t parse_any(parser_t *p, node_t **out);
static rc_t parse_primary(parser_t *p, node_t **out);
static rc_t parse_call(parser_t *p, node_t *callee, node_t **out);

static rc_t fail_at(parser_t *p, size_t pos, rc_t rc, const char *what)
{
    char lc[48];
    core__jinja_linecol(p->src, p->src_len, pos, lc, sizeof lc);
    return core_err(p->err, rc, "template %s: %s", lc, what);
}

static rc_t fail(parser_t *p, const char *what)
{
    return fail_at(p, p->cur < p->n ? p->t[p->cur].pos : p->src_len, RC_FORMAT, what);
}

static int peek(const parser_t *p, size_t off)
{
    return p->cur + off < p->n ? (int)p->t[p->cur + off].type : -1;
}

static int is(const parser_t *p, core__jinja_tok_type_t type)
{
    return peek(p, 0) == (int)type;
}

static int tok_is(const core__jinja_tok_t *t, const char *s)
{
    return strlen(s) == t->len && memcmp(t->s, s, t->len) == 0;
}

static int is_ident(const parser_t *p, size_t off, const char *name)
{
    return peek(p, off) == JT_IDENT && tok_is(&p->t[p->cur + off], name);
}

/* {% name ... with name one of the '|'-free list names (NULL-terminated). */
static int is_stmt(const parser_t *p, const char *const *names)
{
    if (peek(p, 0) != JT_OPEN_STMT || peek(p, 1) != JT_IDENT)
        return 0;
    for (; *names; names++)
        if (tok_is(&p->t[p->cur + 1], *names))
            return 1;
    return 0;
}

static rc_t expect(parser_t *p, core__jinja_tok_type_t type, const char *what)
{
    if (!is(p, type))
        return fail(p, what);
    p->cur++;
    return RC_OK;
}

static rc_t expect_ident(parser_t *p, const char *name, const char *what)
{
    if (!is_ident(p, 0, name))
        return fail(p, what);
    p->cur++;
    return RC_OK;
}

static rc_t new_node(parser_t *p, core__jinja_node_kind_t kind, size_t pos, node_t **out)
{
    node_t *n = core__jinja_alloc(p->a, sizeof *n);
    if (!n)
        return core_err(p->err, RC_NOMEM, "template: out of memory");
    n->kind = kind;
    n->pos = pos;
    *out = n;
    return RC_OK;
}

static size_t here(const parser_t *p)
{
    return p->cur < p->n ? p->t[p->cur].pos : p->src_len;
}

/* Appends x; capacity is implicit (powers of two from 4). */
static rc_t list_push(parser_t *p, core__jinja_list_t *l, node_t *x)
{
    if (l->n == 0 || (l->n >= 4 && (l->n & (l->n - 1)) == 0)) {
        size_t cap = l->n ? l->n * 2 : 4;
        node_t **v = core__jinja_alloc(p->a, cap * sizeof *v);
        if (!v)
            return core_err(p->err, RC_NOMEM, "template: out of memory");
        if (l->n)
            memcpy(v, l->v, l->n * sizeof *v);
        l->v = v;
    }
    l->v[l->n++] = x;
    return RC_OK;
}

static rc_t binary(parser_t *p, core__jinja_op_t op, node_t *l, node_t *r, size_t pos, node_t **out)
{
    TRY(new_node(p, JN_BINARY, pos, out));
    (*out)->op = op;
    (*out)->a = l;
    (*out)->b = r;
    return RC_OK;
}

/* Statements until one of names; EOF is an error naming the first. */
static rc_t parse_body(parser_t *p, const char *const *names, core__jinja_list_t *body)
{
    while (!is_stmt(p, names)) {
        if (p->cur >= p->n) {
            char what[64];
            snprintf(what, sizeof what, "unexpected end of template, expected {%% %s %%}", names[0]);
            return fail(p, what);
        }
        node_t *s = NULL;
        TRY(parse_any(p, &s));
        TRY(list_push(p, body, s));
    }
    return RC_OK;
}

/* ---- expressions ---- */
static rc_t parse_seq(parser_t *p, int primary, node_t **out)
{
    size_t pos = here(p);
    node_t *first = NULL;
    TRY(primary ? parse_primary(p, &first) : parse_expr(p, &first));
    if (!is(p, JT_COMMA)) {
        *out = first;
        return RC_OK;
    }
    TRY(new_node(p, JN_TUPLE, pos, out));
    TRY(list_push(p, &(*out)->kids, first));
    while (is(p, JT_COMMA)) {
        p->cur++;
        node_t *x = NULL;
        TRY(primary ? parse_primary(p, &x) : parse_expr(p, &x));
        TRY(list_push(p, &(*out)->kids, x));
    }
    return RC_OK;
}

static rc_t parse_collection(parser_t *p, node_t *n, core__jinja_tok_type_t close, int pairs)
{
    while (!is(p, close)) {
        node_t *k = NULL, *v = NULL;
        TRY(parse_expr(p, &k));
        TRY(list_push(p, &n->kids, k));
        if (pairs) {
            TRY(expect(p, JT_COLON, "expected ':' between key and value in object literal"));
            TRY(parse_expr(p, &v));
            TRY(list_push(p, &n->alt, v));
        }
        if (is(p, JT_COMMA))
            p->cur++;
    }
    p->cur++;
    return RC_OK;
}

static rc_t parse_primary(parser_t *p, node_t **out)
{
    if (p->cur >= p->n)
        return fail(p, "unexpected end of template");
    const core__jinja_tok_t *t = &p->t[p->cur++];
    switch (t->type) {
    case JT_NUM: {
        char buf[64];
        size_t k = t->len < sizeof buf - 1 ? t->len : sizeof buf - 1;
        memcpy(buf, t->s, k);
        buf[k] = 0;
        TRY(new_node(p, memchr(t->s, '.', t->len) ? JN_FLOAT : JN_INT, t->pos, out));
        (*out)->num = strtod(buf, NULL);
        return RC_OK;
    }
    case JT_STR: {
        size_t len = t->len;
        for (size_t j = p->cur; j < p->n && p->t[j].type == JT_STR; j++)
            len += p->t[j].len;
        char *s = core__jinja_alloc(p->a, len + 1);
        if (!s)
            return core_err(p->err, RC_NOMEM, "template: out of memory");
        memcpy(s, t->s, t->len);
        size_t o = t->len;
        for (; is(p, JT_STR); p->cur++) {
            memcpy(s + o, p->t[p->cur].s, p->t[p->cur].len);
            o += p->t[p->cur].len;
        }
        TRY(new_node(p, JN_STR, t->pos, out));
        (*out)->s = (core__jinja_str_t){s, len};
        return RC_OK;
    }
    case JT_IDENT:
        TRY(new_node(p, JN_IDENT, t->pos, out));
        (*out)->s = (core__jinja_str_t){t->s, t->len};
        return RC_OK;
    case JT_LPAREN:
        TRY(parse_seq(p, 0, out));
        return expect(p, JT_RPAREN, "expected closing parenthesis");
    case JT_LBRACKET:
        TRY(new_node(p, JN_ARRAY, t->pos, out));
        return parse_collection(p, *out, JT_RBRACKET, 0);
    case JT_LBRACE:
        TRY(new_node(p, JN_OBJECT, t->pos, out));
        return parse_collection(p, *out, JT_RBRACE, 1);
    default:
        p->cur--;
        return fail(p, "unexpected token");
    }
}

/* ( args ) for calls (params=0) or macro parameter lists (params=1). */
static rc_t parse_args(parser_t *p, int params, core__jinja_list_t *args)
{
    TRY(expect(p, JT_LPAREN, "expected opening parenthesis for arguments list"));
    int saw_kw = 0;
    while (!is(p, JT_RPAREN)) {
        if (is(p, JT_POW) || (is(p, JT_MUL) && tok_is(&p->t[p->cur], "*")))
            return fail(p, "argument unpacking (* / **) is not supported");
        size_t pos = here(p);
        node_t *arg = NULL;
        TRY(parse_expr(p, &arg));
        if (is(p, JT_EQUALS)) {
            p->cur++;
            if (arg->kind != JN_IDENT)
                return fail_at(p, pos, RC_FORMAT, "expected identifier for keyword argument");
            node_t *kw = NULL;
            TRY(new_node(p, JN_KWARG, pos, &kw));
            kw->s = arg->s;
            TRY(parse_expr(p, &kw->a));
            arg = kw;
        }
        if (params && arg->kind != JN_IDENT && arg->kind != JN_KWARG)
            return fail_at(p, pos, RC_FORMAT, "expected identifier for parameter declaration");
        if (params)
            for (size_t i = 0; i < args->n; i++)
                if (args->v[i]->s.len == arg->s.len && memcmp(args->v[i]->s.s, arg->s.s, arg->s.len) == 0)
                    return fail_at(p, pos, RC_FORMAT, "duplicate parameter name");
        if (arg->kind == JN_KWARG)
            saw_kw = 1;
        else if (saw_kw)
            return fail_at(p, pos, RC_FORMAT, "positional argument follows keyword argument");
        TRY(list_push(p, args, arg));
        if (is(p, JT_COMMA))
            p->cur++;
    }
    p->cur++;
    return RC_OK;
}

/* Inside [ ]: one expression, or a slice a:b:c with any part left out. */
static rc_t parse_subscript(parser_t *p, node_t **out)
{
    node_t *parts[3] = {0};
    size_t np = 0, pos = here(p);
    int slice = 0;
    while (!is(p, JT_RBRACKET)) {
        node_t *x = NULL;
        if (is(p, JT_COLON)) {
            p->cur++;
            slice = 1;
        } else {
            TRY(parse_expr(p, &x));
            if (is(p, JT_COLON)) {
                p->cur++;
                slice = 1;
            }
        }
        if (np >= 3)
            return fail_at(p, pos, RC_FORMAT, "expected 0-3 arguments for slice expression");
        parts[np++] = x;
    }
    if (np == 0)
        return fail_at(p, pos, RC_FORMAT, "expected at least one argument for member/slice expression");
    if (!slice) {
        *out = parts[0];
        return RC_OK;
    }
    TRY(new_node(p, JN_SLICE, pos, out));
    (*out)->a = parts[0];
    (*out)->b = parts[1];
    (*out)->c = parts[2];
    return RC_OK;
}

static rc_t parse_member(parser_t *p, node_t *obj, node_t **out)
{
    while (is(p, JT_DOT) || is(p, JT_LBRACKET)) {
        size_t pos = here(p);
        int computed = is(p, JT_LBRACKET);
        p->cur++;
        node_t *prop = NULL, *m = NULL;
        if (computed) {
            TRY(parse_subscript(p, &prop));
            TRY(expect(p, JT_RBRACKET, "expected closing square bracket"));
        } else {
            TRY(parse_primary(p, &prop));
            if (prop->kind != JN_IDENT && prop->kind != JN_INT)
                return fail_at(p, prop->pos, RC_FORMAT, "expected identifier or integer following dot operator");
        }
        TRY(new_node(p, JN_MEMBER, pos, &m));
        m->a = obj;
        m->b = prop;
        m->flag = computed;
        obj = m;
    }
    *out = obj;
    return RC_OK;
}

static rc_t parse_call(parser_t *p, node_t *callee, node_t **out)
{
    node_t *c = NULL;
    TRY(new_node(p, JN_CALL, here(p), &c));
    c->a = callee;
    TRY(parse_args(p, 0, &c->kids));
    TRY(parse_member(p, c, out));
    if (is(p, JT_LPAREN))
        return parse_call(p, *out, out);
    return RC_OK;
}

static rc_t parse_call_member(parser_t *p, node_t **out)
{
    node_t *prim = NULL;
    TRY(parse_primary(p, &prim));
    TRY(parse_member(p, prim, out));
    if (is(p, JT_LPAREN))
        return parse_call(p, *out, out);
    return RC_OK;
}

static rc_t parse_unary_sign(parser_t *p, node_t **out)
{
    if ((is(p, JT_UNARY) || is(p, JT_ADD)) &&
        (tok_is(&p->t[p->cur], "-") || tok_is(&p->t[p->cur], "+"))) {
        TRY(new_node(p, JN_UNARY, here(p), out));
        (*out)->op = p->t[p->cur].s[0] == '-' ? JOP_NEG : JOP_POS;
        p->cur++;
        if (++p->depth > PARSE_MAX_DEPTH)
            return fail_at(p, here(p), RC_LIMIT, "nesting too deep");
        rc_t rc = parse_unary_sign(p, &(*out)->a);
        p->depth--;
        return rc;
    }
    return parse_call_member(p, out);
}

static rc_t parse_filter(parser_t *p, node_t **out)
{
    TRY(parse_unary_sign(p, out));
    while (is(p, JT_PIPE)) {
        size_t pos = here(p);
        p->cur++;
        node_t *f = NULL, *fe = NULL;
        TRY(parse_primary(p, &f));
        if (f->kind != JN_IDENT)
            return fail_at(p, f->pos, RC_FORMAT, "expected identifier for the filter");
        if (is(p, JT_LPAREN))
            TRY(parse_call(p, f, &f));
        TRY(new_node(p, JN_FILTER, pos, &fe));
        fe->a = *out;
        fe->b = f;
        *out = fe;
    }
    return RC_OK;
}

static rc_t parse_test(parser_t *p, node_t **out)
{
    TRY(parse_filter(p, out));
    while (is_ident(p, 0, "is")) {
        size_t pos = here(p);
        p->cur++;
        int neg = is_ident(p, 0, "not");
        p->cur += (size_t)neg;
        node_t *name = NULL, *te = NULL;
        TRY(parse_primary(p, &name));
        if (name->kind != JN_IDENT)
            return fail_at(p, name->pos, RC_FORMAT, "expected identifier for the test");
        TRY(new_node(p, JN_TEST, pos, &te));
        te->a = *out;
        te->s = name->s;
        te->flag = neg;
        *out = te;
    }
    return RC_OK;
}

static core__jinja_op_t op_of(const core__jinja_tok_t *t)
{
    static const struct {
        const char *s;
        core__jinja_op_t op;
    } ops[] = {{"+", JOP_ADD},  {"-", JOP_SUB}, {"~", JOP_CONCAT}, {"*", JOP_MUL}, {"/", JOP_DIV},
               {"//", JOP_FLOORDIV}, {"%", JOP_MOD}, {"**", JOP_POW}, {"==", JOP_EQ}, {"!=", JOP_NE},
               {"<", JOP_LT}, {">", JOP_GT}, {"<=", JOP_LE}, {">=", JOP_GE}};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (tok_is(t, ops[i].s))
            return ops[i].op;
    return JOP_NONE;
}

/* Left-associative levels driven by one token type: **, * / // %, + - ~. */
static rc_t parse_level(parser_t *p, int level, node_t **out)
{
    static const core__jinja_tok_type_t types[] = {JT_POW, JT_MUL, JT_ADD};
    if (level < 0)
        return parse_test(p, out);
    TRY(parse_level(p, level - 1, out));
    while (is(p, types[level])) {
        size_t pos = here(p);
        core__jinja_op_t op = op_of(&p->t[p->cur++]);
        node_t *r = NULL;
        TRY(parse_level(p, level - 1, &r));
        TRY(binary(p, op, *out, r, pos, out));
    }
    return RC_OK;
}

static rc_t parse_comparison(parser_t *p, node_t **out)
{
    TRY(parse_level(p, 2, out));
    for (;;) {
        size_t pos = here(p);
        core__jinja_op_t op;
        if (is_ident(p, 0, "not") && is_ident(p, 1, "in")) {
            op = JOP_NOTIN;
            p->cur += 2;
        } else if (is_ident(p, 0, "in")) {
            op = JOP_IN;
            p->cur++;
        } else if (is(p, JT_CMP)) {
            op = op_of(&p->t[p->cur++]);
        } else {
            return RC_OK;
        }
        node_t *r = NULL;
        TRY(parse_level(p, 2, &r));
        TRY(binary(p, op, *out, r, pos, out));
    }
}

static rc_t parse_not(parser_t *p, node_t **out)
{
    if (!is_ident(p, 0, "not"))
        return parse_comparison(p, out);
    TRY(new_node(p, JN_UNARY, here(p), out));
    (*out)->op = JOP_NOT;
    p->cur++;
    if (++p->depth > PARSE_MAX_DEPTH)
        return fail_at(p, here(p), RC_LIMIT, "nesting too deep");
    rc_t rc = parse_not(p, &(*out)->a);
    p->depth--;
    return rc;
}

static rc_t parse_logic(parser_t *p, int is_or, node_t **out)
{
    const char *word = is_or ? "or" : "and";
    TRY(is_or ? parse_logic(p, 0, out) : parse_not(p, out));
    while (is_ident(p, 0, word)) {
        size_t pos = here(p);
        p->cur++;
        node_t *r = NULL;
        TRY(is_or ? parse_logic(p, 0, &r) : parse_not(p, &r));
        TRY(binary(p, is_or ? JOP_OR : JOP_AND, *out, r, pos, out));
    }
    return RC_OK;
}

/* a if cond else b (chained), or `a if cond` (a select: undefined when false). */
static rc_t parse_if_tail(parser_t *p, node_t *a, node_t **out)
{
    size_t pos = here(p);
    node_t *test = NULL, *n = NULL;
    p->cur++;
    TRY(parse_logic(p, 1, &test));
    int ternary = is_ident(p, 0, "else");
    TRY(new_node(p, ternary ? JN_TERNARY : JN_SELECT, pos, &n));
    if (ternary) {
        p->cur++;
        n->a = test;
        n->b = a;
        TRY(parse_expr(p, &n->c));
    } else {
        n->a = a;
        n->b = test;
    }
    *out = n;
    return RC_OK;
}

static rc_t parse_expr(parser_t *p, node_t **out)
{
    if (++p->depth > PARSE_MAX_DEPTH)
        return fail_at(p, here(p), RC_LIMIT, "nesting too deep");
    rc_t rc = parse_logic(p, 1, out);
    if (!rc && is_ident(p, 0, "if"))
        rc = parse_if_tail(p, *out, out);
    p->depth--;
    return rc;
}

/* ---- statements ---- */
static const char *const END_SET[] = {"endset", NULL};
static const char *const IF_STOP[] = {"elif", "else", "endif", NULL};
static const char *const END_IF[] = {"endif", NULL};
static const char *const FOR_STOP[] = {"endfor", "else", NULL};
static const char *const END_FOR[] = {"endfor", NULL};
static const char *const END_MACRO[] = {"endmacro", NULL};

static rc_t parse_set(parser_t *p, node_t *n)
{
    TRY(parse_seq(p, 0, &n->a));
    if (is(p, JT_EQUALS)) {
        p->cur++;
        TRY(parse_seq(p, 0, &n->b));
    } else {
        TRY(expect(p, JT_CLOSE_STMT, "expected %}"));
        TRY(parse_body(p, END_SET, &n->kids));
        p->cur += 2;
    }
    return expect(p, JT_CLOSE_STMT, "expected closing statement token");
}

static rc_t parse_if(parser_t *p, node_t *n)
{
    TRY(parse_expr(p, &n->a));
    TRY(expect(p, JT_CLOSE_STMT, "expected closing statement token"));
    TRY(parse_body(p, IF_STOP, &n->kids));
    if (is_ident(p, 1, "elif")) {
        node_t *e = NULL;
        TRY(new_node(p, JN_IF, here(p), &e));
        p->cur += 2;
        TRY(parse_if(p, e));
        return list_push(p, &n->alt, e);
    }
    if (is_ident(p, 1, "else")) {
        p->cur += 2;
        TRY(expect(p, JT_CLOSE_STMT, "expected closing statement token"));
        return parse_body(p, END_IF, &n->alt);
    }
    return RC_OK;
}

static rc_t parse_for(parser_t *p, node_t *n)
{
    TRY(parse_seq(p, 1, &n->a));
    if (n->a->kind != JN_IDENT && n->a->kind != JN_TUPLE)
        return fail_at(p, n->a->pos, RC_FORMAT, "expected identifier/tuple for the loop variable");
    TRY(expect_ident(p, "in", "expected `in` keyword following loop variable"));
    TRY(parse_expr(p, &n->b));
    TRY(expect(p, JT_CLOSE_STMT, "expected closing statement token"));
    TRY(parse_body(p, FOR_STOP, &n->kids));
    if (is_ident(p, 1, "else")) {
        p->cur += 2;
        TRY(expect(p, JT_CLOSE_STMT, "expected closing statement token"));
        TRY(parse_body(p, END_FOR, &n->alt));
    }
    return RC_OK;
}

static rc_t parse_macro(parser_t *p, node_t *n)
{
    node_t *name = NULL;
    TRY(parse_primary(p, &name));
    if (name->kind != JN_IDENT)
        return fail_at(p, name->pos, RC_FORMAT, "expected identifier following macro statement");
    n->s = name->s;
    TRY(parse_args(p, 1, &n->alt));
    TRY(expect(p, JT_CLOSE_STMT, "expected closing statement token"));
    return parse_body(p, END_MACRO, &n->kids);
}

/* {% endX %} after a block. */
static rc_t parse_end(parser_t *p, const char *name)
{
    char what[48];
    snprintf(what, sizeof what, "expected {%% %s %%}", name);
    TRY(expect(p, JT_OPEN_STMT, what));
    TRY(expect_ident(p, name, what));
    return expect(p, JT_CLOSE_STMT, "expected %} token");
}

static rc_t parse_statement(parser_t *p, node_t **out)
{
    size_t pos = here(p);
    p->cur++; /* {% */
    if (!is(p, JT_IDENT))
        return fail(p, "unknown statement");
    static const struct {
        const char *name;
        core__jinja_node_kind_t kind;
    } kinds[] = {{"set", JN_SET},     {"if", JN_IF},         {"for", JN_FOR},
                 {"macro", JN_MACRO}, {"break", JN_BREAK},   {"continue", JN_CONTINUE}};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        if (!is_ident(p, 0, kinds[i].name))
            continue;
        p->cur++;
        TRY(new_node(p, kinds[i].kind, pos, out));
        switch (kinds[i].kind) {
        case JN_SET:
            return parse_set(p, *out);
        case JN_IF:
            TRY(parse_if(p, *out));
            return parse_end(p, "endif");
        case JN_FOR:
            TRY(parse_for(p, *out));
            return parse_end(p, "endfor");
        case JN_MACRO:
            TRY(parse_macro(p, *out));
            return parse_end(p, "endmacro");
        default:
            return expect(p, JT_CLOSE_STMT, "expected closing statement token");
        }
    }
    return fail(p, "unknown or unsupported statement");
}

static rc_t parse_any(parser_t *p, node_t **out)
{
    const core__jinja_tok_t *t = &p->t[p->cur];
    if (++p->depth > PARSE_MAX_DEPTH)
        return fail_at(p, t->pos, RC_LIMIT, "nesting too deep");
    rc_t rc = RC_OK;
    switch (t->type) {
    case JT_COMMENT:
    case JT_TEXT:
        rc = new_node(p, t->type == JT_TEXT ? JN_STR : JN_COMMENT, t->pos, out);
        if (!rc)
            (*out)->s = (core__jinja_str_t){t->s, t->len};
        p->cur++;
        break;
    case JT_OPEN_STMT:
        rc = parse_statement(p, out);
        break;
    case JT_OPEN_EXPR:
        p->cur++;
        rc = parse_expr(p, out);
        if (!rc)
            rc = expect(p, JT_CLOSE_EXPR, "expected closing expression token");
        break;
    default:
        rc = fail(p, "unexpected token");
    }
    p->depth--;
    return rc;
}

rc_t core__jinja_parse(core__jinja_arena_t *a, const char *src, size_t len,
                       const core__jinja_tok_t *toks, size_t n_toks,
                       core__jinja_list_t *body, core_err_t *err)
{
    parser_t p = {.a = a, .src = src, .src_len = len, .t = toks, .n = n_toks, .err = err};
    while (p.cur < p.n) {
        node_t *s = NULL;
        TRY(parse_any(&p, &s));
        TRY(list_push(&p, body, s));
    }
    return RC_OK;
}
