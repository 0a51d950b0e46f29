/* forward_route.c - routed rows of the batched forward pass (ADAPTER-MATH 7.3).
 *
 * A routed item's rows get, at every targeted module, per-token weights lambda[t, e] from
 * its router (core/router.h): PHATGOOSE and Arrow from the module's own input rows, X-LoRA
 * from scalings computed once per step by a scaling pass (core/forward.c runs its layers).
 * The weights become a plan for that module - every distinct expert LoRA with the rows
 * (of all routed items of the step) that give it a nonzero weight, and those weights - and
 * core__fwd_plan_add applies it: one shrink and one expand per expert over its rows, the
 * rank block scaled per row by lambda * s_e. Experts that no token selects cost nothing,
 * so top-k routing reads k experts per token, not all of them.
 *
 * Threads: the engine thread (the plan's tasks run on the compute pool inside
 * core__fwd_plan_add). */
#include <stdlib.h>
#include <string.h>

#include "core/forward_int.h"

#define MAXE CORE_ROUTER_MAX_EXPERTS

static bool is_xlora(const core_fwd_item_t *it)
{
    return it->router && it->router->kind == CORE_ROUTER_XLORA;
}

/* Grow an array of elem-byte elements whose old contents do not matter. */
static rc_t grow_any(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return RC_OK;
    if (need > SIZE_MAX / elem)
        return RC_NOMEM;
    void *n = malloc(need * elem);
    if (!n)
        return RC_NOMEM;
    free(*p);
    *p = n;
    *cap = need;
    return RC_OK;
}

rc_t core__route_check(const core_config_t *c, const core_fwd_item_t *it, int i,
                       core_err_t *err)
{
    const core_router_t *r = it->router;
    if (it->aset)
        return core_err(err, RC_INVALID, "item %d: has both an adapter set and a router", i);
    if (r->n_experts < 1 || r->n_experts > MAXE)
        return core_err(err, RC_INVALID, "item %d: router has %d experts", i, r->n_experts);
    if (r->n_layers != c->n_layers || r->dim != c->dim)
        return core_err(err, RC_MISMATCH, "item %d: router was built for %d layers of width "
                        "%d, the model has %d of %d", i, r->n_layers, r->dim, c->n_layers,
                        c->dim);
    if (it->route_top_k < 0 || it->route_top_k > r->n_experts)
        return core_err(err, RC_INVALID, "item %d: top_k %d outside 0..%d", i,
                        it->route_top_k, r->n_experts);
    if (!(it->route_temperature >= 0.0f) || it->route_temperature > 1e30f)
        return core_err(err, RC_INVALID, "item %d: temperature must be finite and >= 0", i);
    return RC_OK;
}

size_t core__route_max_rank(const core_fwd_item_t *it)
{
    const core_router_t *r = it->router;
    size_t max = 0;
    for (int e = 0; e < r->n_experts; e++) {
        const core_lora_t *l = r->experts[e];
        for (int k = 0; k < l->n_layers * CORE_MOD__COUNT; k++)
            if (l->mods[k].A && (size_t)l->mods[k].r > max)
                max = (size_t)l->mods[k].r;
    }
    return max;
}

/* Sizes of the step's X-LoRA scratch: scalings, hidden rows, classifier scratch. */
static void xlora_sizes(const core_fwd_item_t *items, int n_items, size_t dim, size_t *xs,
                        size_t *xh, size_t *scr)
{
    *xs = *xh = *scr = 0;
    for (int i = 0; i < n_items; i++) {
        if (!is_xlora(&items[i]))
            continue;
        const core_router_t *r = items[i].router;
        size_t n = (size_t)items[i].n_tokens, s = core_xlora_scratch_floats(r, n);
        *xs += n * (size_t)r->xlora.n_slots * (size_t)r->n_experts;
        *xh += n * dim;
        *scr = s > *scr ? s : *scr;
    }
}

rc_t core__route_grow(core_fwd_t *f, const core_fwd_item_t *items, int n_items, size_t n_rows)
{
    size_t ni = (size_t)n_items, xs, xh, scr;
    rc_t rc;
    f->n_routed = f->n_xlora = 0;
    for (int i = 0; i < n_items; i++) {
        f->n_routed += items[i].router != NULL;
        f->n_xlora += is_xlora(&items[i]);
    }
    /* reserve_items lists every step's caches here, routed or not */
    size_t cap = f->cap_items;
    if ((rc = grow_any((void **)&f->sub, &cap, ni, sizeof *f->sub)))
        return rc;
    cap = f->cap_items;
    if ((rc = grow_any((void **)&f->xs_at, &cap, ni, sizeof *f->xs_at)))
        return rc;
    cap = 2 * f->cap_items;
    if ((rc = grow_any((void **)&f->rkv, &cap, 2 * ni, sizeof *f->rkv)))
        return rc;
    cap = 2 * f->cap_items;
    if ((rc = grow_any((void **)&f->rkv_n, &cap, 2 * ni, sizeof *f->rkv_n)))
        return rc;
    f->cap_items = ni > f->cap_items ? ni : f->cap_items;
    if (!f->n_routed)
        return RC_OK;
    size_t cap_rpw = f->cap_rprow;
    if ((rc = grow_any((void **)&f->lam, &f->cap_lam, n_rows * MAXE, sizeof *f->lam)) ||
        (rc = grow_any((void **)&f->rplora, &f->cap_rplora, ni * MAXE, sizeof *f->rplora)) ||
        (rc = grow_any((void **)&f->rpw, &cap_rpw, n_rows * MAXE, sizeof *f->rpw)) ||
        (rc = grow_any((void **)&f->rprow, &f->cap_rprow, n_rows * MAXE, sizeof *f->rprow)))
        return rc;
    xlora_sizes(items, n_items, (size_t)f->m->cfg.dim, &xs, &xh, &scr);
    if ((rc = grow_any((void **)&f->xs, &f->cap_xs, xs, sizeof *f->xs)) ||
        (rc = grow_any((void **)&f->xh, &f->cap_xh, xh, sizeof *f->xh)) ||
        (rc = grow_any((void **)&f->xscr, &f->cap_xscr, scr, sizeof *f->xscr)))
        return rc;
    return RC_OK;
}

/* ---- X-LoRA ------------------------------------------------------------------------ */

int core__xlora_sub_items(core_fwd_t *f, const core_fwd_item_t *items, int n_items)
{
    int n = 0;
    size_t at = 0;
    for (int i = 0; i < n_items; i++) {
        const core_fwd_item_t *it = &items[i];
        if (!is_xlora(it))
            continue;
        const core_router_t *r = it->router;
        /* scaling_pass_value 0 makes the first pass the base model exactly */
        f->sub[n++] = (core_fwd_item_t){
            .tokens = it->tokens, .n_tokens = it->n_tokens, .kv = it->kv_scaling,
            .router = r->xlora.scaling_pass_value != 0.0f ? r : NULL,
            .route_top_k = it->route_top_k, .route_temperature = it->route_temperature};
        f->xs_at[i] = at;
        at += (size_t)it->n_tokens * (size_t)r->xlora.n_slots * (size_t)r->n_experts;
    }
    return n;
}

void core__xlora_scalings(core_fwd_t *f, const core_fwd_item_t *items, int n_items)
{
    size_t row = 0, dim = (size_t)f->m->cfg.dim;
    for (int i = 0; i < n_items; i++) {
        const core_fwd_item_t *it = &items[i];
        if (!is_xlora(it))
            continue;
        core_route_params_t p = {it->route_top_k, it->route_temperature};
        core_xlora_scalings(it->router, &p, f->xh + row * dim, (size_t)it->n_tokens,
                            f->xs + f->xs_at[i], f->xscr);
        row += (size_t)it->n_tokens;
    }
}

/* The scaling pass's weights, the same for every token and slot: scaling_pass_value
 * through X-LoRA's top-k (ties: the lower index) and softmax over the kept nonzero
 * entries, as PEFT feeds its dummy scalings through get_maybe_topk_scalings. */
static void xlora_dummy(const core_router_t *r, const core_route_params_t *p, float *c)
{
    int E = r->n_experts, k = p->top_k > 0 ? p->top_k : r->top_k, nz = 0;
    for (int e = 0; e < E; e++) {
        c[e] = (k > 0 && e >= k) ? 0.0f : r->xlora.scaling_pass_value;
        nz += c[e] != 0.0f;
    }
    if (r->xlora.softmax_topk)
        for (int e = 0; e < E; e++)
            c[e] = c[e] != 0.0f ? 1.0f / (float)nz : 0.0f;
}

/* ---- the routed plan of one module --------------------------------------------------- */

/* lambda (n_tokens, n_experts) of item i at (layer, mod) into lam, all zeros when the
 * module is not routed for it; the sums for return_routing outside the scaling pass. */
static void item_weights(const core_fwd_t *f, const core_fwd_item_t *it, int i, int layer,
                         core_mod_t mod, const float *x, size_t n_in, float *lam)
{
    const core_router_t *r = it->router;
    size_t n = (size_t)it->n_tokens, E = (size_t)r->n_experts;
    core_route_params_t p = {it->route_top_k, it->route_temperature};
    memset(lam, 0, n * E * sizeof *lam);
    if (r->kind != CORE_ROUTER_XLORA) {
        if (!r->vec[layer * CORE_MOD__COUNT + mod])
            return;
        core_router_route(r, &p, layer, mod, x, n, n_in, lam);
    } else {
        int slot = core_router_slot(r, layer, mod);
        float g = r->xlora.global_scaling, c[MAXE];
        if (slot < 0)
            return;
        if (f->scaling_pass) {
            xlora_dummy(r, &p, c);
            for (size_t t = 0; t < n; t++)
                for (size_t e = 0; e < E; e++)
                    lam[t * E + e] = g * c[e];
            return;
        }
        const float *S = f->xs + f->xs_at[i] + (size_t)slot * E;
        for (size_t t = 0; t < n; t++)
            for (size_t e = 0; e < E; e++)
                lam[t * E + e] = g * S[t * (size_t)r->xlora.n_slots * E + e];
    }
    if (!it->route_sum)
        return;
    for (size_t t = 0; t < n; t++)
        for (size_t e = 0; e < E; e++)
            it->route_sum[(size_t)layer * E + e] += lam[t * E + e];
    if (it->route_n)
        it->route_n[layer] += (int)n;
}

/* Plan index of LoRA l in the module's routed plan, added with no rows on first use. */
static size_t rplan_index(core_fwd_t *f, const core_lora_t *l)
{
    size_t p = 0;
    while (p < f->n_rplora && f->rplora[p].lora != l)
        p++;
    if (p == f->n_rplora)
        f->rplora[f->n_rplora++] = (fwd_plora_t){.lora = l};
    return p;
}

/* Pass 1 (fill false) counts each expert LoRA's selected rows; pass 2 writes them (rows
 * ascend: items in order, tokens in order). An expert that does not target the module, or
 * that no token of an item selects, adds nothing. */
static void plan_pass(core_fwd_t *f, int layer, core_mod_t mod, bool fill)
{
    size_t row = 0;
    for (int i = 0; i < f->n_cur; row += (size_t)f->cur[i].n_tokens, i++) {
        const core_router_t *r = f->cur[i].router;
        if (!r)
            continue;
        size_t n = (size_t)f->cur[i].n_tokens, E = (size_t)r->n_experts;
        const float *lam = f->lam + row * MAXE;
        for (size_t e = 0; e < E; e++) {
            if (!core_lora_mod(r->experts[e], layer, mod)->A)
                continue;
            fwd_plora_t *pl = NULL;
            for (size_t t = 0; t < n; t++) {
                float w = lam[t * E + e];
                if (w == 0.0f)
                    continue;
                if (!pl)
                    pl = &f->rplora[rplan_index(f, r->experts[e])];
                if (fill)
                    f->rprow[pl->at + pl->n_rows] = row + t, f->rpw[pl->at + pl->n_rows] = w;
                pl->n_rows++;
            }
        }
    }
}

static void route_plan(core_fwd_t *f, int layer, core_mod_t mod)
{
    f->n_rplora = 0;
    plan_pass(f, layer, mod, false);
    for (size_t p = 0, at = 0; p < f->n_rplora; p++) {
        f->rplora[p].at = at;
        at += f->rplora[p].n_rows;
        f->rplora[p].n_rows = 0;
    }
    plan_pass(f, layer, mod, true);
    for (size_t p = 0; p < f->n_rplora; p++) {
        fwd_plora_t *pl = &f->rplora[p];
        pl->contiguous = pl->n_rows &&
                         f->rprow[pl->at + pl->n_rows - 1] - f->rprow[pl->at] == pl->n_rows - 1;
    }
}

void core__route_add(core_fwd_t *f, int layer, core_mod_t mod, const float *x, float *y,
                     const core_linear_t *L)
{
    size_t n_in = (size_t)L->n_in, row = 0;
    bool any = false;
    for (int i = 0; i < f->n_cur; row += (size_t)f->cur[i].n_tokens, i++) {
        if (!f->cur[i].router)
            continue;
        item_weights(f, &f->cur[i], i, layer, mod, x + row * n_in, n_in, f->lam + row * MAXE);
        any = true;
    }
    if (!any)
        return;
    route_plan(f, layer, mod);
    fwd_plan_t plan = {f->rplora, f->n_rplora, f->rprow, f->rpw};
    core__fwd_plan_add(f, &plan, layer, mod, x, y, L);
}
