/* server.c - listener, connections and the request lifecycle on libev.
 *
 * One struct sched_conn per client with its watchers embedded (read, write,
 * one timer). A connection serves one request at a time: the parser pauses
 * at the end of each message and the rest of a pipelined batch waits in
 * conn->in until the response is queued. Closing is two-phase: close()
 * stops the watchers and moves the connection to a close list that the
 * ev_prepare watcher frees before the loop sleeps (style habit 3).
 */
#define WP_LOG_COMPONENT "sched"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/log.h"
#include "base/net.h"
#include "base/timeutil.h"
#include "scheduler/metrics.h"
#include "scheduler/sched_int.h"

#define CONN_OUT_MAX (64u << 20)

struct sched_conn {
    struct sched_server *srv;
    int fd;
    struct in6_addr peer;  /* the client's address (IPv4 mapped), for the per-address limit */
    ev_io rio, wio;
    ev_timer timer;
    struct sched_http_parser parser;
    struct wp_buf in;   /* bytes read, not yet parsed */
    struct wp_buf out;  /* bytes queued for the client */
    struct sched_req *req;
    struct sched_sse *sse;
    void (*close_cb)(void *ctx); /* other streams (execute): told when c closes */
    void *close_ctx;
    bool closing;
    bool close_after_write;
    bool sse_mode;
    bool processing;
    bool timer_is_header;
    void *ssl;               /* HTTPS: this connection's SSL (tls.c), else NULL */
    bool read_wants_write;   /* TLS: a read waits for the socket to be writable */
    bool write_wants_read;   /* TLS: a write waits for it to be readable */
    struct sched_conn *next, *prev; /* live list */
    struct sched_conn *next_close;
};

static void process_input(struct sched_conn *c);
static void flush_out(struct sched_conn *c);

/* The head is in: refuse a request that carries no credential that could
 * be valid before a byte of its body is kept (route.c). */
static int head_check(void *arg, struct sched_http_req *req, const char **why)
{
    struct sched_conn *c = arg;
    return sched__early_auth(c->srv, req, &req->body.max, why);
}

/* Connections from one address, to cap what one client can hold open. */
static int conns_from(const struct sched_server *srv, const struct in6_addr *a)
{
    int n = 0;
    for (const struct sched_conn *c = srv->conns; c; c = c->next)
        n += memcmp(&c->peer, a, sizeof(*a)) == 0;
    return n;
}

static const char *status_text(int status)
{
    switch (status) {
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    case 529: return "Overloaded";
    default: return "Status";
    }
}

const char *sched__error_type_for(int status)
{
    switch (status) {
    case 400: case 405: case 413: case 415: case 431: case 505:
        return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 408: return "timeout_error";
    case 409: return "conflict_error";
    case 429: return "rate_limit_error";
    case 503: case 529: return "overloaded_error";
    default: return "api_error";
    }
}

/* ---- connection output ---- */

int sched__conn_write(struct sched_conn *c, const char *p, size_t n)
{
    if (c->closing)
        return WP_ESTATE;
    int rc = wp_buf_append(&c->out, p, n);
    if (rc < 0)
        return rc;
    flush_out(c);
    return 0;
}

size_t sched__conn_queued(const struct sched_conn *c)
{
    return c->out.len;
}

bool sched__conn_closing(const struct sched_conn *c)
{
    return c->closing;
}

void sched__conn_set_sse(struct sched_conn *c, struct sched_sse *s)
{
    c->sse = s;
}

void sched__conn_on_close(struct sched_conn *c, void (*cb)(void *ctx), void *ctx)
{
    c->close_cb = cb;
    c->close_ctx = ctx;
}

void sched__conn_end(struct sched_conn *c)
{
    if (c->closing)
        return;
    c->close_after_write = true;
    flush_out(c); /* closes at once when nothing is queued */
}

static void flush_out(struct sched_conn *c)
{
    struct ev_loop *loop = c->srv->loop;
    c->write_wants_read = false;
    while (c->out.len > 0) {
        if (c->ssl) {
            ssize_t n = sched__tls_write(c->ssl, c->out.data, c->out.len);
            if (n == SCHED_TLS_WANT_WRITE)
                break;
            if (n == SCHED_TLS_WANT_READ) { /* the handshake first: read_cb calls again */
                c->write_wants_read = true;
                ev_io_stop(loop, &c->wio);
                return;
            }
            if (n <= 0) {
                log_debug("TLS write failed fd=%d (%zd)", c->fd, n);
                sched__conn_close(c);
                return;
            }
            wp_buf_consume(&c->out, (size_t)n);
            continue;
        }
        ssize_t n = send(c->fd, c->out.data, c->out.len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            log_debug("send failed fd=%d errno=%d", c->fd, errno);
            sched__conn_close(c);
            return;
        }
        wp_buf_consume(&c->out, (size_t)n);
    }
    if (c->out.len > 0) {
        if (!ev_is_active(&c->wio))
            ev_io_start(loop, &c->wio);
        return;
    }
    ev_io_stop(loop, &c->wio);
    if (c->close_after_write && !c->closing) {
        if (c->ssl) {
            sched__tls_conn_free(c->ssl, true); /* close_notify: the response is whole */
            c->ssl = NULL;
        }
        shutdown(c->fd, SHUT_WR);
        sched__conn_close(c);
        return;
    }
    if (c->sse_mode && c->sse)
        sched__sse_conn_drained(c->sse);
}

static void read_cb(struct ev_loop *loop, ev_io *w, int revents);

static void write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct sched_conn *c = w->data;
    if (c->read_wants_write) {
        c->read_wants_write = false;
        read_cb(loop, &c->rio, revents);
        if (c->closing)
            return;
    }
    if (c->out.len > 0)
        flush_out(c);
    else
        ev_io_stop(loop, w);
}

/* ---- timers ---- */

static void arm_timer(struct sched_conn *c, double secs, bool header)
{
    ev_timer_stop(c->srv->loop, &c->timer);
    ev_timer_set(&c->timer, secs, 0.);
    ev_timer_start(c->srv->loop, &c->timer);
    c->timer_is_header = header;
}

static void write_error_and_close(struct sched_conn *c, int status, const char *msg)
{
    struct sched_server *srv = c->srv;
    char body[512], head[512], rid[40];
    /* Even a request that never parsed gets a request-id. */
    snprintf(rid, sizeof(rid), "req_%08llx%010llx",
             (unsigned long long)(srv->boot_id & 0xffffffffu),
             (unsigned long long)++srv->req_seq);
    json_t *j = json_pack("{s:s,s:{s:s,s:s},s:s}", "type", "error", "error", "type",
                          sched__error_type_for(status), "message", msg, "request_id", rid);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    snprintf(body, sizeof(body), "%s", s ? s : "{}");
    free(s);
    json_decref(j);
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                      "content-length: %zu\r\nrequest-id: %s\r\nconnection: close\r\n\r\n",
                      status, status_text(status), strlen(body), rid);
    c->close_after_write = true;
    ev_io_stop(srv->loop, &c->rio);
    wp_buf_append(&c->out, head, (size_t)hl);
    wp_buf_append(&c->out, body, strlen(body));
    flush_out(c);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct sched_conn *c = w->data;
    if (c->timer_is_header && !c->req) {
        log_info("request timeout fd=%d (slow client)", c->fd);
        write_error_and_close(c, 408, "request not received in time");
        return;
    }
    if (!c->req && !c->sse_mode)
        sched__conn_close(c);
}

/* ---- connection lifecycle ---- */

void sched__conn_close(struct sched_conn *c)
{
    struct sched_server *srv = c->srv;
    if (c->closing)
        return;
    c->closing = true;
    ev_io_stop(srv->loop, &c->rio);
    ev_io_stop(srv->loop, &c->wio);
    ev_timer_stop(srv->loop, &c->timer);
    sched__tls_conn_free(c->ssl, false);
    c->ssl = NULL;
    close(c->fd);
    c->fd = -1;
    if (c->req) {
        c->req->conn = NULL; /* the request finishes on its own, silently */
        c->req->http = NULL; /* it pointed into this connection's parser */
        c->req = NULL;
    }
    if (c->sse) {
        struct sched_sse *s = c->sse;
        c->sse = NULL;
        sched__sse_conn_closed(s);
    }
    if (c->close_cb) {
        void (*cb)(void *) = c->close_cb;
        c->close_cb = NULL;
        cb(c->close_ctx);
    }
    /* Unlink from the live list; free before the loop sleeps. */
    srv->nconns--;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next_close = srv->close_list;
    srv->close_list = c;
    if (srv->draining && !srv->conns)
        sched_server_drain(srv); /* last one out stops the loop */
}

static void conn_free(struct sched_conn *c)
{
    sched_http_parser_free(&c->parser);
    wp_buf_free(&c->in);
    wp_buf_free(&c->out);
    free(c);
}

/* Bytes from the client; false when the connection is done with. */
static bool got_bytes(struct sched_conn *c, const char *p, size_t n)
{
    if (c->sse_mode)
        return true; /* a stream's client has nothing more to say */
    if (wp_buf_append(&c->in, p, n) < 0) {
        write_error_and_close(c, 413, "request too large");
        return false;
    }
    return true;
}

/* HTTPS: read until OpenSSL wants the socket again (what it decrypted is
 * not visible to poll, so one read per wake-up is not enough). */
static void tls_read(struct sched_conn *c)
{
    char tmp[16384];
    for (;;) {
        ssize_t n = sched__tls_read(c->ssl, tmp, sizeof(tmp));
        if (n == SCHED_TLS_WANT_READ)
            break;
        if (n == SCHED_TLS_WANT_WRITE) {
            c->read_wants_write = true;
            ev_io_start(c->srv->loop, &c->wio);
            break;
        }
        if (n <= 0) { /* closed, or not TLS at all (a plain-HTTP client) */
            sched__conn_close(c);
            return;
        }
        if (!got_bytes(c, tmp, (size_t)n))
            return;
    }
    if (c->write_wants_read)
        flush_out(c);
    if (!c->closing && !c->req)
        process_input(c);
}

static void read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    struct sched_conn *c = w->data;
    char tmp[16384];
    if (c->ssl) {
        tls_read(c);
        return;
    }
    ssize_t n = recv(c->fd, tmp, sizeof(tmp), 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR || errno == EWOULDBLOCK)
            return;
        sched__conn_close(c);
        return;
    }
    if (n == 0) {
        sched__conn_close(c);
        return;
    }
    if (!got_bytes(c, tmp, (size_t)n))
        return;
    if (!c->req)
        process_input(c);
}

static void new_req(struct sched_conn *c);

static void process_input(struct sched_conn *c)
{
    struct sched_server *srv = c->srv;
    if (c->processing)
        return;
    c->processing = true;
    while (!c->closing && !c->req && !c->sse_mode && !c->close_after_write) {
        size_t used = 0;
        int rc = sched_http_parser_feed(&c->parser, c->in.data, c->in.len, &used);
        wp_buf_consume(&c->in, used);
        if (rc == SCHED_HTTP_MORE) {
            if (c->parser.in_message && !c->timer_is_header)
                arm_timer(c, srv->cfg.header_timeout, true);
            break;
        }
        if (rc < 0) {
            log_info("bad request fd=%d status=%d reason=%s", c->fd, c->parser.err_status,
                     c->parser.err_reason);
            write_error_and_close(c, c->parser.err_status, c->parser.err_reason);
            break;
        }
        ev_timer_stop(srv->loop, &c->timer);
        c->timer_is_header = false;
        new_req(c);
    }
    c->processing = false;
}

/* Called when a request's response has been queued (or the stream took the
 * connection): get ready for the next pipelined request. */
static void conn_request_done(struct sched_conn *c, bool keep_alive)
{
    struct sched_server *srv = c->srv;
    c->req = NULL;
    if (c->closing || c->sse_mode)
        return;
    if (!keep_alive || srv->draining) {
        c->close_after_write = true;
        if (c->out.len == 0) {
            sched__conn_close(c);
        }
        return;
    }
    sched_http_parser_next(&c->parser);
    arm_timer(c, srv->cfg.idle_timeout, false);
    if (!c->processing)
        process_input(c);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct sched_server *srv = w->data;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(srv->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: the listener would stay readable and
                 * spin the loop; pause accepting for a moment instead. */
                log_warn("accept: %s; pausing the listener for 100 ms", strerror(errno));
                ev_io_stop(loop, &srv->listen_io);
                ev_timer_set(&srv->accept_pause, 0.1, 0.);
                ev_timer_start(loop, &srv->accept_pause);
            } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                log_perror("accept");
            }
            return;
        }
        int one = 1;
        struct in6_addr peer = { 0 };
        if (ss.ss_family == AF_INET6) {
            peer = ((struct sockaddr_in6 *)&ss)->sin6_addr;
        } else if (ss.ss_family == AF_INET) {
            peer.s6_addr[10] = peer.s6_addr[11] = 0xff;
            memcpy(&peer.s6_addr[12], &((struct sockaddr_in *)&ss)->sin_addr, 4);
        }
        bool per_addr = srv->cfg.max_conns_per_addr > 0 &&
                        conns_from(srv, &peer) >= srv->cfg.max_conns_per_addr;
        if ((srv->cfg.max_conns > 0 && srv->nconns >= srv->cfg.max_conns) || per_addr) {
            /* Best effort, non-blocking: a full socket buffer just drops it. */
            static const char body[] = "{\"type\":\"error\",\"error\":{\"type\":"
                                       "\"overloaded_error\",\"message\":\"too many connections\"}}";
            char busy[512];
            int bl = snprintf(busy, sizeof(busy),
                              "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                              "content-length: %zu\r\nrequest-id: req_%08llx%010llx\r\n"
                              "connection: close\r\n\r\n%s",
                              sizeof(body) - 1, (unsigned long long)(srv->boot_id & 0xffffffffu),
                              (unsigned long long)++srv->req_seq, body);
            if (!srv->tls) { /* plain text means nothing to a TLS client */
                ssize_t sent = send(fd, busy, (size_t)bl, MSG_NOSIGNAL);
                (void)sent;
            }
            close(fd);
            continue;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct sched_conn *c = calloc(1, sizeof(*c));
        if (!c || sched_http_parser_init(&c->parser, srv->cfg.max_head, srv->cfg.max_body)) {
            free(c);
            close(fd);
            continue;
        }
        if (srv->tls && !(c->ssl = sched__tls_conn_new(srv->tls, fd))) {
            sched_http_parser_free(&c->parser);
            free(c);
            close(fd);
            continue;
        }
        c->srv = srv;
        c->fd = fd;
        c->peer = peer;
        c->parser.on_head = head_check;
        c->parser.on_head_arg = c;
        wp_buf_init(&c->in, srv->cfg.max_head + srv->cfg.max_body + 65536);
        wp_buf_init(&c->out, CONN_OUT_MAX);
        ev_io_init(&c->rio, read_cb, fd, EV_READ);
        ev_io_init(&c->wio, write_cb, fd, EV_WRITE);
        ev_timer_init(&c->timer, timer_cb, 0., 0.);
        c->rio.data = c->wio.data = c->timer.data = c;
        c->next = srv->conns;
        if (srv->conns)
            srv->conns->prev = c;
        srv->conns = c;
        srv->nconns++;
        ev_io_start(loop, &c->rio);
        arm_timer(c, srv->cfg.idle_timeout, false);
    }
}

static void accept_pause_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct sched_server *srv = w->data;
    if (!srv->draining && srv->listen_fd >= 0)
        ev_io_start(loop, &srv->listen_io);
}

/* ---- requests ---- */

static void req_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct sched_req *req = w->data;
    if (!req->answered)
        sched__respond_error(req, 503, "api_error", NULL, "storage did not answer in time");
}

static void req_free(struct sched_req *req)
{
    for (int i = 0; i < req->nquery; i++) {
        free(req->qkeys[i]);
        free(req->qvals[i]);
    }
    json_decref(req->body);
    json_decref(req->tmp);
    json_decref(req->tmp2);
    free(req);
}

static void new_req(struct sched_conn *c)
{
    struct sched_server *srv = c->srv;
    struct sched_req *req = calloc(1, sizeof(*req));
    if (!req) {
        write_error_and_close(c, 503, "out of memory");
        return;
    }
    req->srv = srv;
    req->conn = c;
    req->http = &c->parser.req;
    snprintf(req->request_id, sizeof(req->request_id), "req_%08llx%010llx",
             (unsigned long long)(srv->boot_id & 0xffffffffu),
             (unsigned long long)++srv->req_seq);
    ev_timer_init(&req->timeout, req_timeout_cb, srv->cfg.redis_timeout, 0.);
    req->timeout.data = req;
    c->req = req;
    sched__dispatch(req);
}

void sched__req_finish(struct sched_req *req)
{
    struct sched_conn *c = req->conn;
    /* req->http lives in the connection's parser: only valid while c is. */
    bool keep_alive = c && req->http ? req->http->keep_alive : false;
    req->answered = true;
    ev_timer_stop(req->srv->loop, &req->timeout);
    req->conn = NULL;
    if (c)
        conn_request_done(c, keep_alive);
    if (req->pending == 0)
        req_free(req);
}

void sched__req_hold(struct sched_req *req)
{
    req->pending++;
}

bool sched__req_release(struct sched_req *req)
{
    req->pending--;
    if (req->answered || !req->conn) {
        if (!req->answered) {
            req->answered = true;
            ev_timer_stop(req->srv->loop, &req->timeout);
        }
        if (req->pending == 0)
            req_free(req);
        return false;
    }
    return true;
}

void sched__respond_raw(struct sched_req *req, int status, const char *json, size_t len)
{
    sched__respond_body(req, status, "application/json", json, len);
}

void sched__respond_body(struct sched_req *req, int status, const char *content_type,
                         const char *json, size_t len)
{
    struct sched_conn *c = req->conn;
    if (req->answered)
        return;
    if (c && !c->closing) {
        char head[1024];
        bool ka = req->http->keep_alive && !req->srv->draining;
        int hl = snprintf(head, sizeof(head),
                          "HTTP/1.1 %d %s\r\ncontent-type: %s\r\n"
                          "content-length: %zu\r\nrequest-id: %s\r\n%s%s\r\n",
                          status, status_text(status), content_type, len, req->request_id,
                          ka ? "" : "connection: close\r\n", req->extra_headers);
        if (wp_buf_append(&c->out, head, (size_t)hl) < 0 ||
            wp_buf_append(&c->out, json, len) < 0) {
            c->close_after_write = true;
        }
        log_debug("%s %s -> %d request_id=%s", req->http->method, sched_http_url(req->http),
                  status, req->request_id);
    }
    sched__req_finish(req);
    if (c && !c->closing)
        flush_out(c);
}

void sched__respond_json(struct sched_req *req, int status, json_t *body)
{
    /* Ten significant digits: a timing of 0.582 ms prints so, not as
     * 0.58199999999999996. */
    char *s = body ? json_dumps(body, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_REAL_PRECISION(10))
                   : NULL;
    json_decref(body);
    if (!s) {
        sched__respond_raw(req, 500, "{\"type\":\"error\",\"error\":{\"type\":\"api_error\","
                                     "\"message\":\"could not encode the response\"}}", 83);
        return;
    }
    sched__respond_raw(req, status, s, strlen(s));
    free(s);
}

void sched__respond_error(struct sched_req *req, int status, const char *type,
                          const char *error_code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (!type)
        type = sched__error_type_for(status);
    json_t *err = json_pack("{s:s,s:s}", "type", type, "message", msg);
    if (error_code)
        json_object_set_new(err, "details", json_pack("{s:s}", "error_code", error_code));
    json_t *body = json_pack("{s:s,s:o,s:s}", "type", "error", "error", err, "request_id",
                             req->request_id);
    /* Conflicts here are semantic: a retry cannot succeed (managed-agents-api.md 4). */
    if (status == 409 && !strstr(req->extra_headers, "x-should-retry"))
        strncat(req->extra_headers, "x-should-retry: false\r\n",
                sizeof(req->extra_headers) - strlen(req->extra_headers) - 1);
    sched__respond_json(req, status, body);
}

struct req_cmd {
    struct sched_req *req;
    wp_redis_cb cb;
};

static void req_reply_cb(void *ctx, redisReply *reply)
{
    struct req_cmd *rc = ctx;
    struct sched_req *req = rc->req;
    wp_redis_cb cb = rc->cb;
    free(rc);
    req->pending--;
    if (req->answered || !req->conn) {
        if (!req->answered) {
            req->answered = true;
            ev_timer_stop(req->srv->loop, &req->timeout);
        }
        if (req->pending == 0)
            req_free(req);
        return;
    }
    if (!reply) {
        sched__respond_error(req, 503, "api_error", NULL, "storage unavailable");
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR && !strncmp(reply->str, "NOTREPLICATED", 13)) {
        /* Durable mode (--redis-wait-replicas): written on the primary only,
         * so not acknowledged; a retry may find it there. */
        sched__respond_error(req, 503, "api_error", NULL, "storage did not replicate in time");
        return;
    }
    if (req->pending == 0)
        ev_timer_stop(req->srv->loop, &req->timeout);
    cb(req, reply);
}

static int req_send(struct sched_req *req, const char *script, wp_redis_cb cb, int nkeys,
                    int argc, const char **argv, const size_t *lens)
{
    struct req_cmd *rc = malloc(sizeof(*rc));
    if (!rc)
        return -ENOMEM;
    rc->req = req;
    rc->cb = cb;
    int r = script ? wp_redis_script(req->srv->rds, script, req_reply_cb, rc, nkeys, argc,
                                         argv, lens)
                   : wp_redis_argv(req->srv->rds, req_reply_cb, rc, argc, argv, lens);
    if (r < 0) {
        free(rc);
        sched__respond_error(req, 503, "api_error", NULL, "storage unavailable");
        return r;
    }
    req->pending++;
    if (!ev_is_active(&req->timeout)) {
        ev_timer_set(&req->timeout, req->srv->cfg.redis_timeout, 0.);
        ev_timer_start(req->srv->loop, &req->timeout);
    }
    return 0;
}

int sched__req_redis(struct sched_req *req, wp_redis_cb cb, int argc, const char **argv,
                     const size_t *lens)
{
    return req_send(req, NULL, cb, 0, argc, argv, lens);
}

int sched__req_script(struct sched_req *req, const char *script, wp_redis_cb cb,
                      int nkeys, int argc, const char **argv, const size_t *lens)
{
    return req_send(req, script, cb, nkeys, argc, argv, lens);
}

struct sched_conn *sched__conn_take_for_sse(struct sched_req *req)
{
    struct sched_conn *c = req->conn;
    if (!c || c->closing)
        return NULL;
    char head[512];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                      "cache-control: no-cache\r\nrequest-id: %s\r\nconnection: close\r\n"
                      "x-accel-buffering: no\r\n\r\n: connected\n\n",
                      req->request_id);
    c->sse_mode = true;
    ev_timer_stop(req->srv->loop, &c->timer);
    wp_buf_append(&c->out, head, (size_t)hl);
    sched__req_finish(req); /* the request is over; the connection lives on */
    flush_out(c);
    return c->closing ? NULL : c;
}

/* ---- server ---- */

static void prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)revents;
    struct sched_server *srv = w->data;
    while (srv->close_list) {
        struct sched_conn *c = srv->close_list;
        srv->close_list = c->next_close;
        conn_free(c);
    }
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)revents;
    struct sched_server *srv = w->data;
    log_info("signal %d: draining", w->signum);
    sched_server_drain(srv);
}

static void drain_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct sched_server *srv = w->data;
    log_warn("drain timeout: closing %s connections", srv->conns ? "remaining" : "no");
    srv->drain_forced = true;
    while (srv->conns)
        sched__conn_close(srv->conns);
    sched_server_drain(srv);
}

void sched_server_drain(struct sched_server *srv)
{
    struct ev_loop *loop = srv->loop;
    if (!srv->draining) {
        srv->draining = true;
        ev_io_stop(loop, &srv->listen_io);
        ev_timer_stop(loop, &srv->accept_pause);
        if (srv->listen_fd >= 0) {
            close(srv->listen_fd);
            srv->listen_fd = -1;
        }
        /* Sessions this process runs go to other schedulers now, not
         * when their leases would expire. */
        sched__brain_handover(srv);
        /* Idle connections and streams go now (streams resume elsewhere);
         * busy ones close after their response. */
        struct sched_conn *c = srv->conns, *next;
        for (; c; c = next) {
            next = c->next;
            if (!c->req)
                sched__conn_close(c);
            else
                c->close_after_write = true;
        }
        if (srv->conns || sched__brain_handovers(srv) > 0) {
            ev_timer_init(&srv->drain_timer, drain_timer_cb, srv->cfg.drain_timeout, 0.);
            srv->drain_timer.data = srv;
            ev_timer_start(loop, &srv->drain_timer);
            return;
        }
    }
    if (srv->conns || (sched__brain_handovers(srv) > 0 && !srv->drain_forced))
        return;
    /* Nothing left: stop every watcher so ev_run returns. */
    ev_timer_stop(loop, &srv->drain_timer);
    ev_signal_stop(loop, &srv->sigterm);
    ev_signal_stop(loop, &srv->sigint);
    /* The files worker first: its jobs' callbacks still reach requests
     * and brains. */
    sched__fio_free(srv->fio);
    srv->fio = NULL;
    sched__brain_shutdown(srv);
    sched__mcp_hub_free(srv);
    sched__sbx_shutdown(srv);
    if (srv->rds) {
        struct wp_redis *r = srv->rds;
        srv->rds = NULL;
        wp_redis_free(r);
    }
    sched__brain_free(srv);
    /* The prepare watcher stays until the close list is empty: free now. */
    prepare_cb(loop, &srv->prepare, 0);
    ev_prepare_stop(loop, &srv->prepare);
}

struct sched_server *sched_server_new(struct ev_loop *loop, const struct sched_config *cfg,
                                      struct wp_err *err)
{
    struct sched_server *srv = NULL;
    int fd = -1;

    srv = calloc(1, sizeof(*srv));
    if (!srv) {
        wp_err_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    srv->loop = loop;
    srv->cfg = *cfg;
    srv->listen_fd = -1;
    srv->boot_id = ((uint64_t)getpid() << 20) ^ wp_now_ns();
    fd = wp_tcp_listen(cfg->listen_host, cfg->listen_port, 1024, &srv->port, err);
    if (fd < 0)
        goto fail;
    srv->listen_fd = fd;
    fd = -1;
    if (cfg->tls_cert[0] && sched__tls_ctx_new(cfg->tls_cert, cfg->tls_key, &srv->tls, err) < 0)
        goto fail;

    if (sched__vault_keys_load(cfg, &srv->vk, err) < 0)
        goto fail;
    log_info("vault key %s from %s%s%s", srv->vk.cur_kid, srv->vk.source,
             srv->vk.has_prev ? ", previous " : "", srv->vk.has_prev ? srv->vk.prev_kid : "");

    srv->rds = wp_redis_new(loop, cfg->redis_host, cfg->redis_port, "cmd");
    if (!srv->rds) {
        wp_err_set(err, -ENOMEM, "redis client");
        goto fail;
    }
    wp_redis_set_wait(srv->rds, cfg->redis_wait_replicas, cfg->redis_wait_ms);
    srv->metrics = sched_metrics_new();
    if (!srv->metrics) {
        wp_err_set(err, -ENOMEM, "metrics registry");
        goto fail;
    }
    /* srv->cfg, not cfg: the worker reads the configuration the server keeps. */
    if (!(srv->fio = sched__fio_new(loop, &srv->cfg, err)))
        goto fail;
    if (sched__sbx_init(srv, err) < 0 || sched__brain_init(srv, err) < 0)
        goto fail;
    ev_timer_init(&srv->accept_pause, accept_pause_cb, 0.1, 0.);
    srv->accept_pause.data = srv;
    ev_io_init(&srv->listen_io, accept_cb, srv->listen_fd, EV_READ);
    srv->listen_io.data = srv;
    ev_io_start(loop, &srv->listen_io);
    ev_signal_init(&srv->sigterm, signal_cb, SIGTERM);
    ev_signal_init(&srv->sigint, signal_cb, SIGINT);
    srv->sigterm.data = srv->sigint.data = srv;
    ev_signal_start(loop, &srv->sigterm);
    ev_signal_start(loop, &srv->sigint);
    ev_prepare_init(&srv->prepare, prepare_cb);
    srv->prepare.data = srv;
    ev_prepare_start(loop, &srv->prepare);
    log_info("listening on %s:%d (%s) redis=%s:%d orgs=%d", cfg->listen_host, srv->port,
             srv->tls ? "https" : "http", cfg->redis_host, cfg->redis_port, cfg->norgs);
    return srv;
fail:
    if (fd >= 0)
        close(fd);
    if (srv && srv->listen_fd >= 0)
        close(srv->listen_fd);
    if (srv) {
        sched__fio_free(srv->fio);
        wp_redis_free(srv->rds);
        sched_metrics_free(srv->metrics);
        sched__tls_ctx_free(srv->tls);
    }
    free(srv);
    return NULL;
}

int sched_server_port(const struct sched_server *srv)
{
    return srv->port;
}

void sched_server_free(struct sched_server *srv)
{
    if (!srv)
        return;
    while (srv->conns)
        sched__conn_close(srv->conns);
    srv->draining = true;
    sched_server_drain(srv);
    sched__metrics_cache_free(srv);
    sched_metrics_free(srv->metrics);
    sched__tls_ctx_free(srv->tls);
    free(srv);
}
