/* fault.c - failpoints for the crash and I/O-error loops (contract in store/fault.h).
 *
 * The environment is read once (pthread_once) on the first call; after that the settings
 * are read-only, so any thread may call store__fp. The operation counter is one atomic
 * uint64 bumped with a relaxed increment: numbering needs only to be unique and in the
 * order each thread sees its own operations, not to order anything else. A test that
 * forks must not call store__fp in the parent before setting the child's environment:
 * the parsed settings and the counter are inherited across fork. */
#include "store/fault.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static pthread_once_t fp_once = PTHREAD_ONCE_INIT;
static atomic_uint_fast64_t fp_count;
static bool fp_armed;        /* any setting present: the slow path is needed */
static uint64_t fp_crash_at; /* 0: never */
static uint64_t fp_eio_at;   /* 0: never */
static bool fp_eio_from;     /* "k+": fail every operation from k on */
static bool fp_log;

/* Parse "k" (or "k+" when plus is not NULL) with k >= 1. Returns 0 for unset or malformed
 * values; a malformed one is reported, since a typo would silently turn a crash test into
 * a clean run. */
static uint64_t fp_parse(const char *name, bool *plus)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return 0;
    uint64_t k = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (k > (UINT64_MAX - 9) / 10)
            goto bad;
        k = k * 10 + (uint64_t)(*p - '0');
    }
    if (plus && *p == '+') {
        *plus = true;
        p++;
    }
    if (p == s || *p || k == 0)
        goto bad;
    return k;
bad:
    fprintf(stderr, "failpoint: ignoring %s=%s (want a count from 1%s)\n", name, s,
            plus ? ", optionally followed by +" : "");
    if (plus)
        *plus = false;
    return 0;
}

static void fp_init(void)
{
    fp_crash_at = fp_parse("ADAPTERD_FAILPOINT_CRASH", NULL);
    fp_eio_at = fp_parse("ADAPTERD_FAILPOINT_EIO", &fp_eio_from);
    const char *log = getenv("ADAPTERD_FAILPOINT_LOG");
    fp_log = log && log[0] == '1' && log[1] == '\0';
    fp_armed = fp_crash_at || fp_eio_at || fp_log;
}

bool store__fp(const char *op)
{
    pthread_once(&fp_once, fp_init);
    uint64_t n = atomic_fetch_add_explicit(&fp_count, 1, memory_order_relaxed) + 1;
    if (!fp_armed)
        return false;
    if (fp_log)
        fprintf(stderr, "failpoint %llu %s\n", (unsigned long long)n, op);
    if (n == fp_crash_at)
        _exit(137); /* a crash: no atexit handlers, no stdio flush, no cleanup */
    if (fp_eio_at && (n == fp_eio_at || (fp_eio_from && n > fp_eio_at)))
        return true;
    return false;
}
