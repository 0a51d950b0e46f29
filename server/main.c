/* main.c - adapterd's entry point: read the config, start, run the loop, clean up.
 * Everything else lives in server/server.c (wiring, loop, signals), server/flags.c and
 * server/cli.c (the offline tenant and key commands). */
#include <signal.h>

#include "server/cli.h"
#include "server/flags.h"
#include "server/server.h"

int main(int argc, char **argv)
{
    srv_config_t cfg;
    int status = srv_flags_parse(&cfg, argc, argv, stdout, stderr);
    if (status >= 0)
        return status;
    signal(SIGPIPE, SIG_IGN); /* a vanished client is an EPIPE write error, not a death */
    if (cfg.cmd == SRV_CMD_IMPORT)
        return srv_import_run(&cfg);
    if (cfg.cmd == SRV_CMD_TENANT || cfg.cmd == SRV_CMD_KEY)
        return srv_cli_run(&cfg);
    srv_server_t *server = NULL;
    if (srv_server_start(&cfg, &server) != 0)
        return 1;
    status = srv_server_run(server);
    srv_server_free(server);
    return status;
}
