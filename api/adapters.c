/* adapters.c - the adapter selection of a completion, and GET /lora-adapters.
 *
 * Every wire form (`model` naming an adapter, `adapter`, `adapter_id`, `adapters` with
 * `combination`, llama.cpp's `lora`) is gathered into the same list of weighted terms,
 * each holding a store reference, and then built into one core adapter set: "cat" (the
 * default) keeps the terms as they are (the exact weighted sum of deltas); "linear" first
 * mixes them into one LoRA (PEFT add_weighted_adapter linear) and applies that at weight 1.
 * The store references are released once the set has retained the LoRAs it needs.
 * Threads: the loop thread. See api/adapters.h for the contract. */
#include "api/adapters.h"
#include "api/tenancy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEL_SPEC_MAX (STORE_NAME_MAX + 16) /* "NAME@VERSION" with room to spare */

typedef api_terms_t sel_terms_t;

void api__terms_release(api_terms_t *t)
{
    for (int i = 0; i < t->n; i++) {
        if (t->want[i].lora)
            core_lora_release(t->want[i].lora);
        if (t->want[i].router)
            core_router_release(t->want[i].router);
        t->want[i].lora = NULL;
        t->want[i].router = NULL;
    }
}

static const char *const sel_selectors[] = {"adapter", "adapter_id", "adapters", "lora",
                                            "router"};
#define SEL_N_SELECTORS (sizeof sel_selectors / sizeof sel_selectors[0])

static bool present(const json_t *root, const char *key)
{
    const json_t *v = json_object_get(root, key);
    return v && !json_is_null(v);
}

/* At most one selector; `combination` only with `adapters`. OUT: *which (or NULL). */
static bool sel_which(const json_t *root, const char **which, api_fail_t *f)
{
    char names[128] = "";
    size_t len = 0;
    int n = 0;
    *which = NULL;
    for (size_t i = 0; i < SEL_N_SELECTORS; i++) {
        if (!present(root, sel_selectors[i]))
            continue;
        if (!*which)
            *which = sel_selectors[i];
        len += (size_t)snprintf(names + len, sizeof names - len, "%s`%s`", n ? ", " : "",
                                sel_selectors[i]);
        n++;
    }
    if (n > 1)
        return api__fail(f, 400, "conflicting_fields",
                         "%s cannot be used together: select adapters with one of them", names);
    if (present(root, "combination") && !(*which && strcmp(*which, "adapters") == 0))
        return api__fail(f, 400, "conflicting_fields",
                         "`combination` is only allowed together with `adapters`");
    return true;
}

/* Resolve spec in the store now (the adapter is acquired later, when every term is
 * known). what names its field in messages ("`adapters[1].name`"), or NULL for a
 * top-level field. OUT: canon "NAME@VERSION", row. */
static bool sel_resolve(api_t *a, int64_t tenant, const char *spec, const char *what, char *canon,
                        store_adapter_t *row, api_fail_t *f)
{
    store_adapter_t tmp;
    core_err_t err = {{0}};
    row = row ? row : &tmp;
    rc_t rc = a->p.store ? store_resolve(a->p.store, tenant, spec, row, &err) : RC_NOT_FOUND;
    /* A malformed name (RC_INVALID) cannot exist either: same answer as an unknown one. */
    if ((rc == RC_NOT_FOUND || rc == RC_INVALID) && what)
        return api__fail(f, 404, "model_not_found", "The model `%.200s` does not exist (%s).", spec,
                         what);
    if (rc == RC_NOT_FOUND || rc == RC_INVALID)
        return api__fail(f, 404, "model_not_found", "The model `%.200s` does not exist.", spec);
    if (rc != RC_OK)
        return api__fail_rc(f, rc, &err);
    snprintf(canon, STORE_SPEC_MAX, "%s@%d", row->name, row->version);
    return true;
}

/* Where a router may stand: alone (model, adapter, adapter_id, router), never as a term of
 * a composition (adapters, lora). what is NULL for `model`. */
static bool sel_router_ok(sel_terms_t *t, const store_adapter_t *row, const char *spec,
                          const char *what, bool alone, api_fail_t *f)
{
    if (!store_kind_is_router(row->kind))
        return true;
    if (!alone)
        return api__fail(f, 400, "invalid_value",
                         "%s names the router `%.200s`: a router cannot be composed with "
                         "adapters; select it alone with `model` or `router`", what, spec);
    t->routed = true;
    return true;
}

static bool sel_add(api_t *a, sel_terms_t *t, const char *spec, float w, const char *what,
                    char *canon, bool alone, api_fail_t *f)
{
    char c[STORE_SPEC_MAX];
    store_adapter_t row;
    if (!sel_resolve(a, t->tenant, spec, what, c, &row, f) ||
        !sel_router_ok(t, &row, spec, what, alone, f))
        return false;
    if (canon)
        snprintf(canon, SEL_SPEC_MAX, "%s", c);
    memset(&t->want[t->n], 0, sizeof t->want[t->n]);
    snprintf(t->want[t->n].spec, sizeof t->want[t->n].spec, "%s", c);
    t->w[t->n] = w;
    snprintf(t->given[t->n], SEL_SPEC_MAX, "%s", spec);
    t->n++;
    return true;
}

/* `model`: the base, or an adapter when no selector field is present. */
static bool sel_model(api_t *a, const char *model, const char *which, sel_terms_t *t, api_fail_t *f)
{
    if (strcmp(model, a->model_name) == 0)
        return true;
    if (!sel_add(a, t, model, 1.0f, NULL, NULL, true, f))
        return false;
    if (!which)
        return true;
    t->n = 0;
    return api__fail(f, 400, "conflicting_fields",
                     "`model` names the adapter `%.100s` and `%s` selects adapters too: set "
                     "`model` to the base model `%.100s` when `%s` selects them",
                     model, which, a->model_name, which);
}

/* A weight or scale: a number whose float value is finite. */
static bool sel_weight(const json_t *obj, const char *key, const char *path, bool required,
                       float *out, api_fail_t *f)
{
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required)
            return api__fail(f, 400, "missing_field", "`%s.%s` is required", path, key);
        return true;
    }
    if (!json_is_number(v))
        return api__fail(f, 400, "invalid_type", "`%s.%s` must be a finite number, got %s", path,
                         key, api__type_name(v));
    double x = json_number_value(v);
    if (!isfinite((float)x))
        return api__fail(f, 400, "invalid_value", "`%s.%s` must be a finite number, got %g", path,
                         key, x);
    *out = (float)x;
    return true;
}

/* An entry object of a list, holding only the keys in allowed (NULL-terminated). */
static bool sel_entry_shape(const json_t *e, const char *path, const char *const *allowed,
                            const char *shape, api_fail_t *f)
{
    const char *key;
    json_t *val;
    if (!json_is_object(e))
        return api__fail(f, 400, "invalid_type", "`%s` must be an object %s, got %s", path, shape,
                         api__type_name(e));
    json_object_foreach((json_t *)e, key, val) {
        bool ok = false;
        for (size_t i = 0; allowed[i] && !ok; i++)
            ok = strcmp(key, allowed[i]) == 0;
        if (!ok)
            return api__fail(f, 400, "unknown_field", "unknown field `%s.%.100s`", path, key);
    }
    return true;
}

/* A non-empty string field of an entry. OUT: *s borrowed. */
static bool sel_entry_str(const json_t *e, const char *key, const char *path, const char **s,
                          api_fail_t *f)
{
    const json_t *v = json_object_get(e, key);
    if (!v || json_is_null(v))
        return api__fail(f, 400, "missing_field", "`%s.%s` is required", path, key);
    if (!json_is_string(v))
        return api__fail(f, 400, "invalid_type", "`%s.%s` must be a string, got %s", path, key,
                         api__type_name(v));
    *s = json_string_value(v);
    if (!**s)
        return api__fail(f, 400, "invalid_value", "`%s.%s` must not be empty", path, key);
    return true;
}

/* `adapters`: [{"name", "weight"}], 1..CORE_ASET_MAX entries. */
static bool sel_adapters(api_t *a, const json_t *root, sel_terms_t *t, api_fail_t *f)
{
    static const char *const keys[] = {"name", "weight", NULL};
    const json_t *arr = json_object_get(root, "adapters");
    if (!json_is_array(arr))
        return api__fail(f, 400, "invalid_type",
                         "`adapters` must be an array of {\"name\", \"weight\"} objects, got %s",
                         api__type_name(arr));
    size_t n = json_array_size(arr);
    if (n < 1 || n > CORE_ASET_MAX)
        return api__fail(f, 400, "invalid_value", "`adapters` must hold 1 to %d entries, got %zu",
                         CORE_ASET_MAX, n);
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(arr, i);
        char path[32], what[48];
        const char *name = NULL;
        float w = 1.0f;
        snprintf(path, sizeof path, "adapters[%zu]", i);
        snprintf(what, sizeof what, "`%s.name`", path);
        if (!sel_entry_shape(e, path, keys, "{\"name\": string, \"weight\": number}", f) ||
            !sel_entry_str(e, "name", path, &name, f) ||
            !sel_weight(e, "weight", path, false, &w, f) ||
            !sel_add(a, t, name, w, what, NULL, false, f))
            return false;
    }
    return true;
}

/* `combination`: "cat" (default) or "linear". */
static bool sel_combination(const json_t *root, bool *linear, api_fail_t *f)
{
    const char *c = NULL;
    *linear = false;
    if (!api__get_str(root, "combination", &c, NULL, f))
        return false;
    if (!c || strcmp(c, "cat") == 0)
        return true;
    if (strcmp(c, "linear") == 0) {
        *linear = true;
        return true;
    }
    return api__fail(f, 400, "invalid_value",
                     "`combination` must be \"cat\" or \"linear\", got \"%.40s\"", c);
}

/* The adapter a `lora[i].id` names. OUT: spec "NAME@VERSION" for an index, else the name;
 * *rows, *n_rows: the GET /lora-adapters list, fetched on first use (caller frees). */
/* Keep the rows of kind "lora" (llama.cpp's list has no routers), in order. -> count. */
static size_t loras_only(store_adapter_t *rows, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!store_kind_is_router(rows[i].kind))
            rows[k++] = rows[i];
    return k;
}

static bool sel_lora_id(api_t *a, int64_t tenant, const json_t *e, const char *path, store_adapter_t **rows,
                        size_t *n_rows, char *spec, api_fail_t *f)
{
    const json_t *id = json_object_get(e, "id");
    if (!id || json_is_null(id))
        return api__fail(f, 400, "missing_field", "`%s.id` is required", path);
    if (json_is_string(id)) {
        if (json_string_length(id) == 0)
            return api__fail(f, 400, "invalid_value", "`%s.id` must not be empty", path);
        snprintf(spec, SEL_SPEC_MAX, "%.*s", SEL_SPEC_MAX - 1, json_string_value(id));
        if (json_string_length(id) >= SEL_SPEC_MAX) /* longer than any adapter spec */
            return api__fail(f, 404, "model_not_found",
                             "The model `%.200s` does not exist "
                             "(`%s.id`).",
                             json_string_value(id), path);
        return true;
    }
    if (!json_is_integer(id))
        return api__fail(f, 400, "invalid_type",
                         "`%s.id` must be an index into GET /lora-adapters or an adapter name, "
                         "got %s",
                         path, api__type_name(id));
    long long x = json_integer_value(id);
    if (x < 0)
        return api__fail(f, 400, "invalid_value", "`%s.id` must be >= 0, got %lld", path, x);
    core_err_t err = {{0}};
    if (!*rows && a->p.store) {
        rc_t rc = store_list(a->p.store, tenant, rows, n_rows, &err);
        if (rc != RC_OK)
            return api__fail_rc(f, rc, &err);
        *n_rows = loras_only(*rows, *n_rows);
    }
    if ((unsigned long long)x >= *n_rows)
        return api__fail(f, 404, "model_not_found",
                         "no adapter has index %lld (`%s.id`): GET /lora-adapters lists %zu", x,
                         path, *n_rows);
    snprintf(spec, SEL_SPEC_MAX, "%s@%d", (*rows)[x].name, (*rows)[x].version);
    return true;
}

/* One `lora` entry: resolved (so unknown ids fail even at scale 0), added unless scale 0.
 * seen holds the NAME@VERSION of earlier entries: naming one adapter twice is refused, as
 * llama.cpp (last one wins) and a sum would disagree. */
static bool sel_lora_entry(api_t *a, const json_t *e, size_t i, store_adapter_t **rows,
                           size_t *n_rows, char (*seen)[SEL_SPEC_MAX], sel_terms_t *t,
                           api_fail_t *f)
{
    static const char *const keys[] = {"id", "scale", NULL};
    char path[32], what[48], spec[SEL_SPEC_MAX];
    store_adapter_t row;
    float scale = 0;
    snprintf(path, sizeof path, "lora[%zu]", i);
    snprintf(what, sizeof what, "`%s.id`", path);
    if (!sel_entry_shape(e, path, keys, "{\"id\": index or name, \"scale\": number}", f) ||
        !sel_lora_id(a, t->tenant, e, path, rows, n_rows, spec, f) ||
        !sel_weight(e, "scale", path, true, &scale, f) ||
        !sel_resolve(a, t->tenant, spec, what, seen[i], &row, f) ||
        !sel_router_ok(t, &row, spec, what, false, f))
        return false;
    for (size_t k = 0; k < i; k++) {
        if (strcmp(seen[k], seen[i]) == 0)
            return api__fail(f, 400, "invalid_value",
                             "`%s.id` selects `%s` again (as `lora[%zu]` does): list each "
                             "adapter once",
                             path, seen[i], k);
    }
    if (scale == 0) /* llama.cpp: scale 0 means not applied */
        return true;
    if (t->n == CORE_ASET_MAX)
        return api__fail(f, 400, "invalid_value",
                         "`lora` may apply at most %d adapters with a non-zero scale",
                         CORE_ASET_MAX);
    return sel_add(a, t, spec, scale, what, NULL, false, f);
}

/* `lora`: [{"id", "scale"}] as llama.cpp's server takes it. */
static bool sel_lora(api_t *a, const json_t *root, sel_terms_t *t, api_fail_t *f)
{
    const json_t *arr = json_object_get(root, "lora");
    if (!json_is_array(arr))
        return api__fail(f, 400, "invalid_type",
                         "`lora` must be an array of {\"id\", \"scale\"} objects, got %s",
                         api__type_name(arr));
    size_t n = json_array_size(arr);
    if (n > API_LORA_MAX)
        return api__fail(f, 400, "invalid_value", "`lora` may hold at most %d entries, got %zu",
                         API_LORA_MAX, n);
    char(*seen)[SEL_SPEC_MAX] = calloc(n ? n : 1, sizeof *seen);
    store_adapter_t *rows = NULL;
    size_t n_rows = 0;
    bool ok = seen != NULL || api__fail(f, 500, "nomem", "out of memory");
    for (size_t i = 0; ok && i < n; i++)
        ok = sel_lora_entry(a, json_array_get(arr, i), i, &rows, &n_rows, seen, t, f);
    free(rows);
    free(seen);
    return ok;
}

/* "linear" mixes factors, so every module targeted by two terms needs one rank. */
static bool sel_linear_ranks(const sel_terms_t *t, api_fail_t *f)
{
    int n_layers = t->want[0].lora->n_layers;
    for (int i = 1; i < t->n; i++)
        n_layers = t->want[i].lora->n_layers < n_layers ? t->want[i].lora->n_layers : n_layers;
    for (int layer = 0; layer < n_layers; layer++) {
        for (int m = 0; m < CORE_MOD__COUNT; m++) {
            int first = -1;
            for (int i = 0; i < t->n; i++) {
                const core_lora_mod_t *md = core_lora_mod(t->want[i].lora, layer, (core_mod_t)m);
                if (!md->A)
                    continue;
                if (first < 0) {
                    first = i;
                    continue;
                }
                int r0 = core_lora_mod(t->want[first].lora, layer, (core_mod_t)m)->r;
                if (md->r != r0)
                    return api__fail(f, 400, "rank_mismatch",
                                     "`combination` \"linear\" needs adapters of equal rank: "
                                     "`%s` has rank %d and `%s` rank %d in layer %d %s "
                                     "(\"cat\", the default, combines any ranks)",
                                     t->given[first], r0, t->given[i], md->r, layer,
                                     core_mod_name((core_mod_t)m));
            }
        }
    }
    return true;
}

/* The fair-share group: the spec as given for one adapter at weight 1, else a canonical
 * text of the composition ("linear:" prefix for linear), e.g. "a*0.5+b@2*-1". */
static void sel_group(const sel_terms_t *t, bool linear, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    if (t->n == 1 && t->w[0] == 1.0f && !linear) {
        snprintf(buf, cap, "%s", t->given[0]);
        return;
    }
    if (linear)
        len = (size_t)snprintf(buf, cap, "linear:");
    for (int i = 0; i < t->n && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%s*%g", i ? "+" : "", t->given[i],
                                (double)t->w[i]);
}

/* Build the set from the terms (none: the base). OUT: sel->aset new reference. */
static bool sel_build(const sel_terms_t *t, bool linear, api_sel_t *sel, api_fail_t *f)
{
    core_lora_term_t terms[CORE_ASET_MAX];
    core_lora_t *mixed = NULL;
    core_err_t err = {{0}};
    rc_t rc;
    if (t->n == 0)
        return true;
    for (int i = 0; i < t->n; i++)
        terms[i] = (core_lora_term_t){.lora = t->want[i].lora, .weight = t->w[i]};
    if (linear) {
        if (!sel_linear_ranks(t, f))
            return false;
        rc = core_lora_mix_linear(terms, t->n, &mixed, &err);
        if (rc != RC_OK)
            return api__fail_rc(f, rc, &err);
        terms[0] = (core_lora_term_t){.lora = mixed, .weight = 1.0f};
    }
    rc = core_aset_new(terms, linear ? 1 : t->n, &sel->aset, &err);
    if (mixed)
        core_lora_release(mixed); /* the set holds its own reference */
    if (rc != RC_OK)
        return api__fail_rc(f, rc, &err);
    sel_group(t, linear, sel->group, sizeof sel->group);
    return true;
}

/* `router`: {"name", "top_k", "temperature"}; name must be a router. */
static bool sel_router(api_t *a, const json_t *root, sel_terms_t *t, api_fail_t *f)
{
    static const char *const keys[] = {"name", "top_k", "temperature", NULL};
    const json_t *r = json_object_get(root, "router");
    const char *name = NULL;
    long long k = 0;
    double temp = 0;
    if (!sel_entry_shape(r, "router", keys,
                         "{\"name\": string, \"top_k\": integer, \"temperature\": number}", f) ||
        !sel_entry_str(r, "name", "router", &name, f))
        return false;
    if (!api__get_int(r, "top_k", 1, CORE_ROUTER_MAX_EXPERTS, &k, f) ||
        !api__get_num(r, "temperature", 0, 1e6, true, &temp, f)) {
        /* the helpers name the key alone: say where it lives */
        char msg[sizeof f->message], code[sizeof f->code];
        snprintf(msg, sizeof msg, "%s", f->message);
        snprintf(code, sizeof code, "%s", f->code);
        return api__fail(f, f->status, code, "router: %s", msg);
    }
    if (!sel_add(a, t, name, 1.0f, "`router.name`", NULL, true, f))
        return false;
    if (!t->routed) {
        t->n = 0;
        return api__fail(f, 400, "invalid_value",
                         "`router.name` names the adapter `%.200s`, not a router: select "
                         "adapters with `model`, `adapter` or `adapters`", name);
    }
    t->route = (core_route_params_t){(int)k, (float)temp};
    return true;
}

/* `return_routing`: only with a router. */
static bool sel_return_routing(const json_t *root, sel_terms_t *t, api_fail_t *f)
{
    bool want = false;
    if (!api__get_bool(root, "return_routing", &want, f))
        return false;
    if (want && !t->routed)
        return api__fail(f, 400, "invalid_value",
                         "`return_routing` needs a router: name one in `model` or `router`");
    t->want_routing = want;
    return true;
}

/* The terms of the one selector field present (which), or of an adapter `model`. */
static bool sel_terms(api_t *a, const json_t *root, const char *model, const char *which,
                      sel_terms_t *t, api_fail_t *f)
{
    const char *spec = NULL;
    if (!sel_model(a, model, which, t, f))
        return false;
    if (!which)
        return true;
    if (strcmp(which, "adapters") == 0)
        return sel_adapters(a, root, t, f);
    if (strcmp(which, "lora") == 0)
        return sel_lora(a, root, t, f);
    if (strcmp(which, "router") == 0)
        return sel_router(a, root, t, f);
    /* adapter / adapter_id: one name; the base model's name selects the base. */
    if (!api__get_str(root, which, &spec, NULL, f))
        return false;
    if (strcmp(spec, a->model_name) == 0)
        return true;
    char what[16];
    snprintf(what, sizeof what, "`%s`", which);
    return sel_add(a, t, spec, 1.0f, what, NULL, true, f);
}

bool api__sel_gather(api_t *a, int64_t tenant, const json_t *root, const char *model,
                     api_terms_t *t, api_fail_t *f)
{
    const char *which = NULL;
    memset(t, 0, sizeof *t);
    t->tenant = tenant;
    return sel_which(root, &which, f) && sel_combination(root, &t->linear, f) &&
           sel_terms(a, root, model, which, t, f) && sel_return_routing(root, t, f);
}

/* A routed selection: the router the store built, at the request's overrides. */
static bool sel_take_router(api_terms_t *t, api_sel_t *sel, api_fail_t *f)
{
    core_router_t *r = t->want[0].router;
    if (!r)
        return api__fail(f, 500, "internal_error", "the store gave no router for `%.200s`",
                         t->want[0].spec);
    if (t->route.top_k > r->n_experts)
        return api__fail(f, 400, "invalid_value",
                         "`router.top_k` is %d but the router `%.200s` has %d experts",
                         t->route.top_k, t->given[0], r->n_experts);
    core_router_retain(r);
    sel->router = r;
    sel->route = t->route;
    sel->want_routing = t->want_routing;
    snprintf(sel->group, sizeof sel->group, "%s", t->given[0]);
    return true;
}

bool api__sel_build(api_terms_t *t, api_sel_t *sel, api_fail_t *f)
{
    memset(sel, 0, sizeof *sel);
    bool ok = t->routed ? sel_take_router(t, sel, f) : sel_build(t, t->linear, sel, f);
    api__terms_release(t); /* the set holds its own references */
    if (!ok)
        api__sel_clear(sel);
    return ok;
}

bool api__acquire_fail(rc_t rc, const core_err_t *err, api_fail_t *f)
{
    switch (rc) {
    case RC_NOT_FOUND:
    case RC_INVALID: return api__fail(f, 404, "model_not_found", "%s", err->msg);
    case RC_UNAVAILABLE: return api__fail(f, 503, "adapter_unavailable", "%s", err->msg);
    case RC_BUSY: return api__fail(f, 503, "cache_full", "%s", err->msg);
    case RC_LIMIT: return api__fail(f, 422, "adapter_too_large", "%s", err->msg);
    default: return api__fail_rc(f, rc, err);
    }
}

bool api__select(api_t *a, int64_t tenant, const json_t *root, const char *model, api_sel_t *sel,
                 api_fail_t *f)
{
    api_terms_t t;
    store_wait_t *wait = NULL;
    core_err_t err = {{0}};
    memset(sel, 0, sizeof *sel);
    if (!api__sel_gather(a, tenant, root, model, &t, f))
        return false;
    if (t.n == 0)
        return true;
    rc_t rc = store_acquire(a->p.store, tenant, t.want, t.n, NULL, NULL, &wait, &err);
    if (rc == RC_OK && wait) { /* only a synchronous executor completes in the call */
        store_wait_cancel(a->p.store, wait);
        return api__fail(f, 503, "adapter_unavailable", "adapter is still loading");
    }
    if (rc != RC_OK)
        return api__acquire_fail(rc, &err, f);
    return api__sel_build(&t, sel, f);
}

void api__sel_clear(api_sel_t *sel)
{
    if (sel->aset)
        core_aset_release(sel->aset);
    if (sel->router)
        core_router_release(sel->router);
    memset(sel, 0, sizeof *sel);
}

/* GET /lora-adapters: llama.cpp's list shape. `path` is the adapter's NAME@VERSION (never a
 * filesystem path); `id` is the index `lora[].id` takes; `scale` is always 0 because
 * adapterd applies nothing unless a request asks. */
void api__h_lora_adapters(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    (void)job;
    store_adapter_t *rows = NULL;
    size_t n = 0;
    if (!api__list_adapters(a, api__who(req)->tenant, sink, &rows, &n))
        return;
    n = loras_only(rows, n);
    json_t *list = json_array();
    for (size_t i = 0; list && i < n; i++) {
        char spec[SEL_SPEC_MAX];
        snprintf(spec, sizeof spec, "%s@%d", rows[i].name, rows[i].version);
        json_array_append_new(
            list, json_pack("{s:I,s:s,s:f}", "id", (json_int_t)i, "path", spec, "scale", 0.0));
    }
    free(rows);
    api__send_json(sink, 200, list);
}
