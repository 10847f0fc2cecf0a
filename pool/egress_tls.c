/* egress_tls.c - the egress proxy's TLS: the node's CA (made at first
 * start, key 0600), leaf certificates it signs for the hosts sandboxes
 * CONNECT to, and the upstream context that verifies servers as any
 * client would (the system's trust store, plus an operator's extra file).
 * All crypto is OpenSSL's. */
#define WP_LOG_COMPONENT "egress"
#include "pool/pool_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"

#define LEAF_CACHE 64
#define LEAF_DAYS 30

struct leaf {
    char host[256];
    X509 *cert;
    uint64_t used; /* for eviction: the least recently used goes */
};

struct pool__egress_tls {
    EVP_PKEY *ca_key, *leaf_key;
    X509 *ca;
    char *ca_pem;
    SSL_CTX *server, *client;
    struct leaf leaves[LEAF_CACHE];
    uint64_t tick;
};

static int ossl_fail(struct wp_err *err, const char *what)
{
    char buf[160] = "";
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return wp_err_set(err, WP_ECONFIG, "egress: %s%s%s", what, buf[0] ? ": " : "", buf);
}

static bool add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    bool ok = ext && X509_add_ext(cert, ext, -1) == 1;
    X509_EXTENSION_free(ext);
    return ok;
}

static bool random_serial(X509 *cert)
{
    unsigned char b[16];
    if (RAND_bytes(b, sizeof(b)) != 1)
        return false;
    b[0] &= 0x7f; /* positive */
    BIGNUM *bn = BN_bin2bn(b, sizeof(b), NULL);
    bool ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
    BN_free(bn);
    return ok;
}

/* A certificate for subject CN `cn`, valid from an hour ago for `days`. */
static X509 *cert_new(const char *cn, EVP_PKEY *key, int days)
{
    X509 *c = X509_new();
    X509_NAME *name = X509_NAME_new();
    bool ok = c && name && X509_set_version(c, 2) && random_serial(c) &&
              X509_gmtime_adj(X509_getm_notBefore(c), -3600) &&
              X509_gmtime_adj(X509_getm_notAfter(c), (long)days * 86400) &&
              X509_set_pubkey(c, key) &&
              X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn,
                                         -1, -1, 0) &&
              X509_set_subject_name(c, name);
    X509_NAME_free(name);
    if (!ok) {
        X509_free(c);
        return NULL;
    }
    return c;
}

static int ca_make(struct pool__egress_tls *t, const char *key_path, const char *cert_path,
                   struct wp_err *err)
{
    char cn[128], host[64] = "node";
    gethostname(host, sizeof(host) - 1);
    snprintf(cn, sizeof(cn), "warmpool egress CA (%s)", host);
    t->ca_key = EVP_EC_gen("P-256");
    if (!t->ca_key)
        return ossl_fail(err, "CA key");
    t->ca = cert_new(cn, t->ca_key, 3650);
    if (!t->ca || !X509_set_issuer_name(t->ca, X509_get_subject_name(t->ca)) ||
        !add_ext(t->ca, t->ca, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") ||
        !add_ext(t->ca, t->ca, NID_key_usage, "critical,keyCertSign,cRLSign") ||
        !add_ext(t->ca, t->ca, NID_subject_key_identifier, "hash") ||
        !X509_sign(t->ca, t->ca_key, EVP_sha256()))
        return ossl_fail(err, "CA certificate");
    /* The key first, created 0600 and exclusive: never readable by others,
     * even for an instant. */
    int fd = open(key_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return wp_err_errno(err, "egress: create %s", key_path);
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        return wp_err_errno(err, "egress: %s", key_path);
    }
    bool ok = PEM_write_PrivateKey(f, t->ca_key, NULL, NULL, 0, NULL, NULL) == 1;
    if (fclose(f) != 0 || !ok) {
        unlink(key_path);
        return ossl_fail(err, "write CA key");
    }
    f = fopen(cert_path, "w");
    ok = f && PEM_write_X509(f, t->ca) == 1;
    if (!f || fclose(f) != 0 || !ok) {
        unlink(key_path);
        unlink(cert_path);
        return ossl_fail(err, "write CA certificate");
    }
    log_info("egress: made a CA for this node: %s (key %s, 0600)", cert_path, key_path);
    return 0;
}

static int ca_load(struct pool__egress_tls *t, const char *key_path, const char *cert_path,
                   struct wp_err *err)
{
    struct stat st;
    if (stat(key_path, &st) == 0 && (st.st_mode & 077))
        return wp_err_set(err, WP_ECONFIG, "egress: %s is readable by others (mode %o); chmod 600",
                          key_path, st.st_mode & 0777);
    FILE *f = fopen(key_path, "r");
    if (!f)
        return wp_err_errno(err, "egress: open %s", key_path);
    t->ca_key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    f = fopen(cert_path, "r");
    if (!f)
        return wp_err_errno(err, "egress: open %s", cert_path);
    t->ca = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!t->ca_key || !t->ca || X509_check_private_key(t->ca, t->ca_key) != 1)
        return ossl_fail(err, "the CA key and certificate do not load or do not match");
    return 0;
}

int pool__egress_tls_open(const char *ca_dir, const char *upstream_ca_file,
                          struct pool__egress_tls **out, struct wp_err *err)
{
    char key_path[600], cert_path[600];
    struct pool__egress_tls *t = calloc(1, sizeof(*t));
    int rc;

    *out = NULL;
    if (!t)
        return wp_err_set(err, -ENOMEM, "out of memory");
    snprintf(key_path, sizeof(key_path), "%s/ca.key", ca_dir);
    snprintf(cert_path, sizeof(cert_path), "%s/ca.pem", ca_dir);
    if ((rc = wp_mkdir_p(ca_dir, 0700, err)) < 0)
        goto fail;
    rc = access(key_path, F_OK) == 0 ? ca_load(t, key_path, cert_path, err)
                                     : ca_make(t, key_path, cert_path, err);
    if (rc < 0)
        goto fail;
    BIO *mem = BIO_new(BIO_s_mem());
    char *p = NULL;
    long n;
    if (!mem || PEM_write_bio_X509(mem, t->ca) != 1 || (n = BIO_get_mem_data(mem, &p)) <= 0 ||
        !(t->ca_pem = strndup(p, (size_t)n))) {
        BIO_free(mem);
        rc = ossl_fail(err, "CA PEM");
        goto fail;
    }
    BIO_free(mem);
    t->leaf_key = EVP_EC_gen("P-256");
    t->server = SSL_CTX_new(TLS_server_method());
    t->client = SSL_CTX_new(TLS_client_method());
    if (!t->leaf_key || !t->server || !t->client) {
        rc = ossl_fail(err, "TLS contexts");
        goto fail;
    }
    SSL_CTX_set_min_proto_version(t->server, TLS1_2_VERSION);
    SSL_CTX_set_min_proto_version(t->client, TLS1_2_VERSION);
    SSL_CTX_set_mode(t->server, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_mode(t->client, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_verify(t->client, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_set_default_verify_paths(t->client) != 1 ||
        (upstream_ca_file && upstream_ca_file[0] &&
         SSL_CTX_load_verify_locations(t->client, upstream_ca_file, NULL) != 1)) {
        rc = ossl_fail(err, "upstream trust store");
        goto fail;
    }
    *out = t;
    return 0;
fail:
    pool__egress_tls_close(t);
    return rc;
}

void pool__egress_tls_close(struct pool__egress_tls *t)
{
    if (!t)
        return;
    for (int i = 0; i < LEAF_CACHE; i++)
        X509_free(t->leaves[i].cert);
    SSL_CTX_free(t->server);
    SSL_CTX_free(t->client);
    EVP_PKEY_free(t->ca_key);
    EVP_PKEY_free(t->leaf_key);
    X509_free(t->ca);
    free(t->ca_pem);
    free(t);
}

const char *pool__egress_tls_ca_pem(const struct pool__egress_tls *t)
{
    return t->ca_pem;
}

/* The leaf for host, from the cache or signed now. Borrowed. */
static X509 *leaf_for(struct pool__egress_tls *t, const char *host)
{
    struct leaf *victim = &t->leaves[0];
    struct in_addr a;
    char san[300];

    for (int i = 0; i < LEAF_CACHE; i++) {
        struct leaf *l = &t->leaves[i];
        if (l->cert && strcmp(l->host, host) == 0) {
            l->used = ++t->tick;
            return l->cert;
        }
        if (l->used < victim->used)
            victim = l;
    }
    snprintf(san, sizeof(san), "%s:%s", inet_pton(AF_INET, host, &a) == 1 ? "IP" : "DNS", host);
    /* A CN is at most 64 characters; the SAN is what clients check. */
    char cn[65];
    snprintf(cn, sizeof(cn), "%s", host);
    X509 *c = cert_new(cn, t->leaf_key, LEAF_DAYS);
    if (!c || !X509_set_issuer_name(c, X509_get_subject_name(t->ca)) ||
        !add_ext(c, t->ca, NID_subject_alt_name, san) ||
        !add_ext(c, t->ca, NID_basic_constraints, "critical,CA:FALSE") ||
        !add_ext(c, t->ca, NID_ext_key_usage, "serverAuth") ||
        !add_ext(c, t->ca, NID_authority_key_identifier, "keyid:always") ||
        !X509_sign(c, t->ca_key, EVP_sha256())) {
        X509_free(c);
        ERR_clear_error();
        return NULL;
    }
    X509_free(victim->cert);
    snprintf(victim->host, sizeof(victim->host), "%s", host);
    victim->cert = c;
    victim->used = ++t->tick;
    return c;
}

SSL *pool__egress_tls_server(struct pool__egress_tls *t, int fd, const char *host)
{
    X509 *leaf = leaf_for(t, host);
    SSL *s = leaf ? SSL_new(t->server) : NULL;

    if (!s || SSL_use_certificate(s, leaf) != 1 || SSL_use_PrivateKey(s, t->leaf_key) != 1 ||
        SSL_set_fd(s, fd) != 1) {
        SSL_free(s);
        ERR_clear_error();
        return NULL;
    }
    SSL_set_accept_state(s);
    return s;
}

SSL *pool__egress_tls_client(struct pool__egress_tls *t, int fd, const char *host)
{
    SSL *s = SSL_new(t->client);
    struct in_addr a;
    bool ip = inet_pton(AF_INET, host, &a) == 1;

    if (!s || SSL_set_fd(s, fd) != 1 ||
        (ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), host) != 1
            : (SSL_set_tlsext_host_name(s, host) != 1 || SSL_set1_host(s, host) != 1))) {
        SSL_free(s);
        ERR_clear_error();
        return NULL;
    }
    SSL_set_connect_state(s);
    return s;
}
