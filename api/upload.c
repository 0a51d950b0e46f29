/* upload.c - POST /v1/adapters?name=NAME and POST /v1/adapters/NAME: a PEFT adapter's two
 * files as multipart/form-data, streamed into the store (store_upload_*) piece by piece as
 * the server reads them, never whole in memory.
 *
 * api_body_begin checks what can be checked from the head (the name, the media type and
 * boundary, that the store takes writes) and answers at once when something is wrong, so
 * a bad upload is refused before its body is read. Then each piece goes through the
 * multipart parser (api/multipart.h); part data goes to the store's temp files ("config",
 * "weights") or a small buffer ("base_fingerprint"). The first failure is remembered and
 * everything after it is ignored (the temp files are dropped at once); api_body_end answers
 * it, or commits the upload as a pending change answered 201 with the new adapter object.
 * Servers that buffer the body call the same path through the route table (api__h_upload).
 * Threads: the loop thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/json_util.h"
#include "api/tenancy.h"
#include "api/multipart.h"

#define UP_SLACK (64u * 1024u) /* the config part (<= 64 KiB) and the multipart framing */
#define UP_DEFAULT_MAX (1024ull * 1024 * 1024)
#define UP_FP_MAX 128 /* bytes of a base_fingerprint part */

typedef enum { UP_NONE = -1, UP_CONFIG, UP_WEIGHTS, UP_FP, UP__COUNT } up_part_t;
static const char *const up_part_names[UP__COUNT] = {"config", "weights", "base_fingerprint"};

struct api_body {
    api_t *a;
    api_sink_t *sink; /* borrowed: the server keeps it until the response ends */
    api_mp_t *mp;
    store_upload_t *up; /* NULL once committed or dropped */
    char name[STORE_NAME_MAX + 1];
    int64_t tenant; /* whose namespace the adapter goes into */
    size_t max, n_read;
    up_part_t part; /* the part being read */
    bool seen[UP__COUNT];
    char fp[UP_FP_MAX + 1];
    size_t n_fp;
    bool failed; /* the first failure, answered at end */
    api_fail_t fail;
};

static void body_free(api_body_t *b)
{
    if (!b)
        return;
    api__mp_free(b->mp);
    store_upload_free(b->up);
    free(b);
}

/* Remember the first failure; drop the temp files now rather than at end. */
static void body_fail(api_body_t *b, const api_fail_t *f)
{
    if (b->failed)
        return;
    b->failed = true;
    b->fail = *f;
    store_upload_free(b->up);
    b->up = NULL;
}

/* ---- multipart callbacks ----------------------------------------------------------------- */

static bool up_refuse(api_body_t *b, api_fail_t *f, core_err_t *err)
{
    body_fail(b, f);
    core_err(err, RC_INVALID, "%s", f->message);
    return false;
}

static bool on_part(void *user, const char *name, core_err_t *err)
{
    api_body_t *b = user;
    api_fail_t f;
    up_part_t p = UP_NONE;
    for (int i = 0; i < UP__COUNT; i++)
        if (strcmp(name, up_part_names[i]) == 0)
            p = (up_part_t)i;
    if (p == UP_NONE) {
        api__fail(&f, 400, "unknown_part",
                  "unknown part `%.64s`: an upload holds the parts `config`, `weights` and "
                  "optionally `base_fingerprint`",
                  name);
        return up_refuse(b, &f, err);
    }
    if (b->seen[p]) {
        api__fail(&f, 400, "duplicate_part", "the part `%s` appears twice", name);
        return up_refuse(b, &f, err);
    }
    b->seen[p] = true;
    b->part = p;
    return true;
}

/* A store write failure: sizes are 413, a full disk 507, a stopped store 503. */
static void fail_write(api_fail_t *f, rc_t rc, const core_err_t *err)
{
    const char *msg = err && err->msg[0] ? err->msg : rc_str(rc);
    if (rc == RC_LIMIT)
        api__fail(f, 413, "too_large", "%s", msg);
    else
        api__fail_store(f, rc, err);
}

static bool on_data(void *user, const char *data, size_t len, core_err_t *err)
{
    api_body_t *b = user;
    api_fail_t f;
    core_err_t e = {{0}};
    if (b->part == UP_NONE) /* the parser hands out data only inside a part */
        return true;
    if (b->part == UP_FP) {
        if (b->n_fp + len > UP_FP_MAX) {
            api__fail(&f, 400, "invalid_value",
                      "the part `base_fingerprint` is longer than %d bytes", UP_FP_MAX);
            return up_refuse(b, &f, err);
        }
        memcpy(b->fp + b->n_fp, data, len);
        b->n_fp += len;
        return true;
    }
    store_part_t sp = b->part == UP_CONFIG ? STORE_PART_CONFIG : STORE_PART_WEIGHTS;
    rc_t rc = b->up ? store_upload_write(b->up, sp, data, len, &e) : RC_INTERNAL;
    if (rc != RC_OK) {
        fail_write(&f, rc, &e);
        return up_refuse(b, &f, err);
    }
    return true;
}

static bool on_part_end(void *user, core_err_t *err)
{
    (void)err;
    ((api_body_t *)user)->part = UP_NONE;
    return true;
}

/* ---- the head: name and media type ------------------------------------------------------ */

/* The name from the query: exactly one "name" parameter (percent-decoded), nothing else.
 * path_name: the name the path gave, or NULL. OUT: name. */
static bool query_name(const char *query, const char *path_name, char name[STORE_NAME_MAX + 1],
                       api_fail_t *f)
{
    char val[API_PARAM_MAX + 1];
    bool have = false;
    const char *p = query ? query : "";
    while (*p) {
        size_t n = strcspn(p, "&"), nk = strcspn(p, "=");
        nk = nk < n ? nk : n;
        if (n && !(nk == 4 && strncmp(p, "name", 4) == 0))
            return api__fail(f, 400, "unknown_parameter",
                             "unknown query parameter `%.*s`: an upload takes only `name`",
                             (int)(nk < 64 ? nk : 64), p);
        if (n && (have || path_name))
            return api__fail(f, 400, "invalid_name", "give the adapter name once");
        if (n && (nk == n || !api__pct_decode(p + nk + 1, n - nk - 1, val, sizeof val) ||
                  strlen(val) > STORE_NAME_MAX || !store_name_valid(val)))
            return api__fail(f, 400, "invalid_name",
                             "the `name` parameter is not a valid adapter name: 1-%d characters "
                             "of A-Z a-z 0-9 . _ -, starting with a letter or digit",
                             STORE_NAME_MAX);
        if (n) {
            snprintf(name, STORE_NAME_MAX + 1, "%.*s", STORE_NAME_MAX, val);
            have = true;
        }
        p += n + (p[n] == '&');
    }
    if (path_name) {
        if (strlen(path_name) > STORE_NAME_MAX || !store_name_valid(path_name))
            return api__fail(f, 400, "invalid_name",
                             "`%.100s` is not a valid adapter name: 1-%d characters of A-Z a-z "
                             "0-9 . _ -, starting with a letter or digit",
                             path_name, STORE_NAME_MAX);
        snprintf(name, STORE_NAME_MAX + 1, "%.*s", STORE_NAME_MAX, path_name);
        have = true;
    }
    if (!have)
        return api__fail(f, 400, "invalid_name",
                         "the adapter name is required: POST /v1/adapters?name=NAME or "
                         "POST /v1/adapters/NAME");
    return true;
}

static bool media_type(const api_request_t *req, char boundary[API_MP_BOUNDARY_MAX + 1],
                       api_fail_t *f)
{
    core_err_t err = {{0}};
    rc_t rc =
        req->content_type ? api__mp_boundary(req->content_type, boundary, &err) : RC_UNSUPPORTED;
    if (rc == RC_UNSUPPORTED)
        return api__fail(f, 415, "unsupported_media_type",
                         "an upload must be multipart/form-data with the parts `config` and "
                         "`weights`");
    if (rc != RC_OK)
        return api__fail(f, 400, "invalid_multipart", "%s", err.msg[0] ? err.msg : rc_str(rc));
    return true;
}

/* Is method + path an upload? OUT: path_name (the NAME of /v1/adapters/NAME, decoded). */
static bool is_upload(const api_request_t *req, char *path_name, size_t cap, bool *bad_path)
{
    static const char pre[] = "/v1/adapters/";
    const char *path = req->path ? req->path : "";
    *bad_path = false;
    path_name[0] = '\0';
    if (!req->method || strcmp(req->method, "POST") != 0)
        return false;
    if (strcmp(path, "/v1/adapters") == 0)
        return true;
    if (strncmp(path, pre, sizeof pre - 1) != 0)
        return false;
    const char *seg = path + sizeof pre - 1;
    if (!*seg || strchr(seg, '/'))
        return false;
    *bad_path = !api__pct_decode(seg, strlen(seg), path_name, cap);
    return true;
}

/* Everything before the first body byte. path_name: NULL for /v1/adapters. OUT: *out. */
static bool body_new(api_t *a, const api_request_t *req, const char *path_name, api_sink_t *sink,
                     api_body_t **out, api_fail_t *f)
{
    static const api_mp_callbacks_t cb0 = {NULL, on_part, on_data, on_part_end};
    char boundary[API_MP_BOUNDARY_MAX + 1];
    core_err_t err = {{0}};
    api_body_t *b = calloc(1, sizeof *b);
    if (!b)
        return api__fail(f, 500, "nomem", "out of memory");
    b->a = a;
    b->sink = sink;
    b->part = UP_NONE;
    uint64_t cap = a->p.max_upload_bytes ? a->p.max_upload_bytes : UP_DEFAULT_MAX;
    b->max = cap > SIZE_MAX - UP_SLACK ? SIZE_MAX : (size_t)cap + UP_SLACK;
    api_mp_callbacks_t cb = cb0;
    cb.user = b;
    const api_caller_t *who = api__who(req);
    b->tenant = who->tenant;
    bool ok = query_name(req->query, path_name, b->name, f) && media_type(req, boundary, f);
    if (ok && !a->p.store)
        ok = api__fail(f, 503, "store_unavailable", "this server has no adapter store");
    /* Refused before the body is read when even its weights alone cannot fit the quota. */
    ok = ok && api__quota_storage(a, who, req->body_len > UP_SLACK ? req->body_len - UP_SLACK : 0,
                                  f);
    rc_t rc = ok ? store_upload_new(a->p.store, b->tenant, b->name, &b->up, &err) : RC_OK;
    if (ok && rc != RC_OK)
        ok = api__fail_store(f, rc, &err);
    rc = ok ? api__mp_new(boundary, &cb, &b->mp, &err) : RC_OK;
    if (ok && rc != RC_OK)
        ok = api__fail_rc(f, rc, &err);
    if (!ok) {
        body_free(b);
        return false;
    }
    *out = b;
    return true;
}

/* Authentication comes first: an unauthenticated request with a body larger than
 * API_PRE_AUTH_BODY_MAX is answered before any of it is read (the connection then
 * closes); a smaller one is read and api_handle answers the same refusal. */
api_body_mode_t api_body_begin(api_t *a, const api_request_t *req0, api_sink_t *sink,
                               api_body_t **body, size_t *max_body)
{
    char path_name[API_PARAM_MAX + 1];
    bool bad_path = false;
    api_fail_t f;
    api_request_t rq = *req0, *req = &rq;
    api_caller_t who;
    *body = NULL;
    if (!api__auth_route(a, req, &who, &f)) {
        if (req->body_len <= API_PRE_AUTH_BODY_MAX)
            return API_BODY_WHOLE;
        api__send_fail(sink, &f);
        return API_BODY_ANSWERED;
    }
    if (!is_upload(req, path_name, sizeof path_name, &bad_path))
        return API_BODY_WHOLE;
    if (bad_path) {
        api__fail(&f, 400, "invalid_name", "the adapter name in the path is not valid");
        api__send_fail(sink, &f);
        return API_BODY_ANSWERED;
    }
    if (!body_new(a, req, path_name[0] ? path_name : NULL, sink, body, &f)) {
        api__send_fail(sink, &f);
        return API_BODY_ANSWERED;
    }
    *max_body = (*body)->max;
    return API_BODY_STREAM;
}

/* ---- the body ----------------------------------------------------------------------------- */

void api_body_data(api_t *a, api_body_t *b, const char *data, size_t len)
{
    api_fail_t f;
    core_err_t err = {{0}};
    (void)a;
    if (b->failed)
        return;
    if (len > b->max - b->n_read) { /* the server enforces this too; a chunked body has no length */
        api__fail(&f, 413, "too_large", "the upload is larger than %zu bytes", b->max);
        body_fail(b, &f);
        return;
    }
    b->n_read += len;
    rc_t rc = api__mp_feed(b->mp, data, len, &err);
    if (rc == RC_OK || b->failed) /* a callback's refusal is already remembered */
        return;
    if (rc == RC_NOMEM)
        api__fail(&f, 500, "nomem", "out of memory");
    else
        api__fail(&f, 400, "invalid_multipart", "%s", err.msg[0] ? err.msg : rc_str(rc));
    body_fail(b, &f);
}

/* After the whole body: the parts it must hold and the base it was made for. */
static bool body_check(api_t *a, api_body_t *b, api_fail_t *f)
{
    core_err_t err = {{0}};
    rc_t rc = api__mp_finish(b->mp, &err);
    if (b->failed) { /* a callback refused during finish */
        *f = b->fail;
        return false;
    }
    if (rc != RC_OK)
        return api__fail(f, 400, "invalid_multipart", "%s", err.msg[0] ? err.msg : rc_str(rc));
    for (int p = UP_CONFIG; p <= UP_WEIGHTS; p++)
        if (!b->seen[p])
            return api__fail(f, 400, "missing_part", "the part `%s` is required", up_part_names[p]);
    if (!b->seen[UP_FP])
        return true;
    size_t s = 0, e = b->n_fp;
    while (s < e && strchr(" \t\r\n", b->fp[s]))
        s++;
    while (e > s && strchr(" \t\r\n", b->fp[e - 1]))
        e--;
    const char *want = a->p.model ? a->p.model->fingerprint : "";
    if (e - s != strlen(want) || strncasecmp(b->fp + s, want, e - s) != 0)
        return api__fail(f, 422, "base_mismatch",
                         "`base_fingerprint` is not the served base model's fingerprint (%s)",
                         want);
    return true;
}

static void answer_upload(api_t *a, api_sink_t *sink, int64_t tenant,
                          const char *name, rc_t rc,
                          const store_adapter_t *row, const core_err_t *err)
{
    api_fail_t f;
    (void)name;
    (void)tenant;
    if (rc == RC_OK && row) {
        api__send_json(sink, 201, api__adapter_json(a, row));
        return;
    }
    const char *msg = err && err->msg[0] ? err->msg : rc_str(rc);
    if (rc == RC_LIMIT) /* bigger than the whole cache budget: it could never be served */
        api__fail(&f, 422, "adapter_too_large", "%s", msg);
    else if (rc == RC_INVALID) /* validation, the name and parts were checked before */
        api__fail(&f, 422, "invalid", "%s", msg);
    else
        api__fail_store(&f, rc, err);
    if (f.status == 422 || f.status == 413)
        api__fail_reason(&f, err); /* error.reason: why the file was refused */
    api__send_fail(sink, &f);
}

void api_body_end(api_t *a, api_body_t *b, api_job_t **job)
{
    api_fail_t f;
    api_sink_t *sink = b->sink;
    *job = NULL;
    if (b->failed || !body_check(a, b, &f)) {
        if (b->failed)
            f = b->fail;
        body_free(b);
        api__send_fail(sink, &f);
        return;
    }
    api_change_t *c = api__change_new(a, b->tenant, sink, answer_upload, b->name);
    if (!c) {
        body_free(b);
        api_send_error(sink, 500, NULL, "nomem", "out of memory");
        return;
    }
    store_upload_t *u = b->up;
    b->up = NULL;
    body_free(b);
    store_upload_commit(u, api__change_done, c);
    api__change_started(a, c, job);
}

void api_body_abort(api_t *a, api_body_t *b)
{
    (void)a;
    body_free(b);
}

/* ---- servers that buffer the body: the same path over the whole body ------------------- */

static void upload_whole(api_t *a, const api_request_t *req, const char *path_name,
                         api_sink_t *sink, api_job_t **job)
{
    api_body_t *b = NULL;
    api_fail_t f;
    if (!body_new(a, req, path_name, sink, &b, &f)) {
        api__send_fail(sink, &f);
        return;
    }
    if (req->body_len)
        api_body_data(a, b, req->body, req->body_len);
    api_body_end(a, b, job);
}

void api__h_upload(api_t *a, const api_request_t *req, api_sink_t *sink, api_job_t **job)
{
    upload_whole(a, req, NULL, sink, job);
}

void api__hp_upload(api_t *a, const api_request_t *req, const char *name, api_sink_t *sink,
                    api_job_t **job)
{
    upload_whole(a, req, name, sink, job);
}
