/* http_util.c - the parts of the HTTP layer that need no connection: growable buffers,
 * JSON escaping, status reasons, the Date header, the default limits, and fitting the
 * connection cap to RLIMIT_NOFILE (policy in http.h). Loop thread only (http_date caches). */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "server/http_int.h"

bool srv__buf_add(buf_t *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return false;
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return true;
}

bool srv__buf_printf(buf_t *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return false; /* only used for short, fixed-shape lines */
    return srv__buf_add(b, tmp, (size_t)n);
}

void srv__buf_clear(buf_t *b)
{
    b->len = 0;
    if (b->p)
        b->p[0] = '\0';
}

void srv__buf_free(buf_t *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

size_t srv_json_escape(char *dst, size_t cap, const char *s)
{
    size_t n = 0;
    if (cap == 0)
        return 0;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        char esc[8];
        size_t k;
        if (ch == '"' || ch == '\\')
            k = (size_t)snprintf(esc, sizeof esc, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            k = (size_t)snprintf(esc, sizeof esc, "\\u%04x", ch);
        else
            esc[0] = (char)ch, k = 1;
        if (n + k >= cap)
            break;
        memcpy(dst + n, esc, k);
        n += k;
    }
    dst[n] = '\0';
    return n;
}

/* clang-format off */
static const struct {
    int status;
    const char *reason;
} reasons[] = {
    {100, "Continue"}, {200, "OK"}, {201, "Created"}, {202, "Accepted"}, {204, "No Content"},
    {400, "Bad Request"}, {401, "Unauthorized"}, {403, "Forbidden"}, {404, "Not Found"},
    {405, "Method Not Allowed"}, {408, "Request Timeout"}, {409, "Conflict"},
    {411, "Length Required"}, {413, "Content Too Large"}, {414, "URI Too Long"},
    {415, "Unsupported Media Type"}, {417, "Expectation Failed"},
    {422, "Unprocessable Content"}, {424, "Failed Dependency"}, {429, "Too Many Requests"},
    {431, "Request Header Fields Too Large"}, {500, "Internal Server Error"},
    {501, "Not Implemented"}, {503, "Service Unavailable"},
    {505, "HTTP Version Not Supported"}, {507, "Insufficient Storage"},
};
/* clang-format on */

const char *srv__status_reason(int status)
{
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        if (reasons[i].status == status)
            return reasons[i].reason;
    return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
}

/* IMF-fixdate of now, cached per second (loop thread only). */
const char *srv__http_date(void)
{
    static char date[40];
    static time_t last = -1;
    time_t now = time(NULL);
    if (now != last) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        last = now;
    }
    return date;
}

srv_http_limits_t srv_http_default_limits(void)
{
    return (srv_http_limits_t){
        .max_body_bytes = 2000000,
        .max_header_bytes = 16384,
        .max_request_line_bytes = 8192,
        .max_write_buffer_bytes = 4 << 20,
        .max_headers = 100,
        .max_connections = 1024,
        .max_keepalive_requests = 1000,
        .header_timeout_ms = 10000,
        .body_timeout_ms = 10000,
        .idle_timeout_ms = 75000,
        .max_connection_age_ms = 3600000,
        .linger_ms = 2000,
    };
}

/* Keep max_connections + SRV_FD_RESERVE descriptors within RLIMIT_NOFILE: raise the soft
 * limit towards the hard one if needed, else lower the cap. Without this, accept() fails
 * with EMFILE under load and the loop retries it on every turn, while the store or the
 * model loader fail with "too many open files" instead of the client being refused. */
void srv__limits_fit_nofile(srv_http_limits_t *lim)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = (rlim_t)lim->max_connections + SRV_FD_RESERVE;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        struct rlimit raised = rl;
        raised.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
        if (raised.rlim_cur > rl.rlim_cur && setrlimit(RLIMIT_NOFILE, &raised) == 0)
            rl = raised;
    }
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want)
        return;
    int cap = rl.rlim_cur > SRV_FD_RESERVE ? (int)(rl.rlim_cur - SRV_FD_RESERVE) : 1;
    srv_log(SRV_LOG_WARN,
            "--max-connections %d needs %d file descriptors, RLIMIT_NOFILE allows %llu "
            "(hard %llu): serving at most %d connections (raise it with ulimit -n)",
            lim->max_connections, (int)want, (unsigned long long)rl.rlim_cur,
            (unsigned long long)rl.rlim_max, cap);
    lim->max_connections = cap;
}
