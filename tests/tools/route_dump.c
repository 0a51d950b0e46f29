/* route_dump.c - dump a router's per-token expert weights for the numpy comparison in
 * tests/ref/test_routing.py (independent reference: tests/ref/ref_routing.py).
 *
 *   route_dump --model DIR --router DIR [--top-k K] [--temperature T] --layer L
 *              --module q_proj --in X.f32 --rows N --out LAM.f32
 *       core_router_route (PHATGOOSE / ARROW) over N module-input rows X (N x n_in float32)
 *       -> lambda (N x n_experts float32).
 *   route_dump --model DIR --router DIR [--top-k K] [--temperature T] --xlora-h H.f32
 *              --rows N --out S.f32
 *       core_xlora_scalings over N final-norm hidden states H (N x dim float32)
 *       -> S (N x n_slots x n_experts float32).
 *   route_dump --model DIR --router DIR [--top-k K] [--temperature T] --info
 *       prints {"kind", "n_experts", "names", "top_k", "temperature", "n_slots"} as JSON.
 *
 * Only DIR/config.json of the model is read (routers need the base config, not weights).
 * The router loads with core_router_load_dir. Errors go to stderr with the rc name and the
 * core_err message; exit 1 (2 on a usage error). */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/model.h"
#include "core/rc.h"
#include "core/router.h"

typedef struct {
    const char *model_dir, *router_dir, *in_path, *h_path, *out_path, *module;
    int layer;
    long rows;
    bool info;
    core_route_params_t p;
} args_t;

static int usage(void)
{
    fprintf(stderr,
            "usage: route_dump --model DIR --router DIR [--top-k K] [--temperature T]\n"
            "         (--info | --layer L --module NAME --in X.f32 --rows N --out LAM.f32\n"
            "          | --xlora-h H.f32 --rows N --out S.f32)\n");
    return 2;
}

static int args_value(const char *o, const char *v, args_t *a)
{
    char *end = NULL;
    if (!strcmp(o, "--model"))
        a->model_dir = v;
    else if (!strcmp(o, "--router"))
        a->router_dir = v;
    else if (!strcmp(o, "--in"))
        a->in_path = v;
    else if (!strcmp(o, "--xlora-h"))
        a->h_path = v;
    else if (!strcmp(o, "--out"))
        a->out_path = v;
    else if (!strcmp(o, "--module"))
        a->module = v;
    else if (!strcmp(o, "--layer"))
        a->layer = (int)strtol(v, &end, 10);
    else if (!strcmp(o, "--rows"))
        a->rows = strtol(v, &end, 10);
    else if (!strcmp(o, "--top-k"))
        a->p.top_k = (int)strtol(v, &end, 10);
    else if (!strcmp(o, "--temperature"))
        a->p.temperature = strtof(v, &end);
    else
        return -1;
    return end && (end == v || *end) ? -1 : 0;
}

static int args_parse(int argc, char **argv, args_t *a)
{
    a->layer = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--info")) {
            a->info = true;
        } else if (i + 1 >= argc || args_value(argv[i], argv[i + 1], a)) {
            fprintf(stderr, "bad option or value at '%s'\n", argv[i]);
            return -1;
        } else {
            i++;
        }
    }
    if (!a->model_dir || !a->router_dir || a->p.top_k < 0 || a->p.temperature < 0)
        return -1;
    if (a->info)
        return 0;
    if (!a->out_path || a->rows < 1 || (!a->in_path == !a->h_path))
        return -1;
    return a->in_path && (a->layer < 0 || !a->module) ? -1 : 0;
}

/* The whole file at path, NUL-terminated (caller frees). NULL with a message on stderr. */
static char *file_read(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    char *buf = NULL;
    long n = -1;
    if (fp && fseek(fp, 0, SEEK_END) == 0 && (n = ftell(fp)) >= 0 && fseek(fp, 0, SEEK_SET) == 0)
        buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    if (!buf)
        fprintf(stderr, "%s: %s\n", path, fp ? "read failed" : strerror(errno));
    else
        buf[n] = 0;
    if (fp)
        fclose(fp);
    if (len && buf)
        *len = (size_t)n;
    return buf;
}

/* rows x width float32 from path (the size must match exactly). NULL on error. */
static float *floats_read(const char *path, long rows, size_t width)
{
    size_t len = 0;
    char *buf = file_read(path, &len);
    if (buf && len != (size_t)rows * width * sizeof(float)) {
        fprintf(stderr, "%s: %zu bytes, want %ld rows x %zu floats\n", path, len, rows, width);
        free(buf);
        return NULL;
    }
    return (float *)buf;
}

static int floats_write(const char *path, const float *v, size_t n)
{
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        return -1;
    }
    int ret = fwrite(v, sizeof(float), n, fp) == n ? 0 : -1;
    if (fclose(fp) != 0)
        ret = -1;
    if (ret)
        fprintf(stderr, "%s: write failed\n", path);
    return ret;
}

static int config_load(const char *dir, core_config_t *cfg)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text = file_read(path, NULL);
    if (!text)
        return -1;
    core_err_t err = {{0}};
    rc_t rc = core_config_parse(text, cfg, &err);
    free(text);
    if (rc != RC_OK) {
        fprintf(stderr, "model %s: %s: %s\n", dir, rc_name(rc), err.msg);
        return -1;
    }
    return 0;
}

static int info_print(const core_router_t *r)
{
    json_t *names = json_array();
    for (int e = 0; e < r->n_experts; e++)
        json_array_append_new(names, json_string(r->names[e]));
    json_t *o = json_pack("{s:s, s:i, s:o, s:i, s:f, s:i}", "kind", core_router_kind_name(r->kind),
                          "n_experts", r->n_experts, "names", names, "top_k", r->top_k,
                          "temperature", (double)r->temperature, "n_slots",
                          r->kind == CORE_ROUTER_XLORA ? r->xlora.n_slots : 0);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (s)
        printf("%s\n", s);
    free(s);
    json_decref(o);
    return s ? 0 : -1;
}

/* PHATGOOSE / ARROW: lambda of one module over the rows of --in. */
static int dump_route(const core_config_t *cfg, const core_router_t *r, const args_t *a)
{
    int m = 0, n_out = 0, n_in = 0;
    while (m < CORE_MOD__COUNT && strcmp(core_mod_name((core_mod_t)m), a->module))
        m++;
    if (m == CORE_MOD__COUNT || a->layer >= cfg->n_layers || r->kind == CORE_ROUTER_XLORA) {
        fprintf(stderr, "bad --module/--layer, or an X-LoRA router (use --xlora-h)\n");
        return -1;
    }
    core_mod_shape(cfg, (core_mod_t)m, &n_out, &n_in);
    float *x = floats_read(a->in_path, a->rows, (size_t)n_in);
    float *lam = calloc((size_t)a->rows * (size_t)r->n_experts, sizeof(float));
    int ret = -1;
    if (x && lam) {
        core_router_route(r, &a->p, a->layer, (core_mod_t)m, x, (size_t)a->rows, (size_t)n_in,
                          lam);
        ret = floats_write(a->out_path, lam, (size_t)a->rows * (size_t)r->n_experts);
    }
    free(x);
    free(lam);
    return ret;
}

/* XLORA: scalings of the rows of --xlora-h. */
static int dump_xlora(const core_config_t *cfg, const core_router_t *r, const args_t *a)
{
    if (r->kind != CORE_ROUTER_XLORA) {
        fprintf(stderr, "--xlora-h needs an X-LoRA router\n");
        return -1;
    }
    size_t n = (size_t)a->rows * (size_t)r->xlora.n_slots * (size_t)r->n_experts;
    float *h = floats_read(a->h_path, a->rows, (size_t)cfg->dim);
    float *S = calloc(n, sizeof(float));
    float *scratch = calloc(core_xlora_scratch_floats(r, (size_t)a->rows) + 1, sizeof(float));
    int ret = -1;
    if (h && S && scratch) {
        core_xlora_scalings(r, &a->p, h, (size_t)a->rows, S, scratch);
        ret = floats_write(a->out_path, S, n);
    }
    free(h);
    free(S);
    free(scratch);
    return ret;
}

int main(int argc, char **argv)
{
    args_t a = {0};
    core_config_t cfg;
    core_router_t *r = NULL;
    core_err_t err = {{0}};
    int ret = 1;

    if (args_parse(argc, argv, &a))
        return usage();
    if (config_load(a.model_dir, &cfg))
        goto out;
    rc_t rc = core_router_load_dir(a.router_dir, &cfg, NULL, &r, &err);
    if (rc != RC_OK) {
        fprintf(stderr, "router %s: %s: %s\n", a.router_dir, rc_name(rc), err.msg);
        goto out;
    }
    if (a.info)
        ret = info_print(r) ? 1 : 0;
    else if (a.in_path)
        ret = dump_route(&cfg, r, &a) ? 1 : 0;
    else
        ret = dump_xlora(&cfg, r, &a) ? 1 : 0;
out:
    if (r)
        core_router_release(r);
    return ret;
}
