/* model.h - a Hugging Face Llama-family model: config, weights, KV cache, forward pass.
 *
 * core_model_load reads DIR/config.json (LlamaForCausalLM, MistralForCausalLM,
 * Qwen2ForCausalLM: q/k/v bias, rope_theta, tied embeddings, GQA; rope_scaling types
 * "linear" and "llama3", anything else refused), DIR/generation_config.json (optional:
 * eos/bos ids) and the weights via core_st_open_dir, converting F32/F16/BF16 to f32 once.
 * Every expected tensor must be present with the exact shape; unknown extra tensors are
 * refused too (they mean a different architecture), except rotary inv_freq buffers.
 *
 * core_forward runs one batched step over several sequences of different lengths: each
 * item appends n_tokens to its own KV cache and gets logits for its last token (or all
 * tokens). Linear layers run as one GEMM over all rows of the batch; each item's LoRA (if
 * any) adds s * (x A^T) B^T to its own rows, unmerged.
 *
 * Threads: a loaded model is immutable and may be read from any thread. A core_fwd_t
 * (scratch) and a core_kv_t belong to one thread at a time (the engine thread).
 * Ownership: the model owns its weights; callers own kv caches and fwd scratch. */
#ifndef CORE_MODEL_H
#define CORE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rc.h"

#define CORE_MAX_EOS 8

/* The targetable linear layers of one decoder layer, in PEFT's module names. */
typedef enum {
    CORE_MOD_Q, /* self_attn.q_proj (n_heads*head_dim, dim)  */
    CORE_MOD_K, /* self_attn.k_proj (n_kv_heads*head_dim, dim) */
    CORE_MOD_V, /* self_attn.v_proj (n_kv_heads*head_dim, dim) */
    CORE_MOD_O, /* self_attn.o_proj (dim, n_heads*head_dim)  */
    CORE_MOD_GATE, /* mlp.gate_proj (hidden_dim, dim) */
    CORE_MOD_UP,   /* mlp.up_proj   (hidden_dim, dim) */
    CORE_MOD_DOWN, /* mlp.down_proj (dim, hidden_dim) */
    CORE_MOD__COUNT
} core_mod_t;

/* "q_proj", ...; and the parent path "self_attn" or "mlp". */
const char *core_mod_name(core_mod_t m);
const char *core_mod_parent(core_mod_t m);

typedef struct {
    char arch[64];        /* "LlamaForCausalLM", ... */
    char model_type[32];  /* "llama", "mistral", "qwen2" */
    int n_vocab;
    int dim;              /* hidden_size */
    int hidden_dim;       /* intermediate_size */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;         /* head_dim if given, else dim / n_heads */
    int max_pos;          /* max_position_embeddings */
    float norm_eps;       /* rms_norm_eps */
    float rope_theta;
    int rope_scaling;     /* 0 none, 1 linear, 2 llama3 */
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_orig_max_pos;
    bool tie_embeddings;
    bool qkv_bias;
    int bos_id;           /* -1 if unknown */
    int eos_ids[CORE_MAX_EOS];
    int n_eos;
} core_config_t;

/* Parse a config.json text. Used by core_model_load and tests. */
rc_t core_config_parse(const char *json_text, core_config_t *out, core_err_t *err);

/* (n_out, n_in) and the input/output width of module m in a model of this config. */
void core_mod_shape(const core_config_t *cfg, core_mod_t m, int *n_out, int *n_in);

typedef struct {
    float *w;  /* (n_out, n_in) */
    float *b;  /* (n_out) or NULL */
    int n_out, n_in;
} core_linear_t;

typedef struct {
    float *attn_norm; /* (dim) input_layernorm */
    float *mlp_norm;  /* (dim) post_attention_layernorm */
    core_linear_t lin[CORE_MOD__COUNT];
} core_layer_t;

typedef struct {
    core_config_t cfg;
    float *embed;      /* (n_vocab, dim) */
    float *final_norm; /* (dim) */
    float *lm_head;    /* (n_vocab, dim); == embed when tied */
    core_layer_t *layers;
    char fingerprint[65]; /* hex sha256 over config and tensor names/shapes */
    char name[128];       /* served model name (folder base name unless set) */
} core_model_t;

rc_t core_model_load(const char *dir, core_model_t **out, core_err_t *err);

/* Progress of a load: called on the loading thread after each tensor, with the f32 bytes
 * converted so far and in all (for a progress bar or log lines). */
typedef struct {
    void (*progress)(void *user, size_t done_bytes, size_t total_bytes);
    void *user;
} core_model_load_params_t;
rc_t core_model_load_ex(const char *dir, const core_model_load_params_t *p, core_model_t **out,
                        core_err_t *err);
void core_model_free(core_model_t *m);

/* ---- paged KV cache ------------------------------------------------------------- *
 * A pool owns a fixed number of blocks (budget_bytes / block_bytes); a block holds K and V
 * of block_tokens consecutive positions for every layer. Each sequence's core_kv_t has a
 * block table, so sequences of any length share the pool without fragmentation. The pool
 * and its caches belong to one thread (the engine thread). */
typedef struct core_kv_pool core_kv_pool_t;
typedef struct core_kv core_kv_t;

/* block_tokens >= 1 (16 is a good default). RC_LIMIT when the budget holds no block. */
rc_t core_kv_pool_new(const core_config_t *cfg, size_t budget_bytes, int block_tokens,
                      core_kv_pool_t **out, core_err_t *err);
void core_kv_pool_free(core_kv_pool_t *p); /* every cache must be freed first */
int core_kv_pool_n_blocks(const core_kv_pool_t *p);
int core_kv_pool_n_free(const core_kv_pool_t *p);
int core_kv_pool_block_tokens(const core_kv_pool_t *p);
size_t core_kv_pool_block_bytes(const core_kv_pool_t *p);
/* Blocks a sequence of n_tokens positions occupies. */
int core_kv_pool_blocks_for(const core_kv_pool_t *p, int n_tokens);

/* An empty cache (no blocks yet) drawing from pool. NULL on out of memory. */
core_kv_t *core_kv_new(core_kv_pool_t *pool);
void core_kv_free(core_kv_t *kv); /* returns its blocks to the pool */
int core_kv_len(const core_kv_t *kv);
/* Blocks the cache holds now (0 after core_kv_reset). */
int core_kv_n_blocks(const core_kv_t *kv);
/* Extra blocks needed to append n_new positions. */
int core_kv_blocks_needed(const core_kv_t *kv, int n_new);
/* Take the blocks for n_new more positions now. RC_BUSY (nothing taken) when the pool has
 * too few free blocks; RC_LIMIT past max_pos. */
rc_t core_kv_reserve(core_kv_t *kv, int n_new);
/* Drop every position and return all blocks (preemption); the cache stays usable. */
void core_kv_reset(core_kv_t *kv);

struct core_aset;   /* core/lora.h */
struct core_router; /* core/router.h */

typedef struct {
    const int32_t *tokens;  /* n_tokens new tokens, appended after core_kv_len(kv) */
    int n_tokens;
    core_kv_t *kv;
    const struct core_aset *aset; /* NULL: base only; else its LoRAs, weighted */
    float *logits;           /* OUT: n_vocab floats (last token), or n_tokens*n_vocab if all_logits */
    bool all_logits;
    /* Routed items (aset NULL): per-token expert weights from router, with the request's
     * overrides (0 = the router's top_k / temperature). An X-LoRA item also needs
     * kv_scaling, the scaling pass's own cache from the same pool, which must hold as many
     * positions as kv (both advance together). */
    const struct core_router *router;
    int route_top_k;
    float route_temperature;
    core_kv_t *kv_scaling;
    /* Optional OUT for routed items (return_routing): route_sum[layer * n_experts + e] +=
     * expert e's weight as applied (X-LoRA: times global_scaling_weight) summed over this
     * step's tokens and the layer's routed modules (not in the X-LoRA scaling pass);
     * route_n[layer] += the number of (token, module) pairs in that sum. NULL: skipped. */
    float *route_sum;
    int *route_n;
} core_fwd_item_t;

/* Scratch for core_forward. core_fwd_reserve sizes it for the largest step (rows = token
 * budget, rank = largest rank of one LoRA) so steady-state steps never allocate;
 * core_forward still grows it if a step is larger. */
typedef struct core_fwd core_fwd_t;
core_fwd_t *core_fwd_new(const core_model_t *m);
rc_t core_fwd_reserve(core_fwd_t *f, int max_rows, int max_rank, int max_items);
void core_fwd_free(core_fwd_t *f);

/* One batched step. Rows are processed in item order; items whose adapter sets are equal
 * (core_aset_equal) and adjacent form one segment: per targeted module one shrink and one
 * expand per LoRA of the set over the segment's rows, after ONE base GEMM over all rows.
 * Token ids must be < n_vocab and positions < max_pos (RC_INVALID/RC_LIMIT otherwise);
 * caches lacking blocks are reserved here (RC_BUSY when the pool is short); on any error
 * nothing is appended. */
rc_t core_forward(const core_model_t *m, core_fwd_t *f, core_fwd_item_t *items, int n_items,
                  core_err_t *err);

#endif
