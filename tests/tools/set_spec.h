/* set_spec.h - the "I:W,J:W,..." adapter-set syntax shared by the test tools logits_dump
 * and busy_batch (header-only, test code): LoRA index I (into the tool's --lora list)
 * with weight W, for core_aset_new; `linear` marks a core_lora_mix_linear set. */
#ifndef TESTS_TOOLS_SET_SPEC_H
#define TESTS_TOOLS_SET_SPEC_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

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

#endif
