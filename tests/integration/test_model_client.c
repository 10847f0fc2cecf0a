/* test_model_client.c - the model client (scheduler/model.c) against a
 * real wp-modelserver on a free port, and against a raw socket server for
 * answers the model server does not give (silence, HTTP dates, garbage).
 *
 * Each test runs its own libev loop with an unref'd guard timer: ev_run
 * returns by itself once every call ended and the client left no watcher
 * behind; the guard fires only if something hangs or leaks. Timing checks
 * are lower bounds and orderings, never upper bounds. */
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

#include "base/buf.h"
#include "base/timeutil.h"
#include "lib/testlib.h"
#include "scheduler/model.h"
#include "scheduler/sched.h"
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

/* ---- harness ------------------------------------------------------------ */

struct h {
    struct ev_loop *loop;
    ev_timer guard;
    bool hung;
    struct sched_model *m;
    struct sched_model_config cfg;
};

struct rec {
    struct h *h;
    struct sched_model_call *call;
    int n;
    char types[512][32];
    struct wp_buf text, tool;
    int tool_index;
    char stop_reason[32];
    int retries;
    double delay[8];
    uint64_t retry_ns[8];
    struct sched_model_error rerr[8];
    int done;
    int status;
    struct sched_model_error err;
    struct sched_model_timing timing;
    int cancel_at;       /* cancel in on_event when n reaches this */
    bool cancelled;
    int after_cancel;    /* callbacks seen after the cancel */
    void (*chain)(struct rec *r); /* run in on_done */
    void (*hook)(struct rec *r, const char *type); /* run in on_event */
    void *user;
};

static void on_guard(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct h *h = w->data;
    (void)revents;
    h->hung = true;
    ev_break(loop, EVBREAK_ALL);
}

static void h_init(struct h *h, int port, double guard_s)
{
    memset(h, 0, sizeof(*h));
    h->loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(h->loop);
    sched_model_config_defaults(&h->cfg);
    snprintf(h->cfg.base_url, sizeof(h->cfg.base_url), "http://127.0.0.1:%d/", port);
    snprintf(h->cfg.api_key, sizeof(h->cfg.api_key), "test-key");
    h->cfg.backoff_base_s = 0.01;
    h->cfg.backoff_max_s = 0.05;
    ev_timer_init(&h->guard, on_guard, guard_s, 0.);
    h->guard.data = h;
    ev_timer_start(h->loop, &h->guard);
    ev_unref(h->loop); /* the guard alone does not keep ev_run going */
}

static void h_model(struct h *h)
{
    struct wp_err err = { 0 };
    assert_int_equal(sched_model_new(h->loop, &h->cfg, &h->m, &err), 0);
}

/* Runs until no watcher is left; fails if that took longer than the guard. */
static void h_run(struct h *h)
{
    ev_run(h->loop, 0);
    if (h->hung)
        fail_msg("loop still busy after the guard time: a call hung or a watcher leaked");
}

static void h_done(struct h *h)
{
    sched_model_free(h->m);
    ev_ref(h->loop);
    ev_timer_stop(h->loop, &h->guard);
    ev_loop_destroy(h->loop);
}

static void rec_init(struct rec *r, struct h *h)
{
    memset(r, 0, sizeof(*r));
    r->h = h;
    r->tool_index = -1;
    wp_buf_init(&r->text, 1 << 20);
    wp_buf_init(&r->tool, 1 << 20);
}

static void rec_free(struct rec *r)
{
    wp_buf_free(&r->text);
    wp_buf_free(&r->tool);
}

static void on_event(void *ctx, const char *type, json_t *data)
{
    struct rec *r = ctx;

    if (r->cancelled) {
        r->after_cancel++;
        return;
    }
    if (r->n < 512)
        snprintf(r->types[r->n], sizeof(r->types[0]), "%s", type);
    r->n++;
    assert_string_equal(json_string_value(json_object_get(data, "type")), type);
    if (!strcmp(type, "content_block_start")) {
        json_t *cb = json_object_get(data, "content_block");
        if (!strcmp(json_string_value(json_object_get(cb, "type")), "tool_use"))
            r->tool_index = (int)json_integer_value(json_object_get(data, "index"));
    } else if (!strcmp(type, "content_block_delta")) {
        json_t *d = json_object_get(data, "delta");
        const char *dt = json_string_value(json_object_get(d, "type"));
        const char *s;
        if (!strcmp(dt, "text_delta")) {
            s = json_string_value(json_object_get(d, "text"));
            assert_int_equal(wp_buf_append(&r->text, s, strlen(s)), 0);
        } else if (!strcmp(dt, "input_json_delta")) {
            assert_int_equal(json_integer_value(json_object_get(data, "index")), r->tool_index);
            s = json_string_value(json_object_get(d, "partial_json"));
            assert_int_equal(wp_buf_append(&r->tool, s, strlen(s)), 0);
        }
    } else if (!strcmp(type, "message_delta")) {
        const char *sr =
            json_string_value(json_object_get(json_object_get(data, "delta"), "stop_reason"));
        snprintf(r->stop_reason, sizeof(r->stop_reason), "%s", sr ? sr : "");
    }
    if (r->cancel_at && r->n == r->cancel_at) {
        r->cancelled = true;
        sched_model_cancel(r->call);
    }
    if (r->hook)
        r->hook(r, type);
}

static void on_retry(void *ctx, int attempt, const struct sched_model_error *e, double delay_s)
{
    struct rec *r = ctx;

    if (r->cancelled) {
        r->after_cancel++;
        return;
    }
    assert_int_equal(attempt, r->retries + 1);
    if (r->retries < 8) {
        r->delay[r->retries] = delay_s;
        r->retry_ns[r->retries] = wp_now_ns();
        r->rerr[r->retries] = *e;
    }
    r->retries++;
}

static void on_done(void *ctx, int status, const struct sched_model_error *e)
{
    struct rec *r = ctx;

    if (r->cancelled) {
        r->after_cancel++;
        return;
    }
    r->done++;
    r->status = status;
    if (status < 0) {
        assert_non_null(e);
        r->err = *e;
    } else {
        assert_null(e);
    }
    sched_model_timing(r->call, &r->timing);
    if (r->chain)
        r->chain(r);
}

static const struct sched_model_cbs cbs = { on_event, on_retry, on_done };

static json_t *msg_body(const char *text)
{
    return json_pack("{s:s, s:i, s:[{s:s, s:s}]}", "model", "claude-test", "max_tokens", 1024,
                     "messages", "role", "user", "content", text);
}

static void start(struct rec *r, const char *text)
{
    struct wp_err err = { 0 };
    json_t *b = msg_body(text);

    assert_int_equal(sched_model_stream(r->h->m, b, &cbs, r, &r->call, &err), 0);
    assert_null(json_object_get(b, "stream")); /* the caller's body is not touched */
    json_decref(b);
}

static json_t *stats(void)
{
    char out[65536] = "";
    th_sh(out, sizeof(out), "curl -s -m 5 http://127.0.0.1:%d/stats", srv.port);
    json_t *j = json_loads(out, 0, NULL);
    assert_non_null(j);
    return j;
}

static long stat_int(const char *key)
{
    json_t *j = stats();
    long v = (long)json_integer_value(json_object_get(j, key));
    json_decref(j);
    return v;
}

static void spawn(const char *const *args)
{
    assert_int_equal(msrv_spawn(&srv, args), 0);
}

/* ---- streams against wp-modelserver ---------------------------------------- */

#define REPLY "Hello there, this is a streamed reply from the stand-in."

static void text_stream_in_order(void **state)
{
    (void)state;
    const char *args[] = { "--ttft", "fixed:20", "--rate", "0", "--text", REPLY, NULL };
    struct h h;
    struct rec r;

    spawn(args);
    h_init(&h, srv.port, 20);
    h_model(&h);
    rec_init(&r, &h);
    start(&r, "hello");
    h_run(&h);

    assert_int_equal(r.done, 1);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.retries, 0);
    assert_string_equal(r.text.data, REPLY);
    assert_true(r.n >= 6);
    assert_string_equal(r.types[0], "message_start");
    assert_string_equal(r.types[1], "content_block_start");
    assert_string_equal(r.types[r.n - 3], "content_block_stop");
    assert_string_equal(r.types[r.n - 2], "message_delta");
    assert_string_equal(r.types[r.n - 1], "message_stop");
    for (int i = 2; i < r.n - 3; i++)
        assert_string_equal(r.types[i], "content_block_delta"); /* and no ping */
    assert_string_equal(r.stop_reason, "end_turn");
    assert_int_equal(r.timing.attempts, 1);
    assert_true(r.timing.headers_ns >= r.timing.started_ns);
    assert_true(r.timing.first_event_ns >= r.timing.headers_ns);
    assert_true(r.timing.first_event_ns - r.timing.started_ns >= 20 * 1000000ull);
    assert_memory_equal(r.timing.request_id, "req_", 4);
    rec_free(&r);
    h_done(&h);
}

/* A call started inside on_event (curl refuses add_handle there: it is
 * deferred) and one started inside on_done both run to the end. */
static struct rec chain_b, chain_c;

static void start_c(struct rec *r)
{
    (void)r;
    start(&chain_c, "started from on_done");
}

static void start_b(struct rec *r, const char *type)
{
    if (!strcmp(type, "content_block_delta") && !chain_b.call)
        start(&chain_b, "started from on_event");
    (void)r;
}

static void calls_started_from_callbacks(void **state)
{
    (void)state;
    const char *args[] = { "--ttft", "fixed:10", "--rate", "200", "--text", REPLY, NULL };
    struct h h;
    struct rec a;
    struct wp_err err = { 0 };

    spawn(args);
    h_init(&h, srv.port, 20);
    h_model(&h);
    rec_init(&a, &h);
    rec_init(&chain_b, &h);
    rec_init(&chain_c, &h);
    a.hook = start_b;
    chain_b.chain = start_c;
    /* A start that fails never calls back. */
    json_t *bad = json_array();
    assert_int_equal(sched_model_stream(h.m, bad, &cbs, &a, NULL, &err), WP_EINVAL_INPUT);
    json_decref(bad);
    start(&a, "first");
    h_run(&h);
    struct rec *all[] = { &a, &chain_b, &chain_c };
    for (int i = 0; i < 3; i++) {
        assert_int_equal(all[i]->done, 1);
        assert_int_equal(all[i]->status, 0);
        assert_string_equal(all[i]->text.data, REPLY);
        rec_free(all[i]);
    }
    h_done(&h);
    assert_int_equal(stat_int("streams"), 3);
}

static void tool_call_input_reassembles(void **state)
{
    (void)state;
    char *dir = th_tmpdir("model-tool");
    char path[512];
    const char *script =
        "{\"conversations\": [{\"match\": \"bash\", \"turns\": [{\"content\": ["
        "{\"type\": \"text\", \"text\": \"Let me look.\"},"
        "{\"type\": \"tool_use\", \"name\": \"bash\", \"input\": {\"command\": \"ls -la /tmp | "
        "head -n 20\", \"timeout_ms\": 5000, \"nested\": {\"a\": [1, 2, 3], \"s\": \"quote\\\" "
        "and \\u00e9\"}}}]}]}]}";
    snprintf(path, sizeof(path), "%s/script.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(script, f);
    fclose(f);
    const char *args[] = { "--script", path, "--ttft", "fixed:10", "--rate", "0", NULL };
    struct h h;
    struct rec r;

    spawn(args);
    h_init(&h, srv.port, 20);
    h_model(&h);
    rec_init(&r, &h);
    start(&r, "run bash please");
    h_run(&h);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.text.data, "Let me look.");
    assert_int_equal(r.tool_index, 1);
    assert_string_equal(r.stop_reason, "tool_use");
    json_t *got = json_loads(r.tool.data, JSON_REJECT_DUPLICATES, NULL);
    json_t *want = json_pack("{s:s, s:i, s:{s:[i,i,i], s:s}}", "command", "ls -la /tmp | head -n 20",
                             "timeout_ms", 5000, "nested", "a", 1, 2, 3, "s",
                             "quote\" and \xc3\xa9");
    assert_non_null(got);
    assert_true(json_equal(got, want));
    json_decref(got);
    json_decref(want);
    rec_free(&r);
    h_done(&h);
    th_rmtree(dir);
    free(dir);
}

static void overloaded_529_then_success(void **state)
{
    (void)state;
    const char *args[] = { "--http-fail-first", "1", "--retry-after", "-1", "--ttft", "fixed:10",
                           "--rate", "0", "--text", REPLY, NULL };
    struct h h;
    struct rec r;

    spawn(args);
    h_init(&h, srv.port, 20);
    h_model(&h);
    rec_init(&r, &h);
    start(&r, "hello");
    h_run(&h);
    assert_int_equal(r.retries, 1);
    assert_int_equal(r.rerr[0].http_status, 529);
    assert_string_equal(r.rerr[0].type, "overloaded_error");
    assert_true(r.rerr[0].retryable);
    assert_false(r.rerr[0].partial);
    assert_true(r.delay[0] >= 0 && r.delay[0] <= h.cfg.backoff_base_s); /* jitter within the cap */
    assert_int_equal(r.status, 0);
    assert_int_equal(r.timing.attempts, 2);
    assert_string_equal(r.text.data, REPLY);
    assert_string_equal(r.types[0], "message_start");
    rec_free(&r);
    h_done(&h);
}

static void rate_limit_429_retry_after_honoured(void **state)
{
    (void)state;
    const char *args[] = { "--http-fail-first", "1", "--fail-status", "429", "--retry-after", "1",
                           "--ttft", "fixed:10", "--rate", "0", NULL };
    struct h h;
    struct rec r;

    spawn(args);
    h_init(&h, srv.port, 20);
    h_model(&h);
    rec_init(&r, &h);
    start(&r, "hello");
    h_run(&h);
    assert_int_equal(r.retries, 1);
    assert_int_equal(r.rerr[0].http_status, 429);
    assert_string_equal(r.rerr[0].type, "rate_limit_error");
    assert_true(r.rerr[0].retry_after_s >= 1.0);
    assert_true(r.delay[0] >= 1.0);
    /* The second attempt started at least the header's second later. */
    assert_true(r.timing.started_ns >= r.retry_ns[0] + 1000000000ull);
    assert_int_equal(r.status, 0);
    rec_free(&r);
    h_done(&h);
}

static void bad_request_400_not_retried(void **state)
{
    (void)state;
    struct h h;
    struct rec r;
    struct wp_err err = { 0 };

    spawn(NULL);
    h_init(&h, srv.port, 20);
    h_model(&h);
    rec_init(&r, &h);
    json_t *b = json_pack("{s:s, s:[{s:s, s:s}]}", "model", "claude-test", "messages", "role",
                          "user", "content", "no max_tokens");
    assert_int_equal(sched_model_stream(h.m, b, &cbs, &r, &r.call, &err), 0);
    json_decref(b);
    h_run(&h);
    assert_int_equal(r.retries, 0);
    assert_int_equal(r.done, 1);
    assert_int_equal(r.status, WP_EPROTO);
    assert_int_equal(r.err.http_status, 400);
    assert_string_equal(r.err.type, "invalid_request_error");
    assert_true(strlen(r.err.message) > 0);
    assert_false(r.err.retryable);
    assert_false(r.err.partial);
    assert_int_equal(r.n, 0);
    rec_free(&r);
    h_done(&h);
}

static void connection_refused_retried_then_error(void **state)
{
    (void)state;
    struct h h;
    struct rec r;

    h_init(&h, th_free_port(), 20); /* nothing listens there */
    h.cfg.max_retries = 3;
    h_model(&h);
    rec_init(&r, &h);
    start(&r, "hello");
    h_run(&h);
    assert_int_equal(r.retries, 3);
    for (int i = 0; i < 3; i++) {
        assert_string_equal(r.rerr[i].type, "connection_error");
        assert_true(r.delay[i] <= h.cfg.backoff_max_s);
    }
    assert_int_equal(r.done, 1);
    assert_int_equal(r.status, -ECONNREFUSED);
    assert_string_equal(r.err.type, "connection_error");
    assert_true(r.err.retryable);
    assert_false(r.err.partial);
    assert_int_equal(r.timing.attempts, 4);
    rec_free(&r);
    h_done(&h);
}

static void stream_cut_after_events_is_partial(void **state)
{
    (void)state;
    const char *args[] = { "--drop-first", "1", "--fault-after", "4", "--ttft", "fixed:10",
                           "--rate", "0", "--text", REPLY, NULL };
    struct h h;
    struct rec r;

    spawn(args);
    h_init(&h, srv.port, 20);
    h_model(&h);
    rec_init(&r, &h);
    start(&r, "hello");
    h_run(&h);
    assert_true(r.n > 0);
    assert_int_equal(r.retries, 0);
    assert_int_equal(r.done, 1);
    assert_true(r.status < 0);
    assert_string_equal(r.err.type, "connection_error");
    assert_true(r.err.partial);
    rec_free(&r);
    h_done(&h);
    assert_int_equal(stat_int("streams"), 1);
}

/* An overloaded_error event: before any content it is retried (the raw
 * server below also sends one right after message_start); after content it
 * ends the call, partial. */
static void error_event_retried_only_before_content(void **state)
{
    (void)state;
    const char *args[] = { "--stream-error-first", "2", "--fault-after", "0", "--ttft",
                           "fixed:10", "--rate", "0", "--text", REPLY, NULL };
    struct h h;
    struct rec r;

    spawn(args);
    h_init(&h, srv.port, 20);
    h_model(&h);
    rec_init(&r, &h);
    start(&r, "hello");
    h_run(&h);
    assert_int_equal(r.retries, 2);
    assert_int_equal(r.rerr[0].http_status, 0);
    assert_string_equal(r.rerr[0].type, "overloaded_error");
    assert_int_equal(r.status, 0);
    assert_string_equal(r.types[0], "message_start");
    assert_string_equal(r.text.data, REPLY);
    rec_free(&r);
    h_done(&h);
    msrv_stop(&srv);

    const char *late[] = { "--stream-error-first", "1", "--fault-after", "2", "--ttft",
                           "fixed:10", "--rate", "0", "--text", REPLY, NULL };
    spawn(late);
    h_init(&h, srv.port, 20);
    h_model(&h);
    rec_init(&r, &h);
    start(&r, "hello");
    h_run(&h);
    assert_int_equal(r.retries, 0);
    assert_true(r.n >= 2);
    assert_int_equal(r.status, WP_EPROTO);
    assert_string_equal(r.err.type, "overloaded_error");
    assert_true(r.err.partial);
    rec_free(&r);
    h_done(&h);
}

static void cancel_mid_stream(void **state)
{
    (void)state;
    const char *args[] = { "--ttft", "fixed:10", "--rate", "50", "--text",
                           REPLY " " REPLY, NULL };
    struct h h;
    struct rec a, b;

    spawn(args);
    h_init(&h, srv.port, 30);
    h_model(&h);
    rec_init(&a, &h);
    rec_init(&b, &h);
    a.cancel_at = 4; /* message_start, block start, two deltas: cancelled inside on_event */
    start(&a, "hello");
    start(&b, "hello"); /* keeps the loop busy for a second after the cancel */
    h_run(&h);
    assert_true(a.cancelled);
    assert_int_equal(a.n, 4);
    assert_int_equal(a.after_cancel, 0);
    assert_int_equal(a.done, 0);
    assert_int_equal(b.done, 1);
    assert_int_equal(b.status, 0);
    assert_string_equal(b.text.data, REPLY " " REPLY);
    rec_free(&a);
    rec_free(&b);
    h_done(&h);
    long gone = 0;
    for (int i = 0; i < 200 && gone != 1; i++) {
        gone = stat_int("client_gone");
        if (gone != 1)
            usleep(10000);
    }
    assert_int_equal(gone, 1);
}

/* Cancelled while waiting to retry (from outside any callback). */
static void on_cancel_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct rec *r = w->data;
    (void)loop;
    (void)revents;
    assert_int_equal(r->retries, 1);
    r->cancelled = true;
    sched_model_cancel(r->call);
}

static void cancel_during_backoff(void **state)
{
    (void)state;
    const char *args[] = { "--http-fail-first", "1", "--retry-after", "2", NULL };
    struct h h;
    struct rec r;
    ev_timer t;

    spawn(args);
    h_init(&h, srv.port, 20);
    h_model(&h);
    rec_init(&r, &h);
    start(&r, "hello");
    ev_timer_init(&t, on_cancel_timer, 0.3, 0.);
    t.data = &r;
    ev_timer_start(h.loop, &t);
    uint64_t t0 = wp_now_ns();
    h_run(&h);
    /* ev_run returned with nothing left: no retry timer survived the cancel. */
    assert_true(wp_now_ns() - t0 >= 300000000ull);
    assert_int_equal(r.done, 0);
    assert_int_equal(r.after_cancel, 0);
    rec_free(&r);
    h_done(&h);
    assert_int_equal(stat_int("messages"), 1);
}

static void idle_timeout_on_stalled_stream(void **state)
{
    (void)state;
    /* The model server sends its headers at once and nothing for 3 s. */
    const char *args[] = { "--ttft", "fixed:3000", NULL };
    struct h h;
    struct rec r;

    spawn(args);
    h_init(&h, srv.port, 20);
    h.cfg.idle_timeout_s = 0.3;
    h.cfg.max_retries = 1;
    h_model(&h);
    rec_init(&r, &h);
    uint64_t t0 = wp_now_ns();
    start(&r, "hello");
    h_run(&h);
    assert_int_equal(r.retries, 1);
    assert_string_equal(r.rerr[0].type, "timeout_error");
    assert_int_equal(r.done, 1);
    assert_int_equal(r.status, WP_ETIMEDOUT);
    assert_string_equal(r.err.type, "timeout_error");
    assert_non_null(strstr(r.err.message, "no data"));
    assert_false(r.err.partial);
    assert_true(r.timing.headers_ns > 0);
    assert_true(wp_now_ns() - t0 >= 600000000ull); /* two attempts of 0.3 s */
    rec_free(&r);
    h_done(&h);
    long gone = 0;
    for (int i = 0; i < 200 && gone != 2; i++) {
        gone = stat_int("client_gone");
        if (gone != 2)
            usleep(10000);
    }
    assert_int_equal(gone, 2); /* the timed-out connections were closed */
}

static struct rec many[50];

static void fifty_concurrent_streams(void **state)
{
    (void)state;
    const char *args[] = { "--ttft", "uniform:50:200", "--rate", "200", "--text", REPLY, NULL };
    struct h h;

    spawn(args);
    h_init(&h, srv.port, 60);
    h_model(&h);
    for (int i = 0; i < 50; i++) {
        rec_init(&many[i], &h);
        start(&many[i], "hello");
    }
    h_run(&h);
    for (int i = 0; i < 50; i++) {
        assert_int_equal(many[i].done, 1);
        assert_int_equal(many[i].status, 0);
        assert_string_equal(many[i].text.data, REPLY);
        assert_string_equal(many[i].types[many[i].n - 1], "message_stop");
        rec_free(&many[i]);
    }
    h_done(&h);
    assert_int_equal(stat_int("streams"), 50);
}

/* ---- a raw socket server for answers the model server does not give ------- */

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

/* ---- config ------------------------------------------------------------------ */

static void config_flags_and_env(void **state)
{
    (void)state;
    struct sched_config cfg;
    struct wp_err err = { 0 };
    const char *ok[] = { "x", "--model-url", "http://127.0.0.1:8765", "--model-timeout", "7",
                   "--model-connect-timeout=2", "--model-max-retries", "1",
                   "--model-backoff", "0.25", "--model-backoff-max", "3", NULL };

    setenv("ANTHROPIC_API_KEY", "sk-ant-test", 1);
    sched_config_defaults(&cfg);
    assert_string_equal(cfg.model.base_url, "https://api.anthropic.com");
    assert_int_equal(cfg.model.max_retries, 4);
    assert_int_equal(sched_config_parse_args(&cfg, 12, (char **)ok, &err), 0);
    assert_string_equal(cfg.model.base_url, "http://127.0.0.1:8765");
    assert_string_equal(cfg.model.api_key, "sk-ant-test");
    assert_true(cfg.model.header_timeout_s == 7 && cfg.model.idle_timeout_s == 7);
    assert_true(cfg.model.connect_timeout_s == 2);
    assert_int_equal(cfg.model.max_retries, 1);
    assert_true(cfg.model.backoff_base_s == 0.25 && cfg.model.backoff_max_s == 3);

    const char *bad_url[] = { "x", "--model-url", "ftp://x", NULL };
    const char *zero[] = { "x", "--model-idle-timeout", "0", NULL };
    const char *unknown[] = { "x", "--model-key", "k", NULL };
    sched_config_defaults(&cfg);
    assert_int_equal(sched_config_parse_args(&cfg, 3, (char **)bad_url, &err), WP_ECONFIG);
    assert_int_equal(sched_config_parse_args(&cfg, 3, (char **)zero, &err), WP_ECONFIG);
    assert_int_equal(sched_config_parse_args(&cfg, 3, (char **)unknown, &err), WP_ECONFIG);
    unsetenv("ANTHROPIC_API_KEY");

    /* The client refuses what it cannot send. */
    struct sched_model *m = NULL;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    sched_config_defaults(&cfg);
    snprintf(cfg.model.api_key, sizeof(cfg.model.api_key), "k\r\nx-injected: 1");
    assert_int_equal(sched_model_new(loop, &cfg.model, &m, &err), WP_ECONFIG);
    assert_null(m);
    cfg.model.api_key[0] = '\0';
    assert_int_equal(sched_model_new(loop, &cfg.model, &m, &err), 0);
    sched_model_free(m);
    ev_loop_destroy(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(config_flags_and_env),
        cmocka_unit_test_teardown(text_stream_in_order, teardown),
        cmocka_unit_test_teardown(calls_started_from_callbacks, teardown),
        cmocka_unit_test_teardown(tool_call_input_reassembles, teardown),
        cmocka_unit_test_teardown(overloaded_529_then_success, teardown),
        cmocka_unit_test_teardown(rate_limit_429_retry_after_honoured, teardown),
        cmocka_unit_test_teardown(bad_request_400_not_retried, teardown),
        cmocka_unit_test_teardown(connection_refused_retried_then_error, teardown),
        cmocka_unit_test_teardown(stream_cut_after_events_is_partial, teardown),
        cmocka_unit_test_teardown(error_event_retried_only_before_content, teardown),
        cmocka_unit_test_teardown(cancel_mid_stream, teardown),
        cmocka_unit_test_teardown(cancel_during_backoff, teardown),
        cmocka_unit_test_teardown(idle_timeout_on_stalled_stream, teardown),
        cmocka_unit_test_teardown(fifty_concurrent_streams, teardown),
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
