/* sched.c - the engine's scheduling policy: fair-share groups, their waiting queues,
 * admission, fair preemption for running slots, the KV preemption victim, and the
 * per-group queue limits submit checks (docs/ARCHITECTURE.md, "Scheduling").
 *
 * Threads: everything here runs on the engine thread, except the queue-limit table
 * (core__queue_*), which lives under e->mu because submit checks it on any thread.
 *
 * Shares: a group's share is its weight; it is "n_running / weight" that admission
 * equalises. Comparisons cross-multiply (n_a * w_b against n_b * w_a) so equal shares
 * compare equal exactly. With max_seqs slots all running, a group whose running count is
 * below its fair share of the slots, max_seqs * w / (sum of the weights of the groups with
 * sequences), takes one slot from the group most over its share, but only when the move
 * cannot be reversed by the next step: (n_V - 1) / w_V >= (n_g + 1) / w_g. */
#include "core/sched_int.h"

#include <stdlib.h>
#include <string.h>

/* Fair preemptions per step at most (and one per group with waiting sequences): each
 * costs a later recompute, so a burst of new groups rebalances over a few steps. */
#define SCHED_FAIR_PER_STEP 8

/* ---- groups and queues ------------------------------------------------------------ */

group_t *core__group_get(core_engine_t *e, const char *name)
{
    for (group_t *g = e->groups; g; g = g->next)
        if (strcmp(g->name, name) == 0)
            return g;
    group_t *g = calloc(1, sizeof *g);
    if (!g || !(g->name = strdup(name))) {
        free(g);
        return NULL;
    }
    g->weight = 1;
    g->next = e->groups;
    e->groups = g;
    return g;
}

/* Groups live while they have sequences, so distinct group names cannot pile up. */
void core__group_gc(core_engine_t *e, group_t *g)
{
    if (!g || g->n_waiting || g->n_running)
        return;
    for (group_t **pp = &e->groups; *pp; pp = &(*pp)->next)
        if (*pp == g) {
            *pp = g->next;
            free(g->name);
            free(g);
            return;
        }
}

void core__wait_push(core_engine_t *e, seq_t *s, bool front)
{
    group_t *g = s->grp;
    if (front) {
        s->next = g->wait_head;
        g->wait_head = s;
        if (!g->wait_tail)
            g->wait_tail = s;
    } else {
        s->next = NULL;
        if (g->wait_tail)
            g->wait_tail->next = s;
        else
            g->wait_head = s;
        g->wait_tail = s;
    }
    g->n_waiting++;
    e->n_waiting++;
}

void core__wait_remove(core_engine_t *e, seq_t *s)
{
    group_t *g = s->grp;
    seq_t *prev = NULL;
    for (seq_t *q = g->wait_head; q; prev = q, q = q->next)
        if (q == s) {
            if (prev)
                prev->next = s->next;
            else
                g->wait_head = s->next;
            if (g->wait_tail == s)
                g->wait_tail = prev;
            g->n_waiting--;
            e->n_waiting--;
            s->next = NULL;
            return;
        }
}

static void running_add(core_engine_t *e, seq_t *s)
{
    seq_t **pp = &e->running;
    while (*pp)
        pp = &(*pp)->next;
    s->next = NULL;
    *pp = s;
    e->n_running++;
    s->grp->n_running++;
}

void core__running_remove(core_engine_t *e, seq_t *s)
{
    for (seq_t **pp = &e->running; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            s->next = NULL;
            e->n_running--;
            s->grp->n_running--;
            return;
        }
}

/* Preemption by recompute: drop the KV blocks and requeue at the front of its group with
 * every token so far (prompt + generated). Sampler, detokenizer and held text stay, so
 * once re-prefilled the output continues exactly where it stopped. */
void core__seq_preempt(core_engine_t *e, seq_t *s)
{
    core_kv_reset(s->kv);
    if (s->kvs)
        core_kv_reset(s->kvs);
    if (s->route_sum) /* the recompute sums every position again */
        memset(s->route_sum, 0, (size_t)s->router->n_layers * (size_t)s->router->n_experts *
                                    sizeof *s->route_sum);
    if (s->route_n)
        memset(s->route_n, 0, (size_t)s->router->n_layers * sizeof *s->route_n);
    s->n_fed = 0;
    core__running_remove(e, s);
    core__wait_push(e, s, true);
    e->n_preempted++;
}

/* ---- shares ----------------------------------------------------------------------- */

/* Sign of n_a / w_a - n_b / w_b. */
static int share_cmp(double n_a, double w_a, double n_b, double w_b)
{
    double l = n_a * w_b, r = n_b * w_a;
    return l < r ? -1 : l > r;
}

/* The group whose head is admitted next: the smallest n_running / weight (ties: the
 * group admitted least recently; a group never admitted wins), so one group flooding the
 * queue cannot starve another group's request. In fifo mode: the earliest request. */
static group_t *admit_pick(const core_engine_t *e)
{
    group_t *best = NULL;
    for (group_t *g = e->groups; g; g = g->next) {
        if (!g->n_waiting)
            continue;
        if (!best) {
            best = g;
        } else if (e->params.fifo) {
            if (g->wait_head->id < best->wait_head->id)
                best = g;
        } else {
            int c = share_cmp(g->n_running, g->weight, best->n_running, best->weight);
            if (c < 0 || (c == 0 && g->last_admit < best->last_admit))
                best = g;
        }
    }
    return best;
}

/* The group most over its share: the largest n_running / weight among groups running
 * something (ties: admitted most recently, so the newest work is lost). */
static group_t *over_pick(const core_engine_t *e)
{
    group_t *best = NULL;
    for (group_t *g = e->groups; g; g = g->next) {
        if (!g->n_running)
            continue;
        int c = best ? share_cmp(g->n_running, g->weight, best->n_running, best->weight) : 1;
        if (c > 0 || (c == 0 && g->last_admit > best->last_admit))
            best = g;
    }
    return best;
}

/* The running sequence of g admitted last. */
static seq_t *group_newest(const core_engine_t *e, const group_t *g)
{
    seq_t *best = NULL;
    for (seq_t *s = e->running; s; s = s->next)
        if (s->grp == g && (!best || s->admit_tick > best->admit_tick))
            best = s;
    return best;
}

/* Blocks the running decodes will take this step. */
static int decode_blocks(const core_engine_t *e)
{
    int n = 0;
    for (const seq_t *s = e->running; s; s = s->next)
        if (core__seq_decoding(s))
            n += core__seq_blocks_needed(s, 1);
    return n;
}

/* Blocks a waiting sequence needs to start: its first chunk. */
static int start_blocks(const core_engine_t *e, const seq_t *s)
{
    int chunk = s->n_tokens < e->params.max_batch_tokens ? s->n_tokens : e->params.max_batch_tokens;
    return core_kv_pool_blocks_for(e->pool, chunk) * (s->dual ? 2 : 1);
}

/* ---- admission and fair preemption -------------------------------------------------- */

/* All slots are taken: if the next candidate's group runs fewer sequences than its fair
 * share of the slots, preempt the newest sequence of the group most over its share, so
 * the candidate starts now instead of when a long sequence ends. Only when the freed
 * slot lets the candidate start this step (otherwise nothing is gained) and the move
 * cannot reverse. *reserved: blocks promised to this step's decodes and admissions. */
static bool fair_preempt(core_engine_t *e, int *reserved)
{
    group_t *g = admit_pick(e);
    if (!g)
        return false;
    double sum_w = 0;
    for (const group_t *h = e->groups; h; h = h->next)
        sum_w += h->weight; /* groups exist only while they have sequences */
    if ((double)g->n_running * sum_w >= (double)e->params.max_seqs * g->weight)
        return false; /* at or over its share: it waits for a free slot */
    group_t *v = over_pick(e);
    if (!v || v == g || share_cmp(v->n_running - 1, v->weight, g->n_running + 1, g->weight) < 0)
        return false;
    seq_t *victim = group_newest(e, v);
    int gives = core__seq_decoding(victim) ? core__seq_blocks_needed(victim, 1) : 0;
    if (start_blocks(e, g->wait_head) + *reserved - gives >
        core_kv_pool_n_free(e->pool) + core__seq_n_blocks(victim))
        return false;
    core__seq_preempt(e, victim);
    *reserved -= gives;
    e->n_fair_preempted++;
    return true;
}

/* How many fair preemptions this step may make: one per group with waiting sequences. */
static int fair_budget(const core_engine_t *e)
{
    int n = 0;
    if (e->params.fifo)
        return 0;
    for (const group_t *g = e->groups; g && n < SCHED_FAIR_PER_STEP; g = g->next)
        n += g->n_waiting > 0;
    return n;
}

/* Admit waiting sequences while max_seqs allows (taking slots by fair preemption when
 * none is free). The chosen one (FIFO in its group) only starts when the pool holds the
 * blocks for its first chunk besides what this step's decodes take; otherwise admission
 * stops and it keeps its turn, so a long prompt is not overtaken forever by short ones
 * and a new sequence does not force a KV preemption. */
void core__admit(core_engine_t *e)
{
    int reserved = decode_blocks(e);
    int n_fair = fair_budget(e);
    for (;;) {
        if (e->n_running >= e->params.max_seqs) {
            if (n_fair <= 0 || !fair_preempt(e, &reserved))
                return;
            n_fair--;
        }
        group_t *g = admit_pick(e);
        if (!g)
            return;
        seq_t *s = g->wait_head;
        int need = start_blocks(e, s);
        if (need + reserved > core_kv_pool_n_free(e->pool))
            return;
        reserved += need;
        core__wait_remove(e, s);
        core__queue_release(e, s);
        s->admit_tick = ++e->tick;
        g->last_admit = s->admit_tick;
        running_add(e, s);
    }
}

/* The KV preemption victim: among running sequences holding blocks, the one admitted last
 * in the group most over its share (largest n_running / weight: that group pays, and the
 * newest work is lost). In fifo mode simply the one admitted last. */
seq_t *core__pick_victim(const core_engine_t *e)
{
    seq_t *best = NULL;
    for (seq_t *s = e->running; s; s = s->next) {
        if (core__seq_n_blocks(s) == 0) /* preempting it would free nothing */
            continue;
        int c = 0;
        if (best && !e->params.fifo)
            c = share_cmp(s->grp->n_running, s->grp->weight, best->grp->n_running,
                          best->grp->weight);
        if (!best || c > 0 || (c == 0 && s->admit_tick > best->admit_tick))
            best = s;
    }
    return best;
}

/* ---- queue limits (under e->mu) ------------------------------------------------------ */

/* A linear list: it holds only groups with requests not yet started, at most
 * 4 * max_queue of them, and in practice a handful of tenants. */
rc_t core__queue_take_locked(core_engine_t *e, seq_t *s, core_err_t *err)
{
    qcount_t *q = e->queues;
    while (q && strcmp(q->name, s->group_name) != 0)
        q = q->next;
    int limit = e->params.max_queue;
    if (q && q->n >= limit)
        return core_err(err, RC_BUSY,
                        "the request queue of group '%.64s' is full (%d waiting, --max-queue)",
                        s->group_name, q->n);
    if ((long)e->n_queued >= 4L * limit)
        return core_err(err, RC_BUSY,
                        "the request queue is full (%d waiting over all groups, 4 x --max-queue)",
                        e->n_queued);
    if (!q) {
        q = calloc(1, sizeof *q);
        if (!q || !(q->name = strdup(s->group_name))) {
            free(q);
            return core_err(err, RC_NOMEM, "out of memory queueing the request");
        }
        q->next = e->queues;
        e->queues = q;
    }
    q->n++;
    e->n_queued++;
    s->queued = q;
    return RC_OK;
}

static void queue_unlink_locked(core_engine_t *e, qcount_t *q)
{
    for (qcount_t **pp = &e->queues; *pp; pp = &(*pp)->next)
        if (*pp == q) {
            *pp = q->next;
            free(q->name);
            free(q);
            return;
        }
}

/* s->queued is written under e->mu by submit before the engine thread ever sees s (the
 * inbox hand-off is under the same lock), so reading it here without the lock is safe. */
void core__queue_release(core_engine_t *e, seq_t *s)
{
    if (!s->queued)
        return;
    pthread_mutex_lock(&e->mu);
    qcount_t *q = s->queued;
    e->n_queued--;
    if (--q->n == 0)
        queue_unlink_locked(e, q);
    pthread_mutex_unlock(&e->mu);
    s->queued = NULL;
}

void core__queue_free_all(core_engine_t *e)
{
    while (e->queues)
        queue_unlink_locked(e, e->queues);
    e->n_queued = 0;
}
