/* test_rcluster.c - base/rcluster.c against a real 3-master Redis Cluster
 * (redis-server --cluster-enabled, made with redis-cli --cluster create):
 * the key hash against CLUSTER KEYSLOT, commands and scripts on the right
 * master, pub/sub across nodes, an ASK while a slot migrates and a MOVED
 * after, a master restarted under the client, and a master killed for
 * good (its replica promoted, the map and a subscription follow). */
#include <ev.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "lib/rcluster_testlib.h"
#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/rcluster.h"

/* Three masters, one replica each: node i < 3 is a master at the start
 * (redis-cli makes the first ones masters). */
static struct th_rcluster CL;
#define PORT CL.port
#define PID CL.pid
#define ID CL.id

/* redis-cli -p port ARGS prints exactly want (one line). */
static bool cli_is(int port, const char *args, const char *want)
{
    char out[512] = "";
    th_sh(out, sizeof(out), "redis-cli -p %d %s 2>/dev/null", port, args);
    out[strcspn(out, "\r\n")] = '\0';
    return strcmp(out, want) == 0;
}

static int setup(void **state)
{
    (void)state;
    return th_rcluster_start(&CL, 3, 1);
}

static int teardown(void **state)
{
    (void)state;
    th_rcluster_stop(&CL);
    return 0;
}

/* --- a small synchronous wrapper over the async client --------------- */

struct result {
    bool done;
    int type;
    char str[256];
    long long integer;
};

static void got(void *ctx, redisReply *rep)
{
    struct result *r = ctx;
    r->done = true;
    r->type = rep ? rep->type : -1;
    if (rep && rep->str)
        snprintf(r->str, sizeof(r->str), "%s", rep->str);
    if (rep)
        r->integer = rep->integer;
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Poll the loop until *done or secs pass. */
static void spin(struct ev_loop *loop, bool *done, double secs)
{
    double end = mono() + secs;
    while (!*done && mono() < end)
        ev_run(loop, EVRUN_NOWAIT), th_msleep(1);
}

/* Send argv and wait for its reply (up to 5 s). The send's own return
 * code when it was refused. */
static int call(struct ev_loop *loop, struct wp_rcl *c, struct result *r, int argc,
                const char **argv)
{
    memset(r, 0, sizeof(*r));
    int rc = wp_rcl_argv(c, got, r, argc, argv, NULL);
    if (rc < 0)
        return rc;
    spin(loop, &r->done, 5);
    return r->done ? 0 : -1;
}

static struct wp_rcl *connect_cluster(struct ev_loop *loop)
{
    char seed[64];
    struct wp_err err;
    /* One seed: the others come from its slot map. */
    snprintf(seed, sizeof(seed), "127.0.0.1:%d", PORT[1]);
    struct wp_rcl *c = wp_rcl_new(loop, seed, "test", &err);
    assert_non_null(c);
    double end = mono() + 10;
    while (!wp_rcl_ready(c) && mono() < end)
        ev_run(loop, EVRUN_NOWAIT), th_msleep(2);
    assert_true(wp_rcl_ready(c));
    return c;
}

static int owner(int slot)
{
    return th_rcluster_owner(&CL, slot);
}

static int index_of(int port)
{
    return th_rcluster_index(&CL, port);
}

/* --- tests -------------------------------------------------------------- */

static void keyslot_matches_the_server(void **state)
{
    (void)state;
    /* The published check value of CRC16/XMODEM, and the spec's examples. */
    assert_int_equal(wp_rcl_crc16("123456789", 9), 0x31C3);
    assert_int_equal(wp_rcl_keyslot("foo", 3), 12182);
    assert_int_equal(wp_rcl_keyslot("bar", 3), 5061);
    assert_int_equal(wp_rcl_keyslot("{user1000}.following", 20), wp_rcl_keyslot("user1000", 8));
    assert_int_equal(wp_rcl_keyslot("foo{}{bar}", 10), wp_rcl_crc16("foo{}{bar}", 10) & 16383);
    assert_int_equal(wp_rcl_keyslot("foo{bar}{zap}", 13), wp_rcl_keyslot("bar", 3));
    assert_int_equal(wp_rcl_keyslot("foo{{bar}}zap", 13), wp_rcl_keyslot("{bar", 4));

    /* 2000 keys (tags, empty tags, unclosed braces, binary bytes) against
     * the server's own CLUSTER KEYSLOT. */
    redisContext *s = redisConnect("127.0.0.1", PORT[0]);
    assert_non_null(s);
    unsigned seed = 18;
    for (int i = 0; i < 2000; i++) {
        char key[40];
        size_t len = 1 + (size_t)(rand_r(&seed) % 30);
        for (size_t k = 0; k < len; k++) {
            static const char pick[] = "ab{}{}:x\0\xff";
            key[k] = pick[rand_r(&seed) % (sizeof(pick) - 1)];
        }
        const char *argv[] = { "CLUSTER", "KEYSLOT", key };
        size_t lens[] = { 7, 7, len };
        redisReply *rep = redisCommandArgv(s, 3, argv, lens);
        assert_non_null(rep);
        assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
        assert_int_equal(wp_rcl_keyslot(key, len), rep->integer);
        freeReplyObject(rep);
    }
    redisFree(s);
}

static char msgs[3][64];

static void on_msg(void *ctx, redisReply *rep)
{
    (void)ctx;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 || !rep->element[2]->str)
        return;
    for (int i = 0; i < 3; i++)
        if (!msgs[i][0] || !strcmp(msgs[i], rep->element[2]->str)) {
            snprintf(msgs[i], sizeof(msgs[i]), "%s", rep->element[2]->str);
            return;
        }
}

static void commands_and_scripts_reach_their_master(void **state)
{
    struct result r;
    struct wp_rcl_stats st;
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct wp_rcl *c = connect_cluster(loop);

    for (int i = 0; i < 300; i++) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", i);
        const char *argv[] = { "SET", key, "v" };
        assert_int_equal(call(loop, c, &r, 3, argv), 0);
        assert_string_equal(r.str, "OK");
    }
    wp_rcl_stats(c, &st);
    assert_int_equal(st.moved, 0); /* every one went straight to its master */
    long total = 0;
    for (int i = 0; i < 3; i++) {
        char out[64];
        th_sh(out, sizeof(out), "redis-cli -p %d dbsize", PORT[i]);
        assert_true(atol(out) > 0);
        total += atol(out);
    }
    assert_int_equal(total, 300);

    /* A script with two keys of one slot runs on that slot's master. */
    const char *script = "redis.call('SET', KEYS[1], ARGV[1]) redis.call('SET', KEYS[2], ARGV[1]) "
                         "return redis.call('GET', KEYS[2])";
    const char *args[] = { "{t}a", "{t}b", "sv" };
    memset(&r, 0, sizeof(r));
    assert_int_equal(wp_rcl_script(c, script, got, &r, 2, 3, args, NULL), 0);
    spin(loop, &r.done, 5);
    assert_string_equal(r.str, "sv");
    int want = owner(wp_rcl_keyslot("t", 1));
    for (int i = 0; i < 3; i++)
        assert_int_equal(cli_is(PORT[i], "exists {t}a {t}b", "2"), PORT[i] == want);
    /* Keys of two slots: refused before anything is sent. */
    const char *cross[] = { "{t}a", "{u}b", "x" };
    assert_int_equal(wp_rcl_script(c, script, got, &r, 2, 3, cross, NULL), WP_EINVAL_INPUT);
    /* XREAD is routed by its first stream. */
    const char *xadd[] = { "XADD", "{t}s", "*", "f", "1" };
    assert_int_equal(call(loop, c, &r, 5, xadd), 0);
    const char *xread[] = { "XREAD", "COUNT", "1", "STREAMS", "{t}s", "0" };
    assert_int_equal(call(loop, c, &r, 6, xread), 0);
    assert_int_equal(r.type, REDIS_REPLY_ARRAY);

    /* A subscription hears PUBLISH on every node. */
    memset(msgs, 0, sizeof(msgs));
    assert_int_equal(wp_rcl_subscribe(c, "wp:test:chan", on_msg, NULL), 0);
    double end = mono() + 10;
    while (!(msgs[0][0] && msgs[1][0] && msgs[2][0]) && mono() < end) {
        for (int i = 0; i < 3; i++) {
            char out[32];
            th_sh(out, sizeof(out), "redis-cli -p %d publish wp:test:chan from-%d", PORT[i], i);
        }
        double t = mono() + 0.1;
        while (mono() < t)
            ev_run(loop, EVRUN_NOWAIT), th_msleep(2);
    }
    assert_true(msgs[0][0] && msgs[1][0] && msgs[2][0]);
    wp_rcl_free(c);
    ev_loop_destroy(loop);
}

static void ask_while_migrating_then_moved(void **state)
{
    struct result r;
    struct wp_rcl_stats st0, st;
    char out[512];
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct wp_rcl *c = connect_cluster(loop);
    int slot = wp_rcl_keyslot("mv", 2);
    int a = index_of(owner(slot)), b = (a + 1) % 3;
    assert_true(a >= 0);

    const char *set_old[] = { "SET", "{mv}old", "1" };
    assert_int_equal(call(loop, c, &r, 3, set_old), 0);
    wp_rcl_stats(c, &st0);

    /* The slot migrates from a to b: a key a no longer has is asked of b. */
    assert_int_equal(th_sh(out, sizeof(out), "redis-cli -p %d cluster setslot %d importing %s",
                           PORT[b], slot, ID[a]), 0);
    assert_int_equal(th_sh(out, sizeof(out), "redis-cli -p %d cluster setslot %d migrating %s",
                           PORT[a], slot, ID[b]), 0);
    const char *set_new[] = { "SET", "{mv}new", "2" };
    assert_int_equal(call(loop, c, &r, 3, set_new), 0);
    assert_string_equal(r.str, "OK");
    wp_rcl_stats(c, &st);
    assert_int_equal(st.ask, st0.ask + 1);
    assert_int_equal(st.moved, st0.moved);
    const char *get_old[] = { "GET", "{mv}old" };
    assert_int_equal(call(loop, c, &r, 2, get_old), 0);
    assert_string_equal(r.str, "1"); /* still on a: no redirect */
    wp_rcl_stats(c, &st);
    assert_int_equal(st.ask, st0.ask + 1);

    /* Finish: move the key, give the slot to b everywhere. */
    assert_int_equal(th_sh(out, sizeof(out),
                           "redis-cli -p %d migrate 127.0.0.1 %d '' 0 5000 keys {mv}old", PORT[a],
                           PORT[b]), 0);
    for (int i = 0; i < 3; i++)
        th_sh(out, sizeof(out), "redis-cli -p %d cluster setslot %d node %s", PORT[(b + i) % 3],
              slot, ID[b]);
    /* What the ASK wrote is on b. */
    assert_true(cli_is(PORT[b], "get {mv}new", "2"));
    assert_int_equal(call(loop, c, &r, 2, get_old), 0);
    assert_string_equal(r.str, "1");
    wp_rcl_stats(c, &st);
    assert_int_equal(st.moved, st0.moved + 1);
    /* The map is asked for again; after that, no more redirects. */
    double end = mono() + 5;
    long maps = st.maps;
    while (st.maps == maps && mono() < end) {
        ev_run(loop, EVRUN_NOWAIT), th_msleep(2);
        wp_rcl_stats(c, &st);
    }
    assert_true(st.maps > maps);
    const char *get_new[] = { "GET", "{mv}new" };
    assert_int_equal(call(loop, c, &r, 2, get_new), 0);
    assert_string_equal(r.str, "2");
    wp_rcl_stats(c, &st);
    assert_int_equal(st.moved, st0.moved + 1);
    assert_int_equal(owner(slot), PORT[b]);
    wp_rcl_free(c);
    ev_loop_destroy(loop);
}

static void master_restart_is_followed(void **state)
{
    struct result r;
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct wp_rcl *c = connect_cluster(loop);
    /* A key on node 2. */
    char key[16] = "";
    for (int i = 0; i < 1000 && !key[0]; i++) {
        snprintf(key, sizeof(key), "r%d", i);
        if (owner(wp_rcl_keyslot(key, strlen(key))) != PORT[2])
            key[0] = '\0';
    }
    assert_true(key[0] != '\0');
    const char *set[] = { "SET", key, "before" };
    assert_int_equal(call(loop, c, &r, 3, set), 0);
    assert_string_equal(r.str, "OK");

    kill(PID[2], SIGKILL);
    waitpid(PID[2], NULL, 0);
    th_rcluster_node_start(&CL, 2); /* same port, same nodes.conf: same slots */
    const char *set2[] = { "SET", key, "after" };
    bool ok = false;
    double end = mono() + 30;
    while (!ok && mono() < end) {
        ok = call(loop, c, &r, 3, set2) == 0 && r.type == REDIS_REPLY_STATUS;
        if (!ok) {
            double t = mono() + 0.1;
            while (mono() < t)
                ev_run(loop, EVRUN_NOWAIT), th_msleep(2);
        }
    }
    assert_true(ok);
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "get %s", key);
    assert_true(cli_is(PORT[2], cmd, "after"));
    for (int k = 0; k < 100 && !th_rcluster_ok(&CL); k++)
        th_msleep(100);
    assert_true(th_rcluster_ok(&CL));
    wp_rcl_free(c);
    ev_loop_destroy(loop);
}

static int sub_msgs;
static char sub_last[64];

static void on_sub(void *ctx, redisReply *rep)
{
    (void)ctx;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 && rep->element[2]->str &&
        !strcmp(rep->element[0]->str, "message")) {
        sub_msgs++;
        snprintf(sub_last, sizeof(sub_last), "%s", rep->element[2]->str);
    }
}

/* A master dies for good: its replica is promoted, the client finds the new
 * master by itself (the periodic map, no command needed to trigger it) and
 * a subscription held on the dead master moves and hears the cluster. */
static void failover_is_followed(void **state)
{
    struct result r;
    struct wp_rcl_stats st;
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct wp_rcl *c = connect_cluster(loop);
    /* A key and a channel on master 1. */
    char key[16] = "", chan[24] = "";
    for (int i = 0; i < 1000 && !(key[0] && chan[0]); i++) {
        char k[24];
        snprintf(k, sizeof(k), "f%d", i);
        if (owner(wp_rcl_keyslot(k, strlen(k))) == PORT[1]) {
            if (!key[0])
                snprintf(key, sizeof(key), "%s", k);
            else
                snprintf(chan, sizeof(chan), "%s", k);
        }
    }
    assert_true(key[0] && chan[0]);
    sub_msgs = 0;
    assert_int_equal(wp_rcl_subscribe(c, chan, on_sub, NULL), 0);
    double end = mono() + 10;
    while (!wp_rcl_ready(c) && mono() < end)
        ev_run(loop, EVRUN_NOWAIT), th_msleep(2);
    const char *set[] = { "SET", key, "before" };
    assert_int_equal(call(loop, c, &r, 3, set), 0);
    assert_string_equal(r.str, "OK");

    kill(PID[1], SIGKILL);
    waitpid(PID[1], NULL, 0);
    PID[1] = 0;
    /* No command is sent while the cluster fails over: the map refresh
     * alone has to find the promoted replica. */
    int promoted = -1;
    end = mono() + 30;
    while (promoted < 0 && mono() < end) {
        double t = mono() + 0.2;
        while (mono() < t)
            ev_run(loop, EVRUN_NOWAIT), th_msleep(2);
        int o = owner(wp_rcl_keyslot(key, strlen(key)));
        if (o > 0 && o != PORT[1])
            promoted = index_of(o);
    }
    assert_true(promoted >= 0);
    end = mono() + 10;
    while (!wp_rcl_ready(c) && mono() < end)
        ev_run(loop, EVRUN_NOWAIT), th_msleep(2);
    wp_rcl_stats(c, &st);
    long moved = st.moved;
    const char *set2[] = { "SET", key, "after" };
    assert_int_equal(call(loop, c, &r, 3, set2), 0);
    assert_string_equal(r.str, "OK");
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "get %s", key);
    assert_true(cli_is(PORT[promoted], cmd, "after"));
    wp_rcl_stats(c, &st);
    assert_int_equal(st.moved, moved); /* the map already knew */
    assert_true(st.sub_moves >= 1);
    /* The moved subscription hears a PUBLISH sent to any live node. */
    end = mono() + 10;
    while (sub_msgs == 0 && mono() < end) {
        char out[32];
        th_sh(out, sizeof(out), "redis-cli -p %d publish %s hello", PORT[0], chan);
        double t = mono() + 0.1;
        while (mono() < t)
            ev_run(loop, EVRUN_NOWAIT), th_msleep(2);
    }
    assert_true(sub_msgs > 0);
    assert_string_equal(sub_last, "hello");
    wp_rcl_free(c);
    ev_loop_destroy(loop);
}

static void bad_seeds_are_refused(void **state)
{
    struct wp_err err;
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    assert_null(wp_rcl_new(loop, "", "t", &err));
    assert_null(wp_rcl_new(loop, "127.0.0.1", "t", &err));
    assert_null(wp_rcl_new(loop, "127.0.0.1:1,:2", "t", &err));
    assert_null(wp_rcl_new(loop, "127.0.0.1:99999", "t", &err));
    assert_non_null(strstr(err.msg, "HOST:PORT"));
    ev_loop_destroy(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_seeds_are_refused),
        cmocka_unit_test(keyslot_matches_the_server),
        cmocka_unit_test(commands_and_scripts_reach_their_master),
        cmocka_unit_test(ask_while_migrating_then_moved),
        cmocka_unit_test(master_restart_is_followed),
        cmocka_unit_test(failover_is_followed),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
