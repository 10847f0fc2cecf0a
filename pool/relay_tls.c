/* relay_tls.c - mutual TLS on the agentlink relay (issue 17).
 *
 * One TLS identity per process (the node's, the scheduler's): a
 * certificate, its key and the relay CA, from the process's config. The
 * rule, the same on both ends: a relay whose address is not loopback
 * (127.0.0.0/8, ::1, localhost) speaks TLS 1.3 with certificates on both
 * sides, both checked against the relay CA; the client also checks that
 * the node's certificate names the relay's IP address (a SAN), so a node
 * certificate cannot be replayed by another address. Loopback stays
 * plaintext unless `relay-tls on`; `relay-tls off` accepts plaintext
 * beyond loopback (warned).
 *
 * The TLS end is a pump on the caller's libev loop: a socketpair whose
 * one end the relay (or pool_connect's caller) uses as it used the TCP
 * socket, the other end copied to and from an SSL object, non-blocking
 * throughout (the handshake included), so relay.c and the agentlink
 * client stay byte-stream code that never sees OpenSSL. The price is one
 * local copy per direction and side (bench/results/relay-tls.md). */
#define WP_LOG_COMPONENT "relay"
#include "pool/pool_int.h"

#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/log.h"

#define PUMP_BUF (128 * 1024) /* per direction; reads pause when full */
#define HANDSHAKE_S 10.0

struct pool__tls_pump {
    struct ev_loop *loop;
    SSL *ssl;
    int tfd, pfd;          /* the TCP socket (TLS records), our socketpair end */
    ev_io trd, twr, prd, pwr;
    ev_timer hs_timer;
    struct wp_buf to_tls, to_plain;
    bool hs_done, plain_eof, tls_eof, tls_wants_write, tls_wants_read_for_write;
    char peer[80];
    int sys_errno;             /* of an SSL_ERROR_SYSCALL */
    pool__tls_fail_cb on_fail; /* until detached: the pump ended (why: NULL if cleanly) */
    void *fail_ctx;
    struct pool__tls_pump *prev, *next;
};

/* The process's identity: set once at start-up (pool_relay_tls_setup),
 * read by relay.c and pool_connect; the live pumps, freed at teardown. */
static struct {
    SSL_CTX *ctx;
    enum pool_relay_tls_mode mode;
    struct pool__tls_pump *pumps;
} G;

bool pool_addr_is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;

    if (!strcmp(host, "localhost"))
        return true;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6);
    return false;
}

int pool_relay_tls_option(struct pool_relay_tls_conf *c, const char *name, const char *val,
                          struct wp_err *err)
{
    char *dst = !strcmp(name, "relay-tls-cert") ? c->cert
                : !strcmp(name, "relay-tls-key") ? c->key
                : !strcmp(name, "relay-tls-ca")  ? c->ca
                                                 : NULL;
    if (!strcmp(name, "relay-tls")) {
        if (!strcmp(val, "auto"))
            c->mode = POOL_RELAY_TLS_AUTO;
        else if (!strcmp(val, "on"))
            c->mode = POOL_RELAY_TLS_ON;
        else if (!strcmp(val, "off"))
            c->mode = POOL_RELAY_TLS_OFF;
        else
            return wp_err_set(err, WP_ECONFIG, "relay-tls '%.40s': auto, on or off", val);
        return 1;
    }
    if (!dst)
        return 0;
    if (!*val || strlen(val) >= sizeof(c->cert))
        return wp_err_set(err, WP_ECONFIG, "%s: a path of 1..%zu bytes", name, sizeof(c->cert) - 1);
    snprintf(dst, sizeof(c->cert), "%s", val);
    return 1;
}

int pool_relay_tls_check(const struct pool_relay_tls_conf *c, struct wp_err *err)
{
    int given = !!c->cert[0] + !!c->key[0] + !!c->ca[0];
    if (given != 0 && given != 3)
        return wp_err_set(err, WP_ECONFIG,
                          "relay TLS needs all of relay-tls-cert, relay-tls-key and relay-tls-ca");
    if (c->mode == POOL_RELAY_TLS_ON && given == 0)
        return wp_err_set(err, WP_ECONFIG,
                          "relay-tls on needs relay-tls-cert, relay-tls-key and relay-tls-ca");
    return 0;
}

int pool_relay_tls_setup(const struct pool_relay_tls_conf *c, struct wp_err *err)
{
    char why[256];
    int rc = pool_relay_tls_check(c, err);

    if (rc < 0)
        return rc;
    pool_relay_tls_teardown();
    G.mode = c->mode;
    if (c->mode == POOL_RELAY_TLS_OFF)
        log_warn("relay-tls off: relays beyond loopback are plaintext (anyone on the path reads "
                 "and can change tool calls)");
    if (!c->cert[0])
        return 0;
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    if (!ctx)
        return wp_err_set(err, -ENOMEM, "relay TLS: no context");
    /* Both ends are warmpool: TLS 1.3 only. */
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_num_tickets(ctx, 0); /* one connection per lease: nothing to resume */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    if (SSL_CTX_use_certificate_chain_file(ctx, c->cert) != 1) {
        wp_err_openssl(why, sizeof(why));
        rc = wp_err_set(err, WP_ECONFIG, "relay-tls-cert %s: %s", c->cert, why);
    } else if (SSL_CTX_use_PrivateKey_file(ctx, c->key, SSL_FILETYPE_PEM) != 1) {
        wp_err_openssl(why, sizeof(why));
        rc = wp_err_set(err, WP_ECONFIG, "relay-tls-key %s: %s", c->key, why);
    } else if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        rc = wp_err_set(err, WP_ECONFIG, "relay-tls-key %s does not match relay-tls-cert %s",
                        c->key, c->cert);
    } else if (SSL_CTX_load_verify_locations(ctx, c->ca, NULL) != 1) {
        wp_err_openssl(why, sizeof(why));
        rc = wp_err_set(err, WP_ECONFIG, "relay-tls-ca %s: %s", c->ca, why);
    }
    if (rc < 0) {
        SSL_CTX_free(ctx);
        return rc;
    }
    G.ctx = ctx;
    return 0;
}

static void pump_free(struct pool__tls_pump *p);

void pool_relay_tls_teardown(void)
{
    while (G.pumps)
        pump_free(G.pumps);
    SSL_CTX_free(G.ctx);
    G.ctx = NULL;
    G.mode = POOL_RELAY_TLS_AUTO;
}

int pool__relay_tls_wanted(const char *host, struct wp_err *err)
{
    if (G.mode == POOL_RELAY_TLS_OFF)
        return 0;
    if (G.mode == POOL_RELAY_TLS_AUTO && pool_addr_is_loopback(host))
        return 0;
    if (!G.ctx)
        return wp_err_set(err, WP_ECONFIG,
                          "relay %s is not on loopback: it needs relay-tls-cert, relay-tls-key "
                          "and relay-tls-ca (or `relay-tls off` to accept a plaintext relay)",
                          host);
    return 1;
}

/* ---- the pump ------------------------------------------------------------ */

static void pump_free(struct pool__tls_pump *p)
{
    /* Its owner (still attached) learns that it is gone, so it never
     * detaches a freed pump. */
    if (p->on_fail)
        p->on_fail(p->fail_ctx, NULL);
    if (p->prev)
        p->prev->next = p->next;
    else
        G.pumps = p->next;
    if (p->next)
        p->next->prev = p->prev;
    ev_io_stop(p->loop, &p->trd);
    ev_io_stop(p->loop, &p->twr);
    ev_io_stop(p->loop, &p->prd);
    ev_io_stop(p->loop, &p->pwr);
    ev_timer_stop(p->loop, &p->hs_timer);
    SSL_free(p->ssl);
    close(p->tfd);
    close(p->pfd);
    /* Route frames carry secrets (egress credentials): wipe what held them. */
    if (p->to_tls.data)
        OPENSSL_cleanse(p->to_tls.data, p->to_tls.cap);
    if (p->to_plain.data)
        OPENSSL_cleanse(p->to_plain.data, p->to_plain.cap);
    wp_buf_free(&p->to_tls);
    wp_buf_free(&p->to_plain);
    free(p);
}

static void pump_fail(struct pool__tls_pump *p, const char *what)
{
    char why[300];
    long v = SSL_get_verify_result(p->ssl);

    if (v != X509_V_OK)
        snprintf(why, sizeof(why), "%s: certificate: %s", what, X509_verify_cert_error_string(v));
    else if (p->sys_errno)
        snprintf(why, sizeof(why), "%s: %s", what, strerror(p->sys_errno));
    else if (ERR_peek_error())
        wp_err_openssl(why + snprintf(why, sizeof(why), "%s: ", what), sizeof(why) - strlen(what) - 2);
    else
        snprintf(why, sizeof(why), "%s", what);
    ERR_clear_error();
    if (!p->hs_done)
        log_warn("relay TLS handshake with %s failed: %s", p->peer, why);
    else
        log_debug("relay TLS with %s ended: %s", p->peer, why);
    /* Also after the handshake: TLS 1.3 tells a client that its
     * certificate was refused only at its first read. */
    if (p->on_fail)
        p->on_fail(p->fail_ctx, why);
    p->on_fail = NULL;
    pump_free(p);
}

/* A failed SSL call's outcome: 0 wait (for the socket, as noted), -2 the
 * peer's clean close (close_notify), -1 failed. */
static int ssl_wait(struct pool__tls_pump *p, int ret, bool writing)
{
    int e = SSL_get_error(p->ssl, ret);
    if (e == SSL_ERROR_WANT_READ) {
        if (writing)
            p->tls_wants_read_for_write = true;
        return 0;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        p->tls_wants_write = true;
        return 0;
    }
    if (e == SSL_ERROR_SYSCALL) /* errno 0: the peer closed without close_notify */
        p->sys_errno = errno ? errno : ECONNRESET;
    return e == SSL_ERROR_ZERO_RETURN ? -2 : -1;
}

/* Everything that can move, moves; then the watchers say what to wait
 * for. Level-triggered: each callback just runs this. */
static void pump_step(struct pool__tls_pump *p)
{
    char tmp[16384];
    int r;

    p->tls_wants_write = p->tls_wants_read_for_write = false;
    if (!p->hs_done) {
        r = SSL_do_handshake(p->ssl);
        if (r == 1) {
            p->hs_done = true;
            ev_timer_stop(p->loop, &p->hs_timer);
            log_debug("relay TLS with %s: %s", p->peer, SSL_get_cipher(p->ssl));
        } else if (ssl_wait(p, r, false) < 0) {
            pump_fail(p, "handshake");
            return;
        }
    }
    /* The plain side's bytes are taken while the handshake runs too
     * (bounded), so an EOF there is seen. */
    while (!p->plain_eof && p->to_tls.len < PUMP_BUF) {
        ssize_t n = recv(p->pfd, tmp, sizeof(tmp) < PUMP_BUF - p->to_tls.len ? sizeof(tmp)
                                                                               : PUMP_BUF - p->to_tls.len,
                         MSG_DONTWAIT);
        if (n > 0 && wp_buf_append(&p->to_tls, tmp, (size_t)n) == 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        if (n > 0) { /* no memory */
            pump_fail(p, "out of memory");
            return;
        }
        p->plain_eof = true;
    }
    if (p->hs_done) {
        while (!p->tls_eof && p->to_plain.len < PUMP_BUF) {
            r = SSL_read(p->ssl, tmp, (int)sizeof(tmp));
            if (r > 0) {
                if (wp_buf_append(&p->to_plain, tmp, (size_t)r) < 0) {
                    pump_fail(p, "out of memory");
                    return;
                }
                continue;
            }
            int w = ssl_wait(p, r, false);
            if (w == -2)
                p->tls_eof = true;
            else if (w < 0) {
                pump_fail(p, "read");
                return;
            }
            break;
        }
        while (p->to_tls.len) {
            r = SSL_write(p->ssl, p->to_tls.data, (int)p->to_tls.len);
            if (r > 0) {
                wp_buf_consume(&p->to_tls, (size_t)r);
                continue;
            }
            if (ssl_wait(p, r, true) < 0) {
                pump_fail(p, "write");
                return;
            }
            break;
        }
    }
    while (p->to_plain.len) {
        ssize_t n = send(p->pfd, p->to_plain.data, p->to_plain.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            wp_buf_consume(&p->to_plain, (size_t)n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        pump_fail(p, "the local end closed");
        return;
    }
    /* Either side done and its bytes delivered: close both (the peer's
     * close_notify, or ours, ends the TLS stream cleanly). */
    if ((p->plain_eof && !p->to_tls.len && p->hs_done) || (p->tls_eof && !p->to_plain.len) ||
        (p->plain_eof && !p->hs_done)) {
        if (p->hs_done && !p->tls_eof)
            SSL_shutdown(p->ssl);
        pump_free(p);
        return;
    }
    /* Watchers. */
    bool want_trd = !p->hs_done ? !p->tls_wants_write
                                : (p->to_plain.len < PUMP_BUF || p->tls_wants_read_for_write);
    if (want_trd)
        ev_io_start(p->loop, &p->trd);
    else
        ev_io_stop(p->loop, &p->trd);
    if (p->tls_wants_write)
        ev_io_start(p->loop, &p->twr);
    else
        ev_io_stop(p->loop, &p->twr);
    if (!p->plain_eof && p->to_tls.len < PUMP_BUF)
        ev_io_start(p->loop, &p->prd);
    else
        ev_io_stop(p->loop, &p->prd);
    if (p->to_plain.len)
        ev_io_start(p->loop, &p->pwr);
    else
        ev_io_stop(p->loop, &p->pwr);
}

static void pump_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    pump_step(w->data);
}

static void pump_hs_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    pump_fail(w->data, "no handshake in time");
}

int pool__tls_pump_new(struct ev_loop *loop, int tcp_fd, bool server, const char *peer_ip,
                       pool__tls_fail_cb on_fail, void *fail_ctx, int *plain_fd,
                       struct pool__tls_pump **out, struct wp_err *err)
{
    int sv[2];
    struct pool__tls_pump *p;

    if (!G.ctx)
        return wp_err_set(err, WP_ESTATE, "relay TLS is not set up");
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        return wp_err_errno(err, "socketpair");
    p = calloc(1, sizeof(*p));
    if (!p || !(p->ssl = SSL_new(G.ctx)) || SSL_set_fd(p->ssl, tcp_fd) != 1) {
        if (p)
            SSL_free(p->ssl);
        free(p);
        close(sv[0]);
        close(sv[1]);
        ERR_clear_error();
        return wp_err_set(err, -ENOMEM, "relay TLS: out of memory");
    }
    /* The client checks that the node's certificate names the address
     * it dialled (an IP SAN). */
    if (!server && X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(p->ssl), peer_ip) != 1) {
        SSL_free(p->ssl);
        free(p);
        close(sv[0]);
        close(sv[1]);
        ERR_clear_error();
        return wp_err_set(err, WP_EINVAL_INPUT, "relay address %s is not an IP address", peer_ip);
    }
    if (server)
        SSL_set_accept_state(p->ssl);
    else
        SSL_set_connect_state(p->ssl);
    p->loop = loop;
    p->tfd = tcp_fd;
    p->pfd = sv[1];
    snprintf(p->peer, sizeof(p->peer), "%s", peer_ip);
    p->on_fail = on_fail;
    p->fail_ctx = fail_ctx;
    wp_buf_init(&p->to_tls, PUMP_BUF);
    wp_buf_init(&p->to_plain, PUMP_BUF);
    ev_io_init(&p->trd, pump_io, tcp_fd, EV_READ);
    ev_io_init(&p->twr, pump_io, tcp_fd, EV_WRITE);
    ev_io_init(&p->prd, pump_io, sv[1], EV_READ);
    ev_io_init(&p->pwr, pump_io, sv[1], EV_WRITE);
    p->trd.data = p->twr.data = p->prd.data = p->pwr.data = p;
    ev_timer_init(&p->hs_timer, pump_hs_timeout, HANDSHAKE_S, 0.);
    p->hs_timer.data = p;
    ev_timer_start(loop, &p->hs_timer);
    p->next = G.pumps;
    if (G.pumps)
        G.pumps->prev = p;
    G.pumps = p;
    /* The client speaks first: start its handshake now. */
    ev_io_start(loop, server ? &p->trd : &p->twr);
    ev_io_start(loop, &p->prd);
    *plain_fd = sv[0];
    if (out)
        *out = p;
    return 0;
}

void pool__tls_pump_detach(struct pool__tls_pump *p)
{
    if (p) {
        p->on_fail = NULL;
        p->fail_ctx = NULL;
    }
}

const char pool_relay_tls_usage[] =
    "  --relay-tls MODE        auto (default: TLS when the relay's address is not\n"
    "                          loopback), on (loopback too), off (never; warned)\n"
    "  --relay-tls-cert PATH   this process's PEM certificate chain for the relay\n"
    "                          (a node's names its relay IP as a SAN)\n"
    "  --relay-tls-key PATH    its PEM private key\n"
    "  --relay-tls-ca PATH     the CA that signs relay peers (nodes and schedulers)\n";
