/* relay.c - the node's agentlink relay: how a scheduler on any machine
 * reaches a sandbox that lives behind a Unix socket on this one.
 *
 * A client opens a TCP connection to the node and sends one agentlink
 * frame {"t":"route","env":E,"sandbox":ID,"token":"T","key":K} (plus
 * "egress":{"credentials":[...]} when the session has secrets in play:
 * the node confines the sandbox to its egress proxy and registers them
 * before answering, with the proxy's address in "proxy"). The node
 * checks the token and the lease's relay key (128 random bits the claimer
 * made; the token is a counter anyone can guess) against its own lease
 * record (fencing: a stale or unknown
 * token is refused), answers {"t":"route","ok":true} or an error frame,
 * connects to the sandbox's hands socket and from then on copies bytes
 * both ways: the client then speaks agentlink to the hands as if local.
 * A route with "pipe":true is pipelined: the client sends its first
 * agentlink frames right behind it without waiting, the node keeps them
 * until the lease checked out and sends no answer on success (a refusal
 * is the same error frame, an agentlink error to the client's handshake).
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
#include "base/wipe.h"

#include <openssl/crypto.h>

#define RELAY_BUF (256 * 1024) /* per direction; reads pause when full */
#define ROUTE_MAX POOL__ROUTE_MAX
#define PARK_S 5.0            /* a route waits this long for the node */
#define LINGER_S 2.0          /* a refused pipelined client's bytes are read this long */

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
    bool pipe;            /* pipelined route: no answer on success, bytes behind it kept */
    bool closing;         /* refused pipelined: reading to EOF before the close */
    size_t frame_end;     /* pipe: where the client's bytes after the route frame start */
    ev_timer park;
    char sandbox[64], env[64];
    unsigned long long token;
    char rkey[33];
    char *egress;         /* the route's egress object (secrets: wiped) */
    size_t egress_len;
    /* A mount frame instead of a route (node_files.c): the content
     * follows the frame in a.out, from mount_at, mount_size bytes. */
    bool mount, unmount, leased;
    size_t mount_at, mount_size;
    char mount_path[512], root[512];
    struct rconn *next;
};

static void drop_egress(struct rconn *c)
{
    if (c->egress) {
        OPENSSL_cleanse(c->egress, c->egress_len);
        free(c->egress);
        c->egress = NULL;
    }
}

static void rconn_close(struct rconn *c)
{
    struct pool__relay *r = c->r;

    for (struct rconn **pp = &r->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    ev_timer_stop(r->loop, &c->park);
    drop_egress(c);
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
    if (!c->pipe) {
        rconn_close(c);
        return;
    }
    /* The client may have bytes on their way behind the route: closing
     * with them unread would reset the connection, and a reset can reach
     * the client before the error frame is read. Say EOF, read theirs. */
    shutdown(c->a.fd, SHUT_WR);
    c->closing = true;
    c->parked = false;
    ev_timer_stop(c->r->loop, &c->park);
    ev_timer_set(&c->park, LINGER_S, 0.);
    ev_timer_start(c->r->loop, &c->park);
    ev_io_start(c->r->loop, &c->a.rd);
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

/* A mount whose lease checked out: once all its content is here, attach
 * it in the sandbox and answer. */
static void mount_check(struct rconn *c)
{
    struct wp_err err = { 0 };
    size_t have = c->a.out.len - c->mount_at;
    if (!c->leased || have < c->mount_size)
        return;
    if (have > c->mount_size) {
        refuse(c, "bad_mount", "more bytes than the mount frame's size");
        return;
    }
    if ((c->unmount ? pool__file_unmount(c->root, c->mount_path, &err)
                    : pool__file_mount(c->root, c->mount_path, c->a.out.data + c->mount_at,
                                       c->mount_size, &err)) < 0) {
        log_warn("relay mount sandbox=%s path=%s: %s", c->sandbox, c->mount_path, err.msg);
        refuse(c, "mount_failed", err.msg);
        return;
    }
    log_info("relay %s %zu bytes at %s in sandbox=%s", c->unmount ? "unmounted" : "mounted",
             c->mount_size, c->mount_path, c->sandbox);
    send_frame(c, json_pack("{s:s, s:b}", "t", "mount", "ok", 1));
    rconn_close(c);
}

/* Check the lease and connect to the hands. A hot claim reaches the node
 * through its inbox, which it may not have read yet when the claimer's
 * route arrives: then the connection waits (at most PARK_S) for
 * pool__relay_retry. */
static void route_try(struct rconn *c)
{
    struct pool__route rt = { .env = c->env, .sandbox = c->sandbox, .rkey = c->rkey,
                              .token = c->token, .egress = c->egress, .egress_len = c->egress_len,
                              .want_hands = !c->mount, .hands_fd = -1 };
    int fd, rc = c->r->lookup(c->r->ctx, &rt);

    if (rc == WP_ESTATE) {
        if (!c->parked) {
            c->parked = true;
            ev_timer_init(&c->park, park_timeout, PARK_S, 0.);
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
    if (rc == WP_EPROTO) {
        refuse(c, "egress_failed", rt.why[0] ? rt.why : "the sandbox's egress could not be set up");
        return;
    }
    if (rc < 0) {
        refuse(c, "not_found", "no such leased sandbox on this node");
        return;
    }
    if (c->mount) {
        snprintf(c->root, sizeof(c->root), "%s", rt.root);
        c->leased = true;
        mount_check(c);
        return;
    }
    drop_egress(c); /* the secrets are with the proxy now */
    /* Resolved inside the sandbox's root (/proc/<init>/root: it follows
     * the sandbox's own mount namespace): a sandbox that makes /run or
     * /run/warmpool a symlink must not point the node at a host socket. */
    fd = rt.hands_fd >= 0 ? rt.hands_fd
                          : wp_connect_unix_in_root(rt.root, ALINK_SOCK_PATH_DEFAULT,
                                                    SOCK_STREAM | SOCK_NONBLOCK, NULL);
    if (fd < 0) {
        refuse(c, "unreachable", "the sandbox's hands do not answer");
        return;
    }
    end_init(c, &c->b, fd);
    c->routed = true;
    if (c->pipe) {
        /* The client's frames that came with the route go to the hands
         * first; the rest of its bytes follow from the socket. */
        size_t have = c->a.out.len;
        int rc2 = have > c->frame_end ? wp_buf_append(&c->b.out, c->a.out.data + c->frame_end,
                                                      have - c->frame_end)
                                      : 0;
        wp_buf_reset(&c->a.out);
        c->a.out.max = RELAY_BUF;
        if (rc2 < 0) {
            rconn_close(c);
            return;
        }
        log_debug("relay routed sandbox=%s (pipelined)", c->sandbox);
        ev_io_start(c->r->loop, &c->b.rd);
        flush(c, &c->b); /* reads the client again; may close c */
        return;
    }
    c->a.out.max = RELAY_BUF; /* from here on it carries the hands' bytes */
    json_t *ok = json_pack("{s:s, s:b}", "t", "route", "ok", 1);
    if (rt.proxy[0])
        json_object_set_new(ok, "proxy", json_string(rt.proxy));
    send_frame(c, ok);
    ev_io_start(c->r->loop, &c->b.rd);
    log_debug("relay routed sandbox=%s", c->sandbox);
}

static void park_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct rconn *c = w->data;
    (void)loop;
    (void)revents;
    if (c->closing) { /* a refused client that did not close: done waiting */
        rconn_close(c);
        return;
    }
    c->parked = false;
    refuse(c, "not_found", "no such leased sandbox on this node");
}

/* The route frame: validate it, then route_try. */
static void route(struct rconn *c, uint8_t *payload, size_t len, bool extra)
{
    json_error_t jerr;
    json_t *o = json_loadb((const char *)payload, len, JSON_REJECT_DUPLICATES, &jerr);
    OPENSSL_cleanse((void *)payload, len); /* it may hold secrets; o has them now */
    const char *t = json_string_value(json_object_get(o, "t")),
               *env = json_string_value(json_object_get(o, "env")),
               *sb = json_string_value(json_object_get(o, "sandbox")),
               *tok = json_string_value(json_object_get(o, "token")),
               *key = json_string_value(json_object_get(o, "key"));
    json_t *egress = json_object_get(o, "egress"), *pipe = json_object_get(o, "pipe");
    char *end = NULL;

    const char *path = json_string_value(json_object_get(o, "path"));
    json_t *size = json_object_get(o, "size");
    bool unmount = t && !strcmp(t, "unmount");
    bool mount = t && (!strcmp(t, "mount") || unmount);
    if (!o || !t || (strcmp(t, "route") && !mount) || !env || !sb || !tok || !key ||
        strlen(key) != 32 || strlen(sb) >= sizeof(c->sandbox) || strlen(env) >= sizeof(c->env) ||
        (c->token = strtoull(tok, &end, 10), *end) ||
        (egress && (!json_is_object(egress) || mount)) ||
        (pipe && (!json_is_boolean(pipe) || mount || egress)) ||
        (mount && (!path || path[0] != '/' || strlen(path) >= sizeof(c->mount_path) ||
                   !json_is_integer(size) || json_integer_value(size) < 0 ||
                   json_integer_value(size) > POOL_FILE_MAX ||
                   (unmount && json_integer_value(size) != 0))) ||
        (!mount && !json_is_true(pipe) && extra)) {
        wp_wipe_json(o); /* jansson frees strings without wiping them */
        json_decref(o);
        refuse(c, "bad_route",
               "first frame must be {\"t\":\"route\",\"env\",\"sandbox\",\"token\",\"key\"}"
               " (and an \"egress\" object, or \"pipe\": true and frames behind it), or a"
               " mount: t, env, sandbox, token, key, path, size, then size bytes");
        return;
    }
    if (mount) {
        c->mount = true;
        c->unmount = unmount;
        c->mount_at = len + ALINK_FRAME_HDR;
        c->mount_size = (size_t)json_integer_value(size);
        c->a.out.max = c->mount_at + c->mount_size + 1;
        snprintf(c->mount_path, sizeof(c->mount_path), "%s", path);
    }
    if (json_is_true(pipe)) {
        /* Nothing more is read until the lease checked out: what came
         * with the frame waits in a.out, the rest in the socket. */
        c->pipe = true;
        c->frame_end = len + ALINK_FRAME_HDR;
        ev_io_stop(c->r->loop, &c->a.rd);
    }
    snprintf(c->rkey, sizeof(c->rkey), "%s", key);
    snprintf(c->sandbox, sizeof(c->sandbox), "%s", sb);
    snprintf(c->env, sizeof(c->env), "%s", env);
    if (egress) {
        c->egress = json_dumps(egress, JSON_COMPACT | JSON_SORT_KEYS);
        c->egress_len = c->egress ? strlen(c->egress) : 0;
    }
    wp_wipe_json(o); /* jansson frees strings without wiping them */
    json_decref(o);
    if (egress && !c->egress) {
        refuse(c, "bad_route", "out of memory");
        return;
    }
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
    if (n < 0 || c->closing) /* refused: the client's bytes go nowhere */
        return;
    if (!c->routed) {
        /* Collect the route frame (bounded) in the client's out buffer
         * slot, which is unused until routed; a mount's content follows
         * its frame there. */
        if (wp_buf_append(&src->out, buf, (size_t)n) < 0) {
            refuse(c, c->mount ? "bad_mount" : "bad_route",
                   c->mount ? "more bytes than the mount frame's size" : "route frame too large");
            return;
        }
        if (c->mount) {
            mount_check(c);
            return;
        }
        const uint8_t *payload;
        size_t plen;
        int k = alink_frame_decode((const uint8_t *)src->out.data, src->out.len, ROUTE_MAX,
                                   &payload, &plen);
        if (k == 0)
            return;
        if (k < 0) {
            refuse(c, "bad_route", "one route frame, then wait for its answer");
            return;
        }
        OPENSSL_cleanse(buf, (size_t)n); /* a route frame may hold secrets */
        route(c, (uint8_t *)src->out.data + (payload - (const uint8_t *)src->out.data), plen,
              (size_t)k != src->out.len);
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
        ev_timer_init(&c->park, park_timeout, PARK_S, 0.);
        c->park.data = c;
        end_init(c, &c->a, fd);
        /* One read's worth past the frame: a mount's bytes arrive with it. */
        wp_buf_init(&c->a.out, ROUTE_MAX + ALINK_FRAME_HDR + 65536);
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
