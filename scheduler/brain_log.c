/* brain_log.c - the brain's pure half: what a session's log says is
 * pending, and the model request the log implies. No I/O, no loop: brain.c
 * feeds it the log (an array of event objects with "type" and "id") and
 * acts on the answer; tests/unit/test_brain_log.c checks it directly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/brain_int.h"

static int pend_find(struct sched_brain_state *d, const char *id)
{
    for (int i = 0; i < d->npend; i++)
        if (strcmp(d->pend[i].id, id) == 0)
            return i;
    return -1;
}

static void pend_del(struct sched_brain_state *d, const char *id)
{
    int i = pend_find(d, id);
    if (i < 0)
        return;
    d->pend[i] = d->pend[--d->npend];
    d->idle_for_pending = false;
    if (d->npend == 0)
        d->awaiting_model = true;
}

const char *sched__brain_policy(json_t *agent, const char *tool)
{
    size_t i, j;
    json_t *t, *c;
    json_array_foreach(json_object_get(agent, "tools"), i, t) {
        if (strcmp(json_string_value(json_object_get(t, "type")) ?: "", "agent_toolset_20260401"))
            continue;
        const char *pol = json_string_value(json_object_get(
            json_object_get(json_object_get(t, "default_config"), "permission_policy"), "type"));
        json_array_foreach(json_object_get(t, "configs"), j, c) {
            if (!strcmp(json_string_value(json_object_get(c, "name")) ?: "", tool)) {
                const char *p = json_string_value(
                    json_object_get(json_object_get(c, "permission_policy"), "type"));
                if (p)
                    pol = p;
            }
        }
        return pol ? pol : "always_allow";
    }
    return "always_allow";
}

const char *sched__brain_mcp_config(json_t *agent, const char *server, const char *tool, bool *enabled)
{
    size_t i, j;
    json_t *t, *c;
    const char *pol = NULL;
    bool on = false;
    json_array_foreach(json_object_get(agent, "tools"), i, t) {
        if (strcmp(json_string_value(json_object_get(t, "type")) ?: "", "mcp_toolset") ||
            strcmp(json_string_value(json_object_get(t, "mcp_server_name")) ?: "", server))
            continue;
        json_t *dc = json_object_get(t, "default_config");
        on = !json_is_false(json_object_get(dc, "enabled"));
        pol = json_string_value(json_object_get(json_object_get(dc, "permission_policy"), "type"));
        json_array_foreach(json_object_get(t, "configs"), j, c) {
            if (strcmp(json_string_value(json_object_get(c, "name")) ?: "", tool))
                continue;
            if (json_is_boolean(json_object_get(c, "enabled")))
                on = json_is_true(json_object_get(c, "enabled"));
            const char *p = json_string_value(json_object_get(json_object_get(c, "permission_policy"), "type"));
            if (p)
                pol = p;
        }
        break;
    }
    if (enabled)
        *enabled = on;
    return pol ? pol : "always_allow";
}

void sched__brain_derive(json_t *log, bool self_hosted, struct sched_brain_state *d)
{
    size_t i;
    json_t *e;
    memset(d, 0, sizeof(*d));
    json_array_foreach(log, i, e) {
        const char *t = json_string_value(json_object_get(e, "type")) ?: "";
        const char *id = json_string_value(json_object_get(e, "id")) ?: "";
        if (!strcmp(t, "user.message") || !strcmp(t, "user.define_outcome") ||
            !strcmp(t, "system.message")) {
            d->turn_active = d->awaiting_model = true;
            for (int k = d->npend - 1; k >= 0; k--) /* a new message drops unanswered externals */
                if (d->pend[k].kind == 1)
                    d->pend[k] = d->pend[--d->npend];
        } else if (!strcmp(t, "user.interrupt")) {
            if (d->turn_active)
                d->interrupted = true;
        } else if (!strcmp(t, "span.model_request_start")) {
            d->model_open = true;
            snprintf(d->open_span, sizeof(d->open_span), "%s", id);
        } else if (!strcmp(t, "span.model_request_end")) {
            d->model_open = false;
            if (!json_is_true(json_object_get(e, "is_error")))
                d->awaiting_model = false;
        } else if (!strcmp(t, "agent.tool_use") || !strcmp(t, "agent.custom_tool_use")) {
            if (d->npend < 64) {
                struct sched_brain_pend *p = &d->pend[d->npend++];
                snprintf(p->id, sizeof(p->id), "%s", id);
                p->mcp = false;
                const char *perm = json_string_value(json_object_get(e, "evaluated_permission"));
                p->kind = (!strcmp(t, "agent.custom_tool_use") || self_hosted ||
                           (perm && !strcmp(perm, "ask")))
                              ? 1
                              : 0;
                d->idle_for_pending = false;
            }
        } else if (!strcmp(t, "agent.mcp_tool_use")) {
            /* the server runs MCP calls, self-hosted or not; ask waits for the user */
            if (d->npend < 64) {
                struct sched_brain_pend *p = &d->pend[d->npend++];
                snprintf(p->id, sizeof(p->id), "%s", id);
                const char *perm = json_string_value(json_object_get(e, "evaluated_permission"));
                p->mcp = true;
                p->kind = perm && !strcmp(perm, "ask") ? 1 : 0;
                d->idle_for_pending = false;
            }
        } else if (!strcmp(t, "agent.mcp_tool_result")) {
            pend_del(d, json_string_value(json_object_get(e, "mcp_tool_use_id")) ?: "");
        } else if (!strcmp(t, "agent.tool_result") || !strcmp(t, "user.tool_result")) {
            pend_del(d, json_string_value(json_object_get(e, "tool_use_id")) ?: "");
        } else if (!strcmp(t, "user.custom_tool_result")) {
            pend_del(d, json_string_value(json_object_get(e, "custom_tool_use_id")) ?: "");
        } else if (!strcmp(t, "user.tool_confirmation")) {
            const char *tu = json_string_value(json_object_get(e, "tool_use_id")) ?: "";
            int k = pend_find(d, tu);
            if (k >= 0) {
                if (!strcmp(json_string_value(json_object_get(e, "result")) ?: "", "allow")) {
                    if (!self_hosted || d->pend[k].mcp)
                        d->pend[k].kind = 0; /* we run it now */
                } else {
                    pend_del(d, tu); /* a denial is the call's result */
                }
            }
        } else if (!strcmp(t, "session.status_idle")) {
            const char *sr = json_string_value(
                json_object_get(json_object_get(e, "stop_reason"), "type")) ?: "";
            d->running = false;
            if (!strcmp(sr, "requires_action")) {
                d->idle_for_pending = true;
            } else {
                d->turn_active = d->awaiting_model = d->interrupted = false;
                d->npend = 0;
            }
        } else if (!strcmp(t, "session.status_running")) {
            d->running = true;
        }
    }
}

/* ---- the model request from the log ------------------------------------ */

static const char *const builtin_tools[] = { "bash", "read", "write", "edit", "glob", "grep", NULL };

bool sched__brain_builtin(const char *name)
{
    for (int i = 0; builtin_tools[i]; i++)
        if (!strcmp(builtin_tools[i], name))
            return true;
    return false;
}

bool sched__brain_tool_enabled(json_t *agent, const char *name)
{
    size_t i, j;
    json_t *t, *c;
    json_array_foreach(json_object_get(agent, "tools"), i, t) {
        if (strcmp(json_string_value(json_object_get(t, "type")) ?: "", "agent_toolset_20260401"))
            continue;
        json_t *dc = json_object_get(json_object_get(t, "default_config"), "enabled");
        bool on = !json_is_false(dc);
        json_array_foreach(json_object_get(t, "configs"), j, c)
            if (!strcmp(json_string_value(json_object_get(c, "name")) ?: "", name) &&
                json_is_boolean(json_object_get(c, "enabled")))
                on = json_is_true(json_object_get(c, "enabled"));
        return on;
    }
    return false;
}

json_t *sched__brain_tool_defs(json_t *agent)
{
    static const char *const schemas[] = {
        "{\"type\":\"object\",\"properties\":{\"command\":{\"type\":\"string\"},\"restart\":{\"type\":\"boolean\"},\"timeout_ms\":{\"type\":\"integer\"}}}",
        "{\"type\":\"object\",\"properties\":{\"file_path\":{\"type\":\"string\"},\"view_range\":{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}},\"required\":[\"file_path\"]}",
        "{\"type\":\"object\",\"properties\":{\"file_path\":{\"type\":\"string\"},\"content\":{\"type\":\"string\"}},\"required\":[\"file_path\",\"content\"]}",
        "{\"type\":\"object\",\"properties\":{\"file_path\":{\"type\":\"string\"},\"old_string\":{\"type\":\"string\"},\"new_string\":{\"type\":\"string\"},\"replace_all\":{\"type\":\"boolean\"}},\"required\":[\"file_path\",\"old_string\",\"new_string\"]}",
        "{\"type\":\"object\",\"properties\":{\"pattern\":{\"type\":\"string\"},\"path\":{\"type\":\"string\"}},\"required\":[\"pattern\"]}",
        "{\"type\":\"object\",\"properties\":{\"pattern\":{\"type\":\"string\"},\"path\":{\"type\":\"string\"}},\"required\":[\"pattern\"]}",
    };
    static const char *const descs[] = {
        "Run a command in a persistent bash shell in the sandbox.",
        "Read a text file.",
        "Write a file (creates parent directories).",
        "Replace an exact string in a file.",
        "Find files by glob pattern.",
        "Search file contents with a regular expression.",
    };
    json_t *out = json_array();
    for (int i = 0; builtin_tools[i]; i++) {
        if (!sched__brain_tool_enabled(agent, builtin_tools[i]))
            continue;
        json_array_append_new(out, json_pack("{s:s, s:s, s:o}", "name", builtin_tools[i],
                                             "description", descs[i], "input_schema",
                                             json_loads(schemas[i], 0, NULL)));
    }
    size_t k;
    json_t *t;
    json_array_foreach(json_object_get(agent, "tools"), k, t) {
        if (strcmp(json_string_value(json_object_get(t, "type")) ?: "", "custom"))
            continue;
        json_t *d = json_pack("{s:O, s:O}", "name", json_object_get(t, "name"), "input_schema",
                              json_object_get(t, "input_schema"));
        if (d && json_is_string(json_object_get(t, "description")))
            json_object_set(d, "description", json_object_get(t, "description"));
        if (d)
            json_array_append_new(out, d);
    }
    return out;
}

/* Append content to the conversation, merging into the last message when
 * it has the same role (the API wants roles to alternate). */
static void conv_add(json_t *msgs, const char *role, json_t *block /* stolen */)
{
    json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
    if (!last || strcmp(json_string_value(json_object_get(last, "role")), role)) {
        last = json_pack("{s:s, s:[]}", "role", role, "content");
        json_array_append_new(msgs, last);
    }
    json_t *content = json_object_get(last, "content");
    /* tool results go first in a user message */
    if (!strcmp(json_string_value(json_object_get(block, "type")) ?: "", "tool_result")) {
        size_t pos = 0;
        while (pos < json_array_size(content) &&
               !strcmp(json_string_value(json_object_get(json_array_get(content, pos), "type")) ?: "",
                       "tool_result"))
            pos++;
        json_array_insert_new(content, pos, block);
    } else {
        json_array_append_new(content, block);
    }
}

static json_t *result_blocks(json_t *content, const char *fallback)
{
    json_t *out = json_array();
    size_t i;
    json_t *c;
    json_array_foreach(content, i, c) {
        const char *ty = json_string_value(json_object_get(c, "type")) ?: "";
        if (!strcmp(ty, "text") || !strcmp(ty, "image") || !strcmp(ty, "document"))
            json_array_append(out, c);
    }
    if (json_array_size(out) == 0 && fallback)
        json_array_append_new(out, json_pack("{s:s, s:s}", "type", "text", "text", fallback));
    return out;
}

/* Every tool_use in the last assistant message needs a result before the
 * conversation goes on; calls left unanswered (an interrupt, a message
 * sent instead of a custom tool result) get an error result. */
static void close_open_uses(json_t *msgs, json_t *answered)
{
    json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
    if (!last || strcmp(json_string_value(json_object_get(last, "role")), "assistant"))
        return;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(last, "content"), i, c) {
        const char *id = json_string_value(json_object_get(c, "id"));
        if (strcmp(json_string_value(json_object_get(c, "type")) ?: "", "tool_use") || !id ||
            json_object_get(answered, id))
            continue;
        json_object_set_new(answered, id, json_true());
        conv_add(msgs, "user",
                 json_pack("{s:s, s:s, s:b, s:[{s:s, s:s}]}", "type", "tool_result", "tool_use_id",
                           id, "is_error", 1, "content", "type", "text", "text",
                           "the tool call was interrupted and did not complete"));
    }
}

json_t *sched__brain_request(json_t *log, json_t *agent, int max_tokens)
{
    json_t *msgs = json_array(), *answered = json_object();
    size_t i;
    json_t *e;
    json_array_foreach(log, i, e) {
        const char *t = json_string_value(json_object_get(e, "type")) ?: "";
        const char *id = json_string_value(json_object_get(e, "id")) ?: "";
        if (!strcmp(t, "user.message") || !strcmp(t, "system.message")) {
            close_open_uses(msgs, answered);
            size_t k;
            json_t *c;
            json_array_foreach(json_object_get(e, "content"), k, c) {
                if (!strcmp(t, "system.message"))
                    conv_add(msgs, "user",
                             json_pack("{s:s, s:s++}", "type", "text", "text", "[system] ",
                                       json_string_value(json_object_get(c, "text")) ?: ""));
                else if (strcmp(json_string_value(json_object_get(c, "type")) ?: "", "redacted"))
                    conv_add(msgs, "user", json_deep_copy(c));
            }
        } else if (!strcmp(t, "user.define_outcome")) {
            close_open_uses(msgs, answered);
            conv_add(msgs, "user",
                     json_pack("{s:s, s:s}", "type", "text", "text",
                               json_string_value(json_object_get(e, "description")) ?: ""));
        } else if (!strcmp(t, "agent.message")) {
            size_t k;
            json_t *c;
            json_array_foreach(json_object_get(e, "content"), k, c)
                if (!strcmp(json_string_value(json_object_get(c, "type")) ?: "", "text") &&
                    json_string_length(json_object_get(c, "text")) > 0)
                    conv_add(msgs, "assistant", json_deep_copy(c));
        } else if (!strcmp(t, "agent.tool_use") || !strcmp(t, "agent.custom_tool_use") ||
                   !strcmp(t, "agent.mcp_tool_use")) {
            conv_add(msgs, "assistant",
                     json_pack("{s:s, s:s, s:O, s:O}", "type", "tool_use", "id", id, "name",
                               json_object_get(e, "name"), "input", json_object_get(e, "input")));
        } else if (!strcmp(t, "agent.tool_result") || !strcmp(t, "user.tool_result") ||
                   !strcmp(t, "user.custom_tool_result") || !strcmp(t, "agent.mcp_tool_result") ||
                   (!strcmp(t, "user.tool_confirmation") &&
                    strcmp(json_string_value(json_object_get(e, "result")) ?: "", "allow"))) {
            const char *use = json_string_value(json_object_get(
                e, !strcmp(t, "user.custom_tool_result")  ? "custom_tool_use_id"
                   : !strcmp(t, "agent.mcp_tool_result") ? "mcp_tool_use_id"
                                                          : "tool_use_id"));
            if (!use || json_object_get(answered, use))
                continue;
            json_object_set_new(answered, use, json_true());
            bool denied = !strcmp(t, "user.tool_confirmation");
            const char *why = denied ? (json_string_value(json_object_get(e, "deny_message"))
                                            ?: "the user denied this tool call")
                                     : "(no output)";
            conv_add(msgs, "user",
                     json_pack("{s:s, s:s, s:b, s:o}", "type", "tool_result", "tool_use_id", use,
                               "is_error", denied || json_is_true(json_object_get(e, "is_error")),
                               "content",
                               result_blocks(denied ? NULL : json_object_get(e, "content"), why)));
        }
    }
    json_decref(answered);
    json_t *model = json_object_get(agent, "model");
    const char *mid = json_is_string(model) ? json_string_value(model)
                                            : json_string_value(json_object_get(model, "id"));
    json_t *req = json_pack("{s:s, s:i, s:o}", "model", mid ? mid : "claude-sonnet-4-5",
                            "max_tokens", max_tokens, "messages", msgs);
    json_t *sys = json_object_get(agent, "system");
    if (json_is_string(sys) && json_string_length(sys) > 0)
        json_object_set(req, "system", sys);
    json_t *tools = sched__brain_tool_defs(agent);
    if (json_array_size(tools))
        json_object_set_new(req, "tools", tools);
    else
        json_decref(tools);
    return req;
}

void sched__brain_cache_mark(json_t *req)
{
    json_t *msgs = json_object_get(req, "messages");
    json_t *content = json_object_get(json_array_get(msgs, json_array_size(msgs) - 1), "content");
    json_t *last = json_array_get(content, json_array_size(content) - 1);
    if (json_is_object(last))
        json_object_set_new(last, "cache_control", json_pack("{s:s}", "type", "ephemeral"));
}
