/* logprobs.h - private to api/: per-token log-probabilities for completions `logprobs`
 * (OpenAI's legacy shape), chat completions `logprobs` / `top_logprobs` (the chat shape)
 * and the scoring route.
 *
 * A logprob is log softmax of the model's raw logits (before temperature, top-k, top-p),
 * as vLLM reports by default. Token strings are each token decoded alone (special tokens
 * kept; a byte of an unfinished UTF-8 character shows as U+FFFD); text_offset is the
 * running byte offset of those strings, from `offset0`.
 *
 * Threads: an accumulator belongs to one thread at a time (the engine thread fills it in
 * events; the loop thread creates and frees it). Ownership: caller frees with
 * api__lp_free; JSON values returned are new references. */
#ifndef API_LOGPROBS_H
#define API_LOGPROBS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tokenizer.h"

#define API_LP_TOP_MAX 20 /* largest `logprobs` (top alternatives per token) accepted */

typedef struct api_lp api_lp_t;

/* top: alternatives per token (0..API_LP_TOP_MAX); offset0: text_offset of the first token. */
api_lp_t *api__lp_new(const core_tok_t *tok, int top, size_t offset0);
void api__lp_free(api_lp_t *lp);

/* Log-probability of token under the distribution of logits (n_vocab floats). */
double api__lp_of(const float *logits, int n_vocab, int32_t token);

/* Append token with its logprob under logits (NULL: no distribution, e.g. the first prompt
 * token: logprob and top alternatives are null). false when out of memory. */
bool api__lp_add(api_lp_t *lp, const float *logits, int n_vocab, int32_t token);
size_t api__lp_count(const api_lp_t *lp);
/* Sum of the logprobs of entries [from, count) that have one. */
double api__lp_sum(const api_lp_t *lp, size_t from);

/* {"tokens", "token_logprobs", "top_logprobs", "text_offset"} of entries [from, to). */
json_t *api__lp_json(const api_lp_t *lp, size_t from, size_t to);
/* OpenAI's chat shape of entries [from, to): {"content": [{"token", "logprob", "bytes",
 * "top_logprobs": [{"token", "logprob", "bytes"}, ...]}]}. bytes are the token's text as
 * UTF-8, except for a token whose raw bytes are not valid UTF-8 alone (a lone byte of a
 * multi-byte character, shown as U+FFFD in "token"): then its raw bytes. */
json_t *api__lp_chat_json(const api_lp_t *lp, size_t from, size_t to);
/* [{"token", "token_id", "logprob"}] of entries [from, to) (the score route's shape). */
json_t *api__lp_tokens_json(const api_lp_t *lp, size_t from, size_t to);

#endif
