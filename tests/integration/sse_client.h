/* sse_client.h - a session event stream as a test client reads it: open
 * GET /v1/sessions/{id}/events/stream, then take one event's data at a
 * time with a deadline. Header-only (static inline): each integration test
 * file is one binary. */
#ifndef SSE_CLIENT_H
#define SSE_CLIENT_H

#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/timeutil.h"
#include "lib/sched_testlib.h"
#include "lib/testlib.h"

struct sse {
    int fd;
    char *buf;
    size_t len;
};

/* query: "" or "?..." appended to the stream's path. Asserts the 200. */
static inline void sse_open_as(struct sse *s, int port, const char *key, const char *sid,
                               const char *query)
{
    char req[768], head[4096];
    s->fd = th_connect(port);
    assert_true(s->fd >= 0);
    s->buf = malloc(1 << 22);
    s->len = 0;
    snprintf(req, sizeof(req),
             "GET /v1/sessions/%s/events/stream%s HTTP/1.1\r\n"
             "Host: x\r\nx-api-key: %s\r\nanthropic-beta: managed-agents-2026-04-01\r\n\r\n",
             sid, query, key);
    assert_int_equal(th_send_all(s->fd, req, strlen(req)), 0);
    int n = th_read_until(s->fd, head, sizeof(head), ": connected\n\n", 5000);
    assert_true(n > 0 && strstr(head, "200 OK"));
    /* keep whatever followed the connected comment */
    char *after = strstr(head, ": connected\n\n") + 13;
    s->len = (size_t)(head + n - after);
    memcpy(s->buf, after, s->len);
}

/* Next event's data (owned) or NULL after timeout_ms. */
static inline json_t *sse_next(struct sse *s, int timeout_ms)
{
    uint64_t end = wp_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        char *sep;
        while (s->len && (sep = memmem(s->buf, s->len, "\n\n", 2))) {
            size_t used = (size_t)(sep - s->buf) + 2;
            *sep = '\0';
            char *data = strstr(s->buf, "data: ");
            json_t *j = data ? json_loads(data + 6, 0, NULL) : NULL;
            memmove(s->buf, s->buf + used, s->len - used);
            s->len -= used;
            if (j)
                return j;
        }
        int64_t left = (int64_t)(end - wp_now_ns()) / 1000000;
        if ((int64_t)(end - wp_now_ns()) <= 0)
            return NULL;
        struct pollfd p = { .fd = s->fd, .events = POLLIN };
        if (poll(&p, 1, (int)left) <= 0)
            return NULL;
        ssize_t n = read(s->fd, s->buf + s->len, (1 << 22) - 1 - s->len);
        if (n <= 0)
            return NULL;
        s->len += (size_t)n;
    }
}

static inline void sse_close(struct sse *s)
{
    close(s->fd);
    free(s->buf);
}

#endif
