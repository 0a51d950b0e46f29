/* bench_batch.c - heterogeneous batched decode against this machine's memory bandwidth.
 *
 * usage: bench_batch BENCH_DIR [N_STEPS] [N_REPEATS] [CONFIGS]
 * BENCH_DIR holds model/ and adapters/a00..a31 (tools/make_bench_model.py). Drives
 * core_forward directly. Measures:
 *   - memory-read bandwidth the way decode reads weights: every compute thread (the same
 *     pool the GEMM uses) streams its share of a 1 GiB buffer, far larger than the LLC;
 *   - the decode limit: bytes of weights one step reads / that bandwidth;
 *   - decode tokens/s for (s) one sequence on the base, (a) 16 sequences on the base,
 *     (b) 16 sequences each on its own adapter, (c) those 16 adapter requests one at a
 *     time, (d) 16 sequences each on its own 4-adapter composition, (d1) 16 sequences on
 *     one shared 4-adapter composition;
 *   - peak and steady RSS next to the weight bytes (the base is resident once).
 * Every sequence first prefills a 64-token prompt (not timed), then runs N_STEPS decode
 * steps (default 32), each timed; a configuration's rate is sequences / median step time
 * over N_REPEATS runs (default 3). CONFIGS picks some of "sabcd" (default all; for profiling
 * one configuration). Prints "BENCH <name> <value> <unit>" lines. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

#include "core/gemm.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/pool.h"

#define N_SEQ 16
#define N_ADAPTERS 32
#define PROMPT 64
#define MAX_STEPS 256

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void die(const char *what, const core_err_t *err)
{
    fprintf(stderr, "bench_batch: %s: %s\n", what, err ? err->msg : "");
    exit(1);
}

/* ---- memory bandwidth ------------------------------------------------------------ */

typedef float v8f __attribute__((vector_size(32)));

typedef struct {
    const v8f *buf;
} stream_t;

/* Sum a slice with four independent accumulators: the loads, not the adds, set the pace. */
static void on_stream(void *arg, size_t b, size_t e)
{
    stream_t *s = arg;
    v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    size_t i = b;
    for (; i + 4 <= e; i += 4) {
        a0 += s->buf[i];
        a1 += s->buf[i + 1];
        a2 += s->buf[i + 2];
        a3 += s->buf[i + 3];
    }
    for (; i < e; i++)
        a0 += s->buf[i];
    v8f t = (a0 + a1) + (a2 + a3);
    float sum = 0;
    for (int k = 0; k < 8; k++)
        sum += t[k];
    if (sum == 12345.0f) /* never true (every byte is 1); keeps the loads live */
        fputc('\n', stderr);
}

/* GB/s of a streaming read over 1 GiB by every pool thread, median of 7 passes. */
static double measure_bandwidth(void)
{
    size_t bytes = (size_t)1 << 30, n = bytes / sizeof(v8f);
    v8f *buf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED)
        die("mmap 1 GiB", NULL);
    memset(buf, 1, bytes); /* fault every page in before timing */
    stream_t s = {.buf = buf};
    double t[7];
    for (int r = 0; r < 7; r++) {
        double t0 = now_s();
        core_pool_for(n, 4096, on_stream, &s);
        t[r] = now_s() - t0;
    }
    munmap(buf, bytes);
    return (double)bytes / median(t, 7) / 1e9;
}

/* ---- model, adapters --------------------------------------------------------------- */

/* Bytes of weights one decode step reads: every linear layer and the lm_head (the
 * embedding contributes one row per token, norms are negligible). */
static double step_weight_bytes(const core_model_t *m)
{
    const core_config_t *c = &m->cfg;
    double b = (double)c->n_vocab * c->dim;
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < CORE_MOD__COUNT; k++)
            b += (double)m->layers[l].lin[k].n_out * m->layers[l].lin[k].n_in;
    return b * sizeof(float);
}

static double model_bytes(const core_model_t *m)
{
    const core_config_t *c = &m->cfg;
    double b = step_weight_bytes(m) / sizeof(float);
    b += c->tie_embeddings ? 0 : (double)c->n_vocab * c->dim;
    return b * sizeof(float);
}

static long rss_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, n))
            v = atol(line + n + 1);
    if (f)
        fclose(f);
    return v;
}

/* ---- decode runs ------------------------------------------------------------------- */

typedef struct {
    const core_model_t *m;
    core_kv_pool_t *pool;
    core_fwd_t *f;
    int32_t *toks; /* N_SEQ * (PROMPT + MAX_STEPS) seeded ids */
    float *logits; /* N_SEQ * n_vocab */
    int n_steps, n_repeats;
} bench_t;

/* Prefill n_seq sequences (sets[i] each, NULL = base) in one step, then time n_steps
 * decode steps of all of them; appends each step's seconds to t (*nt). */
static void run_once(bench_t *B, const core_aset_t *const *sets, int n_seq, double *t, int *nt)
{
    core_kv_t *kv[N_SEQ];
    core_fwd_item_t items[N_SEQ];
    core_err_t err = {{0}};
    int stride = PROMPT + MAX_STEPS;
    for (int s = 0; s < n_seq; s++) {
        if (!(kv[s] = core_kv_new(B->pool)))
            die("kv_new", NULL);
        items[s] = (core_fwd_item_t){.tokens = B->toks + s * stride, .n_tokens = PROMPT,
                                     .kv = kv[s], .aset = sets[s],
                                     .logits = B->logits + (size_t)s * B->m->cfg.n_vocab};
    }
    if (core_forward(B->m, B->f, items, n_seq, &err) != RC_OK)
        die("prefill", &err);
    for (int step = 0; step < B->n_steps; step++) {
        for (int s = 0; s < n_seq; s++) {
            items[s].tokens = B->toks + s * stride + PROMPT + step;
            items[s].n_tokens = 1;
        }
        double t0 = now_s();
        if (core_forward(B->m, B->f, items, n_seq, &err) != RC_OK)
            die("decode", &err);
        t[(*nt)++] = now_s() - t0;
    }
    for (int s = 0; s < n_seq; s++)
        core_kv_free(kv[s]);
}

/* Decode tokens/s of n_seq concurrent sequences: n_seq / median step time. */
static double run_batch(bench_t *B, const core_aset_t *const *sets, int n_seq)
{
    static double t[16 * MAX_STEPS];
    int nt = 0;
    for (int r = 0; r < B->n_repeats; r++)
        run_once(B, sets, n_seq, t, &nt);
    return n_seq / median(t, (size_t)nt);
}

/* (c): the n_seq requests one after another, each alone: 1 / median step time. */
static double run_serial(bench_t *B, const core_aset_t *const *sets, int n_seq)
{
    static double t[N_SEQ * MAX_STEPS];
    int nt = 0;
    for (int s = 0; s < n_seq; s++)
        run_once(B, &sets[s], 1, t, &nt);
    return 1.0 / median(t, (size_t)nt);
}

static core_aset_t *aset_of(core_lora_t **loras, const int *idx, const float *w, int n)
{
    core_lora_term_t terms[CORE_ASET_MAX];
    core_aset_t *s = NULL;
    core_err_t err = {{0}};
    for (int i = 0; i < n; i++)
        terms[i] = (core_lora_term_t){loras[idx[i]], w[i]};
    if (core_aset_new(terms, n, &s, &err) != RC_OK)
        die("aset_new", &err);
    return s;
}

static void bench_line(const char *name, double v, const char *unit)
{
    printf("BENCH %s %.3f %s\n", name, v, unit);
    fflush(stdout);
}

static void target(const char *name, double v, double want)
{
    bench_line(name, v, "ratio");
    printf("# %s = %.3f, target >= %.2f: %s\n", name, v, want, v >= want ? "met" : "MISSED");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_batch BENCH_DIR [N_STEPS] [N_REPEATS] [CONFIGS]\n");
        return 2;
    }
    bench_t B = {.n_steps = argc > 2 ? atoi(argv[2]) : 32, .n_repeats = argc > 3 ? atoi(argv[3]) : 3};
    if (B.n_steps < 1 || B.n_steps > MAX_STEPS || B.n_repeats < 1 || B.n_repeats > 16) {
        fprintf(stderr, "bench_batch: N_STEPS 1..%d, N_REPEATS 1..16\n", MAX_STEPS);
        return 2;
    }
    core_gemm_init(0);
    printf("# %d compute threads, kernel %s\n", core_pool_n_threads(),
           core_gemm_kernel_available() ? "AVX2/FMA" : "unavailable (BLAS only)");

    double bw = measure_bandwidth();
    bench_line("mem_read_bw", bw, "GB/s");

    char path[4096];
    core_err_t err = {{0}};
    core_model_t *m = NULL;
    snprintf(path, sizeof path, "%s/model", argv[1]);
    if (core_model_load(path, &m, &err) != RC_OK)
        die(path, &err);
    core_lora_t *loras[N_ADAPTERS];
    double lora_bytes = 0;
    for (int i = 0; i < N_ADAPTERS; i++) {
        snprintf(path, sizeof path, "%s/adapters/a%02d", argv[1], i);
        if (core_lora_load(path, &m->cfg, &loras[i], &err) != RC_OK)
            die(path, &err);
        lora_bytes += (double)loras[i]->n_bytes;
    }
    double wb = step_weight_bytes(m), limit = bw * 1e9 / wb;
    bench_line("decode_step_weight_bytes", wb / 1e6, "MB");
    bench_line("decode_limit", limit, "tok/s");

    B.m = m;
    B.f = core_fwd_new(m);
    size_t kv_budget = (size_t)256 << 20;
    if (!B.f || core_fwd_reserve(B.f, N_SEQ * PROMPT, 4 * 16, N_SEQ) != RC_OK ||
        core_kv_pool_new(&m->cfg, kv_budget, 16, &B.pool, &err) != RC_OK)
        die("fwd/kv pool", &err);
    B.toks = malloc(sizeof(int32_t) * N_SEQ * (PROMPT + MAX_STEPS));
    B.logits = malloc(sizeof(float) * N_SEQ * (size_t)m->cfg.n_vocab);
    if (!B.toks || !B.logits)
        die("out of memory", NULL);
    uint32_t rng = 12345;
    for (int i = 0; i < N_SEQ * (PROMPT + MAX_STEPS); i++) {
        rng = rng * 1664525u + 1013904223u;
        B.toks[i] = (int32_t)((rng >> 8) % (uint32_t)m->cfg.n_vocab);
    }

    /* adapter sets: one adapter per sequence; a 4-term composition per sequence (every
     * adapter used twice over the 16, a negative weight included); one shared composition */
    const core_aset_t *none[N_SEQ] = {0};
    core_aset_t *single[N_SEQ], *comp[N_SEQ], *shared;
    const float w1[1] = {1.0f}, w4[4] = {0.5f, -0.25f, 0.75f, 0.3f};
    for (int s = 0; s < N_SEQ; s++) {
        int one[1] = {s}, four[4] = {s, s + 16, (s + 5) % 16, (s + 5) % 16 + 16};
        single[s] = aset_of(loras, one, w1, 1);
        comp[s] = aset_of(loras, four, w4, 4);
    }
    int four0[4] = {0, 9, 18, 27};
    shared = aset_of(loras, four0, w4, 4);
    const core_aset_t *shared_all[N_SEQ];
    for (int s = 0; s < N_SEQ; s++)
        shared_all[s] = shared;

    const char *want = argc > 4 ? argv[4] : "sabcd";
    double s1 = 0, a = 0, b = 0, c = 0, d = 0;
    if (strchr(want, 's')) {
        s1 = run_batch(&B, none, 1);
        bench_line("s_decode_single_base", s1, "tok/s");
        target("s_over_limit", s1 / limit, 0.80);
    }
    if (strchr(want, 'a')) {
        a = run_batch(&B, none, N_SEQ);
        bench_line("a_decode_16_base", a, "tok/s");
        if (s1 > 0)
            target("a_over_s", a / s1, 8.0);
    }
    if (strchr(want, 'b')) {
        b = run_batch(&B, (const core_aset_t *const *)single, N_SEQ);
        bench_line("b_decode_16_distinct_adapters", b, "tok/s");
        if (a > 0)
            target("b_over_a", b / a, 0.90);
    }
    if (strchr(want, 'c')) {
        c = run_serial(&B, (const core_aset_t *const *)single, N_SEQ);
        bench_line("c_decode_16_adapters_one_at_a_time", c, "tok/s");
        if (b > 0)
            target("b_over_c", b / c, 6.0);
    }
    if (strchr(want, 'd')) {
        d = run_batch(&B, (const core_aset_t *const *)comp, N_SEQ);
        bench_line("d_decode_16_distinct_compositions_of_4", d, "tok/s");
        if (a > 0)
            target("d_over_a", d / a, 0.80);
        double d1 = run_batch(&B, shared_all, N_SEQ);
        bench_line("d1_decode_16_one_shared_composition_of_4", d1, "tok/s");
        if (a > 0)
            bench_line("d1_over_a", d1 / a, "ratio");
    }

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    bench_line("base_weights", model_bytes(m) / 1e6, "MB");
    bench_line("adapter_weights_32", lora_bytes / 1e6, "MB");
    bench_line("rss_steady", rss_kb("VmRSS:") / 1e3, "MB");
    bench_line("rss_peak", ru.ru_maxrss / 1e3, "MB");

    for (int s = 0; s < N_SEQ; s++) {
        core_aset_release(single[s]);
        core_aset_release(comp[s]);
    }
    core_aset_release(shared);
    for (int i = 0; i < N_ADAPTERS; i++)
        core_lora_release(loras[i]);
    core_kv_pool_free(B.pool);
    core_fwd_free(B.f);
    free(B.toks);
    free(B.logits);
    core_model_free(m);
    return 0;
}
