/* sse.c - GET /v1/sessions/{id}/events/stream: Server-Sent Events.
 *
 * Two phases per subscriber, so that the live tail costs one Redis
 * connection and one XREAD per session and process, however many
 * subscribers there are:
 *
 * - catch-up: non-blocking XREAD COUNT 100 from the subscriber's own
 *   last id on the shared command connection, until the log has nothing
 *   newer. A resume (Last-Event-ID) replays this way.
 * - live: the subscriber joins the session's hub (struct sched_hub), which
 *   loops XREAD BLOCK <keepalive> from its own position on its own Redis
 *   connection and hands each batch to every member. A member takes only
 *   ids above its own last id, and joins only if the hub has not read past
 *   it (otherwise it catches up again first), so no event is lost or sent
 *   twice at the seam. A timeout writes a keepalive comment to members.
 *
 * Without a resume point a stream starts at the log's end as it was when
 * the headers were sent (the SDK reads history itself, events.md 14).
 *
 * Backpressure (style habit 7): a member whose queued output passes the
 * soft limit leaves the hub and waits for its socket to drain, then
 * catches up on its own; over the soft limit for sse_soft_seconds, or over
 * the hard limit, it is cut off and resumes with Last-Event-ID.
 *
 * Freeing: a subscriber or hub is never freed inside a callback that still
 * uses it (in_cb / busy flags); the last step of that callback frees it.
 */
#define WP_LOG_COMPONENT "sse"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "scheduler/sched_int.h"

struct sched_hub {
    struct sched_server *srv;
    char key[200];
    char last_id[64];          /* the hub has read everything up to here */
    struct wp_redis *rd;    /* blocking reads only */
    struct sched_sse *members;
    bool reading, in_cb, dead;
    int wait_ticks;
    ev_timer start;            /* waits for rd to connect */
    struct sched_hub *next, *prev;
};

struct sched_sse {
    struct sched_server *srv;
    struct sched_conn *conn;   /* NULL once closed */
    struct sched_hub *hub;     /* non-NULL while live */
    struct sched_sse *hnext, *hprev;
    char key[200];
    char last_id[64];          /* last event written to this client */
    bool catching;             /* a catch-up XREAD is in flight */
    bool deltas_msg, deltas_thinking; /* event_deltas[] asked for these previews */
    bool in_cb;
    bool closed;
    bool paused;
    ev_timer slow;
};

static void catch_up(struct sched_sse *s);
static void hub_read(struct sched_hub *h);

/* Stream ids "ms-seq" compared as numbers. */
static int id_cmp(const char *a, const char *b)
{
    uint64_t am = 0, as = 0, bm = 0, bs = 0;
    sscanf(a, "%" SCNu64 "-%" SCNu64, &am, &as);
    sscanf(b, "%" SCNu64 "-%" SCNu64, &bm, &bs);
    if (am != bm)
        return am < bm ? -1 : 1;
    if (as != bs)
        return as < bs ? -1 : 1;
    return 0;
}

static void set_id(char *dst, size_t cap, const char *src)
{
    size_t l = strlen(src);
    if (l >= cap)
        l = cap - 1;
    memcpy(dst, src, l);
    dst[l] = '\0';
}

/* ---- hubs ---- */

static void hub_free_now(struct sched_hub *h)
{
    struct wp_redis *rd = h->rd;
    h->rd = NULL;
    ev_timer_stop(h->srv->loop, &h->start);
    wp_redis_free(rd); /* a pending XREAD callback sees dead */
    free(h);
}

/* Unlink and free (or, inside its own callback, mark for freeing). */
static void hub_destroy(struct sched_hub *h)
{
    struct sched_server *srv = h->srv;
    if (h->dead)
        return;
    h->dead = true;
    if (h->prev)
        h->prev->next = h->next;
    else
        srv->hubs = h->next;
    if (h->next)
        h->next->prev = h->prev;
    if (!h->in_cb)
        hub_free_now(h);
}

static void hub_remove(struct sched_sse *s)
{
    struct sched_hub *h = s->hub;
    if (!h)
        return;
    if (s->hprev)
        s->hprev->hnext = s->hnext;
    else
        h->members = s->hnext;
    if (s->hnext)
        s->hnext->hprev = s->hprev;
    s->hnext = s->hprev = NULL;
    s->hub = NULL;
    if (!h->members)
        hub_destroy(h);
}

static void hub_add(struct sched_hub *h, struct sched_sse *s)
{
    s->hub = h;
    s->hprev = NULL;
    s->hnext = h->members;
    if (h->members)
        h->members->hprev = s;
    h->members = s;
}

/* ---- subscribers ---- */

static void sse_free(struct sched_sse *s)
{
    ev_timer_stop(s->srv->loop, &s->slow);
    free(s);
}

void sched__sse_conn_closed(struct sched_sse *s)
{
    s->conn = NULL;
    s->closed = true;
    hub_remove(s);
    if (!s->in_cb && !s->catching)
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
        catch_up(s);
    }
}

static void slow_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    cut_off(w->data, "slow reader");
}

/* Over the soft limit: leave the hub and wait for the socket to drain. */
static bool maybe_pause(struct sched_sse *s)
{
    if (!s->conn || sched__conn_queued(s->conn) <= s->srv->cfg.sse_soft_limit)
        return false;
    if (sched__conn_queued(s->conn) > s->srv->cfg.sse_hard_limit) {
        cut_off(s, "hard limit");
        return true;
    }
    hub_remove(s);
    if (!s->paused) {
        s->paused = true;
        ev_timer_set(&s->slow, s->srv->cfg.sse_soft_seconds, 0.);
        ev_timer_start(s->srv->loop, &s->slow);
    }
    return true;
}

/* Write the entries of an XREAD reply above s->last_id, up to the soft
 * limit. Returns true if a session.deleted was written. */
static bool deliver(struct sched_sse *s, redisReply *entries)
{
    bool ended = false;
    for (size_t i = 0; i < entries->elements && s->conn && !ended; i++) {
        if (sched__conn_queued(s->conn) > s->srv->cfg.sse_soft_limit)
            break; /* the rest is read again from last_id */
        redisReply *ent = entries->element[i];
        const char *id = ent->element[0]->str;
        if (id_cmp(id, s->last_id) <= 0)
            continue;
        redisReply *f = ent->element[1];
        const char *type = "message", *json = "{}", *xid = NULL, *dof = "";
        size_t jl = 2;
        for (size_t k = 0; k + 1 < f->elements; k += 2) {
            const char *n = f->element[k]->str;
            if (!strcmp(n, "t")) {
                type = f->element[k + 1]->str;
            } else if (!strcmp(n, "e")) {
                json = f->element[k + 1]->str;
                jl = f->element[k + 1]->len;
            } else if (!strcmp(n, "i")) {
                xid = f->element[k + 1]->str;
            } else if (!strcmp(n, "d")) {
                dof = f->element[k + 1]->str;
            }
        }
        bool preview = !strcmp(type, "event_start") || !strcmp(type, "event_delta");
        if (preview && !((s->deltas_msg && !strcmp(dof, "agent.message")) ||
                         (s->deltas_thinking && !strcmp(dof, "agent.thinking")))) {
            set_id(s->last_id, sizeof(s->last_id), id); /* not asked for: skipped */
            continue;
        }
        struct wp_buf b;
        wp_buf_init(&b, jl + 4096);
        /* id: the resume cursor (Last-Event-ID), always the stream id */
        wp_buf_printf(&b, "event: %s\nid: sevt_%s\ndata: ", type, id);
        if (preview) /* previews carry no id or processed_at (events.md 10) */
            wp_buf_append(&b, json, jl);
        else
            sched__event_splice_id(&b, id, xid, json, jl);
        wp_buf_append(&b, "\n\n", 2);
        int rc = sched__conn_write(s->conn, b.data, b.len);
        wp_buf_free(&b);
        if (rc < 0) {
            cut_off(s, "write");
            break;
        }
        set_id(s->last_id, sizeof(s->last_id), id);
        ended = !strcmp(type, "session.deleted");
    }
    return ended;
}

static void hub_read_cb(void *ctx, redisReply *reply)
{
    struct sched_hub *h = ctx;
    h->reading = false;
    if (h->dead)
        return; /* being freed by hub_free_now */
    h->in_cb = true;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        /* The members resume elsewhere (or here) with Last-Event-ID. */
        while (h->members) {
            struct sched_sse *s = h->members;
            hub_remove(s);
            cut_off(s, "redis");
        }
    } else if (reply->type == REDIS_REPLY_NIL) {
        for (struct sched_sse *s = h->members, *next; s; s = next) {
            next = s->hnext;
            if (sched__conn_write(s->conn, ": keepalive\n\n", 13) < 0)
                cut_off(s, "write");
        }
    } else if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 1) {
        redisReply *entries = reply->element[0]->element[1];
        for (struct sched_sse *s = h->members, *next; s; s = next) {
            next = s->hnext;
            s->in_cb = true;
            if (deliver(s, entries))
                cut_off(s, "session deleted");
            else if (s->conn && !maybe_pause(s) &&
                     id_cmp(s->last_id, entries->element[entries->elements - 1]->element[0]->str) < 0) {
                /* Stopped early at the soft limit without pausing: catch up alone. */
                hub_remove(s);
                catch_up(s);
            }
            s->in_cb = false;
            if (s->closed && !s->catching)
                sse_free(s);
        }
        if (entries->elements > 0)
            set_id(h->last_id, sizeof(h->last_id),
                   entries->element[entries->elements - 1]->element[0]->str);
    }
    h->in_cb = false;
    if (!h->members)
        hub_destroy(h);
    if (h->dead) {
        hub_free_now(h);
        return;
    }
    hub_read(h);
}

static void hub_read(struct sched_hub *h)
{
    char block[32];
    if (h->dead || h->reading)
        return;
    snprintf(block, sizeof(block), "%d", (int)(h->srv->cfg.sse_keepalive * 1000));
    const char *argv[] = {"XREAD", "COUNT", "100", "BLOCK", block, "STREAMS", h->key, h->last_id};
    if (wp_redis_argv(h->rd, hub_read_cb, h, 8, argv, NULL) < 0) {
        while (h->members) {
            struct sched_sse *s = h->members;
            hub_remove(s); /* the last removal destroys h */
            cut_off(s, "redis");
        }
        return;
    }
    h->reading = true;
}

static void hub_start_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct sched_hub *h = w->data;
    if (wp_redis_ready(h->rd)) {
        ev_timer_stop(loop, w);
        hub_read(h);
        return;
    }
    if (++h->wait_ticks > 2500) { /* ~5 s */
        ev_timer_stop(loop, w);
        while (h->members) {
            struct sched_sse *s = h->members;
            hub_remove(s);
            cut_off(s, "redis connect");
        }
    }
}

/* Join the session's hub, creating it; or catch up more if it is ahead. */
static void attach(struct sched_sse *s)
{
    struct sched_server *srv = s->srv;
    struct sched_hub *h = srv->hubs;
    while (h && strcmp(h->key, s->key))
        h = h->next;
    if (h) {
        if (id_cmp(s->last_id, h->last_id) < 0) {
            catch_up(s); /* the hub has read past us */
            return;
        }
        hub_add(h, s);
        return;
    }
    h = calloc(1, sizeof(*h));
    if (!h) {
        cut_off(s, "out of memory");
        return;
    }
    h->srv = srv;
    set_id(h->key, sizeof(h->key), s->key);
    set_id(h->last_id, sizeof(h->last_id), s->last_id);
    h->rd = wp_redis_new(srv->loop, srv->cfg.redis_host, srv->cfg.redis_port, "sse");
    if (!h->rd) {
        free(h);
        cut_off(s, "out of memory");
        return;
    }
    ev_timer_init(&h->start, hub_start_cb, 0.002, 0.002);
    h->start.data = h;
    h->next = srv->hubs;
    if (srv->hubs)
        srv->hubs->prev = h;
    srv->hubs = h;
    hub_add(h, s);
    ev_timer_start(srv->loop, &h->start);
}

static void catch_cb(void *ctx, redisReply *reply)
{
    struct sched_sse *s = ctx;
    s->catching = false;
    if (s->closed) {
        if (!s->in_cb)
            sse_free(s);
        return;
    }
    s->in_cb = true;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        cut_off(s, "redis");
    } else if (reply->type == REDIS_REPLY_NIL) {
        attach(s); /* nothing newer: go live */
    } else if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 1) {
        if (deliver(s, reply->element[0]->element[1]))
            cut_off(s, "session deleted");
        else if (!maybe_pause(s))
            catch_up(s);
    }
    s->in_cb = false;
    if (s->closed && !s->catching)
        sse_free(s);
}

static void catch_up(struct sched_sse *s)
{
    if (s->closed || s->catching || s->paused || s->hub)
        return;
    const char *argv[] = {"XREAD", "COUNT", "100", "STREAMS", s->key, s->last_id};
    if (wp_redis_argv(s->srv->rds, catch_cb, s, 6, argv, NULL) < 0) {
        cut_off(s, "redis");
        return;
    }
    s->catching = true;
}

/* ---- the request ---- */

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
    s->deltas_msg = req->step & 1;
    s->deltas_thinking = (req->step & 2) != 0;
    sched__key_events(s->key, sizeof(s->key), req->params[0]);
    set_id(s->last_id, sizeof(s->last_id),
           req->scratch[0] ? req->scratch : (reply->str ? reply->str : "0-0"));
    ev_timer_init(&s->slow, slow_cb, 0., 0.);
    s->slow.data = s;
    struct sched_conn *c = sched__conn_take_for_sse(req);
    if (!c) {
        free(s);
        return;
    }
    s->conn = c;
    sched__conn_set_sse(c, s);
    log_debug("sse open key=%s from=%s", s->key, s->last_id);
    catch_up(s);
}

void sched__h_events_stream(struct sched_req *req)
{
    char kobj[200], kev[200];
    const char *deltas[4];
    int nd = sched__query_all(req, "event_deltas", deltas, 4);
    req->step = 0;
    for (int i = 0; i < nd; i++) {
        if (strcmp(deltas[i], "agent.message") && strcmp(deltas[i], "agent.thinking")) {
            sched__bad_request(req, "event_deltas accepts agent.message and agent.thinking");
            return;
        }
        req->step |= !strcmp(deltas[i], "agent.message") ? 1 : 2;
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
