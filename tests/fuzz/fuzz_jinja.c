/* fuzz_jinja.c - libFuzzer target: the chat-template engine (core/jinja.h, core/chat.h).
 *
 * Input: byte 0 picks the mode. Even: the rest is a template, compiled and rendered with a
 * fixed context (a four-message conversation with a tool call, tools, bos/eos,
 * add_generation_prompt). Odd: the rest is the content of a user message rendered through
 * one of the real templates in tests/fixtures/chat_templates/ (byte 1 picks which). Oracles
 * besides ASan/UBSan: every failure carries a message, a render's length matches its
 * NUL-terminated text, and the output cap holds. Budgets (loops, steps, memory) must stop
 * hostile templates: libFuzzer's -timeout catches one that does not. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/chat.h"
#include "core/jinja.h"

#define MAX_OUT (64u << 10)

static const char *const tpl_files[] = {
    "chatml.jinja", "gemma.jinja",   "llama2_chat.jinja", "llama31_tools.jinja",
    "mistral_instruct_v01.jinja",    "phi3.jinja",        "qwen3_like.jinja",
    "zephyr.jinja"};
#define N_TPL (sizeof tpl_files / sizeof tpl_files[0])

static core_chat_t *g_chat[N_TPL];
static json_t *g_vars;

static const char ctx_json[] =
    "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
    "{\"role\":\"user\",\"content\":\"What is 2+2?\"},"
    "{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"type\":\"function\","
    "\"function\":{\"name\":\"add\",\"arguments\":{\"a\":2,\"b\":2}}}]},"
    "{\"role\":\"tool\",\"content\":\"4\"},{\"role\":\"user\",\"content\":\"Thanks\"}],"
    "\"add_generation_prompt\":true,\"bos_token\":\"<s>\",\"eos_token\":\"</s>\","
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"add\",\"description\":\"Adds\","
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"number\"}}}}}],"
    "\"n\":[1,2.5,null,true,\"x\"]}";

static char *read_text(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(1 << 16);
    *len = buf ? fread(buf, 1, (1 << 16) - 1, f) : 0;
    fclose(f);
    return buf;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    json_error_t jerr;
    g_vars = json_loads(ctx_json, JSON_REJECT_DUPLICATES, &jerr);
    if (!g_vars)
        abort();
    for (size_t i = 0; i < N_TPL; i++) {
        char path[256];
        size_t len = 0;
        core_err_t err = {{0}};
        snprintf(path, sizeof path, "tests/fixtures/chat_templates/%s", tpl_files[i]);
        char *src = read_text(path, &len);
        if (!src || core_chat_from_text(src, len, "<s>", "</s>", &g_chat[i], &err) != RC_OK) {
            fprintf(stderr, "fuzz_jinja: %s: %s (run from the repository root)\n", path,
                    src ? err.msg : "cannot read");
            abort();
        }
        free(src);
    }
    return 0;
}

static void check_out(rc_t rc, const core_err_t *err, char *out, size_t len)
{
    if (rc != RC_OK) {
        if (err->msg[0] == '\0' || out != NULL) {
            fprintf(stderr, "fuzz_jinja: rc %d with message '%s' and output %p\n", (int)rc,
                    err->msg, (void *)out);
            abort();
        }
        return;
    }
    if (!out || strlen(out) > len || len > CORE_CHAT_MAX_PROMPT) {
        fprintf(stderr, "fuzz_jinja: output %p of length %zu (strlen %zu)\n", (void *)out, len,
                out ? strlen(out) : 0);
        abort();
    }
    free(out);
}

static void fuzz_template(const char *src, size_t len)
{
    core_jinja_t *t = NULL;
    core_err_t err = {{0}};
    rc_t rc = core_jinja_compile(src, len, &t, &err);
    if (rc != RC_OK) {
        if (err.msg[0] == '\0')
            abort();
        return;
    }
    char *out = NULL;
    size_t out_len = 0;
    rc = core_jinja_render(t, g_vars, MAX_OUT, &out, &out_len, &err);
    if (rc == RC_OK && out_len > MAX_OUT)
        abort();
    check_out(rc, &err, out, out_len);
    core_jinja_free(t);
}

static void fuzz_content(unsigned pick, const char *text, size_t len)
{
    json_t *msgs = json_loads("[{\"role\":\"system\",\"content\":\"S\"},"
                              "{\"role\":\"user\",\"content\":\"U\"},"
                              "{\"role\":\"assistant\",\"content\":\"A\"}]",
                              0, NULL);
    json_t *content = json_stringn(text, len); /* NULL unless valid UTF-8, as the API */
    if (!msgs || !content)
        goto out;
    json_t *m = json_pack("{s:s,s:O}", "role", (pick & 16) ? "system" : "user", "content", content);
    json_array_append_new(msgs, m);
    char *out = NULL;
    size_t out_len = 0;
    core_err_t err = {{0}};
    rc_t rc = core_chat_render(g_chat[pick % N_TPL], msgs, pick & 8, &out, &out_len, &err);
    check_out(rc, &err, out, out_len);
out:
    json_decref(content);
    json_decref(msgs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    if ((data[0] & 1) == 0)
        fuzz_template((const char *)data + 1, size - 1);
    else
        fuzz_content(data[1], (const char *)data + 2, size - 2);
    return 0;
}
