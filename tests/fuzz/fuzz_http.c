/* fuzz_http.c - libFuzzer target: the HTTP path end to end (RELIABILITY H15b, h2o style).
 *
 * One srv_http_t (server/http.c, the daemon's limits) on a libuv loop, answering through
 * the real api (fuzz_api.h: store, tokenizer, no engine) with the same callbacks the
 * daemon's server.c installs. Each input is one connection: a socketpair whose server end
 * is handed to the listener's own accept path (accepted_fd + connection_cb, so the
 * connection is set up exactly as on_connection does for TCP), the input written into the
 * client end, the loop run with UV_RUN_NOWAIT until nothing moves, the responses read, the
 * client end closed, and the loop run until the connection is freed.
 *
 * Oracles besides ASan/UBSan/LeakSanitizer: whatever comes back starts with an HTTP/1.x
 * status line, and a connection whose client has gone is freed within a bounded number of
 * loop turns (no timer needed). Logging is at error level (FUZZ_HTTP_LOG=1: info, JSON). */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api/metrics.h"
#include "server/http.h"
#include "server/http_int.h"
#include "server/server.h"
#include "tests/fuzz/fuzz_api.h"

static uv_loop_t g_loop;
static srv_hop_t *g_hop;
static srv_http_t *g_http;
static api_t *g_api;

/* ---- the daemon's handler callbacks (server.c), over g_api ---- */

static void h_handle(void *ctx, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    api_handle(ctx, req, sink, job);
}

static void h_cancel(void *ctx, api_job_t *job)
{
    api_job_cancel(ctx, job);
}

static void h_free_job(void *ctx, api_job_t *job)
{
    api_job_free(ctx, job);
}

static api_body_mode_t h_body_begin(void *ctx, const api_request_t *req, api_sink_t *sink,
                                    api_body_t **body, size_t *max_body)
{
    return api_body_begin(ctx, req, sink, body, max_body);
}

static void h_body_data(void *ctx, api_body_t *body, const char *data, size_t len)
{
    api_body_data(ctx, body, data, len);
}

static void h_body_end(void *ctx, api_body_t *body, api_job_t **job)
{
    api_body_end(ctx, body, job);
}

static void h_body_abort(void *ctx, api_body_t *body)
{
    api_body_abort(ctx, body);
}

static void h_finished(void *ctx, srv_access_t *a)
{
    a->route = api_route_name(ctx, a->method, a->path);
    api_route_adapter(ctx, a->method, a->path, a->adapter, sizeof a->adapter);
    api_metrics_observe_request(a->route, a->method ? a->method : "other", a->status, a->seconds);
    if (a->note && a->note->tenant[0])
        api_metrics_observe_tenant(a->note->tenant, a->status);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    core_err_t err = {{0}};
    const char *log = getenv("FUZZ_HTTP_LOG");
    if (log && strcmp(log, "1") == 0) {
        srv_log_set_format(SRV_LOG_FORMAT_JSON);
        srv_log_set_level(SRV_LOG_INFO);
    } else {
        srv_log_set_level(SRV_LOG_ERROR);
    }
    g_api = fuzz_api_new("fuzz_http");
    ASSERT_EQ(uv_loop_init(&g_loop), 0);
    ASSERT_RC(srv_hop_new(&g_loop, &g_hop, &err), RC_OK, &err);
    srv_http_limits_t lim = srv_http_default_limits();
    srv_handler_t h = {.ctx = g_api,
                       .handle = h_handle,
                       .cancel = h_cancel,
                       .free_job = h_free_job,
                       .body_begin = h_body_begin,
                       .body_data = h_body_data,
                       .body_end = h_body_end,
                       .body_abort = h_body_abort,
                       .finished = h_finished};
    ASSERT_RC(srv_http_new(&g_loop, g_hop, &lim, &h, &g_http, &err), RC_OK, &err);
    /* The listener is only the accept path's stream; no client ever connects to it. */
    ASSERT_RC(srv_http_listen(g_http, "127.0.0.1", 0, NULL, &err), RC_OK, &err);
    return 0;
}

/* Reads what the server sent into out (kept up to cap bytes). Returns the bytes read. */
static size_t drain(int fd, char *out, size_t cap, size_t *len)
{
    char buf[65536];
    size_t total = 0;
    for (;;) {
        ssize_t k = read(fd, buf, sizeof buf);
        if (k <= 0)
            return total;
        size_t n = (size_t)k < cap - *len ? (size_t)k : cap - *len;
        memcpy(out + *len, buf, n);
        *len += n;
        total += (size_t)k;
    }
}

/* Turns the loop until three turns in a row read nothing new and the count of
 * connections stays put (or max turns). Returns the turns used. */
static int run_until_idle(int fd, char *out, size_t cap, size_t *len, int max)
{
    int quiet = 0, turns = 0;
    while (turns < max && quiet < 3) {
        size_t before = srv_http_n_conns(g_http);
        uv_run(&g_loop, UV_RUN_NOWAIT);
        turns++;
        size_t got = fd >= 0 ? drain(fd, out, cap, len) : 0;
        quiet = got == 0 && srv_http_n_conns(g_http) == before ? quiet + 1 : 0;
    }
    return turns;
}

/* Writes all of data (the socket buffer is larger than libFuzzer's inputs, but turn the
 * loop if it fills so the server can read). */
static void send_all(int fd, const uint8_t *data, size_t size, char *out, size_t cap, size_t *len)
{
    while (size > 0) {
        ssize_t k = write(fd, data, size);
        if (k < 0 && errno == EAGAIN) {
            run_until_idle(fd, out, cap, len, 8);
            continue;
        }
        if (k <= 0)
            return; /* the server closed (e.g. after a 400): the rest is not needed */
        data += k;
        size -= (size_t)k;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char out[1 << 16];
    size_t out_len = 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
        abort();
    /* What uv__server_io would have done after accept4(): hand the fd to the callback. */
    g_http->listener.accepted_fd = sv[0];
    g_http->listener.connection_cb((uv_stream_t *)&g_http->listener, 0);
    send_all(sv[1], data, size, out, sizeof out, &out_len);
    run_until_idle(sv[1], out, sizeof out, &out_len, 200);
    close(sv[1]);
    for (int turns = 0; srv_http_n_conns(g_http) > 0; turns++) {
        if (turns > 1000) {
            fprintf(stderr, "fuzz_http: connection not freed after its client closed\n");
            abort();
        }
        uv_run(&g_loop, UV_RUN_NOWAIT);
    }
    if (out_len > 0 && (out_len < 9 || memcmp(out, "HTTP/1.", 7) != 0)) {
        fprintf(stderr, "fuzz_http: response does not start with a status line: %.40s\n", out);
        abort();
    }
    return 0;
}
