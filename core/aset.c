/* aset.c - adapter sets (what one sequence applies) and PEFT's "linear" mix of LoRAs.
 * Contract in core/lora.h; core/lora.c is the loader.
 *
 * A set only holds references to immutable LoRAs and their weights; the batched forward
 * pass (core/forward.c) reads the terms to plan each step. The linear mix builds a new
 * LoRA in the loader's layout (core__lora_alloc), so core_lora_release frees it like a
 * loaded one.
 *
 * Threads: sets are immutable after core_aset_new; refcounts are atomic. */
#include "core/lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* core/lora.c: a LoRA of n_layers with zeroed mods and a zeroed arena of n_floats floats
 * (*arena) for the caller to carve into A and B; refcount 1. NULL when out of memory. */
core_lora_t *core__lora_alloc(int n_layers, size_t n_floats, float **arena);

/* ---- adapter sets ---------------------------------------------------------------- */

/* 1..CORE_ASET_MAX terms, each a LoRA with a finite weight, all of one layer count. */
static rc_t terms_check(const core_lora_term_t *terms, int n, core_err_t *err)
{
    if (!terms || n < 1 || n > CORE_ASET_MAX)
        return core_err(err, RC_INVALID, "adapter set: %d terms, expected 1..%d", n,
                        CORE_ASET_MAX);
    for (int i = 0; i < n; i++) {
        const core_lora_t *l = terms[i].lora;
        if (!l)
            return core_err(err, RC_INVALID, "adapter set: term %d has no adapter", i);
        if (!isfinite(terms[i].weight))
            return core_err(err, RC_INVALID, "adapter set: term %d: weight is not finite", i);
        if (l->n_layers != terms[0].lora->n_layers)
            return core_err(err, RC_INVALID, "adapter set: term %d has %d layers, term 0 has %d",
                            i, l->n_layers, terms[0].lora->n_layers);
    }
    return RC_OK;
}

rc_t core_aset_new(const core_lora_term_t *terms, int n, core_aset_t **out, core_err_t *err)
{
    *out = NULL;
    rc_t rc = terms_check(terms, n, err);
    if (rc)
        return rc;
    core_aset_t *s = calloc(1, sizeof *s);
    if (!s)
        return core_err(err, RC_NOMEM, "adapter set: out of memory");
    s->n = n;
    for (int i = 0; i < n; i++) {
        s->terms[i] = terms[i];
        core_lora_retain(terms[i].lora);
        s->rank_sum += terms[i].lora->rank;
    }
    s->refcount = 1;
    *out = s;
    return RC_OK;
}

void core_aset_retain(core_aset_t *s)
{
    __atomic_add_fetch(&s->refcount, 1, __ATOMIC_RELAXED);
}

void core_aset_release(core_aset_t *s)
{
    if (!s || __atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (int i = 0; i < s->n; i++)
        core_lora_release(s->terms[i].lora);
    free(s);
}

bool core_aset_equal(const core_aset_t *a, const core_aset_t *b)
{
    if (a == b)
        return true;
    if (!a || !b || a->n != b->n)
        return false;
    for (int i = 0; i < a->n; i++)
        if (a->terms[i].lora != b->terms[i].lora || a->terms[i].weight != b->terms[i].weight)
            return false;
    return true;
}

/* ---- the "linear" mix ------------------------------------------------------------ */

static void mod_path(char *buf, size_t len, int layer, core_mod_t m)
{
    snprintf(buf, len, "model.layers.%d.%s.%s", layer, core_mod_parent(m), core_mod_name(m));
}

/* Rank and shape of slot k (layer * CORE_MOD__COUNT + module) in the mix: those of every
 * term targeting it, which must agree; r 0 when no term targets it. */
static rc_t mix_slot(const core_lora_term_t *terms, int n, int k, core_lora_mod_t *o,
                     core_err_t *err)
{
    char path[96];
    memset(o, 0, sizeof *o);
    mod_path(path, sizeof path, k / CORE_MOD__COUNT, (core_mod_t)(k % CORE_MOD__COUNT));
    for (int i = 0; i < n; i++) {
        const core_lora_mod_t *md = &terms[i].lora->mods[k];
        if (!md->A)
            continue;
        if (md->r < 1 || md->n_out < 1 || md->n_in < 1)
            return core_err(err, RC_INVALID, "linear mix: %s of term %d has no shape", path, i);
        if (!o->r) {
            o->r = md->r, o->n_out = md->n_out, o->n_in = md->n_in;
        } else if (md->r != o->r) {
            return core_err(err, RC_INVALID,
                            "linear mix needs equal ranks: %s has rank %d in term %d but %d "
                            "in an earlier term",
                            path, md->r, i, o->r);
        } else if (md->n_out != o->n_out || md->n_in != o->n_in) {
            return core_err(err, RC_INVALID, "linear mix: %s of term %d has another shape",
                            path, i);
        }
    }
    return RC_OK;
}

/* A = sum sign(w s) sqrt|w s| A_i and B = sum sqrt|w s| B_i into the zeroed slot o. */
static void mix_fill(const core_lora_term_t *terms, int n, int k, core_lora_mod_t *o)
{
    size_t na = (size_t)o->r * (size_t)o->n_in, nb = (size_t)o->n_out * (size_t)o->r;
    for (int i = 0; i < n; i++) {
        const core_lora_mod_t *md = &terms[i].lora->mods[k];
        if (!md->A)
            continue;
        double ws = (double)terms[i].weight * (double)md->scale;
        float cb = (float)sqrt(fabs(ws)), ca = ws < 0 ? -cb : cb;
        for (size_t j = 0; j < na; j++)
            o->A[j] += ca * md->A[j];
        for (size_t j = 0; j < nb; j++)
            o->B[j] += cb * md->B[j];
    }
}

rc_t core_lora_mix_linear(const core_lora_term_t *terms, int n, core_lora_t **out,
                          core_err_t *err)
{
    *out = NULL;
    rc_t rc = terms_check(terms, n, err);
    if (rc)
        return rc;
    int n_layers = terms[0].lora->n_layers, n_slots = n_layers * CORE_MOD__COUNT;
    size_t n_floats = 0;
    core_lora_mod_t shape;
    for (int k = 0; k < n_slots; k++) { /* validate and size before allocating */
        if ((rc = mix_slot(terms, n, k, &shape, err)))
            return rc;
        n_floats += (size_t)shape.r * ((size_t)shape.n_in + (size_t)shape.n_out);
    }
    float *at = NULL;
    core_lora_t *l = core__lora_alloc(n_layers, n_floats, &at);
    if (!l)
        return core_err(err, RC_NOMEM, "linear mix: out of memory for %zu weights", n_floats);
    for (int k = 0; k < n_slots; k++) {
        core_lora_mod_t *o = &l->mods[k];
        (void)mix_slot(terms, n, k, o, err); /* succeeded above */
        if (!o->r)
            continue;
        o->A = at, at += (size_t)o->r * (size_t)o->n_in;
        o->B = at, at += (size_t)o->n_out * (size_t)o->r;
        o->scale = 1.0f;
        mix_fill(terms, n, k, o);
        l->target_mask |= 1u << (k % CORE_MOD__COUNT);
        l->rank = o->r > l->rank ? o->r : l->rank;
    }
    l->alpha = (float)l->rank; /* alpha / r = 1: the weights live in A and B */
    l->n_bytes = n_floats * sizeof(float);
    *out = l;
    return RC_OK;
}
