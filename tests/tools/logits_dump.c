/* logits_dump.c - run adapterd's forward pass on token sequences and dump every logit.
 *
 * Test helper for tests/ref/test_logits.py, which compares the output to an independent
 * numpy reference (tests/ref/ref_llama.py).
 *
 *   logits_dump --model DIR [--lora DIR [--scale F]]... [--steps] --out FILE SEQ...
 *
 * SEQ is comma-separated token ids, optionally followed by @K to run that sequence with the
 * K-th --lora (0-based; no suffix = base model). --scale applies to the --lora just before
 * it (default 1). All sequences run in ONE batched core_forward call with all_logits set.
 * With --steps each sequence (>= 3 tokens) instead runs as a prefill of all but its last two
 * tokens, then two single-token decode steps (three batched calls, every item in each), so
 * the KV-cache path is exercised; an item's rows are still its n_tokens rows in order.
 * Output: raw little-endian float32, items in command-line order, n_tokens x n_vocab each.
 * Exit 0 on success; errors go to stderr with the core_err message. Single-threaded. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/lora.h"
#include "core/model.h"
#include "core/rc.h"

#define MAX_LORAS 16
#define MAX_SEQS 64

typedef struct {
    int32_t *tokens;
    int n_tokens;
    int lora_index; /* -1: base */
    float *logits;  /* n_tokens * n_vocab */
    core_kv_t *kv;
} seq_t;

typedef struct {
    const char *model_dir;
    const char *out_path;
    const char *lora_dirs[MAX_LORAS];
    float lora_scales[MAX_LORAS];
    int n_loras;
    bool steps;
    seq_t seqs[MAX_SEQS];
    int n_seqs;
} args_t;

static int usage(void)
{
    fprintf(stderr, "usage: logits_dump --model DIR [--lora DIR [--scale F]]... [--steps] "
                    "--out FILE SEQ[@LORA_INDEX]...\n");
    return 2;
}

/* "1,2,3@1" -> tokens and adapter index. Returns 0 or -1 with a message. */
static int seq_parse(const char *text, int n_loras, seq_t *s)
{
    size_t cap = strlen(text) / 2 + 1;
    s->tokens = calloc(cap, sizeof *s->tokens);
    s->lora_index = -1;
    if (!s->tokens)
        return -1;
    const char *p = text;
    while (*p && *p != '@') {
        char *end = NULL;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < INT32_MIN || v > INT32_MAX || (size_t)s->n_tokens >= cap) {
            fprintf(stderr, "bad token list '%s'\n", text);
            return -1;
        }
        s->tokens[s->n_tokens++] = (int32_t)v;
        p = end;
        if (*p == ',')
            p++;
    }
    if (*p == '@') {
        char *end = NULL;
        long k = strtol(p + 1, &end, 10);
        if (end == p + 1 || *end || k < 0 || k >= n_loras) {
            fprintf(stderr, "bad adapter index in '%s' (%d --lora given)\n", text, n_loras);
            return -1;
        }
        s->lora_index = (int)k;
    }
    if (s->n_tokens == 0) {
        fprintf(stderr, "empty sequence '%s'\n", text);
        return -1;
    }
    return 0;
}

static int args_parse(int argc, char **argv, args_t *a)
{
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        bool has_val = i + 1 < argc;
        if (!strcmp(o, "--model") && has_val) {
            a->model_dir = argv[++i];
        } else if (!strcmp(o, "--out") && has_val) {
            a->out_path = argv[++i];
        } else if (!strcmp(o, "--lora") && has_val && a->n_loras < MAX_LORAS) {
            a->lora_scales[a->n_loras] = 1.0f;
            a->lora_dirs[a->n_loras++] = argv[++i];
        } else if (!strcmp(o, "--scale") && has_val && a->n_loras > 0) {
            a->lora_scales[a->n_loras - 1] = strtof(argv[++i], NULL);
        } else if (!strcmp(o, "--steps")) {
            a->steps = true;
        } else if (o[0] != '-' && a->n_seqs < MAX_SEQS) {
            if (seq_parse(o, a->n_loras, &a->seqs[a->n_seqs++]))
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

/* The batch as given on the command line: every sequence whole, all logits. */
static void items_init(core_fwd_item_t *items, const args_t *a, core_lora_t **loras)
{
    for (int i = 0; i < a->n_seqs; i++) {
        const seq_t *s = &a->seqs[i];
        memset(&items[i], 0, sizeof items[i]);
        items[i].tokens = s->tokens;
        items[i].n_tokens = s->n_tokens;
        items[i].kv = s->kv;
        items[i].lora = s->lora_index >= 0 ? loras[s->lora_index] : NULL;
        items[i].lora_scale = s->lora_index >= 0 ? a->lora_scales[s->lora_index] : 1.0f;
        items[i].logits = s->logits;
        items[i].all_logits = true;
    }
}

/* One batched call, or with --steps three: a prefill of all but the last two tokens of every
 * sequence, then two one-token decode steps that read the KV cache the prefill wrote. */
static rc_t run_all(const core_model_t *m, const args_t *a, core_lora_t **loras,
                    core_err_t *err)
{
    core_fwd_item_t items[MAX_SEQS];
    size_t n_vocab = (size_t)m->cfg.n_vocab;
    core_fwd_t *f = core_fwd_new(m);
    if (!f)
        return core_err(err, RC_NOMEM, "core_fwd_new failed");
    items_init(items, a, loras);
    if (a->steps)
        for (int i = 0; i < a->n_seqs; i++)
            items[i].n_tokens -= 2;
    rc_t rc = core_forward(m, f, items, a->n_seqs, err);
    for (int step = 0; a->steps && rc == RC_OK && step < 2; step++) {
        for (int i = 0; i < a->n_seqs; i++) {
            const seq_t *s = &a->seqs[i];
            int at = s->n_tokens - 2 + step;
            items[i].tokens = s->tokens + at;
            items[i].n_tokens = 1;
            items[i].logits = s->logits + (size_t)at * n_vocab;
        }
        rc = core_forward(m, f, items, a->n_seqs, err);
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

int main(int argc, char **argv)
{
    static args_t a;
    core_lora_t *loras[MAX_LORAS] = {0};
    core_model_t *m = NULL;
    core_err_t err = {{0}};
    int ret = 1;
    rc_t rc;

    if (args_parse(argc, argv, &a)) {
        ret = usage();
        goto out;
    }
    rc = core_model_load(a.model_dir, &m, &err);
    if (rc != RC_OK) {
        fprintf(stderr, "model %s: %s: %s\n", a.model_dir, rc_str(rc), err.msg);
        goto out;
    }
    for (int i = 0; i < a.n_loras; i++) {
        rc = core_lora_load(a.lora_dirs[i], &m->cfg, &loras[i], &err);
        if (rc != RC_OK) {
            fprintf(stderr, "lora %s: %s: %s\n", a.lora_dirs[i], rc_str(rc), err.msg);
            goto out;
        }
    }
    size_t n_vocab = (size_t)m->cfg.n_vocab;
    for (int i = 0; i < a.n_seqs; i++) {
        seq_t *s = &a.seqs[i];
        if (a.steps && s->n_tokens < 3) {
            fprintf(stderr, "--steps needs sequences of at least 3 tokens\n");
            goto out;
        }
        s->logits = calloc((size_t)s->n_tokens * n_vocab, sizeof(float));
        s->kv = core_kv_new(&m->cfg);
        if (!s->logits || !s->kv) {
            fprintf(stderr, "out of memory\n");
            goto out;
        }
    }
    rc = run_all(m, &a, loras, &err);
    if (rc != RC_OK) {
        fprintf(stderr, "forward: %s: %s\n", rc_str(rc), err.msg);
        goto out;
    }
    ret = write_out(a.out_path, &a, n_vocab) ? 1 : 0;
out:
    for (int i = 0; i < a.n_seqs; i++) {
        free(a.seqs[i].tokens);
        free(a.seqs[i].logits);
        if (a.seqs[i].kv)
            core_kv_free(a.seqs[i].kv);
    }
    for (int i = 0; i < a.n_loras; i++)
        if (loras[i])
            core_lora_release(loras[i]);
    if (m)
        core_model_free(m);
    return ret;
}
