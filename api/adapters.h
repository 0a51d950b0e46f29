/* adapters.h - private to api/: which adapters a completion applies.
 *
 * Every wire form a client may send maps onto one core adapter set (core/lora.h):
 *   model         the base model's name (no set), or an adapter "NAME" / "NAME@VERSION"
 *   adapter       (adapterd extension) and adapter_id (LoRAX / TGI): one adapter name
 *   adapters      [{"name", "weight"}] (1..CORE_ASET_MAX), with "combination": "cat"
 *                 (default: exact sum of the weighted deltas, one set of n terms) or
 *                 "linear" (PEFT add_weighted_adapter linear: one mixed LoRA, weight 1)
 *   lora          [{"id": index or name, "scale"}] (llama.cpp server); scale 0 drops a term
 * At most one of adapter / adapter_id / adapters / lora, and `model` names an adapter only
 * when none of them is present. An unknown adapter is 404 model_not_found naming it; a bad
 * shape is 400 naming the field by its path ("`adapters[1].weight` ..."). See docs/API.md.
 *
 * The fair-share group is the adapter selection as given (the adapter spec string, or a
 * canonical text of a composition); tenants replace it with a later issue.
 *
 * Threads: the loop thread (store_acquire may read an adapter from disk on first use, and a
 * "linear" composition builds its mixed LoRA here).
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
    char group[API_GROUP_MAX]; /* "" for the base model */
} api_sel_t;

/* The request fields this module reads, besides `model` (for the completion's field list). */
#define API_SEL_FIELDS "adapter", "adapter_id", "adapters", "combination", "lora"

/* Resolve the selection fields of root. model is the request's `model` (required, already
 * checked to be a string). OUT: *sel (zeroed on failure). */
bool api__select(api_t *a, const json_t *root, const char *model, api_sel_t *sel, api_fail_t *f);
/* Release sel's set (NULL-safe) and clear it. */
void api__sel_clear(api_sel_t *sel);

#endif
