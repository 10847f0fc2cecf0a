/* sse.c - GET /v1/sessions/{id}/events/stream: Server-Sent Events.
 *
 * Each subscriber has its own Redis connection for XREAD BLOCK (a blocked
 * read would stall every command queued behind it on a shared one). The
 * loop is: XREAD COUNT n BLOCK keepalive FROM last_id; write what came;
 * repeat. That one loop both replays (from Last-Event-ID, the resume
 * point) and tails live, so there is no seam where an event could be lost
 * or sent twice. Without Last-Event-ID the stream starts at the log's end
 * as it was when the headers were sent (the SDK reads history itself).
 *
 * Backpressure (style habit 7): above the soft limit of queued output the
 * subscriber stops reading the log until the socket drains; above the
 * hard limit, or over the soft limit for sse_soft_seconds, it is cut off
 * and resumes with Last-Event-ID without losing an event.
 */
#define WP_LOG_COMPONENT "sse"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "scheduler/sched_int.h"

struct sched_sse {
    struct sched_server *srv;
    struct sched_conn *conn; /* NULL once closed */
    struct sched_redis *rd;  /* this subscriber's blocking connection */
    char key[200];
    char last_id[64];
    bool reading;            /* an XREAD is in flight */
    bool in_cb;
    bool closed;
    bool paused;
    int wait_ticks;
    ev_timer start;          /* waits for rd to connect */
    ev_timer slow;           /* over the soft limit for too long */
};

static void next_read(struct sched_sse *s);

static void sse_free(struct sched_sse *s)
{
    ev_timer_stop(s->srv->loop, &s->start);
    ev_timer_stop(s->srv->loop, &s->slow);
    struct sched_redis *rd = s->rd;
    s->rd = NULL;
    sched__redis_free(rd); /* a pending XREAD callback sees closed */
    free(s);
}

void sched__sse_conn_closed(struct sched_sse *s)
{
    s->conn = NULL;
    s->closed = true;
    if (!s->in_cb)
        sse_free(s);
}

static void cut_off(struct sched_sse *s, const char *why)
{
    log_info("sse subscriber cut off key=%s last=%s reason=%s", s->key, s->last_id, why);
    if (s->conn)
        sched__conn_close(s->conn);
}

void sched__sse_conn_drained(struct sched_sse *s)
{
    if (s->paused && !s->closed) {
        s->paused = false;
        ev_timer_stop(s->srv->loop, &s->slow);
        next_read(s);
    }
}

static void slow_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct sched_sse *s = w->data;
    cut_off(s, "slow reader");
}

static int write_event(struct sched_sse *s, const char *id, const char *type, const char *json,
                       size_t len)
{
    struct wp_buf b;
    wp_buf_init(&b, len + 4096);
    wp_buf_printf(&b, "event: %s\nid: sevt_%s\ndata: ", type, id);
    sched__event_splice(&b, id, json, len);
    wp_buf_append(&b, "\n\n", 2);
    int rc = sched__conn_write(s->conn, b.data, b.len);
    wp_buf_free(&b);
    return rc;
}

static void read_cb(void *ctx, redisReply *reply)
{
    struct sched_sse *s = ctx;
    bool ended = false;
    s->reading = false;
    if (s->closed)
        return; /* freed by whoever set closed, after this returns */
    s->in_cb = true;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        static const char msg[] =
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":"
            "\"overloaded_error\",\"message\":\"event log unavailable\"}}\n\n";
        if (s->conn)
            sched__conn_write(s->conn, msg, sizeof(msg) - 1);
        cut_off(s, "redis");
        goto out;
    }
    if (reply->type == REDIS_REPLY_NIL) {
        if (s->conn && sched__conn_write(s->conn, ": keepalive\n\n", 13) < 0)
            cut_off(s, "write");
        goto out;
    }
    /* [[key, [[id, [f, v, f, v]], ...]]] */
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 1) {
        redisReply *entries = reply->element[0]->element[1];
        /* Stop at the soft limit: the rest is read again from last_id once
         * the socket drains, so a batch never overshoots by more than one
         * event and only a reader that does not drain is cut off. */
        for (size_t i = 0; i < entries->elements && s->conn &&
                           sched__conn_queued(s->conn) <= s->srv->cfg.sse_soft_limit;
             i++) {
            redisReply *ent = entries->element[i];
            const char *id = ent->element[0]->str;
            redisReply *f = ent->element[1];
            const char *type = "message", *json = "{}";
            size_t jl = 2;
            for (size_t k = 0; k + 1 < f->elements; k += 2) {
                if (!strcmp(f->element[k]->str, "t"))
                    type = f->element[k + 1]->str;
                else if (!strcmp(f->element[k]->str, "e")) {
                    json = f->element[k + 1]->str;
                    jl = f->element[k + 1]->len;
                }
            }
            if (write_event(s, id, type, json, jl) < 0) {
                cut_off(s, "hard limit");
                break;
            }
            snprintf(s->last_id, sizeof(s->last_id), "%s", id);
            if (!strcmp(type, "session.deleted"))
                ended = true;
        }
    }
    if (s->conn && ended) {
        cut_off(s, "session deleted");
        goto out;
    }
    if (s->conn && sched__conn_queued(s->conn) > s->srv->cfg.sse_hard_limit)
        cut_off(s, "hard limit");
out:
    s->in_cb = false;
    if (s->closed) {
        sse_free(s);
        return;
    }
    next_read(s);
}

static void next_read(struct sched_sse *s)
{
    char block[32];
    if (s->closed || s->reading || !s->conn)
        return;
    if (sched__conn_queued(s->conn) > s->srv->cfg.sse_soft_limit) {
        if (!s->paused) {
            s->paused = true;
            ev_timer_set(&s->slow, s->srv->cfg.sse_soft_seconds, 0.);
            ev_timer_start(s->srv->loop, &s->slow);
        }
        return;
    }
    snprintf(block, sizeof(block), "%d", (int)(s->srv->cfg.sse_keepalive * 1000));
    const char *argv[] = {"XREAD", "COUNT", "100", "BLOCK", block, "STREAMS", s->key, s->last_id};
    if (sched__redis_argv(s->rd, read_cb, s, 8, argv, NULL) < 0) {
        cut_off(s, "redis");
        return;
    }
    s->reading = true;
}

static void start_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct sched_sse *s = w->data;
    if (sched__redis_ready(s->rd)) {
        ev_timer_stop(loop, w);
        next_read(s);
        return;
    }
    if (++s->wait_ticks > 2500) { /* ~5 s */
        ev_timer_stop(loop, w);
        cut_off(s, "redis connect");
    }
}

/* KEYS: session obj, stream. ARGV: org. Returns the log's last id. */
static const char lua_open[] =
    "if redis.call('HGET', KEYS[1], 'org') ~= ARGV[1] then return redis.error_reply('NOTFOUND') end\n"
    "local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)\n"
    "if #last == 0 then return '0-0' end\n"
    "return last[1][1]\n";

static void open_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    struct sched_server *srv = req->srv;
    if (reply->type == REDIS_REPLY_ERROR) {
        if (strstr(reply->str, "NOTFOUND"))
            sched__not_found(req, "No session with id %s", req->params[0]);
        else
            sched__respond_error(req, 500, "api_error", NULL, "%s", reply->str);
        return;
    }
    struct sched_sse *s = calloc(1, sizeof(*s));
    if (!s) {
        sched__respond_error(req, 503, "api_error", NULL, "out of memory");
        return;
    }
    s->srv = srv;
    sched__key_events(s->key, sizeof(s->key), req->params[0]);
    const char *from = req->scratch[0] ? req->scratch : (reply->str ? reply->str : "0-0");
    size_t fl = strlen(from);
    if (fl >= sizeof(s->last_id))
        fl = sizeof(s->last_id) - 1;
    memcpy(s->last_id, from, fl);
    s->last_id[fl] = '\0';
    ev_timer_init(&s->start, start_cb, 0.002, 0.002);
    ev_timer_init(&s->slow, slow_cb, 0., 0.);
    s->start.data = s->slow.data = s;
    s->rd = sched__redis_new(srv->loop, srv->cfg.redis_host, srv->cfg.redis_port, "sse");
    struct sched_conn *c = s->rd ? sched__conn_take_for_sse(req) : NULL;
    if (!c) {
        if (!s->rd)
            sched__respond_error(req, 503, "api_error", NULL, "out of memory");
        sched__redis_free(s->rd);
        free(s);
        return;
    }
    s->conn = c;
    sched__conn_set_sse(c, s);
    log_debug("sse open key=%s from=%s", s->key, s->last_id);
    ev_timer_start(srv->loop, &s->start);
}

void sched__h_events_stream(struct sched_req *req)
{
    char kobj[200], kev[200];
    const char *deltas[4];
    int nd = sched__query_all(req, "event_deltas", deltas, 4);
    for (int i = 0; i < nd; i++) {
        if (strcmp(deltas[i], "agent.message") && strcmp(deltas[i], "agent.thinking")) {
            sched__bad_request(req, "event_deltas accepts agent.message and agent.thinking");
            return;
        }
    }
    /* Resume point: the standard SSE header (the SDK never sends it, but
     * any SSE client does), or ?after=<event id>. */
    const char *from = sched_http_header(req->http, "last-event-id");
    if (!from)
        from = sched__query(req, "after");
    req->scratch[0] = '\0';
    if (from) {
        const char *id = strncmp(from, "sevt_", 5) == 0 ? from + 5 : from;
        size_t l = strspn(id, "0123456789-");
        if (l == 0 || id[l] || l > 40 || !strchr(id, '-')) {
            sched__bad_request(req, "Last-Event-ID is not an event id of this API");
            return;
        }
        snprintf(req->scratch, sizeof(req->scratch), "%s", id);
    }
    sched__key_obj(kobj, sizeof(kobj), req->params[0]);
    sched__key_events(kev, sizeof(kev), req->params[0]);
    const char *argv[] = {kobj, kev, req->org};
    sched__req_script(req, lua_open, open_cb, 2, 3, argv, NULL);
}
