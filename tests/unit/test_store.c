/* test_store.c - the adapter index: open/reopen, import/versioning, acquire, names,
 * schema versions, on-disk changes, folder import. Fixtures are tiny PEFT folders written
 * under tests/tmp/store/ for a hand-filled 1-layer config (dim 8). */
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/lora.h"
#include "store/store.h"
#include "tests/unit/harness.h"
#include "tests/unit/st_write.h"

#define DIM 8
#define RANK 2

static core_model_t test_base(void)
{
    core_model_t m;
    (void)stw_bf16_bits; /* st_write.h is header-only; this file needs no bf16 */
    memset(&m, 0, sizeof m);
    snprintf(m.cfg.arch, sizeof m.cfg.arch, "LlamaForCausalLM");
    snprintf(m.cfg.model_type, sizeof m.cfg.model_type, "llama");
    m.cfg.n_vocab = 32;
    m.cfg.dim = DIM;
    m.cfg.hidden_dim = 16;
    m.cfg.n_layers = 1;
    m.cfg.n_heads = 2;
    m.cfg.n_kv_heads = 2;
    m.cfg.head_dim = 4;
    m.cfg.max_pos = 64;
    m.cfg.norm_eps = 1e-5f;
    m.cfg.rope_theta = 10000.0f;
    m.cfg.bos_id = 1;
    m.cfg.eos_ids[0] = 2;
    m.cfg.n_eos = 1;
    memset(m.fingerprint, 'a', 64);
    snprintf(m.name, sizeof m.name, "tiny");
    return m;
}

/* A fresh scratch folder per test (tests run in their own processes). */
static void scratch(char *buf, size_t cap, const char *test)
{
    char cmd[1200];
    snprintf(buf, cap, "tests/tmp/store/%s-%d", test, (int)getpid());
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", buf);
    ASSERT_EQ(system(cmd), 0);
}

/* A PEFT folder with LoRA on q_proj and v_proj of layer 0; seed varies the weights. */
static void write_adapter(const char *dir, float seed)
{
    static float a[RANK * DIM], b[DIM * RANK];
    char path[1024];
    for (int i = 0; i < RANK * DIM; i++) {
        a[i] = seed + 0.01f * (float)i;
        b[i] = seed - 0.02f * (float)i;
    }
    stw_tensor_t t[4] = {
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "F32", 2,
         {RANK, DIM}, a, sizeof a},
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", "F32", 2,
         {DIM, RANK}, b, sizeof b},
        {"base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight", "F32", 2,
         {RANK, DIM}, a, sizeof a},
        {"base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight", "F32", 2,
         {DIM, RANK}, b, sizeof b},
    };
    ASSERT_EQ(stw_mkdirs(dir), 0);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    ASSERT_EQ(stw_write_text(path, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4,"
                                   " \"target_modules\": [\"q_proj\", \"v_proj\"],"
                                   " \"task_type\": \"CAUSAL_LM\", \"bias\": \"none\","
                                   " \"fan_in_fan_out\": false}"),
              0);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    ASSERT_EQ(stw_write(path, t, 4, "{\"format\":\"pt\"}"), 0);
}

typedef struct {
    char root[512];
    char data[600];
    char ad[600];
    core_model_t base;
    store_t *s;
    core_err_t err;
} fx_t;

static void fx_open(fx_t *f)
{
    ASSERT_RC(store_open(f->data, &f->base, &f->s, &f->err), RC_OK, &f->err);
}

static void fx_init(fx_t *f, const char *test)
{
    memset(f, 0, sizeof *f);
    scratch(f->root, sizeof f->root, test);
    snprintf(f->data, sizeof f->data, "%s/data/nested", f->root);
    snprintf(f->ad, sizeof f->ad, "%s/adapters/alpha", f->root);
    f->base = test_base();
    write_adapter(f->ad, 0.5f);
    fx_open(f);
}

TEST(open_creates_dir_and_reopens)
{
    fx_t f;
    fx_init(&f, "reopen");
    store_adapter_t row;
    ASSERT_RC(store_import(f.s, f.ad, "alpha", &row, &f.err), RC_OK, &f.err);
    ASSERT_EQ(row.version, 1);
    ASSERT_EQ(row.rank, RANK);
    ASSERT_NEAR(row.alpha, 4.0, 1e-9);
    ASSERT_STREQ(row.kind, "lora");
    ASSERT_STREQ(row.targets, "q_proj,v_proj");
    ASSERT_EQ(strlen(row.sha256), 64);
    ASSERT(row.size > 0);
    ASSERT(row.path[0] == '/');
    store_close(f.s);

    fx_open(&f);
    store_adapter_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_list(f.s, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 1);
    ASSERT_STREQ(rows[0].name, "alpha");
    ASSERT_STREQ(rows[0].sha256, row.sha256);
    free(rows);
    core_lora_t *l = NULL;
    ASSERT_RC(store_acquire(f.s, "alpha", &l, &row, &f.err), RC_OK, &f.err);
    ASSERT(l != NULL);
    ASSERT_EQ(l->rank, RANK);
    core_lora_release(l);
    store_close(f.s);
}

TEST(import_same_content_keeps_version)
{
    fx_t f;
    fx_init(&f, "same");
    store_adapter_t r1, r2;
    ASSERT_RC(store_import(f.s, f.ad, "alpha", &r1, &f.err), RC_OK, &f.err);
    ASSERT_RC(store_import(f.s, f.ad, "alpha", &r2, &f.err), RC_OK, &f.err);
    ASSERT_EQ(r2.version, 1);
    ASSERT_EQ(r2.id, r1.id);
    store_close(f.s);
}

TEST(changed_content_new_version_and_name_at_version)
{
    fx_t f;
    fx_init(&f, "changed");
    store_adapter_t r1, r2, r;
    ASSERT_RC(store_import(f.s, f.ad, "alpha", &r1, &f.err), RC_OK, &f.err);
    write_adapter(f.ad, 0.75f);
    ASSERT_RC(store_import(f.s, f.ad, "alpha", &r2, &f.err), RC_OK, &f.err);
    ASSERT_EQ(r2.version, 2);
    ASSERT(strcmp(r1.sha256, r2.sha256) != 0);

    core_lora_t *l = NULL;
    ASSERT_RC(store_acquire(f.s, "alpha", &l, &r, &f.err), RC_OK, &f.err);
    ASSERT_EQ(r.version, 2);
    core_lora_release(l);
    ASSERT_RC(store_acquire(f.s, "alpha@1", &l, &r, &f.err), RC_OK, &f.err);
    ASSERT_EQ(r.version, 1);
    ASSERT_STREQ(r.sha256, r1.sha256);
    core_lora_release(l);
    ASSERT_RC(store_acquire(f.s, "alpha@3", &l, NULL, &f.err), RC_NOT_FOUND, &f.err);
    ASSERT(l == NULL);

    store_adapter_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_list(f.s, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 1);
    ASSERT_EQ(rows[0].version, 2);
    free(rows);
    store_close(f.s);
}

TEST(acquire_unknown_and_bad_specs)
{
    fx_t f;
    fx_init(&f, "unknown");
    core_lora_t *l = NULL;
    ASSERT_RC(store_acquire(f.s, "nope", &l, NULL, &f.err), RC_NOT_FOUND, &f.err);
    ASSERT(strstr(f.err.msg, "nope") != NULL);
    ASSERT_RC(store_acquire(f.s, "nope@2", &l, NULL, &f.err), RC_NOT_FOUND, &f.err);
    const char *bad[] = {"", "@1", "a@", "a@0", "a@-1", "a@1x", "a@99999999999", "../x", "a@1@2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc_t rc = store_acquire(f.s, bad[i], &l, NULL, &f.err);
        if (rc == RC_OK)
            HARNESS_FAIL("spec '%s' accepted", bad[i]);
        ASSERT(l == NULL);
    }
    store_close(f.s);
}

TEST(name_validation)
{
    char max[STORE_NAME_MAX + 2];
    memset(max, 'x', STORE_NAME_MAX);
    max[STORE_NAME_MAX] = '\0';
    ASSERT(store_name_valid("a"));
    ASSERT(store_name_valid("A.b_c-1"));
    ASSERT(store_name_valid("9lives"));
    ASSERT(store_name_valid(max));
    max[STORE_NAME_MAX] = 'x';
    max[STORE_NAME_MAX + 1] = '\0';
    ASSERT(!store_name_valid(max));
    const char *bad[] = {"", ".hidden", "-x", "_x", "a/b", "..", "a b", "a@1", "é", "a\\b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (store_name_valid(bad[i]))
            HARNESS_FAIL("name '%s' accepted", bad[i]);
    ASSERT(!store_name_valid(NULL));

    fx_t f;
    fx_init(&f, "names");
    ASSERT_RC(store_import(f.s, f.ad, "../evil", NULL, &f.err), RC_INVALID, &f.err);
    ASSERT(strstr(f.err.msg, "invalid adapter name") != NULL);
    ASSERT_RC(store_import(f.s, f.ad, max, NULL, &f.err), RC_INVALID, &f.err);
    store_close(f.s);
}

TEST(newer_schema_refused)
{
    fx_t f;
    fx_init(&f, "newer");
    store_close(f.s);
    char path[700];
    sqlite3 *db = NULL;
    snprintf(path, sizeof path, "%s/adapterd.db", f.data);
    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version = 7", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    store_t *s = NULL;
    ASSERT_RC(store_open(f.data, &f.base, &s, &f.err), RC_UNSUPPORTED, &f.err);
    ASSERT(s == NULL);
    ASSERT_STREQ(f.err.msg, "database schema version 7 is newer than this adapterd supports (1); "
                            "upgrade adapterd");
}

TEST(schema_version_written)
{
    fx_t f;
    fx_init(&f, "version");
    store_close(f.s);
    char path[700];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    snprintf(path, sizeof path, "%s/adapterd.db", f.data);
    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    ASSERT_EQ(sqlite3_column_int(st, 0), 1);
    sqlite3_finalize(st);
    ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    ASSERT_STREQ((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    sqlite3_close(db);
}

TEST(changed_on_disk_is_mismatch)
{
    fx_t f;
    fx_init(&f, "mismatch");
    ASSERT_RC(store_import(f.s, f.ad, "alpha", NULL, &f.err), RC_OK, &f.err);
    store_close(f.s);
    write_adapter(f.ad, 0.25f); /* same shapes, other bytes: the hash catches it */
    fx_open(&f);
    core_lora_t *l = NULL;
    ASSERT_RC(store_acquire(f.s, "alpha@1", &l, NULL, &f.err), RC_MISMATCH, &f.err);
    ASSERT_STREQ(f.err.msg, "adapter alpha@1 changed on disk");
    ASSERT(l == NULL);
    store_close(f.s);
}

TEST(other_base_is_mismatch)
{
    fx_t f;
    fx_init(&f, "otherbase");
    ASSERT_RC(store_import(f.s, f.ad, "alpha", NULL, &f.err), RC_OK, &f.err);
    store_close(f.s);
    memset(f.base.fingerprint, 'b', 64);
    fx_open(&f);
    core_lora_t *l = NULL;
    ASSERT_RC(store_acquire(f.s, "alpha", &l, NULL, &f.err), RC_MISMATCH, &f.err);
    ASSERT(strstr(f.err.msg, "different base model") != NULL);
    store_close(f.s);
}

TEST(invalid_adapter_refused)
{
    fx_t f;
    fx_init(&f, "invalid");
    char path[700];
    snprintf(path, sizeof path, "%s/adapter_config.json", f.ad);
    /* rank 3 in the config, rank-2 tensors on disk */
    ASSERT_EQ(stw_write_text(path, "{\"peft_type\": \"LORA\", \"r\": 3, \"lora_alpha\": 4,"
                                   " \"target_modules\": [\"q_proj\", \"v_proj\"]}"),
              0);
    ASSERT(store_import(f.s, f.ad, "alpha", NULL, &f.err) != RC_OK);
    ASSERT(f.err.msg[0] != '\0');
    ASSERT_RC(store_import(f.s, "tests/tmp/store/does-not-exist", "x", NULL, &f.err),
              RC_NOT_FOUND, &f.err);
    store_adapter_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_list(f.s, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 0);
    free(rows);
    store_close(f.s);
}

TEST(import_dir_skips_bad_folders)
{
    fx_t f;
    fx_init(&f, "importdir");
    char dir[700], sub[800];
    snprintf(dir, sizeof dir, "%s/adapters", f.root); /* already holds "alpha" */
    snprintf(sub, sizeof sub, "%s/beta", dir);
    write_adapter(sub, 1.0f);
    snprintf(sub, sizeof sub, "%s/bad name", dir);
    write_adapter(sub, 1.5f);
    snprintf(sub, sizeof sub, "%s/broken", dir);
    write_adapter(sub, 2.0f);
    snprintf(sub, sizeof sub, "%s/broken/adapter_model.safetensors", dir);
    ASSERT_EQ(unlink(sub), 0);
    snprintf(sub, sizeof sub, "%s/no-config", dir);
    ASSERT_EQ(stw_mkdirs(sub), 0);
    snprintf(sub, sizeof sub, "%s/file.txt", dir);
    ASSERT_EQ(stw_write_text(sub, "not a folder"), 0);

    int n_imported = -1;
    ASSERT_RC(store_import_dir(f.s, dir, &n_imported, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n_imported, 2);
    store_adapter_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_list(f.s, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(rows[0].name, "alpha");
    ASSERT_STREQ(rows[1].name, "beta");
    free(rows);
    ASSERT_RC(store_import_dir(f.s, "tests/tmp/store/missing-dir", &n_imported, &f.err), RC_IO,
              &f.err);
    store_close(f.s);
}
