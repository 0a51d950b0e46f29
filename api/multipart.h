/* multipart.h - private to api/: a streaming multipart/form-data parser (RFC 7578 on
 * RFC 2046 section 5.1) for adapter uploads. The body is fed in pieces of any size, as
 * they come off the socket; part data is handed out in pieces too, so nothing is held
 * whole in memory (the parser keeps at most one part head, <= API_MP_HEAD_MAX bytes, and
 * a carry of less than the delimiter's length).
 *
 * What is accepted (strict, because the input is hostile):
 *  - boundary from the Content-Type parameter: 1..70 chars of the RFC 2046 bchars set,
 *    quoted or not (api__mp_boundary);
 *  - a preamble before the first delimiter is skipped (RFC 2046 allows it; <= 1 KiB);
 *  - delimiters are CRLF "--" boundary; after the close delimiter "--" an epilogue is
 *    ignored (whatever follows is not parsed);
 *  - each part head: lines ending in CRLF, total <= API_MP_HEAD_MAX, <= 16 lines; it must
 *    hold Content-Disposition: form-data with a name="..." parameter (1..64 chars of
 *    [A-Za-z0-9._-]); filename="..." is accepted and ignored (never used as a path);
 *    Content-Type of a part is accepted and ignored; any other header is ignored; bare LF,
 *    obs-fold, NUL or other control bytes in a head are errors;
 *  - the body must end with the close delimiter; data after end-of-input is an error.
 * Errors are sticky: after the first one every call returns it again.
 *
 * Threads: one parser belongs to one thread. Ownership: the caller frees with
 * api__mp_free; pointers handed to callbacks are borrowed for the call. */
#ifndef API_MULTIPART_H
#define API_MULTIPART_H

#include <stdbool.h>
#include <stddef.h>

#include "core/rc.h"

#define API_MP_BOUNDARY_MAX 70
#define API_MP_HEAD_MAX 4096
#define API_MP_NAME_MAX 64

typedef struct {
    void *user;
    /* A part starts: name is its form field name. Return false to stop (the parser then
     * fails with RC_INVALID and the message set through err by the callback). */
    bool (*on_part)(void *user, const char *name, core_err_t *err);
    /* A piece of the current part's data (len >= 1). false: stop, as above. */
    bool (*on_data)(void *user, const char *data, size_t len, core_err_t *err);
    /* The current part ended (its delimiter was seen). false: stop, as above. */
    bool (*on_part_end)(void *user, core_err_t *err);
} api_mp_callbacks_t;

typedef struct api_mp api_mp_t;

/* Boundary of a Content-Type header value such as
 * `multipart/form-data; boundary="----x"`. RC_UNSUPPORTED when the media type is not
 * multipart/form-data (case-insensitive), RC_INVALID when the boundary is missing, empty,
 * longer than 70 or has a char outside bchars. OUT: boundary (NUL-terminated). */
rc_t api__mp_boundary(const char *content_type, char boundary[API_MP_BOUNDARY_MAX + 1],
                      core_err_t *err);

/* OUT: *out. cb is copied. RC_NOMEM only. */
rc_t api__mp_new(const char *boundary, const api_mp_callbacks_t *cb, api_mp_t **out,
                 core_err_t *err);
/* Feed the next len bytes of the body. RC_FORMAT for malformed input (message says what
 * and at which byte offset of the body), RC_LIMIT for a part head over API_MP_HEAD_MAX or a
 * preamble over 1 KiB, RC_INVALID when a callback refused. */
rc_t api__mp_feed(api_mp_t *p, const char *data, size_t len, core_err_t *err);
/* End of input: RC_OK only when the close delimiter was seen, else RC_FORMAT
 * ("body ended before the closing boundary"). */
rc_t api__mp_finish(api_mp_t *p, core_err_t *err);
void api__mp_free(api_mp_t *p);

#endif
