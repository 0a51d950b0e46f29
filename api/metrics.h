/* metrics.h - Prometheus metrics: a small registry of counters and histograms, a text
 * builder for the exposition format 0.0.4, and the process-wide registry GET /metrics
 * serves (docs/OPERATIONS.md lists every series).
 *
 * A family has a fixed list of label names (at most API_METRICS_MAX_LABELS) given at
 * registration; a series is created the first time a set of label values is used. The
 * callers choose bounded label values (route patterns, method names, status codes), and a
 * family never holds more than API_METRICS_MAX_SERIES series: observations of further
 * label sets are dropped (and counted, see api_mreg_n_dropped) rather than letting memory
 * grow with what clients send. Label values and HELP text are escaped as the format says
 * (label values: backslash, double quote, newline; HELP: backslash, newline).
 *
 * Threads: a registry is guarded by one mutex, so api_mfam_add / api_mfam_observe /
 * api_mreg_write may be called from any thread. api_metrics_observe_request is called by
 * the server on the loop thread; the GET /metrics handler (api__h_metrics, json_util.h)
 * runs there too. An api_mtext_t belongs to one thread.
 * Ownership: names, help texts and label names are borrowed for the registry's life (use
 * string literals); label values are copied. */
#ifndef API_METRICS_H
#define API_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define API_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define API_METRICS_MAX_LABELS 4
#define API_METRICS_MAX_SERIES 1024 /* per family */
#define API_METRICS_MAX_BUCKETS 32

/* ---- the text builder ------------------------------------------------------------- */

/* A growing string; after an allocation failure oom is set and appends do nothing. */
typedef struct {
    char *p; /* NUL-terminated once anything was appended */
    size_t len, cap;
    bool oom;
} api_mtext_t;

void api_mtext_free(api_mtext_t *t);
void api_mtext_printf(api_mtext_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "# HELP name help\n# TYPE name type\n" (help escaped). type: "counter", "gauge",
 * "histogram". */
void api_mtext_family(api_mtext_t *t, const char *name, const char *help, const char *type);
/* One sample line: name{l0="v0",...} value (no braces when n == 0; values escaped). */
void api_mtext_sample(api_mtext_t *t, const char *name, const char *const *label_names,
                      const char *const *values, int n, double value);
/* A family of one unlabelled sample (the scrape-time gauges and counters). */
void api_mtext_single(api_mtext_t *t, const char *name, const char *help, const char *type,
                      double value);
/* v as the format writes numbers: +Inf, -Inf, NaN, integers without a fraction, else the
 * shortest text that reads back as v. buf: at least 32 bytes. Returns buf. */
const char *api_mtext_number(double v, char *buf);

/* ---- the registry ----------------------------------------------------------------- */

typedef struct api_mreg api_mreg_t;
typedef struct api_mfam api_mfam_t;

api_mreg_t *api_mreg_new(void);
void api_mreg_free(api_mreg_t *r);
/* Register a family (owned by the registry). NULL when out of memory, when n_labels is
 * out of [0, API_METRICS_MAX_LABELS], or (histograms) when the bounds are not strictly
 * increasing finite numbers, 1..API_METRICS_MAX_BUCKETS of them (+Inf is implied). */
api_mfam_t *api_mreg_counter(api_mreg_t *r, const char *name, const char *help,
                             const char *const *label_names, int n_labels);
api_mfam_t *api_mreg_histogram(api_mreg_t *r, const char *name, const char *help,
                               const char *const *label_names, int n_labels, const double *bounds,
                               int n_bounds);
/* Counter += v (v >= 0; others are ignored). values: n_labels strings (NULL reads as ""). */
void api_mfam_add(api_mfam_t *f, const char *const *values, double v);
/* Histogram: count the observation in every bucket with v <= le, add v to _sum. */
void api_mfam_observe(api_mfam_t *f, const char *const *values, double v);
/* Observations dropped because a family was full (or out of memory). */
uint64_t api_mreg_n_dropped(api_mreg_t *r);
/* Append every family, in registration order, series in first-use order. A family with
 * no series yet still gets its HELP and TYPE lines. */
void api_mreg_write(api_mreg_t *r, api_mtext_t *t);

/* ---- the process-wide registry ---------------------------------------------------- */

/* Create the registry and note the start time (idempotent, any thread; api_new calls it). */
void api_metrics_init(void);
/* One finished request (the server, at its access log line). route: a route pattern or
 * "other"; method: the HTTP method name; seconds: from the request head's first byte to
 * the response's end. Counts adapterd_http_requests_total and observes
 * adapterd_http_request_duration_seconds. */
void api_metrics_observe_request(const char *route, const char *method, int status, double seconds);
/* One finished generation (engine thread): ttft < 0 when no token came (score, errors);
 * e2e and ttft from the engine submit. */
void api_metrics_observe_generation(const char *kind, double ttft, double e2e, int n_prompt,
                                    int n_gen);
/* Per tenant (any thread): a finished request's status; a finished generation's tokens;
 * a request refused by a quota (which: "concurrency", "tokens", "storage"). Tenant names
 * are bounded by the store's tenant table (label values are names, never keys). */
void api_metrics_observe_tenant(const char *tenant, int status);
void api_metrics_observe_tenant_tokens(const char *tenant, int n_prompt, int n_gen);
void api_metrics_observe_quota(const char *tenant, const char *which);
/* The time between two tokens of one sequence (engine thread). */
void api_metrics_observe_itl(double seconds);
/* The process-wide registry (after api_metrics_init; NULL when it could not be made). */
api_mreg_t *api_metrics_registry(void);
/* Unix time (seconds, with fractions) api_metrics_init first ran. */
double api_metrics_start_time(void);

#endif
