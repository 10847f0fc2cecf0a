/* test_faults.c - issue 18's fault matrix on one machine over loopback.
 * Under steady, bounded session load (tests/lib/load_testlib: sessions
 * looping user message -> scripted bash call -> result -> idle, an SSE
 * stream per session resuming with Last-Event-ID, a /v1/sandboxes user),
 * one fault at a time, then: no acknowledged event lost or duplicated,
 * every session at idle or a clear session.error, every stream saw every
 * event once, nothing left behind (sandboxes, mounts, cgroups, Redis keys
 * of dead owners). Real Redis (AOF; Sentinel for the failover), real
 * nodes with hands sandboxes, two schedulers, the model stand-in.
 * WP_FAULTS_OUT=FILE: one JSON line per fault (bench/bench_faults.sh). */
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <glob.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/load_testlib.h"
#include "lib/model_testlib.h"
#include "lib/sched_testlib.h"
#include "lib/rcluster_testlib.h"
#include "lib/sentinel_testlib.h"
#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "modelserver/msrv_spawn.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/rcluster.h"
#include "base/timeutil.h"

#define KEY "sk-acme"
#define POOL "faultpool"
#define NSESS 3
#define MASTER "wpf"

static struct th_redis R;
static struct th_sentinel T; /* the Sentinel group's Redis */
static int RPORT;            /* the Redis the checks read (R.port, or T's primary) */
static struct th_sched S[2];
static struct msrv_proc M;
static char *DIR_;
static char MURL[128], SPEC[1200], ENV_ID[64], AGENT_ID[64], SCRIPT[1100];
static const char *NODE_ID[2] = { "fn0", "fn1" };
static pid_t NODE[2];
static int NNODES;
static redisContext *RC;
static bool SENTINEL;
static bool CLUSTER;         /* the Redis Cluster group: RS instead of RC */
static struct th_rcluster CL;
static char SEEDS[512];
static struct wp_rcl_sync *RS;

/* ---- helpers ---- */

static json_t *call(int port, const char *method, const char *path, const char *body, int want)
{
    return th_api(port, KEY, method, path, body, want);
}

static const char *s_(json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? v : "";
}

/* On a cluster: the slot map read again (after a failover), and RPORT the
 * master of the pool's slot (th_wait_hot reads it there). */
static void rc_reconnect(void)
{
    struct wp_err err;
    if (CLUSTER) {
        wp_rcl_sync_free(RS);
        RS = wp_rcl_sync_new(&err);
        RPORT = th_rcluster_owner(&CL, wp_rcl_keyslot("{" POOL "}", strlen("{" POOL "}")));
        return;
    }
    if (RC)
        redisFree(RC);
    RC = redisConnect("127.0.0.1", RPORT);
}

/* One command: to the one Redis, or routed by its key on a cluster. */
static redisReply *vcmd(const char *fmt, va_list ap)
{
    if (!CLUSTER)
        return RC ? redisvCommand(RC, fmt, ap) : NULL;
    char *f = NULL;
    struct wp_err err;
    int len = redisvFormatCommand(&f, fmt, ap);
    redisReply *r = len > 0 && RS ? wp_rcl_sync_formatted(RS, f, (size_t)len, &err) : NULL;
    redisFreeCommand(f);
    return r;
}

static redisReply *cmd(const char *fmt, ...)
{
    for (int t = 0; t < 2; t++) {
        va_list ap;
        va_start(ap, fmt);
        redisReply *r = vcmd(fmt, ap);
        va_end(ap);
        if (r)
            return r;
        rc_reconnect();
    }
    return NULL;
}

static long long rint_cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vcmd(fmt, ap);
    va_end(ap);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer
                  : r && r->type == REDIS_REPLY_STRING ? atoll(r->str)
                                                        : -1;
    if (!r)
        rc_reconnect();
    freeReplyObject(r);
    return v;
}

static void node_start(int i)
{
    char log[1100], state[1100];
    snprintf(log, sizeof(log), "%s/node-%s.log", DIR_, NODE_ID[i]);
    snprintf(state, sizeof(state), "%s/state-%s", DIR_, NODE_ID[i]);
    if (SENTINEL)
        NODE[i] = th_node_start(NODE_ID[i], T.dead, state, log, "--env", SPEC, "--no-api-envs",
                                "--heartbeat-ttl", "2", "--redis-sentinels", T.list, "--redis-master",
                                MASTER, NULL);
    else if (CLUSTER)
        NODE[i] = th_node_start(NODE_ID[i], CL.port[0], state, log, "--env", SPEC, "--no-api-envs",
                                "--heartbeat-ttl", "2", "--redis-cluster", SEEDS, NULL);
    else
        NODE[i] = th_node_start(NODE_ID[i], RPORT, state, log, "--env", SPEC, "--no-api-envs",
                                "--heartbeat-ttl", "2", NULL);
    assert_true(NODE[i] > 0);
}

static void sched_start(int i)
{
    int rc;
    if (SENTINEL)
        rc = th_sched_start(&S[i], T.dead, "--model-url", MURL, "--brain-lease-ms", "3000",
                            "--brain-linger", "1", "--model-idle-timeout", "3", "--model-backoff", "0.2",
                            "--sandbox-lease", "6", "--rate-read", "0", "--rate-sandbox", "0", "--redis-sentinels", T.list, "--redis-master", MASTER,
                            "--redis-wait-replicas", "1", "--redis-wait-ms", "2000", NULL);
    else if (CLUSTER)
        rc = th_sched_start(&S[i], CL.port[0], "--model-url", MURL, "--brain-lease-ms", "3000",
                            "--brain-linger", "1", "--model-idle-timeout", "3", "--model-backoff", "0.2",
                            "--sandbox-lease", "6", "--rate-read", "0", "--rate-sandbox", "0", "--redis-cluster", SEEDS,
                            "--redis-wait-replicas", "1", "--redis-wait-ms", "2000", NULL);
    else
        rc = th_sched_start(&S[i], RPORT, "--model-url", MURL, "--brain-lease-ms", "3000",
                            "--brain-linger", "1", "--model-idle-timeout", "3", "--model-backoff", "0.2",
                            "--sandbox-lease", "6", "--rate-read", "0", "--rate-sandbox", "0", NULL);
    assert_int_equal(rc, 0);
}

/* Ids (env and sandbox) of node n's set in Redis, as one "env id" per row. */
static int node_set(int n, char ids[][128], int cap)
{
    int c = 0;
    redisReply *m = cmd("SMEMBERS wp:node:%s:sbs", NODE_ID[n]);
    for (size_t i = 0; m && m->type == REDIS_REPLY_ARRAY && i < m->elements && c < cap; i++) {
        char env[128];
        if (sscanf(m->element[i]->str, "%127s %127s", env, ids[c]) == 2)
            c++;
    }
    freeReplyObject(m);
    return c;
}

/* Sandboxes leased to no live holder: a resent claim's first request
 * (pool/client.c: its answer was lost), or the sandbox of a brain that
 * stopped when its Redis connection died (it cannot release then). Never
 * renewed (a holder renews at a third of the 60 s claim lease, so its
 * lease always has 40 s or more left), they go back to their node when
 * the lease ends: counted as orphans, not leaks. id -> the lease_until
 * first seen; a larger one later means someone renews it after all. */
static json_t *ORPH;

static bool orphan(const char *id, const char *until)
{
    if (!until)
        return false;
    double u = atof(until), now = (double)wp_wall_ms(), left = (u - now) / 1e3;
    json_t *first = json_object_get(ORPH, id);
    if (left > 38)
        return false;
    if (!first || json_real_value(json_array_get(first, 0)) != u) { /* first seen, or renewed */
        json_object_set_new(ORPH, id, json_pack("[f,f]", u, now));
        return false;
    }
    return now - json_real_value(json_array_get(first, 1)) >= 3000; /* the same for 3 s */
}

/* Sandboxes leased on node n (say: each printed with its holder; orphans:
 * count those a resent claim left too). */
static int leased_on_say(int n, bool say, bool orphans)
{
    char ids[64][128];
    int c = 0, k = node_set(n, ids, 64);
    for (int i = 0; i < k; i++) {
        redisReply *s = cmd("HMGET wp:env:{" POOL "}:sb:%s state session lease_until", ids[i]);
        bool l = s && s->type == REDIS_REPLY_ARRAY && s->element[0]->str && !strcmp(s->element[0]->str, "leased");
        if (l && !orphans && orphan(ids[i], s->element[2]->str))
            l = false;
        if (l && say) {
            redisReply *h = s->element[1]->str ? cmd("HGET wp:obj:{%s} sbx_sandbox", s->element[1]->str) : NULL;
            print_message("# leak: %s leased on %s by %s (which holds %s), lease until %+.1f s\n", ids[i],
                          NODE_ID[n], s->element[1]->str ? s->element[1]->str : "?",
                          h && h->type == REDIS_REPLY_STRING ? h->str : "-",
                          s->element[2]->str ? (atof(s->element[2]->str) - (double)wp_wall_ms()) / 1e3 : 0.0);
            freeReplyObject(h);
        }
        c += l;
        freeReplyObject(s);
    }
    return c;
}

static int leased_on(int n)
{
    return leased_on_say(n, false, true);
}

/* Sandbox dirs of node n on disk. */
static int node_dirs(int n, char ids[][128], int cap)
{
    char path[1200];
    int c = 0;
    snprintf(path, sizeof(path), "%s/state-%s/sandboxes", DIR_, NODE_ID[n]);
    DIR *d = opendir(path);
    struct dirent *e;
    while (d && (e = readdir(d)) && c < cap)
        if (e->d_name[0] != '.')
            snprintf(ids[c++], 128, "%s", e->d_name);
    if (d)
        closedir(d);
    return c;
}

/* Every sandbox id our nodes ever showed (for the leak checks). */
static json_t *KNOWN;

static void note_ids(void)
{
    char ids[64][128];
    for (int n = 0; n < NNODES; n++) {
        int k = node_dirs(n, ids, 64);
        for (int i = 0; i < k; i++)
            json_object_set_new(KNOWN, ids[i], json_true());
    }
}

static bool has_id(char ids[][128], int n, const char *id)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(ids[i], id))
            return true;
    return false;
}

/* Sessions in the brain's active set (its 16 shards, wp:brain:active:{0..15}):
 * input with an unfinished turn, until the sweep drops what finished. */
static long long brain_active(void)
{
    long long n = 0;
    for (int b = 0; b < 16; b++)
        n += rint_cmd("ZCARD wp:brain:active:{%d}", b);
    return n;
}

/* Quiet: on disk and in Redis agree, nothing leased, no brain active. */
static bool quiet(bool say)
{
    char dirs[64][128], set[64][128];
    bool ok = true;
    long long active = brain_active();
    if (active != 0) {
        if (say)
            print_message("# leak: the brain's active set has %lld sessions\n", active);
        ok = false;
    }
    for (int n = 0; n < NNODES; n++) {
        if (NODE[n] <= 0)
            continue;
        int nd = node_dirs(n, dirs, 64), ns = node_set(n, set, 64);
        if (leased_on_say(n, say, false))
            ok = false;
        for (int i = 0; i < nd; i++)
            if (!has_id(set, ns, dirs[i])) {
                if (say)
                    print_message("# leak: %s/sandboxes/%s on disk, not in Redis\n", NODE_ID[n], dirs[i]);
                ok = false;
            }
        for (int i = 0; i < ns; i++)
            if (!has_id(dirs, nd, set[i])) {
                if (say)
                    print_message("# leak: %s in wp:node:%s:sbs, not on disk\n", set[i], NODE_ID[n]);
                ok = false;
            }
    }
    return ok;
}

/* Nothing of a sandbox that is gone: no mount, no cgroup; no sandbox
 * record in Redis whose node does not list it (a dead owner's). Returns
 * the number of leaks (printed). */
static int leaks(void)
{
    char dirs[64][128], line[4096], path[600];
    int n = 0, nd = 0;
    for (int k = 0; k < NNODES; k++)
        if (NODE[k] > 0)
            nd += node_dirs(k, dirs + nd, 64 - nd);
    const char *id;
    json_t *v;
    json_object_foreach(KNOWN, id, v) {
        (void)v;
        if (has_id(dirs, nd, id))
            continue;
        glob_t g;
        snprintf(path, sizeof(path), "/sys/fs/cgroup/*/warmpool/%s", id);
        if (glob(path, 0, NULL, &g) == 0) {
            print_message("# leak: cgroup %s\n", g.gl_pathv[0]);
            n++;
        }
        globfree(&g);
        snprintf(path, sizeof(path), "/sys/fs/cgroup/warmpool/%s", id);
        if (access(path, F_OK) == 0) {
            print_message("# leak: cgroup %s\n", path);
            n++;
        }
        FILE *f = fopen("/proc/self/mountinfo", "r");
        while (f && fgets(line, sizeof(line), f))
            if (strstr(line, id)) {
                print_message("# leak: mount %s", line);
                n++;
            }
        if (f)
            fclose(f);
    }
    /* Sandbox records: each names a node that lists it. */
    redisReply *keys = cmd("KEYS wp:env:{" POOL "}:sb:*");
    for (size_t i = 0; keys && keys->type == REDIS_REPLY_ARRAY && i < keys->elements; i++) {
        const char *k = keys->element[i]->str, *sid = strrchr(k, ':') + 1;
        redisReply *h = cmd("HMGET %s node state", k);
        const char *node = h && h->type == REDIS_REPLY_ARRAY && h->element[0]->str ? h->element[0]->str : "";
        const char *st = h && h->type == REDIS_REPLY_ARRAY && h->element[1]->str ? h->element[1]->str : "";
        char m[200];
        snprintf(m, sizeof(m), "%s %s", POOL, sid);
        long long member = rint_cmd("SISMEMBER wp:node:%s:sbs %s", node, m);
        long long ttl = rint_cmd("PTTL %s", k);
        if (member != 1 && ttl < 0) {
            print_message("# leak: %s (state %s, node %s) kept forever, its node does not list it\n", k, st,
                          node);
            n++;
        }
        freeReplyObject(h);
    }
    freeReplyObject(keys);
    /* Brain leases: each of a session some scheduler still runs (on a
     * cluster they are on every master). */
    redisContext *masters[TH_RCL_MAX];
    struct wp_err err;
    int nm = CLUSTER ? (RS ? wp_rcl_sync_masters(RS, masters, TH_RCL_MAX, &err) : 0) : 1;
    for (int m = 0; m < nm; m++) {
        redisReply *bl = CLUSTER ? redisCommand(masters[m], "KEYS wp:brain:{*}") : cmd("KEYS wp:brain:{*}");
        for (size_t i = 0; bl && bl->type == REDIS_REPLY_ARRAY && i < bl->elements; i++)
            if (rint_cmd("PTTL %s", bl->element[i]->str) < 0) {
                print_message("# leak: brain lease %s without expiry\n", bl->element[i]->str);
                n++;
            }
        freeReplyObject(bl);
    }
    return n;
}

/* After a fault: wait (30 s) until quiet, then count leaks. */
static int settle_leaks(void)
{
    bool q = false;
    for (int i = 0; i < 150 && !(q = quiet(false)); i++) {
        note_ids();
        th_msleep(200);
    }
    if (!q)
        quiet(true);
    note_ids();
    return (q ? 0 : 1) + leaks();
}

/* ---- the load and the report ---- */

/* The load of the running test (stopped by the next one if a failed
 * assertion left it running). */
static struct th_load *CUR;

static void load_drop(void)
{
    if (!CUR)
        return;
    th_load_stop(CUR);
    th_load_free(CUR);
    free(CUR);
    CUR = NULL;
}

/* nsess new sessions whose first message is text; max_turns each (0: on
 * until stopped); with the /v1/sandboxes user or not. */
static struct th_load *load_new(int nsess, const char *text, int max_turns, bool sbx)
{
    load_drop();
    struct th_load *l = calloc(1, sizeof(*l));
    char body[256];
    l->key = KEY;
    l->text = text;
    l->max_turns = max_turns ? max_turns : 60; /* a history page (1000 events) holds them */
    l->sandbox_env = sbx ? POOL : NULL;
    l->nports = 2;
    l->ports[0] = S[0].port;
    l->ports[1] = S[1].port;
    l->nsess = nsess;
    l->tolerate_errors = true;
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}", AGENT_ID, ENV_ID);
    for (int i = 0; i < nsess; i++) {
        json_t *s = call(S[i % 2].port, "POST", "/v1/sessions", body, 200);
        snprintf(l->s[i].sid, sizeof(l->s[i].sid), "%s", s_(s, "id"));
        json_decref(s);
    }
    assert_int_equal(th_load_start(l), 0);
    CUR = l;
    return l;
}

/* Run until at least n more turns ended (or secs pass). */
static void load_turns(struct th_load *l, int n, int secs)
{
    int want = l->turns + n;
    for (int i = 0; i < secs * 10 && l->turns < want && !l->failed; i++) {
        note_ids();
        th_msleep(100);
    }
}

static void load_fault_now(struct th_load *l)
{
    l->fault_ns = wp_now_ns();
}

/* Wait (up to secs) until every session ended a turn begun after the
 * fault and the sandbox user executed again. */
static bool load_recovered(struct th_load *l, int secs)
{
    for (int i = 0; i < secs * 10 && !l->failed; i++) {
        bool all = l->sbx_recovered_ns != 0;
        for (int s = 0; s < l->nsess && all; s++)
            all = l->s[s].recovered_ns != 0;
        if (all)
            return true;
        note_ids();
        th_msleep(100);
    }
    return false;
}

static void row(const char *fault, struct th_load *l, const struct th_load_report *r, int leaked,
                const char *note)
{
    const char *out = getenv("WP_FAULTS_OUT");
    json_t *o = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, "
                          "s:i, s:i, s:f, s:i, s:s}",
                          "fault", fault, "load", "", "acked", r->acked, "lost", r->lost, "dup", r->dup,
                          "extra_input", r->extra_input, "stream_missing", r->stream_missing, "stream_dup",
                          r->stream_dup, "stream_resumes", r->stream_resumes, "events", r->events, "errors",
                          r->errors, "retrying", r->retrying, "exhausted", r->exhausted, "tool_errors",
                          r->tool_errors, "sessions_failed", r->sessions_failed, "unended", r->unended,
                          "sbx_ok", l->sbx_ok, "sbx_err", l->sbx_err, "recover_s", r->recover_s, "leaks",
                          leaked, "note", note ? note : "");
    char load[128];
    snprintf(load, sizeof(load), "%d sessions, %d turns, 1 sandbox user", l->nsess, l->turns);
    json_object_set_new(o, "load", json_string(load));
    int orphans = 0;
    const char *oid;
    json_t *ov;
    json_object_foreach(ORPH, oid, ov)
        orphans += (double)wp_wall_ms() - json_real_value(json_array_get(ov, 1)) >= 3000;
    json_object_set_new(o, "orphans", json_integer(orphans));
    json_object_clear(ORPH);
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    print_message("# row %s\n", line);
    if (out) {
        FILE *f = fopen(out, "a");
        if (f) {
            fprintf(f, "%s\n", line);
            fclose(f);
        }
    }
    free(line);
    json_decref(o);
}

/* Stop the load, check and report; the common assertions (strict: no
 * session may fail either, nor a tool call). */
static void load_finish(struct th_load *l, const char *fault, const char *note, bool strict,
                        struct th_load_report *r)
{
    CUR = NULL;
    th_load_stop(l);
    if (l->failed)
        print_message("# load: %s\n", l->why);
    th_load_check(l, S[0].port > 0 && S[0].pid > 0 ? S[0].port : S[1].port, r);
    int leaked = settle_leaks();
    row(fault, l, r, leaked, note);
    assert_false(l->failed);
    assert_int_equal(r->lost, 0);
    assert_int_equal(r->dup, 0);
    assert_int_equal(r->stream_missing, 0);
    assert_int_equal(r->stream_dup, 0);
    assert_int_equal(r->unended, 0);
    assert_true(r->recover_s >= 0);
    assert_int_equal(leaked, 0);
    if (strict) {
        assert_int_equal(r->sessions_failed, 0);
        assert_int_equal(r->tool_errors, 0);
    }
    th_load_free(l);
    free(l);
}

/* ---- set-up ---- */

/* The stand-in's script: "load" sessions call bash then answer, turn
 * after turn; the "always-*" ones fail the same way on every attempt. */
static char *build_script(void)
{
    char *buf = malloc(1 << 17);
    int n = snprintf(buf, 1 << 17, "{\"seed\":5,\"ttft_ms\":30,\"tokens_per_s\":300,\"chunk_tokens\":2,"
                                   "\"conversations\":[{\"match\":\"load\",\"turns\":[");
    for (int i = 0; i < 120; i++)
        n += snprintf(buf + n, (1 << 17) - (size_t)n,
                      "%s{\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":"
                      "\"echo round-%d\"}}]},{\"text\":\"round %d done, all fine here\"}",
                      i ? "," : "", i, i);
    n += snprintf(buf + n, (1 << 17) - (size_t)n, "]}");
    static const char *always[] = { "stall", "status", "drop" };
    for (int k = 0; k < 3; k++)
        n += snprintf(buf + n, (1 << 17) - (size_t)n,
                      ",{\"match\":\"always-%s\",\"turns\":[{\"text\":\"this answer never arrives whole, "
                      "one two three four five six seven eight\",\"fault\":{\"kind\":\"%s\",\"status\":500,"
                      "\"after\":3}}]}",
                      always[k], always[k]);
    snprintf(buf + n, (1 << 17) - (size_t)n, ",{\"turns\":[\"Hello!\"]}]}");
    return buf;
}

static int model_start(const char *const *extra, int port)
{
    const char *args[32] = { "--script", SCRIPT, "--log-level", "warn" };
    int n = 4;
    for (int i = 0; extra && extra[i] && n < 31; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    return msrv_spawn_port(&M, port, args);
}

static int stack_common(void)
{
    char tmpl[1024];
    struct wp_err err;
    KNOWN = json_object();
    ORPH = json_object();
    char *script = build_script();
    snprintf(SCRIPT, sizeof(SCRIPT), "%s/script.json", DIR_);
    int rc = wp_write_file(SCRIPT, script, strlen(script), 0644, &err);
    free(script);
    if (rc < 0 || model_start(NULL, 0) < 0)
        return -1;
    snprintf(MURL, sizeof(MURL), "http://127.0.0.1:%d", M.port);
    setenv("ANTHROPIC_API_KEY", "sk-test-model", 1);
    if (th_hands_template(DIR_, POOL, "box", tmpl, sizeof(tmpl)) < 0)
        return -1;
    snprintf(SPEC, sizeof(SPEC), "%s:1:3", tmpl);
    for (int i = 0; i < NNODES; i++)
        node_start(i);
    sched_start(0);
    sched_start(1);
    /* The schedulers answer once their Redis connections are up (with
     * Sentinel: after asking the sentinels). */
    struct th_resp probe;
    for (int i = 0; i < 100; i++, th_msleep(100))
        if (th_http(S[1].port, "GET", "/v1/agents", KEY, NULL, &probe) == 0) {
            int st = probe.status;
            th_resp_free(&probe);
            if (st == 200)
                break;
        }
    json_t *ag = call(S[0].port, "POST", "/v1/agents",
                      "{\"name\":\"f\",\"model\":\"claude-test\",\"tools\":[{\"type\":\"agent_toolset_20260401\"}]}",
                      200);
    snprintf(AGENT_ID, sizeof(AGENT_ID), "%s", s_(ag, "id"));
    json_decref(ag);
    json_t *en = call(S[0].port, "POST", "/v1/environments",
                      "{\"name\":\"fault-env\",\"config\":{\"type\":\"cloud\"},"
                      "\"metadata\":{\"warmpool.pool\":\"" POOL "\"}}", 200);
    snprintf(ENV_ID, sizeof(ENV_ID), "%s", s_(en, "id"));
    json_decref(en);
    return th_wait_hot(RPORT, POOL, NNODES, 120) ? 0 : -1;
}

static int group_setup(void **state)
{
    (void)state;
    SENTINEL = false;
    NNODES = 2;
    if (th_redis_start(&R, 1) < 0)
        return -1;
    RPORT = R.port;
    rc_reconnect();
    DIR_ = th_tmpdir("faults");
    return stack_common();
}

static void stack_stop(void)
{
    load_drop();
    for (int i = 0; i < 2; i++)
        if (S[i].pid > 0)
            th_sched_stop(&S[i]);
    for (int i = 0; i < NNODES; i++)
        if (NODE[i] > 0) {
            kill(NODE[i], SIGINT); /* at once */
            waitpid(NODE[i], NULL, 0);
            NODE[i] = 0;
        }
    msrv_stop(&M);
    if (RC)
        redisFree(RC);
    RC = NULL;
    /* Nothing of any sandbox stays (the nodes destroyed them on SIGINT). */
    int n = leaks();
    if (n)
        print_message("# %d leaks after the stack stopped\n", n);
    json_decref(KNOWN);
    json_decref(ORPH);
    th_rmtree(DIR_);
    free(DIR_);
}

static int group_teardown(void **state)
{
    (void)state;
    stack_stop();
    th_redis_stop(&R);
    return 0;
}

/* ---- the faults ---- */

/* kill -9 of the scheduler running turns: its sessions go on at the other
 * (lease expiry + sweep), streams resume there with Last-Event-ID. */
static void scheduler_killed_mid_turn(void **state)
{
    struct th_load_report r;
    (void)state;
    struct th_load *l = load_new(NSESS, "load round", 0, true);
    load_turns(l, 2 * NSESS, 30);
    /* Mid-turn: some session's brain lease is held (by either: the kill
     * takes S[0], which runs half of them). */
    for (int i = 0; i < 100 && brain_active() < 1; i++)
        th_msleep(20);
    l->ports[0] = 0;
    load_fault_now(l);
    th_sched_kill(&S[0]);
    bool rec = load_recovered(l, 40);
    sched_start(0);
    l->ports[0] = S[0].port;
    load_turns(l, NSESS, 20);
    load_finish(l, "kill -9 scheduler mid-turn", rec ? NULL : "not recovered within 40 s", true, &r);
}

/* kill -9 of a node holding leased sandboxes: its sessions get an error
 * result for the call it cut and a new sandbox; the /v1/sandboxes user
 * takes another. Restarted, it cleans up and rejoins. */
static void node_killed_with_leases(void **state)
{
    struct th_load_report r;
    (void)state;
    struct th_load *l = load_new(NSESS, "load round", 0, true);
    load_turns(l, 2 * NSESS, 30);
    int victim = leased_on(1) > leased_on(0) ? 1 : 0;
    for (int i = 0; i < 100 && leased_on(victim) < 1; i++)
        th_msleep(50);
    int held = leased_on(victim);
    note_ids();
    load_fault_now(l);
    kill(NODE[victim], SIGKILL);
    waitpid(NODE[victim], NULL, 0);
    NODE[victim] = 0;
    bool rec = load_recovered(l, 40);
    node_start(victim);
    assert_true(th_wait_hot(RPORT, POOL, 1, 60));
    load_turns(l, NSESS, 20);
    char note[96];
    snprintf(note, sizeof(note), "%d leased sandboxes on the killed node%s", held,
             rec ? "" : "; not recovered within 40 s");
    load_finish(l, "kill -9 node holding leases", note, false, &r);
    assert_true(held >= 1);
}

/* The model server failing mid-turn: restarted (streams cut) with mixed
 * faults (5xx, error events, dropped streams, stalls), then sessions whose
 * every attempt fails: each turn ends idle, or with a clear session.error
 * (retrying ones first, then exhausted). */
static void model_server_fails_mid_turn(void **state)
{
    struct th_load_report r;
    (void)state;
    struct th_load *l = load_new(NSESS, "load round", 0, true);
    load_turns(l, NSESS, 30);
    int port = M.port;
    const char *faulty[] = { "--fail-status", "500", "--retry-after", "0", "--http-fail-rate", "0.2",
                             "--stream-error-rate", "0.1", "--drop-rate", "0.1", "--stall-rate", "0.1",
                             "--fault-after", "3", NULL };
    load_fault_now(l);
    msrv_stop(&M); /* cuts every stream in flight */
    assert_int_equal(model_start(faulty, port), 0);
    load_turns(l, 4 * NSESS, 60);
    msrv_stop(&M);
    assert_int_equal(model_start(NULL, port), 0);
    /* Recovery: every session ends a turn the healthy server answers. */
    l->fault_ns = wp_now_ns();
    for (int s = 0; s < l->nsess; s++)
        l->s[s].recovered_ns = 0;
    l->sbx_recovered_ns = 0;
    bool rec = load_recovered(l, 40);
    load_finish(l, "model server: 5xx, error events, drops, stalls", rec ? NULL : "not recovered", false, &r);
    assert_true(r.retrying > 0); /* the retries are in the log */

    /* Every attempt fails the same way: a clear error ends the turn. */
    static const char *kinds[] = { "always-stall", "always-status", "always-drop" };
    for (int k = 0; k < 3; k++) {
        struct th_load *e = load_new(1, kinds[k], 1, false);
        load_turns(e, 1, 60);
        CUR = NULL;
        th_load_stop(e);
        th_load_check(e, S[0].port, &r);
        print_message("# %s: %d errors (%d retrying), %d exhausted, lost %d, stream missing %d\n", kinds[k],
                      r.errors, r.retrying, r.exhausted, r.lost, r.stream_missing);
        assert_int_equal(r.unended, 0);
        assert_int_equal(r.exhausted, 1);
        assert_true(r.errors >= 1);
        assert_int_equal(r.lost, 0);
        assert_int_equal(r.stream_missing + r.stream_dup, 0);
        th_load_free(e);
        free(e);
    }
}

/* Redis killed with kill -9 and restarted from its AOF (appendfsync
 * everysec, then always), and a clean SHUTDOWN. */
static void redis_restarts(struct th_load *l, const char *how)
{
    char out[256];
    load_fault_now(l);
    if (!strcmp(how, "shutdown"))
        th_sh(out, sizeof(out), "redis-cli -p %d shutdown 2>&1", R.port);
    assert_int_equal(th_redis_restart(&R), 0);
    rc_reconnect();
}

static void redis_aof_restart(const char *fsync, const char *how, const char *fault)
{
    struct th_load_report r;
    char out[256];
    th_sh(out, sizeof(out), "redis-cli -p %d config set appendfsync %s", R.port, fsync);
    struct th_load *l = load_new(NSESS, "load round", 0, true);
    load_turns(l, 2 * NSESS, 30);
    redis_restarts(l, how);
    bool rec = load_recovered(l, 40);
    load_turns(l, NSESS, 20);
    load_finish(l, fault, rec ? NULL : "not recovered within 40 s", true, &r);
}

static void redis_killed_everysec(void **state)
{
    (void)state;
    redis_aof_restart("everysec", "kill", "kill -9 Redis, AOF everysec");
}

static void redis_clean_shutdown(void **state)
{
    (void)state;
    redis_aof_restart("everysec", "shutdown", "Redis SHUTDOWN + restart (AOF)");
}

static void redis_killed_always(void **state)
{
    (void)state;
    redis_aof_restart("always", "kill", "kill -9 Redis, AOF always");
}

/* ---- disk full ---- */

/* Files under dir (recursively) but the kept criu failure logs, or -1. */
static int files_under(const char *dir)
{
    char out[64];
    if (th_sh(out, sizeof(out), "find '%s' -mindepth 1 -not -type d -not -name '*-failed.log' 2>/dev/null | wc -l",
              dir) != 0)
        return -1;
    return atoi(out);
}

/* The node's build status for fullpool once it says failed or ready (60 s). */
static void build_status(char *out, size_t cap)
{
    out[0] = '\0';
    for (int i = 0; i < 600 && !strstr(out, "failed") && strcmp(out, "ready"); i++, th_msleep(100)) {
        redisReply *b = cmd("HGET wp:node:fnfull build:fullpool");
        snprintf(out, cap, "%s", b && b->type == REDIS_REPLY_STRING ? b->str : "");
        freeReplyObject(b);
    }
}

/* A node (fnfull, its own pool) whose state dir is a tmpfs of size, while
 * the load runs on the other nodes. at_start: the dir cannot even hold
 * the node's base layer, so it refuses to start, saying why; else the
 * image build's checkpoint (criu writing the image) runs out of space: a
 * clear error in the node's build status, the node stays up, nothing of
 * the build is left but criu's log. Either way, given space (the tmpfs
 * grown), the node builds and serves a hot clone. */
/* What disk_full has running or mounted, for its teardown to undo when an
 * assertion ended the test early (a tmpfs left mounted, a node left up). */
static struct {
    pid_t node;
    char state[1100];
} FULL;

static int disk_full_teardown(void **state)
{
    (void)state;
    if (FULL.node > 0) {
        kill(FULL.node, SIGINT);
        int i = 0;
        while (waitpid(FULL.node, NULL, WNOHANG) == 0 && i++ < 100)
            th_msleep(100);
        if (i > 100) {
            kill(FULL.node, SIGKILL);
            waitpid(FULL.node, NULL, 0);
        }
    }
    if (FULL.state[0])
        umount2(FULL.state, MNT_DETACH);
    memset(&FULL, 0, sizeof(FULL));
    return 0;
}

static void disk_full(const char *size, bool at_start)
{
    char state[1100], log[1100], tmpl[1100], spec[1200], opts[64], out[1024], ls[4096];
    struct th_load_report r;
    snprintf(state, sizeof(state), "%s/state-fnfull", DIR_);
    snprintf(log, sizeof(log), "%s/node-fnfull.log", DIR_);
    unlink(log);
    assert_int_equal(wp_mkdir_p(state, 0755, NULL), 0);
    snprintf(opts, sizeof(opts), "size=%s", size);
    assert_int_equal(mount("tmpfs", state, "tmpfs", 0, opts), 0);
    snprintf(FULL.state, sizeof(FULL.state), "%s", state);
    assert_int_equal(th_hands_template(DIR_, "fullpool", "full", tmpl, sizeof(tmpl)), 0);
    snprintf(spec, sizeof(spec), "%s:1:1", tmpl);
    struct th_load *l = load_new(NSESS, "load round", 0, true);
    load_turns(l, NSESS, 30);
    load_fault_now(l);
    pid_t node = th_node_start("fnfull", RPORT, state, log, "--env", spec, "--no-api-envs", NULL);
    FULL.node = node;
    assert_true(node > 0);
    int left = 0;
    if (at_start) {
        int st = -1;
        pid_t w = 0;
        for (int i = 0; i < 200 && (w = waitpid(node, &st, WNOHANG)) == 0; i++)
            th_msleep(50);
        if (w == node)
            FULL.node = 0; /* reaped */
        th_sh(out, sizeof(out), "grep -m1 -i 'space' '%s'", log);
        print_message("# disk full at start (tmpfs %s): exit %d: %s", size, WIFEXITED(st) ? WEXITSTATUS(st) : -1,
                      out);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
        assert_non_null(strstr(out, "No space left on device"));
        assert_int_equal(mount(NULL, state, NULL, MS_REMOUNT, "size=512m"), 0);
        node = th_node_start("fnfull", RPORT, state, log, "--env", spec, "--no-api-envs", NULL);
        FULL.node = node;
        build_status(out, sizeof(out));
    } else {
        build_status(out, sizeof(out));
        print_message("# disk full in the checkpoint (tmpfs %s): %s\n", size, out);
        assert_non_null(strstr(out, "failed: checkpoint"));
        assert_non_null(strcasestr(out, "no space left"));
        /* The node stays up, heartbeating; nothing of the build is left. */
        th_msleep(2500);
        assert_int_equal(waitpid(node, NULL, WNOHANG), 0);
        assert_int_equal(rint_cmd("EXISTS wp:node:fnfull:alive"), 1);
        char sub[1200];
        snprintf(sub, sizeof(sub), "%s/sandboxes", state);
        left = files_under(sub);
        snprintf(sub, sizeof(sub), "%s/images", state);
        left += files_under(sub);
        assert_int_equal(mount(NULL, state, NULL, MS_REMOUNT, "size=512m"), 0);
    }
    if (left) {
        th_sh(ls, sizeof(ls), "find '%s' | head -40", state);
        print_message("# left in the state dir after the failed build:\n%s\n", ls);
    }
    /* Given space, it builds (its retry, or the new start) and serves. */
    uint64_t t0 = wp_now_ns();
    bool hot = th_wait_hot(RPORT, "fullpool", 1, 90);
    double served_s = (double)(wp_now_ns() - t0) / 1e9;
    /* A staging dir a failed start left is gone once a start succeeded. */
    int tmp_left = 0;
    if (at_start) {
        th_sh(ls, sizeof(ls), "find '%s/layers' -maxdepth 1 -name '*.tmp' | wc -l", state);
        tmp_left = atoi(ls);
    }
    kill(node, SIGINT);
    waitpid(node, NULL, 0);
    umount2(state, MNT_DETACH);
    memset(&FULL, 0, sizeof(FULL));
    load_turns(l, NSESS, 20);
    char note[512];
    snprintf(note, sizeof(note), "tmpfs %s: %.300s; %s %.1f s after the tmpfs was grown", size,
             at_start ? "the node refused to start (No space left on device)" : out,
             hot ? "built and served a hot clone" : "NOT serving", served_s);
    load_finish(l, at_start ? "disk full: node start (base layer)" : "disk full: image build checkpoint", note,
                true, &r);
    assert_int_equal(left, 0);
    assert_int_equal(tmp_left, 0);
    assert_true(hot);
}

static void disk_full_at_node_start(void **state)
{
    (void)state;
    disk_full("64k", true);
}

static void disk_full_during_checkpoint(void **state)
{
    (void)state;
    disk_full("400k", false);
}

/* ---- Sentinel ---- */

static int sentinel_setup(void **state)
{
    (void)state;
    SENTINEL = true;
    NNODES = 1;
    if (th_sentinel_start(&T, MASTER) < 0)
        return -1;
    RPORT = T.rport[0];
    rc_reconnect();
    DIR_ = th_tmpdir("faults-sent");
    return stack_common();
}

static int sentinel_teardown(void **state)
{
    (void)state;
    stack_stop();
    th_sentinel_stop(&T);
    return 0;
}

/* kill -9 of the primary with the schedulers in the durable mode
 * (--redis-wait-replicas 1): the sentinels promote a replica, every
 * acknowledged event is on it. */
static void sentinel_primary_killed(void **state)
{
    struct th_load_report r;
    (void)state;
    struct th_load *l = load_new(NSESS, "load round", 0, true);
    load_turns(l, 2 * NSESS, 30);
    int old = th_sentinel_index(&T, th_sentinel_primary(&T));
    assert_true(old >= 0);
    load_fault_now(l);
    kill(T.rpid[old], SIGKILL);
    waitpid(T.rpid[old], NULL, 0);
    T.rpid[old] = 0;
    int now = -1;
    for (int i = 0; i < 200 && ((now = th_sentinel_primary(&T)) == T.rport[old] || now < 0); i++)
        th_msleep(100);
    assert_int_not_equal(now, T.rport[old]);
    RPORT = now;
    rc_reconnect();
    bool rec = load_recovered(l, 40);
    load_turns(l, NSESS, 20);
    load_finish(l, "kill -9 Redis primary (Sentinel, WAIT 1)", rec ? NULL : "not recovered within 40 s", true,
                &r);
}

/* ---- Redis Cluster ---- */

static int cluster_setup(void **state)
{
    struct wp_err err;
    (void)state;
    SENTINEL = false;
    CLUSTER = true;
    NNODES = 1;
    if (th_rcluster_start(&CL, 3, 1) < 0)
        return -1;
    th_rcluster_seeds(&CL, SEEDS, sizeof(SEEDS));
    if (wp_rcl_set(SEEDS, &err) < 0)
        return -1;
    rc_reconnect();
    if (!RS)
        return -1;
    DIR_ = th_tmpdir("faults-cl");
    return stack_common();
}

static int cluster_teardown(void **state)
{
    (void)state;
    stack_stop();
    wp_rcl_sync_free(RS);
    RS = NULL;
    th_rcluster_stop(&CL);
    CLUSTER = false;
    return 0;
}

/* kill -9 of the master of a session's slot, the schedulers in the durable
 * mode (--redis-wait-replicas 1: WAIT on every master, so an acknowledged
 * write is on the master's one replica): the cluster promotes that replica
 * (cluster-node-timeout 2 s), every client finds it in the slot map, every
 * acknowledged event is on it. The killed process is started again once
 * the replica took over, as a supervisor would: it rejoins as the new
 * master's replica, and until then WAIT 1 on that master cannot succeed
 * (writes of its slots answer NOTREPLICATED, retried). */
static void cluster_master_killed(void **state)
{
    struct th_load_report r;
    char tag[96], vtag[96], note[320];
    (void)state;
    struct th_load *l = load_new(NSESS, "load round", 0, true);
    load_turns(l, 2 * NSESS, 30);
    snprintf(vtag, sizeof(vtag), "{%s}", l->s[0].sid);
    int port = th_rcluster_owner(&CL, wp_rcl_keyslot(vtag, strlen(vtag)));
    int victim = th_rcluster_index(&CL, port);
    assert_true(victim >= 0);
    /* What lives there: sessions of the load, the pool's keys. */
    int sess = 0;
    for (int i = 0; i < l->nsess; i++) {
        snprintf(tag, sizeof(tag), "{%s}", l->s[i].sid);
        sess += th_rcluster_owner(&CL, wp_rcl_keyslot(tag, strlen(tag))) == port;
    }
    bool pool = RPORT == port;
    load_fault_now(l);
    uint64_t t0 = wp_now_ns();
    kill(CL.pid[victim], SIGKILL);
    waitpid(CL.pid[victim], NULL, 0);
    CL.pid[victim] = 0;
    /* The replica promoted: another node serves the slot, the cluster ok. */
    int now = port;
    for (int i = 0; i < 300 && (now == port || now < 0 || !th_rcluster_ok(&CL)); i++, th_msleep(100))
        now = th_rcluster_owner(&CL, wp_rcl_keyslot(vtag, strlen(vtag)));
    double failover_s = (double)(wp_now_ns() - t0) / 1e9;
    assert_int_not_equal(now, port);
    assert_true(th_rcluster_ok(&CL));
    assert_true(th_rcluster_node_start(&CL, victim) > 0);
    bool synced = false;
    for (int i = 0; i < 200 && !synced; i++, th_msleep(100))
        synced = th_redis_cli_has(CL.port[victim], "info replication", "master_link_status:up");
    double rejoined_s = (double)(wp_now_ns() - t0) / 1e9;
    assert_true(synced);
    rc_reconnect();
    bool rec = load_recovered(l, 40);
    load_turns(l, NSESS, 20);
    snprintf(note, sizeof(note),
             "the master held %d of %d sessions%s; replica promoted %.1f s after the kill, the killed one "
             "restarted as its replica %.1f s after%s",
             sess, l->nsess, pool ? " and the pool's keys" : "", failover_s, rejoined_s,
             rec ? "" : "; not recovered within 40 s");
    print_message("# %s\n", note);
    /* Not strict: when the master holds the pool's keys, its slots
     * acknowledge nothing until its replica is back (~10 s), longer than the
     * sandbox lease (6 s here): a call in flight then ends with an error
     * result and the session claims a new sandbox (the node-kill case). */
    load_finish(l, "kill -9 one Redis Cluster master (replica promoted, WAIT 1)", note, false, &r);
}

/* A group runs (its set-up is minutes of work) when WP_FAULTS_ONLY is
 * unset or matches one of its tests (as cmocka's filter does). */
static bool wanted(const struct CMUnitTest *t, size_t n)
{
    const char *only = getenv("WP_FAULTS_ONLY");
    for (size_t i = 0; only && i < n; i++)
        if (fnmatch(only, t[i].name, 0) == 0)
            return true;
    return !only;
}

#define RUN_GROUP(name, t, setup, teardown) \
    (wanted(t, sizeof(t) / sizeof(t[0])) ? cmocka_run_group_tests_name(name, t, setup, teardown) : 0)

int main(void)
{
    if (geteuid() != 0) {
        printf("1..0 # SKIP needs root (sandboxes)\n");
        return 0;
    }
    const struct CMUnitTest single[] = {
        cmocka_unit_test(scheduler_killed_mid_turn),
        cmocka_unit_test(node_killed_with_leases),
        cmocka_unit_test(model_server_fails_mid_turn),
        cmocka_unit_test(redis_killed_everysec),
        cmocka_unit_test(redis_clean_shutdown),
        cmocka_unit_test(redis_killed_always),
        cmocka_unit_test_teardown(disk_full_at_node_start, disk_full_teardown),
        cmocka_unit_test_teardown(disk_full_during_checkpoint, disk_full_teardown),
    };
    const struct CMUnitTest sentinel[] = {
        cmocka_unit_test(sentinel_primary_killed),
    };
    const struct CMUnitTest cluster[] = {
        cmocka_unit_test(cluster_master_killed),
    };
    /* WP_FAULTS_ONLY=PATTERN: the tests whose name matches (cmocka's filter). */
    if (getenv("WP_FAULTS_ONLY"))
        cmocka_set_test_filter(getenv("WP_FAULTS_ONLY"));
    int rc = RUN_GROUP("single Redis", single, group_setup, group_teardown);
    rc |= RUN_GROUP("Sentinel", sentinel, sentinel_setup, sentinel_teardown);
    rc |= RUN_GROUP("Redis Cluster", cluster, cluster_setup, cluster_teardown);
    return rc;
}
