/* test_pool_cluster.c - node daemons on a real 3-master Redis Cluster
 * (--redis-cluster) with real sandboxes: hot and warm claims in two
 * environments whose keys live on different masters, renew and release
 * with fencing, a node killed with SIGKILL reaped, a node restarted and
 * reconciled, and `warmpool pool status` - the properties test_pool checks
 * on a single Redis. The claims go through this process's pool client,
 * itself in cluster mode (wp_rcl_set), as a scheduler's would. */
#include <errno.h>
#include <ev.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "lib/pool_testlib.h"
#include "lib/rcluster_testlib.h"
#include "lib/sched_testlib.h"
#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/rcluster.h"
#include "pool/pool.h"

#define ENV "counter"

static struct th_rcluster CL;
static char SEEDS[512];
static char *DIR_;
static char ENV2[32]; /* a second environment, on another master than ENV */
static char TMPL[1024], TMPL2[1024];
static struct wp_rcl_sync *RS;

struct node_proc {
    char id[32];
    char state[1024];
    pid_t pid;
};
static struct node_proc NODES[2];

/* ---- Redis, routed ---------------------------------------------------- */

/* A command through the cluster router; a failure fails the test. */
static redisReply *vq(const char *fmt, va_list ap)
{
    char *f = NULL;
    struct wp_err err;
    int len = redisvFormatCommand(&f, fmt, ap);
    assert_true(len > 0);
    redisReply *r = wp_rcl_sync_formatted(RS, f, (size_t)len, &err);
    redisFreeCommand(f);
    if (!r)
        fail_msg("redis: %s", err.msg);
    return r;
}

static redisReply *q(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static redisReply *q(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vq(fmt, ap);
    va_end(ap);
    return r;
}

/* An integer reply, or -1. */
static long long qint(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static long long qint(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vq(fmt, ap);
    va_end(ap);
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return v;
}

/* A hash field as a string ("" when absent). */
static void hget(char *out, size_t cap, const char *key, const char *field)
{
    redisReply *r = q("HGET %s %s", key, field);
    snprintf(out, cap, "%s", r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
}

static bool wait_hot(const char *env, long long n, int seconds)
{
    for (int i = 0; i < seconds * 20; i++) {
        if (qint("LLEN wp:env:{%s}:hot", env) == n)
            return true;
        th_msleep(50);
    }
    /* Why not: the count, and the nodes' last words. */
    char out[8192];
    print_message("# hot list of %s: %lld, want %lld\n", env, qint("LLEN wp:env:{%s}:hot", env), n);
    redisReply *h = q("LRANGE wp:env:{%s}:hot 0 -1", env);
    for (size_t i = 0; i < h->elements; i++) {
        char key[256], who[64];
        snprintf(key, sizeof(key), "wp:env:{%s}:sb:%s", env, h->element[i]->str);
        hget(who, sizeof(who), key, "node");
        print_message("#   %s on %s\n", h->element[i]->str, who);
    }
    freeReplyObject(h);
    for (int i = 0; i < 2; i++) {
        th_sh(out, sizeof(out), "grep -v 'connect failed' %s/node%d.log | grep -E 'warn|error|ready|hot|fit|budget' | tail -n 12",
              DIR_, i);
        print_message("# node%d:\n%s\n", i, out);
    }
    return false;
}

/* ---- nodes ------------------------------------------------------------- */

static void node_start(struct node_proc *np, int min_hot, bool two_envs)
{
    char log[1200], spec[1200], spec2[1200];
    snprintf(log, sizeof(log), "%s/%s.log", DIR_, np->id);
    snprintf(spec, sizeof(spec), "%s:%d:%d", TMPL, min_hot, min_hot);
    snprintf(spec2, sizeof(spec2), "%s:1:1", TMPL2);
    np->pid = th_node_start(np->id, 1 /* unused: --redis-cluster */, np->state, log,
                            "--redis-cluster", SEEDS, "--env", spec, "--heartbeat-ttl", "1",
                            "--log-level", "info", two_envs ? "--env" : NULL, spec2, NULL);
    assert_true(np->pid > 0);
}

static void node_stop(struct node_proc *np, int sig)
{
    if (np->pid <= 0)
        return;
    kill(np->pid, sig);
    waitpid(np->pid, NULL, 0);
    np->pid = 0;
}

static int group_setup(void **state)
{
    char wp[1200];
    struct wp_err err;
    (void)state;
    if (th_rcluster_start(&CL, 3, 0) < 0)
        return -1;
    th_rcluster_seeds(&CL, SEEDS, sizeof(SEEDS));
    /* This process's pool client and reads are cluster clients too. */
    if (wp_rcl_set(SEEDS, &err) < 0 || !(RS = wp_rcl_sync_new(&err)))
        return -1;
    DIR_ = th_tmpdir("poolcl");
    if (th_hands_copy(DIR_, wp, sizeof(wp)) < 0)
        return -1;
    /* The second environment's keys on another master than the first's. */
    int own = th_rcluster_owner(&CL, wp_rcl_keyslot(ENV, strlen(ENV)));
    for (int i = 0; i < 100 && !ENV2[0]; i++) {
        char name[32];
        snprintf(name, sizeof(name), "other%d", i);
        if (th_rcluster_owner(&CL, wp_rcl_keyslot(name, strlen(name))) != own)
            snprintf(ENV2, sizeof(ENV2), "%s", name);
    }
    snprintf(TMPL, sizeof(TMPL), "%s/counter.json", DIR_);
    snprintf(TMPL2, sizeof(TMPL2), "%s/%s.json", DIR_, ENV2);
    if (!ENV2[0] || th_pool_template(TMPL, ENV, wp) < 0 || th_pool_template(TMPL2, ENV2, wp) < 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        snprintf(NODES[i].id, sizeof(NODES[i].id), "node%d", i);
        snprintf(NODES[i].state, sizeof(NODES[i].state), "%s/state-%d", DIR_, i);
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++)
        node_stop(&NODES[i], SIGTERM);
    wp_rcl_sync_free(RS);
    th_rcluster_stop(&CL);
    int mounts = th_mounts_left(DIR_);
    th_rmtree(DIR_);
    free(DIR_);
    return mounts ? -1 : 0;
}

/* ---- claims, driven on a loop (lib/pool_testlib.h) ---------------------- */

static void claim(struct pool_client *c, struct ev_loop *loop, const char *env, const char *session,
                  struct th_claim_out *o)
{
    struct wp_err err;
    memset(o, 0, sizeof(*o));
    if (pool_claim(c, env, session, 30, th_claim_cb, o, &err) < 0)
        fail_msg("claim: %s", err.msg);
    th_run_until(loop, o, 1);
    if (o->status != 0)
        fail_msg("claim %s %s: %s", env, session, o->msg);
}

/* pool_release or pool_renew (op) of res with token: its status. */
typedef int (*sb_op)(struct pool_client *, const char *, const char *, uint64_t, pool_done_cb,
                     void *, struct wp_err *);
static int sb_call(sb_op op, struct pool_client *c, struct ev_loop *loop, const char *env,
                   const struct pool_claim_result *res, uint64_t token)
{
    struct th_claim_out r = { 0 };
    struct wp_err err;
    assert_int_equal(op(c, env, res->sandbox, token, th_done_cb, &r, &err), 0);
    th_run_until(loop, &r, 1);
    return r.status;
}
#define release(c, loop, env, res, token) sb_call(pool_release, c, loop, env, res, token)
#define renew(c, loop, env, res, token) sb_call(pool_renew, c, loop, env, res, token)

/* Claim in env until a sandbox of node comes (the others are kept in
 * held[], *nheld of them). */
static void claim_on(struct pool_client *c, struct ev_loop *loop, const char *node,
                     struct th_claim_out *held, int *nheld, int cap)
{
    while (*nheld < cap) {
        char s[32];
        snprintf(s, sizeof(s), "on-%s-%d", node, *nheld);
        claim(c, loop, ENV, s, &held[*nheld]);
        if (!strcmp(held[(*nheld)++].res.node, node))
            return;
    }
    fail_msg("no claim landed on %s in %d", node, cap);
}

/* ---- tests ------------------------------------------------------------- */

static void both_redis_modes_are_refused(void **state)
{
    char out[512], bin[4200];
    (void)state;
    snprintf(bin, sizeof(bin), "%s/warmpool", th_build_dir());
    int rc = th_sh(out, sizeof(out),
                   "%s --redis-sentinels 127.0.0.1:1 --redis-master m --redis-cluster %s "
                   "pool status 2>&1",
                   bin, SEEDS);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(out, "exclude each other"));
    snprintf(bin, sizeof(bin), "%s/warmpool-node", th_build_dir());
    rc = th_sh(out, sizeof(out),
               "%s --id x --state-dir %s/x --redis-sentinels 127.0.0.1:1 --redis-master m "
               "--redis-cluster %s --env %s:0:0 2>&1",
               bin, DIR_, SEEDS, TMPL);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(out, "exclude each other"));
}

static void claims_renew_release_across_masters(void **state)
{
    struct ev_loop *loop = ev_loop_new(0);
    struct th_claim_out o[4];
    (void)state;

    node_start(&NODES[0], 2, true);
    assert_true(wait_hot(ENV, 2, 60));
    assert_true(wait_hot(ENV2, 1, 60));
    /* Each environment's keys are on the master of its slot, and the
     * node's liveness for it is there too (what the pick reads). */
    char live[64];
    hget(live, sizeof(live), "wp:env:{" ENV "}:live", "node0");
    assert_true(atoll(live) > 0);
    for (int k = 0; k < 2; k++) {
        const char *env = k ? ENV2 : ENV;
        char out[64];
        int port = th_rcluster_owner(&CL, wp_rcl_keyslot(env, strlen(env)));
        th_sh(out, sizeof(out), "redis-cli -p %d llen 'wp:env:{%s}:hot'", port, env);
        assert_int_equal(atoi(out), k ? 1 : 2);
    }
    assert_int_not_equal(th_rcluster_owner(&CL, wp_rcl_keyslot(ENV, strlen(ENV))),
                         th_rcluster_owner(&CL, wp_rcl_keyslot(ENV2, strlen(ENV2))));

    struct pool_client *c = th_pool_client(loop, 1);
    claim(c, loop, ENV, "s1", &o[0]);
    claim(c, loop, ENV, "s2", &o[1]);
    claim(c, loop, ENV, "s3", &o[2]);
    assert_string_equal(o[0].res.tier, "hot");
    assert_string_equal(o[1].res.tier, "hot");
    /* The hot tier was empty: a restore on demand, through the node's
     * inbox of that environment. */
    assert_string_equal(o[2].res.tier, "warm");
    assert_true(o[1].res.token > o[0].res.token && o[2].res.token > o[1].res.token);
    assert_string_not_equal(o[0].res.sandbox, o[1].res.sandbox);
    assert_string_not_equal(o[1].res.sandbox, o[2].res.sandbox);
    /* The other environment (another master) is served as well. */
    claim(c, loop, ENV2, "t1", &o[3]);
    assert_string_equal(o[3].res.tier, "hot");
    for (int i = 0; i < 4; i++) {
        char path[700];
        snprintf(path, sizeof(path), "%s/run/warmpool/hands.ready", o[i].res.root);
        assert_int_equal(access(path, F_OK), 0);
    }
    /* Renew: the holder can, a stale token cannot. */
    assert_int_equal(renew(c, loop, ENV, &o[0].res, o[0].res.token), 0);
    assert_int_equal(renew(c, loop, ENV, &o[0].res, o[0].res.token - 1), WP_ESTALE);
    /* Release: a stale token changes nothing; the holder's destroys it. */
    assert_int_equal(release(c, loop, ENV, &o[0].res, o[0].res.token - 1), WP_ESTALE);
    assert_int_equal(access(o[0].res.root, F_OK), 0);
    assert_int_equal(release(c, loop, ENV, &o[0].res, o[0].res.token), 0);
    bool gone = false;
    for (int i = 0; i < 100 && !gone; i++, th_msleep(20))
        gone = access(o[0].res.root, F_OK) < 0;
    assert_true(gone);
    /* Released: renewing it says so. */
    assert_int_not_equal(renew(c, loop, ENV, &o[0].res, o[0].res.token), 0);
    assert_true(wait_hot(ENV, 2, 60));
    /* An environment nobody serves: a clear error at once. */
    struct th_claim_out u = { 0 };
    struct wp_err err;
    assert_int_equal(pool_claim(c, "no-such-env", "s9", 5, th_claim_cb, &u, &err), 0);
    th_run_until(loop, &u, 1);
    assert_int_equal(u.status, WP_ENOTFOUND);
    for (int i = 1; i < 3; i++)
        assert_int_equal(release(c, loop, ENV, &o[i].res, o[i].res.token), 0);
    assert_int_equal(release(c, loop, ENV2, &o[3].res, o[3].res.token), 0);
    pool_client_free(c);
    ev_loop_destroy(loop);
    /* A clean stop leaves Redis as if the node had died and been reaped,
     * each step on its own master. */
    node_stop(&NODES[0], SIGTERM);
    assert_int_equal(qint("LLEN wp:env:{" ENV "}:hot"), 0);
    assert_int_equal(qint("LLEN wp:env:{%s}:hot", ENV2), 0);
    assert_int_equal(qint("SISMEMBER wp:nodes node0"), 0);
    assert_int_equal(qint("EXISTS wp:node:node0"), 0);
    assert_int_equal(qint("EXISTS wp:node:node0:sbs"), 0);
    assert_int_equal(qint("HEXISTS wp:env:{" ENV "}:live node0"), 0);
}

static void killed_node_is_reaped_and_rejoins(void **state)
{
    struct ev_loop *loop = ev_loop_new(0);
    struct th_claim_out held[16], o;
    int nheld = 0;
    (void)state;

    /* node0 keeps 2 hot clones (its per-node policy from the first test:
     * a node's start-up value never overrides one in Redis), node1 3. */
    node_start(&NODES[0], 2, false);
    node_start(&NODES[1], 3, false);
    assert_true(wait_hot(ENV, 5, 60));
    struct pool_client *c = th_pool_client(loop, 1);
    claim_on(c, loop, "node1", held, &nheld, 16);
    const struct pool_claim_result *lost = &held[nheld - 1].res;
    /* node1's idle clones, to see them go. */
    char idle1[8][128];
    int nidle1 = 0;
    redisReply *hot = q("LRANGE wp:env:{" ENV "}:hot 0 -1");
    for (size_t i = 0; i < hot->elements && nidle1 < 8; i++) {
        char key[256], node[64];
        snprintf(key, sizeof(key), "wp:env:{" ENV "}:sb:%s", hot->element[i]->str);
        hget(node, sizeof(node), key, "node");
        if (!strcmp(node, "node1"))
            snprintf(idle1[nidle1++], sizeof(idle1[0]), "%s", hot->element[i]->str);
    }
    freeReplyObject(hot);

    node_stop(&NODES[1], SIGKILL);
    /* Within the heartbeat TTL plus a reaper pass: its lease is lost... */
    char key[256], st[32] = "";
    snprintf(key, sizeof(key), "wp:env:{" ENV "}:sb:%s", lost->sandbox);
    for (int i = 0; i < 200 && strcmp(st, "lost"); i++, th_msleep(50))
        hget(st, sizeof(st), key, "state");
    assert_string_equal(st, "lost");
    /* ...the holder learns it on renewal... */
    assert_int_equal(renew(c, loop, ENV, lost, held[nheld - 1].res.token), WP_ESTATE);
    /* ...its idle clones are out of the hot tier, and it is forgotten. */
    bool forgotten = false;
    for (int i = 0; i < 200 && !forgotten; i++, th_msleep(50))
        forgotten = qint("SISMEMBER wp:nodes node1") == 0;
    assert_true(forgotten);
    assert_int_equal(qint("EXISTS wp:node:node1"), 0);
    assert_int_equal(qint("EXISTS wp:node:node1:sbs"), 0);
    assert_int_equal(qint("SISMEMBER wp:env:{" ENV "}:nodes node1"), 0);
    assert_int_equal(qint("HEXISTS wp:env:{" ENV "}:live node1"), 0);
    for (int i = 0; i < nidle1; i++) {
        assert_int_equal(qint("LPOS wp:env:{" ENV "}:hot %s", idle1[i]), -1);
        assert_int_equal(qint("EXISTS wp:env:{" ENV "}:sb:%s", idle1[i]), 0);
    }
    /* The survivor keeps serving; nothing of node1's is handed out. */
    for (int i = 0; i < 5; i++) {
        claim(c, loop, ENV, "after-kill", &o);
        assert_string_equal(o.res.node, "node0");
        assert_int_equal(release(c, loop, ENV, &o.res, o.res.token), 0);
    }
    /* Restarted, it removes what its killed run left and rejoins. */
    node_start(&NODES[1], 3, false);
    bool rejoined = false;
    for (int i = 0; i < 200 && !rejoined; i++, th_msleep(50))
        rejoined = qint("EXISTS wp:node:node1:alive") == 1 &&
                   qint("HEXISTS wp:env:{" ENV "}:live node1") == 1;
    assert_true(rejoined);
    char old[1200];
    struct stat sb;
    snprintf(old, sizeof(old), "%s/sandboxes/%s", NODES[1].state, lost->sandbox);
    for (int i = 0; i < 100 && stat(old, &sb) == 0; i++)
        th_msleep(50);
    assert_int_equal(stat(old, &sb), -1);
    for (int i = 0; i < nheld - 1; i++)
        assert_int_equal(release(c, loop, ENV, &held[i].res, held[i].res.token), 0);
    pool_client_free(c);
    ev_loop_destroy(loop);
}

/* Every member of node's set is a sandbox hash naming it (idle or
 * leased), and every idle one is in the hot list. */
static void node_set_consistent(const char *node)
{
    redisReply *m = q("SMEMBERS wp:node:%s:sbs", node);
    for (size_t i = 0; i < m->elements; i++) {
        char env[64], id[128], key[256], who[64], st[32];
        assert_int_equal(sscanf(m->element[i]->str, "%63s %127s", env, id), 2);
        snprintf(key, sizeof(key), "wp:env:{%s}:sb:%s", env, id);
        hget(who, sizeof(who), key, "node");
        hget(st, sizeof(st), key, "state");
        assert_string_equal(who, node);
        assert_true(!strcmp(st, "idle") || !strcmp(st, "leased"));
        if (!strcmp(st, "idle"))
            assert_true(qint("LPOS wp:env:{%s}:hot %s", env, id) >= 0);
    }
    freeReplyObject(m);
}

static void restarted_node_reconciles(void **state)
{
    struct ev_loop *loop = ev_loop_new(0);
    struct th_claim_out held[16];
    int nheld = 0;
    (void)state;

    /* The two nodes of the previous test, refilled. */
    assert_true(wait_hot(ENV, 5, 60));
    struct pool_client *c = th_pool_client(loop, 1);
    claim_on(c, loop, "node0", held, &nheld, 16);
    const struct pool_claim_result *mine = &held[nheld - 1].res;
    char key[256], v[64];

    /* A lost write (a Redis restart, a crash between two commands): the
     * node writes its view back within a second or two. */
    redisReply *hot = q("LRANGE wp:env:{" ENV "}:hot 0 -1");
    char victim[128] = "";
    for (size_t i = 0; i < hot->elements && !victim[0]; i++) {
        snprintf(key, sizeof(key), "wp:env:{" ENV "}:sb:%s", hot->element[i]->str);
        hget(v, sizeof(v), key, "node");
        if (!strcmp(v, "node0"))
            snprintf(victim, sizeof(victim), "%s", hot->element[i]->str);
    }
    freeReplyObject(hot);
    assert_true(victim[0] != '\0');
    freeReplyObject(q("DEL wp:env:{" ENV "}:sb:%s", victim));
    freeReplyObject(q("LREM wp:env:{" ENV "}:hot 0 %s", victim));
    char member[200];
    snprintf(member, sizeof(member), "%s %s", ENV, victim);
    freeReplyObject(q("SREM wp:node:node0:sbs %s", member));
    freeReplyObject(q("SET wp:env:{" ENV "}:fence 0"));
    /* An entry naming node0 it never had: a leased one is lost for its holder. */
    freeReplyObject(q("HSET wp:env:{" ENV "}:sb:ghost node node0 state leased token 1"));
    freeReplyObject(q("SADD wp:node:node0:sbs %s", ENV " ghost"));
    bool back = false;
    snprintf(key, sizeof(key), "wp:env:{" ENV "}:sb:%s", victim);
    for (int i = 0; i < 100 && !back; i++, th_msleep(50)) {
        hget(v, sizeof(v), key, "state");
        back = !strcmp(v, "idle") && qint("LPOS wp:env:{" ENV "}:hot %s", victim) >= 0 &&
               qint("SISMEMBER wp:node:node0:sbs %s", member) == 1 &&
               qint("SISMEMBER wp:node:node0:sbs %s", ENV " ghost") == 0;
    }
    assert_true(back);
    hget(v, sizeof(v), "wp:env:{" ENV "}:sb:ghost", "state");
    assert_string_equal(v, "lost");
    /* The fencing counter is back above every token node0 holds. */
    redisReply *f = q("GET wp:env:{" ENV "}:fence");
    assert_true(f->type == REDIS_REPLY_STRING && strtoull(f->str, NULL, 10) >= mine->token);
    freeReplyObject(f);
    node_set_consistent("node0");

    /* Killed and back at once (no reaper in between): the new run holds
     * none of the old sandboxes, and its reconcile settles them. */
    char old_idle[8][128];
    int nold = 0;
    redisReply *m = q("SMEMBERS wp:node:node0:sbs");
    for (size_t i = 0; i < m->elements && nold < 8; i++) {
        char env[64], id[128];
        if (sscanf(m->element[i]->str, "%63s %127s", env, id) == 2 && strcmp(id, mine->sandbox))
            snprintf(old_idle[nold++], sizeof(old_idle[0]), "%s", id);
    }
    freeReplyObject(m);
    node_stop(&NODES[0], SIGKILL);
    node_start(&NODES[0], 2, false);
    snprintf(key, sizeof(key), "wp:env:{" ENV "}:sb:%s", mine->sandbox);
    char st[32] = "";
    for (int i = 0; i < 200 && strcmp(st, "lost"); i++, th_msleep(50))
        hget(st, sizeof(st), key, "state");
    assert_string_equal(st, "lost");
    assert_int_equal(renew(c, loop, ENV, mine, mine->token), WP_ESTATE);
    bool settled = false;
    for (int k = 0; k < 200 && !settled; k++, th_msleep(50)) {
        settled = true;
        for (int i = 0; i < nold; i++)
            settled &= qint("LPOS wp:env:{" ENV "}:hot %s", old_idle[i]) == -1 &&
                       qint("EXISTS wp:env:{" ENV "}:sb:%s", old_idle[i]) == 0;
    }
    assert_true(settled);
    assert_true(wait_hot(ENV, 5, 60));
    node_set_consistent("node0");
    for (int i = 0; i < nheld - 1; i++)
        assert_int_equal(release(c, loop, ENV, &held[i].res, held[i].res.token), 0);
    pool_client_free(c);
    ev_loop_destroy(loop);
}

static void pool_status_reads_every_master(void **state)
{
    char out[16384], bin[4200], line[256];
    (void)state;
    assert_true(wait_hot(ENV, 5, 60));
    snprintf(bin, sizeof(bin), "%s/warmpool", th_build_dir());
    assert_int_equal(th_sh(out, sizeof(out), "%s --redis-cluster %s pool status", bin, SEEDS), 0);
    assert_non_null(strstr(out, "environment " ENV));
    assert_non_null(strstr(out, "hot now: 5"));
    for (int i = 0; i < 2; i++) {
        /* "  node0   alive yes criu ..." in the nodes list, and its row in
         * the environment's table: alive, its idle clones. */
        snprintf(line, sizeof(line), "  %-20s alive yes", NODES[i].id);
        assert_non_null(strstr(out, line));
        snprintf(line, sizeof(line), "  %-20s %6s %7d", NODES[i].id, "yes", i ? 3 : 2);
        assert_non_null(strstr(out, line));
    }
    /* One environment by name; quota set and show, their keys found on
     * every master. */
    assert_int_equal(th_sh(out, sizeof(out), "%s --redis-cluster %s pool status " ENV, bin, SEEDS),
                     0);
    assert_non_null(strstr(out, "hot now: 5"));
    static const char *const orgs[] = {"acme", "beta", "gamma", "delta"}; /* over the masters */
    for (int i = 0; i < 4; i++) {
        assert_int_equal(th_sh(out, sizeof(out), "%s --redis-cluster %s quota set %s sessions=%d",
                               bin, SEEDS, orgs[i], i + 1), 0);
    }
    assert_int_equal(th_sh(out, sizeof(out), "%s --redis-cluster %s quota show 2>&1", bin, SEEDS),
                     0);
    for (int i = 0; i < 4; i++) {
        snprintf(line, sizeof(line), "%s\n  sessions            0 used of %-10d", orgs[i], i + 1);
        assert_non_null(strstr(out, line));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(both_redis_modes_are_refused),
        cmocka_unit_test(claims_renew_release_across_masters),
        cmocka_unit_test(killed_node_is_reaped_and_rejoins),
        cmocka_unit_test(restarted_node_reconciles),
        cmocka_unit_test(pool_status_reads_every_master),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
