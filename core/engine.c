/* engine.c - the compute thread: continuous batching over core_forward with a paged KV pool.
 *
 * Threads: submit/cancel/stats run on any thread and only touch the inbox, the cancel list,
 * the queue-limit counts and the published stats under e->mu. Everything else (groups,
 * waiting queues, the running list, sequences, the KV pool and caches, samplers) belongs to
 * the engine thread alone. The private types are in core/sched_int.h.
 *
 * One iteration: take the inbox and the cancels (under the lock, publishing stats), end
 * cancelled sequences (their KV blocks go back at once), admit waiting sequences, plan the
 * step (decodes first, then prompt chunks), order its items by adapter set, run one
 * core_forward, sample. The scheduling policy (docs/ARCHITECTURE.md, "Scheduling"):
 *  - admission and fair preemption for slots live in core/sched.c: the head of the waiting
 *    group with the smallest running / weight goes first, and a group below its weighted
 *    share of max_seqs takes a slot from the group most over its share;
 *  - each step: one row per decoding sequence, then prompt chunks within max_batch_tokens,
 *    round-robin over groups (least recently prefilled group first), cut to the free blocks;
 *  - a decode that finds the pool empty preempts by recompute: the running sequence admitted
 *    last in the group most over its share drops its KV and goes back to the front of its
 *    group's queue with all its tokens; sampler and detokenizer state are kept.
 * Submit refuses a request that could not finish even alone in the pool, so a sequence
 * alone always completes: preemption cannot deadlock. */
#include "core/engine.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/sched_int.h"

#define ENGINE_MAX_SEQS 4096

/* One item of the step being planned and the sequence it belongs to. */
struct slot {
    core_fwd_item_t item;
    seq_t *seq;
    int order; /* planning order: the tie-break that keeps sorting stable */
    int fed0;  /* the sequence's n_fed when planned (the chunk's first position) */
};

core_request_t core_request_default(void)
{
    core_request_t r;
    memset(&r, 0, sizeof r);
    r.sampling = core_sampler_default_params();
    r.max_tokens = 16;
    r.group = "";
    r.group_weight = 1;
    return r;
}

core_engine_params_t core_engine_default_params(void)
{
    core_engine_params_t p = {.max_batch_tokens = 2048,
                              .max_seqs = 64,
                              .max_queue = 256,
                              .kv_budget_bytes = (size_t)1 << 30,
                              .kv_block_tokens = 16,
                              .max_rank = 256};
    return p;
}

/* ---- sequences ---------------------------------------------------------------- */

/* Also ends its count in the queue limits if it never started. */
static void seq_free(core_engine_t *e, seq_t *s)
{
    if (!s)
        return;
    core__queue_release(e, s);
    for (int i = 0; i < s->n_stop; i++)
        free(s->stop[i]);
    if (s->aset)
        core_aset_release(s->aset);
    if (s->router)
        core_router_release(s->router);
    free(s->route_sum);
    free(s->route_n);
    core_sampler_free(s->sampler);
    core_kv_free(s->kv);
    core_kv_free(s->kvs);
    core_tok_stream_free(s->detok);
    free(s->group_name);
    free(s->held);
    free(s->tokens);
    free(s);
}

static bool seq_copy_stops(seq_t *s, const core_request_t *r)
{
    for (int i = 0; i < r->n_stop && i < CORE_MAX_STOP; i++) {
        if (!r->stop[i] || !r->stop[i][0])
            continue;
        s->stop[s->n_stop] = strdup(r->stop[i]);
        if (!s->stop[s->n_stop])
            return false;
        s->stop_len[s->n_stop] = strlen(r->stop[i]);
        s->n_stop++;
    }
    return true;
}

/* A usable share: unset or nonsense weights mean 1, and the clamp keeps the share
 * products of the scheduler far from overflow and underflow. */
static double seq_weight(double w)
{
    if (!isfinite(w) || w <= 0)
        return 1;
    return w < 1e-3 ? 1e-3 : w > 1e3 ? 1e3 : w;
}

/* The routed part of a request: the router (retained), its overrides, the sums that
 * want_routing reports. false when out of memory. */
static bool seq_route_init(seq_t *s, const core_request_t *r)
{
    core_router_retain(r->router);
    s->router = r->router;
    s->route = r->route;
    s->dual = r->router->kind == CORE_ROUTER_XLORA;
    if (!r->want_routing)
        return true;
    size_t nl = (size_t)r->router->n_layers;
    s->route_sum = calloc(nl * (size_t)r->router->n_experts, sizeof *s->route_sum);
    s->route_n = calloc(nl, sizeof *s->route_n);
    return s->route_sum && s->route_n;
}

/* Copies everything the request points at; the engine thread creates the heavy parts
 * (KV cache, sampler, detokenizer) so submit stays cheap. */
static seq_t *seq_new(core_engine_t *e, const core_request_t *r)
{
    seq_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->cap = r->n_prompt + r->max_tokens + 1;
    s->tokens = malloc((size_t)s->cap * sizeof *s->tokens);
    s->group_name = strdup(r->group ? r->group : "");
    if (!s->tokens || !s->group_name || !seq_copy_stops(s, r)) {
        seq_free(e, s);
        return NULL;
    }
    memcpy(s->tokens, r->prompt, (size_t)r->n_prompt * sizeof *s->tokens);
    s->n_tokens = s->n_prompt = r->n_prompt;
    s->max_tokens = r->max_tokens;
    s->ignore_eos = r->ignore_eos;
    s->want_logits = r->want_logits;
    s->want_prompt_logits = r->want_prompt_logits;
    s->sampling = r->sampling;
    s->weight = seq_weight(r->group_weight);
    s->on_event = r->on_event;
    s->user = r->user;
    if (r->aset) {
        core_aset_retain(r->aset);
        s->aset = r->aset;
    }
    if (r->router && !seq_route_init(s, r)) {
        seq_free(e, s);
        return NULL;
    }
    return s;
}

static void seq_emit(seq_t *s, const core_event_t *ev)
{
    core_event_t e = *ev;
    e.req_id = s->id;
    s->on_event(s->user, &e);
}

/* The sums turned into per-layer means, in place (the sequence ends with this event). */
static void seq_route_means(seq_t *s, core_event_t *ev)
{
    if (!s->route_sum)
        return;
    int nl = s->router->n_layers, ne = s->router->n_experts;
    for (int l = 0; l < nl; l++)
        for (int k = 0; k < ne; k++)
            s->route_sum[l * ne + k] = s->route_n[l] ? s->route_sum[l * ne + k] / (float)s->route_n[l]
                                                     : 0.0f;
    ev->routing = s->route_sum;
    ev->routing_layers = nl;
    ev->routing_experts = ne;
}

static void seq_emit_done(seq_t *s, core_finish_t finish, const char *text, size_t len)
{
    core_event_t ev = {.kind = CORE_EV_DONE, .finish = finish, .text = text ? text : "",
                       .text_len = len, .n_prompt = s->n_prompt, .n_gen = s->n_gen};
    seq_route_means(s, &ev);
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
    if (n)
        memcpy(s->held + s->n_held, p, n); /* p may be NULL when n is 0 */
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

/* The last token: whatever the detokenizer still holds joins the held text. */
static void seq_flush(seq_t *s)
{
    const char *p = NULL;
    size_t n = 0;
    core_tok_stream_flush(s->detok, &p, &n);
    held_append(s, p, n);
}

/* Handle one sampled token (tok was sampled from logits). Returns true when the sequence
 * is finished (its final event has been sent). */
static bool seq_on_token(core_engine_t *e, seq_t *s, int32_t tok, const float *logits)
{
    s->tokens[s->n_tokens++] = tok;
    s->n_gen++;
    core_event_t ev = {.kind = CORE_EV_TOKEN, .token = tok, .text = ""};
    if (s->want_logits) {
        ev.logits = logits;
        ev.n_vocab = e->model->cfg.n_vocab;
    }
    if (!s->ignore_eos && is_eos(e, tok)) {
        /* EOS is a generated token (usage counts it, token_ids lists it, as vLLM does)
         * but has no text; the DONE event carries whatever text was still held. */
        seq_emit(s, &ev);
        seq_flush(s);
        seq_emit_done(s, CORE_FINISH_STOP, s->held, s->n_held);
        return true;
    }
    const char *piece = NULL;
    size_t n_piece = 0;
    if (core_tok_stream_push(s->detok, tok, &piece, &n_piece) != RC_OK ||
        !held_append(s, piece, n_piece)) {
        seq_emit_error(s, RC_INTERNAL, "detokenization failed");
        return true;
    }
    long stop_at = stop_find(s);
    if (stop_at >= 0) {
        ev.text = s->held;
        ev.text_len = (size_t)stop_at;
        seq_emit(s, &ev);
        seq_emit_done(s, CORE_FINISH_STOP, "", 0);
        return true;
    }
    bool last = s->n_gen >= s->max_tokens || s->n_tokens >= e->model->cfg.max_pos;
    size_t keep = last ? 0 : stop_partial(s);
    if (last)
        seq_flush(s);
    ev.text = s->held;
    ev.text_len = s->n_held - keep;
    seq_emit(s, &ev);
    memmove(s->held, s->held + s->n_held - keep, keep);
    s->n_held = keep;
    if (last)
        seq_emit_done(s, CORE_FINISH_LENGTH, "", 0);
    return last;
}

/* ---- ending sequences (engine thread) ------------------------------------------- */

/* End a running sequence whose final event has been sent: its KV blocks return now. */
static void seq_finish(core_engine_t *e, seq_t *s)
{
    group_t *g = s->grp;
    core__running_remove(e, s);
    seq_free(e, s);
    core__group_gc(e, g);
}

/* ---- intake and cancellation (engine thread) ------------------------------------- */

/* Newly submitted sequences: create their state and queue them in their group.
 * max_tokens == 0 needs no forward pass and finishes here. */
static void intake(core_engine_t *e, seq_t *list)
{
    for (seq_t *s = list, *next; s; s = next) {
        next = s->next;
        s->kv = core_kv_new(e->pool);
        s->kvs = s->dual ? core_kv_new(e->pool) : NULL;
        s->sampler = core_sampler_new(s->sampling, e->model->cfg.n_vocab);
        s->detok = core_tok_stream_new(e->tok, true);
        s->grp = core__group_get(e, s->group_name);
        if (!s->kv || (s->dual && !s->kvs) || !s->sampler || !s->detok || !s->grp) {
            seq_emit_error(s, RC_NOMEM, "out of memory starting the sequence");
            core__group_gc(e, s->grp);
            seq_free(e, s);
        } else if (s->max_tokens == 0 && !(s->want_prompt_logits && s->n_prompt > 1)) {
            seq_emit_done(s, CORE_FINISH_LENGTH, "", 0);
            core__group_gc(e, s->grp);
            seq_free(e, s);
        } else {
            s->grp->weight = s->weight; /* the most recently submitted request's */
            core__wait_push(e, s, false);
        }
    }
}

static seq_t *find_waiting(core_engine_t *e, uint64_t id)
{
    for (group_t *g = e->groups; g; g = g->next)
        for (seq_t *s = g->wait_head; s; s = s->next)
            if (s->id == id)
                return s;
    return NULL;
}

/* Cancelled sequences end now, waiting or running, so their KV blocks are back before the
 * next step. Ids not found belong to finished requests. */
static void apply_cancels(core_engine_t *e, const uint64_t *ids, int n)
{
    for (int i = 0; i < n; i++) {
        seq_t *s = NULL;
        for (seq_t *r = e->running; r && !s; r = r->next)
            if (r->id == ids[i])
                s = r;
        if (s) {
            seq_emit_done(s, CORE_FINISH_CANCELLED, "", 0);
            seq_finish(e, s);
        } else if ((s = find_waiting(e, ids[i]))) {
            group_t *g = s->grp;
            core__wait_remove(e, s);
            seq_emit_done(s, CORE_FINISH_CANCELLED, "", 0);
            seq_free(e, s);
            core__group_gc(e, g);
        }
    }
}

/* Shutdown: every running and waiting sequence ends with DONE/cancelled. */
static void cancel_all(core_engine_t *e)
{
    while (e->running) {
        seq_emit_done(e->running, CORE_FINISH_CANCELLED, "", 0);
        seq_finish(e, e->running);
    }
    while (e->groups) {
        group_t *g = e->groups;
        seq_t *s = g->wait_head;
        if (!s) {
            core__group_gc(e, g);
            continue;
        }
        core__wait_remove(e, s);
        seq_emit_done(s, CORE_FINISH_CANCELLED, "", 0);
        seq_free(e, s);
    }
}

/* ---- planning a step ------------------------------------------------------------------- */

/* Blocks for n more positions in each of s's caches (RC_BUSY: the pool is short; blocks
 * the first cache took stay with it for its next positions). */
static rc_t seq_reserve(seq_t *s, int n)
{
    rc_t rc = core_kv_reserve(s->kv, n);
    if (rc == RC_OK && s->kvs)
        rc = core_kv_reserve(s->kvs, n);
    return rc;
}

/* Every decoding sequence gets the block for its next position; when the pool is empty a
 * victim is preempted (possibly the sequence itself) and the scan restarts. */
static void reserve_decodes(core_engine_t *e)
{
restart:
    for (seq_t *s = e->running; s; s = s->next) {
        if (!core__seq_decoding(s) || core__seq_blocks_needed(s, 1) == 0)
            continue;
        rc_t rc = seq_reserve(s, 1);
        if (rc == RC_OK)
            continue;
        if (rc == RC_BUSY) {
            seq_t *v = core__pick_victim(e);
            core__seq_preempt(e, v ? v : s);
        } else {
            seq_emit_error(s, rc, "cannot grow the KV cache");
            seq_finish(e, s);
        }
        goto restart;
    }
}

static void slot_add(core_engine_t *e, int n, seq_t *s, int n_tokens)
{
    slot_t *sl = &e->slots[n];
    memset(sl, 0, sizeof *sl);
    sl->item.tokens = s->tokens + s->n_fed;
    sl->item.n_tokens = n_tokens;
    sl->item.kv = s->kv;
    sl->item.aset = s->aset;
    sl->item.router = s->router;
    sl->item.route_top_k = s->route.top_k;
    sl->item.route_temperature = s->route.temperature;
    sl->item.kv_scaling = s->kvs;
    sl->item.route_sum = s->route_sum;
    sl->item.route_n = s->route_n;
    sl->seq = s;
    sl->order = n;
    sl->fed0 = s->n_fed;
}

/* Whether this chunk of s must return the logits of every row (prompt logits not yet
 * sent lie in it). */
static bool seq_wants_rows(const seq_t *s)
{
    return s->want_prompt_logits && s->plog_sent < s->n_prompt - 1 && s->n_fed < s->n_prompt - 1;
}

/* Prompt chunks go to the group prefilled least recently first (round robin between
 * groups, so one long prompt cannot take every step), FIFO within a group. */
static int cand_cmp(const void *pa, const void *pb)
{
    const seq_t *a = *(seq_t *const *)pa, *b = *(seq_t *const *)pb;
    if (a->grp->last_prefill != b->grp->last_prefill)
        return a->grp->last_prefill < b->grp->last_prefill ? -1 : 1;
    return a->admit_tick < b->admit_tick ? -1 : a->admit_tick > b->admit_tick;
}

/* The largest part of a take-token chunk whose blocks the pool can give (<= 0: none).
 * Cutting k*block_tokens positions needs exactly k blocks fewer per cache. */
static int chunk_fit(const core_engine_t *e, const seq_t *s, int take)
{
    int need = core__seq_blocks_needed(s, take), per = s->kvs ? 2 : 1;
    int n_free = core_kv_pool_n_free(e->pool);
    if (need <= n_free)
        return take;
    return take - (need - n_free + per - 1) / per * e->block_tokens;
}

/* The prompt-logits buffer, made the first time a request wants it (most never do). */
static bool plogits_ready(core_engine_t *e)
{
    if (!e->plogits)
        e->plogits = malloc((size_t)CORE_PROMPT_LOGITS_ROWS * (size_t)e->model->cfg.n_vocab *
                            sizeof *e->plogits);
    return e->plogits != NULL;
}

/* Add prompt chunks after the n slots already planned, within budget rows. */
static int plan_prefills(core_engine_t *e, int n, int budget)
{
    int n_cand = 0;
    for (seq_t *s = e->running; s; s = s->next)
        if (s->n_tokens - s->n_fed > 1)
            e->cand[n_cand++] = s;
    qsort(e->cand, (size_t)n_cand, sizeof *e->cand, cand_cmp);
    bool rows_taken = false; /* one all-rows chunk per step: it uses e->plogits */
    for (int i = 0; i < n_cand && budget > 0; i++) {
        seq_t *s = e->cand[i];
        int todo = s->n_tokens - s->n_fed;
        if (seq_wants_rows(s)) {
            if (rows_taken || !plogits_ready(e))
                continue;
            todo = todo < CORE_PROMPT_LOGITS_ROWS ? todo : CORE_PROMPT_LOGITS_ROWS;
        }
        int take = chunk_fit(e, s, todo < budget ? todo : budget);
        if (take <= 0 || seq_reserve(s, take) != RC_OK)
            continue; /* no blocks for it this step: it waits */
        s->grp->last_prefill = e->n_steps + 1;
        rows_taken |= seq_wants_rows(s);
        slot_add(e, n++, s, take);
        budget -= take;
    }
    return n;
}

/* A total order on adapter sets that is 0 exactly when core_aset_equal holds: NULL
 * (base) first, then term count, then each term's LoRA identity and weight. */
static int aset_cmp(const core_aset_t *a, const core_aset_t *b)
{
    if (a == b)
        return 0;
    if (!a || !b)
        return a ? 1 : -1;
    if (a->n != b->n)
        return a->n < b->n ? -1 : 1;
    for (int i = 0; i < a->n; i++) {
        uintptr_t la = (uintptr_t)a->terms[i].lora, lb = (uintptr_t)b->terms[i].lora;
        if (la != lb)
            return la < lb ? -1 : 1;
        if (a->terms[i].weight != b->terms[i].weight)
            return a->terms[i].weight < b->terms[i].weight ? -1 : 1;
    }
    return 0;
}

static int slot_cmp(const void *pa, const void *pb)
{
    const slot_t *a = pa, *b = pb;
    int c = aset_cmp(a->item.aset, b->item.aset);
    return c ? c : a->order - b->order;
}

/* Items with equal adapter sets become adjacent, so each set is one contiguous segment of
 * the batched projection; then the items get their logits rows. */
static void order_batch(core_engine_t *e, int n)
{
    qsort(e->slots, (size_t)n, sizeof *e->slots, slot_cmp);
    for (int i = 0; i < n; i++) {
        slot_t *sl = &e->slots[i];
        sl->item.all_logits = seq_wants_rows(sl->seq);
        sl->item.logits = sl->item.all_logits
                              ? e->plogits
                              : e->logits + (size_t)i * (size_t)e->model->cfg.n_vocab;
        e->items[i] = sl->item;
    }
}

/* Plan the step: decodes first (one row each; max_seqs <= max_batch_tokens so they all
 * fit), then prompt chunks in the rest of the budget. If nothing at all can run, blocks are
 * held by sequences that cannot proceed: preempt one and plan again (a sequence alone in
 * the pool always fits, so this ends). Returns the number of items. */
static int plan_step(core_engine_t *e)
{
    while (e->n_running > 0) {
        reserve_decodes(e);
        int n = 0;
        for (seq_t *s = e->running; s; s = s->next)
            if (core__seq_decoding(s))
                slot_add(e, n++, s, 1);
        n = plan_prefills(e, n, e->params.max_batch_tokens - n);
        if (n > 0) {
            order_batch(e, n);
            return n;
        }
        seq_t *v = core__pick_victim(e);
        if (!v)
            return 0;
        core__seq_preempt(e, v);
    }
    return 0;
}

/* ---- running a step ------------------------------------------------------------------- */

/* The rows of an all-logits chunk that are prompt positions not sent yet (a recomputed
 * chunk after a preemption sends nothing twice). */
static void seq_emit_prompt_rows(core_engine_t *e, seq_t *s, int fed0, const core_fwd_item_t *it)
{
    int lo = fed0 > s->plog_sent ? fed0 : s->plog_sent;
    int end = fed0 + it->n_tokens;
    int hi = end < s->n_prompt - 1 ? end : s->n_prompt - 1;
    if (hi <= lo)
        return;
    size_t vocab = (size_t)e->model->cfg.n_vocab;
    core_event_t ev = {.kind = CORE_EV_PROMPT, .text = "", .pos0 = lo, .n_rows = hi - lo,
                       .logits = it->logits + (size_t)(lo - fed0) * vocab, .n_vocab = (int)vocab};
    seq_emit(s, &ev);
    s->plog_sent = hi;
}

static void run_step(core_engine_t *e, int n)
{
    core_err_t err = {{0}};
    rc_t rc = core_forward(e->model, e->fwd, e->items, n, &err);
    e->n_steps++;
    for (int i = 0; i < n; i++) {
        seq_t *s = e->slots[i].seq;
        if (rc != RC_OK) {
            seq_emit_error(s, rc, err.msg);
            seq_finish(e, s);
            continue;
        }
        e->n_rows += (uint64_t)e->items[i].n_tokens;
        s->n_fed += e->items[i].n_tokens;
        const float *last = e->items[i].logits;
        if (e->items[i].all_logits) {
            seq_emit_prompt_rows(e, s, e->slots[i].fed0, &e->items[i]);
            last += (size_t)(e->items[i].n_tokens - 1) * (size_t)e->model->cfg.n_vocab;
        }
        if (s->n_fed < s->n_tokens)
            continue; /* a prompt chunk: nothing to sample yet */
        if (s->max_tokens == 0) { /* scoring: the prompt was all it wanted */
            seq_emit_done(s, CORE_FINISH_LENGTH, "", 0);
            seq_finish(e, s);
            continue;
        }
        int32_t tok = core_sampler_sample(s->sampler, last);
        if (seq_on_token(e, s, tok, last))
            seq_finish(e, s);
    }
}

/* Under e->mu: what stats readers and the queue limit see. */
static void stats_publish_locked(core_engine_t *e)
{
    core_engine_stats_t *st = &e->stats;
    st->n_running = e->n_running;
    st->n_waiting = e->n_waiting;
    st->kv_blocks_total = e->pool_blocks;
    st->kv_blocks_used = e->pool_blocks - core_kv_pool_n_free(e->pool);
    st->n_steps = e->n_steps;
    st->n_preempted = e->n_preempted;
    st->n_fair_preempted = e->n_fair_preempted;
    st->n_rows = e->n_rows;
}

/* Under e->mu: sleep until there is something to do, then take the inbox and the
 * cancel ids. Returns the inbox list; *n_ids cancel ids are in e->taken_ids. */
static seq_t *take_work_locked(core_engine_t *e, int *n_ids)
{
    while (!e->stopping && !e->inbox_head && !e->n_cancels && !e->n_running && !e->n_waiting)
        pthread_cond_wait(&e->cv, &e->mu);
    seq_t *in = e->inbox_head;
    e->inbox_head = e->inbox_tail = NULL;
    e->stats.n_waiting += e->n_inbox; /* still queued, until the next publish counts them */
    e->n_inbox = 0;
    /* swap the buffers: the engine reads the ids without the lock */
    uint64_t *ids = e->taken_ids;
    int cap = e->cap_taken;
    e->taken_ids = e->cancels;
    e->cap_taken = e->cap_cancels;
    e->cancels = ids;
    e->cap_cancels = cap;
    *n_ids = e->n_cancels;
    e->n_cancels = 0;
    return in;
}

static void *engine_main(void *arg)
{
    core_engine_t *e = arg;
    for (;;) {
        int n_ids = 0;
        pthread_mutex_lock(&e->mu);
        stats_publish_locked(e);
        seq_t *in = take_work_locked(e, &n_ids);
        bool stop = e->stopping;
        pthread_mutex_unlock(&e->mu);
        intake(e, in);
        apply_cancels(e, e->taken_ids, n_ids);
        if (stop)
            break;
        core__admit(e);
        /* publish again: a scrape between the intake and the next step must not count a
         * sequence both as admitted and as still waiting in the inbox */
        pthread_mutex_lock(&e->mu);
        stats_publish_locked(e);
        pthread_mutex_unlock(&e->mu);
        int n = plan_step(e);
        if (n > 0)
            run_step(e, n);
    }
    cancel_all(e);
    return NULL;
}

/* ---- public API ------------------------------------------------------------------ */

static rc_t check_params(const core_engine_params_t *p, core_err_t *err)
{
    if (p->max_batch_tokens < 1 || p->max_seqs < 1 || p->max_seqs > ENGINE_MAX_SEQS)
        return core_err(err, RC_INVALID, "engine: max_batch_tokens must be >= 1 and max_seqs 1..%d",
                        ENGINE_MAX_SEQS);
    if (p->max_queue < 1 || p->kv_block_tokens < 1 || p->max_rank < 0)
        return core_err(err, RC_INVALID,
                        "engine: max_queue and kv_block_tokens must be >= 1, max_rank >= 0");
    return RC_OK;
}

static void engine_release(core_engine_t *e)
{
    if (e->fwd)
        core_fwd_free(e->fwd);
    if (e->pool)
        core_kv_pool_free(e->pool);
    free(e->logits);
    free(e->plogits);
    free(e->slots);
    free(e->items);
    free(e->cand);
    free(e->cancels);
    free(e->taken_ids);
    core__queue_free_all(e);
    free(e);
}

/* Pool, forward scratch sized for the largest step, and the per-step arrays. */
static rc_t engine_alloc(core_engine_t *e, core_err_t *err)
{
    const core_engine_params_t *p = &e->params;
    rc_t rc = core_kv_pool_new(&e->model->cfg, p->kv_budget_bytes, p->kv_block_tokens, &e->pool,
                               err);
    if (rc != RC_OK)
        return rc;
    e->pool_blocks = core_kv_pool_n_blocks(e->pool);
    e->block_tokens = core_kv_pool_block_tokens(e->pool);
    e->fwd = core_fwd_new(e->model);
    if (!e->fwd)
        return core_err(err, RC_NOMEM, "engine: out of memory");
    rc = core_fwd_reserve(e->fwd, p->max_batch_tokens, p->max_rank, p->max_seqs);
    if (rc != RC_OK)
        return core_err(err, rc, "engine: cannot size the forward scratch for %d tokens per step",
                        p->max_batch_tokens);
    e->logits = malloc((size_t)p->max_seqs * (size_t)e->model->cfg.n_vocab * sizeof *e->logits);
    e->slots = calloc((size_t)p->max_seqs, sizeof *e->slots);
    e->items = calloc((size_t)p->max_seqs, sizeof *e->items);
    e->cand = calloc((size_t)p->max_seqs, sizeof *e->cand);
    if (!e->logits || !e->slots || !e->items || !e->cand)
        return core_err(err, RC_NOMEM, "engine: out of memory");
    return RC_OK;
}

rc_t core_engine_new(const core_model_t *m, const core_tok_t *tok, core_engine_params_t p,
                     core_engine_t **out, core_err_t *err)
{
    rc_t rc = check_params(&p, err);
    if (rc != RC_OK)
        return rc;
    /* Every running sequence needs its decode row in every step. */
    if (p.max_seqs > p.max_batch_tokens)
        p.max_seqs = p.max_batch_tokens;
    core_engine_t *e = calloc(1, sizeof *e);
    if (!e)
        return core_err(err, RC_NOMEM, "engine: out of memory");
    e->model = m;
    e->tok = tok;
    e->params = p;
    e->next_id = 1;
    rc = engine_alloc(e, err);
    if (rc != RC_OK)
        goto out;
    e->stats.kv_blocks_total = e->pool_blocks;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->cv);
        rc = core_err(err, RC_NOMEM, "engine: cannot start the engine thread");
    }
out:
    if (rc != RC_OK)
        engine_release(e);
    else
        *out = e;
    return rc;
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
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    engine_release(e);
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
    if (r->aset && r->router)
        return core_err(err, RC_INVALID, "a request applies an adapter set or a router, not both");
    if (r->router) {
        const core_router_t *ro = r->router;
        if (ro->n_layers != c->n_layers || ro->dim != c->dim)
            return core_err(err, RC_MISMATCH, "the router was built for another base model");
        if (r->route.top_k < 0 || r->route.top_k > ro->n_experts)
            return core_err(err, RC_INVALID, "top_k %d outside 0..%d (the router's experts)",
                            r->route.top_k, ro->n_experts);
        if (!(r->route.temperature >= 0.0f) || !isfinite(r->route.temperature))
            return core_err(err, RC_INVALID, "routing temperature must be finite and >= 0");
    }
    /* Fits alone in the pool, so it can always finish (preemption never deadlocks); an
     * X-LoRA request holds two caches. */
    long blocks = ((long)r->n_prompt + r->max_tokens + e->block_tokens - 1) / e->block_tokens;
    if (r->router && r->router->kind == CORE_ROUTER_XLORA)
        blocks *= 2;
    if (blocks > e->pool_blocks)
        return core_err(err, RC_INVALID,
                        "prompt (%d tokens) plus max_tokens (%d) needs %ld KV blocks of %d tokens "
                        "but the KV cache (--kv-cache-bytes) holds only %d",
                        r->n_prompt, r->max_tokens, blocks, e->block_tokens, e->pool_blocks);
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
    seq_t *s = seq_new(e, r);
    if (!s)
        return core_err(err, RC_NOMEM, "out of memory queueing the request");
    pthread_mutex_lock(&e->mu);
    /* Bounded queues, per group and in all: requests accepted and not yet started. */
    rc = e->stopping ? core_err(err, RC_BUSY, "the engine is stopping")
                     : core__queue_take_locked(e, s, err);
    if (rc != RC_OK) {
        pthread_mutex_unlock(&e->mu);
        seq_free(e, s);
        return rc;
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
    if (e->n_cancels == e->cap_cancels) {
        /* grows with the number of cancels per step; a failed grow drops this cancel and
         * the request simply runs to its end */
        int cap = e->cap_cancels ? 2 * e->cap_cancels : 64;
        uint64_t *c = realloc(e->cancels, (size_t)cap * sizeof *c);
        if (c) {
            e->cancels = c;
            e->cap_cancels = cap;
        }
    }
    if (e->n_cancels < e->cap_cancels)
        e->cancels[e->n_cancels++] = req_id;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void core_engine_stats(core_engine_t *e, core_engine_stats_t *out)
{
    pthread_mutex_lock(&e->mu);
    *out = e->stats;
    out->n_waiting += e->n_inbox;
    pthread_mutex_unlock(&e->mu);
}
