/* chat.c - loading and rendering a model's chat template (see chat.h). */
#include "core/chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/jinja.h"

#define CHAT_MAX_CONFIG (4u << 20) /* tokenizer_config.json (long templates, added tokens) */

struct core_chat {
    core_jinja_t *tpl;
    char *bos, *eos;
};

void core_chat_free(core_chat_t *c)
{
    if (!c)
        return;
    core_jinja_free(c->tpl);
    free(c->bos);
    free(c->eos);
    free(c);
}

rc_t core_chat_from_text(const char *tpl, size_t len, const char *bos, const char *eos,
                         core_chat_t **out, core_err_t *err)
{
    *out = NULL;
    core_chat_t *c = calloc(1, sizeof *c);
    if (!c)
        return core_err(err, RC_NOMEM, "chat template: out of memory");
    c->bos = strdup(bos ? bos : "");
    c->eos = strdup(eos ? eos : "");
    rc_t rc = c->bos && c->eos ? core_jinja_compile(tpl, len, &c->tpl, err)
                               : core_err(err, RC_NOMEM, "chat template: out of memory");
    if (rc != RC_OK) {
        core_chat_free(c);
        return rc;
    }
    *out = c;
    return RC_OK;
}

/* A special token: a string, or an AddedToken object {"content": ...}. */
static const char *chat_token(const json_t *root, const char *key)
{
    const json_t *v = json_object_get(root, key);
    if (json_is_object(v))
        v = json_object_get(v, "content");
    return json_is_string(v) ? json_string_value(v) : "";
}

/* chat_template: a string, or a list of named templates ("default" is the chat one). */
static const json_t *chat_template_value(const json_t *root)
{
    const json_t *t = json_object_get(root, "chat_template");
    if (!json_is_array(t))
        return json_is_string(t) ? t : NULL;
    size_t i;
    const json_t *e;
    json_array_foreach(t, i, e) {
        const json_t *name = json_object_get(e, "name");
        if (json_is_string(name) && strcmp(json_string_value(name), "default") == 0) {
            const json_t *v = json_object_get(e, "template");
            return json_is_string(v) ? v : NULL;
        }
    }
    return NULL;
}

rc_t core_chat_load(const char *model_dir, core_chat_t **out, core_err_t *err)
{
    char path[4096];
    json_error_t jerr;
    *out = NULL;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
    FILE *f = fopen(path, "rb");
    if (!f)
        return core_err(err, RC_NOT_FOUND, "%s: not found", path);
    /* model_max_length is often 1e30 written as an integer: read big integers as reals */
    json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &jerr);
    fclose(f);
    if (!root)
        return core_err(err, RC_FORMAT, "%s:%d: %s", path, jerr.line, jerr.text);
    rc_t rc;
    const json_t *t = chat_template_value(root);
    if (!t)
        rc = core_err(err, RC_NOT_FOUND, "%s has no chat_template", path);
    else
        rc = core_chat_from_text(json_string_value(t), json_string_length(t),
                                 chat_token(root, "bos_token"), chat_token(root, "eos_token"),
                                 out, err);
    if (rc == RC_FORMAT || rc == RC_LIMIT) {
        core_err_t inner = *err;
        core_err(err, rc, "%s: chat_template: %s", path, inner.msg);
    }
    json_decref(root);
    return rc;
}

rc_t core_chat_render(const core_chat_t *c, const json_t *messages, bool add_generation_prompt,
                      char **out, size_t *len, core_err_t *err)
{
    json_t *vars = json_pack("{s:O,s:b,s:s,s:s}", "messages", messages,
                             "add_generation_prompt", add_generation_prompt, "bos_token", c->bos,
                             "eos_token", c->eos);
    if (!vars)
        return core_err(err, RC_NOMEM, "chat template: out of memory");
    rc_t rc = core_jinja_render(c->tpl, vars, CORE_CHAT_MAX_PROMPT, out, len, err);
    json_decref(vars);
    return rc;
}
