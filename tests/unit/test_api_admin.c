/* test_api_admin.c - the adapter admin API (api/admin.c, api/upload.c, the parameter
 * routes of api/api.c) against the real store in tests/tmp/api/: multipart uploads fed
 * through api_body_begin/data/end in small chunks (and whole through the route table),
 * every upload error status, list/show/versions, aliases (put, repoint, delete), delete
 * with an alias conflict, pin/unpin, the pending-job path with a queued executor (cancel
 * does not stop the change and end comes once), and vLLM's load/unload with the path
 * confinement. Most tests use a synchronous executor (store changes answer inside the
 * call); the fixture is api_fixture.h. */
#include <dirent.h>
#include <sys/stat.h>

#include "core/sha256.h"
#include "tests/unit/api_fixture.h"

#define BOUNDARY "----adapterd-test-7MA4YWxk"
#define MP_CTYPE "multipart/form-data; boundary=" BOUNDARY

/* ---- a queued executor: tasks run when the test says (the pending-job path) ---- */

static store_task_t *q_tasks[64];
static int q_n;

static void q_submit(void *ctx, store_task_t *t)
{
    (void)ctx;
    ASSERT(q_n < 64);
    q_tasks[q_n++] = t;
}

/* Runs queued tasks in order (work, then done) until none is left. */
static void q_run(void)
{
    while (q_n > 0) {
        store_task_t *t = q_tasks[0];
        memmove(q_tasks, q_tasks + 1, (size_t)(q_n - 1) * sizeof *q_tasks);
        q_n--;
        t->work(t);
        t->done(t);
    }
}

/* ---- fixture ---- */

typedef struct {
    uint64_t cache_budget, max_adapter;
    bool queued, local;
    uint64_t max_upload;
} admin_opts_t;

static char roots_dir[300];
static const char *roots[1] = {roots_dir};

static void admin_init(fx_t *f, const char *test, admin_opts_t o)
{
    store_params_t sp = store_default_params();
    if (o.cache_budget)
        sp.cache_budget_bytes = o.cache_budget;
    if (o.max_adapter)
        sp.max_adapter_bytes = o.max_adapter;
    if (o.queued)
        sp.exec = (store_exec_t){NULL, q_submit};
    q_n = 0;
    fx_init_sp(f, test, false, core_engine_default_params(), &sp);
    snprintf(roots_dir, sizeof roots_dir, "%s/roots", f->root);
    ASSERT_EQ(stw_mkdirs(roots_dir), 0);
    api_params_t p = {.model = &f->model,
                      .tok = f->tok,
                      .store = f->store,
                      .model_name = "tiny",
                      .max_upload_bytes = o.max_upload,
                      .allow_local_paths = o.local,
                      .adapter_roots = roots,
                      .n_adapter_roots = 1};
    api_free(f->api);
    f->api = api_new(&p);
    ASSERT(f->api != NULL);
}

static void admin_close(fx_t *f)
{
    char cmd[400];
    q_run();
    fx_close(f);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->root);
    ASSERT_EQ(system(cmd), 0);
}

static void resp_init(resp_t *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->rec.mu, NULL);
    pthread_cond_init(&r->rec.cv, NULL);
    r->sink = (api_sink_t){&r->rec, rec_begin, rec_write, rec_end};
}

/* Checks the response is one complete answer and parses a JSON body. */
static void resp_done(resp_t *r)
{
    ASSERT_EQ(r->rec.n_begin, 1);
    ASSERT_EQ(r->rec.n_end, 1);
    ASSERT_EQ(r->rec.n_misuse, 0);
    if (strcmp(r->rec.ctype, "application/json") == 0) {
        json_error_t jerr;
        r->json = json_loads(r->rec.body ? r->rec.body : "", 0, &jerr);
        if (!r->json)
            HARNESS_FAIL("response is not JSON: %s", r->rec.body);
    }
}

static const char *err_code(const resp_t *r)
{
    const char *code =
        json_string_value(json_object_get(json_object_get(r->json, "error"), "code"));
    return code ? code : "(none)";
}

static void expect_status(const resp_t *r, int status, const char *code)
{
    if (r->rec.status != status || (code && strcmp(err_code(r), code) != 0))
        HARNESS_FAIL("status %d code %s, want %d %s: %s", r->rec.status, err_code(r), status,
                     code ? code : "", r->rec.body ? r->rec.body : "");
}

/* ---- multipart bodies ---- */

typedef struct {
    char *buf;
    size_t len, cap;
} mbuf_t;

static void mb_add(mbuf_t *m, const void *p, size_t n)
{
    if (m->len + n + 1 > m->cap) {
        m->cap = (m->len + n + 1) * 2;
        m->buf = realloc(m->buf, m->cap);
    }
    memcpy(m->buf + m->len, p, n);
    m->len += n;
    m->buf[m->len] = '\0';
}

static void mb_str(mbuf_t *m, const char *s)
{
    mb_add(m, s, strlen(s));
}

static void mb_part(mbuf_t *m, const char *name, const void *data, size_t n)
{
    char head[300];
    snprintf(head, sizeof head,
             "--" BOUNDARY "\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s.bin\""
             "\r\nContent-Type: application/octet-stream\r\n\r\n",
             name, name);
    mb_str(m, head);
    mb_add(m, data, n);
    mb_str(m, "\r\n");
}

static void mb_close(mbuf_t *m)
{
    mb_str(m, "--" BOUNDARY "--\r\n");
}

static char *slurp(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    ASSERT(fp != NULL);
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = malloc((size_t)len + 1);
    ASSERT_EQ(fread(buf, 1, (size_t)len, fp), len);
    fclose(fp);
    *n = (size_t)len;
    return buf;
}

/* A PEFT folder under the fixture (rank r). OUT: the two files' bytes. */
typedef struct {
    char dir[400];
    char *cfg, *w;
    size_t n_cfg, n_w;
} files_t;

static void files_make(fx_t *f, const char *name, int r, files_t *out)
{
    char path[500];
    snprintf(out->dir, sizeof out->dir, "%s/src/%s", f->root, name);
    write_adapter_r(out->dir, r, 1.0f);
    snprintf(path, sizeof path, "%s/adapter_config.json", out->dir);
    out->cfg = slurp(path, &out->n_cfg);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", out->dir);
    out->w = slurp(path, &out->n_w);
}

static void files_free(files_t *fl)
{
    free(fl->cfg);
    free(fl->w);
}

/* The usual body: config, weights, optionally base_fingerprint, closed. */
static void mb_adapter(mbuf_t *m, const files_t *fl, const char *fingerprint)
{
    memset(m, 0, sizeof *m);
    mb_part(m, "config", fl->cfg, fl->n_cfg);
    mb_part(m, "weights", fl->w, fl->n_w);
    if (fingerprint)
        mb_part(m, "base_fingerprint", fingerprint, strlen(fingerprint));
    mb_close(m);
}

/* POST an upload through the streaming interface, chunk bytes at a time. Returns the
 * mode api_body_begin chose. A pending job (queued executor) is left in *job. */
static api_body_mode_t upload_start(fx_t *f, const char *path, const char *query, const char *ctype,
                                    const mbuf_t *m, size_t chunk, resp_t *r, api_job_t **job)
{
    resp_init(r);
    api_request_t req = {.method = "POST",
                         .path = path,
                         .query = query,
                         .body_len = m ? m->len : 0,
                         .content_type = ctype,
                         .request_id = "test"};
    api_body_t *b = NULL;
    size_t max = 0;
    *job = NULL;
    api_body_mode_t mode = api_body_begin(f->api, &req, &r->sink, &b, &max);
    if (mode != API_BODY_STREAM) {
        ASSERT(b == NULL);
        return mode;
    }
    ASSERT(b != NULL);
    ASSERT_EQ(r->rec.n_begin, 0); /* nothing answered before the body */
    for (size_t off = 0; m && off < m->len; off += chunk) {
        size_t n = m->len - off < chunk ? m->len - off : chunk;
        api_body_data(f->api, b, m->buf + off, n);
    }
    api_body_end(f->api, b, job);
    return mode;
}

static void upload(fx_t *f, const char *path, const char *query, const char *ctype, const mbuf_t *m,
                   size_t chunk, resp_t *r)
{
    api_job_t *job = NULL;
    api_body_mode_t mode = upload_start(f, path, query, ctype, m, chunk, r, &job);
    ASSERT(mode == API_BODY_STREAM || mode == API_BODY_ANSWERED);
    ASSERT(job == NULL); /* a synchronous executor answers inside end */
    resp_done(r);
}

/* Upload the fixture adapter files as name (query form); asserts 201. */
static void upload_ok(fx_t *f, const char *name, const files_t *fl, int want_version)
{
    char q[100];
    mbuf_t m;
    resp_t r;
    snprintf(q, sizeof q, "name=%s", name);
    mb_adapter(&m, fl, NULL);
    upload(f, "/v1/adapters", q, MP_CTYPE, &m, 64, &r);
    expect_status(&r, 201, NULL);
    ASSERT_EQ(json_integer_value(json_object_get(r.json, "version")), want_version);
    resp_free(&r);
    free(m.buf);
}

static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    if (!d)
        return 0;
    for (struct dirent *e = readdir(d); e; e = readdir(d))
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

/* ---- routing ---- */

TEST(admin_routes_405_404)
{
    fx_t f;
    admin_init(&f, "admin-routes", (admin_opts_t){0});
    resp_t r;
    call(&f, "PUT", "/v1/adapters", "{}", &r);
    ASSERT_EQ(r.rec.status, 405);
    ASSERT(strstr(r.rec.headers, "Allow: GET, POST\r\n") != NULL);
    resp_free(&r);
    call(&f, "PUT", "/v1/adapters/alpha", "{}", &r);
    ASSERT_EQ(r.rec.status, 405);
    ASSERT(strstr(r.rec.headers, "Allow: GET, POST, DELETE\r\n") != NULL);
    resp_free(&r);
    call(&f, "GET", "/v1/adapters/alpha/pin", NULL, &r);
    ASSERT_EQ(r.rec.status, 405);
    ASSERT(strstr(r.rec.headers, "Allow: POST\r\n") != NULL);
    resp_free(&r);
    call(&f, "POST", "/v1/aliases/prod", "{}", &r);
    ASSERT_EQ(r.rec.status, 405);
    ASSERT(strstr(r.rec.headers, "Allow: GET, PUT, DELETE\r\n") != NULL);
    resp_free(&r);
    expect_error(&f, "GET", "/v1/adapters/a/b", NULL, 404, "not_found", NULL);
    expect_error(&f, "GET", "/v1/adapters/", NULL, 404, "not_found", NULL);
    expect_error(&f, "POST", "/v1/adapters/a/pinx", "{}", 404, "not_found", NULL);
    /* bad escapes and bad names in the path are 400 invalid_name */
    expect_error(&f, "GET", "/v1/adapters/%zz", NULL, 400, "invalid_name", NULL);
    expect_error(&f, "GET", "/v1/adapters/a%00b", NULL, 400, "invalid_name", NULL);
    expect_error(&f, "GET", "/v1/adapters/.hidden", NULL, 400, "invalid_name", NULL);
    expect_error(&f, "GET", "/v1/adapters/a@0", NULL, 400, "invalid_name", NULL);
    expect_error(&f, "GET", "/v1/adapters/a@x", NULL, 400, "invalid_name", NULL);
    expect_error(&f, "DELETE", "/v1/aliases/bad%20name", NULL, 400, "invalid_name", NULL);
    /* vLLM routes do not exist unless enabled: the same 404 as any unknown path */
    expect_error(&f, "POST", "/v1/load_lora_adapter", "{}", 404, "not_found", NULL);
    expect_error(&f, "GET", "/v1/unload_lora_adapter", NULL, 404, "not_found", NULL);
    admin_close(&f);
}

TEST(admin_body_modes)
{
    fx_t f;
    admin_init(&f, "admin-modes", (admin_opts_t){.max_upload = 1000});
    api_request_t req = {.method = "POST", .path = "/v1/completions", .request_id = "t"};
    resp_t r;
    resp_init(&r);
    api_body_t *b = NULL;
    size_t max = 0;
    ASSERT_EQ(api_body_begin(f.api, &req, &r.sink, &b, &max), API_BODY_WHOLE);
    req.path = "/v1/adapters/alpha/pin";
    ASSERT_EQ(api_body_begin(f.api, &req, &r.sink, &b, &max), API_BODY_WHOLE);
    req.path = "/v1/adapters";
    req.method = "GET";
    ASSERT_EQ(api_body_begin(f.api, &req, &r.sink, &b, &max), API_BODY_WHOLE);
    ASSERT_EQ(r.rec.n_begin, 0);
    /* an upload: the limit is max_upload_bytes + 64 KiB; abort drops the temp files */
    req.method = "POST";
    req.query = "name=alpha";
    req.content_type = MP_CTYPE;
    ASSERT_EQ(api_body_begin(f.api, &req, &r.sink, &b, &max), API_BODY_STREAM);
    ASSERT_EQ(max, 1000 + 65536);
    const char piece[] = "--" BOUNDARY "\r\nContent-Disposition: form-data; name=\"weights\"\r\n"
                         "\r\nsome bytes of weights";
    api_body_data(f.api, b, piece, sizeof piece - 1);
    api_body_abort(f.api, b);
    ASSERT_EQ(r.rec.n_begin, 0);
    char tmp[400];
    snprintf(tmp, sizeof tmp, "%s/tmp", f.root);
    ASSERT_EQ(count_files(tmp), 0);
    free(r.rec.body);
    admin_close(&f);
}

/* ---- uploads ---- */

TEST(upload_chunked_then_list_show_versions)
{
    fx_t f;
    files_t fl;
    admin_init(&f, "admin-upload", (admin_opts_t){0});
    files_make(&f, "alpha", RANK, &fl);
    mbuf_t m;
    resp_t r;
    mb_adapter(&m, &fl, NULL);
    upload(&f, "/v1/adapters", "name=alpha", MP_CTYPE, &m, 7, &r); /* 7-byte pieces */
    expect_status(&r, 201, NULL);
    const char *id = NULL, *kind = NULL, *state = NULL, *sha = NULL, *fp = NULL;
    int version = 0, rank = 0, pinned = 1, resident = 1, loading = 1, in_use = 1;
    double alpha = 0;
    json_int_t size = 0, requests = 1;
    ASSERT_EQ(json_unpack(r.json, "{s:s,s:i,s:s,s:i,s:F,s:s,s:s,s:I,s:I,s:b,s:s,s:b,s:b,s:i}", "id",
                          &id, "version", &version, "kind", &kind, "rank", &rank, "alpha", &alpha,
                          "sha256", &sha, "base_fingerprint", &fp, "size_bytes", &size, "requests",
                          &requests, "pinned", &pinned, "state", &state, "resident", &resident,
                          "loading", &loading, "in_use", &in_use),
              0);
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "object")), "adapter");
    ASSERT_STREQ(id, "alpha@1");
    ASSERT_EQ(version, 1);
    ASSERT_STREQ(kind, "lora");
    ASSERT_EQ(rank, RANK);
    ASSERT_NEAR(alpha, 2.0 * RANK, 1e-9);
    ASSERT_EQ(size, (long long)fl.n_w);
    ASSERT_EQ(requests, 0);
    ASSERT(!pinned && !resident && !loading && in_use == 0);
    ASSERT_STREQ(state, "ready");
    ASSERT_STREQ(fp, f.model.fingerprint);
    ASSERT(json_object_get(r.json, "reason") == NULL);
    ASSERT(json_is_null(json_object_get(r.json, "last_used")));
    json_t *tm = json_object_get(r.json, "target_modules");
    ASSERT_EQ(json_array_size(tm), 2);
    ASSERT_STREQ(json_string_value(json_array_get(tm, 0)), "q_proj");
    ASSERT_STREQ(json_string_value(json_array_get(tm, 1)), "v_proj");
    /* sha256 is the weights file's */
    core_sha256_t h;
    uint8_t dg[32];
    char hex[65];
    core_sha256_init(&h);
    core_sha256_update(&h, fl.w, fl.n_w);
    core_sha256_final(&h, dg);
    core_sha256_hex(dg, hex);
    ASSERT_STREQ(sha, hex);
    resp_free(&r);
    free(m.buf);

    /* the path form, with a matching base_fingerprint part (upper case is fine): version 2 */
    char upper[65];
    for (int i = 0; i < 65; i++)
        upper[i] = (char)(f.model.fingerprint[i] >= 'a' && f.model.fingerprint[i] <= 'f'
                              ? f.model.fingerprint[i] - 32
                              : f.model.fingerprint[i]);
    mb_adapter(&m, &fl, upper);
    upload(&f, "/v1/adapters/alpha", NULL, MP_CTYPE, &m, 1000, &r);
    expect_status(&r, 201, NULL);
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "id")), "alpha@2");
    resp_free(&r);
    free(m.buf);

    /* list: newest version of each name */
    files_t fb;
    files_make(&f, "beta", 3, &fb);
    upload_ok(&f, "beta", &fb, 1);
    call(&f, "GET", "/v1/adapters", NULL, &r);
    expect_status(&r, 200, NULL);
    json_t *data = json_object_get(r.json, "data");
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "object")), "list");
    ASSERT_EQ(json_array_size(data), 2);
    ASSERT_STREQ(json_string_value(json_object_get(json_array_get(data, 0), "id")), "alpha@2");
    ASSERT_STREQ(json_string_value(json_object_get(json_array_get(data, 1), "id")), "beta@1");
    ASSERT_EQ(json_integer_value(json_object_get(json_array_get(data, 1), "rank")), 3);
    resp_free(&r);

    /* show: every version oldest first, then one version */
    call(&f, "GET", "/v1/adapters/alpha", NULL, &r);
    expect_status(&r, 200, NULL);
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "object")), "adapter.versions");
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "name")), "alpha");
    data = json_object_get(r.json, "data");
    ASSERT_EQ(json_array_size(data), 2);
    ASSERT_STREQ(json_string_value(json_object_get(json_array_get(data, 0), "id")), "alpha@1");
    ASSERT_STREQ(json_string_value(json_object_get(json_array_get(data, 1), "id")), "alpha@2");
    ASSERT_EQ(json_array_size(json_object_get(r.json, "aliases")), 0);
    resp_free(&r);
    call(&f, "GET", "/v1/adapters/alpha%401", NULL, &r); /* "@" percent-encoded */
    expect_status(&r, 200, NULL);
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "id")), "alpha@1");
    resp_free(&r);
    expect_error(&f, "GET", "/v1/adapters/alpha@3", NULL, 404, "adapter_not_found", NULL);
    expect_error(&f, "GET", "/v1/adapters/ghost", NULL, 404, "adapter_not_found", NULL);
    /* GET /v1/models still lists adapters */
    call(&f, "GET", "/v1/models", NULL, &r);
    expect_status(&r, 200, NULL);
    ASSERT_EQ(json_array_size(json_object_get(r.json, "data")), 3);
    resp_free(&r);
    files_free(&fl);
    files_free(&fb);
    admin_close(&f);
}

TEST(upload_whole_body_through_route_table)
{
    fx_t f;
    files_t fl;
    admin_init(&f, "admin-whole", (admin_opts_t){0});
    files_make(&f, "alpha", RANK, &fl);
    mbuf_t m;
    mb_adapter(&m, &fl, NULL);
    resp_t r;
    resp_init(&r);
    api_request_t req = {.method = "POST",
                         .path = "/v1/adapters",
                         .query = "name=al%70ha", /* percent-encoded "p" */
                         .body = m.buf,
                         .body_len = m.len,
                         .content_type = MP_CTYPE,
                         .request_id = "t"};
    api_job_t *job = NULL;
    api_handle(f.api, &req, &r.sink, &job);
    ASSERT(job == NULL);
    resp_done(&r);
    expect_status(&r, 201, NULL);
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "id")), "alpha@1");
    resp_free(&r);
    free(m.buf);
    files_free(&fl);
    admin_close(&f);
}

/* One upload that must fail with status and code. */
static void upload_fails(fx_t *f, const char *path, const char *query, const char *ctype,
                         const mbuf_t *m, int status, const char *code)
{
    resp_t r;
    upload(f, path, query, ctype, m, 13, &r);
    expect_status(&r, status, code);
    resp_free(&r);
}

TEST(upload_errors)
{
    fx_t f;
    files_t fl;
    admin_init(&f, "admin-upload-err", (admin_opts_t){0});
    files_make(&f, "alpha", RANK, &fl);
    mbuf_t ok;
    mb_adapter(&ok, &fl, NULL);
    resp_t r;
    api_job_t *job = NULL;

    /* names: refused before the body is read */
    ASSERT_EQ(upload_start(&f, "/v1/adapters", NULL, MP_CTYPE, &ok, 64, &r, &job),
              API_BODY_ANSWERED);
    resp_done(&r);
    expect_status(&r, 400, "invalid_name");
    resp_free(&r);
    upload_fails(&f, "/v1/adapters", "name=%2E%2E%2Fevil", MP_CTYPE, &ok, 400, "invalid_name");
    upload_fails(&f, "/v1/adapters", "name=a%zz", MP_CTYPE, &ok, 400, "invalid_name");
    upload_fails(&f, "/v1/adapters", "name=", MP_CTYPE, &ok, 400, "invalid_name");
    upload_fails(&f, "/v1/adapters", "name=a&name=b", MP_CTYPE, &ok, 400, "invalid_name");
    upload_fails(&f, "/v1/adapters/alpha", "name=alpha", MP_CTYPE, &ok, 400, "invalid_name");
    upload_fails(&f, "/v1/adapters/-x", NULL, MP_CTYPE, &ok, 400, "invalid_name");
    upload_fails(&f, "/v1/adapters", "name=alpha&x=1", MP_CTYPE, &ok, 400, "unknown_parameter");
    /* media type */
    upload_fails(&f, "/v1/adapters", "name=alpha", "application/json", &ok, 415,
                 "unsupported_media_type");
    upload_fails(&f, "/v1/adapters", "name=alpha", NULL, &ok, 415, "unsupported_media_type");
    upload_fails(&f, "/v1/adapters", "name=alpha", "multipart/form-data", &ok, 400,
                 "invalid_multipart");

    /* parts */
    mbuf_t m = {0};
    mb_part(&m, "config", fl.cfg, fl.n_cfg);
    mb_close(&m);
    upload_fails(&f, "/v1/adapters", "name=alpha", MP_CTYPE, &m, 400, "missing_part");
    free(m.buf);
    memset(&m, 0, sizeof m);
    mb_part(&m, "weights", fl.w, fl.n_w);
    mb_close(&m);
    upload_fails(&f, "/v1/adapters", "name=alpha", MP_CTYPE, &m, 400, "missing_part");
    free(m.buf);
    memset(&m, 0, sizeof m);
    mb_part(&m, "config", fl.cfg, fl.n_cfg);
    mb_part(&m, "readme", "hi", 2);
    mb_part(&m, "weights", fl.w, fl.n_w);
    mb_close(&m);
    upload_fails(&f, "/v1/adapters", "name=alpha", MP_CTYPE, &m, 400, "unknown_part");
    free(m.buf);
    memset(&m, 0, sizeof m);
    mb_part(&m, "config", fl.cfg, fl.n_cfg);
    mb_part(&m, "weights", fl.w, fl.n_w);
    mb_part(&m, "config", fl.cfg, fl.n_cfg);
    mb_close(&m);
    upload_fails(&f, "/v1/adapters", "name=alpha", MP_CTYPE, &m, 400, "duplicate_part");
    free(m.buf);
    /* framing: no closing delimiter */
    memset(&m, 0, sizeof m);
    mb_part(&m, "config", fl.cfg, fl.n_cfg);
    mb_part(&m, "weights", fl.w, fl.n_w);
    upload_fails(&f, "/v1/adapters", "name=alpha", MP_CTYPE, &m, 400, "invalid_multipart");
    free(m.buf);
    /* the base it was made for */
    mb_adapter(&m, &fl, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    upload_fails(&f, "/v1/adapters", "name=alpha", MP_CTYPE, &m, 422, "base_mismatch");
    free(m.buf);
    char big[200];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    mb_adapter(&m, &fl, big);
    upload_fails(&f, "/v1/adapters", "name=alpha", MP_CTYPE, &m, 400, "invalid_value");
    free(m.buf);
    /* validation by the store: a config that is not an adapter config */
    memset(&m, 0, sizeof m);
    mb_part(&m, "config", "{\"peft_type\": \"LORA\"", 20);
    mb_part(&m, "weights", fl.w, fl.n_w);
    mb_close(&m);
    upload(&f, "/v1/adapters", "name=alpha", MP_CTYPE, &m, 13, &r);
    ASSERT_EQ(r.rec.status, 422);
    resp_free(&r);
    free(m.buf);
    /* none of the failures made a version */
    expect_error(&f, "GET", "/v1/adapters/alpha", NULL, 404, "adapter_not_found", NULL);

    /* a name that is an alias */
    upload_ok(&f, "alpha", &fl, 1);
    call(&f, "PUT", "/v1/aliases/prod", "{\"adapter\": \"alpha\"}", &r);
    expect_status(&r, 200, NULL);
    resp_free(&r);
    upload_fails(&f, "/v1/adapters", "name=prod", MP_CTYPE, &ok, 409, "name_conflict");
    free(ok.buf);
    files_free(&fl);
    admin_close(&f);
}

TEST(upload_size_limits)
{
    fx_t f;
    files_t fl;
    /* weights file cap below the fixture's weights: the part is over its cap */
    admin_init(&f, "admin-upload-cap", (admin_opts_t){.max_adapter = 64});
    files_make(&f, "alpha", RANK, &fl);
    ASSERT(fl.n_w > 64);
    mbuf_t m;
    mb_adapter(&m, &fl, NULL);
    upload_fails(&f, "/v1/adapters", "name=alpha", MP_CTYPE, &m, 413, "too_large");
    free(m.buf);
    files_free(&fl);
    admin_close(&f);

    /* cache budget below the adapter's memory: it could never be served */
    admin_init(&f, "admin-upload-budget", (admin_opts_t){.cache_budget = 16});
    files_make(&f, "alpha", RANK, &fl);
    mb_adapter(&m, &fl, NULL);
    upload_fails(&f, "/v1/adapters", "name=alpha", MP_CTYPE, &m, 422, "adapter_too_large");
    free(m.buf);
    files_free(&fl);
    admin_close(&f);
}

/* ---- aliases and deletes ---- */

TEST(aliases_put_repoint_delete)
{
    fx_t f;
    files_t fl;
    admin_init(&f, "admin-alias", (admin_opts_t){0});
    files_make(&f, "alpha", RANK, &fl);
    upload_ok(&f, "alpha", &fl, 1);
    upload_ok(&f, "alpha", &fl, 2);
    resp_t r;
    call(&f, "PUT", "/v1/aliases/prod", "{\"adapter\": \"alpha@1\"}", &r);
    expect_status(&r, 200, NULL);
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "object")), "alias");
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "name")), "prod");
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "adapter")), "alpha@1");
    ASSERT(json_integer_value(json_object_get(r.json, "updated")) > 0);
    resp_free(&r);
    /* the alias resolves like an adapter name */
    call(&f, "GET", "/v1/adapters/prod", NULL, &r);
    expect_status(&r, 200, NULL);
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "id")), "alpha@1");
    resp_free(&r);
    call(&f, "GET", "/v1/adapters/alpha", NULL, &r);
    ASSERT_STREQ(json_string_value(json_array_get(json_object_get(r.json, "aliases"), 0)), "prod");
    resp_free(&r);
    /* repoint: "NAME" means its newest version now */
    call(&f, "PUT", "/v1/aliases/prod", "{\"adapter\": \"alpha\"}", &r);
    expect_status(&r, 200, NULL);
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "adapter")), "alpha@2");
    resp_free(&r);
    call(&f, "GET", "/v1/aliases/prod", NULL, &r);
    expect_status(&r, 200, NULL);
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "adapter")), "alpha@2");
    resp_free(&r);
    call(&f, "GET", "/v1/aliases", NULL, &r);
    expect_status(&r, 200, NULL);
    ASSERT_EQ(json_array_size(json_object_get(r.json, "data")), 1);
    ASSERT_STREQ(json_string_value(
                     json_object_get(json_array_get(json_object_get(r.json, "data"), 0), "name")),
                 "prod");
    resp_free(&r);
    /* errors */
    expect_error(&f, "PUT", "/v1/aliases/alpha", "{\"adapter\": \"alpha@1\"}", 409, "name_conflict",
                 NULL);
    expect_error(&f, "PUT", "/v1/aliases/p2", "{\"adapter\": \"ghost\"}", 404, "adapter_not_found",
                 NULL);
    expect_error(&f, "PUT", "/v1/aliases/p2", "{\"adapter\": \"alpha\", \"x\": 1}", 400,
                 "unknown_field", "`x`");
    expect_error(&f, "PUT", "/v1/aliases/p2", "{}", 400, "missing_field", "`adapter`");
    expect_error(&f, "PUT", "/v1/aliases/p2", "{\"adapter\": 3}", 400, "invalid_type", NULL);
    expect_error(&f, "PUT", "/v1/aliases/p2", "{\"adapter\": \"../x\"}", 400, "invalid_name", NULL);
    expect_error(&f, "PUT", "/v1/aliases/p2", "[1]", 400, "invalid_json", NULL);
    expect_error(&f, "PUT", "/v1/aliases/_x", "{\"adapter\": \"alpha\"}", 400, "invalid_name",
                 NULL);
    expect_error(&f, "GET", "/v1/aliases/p2", NULL, 404, "alias_not_found", NULL);

    /* delete: an alias pointing at a version blocks its deletion */
    expect_error(&f, "DELETE", "/v1/adapters/alpha@2", NULL, 409, "alias_conflict", NULL);
    expect_error(&f, "DELETE", "/v1/adapters/alpha", NULL, 409, "alias_conflict", NULL);
    call(&f, "DELETE", "/v1/adapters/alpha@1", NULL, &r);
    expect_status(&r, 200, NULL);
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "object")), "adapter.deleted");
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "id")), "alpha@1");
    ASSERT(json_is_true(json_object_get(r.json, "deleted")));
    resp_free(&r);
    expect_error(&f, "GET", "/v1/adapters/alpha@1", NULL, 404, "adapter_not_found", NULL);
    call(&f, "DELETE", "/v1/aliases/prod", NULL, &r);
    expect_status(&r, 200, NULL);
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "object")), "alias.deleted");
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "name")), "prod");
    ASSERT(json_is_true(json_object_get(r.json, "deleted")));
    resp_free(&r);
    expect_error(&f, "DELETE", "/v1/aliases/prod", NULL, 404, "alias_not_found", NULL);
    call(&f, "DELETE", "/v1/adapters/alpha", NULL, &r);
    expect_status(&r, 200, NULL);
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "id")), "alpha@2");
    resp_free(&r);
    expect_error(&f, "DELETE", "/v1/adapters/alpha", NULL, 404, "adapter_not_found", NULL);
    expect_error(&f, "GET", "/v1/adapters/alpha", NULL, 404, "adapter_not_found", NULL);
    /* versions are never reused after a delete */
    upload_ok(&f, "alpha", &fl, 3);
    files_free(&fl);
    admin_close(&f);
}

/* ---- pins ---- */

TEST(pin_unpin)
{
    fx_t f;
    files_t fl, fb;
    admin_init(&f, "admin-pin", (admin_opts_t){0});
    files_make(&f, "alpha", RANK, &fl);
    files_make(&f, "beta", RANK, &fb);
    upload_ok(&f, "alpha", &fl, 1);
    resp_t r;
    call(&f, "POST", "/v1/adapters/alpha/pin", NULL, &r);
    expect_status(&r, 200, NULL);
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "id")), "alpha@1");
    ASSERT(json_is_true(json_object_get(r.json, "pinned")));
    ASSERT(json_is_true(json_object_get(r.json, "resident")));
    json_int_t mem = json_integer_value(json_object_get(r.json, "memory_bytes"));
    ASSERT(mem > 0);
    resp_free(&r);
    call(&f, "GET", "/v1/adapters/alpha@1", NULL, &r);
    ASSERT(json_is_true(json_object_get(r.json, "pinned")));
    resp_free(&r);
    call(&f, "POST", "/v1/adapters/alpha/unpin", "{}", &r);
    expect_status(&r, 200, NULL);
    ASSERT(json_is_false(json_object_get(r.json, "pinned")));
    resp_free(&r);
    expect_error(&f, "POST", "/v1/adapters/ghost/pin", NULL, 404, "adapter_not_found", NULL);
    expect_error(&f, "POST", "/v1/adapters/alpha/pin", "{\"x\": 1}", 400, "unknown_field", NULL);
    files_free(&fl);
    admin_close(&f);

    /* a budget that holds one of two equal adapters: the second pin is 413 */
    admin_init(&f, "admin-pin-budget",
               (admin_opts_t){.cache_budget = (uint64_t)mem + (uint64_t)mem / 2});
    upload_ok(&f, "alpha", &fb, 1);
    upload_ok(&f, "beta", &fb, 1);
    call(&f, "POST", "/v1/adapters/alpha/pin", NULL, &r);
    expect_status(&r, 200, NULL);
    resp_free(&r);
    expect_error(&f, "POST", "/v1/adapters/beta/pin", NULL, 413, "adapter_too_large", NULL);
    files_free(&fb);
    admin_close(&f);
}

/* ---- the pending-job path: a queued executor ---- */

TEST(pending_change_cancel_still_ends_once)
{
    fx_t f;
    files_t fl;
    admin_init(&f, "admin-pending", (admin_opts_t){.queued = true});
    files_make(&f, "alpha", RANK, &fl);
    mbuf_t m;
    mb_adapter(&m, &fl, NULL);
    resp_t r;
    api_job_t *job = NULL;
    /* upload: the commit is a task; end answers through the job */
    ASSERT_EQ(upload_start(&f, "/v1/adapters", "name=alpha", MP_CTYPE, &m, 100, &r, &job),
              API_BODY_STREAM);
    ASSERT(job != NULL);
    ASSERT_EQ(r.rec.n_begin, 0);
    q_run();
    resp_done(&r);
    expect_status(&r, 201, NULL);
    api_job_free(f.api, job);
    resp_free(&r);
    free(m.buf);

    /* alias put, cancelled before the task runs: the change still happens, end comes once */
    resp_init(&r);
    const char *body = "{\"adapter\": \"alpha\"}";
    api_request_t req = {.method = "PUT",
                         .path = "/v1/aliases/prod",
                         .body = body,
                         .body_len = strlen(body),
                         .request_id = "t"};
    api_handle(f.api, &req, &r.sink, &job);
    ASSERT(job != NULL);
    ASSERT_EQ(r.rec.n_end, 0);
    api_job_cancel(f.api, job);
    q_run();
    resp_done(&r);
    expect_status(&r, 200, NULL);
    api_job_free(f.api, job);
    resp_free(&r);
    call(&f, "GET", "/v1/aliases/prod", NULL, &r); /* reads answer at once */
    expect_status(&r, 200, NULL);
    ASSERT_STREQ(json_string_value(json_object_get(r.json, "adapter")), "alpha@1");
    resp_free(&r);

    /* delete with an alias conflict, through the job */
    resp_init(&r);
    api_request_t del = {.method = "DELETE", .path = "/v1/adapters/alpha", .request_id = "t"};
    api_handle(f.api, &del, &r.sink, &job);
    ASSERT(job != NULL);
    q_run();
    resp_done(&r);
    expect_status(&r, 409, "alias_conflict");
    api_job_free(f.api, job);
    resp_free(&r);
    files_free(&fl);
    admin_close(&f);
}

/* ---- vLLM load / unload ---- */

static void vllm_expect(fx_t *f, const char *path, const char *body, int status, const char *code,
                        char *msg_out)
{
    resp_t r;
    call(f, "POST", path, body, &r);
    expect_status(&r, status, code);
    if (msg_out)
        snprintf(msg_out, 512, "%s",
                 json_string_value(json_object_get(json_object_get(r.json, "error"), "message")));
    resp_free(&r);
}

TEST(vllm_load_unload_confined)
{
    fx_t f;
    char body[1200], dir[600], outside[600], link[600];
    admin_init(&f, "admin-vllm", (admin_opts_t){.local = true});
    snprintf(dir, sizeof dir, "%s/a1", roots_dir);
    write_adapter(dir);
    snprintf(outside, sizeof outside, "%s/outside/a2", f.root);
    write_adapter(outside);
    snprintf(link, sizeof link, "%s/link", roots_dir);
    char target[700];
    snprintf(target, sizeof target, "../outside/a2");
    ASSERT_EQ(symlink(target, link), 0);

    resp_t r;
    snprintf(body, sizeof body, "{\"lora_name\": \"a1\", \"lora_path\": \"%s\"}", dir);
    call(&f, "POST", "/v1/load_lora_adapter", body, &r);
    ASSERT_EQ(r.rec.status, 200);
    ASSERT(strncmp(r.rec.ctype, "text/plain", 10) == 0);
    ASSERT_STREQ(r.rec.body, "Success: LoRA adapter 'a1' added successfully.");
    resp_free(&r);
    call(&f, "GET", "/v1/adapters/a1", NULL, &r);
    expect_status(&r, 200, NULL);
    resp_free(&r);
    char msg[512];
    vllm_expect(&f, "/v1/load_lora_adapter", body, 400, NULL, msg);
    ASSERT_STREQ(msg, "The lora adapter 'a1' has already been loaded.");

    /* confinement: outside, ../, a symlink out, missing: one answer for all */
    char m1[512], m2[512], m3[512], m4[512];
    snprintf(body, sizeof body, "{\"lora_name\": \"a2\", \"lora_path\": \"%s\"}", outside);
    vllm_expect(&f, "/v1/load_lora_adapter", body, 400, "invalid_path", m1);
    snprintf(body, sizeof body, "{\"lora_name\": \"a2\", \"lora_path\": \"%s/../outside/a2\"}",
             roots_dir);
    vllm_expect(&f, "/v1/load_lora_adapter", body, 400, "invalid_path", m2);
    snprintf(body, sizeof body, "{\"lora_name\": \"a2\", \"lora_path\": \"%s\"}", link);
    vllm_expect(&f, "/v1/load_lora_adapter", body, 400, "invalid_path", m3);
    snprintf(body, sizeof body, "{\"lora_name\": \"a2\", \"lora_path\": \"%s/nope\"}", roots_dir);
    vllm_expect(&f, "/v1/load_lora_adapter", body, 400, "invalid_path", m4);
    ASSERT_STREQ(m1, m2);
    ASSERT_STREQ(m1, m3);
    ASSERT_STREQ(m1, m4);
    ASSERT(strstr(m1, "outside") == NULL); /* never echoes the path */
    expect_error(&f, "GET", "/v1/adapters/a2", NULL, 404, "adapter_not_found", NULL);
    /* a prefix of the root's name is not inside it: ROOT + "x" */
    snprintf(dir, sizeof dir, "%sx/a3", roots_dir);
    write_adapter(dir);
    snprintf(body, sizeof body, "{\"lora_name\": \"a3\", \"lora_path\": \"%s\"}", dir);
    vllm_expect(&f, "/v1/load_lora_adapter", body, 400, "invalid_path", NULL);

    /* fields */
    vllm_expect(&f, "/v1/load_lora_adapter", "{\"lora_name\": \"a2\"}", 400, "missing_field", NULL);
    vllm_expect(&f, "/v1/load_lora_adapter",
                "{\"lora_name\": \"a2\", \"lora_path\": \"/x\", \"zz\": 1}", 400, "unknown_field",
                NULL);
    vllm_expect(&f, "/v1/load_lora_adapter", "{\"lora_name\": \"../a\", \"lora_path\": \"/x\"}",
                400, "invalid_name", NULL);
    snprintf(body, sizeof body,
             "{\"lora_name\": \"a4\", \"lora_path\": \"%s/a1\", \"load_inplace\": true}",
             roots_dir);
    call(&f, "POST", "/v1/load_lora_adapter", body, &r);
    ASSERT_EQ(r.rec.status, 200);
    resp_free(&r);

    /* unload */
    call(&f, "POST", "/v1/unload_lora_adapter", "{\"lora_name\": \"a1\", \"lora_int_id\": 7}", &r);
    ASSERT_EQ(r.rec.status, 200);
    ASSERT_STREQ(r.rec.body, "Success: LoRA adapter 'a1' removed successfully.");
    resp_free(&r);
    vllm_expect(&f, "/v1/unload_lora_adapter", "{\"lora_name\": \"a1\"}", 404, "adapter_not_found",
                msg);
    ASSERT_STREQ(msg, "The lora adapter 'a1' cannot be found.");
    vllm_expect(&f, "/v1/unload_lora_adapter", "{}", 400, "missing_field", NULL);
    expect_error(&f, "GET", "/v1/adapters/a1", NULL, 404, "adapter_not_found", NULL);
    /* the route exists now: other methods are 405 */
    resp_t r405;
    call(&f, "GET", "/v1/load_lora_adapter", NULL, &r405);
    ASSERT_EQ(r405.rec.status, 405);
    ASSERT(strstr(r405.rec.headers, "Allow: POST\r\n") != NULL);
    resp_free(&r405);
    admin_close(&f);
}
