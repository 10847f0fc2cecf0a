/* model.h - the model client (prefix sched_model_): Anthropic's Messages
 * API, streaming, on libcurl's multi interface driven by the scheduler's
 * libev loop. Used by the brain (brain.c); private to scheduler/.
 *
 * Contract (as every asynchronous start in warmpool): a start function
 * that returns < 0 never calls back; otherwise on_done runs exactly once,
 * unless the call is cancelled first (sched_model_cancel: no callback
 * after it returns). Callbacks may start or cancel other calls and may
 * cancel their own call (then no further callback for it). */
#ifndef SCHED_MODEL_H
#define SCHED_MODEL_H

#include <ev.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"

struct sched_model_config {
    char base_url[256];          /* "https://api.anthropic.com" or a local model server */
    char api_key[256];           /* sent as x-api-key; never logged */
    char version[32];            /* anthropic-version header, "2023-06-01" */
    double connect_timeout_s;    /* TCP/TLS connect (10) */
    double header_timeout_s;     /* attempt start (connect included) -> response headers (60) */
    double idle_timeout_s;       /* no byte for this long mid-stream (the API pings) (120) */
    int max_retries;             /* retries of one call (4); 0 = none */
    double backoff_base_s;       /* first backoff (0.5), doubling, full jitter */
    double backoff_max_s;        /* cap (8); a retry-after header wins, up to 60 s */
};
void sched_model_config_defaults(struct sched_model_config *cfg);

struct sched_model_error {
    int http_status;   /* 0: transport error or an error event inside a 200 stream */
    char type[64];     /* the API's error.type (overloaded_error, rate_limit_error,
                        * api_error, invalid_request_error, authentication_error,
                        * permission_error, not_found_error, request_too_large, ...)
                        * or ours: connection_error, timeout_error, stream_error */
    char message[256];
    bool retryable;    /* 408, 409, 429, 5xx incl. 529, connection errors, timeouts, and
                        * an overloaded_error/api_error event; x-should-retry wins */
    bool partial;      /* it failed after events were delivered (never retried here) */
    double retry_after_s; /* from retry-after(-ms), or -1 */
};

struct sched_model_cbs {
    /* One SSE event of the stream, in order: message_start,
     * content_block_start, content_block_delta, content_block_stop,
     * message_delta, message_stop (ping is not passed; an `error` event
     * ends the call through on_done). data is the event's JSON, borrowed.
     * message_start is passed just before the event after it, so an
     * error right after it still counts as "nothing delivered" (retried).
     * Event types not listed here are passed through as they come. */
    void (*on_event)(void *ctx, const char *type, json_t *data);
    /* A retry was scheduled after delay_s (only before any event was
     * delivered). May be NULL. */
    void (*on_retry)(void *ctx, int attempt, const struct sched_model_error *e, double delay_s);
    /* Exactly once: status 0 after message_stop (e NULL), else < 0 with e
     * filled (borrowed for the callback): WP_EPROTO (an API error, HTTP or
     * `error` event, or a bad stream), WP_ETOOBIG (an SSE event over
     * 1 MiB), WP_ETIMEDOUT, -ECONNREFUSED / -EHOSTUNREACH / -ECONNRESET
     * (connection errors), -ENOMEM. e->type is the one to branch on. */
    void (*on_done)(void *ctx, int status, const struct sched_model_error *e);
};

struct sched_model;      /* one curl multi handle and its libev watchers */
struct sched_model_call; /* one request and its retries */

/* Caller owns *out; free after every call finished or was cancelled (or
 * free cancels them: no callbacks). cfg is copied. sched_model_free must
 * not be called from inside one of this client's callbacks. */
int sched_model_new(struct ev_loop *loop, const struct sched_model_config *cfg,
                    struct sched_model **out, struct wp_err *err);
void sched_model_free(struct sched_model *m);

/* POST {base_url}/v1/messages with body (borrowed; serialized at once,
 * "stream": true added). *out (may be NULL) identifies the call until its
 * on_done or cancel. */
int sched_model_stream(struct sched_model *m, json_t *body, const struct sched_model_cbs *cbs,
                       void *ctx, struct sched_model_call **out, struct wp_err *err);
void sched_model_cancel(struct sched_model_call *call);

/* Timings of the current attempt (monotonic ns, 0 when not reached):
 * request started, response headers, first event delivered. */
struct sched_model_timing {
    uint64_t started_ns, headers_ns, first_event_ns;
    int attempts;
    char request_id[64]; /* the response's request-id header */
};
void sched_model_timing(const struct sched_model_call *call, struct sched_model_timing *t);

#endif
