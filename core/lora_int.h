/* lora_int.h - what core/lora.c (tensors, binding, the adapter) and core/lora_config.c
 * (adapter_config.json: scalars, patterns, selectors, targets) share. Internal to core/.
 *
 * Ownership: a lora_cfg_t borrows strings and lists from the json_t root it was parsed from,
 * so the root must outlive it; core__lora_cfg_free releases what it owns (regexes, arrays). */
#ifndef ADAPTERD_CORE_LORA_INT_H
#define ADAPTERD_CORE_LORA_INT_H

#include <jansson.h>
#include <regex.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/lora.h"

#define LORA_MAX_RANK 512 /* the largest max_lora_rank vLLM allows */
#define LORA_MAX_CONFIG (1u << 20) /* adapter_config.json is a few hundred bytes */
#define LORA_MAX_PATTERNS 4096
#define LORA_PREFIX "base_model.model."

/* A list of names or one regex, as target_modules / exclude_modules are written. */
typedef struct {
    enum { SEL_NONE, SEL_LIST, SEL_REGEX, SEL_ALL_LINEAR } kind;
    const json_t *list; /* borrowed from the config root */
    regex_t re;
} lora_sel_t;

/* rank_pattern / alpha_pattern: keys in JSON order, compiled as (.*\.)?(k)$. */
typedef struct {
    size_t n;
    const char **key; /* borrowed */
    double *value;
    regex_t *re;
} lora_pat_t;

typedef struct {
    int r;
    double alpha;
    bool rslora;
    lora_pat_t rank_pat, alpha_pat;
    lora_sel_t target, exclude;
    int *layers; /* layers_to_transform, n_layers_sel entries; NULL = all */
    size_t n_layers_sel;
    regex_t *layer_re; /* layers_pattern */
    size_t n_layer_re;
} lora_cfg_t;

/* The config's fields that change the math; refuses the ones we do not implement by name. */
rc_t core__lora_cfg_parse(const json_t *root, lora_cfg_t *c, core_err_t *err);
void core__lora_cfg_free(lora_cfg_t *c);
/* Would PEFT have adapted module PATH (in LAYER) under this config? */
bool core__lora_cfg_targets(const lora_cfg_t *c, const char *path, int layer);
/* Some module of BASE is targeted (PEFT refuses a config that matches nothing). */
rc_t core__lora_cfg_targets_exist(const lora_cfg_t *c, const core_config_t *base,
                                  core_err_t *err);
/* rank_pattern / alpha_pattern for module PATH, DEF when no key matches. */
double core__lora_pat_resolve(const lora_pat_t *p, const char *path, double def);
/* "model.layers.L.self_attn.q_proj" and the like, as PEFT names modules. */
void core__lora_mod_path(char *buf, size_t len, int layer, core_mod_t m);
/* base_model_name_or_path against the served base's name (SERVED may be NULL). */
rc_t core__lora_cfg_base_name(const json_t *root, const char *served, core_err_t *err);

#endif
