/* ttft_bench.c - the TTFT benchmark's load generator: open-loop Poisson
 * arrivals of agent sessions, each timed from arrival to its first model
 * token and to its first tool result. libcurl multi on one libev loop, as
 * style.md habit 5 lays it out.
 *
 *   ttft_bench --mode baseline|warmpool --sched URL --key KEY --msrv URL
 *              --env NAME [--agent ID --environment-id ID] --rate R
 *              --duration S [--max-inflight N] [--timeout S] --out FILE.json
 *
 * baseline (a coupled harness, the driver itself): POST /v1/sandboxes on
 * --env (whose policy is tiers=cold), an execute of `true` that returns
 * once the sandbox is attached, only then the model server's
 * /v1/messages (streaming). TTFT = first text delta - arrival. The model's
 * bash call is then executed in the sandbox: that result is the first tool
 * result. The sandbox is deleted at the end.
 *
 * warmpool (the brain): POST /v1/sessions {agent, environment_id}, the
 * session's event stream with event_deltas[]=agent.message, then a
 * user.message. TTFT = first event_delta (or agent.message) - the
 * user.message's send; first tool result = the first agent.tool_result.
 * The session ends at session.status_idle after a tool result and is
 * deleted.
 *
 * The model's own TTFT per request: baseline joins the model server's
 * /stats/requests on the response's request-id; warmpool on the
 * model_request_id of span.model_request_end events when the brain writes
 * them, else the sessions are matched to the model server's first-turn
 * requests (turn 0) of the run in order (roughly arrival order; reported
 * as model_join: "order"). */
#include <curl/curl.h>
#include <ev.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "base/buf.h"
#include "base/curlev.h"
#include "base/timeutil.h"

#define MAXS 20000

enum kind { K_SBX_CREATE, K_SBX_EXEC_TRUE, K_MODEL, K_SBX_TOOL, K_SBX_DELETE,
            K_SESS_CREATE, K_SESS_STREAM, K_SESS_SEND, K_SESS_DELETE };

struct sess;

struct hreq {
    CURL *e;
    struct sess *s;
    enum kind kind;
    struct curl_slist *hdrs;
    char *post;
    struct wp_buf body;     /* response, or the SSE line buffer */
    char err[CURL_ERROR_SIZE];
    char reqid[64];
    bool stop;              /* SSE: done, end the transfer from the write callback */
};

struct sess {
    int idx;
    double t_arrival, t_ready, t_sent, t_first, t_tool_use, t_tool, t_done;
    char id[64];                 /* sandbox or session id */
    char model_reqid[64];
    double planned_ms;
    char tool[32];
    struct wp_buf tool_input;    /* partial_json pieces of the tool call */
    bool in_tool, failed, done, stream_open, idle_after_tool;
    char why[160];
    bool tool_error;    /* the first tool result was an error */
    struct hreq *stream;
    ev_timer deadline;
    ev_timer kick;               /* work decided inside a curl callback runs from here */
    bool kick_send, kick_delete;
};

static struct {
    struct ev_loop *loop;
    struct wp_curlev ce;         /* the multi handle on the loop */
    ev_timer arrival, stop;
    const char *mode, *sched, *key, *msrv, *env, *agent, *env_id, *out;
    double rate, duration, timeout;
    int max_inflight, inflight, n, shed, live;
    bool arrivals_over;
    double t_start;
    char msrv_last[64]; /* the model server's last request id before the run */
    struct sess *sess[MAXS];
} B;

static double now_ms(void)
{
    return wp_now_ms();
}

/* ---- libcurl multi on libev: base/curlev.h ------------------------------------ */

static void check_done(void);

static void curl_after(void *ctx)
{
    (void)ctx;
    check_done();
}

/* ---- requests ------------------------------------------------------------------ */

static void on_done(struct hreq *h, CURLcode rc, long status);
static size_t sse_write(char *p, size_t sz, size_t n, void *ud);

static size_t body_write(char *p, size_t sz, size_t n, void *ud)
{
    struct hreq *h = ud;
    return wp_buf_append(&h->body, p, sz * n) == 0 ? sz * n : 0;
}

static size_t header_cb(char *p, size_t sz, size_t n, void *ud)
{
    struct hreq *h = ud;
    size_t len = sz * n;
    if (len > 11 && strncasecmp(p, "request-id:", 11) == 0)
        snprintf(h->reqid, sizeof(h->reqid), "%.*s", (int)strcspn(p + 11 + 1, "\r\n"), p + 12);
    else if (len > 23 && strncasecmp(p, "x-msrv-planned-ttft-ms:", 23) == 0)
        h->s->planned_ms = atof(p + 23);
    else if (len <= 2 && h->kind == K_SESS_STREAM && !h->s->stream_open) {
        /* End of the stream's headers: it is subscribed, send the message. */
        long status = 0;
        curl_easy_getinfo(h->e, CURLINFO_RESPONSE_CODE, &status);
        if (status == 200) {
            /* Not from inside libcurl's callback: from the loop, next. */
            h->s->stream_open = true;
            h->s->kick_send = true;
            ev_timer_start(B.loop, &h->s->kick);
        }
    }
    return len;
}

static struct hreq *request(struct sess *s, enum kind k, const char *method, const char *url,
                            const char *key, json_t *body /* steals */)
{
    struct hreq *h = calloc(1, sizeof(*h));
    B.live += k != K_SESS_STREAM;
    h->s = s;
    h->kind = k;
    h->e = curl_easy_init();
    wp_buf_init(&h->body, 16 << 20);
    curl_easy_setopt(h->e, CURLOPT_URL, url);
    curl_easy_setopt(h->e, CURLOPT_PRIVATE, h);
    curl_easy_setopt(h->e, CURLOPT_ERRORBUFFER, h->err);
    curl_easy_setopt(h->e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h->e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h->e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(h->e, CURLOPT_HEADERDATA, h);
    bool sse = k == K_MODEL || k == K_SESS_STREAM;
    curl_easy_setopt(h->e, CURLOPT_WRITEFUNCTION, sse ? sse_write : body_write);
    curl_easy_setopt(h->e, CURLOPT_WRITEDATA, h);
    h->hdrs = curl_slist_append(h->hdrs, "content-type: application/json");
    h->hdrs = curl_slist_append(h->hdrs, "expect:");
    h->hdrs = curl_slist_append(h->hdrs, "anthropic-version: 2023-06-01");
    if (key) {
        char kh[300];
        snprintf(kh, sizeof(kh), "x-api-key: %s", key);
        h->hdrs = curl_slist_append(h->hdrs, kh);
    }
    curl_easy_setopt(h->e, CURLOPT_HTTPHEADER, h->hdrs);
    curl_easy_setopt(h->e, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        h->post = json_dumps(body, JSON_COMPACT);
        json_decref(body);
        curl_easy_setopt(h->e, CURLOPT_POSTFIELDS, h->post);
    }
    curl_multi_add_handle(B.ce.multi, h->e);
    return h;
}

static void hreq_free(struct hreq *h)
{
    B.live -= h->kind != K_SESS_STREAM;
    curl_multi_remove_handle(B.ce.multi, h->e);
    curl_easy_cleanup(h->e);
    curl_slist_free_all(h->hdrs);
    free(h->post);
    wp_buf_free(&h->body);
    free(h);
}

static void check_done(void)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(B.ce.multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        struct hreq *h;
        long status = 0;
        CURLcode rc = m->data.result;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&h);
        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
        on_done(h, rc, status);
        hreq_free(h);
    }
}

/* ---- sessions -------------------------------------------------------------------- */

static void sess_fail(struct sess *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sess_end(struct sess *s)
{
    if (s->done)
        return;
    s->done = true;
    s->t_done = now_ms();
    ev_timer_stop(B.loop, &s->deadline);
    B.inflight--;
    if (B.arrivals_over && B.inflight == 0)
        ev_break(B.loop, EVBREAK_ALL);
}

static void sess_fail(struct sess *s, const char *fmt, ...)
{
    va_list ap;
    if (s->done)
        return;
    va_start(ap, fmt);
    vsnprintf(s->why, sizeof(s->why), fmt, ap);
    va_end(ap);
    s->failed = true;
    if (s->stream)
        s->stream->stop = true;
    sess_end(s);
}

/* base URL + a path formatted from a literal (checked by -Wformat). */
#define url(out, cap, base, fmt, ...) snprintf((out), (cap), "%s" fmt, (base), __VA_ARGS__)

static void delete_resource(struct sess *s)
{
    char u[512];
    if (!s->id[0])
        return;
    if (strcmp(B.mode, "baseline"))
        url(u, sizeof(u), B.sched, "/v1/sessions/%s", s->id);
    else
        url(u, sizeof(u), B.sched, "/v1/sandboxes/%s", s->id);
    request(s, strcmp(B.mode, "baseline") ? K_SESS_DELETE : K_SBX_DELETE, "DELETE", u, B.key, NULL);
}

static void deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct sess *s = w->data;
    (void)loop;
    (void)revents;
    sess_fail(s, "timed out after %.0f s", B.timeout);
    delete_resource(s);
}

static void exec_tool(struct sess *s, enum kind k, const char *tool, json_t *input)
{
    char u[512];
    url(u, sizeof(u), B.sched, "/v1/sandboxes/%s/execute", s->id);
    request(s, k, "POST", u, B.key, json_pack("{s:s, s:o}", "name", tool, "input", input));
}

static void start_model(struct sess *s)
{
    char u[512];
    url(u, sizeof(u), B.msrv, "%s", "/v1/messages");
    json_t *body = json_pack(
        "{s:s, s:i, s:b, s:[{s:s, s:s}], s:[{s:s, s:s, s:{s:s, s:{s:{s:s}}, s:[s]}}]}", "model",
        "claude-bench", "max_tokens", 1024, "stream", 1, "messages", "role", "user", "content",
        "Check the environment, then report.", "tools", "name", "bash", "description",
        "Run a bash command", "input_schema", "type", "object", "properties", "command", "type",
        "string", "required", "command");
    request(s, K_MODEL, "POST", u, "bench", body);
}

/* One SSE event (data JSON) of the model stream (baseline) or of the
 * session stream (warmpool). */
static void sse_event(struct hreq *h, json_t *d)
{
    struct sess *s = h->s;
    const char *type = json_string_value(json_object_get(d, "type"));
    if (!type)
        return;
    if (h->kind == K_MODEL) {
        json_t *delta = json_object_get(d, "delta");
        const char *dt = json_string_value(json_object_get(delta, "type"));
        if (!strcmp(type, "content_block_start")) {
            json_t *cb = json_object_get(d, "content_block");
            if (!strcmp(json_string_value(json_object_get(cb, "type")) ?: "", "tool_use")) {
                s->in_tool = true;
                snprintf(s->tool, sizeof(s->tool), "%s",
                         json_string_value(json_object_get(cb, "name")) ?: "bash");
            }
        } else if (!strcmp(type, "content_block_delta") && dt && !strcmp(dt, "text_delta")) {
            if (!s->t_first)
                s->t_first = now_ms();
        } else if (!strcmp(type, "content_block_delta") && dt && !strcmp(dt, "input_json_delta")) {
            const char *pj = json_string_value(json_object_get(delta, "partial_json"));
            if (!s->t_first) /* a reply that calls a tool before any text */
                s->t_first = now_ms();
            if (pj)
                wp_buf_append(&s->tool_input, pj, strlen(pj));
        }
        return;
    }
    if (!strcmp(type, "event_delta") || !strcmp(type, "agent.message")) {
        if (!s->t_first)
            s->t_first = now_ms();
    } else if (!strcmp(type, "agent.tool_use")) {
        /* The model's tool call is whole: from here the wait is ours. */
        if (!s->t_tool_use)
            s->t_tool_use = now_ms();
        if (!s->t_first) /* the reply called a tool before any text */
            s->t_first = s->t_tool_use;
    } else if (!strcmp(type, "agent.tool_result")) {
        /* A tool that did not run (e.g. its sandbox was refused as
         * overloaded) is a failed session, not a fast first result. */
        if (!s->t_tool && json_is_true(json_object_get(d, "is_error")) && !s->why[0]) {
            json_t *c0 = json_array_get(json_object_get(d, "content"), 0);
            snprintf(s->why, sizeof(s->why), "tool error: %.140s",
                     json_string_value(json_object_get(c0, "text")) ?: "");
            s->tool_error = true;
        }
        if (!s->t_tool)
            s->t_tool = now_ms();
    } else if (!strcmp(type, "span.model_request_end")) {
        const char *rid = json_string_value(json_object_get(d, "model_request_id"));
        if (rid && !s->model_reqid[0])
            snprintf(s->model_reqid, sizeof(s->model_reqid), "%s", rid);
    } else if (!strcmp(type, "session.error")) {
        sess_fail(s, "session.error");
        h->stop = true;
    } else if (!strcmp(type, "session.status_idle") && s->t_tool) {
        h->stop = true; /* the turn is over */
        sess_end(s);
        s->kick_delete = true;
        ev_timer_start(B.loop, &s->kick);
    }
}

/* text/event-stream: lines; a "data:" line carries the whole JSON here
 * (both the model server and the scheduler write one data line). */
static size_t sse_write(char *p, size_t sz, size_t n, void *ud)
{
    struct hreq *h = ud;
    size_t len = sz * n;
    if (h->stop)
        return 0; /* ends the transfer */
    if (wp_buf_append(&h->body, p, len) < 0)
        return 0;
    char *nl;
    while (!h->stop && (nl = memchr(h->body.data, '\n', h->body.len))) {
        size_t ll = (size_t)(nl - h->body.data);
        if (ll > 5 && strncmp(h->body.data, "data:", 5) == 0) {
            json_t *d = json_loadb(h->body.data + 5, ll - 5, 0, NULL);
            if (d)
                sse_event(h, d);
            json_decref(d);
        }
        wp_buf_consume(&h->body, ll + 1);
    }
    return h->stop ? 0 : len;
}

static const char *jstr(struct hreq *h, const char *key)
{
    static char out[128];
    json_t *o = json_loadb(h->body.data ? h->body.data : "", h->body.len, 0, NULL);
    snprintf(out, sizeof(out), "%s", json_string_value(json_object_get(o, key)) ?: "");
    json_decref(o);
    return out;
}

static void on_done(struct hreq *h, CURLcode rc, long status)
{
    struct sess *s = h->s;
    char u[512];
    bool ok = rc == CURLE_OK && status >= 200 && status < 300;

    if (h->kind == K_SBX_DELETE || h->kind == K_SESS_DELETE)
        return;
    if (s->done && h->kind != K_SESS_STREAM)
        return;
    switch (h->kind) {
    case K_SBX_CREATE:
        if (!ok || !*jstr(h, "id")) {
            sess_fail(s, "create sandbox: %ld %s", status, h->err);
            return;
        }
        snprintf(s->id, sizeof(s->id), "%s", jstr(h, "id"));
        exec_tool(s, K_SBX_EXEC_TRUE, "bash", json_pack("{s:s}", "command", "true"));
        return;
    case K_SBX_EXEC_TRUE:
        if (!ok) {
            sess_fail(s, "execute true: %ld %s %.100s", status, h->err, h->body.data ?: "");
            delete_resource(s);
            return;
        }
        s->t_ready = now_ms();
        start_model(s);
        return;
    case K_MODEL: {
        if (rc != CURLE_OK || status != 200 || !s->t_first || !s->in_tool) {
            sess_fail(s, "model: %ld %s", status, h->err);
            delete_resource(s);
            return;
        }
        snprintf(s->model_reqid, sizeof(s->model_reqid), "%s", h->reqid);
        json_t *in = json_loadb(s->tool_input.data ?: "{}", s->tool_input.len, 0, NULL);
        exec_tool(s, K_SBX_TOOL, s->tool, in ? in : json_object());
        return;
    }
    case K_SBX_TOOL:
        if (!ok) {
            sess_fail(s, "tool: %ld %s", status, h->err);
        } else {
            s->t_tool = now_ms();
            sess_end(s);
        }
        delete_resource(s);
        return;
    case K_SESS_CREATE:
        if (!ok || !*jstr(h, "id")) {
            sess_fail(s, "create session: %ld %.200s", status, h->body.data ?: h->err);
            return;
        }
        snprintf(s->id, sizeof(s->id), "%s", jstr(h, "id"));
        url(u, sizeof(u), B.sched, "/v1/sessions/%s/events/stream?event_deltas%%5B%%5D=agent.message",
            s->id);
        s->stream = request(s, K_SESS_STREAM, "GET", u, B.key, NULL);
        return;
    case K_SESS_STREAM:
        s->stream = NULL;
        if (!s->done) {
            sess_fail(s, "stream ended: %ld %s", status, h->err);
            delete_resource(s);
        }
        return;
    case K_SESS_SEND:
        if (!ok) {
            sess_fail(s, "send: %ld %.200s", status, h->body.data ?: h->err);
            delete_resource(s);
        }
        return;
    default:
        return;
    }
}

static void kick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct sess *s = w->data;
    char u[512];
    (void)loop;
    (void)revents;
    if (s->kick_send && !s->done) { /* subscribed: now the message */
        url(u, sizeof(u), B.sched, "/v1/sessions/%s/events", s->id);
        json_t *ev = json_pack("{s:[{s:s, s:[{s:s, s:s}]}]}", "events", "type", "user.message",
                               "content", "type", "text", "text",
                               "Check the environment, then report.");
        s->t_sent = now_ms();
        request(s, K_SESS_SEND, "POST", u, B.key, ev);
    }
    if (s->kick_delete)
        delete_resource(s);
    s->kick_send = s->kick_delete = false;
    int running;
    curl_multi_socket_action(B.ce.multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done();
}

static void start_session(void)
{
    char u[512];
    if (B.n >= MAXS)
        return;
    if (B.inflight >= B.max_inflight) {
        B.shed++; /* open loop: never delay an arrival; count what memory could not take */
        return;
    }
    struct sess *s = calloc(1, sizeof(*s));
    s->idx = B.n;
    B.sess[B.n++] = s;
    B.inflight++;
    s->t_arrival = now_ms();
    wp_buf_init(&s->tool_input, 1 << 20);
    ev_timer_init(&s->deadline, deadline_cb, B.timeout, 0.);
    s->deadline.data = s;
    ev_timer_init(&s->kick, kick_cb, 0., 0.);
    s->kick.data = s;
    ev_timer_start(B.loop, &s->deadline);
    if (!strcmp(B.mode, "baseline")) {
        url(u, sizeof(u), B.sched, "%s", "/v1/sandboxes");
        request(s, K_SBX_CREATE, "POST", u, B.key, json_pack("{s:s}", "environment", B.env));
    } else {
        url(u, sizeof(u), B.sched, "%s", "/v1/sessions");
        request(s, K_SESS_CREATE, "POST", u, B.key,
                json_pack("{s:s, s:s}", "agent", B.agent, "environment_id", B.env_id));
    }
}

static double exp_sample(double rate)
{
    uint64_t r;
    if (getrandom(&r, sizeof(r), 0) != sizeof(r))
        r = wp_now_ns() * 6364136223846793005ull;
    double u = ((double)(r >> 11) + 0.5) / 9007199254740992.0;
    return -log(u) / rate;
}

static void arrival_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    if (now_ms() - B.t_start >= B.duration * 1e3) {
        B.arrivals_over = true;
        if (B.inflight == 0)
            ev_break(loop, EVBREAK_ALL);
        return;
    }
    start_session();
    int running;
    curl_multi_socket_action(B.ce.multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done();
    ev_timer_set(w, exp_sample(B.rate), 0.);
    ev_timer_start(loop, w);
}

/* ---- results ----------------------------------------------------------------------- */

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static json_t *pcts(double *v, int n)
{
    if (n == 0)
        return json_pack("{s:i}", "n", 0);
    qsort(v, (size_t)n, sizeof(*v), cmpd);
#define P(q) v[(int)fmin(n - 1, floor((q) / 100.0 * n))]
    return json_pack("{s:i, s:f, s:f, s:f, s:f}", "n", n, "p50", P(50), "p95", P(95), "p99", P(99),
                     "max", v[n - 1]);
#undef P
}

/* The model server's measured TTFT per request id (synchronous; the run
 * is over). */
static json_t *msrv_requests(void)
{
    char u[512];
    struct wp_buf b;
    wp_buf_init(&b, 64 << 20);
    CURL *e = curl_easy_init();
    url(u, sizeof(u), B.msrv, "%s", "/stats/requests");
    curl_easy_setopt(e, CURLOPT_URL, u);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, body_write);
    struct hreq h = { .body = b };
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &h);
    CURLcode rc = curl_easy_perform(e);
    curl_easy_cleanup(e);
    json_t *o = rc == CURLE_OK ? json_loadb(h.body.data ?: "", h.body.len, 0, NULL) : NULL;
    wp_buf_free(&h.body);
    json_t *arr = json_incref(json_object_get(o, "requests"));
    json_decref(o);
    return arr ? arr : json_array();
}

static double lookup_ttft(json_t *reqs, const char *rid)
{
    size_t i;
    json_t *r;
    json_array_foreach(reqs, i, r) {
        const char *id = json_string_value(json_object_get(r, "request_id"));
        if (id && rid[0] && !strcmp(id, rid))
            return json_number_value(json_object_get(r, "ttft_ms"));
    }
    return -1;
}

static int write_results(void)
{
    static double ttft[MAXS], tool[MAXS], added[MAXS], model[MAXS], tadd[MAXS];
    int nt = 0, nl = 0, na = 0, nm = 0, nu = 0, failed = 0;
    json_t *reqs = msrv_requests(), *fails = json_array();
    const char *join = "request_id";
    size_t order = 0;
    json_t *r0;
    json_array_foreach(reqs, order, r0) /* this run's requests start after msrv_last */
        if (B.msrv_last[0] &&
            !strcmp(json_string_value(json_object_get(r0, "request_id")) ?: "", B.msrv_last))
            break;
    order = order < json_array_size(reqs) ? order + 1 : 0;
    bool warm = strcmp(B.mode, "baseline") != 0;

    /* The model server keeps the last 4096 requests, each run starting
     * after the previous one's: its first turns are this run's. */
    for (int i = 0; i < B.n; i++) {
        struct sess *s = B.sess[i];
        if (s->failed || !s->t_first || s->tool_error) {
            failed++;
            if (json_array_size(fails) < 20)
                json_array_append_new(fails, json_string(s->why[0] ? s->why : "no first token"));
            continue;
        }
        double t0 = warm ? s->t_sent : s->t_arrival;
        ttft[nt++] = s->t_first - t0;
        if (s->t_tool)
            tool[nl++] = s->t_tool - t0;
        if (s->t_tool && s->t_tool_use)
            tadd[nu++] = s->t_tool - s->t_tool_use;
        double m = lookup_ttft(reqs, s->model_reqid);
        if (m < 0 && warm) {
            /* No model_request_id from the brain: first turns in order. */
            join = "order";
            json_t *r;
            while ((r = json_array_get(reqs, order)) &&
                   json_integer_value(json_object_get(r, "turn")) != 0)
                order++;
            r = json_array_get(reqs, order++);
            m = r ? json_number_value(json_object_get(r, "ttft_ms")) : -1;
        }
        if (m >= 0) {
            model[nm++] = m;
            added[na++] = s->t_first - t0 - m;
        }
    }
    json_t *o = json_pack("{s:s, s:s, s:f, s:f, s:i, s:i, s:i, s:i, s:s, s:o, s:o, s:o, s:o, s:o, s:o}",
                          "mode", B.mode, "env", B.env, "rate", B.rate, "duration_s", B.duration,
                          "arrivals", B.n + B.shed, "completed", B.n - failed, "failed", failed,
                          "shed", B.shed, "model_join", join, "ttft_ms", pcts(ttft, nt),
                          "first_tool_result_ms", pcts(tool, nl), "added_over_model_ms",
                          pcts(added, na), "model_ttft_ms", pcts(model, nm),
                          "tool_result_after_tool_use_ms", pcts(tadd, nu), "failures", fails);
    int rc = json_dump_file(o, B.out, JSON_INDENT(1));
    json_decref(o);
    json_decref(reqs);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        { "mode", 1, NULL, 'm' },     { "sched", 1, NULL, 's' },  { "key", 1, NULL, 'k' },
        { "msrv", 1, NULL, 'M' },     { "env", 1, NULL, 'e' },    { "agent", 1, NULL, 'a' },
        { "environment-id", 1, NULL, 'E' }, { "rate", 1, NULL, 'r' },
        { "duration", 1, NULL, 'd' }, { "max-inflight", 1, NULL, 'i' },
        { "timeout", 1, NULL, 't' },  { "out", 1, NULL, 'o' },    { NULL, 0, NULL, 0 }
    };
    int c;
    B.key = "sk-bench";
    B.max_inflight = 64;
    B.timeout = 60;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'm': B.mode = optarg; break;
        case 's': B.sched = optarg; break;
        case 'k': B.key = optarg; break;
        case 'M': B.msrv = optarg; break;
        case 'e': B.env = optarg; break;
        case 'a': B.agent = optarg; break;
        case 'E': B.env_id = optarg; break;
        case 'r': B.rate = atof(optarg); break;
        case 'd': B.duration = atof(optarg); break;
        case 'i': B.max_inflight = atoi(optarg); break;
        case 't': B.timeout = atof(optarg); break;
        case 'o': B.out = optarg; break;
        default: return 2;
        }
    }
    bool baseline = B.mode && !strcmp(B.mode, "baseline");
    if (!B.mode || (!baseline && strcmp(B.mode, "warmpool")) || !B.sched || !B.msrv || !B.env ||
        !B.out || !(B.rate > 0 && B.rate <= 1000) || !(B.duration > 0 && B.duration <= 3600) ||
        B.max_inflight < 1 || !(B.timeout > 0) || (!baseline && (!B.agent || !B.env_id))) {
        fprintf(stderr, "usage: ttft_bench --mode baseline|warmpool --sched URL [--key KEY] --msrv URL\n"
                        "         --env NAME [--agent ID --environment-id ID] --rate R (0..1000]\n"
                        "         --duration S [--max-inflight N] [--timeout S] --out FILE.json\n");
        return 2;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    B.loop = EV_DEFAULT;
    if (wp_curlev_init(&B.ce, B.loop, curl_after, NULL) < 0) {
        fprintf(stderr, "ttft_bench: out of memory\n");
        return 1;
    }
    curl_multi_setopt(B.ce.multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
    json_t *before = msrv_requests();
    json_t *last = json_array_get(before, json_array_size(before) - 1);
    snprintf(B.msrv_last, sizeof(B.msrv_last), "%s",
             json_string_value(json_object_get(last, "request_id")) ?: "");
    json_decref(before);
    ev_timer_init(&B.arrival, arrival_cb, exp_sample(B.rate), 0.);
    B.t_start = now_ms();
    ev_timer_start(B.loop, &B.arrival);
    ev_run(B.loop, 0);
    /* Let the last deletes go out (sandboxes are released), 15 s at most. */
    double until = now_ms() + 15e3;
    while (B.live > 0 && now_ms() < until)
        ev_run(B.loop, EVRUN_ONCE);
    /* Sessions still running (stuck past the loop's end) count as failed. */
    for (int i = 0; i < B.n; i++)
        if (!B.sess[i]->done)
            sess_fail(B.sess[i], "unfinished");
    int rc = write_results();
    fprintf(stderr, "ttft_bench: mode=%s env=%s rate=%g sessions=%d shed=%d -> %s\n", B.mode,
            B.env, B.rate, B.n, B.shed, B.out);
    wp_curlev_cleanup(&B.ce);
    curl_global_cleanup();
    return rc == 0 ? 0 : 1;
}
