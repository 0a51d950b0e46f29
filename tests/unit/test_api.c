/* test_api.c - routes and handlers without a network: a recording sink stands in for the
 * server. Covers routing (404/405), body and field validation (each error names its
 * field), model resolution, /healthz, /v1/models, /tokenize + /detokenize with the real
 * Llama-2 tokenizer, and /v1/completions end to end (plain, streamed, with an adapter,
 * cancelled) on a tiny seeded model built in memory and the real engine (fixture in
 * api_fixture.h). Adapter selection and compositions: test_api_adapters.c. */
#include "tests/unit/api_fixture.h"

/* ---- routing ---- */

TEST(routing_404_and_405)
{
    fx_t f;
    fx_init(&f, "routing", false);
    expect_error(&f, "GET", "/nope", NULL, 404, "not_found", "/nope");
    expect_error(&f, "GET", "/v1/completions/", NULL, 404, "not_found", NULL);
    resp_t r;
    call(&f, "GET", "/v1/completions", NULL, &r);
    ASSERT_EQ(r.rec.status, 405);
    ASSERT(strstr(r.rec.headers, "Allow: POST\r\n") != NULL);
    resp_free(&r);
    call(&f, "POST", "/healthz", "{}", &r);
    ASSERT_EQ(r.rec.status, 405);
    ASSERT(strstr(r.rec.headers, "Allow: GET\r\n") != NULL);
    resp_free(&r);
    fx_close(&f);
}

TEST(status_mapping)
{
    ASSERT_EQ(api_status_of(RC_INVALID), 400);
    ASSERT_EQ(api_status_of(RC_FORMAT), 400);
    ASSERT_EQ(api_status_of(RC_NOT_FOUND), 404);
    ASSERT_EQ(api_status_of(RC_MISMATCH), 422);
    ASSERT_EQ(api_status_of(RC_UNSUPPORTED), 422);
    ASSERT_EQ(api_status_of(RC_LIMIT), 413);
    ASSERT_EQ(api_status_of(RC_BUSY), 429);
    ASSERT_EQ(api_status_of(RC_IO), 500);
    ASSERT_EQ(api_status_of(RC_INTERNAL), 500);
    rec_t rec;
    memset(&rec, 0, sizeof rec);
    pthread_mutex_init(&rec.mu, NULL);
    pthread_cond_init(&rec.cv, NULL);
    api_sink_t sink = {&rec, rec_begin, rec_write, rec_end};
    api_send_error(&sink, 429, NULL, "busy", "try later");
    ASSERT_EQ(rec.status, 429);
    ASSERT(strstr(rec.headers, "Retry-After: 1\r\n") != NULL);
    ASSERT_STREQ(rec.body, "{\"error\":{\"message\":\"try later\",\"type\":\"server_error\","
                           "\"code\":\"busy\"}}");
    free(rec.body);
}

TEST(healthz)
{
    fx_t f;
    fx_init(&f, "healthz", false);
    resp_t r;
    call(&f, "GET", "/healthz", NULL, &r);
    ASSERT_EQ(r.rec.status, 200);
    const char *st = NULL;
    ASSERT_EQ(json_unpack(r.json, "{s:s}", "status", &st), 0);
    ASSERT_STREQ(st, "ok");
    resp_free(&r);
    fx_close(&f);
}

/* ---- body and field validation ---- */

TEST(malformed_json)
{
    fx_t f;
    fx_init(&f, "badjson", false);
    expect_error(&f, "POST", "/v1/completions", "{\"model\": \"tiny\",\n \"prompt\": }", 400,
                 "invalid_json", "line 2");
    expect_error(&f, "POST", "/v1/completions", "{\"model\": \"tiny\", \"model\": \"x\"}", 400,
                 "invalid_json", "duplicate");
    expect_error(&f, "POST", "/v1/completions", "[1, 2]", 400, "invalid_json", "JSON object");
    expect_error(&f, "POST", "/v1/completions", NULL, 400, "invalid_json", "JSON object");
    expect_error(&f, "POST", "/v1/completions", "{} trailing", 400, "invalid_json", "column");
    expect_error(&f, "POST", "/tokenize", "{", 400, "invalid_json", "line 1");
    fx_close(&f);
}

TEST(unknown_fields_named)
{
    fx_t f;
    fx_init(&f, "unknown", false);
    expect_error(&f, "POST", "/v1/completions",
                 "{\"model\": \"tiny\", \"prompt\": \"hi\", \"frobnicate\": 1}", 400,
                 "unknown_field", "`frobnicate`");
    expect_error(&f, "POST", "/v1/completions",
                 "{\"model\": \"tiny\", \"prompt\": \"hi\", \"stream\": true,"
                 " \"stream_options\": {\"include_usage\": true, \"x\": 1}}",
                 400, "unknown_field", "stream_options.x");
    expect_error(&f, "POST", "/tokenize", "{\"prompt\": \"hi\", \"bogus\": true}", 400,
                 "unknown_field", "`bogus`");
    expect_error(&f, "POST", "/detokenize", "{\"tokens\": [], \"text\": 1}", 400,
                 "unknown_field", "`text`");
    fx_close(&f);
}

TEST(field_types_and_ranges)
{
    static const struct {
        const char *extra; /* appended to a valid body */
        const char *code;
        const char *field;
    } cases[] = {
        {"\"max_tokens\": \"x\"", "invalid_type", "`max_tokens`"},
        {"\"max_tokens\": 1.5", "invalid_type", "`max_tokens`"},
        {"\"max_tokens\": -1", "invalid_value", "`max_tokens`"},
        {"\"max_tokens\": 65", "invalid_value", "`max_tokens`"},
        {"\"temperature\": 2.5", "invalid_value", "`temperature`"},
        {"\"temperature\": \"hot\"", "invalid_type", "`temperature`"},
        {"\"top_p\": 0", "invalid_value", "`top_p`"},
        {"\"top_p\": 1.01", "invalid_value", "`top_p`"},
        {"\"top_k\": -2", "invalid_value", "`top_k`"},
        {"\"seed\": -5", "invalid_value", "`seed`"},
        {"\"seed\": true", "invalid_type", "`seed`"},
        {"\"stop\": 5", "invalid_type", "`stop`"},
        {"\"stop\": [\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\"]", "invalid_value",
         "`stop`"},
        {"\"stop\": [\"ok\", \"\"]", "invalid_value", "`stop[1]`"},
        {"\"stop\": [\"ok\", 3]", "invalid_type", "`stop[1]`"},
        {"\"stream\": \"yes\"", "invalid_type", "`stream`"},
        {"\"ignore_eos\": 1", "invalid_type", "`ignore_eos`"},
        {"\"return_token_ids\": null, \"stream_options\": {\"include_usage\": true}",
         "invalid_value", "`stream_options`"},
        {"\"stream\": true, \"stream_options\": {\"include_usage\": 1}", "invalid_type",
         "`stream_options.include_usage`"},
        {"\"n\": 2", "not_supported", "`n`"},
        {"\"best_of\": 3", "not_supported", "`best_of`"},
        {"\"echo\": true, \"stream\": true", "not_supported", "`echo`"},
        {"\"logprobs\": 21", "invalid_value", "`logprobs`"},
        {"\"logprobs\": true", "invalid_type", "`logprobs`"},
        {"\"presence_penalty\": 0.5", "not_supported", "`presence_penalty`"},
        {"\"frequency_penalty\": 3", "invalid_value", "`frequency_penalty`"},
        {"\"logit_bias\": {\"5\": 1}", "not_supported", "`logit_bias`"},
        {"\"suffix\": \"x\"", "not_supported", "`suffix`"},
        {"\"user\": 5", "invalid_type", "`user`"},
        {"\"adapter\": 5", "invalid_type", "`adapter`"},
    };
    fx_t f;
    fx_init(&f, "fields", false);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char body[512];
        snprintf(body, sizeof body, "{\"model\": \"tiny\", \"prompt\": \"hi\", %s}",
                 cases[i].extra);
        expect_error(&f, "POST", "/v1/completions", body, 400, cases[i].code, cases[i].field);
    }
    fx_close(&f);
}

TEST(prompt_forms)
{
    fx_t f;
    fx_init(&f, "prompts", false);
    const char *p = "/v1/completions";
    expect_error(&f, "POST", p, "{\"model\": \"tiny\"}", 400, "missing_field", "`prompt`");
    expect_error(&f, "POST", p, "{\"prompt\": \"hi\"}", 400, "missing_field", "`model`");
    expect_error(&f, "POST", p, "{\"model\": \"tiny\", \"prompt\": 5}", 400, "invalid_type",
                 "`prompt`");
    expect_error(&f, "POST", p, "{\"model\": \"tiny\", \"prompt\": \"\"}", 400, "invalid_value",
                 "empty");
    expect_error(&f, "POST", p, "{\"model\": \"tiny\", \"prompt\": []}", 400, "invalid_value",
                 "empty");
    expect_error(&f, "POST", p, "{\"model\": \"tiny\", \"prompt\": [[]]}", 400, "invalid_value",
                 "empty");
    expect_error(&f, "POST", p, "{\"model\": \"tiny\", \"prompt\": [\"a\", \"b\"]}", 400,
                 "not_supported", "only one prompt per request is supported");
    expect_error(&f, "POST", p, "{\"model\": \"tiny\", \"prompt\": [[1], [2]]}", 400,
                 "not_supported", "only one prompt");
    expect_error(&f, "POST", p, "{\"model\": \"tiny\", \"prompt\": [1, 32000]}", 400,
                 "invalid_value", "`prompt[1]`");
    expect_error(&f, "POST", p, "{\"model\": \"tiny\", \"prompt\": [1, \"x\"]}", 400,
                 "invalid_type", "`prompt[1]`");
    /* Valid forms get past validation; with no engine they stop at 503. */
    expect_error(&f, "POST", p, "{\"model\": \"tiny\", \"prompt\": [\"hello\"]}", 503,
                 "no_engine", NULL);
    expect_error(&f, "POST", p, "{\"model\": \"tiny\", \"prompt\": [[1, 2, 3]], \"top_k\": -1}",
                 503, "no_engine", NULL);
    expect_error(&f, "POST", p,
                 "{\"model\": \"tiny\", \"prompt\": [1, 2], \"seed\": null, \"stop\": null,"
                 " \"n\": 1, \"echo\": false, \"logprobs\": null, \"user\": \"u\","
                 " \"logit_bias\": {}, \"presence_penalty\": 0}",
                 503, "no_engine", NULL);
    fx_close(&f);
}

TEST(context_limit_named)
{
    fx_t f;
    fx_init(&f, "context", false);
    char body[2048];
    char words[1500] = "";
    for (int i = 0; i < 60; i++)
        strcat(words, "hello ");
    snprintf(body, sizeof body, "{\"model\": \"tiny\", \"prompt\": \"%s\"}", words);
    expect_error(&f, "POST", "/v1/completions", body, 400, "context_length_exceeded",
                 "maximum context length is 64 tokens");
    expect_error(&f, "POST", "/v1/completions",
                 "{\"model\": \"tiny\", \"prompt\": [1, 2, 3], \"max_tokens\": 62}", 400,
                 "context_length_exceeded", "`max_tokens` is 62");
    fx_close(&f);
}

TEST(unknown_model_404)
{
    fx_t f;
    fx_init(&f, "nomodel", false);
    expect_error(&f, "POST", "/v1/completions", "{\"model\": \"nope\", \"prompt\": \"hi\"}", 404,
                 "model_not_found", "The model `nope` does not exist.");
    expect_error(&f, "POST", "/v1/completions",
                 "{\"model\": \"tiny\", \"adapter\": \"ghost@2\", \"prompt\": \"hi\"}", 404,
                 "model_not_found", "The model `ghost@2` does not exist (`adapter`).");
    expect_error(&f, "POST", "/v1/completions", "{\"model\": \"../x y\", \"prompt\": \"hi\"}",
                 404, "model_not_found", NULL);
    fx_close(&f);
}

/* ---- models, tokenize, detokenize ---- */

TEST(models_lists_base_and_adapters)
{
    fx_t f;
    fx_init(&f, "models", false);
    fx_import(&f);
    resp_t r;
    call(&f, "GET", "/v1/models", NULL, &r);
    ASSERT_EQ(r.rec.status, 200);
    json_t *data = json_object_get(r.json, "data");
    ASSERT_EQ(json_array_size(data), 2);
    const char *id = NULL, *obj = NULL, *root = NULL, *parent = NULL;
    json_t *jparent = NULL;
    ASSERT_EQ(json_unpack(json_array_get(data, 0), "{s:s,s:s,s:s,s:o}", "id", &id, "object", &obj,
                          "root", &root, "parent", &jparent),
              0);
    ASSERT_STREQ(id, "tiny");
    ASSERT_STREQ(obj, "model");
    ASSERT(json_is_null(jparent));
    int version = 0, rank = 0;
    json_t *targets = NULL;
    ASSERT_EQ(json_unpack(json_array_get(data, 1), "{s:s,s:s,s:s,s:i,s:i,s:o}", "id", &id,
                          "root", &root, "parent", &parent, "version", &version, "rank", &rank,
                          "targets", &targets),
              0);
    ASSERT_STREQ(id, "alpha");
    ASSERT_STREQ(parent, "tiny");
    ASSERT_EQ(version, 1);
    ASSERT_EQ(rank, RANK);
    ASSERT_EQ(json_array_size(targets), 2);
    ASSERT_STREQ(json_string_value(json_array_get(targets, 0)), "q_proj");
    resp_free(&r);
    fx_close(&f);
}

TEST(tokenize_detokenize_round_trip)
{
    fx_t f;
    fx_init(&f, "tokenize", false);
    resp_t r;
    call(&f, "POST", "/tokenize", "{\"prompt\": \"Hello world\", \"model\": \"tiny\"}", &r);
    ASSERT_EQ(r.rec.status, 200);
    json_t *tokens = json_object_get(r.json, "tokens");
    ASSERT_EQ(json_array_size(tokens), 3); /* <s> Hello ▁world */
    ASSERT_EQ(json_integer_value(json_array_get(tokens, 0)), 1);
    ASSERT_EQ(json_integer_value(json_array_get(tokens, 1)), 22557);
    ASSERT_EQ(json_integer_value(json_object_get(r.json, "count")), 3);
    ASSERT_EQ(json_integer_value(json_object_get(r.json, "max_model_len")), MAXPOS);
    resp_free(&r);

    call(&f, "POST", "/tokenize",
         "{\"prompt\": \"Hello world <s>\", \"add_special_tokens\": false}", &r);
    ASSERT_EQ(r.rec.status, 200);
    tokens = json_object_get(r.json, "tokens");
    ASSERT(json_array_size(tokens) > 3); /* "<s>" stays text: several pieces, not id 1 */
    for (size_t i = 0; i < json_array_size(tokens); i++)
        ASSERT(json_integer_value(json_array_get(tokens, i)) != 1);
    char body[1024] = "{\"tokens\": ";
    char *dump = json_dumps(tokens, JSON_COMPACT);
    strncat(body, dump, sizeof body - strlen(body) - 2);
    strcat(body, "}");
    free(dump);
    resp_free(&r);

    call(&f, "POST", "/detokenize", body, &r);
    ASSERT_EQ(r.rec.status, 200);
    const char *prompt = NULL;
    ASSERT_EQ(json_unpack(r.json, "{s:s}", "prompt", &prompt), 0);
    ASSERT_STREQ(prompt, "Hello world <s>");
    resp_free(&r);

    expect_error(&f, "POST", "/detokenize", "{\"tokens\": [1, 32000]}", 400, "invalid_value",
                 "`tokens[1]`");
    expect_error(&f, "POST", "/detokenize", "{\"tokens\": [-1]}", 400, "invalid_value",
                 "`tokens[0]`");
    expect_error(&f, "POST", "/detokenize", "{\"tokens\": \"1 2\"}", 400, "invalid_type",
                 "`tokens`");
    expect_error(&f, "POST", "/detokenize", "{}", 400, "missing_field", "`tokens`");
    expect_error(&f, "POST", "/tokenize", "{\"prompt\": 3}", 400, "invalid_type", "`prompt`");
    expect_error(&f, "POST", "/tokenize", "{\"prompt\": \"x\", \"add_special_tokens\": 1}", 400,
                 "invalid_type", "`add_special_tokens`");
    fx_close(&f);
}

/* ---- completions on the real engine ---- */

#define GREEDY "\"temperature\": 0, \"ignore_eos\": true, \"return_token_ids\": true"

/* The plain completion of "Hello" for max_tokens 5; checks its shape. */
static void check_plain(fx_t *f, const char *model, json_t **choice_out, resp_t *r)
{
    char body[512];
    snprintf(body, sizeof body,
             "{\"model\": \"%s\", \"prompt\": \"Hello\", \"max_tokens\": 5, " GREEDY "}", model);
    call(f, "POST", "/v1/completions", body, r);
    if (r->rec.status != 200)
        HARNESS_FAIL("status %d: %s", r->rec.status, r->rec.body);
    const char *id = NULL, *object = NULL, *got_model = NULL;
    json_t *choices = NULL, *usage = NULL;
    json_int_t created = 0;
    ASSERT_EQ(json_unpack(r->json, "{s:s,s:s,s:I,s:s,s:o,s:o}", "id", &id, "object", &object,
                          "created", &created, "model", &got_model, "choices", &choices, "usage",
                          &usage),
              0);
    ASSERT(strncmp(id, "cmpl-", 5) == 0);
    ASSERT_STREQ(object, "text_completion");
    ASSERT(created > 1700000000);
    ASSERT_STREQ(got_model, model);
    ASSERT_EQ(json_array_size(choices), 1);
    json_t *c = json_array_get(choices, 0);
    const char *finish = NULL;
    json_t *logprobs = NULL;
    ASSERT_EQ(json_unpack(c, "{s:s,s:o}", "finish_reason", &finish, "logprobs", &logprobs), 0);
    ASSERT_STREQ(finish, "length");
    ASSERT(json_is_null(logprobs));
    int pt = 0, ct = 0, tt = 0;
    ASSERT_EQ(json_unpack(usage, "{s:i,s:i,s:i}", "prompt_tokens", &pt, "completion_tokens", &ct,
                          "total_tokens", &tt),
              0);
    ASSERT_EQ(pt, 2); /* <s> ▁Hello */
    ASSERT_EQ(ct, 5);
    ASSERT_EQ(tt, 7);
    json_t *pids = json_object_get(c, "prompt_token_ids");
    ASSERT_EQ(json_array_size(pids), 2);
    ASSERT_EQ(json_integer_value(json_array_get(pids, 1)), 22557);
    ASSERT_EQ(json_array_size(json_object_get(c, "token_ids")), 5);
    *choice_out = c;
}

TEST(completion_plain_matches_detokenized_ids)
{
    fx_t f;
    fx_init(&f, "plain", true);
    resp_t r;
    json_t *c = NULL;
    check_plain(&f, "tiny", &c, &r);
    json_t *ids = json_object_get(c, "token_ids");
    int32_t v[5];
    for (int i = 0; i < 5; i++)
        v[i] = (int32_t)json_integer_value(json_array_get(ids, (size_t)i));
    char *text = NULL;
    size_t len = 0;
    core_err_t err = {{0}};
    ASSERT_RC(core_tok_decode(f.tok, v, 5, true, &text, &len, &err), RC_OK, &err);
    ASSERT_STREQ(json_string_value(json_object_get(c, "text")), text);
    free(text);
    resp_free(&r);
    fx_close(&f);
}


TEST(completion_stream_equals_plain)
{
    fx_t f;
    fx_init(&f, "stream", true);
    resp_t plain;
    json_t *c = NULL;
    check_plain(&f, "tiny", &c, &plain);
    const char *want = json_string_value(json_object_get(c, "text"));

    resp_t r;
    call(&f, "POST", "/v1/completions",
         "{\"model\": \"tiny\", \"prompt\": \"Hello\", \"max_tokens\": 5, \"stream\": true,"
         " \"stream_options\": {\"include_usage\": true}, \"temperature\": 0,"
         " \"ignore_eos\": true}",
         &r);
    ASSERT_EQ(r.rec.status, 200);
    ASSERT_STREQ(r.rec.ctype, "text/event-stream");
    ASSERT(r.rec.streaming);
    int n = 0;
    char **ev = sse_events(r.rec.body, &n);
    ASSERT(n >= 3);
    ASSERT_STREQ(ev[n - 1], "[DONE]");
    char text[1024] = "";
    int n_finish = 0, completion_tokens = -1;
    for (int i = 0; i < n - 1; i++) {
        json_t *j = json_loads(ev[i], 0, NULL);
        ASSERT(j != NULL);
        ASSERT_STREQ(json_string_value(json_object_get(j, "object")), "text_completion");
        json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
        json_t *usage = json_object_get(j, "usage");
        if (ch) {
            strcat(text, json_string_value(json_object_get(ch, "text")));
            json_t *fin = json_object_get(ch, "finish_reason");
            if (json_is_string(fin)) {
                ASSERT_STREQ(json_string_value(fin), "length");
                n_finish++;
            }
        } else {
            ASSERT(usage != NULL);
            ASSERT_EQ(i, n - 2); /* the usage chunk comes last */
            completion_tokens = (int)json_integer_value(json_object_get(usage, "completion_tokens"));
        }
        json_decref(j);
    }
    ASSERT_EQ(n_finish, 1);
    ASSERT_EQ(completion_tokens, 5);
    ASSERT_STREQ(text, want);
    free(ev);
    resp_free(&r);
    resp_free(&plain);
    fx_close(&f);
}

TEST(completion_with_adapter)
{
    fx_t f;
    fx_init(&f, "adapter", true);
    fx_import(&f);
    resp_t r1, r2;
    json_t *c1 = NULL, *c2 = NULL;
    check_plain(&f, "alpha", &c1, &r1);
    check_plain(&f, "alpha@1", &c2, &r2);
    ASSERT_STREQ(json_string_value(json_object_get(c1, "text")),
                 json_string_value(json_object_get(c2, "text")));
    resp_free(&r1);
    resp_free(&r2);
    expect_error(&f, "POST", "/v1/completions", "{\"model\": \"alpha@2\", \"prompt\": \"hi\"}", 404,
                 "model_not_found", "alpha@2");
    fx_close(&f);
}

TEST(completion_cancelled_stream_ends_once)
{
    fx_t f;
    fx_init(&f, "cancel", true);
    resp_t r;
    memset(&r, 0, sizeof r);
    pthread_mutex_init(&r.rec.mu, NULL);
    pthread_cond_init(&r.rec.cv, NULL);
    r.sink = (api_sink_t){&r.rec, rec_begin, rec_write, rec_end};
    const char *body = "{\"model\": \"tiny\", \"prompt\": [1, 2, 3], \"max_tokens\": 60,"
                       " \"stream\": true, \"ignore_eos\": true}";
    api_request_t req = {.method = "POST", .path = "/v1/completions", .body = body,
                         .body_len = strlen(body)};
    api_job_t *job = NULL;
    api_handle(f.api, &req, &r.sink, &job);
    ASSERT(job != NULL);
    api_job_cancel(f.api, job);
    rec_wait(&r.rec);
    api_job_cancel(f.api, job); /* after the end: harmless */
    api_job_free(f.api, job);
    ASSERT_EQ(r.rec.n_end, 1);
    ASSERT_EQ(r.rec.n_misuse, 0);
    ASSERT_EQ(r.rec.status, 200);
    ASSERT(r.rec.len >= 14);
    ASSERT_STREQ(r.rec.body + r.rec.len - 14, "data: [DONE]\n\n");
    /* Usually the cancel lands first; a fast engine may finish all 60 tokens before it. */
    ASSERT(strstr(r.rec.body, "\"code\":\"cancelled\"") ||
           strstr(r.rec.body, "\"finish_reason\":\"length\""));
    resp_free(&r);
    fx_close(&f);
}

TEST(adapter_changed_on_disk_503)
{
    fx_t f;
    fx_init(&f, "changed", false);
    fx_import(&f);
    /* Restart the store so the adapter is no longer resident, then flip a byte of its blob. */
    core_err_t err = {{0}};
    store_adapter_t row;
    ASSERT_RC(store_resolve(f.store, STORE_TENANT_DEFAULT, "alpha", &row, &err), RC_OK, &err);
    store_close(f.store);
    char path[600];
    snprintf(path, sizeof path, "%s/blobs/%s", f.root, row.sha256);
    FILE *fp = fopen(path, "r+b");
    ASSERT(fp != NULL);
    ASSERT_EQ(fseek(fp, -1, SEEK_END), 0);
    ASSERT_EQ(fputc(0x7f, fp), 0x7f);
    ASSERT_EQ(fclose(fp), 0);
    store_params_t sp = store_default_params();
    sp.data_dir = f.root;
    sp.base = &f.model;
    ASSERT_RC(store_open(&sp, &f.store, &err), RC_OK, &err);
    api_free(f.api);
    api_params_t p = {.model = &f.model, .tok = f.tok, .store = f.store, .model_name = "tiny"};
    f.api = api_new(&p);
    expect_error(&f, "POST", "/v1/completions", "{\"model\": \"alpha\", \"prompt\": \"hi\"}", 503,
                 "adapter_unavailable",
                 "adapter alpha@1 is broken: hash_mismatch: stored bytes do not match");
    /* Known broken now: the second request is refused the same way without a new load. */
    expect_error(&f, "POST", "/v1/completions", "{\"model\": \"alpha\", \"prompt\": \"hi\"}", 503,
                 "adapter_unavailable", "is broken");
    fx_close(&f);
}
