/* sandboxes.c - warmpool's own extension, outside the Managed Agents API:
 * sandboxes for harnesses that run their own agent loop and only need
 * hands (provision + execute(name, input) -> result).
 *
 *   POST   /v1/sandboxes              {"environment", "env"?, "workdir"?, "hostname"?,
 *                                      "session_id"?}  -> the sandbox, at once
 *   GET    /v1/sandboxes/:id          state, tier, node, timings
 *   POST   /v1/sandboxes/:id/execute  {"name", "input", "timeout_ms"?, "stream"?} -> tool
 *                                      result; with "stream": true, SSE: `chunk` events
 *                                      ({"type":"chunk","stream":"output","text"}) while
 *                                      it runs, then one `result` event (the tool result)
 *   DELETE /v1/sandboxes/:id          release (the node destroys it)
 *
 * Create answers before the sandbox exists: the claim (hot, warm or cold)
 * and the attach run in the background, and an execute sent meanwhile
 * waits for them. The process that claimed holds the lease: it renews it
 * at a third of --sandbox-lease until the sandbox has had no execute (from any
 * process: each one stamps last_used_ms) for --sandbox-idle-timeout, then
 * releases it ("expired"). GET reads the node's own record of the
 * sandbox too, so a sandbox its node destroyed is never reported ready. The record lives in Redis (wp:sbx:{<org>}:<id>): any scheduler
 * process can execute on a ready sandbox by connecting through its node's
 * relay with the lease's token; the process that created it keeps its
 * link open. */
#define WP_LOG_COMPONENT "sbx"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agentlink/agentlink.h"
#include "base/log.h"
#include "base/timeutil.h"
#include "pool/pool.h"
#include "scheduler/metrics.h"
#include "scheduler/sched_int.h"
#include "snapshot/snapshot.h"

enum sbx_state { SBX_PROVISIONING, SBX_READY, SBX_FAILED, SBX_EXPIRED };
static const char *const state_names[] = { "provisioning", "ready", "failed", "expired" };

/* The lease (--sandbox-lease) is renewed at a third of it. */

struct waiter {
    struct sched_req *req;
    json_t *call;       /* {"name", "input", "timeout_ms"} owned */
    uint64_t t0;        /* when it started waiting for the attach */
    struct waiter *next;
};

struct sched_sbx {
    struct sched_server *srv;
    char id[40], org[64], env[64], session[128];
    enum sbx_state st;
    bool overloaded;             /* failed: its node refused the claim as overloaded */
    bool overload_told;          /* ...and an execute got the 529: the next claims anew */
    bool attach;                 /* this process provisions: attach with settings */
    bool attach_sent;            /* ...and the attach is on the link: calls may follow it */
    json_t *settings;            /* env, workdir, hostname (owned) */
    struct pool_claim_result res;
    struct alink_client *ac;
    struct waiter *waiters;
    uint64_t t0;
    double claim_ms, attached_ms;
    char error[256];
    ev_timer keep;               /* the lease holder: renew or expire */
    struct sched_sbx *next;
};

static const char *const create_fields[] = { "environment", "env", "workdir", "hostname",
                                             "session_id", NULL };

/* A sandbox's record carries its organization's tag, the slot of the
 * organization's sandbox count (quota.c's gate reads the records). Every
 * request names its organization, and a sandbox of another is not found. */
void sched__key_sbx(char *out, size_t cap, const char *org, const char *id)
{
    snprintf(out, cap, "wp:sbx:{%s}:%s", org, id);
}

/* Write the record's changing fields (best effort: the request that reads
 * it answers from Redis, so a lost write shows an older state). */
static void save(struct sched_sbx *s)
{
    char key[160], tok[32], cms[32], ams[32], wms[32];

    sched__key_sbx(key, sizeof(key), s->org, s->id);
    snprintf(tok, sizeof(tok), "%llu", (unsigned long long)s->res.token);
    snprintf(cms, sizeof(cms), "%.3f", s->claim_ms);
    snprintf(ams, sizeof(ams), "%.3f", s->attached_ms);
    snprintf(wms, sizeof(wms), "%.3f", s->res.node_wait_ms);
    const char *argv[] = { "HSET", key, "status", state_names[s->st], "sandbox", s->res.sandbox,
                           "node", s->res.node, "relay", s->res.relay, "rkey", s->res.rkey,
                           "tier", s->res.tier,
                           "token", tok, "claim_ms", cms, "attached_ms", ams, "node_wait_ms", wms,
                           "error", s->error, "overloaded", s->overloaded ? "1" : "0" };
    wp_redis_argv(s->srv->rds, NULL, NULL, (int)(sizeof(argv) / sizeof(argv[0])), argv, NULL);
}

static struct sched_sbx *find_local(struct sched_server *srv, const char *id)
{
    for (struct sched_sbx *s = srv->sbxs; s; s = s->next)
        if (strcmp(s->id, id) == 0)
            return s;
    return NULL;
}

static void drop_local(struct sched_sbx *s)
{
    for (struct sched_sbx **pp = &s->srv->sbxs; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    ev_timer_stop(s->srv->loop, &s->keep);
    if (s->ac)
        alink_client_free(s->ac); /* in-flight calls get their callbacks */
    json_decref(s->settings);
    free(s);
}

/* ---- the lease: renewed while in use, released when idle ------------------ */

/* A Redis reply may come after the sandbox was deleted: callbacks find it
 * again by id. */
struct keep_ctx {
    struct sched_server *srv;
    char id[40];
};

static struct sched_sbx *find_local(struct sched_server *srv, const char *id);

static struct keep_ctx *keep_ctx_new(struct sched_sbx *s)
{
    struct keep_ctx *k = malloc(sizeof(*k));
    if (k) {
        k->srv = s->srv;
        snprintf(k->id, sizeof(k->id), "%s", s->id);
    }
    return k;
}

/* A sandbox this process no longer holds (lease lost, idle released):
 * its relay link goes too, so nothing more reaches it through us. Calls in
 * flight get their callbacks with an error. */
static void close_link(struct sched_sbx *s)
{
    if (s->ac) {
        alink_client_free(s->ac);
        s->ac = NULL;
    }
}

static void renew_done(void *ctx, int status, const struct wp_err *err)
{
    struct keep_ctx *k = ctx;
    struct sched_sbx *s = find_local(k->srv, k->id);
    free(k);
    if (!s || status == 0 || (status == WP_ESTATE && err && strstr(err->msg, "disconnected")))
        return; /* renewed, or Redis away: the next round tries again */
    ev_timer_stop(s->srv->loop, &s->keep);
    s->st = SBX_FAILED;
    snprintf(s->error, sizeof(s->error), "its lease was lost: %s", err ? err->msg : "unknown");
    log_warn("sandbox=%s %s", s->id, s->error);
    save(s);
    close_link(s);
}

static void last_used_cb(void *ctx, redisReply *reply)
{
    struct keep_ctx *k = ctx;
    struct sched_sbx *s = find_local(k->srv, k->id);
    struct wp_err err;

    if (!s || s->st != SBX_READY || !reply || reply->type != REDIS_REPLY_STRING) {
        free(k); /* gone, failed, or Redis away (next round) */
        return;
    }
    double idle = (double)wp_wall_ms() / 1e3 - strtod(reply->str, NULL) / 1e3;
    if (idle >= s->srv->cfg.sandbox_idle_s) {
        free(k);
        ev_timer_stop(s->srv->loop, &s->keep);
        pool_release(s->srv->pool, s->env, s->res.sandbox, s->res.token, NULL, NULL, NULL);
        s->st = SBX_EXPIRED;
        snprintf(s->error, sizeof(s->error),
                 "released after %.0f s without an execute (the idle timeout is %.0f s)", idle,
                 s->srv->cfg.sandbox_idle_s);
        log_info("sandbox=%s %s", s->id, s->error);
        save(s);
        close_link(s);
        return;
    }
    if (pool_renew_for(s->srv->pool, s->env, s->res.sandbox, s->res.token,
                       s->srv->cfg.sandbox_lease_s * 1e3, renew_done, k, &err) < 0)
        free(k); /* Redis away: the next round tries again */
}

static void keep_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct sched_sbx *s = w->data;
    char key[160];
    (void)loop;
    (void)revents;

    struct keep_ctx *k = keep_ctx_new(s);
    if (!k)
        return;
    sched__key_sbx(key, sizeof(key), s->org, s->id);
    const char *argv[] = { "HGET", key, "last_used_ms" };
    if (wp_redis_argv(s->srv->rds, last_used_cb, k, 3, argv, NULL) < 0)
        free(k);
}

/* An execute (any process): the sandbox is in use now. */
static void stamp_used(struct sched_server *srv, const char *org, const char *id)
{
    char key[160], now[32];
    sched__key_sbx(key, sizeof(key), org, id);
    snprintf(now, sizeof(now), "%llu", (unsigned long long)wp_wall_ms());
    const char *argv[] = { "HSET", key, "last_used_ms", now };
    wp_redis_argv(srv->rds, NULL, NULL, 4, argv, NULL);
}

/* ---- execute ------------------------------------------------------------ */

/* One call. Answered as one JSON response (req), or streamed as SSE on
 * conn when the body said "stream": true: `chunk` events while it runs,
 * then one `result` event, then the connection closes. */
struct exec {
    struct sched_req *req;      /* plain: held until the result */
    struct sched_conn *conn;    /* streamed: NULL once closed or done */
    struct alink_client *ac;    /* alive while the call is in flight */
    int64_t call_id;
    bool starting, done;        /* the result came before alink_client_call returned */
    bool early;                 /* sent behind the attach, before the sandbox was ready */
    struct sched_server *srv;
    char sbx[40];
    struct sched_metrics *metrics;
    uint64_t t0;
    char tool[64];
};

static json_t *result_json(int status, const struct alink_result *res)
{
    /* A link failure is a tool error the model can read, as in Managed
     * Agents; the HTTP call itself succeeded. */
    json_t *text = json_pack("{s:s, s:s%}", "type", "text", "text", res->content, res->len);
    return json_pack("{s:s, s:b, s:[o]}", "type", "tool_result", "is_error",
                     status != 0 || res->is_error, "content", text);
}

/* One SSE event; data is compact JSON (no raw newlines). */
static void sse_event(struct sched_conn *c, const char *event, json_t *data /* steals */)
{
    char *s = data ? json_dumps(data, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_REAL_PRECISION(10))
                   : NULL;
    json_decref(data);
    if (!s)
        return;
    struct wp_buf b;
    wp_buf_init(&b, strlen(s) + 64);
    wp_buf_printf(&b, "event: %s\ndata: %s\n\n", event, s);
    free(s);
    if (b.data)
        sched__conn_write(c, b.data, b.len); /* may close c: the caller's last step */
    wp_buf_free(&b);
}

static void exec_chunk(void *ctx, const char *data, size_t len)
{
    struct exec *x = ctx;
    if (x->conn)
        sse_event(x->conn, "chunk", json_pack("{s:s, s:s, s:s%}", "type", "chunk", "stream",
                                              "output", "text", data, len));
}

/* The streamed client went away: the call is cancelled (the hands kill
 * what it runs); its callback comes at once and frees x. */
static void exec_conn_closed(void *ctx)
{
    struct exec *x = ctx;
    x->conn = NULL;
    if (!x->starting)
        alink_client_cancel(x->ac, x->call_id, NULL);
}

static void exec_done(void *ctx, int status, const struct alink_result *res, const struct wp_err *err)
{
    struct exec *x = ctx;
    struct sched_req *req = x->req;
    struct sched_conn *c = x->conn;
    (void)err;

    sched_metrics_observe(x->metrics, SCHED_HIST_TOOL, x->tool, (double)(wp_now_ns() - x->t0) / 1e9);
    x->done = true;
    if (x->early && req) {
        /* Sent behind the attach: a sandbox that did not become ready
         * answers as a waiter would (502), whether its attach failed (the
         * hands then refused the call) or its link did. */
        struct sched_sbx *s = find_local(x->srv, x->sbx);
        if (!s || s->st != SBX_READY) {
            if (sched__req_release(req))
                sched__respond_error(req, 502, "api_error", "sandbox_failed",
                                     "sandbox %s could not be provisioned: %s", x->sbx,
                                     s && s->error[0] ? s->error
                                     : err              ? err->msg
                                                        : "its attach did not complete");
            if (!x->starting)
                free(x);
            return;
        }
    }
    if (c) {
        x->conn = NULL;
        sched__conn_on_close(c, NULL, NULL);
        sse_event(c, "result", result_json(status, res));
        sched__conn_end(c);
    }
    if (!x->starting)
        free(x);
    if (!req || !sched__req_release(req))
        return; /* streamed, or the client went away meanwhile */
    sched__respond_json(req, 200, result_json(status, res));
}

static void run_call_held(struct sched_sbx *s, struct sched_req *req, json_t *call, bool early)
{
    bool stream = json_is_true(json_object_get(call, "stream"));
    struct alink_call_opts o = { .timeout_ms = json_integer_value(json_object_get(call, "timeout_ms")),
                                 .on_chunk = stream ? exec_chunk : NULL };
    struct exec *x = calloc(1, sizeof(*x));
    struct wp_err err;

    if (!x) {
        sched__respond_error(req, 500, "api_error", NULL, "out of memory");
        return;
    }
    x->ac = s->ac;
    x->early = early;
    x->srv = s->srv;
    snprintf(x->sbx, sizeof(x->sbx), "%s", s->id);
    x->metrics = s->srv->metrics;
    x->t0 = wp_now_ns();
    snprintf(x->tool, sizeof(x->tool), "%s", json_string_value(json_object_get(call, "name")) ?: "");
    sched_metrics_inc(s->srv->metrics, SCHED_CTR_TOOL_CALLS, x->tool);
    if (stream) {
        /* Headers go out now; req ends here and the connection lives on. */
        x->conn = sched__conn_take_for_sse(req);
        if (!x->conn) {
            free(x);
            return;
        }
        sched__conn_on_close(x->conn, exec_conn_closed, x);
    } else {
        x->req = req;
        sched__req_hold(req);
    }
    x->starting = true;
    int64_t id = alink_client_call(s->ac, json_string_value(json_object_get(call, "name")),
                                   json_object_get(call, "input"), &o, exec_done, x, &err);
    x->starting = false;
    if (id < 0) {
        if (x->conn) {
            sched__conn_on_close(x->conn, NULL, NULL);
            sse_event(x->conn, "error", json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error",
                                                  "type", "api_error", "message", err.msg));
            sched__conn_end(x->conn);
        } else if (sched__req_release(req)) {
            sched__respond_error(req, 502, "api_error", NULL, "sandbox %s: %s", s->id, err.msg);
        }
        free(x);
        return;
    }
    if (x->done) { /* answered before the call returned: nothing in flight */
        free(x);
        return;
    }
    x->call_id = id;
    if (stream && !x->conn) /* closed while the call was being sent */
        alink_client_cancel(x->ac, id, NULL);
}

static void start_call(struct sched_sbx *s, struct sched_req *req, json_t *call, bool early)
{
    stamp_used(s->srv, s->org, s->id);
    /* A streamed call finishes req (whose body call may be) before the
     * call is sent: hold it until then. */
    json_incref(call);
    run_call_held(s, req, call, early);
    json_decref(call);
}

static void run_call(struct sched_sbx *s, struct sched_req *req, json_t *call)
{
    start_call(s, req, call, false);
}

/* 529 overloaded_error (retried by the SDK): the node would not have
 * served the claim in time. The next execute on the sandbox claims it
 * anew (reclaim), so a retry after retry-after can succeed. */
static void respond_overloaded(struct sched_req *req, const char *id, const char *why)
{
    snprintf(req->extra_headers, sizeof(req->extra_headers), "retry-after: 1\r\n");
    sched__respond_error(req, 529, "overloaded_error", "sandbox_overloaded",
                         "sandbox %s is not ready: %s", id, why);
}

static void flush_waiters(struct sched_sbx *s)
{
    while (s->waiters) {
        struct waiter *w = s->waiters;
        s->waiters = w->next;
        if (sched__req_release(w->req)) {
            if (s->st == SBX_READY) {
                sched_metrics_observe(s->srv->metrics, SCHED_HIST_TOOL_WAIT, NULL,
                                      (double)(wp_now_ns() - w->t0) / 1e9);
                run_call(s, w->req, w->call);
            } else if (s->overloaded) {
                s->overload_told = true;
                respond_overloaded(w->req, s->id, s->error);
            }
            else
                sched__respond_error(w->req, 502, "api_error", "sandbox_failed",
                                     "sandbox %s could not be provisioned: %s", s->id, s->error);
        }
        json_decref(w->call);
        free(w);
    }
}

static void fail(struct sched_sbx *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct sched_sbx *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->error, sizeof(s->error), fmt, ap);
    va_end(ap);
    s->st = SBX_FAILED;
    log_warn("sandbox=%s failed: %s", s->id, s->error);
    save(s);
    flush_waiters(s);
}

static void ready(struct sched_sbx *s)
{
    s->st = SBX_READY;
    s->attached_ms = (double)(wp_now_ns() - s->t0) / 1e6;
    if (s->attach) {
        /* Only the process that claimed: another one merely reconnects. */
        sched_metrics_observe(s->srv->metrics, SCHED_HIST_SANDBOX_ATTACHED, s->res.tier,
                              s->attached_ms / 1e3);
        save(s);
    }
    flush_waiters(s);
}

static void attach_cb(void *ctx, int status, const struct alink_result *res, const struct wp_err *err)
{
    struct sched_sbx *s = ctx;
    (void)err;
    if (s->st == SBX_FAILED)
        return; /* failed meanwhile (the handshake's failure fails this first) */
    if (status != 0 || res->is_error)
        fail(s, "attach: %.*s", (int)res->len, res->content);
    else
        ready(s);
}

static void link_closed(void *ctx, const struct wp_err *err)
{
    struct sched_sbx *s = ctx;
    /* The sandbox or its node went away: later calls must reconnect. */
    log_info("sandbox=%s link closed: %s", s->id, err ? err->msg : "");
    s->st = SBX_FAILED;
    snprintf(s->error, sizeof(s->error), "the sandbox's link closed");
}

static void hello_cb(void *ctx, int status, const struct wp_err *err)
{
    struct sched_sbx *s = ctx;

    if (status != 0) {
        if (s->st != SBX_FAILED) /* else the pipelined attach said why */
            fail(s, "connect: %s", err ? err->msg : "failed");
        return;
    }
    if (!s->attach) /* else the attach's result makes it ready */
        ready(s);
}

/* Per-session settings, applied to a warm clone without a cold start.
 * Sent right behind the hello, through the relay's pipelined route: the
 * route, the hello and the attach go out together and come back as one
 * round trip (issue 20). */
static void send_attach(struct sched_sbx *s)
{
    struct wp_err e2;

    json_t *env = json_object_get(s->settings, "env"), *v;
    const char *k;
    struct alink_env_var vars[64];
    size_t n = 0;
    json_object_foreach(env, k, v) {
        if (n < 64) {
            vars[n].name = k;
            vars[n++].value = json_string_value(v);
        }
    }
    struct alink_attach a = {
        .session_id = s->session,
        .workdir = json_string_value(json_object_get(s->settings, "workdir")),
        .hostname = json_string_value(json_object_get(s->settings, "hostname")),
        .env = vars,
        .n_env = n,
    };
    if (alink_client_attach(s->ac, &a, attach_cb, s, &e2) < 0)
        fail(s, "attach: %s", e2.msg);
    else
        s->attach_sent = true;
}

static void relay_cb(void *ctx, int status, int fd, const struct wp_err *err)
{
    struct sched_sbx *s = ctx;
    struct alink_client_opts o = { .on_close = link_closed, .close_ctx = s };
    struct wp_err e2;

    if (status != 0) {
        fail(s, "relay: %s", err ? err->msg : "failed");
        return;
    }
    if (alink_client_new(s->srv->loop, &o, &s->ac, &e2) < 0 ||
        alink_client_connect_fd(s->ac, fd, hello_cb, s, &e2) < 0) {
        fail(s, "connect: %s", e2.msg);
        return;
    }
    if (s->attach)
        send_attach(s);
}

static void connect_link(struct sched_sbx *s)
{
    struct wp_err err;
    if ((s->srv->cfg.relay_pipe ? pool_connect_pipe : pool_connect)(s->srv->loop, &s->res, s->env,
                                                                   relay_cb, s, &err) < 0)
        fail(s, "relay: %s", err.msg);
}

static void claim_cb(void *ctx, int status, const struct pool_claim_result *res, const struct wp_err *err)
{
    struct sched_sbx *s = ctx;

    if (status != 0) {
        s->overloaded = status == WP_EOVERLOADED;
        fail(s, "claim: %s", err ? err->msg : "failed");
        return;
    }
    s->res = *res;
    s->claim_ms = res->ms;
    sched_metrics_observe(s->srv->metrics, SCHED_HIST_CLAIM, res->tier, res->ms / 1e3);
    if (res->node_wait_ms > 0)
        sched_metrics_observe(s->srv->metrics, SCHED_HIST_CLAIM_NODE_WAIT, NULL,
                              res->node_wait_ms / 1e3);
    save(s);
    stamp_used(s->srv, s->org, s->id); /* the idle clock starts with the sandbox */
    double every = s->srv->cfg.sandbox_lease_s / 3;
    /* The first renewal soon: the claim's own lease may be shorter. */
    ev_timer_init(&s->keep, keep_cb, every < 10 ? every : 10, every);
    s->keep.data = s;
    ev_timer_start(s->srv->loop, &s->keep);
    connect_link(s);
}

/* ---- handlers -------------------------------------------------------------- */

/* The record (an HGETALL reply) as a JSON object of strings; a field that
 * is no UTF-8 is left out (the API never writes one). */
static json_t *record_of(redisReply *r)
{
    json_t *o = json_object();
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2)
        if (r->element[i]->type == REDIS_REPLY_STRING && r->element[i + 1]->type == REDIS_REPLY_STRING)
            json_object_set_new(o, r->element[i]->str, json_string(r->element[i + 1]->str));
    return o;
}

static json_t *record_json(json_t *r, const char *id)
{
    json_t *o = json_pack("{s:s, s:s}", "type", "sandbox", "id", id), *t = json_object();
    const char *k;
    json_t *jv;
    json_object_foreach(r, k, jv) {
        const char *v = json_string_value(jv);
        if (!strcmp(k, "environment") || !strcmp(k, "status") || !strcmp(k, "tier") ||
            !strcmp(k, "node") || !strcmp(k, "created_at") || !strcmp(k, "session_id"))
            json_object_set_new(o, k, *v ? json_string(v) : json_null());
        else if (!strcmp(k, "error"))
            json_object_set_new(o, k, *v ? json_string(v) : json_null());
        else if (!strcmp(k, "claim_ms") || !strcmp(k, "attached_ms") || !strcmp(k, "node_wait_ms"))
            json_object_set_new(t, k, json_real(atof(v)));
        else if (!strcmp(k, "idle_timeout_s"))
            json_object_set_new(o, k, json_integer(atoll(v)));
        else if (!strcmp(k, "last_used_ms")) {
            char at[40];
            sched__rfc3339((uint64_t)strtoull(v, NULL, 10), at, sizeof(at));
            json_object_set_new(o, "last_used_at", json_string(at));
        }
    }
    json_object_set_new(o, "timings", t);
    return o;
}

static const char *field(json_t *r, const char *name)
{
    return json_string_value(json_object_get(r, name));
}

/* What the record says, corrected by the node's state: a sandbox the
 * record calls ready whose node no longer holds it leased is failed. */
static void truth(json_t *r, const char **status, char *why, size_t cap)
{
    const char *ns = field(r, "node_state");
    why[0] = '\0';
    if (!*status || strcmp(*status, "ready") != 0 || !ns || strcmp(ns, "leased") == 0)
        return;
    *status = "failed";
    snprintf(why, cap, "the sandbox is gone: its node %s", strcmp(ns, "lost") == 0 ? "died"
                                                       : strcmp(ns, "gone") == 0 ? "destroyed it"
                                                       : "took it back");
}

static void start(struct sched_req *req, const char *name, const char *id, json_t *record);

/* The organization's sandbox quota and the pool's orgs, and the new
 * sandbox's record, written by the same script (quota.c): the create's
 * answer then waits for no other round trip. */
static void gate(struct sched_req *req, const char *name)
{
    char id[64], now[40], idle[32];
    const char *sid = json_string_value(json_object_get(req->body, "session_id"));

    sched__new_id("sbx_", id, sizeof(id));
    sched__rfc3339(wp_wall_ms(), now, sizeof(now));
    snprintf(idle, sizeof(idle), "%.0f", req->srv->cfg.sandbox_idle_s);
    json_t *rec = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "org", req->org, "environment",
                            name, "status", "provisioning", "session_id", sid ? sid : id,
                            "created_at", now, "idle_timeout_s", idle);
    if (!rec) {
        sched__respond_error(req, 500, "api_error", NULL, "out of memory");
        return;
    }
    sched__quota_sbx(req, name, id, rec, start);
}

/* The record was written but no claim started: it says failed (which
 * also ends its count against the quota). */
static void record_failed(struct sched_req *req, const char *id, const char *why)
{
    char key[160];
    sched__key_sbx(key, sizeof(key), req->org, id);
    const char *argv[] = { "HSET", key, "status", "failed", "error", why };
    wp_redis_argv(req->srv->rds, NULL, NULL, 6, argv, NULL);
}

/* An API environment: the organization's own, cloud, not archived; its
 * sandboxes come from its pool environment (sched__env_pool_of). */
static void api_env_loaded(struct sched_req *req, json_t *env, long long rev)
{
    char name[64];
    const char *type = json_string_value(json_object_get(json_object_get(env, "config"), "type"));
    (void)rev;
    if (!json_is_null(json_object_get(env, "archived_at"))) {
        sched__bad_request(req, "environment %s is archived", req->scratch);
    } else if (!type || strcmp(type, "cloud") != 0) {
        sched__bad_request(req, "environment %s is self_hosted: its work goes to your workers",
                           req->scratch);
    } else if (sched__env_pool_of(env, name, sizeof(name)) < 0) {
        sched__bad_request(req, "environment %s has no pool environment", req->scratch);
    } else {
        gate(req, name);
    }
    json_decref(env);
}

void sched__h_sbx_create(struct sched_req *req)
{
    json_t *b = req->body, *env = json_object_get(b, "env"), *v;
    const char *name = json_string_value(json_object_get(b, "environment"));
    const char *bad = sched__unknown_field(b, create_fields), *k;

    if (bad) {
        sched__bad_request(req, "%s: Extra inputs are not permitted", bad);
        return;
    }
    if (!name || !snap_name_valid(name)) {
        sched__bad_request(req, "environment: an environment id (env_...) or a warmpool "
                                "environment name is required");
        return;
    }
    if (env && (!json_is_object(env) || json_object_size(env) > 64)) {
        sched__bad_request(req, "env: an object of at most 64 strings");
        return;
    }
    json_object_foreach(env, k, v) {
        if (!json_is_string(v) || !*k || strchr(k, '=')) {
            sched__bad_request(req, "env.%s: values are strings, names have no '='", k);
            return;
        }
    }
    const char *wd = json_string_value(json_object_get(b, "workdir"));
    if ((json_object_get(b, "workdir") && (!wd || wd[0] != '/')) ||
        (json_object_get(b, "hostname") && !json_is_string(json_object_get(b, "hostname"))) ||
        (json_object_get(b, "session_id") && !json_is_string(json_object_get(b, "session_id")))) {
        sched__bad_request(req, "workdir must be an absolute path; hostname and session_id strings");
        return;
    }
    const char *sid = json_string_value(json_object_get(b, "session_id"));
    if (sid && (!*sid || strlen(sid) > 127)) { /* the pool's limit (pool_claim) */
        sched__bad_request(req, "session_id: 1-127 bytes");
        return;
    }
    if (strncmp(name, "env_", 4) == 0) {
        snprintf(req->scratch, sizeof(req->scratch), "%s", name);
        sched__obj_load(req, &sched__kind_env, name, api_env_loaded);
        return;
    }
    gate(req, name);
}

/* Claim in the background and answer at once (the record is written). */
static void start(struct sched_req *req, const char *name, const char *id, json_t *record)
{
    json_t *b = req->body;
    struct sched_server *srv = req->srv;
    struct sched_sbx *s;
    struct wp_err err;

    if (!srv->pool || !pool_client_ready(srv->pool)) {
        record_failed(req, id, "the pool is not reachable");
        sched__respond_error(req, 503, "api_error", NULL, "the pool is not reachable");
        return;
    }
    s = calloc(1, sizeof(*s));
    if (!s) {
        record_failed(req, id, "out of memory");
        sched__respond_error(req, 500, "api_error", NULL, "out of memory");
        return;
    }
    s->srv = srv;
    s->attach = true;
    s->t0 = wp_now_ns();
    snprintf(s->id, sizeof(s->id), "%s", id); /* counted by sched__quota_sbx */
    snprintf(s->org, sizeof(s->org), "%s", req->org);
    snprintf(s->env, sizeof(s->env), "%s", name);
    snprintf(s->session, sizeof(s->session), "%s",
             json_string_value(json_object_get(record, "session_id")) ?: s->id);
    s->settings = json_deep_copy(b);
    if (pool_claim(srv->pool, name, s->session, 60, claim_cb, s, &err) < 0) {
        json_decref(s->settings);
        free(s);
        char why[160];
        snprintf(why, sizeof(why), "claim: %s", err.msg);
        record_failed(req, id, why);
        sched__respond_error(req, 503, "api_error", NULL, "%s", why);
        return;
    }
    s->next = srv->sbxs;
    srv->sbxs = s;
    /* Answer at once; the claim goes on in the background. */
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:n, s:n, s:{}, s:n, s:O?, s:I}", "type",
                          "sandbox", "id", s->id, "environment", name, "session_id", s->session,
                          "status", "provisioning", "tier", "node", "timings", "error",
                          "created_at", json_object_get(record, "created_at"), "idle_timeout_s",
                          (json_int_t)srv->cfg.sandbox_idle_s);
    sched__respond_json(req, 200, o ? o : json_object());
}

static void use_record(struct sched_req *req, json_t *reply)
{
    const char *org = field(reply, "org");
    if (!org || strcmp(org, req->org) != 0) {
        sched__not_found(req, "sandbox %s not found", req->params[0]);
        return;
    }
    const char *status = field(reply, "status");
    char gone[128];
    truth(reply, &status, gone, sizeof(gone));
    if (req->step == 0) { /* GET */
        json_t *o = record_json(reply, req->params[0]);
        if (gone[0]) {
            json_object_set_new(o, "status", json_string(status));
            json_object_set_new(o, "error", json_string(gone));
        }
        sched__respond_json(req, 200, o);
        return;
    }
    if (req->step == 2) { /* DELETE */
        const char *sb = field(reply, "sandbox"), *env = field(reply, "environment"),
                   *tok = field(reply, "token");
        struct sched_sbx *s = find_local(req->srv, req->params[0]);
        /* Provisioning here or in another process (the record says so):
         * a release now would find no token, and the claim, once done,
         * would write the record back and keep the lease for the idle
         * timeout. */
        if ((s && s->st == SBX_PROVISIONING) || (!s && status && !strcmp(status, "provisioning"))) {
            sched__respond_error(req, 409, "invalid_request_error", NULL,
                                 "sandbox %s is still being provisioned; delete it once ready",
                                 req->params[0]);
            return;
        }
        if (s)
            drop_local(s);
        if (sb && *sb && env && tok)
            pool_release(req->srv->pool, env, sb, strtoull(tok, NULL, 10), NULL, NULL, NULL);
        char key[160];
        sched__key_sbx(key, sizeof(key), req->org, req->params[0]);
        const char *argv[] = { "DEL", key };
        wp_redis_argv(req->srv->rds, NULL, NULL, 2, argv, NULL);
        char kz[160]; /* no longer counted against the org's quota */
        sched__key_quota(kz, sizeof(kz), "sbx", req->org);
        const char *zargv[] = { "ZREM", kz, req->params[0] };
        wp_redis_argv(req->srv->rds, NULL, NULL, 3, zargv, NULL);
        sched__respond_json(req, 200, json_pack("{s:s, s:s}", "type", "sandbox_deleted", "id",
                                                req->params[0]));
        return;
    }
    /* execute on a sandbox another process provisioned */
    const char *ov = field(reply, "overloaded");
    if (status && strcmp(status, "failed") == 0 && !gone[0] && ov && strcmp(ov, "1") == 0) {
        const char *why = field(reply, "error");
        respond_overloaded(req, req->params[0], why && *why ? why : "its node is overloaded");
        return;
    }
    if (status && (strcmp(status, "failed") == 0 || strcmp(status, "expired") == 0)) {
        const char *why = gone[0] ? gone : field(reply, "error");
        sched__respond_error(req, 502, "api_error", "sandbox_failed", "sandbox %s %s: %s",
                             req->params[0],
                             strcmp(status, "expired") == 0 ? "expired" : "is not available",
                             why && *why ? why : "unknown");
        return;
    }
    if (!status || strcmp(status, "ready") != 0) {
        snprintf(req->extra_headers, sizeof(req->extra_headers), "retry-after: 1\r\n");
        sched__respond_error(req, 409, "invalid_request_error", "sandbox_not_ready",
                             "sandbox %s is %s", req->params[0], status ? status : "unknown");
        return;
    }
    struct sched_sbx *s = calloc(1, sizeof(*s));
    if (!s) {
        sched__respond_error(req, 500, "api_error", NULL, "out of memory");
        return;
    }
    s->srv = req->srv;
    s->t0 = wp_now_ns();
    snprintf(s->id, sizeof(s->id), "%s", req->params[0]);
    snprintf(s->org, sizeof(s->org), "%s", org);
    snprintf(s->env, sizeof(s->env), "%s", field(reply, "environment"));
    snprintf(s->res.sandbox, sizeof(s->res.sandbox), "%s", field(reply, "sandbox"));
    snprintf(s->res.relay, sizeof(s->res.relay), "%s", field(reply, "relay"));
    snprintf(s->res.rkey, sizeof(s->res.rkey), "%s", field(reply, "rkey") ?: "");
    s->res.token = strtoull(field(reply, "token") ?: "0", NULL, 10);
    s->next = req->srv->sbxs;
    req->srv->sbxs = s;
    struct waiter *w = calloc(1, sizeof(*w));
    w->req = req;
    w->call = json_incref(req->body);
    w->t0 = wp_now_ns();
    sched__req_hold(req);
    s->waiters = w;
    connect_link(s);
}

/* The node's own state of the sandbox ("node_state": leased, idle, lost,
 * released, or "gone" when the node destroyed it), added to the record. */
static void got_state(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    json_t *rec = req->tmp;
    req->tmp = NULL;
    json_object_set_new(rec, "node_state",
                        json_string(reply->type == REDIS_REPLY_STRING ? reply->str : "gone"));
    use_record(req, rec);
    json_decref(rec);
}

/* The record, then the node's state of its sandbox: two reads, since the
 * two are in different hash slots (nothing to keep atomic in a read). */
static void got_record(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    json_t *rec = record_of(reply);
    const char *org = field(rec, "org"), *env = field(rec, "environment"),
               *sb = field(rec, "sandbox");
    if (org && !strcmp(org, req->org) && env && sb && *sb) {
        char key[256];
        snprintf(key, sizeof(key), "wp:env:{%s}:sb:%s", env, sb); /* the pool's (POOL__K_SB) */
        const char *argv[] = { "HGET", key, "state" };
        req->tmp = rec;
        sched__req_redis(req, got_state, 3, argv, NULL);
        return;
    }
    use_record(req, rec);
    json_decref(rec);
}

static void load(struct sched_req *req, int step)
{
    char key[160];
    sched__key_sbx(key, sizeof(key), req->org, req->params[0]);
    req->step = step;
    const char *argv[] = { "HGETALL", key };
    sched__req_redis(req, got_record, 2, argv, NULL);
}

void sched__h_sbx_get(struct sched_req *req)
{
    load(req, 0);
}

void sched__h_sbx_delete(struct sched_req *req)
{
    load(req, 2);
}

/* A sandbox whose claim was refused as overloaded is claimed again when
 * it is used (the caller retried): provisioning as at create. */
static int reclaim(struct sched_sbx *s)
{
    struct wp_err err;

    if (pool_claim(s->srv->pool, s->env, s->session, 60, claim_cb, s, &err) < 0) {
        snprintf(s->error, sizeof(s->error), "claim: %s", err.msg);
        return -1;
    }
    s->st = SBX_PROVISIONING;
    s->overloaded = s->overload_told = false;
    s->error[0] = '\0';
    s->t0 = wp_now_ns();
    save(s);
    return 0;
}

void sched__h_sbx_execute(struct sched_req *req)
{
    json_t *b = req->body;
    static const char *const fields[] = { "name", "input", "timeout_ms", "stream", NULL };
    const char *bad = sched__unknown_field(b, fields);
    struct sched_sbx *s;

    if (bad) {
        sched__bad_request(req, "%s: Extra inputs are not permitted", bad);
        return;
    }
    if (!json_is_string(json_object_get(b, "name")) || !json_is_object(json_object_get(b, "input")) ||
        (json_object_get(b, "timeout_ms") && !json_is_integer(json_object_get(b, "timeout_ms"))) ||
        (json_object_get(b, "stream") && !json_is_boolean(json_object_get(b, "stream")))) {
        sched__bad_request(req, "execute wants {\"name\": tool, \"input\": {...}, \"timeout_ms\"?: "
                                "int, \"stream\"?: bool}");
        return;
    }
    s = find_local(req->srv, req->params[0]);
    if (s && s->st == SBX_FAILED && s->overloaded && strcmp(s->org, req->org) == 0 &&
        (!s->overload_told || reclaim(s) < 0)) {
        /* The caller hears of the overload once; its retry claims anew. */
        s->overload_told = true;
        respond_overloaded(req, s->id, s->error);
        return;
    }
    bool over = s && (s->st == SBX_FAILED || s->st == SBX_EXPIRED);
    if (!s || strcmp(s->org, req->org) != 0 || over) {
        if (over && strcmp(s->org, req->org) == 0)
            drop_local(s); /* reconnect from the record, or say why not */
        load(req, 1);
        return;
    }
    if (s->st == SBX_READY) {
        run_call(s, req, b);
        return;
    }
    /* Its attach is on the link already: the call goes right behind it
     * (the hands run it after the attach, or refuse it if that failed),
     * one round trip sooner than after the attach's answer (issue 20).
     * Not a streamed one: its headers would go out before the sandbox is
     * known to be good, and its errors are plain responses. */
    if (s->st == SBX_PROVISIONING && s->attach_sent && s->ac && !s->waiters &&
        s->srv->cfg.relay_pipe && !json_is_true(json_object_get(b, "stream"))) {
        start_call(s, req, b, true);
        return;
    }
    /* Not attached yet: wait for it (the claim has its own timeout). */
    struct waiter *w = calloc(1, sizeof(*w));
    if (!w) {
        sched__respond_error(req, 500, "api_error", NULL, "out of memory");
        return;
    }
    w->req = req;
    w->call = json_incref(b);
    w->t0 = wp_now_ns();
    sched__req_hold(req);
    struct waiter **pp = &s->waiters;
    while (*pp)
        pp = &(*pp)->next;
    *pp = w;
}

int sched__sbx_init(struct sched_server *srv, struct wp_err *err)
{
    return pool_client_new(srv->loop, srv->cfg.redis_host, srv->cfg.redis_port, &srv->pool, err);
}

void sched__sbx_shutdown(struct sched_server *srv)
{
    /* The pool client first: its pending claims call back into live
     * sandboxes (which fail their waiters). */
    pool_client_free(srv->pool);
    srv->pool = NULL;
    while (srv->sbxs) {
        struct sched_sbx *s = srv->sbxs;
        srv->sbxs = s->next;
        s->next = NULL;
        ev_timer_stop(srv->loop, &s->keep);
        s->st = SBX_FAILED;
        snprintf(s->error, sizeof(s->error), "scheduler shutting down");
        flush_waiters(s);
        if (s->ac)
            alink_client_free(s->ac);
        json_decref(s->settings);
        free(s);
    }
}
