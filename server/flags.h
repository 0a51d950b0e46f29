/* flags.h - the command line of adapterd: one option table, three sources.
 *
 * Every option is one row of a static table (flags.c): name, type, default, range, the
 * commands it applies to and a help line. A value comes from, in order of precedence, the
 * flag (--name VALUE or --name=VALUE), the environment variable ADAPTERD_<NAME> (upper
 * case, '-' -> '_'), or the table's default. `--help` and `--help-markdown` are printed
 * from the same table, so the documentation cannot drift from the parser.
 *
 * Commands: `adapterd [serve] [flags]` (the default), `adapterd import DIR --name NAME
 * [flags]`, and the offline tenant and key commands run by server/cli.c:
 * `adapterd tenant add|set NAME [quota flags]`, `adapterd tenant list`,
 * `adapterd key add --tenant T [--role R] [--label L]`, `adapterd key list [--tenant T]`,
 * `adapterd key revoke ID`. The parser checks the action, its argument and which flags
 * it takes (exit 2 otherwise); cli.c checks nothing the parser can.
 *
 * A --config FILE (or ADAPTERD_CONFIG) holds `name = value` lines with the same names;
 * precedence: flag > environment > config file > default. Flags that apply only to the
 * tenant and key commands (--tenant, --role, --label, --max-concurrent, --tokens-per-min,
 * --max-stored-bytes, --share) are read from the command line only: an ambient
 * ADAPTERD_ROLE=admin must never silently mint admin keys.
 *
 * Threads: main thread, before anything else starts. Ownership: string values in
 * srv_config_t point into argv, the environment, the config file's text (kept for the
 * process's life) or static defaults; they live as long as the process. */
#ifndef SERVER_FLAGS_H
#define SERVER_FLAGS_H

#include <stddef.h>
#include <stdio.h>

#define SRV_VERSION "0.1.0"

typedef enum {
    SRV_CMD_SERVE = 1,
    SRV_CMD_IMPORT = 2,
    SRV_CMD_TENANT = 4,
    SRV_CMD_KEY = 8,
} srv_cmd_t;

/* Bits of srv_config_t.given: which command-line-only flags were on the command line
 * (`tenant set` overlays only those on the stored row). */
enum {
    SRV_GIVEN_TENANT = 1 << 0,
    SRV_GIVEN_ROLE = 1 << 1,
    SRV_GIVEN_LABEL = 1 << 2,
    SRV_GIVEN_MAX_CONCURRENT = 1 << 3,
    SRV_GIVEN_TOKENS_PER_MIN = 1 << 4,
    SRV_GIVEN_MAX_STORED_BYTES = 1 << 5,
    SRV_GIVEN_SHARE = 1 << 6,
};

enum { SRV_LOG_ERROR, SRV_LOG_WARN, SRV_LOG_INFO, SRV_LOG_DEBUG };
enum { SRV_LOG_FORMAT_TEXT, SRV_LOG_FORMAT_JSON };

typedef struct {
    srv_cmd_t cmd;
    const char *config; /* --config FILE ("" = none) */
    const char *import_dir; /* import: the PEFT folder (positional) */

    const char *host;
    int port;
    const char *model_dir;
    const char *model_name;   /* "" = the model folder's base name */
    const char *adapters_dir; /* "" = none */
    const char *chat_template; /* "" = the model's tokenizer_config.json */
    const char *data_dir;
    const char *name; /* import: the adapter's name */
    const char *experts; /* import of a router: its experts' specs, comma-separated ("" = none) */
    int threads;

    size_t max_body_bytes;
    size_t max_header_bytes;
    size_t max_request_line_bytes;
    int max_headers;
    int header_timeout_ms;
    int body_timeout_ms;
    int idle_timeout_ms;
    int max_connections;
    int max_keepalive_requests;
    int max_connection_age_ms;
    int heap_trim_idle_ms; /* 0: never trim */
    int drain_timeout_ms;
    size_t max_write_buffer_bytes;

    int max_batch_tokens;
    int max_seqs;
    int max_queue;
    size_t kv_cache_bytes;
    int kv_block_tokens;
    int max_rank;
    int log_level;  /* SRV_LOG_* */
    int log_format; /* SRV_LOG_FORMAT_* */

    size_t adapter_cache_bytes; /* store: resident adapter budget */
    size_t max_upload_bytes;    /* store + api: weights file / upload body cap */
    int adapter_load_wait_ms;
    int blob_gc_interval_ms; /* 0 = never */
    int allow_local_adapter_paths;
    const char *adapter_roots; /* comma-separated absolute folders, "" = none */

    /* serve: auth and the quotas of tenants whose own value is "inherit" (0 = unlimited) */
    int insecure_no_auth; /* 1: no API keys needed even on a non-loopback address */
    long long tenant_max_concurrent;
    long long tenant_tokens_per_min;
    size_t tenant_max_stored_bytes;

    /* tenant and key commands (command line only; see SRV_GIVEN_*) */
    const char *cli_action; /* "add", "set", "list", "revoke" */
    const char *cli_arg;    /* tenant add/set: NAME; key revoke: ID; else NULL */
    const char *tenant;     /* key add / key list --tenant ("" = none: list all) */
    const char *role;       /* key add: "tenant" or "admin" (checked by the parser) */
    const char *label;      /* key add: "" or free text */
    /* -1 = inherit the serve defaults (STORE_QUOTA_INHERIT), 0 = unlimited, else the limit */
    long long q_max_concurrent, q_tokens_per_min, q_max_stored_bytes;
    double share; /* fair-share weight, > 0 */
    unsigned given; /* SRV_GIVEN_* */
} srv_config_t;

/* Fill cfg from defaults, the environment (env may be NULL: use the process environment)
 * and argv. Returns -1 when the caller should go on with cfg->cmd; otherwise the exit
 * status: 0 after --help / --help-markdown / --version (printed to out), 2 after a bad
 * flag, value or command (a message naming it printed to err). serve checks that each
 * --adapter-roots entry is an absolute path to an existing folder (else 2, naming it). */
int srv_flags_parse(srv_config_t *cfg, int argc, char **argv, FILE *out, FILE *err);

/* The help text / the Markdown table of every option (used by --help, docs). */
void srv_flags_print_help(FILE *out);
void srv_flags_print_markdown(FILE *out);

#endif
