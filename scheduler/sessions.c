/* sessions.c - /v1/sessions. Create validates, resolves the agent version
 * and the environment in one script, stores the session (status idle) and
 * appends any initial events; nothing slow runs on the request path. The
 * status lives in the object's "live" fragment and is changed only by the
 * event append script (events.c) and by archive. */
#define WP_LOG_COMPONENT "sessions"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/timeutil.h"
#include "scheduler/sched_int.h"

static const char *const create_fields[] = {"agent", "environment_id", "title", "metadata",
                                            "resources", "vault_ids", "initial_events",
                                            "budget", NULL};
static const char *const update_fields[] = {"title", "metadata", "agent", "budget",
                                            "vault_ids", NULL};

#include "lua/scheduler/sessions.h" /* its Lua scripts: lua/scheduler/sessions/ (Makefile) */

static const char *norm_resource(json_t *r, const char *now, json_t **out, json_t *tokens)
{
    const char *ty = json_string_value(json_object_get(r, "type"));
    char id[64];
    sched__new_id("sesrsc_", id, sizeof(id));
    if (!json_is_object(r) || !ty)
        return "each resource needs a type";
    if (!strcmp(ty, "github_repository")) {
        static const char *const f[] = {"type", "url", "authorization_token", "checkout",
                                        "mount_path", NULL};
        json_t *url = json_object_get(r, "url"), *mp = json_object_get(r, "mount_path");
        json_t *co = json_object_get(r, "checkout"), *tok = json_object_get(r, "authorization_token");
        const char *msg;
        if (sched__unknown_field(r, f) || !json_is_string(url))
            return "github_repository needs a url (and only its documented fields)";
        if ((msg = sched__repo_check(json_string_value(url), co, mp, NULL, 0)))
            return msg;
        if (tok && !json_is_null(tok) &&
            (!json_is_string(tok) || json_string_length(tok) == 0 || json_string_length(tok) > 4096))
            return "authorization_token must be a non-empty string of at most 4096 characters";
        char mount[512];
        sched__repo_check(json_string_value(url), co, mp, mount, sizeof(mount));
        /* The token is a secret: never in the session's JSON, kept sealed
         * beside it (brain_egress.c hands it to the egress proxy). */
        /* A copy: tokens is wiped, and the request body still needs its own. */
        if (json_is_string(tok))
            json_object_set_new(tokens, id, json_stringn(json_string_value(tok), json_string_length(tok)));
        *out = json_pack("{s:s,s:s,s:O,s:s,s:O,s:s,s:s}", "id", id, "type", ty, "url", url,
                         "mount_path", mount, "checkout", co ? co : json_null(), "created_at",
                         now, "updated_at", now);
        return NULL;
    }
    if (!strcmp(ty, "file")) {
        static const char *const f[] = {"type", "file_id", "mount_path", NULL};
        json_t *fid = json_object_get(r, "file_id"), *mp = json_object_get(r, "mount_path");
        const char *msg;
        if (sched__unknown_field(r, f) || !json_is_string(fid))
            return "file resources need a file_id";
        if (mp && !json_is_null(mp) && !json_is_string(mp))
            return "mount_path must be a string or null";
        char mount[512];
        if ((msg = sched__file_mount_path(fid, mp, mount, sizeof(mount))))
            return msg;
        *out = json_pack("{s:s,s:s,s:O,s:s,s:s,s:s}", "id", id, "type", ty, "file_id", fid,
                         "mount_path", mount, "created_at", now, "updated_at", now);
        return NULL;
    }
    if (!strcmp(ty, "memory_store")) {
        static const char *const f[] = {"type", "memory_store_id", "access", "instructions", NULL};
        json_t *ms = json_object_get(r, "memory_store_id"), *acc = json_object_get(r, "access");
        json_t *ins = json_object_get(r, "instructions");
        if (sched__unknown_field(r, f) || !json_is_string(ms))
            return "memory_store resources need a memory_store_id";
        const char *a = json_is_string(acc) ? json_string_value(acc) : "read_write";
        if (strcmp(a, "read_write") && strcmp(a, "read_only"))
            return "access must be read_write or read_only";
        if (ins && !json_is_null(ins) && (!json_is_string(ins) || json_string_length(ins) > 4096))
            return "instructions must be a string of at most 4096 characters";
        *out = json_pack("{s:s,s:O,s:s,s:O,s:s,s:n,s:n}", "type", ty, "memory_store_id", ms,
                         "access", a, "instructions", ins ? ins : json_null(), "description", "",
                         "name", "mount_path");
        return NULL;
    }
    return "resource type must be github_repository, file or memory_store";
}

/* NOT YET BUILT (issue 16): memory_store resources are stored
 * (norm_resource above) but nothing attaches them to a sandbox: refused,
 * which is better than accepting and silently ignoring them. file
 * resources are mounted (files.c, brain_files.c), github_repository ones
 * cloned (repos.c, brain_egress.c). An empty array passes. */
bool sched__refuse_unbuilt(struct sched_req *req, json_t *vault_ids, json_t *resources)
{
    size_t i;
    json_t *r;
    size_t repos = 0;
    (void)vault_ids;
    json_array_foreach(resources, i, r) {
        const char *ty = json_string_value(json_object_get(r, "type"));
        if (ty && (!strcmp(ty, "file") || !strcmp(ty, "github_repository"))) {
            repos += !strcmp(ty, "github_repository");
            continue;
        }
        sched__respond_error(req, 400, "invalid_request_error", "not_supported_yet",
                             "resources: %s resources are not supported yet: this server does "
                             "not yet attach memory stores", ty ? ty : "untyped");
        return true;
    }
    if (repos > SCHED_MAX_REPOS) {
        sched__bad_request(req, "at most %d repositories per session", SCHED_MAX_REPOS);
        return true;
    }
    return false;
}

/* Every resource valid and no two at one mount path; NULL or a message. */
static const char *check_resources(json_t *list)
{
    size_t i, j;
    json_t *r, *all = json_array(), *tokens = json_object();
    const char *msg = NULL;
    json_array_foreach(list, i, r) {
        json_t *n = NULL;
        if ((msg = norm_resource(r, "", &n, tokens)))
            break;
        const char *mp = json_string_value(json_object_get(n, "mount_path"));
        json_t *o;
        json_array_foreach(all, j, o) {
            if (mp && !strcmp(mp, json_string_value(json_object_get(o, "mount_path")) ?: ""))
                msg = "two resources have the same mount_path";
        }
        json_array_append_new(all, n);
        if (msg)
            break;
    }
    json_decref(all);
    sched__json_wipe(tokens);
    return msg;
}

static const char *check_budget(json_t *b)
{
    json_t *mlc = json_object_get(b, "max_list_cost");
    const char *amt = json_string_value(json_object_get(mlc, "amount"));
    const char *cur = json_string_value(json_object_get(mlc, "currency"));
    if (!json_is_object(b) || strcmp(json_string_value(json_object_get(b, "type")) ?: "", "limit"))
        return "budget.type must be limit";
    if (!amt || !*amt || strspn(amt, "0123456789") != strlen(amt) ||
        (amt[0] == '0' && amt[1]) || !cur || strcmp(cur, "USD"))
        return "budget.max_list_cost must be {amount: decimal string, currency: USD}";
    return NULL;
}

/* Build the session's agent snapshot from the stored agent and overrides. */
static const char *snapshot_agent(json_t *agent, json_t *ov, json_t **out)
{
    static const char *const keep[] = {"id", "type", "version", "name", "description",
                                       "system", "model", "tools", "mcp_servers", "skills",
                                       "execution_identity", "multiagent", NULL};
    json_t *s = json_object();
    for (int i = 0; keep[i]; i++) {
        json_t *v = json_object_get(agent, keep[i]);
        json_object_set(s, keep[i], v ? v : json_null());
    }
    if (ov) {
        json_t *v;
        if ((v = json_object_get(ov, "model"))) {
            json_t *m = json_is_string(v) ? json_pack("{s:O,s:{s:s},s:s}", "id", v, "effort",
                                                      "type", "high", "speed", "standard")
                                          : json_deep_copy(v);
            if (!json_is_string(json_object_get(m, "id"))) {
                json_decref(m);
                json_decref(s);
                return "agent.model must be a model id or a model object";
            }
            json_object_set_new(s, "model", m);
        }
        if ((v = json_object_get(ov, "system"))) {
            if (!json_is_null(v) && (!json_is_string(v) || json_string_length(v) > 100000)) {
                json_decref(s);
                return "agent.system must be a string of at most 100000 characters or null";
            }
            json_object_set(s, "system", v);
        }
        static const char *const lists[] = {"tools", "mcp_servers", "skills"};
        for (int i = 0; i < 3; i++) {
            if ((v = json_object_get(ov, lists[i]))) {
                if (!json_is_array(v)) {
                    json_decref(s);
                    return "agent overrides: tools, mcp_servers and skills must be arrays";
                }
                json_object_set(s, lists[i], v);
            }
        }
    }
    *out = s;
    return NULL;
}

static void initial_done(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    json_t *s = req->tmp;
    req->tmp = NULL;
    if (reply->type == REDIS_REPLY_ARRAY)
        sched__brain_active_add(req->srv, json_string_value(json_object_get(s, "id")));
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0) {
        redisReply *st = reply->element[reply->elements - 1];
        json_object_set_new(s, "status", json_string(st->str));
    }
    sched__respond_json(req, 200, s);
}

static void run_initial(struct sched_req *req, json_t *s)
{
    json_t *prepared = req->tmp2;
    if (!prepared || json_array_size(prepared) == 0) {
        sched__respond_json(req, 200, s);
        return;
    }
    struct sched_server *srv = req->srv;
    char sid[64];
    snprintf(sid, sizeof(sid), "%s", json_string_value(json_object_get(s, "id")));
    req->tmp = s;
    sched__events_append(req, sid, prepared, initial_done);
    /* As for sent events: the brain's commands run after the append (and
     * req may be gone by now). */
    sched__brain_kick(srv, sid);
}

static void enqueued(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    json_t *s = req->tmp;
    req->tmp = NULL;
    if (reply->type == REDIS_REPLY_ERROR) {
        json_decref(s);
        sched__respond_error(req, 500, "api_error", NULL, "work queue: %s", reply->str);
        return;
    }
    run_initial(req, s);
}

static void created(struct sched_req *req, json_t *s)
{
    req->after = NULL;
    if (req->step == 1) { /* self_hosted: a worker picks the session up */
        req->tmp = s;
        sched__work_enqueue(req, json_string_value(json_object_get(s, "environment_id")),
                            json_string_value(json_object_get(s, "id")), enqueued);
        return;
    }
    run_initial(req, s);
}

static void prep_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    json_t *body = req->body;
    char id[64], now[40], ms[32], ver[32];
    const char *msg;
    if (reply->type == REDIS_REPLY_ERROR) {
        const char *e = reply->str;
        if (strstr(e, "AGENT_NOTFOUND"))
            sched__not_found(req, "No agent with id %s", req->scratch);
        else if (strstr(e, "VERSION_NOTFOUND"))
            sched__not_found(req, "No such version of agent %s", req->scratch);
        else if (strstr(e, "AGENT_ARCHIVED"))
            sched__bad_request(req, "agent %s is archived", req->scratch);
        else if (strstr(e, "ENV_NOTFOUND"))
            sched__respond_error(req, 404, "not_found_error", "environment_not_found",
                                 "No environment with id %s",
                                 json_string_value(json_object_get(body, "environment_id")));
        else if (strstr(e, "ENV_ARCHIVED"))
            sched__bad_request(req, "environment %s is archived; no new sessions",
                               json_string_value(json_object_get(body, "environment_id")));
        else
            sched__respond_error(req, 500, "api_error", NULL, "%s", e);
        return;
    }
    req->step = reply->element[1]->str && !strcmp(reply->element[1]->str, "self_hosted");
    json_t *agent = json_loadb(reply->element[0]->str, reply->element[0]->len, 0, NULL);
    json_t *ov = NULL, *snap = NULL;
    json_t *ar = json_object_get(body, "agent");
    if (json_is_object(ar) &&
        !strcmp(json_string_value(json_object_get(ar, "type")) ?: "", "agent_with_overrides"))
        ov = ar;
    msg = agent ? snapshot_agent(agent, ov, &snap) : "stored agent is corrupt";
    json_decref(agent);
    if (msg) {
        sched__bad_request(req, "%s", msg);
        return;
    }
    uint64_t t = wp_wall_ms();
    sched__rfc3339(t, now, sizeof(now));
    snprintf(ms, sizeof(ms), "%llu", (unsigned long long)t);
    sched__new_id("sesn_", id, sizeof(id));

    json_t *resources = json_array(), *tokens = json_object();
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(body, "resources"), i, r) {
        json_t *n = NULL;
        if ((msg = norm_resource(r, now, &n, tokens))) {
            sched__json_wipe(tokens);
            json_decref(resources);
            json_decref(snap);
            sched__bad_request(req, "%s", msg);
            return;
        }
        json_array_append_new(resources, n);
    }
    json_t *md = json_object_get(body, "metadata");
    json_t *vids = json_object_get(body, "vault_ids");
    json_t *title = json_object_get(body, "title");
    json_t *budget = json_object_get(body, "budget");
    json_t *s = json_pack(
        "{s:s,s:s,s:s,s:O,s:o,s:O,s:o,s:o,s:o,s:O,s:[],s:{s:i,s:i},s:{},s:s,s:s,s:n}", "id", id,
        "type", "session", "status", "idle", "title", title ? title : json_null(), "agent", snap,
        "environment_id", json_object_get(body, "environment_id"), "resources", resources,
        "vault_ids", vids ? json_deep_copy(vids) : json_array(), "metadata",
        md ? json_deep_copy(md) : json_object(), "budget", budget ? budget : json_null(),
        "outcome_evaluations", "stats", "active_seconds", 0, "duration_seconds", 0, "usage",
        "created_at", now, "updated_at", now, "archived_at");
    if (!s) {
        sched__json_wipe(tokens);
        sched__respond_error(req, 500, "api_error", NULL, "could not build the session");
        return;
    }
    /* Repository tokens: one sealed field per resource, rtok:<id>. */
    const char *extra[14 + 2 * SCHED_MAX_REPOS + 1];
    char rkeys[SCHED_MAX_REPOS][80];
    char *sealed[SCHED_MAX_REPOS] = {NULL};
    int ne = 0, nt = 0;
    const char *rid;
    json_t *tv;
    json_object_foreach(tokens, rid, tv) {
        if (nt == SCHED_MAX_REPOS)
            break;
        snprintf(rkeys[nt], sizeof(rkeys[nt]), "rtok:%s", rid);
        sealed[nt] = sched__vault_seal(&req->srv->vk, json_string_value(tv), json_string_length(tv));
        if (!sealed[nt]) {
            for (int k = 0; k < nt; k++)
                free(sealed[k]);
            sched__json_wipe(tokens);
            json_decref(s);
            sched__respond_error(req, 500, "api_error", NULL, "could not seal the token");
            return;
        }
        nt++;
    }
    sched__json_wipe(tokens);
    snprintf(ver, sizeof(ver), "%lld",
             (long long)json_integer_value(json_object_get(snap, "version")));
    const char *fixed[] = {"status", "idle", "agent_id", req->scratch, "agent_version", ver,
                           "created_ms", ms, "environment_id",
                           json_string_value(json_object_get(body, "environment_id")),
                           "self_hosted", req->step == 1 ? "1" : "0"};
    for (size_t k = 0; k < sizeof(fixed) / sizeof(fixed[0]); k++)
        extra[ne++] = fixed[k];
    for (int k = 0; k < nt; k++) {
        extra[ne++] = rkeys[k];
        extra[ne++] = sealed[k];
    }
    extra[ne] = NULL;
    req->after = created;
    sched__obj_create_live(req, &sched__kind_session, req->org, s, "\"status\":\"idle\"", extra);
    for (int k = 0; k < nt; k++)
        free(sealed[k]);
}

static void prep(struct sched_req *req);

void sched__h_session_create(struct sched_req *req)
{
    json_t *body = req->body, *v;
    const char *msg = NULL, *bad = sched__unknown_field(body, create_fields);
    char ver[16] = "";
    size_t i;
    if (bad) {
        sched__bad_request(req, "%s: Extra inputs are not permitted", bad);
        return;
    }
    json_t *agent = json_object_get(body, "agent");
    const char *agent_id = NULL;
    if (json_is_string(agent)) {
        agent_id = json_string_value(agent);
    } else if (json_is_object(agent)) {
        const char *ty = json_string_value(json_object_get(agent, "type"));
        static const char *const ref_f[] = {"type", "id", "version", NULL};
        static const char *const ov_f[] = {"type", "id", "version", "model", "system",
                                           "tools", "mcp_servers", "skills", NULL};
        if (!ty || (strcmp(ty, "agent") && strcmp(ty, "agent_with_overrides"))) {
            sched__bad_request(req, "agent.type must be agent or agent_with_overrides");
            return;
        }
        if (sched__unknown_field(agent, !strcmp(ty, "agent") ? ref_f : ov_f)) {
            sched__bad_request(req, "agent.%s: Extra inputs are not permitted",
                               sched__unknown_field(agent, !strcmp(ty, "agent") ? ref_f : ov_f));
            return;
        }
        agent_id = json_string_value(json_object_get(agent, "id"));
        v = json_object_get(agent, "version");
        if (v && !json_is_null(v)) {
            if (!json_is_integer(v) || json_integer_value(v) < 1) {
                sched__bad_request(req, "agent.version must be an integer >= 1");
                return;
            }
            snprintf(ver, sizeof(ver), "%lld", (long long)json_integer_value(v));
        }
    }
    if (!agent_id || !*agent_id || strlen(agent_id) > 100) {
        sched__bad_request(req, "agent is required: an agent id or {type: agent, id}");
        return;
    }
    v = json_object_get(body, "environment_id");
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 100) {
        sched__bad_request(req, "environment_id is required");
        return;
    }
    v = json_object_get(body, "title");
    if (v && !json_is_null(v) && !json_is_string(v)) {
        sched__bad_request(req, "title must be a string or null");
        return;
    }
    v = json_object_get(body, "metadata");
    if (v && (msg = sched__check_metadata(v, false))) {
        sched__respond_error(req, 400, "invalid_request_error", "invalid_metadata", "%s", msg);
        return;
    }
    v = json_object_get(body, "vault_ids");
    if (v) {
        json_t *e;
        if (!json_is_array(v)) {
            sched__bad_request(req, "vault_ids must be an array of strings");
            return;
        }
        json_array_foreach(v, i, e) if (!json_is_string(e)) {
            sched__bad_request(req, "vault_ids must be an array of strings");
            return;
        }
    }
    v = json_object_get(body, "resources");
    if (v && !json_is_array(v)) {
        sched__bad_request(req, "resources must be an array");
        return;
    }
    if (sched__refuse_unbuilt(req, json_object_get(body, "vault_ids"), v))
        return;
    if (v && (msg = check_resources(v))) {
        sched__bad_request(req, "resources: %s", msg);
        return;
    }
    v = json_object_get(body, "budget");
    if (v && !json_is_null(v) && (msg = check_budget(v))) {
        sched__bad_request(req, "%s", msg);
        return;
    }
    v = json_object_get(body, "initial_events");
    if (v && sched__events_prepare(v, true, 50, &req->tmp2, &msg) < 0) {
        sched__bad_request(req, "%s", msg);
        return;
    }
    snprintf(req->scratch, sizeof(req->scratch), "%s", agent_id);
    snprintf(req->params[2], sizeof(req->params[2]), "%s", ver); /* unused by this route */
    sched__files_owned(req, json_object_get(body, "resources"), prep);
}

/* The files are the caller's: check agent and environment, then create. */
static void prep(struct sched_req *req)
{
    char kagent[200], kenv[200], kver[200];
    const char *agent_id = req->scratch, *ver = req->params[2];
    json_t *body = req->body;
    sched__key_obj(kagent, sizeof(kagent), req->org, agent_id);
    sched__key_obj(kenv, sizeof(kenv), req->org, json_string_value(json_object_get(body, "environment_id")));
    sched__key_agentver(kver, sizeof(kver), req->org, agent_id);
    const char *argv[] = {kagent, kenv, kver, req->org, ver};
    sched__req_script(req, lua_prep, prep_cb, 3, 5, argv, NULL);
}

static void got(struct sched_req *req, json_t *obj, long long rev)
{
    (void)rev;
    sched__respond_json(req, 200, obj);
}

void sched__h_session_get(struct sched_req *req)
{
    sched__obj_load(req, &sched__kind_session, req->params[0], got);
}

static void update_loaded(struct sched_req *req, json_t *s, long long rev)
{
    json_t *b = req->body, *v;
    const char *msg;
    char now[40], kev[200];
    const char *status = json_string_value(json_object_get(s, "status"));
    if (!strcmp(status ?: "", "terminated") || !json_is_null(json_object_get(s, "archived_at"))) {
        json_decref(s);
        sched__bad_request(req, "session %s is terminated", req->params[0]);
        return;
    }
    if ((v = json_object_get(b, "title"))) {
        if (!json_is_null(v) && !json_is_string(v))
            goto bad_title;
        json_object_set(s, "title", v);
    }
    if ((v = json_object_get(b, "metadata"))) {
        if (json_is_null(v)) {
            json_object_set_new(s, "metadata", json_object());
        } else {
            if ((msg = sched__check_metadata(v, true))) {
                json_decref(s);
                sched__respond_error(req, 400, "invalid_request_error", "invalid_metadata", "%s",
                                     msg);
                return;
            }
            sched__apply_metadata_patch(json_object_get(s, "metadata"), v, false);
        }
    }
    if ((v = json_object_get(b, "agent"))) {
        static const char *const f[] = {"tools", "mcp_servers", NULL};
        if (!json_is_object(v) || sched__unknown_field(v, f)) {
            json_decref(s);
            sched__bad_request(req, "agent: only tools and mcp_servers can be updated");
            return;
        }
        if (!strcmp(status ?: "", "running")) {
            json_decref(s);
            sched__bad_request(req, "the agent of a running session cannot be updated");
            return;
        }
        json_t *ag = json_object_get(s, "agent");
        for (int i = 0; f[i]; i++) {
            json_t *l = json_object_get(v, f[i]);
            if (l && !json_is_array(l)) {
                json_decref(s);
                sched__bad_request(req, "agent.%s must be an array", f[i]);
                return;
            }
            if (l)
                json_object_set(ag, f[i], l);
        }
    }
    if ((v = json_object_get(b, "budget"))) {
        if (json_is_null(v)) {
            json_object_set_new(s, "budget", json_null());
        } else if (json_is_null(json_object_get(s, "budget"))) {
            json_decref(s);
            sched__bad_request(req, "budget_create_only: a budget can only be set at creation");
            return;
        } else if ((msg = check_budget(v))) {
            json_decref(s);
            sched__bad_request(req, "%s", msg);
            return;
        } else {
            json_object_set(s, "budget", v);
        }
    }
    sched__rfc3339(wp_wall_ms(), now, sizeof(now));
    json_object_set_new(s, "updated_at", json_string(now));
    sched__key_events(kev, sizeof(kev), req->params[0]);
    sched__obj_store_aux(req, &sched__kind_session, req->org, s, rev, false, NULL, NULL, "xadd",
                         kev, "{\"type\":\"session.updated\"}", "session.updated");
    return;
bad_title:
    json_decref(s);
    sched__bad_request(req, "title must be a string or null");
}

void sched__h_session_update(struct sched_req *req)
{
    const char *bad = sched__unknown_field(req->body, update_fields);
    if (bad) {
        sched__bad_request(req, "%s: Extra inputs are not permitted", bad);
        return;
    }
    if (json_object_get(req->body, "vault_ids")) {
        sched__bad_request(req, "vault_ids cannot be updated");
        return;
    }
    sched__obj_load(req, &sched__kind_session, req->params[0], update_loaded);
}

/* After the archive is stored: with --archived-session-ttl, the session's
 * object and log expire (listings drop the index entries they find gone). */
static void archived(struct sched_req *req, json_t *s)
{
    double ttl = req->srv->cfg.archived_ttl_s;
    if (ttl > 0) {
        char kobj[200], kev[200], kfence[200], ms[32];
        const char *id = json_string_value(json_object_get(s, "id"));
        sched__key_obj(kobj, sizeof(kobj), NULL, id);
        sched__key_events(kev, sizeof(kev), id);
        sched__key_fence(kfence, sizeof(kfence), id);
        snprintf(ms, sizeof(ms), "%.0f", ttl * 1000);
        const char *a1[] = {"PEXPIRE", kobj, ms}, *a2[] = {"PEXPIRE", kev, ms},
                   *a3[] = {"PEXPIRE", kfence, ms};
        wp_redis_argv(req->srv->rds, NULL, NULL, 3, a1, NULL);
        wp_redis_argv(req->srv->rds, NULL, NULL, 3, a2, NULL);
        wp_redis_argv(req->srv->rds, NULL, NULL, 3, a3, NULL);
    }
    sched__respond_json(req, 200, s);
}

static void archive_loaded(struct sched_req *req, json_t *s, long long rev)
{
    char now[40], kev[200];
    if (!json_is_null(json_object_get(s, "archived_at"))) {
        sched__respond_json(req, 200, s);
        return;
    }
    sched__rfc3339(wp_wall_ms(), now, sizeof(now));
    json_object_set_new(s, "archived_at", json_string(now));
    json_object_set_new(s, "updated_at", json_string(now));
    json_object_set_new(s, "status", json_string("terminated"));
    sched__key_events(kev, sizeof(kev), req->params[0]);
    sched__brain_session_end(req->srv, req->org, req->params[0]);
    const char *extra[] = {"status", "terminated", NULL};
    req->after = archived;
    sched__obj_store_aux(req, &sched__kind_session, req->org, s, rev, true,
                         "\"status\":\"terminated\"", extra, "xadd", kev,
                         "{\"type\":\"session.status_terminated\"}",
                         "session.status_terminated");
}

void sched__h_session_archive(struct sched_req *req)
{
    sched__obj_load(req, &sched__kind_session, req->params[0], archive_loaded);
}

static void delete_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    if (reply->type != REDIS_REPLY_INTEGER) {
        sched__respond_error(req, 500, "api_error", NULL, "delete failed");
        return;
    }
    if (reply->integer == 0) {
        sched__not_found(req, "No session with id %s", req->params[0]);
        return;
    }
    /* The organization's index is another slot: its entries go now (a
     * crash before leaves entries that listings drop, finding no object). */
    char kall[200], kact[200];
    sched__key_idx(kall, sizeof(kall), req->org, req->org, &sched__kind_session, false);
    sched__key_idx(kact, sizeof(kact), req->org, req->org, &sched__kind_session, true);
    const char *z1[] = {"ZREM", kall, req->params[0]}, *z2[] = {"ZREM", kact, req->params[0]};
    wp_redis_argv(req->srv->rds, NULL, NULL, 3, z1, NULL);
    wp_redis_argv(req->srv->rds, NULL, NULL, 3, z2, NULL);
    sched__respond_json(req, 200,
                        json_pack("{s:s,s:s}", "id", req->params[0], "type", "session_deleted"));
}

void sched__h_session_delete(struct sched_req *req)
{
    char kobj[200], kev[200], kfence[200];
    sched__key_obj(kobj, sizeof(kobj), NULL, req->params[0]);
    sched__key_events(kev, sizeof(kev), req->params[0]);
    sched__key_fence(kfence, sizeof(kfence), req->params[0]);
    /* The log outlives the session briefly so open streams see session.deleted. */
    const char *argv[] = {kobj, kev, kfence, req->org, "300000"};
    sched__brain_session_end(req->srv, req->org, req->params[0]);
    sched__req_script(req, lua_delete, delete_cb, 3, 5, argv, NULL);
}

void sched__h_session_list(struct sched_req *req)
{
    bool bad = false;
    bool arch = sched__query_bool(req, "include_archived", false, &bad);
    const char *filter[40], *sv[8];
    char bufs[4][32], statuses[128] = "";
    int n = 0;
    const char *order = sched__query(req, "order");
    if (bad) {
        sched__bad_request(req, "include_archived must be true or false");
        return;
    }
    if (order && strcmp(order, "asc") && strcmp(order, "desc")) {
        sched__bad_request(req, "order must be asc or desc");
        return;
    }
    const char *aid = sched__query(req, "agent_id");
    const char *aver = sched__query(req, "agent_version");
    if (aver && !aid) {
        sched__bad_request(req, "agent_version needs agent_id");
        return;
    }
    if (aid) {
        filter[n++] = "agent_id";
        filter[n++] = "eq";
        filter[n++] = aid;
    }
    if (aver) {
        filter[n++] = "agent_version";
        filter[n++] = "eq";
        filter[n++] = aver;
    }
    static const char *const ops[][2] = {{"created_at[gt]", "gt"}, {"created_at[gte]", "gte"},
                                         {"created_at[lt]", "lt"}, {"created_at[lte]", "lte"}};
    for (int i = 0; i < 4; i++) {
        const char *v = sched__query(req, ops[i][0]);
        uint64_t ms;
        if (!v)
            continue;
        if (sched__parse_rfc3339(v, &ms) < 0) {
            sched__bad_request(req, "%s must be an RFC 3339 timestamp", ops[i][0]);
            return;
        }
        snprintf(bufs[i], sizeof(bufs[i]), "%llu", (unsigned long long)ms);
        filter[n++] = "created_ms";
        filter[n++] = ops[i][1];
        filter[n++] = bufs[i];
    }
    int ns = sched__query_all(req, "statuses", sv, 8);
    for (int i = 0; i < ns; i++) {
        const char *s = sv[i];
        if (strcmp(s, "idle") && strcmp(s, "running") && strcmp(s, "rescheduling") &&
            strcmp(s, "terminated")) {
            sched__bad_request(req, "statuses must be idle, running, rescheduling or terminated");
            return;
        }
        if (i)
            strcat(statuses, ",");
        strcat(statuses, s);
    }
    if (ns) {
        filter[n++] = "status";
        filter[n++] = "in";
        filter[n++] = statuses;
    }
    filter[n] = NULL;
    bool asc = order && !strcmp(order, "asc");
    sched__obj_list(req, &sched__kind_session, req->org, arch, asc, filter, true);
}
