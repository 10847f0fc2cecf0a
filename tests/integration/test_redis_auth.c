/* test_redis_auth.c - every client of a Redis that wants a password:
 * the scheduler, a node and the operator's CLI AUTH with the password
 * from a file; without it (or with a wrong one) nothing works and the
 * scheduler says so with a clear status instead of acting on errors. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/sched_testlib.h"
#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "base/fs.h"

#define KEY "sk-acme"
#define PASSWORD "s3cret-pw"

static char *DIR_;
static int PORT;
static char PWFILE[512], BADFILE[512];

static int setup(void **state)
{
    char out[256];
    (void)state;
    DIR_ = th_tmpdir("rauth");
    PORT = th_free_port();
    snprintf(PWFILE, sizeof(PWFILE), "%s/pw", DIR_);
    snprintf(BADFILE, sizeof(BADFILE), "%s/bad", DIR_);
    if (wp_write_file(PWFILE, PASSWORD "\n", strlen(PASSWORD) + 1, 0600, NULL) < 0 ||
        wp_write_file(BADFILE, "nope\n", 5, 0600, NULL) < 0)
        return -1;
    if (th_sh(out, sizeof(out),
              "redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no --requirepass %s "
              "--daemonize yes --dir %s --logfile %s/redis.log",
              PORT, PASSWORD, DIR_, DIR_) != 0)
        return -1;
    for (int i = 0; i < 50; i++, th_msleep(50))
        if (th_sh(out, sizeof(out), "redis-cli -p %d -a %s --no-auth-warning ping", PORT,
                  PASSWORD) == 0 &&
            strstr(out, "PONG"))
            return 0;
    return -1;
}

static int teardown(void **state)
{
    char out[64];
    (void)state;
    th_sh(out, sizeof(out), "redis-cli -p %d -a %s --no-auth-warning shutdown nosave", PORT,
          PASSWORD);
    th_rmtree(DIR_);
    free(DIR_);
    return 0;
}

/* Status of GET /v1/agents, retried while the scheduler connects. */
static int agents_status(struct th_sched *s, int want)
{
    struct th_resp r;
    int st = -1;
    for (int i = 0; i < 40; i++, th_msleep(50)) {
        if (th_http(s->port, "GET", "/v1/agents", KEY, NULL, &r) < 0)
            continue;
        st = r.status;
        th_resp_free(&r);
        if (st == want)
            break;
    }
    return st;
}

static void scheduler_auths_or_says_it_cannot(void **state)
{
    struct th_sched s;
    struct th_resp r;
    (void)state;

    assert_int_equal(th_sched_start(&s, PORT, "--redis-password-file", PWFILE, NULL), 0);
    assert_int_equal(agents_status(&s, 200), 200);
    assert_int_equal(th_http(s.port, "POST", "/v1/agents", KEY,
                             "{\"name\":\"a\",\"model\":\"claude-x\"}", &r), 0);
    assert_int_equal(r.status, 200);
    th_resp_free(&r);
    assert_int_equal(th_sched_stop(&s), 0);

    /* Without the password, or with a wrong one: never a success. */
    assert_int_equal(th_sched_start(&s, PORT, NULL), 0);
    assert_true(agents_status(&s, 200) >= 500);
    assert_int_equal(th_sched_stop(&s), 0);
    assert_int_equal(th_sched_start(&s, PORT, "--redis-password-file", BADFILE, NULL), 0);
    assert_true(agents_status(&s, 200) >= 500);
    assert_int_equal(th_sched_stop(&s), 0);
    /* A password file that is not there: refused at start. */
    assert_int_equal(th_sched_start(&s, PORT, "--redis-password-file", "/nonexistent/pw", NULL), -1);
}

static void node_and_cli_auth(void **state)
{
    char tmpl[1024], env[1200], log[1100], state_dir[1100], out[4096];
    (void)state;

    assert_int_equal(th_hands_template(DIR_, "authenv", NULL, tmpl, sizeof(tmpl)), 0);
    snprintf(env, sizeof(env), "%s:0:0", tmpl);
    snprintf(log, sizeof(log), "%s/node.log", DIR_);
    snprintf(state_dir, sizeof(state_dir), "%s/state", DIR_);
    pid_t node = th_node_start("authnode", PORT, state_dir, log, "--env", env, "--no-api-envs",
                               "--redis-password-file", PWFILE, NULL);
    assert_true(node > 0);
    bool registered = false;
    for (int i = 0; i < 100 && !registered; i++, th_msleep(100)) {
        th_sh(out, sizeof(out), "redis-cli -p %d -a %s --no-auth-warning sismember wp:nodes authnode",
              PORT, PASSWORD);
        registered = atoi(out) == 1;
    }
    assert_true(registered);
    int rc = th_sh(out, sizeof(out), "%s/warmpool --redis 127.0.0.1:%d --redis-password-file %s pool status",
                   th_build_dir(), PORT, PWFILE);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "authnode"));
    rc = th_sh(out, sizeof(out), "%s/warmpool --redis 127.0.0.1:%d --redis-password-file %s pool status 2>&1",
               th_build_dir(), PORT, BADFILE);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(out, "AUTH"));
    kill(node, SIGTERM);
    waitpid(node, NULL, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(scheduler_auths_or_says_it_cannot),
        cmocka_unit_test(node_and_cli_auth),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
