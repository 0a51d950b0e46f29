/* jinja_int.h - private types shared by the jinja_*.c files: the arena, tokens, the AST
 * and runtime values. Not a public contract; see core/jinja.h.
 *
 * Memory: everything of a compiled template (tokens, AST, decoded literals) lives in
 * the template's arena; everything of one render (values, scopes, strings) lives in the
 * render's arena, which has a byte budget so a runaway template fails with RC_LIMIT
 * instead of eating the daemon. Nothing is freed piecemeal. */
#ifndef CORE_JINJA_INT_H
#define CORE_JINJA_INT_H

#include <stddef.h>
#include <stdint.h>

#include "core/jinja.h"

/* ---- arena ---- */
typedef struct core__jinja_chunk core__jinja_chunk_t;
typedef struct {
    core__jinja_chunk_t *head;
    size_t total; /* bytes taken from malloc so far */
    size_t limit; /* budget; 0 = none */
    int over;     /* set once an allocation failed on the budget (RC_LIMIT not NOMEM) */
} core__jinja_arena_t;

void *core__jinja_alloc(core__jinja_arena_t *a, size_t n); /* zeroed; NULL on failure */
char *core__jinja_strdup(core__jinja_arena_t *a, const char *s, size_t n);
void core__jinja_arena_free(core__jinja_arena_t *a);

/* A byte span; strings are UTF-8 and not NUL-terminated. */
typedef struct {
    const char *s;
    size_t len;
} core__jinja_str_t;

/* ---- tokens ---- */
typedef enum {
    JT_TEXT, JT_NUM, JT_STR, JT_IDENT, JT_EQUALS, JT_LPAREN, JT_RPAREN, JT_OPEN_STMT,
    JT_CLOSE_STMT, JT_OPEN_EXPR, JT_CLOSE_EXPR, JT_LBRACKET, JT_RBRACKET, JT_LBRACE,
    JT_RBRACE, JT_COMMA, JT_DOT, JT_COLON, JT_PIPE, JT_ADD, JT_MUL, JT_POW, JT_CMP,
    JT_UNARY, JT_COMMENT
} core__jinja_tok_type_t;

typedef struct {
    core__jinja_tok_type_t type;
    const char *s; /* the value (decoded for strings) */
    size_t len;
    size_t pos; /* byte offset in the original source, for line:col */
} core__jinja_tok_t;

/* Tokenizes src like the reference lexer (after its preprocessing). OUT: *toks in a. */
rc_t core__jinja_lex(core__jinja_arena_t *a, const char *src, size_t len,
                     core__jinja_tok_t **toks, size_t *n_toks, core_err_t *err);
/* "line:col" of byte offset pos in src, into buf. */
void core__jinja_linecol(const char *src, size_t len, size_t pos, char *buf, size_t cap);

/* ---- AST ---- */
typedef enum {
    JN_STR, JN_INT, JN_FLOAT, JN_IDENT, JN_ARRAY, JN_TUPLE, JN_OBJECT, JN_MEMBER, JN_SLICE,
    JN_CALL, JN_KWARG, JN_UNARY, JN_BINARY, JN_FILTER, JN_TEST, JN_SELECT, JN_TERNARY,
    JN_IF, JN_FOR, JN_SET, JN_MACRO, JN_BREAK, JN_CONTINUE, JN_COMMENT
} core__jinja_node_kind_t;

typedef enum {
    JOP_NONE, JOP_ADD, JOP_SUB, JOP_CONCAT, JOP_MUL, JOP_DIV, JOP_FLOORDIV, JOP_MOD, JOP_POW,
    JOP_EQ, JOP_NE, JOP_LT, JOP_GT, JOP_LE, JOP_GE, JOP_IN, JOP_NOTIN, JOP_AND, JOP_OR,
    JOP_NOT, JOP_NEG, JOP_POS
} core__jinja_op_t;

typedef struct core__jinja_node core__jinja_node_t;
typedef struct {
    core__jinja_node_t **v;
    size_t n;
} core__jinja_list_t;

/* One node; which fields mean what depends on kind:
 *   STR/IDENT: s   INT/FLOAT: num   ARRAY/TUPLE: kids   OBJECT: kids=keys, alt=values
 *   MEMBER: a=object b=property flag=computed   SLICE: a,b,c = start,stop,step (NULLable)
 *   CALL: a=callee kids=args   KWARG: s=name a=value   UNARY: op a   BINARY: op a b
 *   FILTER: a=operand b=IDENT or CALL   TEST: a=operand s=test flag=negated
 *   SELECT: a=value b=condition   TERNARY: a=cond b=then c=else
 *   IF: a=test kids=body alt=else   FOR: a=target b=iterable kids=body alt=else
 *   SET: a=target b=value (NULL: block set, kids=body)   MACRO: s=name alt=params kids=body */
struct core__jinja_node {
    core__jinja_node_kind_t kind;
    core__jinja_op_t op;
    int flag;
    size_t pos;
    core__jinja_str_t s;
    double num;
    core__jinja_node_t *a, *b, *c;
    core__jinja_list_t kids, alt;
};

rc_t core__jinja_parse(core__jinja_arena_t *a, const char *src, size_t len,
                       const core__jinja_tok_t *toks, size_t n_toks,
                       core__jinja_list_t *body, core_err_t *err);

struct core_jinja {
    core__jinja_arena_t arena;
    core__jinja_list_t body;
    char *src; /* copy, for runtime error positions */
    size_t src_len;
};

/* ---- values ---- */
typedef enum {
    JV_UNDEF, JV_NULL, JV_BOOL, JV_INT, JV_FLOAT, JV_STR, JV_ARRAY, JV_OBJECT, JV_NS, JV_FUNC
} core__jinja_vtype_t;

#define CORE__JINJA_TUPLE 1  /* JV_ARRAY made from a tuple */
#define CORE__JINJA_KWARGS 2 /* JV_OBJECT holding keyword arguments */

typedef struct core__jinja_val core__jinja_val_t;
struct core__jinja_val {
    core__jinja_vtype_t type;
    int flags;
    union {
        int b;
        double n; /* JV_INT too: JS numbers are doubles */
        core__jinja_str_t str;
        struct {
            core__jinja_val_t **v;
            size_t n, cap;
        } arr;
        struct {
            core__jinja_str_t *k;
            core__jinja_val_t **v;
            size_t n, cap;
        } obj; /* JV_OBJECT and JV_NS; insertion order */
        struct {
            int id;                        /* builtin function id */
            core__jinja_val_t *self;       /* bound receiver of a method */
            const core__jinja_node_t *macro;
        } fn;
    } u;
};

/* Output buffer (malloc'd) with a hard cap. */
typedef struct {
    char *p;
    size_t len, cap, max;
} core__jinja_sb_t;

rc_t core__jinja_sb_add(core__jinja_sb_t *b, const char *s, size_t n);
rc_t core__jinja_sb_addc(core__jinja_sb_t *b, char c);

/* JS Number.prototype.toString of v into buf (>= 32 bytes); returns length. */
size_t core__jinja_num_str(double v, char *buf);
/* JSON.stringify-style quoting of s into b; ascii: also escape >= 0x7f as \uXXXX. */
rc_t core__jinja_json_quote(core__jinja_sb_t *b, const char *s, size_t n, int ascii);
/* Decodes one UTF-8 code point at s[*i] (n bytes), advancing *i; invalid -> U+FFFD. */
uint32_t core__jinja_utf8_next(const char *s, size_t n, size_t *i);
size_t core__jinja_utf8_put(uint32_t cp, char *out); /* 1..4 bytes */
int core__jinja_is_space(uint32_t cp);                 /* JS \s */
/* parseInt(s, 10) (integer=1) or parseFloat(s): NaN when no number starts s. */
double core__jinja_js_parse(const char *s, size_t len, int integer);

/* ---- evaluation (jinja_eval.c, jinja_builtin.c) ---- */
typedef core__jinja_val_t core__jinja_v;

typedef struct core__jinja_scope core__jinja_scope_t;
struct core__jinja_scope {
    core__jinja_scope_t *parent;
    core__jinja_str_t *k;
    core__jinja_val_t **v;
    size_t n, cap;
};

typedef enum { CORE__JINJA_CTL_NONE, CORE__JINJA_CTL_BREAK, CORE__JINJA_CTL_CONTINUE } core__jinja_ctl_t;

/* One render's state. */
typedef struct {
    core__jinja_arena_t a;
    const core_jinja_t *t;
    size_t max_bytes;
    size_t steps, depth;
    core__jinja_ctl_t ctl;
    core_err_t *err;
} core__jinja_ev_t;

/* Builtin function ids (JV_FUNC u.fn.id). */
enum {
    JF_MACRO, JF_RAISE, JF_RANGE, JF_STRFTIME, JF_NAMESPACE, JF_S_UPPER, JF_S_LOWER, JF_S_STRIP,
    JF_S_TITLE, JF_S_CAPITALIZE, JF_S_RSTRIP, JF_S_LSTRIP, JF_S_STARTSWITH, JF_S_ENDSWITH,
    JF_S_SPLIT, JF_S_REPLACE, JF_O_GET, JF_O_ITEMS, JF_O_KEYS, JF_O_VALUES
};

extern core__jinja_val_t core__jinja_undef, core__jinja_null, core__jinja_true, core__jinja_false;

rc_t core__jinja_fail(core__jinja_ev_t *ev, const core__jinja_node_t *at, rc_t rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
rc_t core__jinja_oom(core__jinja_ev_t *ev);
rc_t core__jinja_eval(core__jinja_ev_t *ev, core__jinja_scope_t *sc, const core__jinja_node_t *n,
                      core__jinja_val_t **out);

core__jinja_val_t *core__jinja_num(core__jinja_ev_t *ev, core__jinja_vtype_t type, double n);
core__jinja_val_t *core__jinja_str(core__jinja_ev_t *ev, const char *s, size_t len); /* borrows s */
core__jinja_val_t *core__jinja_bool(int b);
core__jinja_val_t *core__jinja_arr(core__jinja_ev_t *ev, size_t cap);
core__jinja_val_t *core__jinja_obj(core__jinja_ev_t *ev, core__jinja_vtype_t type, size_t cap);
core__jinja_val_t *core__jinja_fn(core__jinja_ev_t *ev, int id, core__jinja_val_t *self);
rc_t core__jinja_arr_push(core__jinja_ev_t *ev, core__jinja_val_t *arr, core__jinja_val_t *x);
rc_t core__jinja_obj_set(core__jinja_ev_t *ev, core__jinja_val_t *o, core__jinja_str_t k, core__jinja_val_t *x);
core__jinja_val_t *core__jinja_obj_get(const core__jinja_val_t *o, const char *k, size_t len);
int core__jinja_truthy(const core__jinja_val_t *v);
int core__jinja_strict_eq(const core__jinja_val_t *a, const core__jinja_val_t *b);
/* The sb's bytes as an arena string value; resets nothing. */
rc_t core__jinja_sb_val(core__jinja_ev_t *ev, const core__jinja_sb_t *b, core__jinja_val_t **out);

/* Appends RuntimeValue.toString (rt=1, what {{ }} prints) or the JS value's own String()
 * (rt=0, what + and ~ concatenate) of v. */
rc_t core__jinja_append(core__jinja_ev_t *ev, const core__jinja_node_t *at, core__jinja_sb_t *b,
                        const core__jinja_val_t *v, int rt);

typedef struct {
    int indent; /* 0: none */
    int ascii, sort_keys;
    const char *item_sep, *key_sep; /* NULL: the defaults */
    int undef_null;
} core__jinja_json_opts_t;
rc_t core__jinja_tojson(core__jinja_ev_t *ev, const core__jinja_node_t *at, core__jinja_sb_t *b,
                        const core__jinja_val_t *v, const core__jinja_json_opts_t *o, int depth);

/* Filters, tests and builtin calls (jinja_builtin.c). */
rc_t core__jinja_filter(core__jinja_ev_t *ev, core__jinja_scope_t *sc, const core__jinja_node_t *at,
                        core__jinja_val_t *v, core__jinja_val_t **out);
rc_t core__jinja_test(core__jinja_ev_t *ev, const core__jinja_node_t *at, const char *name, size_t len,
                      const core__jinja_val_t *v, const core__jinja_val_t *arg, int *res);
rc_t core__jinja_call_builtin(core__jinja_ev_t *ev, const core__jinja_node_t *at, core__jinja_val_t *fn,
                              core__jinja_val_t **args, size_t n, core__jinja_val_t **out);
/* Member lookup of a builtin method/property name on v; NULL if none. */
core__jinja_val_t *core__jinja_builtin_attr(core__jinja_ev_t *ev, core__jinja_val_t *v, const char *k, size_t len);
size_t core__jinja_utf16_len(const char *s, size_t n);

/* Evaluation helpers of jinja_eval.c and jinja_builtin.c: return a failing rc as is; an
 * allocation that gave NULL is the render's out-of-memory error (needs `ev` in scope). */
#define TRY(x)                                                                          \
    do {                                                                                \
        rc_t rc_ = (x);                                                                 \
        if (rc_)                                                                        \
            return rc_;                                                                 \
    } while (0)
#define NEW(p)                                                                          \
    do {                                                                                \
        if (!(p))                                                                       \
            return core__jinja_oom(ev);                                                 \
    } while (0)

#endif
