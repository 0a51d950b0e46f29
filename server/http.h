/* http.h - HTTP/1.1 connections: accept, parse (llhttp 8.1 behind a strict pre-scan),
 * enforce limits, hand complete requests to a handler, write responses.
 *
 * Policy (docs/OPERATIONS.md has the operator's view):
 *  - The request head is pre-scanned byte by byte before llhttp sees it, because Debian's
 *    llhttp 8.1.0 accepts bare CR, bare LF and obs-fold lines (request smuggling, CVE-2023-
 *    30589, CVE-2024-27982): any of those, or another control byte, is 400 + close. The scan
 *    also counts: request line > max_request_line_bytes -> 414, head > max_header_bytes or
 *    more than max_headers fields -> 431 (+ close).
 *  - Only HTTP/1.0 and 1.1: HTTP/0.9 (no version) -> 400, other versions -> 505. HTTP/1.1
 *    needs exactly one Host (400); HTTP/1.0 may carry at most one. Transfer-Encoding on a
 *    request: with Content-Length, or on HTTP/1.0 (RFC 9112 6.1: faulty framing) -> 400;
 *    anything but one "chunked" -> 501 (nginx); exactly "chunked" -> 411 "Content-Length
 *    required": request bodies must have a Content-Length (the simplest framing that cannot
 *    be smuggled), so chunked request bodies are never parsed.
 *  - Bodies: once a head passes these checks the handler's body_begin (if any) is called,
 *    once per request, and says how its body is read:
 *      WHOLE     (and every request when body_begin is NULL): buffered in memory;
 *                Content-Length > max_body_bytes -> 413 "body_too_large" before any body
 *                byte is read; then handle() with the whole body.
 *      STREAM    Content-Length > the max_body it returned -> 413 "too_large" before any
 *                body byte is read (no 100 Continue), then body_abort, then close. Else
 *                each piece llhttp hands over goes to body_data (borrowed: the input
 *                buffer, valid during the call), and at the message's end body_end takes
 *                the place of handle(). From there on the request is like any other job.
 *                Any failure in between (client EOF or reset, 408 body timeout, a parse
 *                error, srv_http_abort, a drain that runs out of time) calls body_abort
 *                exactly once and never body_end. body_abort must not use the sink (calls
 *                made during it are ignored): no response follows an aborted body.
 *      ANSWERED  the response went out through the sink inside body_begin: the body is
 *                never read (no 100 Continue) and the connection closes after the response.
 *    "Expect: 100-continue" (HTTP/1.1) gets "100 Continue" only once a WHOLE or STREAM
 *    body with Content-Length > 0 is accepted; a refused one gets only the final response.
 *  - Any llhttp error -> 400 + close; no byte of that connection is parsed afterwards.
 *  - Deadlines: the whole head within header_timeout_ms of its first byte (a fresh
 *    connection's first byte too) -> 408 + close; body reads at most body_timeout_ms apart
 *    -> 408 + close; keep-alive connections idle for idle_timeout_ms are closed silently.
 *  - Keep-alive: the max_keepalive_requests-th request of a connection, and any request
 *    that starts once the connection is max_connection_age_ms old (nginx keepalive_time),
 *    is answered with Connection: close; an idle connection past that age is closed.
 *  - Pipelining: parsing pauses (llhttp_pause) while a request is being answered and
 *    resumes after its end(), so responses leave strictly in request order.
 *  - Responses: Content-Length for complete ones; streaming ones (sink begin with
 *    streaming=true) use chunked encoding (HTTP/1.1) or end with close (HTTP/1.0), with
 *    Cache-Control: no-cache. Every response carries X-Request-Id (the client's, sanitised
 *    to [A-Za-z0-9._:-] and <= 128 chars, or a generated one).
 *  - After a response with Connection: close the write side is shut down and the input is
 *    drained briefly (lingering close) so the client reads the response instead of a RST.
 *    A client that does not read a last response is dropped after idle_timeout_ms, one
 *    that lets more than max_write_buffer_bytes pile up (e.g. a stalled SSE reader) at once.
 *  - End of input from the client (EOF, including a half-close) while a request is being
 *    answered counts as the client going away: its job is cancelled. Clients that
 *    half-close after sending a request do not get the rest of a pending response.
 *  - Connections over max_connections are accepted and closed at once (no response), so
 *    the backlog never fills and the loop never spins on a pending accept. srv_http_new
 *    keeps max_connections + SRV_FD_RESERVE within RLIMIT_NOFILE: it raises the soft limit
 *    (up to the hard one) or else lowers the cap, with a warning naming both.
 *
 * The sink handed to the handler is thread-safe: calls from any thread are copied into
 * messages posted to the hop and written on the loop thread, in order. A connection whose
 * client goes away while a job runs cancels the job and stays allocated until end().
 *
 * Threads: everything here runs on the loop thread, except the sink functions. */
#ifndef SERVER_HTTP_H
#define SERVER_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "api/api.h"
#include "core/rc.h"
#include "server/server.h"

#define SRV_REQUEST_ID_MAX 128
#define SRV_FD_RESERVE 32 /* descriptors kept back from clients (Redis keeps 32 too) */

typedef struct {
    size_t max_body_bytes; /* bodies read whole (streamed ones: body_begin's max_body) */
    size_t max_header_bytes;
    size_t max_request_line_bytes;
    size_t max_write_buffer_bytes; /* a client that does not read is dropped past this */
    int max_headers;
    int max_connections;
    int max_keepalive_requests;
    uint64_t header_timeout_ms;
    uint64_t body_timeout_ms;
    uint64_t idle_timeout_ms;
    uint64_t max_connection_age_ms; /* keep-alive: no new request starts on an older one */
    uint64_t linger_ms; /* lingering close: how long to drain input after the last response */
} srv_http_limits_t;

srv_http_limits_t srv_http_default_limits(void);

/* Who answers requests (api_handle & co. in the daemon; fakes in tests). The body_*
 * functions mirror api_body_* (api.h), with the policy above: body_begin NULL reads every
 * body whole; when it is set the other three must be too. */
typedef struct {
    void *ctx;
    void (*handle)(void *ctx, const api_request_t *req, api_sink_t *sink, api_job_t **job);
    void (*cancel)(void *ctx, api_job_t *job);
    void (*free_job)(void *ctx, api_job_t *job);
    /* req->body NULL, req->body_len the Content-Length (0 without one). */
    api_body_mode_t (*body_begin)(void *ctx, const api_request_t *req, api_sink_t *sink,
                                  api_body_t **body, size_t *max_body);
    void (*body_data)(void *ctx, api_body_t *body, const char *data, size_t len);
    void (*body_end)(void *ctx, api_body_t *body, api_job_t **job);
    void (*body_abort)(void *ctx, api_body_t *body);
    /* Optional: a request was answered (or refused by the HTTP layer before any handler
     * saw it). Called once per response, before its access log line; may set a->route and
     * a->adapter for that line. */
    void (*finished)(void *ctx, srv_access_t *a);
} srv_handler_t;

typedef struct srv_http srv_http_t;

/* RC_INVALID when handler sets body_begin without the other body functions. */
rc_t srv_http_new(uv_loop_t *loop, srv_hop_t *hop, const srv_http_limits_t *limits,
                  const srv_handler_t *handler, srv_http_t **out, core_err_t *err);
/* Bind and listen. host is an IPv4 or IPv6 literal. OUT: *bound_port (optional). */
rc_t srv_http_listen(srv_http_t *h, const char *host, int port, int *bound_port, core_err_t *err);
/* Graceful stop: close the listener, close idle connections, answer the requests in
 * flight with Connection: close (a body still arriving may finish; srv_http_abort ends
 * it). */
void srv_http_drain(srv_http_t *h);
/* Hard stop: cancel every job and close every connection (they are freed after end()). */
void srv_http_abort(srv_http_t *h);
/* Connections still allocated (including closing ones waiting for a job's end()). */
size_t srv_http_n_conns(const srv_http_t *h);
/* Close the listener if still open; call before the loop's last run. */
void srv_http_close(srv_http_t *h);
/* After the loop has finished (srv_http_n_conns == 0 and closed). */
void srv_http_free(srv_http_t *h);

/* JSON string body (without quotes) of s into dst; always NUL-terminates; returns the
 * length written (truncated at cap - 1, never in the middle of an escape). */
size_t srv_json_escape(char *dst, size_t cap, const char *s);

#endif
