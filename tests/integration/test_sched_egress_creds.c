/* test_sched_egress_creds.c - what the API accepts as an environment_variable
 * credential, now that the egress proxy (pool/egress.c) acts on it: each
 * allowed_hosts entry a bare host name, an IPv4 address or a "*." wildcard
 * (managed-agents-api.md 17.2), secret_name a variable name, injection_location
 * booleans with at least one enabled (17.3). Refusals are 400
 * invalid_request_error and store nothing; a good credential still works. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/testlib.h"
#include "lib/sched_testlib.h"

static struct th_redis R;
static struct th_sched S;

#define KEY "sk-acme"

static int status_of(const char *method, const char *path, const char *body, char **out)
{
    struct th_resp r;
    assert_int_equal(th_http(S.port, method, path, KEY, body, &r), 0);
    int st = r.status;
    if (out)
        *out = strdup(r.body ? r.body : "");
    th_resp_free(&r);
    return st;
}

static int group_setup(void **state)
{
    (void)state;
    return th_stack_start(&R, &S, "--rate-create", "0", "--rate-read", "0", (char *)NULL);
}

static int group_teardown(void **state)
{
    (void)state;
    return th_stack_stop(&R, &S);
}

static void bad_credentials_are_refused(void **state)
{
    char path[256], body[1024], *out = NULL;
    (void)state;
    assert_int_equal(status_of("POST", "/v1/vaults", "{\"display_name\":\"v\"}", &out), 200);
    json_t *v = json_loads(out, 0, NULL);
    free(out);
    snprintf(path, sizeof(path), "/v1/vaults/%s/credentials",
             json_string_value(json_object_get(v, "id")));
    json_decref(v);

    static const char *const bad_hosts[] = { "https://api.example.com", "api.example.com:443",
                                             "api.example.com/v1", "2001:db8::1", "*",
                                             "*example.com", "" };
    for (size_t i = 0; i < sizeof(bad_hosts) / sizeof(bad_hosts[0]); i++) {
        snprintf(body, sizeof(body),
                 "{\"auth\":{\"type\":\"environment_variable\",\"secret_name\":\"T\","
                 "\"secret_value\":\"s\",\"networking\":{\"type\":\"limited\","
                 "\"allowed_hosts\":[\"ok.example.com\",\"%s\"]}}}", bad_hosts[i]);
        int st = status_of("POST", path, body, &out);
        if (st != 400 || !strstr(out, "invalid_request_error") || !strstr(out, "allowed_hosts"))
            fail_msg("allowed host \"%s\": %d %s", bad_hosts[i], st, out);
        free(out);
    }
    static const char *const bad_rest[] = {
        "\"secret_name\":\"1T\",\"secret_value\":\"s\",\"networking\":{\"type\":\"unrestricted\"}",
        "\"secret_name\":\"A-B\",\"secret_value\":\"s\",\"networking\":{\"type\":\"unrestricted\"}",
        "\"secret_name\":\"T\",\"secret_value\":\"s\",\"networking\":{\"type\":\"unrestricted\"},"
        "\"injection_location\":{\"body\":false,\"header\":false}",
        "\"secret_name\":\"T\",\"secret_value\":\"s\",\"networking\":{\"type\":\"unrestricted\"},"
        "\"injection_location\":{\"body\":\"yes\"}",
        "\"secret_name\":\"T\",\"secret_value\":\"s\",\"networking\":{\"type\":\"unrestricted\"},"
        "\"injection_location\":{\"query\":true}",
    };
    for (size_t i = 0; i < sizeof(bad_rest) / sizeof(bad_rest[0]); i++) {
        snprintf(body, sizeof(body), "{\"auth\":{\"type\":\"environment_variable\",%s}}",
                 bad_rest[i]);
        int st = status_of("POST", path, body, &out);
        if (st != 400 || !strstr(out, "invalid_request_error"))
            fail_msg("%s: %d %s", bad_rest[i], st, out);
        free(out);
    }
    /* Nothing of them was stored. */
    assert_int_equal(status_of("GET", path, NULL, &out), 200);
    v = json_loads(out, 0, NULL);
    free(out);
    assert_int_equal(json_array_size(json_object_get(v, "data")), 0);
    json_decref(v);

    /* Good entries: exact, wildcard, IPv4; then an update may not turn
     * both injection places off. */
    assert_int_equal(status_of("POST", path,
                               "{\"auth\":{\"type\":\"environment_variable\",\"secret_name\":"
                               "\"API_TOKEN\",\"secret_value\":\"s\",\"networking\":{\"type\":"
                               "\"limited\",\"allowed_hosts\":[\"api.example.com\","
                               "\"*.example.org\",\"203.0.113.7\"]},\"injection_location\":"
                               "{\"header\":true}}}", &out), 200);
    v = json_loads(out, 0, NULL);
    free(out);
    char cpath[300];
    snprintf(cpath, sizeof(cpath), "%s/%s", path, json_string_value(json_object_get(v, "id")));
    json_decref(v);
    int st = status_of("POST", cpath,
                       "{\"auth\":{\"type\":\"environment_variable\",\"injection_location\":"
                       "{\"header\":false}}}", &out);
    if (st != 400)
        fail_msg("both injection places off: %d %s", st, out);
    free(out);
    assert_int_equal(status_of("POST", cpath,
                               "{\"auth\":{\"type\":\"environment_variable\",\"injection_location\":"
                               "{\"body\":true,\"header\":false}}}", &out), 200);
    v = json_loads(out, 0, NULL);
    free(out);
    json_t *inj = json_object_get(json_object_get(v, "auth"), "injection_location");
    assert_true(json_is_true(json_object_get(inj, "body")));
    assert_true(json_is_false(json_object_get(inj, "header")));
    json_decref(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_credentials_are_refused),
    };
    return cmocka_run_group_tests_name("sched_egress_creds", tests, group_setup, group_teardown);
}
