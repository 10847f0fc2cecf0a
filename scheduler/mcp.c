/* mcp.c - the brain's MCP client (see mcp.h): HTTP on a curl multi driven
 * by libev (base/curlev.c); what answers mean is mcp_rpc.c's. */
#define WP_LOG_COMPONENT "mcp"
#include "scheduler/mcp.h"

#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "base/buf.h"
#include "base/curlev.h"
#include "base/log.h"
#include "base/sse.h"

/* ---- the client ---------------------------------------------------------- */

enum op_kind { OP_LIST, OP_CALL, OP_TOKEN };
enum op_stage { ST_INIT, ST_INITIALIZED, ST_MAIN };

struct mcp_hub {
    struct wp_curlev ce;
    bool allow_private;
    struct mcp_op *ops;
    int64_t next_id;
    bool reap;      /* an op was cancelled inside curl */
};

struct mcp_client {
    struct mcp_hub *h;
    char *url;
    char *token;        /* owned, wiped on change and free */
    char session[257];  /* Mcp-Session-Id, "" before initialize */
    char version[40];   /* the protocol version the server chose */
    bool ready;         /* initialized */
    double timeout_s;
};

struct mcp_op {
    struct mcp_hub *h;
    struct mcp_client *c;    /* NULL for a token request */
    enum op_kind kind;
    enum op_stage stage;
    bool reinit;             /* a 404 made it initialize again once */
    bool cancelled;
    char *method;            /* of the request in flight */
    json_t *params;          /* of the main request (owned) */
    json_t *acc;             /* tools gathered over pages (owned) */
    char *cursor;
    int pages;
    mcp_done_cb cb;
    void *ctx;
    char *form;              /* a token request's body (owned, wiped) */
    const char *url;         /* token endpoint (in form_url) */
    char *form_url;
    double timeout_s;        /* of each request */
    double call_timeout_s;   /* of tools/call itself */
    /* the transfer in flight */
    CURL *easy;
    struct curl_slist *hdrs;
    char *body;
    int64_t id;              /* 0: a notification */
    long status;
    char ctype[64];
    char session[257];
    struct wp_buf resp;
    struct mcp_sse_scan *scan;
    json_t *early;           /* the response, read off an SSE stream still open */
    char errbuf[CURL_ERROR_SIZE];
    bool refused_addr;       /* the server's address is not allowed */
    struct mcp_op *next;
};

static void wipe_free(char *s)
{
    if (s) {
        memset(s, 0, strlen(s));
        free(s);
    }
}

static void xfer_end(struct mcp_op *op)
{
    if (op->easy) {
        curl_multi_remove_handle(op->h->ce.multi, op->easy);
        curl_easy_cleanup(op->easy);
        op->easy = NULL;
    }
    /* the header list holds the bearer token */
    for (struct curl_slist *s = op->hdrs; s; s = s->next)
        memset(s->data, 0, strlen(s->data));
    curl_slist_free_all(op->hdrs);
    op->hdrs = NULL;
    wipe_free(op->body); /* a token request's form holds secrets */
    op->body = NULL;
    wp_buf_free(&op->resp);
    mcp_sse_scan_free(op->scan);
    op->scan = NULL;
    json_decref(op->early);
    op->early = NULL;
}

static void op_free(struct mcp_op *op)
{
    for (struct mcp_op **pp = &op->h->ops; *pp; pp = &(*pp)->next)
        if (*pp == op) {
            *pp = op->next;
            break;
        }
    xfer_end(op);
    free(op->method);
    json_decref(op->params);
    json_decref(op->acc);
    free(op->cursor);
    wipe_free(op->form);
    free(op->form_url);
    free(op);
}

void mcp_op_cancel(struct mcp_op *op)
{
    if (!op || op->cancelled)
        return;
    op->cancelled = true;
    op->cb = NULL;
    if (op->h->ce.in_curl)
        op->h->reap = true; /* curl refuses removals from its callbacks */
    else
        op_free(op);
}

/* Network text into a status field: control bytes replaced. */
static void clean_copy(char *dst, size_t cap, const char *src, size_t n, bool *truncated)
{
    size_t k = n < cap - 1 ? n : cap - 1;
    for (size_t i = 0; i < k; i++)
        dst[i] = (unsigned char)src[i] < 0x20 && src[i] != '\n' ? ' ' : src[i];
    dst[k] = '\0';
    if (truncated)
        *truncated = k < n;
}

static void finish(struct mcp_op *op, enum mcp_fail kind, json_t *value, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void finish(struct mcp_op *op, enum mcp_fail kind, json_t *value, const char *fmt, ...)
{
    struct mcp_status st;
    memset(&st, 0, sizeof(st));
    st.kind = kind;
    st.http_status = op->status;
    snprintf(st.content_type, sizeof(st.content_type), "%s", op->ctype);
    snprintf(st.method, sizeof(st.method), "%s", op->method ? op->method : "");
    if (op->resp.len)
        clean_copy(st.body, sizeof(st.body), op->resp.data, op->resp.len, &st.body_truncated);
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(st.message, sizeof(st.message), fmt, ap);
        va_end(ap);
    }
    mcp_done_cb cb = op->cb;
    void *ctx = op->ctx;
    json_incref(value);
    op_free(op);
    if (cb)
        cb(ctx, &st, value);
    json_decref(value);
}

static size_t on_write(char *p, size_t size, size_t nmemb, void *ud)
{
    struct mcp_op *op = ud;
    size_t n = size * nmemb;
    if (op->cancelled)
        return 0;
    if (wp_buf_append(&op->resp, p, n) < 0)
        return 0; /* over MCP_MAX_BODY: curl ends the transfer */
    if (op->id && op->status >= 200 && op->status < 300 && mcp_ctype_is(op->ctype, "text/event-stream")) {
        bool found = false;
        if (!op->scan && !(op->scan = mcp_sse_scan_new(op->id)))
            return 0;
        if (mcp_sse_scan_feed(op->scan, p, n, &found) < 0)
            return 0;
        if (found) {
            /* Servers may keep the stream open after the answer: stop here. */
            op->early = mcp_sse_take(op->scan);
            return 0;
        }
    }
    return n;
}

static bool hname(const char *p, size_t len, const char *name, const char **v, size_t *vlen)
{
    size_t n = strlen(name);
    if (len <= n || strncasecmp(p, name, n) || p[n] != ':')
        return false;
    const char *s = p + n + 1, *e = p + len;
    while (s < e && (*s == ' ' || *s == '\t'))
        s++;
    while (e > s && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' '))
        e--;
    *v = s;
    *vlen = (size_t)(e - s);
    return true;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    struct mcp_op *op = ud;
    size_t len = size * nmemb;
    const char *v;
    size_t vl;
    if (len > 5 && !strncmp(p, "HTTP/", 5)) {
        op->ctype[0] = op->session[0] = '\0'; /* a new response (after a 100) */
        return len;
    }
    if (len <= 2 && (p[0] == '\r' || p[0] == '\n')) {
        curl_easy_getinfo(op->easy, CURLINFO_RESPONSE_CODE, &op->status);
        return len;
    }
    if (hname(p, len, "content-type", &v, &vl)) {
        clean_copy(op->ctype, sizeof(op->ctype), v, vl, NULL);
    } else if (hname(p, len, "mcp-session-id", &v, &vl)) {
        bool ok = vl > 0 && vl < sizeof(op->session);
        for (size_t i = 0; ok && i < vl; i++)
            ok = v[i] >= 0x21 && v[i] <= 0x7e; /* visible ASCII, as the spec says */
        if (ok)
            clean_copy(op->session, sizeof(op->session), v, vl, NULL);
    }
    return len;
}

static int add_hdr(struct mcp_op *op, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int add_hdr(struct mcp_op *op, const char *fmt, ...)
{
    char line[8400];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    struct curl_slist *t = n > 0 && (size_t)n < sizeof(line) ? curl_slist_append(op->hdrs, line) : NULL;
    memset(line, 0, sizeof(line));
    if (!t)
        return -ENOMEM;
    op->hdrs = t;
    return 0;
}

/* a: an IPv4 address in host order. */
static bool v4_public(uint32_t a)
{
    return !((a >> 24) == 0 || (a >> 24) == 10 || (a >> 24) == 127 ||
             (a >> 16) == 0xa9fe /* 169.254/16 */ || (a >> 20) == 0xac1 /* 172.16/12 */ ||
             (a >> 16) == 0xc0a8 /* 192.168/16 */ || (a >> 22) == 0x191 /* 100.64/10 */ ||
             (a >> 28) >= 0xe /* multicast, reserved */);
}

bool mcp_addr_public(const struct sockaddr *addr)
{
    if (addr->sa_family == AF_INET) {
        struct sockaddr_in v4;
        memcpy(&v4, addr, sizeof(v4));
        return v4_public(ntohl(v4.sin_addr.s_addr));
    }
    if (addr->sa_family == AF_INET6) {
        struct sockaddr_in6 v6;
        memcpy(&v6, addr, sizeof(v6));
        const struct in6_addr *a = &v6.sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            uint32_t x;
            memcpy(&x, &a->s6_addr[12], 4);
            return v4_public(ntohl(x));
        }
        return !(IN6_IS_ADDR_UNSPECIFIED(a) || IN6_IS_ADDR_LOOPBACK(a) || IN6_IS_ADDR_LINKLOCAL(a) ||
                 IN6_IS_ADDR_MULTICAST(a) || (a->s6_addr[0] & 0xfe) == 0xfc /* fc00::/7 */);
    }
    return false;
}

/* Every socket curl opens: refused for private addresses unless allowed. */
static curl_socket_t open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a)
{
    struct mcp_op *op = ud;
    (void)purpose;
    if (!op->h->allow_private && !mcp_addr_public(&a->addr)) {
        op->refused_addr = true;
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* Start one HTTP POST of op: body (stolen) to url. */
static int xfer_start(struct mcp_op *op, const char *url, char *body, const char *ctype_out,
                      const char *accept, struct wp_err *err)
{
    CURLcode rc = CURLE_OK;
    op->body = body;
    op->status = 0;
    op->ctype[0] = op->session[0] = op->errbuf[0] = '\0';
    wp_buf_init(&op->resp, MCP_MAX_BODY);
    op->easy = curl_easy_init();
    if (!body || !op->easy || add_hdr(op, "Content-Type: %s", ctype_out) < 0 ||
        add_hdr(op, "Accept: %s", accept) < 0 || add_hdr(op, "Expect:") < 0)
        goto nomem;
    if (op->c) {
        struct mcp_client *c = op->c;
        if (c->token && add_hdr(op, "Authorization: Bearer %s", c->token) < 0)
            goto nomem;
        if (op->stage != ST_INIT && c->session[0] && add_hdr(op, "Mcp-Session-Id: %s", c->session) < 0)
            goto nomem;
        if (op->stage != ST_INIT && c->version[0] &&
            add_hdr(op, "MCP-Protocol-Version: %s", c->version) < 0)
            goto nomem;
    }
    rc |= curl_easy_setopt(op->easy, CURLOPT_URL, url);
    rc |= curl_easy_setopt(op->easy, CURLOPT_POSTFIELDS, op->body);
    rc |= curl_easy_setopt(op->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(op->body));
    rc |= curl_easy_setopt(op->easy, CURLOPT_HTTPHEADER, op->hdrs);
    rc |= curl_easy_setopt(op->easy, CURLOPT_WRITEFUNCTION, on_write);
    rc |= curl_easy_setopt(op->easy, CURLOPT_WRITEDATA, op);
    rc |= curl_easy_setopt(op->easy, CURLOPT_HEADERFUNCTION, on_header);
    rc |= curl_easy_setopt(op->easy, CURLOPT_HEADERDATA, op);
    rc |= curl_easy_setopt(op->easy, CURLOPT_PRIVATE, op);
    rc |= curl_easy_setopt(op->easy, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    rc |= curl_easy_setopt(op->easy, CURLOPT_OPENSOCKETDATA, op);
    rc |= curl_easy_setopt(op->easy, CURLOPT_ERRORBUFFER, op->errbuf);
    rc |= curl_easy_setopt(op->easy, CURLOPT_NOSIGNAL, 1L);
    rc |= curl_easy_setopt(op->easy, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    double t = op->kind == OP_CALL && op->stage == ST_MAIN ? op->call_timeout_s : op->timeout_s;
    rc |= curl_easy_setopt(op->easy, CURLOPT_TIMEOUT_MS, (long)(t * 1000));
    /* no redirects: a bearer token must not follow one to another host */
    rc |= curl_easy_setopt(op->easy, CURLOPT_FOLLOWLOCATION, 0L);
    rc |= curl_easy_setopt(op->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    rc |= curl_easy_setopt(op->easy, CURLOPT_USERAGENT, "warmpool-scheduler");
    if (rc != CURLE_OK) {
        xfer_end(op);
        return wp_err_set(err, WP_ECONFIG, "mcp: curl_easy_setopt failed");
    }
    if (curl_multi_add_handle(op->h->ce.multi, op->easy) != CURLM_OK) {
        curl_easy_cleanup(op->easy);
        op->easy = NULL;
        xfer_end(op);
        return wp_err_set(err, WP_ESTATE, "mcp: curl_multi_add_handle failed");
    }
    return 0;
nomem:
    xfer_end(op);
    return wp_err_set(err, -ENOMEM, "mcp: out of memory");
}

static int rpc_send(struct mcp_op *op, const char *method, json_t *params /* borrowed */,
                    bool notification, struct wp_err *err)
{
    json_t *m = json_pack("{s:s, s:s}", "jsonrpc", "2.0", "method", method);
    op->id = notification ? 0 : ++op->h->next_id;
    if (m && !notification)
        json_object_set_new(m, "id", json_integer(op->id));
    if (m && params)
        json_object_set(m, "params", params);
    char *body = m ? json_dumps(m, JSON_COMPACT) : NULL;
    json_decref(m);
    free(op->method);
    op->method = strdup(method);
    return xfer_start(op, op->c->url, body, "application/json", "application/json, text/event-stream",
                      err);
}

static int stage_send(struct mcp_op *op, struct wp_err *err)
{
    if (op->kind == OP_TOKEN)
        return xfer_start(op, op->form_url, op->form ? strdup(op->form) : NULL, "application/x-www-form-urlencoded",
                          "application/json", err);
    switch (op->stage) {
    case ST_INIT: {
        json_t *p = json_pack("{s:s, s:{}, s:{s:s, s:s}}", "protocolVersion", MCP_PROTOCOL_VERSION,
                              "capabilities", "clientInfo", "name", "warmpool", "version", "1");
        int rc = rpc_send(op, "initialize", p, false, err);
        json_decref(p);
        return rc;
    }
    case ST_INITIALIZED:
        return rpc_send(op, "notifications/initialized", NULL, true, err);
    case ST_MAIN:
    default:
        if (op->kind == OP_CALL)
            return rpc_send(op, "tools/call", op->params, false, err);
        json_t *p = op->cursor ? json_pack("{s:s}", "cursor", op->cursor) : NULL;
        int rc = rpc_send(op, "tools/list", p, false, err);
        json_decref(p);
        return rc;
    }
}

static void advance(struct mcp_op *op)
{
    struct wp_err err;
    if (stage_send(op, &err) < 0)
        finish(op, MCP_CONN, NULL, "%s", err.msg);
}

/* A finished JSON-RPC exchange: the next stage, or the end. */
static void rpc_done(struct mcp_op *op, CURLcode res)
{
    struct mcp_client *c = op->c;
    json_t *msg = op->early ? json_incref(op->early) : NULL;
    struct wp_err err = { 0 };
    bool got = msg != NULL;
    if (!got && res != CURLE_OK)
        goto neterr;
    if (op->status == 401 || op->status == 403) {
        finish(op, MCP_AUTH, NULL, "%s: HTTP %ld", op->method, op->status);
        return;
    }
    if (op->status == 404 && op->stage != ST_INIT && c->session[0] && !op->reinit) {
        /* the server forgot our session: initialize again, once */
        c->ready = false;
        c->session[0] = '\0';
        op->reinit = true;
        op->stage = ST_INIT;
        xfer_end(op);
        advance(op);
        return;
    }
    if (op->status < 200 || op->status > 299) {
        finish(op, MCP_CONN, NULL, "%s: HTTP %ld", op->method, op->status);
        return;
    }
    if (op->stage == ST_INITIALIZED) { /* a notification: 202 and no body */
        c->ready = true;
        op->stage = ST_MAIN;
        xfer_end(op);
        advance(op);
        return;
    }
    if (!got && mcp_parse_body(op->ctype, op->resp.data ? op->resp.data : "", op->resp.len, op->id,
                               &msg, &err) < 0) {
        finish(op, MCP_CONN, NULL, "%s: %s", op->method, err.msg);
        return;
    }
    json_t *result;
    if (mcp_rpc_result(msg, &result, &err) < 0) {
        json_decref(msg);
        finish(op, op->stage == ST_MAIN ? MCP_RPC : MCP_CONN, NULL, "%s: %s", op->method, err.msg);
        return;
    }
    if (op->stage == ST_INIT) {
        const char *v = json_string_value(json_object_get(result, "protocolVersion"));
        snprintf(c->version, sizeof(c->version), "%s", v && strlen(v) < 40 && !strpbrk(v, "\r\n") ? v : MCP_PROTOCOL_VERSION);
        snprintf(c->session, sizeof(c->session), "%s", op->session);
        json_decref(msg);
        op->stage = ST_INITIALIZED;
        xfer_end(op);
        advance(op);
        return;
    }
    if (op->kind == OP_CALL) {
        finish(op, MCP_OK, result, NULL);
        json_decref(msg);
        return;
    }
    char *cursor = NULL;
    int skipped = 0;
    int rc = mcp_tools_page(result, op->acc, &cursor, &skipped, &err);
    json_decref(msg);
    if (skipped)
        log_warn("mcp server %s: %d tools skipped (name not [A-Za-z0-9_-]{1,64} or no inputSchema)",
                 c->url, skipped);
    if (rc < 0) {
        free(cursor);
        finish(op, MCP_CONN, NULL, "tools/list: %s", err.msg);
        return;
    }
    free(op->cursor);
    op->cursor = cursor;
    if (cursor && ++op->pages < 100) {
        xfer_end(op);
        advance(op);
        return;
    }
    finish(op, MCP_OK, op->acc, NULL);
    return;
neterr:
    if (op->refused_addr)
        finish(op, MCP_CONN, NULL, "%s: the server's address is on a private network (not allowed here)",
               op->method ? op->method : "request");
    else
        finish(op, MCP_CONN, NULL, "%s: %s", op->method ? op->method : "request",
               op->errbuf[0] ? op->errbuf : curl_easy_strerror(res));
}

static void token_done(struct mcp_op *op, CURLcode res)
{
    struct wp_err err = { 0 };
    char *access = NULL, *refresh = NULL;
    long exp = -1;
    if (res != CURLE_OK) {
        finish(op, MCP_CONN, NULL, "token endpoint: %s",
               op->refused_addr ? "its address is on a private network (not allowed here)"
               : op->errbuf[0]  ? op->errbuf
                                : curl_easy_strerror(res));
        return;
    }
    if (op->status < 200 || op->status > 299 ||
        mcp_token_parse(op->resp.data ? op->resp.data : "", op->resp.len, &access, &exp, &refresh, &err) < 0) {
        enum mcp_fail k = op->status >= 500 ? MCP_CONN : MCP_AUTH;
        if (op->status >= 200 && op->status <= 299)
            finish(op, k, NULL, "%s", err.msg);
        else
            finish(op, k, NULL, "token endpoint: HTTP %ld", op->status);
        return;
    }
    json_t *v = json_pack("{s:s}", "access_token", access);
    if (v && exp >= 0)
        json_object_set_new(v, "expires_in", json_integer(exp));
    if (v && refresh)
        json_object_set_new(v, "refresh_token", json_string(refresh));
    wipe_free(access);
    wipe_free(refresh);
    finish(op, MCP_OK, v, NULL);
    if (v) { /* wipe the copies the callback saw */
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x)
            if (json_is_string(x))
                memset((char *)json_string_value(x), 0, json_string_length(x));
        json_decref(v);
    }
}

static void check_done(struct mcp_hub *h)
{
    void *priv;
    CURLcode res;
    while (wp_curlev_next_done(&h->ce, &priv, &res)) {
        struct mcp_op *op = priv;
        if (op->cancelled) {
            op_free(op);
            continue;
        }
        curl_multi_remove_handle(h->ce.multi, op->easy);
        if (op->kind == OP_TOKEN)
            token_done(op, res);
        else
            rpc_done(op, res);
    }
}

static void after_curl(void *ctx)
{
    struct mcp_hub *h = ctx;
    if (h->reap) {
        h->reap = false;
        for (struct mcp_op *op = h->ops, *next; op; op = next) {
            next = op->next;
            if (op->cancelled)
                op_free(op);
        }
    }
    check_done(h);
}

int mcp_hub_new(struct ev_loop *loop, bool allow_private, struct mcp_hub **out, struct wp_err *err)
{
    struct mcp_hub *h = calloc(1, sizeof(*h));
    if (!h || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK ||
        wp_curlev_init(&h->ce, loop, after_curl, h) < 0) {
        free(h);
        return wp_err_set(err, -ENOMEM, "mcp: out of memory");
    }
    h->allow_private = allow_private;
    *out = h;
    return 0;
}

void mcp_hub_free(struct mcp_hub *h)
{
    if (!h)
        return;
    while (h->ops)
        op_free(h->ops);
    wp_curlev_cleanup(&h->ce);
    free(h);
}

int mcp_client_new(struct mcp_hub *h, const char *url, double timeout_s, struct mcp_client **out,
                   struct wp_err *err)
{
    char norm[2048];
    if (mcp_url_normalize(url, norm, sizeof(norm)) < 0 || strpbrk(url, "\r\n "))
        return wp_err_set(err, WP_EINVAL_INPUT, "not an http(s) URL");
    struct mcp_client *c = calloc(1, sizeof(*c));
    if (!c || !(c->url = strdup(url))) {
        free(c);
        return wp_err_set(err, -ENOMEM, "mcp: out of memory");
    }
    c->h = h;
    c->timeout_s = timeout_s > 0 ? timeout_s : 60;
    *out = c;
    return 0;
}

int mcp_client_set_token(struct mcp_client *c, const char *token)
{
    if (token && (strpbrk(token, "\r\n") || strlen(token) > 8192))
        return WP_EINVAL_INPUT;
    if ((!token && !c->token) || (token && c->token && !strcmp(token, c->token)))
        return 0; /* the same: the server session stays */
    char *t = token ? strdup(token) : NULL;
    if (token && !t)
        return -ENOMEM;
    wipe_free(c->token);
    c->token = t;
    c->ready = false;
    c->session[0] = '\0';
    return 0;
}

void mcp_client_free(struct mcp_client *c)
{
    if (!c)
        return;
    for (struct mcp_op *op = c->h->ops, *next; op; op = next) {
        next = op->next;
        if (op->c == c) {
            op->c = NULL; /* reaped later (inside curl) or freed at once */
            mcp_op_cancel(op);
        }
    }
    wipe_free(c->token);
    free(c->url);
    free(c);
}

static struct mcp_op *op_new(struct mcp_hub *h, struct mcp_client *c, enum op_kind kind,
                             mcp_done_cb cb, void *ctx)
{
    struct mcp_op *op = calloc(1, sizeof(*op));
    if (!op)
        return NULL;
    op->h = h;
    op->c = c;
    op->kind = kind;
    op->cb = cb;
    op->ctx = ctx;
    op->timeout_s = c ? c->timeout_s : 30;
    op->stage = c && c->ready ? ST_MAIN : ST_INIT;
    wp_buf_init(&op->resp, MCP_MAX_BODY);
    op->next = h->ops;
    h->ops = op;
    return op;
}

static int op_begin(struct mcp_op *op, struct mcp_op **out, struct wp_err *err)
{
    int rc = stage_send(op, err);
    if (rc < 0) {
        op->cb = NULL;
        op_free(op);
        return rc;
    }
    if (out)
        *out = op;
    return 0;
}

int mcp_list_tools(struct mcp_client *c, mcp_done_cb cb, void *ctx, struct mcp_op **out,
                   struct wp_err *err)
{
    struct mcp_op *op = op_new(c->h, c, OP_LIST, cb, ctx);
    if (!op || !(op->acc = json_array())) {
        if (op)
            op_free(op);
        return wp_err_set(err, -ENOMEM, "mcp: out of memory");
    }
    return op_begin(op, out, err);
}

int mcp_call_tool(struct mcp_client *c, const char *name, json_t *arguments, double timeout_s,
                  mcp_done_cb cb, void *ctx, struct mcp_op **out, struct wp_err *err)
{
    struct mcp_op *op = op_new(c->h, c, OP_CALL, cb, ctx);
    if (!op || !(op->params = json_pack("{s:s, s:O}", "name", name, "arguments",
                                        json_is_object(arguments) ? arguments : json_object()))) {
        if (op)
            op_free(op);
        return wp_err_set(err, -ENOMEM, "mcp: out of memory");
    }
    op->call_timeout_s = timeout_s > 0 ? timeout_s : op->timeout_s;
    return op_begin(op, out, err);
}

/* "&name=value" (form-encoded) onto b. */
static int form_add(struct wp_buf *b, const char *name, const char *value)
{
    char *e = curl_easy_escape(NULL, value, 0);
    if (!e)
        return -ENOMEM;
    int rc = wp_buf_printf(b, "%s%s=%s", b->len ? "&" : "", name, e);
    memset(e, 0, strlen(e));
    curl_free(e);
    return rc;
}

int mcp_oauth_refresh(struct mcp_hub *h, const struct mcp_refresh *r, double timeout_s,
                      mcp_done_cb cb, void *ctx, struct mcp_op **out, struct wp_err *err)
{
    char norm[2048];
    const char *auth = r->auth ? r->auth : "none";
    bool basic = !strcmp(auth, "client_secret_basic"), post = !strcmp(auth, "client_secret_post");
    if (!r->token_endpoint || mcp_url_normalize(r->token_endpoint, norm, sizeof(norm)) < 0 ||
        strpbrk(r->token_endpoint, "\r\n "))
        return wp_err_set(err, WP_EINVAL_INPUT, "token_endpoint is not an http(s) URL");
    if (!r->refresh_token || !r->client_id || ((basic || post) && !r->client_secret) ||
        (!basic && !post && strcmp(auth, "none")))
        return wp_err_set(err, WP_EINVAL_INPUT, "refresh: missing refresh_token, client_id or client_secret");
    struct mcp_op *op = op_new(h, NULL, OP_TOKEN, cb, ctx);
    struct wp_buf f;
    wp_buf_init(&f, 64 << 10);
    if (!op)
        return wp_err_set(err, -ENOMEM, "mcp: out of memory");
    op->timeout_s = timeout_s > 0 ? timeout_s : 30;
    int rc = form_add(&f, "grant_type", "refresh_token");
    rc = rc ?: form_add(&f, "refresh_token", r->refresh_token);
    if (!basic)
        rc = rc ?: form_add(&f, "client_id", r->client_id);
    if (post)
        rc = rc ?: form_add(&f, "client_secret", r->client_secret);
    if (r->resource && *r->resource)
        rc = rc ?: form_add(&f, "resource", r->resource);
    if (r->scope && *r->scope)
        rc = rc ?: form_add(&f, "scope", r->scope);
    if (rc == 0 && basic) {
        /* RFC 6749 2.3.1: both parts form-encoded, then Base64 */
        char *id = curl_easy_escape(NULL, r->client_id, 0), *sec = curl_easy_escape(NULL, r->client_secret, 0);
        struct wp_buf pair;
        wp_buf_init(&pair, 16 << 10);
        rc = id && sec ? wp_buf_printf(&pair, "%s:%s", id, sec) : -ENOMEM;
        if (rc == 0 && pair.len < 12 << 10) {
            char b64[16400];
            EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)pair.data, (int)pair.len);
            rc = add_hdr(op, "Authorization: Basic %s", b64);
            memset(b64, 0, sizeof(b64));
        } else if (rc == 0) {
            rc = -ENOMEM;
        }
        if (pair.data)
            memset(pair.data, 0, pair.len);
        wp_buf_free(&pair);
        curl_free(id);
        curl_free(sec);
    }
    op->form_url = strdup(r->token_endpoint);
    if (rc < 0 || !op->form_url) {
        if (f.data)
            memset(f.data, 0, f.len);
        wp_buf_free(&f);
        op->cb = NULL;
        op_free(op);
        return wp_err_set(err, -ENOMEM, "mcp: out of memory");
    }
    size_t fl;
    op->form = wp_buf_steal(&f, &fl);
    return op_begin(op, out, err);
}
