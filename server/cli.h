/* cli.h - the offline tenant and API-key commands: `adapterd tenant add|set|list` and
 * `adapterd key add|list|revoke` (server/flags.c parses and checks their arguments).
 *
 * Each opens the store in --data-dir without a base model and with a synchronous executor
 * (so every change's callback has run when the store call returns), taking the same
 * exclusive lock as the daemon: while a daemon serves that folder the command is refused
 * (exit 1) with a pointer to the admin API (POST /v1/admin/tenants, /v1/admin/keys),
 * because two processes must never write one index and the daemon keeps tenants and keys
 * in memory.
 *
 * Output: results on stdout (tenant add/set: one line; lists: a table with a header line;
 * key add: exactly one line, the secret; key revoke: "key ID revoked"), messages on stderr.
 * A secret is printed once and never stored (the index keeps its sha256 only).
 * Exit status: 0; 1 for an unknown or existing tenant, an unknown key, a busy folder or
 * any store failure; 2 for an argument the store refuses (a bad tenant name, label, share
 * or quota), like a bad flag.
 *
 * Threads: the main thread only, instead of the server. */
#ifndef SERVER_CLI_H
#define SERVER_CLI_H

#include "server/flags.h"

/* Runs cfg->cmd (SRV_CMD_TENANT or SRV_CMD_KEY) with cfg->cli_action / cli_arg; returns
 * the process exit status. */
int srv_cli_run(const srv_config_t *cfg);

#endif
