/* worker.c - the node as a self-hosted environment's worker: the poller
 * and the work items, call by call as the SDK's EnvironmentWorker
 * (work-queue.md 5, 6, 10). One item at a time:
 *
 *   poll (environment key, block_ms=999) -> ack (environment key) ->
 *   heartbeat NO_HEARTBEAT at once, then on the lease's cadence ->
 *   GET the session -> the runner (worker_run.c) until the session ends,
 *   the idle countdown runs out or the lease ends -> stop {"force":true}
 *   unless the lease was lost -> poll again.
 *
 * Every call after the ack uses the item's sessions token (decoded from
 * its secret) when there is one, else the environment key. Everything
 * from the network is checked; a bad item is stopped, a bad answer is a
 * failed call, never a crash. */
#define WP_LOG_COMPONENT "worker"
#include "pool/pool_int.h"

#include <curl/curl.h>
#include <errno.h>
#include <ev.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "base/err.h"
#include "base/log.h"

#define POLL_BLOCK_MS 999
#define BODY_MAX (1u << 20)
#define IDLE_REMINDER_S 300

enum lease { LEASE_OK, LEASE_STOP, LEASE_LOST };

struct witem {
    struct pool__worker *w;
    char id[128], kind[32], sid[128];
    char token[512];            /* sessions token, else the environment key */
    struct pool__http_req *req; /* ack, session retrieve or stop */
    struct pool__runner *run;
    /* heartbeats (work-queue.md 6) */
    struct pool__http_req *hb;
    ev_timer hb_timer;
    char last_hb[256];
    double interval, ttl, last_ok;
    enum lease lease;
    ev_timer end;               /* teardown, outside every callback */
    bool ending;
    bool end_after_beat;        /* not a session: stop once the first beat answered */
};

struct pool__worker {
    struct ev_loop *loop;
    struct pool_worker_config cfg;
    char pool_env[64];
    double sandbox_lease_ms;
    pool__worker_fatal_cb fatal;
    void *fatal_ctx;
    struct pool__http *http;
    struct pool_client *pool;
    struct pool__http_req *poll;
    ev_timer wait;              /* the next poll (sleep or backoff) */
    int failures;               /* polls failed in a row */
    double idle_since, reminded;
    struct witem *item;
    bool stopping, dead;
};

static void poll_next(struct pool__worker *w, double delay);
static void teardown(struct witem *it);

static double rand01(void)
{
    return (double)rand() / RAND_MAX;
}

/* Ids go into URLs: only what API ids are made of. */
static bool id_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n >= 128)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-'))
            return false;
    return true;
}

/* Credentials go into a header: printable ASCII, no spaces. */
static bool token_ok(const char *s, size_t cap)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n >= cap)
        return false;
    for (; *s; s++)
        if (*s <= 0x20 || *s >= 0x7f)
            return false;
    return true;
}

/* base64url (padding optional; + and / accepted too), as the SDK decodes
 * the secret. Returns the length or -1. */
static int b64_decode(const char *in, char *out, size_t cap)
{
    unsigned acc = 0;
    int bits = 0;
    size_t n = 0;

    for (; *in && *in != '='; in++) {
        int v;
        if (*in >= 'A' && *in <= 'Z')
            v = *in - 'A';
        else if (*in >= 'a' && *in <= 'z')
            v = *in - 'a' + 26;
        else if (*in >= '0' && *in <= '9')
            v = *in - '0' + 52;
        else if (*in == '-' || *in == '+')
            v = 62;
        else if (*in == '_' || *in == '/')
            v = 63;
        else
            return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n + 1 >= cap)
                return -1;
            out[n++] = (char)((acc >> bits) & 0xff);
        }
    }
    out[n] = '\0';
    return (int)n;
}

/* The item's credential: its secret's sessions_token, else the key. */
static void pick_token(struct witem *it, json_t *secret)
{
    char raw[1024];
    const char *tok = NULL;
    json_t *o = NULL;

    if (json_is_string(secret) && json_string_length(secret) > 0) {
        int n = b64_decode(json_string_value(secret), raw, sizeof(raw));
        o = n > 0 ? json_loadb(raw, (size_t)n, JSON_REJECT_DUPLICATES, NULL) : NULL;
        tok = json_string_value(json_object_get(o, "sessions_token"));
        if (!tok || !token_ok(tok, sizeof(it->token))) {
            log_warn("work=%s: the secret is not usable; using the environment key", it->id);
            tok = NULL;
        }
    }
    snprintf(it->token, sizeof(it->token), "%s", tok ? tok : it->w->cfg.key);
    explicit_bzero(raw, sizeof(raw));
    json_decref(o);
}

static int call(struct pool__worker *w, const char *method, const char *url, const char *bearer,
                const char *body, double timeout_s, pool__http_done_cb done, void *ctx,
                struct pool__http_req **out)
{
    struct wp_err err;
    struct pool__http_opts o = { .method = method, .url = url, .bearer = bearer, .body = body,
                                 .body_len = body ? strlen(body) : 0, .timeout_s = timeout_s,
                                 .max_body = BODY_MAX };
    int rc = pool__http_start(w->http, &o, done, ctx, out, &err);
    if (rc < 0)
        log_error("%s %s: %s", method, url, err.msg);
    return rc;
}

static const char *why(const struct pool__http_res *res, char *buf, size_t cap)
{
    if (res->status < 0)
        snprintf(buf, cap, "%s", res->errmsg);
    else
        snprintf(buf, cap, "HTTP %ld: %.200s", res->code, res->body);
    for (char *p = buf; *p; p++) /* network text into one log line */
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    return buf;
}

static bool ok2xx(const struct pool__http_res *res)
{
    return res->status == 0 && res->code >= 200 && res->code < 300;
}

/* ---- the item's end ------------------------------------------------------ */

static void item_free(struct witem *it)
{
    struct pool__worker *w = it->w;

    pool__http_cancel(it->req);
    pool__http_cancel(it->hb);
    ev_timer_stop(w->loop, &it->hb_timer);
    ev_timer_stop(w->loop, &it->end);
    pool__runner_free(it->run);
    explicit_bzero(it->token, sizeof(it->token));
    free(it);
    w->item = NULL;
}

static void item_over(struct witem *it)
{
    struct pool__worker *w = it->w;
    item_free(it);
    w->idle_since = ev_now(w->loop);
    if (!w->stopping)
        poll_next(w, 0);
}

static void stop_done(void *ctx, const struct pool__http_res *res)
{
    struct witem *it = ctx;
    char buf[300];

    it->req = NULL;
    if (ok2xx(res))
        log_info("work=%s stopped", it->id);
    else if (!(res->status == 0 && res->code == 409)) /* already stopped: silent */
        log_warn("work=%s stop failed: %s", it->id, why(res, buf, sizeof(buf)));
    item_over(it);
}

static void end_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct witem *it = t->data;
    struct pool__worker *w = it->w;
    char url[512];

    (void)loop;
    (void)revents;
    pool__runner_free(it->run);
    it->run = NULL;
    pool__http_cancel(it->req);
    it->req = NULL;
    pool__http_cancel(it->hb);
    it->hb = NULL;
    ev_timer_stop(w->loop, &it->hb_timer);
    if (it->lease == LEASE_LOST) { /* someone else may hold it now: no stop */
        log_info("work=%s let go without a stop (lease lost)", it->id);
        item_over(it);
        return;
    }
    snprintf(url, sizeof(url), "%s/v1/environments/%s/work/%s/stop", w->cfg.url, w->cfg.environment, it->id);
    if (call(w, "POST", url, it->token, "{\"force\":true}", 30, stop_done, it, &it->req) < 0)
        item_over(it);
}

/* Runs the teardown from a zero timer: callers are inside callbacks of
 * the runner or the HTTP client. */
static void teardown(struct witem *it)
{
    if (it->ending)
        return;
    it->ending = true;
    ev_timer_set(&it->end, 0., 0.);
    ev_timer_start(it->w->loop, &it->end);
}

static void run_ended(void *ctx, enum pool__run_end e)
{
    static const char *const names[] = { "session terminated", "idle", "failed" };
    struct witem *it = ctx;
    log_info("work=%s session=%s runner ended: %s", it->id, it->sid, names[e]);
    teardown(it);
}

/* ---- heartbeats (work-queue.md 6) ---------------------------------------- */

static void beat(struct witem *it);

static void lease_end(struct witem *it, enum lease l, const char *reason)
{
    log_warn("work=%s lease ended: %s%s", it->id, reason, l == LEASE_LOST ? " (no stop)" : "");
    it->lease = l;
    teardown(it);
}

static void hb_done(void *ctx, const struct pool__http_res *res)
{
    struct witem *it = ctx;
    struct pool__worker *w = it->w;
    double now = ev_now(w->loop);
    char buf[300];
    json_t *o = NULL;

    it->hb = NULL;
    if (it->end_after_beat) {
        if (res->status == 0 && res->code == 412)
            it->lease = LEASE_LOST;
        teardown(it);
        return;
    }
    if (ok2xx(res))
        o = json_loadb(res->body, res->len, JSON_REJECT_DUPLICATES, NULL);
    if (o) {
        json_t *lh = json_object_get(o, "last_heartbeat"), *ttl = json_object_get(o, "ttl_seconds");
        json_t *ext = json_object_get(o, "lease_extended");
        const char *state = json_string_value(json_object_get(o, "state"));
        if (!json_is_string(lh) || json_string_length(lh) >= sizeof(it->last_hb) || !json_is_boolean(ext)) {
            log_warn("work=%s heartbeat answer without last_heartbeat/lease_extended; counted as failed", it->id);
            json_decref(o);
            o = NULL;
        } else {
            it->last_ok = now;
            snprintf(it->last_hb, sizeof(it->last_hb), "%s", json_string_value(lh));
            if (json_is_number(ttl) && json_number_value(ttl) > 0) {
                it->ttl = json_number_value(ttl);
                double half = it->ttl / 2;
                it->interval = half > 30 ? 30 : half < 1 ? 1 : half;
                pool__runner_set_send_window(it->run, it->ttl);
            }
            bool stop = (state && (!strcmp(state, "stopping") || !strcmp(state, "stopped"))) || !json_is_true(ext);
            log_debug("work=%s heartbeat ok state=%s ttl=%.0f", it->id, state ? state : "?", it->ttl);
            json_decref(o);
            if (stop) {
                lease_end(it, LEASE_STOP, "the heartbeat said stop");
                return;
            }
        }
    }
    if (!o && res->status == 0 && res->code == 412) {
        lease_end(it, LEASE_LOST, "heartbeat precondition failed (412)");
        return;
    }
    if (!o && !ok2xx(res) && !pool__http_transient(res)) {
        lease_end(it, LEASE_STOP, why(res, buf, sizeof(buf)));
        return;
    }
    if (!o) {
        if (now - it->last_ok > it->ttl) {
            lease_end(it, LEASE_LOST, "no heartbeat succeeded within the lease TTL");
            return;
        }
        log_warn("work=%s heartbeat failed: %s", it->id, ok2xx(res) ? "bad answer" : why(res, buf, sizeof(buf)));
    }
    ev_timer_set(&it->hb_timer, it->interval, 0.);
    ev_timer_start(w->loop, &it->hb_timer);
}

static void beat(struct witem *it)
{
    struct pool__worker *w = it->w;
    char url[1024], ttl[32] = "";
    char *esc = curl_easy_escape(NULL, it->last_hb, 0);

    if (!esc) {
        ev_timer_set(&it->hb_timer, it->interval, 0.);
        ev_timer_start(w->loop, &it->hb_timer);
        return;
    }
    if (w->cfg.lease_ttl_s > 0)
        snprintf(ttl, sizeof(ttl), "&desired_ttl_seconds=%d", w->cfg.lease_ttl_s);
    snprintf(url, sizeof(url), "%s/v1/environments/%s/work/%s/heartbeat?expected_last_heartbeat=%s%s",
             w->cfg.url, w->cfg.environment, it->id, esc, ttl);
    curl_free(esc);
    /* Each beat is cut off after the current interval. */
    if (call(w, "POST", url, it->token, NULL, it->interval, hb_done, it, &it->hb) < 0) {
        ev_timer_set(&it->hb_timer, it->interval, 0.);
        ev_timer_start(w->loop, &it->hb_timer);
    }
}

static void hb_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    beat(t->data);
}

/* ---- the item's start ------------------------------------------------------ */

static void session_done(void *ctx, const struct pool__http_res *res)
{
    struct witem *it = ctx;
    struct pool__worker *w = it->w;
    char buf[300];
    struct wp_err err;

    it->req = NULL;
    json_t *o = ok2xx(res) ? json_loadb(res->body, res->len, JSON_REJECT_DUPLICATES, NULL) : NULL;
    const char *status = json_string_value(json_object_get(o, "status"));
    if (!o || !status) {
        log_error("work=%s session=%s retrieve failed: %s", it->id, it->sid,
                  ok2xx(res) ? "not a session object" : why(res, buf, sizeof(buf)));
        json_decref(o);
        teardown(it);
        return;
    }
    if (strcmp(status, "terminated") == 0) {
        log_info("work=%s session=%s is terminated; nothing to run", it->id, it->sid);
        json_decref(o);
        teardown(it);
        return;
    }
    json_decref(o);
    struct pool__run_opts ro = { .loop = w->loop, .http = w->http, .pool = w->pool, .base_url = w->cfg.url,
                                 .session_id = it->sid, .token = it->token, .pool_env = w->pool_env,
                                 .sandbox_lease_ms = w->sandbox_lease_ms, .max_idle_ms = w->cfg.max_idle_ms };
    if (pool__runner_new(&ro, run_ended, it, &it->run, &err) < 0) {
        log_error("work=%s: %s", it->id, err.msg);
        teardown(it);
        return;
    }
    pool__runner_set_send_window(it->run, it->ttl);
}

static void ack_done(void *ctx, const struct pool__http_res *res)
{
    struct witem *it = ctx;
    struct pool__worker *w = it->w;
    char url[512], buf[300];

    it->req = NULL;
    if (!ok2xx(res)) {
        /* As the SDK: skip the item, no stop, poll again at once. */
        log_warn("work=%s ack failed: %s", it->id, why(res, buf, sizeof(buf)));
        item_over(it);
        return;
    }
    log_info("work=%s acked kind=%s session=%s", it->id, it->kind, it->sid[0] ? it->sid : "-");
    /* The lease first, before anything slow (step 4). */
    beat(it);
    if (strcmp(it->kind, "session") != 0) {
        /* healthcheck or unknown: acked, heartbeated once, stopped (step 5) */
        if (it->hb)
            it->end_after_beat = true;
        else
            teardown(it);
        return;
    }
    snprintf(url, sizeof(url), "%s/v1/sessions/%s", w->cfg.url, it->sid);
    if (call(w, "GET", url, it->token, NULL, 60, session_done, it, &it->req) < 0)
        teardown(it);
}

/* A polled item: checked, then acked with the environment key. */
static void take_item(struct pool__worker *w, json_t *o)
{
    const char *id = json_string_value(json_object_get(o, "id"));
    json_t *data = json_object_get(o, "data");
    const char *kind = json_string_value(json_object_get(data, "type"));
    const char *sid = json_string_value(json_object_get(data, "id"));
    struct witem *it;
    char url[512];

    if (!id_ok(id)) {
        log_error("poll: an item without a usable id; skipped");
        poll_next(w, 1);
        return;
    }
    it = calloc(1, sizeof(*it));
    if (!it) {
        log_error("work=%s: out of memory", id);
        poll_next(w, 1);
        return;
    }
    it->w = w;
    w->item = it;
    snprintf(it->id, sizeof(it->id), "%s", id);
    it->interval = 30; /* until the first answer (section 6) */
    it->ttl = 90;
    it->last_ok = ev_now(w->loop);
    snprintf(it->last_hb, sizeof(it->last_hb), "NO_HEARTBEAT");
    ev_init(&it->hb_timer, hb_timer_cb);
    it->hb_timer.data = it;
    ev_init(&it->end, end_cb);
    it->end.data = it;
    if (!kind || strlen(kind) >= sizeof(it->kind)) {
        log_error("work=%s: data.type missing or not a string; it will be stopped", id);
        snprintf(it->kind, sizeof(it->kind), "invalid");
    } else {
        snprintf(it->kind, sizeof(it->kind), "%s", kind);
    }
    if (strcmp(it->kind, "session") == 0) {
        if (!id_ok(sid)) {
            log_error("work=%s: data.id is not a session id; it will be stopped", id);
            snprintf(it->kind, sizeof(it->kind), "invalid");
        } else {
            snprintf(it->sid, sizeof(it->sid), "%s", sid);
        }
    }
    pick_token(it, json_object_get(o, "secret"));
    snprintf(url, sizeof(url), "%s/v1/environments/%s/work/%s/ack", w->cfg.url, w->cfg.environment, id);
    if (call(w, "POST", url, w->cfg.key, NULL, 60, ack_done, it, &it->req) < 0)
        item_over(it);
}

/* ---- the poller ------------------------------------------------------------- */

static void poll_done(void *ctx, const struct pool__http_res *res)
{
    struct pool__worker *w = ctx;
    char buf[300];
    json_error_t je;

    w->poll = NULL;
    if (res->status == 0 && res->code >= 400 && res->code < 500 && !pool__http_transient(res)) {
        /* A bad key or a missing environment: the SDK's run() rejects. */
        struct wp_err err;
        wp_err_set(&err, WP_ECONFIG, "work queue of %s refused the worker: %s", w->cfg.environment,
                   why(res, buf, sizeof(buf)));
        log_error("%s", err.msg);
        w->dead = true;
        w->fatal(w->fatal_ctx, &err);
        return;
    }
    if (!ok2xx(res)) {
        /* 1 s x 2^n, capped at 60 s, minus up to 25 % jitter. */
        double d = 1.0 * (1 << (w->failures < 6 ? w->failures : 6));
        d = (d > 60 ? 60 : d) * (1 - 0.25 * rand01());
        w->failures++;
        log_warn("poll failed (%s); again in %.1f s", why(res, buf, sizeof(buf)), d);
        poll_next(w, d);
        return;
    }
    w->failures = 0;
    size_t skip = 0;
    while (skip < res->len && (res->body[skip] == ' ' || res->body[skip] == '\n' || res->body[skip] == '\r' ||
                               res->body[skip] == '\t'))
        skip++;
    if (res->code == 204 || skip == res->len) {
        poll_next(w, 1 + 2 * rand01());
        return;
    }
    json_t *o = json_loadb(res->body, res->len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (json_is_null(o)) {
        json_decref(o);
        double now = ev_now(w->loop);
        if (now - w->idle_since > IDLE_REMINDER_S && now - w->reminded > IDLE_REMINDER_S) {
            log_info("no work for %.0f s (environment %s)", now - w->idle_since, w->cfg.environment);
            w->reminded = now;
        }
        poll_next(w, 1 + 2 * rand01()); /* empty: sleep 1-3 s */
        return;
    }
    if (!json_is_object(o)) {
        log_error("poll: the answer is not a work item (%s); backing off", o ? "not an object" : je.text);
        json_decref(o);
        w->failures++;
        poll_next(w, 5);
        return;
    }
    take_item(w, o);
    json_decref(o);
}

static void do_poll(struct pool__worker *w)
{
    char url[512];
    struct wp_err err;

    if (w->stopping || w->dead || w->item)
        return;
    snprintf(url, sizeof(url), "%s/v1/environments/%s/work/poll?block_ms=%d", w->cfg.url, w->cfg.environment,
             POLL_BLOCK_MS);
    struct pool__http_opts o = { .method = "GET", .url = url, .bearer = w->cfg.key, .worker_id = w->cfg.worker_id,
                                 .timeout_s = 60, .max_body = BODY_MAX };
    if (pool__http_start(w->http, &o, poll_done, w, &w->poll, &err) < 0) {
        log_error("poll: %s", err.msg);
        poll_next(w, 5);
    }
}

static void wait_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    do_poll(t->data);
}

static void poll_next(struct pool__worker *w, double delay)
{
    ev_timer_stop(w->loop, &w->wait);
    ev_timer_set(&w->wait, delay, 0.);
    ev_timer_start(w->loop, &w->wait);
}

/* ---- lifecycle ----------------------------------------------------------------- */

int pool__worker_start(struct ev_loop *loop, const struct pool_worker_config *cfg, const char *pool_env,
                       const char *redis_host, int redis_port, double sandbox_lease_ms,
                       pool__worker_fatal_cb fatal, void *ctx, struct pool__worker **out, struct wp_err *err)
{
    struct pool__worker *w;
    unsigned seed = 0;
    int rc;

    if (!cfg->url[0] || !id_ok(cfg->environment) || !token_ok(cfg->key, sizeof(cfg->key)) || !fatal)
        return wp_err_set(err, WP_ECONFIG, "worker: control plane URL, environment id and key are required");
    w = calloc(1, sizeof(*w));
    if (!w)
        return wp_err_set(err, -ENOMEM, "worker: out of memory");
    w->loop = loop;
    w->cfg = *cfg;
    snprintf(w->pool_env, sizeof(w->pool_env), "%s", pool_env);
    w->sandbox_lease_ms = sandbox_lease_ms;
    w->fatal = fatal;
    w->fatal_ctx = ctx;
    if (getrandom(&seed, sizeof(seed), 0) == (ssize_t)sizeof(seed))
        srand(seed); /* jitter only */
    if (!w->cfg.worker_id[0]) {
        unsigned char u[16];
        char host[64] = "";
        if (getrandom(u, sizeof(u), 0) != (ssize_t)sizeof(u)) {
            rc = wp_err_errno(err, "getrandom");
            goto fail;
        }
        u[6] = (unsigned char)((u[6] & 0x0f) | 0x40);
        u[8] = (unsigned char)((u[8] & 0x3f) | 0x80);
        gethostname(host, sizeof(host) - 1);
        snprintf(w->cfg.worker_id, sizeof(w->cfg.worker_id),
                 "%s%s%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", host,
                 host[0] ? "-" : "", u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11],
                 u[12], u[13], u[14], u[15]);
    }
    if ((rc = pool__http_new(loop, &w->http, err)) < 0 ||
        (rc = pool_client_new(loop, redis_host, redis_port, &w->pool, err)) < 0)
        goto fail;
    ev_init(&w->wait, wait_cb);
    w->wait.data = w;
    w->idle_since = ev_now(loop);
    log_info("worker=%s environment=%s control_plane=%s sandboxes from pool env=%s", w->cfg.worker_id,
             w->cfg.environment, w->cfg.url, w->pool_env);
    poll_next(w, 0);
    *out = w;
    return 0;
fail:
    pool__worker_free(w);
    return rc;
}

void pool__worker_stop(struct pool__worker *w)
{
    if (!w || w->stopping)
        return;
    w->stopping = true;
    ev_timer_stop(w->loop, &w->wait);
    pool__http_cancel(w->poll);
    w->poll = NULL;
    if (w->item && !w->item->ending) {
        log_info("work=%s: stopping (the node stops)", w->item->id);
        teardown(w->item);
    }
}

void pool__worker_free(struct pool__worker *w)
{
    if (!w)
        return;
    ev_timer_stop(w->loop, &w->wait);
    pool__http_cancel(w->poll);
    if (w->item)
        item_free(w->item);
    pool_client_free(w->pool); /* after the runner: pending claims end here */
    pool__http_free(w->http);
    explicit_bzero(w->cfg.key, sizeof(w->cfg.key));
    free(w);
}
