/* lora.h - PEFT LoRA adapters in engine layout.
 *
 * core_lora_load reads DIR/adapter_config.json and DIR/adapter_model.safetensors (a
 * folder written by PEFT's save_pretrained) and validates them against a base config:
 * peft_type LORA; r, lora_alpha, use_rslora, rank_pattern/alpha_pattern; target_modules
 * (list or regex) and layers_to_transform only cross-check the keys; fan_in_fan_out=true
 * is refused for Llama linears with a clear message (PEFT would silently override it, we
 * make the author fix the config); use_dora, lora_bias, modules_to_save, embedding LoRA,
 * non-LoRA peft types: RC_UNSUPPORTED naming the field or key. Keys are
 * "base_model.model.model.layers.{i}.{self_attn|mlp}.{m}.lora_{A|B}.weight" (the
 * "base_model.model." prefix optional); every key must bind to exactly one real module,
 * A and B must come in pairs with A: (r, in), B: (out, r) matching the base and the
 * configured rank. Errors name the offending key.
 *
 * Threads: immutable after load; share across threads; refcounted (atomic).
 * Ownership: the creator holds one reference; core_lora_release frees at zero. */
#ifndef CORE_LORA_H
#define CORE_LORA_H

#include <stdbool.h>

#include "core/model.h"
#include "core/rc.h"

typedef struct {
    float *A;    /* (r, n_in)  or NULL when this module is not targeted */
    float *B;    /* (n_out, r) */
    int r;
    float scale; /* alpha / r, or alpha / sqrt(r) with rsLoRA */
    int n_out, n_in; /* the base module's shape when targeted (core_lora_mix_linear needs it) */
} core_lora_mod_t;

typedef struct core_lora {
    int n_layers;
    core_lora_mod_t *mods; /* n_layers * CORE_MOD__COUNT, index layer*CORE_MOD__COUNT + m */
    int rank;              /* the config's r */
    float alpha;           /* the config's lora_alpha */
    bool rslora;
    unsigned target_mask;  /* bit m set when module m is targeted in some layer */
    size_t n_bytes;        /* bytes of A and B held */
    int refcount;          /* atomic; see retain/release */
} core_lora_t;

rc_t core_lora_load(const char *dir, const core_config_t *base, core_lora_t **out,
                    core_err_t *err);
/* Same, from already-read parts (for tests and uploads). st is borrowed. */
struct core_st;
rc_t core_lora_from_parts(const char *config_json, const struct core_st *st,
                          const core_config_t *base, core_lora_t **out, core_err_t *err);

/* Every refusal's message starts with a reason of CORE_REASON_MAP (core/rc.h):
 * invalid_config, missing_field, invalid_rank (r outside 1..512), invalid_alpha,
 * unsupported_feature, unknown_peft_type, base_model_mismatch, unknown_module,
 * unbound_tensor, layer_out_of_range, duplicate_binding, missing_pair, shape_mismatch,
 * bad_dtype, non_finite, no_tensors, too_many_tensors. */
typedef struct {
    /* The served base's name. When set, a config's base_model_name_or_path must name it
     * (last path components, case-insensitively) or the adapter is refused with
     * base_model_mismatch; NULL or "" (the default) leaves the field informational, as
     * vLLM and LoRAX do: shapes decide. */
    const char *base_name;
} core_lora_params_t;

core_lora_params_t core_lora_default_params(void);
/* core_lora_load held to p (NULL: the defaults). */
rc_t core_lora_load_ex(const char *dir, const core_config_t *base, const core_lora_params_t *p,
                       core_lora_t **out, core_err_t *err);
/* core_lora_from_parts held to p (NULL: the defaults). */
rc_t core_lora_from_parts_ex(const char *config_json, const struct core_st *st,
                             const core_config_t *base, const core_lora_params_t *p,
                             core_lora_t **out, core_err_t *err);

/* The reader caps for an adapter of this base: a 16 MiB header and no more tensors than
 * the base has LoRA weights (2 x layers x modules), so header bloat is refused before the
 * tensor table is built (RELIABILITY F8). */
#define CORE_LORA_MAX_HEADER (16u << 20)
#include "core/safetensors.h"
core_st_params_t core_lora_st_params(const core_config_t *base);

static inline const core_lora_mod_t *core_lora_mod(const core_lora_t *l, int layer, core_mod_t m)
{
    return &l->mods[layer * CORE_MOD__COUNT + m];
}

void core_lora_retain(core_lora_t *l);
void core_lora_release(core_lora_t *l);

/* "q_proj,v_proj" style list of targeted modules into buf. */
void core_lora_targets_str(const core_lora_t *l, char *buf, size_t len);

/* ---- adapter sets: what one sequence applies ------------------------------------ *
 * A set of weighted LoRAs applied together to one sequence. Applying the set is exactly
 * one LoRA of rank sum(r_i) with the weights folded in (ADAPTER-MATH 7.2, PEFT
 * add_weighted_adapter combination_type="cat"):
 *     delta_y = sum_i  w_i * s_i * (x A_i^T) B_i^T
 * A single adapter at scale f is a set of one term with weight f. Weights may be negative
 * (negation) or zero. Sets are immutable and refcounted; each retains its LoRAs. */
#define CORE_ASET_MAX 8

typedef struct {
    core_lora_t *lora;
    float weight; /* finite */
} core_lora_term_t;

typedef struct core_aset {
    int n;                                 /* 1..CORE_ASET_MAX */
    core_lora_term_t terms[CORE_ASET_MAX]; /* each lora retained */
    int rank_sum;                          /* sum of the terms' config ranks */
    int refcount;                          /* atomic */
} core_aset_t;

/* OUT: *out with refcount 1. RC_INVALID for n outside 1..CORE_ASET_MAX, a NULL lora or a
 * non-finite weight, or LoRAs with different n_layers. */
rc_t core_aset_new(const core_lora_term_t *terms, int n, core_aset_t **out, core_err_t *err);
void core_aset_retain(core_aset_t *s);
void core_aset_release(core_aset_t *s);
/* Same LoRAs with the same weights in the same order (NULL equals only NULL). Items whose
 * sets are equal form one segment of the batched projection. */
bool core_aset_equal(const core_aset_t *a, const core_aset_t *b);

/* PEFT add_weighted_adapter combination_type="linear" (ADAPTER-MATH 7.2): a new LoRA with
 *     A = sum_i sign(w_i s_i) sqrt(|w_i s_i|) A_i,   B = sum_i sqrt(|w_i s_i|) B_i,   scale 1
 * per module; a module targeted by only some terms sums over those. This is NOT
 * sum_i w_i dW_i (it has cross terms); it is what PEFT computes. RC_INVALID unless every
 * term has the same rank in every module it targets. OUT: *out (refcount 1). */
rc_t core_lora_mix_linear(const core_lora_term_t *terms, int n, core_lora_t **out,
                          core_err_t *err);

#endif
