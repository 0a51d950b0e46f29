/* server.h - the process around the HTTP layer: start-up wiring, the libuv loop, signals
 * and drain, logging, and the hop that carries work from other threads onto the loop.
 *
 * Start-up order (srv_server_start): the loop, BLAS threads, model, tokenizer
 * (MODEL/tokenizer.json), store (DATA_DIR, locked for the process's life; its blocking work
 * runs on libuv's thread pool, store_tick every 100 ms and after each finished request),
 * --adapters-dir imports, engine, api, listen. It then prints one line
 * "adapterd listening on http://HOST:PORT (model NAME, N adapters)" to stdout.
 * SIGINT/SIGTERM: stop accepting, close idle connections, let in-flight requests finish
 * (bounded by --drain-timeout-ms; then they are cancelled), let the store's tasks in
 * flight finish, free everything, exit 0. A second signal exits at once with status 1.
 *
 * Logging and the hop live in hop.c (so the HTTP layer links without the rest).
 *
 * The hop: srv_hop_post may be called from any thread (the engine thread calls it through
 * the response sinks); the message's run() is called later on the loop thread, in posting
 * order. srv_hop_drain runs everything queued now; it is not re-entrant (a nested call
 * returns at once and the outer call picks up what the nested caller posted).
 *
 * Threads: everything but srv_hop_post and srv_log runs on the main (loop) thread. */
#ifndef SERVER_SERVER_H
#define SERVER_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "api/api.h"
#include "core/rc.h"
#include "server/flags.h"

/* Logging to stderr with a timestamp and level; callable from any thread. Text lines are
 * "STAMP LEVEL message"; with SRV_LOG_FORMAT_JSON every line is one JSON object
 * {"ts","level","msg"} (requests: see srv_log_access). Set the format before threads log. */
void srv_log_set_level(int level);
void srv_log_set_format(int format); /* SRV_LOG_FORMAT_* */
bool srv_log_enabled(int level);
void srv_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One finished request, for the access log and metrics. Strings are borrowed for the call. */
typedef struct {
    const char *method; /* NULL when the request head never parsed */
    const char *path;   /* NULL likewise */
    const char *request_id;
    int status;
    size_t bytes;       /* bytes written to the client (head and body) */
    double seconds;     /* from the head's first byte to the response's end */
    double dispatch_ms; /* from the hand-over to the handler (the text line's figure) */
    bool client_gone;
    const char *code;    /* refused by the HTTP layer (no handler saw it): the error */
    const char *message; /* code and message, else NULL */
    const char *route;   /* route pattern (the handler's finished hook sets it), or NULL */
    char adapter[80];    /* adapter spec the request names, "" when unknown */
    const api_note_t *note; /* tenant, key id, adapters and tokens, or NULL */
} srv_access_t;

/* The access log line of a (level info). Text: "METHOD PATH STATUS NB N.Nms id=ID" (or
 * "STATUS CODE (MESSAGE) id=ID" for a refused request), as before --log-format; JSON:
 * {"ts","level":"info","msg":"request","request_id","method","path","route","status",
 * "bytes","duration_ms"} plus "adapter", "client_gone", "code", "error" when they apply. */
void srv_log_access(const srv_access_t *a);

typedef struct srv_msg {
    struct srv_msg *next;
    void (*run)(struct srv_msg *m); /* loop thread; may free m */
} srv_msg_t;

typedef struct srv_hop srv_hop_t;

rc_t srv_hop_new(uv_loop_t *loop, srv_hop_t **out, core_err_t *err);
void srv_hop_post(srv_hop_t *h, srv_msg_t *m);
void srv_hop_drain(srv_hop_t *h);
/* Close the async handle (loop thread). Later posts are kept, never run. */
void srv_hop_close(srv_hop_t *h);
/* After the loop has finished the close. Returns how many messages were never run. */
size_t srv_hop_free(srv_hop_t *h);

/* `adapterd import`: returns the process exit status. */
int srv_import_run(const srv_config_t *cfg);

typedef struct srv_server srv_server_t;

/* Returns 0, or 1 after printing why to stderr (*out is then NULL). */
int srv_server_start(const srv_config_t *cfg, srv_server_t **out);
/* Runs the loop until shut down; returns the exit status. */
int srv_server_run(srv_server_t *s);
void srv_server_free(srv_server_t *s);

#endif
