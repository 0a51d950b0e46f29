/* engine.h - the generation engine: one compute thread running batched steps.
 *
 * Submitted requests join the running batch between steps (continuous batching): each
 * step prefills the prompts of new sequences and decodes one token of every running
 * sequence in one core_forward call. Per sequence the engine samples, detokenizes as a
 * stream (valid UTF-8 only), applies stop strings (text held back while it may still be
 * the start of a stop string; the stop string itself is never emitted), max_tokens and
 * EOS (unless ignore_eos).
 *
 * Threads: submit/cancel from any thread. on_event runs on the engine thread, must not
 * block, and must copy what it keeps (text and ids are borrowed for the call). After the
 * CORE_EV_DONE or CORE_EV_ERROR event of a request no more events come for it.
 * Ownership: the engine copies the request (prompt, stop strings, group) and holds a
 * reference to its adapter set or router until the final event; model and tokenizer are borrowed for
 * the engine's life. */
#ifndef CORE_ENGINE_H
#define CORE_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/lora.h"
#include "core/model.h"
#include "core/router.h"
#include "core/rc.h"
#include "core/sampler.h"
#include "core/tokenizer.h"

#define CORE_MAX_STOP 8
#define CORE_PROMPT_LOGITS_ROWS 64 /* prompt rows per step for want_prompt_logits */

typedef enum { CORE_EV_TOKEN, CORE_EV_DONE, CORE_EV_ERROR, CORE_EV_PROMPT } core_ev_kind_t;
typedef enum { CORE_FINISH_STOP, CORE_FINISH_LENGTH, CORE_FINISH_CANCELLED } core_finish_t;

typedef struct {
    core_ev_kind_t kind;
    uint64_t req_id;
    int32_t token;        /* TOKEN: the sampled id */
    const char *text;     /* TOKEN/DONE: newly completed text (borrowed), may be empty */
    size_t text_len;
    core_finish_t finish; /* DONE */
    int n_prompt, n_gen;  /* DONE: usage */
    rc_t rc;              /* ERROR */
    const char *message;  /* ERROR (borrowed) */
    const float *logits;  /* TOKEN with want_logits: n_vocab floats (borrowed);
                           * PROMPT: n_rows * n_vocab floats, row j for position pos0 + j */
    int n_vocab;
    int pos0, n_rows;     /* PROMPT: row j is the distribution of prompt token pos0 + j + 1 */
    /* DONE of a routed request with want_routing: routing[l * routing_experts + e] is the
     * mean weight of expert e over the (token, module) pairs of layer l that were routed
     * (0 when none); borrowed for the call. NULL otherwise. */
    const float *routing;
    int routing_layers, routing_experts;
} core_event_t;

typedef void (*core_on_event_fn)(void *user, const core_event_t *ev);

typedef struct {
    const int32_t *prompt; /* copied */
    int n_prompt;          /* >= 1 */
    core_aset_t *aset;     /* NULL for base; retained by the engine */
    /* Routed instead (aset NULL): per-token expert weights from router (core/router.h),
     * retained by the engine; route holds the request's top_k / temperature overrides
     * (0 = the router's). An X-LoRA request holds two KV caches (the scaling pass's too),
     * so it needs twice the blocks. */
    core_router_t *router;
    core_route_params_t route;
    bool want_routing;     /* DONE carries the per-layer mean weights (routed requests) */
    core_sampler_params_t sampling;
    int max_tokens;        /* >= 0 */
    bool ignore_eos;
    const char *stop[CORE_MAX_STOP]; /* copied; n_stop used */
    int n_stop;
    /* Fair-share group (tenant, else the adapter spec); copied, "" for none. Sequences of
     * one group cannot starve another group's (see docs/ARCHITECTURE.md). */
    const char *group;
    /* The group's share of the running slots, relative to the other groups' (> 0; 0, a
     * negative or a non-finite value means 1; clamped to 1/1000 .. 1000). A group's weight is
     * that of its most recently submitted request (a tenant has one share). Default 1. */
    double group_weight;
    bool want_logits;      /* TOKEN events carry the logits the token was sampled from */
    /* PROMPT events (before any TOKEN) carry the logits at prompt positions 0 .. n_prompt-2,
     * each the model's distribution of the next prompt token, in order, each row once (also
     * across preemptions), in pieces of at most CORE_PROMPT_LOGITS_ROWS rows. With
     * max_tokens 0 the prompt is still run (scoring), then DONE. */
    bool want_prompt_logits;
    core_on_event_fn on_event;
    void *user;
} core_request_t;

core_request_t core_request_default(void);

typedef struct {
    int max_batch_tokens;   /* tokens per step (prompt chunks + decodes), default 2048 */
    int max_seqs;           /* running sequences, default 64 */
    int max_queue;          /* requests one group may have waiting before RC_BUSY (all
                             * groups together: 4 * max_queue), default 256 */
    size_t kv_budget_bytes; /* KV cache pool, default 1 GiB */
    int kv_block_tokens;    /* positions per KV block, default 16 */
    int max_rank;           /* largest LoRA rank expected (one adapter's r), sizes scratch; default 256 */
    /* Plain arrival order: admission ignores groups and weights and there is no fair
     * preemption (the KV victim is the sequence admitted last). For benchmarks that show
     * what fair share buys; default false. The queue limits above still apply. */
    bool fifo;
} core_engine_params_t;
core_engine_params_t core_engine_default_params(void);

typedef struct core_engine core_engine_t;

/* Starts the compute thread. */
rc_t core_engine_new(const core_model_t *m, const core_tok_t *tok, core_engine_params_t p,
                     core_engine_t **out, core_err_t *err);
/* Cancels everything still running (each gets DONE/cancelled), joins the thread. */
void core_engine_free(core_engine_t *e);

/* OUT: *req_id. RC_INVALID when the prompt plus max_tokens exceed the model context, can
 * never fit in the KV pool, or a token id is out of range (the message names the limit),
 * RC_BUSY when the request's group already has max_queue requests waiting or all groups
 * together have 4 * max_queue (the message says which). Waiting means accepted and not yet
 * started; a preempted sequence does not count again. */
rc_t core_engine_submit(core_engine_t *e, const core_request_t *r, uint64_t *req_id,
                        core_err_t *err);
/* Cancel a request; its DONE (finish=cancelled) event follows within one step.
 * Unknown or finished ids are ignored. */
void core_engine_cancel(core_engine_t *e, uint64_t req_id);

/* A consistent snapshot, callable from any thread (metrics, tests). */
typedef struct {
    int n_running, n_waiting;
    int kv_blocks_total, kv_blocks_used;
    uint64_t n_steps;          /* forward passes run */
    uint64_t n_preempted;      /* sequences whose KV was dropped to make room (recomputed) */
    uint64_t n_fair_preempted; /* of n_preempted: slots taken from a group over its share */
    uint64_t n_rows;           /* token rows processed, summed over steps */
} core_engine_stats_t;
void core_engine_stats(core_engine_t *e, core_engine_stats_t *out);

#endif
