/* work.c - the self-hosted work queue: /v1/environments/{id}/work/...
 * and warmpool's environment-key issuance (POST /v1/environments/{id}/keys).
 *
 * A work item is a generic object (resources.c; kind "work", scope
 * "<org>:<env>") whose changing fields (state and the five timestamps) are
 * its live fragment, rebuilt by the Lua scripts below. Every key of one
 * environment's queue carries its id as hash tag, so each script here is
 * one slot (Redis Cluster):
 *   wp:wq:{<env>}:item:<id> HASH the work item (object fields, state, hb,
 *                          the timestamps, its session)
 *   wp:wq:{<env>}:<org>:work[:active] ZSET list index, score = seq
 *   wp:wq:{<env>}:seq      the environment's creation sequence
 *   wp:wq:{<env>}:latest   HASH session id -> its latest work item, while
 *                          that item is not stopped (else it is dormant)
 *   wp:wq:{<env>}:queued   ZSET id -> creation seq (FIFO)
 *   wp:wq:{<env>}:pending  ZSET id -> poll time ms (polled, not acked)
 *   wp:wq:{<env>}:leased   ZSET id -> lease expiry ms (acked/heartbeated)
 *   wp:wq:{<env>}:workers  ZSET worker id -> last poll ms
 * A poll first returns expired items to the queue: unacked ones older than
 * reclaim_older_than_ms, and leases not heartbeated within their TTL (the
 * old holder then gets 412 on its next heartbeat). Long polls re-check the
 * queue every 25 ms on the loop, up to block_ms (at most 999 ms).
 * Items are queued when a session is created in a self_hosted environment
 * and when a dormant one (its item stopped) gets input (events.c: the
 * session's append, then enqueue.lua, which queues nothing while the
 * session's latest item is live).
 * Each poll answer carries a fresh sessions token in its secret
 * (work-queue.md 2.1); route.c limits it to the item's session and lease.
 */
#define WP_LOG_COMPONENT "work"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/timeutil.h"
#include "scheduler/sched_int.h"

#define LEASE_TTL_S 90

const struct sched_kind sched__kind_work = {"work", "work_", NULL};

#include "lua/scheduler/work.h" /* its Lua scripts: lua/scheduler/work/ (Makefile) */

static void scope_of(struct sched_req *req, char *out, size_t cap)
{
    snprintf(out, cap, "%s:%s", req->org, req->params[0]);
}

static bool env_allowed(struct sched_req *req)
{
    if (req->env_key[0] && strcmp(req->env_key, req->params[0]) != 0) {
        sched__respond_error(req, 403, "permission_error", NULL,
                             "this environment key belongs to another environment");
        return false;
    }
    return true;
}

static void respond_work(struct sched_req *req, redisReply *json, redisReply *live)
{
    json_t *w = sched__obj_parse(json->str, json->len, live->str ? live->str : "",
                                 live->str ? live->len : 0);
    sched__respond_json(req, 200, w);
}

static bool map_error(struct sched_req *req, redisReply *reply)
{
    if (reply->type != REDIS_REPLY_ERROR)
        return false;
    if (strstr(reply->str, "NOTFOUND"))
        sched__not_found(req, "No work item %s in environment %s", req->params[1], req->params[0]);
    else if (strstr(reply->str, "STOPPED"))
        sched__respond_error(req, 409, "conflict_error", NULL, "work item %s is already stopped",
                             req->params[1]);
    else if (strstr(reply->str, "STATE"))
        sched__respond_error(req, 409, "conflict_error", NULL, "work item %s is not queued (%s)",
                             req->params[1], reply->str);
    else
        sched__respond_error(req, 500, "api_error", NULL, "%s", reply->str);
    return true;
}

/* ---- enqueue (from sessions.c and events.c) ---- */

/* One enqueue.lua call's keys and arguments (every key the environment's). */
struct enq {
    char id[64], now[40], ms[32], scope[200], kobj[200], kq[200], kall[200], kact[200];
    char kseq[200], klatest[200];
    char *js;
    const char *argv[13];
};

static int enq_make(struct enq *q, const char *org, const char *env, const char *session_id)
{
    uint64_t t = wp_wall_ms();
    sched__new_id("work_", q->id, sizeof(q->id));
    sched__rfc3339(t, q->now, sizeof(q->now));
    snprintf(q->ms, sizeof(q->ms), "%llu", (unsigned long long)t);
    snprintf(q->scope, sizeof(q->scope), "%s:%s", org, env);
    json_t *w = json_pack("{s:s,s:s,s:s,s:{s:s,s:s},s:{},s:n,s:s}", "id", q->id, "type", "work",
                          "environment_id", env, "data", "type", "session", "id", session_id,
                          "metadata", "secret", "created_at", q->now);
    q->js = w ? json_dumps(w, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(w);
    if (!q->js)
        return -1;
    sched__key_work(q->kobj, sizeof(q->kobj), env, q->id);
    sched__key_wq(q->kq, sizeof(q->kq), env, "queued");
    sched__key_idx(q->kall, sizeof(q->kall), org, q->scope, &sched__kind_work, false);
    sched__key_idx(q->kact, sizeof(q->kact), org, q->scope, &sched__kind_work, true);
    sched__key_wq(q->kseq, sizeof(q->kseq), env, "seq");
    sched__key_wq(q->klatest, sizeof(q->klatest), env, "latest");
    const char *argv[] = {q->kobj, q->kq, q->kall, q->kact, q->kseq, q->klatest, q->id, org,
                          q->scope, q->js,
                          "\"state\":\"queued\",\"acknowledged_at\":null,\"started_at\":null,"
                          "\"latest_heartbeat_at\":null,\"stop_requested_at\":null,\"stopped_at\":null",
                          q->ms, session_id};
    memcpy(q->argv, argv, sizeof(argv));
    return 0;
}

void sched__work_enqueue(struct sched_req *req, const char *env, const char *session_id,
                         wp_redis_cb cb)
{
    struct enq q;
    if (enq_make(&q, req->org, env, session_id) < 0) {
        sched__respond_error(req, 500, "api_error", NULL, "could not encode a work item");
        return;
    }
    sched__req_script(req, lua_enqueue, cb, 6, 13, q.argv, NULL);
    free(q.js);
}

int sched__work_enqueue_for(struct sched_server *srv, const char *org, const char *env,
                            const char *session_id, wp_redis_cb cb, void *ctx)
{
    struct enq q;
    if (enq_make(&q, org, env, session_id) < 0)
        return -ENOMEM;
    int rc = wp_redis_script(srv->rds, lua_enqueue, cb, ctx, 6, 13, q.argv, NULL);
    free(q.js);
    return rc;
}

/* ---- poll ---- */

static void poll_send(struct sched_req *req);

static void poll_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct sched_req *req = w->data;
    req->pending--; /* the timer held the request like a command */
    if (req->answered || !req->conn) {
        sched__req_finish(req);
        return;
    }
    poll_send(req);
}

static void token_stored_expire(void *ctx, redisReply *reply)
{
    (void)ctx;
    (void)reply;
}

static void token_stored(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    json_t *w = req->tmp2;
    req->tmp2 = NULL;
    if (reply->type == REDIS_REPLY_ERROR) {
        json_decref(w);
        sched__respond_error(req, 500, "api_error", NULL, "%s", reply->str);
        return;
    }
    sched__respond_json(req, 200, w);
}

/* Hand out a polled item with a fresh sessions token in its secret: the
 * worker then uses it, not its environment key, for this item's session
 * and lease calls. Only the token's hash is stored, for a day. */
static void respond_polled(struct sched_req *req, redisReply *json, redisReply *live)
{
    char rnd[64], token[80], hex[65], kk[128], secret[256];
    json_t *w = sched__obj_parse(json->str, json->len, live->str ? live->str : "",
                                 live->str ? live->len : 0);
    const char *sid = json_string_value(json_object_get(json_object_get(w, "data"), "id"));
    const char *wid = json_string_value(json_object_get(w, "id"));
    if (!w || !sid || !wid) {
        json_decref(w);
        sched__respond_error(req, 500, "api_error", NULL, "stored work item is corrupt");
        return;
    }
    sched__new_id("", rnd, sizeof(rnd));
    snprintf(token, sizeof(token), "sk-wp-req-%s", rnd);
    json_t *sj = json_pack("{s:s}", "sessions_token", token);
    char *sjs = json_dumps(sj, JSON_COMPACT);
    json_decref(sj);
    sched__b64url(sjs, strlen(sjs), secret, sizeof(secret));
    free(sjs);
    json_object_set_new(w, "secret", json_string(secret));
    sched__sha256_hex(token, hex);
    snprintf(kk, sizeof(kk), "wp:sesstok:%s", hex);
    req->tmp2 = w;
    const char *argv[] = {"HSET", kk, "org", req->org, "env", req->params[0], "session", sid,
                          "work", wid};
    const char *exp[] = {"EXPIRE", kk, "86400"};
    sched__req_redis(req, token_stored, 10, argv, NULL);
    if (!req->answered)
        sched__req_redis(req, token_stored_expire, 3, exp, NULL);
}

static void poll_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
        respond_polled(req, reply->element[0], reply->element[1]);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        sched__respond_error(req, 500, "api_error", NULL, "%s", reply->str);
        return;
    }
    double waited = wp_now_ms() - req->started_ms;
    if (waited + 25 < req->block_ms) {
        /* Not a Redis command, but it must keep req alive the same way. */
        ev_timer_init(&req->retry, poll_retry_cb, 0.025, 0.);
        req->retry.data = req;
        req->pending++;
        ev_timer_start(req->srv->loop, &req->retry);
        return;
    }
    sched__respond_raw(req, 200, "null", 4); /* empty queue: JSON null */
}

static void poll_send(struct sched_req *req)
{
    char kq[200], kp[200], kl[200], kw[200], now[32], reclaim[32], ipre[200];
    const char *env = req->params[0];
    const char *worker = sched_http_header(req->http, "anthropic-worker-id");
    sched__key_wq(kq, sizeof(kq), env, "queued");
    sched__key_wq(kp, sizeof(kp), env, "pending");
    sched__key_wq(kl, sizeof(kl), env, "leased");
    sched__key_wq(kw, sizeof(kw), env, "workers");
    snprintf(now, sizeof(now), "%llu", (unsigned long long)wp_wall_ms());
    snprintf(reclaim, sizeof(reclaim), "%d", req->reclaim_ms);
    sched__key_work(ipre, sizeof(ipre), env, "");
    const char *argv[] = {kq, kp, kl, kw, now, reclaim, worker ? worker : "", ipre};
    sched__req_script(req, lua_poll, poll_cb, 4, 8, argv, NULL);
}

static long query_int(struct sched_req *req, const char *k, long def, long lo, long hi, bool *bad)
{
    const char *v = sched__query(req, k);
    if (!v)
        return def;
    char *end;
    long n = strtol(v, &end, 10);
    if (!*v || *end || n < lo || n > hi)
        *bad = true;
    return n;
}

void sched__h_work_poll(struct sched_req *req)
{
    bool bad = false;
    if (!env_allowed(req))
        return;
    req->block_ms = (int)query_int(req, "block_ms", 0, 1, 999, &bad);
    req->reclaim_ms = (int)query_int(req, "reclaim_older_than_ms", 5000, 0, 86400000, &bad);
    if (bad) {
        sched__bad_request(req, "block_ms must be 1..999 and reclaim_older_than_ms >= 0");
        return;
    }
    req->started_ms = wp_now_ms();
    poll_send(req);
}

/* ---- ack, heartbeat, stop ---- */

static void ack_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    if (map_error(req, reply))
        return;
    respond_work(req, reply->element[0], reply->element[1]);
}

void sched__h_work_ack(struct sched_req *req)
{
    char kobj[200], kp[200], kl[200], scope[200], now[40], ms[32], ttl[16];
    uint64_t t = wp_wall_ms();
    if (!env_allowed(req))
        return;
    sched__key_work(kobj, sizeof(kobj), req->params[0], req->params[1]);
    sched__key_wq(kp, sizeof(kp), req->params[0], "pending");
    sched__key_wq(kl, sizeof(kl), req->params[0], "leased");
    scope_of(req, scope, sizeof(scope));
    sched__rfc3339(t, now, sizeof(now));
    snprintf(ms, sizeof(ms), "%llu", (unsigned long long)t);
    snprintf(ttl, sizeof(ttl), "%d", LEASE_TTL_S);
    const char *argv[] = {kobj, kp, kl, scope, ms, now, ttl, req->params[1]};
    sched__req_script(req, lua_ack, ack_cb, 3, 8, argv, NULL);
}

static void heartbeat_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    if (map_error(req, reply))
        return;
    redisReply **e = reply->element;
    bool ok = e[0]->integer == 1;
    const char *last = e[1]->str ? e[1]->str : "";
    json_t *st = json_pack("{s:s,s:b,s:s,s:I}", "last_heartbeat", last, "lease_extended",
                           (int)e[2]->integer, "state", e[3]->str ? e[3]->str : "queued",
                           "ttl_seconds", (json_int_t)e[4]->integer);
    if (ok) {
        json_object_set_new(st, "type", json_string("work_heartbeat"));
        sched__respond_json(req, 200, st);
        return;
    }
    if (!last[0])
        json_object_set_new(st, "last_heartbeat", json_null());
    json_t *body = json_pack(
        "{s:s,s:{s:s,s:s,s:{s:s,s:o}},s:s}", "type", "error", "error", "type",
        "invalid_request_error", "message", "heartbeat precondition failed", "details",
        "error_code", "heartbeat_precondition_failed", "current_state", st, "request_id",
        req->request_id);
    sched__respond_json(req, 412, body);
}

void sched__h_work_heartbeat(struct sched_req *req)
{
    char kobj[200], kl[200], scope[200], now[40], ms[32], ttl[16];
    uint64_t t = wp_wall_ms();
    bool bad = false;
    if (!env_allowed(req))
        return;
    const char *exp = sched__query(req, "expected_last_heartbeat");
    const char *dt = sched__query(req, "desired_ttl_seconds");
    long want = LEASE_TTL_S;
    if (dt && *dt) {
        want = (long)strtod(dt, NULL);
        if (want < 5)
            want = 5;
        if (want > 3600)
            want = 3600;
    }
    (void)bad;
    sched__key_work(kobj, sizeof(kobj), req->params[0], req->params[1]);
    sched__key_wq(kl, sizeof(kl), req->params[0], "leased");
    scope_of(req, scope, sizeof(scope));
    sched__rfc3339(t, now, sizeof(now));
    snprintf(ms, sizeof(ms), "%llu", (unsigned long long)t);
    snprintf(ttl, sizeof(ttl), "%ld", want);
    const char *argv[] = {kobj, kl, scope, ms, now, ttl, req->params[1], exp ? exp : "NO_HEARTBEAT"};
    sched__req_script(req, lua_heartbeat, heartbeat_cb, 2, 8, argv, NULL);
}

void sched__h_work_stop(struct sched_req *req)
{
    char kobj[200], kq[200], kp[200], kl[200], klatest[200], scope[200], now[40];
    if (!env_allowed(req))
        return;
    json_t *force = req->body ? json_object_get(req->body, "force") : NULL;
    static const char *const f[] = {"force", NULL};
    if ((req->body && sched__unknown_field(req->body, f)) ||
        (force && !json_is_boolean(force))) {
        sched__bad_request(req, "stop takes {\"force\": boolean}");
        return;
    }
    sched__key_work(kobj, sizeof(kobj), req->params[0], req->params[1]);
    sched__key_wq(kq, sizeof(kq), req->params[0], "queued");
    sched__key_wq(kp, sizeof(kp), req->params[0], "pending");
    sched__key_wq(kl, sizeof(kl), req->params[0], "leased");
    scope_of(req, scope, sizeof(scope));
    sched__rfc3339(wp_wall_ms(), now, sizeof(now));
    sched__key_wq(klatest, sizeof(klatest), req->params[0], "latest");
    const char *argv[] = {kobj, kq, kp, kl, klatest, scope, now,
                          json_is_true(force) ? "1" : "0", req->params[1]};
    sched__req_script(req, lua_stop, ack_cb, 5, 9, argv, NULL);
}

/* ---- list, retrieve, update, stats ---- */

void sched__h_work_list(struct sched_req *req)
{
    char scope[200];
    if (!env_allowed(req))
        return;
    scope_of(req, scope, sizeof(scope));
    sched__obj_list(req, &sched__kind_work, scope, true, false, NULL, false);
}

static void got(struct sched_req *req, json_t *obj, long long rev)
{
    (void)rev;
    sched__respond_json(req, 200, obj);
}

void sched__h_work_get(struct sched_req *req)
{
    char scope[200];
    scope_of(req, scope, sizeof(scope));
    sched__obj_load_scoped(req, &sched__kind_work, req->params[1], scope, got);
}

static void update_loaded(struct sched_req *req, json_t *w, long long rev)
{
    char scope[200];
    json_t *md = json_object_get(req->body, "metadata");
    const char *msg = sched__check_metadata(md, true);
    if (msg) {
        json_decref(w);
        sched__bad_request(req, "%s", msg);
        return;
    }
    sched__apply_metadata_patch(json_object_get(w, "metadata"), md, false);
    /* Only the static part is stored; the live fields stay in the fragment. */
    static const char *const live_keys[] = {"state", "acknowledged_at", "started_at",
                                            "latest_heartbeat_at", "stop_requested_at",
                                            "stopped_at", NULL};
    json_t *resp = json_deep_copy(w);
    for (int i = 0; live_keys[i]; i++)
        json_object_del(w, live_keys[i]);
    json_decref(req->tmp2);
    req->tmp2 = resp;
    scope_of(req, scope, sizeof(scope));
    sched__obj_store(req, &sched__kind_work, scope, w, rev, false, NULL, NULL);
}

static void update_stored(struct sched_req *req, json_t *stored)
{
    json_decref(stored);
    json_t *resp = req->tmp2;
    req->tmp2 = NULL;
    sched__respond_json(req, 200, resp);
}

void sched__h_work_update(struct sched_req *req)
{
    char scope[200];
    static const char *const f[] = {"metadata", NULL};
    if (sched__unknown_field(req->body, f) || !json_is_object(json_object_get(req->body, "metadata"))) {
        sched__bad_request(req, "update takes {\"metadata\": {...}}");
        return;
    }
    scope_of(req, scope, sizeof(scope));
    sched__obj_load_scoped(req, &sched__kind_work, req->params[1], scope, update_loaded);
    req->after = update_stored;
}

static void stats_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    char ts[40];
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4) {
        sched__respond_error(req, 500, "api_error", NULL, "stats failed");
        return;
    }
    redisReply **e = reply->element;
    json_t *s = json_pack("{s:s,s:I,s:I,s:n,s:I}", "type", "work_queue_stats", "depth",
                          (json_int_t)e[0]->integer, "pending", (json_int_t)e[1]->integer,
                          "oldest_queued_at", "workers_polling", (json_int_t)e[3]->integer);
    if (e[2]->str && e[2]->str[0]) {
        sched__rfc3339(strtoull(e[2]->str, NULL, 10), ts, sizeof(ts));
        json_object_set_new(s, "oldest_queued_at", json_string(ts));
    }
    sched__respond_json(req, 200, s);
}

void sched__h_work_stats(struct sched_req *req)
{
    char kq[200], kp[200], kw[200], now[32], ipre[200];
    if (!env_allowed(req))
        return;
    sched__key_wq(kq, sizeof(kq), req->params[0], "queued");
    sched__key_wq(kp, sizeof(kp), req->params[0], "pending");
    sched__key_wq(kw, sizeof(kw), req->params[0], "workers");
    snprintf(now, sizeof(now), "%llu", (unsigned long long)wp_wall_ms());
    sched__key_work(ipre, sizeof(ipre), req->params[0], "");
    const char *argv[] = {kq, kp, kw, now, ipre};
    sched__req_script(req, lua_stats, stats_cb, 3, 5, argv, NULL);
}

/* ---- environment keys (warmpool extension) ---- */

static void key_stored(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    if (reply->type == REDIS_REPLY_ERROR) {
        sched__respond_error(req, 500, "api_error", NULL, "%s", reply->str);
        return;
    }
    json_t *k = req->tmp2;
    req->tmp2 = NULL;
    sched__respond_json(req, 200, k);
}

static void key_env_loaded(struct sched_req *req, json_t *env, long long rev)
{
    (void)rev;
    char key[64], hex[65], kk[128];
    unsigned char h[32];
    const char *ty = json_string_value(json_object_get(json_object_get(env, "config"), "type"));
    bool self_hosted = ty && !strcmp(ty, "self_hosted");
    json_decref(env);
    if (!self_hosted) {
        sched__bad_request(req, "environment keys are only for self_hosted environments");
        return;
    }
    sched__new_id("wpek_", key, sizeof(key));
    sched__sha256(key, strlen(key), h);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", h[i]);
    snprintf(kk, sizeof(kk), "wp:envkey:%s", hex);
    req->tmp2 = json_pack("{s:s,s:s,s:s}", "type", "environment_key", "environment_id",
                          req->params[0], "key", key);
    /* Only the hash is stored; the key is shown this once. */
    const char *argv[] = {"HSET", kk, "org", req->org, "env", req->params[0]};
    sched__req_redis(req, key_stored, 6, argv, NULL);
}

void sched__h_env_key_create(struct sched_req *req)
{
    if (req->env_key[0]) {
        sched__respond_error(req, 403, "permission_error", NULL,
                             "environment keys cannot issue environment keys");
        return;
    }
    sched__obj_load(req, &sched__kind_env, req->params[0], key_env_loaded);
}
