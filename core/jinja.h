/* jinja.h - the subset of Jinja2 that chat templates use, rendered byte for byte like
 * the reference JS renderer @huggingface/jinja 0.5.11 (pinned in package.json).
 *
 *   typedef struct core_jinja core_jinja_t;
 *   rc_t core_jinja_compile(const char *src, size_t len, core_jinja_t **out, core_err_t *err);
 *       RC_FORMAT with "line:col: ..." for syntax errors, RC_LIMIT for nesting too deep.
 *   rc_t core_jinja_render(const core_jinja_t *t, const json_t *vars, size_t max_bytes,
 *                          char **out, size_t *out_len, core_err_t *err);
 *       vars: a jansson object (messages, add_generation_prompt, bos_token, eos_token,
 *       tools, ...), borrowed for the call. RC_INVALID for raise_exception (err holds the
 *       template's message), RC_LIMIT when the output (or any block being built) passes
 *       max_bytes or a loop/recursion/step/memory budget runs out (operator templates
 *       must never hang or crash the daemon), RC_FORMAT for a runtime type error.
 *       *out is malloc'd and NUL-terminated; the caller frees it.
 *   void core_jinja_free(core_jinja_t *t);
 *
 * Threads: a compiled template is immutable and may be rendered from any thread
 * concurrently; each render owns a private arena freed before it returns.
 *
 * Like the reference (and HF transformers) templates are compiled with trim_blocks and
 * lstrip_blocks on, one trailing newline of the source is dropped, and the transformers
 * {% generation %} tags are removed. Semantics follow the reference, not Python Jinja2:
 * booleans print as "true"/"false", `==` is JavaScript's loose equality, `%` keeps the
 * dividend's sign, unknown filters raise. Not supported (compile or render error):
 * {% call %} and {% filter %} blocks, *args / **kwargs unpacking, the sort, unique and
 * dictsort filters. */
#ifndef CORE_JINJA_H
#define CORE_JINJA_H

#include <jansson.h>
#include <stddef.h>

#include "core/rc.h"

typedef struct core_jinja core_jinja_t;

/* Compiles src (len bytes, UTF-8, need not be NUL-terminated). OUT: *out, freed with
 * core_jinja_free. Returns RC_OK, RC_FORMAT (syntax, "line:col: ..."), RC_LIMIT
 * (nesting deeper than 200) or RC_NOMEM. */
rc_t core_jinja_compile(const char *src, size_t len, core_jinja_t **out, core_err_t *err);

/* Renders t with the variables of the object vars (NULL: none). OUT: *out (malloc'd,
 * NUL-terminated) and *out_len; both untouched on failure. */
rc_t core_jinja_render(const core_jinja_t *t, const json_t *vars, size_t max_bytes,
                       char **out, size_t *out_len, core_err_t *err);

/* Frees t (NULL is a no-op). No render may be running on t. */
void core_jinja_free(core_jinja_t *t);

#endif
