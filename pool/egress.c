/* egress.c - the node's egress proxy: a confined sandbox's only way out
 * while a secret is in play (ARCHITECTURE.md, "The egress proxy").
 *
 * One listener per registered sandbox, on the host end of its veth; the
 * nft rule (snap_net_egress_only) lets in only the sandbox's own address
 * on its own interface, and the proxy checks the peer address again. So
 * which sandbox is speaking is known from the network, never from what
 * the sandbox sends.
 *
 * Each connection carries one request: HTTP in absolute form, or CONNECT
 * host:port, after which the proxy answers 200, terminates TLS with a
 * certificate its CA signs for that host (egress_tls.c), reads one request
 * and re-encrypts it upstream with normal verification. The request is
 * parsed with llhttp and buffered whole (bounded), placeholders of the
 * sandbox's credentials are replaced by their secrets in headers and/or
 * body when the host the proxy connects to (the CONNECT target, which
 * TLS verified, never the Host header) matches the credential's allowed
 * hosts, and it goes out with Content-Length and `Connection: close`.
 * The answer is copied back as bytes until the server closes.
 *
 * Where the proxy connects is checked as the sandbox's own filter would:
 * never the host's private, loopback, link-local or multicast ranges (the
 * proxy runs on the host: without this it would reach Redis for the
 * sandbox), and for a limited environment only its allowed hosts. Names
 * resolve with glibc's getaddrinfo_a off the loop. */
#define WP_LOG_COMPONENT "egress"
#include "pool/pool_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <llhttp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/net.h"
#include "snapshot/snapshot.h"

#define OUT_MAX (256 * 1024) /* answer bytes waiting for the sandbox; reads pause */
#define IDLE_S 120.0
/* Per sandbox: bounds what one sandbox can make the proxy hold (each
 * connection buffers up to a request) at 32 x 16 MiB. */
#define MAX_CONNS 32

struct pool_egress {
    struct ev_loop *loop;
    struct pool__egress_tls *tls;
    int port;
    char **pins; /* "name=ipv4" */
    struct pool__egsbx *sbxs;
    struct pool__egconn *conns;
    struct pool__eglookup *lookups;
    ev_async async;
    llhttp_settings_t http;
};

enum phase { PH_HEAD, PH_RESOLVE, PH_CONNECT, PH_TLS_IN, PH_TLS_UP, PH_RELAY, PH_CLOSING };

struct pool__eglookup {
    struct pool__eglookup *next;
    struct gaicb cb;
    struct addrinfo hints;
    char name[256];
    struct pool__egconn *c; /* NULL once the connection went */
};


/* ---- connections ------------------------------------------------------ */

static void conn_free(struct pool__egconn *c)
{
    struct pool_egress *px = c->px;

    for (struct pool__egconn **pp = &px->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    if (c->lk)
        c->lk->c = NULL;
    c->sb->n_conns--;
    ev_io_stop(px->loop, &c->cio);
    ev_io_stop(px->loop, &c->uio);
    ev_timer_stop(px->loop, &c->idle);
    SSL_free(c->cssl);
    SSL_free(c->ussl);
    if (c->cfd >= 0)
        close(c->cfd);
    if (c->ufd >= 0)
        close(c->ufd);
    wp_buf_free(&c->head);
    wp_buf_free(&c->body);
    wp_buf_free(&c->to_up);
    wp_buf_free(&c->to_cl);
    free(c);
}

/* An answer of the proxy's own, then close. */
void pool__egress_refuse(struct pool__egconn *c, int status, const char *reason, const char *detail)
{
    wp_buf_reset(&c->to_cl);
    wp_buf_printf(&c->to_cl,
                  "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                  "Content-Length: %zu\r\n\r\n%s\n",
                  status, reason, strlen(detail) + 1, detail);
    log_info("egress sandbox=%s host=%s:%d refused=%d %s", c->sb->id, c->host[0] ? c->host : "-",
             c->port, status, detail);
    c->phase = PH_CLOSING;
}

/* 1 done, 0 would block (*want set), -1 failed or closed. */
static ssize_t io_read(SSL *ssl, int fd, void *b, size_t n, short *want)
{
    if (!ssl) {
        ssize_t r = read(fd, b, n);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
            *want |= EV_READ;
            return 0;
        }
        return r > 0 ? r : -1;
    }
    int r = SSL_read(ssl, b, (int)n);
    if (r > 0)
        return r;
    int e = SSL_get_error(ssl, r);
    ERR_clear_error();
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        *want |= e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
        return 0;
    }
    return -1;
}

static ssize_t io_write(SSL *ssl, int fd, const void *b, size_t n, short *want)
{
    if (!ssl) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            *want |= EV_WRITE;
            return 0;
        }
        return w > 0 ? w : -1;
    }
    int w = SSL_write(ssl, b, (int)n);
    if (w > 0)
        return w;
    int e = SSL_get_error(ssl, w);
    ERR_clear_error();
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        *want |= e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
        return 0;
    }
    return -1;
}

/* 1 done, 0 would block, -1 failed. */
static int handshake(SSL *ssl, short *want)
{
    int r = SSL_do_handshake(ssl);
    if (r == 1)
        return 1;
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        *want |= e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
        return 0;
    }
    return -1;
}

static void arm(struct pool__egconn *c, ev_io *w, int fd, short events)
{
    if (fd < 0 || (ev_is_active(w) && w->events == events))
        return;
    ev_io_stop(c->px->loop, w);
    if (events) {
        ev_io_set(w, fd, events);
        ev_io_start(c->px->loop, w);
    }
}

static void pump(struct pool__egconn *c);
static void start_lookup(struct pool__egconn *c);

/* A whole request (or a CONNECT) has been read. */
static void request_done(struct pool__egconn *c)
{
    if (c->is_connect && !c->tunneled) {
        const char *url = c->head.data + c->url;
        if (pool__egress_parse_authority(c, url, strlen(url), 443) < 0 || !strchr(url, ':')) {
            pool__egress_refuse(c, 400, "Bad Request", "CONNECT wants host:port");
            return;
        }
        wp_buf_free(&c->head);
        c->phase = PH_RESOLVE;
        start_lookup(c);
        return;
    }
    if (c->is_connect) {
        pool__egress_refuse(c, 400, "Bad Request", "CONNECT inside a tunnel");
        return;
    }
    pool__egress_build_request(c);
    if (c->phase == PH_CLOSING)
        return;
    if (c->tunneled) {
        c->ussl = pool__egress_tls_client(c->px->tls, c->ufd, c->host);
        if (!c->ussl) {
            pool__egress_refuse(c, 502, "Bad Gateway", "TLS set-up failed");
            return;
        }
        c->phase = PH_TLS_UP;
    } else {
        c->phase = PH_RESOLVE;
        start_lookup(c);
    }
}

static void conn_idle(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    conn_free(w->data);
}

static void upstream_ready(struct pool__egconn *c)
{
    int soerr = 0;
    socklen_t sl = sizeof(soerr);

    getsockopt(c->ufd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr) {
        pool__egress_refuse(c, 502, "Bad Gateway", strerror(soerr));
        return;
    }
    if (c->is_connect && !c->tunneled) {
        /* The tunnel is granted; TLS with the sandbox comes next. */
        wp_buf_printf(&c->to_cl, "HTTP/1.1 200 Connection established\r\n\r\n");
        c->cssl = pool__egress_tls_server(c->px->tls, c->cfd, c->host);
        if (!c->cssl) {
            pool__egress_refuse(c, 502, "Bad Gateway", "no certificate for this host");
            return;
        }
        c->tunneled = true;
        c->is_connect = false;
        c->phase = PH_TLS_IN;
        return;
    }
    c->phase = PH_RELAY;
}

static void conn_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct pool__egconn *c = w->data;
    (void)loop;
    (void)revents;
    if (w == &c->uio && c->phase == PH_CONNECT) {
        ev_io_stop(c->px->loop, &c->uio);
        upstream_ready(c);
    }
    pump(c);
}

/* Feed bytes read from the sandbox to the parser. */
static void feed(struct pool__egconn *c, const char *b, size_t n)
{
    llhttp_errno_t e = llhttp_execute(&c->p, b, n);
    if (c->done || e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
        if (!c->done && !c->is_connect) {
            pool__egress_refuse(c, 400, "Bad Request", "upgrades are not supported");
            return;
        }
        request_done(c);
    } else if (e != HPE_OK) {
        /* HPE_USER: one of our limits (the head, the header count, the body). */
        bool body = e == HPE_USER && c->body_full;
        pool__egress_refuse(c, e != HPE_USER ? 400 : body ? 413 : 431,
               e != HPE_USER ? "Bad Request" : body ? "Payload Too Large"
                                                    : "Request Header Fields Too Large",
               e == HPE_USER ? llhttp_get_error_reason(&c->p) : "malformed request");
    }
}

/* Do what can be done without waiting, then wait for what is needed. */
static void pump(struct pool__egconn *c)
{
    char buf[16384];
    short cw, uw;
    bool progress = true;

    while (progress) {
        progress = false;
        cw = uw = 0;
        /* An answer's head waits in to_cl until it says Connection: close. */
        if (c->to_cl.len && (c->phase != PH_RELAY || c->answer_head)) {
            ssize_t w = io_write(c->cssl && c->phase != PH_TLS_IN ? c->cssl : NULL, c->cfd,
                                 c->to_cl.data, c->to_cl.len, &cw);
            if (w < 0) {
                conn_free(c);
                return;
            }
            if (w > 0) {
                wp_buf_consume(&c->to_cl, (size_t)w);
                progress = true;
            }
        }
        if (c->phase == PH_CLOSING && !c->to_cl.len) {
            conn_free(c);
            return;
        }
        switch (c->phase) {
        case PH_HEAD: {
            ssize_t r = io_read(c->cssl, c->cfd, buf, sizeof(buf), &cw);
            if (r < 0) {
                conn_free(c);
                return;
            }
            if (r > 0) {
                feed(c, buf, (size_t)r);
                progress = true;
            }
            break;
        }
        case PH_TLS_IN:
            if (c->to_cl.len)
                break; /* the 200 goes out in the clear first */
            switch (handshake(c->cssl, &cw)) {
            case 1:
                c->phase = PH_HEAD;
                c->done = false;
                c->nh = 0;
                c->piece = 0;
                wp_buf_init(&c->head, POOL__EG_HEAD_MAX);
                llhttp_init(&c->p, HTTP_REQUEST, &c->px->http);
                c->p.data = c;
                progress = true;
                break;
            case -1:
                log_info("egress sandbox=%s host=%s: the sandbox's TLS handshake failed "
                         "(does it trust the node's CA?)", c->sb->id, c->host);
                ERR_clear_error();
                conn_free(c);
                return;
            }
            break;
        case PH_TLS_UP:
            switch (handshake(c->ussl, &uw)) {
            case 1:
                c->phase = PH_RELAY;
                progress = true;
                break;
            case -1: {
                long v = SSL_get_verify_result(c->ussl);
                char d[300];
                snprintf(d, sizeof(d), "TLS to %s failed: %s", c->host,
                         v != X509_V_OK ? X509_verify_cert_error_string(v) : "handshake error");
                ERR_clear_error();
                pool__egress_refuse(c, 502, "Bad Gateway", d);
                progress = true;
                break;
            }
            }
            break;
        case PH_RELAY:
            if (c->to_up.len) {
                ssize_t w = io_write(c->ussl, c->ufd, c->to_up.data, c->to_up.len, &uw);
                if (w < 0) {
                    conn_free(c);
                    return;
                }
                if (w > 0) {
                    wp_buf_consume(&c->to_up, (size_t)w);
                    progress = true;
                }
            }
            if (c->to_cl.len < OUT_MAX) {
                ssize_t r = io_read(c->ussl, c->ufd, buf, sizeof(buf), &uw);
                if (r < 0) {
                    c->phase = PH_CLOSING; /* the server is done: flush, close */
                    progress = true;
                } else if (r > 0) {
                    wp_buf_append(&c->to_cl, buf, (size_t)r);
                    if (!c->answer_head)
                        pool__egress_close_answer(c);
                    progress = true;
                }
            }
            break;
        case PH_CONNECT:
            uw |= EV_WRITE;
            break;
        case PH_RESOLVE:
        case PH_CLOSING:
            break;
        }
        if (progress)
            ev_timer_again(c->px->loop, &c->idle);
    }
    if (c->phase == PH_TLS_IN && c->to_cl.len)
        cw |= EV_WRITE;
    arm(c, &c->cio, c->cfd, cw);
    if (c->phase != PH_CONNECT || !ev_is_active(&c->uio))
        arm(c, &c->uio, c->ufd, uw);
}

/* ---- name resolution and connecting ------------------------------------ */

/* One of this host's own addresses (its public one among them): the
 * sandbox's filter keeps it from all of them, and so must the proxy,
 * which would otherwise reach the host's services over loopback. An
 * address binds only if it is local (ip_nonlocal_bind would make every
 * address look local: the proxy then refuses all, failing closed). */
static bool addr_is_local(uint32_t a)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(a) };
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    bool local = fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    if (fd >= 0)
        close(fd);
    return local;
}

static void connect_to(struct pool__egconn *c, uint32_t addr)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)c->port) };

    if (pool__egress_addr_blocked(addr) || addr_is_local(addr)) {
        pool__egress_refuse(c, 403, "Forbidden", "that address is not reachable from a sandbox");
        return;
    }
    if (!pool__egress_env_allows(c->sb, c->host, addr)) {
        pool__egress_refuse(c, 403, "Forbidden", "host not in this environment's allowed_hosts");
        return;
    }
    sa.sin_addr.s_addr = htonl(addr);
    c->ufd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->ufd < 0 || (connect(c->ufd, (struct sockaddr *)&sa, sizeof(sa)) < 0 &&
                       errno != EINPROGRESS)) {
        pool__egress_refuse(c, 502, "Bad Gateway", strerror(errno));
        return;
    }
    c->phase = PH_CONNECT;
    ev_io_set(&c->uio, c->ufd, EV_WRITE);
    ev_io_start(c->px->loop, &c->uio);
}

static void lookup_notify(union sigval v)
{
    struct pool_egress *px = v.sival_ptr;
    ev_async_send(px->loop, &px->async);
}

static void lookups_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    struct pool_egress *px = w->data;
    (void)loop;
    (void)revents;
    for (struct pool__eglookup **pp = &px->lookups; *pp;) {
        struct pool__eglookup *lk = *pp;
        int e = gai_error(&lk->cb);
        if (e == EAI_INPROGRESS) {
            pp = &lk->next;
            continue;
        }
        *pp = lk->next;
        struct pool__egconn *c = lk->c;
        if (c) {
            c->lk = NULL;
            if (e == 0 && lk->cb.ar_result)
                connect_to(c, ntohl(((struct sockaddr_in *)lk->cb.ar_result->ai_addr)->sin_addr.s_addr));
            else
                pool__egress_refuse(c, 502, "Bad Gateway", "the host's name does not resolve");
            pump(c);
        }
        if (lk->cb.ar_result)
            freeaddrinfo(lk->cb.ar_result);
        free(lk);
    }
}

static void start_lookup(struct pool__egconn *c)
{
    struct pool_egress *px = c->px;
    struct in_addr a;
    size_t hl = strlen(c->host);

    for (char **p = px->pins; p && *p; p++)
        if (strncasecmp(*p, c->host, hl) == 0 && (*p)[hl] == '=' &&
            inet_pton(AF_INET, *p + hl + 1, &a) == 1) {
            connect_to(c, ntohl(a.s_addr));
            return;
        }
    if (inet_pton(AF_INET, c->host, &a) == 1) {
        connect_to(c, ntohl(a.s_addr));
        return;
    }
    struct pool__eglookup *lk = calloc(1, sizeof(*lk));
    if (!lk) {
        pool__egress_refuse(c, 502, "Bad Gateway", "out of memory");
        return;
    }
    snprintf(lk->name, sizeof(lk->name), "%s", c->host);
    lk->hints.ai_family = AF_INET;
    lk->hints.ai_socktype = SOCK_STREAM;
    lk->cb.ar_name = lk->name;
    lk->cb.ar_request = &lk->hints;
    struct gaicb *list[1] = { &lk->cb };
    struct sigevent sev = { .sigev_notify = SIGEV_THREAD };
    sev.sigev_value.sival_ptr = px;
    sev.sigev_notify_function = lookup_notify;
    if (getaddrinfo_a(GAI_NOWAIT, list, 1, &sev) != 0) {
        free(lk);
        pool__egress_refuse(c, 502, "Bad Gateway", "name lookup failed to start");
        return;
    }
    lk->c = c;
    c->lk = lk;
    lk->next = px->lookups;
    px->lookups = lk;
}

/* ---- listeners and registration ---------------------------------------- */

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct pool__egsbx *sb = w->data;
    struct pool_egress *px = sb->px;
    (void)loop;
    (void)revents;

    for (;;) {
        struct sockaddr_in peer;
        socklen_t pl = sizeof(peer);
        char ip[16] = "";
        int fd = accept4(sb->lfd, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* The listener would stay readable and spin the loop. */
                log_warn("egress: accept: %s; pausing sandbox=%s's listener for 100 ms",
                         strerror(errno), sb->id);
                ev_io_stop(px->loop, &sb->lio);
                ev_timer_set(&sb->pause, 0.1, 0.);
                ev_timer_start(px->loop, &sb->pause);
            }
            return;
        }
        inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof(ip));
        if (peer.sin_family != AF_INET || strcmp(ip, sb->addr) != 0) {
            log_warn("egress: sandbox=%s's proxy port refused a connection from %s", sb->id, ip);
            close(fd);
            continue;
        }
        struct pool__egconn *c = sb->n_conns < MAX_CONNS ? calloc(1, sizeof(*c)) : NULL;
        if (!c) {
            log_warn("egress: sandbox=%s has %d connections open: refused one", sb->id,
                     sb->n_conns);
            close(fd);
            continue;
        }
        sb->n_conns++;
        c->px = px;
        c->sb = sb;
        c->cfd = fd;
        c->ufd = -1;
        wp_buf_init(&c->head, POOL__EG_HEAD_MAX);
        wp_buf_init(&c->body, POOL__EG_BODY_MAX);
        wp_buf_init(&c->to_up, POOL__EG_BODY_MAX + 2 * POOL__EG_HEAD_MAX);
        wp_buf_init(&c->to_cl, OUT_MAX + 16384);
        llhttp_init(&c->p, HTTP_REQUEST, &px->http);
        c->p.data = c;
        ev_io_init(&c->cio, conn_cb, fd, EV_READ);
        ev_io_init(&c->uio, conn_cb, -1, EV_READ);
        c->cio.data = c->uio.data = c;
        ev_init(&c->idle, conn_idle);
        c->idle.repeat = IDLE_S;
        c->idle.data = c;
        ev_timer_again(px->loop, &c->idle);
        c->next = px->conns;
        px->conns = c;
        pump(c);
    }
}

static void accept_resume(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct pool__egsbx *sb = w->data;
    (void)revents;
    ev_io_start(loop, &sb->lio);
}

static void strv_free(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

static char **strv_dup(const char *const *v, size_t n)
{
    char **o = calloc(n + 1, sizeof(*o));
    for (size_t i = 0; o && i < n; i++)
        if (!(o[i] = strdup(v[i]))) {
            strv_free(o, i);
            return NULL;
        }
    return o;
}

static void sbx_free(struct pool__egsbx *sb)
{
    if (sb->lfd >= 0) {
        ev_io_stop(sb->px->loop, &sb->lio);
        ev_timer_stop(sb->px->loop, &sb->pause);
        close(sb->lfd);
    }
    strv_free(sb->allowed, sb->n_allowed);
    for (size_t i = 0; i < sb->n_creds; i++) {
        struct pool__egcred *cr = &sb->creds[i];
        if (cr->secret)
            OPENSSL_cleanse(cr->secret, strlen(cr->secret));
        free(cr->secret);
        free(cr->placeholder);
        strv_free(cr->hosts, cr->n_hosts);
    }
    free(sb->creds);
    free(sb);
}

int pool_egress_add(struct pool_egress *px, const struct pool_egress_sandbox *s,
                    struct wp_err *err)
{
    struct pool__egsbx *sb = calloc(1, sizeof(*sb));
    int bound = 0, rc = -ENOMEM;

    if (!sb)
        return wp_err_set(err, -ENOMEM, "out of memory");
    sb->px = px;
    sb->lfd = -1;
    snprintf(sb->id, sizeof(sb->id), "%s", s->sandbox_id);
    snprintf(sb->host, sizeof(sb->host), "%s", s->host_addr);
    snprintf(sb->addr, sizeof(sb->addr), "%s", s->sbx_addr);
    sb->limited = s->limited;
    if (s->limited && !(sb->allowed = strv_dup(s->allowed_hosts, s->n_allowed)))
        goto fail;
    sb->n_allowed = s->limited ? s->n_allowed : 0;
    if (s->n_creds && !(sb->creds = calloc(s->n_creds, sizeof(*sb->creds))))
        goto fail;
    for (size_t i = 0; i < s->n_creds; i++) {
        const struct pool_egress_cred *in = &s->creds[i];
        struct pool__egcred *cr = &sb->creds[i];
        sb->n_creds = i + 1;
        if (!in->placeholder || strlen(in->placeholder) < 16 || !in->secret || !in->secret[0]) {
            rc = wp_err_set(err, WP_EINVAL_INPUT, "egress: credential %zu needs a placeholder "
                            "of at least 16 characters and a secret", i);
            goto fail_set;
        }
        for (size_t k = 0; k < in->n_hosts; k++) {
            const char *why = pool_egress_host_pattern_check(in->hosts[k]);
            if (why) {
                rc = wp_err_set(err, WP_EINVAL_INPUT, "egress: credential %zu: %s", i, why);
                goto fail_set;
            }
        }
        if (!in->in_header && !in->in_body) {
            rc = wp_err_set(err, WP_EINVAL_INPUT, "egress: credential %zu is injected nowhere", i);
            goto fail_set;
        }
        cr->in_header = in->in_header;
        cr->in_body = in->in_body;
        cr->any_host = in->any_host;
        if (!(cr->placeholder = strdup(in->placeholder)) || !(cr->secret = strdup(in->secret)) ||
            !(cr->hosts = strv_dup(in->hosts, in->n_hosts)))
            goto fail;
        cr->n_hosts = in->n_hosts;
    }
    if ((sb->lfd = wp_tcp_listen(sb->host, px->port, 64, &bound, err)) < 0) {
        rc = wp_err_wrap(err, "egress: listen for sandbox %s", sb->id);
        goto fail_set;
    }
    ev_io_init(&sb->lio, accept_cb, sb->lfd, EV_READ);
    sb->lio.data = sb;
    ev_init(&sb->pause, accept_resume);
    sb->pause.data = sb;
    ev_io_start(px->loop, &sb->lio);
    sb->next = px->sbxs;
    px->sbxs = sb;
    log_info("egress: sandbox=%s behind the proxy at %s:%d with %zu credential(s)", sb->id,
             sb->host, px->port, sb->n_creds);
    return 0;
fail:
    rc = wp_err_set(err, -ENOMEM, "out of memory");
fail_set:
    sbx_free(sb);
    return rc;
}

void pool_egress_remove(struct pool_egress *px, const char *sandbox_id)
{
    for (struct pool__egsbx **pp = &px->sbxs; *pp; pp = &(*pp)->next) {
        struct pool__egsbx *sb = *pp;
        if (strcmp(sb->id, sandbox_id) != 0)
            continue;
        for (struct pool__egconn *c = px->conns, *n; c; c = n) {
            n = c->next;
            if (c->sb == sb)
                conn_free(c);
        }
        *pp = sb->next;
        sbx_free(sb);
        return;
    }
}

int pool_egress_open(struct ev_loop *loop, const struct pool_egress_cfg *cfg,
                     struct pool_egress **out, struct wp_err *err)
{
    struct pool_egress *px = calloc(1, sizeof(*px));
    size_t np = 0;
    int rc;

    *out = NULL;
    if (!px)
        return wp_err_set(err, -ENOMEM, "out of memory");
    px->loop = loop;
    px->port = cfg->port;
    if (cfg->port <= 0 || cfg->port > 65535) {
        free(px);
        return wp_err_set(err, WP_ECONFIG, "egress: port %d out of range", cfg->port);
    }
    while (cfg->pins && cfg->pins[np])
        np++;
    if (np && !(px->pins = strv_dup(cfg->pins, np))) {
        free(px);
        return wp_err_set(err, -ENOMEM, "out of memory");
    }
    if ((rc = pool__egress_tls_open(cfg->ca_dir, cfg->upstream_ca_file, &px->tls, err)) < 0) {
        pool_egress_close(px);
        return rc;
    }
    pool__egress_http_settings(&px->http);
    ev_async_init(&px->async, lookups_cb);
    px->async.data = px;
    ev_async_start(loop, &px->async);
    *out = px;
    return 0;
}

void pool_egress_close(struct pool_egress *px)
{
    if (!px)
        return;
    while (px->sbxs)
        pool_egress_remove(px, px->sbxs->id);
    while (px->conns)
        conn_free(px->conns);
    /* Lookups still running belong to glibc's threads until they end. */
    for (struct pool__eglookup *lk = px->lookups, *n; lk; lk = n) {
        n = lk->next;
        if (gai_cancel(&lk->cb) != EAI_CANCELED) {
            const struct gaicb *one[1] = { &lk->cb };
            while (gai_error(&lk->cb) == EAI_INPROGRESS)
                gai_suspend(one, 1, NULL);
        }
        if (lk->cb.ar_result)
            freeaddrinfo(lk->cb.ar_result);
        free(lk);
    }
    if (ev_is_active(&px->async))
        ev_async_stop(px->loop, &px->async);
    if (px->pins) {
        size_t n = 0;
        while (px->pins[n])
            n++;
        strv_free(px->pins, n);
    }
    pool__egress_tls_close(px->tls);
    free(px);
}

const char *pool_egress_ca_pem(const struct pool_egress *px)
{
    return pool__egress_tls_ca_pem(px->tls);
}

int pool_egress_placeholder(char out[POOL_EGRESS_PLACEHOLDER_LEN])
{
    unsigned char r[16];
    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r))
        return -errno;
    int n = snprintf(out, POOL_EGRESS_PLACEHOLDER_LEN, "wpcred_");
    for (size_t i = 0; i < sizeof(r); i++)
        n += snprintf(out + n, POOL_EGRESS_PLACEHOLDER_LEN - (size_t)n, "%02x", r[i]);
    return 0;
}

void pool_egress_env(const char *host_addr, int port, struct pool_egress_env *e)
{
    static const char *const proxy_vars[] = { "HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
                                              "http_proxy", "ALL_PROXY", "all_proxy" };
    static const char *const ca_vars[] = { "SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE",
                                           "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO" };
    size_t n = 0;

    snprintf(e->url, sizeof(e->url), "http://%s:%d", host_addr, port);
    for (size_t i = 0; i < sizeof(proxy_vars) / sizeof(proxy_vars[0]); i++)
        e->vars[n++] = (struct alink_env_var){ proxy_vars[i], e->url };
    for (size_t i = 0; i < sizeof(ca_vars) / sizeof(ca_vars[0]); i++)
        e->vars[n++] = (struct alink_env_var){ ca_vars[i], POOL_EGRESS_CA_PATH };
    e->vars[n++] = (struct alink_env_var){ "NO_PROXY", "localhost,127.0.0.1,::1" };
    e->vars[n++] = (struct alink_env_var){ "no_proxy", "localhost,127.0.0.1,::1" };
    e->n = n;
}

int pool_egress_confine(struct snap_ctx *ctx, const struct snap_sandbox *sb, int port,
                        const char *ca_pem, char host[16], char addr[16], struct wp_err *err)
{
    int rc;

    /* The CA first: a sandbox confined without it could not use TLS. */
    if ((rc = wp_mkdir_in_root(sb->root, "/etc/warmpool", 0755, err)) < 0 ||
        (rc = wp_write_file_in_root(sb->root, POOL_EGRESS_CA_PATH, ca_pem, strlen(ca_pem), 0644,
                                    err)) < 0 ||
        (rc = snap_net_egress_only(ctx, sb, port, host, addr, err)) < 0)
        return wp_err_wrap(err, "egress");
    return 0;
}
