/* relay_bench.c - one sandbox's tool calls through its node's relay:
 * claim, connect through the relay (TLS or not, by this process's relay
 * settings and the relay's address), attach, then CALLS bash calls one
 * after another, each timed from send to result.
 *
 *   relay_bench --redis PORT --env NAME --calls N --cmd CMD [--relay-tls-cert P
 *               --relay-tls-key P --relay-tls-ca P] --out FILE.json
 *
 * Writes {"first_connect_ms", "connect_ms":[...], "calls_ms":[...]}
 * (connect: pool_connect to the route's answer, the TLS handshake
 * included when there is one; the process's first apart). */
#define WP_LOG_COMPONENT "bench"
#include <ev.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agentlink/agentlink.h"
#include "base/err.h"
#include "base/log.h"
#include "base/timeutil.h"
#include "pool/pool.h"

static struct ev_loop *loop;
static struct pool_claim_result claim;
static struct alink_client *ac;
static int step, failed; /* each callback moves step on */
static int route_only;    /* 1: relay_cb closes the link and sets 2 */
#define CONNECTS 6
static char why[300];

static void fail(const char *what, const struct wp_err *err)
{
    snprintf(why, sizeof(why), "%s: %s", what, err ? err->msg : "failed");
    failed = 1;
}

static void claim_cb(void *ctx, int status, const struct pool_claim_result *res, const struct wp_err *err)
{
    (void)ctx;
    if (status != 0)
        fail("claim", err);
    else
        claim = *res;
    step++;
}

static void result_cb(void *ctx, int status, const struct alink_result *res, const struct wp_err *err)
{
    (void)ctx;
    if (status != 0 || res->is_error)
        fail("call", err);
    step++;
}

static void hello_cb(void *ctx, int status, const struct wp_err *err)
{
    struct alink_attach a = { .session_id = "relay-bench" };
    struct wp_err e2;
    (void)ctx;
    if (status != 0)
        fail("hello", err);
    else if (alink_client_attach(ac, &a, result_cb, NULL, &e2) < 0)
        fail("attach", &e2);
    if (failed)
        step++;
}

static void relay_cb(void *ctx, int status, int fd, const struct wp_err *err)
{
    struct wp_err e2;
    (void)ctx;
    if (status == 0 && route_only) {
        close(fd);
        route_only = 2;
        return;
    }
    if (status != 0)
        fail("relay", err);
    else if (alink_client_new(loop, NULL, &ac, &e2) < 0 ||
             alink_client_connect_fd(ac, fd, hello_cb, NULL, &e2) < 0)
        fail("connect", &e2);
    if (failed)
        step++;
}

static void wait_step(int want)
{
    while (step < want && !failed)
        ev_run(loop, EVRUN_ONCE);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        { "redis", required_argument, NULL, 'r' }, { "env", required_argument, NULL, 'e' },
        { "calls", required_argument, NULL, 'n' }, { "cmd", required_argument, NULL, 'c' },
        { "out", required_argument, NULL, 'o' },   { "relay-tls-cert", required_argument, NULL, 1 },
        { "relay-tls-key", required_argument, NULL, 2 }, { "relay-tls-ca", required_argument, NULL, 3 },
        { NULL, 0, NULL, 0 }
    };
    struct pool_relay_tls_conf tls = { .mode = POOL_RELAY_TLS_AUTO };
    int port = 6379, calls = 200, c;
    const char *env = "bench", *cmd = "true", *out = NULL;
    struct wp_err err;

    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'r': port = atoi(optarg); break;
        case 'e': env = optarg; break;
        case 'n': calls = atoi(optarg); break;
        case 'c': cmd = optarg; break;
        case 'o': out = optarg; break;
        case 1: case 2: case 3: {
            static const char *names[] = { "", "relay-tls-cert", "relay-tls-key", "relay-tls-ca" };
            pool_relay_tls_option(&tls, names[c], optarg, NULL);
            break;
        }
        default: return 2;
        }
    }
    if (calls < 1 || calls > 100000 || !out)
        return 2;
    wp_log_set_level("warn");
    if (pool_relay_tls_setup(&tls, &err) < 0) {
        fprintf(stderr, "relay_bench: %s\n", err.msg);
        return 2;
    }
    loop = EV_DEFAULT;
    struct pool_client *pc;
    if (pool_client_new(loop, "127.0.0.1", port, &pc, &err) < 0)
        return 1;
    while (!pool_client_ready(pc))
        ev_run(loop, EVRUN_ONCE);
    if (pool_claim(pc, env, "relay-bench", 60, claim_cb, NULL, &err) < 0)
        return 1;
    wait_step(1);
    /* Route-only connections to the claimed sandbox (TCP, the TLS
     * handshake when there is one, the route frame and its answer), then
     * the one that attaches. The first of a process also pays OpenSSL's
     * one-time set-up (algorithm fetches), which a scheduler pays once. */
    double connect_ms[CONNECTS];
    for (int k = 0; k < CONNECTS && !failed; k++) {
        uint64_t t0 = wp_now_ns();
        route_only = 1;
        if (pool_connect(loop, &claim, env, relay_cb, NULL, &err) < 0)
            fail("relay", &err);
        while (route_only == 1 && !failed)
            ev_run(loop, EVRUN_ONCE);
        connect_ms[k] = (double)(wp_now_ns() - t0) / 1e6;
    }
    route_only = 0;
    if (!failed && pool_connect(loop, &claim, env, relay_cb, NULL, &err) < 0)
        fail("relay", &err);
    wait_step(2);
    uint64_t t0;
    double *ms = calloc((size_t)calls, sizeof(*ms));
    json_t *in = json_pack("{s:s}", "command", cmd);
    for (int i = 0; i < calls && !failed; i++) {
        t0 = wp_now_ns();
        if (alink_client_call(ac, "bash", in, NULL, result_cb, NULL, &err) < 0) {
            fail("call", &err);
            break;
        }
        wait_step(3 + i);
        ms[i] = (double)(wp_now_ns() - t0) / 1e6;
    }
    json_decref(in);
    if (failed) {
        fprintf(stderr, "relay_bench: %s\n", why);
        return 1;
    }
    FILE *f = fopen(out, "w");
    if (!f)
        return 1;
    fprintf(f, "{\"relay\":\"%s\",\"first_connect_ms\":%.3f,\"connect_ms\":[", claim.relay,
            connect_ms[0]);
    for (int k = 1; k < CONNECTS; k++)
        fprintf(f, "%s%.4f", k > 1 ? "," : "", connect_ms[k]);
    fprintf(f, "],\"calls_ms\":[");
    for (int i = 0; i < calls; i++)
        fprintf(f, "%s%.4f", i ? "," : "", ms[i]);
    fprintf(f, "]}\n");
    fclose(f);
    alink_client_free(ac);
    pool_release(pc, env, claim.sandbox, claim.token, NULL, NULL, NULL);
    for (int i = 0; i < 20; i++) /* the release goes out */
        ev_run(loop, EVRUN_NOWAIT);
    pool_client_free(pc);
    pool_relay_tls_teardown();
    free(ms);
    return 0;
}
