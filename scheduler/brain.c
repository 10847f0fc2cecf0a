/* brain.c - the harness loop: turns a session's log into model requests
 * and tool calls, and their results back into events.
 *
 * The brain is a function of the log. Whatever a brain knows about a
 * session it read from the session's stream (wp:events:{sid}) or wrote
 * there itself; derive() recomputes what is pending from those events
 * alone, and step() starts whatever is missing: a model request, tool
 * calls, the sandbox, a status event. A scheduler that takes a session over
 * runs the same code on the same log, so there is one path, not two.
 *
 * One brain per session in the whole cluster: the brain lease
 * wp:brain:{sid} holds a fencing token (wp:brain:fence:{sid} + 1, never
 * below Redis's clock in microseconds: see lua_acquire), and
 * every event the brain appends goes through a script that checks the
 * token first; a brain that lost its lease cannot write. Leases are renewed
 * every third of their TTL. Who runs a session:
 *   - the scheduler that appended client input kicks the session: it takes
 *     the lease when free, else publishes wp:brain:wake <sid> so the holder
 *     reads the new input;
 *   - every scheduler sweeps the active set (sessions with work to do)
 *     and takes over those whose lease has expired. The set is sharded,
 *     wp:brain:active:{0..15} by the session id's CRC16, so that no one
 *     key takes every append of a cluster; a sweep reads one shard, in
 *     turn, all of them about once a second. A session's own 'active'
 *     field (its slot, written by the same scripts as its log) is the
 *     truth; a shard entry is the index the sweep reads it through.
 *
 * On the critical path of a turn the model request and the sandbox claim
 * start in the same loop iteration; text deltas are appended as
 * event_start/event_delta entries (stream-only previews, filtered out of
 * the history) at the end of the loop iteration in which they arrived.
 */
#define WP_LOG_COMPONENT "brain"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agentlink/agentlink.h"
#include "base/log.h"
#include "base/rcluster.h"
#include "base/timeutil.h"
#include "pool/pool.h"
#include "scheduler/brain_int.h"
#include "scheduler/mcp.h"
#include "scheduler/metrics.h"
#include "scheduler/model.h"
#include "scheduler/sched_int.h"

#define BRAIN_ACTIVE_SHARDS 16
#define BRAIN_SWEEP_MAX 8 /* sessions one sweep takes over */
#define BRAIN_WAKE_CHANNEL "wp:brain:wake"
/* On the wake channel: "handover <sid>", a draining scheduler released the
 * session's lease; any other scheduler takes it at once. */
#define BRAIN_HANDOVER_PREFIX "handover "
#define BRAIN_MAX_PARTIAL_RETRIES 2
#define BRAIN_MAX_LOG 200000 /* events read into memory for one session */

struct sched_brains {
    struct sched_server *srv;
    struct sched_model *model;
    struct wp_redis *sub;    /* wake subscription */
    struct brain *list;
    struct brain *dirty;     /* brains with deltas to flush before the loop sleeps */
    ev_prepare flush;
    ev_timer sweep;
    int sweeping;            /* sweep commands Redis has not answered */
    int sweep_shard;         /* the shard the next sweep reads */
    int sweep_cur;           /* the shard being swept */
    int sweep_taken;         /* sessions this sweep took over */
    bool handing_over;       /* draining: no brain is taken here any more */
    int handovers;           /* lease releases Redis has not answered yet */
};

static void read_new(struct brain *b);
static void brain_free(struct brain *b);

/* ---- scripts ------------------------------------------------------------ */

#include "lua/scheduler/brain.h" /* its Lua scripts: lua/scheduler/brain/ (Makefile) */

/* ---- the active set --------------------------------------------------- */

static int active_shard(const char *sid)
{
    return wp_rcl_crc16(sid, strlen(sid)) % BRAIN_ACTIVE_SHARDS;
}

static void active_key(char *out, size_t cap, int shard)
{
    snprintf(out, cap, "wp:brain:active:{%d}", shard);
}

void sched__brain_active_key(char *out, size_t cap, const char *sid)
{
    active_key(out, cap, active_shard(sid));
}

/* Add sid to its shard, or bump its score (microseconds now) so that a
 * sweep that read the old score does not drop it (lua_active_drop). */
/* A session id as the API makes them: nothing else goes into a shard. */
static bool sid_ok(const char *sid)
{
    size_t l = sid ? strlen(sid) : 0;
    return l > 5 && l < 64 && !strncmp(sid, "sesn_", 5) &&
           strspn(sid, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == l;
}

void sched__brain_active_add(struct sched_server *srv, const char *sid)
{
    char key[64], score[32];
    if (!sid_ok(sid) || !srv->rds)
        return;
    sched__brain_active_key(key, sizeof(key), sid);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(score, sizeof(score), "%llu", /* below 2^53: exact as a score */
             (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
    const char *argv[] = { "ZADD", key, score, sid };
    wp_redis_argv(srv->rds, NULL, NULL, 4, argv, NULL);
}

/* ---- bookkeeping -------------------------------------------------------- */

static struct brain *find(struct sched_brains *bs, const char *sid)
{
    for (struct brain *b = bs->list; b; b = b->next)
        if (strcmp(b->sid, sid) == 0)
            return b;
    return NULL;
}

double sched__brain_since(uint64_t t0)
{
    return (double)(wp_now_ns() - t0) / 1e9;
}

struct sched_metrics *sched__brain_metrics(struct brain *b)
{
    return b->srv->metrics;
}

/* The brain stops writing: its lease is gone or the session is. In-flight
 * work is cancelled; maybe_free() frees it once nothing refers to it. */
static void brain_stop(struct brain *b, const char *why)
{
    if (b->stopped)
        return;
    b->stopped = true;
    log_info("session=%s brain stops: %s", b->sid, why);
    if (b->call) {
        sched_model_cancel(b->call);
        b->call = NULL;
    }
    ev_timer_stop(b->srv->loop, &b->renew);
    ev_timer_stop(b->srv->loop, &b->linger);
}

/* Free a stopped brain once no callback can reach it any more. Called at
 * the end of every entry point (callbacks, timers); never deeper. */
void sched__brain_maybe_free(struct brain *b)
{
    if (b->stopped && b->refs == 0 && !b->reading && !b->in_step)
        brain_free(b);
}

/* ---- appending events ------------------------------------------------- */

static void emit_cb(void *ctx, redisReply *reply)
{
    struct brain *b = ctx;
    b->refs--;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        const char *e = reply ? reply->str : "redis disconnected";
        if (!b->stopped)
            brain_stop(b, strstr(e, "GONE") ? "session deleted" : strstr(e, "STALE") ? "lease lost" : e);
    }
    sched__brain_maybe_free(b);
}

/* Append one event (fenced) and add it to the in-memory log at once, so
 * derive() sees it before Redis answers. ev is stolen; id may be "" (the
 * stream id becomes the event id). status: "" or the session's new status. */
static void emit_full(struct brain *b, json_t *ev, const char *id, const char *delta_of,
                      const char *status)
{
    if (b->stopped) {
        json_decref(ev);
        return;
    }
    const char *type = json_string_value(json_object_get(ev, "type"));
    char *js = json_dumps(ev, JSON_COMPACT | JSON_ENSURE_ASCII);
    const char *argv[] = { b->key_obj, b->key_ev, b->key_lease, b->token, status, b->sid,
                           type, id, delta_of, js ? js : "{}" };
    int rc = wp_redis_script(b->srv->rds, lua_emit, emit_cb, b, 3, 10, argv, NULL);
    /* A turn goes on: its shard entry too (the sweep keeps it while this
     * brain's lease lives, so the order of the two does not matter). */
    if (rc == 0 && status[0] && strcmp(status, "idle"))
        sched__brain_active_add(b->srv, b->sid);
    if (strcmp(type, "event_start") && strcmp(type, "event_delta")) {
        if (id[0])
            json_object_set_new(ev, "id", json_string(id));
        json_array_append(b->log, ev);
    }
    json_decref(ev); /* type points into ev: used above only */
    free(js);
    if (rc == 0)
        b->refs++;
    else
        brain_stop(b, "redis not connected");
}

void sched__brain_emit(struct brain *b, json_t *ev, const char *id)
{
    emit_full(b, ev, id ? id : "", "", "");
}

static void new_event_id(char *out, size_t cap)
{
    sched__new_id("sevt_", out, cap);
}

/* Deltas that arrived in this loop iteration go out as one event_delta,
 * before the loop sleeps (ev_prepare). */
static void flush_delta(struct brain *b)
{
    if (!b->delta_dirty || b->delta.len == 0 || b->stopped)
        return;
    b->delta_dirty = false;
    json_t *d = json_pack("{s:s, s:s, s:{s:s, s:i, s:{s:s, s:s%}}}", "type", "event_delta",
                          "event_id", b->delta_ev, "delta", "type", "content_delta", "index", 0,
                          "content", "type", "text", "text", b->delta.data, b->delta.len);
    b->delta.len = 0;
    if (!d)
        return;
    if (!b->turn_first_token) {
        b->turn_first_token = true;
        sched_metrics_observe2(sched__brain_metrics(b), SCHED_HIST_TTFT, b->pool_env[0] ? b->pool_env : "none",
                               sched__brain_tier(b), sched__brain_since(b->turn_t0));
    }
    emit_full(b, d, "", "agent.message", "");
}

static void flush_all_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)revents;
    struct sched_brains *bs = w->data;
    while (bs->dirty) {
        struct brain *b = bs->dirty;
        bs->dirty = b->dnext;
        b->dnext = NULL;
        flush_delta(b);
    }
}

static void mark_dirty(struct brain *b)
{
    if (b->delta_dirty)
        return;
    b->delta_dirty = true;
    b->dnext = b->bs->dirty;
    b->bs->dirty = b;
}

static void set_status(struct brain *b, const char *status, json_t *ev)
{
    emit_full(b, ev, "", "", status);
}

/* ---- the model call ----------------------------------------------------- */

static void blocks_reset(struct brain *b)
{
    for (int i = 0; i < b->nblocks; i++)
        wp_buf_free(&b->blocks[i].buf);
    b->nblocks = 0;
}

static struct block *block_at(struct brain *b, json_t *data)
{
    json_int_t i = json_integer_value(json_object_get(data, "index"));
    if (!json_is_integer(json_object_get(data, "index")) || i < 0 || i >= b->nblocks)
        return NULL;
    return &b->blocks[i];
}

static void usage_add(struct brain *b, json_t *u)
{
    static const char *const f[] = { "input_tokens", "output_tokens", "cache_creation_input_tokens",
                                     "cache_read_input_tokens", NULL };
    for (int i = 0; f[i]; i++) {
        json_t *v = json_object_get(u, f[i]);
        if (json_is_integer(v))
            json_object_set_new(b->usage, f[i], json_integer(json_integer_value(v)));
    }
}

static void on_model_event(void *ctx, const char *type, json_t *data)
{
    struct brain *b = ctx;
    if (b->stopped)
        return;
    if (!strcmp(type, "message_start")) {
        usage_add(b, json_object_get(json_object_get(data, "message"), "usage"));
    } else if (!strcmp(type, "content_block_start")) {
        json_t *cb = json_object_get(data, "content_block");
        const char *ty = json_string_value(json_object_get(cb, "type")) ?: "";
        if (b->nblocks >= 16 ||
            json_integer_value(json_object_get(data, "index")) != b->nblocks)
            return; /* out of order or too many: the block is ignored */
        struct block *k = &b->blocks[b->nblocks++];
        memset(k, 0, sizeof(*k));
        wp_buf_init(&k->buf, (size_t)8 << 20);
        new_event_id(k->ev_id, sizeof(k->ev_id));
        if (!strcmp(ty, "text")) {
            k->kind = 0;
            flush_delta(b);
            snprintf(b->delta_ev, sizeof(b->delta_ev), "%s", k->ev_id);
            emit_full(b,
                      json_pack("{s:s, s:{s:s, s:s}}", "type", "event_start", "event", "type",
                                "agent.message", "id", k->ev_id),
                      "", "agent.message", "");
        } else if (!strcmp(ty, "tool_use")) {
            k->kind = 1;
            snprintf(k->tool_name, sizeof(k->tool_name), "%s",
                     json_string_value(json_object_get(cb, "name")) ?: "");
        } else if (!strcmp(ty, "thinking")) {
            k->kind = 2;
            emit_full(b,
                      json_pack("{s:s, s:{s:s, s:s}}", "type", "event_start", "event", "type",
                                "agent.thinking", "id", k->ev_id),
                      "", "agent.thinking", "");
        } else {
            k->kind = 3;
        }
    } else if (!strcmp(type, "content_block_delta")) {
        struct block *k = block_at(b, data);
        json_t *d = json_object_get(data, "delta");
        const char *dt = json_string_value(json_object_get(d, "type")) ?: "";
        if (!k)
            return;
        if (k->kind == 0 && !strcmp(dt, "text_delta")) {
            json_t *tx = json_object_get(d, "text");
            wp_buf_append(&k->buf, json_string_value(tx) ?: "", json_string_length(tx));
            if (!b->call_first_token) {
                b->call_first_token = true;
                sched_metrics_observe(sched__brain_metrics(b), SCHED_HIST_MODEL_TTFT, NULL, sched__brain_since(b->call_t0));
            }
            wp_buf_append(&b->delta, json_string_value(tx) ?: "", json_string_length(tx));
            mark_dirty(b);
        } else if (k->kind == 1 && !strcmp(dt, "input_json_delta")) {
            json_t *pj = json_object_get(d, "partial_json");
            wp_buf_append(&k->buf, json_string_value(pj) ?: "", json_string_length(pj));
        }
    } else if (!strcmp(type, "content_block_stop")) {
        struct block *k = block_at(b, data);
        if (!k)
            return;
        if (k->kind == 0) {
            flush_delta(b);
            sched__brain_emit(b,
                 json_pack("{s:s, s:[{s:s, s:s%}]}", "type", "agent.message", "content", "type",
                           "text", "text", k->buf.data ? k->buf.data : "", k->buf.len),
                 k->ev_id);
        } else if (k->kind == 2) {
            sched__brain_emit(b, json_pack("{s:s}", "type", "agent.thinking"), k->ev_id);
        } else if (k->kind == 1) {
            json_error_t je;
            json_t *input = k->buf.len ? json_loadb(k->buf.data, k->buf.len, 0, &je) : json_object();
            if (!json_is_object(input)) {
                json_decref(input);
                input = json_object(); /* the model's JSON was bad: the tool says so */
                json_object_set_new(input, "_invalid_input", json_true());
            }
            bool custom = true;
            json_t *mcp_use = NULL;
            if (sched__brain_builtin(k->tool_name) && sched__brain_tool_enabled(b->agent, k->tool_name))
                custom = false;
            else if ((mcp_use = sched__brain_mcp_use(b, k->tool_name, input)))
                custom = false;
            if (mcp_use) {
                json_decref(input);
                sched__brain_emit(b, mcp_use, k->ev_id);
            } else if (custom) {
                sched__brain_emit(b, json_pack("{s:s, s:s, s:o}", "type", "agent.custom_tool_use", "name",
                                  k->tool_name, "input", input), k->ev_id);
            } else {
                const char *pol = sched__brain_policy(b->agent, k->tool_name);
                bool ask = !strcmp(pol, "always_ask");
                sched__brain_emit(b, json_pack("{s:s, s:s, s:o, s:s, s:{s:s}}", "type", "agent.tool_use", "name",
                                  k->tool_name, "input", input, "evaluated_permission",
                                  ask ? "ask" : "allow", "evaluation", "type",
                                  ask ? "always_ask" : "always_allow"),
                     k->ev_id);
            }
        }
    } else if (!strcmp(type, "message_delta")) {
        usage_add(b, json_object_get(data, "usage"));
        const char *sr = json_string_value(json_object_get(json_object_get(data, "delta"), "stop_reason"));
        if (sr)
            snprintf(b->stop_reason, sizeof(b->stop_reason), "%s", sr);
    }
    sched__brain_maybe_free(b);
}

/* model_request_id (the response's request-id, when the model answered)
 * is warmpool's addition: it joins a span to the model provider's logs and
 * lets the TTFT benchmark subtract the model's own time. */
static void span_end_id(struct brain *b, const char *span, bool is_error, const char *model_rid)
{
    json_t *u = b->usage ? json_incref(b->usage) : json_object();
    static const char *const f[] = { "input_tokens", "output_tokens", "cache_creation_input_tokens",
                                     "cache_read_input_tokens", NULL };
    for (int i = 0; f[i]; i++)
        if (!json_object_get(u, f[i]))
            json_object_set_new(u, f[i], json_integer(0));
    json_t *ev = json_pack("{s:s, s:s, s:b, s:o}", "type", "span.model_request_end",
                           "model_request_start_id", span, "is_error", is_error, "model_usage", u);
    if (ev && model_rid && *model_rid)
        json_object_set_new(ev, "model_request_id", json_string(model_rid));
    sched__brain_emit(b, ev, NULL);
}

static void span_end(struct brain *b, const char *span, bool is_error)
{
    span_end_id(b, span, is_error, NULL);
}

static const char *session_error_type(const struct sched_model_error *e)
{
    if (!strcmp(e->type, "overloaded_error") || e->http_status == 529)
        return "model_overloaded_error";
    if (!strcmp(e->type, "rate_limit_error") || e->http_status == 429)
        return "model_rate_limited_error";
    if (!strcmp(e->type, "billing_error"))
        return "billing_error";
    return "model_request_failed_error";
}

/* The turn is abandoned, as the API defines for errors whose retries are
 * used up: session.error (exhausted), then idle with retries_exhausted. */
static void turn_abandon(struct brain *b, const char *type, const char *msg)
{
    sched__brain_emit(b, json_pack("{s:s, s:{s:s, s:s, s:{s:s}}}", "type", "session.error", "error", "type",
                      type, "message", msg, "retry_status", "type", "exhausted"),
         NULL);
    set_status(b, "idle", json_pack("{s:s, s:{s:s}, s:n}", "type", "session.status_idle",
                                    "stop_reason", "type", "retries_exhausted", "stop_details"));
}

static void on_model_retry(void *ctx, int attempt, const struct sched_model_error *e, double delay_s)
{
    struct brain *b = ctx;
    (void)attempt;
    (void)delay_s;
    sched_metrics_inc(sched__brain_metrics(b), SCHED_CTR_MODEL_RETRIES, e->type);
    sched__brain_emit(b, json_pack("{s:s, s:{s:s, s:s, s:{s:s}}}", "type", "session.error", "error", "type",
                      session_error_type(e), "message", e->message, "retry_status", "type",
                      "retrying"),
         NULL);
    sched__brain_maybe_free(b);
}

static void on_model_done(void *ctx, int status, const struct sched_model_error *e)
{
    struct brain *b = ctx;
    struct sched_model_timing tm = { 0 };
    if (b->call)
        sched_model_timing(b->call, &tm); /* valid until this callback returns */
    b->call = NULL;
    flush_delta(b);
    sched_metrics_observe(sched__brain_metrics(b), SCHED_HIST_MODEL, status == 0 ? "ok" : "error",
                          sched__brain_since(b->call_t0));
    if (b->stopped) {
        sched__brain_maybe_free(b);
        return;
    }
    if (status == 0) {
        b->partial_failures = 0;
        span_end_id(b, b->span_id, false, tm.request_id);
    } else {
        log_warn("session=%s model request failed: %s %s%s", b->sid, e->type, e->message,
                 e->partial ? " (mid-stream)" : "");
        span_end_id(b, b->span_id, true, tm.request_id);
        if (!(e->partial && e->retryable && ++b->partial_failures <= BRAIN_MAX_PARTIAL_RETRIES)) {
            /* Retries are used up (the client retried what it could before
             * any event): the turn is abandoned, as the API defines. */
            sched_metrics_inc(sched__brain_metrics(b), SCHED_CTR_MODEL_ERRORS, e->type);
            b->partial_failures = 0;
            turn_abandon(b, session_error_type(e), e->message);
        }
    }
    blocks_reset(b);
    sched__brain_step(b);
    sched__brain_maybe_free(b);
}

static void start_model(struct brain *b)
{
    static const struct sched_model_cbs cbs = { on_model_event, on_model_retry, on_model_done };
    struct wp_err err;
    if (!b->bs->model) {
        turn_abandon(b, "model_request_failed_error", "this scheduler has no model configured");
        return;
    }
    if (++b->model_rounds > b->srv->cfg.max_model_rounds) {
        turn_abandon(b, "tool_use_limit_reached_error", "too many model requests in one turn");
        return;
    }
    json_t *req = sched__brain_request(b->log, b->agent, b->srv->cfg.max_tokens);
    sched__brain_mcp_add_tools(b, req);
    if (b->srv->cfg.prompt_cache)
        sched__brain_cache_mark(req); /* after the tools: they lead the cached prefix */
    new_event_id(b->span_id, sizeof(b->span_id));
    json_decref(b->usage);
    b->usage = json_object();
    b->stop_reason[0] = '\0';
    b->call_first_token = false;
    b->call_t0 = wp_now_ns();
    if (b->sbx == SBX_READY) /* the file resources, checked while the model streams */
        sched__brain_files_ready(b, b->call_t0);
    sched__brain_emit(b, json_pack("{s:s}", "type", "span.model_request_start"), b->span_id);
    if (sched_model_stream(b->bs->model, req, &cbs, b, &b->call, &err) < 0) {
        struct sched_model_error e = { .retryable = false, .retry_after_s = -1 };
        snprintf(e.type, sizeof(e.type), "api_error");
        snprintf(e.message, sizeof(e.message), "%s", err.msg);
        json_decref(req);
        bool was = b->in_step;
        b->in_step = true; /* on_model_done must not free b under our caller */
        on_model_done(b, err.code ? err.code : -EIO, &e);
        b->in_step = was;
        return;
    }
    json_decref(req);
}

/* ---- the step ------------------------------------------------------------ */

static void linger_cb(struct ev_loop *loop, ev_timer *w, int revents);

static void node_draining_cb(void *ctx, int status, const struct wp_err *err)
{
    struct brain *b = ctx;
    (void)err;
    b->refs--;
    /* Still idle (the linger timer runs only then): give it all back now. */
    if (status == 1 && !b->stopped && ev_is_active(&b->linger) && !b->call && !b->tools) {
        log_info("session=%s sandbox=%s: its node %s drains, released at idle", b->sid,
                 b->claim.sandbox, b->claim.node);
        linger_cb(b->srv->loop, &b->linger, 0); /* frees b if nothing else refers to it */
        return;
    }
    sched__brain_maybe_free(b);
}

static void step_once(struct brain *b)
{
    struct sched_brain_state d;
    if (b->stopped || !b->loaded || b->reading || b->env_wait)
        return;
    sched__brain_derive(b->log, b->self_hosted, &d);
    ev_timer_stop(b->srv->loop, &b->linger);

    if (d.interrupted) {
        if (b->call) {
            sched_model_cancel(b->call);
            b->call = NULL;
            flush_delta(b);
            blocks_reset(b);
        }
        if (d.model_open)
            span_end(b, d.open_span, true);
        sched__brain_tools_cancel(b);
        sched__brain_mcp_cancel(b);
        /* calls the log still lists as unanswered */
        sched__brain_derive(b->log, b->self_hosted, &d);
        for (int i = 0; i < d.npend; i++)
            if (d.pend[i].kind == 0)
                sched__brain_emit(b, json_pack("{s:s, s:s, s:[{s:s, s:s}], s:b}", "type",
                                  d.pend[i].mcp ? "agent.mcp_tool_result" : "agent.tool_result",
                                  d.pend[i].mcp ? "mcp_tool_use_id" : "tool_use_id", d.pend[i].id,
                                  "content", "type", "text", "text", "interrupted", "is_error", 1),
                     NULL);
        set_status(b, "idle", json_pack("{s:s, s:{s:s}, s:n}", "type", "session.status_idle",
                                        "stop_reason", "type", "end_turn", "stop_details"));
        goto quiet;
    }
    if (b->call)
        return; /* the model is talking */
    if (d.model_open) {
        /* A request this brain does not run (an earlier brain died): close
         * it; it is retried below. */
        span_end(b, d.open_span, true);
        sched__brain_derive(b->log, b->self_hosted, &d);
    }
    if (d.turn_active && !b->self_hosted)
        sched__brain_egress_turn_start(b); /* a kept sandbox gets rotated secrets */
    if (d.turn_active && !b->self_hosted && b->sbx == SBX_NONE)
        sched__brain_claim(b); /* in parallel with the model, from the turn's start */

    bool builtin = false, external = false, mcp = false;
    for (int i = 0; i < d.npend; i++) {
        if (d.pend[i].kind == 0 && d.pend[i].mcp) {
            size_t k;
            json_t *e;
            json_array_foreach(b->log, k, e)
                if (!strcmp(json_string_value(json_object_get(e, "id")) ?: "", d.pend[i].id) &&
                    sched__brain_mcp_call(b, e))
                    mcp = true;
        } else if (d.pend[i].kind == 0) {
            builtin = true;
            size_t k;
            json_t *e;
            json_array_foreach(b->log, k, e)
                if (!strcmp(json_string_value(json_object_get(e, "id")) ?: "", d.pend[i].id))
                    sched__brain_tool_start(b, e);
        } else {
            external = true;
        }
    }
    if (builtin)
        sched__brain_tools_run(b);
    if (builtin || mcp)
        return;
    if (external) {
        if (!d.idle_for_pending) {
            json_t *ids = json_array();
            for (int i = 0; i < d.npend; i++)
                json_array_append_new(ids, json_string(d.pend[i].id));
            set_status(b, "idle", json_pack("{s:s, s:{s:s, s:o}, s:n}", "type", "session.status_idle",
                                            "stop_reason", "type", "requires_action", "event_ids",
                                            ids, "stop_details"));
        }
        goto quiet;
    }
    if (d.awaiting_model && d.turn_active) {
        if (!d.running)
            set_status(b, "running", json_pack("{s:s}", "type", "session.status_running"));
        if (!sched__brain_mcp_ready(b))
            return; /* the MCP servers' tools first; their callbacks step again */
        start_model(b);
        return;
    }
    if (d.turn_active) {
        set_status(b, "idle", json_pack("{s:s, s:{s:s}, s:n}", "type", "session.status_idle",
                                        "stop_reason", "type", "end_turn", "stop_details"));
    }
quiet:
    /* Nothing to do until input arrives: stay a while with the sandbox,
     * unless its node drains (then it goes back now, and the next turn
     * claims one elsewhere). */
    b->model_rounds = 0;
    sched__brain_mcp_turn_end(b);
    sched__brain_egress_turn_end(b);
    ev_timer_set(&b->linger, b->srv->cfg.brain_linger_s, 0.);
    ev_timer_start(b->srv->loop, &b->linger);
    if (b->sbx == SBX_READY && b->claim.node[0] && b->srv->pool &&
        pool_node_draining(b->srv->pool, b->claim.node, node_draining_cb, b, NULL) == 0)
        b->refs++;
}

/* step() may be reached again from inside itself (a tool that fails at
 * once, a sandbox that cannot come): run it again after, never nested. */
void sched__brain_step(struct brain *b)
{
    if (b->in_step) {
        b->step_again = true;
        return;
    }
    b->in_step = true;
    do {
        b->step_again = false;
        step_once(b);
    } while (b->step_again && !b->stopped);
    b->in_step = false;
}

/* ---- reading the log ---------------------------------------------------- */

static bool client_type(const char *t)
{
    return !strncmp(t, "user.", 5) || !strcmp(t, "system.message");
}

/* Entries after last_pos. On the first read everything is taken; later,
 * only what clients wrote (the brain's own events are in memory already). */
/* Take in entries of the log (an XRANGE reply), then step. */
static void ingest(struct brain *b, redisReply *reply)
{
    bool first = !b->loaded;
    bool input = false, ended = false;
    for (size_t i = 0; i < reply->elements; i++) {
        redisReply *ent = reply->element[i];
        if (ent->type != REDIS_REPLY_ARRAY || ent->elements != 2 || ent->element[1]->type != REDIS_REPLY_ARRAY)
            continue;
        const char *sid = ent->element[0]->str;
        redisReply *f = ent->element[1];
        const char *t = "", *js = NULL, *xid = NULL;
        size_t jl = 0;
        for (size_t k = 0; k + 1 < f->elements; k += 2) {
            const char *n = f->element[k]->str;
            if (!strcmp(n, "t"))
                t = f->element[k + 1]->str;
            else if (!strcmp(n, "e")) {
                js = f->element[k + 1]->str;
                jl = f->element[k + 1]->len;
            } else if (!strcmp(n, "i"))
                xid = f->element[k + 1]->str;
        }
        snprintf(b->last_pos, sizeof(b->last_pos), "%s", sid);
        if (!strcmp(t, "session.status_terminated") || !strcmp(t, "session.deleted")) {
            ended = true;
            continue;
        }
        if (!js || !strcmp(t, "event_start") || !strcmp(t, "event_delta"))
            continue;
        if (!first && !client_type(t))
            continue;
        if (json_array_size(b->log) >= BRAIN_MAX_LOG)
            continue;
        json_t *e = json_loadb(js, jl, 0, NULL);
        if (!json_is_object(e)) {
            json_decref(e);
            continue; /* not ours to repair; the API never stores such */
        }
        char id[80];
        if (xid && *xid)
            snprintf(id, sizeof(id), "%s", xid);
        else
            snprintf(id, sizeof(id), "sevt_%s", sid);
        json_object_set_new(e, "id", json_string(id));
        json_object_set_new(e, "type", json_string(t));
        json_array_append_new(b->log, e);
        if (client_type(t) && strcmp(t, "user.interrupt"))
            input = true;
    }
    b->loaded = true;
    if (ended) {
        /* Archived or deleted: the sandbox goes back, nothing more is written. */
        if (b->claim.sandbox[0] && b->srv->pool)
            pool_release(b->srv->pool, b->pool_env, b->claim.sandbox, b->claim.token, NULL, NULL, NULL);
        memset(&b->claim, 0, sizeof(b->claim));
        brain_stop(b, "session ended");
        return;
    }
    if (reply->elements >= 1000 || b->reread) {
        b->reread = false;
        read_new(b);
        return;
    }
    if (input) {
        b->turn_t0 = wp_now_ns();
        b->turn_first_token = false;
        sched_metrics_inc(sched__brain_metrics(b), SCHED_CTR_TURNS, NULL);
    }
    sched__brain_step(b);
}

static void read_cb(void *ctx, redisReply *reply)
{
    struct brain *b = ctx;
    b->reading = false;
    if (b->stopped || !reply || reply->type != REDIS_REPLY_ARRAY)
        brain_stop(b, "reading the log failed");
    else
        ingest(b, reply);
    sched__brain_maybe_free(b);
}

static void read_new(struct brain *b)
{
    if (b->stopped)
        return;
    if (b->reading) {
        b->reread = true;
        return;
    }
    char from[80];
    snprintf(from, sizeof(from), "(%s", b->last_pos);
    const char *argv[] = { "XRANGE", b->key_ev, b->last_pos[0] ? from : "-", "+", "COUNT", "1000" };
    if (wp_redis_argv(b->srv->rds, read_cb, b, 6, argv, NULL) == 0)
        b->reading = true;
    else
        brain_stop(b, "redis not connected");
}

/* ---- lease, load, life ------------------------------------------------- */

static void brain_free(struct brain *b)
{
    struct sched_brains *bs = b->bs;
    for (struct brain **pp = &bs->list; *pp; pp = &(*pp)->next)
        if (*pp == b) {
            *pp = b->next;
            break;
        }
    for (struct brain **pp = &bs->dirty; *pp; pp = &(*pp)->dnext)
        if (*pp == b) {
            *pp = b->dnext;
            break;
        }
    ev_timer_stop(b->srv->loop, &b->renew);
    ev_timer_stop(b->srv->loop, &b->linger);
    if (b->call)
        sched_model_cancel(b->call);
    b->stopped = true;
    if (b->ac) {
        struct alink_client *ac = b->ac;
        b->ac = NULL;
        alink_client_free(ac); /* in-flight calls end (tool_done sees stopped) */
    }
    while (b->tools) {
        struct btool *t = b->tools;
        b->tools = t->next;
        json_decref(t->input);
        free(t);
    }
    sched__brain_mcp_free(b);
    sched__brain_egress_free(b);
    sched__brain_files_free(b);
    blocks_reset(b);
    wp_buf_free(&b->delta);
    json_decref(b->usage);
    json_decref(b->vault_ids);
    json_decref(b->agent);
    json_decref(b->log);
    free(b);
}

static void renew_cb(void *ctx, redisReply *reply)
{
    struct brain *b = ctx;
    b->refs--;
    if (!b->stopped && (!reply || reply->type != REDIS_REPLY_INTEGER || reply->integer != 1))
        brain_stop(b, "lease lost");
    sched__brain_maybe_free(b);
}

static void renew_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct brain *b = w->data;
    char ttl[32];
    snprintf(ttl, sizeof(ttl), "%d", b->srv->cfg.brain_lease_ms);
    const char *argv[] = { b->key_lease, b->token, ttl };
    if (wp_redis_script(b->srv->rds, lua_renew, renew_cb, b, 1, 3, argv, NULL) == 0)
        b->refs++;
    if (b->sbx == SBX_READY && b->claim.sandbox[0])
        sched__brain_sandbox_renew(b);
}

/* Nothing happened for a while: give the session back (lease and sandbox). */
static void linger_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct brain *b = w->data;
    if (b->call || b->tools || sched__brain_mcp_busy(b))
        return;
    if (b->claim.sandbox[0]) {
        pool_release(b->srv->pool, b->pool_env, b->claim.sandbox, b->claim.token, NULL, NULL, NULL);
        const char *argv[] = { "HDEL", b->key_obj, "sbx_sandbox", "sbx_token", "sbx_rkey" };
        wp_redis_argv(b->srv->rds, NULL, NULL, 5, argv, NULL);
    }
    const char *argv[] = { b->key_lease, b->token, "0" };
    wp_redis_script(b->srv->rds, lua_renew, NULL, NULL, 1, 3, argv, NULL);
    log_info("session=%s brain released after %.0f s idle", b->sid, b->srv->cfg.brain_linger_s);
    brain_stop(b, "idle");
    sched__brain_maybe_free(b);
}

static const char *hfield(redisReply *r, size_t i)
{
    return i < r->elements && r->element[i]->type == REDIS_REPLY_STRING ? r->element[i]->str : NULL;
}

/* The session as the acquire script read it (fields from index 1 of its
 * reply): org, json, environment_id, self_hosted, status, archived,
 * sbx_sandbox, sbx_token, sbx_relay, sbx_node, sbx_tier, sbx_rkey.
 * Returns 0 or -1 (the brain stops). */
static int load_session(struct brain *b, redisReply *r)
{
#define F(i) hfield(r, (i) + 1)
    const char *org = F(0), *js = org ? F(1) : NULL;
    json_t *s = js ? json_loads(js, 0, NULL) : NULL;
    if (!s || !json_is_object(json_object_get(s, "agent"))) {
        json_decref(s);
        brain_stop(b, org ? "session record unreadable" : "session gone");
        return -1;
    }
    snprintf(b->org, sizeof(b->org), "%s", org);
    snprintf(b->env_id, sizeof(b->env_id), "%s", F(2) ?: "");
    b->self_hosted = F(3) && !strcmp(F(3), "1");
    b->agent = json_incref(json_object_get(s, "agent"));
    b->vault_ids = json_incref(json_object_get(s, "vault_ids"));
    size_t ri;
    json_t *rr;
    json_array_foreach(json_object_get(s, "resources"), ri, rr)
        b->has_repos |= !strcmp(json_string_value(json_object_get(rr, "type")) ?: "", "github_repository");
    json_decref(s);
    const char *sb = F(6), *tok = F(7);
    if (sb && *sb && tok && F(8) && F(9)) {
        snprintf(b->claim.sandbox, sizeof(b->claim.sandbox), "%s", sb);
        b->claim.token = strtoull(tok, NULL, 10);
        snprintf(b->claim.relay, sizeof(b->claim.relay), "%s", F(8));
        snprintf(b->claim.node, sizeof(b->claim.node), "%s", F(9));
        snprintf(b->claim.tier, sizeof(b->claim.tier), "%s", F(10) ?: "");
        snprintf(b->claim.rkey, sizeof(b->claim.rkey), "%s", F(11) ?: "");
    }
    return 0;
#undef F
}

/* The environment names the pool its sandboxes come from. Its record is in
 * another slot than the session's, so it is read beside the acquire: the
 * brain steps once it is here (env_wait). */
static void env_cb(void *ctx, redisReply *reply)
{
    struct brain *b = ctx;
    b->refs--;
    b->env_wait = false;
    json_t *env = reply && reply->type == REDIS_REPLY_STRING ? json_loads(reply->str, 0, NULL) : NULL;
    if (!env || sched__env_pool_of(env, b->pool_env, sizeof(b->pool_env)) < 0)
        b->pool_env[0] = '\0'; /* no sandbox: tools get an error result saying why */
    json_decref(env);
    if (!b->stopped && b->loaded)
        sched__brain_step(b);
    sched__brain_maybe_free(b);
}

static void read_env(struct brain *b)
{
    char kenv[200];
    if (!b->env_id[0])
        return;
    sched__key_obj(kenv, sizeof(kenv), b->org, b->env_id);
    const char *argv[] = { "HGET", kenv, "json" };
    if (wp_redis_argv(b->srv->rds, env_cb, b, 3, argv, NULL) == 0) {
        b->env_wait = true;
        b->refs++;
    }
}

static void handover_cb(void *ctx, redisReply *reply)
{
    struct sched_brains *bs = ctx;
    (void)reply;
    if (--bs->handovers == 0 && bs->srv->draining)
        sched_server_drain(bs->srv); /* it waited for these */
}

/* Stop b and give its lease back at once (the other schedulers hear it on
 * the wake channel). Its writes already sent run first: same connection. */
static void give_back(struct sched_brains *bs, struct brain *b)
{
    char msg[sizeof(BRAIN_HANDOVER_PREFIX) + sizeof(b->sid)];
    if (!b->token[0] || !bs->srv->rds)
        return;
    snprintf(msg, sizeof(msg), BRAIN_HANDOVER_PREFIX "%s", b->sid);
    const char *argv[] = { b->key_lease, b->token, msg };
    if (wp_redis_script(bs->srv->rds, lua_handover, handover_cb, bs, 1, 3, argv, NULL) == 0)
        bs->handovers++;
}

static void handover(struct sched_brains *bs, struct brain *b)
{
    bool held = b->token[0] && !b->stopped;
    brain_stop(b, "scheduler draining: lease handed over");
    if (held)
        give_back(bs, b);
}

void sched__brain_handover(struct sched_server *srv)
{
    struct sched_brains *bs = srv->brains;
    if (!bs || bs->handing_over)
        return;
    bs->handing_over = true;
    ev_timer_stop(srv->loop, &bs->sweep);
    for (struct brain *b = bs->list, *next; b; b = next) {
        next = b->next;
        handover(bs, b);
        sched__brain_maybe_free(b);
    }
}

int sched__brain_handovers(const struct sched_server *srv)
{
    return srv->brains ? srv->brains->handovers : 0;
}

static void acquire_cb(void *ctx, redisReply *reply)
{
    struct brain *b = ctx;
    struct sched_brains *bs = b->bs;
    b->reading = false;
    if (bs->handing_over && reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 14 &&
        reply->element[0]->type == REDIS_REPLY_INTEGER) {
        /* Taken while this scheduler began draining (the brain may be
         * stopped already): the lease goes straight back. */
        snprintf(b->token, sizeof(b->token), "%lld", reply->element[0]->integer);
        brain_stop(b, "scheduler draining: lease handed over");
        give_back(bs, b);
        sched__brain_maybe_free(b);
        return;
    }
    if (b->stopped || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 14 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER) {
        bool held = reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 0;
        if (held && !b->stopped) {
            /* Someone else runs it: tell them there is new input. */
            const char *argv[] = { "PUBLISH", BRAIN_WAKE_CHANNEL, b->sid };
            wp_redis_argv(bs->srv->rds, NULL, NULL, 3, argv, NULL);
        }
        b->stopped = true;
        sched__brain_maybe_free(b);
        return;
    }
    snprintf(b->token, sizeof(b->token), "%lld", reply->element[0]->integer);
    ev_timer_set(&b->renew, bs->srv->cfg.brain_lease_ms / 3000.0, bs->srv->cfg.brain_lease_ms / 3000.0);
    ev_timer_start(bs->srv->loop, &b->renew);
    log_debug("session=%s brain lease token=%s", b->sid, b->token);
    if (load_session(b, reply) == 0) {
        b->turn_t0 = wp_now_ns();
        read_env(b);
        if (reply->element[13]->type == REDIS_REPLY_ARRAY)
            ingest(b, reply->element[13]);
        else
            brain_stop(b, "reading the log failed");
    }
    sched__brain_maybe_free(b);
}

static void take(struct sched_brains *bs, const char *sid, bool takeover)
{
    char ttl[32], kfence[200];
    struct brain *b = calloc(1, sizeof(*b));
    if (!b)
        return;
    b->bs = bs;
    b->srv = bs->srv;
    b->mcp_hub = sched__mcp_hub(bs->srv);
    snprintf(b->sid, sizeof(b->sid), "%s", sid);
    sched__key_obj(b->key_obj, sizeof(b->key_obj), NULL, sid);
    sched__key_events(b->key_ev, sizeof(b->key_ev), sid);
    sched__key_lease(b->key_lease, sizeof(b->key_lease), sid);
    sched__key_fence(kfence, sizeof(kfence), sid);
    b->log = json_array();
    wp_buf_init(&b->delta, (size_t)8 << 20);
    ev_timer_init(&b->renew, renew_timer_cb, 1., 1.);
    b->renew.data = b;
    ev_timer_init(&b->linger, linger_cb, 1., 0.);
    b->linger.data = b;
    b->next = bs->list;
    bs->list = b;
    if (takeover)
        sched_metrics_inc(bs->srv->metrics, SCHED_CTR_TAKEOVERS, NULL);
    snprintf(ttl, sizeof(ttl), "%d", bs->srv->cfg.brain_lease_ms);
    const char *argv[] = { b->key_lease, b->key_obj, b->key_ev, kfence, ttl };
    if (wp_redis_script(bs->srv->rds, lua_acquire, acquire_cb, b, 4, 5, argv, NULL) == 0)
        b->reading = true;
    else {
        b->stopped = true;
        sched__brain_maybe_free(b);
    }
}

void sched__brain_kick(struct sched_server *srv, const char *sid)
{
    struct sched_brains *bs = srv->brains;
    if (!bs || !sid || !*sid)
        return;
    if (bs->handing_over) {
        /* Draining: whoever holds it reads the input, else another
         * scheduler takes it (its acquire fails where it is held). */
        char msg[300];
        snprintf(msg, sizeof(msg), BRAIN_HANDOVER_PREFIX "%s", sid);
        const char *argv[] = { "PUBLISH", BRAIN_WAKE_CHANNEL, msg };
        wp_redis_argv(srv->rds, NULL, NULL, 3, argv, NULL);
        return;
    }
    struct brain *b = find(bs, sid);
    if (b) {
        if (!b->stopped)
            read_new(b);
        return;
    }
    take(bs, sid, false);
}

struct session_end {
    struct sched_server *srv;
    char org[64];
    char sid[64];
};

static void end_cb(void *ctx, redisReply *reply)
{
    struct session_end *se = ctx;
    struct sched_server *srv = se->srv;
    /* org, sbx_sandbox, sbx_token, sbx_env; only the session's own
     * organization ends it (another one gets 404 from the handler). */
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 4 && srv->pool &&
        hfield(reply, 0) && !strcmp(hfield(reply, 0), se->org)) {
        const char *sb = hfield(reply, 1), *tok = hfield(reply, 2), *env = hfield(reply, 3);
        if (sb && *sb && tok && env)
            pool_release(srv->pool, env, sb, strtoull(tok, NULL, 10), NULL, NULL, NULL);
        /* Commands sent from here on run after the caller's archive or
         * delete (one connection, in order): the brain reading the log now
         * finds the end there and stops. */
        if (srv->brains) {
            struct brain *b = find(srv->brains, se->sid);
            const char *pub[] = { "PUBLISH", BRAIN_WAKE_CHANNEL, se->sid };
            if (b && !b->stopped)
                read_new(b);
            else
                wp_redis_argv(srv->rds, NULL, NULL, 3, pub, NULL);
        }
    }
    free(se);
}

void sched__brain_session_end(struct sched_server *srv, const char *org, const char *sid)
{
    char kobj[200];
    struct session_end *se = calloc(1, sizeof(*se));
    if (!se)
        return;
    se->srv = srv;
    snprintf(se->org, sizeof(se->org), "%s", org);
    snprintf(se->sid, sizeof(se->sid), "%s", sid);
    sched__key_obj(kobj, sizeof(kobj), NULL, sid);
    /* Sent before the caller's delete on the same connection: read first. */
    const char *argv[] = { "HMGET", kobj, "org", "sbx_sandbox", "sbx_token", "sbx_env" };
    if (wp_redis_argv(srv->rds, end_cb, se, 6, argv, NULL) < 0)
        free(se);
}

static void wake_cb(void *ctx, redisReply *reply)
{
    struct sched_brains *bs = ctx;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
        reply->element[2]->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(reply->element[0]->str ?: "", "message"))
        return;
    const char *sid = reply->element[2]->str;
    if (!strncmp(sid, BRAIN_HANDOVER_PREFIX, strlen(BRAIN_HANDOVER_PREFIX))) {
        sid += strlen(BRAIN_HANDOVER_PREFIX);
        /* From Redis: an id of ours or nothing (it names keys). */
        size_t l = strlen(sid);
        if (bs->handing_over || l == 0 || l >= sizeof(((struct brain *)0)->sid) ||
            strspn(sid, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != l)
            return;
        struct brain *h = find(bs, sid);
        if (!h) {
            log_info("session=%s handed over by a draining scheduler: taking it", sid);
            take(bs, sid, true);
        } else if (!h->stopped)
            read_new(h);
        return;
    }
    struct brain *b = find(bs, sid);
    if (b && !b->stopped)
        read_new(b);
}

/* One member of the shard being swept: asked about in its own slot. */
struct sweep_item {
    struct sched_brains *bs;
    char sid[64];
    char score[32];
    int shard;
};

static void sweep_done(struct sched_brains *bs)
{
    if (--bs->sweeping == 0)
        bs->sweep_taken = 0;
}

static void orphan_cb(void *ctx, redisReply *reply)
{
    struct sweep_item *it = ctx;
    struct sched_brains *bs = it->bs;
    if (reply && reply->type == REDIS_REPLY_INTEGER && !bs->handing_over) {
        if (reply->integer == 1 && !find(bs, it->sid) && bs->sweep_taken < BRAIN_SWEEP_MAX) {
            bs->sweep_taken++;
            log_info("session=%s has no brain: taking it over", it->sid);
            take(bs, it->sid, true);
        } else if (reply->integer == -1) {
            char key[64];
            active_key(key, sizeof(key), it->shard);
            const char *argv[] = { key, it->sid, it->score };
            wp_redis_script(bs->srv->rds, lua_active_drop, NULL, NULL, 1, 3, argv, NULL);
        }
    }
    sweep_done(bs);
    free(it);
}

/* A shard's members (ZRANGE WITHSCORES): each not run here is asked about. */
static void shard_cb(void *ctx, redisReply *reply)
{
    struct sched_brains *bs = ctx;
    if (reply && reply->type == REDIS_REPLY_ARRAY) {
        int shard = bs->sweep_cur;
        for (size_t i = 0; i + 1 < reply->elements; i += 2) {
            const char *sid = reply->element[i]->str, *score = reply->element[i + 1]->str;
            /* From Redis: an id of ours or nothing (it names keys). */
            if (!sid || !sid_ok(sid) || !score || strlen(score) >= sizeof(((struct sweep_item *)0)->score)) {
                char key[64];
                active_key(key, sizeof(key), shard);
                const char *argv[] = { "ZREM", key, sid ? sid : "" };
                wp_redis_argv(bs->srv->rds, NULL, NULL, 3, argv, NULL);
                continue;
            }
            if (find(bs, sid))
                continue;
            struct sweep_item *it = calloc(1, sizeof(*it));
            if (!it)
                break;
            it->bs = bs;
            it->shard = shard;
            snprintf(it->sid, sizeof(it->sid), "%s", sid);
            snprintf(it->score, sizeof(it->score), "%s", score);
            char klease[200], kobj[200];
            sched__key_lease(klease, sizeof(klease), sid);
            sched__key_obj(kobj, sizeof(kobj), NULL, sid);
            const char *argv[] = { klease, kobj };
            if (wp_redis_script(bs->srv->rds, lua_orphan, orphan_cb, it, 2, 2, argv, NULL) == 0)
                bs->sweeping++;
            else
                free(it);
        }
    }
    sweep_done(bs);
}

static void sweep_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct sched_brains *bs = w->data;
    if (!bs->sweeping && wp_redis_ready(bs->srv->rds)) {
        char key[64];
        active_key(key, sizeof(key), bs->sweep_shard);
        const char *argv[] = { "ZRANGE", key, "0", "999", "WITHSCORES" };
        if (wp_redis_argv(bs->srv->rds, shard_cb, bs, 5, argv, NULL) == 0) {
            bs->sweeping = 1;
            bs->sweep_cur = bs->sweep_shard;
            bs->sweep_shard = (bs->sweep_shard + 1) % BRAIN_ACTIVE_SHARDS;
        }
    }
    /* Every shard about once a second; jitter so that schedulers do not
     * all sweep at once. */
    w->repeat = (0.8 + (double)(rand() % 400) / 1000.0) / BRAIN_ACTIVE_SHARDS;
    ev_timer_again(loop, w);
}

int sched__brain_init(struct sched_server *srv, struct wp_err *err)
{
    int on = srv->cfg.brain;
    if (on < 0) /* auto: a model is configured */
        on = getenv("ANTHROPIC_API_KEY") != NULL ||
             (srv->cfg.model.base_url[0] &&
              strcmp(srv->cfg.model.base_url, "https://api.anthropic.com") != 0);
    if (!on)
        return 0;
    struct sched_brains *bs = calloc(1, sizeof(*bs));
    if (!bs)
        return wp_err_set(err, -ENOMEM, "out of memory");
    bs->srv = srv;
    if (sched_model_new(srv->loop, &srv->cfg.model, &bs->model, err) < 0) {
        free(bs);
        return err ? err->code : -EIO;
    }
    bs->sub = wp_redis_new(srv->loop, srv->cfg.redis_host, srv->cfg.redis_port, "brain-wake");
    if (!bs->sub || wp_redis_subscribe(bs->sub, BRAIN_WAKE_CHANNEL, wake_cb, bs) < 0) {
        wp_redis_free(bs->sub);
        sched_model_free(bs->model);
        free(bs);
        return wp_err_set(err, -ENOMEM, "brain: redis subscription");
    }
    ev_prepare_init(&bs->flush, flush_all_cb);
    bs->flush.data = bs;
    ev_prepare_start(srv->loop, &bs->flush);
    ev_timer_init(&bs->sweep, sweep_cb, 0., 1.0 / BRAIN_ACTIVE_SHARDS);
    bs->sweep_shard = rand() % BRAIN_ACTIVE_SHARDS;
    bs->sweep.data = bs;
    ev_timer_again(srv->loop, &bs->sweep);
    srv->brains = bs;
    log_info("brain on: model %s, lease %d ms", srv->cfg.model.base_url, srv->cfg.brain_lease_ms);
    return 0;
}

void sched__brain_shutdown(struct sched_server *srv)
{
    struct sched_brains *bs = srv->brains;
    if (!bs)
        return;
    ev_prepare_stop(srv->loop, &bs->flush);
    ev_timer_stop(srv->loop, &bs->sweep);
    /* Leases were handed over when the drain began (sched__brain_handover);
     * any left here expire: another scheduler takes the sessions over from
     * their logs, and the sandboxes stay leased to them meanwhile. */
    for (struct brain *b = bs->list, *next; b; b = next) {
        next = b->next;
        brain_stop(b, "scheduler shutting down");
        sched__brain_maybe_free(b);
    }
    sched_model_free(bs->model);
    bs->model = NULL;
    for (struct brain *b = bs->list; b; b = b->next)
        sched__brain_mcp_free(b); /* before the hub their clients are on goes */
    wp_redis_free(bs->sub);
    bs->sub = NULL;
}

void sched__brain_free(struct sched_server *srv)
{
    struct sched_brains *bs = srv->brains;
    if (!bs)
        return;
    while (bs->list) {
        struct brain *b = bs->list;
        b->refs = 0;
        b->reading = b->in_step = false;
        brain_free(b);
    }
    srv->brains = NULL;
    free(bs);
}
