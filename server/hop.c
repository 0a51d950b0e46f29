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

#include "server/server.h"

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
