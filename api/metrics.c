/* metrics.c - the metrics registry, the exposition text, and GET /metrics (see metrics.h).
 *
 * A registry is a list of families under one mutex; a family keeps its series in an array
 * searched linearly (a few hundred series at most: route patterns x methods x statuses),
 * so an observation is a handful of strcmp calls and, the first time a label set is seen,
 * one allocation. Histogram buckets are stored per bucket and summed into cumulative
 * counts when written. The process-wide registry is made once (pthread_once) and lives as
 * long as the process. The scrape-time families (engine, store, adapters in use, build)
 * are written by the handler from snapshots taken at the scrape; nothing is cached. */
#include "api/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/json_util.h"
#include "api/tenancy.h"

/* ---- the text builder ------------------------------------------------------------- */

static bool mtext_reserve(api_mtext_t *t, size_t extra)
{
    if (t->oom)
        return false;
    if (t->len + extra + 1 <= t->cap)
        return true;
    size_t cap = t->cap ? t->cap : 4096;
    while (cap < t->len + extra + 1)
        cap *= 2;
    char *p = realloc(t->p, cap);
    if (!p) {
        t->oom = true;
        return false;
    }
    t->p = p;
    t->cap = cap;
    return true;
}

static void mtext_add(api_mtext_t *t, const char *s, size_t n)
{
    if (!mtext_reserve(t, n))
        return;
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = '\0';
}

void api_mtext_free(api_mtext_t *t)
{
    free(t->p);
    memset(t, 0, sizeof *t);
}

void api_mtext_printf(api_mtext_t *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !mtext_reserve(t, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(t->p + t->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    t->len += (size_t)n;
}

/* s with the format's escapes: backslash and newline always, double quote in label
 * values only (HELP text keeps its quotes). */
static void mtext_escaped(api_mtext_t *t, const char *s, bool quote)
{
    for (const char *p = s ? s : ""; *p; p++) {
        if (*p == '\\')
            mtext_add(t, "\\\\", 2);
        else if (*p == '\n')
            mtext_add(t, "\\n", 2);
        else if (*p == '"' && quote)
            mtext_add(t, "\\\"", 2);
        else
            mtext_add(t, p, 1);
    }
}

const char *api_mtext_number(double v, char *buf)
{
    if (isnan(v))
        return strcpy(buf, "NaN");
    if (isinf(v))
        return strcpy(buf, v > 0 ? "+Inf" : "-Inf");
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, 32, "%.0f", v);
        return buf;
    }
    /* shortest of %.15g / %.17g that reads back exactly: 0.005, not 0.0050000000000000001 */
    snprintf(buf, 32, "%.15g", v);
    if (strtod(buf, NULL) != v)
        snprintf(buf, 32, "%.17g", v);
    return buf;
}

void api_mtext_family(api_mtext_t *t, const char *name, const char *help, const char *type)
{
    api_mtext_printf(t, "# HELP %s ", name);
    mtext_escaped(t, help, false);
    api_mtext_printf(t, "\n# TYPE %s %s\n", name, type);
}

/* name{l0="v0",...,extra="extra_value"} value: extra (the histogram's le) may be NULL. */
static void mtext_sample_x(api_mtext_t *t, const char *name, const char *const *label_names,
                           const char *const *values, int n, const char *extra,
                           const char *extra_value, double value)
{
    char num[32];
    mtext_add(t, name, strlen(name));
    if (n > 0 || extra) {
        mtext_add(t, "{", 1);
        for (int i = 0; i < n; i++) {
            api_mtext_printf(t, "%s%s=\"", i ? "," : "", label_names[i]);
            mtext_escaped(t, values[i], true);
            mtext_add(t, "\"", 1);
        }
        if (extra)
            api_mtext_printf(t, "%s%s=\"%s\"", n ? "," : "", extra, extra_value);
        mtext_add(t, "}", 1);
    }
    api_mtext_printf(t, " %s\n", api_mtext_number(value, num));
}

void api_mtext_sample(api_mtext_t *t, const char *name, const char *const *label_names,
                      const char *const *values, int n, double value)
{
    mtext_sample_x(t, name, label_names, values, n, NULL, NULL, value);
}

void api_mtext_single(api_mtext_t *t, const char *name, const char *help, const char *type,
                      double value)
{
    api_mtext_family(t, name, help, type);
    api_mtext_sample(t, name, NULL, NULL, 0, value);
}

/* ---- the registry ----------------------------------------------------------------- */

typedef enum { MFAM_COUNTER, MFAM_HISTOGRAM } mfam_kind_t;

typedef struct {
    char *values[API_METRICS_MAX_LABELS]; /* one malloc: values[0] owns the block */
    double value;                         /* counter; histogram: _sum */
    uint64_t count;                       /* histogram: _count */
    uint64_t *buckets;                    /* histogram: per bucket, not cumulative */
} mseries_t;

struct api_mfam {
    api_mreg_t *reg;
    mfam_kind_t kind;
    const char *name, *help;
    const char *labels[API_METRICS_MAX_LABELS];
    int n_labels;
    double bounds[API_METRICS_MAX_BUCKETS];
    int n_bounds;
    mseries_t *series;
    size_t n_series, cap_series;
};

struct api_mreg {
    pthread_mutex_t mu;
    api_mfam_t **fams;
    size_t n_fams;
    uint64_t n_dropped;
};

api_mreg_t *api_mreg_new(void)
{
    api_mreg_t *r = calloc(1, sizeof *r);
    if (r)
        pthread_mutex_init(&r->mu, NULL);
    return r;
}

void api_mreg_free(api_mreg_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_fams; i++) {
        api_mfam_t *f = r->fams[i];
        for (size_t j = 0; j < f->n_series; j++) {
            free(f->series[j].values[0]);
            free(f->series[j].buckets);
        }
        free(f->series);
        free(f);
    }
    free(r->fams);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static api_mfam_t *mreg_add(api_mreg_t *r, mfam_kind_t kind, const char *name, const char *help,
                            const char *const *label_names, int n_labels)
{
    if (!r || n_labels < 0 || n_labels > API_METRICS_MAX_LABELS)
        return NULL;
    api_mfam_t *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    *f = (api_mfam_t){.reg = r, .kind = kind, .name = name, .help = help, .n_labels = n_labels};
    for (int i = 0; i < n_labels; i++)
        f->labels[i] = label_names[i];
    pthread_mutex_lock(&r->mu);
    api_mfam_t **fams = realloc(r->fams, (r->n_fams + 1) * sizeof *fams);
    if (fams) {
        r->fams = fams;
        fams[r->n_fams++] = f;
    }
    pthread_mutex_unlock(&r->mu);
    if (!fams) {
        free(f);
        return NULL;
    }
    return f;
}

api_mfam_t *api_mreg_counter(api_mreg_t *r, const char *name, const char *help,
                             const char *const *label_names, int n_labels)
{
    return mreg_add(r, MFAM_COUNTER, name, help, label_names, n_labels);
}

static bool bounds_valid(const double *bounds, int n)
{
    if (n < 1 || n > API_METRICS_MAX_BUCKETS)
        return false;
    for (int i = 0; i < n; i++)
        if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
            return false;
    return true;
}

api_mfam_t *api_mreg_histogram(api_mreg_t *r, const char *name, const char *help,
                               const char *const *label_names, int n_labels, const double *bounds,
                               int n_bounds)
{
    if (!bounds_valid(bounds, n_bounds))
        return NULL;
    api_mfam_t *f = mreg_add(r, MFAM_HISTOGRAM, name, help, label_names, n_labels);
    if (!f)
        return NULL;
    /* written before any other thread can see f: registration returns it to the caller */
    memcpy(f->bounds, bounds, (size_t)n_bounds * sizeof *bounds);
    f->n_bounds = n_bounds;
    return f;
}

/* A new series for values (copied into one block). NULL when full or out of memory. */
static mseries_t *mfam_series_new(api_mfam_t *f, const char *const *values)
{
    if (f->n_series >= API_METRICS_MAX_SERIES)
        return NULL;
    if (f->n_series == f->cap_series) {
        size_t cap = f->cap_series ? f->cap_series * 2 : 16;
        mseries_t *s = realloc(f->series, cap * sizeof *s);
        if (!s)
            return NULL;
        f->series = s;
        f->cap_series = cap;
    }
    size_t total = 1;
    for (int i = 0; i < f->n_labels; i++)
        total += strlen(values[i] ? values[i] : "") + 1;
    mseries_t s;
    memset(&s, 0, sizeof s);
    char *block = malloc(total);
    if (!block)
        return NULL;
    if (f->kind == MFAM_HISTOGRAM) {
        s.buckets = calloc((size_t)f->n_bounds, sizeof *s.buckets);
        if (!s.buckets) {
            free(block);
            return NULL;
        }
    }
    char *p = block;
    for (int i = 0; i < f->n_labels; i++) {
        size_t n = strlen(values[i] ? values[i] : "") + 1;
        memcpy(p, values[i] ? values[i] : "", n);
        s.values[i] = p;
        p += n;
    }
    if (f->n_labels == 0)
        s.values[0] = block; /* values[0] owns the block even without labels */
    f->series[f->n_series] = s;
    return &f->series[f->n_series++];
}

/* The series for values, made on first use. Under the registry's mutex. */
static mseries_t *mfam_series(api_mfam_t *f, const char *const *values)
{
    for (size_t i = 0; i < f->n_series; i++) {
        int k = 0;
        while (k < f->n_labels && strcmp(f->series[i].values[k], values[k] ? values[k] : "") == 0)
            k++;
        if (k == f->n_labels)
            return &f->series[i];
    }
    mseries_t *s = mfam_series_new(f, values);
    if (!s)
        f->reg->n_dropped++;
    return s;
}

void api_mfam_add(api_mfam_t *f, const char *const *values, double v)
{
    if (!f || f->kind != MFAM_COUNTER || !(v >= 0))
        return;
    pthread_mutex_lock(&f->reg->mu);
    mseries_t *s = mfam_series(f, values);
    if (s)
        s->value += v;
    pthread_mutex_unlock(&f->reg->mu);
}

void api_mfam_observe(api_mfam_t *f, const char *const *values, double v)
{
    if (!f || f->kind != MFAM_HISTOGRAM || isnan(v))
        return;
    pthread_mutex_lock(&f->reg->mu);
    mseries_t *s = mfam_series(f, values);
    if (s) {
        int b = 0;
        while (b < f->n_bounds && v > f->bounds[b])
            b++;
        if (b < f->n_bounds)
            s->buckets[b]++; /* b == n_bounds: only the implied +Inf bucket (the count) */
        s->count++;
        s->value += v;
    }
    pthread_mutex_unlock(&f->reg->mu);
}

uint64_t api_mreg_n_dropped(api_mreg_t *r)
{
    if (!r)
        return 0;
    pthread_mutex_lock(&r->mu);
    uint64_t n = r->n_dropped;
    pthread_mutex_unlock(&r->mu);
    return n;
}

static void mfam_write_histogram(const api_mfam_t *f, const mseries_t *s, api_mtext_t *t)
{
    char name[256], le[32];
    const char *const *values = (const char *const *)s->values;
    uint64_t cum = 0;
    snprintf(name, sizeof name, "%s_bucket", f->name);
    for (int b = 0; b < f->n_bounds; b++) {
        cum += s->buckets[b];
        mtext_sample_x(t, name, f->labels, values, f->n_labels, "le",
                       api_mtext_number(f->bounds[b], le), (double)cum);
    }
    mtext_sample_x(t, name, f->labels, values, f->n_labels, "le", "+Inf", (double)s->count);
    snprintf(name, sizeof name, "%s_sum", f->name);
    api_mtext_sample(t, name, f->labels, values, f->n_labels, s->value);
    snprintf(name, sizeof name, "%s_count", f->name);
    api_mtext_sample(t, name, f->labels, values, f->n_labels, (double)s->count);
}

void api_mreg_write(api_mreg_t *r, api_mtext_t *t)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n_fams; i++) {
        const api_mfam_t *f = r->fams[i];
        api_mtext_family(t, f->name, f->help, f->kind == MFAM_COUNTER ? "counter" : "histogram");
        for (size_t j = 0; j < f->n_series; j++) {
            const mseries_t *s = &f->series[j];
            if (f->kind == MFAM_COUNTER)
                api_mtext_sample(t, f->name, f->labels, (const char *const *)s->values, f->n_labels,
                                 s->value);
            else
                mfam_write_histogram(f, s, t);
        }
    }
    pthread_mutex_unlock(&r->mu);
}

/* ---- the process-wide registry ---------------------------------------------------- */

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static api_mreg_t *g_reg;
static api_mfam_t *g_requests, *g_duration;
static api_mfam_t *g_ttft, *g_itl, *g_e2e, *g_tok_in, *g_tok_out;
static api_mfam_t *g_ten_req, *g_ten_tok, *g_ten_quota;
static double g_start;

/* Request latencies run from a millisecond (/healthz) to minutes (long generations). */
static const double duration_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                         1,     2.5,    5,     10,   30,    60,   120, 300};

static const double ttft_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                     2.5,   5,    10,    30,   60,  120,  300};
static const double itl_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08,
                                    0.1,   0.15,   0.2,   0.3,  0.5,  1,    2.5};

/* Generation families (api_metrics_observe_generation / _itl). */
static void metrics_init_generation(void)
{
    static const char *const kind[] = {"kind"};
    g_ttft = api_mreg_histogram(g_reg, "adapterd_time_to_first_token_seconds",
                                "From submitting a request to the engine to its first token, by "
                                "kind (completion, chat).",
                                kind, 1, ttft_bounds, (int)(sizeof ttft_bounds / sizeof ttft_bounds[0]));
    g_itl = api_mreg_histogram(g_reg, "adapterd_inter_token_seconds",
                               "Time between two tokens of one sequence.", NULL, 0, itl_bounds,
                               (int)(sizeof itl_bounds / sizeof itl_bounds[0]));
    g_e2e = api_mreg_histogram(g_reg, "adapterd_generation_seconds",
                               "From submitting a request to the engine to its last event, by "
                               "kind (completion, chat, score).",
                               kind, 1, duration_bounds,
                               (int)(sizeof duration_bounds / sizeof duration_bounds[0]));
    g_tok_in = api_mreg_counter(g_reg, "adapterd_prompt_tokens_total",
                                "Prompt tokens of finished requests, by kind.", kind, 1);
    g_tok_out = api_mreg_counter(g_reg, "adapterd_generation_tokens_total",
                                 "Generated tokens of finished requests, by kind.", kind, 1);
}

/* Per-tenant families. */
static void metrics_init_tenant(void)
{
    static const char *const req[] = {"tenant", "status"};
    static const char *const tok[] = {"tenant", "kind"};
    static const char *const quota[] = {"tenant", "quota"};
    g_ten_req = api_mreg_counter(g_reg, "adapterd_tenant_requests_total",
                                 "Requests answered, by authenticated tenant and status.", req, 2);
    g_ten_tok = api_mreg_counter(g_reg, "adapterd_tenant_tokens_total",
                                 "Tokens of finished generations by tenant; kind prompt or "
                                 "completion.",
                                 tok, 2);
    g_ten_quota = api_mreg_counter(g_reg, "adapterd_tenant_quota_rejections_total",
                                   "Requests refused 429 by a tenant quota (concurrency, "
                                   "tokens, storage).",
                                   quota, 2);
}

static void metrics_init_once(void)
{
    static const char *const req_labels[] = {"route", "method", "status"};
    static const char *const dur_labels[] = {"route"};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    g_start = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    g_reg = api_mreg_new();
    g_requests = api_mreg_counter(g_reg, "adapterd_http_requests_total",
                                  "HTTP requests answered, by route pattern (\"other\" for "
                                  "paths no route fits), method and status.",
                                  req_labels, 3);
    g_duration = api_mreg_histogram(
        g_reg, "adapterd_http_request_duration_seconds",
        "Time from a request head's first byte to the end of its response, by route pattern.",
        dur_labels, 1, duration_bounds, (int)(sizeof duration_bounds / sizeof duration_bounds[0]));
    metrics_init_generation();
    metrics_init_tenant();
}

void api_metrics_init(void)
{
    pthread_once(&g_once, metrics_init_once);
}

api_mreg_t *api_metrics_registry(void)
{
    api_metrics_init();
    return g_reg;
}

double api_metrics_start_time(void)
{
    api_metrics_init();
    return g_start;
}

void api_metrics_observe_request(const char *route, const char *method, int status, double seconds)
{
    api_metrics_init();
    char code[16];
    snprintf(code, sizeof code, "%d", status);
    const char *const labels[] = {route ? route : "other", method ? method : "other", code};
    api_mfam_add(g_requests, labels, 1);
    api_mfam_observe(g_duration, labels, seconds);
}

void api_metrics_observe_generation(const char *kind, double ttft, double e2e, int n_prompt,
                                    int n_gen)
{
    api_metrics_init();
    const char *const k[] = {kind};
    if (ttft >= 0)
        api_mfam_observe(g_ttft, k, ttft);
    api_mfam_observe(g_e2e, k, e2e);
    api_mfam_add(g_tok_in, k, n_prompt);
    api_mfam_add(g_tok_out, k, n_gen);
}

void api_metrics_observe_tenant(const char *tenant, int status)
{
    api_metrics_init();
    char code[16];
    snprintf(code, sizeof code, "%d", status);
    const char *const v[] = {tenant, code};
    api_mfam_add(g_ten_req, v, 1);
}

void api_metrics_observe_tenant_tokens(const char *tenant, int n_prompt, int n_gen)
{
    api_metrics_init();
    const char *const p[] = {tenant, "prompt"}, *const c[] = {tenant, "completion"};
    api_mfam_add(g_ten_tok, p, n_prompt);
    api_mfam_add(g_ten_tok, c, n_gen);
}

void api_metrics_observe_quota(const char *tenant, const char *which)
{
    api_metrics_init();
    const char *const v[] = {tenant, which};
    api_mfam_add(g_ten_quota, v, 1);
}

void api_metrics_observe_itl(double seconds)
{
    api_metrics_init();
    api_mfam_observe(g_itl, NULL, seconds);
}

/* ---- GET /metrics: the scrape-time families --------------------------------------- */

static void write_engine(api_t *a, api_mtext_t *t)
{
    if (!a->p.engine)
        return;
    core_engine_stats_t st;
    core_engine_stats(a->p.engine, &st);
    api_mtext_single(t, "adapterd_running_sequences", "Sequences admitted to the running batch.",
                     "gauge", st.n_running);
    api_mtext_single(t, "adapterd_waiting_sequences", "Sequences waiting in the engine's queue.",
                     "gauge", st.n_waiting);
    api_mtext_single(t, "adapterd_kv_blocks_used", "KV cache blocks held by sequences.", "gauge",
                     st.kv_blocks_used);
    api_mtext_single(t, "adapterd_kv_blocks_total", "KV cache blocks in the pool.", "gauge",
                     st.kv_blocks_total);
    api_mtext_single(t, "adapterd_engine_steps_total", "Batched forward passes run.", "counter",
                     (double)st.n_steps);
    api_mtext_single(t, "adapterd_engine_rows_total",
                     "Token rows processed (prompt chunks and decodes), summed over steps.",
                     "counter", (double)st.n_rows);
    api_mtext_single(t, "adapterd_preemptions_total",
                     "Sequences whose KV cache was dropped to make room (recomputed later).",
                     "counter", (double)st.n_preempted);
    api_mtext_single(t, "adapterd_fair_preemptions_total",
                     "Preemptions made to give a waiting tenant its share of the running slots "
                     "(also counted in adapterd_preemptions_total).",
                     "counter", (double)st.n_fair_preempted);
}

static void write_store(api_t *a, api_mtext_t *t)
{
    if (!a->p.store)
        return;
    store_stats_t st;
    store_stats(a->p.store, &st);
    api_mtext_single(t, "adapterd_adapter_cache_resident_bytes",
                     "Bytes of adapters resident in memory (f32 weights).", "gauge",
                     (double)st.resident_bytes);
    api_mtext_single(t, "adapterd_adapter_cache_budget_bytes",
                     "The resident adapter budget (--adapter-cache-bytes).", "gauge",
                     (double)st.budget_bytes);
    api_mtext_single(t, "adapterd_adapter_cache_hits_total",
                     "Adapter acquires answered from memory.", "counter", (double)st.n_hits);
    api_mtext_single(t, "adapterd_adapter_cache_misses_total",
                     "Adapter acquires that needed a load.", "counter", (double)st.n_misses);
    api_mtext_single(t, "adapterd_adapter_cache_evictions_total",
                     "Resident adapters evicted to make room.", "counter", (double)st.n_evictions);
    api_mtext_single(t, "adapterd_adapter_loads_total", "Adapter loads run.", "counter",
                     (double)st.n_loads);
    api_mtext_single(t, "adapterd_adapter_load_failures_total",
                     "Adapter loads that failed (bad blob, mismatch, out of memory).", "counter",
                     (double)st.n_load_failures);
    api_mtext_single(t, "adapterd_adapter_load_seconds_total",
                     "Time spent in adapter loads (read, verify, parse, convert).", "counter",
                     st.load_ms_total / 1000.0);
}

/* Comma-joined names of the adapters (newest version of each name) in use and loading. */
static void lora_names(api_t *a, api_mtext_t *running, api_mtext_t *waiting)
{
    store_tenant_t *tn = NULL;
    size_t n_tn = 0;
    core_err_t err = {{0}};
    if (!a->p.store || store_tenants(a->p.store, &tn, &n_tn, &err) != RC_OK)
        return;
    for (size_t k = 0; k < n_tn; k++) {
        store_adapter_t *rows = NULL;
        size_t n = 0;
        if (store_list(a->p.store, tn[k].id, &rows, &n, &err) != RC_OK)
            continue;
        for (size_t i = 0; i < n; i++) {
            store_runtime_t rt;
            if (rows[i].shared) /* listed under its owner */
                continue;
            store_runtime(a->p.store, rows[i].id, &rt);
            api_mtext_t *dst = rt.resident && rt.n_users > 0 ? running
                               : rt.loading                  ? waiting
                                                             : NULL;
            if (dst)
                api_mtext_printf(dst, "%s%s", dst->len ? "," : "", rows[i].name);
        }
        free(rows);
    }
    free(tn);
}

/* vLLM's vllm:lora_requests_info, as vLLM writes it: one sample, value the scrape time. */
static void write_lora_info(api_t *a, api_mtext_t *t)
{
    static const char *const labels[] = {"running_lora_adapters", "waiting_lora_adapters",
                                         "max_lora"};
    api_mtext_t running = {0}, waiting = {0};
    lora_names(a, &running, &waiting);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    const char *const values[] = {running.p ? running.p : "", waiting.p ? waiting.p : "", ""};
    api_mtext_family(t, "vllm:lora_requests_info",
                     "vLLM-compatible LoRA info. running_lora_adapters: resident adapters in "
                     "use (held by a running or queued sequence; newest version of each name); "
                     "waiting_lora_adapters: adapters being loaded; max_lora: empty (the cache "
                     "is a byte budget, see adapterd_adapter_cache_budget_bytes). Value: unix "
                     "time of the scrape.",
                     "gauge");
    api_mtext_sample(t, "vllm:lora_requests_info", labels, values, 3,
                     (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
    t->oom = t->oom || running.oom || waiting.oom;
    api_mtext_free(&running);
    api_mtext_free(&waiting);
}

static void write_process(api_t *a, api_mtext_t *t)
{
    static const char *const labels[] = {"version"};
    const char *const values[] = {a->p.version ? a->p.version : "unknown"};
    api_mtext_family(t, "adapterd_build_info", "Always 1; the version label says which build.",
                     "gauge");
    api_mtext_sample(t, "adapterd_build_info", labels, values, 1, 1);
    api_mtext_single(t, "adapterd_start_time_seconds", "Unix time the daemon started serving.",
                     "gauge", api_metrics_start_time());
    api_mtext_single(t, "adapterd_metrics_dropped_total",
                     "Observations dropped because a metric family reached its series cap.",
                     "counter", (double)api_mreg_n_dropped(api_metrics_registry()));
}

void api__h_metrics(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    (void)req;
    (void)job;
    api_mtext_t t = {0};
    api_mreg_write(api_metrics_registry(), &t);
    write_engine(a, &t);
    write_store(a, &t);
    write_lora_info(a, &t);
    api__quota_metrics(a, &t);
    write_process(a, &t);
    if (t.oom || !t.p) {
        api_mtext_free(&t);
        api_send_error(sink, 500, NULL, "out_of_memory", "out of memory writing the metrics");
        return;
    }
    sink->begin(sink->self, 200, API_METRICS_CONTENT_TYPE, false, NULL);
    sink->write(sink->self, t.p, t.len);
    sink->end(sink->self);
    api_mtext_free(&t);
}
