/* test_worker.c - warmpool-node as a self-hosted environment's worker: a
 * real Redis, a scheduler with the brain on against the local model
 * server, a self_hosted API environment with an issued key, and
 * warmpool-node --worker serving its work queue with sandboxes of its own
 * pool. The session's bash calls run in those sandboxes. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
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
#include "base/err.h"
#include "base/fs.h"
#include "base/timeutil.h"

#define KEY "sk-acme"
#define POOL_ENV "wenv"

static struct th_redis R;
static struct th_sched A;
static struct msrv_proc M;
static char *DIR_;
static char TMPL[1024];
static pid_t NODE;
static char ENV_ID[64], AGENT_ID[64], ENV_KEY[256];

static const char script[] =
    "{\"seed\":1,\"ttft_ms\":20,\"tokens_per_s\":200,\"chunk_tokens\":4,"
    "\"conversations\":["
    " {\"match\":\"run bash\",\"turns\":["
    "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\","
    "     \"input\":{\"command\":\"echo from-$(hostname)-$((6*7)); pwd\"}}]},"
    "   {\"text\":\"All done here.\"}]},"
    " {\"match\":\"slow bash\",\"turns\":["
    "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\","
    "     \"input\":{\"command\":\"sleep 3; echo slow-$(hostname)\"}}]},"
    "   {\"text\":\"Slow one done.\"}]},"
    " {\"turns\":[\"Hello!\"]}]}";

/* ---- HTTP helpers ---- */

static json_t *api(const char *method, const char *path, const char *body, int want)
{
    return th_api(A.port, KEY, method, path, body, want);
}

static const char *s_(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static char *new_session(void)
{
    char body[256];
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", AGENT_ID, ENV_ID);
    json_t *s = api("POST", "/v1/sessions", body, 200);
    char *id = strdup(s_(s, "id"));
    json_decref(s);
    return id;
}

static void send_text(const char *sid, const char *text)
{
    char path[128], body[512];
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", sid);
    snprintf(body, sizeof(body),
             "{\"events\":[{\"type\":\"user.message\",\"content\":[{\"type\":\"text\",\"text\":\"%s\"}]}]}",
             text);
    json_decref(api("POST", path, body, 200));
}

/* The session's whole history once it holds an idle with stop reason
 * `stop` after a user.tool_result (owned), or fail after timeout_ms. */
static json_t *history_until(const char *sid, const char *stop, int timeout_ms)
{
    char path[160];
    uint64_t end = wp_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    snprintf(path, sizeof(path), "/v1/sessions/%s/events?limit=1000", sid);
    for (;;) {
        json_t *o = api("GET", path, NULL, 200), *data = json_object_get(o, "data"), *e;
        size_t i;
        bool result = false;
        json_array_foreach(data, i, e) {
            if (!strcmp(s_(e, "type"), "user.tool_result"))
                result = true;
            if (result && !strcmp(s_(e, "type"), "session.status_idle") &&
                !strcmp(s_(json_object_get(e, "stop_reason"), "type"), stop)) {
                json_incref(data);
                json_decref(o);
                return data;
            }
        }
        if (wp_now_ns() > end) {
            char *d = json_dumps(data, JSON_COMPACT);
            fail_msg("no %s idle after a tool result within %d ms: %s", stop, timeout_ms, d);
        }
        json_decref(o);
        th_msleep(100);
    }
}

static json_t *first_of(json_t *evs, const char *type)
{
    json_t *e;
    size_t i;
    json_array_foreach(evs, i, e) if (!strcmp(s_(e, "type"), type)) return e;
    return NULL;
}

/* The session's work item's state, via the environment's work list. */
static void work_state(const char *sid, char *out, size_t cap)
{
    char path[160];
    snprintf(path, sizeof(path), "/v1/environments/%s/work?limit=100", ENV_ID);
    json_t *o = api("GET", path, NULL, 200), *w;
    size_t i;
    snprintf(out, cap, "none");
    json_array_foreach(json_object_get(o, "data"), i, w) {
        if (!strcmp(s_(json_object_get(w, "data"), "id") ?: "", sid))
            snprintf(out, cap, "%s", s_(w, "state"));
    }
    json_decref(o);
}

/* ---- a node in worker mode ---- */

/* warmpool-node --id id --worker ... with the key in the environment
 * (never a flag); lease_ttl > 0 asks for that lease TTL; output appended
 * to DIR_/node-<id>.log. Nodes that only check failures keep no hot clones
 * and use n1's state dir once n1 built the image: a node stopped during
 * an image build leaves the build's sandbox behind (node.c). */
static pid_t spawn_worker_in(const char *id, const char *state_of, int hot, const char *url, const char *key,
                             int lease_ttl)
{
    char log[1100], state[1100], env[1100], ttl[16];
    snprintf(log, sizeof(log), "%s/node-%s.log", DIR_, id);
    snprintf(state, sizeof(state), "%s/state-%s", DIR_, state_of);
    snprintf(env, sizeof(env), "%s:%d:%d", TMPL, hot, hot);
    snprintf(ttl, sizeof(ttl), "%d", lease_ttl);
    /* The key reaches the node through its environment only: set here for
     * the fork, gone again at once (this test is single-threaded). */
    if (key)
        setenv("WARMPOOL_ENVIRONMENT_KEY", key, 1);
    else
        unsetenv("WARMPOOL_ENVIRONMENT_KEY");
    pid_t pid = th_node_start(id, R.port, state, log, "--env", env, "--worker", "--control-plane",
                              url, "--environment", ENV_ID, "--worker-lease-ttl", ttl, (char *)NULL);
    unsetenv("WARMPOOL_ENVIRONMENT_KEY");
    return pid;
}

static pid_t spawn_worker(const char *id, const char *url, const char *key, int lease_ttl)
{
    return spawn_worker_in(id, id, 1, url, key, lease_ttl);
}

static char *read_log(const char *id)
{
    char path[1100];
    snprintf(path, sizeof(path), "%s/node-%s.log", DIR_, id);
    char *s = NULL;
    size_t n;
    if (wp_read_file(path, 1 << 22, &s, &n, NULL) < 0)
        return strdup("");
    return s;
}

/* Exit status of pid within ms, or -1 while it still runs. */
static int wait_exit(pid_t pid, int ms)
{
    int st;
    for (int i = 0; i < ms / 50; i++) {
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        th_msleep(50);
    }
    return -1;
}

static void stop_node(pid_t pid)
{
    kill(pid, SIGTERM);
    if (wait_exit(pid, 15000) < 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
}

static int wait_hot(int n)
{
    return th_wait_hot(R.port, POOL_ENV, n, 60) ? 0 : -1;
}

/* ---- set-up ---- */

static int group_setup(void **state)
{
    char url[128];
    (void)state;

    if (th_redis_start(&R, 0) < 0)
        return -1;
    DIR_ = th_tmpdir("worker");
    if (th_model_spawn_script(&M, DIR_, script, NULL, url, sizeof(url)) < 0)
        return -1;
    if (th_sched_start(&A, R.port, "--model-url", url, NULL) < 0)
        return -1;
    json_t *ag = api("POST", "/v1/agents",
                     "{\"name\":\"w\",\"model\":\"claude-test\",\"tools\":[{\"type\":\"agent_toolset_20260401\"}]}",
                     200);
    snprintf(AGENT_ID, sizeof(AGENT_ID), "%s", s_(ag, "id"));
    json_decref(ag);
    json_t *en = api("POST", "/v1/environments", "{\"name\":\"sh\",\"config\":{\"type\":\"self_hosted\"}}", 200);
    snprintf(ENV_ID, sizeof(ENV_ID), "%s", s_(en, "id"));
    json_decref(en);
    char path[128];
    snprintf(path, sizeof(path), "/v1/environments/%s/keys", ENV_ID);
    json_t *k = api("POST", path, NULL, 200);
    snprintf(ENV_KEY, sizeof(ENV_KEY), "%s", s_(k, "key"));
    json_decref(k);
    if (!ENV_KEY[0])
        return -1;
    /* The pool environment whose sandboxes run the tools (hostname "box"). */
    return th_hands_template(DIR_, POOL_ENV, "box", TMPL, sizeof(TMPL));
}

static int group_teardown(void **state)
{
    (void)state;
    if (NODE > 0)
        stop_node(NODE);
    int rc = th_sched_stop(&A) == 0 ? 0 : -1;
    msrv_stop(&M);
    th_redis_stop(&R);
    if (getenv("WP_KEEP_TMP"))
        fprintf(stderr, "kept %s\n", DIR_);
    else
        th_rmtree(DIR_);
    free(DIR_);
    return rc;
}

/* ---- tests ---- */

/* No key in the environment: a clear configuration error, exit 2. */
static void worker_needs_key(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", A.port);
    pid_t p = spawn_worker("nokey", url, NULL, 0);
    assert_int_equal(wait_exit(p, 10000), 2);
    char *log = read_log("nokey");
    assert_non_null(strstr(log, "WARMPOOL_ENVIRONMENT_KEY"));
    free(log);
}

/* A wrong key is a permanent 401 on poll: the node says so and exits 1. */
static void wrong_key_exits(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", A.port);
    pid_t p = spawn_worker_in("badkey", "n1", 0, url, "wpek_not-a-key", 0);
    int st = wait_exit(p, 15000);
    char *log = read_log("badkey");
    if (st != 1)
        fail_msg("exit %d, log: %s", st, log);
    assert_non_null(strstr(log, "refused the worker"));
    assert_non_null(strstr(log, "HTTP 401"));
    free(log);
}

/* Nothing listens at the control plane: polls back off and go on (the
 * SDK retries network errors); SIGTERM still ends it cleanly. */
static void unreachable_control_plane_retries(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", th_free_port());
    pid_t p = spawn_worker_in("nourl", "n1", 0, url, ENV_KEY, 0);
    th_msleep(3500);
    assert_int_equal(wait_exit(p, 0), -1); /* still running */
    stop_node(p);
    char *log = read_log("nourl");
    assert_non_null(strstr(log, "poll failed"));
    assert_non_null(strstr(log, "again in"));
    assert_null(strstr(log, ENV_KEY)); /* the key is never logged */
    free(log);
}

/* The model calls bash; the node's worker runs it in a sandbox of its own
 * pool (the template's hostname and workdir show) and posts the result;
 * the turn ends; archiving the session ends the work item as stopped. */
static void bash_runs_in_worker_sandbox(void **state)
{
    (void)state;
    char url[64], st[32] = "";
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", A.port);
    NODE = spawn_worker("n1", url, ENV_KEY, 5);
    assert_true(NODE > 0);
    assert_int_equal(wait_hot(1), 0);

    char *sid = new_session();
    send_text(sid, "please run bash");
    json_t *ev = history_until(sid, "end_turn", 60000);
    json_t *use = first_of(ev, "agent.tool_use"), *res = first_of(ev, "user.tool_result");
    assert_non_null(use);
    assert_non_null(res);
    assert_string_equal(s_(res, "tool_use_id"), s_(use, "id"));
    assert_false(json_is_true(json_object_get(res, "is_error")));
    assert_string_equal(s_(json_array_get(json_object_get(res, "content"), 0), "text"), "from-box-42\n/work");
    json_t *idle_ra = NULL, *e;
    size_t i;
    json_array_foreach(ev, i, e) {
        if (!strcmp(s_(e, "type"), "session.status_idle") &&
            !strcmp(s_(json_object_get(e, "stop_reason"), "type"), "requires_action"))
            idle_ra = e;
    }
    assert_non_null(idle_ra); /* the brain waited for the worker */
    json_decref(ev);

    work_state(sid, st, sizeof(st));
    assert_string_equal(st, "active"); /* still attached: idle countdown */
    char path[160];
    snprintf(path, sizeof(path), "/v1/sessions/%s/archive", sid);
    json_decref(api("POST", path, "{}", 200));
    for (int k = 0; k < 100 && strcmp(st, "stopped"); k++) {
        th_msleep(100);
        work_state(sid, st, sizeof(st));
    }
    assert_string_equal(st, "stopped");
    char *log = read_log("n1");
    assert_non_null(strstr(log, "session.status_terminated"));
    assert_null(strstr(log, ENV_KEY));
    free(log);
    free(sid);
}

/* The worker is killed (SIGKILL) while its bash call runs. Its lease (5 s,
 * asked with --worker-lease-ttl) runs out; a new worker (the node started
 * again: another worker id) gets the item back from poll, finds the call
 * unanswered in the history, runs it and the turn ends. */
static void killed_worker_item_reclaimed(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", A.port);
    assert_true(NODE > 0);
    char *sid = new_session();
    send_text(sid, "please run slow bash");
    /* Wait until the worker started the call. */
    char path[160];
    bool running = false;
    for (int k = 0; k < 300 && !running; k++) {
        char *log = read_log("n1");
        running = strstr(log, "running bash") && strstr(log, sid) &&
                  strstr(strstr(log, sid), "running bash");
        free(log);
        if (!running)
            th_msleep(50);
    }
    assert_true(running);
    kill(NODE, SIGKILL);
    waitpid(NODE, NULL, 0);
    NODE = spawn_worker("n1", url, ENV_KEY, 5);
    json_t *ev = history_until(sid, "end_turn", 60000);
    json_t *res = NULL, *e;
    size_t i;
    int results = 0;
    json_array_foreach(ev, i, e) {
        if (!strcmp(s_(e, "type"), "user.tool_result")) {
            res = e;
            results++;
        }
    }
    assert_int_equal(results, 1);
    assert_false(json_is_true(json_object_get(res, "is_error")));
    assert_string_equal(s_(json_array_get(json_object_get(res, "content"), 0), "text"), "slow-box");
    json_decref(ev);
    snprintf(path, sizeof(path), "/v1/sessions/%s/archive", sid);
    json_decref(api("POST", path, "{}", 200));
    free(sid);
}

int main(void)
{
    if (geteuid() != 0) {
        printf("1..0 # SKIP sandboxes need root\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(worker_needs_key),
        cmocka_unit_test(bash_runs_in_worker_sandbox), /* starts n1 (and its image) */
        cmocka_unit_test(wrong_key_exits),
        cmocka_unit_test(unreachable_control_plane_retries),
        cmocka_unit_test(killed_worker_item_reclaimed),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
