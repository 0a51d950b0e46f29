/* test_store_tenant.c - tenants, API keys and published names of the store (store/tenant.c,
 * store.h "tenants and API keys" and store_publish).
 *
 * Each TEST opens a store in its own folder tests/tmp/test_store_tenant_<pid>_<name>/ with
 * a queued executor: submit only queues, tq_run() runs work() then done() on this thread,
 * so a test can look at the store between a call and its callback (a revoke is in force
 * before its write). Adapter rows for publish and byte counts are written with a second
 * sqlite connection: this file tests the tenant half, not imports. */
#include <ftw.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/sha256.h"
#include "store/store.h"
#include "store/store_int.h"
#include "tests/unit/harness.h"
#include "tests/unit/st_write.h"

/* ---- the queued executor ---- */

#define TQ_MAX 64
typedef struct {
    store_task_t *q[TQ_MAX];
    int n;
} tq_t;

static void tq_submit(void *ctx, store_task_t *t)
{
    tq_t *q = ctx;
    ASSERT(q->n < TQ_MAX);
    q->q[q->n++] = t;
}

static void tq_run(tq_t *q)
{
    for (int i = 0; i < q->n; i++) {
        q->q[i]->work(q->q[i]);
        q->q[i]->done(q->q[i]);
    }
    q->n = 0;
}

/* ---- fixture ---- */

typedef struct {
    char root[256], data[320], db[400];
    core_model_t base;
    store_params_t p;
    store_t *s;
    tq_t q;
    core_err_t err;
} tf_t;

static int tf_rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    return remove(p);
}

static void tf_open(tf_t *f)
{
    ASSERT_RC(store_open(&f->p, &f->s, &f->err), RC_OK, &f->err);
    ASSERT(f->s != NULL);
}

static void tf_close(tf_t *f)
{
    tq_run(&f->q);
    ASSERT_EQ(store_n_tasks(f->s), 0);
    store_close(f->s);
    f->s = NULL;
}

/* Paths and params only (nothing opened or created). */
static void tf_params(tf_t *f, const char *name)
{
    memset(f, 0, sizeof *f);
    snprintf(f->root, sizeof f->root, "tests/tmp/test_store_tenant_%d_%s", (int)getpid(), name);
    snprintf(f->data, sizeof f->data, "%s/data", f->root);
    snprintf(f->db, sizeof f->db, "%s/adapterd.db", f->data);
    /* The store needs only the base's fingerprint; no adapter is imported here. */
    memset(f->base.fingerprint, 'a', 64);
    f->p = store_default_params();
    f->p.data_dir = f->data;
    f->p.base = &f->base;
    f->p.lock = true;
    f->p.exec = (store_exec_t){.ctx = &f->q, .submit = tq_submit};
}

static void tf_init(tf_t *f, const char *name)
{
    tf_params(f, name);
    nftw(f->root, tf_rm_one, 16, FTW_DEPTH | FTW_PHYS);
    ASSERT_EQ(stw_mkdirs(f->root), 0);
    tf_open(f);
}

static void tf_end(tf_t *f)
{
    if (f->s)
        tf_close(f);
    nftw(f->root, tf_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void tf_reopen(tf_t *f)
{
    tf_close(f);
    tf_open(f);
}

/* ---- callbacks ---- */

typedef struct {
    int n;
    rc_t rc;
    bool has_row;
    store_tenant_t t;
    store_key_t k;
    store_adapter_t a;
    char secret[STORE_KEY_SECRET_MAX + 1];
    core_err_t err;
} got_t;

static void on_tenant(void *user, rc_t rc, const store_tenant_t *t, const core_err_t *err)
{
    got_t *g = user;
    g->n++;
    g->rc = rc;
    g->has_row = t != NULL;
    if (t)
        g->t = *t;
    g->err = *err;
}

static void on_key(void *user, rc_t rc, const store_key_t *k, const char *secret,
                   const core_err_t *err)
{
    got_t *g = user;
    g->n++;
    g->rc = rc;
    g->has_row = k != NULL;
    if (k)
        g->k = *k;
    ASSERT(rc == RC_OK || secret == NULL); /* a failed add hands out nothing */
    if (secret)
        snprintf(g->secret, sizeof g->secret, "%s", secret);
    g->err = *err;
}

static void on_adapter(void *user, rc_t rc, const store_adapter_t *row, const core_err_t *err)
{
    got_t *g = user;
    g->n++;
    g->rc = rc;
    g->has_row = row != NULL;
    if (row)
        g->a = *row;
    g->err = *err;
}

/* The callback has not run inside the call; run the task, check it answered once. */
static rc_t tf_wait(tf_t *f, got_t *g)
{
    ASSERT_EQ(g->n, 0);
    tq_run(&f->q);
    ASSERT_EQ(g->n, 1);
    ASSERT_EQ(g->has_row, g->rc == RC_OK);
    f->err = g->err;
    return g->rc;
}

static store_tenant_t tenant_spec(const char *name, int64_t mc, int64_t tpm, int64_t msb,
                                  double share)
{
    store_tenant_t t;
    memset(&t, 0, sizeof t);
    snprintf(t.name, sizeof t.name, "%s", name);
    t.max_concurrent = mc;
    t.tokens_per_min = tpm;
    t.max_stored_bytes = msb;
    t.share = share;
    return t;
}

static rc_t tf_put(tf_t *f, const store_tenant_t *t, bool create, store_tenant_t *out)
{
    got_t g = {0};
    store_tenant_put(f->s, t, create, on_tenant, &g);
    rc_t rc = tf_wait(f, &g);
    if (out)
        *out = g.t;
    return rc;
}

static int64_t tf_tenant(tf_t *f, const char *name)
{
    store_tenant_t t = tenant_spec(name, -1, -1, -1, 1.0), out;
    ASSERT_RC(tf_put(f, &t, true, &out), RC_OK, &f->err);
    return out.id;
}

/* A new key; its secret into secret (>= STORE_KEY_SECRET_MAX + 1 bytes). */
static rc_t tf_key(tf_t *f, int64_t tenant, store_role_t role, const char *label,
                   store_key_t *k, char *secret)
{
    got_t g = {0};
    store_key_add(f->s, tenant, role, label, on_key, &g);
    rc_t rc = tf_wait(f, &g);
    if (k)
        *k = g.k;
    if (secret)
        memcpy(secret, g.secret, sizeof g.secret);
    return rc;
}

static rc_t tf_revoke(tf_t *f, const char *id, store_key_t *k)
{
    got_t g = {0};
    store_key_revoke(f->s, id, on_key, &g);
    rc_t rc = tf_wait(f, &g);
    if (k)
        *k = g.k;
    return rc;
}

static rc_t tf_publish(tf_t *f, int64_t tenant, const char *name, bool publish,
                       store_adapter_t *row)
{
    got_t g = {0};
    store_publish(f->s, tenant, name, publish, on_adapter, &g);
    rc_t rc = tf_wait(f, &g);
    if (row)
        *row = g.a;
    return rc;
}

static bool auth(tf_t *f, const char *secret, store_key_t *k)
{
    return store_auth(f->s, secret, strlen(secret), k);
}

/* ---- the index, through a second connection ---- */

static sqlite3 *db_open(tf_t *f)
{
    sqlite3 *db = NULL;
    ASSERT_EQ(sqlite3_open_v2(f->db, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    return db;
}

static void db_adapter(tf_t *f, int64_t tenant, const char *name, int version, int64_t size,
                       const char *state)
{
    sqlite3 *db = db_open(f);
    sqlite3_stmt *st = NULL;
    ASSERT_EQ(sqlite3_prepare_v2(db,
                                 "INSERT INTO adapters (tenant_id, name, version, kind, rank,"
                                 " alpha, targets, base_fingerprint, sha256, config_sha256, size,"
                                 " mem_bytes, created, state) VALUES (?1, ?2, ?3, 'lora', 2, 4,"
                                 " 'q_proj', '', ?4, ?4, ?5, 256, 1, ?6)",
                                 -1, &st, NULL),
              SQLITE_OK);
    char sha[65];
    snprintf(sha, sizeof sha, "%064lld", (long long)(tenant * 1000 + version));
    sqlite3_bind_int64(st, 1, tenant);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 3, version);
    sqlite3_bind_text(st, 4, sha, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 5, size);
    sqlite3_bind_text(st, 6, state, -1, SQLITE_TRANSIENT);
    ASSERT_EQ(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* The tenant that publishes name, 0 for none. */
static int64_t db_publisher(tf_t *f, const char *name)
{
    sqlite3 *db = db_open(f);
    sqlite3_stmt *st = NULL;
    int64_t id = 0;
    ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT tenant_id FROM published WHERE name = ?1", -1, &st,
                                 NULL),
              SQLITE_OK);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) == SQLITE_ROW)
        id = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return id;
}

/* Does file path (absent: no) contain needle? */
static bool file_has(const char *path, const char *needle)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return false;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    ASSERT(buf != NULL);
    ASSERT_EQ(fread(buf, 1, (size_t)n, fp), n);
    fclose(fp);
    bool has = memmem(buf, (size_t)n, needle, strlen(needle)) != NULL;
    free(buf);
    return has;
}

static bool index_has(tf_t *f, const char *needle)
{
    char wal[420], shm[420];
    snprintf(wal, sizeof wal, "%s-wal", f->db);
    snprintf(shm, sizeof shm, "%s-shm", f->db);
    return file_has(f->db, needle) || file_has(wal, needle) || file_has(shm, needle);
}

/* ---- tenants ---- */

TEST(default_tenant_exists)
{
    tf_t f;
    store_tenant_t t;
    tf_init(&f, "default");
    ASSERT_RC(store_tenant(f.s, STORE_TENANT_DEFAULT, &t), RC_OK, NULL);
    ASSERT_STREQ(t.name, "default");
    ASSERT_EQ(t.max_concurrent, STORE_QUOTA_INHERIT);
    ASSERT_EQ(t.tokens_per_min, STORE_QUOTA_INHERIT);
    ASSERT_EQ(t.max_stored_bytes, STORE_QUOTA_INHERIT);
    ASSERT_NEAR(t.share, 1.0, 0);
    ASSERT_RC(store_tenant_by_name(f.s, "default", &t), RC_OK, NULL);
    ASSERT_EQ(t.id, STORE_TENANT_DEFAULT);
    ASSERT_RC(store_tenant(f.s, 42, &t), RC_NOT_FOUND, NULL);
    ASSERT_RC(store_tenant_by_name(f.s, "nobody", &t), RC_NOT_FOUND, NULL);
    ASSERT_EQ(store_n_active_keys(f.s), 0);
    tf_end(&f);
}

TEST(tenant_create_update_list)
{
    tf_t f;
    store_tenant_t t = tenant_spec("zeta", 4, 1000, 1 << 20, 2.5), got, mem;
    tf_init(&f, "create");
    ASSERT_RC(tf_put(&f, &t, true, &got), RC_OK, &f.err);
    ASSERT(got.id > STORE_TENANT_DEFAULT);
    ASSERT(got.created > 0);
    ASSERT_STREQ(got.name, "zeta");
    ASSERT_EQ(got.max_concurrent, 4);
    ASSERT_EQ(got.tokens_per_min, 1000);
    ASSERT_EQ(got.max_stored_bytes, 1 << 20);
    ASSERT_NEAR(got.share, 2.5, 0);
    ASSERT_RC(store_tenant_by_name(f.s, "zeta", &mem), RC_OK, NULL);
    ASSERT_EQ(mem.id, got.id);
    /* Update: every field written as given, id and created kept. */
    store_tenant_t u = tenant_spec("zeta", -1, 0, 7, 0.25), got2;
    ASSERT_RC(tf_put(&f, &u, false, &got2), RC_OK, &f.err);
    ASSERT_EQ(got2.id, got.id);
    ASSERT_EQ(got2.created, got.created);
    ASSERT_EQ(got2.max_concurrent, -1);
    ASSERT_EQ(got2.tokens_per_min, 0);
    ASSERT_EQ(got2.max_stored_bytes, 7);
    ASSERT_NEAR(got2.share, 0.25, 0);
    ASSERT_RC(store_tenant(f.s, got.id, &mem), RC_OK, NULL);
    ASSERT_EQ(mem.max_stored_bytes, 7);
    ASSERT_NEAR(mem.share, 0.25, 0);
    int64_t acme = tf_tenant(&f, "acme");
    store_tenant_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_tenants(f.s, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 3);
    ASSERT_STREQ(rows[0].name, "acme");
    ASSERT_EQ(rows[0].id, acme);
    ASSERT_STREQ(rows[1].name, "default");
    ASSERT_STREQ(rows[2].name, "zeta");
    free(rows);
    tf_end(&f);
}

TEST(tenant_put_refusals)
{
    tf_t f;
    tf_init(&f, "refuse");
    tf_tenant(&f, "acme");
    store_tenant_t t = tenant_spec("acme", -1, -1, -1, 1);
    ASSERT_RC(tf_put(&f, &t, true, NULL), RC_EXISTS, &f.err);
    ASSERT(strstr(f.err.msg, "acme") != NULL);
    t = tenant_spec("default", -1, -1, -1, 1);
    ASSERT_RC(tf_put(&f, &t, true, NULL), RC_EXISTS, &f.err);
    t = tenant_spec("ghost", -1, -1, -1, 1);
    ASSERT_RC(tf_put(&f, &t, false, NULL), RC_NOT_FOUND, &f.err);
    ASSERT_RC(store_tenant_by_name(f.s, "ghost", &t), RC_NOT_FOUND, NULL);
    const char *bad_names[] = {"", "-lead", "has space", "a/b", "x\xc3\xa9"};
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        t = tenant_spec(bad_names[i], -1, -1, -1, 1);
        ASSERT_RC(tf_put(&f, &t, true, NULL), RC_INVALID, &f.err);
    }
    const double bad_shares[] = {0.0, -1.0, NAN, INFINITY};
    for (size_t i = 0; i < sizeof bad_shares / sizeof bad_shares[0]; i++) {
        t = tenant_spec("beta", -1, -1, -1, bad_shares[i]);
        ASSERT_RC(tf_put(&f, &t, true, NULL), RC_INVALID, &f.err);
        ASSERT(strstr(f.err.msg, "share") != NULL);
    }
    t = tenant_spec("beta", -2, -1, -1, 1);
    ASSERT_RC(tf_put(&f, &t, true, NULL), RC_INVALID, &f.err);
    t = tenant_spec("beta", -1, -5, -1, 1);
    ASSERT_RC(tf_put(&f, &t, true, NULL), RC_INVALID, &f.err);
    t = tenant_spec("acme", -1, -1, -2, 1);
    ASSERT_RC(tf_put(&f, &t, false, NULL), RC_INVALID, &f.err);
    store_tenant_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_tenants(f.s, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 2); /* default and acme: nothing refused was stored */
    free(rows);
    tf_end(&f);
}

TEST(effective_quotas_use_defaults)
{
    tf_t f;
    store_tenant_t t, eff;
    tf_init(&f, "effective");
    tf_close(&f);
    f.p.default_max_concurrent = 3;
    f.p.default_tokens_per_min = 600;
    f.p.default_max_stored_bytes = 5000;
    tf_open(&f);
    t = tenant_spec("mixed", -1, 0, 123, 1);
    ASSERT_RC(tf_put(&f, &t, true, &t), RC_OK, &f.err);
    store_tenant_effective(f.s, &t, &eff);
    ASSERT_EQ(eff.id, t.id);
    ASSERT_STREQ(eff.name, "mixed");
    ASSERT_EQ(eff.max_concurrent, 3);   /* inherited */
    ASSERT_EQ(eff.tokens_per_min, 0);   /* unlimited, as set */
    ASSERT_EQ(eff.max_stored_bytes, 123);
    ASSERT_EQ(store__tenant_max_bytes(f.s, t.id), 123);
    ASSERT_EQ(store__tenant_max_bytes(f.s, STORE_TENANT_DEFAULT), 5000);
    ASSERT_RC(store_tenant(f.s, STORE_TENANT_DEFAULT, &t), RC_OK, NULL);
    store_tenant_effective(f.s, &t, &eff);
    ASSERT_EQ(eff.max_concurrent, 3);
    ASSERT_EQ(eff.tokens_per_min, 600);
    ASSERT_EQ(eff.max_stored_bytes, 5000);
    tf_end(&f);
}

/* ---- keys ---- */

static bool is_b64url(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_';
}

TEST(key_secret_shape_and_auth)
{
    tf_t f;
    store_key_t k, who;
    char secret[STORE_KEY_SECRET_MAX + 1];
    tf_init(&f, "keyshape");
    int64_t acme = tf_tenant(&f, "acme");
    ASSERT_RC(tf_key(&f, acme, STORE_ROLE_TENANT, "ci runner", &k, secret), RC_OK, &f.err);
    /* "adk_" + 12 lowercase hex (the id) + "_" + 43 base64url chars. */
    ASSERT_EQ(strlen(secret), 4 + STORE_KEY_ID_LEN + 1 + 43);
    ASSERT_EQ(strncmp(secret, "adk_", 4), 0);
    ASSERT_EQ(strlen(k.id), STORE_KEY_ID_LEN);
    ASSERT_EQ(strspn(k.id, "0123456789abcdef"), STORE_KEY_ID_LEN);
    ASSERT_EQ(strncmp(secret + 4, k.id, STORE_KEY_ID_LEN), 0);
    ASSERT_EQ(secret[4 + STORE_KEY_ID_LEN], '_');
    for (const char *p = secret + 4 + STORE_KEY_ID_LEN + 1; *p; p++)
        ASSERT(is_b64url(*p));
    ASSERT_EQ(k.tenant_id, acme);
    ASSERT_EQ(k.role, STORE_ROLE_TENANT);
    ASSERT_STREQ(k.label, "ci runner");
    ASSERT(k.created > 0);
    ASSERT_EQ(k.revoked, 0);
    ASSERT_EQ(store_n_active_keys(f.s), 1);
    /* Auth with the exact secret. */
    memset(&who, 0, sizeof who);
    ASSERT(auth(&f, secret, &who));
    ASSERT_STREQ(who.id, k.id);
    ASSERT_EQ(who.tenant_id, acme);
    ASSERT_EQ(who.role, STORE_ROLE_TENANT);
    /* One changed char anywhere, one missing or extra, empty, too long: refused. */
    size_t len = strlen(secret);
    for (size_t i = 0; i < len; i++) {
        char bad[STORE_KEY_SECRET_MAX + 1];
        memcpy(bad, secret, len + 1);
        bad[i] = bad[i] == 'A' ? 'B' : 'A';
        ASSERT(!auth(&f, bad, NULL));
    }
    ASSERT(!store_auth(f.s, secret, len - 1, NULL));
    char longer[STORE_KEY_SECRET_MAX + 8];
    snprintf(longer, sizeof longer, "%sx", secret);
    ASSERT(!auth(&f, longer, NULL));
    ASSERT(!store_auth(f.s, secret, 0, NULL));
    ASSERT(!auth(&f, "", NULL));
    char huge[STORE_KEY_SECRET_MAX + 2];
    memset(huge, 'a', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    ASSERT(!auth(&f, huge, NULL));
    tf_end(&f);
}

TEST(auth_picks_the_matching_key)
{
    tf_t f;
    store_key_t k[4], who;
    char secret[4][STORE_KEY_SECRET_MAX + 1];
    tf_init(&f, "keypick");
    int64_t acme = tf_tenant(&f, "acme");
    for (int i = 0; i < 4; i++) {
        int64_t tenant = i % 2 ? acme : STORE_TENANT_DEFAULT;
        store_role_t role = i == 3 ? STORE_ROLE_ADMIN : STORE_ROLE_TENANT;
        ASSERT_RC(tf_key(&f, tenant, role, "", &k[i], secret[i]), RC_OK, &f.err);
    }
    ASSERT_EQ(store_n_active_keys(f.s), 4);
    for (int i = 0; i < 4; i++) {
        ASSERT(strcmp(secret[i], secret[(i + 1) % 4]) != 0);
        ASSERT(auth(&f, secret[i], &who));
        ASSERT_STREQ(who.id, k[i].id);
        ASSERT_EQ(who.tenant_id, k[i].tenant_id);
        ASSERT_EQ(who.role, k[i].role);
    }
    ASSERT_STREQ(store_role_str(who.role), "admin");
    ASSERT_STREQ(store_role_str(STORE_ROLE_TENANT), "tenant");
    tf_end(&f);
}

/* Many changes in flight at once: each reserved its memory slot at submit. */
TEST(many_changes_in_flight)
{
    tf_t f;
    got_t tg[12], kg[20];
    tf_init(&f, "inflight");
    memset(tg, 0, sizeof tg);
    memset(kg, 0, sizeof kg);
    for (int i = 0; i < 12; i++) {
        char name[16];
        snprintf(name, sizeof name, "t%02d", i);
        store_tenant_t t = tenant_spec(name, -1, -1, -1, 1);
        store_tenant_put(f.s, &t, true, on_tenant, &tg[i]);
    }
    for (int i = 0; i < 20; i++)
        store_key_add(f.s, STORE_TENANT_DEFAULT, STORE_ROLE_TENANT, "", on_key, &kg[i]);
    ASSERT_EQ(store_n_tasks(f.s), 32);
    tq_run(&f.q);
    ASSERT_EQ(store_n_tasks(f.s), 0);
    for (int i = 0; i < 12; i++)
        ASSERT_RC(tg[i].rc, RC_OK, &tg[i].err);
    for (int i = 0; i < 20; i++) {
        ASSERT_RC(kg[i].rc, RC_OK, &kg[i].err);
        ASSERT(auth(&f, kg[i].secret, NULL));
    }
    ASSERT_EQ(store_n_active_keys(f.s), 20);
    store_tenant_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_tenants(f.s, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 13);
    ASSERT_STREQ(rows[12].name, "t11");
    free(rows);
    tf_end(&f);
}

TEST(key_add_refusals)
{
    tf_t f;
    char label[80];
    tf_init(&f, "keyrefuse");
    ASSERT_RC(tf_key(&f, 99, STORE_ROLE_TENANT, "", NULL, NULL), RC_NOT_FOUND, &f.err);
    memset(label, 'x', 65);
    label[65] = '\0';
    ASSERT_RC(tf_key(&f, STORE_TENANT_DEFAULT, STORE_ROLE_TENANT, label, NULL, NULL), RC_INVALID,
              &f.err);
    ASSERT_RC(tf_key(&f, STORE_TENANT_DEFAULT, STORE_ROLE_TENANT, "tab\there", NULL, NULL),
              RC_INVALID, &f.err);
    ASSERT_RC(tf_key(&f, STORE_TENANT_DEFAULT, STORE_ROLE_TENANT, "caf\xc3\xa9", NULL, NULL),
              RC_INVALID, &f.err);
    ASSERT_RC(tf_key(&f, STORE_TENANT_DEFAULT, (store_role_t)7, "", NULL, NULL), RC_INVALID,
              &f.err);
    ASSERT_EQ(store_n_active_keys(f.s), 0);
    label[64] = '\0'; /* 64 printable chars: the longest label */
    store_key_t k;
    ASSERT_RC(tf_key(&f, STORE_TENANT_DEFAULT, STORE_ROLE_ADMIN, label, &k, NULL), RC_OK, &f.err);
    ASSERT_STREQ(k.label, label);
    ASSERT_EQ(k.role, STORE_ROLE_ADMIN);
    ASSERT_EQ(store_n_active_keys(f.s), 1);
    tf_end(&f);
}

TEST(revoke_is_immediate_and_persists)
{
    tf_t f;
    store_key_t k, keep, r, r2;
    char secret[STORE_KEY_SECRET_MAX + 1], other[STORE_KEY_SECRET_MAX + 1];
    tf_init(&f, "revoke");
    ASSERT_RC(tf_key(&f, STORE_TENANT_DEFAULT, STORE_ROLE_ADMIN, "old", &k, secret), RC_OK,
              &f.err);
    ASSERT_RC(tf_key(&f, STORE_TENANT_DEFAULT, STORE_ROLE_TENANT, "new", &keep, other), RC_OK,
              &f.err);
    ASSERT(auth(&f, secret, NULL));
    got_t g = {0};
    store_key_revoke(f.s, k.id, on_key, &g);
    /* In force before its write has run. */
    ASSERT_EQ(g.n, 0);
    ASSERT(!auth(&f, secret, NULL));
    ASSERT(auth(&f, other, NULL));
    ASSERT_EQ(store_n_active_keys(f.s), 1);
    ASSERT_RC(tf_wait(&f, &g), RC_OK, &f.err);
    r = g.k;
    ASSERT_STREQ(r.id, k.id);
    ASSERT(r.revoked >= k.created);
    ASSERT_STREQ(r.label, "old");
    ASSERT_EQ(r.role, STORE_ROLE_ADMIN);
    /* Again: RC_OK, unchanged. Unknown ids: RC_NOT_FOUND. */
    ASSERT_RC(tf_revoke(&f, k.id, &r2), RC_OK, &f.err);
    ASSERT_EQ(r2.revoked, r.revoked);
    ASSERT_RC(tf_revoke(&f, "000000000000", NULL), RC_NOT_FOUND, &f.err);
    ASSERT_RC(tf_revoke(&f, "short", NULL), RC_NOT_FOUND, &f.err);
    ASSERT_RC(tf_revoke(&f, "", NULL), RC_NOT_FOUND, &f.err);
    tf_reopen(&f);
    ASSERT(!auth(&f, secret, NULL));
    ASSERT(auth(&f, other, NULL));
    ASSERT_EQ(store_n_active_keys(f.s), 1);
    store_key_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_keys(f.s, 0, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(rows[0].id, k.id);
    ASSERT_EQ(rows[0].revoked, r.revoked);
    ASSERT_STREQ(rows[1].id, keep.id);
    ASSERT_EQ(rows[1].revoked, 0);
    free(rows);
    tf_end(&f);
}

TEST(keys_listed_oldest_first_by_tenant)
{
    tf_t f;
    store_key_t k[5];
    tf_init(&f, "keylist");
    int64_t acme = tf_tenant(&f, "acme");
    for (int i = 0; i < 5; i++) {
        char label[16];
        snprintf(label, sizeof label, "k%d", i);
        ASSERT_RC(tf_key(&f, i % 2 ? acme : STORE_TENANT_DEFAULT, STORE_ROLE_TENANT, label,
                         &k[i], NULL),
                  RC_OK, &f.err);
    }
    store_key_t *rows = NULL;
    size_t n = 0;
    ASSERT_RC(store_keys(f.s, 0, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 5);
    for (int i = 0; i < 5; i++) {
        ASSERT_STREQ(rows[i].id, k[i].id); /* same second: insertion order */
        ASSERT_STREQ(rows[i].label, k[i].label);
        ASSERT_EQ(rows[i].tenant_id, k[i].tenant_id);
    }
    free(rows);
    ASSERT_RC(store_keys(f.s, acme, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(rows[0].id, k[1].id);
    ASSERT_STREQ(rows[1].id, k[3].id);
    free(rows);
    ASSERT_RC(store_keys(f.s, 77, &rows, &n, &f.err), RC_OK, &f.err);
    ASSERT_EQ(n, 0);
    free(rows);
    tf_end(&f);
}

TEST(tables_reload_after_reopen)
{
    tf_t f;
    store_key_t k, who;
    store_tenant_t t = tenant_spec("acme", 2, 50, 4096, 3), got;
    char secret[STORE_KEY_SECRET_MAX + 1];
    tf_init(&f, "reload");
    ASSERT_RC(tf_put(&f, &t, true, &t), RC_OK, &f.err);
    ASSERT_RC(tf_key(&f, t.id, STORE_ROLE_ADMIN, "ops", &k, secret), RC_OK, &f.err);
    tf_close(&f);
    f.p.base = NULL; /* as the tenant and key commands open it */
    tf_open(&f);
    ASSERT_RC(store_tenant_by_name(f.s, "acme", &got), RC_OK, NULL);
    ASSERT_EQ(got.id, t.id);
    ASSERT_EQ(got.created, t.created);
    ASSERT_EQ(got.max_concurrent, 2);
    ASSERT_EQ(got.tokens_per_min, 50);
    ASSERT_EQ(got.max_stored_bytes, 4096);
    ASSERT_NEAR(got.share, 3, 0);
    ASSERT_EQ(store_n_active_keys(f.s), 1);
    ASSERT(auth(&f, secret, &who));
    ASSERT_STREQ(who.id, k.id);
    ASSERT_EQ(who.tenant_id, t.id);
    ASSERT_EQ(who.role, STORE_ROLE_ADMIN);
    ASSERT_STREQ(who.label, "ops");
    ASSERT_EQ(who.created, k.created);
    tf_end(&f);
}

TEST(index_never_holds_the_secret)
{
    tf_t f;
    store_key_t k;
    char secret[STORE_KEY_SECRET_MAX + 1], hex[65];
    uint8_t d[32];
    tf_init(&f, "nosecret");
    ASSERT_RC(tf_key(&f, STORE_TENANT_DEFAULT, STORE_ROLE_TENANT, "", &k, secret), RC_OK,
              &f.err);
    core_sha256_t c;
    core_sha256_init(&c);
    core_sha256_update(&c, secret, strlen(secret));
    core_sha256_final(&c, d);
    core_sha256_hex(d, hex);
    const char *random_part = secret + 4 + STORE_KEY_ID_LEN + 1;
    /* While open (the row is in the WAL) and after close (checkpointed into the db). */
    for (int pass = 0; pass < 2; pass++) {
        ASSERT(index_has(&f, hex)); /* the scan sees what was written */
        ASSERT(index_has(&f, k.id));
        ASSERT(!index_has(&f, secret));
        ASSERT(!index_has(&f, random_part));
        if (pass == 0)
            tf_close(&f);
    }
    tf_end(&f);
}

/* ---- published names and stored bytes ---- */

TEST(publish_rules)
{
    tf_t f;
    store_adapter_t row;
    tf_init(&f, "publish");
    int64_t a = tf_tenant(&f, "alice"), b = tf_tenant(&f, "bob");
    db_adapter(&f, a, "m", 1, 100, "ready");
    db_adapter(&f, a, "m", 2, 100, "ready");
    db_adapter(&f, a, "gone", 1, 100, "deleted");
    /* Only names the tenant has a live version of. */
    ASSERT_RC(tf_publish(&f, b, "m", true, NULL), RC_NOT_FOUND, &f.err);
    ASSERT_STREQ(f.err.msg, "adapter 'm' not found");
    ASSERT_RC(tf_publish(&f, a, "gone", true, NULL), RC_NOT_FOUND, &f.err);
    ASSERT_RC(tf_publish(&f, a, "bad name", true, NULL), RC_INVALID, &f.err);
    ASSERT_EQ(db_publisher(&f, "m"), 0);
    ASSERT_RC(tf_publish(&f, a, "m", true, &row), RC_OK, &f.err);
    ASSERT_STREQ(row.name, "m");
    ASSERT_EQ(row.version, 2);
    ASSERT_EQ(row.tenant_id, a);
    ASSERT(row.published);
    ASSERT_EQ(db_publisher(&f, "m"), a);
    ASSERT_RC(tf_publish(&f, a, "m", true, &row), RC_OK, &f.err); /* idempotent */
    ASSERT_EQ(db_publisher(&f, "m"), a);
    /* A second publisher of the name is refused; bob cannot withdraw alice's. */
    db_adapter(&f, b, "m", 1, 100, "ready");
    ASSERT_RC(tf_publish(&f, b, "m", true, NULL), RC_EXISTS, &f.err);
    ASSERT_STREQ(f.err.msg, "'m' is already published by another tenant");
    ASSERT_RC(tf_publish(&f, b, "m", false, NULL), RC_NOT_FOUND, &f.err);
    ASSERT_EQ(db_publisher(&f, "m"), a);
    /* Withdrawn, then bob may publish his. */
    ASSERT_RC(tf_publish(&f, a, "m", false, &row), RC_OK, &f.err);
    ASSERT_STREQ(row.name, "m");
    ASSERT(!row.published);
    ASSERT_EQ(db_publisher(&f, "m"), 0);
    ASSERT_RC(tf_publish(&f, a, "m", false, NULL), RC_NOT_FOUND, &f.err);
    ASSERT_RC(tf_publish(&f, b, "m", true, &row), RC_OK, &f.err);
    ASSERT_EQ(row.tenant_id, b);
    tf_reopen(&f);
    ASSERT_EQ(db_publisher(&f, "m"), b);
    tf_end(&f);
}

TEST(tenant_bytes_sums_live_versions)
{
    tf_t f;
    int64_t bytes = -1;
    tf_init(&f, "bytes");
    int64_t a = tf_tenant(&f, "alice"), b = tf_tenant(&f, "bob");
    ASSERT_RC(store_tenant_bytes(f.s, a, &bytes, &f.err), RC_OK, &f.err);
    ASSERT_EQ(bytes, 0);
    db_adapter(&f, a, "x", 1, 100, "ready");
    db_adapter(&f, a, "x", 2, 200, "broken");
    db_adapter(&f, a, "y", 1, 400, "deleted");
    db_adapter(&f, b, "x", 1, 800, "ready");
    ASSERT_RC(store_tenant_bytes(f.s, a, &bytes, &f.err), RC_OK, &f.err);
    ASSERT_EQ(bytes, 300);
    ASSERT_RC(store_tenant_bytes(f.s, b, &bytes, &f.err), RC_OK, &f.err);
    ASSERT_EQ(bytes, 800);
    ASSERT_RC(store_tenant_bytes(f.s, STORE_TENANT_DEFAULT, &bytes, &f.err), RC_OK, &f.err);
    ASSERT_EQ(bytes, 0);
    ASSERT_RC(store_tenant_bytes(f.s, 99, &bytes, &f.err), RC_NOT_FOUND, &f.err);
    tf_end(&f);
}

/* ---- failures ---- */

TEST(writes_refused_after_fsync_failure)
{
    tf_t f;
    store_key_t k;
    char secret[STORE_KEY_SECRET_MAX + 1];
    tf_init(&f, "unavailable");
    ASSERT_RC(tf_key(&f, STORE_TENANT_DEFAULT, STORE_ROLE_ADMIN, "", &k, secret), RC_OK, &f.err);
    db_adapter(&f, STORE_TENANT_DEFAULT, "m", 1, 100, "ready");
    f.s->writes_failed = true; /* as after a failed fsync */
    store_tenant_t t = tenant_spec("acme", -1, -1, -1, 1);
    ASSERT_RC(tf_put(&f, &t, true, NULL), RC_UNAVAILABLE, &f.err);
    ASSERT_RC(tf_key(&f, STORE_TENANT_DEFAULT, STORE_ROLE_TENANT, "", NULL, NULL), RC_UNAVAILABLE,
              &f.err);
    ASSERT_RC(tf_publish(&f, STORE_TENANT_DEFAULT, "m", true, NULL), RC_UNAVAILABLE, &f.err);
    /* A revoke still takes the key out of use (fail-safe). */
    ASSERT_RC(tf_revoke(&f, k.id, NULL), RC_UNAVAILABLE, &f.err);
    ASSERT(!auth(&f, secret, NULL));
    ASSERT_RC(store_tenant_by_name(f.s, "acme", &t), RC_NOT_FOUND, NULL);
    tf_end(&f);
}

/* Every write through sqlite passes the "sql" failpoint: with all of them failing, nothing
 * changes in the index or in memory and no secret is handed out. The failpoint settings
 * are read once per process at the first failpoint, so the setup runs in one child and
 * the failing writes in a second one that sets the environment first. */
typedef struct {
    char id[STORE_KEY_ID_LEN + 1];
    char secret[STORE_KEY_SECRET_MAX + 1];
    int64_t tenant;
} fp_setup_t;

static void failpoint_setup(tf_t *f, int fd, const fp_setup_t *unused)
{
    (void)unused;
    fp_setup_t su = {0};
    store_key_t k;
    nftw(f->root, tf_rm_one, 16, FTW_DEPTH | FTW_PHYS);
    ASSERT_EQ(stw_mkdirs(f->root), 0);
    tf_open(f);
    su.tenant = tf_tenant(f, "acme");
    ASSERT_RC(tf_key(f, su.tenant, STORE_ROLE_TENANT, "", &k, su.secret), RC_OK, &f->err);
    memcpy(su.id, k.id, sizeof su.id);
    tf_close(f);
    ASSERT_EQ(write(fd, &su, sizeof su), (ssize_t)sizeof su);
    _exit(0);
}

static void failpoint_writes(tf_t *f, int fd, const fp_setup_t *su)
{
    (void)fd;
    setenv("ADAPTERD_FAILPOINT_EIO", "1+", 1);
    tf_open(f);
    ASSERT(auth(f, su->secret, NULL));
    store_tenant_t t = tenant_spec("beta", -1, -1, -1, 1);
    ASSERT_RC(tf_put(f, &t, true, NULL), RC_IO, &f->err);
    ASSERT_RC(store_tenant_by_name(f->s, "beta", &t), RC_NOT_FOUND, NULL);
    t = tenant_spec("acme", 9, -1, -1, 1);
    ASSERT_RC(tf_put(f, &t, false, NULL), RC_IO, &f->err);
    ASSERT_RC(store_tenant_by_name(f->s, "acme", &t), RC_OK, NULL);
    ASSERT_EQ(t.max_concurrent, -1);
    got_t g = {0};
    store_key_add(f->s, su->tenant, STORE_ROLE_TENANT, "", on_key, &g);
    ASSERT_RC(tf_wait(f, &g), RC_IO, &g.err);
    ASSERT_EQ(g.secret[0], '\0');
    ASSERT_EQ(store_n_active_keys(f->s), 1);
    ASSERT_RC(tf_revoke(f, su->id, NULL), RC_IO, &f->err);
    ASSERT(!auth(f, su->secret, NULL)); /* refused until restart */
    store_adapter_t row;
    ASSERT_RC(tf_publish(f, su->tenant, "m", true, &row), RC_IO, &f->err);
    tf_close(f);
    unsetenv("ADAPTERD_FAILPOINT_EIO");
    tf_open(f); /* the failed revoke was not written: the key works again after restart */
    ASSERT(auth(f, su->secret, NULL));
    ASSERT_EQ(store_n_active_keys(f->s), 1);
    tf_close(f);
    _exit(0);
}

static void run_child(void (*fn)(tf_t *, int, const fp_setup_t *), tf_t *f, int fd,
                      const fp_setup_t *su)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        fn(f, fd, su);
    int st = 0;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
    ASSERT(WIFEXITED(st));
    ASSERT_EQ(WEXITSTATUS(st), 0);
}

TEST(failpoint_sql_errors_change_nothing)
{
    tf_t f;
    fp_setup_t su = {0};
    int fds[2];
    tf_params(&f, "failpoint");
    ASSERT_EQ(pipe(fds), 0);
    run_child(failpoint_setup, &f, fds[1], NULL);
    ASSERT_EQ(read(fds[0], &su, sizeof su), (ssize_t)sizeof su);
    close(fds[0]);
    close(fds[1]);
    ASSERT_EQ(strlen(su.id), STORE_KEY_ID_LEN);
    run_child(failpoint_writes, &f, -1, &su);
    nftw(f.root, tf_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}
