/* tok_tool - command-line driver of core/tokenizer for the JS comparison test and benches.
 *
 *   tok_tool encode TOKENIZER_JSON [--no-add-special] [--no-parse-special] < lines
 *       each input line is a JSON string; prints one JSON array of ids per line
 *   tok_tool decode TOKENIZER_JSON [--skip-special] [--stream] < lines
 *       each input line is a JSON array of ids; prints one JSON string per line
 *       (--stream decodes id by id through core_tok_stream_* and joins the pieces)
 *   tok_tool batch TOKENIZER_JSON < lines
 *       each input line is {"op":"encode","text":s,"add_special":b,"parse_special":b} or
 *       {"op":"decode","ids":[...],"skip_special":b,"stream":b}; one output line each
 *       (one load for many requests, which keeps the JS test fast)
 *   tok_tool bench TOKENIZER_JSON FILE
 *       prints load time and encode throughput of FILE's contents
 * A line that fails prints {"error": "..."} instead, so one bad entry is visible as such. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/tokenizer.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void print_error(rc_t rc, const char *msg)
{
    json_t *o = json_pack("{s:s+++}", "error", rc_name(rc), ": ", msg, "");
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    printf("%s\n", s ? s : "{\"error\":\"?\"}");
    free(s);
    json_decref(o);
}

static void encode_line(const core_tok_t *t, const char *line, core_tok_encode_params_t p)
{
    json_error_t jerr;
    json_t *v = json_loads(line, JSON_DECODE_ANY, &jerr);
    if (!json_is_string(v)) {
        print_error(RC_FORMAT, "input line is not a JSON string");
        json_decref(v);
        return;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    core_err_t err = {{0}};
    rc_t rc = core_tok_encode(t, json_string_value(v), json_string_length(v), p, &ids, &n, &err);
    if (rc != RC_OK) {
        print_error(rc, err.msg);
    } else {
        putchar('[');
        for (size_t i = 0; i < n; i++)
            printf(i ? ",%d" : "%d", ids[i]);
        printf("]\n");
    }
    free(ids);
    json_decref(v);
}

static rc_t stream_decode(const core_tok_t *t, const int32_t *ids, size_t n, bool skip,
                          char **text, size_t *len)
{
    core_tok_stream_t *s = core_tok_stream_new(t, skip);
    size_t cap = 64, used = 0;
    char *buf = malloc(cap);
    rc_t rc = s && buf ? RC_OK : RC_NOMEM;
    for (size_t i = 0; rc == RC_OK && i <= n; i++) {
        const char *p;
        size_t pl;
        rc = i < n ? core_tok_stream_push(s, ids[i], &p, &pl) : core_tok_stream_flush(s, &p, &pl);
        if (rc != RC_OK)
            break;
        if (used + pl + 1 > cap) {
            cap = (used + pl + 1) * 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                rc = RC_NOMEM;
                break;
            }
            buf = nb;
        }
        memcpy(buf + used, p, pl);
        used += pl;
    }
    core_tok_stream_free(s);
    if (rc != RC_OK) {
        free(buf);
        return rc;
    }
    buf[used] = 0;
    *text = buf;
    *len = used;
    return RC_OK;
}

static void decode_line(const core_tok_t *t, const char *line, bool skip, bool stream)
{
    json_error_t jerr;
    json_t *v = json_loads(line, 0, &jerr);
    size_t n = json_is_array(v) ? json_array_size(v) : 0;
    int32_t *ids = malloc((n + 1) * sizeof *ids);
    for (size_t i = 0; ids && i < n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(v, i));
    char *text = NULL;
    size_t len = 0;
    core_err_t err = {{0}};
    rc_t rc = !json_is_array(v) ? core_err(&err, RC_FORMAT, "input line is not a JSON array")
              : !ids            ? core_err(&err, RC_NOMEM, "out of memory")
              : stream          ? stream_decode(t, ids, n, skip, &text, &len)
                                : core_tok_decode(t, ids, n, skip, &text, &len, &err);
    if (rc != RC_OK) {
        print_error(rc, err.msg);
    } else {
        json_t *s = json_stringn_nocheck(text, len);
        char *out = json_dumps(s, JSON_ENCODE_ANY);
        printf("%s\n", out ? out : "null");
        free(out);
        json_decref(s);
    }
    free(text);
    free(ids);
    json_decref(v);
}

static void batch_line(const core_tok_t *t, const char *line)
{
    json_error_t jerr;
    json_t *o = json_loads(line, 0, &jerr);
    const char *op = json_string_value(json_object_get(o, "op"));
    json_t *arg = json_object_get(o, op && strcmp(op, "encode") == 0 ? "text" : "ids");
    char *a = arg ? json_dumps(arg, JSON_ENCODE_ANY) : NULL;
    if (!op || !a) {
        print_error(RC_FORMAT, "batch line needs op and text/ids");
    } else if (strcmp(op, "encode") == 0) {
        core_tok_encode_params_t p = {
            .add_special = json_is_true(json_object_get(o, "add_special")),
            .parse_special = json_is_true(json_object_get(o, "parse_special"))};
        encode_line(t, a, p);
    } else {
        decode_line(t, a, json_is_true(json_object_get(o, "skip_special")),
                    json_is_true(json_object_get(o, "stream")));
    }
    free(a);
    json_decref(o);
}

static int bench(const char *json_path, const char *file)
{
    double t0 = now_s();
    core_tok_t *t = NULL;
    core_err_t err = {{0}};
    if (core_tok_load(json_path, &t, &err) != RC_OK) {
        fprintf(stderr, "load: %s\n", err.msg);
        return 1;
    }
    double t1 = now_s();
    FILE *f = fopen(file, "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot open\n", file);
        core_tok_free(t);
        return 1;
    }
    static char buf[1 << 24];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    int32_t *ids = NULL;
    size_t n = 0;
    double t2 = now_s();
    rc_t rc = core_tok_encode(t, buf, len, core_tok_encode_default_params(), &ids, &n, &err);
    double t3 = now_s();
    if (rc != RC_OK)
        fprintf(stderr, "encode: %s\n", err.msg);
    else
        printf("load %.3f s, encode %zu bytes -> %zu ids in %.3f s (%.2f MB/s)\n", t1 - t0, len,
               n, t3 - t2, (double)len / 1e6 / (t3 - t2));
    free(ids);
    core_tok_free(t);
    return rc == RC_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: tok_tool encode|decode|bench TOKENIZER_JSON [options]\n");
        return 2;
    }
    if (strcmp(argv[1], "bench") == 0)
        return argc == 4 ? bench(argv[2], argv[3]) : 2;
    core_tok_encode_params_t p = core_tok_encode_default_params();
    bool skip = false, stream = false;
    for (int i = 3; i < argc; i++) {
        p.add_special = p.add_special && strcmp(argv[i], "--no-add-special") != 0;
        p.parse_special = p.parse_special && strcmp(argv[i], "--no-parse-special") != 0;
        skip = skip || strcmp(argv[i], "--skip-special") == 0;
        stream = stream || strcmp(argv[i], "--stream") == 0;
    }
    core_tok_t *t = NULL;
    core_err_t err = {{0}};
    rc_t rc = core_tok_load(argv[2], &t, &err);
    if (rc != RC_OK) {
        fprintf(stderr, "tok_tool: %s (%s)\n", err.msg, rc_name(rc));
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    bool enc = strcmp(argv[1], "encode") == 0, batch = strcmp(argv[1], "batch") == 0;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        if (n > 0 && line[n - 1] == '\n')
            line[n - 1] = 0;
        if (batch)
            batch_line(t, line);
        else if (enc)
            encode_line(t, line, p);
        else
            decode_line(t, line, skip, stream);
    }
    free(line);
    core_tok_free(t);
    return 0;
}
