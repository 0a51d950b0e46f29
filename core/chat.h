/* chat.h - a model's chat template (tokenizer_config.json), compiled once, and rendering a
 * conversation into the prompt text the model was trained on.
 *
 * tokenizer_config.json's "chat_template" may be a string or a list of {"name", "template"}
 * (the one named "default" is used); "bos_token" / "eos_token" may be strings or
 * {"content": ...} objects. Rendering passes messages, add_generation_prompt, bos_token and
 * eos_token, as transformers' apply_chat_template does.
 *
 * Threads: load/free on one thread; a loaded template renders from any thread.
 * Ownership: the caller frees with core_chat_free; rendered text is malloc'd. */
#ifndef CORE_CHAT_H
#define CORE_CHAT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/rc.h"

#define CORE_CHAT_MAX_PROMPT (8u << 20) /* rendered prompt cap (RC_LIMIT past it) */

typedef struct core_chat core_chat_t;

/* DIR/tokenizer_config.json. RC_NOT_FOUND when the file or its chat_template is absent,
 * RC_FORMAT for a file or template that does not parse (the message says where). */
rc_t core_chat_load(const char *model_dir, core_chat_t **out, core_err_t *err);
/* Same from a template text and the special token strings (NULL: ""). */
rc_t core_chat_from_text(const char *tpl, size_t len, const char *bos, const char *eos,
                         core_chat_t **out, core_err_t *err);
/* messages: a JSON array of {"role", "content", ...}, borrowed. RC_INVALID when the
 * template raises (its message), RC_LIMIT, RC_FORMAT (see core/jinja.h). */
rc_t core_chat_render(const core_chat_t *c, const json_t *messages, bool add_generation_prompt,
                      char **out, size_t *len, core_err_t *err);
void core_chat_free(core_chat_t *c);

#endif
