/* tls.c - HTTPS for the scheduler (OpenSSL, already linked for hashing and
 * sealing): the server context from the configured certificate chain and
 * key, and non-blocking reads and writes for server.c's connections. The
 * handshake happens inside the first read (SSL_set_accept_state). */
#define WP_LOG_COMPONENT "tls"
#include <errno.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "base/log.h"
#include "scheduler/sched_int.h"

int sched__tls_ctx_new(const char *cert, const char *key, void **out, struct wp_err *err)
{
    char why[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    *out = NULL;
    if (!ctx)
        return wp_err_set(err, -ENOMEM, "TLS: no context");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* wp_buf moves its data when it grows or is consumed. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        wp_err_openssl(why, sizeof(why));
        SSL_CTX_free(ctx);
        return wp_err_set(err, WP_ECONFIG, "tls-cert %s: %s", cert, why);
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        wp_err_openssl(why, sizeof(why));
        SSL_CTX_free(ctx);
        return wp_err_set(err, WP_ECONFIG, "tls-key %s: %s", key, why);
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        SSL_CTX_free(ctx);
        return wp_err_set(err, WP_ECONFIG, "tls-key %s does not match tls-cert %s", key, cert);
    }
    *out = ctx;
    return 0;
}

void sched__tls_ctx_free(void *ctx)
{
    SSL_CTX_free(ctx);
}

void *sched__tls_conn_new(void *ctx, int fd)
{
    SSL *ssl = SSL_new(ctx);
    if (ssl && SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        return NULL;
    }
    if (ssl)
        SSL_set_accept_state(ssl);
    return ssl;
}

void sched__tls_conn_free(void *ssl, bool notify)
{
    if (!ssl)
        return;
    if (notify)
        SSL_shutdown(ssl); /* close_notify, best effort: never waits */
    SSL_free(ssl);
    ERR_clear_error();
}

/* n > 0 bytes; 0: the peer closed; SCHED_TLS_WANT_READ / _WANT_WRITE: try
 * again when the socket is readable / writable; < 0 otherwise: broken. */
static ssize_t result(SSL *ssl, int n)
{
    if (n > 0)
        return n;
    int e = SSL_get_error(ssl, n);
    ERR_clear_error();
    switch (e) {
    case SSL_ERROR_WANT_READ: return SCHED_TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return SCHED_TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN: return 0;
    case SSL_ERROR_SYSCALL: return errno ? -errno : 0;
    default: return -EPROTO; /* a handshake failure, a plain-HTTP client */
    }
}

ssize_t sched__tls_read(void *ssl, void *buf, size_t n)
{
    return result(ssl, SSL_read(ssl, buf, (int)(n > 1 << 30 ? 1 << 30 : n)));
}

ssize_t sched__tls_write(void *ssl, const void *buf, size_t n)
{
    return result(ssl, SSL_write(ssl, buf, (int)(n > 1 << 30 ? 1 << 30 : n)));
}
