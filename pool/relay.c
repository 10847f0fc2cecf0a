/* relay.c - the node's agentlink relay: how a scheduler on any machine
 * reaches a sandbox that lives behind a Unix socket on this one.
 *
 * A client opens a TCP connection to the node and sends one agentlink
 * frame {"t":"route","env":E,"sandbox":ID,"token":"T","key":K}. The node
 * checks the token and the lease's relay key (128 random bits the claimer
 * made; the token is a counter anyone can guess) against its own lease
 * record (fencing: a stale or unknown
 * token is refused), answers {"t":"route","ok":true} or an error frame,
 * connects to the sandbox's hands socket and from then on copies bytes
 * both ways: the client then speaks agentlink to the hands as if local.
 * One TCP connection per sandbox; a released sandbox's relays close.
 * Beyond loopback each connection is mutual TLS first (relay_tls.c). */
#define WP_LOG_COMPONENT "relay"
#include "pool/pool_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "agentlink/agentlink.h"
#include "base/buf.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/net.h"

#define RELAY_BUF (256 * 1024) /* per direction; reads pause when full */
#define ROUTE_MAX 4096

struct pool__relay {
    struct ev_loop *loop;
    int fd;
    ev_io io;
    pool__relay_lookup_cb lookup;
    void *ctx;
    struct rconn *conns;
    bool tls; /* beyond loopback: every connection is mutual TLS (relay_tls.c) */
};

struct pipe_end {
    int fd;
    ev_io rd, wr;
    struct wp_buf out; /* bytes waiting to be written to this end */
};

struct rconn {
    struct pool__relay *r;
    struct pipe_end a, b; /* a: the client, b: the hands */
    bool routed;
    bool parked;          /* waiting for the node to read the claim */
    ev_timer park;
    char sandbox[64], env[64];
    unsigned long long token;
    char rkey[33];
    struct rconn *next;
};

static void rconn_close(struct rconn *c)
{
    struct pool__relay *r = c->r;

    for (struct rconn **pp = &r->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    ev_timer_stop(r->loop, &c->park);
    struct pipe_end *ends[2] = { &c->a, &c->b };
    for (int i = 0; i < 2; i++) {
        ev_io_stop(r->loop, &ends[i]->rd);
        ev_io_stop(r->loop, &ends[i]->wr);
        if (ends[i]->fd >= 0)
            close(ends[i]->fd);
        wp_buf_free(&ends[i]->out);
    }
    free(c);
}

static struct pipe_end *peer(struct rconn *c, struct pipe_end *e)
{
    return e == &c->a ? &c->b : &c->a;
}

static void flush(struct rconn *c, struct pipe_end *e)
{
    while (e->out.len) {
        ssize_t n = send(e->fd, e->out.data, e->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            rconn_close(c);
            return;
        }
        wp_buf_consume(&e->out, (size_t)n);
    }
    if (e->out.len)
        ev_io_start(c->r->loop, &e->wr);
    else
        ev_io_stop(c->r->loop, &e->wr);
    /* Backpressure: read the other side again once this one drained. */
    struct pipe_end *src = peer(c, e);
    if (e->out.len < RELAY_BUF / 2 && src->fd >= 0 && c->routed)
        ev_io_start(c->r->loop, &src->rd);
}

static void send_frame(struct rconn *c, json_t *msg)
{
    wp_buf_reset(&c->a.out);
    alink_frame_encode(&c->a.out, msg, ROUTE_MAX, NULL);
    json_decref(msg);
    send(c->a.fd, c->a.out.data, c->a.out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
    wp_buf_reset(&c->a.out);
}

static void refuse(struct rconn *c, const char *code, const char *msg)
{
    log_info("relay refused sandbox=%s: %s", c->sandbox[0] ? c->sandbox : "?", msg);
    send_frame(c, alink_msg_error(0, code, msg));
    rconn_close(c);
}

static void pipe_rd(struct ev_loop *loop, ev_io *w, int revents);
static void pipe_wr(struct ev_loop *loop, ev_io *w, int revents);

static void end_init(struct rconn *c, struct pipe_end *e, int fd)
{
    e->fd = fd;
    wp_buf_init(&e->out, RELAY_BUF);
    ev_io_init(&e->rd, pipe_rd, fd, EV_READ);
    ev_io_init(&e->wr, pipe_wr, fd, EV_WRITE);
    e->rd.data = e->wr.data = c;
}

static void park_timeout(struct ev_loop *loop, ev_timer *w, int revents);

/* Check the lease and connect to the hands. A hot claim reaches the node
 * through its inbox, which it may not have read yet when the claimer's
 * route arrives: then the connection waits (at most 2 s) for
 * pool__relay_retry. */
static void route_try(struct rconn *c)
{
    char root[512];
    /* root is /proc/<init>/root: it follows the sandbox's own mount
     * namespace. */
    int fd, rc = c->r->lookup(c->r->ctx, c->env, c->sandbox, c->token, c->rkey, root,
                                  sizeof(root));

    if (rc == WP_ESTATE) {
        if (!c->parked) {
            c->parked = true;
            ev_timer_init(&c->park, park_timeout, 2.0, 0.);
            c->park.data = c;
            ev_timer_start(c->r->loop, &c->park);
        }
        return;
    }
    ev_timer_stop(c->r->loop, &c->park);
    c->parked = false;
    if (rc == WP_ESTALE) {
        refuse(c, "stale_token", "token is not the current lease's");
        return;
    }
    if (rc < 0) {
        refuse(c, "not_found", "no such leased sandbox on this node");
        return;
    }
    /* Resolved inside the sandbox's root: a sandbox that makes /run or
     * /run/warmpool a symlink must not point the node at a host socket. */
    fd = wp_connect_unix_in_root(root, ALINK_SOCK_PATH_DEFAULT, SOCK_STREAM | SOCK_NONBLOCK, NULL);
    if (fd < 0) {
        refuse(c, "unreachable", "the sandbox's hands do not answer");
        return;
    }
    end_init(c, &c->b, fd);
    c->routed = true;
    c->a.out.max = RELAY_BUF; /* from here on it carries the hands' bytes */
    send_frame(c, json_pack("{s:s, s:b}", "t", "route", "ok", 1));
    ev_io_start(c->r->loop, &c->b.rd);
    log_debug("relay routed sandbox=%s", c->sandbox);
}

static void park_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct rconn *c = w->data;
    (void)loop;
    (void)revents;
    c->parked = false;
    refuse(c, "not_found", "no such leased sandbox on this node");
}

/* The route frame: validate it, then route_try. */
static void route(struct rconn *c, const uint8_t *payload, size_t len)
{
    json_error_t jerr;
    json_t *o = json_loadb((const char *)payload, len, JSON_REJECT_DUPLICATES, &jerr);
    const char *t = json_string_value(json_object_get(o, "t")),
               *env = json_string_value(json_object_get(o, "env")),
               *sb = json_string_value(json_object_get(o, "sandbox")),
               *tok = json_string_value(json_object_get(o, "token")),
               *key = json_string_value(json_object_get(o, "key"));
    char *end = NULL;

    if (!o || !t || strcmp(t, "route") || !env || !sb || !tok || !key || strlen(key) != 32 ||
        strlen(sb) >= sizeof(c->sandbox) || strlen(env) >= sizeof(c->env) ||
        (c->token = strtoull(tok, &end, 10), *end)) {
        json_decref(o);
        refuse(c, "bad_route",
               "first frame must be {\"t\":\"route\",\"env\",\"sandbox\",\"token\",\"key\"}");
        return;
    }
    snprintf(c->rkey, sizeof(c->rkey), "%s", key);
    snprintf(c->sandbox, sizeof(c->sandbox), "%s", sb);
    snprintf(c->env, sizeof(c->env), "%s", env);
    json_decref(o);
    route_try(c);
}

static void pipe_rd(struct ev_loop *loop, ev_io *w, int revents)
{
    struct rconn *c = w->data;
    struct pipe_end *src = w == &c->a.rd ? &c->a : &c->b, *dst = peer(c, src);
    char buf[65536];
    (void)loop;
    (void)revents;

    ssize_t n = recv(src->fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        rconn_close(c);
        return;
    }
    if (n < 0)
        return;
    if (!c->routed) {
        /* Collect the route frame (bounded) in the client's out buffer
         * slot, which is unused until routed. */
        if (wp_buf_append(&src->out, buf, (size_t)n) < 0) {
            refuse(c, "bad_route", "route frame too large");
            return;
        }
        const uint8_t *payload;
        size_t plen;
        int k = alink_frame_decode((const uint8_t *)src->out.data, src->out.len, ROUTE_MAX,
                                   &payload, &plen);
        if (k == 0)
            return;
        if (k < 0 || (size_t)k != src->out.len) {
            refuse(c, "bad_route", "one route frame, then wait for its answer");
            return;
        }
        route(c, payload, plen);
        return;
    }
    if (wp_buf_append(&dst->out, buf, (size_t)n) < 0) {
        rconn_close(c);
        return;
    }
    if (dst->out.len >= RELAY_BUF / 2)
        ev_io_stop(c->r->loop, &src->rd);
    flush(c, dst);
}

static void pipe_wr(struct ev_loop *loop, ev_io *w, int revents)
{
    struct rconn *c = w->data;
    (void)loop;
    (void)revents;
    flush(c, w == &c->a.wr ? &c->a : &c->b);
}

/* The relay then reads the route frame from the pump's plain end, as
 * from a TCP socket. */
static int tls_wrap(struct pool__relay *r, int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char ip[INET6_ADDRSTRLEN] = "?";
    struct wp_err err;
    int plain;

    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0)
        inet_ntop(ss.ss_family,
                  ss.ss_family == AF_INET6 ? (void *)&((struct sockaddr_in6 *)&ss)->sin6_addr
                                           : (void *)&((struct sockaddr_in *)&ss)->sin_addr,
                  ip, sizeof(ip));
    if (pool__tls_pump_new(r->loop, fd, true, ip, NULL, NULL, &plain, NULL, &err) < 0) {
        log_warn("relay: %s", err.msg);
        close(fd);
        return -1;
    }
    return plain;
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct pool__relay *r = w->data;
    (void)loop;
    (void)revents;

    for (;;) {
        int fd = accept4(r->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0)
            return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (r->tls && (fd = tls_wrap(r, fd)) < 0)
            continue;
        struct rconn *c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        c->r = r;
        ev_timer_init(&c->park, park_timeout, 2.0, 0.);
        c->park.data = c;
        end_init(c, &c->a, fd);
        wp_buf_init(&c->a.out, ROUTE_MAX + ALINK_FRAME_HDR);
        c->b.fd = -1;
        wp_buf_init(&c->b.out, RELAY_BUF);
        c->next = r->conns;
        r->conns = c;
        ev_io_start(r->loop, &c->a.rd);
    }
}

int pool__relay_start(struct ev_loop *loop, const char *host, int port, pool__relay_lookup_cb lookup,
                      void *ctx, struct pool__relay **out, int *bound_port, struct wp_err *err)
{
    struct pool__relay *r;
    int tls = pool__relay_tls_wanted(host, err), fd;

    if (tls < 0)
        return tls;
    if ((fd = wp_tcp_listen(host, port, 512, bound_port, err)) < 0)
        return wp_err_wrap(err, "relay");
    r = calloc(1, sizeof(*r));
    if (!r) {
        close(fd);
        return wp_err_set(err, -ENOMEM, "out of memory");
    }
    r->loop = loop;
    r->fd = fd;
    r->lookup = lookup;
    r->ctx = ctx;
    r->tls = tls == 1;
    ev_io_init(&r->io, accept_cb, fd, EV_READ);
    r->io.data = r;
    ev_io_start(loop, &r->io);
    *out = r;
    return 0;
}

void pool__relay_drop(struct pool__relay *r, const char *sandbox)
{
    struct rconn *c = r ? r->conns : NULL;
    while (c) {
        struct rconn *next = c->next;
        if (strcmp(c->sandbox, sandbox) == 0)
            rconn_close(c);
        c = next;
    }
}

void pool__relay_retry(struct pool__relay *r, const char *sandbox)
{
    struct rconn *c = r ? r->conns : NULL;
    while (c) {
        struct rconn *next = c->next;
        if (c->parked && strcmp(c->sandbox, sandbox) == 0)
            route_try(c);
        c = next;
    }
}

void pool__relay_stop(struct pool__relay *r)
{
    if (!r)
        return;
    while (r->conns)
        rconn_close(r->conns);
    ev_io_stop(r->loop, &r->io);
    close(r->fd);
    free(r);
}
