/* client.c - claims, releases and renewals for schedulers and tests.
 *
 * A hot claim is one Lua script. On a miss the client picks a live node
 * serving the environment, takes a fencing token and puts a claim on that
 * node's inbox; the node answers on this client's own channel, where one
 * subscribed connection receives the answers of all its claims (matched
 * by request id).
 *
 * An environment no live node serves yet is waited for: one the API just
 * published (nodes learn it within a second or two), or one whose nodes
 * are all down for now (a restart). The claim then retries the pick, with
 * backoff, until its own timeout, and the wait is in the result. One that
 * is neither published nor was ever served fails at once: no node will. */
#define WP_LOG_COMPONENT "pool"
#include "pool/pool_int.h"

#include <errno.h>
#include <ev.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agentlink/agentlink.h"
#include "base/buf.h"

#include "base/err.h"
#include "base/log.h"
#include "base/redis.h"
#include "base/timeutil.h"
#include "snapshot/snapshot.h"

struct claim {
    struct pool_client *c;
    char env[64], session[128], rid[40], node[64];
    char tiers[32]; /* the policy's tiers, passed to the node ("" = all) */
    char rkey[33];  /* the lease's relay key, made here (see pool.h) */
    uint64_t token;
    uint64_t t0;
    bool started;       /* the hot claim was sent (else: Redis was away, retried) */
    uint64_t wait_t0;   /* when it started waiting for a node; 0: not waiting */
    double waited_ms;   /* how long, once a node was found */
    double backoff;     /* seconds until the next pick while waiting */
    char tried[POOL__CLAIM_NODES][64]; /* nodes that answered overloaded */
    int n_tried;
    char overloaded[256]; /* the last one's words */
    pool_claim_cb cb;
    void *ctx;
    ev_timer timer;
    ev_timer retry;     /* the next pick while waiting for a node */
    ev_timer watch;     /* sent to a node: is it still alive? */
    struct claim *next;
};

struct pool_client {
    struct ev_loop *loop;
    struct wp_redis *r, *sub;
    char chan[64];
    struct claim *claims;
    bool subscribed; /* the answer channel was subscribed once already */
};

struct op {
    pool_done_cb cb;
    void *ctx;
};

#include "lua/pool/client.h" /* its Lua scripts: lua/pool/client/ (Makefile) */

/* Claim latency by tier as a histogram of power-of-two microsecond
 * buckets (`pool status` reads p50/p95 from it). */
static void record_latency(struct pool_client *c, const char *env,
                           const struct pool_claim_result *res)
{
    char key[160], bucket[16];
    unsigned long long us = (unsigned long long)(res->ms * 1000) + 1;
    int b = 0;

    while ((1ull << b) < us && b < 40)
        b++;
    snprintf(key, sizeof(key), POOL__K_LAT "%s", env, res->tier);
    snprintf(bucket, sizeof(bucket), "%d", b);
    const char *argv[] = { "HINCRBY", key, bucket, "1" };
    wp_redis_argv(c->r, NULL, NULL, 4, argv, NULL);
}

static void claim_finish(struct claim *cl, int status, const struct pool_claim_result *res,
                         const struct wp_err *err)
{
    struct pool_client *c = cl->c;

    for (struct claim **pp = &c->claims; *pp; pp = &(*pp)->next)
        if (*pp == cl) {
            *pp = cl->next;
            break;
        }
    ev_timer_stop(c->loop, &cl->timer);
    ev_timer_stop(c->loop, &cl->retry);
    ev_timer_stop(c->loop, &cl->watch);
    if (status == 0)
        record_latency(c, cl->env, res);
    cl->cb(cl->ctx, status, res, err);
    free(cl);
}

static void claim_fail(struct claim *cl, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void claim_fail(struct claim *cl, int code, const char *fmt, ...)
{
    struct wp_err err = { .code = code };
    struct pool_claim_result none = { .tier = "" };
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err.msg, sizeof(err.msg), fmt, ap);
    va_end(ap);
    claim_finish(cl, code, &none, &err);
}

static void pick(struct claim *cl);
static void pick_cb(void *ctx, redisReply *reply);

static int claim_hot(struct claim *cl);

static void retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct claim *cl = w->data;
    (void)revents;
    if (cl->started)
        pick(cl);
    else if (claim_hot(cl) < 0) { /* Redis still away (a restart, a failover) */
        ev_timer_set(&cl->retry, 0.25, 0.);
        ev_timer_start(loop, &cl->retry);
    }
}

static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct claim *cl = w->data;
    (void)loop;
    (void)revents;
    if (cl->wait_t0)
        claim_fail(cl, WP_ETIMEDOUT,
                   "claim for environment %s timed out waiting %.1f s for a node to serve it",
                   cl->env, (double)(wp_now_ns() - cl->wait_t0) / 1e9);
    else
        claim_fail(cl, WP_ETIMEDOUT, "claim for environment %s timed out", cl->env);
}

static void new_rid(struct claim *cl)
{
    uint64_t r = 0;
    if (getrandom(&r, sizeof(r), 0) != sizeof(r))
        r = wp_now_ns();
    snprintf(cl->rid, sizeof(cl->rid), "%016llx", (unsigned long long)r);
}

/* The answer channel is subscribed again after a lost connection: a
 * node's answer published meanwhile is gone (pub/sub keeps nothing), so
 * every claim already sent to a node is sent again under a new request id
 * rather than waiting for its timeout. A node that did serve the first
 * request holds a sandbox no one renews: its lease runs out and the node
 * takes it back. */
static void resend(struct claim *cl, const char *why)
{
    log_warn("claim env=%s: %s (node %s): sending it again", cl->env, why, cl->node);
    ev_timer_stop(cl->c->loop, &cl->watch);
    cl->token = 0;
    new_rid(cl);
    pick(cl);
}

static void resubscribed(struct pool_client *c)
{
    struct claim *next;
    for (struct claim *cl = c->claims; cl; cl = next) {
        next = cl->next;
        if (cl->token) /* else not sent yet: its own callbacks go on */
            resend(cl, "the answer channel was lost while a node served it");
    }
}

/* A claim sent to a node that died before answering would wait for its
 * whole timeout: once the node's heartbeat key is gone, it is sent again
 * (the pick skips dead nodes). */
struct alive_ask {
    struct pool_client *c;
    char rid[40]; /* the claim may be done (freed) or resent by the reply */
};

/* (Re)arms the node watch 1 s out. A one-shot libev timer that fired holds
 * ~0 s, so a bare ev_timer_start on it fires at once: that made every
 * waiting claim ask EXISTS in a loop, ~100k/s between the scheduler and
 * Redis while warm claims waited (issue 20's capacity runs). */
static void watch_start(struct claim *cl)
{
    ev_timer_stop(cl->c->loop, &cl->watch);
    ev_timer_set(&cl->watch, 1., 0.);
    ev_timer_start(cl->c->loop, &cl->watch);
}

static void alive_cb(void *ctx, redisReply *reply)
{
    struct alive_ask *a = ctx;
    struct claim *cl = a->c->claims;
    while (cl && strcmp(cl->rid, a->rid) != 0)
        cl = cl->next;
    free(a);
    if (!cl || !cl->token)
        return;
    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 0)
        resend(cl, "the node it was sent to died");
    else
        watch_start(cl);
}

static void watch_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct claim *cl = w->data;
    char alive[160];
    (void)loop;
    (void)revents;
    struct alive_ask *a = malloc(sizeof(*a));
    if (a) {
        a->c = cl->c;
        snprintf(a->rid, sizeof(a->rid), "%s", cl->rid);
        snprintf(alive, sizeof(alive), POOL__K_ALIVE, cl->node);
        const char *argv[] = { "EXISTS", alive };
        if (wp_redis_argv(cl->c->r, alive_cb, a, 2, argv, NULL) == 0)
            return;
        free(a);
    }
    watch_start(cl); /* Redis away: later */
}

static void sub_cb(void *ctx, redisReply *reply)
{
    struct pool_client *c = ctx;
    json_error_t jerr;
    json_t *o;

    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3 && reply->element[0]->type == REDIS_REPLY_STRING &&
        strcmp(reply->element[0]->str, "subscribe") == 0) {
        if (c->subscribed)
            resubscribed(c);
        c->subscribed = true;
        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(reply->element[0]->str, "message") != 0 ||
        reply->element[2]->type != REDIS_REPLY_STRING)
        return;
    o = json_loadb(reply->element[2]->str, reply->element[2]->len, 0, &jerr);
    const char *rid = json_string_value(json_object_get(o, "rid"));
    struct claim *cl = c->claims;
    while (cl && (!rid || strcmp(cl->rid, rid) != 0))
        cl = cl->next;
    if (!cl) {
        json_decref(o); /* a late answer to a claim that timed out */
        return;
    }
    json_t *st = json_object_get(o, "status");
    if (json_is_integer(st) && json_integer_value(st) != 0 && json_is_true(json_object_get(o, "retry"))) {
        /* The node is draining: another node (or this one's successor)
         * serves it; the pick skips draining nodes. */
        log_info("claim env=%s: node %s is draining, picking again", cl->env, cl->node);
        json_decref(o);
        ev_timer_set(&cl->retry, 0.02, 0.);
        ev_timer_start(c->loop, &cl->retry);
        return;
    }
    if (json_is_integer(st) && json_integer_value(st) == WP_EOVERLOADED &&
        cl->n_tried < POOL__CLAIM_NODES) {
        /* Another node may have a restore slot free: the pick skips the
         * ones that said no; none left is the claim's answer. */
        const char *msg = json_string_value(json_object_get(o, "error"));
        snprintf(cl->tried[cl->n_tried++], sizeof(cl->tried[0]), "%s", cl->node);
        snprintf(cl->overloaded, sizeof(cl->overloaded), "%s", msg ? msg : "overloaded");
        log_info("claim env=%s: node %s is overloaded, trying another", cl->env, cl->node);
        json_decref(o);
        pick(cl);
        return;
    }
    if (!json_is_integer(st) || json_integer_value(st) != 0) {
        const char *msg = json_string_value(json_object_get(o, "error"));
        claim_fail(cl, json_is_integer(st) ? (int)json_integer_value(st) : WP_EPROTO,
                   "node could not serve the claim: %s", msg ? msg : "malformed answer");
        json_decref(o);
        return;
    }
    struct pool_claim_result res = { 0 };
    const char *sb = json_string_value(json_object_get(o, "sandbox")),
               *node = json_string_value(json_object_get(o, "node")),
               *root = json_string_value(json_object_get(o, "root")),
               *tier = json_string_value(json_object_get(o, "tier")),
               *relay = json_string_value(json_object_get(o, "relay"));
    json_t *tok = json_object_get(o, "token");
    if (!sb || !node || !root || !tier || !json_is_integer(tok) ||
        (uint64_t)json_integer_value(tok) != cl->token) {
        claim_fail(cl, WP_EPROTO, "malformed answer from node %s", cl->node);
        json_decref(o);
        return;
    }
    snprintf(res.sandbox, sizeof(res.sandbox), "%s", sb);
    snprintf(res.node, sizeof(res.node), "%s", node);
    snprintf(res.root, sizeof(res.root), "%s", root);
    snprintf(res.tier, sizeof(res.tier), "%s", tier);
    snprintf(res.relay, sizeof(res.relay), "%s", relay ? relay : "");
    snprintf(res.rkey, sizeof(res.rkey), "%s", cl->rkey);
    res.token = cl->token;
    res.ms = (double)(wp_now_ns() - cl->t0) / 1e6;
    res.node_wait_ms = cl->waited_ms;
    json_decref(o);
    claim_finish(cl, 0, &res, NULL);
}

static void xadd_cb(void *ctx, redisReply *reply)
{
    struct claim *cl = ctx;
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        claim_fail(cl, WP_ESTATE, "sending the claim to node failed: %s",
                   reply ? reply->str : "redis disconnected");
    else /* wait for the node's answer on our channel, watching the node */
        watch_start(cl);
}

static void fence_cb(void *ctx, redisReply *reply)
{
    struct claim *cl = ctx;
    struct pool_client *c = cl->c;
    char inbox[200], tok[32];

    if (!reply || reply->type != REDIS_REPLY_INTEGER) {
        claim_fail(cl, WP_ESTATE, "fencing token: %s", reply && reply->str ? reply->str : "redis disconnected");
        return;
    }
    cl->token = (uint64_t)reply->integer;
    snprintf(tok, sizeof(tok), "%llu", (unsigned long long)cl->token);
    snprintf(inbox, sizeof(inbox), POOL__K_INBOX "%s", cl->env, cl->node);
    const char *argv[] = { "XADD", inbox, "MAXLEN", "~", "10000", "*", "type", "claim",
                           "session", cl->session, "token", tok, "reply", c->chan, "rid", cl->rid,
                           "tiers", cl->tiers, "rkey", cl->rkey };
    if (wp_redis_argv(c->r, xadd_cb, cl, 20, argv, NULL) < 0)
        claim_fail(cl, WP_ESTATE, "redis not connected");
}

static void pick_cb(void *ctx, redisReply *reply)
{
    struct claim *cl = ctx;
    struct pool_client *c = cl->c;
    char fence[160];

    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        claim_fail(cl, WP_ESTATE, "picking a node: %s", reply ? reply->str : "redis disconnected");
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[0]->type == REDIS_REPLY_INTEGER &&
        reply->element[1]->type == REDIS_REPLY_INTEGER) {
        long long published = reply->element[0]->integer, known = reply->element[1]->integer;
        if (!published && !known) {
            claim_fail(cl, WP_ENOTFOUND,
                       "no node serves environment %s, and none will: it is not published "
                       "(an API environment) and no node was started with it",
                       cl->env);
            return;
        }
        /* Published and not built yet, or its nodes are restarting. */
        if (!cl->wait_t0) {
            cl->wait_t0 = wp_now_ns();
            cl->backoff = 0.02;
            log_info("claim env=%s: waiting for a node to serve it (%s)", cl->env,
                     known ? "its nodes are down" : "just published");
        }
        ev_timer_set(&cl->retry, cl->backoff, 0.);
        ev_timer_start(c->loop, &cl->retry);
        cl->backoff = cl->backoff * 2 > 0.25 ? 0.25 : cl->backoff * 2;
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 1 &&
        reply->element[0]->type == REDIS_REPLY_STRING &&
        !strcmp(reply->element[0]->str, "overloaded")) {
        claim_fail(cl, WP_EOVERLOADED, "all %d live nodes serving %s are overloaded; %s",
                   cl->n_tried, cl->env, cl->overloaded);
        return;
    }
    if (reply->type != REDIS_REPLY_STRING) {
        claim_fail(cl, WP_EPROTO, "picking a node for %s: malformed reply", cl->env);
        return;
    }
    if (cl->wait_t0)
        cl->waited_ms = (double)(wp_now_ns() - cl->wait_t0) / 1e6;
    snprintf(cl->node, sizeof(cl->node), "%s", reply->str);
    snprintf(fence, sizeof(fence), POOL__K_FENCE, cl->env);
    const char *argv[] = { "INCR", fence };
    if (wp_redis_argv(c->r, fence_cb, cl, 2, argv, NULL) < 0)
        claim_fail(cl, WP_ESTATE, "redis not connected");
}

static void hot_cb(void *ctx, redisReply *reply)
{
    struct claim *cl = ctx;

    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        claim_fail(cl, WP_ESTATE, "claim: %s", reply ? reply->str : "redis disconnected");
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 5) {
        struct pool_claim_result res = { 0 };
        for (int i = 0; i < 5; i++)
            if (reply->element[i]->type != REDIS_REPLY_STRING) {
                claim_fail(cl, WP_EPROTO, "malformed sandbox entry in environment %s", cl->env);
                return;
            }
        snprintf(res.sandbox, sizeof(res.sandbox), "%s", reply->element[0]->str);
        snprintf(res.node, sizeof(res.node), "%s", reply->element[1]->str);
        snprintf(res.root, sizeof(res.root), "%s", reply->element[2]->str);
        snprintf(res.tier, sizeof(res.tier), "hot");
        res.token = strtoull(reply->element[3]->str, NULL, 10);
        snprintf(res.relay, sizeof(res.relay), "%s", reply->element[4]->str);
        snprintf(res.rkey, sizeof(res.rkey), "%s", cl->rkey);
        res.ms = (double)(wp_now_ns() - cl->t0) / 1e6;
        claim_finish(cl, 0, &res, NULL);
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 1 &&
        reply->element[0]->type == REDIS_REPLY_STRING)
        snprintf(cl->tiers, sizeof(cl->tiers), "%s", reply->element[0]->str);
    /* Hot tier empty (or off): a node restores (warm) or boots (cold) one. */
    pick(cl);
}

static void pick(struct claim *cl)
{
    char nodes[160], tpl[160], live[160];
    snprintf(nodes, sizeof(nodes), POOL__K_NODES_OF, cl->env);
    snprintf(tpl, sizeof(tpl), POOL__K_TPL, cl->env);
    snprintf(live, sizeof(live), POOL__K_LIVE, cl->env);
    const char *argv[3 + POOL__CLAIM_NODES] = { nodes, tpl, live };
    for (int i = 0; i < cl->n_tried; i++)
        argv[3 + i] = cl->tried[i];
    if (wp_redis_script(cl->c->r, lua_pick_node, pick_cb, cl, 3, 3 + cl->n_tried, argv, NULL) < 0)
        claim_fail(cl, WP_ESTATE, "redis not connected");
}

int pool_client_new(struct ev_loop *loop, const char *host, int port, struct pool_client **out,
                    struct wp_err *err)
{
    struct pool_client *c = calloc(1, sizeof(*c));
    uint64_t r = 0;

    if (!c)
        return wp_err_set(err, -ENOMEM, "out of memory");
    if (getrandom(&r, sizeof(r), 0) != sizeof(r))
        r = wp_now_ns();
    snprintf(c->chan, sizeof(c->chan), "wp:client:%016llx", (unsigned long long)r);
    c->loop = loop;
    c->r = wp_redis_new(loop, host, port, "pool");
    c->sub = wp_redis_new(loop, host, port, "pool-replies");
    if (!c->r || !c->sub || wp_redis_subscribe(c->sub, c->chan, sub_cb, c) < 0) {
        pool_client_free(c);
        return wp_err_set(err, -ENOMEM, "out of memory");
    }
    *out = c;
    return 0;
}

void pool_client_free(struct pool_client *c)
{
    if (!c)
        return;
    /* The connections first: a claim with a command in flight is that
     * command's callback context, and its NULL reply (given during the
     * free) fails the claim. Failing claims first freed them under those
     * callbacks (ASan: pick_cb after a scheduler's shutdown). Handles are
     * detached first, so a callback sends nothing on a freed one. */
    struct wp_redis *r = c->r, *sub = c->sub;
    c->r = c->sub = NULL;
    wp_redis_free(r);
    wp_redis_free(sub);
    while (c->claims) /* the rest: waiting on timers or an answer */
        claim_fail(c->claims, -ECANCELED, "client closed");
    free(c);
}

bool pool_client_ready(const struct pool_client *c)
{
    return wp_redis_ready(c->r) && wp_redis_ready(c->sub);
}

/* The first step: the hot tier, one script. */
static int claim_hot(struct claim *cl)
{
    char hot[160], fence[160], stats[160], policy[160], sbp[160], inbox[160], now[32], lease[32];
    const char *env = cl->env;
    snprintf(hot, sizeof(hot), POOL__K_HOT, env);
    snprintf(fence, sizeof(fence), POOL__K_FENCE, env);
    snprintf(stats, sizeof(stats), POOL__K_STATS, env);
    snprintf(policy, sizeof(policy), POOL__K_POLICY, env);
    snprintf(sbp, sizeof(sbp), POOL__K_SB, env);
    snprintf(inbox, sizeof(inbox), POOL__K_INBOX, env);
    snprintf(now, sizeof(now), "%llu", (unsigned long long)wp_wall_ms());
    snprintf(lease, sizeof(lease), "60000");
    const char *argv[] = { hot, fence, stats, policy, sbp, cl->session, now, lease, inbox, cl->rkey };
    if (!pool_client_ready(cl->c) ||
        wp_redis_script(cl->c->r, pool__lua_claim_hot, hot_cb, cl, 4, 10, argv, NULL) < 0)
        return -1;
    cl->started = true;
    return 0;
}

int pool_claim(struct pool_client *c, const char *env, const char *session, double timeout_s,
               pool_claim_cb cb, void *ctx, struct wp_err *err)
{
    struct claim *cl;

    if (!snap_name_valid(env))
        return wp_err_set(err, WP_EINVAL_INPUT, "bad environment name \"%s\"", env ? env : "");
    if (!session || !*session || strlen(session) >= sizeof(cl->session))
        return wp_err_set(err, WP_EINVAL_INPUT, "session id must be 1-127 bytes");
    cl = calloc(1, sizeof(*cl));
    if (!cl)
        return wp_err_set(err, -ENOMEM, "out of memory");
    cl->c = c;
    cl->cb = cb;
    cl->ctx = ctx;
    cl->t0 = wp_now_ns();
    snprintf(cl->env, sizeof(cl->env), "%s", env);
    snprintf(cl->session, sizeof(cl->session), "%s", session);
    new_rid(cl);
    unsigned char kb[16];
    if (getrandom(kb, sizeof(kb), 0) != sizeof(kb)) {
        free(cl);
        return wp_err_set(err, -EIO, "no randomness for a relay key");
    }
    for (int i = 0; i < 16; i++)
        snprintf(cl->rkey + 2 * i, 3, "%02x", kb[i]);
    ev_timer_init(&cl->timer, timeout_cb, timeout_s > 0 ? timeout_s : 30, 0.);
    cl->timer.data = cl;
    ev_timer_init(&cl->retry, retry_cb, 1., 0.);
    cl->retry.data = cl;
    ev_timer_init(&cl->watch, watch_cb, 1., 0.);
    cl->watch.data = cl;
    /* Redis away (restarting, failing over): the claim waits for it, within
     * its timeout, instead of failing at once. */
    if (claim_hot(cl) < 0) {
        ev_timer_set(&cl->retry, 0.25, 0.);
        ev_timer_start(c->loop, &cl->retry);
    }
    ev_timer_start(c->loop, &cl->timer);
    cl->next = c->claims;
    c->claims = cl;
    return 0;
}

static void op_cb(void *ctx, redisReply *reply)
{
    struct op *op = ctx;
    struct wp_err err = { 0 };
    int rc = 0;

    if (!reply)
        rc = wp_err_set(&err, WP_ESTATE, "redis disconnected");
    else if (reply->type == REDIS_REPLY_ERROR) {
        if (strncmp(reply->str, "STALE", 5) == 0)
            rc = wp_err_set(&err, WP_ESTALE, "%s", reply->str);
        else if (strncmp(reply->str, "GONE", 4) == 0)
            rc = wp_err_set(&err, WP_ENOTFOUND, "%s", reply->str);
        else if (strncmp(reply->str, "LOST", 4) == 0)
            rc = wp_err_set(&err, WP_ESTATE, "%s", reply->str);
        else
            rc = wp_err_set(&err, WP_EPROTO, "%s", reply->str);
    }
    if (op->cb)
        op->cb(op->ctx, rc, rc < 0 ? &err : NULL);
    free(op);
}

static int sb_op(struct pool_client *c, const char *script, const char *env, const char *sandbox,
                 uint64_t token, double lease_ms, pool_done_cb cb, void *ctx, struct wp_err *err)
{
    char key[256], tok[32], inbox[160], now[32], lease[32];
    struct op *op;

    if (!snap_name_valid(env) || !snap_name_valid(sandbox))
        return wp_err_set(err, WP_EINVAL_INPUT, "bad environment or sandbox name");
    op = malloc(sizeof(*op));
    if (!op)
        return wp_err_set(err, -ENOMEM, "out of memory");
    op->cb = cb;
    op->ctx = ctx;
    snprintf(key, sizeof(key), POOL__K_SB "%s", env, sandbox);
    snprintf(tok, sizeof(tok), "%llu", (unsigned long long)token);
    snprintf(inbox, sizeof(inbox), POOL__K_INBOX, env);
    snprintf(now, sizeof(now), "%llu", (unsigned long long)wp_wall_ms());
    int rc;
    if (script == pool__lua_release) {
        const char *argv[] = { key, tok, inbox, sandbox };
        rc = wp_redis_script(c->r, script, op_cb, op, 1, 4, argv, NULL);
    } else {
        snprintf(lease, sizeof(lease), "%.0f", lease_ms);
        const char *argv[] = { key, tok, now, lease };
        rc = wp_redis_script(c->r, script, op_cb, op, 1, 4, argv, NULL);
    }
    if (rc < 0) {
        free(op);
        return wp_err_set(err, WP_ESTATE, "not connected to Redis");
    }
    return 0;
}

int pool_release(struct pool_client *c, const char *env, const char *sandbox, uint64_t token,
                 pool_done_cb cb, void *ctx, struct wp_err *err)
{
    return sb_op(c, pool__lua_release, env, sandbox, token, 0, cb, ctx, err);
}

int pool_renew(struct pool_client *c, const char *env, const char *sandbox, uint64_t token,
               pool_done_cb cb, void *ctx, struct wp_err *err)
{
    return pool_renew_for(c, env, sandbox, token, 60000, cb, ctx, err);
}

int pool_renew_for(struct pool_client *c, const char *env, const char *sandbox, uint64_t token,
                   double lease_ms, pool_done_cb cb, void *ctx, struct wp_err *err)
{
    if (!(lease_ms >= 1000 && lease_ms <= 86400000))
        return wp_err_set(err, WP_EINVAL_INPUT, "lease must be 1 s .. 1 day");
    return sb_op(c, pool__lua_renew, env, sandbox, token, lease_ms, cb, ctx, err);
}

static void draining_cb(void *ctx, redisReply *reply)
{
    struct op *op = ctx;
    struct wp_err err = { 0 };
    int rc = reply && reply->type == REDIS_REPLY_INTEGER ? reply->integer != 0
             : wp_err_set(&err, WP_ESTATE, "%s", reply && reply->str ? reply->str : "redis disconnected");
    if (op->cb)
        op->cb(op->ctx, rc, rc < 0 ? &err : NULL);
    free(op);
}

int pool_node_draining(struct pool_client *c, const char *node, pool_done_cb cb, void *ctx,
                       struct wp_err *err)
{
    char key[160];
    struct op *op;

    if (!snap_name_valid(node))
        return wp_err_set(err, WP_EINVAL_INPUT, "bad node name");
    op = malloc(sizeof(*op));
    if (!op)
        return wp_err_set(err, -ENOMEM, "out of memory");
    op->cb = cb;
    op->ctx = ctx;
    snprintf(key, sizeof(key), POOL__K_DRAIN, node);
    const char *argv[] = { "EXISTS", key };
    if (wp_redis_argv(c->r, draining_cb, op, 2, argv, NULL) < 0) {
        free(op);
        return wp_err_set(err, WP_ESTATE, "not connected to Redis");
    }
    return 0;
}

/* ---- connecting through a node's relay --------------------------------- */

struct conn {
    struct ev_loop *loop;
    ev_io io;
    ev_timer timer;
    struct wp_buf buf; /* the route frame out, then the answer in */
    bool sent;
    bool pipe;         /* pipelined route: done once it is sent (pool_connect_pipe) */
    pool_connect_cb cb;
    pool_connect_egress_cb ecb;
    void *ctx;
    struct pool__tls_pump *pump; /* beyond loopback: the TLS end of io's fd */
    char tls_why[200];           /* why its handshake failed */
};

static void conn_tls_failed(void *ctx, const char *why)
{
    struct conn *k = ctx;
    if (why)
        snprintf(k->tls_why, sizeof(k->tls_why), "%s", why);
    k->pump = NULL; /* it is gone */
}

static void conn_done(struct conn *k, int status, const char *proxy, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void conn_done(struct conn *k, int status, const char *proxy, const char *fmt, ...)
{
    struct wp_err err = { .code = status };
    int fd = k->io.fd;
    va_list ap;

    ev_io_stop(k->loop, &k->io);
    ev_timer_stop(k->loop, &k->timer);
    if (k->buf.data) /* the route frame may have held secrets */
        OPENSSL_cleanse(k->buf.data, k->buf.cap);
    wp_buf_free(&k->buf);
    pool__tls_pump_detach(k->pump);
    if (status < 0 && k->tls_why[0]) {
        snprintf(err.msg, sizeof(err.msg), "relay TLS: %s", k->tls_why);
        close(fd);
        fd = -1;
    } else if (status < 0) {
        va_start(ap, fmt);
        vsnprintf(err.msg, sizeof(err.msg), fmt, ap);
        va_end(ap);
        close(fd);
        fd = -1;
    }
    if (k->ecb)
        k->ecb(k->ctx, status, fd, proxy ? proxy : "", status < 0 ? &err : NULL);
    else
        k->cb(k->ctx, status, fd, status < 0 ? &err : NULL);
    free(k);
}

static void conn_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    conn_done(w->data, WP_ETIMEDOUT, NULL, "relay did not answer in time");
}

static void conn_io(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *k = w->data;
    (void)loop;

    if (!k->sent && (revents & EV_WRITE)) {
        int soerr = 0;
        socklen_t l = sizeof(soerr);
        getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &soerr, &l);
        if (soerr) {
            conn_done(k, -soerr, NULL, "connect to relay: %s", strerror(soerr));
            return;
        }
        /* A frame with credentials can be larger than one send takes
         * (up to POOL__ROUTE_MAX): the rest on the next EV_WRITE. */
        ssize_t n = send(w->fd, k->buf.data, k->buf.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            conn_done(k, -EIO, NULL, "sending the route frame failed: %s",
                      n < 0 ? strerror(errno) : "closed");
            return;
        }
        OPENSSL_cleanse(k->buf.data, (size_t)n);
        wp_buf_consume(&k->buf, (size_t)n);
        if (k->buf.len)
            return;
        k->sent = true;
        wp_buf_reset(&k->buf);
        if (k->pipe) { /* the answer, if any, is the agentlink client's to read */
            conn_done(k, 0, NULL, "ok");
            return;
        }
        ev_io_stop(k->loop, w);
        ev_io_set(w, w->fd, EV_READ);
        ev_io_start(k->loop, w);
        return;
    }
    if (!(revents & EV_READ))
        return;
    /* Read exactly the answer frame, header first: nothing of the hands'
     * may be consumed here. */
    size_t want = ALINK_FRAME_HDR;
    if (k->buf.len >= ALINK_FRAME_HDR) {
        const uint8_t *h = (const uint8_t *)k->buf.data;
        uint32_t plen = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
        if (plen > 4096) {
            conn_done(k, WP_EPROTO, NULL, "relay answer too large");
            return;
        }
        want = ALINK_FRAME_HDR + plen;
    }
    char tmp[4096 + ALINK_FRAME_HDR];
    ssize_t n = recv(w->fd, tmp, want - k->buf.len, 0);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        conn_done(k, n == 0 ? -ECONNRESET : -errno, NULL, "relay closed before answering");
        return;
    }
    wp_buf_append(&k->buf, tmp, (size_t)n);
    const uint8_t *payload;
    size_t plen;
    int r = alink_frame_decode((const uint8_t *)k->buf.data, k->buf.len, 4096, &payload, &plen);
    if (r == 0)
        return;
    if (r < 0) {
        conn_done(k, WP_EPROTO, NULL, "relay answered with a bad frame");
        return;
    }
    json_t *o = json_loadb((const char *)payload, plen, 0, NULL);
    const char *t = json_string_value(json_object_get(o, "t"));
    if (t && strcmp(t, "route") == 0 && json_is_true(json_object_get(o, "ok"))) {
        const char *proxy = json_string_value(json_object_get(o, "proxy"));
        char px[64];
        /* Only a "host:port" the node names: it goes into the sandbox's
         * environment. */
        snprintf(px, sizeof(px), "%s", proxy && strlen(proxy) < sizeof(px) &&
                                           strspn(proxy, "0123456789.:") == strlen(proxy) ? proxy : "");
        json_decref(o);
        conn_done(k, 0, px, "ok");
        return;
    }
    const char *code = json_string_value(json_object_get(o, "code"));
    const char *msg = json_string_value(json_object_get(o, "message"));
    int status = code && strcmp(code, "stale_token") == 0 ? WP_ESTALE
                 : code && strcmp(code, "not_found") == 0 ? WP_ENOTFOUND
                 : code && strcmp(code, "egress_failed") == 0 ? WP_ECONFIG
                                                              : WP_EPROTO;
    char text[200];
    snprintf(text, sizeof(text), "%s", msg ? msg : "refused");
    json_decref(o);
    conn_done(k, status, NULL, "relay refused: %s", text);
}

static int connect_start(struct ev_loop *loop, const struct pool_claim_result *res,
                         const char *env, const json_t *egress, bool pipe, pool_connect_cb cb,
                         pool_connect_egress_cb ecb, void *ctx, struct wp_err *err)
{
    struct sockaddr_in sa = { .sin_family = AF_INET };
    char host[64], tok[32];
    const char *colon = strrchr(res->relay, ':');
    struct conn *k;
    int fd;

    if (!colon || (size_t)(colon - res->relay) >= sizeof(host))
        return wp_err_set(err, WP_EINVAL_INPUT, "no relay address for sandbox %s", res->sandbox);
    snprintf(host, sizeof(host), "%.*s", (int)(colon - res->relay), res->relay);
    sa.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return wp_err_set(err, WP_EINVAL_INPUT, "bad relay address %s", res->relay);
    int tls = pool__relay_tls_wanted(host, err);
    if (tls < 0)
        return tls;
    k = calloc(1, sizeof(*k));
    if (!k)
        return wp_err_set(err, -ENOMEM, "out of memory");
    wp_buf_init(&k->buf, POOL__ROUTE_MAX + ALINK_FRAME_HDR);
    snprintf(tok, sizeof(tok), "%llu", (unsigned long long)res->token);
    json_t *route = json_pack("{s:s, s:s, s:s, s:s, s:s}", "t", "route", "env", env, "sandbox",
                              res->sandbox, "token", tok, "key", res->rkey);
    if (route && egress)
        json_object_set(route, "egress", (json_t *)egress);
    /* Beyond loopback the TLS handshake comes first anyway, and its
     * failure is said best by the answer's wait: not pipelined. */
    pipe = pipe && !egress && !tls;
    if (route && pipe)
        json_object_set_new(route, "pipe", json_true());
    int rc = alink_frame_encode(&k->buf, route, POOL__ROUTE_MAX, err);
    json_decref(route);
    fd = rc < 0 ? -1 : socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS)) {
        rc = rc < 0 ? rc : wp_err_errno(err, "connect to relay %s", res->relay);
        if (fd >= 0)
            close(fd);
        wp_buf_free(&k->buf);
        free(k);
        return rc;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* Beyond loopback: the route frame and everything after it go through
     * the TLS pump; io below watches the pump's plain end. */
    if (tls && (rc = pool__tls_pump_new(loop, fd, false, host, conn_tls_failed, k, &fd, &k->pump,
                                        err)) < 0) {
        close(fd);
        wp_buf_free(&k->buf);
        free(k);
        return rc;
    }
    k->loop = loop;
    k->pipe = pipe;
    k->cb = cb;
    k->ecb = ecb;
    k->ctx = ctx;
    ev_io_init(&k->io, conn_io, fd, EV_WRITE);
    k->io.data = k;
    ev_io_start(loop, &k->io);
    ev_timer_init(&k->timer, conn_timeout, 5.0, 0.);
    k->timer.data = k;
    ev_timer_start(loop, &k->timer);
    return 0;
}

int pool_connect(struct ev_loop *loop, const struct pool_claim_result *res, const char *env,
                 pool_connect_cb cb, void *ctx, struct wp_err *err)
{
    return connect_start(loop, res, env, NULL, false, cb, NULL, ctx, err);
}

int pool_connect_pipe(struct ev_loop *loop, const struct pool_claim_result *res, const char *env,
                      pool_connect_cb cb, void *ctx, struct wp_err *err)
{
    return connect_start(loop, res, env, NULL, true, cb, NULL, ctx, err);
}

int pool_connect_egress(struct ev_loop *loop, const struct pool_claim_result *res,
                        const char *env, const json_t *egress, pool_connect_egress_cb cb,
                        void *ctx, struct wp_err *err)
{
    return connect_start(loop, res, env, egress, false, NULL, cb, ctx, err);
}
