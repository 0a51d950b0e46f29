/* pool.c - the compute thread pool (see pool.h).
 *
 * A job is published by writing the job fields, then `claim` = (generation << 32 | chunks
 * left), then bumping the futex word `gen`. Every thread - the caller included - takes
 * chunks by a compare-and-swap on `claim` that decrements the count; a job's fields are
 * only read after a successful claim, and a job cannot finish (so its fields cannot be
 * rewritten) while a claimed chunk is running. A worker that wakes late finds nothing left
 * to claim: the caller does not wait for workers that were descheduled (another process on
 * the core), only for chunks actually taken. The caller waits for `done` == chunks.
 * Workers wait for a new generation by spinning for up to SPIN_NS, then on a futex on
 * `gen`; `sleepers` lets the publisher skip the wake-up syscall when all workers spin (the
 * common case inside a forward step). */
#include "core/pool.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Longest gap between two products of one forward step (attention, norms) is well under
 * this; after it the workers sleep. */
#define SPIN_NS 200000L
#define CHUNKS_PER_THREAD 4

static struct {
    pthread_mutex_t init_lock;
    int n_threads; /* workers + the caller */
    pthread_t tids[CORE_POOL_MAX_THREADS];
    atomic_int busy;     /* 1 while a job is running */
    atomic_uint gen;     /* job generation; futex word */
    _Atomic unsigned long long claim; /* gen << 32 | chunks not yet taken */
    atomic_size_t done;  /* chunks of the current job finished */
    atomic_int sleepers; /* workers blocked (or about to block) on the futex */
    atomic_int stop;
    unsigned start_gen; /* gen when the workers were created (no job can run then) */
    /* the current job; rewritten only when every chunk is done */
    core_pool_fn fn;
    void *arg;
    size_t n, grain, n_chunks;
} g = {.init_lock = PTHREAD_MUTEX_INITIALIZER, .n_threads = 1};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* [begin, end) of chunk c: units of grain split evenly, the last chunk ends at n. */
static void chunk_bounds(size_t c, size_t *begin, size_t *end)
{
    size_t units = (g.n + g.grain - 1) / g.grain;
    size_t u0 = units * c / g.n_chunks, u1 = units * (c + 1) / g.n_chunks;
    *begin = u0 * g.grain;
    *end = u1 * g.grain < g.n ? u1 * g.grain : g.n;
}

/* Take and run chunks of whatever job is open until none is left. */
static void claim_and_run(void)
{
    unsigned long long w = atomic_load(&g.claim);
    while (w & 0xFFFFFFFFull) {
        if (!atomic_compare_exchange_weak(&g.claim, &w, w - 1))
            continue; /* w reloaded */
        size_t c = g.n_chunks - (size_t)(w & 0xFFFFFFFFull), b, e;
        chunk_bounds(c, &b, &e);
        if (b < e)
            g.fn(g.arg, b, e);
        atomic_fetch_add(&g.done, 1);
        w = atomic_load(&g.claim);
    }
}

/* Wait until gen differs from seen; returns the new generation. */
static unsigned wait_gen(unsigned seen)
{
    long t0 = 0;
    for (unsigned spins = 0;; spins++) {
        unsigned cur = atomic_load(&g.gen);
        if (cur != seen)
            return cur;
        if ((spins & 255) != 255) {
            cpu_relax();
            continue;
        }
        long t = now_ns();
        if (!t0)
            t0 = t;
        if (t - t0 < SPIN_NS)
            continue;
        atomic_fetch_add(&g.sleepers, 1);
        syscall(SYS_futex, &g.gen, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
        atomic_fetch_sub(&g.sleepers, 1);
        t0 = 0;
    }
}

static void *worker_main(void *p)
{
    (void)p;
    unsigned seen = g.start_gen;
    for (;;) {
        seen = wait_gen(seen);
        if (atomic_load(&g.stop))
            return NULL;
        claim_and_run();
    }
}

/* Open the job whose fields are written (n_chunks of them), wake sleepers if any. */
static void publish(void)
{
    unsigned next = atomic_load(&g.gen) + 1;
    atomic_store(&g.done, 0);
    atomic_store(&g.claim, (unsigned long long)next << 32 | g.n_chunks);
    atomic_store(&g.gen, next);
    if (atomic_load(&g.sleepers) > 0)
        syscall(SYS_futex, &g.gen, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Chunks taken by workers still running: spin briefly, then yield the core (the worker
 * running our chunk may be waiting for it). */
static void wait_done(void)
{
    for (unsigned spins = 0; atomic_load(&g.done) < g.n_chunks; spins++) {
        if (spins < (1u << 14))
            cpu_relax();
        else
            sched_yield();
    }
}

void core_pool_init(int n_threads)
{
    pthread_mutex_lock(&g.init_lock);
    if (n_threads > CORE_POOL_MAX_THREADS)
        n_threads = CORE_POOL_MAX_THREADS;
    if (g.n_threads > 1 || n_threads <= 1)
        goto out;
    atomic_store(&g.stop, 0);
    g.start_gen = atomic_load(&g.gen);
    int started = 1;
    for (; started < n_threads; started++)
        if (pthread_create(&g.tids[started], NULL, worker_main, (void *)(size_t)started) != 0)
            break; /* run with what we have */
    g.n_threads = started;
out:
    pthread_mutex_unlock(&g.init_lock);
}

void core_pool_shutdown(void)
{
    pthread_mutex_lock(&g.init_lock);
    while (atomic_exchange(&g.busy, 1))
        sched_yield();
    if (g.n_threads > 1) {
        atomic_store(&g.stop, 1);
        g.n_chunks = 0;
        publish();
        syscall(SYS_futex, &g.gen, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
        for (int i = 1; i < g.n_threads; i++)
            pthread_join(g.tids[i], NULL);
        g.n_threads = 1;
    }
    atomic_store(&g.busy, 0);
    pthread_mutex_unlock(&g.init_lock);
}

int core_pool_n_threads(void)
{
    return g.n_threads;
}

void core_pool_for(size_t n, size_t grain, core_pool_fn fn, void *arg)
{
    if (n == 0)
        return;
    if (grain < 1)
        grain = 1;
    size_t units = (n + grain - 1) / grain;
    int expected = 0;
    if (g.n_threads <= 1 || units < 2 || !atomic_compare_exchange_strong(&g.busy, &expected, 1)) {
        fn(arg, 0, n);
        return;
    }
    g.fn = fn;
    g.arg = arg;
    g.n = n;
    g.grain = grain;
    /* a few chunks per thread: whoever is running takes the next, so a thread that lost
     * its core for a while delays the job by one chunk, not by its whole share */
    size_t want = (size_t)g.n_threads * CHUNKS_PER_THREAD;
    g.n_chunks = units < want ? units : want;
    publish();
    claim_and_run();
    wait_done();
    atomic_store(&g.busy, 0);
}
