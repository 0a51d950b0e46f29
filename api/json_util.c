/* json_util.c - request-field validation and JSON response helpers for api/.
 *
 * Every check names the field it refuses, says what was expected and what came, and sets
 * the error code clients can branch on: "invalid_type" (wrong JSON type), "invalid_value"
 * (right type, out of range), "unknown_field", "invalid_json". See api/json_util.h. */
#include "api/json_util.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool api__fail(api_fail_t *f, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    f->status = status;
    f->headers[0] = '\0';
    f->reason[0] = '\0';
    snprintf(f->code, sizeof f->code, "%s", code);
    va_start(ap, fmt);
    vsnprintf(f->message, sizeof f->message, fmt, ap);
    va_end(ap);
    return false;
}

bool api__fail_rc(api_fail_t *f, rc_t rc, const core_err_t *err)
{
    const char *msg = err && err->msg[0] ? err->msg : rc_str(rc);
    return api__fail(f, api_status_of(rc), rc_name(rc), "%s", msg);
}

void api__fail_reason(api_fail_t *f, const core_err_t *err)
{
    snprintf(f->reason, sizeof f->reason, "%s", core_err_reason(err));
}

/* An error document with "reason" next to "code" (adapter validation failures). */
static void send_fail_reason(api_sink_t *sink, const api_fail_t *f)
{
    json_t *doc = api__error_json(api__error_type(f->status), f->code, f->message);
    json_t *e = json_object_get(doc, "error"); /* borrowed */
    size_t len = 0;
    char *body = NULL;
    if (e && json_object_set_new(e, "reason", json_string(f->reason)) == 0)
        body = api__dump(doc, &len);
    json_decref(doc);
    if (!body) {
        api_send_error(sink, 500, NULL, "nomem", "out of memory building the response");
        return;
    }
    sink->begin(sink->self, f->status, "application/json", false,
                f->headers[0] ? f->headers : NULL);
    sink->write(sink->self, body, len);
    sink->end(sink->self);
    free(body);
}

void api__send_fail(api_sink_t *sink, const api_fail_t *f)
{
    if (f->reason[0])
        send_fail_reason(sink, f);
    else if (f->headers[0])
        api__send_error_hdr(sink, f->status, NULL, f->code, f->message, f->headers);
    else
        api_send_error(sink, f->status, NULL, f->code, f->message);
}

const char *api__error_type(int status)
{
    return (status >= 500 || status == 429) ? "server_error" : "invalid_request_error";
}

/* Length of the valid UTF-8 sequence at p (at most n bytes), 0 if invalid. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3; /* no overlong forms (E0), no surrogates (ED) */
        lo = c == 0xE0 ? 0xA0 : 0x80;
        hi = c == 0xED ? 0x9F : 0xBF;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4; /* no overlong forms (F0), nothing past U+10FFFF (F4) */
        lo = c == 0xF0 ? 0x90 : 0x80;
        hi = c == 0xF4 ? 0x8F : 0xBF;
    } else {
        return 0;
    }
    if (n < len || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

json_t *api__json_text(const char *s, size_t len)
{
    json_t *v = json_stringn(s ? s : "", s ? len : 0);
    if (v || !s)
        return v;
    /* Invalid UTF-8 (a file path, a partial token): replace bad bytes with U+FFFD. */
    char *buf = malloc(len * 3 + 1);
    if (!buf)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t k = utf8_seq((const unsigned char *)s + i, len - i);
        if (k == 0) {
            memcpy(buf + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        } else {
            memcpy(buf + o, s + i, k);
            o += k;
            i += k;
        }
    }
    v = json_stringn(buf, o);
    free(buf);
    return v;
}

json_t *api__error_json(const char *type, const char *code, const char *message)
{
    return json_pack("{s:{s:o,s:s,s:s}}", "error", "message",
                     api__json_text(message, strlen(message)), "type", type, "code", code);
}

char *api__dump(const json_t *v, size_t *len)
{
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
    *len = s ? strlen(s) : 0;
    return s;
}

void api__send_error_hdr(api_sink_t *sink, int status, const char *type, const char *code,
                         const char *message, const char *extra_headers)
{
    static const char fallback[] =
        "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"code\":\"nomem\"}}";
    json_t *doc = api__error_json(type ? type : api__error_type(status), code ? code : "error",
                                  message ? message : "");
    size_t len = 0;
    char *body = api__dump(doc, &len);
    json_decref(doc);
    sink->begin(sink->self, status, "application/json", false, extra_headers);
    if (body)
        sink->write(sink->self, body, len);
    else
        sink->write(sink->self, fallback, sizeof fallback - 1);
    sink->end(sink->self);
    free(body);
}

void api__send_json(api_sink_t *sink, int status, json_t *body)
{
    size_t len = 0;
    char *text = api__dump(body, &len);
    json_decref(body);
    if (!text) {
        api_send_error(sink, 500, NULL, "nomem", "out of memory building the response");
        return;
    }
    sink->begin(sink->self, status, "application/json", false, NULL);
    sink->write(sink->self, text, len);
    sink->end(sink->self);
    free(text);
}

const char *api__type_name(const json_t *v)
{
    if (!v)
        return "nothing";
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

bool api__parse_body(const api_request_t *req, json_t **root, api_fail_t *f)
{
    json_error_t jerr;
    *root = NULL;
    if (!req->body || req->body_len == 0)
        return api__fail(f, 400, "invalid_json", "the request body must be a JSON object");
    json_t *v = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!v)
        return api__fail(f, 400, "invalid_json", "invalid JSON at line %d, column %d: %s",
                         jerr.line, jerr.column, jerr.text);
    if (!json_is_object(v)) {
        api__fail(f, 400, "invalid_json", "the request body must be a JSON object, got %s",
                  api__type_name(v));
        json_decref(v);
        return false;
    }
    *root = v;
    return true;
}

bool api__check_fields(const json_t *obj, const char *const *allowed, api_fail_t *f)
{
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)obj, key, val) {
        bool ok = false;
        for (size_t i = 0; allowed[i] && !ok; i++)
            ok = strcmp(key, allowed[i]) == 0;
        if (!ok)
            return api__fail(f, 400, "unknown_field", "unknown field `%.100s`", key);
    }
    return true;
}

/* The field or NULL when absent or null (optional fields treat null as absent, as
 * clients that serialize every option send it). */
static const json_t *field(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    return (v && !json_is_null(v)) ? v : NULL;
}

bool api__get_int(const json_t *obj, const char *key, long long lo, long long hi,
                  long long *out, api_fail_t *f)
{
    const json_t *v = field(obj, key);
    if (!v)
        return true;
    if (!json_is_integer(v))
        return api__fail(f, 400, "invalid_type", "`%s` must be an integer, got %s", key,
                         api__type_name(v));
    long long x = json_integer_value(v);
    if (x < lo || x > hi) {
        if (hi == LLONG_MAX)
            return api__fail(f, 400, "invalid_value", "`%s` must be >= %lld, got %lld", key, lo,
                             x);
        return api__fail(f, 400, "invalid_value", "`%s` must be between %lld and %lld, got %lld",
                         key, lo, hi, x);
    }
    *out = x;
    return true;
}

bool api__get_num(const json_t *obj, const char *key, double lo, double hi, bool lo_open,
                  double *out, api_fail_t *f)
{
    const json_t *v = field(obj, key);
    if (!v)
        return true;
    if (!json_is_number(v))
        return api__fail(f, 400, "invalid_type", "`%s` must be a number, got %s", key,
                         api__type_name(v));
    double x = json_number_value(v);
    if ((lo_open ? !(x > lo) : !(x >= lo)) || !(x <= hi))
        return api__fail(f, 400, "invalid_value", "`%s` must be %s %g and <= %g, got %g", key,
                         lo_open ? ">" : ">=", lo, hi, x);
    *out = x;
    return true;
}

bool api__get_bool(const json_t *obj, const char *key, bool *out, api_fail_t *f)
{
    const json_t *v = field(obj, key);
    if (!v)
        return true;
    if (!json_is_boolean(v))
        return api__fail(f, 400, "invalid_type", "`%s` must be a boolean, got %s", key,
                         api__type_name(v));
    *out = json_is_true(v);
    return true;
}

bool api__get_str(const json_t *obj, const char *key, const char **out, size_t *len,
                  api_fail_t *f)
{
    const json_t *v = field(obj, key);
    if (!v)
        return true;
    if (!json_is_string(v))
        return api__fail(f, 400, "invalid_type", "`%s` must be a string, got %s", key,
                         api__type_name(v));
    *out = json_string_value(v);
    if (len)
        *len = json_string_length(v);
    return true;
}

bool api__token_ids(const json_t *arr, const char *what, int n_vocab, int32_t **ids, size_t *n,
                    api_fail_t *f)
{
    size_t len = json_array_size(arr);
    int32_t *v = len ? malloc(len * sizeof *v) : NULL;
    *ids = NULL;
    *n = 0;
    if (len && !v)
        return api__fail(f, 500, "nomem", "out of memory");
    for (size_t i = 0; i < len; i++) {
        const json_t *e = json_array_get(arr, i);
        if (!json_is_integer(e)) {
            free(v);
            return api__fail(f, 400, "invalid_type", "`%s[%zu]` must be an integer token id, got %s",
                             what, i, api__type_name(e));
        }
        long long x = json_integer_value(e);
        if (x < 0 || x >= n_vocab) {
            free(v);
            return api__fail(f, 400, "invalid_value",
                             "`%s[%zu]`: token id %lld is out of range (vocabulary size %d)", what,
                             i, x, n_vocab);
        }
        v[i] = (int32_t)x;
    }
    *ids = v;
    *n = len;
    return true;
}

uint64_t api__rand(api_t *a)
{
    a->rng += 0x9E3779B97F4A7C15ull;
    uint64_t z = a->rng;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

json_t *api__csv_json(const char *csv)
{
    json_t *arr = json_array();
    const char *p = csv;
    while (arr && *p) {
        size_t n = strcspn(p, ",");
        if (n)
            json_array_append_new(arr, json_stringn(p, n));
        p += n + (p[n] == ',');
    }
    return arr;
}
