/* fuzz_json_api.c - libFuzzer target: request bodies through api_handle (and the streamed
 * upload path: api_body_begin/data/end) on a few routes, against fuzz_api.h's api: no
 * engine, so generation routes answer 503 no_engine once the body, the adapter selection
 * and the prompt passed their checks.
 *
 * Input: byte 0 picks the route, the rest is the body. Uploads (multipart, boundary "fzb")
 * are fed in pieces whose sizes come from byte 0 too. Oracles besides ASan/UBSan: the sink
 * sees exactly one begin and one end per request, nothing after end, and a JSON content
 * type always carries a body that parses. Routes that would change authentication or
 * create tenants or remove "alpha" are left out, so every input runs against the same
 * open-mode store. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/fuzz_api.h"

typedef struct {
    const char *method, *path;
    bool upload; /* multipart body through the streaming body calls */
} route_t;

static const route_t routes[] = {
    {"POST", "/v1/completions", false},      {"POST", "/v1/chat/completions", false},
    {"POST", "/v1/score", false},            {"POST", "/tokenize", false},
    {"POST", "/detokenize", false},          {"PUT", "/v1/aliases/fz", false},
    {"POST", "/v1/load_lora_adapter", false}, {"POST", "/v1/adapters", true},
    {"POST", "/v1/adapters/fz-up", true},    {"PATCH", "/v1/admin/tenants/fz", false},
    {"POST", "/v1/adapters/alpha/pin", false}, {"GET", "/v1/models", false},
    {"POST", "/v1/routers", false},
};
#define N_ROUTES (sizeof routes / sizeof routes[0])

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_api_new("fuzz_json_api");
    return 0;
}

/* Streams body to the upload route in pieces of 1..piece bytes. */
static void run_upload(api_request_t *req, api_sink_t *sink, size_t piece, api_job_t **job)
{
    api_body_t *b = NULL;
    size_t max_body = 0;
    api_request_t head = *req;
    head.body = NULL;
    api_body_mode_t mode = api_body_begin(g_fx.api, &head, sink, &b, &max_body);
    if (mode == API_BODY_ANSWERED)
        return;
    if (mode == API_BODY_WHOLE) {
        api_handle(g_fx.api, req, sink, job);
        return;
    }
    if (req->body_len > max_body) { /* the server answers 413 itself, then aborts */
        api_body_abort(g_fx.api, b);
        api_send_error(sink, 413, "invalid_request_error", "too_large", "too large");
        return;
    }
    for (size_t at = 0; at < req->body_len;) {
        size_t n = req->body_len - at < piece ? req->body_len - at : piece;
        api_body_data(g_fx.api, b, req->body + at, n);
        at += n;
    }
    api_body_end(g_fx.api, b, job);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const route_t *rt = &routes[data[0] % N_ROUTES];
    resp_t r;
    memset(&r, 0, sizeof r);
    pthread_mutex_init(&r.rec.mu, NULL);
    pthread_cond_init(&r.rec.cv, NULL);
    r.sink = (api_sink_t){&r.rec, rec_begin, rec_write, rec_end};
    api_note_t note;
    memset(&note, 0, sizeof note);
    api_request_t req = {.method = rt->method,
                         .path = rt->path,
                         .body = size > 1 ? (const char *)data + 1 : NULL,
                         .body_len = size - 1,
                         .content_type = rt->upload ? "multipart/form-data; boundary=fzb"
                                                    : "application/json",
                         .request_id = "fuzz",
                         .note = &note};
    api_job_t *job = NULL;
    if (rt->upload)
        run_upload(&req, &r.sink, 1 + (data[0] >> 4) * 97u, &job);
    else
        api_handle(g_fx.api, &req, &r.sink, &job);
    /* No engine and a synchronous store: every answer is complete on return. */
    if (r.rec.n_begin != 1 || r.rec.n_end != 1 || r.rec.n_misuse != 0) {
        fprintf(stderr, "fuzz_json_api: %s %s: sink begin %d, end %d, misuse %d\n", rt->method,
                rt->path, r.rec.n_begin, r.rec.n_end, r.rec.n_misuse);
        abort();
    }
    if (job)
        api_job_free(g_fx.api, job);
    if (strcmp(r.rec.ctype, "application/json") == 0) {
        json_error_t jerr;
        json_t *j = json_loads(r.rec.body ? r.rec.body : "", JSON_ALLOW_NUL, &jerr);
        if (!j) {
            fprintf(stderr, "fuzz_json_api: %s %s: %d response is not JSON (%s): %.300s\n",
                    rt->method, rt->path, r.rec.status, jerr.text, r.rec.body ? r.rec.body : "");
            abort();
        }
        json_decref(j);
    }
    free(r.rec.body);
    pthread_mutex_destroy(&r.rec.mu);
    pthread_cond_destroy(&r.rec.cv);
    return 0;
}
