/* http.c - HTTP/1.1 connections on the loop thread (policy in http.h).
 *
 * A connection moves through: IDLE (waiting for a request's first byte) -> HEAD (pre-scan +
 * llhttp) -> BODY (buffered whole, or streamed to the handler) -> BUSY (handed to the
 * handler, parsing paused; a head the handler answered at once goes here directly and
 * its body is never read) -> IDLE again, or
 * FINISHING (last response flushing) -> LINGER (write side shut, input discarded) -> CLOSED
 * (uv_close called). It is freed in its close callbacks, and never while a request is
 * active (between dispatch and the loop running that request's end()).
 *
 * Invariants: at most one request per connection is active, so sink messages of one
 * connection never interleave; bytes after a framing error are never parsed; unparsed
 * input is bounded (reading stops while BUSY once the buffer is full); a streamed body
 * (c->body) gets exactly one of body_end (dispatch) or body_abort (conn_fail, conn_close). */
#include "server/http.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/random.h>

#include "llhttp.h"
#include "server/http_int.h"

/* One sink call carried to the loop thread. */
typedef enum { OP_BEGIN, OP_WRITE } op_kind_t;
typedef struct {
    srv_msg_t msg;
    op_kind_t kind;
    srv_conn_t *conn;
    int status;
    bool streaming;
    char *content_type, *extra; /* BEGIN: point into data[] (or NULL) */
    size_t len;
    char data[];
} op_t;

static void conn_parse(srv_conn_t *c);
static void conn_close(srv_conn_t *c);
static void conn_body_abort(srv_conn_t *c);
static void conn_finish(srv_conn_t *c);
void srv__conn_arm_timer(srv_conn_t *c);
static void conn_update_reading(srv_conn_t *c);

/* ---- writing ------------------------------------------------------------------------- */

typedef struct {
    uv_write_t req;
    srv_conn_t *conn;
    char data[];
} wreq_t;

static void on_write(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *)req;
    srv_conn_t *c = w->conn;
    free(w);
    c->n_writes--;
    if (status < 0) {
        if (c->state != CONN_CLOSED) {
            srv_log(SRV_LOG_DEBUG, "write failed: %s", uv_strerror(status));
            conn_close(c);
        }
        return;
    }
    if (c->state == CONN_FINISHING && c->n_writes == 0)
        conn_finish(c);
}

/* Bytes queued for the client: libuv's write queue, plus, for a streaming response, the
 * kernel's send queue. The kernel autotunes that queue up to net.ipv4.tcp_wmem's max
 * (4 MiB on Debian), so a stalled SSE reader would otherwise absorb a whole stream there
 * and never be dropped. Complete responses go out in one write and are not charged for it:
 * a healthy client that has not yet read one must not be dropped. */
static size_t conn_queued_bytes(srv_conn_t *c)
{
    size_t n = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
#ifdef TIOCOUTQ
    uv_os_fd_t fd;
    int kernel = 0;
    if (c->resp_streaming && uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 &&
        ioctl(fd, TIOCOUTQ, &kernel) == 0 && kernel > 0)
        n += (size_t)kernel;
#endif
    return n;
}

/* Queue the n parts as one write (copied). Closes the connection when it cannot (out of
 * memory, broken socket) or when the client lets more than max_write_buffer_bytes pile
 * up. */
static void conn_sendv(srv_conn_t *c, const uv_buf_t *parts, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += parts[i].len;
    if (c->state == CONN_CLOSED || c->state == CONN_LINGER || total == 0)
        return;
    wreq_t *w = malloc(sizeof *w + total);
    if (!w) {
        conn_close(c);
        return;
    }
    w->conn = c;
    for (size_t i = 0, off = 0; i < n; off += parts[i].len, i++)
        if (parts[i].len)
            memcpy(w->data + off, parts[i].base, parts[i].len);
    uv_buf_t buf = uv_buf_init(w->data, (unsigned)total);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, on_write);
    if (rc < 0) {
        free(w);
        conn_close(c);
        return;
    }
    c->n_writes++;
    c->resp_bytes += total;
    if (conn_queued_bytes(c) > c->http->lim.max_write_buffer_bytes) {
        srv_log(SRV_LOG_WARN, "client does not read its response; dropping the connection");
        conn_close(c);
    }
}

void srv__conn_send(srv_conn_t *c, const char *a, size_t an, const char *b, size_t bn)
{
    uv_buf_t parts[2] = {uv_buf_init((char *)a, (unsigned)an),
                         uv_buf_init((char *)b, (unsigned)bn)};
    conn_sendv(c, parts, 2);
}

/* The status line and the headers every response carries. */
static bool head_start(srv_conn_t *c, buf_t *h, int status, const char *content_type)
{
    bool ok = srv__buf_printf(h, "HTTP/1.1 %d %s\r\nDate: %s\r\nServer: adapterd\r\n", status,
                              srv__status_reason(status), srv__http_date());
    if (ok && content_type) {
        ok = SRV_BUF_LIT(h, "Content-Type: ");
        for (const char *p = content_type; ok && *p; p++) /* never let CR/LF through */
            if (*p != '\r' && *p != '\n')
                ok = srv__buf_add(h, p, 1);
        ok = ok && SRV_BUF_LIT(h, "\r\n");
    }
    ok = ok && srv__buf_printf(h, "X-Request-Id: %s\r\n", c->req.request_id);
    if (ok && !c->keep_alive)
        ok = SRV_BUF_LIT(h, "Connection: close\r\n");
    else if (ok && llhttp_get_http_minor(&c->parser) == 0)
        ok = SRV_BUF_LIT(h, "Connection: keep-alive\r\n");
    return ok;
}

/* A complete error response on the loop thread, independent of the handler (framing
 * errors have no request to hand over). The connection closes after it. */
static void conn_send_error(srv_conn_t *c, int status, const char *code, const char *message)
{
    char msg[512], body[768];
    srv_json_escape(msg, sizeof msg, message);
    int n = snprintf(body, sizeof body,
                     "{\"error\": {\"message\": \"%s\", \"type\": \"invalid_request_error\", "
                     "\"code\": \"%s\"}}\n",
                     msg, code);
    size_t body_len = n < 0 ? 0 : (size_t)n < sizeof body ? (size_t)n : sizeof body - 1;
    if (!c->req.request_id[0])
        srv__request_id_generate(c->http, c->req.request_id);
    c->keep_alive = false;
    buf_t h = {0};
    if (head_start(c, &h, status, "application/json") &&
        srv__buf_printf(&h, "Content-Length: %zu\r\n\r\n", body_len))
        srv__conn_send(c, h.p, h.len, body, body_len);
    srv__buf_free(&h);
}

/* The finished hook (metrics) and the access log line of one response. */
static void conn_access(srv_conn_t *c, srv_access_t *a, bool hook)
{
    srv_http_t *h = c->http;
    uint64_t now = uv_hrtime();
    a->request_id = c->req.request_id;
    a->bytes = c->resp_bytes;
    a->note = &c->note;
    a->seconds = (double)(now - c->t_head) / 1e9;
    if (hook && h->handler.finished)
        h->handler.finished(h->handler.ctx, a);
    srv_log_access(a);
}

/* Refuse the request being parsed: error response, then close. No byte of this
 * connection is parsed after this. */
static void conn_fail(srv_conn_t *c, int status, const char *code, const char *message)
{
    if (c->state == CONN_CLOSED)
        return;
    c->in_pos = c->in_len;
    conn_send_error(c, status, code, message);
    /* the path is known once the head parsed; an active request is counted at its end() */
    srv_access_t a = {.method = c->req.path ? llhttp_method_name((llhttp_method_t)c->parser.method)
                                            : NULL,
                      .path = c->req.path,
                      .status = status,
                      .code = code,
                      .message = message};
    conn_access(c, &a, !c->req_active);
    conn_body_abort(c);
    conn_finish(c);
}

/* ---- requests and responses ------------------------------------------------------------- */

static void resp_reset(srv_conn_t *c)
{
    free(c->resp_ct);
    free(c->resp_extra);
    c->resp_ct = c->resp_extra = NULL;
    srv__buf_free(&c->resp_body);
    c->resp_begun = c->resp_streaming = c->resp_chunked = false;
    c->resp_status = 0;
    c->resp_bytes = 0;
    atomic_store(&c->sink_failed, false);
}

/* The request is being answered from now on: parsing stays paused, and the connection
 * is not freed, until its end() has run on the loop. */
static void conn_request_start(srv_conn_t *c)
{
    srv_http_t *h = c->http;
    c->state = CONN_BUSY;
    uv_timer_stop(&c->timer);
    c->req_active = true;
    c->t_dispatch = uv_hrtime();
    if (++c->n_requests >= h->lim.max_keepalive_requests || h->draining ||
        uv_now(h->loop) - c->t_accept >= h->lim.max_connection_age_ms)
        c->keep_alive = false;
    c->job = NULL;
}

static api_request_t conn_request(srv_conn_t *c)
{
    return (api_request_t){
        .method = llhttp_method_name((llhttp_method_t)c->parser.method),
        .path = c->req.path,
        .query = c->req.query,
        .body = c->req.body,
        .body_len = c->req.body_len,
        .content_type = c->req.n_content_type ? c->req.content_type.p : NULL,
        .request_id = c->req.request_id,
        .authorization = c->req.n_authorization ? c->req.authorization.p : NULL,
        .act_as = c->req.n_act_as ? c->req.act_as.p : NULL,
        .note = &c->note,
    };
}

api_body_mode_t srv__conn_body_begin(srv_conn_t *c, uint64_t content_length, size_t *max_body)
{
    srv_http_t *h = c->http;
    resp_reset(c); /* before body_begin: an ANSWERED response is already on its way */
    atomic_store(&c->sink_muted, false);
    c->body = NULL;
    c->body_mode = API_BODY_WHOLE;
    *max_body = h->lim.max_body_bytes;
    if (!h->handler.body_begin)
        return c->body_mode;
    api_request_t req = conn_request(c);
    req.body_len = (size_t)content_length;
    c->body_mode = h->handler.body_begin(h->handler.ctx, &req, &c->sink, &c->body, max_body);
    c->body_open = c->body_mode == API_BODY_STREAM;
    if (c->body_mode == API_BODY_ANSWERED) {
        c->keep_alive = false; /* the unread body would be parsed as the next request */
        conn_request_start(c);
    }
    return c->body_mode;
}

/* A streamed body that will never complete: the handler forgets it, exactly once. */
static void conn_body_abort(srv_conn_t *c)
{
    if (!c->body_open)
        return;
    api_body_t *b = c->body;
    c->body = NULL;
    c->body_open = false;
    atomic_store(&c->sink_muted, true); /* no response follows an aborted body */
    c->http->handler.body_abort(c->http->handler.ctx, b);
}

/* The request is complete: hand it over (a streamed body ends, a whole one is handled). */
static void conn_dispatch(srv_conn_t *c)
{
    srv_http_t *h = c->http;
    conn_request_start(c);
    if (c->body_mode == API_BODY_STREAM) {
        api_body_t *b = c->body;
        c->body = NULL;
        c->body_open = false;
        h->handler.body_end(h->handler.ctx, b, &c->job);
    } else {
        api_request_t req = conn_request(c);
        h->handler.handle(h->handler.ctx, &req, &c->sink, &c->job);
        free(c->req.body); /* the handler copied what it keeps */
        c->req.body = NULL;
        c->req.body_len = c->req.body_cap = 0;
    }
    srv_hop_drain(h->hop);
}

static void resp_begin(srv_conn_t *c, const op_t *op)
{
    c->resp_begun = true;
    c->resp_status = op->status;
    c->resp_streaming = op->streaming;
    c->resp_ct = op->content_type ? strdup(op->content_type) : NULL;
    c->resp_extra = op->extra ? strdup(op->extra) : NULL;
    if ((op->content_type && !c->resp_ct) || (op->extra && !c->resp_extra)) {
        conn_close(c);
        return;
    }
    if (!op->streaming)
        return;
    /* HTTP/1.0 has no chunked encoding: the body then ends with the connection. */
    c->resp_chunked = llhttp_get_http_minor(&c->parser) == 1;
    if (!c->resp_chunked)
        c->keep_alive = false;
    buf_t h = {0};
    bool ok = head_start(c, &h, op->status, op->content_type) &&
              SRV_BUF_LIT(&h, "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n") &&
              (!c->resp_chunked || SRV_BUF_LIT(&h, "Transfer-Encoding: chunked\r\n")) &&
              (!c->resp_extra || srv__buf_add(&h, c->resp_extra, strlen(c->resp_extra))) &&
              SRV_BUF_LIT(&h, "\r\n");
    if (ok)
        srv__conn_send(c, h.p, h.len, NULL, 0);
    else
        conn_close(c);
    srv__buf_free(&h);
}

static void resp_write(srv_conn_t *c, const op_t *op)
{
    if (!c->resp_begun) {
        conn_close(c); /* the handler broke the sink contract; drop rather than guess */
        return;
    }
    if (op->len == 0)
        return;               /* a zero-length chunk would end the stream */
    if (!c->resp_streaming) { /* kept for HEAD too: its Content-Length is the GET's */
        if (!srv__buf_add(&c->resp_body, op->data, op->len))
            conn_close(c);
        return;
    }
    if (c->is_head)
        return;
    if (!c->resp_chunked) {
        srv__conn_send(c, op->data, op->len, NULL, 0);
        return;
    }
    char frame[24];
    int n = snprintf(frame, sizeof frame, "%zx\r\n", op->len);
    uv_buf_t parts[3] = {uv_buf_init(frame, (unsigned)n),
                         uv_buf_init((char *)op->data, (unsigned)op->len), uv_buf_init("\r\n", 2)};
    conn_sendv(c, parts, 3);
}

static void resp_end(srv_conn_t *c)
{
    if (atomic_load(&c->sink_failed)) {
        conn_close(c); /* a sink message was lost: the response cannot be completed */
        return;
    }
    if (!c->resp_begun) {
        conn_send_error(c, 500, "internal_error", "the handler ended without a response");
        srv_log(SRV_LOG_INFO, "%d %s (%s) id=%s", 500, "internal_error",
                "the handler ended without a response", c->req.request_id);
        return;
    }
    if (c->resp_streaming) {
        if (c->resp_chunked && !c->is_head)
            srv__conn_send(c, "0\r\n\r\n", 5, NULL, 0);
        return;
    }
    buf_t h = {0};
    bool ok = head_start(c, &h, c->resp_status, c->resp_ct) &&
              srv__buf_printf(&h, "Content-Length: %zu\r\n", c->resp_body.len) &&
              (!c->resp_extra || srv__buf_add(&h, c->resp_extra, strlen(c->resp_extra))) &&
              SRV_BUF_LIT(&h, "\r\n");
    if (ok)
        srv__conn_send(c, h.p, h.len, c->is_head ? NULL : c->resp_body.p,
                       c->is_head ? 0 : c->resp_body.len);
    else
        conn_close(c);
    srv__buf_free(&h);
}

static void conn_free(srv_conn_t *c)
{
    srv_http_t *h = c->http;
    if (c->prev)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    h->n_conns--;
    srv__req_reset(&c->req);
    srv__buf_free(&c->req.url);
    srv__buf_free(&c->req.field);
    srv__buf_free(&c->req.value);
    srv__buf_free(&c->req.content_type);
    srv__buf_free(&c->req.authorization);
    srv__buf_free(&c->req.act_as);
    resp_reset(c);
    free(c->in);
    free(c);
}

/* The request's end() reached the loop: finish the response, release the job, then go
 * on with the next pipelined request or close. */
static void on_end_msg(srv_msg_t *m)
{
    srv_conn_t *c = (srv_conn_t *)((char *)m - offsetof(srv_conn_t, end_msg));
    srv_http_t *h = c->http;
    if (c->state == CONN_BUSY)
        resp_end(c);
    c->req_active = false;
    if (c->job)
        h->handler.free_job(h->handler.ctx, c->job);
    c->job = NULL;
    srv_access_t a = {.method = llhttp_method_name((llhttp_method_t)c->parser.method),
                      .path = c->req.path,
                      .status = c->resp_status ? c->resp_status : 500,
                      .dispatch_ms = (double)(uv_hrtime() - c->t_dispatch) / 1e6,
                      .client_gone = c->state == CONN_CLOSED};
    conn_access(c, &a, true);
    resp_reset(c);
    if (c->state == CONN_CLOSED) {
        if (c->n_open_handles == 0)
            conn_free(c);
        return;
    }
    if (c->state != CONN_BUSY)
        return;
    if (!c->keep_alive || h->draining || c->peer_eof) {
        c->in_pos = c->in_len; /* what follows a last request is never parsed */
        conn_finish(c);
        return;
    }
    c->state = CONN_IDLE;
    c->scanning_head = true;
    memset(&c->scan, 0, sizeof c->scan);
    llhttp_resume(&c->parser);
    conn_parse(c); /* returns at once when an outer conn_parse of c is running */
}

/* ---- the sink: any thread ---------------------------------------------------------------- */

static void on_op_msg(srv_msg_t *m)
{
    op_t *op = (op_t *)m;
    srv_conn_t *c = op->conn;
    if (c->state == CONN_BUSY) {
        if (op->kind == OP_BEGIN)
            resp_begin(c, op);
        else
            resp_write(c, op);
    }
    free(op);
}

static op_t *op_new(srv_conn_t *c, op_kind_t kind, size_t extra_bytes)
{
    op_t *op = malloc(sizeof *op + extra_bytes);
    if (!op) {
        atomic_store(&c->sink_failed, true);
        return NULL;
    }
    memset(op, 0, sizeof *op);
    op->msg.run = on_op_msg;
    op->kind = kind;
    op->conn = c;
    return op;
}

static void sink_begin(void *self, int status, const char *content_type, bool streaming,
                       const char *extra_headers)
{
    srv_conn_t *c = self;
    if (atomic_load(&c->sink_muted))
        return;
    size_t nct = content_type ? strlen(content_type) + 1 : 0;
    size_t nex = extra_headers ? strlen(extra_headers) + 1 : 0;
    op_t *op = op_new(c, OP_BEGIN, nct + nex);
    if (!op)
        return;
    op->status = status;
    op->streaming = streaming;
    if (content_type)
        op->content_type = memcpy(op->data, content_type, nct);
    if (extra_headers)
        op->extra = memcpy(op->data + nct, extra_headers, nex);
    srv_hop_post(c->http->hop, &op->msg);
}

static void sink_write(void *self, const char *data, size_t len)
{
    srv_conn_t *c = self;
    if (atomic_load(&c->sink_muted))
        return;
    op_t *op = op_new(c, OP_WRITE, len);
    if (!op)
        return;
    op->len = len;
    if (len)
        memcpy(op->data, data, len);
    srv_hop_post(c->http->hop, &op->msg);
}

static void sink_end(void *self)
{
    srv_conn_t *c = self;
    if (atomic_load(&c->sink_muted))
        return; /* only body_abort runs muted, and no end() is owed for an aborted body */
    srv_hop_post(c->http->hop, &c->end_msg);
}

/* ---- parsing ------------------------------------------------------------------------------ */

/* Feed buffered input to the pre-scan and llhttp until a request is complete (then
 * dispatch it), the input runs out, or the connection fails. */
static bool conn_parse_step(srv_conn_t *c)
{
    const char *p = c->in + c->in_pos;
    size_t n = c->in_len - c->in_pos;
    if (c->state == CONN_IDLE) {
        srv__req_reset(&c->req); /* an error before llhttp's message_begin must not reuse ids */
        memset(&c->note, 0, sizeof c->note);
        c->state = CONN_HEAD;
        c->head_start = uv_now(c->http->loop);
        c->t_head = uv_hrtime();
        srv__conn_arm_timer(c);
    }
    if (c->scanning_head) {
        scan_rc_t rc = srv__scan_head(c, p, n, &n);
        if (rc == SCAN_ERROR) {
            conn_fail(c, c->err_status, c->err_code, c->err_msg);
            return false;
        }
        if (rc == SCAN_END)
            c->scanning_head = false;
    }
    c->err_status = 0;
    llhttp_errno_t e = llhttp_execute(&c->parser, p, n);
    if (c->state == CONN_CLOSED)
        return false; /* a write inside a callback (100 Continue) failed */
    if (e == HPE_PAUSED && c->state == CONN_BUSY) { /* answered from its head (ANSWERED) */
        c->in_pos = c->in_len;                      /* its body is never parsed */
        srv_hop_drain(c->http->hop);
        return true;
    }
    if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
        c->in_pos += (size_t)(llhttp_get_error_pos(&c->parser) - p);
        conn_dispatch(c);
        return true;
    }
    if (e != HPE_OK) {
        if (c->err_status)
            conn_fail(c, c->err_status, c->err_code, c->err_msg);
        else
            conn_fail(c, 400, "bad_request", llhttp_get_error_reason(&c->parser));
        return false;
    }
    c->in_pos += n;
    return true;
}

static void conn_parse(srv_conn_t *c)
{
    if (c->in_parse)
        return;
    c->in_parse = true;
    while ((c->state == CONN_IDLE || c->state == CONN_HEAD || c->state == CONN_BODY) &&
           c->in_pos < c->in_len && conn_parse_step(c)) {
    }
    if (c->in_pos == c->in_len)
        c->in_pos = c->in_len = 0;
    c->in_parse = false;
    if (c->state == CONN_IDLE || c->state == CONN_BUSY)
        srv__conn_arm_timer(c);
    conn_update_reading(c);
}

/* ---- reading, timers, closing ------------------------------------------------------------- */

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    srv_conn_t *c = handle->data;
    size_t cap_max = c->http->lim.max_header_bytes + IN_EXTRA;
    if (c->state == CONN_LINGER || c->state == CONN_FINISHING)
        c->in_pos = c->in_len = 0; /* input is only discarded now */
    if (c->in_pos > 0 && c->in_cap - c->in_len < IN_MIN_FREE) {
        memmove(c->in, c->in + c->in_pos, c->in_len - c->in_pos);
        c->in_len -= c->in_pos;
        c->in_pos = 0;
    }
    if (c->in_cap - c->in_len < IN_MIN_FREE && c->in_cap < cap_max) {
        size_t cap = c->in_cap ? c->in_cap * 2 : 16384;
        cap = cap > cap_max ? cap_max : cap;
        char *p = realloc(c->in, cap);
        if (p) {
            c->in = p;
            c->in_cap = cap;
        }
    }
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(c->in_cap - c->in_len));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    srv_conn_t *c = stream->data;
    if (nread == UV_ENOBUFS) { /* input buffer full while a request is answered */
        uv_read_stop(stream);
        c->reading = false;
        return;
    }
    if (nread == UV_EOF) {
        c->peer_eof = true;
        if (c->state == CONN_FINISHING) {
            uv_read_stop(stream);
            c->reading = false;
        } else {
            conn_close(c); /* mid-request, idle, lingering or a job in flight: done */
        }
        return;
    }
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (c->state == CONN_LINGER || c->state == CONN_FINISHING) {
        c->n_discarded += (size_t)nread;
        if (c->n_discarded > LINGER_MAX_BYTES)
            conn_close(c);
        return;
    }
    c->in_len += (size_t)nread;
    if (c->state == CONN_BODY)
        srv__conn_arm_timer(c);
    conn_parse(c);
}

static void conn_update_reading(srv_conn_t *c)
{
    if (c->state == CONN_CLOSED || c->peer_eof)
        return;
    bool full = c->in_len - c->in_pos >= c->http->lim.max_header_bytes + IN_EXTRA - IN_MIN_FREE;
    if (!c->reading && !full) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = true;
    }
}

static void on_timer(uv_timer_t *t)
{
    srv_conn_t *c = t->data;
    switch (c->state) {
    case CONN_HEAD:
    case CONN_BODY:
        conn_fail(c, 408, "request_timeout",
                  c->state == CONN_HEAD ? "request head not received in time"
                                        : "request body not received in time");
        break;
    case CONN_IDLE:
    case CONN_FINISHING:
    case CONN_LINGER:
        conn_close(c);
        break;
    default:
        break;
    }
}

void srv__conn_arm_timer(srv_conn_t *c)
{
    const srv_http_limits_t *lim = &c->http->lim;
    uint64_t now = uv_now(c->http->loop), ms = 0;
    switch (c->state) {
    case CONN_IDLE: /* a fresh connection gets the head deadline for its first byte */
        ms = c->n_requests == 0 ? lim->header_timeout_ms : lim->idle_timeout_ms;
        if (c->n_requests > 0) { /* ... a kept-alive one closes at its age limit at the latest */
            uint64_t age = now - c->t_accept;
            uint64_t left = age < lim->max_connection_age_ms ? lim->max_connection_age_ms - age : 1;
            ms = left < ms ? left : ms;
        }
        break;
    case CONN_HEAD:
        ms = c->head_start + lim->header_timeout_ms > now
                 ? c->head_start + lim->header_timeout_ms - now
                 : 1;
        break;
    case CONN_BODY:
        ms = lim->body_timeout_ms;
        break;
    case CONN_FINISHING: /* the last response must drain: a client that never reads it */
        ms = lim->idle_timeout_ms;
        break;
    case CONN_LINGER: /* shutting down: the response is out, do not wait long for the client */
        ms = c->http->draining && lim->linger_ms > 200 ? 200 : lim->linger_ms;
        break;
    default:
        uv_timer_stop(&c->timer);
        return;
    }
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void on_handle_closed(uv_handle_t *handle)
{
    srv_conn_t *c = handle->data;
    if (--c->n_open_handles == 0 && !c->req_active)
        conn_free(c);
}

/* Abortive close: cancel the job (its end() still comes and frees the connection). */
static void conn_close(srv_conn_t *c)
{
    if (c->state == CONN_CLOSED)
        return;
    c->state = CONN_CLOSED;
    conn_body_abort(c);
    if (c->req_active && c->job)
        c->http->handler.cancel(c->http->handler.ctx, c->job);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    srv_conn_t *c = req->data;
    if (status < 0 && c->state != CONN_CLOSED)
        conn_close(c);
}

/* Graceful close: flush the queued writes, shut the write side down, then discard input
 * until the client closes or linger_ms pass (so the client reads the response, not a
 * RST caused by unread request bytes). */
static void conn_finish(srv_conn_t *c)
{
    if (c->state == CONN_CLOSED)
        return;
    c->state = CONN_FINISHING;
    if (c->n_writes > 0) {
        srv__conn_arm_timer(c);
        return; /* on_write calls again when the last write completes */
    }
    if (c->peer_eof) {
        conn_close(c);
        return;
    }
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        conn_close(c);
        return;
    }
    c->state = CONN_LINGER;
    srv__conn_arm_timer(c);
    conn_update_reading(c);
}

/* ---- accepting and the server-wide object -------------------------------------------------- */

static void on_reject_closed(uv_handle_t *handle)
{
    free(handle);
}

/* Over the connection cap: accept and close at once, so the backlog does not fill up. */
static void reject_connection(srv_http_t *h)
{
    uv_tcp_t *t = malloc(sizeof *t);
    if (!t)
        return;
    uv_tcp_init(h->loop, t);
    uv_accept((uv_stream_t *)&h->listener, (uv_stream_t *)t);
    uv_close((uv_handle_t *)t, on_reject_closed);
}

/* A storm of refused connections logs one line per second, not one per connection. */
static bool accept_warn_due(srv_http_t *h)
{
    uint64_t now = uv_now(h->loop);
    if (h->last_accept_warn && now - h->last_accept_warn < 1000)
        return false;
    h->last_accept_warn = now;
    return true;
}

static srv_conn_t *conn_new(srv_http_t *h)
{
    srv_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->http = h;
    llhttp_init(&c->parser, HTTP_REQUEST, &h->settings);
    c->parser.data = c;
    c->sink = (api_sink_t){.self = c, .begin = sink_begin, .write = sink_write, .end = sink_end};
    c->end_msg.run = on_end_msg;
    atomic_init(&c->sink_failed, false);
    atomic_init(&c->sink_muted, false);
    c->scanning_head = true;
    c->state = CONN_IDLE;
    c->t_accept = uv_now(h->loop);
    c->tcp.data = c->timer.data = c;
    c->next = h->conns;
    if (h->conns)
        h->conns->prev = c;
    h->conns = c;
    h->n_conns++;
    return c;
}

static void on_connection(uv_stream_t *server, int status)
{
    srv_http_t *h = server->data;
    if (status < 0) {
        if (accept_warn_due(h))
            srv_log(SRV_LOG_WARN, "accept: %s", uv_strerror(status));
        return;
    }
    if (h->n_conns >= (size_t)h->lim.max_connections) {
        if (accept_warn_due(h))
            srv_log(SRV_LOG_WARN, "connection refused: %d connections open (--max-connections)",
                    h->lim.max_connections);
        reject_connection(h);
        return;
    }
    srv_conn_t *c = conn_new(h);
    if (!c) {
        reject_connection(h);
        return;
    }
    uv_tcp_init(h->loop, &c->tcp);
    uv_timer_init(h->loop, &c->timer);
    c->n_open_handles = 2;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    srv__conn_arm_timer(c);
    conn_update_reading(c);
}

rc_t srv_http_new(uv_loop_t *loop, srv_hop_t *hop, const srv_http_limits_t *limits,
                  const srv_handler_t *handler, srv_http_t **out, core_err_t *err)
{
    *out = NULL;
    if (handler->body_begin && (!handler->body_data || !handler->body_end || !handler->body_abort))
        return core_err(err, RC_INVALID,
                        "a handler with body_begin needs body_data, "
                        "body_end and body_abort");
    srv_http_t *h = calloc(1, sizeof *h);
    if (!h)
        return core_err(err, RC_NOMEM, "out of memory");
    h->loop = loop;
    h->hop = hop;
    h->lim = *limits;
    srv__limits_fit_nofile(&h->lim);
    h->handler = *handler;
    llhttp_settings_init(&h->settings);
    srv__http_settings(&h->settings);
    if (getrandom(&h->id_seed, sizeof h->id_seed, 0) != (ssize_t)sizeof h->id_seed)
        h->id_seed = uv_hrtime() ^ ((uint64_t)uv_os_getpid() << 32);
    *out = h;
    return RC_OK;
}

rc_t srv_http_listen(srv_http_t *h, const char *host, int port, int *bound_port, core_err_t *err)
{
    struct sockaddr_storage addr;
    int rc = strchr(host, ':') ? uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr)
                               : uv_ip4_addr(host, port, (struct sockaddr_in *)&addr);
    if (rc < 0)
        return core_err(err, RC_INVALID, "--host '%s' is not an IPv4 or IPv6 address", host);
    uv_tcp_init(h->loop, &h->listener);
    h->listener.data = h;
    h->listening = true;
    rc = uv_tcp_bind(&h->listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&h->listener, 511, on_connection);
    if (rc < 0)
        return core_err(err, RC_IO, "listen on %s:%d: %s", host, port, uv_strerror(rc));
    if (bound_port) {
        int len = sizeof addr;
        uv_tcp_getsockname(&h->listener, (struct sockaddr *)&addr, &len);
        *bound_port = addr.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&addr)->sin6_port)
                                                 : ntohs(((struct sockaddr_in *)&addr)->sin_port);
    }
    return RC_OK;
}

void srv_http_close(srv_http_t *h)
{
    if (h->listening && !h->listener_closed) {
        uv_close((uv_handle_t *)&h->listener, NULL);
        h->listener_closed = true;
    }
}

void srv_http_drain(srv_http_t *h)
{
    h->draining = true;
    srv_http_close(h);
    for (srv_conn_t *c = h->conns, *next; c; c = next) {
        next = c->next;
        if (c->state == CONN_IDLE && c->in_pos == c->in_len)
            conn_close(c);
        else if (c->state == CONN_LINGER)
            srv__conn_arm_timer(c);
        else
            c->keep_alive = false; /* a response not yet begun says Connection: close */
    }
}

void srv_http_abort(srv_http_t *h)
{
    h->draining = true;
    srv_http_close(h);
    for (srv_conn_t *c = h->conns, *next; c; c = next) {
        next = c->next;
        conn_close(c);
    }
}

size_t srv_http_n_conns(const srv_http_t *h)
{
    return h->n_conns;
}

void srv_http_free(srv_http_t *h)
{
    if (!h)
        return;
    if (h->n_conns)
        srv_log(SRV_LOG_ERROR, "%zu connections still open at exit", h->n_conns);
    free(h);
}
