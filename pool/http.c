/* http.c - a small HTTP client for the node's work-queue worker: one curl
 * multi handle driven by the node's libev loop (base/curlev.c, style
 * habit 5), curl_multi_info_read after every action.
 *
 * libcurl refuses curl_multi_add/remove_handle from inside its own
 * callbacks, and the worker starts and cancels requests from inside its
 * stream's data callback. So a request started inside curl waits on a
 * zero timer before it is added, and one cancelled inside curl is only
 * marked and removed as soon as curl_multi_socket_action returns. Done
 * callbacks always run outside curl, after the handle was removed. */
#define WP_LOG_COMPONENT "worker"
#include "pool/pool_int.h"

#include <curl/curl.h>
#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/buf.h"
#include "base/curlev.h"
#include "base/err.h"
#include "base/log.h"

#define ERRBODY_MAX (64 * 1024)

struct pool__http_req {
    struct pool__http *h;
    struct pool__http_req *prev, *next;
    CURL *easy;
    struct curl_slist *headers;
    char *body;                  /* owned copy of the POST body */
    pool__http_done_cb done;
    pool__http_data_cb on_data;
    pool__http_head_cb on_head;
    void *ctx;
    struct wp_buf resp;          /* body (non-stream or non-2xx) */
    long code;                   /* status of the last status line */
    int should_retry;            /* x-should-retry: -1 absent, 0, 1 */
    int abort_code;              /* why our write callback stopped the transfer */
    bool added, cancelled, head_seen;
    char errbuf[CURL_ERROR_SIZE];
};

struct pool__http {
    struct ev_loop *loop;
    struct wp_curlev ce;         /* the multi handle and its watchers */
    ev_timer kick;               /* adds requests started inside curl */
    struct pool__http_req *reqs; /* every live request */
    bool reap;                   /* a request was cancelled inside curl */
};

static void req_unlink(struct pool__http_req *r)
{
    struct pool__http *h = r->h;

    if (r->prev)
        r->prev->next = r->next;
    else
        h->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

/* Never inside curl. */
static void req_free(struct pool__http_req *r)
{
    req_unlink(r);
    if (r->easy) {
        if (r->added)
            curl_multi_remove_handle(r->h->ce.multi, r->easy);
        curl_easy_cleanup(r->easy);
    }
    curl_slist_free_all(r->headers);
    free(r->body);
    wp_buf_free(&r->resp);
    free(r);
}

static size_t on_write(char *p, size_t sz, size_t n, void *ud)
{
    struct pool__http_req *r = ud;
    size_t len = sz * n;

    if (r->cancelled)
        return 0;
    if (r->on_data && r->code >= 200 && r->code < 300) {
        int rc = r->on_data(r->ctx, p, len);
        if (rc < 0) {
            r->abort_code = rc;
            return 0;
        }
        return len;
    }
    if (wp_buf_append(&r->resp, p, len) < 0) {
        r->abort_code = WP_ETOOBIG;
        return 0;
    }
    return len;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    struct pool__http_req *r = ud;
    size_t len = sz * n;

    if (r->cancelled)
        return len;
    if (len > 5 && strncmp(p, "HTTP/", 5) == 0) {
        const char *sp = memchr(p, ' ', len);
        r->code = sp ? strtol(sp + 1, NULL, 10) : 0;
        r->should_retry = -1;
    } else if (len >= 15 && strncasecmp(p, "x-should-retry:", 15) == 0) {
        const char *v = p + 15;
        while (v < p + len && *v == ' ')
            v++;
        r->should_retry = (size_t)(p + len - v) >= 4 && strncasecmp(v, "true", 4) == 0;
    } else if ((len == 2 && p[0] == '\r') || (len == 1 && p[0] == '\n')) {
        /* The end of a final response's head (1xx heads come before it). */
        if (r->code >= 200 && !r->head_seen) {
            r->head_seen = true;
            if (r->on_head)
                r->on_head(r->ctx, r->code);
        }
    }
    return len;
}

static int map_curl(CURLcode c)
{
    switch (c) {
    case CURLE_COULDNT_CONNECT: return -ECONNREFUSED;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: return -EHOSTUNREACH;
    case CURLE_OPERATION_TIMEDOUT: return WP_ETIMEDOUT;
    case CURLE_OUT_OF_MEMORY: return -ENOMEM;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL: return WP_ECONFIG;
    default: return -ECONNRESET;
    }
}

static void finish(struct pool__http_req *r, CURLcode res)
{
    struct pool__http_res out = { 0 };
    char msg[CURL_ERROR_SIZE + 64];

    /* Removed first: done may start or cancel anything, r included. */
    curl_multi_remove_handle(r->h->ce.multi, r->easy);
    r->added = false;
    if (!r->cancelled) {
        out.code = r->code;
        out.should_retry = r->should_retry;
        out.body = r->resp.data ? r->resp.data : "";
        out.len = r->resp.len;
        if (res != CURLE_OK) {
            out.status = r->abort_code ? r->abort_code : map_curl(res);
            snprintf(msg, sizeof(msg), "%s",
                     r->abort_code == WP_ETOOBIG ? "response too large"
                     : r->errbuf[0]              ? r->errbuf
                                                 : curl_easy_strerror(res));
            out.errmsg = msg;
        }
        r->cancelled = true; /* a cancel from inside done is a no-op */
        r->done(r->ctx, &out);
    }
    req_free(r);
}

static void check_done(struct pool__http *h)
{
    void *priv;
    CURLcode res;
    while (wp_curlev_next_done(&h->ce, &priv, &res))
        finish(priv, res);
}

static void reap(struct pool__http *h)
{
    h->reap = false;
    for (struct pool__http_req *r = h->reqs, *next; r; r = next) {
        next = r->next;
        if (r->cancelled && r->added)
            req_free(r);
    }
}

/* After every curl_multi_socket_action. */
static void after_curl(void *ctx)
{
    struct pool__http *h = ctx;

    if (h->reap)
        reap(h);
    check_done(h);
}

static void add_now(struct pool__http_req *r)
{
    if (curl_multi_add_handle(r->h->ce.multi, r->easy) == CURLM_OK) {
        r->added = true;
        return;
    }
    /* Only for out-of-memory: report it like a transport error. */
    struct pool__http_res out = { .status = -ENOMEM, .body = "", .errmsg = "curl_multi_add_handle failed" };
    r->cancelled = true;
    r->done(r->ctx, &out);
    req_free(r);
}

static void on_kick(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct pool__http *h = w->data;

    (void)loop;
    (void)revents;
    for (struct pool__http_req *r = h->reqs, *next; r; r = next) {
        next = r->next;
        if (!r->added && !r->cancelled)
            add_now(r);
    }
}

int pool__http_new(struct ev_loop *loop, struct pool__http **out, struct wp_err *err)
{
    struct pool__http *h;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return wp_err_set(err, -ENOMEM, "curl_global_init failed");
    h = calloc(1, sizeof(*h));
    if (!h || wp_curlev_init(&h->ce, loop, after_curl, h) < 0) {
        free(h);
        curl_global_cleanup();
        return wp_err_set(err, -ENOMEM, "http: out of memory");
    }
    h->loop = loop;
    ev_init(&h->kick, on_kick);
    h->kick.data = h;
    *out = h;
    return 0;
}

void pool__http_free(struct pool__http *h)
{
    if (!h)
        return;
    wp_assert(h->ce.in_curl == 0);
    while (h->reqs)
        req_free(h->reqs);
    wp_curlev_cleanup(&h->ce);
    ev_timer_stop(h->loop, &h->kick);
    free(h);
    curl_global_cleanup();
}

/* "name: value" (value NULL: name is the whole line). */
static int add_header(struct pool__http_req *r, const char *name, const char *v)
{
    char line[1024];
    struct curl_slist *t;

    if (snprintf(line, sizeof(line), "%s%s%s", name, v ? ": " : "", v ? v : "") >= (int)sizeof(line))
        return -1;
    t = curl_slist_append(r->headers, line);
    explicit_bzero(line, sizeof(line)); /* may hold a credential */
    if (!t)
        return -1;
    r->headers = t;
    return 0;
}

int pool__http_start(struct pool__http *h, const struct pool__http_opts *o, pool__http_done_cb done,
                     void *ctx, struct pool__http_req **out, struct wp_err *err)
{
    struct pool__http_req *r;

    if (!o->url || !o->method || !done)
        return wp_err_set(err, WP_EINVAL_INPUT, "http: url, method and done are required");
    r = calloc(1, sizeof(*r));
    if (!r)
        return wp_err_set(err, -ENOMEM, "http: out of memory");
    r->h = h;
    r->done = done;
    r->on_data = o->on_data;
    r->on_head = o->on_head;
    r->ctx = ctx;
    r->should_retry = -1;
    wp_buf_init(&r->resp, o->on_data ? ERRBODY_MAX : (o->max_body ? o->max_body : ERRBODY_MAX));
    r->next = h->reqs;
    if (h->reqs)
        h->reqs->prev = r;
    h->reqs = r;
    r->easy = curl_easy_init();
    if (!r->easy)
        goto nomem;
    char auth[600];
    if (o->bearer && snprintf(auth, sizeof(auth), "Bearer %s", o->bearer) >= (int)sizeof(auth))
        goto nomem;
    /* Expect: empty, so a body does not wait for a 100-continue. */
    int bad = add_header(r, "Accept", "application/json") < 0 ||
              add_header(r, "anthropic-version", POOL__WORKER_API_VERSION) < 0 ||
              add_header(r, "anthropic-beta", POOL__WORKER_API_BETA) < 0 || add_header(r, "Expect:", NULL) < 0 ||
              (o->bearer && add_header(r, "Authorization", auth) < 0) ||
              (o->worker_id && add_header(r, "Anthropic-Worker-ID", o->worker_id) < 0) ||
              (o->body && add_header(r, "Content-Type", "application/json") < 0);
    if (o->bearer)
        explicit_bzero(auth, sizeof(auth));
    if (bad)
        goto nomem;
    curl_easy_setopt(r->easy, CURLOPT_URL, o->url);
    curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(r->easy, CURLOPT_PRIVATE, (char *)r);
    curl_easy_setopt(r->easy, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(r->easy, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(r->easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(r->easy, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(r->easy, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(r->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(r->easy, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(r->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    if (o->timeout_s > 0)
        curl_easy_setopt(r->easy, CURLOPT_TIMEOUT_MS, (long)(o->timeout_s * 1000));
    if (o->low_speed_s > 0) {
        curl_easy_setopt(r->easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(r->easy, CURLOPT_LOW_SPEED_TIME, (long)o->low_speed_s);
    }
    if (strcmp(o->method, "POST") == 0) {
        /* A POST without a body (ack, heartbeat) still says Content-Length: 0. */
        r->body = malloc(o->body_len + 1);
        if (!r->body)
            goto nomem;
        if (o->body_len)
            memcpy(r->body, o->body, o->body_len);
        r->body[o->body_len] = '\0';
        curl_easy_setopt(r->easy, CURLOPT_POST, 1L);
        curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, r->body);
        curl_easy_setopt(r->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
    } else if (strcmp(o->method, "GET") != 0) {
        curl_easy_setopt(r->easy, CURLOPT_CUSTOMREQUEST, o->method);
    }
    if (out)
        *out = r;
    if (h->ce.in_curl) {
        ev_timer_set(&h->kick, 0., 0.);
        ev_timer_start(h->loop, &h->kick);
        return 0;
    }
    if (curl_multi_add_handle(h->ce.multi, r->easy) != CURLM_OK)
        goto nomem;
    r->added = true;
    return 0;
nomem:
    req_free(r);
    return wp_err_set(err, -ENOMEM, "http: out of memory");
}

void pool__http_cancel(struct pool__http_req *r)
{
    if (!r || r->cancelled)
        return;
    r->cancelled = true;
    if (r->added && r->h->ce.in_curl) {
        r->h->reap = true; /* removed when curl returns */
        return;
    }
    req_free(r);
}

bool pool__http_transient(const struct pool__http_res *res)
{
    if (res->status < 0)
        return res->status != WP_ECONFIG && res->status != WP_ETOOBIG;
    if (res->should_retry >= 0)
        return res->should_retry == 1;
    return res->code == 408 || res->code == 409 || res->code == 429 || res->code >= 500;
}
