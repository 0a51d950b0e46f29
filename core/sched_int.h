/* sched_int.h - the engine's private types, shared by core/engine.c (sequences, steps, the
 * compute thread, the public API) and core/sched.c (groups, waiting queues, admission, fair
 * preemption, the per-group queue limits). Not a contract for other modules.
 *
 * Threads: the engine thread alone touches sequences, groups, queues, the running list and
 * the KV pool. Fields below `mu` in core_engine, and the qcount_t table, are guarded by
 * e->mu (submit, cancel and stats run on any thread). */
#ifndef CORE_SCHED_INT_H
#define CORE_SCHED_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/engine.h"
#include "core/router.h"

typedef struct group group_t;
typedef struct qcount qcount_t;
typedef struct slot slot_t; /* engine.c: one item of the step being planned */

typedef struct seq {
    uint64_t id;
    int32_t *tokens; /* prompt then generated ids */
    int n_tokens, cap;
    int n_prompt, n_gen, n_fed; /* n_fed: tokens already in the KV cache */
    int max_tokens;
    bool ignore_eos, want_logits, want_prompt_logits;
    int plog_sent;       /* prompt positions whose logits were sent (PROMPT events) */
    core_aset_t *aset;   /* retained; NULL = base */
    core_router_t *router; /* retained; routed instead of aset (NULL: not routed) */
    core_route_params_t route;
    bool dual;           /* X-LoRA: a second cache, kvs, for the scaling pass */
    float *route_sum;    /* want_routing: (n_layers, n_experts) weight sums */
    int *route_n;        /* (n_layers) (token, module) pairs summed */
    char *group_name;    /* copied at submit */
    double weight;       /* the request's group weight, sanitized at submit */
    group_t *grp;        /* engine thread: resolved at intake */
    qcount_t *queued;    /* under e->mu: counted in the queue limits until first admitted */
    uint64_t admit_tick; /* when it was (last) admitted; larger = later */
    core_sampler_params_t sampling;
    core_sampler_t *sampler;
    core_kv_t *kv;
    core_kv_t *kvs;      /* dual only: the scaling pass's cache, same positions as kv */
    core_tok_stream_t *detok;
    char *stop[CORE_MAX_STOP];
    size_t stop_len[CORE_MAX_STOP];
    int n_stop;
    char *held; /* decoded text not yet emitted: it may start a stop string */
    size_t n_held, held_cap;
    core_on_event_fn on_event;
    void *user;
    struct seq *next; /* inbox, a group's waiting queue, or the running list */
} seq_t;

/* A fair-share group: its waiting queue and what the policy needs to compare groups.
 * Lives while it has waiting or running sequences. */
struct group {
    char *name;
    double weight; /* of its most recently submitted request */
    seq_t *wait_head, *wait_tail;
    int n_waiting, n_running;
    uint64_t last_admit;   /* admit tick of its latest admission, 0 = never */
    uint64_t last_prefill; /* step that last ran one of its prompt chunks, 0 = never */
    group_t *next;
};

/* Under e->mu: requests of one group accepted and not yet started (in the inbox or never
 * admitted), for the limits submit checks. Lives while n > 0. */
struct qcount {
    char *name;
    int n;
    qcount_t *next;
};

struct core_engine {
    const core_model_t *model;
    const core_tok_t *tok;
    core_engine_params_t params;
    int pool_blocks, block_tokens; /* immutable copies, read by submit */
    /* engine thread only */
    core_fwd_t *fwd;
    core_kv_pool_t *pool;
    float *logits;          /* max_seqs * n_vocab */
    float *plogits;         /* CORE_PROMPT_LOGITS_ROWS * n_vocab, made on first use */
    slot_t *slots;          /* max_seqs */
    core_fwd_item_t *items; /* max_seqs: the slots' items in batch order */
    seq_t **cand;           /* max_seqs: scratch for ordering prompt chunks */
    seq_t *running;         /* in admission order */
    int n_running, n_waiting;
    group_t *groups;
    uint64_t tick; /* admissions so far */
    uint64_t n_steps, n_rows, n_preempted, n_fair_preempted;
    uint64_t *taken_ids; /* the cancel ids of this iteration (swapped with cancels) */
    int cap_taken;
    pthread_t thread;
    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t cv;
    seq_t *inbox_head, *inbox_tail;
    int n_inbox;
    qcount_t *queues;  /* per-group counts of accepted, not yet started requests */
    int n_queued;      /* their sum */
    uint64_t *cancels; /* ids to cancel, grown as needed */
    int n_cancels, cap_cancels;
    uint64_t next_id;
    bool stopping;
    core_engine_stats_t stats; /* published by the engine thread; n_waiting excludes inbox */
};

/* The sequence has exactly one token to feed: it is decoding (this includes the last
 * token of a prompt, which needs the same single row). */
static inline bool core__seq_decoding(const seq_t *s)
{
    return s->n_tokens - s->n_fed == 1;
}

/* The KV blocks s needs for n more positions, and holds, over both its caches. */
static inline int core__seq_blocks_needed(const seq_t *s, int n)
{
    return core_kv_blocks_needed(s->kv, n) + (s->kvs ? core_kv_blocks_needed(s->kvs, n) : 0);
}

static inline int core__seq_n_blocks(const seq_t *s)
{
    return core_kv_n_blocks(s->kv) + (s->kvs ? core_kv_n_blocks(s->kvs) : 0);
}

/* ---- core/sched.c: engine thread unless noted ---- */

/* The group named name, made if missing; NULL when out of memory. */
group_t *core__group_get(core_engine_t *e, const char *name);
/* Frees g if it has no sequences left (g may be NULL). */
void core__group_gc(core_engine_t *e, group_t *g);
void core__wait_push(core_engine_t *e, seq_t *s, bool front);
void core__wait_remove(core_engine_t *e, seq_t *s); /* s must be waiting */
void core__running_remove(core_engine_t *e, seq_t *s);
/* Drop s's KV and requeue it at the front of its group with all its tokens. */
void core__seq_preempt(core_engine_t *e, seq_t *s);
/* Admission, with fair preemption for slots (docs/ARCHITECTURE.md, "Scheduling"). */
void core__admit(core_engine_t *e);
/* The running sequence (holding blocks) to preempt when the KV pool runs dry; NULL if none. */
seq_t *core__pick_victim(const core_engine_t *e);

/* Any thread, under e->mu: count s in its group's and the total queue limits, or
 * RC_BUSY (the message names the limit) / RC_NOMEM. */
rc_t core__queue_take_locked(core_engine_t *e, seq_t *s, core_err_t *err);
/* Any thread, e->mu not held: s no longer counts (first admission or its end). Idempotent. */
void core__queue_release(core_engine_t *e, seq_t *s);
/* Under e->mu or single-threaded: frees what is left of the table (engine teardown). */
void core__queue_free_all(core_engine_t *e);

#endif
