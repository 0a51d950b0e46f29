/* bench_zipf.c - generation throughput when 1,000 adapters share a small adapter cache.
 *
 * usage: bench_zipf BENCH_DIR TOKENIZER_JSON [CONCURRENCY] [N_REQUESTS] [N_WARMUP]
 * BENCH_DIR holds model/ and zipf-adapters/z0000..z0999 (tools/make_bench_model.py
 * --zipf-adapters 1000: rank 8 on q_proj and v_proj, BF16, distinct contents). They are
 * imported once into the store at BENCH_DIR/zipf-store, which later runs reuse. The bench
 * model has no tokenizer of its own; any tokenizer.json of its vocabulary size detokenizes
 * (the default model's Llama-2 one: 32000 ids).
 *
 * Requests run as the daemon runs them, on one libuv loop with the store's tasks on the
 * loop's thread pool: pick an adapter from Zipf(s = 1.1) over the 1,000 (fixed seed, the
 * same sequence in both runs) -> store_acquire (waiting for the ready callback when it is
 * cold) -> core_aset_new of that one LoRA -> core_engine_submit (16-token seeded prompt,
 * greedy, max_tokens 16, ignore_eos). The engine's DONE event (engine thread) queues the
 * request and wakes the loop with uv_async_send; the loop releases the LoRA, runs
 * store_tick (loads waiting for room retry), and starts the next request, keeping
 * CONCURRENCY (default 16) in flight. Each run: N_WARMUP (default 100) requests, drained,
 * then N_REQUESTS (default 400) timed from the first start to the last DONE:
 *   (a) cache budget = 64 adapters' mem_bytes, nothing resident at the start;
 *   (b) cache budget = all 1,000, every adapter loaded before the warm-up (all resident).
 * tok/s counts generated tokens. Hit rate and loads are store_stats deltas over the timed
 * requests of (a). Prints "BENCH <name> <value> <unit>" lines and the target as '#'. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/engine.h"
#include "core/gemm.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/tokenizer.h"
#include "store/store.h"
#include "tests/tools/uv_exec.h"

#define N_ADAPTERS 1000
#define ZIPF_S 1.1
#define PROMPT 16
#define MAX_TOKENS 16
#define MAX_CONC 64
#define SEED 20240901u

static void die(const char *what, const core_err_t *err)
{
    fprintf(stderr, "bench_zipf: %s: %s\n", what, err ? err->msg : strerror(errno));
    exit(1);
}

static double now_s(void)
{
    return (double)uv_hrtime() / 1e9;
}

static void bench_line(const char *name, double v, const char *unit)
{
    printf("BENCH %s %.3f %s\n", name, v, unit);
    fflush(stdout);
}

/* xorshift64*: a fixed stream for adapter picks, another for prompts. */
static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    return *x * 2685821657736338717ull;
}

static double rng_unit(uint64_t *x)
{
    return (double)(rng_next(x) >> 11) / 9007199254740992.0; /* [0, 1) */
}


/* ---- requests ------------------------------------------------------------------------ */

typedef struct bench bench_t;

typedef struct slot {
    bench_t *B;
    struct slot *next_done; /* the done queue (under B->mu) */
    store_want_t want;
    int32_t prompt[PROMPT];
    int n_gen;
    bool failed;
    char msg[256];
} slot_t;

struct bench {
    uv_loop_t loop;
    uv_async_t wake;
    uv_timer_t tick;
    store_t *s;
    core_engine_t *e;
    int32_t n_vocab;
    double cdf[N_ADAPTERS];
    uint64_t pick_rng, prompt_rng;
    slot_t slots[MAX_CONC];
    int conc;
    pthread_mutex_t mu;
    slot_t *done; /* filled by the engine thread, drained by the loop */
    /* the phase running now */
    int n_total, n_started, n_done;
    long n_tokens;
    double t_end;
};

/* Adapter index drawn from Zipf(ZIPF_S): rank k (1-based) with p ~ 1/k^s; index k-1. */
static int zipf_pick(bench_t *B)
{
    double u = rng_unit(&B->pick_rng);
    int lo = 0, hi = N_ADAPTERS - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (B->cdf[mid] > u)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static void zipf_init(bench_t *B)
{
    double sum = 0;
    for (int k = 0; k < N_ADAPTERS; k++)
        sum += B->cdf[k] = pow((double)(k + 1), -ZIPF_S);
    double acc = 0;
    for (int k = 0; k < N_ADAPTERS; k++)
        B->cdf[k] = (acc += B->cdf[k] / sum);
    B->cdf[N_ADAPTERS - 1] = 1.0;
}

static void on_event(void *user, const core_event_t *ev)
{
    slot_t *sl = user;
    bench_t *B = sl->B;
    if (ev->kind == CORE_EV_TOKEN)
        return;
    sl->n_gen = ev->kind == CORE_EV_DONE ? ev->n_gen : 0;
    sl->failed = ev->kind == CORE_EV_ERROR;
    if (sl->failed)
        snprintf(sl->msg, sizeof sl->msg, "%s", ev->message ? ev->message : "");
    pthread_mutex_lock(&B->mu);
    sl->next_done = B->done;
    B->done = sl;
    pthread_mutex_unlock(&B->mu);
    uv_async_send(&B->wake);
}

/* The LoRA is in hand: one-adapter set, into the engine (which retains the set). */
static void slot_submit(slot_t *sl)
{
    bench_t *B = sl->B;
    core_err_t err = {{0}};
    core_aset_t *aset = NULL;
    core_lora_term_t term = {sl->want.lora, 1.0f};
    if (core_aset_new(&term, 1, &aset, &err) != RC_OK)
        die("aset", &err);
    core_request_t r = core_request_default();
    r.prompt = sl->prompt;
    r.n_prompt = PROMPT;
    r.aset = aset;
    r.sampling.temperature = 0; /* greedy */
    r.max_tokens = MAX_TOKENS;
    r.ignore_eos = true;
    r.on_event = on_event;
    r.user = sl;
    uint64_t id;
    if (core_engine_submit(B->e, &r, &id, &err) != RC_OK)
        die("submit", &err);
    core_aset_release(aset);
}

static void on_ready(void *user, rc_t rc, const core_err_t *err)
{
    slot_t *sl = user;
    if (rc != RC_OK)
        die(sl->want.spec, err);
    slot_submit(sl);
}

static void slot_start(slot_t *sl)
{
    bench_t *B = sl->B;
    store_wait_t *wait = NULL;
    core_err_t err = {{0}};
    snprintf(sl->want.spec, sizeof sl->want.spec, "z%04d", zipf_pick(B));
    sl->prompt[0] = 1; /* BOS, then seeded ids */
    for (int i = 1; i < PROMPT; i++)
        sl->prompt[i] = 3 + (int32_t)(rng_next(&B->prompt_rng) % (uint64_t)(B->n_vocab - 3));
    B->n_started++;
    rc_t rc = store_acquire(B->s, STORE_TENANT_DEFAULT, &sl->want, 1, on_ready, sl, &wait, &err);
    if (rc != RC_OK)
        die(sl->want.spec, &err);
    if (!wait)
        slot_submit(sl);
}

/* Finished requests: drop their LoRA, let waiting loads retry, start the next ones. */
static void on_wake(uv_async_t *h)
{
    bench_t *B = h->data;
    pthread_mutex_lock(&B->mu);
    slot_t *list = B->done;
    B->done = NULL;
    pthread_mutex_unlock(&B->mu);
    int n_freed = 0;
    for (slot_t *sl = list; sl; sl = sl->next_done) {
        if (sl->failed) {
            fprintf(stderr, "bench_zipf: request on %s failed: %s\n", sl->want.spec, sl->msg);
            exit(1);
        }
        core_lora_release(sl->want.lora);
        sl->want.lora = NULL;
        B->n_tokens += sl->n_gen;
        B->n_done++;
        n_freed++;
    }
    if (n_freed)
        store_tick(B->s, uv_now(&B->loop));
    for (slot_t *sl = list, *next; sl; sl = next) {
        next = sl->next_done;
        if (B->n_started < B->n_total)
            slot_start(sl);
    }
    if (B->n_done == B->n_total) {
        B->t_end = now_s();
        uv_stop(&B->loop);
    }
}

static void on_tick(uv_timer_t *t)
{
    bench_t *B = t->data;
    store_tick(B->s, uv_now(&B->loop));
}

/* n requests, conc at a time, until the last is done. Returns seconds from the first
 * start to the last DONE; *tokens gets the tokens generated. */
static double run_phase(bench_t *B, int n, long *tokens)
{
    B->n_total = n;
    B->n_started = B->n_done = 0;
    B->n_tokens = 0;
    double t0 = now_s();
    for (int i = 0; i < B->conc && i < n; i++)
        slot_start(&B->slots[i]);
    uv_run(&B->loop, UV_RUN_DEFAULT);
    *tokens = B->n_tokens;
    return B->t_end - t0;
}

/* ---- the store ------------------------------------------------------------------------ */

static store_t *store_open_at(const char *dir, const core_model_t *m, uint64_t budget,
                              uv_loop_t *loop)
{
    store_params_t sp = store_default_params();
    store_t *s = NULL;
    core_err_t err = {{0}};
    sp.data_dir = dir;
    sp.base = m;
    if (budget)
        sp.cache_budget_bytes = budget;
    sp.gc_interval_ms = 0;
    sp.lock = true;
    sp.exec = (store_exec_t){.ctx = loop, .submit = loop ? uvx_submit : NULL};
    if (store_open(&sp, &s, &err) != RC_OK)
        die(dir, &err);
    return s;
}

/* Import BENCH_DIR/zipf-adapters unless the store already lists all of them (a previous
 * run). Returns one adapter's mem_bytes (they are all the same shape). */
static uint64_t store_prepare(const char *bench, const char *dir, const core_model_t *m)
{
    char src[4200];
    core_err_t err = {{0}};
    store_t *s = store_open_at(dir, m, 0, NULL);
    store_adapter_t *rows = NULL, row;
    size_t n = 0;
    if (store_list(s, STORE_TENANT_DEFAULT, &rows, &n, &err) != RC_OK)
        die("store_list", &err);
    free(rows);
    if (n < N_ADAPTERS) {
        int n_imported = 0;
        double t0 = now_s();
        snprintf(src, sizeof src, "%s/zipf-adapters", bench);
        if (store_import_dir(s, STORE_TENANT_DEFAULT, src, &n_imported, &err) != RC_OK)
            die(src, &err);
        printf("# imported %d adapters into %s (%.1f s)\n", n_imported, dir, now_s() - t0);
    }
    for (int i = 0; i < N_ADAPTERS; i += N_ADAPTERS - 1) {
        char spec[16];
        snprintf(spec, sizeof spec, "z%04d", i);
        if (store_resolve(s, STORE_TENANT_DEFAULT, spec, &row, &err) != RC_OK)
            die(spec, &err);
    }
    store_close(s);
    return (uint64_t)row.mem_bytes;
}

/* Acquire all N_ADAPTERS at once, wait for every load, release them: all resident. */
typedef struct {
    bench_t *B;
    int n_pending;
} preload_t;

static void on_preloaded(void *user, rc_t rc, const core_err_t *err)
{
    preload_t *p = user;
    if (rc != RC_OK)
        die("preload", err);
    if (--p->n_pending == 0)
        uv_stop(&p->B->loop);
}

static void preload_all(bench_t *B)
{
    store_want_t *wants = calloc(N_ADAPTERS, sizeof *wants);
    preload_t p = {.B = B};
    core_err_t err = {{0}};
    if (!wants)
        die("out of memory", NULL);
    for (int i = 0; i < N_ADAPTERS; i++) {
        store_wait_t *wait = NULL;
        snprintf(wants[i].spec, sizeof wants[i].spec, "z%04d", i);
        if (store_acquire(B->s, STORE_TENANT_DEFAULT, &wants[i], 1, on_preloaded, &p, &wait,
                          &err) != RC_OK)
            die(wants[i].spec, &err);
        p.n_pending += wait != NULL;
    }
    if (p.n_pending)
        uv_run(&B->loop, UV_RUN_DEFAULT);
    for (int i = 0; i < N_ADAPTERS; i++)
        core_lora_release(wants[i].lora);
    free(wants);
}

/* ---- one configuration ---------------------------------------------------------------- */

typedef struct {
    double tok_s;
    double hit_rate; /* % of acquires of the timed requests */
    uint64_t n_loads;
} result_t;

static result_t run_config(bench_t *B, const char *dir, const core_model_t *m, uint64_t budget,
                           bool preload, int n_warm, int n_req)
{
    result_t res = {0};
    store_stats_t s0, s1;
    long tokens = 0;
    B->s = store_open_at(dir, m, budget, &B->loop);
    uv_timer_start(&B->tick, on_tick, 100, 100);
    if (preload)
        preload_all(B);
    B->pick_rng = SEED; /* the same request sequence in every configuration */
    B->prompt_rng = SEED ^ 0x9e3779b97f4a7c15ull;
    if (n_warm)
        run_phase(B, n_warm, &tokens);
    store_stats(B->s, &s0);
    double secs = run_phase(B, n_req, &tokens);
    store_stats(B->s, &s1);
    uv_timer_stop(&B->tick);
    while (store_n_tasks(B->s) > 0) /* usage flushes, if one started */
        uv_run(&B->loop, UV_RUN_ONCE);
    uint64_t hits = s1.n_hits - s0.n_hits, misses = s1.n_misses - s0.n_misses;
    res.tok_s = (double)tokens / secs;
    res.hit_rate = hits + misses ? 100.0 * (double)hits / (double)(hits + misses) : 0;
    res.n_loads = s1.n_loads - s0.n_loads;
    printf("# budget %llu bytes: %d requests, %ld tokens in %.2f s; %llu hits, %llu misses, "
           "%llu loads, %llu evictions, %d resident at the end\n",
           (unsigned long long)budget, n_req, tokens, secs, (unsigned long long)hits,
           (unsigned long long)misses, (unsigned long long)res.n_loads,
           (unsigned long long)(s1.n_evictions - s0.n_evictions), s1.n_resident);
    if (tokens != (long)n_req * MAX_TOKENS) {
        fprintf(stderr, "bench_zipf: %ld tokens, expected %d\n", tokens, n_req * MAX_TOKENS);
        exit(1);
    }
    store_close(B->s);
    B->s = NULL;
    return res;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_zipf BENCH_DIR TOKENIZER_JSON [CONCURRENCY] "
                        "[N_REQUESTS] [N_WARMUP]\n");
        return 2;
    }
    static bench_t B;
    B.conc = argc > 3 ? atoi(argv[3]) : 16;
    int n_req = argc > 4 ? atoi(argv[4]) : 400, n_warm = argc > 5 ? atoi(argv[5]) : 100;
    if (B.conc < 1 || B.conc > MAX_CONC || n_req < 1 || n_warm < 0) {
        fprintf(stderr, "bench_zipf: CONCURRENCY 1..%d, N_REQUESTS >= 1, N_WARMUP >= 0\n",
                MAX_CONC);
        return 2;
    }
    char path[4200], dir[4200];
    core_err_t err = {{0}};
    core_model_t *m = NULL;
    core_tok_t *tok = NULL;
    core_gemm_init(0);
    snprintf(path, sizeof path, "%s/model", argv[1]);
    if (core_model_load(path, &m, &err) != RC_OK)
        die(path, &err);
    if (core_tok_load(argv[2], &tok, &err) != RC_OK)
        die(argv[2], &err);
    B.n_vocab = m->cfg.n_vocab;
    snprintf(dir, sizeof dir, "%s/zipf-store", argv[1]);
    uint64_t one = store_prepare(argv[1], dir, m);

    core_engine_params_t ep = core_engine_default_params();
    ep.kv_budget_bytes = (size_t)256 << 20;
    ep.max_rank = 64;
    if (core_engine_new(m, tok, ep, &B.e, &err) != RC_OK)
        die("engine", &err);
    zipf_init(&B);
    pthread_mutex_init(&B.mu, NULL);
    for (int i = 0; i < MAX_CONC; i++)
        B.slots[i].B = &B;
    uv_loop_init(&B.loop);
    uv_async_init(&B.loop, &B.wake, on_wake);
    B.wake.data = &B;
    uv_timer_init(&B.loop, &B.tick);
    B.tick.data = &B;
    printf("# %d adapters of %.2f MB resident each, Zipf s=%.1f, %d in flight, %d requests "
           "after %d warm-up, %d prompt + %d generated tokens each\n",
           N_ADAPTERS, (double)one / 1e6, ZIPF_S, B.conc, n_req, n_warm, PROMPT, MAX_TOKENS);

    result_t a = run_config(&B, dir, m, 64 * one, false, n_warm, n_req);
    result_t b = run_config(&B, dir, m, (uint64_t)N_ADAPTERS * one, true, n_warm, n_req);
    bench_line("zipf_cache64_tok_s", a.tok_s, "tok/s");
    bench_line("zipf_all_resident_tok_s", b.tok_s, "tok/s");
    bench_line("zipf_cache64_over_resident", a.tok_s / b.tok_s, "x");
    bench_line("zipf_cache64_hit_rate", a.hit_rate, "%");
    printf("BENCH zipf_cache64_loads %llu count\n", (unsigned long long)a.n_loads);
    printf("# target: Zipf throughput >= 0.7 of all-resident (%.3f): %s\n", a.tok_s / b.tok_s,
           a.tok_s / b.tok_s >= 0.7 ? "met" : "MISSED");

    uv_close((uv_handle_t *)&B.wake, NULL);
    uv_close((uv_handle_t *)&B.tick, NULL);
    uv_run(&B.loop, UV_RUN_DEFAULT);
    uv_loop_close(&B.loop);
    core_engine_free(B.e);
    pthread_mutex_destroy(&B.mu);
    core_tok_free(tok);
    core_model_free(m);
    return 0;
}
