/* sse.c - a text/event-stream parser (WHATWG HTML, "Server-sent
 * events", interpreting an event stream). Pure: bytes in, events out, no
 * I/O, so it is unit-tested and fuzzed alone.
 *
 * What it does per the spec: a UTF-8 BOM at the very start is dropped;
 * lines end with CRLF, LF or CR (a CR at the end of one feed waits for the
 * next to see whether an LF follows); a line starting with ':' is a
 * comment; "field:value" drops one space after the colon; a line without
 * a colon is a field with an empty value; `event` sets the type, `data`
 * lines are joined with '\n'; `id`, `retry` and unknown fields are
 * ignored; a blank line dispatches (nothing when no data was seen). An
 * event still pending at the end of the stream is simply never
 * dispatched. Bytes are passed through as they are: checking UTF-8 is the
 * JSON parser's job downstream. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/sse.h"

struct wp_sse_parser {
    size_t max_event;
    wp_sse_event_cb cb;
    void *ctx;
    struct wp_buf line;  /* the current line, without its end */
    struct wp_buf event; /* the event type field */
    struct wp_buf data;  /* data lines joined, each followed by '\n' */
    int bom;             /* BOM bytes matched so far; -1 once past the start */
    bool after_cr;       /* the last byte was CR: an LF right after it is the same line end */
    bool comment;        /* inside a comment line: skipped, never buffered */
    int failed;          /* sticky error: every later feed returns it */
};

static const unsigned char BOM[3] = { 0xef, 0xbb, 0xbf };

struct wp_sse_parser *wp_sse_parser_new(size_t max_event, wp_sse_event_cb cb, void *ctx)
{
    struct wp_sse_parser *p;

    if (!cb || max_event == 0)
        return NULL;
    p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->max_event = max_event;
    p->cb = cb;
    p->ctx = ctx;
    /* Each buffer may hold the whole budget; pending() enforces the sum. */
    wp_buf_init(&p->line, max_event);
    wp_buf_init(&p->event, max_event);
    wp_buf_init(&p->data, max_event + 1);
    return p;
}

void wp_sse_parser_free(struct wp_sse_parser *p)
{
    if (!p)
        return;
    wp_buf_free(&p->line);
    wp_buf_free(&p->event);
    wp_buf_free(&p->data);
    free(p);
}

/* Bytes held for the event being assembled. */
static size_t pending(const struct wp_sse_parser *p)
{
    return p->line.len + p->event.len + p->data.len;
}

static int dispatch(struct wp_sse_parser *p)
{
    int rc = 0;

    if (p->data.len > 0) {
        p->data.data[--p->data.len] = '\0'; /* the last data line's '\n' */
        rc = p->cb(p->ctx, p->event.len ? p->event.data : "message", p->data.data,
                   p->data.len);
    }
    wp_buf_reset(&p->data);
    wp_buf_reset(&p->event);
    return rc;
}

static int line_done(struct wp_sse_parser *p)
{
    const char *l = p->line.data;
    size_t n = p->line.len, flen, vlen;
    const char *colon, *val;
    int rc = 0;

    if (n == 0)
        return dispatch(p);
    colon = memchr(l, ':', n);
    flen = colon ? (size_t)(colon - l) : n;
    val = colon ? colon + 1 : l + n;
    vlen = (size_t)(l + n - val);
    if (vlen > 0 && *val == ' ') {
        val++;
        vlen--;
    }
    if (flen == 5 && !memcmp(l, "event", 5)) {
        wp_buf_reset(&p->event);
        rc = wp_buf_append(&p->event, val, vlen);
    } else if (flen == 4 && !memcmp(l, "data", 4)) {
        rc = wp_buf_append(&p->data, val, vlen);
        if (rc == 0)
            rc = wp_buf_append(&p->data, "\n", 1);
    }
    wp_buf_reset(&p->line);
    return rc;
}

static int process(struct wp_sse_parser *p, const char *s, size_t n)
{
    while (n > 0) {
        if (p->after_cr) {
            p->after_cr = false;
            if (*s == '\n') {
                s++;
                n--;
                continue;
            }
        }
        if (p->line.len == 0 && !p->comment && *s == ':')
            p->comment = true;
        size_t k = 0;
        while (k < n && s[k] != '\n' && s[k] != '\r')
            k++;
        if (!p->comment) {
            if (k > p->max_event - pending(p))
                return WP_ETOOBIG;
            int rc = wp_buf_append(&p->line, s, k);
            if (rc < 0)
                return rc;
        }
        if (k == n)
            return 0;
        p->after_cr = s[k] == '\r';
        s += k + 1;
        n -= k + 1;
        if (p->comment) {
            p->comment = false; /* a comment line never dispatches */
            continue;
        }
        int rc = line_done(p);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int wp_sse_parser_feed(struct wp_sse_parser *p, const char *data, size_t len)
{
    int rc = 0;

    if (p->failed)
        return p->failed;
    /* The BOM may arrive split across feeds: match it byte by byte, and
     * if the stream turns out not to start with one, replay the bytes
     * matched so far as ordinary input. */
    while (p->bom >= 0 && len > 0) {
        if ((unsigned char)*data == BOM[p->bom]) {
            data++;
            len--;
            if (++p->bom == 3)
                p->bom = -1;
            continue;
        }
        int matched = p->bom;
        p->bom = -1;
        rc = process(p, (const char *)BOM, (size_t)matched);
        if (rc < 0)
            goto out;
    }
    rc = process(p, data, len);
out:
    if (rc < 0)
        p->failed = rc;
    return rc;
}
