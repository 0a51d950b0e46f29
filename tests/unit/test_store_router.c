/* test_store_router.c - routers as stored objects (store.h "routers"): registration of
 * PHATGOOSE, Arrow and X-LoRA routers over tiny experts, acquire (the built router, its
 * experts in order), Arrow prototypes stored once and reused, expert links across
 * restarts, delete rules, X-LoRA folder imports with expert sub-folders, broken experts,
 * and the migration from schema 3.
 *
 * Fixtures (store_fixture.h): a 1-layer dim-8 base, experts "a" (seed 0.5) and "b" (seed
 * 1.0), rank 2 on q_proj and v_proj. Router files are written here in C. */
#include <sqlite3.h>

#include "core/safetensors.h"
#include "tests/unit/store_fixture.h"

static const char PG_CFG[] =
    "{\"router_type\": \"phatgoose\", \"experts\": [\"a\", \"b\"], \"top_k\": 1}";
static const char ARROW_CFG[] = "{\"router_type\": \"arrow\", \"experts\": [\"a\", \"b\"]}";
static const char XL_CFG[] =
    "{\"peft_type\": \"XLORA\", \"hidden_size\": 8, \"adapters\": {\"a\": \"a\", \"b\": \"b\"},"
    " \"xlora_depth\": 1}";

/* ---- fixtures ---- */

/* A safetensors image of t[0 .. n), written through the file writer. OUT: *len. */
static uint8_t *st_image(fx_t *f, const stw_tensor_t *t, size_t n, size_t *len)
{
    char path[400];
    snprintf(path, sizeof path, "%s/image.safetensors", f->root);
    ASSERT_EQ(stw_write(path, t, n, NULL), 0);
    return (uint8_t *)read_all(path, len);
}

static void fill(float *v, int n, float seed)
{
    for (int i = 0; i < n; i++)
        v[i] = seed + 0.1f * (float)((i * 7) % 11) - 0.05f * (float)i;
}

/* PHATGOOSE gates for q_proj and v_proj of layer 0: (n_experts, DIM) each. */
static uint8_t *gates_image(fx_t *f, int n_experts, size_t *len)
{
    static float q[4 * DIM], v[4 * DIM];
    fill(q, n_experts * DIM, 0.3f);
    fill(v, n_experts * DIM, -0.2f);
    size_t nb = (size_t)n_experts * DIM * sizeof(float);
    stw_tensor_t t[2] = {
        {"model.layers.0.self_attn.q_proj.phatgoose_gate", "F32", 2, {n_experts, DIM}, q, nb},
        {"model.layers.0.self_attn.v_proj.phatgoose_gate", "F32", 2, {n_experts, DIM}, v, nb},
    };
    return st_image(f, t, 2, len);
}

/* X-LoRA classifier of depth 1: DIM -> 2 experts. */
static uint8_t *classifier_image(fx_t *f, size_t *len)
{
    static float w[2 * DIM], b[2] = {0.1f, -0.1f};
    fill(w, 2 * DIM, 0.05f);
    stw_tensor_t t[2] = {
        {"base_model.model.internal_xlora_classifier.layers.0.weight", "F32", 2, {2, DIM}, w,
         sizeof w},
        {"base_model.model.internal_xlora_classifier.layers.0.bias", "F32", 1, {2}, b, sizeof b},
    };
    return st_image(f, t, 2, len);
}

static rc_t fx_rput(fx_t *f, const char *name, const char *cfg, const uint8_t *w, size_t wlen,
                    const char *const *experts, int n, store_adapter_t *row)
{
    done_t d = {0};
    store_router_src_t src = {.config = cfg, .config_len = strlen(cfg), .weights = w,
                              .weights_len = wlen, .experts = experts, .n_experts = n};
    store_router_put(f->s, f->tenant, name, &src, on_done, &d);
    rc_t rc = fx_done(f, &d);
    if (row)
        *row = d.row;
    return rc;
}

/* "pg": PHATGOOSE over a and b (imported first when import_experts). */
static store_adapter_t fx_pg(fx_t *f, bool import_experts)
{
    size_t len;
    store_adapter_t row;
    if (import_experts) {
        fx_import(f, "a", 0.5f);
        fx_import(f, "b", 1.0f);
    }
    uint8_t *g = gates_image(f, 2, &len);
    ASSERT_RC(fx_rput(f, "pg", PG_CFG, g, len, NULL, 0, &row), RC_OK, &f->err);
    free(g);
    return row;
}

/* One acquire of a router that must answer now (synchronous executor or resident). */
static rc_t fx_acq_router(fx_t *f, const char *spec, core_router_t **r)
{
    store_want_t w;
    store_wait_t *wt = NULL;
    ready_t rd = {0};
    memset(&w, 0, sizeof w);
    snprintf(w.spec, sizeof w.spec, "%s", spec);
    rc_t rc = store_acquire(f->s, f->tenant, &w, 1, on_ready, &rd, &wt, &f->err);
    ASSERT(wt == NULL);
    ASSERT_EQ(rd.n, 0);
    ASSERT(w.lora == NULL);
    ASSERT_EQ(w.router != NULL, rc == RC_OK);
    *r = w.router;
    return rc;
}

static void expect_experts(fx_t *f, int64_t id, const char *e0, const char *e1)
{
    char(*specs)[STORE_SPEC_MAX] = NULL;
    int n = 0;
    ASSERT_RC(store_router_experts(f->s, id, &specs, &n, &f->err), RC_OK, &f->err);
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(specs[0], e0);
    ASSERT_STREQ(specs[1], e1);
    free(specs);
}

/* A PEFT X-LoRA folder: dir/adapter_config.json, the classifier, and experts dir/e1 and
 * dir/e2 (e2 with use_dora when broken). */
static void write_xlora_dir(fx_t *f, const char *dir, bool broken)
{
    char path[600];
    size_t len;
    ASSERT_EQ(stw_mkdirs(dir), 0);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    ASSERT_EQ(stw_write_text(path, "{\"peft_type\": \"XLORA\", \"hidden_size\": 8,"
                                   " \"adapters\": {\"e1\": \"e1\", \"e2\": \"e2\"}}"),
              0);
    uint8_t *c = classifier_image(f, &len);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    ASSERT_EQ(stw_write_bytes(path, c, len), 0);
    free(c);
    snprintf(path, sizeof path, "%s/e1", dir);
    write_adapter(path, 0.25f);
    snprintf(path, sizeof path, "%s/e2", dir);
    write_adapter(path, 0.75f);
    if (broken) {
        snprintf(path, sizeof path, "%s/e2/adapter_config.json", dir);
        ASSERT_EQ(stw_write_text(path, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4,"
                                       " \"target_modules\": [\"q_proj\", \"v_proj\"],"
                                       " \"use_dora\": true}"),
                  0);
    }
}

/* ---- registration and acquire ---- */

TEST(put_phatgoose_acquire)
{
    fx_t f;
    core_router_t *r = NULL;
    size_t len;
    fx_init(&f, "r_pg");
    fx_open(&f);
    store_adapter_t row = fx_pg(&f, true);
    ASSERT_STREQ(row.kind, "phatgoose");
    ASSERT_STREQ(row.name, "pg");
    ASSERT_EQ(row.version, 1);
    ASSERT_EQ(row.rank, RANK);
    ASSERT_NEAR(row.alpha, 0.0, 0);
    ASSERT_STREQ(row.targets, "q_proj,v_proj");
    uint8_t *g = gates_image(&f, 2, &len);
    free(g);
    ASSERT_EQ(row.size, (int64_t)len);
    ASSERT(row.mem_bytes > 0);
    ASSERT(store_kind_is_router(row.kind) && !store_kind_is_router("lora"));
    expect_experts(&f, row.id, "a@1", "b@1");

    ASSERT_RC(fx_acq_router(&f, "pg", &r), RC_OK, &f.err);
    ASSERT_EQ(r->kind, CORE_ROUTER_PHATGOOSE);
    ASSERT_EQ(r->n_experts, 2);
    ASSERT_EQ(r->top_k, 1);
    ASSERT_NEAR(lora_seed(r->experts[0]), 0.5, 1e-6);
    ASSERT_NEAR(lora_seed(r->experts[1]), 1.0, 1e-6);
    ASSERT_EQ((int64_t)r->n_bytes, row.mem_bytes);
    /* in use through the router: each expert is held by the cache and the router */
    ASSERT_EQ(refcount(r->experts[0]), 2);
    ASSERT_EQ(fx_rt(&f, "a").n_users, 1);
    ASSERT(fx_rt(&f, "pg").resident);
    ASSERT_EQ(fx_rt(&f, "pg").n_users, 0); /* the parts are idle once the router is built */
    core_router_release(r);
    ASSERT_EQ(fx_rt(&f, "a").n_users, 0);

    /* listed like adapters, told apart by kind */
    store_adapter_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_list(f.s, f.tenant, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 3);
    ASSERT_STREQ(rows[2].name, "pg");
    ASSERT_STREQ(rows[2].kind, "phatgoose");
    ASSERT_STREQ(rows[0].kind, "lora");
    free(rows);
    ASSERT_RC(store_versions(f.s, f.tenant, "pg", &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 1);
    ASSERT_STREQ(rows[0].kind, "phatgoose");
    free(rows);
    fx_end(&f);
}

TEST(put_xlora_explicit_experts)
{
    fx_t f;
    core_router_t *r = NULL;
    store_adapter_t row;
    size_t len;
    fx_init(&f, "r_xl");
    fx_open(&f);
    fx_import(&f, "a", 0.5f);
    fx_import(&f, "b", 1.0f);
    fx_import(&f, "b", 1.5f); /* b@2 */
    ASSERT_RC(fx_alias(&f, "best", "b@1", NULL), RC_OK, &f.err);
    const char *experts[2] = {"best", "b"}; /* an alias and a name, resolved now */
    uint8_t *c = classifier_image(&f, &len);
    ASSERT_RC(fx_rput(&f, "xl", XL_CFG, c, len, experts, 2, &row), RC_OK, &f.err);
    free(c);
    ASSERT_STREQ(row.kind, "xlora");
    expect_experts(&f, row.id, "b@1", "b@2");
    /* the alias moving later does not change the router */
    ASSERT_RC(fx_alias(&f, "best", "a", NULL), RC_OK, &f.err);
    ASSERT_RC(fx_acq_router(&f, "xl", &r), RC_OK, &f.err);
    ASSERT_EQ(r->kind, CORE_ROUTER_XLORA);
    ASSERT_EQ(r->top_k, 0);
    ASSERT_EQ(r->n_experts, 2);
    ASSERT_NEAR(lora_seed(r->experts[0]), 1.0, 1e-6);
    ASSERT_NEAR(lora_seed(r->experts[1]), 1.5, 1e-6);
    ASSERT_STREQ(r->names[0], "a"); /* the config's names */
    core_router_release(r);
    fx_end(&f);
}

TEST(acquire_async_and_cancel)
{
    fx_t f;
    store_want_t w[2], w2;
    ready_t rd = {0}, rd2 = {0};
    store_wait_t *wt = NULL, *wt2 = NULL;
    fx_init(&f, "r_async");
    fx_async(&f);
    fx_open(&f);
    fx_pg(&f, true);
    fx_reopen(&f); /* cold */
    memset(w, 0, sizeof w);
    snprintf(w[0].spec, sizeof w[0].spec, "pg");
    snprintf(w[1].spec, sizeof w[1].spec, "a");
    ASSERT_RC(store_acquire(f.s, f.tenant, w, 2, on_ready, &rd, &wt, &f.err), RC_OK, &f.err);
    ASSERT(wt != NULL);
    fx_acq_wait(&f, &w2, "pg", &rd2, &wt2);
    store_wait_cancel(f.s, wt2); /* nothing it held stays held */
    while (rd.n == 0)
        aex_pump_one(f.x);
    ASSERT_RC(rd.rc, RC_OK, &rd.err);
    ASSERT_EQ(rd2.n, 0);
    ASSERT(w2.router == NULL && w2.lora == NULL);
    ASSERT(w[0].router != NULL && w[0].lora == NULL);
    ASSERT(w[1].lora != NULL && w[1].router == NULL);
    core_router_t *r = w[0].router;
    ASSERT_EQ(r->kind, CORE_ROUTER_PHATGOOSE);
    ASSERT_NEAR(lora_seed(r->experts[0]), 0.5, 1e-6);
    ASSERT(r->experts[0] == w[1].lora);
    /* cache + router + the want "a": the wait's own references are gone */
    ASSERT_EQ(refcount(r->experts[0]), 3);
    ASSERT_EQ(refcount(r->experts[1]), 2); /* cache + router */
    core_lora_release(w[1].lora);
    core_router_release(r);
    ASSERT_EQ(fx_rt(&f, "a").n_users, 0);
    ASSERT_EQ(fx_rt(&f, "b").n_users, 0);
    ASSERT_EQ(fx_rt(&f, "pg").n_users, 0);
    fx_end(&f);
}

TEST(arrow_prototypes_stored_and_reused)
{
    fx_t f;
    core_router_t *r = NULL, *r2 = NULL;
    store_adapter_t row;
    char path[600];
    size_t len;
    fx_init(&f, "r_arrow");
    fx_open(&f);
    fx_import(&f, "a", 0.5f);
    fx_import(&f, "b", 1.0f);
    ASSERT_RC(fx_rput(&f, "ar", ARROW_CFG, NULL, 0, NULL, 0, &row), RC_OK, &f.err);
    ASSERT_STREQ(row.kind, "arrow");
    ASSERT(row.size > 0); /* the prototypes, computed at registration */
    fx_path(&f, path, sizeof path, "blobs", row.sha256);
    uint8_t *img = (uint8_t *)read_all(path, &len);
    core_st_t *st = NULL;
    ASSERT_RC(core_st_parse(img, len, "blob", &st, &f.err), RC_OK, &f.err);
    ASSERT(core_st_find(st, "model.layers.0.self_attn.q_proj.arrow_prototype") != NULL);
    ASSERT(core_st_find(st, "model.layers.0.self_attn.v_proj.arrow_prototype") != NULL);
    core_st_free(st);
    free(img);

    ASSERT_RC(fx_acq_router(&f, "ar", &r), RC_OK, &f.err);
    ASSERT_EQ(r->kind, CORE_ROUTER_ARROW);
    ASSERT_EQ(r->top_k, 2); /* default 3, at most the number of experts */
    fx_reopen(&f);
    ASSERT_RC(fx_acq_router(&f, "ar", &r2), RC_OK, &f.err);
    int k = 0 * CORE_MOD__COUNT + CORE_MOD_Q;
    ASSERT(r->vec[k] != NULL && r2->vec[k] != NULL);
    ASSERT(memcmp(r->vec[k], r2->vec[k], 2 * DIM * sizeof(float)) == 0);
    k = CORE_MOD_V;
    ASSERT(memcmp(r->vec[k], r2->vec[k], 2 * DIM * sizeof(float)) == 0);
    core_router_release(r);
    core_router_release(r2);
    /* Arrow takes no weights from the caller */
    uint8_t *g = gates_image(&f, 2, &len);
    ASSERT_RC(fx_rput(&f, "ar", ARROW_CFG, g, len, NULL, 0, NULL), RC_INVALID, &f.err);
    free(g);
    fx_end(&f);
}

/* ---- refusals ---- */

TEST(unknown_expert_not_found)
{
    fx_t f;
    store_adapter_t row;
    size_t len;
    fx_init(&f, "r_unknown");
    fx_open(&f);
    fx_import(&f, "a", 0.5f);
    uint8_t *g = gates_image(&f, 2, &len);
    const char *experts[2] = {"a", "nope"};
    ASSERT_RC(fx_rput(&f, "pg", PG_CFG, g, len, experts, 2, NULL), RC_NOT_FOUND, &f.err);
    ASSERT(strstr(f.err.msg, "'nope'") != NULL);
    /* the config's names: b does not exist */
    ASSERT_RC(fx_rput(&f, "pg", PG_CFG, g, len, NULL, 0, NULL), RC_NOT_FOUND, &f.err);
    ASSERT(strstr(f.err.msg, "'b'") != NULL);
    ASSERT_RC(store_resolve(f.s, f.tenant, "pg", &row, &f.err), RC_NOT_FOUND, &f.err);
    free(g);
    fx_tmp_empty(&f);
    fx_end(&f);
}

TEST(wrong_expert_count_invalid)
{
    fx_t f;
    size_t len;
    fx_init(&f, "r_count");
    fx_open(&f);
    fx_import(&f, "a", 0.5f);
    fx_import(&f, "b", 1.0f);
    fx_import(&f, "c", 1.5f);
    uint8_t *g = gates_image(&f, 2, &len);
    const char *three[3] = {"a", "b", "c"};
    ASSERT_RC(fx_rput(&f, "pg", PG_CFG, g, len, three, 3, NULL), RC_INVALID, &f.err);
    ASSERT_STREQ(core_err_reason(&f.err), "invalid_config");
    free(g);
    /* gates for 3 experts under a config of 2: the router's own refusal, reason kept */
    g = gates_image(&f, 3, &len);
    ASSERT(fx_rput(&f, "pg", PG_CFG, g, len, NULL, 0, NULL) != RC_OK);
    ASSERT_STREQ(core_err_reason(&f.err), "shape_mismatch");
    free(g);
    /* a router is no expert */
    store_adapter_t pg = fx_pg(&f, false);
    ASSERT_EQ(pg.version, 1);
    const char *rx[2] = {"a", "pg"};
    g = gates_image(&f, 2, &len);
    ASSERT_RC(fx_rput(&f, "pg2", PG_CFG, g, len, rx, 2, NULL), RC_INVALID, &f.err);
    free(g);
    fx_tmp_empty(&f);
    fx_end(&f);
}

/* ---- delete ---- */

TEST(delete_expert_of_router)
{
    fx_t f;
    core_router_t *r = NULL;
    store_adapter_t row;
    fx_init(&f, "r_delete");
    fx_open(&f);
    fx_pg(&f, true);
    ASSERT_RC(fx_acq_router(&f, "pg", &r), RC_OK, &f.err); /* in use */
    ASSERT_RC(fx_delete(&f, "a@1", NULL), RC_EXISTS, &f.err);
    ASSERT_STREQ(f.err.msg,
                 "adapter 'a@1' is an expert of router 'pg@1'; delete the router first");
    ASSERT_RC(fx_delete(&f, "b", NULL), RC_EXISTS, &f.err);
    ASSERT(strstr(f.err.msg, "'b@1'") != NULL);
    ASSERT_RC(store_resolve(f.s, f.tenant, "a", &row, &f.err), RC_OK, &f.err);
    /* the router goes like an adapter; holders keep theirs */
    ASSERT_RC(fx_delete(&f, "pg", &row), RC_OK, &f.err);
    ASSERT_STREQ(row.kind, "phatgoose");
    ASSERT_EQ(row.state, STORE_STATE_DELETED);
    core_router_t *r2 = NULL;
    ASSERT_RC(fx_acq_router(&f, "pg", &r2), RC_NOT_FOUND, &f.err);
    ASSERT_NEAR(lora_seed(r->experts[0]), 0.5, 1e-6);
    ASSERT_RC(fx_delete(&f, "a", NULL), RC_OK, &f.err);
    ASSERT_RC(fx_delete(&f, "b@1", NULL), RC_OK, &f.err);
    core_router_release(r);
    /* a new router over a deleted name's version is refused */
    fx_import(&f, "a", 0.5f);
    size_t len;
    uint8_t *g = gates_image(&f, 2, &len);
    const char *ex[2] = {"a", "b@1"};
    ASSERT_RC(fx_rput(&f, "pg", PG_CFG, g, len, ex, 2, NULL), RC_NOT_FOUND, &f.err);
    free(g);
    fx_end(&f);
}

/* ---- persistence ---- */

TEST(restart_persists_routers)
{
    fx_t f;
    core_router_t *r = NULL;
    store_adapter_t row, again;
    fx_init(&f, "r_restart");
    fx_open(&f);
    row = fx_pg(&f, true);
    fx_import(&f, "a", 2.0f); /* a@2: the router keeps a@1 */
    ASSERT_RC(fx_pin(&f, "pg", true, NULL), RC_OK, &f.err);
    fx_reopen(&f);
    ASSERT(fx_rt(&f, "pg").resident); /* a pinned router's parts load at open */
    ASSERT_RC(store_resolve(f.s, f.tenant, "pg", &again, &f.err), RC_OK, &f.err);
    ASSERT_EQ(again.id, row.id);
    ASSERT_STREQ(again.kind, "phatgoose");
    ASSERT_STREQ(again.sha256, row.sha256);
    ASSERT(again.pinned);
    expect_experts(&f, row.id, "a@1", "b@1");
    ASSERT_RC(fx_acq_router(&f, "pg", &r), RC_OK, &f.err);
    ASSERT_NEAR(lora_seed(r->experts[0]), 0.5, 1e-6);
    ASSERT_NEAR(lora_seed(r->experts[1]), 1.0, 1e-6);
    core_router_release(r);
    /* blob GC at open kept the router's blobs */
    char path[600];
    fx_path(&f, path, sizeof path, "blobs", row.sha256);
    ASSERT(path_exists(path));
    fx_path(&f, path, sizeof path, "blobs", row.config_sha256);
    ASSERT(path_exists(path));
    char(*specs)[STORE_SPEC_MAX] = NULL;
    int n = 0;
    ASSERT_RC(store_router_experts(f.s, 999, &specs, &n, &f.err), RC_NOT_FOUND, &f.err);
    ASSERT_RC(store_router_experts(f.s, again.id - 1, &specs, &n, &f.err), RC_NOT_FOUND,
              &f.err); /* b: an adapter */
    fx_end(&f);
}

/* ---- folders ---- */

TEST(xlora_folder_import)
{
    fx_t f;
    char dir[400];
    store_adapter_t row, again, e1;
    core_router_t *r = NULL;
    fx_init(&f, "r_xdir");
    fx_open(&f);
    snprintf(dir, sizeof dir, "%s/xl", f.ads);
    write_xlora_dir(&f, dir, false);
    snprintf(dir, sizeof dir, "%s/plain", f.ads);
    write_adapter(dir, 3.0f);
    int n = 0;
    ASSERT_RC(store_import_dir(f.s, f.tenant, f.ads, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 2); /* plain and xl */
    ASSERT_RC(store_resolve(f.s, f.tenant, "xl", &row, &f.err), RC_OK, &f.err);
    ASSERT_STREQ(row.kind, "xlora");
    ASSERT_RC(store_resolve(f.s, f.tenant, "xl.e1", &e1, &f.err), RC_OK, &f.err);
    ASSERT_STREQ(e1.kind, "lora");
    ASSERT_RC(store_resolve(f.s, f.tenant, "plain", &e1, &f.err), RC_OK, &f.err);
    expect_experts(&f, row.id, "xl.e1@1", "xl.e2@1");
    ASSERT_RC(fx_acq_router(&f, "xl", &r), RC_OK, &f.err);
    ASSERT_EQ(r->kind, CORE_ROUTER_XLORA);
    ASSERT_NEAR(lora_seed(r->experts[0]), 0.25, 1e-6);
    ASSERT_NEAR(lora_seed(r->experts[1]), 0.75, 1e-6);
    core_router_release(r);
    /* the same folder again: the same rows */
    snprintf(dir, sizeof dir, "%s/xl", f.ads);
    ASSERT_RC(store_router_import(f.s, f.tenant, dir, "xl", NULL, 0, &again, &f.err), RC_OK,
              &f.err);
    ASSERT_EQ(again.id, row.id);
    ASSERT_EQ(again.version, 1);
    ASSERT_RC(store_resolve(f.s, f.tenant, "xl.e2", &e1, &f.err), RC_OK, &f.err);
    ASSERT_EQ(e1.version, 1);
    fx_end(&f);
}

TEST(xlora_broken_expert_refused)
{
    fx_t f;
    char dir[400];
    store_adapter_t row;
    fx_init(&f, "r_xbroken");
    fx_open(&f);
    snprintf(dir, sizeof dir, "%s/xl", f.ads);
    write_xlora_dir(&f, dir, true);
    rc_t rc = store_router_import(f.s, f.tenant, dir, "xl", NULL, 0, &row, &f.err);
    ASSERT(rc == RC_UNSUPPORTED);
    ASSERT(strstr(f.err.msg, "expert 'e2'") != NULL);
    ASSERT_STREQ(core_err_reason(&f.err), "unsupported_feature");
    ASSERT_RC(store_resolve(f.s, f.tenant, "xl", &row, &f.err), RC_NOT_FOUND, &f.err);
    ASSERT_RC(store_resolve(f.s, f.tenant, "xl.e2", &row, &f.err), RC_NOT_FOUND, &f.err);
    /* e1, imported before e2 was refused, stays (documented in store/router.c) */
    ASSERT_RC(store_resolve(f.s, f.tenant, "xl.e1", &row, &f.err), RC_OK, &f.err);
    int n = -1;
    ASSERT_RC(store_import_dir(f.s, f.tenant, f.ads, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 0); /* logged and skipped */
    fx_end(&f);
}

/* ---- broken blobs ---- */

TEST(acquire_corrupt_expert_unavailable)
{
    fx_t f;
    core_router_t *r = NULL;
    store_adapter_t a, row;
    char path[600];
    fx_init(&f, "r_corrupt");
    fx_open(&f);
    row = fx_pg(&f, true);
    ASSERT_RC(store_resolve(f.s, f.tenant, "a", &a, &f.err), RC_OK, &f.err);
    fx_reopen(&f); /* cold */
    fx_path(&f, path, sizeof path, "blobs", a.sha256);
    flip_byte(path, 100);
    ASSERT_RC(fx_acq_router(&f, "pg", &r), RC_UNAVAILABLE, &f.err);
    ASSERT(strstr(f.err.msg, "a@1") != NULL);
    ASSERT(fx_rt(&f, "a").broken);
    ASSERT_EQ(fx_rt(&f, "pg").n_users, 0); /* the failed wait dropped the parts */
    ASSERT_RC(fx_acq_router(&f, "pg", &r), RC_UNAVAILABLE, &f.err); /* at once now */
    ASSERT(strstr(f.err.msg, "a@1") != NULL);
    flip_byte(path, 100); /* repaired; now the router's own weights */
    fx_reopen(&f);
    ASSERT_RC(store_resolve(f.s, f.tenant, "a", &a, &f.err), RC_OK, &f.err);
    ASSERT_EQ(a.state, STORE_STATE_BROKEN); /* the mark persisted */
    fx_end(&f);

    fx_init(&f, "r_corrupt2");
    fx_open(&f);
    row = fx_pg(&f, true);
    fx_reopen(&f);
    fx_path(&f, path, sizeof path, "blobs", row.sha256);
    flip_byte(path, 20);
    ASSERT_RC(fx_acq_router(&f, "pg", &r), RC_UNAVAILABLE, &f.err);
    ASSERT(strstr(f.err.msg, "pg@1") != NULL);
    ASSERT_EQ(fx_rt(&f, "a").n_users, 0); /* the experts' references were dropped */
    fx_end(&f);
}

/* ---- migration ---- */

static int db_int(const char *db_path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    ASSERT_EQ(sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    ASSERT_EQ(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    int v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

TEST(migrate_schema3)
{
    fx_t f;
    char db_path[600];
    sqlite3 *db = NULL;
    store_adapter_t row;
    fx_init(&f, "r_migrate");
    fx_open(&f);
    fx_import(&f, "a", 0.5f);
    fx_import(&f, "b", 1.0f);
    fx_close(&f);
    /* Migrations are append-only: steps 0..2 made exactly a schema-3 file, plus step 3's
     * table, which is taken back out here. */
    snprintf(db_path, sizeof db_path, "%s/adapterd.db", f.data);
    ASSERT_EQ(sqlite3_open(db_path, &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "DROP INDEX router_experts_adapter; DROP TABLE router_experts;"
                               " PRAGMA user_version = 3;",
                           NULL, NULL, NULL),
              SQLITE_OK);
    sqlite3_close(db);
    ASSERT_EQ(db_int(db_path, "PRAGMA user_version"), 3);
    ASSERT_EQ(db_int(db_path, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'router_experts'"),
              0);
    fx_open(&f);
    ASSERT_EQ(db_int(db_path, "PRAGMA user_version"), 4);
    ASSERT_EQ(db_int(db_path, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'router_experts'"),
              1);
    ASSERT_RC(store_resolve(f.s, f.tenant, "a", &row, &f.err), RC_OK, &f.err);
    ASSERT_STREQ(row.kind, "lora");
    row = fx_pg(&f, false);
    expect_experts(&f, row.id, "a@1", "b@1");
    ASSERT_EQ(db_int(db_path, "SELECT COUNT(*) FROM router_experts"), 2);
    fx_end(&f);
}

/* ---- budget ---- */

TEST(router_larger_than_budget_refused)
{
    fx_t f;
    core_router_t *r = NULL;
    size_t len;
    fx_init(&f, "r_budget");
    fx_open(&f);
    store_adapter_t row = fx_pg(&f, true);
    /* room for both experts and the parts, but not all three at once */
    f.p.cache_budget_bytes = 2 * MEM_BYTES + (uint64_t)row.mem_bytes - 1;
    fx_reopen(&f);
    ASSERT_RC(fx_acq_router(&f, "pg", &r), RC_LIMIT, &f.err);
    ASSERT(strstr(f.err.msg, "pg@1") != NULL);
    uint8_t *g = gates_image(&f, 2, &len);
    ASSERT_RC(fx_rput(&f, "pg", PG_CFG, g, len, NULL, 0, NULL), RC_LIMIT, &f.err);
    ASSERT_STREQ(core_err_reason(&f.err), "exceeds_cache");
    free(g);
    fx_tmp_empty(&f);
    f.p.cache_budget_bytes += 1;
    fx_reopen(&f);
    ASSERT_RC(fx_acq_router(&f, "pg", &r), RC_OK, &f.err);
    core_router_release(r);
    fx_end(&f);
}
