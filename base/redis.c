/* redis.c - one hiredis async connection on libev, with reconnects.
 *
 * hiredis 0.14 owns and frees its context after the disconnect callback;
 * we only drop our pointer there and reconnect later from an ev_timer with
 * capped exponential backoff and jitter (style habit 6). Deadlines are kept
 * by the callers (hiredis 0.14 has no per-command timeout).
 */
#define WP_LOG_COMPONENT "redis"
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/adapters/libev.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>

#include "base/log.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/rcluster.h"
#include "base/redis.h"
#include "base/sentinel.h"

/* A script this connection has run (wp_redis_script): the caller's text
 * (the lookup key), our copy of it (compared at each lookup, and what a
 * NOSCRIPT retry sends after the caller's call returned), its SHA1 in hex,
 * and the connection it last went out as EVAL on (Redis has it there,
 * unless SCRIPT FLUSH). Freed with the connection. */
struct script {
    const char *key;
    char *text;
    size_t len;
    char sha[41];
    unsigned sent_conn; /* wp_redis.conn when last sent as EVAL; 0: never */
};
#define MAX_SCRIPTS 128 /* more (scripts made at run time?): plain EVAL */

struct wp_redis {
    struct wp_rcl *rcl;    /* cluster mode: everything below is unused */
    struct ev_loop *loop;
    redisAsyncContext *ac; /* NULL while disconnected */
    unsigned conn;         /* counts connections made: a new one has no scripts */
    struct script *scripts[MAX_SCRIPTS];
    int n_scripts;
    bool connected;
    bool closing;
    char host[128];
    int port;
    char name[32];
    double backoff;
    ev_timer retry;
    struct wp_sentinel_ask *ask; /* asking the sentinels for host:port */
    struct wp_redis *next_all, *prev_all; /* every connection (sentinel mode) */
    bool kick; /* the master moved: close from retry_cb */
    int wait_n, wait_ms; /* wp_redis_set_wait */
    /* One subscription, renewed after every reconnect. */
    char sub_chan[128];
    wp_redis_cb sub_cb;
    void *sub_ctx;
};

static void sub_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct wp_redis *r = privdata;
    (void)ac;
    /* hiredis calls this for the subscribe confirmation and every message
     * with the same privdata: nothing here is freed per reply. */
    if (reply && r && r->sub_cb)
        r->sub_cb(r->sub_ctx, reply);
}

static void subscribe_now(struct wp_redis *r)
{
    const char *argv[] = { "SUBSCRIBE", r->sub_chan };
    if (r->ac && r->sub_cb)
        redisAsyncCommandArgv(r->ac, sub_reply, r, 2, argv, NULL);
}

struct cmd {
    wp_redis_cb cb;
    void *ctx;
};

static void schedule_retry(struct wp_redis *r);

/* See wp_redis_auth_file. */
static struct {
    bool set;
    char user[128];
    char pass[512];
} auth;

int wp_redis_auth_file(const char *user, const char *path, struct wp_err *err)
{
    char pass[sizeof(auth.pass)];
    if (user && strlen(user) >= sizeof(auth.user))
        return wp_err_set(err, WP_ECONFIG, "redis user name too long");
    if (wp_read_secret_line(path, pass, sizeof(pass), err) < 0)
        return -1;
    snprintf(auth.user, sizeof(auth.user), "%s", user ? user : "");
    memcpy(auth.pass, pass, sizeof(auth.pass));
    explicit_bzero(pass, sizeof(pass));
    auth.set = true;
    return 0;
}

static int net_timeout_ms = WP_REDIS_NET_TIMEOUT_MS;

void wp_redis_set_net_timeout(int ms)
{
    net_timeout_ms = ms > 0 ? ms : 0;
}

void wp_redis_net_deadline(int fd)
{
    if (fd < 0 || net_timeout_ms <= 0)
        return;
    /* Probes start after a third of the bound idle, every sixth of it:
     * an idle connection to a dead peer (a blocked XREAD, a subscription)
     * is dropped about when a busy one is. Failures are harmless (a unix
     * socket): the kernel's defaults stay. */
    int one = 1, idle = net_timeout_ms / 3000, intvl = net_timeout_ms / 6000, cnt = 3;
    unsigned int ut = (unsigned int)net_timeout_ms;
    idle = idle > 0 ? idle : 1;
    intvl = intvl > 0 ? intvl : 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, sizeof(ut));
}

static int auth_argv(const char *argv[3])
{
    argv[0] = "AUTH";
    if (auth.user[0]) {
        argv[1] = auth.user;
        argv[2] = auth.pass;
        return 3;
    }
    argv[1] = auth.pass;
    return 2;
}

int wp_redis_auth_sync(redisContext *c, struct wp_err *err)
{
    const char *argv[3];
    if (!auth.set)
        return 0;
    int argc = auth_argv(argv);
    redisReply *r = redisCommandArgv(c, argc, argv, NULL);
    int rc = 0;
    if (!r || r->type == REDIS_REPLY_ERROR)
        rc = wp_err_set(err, WP_ECONFIG, "redis AUTH: %s", r ? r->str : c->errstr);
    freeReplyObject(r);
    return rc;
}

static void ready_now(struct wp_redis *r)
{
    r->connected = true;
    r->backoff = 0;
    subscribe_now(r);
    log_debug("redis connected conn=%s %s:%d", r->name, r->host, r->port);
}

/* Sentinel mode: a sentinel may still name the old primary (before the
 * failover ends, or a stale one): only a master's connection is ready. */
static void role_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct wp_redis *r = privdata;
    redisReply *rep = reply;
    if (!r || ac->data != r)
        return;
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 &&
        rep->element[0]->type == REDIS_REPLY_STRING && !strcmp(rep->element[0]->str, "master")) {
        ready_now(r);
        return;
    }
    log_warn("redis conn=%s %s:%d is not the master (%s): asking the sentinels again", r->name,
             r->host, r->port, rep && rep->type == REDIS_REPLY_ERROR ? rep->str : "ROLE");
    redisAsyncDisconnect(ac); /* on_disconnect schedules the retry */
}

static void connected_now(struct wp_redis *r)
{
    if (wp_sentinel_on()) {
        const char *argv[] = { "ROLE" };
        redisAsyncCommandArgv(r->ac, role_reply, r, 1, argv, NULL);
        return;
    }
    ready_now(r);
}

redisContext *wp_redis_connect_sync_addr(const char *host, int port, struct wp_err *err)
{
    struct timeval tv = { 5, 0 };
    redisContext *c = redisConnectWithTimeout(host, port, tv);
    if (!c || c->err) {
        wp_err_set(err, WP_ECONFIG, "cannot reach redis at %s:%d: %s", host, port,
                   c ? c->errstr : "out of memory");
        redisFree(c);
        return NULL;
    }
    if (wp_redis_auth_sync(c, err) < 0) {
        redisFree(c);
        return NULL;
    }
    /* Commands then block at most this long (a dead peer is an error). */
    redisSetTimeout(c, (struct timeval){ 30, 0 });
    return c;
}

redisContext *wp_redis_connect_sync(const char *host, int port, struct wp_err *err)
{
    char mhost[128];
    int mport = port;
    if (wp_rcl_on()) {
        wp_err_set(err, WP_ECONFIG, "this tool does not speak Redis Cluster yet "
                                    "(--redis-cluster): give it one master with --redis");
        return NULL;
    }
    snprintf(mhost, sizeof(mhost), "%s", host);
    if (wp_sentinel_on() && wp_sentinel_ask_sync(mhost, sizeof(mhost), &mport, err) < 0)
        return NULL;
    redisContext *c = wp_redis_connect_sync_addr(mhost, mport, err);
    if (!c)
        return NULL;
    if (wp_sentinel_on()) {
        redisReply *rep = redisCommand(c, "ROLE");
        bool master = rep && rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 &&
                      rep->element[0]->type == REDIS_REPLY_STRING &&
                      !strcmp(rep->element[0]->str, "master");
        freeReplyObject(rep);
        if (!master) {
            wp_err_set(err, WP_ESTATE,
                       "redis at %s:%d, named by the sentinels as master '%s', is not a master "
                       "(a failover in progress?): try again",
                       mhost, mport, wp_sentinel_master());
            redisFree(c);
            return NULL;
        }
    }
    return c;
}

static void auth_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct wp_redis *r = privdata;
    redisReply *rep = reply;
    if (!r || ac->data != r)
        return; /* freed or detached meanwhile */
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        /* Wrong credentials heal only by configuration: say it, keep
         * retrying at the capped backoff. */
        log_error("redis AUTH refused conn=%s: %s", r->name, rep ? rep->str : "no reply");
        redisAsyncDisconnect(ac); /* on_disconnect schedules the retry */
        return;
    }
    connected_now(r);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct wp_redis *r = ac->data;
    if (!r)
        return; /* detached by wp_redis_free */
    if (status != REDIS_OK) {
        log_warn("redis connect failed conn=%s err=%s", r->name, ac->errstr);
        r->ac = NULL; /* hiredis frees the context after this callback */
        schedule_retry(r);
        return;
    }
    if (auth.set)
        return; /* ready once AUTH is accepted (auth_reply) */
    connected_now(r);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct wp_redis *r = ac->data;
    if (!r)
        return;
    r->ac = NULL;
    r->connected = false;
    if (r->closing)
        return;
    log_warn("redis disconnected conn=%s status=%d", r->name, status);
    schedule_retry(r);
}

static void connect_addr(struct wp_redis *r)
{
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);
    if (!ac || ac->err) {
        log_warn("redis connect conn=%s err=%s", r->name, ac ? ac->errstr : "oom");
        if (ac)
            redisAsyncFree(ac);
        schedule_retry(r);
        return;
    }
    ac->data = r;
    r->conn++;
    wp_redis_net_deadline(ac->c.fd);
    redisLibevAttach(r->loop, ac);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    if (auth.set) {
        /* Queued before anything else: Redis reads it first. */
        const char *argv[3];
        int argc = auth_argv(argv);
        redisAsyncCommandArgv(ac, auth_reply, r, argc, argv, NULL);
    }
}

static void sentinel_answer(void *ctx, const char *host, int port)
{
    struct wp_redis *r = ctx;
    r->ask = NULL;
    if (!host) {
        log_warn("redis conn=%s: no sentinel knows master '%s'", r->name, wp_sentinel_master());
        schedule_retry(r);
        return;
    }
    snprintf(r->host, sizeof(r->host), "%s", host);
    r->port = port;
    connect_addr(r);
}

/* In sentinel mode the address is asked for again before every connect:
 * that is how a failover is followed. */
static void do_connect(struct wp_redis *r)
{
    if (!wp_sentinel_on()) {
        connect_addr(r);
        return;
    }
    if (!(r->ask = wp_sentinel_ask(r->loop, sentinel_answer, r)))
        schedule_retry(r);
}

static void retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct wp_redis *r = w->data;
    if (r->kick && r->ac) { /* master_switched */
        redisAsyncContext *ac = r->ac;
        r->kick = false;
        r->ac = NULL;
        ac->data = NULL; /* detached: pending replies are NULL, on_disconnect is ours */
        redisAsyncFree(ac);
        schedule_retry(r);
        return;
    }
    r->kick = false;
    if (!r->ac && !r->ask && !r->closing)
        do_connect(r);
}

static void schedule_retry(struct wp_redis *r)
{
    if (r->closing)
        return;
    r->backoff = r->backoff == 0 ? 0.05 : r->backoff * 2;
    if (r->backoff > 2.0)
        r->backoff = 2.0;
    double jitter = r->backoff * (0.75 + 0.25 * ((double)rand() / RAND_MAX));
    ev_timer_stop(r->loop, &r->retry);
    ev_timer_set(&r->retry, jitter, 0.);
    ev_timer_start(r->loop, &r->retry);
}

/* Sentinel mode: every connection of the process (one loop, one thread),
 * and the +switch-master watch they share, made with the first and freed
 * with the last. */
static struct wp_redis *all_conns;
static struct wp_sentinel_watch *watch;

/* A failover announced: connections elsewhere are closed (their pending
 * commands get NULL replies: the old primary may be alive but cut off, and
 * must not take more writes) and reconnect through the sentinels. Each
 * from its own timer (retry_cb): a NULL reply's callback may free others. */
static void master_switched(void *ctx, const char *host, int port)
{
    (void)ctx;
    for (struct wp_redis *r = all_conns; r; r = r->next_all) {
        if (!r->ac || (r->port == port && !strcmp(r->host, host)))
            continue;
        log_warn("redis conn=%s leaves %s:%d: the master moved to %s:%d", r->name, r->host,
                 r->port, host, port);
        r->connected = false;
        r->kick = true;
        ev_timer_stop(r->loop, &r->retry);
        ev_timer_set(&r->retry, 0., 0.);
        ev_timer_start(r->loop, &r->retry);
    }
}

static void track(struct wp_redis *r, bool add)
{
    if (!wp_sentinel_on())
        return;
    if (add) {
        r->next_all = all_conns;
        if (all_conns)
            all_conns->prev_all = r;
        all_conns = r;
        if (!watch)
            watch = wp_sentinel_watch_new(r->loop, master_switched, NULL);
        return;
    }
    if (r->prev_all)
        r->prev_all->next_all = r->next_all;
    else if (all_conns == r)
        all_conns = r->next_all;
    if (r->next_all)
        r->next_all->prev_all = r->prev_all;
    if (!all_conns) {
        wp_sentinel_watch_free(watch);
        watch = NULL;
    }
}

/* Cluster mode (wp_rcl_set): the handle is a wp_rcl over the cluster's
 * masters, whatever host and port say. */
struct wp_redis *wp_redis_new(struct ev_loop *loop, const char *host, int port, const char *name)
{
    if (!wp_rcl_on())
        return wp_redis_new_direct(loop, host, port, name);
    struct wp_redis *r = calloc(1, sizeof(*r));
    struct wp_err err;
    if (!r)
        return NULL;
    if (!(r->rcl = wp_rcl_new(loop, wp_rcl_seeds(), name, &err))) {
        log_error("redis cluster conn=%s: %s", name, err.msg);
        free(r);
        return NULL;
    }
    return r;
}

struct wp_redis *wp_redis_new_direct(struct ev_loop *loop, const char *host, int port,
                                     const char *name)
{
    struct wp_redis *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->loop = loop;
    snprintf(r->host, sizeof(r->host), "%s", host);
    snprintf(r->name, sizeof(r->name), "%s", name);
    r->port = port;
    ev_timer_init(&r->retry, retry_cb, 0., 0.);
    r->retry.data = r;
    track(r, true);
    do_connect(r);
    return r;
}

void wp_redis_free(struct wp_redis *r)
{
    if (!r)
        return;
    if (r->rcl) {
        wp_rcl_free(r->rcl);
        free(r);
        return;
    }
    r->closing = true;
    track(r, false);
    ev_timer_stop(r->loop, &r->retry);
    wp_sentinel_ask_cancel(r->ask);
    if (r->ac) {
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;
        /* Detach first: when called from inside one of this context's reply
         * callbacks, hiredis defers the real free until the callback
         * returns and only then runs the disconnect callback, by which time
         * r is gone. Pending commands get NULL replies (now, or then). */
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    for (int i = 0; i < r->n_scripts; i++) {
        free(r->scripts[i]->text);
        free(r->scripts[i]);
    }
    free(r);
}

bool wp_redis_ready(const struct wp_redis *r)
{
    if (r && r->rcl)
        return wp_rcl_ready(r->rcl);
    return r && r->ac && r->connected;
}

/* A write refused by a replica: in sentinel mode the primary moved (a
 * failover this connection missed); drop it so the next connect asks the
 * sentinels. The refused command did not run: its caller gets the error. */
static void check_readonly(redisAsyncContext *ac, const redisReply *rep)
{
    struct wp_redis *r = ac->data;
    if (!r || !rep || rep->type != REDIS_REPLY_ERROR || strncmp(rep->str, "READONLY", 8) ||
        !wp_sentinel_on() || !r->connected)
        return;
    log_warn("redis conn=%s %s:%d is a replica now: asking the sentinels again", r->name, r->host,
             r->port);
    r->connected = false;
    redisAsyncDisconnect(ac);
}

static void reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    check_readonly(ac, reply);
    struct cmd *c = privdata;
    wp_redis_cb cb = c->cb;
    void *ctx = c->ctx;
    free(c);
    if (cb)
        cb(ctx, reply);
}

/* --- WAIT for replicas (wp_redis_set_wait) ----------------------------------
 * The command, then WAIT pipelined behind it on the same connection; the
 * command's reply is copied (hiredis frees it after its callback) and given
 * to the caller only with WAIT's answer. */

struct waitcmd {
    wp_redis_cb cb;
    void *ctx;
    bool got;           /* the command's reply came (copy may still be NULL: oom) */
    redisReply *copy;   /* freed with freeReplyObject (same layout as hiredis') */
    bool wait_sent;
    int want, ms;
};

redisReply *wp_redis_reply_copy(const redisReply *src)
{
    redisReply *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->type = src->type;
    d->integer = src->integer;
    if (src->str) {
        if (!(d->str = malloc(src->len + 1))) {
            free(d);
            return NULL;
        }
        memcpy(d->str, src->str, src->len);
        d->str[src->len] = '\0';
        d->len = src->len;
    }
    if (src->type == REDIS_REPLY_ARRAY && src->elements) {
        if (!(d->element = calloc(src->elements, sizeof(*d->element)))) {
            freeReplyObject(d);
            return NULL;
        }
        d->elements = src->elements;
        for (size_t i = 0; i < src->elements; i++)
            if (!(d->element[i] = wp_redis_reply_copy(src->element[i]))) {
                freeReplyObject(d);
                return NULL;
            }
    }
    return d;
}

static void held_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct waitcmd *w = privdata;
    check_readonly(ac, reply);
    if (!w->wait_sent) { /* WAIT could not be queued: plain command */
        wp_redis_cb cb = w->cb;
        void *ctx = w->ctx;
        free(w);
        cb(ctx, reply);
        return;
    }
    w->got = reply != NULL;
    w->copy = reply ? wp_redis_reply_copy(reply) : NULL;
}

static void wait_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct waitcmd *w = privdata;
    redisReply *rep = reply, *give = w->copy;
    redisReply fail = { .type = REDIS_REPLY_ERROR };
    char msg[128];
    (void)ac;
    if (!w->got || !give || !rep) {
        give = NULL; /* connection lost (or no memory): ran or not, unknown */
    } else if (give->type != REDIS_REPLY_ERROR &&
               (rep->type != REDIS_REPLY_INTEGER || rep->integer < w->want)) {
        /* Written on the primary, not (yet) on enough replicas: not
         * acknowledged, as a failover now could lose it. */
        snprintf(msg, sizeof(msg), "NOTREPLICATED %lld of %d replicas within %d ms",
                 rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1LL, w->want, w->ms);
        fail.str = msg;
        fail.len = strlen(msg);
        give = &fail;
    }
    w->cb(w->ctx, give);
    freeReplyObject(w->copy);
    free(w);
}

static int wait_argv(struct wp_redis *r, wp_redis_cb cb, void *ctx, int argc, const char **argv,
                     const size_t *lens)
{
    struct waitcmd *w = calloc(1, sizeof(*w));
    char n[16], ms[16];
    if (!w)
        return -ENOMEM;
    *w = (struct waitcmd){ .cb = cb, .ctx = ctx, .want = r->wait_n, .ms = r->wait_ms };
    if (redisAsyncCommandArgv(r->ac, held_cb, w, argc, argv, lens) != REDIS_OK) {
        free(w);
        return WP_ESTATE;
    }
    snprintf(n, sizeof(n), "%d", r->wait_n);
    snprintf(ms, sizeof(ms), "%d", r->wait_ms);
    const char *wargv[] = { "WAIT", n, ms };
    w->wait_sent = redisAsyncCommandArgv(r->ac, wait_cb, w, 3, wargv, NULL) == REDIS_OK;
    return 0;
}

void wp_redis_set_wait(struct wp_redis *r, int replicas, int timeout_ms)
{
    if (r->rcl) {
        wp_rcl_set_wait(r->rcl, replicas, timeout_ms > 0 ? timeout_ms : 1000);
        return;
    }
    r->wait_n = replicas > 0 ? replicas : 0;
    r->wait_ms = timeout_ms > 0 ? timeout_ms : 1000; /* WAIT n 0 would block for ever */
}

int wp_redis_argv(struct wp_redis *r, wp_redis_cb cb, void *ctx, int argc,
                      const char **argv, const size_t *lens)
{
    if (r && r->rcl)
        return wp_rcl_argv(r->rcl, cb, ctx, argc, argv, lens);
    if (!wp_redis_ready(r))
        return WP_ESTATE;
    if (r->wait_n > 0 && cb)
        return wait_argv(r, cb, ctx, argc, argv, lens);
    return wp_redis_argv_nowait(r, cb, ctx, argc, argv, lens);
}

int wp_redis_argv_nowait(struct wp_redis *r, wp_redis_cb cb, void *ctx, int argc, const char **argv,
                         const size_t *lens)
{
    if (r && r->rcl)
        return wp_rcl_argv(r->rcl, cb, ctx, argc, argv, lens);
    if (!wp_redis_ready(r))
        return WP_ESTATE;
    struct cmd *c = malloc(sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->cb = cb;
    c->ctx = ctx;
    if (redisAsyncCommandArgv(r->ac, reply_cb, c, argc, argv, lens) != REDIS_OK) {
        free(c);
        return WP_ESTATE;
    }
    return 0;
}

/* The script text's entry, made on first use; NULL when out of room or
 * memory (the caller then sends EVAL as before). */
static struct script *script_of(struct wp_redis *r, const char *text)
{
    size_t len = strlen(text);
    for (int i = 0; i < r->n_scripts; i++) {
        struct script *s = r->scripts[i];
        if (s->key == text && s->len == len && memcmp(s->text, text, len) == 0)
            return s;
    }
    if (r->n_scripts == MAX_SCRIPTS)
        return NULL;
    struct script *s = calloc(1, sizeof(*s));
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    if (!s || !(s->text = malloc(len + 1)) ||
        !EVP_Digest(text, len, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20) {
        if (s)
            free(s->text);
        free(s);
        return NULL;
    }
    memcpy(s->text, text, len + 1);
    s->key = text;
    s->len = len;
    for (unsigned i = 0; i < mdlen; i++)
        snprintf(s->sha + 2 * i, 3, "%02x", md[i]);
    r->scripts[r->n_scripts++] = s;
    return s;
}

/* An EVALSHA in flight: the formatted command, kept for a NOSCRIPT retry. */
struct shacmd {
    struct wp_redis *r;
    struct script *s;
    wp_redis_cb cb;
    void *ctx;
    char *cmd; /* "*N\r\n$7\r\nEVALSHA\r\n$40\r\n<sha>\r\n" then numkeys and args */
    size_t len;
    bool retried;
};

/* The same command as EVAL <text>: Redis compiles and caches it again. */
static int resend_as_eval(redisAsyncContext *ac, struct shacmd *c, redisCallbackFn *fn)
{
    const char *tail = memchr(c->cmd, '\n', c->len);
    int n = atoi(c->cmd + 1);
    if (!tail)
        return -1;
    tail += 1 + 13 + 47; /* "$7\r\nEVALSHA\r\n", "$40\r\n<40 hex>\r\n" */
    size_t tlen = c->len - (size_t)(tail - c->cmd);
    char head[64];
    int hl = snprintf(head, sizeof(head), "*%d\r\n$4\r\nEVAL\r\n$%zu\r\n", n, c->s->len);
    size_t len = (size_t)hl + c->s->len + 2 + tlen;
    char *cmd = malloc(len);
    if (!cmd)
        return -1;
    memcpy(cmd, head, (size_t)hl);
    memcpy(cmd + hl, c->s->text, c->s->len);
    memcpy(cmd + hl + c->s->len, "\r\n", 2);
    memcpy(cmd + hl + c->s->len + 2, tail, tlen);
    int rc = redisAsyncFormattedCommand(ac, fn, c, cmd, len) == REDIS_OK ? 0 : -1;
    free(cmd); /* hiredis copied it */
    return rc;
}

static void sha_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct shacmd *c = privdata;
    redisReply *rep = reply;
    check_readonly(ac, rep); /* a replica now: as for every other command */
    /* Not known there (SCRIPT FLUSH, a script cache evicted): once more as
     * EVAL, and the caller sees only that reply. ac->data is NULL once the
     * connection was freed (then c->r and c->s are gone). */
    if (rep && rep->type == REDIS_REPLY_ERROR && !c->retried && ac->data == c->r &&
        strncmp(rep->str, "NOSCRIPT", 8) == 0) {
        c->retried = true;
        if (resend_as_eval(ac, c, sha_reply) == 0) {
            c->s->sent_conn = c->r->conn;
            return;
        }
        rep = NULL; /* could not ask again: as if disconnected */
    }
    wp_redis_cb cb = c->cb;
    void *ctx = c->ctx;
    redisFreeCommand(c->cmd);
    free(c);
    if (cb)
        cb(ctx, rep);
}

int wp_redis_script(struct wp_redis *r, const char *script, wp_redis_cb cb,
                        void *ctx, int nkeys, int argc, const char **argv,
                        const size_t *lens)
{
    /* EVAL the first time on a connection (that loads it), then EVALSHA:
     * the text crosses the wire once per connection, not per call. */
    const char *av[256];
    size_t al[256];
    char nk[16];
    if (r && r->rcl)
        return wp_rcl_script(r->rcl, script, cb, ctx, nkeys, argc, argv, lens);
    if (argc + 3 > 256)
        return WP_EINVAL_INPUT;
    if (!wp_redis_ready(r))
        return WP_ESTATE;
    snprintf(nk, sizeof(nk), "%d", nkeys);
    av[0] = "EVAL";
    al[0] = 4;
    av[1] = script;
    al[1] = strlen(script);
    av[2] = nk;
    al[2] = strlen(nk);
    for (int i = 0; i < argc; i++) {
        av[3 + i] = argv[i];
        al[3 + i] = lens ? lens[i] : strlen(argv[i]);
    }
    struct script *s = script_of(r, script);
    /* The durable mode's WAIT rides on wp_redis_argv: scripts go as EVAL
     * there (the text every time, the WAIT after each). */
    if (!s || s->sent_conn != r->conn || r->wait_n > 0) {
        int rc = wp_redis_argv(r, cb, ctx, argc + 3, av, al);
        if (rc == 0 && s)
            s->sent_conn = r->conn;
        return rc;
    }
    av[0] = "EVALSHA";
    al[0] = 7;
    av[1] = s->sha;
    al[1] = 40;
    struct shacmd *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    int len = redisFormatCommandArgv(&c->cmd, argc + 3, av, al);
    if (len < 0) {
        free(c);
        return -ENOMEM;
    }
    c->len = (size_t)len;
    c->r = r;
    c->s = s;
    c->cb = cb;
    c->ctx = ctx;
    if (redisAsyncFormattedCommand(r->ac, sha_reply, c, c->cmd, c->len) != REDIS_OK) {
        redisFreeCommand(c->cmd);
        free(c);
        return WP_ESTATE;
    }
    return 0;
}

int wp_redis_subscribe(struct wp_redis *r, const char *channel, wp_redis_cb cb, void *ctx)
{
    if (r->rcl)
        return wp_rcl_subscribe(r->rcl, channel, cb, ctx);
    if (strlen(channel) >= sizeof(r->sub_chan) || r->sub_cb)
        return WP_EINVAL_INPUT;
    snprintf(r->sub_chan, sizeof(r->sub_chan), "%s", channel);
    r->sub_cb = cb;
    r->sub_ctx = ctx;
    if (wp_redis_ready(r))
        subscribe_now(r);
    return 0;
}

