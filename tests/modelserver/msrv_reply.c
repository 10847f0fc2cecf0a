/* msrv_reply.c - the Messages API surface: request validation, error
 * bodies, and the reply as a plan of timed SSE segments.
 *
 * A plan is built whole when the request arrives: segment 0 waits the
 * TTFT and carries message_start, the first content_block_start, a ping
 * and the first delta; every later segment waits one token interval and
 * carries one delta (plus the block stops/starts around it); the last one
 * ends with message_delta and message_stop. The server only has to walk it
 * with a timer. */
#define WP_LOG_COMPONENT "msrv"
#include "msrv.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/log.h"

#define TOKEN_MAX_BYTES 12
#define JSON_BYTES_PER_TOKEN 4
#define SEG_MAX (1024 * 1024)

/* ---- the request ----------------------------------------------------- */

static const char *first_text(json_t *content)
{
    if (json_is_string(content))
        return json_string_value(content);
    for (size_t i = 0; i < json_array_size(content); i++) {
        json_t *b = json_array_get(content, i);
        const char *t = json_string_value(json_object_get(b, "type"));
        if (t && strcmp(t, "text") == 0 && json_is_string(json_object_get(b, "text")))
            return json_string_value(json_object_get(b, "text"));
    }
    return NULL;
}

int msrv_msgreq_parse(const char *body, size_t len, struct msrv_msgreq *out,
                      struct wp_err *err)
{
    json_error_t jerr;
    json_t *root, *v, *msgs;
    int rc = WP_EINVAL_INPUT;

    memset(out, 0, sizeof(*out));
    out->first_user = "";
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return wp_err_set(err, rc, "There was an issue with the JSON body: %s", jerr.text);
    if (!json_is_object(root)) {
        wp_err_set(err, rc, "Request body must be a JSON object");
        goto fail;
    }
    v = json_object_get(root, "model");
    if (!json_is_string(v) || json_string_length(v) == 0) {
        wp_err_set(err, rc, "model: Field required");
        goto fail;
    }
    out->model = json_string_value(v);
    v = json_object_get(root, "max_tokens");
    if (!json_is_integer(v)) {
        wp_err_set(err, rc, "max_tokens: Field required");
        goto fail;
    }
    out->max_tokens = (long)json_integer_value(v);
    if (out->max_tokens < 1) {
        wp_err_set(err, rc, "max_tokens: Input should be greater than or equal to 1");
        goto fail;
    }
    v = json_object_get(root, "stream");
    if (v && !json_is_boolean(v)) {
        wp_err_set(err, rc, "stream: Input should be a valid boolean");
        goto fail;
    }
    out->stream = json_is_true(v);
    msgs = json_object_get(root, "messages");
    if (!json_is_array(msgs)) {
        wp_err_set(err, rc, "messages: Field required");
        goto fail;
    }
    if (json_array_size(msgs) == 0) {
        wp_err_set(err, rc, "messages: at least one message is required");
        goto fail;
    }
    for (size_t i = 0; i < json_array_size(msgs); i++) {
        json_t *m = json_array_get(msgs, i);
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *content = json_object_get(m, "content");

        if (!role || (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0)) {
            wp_err_set(err, rc, "messages.%zu.role: Input should be 'user' or 'assistant'", i);
            goto fail;
        }
        if (!json_is_string(content) && !json_is_array(content)) {
            wp_err_set(err, rc, "messages.%zu.content: Field required", i);
            goto fail;
        }
        for (size_t k = 0; json_is_array(content) && k < json_array_size(content); k++) {
            json_t *b = json_array_get(content, k);
            const char *t = json_string_value(json_object_get(b, "type"));
            if (!t) {
                wp_err_set(err, rc, "messages.%zu.content.%zu.type: Field required", i, k);
                goto fail;
            }
            if (strcmp(t, "tool_result") == 0)
                out->n_tool_results++;
        }
        if (role[0] == 'a') {
            out->n_assistant++;
        } else if (out->first_user[0] == '\0') {
            const char *t = first_text(content);
            if (t)
                out->first_user = t;
        }
    }
    out->input_tokens = (long)(len / 4) + 1;
    out->root = root;
    return 0;
fail:
    json_decref(root);
    memset(out, 0, sizeof(*out));
    out->first_user = "";
    return rc;
}

void msrv_msgreq_free(struct msrv_msgreq *r)
{
    json_decref(r->root);
    r->root = NULL;
}

/* ---- errors and ids ------------------------------------------------- */

const char *msrv_error_type(int status)
{
    switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 529: return "overloaded_error";
    default: return status >= 500 ? "api_error" : "invalid_request_error";
    }
}

char *msrv_error_body(const char *type, const char *msg, const char *request_id)
{
    json_t *j = json_pack("{s:s, s:{s:s, s:s}, s:s}", "type", "error", "error", "type", type,
                          "message", msg, "request_id", request_id ? request_id : "");
    char *s;

    if (!j)
        return NULL;
    s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    return s;
}

void msrv_make_id(char *out, size_t cap, const char *prefix, struct msrv_rng *rng)
{
    static const char alnum[] =
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    size_t n = (size_t)snprintf(out, cap, "%s_", prefix);

    for (int i = 0; i < 24 && n + 1 < cap; i++)
        out[n++] = alnum[msrv_rng_next(rng) % (sizeof(alnum) - 1)];
    if (n < cap)
        out[n] = '\0';
}

/* ---- the plan -------------------------------------------------------- */

struct builder {
    struct msrv_plan *plan;
    struct wp_buf cur;
    double cur_delay;
    bool cur_has_delta;
    double interval_ms;
    long budget; /* tokens left under max_tokens */
    bool truncated; /* max_tokens cut the reply */
    int rc;
};

/* Steals data. */
static void emit(struct builder *b, const char *event, json_t *data)
{
    char *s;

    if (!data) {
        b->rc = -ENOMEM;
        return;
    }
    s = json_dumps(data, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(data);
    if (!s || wp_buf_printf(&b->cur, "event: %s\ndata: %s\n\n", event, s) < 0)
        b->rc = -ENOMEM;
    free(s);
}

static void flush(struct builder *b)
{
    struct msrv_plan *p = b->plan;

    if (b->cur.len == 0)
        return;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16;
        struct msrv_seg *s = realloc(p->segs, cap * sizeof(*s));
        if (!s) {
            b->rc = -ENOMEM;
            return;
        }
        p->segs = s;
        p->cap = cap;
    }
    p->segs[p->n].delay_ms = b->cur_delay;
    p->segs[p->n].data = wp_buf_steal(&b->cur, &p->segs[p->n].len);
    p->total_ms += b->cur_delay;
    p->n++;
    b->cur_delay = b->interval_ms;
    b->cur_has_delta = false;
}

/* One content_block_delta: a new segment unless the current one has none
 * yet (the first segment, or one that only holds block boundaries). */
static void delta(struct builder *b, size_t index, json_t *d)
{
    if (b->cur_has_delta)
        flush(b);
    emit(b, "content_block_delta",
         json_pack("{s:s, s:i, s:o}", "type", "content_block_delta", "index", (int)index,
                   "delta", d));
    b->cur_has_delta = true;
}

static size_t token_len(const char *s, size_t len)
{
    size_t i = 0;

    while (i < len && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r'))
        i++;
    while (i < len && i < TOKEN_MAX_BYTES && s[i] != ' ' && s[i] != '\n' && s[i] != '\t')
        i++;
    while (i < len && ((unsigned char)s[i] & 0xC0) == 0x80) /* keep UTF-8 whole */
        i++;
    return i ? i : len;
}

/* Stream text or thinking in chunk_tokens-token deltas. Returns the text
 * actually sent (may be cut by max_tokens), caller-owned. */
static char *stream_text(struct builder *b, const struct msrv_config *cfg, size_t index,
                         const char *text, bool thinking)
{
    size_t len = strlen(text), off = 0;

    while (off < len && b->budget > 0) {
        size_t start = off;
        for (int t = 0; t < cfg->chunk_tokens && off < len && b->budget > 0; t++) {
            off += token_len(text + off, len - off);
            b->budget--;
            b->plan->output_tokens++;
        }
        delta(b, index,
              thinking ? json_pack("{s:s, s:s%}", "type", "thinking_delta", "thinking",
                                   text + start, off - start)
                       : json_pack("{s:s, s:s%}", "type", "text_delta", "text",
                                   text + start, off - start));
    }
    if (off < len)
        b->truncated = true;
    return strndup(text, off);
}

static json_t *tool_input(const char *json, size_t len)
{
    json_t *j = json_loadb(json, len, 0, NULL);

    if (json_is_object(j))
        return j;
    json_decref(j);
    return json_object();
}

static void add_block(struct builder *b, const struct msrv_config *cfg,
                      const struct msrv_block *blk, size_t index, struct msrv_rng *rng,
                      json_t *content)
{
    char id[40], sig[40];

    switch (blk->kind) {
    case MSRV_BLOCK_TEXT: {
        char *sent;
        emit(b, "content_block_start",
             json_pack("{s:s, s:i, s:{s:s, s:s}}", "type", "content_block_start", "index",
                       (int)index, "content_block", "type", "text", "text", ""));
        if (index == 0)
            emit(b, "ping", json_pack("{s:s}", "type", "ping"));
        sent = stream_text(b, cfg, index, blk->text, false);
        json_array_append_new(content, json_pack("{s:s, s:s}", "type", "text", "text",
                                                 sent ? sent : ""));
        free(sent);
        break;
    }
    case MSRV_BLOCK_THINKING: {
        char *sent;
        msrv_make_id(sig, sizeof(sig), "sig", rng);
        emit(b, "content_block_start",
             json_pack("{s:s, s:i, s:{s:s, s:s, s:s}}", "type", "content_block_start",
                       "index", (int)index, "content_block", "type", "thinking", "thinking",
                       "", "signature", ""));
        if (index == 0)
            emit(b, "ping", json_pack("{s:s}", "type", "ping"));
        sent = stream_text(b, cfg, index, blk->text, true);
        emit(b, "content_block_delta",
             json_pack("{s:s, s:i, s:{s:s, s:s}}", "type", "content_block_delta", "index",
                       (int)index, "delta", "type", "signature_delta", "signature", sig));
        json_array_append_new(content,
                              json_pack("{s:s, s:s, s:s}", "type", "thinking", "thinking",
                                        sent ? sent : "", "signature", sig));
        free(sent);
        break;
    }
    case MSRV_BLOCK_TOOL_USE: {
        size_t len = strlen(blk->text), off = 0;
        size_t piece = (size_t)cfg->chunk_tokens * JSON_BYTES_PER_TOKEN;
        if (blk->id)
            snprintf(id, sizeof(id), "%s", blk->id);
        else
            msrv_make_id(id, sizeof(id), "toolu", rng);
        emit(b, "content_block_start",
             json_pack("{s:s, s:i, s:{s:s, s:s, s:s, s:{}}}", "type", "content_block_start",
                       "index", (int)index, "content_block", "type", "tool_use", "id", id,
                       "name", blk->name, "input"));
        if (index == 0)
            emit(b, "ping", json_pack("{s:s}", "type", "ping"));
        /* The API opens every tool input with an empty piece. */
        emit(b, "content_block_delta",
             json_pack("{s:s, s:i, s:{s:s, s:s}}", "type", "content_block_delta", "index",
                       (int)index, "delta", "type", "input_json_delta", "partial_json", ""));
        while (off < len && b->budget > 0) {
            size_t n = len - off < piece ? len - off : piece;
            delta(b, index,
                  json_pack("{s:s, s:s%}", "type", "input_json_delta", "partial_json",
                            blk->text + off, n));
            off += n;
            b->budget -= (long)cfg->chunk_tokens;
            b->plan->output_tokens += cfg->chunk_tokens;
        }
        if (off < len)
            b->truncated = true;
        json_array_append_new(content, json_pack("{s:s, s:s, s:s, s:o}", "type", "tool_use",
                                                 "id", id, "name", blk->name, "input",
                                                 tool_input(blk->text, off)));
        break;
    }
    }
    emit(b, "content_block_stop",
         json_pack("{s:s, s:i}", "type", "content_block_stop", "index", (int)index));
}

int msrv_plan_build(const struct msrv_config *cfg, const struct msrv_turn *turn,
                    const struct msrv_msgreq *req, struct msrv_rng *rng,
                    struct msrv_plan *plan, struct wp_err *err)
{
    struct builder b = { .plan = plan };
    struct msrv_block dflt = { .kind = MSRV_BLOCK_TEXT, .text = cfg->text };
    const struct msrv_block *blocks = turn ? turn->blocks : &dflt;
    size_t n = turn ? turn->n_blocks : 1;
    bool has_tool = false;
    json_t *content = json_array(), *usage;
    /* input_tokens counts only what was neither read from nor written to
     * the prompt cache, as the API reports it. */
    json_int_t uncached = req->input_tokens - req->cache_read - req->cache_created;
    if (uncached < 1)
        uncached = 1;

    memset(plan, 0, sizeof(*plan));
    wp_buf_init(&b.cur, SEG_MAX);
    b.interval_ms = cfg->tokens_per_s > 0 ? 1000.0 * cfg->chunk_tokens / cfg->tokens_per_s : 0;
    b.budget = req->max_tokens;
    msrv_make_id(plan->msg_id, sizeof(plan->msg_id), "msg", rng);
    plan->ttft_ms = msrv_dist_sample(turn && turn->has_ttft ? &turn->ttft : &cfg->ttft, rng);
    b.cur_delay = plan->ttft_ms;
    if (!content)
        return wp_err_set(err, -ENOMEM, "plan");

    emit(&b, "message_start",
         json_pack("{s:s, s:{s:s, s:s, s:s, s:s, s:[], s:n, s:n, s:{s:I, s:I, s:I, s:i}}}",
                   "type", "message_start", "message", "id", plan->msg_id, "type", "message",
                   "role", "assistant", "model", req->model ? req->model : "", "content",
                   "stop_reason", "stop_sequence", "usage", "input_tokens", uncached,
                   "cache_creation_input_tokens", (json_int_t)req->cache_created,
                   "cache_read_input_tokens", (json_int_t)req->cache_read, "output_tokens", 1));
    if (n == 0)
        emit(&b, "ping", json_pack("{s:s}", "type", "ping"));
    for (size_t i = 0; i < n; i++) {
        if (b.budget <= 0) {
            b.truncated = true;
            break;
        }
        add_block(&b, cfg, &blocks[i], i, rng, content);
        has_tool |= blocks[i].kind == MSRV_BLOCK_TOOL_USE;
    }
    if (b.truncated)
        snprintf(plan->stop_reason, sizeof(plan->stop_reason), "max_tokens");
    else if (turn && turn->stop_reason[0])
        snprintf(plan->stop_reason, sizeof(plan->stop_reason), "%s", turn->stop_reason);
    else
        snprintf(plan->stop_reason, sizeof(plan->stop_reason), "%s",
                 has_tool ? "tool_use" : "end_turn");
    emit(&b, "message_delta",
         json_pack("{s:s, s:{s:s, s:n}, s:{s:I}}", "type", "message_delta", "delta",
                   "stop_reason", plan->stop_reason, "stop_sequence", "usage", "output_tokens",
                   (json_int_t)plan->output_tokens));
    emit(&b, "message_stop", json_pack("{s:s}", "type", "message_stop"));
    flush(&b);
    wp_buf_free(&b.cur);

    usage = json_pack("{s:I, s:I, s:I, s:I}", "input_tokens", uncached,
                      "cache_creation_input_tokens", (json_int_t)req->cache_created,
                      "cache_read_input_tokens", (json_int_t)req->cache_read, "output_tokens",
                      (json_int_t)plan->output_tokens);
    plan->message = json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:n, s:o}", "id", plan->msg_id,
                              "type", "message", "role", "assistant", "model",
                              req->model ? req->model : "", "content", content, "stop_reason",
                              plan->stop_reason, "stop_sequence", "usage", usage);
    if (b.rc < 0 || !plan->message) {
        msrv_plan_free(plan);
        return wp_err_set(err, -ENOMEM, "plan");
    }
    return 0;
}

void msrv_plan_free(struct msrv_plan *plan)
{
    for (size_t i = 0; i < plan->n; i++)
        free(plan->segs[i].data);
    free(plan->segs);
    json_decref(plan->message);
    memset(plan, 0, sizeof(*plan));
}
