/* main.c - warmpool-scheduler: parse config, init logging, run the HTTP
 * API on the default libev loop until SIGTERM/SIGINT drains it. */
#define WP_LOG_COMPONENT "sched"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include <ev.h>

#include "base/log.h"
#include "base/redis.h"
#include "base/rcluster.h"
#include "base/sentinel.h"
#include "scheduler/sched.h"
#include "scheduler/sched_int.h"

int main(int argc, char **argv)
{
    struct sched_config cfg;
    struct wp_err err = {0};

    wp_log_set_level("info");
    sched_config_defaults(&cfg);
    int rc = sched_config_parse_args(&cfg, argc, argv, &err);
    if (rc == 1)
        return 0;
    if (rc < 0) {
        fprintf(stderr, "warmpool-scheduler: %s\n", err.msg);
        return 2;
    }
    if (cfg.redis_password_file[0] &&
        wp_redis_auth_file(cfg.redis_user[0] ? cfg.redis_user : NULL, cfg.redis_password_file,
                           &err) < 0) {
        fprintf(stderr, "warmpool-scheduler: %s\n", err.msg);
        return 2;
    }
    if ((cfg.redis_sentinels[0] || cfg.redis_master[0] || cfg.redis_sentinel_password_file[0]) &&
        (wp_sentinel_set(cfg.redis_sentinels, cfg.redis_master, &err) < 0 ||
         (cfg.redis_sentinel_password_file[0] &&
          wp_sentinel_auth_file(cfg.redis_sentinel_password_file, &err) < 0))) {
        fprintf(stderr, "warmpool-scheduler: %s\n", err.msg);
        return 2;
    }
    if (cfg.redis_cluster[0] && wp_rcl_set(cfg.redis_cluster, &err) < 0) {
        fprintf(stderr, "warmpool-scheduler: %s\n", err.msg);
        return 2;
    }
    /* One XREAD may not span slots: on a cluster, readers tail per slot. */
    if (cfg.redis_cluster[0])
        cfg.sse_slot_groups = true;
    if (cfg.rotate_vault_key) {
        if (sched__vault_rotate(&cfg, &err) < 0) {
            fprintf(stderr, "warmpool-scheduler: %s\n", err.msg);
            return 1;
        }
        return 0;
    }
    if (cfg.migrate_keys) {
        if (!cfg.redis_cluster[0] && sched__keys_migrate(&cfg, &err) < 0) /* never ran on one */ {
            fprintf(stderr, "warmpool-scheduler: %s\n", err.msg);
            return 1;
        }
        return 0;
    }
    /* An older version's sessions move to this key layout before anything
     * is served (a no-op once done); Redis away: said, and the start goes on. */
    if (!cfg.redis_cluster[0] && sched__keys_migrate(&cfg, &err) < 0) /* never ran on one */
        log_warn("key layout not checked (%s): a store written by an older version needs "
                 "warmpool-scheduler --migrate-keys", err.msg);
    /* Before any relay is dialled: a claim's relay beyond loopback is then
     * mutual TLS (or refused when there is no identity). */
    if (pool_relay_tls_setup(&cfg.relay_tls, &err) < 0) {
        fprintf(stderr, "warmpool-scheduler: %s\n", err.msg);
        return 2;
    }
    if (cfg.norgs == 0)
        log_warn("no --api-key configured: every request will be refused with 401");
    signal(SIGPIPE, SIG_IGN);
    struct ev_loop *loop = EV_DEFAULT;
    struct sched_server *srv = sched_server_new(loop, &cfg, &err);
    if (!srv) {
        log_error("start: %s", err.msg);
        pool_relay_tls_teardown();
        return 1;
    }
    /* Tests and scripts read the bound port from this line. */
    printf("listening %d\n", sched_server_port(srv));
    fflush(stdout);
    ev_run(loop, 0);
    sched_server_free(srv);
    pool_relay_tls_teardown();
    log_info("stopped");
    return 0;
}
