/* pool_bench.c - claim latency: claim -> sandbox attached and answering
 * (agentlink hello + attach), by tier, at several concurrencies.
 *
 *   pool_bench --redis PORT --env NAME --hot N --concurrency C --rounds R --out FILE.json
 *
 * Before each round it waits until the environment's hot list holds N
 * entries (the node refills between rounds), then fires C claims at once.
 * Each claimed sandbox is released after it answered. */
#define WP_LOG_COMPONENT "bench"
#include <ev.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agentlink/agentlink.h"
#include "base/err.h"
#include "base/log.h"
#include "base/timeutil.h"
#include "pool/pool.h"

#define MAXS 4096

struct one {
    struct pool_client *pc;
    struct alink_client *ac;
    struct pool_claim_result res;
    uint64_t t0;
    double claim_ms, attached_ms;
    int done, failed;
    char env[64];
};

static struct ev_loop *loop;
static bool use_relay;
static double lat[3][MAXS];
static int nlat[3];
static double claim_only[3][MAXS];

static int tier_index(const char *t)
{
    return strcmp(t, "hot") == 0 ? 0 : strcmp(t, "warm") == 0 ? 1 : 2;
}

static void finish(struct one *o, bool ok)
{
    o->done = 1;
    o->failed = !ok;
    if (ok) {
        int t = tier_index(o->res.tier);
        if (nlat[t] < MAXS) {
            claim_only[t][nlat[t]] = o->claim_ms;
            lat[t][nlat[t]++] = o->attached_ms;
        }
    }
}

static void attach_cb(void *ctx, int status, const struct alink_result *res, const struct wp_err *err)
{
    struct one *o = ctx;
    (void)err;
    o->attached_ms = (double)(wp_now_ns() - o->t0) / 1e6;
    finish(o, status == 0 && !res->is_error);
}

static void connect_cb(void *ctx, int status, const struct wp_err *err)
{
    struct one *o = ctx;
    struct alink_attach a = { .session_id = "bench" };
    struct wp_err e2;

    if (status != 0) {
        fprintf(stderr, "connect %s: %s\n", o->res.root, err ? err->msg : "?");
        finish(o, false);
        return;
    }
    if (alink_client_attach(o->ac, &a, attach_cb, o, &e2) < 0)
        finish(o, false);
}

static void relay_cb(void *ctx, int status, int fd, const struct wp_err *err)
{
    struct one *o = ctx;
    struct wp_err e2;

    if (status != 0) {
        fprintf(stderr, "relay: %s\n", err ? err->msg : "?");
        finish(o, false);
        return;
    }
    if (alink_client_new(loop, NULL, &o->ac, &e2) < 0 ||
        alink_client_connect_fd(o->ac, fd, connect_cb, o, &e2) < 0)
        finish(o, false);
}

static void claim_cb(void *ctx, int status, const struct pool_claim_result *res, const struct wp_err *err)
{
    struct one *o = ctx;
    char sock[700];
    struct wp_err e2;

    if (status != 0) {
        fprintf(stderr, "claim: %s\n", err ? err->msg : "?");
        finish(o, false);
        return;
    }
    o->res = *res;
    o->claim_ms = (double)(wp_now_ns() - o->t0) / 1e6;
    if (use_relay) {
        if (pool_connect(loop, res, o->env, relay_cb, o, &e2) < 0)
            finish(o, false);
        return;
    }
    snprintf(sock, sizeof(sock), "%s/run/warmpool/hands.sock", res->root);
    if (alink_client_new(loop, NULL, &o->ac, &e2) < 0 ||
        alink_client_connect_unix(o->ac, sock, connect_cb, o, &e2) < 0) {
        fprintf(stderr, "connect: %s\n", e2.msg);
        finish(o, false);
    }
}

static void release_cb(void *ctx, int status, const struct wp_err *err)
{
    int *left = ctx;
    (void)status;
    (void)err;
    (*left)--;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p)
{
    if (n == 0)
        return NAN;
    qsort(v, n, sizeof(double), cmp);
    int i = (int)ceil(p / 100 * n) - 1;
    return v[i < 0 ? 0 : i];
}

int main(int argc, char **argv)
{
    static const struct option lo[] = { { "redis", required_argument, NULL, 'r' },
                                        { "env", required_argument, NULL, 'e' },
                                        { "hot", required_argument, NULL, 'h' },
                                        { "concurrency", required_argument, NULL, 'c' },
                                        { "rounds", required_argument, NULL, 'n' },
                                        { "out", required_argument, NULL, 'o' },
                                        { "relay", no_argument, NULL, 'R' },
                                        { NULL, 0, NULL, 0 } };
    int port = 6379, hot = 10, conc = 1, rounds = 20, c;
    const char *env = "bench", *out = NULL;
    struct wp_err err;

    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'r': port = atoi(optarg); break;
        case 'e': env = optarg; break;
        case 'h': hot = atoi(optarg); break;
        case 'c': conc = atoi(optarg); break;
        case 'n': rounds = atoi(optarg); break;
        case 'o': out = optarg; break;
        case 'R': use_relay = true; break;
        default: return 2;
        }
    }
    wp_log_set_level("warn");
    loop = EV_DEFAULT;
    redisContext *rc = redisConnect("127.0.0.1", port);
    struct pool_client *pc;
    if (!rc || rc->err || pool_client_new(loop, "127.0.0.1", port, &pc, &err) < 0) {
        fprintf(stderr, "pool_bench: cannot reach redis on %d\n", port);
        return 1;
    }
    while (!pool_client_ready(pc))
        ev_run(loop, EVRUN_ONCE);
    struct timespec ts = { 0, 100 * 1000 * 1000 };
    nanosleep(&ts, NULL); /* our reply channel's SUBSCRIBE */
    ev_run(loop, EVRUN_NOWAIT);
    double wall[256];
    int nwall = 0;
    struct one *os = calloc((size_t)conc, sizeof(*os));
    for (int r = 0; r < rounds; r++) {
        /* Wait for the node to refill the hot tier. */
        for (int i = 0; i < 6000; i++) {
            redisReply *rr = redisCommand(rc, "LLEN wp:env:{%s}:hot", env);
            long long n = rr && rr->type == REDIS_REPLY_INTEGER ? rr->integer : 0;
            freeReplyObject(rr);
            if (n >= hot)
                break;
            nanosleep(&(struct timespec){ 0, 10 * 1000 * 1000 }, NULL);
        }
        memset(os, 0, sizeof(*os) * (size_t)conc);
        uint64_t t0 = wp_now_ns();
        for (int i = 0; i < conc; i++) {
            os[i].t0 = wp_now_ns();
            snprintf(os[i].env, sizeof(os[i].env), "%s", env);
            if (pool_claim(pc, env, "bench", 60, claim_cb, &os[i], &err) < 0) {
                fprintf(stderr, "claim: %s\n", err.msg);
                return 1;
            }
        }
        for (;;) {
            int done = 0;
            for (int i = 0; i < conc; i++)
                done += os[i].done;
            if (done == conc)
                break;
            ev_run(loop, EVRUN_ONCE);
        }
        if (nwall < 256)
            wall[nwall++] = (double)(wp_now_ns() - t0) / 1e6;
        int left = 0;
        for (int i = 0; i < conc; i++) {
            if (os[i].ac)
                alink_client_free(os[i].ac);
            if (!os[i].failed && pool_release(pc, env, os[i].res.sandbox, os[i].res.token,
                                              release_cb, &left, &err) == 0)
                left++;
        }
        while (left > 0)
            ev_run(loop, EVRUN_ONCE);
    }
    const char *tiers[] = { "hot", "warm", "cold" };
    FILE *f = out ? fopen(out, "w") : stdout;
    int failed = 0;
    for (int i = 0; i < conc; i++)
        failed += os[i].failed;
    fprintf(f, "{\"path\":\"%s\",\"concurrency\":%d,\"rounds\":%d,\"hot_target\":%d,\"failed_last_round\":%d,"
               "\"all_attached_ms\":{\"median\":%.3f,\"p95\":%.3f},\"tiers\":{",
            use_relay ? "tcp relay" : "unix socket", conc, rounds, hot, failed, pct(wall, nwall, 50),
            pct(wall, nwall, 95));
    for (int t = 0; t < 3; t++) {
        /* Empty tiers are reported with n = 0 and zeros (JSON has no NaN). */
        int n = nlat[t];
        fprintf(f, "%s\"%s\":{\"n\":%d,\"claim_median_ms\":%.3f,\"claim_p95_ms\":%.3f,"
                   "\"attached_median_ms\":%.3f,\"attached_p95_ms\":%.3f}",
                t ? "," : "", tiers[t], n, n ? pct(claim_only[t], n, 50) : 0,
                n ? pct(claim_only[t], n, 95) : 0, n ? pct(lat[t], n, 50) : 0,
                n ? pct(lat[t], n, 95) : 0);
    }
    fprintf(f, "}}\n");
    if (out)
        fclose(f);
    pool_client_free(pc);
    redisFree(rc);
    free(os);
    return 0;
}
