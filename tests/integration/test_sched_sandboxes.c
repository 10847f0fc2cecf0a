/* test_sched_sandboxes.c - /v1/sandboxes end to end: a real Redis, a real
 * node with hands sandboxes, two scheduler processes, plain HTTP. */
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/sched_testlib.h"
#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "base/timeutil.h"
#include "base/err.h"
#include "base/fs.h"

#define KEY "sk-acme"

static struct th_redis R;
static struct th_sched A, B;
static char *DIR_;
static pid_t NODE;

static int group_setup(void **state)
{
    char wp[1024], tmpl[1024], json[2048], env[1200], log[1200];
    struct wp_err err;
    (void)state;

    if (th_redis_start(&R, 0) < 0)
        return -1;
    DIR_ = th_tmpdir("sbx");
    if (th_hands_copy(DIR_, wp, sizeof(wp)) < 0)
        return -1;
    snprintf(tmpl, sizeof(tmpl), "%s/py.json", DIR_);
    snprintf(json, sizeof(json),
             "{\"name\":\"py\",\"rootfs\":\"host\",\"workdir\":\"/work\","
             "\"init_sets_hostname\":true,\"init\":[\"/.wp/warmpool-hands\",\"--socket\",\"/run/warmpool/hands.sock\","
             "\"--workdir\",\"/work\",\"--ready-file\",\"/run/warmpool/hands.ready\"],"
             "\"ready_file\":\"/run/warmpool/hands.ready\","
             "\"binds\":[{\"source\":\"%s\",\"target\":\"/.wp\"}],"
             "\"limits\":{\"memory_mb\":64,\"pids\":32}}",
             wp);
    if (wp_write_file(tmpl, json, strlen(json), 0644, &err) < 0)
        return -1;
    snprintf(env, sizeof(env), "%s:2:2", tmpl);
    snprintf(log, sizeof(log), "%s/node.log", DIR_);
    char state_dir[1100];
    snprintf(state_dir, sizeof(state_dir), "%s/state", DIR_);
    NODE = th_node_start("n1", R.port, state_dir, log, "--env", env, "--no-api-envs", NULL);
    if (NODE < 0)
        return -1;
    /* Pipelined links (off by default until every node has them): the
     * execute-behind-the-attach path is tested here. */
    setenv("WARMPOOL_RELAY_PIPE", "on", 1);
    if (th_sched_start(&A, R.port, NULL) < 0 || th_sched_start(&B, R.port, NULL) < 0)
        return -1;
    /* Wait for the node's hot tier. */
    return th_wait_hot(R.port, "py", 2, 30) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    th_sched_stop(&A);
    th_sched_stop(&B);
    if (NODE > 0) {
        kill(NODE, SIGCONT); /* in case a test stopped it and failed */
        kill(NODE, SIGTERM);
        waitpid(NODE, NULL, 0);
    }
    th_redis_stop(&R);
    th_rmtree(DIR_);
    free(DIR_);
    return 0;
}

static json_t *call(struct th_sched *s, const char *method, const char *path, const char *body,
                    int want_status)
{
    return th_api(s->port, KEY, method, path, body, want_status);
}

static void create_answers_at_once_and_execute_waits(void **state)
{
    char path[128];
    (void)state;

    json_t *sb = call(&A, "POST", "/v1/sandboxes",
                      "{\"environment\":\"py\",\"env\":{\"GREETING\":\"hi\"},\"hostname\":\"mybox\"}",
                      200);
    const char *id = json_string_value(json_object_get(sb, "id"));
    assert_non_null(id);
    /* The handle comes back before the sandbox is attached. */
    assert_string_equal(json_string_value(json_object_get(sb, "status")), "provisioning");
    /* An execute sent at once runs when it is. */
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute", id);
    json_t *res = call(&A, "POST", path,
                       "{\"name\":\"bash\",\"input\":{\"command\":\"echo $GREETING $(hostname); pwd\"}}",
                       200);
    assert_false(json_is_true(json_object_get(res, "is_error")));
    json_t *c0 = json_array_get(json_object_get(res, "content"), 0);
    assert_string_equal(json_string_value(json_object_get(c0, "text")), "hi mybox\n/work");
    json_decref(res);
    /* Its state, tier and timings. */
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", id);
    json_t *got = call(&A, "GET", path, NULL, 200);
    assert_string_equal(json_string_value(json_object_get(got, "status")), "ready");
    assert_string_equal(json_string_value(json_object_get(got, "tier")), "hot");
    assert_true(json_real_value(json_object_get(json_object_get(got, "timings"), "attached_ms")) > 0);
    json_decref(got);
    /* Timings print as the numbers they are (0.582, not 0.58199999999999996). */
    struct th_resp raw;
    assert_int_equal(th_http(A.port, "GET", path, KEY, NULL, &raw), 0);
    char *ms = strstr(raw.body, "\"claim_ms\":");
    assert_non_null(ms);
    assert_true(strcspn(ms + 11, ",}") <= 12);
    th_resp_free(&raw);
    /* Another scheduler process executes on it through the node's relay. */
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute", id);
    res = call(&B, "POST", path, "{\"name\":\"bash\",\"input\":{\"command\":\"echo $GREETING\"}}", 200);
    c0 = json_array_get(json_object_get(res, "content"), 0);
    assert_string_equal(json_string_value(json_object_get(c0, "text")), "hi");
    json_decref(res);
    /* Another organization cannot see it. */
    struct th_resp r;
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", id);
    assert_int_equal(th_http(A.port, "GET", path, "sk-beta", NULL, &r), 0);
    assert_int_equal(r.status, 404);
    th_resp_free(&r);
    /* Release: the sandbox is destroyed and the handle gone. */
    char *sandbox_dir = NULL;
    (void)sandbox_dir;
    json_decref(call(&A, "DELETE", path, NULL, 200));
    assert_int_equal(th_http(A.port, "GET", path, KEY, NULL, &r), 0);
    assert_int_equal(r.status, 404);
    th_resp_free(&r);
    json_decref(sb);
}

/* Issue 20: an execute sent while the sandbox attaches goes right behind
 * the attach. An attach that fails (a workdir that cannot be made) must
 * not let it run without the settings: the execute answers 502 with the
 * attach's reason, as one that waited for the attach would (which of the
 * three paths it takes depends on timing; each must answer so). */
static void execute_behind_a_failed_attach_is_not_run(void **state)
{
    char path[128];
    (void)state;

    json_t *sb = call(&A, "POST", "/v1/sandboxes",
                      "{\"environment\":\"py\",\"workdir\":\"/proc/no/such/dir\"}", 200);
    const char *id = json_string_value(json_object_get(sb, "id"));
    assert_non_null(id);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute", id);
    struct th_resp r;
    assert_int_equal(th_http(A.port, "POST", path, KEY,
                             "{\"name\":\"bash\",\"input\":{\"command\":\"echo ran\"}}", &r), 0);
    /* "could not be provisioned" when it waited or went behind the attach,
     * "is not available" when the attach had failed before it came. */
    if (r.status != 502 || !strstr(r.body, "sandbox_failed") || !strstr(r.body, "attach: workdir") ||
        strstr(r.body, "ran\\n"))
        fail_msg("want a 502 naming the attach's workdir failure, got %d %s", r.status, r.body);
    th_resp_free(&r);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", id);
    json_t *got = call(&A, "GET", path, NULL, 200);
    assert_string_equal(json_string_value(json_object_get(got, "status")), "failed");
    json_decref(got);
    json_decref(call(&A, "DELETE", path, NULL, 200));
    json_decref(sb);
}

static void two_creates_never_share_and_release_destroys(void **state)
{
    char path[128], out[256];
    (void)state;

    json_t *a = call(&A, "POST", "/v1/sandboxes", "{\"environment\":\"py\"}", 200);
    json_t *b = call(&B, "POST", "/v1/sandboxes", "{\"environment\":\"py\"}", 200);
    const char *ida = json_string_value(json_object_get(a, "id")),
               *idb = json_string_value(json_object_get(b, "id"));
    /* Each writes a file; neither sees the other's. */
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute", ida);
    json_decref(call(&A, "POST", path, "{\"name\":\"write\",\"input\":{\"file_path\":\"/work/mine\",\"content\":\"a\"}}", 200));
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute", idb);
    json_t *res = call(&B, "POST", path, "{\"name\":\"bash\",\"input\":{\"command\":\"ls /work; cat /proc/1/comm\"}}", 200);
    json_t *c0 = json_array_get(json_object_get(res, "content"), 0);
    assert_string_equal(json_string_value(json_object_get(c0, "text")), "warmpool-hands");
    json_decref(res);
    /* Different sandboxes underneath. */
    th_sh(out, sizeof(out), "redis-cli -p %d hget 'wp:sbx:{acme}:%s' sandbox", R.port, ida);
    char sa[128];
    snprintf(sa, sizeof(sa), "%s", out);
    th_sh(out, sizeof(out), "redis-cli -p %d hget 'wp:sbx:{acme}:%s' sandbox", R.port, idb);
    assert_string_not_equal(sa, out);
    /* Release destroys it on the node. */
    sa[strcspn(sa, "\n")] = '\0';
    char dir[1200];
    snprintf(dir, sizeof(dir), "%s/state/sandboxes/%s", DIR_, sa);
    assert_int_equal(access(dir, F_OK), 0);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", ida);
    json_decref(call(&A, "DELETE", path, NULL, 200));
    bool gone = false;
    for (int i = 0; i < 100 && !gone; i++, th_msleep(20))
        gone = access(dir, F_OK) < 0;
    assert_true(gone);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", idb);
    json_decref(call(&B, "DELETE", path, NULL, 200));
    json_decref(a);
    json_decref(b);
}

/* GET /metrics with an optional bearer token; the body (malloc'ed) or
 * NULL, status in *status. */
static char *get_metrics(int port, const char *token, int *status)
{
    char req[512], *out = malloc(1 << 20);
    int fd = th_connect(port);
    assert_true(fd >= 0);
    int n = snprintf(req, sizeof(req),
                     "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n%s%s%s\r\n",
                     token ? "authorization: Bearer " : "", token ? token : "", token ? "\r\n" : "");
    assert_int_equal(th_send_all(fd, req, (size_t)n), 0);
    int got = th_read_all(fd, out, (1 << 20) - 1, 5000);
    close(fd);
    assert_true(got > 12);
    out[got] = '\0';
    *status = atoi(out + 9);
    return out;
}

static double metric(const char *text, const char *series)
{
    const char *p = strstr(text, series);
    size_t l = strlen(series);
    /* A sample line, not the family's # HELP line (whose text follows a space too). */
    while (p && (p[l] != ' ' || (p != text && p[-1] != '\n')))
        p = strstr(p + 1, series);
    return p ? atof(p + l + 1) : -1;
}

/* First in the group: the claim below is this scheduler's only one. */
static void metrics_show_the_claim_and_the_pool(void **state)
{
    struct th_sched C;
    struct th_resp r;
    char path[128];
    int status;
    (void)state;

    assert_int_equal(th_sched_start(&C, R.port, "--metrics-token", "scrape-me", NULL), 0);
    assert_int_equal(th_http(C.port, "POST", "/v1/sandboxes", KEY, "{\"environment\":\"py\"}", &r), 0);
    assert_int_equal(r.status, 200);
    json_t *sb = json_loads(r.body, 0, NULL);
    th_resp_free(&r);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute", json_string_value(json_object_get(sb, "id")));
    assert_int_equal(th_http(C.port, "POST", path, KEY, "{\"name\":\"bash\",\"input\":{\"command\":\"true\"}}", &r), 0);
    assert_int_equal(r.status, 200);
    th_resp_free(&r);
    /* No token, or a wrong one: refused. API keys are not metrics tokens. */
    free(get_metrics(C.port, NULL, &status));
    assert_int_equal(status, 401);
    free(get_metrics(C.port, KEY, &status));
    assert_int_equal(status, 401);
    /* The node publishes its restore histograms with its heartbeat. */
    char *m = NULL;
    for (int i = 0; i < 100; i++) {
        free(m);
        m = get_metrics(C.port, "scrape-me", &status);
        assert_int_equal(status, 200);
        if (metric(m, "warmpool_restore_seconds_count{tier=\"hot\",node=\"n1\"}") >= 2)
            break;
        th_msleep(100);
    }
    assert_non_null(strstr(m, "content-type: text/plain; version=0.0.4"));
    assert_true(metric(m, "warmpool_claim_seconds_count{tier=\"hot\"}") == 1);
    assert_true(metric(m, "warmpool_claim_seconds_bucket{tier=\"hot\",le=\"+Inf\"}") == 1);
    assert_true(metric(m, "warmpool_sandbox_attached_seconds_count{tier=\"hot\"}") == 1);
    assert_true(metric(m, "warmpool_tool_calls_total{tool=\"bash\"}") == 1);
    assert_true(metric(m, "warmpool_tool_seconds_count{tool=\"bash\"}") == 1);
    assert_true(metric(m, "warmpool_node_up{node=\"n1\"}") == 1);
    assert_true(metric(m, "warmpool_pool_sandboxes{env=\"py\",node=\"n1\",state=\"leased\"}") >= 1);
    assert_true(metric(m, "warmpool_pool_hot{env=\"py\"}") >= 0);
    assert_true(metric(m, "warmpool_pool_min_hot{env=\"py\",node=\"n1\"}") == 2);
    assert_true(metric(m, "warmpool_pool_max_hot{env=\"py\",node=\"n1\"}") == 2);
    assert_true(metric(m, "warmpool_pool_claims_total{env=\"py\",tier=\"hot\"}") >= 1);
    assert_true(metric(m, "warmpool_pool_tier_enabled{env=\"py\",tier=\"hot\"}") == 1);
    assert_true(metric(m, "warmpool_restore_seconds_count{tier=\"hot\",node=\"n1\"}") >= 2);
    assert_true(metric(m, "warmpool_metrics_pool_scrape_ok") == 1);
    free(m);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", json_string_value(json_object_get(sb, "id")));
    json_decref(call(&C, "DELETE", path, NULL, 200));
    json_decref(sb);
    /* The other schedulers serve /metrics without a token. */
    m = get_metrics(A.port, NULL, &status);
    assert_int_equal(status, 200);
    assert_non_null(strstr(m, "# TYPE warmpool_ttft_seconds histogram"));
    free(m);
    assert_int_equal(th_sched_stop(&C), 0);
}

static void bad_input_is_refused(void **state)
{
    (void)state;
    json_decref(call(&A, "POST", "/v1/sandboxes", "{}", 400));
    json_decref(call(&A, "POST", "/v1/sandboxes", "{\"environment\":\"../x\"}", 400));
    json_decref(call(&A, "POST", "/v1/sandboxes", "{\"environment\":\"py\",\"colour\":1}", 400));
    json_decref(call(&A, "POST", "/v1/sandboxes", "{\"environment\":\"py\",\"env\":{\"A\":1}}", 400));
    json_decref(call(&A, "POST", "/v1/sandboxes", "{\"environment\":\"py\",\"workdir\":\"rel\"}", 400));
    json_decref(call(&A, "GET", "/v1/sandboxes/sbx_nope", NULL, 404));
    json_decref(call(&A, "POST", "/v1/sandboxes/sbx_nope/execute",
                     "{\"name\":\"bash\",\"input\":{\"command\":\"true\"}}", 404));
    json_decref(call(&A, "POST", "/v1/sandboxes/sbx_nope/execute", "{\"name\":\"bash\"}", 400));
    /* An environment no node serves: the sandbox fails, clearly. */
    json_t *sb = call(&A, "POST", "/v1/sandboxes", "{\"environment\":\"nowhere\"}", 200);
    char path[128];
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute",
             json_string_value(json_object_get(sb, "id")));
    json_t *e = call(&A, "POST", path, "{\"name\":\"bash\",\"input\":{\"command\":\"true\"}}", 502);
    const char *msg = json_string_value(json_object_get(json_object_get(e, "error"), "message"));
    assert_non_null(strstr(msg, "no node serves environment nowhere, and none will"));
    json_decref(e);
    json_decref(sb);
}

/* A field of the scheduler's record of sandbox sbx_id, newline cut. */
static void record_field(const char *sbx_id, const char *name, char *out, size_t cap)
{
    char got[256];
    th_sh(got, sizeof(got), "redis-cli -p %d hget 'wp:sbx:{acme}:%s' %s", R.port, sbx_id, name);
    snprintf(out, cap, "%.*s", (int)strcspn(got, "\n"), got);
}

static long long node_lease_until(const char *sbx_id)
{
    char out[128], sandbox[128];
    record_field(sbx_id, "sandbox", sandbox, sizeof(sandbox));
    th_sh(out, sizeof(out), "redis-cli -p %d hget 'wp:env:{py}:sb:%s' lease_until", R.port, sandbox);
    return atoll(out);
}

/* Established TCP connections of process pid to the relay of sandbox sbx_id. */
static int relay_conns(int pid, const char *sbx_id)
{
    char relay[128], out[64];
    record_field(sbx_id, "relay", relay, sizeof(relay));
    const char *colon = strrchr(relay, ':');
    assert_non_null(colon);
    th_sh(out, sizeof(out),
          "ss -tnpH state established '( dport = :%s )' | grep -c 'pid=%d,' || true", colon + 1,
          pid);
    return atoi(out);
}

/* GET path until the sandbox is no longer ready (10 s at most); the last
 * answer, caller-owned. */
static json_t *until_not_ready(struct th_sched *s, const char *path)
{
    json_t *got = NULL;
    for (int i = 0; i < 100; i++, th_msleep(100)) {
        json_decref(got);
        got = call(s, "GET", path, NULL, 200);
        if (strcmp(json_string_value(json_object_get(got, "status")), "ready") != 0)
            break;
    }
    return got;
}

/* A harness holds a sandbox as long as it uses it: the lease is renewed
 * (here every second of a 3 s lease), the sandbox is released once idle
 * (6 s here), and GET tells the truth about a sandbox its node destroyed. */
static void lease_renewed_while_used_released_when_idle(void **state)
{
    struct th_sched C;
    char path[160], out[256];
    (void)state;

    assert_int_equal(th_sched_start(&C, R.port, "--sandbox-lease", "3", "--sandbox-idle-timeout",
                                    "6", NULL), 0);
    json_t *sb = call(&C, "POST", "/v1/sandboxes", "{\"environment\":\"py\"}", 200);
    const char *id = json_string_value(json_object_get(sb, "id"));
    assert_int_equal(json_integer_value(json_object_get(sb, "idle_timeout_s")), 6);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute", id);
    json_decref(call(&C, "POST", path, "{\"name\":\"bash\",\"input\":{\"command\":\"true\"}}", 200));
    th_msleep(1500); /* the first renewal: from the claim's lease to ours */
    long long u0 = node_lease_until(id);
    /* In use for two lease periods and more: renewed all along. */
    for (int i = 0; i < 3; i++) {
        th_msleep(2000);
        json_decref(call(&C, "POST", path, "{\"name\":\"bash\",\"input\":{\"command\":\"true\"}}", 200));
    }
    long long u1 = node_lease_until(id);
    assert_true(u1 > u0);
    /* The renewal keeps it close to one lease ahead, no further. */
    th_sh(out, sizeof(out), "date +%%s%%3N");
    assert_true(u1 - atoll(out) <= 3000 + 500);
    /* Then idle: released, and said so. */
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", id);
    json_t *got = until_not_ready(&C, path);
    const char *st = json_string_value(json_object_get(got, "status"));
    assert_string_equal(st, "expired");
    assert_non_null(strstr(json_string_value(json_object_get(got, "error")), "idle timeout is 6 s"));
    assert_non_null(json_object_get(got, "last_used_at"));
    json_decref(got);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute", id);
    struct th_resp r;
    assert_int_equal(th_http(C.port, "POST", path, KEY,
                             "{\"name\":\"bash\",\"input\":{\"command\":\"true\"}}", &r), 0);
    assert_int_equal(r.status, 502);
    assert_non_null(strstr(r.body, "expired"));
    th_resp_free(&r);
    json_decref(sb);
    assert_int_equal(th_sched_stop(&C), 0);

    /* Its node destroys a sandbox under a ready record: GET says so. */
    sb = call(&A, "POST", "/v1/sandboxes", "{\"environment\":\"py\"}", 200);
    id = json_string_value(json_object_get(sb, "id"));
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute", id);
    json_decref(call(&A, "POST", path, "{\"name\":\"bash\",\"input\":{\"command\":\"true\"}}", 200));
    th_sh(out, sizeof(out), "redis-cli -p %d hget 'wp:sbx:{acme}:%s' sandbox", R.port, id);
    out[strcspn(out, "\n")] = '\0';
    char cmd[1400];
    snprintf(cmd, sizeof(cmd), "%s/warmpool-snap --state-dir %s/state destroy %s >/dev/null",
             th_build_dir(), DIR_, out);
    assert_int_equal(system(cmd), 0);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", id);
    got = until_not_ready(&A, path);
    st = json_string_value(json_object_get(got, "status"));
    assert_string_equal(st, "failed");
    assert_non_null(strstr(json_string_value(json_object_get(got, "error")), "the sandbox is gone"));
    json_decref(got);
    json_decref(call(&A, "DELETE", path, NULL, 200));
    json_decref(sb);
}

/* A lease taken away from the process that holds it (another holder's
 * token on the node, as after the pool gave the sandbox to someone else):
 * the sandbox fails, says why, and its holder closes its relay connection
 * instead of keeping a link to a sandbox it no longer owns. The node is
 * stopped meanwhile, so neither its reconcile (which writes its own view
 * of the token back) nor its relay closes anything for the holder. */
static void lost_lease_fails_and_closes_the_relay_link(void **state)
{
    struct th_sched C;
    char path[160], sandbox[128], out[256];
    (void)state;

    assert_int_equal(th_sched_start(&C, R.port, "--sandbox-lease", "3", NULL), 0);
    json_t *sb = call(&C, "POST", "/v1/sandboxes", "{\"environment\":\"py\"}", 200);
    const char *id = json_string_value(json_object_get(sb, "id"));
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute", id);
    json_decref(call(&C, "POST", path, "{\"name\":\"bash\",\"input\":{\"command\":\"true\"}}", 200));
    assert_true(relay_conns(C.pid, id) >= 1);

    record_field(id, "sandbox", sandbox, sizeof(sandbox));
    kill(NODE, SIGSTOP);
    int rc = th_sh(out, sizeof(out), "redis-cli -p %d hset 'wp:env:{py}:sb:%s' token 4242",
                   R.port, sandbox);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", id);
    json_t *got = until_not_ready(&C, path);
    int n = -1;
    for (int i = 0; i < 50 && (n = relay_conns(C.pid, id)) != 0; i++)
        th_msleep(100);
    kill(NODE, SIGCONT);
    assert_int_equal(rc, 0);
    assert_string_equal(json_string_value(json_object_get(got, "status")), "failed");
    assert_non_null(strstr(json_string_value(json_object_get(got, "error")), "lease was lost"));
    json_decref(got);
    assert_int_equal(n, 0);

    json_decref(call(&C, "DELETE", path, NULL, 200));
    json_decref(sb);
    assert_int_equal(th_sched_stop(&C), 0);
}

/* Scrapes share one pool scan per --metrics-cache (ten Prometheus servers
 * cost Redis one scan, not ten), and /metrics beyond loopback needs a
 * token. */
static void metrics_scans_shared_and_token_beyond_loopback(void **state)
{
    struct th_sched C, D;
    int status;
    (void)state;

    assert_int_equal(th_sched_start(&C, R.port, "--metrics-cache", "3", NULL), 0);
    char *m = NULL;
    for (int i = 0; i < 50; i++, th_msleep(50)) { /* until its Redis connection is up */
        free(m);
        m = get_metrics(C.port, NULL, &status);
        assert_int_equal(status, 200);
        if (metric(m, "warmpool_metrics_pool_scrape_ok") == 1)
            break;
    }
    double first = metric(m, "warmpool_metrics_pool_scans_total");
    free(m);
    assert_true(first == 1);
    uint64_t t0 = wp_now_ns();
    for (int i = 0; i < 20; i++) {
        m = get_metrics(C.port, NULL, &status);
        assert_int_equal(status, 200);
        assert_true(metric(m, "warmpool_metrics_pool_scrape_ok") == 1);
        free(m);
    }
    m = get_metrics(C.port, NULL, &status);
    double after = metric(m, "warmpool_metrics_pool_scans_total");
    free(m);
    if ((double)(wp_now_ns() - t0) / 1e9 < 3)
        assert_true(after == 1); /* all within the cache's life: no new scan */
    th_msleep(3100);
    m = get_metrics(C.port, NULL, &status);
    assert_true(metric(m, "warmpool_metrics_pool_scans_total") == after + 1);
    free(m);
    assert_int_equal(th_sched_stop(&C), 0);

    /* Beyond loopback: refused without a token, served with one. */
    assert_int_equal(th_sched_start(&D, R.port, "--listen", "0.0.0.0:0", NULL), -1);
    assert_int_equal(th_sched_start(&D, R.port, "--listen", "0.0.0.0:0", "--metrics-token", "tok",
                                    NULL), 0);
    free(get_metrics(D.port, NULL, &status));
    assert_int_equal(status, 401);
    assert_int_equal(th_sched_stop(&D), 0);
}

/* Overload is explicit (issue 20): a node with one restore slot and a
 * 1 ms bound refuses the claims of a burst it cannot serve at once; their
 * executes answer 529 overloaded_error with retry-after (the SDK retries
 * those), /metrics counts them, and the retried execute claims anew and
 * runs. */
static void overloaded_claims_answer_529_and_a_retry_runs(void **state)
{
    char wp[1024], tmpl[1200], json[2048], env[1300], log[1200], state_dir[1200], path[160];
    char out[256], ra[32];
    struct wp_err err;
    struct th_resp r;
    json_t *sb[5];
    int over = -1, n529 = 0, status;
    (void)state;

    assert_int_equal(th_hands_copy(DIR_, wp, sizeof(wp)), 0);
    snprintf(tmpl, sizeof(tmpl), "%s/busy.json", DIR_);
    snprintf(json, sizeof(json),
             "{\"name\":\"busy\",\"rootfs\":\"host\",\"workdir\":\"/work\","
             "\"init\":[\"/.wp/warmpool-hands\",\"--socket\",\"/run/warmpool/hands.sock\","
             "\"--workdir\",\"/work\",\"--ready-file\",\"/run/warmpool/hands.ready\"],"
             "\"ready_file\":\"/run/warmpool/hands.ready\","
             "\"binds\":[{\"source\":\"%s\",\"target\":\"/.wp\"}],"
             "\"limits\":{\"memory_mb\":64,\"pids\":32}}",
             wp);
    assert_int_equal(wp_write_file(tmpl, json, strlen(json), 0644, &err), 0);
    snprintf(env, sizeof(env), "%s:1:1", tmpl);
    snprintf(log, sizeof(log), "%s/node-busy.log", DIR_);
    snprintf(state_dir, sizeof(state_dir), "%s/state-busy", DIR_);
    pid_t node = th_node_start("n-busy", R.port, state_dir, log, "--env", env, "--no-api-envs",
                               "--restore-slots", "1", "--claim-wait-max", "1", NULL);
    assert_true(node > 0);
    assert_true(th_wait_hot(R.port, "busy", 1, 60)); /* one refill: its time is known */
    th_sh(out, sizeof(out), "redis-cli -p %d hset 'wp:env:{busy}:policy' tiers warm,cold", R.port);
    /* Five at once: the node restores one, the others would wait. */
    for (int i = 0; i < 5; i++)
        sb[i] = call(&A, "POST", "/v1/sandboxes", "{\"environment\":\"busy\"}", 200);
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute",
                 json_string_value(json_object_get(sb[i], "id")));
        assert_int_equal(th_http(A.port, "POST", path, KEY,
                                 "{\"name\":\"bash\",\"input\":{\"command\":\"echo hi\"}}", &r), 0);
        if (r.status == 529) {
            json_t *o = json_loads(r.body, 0, NULL);
            json_t *e = json_object_get(o, "error");
            assert_string_equal(json_string_value(json_object_get(e, "type")), "overloaded_error");
            assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "is overloaded"));
            assert_int_equal(th_resp_header(&r, "retry-after", ra, sizeof(ra)), 0);
            assert_true(atoi(ra) >= 1);
            json_decref(o);
            n529++;
            over = i;
        } else if (r.status != 200) {
            fail_msg("execute %d: %d %s", i, r.status, r.body);
        }
        th_resp_free(&r);
    }
    assert_true(n529 >= 1);
    assert_true(n529 <= 4);
    /* What a dashboard sees. */
    char *m = get_metrics(A.port, NULL, &status);
    for (int i = 0; i < 50 && metric(m, "warmpool_node_claims_shed_total{env=\"busy\",node=\"n-busy\"}") < n529; i++) {
        free(m);
        th_msleep(100);
        m = get_metrics(A.port, NULL, &status);
    }
    assert_true(metric(m, "warmpool_node_claims_shed_total{env=\"busy\",node=\"n-busy\"}") == n529);
    assert_true(metric(m, "warmpool_node_claims_waiting{env=\"busy\",node=\"n-busy\"}") == 0);
    free(m);
    /* The retry, once the burst is over, is served. */
    th_msleep(1500);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute",
             json_string_value(json_object_get(sb[over], "id")));
    json_t *res = call(&A, "POST", path, "{\"name\":\"bash\",\"input\":{\"command\":\"echo again\"}}", 200);
    json_t *c0 = json_array_get(json_object_get(res, "content"), 0);
    assert_string_equal(json_string_value(json_object_get(c0, "text")), "again");
    json_decref(res);
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof(path), "/v1/sandboxes/%s", json_string_value(json_object_get(sb[i], "id")));
        assert_int_equal(th_http(A.port, "DELETE", path, KEY, NULL, &r), 0);
        th_resp_free(&r);
        json_decref(sb[i]);
    }
    kill(node, SIGTERM);
    waitpid(node, NULL, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(metrics_show_the_claim_and_the_pool),
        cmocka_unit_test(create_answers_at_once_and_execute_waits),
        cmocka_unit_test(execute_behind_a_failed_attach_is_not_run),
        cmocka_unit_test(two_creates_never_share_and_release_destroys),
        cmocka_unit_test(bad_input_is_refused),
        cmocka_unit_test(lease_renewed_while_used_released_when_idle),
        cmocka_unit_test(lost_lease_fails_and_closes_the_relay_link),
        cmocka_unit_test(metrics_scans_shared_and_token_beyond_loopback),
        cmocka_unit_test(overloaded_claims_answer_529_and_a_retry_runs),
    };
    /* WP_TEST_FILTER=pattern runs only matching tests (as test_pool). */
    if (getenv("WP_TEST_FILTER"))
        cmocka_set_test_filter(getenv("WP_TEST_FILTER"));
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
