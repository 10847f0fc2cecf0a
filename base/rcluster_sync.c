/* rcluster_sync.c - Redis Cluster routing for the synchronous CLIs.
 *
 * The slot map from CLUSTER SLOTS, a blocking hiredis context per node
 * made when first needed, MOVED (map entry updated, resent) and ASK
 * (ASKING, resent) followed. A command's key is read back from its
 * formatted form, so callers keep hiredis' printf-style formatting.
 */
#define WP_LOG_COMPONENT "redis"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/log.h"
#include "base/rcluster.h"
#include "base/rcluster_int.h"

#define MAX_ARGS 64 /* looked at for the key (XREAD's STREAMS) */

struct snode {
    char host[128];
    int port;
    redisContext *c; /* NULL until used, or after an I/O error */
};

struct wp_rcl_sync {
    int nnodes;
    struct snode nodes[WP_RCL_MAX_NODES];
    int16_t slot[WP_RCL_SLOTS];
    bool master[WP_RCL_MAX_NODES];
};

static int node_index(struct wp_rcl_sync *s, const char *host, int port)
{
    for (int i = 0; i < s->nnodes; i++)
        if (s->nodes[i].port == port && !strcmp(s->nodes[i].host, host))
            return i;
    if (s->nnodes == WP_RCL_MAX_NODES || strlen(host) >= sizeof(s->nodes[0].host))
        return -1;
    struct snode *n = &s->nodes[s->nnodes];
    snprintf(n->host, sizeof(n->host), "%s", host);
    n->port = port;
    n->c = NULL;
    return s->nnodes++;
}

static redisContext *ctx_of(struct wp_rcl_sync *s, int i, struct wp_err *err)
{
    if (!s->nodes[i].c)
        s->nodes[i].c = wp_redis_connect_sync_addr(s->nodes[i].host, s->nodes[i].port, err);
    return s->nodes[i].c;
}

/* The context died mid-command: drop it (made again on next use). */
static void drop(struct wp_rcl_sync *s, int i)
{
    redisFree(s->nodes[i].c);
    s->nodes[i].c = NULL;
}

/* CLUSTER SLOTS from node i. 0, or < 0 with err. */
static int load_map_from(struct wp_rcl_sync *s, int i, struct wp_err *err)
{
    redisContext *c = ctx_of(s, i, err);
    if (!c)
        return WP_ECONFIG;
    redisReply *rep = redisCommand(c, "CLUSTER SLOTS");
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        int rc = wp_err_set(err, WP_ECONFIG, "CLUSTER SLOTS at %s:%d: %s", s->nodes[i].host,
                            s->nodes[i].port,
                            rep && rep->type == REDIS_REPLY_ERROR ? rep->str
                            : rep                                 ? "not an array"
                                                                  : c->errstr);
        if (!rep)
            drop(s, i);
        freeReplyObject(rep);
        return rc;
    }
    int16_t slots[WP_RCL_SLOTS];
    for (int k = 0; k < WP_RCL_SLOTS; k++)
        slots[k] = -1;
    for (size_t e = 0; e < rep->elements; e++) {
        struct wp__rcl_range rg;
        int n;
        if (wp__rcl_map_entry(rep->element[e], s->nodes[i].host, &rg) < 0 ||
            (n = node_index(s, rg.host, rg.port)) < 0) {
            freeReplyObject(rep);
            return wp_err_set(err, WP_EPROTO, "malformed CLUSTER SLOTS from %s:%d",
                              s->nodes[i].host, s->nodes[i].port);
        }
        for (int k = rg.lo; k <= rg.hi; k++)
            slots[k] = (int16_t)n;
    }
    freeReplyObject(rep);
    memcpy(s->slot, slots, sizeof(slots));
    memset(s->master, 0, sizeof(s->master));
    for (int k = 0; k < WP_RCL_SLOTS; k++)
        if (slots[k] >= 0)
            s->master[slots[k]] = true;
    return 0;
}

static int load_map(struct wp_rcl_sync *s, struct wp_err *err)
{
    int rc = WP_ECONFIG;
    for (int i = 0; i < s->nnodes; i++)
        if ((rc = load_map_from(s, i, err)) == 0)
            return 0;
    return rc;
}

struct wp_rcl_sync *wp_rcl_sync_new(struct wp_err *err)
{
    if (!wp_rcl_on()) {
        wp_err_set(err, WP_ESTATE, "no redis cluster configured");
        return NULL;
    }
    struct wp_rcl_sync *s = calloc(1, sizeof(*s));
    if (!s) {
        wp_err_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    for (const char *p = wp_rcl_seeds(); p && *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char host[128];
        int port;
        if (wp__rcl_addr(p, len, NULL, host, sizeof(host), &port) == 0)
            node_index(s, host, port); /* checked by wp_rcl_set */
        p = comma ? comma + 1 : NULL;
    }
    if (load_map(s, err) < 0) {
        wp_err_wrap(err, "redis cluster");
        wp_rcl_sync_free(s);
        return NULL;
    }
    return s;
}

void wp_rcl_sync_free(struct wp_rcl_sync *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->nnodes; i++)
        redisFree(s->nodes[i].c);
    free(s);
}

/* The slot of a formatted command's first key, or -1 (keyless, or not a
 * RESP array of bulk strings). */
static int slot_of(const char *cmd, size_t len)
{
    const char *argv[MAX_ARGS];
    size_t lens[MAX_ARGS];
    const char *p = cmd, *end = cmd + len;
    char *e;
    if (len < 4 || *p != '*')
        return -1;
    long n = strtol(p + 1, &e, 10);
    if (n < 1 || e + 2 > end || e[0] != '\r')
        return -1;
    p = e + 2;
    int argc = 0;
    for (long i = 0; i < n && argc < MAX_ARGS; i++) {
        if (p >= end || *p != '$')
            return -1;
        long l = strtol(p + 1, &e, 10);
        if (l < 0 || e + 2 > end || end - (e + 2) < l + 2)
            return -1;
        argv[argc] = e + 2;
        lens[argc++] = (size_t)l;
        p = e + 2 + l + 2;
    }
    int k = wp__rcl_first_key(argc, argv, lens);
    return k < 0 ? -1 : wp_rcl_keyslot(argv[k], lens[k]);
}

/* "MOVED <slot> <host>:<port>" / "ASK ...": the node named, or -1. */
static int redirect_node(struct wp_rcl_sync *s, const char *msg, int from, int *slot)
{
    const char *sp = strchr(msg, ' ');
    char *e, host[128];
    int port;
    long sl = sp ? strtol(sp + 1, &e, 10) : -1;
    if (!sp || sl < 0 || sl >= WP_RCL_SLOTS || *e != ' ' ||
        wp__rcl_addr(e + 1, strlen(e + 1), s->nodes[from].host, host, sizeof(host), &port) < 0)
        return -1;
    *slot = (int)sl;
    return node_index(s, host, port);
}

redisReply *wp_rcl_sync_formatted(struct wp_rcl_sync *s, const char *cmd, size_t len,
                                  struct wp_err *err)
{
    int slot = slot_of(cmd, len), node = slot >= 0 ? s->slot[slot] : -1;
    bool asking = false;
    for (int i = 0; node < 0 && i < s->nnodes; i++)
        if (s->master[i])
            node = i;
    for (int hop = 0; node >= 0 && hop <= WP_RCL_MAX_HOPS; hop++) {
        redisContext *c = ctx_of(s, node, err);
        redisReply *rep = NULL;
        if (!c)
            return NULL;
        if ((asking && redisAppendCommand(c, "ASKING") != REDIS_OK) ||
            redisAppendFormattedCommand(c, cmd, len) != REDIS_OK ||
            (asking && redisGetReply(c, (void **)&rep) != REDIS_OK)) {
            wp_err_set(err, WP_ECONFIG, "redis %s:%d: %s", s->nodes[node].host,
                       s->nodes[node].port, c->errstr);
            drop(s, node);
            return NULL;
        }
        freeReplyObject(rep); /* ASKING's +OK */
        rep = NULL;
        if (redisGetReply(c, (void **)&rep) != REDIS_OK || !rep) {
            wp_err_set(err, WP_ECONFIG, "redis %s:%d: %s", s->nodes[node].host,
                       s->nodes[node].port, c->errstr);
            drop(s, node);
            return NULL;
        }
        bool moved = rep->type == REDIS_REPLY_ERROR && !strncmp(rep->str, "MOVED ", 6);
        asking = rep->type == REDIS_REPLY_ERROR && !strncmp(rep->str, "ASK ", 4);
        if (!moved && !asking)
            return rep;
        int to = redirect_node(s, rep->str, node, &slot);
        if (to < 0 || hop == WP_RCL_MAX_HOPS)
            return rep; /* the caller sees the redirect it could not follow */
        if (moved) {
            s->slot[slot] = (int16_t)to;
            s->master[to] = true;
        }
        freeReplyObject(rep);
        node = to;
    }
    wp_err_set(err, WP_ESTATE, "redis cluster: no master known");
    return NULL;
}

int wp_rcl_sync_masters(struct wp_rcl_sync *s, redisContext **out, int cap, struct wp_err *err)
{
    int n = 0;
    for (int i = 0; i < s->nnodes && n < cap; i++) {
        if (!s->master[i])
            continue;
        if (!(out[n] = ctx_of(s, i, err)))
            return WP_ECONFIG;
        n++;
    }
    return n;
}
