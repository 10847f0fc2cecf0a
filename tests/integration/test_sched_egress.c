/* test_sched_egress.c - a session's environment_variable credentials end to
 * end (issue 16): the API stores the secret sealed, the brain reads the
 * session's vaults and sends the secret only in the relay's route frame,
 * the node confines the sandbox to its egress proxy (warmpool-egress,
 * started by the node) and registers the secret there, the sandbox sees a
 * placeholder. Driven as a user would: HTTP to the scheduler, a model (the
 * local stand-in) asking for bash, commands run in a real sandbox.
 *
 * "The internet" is inetlib's namespace (198.18.6.0/30) with an HTTPS
 * server whose CA the node's proxy trusts upstream, the test's host names
 * pinned to it (--egress-pin). Checked: the sandbox's environment holds
 * the placeholder and the proxy settings, never the secret; a request with
 * the placeholder to the credential's host arrives with the secret, the
 * same to another host with the placeholder; the secret is nowhere in the
 * session's events, the node's or scheduler's logs, the sandbox's files
 * or process environments; a credential whose host a limited environment
 * does not reach gives credential_host_unreachable_error; a session
 * without vaults still gets an unconfined sandbox. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/timeutil.h"
#include "lib/inetlib.h"
#include "lib/sched_testlib.h"
#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "modelserver/msrv_spawn.h"

#define KEY "sk-acme"

static struct th_redis R;
static struct th_sched S;
static struct msrv_proc M;
static struct th_inet I;
static char *DIR_;
static pid_t NODE = -1;
static char ENV_ID[64], LIMITED_ENV_ID[64], AGENT_ID[64], VAULT[64], CRED[64];
static char SECRET[64];
static char GIT_TOKEN[64], GIT_ROOT[1100], GIT_LOG[1100], MAIN_SHA[64], FIRST_SHA[64];
static int GIT_PORT;
static pid_t GIT_PID = -1;

static json_t *call(const char *method, const char *path, const char *body, int want)
{
    struct th_resp r;
    assert_int_equal(th_http(S.port, method, path, KEY, body, &r), 0);
    if (r.status != want)
        fail_msg("%s %s: status %d, want %d: %s", method, path, r.status, want, r.body);
    json_t *o = json_loads(r.body, 0, NULL);
    th_resp_free(&r);
    assert_non_null(o);
    return o;
}

static const char *s_(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* The session's events as served (raw body, caller frees). */
static char *raw_history(const char *sid)
{
    char path[160];
    struct th_resp r;
    snprintf(path, sizeof(path), "/v1/sessions/%s/events?limit=1000", sid);
    assert_int_equal(th_http(S.port, "GET", path, KEY, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    char *out = strdup(r.body);
    th_resp_free(&r);
    return out;
}

static json_t *wait_event(const char *sid, const char *type, const char *etype, int ms)
{
    uint64_t end = wp_now_ms() + (uint64_t)ms;
    do {
        char *raw = raw_history(sid);
        json_t *h = json_loads(raw, 0, NULL), *e;
        free(raw);
        size_t i;
        json_array_foreach(json_object_get(h, "data"), i, e) {
            if (strcmp(s_(e, "type") ?: "", type))
                continue;
            if (etype && strcmp(s_(json_object_get(e, "error"), "type") ?: "", etype))
                continue;
            json_t *out = json_incref(e);
            json_decref(h);
            return out;
        }
        json_decref(h);
        th_msleep(50);
    } while (wp_now_ms() < end);
    return NULL;
}

/* Every agent.tool_result's text, joined (caller frees). */
static char *tool_output(const char *sid)
{
    char *raw = raw_history(sid);
    json_t *h = json_loads(raw, 0, NULL), *e;
    free(raw);
    size_t i, cap = 1 << 20, len = 0;
    char *out = calloc(1, cap);
    json_array_foreach(json_object_get(h, "data"), i, e) {
        if (strcmp(s_(e, "type") ?: "", "agent.tool_result"))
            continue;
        const char *t = s_(json_array_get(json_object_get(e, "content"), 0), "text") ?: "";
        len += (size_t)snprintf(out + len, cap - len, "%s\n", t);
    }
    json_decref(h);
    return out;
}

static char *new_session(const char *env, bool with_vault)
{
    char body[512];
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\",\"vault_ids\":[%s%s%s]}",
             AGENT_ID, env, with_vault ? "\"" : "", with_vault ? VAULT : "", with_vault ? "\"" : "");
    json_t *s = call("POST", "/v1/sessions", body, 200);
    char *id = strdup(s_(s, "id"));
    json_decref(s);
    return id;
}

static void say(const char *sid, const char *text)
{
    char path[160], body[512];
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", sid);
    snprintf(body, sizeof(body),
             "{\"events\":[{\"type\":\"user.message\",\"content\":[{\"type\":\"text\",\"text\":\"%s\"}]}]}",
             text);
    json_decref(call("POST", path, body, 200));
}

static int count_events(const char *sid, const char *type)
{
    char *raw = raw_history(sid);
    json_t *h = json_loads(raw, 0, NULL), *e;
    free(raw);
    size_t i;
    int n = 0;
    json_array_foreach(json_object_get(h, "data"), i, e)
        n += !strcmp(s_(e, "type") ?: "", type);
    json_decref(h);
    return n;
}

/* Say text and wait for the turn's end (one more idle than before). */
static void turn(const char *sid, const char *text)
{
    int before = count_events(sid, "session.status_idle");
    say(sid, text);
    uint64_t end = wp_now_ms() + 60000;
    while (count_events(sid, "session.status_idle") <= before) {
        if (wp_now_ms() > end)
            fail_msg("session %s did not go idle after '%s'", sid, text);
        th_msleep(50);
    }
}

/* ---- setup ---- */

static int write_script(void)
{
    char scr[1100], *js = NULL;
    struct wp_err err;
    int n = asprintf(
        &js,
        "{\"seed\":1,\"ttft_ms\":5,\"tokens_per_s\":500,\"chunk_tokens\":4,"
        "\"conversations\":["
        " {\"match\":\"show env\",\"turns\":["
        "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":"
        "\"echo TOKEN=$API_TOKEN; echo PROXY=$HTTPS_PROXY; cat $SSL_CERT_FILE | head -1\"}}]},"
        "   {\"text\":\"shown\"},"
        "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":"
        "\"curl -sS --max-time 20 -H \\\"Authorization: Bearer $API_TOKEN\\\" "
        "https://api.allowed.test:%d/with-secret; echo; curl -sS --max-time 20 -H "
        "\\\"Authorization: Bearer $API_TOKEN\\\" https://api.other.test:%d/elsewhere; echo; "
        "curl -sS --noproxy '*' -k --max-time 3 https://%s:%d/direct >/dev/null 2>&1; echo direct=$?\"}}]},"
        "   {\"text\":\"called\"}]},"
        " {\"match\":\"look around\",\"turns\":["
        "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":"
        "\"echo PROXY=${HTTPS_PROXY:-none}; echo TOKEN=${API_TOKEN:-none}\"}}]},"
        "   {\"text\":\"looked\"}]},"
        " {\"match\":\"check repo\",\"turns\":["
        "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":"
        "\"cd /workspace/demo && echo HEAD=$(git rev-parse HEAD) && echo BRANCH=$(git branch --show-current) "
        "&& cat README && git config user.email t@t && git config user.name t && echo from-sandbox > pushed.txt "
        "&& git add pushed.txt && git commit -qm pushed && git push -q origin HEAD:refs/heads/from-sandbox-$(hostname) 2>&1; "
        "echo push=$?; git fetch -q origin 2>&1; echo fetch=$?\"}}]},"
        "   {\"text\":\"checked\"}]},"
        " {\"match\":\"keep fetching\",\"turns\":["
        "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":"
        "\"cd /workspace/demo && git fetch -q origin 2>&1; echo fetch=$?\"}}]}, {\"text\":\"one\"},"
        "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":"
        "\"cd /workspace/demo && git fetch -q origin 2>&1; echo fetch=$?\"}}]}, {\"text\":\"two\"},"
        "   {\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":"
        "\"cd /workspace/demo && git fetch -q origin 2>&1; echo fetch=$?\"}}]}, {\"text\":\"three\"}]},"
        " {\"turns\":[\"Hello!\"]}]}",
        I.tls_port, I.tls_port, I.addr, I.tls_port);
    snprintf(scr, sizeof(scr), "%s/script.json", DIR_);
    int rc = n > 0 && wp_write_file(scr, js, strlen(js), 0644, &err) == 0 ? 0 : -1;
    free(js);
    return rc;
}

/* The operator's pool environment: hands, host rootfs, a network. */
static int write_template(char *path, size_t cap)
{
    char wp[1024], json[2048];
    struct wp_err err;
    if (th_hands_copy(DIR_, wp, sizeof(wp)) < 0)
        return -1;
    snprintf(path, cap, "%s/egpool.json", DIR_);
    snprintf(json, sizeof(json),
             "{\"name\":\"egpool\",\"rootfs\":\"host\",\"workdir\":\"/work\","
             "\"init_sets_hostname\":true,\"init\":[\"/.wp/warmpool-hands\",\"--socket\","
             "\"/run/warmpool/hands.sock\",\"--workdir\",\"/work\",\"--ready-file\","
             "\"/run/warmpool/hands.ready\"],\"ready_file\":\"/run/warmpool/hands.ready\","
             "\"binds\":[{\"source\":\"%s\",\"target\":\"/.wp\"}],"
             "\"network\":{\"mode\":\"unrestricted\"},"
             "\"limits\":{\"memory_mb\":256,\"pids\":64}}",
             wp);
    return wp_write_file(path, json, strlen(json), 0644, &err) < 0 ? -1 : 0;
}

/* A private repository: demo.git with main (two commits) and feature,
 * served by git_server.py in the test's internet as allowed.test. */
static int start_git(void)
{
    char out[4096], script[1100], ready[1100];
    uint8_t rnd[8];
    if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd))
        return -1;
    snprintf(GIT_TOKEN, sizeof(GIT_TOKEN), "ghs_%02x%02x%02x%02x%02x%02x%02x%02xGITTOKEN", rnd[0],
             rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    snprintf(GIT_ROOT, sizeof(GIT_ROOT), "%s/git", DIR_);
    if (th_sh(out, sizeof(out),
              "set -e; mkdir -p %s; cd %s; git init -q --bare -b main demo.git; "
              "git -C demo.git config http.receivepack true; "
              "git init -q -b main w; cd w; git config user.email t@t; git config user.name t; "
              "echo first > README; git add README; git commit -qm first; "
              "echo second > README; git commit -qam second; "
              "git checkout -qb feature; echo on-feature > README; git commit -qam feature; "
              "git push -q ../demo.git main feature; git checkout -q main; "
              "echo MAIN=$(git rev-parse main); echo FIRST=$(git rev-parse main~1)",
              GIT_ROOT, GIT_ROOT) != 0) {
        fprintf(stderr, "git repo: %s\n", out);
        return -1;
    }
    sscanf(strstr(out, "MAIN=") + 5, "%40s", MAIN_SHA);
    sscanf(strstr(out, "FIRST=") + 6, "%40s", FIRST_SHA);
    if (th_source_file("git_server.py", script, sizeof(script)) < 0)
        return -1;
    snprintf(GIT_LOG, sizeof(GIT_LOG), "%s/git-requests.log", DIR_);
    snprintf(ready, sizeof(ready), "%s/git.ready", DIR_);
    GIT_PORT = th_free_port();
    GIT_PID = fork();
    if (GIT_PID == 0) {
        char port[16], cert[700], key[700];
        snprintf(port, sizeof(port), "%d", GIT_PORT);
        snprintf(cert, sizeof(cert), "%s/srv.pem", I.tlsdir);
        snprintf(key, sizeof(key), "%s/srv.key", I.tlsdir);
        execlp("ip", "ip", "netns", "exec", I.ns, "python3", script, port, cert, key, GIT_ROOT,
               GIT_TOKEN, GIT_LOG, ready, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200 && access(ready, F_OK) != 0; i++)
        th_msleep(50);
    return access(ready, F_OK) == 0 ? 0 : -1;
}

static int group_setup(void **state)
{
    char tmpl[1100], spec[1200], url[128], scr[1100], log[1200], st[1200], upstream[700];
    char pin1[64], pin2[64], pin3[64];
    (void)state;

    if (th_redis_start(&R, 0) < 0)
        return -1;
    DIR_ = th_tmpdir("sched-egress");
    if (th_inet_start(&I, DIR_, 6) < 0 || write_script() < 0 ||
        write_template(tmpl, sizeof(tmpl)) < 0 || start_git() < 0)
        return -1;
    uint8_t rnd[8];
    if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd))
        return -1;
    snprintf(SECRET, sizeof(SECRET), "sk-live-%02x%02x%02x%02x%02x%02x%02x%02xSECRET", rnd[0],
             rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    snprintf(scr, sizeof(scr), "%s/script.json", DIR_);
    const char *margs[] = { "--script", scr, "--log-level", "warn", NULL };
    if (msrv_spawn(&M, margs) < 0)
        return -1;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", M.port);
    setenv("ANTHROPIC_API_KEY", "sk-test-model", 1);
    if (th_sched_start(&S, R.port, "--model-url", url, "--rate-create", "0", "--rate-read", "0",
                       NULL) < 0)
        return -1;

    snprintf(spec, sizeof(spec), "%s:1:2", tmpl);
    snprintf(log, sizeof(log), "%s/node.log", DIR_);
    snprintf(st, sizeof(st), "%s/state", DIR_);
    snprintf(upstream, sizeof(upstream), "%s/ca.pem", I.tlsdir);
    snprintf(pin1, sizeof(pin1), "api.allowed.test=%s", I.addr);
    snprintf(pin2, sizeof(pin2), "api.other.test=%s", I.addr);
    snprintf(pin3, sizeof(pin3), "allowed.test=%s", I.addr);
    NODE = th_node_start("eg1", R.port, st, log, "--env", spec, "--egress-upstream-ca", upstream,
                         "--egress-pin", pin1, "--egress-pin", pin2, "--egress-pin", pin3,
                         (char *)NULL);
    if (NODE < 0 || !th_wait_hot(R.port, "egpool", 1, 60))
        return -1;

    json_t *ag = call("POST", "/v1/agents",
                      "{\"name\":\"eg\",\"model\":\"claude-test\","
                      "\"tools\":[{\"type\":\"agent_toolset_20260401\"}]}", 200);
    snprintf(AGENT_ID, sizeof(AGENT_ID), "%s", s_(ag, "id"));
    json_decref(ag);
    json_t *en = call("POST", "/v1/environments",
                      "{\"name\":\"eg-env\",\"config\":{\"type\":\"cloud\"},"
                      "\"metadata\":{\"warmpool.pool\":\"egpool\"}}", 200);
    snprintf(ENV_ID, sizeof(ENV_ID), "%s", s_(en, "id"));
    json_decref(en);
    en = call("POST", "/v1/environments",
              "{\"name\":\"eg-limited\",\"config\":{\"type\":\"cloud\",\"networking\":"
              "{\"type\":\"limited\",\"allowed_hosts\":[\"api.other.test\"]}},"
              "\"metadata\":{\"warmpool.pool\":\"egpool\"}}", 200);
    snprintf(LIMITED_ENV_ID, sizeof(LIMITED_ENV_ID), "%s", s_(en, "id"));
    json_decref(en);
    json_t *v = call("POST", "/v1/vaults", "{\"display_name\":\"eg\"}", 200);
    snprintf(VAULT, sizeof(VAULT), "%s", s_(v, "id"));
    json_decref(v);
    char path[160], body[1024];
    snprintf(path, sizeof(path), "/v1/vaults/%s/credentials", VAULT);
    snprintf(body, sizeof(body),
             "{\"auth\":{\"type\":\"environment_variable\",\"secret_name\":\"API_TOKEN\","
             "\"secret_value\":\"%s\",\"injection_location\":{\"header\":true},"
             "\"networking\":{\"type\":\"limited\",\"allowed_hosts\":[\"api.allowed.test\"]}}}",
             SECRET);
    json_t *c = call("POST", path, body, 200);
    snprintf(CRED, sizeof(CRED), "%s", s_(c, "id"));
    json_decref(c);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    int rc = 0;
    if (S.pid > 0 && th_sched_stop(&S) != 0)
        rc = -1;
    if (NODE > 0) {
        kill(NODE, SIGTERM);
        waitpid(NODE, NULL, 0);
    }
    msrv_stop(&M);
    if (GIT_PID > 0) {
        kill(GIT_PID, SIGKILL);
        waitpid(GIT_PID, NULL, 0);
    }
    th_inet_stop(&I);
    th_redis_stop(&R);
    if (DIR_ && !getenv("WP_TEST_KEEP"))
        th_rmtree(DIR_);
    free(DIR_);
    return rc;
}

/* ---- tests ---- */

static char *SID; /* the session with the vault, kept across tests */

/* The sandbox's variable holds a placeholder, never the secret; its
 * tools find the proxy and trust the node's CA. */
static void the_sandbox_sees_a_placeholder(void **state)
{
    (void)state;
    SID = new_session(ENV_ID, true);
    turn(SID, "show env");
    char *out = tool_output(SID);
    if (!strstr(out, "TOKEN=wpcred_") || strstr(out, SECRET))
        fail_msg("the sandbox's API_TOKEN is not a placeholder: %s", out);
    if (!strstr(out, "PROXY=http://10.88."))
        fail_msg("no egress proxy in the sandbox's environment: %s", out);
    if (!strstr(out, "-----BEGIN CERTIFICATE-----"))
        fail_msg("the node's CA is not where SSL_CERT_FILE says: %s", out);
    free(out);
}

/* The credential's host gets the secret; another host, the placeholder;
 * around the proxy, nothing. */
static void the_proxy_puts_the_secret_in_for_its_host_only(void **state)
{
    (void)state;
    assert_non_null(SID);
    turn(SID, "call apis");
    char *out = tool_output(SID);
    char *got = th_inet_arrived(&I, "/with-secret");
    if (!got)
        fail_msg("nothing arrived at the allowed host; the tools said: %s", out);
    char want[128];
    snprintf(want, sizeof(want), "Bearer %s", SECRET);
    if (!strstr(got, want))
        fail_msg("the allowed host got no secret: %s", got);
    free(got);
    got = th_inet_arrived(&I, "/elsewhere");
    assert_non_null(got);
    if (strstr(got, SECRET) || !strstr(got, "Bearer wpcred_"))
        fail_msg("another host got the secret (or no placeholder): %s", got);
    free(got);
    if (!strstr(out, "direct=") || strstr(out, "direct=0"))
        fail_msg("the confined sandbox reached the internet around the proxy: %s", out);
    assert_null(th_inet_arrived(&I, "/direct"));
    free(out);
}

static int g_hits;
static char SECRET_SEARCH[128];
static char g_where[600];
static int grep_cb(const char *path, const struct stat *st, int type, struct FTW *f)
{
    (void)f;
    if (type != FTW_F || !S_ISREG(st->st_mode) || st->st_size > (64 << 20))
        return 0;
    char *data = NULL;
    size_t len = 0;
    struct wp_err err;
    if (wp_read_file(path, (size_t)st->st_size + 1, &data, &len, &err) == 0 &&
        memmem(data, len, SECRET_SEARCH, strlen(SECRET_SEARCH))) {
        g_hits++;
        snprintf(g_where, sizeof(g_where), "%s", path);
    }
    free(data);
    return 0;
}

/* Nowhere but the proxy: not the log a client reads, not the node's log, not
 * the sandbox's files or any of its processes' environments. */
static void the_secret_is_nowhere_else(void **state)
{
    (void)state;
    assert_non_null(SID);
    char *raw = raw_history(SID);
    assert_null(strstr(raw, SECRET));
    free(raw);
    char st[1200];
    snprintf(st, sizeof(st), "%s/state", DIR_);
    g_hits = 0;
    snprintf(SECRET_SEARCH, sizeof(SECRET_SEARCH), "%s", SECRET);
    /* the node's state: sandboxes' roots, images, the proxy's CA dir */
    nftw(st, grep_cb, 32, FTW_PHYS);
    if (g_hits)
        fail_msg("the secret is in %s", g_where);
    char out[8192];
    /* every process on the host whose environment holds it */
    th_sh(out, sizeof(out), "grep -l -a -F '%s' /proc/[0-9]*/environ 2>/dev/null | head -3; true",
          SECRET);
    if (strstr(out, "environ"))
        fail_msg("a process environment holds the secret: %s", out);
    th_sh(out, sizeof(out), "grep -l -a -F '%s' %s/node.log 2>/dev/null; true", SECRET, DIR_);
    if (strstr(out, ".log"))
        fail_msg("the node's log (the proxy's too) holds the secret: %s", out);
    /* The control: the same search finds it where it was sent. */
    th_sh(out, sizeof(out), "grep -l -a -F '%s' %s 2>/dev/null; true", SECRET, I.log);
    if (!strstr(out, ".log"))
        fail_msg("the search does not find the secret even where it arrived");
}

/* A limited environment that does not reach the credential's host: the
 * session says so (and goes on). */
static void an_unreachable_credential_host_is_an_error(void **state)
{
    (void)state;
    char *sid = new_session(LIMITED_ENV_ID, true);
    turn(sid, "look around");
    json_t *e = wait_event(sid, "session.error", "credential_host_unreachable_error", 5000);
    if (!e)
        fail_msg("no credential_host_unreachable_error");
    json_t *err = json_object_get(e, "error");
    assert_string_equal(s_(err, "credential_id"), CRED);
    assert_string_equal(s_(err, "vault_id"), VAULT);
    json_decref(e);
    free(sid);
}

/* Without vaults nothing changes: no proxy, no placeholder. */
static void a_session_without_secrets_is_not_confined(void **state)
{
    (void)state;
    char *sid = new_session(ENV_ID, false);
    turn(sid, "look around");
    char *out = tool_output(sid);
    if (!strstr(out, "PROXY=none") || !strstr(out, "TOKEN=none"))
        fail_msg("a session without vaults got egress settings: %s", out);
    free(out);
    free(sid);
}

/* A session with a repository: body is the resource's JSON without url. */
static char *repo_session_at(const char *repo, const char *token, const char *resource_rest)
{
    char body[2048], tok[128] = "";
    if (token)
        snprintf(tok, sizeof(tok), ",\"authorization_token\":\"%s\"", token);
    snprintf(body, sizeof(body),
             "{\"agent\":\"%s\",\"environment_id\":\"%s\",\"resources\":[{\"type\":"
             "\"github_repository\",\"url\":\"https://allowed.test:%d/%s\"%s%s}]}",
             AGENT_ID, ENV_ID, GIT_PORT, repo, tok, resource_rest);
    json_t *s = call("POST", "/v1/sessions", body, 200);
    /* The token is write-only: never in what the API serves. */
    char *dump = json_dumps(s, 0);
    if (token)
        assert_null(strstr(dump, token));
    free(dump);
    char *id = strdup(s_(s, "id"));
    json_decref(s);
    return id;
}

static char *repo_session(const char *token, const char *resource_rest)
{
    return repo_session_at("demo.git", token, resource_rest);
}

/* A private repository at a branch: cloned before the first tool call,
 * pushed to and fetched from inside, the token nowhere in the sandbox. */
static void a_private_repository_is_cloned_at_its_branch(void **state)
{
    (void)state;
    char *sid = repo_session(GIT_TOKEN, ",\"checkout\":{\"type\":\"branch\",\"name\":\"feature\"}");
    turn(sid, "check repo");
    char *out = tool_output(sid);
    if (!strstr(out, "BRANCH=feature") || !strstr(out, "on-feature"))
        fail_msg("not the feature branch: %s", out);
    if (!strstr(out, "push=0") || !strstr(out, "fetch=0"))
        fail_msg("push or fetch from inside failed: %s", out);
    free(out);
    char sh[4096];
    th_sh(sh, sizeof(sh), "git --git-dir=%s/demo.git for-each-ref --format='%%(refname)' refs/heads/",
          GIT_ROOT);
    if (!strstr(sh, "refs/heads/from-sandbox-"))
        fail_msg("the push did not arrive: %s", sh);
    /* The host got the token (from the proxy); the sandbox never had it. */
    th_sh(sh, sizeof(sh), "grep -c 'auth=Basic' %s; true", GIT_LOG);
    assert_true(atoi(sh) > 0);
    char st[1200];
    snprintf(st, sizeof(st), "%s/state", DIR_);
    snprintf(SECRET_SEARCH, sizeof(SECRET_SEARCH), "%s", GIT_TOKEN);
    g_hits = 0;
    nftw(st, grep_cb, 32, FTW_PHYS);
    if (g_hits)
        fail_msg("the token is in %s", g_where);
    th_sh(sh, sizeof(sh), "grep -l -a -F '%s' /proc/[0-9]*/environ %s/node.log 2>/dev/null | head -3; true",
          GIT_TOKEN, DIR_);
    if (strstr(sh, "environ") || strstr(sh, "node.log"))
        fail_msg("the token is in %s", sh);
    char *raw = raw_history(sid);
    assert_null(strstr(raw, GIT_TOKEN));
    free(raw);
    snprintf(SECRET_SEARCH, sizeof(SECRET_SEARCH), "%s", SECRET);
    free(sid);
}

/* A commit checkout: HEAD is that commit. */
static void a_repository_is_checked_out_at_a_commit(void **state)
{
    (void)state;
    char rest[256];
    snprintf(rest, sizeof(rest), ",\"checkout\":{\"type\":\"commit\",\"sha\":\"%s\"},"
             "\"mount_path\":\"/workspace/demo\"", FIRST_SHA);
    char *sid = repo_session(GIT_TOKEN, rest);
    turn(sid, "check repo");
    char *out = tool_output(sid), want[80];
    snprintf(want, sizeof(want), "HEAD=%s", FIRST_SHA);
    if (!strstr(out, want) || !strstr(out, "first"))
        fail_msg("not at commit %s: %s", FIRST_SHA, out);
    free(out);
    free(sid);
}

/* What goes wrong is said as the reference's repository errors, and the
 * session goes on. */
static void repository_failures_are_session_errors(void **state)
{
    (void)state;
    struct { const char *repo, *token, *rest, *type; } cases[] = {
        { "demo.git", "ghs_wrong", "", "repository_authentication_error" },
        { "demo.git", "ghs_readonly", "", "repository_forbidden_error" },
        { "nothere.git", GIT_TOKEN, "", "repository_not_found_error" },
        { "demo.git", GIT_TOKEN, ",\"checkout\":{\"type\":\"branch\",\"name\":\"no-such-branch\"}",
          "repository_checkout_error" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *sid = repo_session_at(cases[i].repo, cases[i].token, cases[i].rest);
        turn(sid, "check repo");
        json_t *e = wait_event(sid, "session.error", cases[i].type, 5000);
        if (!e) {
            /* what was said instead (the node's log has the proxy's side) */
            json_t *other = wait_event(sid, "session.error", NULL, 100);
            char *what = other ? json_dumps(json_object_get(other, "error"), 0) : NULL;
            char msg[1024];
            snprintf(msg, sizeof(msg), "%s", what ? what : "no session.error at all");
            free(what);
            json_decref(other);
            fail_msg("case %zu (%s): no %s; instead: %s", i, cases[i].repo, cases[i].type, msg);
        }
        assert_string_equal(s_(json_object_get(json_object_get(e, "error"), "retry_status"), "type"),
                            "retrying");
        json_decref(e);
        free(sid);
    }
}

/* Bad resources change nothing. */
static void bad_repository_resources_are_refused(void **state)
{
    (void)state;
    const char *bad[] = {
        "\"url\":\"http://allowed.test/demo.git\"",
        "\"url\":\"https://user:pw@allowed.test/demo.git\"",
        "\"url\":\"https://allowed.test/demo.git\",\"mount_path\":\"/workspace/../etc\"",
        "\"url\":\"https://allowed.test/demo.git\",\"mount_path\":\"/w/$(reboot)\"",
        "\"url\":\"https://allowed.test/demo.git\",\"checkout\":{\"type\":\"branch\",\"name\":\"x';reboot;'\"}",
        "\"url\":\"https://allowed.test/demo.git\",\"checkout\":{\"type\":\"commit\",\"sha\":\"zz\"}",
        "\"url\":\"https://allowed.test/demo.git\",\"authorization_token\":\"\"",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char body[1024];
        snprintf(body, sizeof(body),
                 "{\"agent\":\"%s\",\"environment_id\":\"%s\",\"resources\":[{\"type\":"
                 "\"github_repository\",%s}]}", AGENT_ID, ENV_ID, bad[i]);
        json_decref(call("POST", "/v1/sessions", body, 400));
    }
}

/* Rotation: the new token is stored (sealed) and a fresh session's
 * sandbox clones with it. */
static void a_rotated_token_is_used(void **state)
{
    (void)state;
    char *sid = repo_session("ghs_wrong", "");
    char path[256], body[256];
    json_t *rs = call("GET", (snprintf(path, sizeof(path), "/v1/sessions/%s/resources", sid), path),
                      NULL, 200);
    const char *rid = s_(json_array_get(json_object_get(rs, "data"), 0), "id");
    assert_non_null(rid);
    snprintf(path, sizeof(path), "/v1/sessions/%s/resources/%s", sid, rid);
    snprintf(body, sizeof(body), "{\"authorization_token\":\"%s\"}", GIT_TOKEN);
    json_t *up = call("POST", path, body, 200);
    char *dump = json_dumps(up, 0);
    assert_null(strstr(dump, GIT_TOKEN));
    free(dump);
    json_decref(up);
    json_decref(rs);
    turn(sid, "check repo");
    char *out = tool_output(sid);
    if (!strstr(out, "BRANCH=main") || !strstr(out, "second"))
        fail_msg("the rotated token did not clone: %s", out);
    free(out);
    free(sid);
}

/* The last agent.tool_result's text (caller frees). */
static char *last_tool_output(const char *sid)
{
    char *raw = raw_history(sid);
    json_t *h = json_loads(raw, 0, NULL), *e, *last = NULL;
    free(raw);
    size_t i;
    json_array_foreach(json_object_get(h, "data"), i, e)
        if (!strcmp(s_(e, "type") ?: "", "agent.tool_result"))
            last = e;
    char *out = strdup(last ? s_(json_array_get(json_object_get(last, "content"), 0), "text") ?: "" : "");
    json_decref(h);
    return out;
}

static void rotate(const char *sid, const char *token)
{
    char path[256], body[256];
    json_t *rs = call("GET", (snprintf(path, sizeof(path), "/v1/sessions/%s/resources", sid), path),
                      NULL, 200);
    snprintf(path, sizeof(path), "/v1/sessions/%s/resources/%s", sid,
             s_(json_array_get(json_object_get(rs, "data"), 0), "id"));
    snprintf(body, sizeof(body), "{\"authorization_token\":\"%s\"}", token);
    json_decref(call("POST", path, body, 200));
    json_decref(rs);
}

/* A token rotated while the session keeps its sandbox: the next turn's
 * git fetch from inside uses the new one (a wrong one fails, the right
 * one again works). */
static void a_rotated_token_reaches_the_running_sandbox(void **state)
{
    (void)state;
    char *sid = repo_session(GIT_TOKEN, "");
    turn(sid, "keep fetching");
    char *out = last_tool_output(sid);
    if (!strstr(out, "fetch=0"))
        fail_msg("the first fetch failed: %s", out);
    free(out);
    rotate(sid, "ghs_wrong");
    turn(sid, "again");
    out = last_tool_output(sid);
    if (strstr(out, "fetch=0"))
        fail_msg("a fetch with the rotated (wrong) token still worked: the sandbox kept the old one: %s", out);
    free(out);
    rotate(sid, GIT_TOKEN);
    turn(sid, "and again");
    out = last_tool_output(sid);
    if (!strstr(out, "fetch=0"))
        fail_msg("the fetch after rotating back failed: %s", out);
    free(out);
    free(sid);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(the_sandbox_sees_a_placeholder),
        cmocka_unit_test(the_proxy_puts_the_secret_in_for_its_host_only),
        cmocka_unit_test(the_secret_is_nowhere_else),
        cmocka_unit_test(an_unreachable_credential_host_is_an_error),
        cmocka_unit_test(a_session_without_secrets_is_not_confined),
        cmocka_unit_test(a_private_repository_is_cloned_at_its_branch),
        cmocka_unit_test(a_repository_is_checked_out_at_a_commit),
        cmocka_unit_test(repository_failures_are_session_errors),
        cmocka_unit_test(bad_repository_resources_are_refused),
        cmocka_unit_test(a_rotated_token_is_used),
        cmocka_unit_test(a_rotated_token_reaches_the_running_sandbox),
    };
    if (geteuid() != 0) {
        printf("1..0 # SKIP needs root (namespaces, nftables)\n");
        return 0;
    }
    return cmocka_run_group_tests_name("sched_egress", tests, group_setup, group_teardown);
}
