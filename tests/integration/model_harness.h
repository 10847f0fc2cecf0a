/* model_harness.h - drives the model client (scheduler/model.c) from
 * integration tests: a libev loop per test with an unref'd guard timer
 * (ev_run returns by itself once every call ended and the client left no
 * watcher behind; the guard fires only if something hangs or leaks), and
 * callbacks that record every event, retry and the end of a call.
 * Header-only (static inline): each integration test file is one binary. */
#ifndef MODEL_HARNESS_H
#define MODEL_HARNESS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "base/buf.h"
#include "base/timeutil.h"
#include "lib/testlib.h"
#include "scheduler/model.h"

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

static inline void on_guard(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct h *h = w->data;
    (void)revents;
    h->hung = true;
    ev_break(loop, EVBREAK_ALL);
}

static inline void h_init(struct h *h, int port, double guard_s)
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

static inline void h_model(struct h *h)
{
    struct wp_err err = { 0 };
    assert_int_equal(sched_model_new(h->loop, &h->cfg, &h->m, &err), 0);
}

/* Runs until no watcher is left; fails if that took longer than the guard. */
static inline void h_run(struct h *h)
{
    ev_run(h->loop, 0);
    if (h->hung)
        fail_msg("loop still busy after the guard time: a call hung or a watcher leaked");
}

static inline void h_done(struct h *h)
{
    sched_model_free(h->m);
    ev_ref(h->loop);
    ev_timer_stop(h->loop, &h->guard);
    ev_loop_destroy(h->loop);
}

static inline void rec_init(struct rec *r, struct h *h)
{
    memset(r, 0, sizeof(*r));
    r->h = h;
    r->tool_index = -1;
    wp_buf_init(&r->text, 1 << 20);
    wp_buf_init(&r->tool, 1 << 20);
}

static inline void rec_free(struct rec *r)
{
    wp_buf_free(&r->text);
    wp_buf_free(&r->tool);
}

static inline void on_event(void *ctx, const char *type, json_t *data)
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

static inline void on_retry(void *ctx, int attempt, const struct sched_model_error *e, double delay_s)
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

static inline void on_done(void *ctx, int status, const struct sched_model_error *e)
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

static inline json_t *msg_body(const char *text)
{
    return json_pack("{s:s, s:i, s:[{s:s, s:s}]}", "model", "claude-test", "max_tokens", 1024,
                     "messages", "role", "user", "content", text);
}

static inline void start(struct rec *r, const char *text)
{
    struct wp_err err = { 0 };
    json_t *b = msg_body(text);

    assert_int_equal(sched_model_stream(r->h->m, b, &cbs, r, &r->call, &err), 0);
    assert_null(json_object_get(b, "stream")); /* the caller's body is not touched */
    json_decref(b);
}

#endif
