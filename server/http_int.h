/* http_int.h - private to server/http.c, http_parse.c and http_util.c: the connection and
 * server structs, and the few helpers the files share (prefix srv__).
 * Loop thread only. */
#ifndef SERVER_HTTP_INT_H
#define SERVER_HTTP_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llhttp.h"
#include "server/http.h"

#define IN_MIN_FREE 4096
#define IN_EXTRA (64 * 1024) /* input buffer beyond max_header_bytes (pipelined bytes) */
#define LINGER_MAX_BYTES (1 << 20)

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

typedef enum {
    CONN_IDLE,
    CONN_HEAD,
    CONN_BODY,
    CONN_BUSY,
    CONN_FINISHING,
    CONN_LINGER,
    CONN_CLOSED
} conn_state_t;

/* The strict pre-scan of a request head (see scan_head). */
typedef struct {
    size_t head_bytes; /* bytes of this head so far */
    size_t line_len;   /* bytes of the current line, without CRLF */
    size_t n_lines;    /* complete non-empty lines: request line + fields */
    bool cr;           /* the previous byte was CR */
    bool in_name;      /* inside a field name (before its colon) */
} scan_t;

typedef struct {
    buf_t url;
    buf_t field, value; /* the header being parsed; spans may arrive in pieces */
    buf_t content_type;
    buf_t authorization;      /* the Authorization header's value (one allowed) */
    buf_t act_as;             /* X-Adapterd-Tenant's value (one allowed) */
    const char *path, *query; /* into url, set when the head is complete */
    char request_id[SRV_REQUEST_ID_MAX + 1];
    int n_host, n_content_type, n_authorization, n_act_as;
    int n_te;        /* Transfer-Encoding fields */
    bool te_chunked; /* the only one says exactly "chunked" */
    bool expect_continue;
    char *body;
    size_t body_len, body_cap;
} req_t;

typedef struct srv_conn srv_conn_t;

struct srv_conn {
    api_note_t note; /* the api's facts about the current request (access log) */
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown;
    srv_http_t *http;
    srv_conn_t *prev, *next;
    conn_state_t state;
    int n_open_handles; /* tcp + timer until their close callbacks ran */
    unsigned n_writes;  /* uv_write requests in flight */
    bool reading, peer_eof, in_parse;
    bool req_active; /* dispatched, its end() not yet run on the loop */
    bool keep_alive; /* for the current request */
    bool is_head;    /* HEAD request: the response has no body */
    int n_requests;
    uint64_t t_accept;   /* uv_now at accept: the keep-alive age */
    uint64_t head_start; /* uv_now when the current head's first byte arrived */
    uint64_t t_dispatch; /* uv_hrtime at dispatch, for the access log */
    uint64_t t_head;     /* uv_hrtime at the head's first byte: end-to-end duration */
    size_t n_discarded;  /* bytes thrown away while lingering */

    char *in; /* input; [in_pos, in_len) not parsed yet */
    size_t in_pos, in_len, in_cap;
    bool scanning_head;
    scan_t scan;
    llhttp_t parser;
    req_t req;
    int err_status; /* set by parser callbacks that refuse a request */
    const char *err_code;
    char err_msg[160];

    api_sink_t sink;
    api_job_t *job;
    api_body_mode_t body_mode; /* of the current request, set when its head is complete */
    api_body_t *body;          /* STREAM: the handler's, from body_begin ... */
    bool body_open;            /* ... until body_end or body_abort */
    atomic_bool sink_muted;    /* sink calls are ignored (during body_abort) */
    srv_msg_t end_msg;         /* end() never allocates, so a connection always learns of it */
    atomic_bool sink_failed;
    bool resp_begun, resp_streaming, resp_chunked;
    int resp_status;
    size_t resp_bytes;
    char *resp_ct, *resp_extra;
    buf_t resp_body;
};

struct srv_http {
    uv_loop_t *loop;
    srv_hop_t *hop;
    srv_http_limits_t lim;
    srv_handler_t handler;
    llhttp_settings_t settings;
    uv_tcp_t listener;
    bool listening, listener_closed, draining;
    srv_conn_t *conns; /* every allocated connection */
    size_t n_conns;
    uint64_t last_accept_warn; /* uv_now of the last accept/cap warning (one per second) */
    uint64_t id_seed, id_counter;
};

typedef enum { SCAN_MORE, SCAN_END, SCAN_ERROR } scan_rc_t;

/* http_util.c */
bool srv__buf_add(buf_t *b, const void *data, size_t n);
/* Appends one short formatted line (< 512 bytes; longer ones fail). */
bool srv__buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define SRV_BUF_LIT(b, lit) srv__buf_add(b, lit, sizeof(lit) - 1)
void srv__buf_clear(buf_t *b);
void srv__buf_free(buf_t *b);
const char *srv__status_reason(int status);
const char *srv__http_date(void); /* IMF-fixdate of now */
/* Lower lim->max_connections (with a warning) when RLIMIT_NOFILE, raised as far as the
 * hard limit allows, cannot hold it plus SRV_FD_RESERVE. */
void srv__limits_fit_nofile(srv_http_limits_t *lim);

/* http.c */
void srv__conn_arm_timer(srv_conn_t *c);
void srv__conn_send(srv_conn_t *c, const char *a, size_t an, const char *b, size_t bn);
void srv__request_id_sanitize(char *dst, const char *src, size_t len);
void srv__request_id_generate(srv_http_t *h, char *dst);
/* The head is complete and passed the checks: ask the handler how the body is read.
 * ANSWERED leaves the connection BUSY (the request active, its response queued). OUT:
 * *max_body = the Content-Length limit for WHOLE and STREAM. */
api_body_mode_t srv__conn_body_begin(srv_conn_t *c, uint64_t content_length, size_t *max_body);

/* http_parse.c */
/* Pre-scan p[0..n) of a request head. OUT: *used = bytes consumed (up to the head's end).
 * SCAN_ERROR sets c->err_status/err_code/err_msg. */
scan_rc_t srv__scan_head(srv_conn_t *c, const char *p, size_t n, size_t *used);
void srv__req_reset(req_t *r);
void srv__http_settings(llhttp_settings_t *s);

#endif
