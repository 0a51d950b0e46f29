/* tokenizer.h - Hugging Face tokenizer.json BPE tokenizers, encode and streaming decode.
 *
 * Two families, detected from the file, not from a model name:
 *  - byte-level BPE (GPT-2, Llama-3, Qwen2): Split pre-tokenizer with the file's regex
 *    (the \p{L}/\p{N} classes use Unicode tables), ByteLevel byte<->char mapping,
 *    ignore_merges honoured.
 *  - sentencepiece-style BPE (Llama-2, Mistral): normalizer Prepend/Replace to U+2581 (or a
 *    Metaspace pre-tokenizer), byte_fallback to <0xNN> tokens, Replace/ByteFallback/Fuse/
 *    Strip decoders.
 * added_tokens are matched before the model (special ones only when parse_special), with
 * lstrip/rstrip as configured. The post_processor decides the BOS added by add_special.
 * Results must equal Hugging Face tokenizers (checked against @lenml/tokenizers in tests).
 *
 * Threads: immutable after load, shareable. A core_tok_stream_t belongs to one thread.
 * Ownership: encode returns a malloc'd array the caller frees. */
#ifndef CORE_TOKENIZER_H
#define CORE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rc.h"

typedef struct core_tok core_tok_t;

rc_t core_tok_load(const char *tokenizer_json_path, core_tok_t **out, core_err_t *err);
rc_t core_tok_load_mem(const char *json, size_t len, core_tok_t **out, core_err_t *err);
void core_tok_free(core_tok_t *t);

int core_tok_n_vocab(const core_tok_t *t); /* model vocab + added tokens (max id + 1) */
int core_tok_bos(const core_tok_t *t);     /* -1 if none */
int core_tok_eos(const core_tok_t *t);     /* -1 if none */
/* Token id of an exact token string (vocab or added), -1 if none. */
int core_tok_lookup(const core_tok_t *t, const char *piece);

typedef struct {
    bool add_special;   /* apply the post_processor (e.g. prepend <s>) */
    bool parse_special; /* special added tokens in the text become their ids */
} core_tok_encode_params_t;
core_tok_encode_params_t core_tok_encode_default_params(void); /* both true */

/* OUT: *ids (malloc'd, caller frees), *n_ids. Text must be valid UTF-8 (RC_INVALID else). */
rc_t core_tok_encode(const core_tok_t *t, const char *text, size_t len,
                     core_tok_encode_params_t params, int32_t **ids, size_t *n_ids,
                     core_err_t *err);

/* Decode a whole sequence as HF's decode(ids, skip_special_tokens). OUT: *text (malloc'd,
 * NUL-terminated, caller frees), *len. Ids out of range: RC_INVALID. */
rc_t core_tok_decode(const core_tok_t *t, const int32_t *ids, size_t n_ids,
                     bool skip_special, char **text, size_t *len, core_err_t *err);

/* The raw bytes of one token as the decoder makes them, before UTF-8 checking and Strip:
 * a <0xNN> piece its byte, a byte-level piece its original bytes (so possibly a lone byte
 * of a multi-byte character, which decode shows as U+FFFD), an added token its content,
 * other pieces their text after the Replace steps. For OpenAI's logprob `bytes`.
 * OUT: *bytes (malloc'd, NUL-terminated, caller frees), *len. Id out of range: RC_INVALID. */
rc_t core_tok_token_bytes(const core_tok_t *t, int32_t id, char **bytes, size_t *len,
                          core_err_t *err);

/* Streaming decode: push ids one at a time, get back only complete UTF-8 text; bytes of
 * a partial character are held until it completes (or flushed as U+FFFD at the end).
 * The concatenation of all pieces equals core_tok_decode of the whole sequence. */
typedef struct core_tok_stream core_tok_stream_t;
core_tok_stream_t *core_tok_stream_new(const core_tok_t *t, bool skip_special);
void core_tok_stream_free(core_tok_stream_t *s);
/* OUT: *piece borrowed until the next call on s; *len may be 0. */
rc_t core_tok_stream_push(core_tok_stream_t *s, int32_t id, const char **piece, size_t *len);
rc_t core_tok_stream_flush(core_tok_stream_t *s, const char **piece, size_t *len);

#endif
