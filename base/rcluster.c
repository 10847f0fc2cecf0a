/* rcluster.c - Redis Cluster routing: slot map, MOVED and ASK.
 *
 * Commands are copied (struct rcmd) so a redirect can resend them. A
 * redirect to a node whose connection is not up yet waits on a short
 * queue, polled by a timer, up to WAIT_S; the same timer asks for a new
 * map whenever one is wanted. A second, slower timer (refresh) asks for
 * the map periodically and moves a subscription off a dead node.
 */
#define WP_LOG_COMPONENT "redis"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ev.h>

#include "base/err.h"
#include "base/log.h"
#include "base/rcluster.h"
#include "base/rcluster_int.h"
#include "base/sentinel.h"

#define WAIT_S 2.0
#define TICK_S 0.02
#define SUB_MOVE_S 1.0 /* a subscription's node down this long: move it */

/* See wp_rcl_set. */
static char seeds_cfg[WP_RCL_MAX_NODES * 64];

int wp_rcl_set(const char *seeds, struct wp_err *err)
{
    if (!seeds || !seeds[0])
        return wp_err_set(err, WP_ECONFIG, "redis cluster: no seed nodes");
    if (wp_sentinel_on())
        return wp_err_set(err, WP_ECONFIG,
                          "redis cluster and redis sentinels exclude each other: give one");
    if (strlen(seeds) >= sizeof(seeds_cfg))
        return wp_err_set(err, WP_ECONFIG, "redis cluster seed list too long");
    /* Checked the way wp_rcl_new reads it, without connecting. */
    const char *p = seeds;
    int n = 0;
    while (p && *p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char host[128];
        int port;
        if (wp__rcl_addr(p, len, NULL, host, sizeof(host), &port) < 0)
            return wp_err_set(err, WP_ECONFIG, "redis cluster seed '%.*s': want HOST:PORT",
                              (int)len, p);
        if (++n > WP_RCL_MAX_NODES)
            return wp_err_set(err, WP_ECONFIG, "more than %d redis cluster seeds",
                              WP_RCL_MAX_NODES);
        p = comma ? comma + 1 : NULL;
    }
    snprintf(seeds_cfg, sizeof(seeds_cfg), "%s", seeds);
    return 0;
}

bool wp_rcl_on(void)
{
    return seeds_cfg[0] != '\0';
}

const char *wp_rcl_seeds(void)
{
    return seeds_cfg;
}

uint16_t wp_rcl_crc16(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = crc & 0x8000 ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

int wp_rcl_keyslot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open + 1 - key);
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1)
            return wp_rcl_crc16(open + 1, (size_t)(close - open - 1)) & (WP_RCL_SLOTS - 1);
    }
    return wp_rcl_crc16(key, len) & (WP_RCL_SLOTS - 1);
}

struct node {
    char host[128];
    int port;
    struct wp_redis *r;
};

/* A command in flight or waiting, with its own copy of argv. */
struct rcmd {
    struct wp_rcl *c;
    wp_redis_cb cb;
    void *ctx;
    const char *script; /* wp_redis_script's (the caller's static text), or NULL */
    int nkeys;
    int argc;
    const char **argv;
    size_t *lens;
    int hops;
    int sent_node; /* the node it went to last */
    int wait_node; /* waiting: the node to send to */
    bool asking;   /* waiting: send ASKING first */
    double wait_until;
    struct rcmd *next; /* on the wait queue */
};

struct wp_rcl {
    struct ev_loop *loop;
    char name[32];
    int nnodes;
    struct node nodes[WP_RCL_MAX_NODES];
    int16_t slot[WP_RCL_SLOTS]; /* node index, -1 unknown */
    bool have_map;
    bool want_map;
    bool asking_map; /* a CLUSTER SLOTS is in flight */
    /* Replies the node connections still owe (cmd_reply, map_reply). Freed
     * from inside one of their callbacks, a connection answers its other
     * pending commands only after that callback returns (hiredis defers
     * the free): c then outlives wp_rcl_free until the last is in. */
    int owed;
    bool freed;
    int next_seed;   /* which node to ask for the map next */
    bool closing;
    struct rcmd *waiting;
    ev_timer tick;
    ev_timer refresh;   /* periodic map, subscription moves (unref'd) */
    double map_at;      /* when the last map was loaded (loop time) */
    bool master[WP_RCL_MAX_NODES]; /* serves slots in the current map */
    bool covered;       /* every slot has a master in the map */
    int wait_n, wait_ms; /* wp_rcl_set_wait */
    struct wp_redis *sub;
    int sub_node;        /* the node sub is connected to */
    double sub_down_at;  /* since when sub is not ready; 0: it is */
    char sub_chan[128];
    wp_redis_cb sub_cb;
    void *sub_ctx;
    struct wp_rcl_stats stats;
};

static int node_index(struct wp_rcl *c, const char *host, int port)
{
    for (int i = 0; i < c->nnodes; i++)
        if (c->nodes[i].port == port && !strcmp(c->nodes[i].host, host))
            return i;
    if (c->nnodes == WP_RCL_MAX_NODES || strlen(host) >= sizeof(c->nodes[0].host))
        return -1;
    struct node *n = &c->nodes[c->nnodes];
    snprintf(n->host, sizeof(n->host), "%s", host);
    n->port = port;
    if (!(n->r = wp_redis_new_direct(c->loop, host, port, c->name)))
        return -1;
    if (c->wait_n > 0)
        wp_redis_set_wait(n->r, c->wait_n, c->wait_ms);
    return c->nnodes++;
}

static void start_tick(struct wp_rcl *c)
{
    if (!ev_is_active(&c->tick))
        ev_timer_start(c->loop, &c->tick);
}

static void want_map(struct wp_rcl *c)
{
    c->want_map = true;
    start_tick(c);
}

/* "host:port" of a redirect or a seed; an empty host (the node does not
 * know its own address) is dflt's. 0, or -1. */
int wp__rcl_addr(const char *s, size_t len, const char *dflt, char *host, size_t cap,
                      int *port)
{
    const char *colon = NULL;
    for (size_t i = 0; i < len; i++)
        if (s[i] == ':')
            colon = s + i;
    if (!colon)
        return -1;
    size_t hl = (size_t)(colon - s);
    char num[8];
    size_t pl = len - hl - 1;
    if (pl == 0 || pl >= sizeof(num))
        return -1;
    memcpy(num, colon + 1, pl);
    num[pl] = '\0';
    char *end;
    long p = strtol(num, &end, 10);
    if (*end || p < 1 || p > 65535)
        return -1;
    if (hl == 0) {
        if (!dflt)
            return -1;
        snprintf(host, cap, "%s", dflt);
    } else {
        if (hl >= cap)
            return -1;
        memcpy(host, s, hl);
        host[hl] = '\0';
    }
    *port = (int)p;
    return 0;
}

/* --- the slot map -------------------------------------------------------- */

struct map_ask {
    struct wp_rcl *c;
    int node; /* asked */
};

/* A reply owed to c came: c goes once wp_rcl_free ran and none is owed. */
static void owed_in(struct wp_rcl *c)
{
    if (--c->owed == 0 && c->freed)
        free(c);
}

int wp__rcl_map_entry(const redisReply *e, const char *asked_host, struct wp__rcl_range *out)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
        e->element[0]->type != REDIS_REPLY_INTEGER || e->element[1]->type != REDIS_REPLY_INTEGER ||
        e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2)
        return -1;
    long long lo = e->element[0]->integer, hi = e->element[1]->integer;
    const redisReply *m = e->element[2];
    if (lo < 0 || hi < lo || hi >= WP_RCL_SLOTS || m->element[0]->type != REDIS_REPLY_STRING ||
        m->element[1]->type != REDIS_REPLY_INTEGER || m->element[1]->integer < 1 ||
        m->element[1]->integer > 65535)
        return -1;
    /* "" or "?": the node's address is unknown to the one asked. */
    out->host = m->element[0]->str;
    if (!out->host[0] || !strcmp(out->host, "?"))
        out->host = asked_host;
    out->lo = (int)lo;
    out->hi = (int)hi;
    out->port = (int)m->element[1]->integer;
    return 0;
}

/* One CLUSTER SLOTS entry into slots. */
static int map_entry(struct wp_rcl *c, const redisReply *e, const char *asked_host,
                     int16_t *slots)
{
    struct wp__rcl_range rg;
    int n;
    if (wp__rcl_map_entry(e, asked_host, &rg) < 0 || (n = node_index(c, rg.host, rg.port)) < 0)
        return -1;
    for (int s = rg.lo; s <= rg.hi; s++)
        slots[s] = (int16_t)n;
    return 0;
}

static void map_got(struct wp_rcl *c, int asked, redisReply *rep)
{
    if (c->closing)
        return;
    c->asking_map = false;
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        log_warn("redis cluster conn=%s: CLUSTER SLOTS at %s:%d: %s", c->name,
                 c->nodes[asked].host, c->nodes[asked].port,
                 rep && rep->type == REDIS_REPLY_ERROR ? rep->str : "no reply");
        want_map(c);
        return;
    }
    int16_t *slots = malloc(WP_RCL_SLOTS * sizeof(*slots));
    if (!slots) {
        want_map(c);
        return;
    }
    for (int s = 0; s < WP_RCL_SLOTS; s++)
        slots[s] = -1;
    for (size_t i = 0; i < rep->elements; i++)
        if (map_entry(c, rep->element[i], c->nodes[asked].host, slots) < 0) {
            log_warn("redis cluster conn=%s: malformed CLUSTER SLOTS entry from %s:%d", c->name,
                     c->nodes[asked].host, c->nodes[asked].port);
            free(slots);
            want_map(c);
            return;
        }
    memcpy(c->slot, slots, sizeof(c->slot));
    free(slots);
    memset(c->master, 0, sizeof(c->master));
    c->covered = true;
    for (int s = 0; s < WP_RCL_SLOTS; s++) {
        if (c->slot[s] >= 0)
            c->master[c->slot[s]] = true;
        else
            c->covered = false;
    }
    c->have_map = true;
    c->map_at = ev_now(c->loop);
    c->stats.maps++;
}

static void map_reply(void *ctx, redisReply *rep)
{
    struct map_ask *ma = ctx;
    struct wp_rcl *c = ma->c;
    int asked = ma->node;
    free(ma);
    map_got(c, asked, rep);
    owed_in(c);
}

static void ask_map(struct wp_rcl *c)
{
    for (int k = 0; k < c->nnodes; k++) {
        int i = (c->next_seed + k) % c->nnodes;
        if (!wp_redis_ready(c->nodes[i].r))
            continue;
        struct map_ask *ma = malloc(sizeof(*ma));
        const char *argv[] = { "CLUSTER", "SLOTS" };
        if (!ma)
            return;
        *ma = (struct map_ask){ c, i };
        /* not behind the durable mode's WAIT: replicas refuse it, and a
         * master whose replica died answers it too late or not enough */
        if (wp_redis_argv_nowait(c->nodes[i].r, map_reply, ma, 2, argv, NULL) < 0) {
            free(ma);
            continue;
        }
        c->owed++;
        c->next_seed = i + 1;
        c->asking_map = true;
        c->want_map = false;
        return;
    }
}

/* --- commands ------------------------------------------------------------- */

static double now_s(struct wp_rcl *c)
{
    return ev_now(c->loop);
}

static void rcmd_free(struct rcmd *m)
{
    free(m);
}

/* One allocation: the struct, argv, lens, then the bytes. */
static struct rcmd *rcmd_new(struct wp_rcl *c, wp_redis_cb cb, void *ctx, int argc,
                             const char **argv, const size_t *lens)
{
    size_t bytes = 0;
    for (int i = 0; i < argc; i++)
        bytes += lens ? lens[i] : strlen(argv[i]);
    struct rcmd *m = malloc(sizeof(*m) + (size_t)argc * (sizeof(char *) + sizeof(size_t)) + bytes);
    if (!m)
        return NULL;
    *m = (struct rcmd){ .c = c, .cb = cb, .ctx = ctx, .argc = argc };
    m->argv = (const char **)(m + 1);
    m->lens = (size_t *)(m->argv + argc);
    char *p = (char *)(m->lens + argc);
    for (int i = 0; i < argc; i++) {
        m->lens[i] = lens ? lens[i] : strlen(argv[i]);
        memcpy(p, argv[i], m->lens[i]);
        m->argv[i] = p;
        p += m->lens[i];
    }
    return m;
}

static void finish(struct rcmd *m, redisReply *rep)
{
    wp_redis_cb cb = m->cb;
    void *ctx = m->ctx;
    rcmd_free(m);
    if (cb)
        cb(ctx, rep);
}

static void cmd_reply(void *ctx, redisReply *rep);

static int send_to(struct rcmd *m, int node, bool asking)
{
    struct wp_redis *r = m->c->nodes[node].r;
    if (!wp_redis_ready(r))
        return WP_ESTATE;
    if (asking) {
        const char *a[] = { "ASKING" };
        if (wp_redis_argv(r, NULL, NULL, 1, a, NULL) < 0)
            return WP_ESTATE;
    }
    m->sent_node = node;
    int rc = m->script ? wp_redis_script(r, m->script, cmd_reply, m, m->nkeys, m->argc, m->argv, m->lens)
                       : wp_redis_argv(r, cmd_reply, m, m->argc, m->argv, m->lens);
    if (rc == 0)
        m->c->owed++;
    return rc;
}

/* Send now, or queue until the node's connection is up. */
static void redirect(struct rcmd *m, int node, bool asking)
{
    struct wp_rcl *c = m->c;
    if (send_to(m, node, asking) == 0)
        return;
    m->wait_node = node;
    m->asking = asking;
    m->wait_until = now_s(c) + WAIT_S;
    m->next = c->waiting;
    c->waiting = m;
    start_tick(c);
}

static void cmd_got(struct rcmd *m, redisReply *rep)
{
    struct wp_rcl *c = m->c;
    if (!rep) {
        if (!c->closing)
            want_map(c); /* the master may be gone: look again */
        finish(m, rep);
        return;
    }
    bool moved = rep->type == REDIS_REPLY_ERROR && !strncmp(rep->str, "MOVED ", 6);
    bool ask = rep->type == REDIS_REPLY_ERROR && !strncmp(rep->str, "ASK ", 4);
    if ((!moved && !ask) || c->closing || m->hops >= WP_RCL_MAX_HOPS) {
        finish(m, rep);
        return;
    }
    /* "MOVED <slot> <host>:<port>" / "ASK <slot> <host>:<port>" */
    const char *sp = strchr(rep->str + (moved ? 6 : 4), ' ');
    char *end;
    long slot = strtol(rep->str + (moved ? 6 : 4), &end, 10);
    char host[128];
    int port, node;
    /* An empty host (":6380"): the replying node's. */
    if (!sp || end != sp || slot < 0 || slot >= WP_RCL_SLOTS ||
        wp__rcl_addr(sp + 1, strlen(sp + 1), c->nodes[m->sent_node].host, host, sizeof(host),
                   &port) < 0 ||
        (node = node_index(c, host, port)) < 0) {
        log_warn("redis cluster conn=%s: bad redirect '%s'", c->name, rep->str);
        finish(m, rep);
        return;
    }
    m->hops++;
    if (moved) {
        c->stats.moved++;
        c->slot[slot] = (int16_t)node;
        c->master[node] = true;
        want_map(c); /* more slots likely moved with it */
    } else {
        c->stats.ask++;
    }
    redirect(m, node, ask);
}

static void cmd_reply(void *ctx, redisReply *rep)
{
    struct rcmd *m = ctx;
    struct wp_rcl *c = m->c; /* m may be gone after cmd_got */
    cmd_got(m, rep);
    owed_in(c);
}

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct wp_rcl *c = w->data;
    (void)loop;
    (void)revents;
    if (c->want_map && !c->asking_map)
        ask_map(c);
    struct rcmd *keep = NULL, *m = c->waiting, *fail = NULL;
    c->waiting = NULL;
    while (m) {
        struct rcmd *next = m->next;
        if (send_to(m, m->wait_node, m->asking) == 0) {
            /* in flight again */
        } else if (now_s(c) >= m->wait_until) {
            m->next = fail;
            fail = m;
        } else {
            m->next = keep;
            keep = m;
        }
        m = next;
    }
    c->waiting = keep;
    if (!c->want_map && !c->waiting)
        ev_timer_stop(c->loop, &c->tick);
    /* Last, with the queue consistent: a callback may send more. */
    while (fail) {
        struct rcmd *next = fail->next;
        finish(fail, NULL);
        fail = next;
    }
}

int wp__rcl_first_key(int argc, const char **argv, const size_t *lens)
{
    if (argc < 2)
        return -1;
    const char *cmd = argv[0];
    size_t cl = lens ? lens[0] : strlen(cmd);
    if ((cl == 4 && !strncasecmp(cmd, "EVAL", 4)) || (cl == 7 && !strncasecmp(cmd, "EVALSHA", 7)) ||
        (cl == 7 && !strncasecmp(cmd, "EVAL_RO", 7)) ||
        (cl == 10 && !strncasecmp(cmd, "EVALSHA_RO", 10)) ||
        (cl == 5 && !strncasecmp(cmd, "FCALL", 5)) ||
        (cl == 8 && !strncasecmp(cmd, "FCALL_RO", 8)))
        return argc > 3 && atoi(argv[2]) > 0 ? 3 : -1;
    if ((cl == 5 && !strncasecmp(cmd, "XREAD", 5)) ||
        (cl == 10 && !strncasecmp(cmd, "XREADGROUP", 10))) {
        for (int i = 1; i + 1 < argc; i++)
            if ((lens ? lens[i] : strlen(argv[i])) == 7 && !strncasecmp(argv[i], "STREAMS", 7))
                return i + 1;
        return -1;
    }
    return 1;
}

/* Send a new command to the master of slot (-1: any master). */
static int route(struct wp_rcl *c, int slot, const char *script, int nkeys, wp_redis_cb cb,
                 void *ctx, int argc, const char **argv, const size_t *lens)
{
    if (c->closing) /* a NULL reply's callback sending more while we are freed */
        return WP_ESTATE;
    if (!c->have_map) {
        want_map(c);
        return WP_ESTATE;
    }
    int node = slot >= 0 ? c->slot[slot] : -1;
    for (int s = 0; slot < 0 && s < WP_RCL_SLOTS && node < 0; s += 1024)
        node = c->slot[s];
    if (node < 0 || !wp_redis_ready(c->nodes[node].r)) {
        want_map(c); /* uncovered slot, or its master is down: failed over? */
        return WP_ESTATE;
    }
    struct rcmd *m = rcmd_new(c, cb, ctx, argc, argv, lens);
    if (!m)
        return -ENOMEM;
    m->script = script;
    m->nkeys = nkeys;
    int rc = send_to(m, node, false);
    if (rc < 0)
        rcmd_free(m);
    return rc;
}

static int slot_of(const char **argv, const size_t *lens, int i)
{
    return wp_rcl_keyslot(argv[i], lens ? lens[i] : strlen(argv[i]));
}

int wp_rcl_argv(struct wp_rcl *c, wp_redis_cb cb, void *ctx, int argc, const char **argv,
                const size_t *lens)
{
    int k = wp__rcl_first_key(argc, argv, lens);
    return route(c, k >= 0 ? slot_of(argv, lens, k) : -1, NULL, 0, cb, ctx, argc, argv, lens);
}

int wp_rcl_script(struct wp_rcl *c, const char *script, wp_redis_cb cb, void *ctx, int nkeys,
                  int argc, const char **argv, const size_t *lens)
{
    if (nkeys < 0 || nkeys > argc)
        return WP_EINVAL_INPUT;
    for (int i = 1; i < nkeys; i++)
        if (slot_of(argv, lens, i) != slot_of(argv, lens, 0)) {
            log_error("redis cluster conn=%s: script keys in different slots: %s, %s", c->name,
                      argv[0], argv[i]);
            return WP_EINVAL_INPUT;
        }
    return route(c, nkeys > 0 ? slot_of(argv, lens, 0) : -1, script, nkeys, cb, ctx, argc, argv,
                 lens);
}

/* (Re)connect the subscription to the master of its channel's slot, or a
 * seed before the map is known, avoiding node `avoid` (-1: none). */
static int sub_connect(struct wp_rcl *c, int avoid)
{
    int node = c->have_map ? c->slot[wp_rcl_keyslot(c->sub_chan, strlen(c->sub_chan))] : -1;
    for (int i = 0; (node < 0 || node == avoid || !wp_redis_ready(c->nodes[node].r)) &&
                    i < c->nnodes; i++)
        if (i != avoid && (c->master[i] || !c->have_map) && wp_redis_ready(c->nodes[i].r))
            node = i;
    if (node < 0)
        node = 0;
    struct wp_redis *r = wp_redis_new_direct(c->loop, c->nodes[node].host, c->nodes[node].port,
                                             c->name);
    if (!r)
        return -ENOMEM;
    int rc = wp_redis_subscribe(r, c->sub_chan, c->sub_cb, c->sub_ctx);
    if (rc < 0) {
        wp_redis_free(r);
        return rc;
    }
    wp_redis_free(c->sub); /* safe inside its callbacks */
    c->sub = r;
    c->sub_node = node;
    c->sub_down_at = 0;
    return 0;
}

int wp_rcl_subscribe(struct wp_rcl *c, const char *channel, wp_redis_cb cb, void *ctx)
{
    if (c->sub)
        return WP_ESTATE;
    if (strlen(channel) >= sizeof(c->sub_chan))
        return WP_EINVAL_INPUT;
    snprintf(c->sub_chan, sizeof(c->sub_chan), "%s", channel);
    c->sub_cb = cb;
    c->sub_ctx = ctx;
    return sub_connect(c, -1);
}

/* Periodic: a fresh map now and then (sooner while a master is down), and
 * a subscription whose node stays unreachable moves to a live master (a
 * cluster hands PUBLISH to every node, so any serves it). */
static void refresh_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct wp_rcl *c = w->data;
    double now = ev_now(loop);
    bool down = false;
    (void)revents;
    for (int i = 0; i < c->nnodes && c->have_map; i++)
        down |= c->master[i] && !wp_redis_ready(c->nodes[i].r);
    if (!c->have_map || now - c->map_at >= (down ? WP_RCL_REFRESH_FAST_S : WP_RCL_REFRESH_S))
        want_map(c);
    if (!c->sub)
        return;
    if (wp_redis_ready(c->sub)) {
        c->sub_down_at = 0;
        return;
    }
    if (c->sub_down_at == 0) {
        c->sub_down_at = now;
        return;
    }
    if (now - c->sub_down_at < SUB_MOVE_S)
        return;
    int from = c->sub_node;
    if (sub_connect(c, from) == 0 && c->sub_node != from) {
        c->stats.sub_moves++;
        log_warn("redis cluster conn=%s: subscription %s moved from %s:%d to %s:%d", c->name,
                 c->sub_chan, c->nodes[from].host, c->nodes[from].port,
                 c->nodes[c->sub_node].host, c->nodes[c->sub_node].port);
    }
}

struct wp_rcl *wp_rcl_new(struct ev_loop *loop, const char *seeds, const char *name,
                          struct wp_err *err)
{
    struct wp_rcl *c = calloc(1, sizeof(*c));
    if (!c) {
        wp_err_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    c->loop = loop;
    snprintf(c->name, sizeof(c->name), "%s", name);
    for (int s = 0; s < WP_RCL_SLOTS; s++)
        c->slot[s] = -1;
    ev_timer_init(&c->tick, tick_cb, TICK_S, TICK_S);
    c->tick.data = c;
    ev_timer_init(&c->refresh, refresh_cb, WP_RCL_REFRESH_FAST_S, WP_RCL_REFRESH_FAST_S);
    c->refresh.data = c;
    ev_timer_start(loop, &c->refresh);
    ev_unref(loop); /* housekeeping: it keeps no loop running by itself */
    const char *p = seeds;
    while (p && *p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char host[128];
        int port;
        if (wp__rcl_addr(p, len, NULL, host, sizeof(host), &port) < 0 ||
            node_index(c, host, port) < 0) {
            wp_err_set(err, WP_ECONFIG, "redis cluster seed '%.*s': want HOST:PORT", (int)len, p);
            wp_rcl_free(c);
            return NULL;
        }
        p = comma ? comma + 1 : NULL;
    }
    if (c->nnodes == 0) {
        wp_err_set(err, WP_ECONFIG, "redis cluster: no seed nodes");
        wp_rcl_free(c);
        return NULL;
    }
    want_map(c);
    return c;
}

void wp_rcl_free(struct wp_rcl *c)
{
    if (!c)
        return;
    c->closing = true;
    ev_timer_stop(c->loop, &c->tick);
    if (ev_is_active(&c->refresh)) {
        ev_ref(c->loop);
        ev_timer_stop(c->loop, &c->refresh);
    }
    struct rcmd *m = c->waiting;
    c->waiting = NULL;
    while (m) {
        struct rcmd *next = m->next;
        finish(m, NULL);
        m = next;
    }
    /* Their pending commands get NULL replies now, or, when this runs
     * inside a reply callback of one of them, once that returns (owed). */
    for (int i = 0; i < c->nnodes; i++)
        wp_redis_free(c->nodes[i].r);
    wp_redis_free(c->sub);
    if (c->owed > 0)
        c->freed = true;
    else
        free(c);
}

bool wp_rcl_ready(const struct wp_rcl *c)
{
    if (c->sub && !wp_redis_ready(c->sub))
        return false;
    if (!c->have_map || !c->covered)
        return false;
    for (int i = 0; i < c->nnodes; i++)
        if (c->master[i] && !wp_redis_ready(c->nodes[i].r))
            return false;
    return true;
}

void wp_rcl_set_wait(struct wp_rcl *c, int replicas, int timeout_ms)
{
    c->wait_n = replicas;
    c->wait_ms = timeout_ms;
    for (int i = 0; i < c->nnodes; i++)
        wp_redis_set_wait(c->nodes[i].r, replicas, timeout_ms);
}

void wp_rcl_stats(const struct wp_rcl *c, struct wp_rcl_stats *st)
{
    *st = c->stats;
}
