/* brain_tools.c - a session's hands, for its brain: the sandbox is claimed
 * from the pool (in parallel with the first model request), reached
 * through its node's relay and attached with the session's id; built-in
 * tool calls the log lists run in it, in order of arrival, and each ends
 * as an agent.tool_result. A sandbox that cannot come or dies is an error
 * result the model reads; the next call claims another. */
#define WP_LOG_COMPONENT "brain"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agentlink/agentlink.h"
#include "base/log.h"
#include "base/timeutil.h"
#include "pool/pool.h"
#include "scheduler/brain_int.h"
#include "scheduler/metrics.h"
#include "scheduler/sched_int.h"

/* ---- the sandbox ------------------------------------------------------- */


static void save_sandbox(struct brain *b)
{
    char tok[32];
    snprintf(tok, sizeof(tok), "%llu", (unsigned long long)b->claim.token);
    const char *argv[] = { "HSET", b->key_obj, "sbx_sandbox", b->claim.sandbox, "sbx_node",
                           b->claim.node, "sbx_relay", b->claim.relay, "sbx_token", tok,
                           "sbx_tier", b->claim.tier, "sbx_env", b->pool_env, "sbx_rkey",
                           b->claim.rkey };
    wp_redis_argv(b->srv->rds, NULL, NULL, 16, argv, NULL);
}

void sched__brain_sandbox_failed(struct brain *b, const char *fmt, ...)
{
    va_list ap;
    if (b->stopped)
        return;
    va_start(ap, fmt);
    vsnprintf(b->sbx_error, sizeof(b->sbx_error), fmt, ap);
    va_end(ap);
    log_warn("session=%s sandbox: %s", b->sid, b->sbx_error);
    b->sbx = SBX_FAILED;
    if (b->ac) {
        struct alink_client *ac = b->ac;
        b->ac = NULL;
        alink_client_free(ac);
    }
    /* Tools waiting for it fail now: the model sees why. */
    sched__brain_tools_run(b);
}

struct renew_ctx {
    struct brain *b;
    uint64_t token; /* the lease renewed (the brain may have another by the reply) */
};

static void renew_cb(void *ctx, int status, const struct wp_err *err)
{
    struct renew_ctx *rc = ctx;
    struct brain *b = rc->b;
    bool same = b->claim.token == rc->token && b->claim.sandbox[0];
    free(rc);
    b->refs--;
    /* Redis away (WP_ESTATE "redis disconnected") is no answer: the next
     * renewal asks again. LOST, STALE, GONE are the pool's answer. */
    bool refused = status == WP_ESTALE || status == WP_ENOTFOUND ||
                   (status == WP_ESTATE && err && strncmp(err->msg, "LOST", 4) == 0);
    if (!b->stopped && same && refused &&
        (b->sbx == SBX_READY || b->sbx == SBX_LINKING)) {
        sched_metrics_inc(sched__brain_metrics(b), SCHED_CTR_SANDBOX_LOST, NULL);
        sched__brain_sandbox_failed(b, "the sandbox's lease was lost (%s): its node stopped "
                                    "answering the pool", err ? err->msg : "refused");
    }
    sched__brain_maybe_free(b);
}

void sched__brain_sandbox_renew(struct brain *b)
{
    struct renew_ctx *rc = malloc(sizeof(*rc));
    if (!rc)
        return;
    rc->b = b;
    rc->token = b->claim.token;
    if (pool_renew_for(b->srv->pool, b->pool_env, b->claim.sandbox, b->claim.token,
                       b->srv->cfg.sandbox_lease_s * 1e3, renew_cb, rc, NULL) < 0) {
        free(rc); /* Redis away: the next round tries again */
        return;
    }
    b->refs++;
}

static void link_closed(void *ctx, const struct wp_err *err)
{
    struct brain *b = ctx;
    if (b->stopped)
        return;
    sched_metrics_inc(sched__brain_metrics(b), SCHED_CTR_SANDBOX_LOST, NULL);
    sched__brain_sandbox_failed(b, "the sandbox's link closed: %s", err ? err->msg : "");
    sched__brain_maybe_free(b);
}

static void attach_cb(void *ctx, int status, const struct alink_result *res, const struct wp_err *err)
{
    struct brain *b = ctx;
    (void)err;
    if (b->stopped)
        return;
    if (status != 0 || res->is_error) {
        sched__brain_sandbox_failed(b, "attach: %.*s", (int)res->len, res->content);
        sched__brain_maybe_free(b);
        return;
    }
    sched_metrics_observe(sched__brain_metrics(b), SCHED_HIST_SANDBOX_ATTACHED, b->claim.tier, sched__brain_since(b->claim_t0));
    log_info("session=%s sandbox %s attached tier=%s in %.1f ms", b->sid, b->claim.sandbox,
             b->claim.tier, sched__brain_since(b->claim_t0) * 1e3);
    /* The repositories first: the first tool call may need them. */
    if (!sched__brain_repos_clone(b))
        sched__brain_sandbox_ready(b);
    sched__brain_maybe_free(b);
}

void sched__brain_sandbox_ready(struct brain *b)
{
    b->sbx = SBX_READY;
    sched__brain_tools_run(b);
}

static void hello_cb(void *ctx, int status, const struct wp_err *err)
{
    struct brain *b = ctx;
    struct wp_err e2;
    if (b->stopped)
        return;
    if (status != 0)
        sched__brain_sandbox_failed(b, "connect: %s", err ? err->msg : "failed");
    else {
        struct alink_env_var vars[16 + 64];
        struct pool_egress_env pe;
        int n = sched__brain_egress_env(b, b->proxy, vars, sizeof(vars) / sizeof(vars[0]), &pe);
        struct alink_attach a = { .session_id = b->sid, .env = n > 0 ? vars : NULL,
                                  .n_env = (size_t)n };
        if (alink_client_attach(b->ac, &a, attach_cb, b, &e2) < 0)
            sched__brain_sandbox_failed(b, "attach: %s", e2.msg);
    }
    sched__brain_maybe_free(b);
}

static void relay_cb(void *ctx, int status, int fd, const char *proxy, const struct wp_err *err)
{
    struct brain *b = ctx;
    snprintf(b->proxy, sizeof(b->proxy), "%s", status == 0 && proxy ? proxy : "");
    struct alink_client_opts o = { .on_close = link_closed, .close_ctx = b };
    struct wp_err e2;
    b->refs--;
    if (b->stopped) {
        if (status == 0)
            close(fd);
    } else if (status != 0) {
        if (status == WP_ESTALE || status == WP_ENOTFOUND) {
            /* The lease recorded for the session is gone: claim anew. */
            log_info("session=%s recorded sandbox %s is gone; claiming another", b->sid,
                     b->claim.sandbox);
            b->sbx = SBX_NONE;
            memset(&b->claim, 0, sizeof(b->claim));
            sched__brain_claim(b);
        } else {
            sched__brain_sandbox_failed(b, "relay: %s", err ? err->msg : "failed");
        }
    } else if (alink_client_new(b->srv->loop, &o, &b->ac, &e2) < 0 ||
               alink_client_connect_fd(b->ac, fd, hello_cb, b, &e2) < 0) {
        sched__brain_sandbox_failed(b, "connect: %s", e2.msg);
    }
    sched__brain_maybe_free(b);
}

static void connect_link(struct brain *b)
{
    struct wp_err err;
    b->sbx = SBX_LINKING;
    b->repos_cloned = false; /* a clone already there is kept (repos.c) */
    sched__brain_egress_routed(b);
    if (pool_connect_egress(b->srv->loop, &b->claim, b->pool_env, b->egress, relay_cb, b, &err) < 0)
        sched__brain_sandbox_failed(b, "relay: %s", err.msg);
    else
        b->refs++;
}

/* The same sandbox through a new route: the node registers the
 * credentials the route carries now (rotated ones), and the sandbox is
 * attached again (the same placeholders; its repositories are kept). */
void sched__brain_relink(struct brain *b)
{
    if (b->stopped || !b->claim.sandbox[0])
        return;
    if (b->ac) {
        struct alink_client *ac = b->ac;
        b->ac = NULL;
        alink_client_free(ac);
    }
    connect_link(b);
}

static void claim_cb(void *ctx, int status, const struct pool_claim_result *res, const struct wp_err *err)
{
    struct brain *b = ctx;
    b->refs--;
    if (b->stopped) {
        if (status == 0 && b->srv->pool) /* nobody will use it */
            pool_release(b->srv->pool, b->pool_env, res->sandbox, res->token, NULL, NULL, NULL);
    } else if (status != 0) {
        sched__brain_sandbox_failed(b, "no sandbox for environment %s: %s", b->pool_env, err ? err->msg : "claim failed");
    } else {
        b->claim = *res;
        sched_metrics_observe(sched__brain_metrics(b), SCHED_HIST_CLAIM, res->tier, res->ms / 1e3);
        if (res->node_wait_ms > 0)
            sched_metrics_observe(sched__brain_metrics(b), SCHED_HIST_CLAIM_NODE_WAIT, NULL,
                                  res->node_wait_ms / 1e3);
        log_info("session=%s claimed %s tier=%s in %.2f ms (%.1f ms waiting for a node)", b->sid,
                 res->sandbox, res->tier, res->ms, res->node_wait_ms);
        save_sandbox(b);
        connect_link(b);
    }
    sched__brain_maybe_free(b);
}

static void claim_now(struct brain *b)
{
    struct wp_err err;
    if (pool_claim(b->srv->pool, b->pool_env, b->sid, 60, claim_cb, b, &err) < 0)
        sched__brain_sandbox_failed(b, "claim: %s", err.msg);
    else
        b->refs++;
}

/* An operator pool serves only the organizations its policy names
 * (quota.c), checked at each claim so the operator's change applies to
 * sessions already running. */
static void pool_orgs_cb(void *ctx, redisReply *reply)
{
    struct brain *b = ctx;
    b->refs--;
    if (!b->stopped) {
        if (!reply || reply->type == REDIS_REPLY_ERROR)
            sched__brain_sandbox_failed(b, "the pool is not reachable");
        else if (!sched__pool_org_allowed(reply->type == REDIS_REPLY_STRING ? reply->str : NULL,
                                          b->org))
            sched__brain_sandbox_failed(b, "organization %s may not use pool environment %s (the operator "
                              "names the organizations each pool serves)", b->org, b->pool_env);
        else
            claim_now(b);
    }
    sched__brain_maybe_free(b);
}

const char *sched__brain_tier(const struct brain *b)
{
    const char *t = b->claim.tier;
    switch (b->sbx) {
    case SBX_NONE: return "none";
    case SBX_CLAIMING: return "pending";
    case SBX_FAILED: return "failed";
    case SBX_LINKING:
    case SBX_READY:
        /* from the pool (or Redis after a takeover): only the three */
        return !strcmp(t, "hot") || !strcmp(t, "warm") || !strcmp(t, "cold") ? t : "other";
    }
    return "other";
}

void sched__brain_claim(struct brain *b)
{
    if (b->self_hosted || b->sbx == SBX_CLAIMING || b->sbx == SBX_LINKING || b->sbx == SBX_READY)
        return;
    if (!b->srv->pool) { /* Redis away: the claim waits for it (pool_claim) */
        sched__brain_sandbox_failed(b, "the pool is not reachable");
        return;
    }
    b->claim_t0 = wp_now_ns();
    b->sbx = SBX_CLAIMING;
    /* Secrets first: the route to the sandbox carries them. */
    if (sched__brain_egress_load(b))
        return;
    sched__brain_claim_go(b);
}

void sched__brain_claim_go(struct brain *b)
{
    if (b->stopped || b->sbx != SBX_CLAIMING)
        return;
    if (b->claim.sandbox[0]) { /* recorded by an earlier brain of this session */
        connect_link(b);
        return;
    }
    if (!b->pool_env[0]) {
        sched__brain_sandbox_failed(b, "environment %s has no warmpool pool", b->env_id);
    } else if (strncmp(b->pool_env, "env_", 4) == 0) {
        claim_now(b); /* the organization's own environment */
    } else {
        char pol[128];
        snprintf(pol, sizeof(pol), "wp:env:{%s}:policy", b->pool_env);
        const char *argv[] = {"HGET", pol, "orgs"};
        if (wp_redis_argv(b->srv->rds, pool_orgs_cb, b, 3, argv, NULL) < 0)
            sched__brain_sandbox_failed(b, "the pool is not reachable");
        else
            b->refs++;
    }
}

/* ---- tools -------------------------------------------------------------- */

static void tool_result(struct brain *b, struct btool *t, const char *text, size_t len, bool is_error)
{
    for (struct btool **pp = &b->tools; *pp; pp = &(*pp)->next)
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    sched__brain_emit(b, json_pack("{s:s, s:s, s:[{s:s, s:s%}], s:b}", "type", "agent.tool_result", "tool_use_id",
                      t->use_id, "content", "type", "text", "text", text, len, "is_error", is_error),
         NULL);
    json_decref(t->input);
    free(t);
}

static void tool_done(void *ctx, int status, const struct alink_result *res, const struct wp_err *err)
{
    struct btool *t = ctx;
    struct brain *b = t->b;
    (void)err;
    t->call_id = 0;
    if (b->stopped)
        return; /* brain_free frees t */
    sched_metrics_observe(sched__brain_metrics(b), SCHED_HIST_TOOL, t->name, sched__brain_since(t->t0));
    if (status != 0 && b->sbx == SBX_FAILED) {
        /* cut by sched__brain_sandbox_failed: the reason, not the socket's */
        char msg[400];
        int n = snprintf(msg, sizeof(msg), "sandbox lost during the call: %s", b->sbx_error);
        tool_result(b, t, msg, (size_t)(n < (int)sizeof(msg) ? n : (int)sizeof(msg) - 1), true);
    } else
        tool_result(b, t, res->content, res->len, status != 0 || res->is_error);
    if (status != 0 && status != -ECANCELED && status != WP_ETIMEDOUT && b->sbx == SBX_READY &&
        !alink_client_connected(b->ac)) {
        sched_metrics_inc(sched__brain_metrics(b), SCHED_CTR_SANDBOX_LOST, NULL);
        sched__brain_sandbox_failed(b, "the sandbox's link closed during a call");
    }
    sched__brain_step(b);
    sched__brain_maybe_free(b);
}

/* Start the tool calls that can start; fail them when the sandbox cannot
 * come. Called when tools are due and whenever the sandbox changes. */
void sched__brain_tools_run(struct brain *b)
{
    struct wp_err err;
    bool failed_any = false;
    if (b->stopped)
        return;
    for (struct btool *t = b->tools, *next; t; t = next) {
        next = t->next;
        if (t->call_id)
            continue;
        if (b->sbx == SBX_FAILED) {
            char msg[300];
            int n = snprintf(msg, sizeof(msg), "sandbox unavailable: %s", b->sbx_error);
            tool_result(b, t, msg, (size_t)n, true);
            failed_any = true;
            continue;
        }
        if (b->sbx != SBX_READY || !sched__brain_files_ready(b, t->files_due)) {
            t->waited = true;
            continue;
        }
        if (t->waited)
            sched_metrics_observe(sched__brain_metrics(b), SCHED_HIST_TOOL_WAIT, NULL, sched__brain_since(t->t0));
        sched_metrics_inc(sched__brain_metrics(b), SCHED_CTR_TOOL_CALLS, t->name);
        struct alink_call_opts o = { 0 };
        int64_t id = alink_client_call(b->ac, t->name, t->input, &o, tool_done, t, &err);
        if (id < 0) {
            char msg[300];
            int n = snprintf(msg, sizeof(msg), "%s: %s", t->name, err.msg);
            tool_result(b, t, msg, (size_t)n, true);
            failed_any = true;
            continue;
        }
        t->call_id = id;
    }
    if (b->sbx == SBX_READY && !b->tools)
        sched__brain_files_ready(b, 0); /* mount early: the first call then finds them */
    if (b->sbx == SBX_FAILED) {
        /* The next call claims a fresh sandbox. */
        b->sbx = SBX_NONE;
        memset(&b->claim, 0, sizeof(b->claim));
        const char *argv[] = { "HDEL", b->key_obj, "sbx_sandbox", "sbx_token", "sbx_rkey" };
        wp_redis_argv(b->srv->rds, NULL, NULL, 5, argv, NULL);
    }
    if (failed_any)
        sched__brain_step(b);
}

static struct btool *tool_find(struct brain *b, const char *use_id)
{
    for (struct btool *t = b->tools; t; t = t->next)
        if (!strcmp(t->use_id, use_id))
            return t;
    return NULL;
}

void sched__brain_tool_start(struct brain *b, json_t *ev)
{
    const char *id = json_string_value(json_object_get(ev, "id")) ?: "";
    const char *name = json_string_value(json_object_get(ev, "name")) ?: "";
    if (tool_find(b, id))
        return;
    struct btool *t = calloc(1, sizeof(*t));
    if (!t)
        return;
    t->b = b;
    t->t0 = wp_now_ns();
    t->files_due = b->call_t0;
    snprintf(t->use_id, sizeof(t->use_id), "%s", id);
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->input = json_incref(json_object_get(ev, "input"));
    t->next = b->tools;
    b->tools = t;
    bool known = sched__brain_builtin(name);
    if (!known || json_object_get(t->input, "_invalid_input")) {
        char msg[200];
        int n = known ? snprintf(msg, sizeof(msg), "%s: the tool input was not valid JSON", name)
                      : snprintf(msg, sizeof(msg), "%s: no such tool in this sandbox", name);
        tool_result(b, t, msg, (size_t)n, true);
        return;
    }
    if (b->sbx == SBX_NONE)
        sched__brain_claim(b);
}

void sched__brain_tools_cancel(struct brain *b)
{
    while (b->tools) {
        struct btool *t = b->tools;
        if (t->call_id && b->ac) {
            char use[64];
            snprintf(use, sizeof(use), "%s", t->use_id);
            /* tool_done runs at once with -ECANCELED and appends the result */
            alink_client_cancel(b->ac, t->call_id, NULL);
            if (!(t = tool_find(b, use)))
                continue;
            t->call_id = 0;
        }
        tool_result(b, t, "interrupted", 11, true);
    }
}
