/* server.c - start-up wiring, the loop, signals and drain (logging and the thread hop
 * live in hop.c).
 *
 * The main thread runs the libuv loop; the engine thread computes and reaches the loop
 * only through srv_hop_post (a mutex-protected FIFO plus uv_async_send). The store's
 * blocking work (sqlite writes, blob files, adapter loads) runs on libuv's thread pool
 * through the executor below; a 100 ms timer drives store_tick. Shutdown is two-phase:
 * drain (no new connections, in-flight requests finish) bounded by --drain-timeout-ms,
 * then abort (jobs cancelled; their end() still arrives and frees the connections)
 * bounded by a short grace period. Only when every connection is freed are the remaining
 * handles closed, so the loop ends by itself once the store's tasks in flight are done
 * (their uv_work_t keep it alive), and everything is freed in reverse start-up order. */
#include "server/server.h"

#include <arpa/inet.h>
#include <libgen.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api/api.h"
#include "api/metrics.h"
#include "core/chat.h"
#include "core/engine.h"
#include "core/gemm.h"
#include "core/model.h"
#include "core/tokenizer.h"
#include "server/http.h"
#include "store/store.h"

#define DRAIN_TICK_MS 50
#define ABORT_GRACE_MS 5000
#define STORE_TICK_MS 100

/* ---- start-up pieces shared by serve and import ---------------------------------------------- */

static int fail(const char *what, rc_t rc, const core_err_t *err)
{
    fprintf(stderr, "adapterd: %s: %s%s%s\n", what, rc_str(rc), err->msg[0] ? ": " : "", err->msg);
    return 1;
}

/* Model load progress: a bar redrawn in place on a terminal, else a log line every 10 %. */
typedef struct {
    bool tty;
    int last; /* percent last shown, -1 = none */
} load_progress_t;

static void on_load_progress(void *user, size_t done, size_t total)
{
    load_progress_t *p = user;
    int pct = total ? (int)(done * 100 / total) : 100;
    if (p->tty) {
        if (pct == p->last)
            return;
        char bar[41];
        memset(bar, '#', (size_t)(pct * 40 / 100));
        memset(bar + pct * 40 / 100, '.', (size_t)(40 - pct * 40 / 100));
        bar[40] = 0;
        fprintf(stderr, "\rloading model [%s] %3d%% %zu/%zu MB%s", bar, pct, done >> 20,
                total >> 20, done >= total ? "\n" : "");
    } else if (pct / 10 > p->last / 10 || (p->last < 0 && pct < 10)) {
        srv_log(SRV_LOG_INFO, "loading model: %d%% (%zu of %zu MB)", pct, done >> 20, total >> 20);
    } else {
        return;
    }
    p->last = pct;
}

/* Load the base model and set its served name (--model-name, else the folder's name). */
static int model_open(const srv_config_t *cfg, core_model_t **out)
{
    core_err_t err = {{0}};
    char what[4200];
    snprintf(what, sizeof what, "model %s", cfg->model_dir);
    load_progress_t prog = {.tty = isatty(STDERR_FILENO) != 0, .last = -1};
    core_model_load_params_t lp = {.progress = on_load_progress, .user = &prog};
    rc_t rc = core_model_load_ex(cfg->model_dir, &lp, out, &err);
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
    print_json_field("config_sha256", r->config_sha256, false);
    printf("  \"size\": %lld,\n", (long long)r->size);
    printf("  \"memory_bytes\": %lld,\n", (long long)r->mem_bytes);
    print_json_field("state", store_state_str(r->state), false);
    printf("  \"created\": %lld\n}\n", (long long)r->created);
}

/* The store's settings from the flags; exec is left for the caller (the daemon's thread
 * pool, or synchronous for the import command). */
static store_params_t store_params_of(const srv_config_t *cfg, const core_model_t *model)
{
    store_params_t sp = store_default_params();
    sp.data_dir = cfg->data_dir;
    sp.base = model;
    sp.cache_budget_bytes = cfg->adapter_cache_bytes;
    sp.max_adapter_bytes = cfg->max_upload_bytes;
    sp.load_wait_ms = (uint64_t)cfg->adapter_load_wait_ms;
    sp.gc_interval_ms = (uint64_t)cfg->blob_gc_interval_ms;
    sp.lock = true; /* one process writes a DATA_DIR: RC_BUSY says who holds it */
    sp.default_max_concurrent = cfg->tenant_max_concurrent;
    sp.default_tokens_per_min = cfg->tenant_tokens_per_min;
    sp.default_max_stored_bytes = (int64_t)cfg->tenant_max_stored_bytes;
    return sp;
}

/* Progress of `adapterd import`: a bar on a TTY, a log line every 10% otherwise. */
typedef struct {
    bool tty;
    const char *phase;
    int last_pct;
} import_progress_t;

static void import_progress(void *user, const char *phase, uint64_t done, uint64_t total)
{
    import_progress_t *p = user;
    int pct = total ? (int)(done * 100 / total) : 100;
    if (p->phase != phase && (!p->phase || strcmp(p->phase, phase) != 0)) {
        if (p->tty && p->phase)
            fputc('\n', stderr);
        p->phase = phase;
        p->last_pct = -1;
    }
    if (pct == p->last_pct ||
        (!p->tty && p->last_pct >= 0 && pct / 10 == p->last_pct / 10 && pct != 100))
        return;
    p->last_pct = pct;
    if (p->tty) {
        int w = pct / 4;
        fprintf(stderr, "\r%-6s [%.*s%*s] %3d%% %llu/%llu MiB", phase, w,
                "=========================", 25 - w, "", pct,
                (unsigned long long)(done >> 20), (unsigned long long)(total >> 20));
        if (pct == 100 && strcmp(phase, "verify") == 0)
            fputc('\n', stderr);
    } else {
        srv_log(SRV_LOG_INFO, "import: %s %d%% (%llu of %llu bytes)", phase, pct,
                (unsigned long long)done, (unsigned long long)total);
    }
}

/* The tenant the import command writes for (--tenant, default "default"). */
static int import_tenant(const srv_config_t *cfg, store_t *store, int64_t *tenant)
{
    store_tenant_t t;
    *tenant = STORE_TENANT_DEFAULT;
    if (!cfg->tenant || !cfg->tenant[0])
        return 0;
    if (store_tenant_by_name(store, cfg->tenant, &t) != RC_OK) {
        fprintf(stderr, "adapterd: import: no tenant '%s' (adapterd tenant add NAME)\n",
                cfg->tenant);
        return 1;
    }
    *tenant = t.id;
    return 0;
}

/* A router folder: its experts are its sub-folders, or --experts, or its config's names. */
static rc_t import_router(const srv_config_t *cfg, store_t *store, int64_t tenant,
                          store_adapter_t *row, core_err_t *err)
{
    char buf[CORE_ROUTER_MAX_EXPERTS * (STORE_SPEC_MAX + 1)];
    const char *specs[CORE_ROUTER_MAX_EXPERTS];
    int n = 0;
    snprintf(buf, sizeof buf, "%s", cfg->experts ? cfg->experts : "");
    for (char *save = NULL, *p = strtok_r(buf, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        if (n == CORE_ROUTER_MAX_EXPERTS)
            return core_err(err, RC_INVALID, "--experts: more than %d experts",
                            CORE_ROUTER_MAX_EXPERTS);
        specs[n++] = p;
    }
    return store_router_import(store, tenant, cfg->import_dir, cfg->name, n ? specs : NULL, n,
                               row, err);
}

int srv_import_run(const srv_config_t *cfg)
{
    srv_log_set_level(cfg->log_level);
    srv_log_set_format(cfg->log_format);
    core_gemm_init(cfg->threads);
    core_model_t *model = NULL;
    store_t *store = NULL;
    core_err_t err = {{0}};
    int status = model_open(cfg, &model);
    if (status != 0)
        goto out;
    store_params_t sp = store_params_of(cfg, model);
    sp.exec = (store_exec_t){.ctx = NULL, .submit = NULL}; /* one thread: run tasks inline */
    rc_t rc = store_open(&sp, &store, &err);
    if (rc != RC_OK) {
        status = fail("store", rc, &err);
        goto out;
    }
    store_adapter_t row;
    memset(&row, 0, sizeof row);
    int64_t tenant = STORE_TENANT_DEFAULT;
    if ((status = import_tenant(cfg, store, &tenant)) != 0)
        goto out;
    import_progress_t prog = {.tty = isatty(STDERR_FILENO) != 0, .phase = NULL, .last_pct = -1};
    if (core_router_dir_is_router(cfg->import_dir))
        rc = import_router(cfg, store, tenant, &row, &err);
    else
        rc = store_import(store, tenant, cfg->import_dir, cfg->name, import_progress, &prog,
                          &row, &err);
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
    core_chat_t *chat; /* NULL: no chat template */
    store_t *store;
    core_engine_t *engine;
    api_t *api;

    char **roots; /* --adapter-roots, split and resolved (realpath) */
    int n_roots;

    uv_loop_t loop; /* initialised first, so every srv_server_t has one */
    srv_hop_t *hop;
    srv_http_t *http;
    uv_signal_t sigint, sigterm;
    uv_timer_t drain_timer, store_timer;
    bool handles_ready;
    int n_signals;
    bool aborted, forced, closing;
    uint64_t deadline;
    uint64_t trim_steps;   /* the engine's step count when it was last seen to change */
    uint64_t trim_since;   /* loop time of that change */
    bool trimmed;          /* malloc_trim ran since then */
};

/* ---- the store's executor: libuv's thread pool ------------------------------------------- */

typedef struct {
    uv_work_t req; /* first: the callbacks get &req */
    store_task_t *task;
} srv_work_t;

static void on_store_work(uv_work_t *req)
{
    store_task_t *t = ((srv_work_t *)req)->task;
    t->work(t);
}

/* status is never UV_ECANCELED: nothing calls uv_cancel, so work() has run. */
static void on_store_work_done(uv_work_t *req, int status)
{
    (void)status;
    store_task_t *t = ((srv_work_t *)req)->task;
    free(req);
    t->done(t);
}

static void store_exec_submit(void *ctx, store_task_t *t)
{
    srv_work_t *w = malloc(sizeof *w);
    if (w) {
        w->task = t;
        if (uv_queue_work(ctx, &w->req, on_store_work, on_store_work_done) == 0)
            return;
        free(w);
    }
    /* Out of memory: the store's done() is owed, so run the task here (as the synchronous
     * executor does), blocking the loop once rather than losing the task. */
    srv_log(SRV_LOG_ERROR, "could not queue a store task; running it on the loop thread");
    t->work(t);
    t->done(t);
}

/* After a burst, glibc keeps the freed batch scratch, KV staging and connection buffers of
 * the engine and pool threads' arenas (tens of MB after 512 connections) although nothing
 * uses them: once the engine has been idle for --heap-trim-idle-ms, hand those pages back,
 * once per idle period. Never under load, where they would only be faulted in again. */
static void trim_when_idle(srv_server_t *s, uint64_t now)
{
    core_engine_stats_t st;
    core_engine_stats(s->engine, &st);
    if (st.n_steps != s->trim_steps || st.n_running > 0 || st.n_waiting > 0) {
        s->trim_steps = st.n_steps;
        s->trim_since = now;
        s->trimmed = false;
        return;
    }
    uint64_t idle_ms = (uint64_t)s->cfg.heap_trim_idle_ms;
    if (idle_ms > 0 && !s->trimmed && now - s->trim_since >= idle_ms) {
        malloc_trim(0);
        s->trimmed = true;
    }
}

static void on_store_timer(uv_timer_t *t)
{
    srv_server_t *s = t->data;
    uint64_t now = uv_now(&s->loop);
    store_tick(s->store, now);
    trim_when_idle(s, now);
}

/* Run the loop until the store's tasks in flight are done (store_close needs none).
 * false when some never finish (then the store is left open rather than freed under them). */
static bool store_tasks_drain(srv_server_t *s)
{
    while (store_n_tasks(s->store) > 0)
        if (uv_run(&s->loop, UV_RUN_ONCE) == 0 && store_n_tasks(s->store) > 0) {
            srv_log(SRV_LOG_ERROR, "%d store tasks never finished", store_n_tasks(s->store));
            return false;
        }
    return true;
}

/* ---- the handler the HTTP layer calls: the api, plus store housekeeping ---------------------- */

static void api_handle_cb(void *ctx, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    api_handle(((srv_server_t *)ctx)->api, req, sink, job);
}

static void api_cancel_cb(void *ctx, api_job_t *job)
{
    api_job_cancel(((srv_server_t *)ctx)->api, job);
}

/* A finished job dropped its adapter references: loads waiting for cache room retry now
 * rather than at the next timer tick. */
static void api_free_cb(void *ctx, api_job_t *job)
{
    srv_server_t *s = ctx;
    api_job_free(s->api, job);
    store_tick(s->store, uv_now(&s->loop));
}

/* Metrics and the access line's route and adapter: the api knows its route table. */
static void api_finished_cb(void *ctx, srv_access_t *a)
{
    srv_server_t *s = ctx;
    a->route = api_route_name(s->api, a->method, a->path);
    api_route_adapter(s->api, a->method, a->path, a->adapter, sizeof a->adapter);
    api_metrics_observe_request(a->route, a->method ? a->method : "other", a->status, a->seconds);
    if (a->note && a->note->tenant[0])
        api_metrics_observe_tenant(a->note->tenant, a->status);
}

static api_body_mode_t api_body_begin_cb(void *ctx, const api_request_t *req, api_sink_t *sink,
                                         api_body_t **body, size_t *max_body)
{
    return api_body_begin(((srv_server_t *)ctx)->api, req, sink, body, max_body);
}

static void api_body_data_cb(void *ctx, api_body_t *body, const char *data, size_t len)
{
    api_body_data(((srv_server_t *)ctx)->api, body, data, len);
}

static void api_body_end_cb(void *ctx, api_body_t *body, api_job_t **job)
{
    api_body_end(((srv_server_t *)ctx)->api, body, job);
}

static void api_body_abort_cb(void *ctx, api_body_t *body)
{
    api_body_abort(((srv_server_t *)ctx)->api, body);
}

/* ---- start-up ------------------------------------------------------------------------------ */

/* --adapter-roots into s->roots, each resolved with realpath so the api's containment
 * check compares canonical paths (flags.c already checked they are absolute folders). */
static int roots_split(srv_server_t *s)
{
    const char *list = s->cfg.adapter_roots;
    int n = list[0] ? 1 : 0;
    for (const char *p = list; *p; p++)
        n += *p == ',';
    s->roots = calloc((size_t)n + 1, sizeof *s->roots);
    if (!s->roots)
        return fail("--adapter-roots", RC_NOMEM, &(core_err_t){{0}});
    for (const char *p = list; s->n_roots < n; p += strcspn(p, ",") + 1) {
        size_t len = strcspn(p, ",");
        char *dir = strndup(p, len);
        s->roots[s->n_roots] = dir ? realpath(dir, NULL) : NULL;
        free(dir);
        if (!s->roots[s->n_roots]) {
            fprintf(stderr, "adapterd: --adapter-roots: '%.*s': cannot resolve it\n", (int)len, p);
            return 1;
        }
        s->n_roots++;
    }
    if (s->cfg.allow_local_adapter_paths && n == 0)
        srv_log(SRV_LOG_WARN, "--allow-local-adapter-paths=1 without --adapter-roots: every "
                              "lora_path will be refused");
    return 0;
}

/* A whole small file. OUT: *text malloc'd (NUL-terminated), *len. */
static rc_t srv_read_file(const char *path, size_t max, char **text, size_t *len,
                          core_err_t *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return core_err(err, RC_NOT_FOUND, "cannot open");
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    rc_t rc = !buf ? core_err(err, RC_NOMEM, "out of memory")
              : ferror(f) ? core_err(err, RC_IO, "read error")
              : n > max   ? core_err(err, RC_LIMIT, "larger than %zu bytes", max)
                          : RC_OK;
    fclose(f);
    if (rc != RC_OK) {
        free(buf);
        return rc;
    }
    buf[n] = 0;
    *text = buf;
    *len = n;
    return RC_OK;
}

/* The chat template: --chat-template FILE, else the model's tokenizer_config.json. A model
 * without one serves everything but chat (which answers 400 saying so); a template that
 * does not compile stops start-up when given by flag, and only disables chat otherwise. */
static int chat_open(srv_server_t *s)
{
    const srv_config_t *cfg = &s->cfg;
    core_err_t err = {{0}};
    rc_t rc;
    if (cfg->chat_template[0]) {
        char *text = NULL;
        size_t len = 0;
        rc = srv_read_file(cfg->chat_template, 1u << 20, &text, &len, &err);
        if (rc == RC_OK)
            rc = core_chat_from_text(text, len, NULL, NULL, &s->chat, &err);
        free(text);
        return rc == RC_OK ? 0 : fail(cfg->chat_template, rc, &err);
    }
    rc = core_chat_load(cfg->model_dir, &s->chat, &err);
    if (rc == RC_NOT_FOUND)
        srv_log(SRV_LOG_INFO, "no chat template (%s): /v1/chat/completions answers 400", err.msg);
    else if (rc != RC_OK)
        srv_log(SRV_LOG_WARN, "chat template disabled: %s", err.msg);
    return 0;
}

/* 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104: only this machine can connect. */
static bool host_is_loopback(const char *host)
{
    unsigned char a[16];
    if (inet_pton(AF_INET, host, a) == 1)
        return a[0] == 127;
    if (inet_pton(AF_INET6, host, a) != 1)
        return false;
    static const unsigned char one[16] = {[15] = 1};
    static const unsigned char v4map[12] = {[10] = 0xff, [11] = 0xff};
    return memcmp(a, one, 16) == 0 || (memcmp(a, v4map, 12) == 0 && a[12] == 127);
}

/* Without a key every client is an admin: only loopback, unless the operator insists. */
static int check_exposure(const srv_config_t *cfg, store_t *store)
{
    if (store_n_active_keys(store) > 0 || host_is_loopback(cfg->host))
        return 0;
    if (cfg->insecure_no_auth) {
        srv_log(SRV_LOG_WARN, "serving %s with no API keys (--insecure-no-auth): every client "
                              "is an admin",
                cfg->host);
        return 0;
    }
    fprintf(stderr,
            "adapterd: refusing to serve %s with no API keys: anyone who can connect would be an "
            "admin. Create a key first (adapterd key add --tenant default --role admin), bind "
            "127.0.0.1, or pass --insecure-no-auth 1\n",
            cfg->host);
    return 1;
}

/* Model, tokenizer, store (+ --adapters-dir imports), engine, api. The loop exists already
 * (the store's executor queues onto it); it runs only later. */
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
    if (chat_open(s) != 0)
        return 1;
    store_params_t sp = store_params_of(cfg, s->model);
    sp.exec = (store_exec_t){.ctx = &s->loop, .submit = store_exec_submit};
    rc = store_open(&sp, &s->store, &err);
    if (rc != RC_OK)
        return fail("store", rc, &err);
    /* store_open refuses any other setting; logged so an operator can see what was checked */
    srv_log(SRV_LOG_INFO, "store: %s/adapterd.db journal_mode=wal synchronous=full mmap_size=0, "
            "one writer connection (it alone commits and checkpoints)", cfg->data_dir);
    if (check_exposure(cfg, s->store) != 0)
        return 1;
    if (cfg->adapters_dir[0]) {
        int n = 0;
        rc = store_import_dir(s->store, STORE_TENANT_DEFAULT, cfg->adapters_dir, &n, &err);
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
    if (roots_split(s) != 0)
        return 1;
    api_params_t ap = {.model = s->model,
                       .tok = s->tok,
                       .engine = s->engine,
                       .store = s->store,
                       .chat = s->chat,
                       .model_name = s->model->name,
                       .max_upload_bytes = cfg->max_upload_bytes,
                       .allow_local_paths = cfg->allow_local_adapter_paths != 0,
                       .adapter_roots = (const char *const *)s->roots,
                       .n_adapter_roots = s->n_roots,
                       .version = SRV_VERSION};
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
        uv_close((uv_handle_t *)&s->store_timer, NULL);
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
    api_set_draining(s->api, true); /* GET /readyz: 503 from now on */
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
    lim.max_connection_age_ms = (uint64_t)cfg->max_connection_age_ms;
    return lim;
}

/* Hop, HTTP listener, signals, the store's timer (the loop itself is made first). */
static int server_open_loop(srv_server_t *s, int *port)
{
    core_err_t err = {{0}};
    rc_t r = srv_hop_new(&s->loop, &s->hop, &err);
    if (r != RC_OK)
        return fail("hop", r, &err);
    srv_http_limits_t lim = limits_of(&s->cfg);
    srv_handler_t handler = {.ctx = s,
                             .handle = api_handle_cb,
                             .cancel = api_cancel_cb,
                             .free_job = api_free_cb,
                             .body_begin = api_body_begin_cb,
                             .body_data = api_body_data_cb,
                             .body_end = api_body_end_cb,
                             .body_abort = api_body_abort_cb,
                             .finished = api_finished_cb};
    r = srv_http_new(&s->loop, s->hop, &lim, &handler, &s->http, &err);
    if (r == RC_OK)
        r = srv_http_listen(s->http, s->cfg.host, s->cfg.port, port, &err);
    if (r != RC_OK)
        return fail("http", r, &err);
    uv_signal_init(&s->loop, &s->sigint);
    uv_signal_init(&s->loop, &s->sigterm);
    uv_timer_init(&s->loop, &s->drain_timer);
    uv_timer_init(&s->loop, &s->store_timer);
    s->sigint.data = s->sigterm.data = s->drain_timer.data = s->store_timer.data = s;
    s->handles_ready = true;
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_timer_start(&s->store_timer, on_store_timer, STORE_TICK_MS, STORE_TICK_MS);
    return 0;
}

static size_t count_adapters(store_t *store)
{
    store_adapter_t *rows = NULL;
    size_t n = 0;
    core_err_t err = {{0}};
    if (store_list(store, STORE_TENANT_DEFAULT, &rows, &n, &err) != RC_OK)
        n = 0;
    free(rows);
    return n;
}

int srv_server_start(const srv_config_t *cfg, srv_server_t **out)
{
    *out = NULL;
    srv_log_set_level(cfg->log_level);
    srv_log_set_format(cfg->log_format);
    srv_server_t *s = calloc(1, sizeof *s);
    if (!s) {
        fprintf(stderr, "adapterd: out of memory\n");
        return 1;
    }
    s->cfg = *cfg;
    int port = cfg->port;
    int rc = uv_loop_init(&s->loop);
    if (rc < 0) {
        fprintf(stderr, "adapterd: uv_loop_init: %s\n", uv_strerror(rc));
        free(s);
        return 1;
    }
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
    /* close callbacks, and the store's tasks in flight: their done() may still call into
     * the api, so they finish before it is freed */
    server_close_handles(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    bool store_idle = !s->store || store_tasks_drain(s);
    if (s->api)
        api_free(s->api);
    if (s->engine)
        core_engine_free(s->engine);
    store_idle = store_idle && (!s->store || store_tasks_drain(s)); /* queued while freeing */
    srv_http_free(s->http);
    size_t n_left = srv_hop_free(s->hop);
    if (n_left)
        srv_log(SRV_LOG_ERROR, "%zu engine messages arrived after shutdown", n_left);
    if (uv_loop_close(&s->loop) != 0)
        srv_log(SRV_LOG_ERROR, "loop closed with handles still open");
    if (s->store && store_idle)
        store_close(s->store);
    for (int i = 0; i < s->n_roots; i++)
        free(s->roots[i]);
    free(s->roots);
    if (s->tok)
        core_tok_free(s->tok);
    core_chat_free(s->chat);
    if (s->model)
        core_model_free(s->model);
    free(s);
}
