/* adapters.h - private to api/: which adapters a completion applies.
 *
 * Every wire form a client may send maps onto one core adapter set (core/lora.h):
 *   model         the base model's name (no set), or an adapter "NAME" / "NAME@VERSION"
 *   adapter       (adapterd extension) and adapter_id (LoRAX / TGI): one adapter name
 *   adapters      [{"name", "weight"}] (1..CORE_ASET_MAX), with "combination": "cat"
 *                 (default: exact sum of the weighted deltas, one set of n terms) or
 *                 "linear" (PEFT add_weighted_adapter linear: one mixed LoRA, weight 1)
 *   lora          [{"id": index or name, "scale"}] (llama.cpp server); scale 0 drops a term
 *   router        {"name", "top_k", "temperature"}: a stored router (core/router.h) instead
 *                 of a set; `model`, `adapter` and `adapter_id` may name a router too (then
 *                 at its own top_k and temperature). Routers are never composed.
 *   return_routing  true: the response carries the per-layer mean expert weights.
 * At most one of adapter / adapter_id / adapters / lora / router, and `model` names an
 * adapter or router only when none of them is present. An unknown adapter is 404 model_not_found naming it; a bad
 * shape is 400 naming the field by its path ("`adapters[1].weight` ..."). See docs/API.md.
 *
 * sel->group is a canonical text of the selection (the adapter spec string, or the terms of
 * a composition): the access log's adapter field. The engine's fair-share group is the
 * tenant (completions.c).
 *
 * Threads: the loop thread (adapters are resolved here; loads run on the store's executor;
 * a "linear" composition builds its mixed LoRA here once its terms are resident).
 * Ownership: api__select returns a new reference to the set (caller releases, after the
 * engine has retained what it keeps); the body is borrowed for the call. */
#ifndef API_ADAPTERS_H
#define API_ADAPTERS_H

#include "api/json_util.h"

#define API_GROUP_MAX 1024 /* fair-share key: 8 terms of "NAME@VERSION*weight" fit */
#define API_LORA_MAX 64    /* entries of a `lora` list (scale-0 entries included) */

/* The adapter selection of one request. */
typedef struct {
    core_aset_t *aset;         /* NULL for the base model, else a new reference */
    core_router_t *router;     /* or a router (new reference; aset NULL) */
    core_route_params_t route; /* its top_k / temperature overrides (0 = its own) */
    bool want_routing;         /* return_routing */
    char group[API_GROUP_MAX]; /* the selection as text, "" for the base model */
} api_sel_t;

/* The terms of a selection, gathered and resolved before the adapters are acquired. */
typedef struct {
    int64_t tenant; /* whose names these are */
    int n;
    store_want_t want[CORE_ASET_MAX];          /* spec = canonical NAME@VERSION */
    float w[CORE_ASET_MAX];
    char given[CORE_ASET_MAX][STORE_SPEC_MAX + 8]; /* the spec as the client wrote it */
    bool linear;
    bool routed;               /* want[0] names a router (n == 1) */
    core_route_params_t route;
    bool want_routing;
} api_terms_t;

/* The request fields this module reads, besides `model` (for the completion's field list). */
#define API_SEL_FIELDS \
    "adapter", "adapter_id", "adapters", "combination", "lora", "router", "return_routing"

/* Validate the selection fields of root and resolve every adapter they name (unknown ->
 * 404 naming the field). model is the request's `model` (already checked to be a string).
 * OUT: *t (t->n == 0: the base model). Nothing is acquired yet. */
bool api__sel_gather(api_t *a, int64_t tenant, const json_t *root, const char *model,
                     api_terms_t *t, api_fail_t *f);
/* Once every want holds its lora or router (store_acquire): build the set (or take the
 * router). Releases the wants' references in every case. OUT: *sel. */
bool api__sel_build(api_terms_t *t, api_sel_t *sel, api_fail_t *f);
/* Drop the references the wants hold (NULL-safe per want). */
void api__terms_release(api_terms_t *t);
/* The failure for an rc of store_acquire (404, 503 adapter_unavailable, 422 ...). */
bool api__acquire_fail(rc_t rc, const core_err_t *err, api_fail_t *f);
/* gather + acquire + build in one call: only for a store with a synchronous executor (tools
 * and tests); a load that would have to wait fails with 503. */
bool api__select(api_t *a, int64_t tenant, const json_t *root, const char *model, api_sel_t *sel,
                 api_fail_t *f);
/* Release sel's set (NULL-safe) and clear it. */
void api__sel_clear(api_sel_t *sel);

#endif
