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

#endif
