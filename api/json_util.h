/* json_util.h - private to api/: the api struct its handlers share, the handlers the
 * route table names, request-field validation and JSON response helpers.
 *
 * Validation helpers return true when the field is acceptable (absent or JSON null leave
 * *out untouched, so callers preset defaults) and false after filling an api_fail_t whose
 * message names the field. A handler sends the first failure with api__send_fail.
 * Threads: the loop thread, except api__send_json/api__send_error_hdr and api__json_text,
 * which only touch their arguments and may run on the engine thread too.
 * Ownership: jansson values are borrowed unless a comment says new or stolen. */
#ifndef API_JSON_UTIL_H
#define API_JSON_UTIL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "api/api.h"

struct api_quota;
struct api {
    api_params_t p;
    struct api_quota *quota; /* per-tenant quota state (quota.c) */
    const char *model_name; /* p.model_name, or the model's own name */
    int64_t created;        /* unix seconds at api_new: "created" of the base model */
    uint64_t rng;           /* splitmix64 state for seeds and ids; loop thread only */
    bool draining;          /* api_set_draining: /readyz answers 503; loop thread only */
};

/* Every pending job starts with this (completions, uploads, admin changes): the public
 * api_job_cancel / api_job_free dispatch through ops. */
typedef struct {
    void (*cancel)(api_t *a, api_job_t *job); /* client gone; end() still follows */
    void (*free)(api_t *a, api_job_t *job);
} api_job_ops_t;
struct api_job {
    const api_job_ops_t *ops;
};

/* A request failure on its way to the client. */
typedef struct {
    int status;
    char code[40];
    char message[512];
    char headers[320]; /* extra "Name: value\r\n" lines ("" = the defaults of
                        * api_send_error); api__fail clears it */
    char reason[40];   /* machine-readable cause of a refused adapter (core_err_reason),
                        * sent as error.reason when set; api__fail clears it */
} api_fail_t;

/* Fill f and return false, so checks read `return api__fail(f, 400, "invalid_value", ...)`. */
bool api__fail(api_fail_t *f, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Copy err's reason (core_err_reason: "invalid_offset", ...) into f->reason. */
void api__fail_reason(api_fail_t *f, const core_err_t *err);
/* The same from an rc and its detail message (status from api_status_of). */
bool api__fail_rc(api_fail_t *f, rc_t rc, const core_err_t *err);
void api__send_fail(api_sink_t *sink, const api_fail_t *f);

/* "invalid_request_error" below 500 (except 429), "server_error" otherwise. */
const char *api__error_type(int status);
/* The error document {"error": {...}} (new reference), never NULL unless out of memory. */
json_t *api__error_json(const char *type, const char *code, const char *message);
void api__send_error_hdr(api_sink_t *sink, int status, const char *type, const char *code,
                         const char *message, const char *extra_headers);
/* begin/write/end of a complete JSON response; body is stolen. */
void api__send_json(api_sink_t *sink, int status, json_t *body);
/* Compact dump of a JSON value (malloc'd, caller frees) or NULL when out of memory. */
char *api__dump(const json_t *v, size_t *len);

/* A JSON string of len bytes; invalid UTF-8 sequences become U+FFFD. New reference. */
json_t *api__json_text(const char *s, size_t len);

/* "q_proj,v_proj" -> ["q_proj", "v_proj"] (new reference; empty items skipped). */
json_t *api__csv_json(const char *csv);

/* "an object", "a string", ... for messages about a value of the wrong type. */
const char *api__type_name(const json_t *v);

/* The body as a JSON object (JSON_REJECT_DUPLICATES). OUT: *root new reference. */
bool api__parse_body(const api_request_t *req, json_t **root, api_fail_t *f);
/* Every key of obj must be in allowed (NULL-terminated); the first other one fails. */
bool api__check_fields(const json_t *obj, const char *const *allowed, api_fail_t *f);

bool api__get_int(const json_t *obj, const char *key, long long lo, long long hi,
                  long long *out, api_fail_t *f);
/* Number (integer or real) in [lo, hi], or (lo, hi] when lo_open. */
bool api__get_num(const json_t *obj, const char *key, double lo, double hi, bool lo_open,
                  double *out, api_fail_t *f);
bool api__get_bool(const json_t *obj, const char *key, bool *out, api_fail_t *f);
/* OUT: *out borrowed from obj, *len its length in bytes (may hold NULs). */
bool api__get_str(const json_t *obj, const char *key, const char **out, size_t *len,
                  api_fail_t *f);
/* arr must be an array of integers in [0, n_vocab); what names it in messages.
 * OUT: *ids malloc'd (caller frees; NULL when empty), *n. */
bool api__token_ids(const json_t *arr, const char *what, int n_vocab, int32_t **ids, size_t *n,
                    api_fail_t *f);

/* Next value of the api's PRNG (splitmix64). Loop thread only. */
uint64_t api__rand(api_t *a);
/* The store's adapter list for tenant (store_list), or an error response sent to sink (false).
 * With no store: true and an empty list. OUT: *rows (caller frees), *n. */
bool api__list_adapters(api_t *a, int64_t tenant, api_sink_t *sink, store_adapter_t **rows,
                        size_t *n);

/* Handlers of the route table (api.c). */
typedef void (*api_handler_fn)(api_t *a, const api_request_t *req, api_sink_t *sink,
                               api_job_t **job);
void api__h_completions(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
/* POST /v1/chat/completions (api/chat.c). */
void api__h_chat(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
/* POST /v1/score: {model (+ adapter fields), prompt, target} -> per-token logprobs of target. */
void api__h_score(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_healthz(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_readyz(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_metrics(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_models(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_tokenize(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_detokenize(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_lora_adapters(api_t *a, const api_request_t *req, api_sink_t *sink,
                          api_job_t **job);

/* ---- adapter admin (admin.c, upload.c) ---------------------------------------------- */

#define API_PARAM_MAX 255 /* bytes of a decoded path parameter */

/* Percent-decode s[0..n) into out (NUL-terminated). false for a bad escape, an encoded
 * NUL, or more than cap - 1 bytes. */
bool api__pct_decode(const char *s, size_t n, char *out, size_t cap);

/* Handlers of routes with one path parameter (decoded, NUL-terminated, borrowed). */
typedef void (*api_param_handler_fn)(api_t *a, const api_request_t *req, const char *param,
                                     api_sink_t *sink, api_job_t **job);
void api__h_adapters_list(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_aliases_list(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_upload(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_router_create(api_t *a, const api_request_t *req, api_sink_t *sink,
                          api_job_t **job); /* api/routers.c */
void api__h_vllm_load(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_vllm_unload(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__hp_adapter_get(api_t *a, const api_request_t *req, const char *param, api_sink_t *sink,
                         api_job_t **job);
void api__hp_upload(api_t *a, const api_request_t *req, const char *param, api_sink_t *sink,
                    api_job_t **job);
void api__hp_adapter_delete(api_t *a, const api_request_t *req, const char *param,
                            api_sink_t *sink, api_job_t **job);
void api__hp_adapter_pin(api_t *a, const api_request_t *req, const char *param,
                         api_sink_t *sink, api_job_t **job);
void api__hp_adapter_unpin(api_t *a, const api_request_t *req, const char *param,
                           api_sink_t *sink, api_job_t **job);
void api__hp_alias_get(api_t *a, const api_request_t *req, const char *param, api_sink_t *sink,
                       api_job_t **job);
void api__hp_alias_put(api_t *a, const api_request_t *req, const char *param, api_sink_t *sink,
                       api_job_t **job);
void api__hp_alias_delete(api_t *a, const api_request_t *req, const char *param,
                          api_sink_t *sink, api_job_t **job);

/* Tenants, keys, publishing and the caller (tenants.c). */
void api__h_me(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_tenants_list(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_tenant_create(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__hp_tenant_get(api_t *a, const api_request_t *req, const char *name, api_sink_t *sink,
                        api_job_t **job);
void api__hp_tenant_patch(api_t *a, const api_request_t *req, const char *name, api_sink_t *sink,
                          api_job_t **job);
void api__h_keys_list(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_key_create(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__hp_key_revoke(api_t *a, const api_request_t *req, const char *id, api_sink_t *sink,
                        api_job_t **job);
void api__hp_adapter_publish(api_t *a, const api_request_t *req, const char *name,
                             api_sink_t *sink, api_job_t **job);
void api__hp_adapter_unpublish(api_t *a, const api_request_t *req, const char *name,
                               api_sink_t *sink, api_job_t **job);

/* The adapter object of admin_api.md for row r, with what the cache knows of it now
 * (store_runtime). New reference (NULL only when out of memory). */
json_t *api__adapter_json(api_t *a, const store_adapter_t *r);
/* Fill f for a store failure with the admin codes: 404 adapter_not_found, 400
 * invalid_name, 409 name_conflict, 413 adapter_too_large, 422 with the rc's name
 * (mismatch, unsupported, format), 503 store_unavailable, 507 insufficient_storage, else
 * api_status_of(rc) and the rc's name. Callers override what differs. Returns false. */
bool api__fail_store(api_fail_t *f, rc_t rc, const core_err_t *err);

/* A store change answered from its callback (store_delete, store_alias_put, store_pin,
 * store_import_async, store_upload_commit): the pending job of admin requests.
 *   c = api__change_new(a, tenant, sink, answer, arg); NULL: out of memory (nothing sent)
 *   store_xxx(..., api__change_done, c);
 *   api__change_started(a, c, job);                  sets *job, or NULL when answered
 * answer runs once, from the store's callback, and sends one complete response to sink
 * (arg: a copy of what the request named). Cancel (client gone) does not stop the change:
 * the answer still runs and ends the sink; the server frees the job after that end. */
typedef void (*api_change_answer_fn)(api_t *a, api_sink_t *sink, int64_t tenant, const char *arg,
                                     rc_t rc,
                                     const store_adapter_t *row, const core_err_t *err);
typedef struct api_change api_change_t;
api_change_t *api__change_new(api_t *a, int64_t tenant, api_sink_t *sink,
                              api_change_answer_fn answer, const char *arg);
void api__change_done(void *user, rc_t rc, const store_adapter_t *row, const core_err_t *err);
void api__change_started(api_t *a, api_change_t *c, api_job_t **job);

#endif
