/* test_multinode.c - many nodes as separate hosts (issue 18): three
 * warmpool nodes, each in a network namespace of its own with its own
 * address, state directory and relay (tests/lib/mnlib.h), two schedulers
 * and Redis on the host, the model stand-in. One API environment with
 * network (so each node makes sandbox links and nft rules inside its own
 * namespace). In order:
 *   - a node that joins later picks up the environment the others built
 *     (it builds its own image from the template published in Redis);
 *   - claims spread over the nodes, none handed out twice;
 *   - sessions with bash calls through both schedulers, whichever node
 *     holds the sandbox (the relay crosses namespaces, mutual TLS);
 *   - a network partition of a node longer than the sandbox lease, and its
 *     return: its sessions get an error result for the interrupted call
 *     and a new sandbox elsewhere; once back, the node's old sandboxes are
 *     fenced (route refused, lease rejected, destroyed by reconcile);
 *   - at the end nothing is left (sandboxes, cgroups, mounts, links, slots).
 * Then the environment's build on every node and the claim spread again,
 * with Redis behind Sentinel and as a Redis Cluster (3 masters + a replica
 * each), which the namespaces reach on the bridge address. */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <hiredis/hiredis.h>

#include "lib/mnlib.h"
#include "lib/model_testlib.h"
#include "lib/sched_testlib.h"
#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "modelserver/msrv_spawn.h"
#include "base/err.h"
#include "base/timeutil.h"
#include "pool/pool.h"
#include "pool/pool_int.h"

#define KEY "sk-acme"
#define NN 3
#define LEASE_S "10"     /* sandbox lease (scheduler) and claim lease (node) */
#define PARTITION_S 16   /* longer than the lease */

static struct mn_cluster C;
static struct msrv_proc M;
static char MURL[128], AGENT[64], ENV[64];

static const char script[] =
    "{\"seed\":1,\"ttft_ms\":5,\"tokens_per_s\":500,\"chunk_tokens\":4,"
    "\"conversations\":["
    " {\"match\":\"run bash\",\"turns\":["
    "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":"
    "     \"echo out-$((6*7)); cat /proc/net/dev\"}}]},"
    "   {\"text\":\"Done.\"}]},"
    " {\"match\":\"slow bash\",\"turns\":["
    "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":\"sleep 20; echo slow-done\"}}]},"
    "   {\"text\":\"Noted.\"},"
    "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":\"echo again-$((6*7))\"}}]},"
    "   {\"text\":\"Done.\"}]},"
    " {\"turns\":[\"Hello!\"]}]}";

static const char *s_(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static double now_s(void)
{
    return (double)wp_now_ns() / 1e9;
}

/* redis-cli on the host, output's first line. */
static void rcli(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void rcli(char *out, size_t cap, const char *fmt, ...)
{
    char args[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    char cli[128];
    mn_redis_cli(&C, NULL, cli, sizeof(cli));
    th_sh(out, cap, "%s %s", cli, args);
    out[strcspn(out, "\n")] = '\0';
}

/* The sandbox hash keys of ENV (on a cluster: on the master of its slot). */
static void env_sandboxes(char *out, size_t cap, char *cli, size_t clicap)
{
    char tag[96];
    snprintf(tag, sizeof(tag), "{%s}", ENV);
    mn_redis_cli(&C, tag, cli, clicap);
    th_sh(out, cap, "%s --scan --pattern 'wp:env:{%s}:sb:*'", cli, ENV);
}

static int node_index(const char *id)
{
    for (int k = 0; k < NN; k++)
        if (!strcmp(C.nodes[k].id, id))
            return k;
    return -1;
}

static void dump_logs(void)
{
    char cmd[1400];
    for (int k = 0; k < NN; k++) {
        snprintf(cmd, sizeof(cmd), "echo '--- %s'; tail -25 %s", C.nodes[k].id, C.nodes[k].log);
        if (system(cmd) != 0)
            break;
    }
}

/* Redis of kind, the model stand-in, two schedulers, the first `nodes`
 * nodes, an agent and an environment. */
static int setup_with(enum mn_redis_kind kind, int nodes)
{
    const char *nx[] = { "--heartbeat-ttl", "3", "--lease-ms", LEASE_S "000", "--log-level",
                         getenv("WP_MN_LOG") ?: "info", NULL };

    if (mn_start_redis(&C, NN, kind) < 0)
        return -1;
    if (th_model_spawn_script(&M, C.root, script, NULL, MURL, sizeof(MURL)) < 0)
        return -1;
    mn_track(&C, M.pid, "wp-modelserver");
    const char *sx[] = { "--model-url", MURL, "--sandbox-lease", LEASE_S, NULL };
    if (mn_sched_start(&C, 0, sx) < 0 || mn_sched_start(&C, 1, sx) < 0)
        return -1;
    for (int k = 0; k < nodes; k++)
        if (mn_node_start(&C, k, nx) < 0)
            return -1;
    json_t *ag = th_call(C.scheds[0].port, KEY, "POST", "/v1/agents",
                         "{\"name\":\"mn\",\"model\":\"claude-test\","
                         "\"tools\":[{\"type\":\"agent_toolset_20260401\"}]}", 200);
    json_t *en = th_call(C.scheds[0].port, KEY, "POST", "/v1/environments",
                         "{\"name\":\"mn-env\",\"config\":{\"type\":\"cloud\",\"networking\":"
                         "{\"type\":\"unrestricted\"}},\"metadata\":{\"warmpool.min_hot\":\"1\","
                         "\"warmpool.max_hot\":\"2\"}}", 200);
    if (!ag || !en)
        return -1;
    snprintf(AGENT, sizeof(AGENT), "%s", s_(ag, "id"));
    snprintf(ENV, sizeof(ENV), "%s", s_(en, "id"));
    json_decref(ag);
    json_decref(en);
    return 0;
}

/* Two nodes now; the third joins once they have built the environment. */
static int group_setup(void **state)
{
    (void)state;
    return setup_with(MN_REDIS_SINGLE, 2);
}

/* Sentinel and Cluster: the three nodes at once. */
static int sentinel_setup(void **state)
{
    (void)state;
    return setup_with(MN_REDIS_SENTINEL, NN);
}

static int cluster_setup(void **state)
{
    (void)state;
    return setup_with(MN_REDIS_CLUSTER, NN);
}

static int group_teardown(void **state)
{
    char left[8192];
    int rc = 0;
    (void)state;
    for (int m = 0; m < 2; m++)
        if (C.scheds[m].pid > 0 && th_sched_stop(&C.scheds[m]) != 0) {
            fprintf(stderr, "# scheduler s%d did not exit cleanly\n", m + 1);
            rc = -1;
        }
    for (int k = 0; k < NN; k++)
        if (C.nodes[k].pid > 0 && mn_node_stop(&C, k) != 0) {
            fprintf(stderr, "# node %s did not exit cleanly\n", C.nodes[k].id);
            rc = -1;
        }
    /* Nothing of any sandbox is left behind by the nodes themselves. */
    mn_leftovers(&C, left, sizeof(left));
    if (left[0]) {
        fprintf(stderr, "# left behind:\n%s", left);
        rc = -1;
    }
    if (rc < 0)
        dump_logs();
    msrv_stop(&M);
    mn_stop(&C);
    return rc;
}

/* ---- the environment's image ---------------------------------------- */

static bool wait_build(const char *node, int secs)
{
    char out[512];
    for (int i = 0; i < secs * 10; i++) {
        rcli(out, sizeof(out), "hget 'wp:tpl:{%s}' build:%s", ENV, node);
        if (!strcmp(out, "ready"))
            return true;
        th_msleep(100);
    }
    fprintf(stderr, "# build:%s is '%s'\n", node, out);
    return false;
}

/* The image dir name of ENV in node k's state dir ("" if none). */
static void image_of(int k, char *out, size_t cap)
{
    th_sh(out, cap, "ls %s/images 2>/dev/null | grep '^%s-' | grep -v '\\.' | head -1",
          C.nodes[k].state, ENV);
    out[strcspn(out, "\n")] = '\0';
}

/* How many idle sandboxes of ENV node k offers in Redis. */
static int idle_of(int k)
{
    char out[16384], cli[128];
    int n = 0;
    env_sandboxes(out, sizeof(out), cli, sizeof(cli));
    for (char *save = NULL, *key = strtok_r(out, "\n", &save); key; key = strtok_r(NULL, "\n", &save)) {
        char more[256];
        th_sh(more, sizeof(more), "%s hmget '%s' node state | tr '\\n' ' '", cli, key);
        char node[64], s[64];
        if (sscanf(more, "%63s %63s", node, s) == 2 && !strcmp(node, C.nodes[k].id) && !strcmp(s, "idle"))
            n++;
    }
    return n;
}

/* Each node builds its own image from the template the scheduler
 * published (wp:tpl:{E}); images are not shared between nodes. A node that
 * starts after the others built the environment learns it from Redis,
 * builds the same image (same name: the template's digest) on its own
 * disk, and offers clones of it. */
static void a_node_picks_up_an_environment_built_elsewhere(void **state)
{
    char img1[256], img2[256], img3[256], out[256];
    const char *nx[] = { "--heartbeat-ttl", "3", "--lease-ms", LEASE_S "000", "--log-level", getenv("WP_MN_LOG") ?: "info", NULL };
    (void)state;

    assert_true(wait_build("n1", 120));
    assert_true(wait_build("n2", 120));
    image_of(0, img1, sizeof(img1));
    image_of(1, img2, sizeof(img2));
    assert_true(img1[0]);
    assert_string_equal(img1, img2);
    image_of(2, img3, sizeof(img3));
    assert_string_equal(img3, ""); /* n3 has not run yet */

    assert_int_equal(mn_node_start(&C, 2, nx), 0);
    assert_true(wait_build("n3", 120));
    image_of(2, img3, sizeof(img3));
    assert_string_equal(img3, img1);
    /* its own copy, made by its own build (its log says so) */
    th_sh(out, sizeof(out), "grep -c 'build' %s", C.nodes[2].log);
    assert_true(atoi(out) >= 1);
    struct stat a, b;
    char p1[1200], p3[1200];
    snprintf(p1, sizeof(p1), "%s/images/%s", C.nodes[0].state, img1);
    snprintf(p3, sizeof(p3), "%s/images/%s", C.nodes[2].state, img3);
    assert_int_equal(stat(p1, &a), 0);
    assert_int_equal(stat(p3, &b), 0);
    assert_false(a.st_ino == b.st_ino && a.st_dev == b.st_dev);
    /* and it serves: idle clones of it offered in Redis */
    bool offered = false;
    for (int i = 0; i < 300 && !offered; i++, th_msleep(100))
        offered = idle_of(2) >= 1;
    assert_true(offered);
    print_message("# image %s built by each of n1, n2 and (joining later) n3\n", img1);
}

/* Sentinel and Cluster groups: every node builds the environment (each its
 * own image, as above) and offers it. */
static void every_node_builds(void **state)
{
    (void)state;
    for (int k = 0; k < NN; k++) {
        assert_true(wait_build(C.nodes[k].id, 120));
        bool offered = false;
        for (int i = 0; i < 300 && !offered; i++, th_msleep(100))
            offered = idle_of(k) >= 1;
        assert_true(offered);
    }
}

/* ---- claims -------------------------------------------------------------- */

static json_t *bash_exec(int port, const char *sbx, const char *command)
{
    char path[160];
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute", sbx);
    json_t *cmd = json_pack("{s:s, s:{s:s}}", "name", "bash", "input", "command", command);
    char *cs = json_dumps(cmd, JSON_COMPACT);
    json_t *res = th_api(port, KEY, "POST", path, cs, 200);
    free(cs);
    json_decref(cmd);
    return res;
}

/* Many claims (through both schedulers at once): every node serves some,
 * no pool sandbox is handed out twice, and each runs its command. */
static void claims_spread_over_nodes(void **state)
{
    enum { N = 12 };
    char ids[N][64], pool_ids[N][64], body[160], out[256];
    int per_node[NN] = { 0 };
    (void)state;

    snprintf(body, sizeof(body), "{\"environment\":\"%s\"}", ENV);
    for (int i = 0; i < N; i++) {
        json_t *sb = th_api(C.scheds[i % 2].port, KEY, "POST", "/v1/sandboxes", body, 200);
        snprintf(ids[i], sizeof(ids[i]), "%s", s_(sb, "id"));
        json_decref(sb);
    }
    for (int i = 0; i < N; i++) {
        char path[160], st[32] = "";
        snprintf(path, sizeof(path), "/v1/sandboxes/%s", ids[i]);
        for (int t = 0; t < 600 && strcmp(st, "ready"); t++) {
            json_t *sb = th_api(C.scheds[i % 2].port, KEY, "GET", path, NULL, 200);
            snprintf(st, sizeof(st), "%s", s_(sb, "status") ?: "");
            json_decref(sb);
            if (!strcmp(st, "failed"))
                fail_msg("sandbox %d failed", i);
            if (strcmp(st, "ready"))
                th_msleep(100);
        }
        assert_string_equal(st, "ready");
    }
    for (int i = 0; i < N; i++) {
        char cmd[64], want[64];
        snprintf(cmd, sizeof(cmd), "echo claim-%d", i);
        snprintf(want, sizeof(want), "claim-%d", i);
        json_t *res = bash_exec(C.scheds[(i + 1) % 2].port, ids[i], cmd);
        const char *text = s_(json_array_get(json_object_get(res, "content"), 0), "text");
        if (json_is_true(json_object_get(res, "is_error")) || !text || strncmp(text, want, strlen(want)))
            fail_msg("sandbox %d: %s", i, text ? text : "(no text)");
        json_decref(res);
        rcli(out, sizeof(out), "hget 'wp:sbx:{acme}:%s' node", ids[i]);
        int k = node_index(out);
        assert_true(k >= 0);
        per_node[k]++;
        rcli(pool_ids[i], sizeof(pool_ids[i]), "hget 'wp:sbx:{acme}:%s' sandbox", ids[i]);
        assert_true(pool_ids[i][0]);
        for (int j = 0; j < i; j++)
            assert_string_not_equal(pool_ids[i], pool_ids[j]);
    }
    print_message("# %d claims served: n1 %d, n2 %d, n3 %d\n", N, per_node[0], per_node[1],
                  per_node[2]);
    for (int k = 0; k < NN; k++)
        assert_true(per_node[k] >= 1);
    for (int i = 0; i < N; i++) {
        char path[160];
        snprintf(path, sizeof(path), "/v1/sandboxes/%s", ids[i]);
        json_decref(th_api(C.scheds[i % 2].port, KEY, "DELETE", path, NULL, 200));
    }
}

/* ---- sessions -------------------------------------------------------------- */

static void new_session(int port, char *sid, size_t cap)
{
    char body[256];
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", AGENT, ENV);
    json_t *s = th_api(port, KEY, "POST", "/v1/sessions", body, 200);
    snprintf(sid, cap, "%s", s_(s, "id"));
    json_decref(s);
}

static json_t *history(int port, const char *sid)
{
    char path[160];
    snprintf(path, sizeof(path), "/v1/sessions/%s/events?limit=1000", sid);
    json_t *h = th_call(port, KEY, "GET", path, NULL, 200);
    json_t *d = json_incref(json_object_get(h, "data"));
    json_decref(h);
    return d;
}

/* The nth (0-based) event of type in sid's history, owned, or NULL after
 * secs. */
static json_t *wait_event(int port, const char *sid, const char *type, int nth, int secs)
{
    for (int i = 0; i <= secs * 10; i++) {
        json_t *d = history(port, sid);
        int seen = 0;
        for (size_t k = 0; k < json_array_size(d); k++) {
            json_t *e = json_array_get(d, k);
            if (!strcmp(s_(e, "type"), type) && seen++ == nth) {
                json_t *r = json_incref(e);
                json_decref(d);
                return r;
            }
        }
        json_decref(d);
        th_msleep(100);
    }
    return NULL;
}

static const char *result_text(json_t *res)
{
    return s_(json_array_get(json_object_get(res, "content"), 0), "text");
}

/* Sessions created on both schedulers run bash in sandboxes of whichever
 * node the claim found; the relay address recorded for each is its node's
 * namespace address, and the sandbox's eth0 link lives in that namespace
 * (its host end wpn<N> and the nft table there, not on the host). */
static void sessions_through_two_schedulers(void **state)
{
    enum { S = 4 };
    char sid[S][64], out[512];
    int nodes_used = 0, used[NN] = { 0 };
    (void)state;

    for (int i = 0; i < S; i++) {
        new_session(C.scheds[i % 2].port, sid[i], sizeof(sid[i]));
        th_send_text(C.scheds[(i + 1) % 2].port, KEY, sid[i], "please run bash");
    }
    for (int i = 0; i < S; i++) {
        json_t *res = wait_event(C.scheds[i % 2].port, sid[i], "agent.tool_result", 0, 60);
        assert_non_null(res);
        const char *text = result_text(res);
        print_message("# session %d: %.6s\n", i, text ? text : "(none)");
        assert_false(json_is_true(json_object_get(res, "is_error")));
        assert_non_null(strstr(text, "out-42"));
        assert_non_null(strstr(text, "eth0:")); /* a networked sandbox */
        json_decref(res);
        char node[64], relay[128];
        rcli(node, sizeof(node), "hget wp:obj:{%s} sbx_node", sid[i]);
        rcli(relay, sizeof(relay), "hget wp:obj:{%s} sbx_relay", sid[i]);
        int k = node_index(node);
        assert_true(k >= 0);
        assert_true(strncmp(relay, C.nodes[k].addr, strlen(C.nodes[k].addr)) == 0);
        if (!used[k]++)
            nodes_used++;
        /* the sandbox's host-side link is inside the node's namespace, with
         * the node's nft table there */
        assert_int_equal(mn_in_node(&C, k, out, sizeof(out), "ip -o link show | grep -c \" wpn[0-9]*@\""), 0);
        assert_true(atoi(out) >= 1);
        assert_int_equal(mn_in_node(&C, k, out, sizeof(out), "nft list table inet warmpool >/dev/null"), 0);
    }
    print_message("# %d sessions through 2 schedulers used %d nodes\n", S, nodes_used);
    for (int i = 0; i < S; i++) {
        json_t *idle = wait_event(C.scheds[0].port, sid[i], "session.status_idle", 0, 30);
        assert_non_null(idle);
        json_decref(idle);
    }
}

/* ---- the partition ---------------------------------------------------------- */

struct got {
    bool done;
    int status;
    char msg[256];
};

static void got_cb(void *ctx, int status, int fd, const struct wp_err *err)
{
    struct got *g = ctx;
    g->done = true;
    g->status = status;
    snprintf(g->msg, sizeof(g->msg), "%s", err ? err->msg : "");
    if (fd >= 0)
        close(fd);
}

/* A route to the sandbox of an old claim, as its holder would send it, on
 * loop (the relay TLS pumps live on it until pool_relay_tls_teardown). */
static struct got route(struct ev_loop *loop, const struct pool_claim_result *res, const char *env)
{
    struct got g = { 0 };
    struct wp_err err;
    if (pool_connect(loop, res, env, got_cb, &g, &err) < 0) {
        g.done = true;
        g.status = err.code;
        snprintf(g.msg, sizeof(g.msg), "%s", err.msg);
    }
    for (int i = 0; i < 2000 && !g.done; i++)
        ev_run(loop, EVRUN_ONCE);
    return g;
}

/* Renew an old lease as its holder would: the error (static), or "" when
 * the lease was renewed. */
static const char *renew_old(const struct pool_claim_result *res)
{
    static char why[256];
    char key[256], tok[32], now[32];
    redisContext *rc = redisConnect("127.0.0.1", C.redis.port);
    assert_non_null(rc);
    snprintf(key, sizeof(key), POOL__K_SB "%s", ENV, res->sandbox);
    snprintf(tok, sizeof(tok), "%llu", (unsigned long long)res->token);
    snprintf(now, sizeof(now), "%llu", (unsigned long long)wp_wall_ms());
    redisReply *r = redisCommand(rc, "EVAL %s 1 %s %s %s %s", pool__lua_renew, key, tok, now,
                                 LEASE_S "000");
    assert_non_null(r);
    snprintf(why, sizeof(why), "%s", r->type == REDIS_REPLY_ERROR ? r->str : "");
    freeReplyObject(r);
    redisFree(rc);
    return why;
}

/* How many sandboxes Redis records as leased to session sid. */
static int leased_to(const char *sid)
{
    char out[16384], cli[128];
    int n = 0;
    env_sandboxes(out, sizeof(out), cli, sizeof(cli));
    for (char *save = NULL, *key = strtok_r(out, "\n", &save); key; key = strtok_r(NULL, "\n", &save)) {
        char v[256], st[64], s[128];
        th_sh(v, sizeof(v), "%s hmget '%s' state session | tr '\\n' ' '", cli, key);
        if (sscanf(v, "%63s %127s", st, s) == 2 && !strcmp(st, "leased") && !strcmp(s, sid))
            n++;
    }
    return n;
}

static bool sandbox_dir_exists(int k, const char *id)
{
    char p[1200];
    struct stat st;
    snprintf(p, sizeof(p), "%s/sandboxes/%s", C.nodes[k].state, id);
    return stat(p, &st) == 0;
}

/* Every acknowledged user.message once, every tool use answered once,
 * event ids unique. Returns events acknowledged (user messages) and adds
 * to *lost / *dup. */
static int check_log(const char *sid, int said, int *lost, int *dup)
{
    json_t *d = history(C.scheds[0].port, sid);
    int users = 0;
    for (size_t i = 0; i < json_array_size(d); i++) {
        json_t *e = json_array_get(d, i);
        const char *ty = s_(e, "type");
        users += !strcmp(ty, "user.message");
        for (size_t j = 0; j < i; j++)
            if (!strcmp(s_(json_array_get(d, j), "id"), s_(e, "id")))
                (*dup)++;
        if (!strcmp(ty, "agent.tool_use")) {
            int answers = 0;
            for (size_t j = 0; j < json_array_size(d); j++) {
                json_t *r = json_array_get(d, j);
                answers += !strcmp(s_(r, "type"), "agent.tool_result") &&
                           !strcmp(s_(r, "tool_use_id") ?: "", s_(e, "id"));
            }
            *dup += answers > 1;
            *lost += answers == 0;
        }
    }
    *lost += users < said ? said - users : 0;
    *dup += users > said ? users - said : 0;
    json_decref(d);
    return users;
}

/* Node V's link goes down while sessions run a slow bash call in sandboxes
 * of every node, for longer than the sandbox lease. Other nodes reap V;
 * holders of V's sandboxes learn the lease is lost: the interrupted call
 * ends with an error result, and the next call gets a sandbox elsewhere.
 * When V is back, its old sandboxes are fenced: a route with the old
 * lease is refused (from the first moment it answers), the old lease
 * cannot be renewed, the sandboxes are destroyed by its reconcile, and no
 * session has two leased sandboxes. */
static void partition_of_a_node(void **state)
{
    enum { S = 3 };
    char sid[S][64];
    int home[S], said[S] = { 1, 1, 1 };
    struct pool_claim_result old[S];
    (void)state;

    for (int i = 0; i < S; i++) {
        new_session(C.scheds[i % 2].port, sid[i], sizeof(sid[i]));
        th_send_text(C.scheds[i % 2].port, KEY, sid[i], "please slow bash");
    }
    /* every call running (tool use written, sandbox recorded) */
    for (int i = 0; i < S; i++) {
        json_t *u = wait_event(C.scheds[0].port, sid[i], "agent.tool_use", 0, 60);
        assert_non_null(u);
        json_decref(u);
        char node[64] = "";
        for (int t = 0; t < 100 && !node[0]; t++, th_msleep(100))
            rcli(node, sizeof(node), "hget wp:obj:{%s} sbx_node", sid[i]);
        home[i] = node_index(node);
        assert_true(home[i] >= 0);
        memset(&old[i], 0, sizeof(old[i]));
        char tok[32];
        rcli(old[i].sandbox, sizeof(old[i].sandbox), "hget wp:obj:{%s} sbx_sandbox", sid[i]);
        rcli(old[i].relay, sizeof(old[i].relay), "hget wp:obj:{%s} sbx_relay", sid[i]);
        rcli(old[i].rkey, sizeof(old[i].rkey), "hget wp:obj:{%s} sbx_rkey", sid[i]);
        rcli(tok, sizeof(tok), "hget wp:obj:{%s} sbx_token", sid[i]);
        old[i].token = strtoull(tok, NULL, 10);
        snprintf(old[i].node, sizeof(old[i].node), "%s", node);
    }
    th_msleep(1500); /* the sleep runs */
    int v = home[0];
    const char *vid = C.nodes[v].id;
    print_message("# partition of %s (sessions on n%d n%d n%d)\n", vid, home[0] + 1, home[1] + 1,
                  home[2] + 1);

    double t0 = now_s();
    assert_int_equal(mn_link(&C, v, false), 0);
    /* V's sessions: the interrupted call ends in an error result, and the
     * next call runs in a sandbox of another node. */
    double recovered = 0;
    for (int i = 0; i < S; i++) {
        if (home[i] != v)
            continue;
        json_t *res = wait_event(C.scheds[0].port, sid[i], "agent.tool_result", 0, 45);
        assert_non_null(res);
        print_message("# session %d on %s after %.1f s: %s\n", i, vid, now_s() - t0,
                      result_text(res) ? result_text(res) : "");
        assert_true(json_is_true(json_object_get(res, "is_error")));
        json_decref(res);
        json_t *idle = wait_event(C.scheds[0].port, sid[i], "session.status_idle", 0, 30);
        assert_non_null(idle);
        json_decref(idle);
        th_send_text(C.scheds[1].port, KEY, sid[i], "now again");
        said[i]++;
        res = wait_event(C.scheds[0].port, sid[i], "agent.tool_result", 1, 60);
        assert_non_null(res);
        assert_false(json_is_true(json_object_get(res, "is_error")));
        assert_non_null(strstr(result_text(res), "again-42"));
        json_decref(res);
        char node[64];
        rcli(node, sizeof(node), "hget wp:obj:{%s} sbx_node", sid[i]);
        assert_string_not_equal(node, vid);
        recovered = now_s() - t0;
    }
    /* The others' calls end with their output. */
    for (int i = 0; i < S; i++) {
        if (home[i] == v)
            continue;
        json_t *res = wait_event(C.scheds[0].port, sid[i], "agent.tool_result", 0, 45);
        assert_non_null(res);
        const char *text = result_text(res);
        print_message("# session %d on %s after %.1f s: %s%s\n", i, C.nodes[home[i]].id,
                      now_s() - t0, json_is_true(json_object_get(res, "is_error")) ? "error: " : "",
                      text ? text : "");
        assert_false(json_is_true(json_object_get(res, "is_error")));
        assert_non_null(strstr(text ? text : "", "slow-done"));
        json_decref(res);
    }
    /* Down for longer than the lease. */
    while (now_s() - t0 < PARTITION_S)
        th_msleep(200);
    char alive[32];
    rcli(alive, sizeof(alive), "exists wp:node:%s:alive", vid);
    assert_string_equal(alive, "0"); /* the others saw it die */
    assert_int_equal(mn_link(&C, v, true), 0);
    double t1 = now_s();

    /* From its return: routes with an old lease are refused, every time,
     * until the sandbox is gone. */
    struct pool_relay_tls_conf tc = { .mode = POOL_RELAY_TLS_AUTO };
    snprintf(tc.cert, sizeof(tc.cert), "%s/s3.pem", C.certs);
    snprintf(tc.key, sizeof(tc.key), "%s/s3.key", C.certs);
    snprintf(tc.ca, sizeof(tc.ca), "%s/ca.pem", C.certs);
    struct wp_err err;
    assert_int_equal(pool_relay_tls_setup(&tc, &err), 0);
    struct ev_loop *loop = ev_loop_new(0);
    int routes = 0, refused = 0;
    bool all_gone = false;
    while (now_s() - t1 < 40 && !all_gone) {
        all_gone = true;
        for (int i = 0; i < S; i++) {
            if (home[i] != v)
                continue;
            struct got g = route(loop, &old[i], ENV);
            routes++;
            if (g.status == 0)
                fail_msg("the old holder of %s was let in after the partition", old[i].sandbox);
            refused += g.status == WP_ESTALE || g.status == WP_ENOTFOUND;
            all_gone = all_gone && !sandbox_dir_exists(v, old[i].sandbox) && g.status == WP_ENOTFOUND;
        }
        th_msleep(100);
    }
    double fenced = now_s() - t1;
    pool_relay_tls_teardown(); /* its pumps are on loop */
    ev_loop_destroy(loop);
    print_message("# %s back: %d routes with old leases, %d refused by the node; its old "
                  "sandboxes gone %.1f s after its return\n", vid, routes, refused, fenced);
    assert_true(all_gone);
    assert_true(refused >= 1);
    for (int i = 0; i < S; i++) {
        if (home[i] != v)
            continue;
        const char *why = renew_old(&old[i]);
        print_message("# renewing the old lease of %s: %s\n", old[i].sandbox, why);
        assert_true(why[0]); /* rejected */
        assert_int_equal(leased_to(sid[i]), 1); /* the new one only */
    }
    /* V rejoins and serves again. */
    bool back = false;
    for (int i = 0; i < 100 && !back; i++, th_msleep(100)) {
        rcli(alive, sizeof(alive), "exists wp:node:%s:alive", vid);
        back = !strcmp(alive, "1");
    }
    assert_true(back);

    /* The sessions' logs: nothing acknowledged lost or written twice, every
     * session idle at the end, no session.error. */
    int acked = 0, lost = 0, dup = 0, failed = 0;
    for (int i = 0; i < S; i++) {
        json_t *idle = wait_event(C.scheds[0].port, sid[i], "session.status_idle", said[i] - 1, 30);
        failed += idle == NULL;
        json_decref(idle);
        json_t *e = wait_event(C.scheds[0].port, sid[i], "session.error", 0, 0);
        failed += e != NULL;
        json_decref(e);
        acked += check_log(sid[i], said[i], &lost, &dup);
    }
    print_message("# partition row: fault=link of %s down %.0f s (lease %s s); load=%d sessions "
                  "with bash calls over 2 schedulers; events acknowledged=%d lost=%d duplicated=%d; "
                  "sessions failed=%d; time to recover: sessions on %s running calls elsewhere %.1f s after the cut, node's old "
                  "sandboxes fenced and gone %.1f s after its return\n",
                  vid, t1 - t0, LEASE_S, S, acked, lost, dup, failed, vid, recovered, fenced);
    assert_int_equal(lost, 0);
    assert_int_equal(dup, 0);
    assert_int_equal(failed, 0);
}

int main(void)
{
    if (geteuid() != 0) {
        printf("1..0 # SKIP needs root (network namespaces, sandboxes)\n");
        return 0;
    }
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_node_picks_up_an_environment_built_elsewhere),
        cmocka_unit_test(claims_spread_over_nodes),
        cmocka_unit_test(sessions_through_two_schedulers),
        cmocka_unit_test(partition_of_a_node),
    };
    /* The same claims with the nodes and schedulers reaching Redis through
     * sentinels, and on a Redis Cluster: from the namespaces, by the
     * bridge addresses the sentinels and CLUSTER SLOTS name. */
    const struct CMUnitTest spread[] = {
        cmocka_unit_test(every_node_builds),
        cmocka_unit_test(claims_spread_over_nodes),
    };
    /* WP_MN_GROUPS: a list of single, sentinel, cluster (default: all). */
    const char *g = getenv("WP_MN_GROUPS") ?: "single,sentinel,cluster";
    int rc = 0;
    if (strstr(g, "single"))
        rc |= cmocka_run_group_tests_name("single Redis", tests, group_setup, group_teardown);
    if (strstr(g, "sentinel"))
        rc |= cmocka_run_group_tests_name("Sentinel", spread, sentinel_setup, group_teardown);
    if (strstr(g, "cluster"))
        rc |= cmocka_run_group_tests_name("Redis Cluster", spread, cluster_setup, group_teardown);
    return rc;
}
