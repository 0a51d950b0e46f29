/* fuzz_lora_config.c - libFuzzer target: PEFT adapter_config.json parsing and binding of
 * the tensors to a tiny in-memory base (core_lora_from_parts; RELIABILITY F13).
 *
 * Input layout: the adapter_config.json text up to the first NUL byte; if a NUL follows,
 * the bytes after it are the adapter_model.safetensors image (parsed with core_st_parse
 * first, so a crafted file reaches the binding only when it validates); without a NUL the
 * config is bound against a fixed valid rank-2 q_proj/v_proj adapter built at start-up.
 * The base is test_lora.c's: dim 8, 2 heads of 4, 1 kv head, hidden 12, 2 layers. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/lora.h"
#include "core/safetensors.h"

static core_config_t g_base;
static uint8_t *g_st_img;
static size_t g_st_len;
static core_st_t *g_st;

/* (n_out, n_in) of each module of the base above. */
static const int shape_out[CORE_MOD__COUNT] = {8, 4, 4, 8, 12, 12, 8};
static const int shape_in[CORE_MOD__COUNT] = {8, 8, 8, 8, 8, 8, 12};

/* Header + data of the fixed adapter: A (2, in) and B (out, 2) F32 on q and v, 2 layers. */
static void build_image(void)
{
    static char head[4096];
    static float data[4 * 2 * 2 * 8];
    size_t pos = 0, off = 0, n_data = 0;
    const int mods[2] = {CORE_MOD_Q, CORE_MOD_V};
    pos += (size_t)snprintf(head + pos, sizeof head - pos, "{");
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < 2; k++)
            for (int ab = 0; ab < 2; ab++) {
                int m = mods[k], d0 = ab ? shape_out[m] : 2, d1 = ab ? 2 : shape_in[m];
                size_t nb = (size_t)(d0 * d1) * 4;
                pos += (size_t)snprintf(
                    head + pos, sizeof head - pos,
                    "%s\"base_model.model.model.layers.%d.self_attn.%s.lora_%c.weight\":"
                    "{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[%zu,%zu]}",
                    pos > 1 ? "," : "", l, core_mod_name((core_mod_t)m), ab ? 'B' : 'A', d0, d1,
                    off, off + nb);
                off += nb;
            }
    pos += (size_t)snprintf(head + pos, sizeof head - pos, "}");
    n_data = off / 4;
    for (size_t i = 0; i < n_data && i < sizeof data / sizeof data[0]; i++)
        data[i] = (float)((int)(i % 13) - 6) * 0.125f;
    g_st_len = 8 + pos + off;
    g_st_img = calloc(1, g_st_len);
    for (int i = 0; i < 8; i++)
        g_st_img[i] = (uint8_t)((uint64_t)pos >> (8 * i));
    memcpy(g_st_img + 8, head, pos);
    memcpy(g_st_img + 8 + pos, data, off);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    memset(&g_base, 0, sizeof g_base);
    strcpy(g_base.arch, "LlamaForCausalLM");
    strcpy(g_base.model_type, "llama");
    g_base.n_vocab = 32;
    g_base.dim = 8;
    g_base.hidden_dim = 12;
    g_base.n_layers = 2;
    g_base.n_heads = 2;
    g_base.n_kv_heads = 1;
    g_base.head_dim = 4;
    g_base.max_pos = 64;
    build_image();
    core_err_t err = {{0}};
    if (core_st_parse(g_st_img, g_st_len, "fixed", &g_st, &err) != RC_OK) {
        fprintf(stderr, "fuzz_lora_config: fixed adapter refused: %s\n", err.msg);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t cfg_len = nul ? (size_t)(nul - data) : size;
    char *cfg = malloc(cfg_len + 1);
    uint8_t *img = NULL;
    core_st_t *st = NULL;
    core_lora_t *l = NULL;
    core_err_t err = {{0}};
    if (!cfg)
        return 0;
    memcpy(cfg, data, cfg_len);
    cfg[cfg_len] = '\0';
    if (nul) {
        size_t n = size - cfg_len - 1;
        img = malloc(n ? n : 1);
        if (!img)
            goto out;
        memcpy(img, nul + 1, n);
        if (core_st_parse(img, n, "fuzz", &st, &err) != RC_OK)
            goto out;
    }
    rc_t rc = core_lora_from_parts(cfg, st ? st : g_st, &g_base, &l, &err);
    if (rc != RC_OK && err.msg[0] == '\0')
        abort(); /* a refusal must say what it refused */
    if (rc == RC_OK) {
        char targets[128];
        core_lora_targets_str(l, targets, sizeof targets);
        core_lora_release(l);
    }
out:
    core_st_free(st);
    free(img);
    free(cfg);
    return 0;
}
