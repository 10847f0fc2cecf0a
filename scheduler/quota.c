/* quota.c - per-organization quotas and who may use an operator's pools.
 *
 * The operator sets them with `warmpool quota set ORG ...` (pool/cli.c)
 * straight into Redis; every check here is one Lua script that reads the
 * quota, counts the use and records the new use together, so two
 * schedulers racing for an organization's last slot cannot both win. Its
 * keys all carry the organization's hash tag (one slot on Redis Cluster):
 *
 *   wp:quota:{<org>}     HASH  sessions, sandboxes, hot, memory_mb, cpu, disk_mb
 *                              (absent field: no limit)
 *   wp:quotause:{<org>}:envs HASH  env id -> "min_hot memory_mb cpu disk_mb": what
 *                              each of its published cloud environments keeps hot
 *   wp:quotause:{<org>}:sbx  ZSET  /v1/sandboxes ids -> created ms (dead ones are
 *                              dropped by the next check; records wp:sbx:{<org>}:<id>)
 *   wp:env:{P}:policy    HASH  orgs: who may use operator pool P ("a,b" or "*";
 *                              absent: every organization)
 *
 * The pool's policy is another slot: its orgs field is read just before
 * the script and passed in ARGV (an operator's change racing a request
 * may let that one request through; a session's brain checks again at
 * each claim, brain_tools.c). Live sessions are the organization's active
 * session index (resources.c checks the limit in its index script). A refusal is 429
 * rate_limit_error with x-should-retry: false (a quota does not clear in
 * the SDK's retry window) and details {error_code: quota_exceeded, quota,
 * limit, usage}; a pool the organization may not use is 403
 * permission_error (pool_not_allowed).
 */
#define WP_LOG_COMPONENT "quota"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/timeutil.h"
#include "scheduler/sched_int.h"

void sched__key_quota(char *out, size_t cap, const char *what, const char *org)
{
    if (what)
        snprintf(out, cap, "wp:quotause:{%s}:%s", org, what);
    else
        snprintf(out, cap, "wp:quota:{%s}", org);
}

#include "lua/scheduler/quota.h" /* its Lua scripts: lua/scheduler/quota/ (Makefile) */

bool sched__pool_org_allowed(const char *orgs, const char *org)
{
    if (!orgs || !strcmp(orgs, "*"))
        return true;
    size_t l = strlen(org);
    for (const char *p = orgs; *p;) {
        size_t n = strcspn(p, ",");
        if (n == l && !strncmp(p, org, l))
            return true;
        p += n + (p[n] == ',');
    }
    return false;
}

bool sched__quota_refused(struct sched_req *req, const char *lua_err)
{
    const char *q = lua_err ? strstr(lua_err, "QUOTA ") : NULL;
    if (lua_err && !q && strstr(lua_err, "POOL")) {
        sched__respond_error(req, 403, "permission_error", "pool_not_allowed",
                             "organization %s may not use this pool environment (the operator "
                             "names the organizations each pool serves)", req->org);
        return true;
    }
    if (!q)
        return false;
    char name[32] = "", what[64] = "";
    double lim = 0, use = 0;
    sscanf(q + 6, "%31s %lf %lf %63[^\n]", name, &lim, &use, what);
    char msg[400];
    snprintf(msg, sizeof(msg),
             "organization %s: quota %s is %g and this request needs %g (%s); archive or delete "
             "what it no longer uses, or ask the operator to raise it",
             req->org, name, lim, !strcmp(what, "live") ? use + 1 : use, what);
    json_t *err = json_pack("{s:s,s:s,s:{s:s,s:s,s:f,s:f}}", "type", "rate_limit_error", "message",
                            msg, "details", "error_code", "quota_exceeded", "quota", name, "limit",
                            lim, "usage", use);
    json_t *body = json_pack("{s:s,s:o,s:s}", "type", "error", "error", err, "request_id",
                             req->request_id);
    strncat(req->extra_headers, "x-should-retry: false\r\n",
            sizeof(req->extra_headers) - strlen(req->extra_headers) - 1);
    sched__respond_json(req, 429, body);
    return true;
}

/* ---- environments ---- */

static void env_gated(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    json_t *env = req->tmp;
    req->tmp = NULL;
    long long rev = json_integer_value(req->tmp2);
    json_decref(req->tmp2);
    req->tmp2 = NULL;
    if (reply->type == REDIS_REPLY_ERROR) {
        json_decref(env);
        if (!sched__quota_refused(req, reply->str))
            sched__respond_error(req, 500, "api_error", NULL, "quota check: %s", reply->str);
        return;
    }
    req->quota_next(req, env, rev);
}

/* What env (req->tmp) keeps hot: mode "pool" (an operator's pool, into
 * pool), "hot" (its own, sized into h m c d) or "none". */
static const char *env_mode(json_t *env, char *pool, size_t cap, double *h, double *m,
                            double *c, double *d)
{
    const char *id = json_string_value(json_object_get(env, "id"));
    const char *type = json_string_value(json_object_get(json_object_get(env, "config"), "type"));
    *h = *m = *c = *d = 0;
    if (!type || strcmp(type, "cloud") || !json_is_null(json_object_get(env, "archived_at")) ||
        sched__env_pool_of(env, pool, cap) < 0)
        return "none";
    if (strcmp(pool, id))
        return "pool";
    sched__envtpl_size(env, h, m, c, d);
    return "hot";
}

/* The gate itself; orgs: the pool's policy (NULL when none applies). */
static void env_gate_run(struct sched_req *req, const char *orgs)
{
    char kq[160], ku[160], pool[64], mh[32], mem[32], cpu[32], disk[32];
    double h, m, c, d;
    json_t *env = req->tmp;
    const char *mode = env_mode(env, pool, sizeof(pool), &h, &m, &c, &d);
    sched__key_quota(kq, sizeof(kq), NULL, req->org);
    sched__key_quota(ku, sizeof(ku), "envs", req->org);
    snprintf(mh, sizeof(mh), "%.0f", h);
    snprintf(mem, sizeof(mem), "%.0f", m);
    snprintf(cpu, sizeof(cpu), "%g", c);
    snprintf(disk, sizeof(disk), "%.0f", d);
    const char *argv[] = {kq, ku, req->org, json_string_value(json_object_get(env, "id")), mode,
                          mh, mem, cpu, disk, orgs ? orgs : "*"};
    sched__req_script(req, lua_env_gate, env_gated, 2, 10, argv, NULL);
}

/* The pool policy's orgs field (absent: NULL); false when Redis refused
 * the read (answered 500). */
static bool policy_orgs(struct sched_req *req, redisReply *reply, const char **orgs)
{
    if (reply->type == REDIS_REPLY_ERROR) {
        sched__respond_error(req, 500, "api_error", NULL, "pool policy: %s", reply->str);
        return false;
    }
    *orgs = reply->type == REDIS_REPLY_STRING ? reply->str : NULL;
    return true;
}

static void env_policy_read(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    const char *orgs;
    if (policy_orgs(req, reply, &orgs))
        env_gate_run(req, orgs);
}

void sched__quota_env(struct sched_req *req, json_t *env, long long rev,
                      void (*next)(struct sched_req *, json_t *, long long))
{
    char pool[64], pol[160];
    double h, m, c, d;
    json_decref(req->tmp);
    json_decref(req->tmp2);
    req->tmp = env;
    req->tmp2 = json_integer(rev);
    req->quota_next = next;
    if (strcmp(env_mode(env, pool, sizeof(pool), &h, &m, &c, &d), "pool")) {
        env_gate_run(req, NULL);
        return;
    }
    snprintf(pol, sizeof(pol), "wp:env:{%s}:policy", pool);
    const char *argv[] = {"HGET", pol, "orgs"};
    sched__req_redis(req, env_policy_read, 3, argv, NULL);
}

/* ---- /v1/sandboxes ---- */

static void sbx_gated(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    json_t *g = req->tmp2;
    req->tmp2 = NULL;
    if (reply->type == REDIS_REPLY_ERROR) {
        json_decref(g);
        if (!sched__quota_refused(req, reply->str))
            sched__respond_error(req, 500, "api_error", NULL, "quota check: %s", reply->str);
        return;
    }
    char pool[64], id[64];
    snprintf(pool, sizeof(pool), "%s", json_string_value(json_object_get(g, "pool")));
    snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(g, "id")));
    req->quota_sbx_next(req, pool, id, json_object_get(g, "record"));
    json_decref(g);
}

#define SBX_RECORD_MAX 16 /* fields of a new sandbox's record */

/* The gate; orgs: the operator pool's policy (NULL for an API
 * environment's own pool, or no policy). */
static void sbx_gate_run(struct sched_req *req, const char *orgs)
{
    char kq[160], kz[160], krec[160], now[32];
    json_t *g = req->tmp2, *v;
    const char *pool = json_string_value(json_object_get(g, "pool")), *k;
    sched__key_quota(kq, sizeof(kq), NULL, req->org);
    sched__key_quota(kz, sizeof(kz), "sbx", req->org);
    sched__key_sbx(krec, sizeof(krec), req->org, ""); /* the records' prefix: the same slot */
    snprintf(now, sizeof(now), "%llu", (unsigned long long)wp_wall_ms());
    const char *argv[8 + 2 * SBX_RECORD_MAX] = {kq, kz, req->org,
                                                json_string_value(json_object_get(g, "id")), now,
                                                strncmp(pool, "env_", 4) ? "1" : "0",
                                                orgs ? orgs : "*", krec};
    int argc = 8;
    json_object_foreach(json_object_get(g, "record"), k, v) {
        if (argc < 8 + 2 * SBX_RECORD_MAX && json_is_string(v)) {
            argv[argc++] = k;
            argv[argc++] = json_string_value(v);
        }
    }
    sched__req_script(req, lua_sbx_gate, sbx_gated, 2, argc, argv, NULL);
}

static void sbx_policy_read(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    const char *orgs;
    if (policy_orgs(req, reply, &orgs))
        sbx_gate_run(req, orgs);
}

void sched__quota_sbx(struct sched_req *req, const char *pool, const char *id, json_t *record,
                      void (*next)(struct sched_req *, const char *pool, const char *id,
                                   json_t *record))
{
    char pol[160];
    json_decref(req->tmp2);
    req->tmp2 = json_pack("{s:s,s:s,s:o}", "pool", pool, "id", id, "record", record);
    if (!req->tmp2) {
        sched__respond_error(req, 500, "api_error", NULL, "out of memory");
        return;
    }
    req->quota_sbx_next = next;
    if (!strncmp(pool, "env_", 4)) { /* an API environment's own pool: no policy */
        sbx_gate_run(req, NULL);
        return;
    }
    snprintf(pol, sizeof(pol), "wp:env:{%s}:policy", pool);
    const char *argv[] = {"HGET", pol, "orgs"};
    sched__req_redis(req, sbx_policy_read, 3, argv, NULL);
}
