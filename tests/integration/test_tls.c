/* test_tls.c - the scheduler serving HTTPS with a certificate and key from
 * its config: a self-signed certificate made by openssl, curl checking it
 * (no -k), the API and an SSE stream over TLS, a plain-HTTP client turned
 * away without harm, and bad certificate settings refused at start. */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/sched_testlib.h"
#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "base/err.h"
#include "base/fs.h"

#define KEY "sk-acme"

static struct th_redis R;
static struct th_sched S;
static char *DIR_;
static char CERT[1100], PKEY[1100];

static int group_setup(void **state)
{
    char out[4096];
    (void)state;
    DIR_ = th_tmpdir("tls");
    snprintf(CERT, sizeof(CERT), "%s/cert.pem", DIR_);
    snprintf(PKEY, sizeof(PKEY), "%s/key.pem", DIR_);
    if (th_sh(out, sizeof(out),
              "openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost "
              "-addext subjectAltName=IP:127.0.0.1,DNS:localhost -days 2 -keyout %s -out %s 2>&1",
              PKEY, CERT) != 0)
        return -1;
    if (th_redis_start(&R, 0) < 0)
        return -1;
    /* From a config file, as an install would. */
    char conf[1200], text[3000];
    struct wp_err err;
    snprintf(conf, sizeof(conf), "%s/scheduler.conf", DIR_);
    int n = snprintf(text, sizeof(text), "# HTTPS\ntls-cert %s\ntls-key %s\n", CERT, PKEY);
    if (wp_write_file(conf, text, (size_t)n, 0600, &err) < 0)
        return -1;
    return th_sched_start(&S, R.port, "--config", conf, NULL);
}

static int group_teardown(void **state)
{
    (void)state;
    th_sched_stop(&S);
    th_redis_stop(&R);
    th_rmtree(DIR_);
    free(DIR_);
    return 0;
}

/* curl over HTTPS, the certificate checked against ours. Returns the exit
 * status; the body (and -w's status line) in out. */
static int curl(char *out, size_t cap, const char *method, const char *path, const char *body)
{
    return th_sh(out, cap,
                 "curl -sS --max-time 10 --cacert %s -X %s -H 'x-api-key: " KEY "' "
                 "-H 'content-type: application/json' %s%s%s -w '\\nstatus=%%{http_code}' "
                 "'https://127.0.0.1:%d%s' 2>&1",
                 CERT, method, body ? "--data '" : "", body ? body : "", body ? "'" : "", S.port, path);
}

/* The top-level "id" of the JSON body before curl's status line. */
static void id_of(const char *out, char *id, size_t cap)
{
    const char *st = strstr(out, "\nstatus=");
    assert_non_null(st);
    json_t *o = json_loadb(out, (size_t)(st - out), 0, NULL);
    assert_non_null(o);
    assert_non_null(json_string_value(json_object_get(o, "id")));
    snprintf(id, cap, "%s", json_string_value(json_object_get(o, "id")));
    json_decref(o);
}

static void api_and_stream_over_https(void **state)
{
    static char out[65536];
    char agent[64], env[64], sid[64], path[200], body[512];
    (void)state;

    assert_int_equal(curl(out, sizeof(out), "POST", "/v1/agents",
                          "{\"name\":\"t\",\"model\":\"claude-test\"}"), 0);
    assert_non_null(strstr(out, "status=200"));
    id_of(out, agent, sizeof(agent));
    assert_int_equal(curl(out, sizeof(out), "POST", "/v1/environments",
                          "{\"name\":\"tls-env\",\"config\":{\"type\":\"cloud\"}}"), 0);
    id_of(out, env, sizeof(env));
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", agent, env);
    assert_int_equal(curl(out, sizeof(out), "POST", "/v1/sessions", body), 0);
    if (!strstr(out, "status=200"))
        fail_msg("session: %s", out);
    id_of(out, sid, sizeof(sid));
    /* A stream over TLS: curl in the background, then an event. */
    char stream[1200];
    snprintf(stream, sizeof(stream), "%s/stream.txt", DIR_);
    snprintf(path, sizeof(path), "/v1/sessions/%s/events/stream", sid);
    pid_t pid = fork();
    if (pid == 0) {
        char cmd[2048];
        snprintf(cmd, sizeof(cmd),
                 "exec curl -sS -N --max-time 6 --cacert %s -H 'x-api-key: " KEY "' "
                 "'https://127.0.0.1:%d%s' > %s 2>&1", CERT, S.port, path, stream);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    th_msleep(800);
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", sid);
    assert_int_equal(curl(out, sizeof(out), "POST", path,
                          "{\"events\":[{\"type\":\"user.message\",\"content\":[{\"type\":\"text\","
                          "\"text\":\"over tls\"}]}]}"), 0);
    assert_non_null(strstr(out, "status=200"));
    char *got = NULL;
    for (int i = 0; i < 40; i++, th_msleep(100)) {
        free(got);
        got = NULL;
        if (wp_read_file(stream, 1 << 20, &got, NULL, NULL) == 0 && strstr(got, "over tls"))
            break;
    }
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    assert_non_null(got);
    if (!strstr(got, "over tls") || !strstr(got, "user.message"))
        fail_msg("stream over TLS: %s", got);
    free(got);
    /* The history, too. */
    assert_int_equal(curl(out, sizeof(out), "GET", path, NULL), 0);
    assert_non_null(strstr(out, "over tls"));
}

static void plain_http_is_turned_away(void **state)
{
    char out[4096];
    (void)state;
    int rc = th_sh(out, sizeof(out), "curl -sS --max-time 5 -H 'x-api-key: " KEY "' "
                                     "'http://127.0.0.1:%d/v1/agents' 2>&1", S.port);
    assert_int_not_equal(rc, 0);
    assert_null(strstr(out, "\"data\""));
    /* A client that does not check the certificate still talks TLS; and the
     * server goes on serving checked clients. */
    assert_int_equal(curl(out, sizeof(out), "GET", "/v1/agents", NULL), 0);
    assert_non_null(strstr(out, "status=200"));
    /* A certificate for another name is refused by the client. */
    rc = th_sh(out, sizeof(out), "curl -sS --max-time 5 --cacert %s "
                                 "--resolve other.example:%d:127.0.0.1 'https://other.example:%d/v1/agents' 2>&1",
               CERT, S.port, S.port);
    assert_int_not_equal(rc, 0);
}

static void bad_tls_settings_refused(void **state)
{
    char out[4096], other[1200];
    (void)state;
    const char *bin = th_build_dir();
    /* Only one of the two. */
    assert_int_equal(th_sh(out, sizeof(out), "%s/warmpool-scheduler --listen 127.0.0.1:0 --tls-cert %s 2>&1",
                           bin, CERT), 2);
    assert_non_null(strstr(out, "both --tls-cert and --tls-key"));
    /* A missing file, named. */
    assert_int_equal(th_sh(out, sizeof(out), "%s/warmpool-scheduler --listen 127.0.0.1:0 --redis 127.0.0.1:%d "
                                             "--tls-cert %s/nope.pem --tls-key %s 2>&1", bin, R.port, DIR_, PKEY), 1);
    assert_non_null(strstr(out, "nope.pem"));
    /* A key that is not the certificate's. */
    snprintf(other, sizeof(other), "%s/other.pem", DIR_);
    assert_int_equal(th_sh(out, sizeof(out), "openssl genrsa -out %s 2048 2>&1", other), 0);
    assert_int_equal(th_sh(out, sizeof(out), "%s/warmpool-scheduler --listen 127.0.0.1:0 --redis 127.0.0.1:%d "
                                             "--tls-cert %s --tls-key %s 2>&1", bin, R.port, CERT, other), 1);
    assert_non_null(strstr(out, "tls-key"));
    assert_true(strstr(out, "mismatch") || strstr(out, "does not match"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(api_and_stream_over_https),
        cmocka_unit_test(plain_http_is_turned_away),
        cmocka_unit_test(bad_tls_settings_refused),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
