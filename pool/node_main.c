/* node_main.c - warmpool-node. */
#define WP_LOG_COMPONENT "node"
#include <stdio.h>

#include "base/err.h"
#include "base/log.h"
#include "pool/pool.h"

int main(int argc, char **argv)
{
    struct pool_node_config cfg;
    struct wp_err err;
    int rc = pool_node_config_parse(&cfg, argc, argv, &err);

    if (rc == 1)
        return 0;
    if (rc < 0) {
        fprintf(stderr, "warmpool-node: %s\n", err.msg);
        return 2;
    }
    if (pool_relay_tls_setup(&cfg.relay_tls, &err) < 0) {
        fprintf(stderr, "warmpool-node: %s\n", err.msg);
        return 2;
    }
    rc = pool_node_run(&cfg, &err);
    pool_relay_tls_teardown();
    if (rc < 0) {
        log_error("%s", err.msg);
        return 1;
    }
    return 0;
}
