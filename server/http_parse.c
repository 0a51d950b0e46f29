/* http_parse.c - reading one request head and body on the loop thread: a strict
 * byte-level pre-scan of the head in front of llhttp 8.1.0 (which accepts bare CR/LF,
 * obs-fold and other smuggling vectors), and the llhttp callbacks that copy the request
 * into the connection's req_t under the limits of srv_http_limits_t (or pass a streamed
 * body's pieces straight to the handler), and the request ids.
 * Shared types and the cross-file helpers live in http_int.h. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "server/http_int.h"

/* ---- the strict pre-scan --------------------------------------------------------------- */

/* RFC 9110 tchar: the only bytes allowed in a field name. */
static bool is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* Record why this request is refused; the caller answers once and closes. */
static void set_refusal(srv_conn_t *c, int status, const char *code, const char *fmt, va_list ap)
{
    vsnprintf(c->err_msg, sizeof c->err_msg, fmt, ap);
    c->err_status = status;
    c->err_code = code;
}

static scan_rc_t scan_fail(srv_conn_t *c, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static scan_rc_t scan_fail(srv_conn_t *c, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_refusal(c, status, code, fmt, ap);
    va_end(ap);
    return SCAN_ERROR;
}

/* The LF of a CRLF: a line is complete. */
static scan_rc_t scan_line_end(srv_conn_t *c, scan_t *s)
{
    if (s->line_len == 0 && s->n_lines > 0)
        return SCAN_END; /* the blank line that ends the head */
    if (s->line_len > 0 && s->in_name)
        return scan_fail(c, 400, "bad_request", "header line without a colon");
    if (s->line_len > 0 && ++s->n_lines - 1 > (size_t)c->http->lim.max_headers)
        return scan_fail(c, 431, "too_many_headers", "more than %d header fields",
                         c->http->lim.max_headers);
    s->line_len = 0; /* leading empty lines before the request line are skipped */
    s->in_name = false;
    return SCAN_MORE;
}

/* One byte of a line (not CR or LF). */
static scan_rc_t scan_line_byte(srv_conn_t *c, scan_t *s, unsigned char ch)
{
    const srv_http_limits_t *lim = &c->http->lim;
    if (ch == '\n')
        return scan_fail(c, 400, "bad_request", "bare LF in the request head (use CRLF)");
    if (s->line_len == 0 && s->n_lines > 0 && (ch == ' ' || ch == '\t'))
        return scan_fail(c, 400, "bad_request", "obsolete line folding in a header field");
    if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
        return scan_fail(c, 400, "bad_request", "control character in the request head");
    if (s->n_lines > 0) { /* field line: tchar+ ":" value (RFC 9112 5.1) */
        if (s->line_len == 0)
            s->in_name = true;
        if (s->in_name && ch == ':' && s->line_len > 0)
            s->in_name = false;
        else if (s->in_name && !is_tchar(ch))
            return scan_fail(c, 400, "bad_request",
                             "invalid character in a header field name (no space before ':')");
    }
    if (++s->line_len > lim->max_request_line_bytes && s->n_lines == 0)
        return scan_fail(c, 414, "uri_too_long", "request line is longer than %zu bytes",
                         lim->max_request_line_bytes);
    return SCAN_MORE;
}

/* Scan up to n bytes of a request head. OUT: *used = bytes that belong to the head (all of
 * them unless SCAN_END: up to and including the blank line's LF). On SCAN_ERROR the
 * connection's err_* fields say what to answer. Leading empty lines before the request
 * line are tolerated (RFC 9112 2.2), but count towards the head limit. */
scan_rc_t srv__scan_head(srv_conn_t *c, const char *p, size_t n, size_t *used)
{
    scan_t *s = &c->scan;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        scan_rc_t rc;
        if (++s->head_bytes > c->http->lim.max_header_bytes)
            return scan_fail(c, 431, "headers_too_large", "request head is larger than %zu bytes",
                             c->http->lim.max_header_bytes);
        if (s->cr) {
            s->cr = false;
            rc = ch == '\n' ? scan_line_end(c, s)
                            : scan_fail(c, 400, "bad_request", "bare CR in the request head");
        } else if (ch == '\r') {
            s->cr = true;
            rc = SCAN_MORE;
        } else {
            rc = scan_line_byte(c, s, ch);
        }
        if (rc != SCAN_MORE) {
            *used = i + 1;
            return rc;
        }
    }
    *used = n;
    return SCAN_MORE;
}

/* ---- request ids --------------------------------------------------------------------- */

/* Keep [A-Za-z0-9._:-] of a client's X-Request-Id, at most SRV_REQUEST_ID_MAX chars. */
void srv__request_id_sanitize(char *dst, const char *src, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len && n < SRV_REQUEST_ID_MAX; i++) {
        char ch = src[i];
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
            ch == '.' || ch == '_' || ch == ':' || ch == '-')
            dst[n++] = ch;
    }
    dst[n] = '\0';
}

/* "req-" + 16 hex digits: splitmix64 of a random seed plus a counter (unique per process,
 * unpredictable across processes). */
void srv__request_id_generate(srv_http_t *h, char *dst)
{
    uint64_t z = h->id_seed + ++h->id_counter * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    snprintf(dst, SRV_REQUEST_ID_MAX + 1, "req-%016llx", (unsigned long long)z);
}

/* ---- llhttp callbacks -------------------------------------------------------------------- */

static int refuse(srv_conn_t *c, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int refuse(srv_conn_t *c, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_refusal(c, status, code, fmt, ap);
    va_end(ap);
    return HPE_USER;
}

static int nomem(srv_conn_t *c)
{
    return refuse(c, 503, "out_of_memory", "out of memory while reading the request");
}

void srv__req_reset(req_t *r)
{
    srv__buf_clear(&r->url);
    srv__buf_clear(&r->field);
    srv__buf_clear(&r->value);
    srv__buf_clear(&r->content_type);
    srv__buf_clear(&r->authorization);
    srv__buf_clear(&r->act_as);
    r->path = r->query = NULL;
    r->request_id[0] = '\0';
    r->n_host = r->n_content_type = r->n_authorization = r->n_act_as = r->n_te = 0;
    r->te_chunked = false;
    r->expect_continue = false;
    free(r->body);
    r->body = NULL;
    r->body_len = r->body_cap = 0;
}

static int on_message_begin(llhttp_t *p)
{
    srv_conn_t *c = p->data;
    srv__req_reset(&c->req);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    srv_conn_t *c = p->data;
    return srv__buf_add(&c->req.url, at, n) ? 0 : nomem(c);
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    srv_conn_t *c = p->data;
    return srv__buf_add(&c->req.field, at, n) ? 0 : nomem(c);
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    srv_conn_t *c = p->data;
    return srv__buf_add(&c->req.value, at, n) ? 0 : nomem(c);
}

static bool field_is(const buf_t *f, const char *name)
{
    return f->len == strlen(name) && strncasecmp(f->p, name, f->len) == 0;
}

/* One complete header field: note the few that the server itself acts on. */
static int on_header_value_complete(llhttp_t *p)
{
    srv_conn_t *c = p->data;
    req_t *r = &c->req;
    const char *v = r->value.p ? r->value.p : "";
    int rc = 0;
    if (field_is(&r->field, "host")) {
        r->n_host++;
    } else if (field_is(&r->field, "transfer-encoding")) {
        r->te_chunked = ++r->n_te == 1 && strcasecmp(v, "chunked") == 0;
    } else if (field_is(&r->field, "content-type")) {
        if (++r->n_content_type > 1)
            rc = refuse(c, 400, "bad_request", "duplicate Content-Type header");
        else if (!srv__buf_add(&r->content_type, v, r->value.len))
            rc = nomem(c);
    } else if (field_is(&r->field, "authorization")) {
        /* two credentials would let a proxy and the daemon disagree on who is asking */
        if (++r->n_authorization > 1)
            rc = refuse(c, 400, "bad_request", "duplicate Authorization header");
        else if (!srv__buf_add(&r->authorization, v, r->value.len))
            rc = nomem(c);
    } else if (field_is(&r->field, "x-adapterd-tenant")) {
        if (++r->n_act_as > 1)
            rc = refuse(c, 400, "bad_request", "duplicate X-Adapterd-Tenant header");
        else if (!srv__buf_add(&r->act_as, v, r->value.len))
            rc = nomem(c);
    } else if (field_is(&r->field, "x-request-id")) {
        if (!r->request_id[0])
            srv__request_id_sanitize(r->request_id, v, r->value.len);
    } else if (field_is(&r->field, "expect")) {
        if (strcasecmp(v, "100-continue") != 0)
            rc = refuse(c, 417, "expectation_failed", "unsupported Expect header");
        r->expect_continue = true;
    }
    srv__buf_clear(&r->field);
    srv__buf_clear(&r->value);
    return rc;
}

/* Split the request target into path and query; accepts origin-form ("/p?q") and
 * absolute-form ("http://host/p?q", RFC 9112 3.2.2). Refuses dot segments, so no route
 * or name lookup ever sees "..". */
static int url_split(srv_conn_t *c)
{
    req_t *r = &c->req;
    char *u = r->url.p ? r->url.p : "";
    if (strncasecmp(u, "http://", 7) == 0 || strncasecmp(u, "https://", 8) == 0) {
        static char root[] = "/";
        char *slash = strchr(strstr(u, "//") + 2, '/');
        u = slash ? slash : root;
    }
    if (u[0] != '/')
        return refuse(c, 400, "bad_request", "request target must start with '/'");
    char *hash = strchr(u, '#');
    if (hash)
        *hash = '\0';
    char *q = strchr(u, '?');
    if (q)
        *q++ = '\0';
    for (const char *s = u; (s = strstr(s, "/.")) != NULL; s++)
        if (s[2] == '/' || s[2] == '\0' || (s[2] == '.' && (s[3] == '/' || s[3] == '\0')))
            return refuse(c, 400, "bad_request", "dot segments are not allowed in the path");
    r->path = u;
    r->query = q;
    return 0;
}

/* Transfer-Encoding on a request is never parsed (llhttp 8.1.0 accepts chunk data without
 * CRLF and Content-Length in trailers): the message framing decides the status. */
static int check_transfer_encoding(srv_conn_t *c, llhttp_t *p)
{
    if (p->flags & F_CONTENT_LENGTH) /* RFC 9112 6.1: a smuggling attempt, never a body */
        return refuse(c, 400, "bad_request", "Content-Length together with Transfer-Encoding");
    if (p->http_minor == 0) /* RFC 9112 6.1: faulty framing in HTTP/1.0 */
        return refuse(c, 400, "bad_request", "Transfer-Encoding in an HTTP/1.0 request");
    if (!c->req.te_chunked || c->req.n_te != 1)
        return refuse(c, 501, "not_implemented",
                      "unsupported Transfer-Encoding (only a single 'chunked' is known)");
    return refuse(c, 411, "length_required",
                  "Content-Length required: Transfer-Encoding is not accepted on requests");
}

static int check_head(srv_conn_t *c, llhttp_t *p)
{
    if (p->http_major == 0)
        return refuse(c, 400, "bad_request", "HTTP/0.9 requests are not supported");
    if (p->http_major != 1 || p->http_minor > 1)
        return refuse(c, 505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1");
    if (c->req.n_host > 1)
        return refuse(c, 400, "bad_request", "more than one Host header");
    if (p->http_minor == 1 && c->req.n_host == 0)
        return refuse(c, 400, "bad_request", "HTTP/1.1 requests need a Host header");
    if (c->req.n_te > 0 || (p->flags & F_TRANSFER_ENCODING))
        return check_transfer_encoding(c, p);
    return url_split(c);
}

/* Content-Length over the limit of the body's mode: refused before any body byte is read
 * (a streamed body is then aborted by conn_fail). */
static int refuse_length(srv_conn_t *c, uint64_t len, size_t max_body)
{
    bool stream = c->body_mode == API_BODY_STREAM;
    return refuse(c, 413, stream ? "too_large" : "body_too_large",
                  "request body of %llu bytes is larger than the %slimit of %zu bytes",
                  (unsigned long long)len, stream ? "upload " : "", max_body);
}

/* The head is complete: check it, then let the handler choose how the body is read
 * (whole, streamed, or not at all because it answered already; policy in http.h). */
static int on_headers_complete(llhttp_t *p)
{
    srv_conn_t *c = p->data;
    if (check_head(c, p) != 0)
        return -1;
    if (!c->req.request_id[0])
        srv__request_id_generate(c->http, c->req.request_id);
    c->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
    c->is_head = p->method == HTTP_HEAD;
    uint64_t len = (p->flags & F_CONTENT_LENGTH) ? p->content_length : 0;
    size_t max_body = 0;
    if (srv__conn_body_begin(c, len, &max_body) == API_BODY_ANSWERED)
        return HPE_PAUSED; /* conn_parse_step sees the BUSY state: the body is never read */
    if (len > max_body)
        return refuse_length(c, len, max_body);
    if (len == 0)
        return 0;
    if (c->body_mode == API_BODY_WHOLE) {
        c->req.body_cap = (size_t)len;
        c->req.body = malloc(c->req.body_cap);
        if (!c->req.body)
            return nomem(c);
    }
    c->state = CONN_BODY;
    srv__conn_arm_timer(c);
    if (c->req.expect_continue && p->http_minor == 1)
        srv__conn_send(c, "HTTP/1.1 100 Continue\r\n\r\n", 25, NULL, 0);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    srv_conn_t *c = p->data;
    req_t *r = &c->req;
    if (c->body_mode == API_BODY_STREAM) { /* borrowed: the handler copies what it keeps */
        if (n > 0)
            c->http->handler.body_data(c->http->handler.ctx, c->body, at, n);
        return 0;
    }
    if (n > r->body_cap - r->body_len) /* llhttp enforces Content-Length; belt and braces */
        return refuse(c, 413, "body_too_large", "request body is larger than announced");
    memcpy(r->body + r->body_len, at, n);
    r->body_len += n;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    (void)p;
    return HPE_PAUSED; /* answered one at a time: conn_parse dispatches, then resumes */
}

/* Register the callbacks above on s (llhttp_settings_init already called). */
void srv__http_settings(llhttp_settings_t *s)
{
    s->on_message_begin = on_message_begin;
    s->on_url = on_url;
    s->on_header_field = on_header_field;
    s->on_header_value = on_header_value;
    s->on_header_value_complete = on_header_value_complete;
    s->on_headers_complete = on_headers_complete;
    s->on_body = on_body;
    s->on_message_complete = on_message_complete;
}
