/* test_metrics.c - the metrics registry (api/metrics.c): counters, histogram buckets, sum
 * and count, label escaping, number formatting, the series cap, and the exposition text. */
#include "tests/unit/harness.h"

#include <pthread.h>

#include "api/api.h"
#include "api/metrics.h"

/* The registry's whole text (caller frees). */
static char *reg_text(api_mreg_t *r)
{
    api_mtext_t t = {0};
    api_mreg_write(r, &t);
    ASSERT(!t.oom);
    return t.p;
}

/* Does text hold line as a whole line? */
static int has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return 1;
    return 0;
}

#define ASSERT_LINE(text, line)                                                                    \
    do {                                                                                           \
        if (!has_line(text, line))                                                                 \
            HARNESS_FAIL("line not found: %s\n--- text:\n%s", line, text);                         \
    } while (0)

TEST(counter_series_and_sums)
{
    static const char *const names[] = {"route", "status"};
    api_mreg_t *r = api_mreg_new();
    api_mfam_t *c = api_mreg_counter(r, "x_requests_total", "Requests.", names, 2);
    ASSERT(c != NULL);
    api_mfam_add(c, (const char *const[]){"/a", "200"}, 1);
    api_mfam_add(c, (const char *const[]){"/a", "200"}, 2);
    api_mfam_add(c, (const char *const[]){"/b", "404"}, 1);
    api_mfam_add(c, (const char *const[]){"/a", "200"}, -5); /* counters never go down */
    char *text = reg_text(r);
    ASSERT_LINE(text, "# HELP x_requests_total Requests.");
    ASSERT_LINE(text, "# TYPE x_requests_total counter");
    ASSERT_LINE(text, "x_requests_total{route=\"/a\",status=\"200\"} 3");
    ASSERT_LINE(text, "x_requests_total{route=\"/b\",status=\"404\"} 1");
    /* first-use order */
    ASSERT(strstr(text, "route=\"/a\"") < strstr(text, "route=\"/b\""));
    free(text);
    api_mreg_free(r);
}

TEST(counter_without_labels)
{
    api_mreg_t *r = api_mreg_new();
    api_mfam_t *c = api_mreg_counter(r, "x_total", "No labels.", NULL, 0);
    char *text = reg_text(r);
    ASSERT_LINE(text, "# TYPE x_total counter");
    ASSERT(strstr(text, "\nx_total ") == NULL); /* no sample before the first add */
    free(text);
    api_mfam_add(c, NULL, 0.5);
    api_mfam_add(c, NULL, 0.25);
    text = reg_text(r);
    ASSERT_LINE(text, "x_total 0.75");
    free(text);
    api_mreg_free(r);
}

TEST(histogram_buckets_sum_count)
{
    static const char *const names[] = {"route"};
    static const double bounds[] = {0.1, 1, 10};
    api_mreg_t *r = api_mreg_new();
    api_mfam_t *h = api_mreg_histogram(r, "x_seconds", "Latency.", names, 1, bounds, 3);
    ASSERT(h != NULL);
    const char *const a[] = {"/a"};
    api_mfam_observe(h, a, 0.05); /* <= 0.1 */
    api_mfam_observe(h, a, 0.1);  /* le is inclusive */
    api_mfam_observe(h, a, 0.5);  /* <= 1 */
    api_mfam_observe(h, a, 20);   /* only +Inf */
    char *text = reg_text(r);
    ASSERT_LINE(text, "# TYPE x_seconds histogram");
    ASSERT_LINE(text, "x_seconds_bucket{route=\"/a\",le=\"0.1\"} 2");
    ASSERT_LINE(text, "x_seconds_bucket{route=\"/a\",le=\"1\"} 3");
    ASSERT_LINE(text, "x_seconds_bucket{route=\"/a\",le=\"10\"} 3");
    ASSERT_LINE(text, "x_seconds_bucket{route=\"/a\",le=\"+Inf\"} 4");
    ASSERT_LINE(text, "x_seconds_sum{route=\"/a\"} 20.65");
    ASSERT_LINE(text, "x_seconds_count{route=\"/a\"} 4");
    free(text);
    api_mreg_free(r);
}

TEST(histogram_rejects_bad_bounds)
{
    api_mreg_t *r = api_mreg_new();
    ASSERT(api_mreg_histogram(r, "a", "h", NULL, 0, (const double[]){1, 1}, 2) == NULL);
    ASSERT(api_mreg_histogram(r, "b", "h", NULL, 0, (const double[]){2, 1}, 2) == NULL);
    ASSERT(api_mreg_histogram(r, "c", "h", NULL, 0, (const double[]){INFINITY}, 1) == NULL);
    ASSERT(api_mreg_histogram(r, "d", "h", NULL, 0, (const double[]){1}, 0) == NULL);
    ASSERT(api_mreg_counter(r, "e", "h", NULL, API_METRICS_MAX_LABELS + 1) == NULL);
    /* observing the wrong kind is ignored */
    api_mfam_t *c = api_mreg_counter(r, "f_total", "h", NULL, 0);
    api_mfam_observe(c, NULL, 1);
    char *text = reg_text(r);
    ASSERT(strstr(text, "\nf_total ") == NULL);
    ASSERT(strstr(text, "# TYPE a ") == NULL); /* refused families are not listed */
    free(text);
    api_mreg_free(r);
}

TEST(label_and_help_escaping)
{
    static const char *const names[] = {"v"};
    api_mreg_t *r = api_mreg_new();
    api_mfam_t *c = api_mreg_counter(r, "x_total", "say \"hi\"\\ then\nnext", names, 1);
    api_mfam_add(c, (const char *const[]){"a\"b\\c\nd"}, 1);
    api_mfam_add(c, (const char *const[]){NULL}, 1); /* NULL reads as "" */
    char *text = reg_text(r);
    /* HELP: backslash and newline escaped, quotes kept */
    ASSERT_LINE(text, "# HELP x_total say \"hi\"\\\\ then\\nnext");
    ASSERT_LINE(text, "x_total{v=\"a\\\"b\\\\c\\nd\"} 1");
    ASSERT_LINE(text, "x_total{v=\"\"} 1");
    free(text);
    api_mreg_free(r);
}

TEST(number_format)
{
    char buf[32];
    ASSERT_STREQ(api_mtext_number(0, buf), "0");
    ASSERT_STREQ(api_mtext_number(42, buf), "42");
    ASSERT_STREQ(api_mtext_number(-3, buf), "-3");
    ASSERT_STREQ(api_mtext_number(0.005, buf), "0.005");
    ASSERT_STREQ(api_mtext_number(0.1 + 0.2, buf), "0.30000000000000004");
    ASSERT_STREQ(api_mtext_number(INFINITY, buf), "+Inf");
    ASSERT_STREQ(api_mtext_number(-INFINITY, buf), "-Inf");
    ASSERT_STREQ(api_mtext_number(NAN, buf), "NaN");
    ASSERT_STREQ(api_mtext_number(1e20, buf), "1e+20");
    ASSERT_NEAR(strtod(api_mtext_number(1795926128.2754903, buf), NULL), 1795926128.2754903, 1e-6);
}

TEST(series_cap_drops_and_counts)
{
    static const char *const names[] = {"k"};
    api_mreg_t *r = api_mreg_new();
    api_mfam_t *c = api_mreg_counter(r, "x_total", "h", names, 1);
    char v[32];
    for (int i = 0; i < API_METRICS_MAX_SERIES + 10; i++) {
        snprintf(v, sizeof v, "v%d", i);
        api_mfam_add(c, (const char *const[]){v}, 1);
    }
    api_mfam_add(c, (const char *const[]){"v0"}, 1); /* an existing series still counts */
    ASSERT_EQ(api_mreg_n_dropped(r), 10);
    char *text = reg_text(r);
    ASSERT_LINE(text, "x_total{k=\"v0\"} 2");
    snprintf(v, sizeof v, "x_total{k=\"v%d\"} 1", API_METRICS_MAX_SERIES - 1);
    ASSERT_LINE(text, v);
    ASSERT(strstr(text, "k=\"v1024\"") == NULL);
    free(text);
    api_mreg_free(r);
}

TEST(text_helpers)
{
    api_mtext_t t = {0};
    api_mtext_single(&t, "g", "A gauge.", "gauge", 7);
    static const char *const names[] = {"a", "b"};
    api_mtext_sample(&t, "s", names, (const char *const[]){"1", "x\"y"}, 2, 2.5);
    ASSERT(!t.oom);
    ASSERT_STREQ(t.p, "# HELP g A gauge.\n# TYPE g gauge\ng 7\ns{a=\"1\",b=\"x\\\"y\"} 2.5\n");
    api_mtext_free(&t);
    ASSERT(t.p == NULL && t.len == 0);
}

/* Every line of the exposition is a comment (# HELP / # TYPE) or "name[{...}] value". */
TEST(exposition_is_well_formed)
{
    static const char *const names[] = {"route", "method"};
    static const double bounds[] = {0.5};
    api_mreg_t *r = api_mreg_new();
    api_mfam_t *c = api_mreg_counter(r, "x_total", "h", names, 2);
    api_mfam_t *h = api_mreg_histogram(r, "y_seconds", "h", names, 2, bounds, 1);
    api_mfam_add(c, (const char *const[]){"/r", "GET"}, 1);
    api_mfam_observe(h, (const char *const[]){"/r", "GET"}, 1);
    char *text = reg_text(r);
    size_t n_lines = 0;
    for (char *line = text; *line;) {
        char *end = strchr(line, '\n');
        ASSERT(end != NULL); /* every line ends with \n */
        *end = '\0';
        if (line[0] == '#')
            ASSERT(strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0);
        else
            ASSERT(strchr(line, ' ') != NULL && strtod(strrchr(line, ' ') + 1, NULL) >= 0);
        n_lines++;
        line = end + 1;
    }
    ASSERT_EQ(n_lines,
              2 + 1 + 2 + 2 + 2); /* counter: 2 + 1; histogram: 2 + 2 buckets + sum/count */
    free(text);
    api_mreg_free(r);
}

static void *add_many(void *arg)
{
    api_mfam_t *c = arg;
    static const char *const v[] = {"x"};
    for (int i = 0; i < 10000; i++)
        api_mfam_add(c, v, 1);
    return NULL;
}

TEST(threads_do_not_lose_counts)
{
    static const char *const names[] = {"k"};
    api_mreg_t *r = api_mreg_new();
    api_mfam_t *c = api_mreg_counter(r, "x_total", "h", names, 1);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        ASSERT_EQ(pthread_create(&th[i], NULL, add_many, c), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    char *text = reg_text(r);
    ASSERT_LINE(text, "x_total{k=\"x\"} 40000");
    free(text);
    api_mreg_free(r);
}

TEST(process_registry_observes_requests)
{
    api_metrics_init();
    ASSERT(api_metrics_start_time() > 1e9);
    api_metrics_observe_request("/v1/completions", "POST", 200, 0.02);
    api_metrics_observe_request("/v1/completions", "POST", 200, 0.3);
    api_metrics_observe_request(NULL, NULL, 400, 0.001);
    char *text = reg_text(api_metrics_registry());
    ASSERT_LINE(
        text,
        "adapterd_http_requests_total{route=\"/v1/completions\",method=\"POST\",status=\"200\"} 2");
    ASSERT_LINE(text,
                "adapterd_http_requests_total{route=\"other\",method=\"other\",status=\"400\"} 1");
    ASSERT_LINE(text, "adapterd_http_request_duration_seconds_count{route=\"/v1/completions\"} 2");
    ASSERT_LINE(
        text,
        "adapterd_http_request_duration_seconds_bucket{route=\"/v1/completions\",le=\"0.25\"} 1");
    ASSERT_LINE(text, "adapterd_http_request_duration_seconds_sum{route=\"/v1/completions\"} 0.32");
    free(text);
}

/* ---- the handlers, on an api without engine or store ---- */

typedef struct {
    int status, n_end;
    char ctype[64], extra[64];
    char body[65536];
    size_t len;
} cap_t;

static void cap_begin(void *self, int status, const char *ctype, bool streaming, const char *extra)
{
    cap_t *c = self;
    (void)streaming;
    c->status = status;
    snprintf(c->ctype, sizeof c->ctype, "%s", ctype ? ctype : "");
    snprintf(c->extra, sizeof c->extra, "%s", extra ? extra : "");
}

static void cap_write(void *self, const char *data, size_t len)
{
    cap_t *c = self;
    if (c->len + len < sizeof c->body) {
        memcpy(c->body + c->len, data, len);
        c->len += len;
        c->body[c->len] = '\0';
    }
}

static void cap_end(void *self)
{
    ((cap_t *)self)->n_end++;
}

static void get(api_t *a, const char *path, cap_t *c)
{
    memset(c, 0, sizeof *c);
    api_sink_t sink = {c, cap_begin, cap_write, cap_end};
    api_request_t req = {.method = "GET", .path = path, .request_id = "t"};
    api_job_t *job = NULL;
    api_handle(a, &req, &sink, &job);
    ASSERT(job == NULL);
    ASSERT_EQ(c->n_end, 1);
}

TEST(metrics_route_on_bare_api)
{
    api_params_t p = {.model_name = "m", .version = "9.9.9"};
    api_t *a = api_new(&p);
    cap_t c;
    api_metrics_observe_request("/healthz", "GET", 200, 0.001);
    get(a, "/metrics", &c);
    ASSERT_EQ(c.status, 200);
    ASSERT_STREQ(c.ctype, API_METRICS_CONTENT_TYPE);
    ASSERT_LINE(c.body, "adapterd_build_info{version=\"9.9.9\"} 1");
    ASSERT_LINE(c.body, "# TYPE adapterd_start_time_seconds gauge");
    ASSERT_LINE(c.body, "# TYPE vllm:lora_requests_info gauge");
    ASSERT(strstr(c.body, "vllm:lora_requests_info{running_lora_adapters=\"\","
                          "waiting_lora_adapters=\"\",max_lora=\"\"} ") != NULL);
    ASSERT_LINE(c.body,
                "adapterd_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 1");
    ASSERT(strstr(c.body, "adapterd_kv_blocks_total") == NULL); /* no engine: not listed */
    api_free(a);
}

TEST(readyz_states)
{
    api_params_t p = {.model_name = "m"};
    api_t *a = api_new(&p);
    cap_t c;
    get(a, "/readyz", &c); /* no model, no store */
    ASSERT_EQ(c.status, 503);
    ASSERT(strstr(c.body, "\"status\":\"no_model\"") != NULL);
    api_free(a);

    core_model_t model;
    memset(&model, 0, sizeof model);
    p.model = &model;
    p.store = (store_t *)&model; /* only compared with NULL by /readyz */
    a = api_new(&p);
    get(a, "/readyz", &c);
    ASSERT_EQ(c.status, 200);
    ASSERT_STREQ(c.body, "{\"status\":\"ready\"}");
    get(a, "/healthz", &c);
    ASSERT_EQ(c.status, 200);
    api_set_draining(a, true);
    get(a, "/readyz", &c);
    ASSERT_EQ(c.status, 503);
    ASSERT_STREQ(c.ctype, "application/json");
    ASSERT(strstr(c.extra, "Retry-After: 1") != NULL);
    ASSERT(strstr(c.body, "\"status\":\"draining\"") != NULL);
    ASSERT(strstr(c.body, "\"code\":\"draining\"") != NULL);
    get(a, "/healthz", &c); /* liveness is unaffected */
    ASSERT_EQ(c.status, 200);
    api_free(a);
}

TEST(route_names_and_adapter)
{
    api_params_t p = {.model_name = "m"};
    api_t *a = api_new(&p);
    char spec[80];
    ASSERT_STREQ(api_route_name(a, "POST", "/v1/completions"), "/v1/completions");
    ASSERT_STREQ(api_route_name(a, "GET", "/v1/completions"), "/v1/completions"); /* 405 */
    ASSERT_STREQ(api_route_name(a, "GET", "/v1/adapters/x@2"), "/v1/adapters/{spec}");
    ASSERT_STREQ(api_route_name(a, "POST", "/v1/adapters/x/pin"), "/v1/adapters/{spec}/pin");
    ASSERT_STREQ(api_route_name(a, "PUT", "/v1/aliases/prod"), "/v1/aliases/{name}");
    ASSERT_STREQ(api_route_name(a, "GET", "/v1/adapters/a/b/c"), "other");
    ASSERT_STREQ(api_route_name(a, "GET", "/nope"), "other");
    ASSERT_STREQ(api_route_name(a, "GET", NULL), "other");
    /* local-only routes do not exist without allow_local_paths */
    ASSERT_STREQ(api_route_name(a, "POST", "/v1/load_lora_adapter"), "other");
    ASSERT(api_route_adapter(a, "POST", "/v1/adapters/my%2Dadapter@3/unpin", spec, sizeof spec));
    ASSERT_STREQ(spec, "my-adapter@3");
    ASSERT(!api_route_adapter(a, "GET", "/v1/aliases/prod", spec, sizeof spec));
    ASSERT_STREQ(spec, "");
    ASSERT(!api_route_adapter(a, "GET", "/v1/adapters/bad%zz", spec, sizeof spec));
    ASSERT(!api_route_adapter(a, "POST", "/v1/completions", spec, sizeof spec));
    api_free(a);
}
