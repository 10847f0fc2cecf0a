/* http_parse.c - HTTP/1.1 request parsing: a small wrapper over llhttp.
 *
 * The only file that includes llhttp.h. It turns llhttp's callbacks into
 * one struct sched_http_req with bounded buffers, and pauses at the end of
 * each message so a pipelined connection is served one request at a time.
 * Pure: no sockets, no loop, so tests/fuzz/fuzz_sched_http.c drives it.
 */
#define WP_LOG_COMPONENT "http"
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

#include "base/log.h"
#include "scheduler/sched_int.h"

static struct sched_http_parser *owner(llhttp_t *h)
{
    return h->data;
}

static int fail(struct sched_http_parser *p, int status, const char *reason)
{
    p->err_status = status;
    p->err_reason = reason;
    return HPE_USER;
}

static int head_append(struct sched_http_parser *p, const char *at, size_t n)
{
    if (wp_buf_append(&p->req.head, at, n) < 0)
        return fail(p, 431, "request head too large");
    return 0;
}

/* Close the open piece (url, name or value) with a NUL. */
static int piece_end(struct sched_http_parser *p)
{
    if (wp_buf_append(&p->req.head, "", 1) < 0)
        return fail(p, 431, "request head too large");
    p->piece_open = false;
    return 0;
}

static int on_message_begin(llhttp_t *h)
{
    struct sched_http_parser *p = owner(h);
    p->in_message = true;
    return 0;
}

static int on_url(llhttp_t *h, const char *at, size_t n)
{
    struct sched_http_parser *p = owner(h);
    if (!p->piece_open) {
        p->req.url = p->req.head.len;
        p->piece_open = true;
    }
    return head_append(p, at, n);
}

static int on_url_complete(llhttp_t *h)
{
    struct sched_http_parser *p = owner(h);
    if (!p->piece_open) { /* empty url cannot happen, but keep offsets sane */
        p->req.url = p->req.head.len;
    }
    return piece_end(p);
}

static int on_header_field(llhttp_t *h, const char *at, size_t n)
{
    struct sched_http_parser *p = owner(h);
    if (!p->piece_open) {
        if (p->req.nheaders >= SCHED_HTTP_MAX_HEADERS)
            return fail(p, 431, "too many headers");
        p->req.headers[p->req.nheaders].name = p->req.head.len;
        p->piece_open = true;
    }
    return head_append(p, at, n);
}

static int on_header_field_complete(llhttp_t *h)
{
    struct sched_http_parser *p = owner(h);
    if (!p->piece_open)
        return fail(p, 400, "empty header name");
    int rc = piece_end(p);
    if (rc)
        return rc;
    char *name = p->req.head.data + p->req.headers[p->req.nheaders].name;
    for (; *name; name++)
        *name = (char)tolower((unsigned char)*name);
    return 0;
}

static int on_header_value(llhttp_t *h, const char *at, size_t n)
{
    struct sched_http_parser *p = owner(h);
    if (!p->piece_open) {
        p->req.headers[p->req.nheaders].value = p->req.head.len;
        p->piece_open = true;
    }
    return head_append(p, at, n);
}

static int on_header_value_complete(llhttp_t *h)
{
    struct sched_http_parser *p = owner(h);
    if (!p->piece_open) { /* empty value: no on_header_value call */
        p->req.headers[p->req.nheaders].value = p->req.head.len;
    }
    int rc = piece_end(p);
    if (rc)
        return rc;
    p->req.nheaders++;
    return 0;
}

static int on_headers_complete(llhttp_t *h)
{
    struct sched_http_parser *p = owner(h);
    const char *m = llhttp_method_name((llhttp_method_t)h->method);
    snprintf(p->req.method, sizeof(p->req.method), "%s", m ? m : "?");
    if (h->http_major != 1)
        return fail(p, 505, "only HTTP/1.x is supported");
    p->req.has_content_length = (h->flags & F_CONTENT_LENGTH) != 0;
    p->headers_done = true;
    size_t before = p->req.body.max;
    if (p->on_head) { /* may lower the limit (an unverified key) or raise it (an upload) */
        const char *why = "refused";
        int st = p->on_head(p->on_head_arg, &p->req, &why);
        if (st)
            return fail(p, st, why);
    }
    if ((h->flags & F_CONTENT_LENGTH) && h->content_length > p->req.body.max)
        return fail(p, 413, p->req.body.max < before ? "request body too large for an unverified key"
                                                     : "request body too large");
    return 0;
}

static int on_body(llhttp_t *h, const char *at, size_t n)
{
    struct sched_http_parser *p = owner(h);
    if (wp_buf_append(&p->req.body, at, n) < 0)
        return fail(p, 413, "request body too large");
    return 0;
}

static int on_message_complete(llhttp_t *h)
{
    struct sched_http_parser *p = owner(h);
    p->req.keep_alive = llhttp_should_keep_alive(h) != 0;
    /* Pause: one request at a time; the caller resumes with _next(). */
    return HPE_PAUSED;
}

int sched_http_parser_init(struct sched_http_parser *p, size_t max_head, size_t max_body)
{
    memset(p, 0, sizeof(*p));
    llhttp_t *h = calloc(1, sizeof(*h));
    llhttp_settings_t *s = calloc(1, sizeof(*s));
    if (!h || !s) {
        free(h);
        free(s);
        return -ENOMEM;
    }
    llhttp_settings_init(s);
    s->on_message_begin = on_message_begin;
    s->on_url = on_url;
    s->on_url_complete = on_url_complete;
    s->on_header_field = on_header_field;
    s->on_header_field_complete = on_header_field_complete;
    s->on_header_value = on_header_value;
    s->on_header_value_complete = on_header_value_complete;
    s->on_headers_complete = on_headers_complete;
    s->on_body = on_body;
    s->on_message_complete = on_message_complete;
    llhttp_init(h, HTTP_REQUEST, s);
    h->data = p;
    p->llhttp = h;
    p->settings = s;
    wp_buf_init(&p->req.head, max_head);
    wp_buf_init(&p->req.body, max_body);
    p->max_body = max_body;
    return 0;
}

void sched_http_parser_free(struct sched_http_parser *p)
{
    free(p->llhttp);
    free(p->settings);
    wp_buf_free(&p->req.head);
    wp_buf_free(&p->req.body);
    p->llhttp = p->settings = NULL;
}

static void clear_req(struct sched_http_parser *p)
{
    struct sched_http_req *r = &p->req;
    wp_buf_reset(&r->head);
    wp_buf_reset(&r->body);
    r->body.max = p->max_body; /* an on_head hook may have lowered it */
    r->method[0] = '\0';
    r->url = 0;
    r->nheaders = 0;
    r->keep_alive = false;
    r->has_content_length = false;
    p->in_message = false;
    p->headers_done = false;
    p->piece_open = false;
}

int sched_http_parser_feed(struct sched_http_parser *p, const char *data, size_t len,
                           size_t *consumed)
{
    llhttp_t *h = p->llhttp;
    *consumed = 0;
    if (p->err_status)
        return WP_EPROTO;
    if (len == 0)
        return SCHED_HTTP_MORE;
    llhttp_errno_t e = llhttp_execute(h, data, len);
    if (e == HPE_OK) {
        *consumed = len;
        return SCHED_HTTP_MORE;
    }
    if (e == HPE_PAUSED) {
        const char *pos = llhttp_get_error_pos(h);
        *consumed = pos ? (size_t)(pos - data) : len;
        return SCHED_HTTP_DONE;
    }
    if (!p->err_status) {
        switch (e) {
        case HPE_INVALID_VERSION:
            p->err_status = 505;
            p->err_reason = "HTTP version not supported";
            break;
        default:
            p->err_status = 400;
            p->err_reason = llhttp_get_error_reason(h);
            if (!p->err_reason)
                p->err_reason = "malformed request";
            break;
        }
    }
    return WP_EPROTO;
}

void sched_http_parser_next(struct sched_http_parser *p)
{
    clear_req(p);
    llhttp_resume(p->llhttp);
}

const char *sched_http_header(const struct sched_http_req *r, const char *name)
{
    for (int i = 0; i < r->nheaders; i++)
        if (strcmp(r->head.data + r->headers[i].name, name) == 0)
            return r->head.data + r->headers[i].value;
    return NULL;
}

const char *sched_http_url(const struct sched_http_req *r)
{
    return r->head.data ? r->head.data + r->url : "";
}
