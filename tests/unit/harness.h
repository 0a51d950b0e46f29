/* harness.h - a tiny unit-test runner in the libuv style.
 *
 * Each file defines TEST(name) { ... } blocks and includes this header once with
 * HARNESS_MAIN defined before it (exactly one translation unit per binary). The binary:
 *   test_x --list      prints the test names, one per line
 *   test_x NAME        runs one test in this process: exit 0 pass, 1 fail
 *   test_x             runs all, each in a forked child with a timeout, TAP lines out
 * tests/run.sh runs each name as its own process (a crash fails only that test).
 * ASSERT_* print both sides and the location, then fail the test. */
#ifndef TESTS_HARNESS_H
#define TESTS_HARNESS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*harness_fn)(void);
void harness_register(const char *name, harness_fn fn);

#define TEST(name)                                                              \
    static void test_##name(void);                                              \
    __attribute__((constructor)) static void register_##name(void)             \
    {                                                                           \
        harness_register(#name, test_##name);                                   \
    }                                                                           \
    static void test_##name(void)

#define HARNESS_FAIL(...)                                                       \
    do {                                                                        \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                         \
        fprintf(stderr, __VA_ARGS__);                                           \
        fprintf(stderr, "\n");                                                  \
        exit(1);                                                                \
    } while (0)

#define ASSERT(c)                                                               \
    do {                                                                        \
        if (!(c))                                                               \
            HARNESS_FAIL("assertion failed: %s", #c);                           \
    } while (0)
#define ASSERT_EQ(a, b)                                                         \
    do {                                                                        \
        long long a_ = (long long)(a), b_ = (long long)(b);                     \
        if (a_ != b_)                                                           \
            HARNESS_FAIL("%s == %s: %lld != %lld", #a, #b, a_, b_);             \
    } while (0)
#define ASSERT_STREQ(a, b)                                                      \
    do {                                                                        \
        const char *a_ = (a), *b_ = (b);                                        \
        if (!a_ || !b_ || strcmp(a_, b_) != 0)                                  \
            HARNESS_FAIL("%s == %s: \"%s\" != \"%s\"", #a, #b, a_ ? a_ : "(null)", \
                         b_ ? b_ : "(null)");                                   \
    } while (0)
#define ASSERT_NEAR(a, b, tol)                                                  \
    do {                                                                        \
        double a_ = (double)(a), b_ = (double)(b);                              \
        if (!(fabs(a_ - b_) <= (tol)))                                          \
            HARNESS_FAIL("%s ~= %s: %.9g vs %.9g (tol %g)", #a, #b, a_, b_,     \
                         (double)(tol));                                        \
    } while (0)
/* rc_t-returning calls: prints the rc and the error message. errp: a core_err_t
 * pointer or NULL (passed through a helper so &local does not trip -Waddress). */
static inline const char *harness_errmsg(const void *errp)
{
    return errp ? (const char *)errp : "";
}
#define ASSERT_RC(call, want, errp)                                             \
    do {                                                                        \
        int got_ = (int)(call);                                                 \
        if (got_ != (int)(want))                                                \
            HARNESS_FAIL("%s: rc %d, want %d (%s)", #call, got_, (int)(want),    \
                         harness_errmsg(errp));                                 \
    } while (0)

#ifdef HARNESS_MAIN
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define HARNESS_MAX 512
static struct {
    const char *name;
    harness_fn fn;
} harness_tests[HARNESS_MAX];
static int harness_n;

void harness_register(const char *name, harness_fn fn)
{
    if (harness_n < HARNESS_MAX) {
        harness_tests[harness_n].name = name;
        harness_tests[harness_n].fn = fn;
        harness_n++;
    }
}

static int harness_run_forked(int i)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(120);
        harness_tests[i].fn();
        exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        for (int i = 0; i < harness_n; i++)
            printf("%s\n", harness_tests[i].name);
        return 0;
    }
    if (argc > 1) {
        for (int i = 0; i < harness_n; i++)
            if (strcmp(argv[1], harness_tests[i].name) == 0) {
                harness_tests[i].fn();
                return 0;
            }
        fprintf(stderr, "no test named %s\n", argv[1]);
        return 2;
    }
    int failed = 0;
    for (int i = 0; i < harness_n; i++) {
        int ok = harness_run_forked(i);
        printf("%sok %d - %s\n", ok ? "" : "not ", i + 1, harness_tests[i].name);
        failed += !ok;
    }
    return failed ? 1 : 0;
}
#endif
#endif
