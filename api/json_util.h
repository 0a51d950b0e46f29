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

struct api {
    api_params_t p;
    const char *model_name; /* p.model_name, or the model's own name */
    int64_t created;        /* unix seconds at api_new: "created" of the base model */
    uint64_t rng;           /* splitmix64 state for seeds and ids; loop thread only */
};

/* A request failure on its way to the client. */
typedef struct {
    int status;
    char code[40];
    char message[512];
} api_fail_t;

/* Fill f and return false, so checks read `return api__fail(f, 400, "invalid_value", ...)`. */
bool api__fail(api_fail_t *f, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
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
/* The store's adapter list (store_list), or an error response sent to sink (false).
 * With no store: true and an empty list. OUT: *rows (caller frees), *n. */
bool api__list_adapters(api_t *a, api_sink_t *sink, store_adapter_t **rows, size_t *n);

/* Handlers of the route table (api.c). */
typedef void (*api_handler_fn)(api_t *a, const api_request_t *req, api_sink_t *sink,
                               api_job_t **job);
void api__h_completions(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_healthz(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_models(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_tokenize(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_detokenize(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job);
void api__h_lora_adapters(api_t *a, const api_request_t *req, api_sink_t *sink,
                          api_job_t **job);

#endif
