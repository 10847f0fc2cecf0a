/* test_redis_script.c - wp_redis_script against a real redis-server: the
 * first call of a script on a connection is EVAL, later ones EVALSHA;
 * after SCRIPT FLUSH, and after Redis restarts, calls still work; the
 * caller sees exactly what EVAL answers, and each call runs the script
 * once. */
#include <ev.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "base/redis.h"

static struct th_redis RD;
static struct ev_loop *LOOP;

/* A reply as text, type by type, so two replies compare with strcmp. */
static void show(const redisReply *r, char *out, size_t cap)
{
    size_t n = strlen(out);
    if (!r) {
        snprintf(out + n, cap - n, "<none>");
        return;
    }
    switch (r->type) {
    case REDIS_REPLY_ARRAY:
        snprintf(out + n, cap - n, "[");
        for (size_t i = 0; i < r->elements; i++) {
            show(r->element[i], out, cap);
            n = strlen(out);
            snprintf(out + n, cap - n, ",");
        }
        n = strlen(out);
        snprintf(out + n, cap - n, "]");
        break;
    case REDIS_REPLY_INTEGER:
        snprintf(out + n, cap - n, "i%lld", r->integer);
        break;
    case REDIS_REPLY_NIL:
        snprintf(out + n, cap - n, "nil");
        break;
    default: /* string, status, error */
        snprintf(out + n, cap - n, "t%d:%.*s", r->type, (int)r->len, r->str);
    }
}

struct got {
    bool done;
    char text[2048];
};

static void got_cb(void *ctx, redisReply *reply)
{
    struct got *g = ctx;
    g->text[0] = '\0';
    show(reply, g->text, sizeof(g->text));
    g->done = true;
}

static void wait_ready(struct wp_redis *r)
{
    for (int i = 0; i < 500 && !wp_redis_ready(r); i++) {
        ev_run(LOOP, EVRUN_NOWAIT);
        th_msleep(10);
    }
    assert_true(wp_redis_ready(r));
}

/* wp_redis_script and the loop until its reply: that reply as text. */
static void run(struct wp_redis *r, const char *script, int nkeys, int argc, const char **argv,
                struct got *g)
{
    memset(g, 0, sizeof(*g));
    assert_int_equal(wp_redis_script(r, script, got_cb, g, nkeys, argc, argv, NULL), 0);
    for (int i = 0; i < 500 && !g->done; i++) {
        ev_run(LOOP, EVRUN_NOWAIT);
        if (!g->done)
            th_msleep(10);
    }
    assert_true(g->done);
}

static redisContext *sync_conn(void)
{
    redisContext *c = redisConnect("127.0.0.1", RD.port);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    return c;
}

/* The same script by plain EVAL on a second connection. */
static void eval_text(const char *script, int nkeys, int argc, const char **argv, char *out,
                      size_t cap)
{
    redisContext *c = sync_conn();
    const char *av[16];
    char nk[8];
    snprintf(nk, sizeof(nk), "%d", nkeys);
    av[0] = "EVAL";
    av[1] = script;
    av[2] = nk;
    for (int i = 0; i < argc; i++)
        av[3 + i] = argv[i];
    redisReply *rep = redisCommandArgv(c, argc + 3, av, NULL);
    out[0] = '\0';
    show(rep, out, cap);
    freeReplyObject(rep);
    redisFree(c);
}

static void sync_cmd(const char *cmd)
{
    redisContext *c = sync_conn();
    redisReply *rep = redisCommand(c, cmd);
    assert_non_null(rep);
    assert_int_not_equal(rep->type, REDIS_REPLY_ERROR);
    freeReplyObject(rep);
    redisFree(c);
}

/* calls= of one command in INFO commandstats (0 if never called). */
static long calls(const char *name)
{
    redisContext *c = sync_conn();
    redisReply *rep = redisCommand(c, "INFO commandstats");
    assert_non_null(rep);
    char pat[64];
    snprintf(pat, sizeof(pat), "cmdstat_%s:calls=", name);
    const char *p = strstr(rep->str, pat);
    long n = p ? atol(p + strlen(pat)) : 0;
    freeReplyObject(rep);
    redisFree(c);
    return n;
}

static int setup(void **state)
{
    (void)state;
    LOOP = ev_loop_new(0);
    return LOOP && th_redis_start(&RD, 0) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    th_redis_stop(&RD);
    ev_loop_destroy(LOOP);
    return 0;
}

/* Keys, arguments, numbers, nested arrays, a nil inside: as EVAL gives them. */
static const char shape[] = "return {KEYS[1], ARGV[1], 42, {1, 'x', false}, ARGV[2] .. '!'}\n";
static const char boom[] = "return redis.error_reply('BOOM ' .. ARGV[1])\n";
static const char count[] = "return redis.call('INCR', KEYS[1])\n";

static void evalsha_after_first_call_same_replies(void **state)
{
    (void)state;
    struct wp_redis *r = wp_redis_new(LOOP, "127.0.0.1", RD.port, "t");
    struct got g;
    char want[2048];
    const char *argv[] = { "k1", "a1", "a2" };
    wait_ready(r);
    eval_text(shape, 1, 3, argv, want, sizeof(want));
    assert_non_null(strstr(want, "i42"));

    long sha0 = calls("evalsha"), eval0 = calls("eval");
    run(r, shape, 1, 3, argv, &g); /* first on this connection: EVAL loads it */
    assert_string_equal(g.text, want);
    assert_int_equal(calls("eval"), eval0 + 1);
    assert_int_equal(calls("evalsha"), sha0);
    run(r, shape, 1, 3, argv, &g); /* then by its SHA1 */
    assert_string_equal(g.text, want);
    assert_int_equal(calls("evalsha"), sha0 + 1);
    assert_int_equal(calls("eval"), eval0 + 1);

    /* An error reply, the same by EVALSHA as by EVAL. */
    const char *bargv[] = { "x y" };
    eval_text(boom, 0, 1, bargv, want, sizeof(want));
    run(r, boom, 0, 1, bargv, &g);
    run(r, boom, 0, 1, bargv, &g);
    assert_string_equal(g.text, want);
    assert_int_equal(calls("evalsha"), sha0 + 2);
    wp_redis_free(r);
}

static void works_after_script_flush_and_restart(void **state)
{
    (void)state;
    struct wp_redis *r = wp_redis_new(LOOP, "127.0.0.1", RD.port, "t");
    struct got g;
    const char *argv[] = { "counter" };
    wait_ready(r);
    sync_cmd("DEL counter");
    run(r, count, 1, 1, argv, &g);
    assert_string_equal(g.text, "i1");
    run(r, count, 1, 1, argv, &g);
    assert_string_equal(g.text, "i2");

    /* Flushed: EVALSHA gets NOSCRIPT, the call is sent again as EVAL, the
     * caller sees only its answer, and the script ran once. */
    sync_cmd("SCRIPT FLUSH");
    long sha0 = calls("evalsha"), eval0 = calls("eval");
    run(r, count, 1, 1, argv, &g);
    assert_string_equal(g.text, "i3");
    assert_int_equal(calls("evalsha"), sha0 + 1);
    assert_int_equal(calls("eval"), eval0 + 1);
    run(r, count, 1, 1, argv, &g); /* loaded again: EVALSHA */
    assert_string_equal(g.text, "i4");
    assert_int_equal(calls("evalsha"), sha0 + 2);
    assert_int_equal(calls("eval"), eval0 + 1);

    /* Redis restarts (no data kept, no scripts): the new connection loads
     * it again with its first call. */
    assert_int_equal(th_redis_restart(&RD), 0);
    for (int i = 0; i < 300 && wp_redis_ready(r); i++) { /* notice the drop */
        ev_run(LOOP, EVRUN_NOWAIT);
        th_msleep(10);
    }
    wait_ready(r);
    for (int i = 0; i < 300; i++) { /* a command may still meet the old socket */
        run(r, count, 1, 1, argv, &g);
        if (strcmp(g.text, "<none>") != 0)
            break;
        wait_ready(r);
    }
    assert_string_equal(g.text, "i1");
    run(r, count, 1, 1, argv, &g);
    assert_string_equal(g.text, "i2");
    assert_int_equal(calls("evalsha"), 1);
    wp_redis_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(evalsha_after_first_call_same_replies),
        cmocka_unit_test(works_after_script_flush_and_restart),
    };
    return cmocka_run_group_tests_name("redis_script", tests, setup, teardown);
}
