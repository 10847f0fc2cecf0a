/* agents.c - /v1/agents: create, retrieve (by version), update with
 * optimistic concurrency, list, archive, versions. Each version is a full
 * snapshot kept in the list wp:agentver:{<org>}:<id> (index = version - 1). */
#define WP_LOG_COMPONENT "agents"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/timeutil.h"
#include "scheduler/sched_int.h"

static const char *const create_fields[] = {
    "model", "name", "description", "system", "tools", "mcp_servers", "skills",
    "multiagent", "execution_identity", "metadata", NULL};
static const char *const update_fields[] = {
    "model", "name", "description", "system", "tools", "mcp_servers", "skills",
    "multiagent", "execution_identity", "metadata", "version", NULL};

static bool is_effort(const char *s)
{
    return s && (!strcmp(s, "low") || !strcmp(s, "medium") || !strcmp(s, "high") ||
                 !strcmp(s, "xhigh") || !strcmp(s, "max"));
}

/* Normalise model params into the response form; NULL + *msg on error.
 * stored: the previous model (update keeps its effort when omitted). */
static json_t *norm_model(json_t *m, json_t *stored, const char **msg)
{
    json_t *out;
    if (json_is_string(m)) {
        if (json_string_length(m) == 0) {
            *msg = "model must not be empty";
            return NULL;
        }
        out = json_pack("{s:O}", "id", m);
    } else if (json_is_object(m)) {
        static const char *const f[] = {"id", "effort", "inference_geo", "speed", NULL};
        const char *bad = sched__unknown_field(m, f);
        json_t *id = json_object_get(m, "id");
        if (bad) {
            *msg = "model: unknown field";
            return NULL;
        }
        if (!json_is_string(id) || json_string_length(id) == 0) {
            *msg = "model.id must be a non-empty string";
            return NULL;
        }
        out = json_pack("{s:O}", "id", id);
        json_t *eff = json_object_get(m, "effort");
        if (eff && !json_is_null(eff)) {
            const char *e = json_is_string(eff) ? json_string_value(eff)
                                                : json_string_value(json_object_get(eff, "type"));
            if (!is_effort(e)) {
                json_decref(out);
                *msg = "model.effort must be low, medium, high, xhigh or max";
                return NULL;
            }
            json_object_set_new(out, "effort", json_pack("{s:s}", "type", e));
        }
        json_t *geo = json_object_get(m, "inference_geo");
        if (geo && !json_is_null(geo)) {
            if (!json_is_string(geo)) {
                json_decref(out);
                *msg = "model.inference_geo must be a string";
                return NULL;
            }
            json_object_set(out, "inference_geo", geo);
        }
        json_t *sp = json_object_get(m, "speed");
        if (sp && !json_is_null(sp)) {
            const char *v = json_string_value(sp);
            if (!v || (strcmp(v, "standard") && strcmp(v, "fast"))) {
                json_decref(out);
                *msg = "model.speed must be standard or fast";
                return NULL;
            }
            json_object_set(out, "speed", sp);
        }
    } else {
        *msg = "model must be a string or an object";
        return NULL;
    }
    if (!json_object_get(out, "effort")) {
        json_t *old = stored ? json_object_get(stored, "effort") : NULL;
        json_object_set_new(out, "effort", old ? json_deep_copy(old) : json_pack("{s:s}", "type", "high"));
    }
    if (!json_object_get(out, "speed"))
        json_object_set_new(out, "speed", json_string("standard"));
    return out;
}

/* {enabled?: bool|null, permission_policy?: {type}|null} (+ name in configs). */
static const char *check_mcp_config(json_t *c, bool named)
{
    static const char *const f[] = { "enabled", "permission_policy", NULL };
    static const char *const fn[] = { "name", "enabled", "permission_policy", NULL };
    if (!json_is_object(c) || sched__unknown_field(c, named ? fn : f))
        return "mcp_toolset configs take name, enabled and permission_policy";
    json_t *n = json_object_get(c, "name");
    if (named && (!json_is_string(n) || json_string_length(n) < 1 || json_string_length(n) > 128))
        return "mcp_toolset configs need a name of 1 to 128 characters";
    json_t *e = json_object_get(c, "enabled");
    if (e && !json_is_null(e) && !json_is_boolean(e))
        return "mcp_toolset enabled must be a boolean";
    json_t *p = json_object_get(c, "permission_policy");
    const char *pt = json_string_value(json_object_get(p, "type"));
    if (p && !json_is_null(p) &&
        (!pt || (strcmp(pt, "always_allow") && strcmp(pt, "always_ask") && strcmp(pt, "auto"))))
        return "permission_policy.type must be always_allow, always_ask or auto";
    return NULL;
}

static const char *check_tools(json_t *tools, json_t *servers)
{
    size_t i, j;
    json_t *t, *s;
    if (!json_is_array(tools))
        return "tools must be an array";
    if (json_array_size(tools) > 256)
        return "at most 256 tools";
    json_array_foreach(tools, i, t) {
        const char *ty = json_string_value(json_object_get(t, "type"));
        if (!json_is_object(t) || !ty)
            return "each tool must be an object with a type";
        if (!strcmp(ty, "custom")) {
            if (!json_is_string(json_object_get(t, "name")) ||
                !json_is_object(json_object_get(t, "input_schema")))
                return "custom tools need name and input_schema";
        } else if (!strcmp(ty, "mcp_toolset")) {
            const char *n = json_string_value(json_object_get(t, "mcp_server_name"));
            bool found = false;
            if (!n)
                return "mcp_toolset needs mcp_server_name";
            json_array_foreach(servers, j, s)
                if (!strcmp(json_string_value(json_object_get(s, "name")) ?: "", n))
                    found = true;
            if (!found)
                return "mcp_toolset names an MCP server that is not in mcp_servers";
            static const char *const tf[] = { "type", "mcp_server_name", "default_config", "configs", NULL };
            if (sched__unknown_field(t, tf))
                return "mcp_toolset takes mcp_server_name, default_config and configs";
            json_t *dc = json_object_get(t, "default_config"), *cs = json_object_get(t, "configs");
            const char *msg;
            if (dc && !json_is_null(dc) && (msg = check_mcp_config(dc, false)))
                return msg;
            if (cs && !json_is_null(cs) && !json_is_array(cs))
                return "mcp_toolset configs must be an array";
            json_array_foreach(cs, j, s)
                if ((msg = check_mcp_config(s, true)))
                    return msg;
        } else if (strcmp(ty, "agent_toolset_20260401") != 0) {
            return "unknown tool type";
        }
    }
    return NULL;
}

static const char *check_servers(json_t *servers, json_t *tools)
{
    size_t i, j;
    json_t *s, *t;
    if (!json_is_array(servers))
        return "mcp_servers must be an array";
    if (json_array_size(servers) > 20)
        return "at most 20 mcp_servers";
    json_array_foreach(servers, i, s) {
        const char *ty = json_string_value(json_object_get(s, "type"));
        const char *n = json_string_value(json_object_get(s, "name"));
        if (!ty || strcmp(ty, "url") || !n || !n[0] || strlen(n) > 255 ||
            !json_is_string(json_object_get(s, "url")))
            return "each mcp_server needs type url, a name and a url";
        for (j = 0; j < i; j++)
            if (!strcmp(json_string_value(json_object_get(json_array_get(servers, j), "name")), n))
                return "mcp_servers names must be unique";
        bool named = false;
        json_array_foreach(tools, j, t) {
            const char *tn = json_string_value(json_object_get(t, "mcp_server_name"));
            if (tn && !strcmp(tn, n))
                named = true;
        }
        if (!named)
            return "each MCP server needs an mcp_toolset in tools";
    }
    return NULL;
}

static json_t *norm_skills(json_t *skills, const char **msg)
{
    size_t i;
    json_t *s, *out = json_array();
    if (!json_is_array(skills)) {
        *msg = "skills must be an array";
        json_decref(out);
        return NULL;
    }
    json_array_foreach(skills, i, s) {
        const char *ty = json_string_value(json_object_get(s, "type"));
        json_t *id = json_object_get(s, "skill_id");
        json_t *v = json_object_get(s, "version");
        if (!ty || (strcmp(ty, "anthropic") && strcmp(ty, "custom")) || !json_is_string(id)) {
            *msg = "each skill needs type anthropic or custom and a skill_id";
            json_decref(out);
            return NULL;
        }
        json_array_append_new(out, json_pack("{s:s,s:O,s:s}", "type", ty, "skill_id", id,
                                             "version",
                                             json_is_string(v) ? json_string_value(v) : "latest"));
    }
    return out;
}

static const char *check_identity(json_t *ei, json_t **out)
{
    if (!ei || json_is_null(ei)) {
        *out = json_pack("{s:s}", "type", "service_account");
        return NULL;
    }
    const char *ty = json_string_value(json_object_get(ei, "type"));
    if (ty && !strcmp(ty, "service_account")) {
        *out = json_pack("{s:s}", "type", "service_account");
        return NULL;
    }
    json_t *arn = json_object_get(ei, "role_arn");
    if (ty && !strcmp(ty, "aws_role") && json_is_string(arn) && json_string_length(arn) <= 2048) {
        *out = json_pack("{s:s,s:O}", "type", "aws_role", "role_arn", arn);
        return NULL;
    }
    return "execution_identity must be service_account or aws_role with role_arn";
}

static bool opt_string_or_null(json_t *v)
{
    return !v || json_is_null(v) || json_is_string(v);
}

/* Apply body fields onto agent (create: agent starts empty). Returns an
 * error message or NULL. */
static const char *apply(json_t *agent, json_t *body, bool create)
{
    const char *msg = NULL;
    json_t *v;
    v = json_object_get(body, "name");
    if (create || v) {
        if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 256)
            return "name must be a non-empty string";
        json_object_set(agent, "name", v);
    }
    static const char *const texts[] = {"description", "system"};
    for (int i = 0; i < 2; i++) {
        v = json_object_get(body, texts[i]);
        if (!opt_string_or_null(v))
            return "description and system must be strings or null";
        if (v && json_is_string(v) && json_string_length(v) == 0)
            v = NULL;
        if (create || json_object_get(body, texts[i]))
            json_object_set_new(agent, texts[i], v ? json_incref(v) : json_null());
    }
    v = json_object_get(body, "model");
    if (create && !v)
        return "model is required";
    if (v) {
        json_t *m = norm_model(v, json_object_get(agent, "model"), &msg);
        if (!m)
            return msg;
        json_object_set_new(agent, "model", m);
    }
    static const char *const lists[] = {"tools", "mcp_servers"};
    for (int i = 0; i < 2; i++) {
        v = json_object_get(body, lists[i]);
        if (v && !json_is_null(v) && !json_is_array(v))
            return "tools and mcp_servers must be arrays";
        if (create || v)
            json_object_set_new(agent, lists[i], json_is_array(v) ? json_deep_copy(v) : json_array());
    }
    if ((msg = check_tools(json_object_get(agent, "tools"), json_object_get(agent, "mcp_servers"))))
        return msg;
    if ((msg = check_servers(json_object_get(agent, "mcp_servers"), json_object_get(agent, "tools"))))
        return msg;
    v = json_object_get(body, "skills");
    if (create || v) {
        json_t *s = (v && !json_is_null(v)) ? norm_skills(v, &msg) : json_array();
        if (!s)
            return msg;
        json_object_set_new(agent, "skills", s);
    }
    v = json_object_get(body, "multiagent");
    if (create || v) {
        if (v && !json_is_null(v)) {
            const char *ty = json_string_value(json_object_get(v, "type"));
            if (!ty || (strcmp(ty, "coordinator") && strcmp(ty, "multiagent_20261001")))
                return "multiagent.type must be coordinator or multiagent_20261001";
            json_object_set(agent, "multiagent", v);
        } else {
            json_object_set_new(agent, "multiagent", json_null());
        }
    }
    v = json_object_get(body, "execution_identity");
    if (create || v) {
        json_t *ei = NULL;
        if ((msg = check_identity(v, &ei)))
            return msg;
        json_object_set_new(agent, "execution_identity", ei);
    }
    v = json_object_get(body, "metadata");
    if (create) {
        if (v && (msg = sched__check_metadata(v, false)))
            return msg;
        json_object_set_new(agent, "metadata", v ? json_deep_copy(v) : json_object());
    } else if (v) {
        if (!json_is_null(v) && (msg = sched__check_metadata(v, true)))
            return msg;
        if (json_is_null(v))
            json_object_set_new(agent, "metadata", json_object());
        else
            sched__apply_metadata_patch(json_object_get(agent, "metadata"), v, false);
        if (json_object_size(json_object_get(agent, "metadata")) > 16)
            return "metadata may have at most 16 keys";
    }
    return NULL;
}

static void noop_cb(void *ctx, redisReply *reply)
{
    (void)ctx;
    (void)reply;
}

void sched__h_agent_create(struct sched_req *req)
{
    char id[64], now[40], kver[200];
    const char *bad = sched__unknown_field(req->body, create_fields);
    if (bad) {
        sched__bad_request(req, "%s: Extra inputs are not permitted", bad);
        return;
    }
    json_t *a = json_object();
    const char *msg = apply(a, req->body, true);
    if (msg) {
        json_decref(a);
        sched__bad_request(req, "%s", msg);
        return;
    }
    uint64_t ms = wp_wall_ms();
    char msbuf[32];
    snprintf(msbuf, sizeof(msbuf), "%llu", (unsigned long long)ms);
    const char *extra[] = {"created_ms", msbuf, NULL};
    sched__new_id("agent_", id, sizeof(id));
    sched__rfc3339(ms, now, sizeof(now));
    json_object_set_new(a, "id", json_string(id));
    json_object_set_new(a, "type", json_string("agent"));
    json_object_set_new(a, "version", json_integer(1));
    json_object_set_new(a, "created_at", json_string(now));
    json_object_set_new(a, "updated_at", json_string(now));
    json_object_set_new(a, "archived_at", json_null());
    char *snap = json_dumps(a, JSON_COMPACT | JSON_ENSURE_ASCII);
    sched__key_agentver(kver, sizeof(kver), req->org, id);
    const char *argv[] = {"RPUSH", kver, snap ? snap : "{}"};
    sched__req_redis(req, noop_cb, 3, argv, NULL); /* same connection: ordered */
    free(snap);
    if (!req->answered)
        sched__obj_create(req, &sched__kind_agent, req->org, a, extra);
    else
        json_decref(a);
}

static void version_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    if (reply->type != REDIS_REPLY_STRING) {
        sched__not_found(req, "No version %s of agent %s", sched__query(req, "version"),
                         req->params[0]);
        return;
    }
    /* A version snapshot is immutable, except that archiving the agent shows on it. */
    json_t *v = json_loadb(reply->str, reply->len, 0, NULL);
    if (v && req->tmp)
        json_object_set(v, "archived_at", json_object_get(req->tmp, "archived_at"));
    sched__respond_json(req, 200, v);
}

static void get_loaded(struct sched_req *req, json_t *obj, long long rev)
{
    (void)rev;
    const char *vs = sched__query(req, "version");
    if (!vs) {
        sched__respond_json(req, 200, obj);
        return;
    }
    char *end, kver[200], idx[32];
    long v = strtol(vs, &end, 10);
    if (!*vs || *end || v < 1) {
        json_decref(obj);
        sched__bad_request(req, "version must be an integer >= 1");
        return;
    }
    json_decref(req->tmp);
    req->tmp = obj;
    sched__key_agentver(kver, sizeof(kver), req->org, req->params[0]);
    snprintf(idx, sizeof(idx), "%ld", v - 1);
    const char *argv[] = {"LINDEX", kver, idx};
    sched__req_redis(req, version_cb, 3, argv, NULL);
}

void sched__h_agent_get(struct sched_req *req)
{
    sched__obj_load(req, &sched__kind_agent, req->params[0], get_loaded);
}

static void update_loaded(struct sched_req *req, json_t *a, long long rev)
{
    char now[40], kver[200];
    json_t *want = json_object_get(req->body, "version");
    long long cur = json_integer_value(json_object_get(a, "version"));
    if (want && (!json_is_integer(want) || json_integer_value(want) < 1)) {
        json_decref(a);
        sched__bad_request(req, "version must be an integer >= 1");
        return;
    }
    if (want && json_integer_value(want) != cur) {
        json_decref(a);
        sched__respond_error(req, 409, "conflict_error", NULL,
                             "agent version is %lld, not %lld", cur,
                             (long long)json_integer_value(want));
        return;
    }
    if (!json_is_null(json_object_get(a, "archived_at"))) {
        json_decref(a);
        sched__bad_request(req, "agent %s is archived", req->params[0]);
        return;
    }
    json_t *before = json_deep_copy(a);
    const char *msg = apply(a, req->body, false);
    if (msg) {
        json_decref(before);
        json_decref(a);
        sched__bad_request(req, "%s", msg);
        return;
    }
    bool changed = !json_equal(before, a);
    json_decref(before);
    if (!changed) {
        sched__respond_json(req, 200, a);
        return;
    }
    sched__rfc3339(wp_wall_ms(), now, sizeof(now));
    json_object_set_new(a, "version", json_integer(cur + 1));
    json_object_set_new(a, "updated_at", json_string(now));
    sched__key_agentver(kver, sizeof(kver), req->org, req->params[0]);
    sched__obj_store(req, &sched__kind_agent, req->org, a, rev, false, NULL, kver);
}

void sched__h_agent_update(struct sched_req *req)
{
    const char *bad = sched__unknown_field(req->body, update_fields);
    if (bad) {
        sched__bad_request(req, "%s: Extra inputs are not permitted", bad);
        return;
    }
    sched__obj_load(req, &sched__kind_agent, req->params[0], update_loaded);
}

static void archive_loaded(struct sched_req *req, json_t *a, long long rev)
{
    char now[40];
    if (!json_is_null(json_object_get(a, "archived_at"))) {
        sched__respond_json(req, 200, a);
        return;
    }
    sched__rfc3339(wp_wall_ms(), now, sizeof(now));
    json_object_set_new(a, "archived_at", json_string(now));
    json_object_set_new(a, "updated_at", json_string(now));
    sched__obj_store(req, &sched__kind_agent, req->org, a, rev, true, NULL, NULL);
}

void sched__h_agent_archive(struct sched_req *req)
{
    sched__obj_load(req, &sched__kind_agent, req->params[0], archive_loaded);
}

void sched__h_agent_list(struct sched_req *req)
{
    bool bad = false;
    bool arch = sched__query_bool(req, "include_archived", false, &bad);
    const char *filter[12];
    char gte[32], lte[32];
    int n = 0;
    if (bad) {
        sched__bad_request(req, "include_archived must be true or false");
        return;
    }
    static const char *const ops[][2] = {{"created_at[gte]", "gte"}, {"created_at[lte]", "lte"}};
    char *bufs[] = {gte, lte};
    for (int i = 0; i < 2; i++) {
        const char *v = sched__query(req, ops[i][0]);
        uint64_t ms;
        if (!v)
            continue;
        if (sched__parse_rfc3339(v, &ms) < 0) {
            sched__bad_request(req, "%s must be an RFC 3339 timestamp", ops[i][0]);
            return;
        }
        snprintf(bufs[i], 32, "%llu", (unsigned long long)ms);
        filter[n++] = "created_ms";
        filter[n++] = ops[i][1];
        filter[n++] = bufs[i];
    }
    filter[n] = NULL;
    sched__obj_list(req, &sched__kind_agent, req->org, arch, false, filter, false);
}

static void versions_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    int from = req->step; /* highest version index served on this page + 1 */
    struct wp_buf b;
    if (reply->type != REDIS_REPLY_ARRAY) {
        sched__respond_error(req, 500, "api_error", NULL, "versions read failed");
        return;
    }
    wp_buf_init(&b, (size_t)1 << 30);
    wp_buf_append(&b, "{\"data\":[", 9);
    for (size_t i = 0; i < reply->elements; i++) {
        redisReply *e = reply->element[reply->elements - 1 - i]; /* newest first */
        if (i)
            wp_buf_append(&b, ",", 1);
        wp_buf_append(&b, e->str, e->len);
    }
    int lowest = from - (int)reply->elements; /* versions left: 1..lowest */
    if (lowest >= 1 && reply->elements > 0)
        wp_buf_printf(&b, "],\"next_page\":\"page_%d\"}", lowest);
    else
        wp_buf_append(&b, "],\"next_page\":null}", 19);
    sched__respond_raw(req, 200, b.data, b.len);
    wp_buf_free(&b);
}

static void versions_loaded(struct sched_req *req, json_t *a, long long rev)
{
    (void)rev;
    int limit;
    const char *page;
    char kver[200], s0[16], s1[16];
    int latest = (int)json_integer_value(json_object_get(a, "version"));
    json_decref(a);
    if (sched__page_params(req, &limit, &page) < 0)
        return;
    int top = latest;
    if (page) {
        top = atoi(page + 5);
        if (top < 1 || top > latest) {
            sched__bad_request(req, "invalid page cursor");
            return;
        }
    }
    int low = top - limit + 1;
    if (low < 1)
        low = 1;
    req->step = top;
    sched__key_agentver(kver, sizeof(kver), req->org, req->params[0]);
    snprintf(s0, sizeof(s0), "%d", low - 1);
    snprintf(s1, sizeof(s1), "%d", top - 1);
    const char *argv[] = {"LRANGE", kver, s0, s1};
    sched__req_redis(req, versions_cb, 4, argv, NULL);
}

void sched__h_agent_versions(struct sched_req *req)
{
    sched__obj_load(req, &sched__kind_agent, req->params[0], versions_loaded);
}
