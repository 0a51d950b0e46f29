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

static inline const core_lora_mod_t *core_lora_mod(const core_lora_t *l, int layer, core_mod_t m)
{
    return &l->mods[layer * CORE_MOD__COUNT + m];
}

void core_lora_retain(core_lora_t *l);
void core_lora_release(core_lora_t *l);

/* "q_proj,v_proj" style list of targeted modules into buf. */
void core_lora_targets_str(const core_lora_t *l, char *buf, size_t len);

#endif
