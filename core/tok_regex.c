/* tok_regex.c - a small backtracking regex engine for tokenizer.json Split patterns.
 *
 * Supports what real byte-level tokenizer patterns use: alternation, (...) (?:...) (?i:...)
 * groups, classes with ranges/negation/escapes, \p{..} \P{..} general categories,
 * \s \S \d \D \w \W, . ^ $ \A \z \b \B, quantifiers ? * + {m} {m,} {m,n} (greedy, lazy with
 * a trailing ?, possessive with a trailing +), lookahead (?=..) (?!..) and atomic (?>..).
 * Anything else fails compilation with RC_UNSUPPORTED naming the construct.
 * (?i) folds ASCII letters only. Semantics are Perl/Oniguruma leftmost-first.
 *
 * The pattern compiles to a program (Thompson-style instructions) run by a backtracking
 * interpreter with an explicit stack; every instruction costs one step of a budget owned
 * by the caller, so catastrophic patterns end in RC_LIMIT instead of hanging.
 * A compiled program is immutable and shareable between threads. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tok_int.h"
#include "core/unicode.h"

#define RE_MAX_PROG 65536
#define RE_MAX_DEPTH 64
#define RE_MAX_PATTERN 4096 /* code points; bounds the parser's and generator's recursion */
#define RE_INF (-1)

enum { OP_CHAR, OP_ANY, OP_CLASS, OP_SPLIT, OP_JMP, OP_MATCH, OP_LOOK, OP_NLOOK, OP_ATOMIC,
       OP_BOT, OP_EOT, OP_WORDB, OP_NWORDB };

typedef struct {
    uint8_t op;
    uint8_t icase;
    uint32_t c;   /* OP_CHAR code point, OP_CLASS index */
    int32_t x, y; /* jump targets (SPLIT prefers x; LOOK/ATOMIC continue at x) */
} re_inst_t;

enum { CI_RANGE, CI_CAT, CI_NCAT, CI_SPACE, CI_NSPACE };
typedef struct {
    uint8_t kind;
    uint32_t lo, hi; /* range, or category mask in lo */
} re_item_t;

typedef struct {
    uint32_t first, n; /* items */
    bool neg;
    uint64_t ascii[2]; /* precomputed result for cp < 128 (negation applied) */
} re_class_t;

struct core__tok_re {
    re_inst_t *prog;
    size_t n_prog, cap_prog;
    re_class_t *cls;
    size_t n_cls, cap_cls;
    re_item_t *items;
    size_t n_items, cap_items;
};

struct core__tok_re_thread {
    int32_t pc;
    size_t sp;
};

/* ---- AST built by the parser, then emitted as a program ---- */
enum { N_EMPTY, N_CHAR, N_ANY, N_CLASS, N_CAT, N_ALT, N_REP, N_LOOK, N_NLOOK, N_ATOMIC,
       N_BOT, N_EOT, N_WORDB, N_NWORDB };
typedef struct {
    uint8_t kind, icase, greedy, possessive;
    uint32_t c;
    int32_t min, max;
    int32_t a, b; /* children */
} re_node_t;

typedef struct {
    const uint32_t *p; /* pattern code points */
    size_t n, i;
    re_node_t *nodes;
    size_t n_nodes, cap_nodes;
    core__tok_re_t *re;
    core_err_t *err;
    rc_t rc;
    int depth;
} re_parser_t;

#define WORD_MASK                                                                           \
    (CORE_UCAT_MASK_L | CORE_UCAT_MASK_M | CORE_UCAT_BIT(CORE_UCAT_ND) |                   \
     CORE_UCAT_BIT(CORE_UCAT_PC) | CORE_UCAT_BIT(CORE_UCAT_NL))

static int32_t p_fail(re_parser_t *ps, rc_t rc, const char *what)
{
    if (ps->rc == RC_OK)
        ps->rc = core_err(ps->err, rc, "regex: %s at offset %zu", what, ps->i);
    return -1;
}

static int32_t p_node(re_parser_t *ps, uint8_t kind)
{
    if (ps->rc != RC_OK)
        return -1;
    if (ps->n_nodes >= RE_MAX_PROG)
        return p_fail(ps, RC_LIMIT, "pattern too large");
    if (!core__tok_grow(&ps->nodes, &ps->cap_nodes, ps->n_nodes + 1, sizeof *ps->nodes))
        return p_fail(ps, RC_NOMEM, "out of memory");
    re_node_t *nd = &ps->nodes[ps->n_nodes];
    memset(nd, 0, sizeof *nd);
    nd->kind = kind;
    nd->a = nd->b = -1;
    return (int32_t)ps->n_nodes++;
}

static int32_t p_pair(re_parser_t *ps, uint8_t kind, int32_t a, int32_t b)
{
    int32_t k = p_node(ps, kind);
    if (k >= 0) {
        ps->nodes[k].a = a;
        ps->nodes[k].b = b;
    }
    return k;
}

static bool p_eat(re_parser_t *ps, uint32_t c)
{
    if (ps->i < ps->n && ps->p[ps->i] == c) {
        ps->i++;
        return true;
    }
    return false;
}

/* ---- classes ---- */
static bool cls_item(re_parser_t *ps, uint8_t kind, uint32_t lo, uint32_t hi)
{
    core__tok_re_t *re = ps->re;
    if (!core__tok_grow(&re->items, &re->cap_items, re->n_items + 1, sizeof *re->items)) {
        p_fail(ps, RC_NOMEM, "out of memory");
        return false;
    }
    re->items[re->n_items++] = (re_item_t){kind, lo, hi};
    return true;
}

static bool cat_mask(const char *name, uint32_t *mask)
{
    static const struct {
        const char *name;
        uint32_t mask;
    } tab[] = {
        {"L", CORE_UCAT_MASK_L}, {"Letter", CORE_UCAT_MASK_L},
        {"M", CORE_UCAT_MASK_M}, {"Mark", CORE_UCAT_MASK_M},
        {"N", CORE_UCAT_MASK_N}, {"Number", CORE_UCAT_MASK_N},
        {"P", 0x7Fu << CORE_UCAT_PC}, {"Punctuation", 0x7Fu << CORE_UCAT_PC},
        {"S", 0xFu << CORE_UCAT_SM}, {"Symbol", 0xFu << CORE_UCAT_SM},
        {"Z", 0x7u << CORE_UCAT_ZS}, {"Separator", 0x7u << CORE_UCAT_ZS},
        {"C", (0xFu << CORE_UCAT_CC) | 1u}, {"Other", (0xFu << CORE_UCAT_CC) | 1u},
        {"L&", CORE_UCAT_BIT(CORE_UCAT_LU) | CORE_UCAT_BIT(CORE_UCAT_LL) |
                   CORE_UCAT_BIT(CORE_UCAT_LT)},
    };
    static const char *const two[CORE_UCAT__COUNT] = {
        "Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps",
        "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co"};
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (strcmp(name, tab[i].name) == 0) {
            *mask = tab[i].mask;
            return true;
        }
    for (int i = 0; i < CORE_UCAT__COUNT; i++)
        if (strcmp(name, two[i]) == 0) {
            *mask = CORE_UCAT_BIT(i);
            return true;
        }
    return false;
}

/* After "\p" or "\P": {Name} or a single letter. */
static bool p_property(re_parser_t *ps, bool neg)
{
    char name[32];
    size_t k = 0;
    if (p_eat(ps, '{')) {
        if (p_eat(ps, '^'))
            neg = !neg;
        while (ps->i < ps->n && ps->p[ps->i] != '}' && k + 1 < sizeof name) {
            uint32_t c = ps->p[ps->i++];
            if (c == ' ' || c == '_')
                continue;
            name[k++] = c < 128 ? (char)c : '?';
        }
        if (!p_eat(ps, '}')) {
            p_fail(ps, RC_FORMAT, "unterminated \\p{...}");
            return false;
        }
    } else if (ps->i < ps->n && ps->p[ps->i] < 128) {
        name[k++] = (char)ps->p[ps->i++];
    }
    name[k] = 0;
    uint32_t mask;
    if (!cat_mask(name, &mask)) {
        char msg[96];
        snprintf(msg, sizeof msg, "unsupported property \\p{%s} (only general categories)", name);
        p_fail(ps, RC_UNSUPPORTED, msg);
        return false;
    }
    return cls_item(ps, neg ? CI_NCAT : CI_CAT, mask, 0);
}

static bool p_hex(re_parser_t *ps, size_t ndig, uint32_t *out)
{
    bool brace = ndig == 2 && p_eat(ps, '{');
    uint32_t v = 0;
    size_t k = 0;
    while (ps->i < ps->n && (brace ? ps->p[ps->i] != '}' : k < ndig)) {
        uint32_t c = ps->p[ps->i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if ((c | 32) >= 'a' && (c | 32) <= 'f')
            d = (c | 32) - 'a' + 10;
        else
            break;
        v = v * 16 + d;
        ps->i++;
        if (++k > 6)
            break;
    }
    if ((brace && !p_eat(ps, '}')) || k == 0 || (!brace && k != ndig) || v > 0x10FFFF) {
        p_fail(ps, RC_FORMAT, "bad hex escape");
        return false;
    }
    *out = v;
    return true;
}

/* An escape after '\'. Literal escapes set *lit; class escapes add items to the current class
 * (in_class) and set *lit to UINT32_MAX. Returns false on error. */
static bool p_escape_class(re_parser_t *ps, uint32_t *lit)
{
    if (ps->i >= ps->n)
        return p_fail(ps, RC_FORMAT, "trailing backslash"), false;
    uint32_t c = ps->p[ps->i++];
    *lit = UINT32_MAX;
    switch (c) {
    case 'p': return p_property(ps, false);
    case 'P': return p_property(ps, true);
    case 's': return cls_item(ps, CI_SPACE, 0, 0);
    case 'S': return cls_item(ps, CI_NSPACE, 0, 0);
    case 'd': return cls_item(ps, CI_CAT, CORE_UCAT_BIT(CORE_UCAT_ND), 0);
    case 'D': return cls_item(ps, CI_NCAT, CORE_UCAT_BIT(CORE_UCAT_ND), 0);
    case 'w': return cls_item(ps, CI_CAT, WORD_MASK, 0);
    case 'W': return cls_item(ps, CI_NCAT, WORD_MASK, 0);
    case 'n': *lit = '\n'; return true;
    case 'r': *lit = '\r'; return true;
    case 't': *lit = '\t'; return true;
    case 'f': *lit = '\f'; return true;
    case 'v': *lit = '\v'; return true;
    case 'a': *lit = 7; return true;
    case 'e': *lit = 27; return true;
    case '0': *lit = 0; return true;
    case 'x': return p_hex(ps, 2, lit);
    case 'u': return p_hex(ps, 4, lit);
    default: break;
    }
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
        char msg[64];
        snprintf(msg, sizeof msg, "unsupported escape \\%c", (char)c);
        return p_fail(ps, RC_UNSUPPORTED, msg), false;
    }
    *lit = c; /* escaped punctuation is literal */
    return true;
}

static void cls_finish(core__tok_re_t *re, re_class_t *cl, bool icase);

/* Parse a class body after '['; nested non-negated [...] are unions. */
static bool p_class_body(re_parser_t *ps, bool icase, int depth)
{
    bool first = true;
    for (;;) {
        if (ps->i >= ps->n)
            return p_fail(ps, RC_FORMAT, "unterminated character class"), false;
        uint32_t c = ps->p[ps->i];
        if (c == ']' && !first) {
            ps->i++;
            return true;
        }
        first = false;
        ps->i++;
        if (c == '[') {
            if (ps->i < ps->n && (ps->p[ps->i] == '^' || ps->p[ps->i] == ':'))
                return p_fail(ps, RC_UNSUPPORTED, "negated or POSIX class inside a class"),
                       false;
            if (depth > 8 || !p_class_body(ps, icase, depth + 1))
                return depth > 8 ? (p_fail(ps, RC_LIMIT, "class nesting"), false) : false;
            continue;
        }
        if (c == '&' && ps->i < ps->n && ps->p[ps->i] == '&')
            return p_fail(ps, RC_UNSUPPORTED, "class intersection &&"), false;
        uint32_t lo = c;
        if (c == '\\') {
            if (!p_escape_class(ps, &lo))
                return false;
            if (lo == UINT32_MAX)
                continue;
        }
        uint32_t hi = lo;
        if (ps->i + 1 < ps->n && ps->p[ps->i] == '-' && ps->p[ps->i + 1] != ']') {
            ps->i++;
            hi = ps->p[ps->i++];
            if (hi == '\\' && (!p_escape_class(ps, &hi) || hi == UINT32_MAX))
                return ps->rc == RC_OK ? (p_fail(ps, RC_FORMAT, "bad class range"), false)
                                       : false;
            if (hi < lo)
                return p_fail(ps, RC_FORMAT, "class range out of order"), false;
        }
        if (!cls_item(ps, CI_RANGE, lo, hi))
            return false;
    }
}

static int32_t p_class(re_parser_t *ps, bool icase)
{
    core__tok_re_t *re = ps->re;
    if (!core__tok_grow(&re->cls, &re->cap_cls, re->n_cls + 1, sizeof *re->cls))
        return p_fail(ps, RC_NOMEM, "out of memory");
    re_class_t cl = {.first = (uint32_t)re->n_items};
    cl.neg = p_eat(ps, '^');
    if (!p_class_body(ps, icase, 0))
        return -1;
    cl.n = (uint32_t)(re->n_items - cl.first);
    cls_finish(re, &cl, icase);
    re->cls[re->n_cls] = cl;
    int32_t k = p_node(ps, N_CLASS);
    if (k >= 0)
        ps->nodes[k].c = (uint32_t)re->n_cls++;
    return k;
}

/* A class escape outside brackets (\s, \p{L}, ...) becomes a one-item class. */
static int32_t p_single_class(re_parser_t *ps, size_t first_item)
{
    core__tok_re_t *re = ps->re;
    if (!core__tok_grow(&re->cls, &re->cap_cls, re->n_cls + 1, sizeof *re->cls))
        return p_fail(ps, RC_NOMEM, "out of memory");
    re_class_t cl = {.first = (uint32_t)first_item, .n = (uint32_t)(re->n_items - first_item)};
    cls_finish(re, &cl, false);
    re->cls[re->n_cls] = cl;
    int32_t k = p_node(ps, N_CLASS);
    if (k >= 0)
        ps->nodes[k].c = (uint32_t)re->n_cls++;
    return k;
}

static int32_t p_alt(re_parser_t *ps, bool icase);

static int32_t p_group(re_parser_t *ps, bool icase)
{
    uint8_t kind = N_EMPTY; /* plain group */
    if (p_eat(ps, '?')) {
        if (p_eat(ps, ':'))
            kind = N_EMPTY;
        else if (p_eat(ps, '='))
            kind = N_LOOK;
        else if (p_eat(ps, '!'))
            kind = N_NLOOK;
        else if (p_eat(ps, '>'))
            kind = N_ATOMIC;
        else if (ps->i + 1 < ps->n && ps->p[ps->i] == 'i' && ps->p[ps->i + 1] == ':') {
            ps->i += 2;
            icase = true;
        } else if (ps->i < ps->n && ps->p[ps->i] == '<')
            return p_fail(ps, RC_UNSUPPORTED, "lookbehind or named group (?<");
        else
            return p_fail(ps, RC_UNSUPPORTED, "group flag or construct (?...");
    }
    if (++ps->depth > RE_MAX_DEPTH)
        return p_fail(ps, RC_LIMIT, "groups nested too deeply");
    int32_t sub = p_alt(ps, icase);
    ps->depth--;
    if (sub < 0)
        return -1;
    if (!p_eat(ps, ')'))
        return p_fail(ps, RC_FORMAT, "missing )");
    if (kind == N_EMPTY)
        return sub;
    return p_pair(ps, kind, sub, -1);
}

static int32_t p_atom(re_parser_t *ps, bool icase)
{
    uint32_t c = ps->p[ps->i++];
    switch (c) {
    case '(': return p_group(ps, icase);
    case '[': return p_class(ps, icase);
    case '.': return p_node(ps, N_ANY);
    case '^': return p_node(ps, N_BOT);
    case '$': return p_node(ps, N_EOT);
    case '*': case '+': case '?': return p_fail(ps, RC_FORMAT, "quantifier without operand");
    case '\\': break;
    default: {
        int32_t k = p_node(ps, N_CHAR);
        if (k >= 0) {
            ps->nodes[k].c = c;
            ps->nodes[k].icase = icase;
        }
        return k;
    }
    }
    if (ps->i < ps->n) {
        uint32_t e = ps->p[ps->i];
        uint8_t kinds[] = {N_BOT, N_EOT, N_EOT, N_WORDB, N_NWORDB};
        const char *names = "AzZbB";
        const char *hit = e < 128 ? strchr(names, (int)e) : NULL;
        if (hit && e) {
            ps->i++;
            return p_node(ps, kinds[hit - names]);
        }
        if (e == 'G' || e == 'K' || e == 'X' || e == 'R' || e == 'k' || e == 'g' ||
            (e >= '1' && e <= '9'))
            return p_fail(ps, RC_UNSUPPORTED, "backreference or special escape");
    }
    size_t first_item = ps->re->n_items;
    uint32_t lit;
    if (!p_escape_class(ps, &lit))
        return -1;
    if (lit == UINT32_MAX)
        return p_single_class(ps, first_item);
    int32_t k = p_node(ps, N_CHAR);
    if (k >= 0) {
        ps->nodes[k].c = lit;
        ps->nodes[k].icase = icase;
    }
    return k;
}

static bool p_number(re_parser_t *ps, int32_t *v)
{
    size_t start = ps->i;
    int64_t x = 0;
    while (ps->i < ps->n && ps->p[ps->i] >= '0' && ps->p[ps->i] <= '9') {
        x = x * 10 + (ps->p[ps->i++] - '0');
        if (x > 1000)
            return false;
    }
    *v = (int32_t)x;
    return ps->i > start;
}

/* {m}, {m,}, {m,n}; a '{' that does not start a valid count is an error (as in Rust). */
static bool p_braces(re_parser_t *ps, int32_t *min, int32_t *max)
{
    if (!p_number(ps, min))
        return p_fail(ps, RC_UNSUPPORTED, "bad or too large {m,n} count"), false;
    *max = *min;
    if (p_eat(ps, ',')) {
        *max = RE_INF;
        if (ps->i < ps->n && ps->p[ps->i] != '}' && !p_number(ps, max))
            return p_fail(ps, RC_UNSUPPORTED, "bad or too large {m,n} count"), false;
    }
    if (!p_eat(ps, '}') || (*max != RE_INF && *max < *min))
        return p_fail(ps, RC_FORMAT, "bad {m,n}"), false;
    return true;
}

static int32_t p_quant(re_parser_t *ps, int32_t atom)
{
    while (atom >= 0 && ps->i < ps->n) {
        uint32_t c = ps->p[ps->i];
        int32_t min, max;
        if (c == '*' || c == '+' || c == '?') {
            ps->i++;
            min = c == '+';
            max = c == '?' ? 1 : RE_INF;
        } else if (c == '{' && ps->i + 1 < ps->n && ps->p[ps->i + 1] >= '0' &&
                   ps->p[ps->i + 1] <= '9') {
            ps->i++; /* a '{' not followed by a digit is a literal, as in Oniguruma */
            if (!p_braces(ps, &min, &max))
                return -1;
        } else {
            break;
        }
        int32_t k = p_pair(ps, N_REP, atom, -1);
        if (k < 0)
            return -1;
        re_node_t *nd = &ps->nodes[k];
        nd->min = min;
        nd->max = max;
        nd->greedy = !p_eat(ps, '?');
        nd->possessive = nd->greedy && p_eat(ps, '+');
        atom = k;
    }
    return atom;
}

static int32_t p_seq(re_parser_t *ps, bool icase)
{
    int32_t seq = -1;
    while (ps->i < ps->n && ps->p[ps->i] != '|' && ps->p[ps->i] != ')') {
        int32_t a = p_quant(ps, p_atom(ps, icase));
        if (a < 0)
            return -1;
        seq = seq < 0 ? a : p_pair(ps, N_CAT, seq, a);
        if (seq < 0)
            return -1;
    }
    return seq < 0 ? p_node(ps, N_EMPTY) : seq;
}

static int32_t p_alt(re_parser_t *ps, bool icase)
{
    int32_t left = p_seq(ps, icase);
    while (left >= 0 && p_eat(ps, '|')) {
        int32_t right = p_seq(ps, icase);
        if (right < 0)
            return -1;
        left = p_pair(ps, N_ALT, left, right);
    }
    return left;
}

/* ---- class evaluation ---- */
static bool cls_items_match(const core__tok_re_t *re, const re_class_t *cl, uint32_t cp,
                            uint8_t cat)
{
    for (uint32_t i = 0; i < cl->n; i++) {
        const re_item_t *it = &re->items[cl->first + i];
        switch (it->kind) {
        case CI_RANGE:
            if (cp >= it->lo && cp <= it->hi)
                return true;
            break;
        case CI_CAT:
            if (it->lo & (1u << cat))
                return true;
            break;
        case CI_NCAT:
            if (!(it->lo & (1u << cat)))
                return true;
            break;
        case CI_SPACE:
            if (core_unicode_is_space(cp))
                return true;
            break;
        default:
            if (!core_unicode_is_space(cp))
                return true;
            break;
        }
    }
    return false;
}

static void cls_finish(core__tok_re_t *re, re_class_t *cl, bool icase)
{
    cl->ascii[0] = cl->ascii[1] = 0;
    for (uint32_t cp = 0; cp < 128; cp++) {
        uint8_t cat = (uint8_t)core_unicode_cat(cp);
        bool m = cls_items_match(re, cl, cp, cat);
        if (icase && !m && ((cp | 32) >= 'a' && (cp | 32) <= 'z'))
            m = cls_items_match(re, cl, cp ^ 32, cat == CORE_UCAT_LU ? CORE_UCAT_LL : CORE_UCAT_LU);
        if (m != cl->neg)
            cl->ascii[cp >> 6] |= 1ull << (cp & 63);
    }
}

static bool cls_match(const core__tok_re_t *re, uint32_t idx, uint32_t cp, uint8_t cat)
{
    const re_class_t *cl = &re->cls[idx];
    if (cp < 128)
        return (cl->ascii[cp >> 6] >> (cp & 63)) & 1;
    return cls_items_match(re, cl, cp, cat) != cl->neg;
}

/* ---- code generation ---- */
static int32_t emit(core__tok_re_t *re, uint8_t op)
{
    if (re->n_prog >= RE_MAX_PROG ||
        !core__tok_grow(&re->prog, &re->cap_prog, re->n_prog + 1, sizeof *re->prog))
        return -1;
    re->prog[re->n_prog] = (re_inst_t){.op = op, .x = -1, .y = -1};
    return (int32_t)re->n_prog++;
}

static bool gen(re_parser_t *ps, int32_t k);

/* x{min,max}: min copies, then either a loop or (max - min) nested optional copies. */
static bool gen_rep(re_parser_t *ps, const re_node_t *nd)
{
    core__tok_re_t *re = ps->re;
    for (int32_t i = 0; i < nd->min; i++)
        if (!gen(ps, nd->a))
            return false;
    if (nd->max == RE_INF) {
        int32_t l = emit(re, OP_SPLIT);
        if (l < 0 || !gen(ps, nd->a))
            return false;
        int32_t j = emit(re, OP_JMP);
        if (j < 0)
            return false;
        re->prog[j].x = l;
        re->prog[l].x = nd->greedy ? l + 1 : (int32_t)re->n_prog;
        re->prog[l].y = nd->greedy ? (int32_t)re->n_prog : l + 1;
        return true;
    }
    int32_t splits[1001];
    int32_t n_opt = nd->max - nd->min;
    for (int32_t i = 0; i < n_opt; i++) {
        if ((splits[i] = emit(re, OP_SPLIT)) < 0 || !gen(ps, nd->a))
            return false;
    }
    for (int32_t i = 0; i < n_opt; i++) {
        re_inst_t *s = &re->prog[splits[i]];
        s->x = nd->greedy ? splits[i] + 1 : (int32_t)re->n_prog;
        s->y = nd->greedy ? (int32_t)re->n_prog : splits[i] + 1;
    }
    return true;
}

/* LOOK/NLOOK/ATOMIC: the sub-program follows inline, ends in MATCH; x = continuation. */
static bool gen_sub(re_parser_t *ps, uint8_t op, int32_t child)
{
    core__tok_re_t *re = ps->re;
    int32_t l = emit(re, op);
    if (l < 0 || !gen(ps, child) || emit(re, OP_MATCH) < 0)
        return false;
    re->prog[l].x = (int32_t)re->n_prog;
    return true;
}

static bool gen(re_parser_t *ps, int32_t k)
{
    core__tok_re_t *re = ps->re;
    const re_node_t nd = ps->nodes[k];
    int32_t i;
    switch (nd.kind) {
    case N_EMPTY: return true;
    case N_CHAR:
        if ((i = emit(re, OP_CHAR)) < 0)
            return false;
        re->prog[i].c = nd.c;
        re->prog[i].icase = nd.icase && (nd.c | 32) >= 'a' && (nd.c | 32) <= 'z';
        return true;
    case N_CLASS:
        if ((i = emit(re, OP_CLASS)) < 0)
            return false;
        re->prog[i].c = nd.c;
        return true;
    case N_CAT: return gen(ps, nd.a) && gen(ps, nd.b);
    case N_ALT: {
        int32_t s = emit(re, OP_SPLIT);
        if (s < 0 || !gen(ps, nd.a))
            return false;
        int32_t j = emit(re, OP_JMP);
        if (j < 0)
            return false;
        re->prog[s].x = s + 1;
        re->prog[s].y = (int32_t)re->n_prog;
        if (!gen(ps, nd.b))
            return false;
        re->prog[j].x = (int32_t)re->n_prog;
        return true;
    }
    case N_REP:
        if (nd.possessive) {
            re_node_t inner = nd;
            inner.possessive = 0;
            int32_t l = emit(re, OP_ATOMIC);
            ps->nodes[k] = inner;
            bool ok = l >= 0 && gen(ps, k) && emit(re, OP_MATCH) >= 0;
            ps->nodes[k] = nd;
            if (ok)
                re->prog[l].x = (int32_t)re->n_prog;
            return ok;
        }
        return gen_rep(ps, &nd);
    case N_LOOK: return gen_sub(ps, OP_LOOK, nd.a);
    case N_NLOOK: return gen_sub(ps, OP_NLOOK, nd.a);
    case N_ATOMIC: return gen_sub(ps, OP_ATOMIC, nd.a);
    default: {
        static const uint8_t ops[] = {[N_ANY] = OP_ANY, [N_BOT] = OP_BOT, [N_EOT] = OP_EOT,
                                      [N_WORDB] = OP_WORDB, [N_NWORDB] = OP_NWORDB};
        return emit(re, ops[nd.kind]) >= 0;
    }
    }
}

void core__tok_re_free(core__tok_re_t *re)
{
    if (!re)
        return;
    free(re->prog);
    free(re->cls);
    free(re->items);
    free(re);
}

static rc_t re_decode_pattern(const char *pat, size_t len, uint32_t **cps, size_t *n,
                              core_err_t *err)
{
    *cps = malloc((len + 1) * sizeof **cps);
    if (!*cps)
        return core_err(err, RC_NOMEM, "regex: out of memory");
    size_t k = 0;
    for (size_t i = 0; i < len;) {
        size_t l = core_utf8_decode((const unsigned char *)pat + i, len - i, &(*cps)[k]);
        if (l == 0)
            return core_err(err, RC_FORMAT, "regex: pattern is not valid UTF-8");
        i += l;
        k++;
    }
    *n = k;
    return RC_OK;
}

rc_t core__tok_re_compile(const char *pat, size_t len, core__tok_re_t **out, core_err_t *err)
{
    re_parser_t ps = {.err = err};
    uint32_t *cps = NULL;
    rc_t rc = re_decode_pattern(pat, len, &cps, &ps.n, err);
    if (rc == RC_OK && ps.n > RE_MAX_PATTERN)
        rc = core_err(err, RC_LIMIT, "regex: pattern longer than %d characters", RE_MAX_PATTERN);
    ps.p = cps;
    ps.re = calloc(1, sizeof *ps.re);
    if (rc == RC_OK && !ps.re)
        rc = core_err(err, RC_NOMEM, "regex: out of memory");
    if (rc != RC_OK)
        goto out;
    int32_t root = p_alt(&ps, false);
    if (root >= 0 && ps.i < ps.n)
        root = p_fail(&ps, RC_FORMAT, "unmatched )");
    if (root < 0) {
        rc = ps.rc;
        goto out;
    }
    if (!gen(&ps, root) || emit(ps.re, OP_MATCH) < 0) {
        rc = core_err(err, RC_LIMIT, "regex: program too large (max %d instructions)",
                      RE_MAX_PROG);
        goto out;
    }
    *out = ps.re;
    ps.re = NULL;
out:
    core__tok_re_free(ps.re);
    free(ps.nodes);
    free(cps);
    return rc;
}

rc_t core__tok_re_literal(const char *s, size_t len, core__tok_re_t **out, core_err_t *err)
{
    uint32_t *cps = NULL;
    size_t n = 0;
    rc_t rc = re_decode_pattern(s, len, &cps, &n, err);
    core__tok_re_t *re = rc == RC_OK ? calloc(1, sizeof *re) : NULL;
    if (rc == RC_OK && !re)
        rc = core_err(err, RC_NOMEM, "regex: out of memory");
    for (size_t i = 0; rc == RC_OK && i <= n; i++) {
        int32_t k = emit(re, i < n ? OP_CHAR : OP_MATCH);
        if (k < 0)
            rc = core_err(err, RC_LIMIT, "split string too long");
        else if (i < n)
            re->prog[k].c = cps[i];
    }
    free(cps);
    if (rc != RC_OK) {
        core__tok_re_free(re);
        return rc;
    }
    *out = re;
    return RC_OK;
}

/* ---- matching ---- */
void core__tok_re_ctx_free(core__tok_re_ctx_t *c)
{
    free(c->stack);
    c->stack = NULL;
    c->n_stack = c->cap_stack = 0;
}

static bool is_word_at(const core__tok_re_text_t *t, size_t i)
{
    return i < t->n && (((1u << t->cats[i]) & WORD_MASK) != 0);
}

static bool char_eq(const re_inst_t *in, uint32_t cp)
{
    return cp == in->c || (in->icase && (cp | 32) == (in->c | 32));
}

/* Run the program from pc at sp. Returns 1 (match, *end set), 0 (no match), -1 (budget
 * spent), -2 (out of memory). Lookarounds recurse with the same stack above `base`. */
static int re_run(const core__tok_re_t *re, core__tok_re_ctx_t *c,
                  const core__tok_re_text_t *t, int32_t pc0, size_t sp0, size_t *end)
{
    size_t base = c->n_stack;
    int r = 0;
    if (!core__tok_grow(&c->stack, &c->cap_stack, base + 1, sizeof *c->stack))
        return -2;
    c->stack[c->n_stack++] = (struct core__tok_re_thread){pc0, sp0};
    while (c->n_stack > base && r == 0) {
        struct core__tok_re_thread th = c->stack[--c->n_stack];
        int32_t pc = th.pc;
        size_t sp = th.sp;
        for (bool alive = true; alive && r == 0;) {
            if (c->budget == 0) {
                r = -1;
                break;
            }
            c->budget--;
            const re_inst_t *in = &re->prog[pc];
            switch (in->op) {
            case OP_CHAR:
                alive = sp < t->n && char_eq(in, t->cps[sp]);
                pc++, sp++;
                break;
            case OP_ANY:
                alive = sp < t->n && t->cps[sp] != '\n';
                pc++, sp++;
                break;
            case OP_CLASS:
                alive = sp < t->n && cls_match(re, in->c, t->cps[sp], t->cats[sp]);
                pc++, sp++;
                break;
            case OP_SPLIT:
                if (!core__tok_grow(&c->stack, &c->cap_stack, c->n_stack + 1, sizeof *c->stack)) {
                    r = -2;
                    break;
                }
                c->stack[c->n_stack++] = (struct core__tok_re_thread){in->y, sp};
                pc = in->x;
                break;
            case OP_JMP: pc = in->x; break;
            case OP_MATCH:
                *end = sp;
                r = 1;
                break;
            case OP_LOOK: case OP_NLOOK: case OP_ATOMIC: {
                size_t e = sp;
                int s = re_run(re, c, t, pc + 1, sp, &e);
                if (s < 0) {
                    r = s;
                    break;
                }
                alive = in->op == OP_NLOOK ? s == 0 : s == 1;
                if (in->op == OP_ATOMIC)
                    sp = e;
                pc = in->x;
                break;
            }
            case OP_BOT: alive = sp == 0; pc++; break;
            case OP_EOT: alive = sp == t->n; pc++; break;
            default: {
                bool b = (sp > 0 && is_word_at(t, sp - 1)) != is_word_at(t, sp);
                alive = in->op == OP_WORDB ? b : !b;
                pc++;
                break;
            }
            }
        }
    }
    c->n_stack = base;
    return r;
}

rc_t core__tok_re_find(const core__tok_re_t *re, core__tok_re_ctx_t *c,
                       const core__tok_re_text_t *txt, size_t from, size_t *ms, size_t *me)
{
    for (size_t sp = from; sp < txt->n; sp++) {
        size_t end = sp;
        int r = re_run(re, c, txt, 0, sp, &end);
        if (r == -1)
            return RC_LIMIT;
        if (r == -2)
            return RC_NOMEM;
        if (r == 1 && end > sp) {
            *ms = sp;
            *me = end;
            return RC_OK;
        }
    }
    return RC_NOT_FOUND;
}
