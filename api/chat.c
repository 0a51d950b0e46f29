/* chat.c - POST /v1/chat/completions: messages rendered through the model's chat template
 * (core/chat.h), then generated like a completion (the job machinery of completions.c,
 * api/cmpl_int.h) with chat-shaped answers (message / delta).
 *
 * The rendered prompt is tokenized as transformers' apply_chat_template does: special-token
 * text in it is parsed (the template writes <|im_start|>, [INST], ...) and no BOS is added
 * (the template writes it). Content from clients goes through the template, so a client can
 * write special-token text into its own prompt, as with every HF-templated server.
 * max_tokens / max_completion_tokens default to the rest of the context. `logprobs` /
 * `top_logprobs` use the completions accumulator (api/logprobs.h) in OpenAI's chat shape.
 * Threads: the loop thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/cmpl_int.h"
#include "api/logprobs.h"
#include "core/chat.h"

#define CHAT_MAX_MESSAGES 1024

static const char *const chat_fields[] = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "top_k", "seed", "stop", "stream", "stream_options", "ignore_eos", "return_token_ids", "n",
    "presence_penalty", "frequency_penalty", "user", "logit_bias", "logprobs", "top_logprobs",
    "tools", "tool_choice", "response_format", "parallel_tool_calls", API_SEL_FIELDS, NULL,
};

/* Content as text: a string, null (""), or text parts [{"type": "text", "text"}]. */
static bool chat_content(const json_t *c, const char *path, json_t **out, api_fail_t *f)
{
    if (!c || json_is_null(c)) {
        *out = json_string("");
        return true;
    }
    if (json_is_string(c)) {
        *out = json_incref((json_t *)c);
        return true;
    }
    if (!json_is_array(c))
        return api__fail(f, 400, "invalid_type",
                         "`%s.content` must be a string, null or an array of text parts", path);
    char *buf = NULL;
    size_t len = 0, i;
    const json_t *part;
    json_array_foreach(c, i, part) {
        const json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0 ||
            !json_is_string(text)) {
            free(buf);
            return api__fail(f, 400, "not_supported",
                             "`%s.content[%zu]`: only {\"type\": \"text\", \"text\": ...} parts "
                             "are supported",
                             path, i);
        }
        size_t n = json_string_length(text);
        char *nb = realloc(buf, len + n + 1);
        if (!nb) {
            free(buf);
            return api__fail(f, 500, "nomem", "out of memory");
        }
        buf = nb;
        memcpy(buf + len, json_string_value(text), n);
        len += n;
    }
    *out = api__json_text(buf ? buf : "", len);
    free(buf);
    return true;
}

/* One message, normalised to {"role", "content"[, "name"]}. */
static bool chat_message(const json_t *m, size_t i, json_t *list, api_fail_t *f)
{
    static const char *const keys[] = {"role", "content", "name", NULL};
    char path[32];
    const char *role = NULL, *name = NULL;
    json_t *content = NULL;
    snprintf(path, sizeof path, "messages[%zu]", i);
    if (!json_is_object(m))
        return api__fail(f, 400, "invalid_type", "`%s` must be an object", path);
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)m, key, val) {
        bool ok = false;
        for (size_t k = 0; keys[k] && !ok; k++)
            ok = strcmp(key, keys[k]) == 0;
        if (!ok)
            return api__fail(f, 400, "unknown_field", "unknown field `%s.%.60s`", path, key);
    }
    role = json_string_value(json_object_get(m, "role"));
    if (!role || !role[0])
        return api__fail(f, 400, "missing_field", "`%s.role` must be a non-empty string", path);
    const json_t *n = json_object_get(m, "name");
    if (n && !json_is_null(n) && !(name = json_string_value(n)))
        return api__fail(f, 400, "invalid_type", "`%s.name` must be a string", path);
    if (!chat_content(json_object_get(m, "content"), path, &content, f))
        return false;
    json_t *o = json_pack("{s:s,s:o}", "role", role, "content", content);
    if (o && name)
        json_object_set_new(o, "name", json_string(name));
    return (o && json_array_append_new(list, o) == 0) ||
           api__fail(f, 500, "nomem", "out of memory");
}

static bool chat_messages(const json_t *root, json_t **out, api_fail_t *f)
{
    const json_t *msgs = json_object_get(root, "messages");
    size_t i;
    const json_t *m;
    *out = NULL;
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return api__fail(f, 400, "missing_field", "`messages` must be a non-empty array");
    if (json_array_size(msgs) > CHAT_MAX_MESSAGES)
        return api__fail(f, 400, "invalid_value", "`messages` may hold at most %d entries",
                         CHAT_MAX_MESSAGES);
    json_t *list = json_array();
    json_array_foreach(msgs, i, m) {
        if (!chat_message(m, i, list, f)) {
            json_decref(list);
            return false;
        }
    }
    *out = list;
    return true;
}

/* `logprobs` (bool) and `top_logprobs` (0..20 alternatives, only with logprobs true, as
 * OpenAI requires) become q->logprobs: -1 for none, else the alternatives per token. */
static bool chat_logprobs(const json_t *root, cmpl_req_t *q, api_fail_t *f)
{
    bool logprobs = false;
    long long top = -1;
    if (!api__get_bool(root, "logprobs", &logprobs, f) ||
        !api__get_int(root, "top_logprobs", 0, API_LP_TOP_MAX, &top, f))
        return false;
    if (top >= 0 && !logprobs)
        return api__fail(f, 400, "invalid_value",
                         "`top_logprobs` is only allowed when `logprobs` is true");
    q->logprobs = logprobs ? (top < 0 ? 0 : top) : -1;
    return true;
}

/* The fields chat accepts only at their neutral value (for now). */
static bool chat_neutral(const json_t *root, api_fail_t *f)
{
    const json_t *tools = json_object_get(root, "tools");
    const json_t *fmt = json_object_get(root, "response_format");
    if (tools && !json_is_null(tools) && !(json_is_array(tools) && !json_array_size(tools)))
        return api__fail(f, 400, "not_supported", "`tools` is not supported yet");
    const json_t *type = json_object_get(fmt, "type");
    if (fmt && !json_is_null(fmt) &&
        !(json_is_string(type) && strcmp(json_string_value(type), "text") == 0))
        return api__fail(f, 400, "not_supported",
                         "`response_format` is supported only as {\"type\": \"text\"}");
    return true;
}

/* Render and tokenize; max_tokens defaults to the rest of the context. */
static bool chat_prompt(api_t *a, const json_t *root, const json_t *msgs, cmpl_req_t *q,
                        api_fail_t *f)
{
    char *text = NULL;
    size_t len = 0;
    core_err_t err = {{0}};
    long long max_pos = a->p.model->cfg.max_pos, mct = -1;
    rc_t rc = core_chat_render(a->p.chat, msgs, true, &text, &len, &err);
    if (rc == RC_INVALID)
        return api__fail(f, 400, "invalid_messages", "%s", err.msg);
    if (rc != RC_OK)
        return api__fail(f, rc == RC_LIMIT ? 400 : 500, "chat_template", "%s", err.msg);
    core_tok_encode_params_t tp = {.add_special = false, .parse_special = true};
    rc = core_tok_encode(a->p.tok, text, len, tp, &q->ids, &q->n_ids, &err);
    free(text);
    if (rc != RC_OK)
        return api__fail_rc(f, rc, &err);
    if (!api__get_int(root, "max_completion_tokens", 0, max_pos, &mct, f))
        return false;
    const json_t *mt = json_object_get(root, "max_tokens");
    if (mct >= 0)
        q->max_tokens = mct;
    else if (!mt || json_is_null(mt))
        q->max_tokens = max_pos > (long long)q->n_ids ? max_pos - (long long)q->n_ids : 0;
    if (q->n_ids == 0 || (long long)q->n_ids + q->max_tokens > max_pos)
        return api__fail(f, 400, "context_length_exceeded",
                         "This model's maximum context length is %lld tokens; the messages "
                         "have %zu tokens and `max_tokens` is %lld",
                         max_pos, q->n_ids, q->max_tokens);
    return true;
}

void api__h_chat(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    api_fail_t f;
    json_t *root = NULL, *msgs = NULL;
    cmpl_req_t q;
    api_terms_t t;
    memset(&q, 0, sizeof q);
    memset(&t, 0, sizeof t);
    bool ok = api__parse_body(req, &root, &f) && api__check_fields(root, chat_fields, &f) &&
              api__cmpl_common(a, root, &q, &f) && chat_neutral(root, &f) &&
              chat_logprobs(root, &q, &f);
    if (ok && !a->p.chat)
        ok = api__fail(&f, 400, "no_chat_template",
                       "the served model has no chat template (tokenizer_config.json "
                       "chat_template); use /v1/completions");
    ok = ok && chat_messages(root, &msgs, &f) && api__sel_gather(a, api__who(req)->tenant, root, q.model, &t, &f) &&
         chat_prompt(a, root, msgs, &q, &f);
    json_decref(msgs);
    q.chat = true;
    api__cmpl_start(a, req, ok ? NULL : &f, root, &q, &t, sink, job);
}
