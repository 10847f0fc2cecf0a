/* test_brain.c - the brain end to end: a real Redis, a real node with
 * hands sandboxes, scheduler processes with the brain on, the local model
 * server, plain HTTP and SSE as a client sees them. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/model_testlib.h"
#include "lib/sched_testlib.h"
#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "modelserver/msrv_spawn.h"
#include "sse_client.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/timeutil.h"

#define KEY "sk-acme"

static struct th_redis R;
static struct th_sched A, B;
static struct msrv_proc M;
static char *DIR_;
static pid_t NODE;
static char ENV_ID[64], AGENT_ID[64];

static const char script[] =
    "{\"seed\":1,\"ttft_ms\":30,\"tokens_per_s\":25,\"chunk_tokens\":1,"
    "\"conversations\":["
    " {\"match\":\"run bash\",\"turns\":["
    "   {\"content\":[{\"type\":\"text\",\"text\":\"Let me look at the sandbox.\"},"
    "     {\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":\"echo from-$(hostname)-$((6*7)); pwd\"}}]},"
    "   {\"text\":\"All done here.\"}]},"
    " {\"match\":\"slow\",\"turns\":[{\"text\":\"one two three four five six seven eight nine ten "
    "eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty "
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty one two three four five six seven eight nine ten\","
    "   \"ttft_ms\":20}]},"
    " {\"match\":\"twice\",\"turns\":["
    "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":\"echo first > /work/f; cat /work/f\"}}]},"
    "   {\"text\":\"one\"},"
    "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":\"cat /work/f || echo fresh\"}}]},"
    "   {\"text\":\"two\"}]},"
    " {\"match\":\"custom\",\"turns\":["
    "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"lookup_order\",\"input\":{\"order\":\"42\"}}]},"
    "   {\"text\":\"Your order has shipped.\"}]},"
    " {\"turns\":[\"Hello!\"]}]}";

/* ---- HTTP helpers ---- */

static json_t *call(int port, const char *method, const char *path, const char *body, int want)
{
    return th_api(port, KEY, method, path, body, want);
}

static const char *s_(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* ---- an SSE client that records when each event arrived ---- */

static void sse_open(struct sse *s, int port, const char *sid)
{
    sse_open_as(s, port, KEY, sid, "?event_deltas%5B%5D=agent.message");
}

/* Read until the first event_delta (true) or timeout. */
static bool wait_delta(struct sse *s, int timeout_ms)
{
    json_t *e;
    while ((e = sse_next(s, timeout_ms))) {
        bool d = !strcmp(s_(e, "type"), "event_delta");
        json_decref(e);
        if (d)
            return true;
    }
    return false;
}

/* Events until (and with) the first session.status_idle whose stop
 * reason is `stop` (or any idle when stop is NULL). */
static json_t *until_idle(struct sse *s, const char *stop, int timeout_ms)
{
    json_t *all = json_array();
    uint64_t end = wp_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        int left = (int)((int64_t)(end - wp_now_ns()) / 1000000);
        json_t *e = left > 0 ? sse_next(s, left) : NULL;
        if (!e) {
            char *d = json_dumps(all, JSON_COMPACT);
            fail_msg("no idle (%s) within %d ms; got %s", stop ? stop : "any", timeout_ms, d);
        }
        json_object_set_new(e, "_t", json_integer((json_int_t)(wp_now_ns() / 1000)));
        json_array_append_new(all, e);
        if (!strcmp(s_(e, "type"), "session.status_idle")) {
            const char *sr = s_(json_object_get(e, "stop_reason"), "type");
            if (!stop || !strcmp(sr, stop))
                return all;
        }
    }
}

static int index_of(json_t *evs, const char *type, int from)
{
    for (size_t i = (size_t)from; i < json_array_size(evs); i++)
        if (!strcmp(s_(json_array_get(evs, i), "type"), type))
            return (int)i;
    return -1;
}

static int count_of(json_t *evs, const char *type)
{
    int n = 0;
    for (size_t i = 0; i < json_array_size(evs); i++)
        n += !strcmp(s_(json_array_get(evs, i), "type"), type);
    return n;
}

static char *new_session(int port)
{
    char body[256];
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", AGENT_ID, ENV_ID);
    json_t *s = call(port, "POST", "/v1/sessions", body, 200);
    char *id = strdup(s_(s, "id"));
    json_decref(s);
    return id;
}

static void send_text(int port, const char *sid, const char *text)
{
    th_send_text(port, KEY, sid, text);
}

/* ---- set-up: Redis, model server, two schedulers, an API environment
 * served by a node ---- */

static int group_setup(void **state)
{
    char tmpl[1024], env[1200], url[128];
    (void)state;

    if (th_redis_start(&R, 0) < 0)
        return -1;
    DIR_ = th_tmpdir("brain");
    if (th_model_spawn_script(&M, DIR_, script, NULL, url, sizeof(url)) < 0)
        return -1;
    if (th_sched_start(&A, R.port, "--model-url", url, "--brain-lease-ms", "1500", NULL) < 0 ||
        th_sched_start(&B, R.port, "--model-url", url, "--brain-lease-ms", "1500", NULL) < 0)
        return -1;
    json_t *ag = call(A.port, "POST", "/v1/agents",
                      "{\"name\":\"t\",\"model\":\"claude-test\",\"system\":\"be brief\","
                      "\"tools\":[{\"type\":\"agent_toolset_20260401\"},"
                      "{\"type\":\"custom\",\"name\":\"lookup_order\",\"description\":\"orders\","
                      "\"input_schema\":{\"type\":\"object\",\"properties\":{\"order\":{\"type\":\"string\"}}}}]}",
                      200);
    snprintf(AGENT_ID, sizeof(AGENT_ID), "%s", s_(ag, "id"));
    json_decref(ag);
    json_t *en = call(A.port, "POST", "/v1/environments",
                      "{\"name\":\"brain-env\",\"config\":{\"type\":\"cloud\"},"
                      "\"metadata\":{\"warmpool.pool\":\"brainpool\"}}", 200);
    snprintf(ENV_ID, sizeof(ENV_ID), "%s", s_(en, "id"));
    json_decref(en);

    /* The operator's pool environment that serves it (metadata
     * warmpool.pool): a node config template, not one derived from the API. */
    if (th_hands_template(DIR_, "brainpool", "box", tmpl, sizeof(tmpl)) < 0)
        return -1;
    snprintf(env, sizeof(env), "%s:2:2", tmpl);
    if ((NODE = th_node_spawn(DIR_, "n1", R.port, env)) < 0)
        return -1;
    return th_wait_hot(R.port, "brainpool", 2, 30) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    int rc = 0;
    if (A.pid > 0)
        th_sched_stop(&A);
    /* A clean drain (and, under ASan, no leak at exit) with brains running. */
    if (th_sched_stop(&B) != 0) {
        fprintf(stderr, "scheduler B did not exit cleanly\n");
        rc = -1;
    }
    if (NODE > 0) {
        kill(NODE, SIGCONT);
        kill(NODE, SIGTERM);
        waitpid(NODE, NULL, 0);
    }
    msrv_stop(&M);
    th_redis_stop(&R);
    th_rmtree(DIR_);
    free(DIR_);
    return rc;
}

/* ---- tests ---- */

/* The model asks for bash: it runs in the session's sandbox and the turn
 * ends, every event in order, the first token streamed as a delta. */
static void bash_turn_runs_in_sandbox(void **state)
{
    (void)state;
    char *sid = new_session(A.port);
    struct sse s;
    sse_open(&s, A.port, sid);
    send_text(A.port, sid, "please run bash");
    json_t *ev = until_idle(&s, "end_turn", 30000);

    int run = index_of(ev, "session.status_running", 0);
    int span = index_of(ev, "span.model_request_start", 0);
    int start = index_of(ev, "event_start", 0);
    int delta = index_of(ev, "event_delta", 0);
    int msg = index_of(ev, "agent.message", 0);
    int use = index_of(ev, "agent.tool_use", 0);
    int end1 = index_of(ev, "span.model_request_end", 0);
    int res = index_of(ev, "agent.tool_result", 0);
    int span2 = index_of(ev, "span.model_request_start", res);
    int msg2 = index_of(ev, "agent.message", res);
    int idle = index_of(ev, "session.status_idle", 0);
    assert_true(run >= 0 && run < span && span < start && start < delta && delta < msg &&
                msg < use && use < end1 && end1 < res && res < span2 && span2 < msg2 &&
                msg2 < idle);
    /* the preview announces the message's id; the deltas add up to it */
    json_t *m = json_array_get(ev, (size_t)msg);
    assert_string_equal(s_(json_object_get(json_array_get(ev, (size_t)start), "event"), "id"),
                        s_(m, "id"));
    char text[512] = "";
    for (size_t i = (size_t)start; i < (size_t)msg; i++) {
        json_t *d = json_array_get(ev, i);
        if (!strcmp(s_(d, "type"), "event_delta"))
            strncat(text, s_(json_object_get(json_object_get(d, "delta"), "content"), "text"),
                    sizeof(text) - strlen(text) - 1);
    }
    json_t *mc = json_array_get(json_object_get(m, "content"), 0);
    assert_string_equal(text, s_(mc, "text"));
    assert_string_equal(s_(mc, "text"), "Let me look at the sandbox.");
    /* the tool ran in the sandbox (hostname from the template, workdir) */
    json_t *tu = json_array_get(ev, (size_t)use), *tr = json_array_get(ev, (size_t)res);
    assert_string_equal(s_(tu, "name"), "bash");
    assert_string_equal(s_(tu, "evaluated_permission"), "allow");
    assert_string_equal(s_(tr, "tool_use_id"), s_(tu, "id"));
    assert_false(json_is_true(json_object_get(tr, "is_error")));
    assert_string_equal(s_(json_array_get(json_object_get(tr, "content"), 0), "text"),
                        "from-box-42\n/work");
    json_t *e1 = json_array_get(ev, (size_t)end1);
    assert_string_equal(s_(e1, "model_request_start_id"), s_(json_array_get(ev, (size_t)span), "id"));
    assert_false(json_is_true(json_object_get(e1, "is_error")));
    /* the model's own request id (its request-id header) joins the span to it */
    assert_non_null(s_(e1, "model_request_id"));
    assert_true(json_integer_value(json_object_get(json_object_get(e1, "model_usage"), "output_tokens")) > 0);
    assert_string_equal(s_(json_array_get(json_object_get(json_array_get(ev, (size_t)msg2), "content"), 0), "text"),
                        "All done here.");

    /* The history has the same events with the same ids, without previews. */
    char path[160];
    snprintf(path, sizeof(path), "/v1/sessions/%s/events?limit=1000", sid);
    json_t *h = call(B.port, "GET", path, NULL, 200), *data = json_object_get(h, "data");
    if (count_of(data, "event_delta") + count_of(data, "event_start") != 0)
        fail_msg("previews in the history: %s", json_dumps(data, JSON_COMPACT));
    assert_int_equal(count_of(data, "agent.tool_result"), 1);
    int hm = index_of(data, "agent.message", 0);
    assert_string_equal(s_(json_array_get(data, (size_t)hm), "id"), s_(m, "id"));
    json_decref(h);
    snprintf(path, sizeof(path), "/v1/sessions/%s", sid);
    json_t *so = call(B.port, "GET", path, NULL, 200);
    assert_string_equal(s_(so, "status"), "idle");
    json_decref(so);

    /* Deleting the session gives its sandbox back: the node destroys it
     * and nothing of it is left. */
    char sbx[128], sdir[1100];
    th_sh(sbx, sizeof(sbx), "redis-cli -p %d hget 'wp:obj:{%s}' sbx_sandbox", R.port, sid);
    sbx[strcspn(sbx, "\n")] = '\0';
    assert_true(sbx[0]);
    json_decref(call(A.port, "DELETE", path, NULL, 200));
    snprintf(sdir, sizeof(sdir), "%s/state-n1", DIR_);
    struct th_snap ts = { .state = sdir };
    bool gone = false;
    for (int i = 0; i < 100 && !gone; i++) {
        th_msleep(100);
        gone = th_sandbox_gone(&ts, sbx, 0);
    }
    assert_true(gone);
    json_decref(ev);
    sse_close(&s);
    free(sid);
}

/* The first token streams while the sandbox cannot be attached: the node
 * (and with it the relay to every sandbox) is stopped until after the
 * first delta arrived. */
static void first_token_before_sandbox(void **state)
{
    (void)state;
    char *sid = new_session(A.port);
    struct sse s;
    sse_open(&s, A.port, sid);
    assert_int_equal(kill(NODE, SIGSTOP), 0);
    send_text(A.port, sid, "run bash now");
    json_t *e;
    bool got_delta = false;
    while ((e = sse_next(&s, 10000))) {
        bool d = !strcmp(s_(e, "type"), "event_delta");
        assert_string_not_equal(s_(e, "type"), "agent.tool_result");
        json_decref(e);
        if (d) {
            got_delta = true;
            break;
        }
    }
    assert_true(got_delta);
    /* No tool result can exist yet: the sandbox cannot attach while its
     * node is stopped. Let it stay stopped a little longer. */
    th_msleep(300);
    assert_int_equal(kill(NODE, SIGCONT), 0);
    json_t *ev = until_idle(&s, "end_turn", 30000);
    int res = index_of(ev, "agent.tool_result", 0);
    assert_true(res >= 0);
    assert_false(json_is_true(json_object_get(json_array_get(ev, (size_t)res), "is_error")));
    json_decref(ev);
    sse_close(&s);
    free(sid);
}

/* An interrupt cancels the model request mid-stream: the span ends in
 * error, no agent.message for the cut text, the session is idle. */
static void interrupt_mid_stream(void **state)
{
    (void)state;
    char *sid = new_session(A.port), path[160];
    struct sse s;
    sse_open(&s, A.port, sid);
    send_text(A.port, sid, "go slow please");
    assert_true(wait_delta(&s, 10000));
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", sid);
    /* sent to the other scheduler: it wakes the one running the brain */
    json_decref(call(B.port, "POST", path, "{\"events\":[{\"type\":\"user.interrupt\"}]}", 200));
    json_t *ev = until_idle(&s, NULL, 10000);
    int end = index_of(ev, "span.model_request_end", 0);
    assert_true(end >= 0);
    assert_true(json_is_true(json_object_get(json_array_get(ev, (size_t)end), "is_error")));
    assert_int_equal(count_of(ev, "agent.message"), 0);
    assert_true(index_of(ev, "user.interrupt", 0) < end);
    json_decref(ev);
    snprintf(path, sizeof(path), "/v1/sessions/%s", sid);
    json_t *so = call(A.port, "GET", path, NULL, 200);
    assert_string_equal(s_(so, "status"), "idle");
    json_decref(so);
    sse_close(&s);
    free(sid);
}

/* A custom tool: the session waits for the client's result. */
static void custom_tool_waits_for_client(void **state)
{
    (void)state;
    char *sid = new_session(A.port), path[160], body[512];
    struct sse s;
    sse_open(&s, A.port, sid);
    send_text(A.port, sid, "check my custom order");
    json_t *ev = until_idle(&s, "requires_action", 10000);
    int cu = index_of(ev, "agent.custom_tool_use", 0);
    assert_true(cu >= 0);
    json_t *idle = json_array_get(ev, json_array_size(ev) - 1);
    json_t *ids = json_object_get(json_object_get(idle, "stop_reason"), "event_ids");
    const char *use_id = s_(json_array_get(ev, (size_t)cu), "id");
    assert_string_equal(json_string_value(json_array_get(ids, 0)), use_id);
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", sid);
    snprintf(body, sizeof(body),
             "{\"events\":[{\"type\":\"user.custom_tool_result\",\"custom_tool_use_id\":\"%s\","
             "\"content\":[{\"type\":\"text\",\"text\":\"shipped\"}]}]}",
             use_id);
    json_decref(call(B.port, "POST", path, body, 200));
    json_t *ev2 = until_idle(&s, "end_turn", 10000);
    assert_true(index_of(ev2, "session.status_running", 0) >= 0);
    int m = index_of(ev2, "agent.message", 0);
    assert_string_equal(
        s_(json_array_get(json_object_get(json_array_get(ev2, (size_t)m), "content"), 0), "text"),
        "Your order has shipped.");
    json_decref(ev);
    json_decref(ev2);
    sse_close(&s);
    free(sid);
}

/* The session's sandbox dies between turns: the next call gets a new
 * sandbox (a fresh one: the old one's files are gone) and the turn ends
 * normally. */
static void dead_sandbox_is_replaced(void **state)
{
    (void)state;
    char *sid = new_session(A.port), sbx[128], pidtxt[64];
    struct sse s;
    sse_open(&s, A.port, sid);
    send_text(A.port, sid, "twice please");
    json_t *ev = until_idle(&s, "end_turn", 20000);
    int r1 = index_of(ev, "agent.tool_result", 0);
    assert_true(r1 >= 0);
    assert_string_equal(s_(json_array_get(json_object_get(json_array_get(ev, (size_t)r1), "content"), 0), "text"),
                        "first");
    json_decref(ev);
    th_sh(sbx, sizeof(sbx), "redis-cli -p %d hget 'wp:obj:{%s}' sbx_sandbox", R.port, sid);
    sbx[strcspn(sbx, "\n")] = '\0';
    th_sh(pidtxt, sizeof(pidtxt), "head -n1 %s/state-n1/sandboxes/%s/init.pid", DIR_, sbx);
    pid_t init = (pid_t)atoi(pidtxt);
    assert_true(init > 1);
    assert_int_equal(kill(init, SIGKILL), 0);
    send_text(A.port, sid, "and again");
    ev = until_idle(&s, "end_turn", 20000);
    int r2 = index_of(ev, "agent.tool_result", 0);
    assert_true(r2 >= 0);
    json_t *res = json_array_get(ev, (size_t)r2);
    /* Either the call saw the dead link (an error the model reads) and the
     * session claimed anew, or the death was noticed first and it ran in a
     * new sandbox; either way the old sandbox's file is not there. */
    const char *text = s_(json_array_get(json_object_get(res, "content"), 0), "text");
    if (json_is_true(json_object_get(res, "is_error")))
        assert_non_null(strstr(text, "sandbox"));
    else
        assert_non_null(strstr(text, "fresh"));
    char sbx2[128];
    th_sh(sbx2, sizeof(sbx2), "redis-cli -p %d hget 'wp:obj:{%s}' sbx_sandbox", R.port, sid);
    sbx2[strcspn(sbx2, "\n")] = '\0';
    if (!json_is_true(json_object_get(res, "is_error")))
        assert_string_not_equal(sbx2, sbx);
    json_decref(ev);
    sse_close(&s);
    free(sid);
}

/* The model server answers 529 first: the model client retries, the
 * session shows a retrying session.error, and the turn completes. */
static void overloaded_then_success(void **state)
{
    (void)state;
    struct msrv_proc m2;
    struct th_sched c;
    char url[128];
    const char *margs[] = { "--http-fail-first", "1", "--fail-status", "529", "--retry-after", "0",
                            NULL };
    assert_int_equal(th_model_spawn_script(&m2, DIR_, script, margs, url, sizeof(url)), 0);
    assert_int_equal(th_sched_start(&c, R.port, "--model-url", url, "--model-backoff", "0.05",
                                    NULL), 0);
    char *sid = new_session(c.port);
    struct sse s;
    sse_open(&s, c.port, sid);
    send_text(c.port, sid, "hello there");
    json_t *ev = until_idle(&s, "end_turn", 20000);
    int err = index_of(ev, "session.error", 0);
    assert_true(err >= 0);
    json_t *e = json_object_get(json_array_get(ev, (size_t)err), "error");
    assert_string_equal(s_(e, "type"), "model_overloaded_error");
    assert_string_equal(s_(json_object_get(e, "retry_status"), "type"), "retrying");
    int m = index_of(ev, "agent.message", err);
    assert_true(m > err);
    assert_string_equal(
        s_(json_array_get(json_object_get(json_array_get(ev, (size_t)m), "content"), 0), "text"),
        "Hello!");
    json_decref(ev);
    sse_close(&s);
    free(sid);
    assert_int_equal(th_sched_stop(&c), 0);
    msrv_stop(&m2);
}

/* The official SDK streams whole sessions: a cloud one whose bash runs in
 * a sandbox, and a self-hosted one whose bash the SDK's own worker runs. */
static void sdk_streams_sessions(void **state)
{
    (void)state;
    static char out[1 << 16];
    if (access("tests/sdk/node_modules/@anthropic-ai/sdk/package.json", R_OK) != 0) {
        int rc = th_sh(out, sizeof(out),
                       "cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error 2>&1");
        if (rc != 0)
            fprintf(stderr, "npm ci: %s\n", out);
        assert_int_equal(rc, 0);
    }
    int rc = th_sh(out, sizeof(out),
                   "cd tests/sdk && WP_BASE_URL=http://127.0.0.1:%d WP_API_KEY=" KEY
                   " WP_AGENT=%s WP_ENV=%s timeout 120 node sdk_brain.mjs 2>&1",
                   B.port, AGENT_ID, ENV_ID);
    printf("%s", out);
    assert_int_equal(rc, 0);
    assert_null(strstr(out, "FAILED"));
    assert_non_null(strstr(out, "sdk-brain: 3 steps passed"));
}

/* Issue 15 defect 5: an operator pool serves only the organizations it
 * names, checked at each claim: once the operator names only beta, an acme
 * session's bash call gets an error result saying why, and no sandbox. */
static void operator_pool_names_its_orgs(void **state)
{
    (void)state;
    char out[256];
    assert_int_equal(th_sh(out, sizeof(out), "redis-cli -p %d HSET wp:env:{brainpool}:policy orgs beta",
                           R.port), 0);
    char *sid = new_session(A.port);
    struct sse s;
    sse_open(&s, A.port, sid);
    send_text(A.port, sid, "run bash now");
    json_t *ev = until_idle(&s, "end_turn", 30000);
    int res = index_of(ev, "agent.tool_result", 0);
    assert_true(res >= 0);
    json_t *r = json_array_get(ev, (size_t)res);
    assert_true(json_is_true(json_object_get(r, "is_error")));
    char *d = json_dumps(r, JSON_COMPACT);
    assert_non_null(strstr(d, "may not use pool environment brainpool"));
    free(d);
    json_decref(ev);
    sse_close(&s);
    th_sh(out, sizeof(out), "redis-cli -p %d HDEL wp:env:{brainpool}:policy orgs", R.port);
    free(sid);
}

/* Issue 15 defect 12: prompt caching. A 50-turn session: each request
 * carries a cache_control breakpoint at the end of its prompt, so the model
 * stand-in (billing as the Messages API does) reads the previous turns from
 * its cache and charges in full only the new part. Figures per turn go to
 * WP_CACHE_REPORT (bench/bench_prompt_cache.sh); "before" is the whole
 * prompt, which is what a request without cache_control is billed. */
static void prompt_cache_fifty_turns(void **state)
{
    (void)state;
    enum { TURNS = 50 };
    char *sid = new_session(A.port);
    struct sse s;
    sse_open(&s, A.port, sid);
    long full[TURNS], input[TURNS], read[TURNS], created[TURNS];
    double sum_full = 0, sum_billed = 0;
    for (int t = 0; t < TURNS; t++) {
        char text[96];
        snprintf(text, sizeof(text), "cache turn %d: tell me something short", t + 1);
        send_text(A.port, sid, text);
        json_t *ev = until_idle(&s, "end_turn", 30000);
        int k = index_of(ev, "span.model_request_end", 0);
        assert_true(k >= 0);
        json_t *u = json_object_get(json_array_get(ev, (size_t)k), "model_usage");
        input[t] = (long)json_integer_value(json_object_get(u, "input_tokens"));
        read[t] = (long)json_integer_value(json_object_get(u, "cache_read_input_tokens"));
        created[t] = (long)json_integer_value(json_object_get(u, "cache_creation_input_tokens"));
        full[t] = input[t] + read[t] + created[t];
        /* Billed as input-token equivalents: cache writes 1.25x, reads 0.1x. */
        sum_full += (double)full[t];
        sum_billed += (double)input[t] + 1.25 * (double)created[t] + 0.1 * (double)read[t];
        json_decref(ev);
    }
    sse_close(&s);
    printf("# prompt cache, 50 turns: whole prompt turn 1 %ld, turn 50 %ld; turn 50 billed: "
           "input %ld + written %ld + read %ld; all turns: %.0f input-token equivalents with "
           "caching, %.0f without (%.1f%%)\n",
           full[0], full[TURNS - 1], input[TURNS - 1], created[TURNS - 1], read[TURNS - 1],
           sum_billed, sum_full, 100.0 * sum_billed / sum_full);
    const char *rep = getenv("WP_CACHE_REPORT");
    FILE *f = rep ? fopen(rep, "w") : NULL;
    if (f) {
        fprintf(f, "{\"turns\":[");
        for (int t = 0; t < TURNS; t++)
            fprintf(f, "%s{\"turn\":%d,\"prompt\":%ld,\"input\":%ld,\"cache_write\":%ld,\"cache_read\":%ld}",
                    t ? "," : "", t + 1, full[t], input[t], created[t], read[t]);
        fprintf(f, "],\"billed_with_cache\":%.0f,\"billed_without\":%.0f}\n", sum_billed, sum_full);
        fclose(f);
    }
    /* The history grows, what is paid in full does not: once the previous
     * prompt was long enough to cache (1024 tokens), every turn reads it
     * and pays in full only the new part. */
    assert_true(full[TURNS - 1] > full[0]);
    int cached_turns = 0;
    for (int t = 1; t < TURNS; t++) {
        if (full[t - 1] < 1100)
            continue;
        cached_turns++;
        assert_true(read[t] >= full[t - 1] - 64);
        assert_true(input[t] + created[t] < full[t] / 4);
    }
    assert_true(cached_turns >= TURNS / 2);
    assert_true(sum_billed < 0.6 * sum_full);
    free(sid);
}

/* The scheduler running a session is killed mid-turn: another one takes
 * the session over from its log and finishes the turn. */
/* Redis restarted from an AOF fsynced every second can lose the last
 * writes: the session's brain fence counter goes back, and the lease with it. The
 * next brain's token must still be above every token handed out before
 * (never one a brain may still hold). */
static void fence_only_grows_after_lost_writes(void **state)
{
    (void)state;
    char *sid = new_session(A.port), out[128], key[200];
    struct sse s;
    sse_open(&s, A.port, sid);
    send_text(A.port, sid, "hello there");
    json_decref(until_idle(&s, "end_turn", 20000));
    snprintf(key, sizeof(key), "wp:brain:{%s}", sid);
    th_sh(out, sizeof(out), "redis-cli -p %d get '%s'", R.port, key);
    long long t = atoll(out);
    assert_true(t > 0);
    /* The loss: the counter one back, the lease gone. */
    th_sh(out, sizeof(out), "redis-cli -p %d set 'wp:brain:fence:{%s}' %lld", R.port, sid, t - 1);
    th_sh(out, sizeof(out), "redis-cli -p %d del '%s'", R.port, key);
    send_text(A.port, sid, "hello there");
    json_decref(until_idle(&s, "end_turn", 20000));
    long long t2 = 0;
    for (int i = 0; i < 50 && t2 <= 0; i++, th_msleep(50)) {
        th_sh(out, sizeof(out), "redis-cli -p %d get '%s'", R.port, key);
        t2 = atoll(out);
    }
    print_message("# token before the loss %lld, after %lld\n", t, t2);
    assert_true(t2 > t);
    sse_close(&s);
    free(sid);
}

static void takeover_after_kill(void **state)
{
    (void)state;
    char *sid = new_session(A.port), path[160];
    struct sse s;
    sse_open(&s, B.port, sid);
    send_text(A.port, sid, "slow again");
    assert_true(wait_delta(&s, 10000));
    kill(A.pid, SIGKILL);
    waitpid(A.pid, NULL, 0);
    A.pid = 0;
    json_t *ev = until_idle(&s, "end_turn", 20000);
    /* the interrupted request closed in error, retried, and answered */
    int end = index_of(ev, "span.model_request_end", 0);
    assert_true(end >= 0);
    assert_true(json_is_true(json_object_get(json_array_get(ev, (size_t)end), "is_error")));
    int m = index_of(ev, "agent.message", end);
    assert_true(m > end);
    json_decref(ev);
    /* no event twice in the history */
    snprintf(path, sizeof(path), "/v1/sessions/%s/events?limit=1000", sid);
    json_t *h = call(B.port, "GET", path, NULL, 200), *data = json_object_get(h, "data");
    json_t *seen = json_object();
    for (size_t i = 0; i < json_array_size(data); i++) {
        const char *id = s_(json_array_get(data, i), "id");
        assert_null(json_object_get(seen, id));
        json_object_set_new(seen, id, json_true());
    }
    assert_int_equal(count_of(data, "agent.message"), 1);
    assert_int_equal(count_of(data, "session.status_idle"), 1);
    json_decref(seen);
    json_decref(h);
    sse_close(&s);
    free(sid);
}

int main(void)
{
    if (geteuid() != 0) {
        printf("1..0 # SKIP needs root (sandboxes)\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bash_turn_runs_in_sandbox),
        cmocka_unit_test(first_token_before_sandbox),
        cmocka_unit_test(interrupt_mid_stream),
        cmocka_unit_test(custom_tool_waits_for_client),
        cmocka_unit_test(dead_sandbox_is_replaced),
        cmocka_unit_test(overloaded_then_success),
        cmocka_unit_test(sdk_streams_sessions),
        cmocka_unit_test(prompt_cache_fifty_turns),
        cmocka_unit_test(operator_pool_names_its_orgs),
        cmocka_unit_test(fence_only_grows_after_lost_writes),
        cmocka_unit_test(takeover_after_kill),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
