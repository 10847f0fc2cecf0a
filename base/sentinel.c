/* sentinel.c - asking Redis Sentinels where the primary is.
 *
 * One short-lived hiredis connection per sentinel tried: connect, SENTINEL
 * get-master-addr-by-name, close. A sentinel that does not answer within
 * ASK_TIMEOUT is skipped (hiredis 0.14 has no connect timeout of its own).
 * The sentinel that answered last is asked first next time.
 */
#define WP_LOG_COMPONENT "redis"
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <ev.h>
#include <hiredis/adapters/libev.h>
#include <hiredis/hiredis.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/redis.h"
#include "base/sentinel.h"

#define ASK_TIMEOUT 1.0

static struct {
    int n;
    char host[WP_SENTINEL_MAX][128];
    int port[WP_SENTINEL_MAX];
    char master[128];
    char pass[512]; /* "" = sentinels want no AUTH */
} cfg;
static atomic_int good; /* index of the sentinel that answered last */

int wp_sentinel_set(const char *list, const char *master, struct wp_err *err)
{
    char buf[WP_SENTINEL_MAX * 140];
    int n = 0;

    if (!list || !list[0] || !master || !master[0])
        return wp_err_set(err, WP_ECONFIG, "redis sentinels need both a list and a master name");
    if (strlen(master) >= sizeof(cfg.master) || strpbrk(master, " \t\r\n"))
        return wp_err_set(err, WP_ECONFIG, "redis master name '%s': too long or has spaces",
                          master);
    if (strlen(list) >= sizeof(buf))
        return wp_err_set(err, WP_ECONFIG, "redis sentinel list too long");
    snprintf(buf, sizeof(buf), "%s", list);
    char hosts[WP_SENTINEL_MAX][128];
    int ports[WP_SENTINEL_MAX];
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *colon = strrchr(t, ':'), *end;
        long p = colon ? strtol(colon + 1, &end, 10) : 0;
        if (!colon || colon == t || !colon[1] || *end || p < 1 || p > 65535 ||
            colon - t >= (long)sizeof(hosts[0]))
            return wp_err_set(err, WP_ECONFIG, "redis sentinel '%s': want HOST:PORT", t);
        if (n == WP_SENTINEL_MAX)
            return wp_err_set(err, WP_ECONFIG, "more than %d redis sentinels", WP_SENTINEL_MAX);
        snprintf(hosts[n], sizeof(hosts[n]), "%.*s", (int)(colon - t), t);
        ports[n++] = (int)p;
    }
    if (n == 0)
        return wp_err_set(err, WP_ECONFIG, "redis sentinel list '%s' is empty", list);
    memcpy(cfg.host, hosts, sizeof(hosts));
    memcpy(cfg.port, ports, sizeof(ports));
    snprintf(cfg.master, sizeof(cfg.master), "%s", master);
    cfg.n = n;
    return 0;
}

int wp_sentinel_auth_file(const char *path, struct wp_err *err)
{
    return wp_read_secret_line(path, cfg.pass, sizeof(cfg.pass), err);
}

bool wp_sentinel_on(void)
{
    return cfg.n > 0;
}

const char *wp_sentinel_master(void)
{
    return cfg.master;
}

/* A reply to get-master-addr-by-name: [host, port]. 0 and the address,
 * or < 0 with why (nil: the name is unknown to this sentinel). */
static int parse_addr(const redisReply *rep, char *host, size_t cap, int *port, const char **why)
{
    *why = "no reply";
    if (!rep)
        return -1;
    if (rep->type == REDIS_REPLY_ERROR) {
        *why = rep->str;
        return -1;
    }
    if (rep->type == REDIS_REPLY_NIL) {
        *why = "master name unknown";
        return -1;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING || rep->element[1]->type != REDIS_REPLY_STRING ||
        rep->element[0]->len == 0 || rep->element[0]->len >= cap) {
        *why = "malformed reply";
        return -1;
    }
    char *end;
    long p = strtol(rep->element[1]->str, &end, 10);
    if (*end || p < 1 || p > 65535) {
        *why = "malformed port";
        return -1;
    }
    memcpy(host, rep->element[0]->str, rep->element[0]->len);
    host[rep->element[0]->len] = '\0';
    *port = (int)p;
    return 0;
}

struct wp_sentinel_ask {
    struct ev_loop *loop;
    wp_sentinel_cb cb;
    void *ctx;
    int tried;             /* sentinels asked so far */
    int idx;               /* the one asked now */
    redisAsyncContext *ac; /* its connection, NULL between tries */
    ev_timer timer;        /* its deadline; 0 s between tries (never re-entrant) */
};

static void try_next(struct wp_sentinel_ask *a);

/* Drop the current sentinel's connection (pending reply: NULL, ignored). */
static void drop_conn(struct wp_sentinel_ask *a)
{
    if (a->ac) {
        redisAsyncContext *ac = a->ac;
        a->ac = NULL;
        ac->data = NULL;
        redisAsyncFree(ac); /* deferred by hiredis when inside its callback */
    }
}

static void done(struct wp_sentinel_ask *a, const char *host, int port)
{
    wp_sentinel_cb cb = a->cb;
    void *ctx = a->ctx;
    ev_timer_stop(a->loop, &a->timer);
    drop_conn(a);
    free(a);
    cb(ctx, host, port);
}

/* Move on from a failed sentinel from the timer, not from inside a hiredis
 * callback, so a connection is never made while another is being freed. */
static void fail_one(struct wp_sentinel_ask *a, const char *why)
{
    log_warn("redis sentinel %s:%d: %s", cfg.host[a->idx], cfg.port[a->idx], why);
    drop_conn(a);
    ev_timer_stop(a->loop, &a->timer);
    ev_timer_set(&a->timer, 0., 0.);
    ev_timer_start(a->loop, &a->timer);
}

static void addr_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct wp_sentinel_ask *a = privdata;
    char host[128];
    int port;
    const char *why;
    if (ac->data != a)
        return; /* dropped meanwhile */
    if (parse_addr(reply, host, sizeof(host), &port, &why) < 0) {
        fail_one(a, why);
        return;
    }
    atomic_store(&good, a->idx);
    done(a, host, port);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct wp_sentinel_ask *a = ac->data;
    if (!a || status == REDIS_OK)
        return;
    /* hiredis frees the context after this callback, and gives the
     * pending reply NULL first: detach so only this failure counts. */
    ((redisAsyncContext *)ac)->data = NULL;
    a->ac = NULL;
    fail_one(a, ac->errstr);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct wp_sentinel_ask *a = ac->data;
    (void)status;
    if (!a)
        return;
    ((redisAsyncContext *)ac)->data = NULL;
    a->ac = NULL;
    fail_one(a, "connection closed");
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct wp_sentinel_ask *a = w->data;
    (void)loop;
    (void)revents;
    if (a->ac) {
        log_warn("redis sentinel %s:%d: no answer within %.1f s", cfg.host[a->idx],
                 cfg.port[a->idx], ASK_TIMEOUT);
        drop_conn(a);
    }
    try_next(a);
}

/* A refused AUTH is said here; the command queued after it then fails
 * with NOAUTH and the caller moves on to the next sentinel. */
static void auth_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redisReply *rep = reply;
    int idx = (int)(intptr_t)privdata;
    (void)ac;
    if (rep && rep->type == REDIS_REPLY_ERROR)
        log_warn("redis sentinel %s:%d refused AUTH: %s", cfg.host[idx], cfg.port[idx], rep->str);
}

/* A connection to sentinel idx on loop, data and callbacks set, AUTH
 * queued first when the sentinels want a password; NULL if it could not
 * even start. */
static redisAsyncContext *sentinel_conn(struct ev_loop *loop, int idx, void *data,
                                        redisConnectCallback *on_conn,
                                        redisDisconnectCallback *on_disc)
{
    redisAsyncContext *ac = redisAsyncConnect(cfg.host[idx], cfg.port[idx]);
    if (!ac || ac->err) {
        if (ac)
            redisAsyncFree(ac);
        return NULL;
    }
    ac->data = data;
    wp_redis_net_deadline(ac->c.fd);
    redisLibevAttach(loop, ac);
    redisAsyncSetConnectCallback(ac, on_conn);
    redisAsyncSetDisconnectCallback(ac, on_disc);
    if (cfg.pass[0]) {
        const char *argv[] = { "AUTH", cfg.pass };
        redisAsyncCommandArgv(ac, auth_reply, (void *)(intptr_t)idx, 2, argv, NULL);
    }
    return ac;
}

static void try_next(struct wp_sentinel_ask *a)
{
    if (a->tried == cfg.n) {
        done(a, NULL, 0);
        return;
    }
    a->idx = (atomic_load(&good) + a->tried++) % cfg.n;
    redisAsyncContext *ac = sentinel_conn(a->loop, a->idx, a, on_connect, on_disconnect);
    if (!ac) {
        fail_one(a, "cannot connect");
        return;
    }
    const char *argv[] = { "SENTINEL", "get-master-addr-by-name", cfg.master };
    a->ac = ac;
    redisAsyncCommandArgv(ac, addr_reply, a, 3, argv, NULL);
    ev_timer_stop(a->loop, &a->timer);
    ev_timer_set(&a->timer, ASK_TIMEOUT, 0.);
    ev_timer_start(a->loop, &a->timer);
}

struct wp_sentinel_ask *wp_sentinel_ask(struct ev_loop *loop, wp_sentinel_cb cb, void *ctx)
{
    if (!wp_sentinel_on())
        return NULL;
    struct wp_sentinel_ask *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->loop = loop;
    a->cb = cb;
    a->ctx = ctx;
    ev_timer_init(&a->timer, timer_cb, 0., 0.);
    a->timer.data = a;
    /* First try from the loop too: cb never runs inside this call. */
    ev_timer_start(loop, &a->timer);
    return a;
}

void wp_sentinel_ask_cancel(struct wp_sentinel_ask *a)
{
    if (!a)
        return;
    ev_timer_stop(a->loop, &a->timer);
    drop_conn(a);
    free(a);
}

/* AUTH on a synchronous sentinel connection when wanted: 0, or -1 and
 * why (valid until the next command on c). */
static int sync_auth(redisContext *c, const char **why)
{
    static char said[256];
    if (!cfg.pass[0])
        return 0;
    redisReply *rep = redisCommand(c, "AUTH %s", cfg.pass);
    if (rep && rep->type != REDIS_REPLY_ERROR) {
        freeReplyObject(rep);
        return 0;
    }
    snprintf(said, sizeof(said), "AUTH refused: %s", rep ? rep->str : c->errstr);
    freeReplyObject(rep);
    *why = said;
    return -1;
}

int wp_sentinel_ask_sync(char *host, size_t hostcap, int *port, struct wp_err *err)
{
    char whys[WP_SENTINEL_MAX * 64] = "";
    size_t used = 0;
    if (!wp_sentinel_on())
        return wp_err_set(err, WP_ESTATE, "no redis sentinels configured");
    for (int i = 0; i < cfg.n; i++) {
        struct timeval tv = { (time_t)ASK_TIMEOUT, 0 };
        redisContext *c = redisConnectWithTimeout(cfg.host[i], cfg.port[i], tv);
        redisReply *rep = NULL;
        const char *why = "out of memory";
        int rc = -1;
        if (c && !c->err && redisSetTimeout(c, tv) == REDIS_OK) {
            if (sync_auth(c, &why) == 0) {
                rep = redisCommand(c, "SENTINEL get-master-addr-by-name %s", cfg.master);
                rc = parse_addr(rep, host, hostcap, port, &why);
                if (!rep)
                    why = c->errstr;
            }
        } else if (c) {
            why = c->errstr;
        }
        if (rc == 0) {
            freeReplyObject(rep);
            redisFree(c);
            return 0;
        }
        if (used < sizeof(whys))
            used += (size_t)snprintf(whys + used, sizeof(whys) - used, "%s%s:%d: %.60s",
                                     i ? "; " : "", cfg.host[i], cfg.port[i], why);
        freeReplyObject(rep);
        redisFree(c);
    }
    return wp_err_set(err, WP_ECONFIG, "no redis sentinel knows master '%s' (%s)", cfg.master,
                      whys);
}

/* --- +switch-master ------------------------------------------------------- */

struct wp_sentinel_watch {
    struct ev_loop *loop;
    wp_sentinel_cb cb;
    void *ctx;
    int idx;               /* the sentinel subscribed to */
    redisAsyncContext *ac; /* NULL between tries */
    ev_timer retry;
};

static void watch_later(struct wp_sentinel_watch *w)
{
    w->ac = NULL;
    w->idx = (w->idx + 1) % cfg.n;
    ev_timer_stop(w->loop, &w->retry);
    ev_timer_set(&w->retry, 1., 0.);
    ev_timer_start(w->loop, &w->retry);
}

/* ["message", "+switch-master", "<name> <old ip> <old port> <new ip> <new port>"] */
static void switch_msg(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct wp_sentinel_watch *w = privdata;
    redisReply *rep = reply;
    char name[128], oldh[128], newh[128];
    int oldp, newp;
    if (!rep || ac->data != w || rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
        rep->element[2]->type != REDIS_REPLY_STRING)
        return; /* detached, or the subscribe confirmation */
    if (sscanf(rep->element[2]->str, "%127s %127s %d %127s %d", name, oldh, &oldp, newh,
               &newp) != 5 ||
        strcmp(name, cfg.master) || newp < 1 || newp > 65535)
        return;
    log_info("redis sentinel: master '%s' switched %s:%d -> %s:%d", name, oldh, oldp, newh, newp);
    w->cb(w->ctx, newh, newp);
}

static void watch_connected(const redisAsyncContext *ac, int status)
{
    struct wp_sentinel_watch *w = ac->data;
    if (!w || status == REDIS_OK)
        return;
    ((redisAsyncContext *)ac)->data = NULL;
    watch_later(w);
}

static void watch_disconnected(const redisAsyncContext *ac, int status)
{
    struct wp_sentinel_watch *w = ac->data;
    (void)status;
    if (!w)
        return;
    ((redisAsyncContext *)ac)->data = NULL;
    watch_later(w);
}

static void watch_retry(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct wp_sentinel_watch *w = t->data;
    (void)loop;
    (void)revents;
    if (w->ac)
        return;
    redisAsyncContext *ac = sentinel_conn(w->loop, w->idx, w, watch_connected, watch_disconnected);
    if (!ac) {
        watch_later(w);
        return;
    }
    const char *argv[] = { "SUBSCRIBE", "+switch-master" };
    w->ac = ac;
    redisAsyncCommandArgv(ac, switch_msg, w, 2, argv, NULL);
}

struct wp_sentinel_watch *wp_sentinel_watch_new(struct ev_loop *loop, wp_sentinel_cb cb,
                                                void *ctx)
{
    if (!wp_sentinel_on())
        return NULL;
    struct wp_sentinel_watch *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    *w = (struct wp_sentinel_watch){ .loop = loop, .cb = cb, .ctx = ctx,
                                     .idx = atomic_load(&good) };
    ev_timer_init(&w->retry, watch_retry, 0., 0.);
    w->retry.data = w;
    ev_timer_start(loop, &w->retry);
    return w;
}

void wp_sentinel_watch_free(struct wp_sentinel_watch *w)
{
    if (!w)
        return;
    ev_timer_stop(w->loop, &w->retry);
    if (w->ac) {
        w->ac->data = NULL;
        redisAsyncFree(w->ac);
    }
    free(w);
}
