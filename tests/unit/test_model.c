/* test_model.c - config parsing, the batched forward pass against a naive reference
 * (tests/unit/model_fixture.h), the paged KV cache (block sizes agree, all-or-none
 * reservation, accounting), GQA, LoRA and adapter sets in one heterogeneous batch
 * (== alone == merged), and validation. Loading from disk is in test_model_load.c. */
#include "tests/unit/model_fixture.h"

#include "core/gemm.h"
#include "core/pool.h"

/* ---- config parsing --------------------------------------------------------------- */

TEST(mod_names_and_shapes)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    ASSERT_STREQ(core_mod_name(CORE_MOD_Q), "q_proj");
    ASSERT_STREQ(core_mod_name(CORE_MOD_DOWN), "down_proj");
    ASSERT_STREQ(core_mod_parent(CORE_MOD_O), "self_attn");
    ASSERT_STREQ(core_mod_parent(CORE_MOD_GATE), "mlp");
    int o, i;
    core_mod_shape(&c, CORE_MOD_K, &o, &i);
    ASSERT_EQ(o, 16);
    ASSERT_EQ(i, 32);
    core_mod_shape(&c, CORE_MOD_O, &o, &i);
    ASSERT_EQ(o, 32);
    ASSERT_EQ(i, 32);
    core_mod_shape(&c, CORE_MOD_DOWN, &o, &i);
    ASSERT_EQ(o, 32);
    ASSERT_EQ(i, 48);
}

TEST(config_llama)
{
    core_config_t c =
        parse_ok(TINY_JSON(",\"bos_token_id\":1,\"eos_token_id\":2,\"tie_word_embeddings\":false,"
                           "\"rope_scaling\":{\"rope_type\":\"llama3\","
                           "\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                           "\"original_max_position_embeddings\":8192},\"hidden_act\":\"silu\""));
    ASSERT_STREQ(c.arch, "LlamaForCausalLM");
    ASSERT_STREQ(c.model_type, "llama");
    ASSERT_EQ(c.n_vocab, 61);
    ASSERT_EQ(c.dim, 32);
    ASSERT_EQ(c.hidden_dim, 48);
    ASSERT_EQ(c.n_layers, 2);
    ASSERT_EQ(c.n_heads, 4);
    ASSERT_EQ(c.n_kv_heads, 2);
    ASSERT_EQ(c.head_dim, 8);
    ASSERT_EQ(c.max_pos, 64);
    ASSERT_NEAR(c.norm_eps, 1e-5, 1e-12);
    ASSERT_EQ(c.rope_scaling, 2);
    ASSERT_NEAR(c.rope_factor, 8.0, 0);
    ASSERT_NEAR(c.rope_high_freq_factor, 4.0, 0);
    ASSERT_EQ(c.rope_orig_max_pos, 8192);
    ASSERT(!c.tie_embeddings && !c.qkv_bias);
    ASSERT_EQ(c.bos_id, 1);
    ASSERT_EQ(c.n_eos, 1);
    ASSERT_EQ(c.eos_ids[0], 2);
}

TEST(config_defaults)
{
    core_config_t c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,"
                               "\"hidden_size\":64,\"intermediate_size\":128,"
                               "\"num_hidden_layers\":1,\"num_attention_heads\":4,"
                               "\"rope_scaling\":null}");
    ASSERT_EQ(c.n_kv_heads, 4);
    ASSERT_EQ(c.head_dim, 16);
    ASSERT_EQ(c.max_pos, 2048);
    ASSERT_NEAR(c.rope_theta, 10000.0, 0);
    ASSERT_NEAR(c.norm_eps, 1e-6, 1e-12);
    ASSERT_EQ(c.rope_scaling, 0);
    ASSERT_EQ(c.bos_id, -1);
    ASSERT_EQ(c.n_eos, 0);
    ASSERT_STREQ(c.model_type, "llama");
    /* linear scaling with the legacy "type" key; attention_bias gives q/k/v bias */
    c = parse_ok(TINY_JSON(",\"rope_scaling\":{\"type\":\"linear\",\"factor\":2.0},"
                           "\"attention_bias\":true,\"head_dim\":16"));
    ASSERT_EQ(c.rope_scaling, 1);
    ASSERT_NEAR(c.rope_factor, 2.0, 0);
    ASSERT(c.qkv_bias);
    ASSERT_EQ(c.head_dim, 16);
}

TEST(config_mistral_qwen2)
{
    const char *mistral = "{\"architectures\":[\"MistralForCausalLM\"],\"model_type\":\"mistral\","
                          "\"vocab_size\":32000,\"hidden_size\":4096,\"intermediate_size\":14336,"
                          "\"num_hidden_layers\":32,\"num_attention_heads\":32,"
                          "\"num_key_value_heads\":8,\"max_position_embeddings\":32768,"
                          "\"rms_norm_eps\":1e-05,\"rope_theta\":1000000.0,"
                          "\"sliding_window\":4096,\"tie_word_embeddings\":false,"
                          "\"bos_token_id\":1,\"eos_token_id\":2,\"torch_dtype\":\"bfloat16\"}";
    core_config_t c = parse_ok(mistral);
    ASSERT_STREQ(c.model_type, "mistral");
    ASSERT_EQ(c.n_kv_heads, 8);
    ASSERT_EQ(c.head_dim, 128);
    ASSERT_EQ(c.max_pos, 4096); /* never past the sliding window */
    ASSERT_NEAR(c.rope_theta, 1e6, 0);
    ASSERT(!c.qkv_bias);

    const char *qwen = "{\"architectures\":[\"Qwen2ForCausalLM\"],\"model_type\":\"qwen2\","
                       "\"vocab_size\":151936,\"hidden_size\":896,\"intermediate_size\":4864,"
                       "\"num_hidden_layers\":24,\"num_attention_heads\":14,"
                       "\"num_key_value_heads\":2,\"max_position_embeddings\":32768,"
                       "\"rms_norm_eps\":1e-06,\"rope_theta\":1000000.0,"
                       "\"sliding_window\":32768,\"use_sliding_window\":false,"
                       "\"tie_word_embeddings\":true,\"bos_token_id\":151643,"
                       "\"eos_token_id\":[151645,151643]}";
    c = parse_ok(qwen);
    ASSERT(c.qkv_bias);
    ASSERT(c.tie_embeddings);
    ASSERT_EQ(c.head_dim, 64);
    ASSERT_EQ(c.max_pos, 32768);
    ASSERT_EQ(c.n_eos, 2);
    ASSERT_EQ(c.eos_ids[0], 151645);
    ASSERT_EQ(c.eos_ids[1], 151643);
}

/* json must be refused with rc and a message containing needle. */
static void refused(const char *json, rc_t rc, const char *needle)
{
    core_config_t c;
    core_err_t err = {{0}};
    ASSERT_RC(core_config_parse(json, &c, &err), rc, &err);
    if (!strstr(err.msg, needle))
        HARNESS_FAIL("message '%s' does not name '%s'", err.msg, needle);
}

TEST(config_refused)
{
    refused(TINY_JSON(",\"hidden_size\":\"32\""), RC_FORMAT, "config: invalid JSON");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":61,"
            "\"hidden_size\":\"32\"}",
            RC_FORMAT, "hidden_size");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":32}", RC_FORMAT,
            "vocab_size");
    refused("{\"vocab_size\":61}", RC_FORMAT, "architectures");
    refused("{\"architectures\":[\"GPT2LMHeadModel\"]}", RC_UNSUPPORTED, "GPT2LMHeadModel");
    refused("{\"architectures\":\"LlamaForCausalLM\"}", RC_FORMAT, "architectures");
    refused("[1,2]", RC_FORMAT, "object");
    refused("{\"a\":1,", RC_FORMAT, "JSON");
    refused(TINY_JSON(",\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4.0}"), RC_UNSUPPORTED,
            "yarn");
    refused(TINY_JSON(",\"rope_scaling\":{\"type\":\"dynamic\",\"factor\":4.0}"), RC_UNSUPPORTED,
            "dynamic");
    refused(TINY_JSON(",\"rope_scaling\":{\"type\":\"linear\"}"), RC_FORMAT, "factor");
    refused(TINY_JSON(",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0}"), RC_FORMAT,
            "low_freq_factor");
    refused(TINY_JSON(",\"rope_scaling\":\"linear\""), RC_FORMAT, "rope_scaling");
    refused(TINY_JSON(",\"rms_norm_eps\":-1"), RC_FORMAT, "rms_norm_eps");
    refused(TINY_JSON(",\"rope_theta\":\"big\""), RC_FORMAT, "rope_theta");
    refused(TINY_JSON(",\"tie_word_embeddings\":1"), RC_FORMAT, "tie_word_embeddings");
    refused(TINY_JSON(",\"hidden_act\":\"gelu\""), RC_UNSUPPORTED, "gelu");
    refused(TINY_JSON(",\"mlp_bias\":true"), RC_UNSUPPORTED, "mlp_bias");
    refused(TINY_JSON(",\"head_dim\":7"), RC_FORMAT, "head_dim");
    refused(TINY_JSON(",\"eos_token_id\":[2,\"x\"]"), RC_FORMAT, "eos_token_id");
    refused(TINY_JSON(",\"eos_token_id\":[1,2,3,4,5,6,7,8,9]"), RC_LIMIT, "eos_token_id");
    refused(TINY_JSON(",\"bos_token_id\":61"), RC_FORMAT, "bos_token_id");
    /* limits on absurd sizes; the duplicate-key check also runs (last key wins nowhere) */
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":2000000}", RC_LIMIT,
            "vocab_size");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,"
            "\"hidden_size\":100000}",
            RC_LIMIT, "hidden_size");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,"
            "\"intermediate_size\":64,\"num_hidden_layers\":513}",
            RC_LIMIT, "num_hidden_layers");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":0}", RC_FORMAT, "vocab_size");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,"
            "\"intermediate_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
            "\"num_key_value_heads\":3}",
            RC_FORMAT, "num_key_value_heads");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,"
            "\"intermediate_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":6}",
            RC_FORMAT, "num_attention_heads");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,\"vocab_size\":100}",
            RC_FORMAT, "JSON");
}

/* ---- forward -------------------------------------------------------------------- */

TEST(forward_gqa_matches_reference)
{
    /* n_heads 4 over n_kv_heads 2: heads 0,1 read kv head 0, heads 2,3 kv head 1 */
    core_config_t c = parse_ok(TINY_JSON(""));
    ASSERT_EQ(c.n_heads / c.n_kv_heads, 2);
    core_model_t *m = tiny_model(&c, 7);
    check_vs_ref(m, 9, 3, 2e-4);
    check_vs_ref(m, 1, 4, 2e-4);
    tiny_free(m);
}

TEST(forward_mha_and_mqa)
{
    core_config_t c = parse_ok(TINY_JSON_KV("4", ""));
    core_model_t *m = tiny_model(&c, 8);
    check_vs_ref(m, 6, 5, 2e-4);
    tiny_free(m);
    c = parse_ok(TINY_JSON_KV("1", ",\"head_dim\":6"));
    m = tiny_model(&c, 9);
    check_vs_ref(m, 6, 5, 2e-4);
    tiny_free(m);
}

TEST(forward_qkv_bias_and_tied)
{
    core_config_t c =
        parse_ok("{\"architectures\":[\"Qwen2ForCausalLM\"],\"vocab_size\":40,\"hidden_size\":24,"
                 "\"intermediate_size\":40,\"num_hidden_layers\":2,\"num_attention_heads\":6,"
                 "\"num_key_value_heads\":2,\"max_position_embeddings\":32,\"rms_norm_eps\":1e-6,"
                 "\"rope_theta\":1000000.0,\"tie_word_embeddings\":true}");
    ASSERT(c.qkv_bias && c.tie_embeddings);
    core_model_t *m = tiny_model(&c, 11);
    ASSERT(m->lm_head == m->embed && m->layers[1].lin[CORE_MOD_K].b);
    check_vs_ref(m, 8, 7, 2e-4);
    tiny_free(m);
}

TEST(forward_rope_scaling)
{
    const char *plain = TINY_JSON("");
    const char *lin = TINY_JSON(",\"rope_scaling\":{\"type\":\"linear\",\"factor\":4.0}");
    const char *l3 = TINY_JSON(",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,"
                               "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                               "\"original_max_position_embeddings\":64}");
    const char *cfgs[3] = {plain, lin, l3};
    float *out[3];
    int32_t *tok = seq_tokens(12, 8, 61);
    for (int i = 0; i < 3; i++) {
        core_config_t c = parse_ok(cfgs[i]);
        core_model_t *m = tiny_model(&c, 12); /* same weights each time */
        check_vs_ref(m, 12, 8, 2e-4);
        out[i] = run_alone(m, tok, 12, NULL);
        tiny_free(m);
    }
    /* the scalings really change the result */
    ASSERT(max_diff(out[0], out[1], 12 * 61) > 1e-3);
    ASSERT(max_diff(out[0], out[2], 12 * 61) > 1e-3);
    ASSERT(max_diff(out[1], out[2], 12 * 61) > 1e-3);
    free(tok), free(out[0]), free(out[1]), free(out[2]);
}

TEST(forward_batched_equals_alone)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 13);
    const int lens[3] = {1, 4, 7};
    int32_t *tok[3];
    float *alone[3], *got[3];
    core_kv_pool_t *pool = pool_for(&c, 3);
    core_kv_t *kv[3];
    core_fwd_item_t it[3];
    core_fwd_t *f = core_fwd_new(m);
    core_err_t err = {{0}};
    for (int i = 0; i < 3; i++) {
        tok[i] = seq_tokens(lens[i], 20 + i, c.n_vocab);
        alone[i] = run_alone(m, tok[i], lens[i], NULL);
        kv[i] = core_kv_new(pool);
        /* middle item: all logits; the others the last row only */
        got[i] = malloc((size_t)lens[i] * c.n_vocab * sizeof(float));
        it[i] = (core_fwd_item_t){
            .tokens = tok[i], .n_tokens = lens[i], .kv = kv[i], .logits = got[i],
            .all_logits = i == 1};
    }
    ASSERT_RC(core_forward(m, f, it, 3, &err), RC_OK, &err);
    for (int i = 0; i < 3; i++) {
        size_t V = (size_t)c.n_vocab;
        ASSERT_EQ(core_kv_len(kv[i]), lens[i]);
        if (i == 1)
            ASSERT_NEAR(max_diff(got[i], alone[i], lens[i] * V), 0, 1e-5);
        else
            ASSERT_NEAR(max_diff(got[i], alone[i] + (lens[i] - 1) * V, V), 0, 1e-5);
    }
    /* and the batched result is right, not just consistent */
    double *ref = malloc(7 * (size_t)c.n_vocab * sizeof *ref);
    ref_forward(m, tok[2], 7, ref);
    ASSERT_NEAR(max_diff_ref(got[2], ref + 6 * c.n_vocab, (size_t)c.n_vocab), 0, 2e-4);
    for (int i = 0; i < 3; i++) {
        free(tok[i]), free(alone[i]), free(got[i]);
        core_kv_free(kv[i]);
    }
    ASSERT_EQ(core_kv_pool_n_free(pool), core_kv_pool_n_blocks(pool));
    core_kv_pool_free(pool);
    free(ref);
    core_fwd_free(f);
    tiny_free(m);
}

/* Two sequences decoded side by side in blocks of bt positions: a prefills n_pre tokens
 * and b 1, then both decode one token a step until a reaches n. Returns every step's
 * logits of a then b ((n - n_pre + 1) * 2 rows), each checked against one full forward.
 * Then one more token is RC_LIMIT when n == max_pos, leaving the cache alone. */
static float *decode_steps(const core_model_t *m, int bt, uint32_t seed, int n_pre, int n)
{
    const core_config_t *c = &m->cfg;
    size_t V = (size_t)c->n_vocab, n_steps = (size_t)(n - n_pre + 1);
    int32_t *tok = seq_tokens(n, seed + 1, c->n_vocab);
    float *full = run_alone(m, tok, n, NULL), *out = malloc(2 * n_steps * V * sizeof *out);
    core_kv_pool_t *pool = pool_new(c, bt, 2 * ((c->max_pos + bt - 1) / bt));
    core_fwd_t *f = core_fwd_new(m);
    core_kv_t *kv[2] = {core_kv_new(pool), core_kv_new(pool)};
    core_err_t err = {{0}};
    core_fwd_item_t it[2] = {{.tokens = tok, .n_tokens = n_pre, .kv = kv[0]},
                             {.tokens = tok, .n_tokens = 1, .kv = kv[1]}};
    ASSERT_RC(core_fwd_reserve(f, n_pre + 1, 0, 2), RC_OK, NULL);
    for (int s = n_pre; s <= n; s++) {
        it[0].logits = out + (size_t)(s - n_pre) * 2 * V;
        it[1].logits = it[0].logits + V;
        ASSERT_RC(core_forward(m, f, it, 2, &err), RC_OK, &err);
        ASSERT_EQ(core_kv_len(kv[0]), s);
        ASSERT_NEAR(max_diff(it[0].logits, full + (size_t)(s - 1) * V, V), 0, 1e-5);
        ASSERT_NEAR(max_diff(it[1].logits, full + (size_t)(s - n_pre) * V, V), 0, 1e-5);
        it[0].tokens = tok + s;
        it[0].n_tokens = 1;
        it[1].tokens = tok + s - n_pre + 1;
    }
    ASSERT_EQ(core_kv_pool_n_free(pool), core_kv_pool_n_blocks(pool) -
                                             core_kv_pool_blocks_for(pool, n) -
                                             core_kv_pool_blocks_for(pool, n - n_pre + 1));
    if (n == c->max_pos) {
        it[0].tokens = tok;
        ASSERT_RC(core_forward(m, f, it, 1, &err), RC_LIMIT, &err);
        ASSERT_EQ(core_kv_len(kv[0]), n);
        ASSERT_RC(core_kv_reserve(kv[0], 1), RC_LIMIT, NULL);
    }
    free(tok), free(full);
    core_kv_free(kv[0]);
    core_kv_free(kv[1]);
    ASSERT_EQ(core_kv_pool_n_free(pool), core_kv_pool_n_blocks(pool));
    core_kv_pool_free(pool);
    core_fwd_free(f);
    return out;
}

TEST(forward_incremental_decode)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 14);
    free(decode_steps(m, 16, 14, 5, 8));
    tiny_free(m);
}

TEST(kv_paged_block_sizes_agree)
{
    /* prefill 5, decode to 40: crosses block boundaries of 1, 3 and 16 at every size */
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 15);
    size_t n = 2 * 36 * (size_t)c.n_vocab;
    float *b1 = decode_steps(m, 1, 15, 5, 40), *b3 = decode_steps(m, 3, 15, 5, 40);
    float *b16 = decode_steps(m, 16, 15, 5, 40);
    ASSERT_NEAR(max_diff(b1, b3, n), 0, 1e-6);
    ASSERT_NEAR(max_diff(b1, b16, n), 0, 1e-6);
    free(b1), free(b3), free(b16);
    tiny_free(m);
}

TEST(forward_kv_to_max_pos)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 16);
    free(decode_steps(m, 3, 15, 3, 64)); /* 64 = max_pos, 22 blocks of 3 */
    tiny_free(m);
}

TEST(kv_pool_accounting)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    core_kv_pool_t *p = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(core_kv_pool_new(&c, 100, 16, &p, &err), RC_LIMIT, &err);
    ASSERT(p == NULL && strstr(err.msg, "100"));
    ASSERT_RC(core_kv_pool_new(&c, 1 << 20, 0, &p, &err), RC_INVALID, &err);
    p = pool_new(&c, 3, 10);
    ASSERT_EQ(core_kv_pool_blocks_for(p, 0), 0);
    ASSERT_EQ(core_kv_pool_blocks_for(p, 3), 1);
    ASSERT_EQ(core_kv_pool_blocks_for(p, 4), 2);
    core_kv_t *a = core_kv_new(p), *b = core_kv_new(p);
    ASSERT_EQ(core_kv_blocks_needed(a, 7), 3);
    ASSERT_RC(core_kv_reserve(a, 7), RC_OK, NULL);
    ASSERT_EQ(core_kv_pool_n_free(p), 7);
    ASSERT_EQ(core_kv_len(a), 0); /* reserved, not filled */
    ASSERT_EQ(core_kv_blocks_needed(a, 9), 0);
    ASSERT_EQ(core_kv_blocks_needed(a, 10), 1);
    ASSERT_RC(core_kv_reserve(b, 22), RC_BUSY, NULL); /* 8 blocks, 7 free: all or none */
    ASSERT_EQ(core_kv_pool_n_free(p), 7);
    ASSERT_EQ(core_kv_blocks_needed(b, 1), 1);
    ASSERT_RC(core_kv_reserve(b, 65), RC_LIMIT, NULL); /* past max_pos 64 */
    ASSERT_RC(core_kv_reserve(b, 21), RC_OK, NULL);
    ASSERT_EQ(core_kv_pool_n_free(p), 0);
    core_kv_reset(a);
    ASSERT_EQ(core_kv_pool_n_free(p), 3);
    ASSERT_EQ(core_kv_blocks_needed(a, 1), 1);
    core_kv_free(b);
    ASSERT_EQ(core_kv_pool_n_free(p), 10);
    core_kv_free(a);
    core_kv_pool_free(p);
}

/* A pool too short for a step: RC_BUSY, and no cache nor the pool changes. Then reset
 * frees enough, and a reset cache computes exactly what a fresh one does. */
TEST(kv_busy_leaves_everything)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 17);
    core_kv_pool_t *p = pool_new(&c, 4, 6);
    core_fwd_t *f = core_fwd_new(m);
    core_kv_t *a = core_kv_new(p), *b = core_kv_new(p);
    int32_t *tok = seq_tokens(20, 3, c.n_vocab);
    float lg[2 * 61], lg2[61];
    core_err_t err = {{0}};
    core_fwd_item_t it[2] = {{.tokens = tok, .n_tokens = 9, .kv = a, .logits = lg},
                             {.tokens = tok, .n_tokens = 9, .kv = b, .logits = lg + 61}};
    ASSERT_RC(core_forward(m, f, it, 1, &err), RC_OK, &err); /* a: 9 tokens, 3 blocks */
    memcpy(lg2, lg, sizeof lg2);
    it[0].tokens = tok + 9;
    it[0].n_tokens = 4; /* a needs 1 more block, b 3: 4 > 3 free */
    ASSERT_RC(core_forward(m, f, it, 2, &err), RC_BUSY, &err);
    ASSERT(strstr(err.msg, "4") && strstr(err.msg, "3"));
    ASSERT_EQ(core_kv_len(a), 9);
    ASSERT_EQ(core_kv_len(b), 0);
    ASSERT_EQ(core_kv_pool_n_free(p), 3);
    ASSERT_EQ(core_kv_blocks_needed(a, 4), 1);
    ASSERT_EQ(core_kv_blocks_needed(b, 9), 3);
    core_kv_reset(a); /* preemption */
    ASSERT_EQ(core_kv_pool_n_free(p), 6);
    ASSERT_EQ(core_kv_len(a), 0);
    it[0].tokens = tok;
    it[0].n_tokens = 9;
    ASSERT_RC(core_forward(m, f, it, 2, &err), RC_OK, &err);
    ASSERT_EQ(core_kv_pool_n_free(p), 0);
    ASSERT_NEAR(max_diff(lg, lg2, 61), 0, 1e-5); /* 18 rows vs 9 in the GEMM: rounding */
    ASSERT_NEAR(max_diff(lg + 61, lg2, 61), 0, 1e-5);
    core_kv_free(a);
    core_kv_free(b);
    ASSERT_EQ(core_kv_pool_n_free(p), 6);
    core_kv_pool_free(p);
    free(tok);
    core_fwd_free(f);
    tiny_free(m);
}

TEST(forward_validation_mutates_nothing)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 16);
    core_fwd_t *f = core_fwd_new(m);
    core_kv_pool_t *p = pool_for(&c, 2);
    core_kv_t *a = core_kv_new(p), *b = core_kv_new(p);
    float lg[2 * 61];
    int32_t good[3] = {1, 2, 3}, bad[2] = {5, 61}, neg[1] = {-1};
    core_err_t err = {{0}};
    core_fwd_item_t it[2] = {
        {.tokens = good, .n_tokens = 3, .kv = a, .logits = lg},
        {.tokens = bad, .n_tokens = 2, .kv = b, .logits = lg + 61},
    };
    ASSERT_RC(core_fwd_reserve(f, 0, 0, 1), RC_INVALID, NULL);
    ASSERT_RC(core_forward(m, f, it, 2, &err), RC_INVALID, &err);
    ASSERT(strstr(err.msg, "item 1") && strstr(err.msg, "61"));
    ASSERT_EQ(core_kv_len(a), 0);
    ASSERT_EQ(core_kv_len(b), 0);
    ASSERT_EQ(core_kv_pool_n_free(p), core_kv_pool_n_blocks(p));
    it[1].tokens = neg;
    it[1].n_tokens = 1;
    ASSERT_RC(core_forward(m, f, it, 2, &err), RC_INVALID, &err);
    ASSERT(strstr(err.msg, "-1"));
    /* a fills most of its context; then item 1 asks for too much */
    int32_t *many = seq_tokens(64, 1, 61);
    it[1] = (core_fwd_item_t){.tokens = many, .n_tokens = 60, .kv = b, .logits = lg + 61};
    ASSERT_RC(core_forward(m, f, &it[1], 1, &err), RC_OK, &err);
    it[1].n_tokens = 5;
    ASSERT_RC(core_forward(m, f, it, 2, &err), RC_LIMIT, &err);
    ASSERT(strstr(err.msg, "item 1"));
    ASSERT_EQ(core_kv_len(a), 0);
    ASSERT_EQ(core_kv_len(b), 60);
    it[1].n_tokens = 4; /* exactly max_pos is fine */
    ASSERT_RC(core_forward(m, f, it, 2, &err), RC_OK, &err);
    ASSERT_EQ(core_kv_len(b), 64);
    /* two items on one cache */
    it[1].kv = a;
    it[1].n_tokens = 1;
    ASSERT_RC(core_forward(m, f, it, 2, &err), RC_INVALID, &err);
    it[1].kv = b;
    it[0].n_tokens = 0;
    ASSERT_RC(core_forward(m, f, it, 2, &err), RC_INVALID, &err);
    ASSERT_RC(core_forward(m, f, it, 0, &err), RC_OK, &err);
    /* an adapter made for a model with another layer count */
    core_config_t c3 = c;
    c3.n_layers = 3;
    core_lora_t *lo = tiny_lora(&c3, 25, 1u << CORE_MOD_Q, 2, 2.0f);
    core_aset_t *s = set1(lo, 1.0f);
    it[0].n_tokens = 1;
    it[0].aset = s;
    ASSERT_RC(core_forward(m, f, it, 1, &err), RC_MISMATCH, &err);
    ASSERT_EQ(core_kv_len(a), 3);
    core_aset_release(s);
    tiny_lora_free(lo);
    free(many);
    core_kv_free(a);
    core_kv_free(b);
    core_kv_pool_free(p);
    core_fwd_free(f);
    tiny_free(m);
}

/* ---- LoRA and adapter sets ------------------------------------------------------ */

#define ALL_MODS ((1u << CORE_MOD__COUNT) - 1)
#define MOD(m) (1u << CORE_MOD_##m)

TEST(lora_equals_merged)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 17);
    core_lora_t *lo = tiny_lora(&c, 18, ALL_MODS, 3, 6.0f);
    size_t n = 7 * (size_t)c.n_vocab;
    int32_t *tok = seq_tokens(7, 40, c.n_vocab);
    float *base = run_alone(m, tok, 7, NULL);
    float scales[2] = {1.0f, -0.5f};
    for (int i = 0; i < 2; i++) {
        core_aset_t *s = set1(lo, scales[i]);
        float *with = run_alone(m, tok, 7, s);
        core_model_t *mg = tiny_merged(&c, 17, s);
        float *merged = run_alone(mg, tok, 7, NULL);
        ASSERT(max_diff(with, base, n) > 1e-2);
        ASSERT_NEAR(max_diff(with, merged, n), 0, 1e-4);
        free(with), free(merged);
        tiny_free(mg);
        core_aset_release(s);
    }
    /* weight 0 is the base exactly (the term is skipped), alone or beside another */
    core_lora_t *two[2] = {lo, lo};
    core_aset_t *z1 = set1(lo, 0.0f), *z2 = set_of(2, two, (float[]){0.0f, 0.0f});
    float *zero = run_alone(m, tok, 7, z1), *zero2 = run_alone(m, tok, 7, z2);
    ASSERT_NEAR(max_diff(zero, base, n), 0, 0);
    ASSERT_NEAR(max_diff(zero2, base, n), 0, 0);
    core_aset_release(z1);
    core_aset_release(z2);
    ASSERT_EQ(lo->refcount, 1);
    free(zero), free(zero2), free(base), free(tok);
    tiny_lora_free(lo);
    tiny_free(m);
}

TEST(lora_partial_targets)
{
    /* only v_proj and down_proj, and only in layer 1 */
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 19);
    core_lora_t *lo = tiny_lora(&c, 20, MOD(V) | MOD(DOWN), 2, 4.0f);
    for (int k = 0; k < CORE_MOD__COUNT; k++) {
        free(lo->mods[k].A), free(lo->mods[k].B);
        lo->mods[k].A = lo->mods[k].B = NULL;
    }
    core_aset_t *s = set1(lo, 1.0f);
    size_t n = 5 * (size_t)c.n_vocab;
    int32_t *tok = seq_tokens(5, 41, c.n_vocab);
    float *with = run_alone(m, tok, 5, s);
    core_model_t *mg = tiny_merged(&c, 19, s);
    float *merged = run_alone(mg, tok, 5, NULL);
    ASSERT_NEAR(max_diff(with, merged, n), 0, 1e-4);
    free(tok), free(with), free(merged);
    core_aset_release(s);
    tiny_free(mg);
    tiny_lora_free(lo);
    tiny_free(m);
}

/* One heterogeneous step: base rows; sets of ranks 2/4/8 on different module subsets; a
 * 3-term composition with a negative weight; one set on two adjacent items (one segment),
 * an equal-but-distinct set object next to its twin, and sets recurring after a base row
 * and after another set (new segments).
 * Every item equals itself run alone and the merged model W + sum w_i s_i B_i A_i run
 * through the naive double reference; then a decode step of the same mix does too. */
TEST(lora_mixed_batch)
{
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 21);
    core_lora_t *l2 = tiny_lora(&c, 22, MOD(Q) | MOD(V), 2, 4.0f);
    core_lora_t *l4 = tiny_lora(&c, 23, MOD(O) | MOD(GATE) | MOD(DOWN), 4, 8.0f);
    core_lora_t *l8 = tiny_lora(&c, 24, ALL_MODS & ~MOD(K), 8, 4.0f);
    core_lora_t *comp[3] = {l2, l8, l4};
    core_aset_t *s2 = set1(l2, 1.0f), *s4 = set1(l4, 1.0f), *s8 = set1(l8, 0.75f);
    core_aset_t *mix = set_of(3, comp, (float[]){0.7f, -0.5f, 1.2f});
    core_aset_t *mix_twin = set_of(3, comp, (float[]){0.7f, -0.5f, 1.2f});
    ASSERT(core_aset_equal(mix, mix_twin) && !core_aset_equal(mix, s2) &&
           !core_aset_equal(s2, NULL) && core_aset_equal(NULL, NULL));
    ASSERT_EQ(mix->rank_sum, 14);
    enum { N = 10 };
    const core_aset_t *sets[N] = {NULL, s2, s2, s4, mix, mix_twin, NULL, mix, s8, s4};
    int lens[N] = {3, 2, 5, 1, 4, 2, 2, 3, 3, 2};
    int32_t *tok[N];
    float *got[N];
    core_kv_pool_t *pool = pool_for(&c, N);
    core_kv_t *kv[N];
    core_fwd_item_t it[N];
    core_fwd_t *f = core_fwd_new(m);
    core_err_t err = {{0}};
    size_t V = (size_t)c.n_vocab;
    ASSERT_RC(core_fwd_reserve(f, 32, 8, N), RC_OK, NULL);
    for (int i = 0; i < N; i++) {
        tok[i] = malloc((size_t)(lens[i] + 1) * sizeof(int32_t));
        int32_t *t = seq_tokens(lens[i] + 1, 50 + i, c.n_vocab);
        memcpy(tok[i], t, (size_t)(lens[i] + 1) * sizeof(int32_t));
        free(t);
        kv[i] = core_kv_new(pool);
        got[i] = malloc(2 * V * sizeof(float));
        it[i] = (core_fwd_item_t){.tokens = tok[i], .n_tokens = lens[i], .kv = kv[i],
                                  .aset = sets[i], .logits = got[i]};
    }
    ASSERT_RC(core_forward(m, f, it, N, &err), RC_OK, &err);
    for (int i = 0; i < N; i++) { /* then one decode token each */
        it[i].tokens = tok[i] + lens[i];
        it[i].n_tokens = 1;
        it[i].logits = got[i] + V;
    }
    ASSERT_RC(core_forward(m, f, it, N, &err), RC_OK, &err);
    for (int i = 0; i < N; i++) {
        int n = lens[i] + 1;
        float *alone = run_alone(m, tok[i], n, sets[i]);
        core_model_t *mg = tiny_merged(&c, 21, sets[i]);
        double *ref = malloc((size_t)n * V * sizeof *ref);
        ref_forward(mg, tok[i], n, ref);
        for (int k = 0; k < 2; k++) { /* prefill's last row, then the decode row */
            size_t row = (size_t)(n - 2 + k) * V;
            ASSERT_NEAR(max_diff(got[i] + k * V, alone + row, V), 0, 1e-5);
            ASSERT_NEAR(max_diff_ref(got[i] + k * V, ref + row, V), 0, 1e-4);
        }
        if (sets[i]) { /* the adapters really act */
            float *b = run_alone(m, tok[i], n, NULL);
            ASSERT(max_diff(got[i] + V, b + (size_t)(n - 1) * V, V) > 1e-3);
            free(b);
        }
        free(alone), free(ref);
        tiny_free(mg);
    }
    for (int i = 0; i < N; i++) {
        free(tok[i]), free(got[i]);
        core_kv_free(kv[i]);
    }
    core_aset_t *all[5] = {s2, s4, s8, mix, mix_twin};
    for (int i = 0; i < 5; i++)
        core_aset_release(all[i]);
    ASSERT(l2->refcount == 1 && l4->refcount == 1 && l8->refcount == 1);
    core_kv_pool_free(pool);
    core_fwd_free(f);
    tiny_lora_free(l2);
    tiny_lora_free(l4);
    tiny_lora_free(l8);
    tiny_free(m);
}

/* The step's LoRA plan (forward.c build_plan): one LoRA shared by non-adjacent items and
 * named twice in one set (its weights summed), a set whose two terms cancel (base), on
 * the compute pool. Every item equals itself alone and the merged model; a second run of
 * the same step gives bit-identical logits (the pool never changes a sum's order). */
TEST(lora_plan_shared_repeated_deterministic)
{
    core_gemm_init(3);
    core_config_t c = parse_ok(TINY_JSON(""));
    core_model_t *m = tiny_model(&c, 31);
    core_lora_t *la = tiny_lora(&c, 32, ALL_MODS, 4, 8.0f);
    core_lora_t *lb = tiny_lora(&c, 33, MOD(Q) | MOD(V) | MOD(DOWN), 2, 4.0f);
    core_lora_t *lc = tiny_lora(&c, 34, ALL_MODS & ~MOD(K), 8, 4.0f);
    core_lora_t *twice[3] = {la, lb, la}, *bb[2] = {lb, lb}, *ca[2] = {lc, la};
    core_aset_t *s_a = set1(la, 1.0f), *s_tw = set_of(3, twice, (float[]){0.5f, 1.0f, 0.25f});
    core_aset_t *s_0 = set_of(2, bb, (float[]){1.0f, -1.0f});
    core_aset_t *s_ca = set_of(2, ca, (float[]){-0.5f, 0.3f});
    enum { N = 6 };
    const core_aset_t *sets[N] = {s_a, NULL, s_tw, s_ca, s_a, s_0};
    int lens[N] = {2, 3, 4, 1, 3, 2};
    core_kv_pool_t *pool = pool_for(&c, 2 * N);
    core_fwd_t *f = core_fwd_new(m);
    core_err_t err = {{0}};
    size_t V = (size_t)c.n_vocab;
    int32_t *tok[N];
    float *got[2][N];
    ASSERT(f && pool);
    for (int i = 0; i < N; i++)
        tok[i] = seq_tokens(lens[i] + 1, 70 + i, c.n_vocab);
    for (int run = 0; run < 2; run++) {
        core_kv_t *kv[N];
        core_fwd_item_t it[N];
        for (int i = 0; i < N; i++) {
            kv[i] = core_kv_new(pool);
            got[run][i] = malloc(2 * V * sizeof(float));
            it[i] = (core_fwd_item_t){.tokens = tok[i], .n_tokens = lens[i], .kv = kv[i],
                                      .aset = sets[i], .logits = got[run][i]};
        }
        ASSERT_RC(core_forward(m, f, it, N, &err), RC_OK, &err);
        for (int i = 0; i < N; i++) { /* then one decode token each */
            it[i].tokens = tok[i] + lens[i];
            it[i].n_tokens = 1;
            it[i].logits = got[run][i] + V;
        }
        ASSERT_RC(core_forward(m, f, it, N, &err), RC_OK, &err);
        for (int i = 0; i < N; i++)
            core_kv_free(kv[i]);
    }
    for (int i = 0; i < N; i++) {
        int n = lens[i] + 1;
        ASSERT(memcmp(got[0][i], got[1][i], 2 * V * sizeof(float)) == 0);
        float *alone = run_alone(m, tok[i], n, sets[i]);
        core_model_t *mg = tiny_merged(&c, 31, sets[i]);
        double *ref = malloc((size_t)n * V * sizeof *ref);
        ref_forward(mg, tok[i], n, ref);
        for (int k = 0; k < 2; k++) {
            size_t row = (size_t)(n - 2 + k) * V;
            ASSERT_NEAR(max_diff(got[0][i] + k * V, alone + row, V), 0, 1e-5);
            ASSERT_NEAR(max_diff_ref(got[0][i] + k * V, ref + row, V), 0, 1e-4);
        }
        free(alone), free(ref);
        tiny_free(mg);
    }
    float *base = run_alone(m, tok[5], lens[5] + 1, NULL); /* s_0 cancels out */
    ASSERT_NEAR(max_diff(got[0][5] + V, base + (size_t)lens[5] * V, V), 0, 1e-5);
    float *solo_a = run_alone(m, tok[2], lens[2] + 1, s_a); /* la twice really acts */
    ASSERT(max_diff(got[0][2] + V, solo_a + (size_t)lens[2] * V, V) > 1e-3);
    free(base), free(solo_a);
    for (int i = 0; i < N; i++)
        free(tok[i]), free(got[0][i]), free(got[1][i]);
    core_aset_t *all[4] = {s_a, s_tw, s_0, s_ca};
    for (int i = 0; i < 4; i++)
        core_aset_release(all[i]);
    core_kv_pool_free(pool);
    core_fwd_free(f);
    tiny_lora_free(la), tiny_lora_free(lb), tiny_lora_free(lc);
    tiny_free(m);
    core_pool_shutdown();
}
