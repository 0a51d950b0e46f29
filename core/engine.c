/* engine.c - the compute thread: continuous batching over core_forward.
 *
 * Threads: submit/cancel run on any thread and only touch the inbox and the cancel list
 * under e->mu. Everything else (the running list, sequences, KV caches, samplers) belongs
 * to the engine thread alone.
 *
 * One step: admit waiting sequences (up to max_seqs), then give every running sequence a
 * row budget: one token for each decoding sequence first (so decodes keep flowing), then
 * prompt chunks for sequences still prefilling, within max_batch_tokens. One core_forward
 * runs the whole batch; sequences whose prompt is fully fed sample their next token. */
#include "core/engine.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define ENGINE_MAX_QUEUE 256
#define ENGINE_MAX_CANCELS 4096

typedef struct seq {
    uint64_t id;
    int32_t *tokens; /* prompt then generated ids */
    int n_tokens, cap;
    int n_prompt, n_gen, n_fed; /* n_fed: tokens already in the KV cache */
    int max_tokens;
    bool ignore_eos;
    bool cancel; /* set under e->mu by admit_locked, acted on after the lock */
    core_lora_t *lora;
    float lora_scale;
    core_sampler_params_t sampling;
    core_sampler_t *sampler;
    core_kv_t *kv;
    core_tok_stream_t *detok;
    char *stop[CORE_MAX_STOP];
    size_t stop_len[CORE_MAX_STOP];
    int n_stop;
    char *held; /* decoded text not yet emitted: it may start a stop string */
    size_t n_held, held_cap;
    core_on_event_fn on_event;
    void *user;
    struct seq *next;
} seq_t;

struct core_engine {
    const core_model_t *model;
    const core_tok_t *tok;
    core_engine_params_t params;
    core_fwd_t *fwd;
    float *logits;          /* max_seqs * n_vocab */
    core_fwd_item_t *items; /* max_seqs */
    seq_t **item_seq;       /* the sequence of each item */
    seq_t *running;         /* engine thread only */
    int n_running;
    pthread_t thread;
    pthread_mutex_t mu;     /* guards everything below */
    pthread_cond_t cv;
    seq_t *inbox_head, *inbox_tail;
    int n_inbox;
    uint64_t cancels[ENGINE_MAX_CANCELS];
    int n_cancels;
    uint64_t next_id;
    bool stopping;
};

core_request_t core_request_default(void)
{
    core_request_t r;
    memset(&r, 0, sizeof r);
    r.lora_scale = 1.0f;
    r.sampling = core_sampler_default_params();
    r.max_tokens = 16;
    return r;
}

core_engine_params_t core_engine_default_params(void)
{
    core_engine_params_t p = {.max_batch_tokens = 2048, .max_seqs = 64};
    return p;
}

/* ---- sequences ---------------------------------------------------------------- */

static void seq_free(seq_t *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n_stop; i++)
        free(s->stop[i]);
    if (s->lora)
        core_lora_release(s->lora);
    core_sampler_free(s->sampler);
    core_kv_free(s->kv);
    core_tok_stream_free(s->detok);
    free(s->held);
    free(s->tokens);
    free(s);
}

/* Copies everything the request points at; the engine thread creates the heavy parts
 * (KV cache, sampler, detokenizer) so submit stays cheap. */
static seq_t *seq_new(const core_request_t *r)
{
    seq_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->cap = r->n_prompt + r->max_tokens + 1;
    s->tokens = malloc((size_t)s->cap * sizeof *s->tokens);
    if (!s->tokens)
        goto fail;
    memcpy(s->tokens, r->prompt, (size_t)r->n_prompt * sizeof *s->tokens);
    s->n_tokens = s->n_prompt = r->n_prompt;
    s->max_tokens = r->max_tokens;
    s->ignore_eos = r->ignore_eos;
    s->lora_scale = r->lora_scale;
    s->sampling = r->sampling;
    s->on_event = r->on_event;
    s->user = r->user;
    for (int i = 0; i < r->n_stop && i < CORE_MAX_STOP; i++) {
        if (!r->stop[i] || !r->stop[i][0])
            continue;
        s->stop[s->n_stop] = strdup(r->stop[i]);
        if (!s->stop[s->n_stop])
            goto fail;
        s->stop_len[s->n_stop] = strlen(r->stop[i]);
        s->n_stop++;
    }
    if (r->lora) {
        core_lora_retain(r->lora);
        s->lora = r->lora;
    }
    return s;
fail:
    seq_free(s);
    return NULL;
}

static void seq_emit(seq_t *s, const core_event_t *ev)
{
    core_event_t e = *ev;
    e.req_id = s->id;
    s->on_event(s->user, &e);
}

static void seq_emit_done(seq_t *s, core_finish_t finish, const char *text, size_t len)
{
    core_event_t ev = {.kind = CORE_EV_DONE, .finish = finish, .text = text ? text : "",
                       .text_len = len, .n_prompt = s->n_prompt, .n_gen = s->n_gen};
    seq_emit(s, &ev);
}

static void seq_emit_error(seq_t *s, rc_t rc, const char *msg)
{
    core_event_t ev = {.kind = CORE_EV_ERROR, .rc = rc, .message = msg, .text = "",
                       .n_prompt = s->n_prompt, .n_gen = s->n_gen};
    seq_emit(s, &ev);
}

static bool held_append(seq_t *s, const char *p, size_t n)
{
    if (s->n_held + n + 1 > s->held_cap) {
        size_t cap = (s->n_held + n + 1) * 2;
        char *h = realloc(s->held, cap);
        if (!h)
            return false;
        s->held = h;
        s->held_cap = cap;
    }
    memcpy(s->held + s->n_held, p, n);
    s->n_held += n;
    s->held[s->n_held] = 0;
    return true;
}

/* Earliest complete stop string in the held text: its offset, or -1. */
static long stop_find(const seq_t *s)
{
    long best = -1;
    for (int i = 0; i < s->n_stop; i++) {
        const char *hit = memmem(s->held, s->n_held, s->stop[i], s->stop_len[i]);
        if (hit && (best < 0 || hit - s->held < best))
            best = hit - s->held;
    }
    return best;
}

/* Length of the longest suffix of the held text that is a proper prefix of a stop
 * string: those bytes must wait for the next token. */
static size_t stop_partial(const seq_t *s)
{
    size_t keep = 0;
    for (int i = 0; i < s->n_stop; i++) {
        size_t max = s->stop_len[i] - 1 < s->n_held ? s->stop_len[i] - 1 : s->n_held;
        for (size_t k = max; k > keep; k--)
            if (memcmp(s->held + s->n_held - k, s->stop[i], k) == 0) {
                keep = k;
                break;
            }
    }
    return keep;
}

static bool is_eos(const core_engine_t *e, int32_t tok)
{
    const core_config_t *c = &e->model->cfg;
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] == tok)
            return true;
    return c->n_eos == 0 && tok == core_tok_eos(e->tok);
}

/* Handle one sampled token. Returns true when the sequence is finished (its final event
 * has been sent). */
static bool seq_on_token(core_engine_t *e, seq_t *s, int32_t tok)
{
    s->tokens[s->n_tokens++] = tok;
    s->n_gen++;
    if (!s->ignore_eos && is_eos(e, tok)) {
        const char *p = NULL;
        size_t n = 0;
        core_tok_stream_flush(s->detok, &p, &n);
        held_append(s, p, n);
        seq_emit_done(s, CORE_FINISH_STOP, s->held, s->n_held);
        return true;
    }
    const char *piece = NULL;
    size_t n_piece = 0;
    if (core_tok_stream_push(s->detok, tok, &piece, &n_piece) != RC_OK || !held_append(s, piece, n_piece)) {
        seq_emit_error(s, RC_INTERNAL, "detokenization failed");
        return true;
    }
    long stop_at = stop_find(s);
    if (stop_at >= 0) {
        core_event_t ev = {.kind = CORE_EV_TOKEN, .token = tok, .text = s->held,
                           .text_len = (size_t)stop_at};
        seq_emit(s, &ev);
        seq_emit_done(s, CORE_FINISH_STOP, "", 0);
        return true;
    }
    bool last = s->n_gen >= s->max_tokens || s->n_tokens >= e->model->cfg.max_pos;
    size_t keep = last ? 0 : stop_partial(s);
    if (last) {
        const char *p = NULL;
        size_t n = 0;
        core_tok_stream_flush(s->detok, &p, &n);
        held_append(s, p, n);
    }
    core_event_t ev = {.kind = CORE_EV_TOKEN, .token = tok, .text = s->held,
                       .text_len = s->n_held - keep};
    seq_emit(s, &ev);
    memmove(s->held, s->held + s->n_held - keep, keep);
    s->n_held = keep;
    if (last)
        seq_emit_done(s, CORE_FINISH_LENGTH, "", 0);
    return last;
}

/* ---- the engine thread ---------------------------------------------------------- */

static void running_remove(core_engine_t *e, seq_t *s)
{
    for (seq_t **pp = &e->running; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            e->n_running--;
            return;
        }
}

static void seq_finish(core_engine_t *e, seq_t *s)
{
    running_remove(e, s);
    seq_free(s);
}

/* Create the per-sequence state that submit left to the engine thread. */
static bool seq_start(core_engine_t *e, seq_t *s)
{
    s->kv = core_kv_new(&e->model->cfg);
    s->sampler = core_sampler_new(s->sampling, e->model->cfg.n_vocab);
    s->detok = core_tok_stream_new(e->tok, true);
    if (!s->kv || !s->sampler || !s->detok) {
        seq_emit_error(s, RC_NOMEM, "out of memory starting the sequence");
        return false;
    }
    return true;
}

/* Under e->mu: true when id is in the cancel list (and removes it). */
static bool take_cancel(core_engine_t *e, uint64_t id)
{
    for (int i = 0; i < e->n_cancels; i++)
        if (e->cancels[i] == id) {
            e->cancels[i] = e->cancels[--e->n_cancels];
            return true;
        }
    return false;
}

/* Under e->mu: apply cancellations (waiting sequences move to *cancelled, running ones
 * are marked) and move waiting sequences into the running list, up to max_seqs. Events
 * are sent after the lock is released. */
static void admit_locked(core_engine_t *e, seq_t **cancelled)
{
    for (seq_t *s = e->running; s && e->n_cancels; s = s->next)
        if (take_cancel(e, s->id))
            s->cancel = true;
    seq_t **pp = &e->inbox_head;
    e->inbox_tail = NULL;
    while (*pp) {
        seq_t *s = *pp;
        if (e->n_cancels && take_cancel(e, s->id)) {
            *pp = s->next;
            e->n_inbox--;
            s->next = *cancelled;
            *cancelled = s;
        } else if (e->n_running < e->params.max_seqs) {
            *pp = s->next;
            e->n_inbox--;
            s->next = e->running;
            e->running = s;
            e->n_running++;
        } else {
            e->inbox_tail = s;
            pp = &s->next;
        }
    }
    e->n_cancels = 0; /* ids not found belong to finished requests */
}

static void cancel_marked(core_engine_t *e, seq_t *cancelled)
{
    while (cancelled) {
        seq_t *next = cancelled->next;
        seq_emit_done(cancelled, CORE_FINISH_CANCELLED, "", 0);
        seq_free(cancelled);
        cancelled = next;
    }
    for (seq_t *s = e->running, *next; s; s = next) {
        next = s->next;
        if (s->cancel) {
            seq_emit_done(s, CORE_FINISH_CANCELLED, "", 0);
            seq_finish(e, s);
        }
    }
}

/* Fill e->items for this step. Decoding sequences first (one row each), then prompt
 * chunks within the remaining token budget. Returns the number of items. */
static int build_batch(core_engine_t *e)
{
    int n = 0, budget = e->params.max_batch_tokens;
    const int n_vocab = e->model->cfg.n_vocab;
    for (int pass = 0; pass < 2; pass++) {
        for (seq_t *s = e->running; s && budget > 0; s = s->next) {
            int todo = s->n_tokens - s->n_fed;
            bool decoding = s->n_fed >= s->n_prompt;
            if (todo <= 0 || decoding != (pass == 0))
                continue;
            int take = todo < budget ? todo : budget;
            core_fwd_item_t *it = &e->items[n];
            memset(it, 0, sizeof *it);
            it->tokens = s->tokens + s->n_fed;
            it->n_tokens = take;
            it->kv = s->kv;
            it->lora = s->lora;
            it->lora_scale = s->lora_scale;
            it->logits = e->logits + (size_t)n * n_vocab;
            e->item_seq[n++] = s;
            budget -= take;
        }
    }
    return n;
}

static void run_step(core_engine_t *e, int n_items)
{
    core_err_t err = {{0}};
    rc_t rc = core_forward(e->model, e->fwd, e->items, n_items, &err);
    for (int i = 0; i < n_items; i++) {
        seq_t *s = e->item_seq[i];
        if (rc != RC_OK) {
            seq_emit_error(s, rc, err.msg);
            seq_finish(e, s);
            continue;
        }
        s->n_fed += e->items[i].n_tokens;
        if (s->n_fed < s->n_tokens)
            continue; /* prompt chunk: nothing to sample yet */
        int32_t tok = core_sampler_sample(s->sampler, e->items[i].logits);
        if (seq_on_token(e, s, tok))
            seq_finish(e, s);
    }
}

/* Sequences that need no forward pass at all: newly admitted ones are started here, and
 * max_tokens == 0 finishes at once. */
static void start_new(core_engine_t *e)
{
    for (seq_t *s = e->running, *next; s; s = next) {
        next = s->next;
        if (s->kv)
            continue;
        if (!seq_start(e, s)) {
            seq_finish(e, s);
        } else if (s->max_tokens == 0) {
            seq_emit_done(s, CORE_FINISH_LENGTH, "", 0);
            seq_finish(e, s);
        }
    }
}

static void *engine_main(void *arg)
{
    core_engine_t *e = arg;
    for (;;) {
        seq_t *cancelled = NULL;
        pthread_mutex_lock(&e->mu);
        while (!e->stopping && !e->inbox_head && !e->running && !e->n_cancels)
            pthread_cond_wait(&e->cv, &e->mu);
        if (e->stopping) {
            for (seq_t *s = e->running; s; s = s->next)
                s->cancel = true;
            for (seq_t *s = e->inbox_head, *next; s; s = next) {
                next = s->next;
                s->next = cancelled;
                cancelled = s;
            }
            e->inbox_head = e->inbox_tail = NULL;
        } else {
            admit_locked(e, &cancelled);
        }
        bool stop = e->stopping;
        pthread_mutex_unlock(&e->mu);
        cancel_marked(e, cancelled);
        if (stop)
            break;
        start_new(e);
        int n_items = build_batch(e);
        if (n_items > 0)
            run_step(e, n_items);
    }
    return NULL;
}

/* ---- public API ------------------------------------------------------------------ */

rc_t core_engine_new(const core_model_t *m, const core_tok_t *tok, core_engine_params_t p,
                     core_engine_t **out, core_err_t *err)
{
    if (p.max_batch_tokens < 1 || p.max_seqs < 1 || p.max_seqs > 4096)
        return core_err(err, RC_INVALID, "engine: max_batch_tokens must be >= 1 and max_seqs 1..4096");
    core_engine_t *e = calloc(1, sizeof *e);
    if (!e)
        return core_err(err, RC_NOMEM, "engine: out of memory");
    e->model = m;
    e->tok = tok;
    e->params = p;
    e->next_id = 1;
    e->fwd = core_fwd_new(m);
    e->logits = malloc((size_t)p.max_seqs * m->cfg.n_vocab * sizeof *e->logits);
    e->items = calloc((size_t)p.max_seqs, sizeof *e->items);
    e->item_seq = calloc((size_t)p.max_seqs, sizeof *e->item_seq);
    if (!e->fwd || !e->logits || !e->items || !e->item_seq)
        goto nomem;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->cv);
        goto nomem;
    }
    *out = e;
    return RC_OK;
nomem:
    core_fwd_free(e->fwd);
    free(e->logits);
    free(e->items);
    free(e->item_seq);
    free(e);
    return core_err(err, RC_NOMEM, "engine: out of memory");
}

void core_engine_free(core_engine_t *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    e->stopping = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->thread, NULL);
    while (e->running)
        seq_finish(e, e->running);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    core_fwd_free(e->fwd);
    free(e->logits);
    free(e->items);
    free(e->item_seq);
    free(e);
}

static rc_t check_request(const core_engine_t *e, const core_request_t *r, core_err_t *err)
{
    const core_config_t *c = &e->model->cfg;
    if (!r->on_event)
        return core_err(err, RC_INVALID, "request has no event callback");
    if (!r->prompt || r->n_prompt < 1)
        return core_err(err, RC_INVALID, "prompt must hold at least one token");
    if (r->max_tokens < 0)
        return core_err(err, RC_INVALID, "max_tokens must be >= 0");
    if ((long)r->n_prompt + r->max_tokens > c->max_pos)
        return core_err(err, RC_INVALID,
                        "prompt (%d tokens) plus max_tokens (%d) exceeds the model context of %d tokens",
                        r->n_prompt, r->max_tokens, c->max_pos);
    for (int i = 0; i < r->n_prompt; i++)
        if (r->prompt[i] < 0 || r->prompt[i] >= c->n_vocab)
            return core_err(err, RC_INVALID, "prompt token %d at position %d is outside the vocabulary (0..%d)",
                            (int)r->prompt[i], i, c->n_vocab - 1);
    if (r->n_stop < 0 || r->n_stop > CORE_MAX_STOP)
        return core_err(err, RC_INVALID, "at most %d stop strings", CORE_MAX_STOP);
    return RC_OK;
}

rc_t core_engine_submit(core_engine_t *e, const core_request_t *r, uint64_t *req_id,
                        core_err_t *err)
{
    rc_t rc = check_request(e, r, err);
    if (rc != RC_OK)
        return rc;
    seq_t *s = seq_new(r);
    if (!s)
        return core_err(err, RC_NOMEM, "out of memory queueing the request");
    pthread_mutex_lock(&e->mu);
    if (e->n_inbox >= ENGINE_MAX_QUEUE || e->stopping) {
        pthread_mutex_unlock(&e->mu);
        seq_free(s);
        return core_err(err, RC_BUSY, "the request queue is full");
    }
    s->id = e->next_id++;
    if (e->inbox_tail)
        e->inbox_tail->next = s;
    else
        e->inbox_head = s;
    e->inbox_tail = s;
    e->n_inbox++;
    *req_id = s->id;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return RC_OK;
}

void core_engine_cancel(core_engine_t *e, uint64_t req_id)
{
    pthread_mutex_lock(&e->mu);
    if (e->n_cancels < ENGINE_MAX_CANCELS)
        e->cancels[e->n_cancels++] = req_id;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}
