/* egress_main.c - warmpool-egress: the node's egress proxy, a process of
 * its own (ARCHITECTURE.md, "The egress proxy", says why). */
#define WP_LOG_COMPONENT "egress"
#include <ev.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/log.h"
#include "pool/pool.h"

#define MAX_PINS 64

static const char usage[] =
    "usage: warmpool-egress --port PORT --control PATH [options]\n"
    "  --port PORT         listened on at each confined sandbox's host end\n"
    "  --control PATH      Unix socket (0600) where the node adds and removes sandboxes\n"
    "  --ca-dir DIR        the node's CA: ca.key (0600) and ca.pem, made at first start\n"
    "                      (default /var/lib/warmpool/egress)\n"
    "  --upstream-ca FILE  trust these CAs upstream too (besides the system's store)\n"
    "  --pin NAME=IPV4     answer NAME with IPV4 before DNS (repeatable)\n"
    "  --log-level LEVEL   error, warn, info (default), debug\n";

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "port", required_argument, NULL, 'p' },     { "control", required_argument, NULL, 'c' },
        { "ca-dir", required_argument, NULL, 'd' },   { "upstream-ca", required_argument, NULL, 'u' },
        { "pin", required_argument, NULL, 'n' },      { "log-level", required_argument, NULL, 'l' },
        { "help", no_argument, NULL, 'h' },           { NULL, 0, NULL, 0 },
    };
    const char *pins[MAX_PINS + 1] = { NULL }, *control = NULL;
    struct pool_egress_cfg cfg = { .ca_dir = "/var/lib/warmpool/egress", .pins = pins };
    struct pool_egress *px = NULL;
    struct pool_egress_ctl *ctl = NULL;
    struct wp_err err;
    int n_pins = 0, o;

    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'p': cfg.port = atoi(optarg); break;
        case 'c': control = optarg; break;
        case 'd': cfg.ca_dir = optarg; break;
        case 'u': cfg.upstream_ca_file = optarg; break;
        case 'n':
            if (n_pins == MAX_PINS || !strchr(optarg, '=')) {
                fprintf(stderr, "warmpool-egress: --pin NAME=IPV4, at most %d\n", MAX_PINS);
                return 2;
            }
            pins[n_pins++] = optarg;
            break;
        case 'l':
            if (wp_log_set_level(optarg) < 0) {
                fprintf(stderr, "warmpool-egress: unknown log level %s\n", optarg);
                return 2;
            }
            break;
        case 'h': fputs(usage, stdout); return 0;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (!control || cfg.port <= 0) {
        fputs(usage, stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct ev_loop *loop = ev_default_loop(0);
    if (pool_egress_open(loop, &cfg, &px, &err) < 0 ||
        pool_egress_ctl_open(loop, px, control, &ctl, &err) < 0) {
        log_error("%s", err.msg);
        pool_egress_close(px);
        return 1;
    }
    ev_signal term, intr;
    ev_signal_init(&term, on_signal, SIGTERM);
    ev_signal_init(&intr, on_signal, SIGINT);
    ev_signal_start(loop, &term);
    ev_signal_start(loop, &intr);
    log_info("egress: serving on port %d, control %s, CA %s/ca.pem", cfg.port, control, cfg.ca_dir);
    ev_run(loop, 0);
    pool_egress_ctl_close(ctl);
    pool_egress_close(px);
    return 0;
}
