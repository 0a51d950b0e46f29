/* completions.c - POST /v1/completions (OpenAI-compatible) and the jobs it leaves pending.
 *
 * The loop thread validates every field, resolves the adapter selection (`model`,
 * `adapter`, `adapter_id`, `adapters`, `lora`: adapters.c) into one adapter set, tokenizes
 * and submits to the engine; the engine retains the set, so ours is released right after.
 * From then on the job is driven by engine events on the engine thread: a streaming job
 * writes one SSE chunk per event, a plain job accumulates text and answers at DONE.
 *
 * Job lifetime: created at submit, freed only by api_job_free (the server calls it after
 * it has seen end). The engine thread touches the job only inside its events and the
 * final event's last act is sink->end, so nothing reads the job after the server may free
 * it. The one field both threads touch is `begun` (the stream's begin must precede any
 * write, whichever thread gets there first), guarded by the job's mutex.
 * Prompt text is encoded with the tokenizer's post-processor (BOS where the model wants
 * one) and special-token text is NOT parsed: "<s>" in a prompt is five characters, so a
 * client cannot forge control tokens. Token-id prompts are used exactly as given. */
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/cmpl_int.h"
#include "api/logprobs.h"
#include "api/metrics.h"

#define CMPL_STOP_MAX_BYTES 256
#define CMPL_DEFAULT_MAX_TOKENS 16



typedef struct {
    api_job_t base;    /* first: the generic job (ops) */
    core_engine_t *engine;
    api_sink_t *sink;  /* borrowed: the server keeps it until api_job_free */
    uint64_t req_id;
    pthread_mutex_t mu;
    bool begun;        /* stream: begin() called (guarded by mu) */
    bool stream, include_usage, return_token_ids;
    bool sent_first;   /* stream: the first chunk carried prompt_token_ids */
    bool oom;          /* plain: an append failed; answer 500 at DONE */
    char id[40];
    int64_t created;
    char *model;
    int32_t *prompt_ids; /* kept only for return_token_ids */
    size_t n_prompt;
    char *text;          /* plain: generated text so far */
    size_t n_text, cap_text;
    int32_t *gen;        /* return_token_ids: generated ids */
    size_t n_gen, cap_gen;
    api_lp_t *lp;        /* logprobs / score: per-token log-probabilities */
    size_t lp_sent;      /* stream: entries already sent */
    bool score, echo, chat;
    bool sent_role;      /* chat stream: the first delta (with the role) went out */
    double t_submit, t_last, ttft; /* metrics: monotonic seconds (engine thread after submit) */
    bool got_first;
    size_t n_target;
    char *echo_text;     /* echo: the prompt as text */
    size_t n_echo;
    /* While the adapters load (loop thread only): the request, its body and its terms. */
    api_t *api;
    store_wait_t *wait;  /* set while waiting; cleared by the ready callback or cancel */
    json_t *root;        /* keeps q's borrowed strings alive */
    cmpl_req_t q;        /* q.ids owned by the job while waiting */
    api_terms_t terms;
    /* Tenancy: the fair-share group and weight, the quota hold, the access-log note. */
    char tenant[STORE_NAME_MAX + 1];
    double share;
    api_ticket_t ticket; /* released at free (loop thread) */
    int n_used;          /* prompt + generated tokens, written at DONE (engine thread) */
    api_note_t *note;    /* the server's, valid until after end(); or NULL */
    json_t *route_names; /* return_routing: the router's expert names, in expert order */
} cmpl_job_t;

static const char *const cmpl_fields[] = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
    "stream", "stream_options", "ignore_eos", "return_token_ids", "n", "echo", "logprobs",
    "presence_penalty", "frequency_penalty", "user", "suffix", "best_of", "logit_bias",
    API_SEL_FIELDS, NULL,
};

/* ---- validation (loop thread) ---- */

static bool not_supported(api_fail_t *f, const char *field, const char *neutral)
{
    return api__fail(f, 400, "not_supported", "`%s` is not supported yet (only %s)", field,
                     neutral);
}

/* OpenAI fields we accept only at the value that changes nothing. */
static bool cmpl_neutral(const json_t *root, api_fail_t *f)
{
    long long n = 1, best_of = 1;
    double presence = 0, frequency = 0;
    const char *user = NULL, *suffix = NULL;
    size_t suffix_len = 0;
    if (!api__get_int(root, "n", LLONG_MIN, LLONG_MAX, &n, f) ||
        !api__get_int(root, "best_of", LLONG_MIN, LLONG_MAX, &best_of, f) ||
        !api__get_num(root, "presence_penalty", -2, 2, false, &presence, f) ||
        !api__get_num(root, "frequency_penalty", -2, 2, false, &frequency, f) ||
        !api__get_str(root, "user", &user, NULL, f) ||
        !api__get_str(root, "suffix", &suffix, &suffix_len, f))
        return false;
    const json_t *bias = json_object_get(root, "logit_bias");
    if (n != 1)
        return not_supported(f, "n", "1");
    if (best_of != 1)
        return not_supported(f, "best_of", "1");
    if (presence != 0)
        return not_supported(f, "presence_penalty", "0");
    if (frequency != 0)
        return not_supported(f, "frequency_penalty", "0");
    if (suffix_len)
        return not_supported(f, "suffix", "null or \"\"");
    if (bias && !json_is_null(bias) && !(json_is_object(bias) && json_object_size(bias) == 0))
        return not_supported(f, "logit_bias", "null or {}");
    return true;
}

/* A string, an array of token ids, or a one-element array of either. */
static bool cmpl_prompt(const json_t *root, int n_vocab, cmpl_req_t *q, api_fail_t *f)
{
    const json_t *p = json_object_get(root, "prompt");
    if (!p || json_is_null(p))
        return api__fail(f, 400, "missing_field", "`prompt` is required");
    if (json_is_array(p) && json_array_size(p) == 1) {
        const json_t *e = json_array_get(p, 0);
        if (json_is_string(e) || json_is_array(e))
            p = e;
    }
    if (json_is_string(p)) {
        q->text = json_string_value(p);
        q->text_len = json_string_length(p);
        if (q->text_len == 0)
            return api__fail(f, 400, "invalid_value", "`prompt` must not be empty");
        return true;
    }
    if (!json_is_array(p))
        return api__fail(f, 400, "invalid_type",
                         "`prompt` must be a string, an array of token ids, or a one-element "
                         "array of either");
    if (json_array_size(p) == 0)
        return api__fail(f, 400, "invalid_value", "`prompt` must not be empty");
    const json_t *e0 = json_array_get(p, 0);
    if (json_is_string(e0) || json_is_array(e0))
        return api__fail(f, 400, "not_supported", "only one prompt per request is supported");
    return api__token_ids(p, "prompt", n_vocab, &q->ids, &q->n_ids, f);
}

static bool cmpl_stop_one(const json_t *v, const char *what, cmpl_req_t *q, api_fail_t *f)
{
    if (!json_is_string(v))
        return api__fail(f, 400, "invalid_type", "`%s` must be a string", what);
    size_t len = json_string_length(v);
    const char *s = json_string_value(v);
    if (len < 1 || len > CMPL_STOP_MAX_BYTES)
        return api__fail(f, 400, "invalid_value", "`%s` must be 1 to %d bytes long, got %zu",
                         what, CMPL_STOP_MAX_BYTES, len);
    if (strlen(s) != len)
        return api__fail(f, 400, "invalid_value", "`%s` must not contain NUL characters", what);
    q->stop[q->n_stop++] = s;
    return true;
}

static bool cmpl_stop(const json_t *root, cmpl_req_t *q, api_fail_t *f)
{
    const json_t *v = json_object_get(root, "stop");
    if (!v || json_is_null(v))
        return true;
    if (json_is_string(v))
        return cmpl_stop_one(v, "stop", q, f);
    if (!json_is_array(v))
        return api__fail(f, 400, "invalid_type", "`stop` must be a string or an array of strings");
    if (json_array_size(v) > CORE_MAX_STOP)
        return api__fail(f, 400, "invalid_value", "`stop` may hold at most %d strings, got %zu",
                         CORE_MAX_STOP, json_array_size(v));
    for (size_t i = 0; i < json_array_size(v); i++) {
        char what[32];
        snprintf(what, sizeof what, "stop[%zu]", i);
        if (!cmpl_stop_one(json_array_get(v, i), what, q, f))
            return false;
    }
    return true;
}

static bool cmpl_stream_options(const json_t *root, cmpl_req_t *q, api_fail_t *f)
{
    const json_t *v = json_object_get(root, "stream_options");
    const char *key;
    json_t *val;
    if (!v || json_is_null(v))
        return true;
    if (!json_is_object(v))
        return api__fail(f, 400, "invalid_type", "`stream_options` must be an object");
    if (!q->stream)
        return api__fail(f, 400, "invalid_value",
                         "`stream_options` is only allowed when `stream` is true");
    json_object_foreach((json_t *)v, key, val) {
        if (strcmp(key, "include_usage") != 0)
            return api__fail(f, 400, "unknown_field", "unknown field `stream_options.%.100s`",
                             key);
    }
    if (!api__get_bool(v, "include_usage", &q->include_usage, f)) {
        api__fail(f, 400, "invalid_type", "`stream_options.include_usage` must be a boolean");
        return false;
    }
    return true;
}

bool api__cmpl_common(const api_t *a, const json_t *root, cmpl_req_t *q, api_fail_t *f)
{
    int max_pos = a->p.model->cfg.max_pos;
    q->max_tokens = CMPL_DEFAULT_MAX_TOKENS;
    q->temperature = 1;
    q->top_p = 1;
    q->seed = -1;
    q->logprobs = -1;
    if (!cmpl_neutral(root, f) || !api__get_str(root, "model", &q->model, NULL, f) ||
        !api__get_int(root, "max_tokens", 0, max_pos, &q->max_tokens, f) ||
        !api__get_num(root, "temperature", 0, 2, false, &q->temperature, f) ||
        !api__get_num(root, "top_p", 0, 1, true, &q->top_p, f) ||
        !api__get_int(root, "top_k", -1, INT_MAX, &q->top_k, f) ||
        !api__get_int(root, "seed", 0, LLONG_MAX, &q->seed, f) ||
        !api__get_bool(root, "stream", &q->stream, f) ||
        !api__get_bool(root, "ignore_eos", &q->ignore_eos, f) ||
        !api__get_bool(root, "return_token_ids", &q->return_token_ids, f) ||
        !cmpl_stream_options(root, q, f) || !cmpl_stop(root, q, f))
        return false;
    if (!q->model)
        return api__fail(f, 400, "missing_field", "`model` is required");
    q->has_seed = q->seed >= 0;
    if (q->top_k < 0)
        q->top_k = 0; /* -1 (vLLM) and 0 (OpenAI-style) both mean off */
    return true;
}

static bool cmpl_parse(const api_t *a, const json_t *root, cmpl_req_t *q, api_fail_t *f)
{
    memset(q, 0, sizeof *q);
    if (!api__check_fields(root, cmpl_fields, f) || !api__cmpl_common(a, root, q, f) ||
        !api__get_int(root, "logprobs", 0, API_LP_TOP_MAX, &q->logprobs, f) ||
        !api__get_bool(root, "echo", &q->echo, f))
        return false;
    if (q->echo && q->stream)
        return not_supported(f, "echo", "false when `stream` is true");
    return cmpl_prompt(root, a->p.model->cfg.n_vocab, q, f);
}

/* ---- prompt, context (loop thread) ---- */

static bool cmpl_tokenize(api_t *a, cmpl_req_t *q, api_fail_t *f)
{
    int max_pos = a->p.model->cfg.max_pos;
    if (q->text) {
        core_err_t err = {{0}};
        core_tok_encode_params_t tp = {.add_special = true, .parse_special = false};
        rc_t rc = core_tok_encode(a->p.tok, q->text, q->text_len, tp, &q->ids, &q->n_ids, &err);
        if (rc != RC_OK)
            return api__fail_rc(f, rc, &err);
        if (q->n_ids == 0)
            return api__fail(f, 400, "invalid_value", "`prompt` encodes to no tokens");
    }
    if ((long long)q->n_ids + q->max_tokens > max_pos)
        return api__fail(f, 400, "context_length_exceeded",
                         "This model's maximum context length is %d tokens; the prompt has %zu "
                         "tokens and `max_tokens` is %lld (%lld in total). Shorten the prompt "
                         "or lower `max_tokens`.",
                         max_pos, q->n_ids, q->max_tokens, (long long)q->n_ids + q->max_tokens);
    return true;
}

/* ---- responses (engine thread, except job creation) ---- */

static json_t *ids_json(const int32_t *ids, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        json_array_append_new(arr, json_integer(ids[i]));
    return arr;
}

static json_t *usage_json(const core_event_t *ev)
{
    return json_pack("{s:i,s:i,s:i}", "prompt_tokens", ev->n_prompt, "completion_tokens",
                     ev->n_gen, "total_tokens", ev->n_prompt + ev->n_gen);
}

static const char *finish_str(core_finish_t fin)
{
    return fin == CORE_FINISH_LENGTH ? "length" : "stop";
}

/* {"id", "object", "created", "model", "choices": [choice]} with choice stolen. */
static json_t *cmpl_envelope(const cmpl_job_t *j, json_t *choices)
{
    const char *object = !j->chat ? "text_completion"
                         : j->stream ? "chat.completion.chunk" : "chat.completion";
    return json_pack("{s:s,s:s,s:I,s:s,s:o}", "id", j->id, "object", object,
                     "created", (json_int_t)j->created, "model", j->model, "choices", choices);
}

/* A chat choice: the whole message (plain) or a delta (stream; the first carries the
 * role, the last is empty with the finish reason). */
static json_t *chat_choice(cmpl_job_t *j, const char *text, size_t len, const char *finish)
{
    json_t *msg = json_object();
    if (!j->stream || !j->sent_role)
        json_object_set_new(msg, "role", json_string("assistant"));
    if (!j->stream || len || !finish)
        json_object_set_new(msg, "content", api__json_text(text, len));
    j->sent_role = true;
    return json_pack("{s:i,s:o,s:n,s:o}", "index", 0, j->stream ? "delta" : "message", msg,
                     "logprobs", "finish_reason", finish ? json_string(finish) : json_null());
}

static json_t *cmpl_choice(const char *text, size_t len, const char *finish)
{
    return json_pack("{s:i,s:o,s:n,s:o}", "index", 0, "text", api__json_text(text, len),
                     "logprobs", "finish_reason", finish ? json_string(finish) : json_null());
}

/* The logprobs of entries [from, to) in the job's shape: chat's {"content": [...]} or
 * completions' legacy {"tokens", "token_logprobs", ...}. */
static json_t *choice_lp_json(const cmpl_job_t *j, size_t from, size_t to)
{
    return j->chat ? api__lp_chat_json(j->lp, from, to) : api__lp_json(j->lp, from, to);
}

static json_t *cmpl_choice_of(cmpl_job_t *j, const char *text, size_t len, const char *finish)
{
    return j->chat ? chat_choice(j, text, len, finish) : cmpl_choice(text, len, finish);
}


static void sse_write(cmpl_job_t *j, json_t *doc)
{
    size_t len = 0;
    char *s = api__dump(doc, &len);
    json_decref(doc);
    char *buf = s ? malloc(len + 8) : NULL;
    if (buf) {
        memcpy(buf, "data: ", 6);
        memcpy(buf + 6, s, len);
        memcpy(buf + 6 + len, "\n\n", 2);
        j->sink->write(j->sink->self, buf, len + 8);
    }
    free(buf);
    free(s);
}

static void sse_chunk(cmpl_job_t *j, const char *text, size_t len, const char *finish,
                      const int32_t *token)
{
    json_t *choice = cmpl_choice_of(j, text, len, finish);
    if (j->lp && api__lp_count(j->lp) > j->lp_sent) { /* the tokens since the last chunk */
        size_t n = api__lp_count(j->lp);
        json_object_set_new(choice, "logprobs", choice_lp_json(j, j->lp_sent, n));
        j->lp_sent = n;
    }
    if (j->return_token_ids) {
        json_object_set_new(choice, "token_ids", ids_json(token, token ? 1 : 0));
        if (!j->sent_first)
            json_object_set_new(choice, "prompt_token_ids", ids_json(j->prompt_ids, j->n_prompt));
    }
    j->sent_first = true;
    sse_write(j, cmpl_envelope(j, json_pack("[o]", choice)));
}

/* The stream's begin must precede the first write; the loop thread (right after submit)
 * and the engine thread (first event) race for it. */
static void stream_begin_once(cmpl_job_t *j)
{
    pthread_mutex_lock(&j->mu);
    if (!j->begun) {
        j->begun = true;
        j->sink->begin(j->sink->self, 200, "text/event-stream", true, "Cache-Control: no-cache\r\n");
    }
    pthread_mutex_unlock(&j->mu);
}

/* return_routing: {"adapters": [names], "layers": [[mean weight per adapter] per layer]}. */
static json_t *routing_json(const cmpl_job_t *j, const core_event_t *ev)
{
    json_t *layers = json_array();
    for (int l = 0; layers && l < ev->routing_layers; l++) {
        json_t *row = json_array();
        for (int e = 0; row && e < ev->routing_experts; e++)
            /* 6 decimals: the float's digits, not its double expansion's */
            json_array_append_new(
                row, json_real(round(ev->routing[l * ev->routing_experts + e] * 1e6) / 1e6));
        json_array_append_new(layers, row);
    }
    return json_pack("{s:O,s:o}", "adapters", j->route_names, "layers", layers);
}

static void stream_event(cmpl_job_t *j, const core_event_t *ev)
{
    stream_begin_once(j);
    if (ev->kind == CORE_EV_TOKEN) {
        if (ev->text_len || j->return_token_ids)
            sse_chunk(j, ev->text, ev->text_len, NULL, &ev->token);
        return;
    }
    if (ev->kind == CORE_EV_DONE && ev->text_len)
        sse_chunk(j, ev->text, ev->text_len, NULL, NULL);
    if (ev->kind == CORE_EV_ERROR || ev->finish == CORE_FINISH_CANCELLED) {
        bool err = ev->kind == CORE_EV_ERROR;
        sse_write(j, api__error_json("server_error", err ? rc_name(ev->rc) : "cancelled",
                                     err && ev->message ? ev->message : "the request was cancelled"));
    } else {
        sse_chunk(j, "", 0, finish_str(ev->finish), NULL);
        if (ev->routing && j->route_names) { /* after the last choice, like usage */
            json_t *doc = cmpl_envelope(j, json_array());
            json_object_set_new(doc, "routing", routing_json(j, ev));
            sse_write(j, doc);
        }
        if (j->include_usage) {
            json_t *doc = cmpl_envelope(j, json_array());
            json_object_set_new(doc, "usage", usage_json(ev));
            sse_write(j, doc);
        }
    }
    j->sink->write(j->sink->self, "data: [DONE]\n\n", 14);
    j->sink->end(j->sink->self); /* last touch of j: the server may free it now */
}

static void plain_append(cmpl_job_t *j, const core_event_t *ev)
{
    if (ev->text_len && !j->oom) {
        if (j->n_text + ev->text_len > j->cap_text) {
            size_t cap = (j->cap_text + ev->text_len) * 2;
            char *t = realloc(j->text, cap);
            if (!t) {
                j->oom = true;
                return;
            }
            j->text = t;
            j->cap_text = cap;
        }
        memcpy(j->text + j->n_text, ev->text, ev->text_len);
        j->n_text += ev->text_len;
    }
    if (ev->kind == CORE_EV_TOKEN && j->return_token_ids && !j->oom) {
        if (j->n_gen == j->cap_gen) {
            size_t cap = j->cap_gen ? j->cap_gen * 2 : 64;
            int32_t *g = realloc(j->gen, cap * sizeof *g);
            if (!g) {
                j->oom = true;
                return;
            }
            j->gen = g;
            j->cap_gen = cap;
        }
        j->gen[j->n_gen++] = ev->token;
    }
}

/* The choice: echoed prompt + generated text, and the logprobs of both when asked. */
static json_t *plain_choice(cmpl_job_t *j, const core_event_t *ev)
{
    json_t *choice;
    if (j->echo) {
        char *all = malloc(j->n_echo + j->n_text + 1);
        if (!all)
            return NULL;
        memcpy(all, j->echo_text, j->n_echo);
        if (j->n_text)
            memcpy(all + j->n_echo, j->text, j->n_text);
        choice = cmpl_choice(all, j->n_echo + j->n_text, finish_str(ev->finish));
        free(all);
    } else {
        choice = cmpl_choice_of(j, j->text, j->n_text, finish_str(ev->finish));
    }
    if (choice && j->lp)
        json_object_set_new(choice, "logprobs", choice_lp_json(j, 0, api__lp_count(j->lp)));
    return choice;
}

static void plain_done(cmpl_job_t *j, const core_event_t *ev)
{
    if (ev->finish == CORE_FINISH_CANCELLED) {
        api_send_error(j->sink, 503, NULL, "cancelled", "the request was cancelled");
        return;
    }
    if (j->oom) {
        api_send_error(j->sink, 500, NULL, "nomem", "out of memory collecting the completion");
        return;
    }
    json_t *choice = plain_choice(j, ev);
    if (j->return_token_ids) {
        json_object_set_new(choice, "prompt_token_ids", ids_json(j->prompt_ids, j->n_prompt));
        json_object_set_new(choice, "token_ids", ids_json(j->gen, j->n_gen));
    }
    json_t *doc = cmpl_envelope(j, json_pack("[o]", choice));
    json_object_set_new(doc, "usage", usage_json(ev));
    if (ev->routing && j->route_names)
        json_object_set_new(doc, "routing", routing_json(j, ev));
    api__send_json(j->sink, 200, doc);
}

static void plain_event(cmpl_job_t *j, const core_event_t *ev)
{
    if (ev->kind == CORE_EV_ERROR) {
        api_send_error(j->sink, 500, NULL, rc_name(ev->rc),
                       ev->message ? ev->message : rc_str(ev->rc));
        return;
    }
    plain_append(j, ev);
    if (ev->kind == CORE_EV_DONE)
        plain_done(j, ev);
}

/* PROMPT rows: row r is the distribution of prompt token pos0 + r + 1. A score keeps
 * only the target's tokens. */
static void lp_prompt_rows(cmpl_job_t *j, const core_event_t *ev)
{
    size_t first = j->score ? j->n_prompt - j->n_target : 1;
    for (int r = 0; r < ev->n_rows; r++) {
        size_t next = (size_t)ev->pos0 + (size_t)r + 1;
        if (next < first || next >= j->n_prompt)
            continue;
        if (!api__lp_add(j->lp, ev->logits + (size_t)r * (size_t)ev->n_vocab, ev->n_vocab,
                         j->prompt_ids[next]))
            j->oom = true;
    }
}

/* POST /v1/score answers at DONE. */
static void score_done(cmpl_job_t *j, const core_event_t *ev)
{
    if (ev->kind == CORE_EV_ERROR || ev->finish == CORE_FINISH_CANCELLED || j->oom) {
        api_send_error(j->sink, ev->kind == CORE_EV_ERROR ? 500 : 503, NULL,
                       ev->kind == CORE_EV_ERROR ? rc_name(ev->rc) : "cancelled",
                       ev->kind == CORE_EV_ERROR && ev->message ? ev->message
                                                                : "the request was not scored");
        return;
    }
    size_t n = api__lp_count(j->lp);
    double total = api__lp_sum(j->lp, 0);
    json_t *doc = json_pack("{s:s,s:s,s:I,s:s,s:I,s:I,s:o,s:f,s:f}", "id", j->id, "object",
                            "score", "created", (json_int_t)j->created, "model", j->model,
                            "prompt_tokens", (json_int_t)(j->n_prompt - j->n_target),
                            "target_tokens", (json_int_t)n, "tokens",
                            api__lp_tokens_json(j->lp, 0, n), "total_logprob", total, "loss",
                            n ? -total / (double)n : 0.0);
    api__send_json(j->sink, 200, doc);
}

static double cmpl_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Time to first token, inter-token times, and at the end the whole generation. */
static void cmpl_observe(cmpl_job_t *j, const core_event_t *ev)
{
    double now = cmpl_now();
    if (ev->kind == CORE_EV_TOKEN) {
        if (j->got_first)
            api_metrics_observe_itl(now - j->t_last);
        else
            j->ttft = now - j->t_submit;
        j->got_first = true;
        j->t_last = now;
    } else if (ev->kind != CORE_EV_PROMPT) {
        api_metrics_observe_generation(j->score ? "score" : j->chat ? "chat" : "completion",
                                       j->got_first ? j->ttft : -1, now - j->t_submit,
                                       ev->n_prompt, ev->n_gen);
        api_metrics_observe_tenant_tokens(j->tenant, ev->n_prompt, ev->n_gen);
        j->n_used = ev->n_prompt + ev->n_gen; /* read at free, after end() */
        if (j->note) {
            j->note->n_prompt = ev->n_prompt;
            j->note->n_gen = ev->n_gen;
        }
    }
}

/* Engine thread. */
static void cmpl_on_event(void *user, const core_event_t *ev)
{
    cmpl_job_t *j = user;
    cmpl_observe(j, ev); /* before the final event's answer: the job may be freed after it */
    if (ev->kind == CORE_EV_PROMPT) {
        if (j->lp)
            lp_prompt_rows(j, ev);
        return;
    }
    if (j->score) {
        if (ev->kind != CORE_EV_TOKEN)
            score_done(j, ev);
        return;
    }
    if (ev->kind == CORE_EV_TOKEN && j->lp && ev->logits &&
        !api__lp_add(j->lp, ev->logits, ev->n_vocab, ev->token))
        j->oom = true;
    if (j->stream)
        stream_event(j, ev);
    else
        plain_event(j, ev);
}

/* ---- jobs (loop thread) ---- */

static void cmpl_job_cancel(api_t *a, api_job_t *job);
static void cmpl_job_free(api_t *a, api_job_t *job);
static const api_job_ops_t cmpl_job_ops = {cmpl_job_cancel, cmpl_job_free};

/* What logprobs, echo and score keep: the prompt ids (PROMPT rows name the token that
 * follows), the accumulator and the echoed text. */
static bool cmpl_job_lp(api_t *a, cmpl_job_t *j, const cmpl_req_t *q)
{
    j->score = q->score;
    j->echo = q->echo;
    j->n_target = q->n_target;
    if (q->echo) {
        core_err_t err;
        if (q->text) {
            j->echo_text = malloc(q->text_len + 1);
            if (!j->echo_text)
                return false;
            memcpy(j->echo_text, q->text, q->text_len);
            j->n_echo = q->text_len;
        } else if (core_tok_decode(a->p.tok, q->ids, q->n_ids, false, &j->echo_text, &j->n_echo,
                                   &err) != RC_OK) {
            return false;
        }
    }
    if (q->logprobs < 0 && !q->score)
        return true;
    size_t offset0 = q->echo ? 0 : (q->text ? q->text_len : 0);
    j->lp = api__lp_new(a->p.tok, q->logprobs < 0 ? 0 : (int)q->logprobs, offset0);
    if (!j->lp)
        return false;
    /* echo: the first prompt token has no distribution (null), as in OpenAI's answers */
    return !(q->echo && q->n_ids && !api__lp_add(j->lp, NULL, 0, q->ids[0]));
}

static cmpl_job_t *cmpl_job_new(api_t *a, const cmpl_req_t *q, api_sink_t *sink)
{
    cmpl_job_t *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    pthread_mutex_init(&j->mu, NULL);
    j->base.ops = &cmpl_job_ops;
    j->engine = a->p.engine;
    j->api = a;
    j->sink = sink;
    j->stream = q->stream;
    j->include_usage = q->include_usage;
    j->return_token_ids = q->return_token_ids;
    j->created = (int64_t)time(NULL);
    j->chat = q->chat;
    snprintf(j->id, sizeof j->id, "%s-%016llx%08llx",
             q->score ? "score" : q->chat ? "chatcmpl" : "cmpl",
             (unsigned long long)api__rand(a), (unsigned long long)(api__rand(a) >> 32));
    j->model = strdup(q->model);
    bool keep_ids = q->return_token_ids || q->logprobs >= 0 || q->score || q->echo;
    if (keep_ids && q->n_ids) {
        j->prompt_ids = malloc(q->n_ids * sizeof *j->prompt_ids);
        if (j->prompt_ids)
            memcpy(j->prompt_ids, q->ids, q->n_ids * sizeof *j->prompt_ids);
        j->n_prompt = q->n_ids;
    }
    if (!j->model || (keep_ids && q->n_ids && !j->prompt_ids) || !cmpl_job_lp(a, j, q)) {
        api_job_free(a, &j->base);
        return NULL;
    }
    return j;
}

static core_request_t cmpl_request(api_t *a, const cmpl_req_t *q, const api_sel_t *sel,
                                   cmpl_job_t *j)
{
    core_request_t r = core_request_default();
    r.prompt = q->ids;
    r.n_prompt = (int)q->n_ids;
    r.aset = sel->aset;
    r.router = sel->router;
    r.route = sel->route;
    r.want_routing = sel->want_routing;
    r.group = j->tenant; /* fair share across tenants, weighted by their share */
    r.group_weight = j->share;
    r.sampling.temperature = (float)q->temperature;
    r.sampling.top_p = (float)q->top_p;
    r.sampling.top_k = (int)q->top_k;
    r.sampling.seed = q->has_seed ? (uint64_t)q->seed : api__rand(a);
    r.max_tokens = (int)q->max_tokens;
    r.ignore_eos = q->ignore_eos;
    for (int i = 0; i < q->n_stop; i++)
        r.stop[i] = q->stop[i];
    r.n_stop = q->n_stop;
    r.want_logits = q->logprobs >= 0;
    r.want_prompt_logits = q->score || (q->echo && q->logprobs >= 0);
    r.on_event = cmpl_on_event;
    r.user = j;
    return r;
}

static json_t *route_names(const core_router_t *r)
{
    json_t *a = json_array();
    for (int e = 0; a && e < r->n_experts; e++)
        json_array_append_new(a, json_string(r->names[e]));
    return a;
}

/* Submit j to the engine. The engine holds its own reference to the set after submit.
 * RC_INVALID from the engine (e.g. a request that can never fit the KV budget) is 400
 * with the engine's message; RC_BUSY (queue full) is 429 with Retry-After. */
static bool cmpl_submit(api_t *a, cmpl_job_t *j, const cmpl_req_t *q, const api_sel_t *sel,
                        api_fail_t *f)
{
    core_err_t err = {{0}};
    if (!a->p.engine)
        return api__fail(f, 503, "no_engine", "the generation engine is not running");
    core_request_t r = cmpl_request(a, q, sel, j);
    if (sel->router && sel->want_routing && !(j->route_names = route_names(sel->router)))
        return api__fail(f, 500, "nomem", "out of memory");
    if (j->note)
        snprintf(j->note->adapter, sizeof j->note->adapter, "%.127s", sel->group);
    j->t_submit = cmpl_now(); /* before submit: the first event may come at once */
    rc_t rc = core_engine_submit(a->p.engine, &r, &j->req_id, &err);
    if (rc == RC_BUSY)
        return api__fail(f, 429, "server_busy", "the server is busy; retry shortly");
    if (rc != RC_OK)
        return api__fail_rc(f, rc, &err);
    if (q->stream)
        stream_begin_once(j);
    return true;
}

/* The adapters are resident (the wants hold them): build the set and submit. */
static bool cmpl_build_submit(api_t *a, cmpl_job_t *j, const cmpl_req_t *q, api_terms_t *t,
                              api_fail_t *f)
{
    api_sel_t sel;
    memset(&sel, 0, sizeof sel);
    bool ok = (t->n == 0 || api__sel_build(t, &sel, f)) && cmpl_submit(a, j, q, &sel, f);
    api__terms_release(t);
    api__sel_clear(&sel); /* after submit the engine holds its own reference */
    return ok;
}

/* What the job kept for the wait, dropped once the request is submitted or failed. */
static void cmpl_wait_clear(cmpl_job_t *j)
{
    api__terms_release(&j->terms);
    free(j->q.ids);
    j->q.ids = NULL;
    json_decref(j->root);
    j->root = NULL;
}

/* Store callback: the adapters of a waiting job loaded (or failed to). */
static void cmpl_on_ready(void *user, rc_t rc, const core_err_t *err)
{
    cmpl_job_t *j = user;
    api_fail_t f;
    j->wait = NULL;
    bool ok = rc == RC_OK ? cmpl_build_submit(j->api, j, &j->q, &j->terms, &f)
                          : api__acquire_fail(rc, err, &f);
    cmpl_wait_clear(j);
    if (!ok)
        api__send_fail(j->sink, &f); /* ends the request; the server then frees the job */
}

/* Acquire the job's adapters; submit now when they are resident, else wait.
 * OUT: *pending. On failure nothing is pending. */
static bool cmpl_acquire(api_t *a, cmpl_job_t *j, bool *pending, api_fail_t *f)
{
    core_err_t err = {{0}};
    *pending = false;
    if (j->terms.n == 0)
        return cmpl_build_submit(a, j, &j->q, &j->terms, f);
    rc_t rc = store_acquire(a->p.store, j->terms.tenant, j->terms.want, j->terms.n, cmpl_on_ready,
                            j, &j->wait, &err);
    if (rc != RC_OK)
        return api__acquire_fail(rc, &err, f);
    if (!j->wait)
        return cmpl_build_submit(a, j, &j->q, &j->terms, f);
    *pending = true;
    return true;
}

/* A validated, tokenized request (q, its body root and selection terms t, all taken over
 * here) becomes a job: submitted now, or waiting for its adapters. */
/* The caller's quotas admit the request (prompt + max_tokens tokens), held by the job. */
static bool cmpl_job_tenant(api_t *a, const api_request_t *req, const cmpl_req_t *q,
                            cmpl_job_t *j, api_fail_t *f)
{
    const api_caller_t *who = api__who(req);
    snprintf(j->tenant, sizeof j->tenant, "%s", who->tenant_name);
    j->share = who->quota.share;
    j->note = req->note;
    int64_t tokens = (int64_t)q->n_ids + (q->score ? 0 : (int64_t)q->max_tokens);
    return api__quota_admit(a, who, tokens, &j->ticket, f);
}

void api__cmpl_start(api_t *a, const api_request_t *req, const api_fail_t *failed, json_t *root,
                     cmpl_req_t *q, api_terms_t *t, api_sink_t *sink, api_job_t **job)
{
    api_fail_t f;
    bool pending = false;
    if (failed) {
        free(q->ids);
        json_decref(root);
        api__send_fail(sink, failed);
        return;
    }
    cmpl_job_t *j = cmpl_job_new(a, q, sink);
    bool ok = j != NULL || api__fail(&f, 500, "nomem", "out of memory");
    ok = ok && cmpl_job_tenant(a, req, q, j, &f);
    if (ok) { /* the job owns the request from here */
        j->root = root;
        j->q = *q;
        j->terms = *t;
        root = NULL;
        q->ids = NULL;
        ok = cmpl_acquire(a, j, &pending, &f);
    }
    if (j && !pending)
        cmpl_wait_clear(j);
    if (ok) {
        *job = &j->base;
    } else if (j) {
        api_job_free(a, &j->base);
    }
    free(q->ids);
    json_decref(root);
    if (!ok)
        api__send_fail(sink, &f);
}

void api__h_completions(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    api_fail_t f;
    json_t *root = NULL;
    cmpl_req_t q;
    api_terms_t t;
    memset(&q, 0, sizeof q);
    memset(&t, 0, sizeof t);
    bool ok = api__parse_body(req, &root, &f) && cmpl_parse(a, root, &q, &f) &&
              api__sel_gather(a, api__who(req)->tenant, root, q.model, &t, &f) && cmpl_tokenize(a, &q, &f);
    api__cmpl_start(a, req, ok ? NULL : &f, root, &q, &t, sink, job);
}

/* ---- POST /v1/score: log-probabilities of a target after a prompt ---- */

static const char *const score_fields[] = {"model", "prompt", "target", API_SEL_FIELDS, NULL};

/* The text prompt + target encoded as one (with the model's special tokens, as a
 * completion would), the target being the ids past the prompt's own encoding - the
 * lm-evaluation-harness split, which keeps a sentencepiece word boundary where the text
 * has it instead of scoring a stray "▁" token. */
static bool score_tokens(api_t *a, const char *prompt, size_t n_prompt, const char *target,
                         size_t n_target, cmpl_req_t *q, api_fail_t *f)
{
    core_err_t err = {{0}};
    int32_t *pid = NULL;
    size_t np = 0;
    core_tok_encode_params_t pp = {.add_special = true, .parse_special = false};
    char *both = malloc(n_prompt + n_target + 1);
    if (!both)
        return api__fail(f, 500, "nomem", "out of memory");
    memcpy(both, prompt, n_prompt);
    memcpy(both + n_prompt, target, n_target);
    rc_t rc = core_tok_encode(a->p.tok, both, n_prompt + n_target, pp, &q->ids, &q->n_ids, &err);
    if (rc == RC_OK)
        rc = core_tok_encode(a->p.tok, prompt, n_prompt, pp, &pid, &np, &err);
    free(both);
    free(pid);
    if (rc != RC_OK)
        return api__fail_rc(f, rc, &err);
    if (q->n_ids <= np || np == 0)
        return api__fail(f, 400, "invalid_value", "`target` adds no tokens to `prompt`");
    q->n_target = q->n_ids - np;
    if (q->n_ids > (size_t)a->p.model->cfg.max_pos)
        return api__fail(f, 400, "context_length_exceeded",
                         "This model's maximum context length is %d tokens; prompt and target "
                         "have %zu",
                         a->p.model->cfg.max_pos, q->n_ids);
    return true;
}

static bool score_parse(api_t *a, const json_t *root, cmpl_req_t *q, api_fail_t *f)
{
    const char *prompt = NULL, *target = NULL;
    size_t n_prompt = 0, n_target = 0;
    memset(q, 0, sizeof *q);
    q->logprobs = -1;
    q->score = true;
    if (!api__check_fields(root, score_fields, f) ||
        !api__get_str(root, "model", &q->model, NULL, f) ||
        !api__get_str(root, "prompt", &prompt, &n_prompt, f) ||
        !api__get_str(root, "target", &target, &n_target, f))
        return false;
    if (!q->model)
        return api__fail(f, 400, "missing_field", "`model` is required");
    if (!prompt || !n_prompt)
        return api__fail(f, 400, "missing_field", "`prompt` (a non-empty string) is required");
    if (!target || !n_target)
        return api__fail(f, 400, "missing_field", "`target` (a non-empty string) is required");
    return score_tokens(a, prompt, n_prompt, target, n_target, q, f);
}

void api__h_score(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    api_fail_t f;
    json_t *root = NULL;
    cmpl_req_t q;
    api_terms_t t;
    memset(&q, 0, sizeof q);
    memset(&t, 0, sizeof t);
    bool ok = api__parse_body(req, &root, &f) && score_parse(a, root, &q, &f) &&
              api__sel_gather(a, api__who(req)->tenant, root, q.model, &t, &f);
    api__cmpl_start(a, req, ok ? NULL : &f, root, &q, &t, sink, job);
}

/* Client gone. A job still waiting for adapters stops waiting and ends now; a submitted
 * one is cancelled in the engine (its DONE event ends it). */
static void cmpl_job_cancel(api_t *a, api_job_t *job)
{
    cmpl_job_t *j = (cmpl_job_t *)job;
    if (j->wait) {
        store_wait_cancel(a->p.store, j->wait);
        j->wait = NULL;
        cmpl_wait_clear(j);
        api_send_error(j->sink, 503, NULL, "cancelled", "the client went away");
        return;
    }
    if (j->engine && j->req_id)
        core_engine_cancel(j->engine, j->req_id);
}

static void cmpl_job_free(api_t *a, api_job_t *job)
{
    cmpl_job_t *j = (cmpl_job_t *)job;
    api__quota_release(a, &j->ticket, j->n_used);
    if (j->wait)
        store_wait_cancel(a->p.store, j->wait);
    cmpl_wait_clear(j);
    pthread_mutex_destroy(&j->mu);
    free(j->model);
    free(j->prompt_ids);
    free(j->text);
    free(j->gen);
    free(j->echo_text);
    json_decref(j->route_names);
    api__lp_free(j->lp);
    free(j);
}
