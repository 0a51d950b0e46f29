/* store_fixture.h - shared by the store unit tests (test_store.c, test_store_cache.c;
 * header-only, test code): scratch folders, tiny PEFT adapter folders, a store fixture with
 * a synchronous or an asynchronous executor, and helpers for the store's callbacks.
 *
 * Each TEST works in its own folder tests/tmp/test_store_<pid>_<name>/ (DATA_DIR is its
 * data/ sub-folder, PEFT fixture folders go under adapters/) and removes it at the end.
 * The base is a hand-filled 1-layer config (dim 8): the store needs only its config and
 * fingerprint. Every fixture adapter is rank 2 on q_proj and v_proj (256 bytes in memory);
 * its lora_A starts with the seed, so a loaded adapter tells which file it came from.
 *
 * The asynchronous executor (aex_*) stands in for uv_queue_work: submit queues the task,
 * a worker thread runs work(), and the test thread runs done() when it pumps. */
#ifndef TESTS_UNIT_STORE_FIXTURE_H
#define TESTS_UNIT_STORE_FIXTURE_H

#include <dirent.h>
#include <ftw.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/lora.h"
#include "core/sha256.h"
#include "store/store.h"
#include "tests/unit/harness.h"
#include "tests/unit/st_write.h"

#define DIM 8
#define RANK 2
#define MEM_BYTES 256 /* q and v: A (2x8) + B (8x2) f32 each */

/* ---- files ---- */

static inline int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    return remove(p);
}

static inline void rm_rf(const char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static inline bool path_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Entries of dir besides . and .. (-1 when it cannot be opened). */
static inline int count_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        n += strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
    closedir(d);
    return n;
}

static inline char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        HARNESS_FAIL("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    ASSERT(buf != NULL);
    ASSERT_EQ(fread(buf, 1, (size_t)n, f), n);
    fclose(f);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

static inline bool same_bytes(const char *a, const char *b)
{
    size_t na, nb;
    char *x = read_all(a, &na), *y = read_all(b, &nb);
    bool same = na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

static inline void file_sha(const char *path, char hex[65])
{
    core_err_t err = {{0}};
    ASSERT_RC(core_sha256_file(path, hex, &err), RC_OK, &err);
}

/* ---- the asynchronous executor ---- */

#define AEX_MAX 256
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    store_task_t *todo[AEX_MAX], *ready[AEX_MAX];
    int n_todo, n_ready;
    int n_submitted, n_done;
    void (*first_work)(store_task_t *); /* the work() of the first task submitted */
    int n_work, n_first_work;           /* work() calls, and those of first_work */
    bool stop;
    pthread_t th;
} aex_t;

static inline void aex_submit(void *ctx, store_task_t *t)
{
    aex_t *x = ctx;
    pthread_mutex_lock(&x->mu);
    ASSERT(x->n_todo < AEX_MAX);
    x->todo[x->n_todo++] = t;
    x->n_submitted++;
    if (!x->first_work)
        x->first_work = t->work;
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->mu);
}

static inline void *aex_main(void *arg)
{
    aex_t *x = arg;
    pthread_mutex_lock(&x->mu);
    for (;;) {
        while (!x->stop && x->n_todo == 0)
            pthread_cond_wait(&x->cv, &x->mu);
        if (x->stop)
            break;
        store_task_t *t = x->todo[0];
        memmove(x->todo, x->todo + 1, (size_t)--x->n_todo * sizeof *x->todo);
        bool first = t->work == x->first_work;
        pthread_mutex_unlock(&x->mu);
        t->work(t);
        pthread_mutex_lock(&x->mu);
        x->n_work++;
        x->n_first_work += first;
        x->ready[x->n_ready++] = t;
        pthread_cond_broadcast(&x->cv);
    }
    pthread_mutex_unlock(&x->mu);
    return NULL;
}

static inline aex_t *aex_new(void)
{
    aex_t *x = calloc(1, sizeof *x);
    ASSERT(x != NULL);
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->cv, NULL);
    ASSERT_EQ(pthread_create(&x->th, NULL, aex_main, x), 0);
    return x;
}

static inline void aex_free(aex_t *x)
{
    pthread_mutex_lock(&x->mu);
    x->stop = true;
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->mu);
    pthread_join(x->th, NULL);
    ASSERT_EQ(x->n_todo + x->n_ready, 0);
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->cv);
    free(x);
}

/* Run done() of the next finished task on this thread; fails after 5 s without one. */
static inline void aex_pump_one(aex_t *x)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 5;
    pthread_mutex_lock(&x->mu);
    while (x->n_ready == 0)
        if (pthread_cond_timedwait(&x->cv, &x->mu, &dl) != 0)
            HARNESS_FAIL("executor: no task finished within 5 s");
    store_task_t *t = x->ready[0];
    memmove(x->ready, x->ready + 1, (size_t)--x->n_ready * sizeof *x->ready);
    pthread_mutex_unlock(&x->mu);
    t->done(t); /* frees t; may submit more */
    x->n_done++;
}

/* Until every task submitted so far (and any they submit) is done. */
static inline void aex_pump_all(aex_t *x)
{
    for (;;) {
        pthread_mutex_lock(&x->mu);
        bool idle = x->n_done == x->n_submitted;
        pthread_mutex_unlock(&x->mu);
        if (idle)
            return;
        aex_pump_one(x);
    }
}

static inline int aex_get(aex_t *x, const int *field)
{
    pthread_mutex_lock(&x->mu);
    int v = *field;
    pthread_mutex_unlock(&x->mu);
    return v;
}

/* ---- fixture ---- */

static inline core_model_t test_base(void)
{
    core_model_t m;
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

/* A PEFT folder, LoRA on q_proj and v_proj of layer 0; lora_A starts with seed. a_cols
 * other than DIM makes a folder whose shapes do not fit the base; meta is the safetensors
 * header's __metadata__ (a longer one makes a larger file of the same adapter). */
static inline void write_adapter_meta(const char *dir, float seed, int a_cols, const char *meta)
{
    static float a[RANK * (DIM + 1)], b[DIM * RANK];
    char path[1024];
    for (int i = 0; i < RANK * a_cols; i++)
        a[i] = seed + 0.01f * (float)i;
    for (int i = 0; i < DIM * RANK; i++)
        b[i] = seed - 0.02f * (float)i;
    size_t na = (size_t)(RANK * a_cols) * sizeof(float);
    stw_tensor_t t[4] = {
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "F32", 2,
         {RANK, a_cols}, a, na},
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", "F32", 2,
         {DIM, RANK}, b, sizeof b},
        {"base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight", "F32", 2,
         {RANK, a_cols}, a, na},
        {"base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight", "F32", 2,
         {DIM, RANK}, b, sizeof b},
    };
    ASSERT_EQ(stw_mkdirs(dir), 0);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    ASSERT_EQ(stw_write_text(path, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4,"
                                   " \"target_modules\": [\"q_proj\", \"v_proj\"],"
                                   " \"task_type\": \"CAUSAL_LM\", \"bias\": \"none\"}"),
              0);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    ASSERT_EQ(stw_write(path, t, 4, meta), 0);
}

static inline void write_adapter_shape(const char *dir, float seed, int a_cols)
{
    write_adapter_meta(dir, seed, a_cols, "{\"format\":\"pt\"}");
}

static inline void write_adapter(const char *dir, float seed)
{
    write_adapter_shape(dir, seed, DIM);
}

static inline float lora_seed(const core_lora_t *l)
{
    return core_lora_mod(l, 0, CORE_MOD_Q)->A[0];
}

typedef struct {
    char root[256], data[320], ads[320];
    core_model_t base;
    store_params_t p;
    store_t *s;
    int64_t tenant; /* whom the helpers act for: STORE_TENANT_DEFAULT unless a test changes it */
    aex_t *x; /* NULL: the synchronous executor */
    core_err_t err;
} fx_t;

static inline void fx_init(fx_t *f, const char *name)
{
    memset(f, 0, sizeof *f);
    snprintf(f->root, sizeof f->root, "tests/tmp/test_store_%d_%s", (int)getpid(), name);
    rm_rf(f->root);
    ASSERT_EQ(stw_mkdirs(f->root), 0);
    snprintf(f->data, sizeof f->data, "%s/data", f->root);
    snprintf(f->ads, sizeof f->ads, "%s/adapters", f->root);
    f->base = test_base();
    f->p = store_default_params();
    f->p.data_dir = f->data;
    f->p.base = &f->base;
    f->p.lock = true;
    f->tenant = STORE_TENANT_DEFAULT;
}

static inline void fx_async(fx_t *f)
{
    f->x = aex_new();
    f->p.exec = (store_exec_t){.ctx = f->x, .submit = aex_submit};
}

static inline void fx_open(fx_t *f)
{
    ASSERT_RC(store_open(&f->p, &f->s, &f->err), RC_OK, &f->err);
    ASSERT(f->s != NULL);
    store_tick(f->s, 0); /* as the server's timer would */
}

static inline void fx_close(fx_t *f)
{
    if (f->x)
        aex_pump_all(f->x);
    ASSERT_EQ(store_n_tasks(f->s), 0);
    store_close(f->s);
    f->s = NULL;
}

static inline void fx_reopen(fx_t *f)
{
    fx_close(f);
    fx_open(f);
}

static inline void fx_end(fx_t *f)
{
    if (f->s)
        fx_close(f);
    if (f->x)
        aex_free(f->x);
    f->x = NULL;
    rm_rf(f->root);
}

static inline void fx_path(const fx_t *f, char *buf, size_t cap, const char *sub, const char *name)
{
    snprintf(buf, cap, "%s/%s/%s", f->data, sub, name);
}

/* ads/<folder>/<file> */
static inline void fx_adfile(const fx_t *f, char *buf, size_t cap, const char *folder, const char *file)
{
    snprintf(buf, cap, "%s/%s/%s", f->ads, folder, file);
}

static inline store_adapter_t fx_import(fx_t *f, const char *name, float seed)
{
    char dir[400];
    store_adapter_t row;
    snprintf(dir, sizeof dir, "%s/%s", f->ads, name);
    write_adapter(dir, seed);
    ASSERT_RC(store_import(f->s, f->tenant, dir, name, NULL, NULL, &row, &f->err), RC_OK, &f->err);
    return row;
}

/* ---- callbacks ---- */

typedef struct {
    int n;
    rc_t rc;
    bool has_row;
    store_adapter_t row;
    core_err_t err;
    store_t *s;            /* set: resolve probe after the change (the hot swap) */
    const char *probe;
    int probe_version;
} done_t;

static inline void on_done(void *user, rc_t rc, const store_adapter_t *row, const core_err_t *err)
{
    done_t *d = user;
    store_adapter_t r;
    core_err_t e;
    d->n++;
    d->rc = rc;
    d->has_row = row != NULL;
    if (row)
        d->row = *row;
    if (err)
        d->err = *err;
    if (d->s && store_resolve(d->s, STORE_TENANT_DEFAULT, d->probe, &r, &e) == RC_OK)
        d->probe_version = r.version;
}

/* The outcome of a change: with the synchronous executor cb has run already. */
static inline rc_t fx_done(fx_t *f, done_t *d)
{
    while (f->x && d->n == 0)
        aex_pump_one(f->x);
    ASSERT_EQ(d->n, 1);
    ASSERT_EQ(d->has_row, d->rc == RC_OK);
    f->err = d->err;
    return d->rc;
}

static inline rc_t fx_delete(fx_t *f, const char *spec, store_adapter_t *row)
{
    done_t d = {0};
    store_delete(f->s, f->tenant, spec, on_done, &d);
    rc_t rc = fx_done(f, &d);
    if (row)
        *row = d.row;
    return rc;
}

static inline rc_t fx_alias(fx_t *f, const char *alias, const char *target, store_adapter_t *row)
{
    done_t d = {0};
    store_alias_put(f->s, f->tenant, alias, target, on_done, &d);
    rc_t rc = fx_done(f, &d);
    if (row)
        *row = d.row;
    return rc;
}

static inline rc_t fx_alias_del(fx_t *f, const char *alias)
{
    done_t d = {0};
    store_alias_delete(f->s, f->tenant, alias, on_done, &d);
    return fx_done(f, &d);
}

static inline rc_t fx_pin(fx_t *f, const char *spec, bool pin, store_adapter_t *row)
{
    done_t d = {0};
    store_pin(f->s, f->tenant, spec, pin, on_done, &d);
    rc_t rc = fx_done(f, &d);
    if (row)
        *row = d.row;
    return rc;
}

typedef struct {
    int n;
    rc_t rc;
    core_err_t err;
} ready_t;

static inline void on_ready(void *user, rc_t rc, const core_err_t *err)
{
    ready_t *r = user;
    r->n++;
    r->rc = rc;
    r->err = err ? *err : (core_err_t){{0}};
}

/* One acquire that must answer now (resident, or loaded by the synchronous executor). */
static inline rc_t fx_acq(fx_t *f, const char *spec, core_lora_t **l, store_adapter_t *row)
{
    store_want_t w;
    store_wait_t *wt = NULL;
    ready_t r = {0};
    memset(&w, 0, sizeof w);
    snprintf(w.spec, sizeof w.spec, "%s", spec);
    rc_t rc = store_acquire(f->s, f->tenant, &w, 1, on_ready, &r, &wt, &f->err);
    ASSERT(wt == NULL);
    ASSERT_EQ(r.n, 0);
    ASSERT_EQ(w.lora != NULL, rc == RC_OK);
    *l = w.lora;
    if (row)
        *row = w.row;
    return rc;
}

/* An acquire that must wait (asynchronous executor, or no room). */
static inline void fx_acq_wait(fx_t *f, store_want_t *w, const char *spec, ready_t *r,
                        store_wait_t **wt)
{
    memset(w, 0, sizeof *w);
    snprintf(w->spec, sizeof w->spec, "%s", spec);
    ASSERT_RC(store_acquire(f->s, f->tenant, w, 1, on_ready, r, wt, &f->err), RC_OK, &f->err);
    ASSERT(*wt != NULL);
    ASSERT_EQ(r->n, 0);
}

/* A resident adapter through the asynchronous executor. */
static inline core_lora_t *fx_acq_async(fx_t *f, const char *spec)
{
    store_want_t w;
    ready_t r = {0};
    store_wait_t *wt = NULL;
    fx_acq_wait(f, &w, spec, &r, &wt);
    while (r.n == 0)
        aex_pump_one(f->x);
    ASSERT_RC(r.rc, RC_OK, &r.err);
    ASSERT(w.lora != NULL);
    return w.lora;
}

static inline int refcount(const core_lora_t *l)
{
    return __atomic_load_n(&l->refcount, __ATOMIC_ACQUIRE);
}

static inline store_runtime_t fx_rt(fx_t *f, const char *spec)
{
    store_adapter_t row;
    store_runtime_t rt;
    ASSERT_RC(store_resolve(f->s, f->tenant, spec, &row, &f->err), RC_OK, &f->err);
    store_runtime(f->s, row.id, &rt);
    return rt;
}

static inline store_stats_t fx_stats(fx_t *f)
{
    store_stats_t st;
    store_stats(f->s, &st);
    return st;
}

/* Overwrite one byte of a file in place. */
static inline void flip_byte(const char *path, long off)
{
    FILE *fp = fopen(path, "r+b");
    ASSERT(fp != NULL);
    ASSERT_EQ(fseek(fp, off, SEEK_SET), 0);
    int c = fgetc(fp);
    ASSERT(c != EOF);
    ASSERT_EQ(fseek(fp, off, SEEK_SET), 0);
    fputc(c ^ 0x5a, fp);
    ASSERT_EQ(fclose(fp), 0);
}


/* Streams the two files of ads/<folder> in pieces (either may be left out). */
static inline rc_t fx_upload(fx_t *f, const char *name, const char *folder, bool cfg, bool wts,
                      store_adapter_t *row)
{
    char path[600];
    store_upload_t *u = NULL;
    done_t d = {0};
    ASSERT_RC(store_upload_new(f->s, f->tenant, name, &u, &f->err), RC_OK, &f->err);
    for (int part = 0; part < 2; part++) {
        if (!(part == STORE_PART_CONFIG ? cfg : wts))
            continue;
        size_t len;
        fx_adfile(f, path, sizeof path, folder,
                  part == STORE_PART_CONFIG ? "adapter_config.json" : "adapter_model.safetensors");
        char *buf = read_all(path, &len);
        size_t piece = part == STORE_PART_CONFIG ? 7 : 13;
        for (size_t off = 0; off < len; off += piece) {
            size_t k = len - off < piece ? len - off : piece;
            ASSERT_RC(store_upload_write(u, (store_part_t)part, buf + off, k, &f->err), RC_OK,
                      &f->err);
        }
        free(buf);
    }
    store_upload_commit(u, on_done, &d);
    rc_t rc = fx_done(f, &d);
    if (row)
        *row = d.row;
    return rc;
}

static inline void fx_tmp_empty(fx_t *f)
{
    char path[600];
    fx_path(f, path, sizeof path, "tmp", "");
    ASSERT_EQ(count_dir(path), 0);
}

/* ---- tenants ---- */

typedef struct {
    int n;
    rc_t rc;
    store_tenant_t t;
    core_err_t err;
} tdone_t;

static inline void on_tenant(void *user, rc_t rc, const store_tenant_t *t, const core_err_t *err)
{
    tdone_t *d = user;
    d->n++;
    d->rc = rc;
    if (t)
        d->t = *t;
    if (err)
        d->err = *err;
}

/* A new tenant (quotas inherited); returns its id. */
static inline int64_t fx_tenant_new(fx_t *f, const char *name)
{
    tdone_t d = {0};
    store_tenant_t t = {.max_concurrent = STORE_QUOTA_INHERIT,
                        .tokens_per_min = STORE_QUOTA_INHERIT,
                        .max_stored_bytes = STORE_QUOTA_INHERIT,
                        .share = 1.0};
    snprintf(t.name, sizeof t.name, "%s", name);
    store_tenant_put(f->s, &t, true, on_tenant, &d);
    while (f->x && d.n == 0)
        aex_pump_one(f->x);
    ASSERT_EQ(d.n, 1);
    ASSERT_RC(d.rc, RC_OK, &d.err);
    ASSERT(d.t.id > STORE_TENANT_DEFAULT);
    return d.t.id;
}

static inline rc_t fx_publish(fx_t *f, const char *name, bool publish)
{
    done_t d = {0};
    store_publish(f->s, f->tenant, name, publish, on_done, &d);
    return fx_done(f, &d);
}

/* ---- budget tests: a, b, c with room for exactly two ---- */


/* a, b, c (and d) imported, then reopened with room for exactly two. */
static inline void fx_three(fx_t *f, const char *name, bool async)
{
    fx_init(f, name);
    if (async)
        fx_async(f);
    fx_open(f);
    store_adapter_t a = fx_import(f, "a", 0.5f);
    fx_import(f, "b", 1.0f);
    fx_import(f, "c", 1.5f);
    f->p.cache_budget_bytes = 2 * (uint64_t)a.mem_bytes;
    fx_reopen(f);
}

static inline void acq_release(fx_t *f, const char *spec)
{
    core_lora_t *l = NULL;
    ASSERT_RC(fx_acq(f, spec, &l, NULL), RC_OK, &f->err);
    core_lora_release(l);
}

#endif
