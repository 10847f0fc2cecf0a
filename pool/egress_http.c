/* egress_http.c - what the egress proxy does to HTTP: which hosts a
 * credential and an environment allow (the reference's rules), the
 * request rewritten for the origin server with placeholders replaced,
 * the answer's head made to say Connection: close, and llhttp's callbacks
 * collecting a request's head and body (the connection machinery is
 * egress.c's). */
#define WP_LOG_COMPONENT "egress"
#include "pool/pool_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <strings.h>

#include "base/buf.h"
#include "base/log.h"

/* ---- matching --------------------------------------------------------- */

/* The reference's rule: an entry matches the host exactly; "*.x.com"
 * matches any name under x.com but not x.com itself. No case. */
bool pool_egress_host_match(const char *pattern, const char *host)
{
    if (pattern[0] == '*' && pattern[1] == '.') {
        size_t pl = strlen(pattern + 1), hl = strlen(host);
        return hl > pl && strcasecmp(host + hl - pl, pattern + 1) == 0;
    }
    return strcasecmp(pattern, host) == 0;
}

const char *pool_egress_host_pattern_check(const char *h)
{
    struct in_addr a;
    size_t len = h ? strlen(h) : 0;

    if (len == 0 || len > 253)
        return "an allowed host is 1 to 253 characters";
    if (inet_pton(AF_INET, h, &a) == 1)
        return NULL;
    if (h[0] == '*') {
        if (h[1] != '.')
            return "a wildcard is \"*.\" followed by a domain";
        h += 2;
    }
    /* Labels of letters, digits and hyphens: no scheme, port, path, IPv6. */
    for (const char *l = h;;) {
        size_t n = strspn(l, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-");
        if (n == 0 || n > 63 || l[0] == '-' || l[n - 1] == '-')
            return "an allowed host is a bare host name, an IPv4 address or a *. wildcard "
                   "(no URL, port, path or IPv6)";
        if (l[n] == '\0')
            return NULL;
        if (l[n] != '.')
            return "an allowed host is a bare host name, an IPv4 address or a *. wildcard "
                   "(no URL, port, path or IPv6)";
        l += n + 1;
    }
}

static bool cred_applies(const struct pool__egcred *cr, const char *host)
{
    if (cr->any_host)
        return true;
    for (size_t i = 0; i < cr->n_hosts; i++)
        if (pool_egress_host_match(cr->hosts[i], host))
            return true;
    return false;
}

/* The ranges the sandboxes' own filter drops (net.c's blocked4): the
 * host's services, other sandboxes, metadata, multicast. */
bool pool__egress_addr_blocked(uint32_t a)
{
    static const struct { uint32_t net, mask; } b[] = {
        { 0x00000000, 0xff000000 }, { 0x0a000000, 0xff000000 }, { 0x64400000, 0xffc00000 },
        { 0x7f000000, 0xff000000 }, { 0xa9fe0000, 0xffff0000 }, { 0xac100000, 0xfff00000 },
        { 0xc0a80000, 0xffff0000 }, { 0xe0000000, 0xe0000000 },
    };
    for (size_t i = 0; i < sizeof(b) / sizeof(b[0]); i++)
        if ((a & b[i].mask) == b[i].net)
            return true;
    return false;
}

/* A limited environment's allowed_hosts: a name equal to the one asked
 * for, or an address / prefix covering the address it resolved to. */
bool pool__egress_env_allows(const struct pool__egsbx *sb, const char *host, uint32_t a)
{
    if (!sb->limited)
        return true;
    for (size_t i = 0; i < sb->n_allowed; i++) {
        char ip[32];
        int bits = 32;
        struct in_addr in;
        const char *e = sb->allowed[i], *slash = strchr(e, '/');
        if (strcasecmp(e, host) == 0)
            return true;
        snprintf(ip, sizeof(ip), "%.*s", slash ? (int)(slash - e) : (int)strlen(e), e);
        if (slash)
            bits = atoi(slash + 1);
        if (inet_pton(AF_INET, ip, &in) != 1 || bits < 0 || bits > 32)
            continue;
        uint32_t mask = bits ? 0xffffffffu << (32 - bits) : 0;
        if ((ntohl(in.s_addr) & mask) == (a & mask))
            return true;
    }
    return false;
}

/* out = s with every `from` replaced by `to`; returns how many. */
static int replace_all(struct wp_buf *out, const char *s, size_t n, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to);
    int count = 0;

    while (n) {
        const char *hit = fl ? memmem(s, n, from, fl) : NULL;
        size_t pre = hit ? (size_t)(hit - s) : n;
        if (wp_buf_append(out, s, pre) < 0)
            return -1;
        if (!hit)
            break;
        if (wp_buf_append(out, to, tl) < 0)
            return -1;
        count++;
        s += pre + fl;
        n -= pre + fl;
    }
    return count;
}

/* "host[:port]" into c->host and c->port (default dflt). */
int pool__egress_parse_authority(struct pool__egconn *c, const char *s, size_t n, int dflt)
{
    const char *colon = memchr(s, ':', n);
    size_t hl = colon ? (size_t)(colon - s) : n;

    if (hl == 0 || hl >= sizeof(c->host) || memchr(s, '@', n) || memchr(s, '[', n))
        return -1;
    for (size_t i = 0; i < hl; i++)
        if (!(s[i] == '.' || s[i] == '-' || s[i] == '_' || (s[i] >= '0' && s[i] <= '9') ||
              ((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z')))
            return -1;
    memcpy(c->host, s, hl);
    c->host[hl] = '\0';
    c->port = dflt;
    if (colon) {
        char num[8];
        size_t pl = n - hl - 1;
        if (pl == 0 || pl >= sizeof(num))
            return -1;
        memcpy(num, colon + 1, pl);
        num[pl] = '\0';
        char *end;
        long v = strtol(num, &end, 10);
        if (*end || v < 1 || v > 65535)
            return -1;
        c->port = (int)v;
    }
    return 0;
}

static bool skip_header(const char *name)
{
    static const char *const hop[] = { "connection", "proxy-connection", "keep-alive",
                                       "proxy-authorization", "transfer-encoding",
                                       "content-length", "te", "upgrade", "expect", NULL };
    for (const char *const *h = hop; *h; h++)
        if (strcasecmp(name, *h) == 0)
            return true;
    return false;
}

/* An Authorization header's Basic credentials are base64 of
 * "user:password": a placeholder inside (git's
 * https://x-access-token:<placeholder>@host/ remotes, any client that
 * takes credentials from the URL) is replaced in the decoded form and the
 * header encoded again. Returns how many were replaced; val holds the
 * header's value in and out. */
static int inject_basic(struct pool__egconn *c, struct wp_buf *val)
{
    if (!val->data || strncasecmp(val->data, "Basic ", 6) != 0)
        return 0;
    const char *v = val->data;
    const char *b64 = v + 6;
    size_t bl = strlen(b64);
    if (bl == 0 || bl % 4 || bl > 8192)
        return 0;
    unsigned char plain[6144 + 4];
    int n = EVP_DecodeBlock(plain, (const unsigned char *)b64, (int)bl);
    if (n < 0)
        return 0;
    while (n > 0 && bl >= 1 && b64[bl - 1] == '=') { /* DecodeBlock counts the padding */
        n--;
        bl--;
    }
    struct wp_buf cur, r;
    int injected = 0;
    wp_buf_init(&cur, POOL__EG_HEAD_MAX * 4);
    wp_buf_append(&cur, plain, (size_t)n);
    OPENSSL_cleanse(plain, sizeof(plain));
    for (size_t k = 0; k < c->sb->n_creds; k++) {
        const struct pool__egcred *cr = &c->sb->creds[k];
        if (!cr->in_header || !cred_applies(cr, c->host) || !cur.data ||
            !memmem(cur.data, cur.len, cr->placeholder, strlen(cr->placeholder)))
            continue;
        wp_buf_init(&r, POOL__EG_HEAD_MAX * 4);
        injected += replace_all(&r, cur.data, cur.len, cr->placeholder, cr->secret);
        wp_buf_reset(&cur);
        wp_buf_append(&cur, r.data ? r.data : "", r.len);
        wp_buf_free(&r);
    }
    if (injected) {
        size_t outcap = 4 * ((cur.len + 2) / 3) + 1;
        unsigned char *enc = malloc(outcap);
        if (enc) {
            EVP_EncodeBlock(enc, (const unsigned char *)cur.data, (int)cur.len);
            wp_buf_reset(val);
            wp_buf_printf(val, "Basic %s", enc);
            OPENSSL_cleanse(enc, outcap);
            free(enc);
        } else {
            injected = 0;
        }
    }
    if (cur.data)
        OPENSSL_cleanse(cur.data, cur.cap);
    wp_buf_free(&cur);
    return injected;
}

/* The parsed request, rewritten for the origin server into c->to_up. */
void pool__egress_build_request(struct pool__egconn *c)
{
    const char *url = c->head.data + c->url, *path = url;
    struct wp_buf tmp;
    int injected = 0;
    bool has_host = false;

    if (!c->tunneled) {
        if (strncasecmp(url, "http://", 7) != 0) {
            pool__egress_refuse(c, 400, "Bad Request", "the proxy takes absolute http:// URLs, or CONNECT for https");
            return;
        }
        const char *a = url + 7;
        size_t al = strcspn(a, "/?#");
        if (pool__egress_parse_authority(c, a, al, 80) < 0) {
            pool__egress_refuse(c, 400, "Bad Request", "bad host in the URL");
            return;
        }
        path = a + al;
    } else if (url[0] != '/') {
        /* An absolute URL inside a tunnel: its path only; the host is the tunnel's. */
        const char *sl = strstr(url, "://");
        path = sl ? sl + 3 + strcspn(sl + 3, "/?#") : "/";
    }
    wp_buf_init(&tmp, POOL__EG_BODY_MAX + 65536);
    wp_buf_printf(&c->to_up, "%s %s%s HTTP/1.1\r\n", llhttp_method_name(llhttp_get_method(&c->p)),
                  path[0] == '/' ? "" : "/", path);
    for (int i = 0; i < c->nh; i++) {
        const char *name = c->head.data + c->hname[i], *val = c->head.data + c->hval[i];
        if (skip_header(name))
            continue;
        has_host |= strcasecmp(name, "host") == 0;
        wp_buf_reset(&tmp);
        wp_buf_append(&tmp, val, strlen(val));
        if (strcasecmp(name, "authorization") == 0)
            injected += inject_basic(c, &tmp);
        for (size_t k = 0; k < c->sb->n_creds; k++) {
            const struct pool__egcred *cr = &c->sb->creds[k];
            if (!cr->in_header || !cred_applies(cr, c->host) || !strstr(tmp.data, cr->placeholder))
                continue;
            struct wp_buf r;
            wp_buf_init(&r, POOL__EG_HEAD_MAX * 4);
            injected += replace_all(&r, tmp.data, tmp.len, cr->placeholder, cr->secret);
            wp_buf_reset(&tmp);
            wp_buf_append(&tmp, r.data ? r.data : "", r.len);
            wp_buf_free(&r);
        }
        wp_buf_printf(&c->to_up, "%s: ", name);
        wp_buf_append(&c->to_up, tmp.data ? tmp.data : "", tmp.len);
        wp_buf_append(&c->to_up, "\r\n", 2);
    }
    if (!has_host)
        wp_buf_printf(&c->to_up, "Host: %s\r\n", c->host);
    for (size_t k = 0; k < c->sb->n_creds; k++) {
        const struct pool__egcred *cr = &c->sb->creds[k];
        if (!cr->in_body || !cred_applies(cr, c->host) || !c->body.len ||
            !memmem(c->body.data, c->body.len, cr->placeholder, strlen(cr->placeholder)))
            continue;
        wp_buf_reset(&tmp);
        injected += replace_all(&tmp, c->body.data, c->body.len, cr->placeholder, cr->secret);
        wp_buf_reset(&c->body);
        wp_buf_append(&c->body, tmp.data ? tmp.data : "", tmp.len);
    }
    wp_buf_free(&tmp);
    if (c->body.len || c->p.flags & (F_CONTENT_LENGTH | F_CHUNKED))
        wp_buf_printf(&c->to_up, "Content-Length: %zu\r\n", c->body.len);
    wp_buf_append(&c->to_up, "Connection: close\r\n\r\n", 21);
    if (wp_buf_append(&c->to_up, c->body.data ? c->body.data : "", c->body.len) < 0) {
        pool__egress_refuse(c, 413, "Payload Too Large", "request too large for the egress proxy");
        return;
    }
    wp_buf_free(&c->body);
    /* Never the secret, never the URL (a query may carry anything). */
    log_info("egress sandbox=%s %s %s:%d tls=%d injected=%d", c->sb->id,
             llhttp_method_name(llhttp_get_method(&c->p)), c->host, c->port, c->tunneled, injected);
}

/* The proxy closes after one answer: make the answer say so, or a client
 * may send its next request into a connection about to close. Looks at
 * the head (past any 1xx) once it is whole in to_cl. */
void pool__egress_close_answer(struct pool__egconn *c)
{
    for (;;) {
        const char *h = c->to_cl.data + c->head_at;
        size_t n = c->to_cl.len - c->head_at;
        const char *end = memmem(h, n, "\r\n\r\n", 4);
        if (!end) {
            if (n > POOL__EG_HEAD_MAX)
                c->answer_head = true; /* not HTTP as we know it: pass it on */
            return;
        }
        size_t hl = (size_t)(end - h) + 2; /* through the last header's CRLF */
        if (n > 9 && memcmp(h, "HTTP/1.", 7) == 0 && h[9] == '1') {
            c->head_at += hl + 2; /* an interim 1xx: the final head follows */
            continue;
        }
        bool says = false;
        for (const char *l = memchr(h, '\n', hl); l && l < h + hl; l = memchr(l + 1, '\n', (size_t)(h + hl - l - 1)))
            if (strncasecmp(l + 1, "connection:", 11) == 0)
                says = true;
        if (!says) {
            struct wp_buf nb;
            wp_buf_init(&nb, c->to_cl.max);
            size_t at = c->head_at + hl;
            if (wp_buf_append(&nb, c->to_cl.data, at) == 0 &&
                wp_buf_append(&nb, "Connection: close\r\n", 19) == 0 &&
                wp_buf_append(&nb, c->to_cl.data + at, c->to_cl.len - at) == 0) {
                wp_buf_free(&c->to_cl);
                c->to_cl = nb;
            } else {
                wp_buf_free(&nb);
            }
        }
        c->answer_head = true;
        return;
    }
}

/* ---- llhttp callbacks: the head into c->head as NUL-ended pieces ------- */

static int piece(struct pool__egconn *c, int kind, const char *at, size_t n)
{
    if (c->piece != kind) {
        if (kind == 1) {
            c->url = c->head.len;
        } else if (kind == 2) {
            if (c->nh >= POOL__EG_MAX_HEADERS)
                return llhttp_set_error_reason(&c->p, "too many headers"), HPE_USER;
            c->hname[c->nh] = c->head.len;
        } else {
            c->hval[c->nh] = c->head.len;
        }
        c->piece = kind;
    }
    if (wp_buf_append(&c->head, at, n) < 0)
        return llhttp_set_error_reason(&c->p, "request head too large"), HPE_USER;
    return 0;
}

static int piece_end(llhttp_t *h)
{
    struct pool__egconn *c = h->data;
    if (c->piece == 0) /* an empty piece: still mark where it starts */
        return 0;
    if (wp_buf_append(&c->head, "", 1) < 0)
        return llhttp_set_error_reason(h, "request head too large"), HPE_USER;
    if (c->piece == 3)
        c->nh++;
    c->piece = 0;
    return 0;
}

static int on_url(llhttp_t *h, const char *at, size_t n) { return piece(h->data, 1, at, n); }
static int on_field(llhttp_t *h, const char *at, size_t n) { return piece(h->data, 2, at, n); }

static int on_value(llhttp_t *h, const char *at, size_t n)
{
    return piece(h->data, 3, at, n);
}

static int on_value_done(llhttp_t *h)
{
    struct pool__egconn *c = h->data;
    if (c->piece != 3) { /* an empty value */
        c->hval[c->nh] = c->head.len;
        c->piece = 3;
    }
    return piece_end(h);
}

static int on_headers(llhttp_t *h)
{
    struct pool__egconn *c = h->data;
    c->is_connect = llhttp_get_method(h) == HTTP_CONNECT;
    for (int i = 0; i < c->nh; i++)
        if (strcasecmp(c->head.data + c->hname[i], "expect") == 0 &&
            strcasecmp(c->head.data + c->hval[i], "100-continue") == 0)
            wp_buf_printf(&c->to_cl, "HTTP/1.1 100 Continue\r\n\r\n");
    return 0;
}

static int on_body(llhttp_t *h, const char *at, size_t n)
{
    struct pool__egconn *c = h->data;
    if (wp_buf_append(&c->body, at, n) < 0) {
        c->body_full = true;
        return llhttp_set_error_reason(h, "request body too large for the egress proxy"), HPE_USER;
    }
    return 0;
}

static int on_done(llhttp_t *h)
{
    struct pool__egconn *c = h->data;
    c->done = true;
    return HPE_PAUSED;
}

void pool__egress_http_settings(llhttp_settings_t *s)
{
    llhttp_settings_init(s);
    s->on_url = on_url;
    s->on_url_complete = piece_end;
    s->on_header_field = on_field;
    s->on_header_field_complete = piece_end;
    s->on_header_value = on_value;
    s->on_header_value_complete = on_value_done;
    s->on_headers_complete = on_headers;
    s->on_body = on_body;
    s->on_message_complete = on_done;
}
