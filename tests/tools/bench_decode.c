/* bench_decode.c - decode throughput of core_forward on a model folder.
 *
 * usage: bench_decode MODEL_DIR [LORA_DIR] [N_STEPS]
 * Prints BENCH lines: single-stream decode tokens/s (base, and with the LoRA when given),
 * prefill tokens/s for a 128-token prompt, and aggregate decode tokens/s of 8 sequences
 * batched in one step. Seeded synthetic token ids; wall-clock time (CLOCK_MONOTONIC). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/gemm.h"
#include "core/lora.h"
#include "core/model.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Prefill n_prompt tokens into each of n_seq caches, then time n_steps batched decode
 * steps. Returns decode tokens/s summed over the sequences; *prefill_tps gets prefill rate. */
static double run(const core_model_t *m, const core_aset_t *aset, int n_seq, int n_prompt,
                  int n_steps, double *prefill_tps)
{
    core_fwd_t *f = core_fwd_new(m);
    core_kv_pool_t *pool = NULL;
    core_kv_t *kv[64];
    core_fwd_item_t items[64];
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)n_prompt * n_seq);
    float *logits = malloc(sizeof(float) * (size_t)m->cfg.n_vocab * n_seq);
    core_err_t err = {{0}};
    unsigned rng = 12345;
    size_t per_token = (size_t)m->cfg.n_layers * 2 * (size_t)m->cfg.n_kv_heads *
                       (size_t)m->cfg.head_dim * sizeof(float);
    if (!f || core_kv_pool_new(&m->cfg, per_token * (size_t)(n_prompt + n_steps + 32) * n_seq,
                               16, &pool, &err) != RC_OK) {
        fprintf(stderr, "kv pool: %s\n", err.msg);
        exit(1);
    }
    for (int i = 0; i < n_prompt * n_seq; i++) {
        rng = rng * 1103515245u + 12345u;
        toks[i] = (int32_t)((rng >> 8) % (unsigned)m->cfg.n_vocab);
    }
    for (int s = 0; s < n_seq; s++) {
        kv[s] = core_kv_new(pool);
        if (!kv[s]) {
            fprintf(stderr, "kv: out of memory\n");
            exit(1);
        }
        items[s] = (core_fwd_item_t){.tokens = toks + s * n_prompt, .n_tokens = n_prompt,
                                     .kv = kv[s], .aset = aset,
                                     .logits = logits + (size_t)s * m->cfg.n_vocab};
    }
    double t0 = now_s();
    if (core_forward(m, f, items, n_seq, &err) != RC_OK) {
        fprintf(stderr, "forward: %s\n", err.msg);
        exit(1);
    }
    double t1 = now_s();
    *prefill_tps = n_prompt * n_seq / (t1 - t0);
    for (int step = 0; step < n_steps; step++) {
        for (int s = 0; s < n_seq; s++) {
            items[s].tokens = toks + s * n_prompt + step % n_prompt;
            items[s].n_tokens = 1;
        }
        if (core_forward(m, f, items, n_seq, &err) != RC_OK) {
            fprintf(stderr, "forward: %s\n", err.msg);
            exit(1);
        }
    }
    double t2 = now_s();
    for (int s = 0; s < n_seq; s++)
        core_kv_free(kv[s]);
    core_kv_pool_free(pool);
    core_fwd_free(f);
    free(toks);
    free(logits);
    return (double)n_steps * n_seq / (t2 - t1);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_decode MODEL_DIR [LORA_DIR] [N_STEPS]\n");
        return 2;
    }
    int n_steps = argc > 3 ? atoi(argv[3]) : 128;
    core_err_t err = {{0}};
    core_model_t *m = NULL;
    core_lora_t *lora = NULL;
    core_aset_t *aset = NULL;
    core_gemm_init(0);
    if (core_model_load(argv[1], &m, &err) != RC_OK) {
        fprintf(stderr, "model: %s\n", err.msg);
        return 1;
    }
    if (argc > 2 && argv[2][0] && core_lora_load(argv[2], &m->cfg, &lora, &err) != RC_OK) {
        fprintf(stderr, "lora: %s\n", err.msg);
        return 1;
    }
    if (lora) {
        core_lora_term_t term = {lora, 1.0f};
        if (core_aset_new(&term, 1, &aset, &err) != RC_OK) {
            fprintf(stderr, "aset: %s\n", err.msg);
            return 1;
        }
    }
    double prefill = 0, ignored = 0;
    double base = run(m, NULL, 1, 128, n_steps, &prefill);
    printf("BENCH decode_single_base %.1f tok/s\n", base);
    printf("BENCH prefill_128_base %.1f tok/s\n", prefill);
    if (lora) {
        double with = run(m, aset, 1, 128, n_steps, &ignored);
        printf("BENCH decode_single_lora %.1f tok/s\n", with);
        printf("BENCH decode_lora_over_base %.3f ratio\n", with / base);
    }
    double batch8 = run(m, aset, 8, 32, n_steps / 2, &ignored);
    printf("BENCH decode_batch8_aggregate %.1f tok/s\n", batch8);
    printf("BENCH decode_batch8_over_single %.3f ratio\n", batch8 / base);
    if (aset)
        core_aset_release(aset);
    if (lora)
        core_lora_release(lora);
    core_model_free(m);
    return 0;
}
