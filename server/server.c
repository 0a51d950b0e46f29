/* server.c - start-up wiring, the loop, signals and drain, logging, the thread hop.
 *
 * The main thread runs the libuv loop; the engine thread computes and reaches the loop
 * only through srv_hop_post (a mutex-protected FIFO plus uv_async_send). Shutdown is
 * two-phase: drain (no new connections, in-flight requests finish) bounded by
 * --drain-timeout-ms, then abort (jobs cancelled; their end() still arrives and frees the
 * connections) bounded by a short grace period. Only when every connection is freed are
 * the remaining handles closed, so the loop ends by itself and everything is freed in
 * reverse start-up order. */
#include "server/server.h"

#include <libgen.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/api.h"
#include "core/engine.h"
#include "core/gemm.h"
#include "core/model.h"
#include "core/tokenizer.h"
#include "server/http.h"
#include "store/store.h"

#define DRAIN_TICK_MS 50
#define ABORT_GRACE_MS 5000

/* ---- logging ------------------------------------------------------------------------------ */

static int log_level = SRV_LOG_INFO;
static const char *const level_tags[] = {"error", "warn", "info", "debug"};

void srv_log_set_level(int level)
{
    log_level = level;
}

bool srv_log_enabled(int level)
{
    return level <= log_level;
}

void srv_log(int level, const char *fmt, ...)
{
    if (level > log_level)
        return;
    char line[1024], stamp[32];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* one fprintf per line, so lines from different threads do not interleave */
    fprintf(stderr, "%s.%03ldZ %-5s %s\n", stamp, ts.tv_nsec / 1000000, level_tags[level], line);
}

/* ---- the hop ------------------------------------------------------------------------------ */

struct srv_hop {
    uv_async_t async;
    pthread_mutex_t lock;
    srv_msg_t *head, *tail; /* under lock */
    bool closed;            /* under lock */
    bool draining;          /* loop thread only */
};

static void on_hop_async(uv_async_t *a)
{
    srv_hop_drain(a->data);
}

rc_t srv_hop_new(uv_loop_t *loop, srv_hop_t **out, core_err_t *err)
{
    *out = NULL;
    srv_hop_t *h = calloc(1, sizeof *h);
    if (!h)
        return core_err(err, RC_NOMEM, "out of memory");
    pthread_mutex_init(&h->lock, NULL);
    int rc = uv_async_init(loop, &h->async, on_hop_async);
    if (rc < 0) {
        pthread_mutex_destroy(&h->lock);
        free(h);
        return core_err(err, RC_IO, "uv_async_init: %s", uv_strerror(rc));
    }
    h->async.data = h;
    *out = h;
    return RC_OK;
}

void srv_hop_post(srv_hop_t *h, srv_msg_t *m)
{
    m->next = NULL;
    pthread_mutex_lock(&h->lock);
    if (h->tail)
        h->tail->next = m;
    else
        h->head = m;
    h->tail = m;
    /* under the lock, so srv_hop_close cannot close the handle between test and send */
    if (!h->closed)
        uv_async_send(&h->async);
    pthread_mutex_unlock(&h->lock);
}

void srv_hop_drain(srv_hop_t *h)
{
    if (h->draining)
        return; /* the outer drain picks up what the nested caller posted */
    h->draining = true;
    for (;;) {
        pthread_mutex_lock(&h->lock);
        srv_msg_t *m = h->head;
        h->head = h->tail = NULL;
        pthread_mutex_unlock(&h->lock);
        if (!m)
            break;
        while (m) {
            srv_msg_t *next = m->next; /* run() may free m */
            m->run(m);
            m = next;
        }
    }
    h->draining = false;
}

void srv_hop_close(srv_hop_t *h)
{
    pthread_mutex_lock(&h->lock);
    bool was_closed = h->closed;
    h->closed = true;
    pthread_mutex_unlock(&h->lock);
    if (!was_closed)
        uv_close((uv_handle_t *)&h->async, NULL);
}

size_t srv_hop_free(srv_hop_t *h)
{
    if (!h)
        return 0;
    size_t n = 0;
    for (srv_msg_t *m = h->head; m; m = m->next)
        n++;
    pthread_mutex_destroy(&h->lock);
    free(h);
    return n;
}

/* ---- start-up pieces shared by serve and import ---------------------------------------------- */

static int fail(const char *what, rc_t rc, const core_err_t *err)
{
    fprintf(stderr, "adapterd: %s: %s%s%s\n", what, rc_str(rc), err->msg[0] ? ": " : "", err->msg);
    return 1;
}

/* Load the base model and set its served name (--model-name, else the folder's name). */
static int model_open(const srv_config_t *cfg, core_model_t **out)
{
    core_err_t err = {{0}};
    char what[4200];
    snprintf(what, sizeof what, "model %s", cfg->model_dir);
    rc_t rc = core_model_load(cfg->model_dir, out, &err);
    if (rc != RC_OK)
        return fail(what, rc, &err);
    core_model_t *m = *out;
    if (cfg->model_name[0]) {
        snprintf(m->name, sizeof m->name, "%s", cfg->model_name);
    } else if (!m->name[0]) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", cfg->model_dir);
        snprintf(m->name, sizeof m->name, "%s", basename(dir)); /* GNU: trailing '/' ok */
    }
    return 0;
}

static void print_json_field(const char *key, const char *value, bool last)
{
    char esc[8192];
    srv_json_escape(esc, sizeof esc, value);
    printf("  \"%s\": \"%s\"%s\n", key, esc, last ? "" : ",");
}

/* The stored row as JSON on stdout (the import command's output). */
static void print_adapter(const store_adapter_t *r)
{
    printf("{\n  \"id\": %lld,\n", (long long)r->id);
    print_json_field("name", r->name, false);
    printf("  \"version\": %d,\n", r->version);
    print_json_field("kind", r->kind, false);
    printf("  \"rank\": %d,\n  \"alpha\": %.17g,\n", r->rank, r->alpha);
    print_json_field("targets", r->targets, false);
    print_json_field("base_fingerprint", r->base_fingerprint, false);
    print_json_field("sha256", r->sha256, false);
    printf("  \"size\": %lld,\n", (long long)r->size);
    print_json_field("path", r->path, false);
    printf("  \"created\": %lld\n}\n", (long long)r->created);
}

int srv_import_run(const srv_config_t *cfg)
{
    srv_log_set_level(cfg->log_level);
    core_gemm_init(cfg->threads);
    core_model_t *model = NULL;
    store_t *store = NULL;
    core_err_t err = {{0}};
    int status = model_open(cfg, &model);
    if (status != 0)
        goto out;
    rc_t rc = store_open(cfg->data_dir, model, &store, &err);
    if (rc != RC_OK) {
        status = fail("store", rc, &err);
        goto out;
    }
    store_adapter_t row;
    memset(&row, 0, sizeof row);
    rc = store_import(store, cfg->import_dir, cfg->name, &row, &err);
    if (rc != RC_OK) {
        char what[4200];
        snprintf(what, sizeof what, "import %s", cfg->import_dir);
        status = fail(what, rc, &err);
        goto out;
    }
    print_adapter(&row);
out:
    if (store)
        store_close(store);
    if (model)
        core_model_free(model);
    return status;
}

/* ---- the server ---------------------------------------------------------------------------- */

struct srv_server {
    srv_config_t cfg;
    core_model_t *model;
    core_tok_t *tok;
    store_t *store;
    core_engine_t *engine;
    api_t *api;

    uv_loop_t loop;
    bool loop_ready;
    srv_hop_t *hop;
    srv_http_t *http;
    uv_signal_t sigint, sigterm;
    uv_timer_t drain_timer;
    bool handles_ready;
    int n_signals;
    bool aborted, forced, closing;
    uint64_t deadline;
};

static void api_handle_cb(void *ctx, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    api_handle(ctx, req, sink, job);
}

static void api_cancel_cb(void *ctx, api_job_t *job)
{
    api_job_cancel(ctx, job);
}

static void api_free_cb(void *ctx, api_job_t *job)
{
    api_job_free(ctx, job);
}

/* Model, tokenizer, store (+ --adapters-dir imports), engine, api. */
static int server_open_core(srv_server_t *s)
{
    const srv_config_t *cfg = &s->cfg;
    core_err_t err = {{0}};
    core_gemm_init(cfg->threads);
    if (model_open(cfg, &s->model) != 0)
        return 1;
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", cfg->model_dir);
    rc_t rc = core_tok_load(path, &s->tok, &err);
    if (rc != RC_OK)
        return fail(path, rc, &err);
    rc = store_open(cfg->data_dir, s->model, &s->store, &err);
    if (rc != RC_OK)
        return fail("store", rc, &err);
    if (cfg->adapters_dir[0]) {
        int n = 0;
        rc = store_import_dir(s->store, cfg->adapters_dir, &n, &err);
        if (rc != RC_OK)
            return fail(cfg->adapters_dir, rc, &err);
        srv_log(SRV_LOG_INFO, "imported %d adapters from %s", n, cfg->adapters_dir);
    }
    core_engine_params_t ep = core_engine_default_params();
    ep.max_batch_tokens = cfg->max_batch_tokens;
    ep.max_seqs = cfg->max_seqs;
    ep.max_queue = cfg->max_queue;
    ep.kv_budget_bytes = cfg->kv_cache_bytes;
    ep.kv_block_tokens = cfg->kv_block_tokens;
    ep.max_rank = cfg->max_rank;
    rc = core_engine_new(s->model, s->tok, ep, &s->engine, &err);
    if (rc != RC_OK)
        return fail("engine", rc, &err);
    core_engine_stats_t st;
    core_engine_stats(s->engine, &st);
    srv_log(SRV_LOG_INFO, "engine: KV cache of %d blocks x %d tokens, %d tokens per step",
            st.kv_blocks_total, ep.kv_block_tokens, ep.max_batch_tokens);
    api_params_t ap = {.model = s->model,
                       .tok = s->tok,
                       .engine = s->engine,
                       .store = s->store,
                       .model_name = s->model->name};
    s->api = api_new(&ap);
    if (!s->api) {
        fprintf(stderr, "adapterd: api: out of memory\n");
        return 1;
    }
    return 0;
}

/* Close every handle the server owns; the loop then ends by itself. */
static void server_close_handles(srv_server_t *s)
{
    if (s->closing)
        return;
    s->closing = true;
    if (s->http)
        srv_http_close(s->http);
    if (s->hop)
        srv_hop_close(s->hop);
    if (s->handles_ready) {
        uv_close((uv_handle_t *)&s->sigint, NULL);
        uv_close((uv_handle_t *)&s->sigterm, NULL);
        uv_close((uv_handle_t *)&s->drain_timer, NULL);
    }
}

static void on_drain_tick(uv_timer_t *t)
{
    srv_server_t *s = t->data;
    uint64_t now = uv_now(&s->loop);
    if (srv_http_n_conns(s->http) == 0) {
        srv_log(SRV_LOG_INFO, "drained; shutting down");
        uv_timer_stop(t);
        server_close_handles(s);
    } else if (!s->aborted && now >= s->deadline) {
        srv_log(SRV_LOG_WARN, "drain timeout: cancelling %zu connections",
                srv_http_n_conns(s->http));
        s->aborted = true;
        s->deadline = now + ABORT_GRACE_MS;
        srv_http_abort(s->http);
    } else if (s->aborted && now >= s->deadline) {
        srv_log(SRV_LOG_ERROR, "jobs did not end after cancel; exiting without cleanup");
        s->forced = true;
        uv_stop(&s->loop);
    }
}

static void on_signal(uv_signal_t *sig, int signum)
{
    srv_server_t *s = sig->data;
    if (++s->n_signals > 1) {
        srv_log(SRV_LOG_WARN, "second signal: exiting now");
        s->forced = true;
        uv_stop(&s->loop);
        return;
    }
    srv_log(SRV_LOG_INFO, "%s: draining (up to %d ms)", signum == SIGINT ? "SIGINT" : "SIGTERM",
            s->cfg.drain_timeout_ms);
    s->deadline = uv_now(&s->loop) + (uint64_t)s->cfg.drain_timeout_ms;
    srv_http_drain(s->http);
    uv_timer_start(&s->drain_timer, on_drain_tick, 0, DRAIN_TICK_MS);
}

static srv_http_limits_t limits_of(const srv_config_t *cfg)
{
    srv_http_limits_t lim = srv_http_default_limits();
    lim.max_body_bytes = cfg->max_body_bytes;
    lim.max_header_bytes = cfg->max_header_bytes;
    lim.max_request_line_bytes = cfg->max_request_line_bytes;
    lim.max_write_buffer_bytes = cfg->max_write_buffer_bytes;
    lim.max_headers = cfg->max_headers;
    lim.max_connections = cfg->max_connections;
    lim.max_keepalive_requests = cfg->max_keepalive_requests;
    lim.header_timeout_ms = (uint64_t)cfg->header_timeout_ms;
    lim.body_timeout_ms = (uint64_t)cfg->body_timeout_ms;
    lim.idle_timeout_ms = (uint64_t)cfg->idle_timeout_ms;
    return lim;
}

/* Loop, hop, HTTP listener, signals. */
static int server_open_loop(srv_server_t *s, int *port)
{
    core_err_t err = {{0}};
    int rc = uv_loop_init(&s->loop);
    if (rc < 0) {
        fprintf(stderr, "adapterd: uv_loop_init: %s\n", uv_strerror(rc));
        return 1;
    }
    s->loop_ready = true;
    rc_t r = srv_hop_new(&s->loop, &s->hop, &err);
    if (r != RC_OK)
        return fail("hop", r, &err);
    srv_http_limits_t lim = limits_of(&s->cfg);
    srv_handler_t handler = {
        .ctx = s->api, .handle = api_handle_cb, .cancel = api_cancel_cb, .free_job = api_free_cb};
    r = srv_http_new(&s->loop, s->hop, &lim, &handler, &s->http, &err);
    if (r == RC_OK)
        r = srv_http_listen(s->http, s->cfg.host, s->cfg.port, port, &err);
    if (r != RC_OK)
        return fail("http", r, &err);
    uv_signal_init(&s->loop, &s->sigint);
    uv_signal_init(&s->loop, &s->sigterm);
    uv_timer_init(&s->loop, &s->drain_timer);
    s->sigint.data = s->sigterm.data = s->drain_timer.data = s;
    s->handles_ready = true;
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    return 0;
}

static size_t count_adapters(store_t *store)
{
    store_adapter_t *rows = NULL;
    size_t n = 0;
    core_err_t err = {{0}};
    if (store_list(store, &rows, &n, &err) != RC_OK)
        n = 0;
    free(rows);
    return n;
}

int srv_server_start(const srv_config_t *cfg, srv_server_t **out)
{
    *out = NULL;
    srv_log_set_level(cfg->log_level);
    srv_server_t *s = calloc(1, sizeof *s);
    if (!s) {
        fprintf(stderr, "adapterd: out of memory\n");
        return 1;
    }
    s->cfg = *cfg;
    int port = cfg->port;
    if (server_open_core(s) != 0 || server_open_loop(s, &port) != 0) {
        srv_server_free(s);
        return 1;
    }
    const char *host = cfg->host;
    bool v6 = strchr(host, ':') != NULL;
    printf("adapterd listening on http://%s%s%s:%d (model %s, %zu adapters)\n", v6 ? "[" : "", host,
           v6 ? "]" : "", port, s->model->name, count_adapters(s->store));
    fflush(stdout);
    *out = s;
    return 0;
}

int srv_server_run(srv_server_t *s)
{
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return s->forced ? 1 : 0;
}

void srv_server_free(srv_server_t *s)
{
    if (!s || s->forced)
        return; /* forced exit: threads may still hold these; the process ends anyway */
    if (s->loop_ready) {
        server_close_handles(s);
        uv_run(&s->loop, UV_RUN_DEFAULT); /* close callbacks */
    }
    if (s->api)
        api_free(s->api);
    if (s->engine)
        core_engine_free(s->engine);
    srv_http_free(s->http);
    size_t n_left = srv_hop_free(s->hop);
    if (n_left)
        srv_log(SRV_LOG_ERROR, "%zu engine messages arrived after shutdown", n_left);
    if (s->loop_ready && uv_loop_close(&s->loop) != 0)
        srv_log(SRV_LOG_ERROR, "loop closed with handles still open");
    if (s->store)
        store_close(s->store);
    if (s->tok)
        core_tok_free(s->tok);
    if (s->model)
        core_model_free(s->model);
    free(s);
}
