/* events.c - the session event log: validation of client events, append
 * (one Lua script that also runs the session status machine), and the
 * paginated history. Each session's log is the Redis Stream
 * wp:events:{<session id>}; an event's id is "sevt_" + its stream id and
 * its processed_at is the stream id's millisecond time, so the stream is
 * the only source of truth for both. Stored entries have two fields:
 * t (type) and e (the event JSON without id and processed_at).
 */
#define WP_LOG_COMPONENT "events"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/timeutil.h"
#include "scheduler/sched_int.h"

#include "lua/scheduler/events.h" /* its Lua scripts: lua/scheduler/events/ (Makefile) */

static const char *const block_types_user[] = {"text", "image", "document", "redacted", NULL};
static const char *const block_types_result[] = {"text", "image", "document", "search_result",
                                                 NULL};
static const char *const block_types_text[] = {"text", NULL};

static bool in_list(const char *s, const char *const *l)
{
    for (; s && *l; l++)
        if (!strcmp(s, *l))
            return true;
    return false;
}

static const char *check_blocks(json_t *c, const char *const *allowed, bool required)
{
    size_t i;
    json_t *b;
    if (!c || json_is_null(c))
        return required ? "content is required" : NULL;
    if (!json_is_array(c))
        return "content must be an array of content blocks";
    if (required && json_array_size(c) == 0)
        return "content must not be empty";
    json_array_foreach(c, i, b) {
        const char *ty = json_string_value(json_object_get(b, "type"));
        if (!json_is_object(b) || !in_list(ty, allowed))
            return "content block type is not allowed here";
        if (!strcmp(ty, "text") && !json_is_string(json_object_get(b, "text")))
            return "text blocks need a text string";
        if ((!strcmp(ty, "image") || !strcmp(ty, "document")) &&
            !json_is_object(json_object_get(b, "source")))
            return "image and document blocks need a source object";
    }
    return NULL;
}

static bool opt_string(json_t *e, const char *k)
{
    json_t *v = json_object_get(e, k);
    return !v || json_is_null(v) || json_is_string(v);
}

const char *sched__event_validate(json_t *e, bool initial)
{
    const char *ty = json_string_value(json_object_get(e, "type"));
    if (!json_is_object(e) || !ty)
        return "each event must be an object with a type";
    if (initial && strcmp(ty, "user.message") && strcmp(ty, "user.define_outcome"))
        return "initial_events accepts only user.message and user.define_outcome";
#define ALLOW(...)                                                              \
    do {                                                                        \
        static const char *const f[] = {"type", __VA_ARGS__, NULL};             \
        const char *bad = sched__unknown_field(e, f);                           \
        if (bad)                                                                \
            return "event has a field that is not permitted for its type";      \
    } while (0)
    if (!strcmp(ty, "user.message")) {
        ALLOW("content");
        return check_blocks(json_object_get(e, "content"), block_types_user, true);
    }
    if (!strcmp(ty, "user.interrupt")) {
        ALLOW("session_thread_id");
        return opt_string(e, "session_thread_id") ? NULL : "session_thread_id must be a string";
    }
    if (!strcmp(ty, "user.tool_confirmation")) {
        ALLOW("tool_use_id", "result", "deny_message", "session_thread_id");
        const char *r = json_string_value(json_object_get(e, "result"));
        if (!json_is_string(json_object_get(e, "tool_use_id")))
            return "tool_use_id is required";
        if (!r || (strcmp(r, "allow") && strcmp(r, "deny")))
            return "result must be allow or deny";
        json_t *dm = json_object_get(e, "deny_message");
        if (dm && !json_is_null(dm) && (strcmp(r, "deny") || !json_is_string(dm)))
            return "deny_message is a string and only allowed with deny";
        return NULL;
    }
    if (!strcmp(ty, "user.custom_tool_result") || !strcmp(ty, "user.tool_result")) {
        const char *idk = ty[5] == 'c' ? "custom_tool_use_id" : "tool_use_id";
        ALLOW("custom_tool_use_id", "tool_use_id", "content", "is_error", "session_thread_id");
        if (!json_is_string(json_object_get(e, idk)))
            return ty[5] == 'c' ? "custom_tool_use_id is required" : "tool_use_id is required";
        if (json_object_get(e, ty[5] == 'c' ? "tool_use_id" : "custom_tool_use_id"))
            return "event has a field that is not permitted for its type";
        json_t *ie = json_object_get(e, "is_error");
        if (ie && !json_is_null(ie) && !json_is_boolean(ie))
            return "is_error must be a boolean";
        return check_blocks(json_object_get(e, "content"), block_types_result, false);
    }
    if (!strcmp(ty, "user.define_outcome")) {
        ALLOW("description", "rubric", "max_iterations");
        json_t *rub = json_object_get(e, "rubric");
        const char *rt = json_string_value(json_object_get(rub, "type"));
        json_t *mi = json_object_get(e, "max_iterations");
        if (!json_is_string(json_object_get(e, "description")))
            return "description is required";
        if (!rt || (!strcmp(rt, "text") && !json_is_string(json_object_get(rub, "content"))) ||
            (!strcmp(rt, "file") && !json_is_string(json_object_get(rub, "file_id"))) ||
            (strcmp(rt, "text") && strcmp(rt, "file")))
            return "rubric must be {type: text, content} or {type: file, file_id}";
        if (!strcmp(rt, "text") && json_string_length(json_object_get(rub, "content")) > 262144)
            return "rubric content is too long";
        if (mi && !json_is_null(mi) &&
            (!json_is_integer(mi) || json_integer_value(mi) < 1 || json_integer_value(mi) > 20))
            return "max_iterations must be an integer from 1 to 20";
        return NULL;
    }
    if (!strcmp(ty, "system.message")) {
        ALLOW("content");
        return check_blocks(json_object_get(e, "content"), block_types_text, true);
    }
#undef ALLOW
    return "unknown or server-only event type";
}

/* The echo/stored form of a client event (adds server fields). Owned. */
static json_t *normalize(json_t *e)
{
    json_t *n = json_deep_copy(e);
    const char *ty = json_string_value(json_object_get(n, "type"));
    if (!strcmp(ty, "user.define_outcome")) {
        char oid[64];
        sched__new_id("outc_", oid, sizeof(oid));
        json_object_set_new(n, "outcome_id", json_string(oid));
        if (!json_object_get(n, "max_iterations") ||
            json_is_null(json_object_get(n, "max_iterations")))
            json_object_set_new(n, "max_iterations", json_integer(3));
    }
    return n;
}

void sched__event_splice(struct wp_buf *b, const char *sid, const char *json, size_t len)
{
    sched__event_splice_id(b, sid, NULL, json, len);
}

void sched__event_splice_id(struct wp_buf *b, const char *sid, const char *xid, const char *json,
                            size_t len)
{
    char ts[40];
    uint64_t ms = strtoull(sid, NULL, 10);
    sched__rfc3339(ms, ts, sizeof(ts));
    /* xid: checked by the brain that wrote it (sched__new_id), so no escaping */
    if (xid && *xid && strspn(xid, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == strlen(xid))
        wp_buf_printf(b, "{\"id\":\"%s\",\"processed_at\":\"%s\"", xid, ts);
    else
        wp_buf_printf(b, "{\"id\":\"sevt_%s\",\"processed_at\":\"%s\"", sid, ts);
    if (len > 2)
        wp_buf_append(b, ",", 1);
    if (len >= 1)
        wp_buf_append(b, json + 1, len - 1);
}

int sched__events_prepare(json_t *events, bool initial, int max, json_t **out,
                          const char **msg)
{
    size_t i;
    json_t *e;
    *out = NULL;
    if (!json_is_array(events)) {
        *msg = "events must be an array";
        return -1;
    }
    if (json_array_size(events) == 0 && !initial) {
        *msg = "events must not be empty";
        return -1;
    }
    if ((int)json_array_size(events) > max) {
        *msg = initial ? "at most 50 initial_events" : "too many events in one request";
        return -1;
    }
    json_array_foreach(events, i, e) {
        if ((*msg = sched__event_validate(e, initial)))
            return -1;
        const char *ty = json_string_value(json_object_get(e, "type"));
        if (!strcmp(ty, "system.message")) {
            const char *prev = i ? json_string_value(json_object_get(json_array_get(events, i - 1),
                                                                     "type"))
                                 : NULL;
            if (i + 1 != json_array_size(events) ||
                !in_list(prev, (const char *const[]){"user.message", "user.tool_result",
                                                     "user.custom_tool_result", NULL})) {
                *msg = "system.message must be the last event, right after a user.message or tool result";
                return -1;
            }
        }
    }
    *out = json_array();
    json_array_foreach(events, i, e) json_array_append_new(*out, normalize(e));
    return 0;
}

/* An append of input to a self_hosted session: its reply (without the
 * last element) waits while the session's work item is queued; req is held
 * meanwhile (sched__req_hold). */
struct append_wait {
    struct sched_req *req;
    redisReply *reply; /* owned (freeReplyObject) */
};

static void append_enqueued(void *ctx, redisReply *reply)
{
    struct append_wait *w = ctx;
    struct sched_req *req = w->req;
    if (sched__req_release(req)) {
        if (reply && reply->type != REDIS_REPLY_ERROR)
            req->append_cb(req, w->reply);
        else /* in the log, the worker not told: the same input again tells it */
            sched__respond_error(req, 503, "api_error", NULL,
                                 "the events were appended but the work queue did not answer "
                                 "(%s): send them again",
                                 reply ? reply->str : "connection lost");
    }
    freeReplyObject(w->reply);
    free(w);
}

/* The append's reply ends with the environment whose work queue must see
 * the input ('' for none), taken off before the caller sees it. For a
 * self_hosted session enqueue.lua runs in the environment's slot (a new
 * item only when the session's latest one stopped) before the caller's
 * callback, whether or not the client is still there. A scheduler dying in
 * between leaves the input without a worker and the request unanswered:
 * the same input sent again (or any next input) queues the item, never
 * two. */
static void append_done(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    redisReply *env = reply->type == REDIS_REPLY_ARRAY && reply->elements >= 2
                          ? reply->element[reply->elements - 1] : NULL;
    if (!env) {
        req->append_cb(req, reply);
        return;
    }
    if (env->type != REDIS_REPLY_STRING || env->len == 0) {
        reply->elements--; /* hidden from the caller, freed by hiredis after */
        req->append_cb(req, reply);
        reply->elements++;
        return;
    }
    struct append_wait *w = calloc(1, sizeof(*w));
    if (!w || !(w->reply = wp_redis_reply_copy(reply))) {
        free(w);
        sched__respond_error(req, 500, "api_error", NULL, "out of memory");
        return;
    }
    w->req = req;
    freeReplyObject(w->reply->element[--w->reply->elements]);
    sched__req_hold(req);
    /* the request's deadline, as for its Redis commands (server.c) */
    if (!ev_is_active(&req->timeout)) {
        ev_timer_set(&req->timeout, req->srv->cfg.redis_timeout, 0.);
        ev_timer_start(req->srv->loop, &req->timeout);
    }
    if (sched__work_enqueue_for(req->srv, req->org, env->str, req->append_sid, append_enqueued,
                                w) < 0)
        append_enqueued(w, NULL);
}

/* Append prepared events for session sid; cb gets the script's reply and,
 * when it is no error, calls sched__brain_active_add(sid). */
void sched__events_append(struct sched_req *req, const char *sid, json_t *prepared,
                          wp_redis_cb cb)
{
    char kobj[200], kev[200], klease[200], ms[32], now[40];
    size_t n = json_array_size(prepared), i;
    const char **argv = calloc(8 + 2 * n, sizeof(*argv));
    char **dumps = calloc(n + 1, sizeof(*dumps));
    if (!argv || !dumps) {
        free(argv);
        free(dumps);
        sched__respond_error(req, 500, "api_error", NULL, "out of memory");
        return;
    }
    req->append_cb = cb;
    snprintf(req->append_sid, sizeof(req->append_sid), "%s", sid);
    sched__key_obj(kobj, sizeof(kobj), NULL, sid);
    sched__key_events(kev, sizeof(kev), sid);
    uint64_t t = wp_wall_ms();
    snprintf(ms, sizeof(ms), "%llu", (unsigned long long)t);
    sched__rfc3339(t, now, sizeof(now));
    sched__key_lease(klease, sizeof(klease), sid);
    argv[0] = kobj;
    argv[1] = kev;
    argv[2] = klease;
    argv[3] = req->org;
    argv[4] = ""; /* was a work id: enqueue.lua makes its own now */
    argv[5] = ms;
    argv[6] = now;
    char cap[32];
    snprintf(cap, sizeof(cap), "%ld", req->srv->cfg.session_log_max);
    argv[7] = cap;
    for (i = 0; i < n; i++) {
        json_t *e = json_array_get(prepared, i);
        dumps[i] = json_dumps(e, JSON_COMPACT | JSON_ENSURE_ASCII);
        argv[8 + 2 * i] = json_string_value(json_object_get(e, "type"));
        argv[9 + 2 * i] = dumps[i] ? dumps[i] : "{}";
    }
    if (8 + 2 * n > 250) {
        sched__respond_error(req, 400, "invalid_request_error", NULL, "too many events");
    } else {
        /* The active set's shard is another slot than the session's: the
         * entry goes in before the append (a crash after the append still
         * leaves it for the sweep) and is bumped after it (cb's caller:
         * sched__brain_active_add), so a sweep racing the append keeps it. */
        sched__brain_active_add(req->srv, sid);
        sched__req_script(req, sched__lua_append, append_done, 3, (int)(8 + 2 * n), argv, NULL);
    }
    for (i = 0; i < n; i++)
        free(dumps[i]);
    free(dumps);
    free(argv);
}

/* Answer {"data":[echoes]} from the append reply and req->tmp2 (prepared). */
static void send_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    if (reply->type != REDIS_REPLY_ERROR)
        sched__brain_active_add(req->srv, req->params[0]);
    if (reply->type == REDIS_REPLY_ERROR) {
        if (strstr(reply->str, "NOTFOUND"))
            sched__not_found(req, "No session with id %s", req->params[0]);
        else if (strstr(reply->str, "TERMINATED"))
            sched__bad_request(req, "session %s is terminated or archived and accepts no input",
                               req->params[0]);
        else if (strstr(reply->str, "LOGFULL")) {
            long len = 0, cap = 0;
            sscanf(strstr(reply->str, "LOGFULL") + 7, "%ld %ld", &len, &cap);
            /* Refused whole, never trimmed: the history stays complete. */
            sched__respond_error(req, 400, "invalid_request_error", "session_log_full",
                                 "session %s's event log holds %ld entries and this server "
                                 "keeps at most %ld per session (--session-log-max): archive "
                                 "it and continue in a new session; nothing was appended",
                                 req->params[0], len, cap);
        }
        else
            sched__respond_error(req, 500, "api_error", NULL, "append failed: %s", reply->str);
        return;
    }
    struct wp_buf b;
    wp_buf_init(&b, (size_t)1 << 30);
    wp_buf_append(&b, "{\"data\":[", 9);
    for (size_t i = 0; i + 1 < reply->elements; i++) {
        char *s = json_dumps(json_array_get(req->tmp2, i), JSON_COMPACT | JSON_ENSURE_ASCII);
        if (i)
            wp_buf_append(&b, ",", 1);
        sched__event_splice(&b, reply->element[i]->str, s ? s : "{}", s ? strlen(s) : 2);
        free(s);
    }
    wp_buf_append(&b, "]}", 2);
    sched__respond_raw(req, 200, b.data, b.len);
    wp_buf_free(&b);
}

void sched__h_events_send(struct sched_req *req)
{
    const char *msg = NULL;
    json_t *prepared;
    static const char *const f[] = {"events", NULL};
    if (sched__unknown_field(req->body, f)) {
        sched__bad_request(req, "%s: Extra inputs are not permitted",
                           sched__unknown_field(req->body, f));
        return;
    }
    if (sched__events_prepare(json_object_get(req->body, "events"), false, 100, &prepared,
                              &msg) < 0) {
        sched__bad_request(req, "%s", msg);
        return;
    }
    /* req may be answered (and gone) when the append returns: copy first. */
    struct sched_server *srv = req->srv;
    char sid[128];
    snprintf(sid, sizeof(sid), "%s", req->params[0]);
    req->tmp2 = prepared;
    sched__events_append(req, sid, prepared, send_cb);
    /* Wake the session's brain now, not after the append's reply: its
     * commands go out on the same connection after the append, so Redis
     * runs them after it, and the first model request starts one round
     * trip earlier. (An append that fails leaves a brain that finds
     * nothing to do, or no session, and stops.) */
    sched__brain_kick(srv, sid);
}

/* ---- history ---- */

static void list_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    if (reply->type == REDIS_REPLY_ERROR) {
        if (strstr(reply->str, "NOTFOUND"))
            sched__not_found(req, "No session with id %s", req->params[0]);
        else
            sched__respond_error(req, 500, "api_error", NULL, "list failed: %s", reply->str);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1) {
        sched__respond_error(req, 500, "api_error", NULL, "list failed");
        return;
    }
    struct wp_buf b;
    size_t n = (reply->elements - 1) / 3;
    wp_buf_init(&b, (size_t)1 << 30);
    wp_buf_append(&b, "{\"data\":[", 9);
    for (size_t i = 0; i < n; i++) {
        redisReply *id = reply->element[1 + 3 * i], *x = reply->element[2 + 3 * i],
                   *js = reply->element[3 + 3 * i];
        if (i)
            wp_buf_append(&b, ",", 1);
        sched__event_splice_id(&b, id->str, x->str, js->str, js->len);
    }
    if (reply->element[0]->integer == 1 && n > 0)
        wp_buf_printf(&b, "],\"next_page\":\"page_%s\"}", reply->element[1 + 3 * (n - 1)]->str);
    else
        wp_buf_append(&b, "],\"next_page\":null}", 19);
    sched__respond_raw(req, 200, b.data, b.len);
    wp_buf_free(&b);
}

/* Stream id bound from a created_at filter; exclusive bounds use '('. */
static int ts_bound(struct sched_req *req, const char *key, bool upper, bool exclusive,
                    char *out, size_t cap)
{
    const char *v = sched__query(req, key);
    uint64_t ms;
    if (!v)
        return 0;
    if (sched__parse_rfc3339(v, &ms) < 0) {
        sched__bad_request(req, "%s must be an RFC 3339 timestamp", key);
        return -1;
    }
    if (!upper)
        snprintf(out, cap, "%s%llu-%s", exclusive ? "(" : "", (unsigned long long)ms,
                 exclusive ? "18446744073709551615" : "0");
    else
        snprintf(out, cap, "%s%llu-%s", exclusive ? "(" : "", (unsigned long long)ms,
                 exclusive ? "0" : "18446744073709551615");
    return 1;
}

void sched__h_events_list(struct sched_req *req)
{
    int limit;
    const char *page;
    char kobj[200], kev[200], lo[64] = "-", hi[64] = "+", lim[16], types[1024] = "";
    const char *order = sched__query(req, "order");
    const char *tv[32];
    if (sched__page_params(req, &limit, &page) < 0)
        return;
    if (order && strcmp(order, "asc") && strcmp(order, "desc")) {
        sched__bad_request(req, "order must be asc or desc");
        return;
    }
    bool asc = !order || !strcmp(order, "asc");
    if (ts_bound(req, "created_at[gte]", false, false, lo, sizeof(lo)) < 0 ||
        ts_bound(req, "created_at[gt]", false, true, lo, sizeof(lo)) < 0 ||
        ts_bound(req, "created_at[lte]", true, false, hi, sizeof(hi)) < 0 ||
        ts_bound(req, "created_at[lt]", true, true, hi, sizeof(hi)) < 0)
        return;
    int nt = sched__query_all(req, "types", tv, 32);
    for (int i = 0; i < nt; i++) {
        if (strchr(tv[i], ',') || strlen(types) + strlen(tv[i]) + 2 >= sizeof(types)) {
            sched__bad_request(req, "invalid types filter");
            return;
        }
        if (i)
            strcat(types, ",");
        strcat(types, tv[i]);
    }
    if (page) {
        const char *id = page + 5;
        size_t l = strspn(id, "0123456789-");
        if (l == 0 || id[l] || l > 40) {
            sched__bad_request(req, "invalid page cursor");
            return;
        }
        if (asc)
            snprintf(lo, sizeof(lo), "(%s", id);
        else
            snprintf(hi, sizeof(hi), "(%s", id);
    }
    sched__key_obj(kobj, sizeof(kobj), NULL, req->params[0]);
    sched__key_events(kev, sizeof(kev), req->params[0]);
    snprintf(lim, sizeof(lim), "%d", limit);
    const char *argv[] = {kobj, kev, req->org, lo, hi, lim, asc ? "asc" : "desc", types};
    sched__req_script(req, lua_list, list_cb, 2, 8, argv, NULL);
}
