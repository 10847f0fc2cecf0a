/* model.c - the model client: POST /v1/messages with "stream": true on
 * libcurl's multi interface, driven by the caller's libev loop (style.md
 * habit 5, curl's multi-uv.c in libev terms), with retries before the
 * first event and header/idle deadlines of our own.
 *
 * Where user callbacks run: on_event from inside curl's write callback
 * (so within curl_multi_socket_action); on_retry and on_done never inside
 * curl (from the loop's timers or after curl_multi_socket_action returned).
 * libcurl refuses curl_multi_add/remove_handle from its callbacks, so a
 * call started inside on_event starts from a zero timer, and a call
 * cancelled inside curl is only marked and taken out ("reaped") as soon as
 * curl_multi_socket_action returns. */
#define WP_LOG_COMPONENT "model"
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/curlev.h"
#include "base/log.h"
#include "base/sse.h"
#include "base/timeutil.h"
#include "scheduler/model.h"

#define MODEL_MAX_EVENT (1u << 20)     /* one SSE event; beyond: stream_error */
#define MODEL_MAX_ERRBODY (64u << 10)  /* error bodies are cut here */
#define MODEL_RETRY_AFTER_MAX_S 60.0

struct sched_model {
    struct ev_loop *loop;
    struct sched_model_config cfg;
    struct wp_curlev ce;         /* the multi handle and its watchers */
    struct curl_slist *headers;  /* shared by every request; holds the key */
    char url[300];
    struct sched_model_call *calls; /* every call not yet freed */
    int in_cb;                   /* inside a user callback */
    bool reap;                   /* a call was cancelled inside curl */
    uint64_t rng;
};

struct sched_model_call {
    struct sched_model *m;
    struct sched_model_call *prev, *next;
    struct sched_model_cbs cbs;
    void *ctx;
    char *body;                  /* serialized once, sent by every attempt */
    size_t body_len;
    ev_timer wait;               /* backoff, or the start deferred out of curl */
    ev_timer watchdog;           /* header and idle deadlines of the attempt */
    int attempts;                /* attempts started */
    int delivered;               /* events handed to on_event (all attempts) */
    int busy;                    /* our on_retry/on_done on the stack */
    bool cancelled, done;
    /* The running attempt. */
    CURL *easy;
    struct wp_sse_parser *sse;
    json_t *held;                /* message_start, held back (see on_sse) */
    bool headers_done, got_stop, failed;
    long status;
    int should_retry;            /* x-should-retry: -1 absent, 0, 1 */
    double retry_after_s, retry_after_ms_s; /* -1: absent */
    double t_start, last_io;     /* ev_now() */
    struct wp_buf errbody;
    struct sched_model_error err; /* the failure recorded inside curl */
    int err_code;
    char errbuf[CURL_ERROR_SIZE];
    struct sched_model_timing timing;
};

void sched_model_config_defaults(struct sched_model_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->base_url, sizeof(cfg->base_url), "https://api.anthropic.com");
    snprintf(cfg->version, sizeof(cfg->version), "2023-06-01");
    cfg->connect_timeout_s = 10;
    cfg->header_timeout_s = 60;
    cfg->idle_timeout_s = 120;
    cfg->max_retries = 4;
    cfg->backoff_base_s = 0.5;
    cfg->backoff_max_s = 8;
}

/* ---- small helpers ---------------------------------------------------- */

static double rand01(struct sched_model *m)
{
    /* xorshift64*: jitter only, not security. */
    m->rng ^= m->rng >> 12;
    m->rng ^= m->rng << 25;
    m->rng ^= m->rng >> 27;
    return (double)((m->rng * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

static void set_error(struct sched_model_error *e, int http_status, const char *type,
                      bool retryable, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void set_error(struct sched_model_error *e, int http_status, const char *type,
                      bool retryable, const char *fmt, ...)
{
    va_list ap;

    memset(e, 0, sizeof(*e));
    e->http_status = http_status;
    snprintf(e->type, sizeof(e->type), "%s", type);
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    e->retryable = retryable;
    e->retry_after_s = -1;
}

/* Text from the network goes into messages and logs: no control bytes. */
static void sanitize(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = ' ';
}

static const char *type_for_status(long status)
{
    switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 402: return "billing_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 529: return "overloaded_error";
    default: return "api_error";
    }
}

/* retry-after: seconds (a number) or an HTTP date. -1 when unusable. */
static double parse_retry_after(const char *v, bool millis)
{
    char *end;
    double d = strtod(v, &end);

    if (end != v && *end == '\0')
        return d >= 0 && isfinite(d) ? (millis ? d / 1000.0 : d) : -1;
    if (millis)
        return -1;
    time_t t = curl_getdate(v, NULL);
    if (t == (time_t)-1)
        return -1;
    d = difftime(t, time(NULL));
    return d > 0 ? d : 0;
}

/* ---- call lifecycle ---------------------------------------------------- */

static void call_unlink(struct sched_model_call *c)
{
    struct sched_model *m = c->m;

    if (c->prev)
        c->prev->next = c->next;
    else
        m->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

/* Ends the running attempt. Never inside curl (remove_handle). */
static void detach(struct sched_model_call *c)
{
    struct sched_model *m = c->m;

    ev_timer_stop(m->loop, &c->watchdog);
    if (c->easy) {
        curl_multi_remove_handle(m->ce.multi, c->easy);
        curl_easy_cleanup(c->easy);
        c->easy = NULL;
    }
    wp_sse_parser_free(c->sse);
    c->sse = NULL;
    json_decref(c->held);
    c->held = NULL;
    wp_buf_free(&c->errbody);
}

/* Frees the call once nothing refers to it any more. */
static void maybe_free(struct sched_model_call *c)
{
    if (c->easy || c->busy > 0 || !(c->done || c->cancelled))
        return;
    ev_timer_stop(c->m->loop, &c->wait);
    ev_timer_stop(c->m->loop, &c->watchdog);
    call_unlink(c);
    free(c->body);
    free(c);
}

static void finish(struct sched_model_call *c, int status, const struct sched_model_error *e)
{
    struct sched_model *m = c->m;

    c->done = true;
    ev_timer_stop(m->loop, &c->wait);
    if (status < 0)
        log_info("call failed http=%d type=%s partial=%d attempts=%d request_id=%s",
                 e->http_status, e->type, e->partial, c->attempts, c->timing.request_id);
    c->busy++;
    m->in_cb++;
    c->cbs.on_done(c->ctx, status, status < 0 ? e : NULL);
    m->in_cb--;
    c->busy--;
    maybe_free(c);
}

static int start_attempt(struct sched_model_call *c, struct wp_err *err);

/* An attempt failed (e filled): retry, or report. Not inside curl. */
static void attempt_failed(struct sched_model_call *c, int code, struct sched_model_error *e)
{
    struct sched_model *m = c->m;
    const struct sched_model_config *cfg = &m->cfg;

    e->partial = c->delivered > 0;
    if (e->partial || !e->retryable || c->attempts > cfg->max_retries) {
        finish(c, code, e);
        return;
    }
    double delay;
    if (e->retry_after_s >= 0) {
        delay = e->retry_after_s < MODEL_RETRY_AFTER_MAX_S ? e->retry_after_s
                                                           : MODEL_RETRY_AFTER_MAX_S;
    } else {
        /* Full jitter (AWS architecture blog): uniform in [0, cap]. */
        double cap = cfg->backoff_base_s * ldexp(1.0, c->attempts - 1);
        if (cap > cfg->backoff_max_s)
            cap = cfg->backoff_max_s;
        delay = cap * rand01(m);
    }
    log_info("retry attempt=%d type=%s http=%d delay_ms=%.0f request_id=%s",
             c->attempts, e->type, e->http_status, delay * 1000, c->timing.request_id);
    if (c->cbs.on_retry) {
        c->busy++;
        m->in_cb++;
        c->cbs.on_retry(c->ctx, c->attempts, e, delay);
        m->in_cb--;
        c->busy--;
        if (c->cancelled) {
            maybe_free(c);
            return;
        }
    }
    /* Armed after on_retry, from the current time (not the loop's cached
     * one), so the next attempt starts at least delay after on_retry. */
    ev_now_update(m->loop);
    ev_timer_set(&c->wait, delay, 0.);
    ev_timer_start(m->loop, &c->wait);
}

static void on_wait(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct sched_model_call *c = w->data;
    struct wp_err err = { 0 };

    (void)loop;
    (void)revents;
    if (start_attempt(c, &err) < 0) {
        struct sched_model_error e;
        set_error(&e, 0, "connection_error", false, "%s", err.msg);
        finish(c, err.code, &e);
    }
}

/* ---- the response ------------------------------------------------------ */

static void fail_attempt(struct sched_model_call *c, int code, const struct sched_model_error *e)
{
    if (c->failed)
        return;
    c->failed = true;
    c->err = *e;
    c->err_code = code;
}

static int deliver(struct sched_model_call *c, const char *type, json_t *data)
{
    struct sched_model *m = c->m;

    if (!c->timing.first_event_ns)
        c->timing.first_event_ns = wp_now_ns();
    c->delivered++;
    m->in_cb++;
    c->cbs.on_event(c->ctx, type, data);
    m->in_cb--;
    return c->cancelled ? -1 : 0;
}

/* One SSE event (inside curl). message_start is held until the next event
 * arrives, so an overloaded_error right after it (before any content) still
 * counts as "nothing delivered" and is retried. */
static int on_sse(void *ctx, const char *event, const char *data, size_t len)
{
    struct sched_model_call *c = ctx;
    struct sched_model_error e;
    json_error_t je;
    int rc = 0;

    if (c->cancelled || c->failed)
        return -1;
    if (!strcmp(event, "ping") || c->got_stop)
        return 0;
    json_t *j = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
    if (!j || !json_is_object(j)) {
        set_error(&e, 0, "stream_error", false, "invalid JSON in %.32s event: %s", event,
                  j ? "not an object" : je.text);
        sanitize(e.message);
        json_decref(j);
        fail_attempt(c, WP_EPROTO, &e);
        return -1;
    }
    if (!strcmp(event, "error")) {
        json_t *eo = json_object_get(j, "error");
        const char *type = json_string_value(json_object_get(eo, "type"));
        const char *msg = json_string_value(json_object_get(eo, "message"));
        if (!type)
            type = "api_error";
        set_error(&e, 0, type, !strcmp(type, "overloaded_error") || !strcmp(type, "api_error"),
                  "%s", msg ? msg : "error event");
        sanitize(e.type);
        sanitize(e.message);
        json_decref(j);
        fail_attempt(c, WP_EPROTO, &e);
        return -1;
    }
    if (!strcmp(event, "message_start") && c->delivered == 0 && !c->held) {
        c->held = j;
        return 0;
    }
    if (c->held) {
        json_t *h = c->held;
        c->held = NULL;
        rc = deliver(c, "message_start", h);
        json_decref(h);
    }
    if (rc == 0) {
        if (!strcmp(event, "message_stop"))
            c->got_stop = true;
        rc = deliver(c, event, j);
    }
    json_decref(j);
    return rc;
}

static size_t on_write(char *p, size_t sz, size_t n, void *ud)
{
    struct sched_model_call *c = ud;
    size_t len = sz * n;

    c->last_io = ev_now(c->m->loop);
    if (c->cancelled || c->failed)
        return len ? 0 : 1; /* anything but len aborts the transfer */
    if (c->status < 200 || c->status > 299) {
        /* An error body: keep the first MODEL_MAX_ERRBODY bytes. */
        size_t room = c->errbody.max - c->errbody.len;
        if (wp_buf_append(&c->errbody, p, len < room ? len : room) < 0)
            return 0;
        return len;
    }
    int rc = wp_sse_parser_feed(c->sse, p, len);
    if (rc < 0 && (c->cancelled || c->failed))
        return 0;
    if (rc < 0) {
        struct sched_model_error e;
        if (rc == WP_ETOOBIG)
            set_error(&e, 0, "stream_error", false, "SSE event over %u bytes", MODEL_MAX_EVENT);
        else
            set_error(&e, 0, "stream_error", false, "SSE parse: %s", wp_strerror(rc));
        fail_attempt(c, rc == WP_ETOOBIG ? WP_ETOOBIG : WP_EPROTO, &e);
        return 0;
    }
    return len;
}

static bool hname(const char *p, size_t n, const char *name, const char **val, size_t *vlen)
{
    size_t k = strlen(name);

    if (n <= k || p[k] != ':' || strncasecmp(p, name, k) != 0)
        return false;
    p += k + 1;
    n -= k + 1;
    while (n > 0 && (*p == ' ' || *p == '\t'))
        p++, n--;
    while (n > 0 && (p[n - 1] == '\r' || p[n - 1] == '\n' || p[n - 1] == ' '))
        n--;
    *val = p;
    *vlen = n;
    return true;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    struct sched_model_call *c = ud;
    size_t len = sz * n, vlen;
    const char *v;
    char tmp[128];

    c->last_io = ev_now(c->m->loop);
    if (c->cancelled)
        return 0;
    if (len >= 5 && !strncmp(p, "HTTP/", 5)) {
        /* A status line: a new response (after a 1xx, the final one). */
        c->should_retry = -1;
        c->retry_after_s = c->retry_after_ms_s = -1;
        c->timing.request_id[0] = '\0';
        return len;
    }
    if (len <= 2 && (p[0] == '\r' || p[0] == '\n')) {
        long code = 0;
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code >= 200) {
            c->status = code;
            c->headers_done = true;
            c->timing.headers_ns = wp_now_ns();
            /* From now on the watchdog is the idle deadline. */
            ev_timer_stop(c->m->loop, &c->watchdog);
            ev_timer_set(&c->watchdog, c->m->cfg.idle_timeout_s, 0.);
            ev_timer_start(c->m->loop, &c->watchdog);
        }
        return len;
    }
    if (hname(p, len, "request-id", &v, &vlen)) {
        snprintf(c->timing.request_id, sizeof(c->timing.request_id), "%.*s", (int)vlen, v);
        sanitize(c->timing.request_id);
    } else if (hname(p, len, "x-should-retry", &v, &vlen)) {
        if (vlen == 4 && !strncasecmp(v, "true", 4))
            c->should_retry = 1;
        else if (vlen == 5 && !strncasecmp(v, "false", 5))
            c->should_retry = 0;
    } else if (hname(p, len, "retry-after-ms", &v, &vlen)) {
        snprintf(tmp, sizeof(tmp), "%.*s", (int)vlen, v);
        c->retry_after_ms_s = parse_retry_after(tmp, true);
    } else if (hname(p, len, "retry-after", &v, &vlen)) {
        snprintf(tmp, sizeof(tmp), "%.*s", (int)vlen, v);
        c->retry_after_s = parse_retry_after(tmp, false);
    }
    return len;
}

/* A non-2xx answer: the API's {"type":"error","error":{"type","message"}}. */
static void http_error(struct sched_model_call *c, struct sched_model_error *e)
{
    long st = c->status;
    json_t *j = json_loadb(c->errbody.data ? c->errbody.data : "", c->errbody.len, 0, NULL);
    json_t *eo = json_object_get(j, "error");
    const char *type = json_string_value(json_object_get(eo, "type"));
    const char *msg = json_string_value(json_object_get(eo, "message"));
    bool retry = st == 408 || st == 409 || st == 429 || st >= 500;

    if (c->should_retry >= 0)
        retry = c->should_retry == 1;
    if (msg)
        set_error(e, (int)st, type ? type : type_for_status(st), retry, "%s", msg);
    else
        set_error(e, (int)st, type ? type : type_for_status(st), retry, "HTTP %ld: %.200s", st,
                  c->errbody.data ? c->errbody.data : "");
    sanitize(e->type);
    sanitize(e->message);
    e->retry_after_s = c->retry_after_ms_s >= 0 ? c->retry_after_ms_s : c->retry_after_s;
    json_decref(j);
}

/* curl finished the attempt (CURLMSG_DONE). Not inside curl. */
static void attempt_done(struct sched_model_call *c, CURLcode res)
{
    struct sched_model_error e;
    int code = 0;

    if (c->cancelled) {
        detach(c);
        maybe_free(c);
        return;
    }
    long conns = 0;
    curl_easy_getinfo(c->easy, CURLINFO_NUM_CONNECTS, &conns);
    log_debug("attempt done http=%ld curl=%d new_connections=%ld ms=%.1f request_id=%s", c->status,
              (int)res, conns, (double)(wp_now_ns() - c->timing.started_ns) / 1e6,
              c->timing.request_id);
    if (c->failed) {
        e = c->err;
        code = c->err_code;
    } else if (c->got_stop) {
        code = 0; /* whatever happened after message_stop does not matter */
    } else if (c->headers_done && (c->status < 200 || c->status > 299)) {
        http_error(c, &e);
        code = WP_EPROTO;
    } else if (res == CURLE_OK) {
        set_error(&e, (int)c->status, "stream_error", false, "stream ended without message_stop");
        code = WP_EPROTO;
    } else if (res == CURLE_OPERATION_TIMEDOUT) {
        set_error(&e, 0, "timeout_error", true, "%s",
                  c->errbuf[0] ? c->errbuf : curl_easy_strerror(res));
        code = WP_ETIMEDOUT;
    } else {
        set_error(&e, 0, "connection_error", true, "%s",
                  c->errbuf[0] ? c->errbuf : curl_easy_strerror(res));
        code = res == CURLE_COULDNT_CONNECT        ? -ECONNREFUSED
               : res == CURLE_COULDNT_RESOLVE_HOST ? -EHOSTUNREACH
                                                   : -ECONNRESET;
    }
    detach(c);
    if (code == 0)
        finish(c, 0, NULL);
    else
        attempt_failed(c, code, &e);
}

static void on_watchdog(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct sched_model_call *c = w->data;
    const struct sched_model_config *cfg = &c->m->cfg;
    struct sched_model_error e;
    double now = ev_now(loop);
    double deadline = c->headers_done ? c->last_io + cfg->idle_timeout_s
                                      : c->t_start + cfg->header_timeout_s;

    (void)revents;
    if (deadline > now) {
        /* Bytes came since the timer was set: sleep until the new deadline
         * (libev's recommended idle-timeout pattern, no re-arm per byte). */
        ev_timer_set(w, deadline - now, 0.);
        ev_timer_start(loop, w);
        return;
    }
    if (c->headers_done)
        set_error(&e, 0, "timeout_error", true, "no data for %.1f s", cfg->idle_timeout_s);
    else
        set_error(&e, 0, "timeout_error", true, "no response headers after %.1f s",
                  cfg->header_timeout_s);
    detach(c);
    attempt_failed(c, WP_ETIMEDOUT, &e);
}

/* ---- curl <-> libev ------------------------------------------------------ */

static void check_done(struct sched_model *m)
{
    void *priv;
    CURLcode res;
    while (wp_curlev_next_done(&m->ce, &priv, &res))
        attempt_done(priv, res); /* removes the handle */
}

static void reap(struct sched_model *m)
{
    m->reap = false;
    for (struct sched_model_call *c = m->calls, *next; c; c = next) {
        next = c->next;
        if (c->cancelled && c->easy) {
            detach(c);
            maybe_free(c);
        }
    }
}

/* After every curl_multi_socket_action (base/curlev.c). */
static void after_curl(void *ctx)
{
    struct sched_model *m = ctx;

    if (m->reap)
        reap(m);
    check_done(m);
}

/* ---- attempts ------------------------------------------------------------ */

static int start_attempt(struct sched_model_call *c, struct wp_err *err)
{
    struct sched_model *m = c->m;
    const struct sched_model_config *cfg = &m->cfg;
    CURLcode rc = CURLE_OK;

    c->headers_done = c->got_stop = c->failed = false;
    c->status = 0;
    c->should_retry = -1;
    c->retry_after_s = c->retry_after_ms_s = -1;
    c->errbuf[0] = '\0';
    wp_buf_init(&c->errbody, MODEL_MAX_ERRBODY);
    c->sse = wp_sse_parser_new(MODEL_MAX_EVENT, on_sse, c);
    c->easy = curl_easy_init();
    if (!c->sse || !c->easy) {
        detach(c);
        return wp_err_set(err, -ENOMEM, "model: out of memory");
    }
    rc |= curl_easy_setopt(c->easy, CURLOPT_URL, m->url);
    rc |= curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, c->body);
    rc |= curl_easy_setopt(c->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->body_len);
    rc |= curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, m->headers);
    rc |= curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, on_write);
    rc |= curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, c);
    rc |= curl_easy_setopt(c->easy, CURLOPT_HEADERFUNCTION, on_header);
    rc |= curl_easy_setopt(c->easy, CURLOPT_HEADERDATA, c);
    rc |= curl_easy_setopt(c->easy, CURLOPT_PRIVATE, c);
    rc |= curl_easy_setopt(c->easy, CURLOPT_ERRORBUFFER, c->errbuf);
    rc |= curl_easy_setopt(c->easy, CURLOPT_NOSIGNAL, 1L);
    rc |= curl_easy_setopt(c->easy, CURLOPT_CONNECTTIMEOUT_MS,
                           (long)(cfg->connect_timeout_s * 1000));
    rc |= curl_easy_setopt(c->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    rc |= curl_easy_setopt(c->easy, CURLOPT_TCP_KEEPALIVE, 1L);
    rc |= curl_easy_setopt(c->easy, CURLOPT_USERAGENT, "warmpool-scheduler");
    if (rc != CURLE_OK) {
        detach(c);
        return wp_err_set(err, WP_ECONFIG, "model: curl_easy_setopt failed");
    }
    c->attempts++;
    c->timing.attempts = c->attempts;
    c->timing.started_ns = wp_now_ns();
    c->timing.headers_ns = c->timing.first_event_ns = 0;
    c->timing.request_id[0] = '\0';
    ev_now_update(m->loop);
    c->t_start = c->last_io = ev_now(m->loop);
    if (curl_multi_add_handle(m->ce.multi, c->easy) != CURLM_OK) {
        curl_easy_cleanup(c->easy);
        c->easy = NULL;
        detach(c);
        return wp_err_set(err, WP_ESTATE, "model: curl_multi_add_handle failed");
    }
    ev_timer_set(&c->watchdog, cfg->header_timeout_s, 0.);
    ev_timer_start(m->loop, &c->watchdog);
    return 0;
}

/* ---- public ---------------------------------------------------------------- */

static bool header_safe(const char *s)
{
    return !strpbrk(s, "\r\n");
}

int sched_model_new(struct ev_loop *loop, const struct sched_model_config *cfg,
                    struct sched_model **out, struct wp_err *err)
{
    struct sched_model *m = NULL;
    char line[320];
    size_t ul;
    int rc;

    if (!loop || !cfg || !out)
        return wp_err_set(err, WP_EINVAL_INPUT, "model: missing argument");
    *out = NULL;
    if (strncmp(cfg->base_url, "http://", 7) && strncmp(cfg->base_url, "https://", 8))
        return wp_err_set(err, WP_ECONFIG, "model: base url must start with http:// or https://");
    if (!header_safe(cfg->api_key) || !header_safe(cfg->version) || !cfg->version[0])
        return wp_err_set(err, WP_ECONFIG, "model: bad api key or version");
    if (!(cfg->connect_timeout_s > 0) || !(cfg->header_timeout_s > 0) ||
        !(cfg->idle_timeout_s > 0) || cfg->max_retries < 0 || !(cfg->backoff_base_s >= 0) ||
        !(cfg->backoff_max_s >= 0) || cfg->connect_timeout_s > 1e6 ||
        cfg->header_timeout_s > 1e6 || cfg->idle_timeout_s > 1e6 || cfg->max_retries > 1000)
        return wp_err_set(err, WP_ECONFIG,
                          "model: timeouts must be in (0, 1e6] s, retries in [0, 1000]");
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return wp_err_set(err, WP_ECONFIG, "model: curl_global_init failed");
    m = calloc(1, sizeof(*m));
    if (!m) {
        rc = wp_err_set(err, -ENOMEM, "model: out of memory");
        goto fail;
    }
    m->loop = loop;
    m->cfg = *cfg;
    m->rng = wp_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)m;
    if (!m->rng)
        m->rng = 1;
    ul = strlen(cfg->base_url);
    while (ul > 0 && cfg->base_url[ul - 1] == '/')
        ul--;
    snprintf(m->url, sizeof(m->url), "%.*s/v1/messages", (int)ul, cfg->base_url);
    struct curl_slist *h = NULL, *t;
    if (wp_curlev_init(&m->ce, loop, after_curl, m) < 0)
        goto nomem;
    const char *fixed[] = { "content-type: application/json", "accept: text/event-stream",
                            "Expect:" /* no 100-continue round trip for large bodies */ };
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        t = curl_slist_append(h, fixed[i]);
        if (!t)
            goto nomem;
        h = t;
    }
    snprintf(line, sizeof(line), "anthropic-version: %s", cfg->version);
    t = curl_slist_append(h, line);
    if (!t)
        goto nomem;
    h = t;
    if (cfg->api_key[0]) {
        snprintf(line, sizeof(line), "x-api-key: %s", cfg->api_key);
        t = curl_slist_append(h, line);
        explicit_bzero(line, sizeof(line));
        if (!t)
            goto nomem;
        h = t;
    }
    m->headers = h;
    h = NULL;
    *out = m;
    return 0;
nomem:
    rc = wp_err_set(err, -ENOMEM, "model: out of memory");
    curl_slist_free_all(h);
    sched_model_free(m);
    return rc;
fail:
    curl_global_cleanup();
    return rc;
}

void sched_model_free(struct sched_model *m)
{
    if (!m)
        return;
    wp_assert(m->in_cb == 0 && m->ce.in_curl == 0); /* not from a callback */
    while (m->calls) {
        struct sched_model_call *c = m->calls;
        c->cancelled = true;
        detach(c);
        maybe_free(c);
    }
    if (m->ce.loop)
        wp_curlev_cleanup(&m->ce);
    curl_slist_free_all(m->headers); /* the key's only copy besides cfg */
    explicit_bzero(&m->cfg, sizeof(m->cfg));
    free(m);
    curl_global_cleanup();
}

int sched_model_stream(struct sched_model *m, json_t *body, const struct sched_model_cbs *cbs,
                       void *ctx, struct sched_model_call **out, struct wp_err *err)
{
    struct sched_model_call *c;
    json_t *copy;
    int rc;

    if (out)
        *out = NULL;
    if (!m || !json_is_object(body) || !cbs || !cbs->on_event || !cbs->on_done)
        return wp_err_set(err, WP_EINVAL_INPUT, "model: bad arguments");
    c = calloc(1, sizeof(*c));
    if (!c)
        return wp_err_set(err, -ENOMEM, "model: out of memory");
    /* A shallow copy: the caller's object is not touched. */
    copy = json_copy(body);
    if (!copy || json_object_set_new(copy, "stream", json_true()) < 0) {
        json_decref(copy);
        free(c);
        return wp_err_set(err, -ENOMEM, "model: out of memory");
    }
    c->body = json_dumps(copy, JSON_COMPACT);
    json_decref(copy);
    if (!c->body) {
        free(c);
        return wp_err_set(err, WP_EINVAL_INPUT, "model: body does not serialize");
    }
    c->body_len = strlen(c->body);
    c->m = m;
    c->cbs = *cbs;
    c->ctx = ctx;
    ev_init(&c->wait, on_wait);
    c->wait.data = c;
    ev_init(&c->watchdog, on_watchdog);
    c->watchdog.data = c;
    c->next = m->calls;
    if (m->calls)
        m->calls->prev = c;
    m->calls = c;
    if (m->ce.in_curl) {
        ev_timer_set(&c->wait, 0., 0.); /* curl refuses add_handle from its callbacks */
        ev_timer_start(m->loop, &c->wait);
    } else {
        rc = start_attempt(c, err);
        if (rc < 0) {
            call_unlink(c);
            free(c->body);
            free(c);
            return rc;
        }
    }
    if (out)
        *out = c;
    return 0;
}

void sched_model_cancel(struct sched_model_call *c)
{
    if (!c || c->cancelled || c->done)
        return;
    c->cancelled = true;
    ev_timer_stop(c->m->loop, &c->wait);
    ev_timer_stop(c->m->loop, &c->watchdog);
    if (c->easy && c->m->ce.in_curl) {
        c->m->reap = true; /* taken out as soon as curl returns */
        return;
    }
    detach(c);
    maybe_free(c);
}

void sched_model_timing(const struct sched_model_call *c, struct sched_model_timing *t)
{
    *t = c->timing;
}
