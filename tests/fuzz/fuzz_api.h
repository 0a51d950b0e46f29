/* fuzz_api.h - shared by fuzz_json_api.c and fuzz_http.c (test code, header-only): the real
 * api over the Llama-2 tokenizer, api_fixture.h's tiny in-memory model, a store in a fresh
 * /tmp dir holding one imported adapter "alpha" (rank 2 on q_proj and v_proj), a chatml
 * template, local adapter loads allowed under an empty roots folder, and no engine.
 * Uploads are capped at 1 MiB and the tenant's stored bytes at 4 MiB, so a fuzzer that
 * finds a valid upload cannot fill the disk. */
#ifndef TESTS_FUZZ_API_H
#define TESTS_FUZZ_API_H

#include <sys/stat.h>

#include "api/api.h"
#include "core/chat.h"
#include "tests/unit/api_fixture.h"

static fx_t g_fx;
static char g_fuzz_tmp[256];

/* The temp dir goes when the fuzzer exits normally (-max_total_time, -runs); a crash
 * leaves it for the post-mortem. */
static void fuzz_api_cleanup(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_fuzz_tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "fuzz: could not remove %s\n", g_fuzz_tmp);
}

static inline api_t *fuzz_api_new(const char *who)
{
    static core_chat_t *chat;
    static char roots[300];
    static const char *root_list[1];
    static const char chatml[] =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\\n' }}{% endif %}";
    core_err_t err = {{0}};
    char *tmpl = g_fuzz_tmp, dir[400];
    snprintf(g_fuzz_tmp, sizeof g_fuzz_tmp, "/tmp/%s.XXXXXX", who);
    if (!mkdtemp(g_fuzz_tmp))
        HARNESS_FAIL("mkdtemp %s failed", g_fuzz_tmp);
    atexit(fuzz_api_cleanup);
    memset(&g_fx, 0, sizeof g_fx);
    model_build(&g_fx);
    ASSERT_RC(core_tok_load(TOKJSON, &g_fx.tok, &err), RC_OK, &err);
    snprintf(g_fx.root, sizeof g_fx.root, "%s/store", tmpl);
    store_params_t sp = store_default_params();
    sp.data_dir = g_fx.root;
    sp.base = &g_fx.model;
    sp.max_adapter_bytes = 1 << 20;
    sp.default_max_stored_bytes = 4 << 20;
    ASSERT_RC(store_open(&sp, &g_fx.store, &err), RC_OK, &err);
    snprintf(dir, sizeof dir, "%s/alpha", tmpl);
    write_adapter(dir);
    ASSERT_RC(store_import(g_fx.store, STORE_TENANT_DEFAULT, dir, "alpha", NULL, NULL, NULL, &err),
              RC_OK, &err);
    ASSERT_RC(core_chat_from_text(chatml, strlen(chatml), "<s>", "</s>", &chat, &err), RC_OK,
              &err);
    snprintf(roots, sizeof roots, "%s/roots", tmpl);
    ASSERT_EQ(mkdir(roots, 0700), 0);
    root_list[0] = roots;
    api_params_t p = {.model = &g_fx.model,
                      .tok = g_fx.tok,
                      .store = g_fx.store,
                      .chat = chat,
                      .model_name = "tiny",
                      .max_upload_bytes = 1 << 20,
                      .allow_local_paths = true,
                      .adapter_roots = root_list,
                      .n_adapter_roots = 1};
    g_fx.api = api_new(&p);
    ASSERT(g_fx.api != NULL);
    return g_fx.api;
}

#endif
