/* set_spec.h - the "I:W,J:W,..." adapter-set syntax shared by the test tools logits_dump
 * and busy_batch (header-only, test code): LoRA index I (into the tool's --lora list)
 * with weight W, for core_aset_new; `linear` marks a core_lora_mix_linear set. Also the
 * sequence syntax "T,T,...@K" (token ids, optional set index). */
#ifndef TESTS_TOOLS_SET_SPEC_H
#define TESTS_TOOLS_SET_SPEC_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/lora.h"

#define MAX_LORAS 16

typedef struct {
    bool linear;
    int n;
    int lora[CORE_ASET_MAX];
    float weight[CORE_ASET_MAX];
} set_spec_t;

/* "0:0.7,2:-1.3" -> terms. Indices are checked against MAX_LORAS here and against the
 * --lora count by the caller. 0 or -1 (message on stderr). */
static inline int spec_parse(const char *text, bool linear, set_spec_t *sp)
{
    const char *p = text;
    sp->linear = linear;
    sp->n = 0;
    while (*p) {
        char *end = NULL;
        long i = strtol(p, &end, 10);
        if (end == p || *end != ':' || i < 0 || i >= MAX_LORAS || sp->n >= CORE_ASET_MAX)
            goto bad;
        p = end + 1;
        float w = strtof(p, &end);
        if (end == p || (*end && *end != ','))
            goto bad;
        sp->lora[sp->n] = (int)i;
        sp->weight[sp->n++] = w;
        p = *end ? end + 1 : end;
    }
    if (sp->n > 0)
        return 0;
bad:
    fprintf(stderr, "bad set spec '%s' (want I:W,J:W,...)\n", text);
    return -1;
}

/* "12,7,99@2" -> malloc'd token ids (caller frees *tokens) and set index (-1 without
 * "@K"; K < max_sets). 0 or -1 (message on stderr). */
static inline int seq_spec_parse(const char *text, int max_sets, int32_t **tokens,
                                 int *n_tokens, int *set_index)
{
    size_t cap = strlen(text) / 2 + 1;
    *tokens = calloc(cap, sizeof **tokens);
    *n_tokens = 0;
    *set_index = -1;
    if (!*tokens)
        return -1;
    const char *p = text;
    while (*p && *p != '@') {
        char *end = NULL;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < INT32_MIN || v > INT32_MAX || (size_t)*n_tokens >= cap)
            goto bad;
        (*tokens)[(*n_tokens)++] = (int32_t)v;
        p = *end == ',' ? end + 1 : end;
    }
    if (*p == '@') {
        char *end = NULL;
        long k = strtol(p + 1, &end, 10);
        if (end == p + 1 || *end || k < 0 || k >= max_sets)
            goto bad;
        *set_index = (int)k;
    }
    if (*n_tokens > 0)
        return 0;
bad:
    fprintf(stderr, "bad sequence '%s' (want T,T,...[@SET])\n", text);
    return -1;
}

#endif
