/* bench_store_load.c - cold adapter loads through the store, next to a plain read().
 *
 * usage: bench_store_load BENCH_DIR [N_LOADS]
 * BENCH_DIR holds model/ and store-adapters/r{8,16,64}-{a,b} (tools/make_bench_model.py
 * --store-adapters: BF16, all seven projections). The six adapters are imported into a
 * fresh store at BENCH_DIR/tmp-store. Then, per rank, the store is reopened with a cache
 * budget of exactly one adapter of that rank and a libuv thread-pool executor (as the
 * daemon's), and the loop alternates store_acquire between that rank's two adapters,
 * releasing each before the next: every acquire is a miss that evicts the other adapter and
 * runs a full load task (read both blobs, sha256, parse, BF16 -> f32). Cold load latency =
 * store_acquire call to ready callback, N_LOADS (default 100; p99 is then the second
 * slowest) per rank after 2 not counted.
 * Next to it: read() of the same two blob files from the page cache into a buffer allocated
 * once (same count, after a warm-up read): the floor a load could reach.
 * While loads run, a 1 ms one-shot timer, re-armed at each fire, measures event-loop lag:
 * fire time - due time (libuv's loop clock at arming + 1 ms). The same timer first runs
 * 1000 fires on an idle loop: this machine's floor for that number (timer slack, a
 * virtualised clock), printed as a '#' line next to it.
 * Prints "BENCH <name> <value> <unit>" lines and the targets as '#' lines. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "core/lora.h"
#include "core/model.h"
#include "store/store.h"
#include "tests/tools/uv_exec.h"

#define N_RANKS 3
#define N_SKIP 2
#define MAX_LOADS 1000
#define MAX_LAGS (1 << 20)

static const int RANKS[N_RANKS] = {8, 16, 64};

static void die(const char *what, const core_err_t *err)
{
    fprintf(stderr, "bench_store_load: %s: %s\n", what, err ? err->msg : strerror(errno));
    exit(1);
}

static double now_ms(void)
{
    return (double)uv_hrtime() / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* q-quantile (nearest rank) of v; sorts v. */
static double quantile(double *v, size_t n, double q)
{
    qsort(v, n, sizeof *v, cmp_double);
    size_t i = (size_t)(q * (double)n + 0.999999);
    return v[i == 0 ? 0 : (i > n ? n - 1 : i - 1)];
}

static void bench_line(const char *name, double v, const char *unit)
{
    printf("BENCH %s %.3f %s\n", name, v, unit);
    fflush(stdout);
}


/* ---- event-loop lag ----------------------------------------------------------------- */

typedef struct {
    uv_timer_t timer;
    uint64_t due_ms; /* loop clock at arming + 1 */
    double *lag;     /* ms, one per fire */
    size_t n;
    size_t stop_n;   /* stop the loop after this many fires (0: never) */
} lag_t;

static void on_lag_tick(uv_timer_t *t)
{
    lag_t *L = t->data;
    double lag = now_ms() - (double)L->due_ms;
    if (L->n < MAX_LAGS)
        L->lag[L->n++] = lag > 0 ? lag : 0;
    if (L->n == L->stop_n) {
        uv_stop(t->loop);
        return;
    }
    L->due_ms = uv_now(t->loop) + 1;
    uv_timer_start(t, on_lag_tick, 1, 0);
}

static void lag_start(lag_t *L)
{
    uv_update_time(L->timer.loop);
    L->due_ms = uv_now(L->timer.loop) + 1;
    uv_timer_start(&L->timer, on_lag_tick, 1, 0);
}

/* ---- cold loads of one rank ------------------------------------------------------------- */

typedef struct {
    uv_loop_t *loop;
    store_t *s;
    char names[2][16];
    store_want_t want;
    int i, n_total; /* acquires done, wanted (N_SKIP + N_LOADS) */
    double t0, ms[MAX_LOADS + N_SKIP];
} run_t;

static void acquire_next(run_t *R);

/* The load is done: release it (now evictable) and acquire the other adapter, which must
 * evict this one. Callbacks may re-enter the store (store.h). */
static void on_ready(void *user, rc_t rc, const core_err_t *err)
{
    run_t *R = user;
    R->ms[R->i] = now_ms() - R->t0;
    if (rc != RC_OK)
        die("load", err);
    core_lora_release(R->want.lora);
    R->want.lora = NULL;
    if (++R->i == R->n_total)
        uv_stop(R->loop);
    else
        acquire_next(R);
}

static void acquire_next(run_t *R)
{
    store_wait_t *wait = NULL;
    core_err_t err = {{0}};
    snprintf(R->want.spec, sizeof R->want.spec, "%s", R->names[R->i % 2]);
    R->t0 = now_ms();
    rc_t rc = store_acquire(R->s, STORE_TENANT_DEFAULT, &R->want, 1, on_ready, R, &wait, &err);
    if (rc != RC_OK)
        die("acquire", &err);
    if (!wait) { /* resident: the budget let both stay, so this is not a cold load */
        fprintf(stderr, "bench_store_load: %s was a cache hit\n", R->want.spec);
        exit(1);
    }
}

/* Open the store for one rank: budget = one adapter, executor = the loop's thread pool. */
static store_t *store_open_rank(const char *dir, const core_model_t *m, uint64_t budget,
                                uv_loop_t *loop)
{
    store_params_t sp = store_default_params();
    store_t *s = NULL;
    core_err_t err = {{0}};
    sp.data_dir = dir;
    sp.base = m;
    sp.cache_budget_bytes = budget;
    sp.gc_interval_ms = 0;
    sp.lock = true;
    sp.exec = (store_exec_t){.ctx = loop, .submit = loop ? uvx_submit : NULL};
    if (store_open(&sp, &s, &err) != RC_OK)
        die(dir, &err);
    return s;
}

/* N_SKIP + n cold loads alternating between the rank's two adapters; ms[] of the counted
 * ones into out. */
static void run_rank(uv_loop_t *loop, lag_t *L, const char *dir, const core_model_t *m,
                     int rank, uint64_t budget, int n, double *out)
{
    static run_t R;
    memset(&R, 0, sizeof R);
    R.loop = loop;
    R.n_total = N_SKIP + n;
    snprintf(R.names[0], sizeof R.names[0], "r%d-a", rank);
    snprintf(R.names[1], sizeof R.names[1], "r%d-b", rank);
    R.s = store_open_rank(dir, m, budget, loop);
    lag_start(L);
    acquire_next(&R);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_timer_stop(&L->timer); /* closing and reopening the store below blocks on purpose */
    store_stats_t st;
    store_stats(R.s, &st);
    printf("# r%d: %d acquires, %llu loads, %llu hits, %llu evictions, budget %llu bytes\n",
           rank, R.n_total, (unsigned long long)st.n_loads, (unsigned long long)st.n_hits,
           (unsigned long long)st.n_evictions, (unsigned long long)budget);
    if (st.n_loads != (uint64_t)R.n_total || st.n_hits != 0 || store_n_tasks(R.s) != 0) {
        fprintf(stderr, "bench_store_load: r%d: expected every acquire to be a cold load\n", rank);
        exit(1);
    }
    store_close(R.s);
    memcpy(out, R.ms + N_SKIP, sizeof(double) * (size_t)n);
}

/* ---- read() of the same blobs --------------------------------------------------------- */

static size_t read_file(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t got = 0;
    if (fd < 0)
        die(path, NULL);
    for (;;) {
        ssize_t r = read(fd, buf + got, cap - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            die(path, NULL);
        if (r == 0 || (got += (size_t)r) == cap)
            break;
    }
    close(fd);
    return got;
}

/* p50 of n reads of both blobs of rows[i % 2], into one buffer allocated (and touched by
 * a warm-up read) once. */
static double raw_read_p50(const char *dir, const store_adapter_t rows[2], int n)
{
    char paths[2][2][4300];
    size_t cap = 0;
    for (int k = 0; k < 2; k++) {
        snprintf(paths[k][0], sizeof paths[k][0], "%s/blobs/%s", dir, rows[k].config_sha256);
        snprintf(paths[k][1], sizeof paths[k][1], "%s/blobs/%s", dir, rows[k].sha256);
        if ((size_t)rows[k].size + 65536 > cap)
            cap = (size_t)rows[k].size + 65536;
    }
    char *buf = malloc(cap);
    double *ms = malloc(sizeof(double) * (size_t)n);
    if (!buf || !ms)
        die("out of memory", NULL);
    for (int i = -2; i < n; i++) { /* two warm-up reads: both adapters once */
        const int k = (i + 2) % 2;
        double t0 = now_ms();
        size_t c = read_file(paths[k][0], buf, cap);
        size_t w = read_file(paths[k][1], buf + c, cap - c);
        if ((int64_t)w != rows[k].size)
            die("short blob read", NULL);
        if (i >= 0)
            ms[i] = now_ms() - t0;
    }
    double p50 = quantile(ms, (size_t)n, 0.5);
    free(buf);
    free(ms);
    return p50;
}

/* ---- main ----------------------------------------------------------------------------- */

static int on_rm(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* A fresh store holding the six adapters; rows[r][k] = rank RANKS[r], adapter a/b. */
static void import_all(const char *bench, const char *dir, const core_model_t *m,
                       store_adapter_t rows[N_RANKS][2])
{
    char src[4200], name[16];
    core_err_t err = {{0}};
    if (nftw(dir, on_rm, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT)
        die(dir, NULL);
    store_t *s = store_open_rank(dir, m, store_default_params().cache_budget_bytes, NULL);
    for (int r = 0; r < N_RANKS; r++)
        for (int k = 0; k < 2; k++) {
            snprintf(name, sizeof name, "r%d-%c", RANKS[r], "ab"[k]);
            snprintf(src, sizeof src, "%s/store-adapters/%s", bench, name);
            if (store_import(s, STORE_TENANT_DEFAULT, src, name, NULL, NULL, &rows[r][k],
                             &err) != RC_OK)
                die(src, &err);
        }
    store_close(s);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_store_load BENCH_DIR [N_LOADS]\n");
        return 2;
    }
    int n = argc > 2 ? atoi(argv[2]) : 100;
    if (n < 2 || n > MAX_LOADS) {
        fprintf(stderr, "bench_store_load: N_LOADS 2..%d\n", MAX_LOADS);
        return 2;
    }
    char path[4200], dir[4200];
    core_err_t err = {{0}};
    core_model_t *m = NULL;
    snprintf(path, sizeof path, "%s/model", argv[1]);
    if (core_model_load(path, &m, &err) != RC_OK)
        die(path, &err);
    snprintf(dir, sizeof dir, "%s/tmp-store", argv[1]);
    store_adapter_t rows[N_RANKS][2];
    import_all(argv[1], dir, m, rows);

    uv_loop_t loop;
    static lag_t L;
    uv_loop_init(&loop);
    uv_timer_init(&loop, &L.timer);
    L.timer.data = &L;
    L.lag = malloc(sizeof(double) * MAX_LAGS);
    double *ms = malloc(sizeof(double) * (size_t)n);
    if (!L.lag || !ms)
        die("out of memory", NULL);
    L.stop_n = 1000; /* the idle floor */
    lag_start(&L);
    uv_run(&loop, UV_RUN_DEFAULT);
    double idle_max = quantile(L.lag, L.n, 1.0), idle_p99 = quantile(L.lag, L.n, 0.99);
    L.n = L.stop_n = 0;
    double worst_ratio = 0;
    for (int r = 0; r < N_RANKS; r++) {
        char name[64];
        run_rank(&loop, &L, dir, m, RANKS[r], (uint64_t)rows[r][0].mem_bytes, n, ms);
        double p50 = quantile(ms, (size_t)n, 0.5), p99 = quantile(ms, (size_t)n, 0.99);
        double raw = raw_read_p50(dir, rows[r], n);
        printf("# r%d: weights blob %.1f MB (bf16), resident %.1f MB (f32)\n", RANKS[r],
               rows[r][0].size / 1e6, rows[r][0].mem_bytes / 1e6);
        snprintf(name, sizeof name, "store_cold_load_r%d_p50", RANKS[r]);
        bench_line(name, p50, "ms");
        snprintf(name, sizeof name, "store_cold_load_r%d_p99", RANKS[r]);
        bench_line(name, p99, "ms");
        snprintf(name, sizeof name, "store_raw_read_r%d_p50", RANKS[r]);
        bench_line(name, raw, "ms");
        snprintf(name, sizeof name, "store_cold_load_over_read_r%d", RANKS[r]);
        bench_line(name, p50 / raw, "x");
        if (p50 / raw > worst_ratio)
            worst_ratio = p50 / raw;
    }
    double lag_max = quantile(L.lag, L.n, 1.0), lag_p99 = quantile(L.lag, L.n, 0.99);
    printf("# loop lag over %zu timer fires during loads; on the idle loop: max %.2f ms, "
           "p99 %.2f ms\n", L.n, idle_max, idle_p99);
    bench_line("store_loop_lag_max", lag_max, "ms");
    bench_line("store_loop_lag_p99", lag_p99, "ms");
    printf("# target: cold load <= 2x raw read (worst rank %.2fx): %s\n", worst_ratio,
           worst_ratio <= 2.0 ? "met" : "MISSED");
    printf("# target: loop lag < 5 ms (max %.2f ms): %s\n", lag_max,
           lag_max < 5.0 ? "met" : "MISSED");

    uv_close((uv_handle_t *)&L.timer, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    free(L.lag);
    free(ms);
    core_model_free(m);
    return 0;
}
