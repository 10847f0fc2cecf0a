/* test_model_sse.c - the text/event-stream parser of the model client:
 * line endings, splits at every byte, multi-line data, comments, fields
 * without a colon, BOM, oversized events, the callback stopping a feed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "lib/testlib.h"
#include "base/sse.h"

/* Events are recorded as "type|data\n" lines (data's '\n' shown as '~'). */
struct rec {
    char out[8192];
    size_t len;
    int n;
    int stop_at; /* return -5 on this event (1-based), 0 = never */
};

static int on_ev(void *ctx, const char *event, const char *data, size_t len)
{
    struct rec *r = ctx;
    int k = snprintf(r->out + r->len, sizeof(r->out) - r->len, "%s|", event);
    r->len += (size_t)k;
    for (size_t i = 0; i < len && r->len < sizeof(r->out) - 2; i++)
        r->out[r->len++] = data[i] == '\n' ? '~' : data[i];
    r->out[r->len++] = '\n';
    r->out[r->len] = '\0';
    assert_int_equal(data[len], '\0'); /* handed out NUL-terminated */
    r->n++;
    return r->n == r->stop_at ? -5 : 0;
}

/* Feeds s in pieces of `step` bytes (0 = whole); returns the feed's rc. */
static int parse(const char *s, size_t len, size_t step, size_t max, struct rec *r)
{
    struct wp_sse_parser *p = wp_sse_parser_new(max, on_ev, r);
    int rc = 0;

    assert_non_null(p);
    if (step == 0)
        step = len ? len : 1;
    for (size_t off = 0; off < len && rc == 0; off += step)
        rc = wp_sse_parser_feed(p, s + off, len - off < step ? len - off : step);
    wp_sse_parser_free(p);
    return rc;
}

static void expect(const char *stream, const char *want)
{
    size_t len = strlen(stream);

    /* Every split into two pieces, and every piece size, give the same. */
    for (size_t step = 0; step <= len; step++) {
        struct rec r = { .len = 0 };
        assert_int_equal(parse(stream, len, step, 4096, &r), 0);
        if (strcmp(r.out, want)) {
            fprintf(stderr, "# step %zu: got [%s] want [%s]\n", step, r.out, want);
            fail();
        }
    }
    for (size_t cut = 0; cut <= len; cut++) {
        struct rec r = { .len = 0 };
        struct wp_sse_parser *p = wp_sse_parser_new(4096, on_ev, &r);
        assert_int_equal(wp_sse_parser_feed(p, stream, cut), 0);
        assert_int_equal(wp_sse_parser_feed(p, stream + cut, len - cut), 0);
        wp_sse_parser_free(p);
        assert_string_equal(r.out, want);
    }
}

static void line_endings(void **state)
{
    (void)state;
    const char *want = "message_start|{\"a\":1}\nping|{}\n";
    expect("event: message_start\ndata: {\"a\":1}\n\nevent: ping\ndata: {}\n\n", want);
    expect("event: message_start\r\ndata: {\"a\":1}\r\n\r\nevent: ping\r\ndata: {}\r\n\r\n", want);
    expect("event: message_start\rdata: {\"a\":1}\r\revent: ping\rdata: {}\r\r", want);
    /* Mixed in one stream, CR CR LF = two line ends (a blank line). */
    expect("event: message_start\r\ndata: {\"a\":1}\r\r\nevent: ping\ndata: {}\n\r", want);
}

static void multi_line_data_and_fields(void **state)
{
    (void)state;
    /* data lines joined with \n; one space dropped after the colon, not two;
     * no event field -> "message"; event resets after each dispatch. */
    expect("data: one\ndata:two\ndata:  three\n\n", "message|one~two~ three\n");
    expect("event: x\ndata: a\n\ndata: b\n\n", "x|a\nmessage|b\n");
    /* "data" with no colon is an empty data line; an empty data line still
     * dispatches an empty event. */
    expect("data\n\n", "message|\n");
    expect("data:\ndata\n\n", "message|~\n");
    /* A blank line with no data dispatches nothing and drops the type. */
    expect("event: lone\n\ndata: z\n\n", "message|z\n");
    /* id, retry and unknown fields are ignored; the last event field wins. */
    expect("id: 7\nretry: 100\nevent: a\nfoo: bar\nevent: b\ndata: d\n\n", "b|d\n");
    /* Colons inside the value stay. */
    expect("data: {\"k\":\"v:w\"}\n\n", "message|{\"k\":\"v:w\"}\n");
}

static void comments(void **state)
{
    (void)state;
    expect(": keepalive\n\n:another\ndata: x\n: in between\ndata: y\n\n", "message|x~y\n");
    /* A comment line is not a blank line: it does not dispatch. */
    expect("data: x\n:\n", "");
}

static void incomplete_event_at_end_is_dropped(void **state)
{
    (void)state;
    expect("data: done\n\ndata: never", "message|done\n");
    expect("data: done\n\ndata: never\n", "message|done\n");
}

static void bom(void **state)
{
    (void)state;
    expect("\xef\xbb\xbf"
           "data: a\n\n",
           "message|a\n");
    /* Only at the very start, and only one. */
    expect("\xef\xbb\xbf\xef\xbb\xbf"
           "data: a\n\n",
           "");
    expect("data: \xef\xbb\xbf"
           "a\n\n",
           "message|\xef\xbb\xbf"
           "a\n");
    /* A start that looks like a BOM but is not one is kept. */
    expect("\xef\xbb"
           "data: a\n\n",
           "");
}

static void oversized_event(void **state)
{
    (void)state;
    char big[300];
    struct rec r = { .len = 0 };

    /* max 100: a data line of 150 bytes fails, also when split. */
    memset(big, 'x', sizeof(big));
    memcpy(big, "data: ", 6);
    memcpy(big + 150, "\n\n", 2);
    for (size_t step = 0; step < 160; step += 7) {
        memset(&r, 0, sizeof(r));
        assert_int_equal(parse(big, 152, step, 100, &r), WP_ETOOBIG);
        assert_int_equal(r.n, 0);
    }
    /* Many small data lines add up to the limit too. */
    char many[600] = "";
    for (int i = 0; i < 30; i++)
        strcat(many, "data: 0123456789\n");
    strcat(many, "\n");
    memset(&r, 0, sizeof(r));
    assert_int_equal(parse(many, strlen(many), 0, 100, &r), WP_ETOOBIG);
    /* Events before the big one are delivered; the error is sticky. */
    struct wp_sse_parser *p = wp_sse_parser_new(100, on_ev, &r);
    memset(&r, 0, sizeof(r));
    assert_int_equal(wp_sse_parser_feed(p, "data: ok\n\n", 10), 0);
    assert_int_equal(wp_sse_parser_feed(p, big, 152), WP_ETOOBIG);
    assert_int_equal(wp_sse_parser_feed(p, "data: ok\n\n", 10), WP_ETOOBIG);
    assert_int_equal(r.n, 1);
    wp_sse_parser_free(p);
    /* A comment longer than the limit costs nothing: it is not buffered. */
    char cm[400];
    memset(cm, 'c', sizeof(cm));
    cm[0] = ':';
    memcpy(cm + 380, "\ndata: y\n\n", 10);
    memset(&r, 0, sizeof(r));
    assert_int_equal(parse(cm, 390, 0, 100, &r), 0);
    assert_string_equal(r.out, "message|y\n");
    /* Exactly at the limit is fine: "data: " + 94 bytes = 100. */
    char edge[120];
    memset(edge, 'e', sizeof(edge));
    memcpy(edge, "data: ", 6);
    memcpy(edge + 100, "\n\n", 2);
    memset(&r, 0, sizeof(r));
    assert_int_equal(parse(edge, 102, 0, 100, &r), 0);
    assert_int_equal(r.n, 1);
}

static void callback_stops_feed(void **state)
{
    (void)state;
    struct rec r = { .stop_at = 2 };
    const char *s = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
    struct wp_sse_parser *p = wp_sse_parser_new(4096, on_ev, &r);

    assert_int_equal(wp_sse_parser_feed(p, s, strlen(s)), -5);
    assert_int_equal(r.n, 2);
    assert_int_equal(wp_sse_parser_feed(p, s, strlen(s)), -5);
    assert_int_equal(r.n, 2);
    wp_sse_parser_free(p);
    assert_null(wp_sse_parser_new(0, on_ev, &r));
    assert_null(wp_sse_parser_new(10, NULL, &r));
}

/* The shape the Messages API sends, split at every byte. */
static void api_stream(void **state)
{
    (void)state;
    expect("event: message_start\n"
           "data: {\"type\":\"message_start\"}\n\n"
           "event: ping\n"
           "data: {\"type\": \"ping\"}\n\n"
           "event: content_block_delta\n"
           "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"h\\u00e9\"}}\n\n"
           "event: message_stop\n"
           "data: {\"type\":\"message_stop\"}\n\n",
           "message_start|{\"type\":\"message_start\"}\n"
           "ping|{\"type\": \"ping\"}\n"
           "content_block_delta|{\"type\":\"content_block_delta\",\"delta\":{\"text\":\"h\\u00e9\"}}\n"
           "message_stop|{\"type\":\"message_stop\"}\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(line_endings),
        cmocka_unit_test(multi_line_data_and_fields),
        cmocka_unit_test(comments),
        cmocka_unit_test(incomplete_event_at_end_is_dropped),
        cmocka_unit_test(bom),
        cmocka_unit_test(oversized_event),
        cmocka_unit_test(callback_stops_feed),
        cmocka_unit_test(api_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
