/* test_model_raw.c - the model client (scheduler/model.c) against a raw
 * socket server, for answers wp-modelserver does not give: silence (header
 * timeout), an error right after message_start, x-should-retry: false,
 * retry-after-ms and HTTP-date retry-after, a non-JSON error body, invalid
 * JSON in an event, a clean end without message_stop, an event over 1 MiB.
 * Harness: model_harness.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "integration/model_harness.h"

/* ---- the raw server: answers connection i with resp[i] ----------------------- */

struct raw {
    int fd, port;
    pid_t pid;
};
static struct raw raw = { -1, 0, 0 };

static void raw_listen(void)
{
    struct sockaddr_in a = { .sin_family = AF_INET };
    socklen_t al = sizeof(a);
    int one = 1;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    raw.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(raw.fd >= 0);
    setsockopt(raw.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    assert_int_equal(bind(raw.fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(raw.fd, 16), 0);
    assert_int_equal(getsockname(raw.fd, (struct sockaddr *)&a, &al), 0);
    raw.port = ntohs(a.sin_port);
}

static void read_request(int c)
{
    static char buf[1 << 16];
    size_t len = 0;
    long need = -1;

    for (;;) {
        ssize_t n = read(c, buf + len, sizeof(buf) - 1 - len);
        if (n <= 0)
            return;
        len += (size_t)n;
        buf[len] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (end && need < 0) {
            char *cl = strcasestr(buf, "content-length:");
            need = (long)(end + 4 - buf) + (cl ? strtol(cl + 15, NULL, 10) : 0);
        }
        if (need >= 0 && (long)len >= need)
            return;
    }
}

/* Answers the i-th connection with resp[i] (the last one repeats). */
static void raw_serve(const char *const *resp, const size_t *lens, int n)
{
    raw.pid = fork();
    assert_true(raw.pid >= 0);
    if (raw.pid > 0)
        return;
    for (int i = 0;; i++) {
        int c = accept(raw.fd, NULL, NULL);
        if (c < 0)
            _exit(0);
        read_request(c);
        int k = i < n ? i : n - 1;
        for (size_t off = 0; off < lens[k];) {
            ssize_t w = write(c, resp[k] + off, lens[k] - off);
            if (w <= 0)
                break;
            off += (size_t)w;
        }
        close(c);
    }
}

static int raw_teardown(void **state)
{
    (void)state;
    if (raw.pid > 0) {
        kill(raw.pid, SIGKILL);
        waitpid(raw.pid, NULL, 0);
    }
    if (raw.fd >= 0)
        close(raw.fd);
    raw.fd = -1;
    raw.pid = 0;
    return 0;
}

#define HEAD_SSE "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
#define EV(name, json) "event: " name "\ndata: " json "\n\n"
#define EV_START                                                                              \
    EV("message_start", "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\"}}")         \
    EV("content_block_start", "{\"type\":\"content_block_start\",\"index\":0,"                 \
                              "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}")
#define EV_DELTA                                                                              \
    EV("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,"                 \
                              "\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}")
#define EV_END                                                                                \
    EV("content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}")                  \
    EV("message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}") \
    EV("message_stop", "{\"type\":\"message_stop\"}")
static const char SSE_OK[] = HEAD_SSE ": a comment\n\n" EV_START EV("ping", "{\"type\":\"ping\"}")
    EV_DELTA EV_END;

/* One call against the raw server; its answers are resp[0..n). */
static void raw_call(const char *const *resp, const size_t *lens, int n, int max_retries,
                     struct h *h, struct rec *r)
{
    raw_listen();
    raw_serve(resp, lens, n);
    h_init(h, raw.port, 30);
    h->cfg.max_retries = max_retries;
    h_model(h);
    rec_init(r, h);
    start(r, "hello");
    h_run(h);
    assert_int_equal(r->done, 1);
}

#define ANSWER(s) s, sizeof(s) - 1

static void raw_success_with_comment_and_ping(void **state)
{
    (void)state;
    const char *resp[] = { SSE_OK };
    size_t lens[] = { sizeof(SSE_OK) - 1 };
    struct h h;
    struct rec r;

    raw_call(resp, lens, 1, 0, &h, &r);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.n, 6);
    assert_string_equal(r.text.data, "hi");
    rec_free(&r);
    h_done(&h);
}

/* message_start is held back until the next event: an overloaded error
 * right after it means nothing was delivered, so the call is retried and
 * message_start reaches on_event once. */
static void error_right_after_message_start_retried(void **state)
{
    (void)state;
    static const char overloaded[] =
        HEAD_SSE EV("message_start", "{\"type\":\"message_start\",\"message\":{}}")
        EV("ping", "{\"type\":\"ping\"}")
        EV("error", "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
                    "\"message\":\"Overloaded\"}}");
    const char *resp[] = { overloaded, SSE_OK };
    size_t lens[] = { sizeof(overloaded) - 1, sizeof(SSE_OK) - 1 };
    struct h h;
    struct rec r;

    raw_call(resp, lens, 2, 3, &h, &r);
    assert_int_equal(r.retries, 1);
    assert_string_equal(r.rerr[0].type, "overloaded_error");
    assert_string_equal(r.rerr[0].message, "Overloaded");
    assert_int_equal(r.status, 0);
    assert_int_equal(r.n, 6);
    assert_string_equal(r.types[0], "message_start");
    assert_string_equal(r.types[1], "content_block_start");
    rec_free(&r);
    h_done(&h);
}

static void header_timeout_on_silent_server(void **state)
{
    (void)state;
    struct h h;
    struct rec r;

    raw_listen(); /* listens, never accepts: the kernel completes the connect */
    h_init(&h, raw.port, 20);
    h.cfg.header_timeout_s = 0.3;
    h.cfg.max_retries = 1;
    h_model(&h);
    rec_init(&r, &h);
    uint64_t t0 = wp_now_ns();
    start(&r, "hello");
    h_run(&h);
    assert_int_equal(r.retries, 1);
    assert_int_equal(r.status, WP_ETIMEDOUT);
    assert_string_equal(r.err.type, "timeout_error");
    assert_non_null(strstr(r.err.message, "no response headers"));
    assert_int_equal(r.timing.headers_ns, 0);
    assert_true(wp_now_ns() - t0 >= 600000000ull);
    rec_free(&r);
    h_done(&h);
}

static void should_retry_false_and_retry_after_ms(void **state)
{
    (void)state;
    static const char no_retry[] =
        "HTTP/1.1 503 Service Unavailable\r\nx-should-retry: false\r\nretry-after: 1\r\n"
        "content-type: application/json\r\ncontent-length: 70\r\nconnection: close\r\n\r\n"
        "{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"do not retry\"}}";
    static const char ms[] =
        "HTTP/1.1 429 Too Many Requests\r\nretry-after-ms: 150\r\nretry-after: 30\r\n"
        "x-should-retry: true\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    struct h h;
    struct rec r;
    const char *resp[] = { no_retry };
    size_t lens[] = { sizeof(no_retry) - 1 };

    assert_int_equal(strlen(strstr(no_retry, "{")), 70);
    raw_call(resp, lens, 1, 3, &h, &r);
    assert_int_equal(r.retries, 0);
    assert_int_equal(r.status, WP_EPROTO);
    assert_int_equal(r.err.http_status, 503);
    assert_string_equal(r.err.type, "api_error");
    assert_string_equal(r.err.message, "do not retry");
    assert_false(r.err.retryable);
    rec_free(&r);
    h_done(&h);
    raw_teardown(NULL);

    /* retry-after-ms wins over retry-after. */
    const char *resp2[] = { ms, SSE_OK };
    size_t lens2[] = { sizeof(ms) - 1, sizeof(SSE_OK) - 1 };
    raw_call(resp2, lens2, 2, 3, &h, &r);
    assert_int_equal(r.retries, 1);
    assert_string_equal(r.rerr[0].type, "rate_limit_error");
    assert_true(r.delay[0] > 0.149 && r.delay[0] < 0.151);
    assert_true(r.timing.started_ns >= r.retry_ns[0] + 150000000ull);
    assert_int_equal(r.status, 0);
    rec_free(&r);
    h_done(&h);
}

static void retry_after_http_date(void **state)
{
    (void)state;
    char date[64], d503[512];
    time_t when = time(NULL) + 2;
    struct tm tm;
    struct h h;
    struct rec r;

    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", gmtime_r(&when, &tm));
    snprintf(d503, sizeof(d503),
             "HTTP/1.1 503 Service Unavailable\r\nretry-after: %s\r\ncontent-length: 0\r\n"
             "connection: close\r\n\r\n",
             date);
    const char *resp[] = { d503, SSE_OK };
    size_t lens[] = { strlen(d503), sizeof(SSE_OK) - 1 };
    raw_call(resp, lens, 2, 3, &h, &r);
    assert_int_equal(r.retries, 1);
    assert_int_equal(r.rerr[0].http_status, 503);
    assert_string_equal(r.rerr[0].type, "api_error"); /* no body: from the status */
    assert_true(r.delay[0] >= 1.0);
    assert_true(r.timing.started_ns >= r.retry_ns[0] + 1000000000ull);
    assert_int_equal(r.status, 0);
    rec_free(&r);
    h_done(&h);
}

static void non_json_error_body(void **state)
{
    (void)state;
    static const char bad_gw[] = "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 31\r\n"
                                 "connection: close\r\n\r\n<html>\x01 bad gateway </html>\r\n";
    const char *resp[] = { bad_gw };
    size_t lens[] = { sizeof(bad_gw) - 1 };
    struct h h;
    struct rec r;

    raw_call(resp, lens, 1, 0, &h, &r);
    assert_int_equal(r.status, WP_EPROTO);
    assert_int_equal(r.err.http_status, 502);
    assert_string_equal(r.err.type, "api_error");
    assert_true(r.err.retryable); /* retryable, but max_retries is 0 */
    assert_non_null(strstr(r.err.message, "HTTP 502"));
    assert_null(strchr(r.err.message, '\x01')); /* control bytes replaced */
    rec_free(&r);
    h_done(&h);
}

static void bad_streams_are_stream_errors(void **state)
{
    (void)state;
    static const char bad_json[] =
        HEAD_SSE EV_START "event: content_block_delta\ndata: {not json\n\n" EV_END;
    static const char no_stop[] = HEAD_SSE EV_START EV_DELTA;
    /* 1.1 MiB in one data line, after two events were delivered. */
    size_t big_len = sizeof(HEAD_SSE EV_START) - 1 + 1200000;
    char *big = malloc(big_len + 1);
    struct h h;
    struct rec r;

    memcpy(big, HEAD_SSE EV_START "data: ", sizeof(HEAD_SSE EV_START "data: ") - 1);
    memset(big + sizeof(HEAD_SSE EV_START "data: ") - 1, 'x',
           big_len - (sizeof(HEAD_SSE EV_START "data: ") - 1));
    const char *r1[] = { bad_json };
    size_t l1[] = { sizeof(bad_json) - 1 };
    raw_call(r1, l1, 1, 3, &h, &r);
    assert_int_equal(r.status, WP_EPROTO);
    assert_string_equal(r.err.type, "stream_error");
    assert_non_null(strstr(r.err.message, "invalid JSON"));
    assert_true(r.err.partial);
    assert_int_equal(r.retries, 0);
    rec_free(&r);
    h_done(&h);
    raw_teardown(NULL);

    const char *r2[] = { no_stop };
    size_t l2[] = { sizeof(no_stop) - 1 };
    raw_call(r2, l2, 1, 3, &h, &r);
    assert_int_equal(r.status, WP_EPROTO);
    assert_string_equal(r.err.type, "stream_error");
    assert_non_null(strstr(r.err.message, "without message_stop"));
    assert_true(r.err.partial);
    assert_string_equal(r.text.data, "hi");
    rec_free(&r);
    h_done(&h);
    raw_teardown(NULL);

    const char *r3[] = { big };
    size_t l3[] = { big_len };
    raw_call(r3, l3, 1, 3, &h, &r);
    assert_int_equal(r.status, WP_ETOOBIG);
    assert_string_equal(r.err.type, "stream_error");
    assert_true(r.err.partial);
    assert_int_equal(r.n, 2);
    rec_free(&r);
    h_done(&h);
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(raw_success_with_comment_and_ping, raw_teardown),
        cmocka_unit_test_teardown(error_right_after_message_start_retried, raw_teardown),
        cmocka_unit_test_teardown(header_timeout_on_silent_server, raw_teardown),
        cmocka_unit_test_teardown(should_retry_false_and_retry_after_ms, raw_teardown),
        cmocka_unit_test_teardown(retry_after_http_date, raw_teardown),
        cmocka_unit_test_teardown(non_json_error_body, raw_teardown),
        cmocka_unit_test_teardown(bad_streams_are_stream_errors, raw_teardown),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
