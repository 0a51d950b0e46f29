/* test_store_cache.c - the adapter store (store/store.h), part 2: the byte budget with LRU
 * eviction and admission waits (in use, deadlines), pins, deletes and blob GC, aliases
 * (the hot swap). Part 1 is test_store.c; fixtures are in store_fixture.h. */
#include "tests/unit/store_fixture.h"

TEST(budget_lru_evicts_idle)
{
    fx_t f;
    fx_three(&f, "lru", false);
    acq_release(&f, "a");
    acq_release(&f, "b");
    acq_release(&f, "a"); /* a hit: b is now the least recently used */
    ASSERT_EQ(fx_stats(&f).n_evictions, 0);
    acq_release(&f, "c");
    ASSERT_EQ(fx_stats(&f).n_evictions, 1);
    ASSERT(fx_rt(&f, "a").resident);
    ASSERT(!fx_rt(&f, "b").resident);
    ASSERT(fx_rt(&f, "c").resident);
    store_stats_t st = fx_stats(&f);
    ASSERT_EQ(st.resident_bytes, 2 * MEM_BYTES);
    ASSERT_EQ(st.budget_bytes, 2 * MEM_BYTES);
    ASSERT_EQ(st.n_resident, 2);
    acq_release(&f, "b"); /* a (used before c) goes */
    ASSERT_EQ(fx_stats(&f).n_evictions, 2);
    ASSERT(!fx_rt(&f, "a").resident);
    ASSERT(fx_rt(&f, "b").resident && fx_rt(&f, "c").resident);
    fx_end(&f);
}

TEST(budget_in_use_waits_for_room)
{
    fx_t f;
    store_want_t w;
    ready_t r = {0};
    store_wait_t *t = NULL;
    fx_three(&f, "room", true);
    core_lora_t *la = fx_acq_async(&f, "a"), *lb = fx_acq_async(&f, "b");
    int n_sub = aex_get(f.x, &f.x->n_submitted);
    fx_acq_wait(&f, &w, "c", &r, &t);
    ASSERT_EQ(aex_get(f.x, &f.x->n_submitted), n_sub); /* no load started */
    ASSERT_EQ(fx_stats(&f).n_waiting_room, 1);
    ASSERT(fx_rt(&f, "c").loading);
    store_tick(f.s, 0);
    ASSERT_EQ(aex_get(f.x, &f.x->n_submitted), n_sub);
    ASSERT_EQ(r.n, 0);
    ASSERT(fx_rt(&f, "a").resident && fx_rt(&f, "b").resident);
    core_lora_release(la);
    store_tick(f.s, 0); /* the store learns of the release here */
    /* Two tasks: the evicted adapter's release (off the loop thread) and c's load. */
    ASSERT_EQ(aex_get(f.x, &f.x->n_submitted), n_sub + 2);
    aex_pump_all(f.x);
    ASSERT_EQ(r.n, 1);
    ASSERT_RC(r.rc, RC_OK, &r.err);
    ASSERT_NEAR(lora_seed(w.lora), 1.5, 1e-6);
    ASSERT(!fx_rt(&f, "a").resident);
    ASSERT(fx_rt(&f, "b").resident);
    ASSERT_EQ(fx_stats(&f).n_evictions, 1);
    ASSERT_EQ(fx_stats(&f).n_waiting_room, 0);
    core_lora_release(lb);
    core_lora_release(w.lora);
    fx_end(&f);
}

TEST(budget_wait_deadline)
{
    fx_t f;
    store_want_t w;
    ready_t r = {0};
    store_wait_t *t = NULL;
    core_lora_t *la = NULL, *lb = NULL;
    fx_init(&f, "deadline");
    f.p.load_wait_ms = 150; /* generous: the asserts before the deadline must run within it */
    f.p.cache_budget_bytes = 2 * MEM_BYTES;
    fx_open(&f);
    fx_import(&f, "a", 0.5f);
    fx_import(&f, "b", 1.0f);
    fx_import(&f, "c", 1.5f);
    ASSERT_RC(fx_acq(&f, "a", &la, NULL), RC_OK, &f.err);
    ASSERT_RC(fx_acq(&f, "b", &lb, NULL), RC_OK, &f.err);
    store_tick(f.s, 0);
    /* No room even with the synchronous executor: the acquire waits. */
    fx_acq_wait(&f, &w, "c", &r, &t);
    store_tick(f.s, 0);
    ASSERT_EQ(r.n, 0);
    usleep(200 * 1000);
    store_tick(f.s, 0);
    ASSERT_EQ(r.n, 1);
    ASSERT_RC(r.rc, RC_BUSY, &r.err);
    ASSERT(strstr(r.err.msg, "full") != NULL);
    ASSERT(w.lora == NULL);
    ASSERT(!fx_rt(&f, "c").loading); /* nobody waits for it any more */
    ASSERT_EQ(fx_stats(&f).n_waiting_room, 0);
    ASSERT_EQ(fx_stats(&f).n_loads, 2);
    /* The deadline counts from the acquire, not from the last tick before it. */
    usleep(200 * 1000);
    memset(&r, 0, sizeof r);
    fx_acq_wait(&f, &w, "c", &r, &t);
    store_tick(f.s, 0);
    ASSERT_EQ(r.n, 0);
    store_wait_cancel(f.s, t);
    core_lora_release(la);
    core_lora_release(lb);
    fx_end(&f);
}

/* ---- pins ---- */

TEST(pin_keeps_resident_and_limits)
{
    fx_t f;
    store_adapter_t row;
    store_want_t w;
    ready_t r = {0};
    store_wait_t *t = NULL;
    fx_three(&f, "pin", false);
    ASSERT_RC(fx_pin(&f, "a", true, &row), RC_OK, &f.err);
    ASSERT_STREQ(row.name, "a");
    ASSERT(row.pinned);
    ASSERT(fx_rt(&f, "a").resident); /* pinning loads now */
    ASSERT_RC(store_resolve(f.s, "a", &row, &f.err), RC_OK, &f.err);
    ASSERT(row.pinned);
    ASSERT_EQ(fx_stats(&f).pinned_bytes, MEM_BYTES);
    acq_release(&f, "b");
    acq_release(&f, "c"); /* a is the least recently used, but pinned: b goes */
    ASSERT(fx_rt(&f, "a").resident);
    ASSERT(!fx_rt(&f, "b").resident);
    ASSERT(fx_rt(&f, "c").resident);
    ASSERT_RC(fx_pin(&f, "b", true, NULL), RC_OK, &f.err); /* c goes */
    ASSERT(fx_rt(&f, "b").resident && !fx_rt(&f, "c").resident);
    ASSERT_RC(fx_pin(&f, "c", true, NULL), RC_LIMIT, &f.err);
    ASSERT(strstr(f.err.msg, "c@1") != NULL);
    ASSERT_RC(fx_pin(&f, "a", true, NULL), RC_OK, &f.err); /* already pinned: no change */
    ASSERT_EQ(fx_stats(&f).pinned_bytes, 2 * MEM_BYTES);
    /* Everything pinned: c waits for room. */
    fx_acq_wait(&f, &w, "c", &r, &t);
    store_wait_cancel(f.s, t);
    ASSERT_RC(fx_pin(&f, "b", false, &row), RC_OK, &f.err);
    ASSERT(!row.pinned);
    acq_release(&f, "c");
    ASSERT(fx_rt(&f, "a").resident && !fx_rt(&f, "b").resident);
    ASSERT_RC(fx_pin(&f, "nope", true, NULL), RC_NOT_FOUND, &f.err);
    fx_end(&f);
}

TEST(pin_race_counts_pins_in_flight)
{
    fx_t f;
    done_t d1 = {0}, d2 = {0};
    fx_init(&f, "pinrace");
    fx_async(&f);
    fx_open(&f);
    fx_import(&f, "a", 0.5f);
    fx_import(&f, "b", 1.0f);
    f.p.cache_budget_bytes = MEM_BYTES;
    fx_reopen(&f);
    /* Two pins of cold versions before either commits: only one fits. */
    store_pin(f.s, "a", true, on_done, &d1);
    store_pin(f.s, "b", true, on_done, &d2);
    ASSERT_RC(fx_done(&f, &d1), RC_OK, &f.err);
    ASSERT_RC(fx_done(&f, &d2), RC_LIMIT, &f.err);
    aex_pump_all(f.x);
    ASSERT_EQ(fx_stats(&f).pinned_bytes, MEM_BYTES);
    ASSERT(fx_rt(&f, "a").resident);
    acq_release(&f, "a"); /* resident: a hit in the call */
    ASSERT_EQ(fx_stats(&f).n_hits, 1);
    fx_end(&f);
}

TEST(pin_persists_across_reopen)
{
    fx_t f;
    store_adapter_t row;
    fx_init(&f, "pinopen");
    fx_open(&f);
    fx_import(&f, "a", 0.5f);
    fx_import(&f, "b", 1.0f);
    ASSERT_RC(fx_pin(&f, "a", true, NULL), RC_OK, &f.err);
    fx_reopen(&f); /* synchronous executor: loaded inside store_open */
    ASSERT_RC(store_resolve(f.s, "a", &row, &f.err), RC_OK, &f.err);
    ASSERT(row.pinned);
    ASSERT(fx_rt(&f, "a").resident);
    ASSERT(!fx_rt(&f, "b").resident);
    ASSERT_EQ(fx_stats(&f).pinned_bytes, MEM_BYTES);
    fx_close(&f);
    fx_async(&f);
    fx_open(&f); /* the load was submitted by open */
    store_runtime_t rt = fx_rt(&f, "a");
    ASSERT(rt.resident || rt.loading);
    ASSERT_EQ(aex_get(f.x, &f.x->n_submitted), 1);
    aex_pump_all(f.x);
    ASSERT(fx_rt(&f, "a").resident);
    ASSERT_RC(fx_pin(&f, "a", false, NULL), RC_OK, &f.err);
    fx_reopen(&f);
    ASSERT(!fx_rt(&f, "a").resident && !fx_rt(&f, "a").loading);
    ASSERT_EQ(aex_get(f.x, &f.x->n_submitted), 2);
    fx_end(&f);
}

/* ---- delete and GC ---- */

TEST(delete_versions_and_holders)
{
    fx_t f;
    store_adapter_t row;
    core_lora_t *l1 = NULL, *l2 = NULL;
    fx_init(&f, "delete");
    fx_open(&f);
    fx_import(&f, "a", 0.5f);
    fx_import(&f, "a", 0.75f);
    ASSERT_RC(fx_acq(&f, "a@1", &l1, NULL), RC_OK, &f.err);
    ASSERT_RC(fx_delete(&f, "a@1", &row), RC_OK, &f.err);
    ASSERT_EQ(row.version, 1);
    ASSERT_RC(fx_acq(&f, "a@1", &l2, NULL), RC_NOT_FOUND, &f.err);
    ASSERT_RC(store_resolve(f.s, "a", &row, &f.err), RC_OK, &f.err);
    ASSERT_EQ(row.version, 2);
    ASSERT_NEAR(lora_seed(l1), 0.5, 1e-6); /* the holder's reference is intact */
    ASSERT_EQ(refcount(l1), 1);           /* the cache let go of it */
    core_lora_release(l1);

    ASSERT_RC(fx_acq(&f, "a", &l2, NULL), RC_OK, &f.err);
    ASSERT_RC(fx_delete(&f, "a", &row), RC_OK, &f.err);
    ASSERT_EQ(row.version, 2);
    ASSERT_RC(fx_acq(&f, "a", &l1, NULL), RC_NOT_FOUND, &f.err);
    store_adapter_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_versions(f.s, "a", &rows, &n, &f.err), RC_NOT_FOUND, &f.err);
    ASSERT_RC(store_list(f.s, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 0);
    free(rows);
    ASSERT_NEAR(lora_seed(l2), 0.75, 1e-6);
    core_lora_release(l2);
    ASSERT_RC(fx_delete(&f, "a", NULL), RC_NOT_FOUND, &f.err);
    ASSERT_RC(fx_delete(&f, "a@x", NULL), RC_INVALID, &f.err);

    /* Versions are never reused. */
    row = fx_import(&f, "a", 0.5f);
    ASSERT_EQ(row.version, 3);
    ASSERT_RC(fx_alias(&f, "prod", "a", NULL), RC_OK, &f.err);
    ASSERT_RC(fx_delete(&f, "a@3", NULL), RC_EXISTS, &f.err);
    ASSERT(strstr(f.err.msg, "prod") != NULL);
    ASSERT_RC(fx_delete(&f, "a", NULL), RC_EXISTS, &f.err);
    ASSERT_RC(store_resolve(f.s, "a", &row, &f.err), RC_OK, &f.err);
    ASSERT_EQ(row.version, 3);
    ASSERT_RC(fx_alias_del(&f, "prod"), RC_OK, &f.err);
    ASSERT_RC(fx_delete(&f, "a", NULL), RC_OK, &f.err);
    fx_end(&f);
}

TEST(delete_then_gc_keeps_shared_blobs)
{
    fx_t f;
    char p[600];
    fx_init(&f, "gc");
    fx_open(&f);
    store_adapter_t a1 = fx_import(&f, "a", 0.5f);
    store_adapter_t a2 = fx_import(&f, "a", 0.75f); /* same config blob */
    store_adapter_t b1 = fx_import(&f, "b", 0.5f);  /* both blobs shared with a@1 */
    ASSERT_STREQ(b1.sha256, a1.sha256);
    fx_path(&f, p, sizeof p, "blobs", "");
    ASSERT_EQ(count_dir(p), 3);
    ASSERT_RC(fx_delete(&f, "a@1", NULL), RC_OK, &f.err);
    fx_reopen(&f);
    fx_path(&f, p, sizeof p, "blobs", a1.sha256);
    ASSERT(path_exists(p)); /* b@1 still uses it */
    ASSERT_RC(fx_delete(&f, "b", NULL), RC_OK, &f.err);
    fx_reopen(&f);
    ASSERT(!path_exists(p));
    fx_path(&f, p, sizeof p, "blobs", a2.sha256);
    ASSERT(path_exists(p));
    fx_path(&f, p, sizeof p, "blobs", a2.config_sha256);
    ASSERT(path_exists(p));
    fx_path(&f, p, sizeof p, "blobs", "");
    ASSERT_EQ(count_dir(p), 2);
    acq_release(&f, "a");
    /* GC also runs from store_tick every gc_interval_ms. */
    f.p.gc_interval_ms = 1;
    fx_reopen(&f);
    ASSERT_RC(fx_delete(&f, "a", NULL), RC_OK, &f.err);
    usleep(5 * 1000);
    store_tick(f.s, 0);
    ASSERT_EQ(count_dir(p), 0);
    fx_end(&f);
}

/* ---- aliases ---- */

TEST(aliases_hot_swap)
{
    fx_t f;
    store_adapter_t row;
    store_alias_t *al = NULL;
    size_t n = 0;
    fx_init(&f, "alias");
    fx_async(&f);
    fx_open(&f);
    fx_import(&f, "a", 0.5f);
    fx_import(&f, "a", 0.75f);
    fx_import(&f, "b", 1.0f);
    ASSERT_RC(fx_alias(&f, "prod", "a@1", &row), RC_OK, &f.err);
    ASSERT_STREQ(row.name, "a");
    ASSERT_EQ(row.version, 1);
    ASSERT_RC(store_aliases(f.s, &al, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 1);
    ASSERT_STREQ(al[0].name, "prod");
    ASSERT_STREQ(al[0].target, "a@1");
    ASSERT(al[0].updated > 0);
    free(al);
    core_lora_t *l1 = fx_acq_async(&f, "prod");
    ASSERT_NEAR(lora_seed(l1), 0.5, 1e-6);

    /* Repoint: resolve sees the new version as soon as the callback runs. */
    done_t d = {.s = f.s, .probe = "prod"};
    store_alias_put(f.s, "prod", "a@2", on_done, &d);
    ASSERT_EQ(d.n, 0); /* never inside the call with an asynchronous executor */
    ASSERT_RC(fx_done(&f, &d), RC_OK, &f.err);
    ASSERT_EQ(d.row.version, 2);
    ASSERT_EQ(d.probe_version, 2);
    core_lora_t *l2 = fx_acq_async(&f, "prod");
    ASSERT_NEAR(lora_seed(l2), 0.75, 1e-6);
    ASSERT_NEAR(lora_seed(l1), 0.5, 1e-6); /* the old holder is unaffected */
    core_lora_release(l1);
    core_lora_release(l2);

    /* "NAME" means its newest version now; later versions do not move the alias. */
    ASSERT_RC(fx_alias(&f, "prod2", "b", NULL), RC_OK, &f.err);
    fx_import(&f, "b", 1.25f);
    ASSERT_RC(store_resolve(f.s, "prod2", &row, &f.err), RC_OK, &f.err);
    ASSERT_EQ(row.version, 1);
    ASSERT_RC(store_aliases(f.s, &al, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(al[0].name, "prod");
    ASSERT_STREQ(al[0].target, "a@2");
    ASSERT_STREQ(al[1].name, "prod2");
    ASSERT_STREQ(al[1].target, "b@1");
    free(al);

    ASSERT_RC(fx_alias(&f, "a", "b@1", NULL), RC_EXISTS, &f.err);
    ASSERT_RC(fx_alias(&f, "x", "nope", NULL), RC_NOT_FOUND, &f.err);
    ASSERT_RC(fx_alias(&f, "x", "a@9", NULL), RC_NOT_FOUND, &f.err);
    ASSERT_RC(fx_alias(&f, "bad name", "a", NULL), RC_INVALID, &f.err);
    ASSERT_RC(store_resolve(f.s, "x", &row, &f.err), RC_NOT_FOUND, &f.err);

    ASSERT_RC(fx_alias_del(&f, "prod2"), RC_OK, &f.err);
    ASSERT_RC(store_resolve(f.s, "prod2", &row, &f.err), RC_NOT_FOUND, &f.err);
    ASSERT_RC(fx_alias_del(&f, "prod2"), RC_NOT_FOUND, &f.err);
    ASSERT_RC(store_aliases(f.s, &al, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 1);
    free(al);
    fx_reopen(&f); /* aliases persist */
    ASSERT_RC(store_resolve(f.s, "prod", &row, &f.err), RC_OK, &f.err);
    ASSERT_EQ(row.version, 2);
    fx_end(&f);
}
