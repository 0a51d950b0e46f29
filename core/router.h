/* router.h - learned routing over a set of LoRA experts (ADAPTER-MATH 2, 3.1, 3.3, 7.3).
 *
 * A router decides, per token and per targeted module, how much each of its experts (PEFT
 * LoRAs loaded by core/lora.h) contributes:
 *     delta_y[t] = sum_e  lambda[t, e] * s_e * (x_t A_e^T) B_e^T
 * The batched forward pass (core/forward.c) applies that with one shrink and one expand per
 * expert over the rows that select it (rows whose lambda is 0 for an expert skip it).
 *
 * Kinds:
 *  - PHATGOOSE (3.1): a gate vector g per (module, expert). Per token, over the experts that
 *    target the module: score_e = LN(x) . LN(g_e) / sqrt(d_in) / temperature (LN: no-affine
 *    LayerNorm, eps 1e-5, biased variance), keep the top_k scores (default 2), lambda =
 *    softmax over the kept, 0 elsewhere.
 *  - ARROW (3.3): no training data; the prototype v of (module, expert) is the top right
 *    singular vector of B_e A_e, computed at construction (sign-agnostic). score_e =
 *    |x . v_e| (x not normalised), keep top_k (default 3), lambda = softmax(kept / T).
 *  - XLORA (2): a classifier over the final hidden state (after the final RMSNorm) of a
 *    scaling pass (every expert applied at scaling_pass_value: the base model when 0)
 *    gives S (n_slots, n_experts) per token; slot = the X-LoRA layer number of a module
 *    (2.4: modules targeted by at least one expert, layer by layer in q,k,v,o,gate,up,down
 *    order). Per slot: optional top_k (others 0, no renormalisation), optional softmax over
 *    the nonzero entries (enable_softmax_topk); lambda = global_scaling_weight * S[slot].
 *
 * Ties in top-k go to the lower expert index (torch.topk leaves the order unspecified).
 * A module no expert targets is not routed. An expert that does not target a module is no
 * candidate there (PHATGOOSE, ARROW) or contributes nothing there (XLORA: its slot index
 * still counts, as in PEFT).
 *
 * On-disk formats (core_router_load_dir; reasons as in core/rc.h CORE_REASON_MAP):
 *  - XLORA, PEFT: DIR/adapter_config.json with peft_type "XLORA" (hidden_size, adapters
 *    {name: path} whose order is the expert order, enable_softmax, enable_softmax_topk,
 *    softmax_temperature, layerwise_scalings, top_k_lora, xlora_depth, scaling_pass_value,
 *    global_scaling_weight) and DIR/adapter_model.safetensors holding only keys ending in
 *    "internal_xlora_classifier.layers.<k>.weight|bias".
 *  - XLORA, original repo: DIR/xlora_config.json (same fields, adapters as a list or map,
 *    enable_relu_and_dropout, use_bias) and DIR/xlora_classifier.safetensors with
 *    "inner.<k>.weight|bias" and "last.weight|bias".
 *  - PHATGOOSE / ARROW (ours; ADAPTER-MATH 3.2 is unpinned): DIR/router_config.json
 *    {"router_type": "phatgoose"|"arrow", "experts": [names], "top_k": k, "temperature": t}
 *    and, for PHATGOOSE, DIR/router_gates.safetensors with one tensor per targeted module,
 *    "[base_model.model.]model.layers.<i>.<self_attn|mlp>.<m>.phatgoose_gate" of shape
 *    (n_experts, d_in), rows in expert order.
 *  Experts are the PEFT LoRA folders DIR/<name>/ in config order (names are checked like
 *  adapter names: no '/', no "..", no leading '.'). A broken expert folder refuses the
 *  router with the expert's name and the loader's reason.
 *
 * Threads: immutable after construction; share across threads; refcounted (atomic).
 * Ownership: constructors return one reference; each router retains its experts. */
#ifndef CORE_ROUTER_H
#define CORE_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/lora.h"
#include "core/model.h"
#include "core/rc.h"

#define CORE_ROUTER_MAX_EXPERTS 32
#define CORE_ROUTER_MAX_NAME 128

typedef enum { CORE_ROUTER_XLORA, CORE_ROUTER_PHATGOOSE, CORE_ROUTER_ARROW } core_router_kind_t;

/* "xlora", "phatgoose", "arrow". */
const char *core_router_kind_name(core_router_kind_t k);

/* One linear layer of the X-LoRA classifier: y = x W^T + b. */
typedef struct {
    int n_in, n_out;
    float *W; /* (n_out, n_in) */
    float *b; /* (n_out) or NULL (use_bias false) */
} core_xlora_lin_t;

typedef struct {
    int n_lin;              /* 1..8 linear layers; ReLU between consecutive ones if relu */
    core_xlora_lin_t *lin;
    bool relu;
    bool layerwise;         /* classifier output n_slots * n_experts, else n_experts */
    bool softmax;           /* enable_softmax (over experts, with temperature) */
    bool softmax_topk;      /* enable_softmax_topk: softmax over the kept nonzero entries */
    float scaling_pass_value; /* lambda of every expert in the scaling pass */
    float global_scaling;   /* global_scaling_weight g */
    int n_slots;            /* X-LoRA layer numbers (2.4) */
    int *slot_of;           /* (n_layers * CORE_MOD__COUNT) slot of each module, or -1 */
} core_xlora_t;

typedef struct core_router {
    core_router_kind_t kind;
    int n_experts;                                 /* 1..CORE_ROUTER_MAX_EXPERTS */
    core_lora_t *experts[CORE_ROUTER_MAX_EXPERTS]; /* retained, in expert order */
    char names[CORE_ROUTER_MAX_EXPERTS][CORE_ROUTER_MAX_NAME]; /* expert names */
    int top_k;         /* default per kind: phatgoose 2, arrow 3, xlora 0 (= no top-k) */
    float temperature; /* default 1 (xlora: softmax_temperature) */
    int n_layers, dim; /* of the base */
    /* PHATGOOSE and ARROW, per module slot k = layer * CORE_MOD__COUNT + m: */
    float **vec;       /* vec[k]: (n_experts, n_in of module k) rows: LN(g_e)/sqrt(n_in)
                        * (phatgoose) or unit prototypes v_e (arrow); NULL when no expert
                        * targets module k. Rows of non-candidates are zero. */
    uint32_t *cand;    /* cand[k]: bit e set when expert e targets module k */
    core_xlora_t xlora; /* XLORA only */
    size_t n_bytes;     /* bytes the router holds besides its experts */
    int refcount;       /* atomic */
} core_router_t;

/* Per-request overrides: top_k 0 and temperature 0 mean the router's own. */
typedef struct {
    int top_k;
    float temperature;
} core_route_params_t;

/* ---- construction ------------------------------------------------------------------ */

/* The expert names of a router config, in expert order, and its kind, without loading
 * anything: config_json is adapter_config.json (peft_type XLORA), xlora_config.json or
 * router_config.json text. OUT: names[0 .. *n). RC_FORMAT/RC_INVALID/RC_UNSUPPORTED with a
 * reason (invalid_config, missing_field, unknown_peft_type, ...) otherwise. */
rc_t core_router_cfg_experts(const char *config_json, core_router_kind_t *kind,
                             char names[][CORE_ROUTER_MAX_NAME], int *n, core_err_t *err);

/* A router from its parts. config_json as above; st: the classifier (XLORA) or the gates
 * (PHATGOOSE), NULL for ARROW (prototypes computed) or its saved prototypes
 * (core_router_arrow_save); experts[0 .. n) in config order (each retained on success),
 * all loaded for base. Checks: n matches the config, hidden_size and the classifier's
 * shapes (input dim, widths chaining, output n_experts or n_slots * n_experts), every
 * classifier/gate key bound exactly once (unbound_tensor, duplicate_binding, missing ->
 * missing_field), gate shapes (n_experts, n_in), finite values (non_finite), top_k in
 * 0..n_experts, temperature finite > 0. OUT: *out with refcount 1. */
rc_t core_router_from_parts(const char *config_json, const struct core_st *st,
                            core_lora_t *const *experts, int n, const core_config_t *base,
                            core_router_t **out, core_err_t *err);

/* Loads DIR as described in the header comment (config, classifier or gates, the expert
 * sub-folders via core_lora_load with lp, NULL for defaults). */
rc_t core_router_load_dir(const char *dir, const core_config_t *base,
                          const core_lora_params_t *lp, core_router_t **out, core_err_t *err);

/* True when DIR holds a router config (xlora_config.json, router_config.json, or an
 * adapter_config.json whose peft_type is XLORA): --adapters-dir and import use it. */
bool core_router_dir_is_router(const char *dir);

/* ARROW: the prototypes as a safetensors image, one F32 tensor per routed module,
 * "model.layers.<i>.<self_attn|mlp>.<m>.arrow_prototype" of shape (n_experts, n_in) (rows
 * of non-candidates zero), which core_router_from_parts accepts as st for ARROW: then the
 * prototypes are read (shapes checked, each candidate row renormalised to unit length),
 * not recomputed, so a store computes them once at registration. OUT: *buf malloc'd. */
rc_t core_router_arrow_save(const core_router_t *r, uint8_t **buf, size_t *len,
                            core_err_t *err);

void core_router_retain(core_router_t *r);
void core_router_release(core_router_t *r);

/* ---- routing ------------------------------------------------------------------------ */

/* PHATGOOSE / ARROW: lambda (n_rows, n_experts) for module m of layer from the module's
 * input rows x (n_rows, n_in). Rows sum to 1 over the kept experts; every other entry is
 * exactly 0. A module no expert targets gives all zeros. Allocation-free. */
void core_router_route(const core_router_t *r, const core_route_params_t *p, int layer,
                       core_mod_t m, const float *x, size_t n_rows, size_t n_in, float *lam);

/* XLORA: scalings S (n_rows, n_slots, n_experts) from h (n_rows, dim), the final-norm
 * hidden states of the scaling pass: classifier, softmax with temperature (if enabled),
 * broadcast to every slot unless layerwise, then per slot top-k and softmax over the kept
 * nonzero entries (if enabled). g is NOT applied (the forward pass multiplies by it).
 * scratch: at least core_xlora_scratch_floats(r, n_rows) floats. */
size_t core_xlora_scratch_floats(const core_router_t *r, size_t n_rows);
void core_xlora_scalings(const core_router_t *r, const core_route_params_t *p, const float *h,
                         size_t n_rows, float *S, float *scratch);

/* The X-LoRA slot of module m of layer, or -1 (not an X-LoRA module or not XLORA). */
static inline int core_router_slot(const core_router_t *r, int layer, core_mod_t m)
{
    if (r->kind != CORE_ROUTER_XLORA)
        return -1;
    return r->xlora.slot_of[layer * CORE_MOD__COUNT + m];
}

#endif
