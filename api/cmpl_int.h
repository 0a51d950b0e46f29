/* cmpl_int.h - private to api/: the completion request and the job machinery that
 * completions.c (text completions, scoring) and chat.c (chat completions) share.
 * Threads: the loop thread. Ownership: see api__cmpl_start. */
#ifndef API_CMPL_INT_H
#define API_CMPL_INT_H

#include "api/adapters.h"
#include "api/json_util.h"
#include "api/tenancy.h"

/* A validated request. Strings are borrowed from the parsed body. */
typedef struct {
    const char *model; /* as given: echoed in the response */
    const char *text;  /* text prompt, or NULL when ids */
    size_t text_len;
    int32_t *ids;      /* token prompt (malloc'd), or the encoded text */
    size_t n_ids;
    long long max_tokens, top_k, seed;
    bool has_seed;
    double temperature, top_p;
    const char *stop[CORE_MAX_STOP];
    int n_stop;
    bool stream, ignore_eos, return_token_ids, include_usage;
    long long logprobs;  /* -1: none, else top alternatives per token */
    bool echo;
    bool score;          /* POST /v1/score: prompt + target, no generation */
    size_t n_target;     /* score: the last n_target ids are the target */
    bool chat;           /* POST /v1/chat/completions: chat-shaped answers */
} cmpl_req_t;

/* The fields completions and chat share: model, max_tokens, temperature, top_p, top_k,
 * seed, stream (+ stream_options), ignore_eos, return_token_ids, stop, and the OpenAI
 * fields accepted only at their neutral value. Presets defaults first. */
bool api__cmpl_common(const api_t *a, const json_t *root, cmpl_req_t *q, api_fail_t *f);

/* Takes over root, q (its ids) and t. failed (the handler's first failure) is answered at
 * once; otherwise the caller's quotas admit it (or 429) and the request becomes a job,
 * submitted now or waiting for its adapters, and later failures are answered through sink
 * too. req: the caller (tenant, share, quotas) and the access-log note. */
void api__cmpl_start(api_t *a, const api_request_t *req, const api_fail_t *failed, json_t *root,
                     cmpl_req_t *q, api_terms_t *t, api_sink_t *sink, api_job_t **job);

#endif
