/* hop.c - the two services every server file (and the HTTP tests) needs without the rest
 * of the daemon: logging to stderr from any thread, and the hop that carries messages from
 * other threads onto the loop (contracts in server.h).
 *
 * The hop is a mutex-protected FIFO plus a uv_async_t: posting holds the mutex only to
 * link the message in and never allocates (the poster owns the message), so an end() can
 * always be handed over. */
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "server/http.h"
#include "server/server.h"

/* ---- logging ------------------------------------------------------------------------------ */

static int log_level = SRV_LOG_INFO;
static int log_format = SRV_LOG_FORMAT_TEXT;
static const char *const level_tags[] = {"error", "warn", "info", "debug"};

void srv_log_set_level(int level)
{
    log_level = level;
}

void srv_log_set_format(int format)
{
    log_format = format;
}

bool srv_log_enabled(int level)
{
    return level <= log_level;
}

/* "2026-01-02T03:04:05.678Z" */
static void log_stamp(char *buf, size_t cap)
{
    char sec[32];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(sec, sizeof sec, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, cap, "%s.%03ldZ", sec, ts.tv_nsec / 1000000);
}

void srv_log(int level, const char *fmt, ...)
{
    if (level > log_level)
        return;
    char line[1024], stamp[48];
    log_stamp(stamp, sizeof stamp);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* one fprintf per line, so lines from different threads do not interleave */
    if (log_format == SRV_LOG_FORMAT_JSON) {
        char esc[6 * sizeof line];
        srv_json_escape(esc, sizeof esc, line);
        fprintf(stderr, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"%s\"}\n", stamp,
                level_tags[level], esc);
        return;
    }
    fprintf(stderr, "%s %-5s %s\n", stamp, level_tags[level], line);
}

/* ,"key":"escaped value" (value NULL: nothing) */
static size_t json_field(char *dst, size_t cap, const char *key, const char *value)
{
    if (!value || cap == 0)
        return 0;
    char esc[1024];
    srv_json_escape(esc, sizeof esc, value);
    int n = snprintf(dst, cap, ",\"%s\":\"%s\"", key, esc);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

/* The api's facts: tenant, key id, adapter selection and tokens (generation routes). */
static size_t log_note_json(char *dst, size_t cap, const srv_access_t *a)
{
    const api_note_t *nt = a->note;
    const char *adapter = a->adapter[0] ? a->adapter : nt && nt->adapter[0] ? nt->adapter : NULL;
    size_t n = json_field(dst, cap, "adapter", adapter);
    if (!nt)
        return n;
    n += json_field(dst + n, cap - n, "tenant", nt->tenant[0] ? nt->tenant : NULL);
    n += json_field(dst + n, cap - n, "key_id", nt->key_id[0] ? nt->key_id : NULL);
    if (nt->n_prompt || nt->n_gen) {
        int k = snprintf(dst + n, cap - n, ",\"prompt_tokens\":%d,\"completion_tokens\":%d",
                         nt->n_prompt, nt->n_gen);
        n += k < 0 ? 0 : (size_t)k < cap - n ? (size_t)k : cap - n - 1;
    }
    return n;
}

static void log_access_json(const srv_access_t *a)
{
    char line[4096], stamp[48];
    size_t n = 0;
    log_stamp(stamp, sizeof stamp);
    n += (size_t)snprintf(line, sizeof line,
                          "{\"ts\":\"%s\",\"level\":\"info\",\"msg\":\"request\"", stamp);
    n += json_field(line + n, sizeof line - n, "request_id", a->request_id);
    n += json_field(line + n, sizeof line - n, "method", a->method);
    n += json_field(line + n, sizeof line - n, "path", a->path);
    n += json_field(line + n, sizeof line - n, "route", a->route);
    if (n < sizeof line)
        n += (size_t)snprintf(line + n, sizeof line - n,
                              ",\"status\":%d,\"bytes\":%zu,\"duration_ms\":%.3f", a->status,
                              a->bytes, a->seconds * 1e3);
    if (n < sizeof line)
        n += log_note_json(line + n, sizeof line - n, a);
    if (n < sizeof line && a->client_gone)
        n += (size_t)snprintf(line + n, sizeof line - n, ",\"client_gone\":true");
    if (n < sizeof line)
        n += json_field(line + n, sizeof line - n, "code", a->code);
    if (n < sizeof line)
        n += json_field(line + n, sizeof line - n, "error", a->message);
    if (n + 3 > sizeof line) /* cannot happen with the bounded fields above; stay valid JSON */
        return;
    fprintf(stderr, "%s}\n", line);
}

void srv_log_access(const srv_access_t *a)
{
    if (!srv_log_enabled(SRV_LOG_INFO))
        return;
    if (log_format == SRV_LOG_FORMAT_JSON)
        log_access_json(a);
    else if (a->code)
        srv_log(SRV_LOG_INFO, "%d %s (%s) id=%s", a->status, a->code, a->message ? a->message : "",
                a->request_id);
    else
        srv_log(SRV_LOG_INFO, "%s %s %d %zuB %.1fms id=%s%s%s%s", a->method ? a->method : "?",
                a->path ? a->path : "?", a->status, a->bytes, a->dispatch_ms, a->request_id,
                a->note && a->note->tenant[0] ? " tenant=" : "",
                a->note && a->note->tenant[0] ? a->note->tenant : "",
                a->client_gone ? " (client gone)" : "");
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
