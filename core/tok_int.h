/* tok_int.h - private interfaces between the files of the tokenizer module
 * (tokenizer.c: loading; tok_encode.c; tok_decode.c; tok_bpe.c: hash maps and BPE merges;
 * tok_regex.c: the backtracking regex engine for Split pre-tokenizers).
 * Not part of the public contract (core/tokenizer.h); nothing outside core/tok*.c includes it.
 * A loaded core_tok_t is immutable; all per-call state lives in caller-owned scratch. */
#ifndef CORE_TOK_INT_H
#define CORE_TOK_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rc.h"
#include "core/tokenizer.h"

#define CORE__TOK_MAX_ID (1 << 24) /* ids at or above this are rejected at load */

/* Grow *p (element size elem) so that it holds at least need elements. False on overflow
 * or out of memory (then *p is unchanged). */
bool core__tok_grow(void *pp, size_t *cap, size_t need, size_t elem);

/* ---- regex (tok_regex.c) ---- */
typedef struct core__tok_re core__tok_re_t;

/* Subject of a match: code points plus their precomputed general categories. */
typedef struct {
    const uint32_t *cps;
    const uint8_t *cats;
    size_t n;
} core__tok_re_text_t;

/* Per-thread matcher state: backtrack stack and a step budget shared by all finds of one
 * encode, so a hostile pattern fails with RC_LIMIT instead of hanging. */
typedef struct {
    struct core__tok_re_thread *stack;
    size_t n_stack, cap_stack;
    uint64_t budget;
} core__tok_re_ctx_t;

/* Compile an HF/Oniguruma-style pattern (UTF-8). Unsupported syntax: RC_UNSUPPORTED with
 * the construct named in err. */
rc_t core__tok_re_compile(const char *pat, size_t len, core__tok_re_t **out, core_err_t *err);
/* A pattern that matches the literal string s (Split with {"String": ...}). */
rc_t core__tok_re_literal(const char *s, size_t len, core__tok_re_t **out, core_err_t *err);
void core__tok_re_free(core__tok_re_t *re);
void core__tok_re_ctx_free(core__tok_re_ctx_t *c);
/* Leftmost non-empty match starting at or after `from`. OUT: [*ms, *me).
 * RC_OK, RC_NOT_FOUND, RC_LIMIT (step budget spent), RC_NOMEM. */
rc_t core__tok_re_find(const core__tok_re_t *re, core__tok_re_ctx_t *c,
                       const core__tok_re_text_t *txt, size_t from, size_t *ms, size_t *me);

/* ---- hash maps (tok_bpe.c) ---- */
/* string -> id; the strings live in the owner's arena, found through off/len per id. */
typedef struct {
    uint64_t *slots; /* (hash32 << 32) | (id + 1); 0 = empty */
    size_t cap;      /* power of two */
    size_t n;
} core__tok_strmap_t;

typedef struct {
    const char *arena;
    const uint32_t *off; /* per id */
    const uint32_t *len; /* per id */
} core__tok_strings_t;

rc_t core__tok_strmap_init(core__tok_strmap_t *m, size_t n_expected);
void core__tok_strmap_free(core__tok_strmap_t *m);
/* Insert id (whose string is strs[id]); false if the string is already present. */
bool core__tok_strmap_put(core__tok_strmap_t *m, const core__tok_strings_t *strs, int32_t id);
int32_t core__tok_strmap_get(const core__tok_strmap_t *m, const core__tok_strings_t *strs,
                             const char *s, size_t len); /* -1 if absent */

/* (left id, right id) -> (rank, merged id) */
typedef struct {
    struct core__tok_pair_slot *slots;
    size_t cap;
    size_t n;
} core__tok_pairmap_t;

rc_t core__tok_pairmap_init(core__tok_pairmap_t *m, size_t n_expected);
void core__tok_pairmap_free(core__tok_pairmap_t *m);
/* Keeps the first (lowest) rank when a pair repeats, as HF does. */
void core__tok_pairmap_put(core__tok_pairmap_t *m, int32_t a, int32_t b, int32_t rank,
                           int32_t merged);
bool core__tok_pairmap_get(const core__tok_pairmap_t *m, int32_t a, int32_t b, int32_t *rank,
                           int32_t *merged);

/* ---- BPE model (tok_bpe.c) ---- */
typedef struct {
    struct core__tok_sym *syms;
    size_t cap_syms;
    struct core__tok_merge *heap;
    size_t cap_heap;
    char *mapped; /* byte-level mapped form of the word */
    size_t cap_mapped;
} core__tok_bpe_scratch_t;

/* Model tables the BPE step needs (a view into core_tok_t). */
typedef struct {
    core__tok_strmap_t vocab;
    core__tok_pairmap_t merges;
    core__tok_strings_t strs; /* model vocab strings by id */
    int32_t unk_id;           /* -1 if none */
    bool byte_fallback, fuse_unk, ignore_merges, byte_level;
    int32_t byte_ids[256]; /* <0xNN> token ids, -1 if absent */
    int32_t bl_ids[256];   /* byte-level: id of the mapped char of each byte, -1 if absent */
} core__tok_bpe_t;

/* Byte-level (GPT-2) byte -> code point mapping, and its inverse (-1 if not a mapped char). */
uint32_t core__tok_byte_to_cp(uint8_t b);
int core__tok_cp_to_byte(uint32_t cp);

/* Tokenize one pre-token (raw bytes; the byte-level mapping is applied here when
 * bpe->byte_level). Appends ids to *ids (growing it). */
rc_t core__tok_bpe_word(const core__tok_bpe_t *bpe, core__tok_bpe_scratch_t *sc,
                        const char *s, size_t len, int32_t **ids, size_t *n_ids,
                        size_t *cap_ids);
void core__tok_bpe_scratch_free(core__tok_bpe_scratch_t *sc);

/* ---- the loaded tokenizer (shared by tokenizer.c, tok_encode.c, tok_decode.c) ---- */
typedef struct {
    int32_t id;
    uint32_t off, len; /* content in the arena */
    bool special, lstrip, rstrip, single_word, normalized;
} core__tok_added_t;

enum { CORE__TOK_NORM_PREPEND, CORE__TOK_NORM_REPLACE, CORE__TOK_NORM_NFC };
typedef struct {
    int kind;
    uint32_t a_off, a_len; /* prepend text, or replace pattern */
    uint32_t b_off, b_len; /* replace content */
} core__tok_norm_t;

enum { CORE__TOK_PRE_SPLIT, CORE__TOK_PRE_BYTELEVEL, CORE__TOK_PRE_METASPACE };
enum { CORE__TOK_SPLIT_ISOLATED, CORE__TOK_SPLIT_REMOVED, CORE__TOK_SPLIT_MERGED_PREV,
       CORE__TOK_SPLIT_MERGED_NEXT, CORE__TOK_SPLIT_CONTIGUOUS };
enum { CORE__TOK_PREPEND_NEVER, CORE__TOK_PREPEND_FIRST, CORE__TOK_PREPEND_ALWAYS };
typedef struct {
    int kind;
    core__tok_re_t *re; /* Split pattern, or ByteLevel's GPT-2 pattern when use_regex */
    int behavior;
    bool invert;
    bool add_prefix_space;       /* ByteLevel */
    uint32_t repl_off, repl_len; /* Metaspace replacement */
    int prepend;                 /* Metaspace prepend scheme */
    bool split;                  /* Metaspace split */
} core__tok_pre_t;

typedef struct {
    uint32_t from_off, from_len, to_off, to_len;
} core__tok_repl_t;

struct core_tok {
    char *arena; /* every string of the tokenizer; referenced by offset */
    size_t arena_len, arena_cap;
    core__tok_bpe_t bpe;
    uint32_t *voff, *vlen; /* model vocab string of each id; vlen UINT32_MAX = none */
    int32_t n_model;       /* length of voff/vlen (max model id + 1) */
    int32_t n_vocab;       /* max id + 1 over vocab and added tokens */
    core__tok_added_t *added;
    size_t n_added;
    int32_t *added_of_id; /* n_vocab entries: index into added, or -1 */
    uint64_t added_first[4]; /* bitmap of first bytes of added tokens */
    core__tok_norm_t *norm;
    size_t n_norm;
    core__tok_pre_t *pre;
    size_t n_pre;
    int32_t *prefix, *suffix; /* post_processor ids around a single sequence */
    size_t n_prefix, n_suffix;
    int32_t bos, eos;
    /* decoder */
    bool dec_byte_level, dec_byte_fallback;
    core__tok_repl_t *dec_repl;
    size_t n_dec_repl;
    uint32_t strip_off, strip_len; /* the char Strip removes */
    size_t strip_start, strip_stop;
};

/* The string of an id for decoding (added token content wins), or NULL. */
const char *core__tok_piece(const core_tok_t *t, int32_t id, size_t *len);

#endif
