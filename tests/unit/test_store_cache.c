/* test_store_cache.c - the adapter store (store/store.h), part 2: the byte budget with LRU
 * eviction and admission waits (in use, deadlines), pins, deletes and blob GC, aliases
 * (the hot swap), and tenants: namespaces (same names, foreign and published adapters)
 * and the storage quota. Part 1 is test_store.c; fixtures are in store_fixture.h. */
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
    ASSERT_RC(store_resolve(f.s, f.tenant, "a", &row, &f.err), RC_OK, &f.err);
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
    store_pin(f.s, f.tenant, "a", true, on_done, &d1);
    store_pin(f.s, f.tenant, "b", true, on_done, &d2);
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
    ASSERT_RC(store_resolve(f.s, f.tenant, "a", &row, &f.err), RC_OK, &f.err);
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
    ASSERT_RC(store_resolve(f.s, f.tenant, "a", &row, &f.err), RC_OK, &f.err);
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
    ASSERT_RC(store_versions(f.s, f.tenant, "a", &rows, &n, &f.err), RC_NOT_FOUND, &f.err);
    ASSERT_RC(store_list(f.s, f.tenant, &rows, &n, &f.err), RC_OK, &f.err);
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
    ASSERT_RC(store_resolve(f.s, f.tenant, "a", &row, &f.err), RC_OK, &f.err);
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
    ASSERT_RC(store_aliases(f.s, f.tenant, &al, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 1);
    ASSERT_STREQ(al[0].name, "prod");
    ASSERT_STREQ(al[0].target, "a@1");
    ASSERT(al[0].updated > 0);
    free(al);
    core_lora_t *l1 = fx_acq_async(&f, "prod");
    ASSERT_NEAR(lora_seed(l1), 0.5, 1e-6);

    /* Repoint: resolve sees the new version as soon as the callback runs. */
    done_t d = {.s = f.s, .probe = "prod"};
    store_alias_put(f.s, f.tenant, "prod", "a@2", on_done, &d);
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
    ASSERT_RC(store_resolve(f.s, f.tenant, "prod2", &row, &f.err), RC_OK, &f.err);
    ASSERT_EQ(row.version, 1);
    ASSERT_RC(store_aliases(f.s, f.tenant, &al, &n, &f.err), RC_OK, &f.err);
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
    ASSERT_RC(store_resolve(f.s, f.tenant, "x", &row, &f.err), RC_NOT_FOUND, &f.err);

    ASSERT_RC(fx_alias_del(&f, "prod2"), RC_OK, &f.err);
    ASSERT_RC(store_resolve(f.s, f.tenant, "prod2", &row, &f.err), RC_NOT_FOUND, &f.err);
    ASSERT_RC(fx_alias_del(&f, "prod2"), RC_NOT_FOUND, &f.err);
    ASSERT_RC(store_aliases(f.s, f.tenant, &al, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 1);
    free(al);
    fx_reopen(&f); /* aliases persist */
    ASSERT_RC(store_resolve(f.s, f.tenant, "prod", &row, &f.err), RC_OK, &f.err);
    ASSERT_EQ(row.version, 2);
    fx_end(&f);
}

/* ---- tenants ---- */

static rc_t resolve_as(fx_t *f, int64_t tenant, const char *spec, store_adapter_t *row)
{
    return store_resolve(f->s, tenant, spec, row, &f->err);
}

TEST(tenants_same_name_own_rows)
{
    fx_t f;
    store_adapter_t r;
    core_lora_t *la = NULL, *lb = NULL;
    fx_init(&f, "tnsame");
    fx_open(&f);
    int64_t b = fx_tenant_new(&f, "b");
    store_adapter_t ra = fx_import(&f, "x", 0.5f);
    f.tenant = b;
    store_adapter_t rb = fx_import(&f, "x", 1.5f);
    ASSERT_EQ(rb.version, 1); /* versions count per tenant */
    ASSERT(rb.id != ra.id);
    ASSERT(strcmp(rb.sha256, ra.sha256) != 0);
    ASSERT_EQ(ra.tenant_id, STORE_TENANT_DEFAULT);
    ASSERT_EQ(rb.tenant_id, b);
    ASSERT(!ra.shared && !rb.shared && !ra.published && !rb.published);
    ASSERT_RC(resolve_as(&f, STORE_TENANT_DEFAULT, "x", &r), RC_OK, &f.err);
    ASSERT_EQ(r.id, ra.id);
    ASSERT_RC(resolve_as(&f, b, "x@1", &r), RC_OK, &f.err);
    ASSERT_EQ(r.id, rb.id);
    ASSERT(!r.shared);
    /* The cache keys by row id: each tenant gets its own bytes. */
    ASSERT_RC(fx_acq(&f, "x", &lb, &r), RC_OK, &f.err);
    ASSERT_EQ(r.id, rb.id);
    f.tenant = STORE_TENANT_DEFAULT;
    ASSERT_RC(fx_acq(&f, "x", &la, &r), RC_OK, &f.err);
    ASSERT_EQ(r.id, ra.id);
    ASSERT(la != lb);
    ASSERT_NEAR(lora_seed(la), 0.5, 1e-6);
    ASSERT_NEAR(lora_seed(lb), 1.5, 1e-6);
    core_lora_release(la);
    core_lora_release(lb);
    store_adapter_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_list(f.s, b, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 1);
    ASSERT_EQ(rows[0].id, rb.id);
    free(rows);
    /* B deleting its x leaves A's alone. */
    f.tenant = b;
    ASSERT_RC(fx_delete(&f, "x", NULL), RC_OK, &f.err);
    ASSERT_RC(resolve_as(&f, b, "x", &r), RC_NOT_FOUND, &f.err);
    ASSERT_RC(resolve_as(&f, STORE_TENANT_DEFAULT, "x", &r), RC_OK, &f.err);
    fx_end(&f);
}

/* Every refusal a foreign (or missing) spec gets, with its message. */
static void foreign_refused(fx_t *f, const char *spec)
{
    char want[128];
    store_adapter_t r;
    core_lora_t *l = NULL;
    snprintf(want, sizeof want, "adapter '%s' not found", spec);
    ASSERT_RC(store_resolve(f->s, f->tenant, spec, &r, &f->err), RC_NOT_FOUND, &f->err);
    ASSERT_STREQ(f->err.msg, want);
    ASSERT_RC(fx_acq(f, spec, &l, NULL), RC_NOT_FOUND, &f->err);
    ASSERT_STREQ(f->err.msg, want);
    ASSERT_RC(fx_delete(f, spec, NULL), RC_NOT_FOUND, &f->err);
    ASSERT_STREQ(f->err.msg, want);
    ASSERT_RC(fx_pin(f, spec, true, NULL), RC_NOT_FOUND, &f->err);
    ASSERT_STREQ(f->err.msg, want);
    ASSERT_RC(fx_alias(f, "mine", spec, NULL), RC_NOT_FOUND, &f->err);
    ASSERT_STREQ(f->err.msg, want);
}

TEST(tenants_foreign_unpublished_is_not_found)
{
    fx_t f;
    store_adapter_t r;
    store_adapter_t *rows = NULL;
    size_t n = 0;
    fx_init(&f, "tnforeign");
    fx_open(&f);
    int64_t b = fx_tenant_new(&f, "b");
    store_adapter_t ra = fx_import(&f, "secret", 0.5f);
    ASSERT_RC(fx_alias(&f, "prod", "secret", NULL), RC_OK, &f.err);
    f.tenant = b;
    foreign_refused(&f, "secret");
    foreign_refused(&f, "secret@1");
    foreign_refused(&f, "prod");
    foreign_refused(&f, "missing"); /* the same answers for a name nobody has */
    ASSERT_RC(fx_alias_del(&f, "prod"), RC_NOT_FOUND, &f.err);
    ASSERT_RC(store_versions(f.s, b, "secret", &rows, &n, &f.err), RC_NOT_FOUND, &f.err);
    ASSERT_STREQ(f.err.msg, "adapter 'secret' not found");
    ASSERT_RC(store_list(f.s, b, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 0);
    free(rows);
    store_alias_t *al = NULL;
    ASSERT_RC(store_aliases(f.s, b, &al, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 0);
    free(al);
    /* A's adapter and alias are untouched, and not pinned. */
    ASSERT_RC(resolve_as(&f, STORE_TENANT_DEFAULT, "prod", &r), RC_OK, &f.err);
    ASSERT_EQ(r.id, ra.id);
    ASSERT(!r.pinned);
    store_runtime_t rt;
    store_runtime(f.s, ra.id, &rt); /* B's pin started no load */
    ASSERT(!rt.resident && !rt.loading);
    fx_end(&f);
}

TEST(tenants_published_shared_and_shadowed)
{
    fx_t f;
    store_adapter_t r, *rows = NULL;
    size_t n = 0;
    core_lora_t *la = NULL, *lb = NULL;
    fx_init(&f, "tnpub");
    fx_open(&f);
    int64_t b = fx_tenant_new(&f, "b");
    store_adapter_t v1 = fx_import(&f, "pub", 0.5f), v2 = fx_import(&f, "pub", 0.75f);
    fx_import(&f, "other", 2.0f);
    ASSERT_RC(fx_alias(&f, "pubalias", "pub@1", NULL), RC_OK, &f.err);
    ASSERT_RC(fx_publish(&f, "pub", true), RC_OK, &f.err);
    ASSERT_RC(fx_publish(&f, "other", true), RC_OK, &f.err);
    ASSERT_RC(resolve_as(&f, STORE_TENANT_DEFAULT, "pub", &r), RC_OK, &f.err);
    ASSERT(r.published && !r.shared);
    /* B sees A's versions of pub, shared; not A's aliases. */
    f.tenant = b;
    ASSERT_RC(resolve_as(&f, b, "pub", &r), RC_OK, &f.err);
    ASSERT_EQ(r.id, v2.id);
    ASSERT(r.shared && r.published);
    ASSERT_EQ(r.tenant_id, STORE_TENANT_DEFAULT);
    ASSERT_RC(resolve_as(&f, b, "pub@1", &r), RC_OK, &f.err);
    ASSERT_EQ(r.id, v1.id);
    ASSERT(r.shared);
    ASSERT_RC(resolve_as(&f, b, "pub@3", &r), RC_NOT_FOUND, &f.err);
    foreign_refused(&f, "pubalias");
    ASSERT_RC(store_versions(f.s, b, "pub", &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 2);
    ASSERT(rows[0].shared && rows[1].shared);
    free(rows);
    /* One cache entry for every user of a published adapter. */
    ASSERT_RC(fx_acq(&f, "pub", &lb, &r), RC_OK, &f.err);
    ASSERT(r.shared);
    ASSERT_NEAR(lora_seed(lb), 0.75, 1e-6);
    f.tenant = STORE_TENANT_DEFAULT;
    ASSERT_RC(fx_acq(&f, "pub", &la, NULL), RC_OK, &f.err);
    ASSERT(la == lb);
    core_lora_release(la);
    core_lora_release(lb);
    /* Used, never changed by B: delete, pin and alias all answer not found. */
    f.tenant = b;
    ASSERT_RC(fx_delete(&f, "pub", NULL), RC_NOT_FOUND, &f.err);
    ASSERT_STREQ(f.err.msg, "adapter 'pub' not found");
    ASSERT_RC(fx_delete(&f, "pub@1", NULL), RC_NOT_FOUND, &f.err);
    ASSERT_RC(fx_pin(&f, "pub", true, NULL), RC_NOT_FOUND, &f.err);
    ASSERT_STREQ(f.err.msg, "adapter 'pub' not found");
    ASSERT_RC(fx_alias(&f, "mine", "pub", NULL), RC_NOT_FOUND, &f.err);
    ASSERT_RC(resolve_as(&f, b, "pub", &r), RC_OK, &f.err);
    ASSERT(!r.pinned);
    /* B's own adapter of that name shadows the published one. */
    store_adapter_t own = fx_import(&f, "pub", 1.5f);
    ASSERT_EQ(own.version, 1);
    ASSERT_RC(resolve_as(&f, b, "pub", &r), RC_OK, &f.err);
    ASSERT_EQ(r.id, own.id);
    ASSERT(!r.shared && !r.published);
    ASSERT_RC(resolve_as(&f, b, "pub@2", &r), RC_NOT_FOUND, &f.err); /* no mixing */
    ASSERT_RC(fx_acq(&f, "pub", &lb, NULL), RC_OK, &f.err);
    ASSERT_NEAR(lora_seed(lb), 1.5, 1e-6);
    core_lora_release(lb);
    /* The list: B's own, then A's published names B does not have, by name. */
    ASSERT_RC(store_list(f.s, b, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(rows[0].name, "other");
    ASSERT(rows[0].shared && rows[0].published);
    ASSERT_STREQ(rows[1].name, "pub");
    ASSERT_EQ(rows[1].id, own.id);
    ASSERT(!rows[1].shared);
    free(rows);
    ASSERT_RC(store_list(f.s, STORE_TENANT_DEFAULT, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 2);
    ASSERT(!rows[0].shared && !rows[1].shared && rows[1].published);
    free(rows);
    /* A deletes a published name: gone for B, and still after A imports it again. */
    f.tenant = STORE_TENANT_DEFAULT;
    ASSERT_RC(fx_delete(&f, "other", &r), RC_OK, &f.err);
    ASSERT(!r.published);
    f.tenant = b;
    foreign_refused(&f, "other");
    f.tenant = STORE_TENANT_DEFAULT;
    ASSERT_EQ(fx_import(&f, "other", 2.5f).version, 2);
    ASSERT_RC(resolve_as(&f, b, "other", &r), RC_NOT_FOUND, &f.err);
    fx_end(&f);
}

/* ---- storage quota ---- */

TEST(quota_stored_bytes)
{
    fx_t f;
    char dir[400], meta[256], blobs[600];
    fx_init(&f, "quota");
    fx_open(&f);
    int64_t b = fx_tenant_new(&f, "b");
    store_adapter_t a = fx_import(&f, "a", 0.5f);
    fx_import(&f, "b", 1.0f);
    f.p.default_max_stored_bytes = 3 * a.size; /* a and b stored: room for one more */
    fx_reopen(&f);
    /* The same adapter, a larger file: past the limit, by import and by upload. */
    snprintf(meta, sizeof meta, "{\"format\":\"pt\",\"pad\":\"%0100d\"}", 0);
    snprintf(dir, sizeof dir, "%s/big", f.ads);
    write_adapter_meta(dir, 1.5f, DIM, meta);
    fx_path(&f, blobs, sizeof blobs, "blobs", "");
    int n_blobs = count_dir(blobs);
    ASSERT_RC(store_import(f.s, f.tenant, dir, "c", NULL, NULL, NULL, &f.err), RC_QUOTA, &f.err);
    ASSERT(strstr(f.err.msg, "max_stored_bytes") != NULL);
    ASSERT(strstr(f.err.msg, "tenant storage quota") != NULL);
    ASSERT_RC(fx_upload(&f, "c", "big", true, true, NULL), RC_QUOTA, &f.err);
    store_adapter_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_versions(f.s, f.tenant, "c", &rows, &n, &f.err), RC_NOT_FOUND, &f.err);
    ASSERT_EQ(count_dir(blobs), n_blobs); /* no blob moved in */
    fx_tmp_empty(&f);
    /* Re-importing a stored adapter adds nothing; a smaller one fits exactly. */
    ASSERT_EQ(fx_import(&f, "a", 0.5f).id, a.id);
    store_adapter_t c = fx_import(&f, "c", 2.0f);
    ASSERT_EQ(c.version, 1);
    ASSERT_RC(fx_upload(&f, "d", "c", true, true, NULL), RC_QUOTA, &f.err);
    /* Deleted versions do not count; other tenants have their own budget. */
    ASSERT_RC(fx_delete(&f, "b", NULL), RC_OK, &f.err);
    ASSERT_EQ(fx_import(&f, "d", 2.5f).version, 1);
    f.tenant = b;
    ASSERT_EQ(fx_import(&f, "big", 1.5f).tenant_id, b);
    fx_end(&f);
}
