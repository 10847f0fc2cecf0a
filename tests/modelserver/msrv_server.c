/* msrv_server.c - the libev HTTP/1.1 server of wp-modelserver.
 *
 * One struct msrv_conn per client, with its watchers embedded: rio/wio for the
 * socket, and one timer that walks the reply plan (TTFT, then one
 * token interval per segment). The timer is a timerfd watched by an ev_io:
 * libev's epoll backend waits in whole milliseconds, so an ev_timer fires
 * up to 1 ms late, which is most of what the TTFT benchmark measures. The
 * timerfd is armed at the absolute CLOCK_MONOTONIC deadline (the clock of
 * wp_now_ms) and wakes epoll on time. If no timerfd can be had (EMFILE) the
 * conn falls back to an ev_timer. Requests on a keep-alive connection are
 * served one at a time; bytes pipelined behind a request wait in `in`.
 * Closing is two-phase: conn_close() stops the watchers and puts the conn
 * on a list that the ev_prepare watcher frees before the loop sleeps, so
 * nothing is freed under a running callback. */
#define WP_LOG_COMPONENT "msrv"
#include "msrv_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "base/err.h"
#include "base/log.h"
#include "base/net.h"
#include "base/timeutil.h"


static void conn_close(struct msrv_conn *c);
static void process(struct msrv_conn *c);

/* ---- output ---------------------------------------------------------- */

void msrv__send_raw(struct msrv_conn *c, const char *data, size_t len)
{
    if (c->closing || len == 0)
        return;
    if (c->out.len == 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            log_debug("send fd=%d: %s", c->fd, strerror(errno));
            conn_close(c);
            return;
        }
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        }
        if (len == 0)
            return;
    }
    if (wp_buf_append(&c->out, data, len) < 0) {
        log_warn("slow reader fd=%d: output over %d bytes, closing", c->fd, MSRV_OUT_MAX);
        conn_close(c);
        return;
    }
    ev_io_start(c->srv->loop, &c->wio);
}

static void send_chunk(struct msrv_conn *c, const char *data, size_t len)
{
    char head[32];
    int n = snprintf(head, sizeof(head), "%zx\r\n", len);

    msrv__send_raw(c, head, (size_t)n);
    msrv__send_raw(c, data, len);
    msrv__send_raw(c, "\r\n", 2);
}

static void write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct msrv_conn *c = w->data;
    ssize_t n;
    (void)revents;

    n = send(c->fd, c->out.data, c->out.len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            conn_close(c);
        return;
    }
    wp_buf_consume(&c->out, (size_t)n);
    if (c->out.len > 0)
        return;
    ev_io_stop(loop, w);
    if (c->close_when_flushed && !c->busy)
        conn_close(c);
}

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 529: return "Site Overloaded";
    default: return "Unknown";
    }
}

/* ---- request bookkeeping -------------------------------------------- */

static void stats_count(struct msrv_server *srv, int status)
{
    char key[16];
    json_t *v;

    snprintf(key, sizeof(key), "%d", status);
    v = json_object_get(srv->by_status, key);
    json_object_set_new(srv->by_status, key,
                        json_integer(v ? json_integer_value(v) + 1 : 1));
}

static const char *fault_name(enum msrv_fault_kind f)
{
    static const char *names[] = { "none", "status", "error", "drop", "stall" };
    return names[f];
}

/* The response is over (or the connection is): log and count it. */
static void request_done(struct msrv_conn *c, const char *how)
{
    struct msrv_server *srv = c->srv;
    double total = wp_now_ms() - c->t0_ms;

    stats_count(srv, c->status);
    if (c->ttft_ms >= 0 && c->stream) {
        struct msrv_recent *r = &srv->recent[srv->n_recent++ % MSRV_RECENT_MAX];
        srv->late[srv->n_ttft % MSRV_TTFT_RING] = c->ttft_ms - c->plan.ttft_ms;
        srv->ttft[srv->n_ttft++ % MSRV_TTFT_RING] = c->ttft_ms;
        snprintf(r->req_id, sizeof(r->req_id), "%s", c->req_id);
        r->ttft_ms = c->ttft_ms;
        r->planned_ms = c->plan.ttft_ms;
        r->turn = c->turn;
    }
    if (c->stream && srv->n_active > 0)
        srv->n_active--;
    log_info("request id=%s status=%d stream=%d turn=%zu ttft_ms=%.3f planned_ttft_ms=%.3f "
             "total_ms=%.3f output_tokens=%ld stop_reason=%s fault=%s end=%s",
             c->req_id, c->status, c->stream, c->turn, c->ttft_ms, c->plan.ttft_ms, total,
             c->plan.output_tokens, c->plan.stop_reason[0] ? c->plan.stop_reason : "-",
             fault_name(c->fault), how);
    msrv_plan_free(&c->plan);
    c->busy = false;
}

/* Ready for the next request on this connection. */
void msrv__finish(struct msrv_conn *c)
{
    if (c->closing) /* conn_close() already accounted for the request */
        return;
    request_done(c, "complete");
    msrv_parser_next(c->parser);
    if (!c->keep_alive) {
        c->close_when_flushed = true;
        if (c->out.len == 0)
            conn_close(c);
        return;
    }
    if (!c->in_process)
        process(c);
}

void msrv__respond(struct msrv_conn *c, int status, const char *ctype, const char *extra,
                   const char *body, size_t len)
{
    char head[1024];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "request-id: %s\r\nConnection: %s\r\n%s\r\n",
                     status, reason(status), ctype, len, c->req_id,
                     c->keep_alive ? "keep-alive" : "close", extra ? extra : "");

    c->status = status;
    msrv__send_raw(c, head, (size_t)n);
    msrv__send_raw(c, body, len);
}

void msrv__respond_error(struct msrv_conn *c, int status, const char *msg, int retry_after)
{
    char extra[128] = "";
    char *body = msrv_error_body(msrv_error_type(status), msg, c->req_id);

    if (status == 429 || status >= 500) {
        int n = snprintf(extra, sizeof(extra), "x-should-retry: true\r\n");
        if (retry_after >= 0)
            snprintf(extra + n, sizeof(extra) - (size_t)n, "retry-after: %d\r\n", retry_after);
    }
    msrv__respond(c, status, "application/json", extra, body ? body : "{}",
            body ? strlen(body) : 2);
    free(body);
}

/* ---- streaming ------------------------------------------------------- */

static void step(struct msrv_conn *c);

static void tfd_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct msrv_conn *c = w->data;
    uint64_t expirations;
    (void)revents;

    if (read(c->tfd, &expirations, sizeof(expirations)) != (ssize_t)sizeof(expirations))
        return; /* EAGAIN: re-armed since it fired */
    ev_io_stop(loop, w);
    step(c);
}

static bool arm_tfd(struct msrv_conn *c)
{
    struct itimerspec its = { { 0, 0 }, { 0, 0 } };
    double at = c->next_at_ms > 0 ? c->next_at_ms : 0;
    uint64_t ns = (uint64_t)(at * 1e6);

    if (c->tfd < 0 && !c->no_tfd) {
        c->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (c->tfd < 0) {
            log_warn("timerfd_create: %s; falling back to ev_timer", strerror(errno));
            c->no_tfd = true;
            return false;
        }
        ev_io_init(&c->tio, tfd_cb, c->tfd, EV_READ);
        c->tio.data = c;
    }
    if (c->tfd < 0)
        return false;
    if (ns == 0)
        ns = 1; /* an all-zero it_value would disarm */
    its.it_value.tv_sec = (time_t)(ns / 1000000000ull);
    its.it_value.tv_nsec = (long)(ns % 1000000000ull);
    if (timerfd_settime(c->tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
        return false;
    ev_io_start(c->srv->loop, &c->tio);
    return true;
}

void msrv__arm(struct msrv_conn *c)
{
    double delay = c->next_at_ms - wp_now_ms();

    if (arm_tfd(c))
        return;

    ev_now_update(c->srv->loop);
    ev_timer_set(&c->timer, delay > 0 ? delay / 1000.0 : 0., 0.);
    ev_timer_start(c->srv->loop, &c->timer);
}

static void stream_fault(struct msrv_conn *c)
{
    struct msrv_server *srv = c->srv;

    if (c->fault == MSRV_FAULT_STALL) {
        /* A hung upstream: no timer is armed again; the client's idle
         * deadline (or its going away) ends the request. */
        srv->n_fault_stall++;
        return;
    }
    if (c->fault == MSRV_FAULT_DROP) {
        srv->n_fault_drop++;
        request_done(c, "dropped");
        conn_close(c);
        return;
    }
    /* The API ends an overloaded stream with an error event. */
    {
        char *body = msrv_error_body("overloaded_error", "Overloaded", c->req_id);
        char *ev = NULL;
        int n = body ? asprintf(&ev, "event: error\ndata: %s\n\n", body) : -1;
        srv->n_fault_error++;
        if (n > 0)
            send_chunk(c, ev, (size_t)n);
        msrv__send_raw(c, "0\r\n\r\n", 5);
        free(body);
        free(ev);
    }
    if (!c->closing)
        msrv__finish(c);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    step(w->data);
}

/* The timer fired: the whole non-streaming reply, or the next segment. */
static void step(struct msrv_conn *c)
{
    const struct msrv_seg *s;

    if (c->closing || !c->busy)
        return;
    if (!c->stream) {
        char *body = json_dumps(c->plan.message, JSON_COMPACT | JSON_PRESERVE_ORDER);
        c->ttft_ms = wp_now_ms() - c->t0_ms;
        msrv__respond(c, 200, "application/json", NULL, body ? body : "{}",
                      body ? strlen(body) : 2);
        free(body);
        if (!c->closing)
            msrv__finish(c);
        return;
    }
    if (c->fault != MSRV_FAULT_NONE && c->seg == c->fault_at) {
        stream_fault(c);
        return;
    }
    s = &c->plan.segs[c->seg];
    send_chunk(c, s->data, s->len);
    if (c->closing)
        return;
    if (c->seg == 0)
        c->ttft_ms = wp_now_ms() - c->t0_ms;
    if (++c->seg < c->plan.n) {
        c->next_at_ms += c->plan.segs[c->seg].delay_ms;
        msrv__arm(c);
        return;
    }
    msrv__send_raw(c, "0\r\n\r\n", 5);
    if (!c->closing)
        msrv__finish(c);
}

/* ---- input ----------------------------------------------------------- */

static void process(struct msrv_conn *c)
{
    c->in_process = true;
    while (!c->busy && !c->closing && !c->close_when_flushed && c->in_len > 0) {
        struct wp_err err;
        bool done = false;
        int n = msrv_parser_feed(c->parser, c->in, c->in_len, &done, &err);

        if (n < 0) {
            int st = n == WP_ETOOBIG ? (strstr(err.msg, "body") ? 413 : 431) : 400;
            c->busy = true;
            c->keep_alive = false;
            c->t0_ms = wp_now_ms();
            c->ttft_ms = -1;
            msrv_make_id(c->req_id, sizeof(c->req_id), "req", &c->srv->id_rng);
            log_debug("fd=%d: %s", c->fd, err.msg);
            msrv__respond_error(c, st, err.msg, -1);
            c->in_len = 0;
            msrv__finish(c);
            break;
        }
        memmove(c->in, c->in + n, c->in_len - (size_t)n);
        c->in_len -= (size_t)n;
        if (msrv_parser_take_continue(c->parser))
            msrv__send_raw(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        if (done)
            msrv__handle_request(c);
        else if (n == 0)
            break;
    }
    c->in_process = false;
    if (c->closing)
        return;
    if (c->peer_eof) {
        /* Half-closed: everything buffered has been served or is being. */
        if (!c->busy) {
            c->close_when_flushed = true;
            if (c->out.len == 0)
                conn_close(c);
        }
        return;
    }
    if (c->in_len < MSRV_IN_MAX)
        ev_io_start(c->srv->loop, &c->rio);
}

static void read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct msrv_conn *c = w->data;
    ssize_t n;
    (void)revents;

    if (c->in_len == MSRV_IN_MAX) { /* a request is in progress: back-pressure */
        ev_io_stop(loop, w);
        return;
    }
    n = read(c->fd, c->in + c->in_len, MSRV_IN_MAX - c->in_len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n < 0) {
        conn_close(c); /* counts a request cut short as client_gone */
        return;
    }
    if (n == 0) {
        /* EOF: the client may only have shut down its sending side, so
         * buffered requests and the one in progress are still answered. A
         * client that is really gone is noticed when a write fails. */
        c->peer_eof = true;
        ev_io_stop(loop, w);
    }
    c->in_len += (size_t)n;
    process(c);
}

/* ---- connections ----------------------------------------------------- */

static void conn_close(struct msrv_conn *c)
{
    struct msrv_server *srv = c->srv;

    if (c->closing)
        return;
    c->closing = true;
    ev_io_stop(srv->loop, &c->rio);
    ev_io_stop(srv->loop, &c->wio);
    ev_timer_stop(srv->loop, &c->timer);
    if (c->tfd >= 0) {
        ev_io_stop(srv->loop, &c->tio);
        close(c->tfd);
        c->tfd = -1;
        c->no_tfd = srv->cfg->ev_timer;
    }
    close(c->fd);
    c->fd = -1;
    if (c->busy) {
        srv->n_client_gone++;
        request_done(c, "closed");
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->close_next = srv->closed;
    srv->closed = c;
}

static void free_closed(struct msrv_server *srv)
{
    while (srv->closed) {
        struct msrv_conn *c = srv->closed;
        srv->closed = c->close_next;
        msrv_parser_free(c->parser);
        msrv_plan_free(&c->plan);
        wp_buf_free(&c->out);
        free(c);
    }
}

static void prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)revents;
    free_closed(w->data);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct msrv_server *srv = w->data;
    (void)revents;

    for (int i = 0; i < 64; i++) {
        int one = 1;
        int fd = accept4(srv->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct msrv_conn *c;

        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                log_perror("accept");
            return;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c = calloc(1, sizeof(*c));
        if (c)
            c->parser = msrv_parser_new(srv->cfg->max_body);
        if (!c || !c->parser) {
            log_error("out of memory for a connection");
            free(c);
            close(fd);
            return;
        }
        c->srv = srv;
        c->fd = fd;
        c->tfd = -1;
        c->no_tfd = srv->cfg->ev_timer;
        wp_buf_init(&c->out, MSRV_OUT_MAX);
        ev_io_init(&c->rio, read_cb, fd, EV_READ);
        ev_io_init(&c->wio, write_cb, fd, EV_WRITE);
        ev_init(&c->timer, timer_cb);
        c->rio.data = c->wio.data = c->timer.data = c;
        c->next = srv->conns;
        if (srv->conns)
            srv->conns->prev = c;
        srv->conns = c;
        ev_io_start(loop, &c->rio);
    }
}

int msrv_server_new(const struct msrv_config *cfg, struct msrv_server **out,
                    struct wp_err *err)
{
    struct msrv_server *srv = calloc(1, sizeof(*srv));
    int rc;

    if (!srv)
        return wp_err_set(err, -ENOMEM, "server");
    srv->cfg = cfg;
    srv->loop = EV_DEFAULT;
    srv->lfd = -1;
    srv->by_status = json_object();
    srv->cache = calloc(1, sizeof(*srv->cache));
    if (!srv->cache) {
        rc = wp_err_set(err, -ENOMEM, "cache");
        goto fail;
    }
    msrv_rng_seed(&srv->id_rng, cfg->seed, 0x1d5);
    /* Port 0: the kernel chooses; srv->port is the one bound. */
    rc = wp_tcp_listen(cfg->host, cfg->port, 1024, &srv->port, err);
    if (rc < 0)
        goto fail;
    srv->lfd = rc;
    ev_io_init(&srv->accept_io, accept_cb, srv->lfd, EV_READ);
    srv->accept_io.data = srv;
    ev_io_start(srv->loop, &srv->accept_io);
    ev_prepare_init(&srv->prepare, prepare_cb);
    srv->prepare.data = srv;
    ev_prepare_start(srv->loop, &srv->prepare);
    ev_unref(srv->loop); /* the prepare watcher alone keeps nothing alive */
    *out = srv;
    return 0;
fail:
    if (srv->lfd >= 0)
        close(srv->lfd);
    json_decref(srv->by_status);
    free(srv->cache);
    free(srv);
    return rc;
}

int msrv_server_port(const struct msrv_server *srv)
{
    return srv->port;
}

void msrv_server_free(struct msrv_server *srv)
{
    if (!srv)
        return;
    while (srv->conns)
        conn_close(srv->conns);
    free_closed(srv);
    ev_io_stop(srv->loop, &srv->accept_io);
    ev_ref(srv->loop);
    ev_prepare_stop(srv->loop, &srv->prepare);
    close(srv->lfd);
    json_decref(srv->by_status);
    free(srv->cache);
    json_decref(srv->last_tools);
    free(srv);
}

