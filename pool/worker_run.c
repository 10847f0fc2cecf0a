/* worker_run.c - the session tool runner of the node's work-queue worker:
 * what the SDK's SessionToolRunner does (work-queue.md 8), with the tools
 * run in a sandbox of this node's pool instead of a local workdir.
 *
 * Attach: open the session's event stream, and once its head arrived read
 * the whole history (limit=1000, then next_page). Stream events that come
 * meanwhile wait in a backlog, so every event is handled in log order.
 * The bookkeeping is rebuilt from the history on every attach: tool uses
 * seen, answered ids, confirmation verdicts, terminated threads. Built-in
 * calls without an answer run one at a time; results go back as
 * user.tool_result, retried within the lease's TTL.
 *
 * The sandbox: claimed through the pool client on the first call (hot,
 * else warm, else cold), reached through its node's relay, attached with
 * the session id; kept until the runner ends, its lease renewed every
 * third of its TTL, then released (the node destroys it). */
#define WP_LOG_COMPONENT "worker"
#include "pool/pool_int.h"

#include <curl/curl.h>
#include <errno.h>
#include <ev.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agentlink/agentlink.h"
#include "base/err.h"
#include "base/log.h"
#include "base/sse.h"

#define MAX_EVENT (8u << 20)        /* one SSE event (a write tool's input can be big) */
#define MAX_PAGE (64u << 20)        /* one history page of up to 1000 events */
#define MAX_BACKLOG 100000          /* stream events waiting for the history */
#define MAX_PAGES 1000
#define TOOL_TIMEOUT_MS 120000      /* the SDK's per-call timeout */
#define CLAIM_TIMEOUT_S 60

enum tstate { T_CONFIRM, T_QUEUED, T_RUNNING, T_POSTING };
enum sbx { SBX_NONE, SBX_CLAIMING, SBX_LINKING, SBX_READY };

struct rtool {
    struct pool__runner *r;
    struct rtool *next;
    char id[128], name[16], thread[128];
    json_t *input;
    enum tstate st;
    int64_t call_id;
    char *body;                 /* the result event, serialized once */
    struct pool__http_req *post;
    ev_timer retry;
    double post_t0, backoff;
};

struct pool__runner {
    struct ev_loop *loop;
    struct pool__http *http;
    struct pool_client *pool;
    char base[256], sid[128], token[512], pool_env[64];
    double sandbox_lease_ms, send_window_s;
    int max_idle_ms;
    pool__run_end_cb on_end;
    void *ctx;
    bool ended, stopped;
    int refs;                   /* pool callbacks outstanding (they cannot be cancelled) */
    /* the stream */
    struct pool__http_req *stream;
    struct wp_sse_parser *sse;
    bool got_event;             /* since the stream opened */
    double backoff;
    ev_timer reconnect;
    /* the history */
    struct pool__http_req *hist;
    bool hist_done;
    int pages;
    json_t *backlog;            /* stream events read before the history was */
    /* bookkeeping */
    json_t *answered;           /* tool use id -> true */
    json_t *verdicts;           /* tool use id -> "allow" | "deny" | ... */
    json_t *dead_threads;       /* session_thread_id -> true */
    struct rtool *tools;        /* in arrival order */
    bool idle_pending;          /* a turn ended: countdown once nothing is outstanding */
    ev_timer idle;
    /* the sandbox */
    enum sbx sbx;
    int sbx_failures;           /* in a row; a few are retried (a dead node's hot clone) */
    ev_timer sbx_retry;
    struct pool_claim_result claim;
    struct alink_client *ac;
    ev_timer renew;
};

static const char *const builtin[] = { "bash", "read", "write", "edit", "glob", "grep" };

static void pump(struct pool__runner *r);
static void attach(struct pool__runner *r);

static void end(struct pool__runner *r, enum pool__run_end why)
{
    if (r->ended || r->stopped)
        return;
    r->ended = true;
    ev_timer_stop(r->loop, &r->idle);
    r->on_end(r->ctx, why);
}

static void maybe_free(struct pool__runner *r)
{
    if (r->stopped && r->refs == 0)
        free(r);
}

static const char *str(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* ---- tools -------------------------------------------------------------- */

static struct rtool *find_tool(struct pool__runner *r, const char *id)
{
    for (struct rtool *t = r->tools; t; t = t->next)
        if (strcmp(t->id, id) == 0)
            return t;
    return NULL;
}

static void tool_free(struct pool__runner *r, struct rtool *t)
{
    for (struct rtool **pp = &r->tools; *pp; pp = &(*pp)->next)
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    pool__http_cancel(t->post);
    ev_timer_stop(r->loop, &t->retry);
    json_decref(t->input);
    free(t->body);
    free(t);
}

static bool outstanding(const struct pool__runner *r)
{
    return r->tools != NULL;
}

static void post_result(struct rtool *t);

static void post_done(void *ctx, const struct pool__http_res *res)
{
    struct rtool *t = ctx;
    struct pool__runner *r = t->r;

    t->post = NULL;
    if (res->status == 0 && res->code >= 200 && res->code < 300) {
        json_object_set_new(r->answered, t->id, json_true());
        log_info("session=%s tool_use=%s result posted", r->sid, t->id);
        tool_free(r, t);
        pump(r);
        return;
    }
    double waited = ev_now(r->loop) - t->post_t0;
    if (!pool__http_transient(res) || waited + t->backoff > r->send_window_s) {
        log_warn("session=%s tool_use=%s result not posted (%s): %s%.200s", r->sid, t->id,
                 pool__http_transient(res) ? "retry window exhausted" : "permanent error",
                 res->status < 0 ? res->errmsg : "", res->status < 0 ? "" : res->body);
        tool_free(r, t);
        pump(r);
        return;
    }
    /* 1 s doubling to 30 s, each minus up to 25 % jitter (work-queue.md 8.3). */
    double d = t->backoff * (1.0 - 0.25 * ((double)rand() / RAND_MAX));
    log_info("session=%s tool_use=%s posting the result failed (%s %ld); again in %.1f s", r->sid,
             t->id, res->status < 0 ? res->errmsg : "http", res->code, d);
    t->backoff = t->backoff * 2 > 30 ? 30 : t->backoff * 2;
    ev_timer_set(&t->retry, d, 0.);
    ev_timer_start(r->loop, &t->retry);
}

static void retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    post_result(w->data);
}

static void post_result(struct rtool *t)
{
    struct pool__runner *r = t->r;
    char url[512];
    struct wp_err err;

    snprintf(url, sizeof(url), "%s/v1/sessions/%s/events", r->base, r->sid);
    struct pool__http_opts o = { .method = "POST", .url = url, .bearer = r->token, .body = t->body,
                                 .body_len = strlen(t->body), .timeout_s = 60 };
    if (pool__http_start(r->http, &o, post_done, t, &t->post, &err) < 0) {
        log_error("session=%s tool_use=%s: %s", r->sid, t->id, err.msg);
        tool_free(r, t);
    }
}

/* The call ended: post its result (exactly one event per request). */
static void tool_finished(struct rtool *t, const char *text, size_t len, bool is_error)
{
    struct pool__runner *r = t->r;
    json_t *txt = alink_json_text(len ? text : "(no output)", len ? len : 11);
    json_t *ev = json_pack("{s:[{s:s, s:s, s:b, s:[{s:s, s:o}]}]}", "events", "type", "user.tool_result",
                           "tool_use_id", t->id, "is_error", is_error, "content", "type", "text", "text", txt);

    t->st = T_POSTING;
    t->call_id = 0;
    t->body = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
    json_decref(ev);
    if (!t->body) {
        log_error("session=%s tool_use=%s: out of memory", r->sid, t->id);
        tool_free(r, t);
        return;
    }
    t->post_t0 = ev_now(r->loop);
    t->backoff = 1;
    post_result(t);
}

static void drop_sandbox(struct pool__runner *r, const char *why)
{
    if (r->sbx == SBX_NONE)
        return;
    if (why)
        log_warn("session=%s sandbox %s dropped: %s", r->sid, r->claim.sandbox, why);
    ev_timer_stop(r->loop, &r->renew);
    if (r->ac) {
        struct alink_client *ac = r->ac;
        r->ac = NULL;
        alink_client_free(ac); /* a running call ends with a link error */
    }
    if (r->claim.sandbox[0] && r->pool)
        pool_release(r->pool, r->pool_env, r->claim.sandbox, r->claim.token, NULL, NULL, NULL);
    memset(&r->claim, 0, sizeof(r->claim));
    r->sbx = SBX_NONE;
}

/* No sandbox could be had. A hot clone of a node that died but is not
 * reaped yet fails at the relay: claim again (twice, a second apart).
 * Then the queued calls fail, so the model reads why. */
static void fail_queued(struct pool__runner *r, const char *step, const char *detail)
{
    char msg[400];
    int n = snprintf(msg, sizeof(msg), "sandbox unavailable: %s%s%s", step, step[0] ? ": " : "", detail);

    log_warn("session=%s %s", r->sid, msg);
    drop_sandbox(r, NULL);
    if (++r->sbx_failures < 3) {
        r->sbx = SBX_CLAIMING; /* nothing else claims meanwhile */
        ev_timer_set(&r->sbx_retry, 1., 0.);
        ev_timer_start(r->loop, &r->sbx_retry);
        return;
    }
    r->sbx_failures = 0;
    for (struct rtool *t = r->tools, *next; t; t = next) {
        next = t->next; /* t may be freed */
        if (t->st == T_QUEUED)
            tool_finished(t, msg, (size_t)(n < (int)sizeof(msg) ? n : (int)sizeof(msg) - 1), true);
    }
}

static void tool_done(void *ctx, int status, const struct alink_result *res, const struct wp_err *err)
{
    struct rtool *t = ctx;
    struct pool__runner *r = t->r;

    (void)err;
    if (r->stopped)
        return; /* pool__runner_free frees t */
    log_info("session=%s tool_use=%s %s done status=%d is_error=%d", r->sid, t->id, t->name, status,
             res->is_error);
    tool_finished(t, res->content, res->len, status != 0 || res->is_error);
    if (status != 0 && status != WP_ETIMEDOUT && r->ac && !alink_client_connected(r->ac))
        drop_sandbox(r, "the link closed during a call");
    pump(r);
}

static void link_closed(void *ctx, const struct wp_err *err)
{
    struct pool__runner *r = ctx;
    if (r->stopped)
        return;
    drop_sandbox(r, err ? err->msg : "link closed");
}

static void attach_cb(void *ctx, int status, const struct alink_result *res, const struct wp_err *err)
{
    struct pool__runner *r = ctx;
    (void)err;
    if (r->stopped)
        return;
    if (status != 0 || res->is_error) {
        char d[300];
        snprintf(d, sizeof(d), "%.*s", (int)res->len, res->content);
        fail_queued(r, "attach", d);
        return;
    }
    r->sbx = SBX_READY;
    r->sbx_failures = 0;
    log_info("session=%s sandbox %s attached tier=%s node=%s", r->sid, r->claim.sandbox,
             r->claim.tier, r->claim.node);
    pump(r);
}

static void hello_cb(void *ctx, int status, const struct wp_err *err)
{
    struct pool__runner *r = ctx;
    struct wp_err e2;
    struct alink_attach a = { .session_id = r->sid };

    if (r->stopped)
        return;
    if (status != 0)
        fail_queued(r, "connect", err ? err->msg : "failed");
    else if (alink_client_attach(r->ac, &a, attach_cb, r, &e2) < 0)
        fail_queued(r, "attach", e2.msg);
}

static void relay_cb(void *ctx, int status, int fd, const struct wp_err *err)
{
    struct pool__runner *r = ctx;
    struct alink_client_opts o = { .on_close = link_closed, .close_ctx = r };
    struct wp_err e2;

    r->refs--;
    if (r->stopped) {
        if (status == 0)
            close(fd);
    } else if (status != 0) {
        fail_queued(r, "relay", err ? err->msg : "failed");
    } else if (alink_client_new(r->loop, &o, &r->ac, &e2) < 0 ||
               alink_client_connect_fd(r->ac, fd, hello_cb, r, &e2) < 0) {
        fail_queued(r, "connect", e2.msg);
    }
    maybe_free(r);
}

static void renew_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct pool__runner *r = w->data;
    (void)loop;
    (void)revents;
    if (r->claim.sandbox[0] && pool_client_ready(r->pool))
        pool_renew(r->pool, r->pool_env, r->claim.sandbox, r->claim.token, NULL, NULL, NULL);
}

static void claim_cb(void *ctx, int status, const struct pool_claim_result *res, const struct wp_err *err)
{
    struct pool__runner *r = ctx;
    struct wp_err e2;

    r->refs--;
    if (r->stopped) {
        if (status == 0) /* nobody will use it */
            pool_release(r->pool, r->pool_env, res->sandbox, res->token, NULL, NULL, NULL);
    } else if (status != 0) {
        fail_queued(r, "", err ? err->msg : "claim failed");
    } else {
        r->claim = *res;
        log_info("session=%s claimed sandbox %s tier=%s in %.1f ms", r->sid, res->sandbox, res->tier, res->ms);
        double every = r->sandbox_lease_ms / 3000.0;
        ev_timer_set(&r->renew, every, every);
        ev_timer_start(r->loop, &r->renew);
        r->sbx = SBX_LINKING;
        if (pool_connect(r->loop, &r->claim, r->pool_env, relay_cb, r, &e2) < 0)
            fail_queued(r, "relay", e2.msg);
        else
            r->refs++;
    }
    maybe_free(r);
}

static void claim_sandbox(struct pool__runner *r);

static void sbx_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct pool__runner *r = w->data;
    (void)loop;
    (void)revents;
    r->sbx = SBX_NONE;
    claim_sandbox(r);
}

static void claim_sandbox(struct pool__runner *r)
{
    struct wp_err err;

    if (!pool_client_ready(r->pool)) {
        fail_queued(r, "", "the pool's Redis is not reachable");
        return;
    }
    if (pool_claim(r->pool, r->pool_env, r->sid, CLAIM_TIMEOUT_S, claim_cb, r, &err) < 0) {
        fail_queued(r, "claim", err.msg);
        return;
    }
    r->sbx = SBX_CLAIMING;
    r->refs++;
}

/* Start what can start: the sandbox, the next queued call (one at a time,
 * as the SDK runs them); arm the idle countdown when nothing is left. */
static void pump(struct pool__runner *r)
{
    struct rtool *q = NULL;
    bool running = false;

    /* Nothing runs before the history is read: a later page may answer it. */
    if (r->stopped || r->ended || !r->hist_done)
        return;
    for (struct rtool *t = r->tools; t; t = t->next) {
        if (t->st == T_RUNNING)
            running = true;
        else if (t->st == T_QUEUED && !q)
            q = t;
    }
    if (q && !running) {
        if (r->sbx == SBX_NONE)
            claim_sandbox(r);
        else if (r->sbx == SBX_READY) {
            struct alink_call_opts o = { .timeout_ms = TOOL_TIMEOUT_MS };
            struct wp_err err;
            log_info("session=%s tool_use=%s running %s in sandbox %s", r->sid, q->id, q->name,
                     r->claim.sandbox);
            q->st = T_RUNNING;
            int64_t id = alink_client_call(r->ac, q->name, q->input, &o, tool_done, q, &err);
            if (id < 0) {
                char msg[300];
                int n = snprintf(msg, sizeof(msg), "%s: %s", q->name, err.msg);
                tool_finished(q, msg, (size_t)n, true);
            } else {
                /* The call may have ended (and q been freed) already. */
                struct rtool *t = r->tools;
                while (t && t != q)
                    t = t->next;
                if (t && t->st == T_RUNNING)
                    t->call_id = id;
            }
        }
    }
    if (r->idle_pending && !outstanding(r)) {
        if (!ev_is_active(&r->idle)) {
            ev_timer_set(&r->idle, r->max_idle_ms / 1000.0, 0.);
            ev_timer_start(r->loop, &r->idle);
        }
    } else {
        ev_timer_stop(r->loop, &r->idle);
    }
}

/* ---- events ------------------------------------------------------------- */

static bool is_builtin(const char *name)
{
    for (size_t i = 0; i < sizeof(builtin) / sizeof(builtin[0]); i++)
        if (strcmp(name, builtin[i]) == 0)
            return true;
    return false;
}

static void tool_use(struct pool__runner *r, json_t *ev, const char *id)
{
    const char *name = str(ev, "name"), *perm = str(ev, "evaluated_permission");
    const char *thread = str(ev, "session_thread_id");
    json_t *input = json_object_get(ev, "input");
    struct rtool *t;

    if (json_object_get(r->answered, id) || find_tool(r, id))
        return;
    if (!name || !is_builtin(name))
        return; /* left alone for another client (work-queue.md 8.2) */
    if (thread && json_object_get(r->dead_threads, thread))
        return;
    if (perm && strcmp(perm, "deny") == 0)
        return; /* the server resolves it */
    if (!json_is_object(input) || strlen(id) >= sizeof(t->id) || (thread && strlen(thread) >= sizeof(t->thread))) {
        log_warn("session=%s tool_use=%.100s: malformed (input not an object or ids too long); left alone",
                 r->sid, id);
        return;
    }
    t = calloc(1, sizeof(*t));
    if (!t) {
        log_error("session=%s: out of memory", r->sid);
        return;
    }
    t->r = r;
    snprintf(t->id, sizeof(t->id), "%s", id);
    snprintf(t->name, sizeof(t->name), "%s", name);
    snprintf(t->thread, sizeof(t->thread), "%s", thread ? thread : "");
    t->input = json_incref(input);
    ev_init(&t->retry, retry_cb);
    t->retry.data = t;
    if (!perm || strcmp(perm, "allow") == 0) {
        t->st = T_QUEUED;
    } else {
        /* ask (or unknown): hold until a user.tool_confirmation. */
        const char *v = json_string_value(json_object_get(r->verdicts, id));
        if (v && strcmp(v, "allow") != 0) {
            json_decref(t->input);
            free(t);
            return;
        }
        t->st = v ? T_QUEUED : T_CONFIRM;
    }
    struct rtool **pp = &r->tools;
    while (*pp)
        pp = &(*pp)->next;
    *pp = t;
    log_info("session=%s tool_use=%s %s %s", r->sid, id, name, t->st == T_CONFIRM ? "waits for confirmation" : "queued");
}

/* Drop calls nobody must run any more (answered elsewhere, denied,
 * thread terminated); running and posting ones finish. */
static void drop_where(struct pool__runner *r, const char *id, const char *thread)
{
    for (struct rtool *t = r->tools, *next; t; t = next) {
        next = t->next;
        if (t->st != T_CONFIRM && t->st != T_QUEUED)
            continue;
        if ((id && strcmp(t->id, id) == 0) || (thread && strcmp(t->thread, thread) == 0))
            tool_free(r, t);
    }
}

/* One event of the log, from the history or the stream, in order. */
static void on_event(struct pool__runner *r, json_t *ev)
{
    const char *type = str(ev, "type"), *id = str(ev, "id"), *ref;

    if (!json_is_object(ev) || !type) {
        log_warn("session=%s: an event without a type; skipped", r->sid);
        return;
    }
    /* Any event but these two cancels the idle countdown (8.4). */
    if (strcmp(type, "user.tool_confirmation") != 0 && strcmp(type, "session.thread_status_terminated") != 0)
        r->idle_pending = false;
    if (strcmp(type, "agent.tool_use") == 0) {
        if (id)
            tool_use(r, ev, id);
    } else if (strcmp(type, "user.tool_result") == 0 && (ref = str(ev, "tool_use_id"))) {
        json_object_set_new(r->answered, ref, json_true());
        drop_where(r, ref, NULL);
    } else if (strcmp(type, "user.custom_tool_result") == 0 && (ref = str(ev, "custom_tool_use_id"))) {
        json_object_set_new(r->answered, ref, json_true());
    } else if (strcmp(type, "user.tool_confirmation") == 0 && (ref = str(ev, "tool_use_id"))) {
        const char *v = str(ev, "result");
        json_object_set_new(r->verdicts, ref, json_string(v ? v : "?"));
        struct rtool *t = find_tool(r, ref);
        if (t && t->st == T_CONFIRM) {
            if (v && strcmp(v, "allow") == 0)
                t->st = T_QUEUED;
            else
                tool_free(r, t); /* deny (or unknown): never run, post nothing */
        }
    } else if (strcmp(type, "session.thread_status_terminated") == 0 && (ref = str(ev, "session_thread_id"))) {
        json_object_set_new(r->dead_threads, ref, json_true());
        drop_where(r, NULL, ref);
    } else if (strcmp(type, "session.status_terminated") == 0 || strcmp(type, "session.deleted") == 0) {
        log_info("session=%s %s", r->sid, type);
        end(r, POOL__RUN_TERMINATED);
    } else if (strcmp(type, "session.status_idle") == 0) {
        const char *sr = str(json_object_get(ev, "stop_reason"), "type");
        r->idle_pending = !sr || strcmp(sr, "requires_action") != 0;
    }
}

/* ---- stream and history -------------------------------------------------- */

static void schedule_reconnect(struct pool__runner *r, const char *why)
{
    if (r->stopped || r->ended)
        return;
    pool__http_cancel(r->stream);
    pool__http_cancel(r->hist);
    r->stream = r->hist = NULL;
    /* 500 ms after a stream that delivered events, doubling to 10 s (8.5). */
    r->backoff = r->got_event ? 0.5 : (r->backoff ? (r->backoff * 2 > 10 ? 10 : r->backoff * 2) : 0.5);
    log_info("session=%s stream: %s; reconnecting in %.1f s", r->sid, why, r->backoff);
    ev_timer_set(&r->reconnect, r->backoff, 0.);
    ev_timer_start(r->loop, &r->reconnect);
}

static void history_done(struct pool__runner *r)
{
    json_t *v;
    size_t i;

    r->hist_done = true;
    json_array_foreach(r->backlog, i, v) {
        on_event(r, v);
        if (r->ended)
            break;
    }
    json_array_clear(r->backlog);
    pump(r);
}

static void fetch_page(struct pool__runner *r, const char *page);

static void page_done(void *ctx, const struct pool__http_res *res)
{
    struct pool__runner *r = ctx;
    json_error_t je;
    json_t *o = NULL, *data, *v;
    size_t i;

    r->hist = NULL;
    if (res->status < 0 || res->code < 200 || res->code >= 300) {
        /* The SDK logs and goes on with the live stream only. */
        log_warn("session=%s listing events failed (%s %ld): %.200s; going on with the stream only",
                 r->sid, res->status < 0 ? res->errmsg : "http", res->code, res->status < 0 ? "" : res->body);
        history_done(r);
        return;
    }
    o = json_loadb(res->body, res->len, JSON_REJECT_DUPLICATES, &je);
    data = json_object_get(o, "data");
    if (!json_is_object(o) || !json_is_array(data)) {
        log_warn("session=%s events list: not {\"data\": [...]} (%s); going on with the stream only", r->sid,
                 o ? "wrong shape" : je.text);
        json_decref(o);
        history_done(r);
        return;
    }
    json_array_foreach(data, i, v) {
        on_event(r, v);
        if (r->ended)
            break;
    }
    json_t *next = json_object_get(o, "next_page");
    if (!r->ended && json_is_string(next) && ++r->pages < MAX_PAGES)
        fetch_page(r, json_string_value(next));
    else if (!r->ended)
        history_done(r);
    json_decref(o);
}

static void fetch_page(struct pool__runner *r, const char *page)
{
    char url[1024];
    struct wp_err err;
    char *esc = page ? curl_easy_escape(NULL, page, 0) : NULL;

    if (page && (!esc || strlen(esc) > 512)) {
        log_warn("session=%s events list: unusable next_page; going on with the stream only", r->sid);
        curl_free(esc);
        history_done(r);
        return;
    }
    snprintf(url, sizeof(url), "%s/v1/sessions/%s/events?limit=1000%s%s", r->base, r->sid,
             esc ? "&page=" : "", esc ? esc : "");
    curl_free(esc);
    struct pool__http_opts o = { .method = "GET", .url = url, .bearer = r->token, .timeout_s = 120,
                                 .max_body = MAX_PAGE };
    if (pool__http_start(r->http, &o, page_done, r, &r->hist, &err) < 0) {
        log_error("session=%s events list: %s", r->sid, err.msg);
        history_done(r);
    }
}

static int on_sse(void *ctx, const char *event, const char *data, size_t len)
{
    struct pool__runner *r = ctx;
    json_error_t je;
    json_t *ev;

    if (strcmp(event, "error") == 0) {
        log_warn("session=%s stream: error event: %.200s", r->sid, data);
        return WP_EPROTO; /* ends the transfer: reconnect */
    }
    ev = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(ev)) {
        log_warn("session=%s stream: an event that is not a JSON object (%s); reconnecting", r->sid,
                 ev ? "wrong type" : je.text);
        json_decref(ev);
        return WP_EPROTO;
    }
    r->got_event = true;
    r->backoff = 0;
    if (!r->hist_done) {
        if (json_array_size(r->backlog) >= MAX_BACKLOG) {
            json_decref(ev);
            return WP_ETOOBIG;
        }
        json_array_append_new(r->backlog, ev);
        return 0;
    }
    on_event(r, ev);
    json_decref(ev);
    pump(r);
    return 0;
}

static int on_stream_data(void *ctx, const char *p, size_t n)
{
    struct pool__runner *r = ctx;
    return wp_sse_parser_feed(r->sse, p, n);
}

static void on_stream_head(void *ctx, long code)
{
    struct pool__runner *r = ctx;
    if (code < 200 || code >= 300)
        return;
    /* Headers first, then history, so nothing falls between them (8.1). */
    fetch_page(r, NULL);
}

static void stream_done(void *ctx, const struct pool__http_res *res)
{
    struct pool__runner *r = ctx;
    char why[300];

    r->stream = NULL;
    if (res->status == 0 && res->code >= 400 && res->code < 500 && !pool__http_transient(res)) {
        log_error("session=%s opening the event stream: HTTP %ld: %.200s", r->sid, res->code, res->body);
        end(r, POOL__RUN_FAILED);
        return;
    }
    if (res->status < 0)
        snprintf(why, sizeof(why), "%s", res->errmsg);
    else
        snprintf(why, sizeof(why), "ended (HTTP %ld)", res->code);
    schedule_reconnect(r, why);
}

static void attach(struct pool__runner *r)
{
    char url[512];
    struct wp_err err;

    wp_sse_parser_free(r->sse);
    r->sse = wp_sse_parser_new(MAX_EVENT, on_sse, r);
    if (!r->sse) {
        end(r, POOL__RUN_FAILED);
        return;
    }
    r->hist_done = false;
    r->pages = 0;
    r->got_event = false;
    r->idle_pending = false;
    json_array_clear(r->backlog);
    snprintf(url, sizeof(url), "%s/v1/sessions/%s/events/stream", r->base, r->sid);
    /* No deadline: the server's keep-alive comments keep it moving. */
    struct pool__http_opts o = { .method = "GET", .url = url, .bearer = r->token, .low_speed_s = 300,
                                 .on_data = on_stream_data, .on_head = on_stream_head };
    if (pool__http_start(r->http, &o, stream_done, r, &r->stream, &err) < 0) {
        log_error("session=%s stream: %s", r->sid, err.msg);
        end(r, POOL__RUN_FAILED);
    }
}

static void reconnect_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    attach(w->data);
}

static void idle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct pool__runner *r = w->data;
    (void)loop;
    (void)revents;
    log_info("session=%s idle for %d ms after the turn ended; detaching", r->sid, r->max_idle_ms);
    end(r, POOL__RUN_IDLE);
}

/* ---- lifecycle ------------------------------------------------------------ */

int pool__runner_new(const struct pool__run_opts *o, pool__run_end_cb on_end, void *ctx,
                     struct pool__runner **out, struct wp_err *err)
{
    struct pool__runner *r = calloc(1, sizeof(*r));

    if (!r)
        return wp_err_set(err, -ENOMEM, "runner: out of memory");
    r->loop = o->loop;
    r->http = o->http;
    r->pool = o->pool;
    snprintf(r->base, sizeof(r->base), "%s", o->base_url);
    snprintf(r->sid, sizeof(r->sid), "%s", o->session_id);
    snprintf(r->token, sizeof(r->token), "%s", o->token);
    snprintf(r->pool_env, sizeof(r->pool_env), "%s", o->pool_env);
    r->sandbox_lease_ms = o->sandbox_lease_ms;
    r->max_idle_ms = o->max_idle_ms;
    r->send_window_s = 300; /* until a heartbeat tells the lease TTL */
    r->on_end = on_end;
    r->ctx = ctx;
    r->backlog = json_array();
    r->answered = json_object();
    r->verdicts = json_object();
    r->dead_threads = json_object();
    ev_init(&r->reconnect, reconnect_cb);
    r->reconnect.data = r;
    ev_init(&r->idle, idle_cb);
    r->idle.data = r;
    ev_init(&r->renew, renew_cb);
    r->renew.data = r;
    ev_init(&r->sbx_retry, sbx_retry_cb);
    r->sbx_retry.data = r;
    if (!r->backlog || !r->answered || !r->verdicts || !r->dead_threads) {
        r->stopped = true;
        pool__runner_free(r);
        return wp_err_set(err, -ENOMEM, "runner: out of memory");
    }
    *out = r;
    attach(r);
    return 0;
}

void pool__runner_set_send_window(struct pool__runner *r, double seconds)
{
    if (r && seconds > 0)
        r->send_window_s = seconds;
}

void pool__runner_free(struct pool__runner *r)
{
    if (!r)
        return;
    r->stopped = true;
    pool__http_cancel(r->stream);
    pool__http_cancel(r->hist);
    ev_timer_stop(r->loop, &r->reconnect);
    ev_timer_stop(r->loop, &r->idle);
    ev_timer_stop(r->loop, &r->sbx_retry);
    drop_sandbox(r, NULL); /* in-flight calls end; tool_done sees stopped */
    while (r->tools)
        tool_free(r, r->tools);
    wp_sse_parser_free(r->sse);
    json_decref(r->backlog);
    json_decref(r->answered);
    json_decref(r->verdicts);
    json_decref(r->dead_threads);
    explicit_bzero(r->token, sizeof(r->token));
    maybe_free(r);
}
