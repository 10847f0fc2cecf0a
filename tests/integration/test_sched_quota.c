/* test_sched_quota.c - per-organization quotas set with the `warmpool`
 * CLI and enforced by the scheduler (issue 15 defect 5): live sessions
 * (also under concurrent creates), /v1/sandboxes, hot clones and what they
 * hold (memory, CPU, disk), operator pools that name their organizations,
 * the CLI's view of use against quota, and its refusal of bad input. A
 * scheduler and a real redis-server; no node (claims stay provisioning). */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/testlib.h"
#include "lib/sched_testlib.h"

static struct th_redis R;
static struct th_sched S;

static json_t *call_as(const char *key, const char *method, const char *path, const char *body,
                       int want, char *hdr_retry, size_t cap)
{
    struct th_resp r;
    if (!hdr_retry) {
        json_t *j = th_call(S.port, key, method, path, body, want);
        assert_non_null(j);
        return j;
    }
    /* The x-should-retry header too. */
    assert_int_equal(th_http(S.port, method, path, key, body, &r), 0);
    if (r.status != want)
        fprintf(stderr, "%s %s -> %d %s\n", method, path, r.status, r.body);
    assert_int_equal(r.status, want);
    if (th_resp_header(&r, "x-should-retry", hdr_retry, cap) < 0)
        hdr_retry[0] = '\0';
    json_t *j = json_loads(r.body, 0, NULL);
    assert_non_null(j);
    th_resp_free(&r);
    return j;
}

static json_t *call(const char *method, const char *path, const char *body, int want)
{
    return call_as("sk-acme", method, path, body, want, NULL, 0);
}

static const char *s_(json_t *j, const char *k)
{
    return json_string_value(json_object_get(j, k));
}

/* The `warmpool` CLI against the test's Redis; returns its exit status. */
static int cli(char *out, size_t cap, const char *args)
{
    char buf[8192];
    int st = th_sh(out ? out : buf, out ? cap : sizeof(buf), "%s/warmpool --redis 127.0.0.1:%d %s 2>&1",
                   th_build_dir(), R.port, args);
    return st;
}

/* A 429 quota refusal as the SDK sees it: RateLimitError, not retried. */
static void assert_quota(json_t *e, const char *quota, const char *retry)
{
    json_t *err = json_object_get(e, "error");
    assert_string_equal(s_(e, "type"), "error");
    assert_string_equal(s_(err, "type"), "rate_limit_error");
    assert_string_equal(s_(json_object_get(err, "details"), "error_code"), "quota_exceeded");
    assert_string_equal(s_(json_object_get(err, "details"), "quota"), quota);
    assert_non_null(strstr(s_(err, "message"), quota));
    assert_string_equal(retry, "false");
    json_decref(e);
}

static int group_setup(void **state)
{
    (void)state;
    return th_stack_start(&R, &S, "--rate-create", "0", "--rate-read", "0", "--rate-sandbox",
                          "0", "--rate-sandbox-create", "0", "--brain", "off", (char *)NULL);
}

static int group_teardown(void **state)
{
    (void)state;
    return th_stack_stop(&R, &S);
}

static char *new_id(const char *path, const char *body)
{
    json_t *j = call("POST", path, body, 200);
    char *id = strdup(s_(j, "id"));
    json_decref(j);
    return id;
}

static void live_sessions_quota(void **state)
{
    (void)state;
    char body[512], path[256], retry[16], out[4096];
    char *a = new_id("/v1/agents", "{\"name\":\"q\",\"model\":\"claude-sonnet-4-5\"}");
    char *env = new_id("/v1/environments", "{\"name\":\"q\",\"config\":{\"type\":\"self_hosted\"}}");
    assert_int_equal(cli(NULL, 0, "quota set acme sessions=2"), 0);
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", a, env);
    char *s1 = new_id("/v1/sessions", body);
    char *s2 = new_id("/v1/sessions", body);
    assert_quota(call_as("sk-acme", "POST", "/v1/sessions", body, 429, retry, sizeof(retry)),
                 "sessions", retry);
    /* The operator sees it: 2 of 2. */
    assert_int_equal(cli(out, sizeof(out), "quota show acme"), 0);
    assert_non_null(strstr(out, "sessions"));
    assert_non_null(strstr(out, "2 used of 2"));
    /* Another organization is not limited by acme's quota. */
    char *ab = NULL;
    {
        json_t *j = call_as("sk-beta", "POST", "/v1/agents",
                            "{\"name\":\"b\",\"model\":\"claude-sonnet-4-5\"}", 200, NULL, 0);
        ab = strdup(s_(j, "id"));
        json_decref(j);
        j = call_as("sk-beta", "POST", "/v1/environments",
                    "{\"name\":\"b\",\"config\":{\"type\":\"self_hosted\"}}", 200, NULL, 0);
        char b2[512];
        snprintf(b2, sizeof(b2), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", ab, s_(j, "id"));
        json_decref(j);
        for (int i = 0; i < 3; i++)
            json_decref(call_as("sk-beta", "POST", "/v1/sessions", b2, 200, NULL, 0));
    }
    /* Archiving one frees its slot. */
    snprintf(path, sizeof(path), "/v1/sessions/%s/archive", s1);
    json_decref(call("POST", path, "{}", 200));
    char *s3 = new_id("/v1/sessions", body);

    /* Concurrent creates: with room for 3 more, exactly 3 of 12 pass. */
    assert_int_equal(cli(NULL, 0, "quota set acme sessions=5"), 0);
    int fds[12], ok = 0, refused = 0;
    char req[1024];
    int l = snprintf(req, sizeof(req),
                     "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nx-api-key: sk-acme\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     strlen(body), body);
    for (int i = 0; i < 12; i++) {
        fds[i] = th_connect(S.port);
        assert_int_equal(th_send_all(fds[i], req, (size_t)l), 0);
    }
    for (int i = 0; i < 12; i++) {
        char resp[8192];
        th_read_all(fds[i], resp, sizeof(resp), 10000);
        close(fds[i]);
        ok += strstr(resp, "HTTP/1.1 200") != NULL;
        refused += strstr(resp, "HTTP/1.1 429") != NULL && strstr(resp, "quota_exceeded") != NULL;
    }
    assert_int_equal(ok, 3);
    assert_int_equal(refused, 9);
    assert_int_equal(cli(out, sizeof(out), "quota show acme"), 0);
    assert_non_null(strstr(out, "5 used of 5"));
    /* Bad input to the CLI changes nothing. */
    assert_int_equal(cli(out, sizeof(out), "quota set acme sessions=-1 cpu=2"), 2);
    assert_int_equal(cli(out, sizeof(out), "quota set acme sesions=3"), 2);
    assert_int_equal(cli(out, sizeof(out), "quota set acme sessions=1.5"), 2);
    assert_int_equal(cli(out, sizeof(out), "quota show acme"), 0);
    assert_non_null(strstr(out, "5 used of 5"));
    assert_non_null(strstr(out, "unlimited")); /* cpu was not set */
    assert_int_equal(cli(NULL, 0, "quota set acme sessions=none"), 0);
    json_decref(call("POST", "/v1/sessions", body, 200));
    free(a); free(ab); free(env); free(s1); free(s2); free(s3);
}

static void hot_clones_memory_cpu_disk(void **state)
{
    (void)state;
    char retry[16], out[4096], path[256];
    static const char envf[] =
        "{\"name\":\"%s\",\"config\":{\"type\":\"cloud\",\"networking\":{\"type\":\"limited\"}},"
        "\"metadata\":{\"warmpool.min_hot\":\"%d\",\"warmpool.memory_mb\":\"%d\",\"warmpool.cpu\":\"%s\"%s}}";
    char body[512];
    assert_int_equal(cli(NULL, 0, "quota set acme hot=3 memory_mb=1024 cpu=2 disk_mb=4096"), 0);
    json_t *before = call("GET", "/v1/environments?limit=100", NULL, 200);
    size_t n0 = json_array_size(json_object_get(before, "data"));
    json_decref(before);

    snprintf(body, sizeof(body), envf, "e1", 2, 256, "0.5", "");
    char *e1 = new_id("/v1/environments", body); /* 2 hot, 512 MiB, 1 CPU */
    snprintf(body, sizeof(body), envf, "e2", 2, 256, "0.5", "");
    assert_quota(call_as("sk-acme", "POST", "/v1/environments", body, 429, retry, sizeof(retry)),
                 "hot", retry); /* 4 hot > 3 */
    snprintf(body, sizeof(body), envf, "e3", 0, 2048, "1", "");
    assert_quota(call_as("sk-acme", "POST", "/v1/environments", body, 429, retry, sizeof(retry)),
                 "memory_mb", retry); /* one sandbox of 2 GiB > 1 GiB */
    snprintf(body, sizeof(body), envf, "e4", 1, 256, "4", "");
    assert_quota(call_as("sk-acme", "POST", "/v1/environments", body, 429, retry, sizeof(retry)),
                 "cpu", retry);
    snprintf(body, sizeof(body), envf, "e5", 1, 600, "0.5", "");
    assert_quota(call_as("sk-acme", "POST", "/v1/environments", body, 429, retry, sizeof(retry)),
                 "memory_mb", retry); /* 512 + 600 hot > 1024 */
    snprintf(body, sizeof(body), envf, "e6", 1, 256, "0.5", ",\"warmpool.disk_mb\":\"8192\"");
    assert_quota(call_as("sk-acme", "POST", "/v1/environments", body, 429, retry, sizeof(retry)),
                 "disk_mb", retry);
    /* Nothing refused was stored or published. */
    json_t *after = call("GET", "/v1/environments?limit=100", NULL, 200);
    assert_int_equal(json_array_size(json_object_get(after, "data")), n0 + 1);
    json_decref(after);
    char tpls[4096];
    th_sh(tpls, sizeof(tpls), "redis-cli -p %d HLEN wp:tpls", R.port);
    assert_int_equal(atoi(tpls), 1);
    /* An update is checked too, and leaves the stored one as it was. */
    snprintf(path, sizeof(path), "/v1/environments/%s", e1);
    assert_quota(call_as("sk-acme", "POST", path, "{\"metadata\":{\"warmpool.min_hot\":\"4\"}}", 429,
                         retry, sizeof(retry)), "hot", retry);
    json_t *got = call("GET", path, NULL, 200);
    assert_string_equal(s_(json_object_get(got, "metadata"), "warmpool.min_hot"), "2");
    json_decref(got);
    json_decref(call("POST", path, "{\"metadata\":{\"warmpool.min_hot\":\"3\"}}", 200));
    assert_int_equal(cli(out, sizeof(out), "quota show acme"), 0);
    assert_non_null(strstr(out, "3 used of 3"));     /* hot */
    assert_non_null(strstr(out, "768 used of 1024")); /* memory_mb */
    /* Archiving frees what it kept hot. */
    snprintf(path, sizeof(path), "/v1/environments/%s/archive", e1);
    json_decref(call("POST", path, "{}", 200));
    snprintf(body, sizeof(body), envf, "e7", 2, 256, "0.5", "");
    char *e7 = new_id("/v1/environments", body);
    assert_int_equal(cli(NULL, 0, "quota set acme hot=none memory_mb=none cpu=none disk_mb=none"), 0);
    free(e1);
    free(e7);
}

static void sandboxes_and_operator_pools(void **state)
{
    (void)state;
    char retry[16], out[4096];
    /* An operator pool closed to acme: sandboxes and environments naming it
     * are refused; beta may use it. */
    assert_int_equal(cli(out, sizeof(out), "pool set bigpool orgs=beta,gamma"), 0);
    assert_int_equal(cli(out, sizeof(out), "pool set bigpool orgs=,x"), 2);
    assert_int_equal(cli(out, sizeof(out), "pool set env_abc orgs=beta"), 2);
    json_t *e = call("POST", "/v1/sandboxes", "{\"environment\":\"bigpool\"}", 403);
    assert_string_equal(s_(json_object_get(e, "error"), "type"), "permission_error");
    assert_string_equal(s_(json_object_get(json_object_get(e, "error"), "details"), "error_code"),
                        "pool_not_allowed");
    json_decref(e);
    e = call("POST", "/v1/environments",
             "{\"name\":\"p\",\"metadata\":{\"warmpool.pool\":\"bigpool\"}}", 403);
    json_decref(e);
    json_decref(call_as("sk-beta", "POST", "/v1/environments",
                        "{\"name\":\"p\",\"metadata\":{\"warmpool.pool\":\"bigpool\"}}", 200, NULL, 0));
    json_decref(call_as("sk-beta", "POST", "/v1/sandboxes", "{\"environment\":\"bigpool\"}", 200,
                        NULL, 0));
    /* Live sandboxes. Without a node, a claim from a published environment
     * waits for one (it stays provisioning); one nobody serves fails at once
     * and stops counting. */
    char sb[256];
    char *env = new_id("/v1/environments", "{\"name\":\"sb\",\"metadata\":{\"warmpool.min_hot\":\"0\"}}");
    snprintf(sb, sizeof(sb), "{\"environment\":\"%s\"}", env);
    assert_int_equal(cli(NULL, 0, "quota set acme sandboxes=2"), 0);
    json_decref(call("POST", "/v1/sandboxes", "{\"environment\":\"openpool\"}", 200));
    json_decref(call("POST", "/v1/sandboxes", sb, 200));
    json_t *s2 = call("POST", "/v1/sandboxes", sb, 200);
    assert_quota(call_as("sk-acme", "POST", "/v1/sandboxes", sb, 429, retry, sizeof(retry)),
                 "sandboxes", retry);
    assert_int_equal(cli(out, sizeof(out), "quota show"), 0);
    assert_non_null(strstr(out, "2 used of 2"));
    assert_non_null(strstr(out, "pool bigpool: beta,gamma"));
    /* Raising the quota lets one more in. */
    assert_int_equal(cli(NULL, 0, "quota set acme sandboxes=3"), 0);
    json_decref(s2);
    /* A session id the pool cannot take is refused before the quota
     * counts anything (it was a 503 that held the slot for a minute). */
    char bad[512], long_sid[201];
    memset(long_sid, 's', 200);
    long_sid[200] = '\0';
    snprintf(bad, sizeof(bad), "{\"environment\":\"%s\",\"session_id\":\"%s\"}", env, long_sid);
    json_decref(call("POST", "/v1/sandboxes", bad, 400));
    snprintf(bad, sizeof(bad), "{\"environment\":\"%s\",\"session_id\":\"\"}", env);
    json_decref(call("POST", "/v1/sandboxes", bad, 400));
    json_decref(call("POST", "/v1/sandboxes", sb, 200));
    assert_int_equal(cli(out, sizeof(out), "quota show"), 0);
    assert_non_null(strstr(out, "3 used of 3"));
    assert_int_equal(cli(NULL, 0, "quota set acme sandboxes=none"), 0);
    free(env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(live_sessions_quota),
        cmocka_unit_test(hot_clones_memory_cpu_disk),
        cmocka_unit_test(sandboxes_and_operator_pools),
    };
    return cmocka_run_group_tests_name("sched_quota", tests, group_setup, group_teardown);
}
