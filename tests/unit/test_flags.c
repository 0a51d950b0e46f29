/* test_flags.c - server/flags.c: the tenant and key commands, their actions and flags, the
 * new value types (quota words, a bounded double, long long), command-line-only flags that
 * ignore the environment, and the help output generated from the table. */
#include <stdlib.h>
#include <unistd.h>

#include "server/flags.h"
#include "tests/unit/harness.h"

#define ARGC(a) ((int)(sizeof(a) / sizeof(a)[0]))

/* Parse argv; the messages land in *msg (malloc'd, caller frees). */
static int parse(srv_config_t *cfg, int argc, char **argv, char **msg)
{
    size_t len = 0;
    FILE *err = open_memstream(msg, &len);
    FILE *out = fopen("/dev/null", "w");
    ASSERT(err && out);
    int status = srv_flags_parse(cfg, argc, argv, out, err);
    fclose(err);
    fclose(out);
    return status;
}

/* Exit status of one argv, message discarded unless `want` is absent from it. */
static void expect_status(int want_status, const char *want_msg, int argc, char **argv)
{
    srv_config_t cfg;
    char *msg = NULL;
    int status = parse(&cfg, argc, argv, &msg);
    if (status != want_status || (want_msg && !strstr(msg, want_msg)))
        HARNESS_FAIL("argv[1..] = %s %s ...: status %d (want %d), message '%s' (want '%s')",
                     argv[1], argc > 2 ? argv[2] : "", status, want_status, msg,
                     want_msg ? want_msg : "");
    free(msg);
}

TEST(defaults_of_new_fields)
{
    char *argv[] = {"adapterd"};
    srv_config_t cfg;
    char *msg = NULL;
    ASSERT_EQ(parse(&cfg, ARGC(argv), argv, &msg), -1);
    free(msg);
    ASSERT_EQ(cfg.cmd, SRV_CMD_SERVE);
    ASSERT_EQ(cfg.insecure_no_auth, 0);
    ASSERT_EQ(cfg.tenant_max_concurrent, 0);
    ASSERT_EQ(cfg.tenant_tokens_per_min, 0);
    ASSERT_EQ(cfg.tenant_max_stored_bytes, 0);
    ASSERT_EQ(cfg.q_max_concurrent, -1);
    ASSERT_EQ(cfg.q_tokens_per_min, -1);
    ASSERT_EQ(cfg.q_max_stored_bytes, -1);
    ASSERT_NEAR(cfg.share, 1.0, 0);
    ASSERT_STREQ(cfg.role, "tenant");
    ASSERT_STREQ(cfg.tenant, "");
    ASSERT_EQ(cfg.given, 0);
}

TEST(serve_flags_parse)
{
    char *argv[] = {"adapterd",
                    "serve",
                    "--insecure-no-auth",
                    "1",
                    "--tenant-max-concurrent=8",
                    "--tenant-tokens-per-min",
                    "600000",
                    "--tenant-max-stored-bytes",
                    "1099511627776"};
    srv_config_t cfg;
    char *msg = NULL;
    ASSERT_EQ(parse(&cfg, ARGC(argv), argv, &msg), -1);
    free(msg);
    ASSERT_EQ(cfg.insecure_no_auth, 1);
    ASSERT_EQ(cfg.tenant_max_concurrent, 8);
    ASSERT_EQ(cfg.tenant_tokens_per_min, 600000);
    ASSERT_EQ(cfg.tenant_max_stored_bytes, 1LL << 40);
    char *bad[] = {"adapterd", "--insecure-no-auth", "2"};
    expect_status(2, "--insecure-no-auth", ARGC(bad), bad);
    char *neg[] = {"adapterd", "--tenant-max-concurrent", "-1"};
    expect_status(2, "--tenant-max-concurrent", ARGC(neg), neg);
}

TEST(serve_defaults_from_environment)
{
    setenv("ADAPTERD_TENANT_TOKENS_PER_MIN", "1234", 1);
    char *argv[] = {"adapterd"};
    srv_config_t cfg;
    char *msg = NULL;
    ASSERT_EQ(parse(&cfg, ARGC(argv), argv, &msg), -1);
    free(msg);
    ASSERT_EQ(cfg.tenant_tokens_per_min, 1234);
    unsetenv("ADAPTERD_TENANT_TOKENS_PER_MIN");
}

TEST(tenant_add_with_quotas)
{
    char *argv[] = {"adapterd",
                    "tenant",
                    "add",
                    "acme",
                    "--max-concurrent",
                    "inherit",
                    "--tokens-per-min",
                    "unlimited",
                    "--max-stored-bytes=5000",
                    "--share",
                    "0.25",
                    "--data-dir",
                    "/tmp/x"};
    srv_config_t cfg;
    char *msg = NULL;
    ASSERT_EQ(parse(&cfg, ARGC(argv), argv, &msg), -1);
    free(msg);
    ASSERT_EQ(cfg.cmd, SRV_CMD_TENANT);
    ASSERT_STREQ(cfg.cli_action, "add");
    ASSERT_STREQ(cfg.cli_arg, "acme");
    ASSERT_STREQ(cfg.data_dir, "/tmp/x");
    ASSERT_EQ(cfg.q_max_concurrent, -1);
    ASSERT_EQ(cfg.q_tokens_per_min, 0);
    ASSERT_EQ(cfg.q_max_stored_bytes, 5000);
    ASSERT_NEAR(cfg.share, 0.25, 0);
    ASSERT_EQ(cfg.given, SRV_GIVEN_MAX_CONCURRENT | SRV_GIVEN_TOKENS_PER_MIN |
                             SRV_GIVEN_MAX_STORED_BYTES | SRV_GIVEN_SHARE);
}

TEST(tenant_set_marks_only_given_flags)
{
    char *argv[] = {"adapterd", "tenant", "set", "acme", "--max-concurrent", "-1"};
    srv_config_t cfg;
    char *msg = NULL;
    ASSERT_EQ(parse(&cfg, ARGC(argv), argv, &msg), -1);
    free(msg);
    ASSERT_EQ(cfg.given, SRV_GIVEN_MAX_CONCURRENT);
    ASSERT_EQ(cfg.q_max_concurrent, -1);
}

TEST(bad_quota_and_share_values)
{
    const char *bad_share[] = {"0",     "-1",   "inf", "nan",     "1e3", " 1",
                               "1.2.3", "0x10", "",    "1000001", "."};
    for (size_t i = 0; i < sizeof bad_share / sizeof bad_share[0]; i++) {
        char *argv[] = {"adapterd", "tenant", "add", "a", "--share", (char *)bad_share[i]};
        expect_status(2, "--share", ARGC(argv), argv);
    }
    const char *bad_quota[] = {"-2", "inherits", "1.5", "", "1000001", "+3"};
    for (size_t i = 0; i < sizeof bad_quota / sizeof bad_quota[0]; i++) {
        char *argv[] = {"adapterd", "tenant", "add", "a", "--max-concurrent", (char *)bad_quota[i]};
        expect_status(2, "--max-concurrent", ARGC(argv), argv);
    }
    char *ok[] = {"adapterd", "tenant", "add", "a", "--share", "1000000"};
    expect_status(-1, NULL, ARGC(ok), ok);
}

TEST(key_actions)
{
    char *argv[] = {"adapterd", "key",   "add",     "--tenant", "acme",
                    "--role",   "admin", "--label", "ci bot"};
    srv_config_t cfg;
    char *msg = NULL;
    ASSERT_EQ(parse(&cfg, ARGC(argv), argv, &msg), -1);
    free(msg);
    ASSERT_EQ(cfg.cmd, SRV_CMD_KEY);
    ASSERT_STREQ(cfg.cli_action, "add");
    ASSERT(cfg.cli_arg == NULL);
    ASSERT_STREQ(cfg.role, "admin");
    ASSERT_STREQ(cfg.label, "ci bot");
    ASSERT_EQ(cfg.given, SRV_GIVEN_TENANT | SRV_GIVEN_ROLE | SRV_GIVEN_LABEL);
    char *revoke[] = {"adapterd", "key", "revoke", "0123456789ab"};
    expect_status(-1, NULL, ARGC(revoke), revoke);
    char *list[] = {"adapterd", "key", "list", "--tenant", "acme"};
    expect_status(-1, NULL, ARGC(list), list);
}

TEST(usage_errors_exit_2)
{
    char *a[] = {"adapterd", "key", "add", "--tenant", "t", "--role", "root"};
    expect_status(2, "--role", ARGC(a), a);
    char *b[] = {"adapterd", "key", "add"};
    expect_status(2, "--tenant", ARGC(b), b);
    char *c[] = {"adapterd", "tenant"};
    expect_status(2, "needs an action", ARGC(c), c);
    char *d[] = {"adapterd", "tenant", "remove", "x"};
    expect_status(2, "unknown tenant action 'remove'", ARGC(d), d);
    char *e[] = {"adapterd", "tenant", "list", "--share", "2"};
    expect_status(2, "--share does not apply to tenant list", ARGC(e), e);
    char *f[] = {"adapterd", "key", "revoke"};
    expect_status(2, "missing argument", ARGC(f), f);
    char *g[] = {"adapterd", "key", "list", "extra"};
    expect_status(2, "unexpected argument", ARGC(g), g);
    char *h[] = {"adapterd", "tenant", "add", "x", "--port", "1"};
    expect_status(2, "--port does not apply to tenant", ARGC(h), h);
    char *i[] = {"adapterd", "--role", "admin"};
    expect_status(2, "--role does not apply to serve", ARGC(i), i);
    char *j[] = {"adapterd", "tenant", "add", "x", "y"};
    expect_status(2, "unexpected argument 'y'", ARGC(j), j);
}

TEST(cli_only_flags_ignore_the_environment)
{
    setenv("ADAPTERD_ROLE", "admin", 1);
    setenv("ADAPTERD_SHARE", "7", 1);
    setenv("ADAPTERD_TENANT", "evil", 1);
    char *argv[] = {"adapterd", "key", "add", "--tenant", "acme"};
    srv_config_t cfg;
    char *msg = NULL;
    ASSERT_EQ(parse(&cfg, ARGC(argv), argv, &msg), -1);
    free(msg);
    ASSERT_STREQ(cfg.role, "tenant");
    ASSERT_STREQ(cfg.tenant, "acme");
    ASSERT_NEAR(cfg.share, 1.0, 0);
    /* ...while the shared flags still read it */
    setenv("ADAPTERD_DATA_DIR", "/tmp/from-env", 1);
    ASSERT_EQ(parse(&cfg, ARGC(argv), argv, &msg), -1);
    free(msg);
    ASSERT_STREQ(cfg.data_dir, "/tmp/from-env");
    unsetenv("ADAPTERD_ROLE");
    unsetenv("ADAPTERD_SHARE");
    unsetenv("ADAPTERD_TENANT");
    unsetenv("ADAPTERD_DATA_DIR");
}

TEST(cli_only_flags_refused_in_config_file)
{
    char path[] = "/tmp/test_flags_XXXXXX";
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    FILE *fp = fdopen(fd, "w");
    fputs("data-dir = /tmp/conf-dir\nrole = admin\n", fp);
    fclose(fp);
    char *argv[] = {"adapterd", "key", "list", "--config", path};
    expect_status(2, "'role' is taken from the command line only", ARGC(argv), argv);
    fp = fopen(path, "w");
    fputs("data-dir = /tmp/conf-dir\nport = 9000\n", fp);
    fclose(fp);
    srv_config_t cfg;
    char *msg = NULL;
    ASSERT_EQ(parse(&cfg, ARGC(argv), argv, &msg), -1);
    free(msg);
    ASSERT_STREQ(cfg.data_dir, "/tmp/conf-dir");
    unlink(path);
}

TEST(help_lists_commands_and_every_flag)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    srv_flags_print_help(out);
    fclose(out);
    const char *want[] = {"adapterd tenant add NAME",
                          "adapterd tenant set NAME",
                          "adapterd tenant list",
                          "adapterd key add --tenant NAME",
                          "adapterd key list",
                          "adapterd key revoke ID",
                          "--insecure-no-auth",
                          "ADAPTERD_TENANT_MAX_STORED_BYTES",
                          "--share W",
                          "env: none, command line only"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(text, want[i]))
            HARNESS_FAIL("--help lacks '%s'", want[i]);
    free(text);
    text = NULL;
    out = open_memstream(&text, &len);
    srv_flags_print_markdown(out);
    fclose(out);
    ASSERT(strstr(text, "| `--tenant NAME` | (command line only) | (none) | import, key |"));
    ASSERT(strstr(text, "| `--data-dir DIR` | `ADAPTERD_DATA_DIR` | `./data` | "
                        "serve, import, tenant, key |"));
    ASSERT(strstr(text, "| `--max-concurrent N` | (command line only) | `inherit` | tenant |"));
    free(text);
}
