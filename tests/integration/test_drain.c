/* test_drain.c - drain and upgrade: `warmpool node drain`, a node's
 * SIGTERM drain with a deadline, a scheduler's SIGTERM handing its brain
 * leases over at once, and a rolling restart of every process under steady
 * session load. A real Redis (AOF), two nodes with hands sandboxes, two
 * schedulers with the brain on, the local model server. */
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/load_testlib.h"
#include "lib/model_testlib.h"
#include "lib/sched_testlib.h"
#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "modelserver/msrv_spawn.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/timeutil.h"

#define KEY "sk-acme"
#define POOL "drainpool"
#define LEASE_MS "10000" /* brain lease: a handover must beat its expiry */

static struct th_redis R;
static struct th_sched S[2];
static struct msrv_proc M;
static char *DIR_;
static char MURL[128], SPEC[1200], ENV_ID[64], AGENT_ID[64];
static const char *NODE_ID[2] = { "dn0", "dn1" };
static pid_t NODE[2];
static redisContext *RC;

/* ---- helpers ---- */

static json_t *call(int port, const char *method, const char *path, const char *body, int want)
{
    return th_api(port, KEY, method, path, body, want);
}

static const char *s_(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static long long rint_cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(RC, fmt, ap);
    va_end(ap);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer
                  : r && r->type == REDIS_REPLY_STRING ? atoll(r->str)
                                                        : -1;
    freeReplyObject(r);
    return v;
}

static void node_start(int i)
{
    char log[1100], state[1100];
    snprintf(log, sizeof(log), "%s/node-%s.log", DIR_, NODE_ID[i]);
    snprintf(state, sizeof(state), "%s/state-%s", DIR_, NODE_ID[i]);
    NODE[i] = th_node_start(NODE_ID[i], R.port, state, log, "--env", SPEC, "--no-api-envs",
                            "--drain-timeout", "4", NULL);
    assert_true(NODE[i] > 0);
}

/* Wait up to secs for pid to exit; its status, or -1 when it still runs. */
static int wait_exit(pid_t pid, int secs)
{
    int st;
    for (int i = 0; i < secs * 20; i++) {
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        th_msleep(50);
    }
    return -1;
}

/* Sandboxes leased on node n, from Redis. */
static int leased_on(int n)
{
    int c = 0;
    redisReply *m = redisCommand(RC, "SMEMBERS wp:node:%s:sbs", NODE_ID[n]);
    for (size_t i = 0; m && m->type == REDIS_REPLY_ARRAY && i < m->elements; i++) {
        char env[128], id[128];
        if (sscanf(m->element[i]->str, "%127s %127s", env, id) != 2)
            continue;
        redisReply *s = redisCommand(RC, "HGET wp:env:{%s}:sb:%s state", env, id);
        c += s && s->type == REDIS_REPLY_STRING && !strcmp(s->str, "leased");
        freeReplyObject(s);
    }
    freeReplyObject(m);
    return c;
}

/* Idle hot clones of node n in the hot list. */
static int hot_of(int n)
{
    int c = 0;
    redisReply *l = redisCommand(RC, "LRANGE wp:env:{" POOL "}:hot 0 -1");
    for (size_t i = 0; l && l->type == REDIS_REPLY_ARRAY && i < l->elements; i++) {
        redisReply *s = redisCommand(RC, "HGET wp:env:{" POOL "}:sb:%s node", l->element[i]->str);
        c += s && s->type == REDIS_REPLY_STRING && !strcmp(s->str, NODE_ID[n]);
        freeReplyObject(s);
    }
    freeReplyObject(l);
    return c;
}

static bool wait_hot_of(int n, int want, int secs)
{
    for (int i = 0; i < secs * 10; i++, th_msleep(100))
        if (hot_of(n) >= want)
            return true;
    return false;
}

/* A sandbox through /v1/sandboxes, attached (an execute answered). */
static char *sandbox_new(int port)
{
    char path[160];
    json_t *sb = call(port, "POST", "/v1/sandboxes", "{\"environment\":\"" POOL "\"}", 200);
    char *id = strdup(s_(sb, "id"));
    json_decref(sb);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute", id);
    json_t *res = call(port, "POST", path, "{\"name\":\"bash\",\"input\":{\"command\":\"echo up\"}}", 200);
    assert_false(json_is_true(json_object_get(res, "is_error")));
    json_decref(res);
    return id;
}

/* An execute on sandbox id answers; quiet: no diagnostic when it does not
 * (where it must not). */
static bool sandbox_works_q(int port, const char *id, bool quiet)
{
    char path[160];
    struct th_resp r;
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute", id);
    if (th_http(port, "POST", path, KEY, "{\"name\":\"bash\",\"input\":{\"command\":\"echo still-here\"}}", &r) < 0)
        return false;
    bool ok = r.status == 200 && strstr(r.body, "\"still-here\"") && !strstr(r.body, "\"is_error\":true");
    if (!ok && !quiet)
        print_message("# execute on %s: %d %s\n", id, r.status, r.body);
    th_resp_free(&r);
    return ok;
}

static bool sandbox_works(int port, const char *id)
{
    return sandbox_works_q(port, id, false);
}

static void sandbox_delete(int port, const char *id)
{
    char path[160];
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", id);
    json_decref(call(port, "DELETE", path, NULL, 200));
}

static void sched_start(int i)
{
    assert_int_equal(th_sched_start(&S[i], R.port, "--model-url", MURL, "--brain-lease-ms", LEASE_MS,
                                    "--brain-linger", "1", NULL), 0);
}

static void warmpool_cli(char *out, size_t cap, int want, const char *args)
{
    int rc = th_sh(out, cap, "%s/warmpool --redis 127.0.0.1:%d %s 2>&1", th_build_dir(), R.port, args);
    if (rc != want)
        fail_msg("warmpool %s: exit %d, want %d: %s", args, rc, want, out);
}

/* ---- set-up ---- */

/* The model stand-in's script (malloc'ed): a conversation long enough
 * for every round of the load, each user message a bash call, then a text
 * answer. */
static char *build_script(void)
{
    char *buf = malloc(1 << 16);
    int n = snprintf(buf, 1 << 16, "{\"seed\":3,\"ttft_ms\":40,\"tokens_per_s\":200,\"chunk_tokens\":2,"
                                   "\"conversations\":[{\"match\":\"load\",\"turns\":[");
    for (int i = 0; i < 60; i++)
        n += snprintf(buf + n, (1 << 16) - (size_t)n,
                      "%s{\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":"
                      "\"echo round-%d\"}}]},{\"text\":\"round %d done, all fine here\"}",
                      i ? "," : "", i, i);
    snprintf(buf + n, (1 << 16) - (size_t)n,
             "]},{\"match\":\"slow\",\"turns\":[{\"text\":\"one two three four five six seven "
             "eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen "
             "nineteen twenty one two three four five six seven eight nine ten\","
             "\"tokens_per_s\":15}]},{\"turns\":[\"Hello!\"]}]}");
    return buf;
}

static int group_setup(void **state)
{
    char tmpl[1024];
    (void)state;

    if (th_redis_start(&R, 1) < 0)
        return -1;
    RC = redisConnect("127.0.0.1", R.port);
    DIR_ = th_tmpdir("drain");
    char *script = build_script();
    int rc = th_model_spawn_script(&M, DIR_, script, NULL, MURL, sizeof(MURL));
    free(script);
    if (rc < 0)
        return -1;
    if (th_hands_template(DIR_, POOL, "box", tmpl, sizeof(tmpl)) < 0)
        return -1;
    snprintf(SPEC, sizeof(SPEC), "%s:1:1", tmpl);
    node_start(0);
    node_start(1);
    sched_start(0);
    sched_start(1);
    json_t *ag = call(S[0].port, "POST", "/v1/agents",
                      "{\"name\":\"d\",\"model\":\"claude-test\",\"tools\":[{\"type\":\"agent_toolset_20260401\"}]}",
                      200);
    snprintf(AGENT_ID, sizeof(AGENT_ID), "%s", s_(ag, "id"));
    json_decref(ag);
    json_t *en = call(S[0].port, "POST", "/v1/environments",
                      "{\"name\":\"drain-env\",\"config\":{\"type\":\"cloud\"},"
                      "\"metadata\":{\"warmpool.pool\":\"" POOL "\"}}", 200);
    snprintf(ENV_ID, sizeof(ENV_ID), "%s", s_(en, "id"));
    json_decref(en);
    return wait_hot_of(0, 1, 120) && wait_hot_of(1, 1, 120) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++)
        if (S[i].pid > 0)
            th_sched_stop(&S[i]);
    for (int i = 0; i < 2; i++)
        if (NODE[i] > 0) {
            kill(NODE[i], SIGINT); /* at once */
            waitpid(NODE[i], NULL, 0);
        }
    msrv_stop(&M);
    if (RC)
        redisFree(RC);
    th_redis_stop(&R);
    th_rmtree(DIR_);
    free(DIR_);
    return 0;
}

/* ---- tests ---- */

/* `warmpool node drain`: no new claims (they go to the other node), idle
 * clones gone, the leased sandbox kept and working until released, then
 * the node exits 0; its successor serves again. */
static void node_drain_keeps_leased_until_released(void **state)
{
    char out[8192], args[256];
    (void)state;

    /* Bad input: said, nothing changes. */
    warmpool_cli(out, sizeof(out), 1, "node drain no-such-node");
    assert_non_null(strstr(out, "not running"));
    warmpool_cli(out, sizeof(out), 2, "node drain dn0 --deadline -5");
    assert_non_null(strstr(out, "--deadline"));
    warmpool_cli(out, sizeof(out), 2, "node drain '../x'");
    assert_int_equal(rint_cmd("EXISTS wp:node:dn0:drain"), 0);

    char *held = sandbox_new(S[0].port);
    int d = leased_on(0) == 1 ? 0 : 1, other = 1 - d;
    assert_int_equal(leased_on(d), 1);
    snprintf(args, sizeof(args), "node drain %s --deadline 120", NODE_ID[d]);
    warmpool_cli(out, sizeof(out), 0, args);
    assert_non_null(strstr(out, "draining"));
    /* The node has read it (within a second or two)... */
    for (int i = 0; i < 50 && rint_cmd("HEXISTS wp:node:%s draining", NODE_ID[d]) != 1; i++)
        th_msleep(100);
    assert_int_equal(rint_cmd("HEXISTS wp:node:%s draining", NODE_ID[d]), 1);
    /* ...its idle clones leave the hot list; no refill comes back. */
    for (int i = 0; i < 50 && hot_of(d) > 0; i++)
        th_msleep(100);
    assert_int_equal(hot_of(d), 0);
    warmpool_cli(out, sizeof(out), 0, "pool status");
    if (!strstr(out, "draining: no new claims, 1 leased sandbox left"))
        fail_msg("pool status: %s", out);
    warmpool_cli(out, sizeof(out), 0, "pool status " POOL);
    assert_non_null(strstr(out, "drain"));
    /* New claims land on the other node: its hot clone, then a warm one. */
    char *n1 = sandbox_new(S[1].port), *n2 = sandbox_new(S[0].port);
    assert_int_equal(leased_on(d), 1);
    assert_int_equal(leased_on(other), 2);
    th_msleep(1500);
    assert_int_equal(hot_of(d), 0);
    /* The leased sandbox still works, and the node waits for it. */
    assert_true(sandbox_works(S[1].port, held));
    assert_int_equal(wait_exit(NODE[d], 1), -1);
    /* Released: the node is drained and exits cleanly. */
    sandbox_delete(S[0].port, held);
    assert_int_equal(wait_exit(NODE[d], 15), 0);
    NODE[d] = 0;
    assert_int_equal(rint_cmd("EXISTS wp:node:%s:drain", NODE_ID[d]), 0);
    assert_int_equal(rint_cmd("EXISTS wp:node:%s:alive", NODE_ID[d]), 0);
    th_sh(out, sizeof(out), "grep -c 'drained: no leased sandbox left' %s/node-%s.log", DIR_, NODE_ID[d]);
    assert_int_equal(atoi(out), 1);
    /* The upgrade: its successor (same id, same state dir) serves again. */
    node_start(d);
    assert_true(wait_hot_of(d, 1, 60));
    sandbox_delete(S[1].port, n1);
    sandbox_delete(S[0].port, n2);
    free(n1);
    free(n2);
    free(held);
}

/* SIGTERM: the node drains (claims skip it at once, the leased sandbox
 * keeps working) until its --drain-timeout (4 s), then exits 0 and the
 * sandbox is lost to its holder. */
static void sigterm_drains_until_deadline(void **state)
{
    char *mine = NULL;
    (void)state;

    assert_true(wait_hot_of(0, 1, 60) && wait_hot_of(1, 1, 60));
    /* A sandbox on node 0 (claims take whichever hot clone comes first). */
    char *other[4] = { 0 };
    int no = 0;
    for (int i = 0; i < 4 && !mine; i++) {
        int before = leased_on(0);
        char *id = sandbox_new(S[0].port);
        if (leased_on(0) > before)
            mine = id;
        else
            other[no++] = id;
    }
    assert_non_null(mine);
    uint64_t t0 = wp_now_ns();
    kill(NODE[0], SIGTERM);
    for (int i = 0; i < 20 && rint_cmd("EXISTS wp:node:%s:drain", NODE_ID[0]) != 1; i++)
        th_msleep(50);
    assert_int_equal(rint_cmd("EXISTS wp:node:%s:drain", NODE_ID[0]), 1);
    char *fresh = sandbox_new(S[1].port); /* served by node 1 */
    assert_true(sandbox_works(S[0].port, mine));
    assert_int_equal(wait_exit(NODE[0], 1), -1);
    int st = wait_exit(NODE[0], 15);
    double waited = (double)(wp_now_ns() - t0) / 1e9;
    NODE[0] = 0;
    assert_int_equal(st, 0);
    print_message("# node drained for %.1f s (deadline 4 s)\n", waited);
    assert_true(waited >= 3.5);
    assert_false(sandbox_works_q(S[0].port, mine, true)); /* lost at the deadline */
    assert_int_equal(rint_cmd("EXISTS wp:node:%s:drain", NODE_ID[0]), 0);
    node_start(0);
    assert_true(wait_hot_of(0, 1, 60));
    sandbox_delete(S[1].port, fresh);
    for (int i = 0; i < no; i++) {
        sandbox_delete(S[0].port, other[i]);
        free(other[i]);
    }
    struct th_resp r;
    char path[160];
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", mine);
    th_http(S[0].port, "DELETE", path, KEY, NULL, &r);
    th_resp_free(&r);
    free(mine);
    free(fresh);
}

static char *new_session(int port)
{
    char body[256];
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", AGENT_ID, ENV_ID);
    json_t *s = call(port, "POST", "/v1/sessions", body, 200);
    char *id = strdup(s_(s, "id"));
    json_decref(s);
    return id;
}

static json_t *history(int port, const char *sid)
{
    return th_history(port, KEY, sid);
}

/* SIGTERM to the scheduler running a turn: its lease is released at once
 * and the other scheduler finishes the turn well before the lease (10 s)
 * would have expired. */
static void scheduler_sigterm_hands_over(void **state)
{
    char body[256], path[160], key[200];
    (void)state;

    char *sid = new_session(S[0].port);
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", sid);
    snprintf(body, sizeof(body),
             "{\"events\":[{\"type\":\"user.message\",\"content\":[{\"type\":\"text\",\"text\":\"slow please\"}]}]}");
    json_decref(call(S[0].port, "POST", path, body, 200));
    snprintf(key, sizeof(key), "wp:brain:{%s}", sid);
    /* Running on S[0] (the kick takes the lease where the input came). */
    long long tok = 0;
    for (int i = 0; i < 40 && tok <= 0; i++, th_msleep(50))
        tok = rint_cmd("GET %s", key);
    assert_true(tok > 0);
    th_msleep(500); /* mid-stream */
    uint64_t t0 = wp_now_ns();
    assert_int_equal(th_sched_stop(&S[0]), 0);
    S[0].pid = 0;
    long long tok2 = 0;
    for (int i = 0; i < 100 && (tok2 <= 0 || tok2 == tok); i++, th_msleep(50))
        tok2 = rint_cmd("GET %s", key);
    double took = (double)(wp_now_ns() - t0) / 1e9;
    print_message("# lease taken by the other scheduler %.2f s after SIGTERM\n", took);
    assert_true(tok2 > tok);
    assert_true(took < 5.0); /* the lease would have lasted 10 s */
    json_t *h = NULL;
    for (int i = 0; i < 100; i++, th_msleep(100)) {
        json_decref(h);
        h = history(S[1].port, sid);
        if (th_count_idle(h, "end_turn") >= 1)
            break;
    }
    assert_int_equal(th_count_idle(h, "end_turn"), 1);
    assert_int_equal(th_count_type(h, "session.error"), 0);
    json_t *seen = json_object();
    for (size_t i = 0; i < json_array_size(h); i++) {
        const char *id = s_(json_array_get(h, i), "id");
        assert_null(json_object_get(seen, id));
        json_object_set_new(seen, id, json_true());
    }
    json_decref(seen);
    json_decref(h);
    sched_start(0);
    free(sid);
}

/* ---- the rolling restart ---- */

#define NSESS 3

static void restart_sched(struct th_load *l, int i)
{
    assert_int_equal(th_sched_stop(&S[i]), 0);
    l->ports[i] = 0;
    sched_start(i);
    l->ports[i] = S[i].port;
}

/* Drains of node i that ended at their deadline (leased sandboxes lost). */
static int deadline_drains(int i)
{
    char out[64];
    th_sh(out, sizeof(out), "grep -c 'drain deadline passed' %s/node-%s.log || true", DIR_, NODE_ID[i]);
    return atoi(out);
}

static void restart_node(int i)
{
    kill(NODE[i], SIGTERM);
    int st = wait_exit(NODE[i], 30);
    assert_int_equal(st, 0);
    node_start(i);
    assert_true(wait_hot_of(i, 1, 60));
}

/* Every process restarted one at a time (schedulers with SIGTERM, nodes
 * with their SIGTERM drain, Redis with a clean SHUTDOWN and its AOF) while
 * three sessions run turns: no session fails, every acknowledged event is
 * in the history afterwards, every turn ends. */
static void rolling_restart_under_load(void **state)
{
    (void)state;
    struct th_load *l = calloc(1, sizeof(*l));
    l->key = KEY;
    l->nports = 2;
    l->nsess = NSESS;
    for (int s = 0; s < NSESS; s++) {
        char *sid = new_session(S[s % 2].port);
        snprintf(l->s[s].sid, sizeof(l->s[s].sid), "%s", sid);
        free(sid);
    }
    l->ports[0] = S[0].port;
    l->ports[1] = S[1].port;
    assert_int_equal(th_load_start(l), 0);
    int lost0 = deadline_drains(0), lost1 = deadline_drains(1);
    th_msleep(3000);
    int before = l->turns;
    restart_sched(l, 0);
    th_msleep(2000);
    restart_node(0);
    th_msleep(2000);
    restart_sched(l, 1);
    th_msleep(2000);
    restart_node(1);
    th_msleep(2000);
    /* Redis: a clean shutdown writes the AOF; everyone reconnects. */
    char out[256];
    th_sh(out, sizeof(out), "redis-cli -p %d shutdown 2>&1", R.port);
    assert_int_equal(th_redis_restart(&R), 0);
    redisFree(RC);
    RC = redisConnect("127.0.0.1", R.port);
    th_msleep(4000);
    th_load_stop(l);
    print_message("# %d turns under load (%d before the first restart)%s%s\n", l->turns, before,
                  l->why[0] ? ": " : "", l->why);
    assert_false(l->failed);
    assert_true(l->turns > before + NSESS);
    /* Each node drained because its sandboxes were released, not because
     * its deadline cut them off: sessions between turns give a draining
     * node's sandbox back. */
    assert_int_equal(deadline_drains(0), lost0);
    assert_int_equal(deadline_drains(1), lost1);
    /* Every acknowledged event is in the history once, every turn ended
     * without error, every stream (resumed across the restarts) saw every
     * event once. */
    struct th_load_report rep;
    th_load_check(l, S[0].port, &rep);
    assert_int_equal(rep.lost, 0);
    assert_int_equal(rep.dup, 0);
    assert_int_equal(rep.unended, 0);
    assert_int_equal(rep.errors, 0);
    assert_int_equal(rep.tool_errors, 0);
    assert_int_equal(rep.exhausted, 0);
    assert_int_equal(rep.stream_missing, 0);
    assert_int_equal(rep.stream_dup, 0);
    th_load_free(l);
    free(l);
}

int main(void)
{
    if (geteuid() != 0) {
        printf("1..0 # SKIP needs root (sandboxes)\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(node_drain_keeps_leased_until_released),
        cmocka_unit_test(sigterm_drains_until_deadline),
        cmocka_unit_test(scheduler_sigterm_hands_over),
        cmocka_unit_test(rolling_restart_under_load),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
