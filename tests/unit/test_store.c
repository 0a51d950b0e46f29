/* test_store.c - the adapter store (store/store.h), part 1: open, the data-dir lock,
 * imports and uploads into content-addressed blobs, acquire with a synchronous and an
 * asynchronous executor (single-flight loads, cancel, failed loads), broken blobs,
 * migrations from schema 1, crash leftovers, usage counters, import progress and a store
 * opened without a base model. Part 2 (the cache budget, pins, deletes, GC, aliases,
 * tenants' namespaces and storage quota) is test_store_cache.c; fixtures are in
 * store_fixture.h. Tenants and keys themselves are test_store_tenant.c. */
#include <sqlite3.h>
#include <sys/wait.h>

#include "tests/unit/store_fixture.h"

/* ---- open and the lock ---- */

TEST(open_creates_layout_and_reopens)
{
    fx_t f;
    char path[600];
    fx_init(&f, "open");
    snprintf(f.data, sizeof f.data, "%s/data/nested", f.root); /* created with parents */
    fx_open(&f);
    snprintf(path, sizeof path, "%s/adapterd.db", f.data);
    ASSERT(path_exists(path));
    fx_path(&f, path, sizeof path, "blobs", "");
    ASSERT_EQ(count_dir(path), 0);
    fx_path(&f, path, sizeof path, "tmp", "");
    ASSERT_EQ(count_dir(path), 0);
    store_adapter_t row = fx_import(&f, "alpha", 0.5f);
    fx_reopen(&f);
    store_adapter_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_list(f.s, f.tenant, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 1);
    ASSERT_STREQ(rows[0].name, "alpha");
    ASSERT_STREQ(rows[0].sha256, row.sha256);
    ASSERT_EQ(rows[0].id, row.id);
    free(rows);
    core_lora_t *l = NULL;
    ASSERT_RC(fx_acq(&f, "alpha", &l, NULL), RC_OK, &f.err);
    ASSERT_NEAR(lora_seed(l), 0.5, 1e-6);
    core_lora_release(l);
    fx_end(&f);
}

TEST(lock_refuses_a_second_open)
{
    fx_t f;
    store_t *s2 = NULL;
    core_err_t err = {{0}};
    fx_init(&f, "lock");
    fx_open(&f);
    /* flock belongs to an open file description: a second open() in this process conflicts. */
    ASSERT_RC(store_open(&f.p, &s2, &err), RC_BUSY, &err);
    ASSERT(s2 == NULL);
    ASSERT(strstr(err.msg, "adapterd.lock") != NULL);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) { /* another process */
        core_err_t e = {{0}};
        store_t *s3 = NULL;
        rc_t rc = store_open(&f.p, &s3, &e);
        _exit(rc == RC_BUSY && !s3 && strstr(e.msg, "adapterd.lock") ? 0 : 1);
    }
    int st = 0;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
    ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* Without the lock held by anyone, the same open works. */
    fx_close(&f);
    ASSERT_RC(store_open(&f.p, &s2, &err), RC_OK, &err);
    store_close(s2);
    fx_end(&f);
}

/* ---- imports ---- */

TEST(import_rows_and_blobs)
{
    fx_t f;
    char cfg[600], wts[600], blob[600], chex[65], whex[65];
    fx_init(&f, "import");
    fx_open(&f);
    store_adapter_t r1 = fx_import(&f, "alpha", 0.5f), r;
    fx_adfile(&f, cfg, sizeof cfg, "alpha", "adapter_config.json");
    fx_adfile(&f, wts, sizeof wts, "alpha", "adapter_model.safetensors");
    file_sha(cfg, chex);
    file_sha(wts, whex);
    struct stat sb;
    ASSERT_EQ(stat(wts, &sb), 0);
    ASSERT_STREQ(r1.name, "alpha");
    ASSERT_EQ(r1.version, 1);
    ASSERT(r1.id > 0);
    ASSERT_STREQ(r1.kind, "lora");
    ASSERT_EQ(r1.rank, RANK);
    ASSERT_NEAR(r1.alpha, 4.0, 1e-9);
    ASSERT_STREQ(r1.targets, "q_proj,v_proj");
    ASSERT_STREQ(r1.base_fingerprint, f.base.fingerprint);
    ASSERT_STREQ(r1.sha256, whex);
    ASSERT_STREQ(r1.config_sha256, chex);
    ASSERT_EQ(r1.size, sb.st_size);
    ASSERT_EQ(r1.mem_bytes, MEM_BYTES);
    ASSERT_EQ(r1.state, STORE_STATE_READY);
    ASSERT_STREQ(store_state_str(r1.state), "ready");
    ASSERT(!r1.pinned);
    ASSERT(r1.created > 0);
    fx_path(&f, blob, sizeof blob, "blobs", whex);
    ASSERT(same_bytes(blob, wts));
    fx_path(&f, blob, sizeof blob, "blobs", chex);
    ASSERT(same_bytes(blob, cfg));
    fx_path(&f, blob, sizeof blob, "blobs", "");
    ASSERT_EQ(count_dir(blob), 2);
    fx_path(&f, blob, sizeof blob, "tmp", "");
    ASSERT_EQ(count_dir(blob), 0);

    /* The same folder again: the same row. */
    r = fx_import(&f, "alpha", 0.5f);
    ASSERT_EQ(r.id, r1.id);
    ASSERT_EQ(r.version, 1);
    store_adapter_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_versions(f.s, f.tenant, "alpha", &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 1);
    free(rows);

    /* Other weights, same config: version 2, one more blob. */
    store_adapter_t r2 = fx_import(&f, "alpha", 0.75f);
    ASSERT_EQ(r2.version, 2);
    ASSERT(r2.id != r1.id);
    ASSERT(strcmp(r2.sha256, r1.sha256) != 0);
    ASSERT_STREQ(r2.config_sha256, r1.config_sha256);
    fx_path(&f, blob, sizeof blob, "blobs", "");
    ASSERT_EQ(count_dir(blob), 3);
    ASSERT_RC(store_resolve(f.s, f.tenant, "alpha", &r, &f.err), RC_OK, &f.err);
    ASSERT_EQ(r.version, 2);
    ASSERT_RC(store_resolve(f.s, f.tenant, "alpha@1", &r, &f.err), RC_OK, &f.err);
    ASSERT_EQ(r.id, r1.id);
    ASSERT_RC(store_versions(f.s, f.tenant, "alpha", &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 2);
    ASSERT_EQ(rows[0].version, 1);
    ASSERT_EQ(rows[1].version, 2);
    free(rows);
    ASSERT_RC(store_list(f.s, f.tenant, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 1);
    ASSERT_EQ(rows[0].version, 2);
    free(rows);

    /* fail_if_exists (vLLM's load_lora_adapter rule). */
    done_t d = {0};
    char dir[400];
    snprintf(dir, sizeof dir, "%s/alpha", f.ads);
    store_import_async(f.s, f.tenant, dir, "alpha", &(store_import_opts_t){.fail_if_exists = true},
                       on_done, &d);
    ASSERT_RC(fx_done(&f, &d), RC_EXISTS, &f.err);
    fx_end(&f);
}

TEST(import_refusals_leave_nothing)
{
    fx_t f;
    char dir[400], path[600], max[STORE_NAME_MAX + 2];
    fx_init(&f, "refuse");
    fx_open(&f);
    snprintf(dir, sizeof dir, "%s/good", f.ads);
    write_adapter(dir, 0.5f);
    memset(max, 'x', sizeof max);
    max[STORE_NAME_MAX + 1] = '\0';
    const char *bad_names[] = {"", "../evil", ".hidden", "-x", "a b", "a/b", "a@1", max};
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        if (store_name_valid(bad_names[i]))
            HARNESS_FAIL("name '%s' accepted", bad_names[i]);
        ASSERT_RC(store_import(f.s, f.tenant, dir, bad_names[i], NULL, NULL, NULL, &f.err),
                  RC_INVALID, &f.err);
        ASSERT(strstr(f.err.msg, "invalid adapter name") != NULL);
        ASSERT_RC(store_import(f.s, f.tenant, dir, bad_names[i], NULL, NULL, NULL, NULL),
                  RC_INVALID, NULL);
    }
    max[STORE_NAME_MAX] = '\0';
    ASSERT(store_name_valid(max));
    ASSERT(store_name_valid("A.b_c-1"));
    ASSERT(store_name_valid("9lives"));
    ASSERT(!store_name_valid(NULL));

    /* Shapes that do not fit the base: refused, nothing indexed or left on disk. */
    snprintf(dir, sizeof dir, "%s/bad", f.ads);
    write_adapter_shape(dir, 0.5f, DIM + 1);
    rc_t rc = store_import(f.s, f.tenant, dir, "bad", NULL, NULL, NULL, &f.err);
    if (rc != RC_MISMATCH && rc != RC_FORMAT)
        HARNESS_FAIL("bad shapes: rc %d (%s)", rc, f.err.msg);
    ASSERT(strstr(f.err.msg, "lora_A") != NULL);
    store_adapter_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_versions(f.s, f.tenant, "bad", &rows, &n, &f.err), RC_NOT_FOUND, &f.err);
    ASSERT(rows == NULL);
    /* A missing folder, and a pickle-only folder. */
    ASSERT_RC(store_import(f.s, f.tenant, "tests/tmp/does-not-exist", "x", NULL, NULL, NULL,
                           &f.err),
              RC_NOT_FOUND, &f.err);
    snprintf(dir, sizeof dir, "%s/pickle", f.ads);
    write_adapter(dir, 0.5f);
    fx_adfile(&f, path, sizeof path, "pickle", "adapter_model.safetensors");
    char bin[600];
    fx_adfile(&f, bin, sizeof bin, "pickle", "adapter_model.bin");
    ASSERT_EQ(rename(path, bin), 0);
    ASSERT_RC(store_import(f.s, f.tenant, dir, "pickle", NULL, NULL, NULL, &f.err),
              RC_UNSUPPORTED, &f.err);
    ASSERT_RC(store_list(f.s, f.tenant, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 0);
    free(rows);
    fx_path(&f, path, sizeof path, "blobs", "");
    ASSERT_EQ(count_dir(path), 0);
    fx_path(&f, path, sizeof path, "tmp", "");
    ASSERT_EQ(count_dir(path), 0);
    fx_end(&f);
}

TEST(import_dir_skips_bad_folders)
{
    fx_t f;
    char sub[600];
    fx_init(&f, "importdir");
    fx_open(&f);
    snprintf(sub, sizeof sub, "%s/beta", f.ads);
    write_adapter(sub, 1.0f);
    snprintf(sub, sizeof sub, "%s/alpha", f.ads);
    write_adapter(sub, 0.5f);
    snprintf(sub, sizeof sub, "%s/bad name", f.ads);
    write_adapter(sub, 1.5f);
    snprintf(sub, sizeof sub, "%s/shapes", f.ads);
    write_adapter_shape(sub, 2.0f, DIM + 1);
    snprintf(sub, sizeof sub, "%s/no-config", f.ads);
    ASSERT_EQ(stw_mkdirs(sub), 0);
    int n_imported = -1;
    ASSERT_RC(store_import_dir(f.s, f.tenant, f.ads, &n_imported, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n_imported, 2);
    store_adapter_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_list(f.s, f.tenant, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(rows[0].name, "alpha");
    ASSERT_STREQ(rows[1].name, "beta");
    free(rows);
    ASSERT_RC(store_import_dir(f.s, f.tenant, "tests/tmp/missing-dir", &n_imported, &f.err), RC_IO,
              &f.err);
    fx_end(&f);
}

TEST(upload_pieces_and_refusals)
{
    fx_t f;
    char dir[400], path[600], hex[65];
    store_adapter_t row, r;
    store_upload_t *u = NULL;
    fx_init(&f, "upload");
    fx_open(&f);
    snprintf(dir, sizeof dir, "%s/up", f.ads);
    write_adapter(dir, 0.5f);
    ASSERT_RC(fx_upload(&f, "up", "up", true, true, &row), RC_OK, &f.err);
    ASSERT_STREQ(row.name, "up");
    ASSERT_EQ(row.version, 1);
    ASSERT_EQ(row.mem_bytes, MEM_BYTES);
    fx_adfile(&f, path, sizeof path, "up", "adapter_model.safetensors");
    file_sha(path, hex);
    ASSERT_STREQ(row.sha256, hex);
    fx_path(&f, path, sizeof path, "blobs", hex);
    ASSERT(path_exists(path));
    ASSERT_RC(store_resolve(f.s, f.tenant, "up", &r, &f.err), RC_OK, &f.err);
    ASSERT_EQ(r.id, row.id);
    core_lora_t *l = NULL;
    ASSERT_RC(fx_acq(&f, "up", &l, NULL), RC_OK, &f.err);
    ASSERT_NEAR(lora_seed(l), 0.5, 1e-6);
    core_lora_release(l);
    fx_tmp_empty(&f);

    /* A part missing. */
    ASSERT_RC(fx_upload(&f, "up", "up", true, false, NULL), RC_INVALID, &f.err);
    ASSERT(strstr(f.err.msg, "weights") != NULL);
    ASSERT_RC(fx_upload(&f, "up", "up", false, true, NULL), RC_INVALID, &f.err);
    fx_tmp_empty(&f);
    /* Invalid name. */
    ASSERT_RC(store_upload_new(f.s, f.tenant, "../up", &u, &f.err), RC_INVALID, &f.err);
    ASSERT(u == NULL);
    /* The config cap (64 KiB). */
    char *big = calloc(1, 64 * 1024 + 1);
    ASSERT_RC(store_upload_new(f.s, f.tenant, "big", &u, &f.err), RC_OK, &f.err);
    ASSERT_RC(store_upload_write(u, STORE_PART_CONFIG, big, 64 * 1024, &f.err), RC_OK, &f.err);
    ASSERT_RC(store_upload_write(u, STORE_PART_CONFIG, big, 1, &f.err), RC_LIMIT, &f.err);
    store_upload_free(u);
    free(big);
    fx_tmp_empty(&f);

    /* The weights cap (max_adapter_bytes), at write time. */
    f.p.max_adapter_bytes = (uint64_t)row.size - 1;
    fx_reopen(&f);
    ASSERT_RC(store_upload_new(f.s, f.tenant, "up", &u, &f.err), RC_OK, &f.err);
    fx_adfile(&f, path, sizeof path, "up", "adapter_model.safetensors");
    size_t len;
    char *w = read_all(path, &len);
    ASSERT_RC(store_upload_write(u, STORE_PART_WEIGHTS, w, len, &f.err), RC_LIMIT, &f.err);
    free(w);
    store_upload_free(u);
    fx_tmp_empty(&f);

    /* Larger in memory than the whole cache: refused at commit, import and acquire. */
    f.p.max_adapter_bytes = store_default_params().max_adapter_bytes;
    f.p.cache_budget_bytes = MEM_BYTES - 1;
    fx_reopen(&f);
    ASSERT_RC(fx_upload(&f, "up", "up", true, true, NULL), RC_LIMIT, &f.err);
    ASSERT(strstr(f.err.msg, "cache") != NULL);
    ASSERT_RC(store_import(f.s, f.tenant, dir, "up2", NULL, NULL, NULL, &f.err), RC_LIMIT, &f.err);
    ASSERT_RC(fx_acq(&f, "up", &l, NULL), RC_LIMIT, &f.err);
    fx_tmp_empty(&f);

    /* An alias name is not an adapter name. */
    f.p.cache_budget_bytes = store_default_params().cache_budget_bytes;
    fx_reopen(&f);
    ASSERT_RC(fx_alias(&f, "prod", "up@1", NULL), RC_OK, &f.err);
    ASSERT_RC(fx_upload(&f, "prod", "up", true, true, NULL), RC_EXISTS, &f.err);
    ASSERT_RC(store_import(f.s, f.tenant, dir, "prod", NULL, NULL, NULL, &f.err), RC_EXISTS,
              &f.err);
    store_adapter_t *rows = NULL;
    ASSERT_RC(store_versions(f.s, f.tenant, "up", &rows, &len, &f.err), RC_OK, &f.err);
    ASSERT_EQ(len, 1);
    free(rows);
    fx_tmp_empty(&f);
    fx_end(&f);
}

/* ---- acquire ---- */

TEST(acquire_sync_hits_and_specs)
{
    fx_t f;
    core_lora_t *l1 = NULL, *l2 = NULL, *l3 = NULL;
    store_adapter_t row;
    fx_init(&f, "acqsync");
    fx_open(&f);
    fx_import(&f, "a", 0.5f);
    fx_import(&f, "b", 1.0f);
    ASSERT_RC(fx_alias(&f, "live", "a", NULL), RC_OK, &f.err);
    store_runtime_t rt = fx_rt(&f, "a");
    ASSERT(!rt.resident && !rt.loading);

    ASSERT_RC(fx_acq(&f, "a", &l1, &row), RC_OK, &f.err); /* cold: loads inside the call */
    ASSERT_STREQ(row.name, "a");
    ASSERT_EQ(row.version, 1);
    ASSERT_NEAR(lora_seed(l1), 0.5, 1e-6);
    ASSERT_EQ(l1->rank, RANK);
    store_stats_t st = fx_stats(&f);
    ASSERT_EQ(st.n_misses, 1);
    ASSERT_EQ(st.n_loads, 1);
    ASSERT_EQ(st.n_hits, 0);
    ASSERT_EQ(st.n_resident, 1);
    ASSERT_EQ(st.resident_bytes, MEM_BYTES);
    ASSERT_RC(fx_acq(&f, "a", &l2, NULL), RC_OK, &f.err); /* a hit */
    ASSERT(l2 == l1);
    ASSERT_EQ(fx_stats(&f).n_hits, 1);
    ASSERT_EQ(fx_stats(&f).n_loads, 1);
    ASSERT_EQ(refcount(l1), 3);
    rt = fx_rt(&f, "a");
    ASSERT(rt.resident && !rt.loading);
    ASSERT_EQ(rt.n_users, 2);
    ASSERT_RC(fx_acq(&f, "a@1", &l3, &row), RC_OK, &f.err);
    ASSERT(l3 == l1);
    core_lora_release(l3);
    ASSERT_RC(fx_acq(&f, "live", &l3, &row), RC_OK, &f.err);
    ASSERT(l3 == l1);
    ASSERT_STREQ(row.name, "a");
    core_lora_release(l3);
    core_lora_release(l2);
    core_lora_release(l1);
    ASSERT_EQ(fx_rt(&f, "a").n_users, 0);
    ASSERT(fx_rt(&f, "a").resident);

    /* Two wants in one request. */
    store_want_t w[2];
    store_wait_t *wt = NULL;
    memset(w, 0, sizeof w);
    snprintf(w[0].spec, sizeof w[0].spec, "a");
    snprintf(w[1].spec, sizeof w[1].spec, "b@1");
    ASSERT_RC(store_acquire(f.s, f.tenant, w, 2, on_ready, NULL, &wt, &f.err), RC_OK, &f.err);
    ASSERT(wt == NULL);
    ASSERT_NEAR(lora_seed(w[0].lora), 0.5, 1e-6);
    ASSERT_NEAR(lora_seed(w[1].lora), 1.0, 1e-6);
    ASSERT_STREQ(w[1].row.name, "b");
    core_lora_release(w[0].lora);
    core_lora_release(w[1].lora);
    /* One unknown want fails the request and keeps nothing. */
    snprintf(w[1].spec, sizeof w[1].spec, "nope");
    ASSERT_RC(store_acquire(f.s, f.tenant, w, 2, on_ready, NULL, &wt, &f.err), RC_NOT_FOUND,
              &f.err);
    ASSERT(wt == NULL && w[0].lora == NULL && w[1].lora == NULL);
    ASSERT_EQ(fx_rt(&f, "a").n_users, 0);

    ASSERT_RC(fx_acq(&f, "nope", &l1, NULL), RC_NOT_FOUND, &f.err);
    ASSERT(strstr(f.err.msg, "nope") != NULL);
    ASSERT_RC(fx_acq(&f, "a@2", &l1, NULL), RC_NOT_FOUND, &f.err);
    ASSERT_RC(fx_acq(&f, "live@1", &l1, NULL), RC_NOT_FOUND, &f.err);
    const char *bad[] = {"", "@1", "a@", "a@0", "a@-1", "a@1x", "a@99999999999", "../x",
                         "a@1@2", ".a"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc_t rc = fx_acq(&f, bad[i], &l1, NULL);
        if (rc != RC_INVALID)
            HARNESS_FAIL("spec '%s': rc %d, want RC_INVALID", bad[i], rc);
    }
    fx_end(&f);
}

TEST(acquire_async_single_flight)
{
    fx_t f;
    store_want_t w1, w2;
    ready_t r1 = {0}, r2 = {0};
    store_wait_t *t1 = NULL, *t2 = NULL;
    fx_init(&f, "single");
    fx_async(&f);
    fx_open(&f);
    fx_import(&f, "a", 0.5f);
    fx_acq_wait(&f, &w1, "a", &r1, &t1);
    fx_acq_wait(&f, &w2, "a", &r2, &t2);
    ASSERT(t1 != t2);
    ASSERT(fx_rt(&f, "a").loading);
    ASSERT_EQ(aex_get(f.x, &f.x->n_submitted), 1);
    aex_pump_all(f.x);
    ASSERT_EQ(f.x->n_work, 1);
    ASSERT_EQ(r1.n, 1);
    ASSERT_EQ(r2.n, 1);
    ASSERT_RC(r1.rc, RC_OK, &r1.err);
    ASSERT_RC(r2.rc, RC_OK, &r2.err);
    ASSERT(w1.lora != NULL && w1.lora == w2.lora);
    ASSERT_EQ(refcount(w1.lora), 3);
    ASSERT_EQ(fx_rt(&f, "a").n_users, 2);
    store_stats_t st = fx_stats(&f);
    ASSERT_EQ(st.n_loads, 1);
    ASSERT_EQ(st.n_misses, 2);
    ASSERT(st.load_ms_total >= 0);
    /* A third acquire is a hit, answered in the call. */
    core_lora_t *l = NULL;
    ASSERT_RC(fx_acq(&f, "a", &l, NULL), RC_OK, &f.err);
    ASSERT(l == w1.lora);
    core_lora_release(l);
    core_lora_release(w1.lora);
    core_lora_release(w2.lora);
    ASSERT_EQ(fx_rt(&f, "a").n_users, 0);

    /* One request naming a cold version twice: one load, both wants filled. */
    store_want_t w[2];
    memset(w, 0, sizeof w);
    memset(&r1, 0, sizeof r1);
    fx_import(&f, "b", 1.0f);
    snprintf(w[0].spec, sizeof w[0].spec, "b");
    snprintf(w[1].spec, sizeof w[1].spec, "b@1");
    ASSERT_RC(store_acquire(f.s, f.tenant, w, 2, on_ready, &r1, &t1, &f.err), RC_OK, &f.err);
    ASSERT(t1 != NULL);
    aex_pump_all(f.x);
    ASSERT_EQ(f.x->n_work, 2);
    ASSERT_EQ(r1.n, 1);
    ASSERT_RC(r1.rc, RC_OK, &r1.err);
    ASSERT(w[0].lora != NULL && w[0].lora == w[1].lora);
    ASSERT_EQ(refcount(w[0].lora), 3);
    core_lora_release(w[0].lora);
    core_lora_release(w[1].lora);
    fx_end(&f);
}

TEST(acquire_async_cancel_releases)
{
    fx_t f;
    store_want_t w1, w2, wb[2];
    ready_t r1 = {0}, r2 = {0}, r3 = {0};
    store_wait_t *t1 = NULL, *t2 = NULL, *t3 = NULL;
    fx_init(&f, "cancel");
    fx_async(&f);
    fx_open(&f);
    fx_import(&f, "a", 0.5f);
    fx_import(&f, "b", 1.0f);
    fx_acq_wait(&f, &w1, "a", &r1, &t1);
    fx_acq_wait(&f, &w2, "a", &r2, &t2);
    store_wait_cancel(f.s, t1);
    aex_pump_all(f.x);
    ASSERT_EQ(r1.n, 0); /* cancelled: never called */
    ASSERT_EQ(r2.n, 1);
    ASSERT_RC(r2.rc, RC_OK, &r2.err);
    ASSERT_EQ(refcount(w2.lora), 2); /* the cache and w2 */
    ASSERT_EQ(fx_rt(&f, "a").n_users, 1);
    core_lora_t *la = w2.lora;
    core_lora_release(la);
    ASSERT_EQ(refcount(la), 1);

    /* A wait holding a resident adapter while another loads: cancel drops both. */
    memset(wb, 0, sizeof wb);
    snprintf(wb[0].spec, sizeof wb[0].spec, "a");
    snprintf(wb[1].spec, sizeof wb[1].spec, "b");
    ASSERT_RC(store_acquire(f.s, f.tenant, wb, 2, on_ready, &r3, &t3, &f.err), RC_OK, &f.err);
    ASSERT(t3 != NULL);
    ASSERT_EQ(refcount(la), 2); /* taken for the wait, so it cannot be evicted under it */
    store_wait_cancel(f.s, t3);
    ASSERT_EQ(refcount(la), 1);
    aex_pump_all(f.x);
    ASSERT_EQ(r3.n, 0);
    store_runtime_t rt = fx_rt(&f, "b"); /* the load finished anyway, and nobody holds it */
    ASSERT(rt.resident);
    ASSERT_EQ(rt.n_users, 0);
    ASSERT_EQ(fx_rt(&f, "a").n_users, 0);
    store_wait_cancel(f.s, NULL); /* NULL-safe */
    fx_end(&f);
}

TEST(acquire_async_failed_load_answers_all)
{
    fx_t f;
    char blob[600];
    store_want_t w1, w2;
    ready_t r1 = {0}, r2 = {0};
    store_wait_t *t1 = NULL, *t2 = NULL;
    fx_init(&f, "failall");
    fx_async(&f);
    fx_open(&f);
    store_adapter_t row = fx_import(&f, "a", 0.5f);
    fx_path(&f, blob, sizeof blob, "blobs", row.sha256);
    flip_byte(blob, row.size - 3);
    fx_acq_wait(&f, &w1, "a", &r1, &t1);
    fx_acq_wait(&f, &w2, "a", &r2, &t2);
    aex_pump_all(f.x);
    ASSERT_EQ(f.x->n_first_work, 1); /* one load (then the broken mark) */
    ASSERT_EQ(r1.n, 1);
    ASSERT_EQ(r2.n, 1);
    ASSERT_RC(r1.rc, RC_UNAVAILABLE, &r1.err);
    ASSERT_RC(r2.rc, RC_UNAVAILABLE, &r2.err);
    ASSERT(strstr(r1.err.msg, "a@1") != NULL);
    ASSERT(w1.lora == NULL && w2.lora == NULL);
    ASSERT_EQ(fx_stats(&f).n_load_failures, 1);
    ASSERT_EQ(fx_stats(&f).n_loads, 0);
    fx_end(&f);
}

/* ---- broken blobs ---- */

TEST(broken_flipped_byte)
{
    fx_t f;
    char blob[600];
    core_lora_t *l = NULL;
    store_adapter_t r;
    fx_init(&f, "flip");
    fx_open(&f);
    store_adapter_t row = fx_import(&f, "a", 0.5f);
    store_adapter_t rb = fx_import(&f, "b", 1.0f);
    fx_path(&f, blob, sizeof blob, "blobs", row.sha256);
    flip_byte(blob, row.size / 2);
    ASSERT_RC(fx_acq(&f, "a", &l, NULL), RC_UNAVAILABLE, &f.err);
    ASSERT(strstr(f.err.msg, "broken") != NULL);
    /* The mark ran (sync). */
    ASSERT_RC(store_resolve(f.s, f.tenant, "a", &r, &f.err), RC_OK, &f.err);
    ASSERT_EQ(r.state, STORE_STATE_BROKEN);
    ASSERT(r.reason[0] != '\0');
    store_adapter_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_list(f.s, f.tenant, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(rows[0].name, "a");
    ASSERT_STREQ(store_state_str(rows[0].state), "broken");
    ASSERT_EQ(rows[1].state, STORE_STATE_READY);
    free(rows);
    store_stats_t st = fx_stats(&f);
    ASSERT_EQ(st.n_load_failures, 1);
    ASSERT_RC(fx_acq(&f, "a", &l, NULL), RC_UNAVAILABLE, &f.err); /* at once, no new load */
    ASSERT_EQ(fx_stats(&f).n_load_failures, 1);
    ASSERT_EQ(fx_stats(&f).n_misses, st.n_misses);
    /* The config blob is verified too. */
    fx_path(&f, blob, sizeof blob, "blobs", rb.config_sha256);
    flip_byte(blob, 3);
    ASSERT_RC(fx_acq(&f, "b", &l, NULL), RC_UNAVAILABLE, &f.err);
    /* Broken survives a restart and is refused without a load. */
    fx_reopen(&f);
    ASSERT_RC(fx_acq(&f, "a", &l, NULL), RC_UNAVAILABLE, &f.err);
    ASSERT_RC(fx_acq(&f, "b", &l, NULL), RC_UNAVAILABLE, &f.err);
    ASSERT_EQ(fx_stats(&f).n_load_failures, 0);
    fx_end(&f);
}

TEST(broken_async_mark_and_truncated)
{
    fx_t f;
    char blob[600];
    core_lora_t *l = NULL;
    store_want_t w;
    ready_t r = {0};
    store_wait_t *t = NULL;
    store_adapter_t row2;
    fx_init(&f, "trunc");
    fx_async(&f);
    fx_open(&f);
    store_adapter_t row = fx_import(&f, "a", 0.5f);
    fx_import(&f, "b", 1.0f);
    fx_path(&f, blob, sizeof blob, "blobs", row.sha256);
    ASSERT_EQ(truncate(blob, row.size - 10), 0);
    fx_acq_wait(&f, &w, "a", &r, &t);
    while (r.n == 0)
        aex_pump_one(f.x);
    ASSERT_RC(r.rc, RC_UNAVAILABLE, &r.err);
    /* The broken mark may still be in flight: the cache answers at once anyway. */
    int n_sub = aex_get(f.x, &f.x->n_submitted);
    ASSERT_RC(fx_acq(&f, "a", &l, NULL), RC_UNAVAILABLE, &f.err);
    ASSERT_EQ(aex_get(f.x, &f.x->n_submitted), n_sub);
    aex_pump_all(f.x);
    ASSERT_RC(store_resolve(f.s, f.tenant, "a", &row2, &f.err), RC_OK, &f.err);
    ASSERT_EQ(row2.state, STORE_STATE_BROKEN);
    /* A missing blob is broken as well. */
    ASSERT_RC(store_resolve(f.s, f.tenant, "b", &row2, &f.err), RC_OK, &f.err);
    fx_path(&f, blob, sizeof blob, "blobs", row2.sha256);
    ASSERT_EQ(unlink(blob), 0);
    memset(&r, 0, sizeof r);
    fx_acq_wait(&f, &w, "b", &r, &t);
    aex_pump_all(f.x);
    ASSERT_RC(r.rc, RC_UNAVAILABLE, &r.err);
    ASSERT_RC(store_resolve(f.s, f.tenant, "b", &row2, &f.err), RC_OK, &f.err);
    ASSERT_EQ(row2.state, STORE_STATE_BROKEN);
    ASSERT_EQ(fx_stats(&f).n_load_failures, 2);
    fx_end(&f);
}

/* ---- migrations ---- */

/* store/index.c idx_migrations[0], verbatim: the schema of the first slice. */
#define SCHEMA1                                                                            \
    "CREATE TABLE adapters ("                                                              \
    "  id INTEGER PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL,"              \
    "  kind TEXT NOT NULL, rank INTEGER NOT NULL, alpha REAL NOT NULL, targets TEXT NOT NULL," \
    "  base_fingerprint TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,"       \
    "  path TEXT NOT NULL, created INTEGER NOT NULL, UNIQUE(name, version));"

static void v1_row(sqlite3 *db, int id, const char *name, const char *fp, const char *sha,
                   long long size, const char *path)
{
    sqlite3_stmt *st = NULL;
    ASSERT_EQ(sqlite3_prepare_v2(db,
                                 "INSERT INTO adapters VALUES (?1, ?2, 1, 'lora', 2, 4.0,"
                                 " 'q_proj,v_proj', ?3, ?4, ?5, ?6, 1700000000)",
                                 -1, &st, NULL),
              SQLITE_OK);
    sqlite3_bind_int(st, 1, id);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, fp, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, sha, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 5, size);
    sqlite3_bind_text(st, 6, path, -1, SQLITE_TRANSIENT);
    ASSERT_EQ(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
}

static int user_version(const char *db_path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    ASSERT_EQ(sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    int v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

TEST(migrate_schema1)
{
    fx_t f;
    char dir[400], db_path[600], wts[600], cfg[600], whex[65], chex[65], p[600];
    sqlite3 *db = NULL;
    struct stat sb;
    fx_init(&f, "migrate");
    snprintf(dir, sizeof dir, "%s/old", f.ads);
    write_adapter(dir, 0.5f);
    fx_adfile(&f, wts, sizeof wts, "old", "adapter_model.safetensors");
    fx_adfile(&f, cfg, sizeof cfg, "old", "adapter_config.json");
    file_sha(wts, whex);
    file_sha(cfg, chex);
    ASSERT_EQ(stat(wts, &sb), 0);
    ASSERT_EQ(stw_mkdirs(f.data), 0);
    snprintf(db_path, sizeof db_path, "%s/adapterd.db", f.data);
    ASSERT_EQ(sqlite3_open(db_path, &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, SCHEMA1 "PRAGMA user_version = 1;", NULL, NULL, NULL), SQLITE_OK);
    v1_row(db, 1, "old", f.base.fingerprint, whex, sb.st_size, dir);
    snprintf(p, sizeof p, "%s/gone", f.ads); /* a folder deleted since */
    v1_row(db, 2, "gone", f.base.fingerprint, whex, sb.st_size, p);
    sqlite3_close(db);

    fx_open(&f);
    ASSERT_EQ(user_version(db_path), 4);
    store_adapter_t row;
    ASSERT_RC(store_resolve(f.s, f.tenant, "old", &row, &f.err), RC_OK, &f.err);
    ASSERT_EQ(row.state, STORE_STATE_READY);
    ASSERT_EQ(row.id, 1);
    ASSERT_EQ(row.version, 1);
    ASSERT_EQ(row.created, 1700000000);
    ASSERT_EQ(row.tenant_id, STORE_TENANT_DEFAULT); /* schema 1 rows belong to "default" */
    ASSERT(!row.published && !row.shared);
    ASSERT_STREQ(row.sha256, whex);
    ASSERT_STREQ(row.config_sha256, chex);
    ASSERT_EQ(row.mem_bytes, MEM_BYTES);
    fx_path(&f, p, sizeof p, "blobs", whex);
    ASSERT(same_bytes(p, wts));
    fx_path(&f, p, sizeof p, "blobs", chex);
    ASSERT(same_bytes(p, cfg));
    ASSERT_RC(store_resolve(f.s, f.tenant, "gone", &row, &f.err), RC_OK, &f.err);
    ASSERT_EQ(row.state, STORE_STATE_BROKEN);
    ASSERT(row.reason[0] != '\0');
    core_lora_t *l = NULL;
    ASSERT_RC(fx_acq(&f, "gone", &l, NULL), RC_UNAVAILABLE, &f.err);
    /* Served from blobs: the folder is no longer needed. */
    rm_rf(dir);
    ASSERT_RC(fx_acq(&f, "old", &l, NULL), RC_OK, &f.err);
    ASSERT_NEAR(lora_seed(l), 0.5, 1e-6);
    core_lora_release(l);
    row = fx_import(&f, "old", 0.75f);
    ASSERT_EQ(row.version, 2);
    fx_reopen(&f);
    ASSERT_EQ(user_version(db_path), 4);
    ASSERT_RC(store_resolve(f.s, f.tenant, "old@1", &row, &f.err), RC_OK, &f.err);
    ASSERT_EQ(row.state, STORE_STATE_READY);
    fx_end(&f);
}

TEST(newer_schema_refused_untouched)
{
    fx_t f;
    char db_path[600], wal[640];
    sqlite3 *db = NULL;
    store_t *s = NULL;
    size_t n0, n1;
    fx_init(&f, "newer");
    ASSERT_EQ(stw_mkdirs(f.data), 0);
    snprintf(db_path, sizeof db_path, "%s/adapterd.db", f.data);
    ASSERT_EQ(sqlite3_open(db_path, &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE future (x TEXT); INSERT INTO future VALUES ('x');"
                               " PRAGMA user_version = 99;",
                           NULL, NULL, NULL),
              SQLITE_OK);
    sqlite3_close(db);
    char *before = read_all(db_path, &n0);
    ASSERT_RC(store_open(&f.p, &s, &f.err), RC_UNSUPPORTED, &f.err);
    ASSERT(s == NULL);
    ASSERT(strstr(f.err.msg, "99") != NULL);
    char *after = read_all(db_path, &n1);
    ASSERT_EQ(n1, n0);
    ASSERT(memcmp(before, after, n0) == 0);
    snprintf(wal, sizeof wal, "%s-wal", db_path);
    ASSERT(!path_exists(wal));
    ASSERT_EQ(user_version(db_path), 99);
    free(before);
    free(after);
    fx_end(&f);
}

/* ---- crash leftovers and usage ---- */

TEST(open_removes_crash_leftovers)
{
    fx_t f;
    char p[600];
    fx_init(&f, "leftover");
    fx_open(&f);
    store_adapter_t row = fx_import(&f, "a", 0.5f);
    fx_close(&f);
    fx_path(&f, p, sizeof p, "tmp", "0123456789abcdef.part");
    ASSERT_EQ(stw_write_text(p, "half an upload"), 0);
    char orphan[65];
    memset(orphan, 'e', 64);
    orphan[64] = '\0';
    fx_path(&f, p, sizeof p, "blobs", orphan);
    ASSERT_EQ(stw_write_text(p, "installed, never indexed"), 0);
    fx_path(&f, p, sizeof p, "blobs", "README");
    ASSERT_EQ(stw_write_text(p, "not a blob name: left alone"), 0);
    fx_open(&f);
    fx_tmp_empty(&f);
    fx_path(&f, p, sizeof p, "blobs", orphan);
    ASSERT(!path_exists(p));
    fx_path(&f, p, sizeof p, "blobs", "README");
    ASSERT(path_exists(p));
    fx_path(&f, p, sizeof p, "blobs", row.sha256);
    ASSERT(path_exists(p));
    fx_path(&f, p, sizeof p, "blobs", row.config_sha256);
    ASSERT(path_exists(p));
    acq_release(&f, "a");
    fx_end(&f);
}

TEST(usage_counts_persist)
{
    fx_t f;
    store_adapter_t row;
    core_lora_t *l = NULL;
    fx_init(&f, "usage");
    fx_open(&f);
    fx_import(&f, "a", 0.5f);
    fx_import(&f, "b", 1.0f);
    for (int i = 0; i < 3; i++)
        acq_release(&f, "a");
    acq_release(&f, "b@1");
    ASSERT_RC(fx_acq(&f, "nope", &l, NULL), RC_NOT_FOUND, &f.err);
    fx_reopen(&f);
    ASSERT_RC(store_resolve(f.s, f.tenant, "a", &row, &f.err), RC_OK, &f.err);
    ASSERT_EQ(row.n_requests, 3);
    ASSERT(row.last_used >= row.created);
    ASSERT_RC(store_resolve(f.s, f.tenant, "b", &row, &f.err), RC_OK, &f.err);
    ASSERT_EQ(row.n_requests, 1);
    acq_release(&f, "a");
    fx_reopen(&f);
    ASSERT_RC(store_resolve(f.s, f.tenant, "a", &row, &f.err), RC_OK, &f.err);
    ASSERT_EQ(row.n_requests, 4);
    fx_end(&f);
}

/* ---- import progress, and a store without a base model ---- */

static void on_progress(void *user, const char *phase, uint64_t done, uint64_t total)
{
    char *log = user;
    size_t len = strlen(log);
    snprintf(log + len, 1024 - len, "%s %llu/%llu;", phase, (unsigned long long)done,
             (unsigned long long)total);
}

TEST(import_progress)
{
    fx_t f;
    char dir[400], path[600], log[1024] = "", want[256];
    struct stat c, w;
    fx_init(&f, "progress");
    fx_open(&f);
    snprintf(dir, sizeof dir, "%s/p", f.ads);
    write_adapter(dir, 0.5f);
    fx_adfile(&f, path, sizeof path, "p", "adapter_config.json");
    ASSERT_EQ(stat(path, &c), 0);
    fx_adfile(&f, path, sizeof path, "p", "adapter_model.safetensors");
    ASSERT_EQ(stat(path, &w), 0);
    store_adapter_t row;
    ASSERT_RC(store_import(f.s, f.tenant, dir, "p", on_progress, log, &row, &f.err), RC_OK,
              &f.err);
    unsigned long long t = (unsigned long long)(c.st_size + w.st_size);
    snprintf(want, sizeof want, "copy 0/%llu;copy %llu/%llu;verify 0/%llu;verify %llu/%llu;", t,
             t, t, t, t, t);
    ASSERT_STREQ(log, want);
    ASSERT_EQ(row.version, 1);
    fx_end(&f);
}

TEST(open_without_base)
{
    fx_t f;
    char dir[400];
    store_adapter_t r, *rows = NULL;
    store_upload_t *u = NULL;
    core_lora_t *l = NULL;
    size_t n = 0;
    int n_imp = -1;
    fx_init(&f, "nobase");
    fx_open(&f);
    store_adapter_t a = fx_import(&f, "a", 0.5f);
    ASSERT_RC(fx_pin(&f, "a", true, NULL), RC_OK, &f.err);
    f.p.base = NULL;
    fx_reopen(&f);
    ASSERT_EQ(fx_stats(&f).n_resident + fx_stats(&f).n_loading, 0); /* pins not loaded */
    ASSERT_RC(store_list(f.s, f.tenant, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 1);
    free(rows);
    ASSERT_RC(store_resolve(f.s, f.tenant, "a", &r, &f.err), RC_OK, &f.err);
    ASSERT_EQ(r.id, a.id);
    snprintf(dir, sizeof dir, "%s/a", f.ads);
    ASSERT_RC(store_import(f.s, f.tenant, dir, "b", NULL, NULL, NULL, &f.err), RC_INVALID, &f.err);
    ASSERT(strstr(f.err.msg, "no base model loaded") != NULL);
    ASSERT_RC(store_upload_new(f.s, f.tenant, "b", &u, &f.err), RC_INVALID, &f.err);
    ASSERT(u == NULL);
    ASSERT_RC(store_import_dir(f.s, f.tenant, f.ads, &n_imp, &f.err), RC_INVALID, &f.err);
    ASSERT_EQ(n_imp, 0);
    ASSERT_RC(fx_acq(&f, "a", &l, NULL), RC_INVALID, &f.err);
    /* With the base again, the pin loads at open. */
    f.p.base = &f.base;
    fx_reopen(&f);
    ASSERT(fx_rt(&f, "a").resident);
    fx_end(&f);
}
