/* client.c - the host side of agentlink on libev.
 *
 * One client = one stream connection to one hands (a Unix socket today; any
 * connected stream fd works, so a TCP relay can plug in later). Requests
 * (attach and calls) are multiplexed by id. Every request started with a
 * return value >= 0 ends with exactly one result callback: the hands'
 * result, a local timeout, a local cancel, or the link going down.
 *
 * Re-entrancy: callbacks may call any alink_client_* function, including
 * alink_client_free; the client counts callback depth and frees itself only
 * when the outermost callback has returned (hiredis REDIS_IN_CALLBACK).
 */
#define WP_LOG_COMPONENT "alink"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <ev.h>

#include "agentlink/agentlink.h"
#include "base/buf.h"
#include "base/err.h"
#include "base/log.h"

#define CLIENT_MAGIC 0xa11c11e7u
#define OUT_MAX (64u * 1024u * 1024u)

enum client_state { ST_IDLE = 0, ST_HANDSHAKE, ST_READY };

struct alink_req {
    int64_t id;
    alink_result_cb cb;
    alink_chunk_cb on_chunk;
    void *ctx;
    int64_t timeout_ms; /* for the timeout message */
    ev_timer timer;
    struct alink_client *c;
    struct alink_req *prev, *next;
};

struct alink_client {
    unsigned magic;
    struct ev_loop *loop;
    struct alink_client_opts opts;
    enum client_state state;
    int fd;
    ev_io io;
    ev_timer conn_timer;
    struct wp_buf in, out;
    alink_connect_cb connect_cb;
    void *connect_ctx;
    struct alink_req *reqs;
    size_t n_reqs;
    int64_t next_id;
    unsigned gen;    /* bumped by every link teardown */
    int in_cb;       /* callback depth */
    bool freeing;
};

static void io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void link_down(struct alink_client *c, int status, const char *why, bool notify);

/* ---- helpers -------------------------------------------------------------- */

static void req_unlink(struct alink_client *c, struct alink_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        c->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    c->n_reqs--;
    ev_timer_stop(c->loop, &r->timer);
}

static struct alink_req *req_find(struct alink_client *c, int64_t id)
{
    for (struct alink_req *r = c->reqs; r; r = r->next)
        if (r->id == id)
            return r;
    return NULL;
}

static void real_free(struct alink_client *c)
{
    wp_buf_free(&c->in);
    wp_buf_free(&c->out);
    c->magic = 0;
    free(c);
}

/* Unlink r and deliver its one result. */
static void req_done(struct alink_client *c, struct alink_req *r, int status, const char *text,
                     size_t len, bool is_error, const struct wp_err *err)
{
    struct alink_result res = {text, len, is_error};

    req_unlink(c, r);
    c->in_cb++;
    r->cb(r->ctx, status, &res, err);
    c->in_cb--;
    free(r);
}

static void req_fail(struct alink_client *c, struct alink_req *r, int status, const char *fmt,
                     ...) __attribute__((format(printf, 4, 5)));
static void req_fail(struct alink_client *c, struct alink_req *r, int status, const char *fmt,
                     ...)
{
    struct wp_err err;
    va_list ap;

    err.code = status;
    va_start(ap, fmt);
    vsnprintf(err.msg, sizeof(err.msg), fmt, ap);
    va_end(ap);
    req_done(c, r, status, err.msg, strlen(err.msg), true, &err);
}

static void flush(struct alink_client *c)
{
    while (c->out.len) {
        ssize_t n = send(c->fd, c->out.data, c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            char why[128];
            snprintf(why, sizeof(why), "write: %s", strerror(errno));
            link_down(c, -errno, why, true);
            return;
        }
        wp_buf_consume(&c->out, (size_t)n);
    }
    int want = EV_READ | (c->out.len ? EV_WRITE : 0);
    if ((c->io.events & (EV_READ | EV_WRITE)) != want) {
        ev_io_stop(c->loop, &c->io);
        ev_io_set(&c->io, c->fd, want);
        ev_io_start(c->loop, &c->io);
    }
}

/* Queue msg (borrowed). Sends at once when nothing is queued: a call
 * usually leaves in the same loop turn, with no extra wakeup. */
static int send_msg(struct alink_client *c, const json_t *msg, struct wp_err *err)
{
    bool was_empty = c->out.len == 0;
    int rc = alink_frame_encode(&c->out, msg, c->opts.max_frame, err);

    if (rc < 0)
        return rc;
    if (was_empty)
        flush(c);
    return 0;
}

/* ---- link lifecycle ------------------------------------------------------ */

static void link_down(struct alink_client *c, int status, const char *why, bool notify)
{
    enum client_state was = c->state;
    struct wp_err err;

    if (was == ST_IDLE)
        return;
    c->state = ST_IDLE;
    c->gen++;
    ev_io_stop(c->loop, &c->io);
    ev_timer_stop(c->loop, &c->conn_timer);
    close(c->fd);
    c->fd = -1;
    wp_buf_reset(&c->in);
    wp_buf_reset(&c->out);
    log_debug("link down status=%d why=%s inflight=%zu", status, why, c->n_reqs);
    while (c->reqs)
        req_fail(c, c->reqs, status, "sandbox connection lost: %s", why);
    wp_err_set(&err, status, "%s", why);
    if (was == ST_HANDSHAKE) {
        alink_connect_cb cb = c->connect_cb;
        c->connect_cb = NULL;
        if (cb) {
            c->in_cb++;
            cb(c->connect_ctx, status, &err);
            c->in_cb--;
        }
    } else if (notify && c->opts.on_close) {
        c->in_cb++;
        c->opts.on_close(c->opts.close_ctx, &err);
        c->in_cb--;
    }
}

static void conn_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct alink_client *c = w->data;
    (void)loop;
    (void)revents;

    link_down(c, WP_ETIMEDOUT, "handshake timed out", true);
    if (c->freeing && !c->in_cb)
        real_free(c);
}

static void req_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct alink_req *r = w->data;
    struct alink_client *c = r->c;
    int64_t id = r->id, tmo = r->timeout_ms;
    json_t *m = alink_msg_cancel((uint64_t)id);
    (void)loop;
    (void)revents;

    /* Tell the hands to kill it; its late result will find no request.
     * Sending may find the link dead, which fails (and frees) r: look it
     * up again by id. */
    if (m && c->state == ST_READY)
        send_msg(c, m, NULL);
    json_decref(m);
    r = req_find(c, id);
    if (r)
        req_fail(c, r, WP_ETIMEDOUT,
                 "tool call timed out after %lld ms (no answer from the sandbox)",
                 (long long)tmo);
    if (c->freeing && !c->in_cb)
        real_free(c);
}

/* ---- incoming -------------------------------------------------------------- */

static void handle(struct alink_client *c, struct alink_msg *m)
{
    struct alink_req *r;
    struct wp_err err;

    switch (m->type) {
    case ALINK_MSG_HELLO:
        if (c->state == ST_HANDSHAKE) {
            alink_connect_cb cb = c->connect_cb;
            c->state = ST_READY;
            c->connect_cb = NULL;
            ev_timer_stop(c->loop, &c->conn_timer);
            if (cb) {
                c->in_cb++;
                cb(c->connect_ctx, 0, NULL);
                c->in_cb--;
            }
        }
        break;
    case ALINK_MSG_RESULT:
        r = req_find(c, (int64_t)m->id);
        if (r)
            req_done(c, r, 0, m->text, m->text_len, m->is_error, NULL);
        break;
    case ALINK_MSG_CHUNK:
        r = req_find(c, (int64_t)m->id);
        if (r && r->on_chunk) {
            c->in_cb++;
            r->on_chunk(r->ctx, m->text, m->text_len);
            c->in_cb--;
        }
        break;
    case ALINK_MSG_ERROR:
        if (c->state == ST_HANDSHAKE) {
            char why[300];
            snprintf(why, sizeof(why), "handshake refused: %.200s: %.64s", m->code, m->text);
            link_down(c, WP_EPROTO, why, true);
            break;
        }
        r = m->id ? req_find(c, (int64_t)m->id) : NULL;
        if (r) {
            wp_err_set(&err, WP_EPROTO, "sandbox rejected the request: %s: %s", m->code,
                       m->text);
            req_done(c, r, WP_EPROTO, err.msg, strlen(err.msg), true, &err);
        } else {
            log_warn("hands error code=%s message=%s", m->code, m->text);
        }
        break;
    default:
        log_warn("unexpected message type=%s from hands", alink_msg_type_name(m->type));
        break;
    }
}

static void process_input(struct alink_client *c)
{
    unsigned gen = c->gen;
    size_t off = 0;

    while (off < c->in.len) {
        const uint8_t *payload = NULL;
        size_t plen = 0;
        struct alink_msg m;
        struct wp_err err;
        int rc = alink_frame_decode((const uint8_t *)c->in.data + off, c->in.len - off,
                                    c->opts.max_frame, &payload, &plen);
        if (rc == 0)
            break;
        if (rc < 0) {
            link_down(c, WP_ETOOBIG, "frame from hands over the maximum size", true);
            return;
        }
        off += (size_t)rc;
        if (alink_msg_parse(payload, plen, &m, NULL, &err) < 0) {
            /* The hands only send what this file can parse: a bad frame
             * means the peer is not a hands of this version. */
            link_down(c, WP_EPROTO, err.msg, true);
            return;
        }
        handle(c, &m);
        alink_msg_free(&m);
        if (c->gen != gen)
            return; /* the link went down under a callback: buffer reset */
    }
    wp_buf_consume(&c->in, off);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct alink_client *c = w->data;
    unsigned gen = c->gen;
    char buf[65536];
    (void)loop;

    c->in_cb++; /* keep c alive until this function returns */
    if (revents & EV_WRITE)
        flush(c);
    if ((revents & EV_READ) && c->gen == gen) {
        for (int rounds = 0; rounds < 16 && c->gen == gen; rounds++) {
            ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            if (n <= 0) {
                char why[128];
                snprintf(why, sizeof(why), "%s", n == 0 ? "peer closed" : strerror(errno));
                link_down(c, n == 0 ? -ECONNRESET : -errno, why, true);
                break;
            }
            if (wp_buf_append(&c->in, buf, (size_t)n) < 0) {
                link_down(c, WP_ETOOBIG, "input buffer overflow", true);
                break;
            }
            process_input(c);
            if ((size_t)n < sizeof(buf))
                break;
        }
    }
    c->in_cb--;
    if (c->freeing && !c->in_cb)
        real_free(c);
}

/* ---- API ---------------------------------------------------------------- */

int alink_client_new(struct ev_loop *loop, const struct alink_client_opts *opts,
                     struct alink_client **out, struct wp_err *err)
{
    struct alink_client *c;

    if (!loop || !out)
        return wp_err_set(err, -EINVAL, "alink_client_new: loop and out are required");
    c = calloc(1, sizeof(*c));
    if (!c)
        return wp_err_set(err, -ENOMEM, "alink_client_new: out of memory");
    c->magic = CLIENT_MAGIC;
    c->loop = loop;
    if (opts)
        c->opts = *opts;
    if (!c->opts.max_frame)
        c->opts.max_frame = ALINK_FRAME_MAX_DEFAULT;
    if (c->opts.connect_timeout_s <= 0)
        c->opts.connect_timeout_s = 5.0;
    c->fd = -1;
    c->next_id = 1;
    wp_buf_init(&c->in, c->opts.max_frame + ALINK_FRAME_HDR + 65536);
    wp_buf_init(&c->out, OUT_MAX);
    ev_init(&c->io, io_cb);
    c->io.data = c;
    ev_init(&c->conn_timer, conn_timeout_cb);
    c->conn_timer.data = c;
    *out = c;
    return 0;
}

int alink_client_connect_fd(struct alink_client *c, int fd, alink_connect_cb cb, void *ctx,
                            struct wp_err *err)
{
    json_t *hello;
    int rc;

    wp_assert(c && c->magic == CLIENT_MAGIC);
    if (c->state != ST_IDLE || c->freeing) {
        close(fd);
        return wp_err_set(err, WP_ESTATE, "agentlink client already connected");
    }
    if (!cb) {
        close(fd);
        return wp_err_set(err, -EINVAL, "connect: callback required");
    }
    c->fd = fd;
    c->state = ST_HANDSHAKE;
    ev_io_set(&c->io, fd, EV_READ);
    ev_io_start(c->loop, &c->io);
    hello = alink_msg_hello(ALINK_PROTO_VERSION);
    rc = hello ? alink_frame_encode(&c->out, hello, c->opts.max_frame, err)
               : wp_err_set(err, -ENOMEM, "out of memory");
    json_decref(hello);
    if (rc < 0) {
        c->connect_cb = NULL;
        link_down(c, rc, "hello", false);
        return rc;
    }
    c->connect_cb = cb;
    c->connect_ctx = ctx;
    ev_timer_set(&c->conn_timer, c->opts.connect_timeout_s, 0.);
    ev_timer_start(c->loop, &c->conn_timer);
    /* Sent from the loop (EV_WRITE) so a write error reports through cb,
     * never both through cb and a return value. */
    ev_io_stop(c->loop, &c->io);
    ev_io_set(&c->io, fd, EV_READ | EV_WRITE);
    ev_io_start(c->loop, &c->io);
    return 0;
}

int alink_client_connect_unix(struct alink_client *c, const char *path, alink_connect_cb cb,
                              void *ctx, struct wp_err *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd;

    wp_assert(c && c->magic == CLIENT_MAGIC);
    if (!path || strlen(path) >= sizeof(sa.sun_path))
        return wp_err_set(err, -EINVAL, "connect: bad socket path");
    if (c->state != ST_IDLE)
        return wp_err_set(err, WP_ESTATE, "agentlink client already connected");
    memcpy(sa.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return wp_err_errno(err, "socket");
    /* A Unix connect completes at once or fails (EAGAIN = backlog full). */
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int rc = wp_err_errno(err, "connect %s", path);
        close(fd);
        return rc;
    }
    return alink_client_connect_fd(c, fd, cb, ctx, err);
}

static int64_t start_req(struct alink_client *c, json_t *msg, int64_t id, double deadline_s,
                         int64_t timeout_ms, alink_chunk_cb on_chunk, alink_result_cb cb,
                         void *ctx, struct wp_err *err)
{
    struct alink_req *r;
    int rc;

    r = calloc(1, sizeof(*r));
    if (!r)
        return wp_err_set(err, -ENOMEM, "out of memory");
    r->id = id;
    r->cb = cb;
    r->on_chunk = on_chunk;
    r->ctx = ctx;
    r->c = c;
    r->timeout_ms = timeout_ms;
    /* Encode before registering: a failure leaves nothing behind. */
    bool was_empty = c->out.len == 0;
    rc = alink_frame_encode(&c->out, msg, c->opts.max_frame, err);
    if (rc < 0) {
        free(r);
        return rc;
    }
    r->next = c->reqs;
    if (c->reqs)
        c->reqs->prev = r;
    c->reqs = r;
    c->n_reqs++;
    ev_timer_init(&r->timer, req_timeout_cb, deadline_s, 0.);
    r->timer.data = r;
    ev_timer_start(c->loop, &r->timer);
    /* Flushing may find the link dead; that fails r through its cb, which
     * is fine: we return the id (>= 0) and cb is called exactly once. */
    if (was_empty)
        flush(c);
    return id;
}

int64_t alink_client_call(struct alink_client *c, const char *tool, const json_t *input,
                          const struct alink_call_opts *opts, alink_result_cb cb, void *ctx,
                          struct wp_err *err)
{
    struct alink_call_opts o = {0};
    json_t *msg;
    int64_t id, rc;
    double deadline;

    wp_assert(c && c->magic == CLIENT_MAGIC);
    if (!tool || !json_is_object(input) || !cb)
        return wp_err_set(err, -EINVAL, "call: tool, input object and cb are required");
    if (c->state == ST_IDLE || c->freeing)
        return wp_err_set(err, WP_ESTATE, "call: agentlink client not connected");
    if (opts)
        o = *opts;
    if (o.timeout_ms < 0)
        return wp_err_set(err, -EINVAL, "call: negative timeout");
    id = c->next_id++;
    msg = json_pack("{s:s, s:I, s:s, s:O, s:I, s:b}", "t", "call", "id", (json_int_t)id,
                    "tool", tool, "input", (json_t *)input, "timeout_ms",
                    (json_int_t)o.timeout_ms, "stream", o.on_chunk != NULL);
    if (!msg)
        return wp_err_set(err, -ENOMEM, "call: cannot build message");
    deadline = (double)(o.timeout_ms > 0 ? o.timeout_ms : 120000) / 1000.0 +
               (o.client_grace_s > 0 ? o.client_grace_s : 5.0);
    rc = start_req(c, msg, id, deadline, o.timeout_ms > 0 ? o.timeout_ms : 120000, o.on_chunk,
                   cb, ctx, err);
    json_decref(msg);
    return rc;
}

int64_t alink_client_attach(struct alink_client *c, const struct alink_attach *a,
                            alink_result_cb cb, void *ctx, struct wp_err *err)
{
    uint8_t seed[32];
    const uint8_t *s;
    size_t slen;
    char hex[2 * 256 + 1];
    json_t *msg, *env;
    int64_t id, rc;

    wp_assert(c && c->magic == CLIENT_MAGIC);
    if (!a || !a->session_id || !cb)
        return wp_err_set(err, -EINVAL, "attach: session id and cb are required");
    if (c->state == ST_IDLE || c->freeing)
        return wp_err_set(err, WP_ESTATE, "attach: agentlink client not connected");
    s = a->seed;
    slen = a->seed_len;
    if (!s) {
        if (getrandom(seed, sizeof(seed), 0) != (ssize_t)sizeof(seed))
            return wp_err_errno(err, "attach: getrandom");
        s = seed;
        slen = sizeof(seed);
    }
    if (slen > 256)
        return wp_err_set(err, -EINVAL, "attach: seed over 256 bytes");
    for (size_t i = 0; i < slen; i++)
        snprintf(hex + 2 * i, 3, "%02x", s[i]);
    hex[2 * slen] = '\0';
    env = json_object();
    for (size_t i = 0; env && i < a->n_env; i++)
        json_object_set_new(env, a->env[i].name, json_string(a->env[i].value));
    id = c->next_id++;
    msg = json_pack("{s:s, s:I, s:s, s:o, s:s}", "t", "attach", "id", (json_int_t)id, "session",
                    a->session_id, "env", env, "seed", hex);
    if (msg && a->workdir)
        json_object_set_new(msg, "workdir", json_string(a->workdir));
    if (msg && a->hostname)
        json_object_set_new(msg, "hostname", json_string(a->hostname));
    if (!msg)
        return wp_err_set(err, -ENOMEM, "attach: cannot build message");
    rc = start_req(c, msg, id, 10.0, 10000, NULL, cb, ctx, err);
    json_decref(msg);
    return rc;
}

int alink_client_cancel(struct alink_client *c, int64_t id, struct wp_err *err)
{
    struct alink_req *r;
    json_t *m;

    wp_assert(c && c->magic == CLIENT_MAGIC);
    r = req_find(c, id);
    if (!r)
        return wp_err_set(err, WP_ENOTFOUND, "cancel: no call %lld in flight", (long long)id);
    m = alink_msg_cancel((uint64_t)id);
    if (m)
        send_msg(c, m, NULL);
    json_decref(m);
    /* send_msg may have found the link dead and failed r already. */
    r = req_find(c, id);
    if (r)
        req_fail(c, r, -ECANCELED, "cancelled");
    return 0;
}

size_t alink_client_inflight(const struct alink_client *c)
{
    return c->n_reqs;
}

bool alink_client_connected(const struct alink_client *c)
{
    return c->state == ST_READY;
}

void alink_client_close(struct alink_client *c)
{
    wp_assert(c && c->magic == CLIENT_MAGIC);
    link_down(c, -ECONNABORTED, "closed by the host", false);
}

void alink_client_free(struct alink_client *c)
{
    if (!c)
        return;
    wp_assert(c->magic == CLIENT_MAGIC);
    if (c->freeing)
        return;
    c->freeing = true;
    link_down(c, -ECONNABORTED, "closed by the host", false);
    if (!c->in_cb)
        real_free(c);
}
