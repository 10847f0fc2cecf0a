/* test_redis_sentinel.c - Redis behind Sentinel: a primary, a replica and
 * three sentinels (real redis-server processes, `--sentinel` mode). The
 * scheduler, a node and the CLI find the primary through the sentinels; a
 * wp_redis client writing continuously follows a `kill -9` of the primary
 * to the promoted replica (its writes land there) and its subscription
 * comes back. */
#include <ev.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "lib/sched_testlib.h"
#include "lib/sentinel_testlib.h"
#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/redis.h"
#include "base/sentinel.h"

#define MASTER "wpm"
#define KEY "sk-acme"

static struct th_sentinel T; /* rport[0] starts as the primary */
#define PRIMARY T.rport[0]

static int setup(void **state)
{
    (void)state;
    return th_sentinel_start(&T, MASTER);
}

static int teardown(void **state)
{
    (void)state;
    th_sentinel_stop(&T);
    return 0;
}

static void bad_sentinel_config_is_refused(void **state)
{
    struct wp_err err;
    (void)state;
    assert_true(wp_sentinel_set("127.0.0.1:1", NULL, &err) < 0);
    assert_true(wp_sentinel_set("", MASTER, &err) < 0);
    assert_true(wp_sentinel_set("127.0.0.1", MASTER, &err) < 0);
    assert_true(wp_sentinel_set("127.0.0.1:0", MASTER, &err) < 0);
    assert_true(wp_sentinel_set("127.0.0.1:70000", MASTER, &err) < 0);
    assert_true(wp_sentinel_set(":26379", MASTER, &err) < 0);
    assert_true(wp_sentinel_set("127.0.0.1:1x", MASTER, &err) < 0);
    assert_non_null(strstr(err.msg, "HOST:PORT"));
    assert_true(wp_sentinel_set("127.0.0.1:1", "two words", &err) < 0);
    assert_true(wp_sentinel_set("a:1,a:2,a:3,a:4,a:5,a:6,a:7,a:8,a:9", MASTER, &err) < 0);
    assert_false(wp_sentinel_on()); /* nothing was set */
}

/* POST an agent until the scheduler answers want (up to 5 s): the last
 * status; body (may be NULL) gets the start of the last body. */
static int post_agent_until(int port, int want, char *body, size_t cap)
{
    struct th_resp r;
    int st = -1;
    for (int i = 0; i < 100 && st != want; i++, th_msleep(50))
        if (th_http(port, "POST", "/v1/agents", KEY, "{\"name\":\"a\",\"model\":\"claude-x\"}",
                    &r) == 0) {
            st = r.status;
            if (body)
                snprintf(body, cap, "%s", r.body ? r.body : "");
            th_resp_free(&r);
        }
    return st;
}

/* The processes, configured with sentinels only (their --redis points
 * nowhere): the scheduler serves, a node registers, the CLI reads. */
static void processes_find_the_primary(void **state)
{
    struct th_sched s;
    char tmpl[1024], env[1200], log[1100], state_dir[1100], out[4096];
    (void)state;

    assert_int_equal(th_sched_start(&s, T.dead, "--redis-sentinels", T.list, "--redis-master",
                                    MASTER, NULL), 0);
    assert_int_equal(post_agent_until(s.port, 200, NULL, 0), 200);
    assert_int_equal(th_sched_stop(&s), 0);
    /* The agent is on the primary. */
    th_sh(out, sizeof(out), "redis-cli -p %d --scan --pattern 'wp:obj:{acme}:agent_*'", PRIMARY);
    assert_non_null(strstr(out, "wp:obj:{acme}:agent_"));
    /* Half a configuration is refused at start. */
    assert_int_equal(th_sched_start(&s, T.dead, "--redis-sentinels", T.list, NULL), -1);

    assert_int_equal(th_hands_template(T.dir, "sentenv", NULL, tmpl, sizeof(tmpl)), 0);
    snprintf(env, sizeof(env), "%s:0:0", tmpl);
    snprintf(log, sizeof(log), "%s/node.log", T.dir);
    snprintf(state_dir, sizeof(state_dir), "%s/state", T.dir);
    pid_t node = th_node_start("sentnode", T.dead, state_dir, log, "--env", env, "--no-api-envs",
                               "--redis-sentinels", T.list, "--redis-master", MASTER, NULL);
    assert_true(node > 0);
    bool registered = false;
    for (int i = 0; i < 100 && !registered; i++, th_msleep(100)) {
        th_sh(out, sizeof(out), "redis-cli -p %d sismember wp:nodes sentnode", PRIMARY);
        registered = atoi(out) == 1;
    }
    assert_true(registered);
    int rc = th_sh(out, sizeof(out),
                   "%s/warmpool --redis 127.0.0.1:%d --redis-sentinels %s --redis-master %s "
                   "pool status",
                   th_build_dir(), T.dead, T.list, MASTER);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "sentnode"));
    /* An unknown master name: a clear error naming it. */
    rc = th_sh(out, sizeof(out),
               "%s/warmpool --redis-sentinels %s --redis-master nosuch pool status 2>&1",
               th_build_dir(), T.list);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(out, "nosuch"));
    kill(node, SIGTERM);
    waitpid(node, NULL, 0);
}

/* A sentinel that wants a password (its requirepass): the CLI and the
 * scheduler reach it with --redis-sentinel-password-file; without the
 * password, or with a wrong one, they say so instead of finding nothing. */
static void sentinels_with_a_password(void **state)
{
    char pw[512], bad[512], list[64], out[4096];
    struct th_sched s;
    (void)state;

    snprintf(pw, sizeof(pw), "%s/sentinel-pw", T.dir);
    snprintf(bad, sizeof(bad), "%s/sentinel-bad", T.dir);
    assert_int_equal(wp_write_file(pw, "sentinel-s3cret\n", 16, 0600, NULL), 0);
    assert_int_equal(wp_write_file(bad, "wrong\n", 6, 0600, NULL), 0);
    int port = th_free_port();
    pid_t sp = th_sentinel_add(&T, port, "sentinel-s3cret");
    assert_true(sp > 0);
    snprintf(list, sizeof(list), "127.0.0.1:%d", port);

    /* No password, a wrong one, the right one. */
    const char *files[] = { NULL, bad, pw };
    const char *want[] = { "NOAUTH", "AUTH refused", NULL };
    for (int i = 0; i < 3; i++) {
        int rc = th_sh(out, sizeof(out),
                       "%s/warmpool --redis-sentinels %s --redis-master %s %s %s pool status 2>&1",
                       th_build_dir(), list, MASTER,
                       files[i] ? "--redis-sentinel-password-file" : "", files[i] ? files[i] : "");
        if (want[i]) {
            assert_int_not_equal(rc, 0);
            assert_non_null(strstr(out, want[i]));
        } else {
            assert_int_equal(rc, 0);
        }
    }
    /* Without sentinels the password file means nothing: refused. */
    int rc = th_sh(out, sizeof(out), "%s/warmpool --redis-sentinel-password-file %s pool status 2>&1",
               th_build_dir(), pw);
    assert_int_not_equal(rc, 0);

    /* The scheduler's connections (asynchronous) and its +switch-master watch. */
    assert_int_equal(th_sched_start(&s, T.dead, "--redis-sentinels", list, "--redis-master",
                                    MASTER, "--redis-sentinel-password-file", pw, NULL), 0);
    assert_int_equal(post_agent_until(s.port, 200, NULL, 0), 200);
    assert_int_equal(th_sched_stop(&s), 0);
    kill(sp, SIGKILL);
    waitpid(sp, NULL, 0);
}

/* --- durable mode: WAIT ------------------------------------------------- */

struct one {
    bool done;
    int type;
    char str[128];
};

static void one_cb(void *ctx, redisReply *rep)
{
    struct one *o = ctx;
    o->done = true;
    o->type = rep ? rep->type : -1;
    snprintf(o->str, sizeof(o->str), "%s", rep && rep->str ? rep->str : "");
}

static void one_set(struct ev_loop *loop, struct wp_redis *r, const char *val, struct one *o)
{
    const char *argv[] = { "SET", "wp:test:durable", val };
    memset(o, 0, sizeof(*o));
    assert_int_equal(wp_redis_argv(r, one_cb, o, 3, argv, NULL), 0);
    for (int i = 0; i < 2000 && !o->done; i++)
        ev_run(loop, EVRUN_NOWAIT), th_msleep(5);
    assert_true(o->done);
}

/* A write is answered once the replicas have it, and refused (though on
 * the primary) when too few do in time; the scheduler says 503. */
static void durable_mode_waits_for_replicas(void **state)
{
    struct one o;
    struct th_sched s;
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct wp_redis *c = wp_redis_new(loop, "127.0.0.1", PRIMARY, "durable");
    for (int i = 0; i < 400 && !wp_redis_ready(c); i++)
        ev_run(loop, EVRUN_NOWAIT), th_msleep(5);
    assert_true(wp_redis_ready(c));
    wp_redis_set_wait(c, 2, 5000); /* generous: the machine is shared */
    one_set(loop, c, "two", &o);
    if (o.type != REDIS_REPLY_STATUS)
        fprintf(stderr, "# SET with WAIT 2: %s\n", o.str);
    assert_int_equal(o.type, REDIS_REPLY_STATUS);
    assert_string_equal(o.str, "OK");
    wp_redis_set_wait(c, 3, 2000); /* there are two replicas (2 s: a loaded machine) */
    one_set(loop, c, "three", &o);
    assert_int_equal(o.type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(o.str, "NOTREPLICATED 2 of 3"));
    assert_true(th_redis_cli_has(PRIMARY, "get wp:test:durable", "three"));
    wp_redis_free(c);
    ev_run(loop, EVRUN_NOWAIT);
    ev_loop_destroy(loop);

    assert_int_equal(th_sched_start(&s, PRIMARY, "--redis-wait-replicas", "2", "--redis-wait-ms",
                                    "5000", NULL), 0);
    assert_int_equal(post_agent_until(s.port, 200, NULL, 0), 200);
    assert_int_equal(th_sched_stop(&s), 0);
    assert_int_equal(th_sched_start(&s, PRIMARY, "--redis-wait-replicas", "3", "--redis-wait-ms",
                                    "100", NULL), 0);
    char body[512];
    assert_int_equal(post_agent_until(s.port, 503, body, sizeof(body)), 503);
    assert_non_null(strstr(body, "replicate"));
    assert_int_equal(th_sched_stop(&s), 0);
}

/* Durable mode: a stream shows an event only once the replicas have it,
 * as a write is acknowledged only then. With both replicas frozen an event
 * written to the primary is not shown; once they catch up, the live
 * stream shows it. */
static void durable_streams_show_only_replicated_events(void **state)
{
    struct th_sched s;
    char body[8192], req[400], buf[16384], out[4096];
    (void)state;

    assert_int_equal(th_sched_start(&s, PRIMARY, "--redis-wait-replicas", "2", "--redis-wait-ms",
                                    "500", NULL), 0);
    assert_int_equal(post_agent_until(s.port, 200, body, sizeof(body)), 200);
    json_t *ag = json_loads(body, 0, NULL);
    assert_non_null(ag);
    json_t *en = th_api(s.port, KEY, "POST", "/v1/environments",
                        "{\"name\":\"dur\",\"config\":{\"type\":\"self_hosted\"}}", 200);
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}",
             json_string_value(json_object_get(ag, "id")),
             json_string_value(json_object_get(en, "id")));
    json_t *se = th_api(s.port, KEY, "POST", "/v1/sessions", body, 200);
    const char *sid = json_string_value(json_object_get(se, "id"));

    int fd = th_connect(s.port);
    assert_true(fd >= 0);
    int n = snprintf(req, sizeof(req),
                     "GET /v1/sessions/%s/events/stream HTTP/1.1\r\nHost: t\r\n"
                     "x-api-key: %s\r\n\r\n", sid, KEY);
    assert_int_equal(th_send_all(fd, req, (size_t)n), 0);
    th_read_until(fd, buf, sizeof(buf), "\r\n\r\n", 5000);
    assert_non_null(strstr(buf, " 200 "));
    th_send_text(s.port, KEY, sid, "seen-while-replicated");
    th_read_until(fd, buf, sizeof(buf), "seen-while-replicated", 5000);
    assert_non_null(strstr(buf, "seen-while-replicated"));

    kill(T.rpid[1], SIGSTOP);
    kill(T.rpid[2], SIGSTOP);
    /* As the brain's emit leaves an event: on the primary, its WAIT not
     * answered yet (a POST would not even get that far: its first read
     * waits for the replicas too and answers 503). */
    int rc = th_sh(out, sizeof(out),
                   "redis-cli -p %d xadd 'wp:events:{%s}' '*' t user.message e "
                   "'{\"type\":\"user.message\",\"content\":[{\"type\":\"text\","
                   "\"text\":\"held-until-replicated\"}]}'",
                   PRIMARY, sid);
    th_read_until(fd, buf, sizeof(buf), "held-until-replicated", 2500);
    bool shown_early = strstr(buf, "held-until-replicated") != NULL;
    char hpath[200];
    snprintf(hpath, sizeof(hpath), "/v1/sessions/%s/events?limit=100", sid);
    struct th_resp hr = { 0 };
    bool listed_early = true;
    if (th_http(s.port, "GET", hpath, KEY, NULL, &hr) == 0) {
        listed_early = hr.body && strstr(hr.body, "held-until-replicated");
        th_resp_free(&hr);
    }
    kill(T.rpid[1], SIGCONT);
    kill(T.rpid[2], SIGCONT);
    assert_int_equal(rc, 0);
    assert_false(shown_early);
    assert_false(listed_early); /* 503, or a history without it */
    th_read_until(fd, buf, sizeof(buf), "held-until-replicated", 15000);
    assert_non_null(strstr(buf, "held-until-replicated"));
    json_t *h = NULL;
    for (int i = 0; i < 50; i++, th_msleep(100)) {
        struct th_resp r2 = { 0 };
        if (th_http(s.port, "GET", hpath, KEY, NULL, &r2) == 0 && r2.status == 200 && r2.body &&
            strstr(r2.body, "held-until-replicated"))
            h = json_loads(r2.body, 0, NULL);
        th_resp_free(&r2);
        if (h)
            break;
    }
    assert_non_null(h);
    json_decref(h);

    close(fd);
    json_decref(ag);
    json_decref(en);
    json_decref(se);
    assert_int_equal(th_sched_stop(&s), 0);
}

/* --- the failover ------------------------------------------------------ */

struct writer {
    struct wp_redis *c, *sub;
    long next;         /* next value to RPUSH */
    long acked_before; /* acknowledged before the kill */
    long acked_after;  /* acknowledged after the kill */
    long failed;       /* NULL or error replies */
    bool killed;
    long *after;       /* values acknowledged after the kill */
    size_t nafter;
    char last_msg[64];
    char want_msg[64];
};

struct push {
    struct writer *w;
    long v;
    bool after_kill; /* sent after the kill: cannot have gone to the old primary */
};

static void pushed(void *ctx, redisReply *rep)
{
    struct push *p = ctx;
    struct writer *w = p->w;
    if (!rep || rep->type != REDIS_REPLY_INTEGER) {
        w->failed++;
    } else if (p->after_kill) {
        w->acked_after++;
        if (w->nafter < 100000)
            w->after[w->nafter++] = p->v;
    } else {
        w->acked_before++;
    }
    free(p);
}

static void tick(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct writer *w = t->data;
    (void)loop;
    (void)revents;
    if (!wp_redis_ready(w->c))
        return;
    struct push *p = malloc(sizeof(*p));
    char val[32];
    assert_non_null(p);
    *p = (struct push){ w, w->next++, w->killed };
    snprintf(val, sizeof(val), "%ld", p->v);
    const char *argv[] = { "RPUSH", "wp:test:writes", val };
    if (wp_redis_argv(w->c, pushed, p, 3, argv, NULL) < 0)
        free(p);
}

static void on_msg(void *ctx, redisReply *rep)
{
    struct writer *w = ctx;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 &&
        rep->element[2]->type == REDIS_REPLY_STRING)
        snprintf(w->last_msg, sizeof(w->last_msg), "%s", rep->element[2]->str);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Run the loop until done(w) or secs pass; publish msg on port meanwhile. */
static bool run_until(struct ev_loop *loop, struct writer *w, bool (*done)(struct writer *),
                      double secs, int pub_port, const char *msg)
{
    double end = now_s() + secs, next_pub = 0;
    while (now_s() < end) {
        if (done(w))
            return true;
        if (pub_port && now_s() >= next_pub) {
            char out[64];
            th_sh(out, sizeof(out), "redis-cli -p %d publish wp:test:chan %s", pub_port, msg);
            next_pub = now_s() + 0.2;
        }
        ev_run(loop, EVRUN_ONCE);
    }
    return done(w);
}

static bool warmed_up(struct writer *w)
{
    return w->acked_before >= 20 && !strcmp(w->last_msg, "before");
}

static bool followed(struct writer *w)
{
    return w->acked_after >= 50 && !strcmp(w->last_msg, w->want_msg);
}

/* Hit the primary with sig, let the writer follow; its writes sent after
 * the hit are all on the new primary, and its subscription is back there. */
static int fail_over(struct ev_loop *loop, struct writer *w, int sig, const char *msg)
{
    int old = th_sentinel_index(&T, th_sentinel_primary(&T));
    assert_true(old >= 0);
    /* A replica to promote: in sync with this primary. */
    for (int i = 0; i < 200 && th_redis_cli_has(T.rport[old], "info replication", "connected_slaves:0"); i++)
        run_until(loop, w, followed, 0.1, 0, NULL);
    assert_false(th_redis_cli_has(T.rport[old], "info replication", "connected_slaves:0"));
    assert_true(run_until(loop, w, warmed_up, 20, T.rport[old], "before"));
    w->acked_after = 0;
    w->nafter = 0;
    w->killed = true;
    snprintf(w->want_msg, sizeof(w->want_msg), "%s", msg);
    kill(T.rpid[old], sig);
    if (sig == SIGKILL) {
        waitpid(T.rpid[old], NULL, 0);
        T.rpid[old] = 0;
    }
    double t0 = now_s();
    int now = -1;
    for (int i = 0; i < 400 && (now = th_sentinel_primary(&T)) == T.rport[old]; i++)
        run_until(loop, w, followed, 0.1, 0, NULL);
    assert_int_not_equal(now, T.rport[old]);
    bool ok = run_until(loop, w, followed, 40, now, msg);
    fprintf(stderr, "# signal %d: followed in %.1f s: %ld acked before, %ld after, %ld failed\n",
            sig, now_s() - t0, w->acked_before, w->acked_after, w->failed);
    assert_true(ok);

    redisContext *rc = redisConnect("127.0.0.1", now);
    assert_non_null(rc);
    redisReply *role = redisCommand(rc, "ROLE");
    assert_string_equal(role->element[0]->str, "master");
    freeReplyObject(role);
    redisReply *all = redisCommand(rc, "LRANGE wp:test:writes 0 -1");
    assert_int_equal(all->type, REDIS_REPLY_ARRAY);
    char *seen = calloc((size_t)w->next + 1, 1);
    for (size_t i = 0; i < all->elements; i++) {
        long v = atol(all->element[i]->str);
        if (v >= 0 && v <= w->next)
            seen[v] = 1;
    }
    for (size_t i = 0; i < w->nafter; i++)
        assert_true(seen[w->after[i]]);
    free(seen);
    freeReplyObject(all);
    redisFree(rc);
    w->killed = false;
    w->acked_before = 0;
    return now;
}

static void client_follows_failovers(void **state)
{
    struct writer w = { 0 };
    struct wp_err err;
    (void)state;

    assert_int_equal(wp_sentinel_set(T.list, MASTER, &err), 0);
    w.after = calloc(100000, sizeof(long));
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    /* The address given is ignored in sentinel mode. */
    w.c = wp_redis_new(loop, "127.0.0.1", T.dead, "writer");
    w.sub = wp_redis_new(loop, "127.0.0.1", T.dead, "writer-sub");
    assert_int_equal(wp_redis_subscribe(w.sub, "wp:test:chan", on_msg, &w), 0);
    ev_timer t;
    ev_timer_init(&t, tick, 0.01, 0.01);
    t.data = &w;
    ev_timer_start(loop, &t);

    /* Frozen, not dead: its connections stay open and silent. Only the
     * sentinels' +switch-master can move the client (the old primary is
     * still stopped when the writes land on the new one). */
    fail_over(loop, &w, SIGSTOP, "after-stop");
    /* Dead: the connections drop, the sentinels name the last replica. */
    int now = fail_over(loop, &w, SIGKILL, "after-kill");

    /* A synchronous connection (the CLIs') goes to the new primary too. */
    redisContext *sc = wp_redis_connect_sync("127.0.0.1", T.dead, &err);
    assert_non_null(sc);
    assert_int_equal(sc->tcp.port, now);
    redisFree(sc);

    ev_timer_stop(loop, &t);
    wp_redis_free(w.c);
    wp_redis_free(w.sub);
    ev_run(loop, EVRUN_NOWAIT);
    ev_loop_destroy(loop);
    free(w.after);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_sentinel_config_is_refused),
        cmocka_unit_test(processes_find_the_primary),
        cmocka_unit_test(sentinels_with_a_password),
        cmocka_unit_test(durable_mode_waits_for_replicas),
        cmocka_unit_test(durable_streams_show_only_replicated_events),
        cmocka_unit_test(client_follows_failovers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
