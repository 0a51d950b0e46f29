/* pool.h - one process-wide pool of compute threads with a static-chunked parallel-for.
 *
 * core_pool_init(n) starts n-1 workers once (the calling thread of core_pool_for is the n-th);
 * later calls are no-ops. core_pool_for(n, grain, fn, arg) splits [0, n) into a few
 * contiguous chunks per thread whose bounds are multiples of grain (the last one ends at
 * n), runs fn(arg, begin, end) on each - the calling thread takes chunks too, and any
 * chunk a worker has not taken yet (it may have lost its core to another process) - and
 * returns when all have finished. Nothing allocates per call.
 *
 * Workers spin briefly after a job (decode issues hundreds of small products per step, and a
 * futex wake-up costs more than most of them) and then sleep, so an idle pool burns no CPU.
 *
 * Threads: core_pool_for may be called from any thread. One job runs at a time; a caller that
 * finds the pool busy (another thread's job, or fn itself calling core_pool_for) runs the
 * whole range itself on its own thread, so calls never deadlock and never wait for a lock.
 * core_pool_shutdown stops the workers (tests, leak checkers); the pool may be inited again. */
#ifndef CORE_POOL_H
#define CORE_POOL_H

#include <stddef.h>

typedef void (*core_pool_fn)(void *arg, size_t begin, size_t end);

/* n_threads < 1 means 1 (no workers). Capped at CORE_POOL_MAX_THREADS. */
#define CORE_POOL_MAX_THREADS 64
void core_pool_init(int n_threads);
void core_pool_shutdown(void);
int core_pool_n_threads(void);

/* grain >= 1. n == 0 calls nothing. */
void core_pool_for(size_t n, size_t grain, core_pool_fn fn, void *arg);

#endif
