/* test_http_stream.c - streamed request bodies in server/http.c (policy in http.h).
 *
 * Each test runs a real srv_http_t on 127.0.0.1 (port 0) in a libuv loop on the test's
 * thread, with a fake handler whose routes pick the body mode by path:
 *   /stream  STREAM (limit g_stream_max); body_end answers 20 ms later from a timer, so a
 *            pipelined request answered at once would overtake it if parsing did not pause
 *   /answer  ANSWERED: 415 written through the sink inside body_begin
 *   other    WHOLE: answered at once with "whole:<len>:<body>"
 * A client thread drives a blocking socket, then wakes the loop (uv_async) to abort the
 * server and end the loop; the test asserts on the handler's counters after the join.
 * Counters are atomics: the client thread polls some of them while the loop runs. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/http.h"
#include "server/server.h"
#include "tests/unit/harness.h"

/* ---- the fake handler (loop thread) ----------------------------------------------------- */

typedef struct {
    api_sink_t *sink;
    size_t n_bytes;
} fake_body_t;

typedef struct {
    uv_timer_t timer;
    api_sink_t *sink;
    char text[64];
    bool done;
} fake_job_t;

static uv_loop_t *g_loop;
static size_t g_stream_max;
static atomic_int n_begin, n_data, n_end, n_abort, n_handle, n_cancel, n_free_job;
static atomic_size_t got_len; /* bytes of streamed body received */
static unsigned char got[1 << 20];
static fake_job_t jobs[16];
static int n_jobs;

static void reset_fake(void)
{
    atomic_store(&n_begin, 0), atomic_store(&n_data, 0), atomic_store(&n_end, 0);
    atomic_store(&n_abort, 0), atomic_store(&n_handle, 0), atomic_store(&n_cancel, 0);
    atomic_store(&n_free_job, 0), atomic_store(&got_len, 0);
    n_jobs = 0;
    g_stream_max = 1 << 20;
}

static void answer(api_sink_t *sink, int status, const char *text)
{
    sink->begin(sink->self, status, "text/plain", false, NULL);
    sink->write(sink->self, text, strlen(text));
    sink->end(sink->self);
}

static void fake_handle(void *ctx, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    (void)ctx;
    atomic_fetch_add(&n_handle, 1);
    char text[256];
    snprintf(text, sizeof text, "whole:%zu:%.*s", req->body_len,
             (int)(req->body_len < 100 ? req->body_len : 100), req->body ? req->body : "");
    answer(sink, 200, text);
    *job = NULL;
}

static void on_job_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_job_timer(uv_timer_t *t)
{
    fake_job_t *j = t->data;
    j->done = true;
    answer(j->sink, 200, j->text);
    uv_close((uv_handle_t *)&j->timer, on_job_closed);
}

static void fake_cancel(void *ctx, api_job_t *job)
{
    (void)ctx;
    fake_job_t *j = (fake_job_t *)job;
    atomic_fetch_add(&n_cancel, 1);
    if (j->done)
        return;
    j->done = true;
    j->sink->end(j->sink->self); /* end() is still owed after a cancel */
    uv_close((uv_handle_t *)&j->timer, on_job_closed);
}

static void fake_free_job(void *ctx, api_job_t *job)
{
    (void)ctx;
    (void)job;
    atomic_fetch_add(&n_free_job, 1);
}

static api_body_mode_t fake_body_begin(void *ctx, const api_request_t *req, api_sink_t *sink,
                                       api_body_t **body, size_t *max_body)
{
    (void)ctx;
    atomic_fetch_add(&n_begin, 1);
    ASSERT(req->body == NULL);
    if (strcmp(req->path, "/answer") == 0) {
        answer(sink, 415, "not here");
        return API_BODY_ANSWERED;
    }
    if (strcmp(req->path, "/stream") != 0)
        return API_BODY_WHOLE;
    fake_body_t *b = calloc(1, sizeof *b); /* ASan: leaked unless end or abort frees it */
    ASSERT(b != NULL);
    b->sink = sink;
    *body = (api_body_t *)b;
    *max_body = g_stream_max;
    return API_BODY_STREAM;
}

static void fake_body_data(void *ctx, api_body_t *body, const char *data, size_t len)
{
    (void)ctx;
    fake_body_t *b = (fake_body_t *)body;
    ASSERT(len >= 1);
    size_t at = atomic_load(&got_len);
    ASSERT(at + len <= sizeof got);
    memcpy(got + at, data, len);
    b->n_bytes += len;
    atomic_fetch_add(&n_data, 1);
    atomic_store(&got_len, at + len);
}

static void fake_body_end(void *ctx, api_body_t *body, api_job_t **job)
{
    (void)ctx;
    fake_body_t *b = (fake_body_t *)body;
    atomic_fetch_add(&n_end, 1);
    ASSERT(n_jobs < (int)(sizeof jobs / sizeof jobs[0]));
    fake_job_t *j = &jobs[n_jobs++];
    memset(j, 0, sizeof *j);
    j->sink = b->sink;
    snprintf(j->text, sizeof j->text, "stream:%zu", b->n_bytes);
    uv_timer_init(g_loop, &j->timer);
    j->timer.data = j;
    uv_timer_start(&j->timer, on_job_timer, 20, 0);
    *job = (api_job_t *)j;
    free(b);
}

static void fake_body_abort(void *ctx, api_body_t *body)
{
    (void)ctx;
    fake_body_t *b = (fake_body_t *)body;
    b->sink->end(b->sink->self); /* must be ignored: no response follows an abort */
    atomic_fetch_add(&n_abort, 1);
    free(b);
}

static srv_handler_t fake_handler(void)
{
    return (srv_handler_t){.handle = fake_handle,
                           .cancel = fake_cancel,
                           .free_job = fake_free_job,
                           .body_begin = fake_body_begin,
                           .body_data = fake_body_data,
                           .body_end = fake_body_end,
                           .body_abort = fake_body_abort};
}

/* ---- the rig: server loop here, client on a thread ------------------------------------------ */

typedef void (*client_fn)(int port);

typedef struct {
    uv_loop_t loop;
    srv_hop_t *hop;
    srv_http_t *http;
    uv_async_t done;
    uv_timer_t reaper;
    int port;
    client_fn client;
} rig_t;

static void *client_main(void *arg)
{
    rig_t *r = arg;
    r->client(r->port);
    uv_async_send(&r->done);
    return NULL;
}

/* Close the hop once every connection is gone; the loop then ends. */
static void on_reaper(uv_timer_t *t)
{
    rig_t *r = t->data;
    if (srv_http_n_conns(r->http) > 0)
        return;
    srv_hop_close(r->hop);
    uv_close((uv_handle_t *)t, NULL);
}

static void on_done(uv_async_t *a)
{
    rig_t *r = a->data;
    srv_http_abort(r->http);
    uv_close((uv_handle_t *)a, NULL);
    uv_timer_start(&r->reaper, on_reaper, 0, 5);
}

static srv_http_limits_t test_limits(void)
{
    srv_http_limits_t lim = srv_http_default_limits();
    lim.max_body_bytes = 1000;
    lim.body_timeout_ms = 1000;
    lim.linger_ms = 1000; /* longer than the waits for an abort at the refusal */
    return lim;
}

static void rig_run(const srv_http_limits_t *lim, const srv_handler_t *handler, client_fn fn)
{
    static rig_t r;
    memset(&r, 0, sizeof r);
    core_err_t err = {{0}};
    ASSERT_EQ(uv_loop_init(&r.loop), 0);
    g_loop = &r.loop;
    ASSERT_RC(srv_hop_new(&r.loop, &r.hop, &err), RC_OK, &err);
    ASSERT_RC(srv_http_new(&r.loop, r.hop, lim, handler, &r.http, &err), RC_OK, &err);
    ASSERT_RC(srv_http_listen(r.http, "127.0.0.1", 0, &r.port, &err), RC_OK, &err);
    uv_async_init(&r.loop, &r.done, on_done);
    uv_timer_init(&r.loop, &r.reaper);
    r.done.data = r.reaper.data = &r;
    r.client = fn;
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, client_main, &r), 0);
    uv_run(&r.loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    srv_http_free(r.http);
    ASSERT_EQ(srv_hop_free(r.hop), 0);
    ASSERT_EQ(uv_loop_close(&r.loop), 0);
}

/* ---- the client: blocking socket helpers ----------------------------------------------------- */

typedef struct {
    int fd;
    char buf[1 << 16];
    size_t len;
} cl_t;

typedef struct {
    int status;
    bool close; /* Connection: close */
    char body[512];
} resp_t;

static void cl_open(cl_t *c, int port)
{
    c->len = 0;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT(c->fd >= 0);
    struct timeval tv = {.tv_sec = 2};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(c->fd, (struct sockaddr *)&a, sizeof a), 0);
}

static void cl_send(cl_t *c, const void *p, size_t n)
{
    while (n > 0) {
        ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL);
        ASSERT(k > 0);
        p = (const char *)p + k;
        n -= (size_t)k;
    }
}

static void cl_sends(cl_t *c, const char *s)
{
    cl_send(c, s, strlen(s));
}

/* More input into c->buf; false on EOF, error or the 2 s timeout. */
static bool cl_fill(cl_t *c)
{
    ASSERT(c->len < sizeof c->buf);
    ssize_t k = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    if (k <= 0)
        return false;
    c->len += (size_t)k;
    return true;
}

/* The next response (a 100 Continue counts as one). false when none arrives. */
static bool cl_response(cl_t *c, resp_t *r)
{
    char *end;
    while (!(end = memmem(c->buf, c->len, "\r\n\r\n", 4)))
        if (!cl_fill(c))
            return false;
    size_t head_len = (size_t)(end - c->buf) + 4;
    char head[4096];
    snprintf(head, sizeof head, "%.*s", (int)head_len, c->buf);
    ASSERT_EQ(sscanf(head, "HTTP/1.1 %d", &r->status), 1);
    r->close = strcasestr(head, "\r\nConnection: close\r\n") != NULL;
    const char *cl = strcasestr(head, "\r\nContent-Length: ");
    size_t body_len = cl ? strtoul(cl + 18, NULL, 10) : 0;
    while (c->len < head_len + body_len)
        if (!cl_fill(c))
            return false;
    snprintf(r->body, sizeof r->body, "%.*s", (int)body_len, c->buf + head_len);
    memmove(c->buf, c->buf + head_len + body_len, c->len - head_len - body_len);
    c->len -= head_len + body_len;
    return true;
}

/* The server closed its side (after what was already read). */
static bool cl_eof(cl_t *c)
{
    char tmp[256];
    ssize_t k;
    while ((k = recv(c->fd, tmp, sizeof tmp, 0)) > 0) {
    }
    return k == 0 && c->len == 0;
}

static bool wait_for(atomic_int *v, int want, int ms)
{
    for (int i = 0; i < ms && atomic_load(v) != want; i++)
        usleep(1000);
    return atomic_load(v) == want;
}

static bool wait_for_bytes(size_t want)
{
    for (int i = 0; i < 200 && atomic_load(&got_len) < want; i++)
        usleep(5000);
    return atomic_load(&got_len) >= want;
}

static unsigned char pattern(size_t i)
{
    return (unsigned char)(i * 7 + i / 251);
}

static void stream_head(cl_t *c, size_t len, const char *extra)
{
    char head[256];
    snprintf(head, sizeof head, "POST /stream HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n%s\r\n",
             len, extra);
    cl_sends(c, head);
}

/* ---- tests ---------------------------------------------------------------------------------- */

#define BIG 200000

static void client_many_writes(int port)
{
    cl_t *c = calloc(1, sizeof *c);
    cl_open(c, port);
    stream_head(c, BIG, "");
    unsigned char *body = malloc(BIG);
    for (size_t i = 0; i < BIG; i++)
        body[i] = pattern(i);
    for (size_t off = 0; off < BIG;) {
        size_t n = off < 10 ? 1 : off < 100000 ? 997 : 4096; /* 1-byte pieces first */
        n = n > BIG - off ? BIG - off : n;
        cl_send(c, body + off, n);
        off += n;
        if (off % 20 == 0)
            usleep(100); /* let the server see separate pieces */
    }
    resp_t r;
    ASSERT(cl_response(c, &r));
    ASSERT_EQ(r.status, 200);
    ASSERT_STREQ(r.body, "stream:200000");
    close(c->fd);
    free(body);
    free(c);
}

TEST(stream_gets_exact_bytes_in_order)
{
    reset_fake();
    srv_http_limits_t lim = test_limits(); /* max_body_bytes 1000: whole bodies only */
    srv_handler_t h = fake_handler();
    rig_run(&lim, &h, client_many_writes);
    ASSERT_EQ(atomic_load(&n_begin), 1);
    ASSERT_EQ(atomic_load(&n_end), 1);
    ASSERT_EQ(atomic_load(&n_abort), 0);
    ASSERT(atomic_load(&n_data) > 10);
    ASSERT_EQ(atomic_load(&got_len), BIG);
    for (size_t i = 0; i < BIG; i++)
        if (got[i] != pattern(i))
            HARNESS_FAIL("byte %zu: %d, want %d", i, got[i], pattern(i));
    ASSERT_EQ(atomic_load(&n_free_job), 1);
}

static void client_too_large(int port)
{
    cl_t *c = calloc(1, sizeof *c);
    cl_open(c, port);
    stream_head(c, 5000, "");
    char body[5000];
    memset(body, 'x', sizeof body);
    cl_send(c, body, sizeof body); /* sent at once: the server must still not read it */
    resp_t r;
    ASSERT(cl_response(c, &r));
    ASSERT_EQ(r.status, 413);
    ASSERT(strstr(r.body, "\"too_large\"") != NULL);
    ASSERT(r.close);
    /* at the refusal (just after its response is queued), not when the connection goes
     * (after linger_ms) */
    ASSERT(wait_for(&n_abort, 1, 300));
    ASSERT(cl_eof(c));
    close(c->fd);
    free(c);
}

TEST(stream_over_limit_is_413_before_the_body)
{
    reset_fake();
    g_stream_max = 4096;
    srv_http_limits_t lim = test_limits();
    srv_handler_t h = fake_handler();
    rig_run(&lim, &h, client_too_large);
    ASSERT_EQ(atomic_load(&n_begin), 1);
    ASSERT_EQ(atomic_load(&n_data), 0);
    ASSERT_EQ(atomic_load(&n_abort), 1);
    ASSERT_EQ(atomic_load(&n_end), 0);
    ASSERT_EQ(atomic_load(&n_free_job), 0);
}

static void client_expect(int port)
{
    cl_t *c = calloc(1, sizeof *c);
    resp_t r;
    /* accepted: 100 Continue first, then the body, then the answer */
    cl_open(c, port);
    stream_head(c, 3000, "Expect: 100-continue\r\n");
    ASSERT(cl_response(c, &r));
    ASSERT_EQ(r.status, 100);
    char body[3000];
    memset(body, 'y', sizeof body);
    cl_send(c, body, sizeof body);
    ASSERT(cl_response(c, &r));
    ASSERT_EQ(r.status, 200);
    ASSERT_STREQ(r.body, "stream:3000");
    close(c->fd);
    /* over the limit: the final 413 only, never a 100 */
    cl_open(c, port);
    stream_head(c, 5000, "Expect: 100-continue\r\n");
    ASSERT(cl_response(c, &r));
    ASSERT_EQ(r.status, 413);
    ASSERT(cl_eof(c));
    close(c->fd);
    free(c);
}

TEST(expect_continue_only_for_an_accepted_stream)
{
    reset_fake();
    g_stream_max = 4096;
    srv_http_limits_t lim = test_limits();
    srv_handler_t h = fake_handler();
    rig_run(&lim, &h, client_expect);
    ASSERT_EQ(atomic_load(&n_begin), 2);
    ASSERT_EQ(atomic_load(&n_end), 1);
    ASSERT_EQ(atomic_load(&n_abort), 1);
    ASSERT_EQ(atomic_load(&got_len), 3000);
}

static void client_close_mid_body(int port)
{
    cl_t *c = calloc(1, sizeof *c);
    cl_open(c, port);
    stream_head(c, 100000, "");
    char body[5000];
    memset(body, 'z', sizeof body);
    cl_send(c, body, sizeof body);
    ASSERT(wait_for_bytes(sizeof body));
    close(c->fd);
    ASSERT(wait_for(&n_abort, 1, 1000)); /* the EOF, not the end of the test, aborted it */
    free(c);
}

TEST(client_close_mid_body_aborts_once)
{
    reset_fake();
    srv_http_limits_t lim = test_limits();
    srv_handler_t h = fake_handler();
    rig_run(&lim, &h, client_close_mid_body);
    ASSERT_EQ(atomic_load(&n_abort), 1);
    ASSERT_EQ(atomic_load(&n_end), 0);
    ASSERT_EQ(atomic_load(&got_len), 5000);
}

static int g_abort_fd = -1;

static void client_stall_mid_body(int port)
{
    cl_t *c = calloc(1, sizeof *c);
    cl_open(c, port);
    stream_head(c, 100000, "");
    cl_send(c, "abc", 3);
    ASSERT(wait_for_bytes(3));
    g_abort_fd = c->fd; /* left open: the server's abort ends the body */
    free(c);
}

TEST(server_abort_mid_body_aborts_once)
{
    reset_fake();
    srv_http_limits_t lim = test_limits();
    srv_handler_t h = fake_handler();
    rig_run(&lim, &h, client_stall_mid_body);
    close(g_abort_fd);
    ASSERT_EQ(atomic_load(&n_abort), 1);
    ASSERT_EQ(atomic_load(&n_end), 0);
}

static void client_slow_body(int port)
{
    cl_t *c = calloc(1, sizeof *c);
    cl_open(c, port);
    stream_head(c, 1000, "");
    cl_send(c, "partial", 7);
    resp_t r;
    ASSERT(cl_response(c, &r)); /* nothing more is sent: the body timeout answers */
    ASSERT_EQ(r.status, 408);
    ASSERT(wait_for(&n_abort, 1, 300));
    ASSERT(cl_eof(c));
    close(c->fd);
    free(c);
}

TEST(body_timeout_aborts_once)
{
    reset_fake();
    srv_http_limits_t lim = test_limits();
    lim.body_timeout_ms = 100;
    srv_handler_t h = fake_handler();
    rig_run(&lim, &h, client_slow_body);
    ASSERT_EQ(atomic_load(&n_abort), 1);
    ASSERT_EQ(atomic_load(&n_end), 0);
    ASSERT_EQ(atomic_load(&got_len), 7);
}

static void client_answered(int port)
{
    cl_t *c = calloc(1, sizeof *c);
    cl_open(c, port);
    cl_sends(c, "POST /answer HTTP/1.1\r\nHost: t\r\nContent-Length: 50000\r\n"
                "Expect: 100-continue\r\n\r\nsome body bytes that are never read");
    resp_t r;
    ASSERT(cl_response(c, &r)); /* the answer itself: no 100 before it */
    ASSERT_EQ(r.status, 415);
    ASSERT_STREQ(r.body, "not here");
    ASSERT(r.close);
    ASSERT(cl_eof(c));
    close(c->fd);
    free(c);
}

TEST(answered_head_closes_without_reading_the_body)
{
    reset_fake();
    srv_http_limits_t lim = test_limits();
    srv_handler_t h = fake_handler();
    rig_run(&lim, &h, client_answered);
    ASSERT_EQ(atomic_load(&n_begin), 1);
    ASSERT_EQ(atomic_load(&n_data), 0);
    ASSERT_EQ(atomic_load(&n_end), 0);
    ASSERT_EQ(atomic_load(&n_abort), 0);
    ASSERT_EQ(atomic_load(&n_handle), 0);
}

static void client_mixed(int port)
{
    cl_t *c = calloc(1, sizeof *c);
    resp_t r;
    cl_open(c, port);
    cl_sends(c, "POST /whole HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    ASSERT(cl_response(c, &r));
    ASSERT_EQ(r.status, 200);
    ASSERT_STREQ(r.body, "whole:5:hello");
    stream_head(c, 2000, ""); /* larger than max_body_bytes: fine for a stream */
    char body[2000];
    memset(body, 's', sizeof body);
    cl_send(c, body, sizeof body);
    ASSERT(cl_response(c, &r));
    ASSERT_STREQ(r.body, "stream:2000");
    ASSERT(!r.close);
    cl_sends(c, "GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
    ASSERT(cl_response(c, &r));
    ASSERT_STREQ(r.body, "whole:0:");
    close(c->fd);
    /* the whole-body cap still holds for other routes */
    cl_open(c, port);
    cl_sends(c, "POST /whole HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n");
    ASSERT(cl_response(c, &r));
    ASSERT_EQ(r.status, 413);
    ASSERT(strstr(r.body, "\"body_too_large\"") != NULL);
    close(c->fd);
    free(c);
}

TEST(whole_routes_still_work_beside_streams)
{
    reset_fake();
    srv_http_limits_t lim = test_limits();
    srv_handler_t h = fake_handler();
    rig_run(&lim, &h, client_mixed);
    ASSERT_EQ(atomic_load(&n_handle), 2);
    ASSERT_EQ(atomic_load(&n_end), 1);
    ASSERT_EQ(atomic_load(&n_begin), 4);
    ASSERT_EQ(atomic_load(&n_abort), 0);
}

static void client_pipelined(int port)
{
    cl_t *c = calloc(1, sizeof *c);
    resp_t r;
    cl_open(c, port);
    /* one write: a streamed upload answered 20 ms late, then two requests answered at once */
    cl_sends(c, "POST /stream HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789"
                "GET /first HTTP/1.1\r\nHost: t\r\n\r\n"
                "POST /second HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
                "POST /stream HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nwxyz");
    ASSERT(cl_response(c, &r));
    ASSERT_STREQ(r.body, "stream:10");
    ASSERT(cl_response(c, &r));
    ASSERT_STREQ(r.body, "whole:0:");
    ASSERT(cl_response(c, &r));
    ASSERT_STREQ(r.body, "whole:3:abc");
    ASSERT(cl_response(c, &r));
    ASSERT_STREQ(r.body, "stream:4");
    close(c->fd);
    free(c);
}

TEST(pipelined_requests_after_a_stream_keep_order)
{
    reset_fake();
    srv_http_limits_t lim = test_limits();
    srv_handler_t h = fake_handler();
    rig_run(&lim, &h, client_pipelined);
    ASSERT_EQ(atomic_load(&n_end), 2);
    ASSERT_EQ(atomic_load(&got_len), 14);
    ASSERT(memcmp(got, "0123456789wxyz", 14) == 0);
    ASSERT_EQ(atomic_load(&n_free_job), 2);
}

static void client_whole_only(int port)
{
    cl_t *c = calloc(1, sizeof *c);
    resp_t r;
    cl_open(c, port);
    cl_sends(c, "POST /stream HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    ASSERT(cl_response(c, &r));
    ASSERT_STREQ(r.body, "whole:3:abc");
    close(c->fd);
    free(c);
}

TEST(handler_without_body_begin_reads_every_body_whole)
{
    reset_fake();
    srv_http_limits_t lim = test_limits();
    srv_handler_t h = {.handle = fake_handle, .cancel = fake_cancel, .free_job = fake_free_job};
    rig_run(&lim, &h, client_whole_only);
    ASSERT_EQ(atomic_load(&n_handle), 1);
    ASSERT_EQ(atomic_load(&n_begin), 0);
}

TEST(body_begin_needs_the_other_body_functions)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    srv_http_limits_t lim = test_limits();
    srv_handler_t h = fake_handler();
    h.body_abort = NULL;
    srv_http_t *http = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(srv_http_new(&loop, NULL, &lim, &h, &http, &err), RC_INVALID, &err);
    ASSERT(http == NULL);
    ASSERT(strstr(err.msg, "body_abort") != NULL);
    uv_loop_close(&loop);
}
