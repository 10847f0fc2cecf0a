/* test_sched_envtpl.c - API environments served by the pool: a real Redis,
 * a real node started with no environment of its own, a scheduler, plain
 * HTTP. An environment created through the API is built and served by the
 * node, rebuilt when its template changes, withdrawn (clones destroyed)
 * when archived or deleted; bad configs are refused with nothing stored.
 * Also /v1/sandboxes/:id/execute streamed as SSE. */
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
#include "base/err.h"
#include "base/fs.h"

#define KEY "sk-acme"

static struct th_redis R;
static struct th_sched A;
static char *DIR_;
static char STATE[1100];
static pid_t NODE;
static char ENV1[64]; /* built in the first test, used by the next ones */

static int group_setup(void **state)
{
    char wp[1100], log[1200];
    (void)state;

    if (th_redis_start(&R, 0) < 0)
        return -1;
    DIR_ = th_tmpdir("envtpl");
    if (th_hands_copy(DIR_, wp, sizeof(wp)) < 0)
        return -1;
    snprintf(log, sizeof(log), "%s/node.log", DIR_);
    snprintf(STATE, sizeof(STATE), "%s/state", DIR_);
    /* No --env: everything this node serves comes from the API. */
    NODE = th_node_start("n1", R.port, STATE, log, NULL);
    if (NODE < 0)
        return -1;
    return th_sched_start(&A, R.port, "--hands-dir", wp, NULL);
}

static int group_teardown(void **state)
{
    (void)state;
    th_sched_stop(&A);
    if (NODE > 0) {
        kill(NODE, SIGTERM);
        waitpid(NODE, NULL, 0);
    }
    th_redis_stop(&R);
    th_rmtree(DIR_);
    free(DIR_);
    return 0;
}

static json_t *call(const char *method, const char *path, const char *body, int want_status)
{
    return th_api(A.port, KEY, method, path, body, want_status);
}

/* redis-cli output, trailing newline removed. */
static void rcli(char *out, size_t cap, const char *args)
{
    th_sh(out, cap, "redis-cli -p %d %s", R.port, args);
    out[strcspn(out, "\n")] = '\0';
}

/* Wait until `redis-cli args` prints want (or for up to secs). */
static bool wait_for(const char *args, const char *want, int secs)
{
    char out[512];
    for (int i = 0; i < secs * 10; i++) {
        rcli(out, sizeof(out), args);
        if (strcmp(out, want) == 0)
            return true;
        th_msleep(100);
    }
    fprintf(stderr, "waited for `%s` = %s, last: %s\n", args, want, out);
    return false;
}

static int hot_count(const char *env)
{
    char args[160], out[64];
    snprintf(args, sizeof(args), "llen 'wp:env:{%s}:hot'", env);
    rcli(out, sizeof(out), args);
    return atoi(out);
}

static bool wait_hot(const char *env, int n, int secs)
{
    return th_wait_hot(R.port, env, n, secs);
}

/* Idle clone ids of env, newline-separated, into out. */
static void hot_ids(const char *env, char *out, size_t cap)
{
    char args[160];
    snprintf(args, sizeof(args), "lrange 'wp:env:{%s}:hot' 0 -1", env);
    th_sh(out, cap, "redis-cli -p %d %s", R.port, args);
}

/* Every sandbox in ids (one per line) has left nothing behind. */
static bool all_gone(const char *ids, int secs)
{
    struct th_snap ts = { .state = STATE };
    char copy[2048];
    snprintf(copy, sizeof(copy), "%s", ids);
    for (int i = 0; i < secs * 10; i++) {
        bool gone = true;
        char *save = NULL;
        char tmp[2048];
        snprintf(tmp, sizeof(tmp), "%s", copy);
        for (char *id = strtok_r(tmp, "\n", &save); id; id = strtok_r(NULL, "\n", &save))
            gone = gone && th_sandbox_gone(&ts, id, 0);
        if (gone)
            return true;
        th_msleep(100);
    }
    return false;
}

/* Wait until env has `want` images on the node's disk; returns the count. */
static int wait_images(const char *env, int want, int secs)
{
    char out[64];
    for (int i = 0; i < secs * 10; i++) {
        th_sh(out, sizeof(out), "ls %s/images | grep -c '^%s-'", STATE, env);
        if (atoi(out) == want)
            break;
        th_msleep(100);
    }
    return atoi(out);
}

static const char *text_of(json_t *res)
{
    return json_string_value(json_object_get(json_array_get(json_object_get(res, "content"), 0), "text"));
}

/* Create a sandbox of env and run one bash command; returns its output
 * (static) and deletes the sandbox. */
static const char *run_in(const char *env, const char *command)
{
    static char out[4096];
    char body[512], path[160];
    snprintf(body, sizeof(body), "{\"environment\":\"%s\"}", env);
    json_t *sb = call("POST", "/v1/sandboxes", body, 200);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute",
             json_string_value(json_object_get(sb, "id")));
    json_t *cmd = json_pack("{s:s, s:{s:s}}", "name", "bash", "input", "command", command);
    char *cs = json_dumps(cmd, JSON_COMPACT);
    json_t *res = call("POST", path, cs, 200);
    free(cs);
    json_decref(cmd);
    if (json_is_true(json_object_get(res, "is_error")))
        fail_msg("%s: %s", command, text_of(res));
    snprintf(out, sizeof(out), "%s", text_of(res));
    json_decref(res);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", json_string_value(json_object_get(sb, "id")));
    json_decref(call("DELETE", path, NULL, 200));
    json_decref(sb);
    return out;
}

static void api_env_is_built_and_served_by_a_node_without_config(void **state)
{
    char args[200], out[512];
    (void)state;

    json_t *e = call("POST", "/v1/environments",
                     "{\"name\":\"py\",\"config\":{\"type\":\"cloud\",\"packages\":{\"apt\":[\"bash\"]}},"
                     "\"metadata\":{\"warmpool.min_hot\":\"1\",\"warmpool.max_hot\":\"2\"}}",
                     200);
    snprintf(ENV1, sizeof(ENV1), "%s", json_string_value(json_object_get(e, "id")));
    json_decref(e);
    /* Published: template with its digest, and the policy. */
    snprintf(args, sizeof(args), "hget wp:tpls %s", ENV1);
    rcli(out, sizeof(out), args);
    assert_int_equal(strlen(out), 64);
    snprintf(args, sizeof(args), "hget 'wp:env:{%s}:policy' api_min_hot", ENV1);
    rcli(out, sizeof(out), args);
    assert_string_equal(out, "1");
    /* The node learns it, builds the image (the apt check passes: bash is
     * installed on this host), and keeps one hot clone. */
    snprintf(args, sizeof(args), "hget 'wp:tpl:{%s}' build:n1", ENV1);
    assert_true(wait_for(args, "ready", 60));
    assert_true(wait_hot(ENV1, 1, 30));
    /* A sandbox of that environment runs commands. */
    assert_string_equal(run_in(ENV1, "echo hello from $(pwd)"), "hello from /work");
    /* The operator's `warmpool pool set` wins over the metadata. */
    char bin[1200];
    snprintf(bin, sizeof(bin), "%s/warmpool", th_build_dir());
    th_sh(out, sizeof(out), "%s --redis 127.0.0.1:%d pool set %s min_hot=2", bin, R.port, ENV1);
    assert_true(wait_hot(ENV1, 2, 30));
    /* Another organization cannot use it. */
    char body[200];
    struct th_resp r;
    snprintf(body, sizeof(body), "{\"environment\":\"%s\"}", ENV1);
    assert_int_equal(th_http(A.port, "POST", "/v1/sandboxes", "sk-beta", body, &r), 0);
    assert_int_equal(r.status, 404);
    th_resp_free(&r);
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static void execute_streams_output_as_sse(void **state)
{
    char body[256], path[160], req[1024];
    static char buf[65536];
    (void)state;

    assert_true(ENV1[0]);
    snprintf(body, sizeof(body), "{\"environment\":\"%s\"}", ENV1);
    json_t *sb = call("POST", "/v1/sandboxes", body, 200);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute", json_string_value(json_object_get(sb, "id")));
    /* A bad stream flag is refused before anything streams. */
    json_decref(call("POST", path, "{\"name\":\"bash\",\"input\":{\"command\":\"true\"},\"stream\":1}", 400));
    /* Attached first, so what follows times the stream, not the claim (a
     * loaded machine under ASan can take seconds to restore a clone). */
    json_decref(call("POST", path, "{\"name\":\"bash\",\"input\":{\"command\":\"true\"}}", 200));
    const char *cmd = "{\"name\":\"bash\",\"stream\":true,\"input\":{\"command\":"
                      "\"for i in 1 2 3; do echo line$i; sleep 1; done\"}}";
    int fd = th_connect(A.port);
    assert_true(fd >= 0);
    int n = snprintf(req, sizeof(req),
                     "POST %s HTTP/1.1\r\nHost: x\r\nx-api-key: " KEY "\r\n"
                     "content-type: application/json\r\ncontent-length: %zu\r\n\r\n%s",
                     path, strlen(cmd), cmd);
    assert_int_equal(th_send_all(fd, req, (size_t)n), 0);
    /* The first chunk arrives while the command still runs. */
    int got = th_read_until(fd, buf, sizeof(buf) - 1, "event: chunk", 30000);
    buf[got] = '\0';
    assert_non_null(strstr(buf, "content-type: text/event-stream"));
    assert_non_null(strstr(buf, "event: chunk"));
    assert_null(strstr(buf, "event: result"));
    /* Then the rest, the result last, and the server closes. */
    got += th_read_all(fd, buf + got, sizeof(buf) - 1 - (size_t)got, 10000);
    buf[got] = '\0';
    close(fd);
    assert_true(count(buf, "event: chunk") >= 2);
    assert_int_equal(count(buf, "event: result"), 1);
    const char *res = strstr(buf, "event: result\ndata: ");
    assert_non_null(res);
    assert_null(strstr(res, "event: chunk"));
    json_t *r = json_loads(res + strlen("event: result\ndata: "), JSON_DISABLE_EOF_CHECK, NULL);
    assert_non_null(r);
    assert_false(json_is_true(json_object_get(r, "is_error")));
    assert_string_equal(text_of(r), "line1\nline2\nline3");
    json_decref(r);
    /* Every chunk event is one JSON line with the output text. */
    const char *c = strstr(buf, "event: chunk\ndata: ");
    json_t *ch = json_loads(c + strlen("event: chunk\ndata: "), JSON_DISABLE_EOF_CHECK, NULL);
    assert_non_null(ch);
    assert_string_equal(json_string_value(json_object_get(ch, "type")), "chunk");
    assert_non_null(strstr(json_string_value(json_object_get(ch, "text")), "line1"));
    json_decref(ch);
    /* A client that leaves mid-stream cancels the command; the sandbox
     * goes on serving. */
    cmd = "{\"name\":\"bash\",\"stream\":true,\"input\":{\"command\":"
          "\"echo start; sleep 30; echo late\"}}";
    fd = th_connect(A.port);
    n = snprintf(req, sizeof(req),
                 "POST %s HTTP/1.1\r\nHost: x\r\nx-api-key: " KEY "\r\n"
                 "content-type: application/json\r\ncontent-length: %zu\r\n\r\n%s",
                 path, strlen(cmd), cmd);
    assert_int_equal(th_send_all(fd, req, (size_t)n), 0);
    th_read_until(fd, buf, sizeof(buf) - 1, "event: chunk", 10000);
    close(fd);
    json_t *after = call("POST", path, "{\"name\":\"bash\",\"input\":{\"command\":\"echo still here\"}}", 200);
    assert_string_equal(text_of(after), "still here");
    json_decref(after);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", json_string_value(json_object_get(sb, "id")));
    json_decref(call("DELETE", path, NULL, 200));
    json_decref(sb);
}

static void update_that_changes_the_template_rebuilds(void **state)
{
    char args[200], before[2048], digest0[80], digest1[80], path[160];
    (void)state;

    assert_true(ENV1[0]);
    assert_true(wait_hot(ENV1, 1, 30));
    hot_ids(ENV1, before, sizeof(before));
    snprintf(args, sizeof(args), "hget wp:tpls %s", ENV1);
    rcli(digest0, sizeof(digest0), args);
    /* Policy only: same template, no rebuild. */
    snprintf(path, sizeof(path), "/v1/environments/%s", ENV1);
    json_decref(call("POST", path, "{\"metadata\":{\"warmpool.max_hot\":\"3\"}}", 200));
    rcli(digest1, sizeof(digest1), args);
    assert_string_equal(digest0, digest1);
    /* A new limit changes the template: new digest, new image, the old
     * image's idle clones destroyed and replaced. */
    json_decref(call("POST", path, "{\"metadata\":{\"warmpool.pids\":\"100\"}}", 200));
    rcli(digest1, sizeof(digest1), args);
    assert_string_not_equal(digest0, digest1);
    assert_true(all_gone(before, 60));
    char out[64];
    /* The new image is built; the old one is deleted once unused. */
    assert_true(wait_hot(ENV1, 1, 60));
    assert_int_equal(wait_images(ENV1, 1, 10), 1);
    /* Clones of the new image carry the new limit. */
    assert_string_equal(run_in(ENV1, "echo ok"), "ok");
    char ids[2048];
    assert_true(wait_hot(ENV1, 1, 30)); /* the claim above took one */
    hot_ids(ENV1, ids, sizeof(ids));
    ids[strcspn(ids, "\n")] = '\0';
    th_sh(out, sizeof(out), "cat /sys/fs/cgroup/pids/warmpool/%s/pids.max 2>/dev/null || "
                            "cat /sys/fs/cgroup/warmpool/%s/pids.max", ids, ids);
    out[strcspn(out, "\n")] = '\0';
    assert_string_equal(out, "100");
}

/* Withdraw env (archive or delete) with idle clones running: it is
 * unpublished at once, and soon no node serves it, its clones left
 * nothing behind and its images are gone. */
static void withdraw_and_check(const char *env, const char *method, const char *path)
{
    char args[200], before[2048];
    assert_true(wait_hot(env, 1, 90));
    hot_ids(env, before, sizeof(before));
    json_decref(call(method, path, NULL, 200));
    snprintf(args, sizeof(args), "hexists wp:tpls %s", env);
    assert_true(wait_for(args, "0", 1));
    snprintf(args, sizeof(args), "exists 'wp:tpl:{%s}'", env);
    assert_true(wait_for(args, "0", 1));
    snprintf(args, sizeof(args), "sismember 'wp:env:{%s}:nodes' n1", env);
    assert_true(wait_for(args, "0", 10));
    /* Destroys run in helpers beside the rest of the suite's load: a
     * minute is the bound (20 s was seen to be too short under load). */
    if (!all_gone(before, 60)) {
        /* What the node did meanwhile says why (for the failure's reader). */
        char out[16384];
        th_sh(out, sizeof(out), "grep -v debug %s/node.log | tail -60", DIR_);
        fail_msg("clones of %s not destroyed; hot before: %s\nnode log:\n%s", env, before, out);
    }
    assert_int_equal(hot_count(env), 0);
    if (wait_images(env, 0, 60) != 0) {
        char out[16384];
        th_sh(out, sizeof(out), "ls %s/images %s/sandboxes; grep -v debug %s/node.log | tail -40",
              STATE, STATE, DIR_);
        fail_msg("images of %s not deleted:\n%s", env, out);
    }
}

static void archive_stops_serving_and_destroys_clones(void **state)
{
    char path[160], body[200];
    (void)state;

    assert_true(ENV1[0]);
    snprintf(path, sizeof(path), "/v1/environments/%s/archive", ENV1);
    withdraw_and_check(ENV1, "POST", path);
    /* No sandbox of it can be created any more. */
    snprintf(body, sizeof(body), "{\"environment\":\"%s\"}", ENV1);
    json_decref(call("POST", "/v1/sandboxes", body, 400));
}

static void delete_stops_serving_and_destroys_clones(void **state)
{
    char path[160], id[64];
    (void)state;

    json_t *e = call("POST", "/v1/environments",
                     "{\"name\":\"tmp\",\"metadata\":{\"warmpool.min_hot\":\"2\"}}", 200);
    snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(e, "id")));
    json_decref(e);
    assert_true(wait_hot(id, 2, 90)); /* both clones exist before it goes */
    snprintf(path, sizeof(path), "/v1/environments/%s", id);
    withdraw_and_check(id, "DELETE", path);
    json_decref(call("GET", path, NULL, 404));
}

static void bad_config_is_refused_and_nothing_stored(void **state)
{
    static const char *const bad[][2] = {
        { "{\"name\":\"b\",\"config\":{\"type\":\"cloud\",\"packages\":{\"apt\":\"jq\"}}}",
          "package lists must be arrays of strings" },
        { "{\"name\":\"b\",\"config\":{\"type\":\"cloud\",\"packages\":{\"apt\":[1]}}}",
          "package lists must be arrays of strings" },
        { "{\"name\":\"b\",\"config\":{\"type\":\"cloud\",\"packages\":{\"brew\":[\"jq\"]}}}",
          "unknown package manager" },
        { "{\"name\":\"b\",\"config\":{\"type\":\"cloud\",\"packages\":{\"pip\":[\"requests\"]}}}",
          "packages.pip: not supported" },
        { "{\"name\":\"b\",\"config\":{\"type\":\"cloud\",\"packages\":{\"apt\":[\"Bad_Name\"]}}}",
          "is not a Debian package name" },
        { "{\"name\":\"b\",\"config\":{\"type\":\"cloud\",\"packages\":{\"apt\":[\"jq=;rm\"]}}}",
          "is not a Debian package name" },
        { "{\"name\":\"b\",\"metadata\":{\"warmpool.min_hot\":\"many\"}}",
          "warmpool.min_hot must be an integer" },
        { "{\"name\":\"b\",\"metadata\":{\"warmpool.max_hot\":\"-1\"}}",
          "warmpool.max_hot must be an integer" },
        { "{\"name\":\"b\",\"metadata\":{\"warmpool.min_hot\":\"1.5\"}}",
          "warmpool.min_hot must be an integer" },
        { "{\"name\":\"b\",\"metadata\":{\"warmpool.min_hot\":\"5\",\"warmpool.max_hot\":\"2\"}}",
          "must not exceed" },
        { "{\"name\":\"b\",\"metadata\":{\"warmpool.cpu\":\"0\"}}", "warmpool.cpu must be a number" },
        { "{\"name\":\"b\",\"metadata\":{\"warmpool.disk_mb\":\"-5\"}}",
          "warmpool.disk_mb must be an integer" },
        { "{\"name\":\"b\",\"metadata\":{\"warmpool.shm_mb\":\"lots\"}}",
          "warmpool.shm_mb must be an integer" },
        { "{\"name\":\"b\",\"metadata\":{\"warmpool.colour\":\"red\"}}", "unknown warmpool key" },
        { "{\"name\":\"b\",\"config\":{\"type\":\"cloud\",\"networking\":{\"type\":\"limited\","
          "\"allowed_hosts\":[\"*.example.com\"]}}}",
          "networking.allowed_hosts[0] \"*.example.com\": wildcards cannot be enforced" },
        { "{\"name\":\"b\",\"config\":{\"type\":\"cloud\",\"networking\":{\"type\":\"limited\","
          "\"allowed_hosts\":[\"example.com\",\"https://example.com/x\"]}}}",
          "networking.allowed_hosts[1] \"https://example.com/x\" must be a bare hostname" },
        { "{\"name\":\"b\",\"config\":{\"type\":\"cloud\",\"networking\":{\"type\":\"limited\","
          "\"allowed_hosts\":[\"2001:db8::1\"]}}}", "no URL, port, path, wildcard or IPv6" },
        { "{\"name\":\"b\",\"config\":{\"type\":\"cloud\",\"networking\":{\"type\":\"limited\","
          "\"allow_package_managers\":true},\"packages\":{\"npm\":[\"git+https://x/y.git\"]}}}",
          "is not a registry package name" },
        { "{\"name\":\"b\",\"config\":{\"type\":\"cloud\",\"packages\":{\"cargo\":[\"serde\"]}}}",
          "packages.cargo: not supported" },
    };
    char before_tpls[64], before_keys[64], out[64];
    (void)state;

    rcli(before_tpls, sizeof(before_tpls), "hlen wp:tpls");
    rcli(before_keys, sizeof(before_keys), "dbsize");
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *e = call("POST", "/v1/environments", bad[i][0], 400);
        const char *msg = json_string_value(json_object_get(json_object_get(e, "error"), "message"));
        if (!msg || !strstr(msg, bad[i][1]))
            fail_msg("%s: message '%s', want '%s'", bad[i][0], msg ? msg : "", bad[i][1]);
        json_decref(e);
    }
    /* An update with a bad value changes nothing either. */
    json_t *e = call("POST", "/v1/environments", "{\"name\":\"ok\",\"config\":{\"type\":\"self_hosted\"}}", 200);
    char path[160];
    snprintf(path, sizeof(path), "/v1/environments/%s", json_string_value(json_object_get(e, "id")));
    json_decref(call("POST", path, "{\"metadata\":{\"warmpool.pids\":\"lots\"}}", 400));
    json_t *got = call("GET", path, NULL, 200);
    assert_null(json_object_get(json_object_get(got, "metadata"), "warmpool.pids"));
    json_decref(got);
    /* self_hosted environments are not published. */
    rcli(out, sizeof(out), "hlen wp:tpls");
    assert_string_equal(out, before_tpls);
    json_decref(call("DELETE", path, NULL, 200));
    json_decref(e);
    rcli(out, sizeof(out), "dbsize");
    /* Nothing stored but rate-limit counters (one key per minute). */
    assert_true(atoi(out) <= atoi(before_keys) + 1);
}

/* config.networking reaches the template, the image build installs npm
 * packages from the registry (limited + allow_package_managers), and the
 * sandbox has its veth. */
static void networking_maps_to_the_template_and_npm_installs(void **state)
{
    char args[200], out[4096], id[64], path[160];
    (void)state;

    json_t *e = call("POST", "/v1/environments",
                     "{\"name\":\"net\",\"config\":{\"type\":\"cloud\",\"networking\":"
                     "{\"type\":\"limited\",\"allowed_hosts\":[\"198.18.0.0/24\"],"
                     "\"allow_package_managers\":true},\"packages\":{\"npm\":[\"is-number@7.0.0\"]}},"
                     "\"metadata\":{\"warmpool.min_hot\":\"1\",\"warmpool.max_hot\":\"1\"}}",
                     200);
    snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(e, "id")));
    json_decref(e);
    snprintf(args, sizeof(args), "hget 'wp:tpl:{%s}' template", id);
    rcli(out, sizeof(out), args);
    json_t *t = json_loads(out, 0, NULL);
    assert_non_null(t);
    json_t *net = json_object_get(t, "network");
    assert_string_equal(json_string_value(json_object_get(net, "mode")), "limited");
    char *hosts = json_dumps(json_object_get(net, "allowed_hosts"), JSON_COMPACT);
    assert_non_null(strstr(hosts, "\"198.18.0.0/24\""));
    assert_non_null(strstr(hosts, "\"registry.npmjs.org\""));
    assert_non_null(strstr(hosts, "\"deb.debian.org\""));
    free(hosts);
    json_decref(t);
    snprintf(args, sizeof(args), "hget 'wp:tpl:{%s}' build:n1", id);
    if (th_sh(out, sizeof(out), "getent hosts registry.npmjs.org >/dev/null") == 0) {
        assert_true(wait_for(args, "ready", 120));
        assert_true(wait_hot(id, 1, 60));
        assert_string_equal(run_in(id, "node -e \"console.log(require('is-number')(5))\""), "true");
        assert_string_equal(run_in(id, "grep -c eth0 /proc/net/dev"), "1");
    }
    snprintf(path, sizeof(path), "/v1/environments/%s", id);
    json_decref(call("DELETE", path, NULL, 200));
}

static void unsatisfiable_apt_package_fails_the_build_visibly(void **state)
{
    char args[200], out[512], path[160], id[64];
    (void)state;

    json_t *e = call("POST", "/v1/environments",
                     "{\"name\":\"nopkg\",\"config\":{\"type\":\"cloud\",\"packages\":"
                     "{\"apt\":[\"warmpool-no-such-pkg\"]}}}", 200);
    snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(e, "id")));
    json_decref(e);
    snprintf(args, sizeof(args), "hget 'wp:tpl:{%s}' build:n1", id);
    bool failed = false;
    for (int i = 0; i < 600 && !failed; i++, th_msleep(100)) {
        rcli(out, sizeof(out), args);
        failed = strncmp(out, "failed:", 7) == 0;
    }
    if (!failed)
        fail_msg("build status: %s", out);
    assert_non_null(strstr(out, "warmpool-no-such-pkg"));
    /* The same in the operator's view of the node. */
    snprintf(args, sizeof(args), "hget wp:node:n1 build:%s", id);
    rcli(out, sizeof(out), args);
    assert_non_null(strstr(out, "warmpool-no-such-pkg"));
    snprintf(path, sizeof(path), "/v1/environments/%s", id);
    json_decref(call("DELETE", path, NULL, 200));
}

/* The usual first flow: create an environment, a sandbox of it right
 * after (the node has not learnt it yet), run a command. The claim waits
 * for the first node to serve it, and says how long. */
static void sandbox_right_after_create_waits_for_a_node(void **state)
{
    char body[256], path[160];
    (void)state;

    json_t *e = call("POST", "/v1/environments",
                     "{\"name\":\"fresh\",\"config\":{\"type\":\"cloud\"}}", 200);
    const char *id = json_string_value(json_object_get(e, "id"));
    snprintf(body, sizeof(body), "{\"environment\":\"%s\"}", id);
    json_t *sb = call("POST", "/v1/sandboxes", body, 200);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s/execute",
             json_string_value(json_object_get(sb, "id")));
    json_t *res = call("POST", path, "{\"name\":\"bash\",\"input\":{\"command\":\"echo first\"}}", 200);
    if (json_is_true(json_object_get(res, "is_error")))
        fail_msg("first command: %s", text_of(res));
    assert_string_equal(text_of(res), "first");
    json_decref(res);
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", json_string_value(json_object_get(sb, "id")));
    json_t *got = call("GET", path, NULL, 200);
    double waited = json_number_value(json_object_get(json_object_get(got, "timings"), "node_wait_ms"));
    print_message("# waited %.0f ms for a node to serve %s\n", waited, id);
    assert_true(waited > 0);
    json_decref(got);
    json_decref(call("DELETE", path, NULL, 200));
    json_decref(sb);
    snprintf(path, sizeof(path), "/v1/environments/%s", id);
    json_decref(call("DELETE", path, NULL, 200));
    json_decref(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(api_env_is_built_and_served_by_a_node_without_config),
        cmocka_unit_test(sandbox_right_after_create_waits_for_a_node),
        cmocka_unit_test(execute_streams_output_as_sse),
        cmocka_unit_test(update_that_changes_the_template_rebuilds),
        cmocka_unit_test(archive_stops_serving_and_destroys_clones),
        cmocka_unit_test(delete_stops_serving_and_destroys_clones),
        cmocka_unit_test(bad_config_is_refused_and_nothing_stored),
        cmocka_unit_test(unsatisfiable_apt_package_fails_the_build_visibly),
        cmocka_unit_test(networking_maps_to_the_template_and_npm_installs),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
