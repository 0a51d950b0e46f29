/* rc.h - the one return-code type of adapterd, shared by every module.
 *
 * Generated from an X-macro table (libuv's UV_ERRNO_MAP idea) so a code and its
 * message never drift apart. core/ and store/ return rc_t plus a detail message in a
 * core_err_t; only api/ maps an rc_t to an HTTP status.
 * Thread-safe: pure functions and caller-owned buffers only. */
#ifndef CORE_RC_H
#define CORE_RC_H

#include <stddef.h>

#define CORE_RC_MAP(X)                                                  \
    X(OK, ok, "ok")                                                         \
    X(NOMEM, nomem, "out of memory")                                           \
    X(IO, io, "i/o error")                                                  \
    X(FORMAT, format, "malformed input")                                        \
    X(INVALID, invalid, "invalid argument")                                      \
    X(NOT_FOUND, not_found, "not found")                                           \
    X(UNSUPPORTED, unsupported, "unsupported")                                       \
    X(LIMIT, limit, "limit exceeded")                                          \
    X(MISMATCH, mismatch, "does not match the base model")                        \
    X(EXISTS, exists, "already exists")                                         \
    X(BUSY, busy, "busy")                                                     \
    X(CANCELLED, cancelled, "cancelled")                                           \
    X(NOSPACE, nospace, "no space left on device")                               \
    X(UNAVAILABLE, unavailable, "temporarily unavailable")                       \
    X(QUOTA, quota, "quota exceeded")                                         \
    X(AUTH, auth, "not authenticated")                                       \
    X(INTERNAL, internal, "internal error")

typedef enum {
#define CORE_RC_ENUM(name, lower, msg) RC_##name,
    CORE_RC_MAP(CORE_RC_ENUM)
#undef CORE_RC_ENUM
    RC__COUNT
} rc_t;

/* Static string for rc (never NULL; "unknown" for out-of-range values). */
const char *rc_str(rc_t rc);
/* Stable lower-case identifier for rc ("not_found"); used in JSON error codes. */
const char *rc_name(rc_t rc);

/* A detail message that travels with an rc_t: "tensor 'x.lora_A.weight': shape ...".
 * Callers own it (usually on the stack); functions that fail fill it. May be NULL. */
typedef struct {
    char msg[512];
} core_err_t;

/* Format fmt into err (if err is not NULL) and return rc, so that error paths read
 * `return core_err(err, RC_FORMAT, "tensor '%s': ...", name);`. */
rc_t core_err(core_err_t *err, rc_t rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Stable, machine-readable causes of a refused adapter file (RELIABILITY 2.2): the
 * reference safetensors validator's error kinds, then adapter_config.json and the binding
 * of tensors to base modules, then the store's load-time checks. Clients match on these
 * names (the upload error's "reason"), so a name is never changed or reused. */
#define CORE_REASON_MAP(X)                                                               \
    X(header_too_small)        /* file shorter than 8 bytes */                           \
    X(invalid_header_length)   /* header length N runs past the end of the file */       \
    X(header_too_large)        /* N over the cap (100 MB; 16 MiB for adapters) */        \
    X(invalid_header_start)    /* header empty or not starting with '{' */               \
    X(invalid_header)          /* not a UTF-8 JSON object (syntax, nesting, type) */     \
    X(duplicate_key)           /* a key twice in one JSON object */                      \
    X(invalid_offset)          /* data_offsets not [begin,end] integers, end < begin,    \
                                  holes, overlap, or past the end of the file */         \
    X(tensor_invalid_info)     /* entry fields/shape malformed, or bytes != shape*dtype */ \
    X(validation_overflow)     /* shape product or byte size overflows 64 bits */        \
    X(misaligned)              /* element bits not a whole number of bytes */            \
    X(bad_dtype)               /* unknown dtype, or one adapters cannot hold (I32...) */ \
    X(metadata_incomplete_buffer) /* bytes after the last tensor (polyglot files) */     \
    X(bad_metadata)            /* __metadata__ not an object of strings */               \
    X(metadata_too_large)      /* __metadata__ over 64 KiB */                            \
    X(too_many_tensors)        /* more entries than the cap */                           \
    X(non_finite)              /* a weight is inf or NaN */                              \
    X(invalid_config)          /* adapter_config.json not a JSON object, or a field of   \
                                  the wrong type */                                      \
    X(missing_field)           /* r, lora_alpha, target_modules or peft_type missing */  \
    X(invalid_rank)            /* r not an integer in 1..512 */                          \
    X(invalid_alpha)           /* lora_alpha not a finite number > 0 */                  \
    X(unsupported_feature)     /* DoRA, modules_to_save, bias, embeddings, ... */        \
    X(unknown_peft_type)       /* peft_type other than LORA */                           \
    X(base_model_mismatch)     /* base_model_name_or_path names another model */         \
    X(shape_mismatch)          /* A (r, in) / B (out, r) differ from config and base */  \
    X(unbound_tensor)          /* a key that binds no targeted LoRA weight */            \
    X(unknown_module)          /* a target_modules entry the base does not have */       \
    X(layer_out_of_range)      /* layer index >= the base's layers */                    \
    X(missing_pair)            /* lora_A without lora_B or the reverse */                \
    X(duplicate_binding)       /* two keys bind the same weight */                       \
    X(no_tensors)              /* no LoRA tensors at all */                              \
    X(hash_mismatch)           /* a stored blob no longer matches its sha256 */          \
    X(exceeds_cache)           /* needs more memory than the whole adapter cache */

/* core_err whose message starts with a reason from CORE_REASON_MAP and ": ", so that
 * logs and the CLI show it and api/ can lift it into a JSON field (core_err_reason). */
rc_t core_err_r(core_err_t *err, rc_t rc, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The reason err->msg starts with, or "" when it starts with none of CORE_REASON_MAP.
 * Returns a static string (never NULL). */
const char *core_err_reason(const core_err_t *err);

#endif
