/* route.c - the route table, query strings, auth, rate limits, dispatch.
 *
 * Routes are one table (redis command-table style): method, path pattern,
 * handler, flags. Dispatch order for every request: route match (404/405),
 * auth (401), body parse (400/415), rate limit via Redis (429), handler.
 */
#define WP_LOG_COMPONENT "route"
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "base/log.h"
#include "base/timeutil.h"
#include "scheduler/sched_int.h"

#define R(m, p, h, f) {m, p, sched__h_##h, f, #h}
static const struct sched_route routes[] = {
    R("POST", "/v1/agents", agent_create, SCHED_R_CREATE | SCHED_R_BODY),
    R("GET", "/v1/agents", agent_list, 0),
    R("GET", "/v1/agents/:id", agent_get, 0),
    R("POST", "/v1/agents/:id", agent_update, SCHED_R_BODY),
    R("POST", "/v1/agents/:id/archive", agent_archive, 0),
    R("GET", "/v1/agents/:id/versions", agent_versions, 0),
    R("POST", "/v1/environments", env_create, SCHED_R_CREATE | SCHED_R_BODY),
    R("GET", "/v1/environments", env_list, 0),
    R("GET", "/v1/environments/:id", env_get, 0),
    R("POST", "/v1/environments/:id", env_update, SCHED_R_BODY),
    R("DELETE", "/v1/environments/:id", env_delete, 0),
    R("POST", "/v1/environments/:id/archive", env_archive, 0),
    R("POST", "/v1/environments/:id/keys", env_key_create, 0),
    /* Literal segments (poll, stats) before the work id. */
    R("GET", "/v1/environments/:id/work/poll", work_poll, SCHED_R_ENVKEY),
    R("GET", "/v1/environments/:id/work/stats", work_stats, SCHED_R_ENVKEY),
    R("GET", "/v1/environments/:id/work", work_list, SCHED_R_ENVKEY),
    R("GET", "/v1/environments/:id/work/:wid", work_get, 0),
    R("POST", "/v1/environments/:id/work/:wid", work_update, SCHED_R_BODY),
    R("POST", "/v1/environments/:id/work/:wid/ack", work_ack, SCHED_R_ENVKEY),
    R("POST", "/v1/environments/:id/work/:wid/heartbeat", work_heartbeat, SCHED_R_ENVKEY),
    R("POST", "/v1/environments/:id/work/:wid/stop", work_stop, SCHED_R_ENVKEY),
    R("POST", "/v1/sessions", session_create, SCHED_R_CREATE | SCHED_R_BODY),
    R("GET", "/v1/sessions", session_list, 0),
    R("GET", "/v1/sessions/:id", session_get, SCHED_R_ENVKEY),
    R("POST", "/v1/sessions/:id", session_update, SCHED_R_BODY),
    R("DELETE", "/v1/sessions/:id", session_delete, 0),
    R("POST", "/v1/sessions/:id/archive", session_archive, 0),
    R("GET", "/v1/sessions/:id/events", events_list, SCHED_R_ENVKEY),
    R("POST", "/v1/sessions/:id/events", events_send, SCHED_R_BODY | SCHED_R_ENVKEY),
    R("GET", "/v1/sessions/:id/events/stream", events_stream, SCHED_R_ENVKEY),
    R("POST", "/v1/sessions/:id/resources", sres_add, SCHED_R_BODY),
    R("GET", "/v1/sessions/:id/resources", sres_list, 0),
    R("GET", "/v1/sessions/:id/resources/:rid", sres_get, 0),
    R("POST", "/v1/sessions/:id/resources/:rid", sres_update, SCHED_R_BODY),
    R("DELETE", "/v1/sessions/:id/resources/:rid", sres_delete, 0),
    R("POST", "/v1/vaults", vault_create, SCHED_R_CREATE | SCHED_R_BODY),
    R("GET", "/v1/vaults", vault_list, 0),
    R("GET", "/v1/vaults/:id", vault_get, 0),
    R("POST", "/v1/vaults/:id", vault_update, SCHED_R_BODY),
    R("DELETE", "/v1/vaults/:id", vault_delete, 0),
    R("POST", "/v1/vaults/:id/archive", vault_archive, 0),
    R("POST", "/v1/vaults/:id/credentials", cred_create, SCHED_R_CREATE | SCHED_R_BODY),
    R("GET", "/v1/vaults/:id/credentials", cred_list, 0),
    R("GET", "/v1/vaults/:id/credentials/:cid", cred_get, 0),
    R("POST", "/v1/vaults/:id/credentials/:cid", cred_update, SCHED_R_BODY),
    R("DELETE", "/v1/vaults/:id/credentials/:cid", cred_delete, 0),
    R("POST", "/v1/vaults/:id/credentials/:cid/archive", cred_archive, 0),
    R("POST", "/v1/vaults/:id/credentials/:cid/mcp_oauth_validate", cred_validate, 0),
    /* Files (no anthropic-beta needed, as for every route). */
    R("POST", "/v1/files", file_upload, SCHED_R_CREATE | SCHED_R_UPLOAD),
    R("GET", "/v1/files", file_list, 0),
    R("GET", "/v1/files/:id", file_get, 0),
    R("GET", "/v1/files/:id/content", file_content, 0),
    R("DELETE", "/v1/files/:id", file_delete, 0),
    /* warmpool's extension: sandboxes for harnesses with their own loop. */
    R("POST", "/v1/sandboxes", sbx_create, SCHED_R_SBX | SCHED_R_CREATE | SCHED_R_BODY),
    R("GET", "/v1/sandboxes/:id", sbx_get, SCHED_R_SBX),
    R("POST", "/v1/sandboxes/:id/execute", sbx_execute, SCHED_R_SBX | SCHED_R_BODY),
    R("DELETE", "/v1/sandboxes/:id", sbx_delete, SCHED_R_SBX),
    /* Prometheus scrapes: no API key (--metrics-token may ask for one). */
    R("GET", "/metrics", metrics, SCHED_R_NOAUTH),
    /* The live page over /metrics (its figures need the metrics token). */
    R("GET", "/dashboard", dashboard, SCHED_R_NOAUTH),
};
#undef R

int sched__pct_decode(char *s, bool plus)
{
    char *w = s;
    for (const char *r = s; *r; r++) {
        if (*r == '%') {
            if (!isxdigit((unsigned char)r[1]) || !isxdigit((unsigned char)r[2]))
                return -1;
            char hex[3] = {r[1], r[2], 0};
            *w++ = (char)strtol(hex, NULL, 16);
            r += 2;
        } else if (plus && *r == '+') {
            *w++ = ' ';
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
    return 0;
}

/* Split "/a/b/c" into up to max segments (copied into buf). */
static int split_path(const char *path, char seg[8][128], int max)
{
    int n = 0;
    const char *p = path;
    if (*p != '/')
        return -1;
    while (*p == '/') {
        p++;
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 0 && !e && n > 0)
            break; /* trailing slash */
        if (n >= max || len >= 128)
            return -1;
        memcpy(seg[n], p, len);
        seg[n][len] = '\0';
        n++;
        p += len;
    }
    return n;
}

const struct sched_route *sched__route_match(const char *method, const char *path,
                                             bool *path_matched, int *nparams,
                                             char params[3][128])
{
    char ps[8][128], pat[8][128];
    int np = split_path(path, ps, 8);
    *path_matched = false;
    *nparams = 0;
    if (np < 0)
        return NULL;
    for (int i = 0; i < np; i++)
        if (sched__pct_decode(ps[i], false) < 0 || ps[i][0] == '\0')
            return NULL;
    for (size_t r = 0; r < sizeof(routes) / sizeof(routes[0]); r++) {
        int nt = split_path(routes[r].pattern, pat, 8);
        if (nt != np)
            continue;
        int k = 0;
        bool ok = true;
        for (int i = 0; i < np && ok; i++) {
            if (pat[i][0] == ':') {
                if (k < 3) {
                    memcpy(params[k], ps[i], sizeof(ps[i])); /* both 128, NUL-terminated */
                    k++;
                }
            } else if (strcmp(pat[i], ps[i]) != 0) {
                ok = false;
            }
        }
        if (!ok)
            continue;
        *path_matched = true;
        if (strcmp(routes[r].method, method) != 0)
            continue;
        *nparams = k;
        return &routes[r];
    }
    return NULL;
}

const char *sched__query(const struct sched_req *req, const char *key)
{
    for (int i = 0; i < req->nquery; i++)
        if (strcmp(req->qkeys[i], key) == 0)
            return req->qvals[i];
    return NULL;
}

int sched__query_all(const struct sched_req *req, const char *key, const char **out, int max)
{
    int n = 0;
    size_t kl = strlen(key);
    for (int i = 0; i < req->nquery && n < max; i++) {
        const char *k = req->qkeys[i];
        if (strncmp(k, key, kl) == 0 && (k[kl] == '\0' || strcmp(k + kl, "[]") == 0))
            out[n++] = req->qvals[i];
    }
    return n;
}

static int parse_query(struct sched_req *req, const char *q)
{
    while (q && *q) {
        const char *amp = strchr(q, '&');
        size_t len = amp ? (size_t)(amp - q) : strlen(q);
        if (len > 0) {
            if (req->nquery >= 64)
                return -1;
            const char *eq = memchr(q, '=', len);
            size_t kl = eq ? (size_t)(eq - q) : len;
            char *k = strndup(q, kl);
            char *v = eq ? strndup(eq + 1, len - kl - 1) : strdup("");
            if (!k || !v || sched__pct_decode(k, true) < 0 || sched__pct_decode(v, true) < 0) {
                free(k);
                free(v);
                return -1;
            }
            req->qkeys[req->nquery] = k;
            req->qvals[req->nquery] = v;
            req->nquery++;
        }
        q = amp ? amp + 1 : NULL;
    }
    return 0;
}

/* Organization for a presented key, by comparing SHA-256 hashes in
 * constant time; the keys themselves are never kept. */
static const char *auth_org(const struct sched_server *srv, const char *key)
{
    unsigned char h[32];
    const char *found = NULL;
    sched__sha256(key, strlen(key), h);
    for (int i = 0; i < srv->cfg.norgs; i++)
        if (CRYPTO_memcmp(h, srv->cfg.orgs[i].key_sha256, 32) == 0)
            found = srv->cfg.orgs[i].org;
    return found;
}

/* What an unchecked environment key or sessions token may send before
 * Redis says whether it is one: enough for a worker's events. */
#define UNVERIFIED_MAX_BODY (1u << 20)

int sched__early_auth(struct sched_server *srv, const struct sched_http_req *h, size_t *max_body,
                      const char **why)
{
    char path[1024];
    bool matched = false;
    int np = 0;
    char params[3][128];
    const char *url = h->head.data + h->url;
    size_t plen = strcspn(url, "?");

    if (plen >= sizeof(path))
        return 0; /* dispatch answers 404 */
    memcpy(path, url, plen);
    path[plen] = '\0';
    const struct sched_route *r = sched__route_match(h->method, path, &matched, &np, params);
    if (!r || (r->flags & SCHED_R_NOAUTH))
        return 0; /* 404/405 or open: dispatch answers */
    const char *key = sched_http_header(h, "x-api-key");
    const char *authz = sched_http_header(h, "authorization");
    if (!key && authz && strncasecmp(authz, "Bearer ", 7) == 0)
        key = authz + 7;
    if (key && auth_org(srv, key)) {
        /* An upload's multipart framing needs a little more than the file. */
        if (r->flags & SCHED_R_UPLOAD)
            *max_body = srv->cfg.files_max_bytes + 65536;
        return 0;
    }
    if (key && (strncmp(key, "wpek_", 5) == 0 || strncmp(key, "sk-wp-req-", 10) == 0)) {
        if (*max_body > UNVERIFIED_MAX_BODY)
            *max_body = UNVERIFIED_MAX_BODY;
        return 0;
    }
    *why = key ? "invalid API key" : "missing API key";
    return 401;
}

#include "lua/scheduler/route.h" /* its Lua scripts: lua/scheduler/route/ (Makefile) */

/* Rate-limit classes, one counter each per organization and minute: the
 * Managed Agents API's create and read limits, and /v1/sandboxes' own,
 * sized for harnesses that open sandboxes and run tools in a loop (they
 * would exhaust the API's 60 creates a minute in as many seconds). */
enum rl_class { RL_CREATE, RL_READ, RL_SBX_CREATE, RL_SBX };
static const struct {
    char tag;          /* in the key wp:rl:{<org>}:<tag>:<minute> */
    const char *what;  /* in the 429's message */
} rl_classes[] = {
    [RL_CREATE] = { 'c', "create" },
    [RL_READ] = { 'r', "read" },
    [RL_SBX_CREATE] = { 's', "sandbox create" },
    [RL_SBX] = { 'x', "sandbox" },
};

static enum rl_class rl_class_of(const struct sched_route *route)
{
    bool create = (route->flags & SCHED_R_CREATE) != 0;
    if (route->flags & SCHED_R_SBX)
        return create ? RL_SBX_CREATE : RL_SBX;
    return create ? RL_CREATE : RL_READ;
}

static int rl_limit(const struct sched_config *cfg, enum rl_class c)
{
    switch (c) {
    case RL_CREATE: return cfg->rate_create;
    case RL_READ: return cfg->rate_read;
    case RL_SBX_CREATE: return cfg->rate_sbx_create;
    case RL_SBX: return cfg->rate_sbx;
    }
    return 0;
}

static void run_handler(struct sched_req *req)
{
    req->route->handler(req);
}

static void ratelimit_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    enum rl_class c = rl_class_of(req->route);
    int limit = rl_limit(&req->srv->cfg, c);
    if (reply->type != REDIS_REPLY_INTEGER) {
        sched__respond_error(req, 503, "api_error", NULL, "rate limiter unavailable");
        return;
    }
    if (reply->integer > limit) {
        time_t now = time(NULL);
        int wait = 60 - (int)(now % 60);
        snprintf(req->extra_headers, sizeof(req->extra_headers), "retry-after: %d\r\n", wait);
        sched__respond_error(req, 429, "rate_limit_error", NULL,
                             "rate limit of %d %s requests per minute exceeded", limit,
                             rl_classes[c].what);
        return;
    }
    run_handler(req);
}

static void dispatch_authed(struct sched_req *req);

/* An environment key on a session's route: only a session of its own
 * environment (one its workers serve); any other answers 404, as for a
 * session that does not exist (no probing another's ids). */
static void env_session_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    json_t *o = NULL;
    const char *env = NULL;

    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[0]->type == REDIS_REPLY_STRING &&
        reply->element[1]->type == REDIS_REPLY_STRING &&
        strcmp(reply->element[0]->str, req->org) == 0) {
        o = json_loadb(reply->element[1]->str, reply->element[1]->len, 0, NULL);
        env = json_string_value(json_object_get(o, "environment_id"));
    }
    bool ok = env && strcmp(env, req->env_key) == 0;
    json_decref(o);
    if (!ok) {
        sched__not_found(req, "session %s not found", req->params[0]);
        return;
    }
    dispatch_authed(req);
}

/* Environment keys live in Redis as wp:envkey:<sha256 hex> -> org, env;
 * sessions tokens (work secrets) as wp:sesstok:<sha256 hex> -> org, env,
 * session, work, with a TTL. */
static void key_lookup_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4 ||
        reply->element[0]->type != REDIS_REPLY_STRING) {
        sched__respond_error(req, 401, "authentication_error", NULL, "invalid API key");
        return;
    }
    if (!(req->route->flags & SCHED_R_ENVKEY)) {
        sched__respond_error(req, 403, "permission_error", NULL,
                             "an environment key cannot call %s", req->route->name);
        return;
    }
    snprintf(req->org, sizeof(req->org), "%s", reply->element[0]->str);
    snprintf(req->env_key, sizeof(req->env_key), "%s", reply->element[1]->str);
    if (reply->element[2]->type == REDIS_REPLY_STRING) {
        /* A sessions token: its own session, its own work item's lease. */
        const char *pat = req->route->pattern;
        snprintf(req->tok_session, sizeof(req->tok_session), "%s", reply->element[2]->str);
        snprintf(req->tok_work, sizeof(req->tok_work), "%s",
                 reply->element[3]->str ? reply->element[3]->str : "");
        bool ok = false;
        if (!strncmp(pat, "/v1/sessions/", 13))
            ok = !strcmp(req->params[0], req->tok_session);
        else if (strstr(pat, "/heartbeat") || strstr(pat, "/stop"))
            ok = !strcmp(req->params[1], req->tok_work);
        if (!ok) {
            sched__respond_error(req, 403, "permission_error", NULL,
                                 "this sessions token does not cover %s", req->route->name);
            return;
        }
    } else if (!strncmp(req->route->pattern, "/v1/sessions/", 13)) {
        char kobj[200];
        sched__key_obj(kobj, sizeof(kobj), NULL, req->params[0]);
        const char *argv[] = { "HMGET", kobj, "org", "json" };
        sched__req_redis(req, env_session_cb, 4, argv, NULL);
        return;
    }
    dispatch_authed(req);
}

static void lookup_key(struct sched_req *req, const char *family, const char *key)
{
    char kk[128], hex[65];
    sched__sha256_hex(key, hex);
    snprintf(kk, sizeof(kk), "%s%s", family, hex);
    const char *argv[] = {"HMGET", kk, "org", "env", "session", "work"};
    sched__req_redis(req, key_lookup_cb, 6, argv, NULL);
}

void sched__dispatch(struct sched_req *req)
{
    struct sched_server *srv = req->srv;
    const struct sched_http_req *h = req->http;
    const char *url = sched_http_url(h);
    char path[1024];
    bool path_matched = false;

    const char *qm = strchr(url, '?');
    size_t plen = qm ? (size_t)(qm - url) : strlen(url);
    if (plen >= sizeof(path)) {
        sched__respond_error(req, 404, NULL, NULL, "path too long");
        return;
    }
    memcpy(path, url, plen);
    path[plen] = '\0';
    req->route = sched__route_match(h->method, path, &path_matched, &req->nparams,
                                    req->params);
    if (!req->route) {
        if (path_matched)
            sched__respond_error(req, 405, "invalid_request_error", NULL,
                                 "method %s not allowed on %s", h->method, path);
        else
            sched__not_found(req, "no route for %s %s", h->method, path);
        return;
    }
    if (qm && parse_query(req, qm + 1) < 0) {
        sched__bad_request(req, "malformed query string");
        return;
    }

    if (!(req->route->flags & SCHED_R_NOAUTH)) {
        const char *key = sched_http_header(h, "x-api-key");
        const char *authz = sched_http_header(h, "authorization");
        if (!key && authz && strncasecmp(authz, "Bearer ", 7) == 0)
            key = authz + 7;
        const char *org = key ? auth_org(srv, key) : NULL;
        if (!org && key && strncmp(key, "wpek_", 5) == 0) {
            lookup_key(req, "wp:envkey:", key);
            return;
        }
        if (!org && key && strncmp(key, "sk-wp-req-", 10) == 0) {
            lookup_key(req, "wp:sesstok:", key);
            return;
        }
        if (!org) {
            sched__respond_error(req, 401, "authentication_error", NULL,
                                 key ? "invalid API key" : "missing API key");
            return;
        }
        snprintf(req->org, sizeof(req->org), "%s", org);
    }
    dispatch_authed(req);
}

static void dispatch_authed(struct sched_req *req)
{
    struct sched_server *srv = req->srv;
    const struct sched_http_req *h = req->http;
    if (req->route->flags & SCHED_R_UPLOAD) {
        /* the handler parses its multipart body */
    } else if (h->body.len > 0) {
        const char *ct = sched_http_header(h, "content-type");
        if (ct && strncasecmp(ct, "application/json", 16) != 0 && !strstr(ct, "+json")) {
            sched__respond_error(req, 415, "invalid_request_error", NULL,
                                 "content-type must be application/json");
            return;
        }
        json_error_t jerr;
        req->body = json_loadb(h->body.data, h->body.len, JSON_REJECT_DUPLICATES, &jerr);
        if (!req->body) {
            sched__bad_request(req, "invalid JSON body: %s (line %d column %d)", jerr.text,
                               jerr.line, jerr.column);
            return;
        }
        if (!json_is_object(req->body)) {
            sched__bad_request(req, "request body must be a JSON object");
            return;
        }
    } else if (req->route->flags & SCHED_R_BODY) {
        sched__bad_request(req, "request body is required");
        return;
    }

    enum rl_class c = rl_class_of(req->route);
    int limit = rl_limit(&srv->cfg, c);
    if (limit <= 0 || !req->org[0]) {
        run_handler(req);
        return;
    }
    char key[160];
    snprintf(key, sizeof(key), "wp:rl:{%s}:%c:%lld", req->org, rl_classes[c].tag,
             (long long)(time(NULL) / 60));
    const char *argv[] = {key, "61000"};
    sched__req_script(req, sched__lua_ratelimit, ratelimit_cb, 1, 2, argv, NULL);
}
