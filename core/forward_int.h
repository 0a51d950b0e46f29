/* forward_int.h - what core/forward.c (the batched pass, KV cache, LoRA plan) and
 * core/forward_route.c (per-token routing: PHATGOOSE, Arrow, X-LoRA) share. Internal to
 * core/.
 *
 * Ownership: everything here is scratch owned by one core_fwd_t; plans point into it and
 * live for one step. */
#ifndef ADAPTERD_CORE_FORWARD_INT_H
#define ADAPTERD_CORE_FORWARD_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/lora.h"
#include "core/model.h"
#include "core/router.h"

/* ---- the paged KV cache (core/kv.c) ---- */

struct core_kv_pool {
    int n_layers, kv_dim, max_pos, block_tokens;
    size_t block_floats; /* n_layers * 2 * block_tokens * kv_dim */
    int n_blocks, n_free;
    int *free_ids; /* stack: free_ids[0 .. n_free) are free, the top is popped first */
    float *arena;  /* (n_blocks, block_floats) */
    size_t arena_bytes;
};

struct core_kv {
    core_kv_pool_t *pool;
    int len;      /* positions filled */
    int n_blocks; /* blocks held: table[0 .. n_blocks), may cover more than len */
    int cap;      /* entries of table */
    int *table;
    /* check_batch's duplicate detection: the step (of which scratch) last claiming it */
    const void *claimed_by;
    uint64_t claimed_step;
};


static inline float *kv_block(const core_kv_pool_t *p, int b, int l)
{
    return p->arena + (size_t)b * p->block_floats +
           (size_t)l * 2 * (size_t)p->block_tokens * (size_t)p->kv_dim;
}

/* The KV blocks of caches kv[0 .. n), each growing by nt[i] tokens, all or none: RC_BUSY
 * (nothing taken) when some pool has fewer free blocks than its caches need together. */
rc_t core__kv_reserve_all(core_kv_t **kv, const int *nt, int n, core_err_t *err);

/* ---- the batched pass ---- */

/* One distinct LoRA of a plan and the rows that apply it, in row order, each with its
 * weight: for adapter sets the sum of the weights its item's set gives this LoRA (one plan
 * per step); for routed rows the router's weight of this expert at this module (one plan
 * per module). */
typedef struct {
    const core_lora_t *lora;
    size_t at, n_rows; /* rows prow[at .. at + n_rows), weights pw[at .. at + n_rows) */
    bool contiguous;   /* rows prow[at], prow[at] + 1, ...: read in place, no gather */
} fwd_plora_t;

/* A plan: LoRAs p[0 .. n) over the row and weight arrays they index. */
typedef struct {
    const fwd_plora_t *p;
    size_t n;
    const size_t *prow;
    const float *pw;
} fwd_plan_t;

/* One LoRA's share of one module in a wave of a plan. */
typedef struct {
    const fwd_plora_t *pl;
    const core_lora_mod_t *lm;
    float *xg;  /* (n_rows, n_in) its rows of x gathered (unused when contiguous) */
    float *h;   /* (n_rows, r) shrink output */
    float *out; /* (n_rows, n_out) its own slab, or NULL: expand straight into y */
} fwd_ltask_t;

struct core_fwd {
    const core_model_t *m;
    uint64_t n_steps; /* core_forward calls so far: stamps kv caches in check_batch */
    double *inv_freq; /* (head_dim/2) RoPE frequencies, scaling applied */
    size_t cap_rows;  /* rows of the per-token buffers below */
    float *block;     /* one allocation carved into: */
    float *x, *xn;    /* (rows, dim) residual stream, normalized / projection output */
    float *q, *att;   /* (rows, n_heads*head_dim) */
    float *k, *v;     /* (rows, n_kv_heads*head_dim) */
    float *gate, *up; /* (rows, hidden_dim) */
    float *cos, *sin; /* (rows, head_dim/2) */
    size_t cap_xl, cap_lg; /* floats */
    float *xl;     /* (out rows, dim) hidden states whose logits are wanted */
    float *logits; /* (out rows, n_vocab) when several items share the lm_head GEMM */
    /* the step's LoRA plan (build_plan) and one wave's buffers */
    size_t cap_plora, n_plora;
    fwd_plora_t *plora;  /* distinct LoRAs in order of first use */
    fwd_ltask_t *ltasks; /* (cap_plora) one wave's tasks */
    int *pidx;           /* (cap_plora) plan index of each (item, term), build_plan only */
    size_t cap_prow;
    size_t *prow; /* every LoRA's rows, concatenated */
    float *pw;    /* their weights */
    size_t cap_wave;                /* LoRA rows one wave holds */
    size_t cap_xg, cap_slab, cap_h; /* floats */
    float *xg, *slab, *h; /* (cap_wave, widest module) x2, (cap_wave, widest rank) */

    /* routing (core/forward_route.c); the pass in progress: */
    const core_fwd_item_t *cur;  /* its items */
    int n_cur;
    bool scaling_pass;           /* the X-LoRA scaling pass (experts at scaling_pass_value) */
    int n_routed, n_xlora;       /* routed / X-LoRA items of the step */
    size_t cap_lam;
    float *lam;                  /* (rows, CORE_ROUTER_MAX_EXPERTS) one module's weights */
    size_t cap_rplora, n_rplora;
    fwd_plora_t *rplora;         /* one module's routed plan */
    size_t cap_rprow;
    size_t *rprow;               /* (rows * CORE_ROUTER_MAX_EXPERTS) its rows */
    float *rpw;                  /* and weights */
    size_t cap_xs, cap_xh, cap_xscr;
    float *xs;                   /* X-LoRA scalings of every X-LoRA row, item after item */
    size_t *xs_at;               /* (cap_items) where item i's scalings start in xs */
    float *xh;                   /* (rows, dim) final hidden states of the scaling pass */
    float *xscr;                 /* core_xlora_scalings scratch */
    size_t cap_items;
    core_fwd_item_t *sub;        /* (cap_items) the scaling pass's items */
    core_kv_t **rkv;             /* (2 * cap_items) caches a step reserves blocks for */
    int *rkv_n;                  /* and their new tokens */
};

/* y[rows of l] += (w_row s_l) (x[rows of l] A_l^T) B_l^T for every LoRA l of plan that
 * targets (layer, mod), in waves that fit the scratch (core/forward.c). */
void core__fwd_plan_add(const core_fwd_t *f, const fwd_plan_t *plan, int layer, core_mod_t mod,
                        const float *x, float *y, const core_linear_t *L);

/* Scratch for the routed rows of a step of n_rows rows and n_items items. */
rc_t core__route_grow(core_fwd_t *f, const core_fwd_item_t *items, int n_items,
                      size_t n_rows);
/* The routed delta of (layer, mod) for the pass's routed items (none: returns at once). */
void core__route_add(core_fwd_t *f, int layer, core_mod_t mod, const float *x, float *y,
                     const core_linear_t *L);
/* Checks of a routed item (RC_INVALID/RC_MISMATCH naming item i). */
rc_t core__route_check(const core_config_t *c, const core_fwd_item_t *it, int i,
                       core_err_t *err);
/* The widest expert rank of a routed item's router. */
size_t core__route_max_rank(const core_fwd_item_t *it);

/* The X-LoRA scaling pass (core/forward.c runs the layers, forward_route.c the rest):
 * builds f->sub from the X-LoRA items (OUT: their count), and after the pass turns the
 * final hidden states f->xh into the scalings f->xs. */
int core__xlora_sub_items(core_fwd_t *f, const core_fwd_item_t *items, int n_items);
void core__xlora_scalings(core_fwd_t *f, const core_fwd_item_t *items, int n_items);

#endif
