/* test_blob.c - store/blob (content-addressed blob files) and store/fault (failpoints).
 *
 * Each TEST works in its own folder tests/tmp/test_blob_<pid>_<name>/ and removes it.
 * The failpoint tests fork one child per operation number k: the child sets the
 * ADAPTERD_FAILPOINT_* variable before its first store__fp call (the parent never calls
 * store__fp, so the child parses a fresh environment) and runs write+finish+install. */
#include "tests/unit/harness.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/sha256.h"
#include "store/blob.h"
#include "store/fault.h"

#define HEX_ABC "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define HEX_EMPTY "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define HEX_HELLO "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
#define MSG_448 "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
#define HEX_448 "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    return remove(p);
}

static void rm_rf(const char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh folder with blobs/ and tmp/ made by plain mkdir (no failpoint is touched). */
static void fresh_dir(char *dir, size_t cap, const char *name)
{
    snprintf(dir, cap, "tests/tmp/test_blob_%d_%s", (int)getpid(), name);
    rm_rf(dir);
    mkdir("tests", 0700);
    mkdir("tests/tmp", 0700);
    ASSERT_EQ(mkdir(dir, 0700), 0);
    char sub[512];
    snprintf(sub, sizeof sub, "%s/blobs", dir);
    ASSERT_EQ(mkdir(sub, 0700), 0);
    snprintf(sub, sizeof sub, "%s/tmp", dir);
    ASSERT_EQ(mkdir(sub, 0700), 0);
}

static int count_entries(const char *dir, const char *sub)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, sub);
    DIR *d = opendir(p);
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        n += strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
    closedir(d);
    return n;
}

static void put_file(const char *dir, const char *name, const char *text)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    ASSERT(f != NULL);
    ASSERT_EQ(fwrite(text, 1, strlen(text), f), strlen(text));
    ASSERT_EQ(fclose(f), 0);
}

/* Contents of path into buf (NUL-terminated); -1 when it cannot be opened. */
static long slurp(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
    return (long)n;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* A finished writer holding text. */
static store_blob_writer_t *make_finished(const char *dir, const char *text, char hex[65])
{
    store_blob_writer_t *w = NULL;
    core_err_t e = {{0}};
    ASSERT_RC(store__blob_writer_new(dir, 1 << 20, &w, &e), RC_OK, &e);
    ASSERT_RC(store__blob_write(w, text, strlen(text), &e), RC_OK, &e);
    ASSERT_RC(store__blob_finish(w, hex, NULL, &e), RC_OK, &e);
    return w;
}

static void install_text(const char *dir, const char *text, char hex[65])
{
    core_err_t e = {{0}};
    store_blob_writer_t *w = make_finished(dir, text, hex);
    ASSERT_RC(store__blob_install(w, &e), RC_OK, &e);
    store__blob_writer_free(w);
}

TEST(write_in_pieces_hashes)
{
    char dir[256], hex[65];
    fresh_dir(dir, sizeof dir, "pieces");
    core_err_t e = {{0}};
    store_blob_writer_t *w = NULL;
    uint64_t n = 0;
    ASSERT_RC(store__blob_writer_new(dir, 100, &w, &e), RC_OK, &e);
    ASSERT_RC(store__blob_write(w, "a", 1, &e), RC_OK, &e);
    ASSERT_RC(store__blob_write(w, "", 0, &e), RC_OK, &e);
    ASSERT_RC(store__blob_write(w, "bc", 2, &e), RC_OK, &e);
    ASSERT_EQ(store__blob_size(w), 3);
    ASSERT_RC(store__blob_finish(w, hex, &n, &e), RC_OK, &e);
    ASSERT_STREQ(hex, HEX_ABC);
    ASSERT_EQ(n, 3);
    char buf[64];
    ASSERT_EQ(slurp(store__blob_tmp_path(w), buf, sizeof buf), 3);
    ASSERT_STREQ(buf, "abc");
    ASSERT_RC(store__blob_write(w, "x", 1, &e), RC_INVALID, &e);
    ASSERT_RC(store__blob_finish(w, hex, &n, &e), RC_INVALID, &e);
    store__blob_writer_free(w);

    /* 56 bytes in uneven pieces crosses the 64-byte block boundary of the padding. */
    ASSERT_RC(store__blob_writer_new(dir, 100, &w, &e), RC_OK, &e);
    for (size_t i = 0, step = 1; i < strlen(MSG_448); i += step, step = step * 2 + 1) {
        size_t len = strlen(MSG_448) - i < step ? strlen(MSG_448) - i : step;
        ASSERT_RC(store__blob_write(w, MSG_448 + i, len, &e), RC_OK, &e);
    }
    ASSERT_RC(store__blob_finish(w, hex, NULL, &e), RC_OK, &e);
    ASSERT_STREQ(hex, HEX_448);
    store__blob_writer_free(w);

    ASSERT_RC(store__blob_writer_new(dir, 0, &w, &e), RC_OK, &e);
    ASSERT_RC(store__blob_finish(w, hex, &n, &e), RC_OK, &e);
    ASSERT_STREQ(hex, HEX_EMPTY);
    ASSERT_EQ(n, 0);
    store__blob_writer_free(w);
    ASSERT_EQ(count_entries(dir, "tmp"), 0);
    rm_rf(dir);
}

TEST(install_puts_blob_at_hex)
{
    char dir[256], hex[65], path[512], buf[64];
    fresh_dir(dir, sizeof dir, "install");
    core_err_t e = {{0}};
    store_blob_writer_t *w = make_finished(dir, "abc", hex);
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s", store__blob_tmp_path(w));
    ASSERT(strncmp(tmp, dir, strlen(dir)) == 0);
    ASSERT(strstr(tmp, "/tmp/") != NULL);
    ASSERT_EQ(strlen(strrchr(tmp, '/') + 1), 16 + strlen(".part"));
    ASSERT(file_exists(tmp));
    ASSERT_RC(store__blob_install(w, &e), RC_OK, &e);
    ASSERT_RC(store__blob_install(w, &e), RC_INVALID, &e);
    store__blob_writer_free(w);
    ASSERT(!file_exists(tmp));
    ASSERT(store__blob_path(dir, hex, path, sizeof path));
    ASSERT_EQ(slurp(path, buf, sizeof buf), 3);
    ASSERT_STREQ(buf, "abc");
    uint64_t size = 0;
    ASSERT(store__blob_exists(dir, HEX_ABC, &size));
    ASSERT_EQ(size, 3);
    struct stat st;
    ASSERT_EQ(stat(path, &st), 0);
    ASSERT_EQ(st.st_mode & 0777, 0600);
    ASSERT_EQ(count_entries(dir, "tmp"), 0);
    rm_rf(dir);
}

TEST(install_same_content_twice)
{
    char dir[256], hex1[65], hex2[65];
    fresh_dir(dir, sizeof dir, "twice");
    install_text(dir, "abc", hex1);
    char path[512];
    struct stat st1, st2;
    ASSERT(store__blob_path(dir, hex1, path, sizeof path));
    ASSERT_EQ(stat(path, &st1), 0);
    install_text(dir, "abc", hex2);
    ASSERT_STREQ(hex1, hex2);
    /* The fresh copy replaced the first one (one blob, no temp left). */
    ASSERT_EQ(stat(path, &st2), 0);
    ASSERT(st1.st_ino != st2.st_ino);
    ASSERT_EQ(count_entries(dir, "blobs"), 1);
    ASSERT_EQ(count_entries(dir, "tmp"), 0);
    ASSERT(store__blob_exists(dir, HEX_ABC, NULL));
    rm_rf(dir);
}

/* A damaged blob is repaired by installing the same content again. */
TEST(install_repairs_damaged_blob)
{
    char dir[256], hex1[65], hex2[65], path[512], buf[16] = {0};
    fresh_dir(dir, sizeof dir, "repair");
    install_text(dir, "abc", hex1);
    ASSERT(store__blob_path(dir, hex1, path, sizeof path));
    FILE *fp = fopen(path, "r+b");
    ASSERT(fp != NULL);
    ASSERT_EQ(fputc('X', fp), 'X');
    ASSERT_EQ(fclose(fp), 0);
    install_text(dir, "abc", hex2);
    ASSERT_STREQ(hex1, hex2);
    ASSERT_EQ(slurp(path, buf, sizeof buf), 3);
    ASSERT_STREQ(buf, "abc");
    rm_rf(dir);
}

TEST(limit_writes_nothing_past_it)
{
    char dir[256], hex[65];
    fresh_dir(dir, sizeof dir, "limit");
    core_err_t e = {{0}};
    store_blob_writer_t *w = NULL;
    ASSERT_RC(store__blob_writer_new(dir, 5, &w, &e), RC_OK, &e);
    ASSERT_RC(store__blob_write(w, "abc", 3, &e), RC_OK, &e);
    ASSERT_RC(store__blob_write(w, "def", 3, &e), RC_LIMIT, &e);
    ASSERT(strstr(e.msg, "limit") != NULL);
    ASSERT_EQ(store__blob_size(w), 3);
    struct stat st;
    ASSERT_EQ(stat(store__blob_tmp_path(w), &st), 0);
    ASSERT_EQ(st.st_size, 3);
    /* The writer is still good: nothing of the refused call was written. */
    ASSERT_RC(store__blob_write(w, "de", 2, &e), RC_OK, &e);
    ASSERT_RC(store__blob_write(w, "f", 1, &e), RC_LIMIT, &e);
    ASSERT_RC(store__blob_finish(w, hex, NULL, &e), RC_OK, &e);
    ASSERT_STREQ(hex, "36bbe50ed96841d10443bcb670d6554f0a34b761be67ec9c4a8ad2c0c44ca42c");
    store__blob_writer_free(w);
    rm_rf(dir);
}

TEST(free_before_finish_removes_temp)
{
    char dir[256], hex[65], tmp[512];
    fresh_dir(dir, sizeof dir, "free");
    core_err_t e = {{0}};
    store_blob_writer_t *w = NULL;
    ASSERT_RC(store__blob_writer_new(dir, 100, &w, &e), RC_OK, &e);
    ASSERT_RC(store__blob_write(w, "abc", 3, &e), RC_OK, &e);
    snprintf(tmp, sizeof tmp, "%s", store__blob_tmp_path(w));
    ASSERT(file_exists(tmp));
    store__blob_writer_free(w);
    ASSERT(!file_exists(tmp));
    /* Finished but never installed: also removed, and no blob appears. */
    w = make_finished(dir, "abc", hex);
    store__blob_writer_free(w);
    store__blob_writer_free(NULL);
    ASSERT_EQ(count_entries(dir, "tmp"), 0);
    ASSERT_EQ(count_entries(dir, "blobs"), 0);
    rm_rf(dir);
}

TEST(writer_new_without_tmp_folder_fails)
{
    char dir[256], sub[512];
    fresh_dir(dir, sizeof dir, "notmp");
    snprintf(sub, sizeof sub, "%s/tmp", dir);
    ASSERT_EQ(rmdir(sub), 0);
    core_err_t e = {{0}};
    store_blob_writer_t *w = (store_blob_writer_t *)&e;
    ASSERT_RC(store__blob_writer_new(dir, 100, &w, &e), RC_IO, &e);
    ASSERT(w == NULL);
    ASSERT(strstr(e.msg, "/tmp/") != NULL);
    rm_rf(dir);
}

TEST(dirs_created_and_checked)
{
    char dir[256], sub[512];
    fresh_dir(dir, sizeof dir, "dirs");
    rm_rf(dir);
    ASSERT_EQ(mkdir(dir, 0700), 0);
    core_err_t e = {{0}};
    ASSERT_RC(store__blob_dirs(dir, &e), RC_OK, &e);
    ASSERT_RC(store__blob_dirs(dir, &e), RC_OK, &e);
    ASSERT_EQ(count_entries(dir, "blobs"), 0);
    ASSERT_EQ(count_entries(dir, "tmp"), 0);
    snprintf(sub, sizeof sub, "%s/tmp", dir);
    ASSERT_EQ(rmdir(sub), 0);
    put_file(dir, "tmp", "not a folder");
    ASSERT(store__blob_dirs(dir, &e) != RC_OK);
    ASSERT(strstr(e.msg, "not a folder") != NULL);
    rm_rf(dir);
}

TEST(copy_file)
{
    char dir[256], hex[65], src[512];
    fresh_dir(dir, sizeof dir, "copy");
    core_err_t e = {{0}};
    store_blob_writer_t *w = NULL;
    uint64_t n = 0;
    snprintf(src, sizeof src, "%s/missing", dir);
    ASSERT_RC(store__blob_copy_file(dir, src, 100, &w, hex, &n, &e), RC_NOT_FOUND, &e);
    ASSERT(w == NULL);
    snprintf(src, sizeof src, "%s/blobs", dir);
    ASSERT_RC(store__blob_copy_file(dir, src, 100, &w, hex, &n, &e), RC_INVALID, &e);
    put_file(dir, "src", "abc");
    snprintf(src, sizeof src, "%s/src", dir);
    ASSERT_RC(store__blob_copy_file(dir, src, 2, &w, hex, &n, &e), RC_LIMIT, &e);
    ASSERT(w == NULL);
    ASSERT_EQ(count_entries(dir, "tmp"), 0);
    ASSERT_RC(store__blob_copy_file(dir, src, 3, &w, hex, &n, &e), RC_OK, &e);
    ASSERT_STREQ(hex, HEX_ABC);
    ASSERT_EQ(n, 3);
    ASSERT_RC(store__blob_install(w, &e), RC_OK, &e);
    store__blob_writer_free(w);
    ASSERT(store__blob_exists(dir, HEX_ABC, &n));
    ASSERT_EQ(n, 3);
    rm_rf(dir);
}

TEST(copy_file_bigger_than_the_buffer)
{
    char dir[256], hex[65], want[65], src[512];
    fresh_dir(dir, sizeof dir, "copybig");
    size_t len = (3u << 20) / 2 + 7; /* 1.5 MiB + 7: two reads of the 1 MiB buffer */
    unsigned char *data = malloc(len);
    ASSERT(data != NULL);
    for (size_t i = 0; i < len; i++)
        data[i] = (unsigned char)(i * 131 + (i >> 9));
    snprintf(src, sizeof src, "%s/big", dir);
    FILE *f = fopen(src, "wb");
    ASSERT(f != NULL);
    ASSERT_EQ(fwrite(data, 1, len, f), len);
    ASSERT_EQ(fclose(f), 0);
    core_sha256_t c;
    uint8_t d[32];
    core_sha256_init(&c);
    core_sha256_update(&c, data, len);
    core_sha256_final(&c, d);
    core_sha256_hex(d, want);
    free(data);
    core_err_t e = {{0}};
    store_blob_writer_t *w = NULL;
    uint64_t n = 0;
    ASSERT_RC(store__blob_copy_file(dir, src, len, &w, hex, &n, &e), RC_OK, &e);
    ASSERT_STREQ(hex, want);
    ASSERT_EQ(n, len);
    store__blob_writer_free(w);
    rm_rf(dir);
}

typedef struct {
    const char *keep_hex;
    int n_calls;
} keep_ctx_t;

static bool keep_one(void *ctx, const char *hex)
{
    keep_ctx_t *k = ctx;
    k->n_calls++;
    return strcmp(hex, k->keep_hex) == 0;
}

TEST(gc_removes_what_keep_rejects)
{
    char dir[256], ha[65], hb[65], hc[65], blobs[512], upper[65];
    fresh_dir(dir, sizeof dir, "gc");
    install_text(dir, "a", ha);
    install_text(dir, "bb", hb);
    install_text(dir, "ccc", hc);
    snprintf(blobs, sizeof blobs, "%s/blobs", dir);
    for (int i = 0; i < 65; i++)
        upper[i] = (char)(ha[i] >= 'a' && ha[i] <= 'f' ? ha[i] - 32 : ha[i]);
    put_file(blobs, "README", "x");
    put_file(blobs, upper, "x");
    char name[80];
    snprintf(name, sizeof name, "%.63s", hc);
    put_file(blobs, name, "x");
    snprintf(name, sizeof name, "%s.part", hc);
    put_file(blobs, name, "x");
    keep_ctx_t k = {hb, 0};
    int n = -1;
    uint64_t bytes = 0;
    core_err_t e = {{0}};
    ASSERT_RC(store__blob_gc(dir, keep_one, &k, &n, &bytes, &e), RC_OK, &e);
    ASSERT_EQ(k.n_calls, 3);
    ASSERT_EQ(n, 2);
    ASSERT_EQ(bytes, 1 + 3);
    ASSERT(!store__blob_exists(dir, ha, NULL));
    ASSERT(store__blob_exists(dir, hb, NULL));
    ASSERT(!store__blob_exists(dir, hc, NULL));
    ASSERT_EQ(count_entries(dir, "blobs"), 1 + 4);
    k.n_calls = 0;
    ASSERT_RC(store__blob_gc(dir, keep_one, &k, &n, &bytes, &e), RC_OK, &e);
    ASSERT_EQ(k.n_calls, 1);
    ASSERT_EQ(n, 0);
    ASSERT_EQ(bytes, 0);
    rm_rf(dir);
}

TEST(clean_tmp_removes_regular_files)
{
    char dir[256], tmp[512], sub[600];
    fresh_dir(dir, sizeof dir, "clean");
    snprintf(tmp, sizeof tmp, "%s/tmp", dir);
    put_file(tmp, "0123456789abcdef.part", "half");
    put_file(tmp, "other", "x");
    snprintf(sub, sizeof sub, "%s/keepdir", tmp);
    ASSERT_EQ(mkdir(sub, 0700), 0);
    int n = -1;
    core_err_t e = {{0}};
    ASSERT_RC(store__blob_clean_tmp(dir, &n, &e), RC_OK, &e);
    ASSERT_EQ(n, 2);
    ASSERT_EQ(count_entries(dir, "tmp"), 1);
    ASSERT(file_exists(sub));
    ASSERT_RC(store__blob_clean_tmp(dir, &n, &e), RC_OK, &e);
    ASSERT_EQ(n, 0);
    rm_rf(dir);
}

TEST(blob_path_refuses_bad_names)
{
    char buf[256], hex[70];
    ASSERT(store__blob_path("/d", HEX_ABC, buf, sizeof buf));
    ASSERT_STREQ(buf, "/d/blobs/" HEX_ABC);
    snprintf(hex, sizeof hex, "%s", HEX_ABC);
    hex[0] = 'B';
    ASSERT(!store__blob_path("/d", hex, buf, sizeof buf));
    hex[0] = 'g';
    ASSERT(!store__blob_path("/d", hex, buf, sizeof buf));
    hex[0] = '/';
    ASSERT(!store__blob_path("/d", hex, buf, sizeof buf));
    snprintf(hex, sizeof hex, "%.63s", HEX_ABC);
    ASSERT(!store__blob_path("/d", hex, buf, sizeof buf));
    snprintf(hex, sizeof hex, "%s0", HEX_ABC);
    ASSERT(!store__blob_path("/d", hex, buf, sizeof buf));
    ASSERT(!store__blob_path("/d", "../../etc/passwd", buf, sizeof buf));
    ASSERT(!store__blob_path("/d", "", buf, sizeof buf));
    ASSERT(!store__blob_path("/d", NULL, buf, sizeof buf));
    ASSERT(!store__blob_path("/d", HEX_ABC, buf, 9 + 64)); /* no room for the NUL */
    ASSERT(store__blob_path("/d", HEX_ABC, buf, 9 + 65));
    ASSERT(!store__blob_exists("/nonexistent-dir", HEX_ABC, NULL));
    ASSERT(!store__blob_exists("/", "ABC", NULL));
}

/* ---- failpoints: one child process per operation number ---- */

/* write + finish + install of "hello world" in dir; returns the first failing rc. */
static int fp_sequence(const char *dir)
{
    store_blob_writer_t *w = NULL;
    core_err_t e = {{0}};
    char hex[65];
    rc_t rc = store__blob_writer_new(dir, 1024, &w, &e);
    if (rc == RC_OK)
        rc = store__blob_write(w, "hello ", 6, &e);
    if (rc == RC_OK)
        rc = store__blob_write(w, "world", 5, &e);
    if (rc == RC_OK)
        rc = store__blob_finish(w, hex, NULL, &e);
    if (rc == RC_OK)
        rc = store__blob_install(w, &e);
    store__blob_writer_free(w);
    return (int)rc;
}

/* Fork; the child sets var=val (if var), sends stderr to errfd (if >= 0) and exits with
 * fp_sequence's rc. Returns the child's wait status. */
static int fp_child(const char *dir, const char *var, const char *val, int errfd)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        if (var)
            setenv(var, val, 1);
        if (errfd >= 0)
            dup2(errfd, 2);
        _exit(fp_sequence(dir));
    }
    int st = 0;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
    return st;
}

/* No blob, or the complete right one; never anything else in blobs/. OUT: present. */
static bool fp_blob_whole_or_absent(const char *dir)
{
    char path[512], buf[64];
    ASSERT(store__blob_path(dir, HEX_HELLO, path, sizeof path));
    int n = count_entries(dir, "blobs");
    if (n == 0)
        return false;
    ASSERT_EQ(n, 1);
    ASSERT_EQ(slurp(path, buf, sizeof buf), 11);
    ASSERT_STREQ(buf, "hello world");
    return true;
}

TEST(failpoint_log_numbers_ops)
{
    char dir[256];
    fresh_dir(dir, sizeof dir, "fplog");
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    int st = fp_child(dir, "ADAPTERD_FAILPOINT_LOG", "1", fds[1]);
    close(fds[1]);
    char buf[512];
    size_t n = 0;
    for (ssize_t r; n < sizeof buf - 1 && (r = read(fds[0], buf + n, sizeof buf - 1 - n)) > 0;)
        n += (size_t)r;
    buf[n] = '\0';
    close(fds[0]);
    ASSERT(WIFEXITED(st));
    ASSERT_EQ(WEXITSTATUS(st), 0);
    ASSERT_STREQ(buf, "failpoint 1 write\nfailpoint 2 write\nfailpoint 3 fsync\n"
                      "failpoint 4 rename\nfailpoint 5 fsync_dir\n");
    ASSERT(fp_blob_whole_or_absent(dir));
    rm_rf(dir);
}

TEST(failpoint_crash_at_each_op)
{
    char dir[256];
    fresh_dir(dir, sizeof dir, "fpcrash");
    int n_ops = 0, n_whole = 0;
    for (int k = 1; k <= 50; k++) {
        char val[16];
        snprintf(val, sizeof val, "%d", k);
        int st = fp_child(dir, "ADAPTERD_FAILPOINT_CRASH", val, -1);
        ASSERT(WIFEXITED(st));
        bool whole = fp_blob_whole_or_absent(dir);
        if (WEXITSTATUS(st) == 0) { /* k is past the last operation: a clean run */
            ASSERT(whole);
            break;
        }
        ASSERT_EQ(WEXITSTATUS(st), 137);
        n_ops = k;
        n_whole += whole;
        /* What start-up does after a crash; the next run starts from an empty store. */
        rm_rf(dir);
        fresh_dir(dir, sizeof dir, "fpcrash");
    }
    ASSERT_EQ(n_ops, 5);
    ASSERT_EQ(n_whole, 1); /* only a crash at the final fsync_dir finds the blob renamed */
    rm_rf(dir);
}

TEST(failpoint_eio_at_each_op)
{
    char dir[256];
    fresh_dir(dir, sizeof dir, "fpeio");
    for (int k = 1; k <= 5; k++) {
        char val[16];
        snprintf(val, sizeof val, "%d", k);
        int st = fp_child(dir, "ADAPTERD_FAILPOINT_EIO", val, -1);
        ASSERT(WIFEXITED(st));
        ASSERT_EQ(WEXITSTATUS(st), RC_IO);
        ASSERT(!fp_blob_whole_or_absent(dir));
        ASSERT_EQ(count_entries(dir, "tmp"), 0);
    }
    ASSERT_EQ(WEXITSTATUS(fp_child(dir, "ADAPTERD_FAILPOINT_EIO", "6", -1)), 0);
    ASSERT(fp_blob_whole_or_absent(dir));
    rm_rf(dir);
}

TEST(failpoint_eio_from_each_op)
{
    char dir[256];
    fresh_dir(dir, sizeof dir, "fpeiofrom");
    for (int k = 1; k <= 5; k++) {
        char val[16];
        snprintf(val, sizeof val, "%d+", k);
        int st = fp_child(dir, "ADAPTERD_FAILPOINT_EIO", val, -1);
        ASSERT(WIFEXITED(st));
        ASSERT_EQ(WEXITSTATUS(st), RC_IO);
        /* From fsync_dir on even the take-back unlink fails: the whole blob may stay. */
        bool whole = fp_blob_whole_or_absent(dir);
        ASSERT_EQ(whole, k == 5);
        rm_rf(dir);
        fresh_dir(dir, sizeof dir, "fpeiofrom");
    }
    rm_rf(dir);
}

/* Child body of the poison test: op 1 is the write, op 2 the fsync of finish. */
static int fp_poison_child(const char *dir)
{
    setenv("ADAPTERD_FAILPOINT_EIO", "2", 1);
    store_blob_writer_t *w = NULL, *w2 = NULL;
    core_err_t e = {{0}};
    char hex[65];
    ASSERT(!store__blob_poisoned());
    ASSERT_RC(store__blob_writer_new(dir, 100, &w, &e), RC_OK, &e);
    ASSERT_RC(store__blob_write(w, "abc", 3, &e), RC_OK, &e);
    ASSERT_RC(store__blob_finish(w, hex, NULL, &e), RC_IO, &e);
    ASSERT(strstr(e.msg, "fsync") != NULL);
    ASSERT(store__blob_poisoned());
    ASSERT_RC(store__blob_install(w, &e), RC_INVALID, &e);
    store__blob_writer_free(w);
    ASSERT_RC(store__blob_writer_new(dir, 100, &w2, &e), RC_IO, &e);
    ASSERT(w2 == NULL);
    ASSERT(strstr(e.msg, "restart the daemon") != NULL);
    return 0;
}

TEST(failpoint_fsync_failure_poisons)
{
    char dir[256];
    fresh_dir(dir, sizeof dir, "fppoison");
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0)
        _exit(fp_poison_child(dir)); /* a failed ASSERT exits 1 */
    int st = 0;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
    ASSERT(WIFEXITED(st));
    ASSERT_EQ(WEXITSTATUS(st), 0);
    ASSERT_EQ(count_entries(dir, "tmp"), 0);
    ASSERT_EQ(count_entries(dir, "blobs"), 0);
    /* This process never failed an fsync. */
    ASSERT(!store__blob_poisoned());
    rm_rf(dir);
}

TEST(failpoint_dir_fsync_failure_poisons)
{
    char dir[256];
    fresh_dir(dir, sizeof dir, "fppoisondir");
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        setenv("ADAPTERD_FAILPOINT_EIO", "5", 1); /* the fsync of blobs/ */
        int rc = fp_sequence(dir);
        store_blob_writer_t *w = NULL;
        core_err_t e = {{0}};
        _exit(rc == RC_IO && store__blob_poisoned() &&
                      store__blob_writer_new(dir, 1, &w, &e) == RC_IO
                  ? 0
                  : 1);
    }
    int st = 0;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
    ASSERT(WIFEXITED(st));
    ASSERT_EQ(WEXITSTATUS(st), 0);
    ASSERT(!fp_blob_whole_or_absent(dir));
    rm_rf(dir);
}
