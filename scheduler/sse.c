/* sse.c - GET /v1/sessions/{id}/events/stream: Server-Sent Events.
 *
 * Two phases per subscriber, so that the live tail costs a handful of
 * Redis connections per process however many sessions are streamed and
 * however many subscribers each has:
 *
 * - catch-up: non-blocking XREAD COUNT 100 from the subscriber's own
 *   last id on the shared command connection, until the log has nothing
 *   newer. A resume (Last-Event-ID) replays this way.
 * - live: the subscriber joins the session's hub (struct sched_hub), whose
 *   position a reader (struct sse_reader) tails: one Redis connection
 *   looping XREAD COUNT 100 BLOCK STREAMS <up to sse_keys_per_conn session
 *   logs> <their hubs' positions> and handing each session's batch to its
 *   hub's members. A member takes only ids above its own last id, and joins
 *   only if the hub has not read past it (otherwise it catches up again
 *   first), so no event is lost or sent twice at the seam. A hub with
 *   nothing new for sse_keepalive seconds writes a keepalive comment.
 *   A hub joining a reader whose XREAD is blocked wakes it with CLIENT
 *   UNBLOCK (from the command connection) so the next XREAD includes it.
 *
 * Without a resume point a stream starts at the log's end as it was when
 * the headers were sent (the SDK reads history itself, events.md 14).
 *
 * Backpressure (style habit 7): a member whose queued output passes the
 * soft limit leaves the hub and waits for its socket to drain, then
 * catches up on its own; over the soft limit for sse_soft_seconds, or over
 * the hard limit, it is cut off and resumes with Last-Event-ID.
 *
 * Durable mode (--redis-wait-replicas N): an event is shown only once N
 * replicas have it, like a write is acknowledged only then, so a failover
 * never takes back an event a client saw. A batch read (live or catch-up)
 * is held (copied) while its connection sends a propagated no-op (PUBLISH:
 * it follows every entry the read saw in the replication stream) and
 * WAIT N; too few replicas in time: WAIT again, holding the batch. Not on
 * Redis Cluster (WAIT there is per master and the no-op would have to
 * reach the reader's own): there the read is shown as it comes.
 *
 * Freeing: a subscriber, hub or reader is never freed inside a callback
 * that still uses it (in_cb / in_read flags); the last step frees it.
 */
#define WP_LOG_COMPONENT "sse"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/rcluster.h"
#include "scheduler/sched_int.h"

/* One Redis connection tailing many sessions' logs (one XREAD). */
struct sse_reader {
    struct sched_server *srv;
    struct wp_redis *rd;        /* blocking reads only; owned */
    long long client_id;        /* CLIENT ID of rd (for CLIENT UNBLOCK); 0 = not yet */
    struct sched_hub *hubs;     /* the hubs it tails (rnext/rprev) */
    int nhubs;
    struct sched_hub **inflight; /* the hubs of the XREAD in flight, in key order; owned */
    size_t ninflight;
    bool reading, in_cb, broken;
    bool wake;                  /* a hub joined that the XREAD in flight lacks */
    int unblocks;               /* CLIENT UNBLOCKs in flight (they point at this) */
    bool dead;                  /* unlinked; freed once unblocks == 0 */
    redisReply *held;           /* durable mode: the batch waiting for its fence; owned */
    bool freeing;               /* inside reader_free_now */
    int wait_ticks;
    int slot;                   /* the hash slot of its keys (cfg.sse_slot_groups) */
    ev_timer start;             /* waits for rd to connect */
    ev_timer retry;             /* re-sends CLIENT UNBLOCK */
    struct sse_reader *next, *prev;
};

struct sched_hub {
    struct sched_server *srv;
    char key[200];
    char last_id[64];          /* the hub has read everything up to here */
    struct sse_reader *rdr;    /* the reader tailing it (NULL once dead) */
    struct sched_sse *members;
    bool in_read;              /* in its reader's XREAD in flight: freed after it */
    bool dead;
    ev_timer ka;               /* keepalive after sse_keepalive without events */
    struct sched_hub *next, *prev;   /* srv->hubs */
    struct sched_hub *rnext, *rprev; /* rdr->hubs */
};

struct sched_sse {
    struct sched_server *srv;
    struct sched_conn *conn;   /* NULL once closed */
    struct sched_hub *hub;     /* non-NULL while live */
    struct sched_sse *hnext, *hprev;
    char key[200];
    char last_id[64];          /* last event written to this client */
    bool catching;             /* a catch-up XREAD (or its fence) is in flight */
    redisReply *held;          /* durable mode: the catch-up batch waiting for its fence; owned */
    bool deltas_msg, deltas_thinking; /* event_deltas[] asked for these previews */
    bool in_cb;
    bool closed;
    bool paused;
    ev_timer slow;
};

static void catch_up(struct sched_sse *s);
static void cut_off(struct sched_sse *s, const char *why);

/* ---- durable mode: show what the replicas have (see the top) ---- */

static bool durable(const struct sched_server *srv)
{
    return srv->cfg.redis_wait_replicas > 0 && !srv->cfg.redis_cluster[0];
}

/* After a read on rd: a no-op that replicates behind what it saw, then
 * WAIT. 0 and cb once, or < 0 (rd not connected). */
static int fence(struct sched_server *srv, struct wp_redis *rd, wp_redis_cb cb, void *ctx)
{
    char n[16], ms[16];
    snprintf(n, sizeof(n), "%d", srv->cfg.redis_wait_replicas);
    snprintf(ms, sizeof(ms), "%d", srv->cfg.redis_wait_ms);
    const char *pub[] = { "PUBLISH", "wp:sse:fence", "" };
    const char *wait[] = { "WAIT", n, ms };
    if (wp_redis_argv(rd, NULL, NULL, 3, pub, NULL) < 0)
        return -1;
    return wp_redis_argv(rd, cb, ctx, 3, wait, NULL);
}

/* A fence's answer: 1 passed, 0 too few replicas so far (ask again; on
 * the command connection, its own WAIT says NOTREPLICATED), -1 Redis gone. */
static int fence_passed(const struct sched_server *srv, const redisReply *reply)
{
    if (!reply)
        return -1;
    if (reply->type == REDIS_REPLY_INTEGER)
        return reply->integer >= srv->cfg.redis_wait_replicas;
    if (reply->type == REDIS_REPLY_ERROR && !strncmp(reply->str, "NOTREPLICATED", 13))
        return 0;
    return -1;
}
static void reader_read(struct sse_reader *r);
static void reader_release(struct sse_reader *r);

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
    ev_timer_stop(h->srv->loop, &h->ka);
    free(h);
}

/* Unlink from the server and its reader; free now, or after the XREAD it
 * is part of returns. */
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
    struct sse_reader *r = h->rdr;
    h->rdr = NULL;
    if (h->rprev)
        h->rprev->rnext = h->rnext;
    else
        r->hubs = h->rnext;
    if (h->rnext)
        h->rnext->rprev = h->rprev;
    r->nhubs--;
    ev_timer_stop(srv->loop, &h->ka);
    if (!h->in_read)
        hub_free_now(h);
    reader_release(r);
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

/* Cut off every member (they resume with Last-Event-ID); the last removal
 * destroys h. */
static void hub_cut_all(struct sched_hub *h, const char *why)
{
    while (!h->dead && h->members) {
        struct sched_sse *s = h->members;
        hub_remove(s);
        cut_off(s, why);
    }
}

static void hub_ka_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct sched_hub *h = w->data;
    for (struct sched_sse *s = h->members, *next; s; s = next) {
        next = s->hnext;
        if (sched__conn_write(s->conn, ": keepalive\n\n", 13) < 0)
            cut_off(s, "write"); /* may destroy h: then next is NULL */
    }
}

/* ---- subscribers ---- */

static void sse_free(struct sched_sse *s)
{
    ev_timer_stop(s->srv->loop, &s->slow);
    if (s->held)
        freeReplyObject(s->held);
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

/* ---- readers ---- */

static void reader_free_now(struct sse_reader *r)
{
    struct wp_redis *rd = r->rd;
    r->rd = NULL;
    r->freeing = true;
    ev_timer_stop(r->srv->loop, &r->start);
    ev_timer_stop(r->srv->loop, &r->retry);
    wp_redis_free(rd); /* a pending XREAD callback sees dead */
    if (r->held)
        freeReplyObject(r->held);
    free(r->inflight);
    free(r);
}

/* Unlink; free once nothing points at r any more. */
static void reader_destroy(struct sse_reader *r)
{
    struct sched_server *srv = r->srv;
    if (r->dead)
        return;
    r->dead = true;
    if (r->prev)
        r->prev->next = r->next;
    else
        srv->readers = r->next;
    if (r->next)
        r->next->prev = r->prev;
    if (!r->in_cb && !r->unblocks)
        reader_free_now(r);
}

/* A reader tailing nothing goes away (unless its own callback runs). */
static void reader_release(struct sse_reader *r)
{
    if (!r->nhubs && !r->in_cb)
        reader_destroy(r);
}

static void reader_fail(struct sse_reader *r, const char *why)
{
    r->broken = true; /* no new hub joins it */
    while (r->hubs)
        hub_cut_all(r->hubs, why);
}

static void unblock_cb(void *ctx, redisReply *reply);

/* Wake the blocked XREAD so the next one includes the hubs that joined. */
static void reader_wake(struct sse_reader *r)
{
    if (!r->reading || r->unblocks || r->dead || r->held)
        return; /* the XREAD not yet sent will include them */
    char id[32];
    snprintf(id, sizeof(id), "%lld", r->client_id);
    const char *argv[] = {"CLIENT", "UNBLOCK", id};
    if (wp_redis_argv(r->srv->rds, unblock_cb, r, 3, argv, NULL) < 0) {
        ev_timer_set(&r->retry, 0.05, 0.);
        ev_timer_start(r->srv->loop, &r->retry);
        return;
    }
    r->unblocks++;
}

static void unblock_cb(void *ctx, redisReply *reply)
{
    struct sse_reader *r = ctx;
    r->unblocks--;
    if (r->dead) {
        if (!r->unblocks && !r->in_cb && !r->freeing)
            reader_free_now(r);
        return;
    }
    if (reply && reply->type == REDIS_REPLY_ERROR)
        log_warn("CLIENT UNBLOCK refused (%s): new streams wait up to --sse-keepalive", reply->str);
    else if (r->wake && r->reading) {
        /* Not blocked yet (the XREAD had not reached Redis) or the wrong
         * read: try again shortly. */
        ev_timer_set(&r->retry, 0.002, 0.);
        ev_timer_start(r->srv->loop, &r->retry);
    }
}

static void reader_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct sse_reader *r = w->data;
    if (r->wake)
        reader_wake(r);
}

/* Hand one session's batch to its hub's members. */
static void hub_deliver(struct sched_hub *h, redisReply *entries)
{
    if (entries->elements == 0)
        return;
    ev_timer_again(h->srv->loop, &h->ka);
    const char *top = entries->element[entries->elements - 1]->element[0]->str;
    for (struct sched_sse *s = h->members, *next; s; s = next) {
        next = s->hnext;
        s->in_cb = true;
        if (deliver(s, entries))
            cut_off(s, "session deleted");
        else if (s->conn && !maybe_pause(s) && id_cmp(s->last_id, top) < 0) {
            /* Stopped early at the soft limit without pausing: catch up alone. */
            hub_remove(s);
            catch_up(s);
        }
        s->in_cb = false;
        if (s->closed && !s->catching)
            sse_free(s);
    }
    set_id(h->last_id, sizeof(h->last_id), top);
}

static void reader_got(struct sse_reader *r, redisReply *reply);

static void reader_fence_cb(void *ctx, redisReply *reply)
{
    struct sse_reader *r = ctx;
    int ok = r->dead ? -1 : fence_passed(r->srv, reply);
    if (ok == 0 && fence(r->srv, r->rd, reader_fence_cb, r) == 0)
        return; /* still holding the batch */
    redisReply *held = r->held;
    r->held = NULL;
    reader_got(r, ok == 1 ? held : NULL);
    if (held)
        freeReplyObject(held);
}

static void reader_read_cb(void *ctx, redisReply *reply)
{
    struct sse_reader *r = ctx;
    if (durable(r->srv) && !r->dead && reply && reply->type == REDIS_REPLY_ARRAY &&
        reply->elements) {
        /* Stays "reading" (no new XREAD, no CLIENT UNBLOCK) until the fence. */
        if ((r->held = wp_redis_reply_copy(reply)) &&
            fence(r->srv, r->rd, reader_fence_cb, r) == 0)
            return;
        if (r->held)
            freeReplyObject(r->held);
        r->held = NULL;
        reply = NULL; /* as a lost connection: its hubs are cut, clients resume */
    }
    reader_got(r, reply);
}

static void reader_got(struct sse_reader *r, redisReply *reply)
{
    r->reading = false;
    r->in_cb = true;
    if (r->dead) {
        /* Being freed: only the hubs are released below. */
    } else if (!reply || reply->type == REDIS_REPLY_ERROR) {
        reader_fail(r, "redis");
    } else if (reply->type == REDIS_REPLY_ARRAY) {
        /* Keys come back in the order asked, only those with entries. */
        size_t j = 0;
        for (size_t k = 0; k < reply->elements; k++) {
            redisReply *kv = reply->element[k];
            if (kv->type != REDIS_REPLY_ARRAY || kv->elements != 2)
                continue;
            const char *key = kv->element[0]->str;
            size_t start = j;
            while (j < r->ninflight && strcmp(r->inflight[j]->key, key))
                j++;
            if (j == r->ninflight) { /* out of order: look from the start */
                for (j = 0; j < start && strcmp(r->inflight[j]->key, key); j++)
                    ;
                if (j == start)
                    continue;
            }
            struct sched_hub *h = r->inflight[j];
            if (!h->dead)
                hub_deliver(h, kv->element[1]);
        }
    }
    /* NIL: the block timed out or CLIENT UNBLOCK woke it; read again. */
    for (size_t k = 0; k < r->ninflight; k++) {
        struct sched_hub *h = r->inflight[k];
        h->in_read = false;
        if (h->dead)
            hub_free_now(h);
    }
    r->ninflight = 0;
    r->in_cb = false;
    if (r->dead) {
        if (!r->unblocks && !r->freeing)
            reader_free_now(r);
        return;
    }
    if (!r->nhubs) {
        reader_destroy(r);
        return;
    }
    reader_read(r);
}

static void reader_read(struct sse_reader *r)
{
    if (r->dead || r->reading || r->broken || !r->client_id || !r->nhubs)
        return;
    size_t n = (size_t)r->nhubs, argc = 6 + 2 * n;
    const char **argv = malloc(argc * sizeof(*argv));
    struct sched_hub **inf = realloc(r->inflight, n * sizeof(*inf));
    if (inf)
        r->inflight = inf;
    if (!argv || !inf) {
        free(argv);
        reader_fail(r, "out of memory");
        return;
    }
    char block[32];
    snprintf(block, sizeof(block), "%d", (int)(r->srv->cfg.sse_keepalive * 1000));
    argv[0] = "XREAD", argv[1] = "COUNT", argv[2] = "100", argv[3] = "BLOCK";
    argv[4] = block, argv[5] = "STREAMS";
    size_t k = 0;
    for (struct sched_hub *h = r->hubs; h; h = h->rnext, k++) {
        argv[6 + k] = h->key;
        argv[6 + n + k] = h->last_id;
        inf[k] = h;
    }
    int rc = wp_redis_argv(r->rd, reader_read_cb, r, (int)argc, argv, NULL);
    free(argv);
    if (rc < 0) {
        reader_fail(r, "redis");
        return;
    }
    for (k = 0; k < n; k++)
        inf[k]->in_read = true;
    r->ninflight = n;
    r->reading = true;
    r->wake = false;
}

static void client_id_cb(void *ctx, redisReply *reply)
{
    struct sse_reader *r = ctx;
    if (r->dead)
        return;
    if (!reply || reply->type != REDIS_REPLY_INTEGER) {
        reader_fail(r, "redis");
        reader_release(r);
        return;
    }
    r->client_id = reply->integer;
    reader_read(r);
}

static void reader_start_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct sse_reader *r = w->data;
    if (wp_redis_ready(r->rd)) {
        ev_timer_stop(loop, w);
        const char *argv[] = {"CLIENT", "ID"};
        if (wp_redis_argv(r->rd, client_id_cb, r, 2, argv, NULL) < 0) {
            reader_fail(r, "redis");
            reader_release(r);
        }
        return;
    }
    if (++r->wait_ticks > 2500) { /* ~5 s */
        ev_timer_stop(loop, w);
        reader_fail(r, "redis connect");
        reader_release(r);
    }
}

/* A reader with room for one more hub, made when all are full. On Redis
 * Cluster the keys of one XREAD must share a slot: a reader then tails the
 * sessions of one slot only (a session's log is tagged by its id, so that
 * is mostly one session per reader: the cost of spreading sessions). */
static struct sse_reader *reader_for_new_hub(struct sched_server *srv, const char *key)
{
    int slot = srv->cfg.sse_slot_groups ? wp_rcl_keyslot(key, strlen(key)) : -1;
    for (struct sse_reader *r = srv->readers; r; r = r->next)
        if (!r->broken && r->nhubs < srv->cfg.sse_keys_per_conn && r->slot == slot)
            return r;
    struct sse_reader *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->srv = srv;
    r->slot = slot;
    r->rd = wp_redis_new(srv->loop, srv->cfg.redis_host, srv->cfg.redis_port, "sse");
    if (!r->rd) {
        free(r);
        return NULL;
    }
    ev_timer_init(&r->start, reader_start_cb, 0.002, 0.002);
    r->start.data = r;
    ev_timer_init(&r->retry, reader_retry_cb, 0., 0.);
    r->retry.data = r;
    r->next = srv->readers;
    if (srv->readers)
        srv->readers->prev = r;
    srv->readers = r;
    ev_timer_start(srv->loop, &r->start);
    return r;
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
    struct sse_reader *r = reader_for_new_hub(srv, s->key);
    h = r ? calloc(1, sizeof(*h)) : NULL;
    if (!h) {
        if (r)
            reader_release(r);
        cut_off(s, "out of memory");
        return;
    }
    h->srv = srv;
    set_id(h->key, sizeof(h->key), s->key);
    set_id(h->last_id, sizeof(h->last_id), s->last_id);
    ev_timer_init(&h->ka, hub_ka_cb, 0., srv->cfg.sse_keepalive);
    h->ka.data = h;
    ev_timer_again(srv->loop, &h->ka);
    h->next = srv->hubs;
    if (srv->hubs)
        srv->hubs->prev = h;
    srv->hubs = h;
    h->rdr = r;
    h->rnext = r->hubs;
    if (r->hubs)
        r->hubs->rprev = h;
    r->hubs = h;
    r->nhubs++;
    hub_add(h, s);
    if (r->reading) {
        r->wake = true;
        reader_wake(r);
    } else {
        reader_read(r);
    }
}

static void catch_got(struct sched_sse *s, redisReply *reply);

static void catch_fence_cb(void *ctx, redisReply *reply)
{
    struct sched_sse *s = ctx;
    int ok = s->closed ? -1 : fence_passed(s->srv, reply);
    if (ok == 0 && fence(s->srv, s->srv->rds, catch_fence_cb, s) == 0)
        return;
    redisReply *held = s->held;
    s->held = NULL;
    catch_got(s, ok == 1 ? held : NULL);
    if (held)
        freeReplyObject(held);
}

static void catch_cb(void *ctx, redisReply *reply)
{
    struct sched_sse *s = ctx;
    if (durable(s->srv) && !s->closed && reply && reply->type == REDIS_REPLY_ARRAY) {
        if ((s->held = wp_redis_reply_copy(reply)) &&
            fence(s->srv, s->srv->rds, catch_fence_cb, s) == 0)
            return; /* still "catching" */
        if (s->held)
            freeReplyObject(s->held);
        s->held = NULL;
        reply = NULL;
    }
    catch_got(s, reply);
}

static void catch_got(struct sched_sse *s, redisReply *reply)
{
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

#include "lua/scheduler/sse.h" /* its Lua scripts: lua/scheduler/sse/ (Makefile) */

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
    sched__key_obj(kobj, sizeof(kobj), NULL, req->params[0]);
    sched__key_events(kev, sizeof(kev), req->params[0]);
    const char *argv[] = {kobj, kev, req->org};
    sched__req_script(req, lua_open, open_cb, 2, 3, argv, NULL);
}
