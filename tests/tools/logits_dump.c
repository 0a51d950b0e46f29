/* logits_dump.c - run adapterd's forward pass on token sequences and dump every logit.
 *
 * Test helper for tests/ref/test_logits.py and tests/ref/test_batch_mixed.py, which compare
 * the output to an independent numpy reference (tests/ref/ref_llama.py).
 *
 *   logits_dump --model DIR [--lora DIR [--scale F]]... [--set SPEC | --linear SPEC]...
 *               [--router DIR]... [--route-top-k K] [--route-temperature T]
 *               [--routing-out FILE]
 *               [--steps] [--chunk N] [--block-tokens N] [--kv-budget BYTES]
 *               --out FILE SEQ[@K | @rK]...
 *
 * --lora may repeat; LoRAs are numbered 0, 1, ... in order. Each --set or --linear defines
 * the next adapter set K (0, 1, ... in flag order). SPEC is "i:w,j:w,..." (LoRA index :
 * weight, weights may be negative or zero):
 *   --set     core_aset_new over the terms (exact weighted sum, "cat" semantics);
 *   --linear  core_lora_mix_linear over the terms (PEFT "linear"), used as a set of one
 *             term with weight 1.
 * With no --set/--linear at all, set K is --lora K alone at its --scale (default 1).
 * SEQ is comma-separated token ids, optionally followed by @K to run that sequence with set
 * K; no suffix = base model. --router may repeat; routers (core_router_load_dir) are
 * numbered 0, 1, ... in order, and SEQ@rK runs that sequence routed by router K (the item's
 * .router, with --route-top-k / --route-temperature as the request overrides, default 0 =
 * the router's own; an X-LoRA item also gets its scaling-pass cache .kv_scaling from the
 * same pool). --routing-out FILE writes, per routed sequence in command-line order, its
 * route_sum (n_layers x n_experts float32) then route_n (n_layers int32), accumulated over
 * all its steps. By default every sequence runs whole in ONE batched
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
#include "core/router.h"
#include "tests/tools/set_spec.h"
#include "core/rc.h"

#define MAX_SETS 32
#define MAX_SEQS 64
#define MAX_ROUTERS 16

typedef struct {
    int32_t *tokens;
    int n_tokens;
    int set_index;  /* -1: base */
    int router_index; /* -1: not routed (then set_index applies) */
    int done;       /* tokens already run */
    float *logits;  /* n_tokens * n_vocab */
    core_kv_t *kv;
    core_kv_t *kv_scaling; /* X-LoRA items: the scaling pass's cache */
    float *route_sum;      /* routed items: n_layers * n_experts */
    int *route_n;          /* routed items: n_layers */
} seq_t;

typedef struct {
    const char *model_dir;
    const char *out_path;
    const char *lora_dirs[MAX_LORAS];
    float lora_scales[MAX_LORAS];
    int n_loras;
    set_spec_t specs[MAX_SETS];
    int n_specs;
    const char *router_dirs[MAX_ROUTERS];
    int n_routers;
    int route_top_k;
    float route_temperature;
    const char *routing_out;
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
                    "[--set I:W,... | --linear I:W,...]... [--router DIR]... "
                    "[--route-top-k K] [--route-temperature T] [--routing-out FILE] "
                    "[--steps] [--chunk N] [--block-tokens N] [--kv-budget BYTES] "
                    "--out FILE SEQ[@SET | @rROUTER]...\n");
    return 2;
}

/* "1,2,3@1" -> tokens and set index, "1,2,3@r1" -> tokens and router index (both checked
 * against what is loaded later). 0 or -1. */
static int seq_parse(const char *text, seq_t *s)
{
    s->router_index = -1;
    const char *at = strstr(text, "@r");
    if (!at)
        return seq_spec_parse(text, MAX_SETS, &s->tokens, &s->n_tokens, &s->set_index);
    char *end = NULL;
    long k = strtol(at + 2, &end, 10);
    char *head = strndup(text, (size_t)(at - text));
    int ret = -1;
    if (end == at + 2 || *end || k < 0 || k >= MAX_ROUTERS || !head)
        fprintf(stderr, "bad sequence '%s' (want T,T,...@rROUTER)\n", text);
    else
        ret = seq_spec_parse(head, MAX_SETS, &s->tokens, &s->n_tokens, &s->set_index);
    if (ret == 0 && s->set_index >= 0) {
        fprintf(stderr, "bad sequence '%s' (a set and a router)\n", text);
        ret = -1;
    }
    s->router_index = (int)k;
    free(head);
    return ret;
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
    } else if (!strcmp(o, "--router") && a->n_routers < MAX_ROUTERS) {
        a->router_dirs[a->n_routers++] = v;
    } else if (!strcmp(o, "--route-top-k")) {
        a->route_top_k = (int)parse_long(v, 0);
        return a->route_top_k < 0 ? -1 : 0;
    } else if (!strcmp(o, "--route-temperature")) {
        char *end = NULL;
        a->route_temperature = strtof(v, &end);
        return end == v || *end || !(a->route_temperature >= 0) ? -1 : 0;
    } else if (!strcmp(o, "--routing-out")) {
        a->routing_out = v;
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

static bool seq_is_xlora(const seq_t *s, core_router_t **routers)
{
    return s->router_index >= 0 && routers[s->router_index]->kind == CORE_ROUTER_XLORA;
}

/* A budget every sequence fits in: its positions rounded up to whole blocks, plus slack
 * (X-LoRA sequences count twice: the scaling pass has its own cache). */
static size_t kv_budget_default(const core_config_t *c, const args_t *a, core_router_t **routers)
{
    size_t per_pos = 2 * (size_t)c->n_layers * (size_t)c->n_kv_heads * (size_t)c->head_dim *
                     sizeof(float);
    size_t blocks = 4;
    for (int i = 0; i < a->n_seqs; i++)
        blocks += ((size_t)(a->seqs[i].n_tokens + a->block_tokens - 1) / (size_t)a->block_tokens +
                   1) * (seq_is_xlora(&a->seqs[i], routers) ? 2 : 1);
    return 2 * blocks * (size_t)a->block_tokens * per_pos;
}

/* Item for sequence s running its next n tokens. */
static core_fwd_item_t item_of(const args_t *a, seq_t *s, int n, core_aset_t **sets,
                               core_router_t **routers, size_t n_vocab)
{
    core_fwd_item_t it = {.tokens = s->tokens + s->done, .n_tokens = n, .kv = s->kv,
                          .aset = s->set_index >= 0 ? sets[s->set_index] : NULL,
                          .logits = s->logits + (size_t)s->done * n_vocab,
                          .all_logits = true};
    if (s->router_index >= 0) {
        it.router = routers[s->router_index];
        it.route_top_k = a->route_top_k;
        it.route_temperature = a->route_temperature;
        it.kv_scaling = s->kv_scaling;
        it.route_sum = s->route_sum;
        it.route_n = s->route_n;
    }
    return it;
}

/* One batched call over every sequence with tokens left before its last `tail` ones, each
 * advancing by at most a->chunk tokens (0 = all). *more is set when some remain after it. */
static rc_t run_call(const core_model_t *m, core_fwd_t *f, args_t *a, core_aset_t **sets,
                     core_router_t **routers, int tail, bool *more, core_err_t *err)
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
        items[n++] = item_of(a, s, take, sets, routers, n_vocab);
    }
    if (n == 0)
        return RC_OK;
    rc_t rc = core_forward(m, f, items, n, err);
    for (int i = 0; rc == RC_OK && i < n; i++)
        who[i]->done += items[i].n_tokens;
    return rc;
}

/* The prefill (whole or chunked), then with --steps two one-token decode calls. */
static rc_t run_all(const core_model_t *m, args_t *a, core_aset_t **sets,
                    core_router_t **routers, core_err_t *err)
{
    int total = 0, max_rank = 0;
    for (int i = 0; i < a->n_seqs; i++) {
        const seq_t *s = &a->seqs[i];
        total += s->n_tokens;
        if (s->set_index >= 0 && sets[s->set_index]->rank_sum > max_rank)
            max_rank = sets[s->set_index]->rank_sum;
        if (s->router_index >= 0) {
            const core_router_t *r = routers[s->router_index];
            int sum = 0;
            for (int e = 0; e < r->n_experts; e++)
                sum += r->experts[e]->rank;
            max_rank = sum > max_rank ? sum : max_rank;
        }
    }
    core_fwd_t *f = core_fwd_new(m);
    if (!f)
        return core_err(err, RC_NOMEM, "core_fwd_new failed");
    rc_t rc = core_fwd_reserve(f, total, max_rank, a->n_seqs);
    bool more = true;
    while (rc == RC_OK && more)
        rc = run_call(m, f, a, sets, routers, a->steps ? 2 : 0, &more, err);
    for (int tail = 1; a->steps && rc == RC_OK && tail >= 0; tail--) {
        int saved = a->chunk;
        a->chunk = 1;
        rc = run_call(m, f, a, sets, routers, tail, &more, err);
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

/* --routing-out: route_sum then route_n of every routed sequence, in order. */
static int write_routing(const char *path, const args_t *a, core_router_t **routers,
                         int n_layers)
{
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        return -1;
    }
    int ret = 0;
    for (int i = 0; i < a->n_seqs && ret == 0; i++) {
        const seq_t *s = &a->seqs[i];
        if (s->router_index < 0)
            continue;
        size_t n = (size_t)n_layers * (size_t)routers[s->router_index]->n_experts;
        if (fwrite(s->route_sum, sizeof(float), n, fp) != n ||
            fwrite(s->route_n, sizeof(int), (size_t)n_layers, fp) != (size_t)n_layers)
            ret = -1;
    }
    if (fclose(fp) != 0)
        ret = -1;
    if (ret)
        fprintf(stderr, "%s: write failed\n", path);
    return ret;
}

/* Loads the routers; checks every SEQ@rK names one. 0 or -1. */
static int routers_load(const core_model_t *m, args_t *a, core_router_t **routers)
{
    core_err_t err = {{0}};
    for (int i = 0; i < a->n_routers; i++) {
        rc_t rc = core_router_load_dir(a->router_dirs[i], &m->cfg, NULL, &routers[i], &err);
        if (rc != RC_OK) {
            fprintf(stderr, "router %s: %s: %s\n", a->router_dirs[i], rc_str(rc), err.msg);
            return -1;
        }
    }
    for (int i = 0; i < a->n_seqs; i++)
        if (a->seqs[i].router_index >= a->n_routers) {
            fprintf(stderr, "sequence %d uses router %d but %d routers are loaded\n", i,
                    a->seqs[i].router_index, a->n_routers);
            return -1;
        }
    return 0;
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

/* Routed sequences: the X-LoRA scaling cache and the routing sums. 0 or -1. */
static int seq_route_init(const core_model_t *m, seq_t *s, core_router_t **routers,
                          core_kv_pool_t *pool)
{
    if (s->router_index < 0)
        return 0;
    const core_router_t *r = routers[s->router_index];
    s->route_sum = calloc((size_t)m->cfg.n_layers * (size_t)r->n_experts, sizeof(float));
    s->route_n = calloc((size_t)m->cfg.n_layers, sizeof(int));
    if (r->kind == CORE_ROUTER_XLORA)
        s->kv_scaling = core_kv_new(pool);
    if (!s->route_sum || !s->route_n || (r->kind == CORE_ROUTER_XLORA && !s->kv_scaling)) {
        fprintf(stderr, "out of memory\n");
        return -1;
    }
    return 0;
}

/* Per-sequence logits buffers and caches drawing from *pool. 0 or -1. */
static int seqs_init(const core_model_t *m, args_t *a, core_router_t **routers,
                     core_kv_pool_t **pool)
{
    core_err_t err = {{0}};
    size_t budget = a->kv_budget ? a->kv_budget : kv_budget_default(&m->cfg, a, routers);
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
        if (seq_route_init(m, s, routers, *pool))
            return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static args_t a;
    core_lora_t *loras[MAX_LORAS] = {0};
    core_aset_t *sets[MAX_SETS] = {0};
    core_router_t *routers[MAX_ROUTERS] = {0};
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
    if (adapters_load(m, &a, loras, sets) || routers_load(m, &a, routers) ||
        seqs_init(m, &a, routers, &pool))
        goto out;
    rc = run_all(m, &a, sets, routers, &err);
    if (rc != RC_OK) {
        fprintf(stderr, "forward: %s: %s\n", rc_str(rc), err.msg);
        goto out;
    }
    ret = write_out(a.out_path, &a, (size_t)m->cfg.n_vocab) ? 1 : 0;
    if (ret == 0 && a.routing_out)
        ret = write_routing(a.routing_out, &a, routers, m->cfg.n_layers) ? 1 : 0;
out:
    for (int i = 0; i < a.n_seqs; i++) {
        free(a.seqs[i].tokens);
        free(a.seqs[i].logits);
        free(a.seqs[i].route_sum);
        free(a.seqs[i].route_n);
        if (a.seqs[i].kv)
            core_kv_free(a.seqs[i].kv);
        if (a.seqs[i].kv_scaling)
            core_kv_free(a.seqs[i].kv_scaling);
    }
    if (pool)
        core_kv_pool_free(pool);
    for (int k = 0; k < MAX_SETS; k++)
        if (sets[k])
            core_aset_release(sets[k]);
    for (int i = 0; i < a.n_routers; i++)
        if (routers[i])
            core_router_release(routers[i]);
    for (int i = 0; i < a.n_loras; i++)
        if (loras[i])
            core_lora_release(loras[i]);
    if (m)
        core_model_free(m);
    return ret;
}
