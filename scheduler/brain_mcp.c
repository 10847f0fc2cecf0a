/* brain_mcp.c - a session's MCP servers, for its brain: before a turn's
 * first model request the agent's mcp_servers are listed (tools/list,
 * through scheduler/mcp.c on the scheduler's loop) with the credential
 * the session's vaults hold for each; the enabled tools go into the model
 * request; a tool_use of one becomes agent.mcp_tool_use, runs as
 * tools/call and ends as agent.mcp_tool_result.
 *
 * Credentials: the session's vault_ids are read in one script at each
 * turn's start (vaults of the session's organization, not archived;
 * their credentials not archived). A server gets the first static_bearer or mcp_oauth
 * credential, in vault_ids order and then creation order, whose
 * mcp_server_url equals the server's url once both are normalized
 * (mcp_url_normalize). An mcp_oauth token that expires within a minute,
 * or that the server refuses, is refreshed once at its token endpoint and
 * the new token stored back into the credential, sealed.
 *
 * Failures: a server that cannot be reached is session.error
 * mcp_connection_failed_error, one that refuses the credential
 * mcp_authentication_failed_error (retry_status retrying: the turn goes
 * on without that server's tools, and the next turn tries again); a call
 * that fails so is also an error tool result the model reads. */
#define WP_LOG_COMPONENT "brain"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/timeutil.h"
#include "scheduler/brain_int.h"
#include "scheduler/mcp.h"
#include "scheduler/metrics.h"
#include "scheduler/sched_int.h"

#define MCP_LIST_TIMEOUT_S 30
#define MCP_CALL_TIMEOUT_S 120
#define MCP_REFRESH_EARLY_MS 60000

enum { CRED_NONE, CRED_BEARER, CRED_OAUTH };

struct bmcp_server {
    struct sched_brain_mcp *m;
    char name[256];
    char url[2048];
    struct mcp_client *cl;       /* owned */
    json_t *tools;               /* listed definitions (owned), NULL when not listed */
    struct mcp_op *op;           /* tools/list or a refresh in flight */
    bool done;                   /* listing finished, with or without tools */
    bool refreshed;              /* this turn already refreshed its token */
    /* the credential */
    int cred;
    char cred_id[64];
    long long cred_rev;
    json_t *cred_json;           /* the credential object (owned) */
    json_t *secrets;             /* unsealed (owned; wiped on free) */
};

struct bmcp_call {
    struct brain *b;
    char use_id[64];
    int server;
    char name[128];
    json_t *input;               /* owned */
    struct mcp_op *op;
    bool retried;                /* after a refresh */
    uint64_t t0;
    struct bmcp_call *next;
};

struct sched_brain_mcp {
    struct brain *b;
    struct bmcp_server srv[20];
    int n;
    bool creds_loading, creds_loaded, started;
    struct bmcp_call *calls;
};

#include "lua/scheduler/brain_mcp.h" /* its Lua scripts: lua/scheduler/brain_mcp/ (Makefile) */

static void list_server(struct sched_brain_mcp *m, int i);
static void call_run(struct bmcp_call *c);

/* ---- small helpers ------------------------------------------------------- */

static const char *sget(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static void session_error(struct brain *b, const char *type, const char *server, const char *msg)
{
    sched__brain_emit(b, json_pack("{s:s, s:{s:s, s:s, s:s, s:{s:s}}}", "type", "session.error", "error",
                                   "type", type, "message", msg, "mcp_server_name", server,
                                   "retry_status", "type", "retrying"),
                      NULL);
}

static const char *fail_type(const struct mcp_status *st)
{
    return st->kind == MCP_AUTH ? "mcp_authentication_failed_error" : "mcp_connection_failed_error";
}

/* ---- state --------------------------------------------------------------- */

static struct sched_brain_mcp *get(struct brain *b)
{
    if (b->mcp)
        return b->mcp;
    json_t *servers = json_object_get(b->agent, "mcp_servers");
    if (!json_array_size(servers) || !b->mcp_hub)
        return NULL;
    struct sched_brain_mcp *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->b = b;
    size_t i;
    json_t *s;
    json_array_foreach(servers, i, s) {
        if (m->n >= 20)
            break;
        struct bmcp_server *v = &m->srv[m->n];
        v->m = m;
        snprintf(v->name, sizeof(v->name), "%s", sget(s, "name") ?: "");
        snprintf(v->url, sizeof(v->url), "%s", sget(s, "url") ?: "");
        m->n++;
    }
    b->mcp = m;
    return m;
}

/* ---- credentials ----------------------------------------------------------- */

static void apply_token(struct bmcp_server *v)
{
    const char *t = NULL;
    if (v->cred == CRED_BEARER)
        t = sget(v->secrets, "token");
    else if (v->cred == CRED_OAUTH)
        t = sget(v->secrets, "access_token");
    if (v->cl && mcp_client_set_token(v->cl, t) < 0)
        log_warn("mcp server %s: the credential's token cannot be sent (bad characters)", v->name);
}

static void creds_cb(void *ctx, redisReply *reply)
{
    struct brain *b = ctx;
    b->refs--;
    struct sched_brain_mcp *m = b->mcp;
    if (b->stopped || !m) {
        sched__brain_maybe_free(b);
        return;
    }
    m->creds_loading = false;
    m->creds_loaded = true;
    if (!reply || reply->type != REDIS_REPLY_ARRAY)
        log_warn("session=%s vault credentials could not be read", b->sid);
    char norm_srv[2048], norm_cred[2048];
    for (int i = 0; i < m->n; i++) {
        struct bmcp_server *v = &m->srv[i];
        if (v->cred != CRED_NONE || mcp_url_normalize(v->url, norm_srv, sizeof(norm_srv)) < 0)
            continue;
        for (size_t k = 0; reply && reply->type == REDIS_REPLY_ARRAY && k + 3 < reply->elements; k += 4) {
            json_t *c = json_loads(reply->element[k + 1]->str ?: "{}", 0, NULL);
            json_t *auth = json_object_get(c, "auth");
            const char *ty = sget(auth, "type") ?: "";
            const char *u = sget(auth, "mcp_server_url");
            bool match = (!strcmp(ty, "static_bearer") || !strcmp(ty, "mcp_oauth")) && u &&
                         mcp_url_normalize(u, norm_cred, sizeof(norm_cred)) == 0 &&
                         !strcmp(norm_srv, norm_cred);
            if (!match) {
                json_decref(c);
                continue;
            }
            char why[256];
            json_t *sec = sched__cred_secrets(&b->srv->vk, reply->element[k + 2]->str, why, sizeof(why));
            if (!sec) {
                log_warn("session=%s credential %s cannot be opened: %s", b->sid,
                         reply->element[k]->str, why);
                json_decref(c);
                continue;
            }
            v->cred = !strcmp(ty, "static_bearer") ? CRED_BEARER : CRED_OAUTH;
            snprintf(v->cred_id, sizeof(v->cred_id), "%s", reply->element[k]->str ?: "");
            v->cred_rev = strtoll(reply->element[k + 3]->str ?: "0", NULL, 10);
            v->cred_json = c;
            v->secrets = sec;
            break;
        }
    }
    for (int i = 0; i < m->n; i++) {
        apply_token(&m->srv[i]); /* a client kept from an earlier turn */
        list_server(m, i);
    }
    sched__brain_maybe_free(b);
}

static void load_creds(struct sched_brain_mcp *m)
{
    struct brain *b = m->b;
    json_t *vids = b->vault_ids;
    size_t nv = json_array_size(vids);
    if (nv == 0 || nv > 64) {
        m->creds_loaded = true;
        for (int i = 0; i < m->n; i++)
            list_server(m, i);
        return;
    }
    const char *argv[67];
    char kseq[160];
    int argc = 0;
    sched__key_seq(kseq, sizeof(kseq), b->org, &sched__kind_cred); /* the org's slot */
    argv[argc++] = kseq;
    argv[argc++] = b->org;
    argv[argc++] = sched__kind_cred.name;
    for (size_t i = 0; i < nv; i++)
        argv[argc++] = json_string_value(json_array_get(vids, i)) ?: "";
    if (wp_redis_script(b->srv->rds, lua_creds, creds_cb, b, 1, argc, argv, NULL) == 0) {
        b->refs++;
        m->creds_loading = true;
    } else {
        m->creds_loaded = true;
        for (int i = 0; i < m->n; i++)
            list_server(m, i);
    }
}

/* ---- the OAuth refresh ------------------------------------------------------ */

static bool expiring(struct bmcp_server *v)
{
    const char *e = sget(json_object_get(v->cred_json, "auth"), "expires_at");
    uint64_t ms;
    return v->cred == CRED_OAUTH && e && sched__parse_rfc3339(e, &ms) == 0 &&
           ms <= wp_wall_ms() + MCP_REFRESH_EARLY_MS;
}

/* After a refresh (or its failure) the listing or the call goes on with
 * whatever token there is now: a refused one fails there. */
static bool refresh_result(struct bmcp_server *v, const struct mcp_status *st, json_t *tok)
{
    struct brain *b = v->m->b;
    if (b->stopped)
        return false;
    if (st->kind == MCP_OK) {
        sched__cred_store_token(b->srv, b->org, v->cred_id, &v->cred_rev, v->cred_json, v->secrets, tok);
        log_info("session=%s credential %s refreshed for MCP server %s", b->sid, v->cred_id, v->name);
        apply_token(v);
    } else {
        log_warn("session=%s refresh for MCP server %s failed: %s", b->sid, v->name, st->message);
    }
    return true;
}

static void refresh_list_done(void *ctx, const struct mcp_status *st, json_t *tok)
{
    struct bmcp_server *v = ctx;
    struct brain *b = v->m->b;
    v->op = NULL;
    if (refresh_result(v, st, tok))
        list_server(v->m, (int)(v - v->m->srv));
    sched__brain_maybe_free(b);
}

static void refresh_call_done(void *ctx, const struct mcp_status *st, json_t *tok)
{
    struct bmcp_call *c = ctx;
    struct brain *b = c->b;
    c->op = NULL;
    if (refresh_result(&b->mcp->srv[c->server], st, tok))
        call_run(c);
    sched__brain_maybe_free(b);
}

/* Start a refresh for the listing (call NULL) or a call; false when none
 * can run. */
static bool refresh(struct brain *b, int server, struct bmcp_call *call)
{
    struct bmcp_server *v = &b->mcp->srv[server];
    struct mcp_refresh req;
    if (v->cred != CRED_OAUTH || v->refreshed || !sched__cred_refresh_req(v->cred_json, v->secrets, &req))
        return false;
    struct wp_err err;
    v->refreshed = true;
    int rc = call ? mcp_oauth_refresh(b->mcp_hub, &req, 30, refresh_call_done, call, &call->op, &err)
                  : mcp_oauth_refresh(b->mcp_hub, &req, 30, refresh_list_done, v, &v->op, &err);
    if (rc < 0) {
        log_warn("session=%s refresh for MCP server %s: %s", b->sid, v->name, err.msg);
        return false;
    }
    return true;
}

/* ---- listing ----------------------------------------------------------------- */

static void list_done(void *ctx, const struct mcp_status *st, json_t *tools);

static void list_server(struct sched_brain_mcp *m, int i)
{
    struct brain *b = m->b;
    struct bmcp_server *v = &m->srv[i];
    struct wp_err err;
    if (v->done || v->op || b->stopped)
        return;
    if (!v->cl) {
        if (mcp_client_new(b->mcp_hub, v->url, MCP_LIST_TIMEOUT_S, &v->cl, &err) < 0) {
            v->done = true;
            session_error(b, "mcp_connection_failed_error", v->name, err.msg);
            sched__brain_step(b);
            return;
        }
        apply_token(v);
    }
    if (expiring(v) && refresh(b, i, NULL))
        return;
    if (mcp_list_tools(v->cl, list_done, v, &v->op, &err) < 0) {
        v->done = true;
        session_error(b, "mcp_connection_failed_error", v->name, err.msg);
        sched__brain_step(b);
    }
}

static void list_done(void *ctx, const struct mcp_status *st, json_t *tools)
{
    struct bmcp_server *v = ctx;
    struct brain *b = v->m->b;
    int i = (int)(v - v->m->srv);
    v->op = NULL;
    if (b->stopped)
        return;
    if (st->kind == MCP_AUTH && refresh(b, i, NULL))
        return;
    v->done = true;
    if (st->kind == MCP_OK) {
        json_decref(v->tools);
        v->tools = json_incref(tools);
        log_info("session=%s MCP server %s: %zu tools", b->sid, v->name, json_array_size(tools));
    } else {
        char msg[400];
        snprintf(msg, sizeof(msg), "MCP server %s: %s", v->name, st->message);
        log_warn("session=%s %s", b->sid, msg);
        session_error(b, fail_type(st), v->name, msg);
    }
    sched__brain_step(b);
    sched__brain_maybe_free(b);
}

bool sched__brain_mcp_ready(struct brain *b)
{
    struct sched_brain_mcp *m = get(b);
    if (!m)
        return true;
    if (!m->started) {
        m->started = true;
        if (!m->creds_loaded && !m->creds_loading)
            load_creds(m);
        else
            for (int i = 0; i < m->n; i++)
                list_server(m, i);
    }
    for (int i = 0; i < m->n; i++)
        if (!m->srv[i].done)
            return false;
    return true;
}

void sched__brain_mcp_turn_end(struct brain *b)
{
    struct sched_brain_mcp *m = b->mcp;
    if (!m || m->calls)
        return;
    for (int i = 0; i < m->n; i++) {
        if (m->srv[i].op)
            return;
    }
    /* The next turn reads the credentials and lists again: tools change,
     * a credential may have been replaced, a failed server is tried again. */
    m->started = false;
    m->creds_loaded = false;
    for (int i = 0; i < m->n; i++) {
        struct bmcp_server *v = &m->srv[i];
        v->done = false;
        v->refreshed = false;
        v->cred = CRED_NONE;
        json_decref(v->cred_json);
        v->cred_json = NULL;
        if (v->secrets)
            sched__json_wipe(v->secrets);
        v->secrets = NULL;
    }
}

/* ---- the model request and its tool uses ------------------------------------- */

/* name taken already by a tool of the request? */
static bool taken(json_t *tools, const char *name)
{
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t)
        if (!strcmp(sget(t, "name") ?: "", name))
            return true;
    return false;
}

/* Which server offers name (enabled), in this request's order; -1 none. */
static int lookup(struct brain *b, json_t *builtin_tools, const char *name)
{
    struct sched_brain_mcp *m = b->mcp;
    if (!m || taken(builtin_tools, name))
        return -1;
    for (int i = 0; i < m->n; i++) {
        size_t k;
        json_t *t;
        json_array_foreach(m->srv[i].tools, k, t) {
            if (strcmp(sget(t, "name") ?: "", name))
                continue;
            bool on;
            sched__brain_mcp_config(b->agent, m->srv[i].name, name, &on);
            if (on)
                return i;
        }
    }
    return -1;
}

void sched__brain_mcp_add_tools(struct brain *b, json_t *req)
{
    struct sched_brain_mcp *m = b->mcp;
    if (!m)
        return;
    json_t *tools = json_object_get(req, "tools");
    json_t *base = tools ? json_deep_copy(tools) : json_array();
    json_t *out = tools ? json_incref(tools) : json_array();
    for (int i = 0; i < m->n; i++) {
        size_t k;
        json_t *t;
        json_array_foreach(m->srv[i].tools, k, t) {
            const char *name = sget(t, "name") ?: "";
            bool on;
            sched__brain_mcp_config(b->agent, m->srv[i].name, name, &on);
            if (!on)
                continue; /* disabled: the model never sees it */
            if (taken(out, name)) {
                log_warn("session=%s MCP tool %s of %s: the name is taken by another tool; left out",
                         b->sid, name, m->srv[i].name);
                continue;
            }
            json_array_append(out, t);
        }
    }
    if (json_array_size(out))
        json_object_set(req, "tools", out);
    json_decref(out);
    json_decref(base);
}

json_t *sched__brain_mcp_use(struct brain *b, const char *name, json_t *input)
{
    json_t *builtins = sched__brain_tool_defs(b->agent);
    int i = lookup(b, builtins, name);
    json_decref(builtins);
    if (i < 0)
        return NULL;
    const char *srv = b->mcp->srv[i].name;
    const char *pol = sched__brain_mcp_config(b->agent, srv, name, NULL);
    bool ask = !strcmp(pol, "always_ask");
    return json_pack("{s:s, s:s, s:s, s:O, s:s, s:{s:s}}", "type", "agent.mcp_tool_use", "name", name,
                     "mcp_server_name", srv, "input", input, "evaluated_permission",
                     ask ? "ask" : "allow", "evaluation", "type", ask ? "always_ask" : "always_allow");
}

/* ---- calls ---------------------------------------------------------------- */

static void call_free(struct bmcp_call *c)
{
    struct sched_brain_mcp *m = c->b->mcp;
    for (struct bmcp_call **pp = &m->calls; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    mcp_op_cancel(c->op);
    json_decref(c->input);
    free(c);
}

static void call_result(struct bmcp_call *c, json_t *content, bool is_error)
{
    struct brain *b = c->b;
    sched__brain_emit(b, json_pack("{s:s, s:s, s:o, s:b}", "type", "agent.mcp_tool_result",
                                   "mcp_tool_use_id", c->use_id, "content", content, "is_error",
                                   is_error),
                      NULL);
    c->op = NULL;
    call_free(c);
}

static void call_text_result(struct bmcp_call *c, const char *text)
{
    call_result(c, json_pack("[{s:s, s:s}]", "type", "text", "text", text), true);
}

static void call_done(void *ctx, const struct mcp_status *st, json_t *result)
{
    struct bmcp_call *c = ctx;
    struct brain *b = c->b;
    c->op = NULL;
    if (b->stopped)
        return;
    sched_metrics_observe(sched__brain_metrics(b), SCHED_HIST_TOOL, "mcp", sched__brain_since(c->t0));
    struct bmcp_server *v = &b->mcp->srv[c->server];
    if (st->kind == MCP_AUTH && !c->retried) {
        c->retried = true;
        v->refreshed = false; /* a refused token is worth one refresh per call */
        if (refresh(b, c->server, c))
            return;
    }
    if (st->kind == MCP_OK) {
        bool is_error = false;
        json_t *content = mcp_result_content(result, &is_error);
        call_result(c, content, is_error);
    } else {
        char msg[400];
        snprintf(msg, sizeof(msg), "MCP server %s: %s", v->name, st->message);
        if (st->kind != MCP_RPC)
            session_error(b, fail_type(st), v->name, msg);
        call_text_result(c, msg);
    }
    sched__brain_step(b);
    sched__brain_maybe_free(b);
}

static void call_run(struct bmcp_call *c)
{
    struct brain *b = c->b;
    struct bmcp_server *v = &b->mcp->srv[c->server];
    struct wp_err err;
    if (!v->cl && mcp_client_new(b->mcp_hub, v->url, MCP_LIST_TIMEOUT_S, &v->cl, &err) == 0)
        apply_token(v);
    if (!v->cl || mcp_call_tool(v->cl, c->name, c->input, MCP_CALL_TIMEOUT_S, call_done, c, &c->op, &err) < 0) {
        char msg[400];
        snprintf(msg, sizeof(msg), "MCP server %s: %s", v->name, v->cl ? err.msg : "bad url");
        session_error(b, "mcp_connection_failed_error", v->name, msg);
        call_text_result(c, msg);
        sched__brain_step(b);
    }
}

static struct bmcp_call *call_find(struct sched_brain_mcp *m, const char *id)
{
    for (struct bmcp_call *c = m ? m->calls : NULL; c; c = c->next)
        if (!strcmp(c->use_id, id))
            return c;
    return NULL;
}

int sched__brain_mcp_call(struct brain *b, json_t *ev)
{
    struct sched_brain_mcp *m = get(b);
    const char *id = sget(ev, "id") ?: "", *name = sget(ev, "name") ?: "";
    const char *srv = sget(ev, "mcp_server_name") ?: "";
    if (call_find(m, id))
        return 1;
    if (m && !sched__brain_mcp_ready(b))
        return 1; /* the servers' sessions and credentials first */
    int server = -1;
    for (int i = 0; m && i < m->n; i++)
        if (!strcmp(m->srv[i].name, srv))
            server = i;
    char msg[400];
    if (server < 0) {
        snprintf(msg, sizeof(msg), "%s: no MCP server named %s in this session's agent", name, srv);
        sched__brain_emit(b, json_pack("{s:s, s:s, s:[{s:s, s:s}], s:b}", "type", "agent.mcp_tool_result",
                                       "mcp_tool_use_id", id, "content", "type", "text", "text", msg,
                                       "is_error", 1),
                          NULL);
        return 0;
    }
    struct bmcp_call *c = calloc(1, sizeof(*c));
    if (!c)
        return 1;
    c->b = b;
    c->server = server;
    c->t0 = wp_now_ns();
    snprintf(c->use_id, sizeof(c->use_id), "%s", id);
    snprintf(c->name, sizeof(c->name), "%s", name);
    c->input = json_incref(json_object_get(ev, "input"));
    c->next = m->calls;
    m->calls = c;
    sched_metrics_inc(sched__brain_metrics(b), SCHED_CTR_TOOL_CALLS, "mcp");
    if (json_object_get(c->input, "_invalid_input")) {
        snprintf(msg, sizeof(msg), "%s: the tool input was not valid JSON", name);
        call_text_result(c, msg);
        return 0;
    }
    call_run(c);
    return 1;
}

bool sched__brain_mcp_busy(struct brain *b)
{
    struct sched_brain_mcp *m = b->mcp;
    if (!m)
        return false;
    if (m->calls || m->creds_loading)
        return true;
    for (int i = 0; i < m->n; i++)
        if (m->srv[i].op)
            return true;
    return false;
}

void sched__brain_mcp_cancel(struct brain *b)
{
    struct sched_brain_mcp *m = b->mcp;
    while (m && m->calls)
        call_text_result(m->calls, "interrupted");
}

void sched__brain_mcp_free(struct brain *b)
{
    struct sched_brain_mcp *m = b->mcp;
    if (!m)
        return;
    while (m->calls)
        call_free(m->calls);
    for (int i = 0; i < m->n; i++) {
        struct bmcp_server *v = &m->srv[i];
        mcp_op_cancel(v->op);
        mcp_client_free(v->cl);
        json_decref(v->tools);
        json_decref(v->cred_json);
        if (v->secrets)
            sched__json_wipe(v->secrets);
    }
    free(m);
    b->mcp = NULL;
}
