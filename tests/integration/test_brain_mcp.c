/* test_brain_mcp.c - MCP toolsets end to end: a real MCP server built with
 * the official SDK (tests/sdk/mcp_server.mjs, @modelcontextprotocol/sdk,
 * streamable HTTP on loopback, bearer and OAuth), a real Redis, a
 * scheduler with the brain on, the model stand-in scripting calls to the
 * MCP tools. What a user checks: the tools the model was offered, the
 * session's event log, the credential as the API shows it afterwards. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/model_testlib.h"
#include "lib/sched_testlib.h"
#include "lib/testlib.h"
#include "modelserver/msrv_spawn.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/timeutil.h"

#define KEY "sk-acme"

static struct th_redis R;
static struct th_sched S;
static struct msrv_proc M;
static char *DIR_;
static pid_t MCP_PID = -1;
static int MCP_PORT;
static char ENV_ID[64];

static const char script[] =
    "{\"seed\":1,\"ttft_ms\":5,\"tokens_per_s\":0,"
    "\"conversations\":["
    " {\"match\":\"use echo\",\"turns\":["
    "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"echo\",\"input\":{\"text\":\"hello mcp\"}}]},"
    "   {\"text\":\"done\"}]},"
    " {\"match\":\"danger\",\"turns\":["
    "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"danger\",\"input\":{}}]},"
    "   {\"text\":\"ok\"}]},"
    " {\"turns\":[\"Hello!\"]}]}";

/* ---- HTTP helpers ---- */

static json_t *call_as(const char *key, int port, const char *method, const char *path, const char *body,
                       int want)
{
    return th_api(port, key, method, path, body, want);
}

static json_t *call(int port, const char *method, const char *path, const char *body, int want)
{
    return call_as(KEY, port, method, path, body, want);
}

static const char *s_(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static json_t *get_json(int port, const char *path)
{
    struct th_resp r;
    if (th_http(port, "GET", path, NULL, NULL, &r) != 0)
        return NULL;
    json_t *o = json_loads(r.body, 0, NULL);
    th_resp_free(&r);
    return o;
}

/* The session's history (caller owns). */
static json_t *history(const char *sid)
{
    char path[160];
    snprintf(path, sizeof(path), "/v1/sessions/%s/events?limit=1000", sid);
    json_t *h = call(S.port, "GET", path, NULL, 200);
    json_t *d = json_incref(json_object_get(h, "data"));
    json_decref(h);
    return d;
}

/* The first event of type (with field == value when field is given), polling
 * the history up to ms. Caller owns; NULL on timeout. */
static json_t *wait_event(const char *sid, const char *type, const char *field, const char *value, int ms)
{
    uint64_t end = wp_now_ms() + (uint64_t)ms;
    do {
        json_t *h = history(sid);
        size_t i;
        json_t *e;
        json_array_foreach(h, i, e) {
            if (strcmp(s_(e, "type") ?: "", type))
                continue;
            if (field) {
                const char *v = s_(e, field);
                json_t *sr = json_object_get(e, field);
                if (!v && json_is_object(sr))
                    v = s_(sr, "type"); /* stop_reason.type, error.type */
                if (!v || strcmp(v, value))
                    continue;
            }
            json_t *out = json_incref(e);
            json_decref(h);
            return out;
        }
        json_decref(h);
        usleep(50 * 1000);
    } while (wp_now_ms() < end);
    return NULL;
}

static void send_events(const char *sid, const char *events)
{
    char path[160], body[2048];
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", sid);
    snprintf(body, sizeof(body), "{\"events\":[%s]}", events);
    json_decref(call(S.port, "POST", path, body, 200));
}

static void send_text(const char *sid, const char *text)
{
    char ev[512];
    snprintf(ev, sizeof(ev), "{\"type\":\"user.message\",\"content\":[{\"type\":\"text\",\"text\":\"%s\"}]}", text);
    send_events(sid, ev);
}

static char *new_vault(void)
{
    json_t *v = call(S.port, "POST", "/v1/vaults", "{\"display_name\":\"mcp\"}", 200);
    char *id = strdup(s_(v, "id"));
    json_decref(v);
    return id;
}

static char *new_cred(const char *vault, const char *auth_json)
{
    char path[160], body[2048];
    snprintf(path, sizeof(path), "/v1/vaults/%s/credentials", vault);
    snprintf(body, sizeof(body), "{\"auth\":%s}", auth_json);
    json_t *c = call(S.port, "POST", path, body, 200);
    char *id = strdup(s_(c, "id"));
    json_decref(c);
    return id;
}

/* An agent with one MCP server at url named "tools": hidden disabled,
 * danger asks first. */
static char *new_agent(const char *url)
{
    char body[2048];
    snprintf(body, sizeof(body),
             "{\"name\":\"m\",\"model\":\"claude-test\","
             "\"mcp_servers\":[{\"type\":\"url\",\"name\":\"tools\",\"url\":\"%s\"}],"
             "\"tools\":[{\"type\":\"mcp_toolset\",\"mcp_server_name\":\"tools\","
             "\"configs\":[{\"name\":\"hidden\",\"enabled\":false},"
             "{\"name\":\"danger\",\"permission_policy\":{\"type\":\"always_ask\"}}]}]}",
             url);
    json_t *a = call(S.port, "POST", "/v1/agents", body, 200);
    char *id = strdup(s_(a, "id"));
    json_decref(a);
    return id;
}

static char *new_session(const char *agent, const char *vault)
{
    char body[512];
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\",\"vault_ids\":[%s%s%s]}",
             agent, ENV_ID, vault ? "\"" : "", vault ? vault : "", vault ? "\"" : "");
    json_t *s = call(S.port, "POST", "/v1/sessions", body, 200);
    char *id = strdup(s_(s, "id"));
    json_decref(s);
    return id;
}

/* A session of an agent whose server "tools" is the /mcp endpoint, with a
 * vault holding a static_bearer credential for cred_url (the server's
 * when NULL) with token. *agent and *vault: caller frees. */
static char *bearer_session_cred(const char *cred_url, const char *token, char **agent, char **vault,
                                 char **cred)
{
    char url[128], auth[512];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/mcp", MCP_PORT);
    *vault = new_vault();
    snprintf(auth, sizeof(auth), "{\"type\":\"static_bearer\",\"mcp_server_url\":\"%s\",\"token\":\"%s\"}",
             cred_url ? cred_url : url, token);
    char *c = new_cred(*vault, auth);
    if (cred)
        *cred = c;
    else
        free(c);
    *agent = new_agent(url);
    return new_session(*agent, *vault);
}

static char *bearer_session(const char *cred_url, const char *token, char **agent, char **vault)
{
    return bearer_session_cred(cred_url, token, agent, vault, NULL);
}

static json_t *mcp_admin(void)
{
    json_t *a = get_json(MCP_PORT, "/admin");
    assert_non_null(a);
    return a;
}

/* ---- the MCP server process ---- */

static int mcp_start(void)
{
    static char out[1 << 16];
    if (access("tests/sdk/node_modules/@modelcontextprotocol/sdk/package.json", R_OK) != 0 &&
        th_sh(out, sizeof(out), "cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error 2>&1") != 0) {
        fprintf(stderr, "npm ci: %s\n", out);
        return -1;
    }
    int p[2];
    if (pipe(p) < 0)
        return -1;
    MCP_PID = fork();
    if (MCP_PID == 0) {
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        execlp("node", "node", "tests/sdk/mcp_server.mjs", (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    char line[128] = "";
    size_t n = 0;
    struct pollfd pf = { .fd = p[0], .events = POLLIN };
    while (n < sizeof(line) - 1 && !strchr(line, '\n') && poll(&pf, 1, 20000) > 0) {
        ssize_t k = read(p[0], line + n, sizeof(line) - 1 - n);
        if (k <= 0)
            break;
        n += (size_t)k;
        line[n] = '\0';
    }
    close(p[0]);
    return sscanf(line, "port %d", &MCP_PORT) == 1 ? 0 : -1;
}

/* ---- set-up ---- */

static int group_setup(void **state)
{
    char url[128];
    (void)state;
    if (mcp_start() < 0 || th_redis_start(&R, 0) < 0)
        return -1;
    DIR_ = th_tmpdir("brain-mcp");
    if (th_model_spawn_script(&M, DIR_, script, NULL, url, sizeof(url)) < 0)
        return -1;
    /* the MCP server is on loopback: allowed here, refused by default */
    if (th_sched_start(&S, R.port, "--model-url", url, "--rate-create", "0", "--rate-read", "0",
                       "--mcp-private", "on", NULL) < 0)
        return -1;
    /* MCP calls need no sandbox: an environment no node serves */
    json_t *en = call(S.port, "POST", "/v1/environments",
                      "{\"name\":\"mcp-env\",\"config\":{\"type\":\"cloud\"},"
                      "\"metadata\":{\"warmpool.pool\":\"nopool\"}}", 200);
    snprintf(ENV_ID, sizeof(ENV_ID), "%s", s_(en, "id"));
    json_decref(en);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    int rc = 0;
    if (S.pid > 0 && th_sched_stop(&S) != 0) {
        fprintf(stderr, "scheduler did not exit cleanly\n");
        rc = -1;
    }
    msrv_stop(&M);
    th_redis_stop(&R);
    if (MCP_PID > 0) {
        kill(MCP_PID, SIGTERM);
        waitpid(MCP_PID, NULL, 0);
    }
    if (DIR_)
        th_rmtree(DIR_);
    free(DIR_);
    return rc;
}

/* ---- tests ---- */

static bool has_name(json_t *arr, const char *name)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
        if (!strcmp(json_string_value(v) ?: "", name))
            return true;
    return false;
}

/* A static bearer credential (matched although its URL differs from the
 * server's in case and a trailing slash); the tools, over two pages, are
 * offered to the model but for the disabled one; a call's result is in
 * the log. */
static void bearer_tools_listed_and_called(void **state)
{
    (void)state;
    char curl_[128], *agent, *vault;
    snprintf(curl_, sizeof(curl_), "HTTP://127.0.0.1:%d/mcp/", MCP_PORT);
    char *sid = bearer_session(curl_, "static-good", &agent, &vault);
    send_text(sid, "please use echo");

    json_t *idle = wait_event(sid, "session.status_idle", "stop_reason", "end_turn", 20000);
    assert_non_null(idle);
    json_decref(idle);
    json_t *use = wait_event(sid, "agent.mcp_tool_use", NULL, NULL, 100);
    assert_non_null(use);
    assert_string_equal(s_(use, "name"), "echo");
    assert_string_equal(s_(use, "mcp_server_name"), "tools");
    assert_string_equal(s_(use, "evaluated_permission"), "allow");
    assert_string_equal(s_(json_object_get(use, "input"), "text"), "hello mcp");
    json_t *res = wait_event(sid, "agent.mcp_tool_result", "mcp_tool_use_id", s_(use, "id"), 100);
    assert_non_null(res);
    assert_false(json_is_true(json_object_get(res, "is_error")));
    assert_string_equal(s_(json_array_get(json_object_get(res, "content"), 0), "text"), "echo: hello mcp");
    /* no error on the way */
    assert_null(wait_event(sid, "session.error", NULL, NULL, 50));
    /* the model was offered every enabled tool of both pages, not hidden */
    json_t *st = get_json(M.port, "/stats");
    json_t *tools = json_object_get(st, "last_tools");
    assert_true(has_name(tools, "echo"));
    assert_true(has_name(tools, "add"));
    assert_true(has_name(tools, "danger"));
    assert_false(has_name(tools, "hidden"));
    json_decref(st);
    /* the server ran it once */
    json_t *adm = mcp_admin();
    size_t i, n = 0;
    json_t *c;
    json_array_foreach(json_object_get(adm, "calls"), i, c)
        if (!strcmp(s_(c, "name"), "echo"))
            n++;
    assert_int_equal(n, 1);
    json_decref(adm);
    json_decref(use);
    json_decref(res);
    free(sid);
    free(agent);
    free(vault);
}

/* always_ask: the call waits for the user's confirmation, then runs. */
static void ask_waits_for_confirmation(void **state)
{
    (void)state;
    char *agent, *vault;
    char *sid = bearer_session(NULL, "static-good", &agent, &vault);
    send_text(sid, "please use danger");

    json_t *idle = wait_event(sid, "session.status_idle", "stop_reason", "requires_action", 20000);
    assert_non_null(idle);
    json_t *use = wait_event(sid, "agent.mcp_tool_use", NULL, NULL, 100);
    assert_non_null(use);
    assert_string_equal(s_(use, "name"), "danger");
    assert_string_equal(s_(use, "evaluated_permission"), "ask");
    assert_string_equal(s_(json_object_get(use, "evaluation"), "type"), "always_ask");
    json_t *ids = json_object_get(json_object_get(idle, "stop_reason"), "event_ids");
    assert_int_equal(json_array_size(ids), 1);
    assert_string_equal(json_string_value(json_array_get(ids, 0)), s_(use, "id"));
    /* not run while waiting */
    usleep(300 * 1000);
    json_t *adm = mcp_admin();
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(adm, "calls"), i, c)
        assert_string_not_equal(s_(c, "name"), "danger");
    json_decref(adm);
    assert_null(wait_event(sid, "agent.mcp_tool_result", NULL, NULL, 50));

    char ev[256];
    snprintf(ev, sizeof(ev), "{\"type\":\"user.tool_confirmation\",\"tool_use_id\":\"%s\",\"result\":\"allow\"}",
             s_(use, "id"));
    send_events(sid, ev);
    json_t *res = wait_event(sid, "agent.mcp_tool_result", "mcp_tool_use_id", s_(use, "id"), 20000);
    assert_non_null(res);
    assert_string_equal(s_(json_array_get(json_object_get(res, "content"), 0), "text"), "danger done");
    json_t *end = wait_event(sid, "session.status_idle", "stop_reason", "end_turn", 20000);
    assert_non_null(end);
    json_decref(end);
    json_decref(res);
    json_decref(idle);
    json_decref(use);
    free(sid);
    free(agent);
    free(vault);
}

/* A token the server refuses: mcp_authentication_failed_error naming the
 * server; the turn goes on without its tools. */
static void revoked_token_is_an_auth_error(void **state)
{
    (void)state;
    char *agent, *vault, *cred;
    char *sid = bearer_session_cred(NULL, "static-revoked", &agent, &vault, &cred);
    send_text(sid, "just chat");
    json_t *e = wait_event(sid, "session.error", "error", "mcp_authentication_failed_error", 20000);
    assert_non_null(e);
    assert_string_equal(s_(json_object_get(e, "error"), "mcp_server_name"), "tools");
    json_t *idle = wait_event(sid, "session.status_idle", "stop_reason", "end_turn", 20000);
    assert_non_null(idle); /* the model still answered */
    json_t *st = get_json(M.port, "/stats");
    assert_false(has_name(json_object_get(st, "last_tools"), "echo"));
    json_decref(st);
    /* the token replaced through the API: the next turn of the same
     * session uses it */
    char path[200];
    snprintf(path, sizeof(path), "/v1/vaults/%s/credentials/%s", vault, cred);
    json_decref(call(S.port, "POST", path, "{\"auth\":{\"type\":\"static_bearer\",\"token\":\"static-good\"}}", 200));
    send_text(sid, "again");
    int idles = 0, errors = 0;
    for (int i = 0; i < 400 && idles < 2; i++) {
        json_t *h = history(sid);
        size_t k;
        json_t *ev;
        idles = errors = 0;
        json_array_foreach(h, k, ev) {
            idles += !strcmp(s_(ev, "type"), "session.status_idle");
            errors += !strcmp(s_(ev, "type"), "session.error");
        }
        json_decref(h);
        if (idles < 2)
            usleep(50 * 1000);
    }
    assert_int_equal(idles, 2);
    assert_int_equal(errors, 1); /* the first turn's only */
    st = get_json(M.port, "/stats");
    assert_true(has_name(json_object_get(st, "last_tools"), "echo"));
    json_decref(st);
    /* without any credential the server refuses too */
    char *sid2 = new_session(agent, NULL);
    send_text(sid2, "just chat");
    json_t *e2 = wait_event(sid2, "session.error", "error", "mcp_authentication_failed_error", 20000);
    assert_non_null(e2);
    json_decref(e2);
    json_decref(idle);
    json_decref(e);
    free(sid2);
    free(sid);
    free(cred);
    free(agent);
    free(vault);
}

/* Another organization's vault named in vault_ids lends nothing: the
 * server is called without a credential and refuses. */
static void another_orgs_vault_is_not_used(void **state)
{
    (void)state;
    char *agent, *vault, body[1024], url[128];
    free(bearer_session(NULL, "static-good", &agent, &vault)); /* acme's vault, a good token */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/mcp", MCP_PORT);
    snprintf(body, sizeof(body),
             "{\"name\":\"b\",\"model\":\"claude-test\","
             "\"mcp_servers\":[{\"type\":\"url\",\"name\":\"tools\",\"url\":\"%s\"}],"
             "\"tools\":[{\"type\":\"mcp_toolset\",\"mcp_server_name\":\"tools\"}]}", url);
    json_t *a = call_as("sk-beta", S.port, "POST", "/v1/agents", body, 200);
    json_t *en = call_as("sk-beta", S.port, "POST", "/v1/environments",
                         "{\"name\":\"beta-env\",\"config\":{\"type\":\"cloud\"},"
                         "\"metadata\":{\"warmpool.pool\":\"nopool\"}}", 200);
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\",\"vault_ids\":[\"%s\"]}",
             s_(a, "id"), s_(en, "id"), vault);
    json_t *ses = call_as("sk-beta", S.port, "POST", "/v1/sessions", body, 200);
    char path[160];
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", s_(ses, "id"));
    json_decref(call_as("sk-beta", S.port, "POST", path,
                        "{\"events\":[{\"type\":\"user.message\",\"content\":[{\"type\":\"text\",\"text\":\"just chat\"}]}]}",
                        200));
    /* the history, polled as beta */
    json_t *found = NULL;
    snprintf(path, sizeof(path), "/v1/sessions/%s/events?limit=1000", s_(ses, "id"));
    for (int i = 0; i < 400 && !found; i++) {
        json_t *h = call_as("sk-beta", S.port, "GET", path, NULL, 200);
        size_t k;
        json_t *e;
        json_array_foreach(json_object_get(h, "data"), k, e)
            if (!strcmp(s_(e, "type") ?: "", "session.error"))
                found = json_incref(e);
        json_decref(h);
        if (!found)
            usleep(50 * 1000);
    }
    assert_non_null(found);
    assert_string_equal(s_(json_object_get(found, "error"), "type"), "mcp_authentication_failed_error");
    json_decref(found);
    json_decref(ses);
    json_decref(en);
    json_decref(a);
    free(agent);
    free(vault);
}

/* By default an MCP server on loopback (or any private address) is not
 * reached: mcp_connection_failed_error, and the server sees nothing. */
static void private_servers_refused_by_default(void **state)
{
    (void)state;
    char murl[128], env_saved[64];
    struct th_redis r2;
    struct th_sched s2, saved = S;
    /* a deployment of its own (Redis and scheduler), so no scheduler with
     * --mcp-private on can take the session over */
    snprintf(murl, sizeof(murl), "http://127.0.0.1:%d", M.port);
    assert_int_equal(th_redis_start(&r2, 0), 0);
    assert_int_equal(th_sched_start(&s2, r2.port, "--model-url", murl, "--rate-create", "0", "--rate-read", "0",
                                    NULL), 0);
    S = s2;
    snprintf(env_saved, sizeof(env_saved), "%s", ENV_ID);
    json_t *en = call(S.port, "POST", "/v1/environments",
                      "{\"name\":\"mcp-env\",\"config\":{\"type\":\"cloud\"},"
                      "\"metadata\":{\"warmpool.pool\":\"nopool\"}}", 200);
    snprintf(ENV_ID, sizeof(ENV_ID), "%s", s_(en, "id"));
    json_decref(en);
    json_t *adm = mcp_admin();
    json_int_t lists0 = json_integer_value(json_object_get(adm, "lists"));
    json_int_t refused0 = json_integer_value(json_object_get(adm, "refused"));
    json_decref(adm);
    char *agent, *vault;
    char *sid = bearer_session(NULL, "static-good", &agent, &vault);
    send_text(sid, "just chat");
    json_t *e = wait_event(sid, "session.error", "error", "mcp_connection_failed_error", 20000);
    S = saved;
    snprintf(ENV_ID, sizeof(ENV_ID), "%s", env_saved);
    assert_non_null(e);
    assert_non_null(strstr(s_(json_object_get(e, "error"), "message"), "private network"));
    adm = mcp_admin();
    assert_int_equal(json_integer_value(json_object_get(adm, "lists")), lists0);
    assert_int_equal(json_integer_value(json_object_get(adm, "refused")), refused0);
    json_decref(adm);
    json_decref(e);
    assert_int_equal(th_sched_stop(&s2), 0);
    th_redis_stop(&r2);
    free(sid);
    free(agent);
    free(vault);
}

/* The turn count of a session: its idle events. */
static int idles_of(const char *sid)
{
    json_t *h = history(sid);
    size_t k;
    json_t *ev;
    int n = 0;
    json_array_foreach(h, k, ev) n += !strcmp(s_(ev, "type"), "session.status_idle");
    json_decref(h);
    return n;
}

static void turn_and_wait(const char *sid, int want_idles)
{
    send_text(sid, "more");
    for (int i = 0; i < 400 && idles_of(sid) < want_idles; i++)
        usleep(50 * 1000);
    assert_int_equal(idles_of(sid), want_idles);
}

/* The server session (Mcp-Session-Id) is kept from turn to turn; a server
 * that forgot it answers 404 and the client initializes again, unseen. */
static void server_session_kept_and_renewed(void **state)
{
    (void)state;
    char *agent, *vault;
    char *sid = bearer_session(NULL, "static-good", &agent, &vault);
    turn_and_wait(sid, 1);
    json_t *adm = mcp_admin();
    json_int_t inits = json_integer_value(json_object_get(adm, "inits"));
    json_int_t lists = json_integer_value(json_object_get(adm, "lists"));
    json_decref(adm);
    turn_and_wait(sid, 2);
    adm = mcp_admin();
    assert_int_equal(json_integer_value(json_object_get(adm, "inits")), inits); /* kept */
    assert_int_equal(json_integer_value(json_object_get(adm, "lists")), lists + 2); /* listed again: 2 pages */
    json_decref(adm);
    struct th_resp r;
    assert_int_equal(th_http(MCP_PORT, "POST", "/admin/forget", NULL, "{}", &r), 0);
    th_resp_free(&r);
    turn_and_wait(sid, 3);
    adm = mcp_admin();
    assert_int_equal(json_integer_value(json_object_get(adm, "inits")), inits + 1); /* after the 404 */
    assert_int_equal(json_integer_value(json_object_get(adm, "lists")), lists + 4);
    json_decref(adm);
    assert_null(wait_event(sid, "session.error", NULL, NULL, 50));
    free(sid);
    free(agent);
    free(vault);
}

/* Nothing listens at the server's URL: mcp_connection_failed_error. */
static void dead_server_is_a_connection_error(void **state)
{
    (void)state;
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/mcp", th_free_port());
    char *agent = new_agent(url);
    char *sid = new_session(agent, NULL);
    send_text(sid, "just chat");
    json_t *e = wait_event(sid, "session.error", "error", "mcp_connection_failed_error", 20000);
    assert_non_null(e);
    assert_string_equal(s_(json_object_get(e, "error"), "mcp_server_name"), "tools");
    assert_string_equal(s_(json_object_get(json_object_get(e, "error"), "retry_status"), "type"), "retrying");
    json_t *idle = wait_event(sid, "session.status_idle", "stop_reason", "end_turn", 20000);
    assert_non_null(idle);
    json_decref(idle);
    json_decref(e);
    free(sid);
    free(agent);
}

/* An mcp_oauth token about to expire (and refused by the server) is
 * refreshed at the token endpoint with client_secret_basic; the call runs
 * with the new token; the new token and its expiry are stored back, so a
 * later session uses it without refreshing again. */
static void oauth_expired_token_refreshed_and_stored(void **state)
{
    (void)state;
    char url[128], tokurl[128], auth[1024], exp[40], path[200];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/oauth/mcp", MCP_PORT);
    snprintf(tokurl, sizeof(tokurl), "http://127.0.0.1:%d/token", MCP_PORT);
    uint64_t soon = wp_wall_ms() + 30000;
    time_t t = (time_t)(soon / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(exp, sizeof(exp), "%Y-%m-%dT%H:%M:%SZ", &tm);
    char *vault = new_vault();
    snprintf(auth, sizeof(auth),
             "{\"type\":\"mcp_oauth\",\"mcp_server_url\":\"%s\",\"access_token\":\"oauth-stale\","
             "\"expires_at\":\"%s\",\"refresh\":{\"client_id\":\"wp-client\",\"refresh_token\":\"R1\","
             "\"token_endpoint\":\"%s\",\"token_endpoint_auth\":{\"type\":\"client_secret_basic\","
             "\"client_secret\":\"s3cret\"}}}",
             url, exp, tokurl);
    char *cred = new_cred(vault, auth);
    char kobj[128], sealed_before[4096], sealed_after[4096];
    snprintf(kobj, sizeof(kobj), "'wp:obj:{acme}:%s'", cred);
    th_sh(sealed_before, sizeof(sealed_before), "redis-cli -p %d HGET %s sealed", R.port, kobj);

    char *agent = new_agent(url);
    char *sid = new_session(agent, vault);
    send_text(sid, "please use echo");
    json_t *res = wait_event(sid, "agent.mcp_tool_result", NULL, NULL, 20000);
    assert_non_null(res);
    assert_false(json_is_true(json_object_get(res, "is_error")));
    assert_string_equal(s_(json_array_get(json_object_get(res, "content"), 0), "text"), "echo: hello mcp");
    assert_null(wait_event(sid, "session.error", NULL, NULL, 50));
    json_t *adm = mcp_admin();
    json_t *reqs = json_object_get(adm, "token_requests");
    assert_int_equal(json_array_size(reqs), 1);
    json_t *r0 = json_array_get(reqs, 0);
    assert_string_equal(s_(r0, "auth"), "basic");
    assert_string_equal(s_(r0, "client_id"), "wp-client");
    assert_string_equal(s_(r0, "refresh_token"), "R1");
    assert_false(json_is_true(json_object_get(r0, "secret_in_form")));
    json_decref(adm);

    /* stored back: a later expiry through the API, other sealed bytes
     * in Redis, no token in clear there */
    snprintf(path, sizeof(path), "/v1/vaults/%s/credentials/%s", vault, cred);
    uint64_t end = wp_wall_ms() + 5000;
    const char *e2 = NULL;
    json_t *c = NULL;
    do {
        json_decref(c);
        c = call(S.port, "GET", path, NULL, 200);
        e2 = s_(json_object_get(c, "auth"), "expires_at");
        if (e2 && strcmp(e2, exp))
            break;
        usleep(50 * 1000);
    } while (wp_wall_ms() < end);
    assert_non_null(e2);
    assert_string_not_equal(e2, exp);
    assert_null(json_object_get(json_object_get(c, "auth"), "access_token"));
    json_decref(c);
    th_sh(sealed_after, sizeof(sealed_after), "redis-cli -p %d HGET %s sealed", R.port, kobj);
    assert_string_not_equal(sealed_before, sealed_after);
    assert_null(strstr(sealed_after, "oauth-new"));

    /* a new session uses the stored token: no second refresh */
    char *sid2 = new_session(agent, vault);
    send_text(sid2, "please use echo");
    json_t *res2 = wait_event(sid2, "agent.mcp_tool_result", NULL, NULL, 20000);
    assert_non_null(res2);
    assert_false(json_is_true(json_object_get(res2, "is_error")));
    adm = mcp_admin();
    assert_int_equal(json_array_size(json_object_get(adm, "token_requests")), 1);
    json_decref(adm);
    json_decref(res2);
    json_decref(res);
    free(sid2);
    free(sid);
    free(agent);
    free(cred);
    free(vault);
}

/* An mcp_oauth token the server refuses (no expiry known) is refreshed
 * once, with client_secret_post this time, and the turn goes on. */
static void oauth_refused_token_refreshed(void **state)
{
    (void)state;
    char url[128], tokurl[128], auth[1024];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/oauth/mcp", MCP_PORT);
    snprintf(tokurl, sizeof(tokurl), "http://127.0.0.1:%d/token", MCP_PORT);
    json_t *adm = mcp_admin();
    char rt[64];
    snprintf(rt, sizeof(rt), "%s", s_(adm, "refresh_token"));
    size_t n0 = json_array_size(json_object_get(adm, "token_requests"));
    json_decref(adm);
    char *vault = new_vault();
    snprintf(auth, sizeof(auth),
             "{\"type\":\"mcp_oauth\",\"mcp_server_url\":\"%s\",\"access_token\":\"revoked-x\","
             "\"refresh\":{\"client_id\":\"wp-client\",\"refresh_token\":\"%s\",\"token_endpoint\":\"%s\","
             "\"token_endpoint_auth\":{\"type\":\"client_secret_post\",\"client_secret\":\"s3cret\"}}}",
             url, rt, tokurl);
    free(new_cred(vault, auth));
    char *agent = new_agent(url);
    char *sid = new_session(agent, vault);
    send_text(sid, "please use echo");
    json_t *res = wait_event(sid, "agent.mcp_tool_result", NULL, NULL, 20000);
    assert_non_null(res);
    assert_false(json_is_true(json_object_get(res, "is_error")));
    assert_null(wait_event(sid, "session.error", NULL, NULL, 50));
    adm = mcp_admin();
    json_t *reqs = json_object_get(adm, "token_requests");
    assert_int_equal(json_array_size(reqs), n0 + 1);
    json_t *r = json_array_get(reqs, n0);
    assert_string_equal(s_(r, "auth"), "none"); /* no Basic header */
    assert_true(json_is_true(json_object_get(r, "secret_in_form")));
    assert_string_equal(s_(r, "client_id"), "wp-client");
    json_decref(adm);
    json_decref(res);
    free(sid);
    free(agent);
    free(vault);
}

/* The official Anthropic SDK drives an MCP session (tests/sdk/sdk_mcp.mjs). */
static void sdk_drives_an_mcp_session(void **state)
{
    (void)state;
    static char out[1 << 16];
    int rc = th_sh(out, sizeof(out),
                   "cd tests/sdk && WP_BASE_URL=http://127.0.0.1:%d WP_API_KEY=%s WP_ENV=%s "
                   "WP_MCP_URL=http://127.0.0.1:%d/mcp WP_OAUTH_URL=http://127.0.0.1:%d/oauth/mcp "
                   "timeout 120 node sdk_mcp.mjs 2>&1",
                   S.port, KEY, ENV_ID, MCP_PORT, MCP_PORT);
    printf("%s", out);
    assert_int_equal(rc, 0);
    assert_null(strstr(out, "FAILED"));
    assert_non_null(strstr(out, "sdk-mcp: 4 steps passed"));
}

/* A malformed mcp_toolset is refused and nothing is stored. */
static void bad_toolset_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "\"configs\":[{\"name\":\"x\",\"enabled\":\"yes\"}]",
        "\"configs\":[{\"enabled\":true}]",
        "\"configs\":{}",
        "\"default_config\":{\"permission_policy\":{\"type\":\"sometimes\"}}",
        "\"default_config\":{\"colour\":1}",
        "\"extra\":1",
    };
    json_t *before = call(S.port, "GET", "/v1/agents?limit=100", NULL, 200);
    size_t n0 = json_array_size(json_object_get(before, "data"));
    json_decref(before);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char body[1024];
        snprintf(body, sizeof(body),
                 "{\"name\":\"b\",\"model\":\"claude-test\","
                 "\"mcp_servers\":[{\"type\":\"url\",\"name\":\"s\",\"url\":\"http://127.0.0.1:1/mcp\"}],"
                 "\"tools\":[{\"type\":\"mcp_toolset\",\"mcp_server_name\":\"s\",%s}]}", bad[i]);
        json_t *e = call(S.port, "POST", "/v1/agents", body, 400);
        assert_string_equal(s_(json_object_get(e, "error"), "type"), "invalid_request_error");
        json_decref(e);
    }
    json_t *after = call(S.port, "GET", "/v1/agents?limit=100", NULL, 200);
    assert_int_equal(json_array_size(json_object_get(after, "data")), n0);
    json_decref(after);
}

static json_t *validate(const char *vault, const char *cred, int want)
{
    char path[200];
    snprintf(path, sizeof(path), "/v1/vaults/%s/credentials/%s/mcp_oauth_validate", vault, cred);
    return call(S.port, "POST", path, NULL, want);
}

/* mcp_oauth_validate: a working token, a refused one without refresh, a
 * refresh the token endpoint refuses, a static_bearer credential. Runs
 * after the refresh test: the server's refresh token has moved past R1. */
static void oauth_validate_answers(void **state)
{
    (void)state;
    char url[128], tokurl[128], auth[1024];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/oauth/mcp", MCP_PORT);
    snprintf(tokurl, sizeof(tokurl), "http://127.0.0.1:%d/token", MCP_PORT);
    char *vault = new_vault();
    /* oauth-new-1 was issued (and is still accepted) by the refresh test */
    snprintf(auth, sizeof(auth), "{\"type\":\"mcp_oauth\",\"mcp_server_url\":\"%s\",\"access_token\":\"oauth-new-1\"}", url);
    char *good = new_cred(vault, auth);
    json_t *v = validate(vault, good, 200);
    assert_string_equal(s_(v, "type"), "vault_credential_validation");
    assert_string_equal(s_(v, "status"), "valid");
    assert_string_equal(s_(v, "credential_id"), good);
    assert_string_equal(s_(v, "vault_id"), vault);
    assert_true(json_is_null(json_object_get(v, "mcp_probe")));
    assert_true(json_is_null(json_object_get(v, "refresh")));
    assert_false(json_is_true(json_object_get(v, "has_refresh_token")));
    assert_non_null(s_(v, "validated_at"));
    json_decref(v);

    snprintf(auth, sizeof(auth), "{\"type\":\"mcp_oauth\",\"mcp_server_url\":\"%s\",\"access_token\":\"nope\"}", url);
    char *bad = new_cred(vault, auth);
    v = validate(vault, bad, 200);
    assert_string_equal(s_(v, "status"), "invalid");
    json_t *pr = json_object_get(v, "mcp_probe");
    assert_string_equal(s_(pr, "method"), "initialize");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(pr, "http_response"), "status_code")), 401);
    assert_string_equal(s_(json_object_get(v, "refresh"), "status"), "no_refresh_token");
    json_decref(v);

    snprintf(auth, sizeof(auth),
             "{\"type\":\"mcp_oauth\",\"mcp_server_url\":\"%s\",\"access_token\":\"nope\","
             "\"refresh\":{\"client_id\":\"wp-client\",\"refresh_token\":\"R1\",\"token_endpoint\":\"%s\","
             "\"token_endpoint_auth\":{\"type\":\"client_secret_basic\",\"client_secret\":\"s3cret\"}}}",
             url, tokurl);
    char *stale = new_cred(vault, auth);
    v = validate(vault, stale, 200);
    assert_string_equal(s_(v, "status"), "invalid");
    assert_true(json_is_true(json_object_get(v, "has_refresh_token")));
    json_t *rf = json_object_get(v, "refresh");
    assert_string_equal(s_(rf, "status"), "failed");
    json_t *hr = json_object_get(rf, "http_response");
    assert_int_equal(json_integer_value(json_object_get(hr, "status_code")), 400);
    assert_non_null(strstr(s_(hr, "body"), "invalid_grant"));
    json_decref(v);

    char sb[512];
    snprintf(sb, sizeof(sb), "{\"type\":\"static_bearer\",\"mcp_server_url\":\"%s\",\"token\":\"x\"}", url);
    char *bearer = new_cred(vault, sb);
    json_decref(validate(vault, bearer, 400));
    json_decref(validate(vault, "vcrd_doesnotexist", 404));
    free(bearer);
    free(stale);
    free(bad);
    free(good);
    free(vault);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bearer_tools_listed_and_called),
        cmocka_unit_test(ask_waits_for_confirmation),
        cmocka_unit_test(revoked_token_is_an_auth_error),
        cmocka_unit_test(dead_server_is_a_connection_error),
        cmocka_unit_test(server_session_kept_and_renewed),
        cmocka_unit_test(another_orgs_vault_is_not_used),
        cmocka_unit_test(private_servers_refused_by_default),
        cmocka_unit_test(oauth_expired_token_refreshed_and_stored),
        cmocka_unit_test(oauth_validate_answers),
        cmocka_unit_test(bad_toolset_refused),
        cmocka_unit_test(oauth_refused_token_refreshed),
        cmocka_unit_test(sdk_drives_an_mcp_session),
    };
    return cmocka_run_group_tests_name("brain_mcp", tests, group_setup, group_teardown);
}
