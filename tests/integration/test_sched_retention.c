/* test_sched_retention.c - a session's log is capped with a clear error
 * (input refused whole, nothing trimmed or lost) and an archived session
 * expires after the operator's --archived-session-ttl (issue 15 defect 12).
 * A scheduler (no brain) and a real redis-server. */
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

static json_t *call(const char *method, const char *path, const char *body, int want)
{
    json_t *j = th_call(S.port, "sk-acme", method, path, body, want);
    assert_non_null(j);
    return j;
}

static const char *s_(json_t *j, const char *k)
{
    return json_string_value(json_object_get(j, k));
}

static char *new_id(const char *path, const char *body)
{
    json_t *j = call("POST", path, body, 200);
    char *id = strdup(s_(j, "id"));
    json_decref(j);
    return id;
}

static int group_setup(void **state)
{
    (void)state;
    return th_stack_start(&R, &S, "--rate-create", "0", "--rate-read", "0", "--brain", "off",
                          "--session-log-max", "10", "--archived-session-ttl", "1", (char *)NULL);
}

static int group_teardown(void **state)
{
    (void)state;
    return th_stack_stop(&R, &S);
}

static char *new_session(void)
{
    static char agent[64], env[64];
    if (!agent[0]) {
        char *a = new_id("/v1/agents", "{\"name\":\"r\",\"model\":\"claude-sonnet-4-5\"}");
        char *e = new_id("/v1/environments", "{\"name\":\"r\",\"config\":{\"type\":\"self_hosted\"}}");
        snprintf(agent, sizeof(agent), "%s", a);
        snprintf(env, sizeof(env), "%s", e);
        free(a);
        free(e);
    }
    char body[256];
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", agent, env);
    return new_id("/v1/sessions", body);
}

static void log_is_capped_with_a_clear_error(void **state)
{
    (void)state;
    char path[256], body[256];
    char *sid = new_session();
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", sid);
    int sent = 0;
    json_t *e = NULL;
    for (int i = 0; i < 20 && !e; i++) {
        snprintf(body, sizeof(body),
                 "{\"events\":[{\"type\":\"user.message\",\"content\":[{\"type\":\"text\",\"text\":\"m%d\"}]}]}",
                 i);
        struct th_resp r;
        assert_int_equal(th_http(S.port, "POST", path, "sk-acme", body, &r), 0);
        if (r.status == 200)
            sent++;
        else {
            assert_int_equal(r.status, 400);
            e = json_loads(r.body, 0, NULL);
        }
        th_resp_free(&r);
    }
    assert_non_null(e);
    json_t *err = json_object_get(e, "error");
    assert_string_equal(s_(err, "type"), "invalid_request_error");
    assert_string_equal(s_(json_object_get(err, "details"), "error_code"), "session_log_full");
    assert_non_null(strstr(s_(err, "message"), "at most 10"));
    assert_non_null(strstr(s_(err, "message"), "nothing was appended"));
    json_decref(e);
    /* The history is whole: every accepted message, none of the refused. */
    snprintf(path, sizeof(path), "/v1/sessions/%s/events?limit=100&types[]=user.message", sid);
    json_t *h = call("GET", path, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(h, "data")), (size_t)sent);
    assert_true(sent >= 5 && sent < 10);
    json_decref(h);
    free(sid);
}

static void archived_session_expires(void **state)
{
    (void)state;
    char path[256], out[256];
    char *sid = new_session(), *keep = new_session();
    snprintf(path, sizeof(path), "/v1/sessions/%s/archive", sid);
    json_t *a = call("POST", path, "{}", 200);
    assert_false(json_is_null(json_object_get(a, "archived_at")));
    json_decref(a);
    snprintf(path, sizeof(path), "/v1/sessions/%s", sid);
    json_decref(call("GET", path, NULL, 200)); /* still there at once */
    bool gone = false;
    for (int i = 0; i < 60 && !gone; i++) {
        usleep(100000);
        struct th_resp r;
        assert_int_equal(th_http(S.port, "GET", path, "sk-acme", NULL, &r), 0);
        gone = r.status == 404;
        th_resp_free(&r);
    }
    assert_true(gone);
    th_sh(out, sizeof(out), "redis-cli -p %d EXISTS 'wp:events:{%s}' 'wp:obj:{%s}'", R.port, sid, sid);
    assert_int_equal(atoi(out), 0);
    /* Listings skip it (and drop its index entry); the live one stays. */
    json_t *l = call("GET", "/v1/sessions?include_archived=true&limit=100", NULL, 200);
    bool saw_keep = false;
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(l, "data"), i, s) {
        assert_string_not_equal(s_(s, "id"), sid);
        saw_keep |= !strcmp(s_(s, "id"), keep);
    }
    assert_true(saw_keep);
    json_decref(l);
    th_sh(out, sizeof(out), "redis-cli -p %d ZSCORE 'wp:idx:{acme}:session' %s", R.port, sid);
    assert_int_equal(strlen(out) <= 1 ? 0 : 1, 0);
    snprintf(path, sizeof(path), "/v1/sessions/%s", keep);
    json_decref(call("GET", path, NULL, 200)); /* not archived: kept */
    free(sid);
    free(keep);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(log_is_capped_with_a_clear_error),
        cmocka_unit_test(archived_session_expires),
    };
    return cmocka_run_group_tests_name("sched_retention", tests, group_setup, group_teardown);
}
