/* test_sched_cluster.c - the whole stack on a real Redis Cluster (issue
 * 18): 3 masters with a replica each (tests/lib/rcluster_testlib), two
 * schedulers and a node with --redis-cluster, the model stand-in. Through
 * the API, as a user would: an environment created (its template published,
 * the node builds it and offers clones), sessions created through both
 * schedulers (one organization's sessions spread over the masters), each
 * with a turn that runs a bash tool call, watched on an SSE stream that
 * sees every event of the history once and in order; a /v1/sandboxes
 * sandbox executing a command; the sessions listed through the other
 * scheduler. No master refused a command for its slots, and no process
 * refused a script whose keys span slots. */
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "lib/model_testlib.h"
#include "lib/pool_testlib.h"
#include "lib/rcluster_testlib.h"
#include "lib/sched_testlib.h"
#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "modelserver/msrv_spawn.h"
#include "sse_client.h"
#include "base/err.h"
#include "base/rcluster.h"

#define KEY "sk-acme"
#define NS 4 /* sessions with a turn */

static struct th_rcluster CL;
static struct th_sched S[2];
static struct msrv_proc M;
static struct wp_rcl_sync *RS;
static char SEEDS[512], MURL[128], AGENT[64], ENV[64], HANDS[1200], NODE_LOG[1200], STATE[1200];
static char *DIR_;
static pid_t NODE;
static char SID[NS][64];

static const char script[] =
    "{\"seed\":3,\"ttft_ms\":5,\"tokens_per_s\":500,\"chunk_tokens\":4,"
    "\"conversations\":["
    " {\"match\":\"run bash\",\"turns\":["
    "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":"
    "     \"echo out-$((6*7))\"}}]},"
    "   {\"text\":\"Done.\"}]},"
    " {\"turns\":[\"Hello!\"]}]}";

static const char *s_(json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? v : "";
}

/* A hash field through the cluster router ("" when absent or on error). */
static void hget(char *out, size_t cap, const char *key, const char *field)
{
    char *f = NULL;
    struct wp_err err;
    int len = redisFormatCommand(&f, "HGET %s %s", key, field);
    redisReply *r = len > 0 ? wp_rcl_sync_formatted(RS, f, (size_t)len, &err) : NULL;
    redisFreeCommand(f);
    snprintf(out, cap, "%s", r && r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
}

static long long llen(const char *key)
{
    char *f = NULL;
    struct wp_err err;
    int len = redisFormatCommand(&f, "LLEN %s", key);
    redisReply *r = len > 0 ? wp_rcl_sync_formatted(RS, f, (size_t)len, &err) : NULL;
    redisFreeCommand(f);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return v;
}

static int group_setup(void **state)
{
    struct wp_err err;
    (void)state;
    if (th_rcluster_start(&CL, 3, 1) < 0)
        return -1;
    th_rcluster_seeds(&CL, SEEDS, sizeof(SEEDS));
    /* Counters from here on (the cluster's creation had a CLUSTER
     * REPLICATE retried). */
    for (int i = 0; i < CL.n; i++)
        if (!th_redis_cli_has(CL.port[i], "config resetstat", "OK"))
            return -1;
    if (wp_rcl_set(SEEDS, &err) < 0 || !(RS = wp_rcl_sync_new(&err)))
        return -1;
    DIR_ = th_tmpdir("schedcl");
    if (!DIR_ || th_hands_copy(DIR_, HANDS, sizeof(HANDS)) < 0)
        return -1;
    if (th_model_spawn_script(&M, DIR_, script, NULL, MURL, sizeof(MURL)) < 0)
        return -1;
    for (int i = 0; i < 2; i++)
        if (th_sched_start(&S[i], CL.port[0], "--redis-cluster", SEEDS, "--model-url", MURL, "--hands-dir",
                           HANDS, "--rate-read", "0", "--rate-sandbox", "0", NULL) < 0)
            return -1;
    snprintf(STATE, sizeof(STATE), "%s/state", DIR_);
    snprintf(NODE_LOG, sizeof(NODE_LOG), "%s/node.log", DIR_);
    NODE = th_node_start("cn1", CL.port[0], STATE, NODE_LOG, "--redis-cluster", SEEDS, "--heartbeat-ttl", "2", "--drain-timeout", "0",
                         NULL);
    return NODE > 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    int rc = 0;
    (void)state;
    for (int i = 0; i < 2; i++)
        if (S[i].pid > 0 && th_sched_stop(&S[i]) != 0) {
            fprintf(stderr, "# scheduler %d did not exit cleanly\n", i);
            rc = -1;
        }
    if (NODE > 0 && th_term_wait(NODE, 20000) != 0) {
        fprintf(stderr, "# the node did not exit cleanly\n");
        rc = -1;
    }
    msrv_stop(&M);
    wp_rcl_sync_free(RS);
    th_rcluster_stop(&CL);
    if (DIR_) {
        if (th_mounts_left(DIR_))
            rc = -1;
        th_rmtree(DIR_);
        free(DIR_);
    }
    return rc;
}

/* No master refused a command for its slots (Redis's own counters), and
 * no process refused a script whose keys span slots before sending it. */
static void assert_no_slot_errors(void)
{
    char out[4096];
    for (int i = 0; i < CL.n; i++) {
        if (CL.pid[i] <= 0)
            continue;
        th_sh(out, sizeof(out), "redis-cli -p %d info errorstats", CL.port[i]);
        if (strstr(out, "CROSSSLOT") || strstr(out, "errorstat_ERR")) {
            char calls[4096];
            th_sh(calls, sizeof(calls), "redis-cli -p %d info commandstats | grep -v 'rejected_calls=0,failed_calls=0'",
                  CL.port[i]);
            fail_msg("node %d refused commands: %s; %s", CL.port[i], out, calls);
        }
    }
    th_sh(out, sizeof(out), "grep -h 'different slots' %s 2>/dev/null | head -3", NODE_LOG);
    if (out[0])
        fail_msg("node: %s", out);
}

/* ---- the environment ------------------------------------------------------ */

/* Created through the API: its template published in its own slot, the
 * node builds the image and offers clones. */
static void environment_built_by_the_node(void **state)
{
    char key[128], st[256] = "";
    (void)state;
    json_t *ag = th_api(S[0].port, KEY, "POST", "/v1/agents",
                        "{\"name\":\"cl\",\"model\":\"claude-test\",\"tools\":[{\"type\":\"agent_toolset_20260401\"}]}",
                        200);
    snprintf(AGENT, sizeof(AGENT), "%s", s_(ag, "id"));
    json_decref(ag);
    json_t *en = th_api(S[1].port, KEY, "POST", "/v1/environments",
                        "{\"name\":\"cl-env\",\"config\":{\"type\":\"cloud\"},\"metadata\":{\"warmpool.min_hot\":\"1\","
                        "\"warmpool.max_hot\":\"2\"}}",
                        200);
    snprintf(ENV, sizeof(ENV), "%s", s_(en, "id"));
    json_decref(en);
    snprintf(key, sizeof(key), "wp:tpl:{%s}", ENV);
    for (int i = 0; i < 1200 && strcmp(st, "ready"); i++, th_msleep(100))
        hget(st, sizeof(st), key, "build:cn1");
    if (strcmp(st, "ready"))
        fail_msg("build:cn1 of %s is '%s' (log %s)", ENV, st, NODE_LOG);
    snprintf(key, sizeof(key), "wp:env:{%s}:hot", ENV);
    long long hot = 0;
    for (int i = 0; i < 300 && (hot = llen(key)) < 1; i++)
        th_msleep(100);
    assert_true(hot >= 1);
    /* Listed and read back through the other scheduler. */
    char path[128];
    snprintf(path, sizeof(path), "/v1/environments/%s", ENV);
    json_decref(th_api(S[0].port, KEY, "GET", path, NULL, 200));
    assert_no_slot_errors();
}

/* ---- sessions ---------------------------------------------------------------- */

static json_t *history(int port, const char *sid)
{
    char path[160];
    snprintf(path, sizeof(path), "/v1/sessions/%s/events?limit=1000", sid);
    json_t *h = th_api(port, KEY, "GET", path, NULL, 200);
    json_t *d = json_incref(json_object_get(h, "data"));
    json_decref(h);
    return d;
}

/* Sessions through both schedulers, each streamed from the other one: a
 * turn with a bash call on the node's sandbox; every event of the history
 * on the stream once, in order. One organization's sessions land on more
 * than one master. */
static void sessions_run_bash_and_stream(void **state)
{
    char body[256];
    struct sse st[NS];
    (void)state;
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", AGENT, ENV);
    for (int i = 0; i < NS; i++) {
        json_t *s = th_api(S[i % 2].port, KEY, "POST", "/v1/sessions", body, 200);
        snprintf(SID[i], sizeof(SID[i]), "%s", s_(s, "id"));
        json_decref(s);
        sse_open_as(&st[i], S[(i + 1) % 2].port, KEY, SID[i], "");
    }
    for (int i = 0; i < NS; i++)
        th_send_text(S[i % 2].port, KEY, SID[i], "please run bash");
    for (int i = 0; i < NS; i++) {
        json_t *seen = json_array();
        bool idle = false;
        while (!idle) {
            json_t *e = sse_next(&st[i], 60000);
            if (!e)
                fail_msg("session %s: no idle on its stream within 60 s", SID[i]);
            json_array_append_new(seen, json_string(s_(e, "id")));
            idle = !strcmp(s_(e, "type"), "session.status_idle") &&
                   !strcmp(s_(json_object_get(e, "stop_reason"), "type"), "end_turn");
            json_decref(e);
        }
        sse_close(&st[i]);
        json_t *h = history(S[i % 2].port, SID[i]);
        /* the turn: the user's message, the bash call and its result, the answer */
        const char *out = NULL;
        int uses = 0, msgs = 0;
        for (size_t k = 0; k < json_array_size(h); k++) {
            json_t *e = json_array_get(h, k);
            const char *t = s_(e, "type");
            uses += !strcmp(t, "agent.tool_use");
            msgs += !strcmp(t, "agent.message");
            if (!strcmp(t, "agent.tool_result")) {
                assert_false(json_is_true(json_object_get(e, "is_error")));
                out = s_(json_array_get(json_object_get(e, "content"), 0), "text");
            }
        }
        assert_int_equal(uses, 1);
        assert_int_equal(msgs, 1);
        assert_non_null(out);
        assert_non_null(strstr(out, "out-42"));
        /* the stream: the history, each event once, in order */
        assert_int_equal(json_array_size(seen), json_array_size(h));
        for (size_t k = 0; k < json_array_size(h); k++)
            assert_string_equal(json_string_value(json_array_get(seen, k)), s_(json_array_get(h, k), "id"));
        json_decref(seen);
        json_decref(h);
    }
    /* One organization's sessions on more than one master (more sessions,
     * without a turn, until they are: each master has a third of the slots). */
    int owners[3] = { 0 }, n = 0;
    for (int i = 0; i < 30; i++) {
        char tag[96], extra[64];
        if (i < NS) {
            snprintf(extra, sizeof(extra), "%s", SID[i]);
        } else {
            json_t *s = th_api(S[0].port, KEY, "POST", "/v1/sessions", body, 200);
            snprintf(extra, sizeof(extra), "%s", s_(s, "id"));
            json_decref(s);
        }
        snprintf(tag, sizeof(tag), "{%s}", extra);
        int port = th_rcluster_owner(&CL, wp_rcl_keyslot(tag, strlen(tag)));
        bool known = false;
        for (int k = 0; k < n; k++)
            known |= owners[k] == port;
        if (!known && n < 3)
            owners[n++] = port;
        if (n >= 2 && i >= NS - 1)
            break;
    }
    print_message("# sessions on %d masters\n", n);
    assert_true(n >= 2);
    assert_no_slot_errors();
}

/* GET /v1/sessions through either scheduler lists every session once. */
static void sessions_listed(void **state)
{
    (void)state;
    for (int p = 0; p < 2; p++) {
        json_t *l = th_api(S[p].port, KEY, "GET", "/v1/sessions?limit=100", NULL, 200);
        json_t *d = json_object_get(l, "data");
        for (int i = 0; i < NS; i++) {
            int found = 0;
            for (size_t k = 0; k < json_array_size(d); k++)
                found += !strcmp(s_(json_array_get(d, k), "id"), SID[i]);
            if (found != 1)
                fail_msg("session %s listed %d times by scheduler %d", SID[i], found, p);
        }
        json_decref(l);
    }
    assert_no_slot_errors();
}

/* A /v1/sandboxes sandbox of the environment executes a command. */
static void sandbox_executes(void **state)
{
    char body[160], path[160], st[32] = "";
    (void)state;
    snprintf(body, sizeof(body), "{\"environment\":\"%s\"}", ENV);
    json_t *sb = th_api(S[0].port, KEY, "POST", "/v1/sandboxes", body, 200);
    char id[64];
    snprintf(id, sizeof(id), "%s", s_(sb, "id"));
    json_decref(sb);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", id);
    for (int t = 0; t < 600 && strcmp(st, "ready"); t++) {
        json_t *g = th_api(S[1].port, KEY, "GET", path, NULL, 200);
        snprintf(st, sizeof(st), "%s", s_(g, "status"));
        json_decref(g);
        if (!strcmp(st, "failed"))
            fail_msg("sandbox %s failed", id);
        if (strcmp(st, "ready"))
            th_msleep(100);
    }
    assert_string_equal(st, "ready");
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute", id);
    json_t *res = th_api(S[1].port, KEY, "POST", path,
                         "{\"name\":\"bash\",\"input\":{\"command\":\"echo sbx-$((6*7))\"}}", 200);
    const char *text = s_(json_array_get(json_object_get(res, "content"), 0), "text");
    assert_false(json_is_true(json_object_get(res, "is_error")));
    assert_non_null(strstr(text, "sbx-42"));
    json_decref(res);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", id);
    json_decref(th_api(S[0].port, KEY, "DELETE", path, NULL, 200));
    assert_no_slot_errors();
}

int main(void)
{
    if (geteuid() != 0) {
        printf("1..0 # SKIP needs root (sandboxes)\n");
        return 0;
    }
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(environment_built_by_the_node),
        cmocka_unit_test(sessions_run_bash_and_stream),
        cmocka_unit_test(sessions_listed),
        cmocka_unit_test(sandbox_executes),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
