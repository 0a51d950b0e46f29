/* router_int.h - what core/router.c (configs, construction, folders, refcounts),
 * core/router_gate.c (PHATGOOSE gates, Arrow prototypes, per-token routing) and
 * core/router_xlora.c (X-LoRA fields, classifier, scalings) share. Internal to core/.
 *
 * Ownership: a router_cfg_t owns its json_t root (core__router_cfg_free drops it); the
 * builders fill a router that core_router_release frees, also after a failed build. */
#ifndef ADAPTERD_CORE_ROUTER_INT_H
#define ADAPTERD_CORE_ROUTER_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/router.h"
#include "core/safetensors.h"

#define ROUTER_MAX_CONFIG (1u << 20) /* a router config is a few hundred bytes */
#define ROUTER_MAX_LIN 8             /* classifier linear layers (core_xlora_t.n_lin) */
#define ROUTER_NAME_MAX 64           /* expert names become folder names */

/* A parsed router config: its kind and expert names in expert order. */
typedef struct {
    json_t *root;     /* owned */
    core_router_kind_t kind;
    bool peft;        /* XLORA: PEFT's adapter_config.json (else the original repo's) */
    const char *file; /* the file name messages use ("router_config.json", ...) */
    int n;
    char names[CORE_ROUTER_MAX_EXPERTS][CORE_ROUTER_MAX_NAME];
} router_cfg_t;

/* config_json to *c (kind and names checked). OUT: c, free with core__router_cfg_free. */
rc_t core__router_cfg_parse(const char *config_json, router_cfg_t *c, core_err_t *err);
void core__router_cfg_free(router_cfg_t *c);

/* t to f32 into dst (t->n_elems floats); bad_dtype or non_finite name the tensor. */
rc_t core__router_convert(const core_st_tensor_t *t, float *dst, core_err_t *err);

/* The k highest of score[e] over the experts whose bit is set in mask, ties to the lower
 * index: their indices into kept[] in selection order. Returns how many were kept
 * (min(k, candidates)). Allocation-free. */
int core__router_topk(const double *score, uint32_t mask, int n, int k, int *kept);

/* r has kind, experts, cand, n_layers and dim set. Each fills its part of r and adds what
 * it allocates to r->n_bytes; on failure core_router_release(r) frees the partial work. */
rc_t core__router_phatgoose_build(core_router_t *r, const core_st_t *st,
                                  const core_config_t *base, core_err_t *err);
rc_t core__router_arrow_build(core_router_t *r, const core_st_t *st, const core_config_t *base,
                              core_err_t *err);
rc_t core__router_xlora_build(core_router_t *r, const router_cfg_t *c, const core_st_t *st,
                              const core_config_t *base, core_err_t *err);
void core__router_xlora_free(core_xlora_t *x);

#endif
