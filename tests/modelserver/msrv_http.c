/* msrv_http.c - HTTP/1.1 request parsing behind a small interface.
 *
 * llhttp does the parsing; this file keeps what the model server needs
 * (method, path, a few headers, the body) in bounded buffers. Header names
 * and values can arrive in pieces across reads, so they are accumulated
 * before being looked at. One request at a time: the parser pauses at
 * message completion and msrv_parser_next() resumes it. */
#define WP_LOG_COMPONENT "msrv"
#include "msrv.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "llhttp.h"

#include "base/err.h"
#include "base/log.h"

#define FIELD_MAX 128
#define VALUE_MAX 4096

struct msrv_parser {
    llhttp_t http;
    struct msrv_req req;
    size_t max_body;
    size_t head_bytes;
    char url[512];
    size_t url_len;
    char field[FIELD_MAX];
    size_t field_len;
    char value[VALUE_MAX];
    size_t value_len;
    bool in_value;
    bool url_too_long;
    bool complete;
    bool want_continue;
    int fail; /* WP_ETOOBIG / WP_EPROTO set from a callback */
    const char *fail_msg;
};

static struct msrv_parser *owner(llhttp_t *h)
{
    return h->data;
}

static int head_account(struct msrv_parser *p, size_t n)
{
    p->head_bytes += n;
    if (p->head_bytes > MSRV_HEAD_MAX) {
        p->fail = WP_ETOOBIG;
        p->fail_msg = "request head too large";
        return -1;
    }
    return 0;
}

static int on_message_begin(llhttp_t *h)
{
    struct msrv_parser *p = owner(h);

    p->head_bytes = 0;
    p->url_len = 0;
    p->field_len = p->value_len = 0;
    p->in_value = false;
    p->url_too_long = false;
    return 0;
}

static int on_url(llhttp_t *h, const char *at, size_t n)
{
    struct msrv_parser *p = owner(h);

    if (head_account(p, n) < 0)
        return -1;
    if (n > sizeof(p->url) - 1 - p->url_len) {
        p->url_too_long = true;
        return 0;
    }
    memcpy(p->url + p->url_len, at, n);
    p->url_len += n;
    p->url[p->url_len] = '\0';
    return 0;
}

/* A complete header: keep what the server needs. */
static void header_done(struct msrv_parser *p)
{
    const char *f = p->field, *v = p->value;

    p->field[p->field_len] = '\0';
    p->value[p->value_len] = '\0';
    if (strcasecmp(f, "x-api-key") == 0)
        p->req.has_api_key = p->value_len > 0;
    else if (strcasecmp(f, "authorization") == 0)
        p->req.has_auth = p->value_len > 0;
    else if (strcasecmp(f, "anthropic-version") == 0)
        p->req.has_version = p->value_len > 0;
    else if (strcasecmp(f, "expect") == 0)
        p->req.expect_continue = strcasecmp(v, "100-continue") == 0;
    p->field_len = p->value_len = 0;
    p->in_value = false;
}

static int on_header_field(llhttp_t *h, const char *at, size_t n)
{
    struct msrv_parser *p = owner(h);

    if (head_account(p, n) < 0)
        return -1;
    if (p->in_value)
        header_done(p);
    /* Longer names are none we care about: keep a truncated prefix. */
    if (n > FIELD_MAX - 1 - p->field_len)
        n = FIELD_MAX - 1 - p->field_len;
    memcpy(p->field + p->field_len, at, n);
    p->field_len += n;
    return 0;
}

static int on_header_value(llhttp_t *h, const char *at, size_t n)
{
    struct msrv_parser *p = owner(h);

    if (head_account(p, n) < 0)
        return -1;
    p->in_value = true;
    if (n > VALUE_MAX - 1 - p->value_len)
        n = VALUE_MAX - 1 - p->value_len;
    memcpy(p->value + p->value_len, at, n);
    p->value_len += n;
    return 0;
}

static int on_headers_complete(llhttp_t *h)
{
    struct msrv_parser *p = owner(h);
    const char *m = llhttp_method_name((llhttp_method_t)h->method);
    size_t plen;

    if (p->in_value)
        header_done(p);
    if (p->url_too_long) {
        p->fail = WP_ETOOBIG;
        p->fail_msg = "request target too long";
        return -1;
    }
    snprintf(p->req.method, sizeof(p->req.method), "%s", m ? m : "");
    plen = strcspn(p->url, "?#");
    if (plen > p->url_len)
        plen = p->url_len;
    if (plen >= sizeof(p->req.path))
        plen = sizeof(p->req.path) - 1;
    memcpy(p->req.path, p->url, plen);
    p->req.path[plen] = '\0';
    if (h->content_length > p->max_body && !(h->flags & F_CHUNKED)) {
        p->fail = WP_ETOOBIG;
        p->fail_msg = "request body too large";
        return -1;
    }
    if (p->req.expect_continue)
        p->want_continue = true;
    return 0;
}

static int on_body(llhttp_t *h, const char *at, size_t n)
{
    struct msrv_parser *p = owner(h);

    if (wp_buf_append(&p->req.body, at, n) < 0) {
        p->fail = WP_ETOOBIG;
        p->fail_msg = "request body too large";
        return -1;
    }
    return 0;
}

static int on_message_complete(llhttp_t *h)
{
    struct msrv_parser *p = owner(h);

    p->complete = true;
    p->req.keep_alive = llhttp_should_keep_alive(h) != 0;
    return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void req_reset(struct msrv_parser *p)
{
    struct wp_buf body = p->req.body;

    wp_buf_reset(&body);
    memset(&p->req, 0, sizeof(p->req));
    p->req.body = body;
    p->complete = false;
    p->want_continue = false;
}

struct msrv_parser *msrv_parser_new(size_t max_body)
{
    struct msrv_parser *p = calloc(1, sizeof(*p));

    if (!p)
        return NULL;
    p->max_body = max_body;
    wp_buf_init(&p->req.body, max_body);
    llhttp_init(&p->http, HTTP_REQUEST, &settings);
    p->http.data = p;
    return p;
}

void msrv_parser_free(struct msrv_parser *p)
{
    if (!p)
        return;
    wp_buf_free(&p->req.body);
    free(p);
}

int msrv_parser_feed(struct msrv_parser *p, const char *data, size_t len, bool *done,
                     struct wp_err *err)
{
    llhttp_errno_t rc;

    *done = false;
    if (p->complete) {
        *done = true;
        return 0;
    }
    if (len == 0)
        return 0;
    rc = llhttp_execute(&p->http, data, len);
    if (rc == HPE_OK)
        return (int)len;
    if (rc == HPE_PAUSED && p->complete) {
        const char *pos = llhttp_get_error_pos(&p->http);
        *done = true;
        if (pos && pos >= data && pos <= data + len)
            return (int)(pos - data);
        return (int)len;
    }
    if (p->fail)
        return wp_err_set(err, p->fail, "%s", p->fail_msg);
    return wp_err_set(err, WP_EPROTO, "bad request: %s (%s)", llhttp_errno_name(rc),
                      llhttp_get_error_reason(&p->http) ? llhttp_get_error_reason(&p->http)
                                                        : "?");
}

bool msrv_parser_take_continue(struct msrv_parser *p)
{
    bool w = p->want_continue && !p->complete;

    p->want_continue = false;
    return w;
}

struct msrv_req *msrv_parser_req(struct msrv_parser *p)
{
    return &p->req;
}

void msrv_parser_next(struct msrv_parser *p)
{
    req_reset(p);
    llhttp_resume(&p->http);
}
