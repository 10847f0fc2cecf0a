/* test_sched_slots.c - a session's hot path on a Redis that enforces hash
 * slots: a one-master Redis Cluster node (cluster-enabled, every slot its
 * own), which refuses a script whose declared keys cross slots (CROSSSLOT)
 * and one that touches an undeclared key of another slot than its
 * declared ones (Redis 7), and a multi-key XREAD across slots.
 *
 * A scheduler on a plain Redis makes the first objects; the keys are then
 * copied to the cluster node (MIGRATE COPY), where a second scheduler, the
 * brain on, serves the sessions: appends, turns, history, streams, a
 * takeover after kill -9, delete. Agents, environments, sessions (with a
 * quota refusal), vaults, credentials and files are created on the
 * cluster node itself, sessions listed there (pages, filters), a
 * /v1/sandboxes create passes the quota gate there, and `warmpool quota`
 * reads and writes it through its cluster router. The environment is
 * self_hosted, so no session claims a sandbox. */
#include <hiredis.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/model_testlib.h"
#include "lib/sched_testlib.h"
#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "modelserver/msrv_spawn.h"
#include "sse_client.h"
#include "base/rcluster.h"
#include "base/timeutil.h"
#include "scheduler/sched_int.h"

#define KEY "sk-acme"
#define KEY_B "sk-beta" /* organization beta: made on the cluster node only */

static struct th_redis R;         /* plain: where objects are created */
static int CPORT, CPID;           /* the cluster node */
static char *DIR_, URL[128], FDIR[512];
static struct th_sched A, B;      /* A on R (no brain), B on the cluster node */
static struct msrv_proc M;
static char SID[3][64], ENV_ID[64];
static char ENV_B[64]; /* beta's cloud environment (publishing is not one slot yet) */

static const char script[] =
    "{\"seed\":1,\"ttft_ms\":20,\"tokens_per_s\":40,\"chunk_tokens\":1,"
    "\"conversations\":["
    " {\"match\":\"slow\",\"turns\":[{\"text\":\"one two three four five six seven eight nine ten "
    "eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty "
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen\"}]},"
    " {\"turns\":[\"Hello from the cluster!\"]}]}";

static const char *s_(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static int cluster_start(void)
{
    char port[16], bus[16], out[4096];
    CPORT = th_free_port();
    snprintf(port, sizeof(port), "%d", CPORT);
    snprintf(bus, sizeof(bus), "%d", th_free_port()); /* port + 10000 may not exist */
    char log[512];
    snprintf(log, sizeof(log), "%s/cluster.log", DIR_);
    const char *argv[] = {"redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", DIR_,
                          "--save", "", "--appendonly", "no", "--cluster-enabled", "yes",
                          "--cluster-config-file", "nodes.conf", "--cluster-port", bus, NULL};
    if ((CPID = th_spawn(log, argv)) < 0)
        return -1;
    for (int i = 0; i < 100; i++, th_msleep(50))
        if (th_sh(out, sizeof(out), "redis-cli -p %d ping 2>/dev/null", CPORT) == 0 &&
            strstr(out, "PONG"))
            break;
    th_sh(out, sizeof(out), "redis-cli -p %d cluster addslotsrange 0 16383", CPORT);
    for (int i = 0; i < 100; i++, th_msleep(50))
        if (th_sh(out, sizeof(out), "redis-cli -p %d cluster info", CPORT) == 0 &&
            strstr(out, "cluster_state:ok"))
            return 0;
    return -1;
}

/* Every key of the plain Redis, copied to the cluster node. */
static int copy_keys(void)
{
    static char keys[1 << 16];
    char out[256];
    if (th_sh(keys, sizeof(keys), "redis-cli -p %d --scan", R.port) != 0)
        return -1;
    int n = 0;
    for (char *k = strtok(keys, "\n"); k; k = strtok(NULL, "\n"), n++) {
        th_sh(out, sizeof(out), "redis-cli -p %d MIGRATE 127.0.0.1 %d '%s' 0 5000 COPY REPLACE",
              R.port, CPORT, k);
        if (!strstr(out, "OK"))
            return -1;
    }
    return n > 0 ? 0 : -1;
}

static int group_setup(void **state)
{
    (void)state;
    DIR_ = th_tmpdir("slots");
    if (!DIR_ || th_redis_start(&R, 0) < 0 || cluster_start() < 0)
        return -1;
    snprintf(FDIR, sizeof(FDIR), "%s/files", DIR_);
    if (th_model_spawn_script(&M, DIR_, script, NULL, URL, sizeof(URL)) < 0)
        return -1;
    if (th_sched_start(&A, R.port, "--files-dir", FDIR, NULL) < 0)
        return -1;
    json_t *ag = th_call(A.port, KEY, "POST", "/v1/agents",
                         "{\"name\":\"t\",\"model\":\"claude-test\",\"system\":\"be brief\"}", 200);
    json_t *en = th_call(A.port, KEY, "POST", "/v1/environments",
                         "{\"name\":\"sh\",\"config\":{\"type\":\"self_hosted\"}}", 200);
    if (!ag || !en)
        return -1;
    for (int i = 0; i < 3; i++) {
        char body[256];
        snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", s_(ag, "id"),
                 s_(en, "id"));
        json_t *s = th_call(A.port, KEY, "POST", "/v1/sessions", body, 200);
        if (!s)
            return -1;
        snprintf(SID[i], sizeof(SID[i]), "%s", s_(s, "id"));
        json_decref(s);
    }
    snprintf(ENV_ID, sizeof(ENV_ID), "%s", s_(en, "id"));
    json_t *eb = th_call(A.port, KEY_B, "POST", "/v1/environments",
                         "{\"name\":\"c\",\"config\":{\"type\":\"cloud\"},"
                         "\"metadata\":{\"warmpool.min_hot\":\"0\"}}", 200);
    if (!eb)
        return -1;
    snprintf(ENV_B, sizeof(ENV_B), "%s", s_(eb, "id"));
    json_decref(eb);
    json_decref(ag);
    json_decref(en);
    if (copy_keys() < 0)
        return -1;
    return th_sched_start(&B, CPORT, "--model-url", URL, "--brain-lease-ms", "1500",
                          "--sse-slot-groups", "on", "--files-dir", FDIR, NULL);
}

static int group_teardown(void **state)
{
    (void)state;
    int rc = 0;
    /* A clean exit (under ASan: no leak) with brains and sweeps running. */
    if ((A.pid > 0 && th_sched_stop(&A) != 0) || (B.pid > 0 && th_sched_stop(&B) != 0)) {
        fprintf(stderr, "a scheduler did not exit cleanly\n");
        rc = -1;
    }
    msrv_stop(&M);
    if (CPID > 0) {
        kill(CPID, SIGKILL);
        waitpid(CPID, NULL, 0);
    }
    th_redis_stop(&R);
    th_rmtree(DIR_);
    free(DIR_);
    return rc;
}

static void send_text(int port, const char *sid, const char *text)
{
    th_send_text(port, KEY, sid, text);
}

/* Stream events until an idle with end_turn; the agent.message texts seen,
 * joined. */
static void until_idle(struct sse *s, char *text, size_t cap, int timeout_ms)
{
    uint64_t end = wp_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    text[0] = '\0';
    for (;;) {
        int left = (int)((int64_t)(end - wp_now_ns()) / 1000000);
        json_t *e = left > 0 ? sse_next(s, left) : NULL;
        if (!e)
            fail_msg("no idle within %d ms (messages so far: %s)", timeout_ms, text);
        const char *t = s_(e, "type");
        if (!strcmp(t, "agent.message"))
            strncat(text, s_(json_array_get(json_object_get(e, "content"), 0), "text"),
                    cap - strlen(text) - 1);
        bool done = !strcmp(t, "session.status_idle") &&
                    !strcmp(s_(json_object_get(e, "stop_reason"), "type"), "end_turn");
        json_decref(e);
        if (done)
            return;
    }
}

/* No command of the cluster node was refused for its slots. */
static void assert_no_slot_errors(void)
{
    char out[4096];
    th_sh(out, sizeof(out), "redis-cli -p %d info errorstats", CPORT);
    print_message("# cluster node errorstats: %s\n", out);
    assert_null(strstr(out, "CROSSSLOT"));
    assert_null(strstr(out, "errorstat_ERR")); /* "Script attempted to access ... slot" */
}

/* The keys one session's scripts touch are all in its slot. */
static void session_keys_share_a_slot(void **state)
{
    (void)state;
    char k[4][200];
    sched__key_obj(k[0], sizeof(k[0]), NULL, SID[0]);
    sched__key_events(k[1], sizeof(k[1]), SID[0]);
    sched__key_lease(k[2], sizeof(k[2]), SID[0]);
    sched__key_fence(k[3], sizeof(k[3]), SID[0]);
    int slot = wp_rcl_keyslot(k[0], strlen(k[0]));
    for (int i = 1; i < 4; i++)
        assert_int_equal(wp_rcl_keyslot(k[i], strlen(k[i])), slot);
    /* and the cluster node agrees */
    char out[64];
    th_sh(out, sizeof(out), "redis-cli -p %d cluster keyslot '%s'", CPORT, k[3]);
    assert_int_equal(atoi(out), slot);
}

/* Input, a turn by the brain, the stream and the history, on slots. */
static void turn_on_a_cluster_node(void **state)
{
    (void)state;
    struct sse s;
    char text[512], path[160];
    sse_open_as(&s, B.port, KEY, SID[0], "");
    send_text(B.port, SID[0], "hello");
    until_idle(&s, text, sizeof(text), 20000);
    assert_string_equal(text, "Hello from the cluster!");
    sse_close(&s);
    snprintf(path, sizeof(path), "/v1/sessions/%s/events?order=asc", SID[0]);
    json_t *h = th_api(B.port, KEY, "GET", path, NULL, 200);
    json_t *d = json_object_get(h, "data");
    int user = 0, agent = 0;
    for (size_t i = 0; i < json_array_size(d); i++) {
        user += !strcmp(s_(json_array_get(d, i), "type"), "user.message");
        agent += !strcmp(s_(json_array_get(d, i), "type"), "agent.message");
    }
    assert_int_equal(user, 1);
    assert_int_equal(agent, 1);
    json_decref(h);
    snprintf(path, sizeof(path), "/v1/sessions/%s", SID[0]);
    json_t *o = th_api(B.port, KEY, "GET", path, NULL, 200);
    assert_string_equal(s_(o, "status"), "idle");
    json_decref(o);
    assert_no_slot_errors();
}

/* Two sessions streamed by one process: their live tails are read per
 * slot (a cluster refuses one XREAD across them). */
static void two_streams_on_a_cluster_node(void **state)
{
    (void)state;
    struct sse s1, s2;
    char text[512];
    sse_open_as(&s1, B.port, KEY, SID[1], "");
    sse_open_as(&s2, B.port, KEY, SID[2], "");
    th_msleep(200); /* both live (hubs on their readers) */
    send_text(B.port, SID[1], "hi one");
    send_text(B.port, SID[2], "hi two");
    until_idle(&s1, text, sizeof(text), 20000);
    assert_string_equal(text, "Hello from the cluster!");
    until_idle(&s2, text, sizeof(text), 20000);
    assert_string_equal(text, "Hello from the cluster!");
    sse_close(&s1);
    sse_close(&s2);
    assert_no_slot_errors();
}

/* kill -9 mid-turn: another scheduler's sweep (active-set shard, then the
 * session's own slot) takes the session over and the turn ends. */
static void takeover_on_a_cluster_node(void **state)
{
    (void)state;
    struct sse s;
    char text[512];
    sse_open_as(&s, B.port, KEY, SID[1], "");
    send_text(B.port, SID[1], "slow please");
    json_t *e;
    bool delta = false;
    while (!delta && (e = sse_next(&s, 10000))) {
        delta = !strcmp(s_(e, "type"), "event_delta") || !strcmp(s_(e, "type"), "span.model_request_start");
        json_decref(e);
    }
    assert_true(delta);
    sse_close(&s);
    kill(B.pid, SIGKILL);
    waitpid(B.pid, NULL, 0);
    B.pid = 0;
    assert_int_equal(th_sched_start(&B, CPORT, "--model-url", URL, "--brain-lease-ms", "1500",
                                     "--sse-slot-groups", "on", "--files-dir", FDIR, NULL), 0);
    /* Wait for the turn to end (the history's last status is idle). */
    char path[160];
    snprintf(path, sizeof(path), "/v1/sessions/%s", SID[1]);
    const char *st = "";
    json_t *o = NULL;
    for (int i = 0; i < 200; i++, th_msleep(100)) {
        json_decref(o);
        o = th_api(B.port, KEY, "GET", path, NULL, 200);
        st = s_(o, "status");
        if (!strcmp(st, "idle"))
            break;
    }
    assert_string_equal(st, "idle");
    json_decref(o);
    (void)text;
    assert_no_slot_errors();
}

/* How many objects a list answer holds, and whether id is among them. */
static int list_has(int port, const char *path, const char *id)
{
    json_t *l = th_api(port, KEY, "GET", path, NULL, 200);
    json_t *d = json_object_get(l, "data");
    int found = 0;
    for (size_t i = 0; i < json_array_size(d); i++)
        found |= !strcmp(s_(json_array_get(d, i), "id"), id);
    json_decref(l);
    return found;
}

/* A new agent updated once (two versions); path gets /v1/agents/<id>. */
static json_t *agent_v2(int port, char *path, size_t cap)
{
    json_t *ag = th_api(port, KEY, "POST", "/v1/agents",
                        "{\"name\":\"a\",\"model\":\"claude-test\"}", 200);
    snprintf(path, cap, "/v1/agents/%s", s_(ag, "id"));
    json_t *up = th_api(port, KEY, "POST", path, "{\"version\":1,\"system\":\"v2\"}", 200);
    assert_int_equal(json_integer_value(json_object_get(up, "version")), 2);
    json_decref(up);
    return ag;
}

/* A file uploaded (multipart, by curl); its object. */
static json_t *upload(int port, const char *name)
{
    char out[4096];
    th_sh(out, sizeof(out), "printf 'some bytes' > %s/%s && curl -s -H 'x-api-key: %s' "
          "-F 'file=@%s/%s;type=text/plain' http://127.0.0.1:%d/v1/files",
          DIR_, name, KEY, DIR_, name, port);
    json_t *f = json_loads(out, 0, NULL);
    assert_non_null(s_(f, "id"));
    return f;
}

/* Agents, vaults, credentials and files are created, updated, listed and
 * deleted on the cluster node, environments read and listed: their scripts
 * (create, store, list, delete, the vault's credential drop) are in the
 * organization's slot. */
static void objects_on_a_cluster_node(void **state)
{
    (void)state;
    char path[200], body[256];
    json_t *ag = agent_v2(B.port, path, sizeof(path));
    const char *aid = s_(ag, "id");
    snprintf(path, sizeof(path), "/v1/agents/%s/versions", aid);
    json_t *vs = th_api(B.port, KEY, "GET", path, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(vs, "data")), 2);
    json_decref(vs);
    assert_true(list_has(B.port, "/v1/agents?limit=100", aid));
    /* Environments are listed here; creating one passes the quota gate,
     * whose keys are not one slot yet (ARCHITECTURE.md, Redis Cluster). */
    assert_true(list_has(B.port, "/v1/environments?limit=100", ENV_ID));
    snprintf(path, sizeof(path), "/v1/environments/%s", ENV_ID);
    json_decref(th_api(B.port, KEY, "GET", path, NULL, 200));
    json_t *v = th_api(B.port, KEY, "POST", "/v1/vaults", "{\"display_name\":\"c\"}", 200);
    const char *vid = s_(v, "id");
    snprintf(path, sizeof(path), "/v1/vaults/%s/credentials", vid);
    json_t *c = th_api(B.port, KEY, "POST", path,
                       "{\"auth\":{\"type\":\"static_bearer\",\"mcp_server_url\":\"https://m\","
                       "\"token\":\"t\"}}", 200);
    assert_true(list_has(B.port, path, s_(c, "id")));
    snprintf(body, sizeof(body), "/v1/vaults/%s/credentials/%s", vid, s_(c, "id"));
    json_decref(th_api(B.port, KEY, "GET", body, NULL, 200));
    snprintf(path, sizeof(path), "/v1/vaults/%s", vid);
    json_decref(th_api(B.port, KEY, "DELETE", path, NULL, 200));
    json_decref(th_api(B.port, KEY, "GET", body, NULL, 404)); /* its credentials went too */
    /* A file: uploaded, listed, read, deleted. */
    json_t *f = upload(B.port, "up.txt");
    const char *fid = s_(f, "id");
    assert_true(list_has(B.port, "/v1/files", fid));
    snprintf(path, sizeof(path), "/v1/files/%s", fid);
    json_decref(th_api(B.port, KEY, "GET", path, NULL, 200));
    json_decref(th_api(B.port, KEY, "DELETE", path, NULL, 200));
    json_decref(th_api(B.port, KEY, "GET", path, NULL, 404));
    json_decref(f);
    json_decref(c);
    json_decref(v);
    json_decref(ag);
    assert_no_slot_errors();
}

/* `warmpool ARGS` through the CLI's cluster router (the cluster node), or
 * on the plain Redis (port > 0); its exit status, output in out. */
static int wp_cli(char *out, size_t cap, int port, const char *args)
{
    if (port > 0)
        return th_sh(out, cap, "%s/warmpool --redis 127.0.0.1:%d %s 2>&1", th_build_dir(), port,
                     args);
    return th_sh(out, cap, "%s/warmpool --redis-cluster 127.0.0.1:%d %s 2>&1", th_build_dir(),
                 CPORT, args);
}

/* The number of keys matching pattern on the cluster node. */
static int count_keys(const char *pattern)
{
    char out[64];
    th_sh(out, sizeof(out), "redis-cli -p %d --scan --pattern '%s' | wc -l", CPORT, pattern);
    return atoi(out);
}

/* A list page's ids, "a,b,c", and its cursors. */
static void page_of(int port, const char *key, const char *path, char *ids, size_t cap,
                    char *next, char *prev)
{
    json_t *l = th_api(port, key, "GET", path, NULL, 200);
    json_t *d = json_object_get(l, "data");
    ids[0] = '\0';
    for (size_t i = 0; i < json_array_size(d); i++)
        snprintf(ids + strlen(ids), cap - strlen(ids), "%s%s", i ? "," : "",
                 s_(json_array_get(d, i), "id"));
    if (next)
        snprintf(next, 64, "%s", s_(l, "next_page") ? s_(l, "next_page") : "");
    if (prev)
        snprintf(prev, 64, "%s", s_(l, "prev_page") ? s_(l, "prev_page") : "");
    json_decref(l);
}

/* A 429 quota refusal naming quota. */
static void assert_quota_refused(int port, const char *path, const char *body, const char *quota)
{
    json_t *e = th_api(port, KEY_B, "POST", path, body, 429);
    json_t *d = json_object_get(json_object_get(e, "error"), "details");
    assert_string_equal(s_(d, "error_code"), "quota_exceeded");
    assert_string_equal(s_(d, "quota"), quota);
    json_decref(e);
}

/* Organization beta, made on the cluster node: an environment and a
 * refusal of another (the quota gate; a cloud environment that passes it
 * is then published, which is not one slot yet: its environment was made
 * in the setup), sessions (object in its slot, then quota count and index
 * in the organization's), a refusal that leaves no object, listings with
 * pages, cursors both ways and filters, an archive, and `warmpool quota`.
 * The sessions are on a cloud environment: a self_hosted one's enqueue
 * work items, whose scripts are not one slot yet. */
static void sessions_created_and_listed_on_a_cluster_node(void **state)
{
    (void)state;
    char out[4096], body[256], path[256], ids[1024], next[64], prev[64], sid[5][64];
    json_t *en = th_api(B.port, KEY_B, "POST", "/v1/environments",
                        "{\"name\":\"b\",\"config\":{\"type\":\"self_hosted\"}}", 200);
    page_of(B.port, KEY_B, "/v1/environments?limit=100", ids, sizeof(ids), NULL, NULL);
    assert_non_null(strstr(ids, s_(en, "id")));
    assert_false(list_has(B.port, "/v1/environments?limit=100", s_(en, "id"))); /* not acme's */
    json_decref(en);
    assert_int_equal(wp_cli(out, sizeof(out), 0, "quota set beta hot=0"), 0);
    assert_quota_refused(B.port, "/v1/environments",
                         "{\"name\":\"h\",\"config\":{\"type\":\"cloud\"},"
                         "\"metadata\":{\"warmpool.min_hot\":\"1\"}}", "hot");
    assert_int_equal(wp_cli(out, sizeof(out), 0, "quota set beta hot=none"), 0);
    json_t *a1 = th_api(B.port, KEY_B, "POST", "/v1/agents",
                        "{\"name\":\"a1\",\"model\":\"claude-test\"}", 200);
    json_t *a2 = th_api(B.port, KEY_B, "POST", "/v1/agents",
                        "{\"name\":\"a2\",\"model\":\"claude-test\"}", 200);
    assert_int_equal(wp_cli(out, sizeof(out), 0, "quota set beta sessions=4"), 0);
    for (int i = 0; i < 4; i++) {
        snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}",
                 s_(i < 3 ? a1 : a2, "id"), ENV_B);
        json_t *o = th_api(B.port, KEY_B, "POST", "/v1/sessions", body, 200);
        snprintf(sid[i], sizeof(sid[i]), "%s", s_(o, "id"));
        json_decref(o);
        /* persistent once answered (its TTL was for a create cut short) */
        th_sh(out, sizeof(out), "redis-cli -p %d pttl 'wp:obj:{%s}'", CPORT, sid[i]);
        assert_int_equal(atoi(out), -1);
    }
    /* The fifth is refused and leaves no object behind. */
    int objects = count_keys("wp:obj:{sesn_*");
    assert_quota_refused(B.port, "/v1/sessions", body, "sessions");
    assert_int_equal(count_keys("wp:obj:{sesn_*"), objects);
    th_sh(out, sizeof(out), "redis-cli -p %d zcard 'wp:idx:{beta}:session:active'", CPORT);
    assert_int_equal(atoi(out), 4);
    /* Pages of 3, newest first, and back. */
    page_of(B.port, KEY_B, "/v1/sessions?limit=3", ids, sizeof(ids), next, NULL);
    snprintf(out, sizeof(out), "%s,%s,%s", sid[3], sid[2], sid[1]);
    assert_string_equal(ids, out);
    assert_true(next[0]);
    snprintf(path, sizeof(path), "/v1/sessions?limit=3&page=%s", next);
    page_of(B.port, KEY_B, path, ids, sizeof(ids), next, prev);
    assert_string_equal(ids, sid[0]);
    assert_string_equal(next, "");
    snprintf(path, sizeof(path), "/v1/sessions?limit=3&page=%s", prev);
    page_of(B.port, KEY_B, path, ids, sizeof(ids), NULL, NULL);
    snprintf(out, sizeof(out), "%s,%s,%s", sid[3], sid[2], sid[1]);
    assert_string_equal(ids, out);
    /* Filters: agent (ascending, pages of 2), agent version, status. */
    snprintf(path, sizeof(path), "/v1/sessions?agent_id=%s", s_(a2, "id"));
    page_of(B.port, KEY_B, path, ids, sizeof(ids), NULL, NULL);
    assert_string_equal(ids, sid[3]);
    snprintf(path, sizeof(path), "/v1/sessions?agent_id=%s&order=asc&limit=2", s_(a1, "id"));
    page_of(B.port, KEY_B, path, ids, sizeof(ids), next, NULL);
    snprintf(out, sizeof(out), "%s,%s", sid[0], sid[1]);
    assert_string_equal(ids, out);
    snprintf(path, sizeof(path), "/v1/sessions?agent_id=%s&order=asc&limit=2&page=%s",
             s_(a1, "id"), next);
    page_of(B.port, KEY_B, path, ids, sizeof(ids), next, NULL);
    assert_string_equal(ids, sid[2]);
    assert_string_equal(next, "");
    snprintf(path, sizeof(path), "/v1/sessions?agent_id=%s&agent_version=2", s_(a1, "id"));
    page_of(B.port, KEY_B, path, ids, sizeof(ids), NULL, NULL);
    assert_string_equal(ids, "");
    page_of(B.port, KEY_B, "/v1/sessions?statuses[]=running", ids, sizeof(ids), NULL, NULL);
    assert_string_equal(ids, "");
    page_of(B.port, KEY_B, "/v1/sessions?statuses[]=idle&statuses[]=running&limit=10", ids,
            sizeof(ids), NULL, NULL);
    snprintf(out, sizeof(out), "%s,%s,%s,%s", sid[3], sid[2], sid[1], sid[0]);
    assert_string_equal(ids, out);
    /* Archived: out of the default listing and of the quota count. */
    snprintf(path, sizeof(path), "/v1/sessions/%s/archive", sid[0]);
    json_decref(th_api(B.port, KEY_B, "POST", path, NULL, 200));
    page_of(B.port, KEY_B, "/v1/sessions", ids, sizeof(ids), NULL, NULL);
    snprintf(out, sizeof(out), "%s,%s,%s", sid[3], sid[2], sid[1]);
    assert_string_equal(ids, out);
    page_of(B.port, KEY_B, "/v1/sessions?include_archived=true&order=asc&limit=1", ids,
            sizeof(ids), NULL, NULL);
    assert_string_equal(ids, sid[0]);
    json_t *o = th_api(B.port, KEY_B, "POST", "/v1/sessions", body, 200);
    snprintf(sid[4], sizeof(sid[4]), "%s", s_(o, "id"));
    json_decref(o);
    assert_quota_refused(B.port, "/v1/sessions", body, "sessions");
    /* Another organization's listing does not see them. */
    assert_false(list_has(B.port, "/v1/sessions?limit=100", sid[4]));
    /* The CLI on the cluster: use against quota, every organization. */
    assert_int_equal(wp_cli(out, sizeof(out), 0, "quota show beta"), 0);
    print_message("# %s", out);
    assert_non_null(strstr(out, "sessions            4 used of 4"));
    assert_int_equal(wp_cli(out, sizeof(out), 0, "quota show"), 0);
    assert_true(!strncmp(out, "beta\n", 5) || strstr(out, "\nbeta\n"));
    assert_int_equal(wp_cli(out, sizeof(out), 0, "quota set beta sessions=none"), 0);
    assert_int_equal(wp_cli(out, sizeof(out), 0, "quota show beta"), 0);
    assert_non_null(strstr(out, "4 used of unlimited"));
    /* a1's sessions behind a batch of others: found over several reads */
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}",
             s_(a2, "id"), ENV_B);
    for (int i = 0; i < 14; i++)
        json_decref(th_api(B.port, KEY_B, "POST", "/v1/sessions", body, 200));
    snprintf(path, sizeof(path), "/v1/sessions?agent_id=%s&limit=1", s_(a1, "id"));
    page_of(B.port, KEY_B, path, ids, sizeof(ids), next, NULL);
    assert_string_equal(ids, sid[2]);
    snprintf(path, sizeof(path), "/v1/sessions?agent_id=%s&limit=1&page=%s", s_(a1, "id"), next);
    page_of(B.port, KEY_B, path, ids, sizeof(ids), next, NULL);
    assert_string_equal(ids, sid[1]);
    assert_string_equal(next, ""); /* the archived one is not in the active index */
    json_decref(a1);
    json_decref(a2);
    assert_no_slot_errors();
}

/* /v1/sandboxes on the cluster node: the operator pool's organizations
 * (read before the gate), the sandbox quota, the record in the
 * organization's slot. */
static void sandbox_quota_on_a_cluster_node(void **state)
{
    (void)state;
    char out[4096], key[128];
    const char *sb = "{\"environment\":\"wpt\"}";
    assert_int_equal(wp_cli(out, sizeof(out), 0, "pool set wpt orgs=acme"), 0);
    json_t *e = th_api(B.port, KEY_B, "POST", "/v1/sandboxes", sb, 403);
    assert_string_equal(s_(json_object_get(json_object_get(e, "error"), "details"), "error_code"),
                        "pool_not_allowed");
    json_decref(e);
    assert_int_equal(wp_cli(out, sizeof(out), 0, "pool set wpt orgs=acme,beta"), 0);
    assert_int_equal(wp_cli(out, sizeof(out), 0, "quota set beta sandboxes=1"), 0);
    json_t *o = th_api(B.port, KEY_B, "POST", "/v1/sandboxes", sb, 200);
    snprintf(key, sizeof(key), "wp:sbx:{beta}:%s", s_(o, "id"));
    th_sh(out, sizeof(out), "redis-cli -p %d hget '%s' org; redis-cli -p %d zscore "
          "'wp:quotause:{beta}:sbx' %s", CPORT, key, CPORT, s_(o, "id"));
    assert_true(!strncmp(out, "beta\n", 5) && atof(out + 5) > 0); /* counted */
    char path[128];
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", s_(o, "id"));
    json_t *g = th_api(B.port, KEY_B, "GET", path, NULL, 200);
    assert_string_equal(s_(g, "id"), s_(o, "id"));
    json_decref(g);
    json_decref(th_api(B.port, KEY, "GET", path, NULL, 404)); /* not acme's */
    json_decref(o);
    assert_int_equal(wp_cli(out, sizeof(out), 0, "quota set beta sandboxes=0"), 0);
    assert_quota_refused(B.port, "/v1/sandboxes", sb, "sandboxes");
    assert_int_equal(wp_cli(out, sizeof(out), 0, "quota show"), 0);
    assert_non_null(strstr(out, "pool wpt: acme,beta"));
    assert_int_equal(wp_cli(out, sizeof(out), 0, "quota set beta sandboxes=none"), 0);
    assert_no_slot_errors();
}

/* A session's update and archive are its own slot's scripts; the archived
 * session's entry in the organization's active index goes after. */
static void archive_on_a_cluster_node(void **state)
{
    (void)state;
    char path[160], out[256];
    snprintf(path, sizeof(path), "/v1/sessions/%s", SID[0]);
    json_t *o = th_api(B.port, KEY, "POST", path, "{\"title\":\"renamed\"}", 200);
    assert_string_equal(s_(o, "title"), "renamed");
    json_decref(o);
    snprintf(path, sizeof(path), "/v1/sessions/%s/archive", SID[0]);
    json_decref(th_api(B.port, KEY, "POST", path, NULL, 200));
    snprintf(path, sizeof(path), "/v1/sessions/%s", SID[0]);
    o = th_api(B.port, KEY, "GET", path, NULL, 200);
    assert_string_equal(s_(o, "title"), "renamed");
    assert_true(json_is_string(json_object_get(o, "archived_at")));
    json_decref(o);
    th_sh(out, sizeof(out), "printf '%%s,%%s' \"$(redis-cli -p %d zscore 'wp:idx:{acme}:session:active' %s)\" "
          "\"$(redis-cli -p %d zscore 'wp:idx:{acme}:session' %s)\"", CPORT, SID[0], CPORT, SID[0]);
    assert_true(out[0] == ',' && atof(out + 1) > 0); /* out of the active index only */
    assert_no_slot_errors();
}

/* An archived session left in the active index (its scheduler died between
 * the archive and the index entry's removal) is dropped by the next
 * listing, not listed. */
static void listing_drops_an_archived_sessions_entry(void **state)
{
    (void)state;
    char path[160], out[256];
    json_t *l = th_api(A.port, KEY, "GET", "/v1/sessions?limit=100", NULL, 200);
    size_t before = json_array_size(json_object_get(l, "data"));
    json_decref(l);
    snprintf(path, sizeof(path), "/v1/sessions/%s/archive", SID[1]);
    json_decref(th_api(A.port, KEY, "POST", path, NULL, 200));
    th_sh(out, sizeof(out), "redis-cli -p %d zadd 'wp:idx:{acme}:session:active' 1 %s", R.port,
          SID[1]);
    l = th_api(A.port, KEY, "GET", "/v1/sessions?limit=100", NULL, 200);
    json_t *d = json_object_get(l, "data");
    assert_int_equal(json_array_size(d), before - 1);
    for (size_t i = 0; i < json_array_size(d); i++)
        assert_string_not_equal(s_(json_array_get(d, i), "id"), SID[1]);
    json_decref(l);
    th_sh(out, sizeof(out), "printf '%%s,' \"$(redis-cli -p %d zscore 'wp:idx:{acme}:session:active' %s)\"",
          R.port, SID[1]);
    assert_string_equal(out, ","); /* dropped */
}

static void delete_on_a_cluster_node(void **state)
{
    (void)state;
    char path[160], out[256];
    snprintf(path, sizeof(path), "/v1/sessions/%s", SID[2]);
    json_decref(th_api(B.port, KEY, "DELETE", path, NULL, 200));
    json_decref(th_api(B.port, KEY, "GET", path, NULL, 404));
    th_sh(out, sizeof(out), "redis-cli -p %d exists 'wp:obj:{%s}' 'wp:brain:fence:{%s}'", CPORT,
          SID[2], SID[2]);
    assert_int_equal(atoi(out), 0);
    assert_no_slot_errors();
}

/* A store of the layout before this one (a session's object untagged, the
 * global active set and fence) is moved by --migrate-keys: the session is
 * served again, waiting input stays waiting, no token can repeat. */
static void migrate_keys_moves_an_older_store(void **state)
{
    (void)state;
    char out[512], path[160];
    const char *sid = SID[0];
    snprintf(path, sizeof(path), "/v1/sessions/%s", sid);
    json_decref(th_api(A.port, KEY, "GET", path, NULL, 200));
    /* The old layout, made from a session of this one. */
    th_sh(out, sizeof(out),
          "redis-cli -p %d rename 'wp:obj:{%s}' 'wp:obj:%s' && "
          "redis-cli -p %d hdel 'wp:obj:%s' active && "
          "redis-cli -p %d zadd wp:brain:active 0 %s && "
          "redis-cli -p %d set wp:brain:fence 2000000000000000 && "
          "redis-cli -p %d del wp:layout 'wp:brain:fence:{%s}'",
          R.port, sid, sid, R.port, sid, R.port, sid, R.port, R.port, sid);
    json_decref(th_api(A.port, KEY, "GET", path, NULL, 404)); /* invisible until moved */
    th_sh(out, sizeof(out), "%s/warmpool-scheduler --redis 127.0.0.1:%d --migrate-keys; echo rc=$?",
          th_build_dir(), R.port);
    assert_non_null(strstr(out, "rc=0"));
    json_t *o = th_api(A.port, KEY, "GET", path, NULL, 200);
    assert_string_equal(s_(o, "id"), sid);
    json_decref(o);
    char shard[64];
    sched__brain_active_key(shard, sizeof(shard), sid);
    th_sh(out, sizeof(out),
          "redis-cli -p %d hget 'wp:obj:{%s}' active; redis-cli -p %d zscore '%s' %s; "
          "redis-cli -p %d get 'wp:brain:fence:{%s}'; redis-cli -p %d get wp:layout; "
          "redis-cli -p %d exists wp:brain:active wp:brain:fence 'wp:obj:%s'",
          R.port, sid, R.port, shard, sid, R.port, sid, R.port, R.port, sid);
    /* active, its shard entry, the fence not below the old global one (a
     * brain may have taken the session since: then one above), moved, the
     * old keys gone */
    long long fence = 0;
    int active = 0, layout = 0, old = -1;
    double score = -1;
    assert_int_equal(sscanf(out, "%d %lf %lld %d %d", &active, &score, &fence, &layout, &old), 5);
    assert_int_equal(active, 1);
    assert_true(score >= 0);
    assert_true(fence >= 2000000000000000LL);
    assert_int_equal(layout, 4);
    assert_int_equal(old, 0);
    /* Once more: nothing left to move, nothing changed. */
    th_sh(out, sizeof(out), "%s/warmpool-scheduler --redis 127.0.0.1:%d --migrate-keys; echo rc=$?",
          th_build_dir(), R.port);
    assert_non_null(strstr(out, "rc=0"));
    json_decref(th_api(A.port, KEY, "GET", path, NULL, 200));
}

/* Turns one org-tagged object of organization acme back into the layout
 * before: wp:obj:<id>, its index entries untagged, its agent versions. */
static const char unmove[] =
    "local id, kind, rest = ARGV[1], ARGV[2], ARGV[3]\n"
    "redis.call('RENAME', 'wp:obj:{acme}:' .. id, 'wp:obj:' .. id)\n"
    "for _, suf in ipairs({'', ':active'}) do\n"
    "  local ni = 'wp:idx:{acme}' .. rest .. ':' .. kind .. suf\n"
    "  local sc = redis.call('ZSCORE', ni, id)\n"
    "  if sc then redis.call('ZADD', 'wp:idx:acme' .. rest .. ':' .. kind .. suf, sc, id)\n"
    "    redis.call('ZREM', ni, id) end\n"
    "end\n"
    "if redis.call('EXISTS', 'wp:agentver:{acme}:' .. id) == 1 then\n"
    "  redis.call('RENAME', 'wp:agentver:{acme}:' .. id, 'wp:agentver:' .. id) end\n"
    "return 1\n";

static void unmove_obj(redisContext *rc, const char *id, const char *kind, const char *rest)
{
    redisReply *r = redisCommand(rc, "EVAL %s 0 %s %s %s", unmove, id, kind, rest);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    freeReplyObject(r);
}

/* Agents, environments, vaults, credentials and files of the layout before
 * the per-organization one are moved by --migrate-keys: served, listed, their
 * versions kept, a session made from them, the organization's sequence
 * above every old score (new objects list first). */
static void migrate_keys_moves_org_objects(void **state)
{
    (void)state;
    char path[200], out[512];
    json_t *ag = agent_v2(A.port, path, sizeof(path));
    const char *aid = s_(ag, "id");
    json_t *en = th_api(A.port, KEY, "POST", "/v1/environments",
                        "{\"name\":\"m\",\"config\":{\"type\":\"self_hosted\"}}", 200);
    json_t *v = th_api(A.port, KEY, "POST", "/v1/vaults", "{\"display_name\":\"m\"}", 200);
    const char *vid = s_(v, "id");
    char cpath[200], rest[100];
    snprintf(cpath, sizeof(cpath), "/v1/vaults/%s/credentials", vid);
    json_t *c = th_api(A.port, KEY, "POST", cpath,
                       "{\"auth\":{\"type\":\"static_bearer\",\"mcp_server_url\":\"https://m\","
                       "\"token\":\"t\"}}", 200);
    json_t *f = upload(A.port, "old.txt");
    char fpath[200];
    snprintf(fpath, sizeof(fpath), "/v1/files/%s", s_(f, "id"));
    redisContext *rc = redisConnect("127.0.0.1", R.port);
    assert_true(rc && !rc->err);
    unmove_obj(rc, aid, "agent", "");
    unmove_obj(rc, s_(f, "id"), "file", "");
    unmove_obj(rc, s_(en, "id"), "environment", "");
    unmove_obj(rc, vid, "vault", "");
    snprintf(rest, sizeof(rest), ":%s", vid);
    unmove_obj(rc, s_(c, "id"), "credential", rest);
    freeReplyObject(redisCommand(rc, "DEL wp:layout wp:seq:{acme}"));
    freeReplyObject(redisCommand(rc, "SET wp:seq 1000000"));
    json_decref(th_api(A.port, KEY, "GET", path, NULL, 404)); /* invisible until moved */
    json_decref(th_api(A.port, KEY, "GET", fpath, NULL, 404));
    for (int round = 0; round < 2; round++) { /* the second finds nothing to move */
        th_sh(out, sizeof(out),
              "%s/warmpool-scheduler --redis 127.0.0.1:%d --migrate-keys; echo rc=$?",
              th_build_dir(), R.port);
        assert_non_null(strstr(out, "rc=0"));
        json_decref(th_api(A.port, KEY, "GET", path, NULL, 200));
        snprintf(path, sizeof(path), "/v1/agents/%s/versions", aid);
        json_t *vs = th_api(A.port, KEY, "GET", path, NULL, 200);
        assert_int_equal(json_array_size(json_object_get(vs, "data")), 2);
        json_decref(vs);
        snprintf(path, sizeof(path), "/v1/agents/%s", aid);
        assert_true(list_has(A.port, "/v1/agents?limit=100", aid));
        assert_true(list_has(A.port, "/v1/environments?limit=100", s_(en, "id")));
        assert_true(list_has(A.port, "/v1/vaults?limit=100", vid));
        assert_true(list_has(A.port, cpath, s_(c, "id")));
        json_decref(th_api(A.port, KEY, "GET", fpath, NULL, 200));
        assert_true(list_has(A.port, "/v1/files", s_(f, "id")));
    }
    redisReply *r = redisCommand(rc, "EXISTS wp:obj:%s wp:obj:%s wp:idx:acme:agent "
                                 "wp:idx:acme:%s:credential wp:agentver:%s",
                                 aid, s_(c, "id"), vid, aid);
    assert_int_equal(r->integer, 0); /* the old keys are gone */
    freeReplyObject(r);
    r = redisCommand(rc, "GET wp:layout");
    assert_string_equal(r->str, "4");
    freeReplyObject(r);
    redisFree(rc);
    /* A new agent lists before the moved ones (newest first). */
    json_t *ag2 = th_api(A.port, KEY, "POST", "/v1/agents",
                         "{\"name\":\"n\",\"model\":\"claude-test\"}", 200);
    json_t *l = th_api(A.port, KEY, "GET", "/v1/agents?limit=1", NULL, 200);
    assert_string_equal(s_(json_array_get(json_object_get(l, "data"), 0), "id"), s_(ag2, "id"));
    json_decref(l);
    json_decref(ag2);
    /* A session from the moved agent and environment (lua_prep). */
    snprintf(out, sizeof(out), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", aid, s_(en, "id"));
    json_decref(th_api(A.port, KEY, "POST", "/v1/sessions", out, 200));
    json_decref(f);
    json_decref(c);
    json_decref(v);
    json_decref(en);
    json_decref(ag);
}

/* Turns acme's quota keys, a sandbox record and its session indexes back
 * into layout 3 (untagged names) and the store's layout with them. */
static const char unmove_keys[] =
    "local function mv(a, b) if redis.call('EXISTS', a) == 1 then redis.call('RENAME', a, b) end end\n"
    "mv('wp:quota:{acme}', 'wp:quota:acme')\n"
    "mv('wp:quotause:{acme}:sbx', 'wp:quotause:sbx:acme')\n"
    "mv('wp:quotause:{acme}:envs', 'wp:quotause:envs:acme')\n"
    "mv('wp:sbx:{acme}:' .. ARGV[1], 'wp:sbx:' .. ARGV[1])\n"
    "mv('wp:idx:{acme}:session', 'wp:idx:acme:session')\n"
    "mv('wp:idx:{acme}:session:active', 'wp:idx:acme:session:active')\n"
    "redis.call('SET', 'wp:layout', '3')\n"
    "redis.call('SET', 'wp:seq', tonumber(redis.call('GET', 'wp:seq:{acme}')) + 1000000)\n"
    "return 1\n";

/* A store of layout 3 (quota keys, /v1/sandboxes records and session
 * indexes untagged) is moved by --migrate-keys: the quota applies again,
 * the sandbox is found and counted, the sessions list as before and a
 * page cursor given out before the move still pages, twice over; new
 * sessions list first. */
static void migrate_keys_moves_quota_sandboxes_and_session_indexes(void **state)
{
    (void)state;
    char out[4096], path[200], ids[1024], next[64], page2[1024], first[1024];
    redisContext *rc = redisConnect("127.0.0.1", R.port);
    assert_true(rc && !rc->err);
    assert_int_equal(wp_cli(out, sizeof(out), R.port, "quota set acme sessions=100 sandboxes=5"), 0);
    freeReplyObject(redisCommand(rc, "HSET wp:sbx:{acme}:sbx_mig org acme environment wpt "
                                     "status ready session_id sbx_mig"));
    freeReplyObject(redisCommand(rc, "ZADD wp:quotause:{acme}:sbx %llu sbx_mig",
                                 (unsigned long long)wp_wall_ms()));
    page_of(A.port, KEY, "/v1/sessions?limit=1", first, sizeof(first), next, NULL);
    assert_true(next[0]);
    snprintf(path, sizeof(path), "/v1/sessions?limit=1&page=%s", next);
    page_of(A.port, KEY, path, page2, sizeof(page2), NULL, NULL);
    assert_true(page2[0]);
    redisReply *r = redisCommand(rc, "EVAL %s 0 sbx_mig", unmove_keys);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    freeReplyObject(r);
    /* Invisible until moved. */
    page_of(A.port, KEY, "/v1/sessions", ids, sizeof(ids), NULL, NULL);
    assert_string_equal(ids, "");
    json_decref(th_api(A.port, KEY, "GET", "/v1/sandboxes/sbx_mig", NULL, 404));
    for (int round = 0; round < 2; round++) { /* the second finds nothing to move */
        th_sh(out, sizeof(out),
              "%s/warmpool-scheduler --redis 127.0.0.1:%d --migrate-keys; echo rc=$?",
              th_build_dir(), R.port);
        assert_non_null(strstr(out, "rc=0"));
        page_of(A.port, KEY, "/v1/sessions?limit=1", ids, sizeof(ids), NULL, NULL);
        assert_string_equal(ids, first);
        page_of(A.port, KEY, path, ids, sizeof(ids), NULL, NULL); /* the old cursor */
        assert_string_equal(ids, page2);
        json_t *g = th_api(A.port, KEY, "GET", "/v1/sandboxes/sbx_mig", NULL, 200);
        assert_string_equal(s_(g, "status"), "ready");
        json_decref(g);
        assert_int_equal(wp_cli(out, sizeof(out), R.port, "quota show acme"), 0);
        assert_non_null(strstr(out, "sandboxes           1 used of 5"));
        assert_non_null(strstr(out, "used of 100"));
    }
    r = redisCommand(rc, "EXISTS wp:quota:acme wp:quotause:sbx:acme wp:sbx:sbx_mig "
                         "wp:idx:acme:session wp:idx:acme:session:active");
    assert_int_equal(r->integer, 0); /* the old keys are gone */
    freeReplyObject(r);
    r = redisCommand(rc, "GET wp:layout");
    assert_string_equal(r->str, "4");
    freeReplyObject(r);
    /* The organization's sequence is past every moved score: a new
     * session lists first. */
    json_t *l = th_api(A.port, KEY, "GET", "/v1/sessions?limit=1", NULL, 200);
    const char *aid = s_(json_object_get(json_array_get(json_object_get(l, "data"), 0), "agent"),
                         "id");
    snprintf(out, sizeof(out), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", aid, ENV_ID);
    json_decref(l);
    json_t *o = th_api(A.port, KEY, "POST", "/v1/sessions", out, 200);
    page_of(A.port, KEY, "/v1/sessions?limit=1", ids, sizeof(ids), NULL, NULL);
    assert_string_equal(ids, s_(o, "id"));
    json_decref(o);
    assert_int_equal(wp_cli(out, sizeof(out), R.port, "quota set acme sessions=none sandboxes=none"),
                     0);
    freeReplyObject(redisCommand(rc, "DEL wp:sbx:{acme}:sbx_mig"));
    redisFree(rc);
}

/* ==== The work queue, environment templates and key rotation on slots
 * (issue 18, part 2). Work items and their queue are their environment's
 * ({env}), a template and its policy too; wp:tpls, the nodes' list, is
 * written by a command of its own. ==== */

/* ':', '#', '+' of a heartbeat token, percent-encoded for a query. */
static void url_enc(const char *in, char *out, size_t cap)
{
    size_t k = 0;
    for (const char *p = in; *p && k + 4 < cap; p++) {
        if (*p == ':' || *p == '#' || *p == '+')
            k += (size_t)snprintf(out + k, cap - k, "%%%02X", (unsigned char)*p);
        else
            out[k++] = *p;
    }
    out[k] = '\0';
}

/* After an error the test caused on purpose. */
static void reset_errorstats(void)
{
    char out[64];
    th_sh(out, sizeof(out), "redis-cli -p %d config resetstat", CPORT);
    assert_non_null(strstr(out, "OK"));
}

/* Polls (as environment key ek) until an item of session sid other than
 * not_id comes; items of other sessions are stopped on the way. The item,
 * or NULL after 8 polls. */
static json_t *poll_for(int port, const char *ek, const char *sid, const char *not_id)
{
    char path[256];
    for (int i = 0; i < 8; i++) {
        snprintf(path, sizeof(path), "/v1/environments/%s/work/poll?block_ms=999", ENV_ID);
        json_t *w = th_api(port, ek, "GET", path, NULL, 200);
        if (json_is_null(w)) {
            json_decref(w);
            continue;
        }
        if (!strcmp(s_(json_object_get(w, "data"), "id"), sid) &&
            (!not_id || strcmp(s_(w, "id"), not_id)))
            return w;
        snprintf(path, sizeof(path), "/v1/environments/%s/work/%s/stop", ENV_ID, s_(w, "id"));
        json_decref(th_api(port, ek, "POST", path, "{\"force\":true}", 200));
        json_decref(w);
    }
    return NULL;
}

/* How many of session sid's work items are not stopped (the list, as the
 * organization's API key). */
static int live_items(int port, const char *sid)
{
    char path[160];
    int n = 0;
    snprintf(path, sizeof(path), "/v1/environments/%s/work?limit=100", ENV_ID);
    json_t *l = th_api(port, KEY, "GET", path, NULL, 200);
    json_t *d = json_object_get(l, "data");
    for (size_t i = 0; i < json_array_size(d); i++) {
        json_t *w = json_array_get(d, i);
        n += !strcmp(s_(json_object_get(w, "data"), "id"), sid) &&
             strcmp(s_(w, "state"), "stopped") != 0;
    }
    json_decref(l);
    return n;
}

/* A worker's calls (poll, ack, heartbeats, stop) and the organization's
 * (stats, list, retrieve, update) on the cluster node; then input to the
 * now dormant session queues a new item (the append in the session's slot,
 * enqueue.lua in the environment's), and more input no second one. */
static void work_queue_on_a_cluster_node(void **state)
{
    (void)state;
    char path[256], hb[128], enc[256], wid[64];
    const char *sid = SID[1]; /* not archived or deleted on the cluster node */
    snprintf(path, sizeof(path), "/v1/environments/%s/keys", ENV_ID);
    json_t *k = th_api(B.port, KEY, "POST", path, NULL, 200);
    char ek[128];
    snprintf(ek, sizeof(ek), "%s", s_(k, "key"));
    json_decref(k);
    snprintf(path, sizeof(path), "/v1/environments/%s/work/stats", ENV_ID);
    json_t *st = th_api(B.port, ek, "GET", path, NULL, 200);
    assert_true(json_integer_value(json_object_get(st, "depth")) >= 1);
    json_decref(st);
    json_t *w = poll_for(B.port, ek, sid, NULL);
    assert_non_null(w);
    assert_string_equal(s_(w, "state"), "queued");
    assert_non_null(s_(w, "secret"));
    snprintf(wid, sizeof(wid), "%s", s_(w, "id"));
    json_decref(w);
    snprintf(path, sizeof(path), "/v1/environments/%s/work/%s/ack", ENV_ID, wid);
    w = th_api(B.port, ek, "POST", path, NULL, 200);
    assert_string_equal(s_(w, "state"), "starting");
    json_decref(w);
    snprintf(path, sizeof(path),
             "/v1/environments/%s/work/%s/heartbeat?expected_last_heartbeat=NO_HEARTBEAT", ENV_ID,
             wid);
    w = th_api(B.port, ek, "POST", path, NULL, 200);
    assert_string_equal(s_(w, "state"), "active");
    assert_true(json_is_true(json_object_get(w, "lease_extended")));
    snprintf(hb, sizeof(hb), "%s", s_(w, "last_heartbeat"));
    json_decref(w);
    json_decref(th_api(B.port, ek, "POST", path, NULL, 412)); /* NO_HEARTBEAT again */
    url_enc(hb, enc, sizeof(enc));
    snprintf(path, sizeof(path), "/v1/environments/%s/work/%s/heartbeat?expected_last_heartbeat=%s",
             ENV_ID, wid, enc);
    w = th_api(B.port, ek, "POST", path, NULL, 200);
    assert_string_not_equal(s_(w, "last_heartbeat"), hb);
    json_decref(w);
    /* The organization's view: retrieve, update, list. */
    snprintf(path, sizeof(path), "/v1/environments/%s/work/%s", ENV_ID, wid);
    w = th_api(B.port, KEY, "POST", path, "{\"metadata\":{\"host\":\"w1\"}}", 200);
    assert_string_equal(s_(json_object_get(w, "metadata"), "host"), "w1");
    json_decref(w);
    w = th_api(B.port, KEY, "GET", path, NULL, 200);
    assert_string_equal(s_(w, "state"), "active");
    assert_string_equal(s_(json_object_get(w, "metadata"), "host"), "w1");
    json_decref(w);
    json_decref(th_api(B.port, "sk-beta", "GET", path, NULL, 404)); /* not another org's */
    assert_int_equal(live_items(B.port, sid), 1);
    snprintf(path, sizeof(path), "/v1/environments/%s/work/%s/stop", ENV_ID, wid);
    w = th_api(B.port, ek, "POST", path, "{\"force\":true}", 200);
    assert_string_equal(s_(w, "state"), "stopped");
    json_decref(w);
    /* An error reply without a space counts as ERR, like a slot refusal:
     * checked before, the count reset after. */
    assert_no_slot_errors();
    json_decref(th_api(B.port, ek, "POST", path, "{}", 409));
    reset_errorstats();
    assert_int_equal(live_items(B.port, sid), 0);
    /* Dormant: input queues a new item, more input no second one. */
    send_text(B.port, sid, "wake up");
    w = poll_for(B.port, ek, sid, wid);
    assert_non_null(w);
    assert_string_equal(s_(w, "state"), "queued");
    json_decref(w);
    send_text(B.port, sid, "again");
    assert_int_equal(live_items(B.port, sid), 1);
    snprintf(path, sizeof(path), "/v1/environments/%s/work/stats", ENV_ID);
    st = th_api(B.port, ek, "GET", path, NULL, 200);
    assert_int_equal(json_integer_value(json_object_get(st, "pending")), 1);
    json_decref(st);
    assert_no_slot_errors();
}

/* Copies the named keys of the plain Redis to the cluster node. */
static void copy_named(const char *const *keys)
{
    char out[256];
    for (int i = 0; keys[i]; i++) {
        th_sh(out, sizeof(out), "redis-cli -p %d MIGRATE 127.0.0.1 %d '%s' 0 5000 COPY REPLACE",
              R.port, CPORT, keys[i]);
        assert_true(strstr(out, "OK") || strstr(out, "NOKEY"));
    }
}

/* "1" when the cluster node's hash key has field, else "0". */
static int chexists(const char *key, const char *field)
{
    char out[64];
    th_sh(out, sizeof(out), "redis-cli -p %d hexists '%s' '%s'", CPORT, key, field);
    return atoi(out);
}

/* Two cloud environments published by A (creating one passes the quota
 * gate, not one slot yet) and copied to the cluster node, where one is
 * archived and the other deleted: the nodes' list loses each, then its
 * template, its policy's API fields and its quota use; another
 * organization's delete is refused and changes nothing. */
static void env_template_withdrawn_on_a_cluster_node(void **state)
{
    (void)state;
    char tpl[2][128], pol[2][128], idx[2][128], obj[2][160], ku[160], path[160], out[256];
    char id[2][64];
    for (int i = 0; i < 2; i++) {
        json_t *e = th_api(A.port, KEY, "POST", "/v1/environments",
                           "{\"name\":\"c\",\"config\":{\"type\":\"cloud\",\"networking\":"
                           "{\"type\":\"unrestricted\"}}}", 200);
        snprintf(id[i], sizeof(id[i]), "%s", s_(e, "id"));
        json_decref(e);
        snprintf(tpl[i], sizeof(tpl[i]), "wp:tpl:{%s}", id[i]);
        snprintf(pol[i], sizeof(pol[i]), "wp:env:{%s}:policy", id[i]);
        sched__key_obj(obj[i], sizeof(obj[i]), "acme", id[i]);
        sched__key_idx(idx[i], sizeof(idx[i]), "acme", "acme", &sched__kind_env, i == 1);
    }
    sched__key_quota(ku, sizeof(ku), "envs", "acme");
    const char *keys[] = {tpl[0], tpl[1], pol[0], pol[1], obj[0], obj[1], idx[0], idx[1], ku,
                          "wp:tpls", NULL};
    copy_named(keys);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(chexists("wp:tpls", id[i]), 1);
        assert_int_equal(chexists(pol[i], "api_min_hot"), 1);
    }
    snprintf(path, sizeof(path), "/v1/environments/%s", id[1]);
    json_decref(th_api(B.port, "sk-beta", "DELETE", path, NULL, 404));
    assert_int_equal(chexists("wp:tpls", id[1]), 1);
    /* archive: withdrawn, the object kept */
    snprintf(path, sizeof(path), "/v1/environments/%s/archive", id[0]);
    json_t *e = th_api(B.port, KEY, "POST", path, NULL, 200);
    assert_true(json_is_string(json_object_get(e, "archived_at")));
    json_decref(e);
    assert_int_equal(chexists("wp:tpls", id[0]), 0);
    assert_int_equal(chexists(pol[0], "api_min_hot"), 0);
    assert_int_equal(chexists(ku, id[0]), 0);
    th_sh(out, sizeof(out), "redis-cli -p %d exists '%s'", CPORT, tpl[0]);
    assert_int_equal(atoi(out), 0);
    assert_int_equal(chexists("wp:tpls", id[1]), 1); /* the other one untouched */
    /* delete: withdrawn, then gone */
    snprintf(path, sizeof(path), "/v1/environments/%s", id[1]);
    json_decref(th_api(B.port, KEY, "DELETE", path, NULL, 200));
    json_decref(th_api(B.port, KEY, "GET", path, NULL, 404));
    assert_int_equal(chexists("wp:tpls", id[1]), 0);
    th_sh(out, sizeof(out), "redis-cli -p %d exists '%s'; redis-cli -p %d exists '%s'", CPORT,
          tpl[1], CPORT, obj[1]);
    assert_string_equal(out, "0\n0\n");
    assert_no_slot_errors();
}

/* A template and its policy are one slot: publish.lua as the scheduler
 * sends it (keys declared), run on the cluster node (envtpl.c writes the
 * nodes' list after it; test_sched_envtpl covers that order end to end on
 * a plain Redis, and a cluster scheduler reaches it once creating and
 * updating environments pass the quota gate there). */
#include "lua/scheduler/envtpl.h"
static void publish_script_is_one_slot(void **state)
{
    (void)state;
    redisContext *rc = redisConnect("127.0.0.1", CPORT);
    assert_true(rc && !rc->err);
    redisReply *r = redisCommand(rc, "EVAL %s 2 wp:tpl:{env_x} wp:env:{env_x}:policy {} d acme 1 2 "
                                 "0 env_x", lua_publish);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    freeReplyObject(r);
    r = redisCommand(rc, "HGET wp:env:{env_x}:policy api_max_hot");
    assert_string_equal(r->str, "2");
    freeReplyObject(r);
    r = redisCommand(rc, "EVAL %s 2 wp:tpl:{env_x} wp:env:{env_x}:policy", lua_unpublish);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    freeReplyObject(r);
    r = redisCommand(rc, "EXISTS wp:tpl:{env_x}");
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
    /* and the node would refuse the old form (wp:tpls beside {E}); the
     * count of that refusal reset */
    assert_no_slot_errors();
    r = redisCommand(rc, "EVAL %s 2 wp:tpl:{env_x} wp:tpls", "return 1");
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(r->str, "CROSSSLOT"));
    freeReplyObject(r);
    redisFree(rc);
    reset_errorstats();
}

/* --rotate-vault-key with --redis-cluster SCANs every master of the map
 * (here the one) and re-seals there; a scheduler with the new key alone
 * then opens the credential. */
static void rotate_vault_key_on_a_cluster(void **state)
{
    (void)state;
    char path[256], out[4096], k2[600], prev[64], cid[64];
    json_t *v = th_api(B.port, KEY, "POST", "/v1/vaults", "{\"display_name\":\"rot\"}", 200);
    snprintf(path, sizeof(path), "/v1/vaults/%s/credentials", s_(v, "id"));
    json_t *c = th_api(B.port, KEY, "POST", path,
                       "{\"auth\":{\"type\":\"static_bearer\",\"mcp_server_url\":\"https://m\","
                       "\"token\":\"t\"}}", 200);
    snprintf(cid, sizeof(cid), "%s", s_(c, "id"));
    json_decref(c);
    snprintf(k2, sizeof(k2), "%s/k2", DIR_);
    snprintf(prev, sizeof(prev), "/tmp/wp-test-vault-%d.key", (int)getpid()); /* sched_testlib's */
    for (int round = 0; round < 2; round++) {
        th_sh(out, sizeof(out), "%s/warmpool-scheduler --redis-cluster 127.0.0.1:%d "
              "--vault-key-file %s --vault-key-previous-file %s --rotate-vault-key; echo rc=$?",
              th_build_dir(), CPORT, k2, prev);
        print_message("# rotate: %s", out);
        assert_non_null(strstr(out, "rc=0"));
        assert_non_null(strstr(out, round ? "\"resealed\":0" : "\"resealed\":"));
        assert_null(strstr(out, round ? "\"already_current\":0," : "\"resealed\":0"));
        assert_non_null(strstr(out, "\"failed\":0"));
    }
    char kid[32] = "";
    const char *kp = strstr(out, "\"key\":\"");
    assert_non_null(kp);
    sscanf(kp + 7, "%16[0-9a-f]", kid);
    th_sh(out, sizeof(out), "redis-cli -p %d hget 'wp:obj:{acme}:%s' sealed", CPORT, cid);
    assert_int_equal(strncmp(out, "v2:", 3), 0);
    assert_int_equal(strncmp(out + 3, kid, 16), 0);
    /* A scheduler with the new key alone reads and updates it. */
    struct th_sched s3;
    assert_int_equal(th_sched_start(&s3, CPORT, "--vault-key-file", k2, NULL), 0);
    snprintf(path, sizeof(path), "/v1/vaults/%s/credentials/%s", s_(v, "id"), cid);
    json_decref(th_api(s3.port, KEY, "POST", path,
                       "{\"auth\":{\"type\":\"static_bearer\",\"token\":\"t2\"}}", 200));
    assert_int_equal(th_sched_stop(&s3), 0);
    json_decref(v);
    assert_no_slot_errors();
}

/* Turns a work item of the plain Redis back into the layout before
 * (wp:obj:<id>, indexes wp:idx:acme:<env>:work[:active], the session's
 * latest item as its work_id field). */
static const char unmove_work[] =
    "local id, env, sid = ARGV[1], ARGV[2], ARGV[3]\n"
    "local wq = 'wp:wq:{' .. env .. '}:'\n"
    "redis.call('RENAME', wq .. 'item:' .. id, 'wp:obj:' .. id)\n"
    "redis.call('HDEL', 'wp:obj:' .. id, 'session')\n"
    "for _, suf in ipairs({'', ':active'}) do\n"
    "  local sc = redis.call('ZSCORE', wq .. 'acme:work' .. suf, id)\n"
    "  if sc then redis.call('ZADD', 'wp:idx:acme:' .. env .. ':work' .. suf, sc, id)\n"
    "    redis.call('ZREM', wq .. 'acme:work' .. suf, id) end\n"
    "end\n"
    "redis.call('HSET', 'wp:obj:{' .. sid .. '}', 'work_id', id)\n"
    "redis.call('HDEL', wq .. 'latest', sid)\n"
    "redis.call('DEL', wq .. 'seq', 'wp:layout')\n"
    "redis.call('SET', 'wp:seq', 3000000)\n"
    "return 1\n";

/* A work item of the layout before (layout 3) is moved by --migrate-keys,
 * twice over: served, listed, polled, still its session's latest (input
 * queues no second one), the environment's sequence above the old one. */
static void migrate_keys_moves_work_items(void **state)
{
    (void)state;
    char body[256], path[256], out[512], wid[64] = "", sid[64];
    json_t *ag = th_api(A.port, KEY, "POST", "/v1/agents",
                        "{\"name\":\"w\",\"model\":\"claude-test\"}", 200);
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", s_(ag, "id"),
             ENV_ID);
    json_t *s = th_api(A.port, KEY, "POST", "/v1/sessions", body, 200);
    snprintf(sid, sizeof(sid), "%s", s_(s, "id"));
    json_decref(s);
    json_decref(ag);
    snprintf(path, sizeof(path), "/v1/environments/%s/work?limit=100", ENV_ID);
    json_t *l = th_api(A.port, KEY, "GET", path, NULL, 200);
    json_t *d = json_object_get(l, "data");
    for (size_t i = 0; i < json_array_size(d); i++)
        if (!strcmp(s_(json_object_get(json_array_get(d, i), "data"), "id"), sid))
            snprintf(wid, sizeof(wid), "%s", s_(json_array_get(d, i), "id"));
    json_decref(l);
    assert_true(wid[0]);
    redisContext *rc = redisConnect("127.0.0.1", R.port);
    assert_true(rc && !rc->err);
    redisReply *r = redisCommand(rc, "EVAL %s 0 %s %s %s", unmove_work, wid, ENV_ID, sid);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    freeReplyObject(r);
    snprintf(path, sizeof(path), "/v1/environments/%s/work/%s", ENV_ID, wid);
    json_decref(th_api(A.port, KEY, "GET", path, NULL, 404)); /* invisible until moved */
    for (int round = 0; round < 2; round++) {
        th_sh(out, sizeof(out),
              "%s/warmpool-scheduler --redis 127.0.0.1:%d --migrate-keys; echo rc=$?",
              th_build_dir(), R.port);
        assert_non_null(strstr(out, "rc=0"));
        json_t *w = th_api(A.port, KEY, "GET", path, NULL, 200);
        assert_string_equal(s_(w, "state"), "queued");
        json_decref(w);
        assert_int_equal(live_items(A.port, sid), 1);
        r = redisCommand(rc, "HGET wp:wq:{%s}:latest %s", ENV_ID, sid);
        assert_string_equal(r->str, wid);
        freeReplyObject(r);
    }
    r = redisCommand(rc, "EXISTS wp:obj:%s wp:idx:acme:%s:work", wid, ENV_ID);
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
    r = redisCommand(rc, "GET wp:wq:{%s}:seq", ENV_ID);
    assert_true(atoll(r->str) >= 3000000);
    freeReplyObject(r);
    r = redisCommand(rc, "GET wp:layout");
    assert_string_equal(r->str, "4");
    freeReplyObject(r);
    redisFree(rc);
    /* Still the session's live item: input queues none; the queue serves it. */
    send_text(A.port, sid, "hello");
    assert_int_equal(live_items(A.port, sid), 1);
    snprintf(path, sizeof(path), "/v1/environments/%s/keys", ENV_ID);
    json_t *k = th_api(A.port, KEY, "POST", path, NULL, 200);
    json_t *w = poll_for(A.port, s_(k, "key"), sid, NULL);
    assert_non_null(w);
    assert_string_equal(s_(w, "id"), wid);
    json_decref(w);
    json_decref(k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(session_keys_share_a_slot),
        cmocka_unit_test(turn_on_a_cluster_node),
        cmocka_unit_test(two_streams_on_a_cluster_node),
        cmocka_unit_test(takeover_on_a_cluster_node),
        cmocka_unit_test(archive_on_a_cluster_node),
        cmocka_unit_test(delete_on_a_cluster_node),
        cmocka_unit_test(objects_on_a_cluster_node),
        cmocka_unit_test(sessions_created_and_listed_on_a_cluster_node),
        cmocka_unit_test(sandbox_quota_on_a_cluster_node),
        cmocka_unit_test(migrate_keys_moves_an_older_store),
        cmocka_unit_test(migrate_keys_moves_org_objects),
        cmocka_unit_test(migrate_keys_moves_quota_sandboxes_and_session_indexes),
        cmocka_unit_test(listing_drops_an_archived_sessions_entry),
        /* issue 18 part 2: work queue, templates, key rotation */
        cmocka_unit_test(work_queue_on_a_cluster_node),
        cmocka_unit_test(env_template_withdrawn_on_a_cluster_node),
        cmocka_unit_test(publish_script_is_one_slot),
        cmocka_unit_test(rotate_vault_key_on_a_cluster),
        cmocka_unit_test(migrate_keys_moves_work_items),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
