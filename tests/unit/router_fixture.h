/* router_fixture.h - what tests/unit/test_router.c and test_router_xlora.c share: a
 * two-layer toy base (dim 8), in-memory LoRA experts with chosen target modules, a scratch
 * folder, safetensors sets and the build / refusal checks. Header-only, test code only. */
#ifndef TESTS_ROUTER_FIXTURE_H
#define TESTS_ROUTER_FIXTURE_H

#include <ftw.h>
#include <stdint.h>
#include <unistd.h>

#include "core/router.h"
#include "core/safetensors.h"
#include "tests/unit/harness.h"
#include "tests/unit/st_write.h"

/* dim 8, 2 heads of 4, 1 kv head, hidden 12, 2 layers:
 * q (8,8)  k,v (4,8)  o (8,8)  gate,up (12,8)  down (8,12) */
static inline core_config_t base(void)
{
    core_config_t c;
    memset(&c, 0, sizeof c);
    strcpy(c.arch, "LlamaForCausalLM");
    strcpy(c.model_type, "llama");
    c.n_vocab = 32;
    c.dim = 8;
    c.hidden_dim = 12;
    c.n_layers = 2;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.head_dim = 4;
    c.max_pos = 64;
    return c;
}

static const int shape_out[CORE_MOD__COUNT] = {8, 4, 4, 8, 12, 12, 8};
static const int shape_in[CORE_MOD__COUNT] = {8, 8, 8, 8, 8, 8, 12};
static const char *const parent[CORE_MOD__COUNT] = {
    "self_attn", "self_attn", "self_attn", "self_attn", "mlp", "mlp", "mlp"};
static const char *const modname[CORE_MOD__COUNT] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"};
enum { MQ = 1, MK = 2, MV = 4, MO = 8, MG = 16, MU = 32, MD = 64 };

/* ---- helpers ------------------------------------------------------------------- */

static uint32_t rng = 1;
static inline float frand(void) /* uniform [-1, 1) */
{
    rng = rng * 1664525u + 1013904223u;
    return (float)((rng >> 8) & 0xffffff) / (float)0x800000 - 1.0f;
}

static inline float *rand_floats(size_t n)
{
    float *v = malloc(n * sizeof *v);
    ASSERT(v);
    for (size_t i = 0; i < n; i++)
        v[i] = frand();
    return v;
}

/* A LoRA on the modules in mask, every layer, rank r, held by the test (refcount 1). */
static inline core_lora_t *mk_expert(unsigned mask, int r, uint32_t seed)
{
    core_config_t c = base();
    core_lora_t *lo = calloc(1, sizeof *lo);
    ASSERT(lo);
    rng = seed;
    lo->n_layers = c.n_layers;
    lo->rank = r;
    lo->alpha = 2.0f * r;
    lo->target_mask = mask;
    lo->refcount = 1;
    lo->mods = calloc((size_t)c.n_layers * CORE_MOD__COUNT, sizeof *lo->mods);
    ASSERT(lo->mods);
    for (int l = 0; l < c.n_layers; l++)
        for (int k = 0; k < CORE_MOD__COUNT; k++) {
            if (!(mask & (1u << k)))
                continue;
            core_lora_mod_t *md = &lo->mods[l * CORE_MOD__COUNT + k];
            md->r = r;
            md->n_out = shape_out[k], md->n_in = shape_in[k];
            md->scale = 2.0f;
            md->A = rand_floats((size_t)r * shape_in[k]);
            md->B = rand_floats((size_t)shape_out[k] * r);
        }
    return lo;
}

/* Frees an in-memory expert; no router may still hold it. */
static inline void mk_free(core_lora_t *lo)
{
    ASSERT_EQ(lo->refcount, 1);
    for (int i = 0; i < lo->n_layers * CORE_MOD__COUNT; i++) {
        free(lo->mods[i].A);
        free(lo->mods[i].B);
    }
    free(lo->mods);
    free(lo);
}

static char g_tmp[128];
static const char *tmp_dir(void)
{
    if (!g_tmp[0]) {
        snprintf(g_tmp, sizeof g_tmp, "/tmp/router-test-%d", (int)getpid());
        ASSERT(stw_mkdirs(g_tmp) == 0);
    }
    return g_tmp;
}

static inline int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static inline void tmp_clean(void)
{
    if (g_tmp[0])
        nftw(g_tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    g_tmp[0] = 0;
}

/* Tensors to write: each owns its float data (F32), shape 1-D or 2-D. */
enum { TS_MAX = 40 };
typedef struct {
    stw_tensor_t t[TS_MAX];
    char names[TS_MAX][160];
    float *data[TS_MAX];
    size_t n;
} tset_t;

static inline float *ts_add(tset_t *s, const char *name, int64_t d0, int64_t d1)
{
    ASSERT(s->n < TS_MAX);
    size_t n = (size_t)(d0 * (d1 ? d1 : 1));
    float *v = rand_floats(n);
    snprintf(s->names[s->n], sizeof s->names[0], "%s", name);
    s->data[s->n] = v;
    s->t[s->n] = (stw_tensor_t){s->names[s->n], "F32", d1 ? 2 : 1, {d0, d1}, v, n * 4};
    s->n++;
    return v;
}

static inline void ts_write(tset_t *s, const char *path)
{
    ASSERT(stw_write(path, s->t, s->n, NULL) == 0);
}

static inline core_st_t *ts_open(tset_t *s)
{
    static int seq;
    char path[256];
    snprintf(path, sizeof path, "%s/st%d.safetensors", tmp_dir(), seq++);
    ts_write(s, path);
    core_st_t *st = NULL;
    core_err_t e = {{0}};
    ASSERT_RC(core_st_open_file(path, &st, &e), RC_OK, &e);
    return st;
}

static inline void ts_free(tset_t *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->data[i]);
    s->n = 0;
}

static inline void expect_err(int got, rc_t want, const core_err_t *e, const char *reason,
                       const char *needle)
{
    if (got != (int)want)
        HARNESS_FAIL("rc %d, want %d (%s)", got, (int)want, e->msg);
    if (strcmp(core_err_reason(e), reason) != 0)
        HARNESS_FAIL("reason '%s', want '%s' (%s)", core_err_reason(e), reason, e->msg);
    if (needle && !strstr(e->msg, needle))
        HARNESS_FAIL("message lacks '%s': %s", needle, e->msg);
}

/* from_parts that must fail; the experts' references must come back. */
static inline void expect_refused(const char *cfg, const core_st_t *st, core_lora_t *const *ex, int n,
                           rc_t want, const char *reason, const char *needle)
{
    core_config_t b = base();
    core_router_t *r = (core_router_t *)1;
    core_err_t e = {{0}};
    int got = core_router_from_parts(cfg, st, ex, n, &b, &r, &e);
    expect_err(got, want, &e, reason, needle);
    ASSERT(r == NULL);
    for (int i = 0; i < n; i++)
        ASSERT_EQ(ex[i]->refcount, 1);
}

static inline core_router_t *build_ok(const char *cfg, const core_st_t *st, core_lora_t *const *ex,
                               int n)
{
    core_config_t b = base();
    core_router_t *r = NULL;
    core_err_t e = {{0}};
    ASSERT_RC(core_router_from_parts(cfg, st, ex, n, &b, &r, &e), RC_OK, &e);
    ASSERT(r != NULL);
    ASSERT_EQ(r->refcount, 1);
    for (int i = 0; i < n; i++)
        ASSERT(ex[i]->refcount >= 2);
    return r;
}

/* Is e among the k best of s over the mask (ties to the lower index)? */
static inline bool ref_kept(const double *s, uint32_t mask, int n, int k, int e)
{
    int better = 0;
    for (int j = 0; j < n; j++)
        if ((mask >> j & 1u) && j != e && (s[j] > s[e] || (s[j] == s[e] && j < e)))
            better++;
    return better < k;
}

#endif
