/* msrv_routes.c - the HTTP routes of wp-modelserver: POST /v1/messages
 * (fault choice, plan, response head), /stats, /stats/requests, /health. */
#define WP_LOG_COMPONENT "msrv"
#include "msrv_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/log.h"
#include "base/timeutil.h"

#define RECENT_IN_STATS 64

static bool rule_hits(const struct msrv_fault_rule *r, int *seen, struct msrv_rng *rng)
{
    int idx = (*seen)++;

    if (idx < r->first)
        return true;
    return r->rate > 0 && msrv_rng_double(rng) < r->rate;
}

static void h_messages(struct msrv_conn *c, struct msrv_req *req)
{
    struct msrv_server *srv = c->srv;
    const struct msrv_config *cfg = srv->cfg;
    struct msrv_msgreq mr;
    struct msrv_rng rng, frng;
    const struct msrv_turn *turn;
    struct wp_err err;
    uint64_t k;
    int after = cfg->fault_after;

    if (cfg->require_auth && !req->has_api_key && !req->has_auth) {
        msrv__respond_error(c, 401, "x-api-key header is required", -1);
        msrv__finish(c);
        return;
    }
    if (msrv_msgreq_parse(req->body.data ? req->body.data : "", req->body.len, &mr, &err) < 0) {
        msrv__respond_error(c, 400, err.msg, -1);
        msrv__finish(c);
        return;
    }
    msrv_cache_bill(srv->cache, mr.root, (uint64_t)wp_wall_ms(), &mr.cache_read,
                    &mr.cache_created);
    k = srv->n_messages++;
    /* What the last request offered the model, for tests (GET /stats). */
    json_decref(srv->last_tools);
    srv->last_tools = json_array();
    size_t ti;
    json_t *tv;
    json_array_foreach(json_object_get(mr.root, "tools"), ti, tv)
        if (json_is_string(json_object_get(tv, "name")))
            json_array_append(srv->last_tools, json_object_get(tv, "name"));
    msrv_rng_seed(&rng, cfg->seed, k);
    msrv_rng_seed(&frng, cfg->seed ^ 0xfa17fa17ull, k);
    turn = msrv_config_pick(cfg, &mr);
    c->turn = mr.n_assistant;
    c->stream = mr.stream;

    /* A scripted fault wins; else the rules, each counting only the
     * requests that get as far as it. */
    if (turn && turn->fault != MSRV_FAULT_NONE) {
        c->fault = turn->fault;
        after = turn->fault_after;
    } else if (rule_hits(&cfg->status_rule, &srv->seen_status, &frng)) {
        c->fault = MSRV_FAULT_STATUS;
    } else if (mr.stream && rule_hits(&cfg->error_rule, &srv->seen_error, &frng)) {
        c->fault = MSRV_FAULT_STREAM_ERROR;
    } else if (mr.stream && rule_hits(&cfg->drop_rule, &srv->seen_drop, &frng)) {
        c->fault = MSRV_FAULT_DROP;
    } else if (mr.stream && rule_hits(&cfg->stall_rule, &srv->seen_stall, &frng)) {
        c->fault = MSRV_FAULT_STALL;
    }
    if (c->fault == MSRV_FAULT_STATUS) {
        int st = turn && turn->fault_status ? turn->fault_status : cfg->fault_status;
        const char *msg = st == 529 ? "Overloaded"
                          : st == 429 ? "Rate limited"
                                      : "Internal server error";
        srv->n_fault_status++;
        c->stream = false;
        msrv__respond_error(c, st, msg, cfg->retry_after);
        msrv_msgreq_free(&mr);
        msrv__finish(c);
        return;
    }
    if (!mr.stream)
        c->fault = MSRV_FAULT_NONE;
    if (msrv_plan_build(cfg, turn, &mr, &rng, &c->plan, &err) < 0) {
        msrv_msgreq_free(&mr);
        c->stream = false;
        msrv__respond_error(c, 500, err.msg, -1);
        msrv__finish(c);
        return;
    }
    msrv_msgreq_free(&mr);
    c->fault_at = after < 0 ? 0 : (size_t)after;
    if (c->fault_at >= c->plan.n)
        c->fault_at = c->plan.n - 1;
    c->seg = 0;
    c->next_at_ms = c->t0_ms + c->plan.segs[0].delay_ms;
    if (c->stream) {
        char head[512];
        int n = snprintf(head, sizeof(head),
                         "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                         "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
                         "request-id: %s\r\nx-msrv-planned-ttft-ms: %.3f\r\n"
                         "Connection: %s\r\n\r\n",
                         c->req_id, c->plan.ttft_ms, c->keep_alive ? "keep-alive" : "close");
        c->status = 200;
        srv->n_streams++;
        srv->n_active++;
        msrv__send_raw(c, head, (size_t)n);
        if (c->closing)
            return;
    } else {
        c->next_at_ms = c->t0_ms + c->plan.total_ms;
    }
    msrv__arm(c);
}

static double pct(double *sorted, size_t n, double p)
{
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return sorted[i < n ? i : n - 1];
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* {count, mean, min, p50, p95, p99, max} of the first n values of v. */
static json_t *summary(const double *v, size_t n)
{
    double *sorted, sum = 0;
    json_t *j;

    if (n == 0)
        return json_pack("{s:i}", "count", 0);
    sorted = malloc(n * sizeof(double));
    if (!sorted)
        return NULL;
    memcpy(sorted, v, n * sizeof(double));
    qsort(sorted, n, sizeof(double), cmp_double);
    for (size_t i = 0; i < n; i++)
        sum += sorted[i];
    j = json_pack("{s:I, s:f, s:f, s:f, s:f, s:f, s:f}", "count", (json_int_t)n, "mean",
                  sum / (double)n, "min", sorted[0], "p50", pct(sorted, n, 0.5), "p95",
                  pct(sorted, n, 0.95), "p99", pct(sorted, n, 0.99), "max", sorted[n - 1]);
    free(sorted);
    return j;
}

/* The last `max` streams, oldest first. */
static json_t *recent_json(const struct msrv_server *srv, size_t max)
{
    size_t nr = srv->n_recent < MSRV_RECENT_MAX ? (size_t)srv->n_recent : MSRV_RECENT_MAX;
    json_t *a = json_array();

    if (nr > max)
        nr = max;
    for (size_t i = 0; a && i < nr; i++) {
        const struct msrv_recent *r = &srv->recent[(srv->n_recent - nr + i) % MSRV_RECENT_MAX];
        json_array_append_new(a, json_pack("{s:s, s:f, s:f, s:I}", "request_id", r->req_id,
                                           "ttft_ms", r->ttft_ms, "planned_ttft_ms",
                                           r->planned_ms, "turn", (json_int_t)r->turn));
    }
    return a;
}

static void h_stats(struct msrv_conn *c, struct msrv_req *req)
{
    struct msrv_server *srv = c->srv;
    size_t n = srv->n_ttft < MSRV_TTFT_RING ? (size_t)srv->n_ttft : MSRV_TTFT_RING;
    json_t *j;
    char *body;
    (void)req;

    j = json_pack("{s:I, s:I, s:I, s:I, s:I, s:O, s:{s:I, s:I, s:I, s:I}, s:o, s:o, s:o, s:O}",
                  "http_requests", (json_int_t)srv->n_http, "messages",
                  (json_int_t)srv->n_messages, "streams", (json_int_t)srv->n_streams,
                  "active_streams", (json_int_t)srv->n_active, "client_gone",
                  (json_int_t)srv->n_client_gone, "status", srv->by_status, "faults", "status",
                  (json_int_t)srv->n_fault_status, "stream_error",
                  (json_int_t)srv->n_fault_error, "drop", (json_int_t)srv->n_fault_drop, "stall", (json_int_t)srv->n_fault_stall,
                  "ttft_ms", summary(srv->ttft, n), "ttft_late_ms", summary(srv->late, n),
                  "recent", recent_json(srv, RECENT_IN_STATS), "last_tools",
                  srv->last_tools ? srv->last_tools : json_null());
    body = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    msrv__respond(c, 200, "application/json", NULL, body ? body : "{}", body ? strlen(body) : 2);
    free(body);
    json_decref(j);
    msrv__finish(c);
}

/* Every stream still in the ring, for benchmarks that join on request-id. */
static void h_stats_requests(struct msrv_conn *c, struct msrv_req *req)
{
    json_t *j = json_pack("{s:o}", "requests", recent_json(c->srv, MSRV_RECENT_MAX));
    char *body = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    (void)req;

    msrv__respond(c, 200, "application/json", NULL, body ? body : "{}", body ? strlen(body) : 2);
    free(body);
    json_decref(j);
    msrv__finish(c);
}

static void h_health(struct msrv_conn *c, struct msrv_req *req)
{
    (void)req;
    msrv__respond(c, 200, "text/plain", NULL, "ok\n", 3);
    msrv__finish(c);
}

typedef void (*route_cb)(struct msrv_conn *c, struct msrv_req *req);

static const struct route {
    const char *method;
    const char *path;
    route_cb handler;
} routes[] = {
    { "POST", "/v1/messages", h_messages },
    { "GET", "/stats", h_stats },
    { "GET", "/stats/requests", h_stats_requests },
    { "GET", "/health", h_health },
};

void msrv__handle_request(struct msrv_conn *c)
{
    struct msrv_req *req = msrv_parser_req(c->parser);
    bool path_known = false;

    c->srv->n_http++;
    c->busy = true;
    c->keep_alive = req->keep_alive;
    c->t0_ms = wp_now_ms();
    c->ttft_ms = -1;
    c->status = 0;
    c->stream = false;
    c->turn = 0;
    c->fault = MSRV_FAULT_NONE;
    msrv_make_id(c->req_id, sizeof(c->req_id), "req", &c->srv->id_rng);
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (strcmp(routes[i].path, req->path) != 0)
            continue;
        path_known = true;
        if (strcmp(routes[i].method, req->method) == 0) {
            routes[i].handler(c, req);
            return;
        }
    }
    if (path_known)
        msrv__respond_error(c, 405, "Method not allowed", -1);
    else
        msrv__respond_error(c, 404, "Not found", -1);
    msrv__finish(c);
}
