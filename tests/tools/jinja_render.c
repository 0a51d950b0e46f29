/* jinja_render.c - renders a chat template with core/jinja for the JS comparison tests.
 *   jinja_render TEMPLATE_FILE CONTEXT_JSON_FILE
 * Prints the rendering to stdout (exactly its bytes), exit 0; on any error prints
 * "jinja_render: <rc name>: <message>" to stderr and exits 1. Integers are read as doubles
 * (JSON_DECODE_INT_AS_REAL) so numbers past 64 bits load as they do in JavaScript. */
#include <stdio.h>
#include <stdlib.h>

#include "core/jinja.h"

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0;
    if (!f)
        return NULL;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 65536;
            char *p = realloc(buf, cap);
            if (!p) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = p;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

int main(int argc, char **argv)
{
    core_err_t err = {{0}};
    core_jinja_t *t = NULL;
    json_t *vars = NULL;
    char *src = NULL, *out = NULL;
    size_t len = 0, out_len = 0;
    rc_t rc = RC_INVALID;
    if (argc != 3) {
        fprintf(stderr, "usage: jinja_render TEMPLATE_FILE CONTEXT_JSON_FILE\n");
        return 2;
    }
    if (!(src = read_file(argv[1], &len))) {
        snprintf(err.msg, sizeof err.msg, "cannot read %s", argv[1]);
        rc = RC_IO;
        goto out;
    }
    json_error_t jerr;
    vars = json_load_file(argv[2], JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &jerr);
    if (!vars) {
        snprintf(err.msg, sizeof err.msg, "%s:%d: %s", argv[2], jerr.line, jerr.text);
        rc = RC_FORMAT;
        goto out;
    }
    rc = core_jinja_compile(src, len, &t, &err);
    if (!rc)
        rc = core_jinja_render(t, vars, (size_t)64 << 20, &out, &out_len, &err);
    if (!rc)
        fwrite(out, 1, out_len, stdout);
out:
    if (rc)
        fprintf(stderr, "jinja_render: %s: %s\n", rc_name(rc), err.msg);
    free(out);
    core_jinja_free(t);
    json_decref(vars);
    free(src);
    return rc ? 1 : 0;
}
