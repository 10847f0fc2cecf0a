/* mcp_creds.c - MCP credentials at work outside the brain's loop: the
 * process's MCP client (one curl multi, shared with the brains), the
 * refresh request a stored mcp_oauth credential implies, storing a
 * refreshed token back (sealed), and POST .../mcp_oauth_validate: probe
 * the server with the stored token (initialize + tools/list), refresh
 * once when it is refused, and say what happened. */
#define WP_LOG_COMPONENT "vaults"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/timeutil.h"
#include "base/wipe.h"
#include "scheduler/mcp.h"
#include "scheduler/sched_int.h"

#define VALIDATE_TIMEOUT_S 20

struct mcp_hub *sched__mcp_hub(struct sched_server *srv)
{
    struct wp_err err;
    if (!srv->mcp && mcp_hub_new(srv->loop, srv->cfg.mcp_private, &srv->mcp, &err) < 0) {
        log_error("mcp client: %s", err.msg);
        srv->mcp = NULL;
    }
    return srv->mcp;
}

void sched__mcp_hub_free(struct sched_server *srv)
{
    mcp_hub_free(srv->mcp);
    srv->mcp = NULL;
}

void sched__json_wipe(json_t *j)
{
    wp_wipe_json(j);
    json_decref(j);
}

json_t *sched__cred_secrets(const struct sched_vault_keys *vk, const char *sealed, char *why, size_t cap)
{
    size_t n = 0;
    bool stale; /* whoever writes it next seals it with the current key */
    char *plain = sealed ? sched__vault_unseal(vk, sealed, &n, &stale, why, cap) : NULL;
    json_t *j = plain ? json_loadb(plain, n, 0, NULL) : NULL;
    if (plain) {
        memset(plain, 0, n);
        free(plain);
    }
    if (!j && plain)
        snprintf(why, cap, "the opened secrets are not JSON");
    return j;
}

json_t *sched__req_cred_secrets(struct sched_req *req, redisReply *reply)
{
    char why[256] = "missing";
    json_t *j = reply->type == REDIS_REPLY_STRING
                    ? sched__cred_secrets(&req->srv->vk, reply->str, why, sizeof(why))
                    : NULL;
    if (!j)
        sched__respond_error(req, 500, "api_error", "vault_key_mismatch",
                             "the credential's stored secrets cannot be opened: %s", why);
    return j;
}

static const char *sget(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

bool sched__cred_refresh_req(json_t *cred, json_t *secrets, struct mcp_refresh *out)
{
    json_t *r = json_object_get(json_object_get(cred, "auth"), "refresh");
    memset(out, 0, sizeof(*out));
    if (!json_is_object(r) || !sget(secrets, "refresh_token"))
        return false;
    out->token_endpoint = sget(r, "token_endpoint");
    out->client_id = sget(r, "client_id");
    out->client_secret = sget(secrets, "client_secret");
    out->auth = sget(json_object_get(r, "token_endpoint_auth"), "type") ?: "none";
    out->refresh_token = sget(secrets, "refresh_token");
    out->resource = sget(r, "resource");
    out->scope = sget(r, "scope");
    return true;
}

#include "lua/scheduler/mcp_creds.h" /* its Lua scripts: lua/scheduler/mcp_creds/ (Makefile) */

int sched__cred_store_token(struct sched_server *srv, const char *org, const char *cred_id,
                            long long *rev, json_t *cred, json_t *secrets, json_t *tok)
{
    json_object_set(secrets, "access_token", json_object_get(tok, "access_token"));
    if (sget(tok, "refresh_token"))
        json_object_set(secrets, "refresh_token", json_object_get(tok, "refresh_token"));
    json_t *auth = json_object_get(cred, "auth");
    char now[40], exp[40];
    uint64_t ms = wp_wall_ms();
    sched__rfc3339(ms, now, sizeof(now));
    json_t *ei = json_object_get(tok, "expires_in");
    if (json_is_integer(ei) && json_integer_value(ei) >= 0 && json_integer_value(ei) < 100LL * 365 * 86400) {
        sched__rfc3339(ms + (uint64_t)json_integer_value(ei) * 1000, exp, sizeof(exp));
        json_object_set_new(auth, "expires_at", json_string(exp));
    } else {
        json_object_set_new(auth, "expires_at", json_null());
    }
    json_object_set_new(cred, "updated_at", json_string(now));
    char *plain = json_dumps(secrets, JSON_COMPACT);
    char *sealed = plain ? sched__vault_seal(&srv->vk, plain, strlen(plain)) : NULL;
    if (plain) {
        memset(plain, 0, strlen(plain));
        free(plain);
    }
    char *js = json_dumps(cred, JSON_COMPACT);
    char kobj[200], rv[32];
    int rc = -1;
    sched__key_obj(kobj, sizeof(kobj), org, cred_id);
    snprintf(rv, sizeof(rv), "%lld", *rev);
    if (sealed && js) {
        const char *argv[] = { kobj, org, rv, js, sealed };
        rc = wp_redis_script(srv->rds, lua_store_token, NULL, NULL, 1, 5, argv, NULL);
        if (rc == 0)
            (*rev)++;
        log_info("credential %s: refreshed token stored", cred_id);
    }
    free(js);
    free(sealed);
    return rc;
}

/* ---- mcp_oauth_validate ---------------------------------------------------- */

struct validation {
    struct sched_req *req;
    json_t *cred;            /* owned */
    json_t *secrets;         /* owned, wiped */
    long long rev;
    struct mcp_client *cl;
    json_t *probe;           /* mcp_probe answer (owned) or NULL */
    json_t *refresh;         /* refresh answer (owned) or NULL */
    bool refreshed;
};

/* An HTTPResponse with the credential's secrets replaced. */
static json_t *http_response(struct validation *v, const struct mcp_status *st)
{
    if (!st->http_status)
        return json_null();
    char body[sizeof(st->body)];
    snprintf(body, sizeof(body), "%s", st->body);
    const char *k;
    json_t *s;
    json_object_foreach(v->secrets, k, s) {
        const char *sec = json_string_value(s);
        size_t n = sec ? strlen(sec) : 0;
        for (char *p = n >= 4 ? strstr(body, sec) : NULL; p; p = strstr(p + n, sec))
            memset(p, '*', n);
    }
    return json_pack("{s:i, s:s, s:s, s:b}", "status_code", (int)st->http_status, "content_type",
                     st->content_type, "body", body, "body_truncated", st->body_truncated);
}

static void answer(struct validation *v, const char *status)
{
    struct sched_req *req = v->req;
    char now[40];
    sched__rfc3339(wp_wall_ms(), now, sizeof(now));
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:b, s:O, s:O, s:s}", "type", "vault_credential_validation",
                          "credential_id", req->params[1], "vault_id", req->params[0], "status", status,
                          "has_refresh_token", sget(v->secrets, "refresh_token") != NULL,
                          "mcp_probe", v->probe ? v->probe : json_null(), "refresh",
                          v->refresh ? v->refresh : json_null(), "validated_at", now);
    mcp_client_free(v->cl);
    json_decref(v->cred);
    json_decref(v->probe);
    json_decref(v->refresh);
    if (v->secrets)
        sched__json_wipe(v->secrets);
    free(v);
    if (sched__req_release(req))
        sched__respond_json(req, 200, o);
    else
        json_decref(o);
}

static void probe(struct validation *v);

static void refresh_done(void *ctx, const struct mcp_status *st, json_t *tok)
{
    struct validation *v = ctx;
    if (st->kind == MCP_OK) {
        sched__cred_store_token(v->req->srv, v->req->org, v->req->params[1], &v->rev, v->cred, v->secrets, tok);
        v->refresh = json_pack("{s:s, s:n}", "status", "succeeded", "http_response");
        if (mcp_client_set_token(v->cl, sget(v->secrets, "access_token")) < 0) {
            answer(v, "unknown");
            return;
        }
        json_decref(v->probe);
        v->probe = NULL;
        probe(v);
        return;
    }
    bool connect = !st->http_status;
    v->refresh = json_pack("{s:s, s:o}", "status", connect ? "connect_error" : "failed", "http_response",
                           connect ? json_null() : http_response(v, st));
    answer(v, connect ? "unknown" : "invalid");
}

static void probe_done(void *ctx, const struct mcp_status *st, json_t *tools)
{
    struct validation *v = ctx;
    (void)tools;
    if (st->kind == MCP_OK) {
        answer(v, "valid");
        return;
    }
    v->probe = json_pack("{s:s, s:o}", "method", st->method[0] ? st->method : "initialize",
                         "http_response", http_response(v, st));
    if (st->kind != MCP_AUTH) {
        answer(v, "unknown");
        return;
    }
    struct mcp_refresh r;
    struct wp_err err;
    if (v->refreshed || !sched__cred_refresh_req(v->cred, v->secrets, &r)) {
        if (!v->refreshed)
            v->refresh = json_pack("{s:s, s:n}", "status", "no_refresh_token", "http_response");
        answer(v, "invalid");
        return;
    }
    v->refreshed = true;
    if (mcp_oauth_refresh(sched__mcp_hub(v->req->srv), &r, VALIDATE_TIMEOUT_S, refresh_done, v, NULL, &err) < 0) {
        v->refresh = json_pack("{s:s, s:n}", "status", "connect_error", "http_response");
        answer(v, "unknown");
    }
}

static void probe(struct validation *v)
{
    struct wp_err err;
    if (mcp_list_tools(v->cl, probe_done, v, NULL, &err) < 0) {
        v->probe = json_pack("{s:s, s:n}", "method", "initialize", "http_response");
        answer(v, "unknown");
    }
}

static void sealed_cb(struct sched_req *req, redisReply *reply)
{
    json_t *cred = req->tmp2;
    req->tmp2 = NULL;
    json_t *secrets = sched__req_cred_secrets(req, reply);
    if (!secrets) {
        json_decref(cred);
        return;
    }
    struct validation *v = calloc(1, sizeof(*v));
    struct mcp_hub *h = sched__mcp_hub(req->srv);
    struct wp_err err;
    const char *url = sget(json_object_get(cred, "auth"), "mcp_server_url") ?: "";
    if (!v || !h) {
        free(v);
        sched__json_wipe(secrets);
        json_decref(cred);
        sched__respond_error(req, 500, "api_error", NULL, "out of memory");
        return;
    }
    v->req = req;
    v->cred = cred;
    v->secrets = secrets;
    v->rev = req->step;
    sched__req_hold(req);
    if (mcp_client_new(h, url, VALIDATE_TIMEOUT_S, &v->cl, &err) < 0) {
        v->probe = json_pack("{s:s, s:n}", "method", "initialize", "http_response");
        answer(v, "unknown");
        return;
    }
    const char *tok = sget(secrets, "access_token");
    if (!tok || mcp_client_set_token(v->cl, tok) < 0) {
        answer(v, "invalid"); /* no usable token stored */
        return;
    }
    probe(v);
}

static void sealed_reply(void *ctx, redisReply *reply)
{
    sealed_cb(ctx, reply);
}

static void loaded(struct sched_req *req, json_t *cred, long long rev)
{
    char kobj[200];
    if (strcmp(sget(json_object_get(cred, "auth"), "type") ?: "", "mcp_oauth")) {
        json_decref(cred);
        sched__bad_request(req, "mcp_oauth_validate needs an mcp_oauth credential");
        return;
    }
    req->tmp2 = cred;
    req->step = (int)rev;
    sched__key_obj(kobj, sizeof(kobj), req->org, req->params[1]);
    const char *argv[] = { "HGET", kobj, "sealed" };
    sched__req_redis(req, sealed_reply, 3, argv, NULL);
}

void sched__h_cred_validate(struct sched_req *req)
{
    char scope[200];
    snprintf(scope, sizeof(scope), "%s:%s", req->org, req->params[0]);
    sched__obj_load_scoped(req, &sched__kind_cred, req->params[1], scope, loaded);
}
