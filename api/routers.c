/* routers.c - POST /v1/routers: register a router (core/router.h) over stored adapters.
 *
 * The body is JSON (read whole, so at most --max-body-bytes):
 *   {"name": NAME,
 *    "config": {...},       the router's config: a router_config.json object
 *                           ({"router_type": "phatgoose"|"arrow", "experts": [...], ...}) or
 *                           an X-LoRA config (PEFT's adapter_config.json or xlora_config.json)
 *    "experts": [SPEC...],  optional: the stored adapters it routes over, in the config's
 *                           expert order (default: the config's expert names as specs)
 *    "weights": BASE64}     the classifier (X-LoRA) or gates (PHATGOOSE) safetensors file;
 *                           absent for Arrow (prototypes are computed at registration)
 * The store validates by building the router with its experts, then indexes it as a new
 * version of NAME (store_router_put); the answer is 201 with the adapter object. Classifier
 * or gate files larger than the body cap are imported with `adapterd import` instead.
 * Threads: the loop thread. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/json_util.h"
#include "api/tenancy.h"

static const char *const router_fields[] = {"name", "config", "experts", "weights", NULL};

/* Standard base64 (RFC 4648, padding optional, no whitespace) into a new buffer.
 * false on any other character. */
static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

static bool b64_decode(const char *s, size_t n, uint8_t **out, size_t *len)
{
    while (n && s[n - 1] == '=')
        n--;
    uint8_t *buf = malloc(n / 4 * 3 + 3);
    size_t k = 0;
    uint32_t acc = 0;
    int bits = 0;
    if (!buf)
        return false;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value((unsigned char)s[i]);
        if (v < 0) {
            free(buf);
            return false;
        }
        acc = acc << 6 | (uint32_t)v;
        if ((bits += 6) >= 8) {
            bits -= 8;
            buf[k++] = (uint8_t)(acc >> bits);
        }
    }
    *out = buf;
    *len = k;
    return true;
}

/* The decoded request: what store_router_put copies. */
typedef struct {
    const char *name;
    char *config;       /* compact JSON of "config" (malloc'd) */
    uint8_t *weights;   /* decoded "weights" (malloc'd) or NULL */
    size_t weights_len;
    const char *experts[CORE_ROUTER_MAX_EXPERTS];
    int n_experts;
    bool has_experts;
} router_req_t;

static void router_req_free(router_req_t *r)
{
    free(r->config);
    free(r->weights);
}

static bool router_experts(const json_t *root, router_req_t *r, api_fail_t *f)
{
    const json_t *arr = json_object_get(root, "experts");
    if (!arr || json_is_null(arr))
        return true;
    if (!json_is_array(arr))
        return api__fail(f, 400, "invalid_type", "`experts` must be an array of adapter names, "
                         "got %s", api__type_name(arr));
    size_t n = json_array_size(arr);
    if (n < 1 || n > CORE_ROUTER_MAX_EXPERTS)
        return api__fail(f, 400, "invalid_value", "`experts` must hold 1 to %d names, got %zu",
                         CORE_ROUTER_MAX_EXPERTS, n);
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(arr, i);
        if (!json_is_string(e) || !json_string_length(e))
            return api__fail(f, 400, "invalid_value", "`experts[%zu]` must be a non-empty "
                             "string", i);
        r->experts[i] = json_string_value(e);
    }
    r->n_experts = (int)n;
    r->has_experts = true;
    return true;
}

static bool router_parse(const json_t *root, router_req_t *r, api_fail_t *f)
{
    const json_t *cfg = json_object_get(root, "config");
    const char *w = NULL;
    size_t wlen = 0;
    memset(r, 0, sizeof *r);
    if (!api__check_fields(root, router_fields, f) ||
        !api__get_str(root, "name", &r->name, NULL, f))
        return false;
    if (!r->name)
        return api__fail(f, 400, "invalid_name", "`name` is required");
    if (!store_name_valid(r->name))
        return api__fail(f, 400, "invalid_name", "`name` must be 1-64 characters of A-Z a-z "
                         "0-9 . _ - starting with a letter or digit");
    if (!json_is_object(cfg))
        return api__fail(f, 400, "invalid_type", "`config` must be the router's config "
                         "object, got %s", cfg ? api__type_name(cfg) : "nothing");
    if (!router_experts(root, r, f) || !api__get_str(root, "weights", &w, &wlen, f))
        return false;
    r->config = json_dumps(cfg, JSON_COMPACT);
    if (!r->config)
        return api__fail(f, 500, "nomem", "out of memory");
    if (w && !b64_decode(w, wlen, &r->weights, &r->weights_len))
        return api__fail(f, 400, "invalid_value", "`weights` must be standard base64 (the "
                         "classifier or gates .safetensors file)");
    return true;
}

static void answer_router(api_t *a, api_sink_t *sink, int64_t tenant, const char *name,
                          rc_t rc, const store_adapter_t *row, const core_err_t *err)
{
    api_fail_t f;
    (void)tenant;
    (void)name;
    if (rc == RC_OK && row) {
        api__send_json(sink, 201, api__adapter_json(a, row));
        return;
    }
    const char *msg = err && err->msg[0] ? err->msg : rc_str(rc);
    if (rc == RC_NOT_FOUND) /* an expert that does not exist */
        api__fail(&f, 404, "model_not_found", "%s", msg);
    else if (rc == RC_INVALID) /* the config, the experts or the weights do not fit */
        api__fail(&f, 422, "invalid", "%s", msg);
    else
        api__fail_store(&f, rc, err);
    if (f.status == 422)
        api__fail_reason(&f, err);
    api__send_fail(sink, &f);
}

void api__h_router_create(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    json_t *root = NULL;
    router_req_t r;
    api_fail_t f;
    memset(&r, 0, sizeof r);
    if (!a->p.store) {
        api__fail(&f, 503, "store_unavailable", "this server has no adapter store");
    } else if (api__parse_body(req, &root, &f) && router_parse(root, &r, &f)) {
        api_change_t *c = api__change_new(a, api__who(req)->tenant, sink, answer_router, r.name);
        if (!c) {
            api__fail(&f, 500, "nomem", "out of memory");
        } else {
            store_router_src_t src = {r.config, strlen(r.config), r.weights, r.weights_len,
                                      r.has_experts ? r.experts : NULL, r.n_experts};
            store_router_put(a->p.store, api__who(req)->tenant, r.name, &src, api__change_done,
                             c); /* copies src */
            api__change_started(a, c, job);
            router_req_free(&r);
            json_decref(root);
            return;
        }
    }
    router_req_free(&r);
    json_decref(root);
    api__send_fail(sink, &f);
}
