/* test_model_client.c - the model client (scheduler/model.c) against a
 * real wp-modelserver on a free port: streamed text and tool input in
 * order, 529/429 retries and retry-after, 400 not retried, connection
 * refused, a stream cut after events (partial), error events, cancel
 * (inside on_event and during a backoff), idle timeout, 50 concurrent
 * streams, and the --model-* flags. Harness: model_harness.h. Timing
 * checks are lower bounds and orderings, never upper bounds. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "integration/model_harness.h"
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
/* Starts wp-modelserver with args, then runs one call ("hello") on a fresh
 * client to its end; tune (may be NULL) adjusts the client's config. */
static void one_call(const char *const *args, void (*tune)(struct sched_model_config *),
                     struct h *h, struct rec *r)
{
    spawn(args);
    h_init(h, srv.port, 20);
    if (tune)
        tune(&h->cfg);
    h_model(h);
    rec_init(r, h);
    start(r, "hello");
    h_run(h);
}

/* ---- streams against wp-modelserver ---------------------------------------- */

#define REPLY "Hello there, this is a streamed reply from the stand-in."

static void text_stream_in_order(void **state)
{
    (void)state;
    const char *args[] = { "--ttft", "fixed:20", "--rate", "0", "--text", REPLY, NULL };
    struct h h;
    struct rec r;

    one_call(args, NULL, &h, &r);

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

    one_call(args, NULL, &h, &r);
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

    one_call(args, NULL, &h, &r);
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

    one_call(args, NULL, &h, &r);
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

    one_call(args, NULL, &h, &r);
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
    one_call(late, NULL, &h, &r);
    assert_int_equal(r.retries, 0);
    assert_true(r.n >= 2);
    assert_int_equal(r.status, WP_EPROTO);
    assert_string_equal(r.err.type, "overloaded_error");
    assert_true(r.err.partial);
    rec_free(&r);
    h_done(&h);
}

static void on_cancel_now(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct rec *r = w->data;
    (void)loop;
    (void)revents;
    assert_true(r->n > 0 && !r->done); /* mid-stream */
    r->cancelled = true;
    sched_model_cancel(r->call);
}

static void wait_client_gone(long want)
{
    long gone = 0;
    for (int i = 0; i < 200 && gone != want; i++) {
        gone = stat_int("client_gone");
        if (gone != want)
            usleep(10000);
    }
    assert_int_equal(gone, want);
}

/* a is cancelled inside its own on_event (inside curl), c from a timer
 * while it streams; b runs on meanwhile, so the loop would show any late
 * callback of a or c. */
static void cancel_mid_stream(void **state)
{
    (void)state;
    const char *args[] = { "--ttft", "fixed:10", "--rate", "50", "--text",
                           REPLY " " REPLY, NULL };
    struct h h;
    struct rec a, b, c;
    ev_timer t;

    spawn(args);
    h_init(&h, srv.port, 30);
    h_model(&h);
    rec_init(&a, &h);
    rec_init(&b, &h);
    rec_init(&c, &h);
    a.cancel_at = 4; /* message_start, block start, two deltas */
    start(&a, "hello");
    start(&b, "hello");
    start(&c, "hello");
    ev_timer_init(&t, on_cancel_now, 0.2, 0.);
    t.data = &c;
    ev_timer_start(h.loop, &t);
    h_run(&h);
    assert_true(a.cancelled && c.cancelled);
    assert_int_equal(a.n, 4);
    assert_int_equal(a.after_cancel + c.after_cancel, 0);
    assert_int_equal(a.done + c.done, 0);
    assert_int_equal(b.done, 1);
    assert_int_equal(b.status, 0);
    assert_string_equal(b.text.data, REPLY " " REPLY);
    assert_true(c.n > 0 && c.n < b.n);
    rec_free(&a);
    rec_free(&b);
    rec_free(&c);
    h_done(&h);
    wait_client_gone(2);
}

/* sched_model_free with calls streaming and one waiting to retry: no
 * callback, nothing left on the loop, nothing leaked (ASan). */
static void on_break(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

static void free_with_calls_in_flight(void **state)
{
    (void)state;
    const char *args[] = { "--http-fail-first", "1", "--retry-after", "5", "--ttft", "fixed:10",
                           "--rate", "20", "--text", REPLY, NULL };
    struct h h;
    struct rec r[3];
    ev_timer t;

    spawn(args);
    h_init(&h, srv.port, 20);
    h_model(&h);
    for (int i = 0; i < 3; i++) {
        rec_init(&r[i], &h);
        start(&r[i], "hello");
    }
    ev_timer_init(&t, on_break, 0.3, 0.);
    ev_timer_start(h.loop, &t);
    ev_run(h.loop, 0);
    assert_int_equal(r[0].retries + r[1].retries + r[2].retries, 1);
    sched_model_free(h.m);
    h.m = NULL;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].done, 0);
        rec_free(&r[i]);
    }
    h_run(&h); /* returns at once: the client left no watcher */
    h_done(&h);
    wait_client_gone(2);
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

static void short_idle(struct sched_model_config *cfg)
{
    cfg->idle_timeout_s = 0.3;
    cfg->max_retries = 1;
}

static void idle_timeout_on_stalled_stream(void **state)
{
    (void)state;
    /* The model server sends its headers at once and nothing for 3 s. */
    const char *args[] = { "--ttft", "fixed:3000", NULL };
    struct h h;
    struct rec r;

    uint64_t t0 = wp_now_ns();
    one_call(args, short_idle, &h, &r);
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
    wait_client_gone(2); /* the timed-out connections were closed */
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
        cmocka_unit_test_teardown(free_with_calls_in_flight, teardown),
        cmocka_unit_test_teardown(idle_timeout_on_stalled_stream, teardown),
        cmocka_unit_test_teardown(fifty_concurrent_streams, teardown),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
