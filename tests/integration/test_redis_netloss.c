/* test_redis_netloss.c - a Redis that vanishes from the network (a
 * partition: packets dropped, nothing closed) does not hold a client's
 * commands forever. hiredis has no command deadline; wp_redis bounds how
 * long sent data may stay unacknowledged and probes idle connections, so
 * a command in flight and a blocked read both end with a NULL reply (the
 * caller acts on it), and the connection comes back once the network does.
 *
 * The test runs in a network namespace of its own (so the drop rule and
 * its loopback touch nothing else on the host): Redis listens on that
 * namespace's loopback and an nft rule drops its port both ways. */
#include <ev.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "base/redis.h"

#define NET_TIMEOUT_MS 2000
/* Far above the bound (2 s plus the probes), far below TCP's own ~15 min. */
#define WAIT_S 30

static struct th_redis RD;
static struct ev_loop *LOOP;

struct got {
    bool done;
    bool null;
    char text[256];
};

static void got_cb(void *ctx, redisReply *reply)
{
    struct got *g = ctx;
    g->done = true;
    g->null = reply == NULL;
    if (reply && reply->str)
        snprintf(g->text, sizeof(g->text), "%.*s", (int)reply->len, reply->str);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs the loop until *flag or s seconds passed. */
static void loop_until(const bool *flag, double s)
{
    double end = now_s() + s;
    while (!*flag && now_s() < end) {
        ev_run(LOOP, EVRUN_NOWAIT);
        if (!*flag)
            th_msleep(10);
    }
}

static void wait_ready(struct wp_redis *r)
{
    double end = now_s() + WAIT_S;
    while (!wp_redis_ready(r) && now_s() < end) {
        ev_run(LOOP, EVRUN_NOWAIT);
        th_msleep(10);
    }
    assert_true(wp_redis_ready(r));
}

static void partition(bool on)
{
    char out[512];
    if (on)
        assert_int_equal(th_sh(out, sizeof(out),
                               "nft add table inet wpt_netloss && "
                               "nft add chain inet wpt_netloss in "
                               "'{ type filter hook input priority 0; }' && "
                               "nft add rule inet wpt_netloss in tcp dport %d drop && "
                               "nft add rule inet wpt_netloss in tcp sport %d drop",
                               RD.port, RD.port),
                         0);
    else
        assert_int_equal(th_sh(out, sizeof(out), "nft delete table inet wpt_netloss"), 0);
}

static int setup(void **state)
{
    char out[256];
    (void)state;
    /* Our own namespace: the nft table and the loopback are this test's. */
    if (unshare(CLONE_NEWNET) < 0 || th_sh(out, sizeof(out), "ip link set lo up") != 0)
        return -1;
    wp_redis_set_net_timeout(NET_TIMEOUT_MS);
    LOOP = ev_default_loop(0);
    return th_redis_start(&RD, 0);
}

static int teardown(void **state)
{
    (void)state;
    th_redis_stop(&RD);
    return 0;
}

/* A command sent while the peer is unreachable: its reply is NULL within
 * the bound, and the same handle works again after the network returns. */
static void command_in_a_partition_fails_then_recovers(void **state)
{
    (void)state;
    struct wp_redis *r = wp_redis_new(LOOP, "127.0.0.1", RD.port, "netloss");
    assert_non_null(r);
    wait_ready(r);

    partition(true);
    struct got g = { 0 };
    const char *set[] = { "SET", "k", "v" };
    double t0 = now_s();
    assert_int_equal(wp_redis_argv(r, got_cb, &g, 3, set, NULL), 0);
    loop_until(&g.done, WAIT_S);
    double took = now_s() - t0;
    partition(false);
    assert_true(g.done);
    assert_true(g.null);
    fprintf(stderr, "# command into the partition ended after %.1f s (bound %d ms)\n", took,
            NET_TIMEOUT_MS);

    wait_ready(r);
    struct got g2 = { 0 };
    const char *ping[] = { "PING" };
    assert_int_equal(wp_redis_argv(r, got_cb, &g2, 1, ping, NULL), 0);
    loop_until(&g2.done, WAIT_S);
    assert_true(g2.done && !g2.null);
    assert_string_equal(g2.text, "PONG");
    wp_redis_free(r);
}

/* A blocked read sent no data that waits for an acknowledgement: only the
 * keepalive probes find the peer gone. */
static void blocked_read_on_a_vanished_peer_ends(void **state)
{
    (void)state;
    struct wp_redis *r = wp_redis_new(LOOP, "127.0.0.1", RD.port, "netloss-block");
    assert_non_null(r);
    wait_ready(r);

    struct got g = { 0 };
    const char *xread[] = { "XREAD", "BLOCK", "0", "STREAMS", "netloss:s", "$" };
    assert_int_equal(wp_redis_argv(r, got_cb, &g, 6, xread, NULL), 0);
    bool never = false;
    loop_until(&never, 0.3); /* the read is sent and blocked in Redis */
    assert_false(g.done);

    partition(true);
    double t0 = now_s();
    loop_until(&g.done, WAIT_S);
    double took = now_s() - t0;
    partition(false);
    assert_true(g.done);
    assert_true(g.null);
    fprintf(stderr, "# blocked read on the vanished peer ended after %.1f s\n", took);
    wp_redis_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(command_in_a_partition_fails_then_recovers),
        cmocka_unit_test(blocked_read_on_a_vanished_peer_ends),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
