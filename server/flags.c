/* flags.c - the option table of adapterd and its parser (see flags.h).
 *
 * The table is the single source of truth: defaults, ranges, environment variable names,
 * the --help text and the Markdown table in docs/OPERATIONS.md all come from it. Values are
 * parsed strictly (whole string, decimal, in range); a bad value names the flag or the
 * environment variable it came from. Main thread only. */
#include "server/flags.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* FLAG_LLONG: a long long in [min, max]. FLAG_QUOTA: a long long, "inherit" (or -1) = -1,
 * "unlimited" = 0, or a number in [1, max]. FLAG_DOUBLE: a finite decimal in (min, max]
 * (the lower bound is exclusive: a share of 0 would starve its tenant). */
typedef enum {
    FLAG_STR,
    FLAG_INT,
    FLAG_SIZE,
    FLAG_LLONG,
    FLAG_QUOTA,
    FLAG_DOUBLE,
    FLAG_LEVEL,
    FLAG_FORMAT,
} flag_type_t;

typedef struct {
    const char *name; /* without the leading "--" */
    flag_type_t type;
    size_t offset;   /* into srv_config_t */
    const char *def; /* default, as it would be typed */
    long long min, max;
    unsigned cmds; /* SRV_CMD_* this flag applies to */
    const char *metavar;
    const char *help;
} flag_t;

#define OFF(field) offsetof(srv_config_t, field)
#define SERVE SRV_CMD_SERVE
#define BOTH (SRV_CMD_SERVE | SRV_CMD_IMPORT)
#define IMPORT SRV_CMD_IMPORT
#define TENANT SRV_CMD_TENANT
#define KEY SRV_CMD_KEY
#define ALL (SRV_CMD_SERVE | SRV_CMD_IMPORT | SRV_CMD_TENANT | SRV_CMD_KEY)
#define CLI_ONLY (SRV_CMD_TENANT | SRV_CMD_KEY) /* flags of only these: argv, no env/config */
#define I32 INT_MAX
#define MS_MAX 86400000LL /* one day */
#define TOKENS_MAX 1000000000000LL /* per minute: far beyond any one machine */
#define BYTES_MAX (1LL << 50)

static const flag_t flags[] = {
    {"config", FLAG_STR, OFF(config), "", 0, 0, ALL, "FILE",
     "a file of `name = value` lines (flag names without --, # comments, \"quotes\" keep "
     "spaces); its values rank under the environment and the flags"},
    {"host", FLAG_STR, OFF(host), "127.0.0.1", 0, 0, SERVE, "ADDR",
     "address to listen on (IPv4 or IPv6 literal)"},
    {"port", FLAG_INT, OFF(port), "8080", 0, 65535, SERVE, "N", "TCP port to listen on"},
    {"model", FLAG_STR, OFF(model_dir), "./data/model", 0, 0, BOTH, "DIR",
     "Hugging Face model folder (config.json, safetensors weights, tokenizer.json)"},
    {"model-name", FLAG_STR, OFF(model_name), "", 0, 0, SERVE, "NAME",
     "name the base model is served as (empty: the model folder's base name)"},
    {"adapters-dir", FLAG_STR, OFF(adapters_dir), "", 0, 0, SERVE, "DIR",
     "import every PEFT sub-folder of DIR at start-up, named after the sub-folder, router "
     "folders (X-LoRA, router_config.json) after the adapters (empty: none)"},
    {"chat-template", FLAG_STR, OFF(chat_template), "", 0, 0, SERVE, "FILE",
     "Jinja chat template for /v1/chat/completions (empty: chat_template of the model's "
     "tokenizer_config.json; none: chat answers 400)"},
    {"data-dir", FLAG_STR, OFF(data_dir), "./data", 0, 0, ALL, "DIR",
     "state folder: adapterd.db (the index of adapters, tenants and API keys), adapterd.lock, "
     "blobs/ (adapter files by sha256) and tmp/"},
    {"name", FLAG_STR, OFF(name), "", 0, 0, IMPORT, "NAME",
     "name the imported adapter (or router) is indexed under"},
    {"experts", FLAG_STR, OFF(experts), "", 0, 0, IMPORT, "LIST",
     "router folders without expert sub-folders: the stored adapters (NAME or NAME@VERSION, "
     "comma-separated, in the config's expert order) it routes over (empty: the config's "
     "expert names)"},
    {"threads", FLAG_INT, OFF(threads), "2", 1, 256, BOTH, "N", "BLAS threads"},
    {"max-body-bytes", FLAG_SIZE, OFF(max_body_bytes), "2000000", 0, 1LL << 40, SERVE, "BYTES",
     "largest request body read into memory (adapter uploads are streamed: "
     "--max-upload-bytes); larger Content-Length gets 413 before the body is read"},
    {"max-header-bytes", FLAG_SIZE, OFF(max_header_bytes), "16384", 256, 1 << 20, SERVE, "BYTES",
     "largest request head (request line + headers); more gets 431"},
    {"max-request-line-bytes", FLAG_SIZE, OFF(max_request_line_bytes), "8192", 64, 1 << 20, SERVE,
     "BYTES", "longest request line; longer gets 414"},
    {"max-headers", FLAG_INT, OFF(max_headers), "100", 1, 10000, SERVE, "N",
     "most header fields in a request; more gets 431"},
    {"header-timeout-ms", FLAG_INT, OFF(header_timeout_ms), "10000", 1, MS_MAX, SERVE, "MS",
     "deadline for a whole request head, from its first byte; then 408 and close"},
    {"body-timeout-ms", FLAG_INT, OFF(body_timeout_ms), "10000", 1, MS_MAX, SERVE, "MS",
     "longest pause between two reads of a request body; then 408 and close"},
    {"idle-timeout-ms", FLAG_INT, OFF(idle_timeout_ms), "75000", 1, MS_MAX, SERVE, "MS",
     "keep-alive: an idle connection is closed (silently) after this"},
    {"max-connections", FLAG_INT, OFF(max_connections), "1024", 1, 1000000, SERVE, "N",
     "open client connections; connections over the cap are closed at once"},
    {"max-keepalive-requests", FLAG_INT, OFF(max_keepalive_requests), "1000", 1, I32, SERVE, "N",
     "requests served on one connection; the last one is answered with Connection: close"},
    {"max-connection-age-ms", FLAG_INT, OFF(max_connection_age_ms), "3600000", 1, MS_MAX, SERVE,
     "MS",
     "keep-alive: a request that starts on an older connection is answered with Connection: "
     "close, and an idle one that old is closed"},
    {"heap-trim-idle-ms", FLAG_INT, OFF(heap_trim_idle_ms), "2000", 0, MS_MAX, SERVE, "MS",
     "after this long without an engine step, return freed heap pages to the kernel (once "
     "per idle period); 0 = never"},
    {"drain-timeout-ms", FLAG_INT, OFF(drain_timeout_ms), "10000", 0, MS_MAX, SERVE, "MS",
     "on SIGINT/SIGTERM: how long in-flight requests may take to finish"},
    {"max-write-buffer-bytes", FLAG_SIZE, OFF(max_write_buffer_bytes), "4194304", 65536, 1LL << 34,
     SERVE, "BYTES",
     "response bytes queued for a client that does not read; more closes the connection"},
    {"max-batch-tokens", FLAG_INT, OFF(max_batch_tokens), "2048", 1, 1 << 20, SERVE, "N",
     "engine: rows per batched step (one decode token per running sequence, then prompt "
     "chunks); longer prompts are prefilled in chunks across steps"},
    {"max-seqs", FLAG_INT, OFF(max_seqs), "64", 1, 4096, SERVE, "N",
     "engine: sequences running at once (capped at --max-batch-tokens); more wait in the "
     "queue"},
    {"max-queue", FLAG_INT, OFF(max_queue), "256", 1, 1000000, SERVE, "N",
     "engine: requests one tenant may have waiting to run (all tenants together: 4x); a "
     "request beyond it gets 429 with Retry-After"},
    {"kv-cache-bytes", FLAG_SIZE, OFF(kv_cache_bytes), "1073741824", 1, 1LL << 46, SERVE, "BYTES",
     "engine: KV cache shared by all sequences, in blocks of --kv-block-tokens positions; "
     "sequences wait (or are preempted and recomputed) for free blocks, and a request whose "
     "prompt plus max_tokens can never fit gets 400"},
    {"kv-block-tokens", FLAG_INT, OFF(kv_block_tokens), "16", 1, 65536, SERVE, "N",
     "engine: positions per KV cache block (the unit the cache is handed out in)"},
    {"max-rank", FLAG_INT, OFF(max_rank), "256", 0, 65536, SERVE, "N",
     "engine: largest LoRA rank r the step scratch is sized for at start (each adapter of "
     "a composition runs on its own); a larger rank still runs but allocates during the step"},
    {"adapter-cache-bytes", FLAG_SIZE, OFF(adapter_cache_bytes), "2147483648", 1, 1LL << 46, BOTH,
     "BYTES",
     "store: memory for resident adapters (f32 weights); least recently used idle adapters "
     "are evicted to load others, an adapter larger than this is refused"},
    {"max-upload-bytes", FLAG_SIZE, OFF(max_upload_bytes), "1073741824", 1, 1LL << 40, BOTH,
     "BYTES",
     "store: largest adapter weights file, and the body cap of POST /v1/adapters uploads "
     "(streamed to disk); larger gets 413"},
    {"adapter-load-wait-ms", FLAG_INT, OFF(adapter_load_wait_ms), "30000", 0, MS_MAX, SERVE, "MS",
     "store: how long a request waits for adapter cache room (adapters in use are never "
     "evicted); then 503 cache_full with Retry-After"},
    {"blob-gc-interval-ms", FLAG_INT, OFF(blob_gc_interval_ms), "600000", 0, MS_MAX, SERVE, "MS",
     "store: how often blob files no adapter references are deleted (0: only at start)"},
    {"allow-local-adapter-paths", FLAG_INT, OFF(allow_local_adapter_paths), "0", 0, 1, SERVE, "N",
     "1 enables vLLM's POST /v1/load_lora_adapter and /v1/unload_lora_adapter (lora_path "
     "must lie inside --adapter-roots); 0 answers them 404"},
    {"adapter-roots", FLAG_STR, OFF(adapter_roots), "", 0, 0, SERVE, "DIRS",
     "comma-separated absolute folders that load_lora_adapter may read adapters from "
     "(empty: none)"},
    {"insecure-no-auth", FLAG_INT, OFF(insecure_no_auth), "0", 0, 1, SERVE, "N",
     "1 serves without API keys on a non-loopback address (never in production)"},
    {"tenant-max-concurrent", FLAG_LLONG, OFF(tenant_max_concurrent), "0", 0, 1000000, SERVE,
     "N",
     "default per-tenant cap on sequences waiting or running at once, for tenants whose own "
     "quota is inherit (0: unlimited)"},
    {"tenant-tokens-per-min", FLAG_LLONG, OFF(tenant_tokens_per_min), "0", 0, TOKENS_MAX, SERVE,
     "N",
     "default per-tenant cap on prompt plus generated tokens per minute, for tenants whose own "
     "quota is inherit (0: unlimited)"},
    {"tenant-max-stored-bytes", FLAG_SIZE, OFF(tenant_max_stored_bytes), "0", 0, BYTES_MAX, SERVE,
     "BYTES",
     "default per-tenant cap on the weights bytes of its stored adapter versions, for tenants "
     "whose own quota is inherit (0: unlimited)"},
    {"tenant", FLAG_STR, OFF(tenant), "", 0, 0, KEY | IMPORT, "NAME",
     "key add: the tenant the new key acts for (required); key list: only this tenant's keys; "
     "import: the tenant the adapter is stored for (empty: default)"},
    {"role", FLAG_STR, OFF(role), "tenant", 0, 0, KEY, "ROLE",
     "key add: tenant (its own adapters) or admin (every tenant, tenants and keys)"},
    {"label", FLAG_STR, OFF(label), "", 0, 0, KEY, "TEXT",
     "key add: a note shown in key list (up to 64 printable ASCII characters)"},
    {"max-concurrent", FLAG_QUOTA, OFF(q_max_concurrent), "inherit", -1, 1000000, TENANT, "N",
     "tenant add/set: sequences waiting or running at once (inherit: "
     "--tenant-max-concurrent of the daemon; unlimited or 0: no cap)"},
    {"tokens-per-min", FLAG_QUOTA, OFF(q_tokens_per_min), "inherit", -1, TOKENS_MAX, TENANT, "N",
     "tenant add/set: prompt plus generated tokens per minute (inherit: "
     "--tenant-tokens-per-min; unlimited or 0: no cap)"},
    {"max-stored-bytes", FLAG_QUOTA, OFF(q_max_stored_bytes), "inherit", -1, BYTES_MAX, TENANT,
     "BYTES",
     "tenant add/set: weights bytes of its stored adapter versions (inherit: "
     "--tenant-max-stored-bytes; unlimited or 0: no cap)"},
    {"share", FLAG_DOUBLE, OFF(share), "1", 0, 1000000, TENANT, "W",
     "tenant add/set: fair-share weight of its sequences against other tenants' (> 0)"},
    {"log-level", FLAG_LEVEL, OFF(log_level), "info", 0, 0, BOTH, "LEVEL",
     "error, warn, info (one line per request) or debug"},
    {"log-format", FLAG_FORMAT, OFF(log_format), "text", 0, 0, BOTH, "FORMAT",
     "text, or json: one JSON object per line on stderr (requests carry request_id, route, "
     "status, bytes, duration_ms)"},
};
#define N_FLAGS (sizeof flags / sizeof flags[0])
_Static_assert(N_FLAGS <= 64, "srv_flags_parse tracks given flags in a uint64_t");

static const char *const level_names[] = {"error", "warn", "info", "debug"};
static const char *const format_names[] = {"text", "json"}; /* SRV_LOG_FORMAT_* order */

static const char usage[] =
    "usage: adapterd [serve] [flags]\n"
    "       adapterd import DIR --name NAME [--data-dir D] [--model M]\n"
    "       adapterd tenant add NAME [--max-concurrent N] [--tokens-per-min N]\n"
    "                               [--max-stored-bytes BYTES] [--share W]\n"
    "       adapterd tenant set NAME [same flags as add]\n"
    "       adapterd tenant list\n"
    "       adapterd key add --tenant NAME [--role tenant|admin] [--label TEXT]\n"
    "       adapterd key list [--tenant NAME]\n"
    "       adapterd key revoke ID\n"
    "       adapterd --help | --help-markdown | --version\n"
    "\n"
    "Serves one base model with per-request LoRA adapters over an OpenAI-compatible HTTP API.\n"
    "`import` validates the PEFT folder DIR against the base model, indexes it in the store\n"
    "and prints the stored row as JSON.\n"
    "`tenant` and `key` manage tenants and API keys in --data-dir while no daemon runs there\n"
    "(a running daemon holds the folder: use its admin API, POST /v1/admin/tenants and\n"
    "POST /v1/admin/keys). Quotas are inherit (the daemon's --tenant-* defaults), unlimited\n"
    "(or 0) or a number. `key add` prints the new secret, once, on stdout.\n"
    "\n"
    "Every flag can also be set by its environment variable or in a --config file; a flag\n"
    "wins over the environment, the environment over the config file, the config file over\n"
    "the default. Flags that only tenant and key take are read from the command line alone.\n";

static void env_name(const flag_t *f, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(buf, cap, "ADAPTERD_");
    for (const char *p = f->name; *p && n + 1 < cap; p++)
        buf[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    buf[n] = '\0';
}

static const flag_t *flag_find(const char *name, size_t len)
{
    for (size_t i = 0; i < N_FLAGS; i++)
        if (strlen(flags[i].name) == len && memcmp(flags[i].name, name, len) == 0)
            return &flags[i];
    return NULL;
}

/* Strict decimal: the whole string, no sign games, in [min, max]. */
static bool parse_ll(const char *s, long long min, long long max, long long *out)
{
    if (!isdigit((unsigned char)s[0]))
        return false;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* A quota: "inherit" or "-1" -> -1, "unlimited" or "0" -> 0, else a number in [1, max]. */
static bool parse_quota(const char *s, long long max, long long *out)
{
    if (strcmp(s, "inherit") == 0 || strcmp(s, "-1") == 0) {
        *out = -1;
        return true;
    }
    if (strcmp(s, "unlimited") == 0) {
        *out = 0;
        return true;
    }
    return parse_ll(s, 0, max, out);
}

/* Plain decimal: digits and '.' only (strtod alone would take " 1", "inf", "nan", "0x1p3"),
 * the whole string, finite, in (min, max]. */
static bool parse_double(const char *s, double min, double max, double *out)
{
    if (!s[0] || strspn(s, "0123456789.") != strlen(s))
        return false;
    errno = 0;
    char *end = NULL;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || !(v > min) || v > max)
        return false;
    *out = v;
    return true;
}

static bool flag_set_number(char *field, const flag_t *f, const char *value, const char *src,
                            FILE *err)
{
    long long v = 0;
    double d = 0;
    switch (f->type) {
    case FLAG_DOUBLE:
        if (!parse_double(value, (double)f->min, (double)f->max, &d)) {
            fprintf(err, "adapterd: %s: '%s' is not a number greater than %lld and at most %lld\n",
                    src, value, f->min, f->max);
            return false;
        }
        *(double *)field = d;
        return true;
    case FLAG_QUOTA:
        if (!parse_quota(value, f->max, &v)) {
            fprintf(err,
                    "adapterd: %s: '%s' is not inherit (-1), unlimited (0) or a whole number "
                    "in [1, %lld]\n",
                    src, value, f->max);
            return false;
        }
        *(long long *)field = v;
        return true;
    default:
        if (!parse_ll(value, f->min, f->max, &v)) {
            fprintf(err, "adapterd: %s: '%s' is not a whole number in [%lld, %lld]\n", src, value,
                    f->min, f->max);
            return false;
        }
        if (f->type == FLAG_INT)
            *(int *)field = (int)v;
        else if (f->type == FLAG_LLONG)
            *(long long *)field = v;
        else
            *(size_t *)field = (size_t)v;
        return true;
    }
}

/* Store value into cfg for f. `src` names where it came from, for the error message. */
static bool flag_set(srv_config_t *cfg, const flag_t *f, const char *value, const char *src,
                     FILE *err)
{
    char *field = (char *)cfg + f->offset;
    switch (f->type) {
    case FLAG_STR:
        *(const char **)field = value;
        return true;
    case FLAG_INT:
    case FLAG_SIZE:
    case FLAG_LLONG:
    case FLAG_QUOTA:
    case FLAG_DOUBLE:
        return flag_set_number(field, f, value, src, err);
    case FLAG_LEVEL:
        for (int i = 0; i < 4; i++)
            if (strcmp(value, level_names[i]) == 0) {
                *(int *)field = i;
                return true;
            }
        fprintf(err, "adapterd: %s: '%s' is not one of error, warn, info, debug\n", src, value);
        return false;
    case FLAG_FORMAT:
        for (int i = 0; i < 2; i++)
            if (strcmp(value, format_names[i]) == 0) {
                *(int *)field = i;
                return true;
            }
        fprintf(err, "adapterd: %s: '%s' is not one of text, json\n", src, value);
        return false;
    }
    return false;
}

static bool apply_defaults(srv_config_t *cfg, FILE *err)
{
    for (size_t i = 0; i < N_FLAGS; i++)
        if (!flag_set(cfg, &flags[i], flags[i].def, "built-in default", err))
            return false;
    return true;
}

/* Flags of the tenant and key commands (and --tenant, which import shares) are
 * per-invocation arguments, never ambient. */
static bool flag_cli_only(const flag_t *f)
{
    return (f->cmds & CLI_ONLY) && (f->cmds & ~(unsigned)(CLI_ONLY | SRV_CMD_IMPORT)) == 0;
}

static bool apply_env(srv_config_t *cfg, FILE *err)
{
    for (size_t i = 0; i < N_FLAGS; i++) {
        if (flag_cli_only(&flags[i]))
            continue;
        char src[96];
        env_name(&flags[i], src, sizeof src);
        const char *env = getenv(src);
        if (env && !flag_set(cfg, &flags[i], env, src, err))
            return false;
    }
    return true;
}

/* ---- the config file: "name = value" lines, under the environment and the flags ---- */

#define CONFIG_MAX_BYTES (1u << 20)

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = 0;
    return s;
}

/* One line (modified in place; its value stays referenced by cfg). */
static bool config_line(srv_config_t *cfg, const char *file, int line_no, char *line, FILE *err)
{
    char src[600];
    line = trim(line);
    if (!line[0] || line[0] == '#')
        return true;
    char *eq = strchr(line, '=');
    if (!eq) {
        fprintf(err, "adapterd: %s:%d: expected `name = value`\n", file, line_no);
        return false;
    }
    *eq = 0;
    char *name = trim(line), *value = trim(eq + 1);
    size_t vn = strlen(value);
    if (vn >= 2 && value[0] == '"' && value[vn - 1] == '"') { /* "quoted" keeps spaces */
        value[vn - 1] = 0;
        value++;
    }
    const flag_t *f = flag_find(name, strlen(name));
    if (!f || strcmp(name, "config") == 0) {
        fprintf(err, "adapterd: %s:%d: unknown option '%s' (names are the flags without --)\n",
                file, line_no, name);
        return false;
    }
    if (flag_cli_only(f)) {
        fprintf(err, "adapterd: %s:%d: '%s' is taken from the command line only\n", file,
                line_no, name);
        return false;
    }
    snprintf(src, sizeof src, "%s:%d: %s", file, line_no, f->name);
    return flag_set(cfg, f, value, src, err);
}

/* The file's text stays allocated for the process's life (string options point into it);
 * kept here so leak checkers see it is reachable. */
static char *config_text;

static bool apply_config_file(srv_config_t *cfg, const char *file, FILE *err)
{
    FILE *fp = fopen(file, "rb");
    if (!fp) {
        fprintf(err, "adapterd: config file %s: cannot open\n", file);
        return false;
    }
    char *buf = malloc(CONFIG_MAX_BYTES + 1);
    size_t n = buf ? fread(buf, 1, CONFIG_MAX_BYTES + 1, fp) : 0;
    fclose(fp);
    if (!buf || n > CONFIG_MAX_BYTES || memchr(buf, 0, n)) {
        fprintf(err, "adapterd: config file %s: %s\n", file,
                !buf ? "out of memory" : n > CONFIG_MAX_BYTES ? "larger than 1 MiB" : "NUL byte");
        free(buf);
        return false;
    }
    buf[n] = 0;
    int line_no = 1;
    for (char *line = buf, *next; line; line = next, line_no++) {
        next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        if (!config_line(cfg, file, line_no, line, err)) {
            free(buf); /* the caller exits with status 2; nothing reads cfg */
            return false;
        }
    }
    free(config_text); /* a second parse (tests) replaces the first */
    config_text = buf;
    return true;
}

/* --config FILE / --config=FILE on the command line, else ADAPTERD_CONFIG, else none. */
static const char *config_path(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            return argv[i + 1];
        if (strncmp(argv[i], "--config=", 9) == 0)
            return argv[i] + 9;
    }
    const char *env = getenv("ADAPTERD_CONFIG");
    return env && env[0] ? env : NULL;
}

/* ---- commands and the actions of tenant and key ---- */

static const struct {
    const char *name;
    srv_cmd_t cmd;
} commands[] = {{"serve", SRV_CMD_SERVE},
                {"import", SRV_CMD_IMPORT},
                {"tenant", SRV_CMD_TENANT},
                {"key", SRV_CMD_KEY}};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static const char *cmd_name(srv_cmd_t cmd)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (commands[i].cmd == cmd)
            return commands[i].name;
    return "?";
}

/* "serve, import" for a bitmask of commands. */
static void cmds_str(unsigned cmds, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = 0;
    for (size_t i = 0; i < N_COMMANDS && n < cap; i++)
        if (cmds & commands[i].cmd)
            n += (size_t)snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", commands[i].name);
}

#define Q_FLAGS \
    (SRV_GIVEN_MAX_CONCURRENT | SRV_GIVEN_TOKENS_PER_MIN | SRV_GIVEN_MAX_STORED_BYTES | \
     SRV_GIVEN_SHARE)

typedef struct {
    srv_cmd_t cmd;
    const char *name;
    bool needs_arg;   /* NAME or ID after the action */
    unsigned allowed; /* SRV_GIVEN_* flags it takes */
    const char *usage;
} action_t;

static const action_t actions[] = {
    {SRV_CMD_TENANT, "add", true, Q_FLAGS,
     "adapterd tenant add NAME [--max-concurrent N] [--tokens-per-min N] "
     "[--max-stored-bytes BYTES] [--share W]"},
    {SRV_CMD_TENANT, "set", true, Q_FLAGS, "adapterd tenant set NAME [same flags as add]"},
    {SRV_CMD_TENANT, "list", false, 0, "adapterd tenant list"},
    {SRV_CMD_KEY, "add", false, SRV_GIVEN_TENANT | SRV_GIVEN_ROLE | SRV_GIVEN_LABEL,
     "adapterd key add --tenant NAME [--role tenant|admin] [--label TEXT]"},
    {SRV_CMD_KEY, "list", false, SRV_GIVEN_TENANT, "adapterd key list [--tenant NAME]"},
    {SRV_CMD_KEY, "revoke", true, 0, "adapterd key revoke ID"},
};
#define N_ACTIONS (sizeof actions / sizeof actions[0])

/* The SRV_GIVEN_* bit of a command-line-only flag, else 0. */
static unsigned flag_mark(const flag_t *f)
{
    static const struct {
        size_t offset;
        unsigned bit;
    } marks[] = {
        {OFF(tenant), SRV_GIVEN_TENANT},
        {OFF(role), SRV_GIVEN_ROLE},
        {OFF(label), SRV_GIVEN_LABEL},
        {OFF(q_max_concurrent), SRV_GIVEN_MAX_CONCURRENT},
        {OFF(q_tokens_per_min), SRV_GIVEN_TOKENS_PER_MIN},
        {OFF(q_max_stored_bytes), SRV_GIVEN_MAX_STORED_BYTES},
        {OFF(share), SRV_GIVEN_SHARE},
    };
    for (size_t i = 0; i < sizeof marks / sizeof marks[0]; i++)
        if (marks[i].offset == f->offset)
            return marks[i].bit;
    return 0;
}

/* A positional argument: the command (first one only), import's DIR, or the action of
 * tenant/key and its NAME/ID. */
static bool take_positional(srv_config_t *cfg, const char *arg, int *n_pos, FILE *err)
{
    size_t c = 0;
    while (*n_pos == 0 && c < N_COMMANDS && strcmp(arg, commands[c].name) != 0)
        c++;
    if (*n_pos == 0 && c < N_COMMANDS) {
        cfg->cmd = commands[c].cmd;
    } else if (cfg->cmd == SRV_CMD_IMPORT && !cfg->import_dir) {
        cfg->import_dir = arg;
    } else if ((cfg->cmd & CLI_ONLY) && !cfg->cli_action) {
        cfg->cli_action = arg;
    } else if ((cfg->cmd & CLI_ONLY) && !cfg->cli_arg) {
        cfg->cli_arg = arg;
    } else {
        fprintf(err, "adapterd: unexpected argument '%s' (see adapterd --help)\n", arg);
        return false;
    }
    (*n_pos)++;
    return true;
}

/* One "--name[=value]" at argv[*i]; consumes the next argument as its value if needed. */
static bool take_flag(srv_config_t *cfg, int argc, char **argv, int *i, uint64_t *given, FILE *err)
{
    const char *arg = argv[*i] + 2;
    const char *eq = strchr(arg, '=');
    size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
    const flag_t *f = flag_find(arg, len);
    if (!f) {
        fprintf(err, "adapterd: unknown flag '--%.*s' (see adapterd --help)\n", (int)len, arg);
        return false;
    }
    const char *value = eq ? eq + 1 : NULL;
    if (!value) {
        if (*i + 1 >= argc) {
            fprintf(err, "adapterd: flag --%s needs a value (%s)\n", f->name, f->metavar);
            return false;
        }
        value = argv[++*i];
    }
    char src[80];
    snprintf(src, sizeof src, "flag --%s", f->name);
    *given |= 1ULL << (f - flags);
    cfg->given |= flag_mark(f);
    return flag_set(cfg, f, value, src, err);
}

/* Every comma-separated entry of --adapter-roots names an existing folder by an absolute
 * path; checked here so a typo fails at start-up with exit status 2, not at first use. */
static bool check_roots(const char *list, FILE *err)
{
    if (!list[0])
        return true;
    for (const char *p = list;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char dir[PATH_MAX];
        struct stat st;
        snprintf(dir, sizeof dir, "%.*s", (int)(len < sizeof dir ? len : sizeof dir - 1), p);
        if (dir[0] != '/' || len >= sizeof dir || stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
            fprintf(err,
                    "adapterd: --adapter-roots: '%.*s' is not an absolute path to an "
                    "existing folder\n",
                    (int)len, p);
            return false;
        }
        if (!comma)
            return true;
        p = comma + 1;
    }
}

static void print_actions(srv_cmd_t cmd, FILE *err)
{
    for (size_t i = 0; i < N_ACTIONS; i++)
        if (actions[i].cmd == cmd)
            fprintf(err, "  %s\n", actions[i].usage);
}

/* tenant/key: a known action, its NAME/ID (or none), only the flags it takes. */
static bool check_action(const srv_config_t *cfg, FILE *err)
{
    const char *cmd = cmd_name(cfg->cmd);
    const action_t *a = NULL;
    for (size_t i = 0; cfg->cli_action && i < N_ACTIONS; i++)
        if (actions[i].cmd == cfg->cmd && strcmp(actions[i].name, cfg->cli_action) == 0)
            a = &actions[i];
    if (!a) {
        if (cfg->cli_action)
            fprintf(err, "adapterd: unknown %s action '%s'; usage:\n", cmd, cfg->cli_action);
        else
            fprintf(err, "adapterd: %s needs an action; usage:\n", cmd);
        print_actions(cfg->cmd, err);
        return false;
    }
    if (a->needs_arg != (cfg->cli_arg != NULL)) {
        fprintf(err, "adapterd: %s %s: %s; usage: %s\n", cmd, a->name,
                a->needs_arg ? "missing argument" : "unexpected argument", a->usage);
        return false;
    }
    for (size_t i = 0; i < N_FLAGS; i++)
        if (flag_mark(&flags[i]) & cfg->given & ~a->allowed) {
            fprintf(err, "adapterd: flag --%s does not apply to %s %s\n", flags[i].name, cmd,
                    a->name);
            return false;
        }
    if (cfg->cmd == SRV_CMD_KEY && strcmp(a->name, "add") == 0 && !cfg->tenant[0]) {
        fprintf(err, "adapterd: key add needs --tenant NAME\n");
        return false;
    }
    if (strcmp(cfg->role, "tenant") != 0 && strcmp(cfg->role, "admin") != 0) {
        fprintf(err, "adapterd: flag --role: '%s' is not one of tenant, admin\n", cfg->role);
        return false;
    }
    return true;
}

static bool check_command(const srv_config_t *cfg, uint64_t given, FILE *err)
{
    for (size_t i = 0; i < N_FLAGS; i++)
        if ((given >> i & 1) && !(flags[i].cmds & cfg->cmd)) {
            fprintf(err, "adapterd: flag --%s does not apply to %s\n", flags[i].name,
                    cmd_name(cfg->cmd));
            return false;
        }
    if (cfg->cmd & CLI_ONLY)
        return check_action(cfg, err);
    if (cfg->cmd == SRV_CMD_IMPORT) {
        if (!cfg->import_dir) {
            fprintf(err, "adapterd: import needs the adapter folder: adapterd import DIR "
                         "--name NAME\n");
            return false;
        }
        if (!cfg->name[0]) {
            fprintf(err, "adapterd: import needs --name NAME\n");
            return false;
        }
    }
    return cfg->cmd != SRV_CMD_SERVE || check_roots(cfg->adapter_roots, err);
}

int srv_flags_parse(srv_config_t *cfg, int argc, char **argv, FILE *out, FILE *err)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->cmd = SRV_CMD_SERVE;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            srv_flags_print_help(out);
            return 0;
        }
        if (strcmp(argv[i], "--help-markdown") == 0) {
            srv_flags_print_markdown(out);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            fprintf(out, "adapterd %s\n", SRV_VERSION);
            return 0;
        }
    }
    const char *conf = config_path(argc, argv);
    if (!apply_defaults(cfg, err) || (conf && !apply_config_file(cfg, conf, err)) ||
        !apply_env(cfg, err))
        return 2;
    int n_pos = 0;
    uint64_t given = 0; /* bit i: flags[i] was on the command line */
    for (int i = 1; i < argc; i++) {
        bool ok = strncmp(argv[i], "--", 2) == 0 && argv[i][2]
                      ? take_flag(cfg, argc, argv, &i, &given, err)
                      : take_positional(cfg, argv[i], &n_pos, err);
        if (!ok)
            return 2;
    }
    if (!check_command(cfg, given, err))
        return 2;
    return -1;
}

static void flag_usage(const flag_t *f, char *buf, size_t cap)
{
    snprintf(buf, cap, "--%s %s", f->name, f->metavar);
}

void srv_flags_print_help(FILE *out)
{
    fputs(usage, out);
    fputs("\nflags (default, environment variable):\n", out);
    for (size_t i = 0; i < N_FLAGS; i++) {
        const flag_t *f = &flags[i];
        char use[64], env[96], cmds[64], only[80] = "";
        flag_usage(f, use, sizeof use);
        env_name(f, env, sizeof env);
        cmds_str(f->cmds, cmds, sizeof cmds);
        if (!(f->cmds & SERVE))
            snprintf(only, sizeof only, "; %s only", cmds);
        fprintf(out, "  %-32s %s\n", use, f->help);
        fprintf(out, "  %-32s (default: %s%s%s, env: %s)\n", "", f->def[0] ? "" : "none", f->def,
                only, flag_cli_only(f) ? "none, command line only" : env);
    }
    fputs("  --help, --help-markdown, --version\n", out);
}

void srv_flags_print_markdown(FILE *out)
{
    fputs("| flag | environment variable | default | commands | meaning |\n", out);
    fputs("| --- | --- | --- | --- | --- |\n", out);
    for (size_t i = 0; i < N_FLAGS; i++) {
        const flag_t *f = &flags[i];
        char env[100], cmds[64];
        env[0] = '`';
        env_name(f, env + 1, sizeof env - 2);
        strcat(env, "`");
        cmds_str(f->cmds, cmds, sizeof cmds);
        fprintf(out, "| `--%s %s` | %s | %s%s%s | %s | %s |\n", f->name, f->metavar,
                flag_cli_only(f) ? "(command line only)" : env, f->def[0] ? "`" : "(none)",
                f->def, f->def[0] ? "`" : "", cmds, f->help);
    }
}
