/* test_api_adapters.c - the adapter selection of /v1/completions (api/adapters.c): every
 * wire form (model = adapter, adapter, adapter_id, adapters + combination, llama.cpp lora)
 * resolves to the expected adapter set through the private api__select, with every store
 * reference given back; conflicts, bad entries (named by path), unknown adapters (404) and
 * linear rank mismatches through the handler; GET /lora-adapters; on the real engine, equal
 * sets give equal greedy text, a composition streams, engine RC_INVALID (KV budget) is 400
 * with the engine's message and RC_BUSY is 429 with Retry-After. */
#include "api/adapters.h"
#include "tests/unit/api_fixture.h"
/* ---- adapter selection: every wire form -> one adapter set ---- */

static core_lora_t *fx_lora(fx_t *f, const char *spec)
{
    store_want_t w = {0};
    store_wait_t *wait = NULL;
    core_err_t err = {{0}};
    snprintf(w.spec, sizeof w.spec, "%s", spec);
    /* The fixture's store runs tasks synchronously: the load finishes inside the call. */
    ASSERT_RC(store_acquire(f->store, STORE_TENANT_DEFAULT, &w, 1, NULL, NULL, &wait, &err), RC_OK, &err);
    ASSERT(wait == NULL);
    core_lora_release(w.lora); /* the store keeps it resident: the pointer stays valid */
    return w.lora;
}

/* api__select on a body; fails the test when it does not resolve. */
static void select_ok(fx_t *f, const char *body, api_sel_t *sel)
{
    api_fail_t fail;
    json_error_t jerr;
    json_t *root = json_loads(body, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        HARNESS_FAIL("bad test body %s: %s", body, jerr.text);
    const char *model = json_string_value(json_object_get(root, "model"));
    if (!api__select(f->api, STORE_TENANT_DEFAULT, root, model, sel, &fail))
        HARNESS_FAIL("%s: %d %s %s", body, fail.status, fail.code, fail.message);
    json_decref(root);
}

/* The set of sel is exactly the n (lora, weight) pairs given. */
static void expect_set(const api_sel_t *sel, int n, core_lora_t *const *loras, const float *w)
{
    ASSERT(sel->aset != NULL);
    ASSERT_EQ(sel->aset->n, n);
    for (int i = 0; i < n; i++) {
        if (sel->aset->terms[i].lora != loras[i])
            HARNESS_FAIL("term %d: wrong adapter", i);
        ASSERT_NEAR(sel->aset->terms[i].weight, w[i], 0);
    }
}

TEST(select_single_adapter_forms)
{
    static const struct {
        const char *body, *group;
    } cases[] = {
        {"{\"model\": \"alpha\"}", "alpha"},
        {"{\"model\": \"alpha@1\"}", "alpha@1"},
        {"{\"model\": \"tiny\", \"adapter\": \"alpha\"}", "alpha"},
        {"{\"model\": \"tiny\", \"adapter_id\": \"alpha@1\"}", "alpha@1"},
        {"{\"model\": \"tiny\", \"adapters\": [{\"name\": \"alpha\"}]}", "alpha"},
        {"{\"model\": \"tiny\", \"adapters\": [{\"name\": \"alpha\", \"weight\": 1}],"
         " \"combination\": \"cat\"}",
         "alpha"},
        {"{\"model\": \"tiny\", \"lora\": [{\"id\": \"alpha\", \"scale\": 1}]}", "alpha"},
        {"{\"model\": \"tiny\", \"lora\": [{\"id\": 0, \"scale\": 1}]}", "alpha@1"},
        {"{\"model\": \"tiny\", \"lora\": [{\"id\": 1, \"scale\": 0},"
         " {\"id\": \"alpha\", \"scale\": 1.0}]}",
         "alpha"},
    };
    fx_t f;
    fx_init(&f, "sel1", false);
    fx_import_two(&f);
    core_lora_t *alpha = fx_lora(&f, "alpha");
    int ref0 = alpha->refcount;
    const float one = 1.0f;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        api_sel_t sel;
        select_ok(&f, cases[i].body, &sel);
        expect_set(&sel, 1, &alpha, &one);
        ASSERT_STREQ(sel.group, cases[i].group);
        api__sel_clear(&sel);
        ASSERT(sel.aset == NULL);
        ASSERT_EQ(alpha->refcount, ref0); /* every reference taken was given back */
    }
    fx_close(&f);
}

TEST(select_base_forms)
{
    static const char *const bodies[] = {
        "{\"model\": \"tiny\"}",
        "{\"model\": \"tiny\", \"adapter\": \"tiny\"}",
        "{\"model\": \"tiny\", \"adapter_id\": null, \"adapters\": null, \"lora\": null}",
        "{\"model\": \"tiny\", \"lora\": []}",
        "{\"model\": \"tiny\", \"lora\": [{\"id\": 0, \"scale\": 0}, {\"id\": \"beta\","
        " \"scale\": 0.0}]}",
    };
    fx_t f;
    fx_init(&f, "sel0", false);
    fx_import_two(&f);
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        api_sel_t sel;
        select_ok(&f, bodies[i], &sel);
        if (sel.aset)
            HARNESS_FAIL("%s: expected the base model", bodies[i]);
        ASSERT_STREQ(sel.group, "");
    }
    fx_close(&f);
}

TEST(select_compositions)
{
    fx_t f;
    fx_init(&f, "selmix", false);
    fx_import_two(&f);
    core_lora_t *alpha = fx_lora(&f, "alpha"), *beta = fx_lora(&f, "beta");
    api_sel_t sel;

    select_ok(&f,
              "{\"model\": \"tiny\", \"adapters\": [{\"name\": \"alpha\", \"weight\": 0.5},"
              " {\"name\": \"beta@1\", \"weight\": -1}]}",
              &sel);
    expect_set(&sel, 2, (core_lora_t *[]){alpha, beta}, (float[]){0.5f, -1.0f});
    ASSERT_STREQ(sel.group, "alpha*0.5+beta@1*-1");
    api__sel_clear(&sel);

    /* The same adapter twice stays two terms (their weights add up in the delta). */
    select_ok(&f,
              "{\"model\": \"tiny\", \"adapters\": [{\"name\": \"alpha\", \"weight\": 0.5},"
              " {\"name\": \"alpha\", \"weight\": 0.5}]}",
              &sel);
    expect_set(&sel, 2, (core_lora_t *[]){alpha, alpha}, (float[]){0.5f, 0.5f});
    api__sel_clear(&sel);

    /* Zero weights stay in `adapters` (exact: they add nothing). */
    select_ok(&f,
              "{\"model\": \"tiny\", \"adapters\": [{\"name\": \"alpha\"},"
              " {\"name\": \"beta\", \"weight\": 0}]}",
              &sel);
    expect_set(&sel, 2, (core_lora_t *[]){alpha, beta}, (float[]){1.0f, 0.0f});
    api__sel_clear(&sel);
    fx_close(&f);
}

TEST(select_lora_by_index_and_name)
{
    fx_t f;
    fx_init(&f, "sellora", false);
    fx_import_two(&f);
    core_lora_t *alpha = fx_lora(&f, "alpha"), *beta = fx_lora(&f, "beta");
    api_sel_t sel;
    select_ok(&f,
              "{\"model\": \"tiny\", \"lora\": [{\"id\": 1, \"scale\": 2},"
              " {\"id\": \"alpha\", \"scale\": -0.25}]}",
              &sel);
    expect_set(&sel, 2, (core_lora_t *[]){beta, alpha}, (float[]){2.0f, -0.25f});
    ASSERT_STREQ(sel.group, "beta@1*2+alpha*-0.25");
    api__sel_clear(&sel);
    fx_close(&f);
}

TEST(select_linear_mixes_one_lora)
{
    fx_t f;
    fx_init(&f, "sellin", false);
    fx_import_two(&f);
    core_lora_t *alpha = fx_lora(&f, "alpha");
    int ref0 = alpha->refcount;
    api_sel_t sel;
    select_ok(&f,
              "{\"model\": \"tiny\", \"combination\": \"linear\", \"adapters\":"
              " [{\"name\": \"alpha\", \"weight\": 0.5}, {\"name\": \"alpha\", \"weight\": 0.5}]}",
              &sel);
    ASSERT(sel.aset != NULL);
    ASSERT_EQ(sel.aset->n, 1);
    ASSERT_NEAR(sel.aset->terms[0].weight, 1.0f, 0);
    const core_lora_t *mix = sel.aset->terms[0].lora;
    ASSERT(mix != alpha);
    ASSERT_STREQ(sel.group, "linear:alpha*0.5+alpha*0.5");
    /* PEFT linear: A = sum sign(w s) sqrt(|w s|) A_i with s = alpha/r = 2, so each term
     * contributes 1 * A_alpha: A = 2 A_alpha, B = 2 B_alpha, scale 1. */
    const core_lora_mod_t *q = core_lora_mod(mix, 0, CORE_MOD_Q);
    const core_lora_mod_t *qa = core_lora_mod(alpha, 0, CORE_MOD_Q);
    ASSERT(q->A != NULL);
    ASSERT_EQ(q->r, RANK);
    ASSERT_NEAR(q->scale, 1.0f, 1e-6);
    ASSERT_NEAR(q->A[3], 2.0f * qa->A[3], 1e-6);
    ASSERT_NEAR(q->B[5], 2.0f * qa->B[5], 1e-6);
    ASSERT(core_lora_mod(mix, 0, CORE_MOD_K)->A == NULL);
    api__sel_clear(&sel);
    ASSERT_EQ(alpha->refcount, ref0);
    fx_close(&f);
}

TEST(select_conflicts_400)
{
    static const struct {
        const char *extra, *want;
    } cases[] = {
        {"\"adapter\": \"alpha\", \"lora\": []", "`adapter`, `lora` cannot be used together"},
        {"\"adapter_id\": \"alpha\", \"adapters\": [{\"name\": \"alpha\"}]",
         "`adapter_id`, `adapters`"},
        {"\"adapter\": \"alpha\", \"adapter_id\": \"alpha\"", "`adapter`, `adapter_id`"},
        {"\"combination\": \"linear\"", "`combination` is only allowed together with `adapters`"},
        {"\"combination\": \"cat\", \"lora\": []", "`combination`"},
    };
    fx_t f;
    fx_init(&f, "selconf", false);
    fx_import_two(&f);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char body[512];
        snprintf(body, sizeof body, "{\"model\": \"tiny\", \"prompt\": \"hi\", %s}",
                 cases[i].extra);
        expect_error(&f, "POST", "/v1/completions", body, 400, "conflicting_fields", cases[i].want);
    }
    /* `model` naming an adapter together with a selector field. */
    expect_error(&f, "POST", "/v1/completions",
                 "{\"model\": \"alpha\", \"prompt\": \"hi\", \"adapters\": [{\"name\": \"beta\"}]}",
                 400, "conflicting_fields", "`model` names the adapter `alpha` and `adapters`");
    expect_error(&f, "POST", "/v1/completions",
                 "{\"model\": \"alpha\", \"prompt\": \"hi\", \"lora\": []}", 400,
                 "conflicting_fields", "`lora`");
    /* The base name with a selector is the normal case: it gets past selection. */
    expect_error(&f, "POST", "/v1/completions",
                 "{\"model\": \"tiny\", \"prompt\": \"hi\", \"adapter_id\": \"alpha\"}", 503,
                 "no_engine", NULL);
    fx_close(&f);
}

TEST(select_bad_entries_name_their_path)
{
    static const struct {
        const char *extra, *code, *want;
    } cases[] = {
        {"\"adapters\": []", "invalid_value", "`adapters` must hold 1 to 8 entries, got 0"},
        {"\"adapters\": {\"name\": \"alpha\"}", "invalid_type", "`adapters` must be an array"},
        {"\"adapters\": [{\"name\": \"alpha\"}, {\"name\": \"alpha\"}, {\"name\": \"alpha\"},"
         " {\"name\": \"alpha\"}, {\"name\": \"alpha\"}, {\"name\": \"alpha\"}, {\"name\": "
         "\"alpha\"},"
         " {\"name\": \"alpha\"}, {\"name\": \"alpha\"}]",
         "invalid_value", "got 9"},
        {"\"adapters\": [\"alpha\"]", "invalid_type", "`adapters[0]` must be an object"},
        {"\"adapters\": [{\"weight\": 1}]", "missing_field", "`adapters[0].name` is required"},
        {"\"adapters\": [{\"name\": 7}]", "invalid_type", "`adapters[0].name` must be a string"},
        {"\"adapters\": [{\"name\": \"\"}]", "invalid_value",
         "`adapters[0].name` must not be empty"},
        {"\"adapters\": [{\"name\": \"alpha\"}, {\"name\": \"beta\", \"weight\": \"x\"}]",
         "invalid_type", "`adapters[1].weight` must be a finite number, got a string"},
        {"\"adapters\": [{\"name\": \"alpha\"}, {\"name\": \"beta\", \"weight\": 1e300}]",
         "invalid_value", "`adapters[1].weight` must be a finite number"},
        {"\"adapters\": [{\"name\": \"alpha\", \"scale\": 1}]", "unknown_field",
         "unknown field `adapters[0].scale`"},
        {"\"adapters\": [{\"name\": \"alpha\"}], \"combination\": \"sum\"", "invalid_value",
         "`combination` must be \"cat\" or \"linear\""},
        {"\"adapters\": [{\"name\": \"alpha\"}], \"combination\": 1", "invalid_type",
         "`combination`"},
        {"\"adapter_id\": 3", "invalid_type", "`adapter_id` must be a string"},
        {"\"lora\": {\"id\": 0}", "invalid_type", "`lora` must be an array"},
        {"\"lora\": [{\"id\": -1, \"scale\": 1}]", "invalid_value", "`lora[0].id` must be >= 0"},
        {"\"lora\": [{\"id\": 1.5, \"scale\": 1}]", "invalid_type",
         "`lora[0].id` must be an index"},
        {"\"lora\": [{\"id\": 0}]", "missing_field", "`lora[0].scale` is required"},
        {"\"lora\": [{\"scale\": 1}]", "missing_field", "`lora[0].id` is required"},
        {"\"lora\": [{\"id\": 0, \"scale\": true}]", "invalid_type", "`lora[0].scale`"},
        {"\"lora\": [{\"id\": 0, \"scale\": 1, \"path\": \"x\"}]", "unknown_field",
         "`lora[0].path`"},
        {"\"lora\": [{\"id\": 0, \"scale\": 1}, {\"id\": \"alpha\", \"scale\": 0}]",
         "invalid_value", "`lora[1].id` selects `alpha@1` again"},
    };
    fx_t f;
    fx_init(&f, "selbad", false);
    fx_import_two(&f);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char body[768];
        snprintf(body, sizeof body, "{\"model\": \"tiny\", \"prompt\": \"hi\", %s}",
                 cases[i].extra);
        expect_error(&f, "POST", "/v1/completions", body, 400, cases[i].code, cases[i].want);
    }
    fx_close(&f);
}

TEST(select_unknown_adapter_404)
{
    static const struct {
        const char *extra, *want;
    } cases[] = {
        {"\"adapters\": [{\"name\": \"alpha\"}, {\"name\": \"ghost\"}]",
         "The model `ghost` does not exist (`adapters[1].name`)."},
        {"\"adapters\": [{\"name\": \"alpha@9\"}]", "`alpha@9`"},
        {"\"adapter_id\": \"ghost\"", "The model `ghost` does not exist (`adapter_id`)."},
        {"\"lora\": [{\"id\": 2, \"scale\": 1}]", "no adapter has index 2 (`lora[0].id`)"},
        {"\"lora\": [{\"id\": \"ghost\", \"scale\": 0}]", "`ghost` does not exist (`lora[0].id`)"},
    };
    fx_t f;
    fx_init(&f, "sel404", false);
    fx_import_two(&f);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char body[512];
        snprintf(body, sizeof body, "{\"model\": \"tiny\", \"prompt\": \"hi\", %s}",
                 cases[i].extra);
        expect_error(&f, "POST", "/v1/completions", body, 404, "model_not_found", cases[i].want);
    }
    /* `model` must be the base or an adapter even when a selector picks the weights. */
    expect_error(&f, "POST", "/v1/completions",
                 "{\"model\": \"gpt-4\", \"prompt\": \"hi\", \"adapter_id\": \"alpha\"}", 404,
                 "model_not_found", "The model `gpt-4` does not exist.");
    fx_close(&f);
}

TEST(select_linear_rank_mismatch_400)
{
    fx_t f;
    fx_init(&f, "selrank", false);
    fx_import_two(&f);
    expect_error(&f, "POST", "/v1/completions",
                 "{\"model\": \"tiny\", \"prompt\": \"hi\", \"combination\": \"linear\","
                 " \"adapters\": [{\"name\": \"alpha\"}, {\"name\": \"beta\", \"weight\": 0.5}]}",
                 400, "rank_mismatch", "`alpha` has rank 2 and `beta` rank 3");
    /* cat takes any ranks. */
    expect_error(&f, "POST", "/v1/completions",
                 "{\"model\": \"tiny\", \"prompt\": \"hi\", \"adapters\": [{\"name\": \"alpha\"},"
                 " {\"name\": \"beta\", \"weight\": 0.5}]}",
                 503, "no_engine", NULL);
    fx_close(&f);
}

TEST(lora_adapters_list)
{
    fx_t f;
    fx_init(&f, "loralist", false);
    resp_t r;
    call(&f, "GET", "/lora-adapters", NULL, &r);
    ASSERT_EQ(r.rec.status, 200);
    ASSERT(json_is_array(r.json));
    ASSERT_EQ(json_array_size(r.json), 0);
    resp_free(&r);
    fx_import_two(&f);
    call(&f, "GET", "/lora-adapters", NULL, &r);
    ASSERT_EQ(r.rec.status, 200);
    ASSERT_EQ(json_array_size(r.json), 2);
    static const char *const want[] = {"alpha@1", "beta@1"};
    for (size_t i = 0; i < 2; i++) {
        json_int_t id = -1;
        const char *path = NULL;
        double scale = -1;
        ASSERT_EQ(json_unpack(json_array_get(r.json, i), "{s:I,s:s,s:F}", "id", &id, "path", &path,
                              "scale", &scale),
                  0);
        ASSERT_EQ(id, (json_int_t)i);
        ASSERT_STREQ(path, want[i]);
        ASSERT_NEAR(scale, 0, 0);
    }
    ASSERT(strstr(r.rec.body, "\"scale\":0.0") != NULL);
    resp_free(&r);
    call(&f, "POST", "/lora-adapters", "[]", &r);
    ASSERT_EQ(r.rec.status, 405);
    resp_free(&r);
    fx_close(&f);
}

/* ---- compositions and engine limits on the real engine ---- */

TEST(completion_wire_forms_match)
{
    fx_t f;
    fx_init(&f, "forms", true);
    fx_import_two(&f);
    char *base = greedy_text(&f, "tiny", NULL);
    char *alpha = greedy_text(&f, "alpha", NULL);
    static const char *const same_as_alpha[] = {
        "\"adapter\": \"alpha\"",
        "\"adapter_id\": \"alpha@1\"",
        "\"adapters\": [{\"name\": \"alpha\", \"weight\": 1}]",
        "\"adapters\": [{\"name\": \"alpha\", \"weight\": 0.5}, {\"name\": \"alpha\", \"weight\": "
        "0.5}]",
        "\"adapters\": [{\"name\": \"alpha\"}, {\"name\": \"beta\", \"weight\": 0}]",
        "\"lora\": [{\"id\": 0, \"scale\": 1}]",
        "\"lora\": [{\"id\": \"alpha\", \"scale\": 1}, {\"id\": \"beta\", \"scale\": 0}]",
    };
    for (size_t i = 0; i < sizeof same_as_alpha / sizeof same_as_alpha[0]; i++) {
        char *t = greedy_text(&f, "tiny", same_as_alpha[i]);
        if (strcmp(t, alpha) != 0)
            HARNESS_FAIL("%s: \"%s\" != \"%s\"", same_as_alpha[i], t, alpha);
        free(t);
    }
    char *t = greedy_text(&f, "tiny", "\"lora\": [{\"id\": 0, \"scale\": 0}]");
    ASSERT_STREQ(t, base);
    free(t);
    /* A linear mix and a negative composition run (their text is the model's business). */
    free(greedy_text(&f, "tiny",
                     "\"combination\": \"linear\", \"adapters\": [{\"name\":"
                     " \"alpha\", \"weight\": 0.5}, {\"name\": \"alpha\", \"weight\": 0.5}]"));
    free(greedy_text(&f, "tiny",
                     "\"adapters\": [{\"name\": \"alpha\"}, {\"name\": \"beta\","
                     " \"weight\": -1.5}]"));
    free(base);
    free(alpha);
    fx_close(&f);
}

TEST(completion_stream_with_composition)
{
    fx_t f;
    fx_init(&f, "streammix", true);
    fx_import_two(&f);
    const char *mix = "\"adapters\": [{\"name\": \"alpha\", \"weight\": 0.7}, {\"name\": \"beta\","
                      " \"weight\": -0.4}]";
    char *want = greedy_text(&f, "tiny", mix);
    char body[1024];
    snprintf(body, sizeof body,
             "{\"model\": \"tiny\", \"prompt\": \"Hello\", \"max_tokens\": 6, \"temperature\": 0,"
             " \"ignore_eos\": true, \"stream\": true, %s}",
             mix);
    resp_t r;
    call(&f, "POST", "/v1/completions", body, &r);
    ASSERT_EQ(r.rec.status, 200);
    ASSERT_STREQ(r.rec.ctype, "text/event-stream");
    int n = 0;
    char **ev = sse_events(r.rec.body, &n);
    ASSERT(n >= 2);
    ASSERT_STREQ(ev[n - 1], "[DONE]");
    char text[1024] = "";
    for (int i = 0; i < n - 1; i++) {
        json_t *j = json_loads(ev[i], 0, NULL);
        ASSERT(j != NULL);
        json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
        ASSERT(ch != NULL);
        strcat(text, json_string_value(json_object_get(ch, "text")));
        json_decref(j);
    }
    ASSERT_STREQ(text, want);
    free(ev);
    free(want);
    resp_free(&r);
    fx_close(&f);
}

/* A prompt that can never fit the KV budget: the engine's RC_INVALID is 400 with its
 * message. Two blocks of 16 positions hold 32; the request needs 40 + 10. */
TEST(engine_invalid_is_400_with_its_message)
{
    core_engine_params_t ep = core_engine_default_params();
    ep.kv_block_tokens = 16;
    ep.kv_budget_bytes = 2 * 16 * (size_t)(2 * 1 * KVH * HD) * sizeof(float);
    fx_t f;
    fx_init_p(&f, "kvlimit", true, ep);
    char body[1024] = "{\"model\": \"tiny\", \"max_tokens\": 10, \"prompt\": [1";
    for (int i = 1; i < 40; i++)
        strcat(body, ", 29");
    strcat(body, "]}");
    resp_t r;
    call(&f, "POST", "/v1/completions", body, &r);
    if (r.rec.status != 400)
        HARNESS_FAIL("status %d: %s", r.rec.status, r.rec.body);
    const char *code = NULL, *msg = NULL, *type = NULL;
    ASSERT_EQ(json_unpack(r.json, "{s:{s:s,s:s,s:s}}", "error", "code", &code, "message", &msg,
                          "type", &type),
              0);
    ASSERT_STREQ(code, "invalid");
    ASSERT_STREQ(type, "invalid_request_error");
    ASSERT(strcmp(msg, rc_str(RC_INVALID)) != 0); /* the engine's own message, not the rc's */
    fprintf(stderr, "engine message: %s\n", msg);
    resp_free(&r);
    /* A small request still runs. */
    free(greedy_text(&f, "tiny", NULL));
    fx_close(&f);
}

/* A full engine queue is 429 with Retry-After. The first request's stream is held inside
 * its first write, which stalls the engine thread, so later submissions stay queued. */
TEST(engine_busy_is_429_with_retry_after)
{
    core_engine_params_t ep = core_engine_default_params();
    ep.max_seqs = 1;
    ep.max_queue = 2; /* 1 may count the held request until its step ends */
    fx_t f;
    fx_init_p(&f, "busy", true, ep);
    resp_t held;
    memset(&held, 0, sizeof held);
    pthread_mutex_init(&held.rec.mu, NULL);
    pthread_cond_init(&held.rec.cv, NULL);
    held.rec.hold = true;
    held.sink = (api_sink_t){&held.rec, rec_begin, rec_write, rec_end};
    const char *sbody = "{\"model\": \"tiny\", \"prompt\": [1, 2, 3], \"max_tokens\": 4,"
                        " \"stream\": true, \"ignore_eos\": true, \"return_token_ids\": true}";
    api_request_t req = {
        .method = "POST", .path = "/v1/completions", .body = sbody, .body_len = strlen(sbody)};
    api_job_t *held_job = NULL;
    api_handle(f.api, &req, &held.sink, &held_job);
    ASSERT(held_job != NULL);
    pthread_mutex_lock(&held.rec.mu);
    while (held.rec.n_held == 0)
        pthread_cond_wait(&held.rec.cv, &held.rec.mu);
    pthread_mutex_unlock(&held.rec.mu);

    enum { N = 8 };
    resp_t rs[N];
    api_job_t *jobs[N] = {0};
    const char *body = "{\"model\": \"tiny\", \"prompt\": [1, 2], \"max_tokens\": 2}";
    int n_busy = 0;
    for (int i = 0; i < N; i++) {
        memset(&rs[i], 0, sizeof rs[i]);
        pthread_mutex_init(&rs[i].rec.mu, NULL);
        pthread_cond_init(&rs[i].rec.cv, NULL);
        rs[i].sink = (api_sink_t){&rs[i].rec, rec_begin, rec_write, rec_end};
        api_request_t q = {
            .method = "POST", .path = "/v1/completions", .body = body, .body_len = strlen(body)};
        api_handle(f.api, &q, &rs[i].sink, &jobs[i]);
        if (!jobs[i] && rs[i].rec.status == 429) {
            n_busy++;
            ASSERT(strstr(rs[i].rec.headers, "Retry-After: 1\r\n") != NULL);
            ASSERT(strstr(rs[i].rec.body, "\"type\":\"server_error\"") != NULL);
            ASSERT(strstr(rs[i].rec.body, "\"code\":\"server_busy\"") != NULL);
        }
    }
    ASSERT(n_busy >= 1);
    ASSERT(n_busy <= N - 1); /* the queue took at least one */
    pthread_mutex_lock(&held.rec.mu);
    held.rec.hold = false;
    pthread_cond_broadcast(&held.rec.cv);
    pthread_mutex_unlock(&held.rec.mu);
    rec_wait(&held.rec);
    api_job_free(f.api, held_job);
    for (int i = 0; i < N; i++) {
        rec_wait(&rs[i].rec);
        api_job_free(f.api, jobs[i]);
        ASSERT_EQ(rs[i].rec.n_misuse, 0);
        if (jobs[i])
            ASSERT_EQ(rs[i].rec.status, 200);
        free(rs[i].rec.body);
    }
    ASSERT_EQ(held.rec.status, 200);
    free(held.rec.body);
    fx_close(&f);
}
