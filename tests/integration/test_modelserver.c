/* test_modelserver.c - wp-modelserver over real HTTP with libcurl: the
 * exact SSE event sequence, a scripted tool call, faults, validation and
 * auth, keep-alive, TTFT bounds and many concurrent streams. Timing checks
 * assert ordering and loose bounds, never tight ones. */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/timeutil.h"
#include "lib/testlib.h"
#include "tests/modelserver/msrv_spawn.h"

static struct msrv_proc srv;

static int teardown(void **state)
{
    (void)state;
    if (srv.pid > 0) {
        char out[4096] = "";
        th_sh(out, sizeof(out), "tail -5 %s", srv.log);
        fprintf(stderr, "# server log tail:\n%s", out);
        msrv_stop(&srv);
    }
    return 0;
}

/* ---- a tiny HTTP client ---------------------------------------------- */

struct resp {
    long status;
    CURLcode rc;
    char *body;
    size_t len;
    char headers[4096];
    size_t hlen;
    double t0, first_delta_ms; /* first content_block_delta after t0 */
    long connects;
};

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    struct resp *r = ud;
    char *nb = realloc(r->body, r->len + sz * n + 1);

    if (!nb)
        return 0;
    r->body = nb;
    memcpy(r->body + r->len, p, sz * n);
    r->len += sz * n;
    r->body[r->len] = '\0';
    if (r->first_delta_ms < 0 && strstr(r->body, "event: content_block_delta"))
        r->first_delta_ms = wp_now_ms() - r->t0;
    return sz * n;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    struct resp *r = ud;
    size_t k = sz * n;

    if (k > sizeof(r->headers) - 1 - r->hlen)
        k = sizeof(r->headers) - 1 - r->hlen;
    memcpy(r->headers + r->hlen, p, k);
    r->hlen += k;
    r->headers[r->hlen] = '\0';
    return sz * n;
}

static CURL *easy_for(struct resp *r, const char *method, const char *path, const char *body,
                      struct curl_slist *hdrs)
{
    char url[256];
    CURL *e = curl_easy_init();

    memset(r, 0, sizeof(*r));
    r->first_delta_ms = -1;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", srv.port, path);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    if (body)
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, 20L);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    r->t0 = wp_now_ms();
    return e;
}

static CURL *shared; /* reused across calls: keep-alive */

static void call(struct resp *r, const char *method, const char *path, const char *body,
                 const char *auth)
{
    struct curl_slist *h = curl_slist_append(NULL, "content-type: application/json");
    char url[256];

    h = curl_slist_append(h, "anthropic-version: 2023-06-01");
    if (auth)
        h = curl_slist_append(h, auth);
    if (!shared)
        shared = curl_easy_init();
    curl_easy_reset(shared);
    memset(r, 0, sizeof(*r));
    r->first_delta_ms = -1;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", srv.port, path);
    curl_easy_setopt(shared, CURLOPT_URL, url);
    curl_easy_setopt(shared, CURLOPT_CUSTOMREQUEST, method);
    if (body)
        curl_easy_setopt(shared, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(shared, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(shared, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(shared, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(shared, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(shared, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(shared, CURLOPT_TIMEOUT, 20L);
    r->t0 = wp_now_ms();
    r->rc = curl_easy_perform(shared);
    curl_easy_getinfo(shared, CURLINFO_RESPONSE_CODE, &r->status);
    curl_easy_getinfo(shared, CURLINFO_NUM_CONNECTS, &r->connects);
    curl_slist_free_all(h);
}

#define KEY "x-api-key: test"

static char *msgs_body(const char *messages, int stream, int max_tokens)
{
    char *s;
    if (asprintf(&s, "{\"model\":\"claude-test\",\"max_tokens\":%d,\"stream\":%s,\"messages\":%s}",
                 max_tokens, stream ? "true" : "false", messages) < 0)
        return NULL;
    return s;
}

/* ---- SSE -------------------------------------------------------------- */

struct sse {
    int n;
    char name[256][32];
    json_t *data[256];
};

static void sse_parse(const char *body, struct sse *s)
{
    const char *p = body;

    memset(s, 0, sizeof(*s));
    while (p && *p && s->n < 256) {
        const char *end = strstr(p, "\n\n");
        const char *ev = strstr(p, "event: "), *data = strstr(p, "\ndata: ");
        if (!end || !ev || !data || ev > end || data > end)
            break;
        snprintf(s->name[s->n], sizeof(s->name[0]), "%.*s", (int)strcspn(ev + 7, "\n"), ev + 7);
        s->data[s->n] = json_loadb(data + 7, (size_t)(end - data - 7), 0, NULL);
        s->n++;
        p = end + 2;
    }
}

static void sse_free(struct sse *s)
{
    for (int i = 0; i < s->n; i++)
        json_decref(s->data[i]);
}

static const char *jstr(json_t *j, const char *a, const char *b)
{
    json_t *v = json_object_get(j, a);
    if (b)
        v = json_object_get(v, b);
    return json_string_value(v);
}

/* Every event's data is JSON whose "type" is the event name. */
static void assert_well_formed(const struct sse *s)
{
    for (int i = 0; i < s->n; i++) {
        assert_non_null(s->data[i]);
        assert_string_equal(jstr(s->data[i], "type", NULL), s->name[i]);
    }
}

/* ---- tests ------------------------------------------------------------- */

static int count(const char *hay, const char *needle)
{
    int c = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        c++;
    return c;
}


static void text_stream_exact_sequence(void **state)
{
    const char *args[] = { "--ttft", "fixed:150", "--rate", "200", "--text", "one two three",
                           NULL };
    const char *want[] = { "message_start", "content_block_start", "ping",
                           "content_block_delta", "content_block_delta", "content_block_delta",
                           "content_block_stop", "message_delta", "message_stop" };
    char *body = msgs_body("[{\"role\":\"user\",\"content\":\"hi\"}]", 1, 100);
    struct resp r, st;
    struct sse s;
    char text[256] = "";
    json_t *stats;
    (void)state;

    assert_int_equal(msrv_spawn(&srv, args), 0);
    call(&r, "POST", "/v1/messages", body, KEY);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.headers, "Content-Type: text/event-stream"));
    assert_non_null(strstr(r.headers, "request-id: req_"));
    sse_parse(r.body, &s);
    assert_int_equal(s.n, 9);
    for (int i = 0; i < 9; i++)
        assert_string_equal(s.name[i], want[i]);
    assert_well_formed(&s);
    assert_string_equal(jstr(s.data[0], "message", "role"), "assistant");
    assert_string_equal(jstr(s.data[0], "message", "model"), "claude-test");
    assert_true(json_is_null(json_object_get(json_object_get(s.data[0], "message"),
                                             "stop_reason")));
    for (int i = 3; i < 6; i++) {
        assert_string_equal(jstr(s.data[i], "delta", "type"), "text_delta");
        strcat(text, jstr(s.data[i], "delta", "text"));
    }
    assert_string_equal(text, "one two three");
    assert_string_equal(jstr(s.data[7], "delta", "stop_reason"), "end_turn");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(s.data[7], "usage"),
                                                        "output_tokens")),
                     3);
    /* TTFT: not before the configured 150 ms, and not absurdly late. */
    assert_true(r.first_delta_ms >= 145);
    assert_true(r.first_delta_ms < 3000);
    sse_free(&s);

    /* The server's own TTFT record, for benchmarks to subtract. */
    call(&st, "GET", "/stats", NULL, NULL);
    assert_int_equal(st.status, 200);
    assert_int_equal(st.connects, 0); /* keep-alive: the connection was reused */
    stats = json_loads(st.body, 0, NULL);
    assert_non_null(stats);
    assert_int_equal(json_integer_value(json_object_get(stats, "streams")), 1);
    {
        json_t *rec = json_array_get(json_object_get(stats, "recent"), 0);
        assert_true(json_real_value(json_object_get(rec, "ttft_ms")) >= 149);
        assert_true(json_real_value(json_object_get(rec, "planned_ttft_ms")) == 150.0);
        assert_non_null(strstr(r.headers, jstr(rec, "request_id", NULL)));
    }
    json_decref(stats);
    free(st.body);
    call(&st, "GET", "/stats/requests", NULL, NULL);
    assert_int_equal(st.status, 200);
    stats = json_loads(st.body, 0, NULL);
    assert_int_equal(json_array_size(json_object_get(stats, "requests")), 1);
    json_decref(stats);
    free(st.body);
    free(r.body);
    free(body);
    assert_int_equal(msrv_stop(&srv), 0);
}

static const char tool_script[] =
    "{\"ttft_ms\": 20, \"tokens_per_s\": 1000, \"chunk_tokens\": 1,"
    " \"conversations\": [{\"match\": \"bash\", \"turns\": ["
    "  {\"content\": [{\"type\":\"text\",\"text\":\"Running it.\"},"
    "     {\"type\":\"tool_use\",\"id\":\"toolu_fixed\",\"name\":\"bash\","
    "      \"input\":{\"command\":\"echo hello && ls -la /\",\"timeout\":5}}]},"
    "  {\"text\": \"done\", \"ttft_ms\": \"fixed:10\"}]}]}";

static void scripted_tool_call(void **state)
{
    char *dir = th_tmpdir("msrv"), path[512], json[1024] = "", *body;
    const char *args[] = { "--script", path, NULL };
    struct resp r;
    struct sse s;
    json_t *input;
    int i_tool = -1;
    (void)state;

    assert_non_null(dir);
    snprintf(path, sizeof(path), "%s/script.json", dir);
    {
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(tool_script, f);
        fclose(f);
    }
    assert_int_equal(msrv_spawn(&srv, args), 0);
    body = msgs_body("[{\"role\":\"user\",\"content\":\"use bash please\"}]", 1, 1000);
    call(&r, "POST", "/v1/messages", body, KEY);
    free(body);
    assert_int_equal(r.status, 200);
    sse_parse(r.body, &s);
    assert_well_formed(&s);
    assert_string_equal(s.name[s.n - 1], "message_stop");
    assert_string_equal(jstr(s.data[s.n - 2], "delta", "stop_reason"), "tool_use");
    for (int i = 0; i < s.n; i++) {
        if (strcmp(s.name[i], "content_block_start") == 0 &&
            strcmp(jstr(s.data[i], "content_block", "type"), "tool_use") == 0) {
            i_tool = i;
            assert_int_equal(json_integer_value(json_object_get(s.data[i], "index")), 1);
            assert_string_equal(jstr(s.data[i], "content_block", "name"), "bash");
            assert_string_equal(jstr(s.data[i], "content_block", "id"), "toolu_fixed");
        }
        if (i_tool >= 0 && strcmp(s.name[i], "content_block_delta") == 0) {
            assert_string_equal(jstr(s.data[i], "delta", "type"), "input_json_delta");
            strcat(json, jstr(s.data[i], "delta", "partial_json"));
        }
    }
    assert_true(i_tool > 0);
    assert_string_equal(s.name[s.n - 3], "content_block_stop");
    input = json_loads(json, 0, NULL);
    assert_non_null(input);
    assert_string_equal(jstr(input, "command", NULL), "echo hello && ls -la /");
    assert_int_equal(json_integer_value(json_object_get(input, "timeout")), 5);
    json_decref(input);
    sse_free(&s);
    free(r.body);

    /* The next turn (one assistant message, one tool_result) plays turn 2. */
    body = msgs_body("[{\"role\":\"user\",\"content\":\"use bash please\"},"
                     "{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\","
                     "\"id\":\"toolu_fixed\",\"name\":\"bash\",\"input\":{}}]},"
                     "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\","
                     "\"tool_use_id\":\"toolu_fixed\",\"content\":\"hello\"}]}]",
                     0, 1000);
    call(&r, "POST", "/v1/messages", body, KEY);
    free(body);
    assert_int_equal(r.status, 200);
    input = json_loads(r.body, 0, NULL);
    assert_non_null(input);
    assert_string_equal(jstr(input, "type", NULL), "message");
    assert_string_equal(jstr(input, "stop_reason", NULL), "end_turn");
    assert_string_equal(jstr(json_array_get(json_object_get(input, "content"), 0), "text", NULL),
                        "done");
    json_decref(input);
    free(r.body);
    assert_int_equal(msrv_stop(&srv), 0);
    th_rmtree(dir);
    free(dir);
}

static void faults_in_order(void **state)
{
    const char *args[] = { "--ttft", "fixed:5", "--rate", "0", "--http-fail-first", "2",
                           "--retry-after", "3", "--stream-error-first", "1", "--drop-first",
                           "1", "--fault-after", "1", NULL };
    char *body = msgs_body("[{\"role\":\"user\",\"content\":\"hi\"}]", 1, 100);
    struct resp r;
    struct sse s;
    json_t *j;
    (void)state;

    assert_int_equal(msrv_spawn(&srv, args), 0);
    for (int i = 0; i < 2; i++) { /* 1, 2: HTTP 529 with retry-after */
        call(&r, "POST", "/v1/messages", body, KEY);
        assert_int_equal(r.status, 529);
        assert_non_null(strstr(r.headers, "retry-after: 3"));
        j = json_loads(r.body, 0, NULL);
        assert_string_equal(jstr(j, "type", NULL), "error");
        assert_string_equal(jstr(j, "error", "type"), "overloaded_error");
        json_decref(j);
        free(r.body);
    }
    /* 3: the stream starts, then ends with an error event. */
    call(&r, "POST", "/v1/messages", body, KEY);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    sse_parse(r.body, &s);
    assert_true(s.n >= 2);
    assert_string_equal(s.name[0], "message_start");
    assert_string_equal(s.name[s.n - 1], "error");
    assert_string_equal(jstr(s.data[s.n - 1], "error", "type"), "overloaded_error");
    assert_null(strstr(r.body, "message_stop"));
    sse_free(&s);
    free(r.body);
    /* 4: the connection is dropped mid-stream. */
    call(&r, "POST", "/v1/messages", body, KEY);
    assert_int_not_equal(r.rc, CURLE_OK);
    assert_non_null(r.body);
    assert_non_null(strstr(r.body, "message_start"));
    assert_null(strstr(r.body, "message_stop"));
    free(r.body);
    /* 5: all good again. */
    call(&r, "POST", "/v1/messages", body, KEY);
    assert_int_equal(r.rc, CURLE_OK);
    assert_non_null(strstr(r.body, "event: message_stop"));
    free(r.body);
    free(body);
    assert_int_equal(msrv_stop(&srv), 0);
}

static void fail_rate_429(void **state)
{
    const char *args[] = { "--http-fail-rate", "1", "--fail-status", "429", "--retry-after",
                           "-1", NULL };
    char *body = msgs_body("[{\"role\":\"user\",\"content\":\"hi\"}]", 1, 100);
    struct resp r;
    json_t *j;
    (void)state;

    assert_int_equal(msrv_spawn(&srv, args), 0);
    call(&r, "POST", "/v1/messages", body, KEY);
    assert_int_equal(r.status, 429);
    assert_null(strstr(r.headers, "retry-after"));
    j = json_loads(r.body, 0, NULL);
    assert_string_equal(jstr(j, "error", "type"), "rate_limit_error");
    json_decref(j);
    free(r.body);
    free(body);
    assert_int_equal(msrv_stop(&srv), 0);
}

static void validation_auth_and_routes(void **state)
{
    const char *args[] = { "--ttft", "fixed:1", "--rate", "0", NULL };
    char *ok = msgs_body("[{\"role\":\"user\",\"content\":\"hi\"}]", 0, 10);
    char big[4096];
    struct resp r;
    json_t *j;
    double t0;
    (void)state;

    assert_int_equal(msrv_spawn(&srv, args), 0);
#define EXPECT_ERR(st, type)                                       \
    do {                                                           \
        assert_int_equal(r.status, st);                            \
        j = json_loads(r.body, 0, NULL);                           \
        assert_non_null(j);                                        \
        assert_string_equal(jstr(j, "type", NULL), "error");       \
        assert_string_equal(jstr(j, "error", "type"), type);       \
        assert_non_null(jstr(j, "error", "message"));              \
        json_decref(j);                                            \
        free(r.body);                                              \
    } while (0)
    call(&r, "POST", "/v1/messages", ok, NULL);
    EXPECT_ERR(401, "authentication_error");
    call(&r, "POST", "/v1/messages", "{\"model\":\"m\",\"messages\":[]}", KEY);
    EXPECT_ERR(400, "invalid_request_error");
    call(&r, "POST", "/v1/messages", "{not json", KEY);
    EXPECT_ERR(400, "invalid_request_error");
    call(&r, "GET", "/v1/messages", NULL, KEY);
    EXPECT_ERR(405, "invalid_request_error");
    call(&r, "GET", "/v1/nothing", NULL, KEY);
    EXPECT_ERR(404, "not_found_error");
#undef EXPECT_ERR
    /* Authorization: Bearer is accepted too. */
    call(&r, "POST", "/v1/messages", ok, "Authorization: Bearer tok");
    assert_int_equal(r.status, 200);
    free(r.body);
    /* A body over 1 KiB makes libcurl 7.x send Expect: 100-continue; the
     * server answers it, so curl does not sit out its 1 s wait. */
    snprintf(big, sizeof(big),
             "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\","
             "\"content\":\"%0*d\"}]}",
             3000, 7);
    t0 = wp_now_ms();
    call(&r, "POST", "/v1/messages", big, KEY);
    assert_int_equal(r.status, 200);
    assert_true(wp_now_ms() - t0 < 900);
    free(r.body);
    free(ok);
    assert_int_equal(msrv_stop(&srv), 0);
}

/* 120 streams at once through curl multi: every one completes, and every
 * TTFT lies within the configured uniform range (loosely above). */
static void concurrent_streams(const char *timer)
{
    enum { N = 120 };
    const char *args[] = { "--ttft", "uniform:50:150", "--rate", "500", "--seed", "9", timer,
                           NULL };
    char *body = msgs_body("[{\"role\":\"user\",\"content\":\"hi\"}]", 1, 100);
    struct curl_slist *h = curl_slist_append(NULL, "content-type: application/json");
    struct resp *r = calloc(N, sizeof(*r));
    CURLM *m = curl_multi_init();
    CURL *e[N];
    int running = 1;
    json_t *stats, *t;
    struct resp st;

    h = curl_slist_append(h, KEY);
    assert_int_equal(msrv_spawn(&srv, args), 0);
    curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, 0L);
    for (int i = 0; i < N; i++) {
        e[i] = easy_for(&r[i], "POST", "/v1/messages", body, h);
        curl_multi_add_handle(m, e[i]);
    }
    while (running) {
        curl_multi_perform(m, &running);
        if (running)
            curl_multi_poll(m, NULL, 0, 100, NULL);
    }
    for (int i = 0; i < N; i++) {
        long code = 0;
        curl_easy_getinfo(e[i], CURLINFO_RESPONSE_CODE, &code);
        assert_int_equal(code, 200);
        assert_non_null(strstr(r[i].body, "event: message_stop"));
        assert_true(r[i].first_delta_ms >= 45);
        assert_true(r[i].first_delta_ms < 5000);
        curl_multi_remove_handle(m, e[i]);
        curl_easy_cleanup(e[i]);
        free(r[i].body);
    }
    curl_multi_cleanup(m);
    curl_slist_free_all(h);
    free(r);
    free(body);

    call(&st, "GET", "/stats", NULL, NULL);
    stats = json_loads(st.body, 0, NULL);
    t = json_object_get(stats, "ttft_ms");
    assert_int_equal(json_integer_value(json_object_get(t, "count")), N);
    assert_true(json_real_value(json_object_get(t, "min")) >= 49.5);
    assert_true(json_real_value(json_object_get(t, "p50")) >= 50);
    assert_true(json_real_value(json_object_get(t, "p50")) < 400);
    assert_int_equal(json_integer_value(json_object_get(stats, "active_streams")), 0);
    json_decref(stats);
    free(st.body);
    assert_int_equal(msrv_stop(&srv), 0);
}

static void concurrent_streams_ttft_bounds(void **state)
{
    (void)state;
    concurrent_streams(NULL);
}

static void concurrent_streams_ev_timer(void **state)
{
    (void)state;
    concurrent_streams("--ev-timer");
}

/* Deltas are paced at the token rate: 5 tokens at 20/s take 4 intervals
 * of 50 ms after the first; in one chunk of 5 they come at once. */
static void token_rate_paces_deltas(void **state)
{
    const char *args[] = { "--ttft", "fixed:10", "--rate", "20", "--text", "a b c d e", NULL };
    const char *args5[] = { "--ttft", "fixed:10", "--rate", "20", "--chunk", "5", "--text",
                            "a b c d e", NULL };
    char *body = msgs_body("[{\"role\":\"user\",\"content\":\"hi\"}]", 1, 100);
    struct resp r;
    double t;
    (void)state;

    assert_int_equal(msrv_spawn(&srv, args), 0);
    call(&r, "POST", "/v1/messages", body, KEY);
    t = wp_now_ms() - r.t0;
    assert_int_equal(count(r.body, "event: content_block_delta"), 5);
    assert_true(t >= 200 && t < 3000);
    assert_true(t - r.first_delta_ms >= 195);
    free(r.body);
    assert_int_equal(msrv_stop(&srv), 0);

    assert_int_equal(msrv_spawn(&srv, args5), 0);
    call(&r, "POST", "/v1/messages", body, KEY);
    t = wp_now_ms() - r.t0;
    assert_int_equal(count(r.body, "event: content_block_delta"), 1);
    assert_non_null(strstr(r.body, "\"text\":\"a b c d e\""));
    assert_true(t < 190);
    free(r.body);
    free(body);
    assert_int_equal(msrv_stop(&srv), 0);
}

/* Send raw bytes, read until the server closes; returns bytes read. */
static size_t raw_exchange(const char *req, char *out, size_t cap, int half_close)
{
    struct sockaddr_in a = { .sin_family = AF_INET };
    struct timeval tv = { 10, 0 };
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    size_t n = 0;
    ssize_t k;

    a.sin_port = htons((uint16_t)srv.port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_true(fd >= 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    if (half_close)
        shutdown(fd, SHUT_WR);
    while (n < cap - 1) {
        k = read(fd, out + n, cap - 1 - n);
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    out[n] = '\0';
    close(fd);
    return n;
}

static size_t abort_after_first(char *p, size_t sz, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    (void)sz;
    (void)n;
    return 0; /* curl aborts the transfer and closes the connection */
}

/* Pipelined requests are answered in order; Connection: close closes;
 * malformed input gets 400 and a close; a client that goes away mid-stream
 * is counted and leaves nothing active. */
static void pipelining_close_and_client_gone(void **state)
{
    const char *args[] = { "--ttft", "fixed:30", "--rate", "50", NULL };
    char out[16384];
    struct resp st;
    json_t *stats;
    char *body = msgs_body("[{\"role\":\"user\",\"content\":\"hi\"}]", 1, 100);
    (void)state;

    assert_int_equal(msrv_spawn(&srv, args), 0);
    raw_exchange("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                 out, sizeof(out), 0);
    assert_int_equal(count(out, "HTTP/1.1 200 OK"), 2);
    assert_int_equal(count(out, "HTTP/1.1 404"), 1);
    assert_true(strstr(out, "HTTP/1.1 404") > strstr(out, "HTTP/1.1 200"));
    assert_non_null(strstr(out, "Connection: close"));

    raw_exchange("BREW /pot HTCPCP/1.0\r\n\r\n", out, sizeof(out), 0);
    assert_non_null(strstr(out, "HTTP/1.1 400"));
    assert_non_null(strstr(out, "invalid_request_error"));

    /* A client that shuts down its sending side still gets its answers,
     * the stream included, then the close. */
    {
        char req[1024];
        snprintf(req, sizeof(req),
                 "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                 "POST /v1/messages HTTP/1.1\r\nHost: x\r\n" KEY "\r\n"
                 "Content-Length: %zu\r\n\r\n%s",
                 strlen(body), body);
        raw_exchange(req, out, sizeof(out), 1);
        assert_int_equal(count(out, "HTTP/1.1 200 OK"), 2);
        assert_non_null(strstr(out, "event: message_stop"));
        assert_non_null(strstr(out, "\r\n0\r\n\r\n"));
    }

    {
        struct curl_slist *h = curl_slist_append(NULL, KEY);
        struct resp r;
        CURL *e = easy_for(&r, "POST", "/v1/messages", body, h);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, abort_after_first);
        assert_int_equal(curl_easy_perform(e), CURLE_WRITE_ERROR);
        curl_easy_cleanup(e);
        curl_slist_free_all(h);
    }
    /* The server notices at its next read or write. */
    for (int i = 0; i < 100; i++) {
        call(&st, "GET", "/stats", NULL, NULL);
        stats = json_loads(st.body, 0, NULL);
        free(st.body);
        if (json_integer_value(json_object_get(stats, "client_gone")) == 1)
            break;
        json_decref(stats);
        stats = NULL;
        usleep(20 * 1000);
    }
    assert_non_null(stats);
    assert_int_equal(json_integer_value(json_object_get(stats, "active_streams")), 0);
    json_decref(stats);
    free(body);
    assert_int_equal(msrv_stop(&srv), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(text_stream_exact_sequence, teardown),
        cmocka_unit_test_teardown(scripted_tool_call, teardown),
        cmocka_unit_test_teardown(token_rate_paces_deltas, teardown),
        cmocka_unit_test_teardown(faults_in_order, teardown),
        cmocka_unit_test_teardown(fail_rate_429, teardown),
        cmocka_unit_test_teardown(validation_auth_and_routes, teardown),
        cmocka_unit_test_teardown(pipelining_close_and_client_gone, teardown),
        cmocka_unit_test_teardown(concurrent_streams_ttft_bounds, teardown),
        cmocka_unit_test_teardown(concurrent_streams_ev_timer, teardown),
    };
    int rc;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (shared)
        curl_easy_cleanup(shared);
    curl_global_cleanup();
    return rc;
}
