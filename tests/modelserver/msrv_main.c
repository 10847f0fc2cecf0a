/* msrv_main.c - wp-modelserver: flags, then the loop until SIGINT/SIGTERM.
 * Flags are applied in order, so a flag after --script overrides it. */
#define WP_LOG_COMPONENT "msrv"
#include "msrv.h"

#include <ev.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/log.h"

static const char usage[] =
    "usage: wp-modelserver [options]\n"
    "  --host ADDR            listen address (127.0.0.1)\n"
    "  --port N               listen port (8765; 0 = any, logged at start)\n"
    "  --script FILE          JSON script: turns, latencies, faults (see README)\n"
    "  --seed N               RNG seed (1); the same seed replays the same samples\n"
    "  --ttft SPEC            fixed:MS | uniform:MIN:MAX | lognormal:MEDIAN:P95 (fixed:200)\n"
    "  --rate TOKENS_PER_S    token rate after the first token (100; 0 = no delay)\n"
    "  --chunk N              tokens per content_block_delta (1)\n"
    "  --text STR             default reply text\n"
    "  --no-auth              do not require x-api-key / Authorization\n"
    "  --fail-status CODE     status for HTTP faults (529)\n"
    "  --retry-after SEC      retry-after header on 429/5xx, -1 = none (1)\n"
    "  --http-fail-first N    answer the first N requests with --fail-status\n"
    "  --http-fail-rate P     ... and this fraction of the rest\n"
    "  --stream-error-first N end the first N streams with `event: error`\n"
    "  --stream-error-rate P  ... and this fraction of the rest\n"
    "  --drop-first N         drop the connection of the first N streams mid-stream\n"
    "  --drop-rate P          ... and this fraction of the rest\n"
    "  --stall-first N        stop sending the first N streams mid-stream (kept open)\n"
    "  --stall-rate P         ... and this fraction of the rest\n"
    "  --fault-after N        SSE segments sent before a mid-stream fault (2)\n"
    "  --ev-timer             libev timers instead of timerfds (up to 1 ms late)\n"
    "  --log-level LEVEL      error | warn | info | debug (info)\n";

enum {
    OPT_HOST = 256, OPT_PORT, OPT_SCRIPT, OPT_SEED, OPT_TTFT, OPT_RATE, OPT_CHUNK, OPT_TEXT,
    OPT_NOAUTH, OPT_FSTATUS, OPT_RETRY, OPT_HFIRST, OPT_HRATE, OPT_EFIRST, OPT_ERATE,
    OPT_DFIRST, OPT_DRATE, OPT_SFIRST, OPT_SRATE, OPT_AFTER, OPT_LOG, OPT_HELP, OPT_EVTIMER,
};

static const struct option options[] = {
    { "host", required_argument, NULL, OPT_HOST },
    { "port", required_argument, NULL, OPT_PORT },
    { "script", required_argument, NULL, OPT_SCRIPT },
    { "seed", required_argument, NULL, OPT_SEED },
    { "ttft", required_argument, NULL, OPT_TTFT },
    { "rate", required_argument, NULL, OPT_RATE },
    { "chunk", required_argument, NULL, OPT_CHUNK },
    { "text", required_argument, NULL, OPT_TEXT },
    { "no-auth", no_argument, NULL, OPT_NOAUTH },
    { "fail-status", required_argument, NULL, OPT_FSTATUS },
    { "retry-after", required_argument, NULL, OPT_RETRY },
    { "http-fail-first", required_argument, NULL, OPT_HFIRST },
    { "http-fail-rate", required_argument, NULL, OPT_HRATE },
    { "stream-error-first", required_argument, NULL, OPT_EFIRST },
    { "stream-error-rate", required_argument, NULL, OPT_ERATE },
    { "drop-first", required_argument, NULL, OPT_DFIRST },
    { "drop-rate", required_argument, NULL, OPT_DRATE },
    { "stall-first", required_argument, NULL, OPT_SFIRST },
    { "stall-rate", required_argument, NULL, OPT_SRATE },
    { "fault-after", required_argument, NULL, OPT_AFTER },
    { "log-level", required_argument, NULL, OPT_LOG },
    { "ev-timer", no_argument, NULL, OPT_EVTIMER },
    { "help", no_argument, NULL, OPT_HELP },
    { NULL, 0, NULL, 0 },
};

static int num(const char *s, double lo, double hi, double *out, struct wp_err *err)
{
    char *end;
    double v = strtod(s, &end);

    if (end == s || *end || v < lo || v > hi)
        return wp_err_set(err, WP_ECONFIG, "bad number '%s' (want %g..%g)", s, lo, hi);
    *out = v;
    return 0;
}

static int apply(struct msrv_config *cfg, int opt, const char *arg, struct wp_err *err)
{
    double v = 0;
    int rc = 0;

    switch (opt) {
    case OPT_HOST:
        if (strlen(arg) >= sizeof(cfg->host))
            return wp_err_set(err, WP_ECONFIG, "host too long");
        snprintf(cfg->host, sizeof(cfg->host), "%s", arg);
        return 0;
    case OPT_SCRIPT: return msrv_config_load_file(cfg, arg, err);
    case OPT_TTFT: return msrv_dist_parse(arg, &cfg->ttft, err);
    case OPT_TEXT: {
        json_t *valid = json_string(arg); /* NULL unless valid UTF-8 */
        char *t = valid ? strdup(arg) : NULL;
        json_decref(valid);
        if (!valid)
            return wp_err_set(err, WP_ECONFIG, "--text must be UTF-8");
        if (!t)
            return wp_err_set(err, WP_ECONFIG, "out of memory");
        free(cfg->text);
        cfg->text = t;
        return 0;
    }
    case OPT_NOAUTH: cfg->require_auth = false; return 0;
    case OPT_EVTIMER: cfg->ev_timer = true; return 0;
    case OPT_LOG:
        if (wp_log_set_level(arg) < 0)
            return wp_err_set(err, WP_ECONFIG, "bad log level '%s'", arg);
        return 0;
    default: break;
    }
    switch (opt) {
    case OPT_PORT: rc = num(arg, 0, 65535, &v, err); cfg->port = (int)v; break;
    case OPT_SEED: rc = num(arg, 0, 1e18, &v, err); cfg->seed = (uint64_t)v; break;
    case OPT_RATE: rc = num(arg, 0, 1e9, &v, err); cfg->tokens_per_s = v; break;
    case OPT_CHUNK: rc = num(arg, 1, 1e6, &v, err); cfg->chunk_tokens = (int)v; break;
    case OPT_FSTATUS: rc = num(arg, 400, 599, &v, err); cfg->fault_status = (int)v; break;
    case OPT_RETRY: rc = num(arg, -1, 86400, &v, err); cfg->retry_after = (int)v; break;
    case OPT_HFIRST: rc = num(arg, 0, 1e9, &v, err); cfg->status_rule.first = (int)v; break;
    case OPT_HRATE: rc = num(arg, 0, 1, &v, err); cfg->status_rule.rate = v; break;
    case OPT_EFIRST: rc = num(arg, 0, 1e9, &v, err); cfg->error_rule.first = (int)v; break;
    case OPT_ERATE: rc = num(arg, 0, 1, &v, err); cfg->error_rule.rate = v; break;
    case OPT_DFIRST: rc = num(arg, 0, 1e9, &v, err); cfg->drop_rule.first = (int)v; break;
    case OPT_DRATE: rc = num(arg, 0, 1, &v, err); cfg->drop_rule.rate = v; break;
    case OPT_SFIRST: rc = num(arg, 0, 1e9, &v, err); cfg->stall_rule.first = (int)v; break;
    case OPT_SRATE: rc = num(arg, 0, 1, &v, err); cfg->stall_rule.rate = v; break;
    case OPT_AFTER: rc = num(arg, 0, 1e9, &v, err); cfg->fault_after = (int)v; break;
    default: return wp_err_set(err, WP_ECONFIG, "unknown option");
    }
    return rc;
}

static void stop_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)revents;
    log_info("signal=%d: stopping", w->signum);
    ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
    struct msrv_config cfg;
    struct msrv_server *srv = NULL;
    struct wp_err err;
    struct ev_loop *loop = EV_DEFAULT;
    ev_signal sigint, sigterm;
    int opt, rc = 1;

    msrv_config_init(&cfg);
    for (;;) {
        opt = getopt_long(argc, argv, "h", options, NULL);
        if (opt == -1)
            break;
        if (opt == 'h' || opt == OPT_HELP) {
            fputs(usage, stdout);
            rc = 0;
            goto out;
        }
        if (opt == '?') {
            fputs(usage, stderr);
            rc = 2;
            goto out;
        }
        if (apply(&cfg, opt, optarg, &err) < 0) {
            fprintf(stderr, "wp-modelserver: %s\n", err.msg);
            rc = 2;
            goto out;
        }
    }
    if (!cfg.text) {
        fprintf(stderr, "wp-modelserver: out of memory\n");
        goto out;
    }
    signal(SIGPIPE, SIG_IGN);
    if (msrv_server_new(&cfg, &srv, &err) < 0) {
        log_error("%s", err.msg);
        goto out;
    }
    ev_signal_init(&sigint, stop_cb, SIGINT);
    ev_signal_init(&sigterm, stop_cb, SIGTERM);
    ev_signal_start(loop, &sigint);
    ev_signal_start(loop, &sigterm);
    log_info("listening host=%s port=%d seed=%llu ttft=%s:%g:%g rate=%g chunk=%d convs=%zu",
             cfg.host, msrv_server_port(srv), (unsigned long long)cfg.seed,
             cfg.ttft.kind == MSRV_DIST_FIXED     ? "fixed"
             : cfg.ttft.kind == MSRV_DIST_UNIFORM ? "uniform"
                                                  : "lognormal",
             cfg.ttft.a, cfg.ttft.b, cfg.tokens_per_s, cfg.chunk_tokens, cfg.n_convs);
    ev_run(loop, 0);
    ev_signal_stop(loop, &sigint);
    ev_signal_stop(loop, &sigterm);
    rc = 0;
out:
    msrv_server_free(srv);
    msrv_config_free(&cfg);
    return rc;
}
