/* misc.c - the handlers that answer at once: GET /healthz, GET /readyz, GET /v1/models,
 * POST /tokenize, POST /detokenize. None of them creates a job. Threads: the loop thread. */
#include <stdlib.h>
#include <string.h>

#include "api/json_util.h"
#include "api/tenancy.h"

void api__h_healthz(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    (void)a;
    (void)req;
    (void)job;
    api__send_json(sink, 200, json_pack("{s:s}", "status", "ok"));
}

/* Ready: the model is loaded, the store open, and no drain has started. A draining
 * daemon answers 503 with the usual error body plus "status" (load balancers look at the
 * status code; people read the body) and Retry-After, so clients go elsewhere. */
void api__h_readyz(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    (void)req;
    (void)job;
    const char *status = a->draining   ? "draining"
                         : !a->p.model ? "no_model"
                         : !a->p.store ? "no_store"
                                       : "ready";
    if (strcmp(status, "ready") == 0) {
        api__send_json(sink, 200, json_pack("{s:s}", "status", status));
        return;
    }
    json_t *body = api__error_json(api__error_type(503), status,
                                   a->draining ? "the server is draining (shutting down)"
                                               : "the server is not ready");
    if (body)
        json_object_set_new(body, "status", json_string(status));
    size_t len = 0;
    char *text = api__dump(body, &len);
    json_decref(body);
    if (!text) {
        api_send_error(sink, 503, NULL, status, "the server is not ready");
        return;
    }
    sink->begin(sink->self, 503, "application/json", false, "Retry-After: 1\r\n");
    sink->write(sink->self, text, len);
    sink->end(sink->self);
    free(text);
}

/* owned_by: the calling tenant for its own adapters, "shared" for published ones. */
static json_t *adapter_entry(const api_t *a, const api_caller_t *who, const store_adapter_t *r)
{
    return json_pack("{s:s,s:s,s:I,s:s,s:s,s:s,s:i,s:i,s:f,s:o}", "id", r->name, "object", "model",
                     "created", (json_int_t)r->created, "owned_by",
                     r->shared ? "shared" : who->tenant_name, "root", r->name,
                     "parent", a->model_name, "version", r->version, "rank", r->rank, "alpha",
                     r->alpha, "targets", api__csv_json(r->targets));
}

void api__h_models(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    (void)job;
    store_adapter_t *rows = NULL;
    size_t n = 0;
    const api_caller_t *who = api__who(req);
    if (!api__list_adapters(a, who->tenant, sink, &rows, &n))
        return;
    json_t *data = json_array();
    json_array_append_new(
        data, json_pack("{s:s,s:s,s:I,s:s,s:s,s:n,s:i}", "id", a->model_name, "object", "model",
                        "created", (json_int_t)a->created, "owned_by", "adapterd", "root",
                        a->model_name, "parent", "max_model_len",
                        a->p.model ? a->p.model->cfg.max_pos : 0));
    for (size_t i = 0; i < n; i++)
        json_array_append_new(data, adapter_entry(a, who, &rows[i]));
    free(rows);
    api__send_json(sink, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}

void api__h_tokenize(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    static const char *const fields[] = {"prompt", "add_special_tokens", "model", NULL};
    (void)job;
    api_fail_t f;
    json_t *root = NULL;
    const char *prompt = NULL, *model = NULL;
    size_t len = 0;
    bool add_special = true;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    core_err_t err = {{0}};
    bool ok = api__parse_body(req, &root, &f) && api__check_fields(root, fields, &f) &&
              api__get_str(root, "prompt", &prompt, &len, &f) &&
              api__get_bool(root, "add_special_tokens", &add_special, &f) &&
              api__get_str(root, "model", &model, NULL, &f);
    if (ok && !prompt)
        ok = api__fail(&f, 400, "missing_field", "`prompt` is required");
    if (!ok)
        goto out;
    /* Same rules as /v1/completions: special-token text in the prompt stays text. */
    core_tok_encode_params_t tp = {.add_special = add_special, .parse_special = false};
    rc_t rc = core_tok_encode(a->p.tok, prompt, len, tp, &ids, &n_ids, &err);
    if (rc != RC_OK) {
        ok = api__fail_rc(&f, rc, &err);
        goto out;
    }
    json_t *tokens = json_array();
    for (size_t i = 0; i < n_ids; i++)
        json_array_append_new(tokens, json_integer(ids[i]));
    api__send_json(sink, 200,
                   json_pack("{s:o,s:I,s:i}", "tokens", tokens, "count", (json_int_t)n_ids,
                             "max_model_len", a->p.model ? a->p.model->cfg.max_pos : 0));
out:
    free(ids);
    json_decref(root);
    if (!ok)
        api__send_fail(sink, &f);
}

/* The tokens field: required array of ids the tokenizer knows. */
static bool detok_ids(const api_t *a, const json_t *root, int32_t **ids, size_t *n_ids,
                      api_fail_t *f)
{
    const json_t *tokens = json_object_get(root, "tokens");
    if (!tokens || json_is_null(tokens))
        return api__fail(f, 400, "missing_field", "`tokens` is required");
    if (!json_is_array(tokens))
        return api__fail(f, 400, "invalid_type", "`tokens` must be an array of token ids");
    return api__token_ids(tokens, "tokens", core_tok_n_vocab(a->p.tok), ids, n_ids, f);
}

void api__h_detokenize(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    static const char *const fields[] = {"tokens", "model", NULL};
    (void)job;
    api_fail_t f;
    json_t *root = NULL;
    const char *model = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    char *text = NULL;
    size_t len = 0;
    core_err_t err = {{0}};
    bool ok = api__parse_body(req, &root, &f) && api__check_fields(root, fields, &f) &&
              api__get_str(root, "model", &model, NULL, &f) &&
              detok_ids(a, root, &ids, &n_ids, &f);
    if (!ok)
        goto out;
    /* As vLLM's /detokenize (HF decode defaults): special tokens are kept in the text. */
    rc_t rc = core_tok_decode(a->p.tok, ids, n_ids, false, &text, &len, &err);
    if (rc != RC_OK) {
        ok = api__fail_rc(&f, rc, &err);
        goto out;
    }
    api__send_json(sink, 200, json_pack("{s:o}", "prompt", api__json_text(text, len)));
out:
    free(text);
    free(ids);
    json_decref(root);
    if (!ok)
        api__send_fail(sink, &f);
}
