/* logits_dump.c - run adapterd's forward pass on token sequences and dump every logit.
 *
 * Test helper for tests/ref/test_logits.py and tests/ref/test_batch_mixed.py, which compare
 * the output to an independent numpy reference (tests/ref/ref_llama.py).
 *
 *   logits_dump --model DIR [--lora DIR [--scale F]]... [--set SPEC | --linear SPEC]...
 *               [--steps] [--chunk N] [--block-tokens N] [--kv-budget BYTES]
 *               --out FILE SEQ[@K]...
 *
 * --lora may repeat; LoRAs are numbered 0, 1, ... in order. Each --set or --linear defines
 * the next adapter set K (0, 1, ... in flag order). SPEC is "i:w,j:w,..." (LoRA index :
 * weight, weights may be negative or zero):
 *   --set     core_aset_new over the terms (exact weighted sum, "cat" semantics);
 *   --linear  core_lora_mix_linear over the terms (PEFT "linear"), used as a set of one
 *             term with weight 1.
 * With no --set/--linear at all, set K is --lora K alone at its --scale (default 1).
 * SEQ is comma-separated token ids, optionally followed by @K to run that sequence with set
 * K; no suffix = base model. By default every sequence runs whole in ONE batched
 * core_forward call (a single mixed step) with all_logits set. Options:
 *   --steps     each sequence (>= 3 tokens) runs as a prefill of all but its last two
 *               tokens, then two one-token decode steps (every item in each call), so the
 *               KV-cache path is exercised;
 *   --chunk N   the prefill is split into calls in which each unfinished sequence advances
 *               by at most N tokens (chunked prefill over the paged cache);
 *   --block-tokens N   KV block size (default 16);
 *   --kv-budget BYTES  KV pool budget (default: generous, every sequence fits).
 * Output: raw little-endian float32, items in command-line order, n_tokens x n_vocab each.
 * Exit 0 on success; errors go to stderr with rc name and core_err message. Single thread. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/lora.h"
#include "core/model.h"
#include "tests/tools/set_spec.h"
#include "core/rc.h"

#define MAX_SETS 32
#define MAX_SEQS 64

typedef struct {
    int32_t *tokens;
    int n_tokens;
    int set_index;  /* -1: base */
    int done;       /* tokens already run */
    float *logits;  /* n_tokens * n_vocab */
    core_kv_t *kv;
} seq_t;

typedef struct {
    const char *model_dir;
    const char *out_path;
    const char *lora_dirs[MAX_LORAS];
    float lora_scales[MAX_LORAS];
    int n_loras;
    set_spec_t specs[MAX_SETS];
    int n_specs;
    bool steps;
    int chunk;           /* 0: whole prefill in one call */
    int block_tokens;
    size_t kv_budget;    /* 0: computed */
    seq_t seqs[MAX_SEQS];
    int n_seqs;
} args_t;

static int usage(void)
{
    fprintf(stderr, "usage: logits_dump --model DIR [--lora DIR [--scale F]]... "
                    "[--set I:W,... | --linear I:W,...]... [--steps] [--chunk N] "
                    "[--block-tokens N] [--kv-budget BYTES] --out FILE SEQ[@SET]...\n");
    return 2;
}

/* "1,2,3@1" -> tokens and set index (checked against the sets later). 0 or -1. */
static int seq_parse(const char *text, seq_t *s)
{
    return seq_spec_parse(text, MAX_SETS, &s->tokens, &s->n_tokens, &s->set_index);
}

static long parse_long(const char *s, long lo)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    return (end == s || *end || v < lo) ? -1 : v;
}

static int args_option(int argc, char **argv, int *i, args_t *a)
{
    const char *o = argv[*i];
    if (*i + 1 >= argc)
        return -1;
    const char *v = argv[++*i];
    if (!strcmp(o, "--model")) {
        a->model_dir = v;
    } else if (!strcmp(o, "--out")) {
        a->out_path = v;
    } else if (!strcmp(o, "--lora") && a->n_loras < MAX_LORAS) {
        a->lora_scales[a->n_loras] = 1.0f;
        a->lora_dirs[a->n_loras++] = v;
    } else if (!strcmp(o, "--scale") && a->n_loras > 0) {
        a->lora_scales[a->n_loras - 1] = strtof(v, NULL);
    } else if ((!strcmp(o, "--set") || !strcmp(o, "--linear")) && a->n_specs < MAX_SETS) {
        return spec_parse(v, o[2] == 'l', &a->specs[a->n_specs++]);
    } else if (!strcmp(o, "--chunk")) {
        a->chunk = (int)parse_long(v, 1);
        return a->chunk < 1 ? -1 : 0;
    } else if (!strcmp(o, "--block-tokens")) {
        a->block_tokens = (int)parse_long(v, 1);
        return a->block_tokens < 1 ? -1 : 0;
    } else if (!strcmp(o, "--kv-budget")) {
        long b = parse_long(v, 1);
        a->kv_budget = b < 1 ? 0 : (size_t)b;
        return b < 1 ? -1 : 0;
    } else {
        return -1;
    }
    return 0;
}

static int args_parse(int argc, char **argv, args_t *a)
{
    a->block_tokens = 16;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--steps")) {
            a->steps = true;
        } else if (o[0] == '-' && o[1] == '-') {
            if (args_option(argc, argv, &i, a)) {
                fprintf(stderr, "bad option or value at '%s'\n", o);
                return -1;
            }
        } else if (a->n_seqs < MAX_SEQS) {
            if (seq_parse(o, &a->seqs[a->n_seqs++]))
                return -1;
        } else {
            fprintf(stderr, "unexpected argument '%s'\n", o);
            return -1;
        }
    }
    if (!a->model_dir || !a->out_path || a->n_seqs == 0)
        return -1;
    return 0;
}

/* Without --set/--linear, set k is --lora k at its --scale (the original interface). */
static void specs_default(args_t *a)
{
    if (a->n_specs > 0)
        return;
    for (int i = 0; i < a->n_loras; i++)
        a->specs[a->n_specs++] = (set_spec_t){.n = 1, .lora = {i}, .weight = {a->lora_scales[i]}};
}

/* Builds set k of spec sp. OUT: *out (one reference). */
static rc_t set_build(const set_spec_t *sp, core_lora_t **loras, int n_loras, core_aset_t **out,
                      core_err_t *err)
{
    core_lora_term_t terms[CORE_ASET_MAX];
    for (int t = 0; t < sp->n; t++) {
        if (sp->lora[t] >= n_loras)
            return core_err(err, RC_INVALID, "set term names LoRA %d but %d --lora given",
                            sp->lora[t], n_loras);
        terms[t] = (core_lora_term_t){.lora = loras[sp->lora[t]], .weight = sp->weight[t]};
    }
    if (!sp->linear)
        return core_aset_new(terms, sp->n, out, err);
    core_lora_t *mixed = NULL;
    rc_t rc = core_lora_mix_linear(terms, sp->n, &mixed, err);
    if (rc != RC_OK)
        return rc;
    core_lora_term_t one = {.lora = mixed, .weight = 1.0f};
    rc = core_aset_new(&one, 1, out, err);
    core_lora_release(mixed); /* the set holds its own reference */
    return rc;
}

/* A budget every sequence fits in: its positions rounded up to whole blocks, plus slack. */
static size_t kv_budget_default(const core_config_t *c, const args_t *a)
{
    size_t per_pos = 2 * (size_t)c->n_layers * (size_t)c->n_kv_heads * (size_t)c->head_dim *
                     sizeof(float);
    size_t blocks = 4;
    for (int i = 0; i < a->n_seqs; i++)
        blocks += (size_t)(a->seqs[i].n_tokens + a->block_tokens - 1) / (size_t)a->block_tokens + 1;
    return 2 * blocks * (size_t)a->block_tokens * per_pos;
}

/* Item for sequence s running its next n tokens. */
static core_fwd_item_t item_of(seq_t *s, int n, core_aset_t **sets, size_t n_vocab)
{
    return (core_fwd_item_t){.tokens = s->tokens + s->done, .n_tokens = n, .kv = s->kv,
                             .aset = s->set_index >= 0 ? sets[s->set_index] : NULL,
                             .logits = s->logits + (size_t)s->done * n_vocab,
                             .all_logits = true};
}

/* One batched call over every sequence with tokens left before its last `tail` ones, each
 * advancing by at most a->chunk tokens (0 = all). *more is set when some remain after it. */
static rc_t run_call(const core_model_t *m, core_fwd_t *f, args_t *a, core_aset_t **sets,
                     int tail, bool *more, core_err_t *err)
{
    core_fwd_item_t items[MAX_SEQS];
    seq_t *who[MAX_SEQS];
    size_t n_vocab = (size_t)m->cfg.n_vocab;
    int n = 0;
    *more = false;
    for (int i = 0; i < a->n_seqs; i++) {
        seq_t *s = &a->seqs[i];
        int left = s->n_tokens - tail - s->done;
        if (left <= 0)
            continue;
        int take = a->chunk > 0 && left > a->chunk ? a->chunk : left;
        *more |= take < left;
        who[n] = s;
        items[n++] = item_of(s, take, sets, n_vocab);
    }
    if (n == 0)
        return RC_OK;
    rc_t rc = core_forward(m, f, items, n, err);
    for (int i = 0; rc == RC_OK && i < n; i++)
        who[i]->done += items[i].n_tokens;
    return rc;
}

/* The prefill (whole or chunked), then with --steps two one-token decode calls. */
static rc_t run_all(const core_model_t *m, args_t *a, core_aset_t **sets, core_err_t *err)
{
    int total = 0, max_rank = 0;
    for (int i = 0; i < a->n_seqs; i++) {
        const seq_t *s = &a->seqs[i];
        total += s->n_tokens;
        if (s->set_index >= 0 && sets[s->set_index]->rank_sum > max_rank)
            max_rank = sets[s->set_index]->rank_sum;
    }
    core_fwd_t *f = core_fwd_new(m);
    if (!f)
        return core_err(err, RC_NOMEM, "core_fwd_new failed");
    rc_t rc = core_fwd_reserve(f, total, max_rank, a->n_seqs);
    bool more = true;
    while (rc == RC_OK && more)
        rc = run_call(m, f, a, sets, a->steps ? 2 : 0, &more, err);
    for (int tail = 1; a->steps && rc == RC_OK && tail >= 0; tail--) {
        int saved = a->chunk;
        a->chunk = 1;
        rc = run_call(m, f, a, sets, tail, &more, err);
        a->chunk = saved;
    }
    core_fwd_free(f);
    return rc;
}

static int write_out(const char *path, const args_t *a, size_t n_vocab)
{
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        return -1;
    }
    int ret = 0;
    for (int i = 0; i < a->n_seqs && ret == 0; i++) {
        size_t n = (size_t)a->seqs[i].n_tokens * n_vocab;
        if (fwrite(a->seqs[i].logits, sizeof(float), n, fp) != n)
            ret = -1;
    }
    if (fclose(fp) != 0)
        ret = -1;
    if (ret)
        fprintf(stderr, "%s: write failed\n", path);
    return ret;
}

/* Loads the LoRAs and builds the sets; checks every SEQ@K names a set. 0 or -1. */
static int adapters_load(const core_model_t *m, args_t *a, core_lora_t **loras,
                         core_aset_t **sets)
{
    core_err_t err = {{0}};
    for (int i = 0; i < a->n_loras; i++) {
        rc_t rc = core_lora_load(a->lora_dirs[i], &m->cfg, &loras[i], &err);
        if (rc != RC_OK) {
            fprintf(stderr, "lora %s: %s: %s\n", a->lora_dirs[i], rc_str(rc), err.msg);
            return -1;
        }
    }
    specs_default(a);
    for (int k = 0; k < a->n_specs; k++) {
        rc_t rc = set_build(&a->specs[k], loras, a->n_loras, &sets[k], &err);
        if (rc != RC_OK) {
            fprintf(stderr, "set %d: %s: %s\n", k, rc_str(rc), err.msg);
            return -1;
        }
    }
    for (int i = 0; i < a->n_seqs; i++)
        if (a->seqs[i].set_index >= a->n_specs) {
            fprintf(stderr, "sequence %d uses set %d but %d sets are defined\n", i,
                    a->seqs[i].set_index, a->n_specs);
            return -1;
        }
    return 0;
}

/* Per-sequence logits buffers and caches drawing from *pool. 0 or -1. */
static int seqs_init(const core_model_t *m, args_t *a, core_kv_pool_t **pool)
{
    core_err_t err = {{0}};
    size_t budget = a->kv_budget ? a->kv_budget : kv_budget_default(&m->cfg, a);
    rc_t rc = core_kv_pool_new(&m->cfg, budget, a->block_tokens, pool, &err);
    if (rc != RC_OK) {
        fprintf(stderr, "kv pool: %s: %s\n", rc_str(rc), err.msg);
        return -1;
    }
    for (int i = 0; i < a->n_seqs; i++) {
        seq_t *s = &a->seqs[i];
        if (a->steps && s->n_tokens < 3) {
            fprintf(stderr, "--steps needs sequences of at least 3 tokens\n");
            return -1;
        }
        s->logits = calloc((size_t)s->n_tokens * (size_t)m->cfg.n_vocab, sizeof(float));
        s->kv = core_kv_new(*pool);
        if (!s->logits || !s->kv) {
            fprintf(stderr, "out of memory\n");
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    static args_t a;
    core_lora_t *loras[MAX_LORAS] = {0};
    core_aset_t *sets[MAX_SETS] = {0};
    core_kv_pool_t *pool = NULL;
    core_model_t *m = NULL;
    core_err_t err = {{0}};
    int ret = 1;

    if (args_parse(argc, argv, &a)) {
        ret = usage();
        goto out;
    }
    rc_t rc = core_model_load(a.model_dir, &m, &err);
    if (rc != RC_OK) {
        fprintf(stderr, "model %s: %s: %s\n", a.model_dir, rc_str(rc), err.msg);
        goto out;
    }
    if (adapters_load(m, &a, loras, sets) || seqs_init(m, &a, &pool))
        goto out;
    rc = run_all(m, &a, sets, &err);
    if (rc != RC_OK) {
        fprintf(stderr, "forward: %s: %s\n", rc_str(rc), err.msg);
        goto out;
    }
    ret = write_out(a.out_path, &a, (size_t)m->cfg.n_vocab) ? 1 : 0;
out:
    for (int i = 0; i < a.n_seqs; i++) {
        free(a.seqs[i].tokens);
        free(a.seqs[i].logits);
        if (a.seqs[i].kv)
            core_kv_free(a.seqs[i].kv);
    }
    if (pool)
        core_kv_pool_free(pool);
    for (int k = 0; k < MAX_SETS; k++)
        if (sets[k])
            core_aset_release(sets[k]);
    for (int i = 0; i < a.n_loras; i++)
        if (loras[i])
            core_lora_release(loras[i]);
    if (m)
        core_model_free(m);
    return ret;
}
