/* resources.c - the generic object store behind every resource.
 *
 * An object is one Redis hash wp:obj:<id> (a session's: wp:obj:{<id>}, in
 * the hash slot of its log and brain lease; org, scope, json, rev, archived,
 * seq, live, plus per-kind filter fields). json is the API object as
 * served, except for fields that change without an update (a session's
 * status), which live in the "live" fragment and are spliced in on read.
 * Agents, environments, vaults, credentials, files are wp:obj:{<org>}:<id>, in
 * their organization's slot with its indexes and sequence (sched_int.h).
 * Listing uses two sorted sets per scope and kind (all, active) scored by
 * a creation sequence; a cursor is the last score served. Every
 * write is one Lua script so processes never interleave half-writes.
 */
#define WP_LOG_COMPONENT "store"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "scheduler/sched_int.h"

const struct sched_kind sched__kind_agent = {"agent", "agent_", NULL};
const struct sched_kind sched__kind_env = {"environment", "env_", "environment_deleted"};
const struct sched_kind sched__kind_session = {"session", "sesn_", "session_deleted"};
const struct sched_kind sched__kind_vault = {"vault", "vlt_", "vault_deleted"};
const struct sched_kind sched__kind_cred = {"credential", "vcrd_", "vault_credential_deleted"};

/* A session's object carries its own id as hash tag: the scripts of its hot
 * path (append, history, stream, brain) touch it with its log and lease, so
 * all of them are one slot and one organization's sessions spread over a
 * cluster's masters (ARCHITECTURE.md, Redis Cluster). */
static bool obj_self_tagged(const char *id)
{
    return strncmp(id, sched__kind_session.id_prefix, strlen(sched__kind_session.id_prefix)) == 0;
}

/* Agents, environments, vaults, credentials and files carry their
 * organization as hash tag, with its indexes, sequence and agent versions:
 * the scripts that create, list and read them together (creds, a session's
 * prep, its files' check) are one slot. Work items live in their
 * environment's slot with its queue (obj_key, work.c). */
static const struct sched_kind *const org_kinds[] = {&sched__kind_agent, &sched__kind_env,
                                                    &sched__kind_vault, &sched__kind_cred,
                                                    &sched__kind_file};

static bool id_org_tagged(const char *id)
{
    for (size_t i = 0; i < sizeof(org_kinds) / sizeof(org_kinds[0]); i++)
        if (!strncmp(id, org_kinds[i]->id_prefix, strlen(org_kinds[i]->id_prefix)))
            return true;
    return false;
}

bool sched__kind_org_tagged(const struct sched_kind *k)
{
    for (size_t i = 0; i < sizeof(org_kinds) / sizeof(org_kinds[0]); i++)
        if (k == org_kinds[i])
            return true;
    return false;
}

void sched__key_obj(char *out, size_t cap, const char *org, const char *id)
{
    if (obj_self_tagged(id))
        snprintf(out, cap, "wp:obj:{%s}", id);
    else if (id_org_tagged(id))
        snprintf(out, cap, "wp:obj:{%s}:%s", org ? org : "", id);
    else
        snprintf(out, cap, "wp:obj:%s", id);
}

/* The environment of a work item's scope "<org>:<env>". */
static const char *scope_env(const char *scope)
{
    const char *c = strrchr(scope, ':');
    return c ? c + 1 : scope;
}

void sched__key_wq(char *out, size_t cap, const char *env, const char *which)
{
    snprintf(out, cap, "wp:wq:{%s}:%s", env, which);
}

void sched__key_work(char *out, size_t cap, const char *env, const char *id)
{
    snprintf(out, cap, "wp:wq:{%s}:item:%s", env, id);
}

/* An object's key where the kind and scope name it: a work item's is its
 * environment's (sched__key_work), every other one's sched__key_obj. */
static void obj_key(char *out, size_t cap, const struct sched_kind *k, const char *org,
                    const char *scope, const char *id)
{
    if (k == &sched__kind_work && scope && *scope)
        sched__key_work(out, cap, scope_env(scope), id);
    else
        sched__key_obj(out, cap, org, id);
}

void sched__key_idx(char *out, size_t cap, const char *org, const char *scope,
                    const struct sched_kind *k, bool active)
{
    size_t ol = strlen(org);
    const char *act = active ? ":active" : "";
    if (k == &sched__kind_work) /* in the environment's slot, per organization */
        snprintf(out, cap, "wp:wq:{%s}:%s:work%s", scope_env(scope), org, act);
    else if (!sched__kind_org_tagged(k))
        snprintf(out, cap, "wp:idx:%s:%s%s", scope, k->name, act);
    else if (!strncmp(scope, org, ol) && (scope[ol] == ':' || scope[ol] == '\0'))
        snprintf(out, cap, "wp:idx:{%s}%s:%s%s", org, scope + ol, k->name, act);
    else /* a scope is always "<org>[:<parent>]"; never mixed with another's */
        snprintf(out, cap, "wp:idx:{%s}:%s:%s%s", org, scope, k->name, act);
}

void sched__key_seq(char *out, size_t cap, const char *org, const struct sched_kind *k)
{
    if (sched__kind_org_tagged(k))
        snprintf(out, cap, "wp:seq:{%s}", org);
    else
        snprintf(out, cap, "wp:seq");
}

void sched__key_agentver(char *out, size_t cap, const char *org, const char *agent_id)
{
    snprintf(out, cap, "wp:agentver:{%s}:%s", org, agent_id);
}

void sched__key_events(char *out, size_t cap, const char *session_id)
{
    snprintf(out, cap, "wp:events:{%s}", session_id);
}

void sched__key_lease(char *out, size_t cap, const char *session_id)
{
    snprintf(out, cap, "wp:brain:{%s}", session_id);
}

void sched__key_fence(char *out, size_t cap, const char *session_id)
{
    snprintf(out, cap, "wp:brain:fence:{%s}", session_id);
}

#include "lua/scheduler/resources.h" /* its Lua scripts: lua/scheduler/resources/ (Makefile) */

/* Splice the live fragment into a stored object: {"a":1} + "\"s\":\"x\"". */
static void append_obj(struct wp_buf *b, const char *json, size_t jl, const char *live,
                       size_t ll)
{
    if (ll == 0 || jl < 2) {
        wp_buf_append(b, json, jl);
        return;
    }
    wp_buf_append(b, "{", 1);
    wp_buf_append(b, live, ll);
    if (jl > 2)
        wp_buf_append(b, ",", 1);
    wp_buf_append(b, json + 1, jl - 1);
}

json_t *sched__obj_parse(const char *json, size_t jl, const char *live, size_t ll)
{
    struct wp_buf b;
    wp_buf_init(&b, jl + ll + 16);
    append_obj(&b, json, jl, live, ll);
    json_t *o = json_loadb(b.data ? b.data : "", b.len, 0, NULL);
    wp_buf_free(&b);
    return o;
}

/* ---- create ---- */

static void create_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    if (reply->type == REDIS_REPLY_ERROR) {
        if (!sched__quota_refused(req, reply->str))
            sched__respond_error(req, 500, "api_error", NULL, "store failed: %s", reply->str);
        return;
    }
    json_t *obj = req->tmp;
    req->tmp = NULL;
    if (req->after) {
        req->after(req, obj);
        return;
    }
    sched__respond_json(req, 200, obj);
}

void sched__obj_create_live(struct sched_req *req, const struct sched_kind *k, const char *scope,
                            json_t *obj, const char *live, const char *const *extra)
{
    char kobj[200], kall[200], kact[200], kquota[160], kseq[160];
    const char *argv[64];
    int argc = 0, nkeys = 4;
    const char *id = json_string_value(json_object_get(obj, "id"));
    /* The stored form has no live fields; the response has them. */
    json_t *stored = json_deep_copy(obj);
    json_object_del(stored, "status");
    char *s = json_dumps(stored, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(stored);
    if (!s) {
        json_decref(obj);
        sched__respond_error(req, 500, "api_error", NULL, "could not encode %s", k->name);
        return;
    }
    sched__key_obj(kobj, sizeof(kobj), req->org, id);
    sched__key_idx(kall, sizeof(kall), req->org, scope, k, false);
    sched__key_idx(kact, sizeof(kact), req->org, scope, k, true);
    sched__key_seq(kseq, sizeof(kseq), req->org, k);
    argv[argc++] = kobj;
    argv[argc++] = kall;
    argv[argc++] = kact;
    argv[argc++] = kseq;
    if (k == &sched__kind_session) { /* live sessions: the org's quota */
        sched__key_quota(kquota, sizeof(kquota), NULL, req->org);
        argv[argc++] = kquota;
        nkeys = 5;
    }
    argv[argc++] = id;
    argv[argc++] = req->org;
    argv[argc++] = scope;
    argv[argc++] = s;
    argv[argc++] = live ? live : "";
    for (int i = 0; extra && extra[i] && argc < 62; i++)
        argv[argc++] = extra[i];
    json_decref(req->tmp);
    req->tmp = obj;
    sched__req_script(req, lua_create, create_cb, nkeys, argc, argv, NULL);
    free(s);
}

void sched__obj_create(struct sched_req *req, const struct sched_kind *k, const char *scope,
                       json_t *obj, const char *const *extra)
{
    sched__obj_create_live(req, k, scope, obj, NULL, extra);
}

/* ---- load ---- */

struct sched_load_state {
    sched_obj_cb cb;
    const struct sched_kind *kind;
    char id[128];
    char scope[200];
    bool unindex; /* store: the archived session's active index entry goes after */
};

static void load_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    struct sched_load_state *ls = (void *)req->load_state;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 6) {
        sched__respond_error(req, 500, "api_error", NULL, "unexpected storage reply");
        return;
    }
    redisReply **e = reply->element;
    if (e[0]->type != REDIS_REPLY_STRING || strcmp(e[0]->str, req->org) != 0 ||
        e[1]->type != REDIS_REPLY_STRING ||
        (ls->scope[0] && (e[4]->type != REDIS_REPLY_STRING || strcmp(e[4]->str, ls->scope)))) {
        const char *code = ls->kind == &sched__kind_env ? "environment_not_found" : NULL;
        sched__respond_error(req, 404, "not_found_error", code, "No %s with id %s",
                             ls->kind->name, ls->id);
        return;
    }
    const char *live = e[5]->type == REDIS_REPLY_STRING ? e[5]->str : "";
    json_t *obj = sched__obj_parse(e[1]->str, e[1]->len, live, strlen(live));
    long long rev = e[2]->type == REDIS_REPLY_STRING ? atoll(e[2]->str) : 0;
    if (!obj) {
        sched__respond_error(req, 500, "api_error", NULL, "stored %s is corrupt", ls->kind->name);
        return;
    }
    ls->cb(req, obj, rev);
}

void sched__obj_load_scoped(struct sched_req *req, const struct sched_kind *k, const char *id,
                            const char *scope, sched_obj_cb cb)
{
    struct sched_load_state *ls = (void *)req->load_state;
    char kobj[200];
    _Static_assert(sizeof(struct sched_load_state) <= sizeof(req->load_state), "load_state");
    ls->cb = cb;
    ls->kind = k;
    snprintf(ls->id, sizeof(ls->id), "%s", id);
    snprintf(ls->scope, sizeof(ls->scope), "%s", scope ? scope : "");
    obj_key(kobj, sizeof(kobj), k, req->org, scope, id);
    const char *argv[] = {"HMGET", kobj, "org", "json", "rev", "archived", "scope", "live"};
    sched__req_redis(req, load_cb, 8, argv, NULL);
}

void sched__obj_load(struct sched_req *req, const struct sched_kind *k, const char *id,
                     sched_obj_cb cb)
{
    sched__obj_load_scoped(req, k, id, NULL, cb);
}

/* ---- store ---- */

static void store_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    struct sched_load_state *ls = (void *)req->load_state;
    if (reply->type == REDIS_REPLY_INTEGER && ls->unindex) {
        /* The organization's index is another slot than the session: its
         * entry goes now (a crash before leaves it, and the next listing
         * of the active index drops it, finding the object archived). */
        char kact[200];
        sched__key_idx(kact, sizeof(kact), req->org, ls->scope, ls->kind, true);
        const char *z[] = {"ZREM", kact, ls->id};
        wp_redis_argv(req->srv->rds, NULL, NULL, 3, z, NULL);
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        if (strstr(reply->str, "CONFLICT")) {
            snprintf(req->extra_headers, sizeof(req->extra_headers), "x-should-retry: true\r\n");
            sched__respond_error(req, 409, "conflict_error", NULL,
                                 "the object was modified concurrently; retry");
        } else if (strstr(reply->str, "NOTFOUND")) {
            sched__not_found(req, "the object was deleted");
        } else {
            sched__respond_error(req, 500, "api_error", NULL, "store failed: %s", reply->str);
        }
        return;
    }
    json_t *obj = req->tmp;
    req->tmp = NULL;
    if (req->after) {
        req->after(req, obj);
        return;
    }
    sched__respond_json(req, 200, obj);
}

void sched__obj_store_live(struct sched_req *req, const struct sched_kind *k,
                           const char *scope, json_t *obj, long long rev, bool archive,
                           const char *live, const char *const *extra,
                           const char *push_version_key)
{
    sched__obj_store_aux(req, k, scope, obj, rev, archive, live, extra,
                         push_version_key ? "rpush" : NULL, push_version_key, NULL, NULL);
}

void sched__obj_store_aux(struct sched_req *req, const struct sched_kind *k,
                          const char *scope, json_t *obj, long long rev, bool archive,
                          const char *live, const char *const *extra, const char *auxmode,
                          const char *auxkey, const char *auxval, const char *auxtype)
{
    char kobj[200], kact[200], revs[32];
    const char *argv[40];
    int argc = 0;
    const char *id = json_string_value(json_object_get(obj, "id"));
    json_t *stored = json_deep_copy(obj);
    json_object_del(stored, "status");
    char *s = json_dumps(stored, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(stored);
    if (!s) {
        json_decref(obj);
        sched__respond_error(req, 500, "api_error", NULL, "could not encode %s", k->name);
        return;
    }
    obj_key(kobj, sizeof(kobj), k, req->org, scope, id);
    sched__key_idx(kact, sizeof(kact), req->org, scope, k, true);
    snprintf(revs, sizeof(revs), "%lld", rev);
    /* A session's script stays in its slot: the index is left out. */
    bool own_slot = obj_self_tagged(id);
    struct sched_load_state *ls = (void *)req->load_state;
    ls->unindex = own_slot && archive;
    ls->kind = k;
    snprintf(ls->id, sizeof(ls->id), "%s", id);
    snprintf(ls->scope, sizeof(ls->scope), "%s", scope);
    argv[argc++] = kobj;
    if (auxkey)
        argv[argc++] = auxkey;
    if (!own_slot)
        argv[argc++] = kact;
    int nkeys = argc;
    argv[argc++] = revs;
    argv[argc++] = s;
    argv[argc++] = archive ? "1" : "0";
    argv[argc++] = id;
    argv[argc++] = live ? live : "";
    argv[argc++] = auxmode ? auxmode : "";
    /* rpush stores the object itself as the new version snapshot. */
    argv[argc++] = auxval ? auxval : s;
    argv[argc++] = auxtype ? auxtype : "";
    for (int i = 0; extra && extra[i] && argc < 38; i++)
        argv[argc++] = extra[i];
    json_decref(req->tmp);
    req->tmp = obj;
    sched__req_script(req, lua_store, store_cb, nkeys, argc, argv, NULL);
    free(s);
}

void sched__obj_store(struct sched_req *req, const struct sched_kind *k, const char *scope,
                      json_t *obj, long long rev, bool archive, const char *const *extra,
                      const char *push_version_key)
{
    sched__obj_store_live(req, k, scope, obj, rev, archive, NULL, extra, push_version_key);
}

/* ---- delete ---- */

static void delete_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    struct sched_load_state *ls = (void *)req->load_state;
    if (reply->type != REDIS_REPLY_INTEGER) {
        sched__respond_error(req, 500, "api_error", NULL, "delete failed");
        return;
    }
    if (reply->integer == 0) {
        sched__not_found(req, "No %s with id %s", ls->kind->name, ls->id);
        return;
    }
    json_t *answer = json_pack("{s:s,s:s}", "id", ls->id, "type", ls->kind->deleted_type);
    if (req->after) { /* e.g. the file's content goes after its metadata */
        req->after(req, answer);
        return;
    }
    sched__respond_json(req, 200, answer);
}

void sched__obj_delete(struct sched_req *req, const struct sched_kind *k, const char *scope,
                       const char *id)
{
    struct sched_load_state *ls = (void *)req->load_state;
    char kobj[200], kall[200], kact[200];
    ls->kind = k;
    snprintf(ls->id, sizeof(ls->id), "%s", id);
    obj_key(kobj, sizeof(kobj), k, req->org, scope, id);
    sched__key_idx(kall, sizeof(kall), req->org, scope, k, false);
    sched__key_idx(kact, sizeof(kact), req->org, scope, k, true);
    const char *argv[] = {kobj, kall, kact, id, req->org};
    sched__req_script(req, lua_delete, delete_cb, 3, 5, argv, NULL);
}

/* ---- list ---- */

static void list_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    bool reverse = req->step & 1, bidi = req->step & 2, had_cursor = req->step & 4;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3) {
        sched__respond_error(req, 500, "api_error", NULL, "list failed: %s",
                             reply->type == REDIS_REPLY_ERROR ? reply->str : "bad reply");
        return;
    }
    redisReply **e = reply->element;
    const char *first = e[0]->str ? e[0]->str : "";
    const char *last = e[1]->str ? e[1]->str : "";
    bool more = e[2]->type == REDIS_REPLY_INTEGER && e[2]->integer == 1;
    size_t n = (reply->elements - 3) / 2;
    struct wp_buf b;
    wp_buf_init(&b, (size_t)1 << 30);
    wp_buf_append(&b, "{\"data\":[", 9);
    for (size_t i = 0; i < n; i++) {
        size_t j = reverse ? n - 1 - i : i;
        redisReply *js = e[3 + 2 * j], *lv = e[4 + 2 * j];
        if (i)
            wp_buf_append(&b, ",", 1);
        append_obj(&b, js->str, js->len, lv->str ? lv->str : "", lv->str ? lv->len : 0);
    }
    char next[64] = "", prev[64] = "";
    if (!reverse) {
        if (more && n > 0)
            snprintf(next, sizeof(next), "page_%s", last);
        if (had_cursor && n > 0)
            snprintf(prev, sizeof(prev), "page_r%s", first);
    } else {
        if (more && n > 0)
            snprintf(prev, sizeof(prev), "page_r%s", last);
        if (n > 0)
            snprintf(next, sizeof(next), "page_%s", first);
    }
    wp_buf_printf(&b, "],\"next_page\":%s%s%s", next[0] ? "\"" : "", next[0] ? next : "null",
                  next[0] ? "\"" : "");
    if (bidi)
        wp_buf_printf(&b, ",\"prev_page\":%s%s%s", prev[0] ? "\"" : "",
                      prev[0] ? prev : "null", prev[0] ? "\"" : "");
    wp_buf_append(&b, "}", 1);
    sched__respond_raw(req, 200, b.data, b.len);
    wp_buf_free(&b);
}

void sched__obj_list(struct sched_req *req, const struct sched_kind *k, const char *scope,
                     bool include_archived, bool asc, const char *const *filter,
                     bool bidirectional)
{
    int limit;
    const char *page;
    char kidx[200], cur[32] = "", lim[16], kpre[160];
    const char *argv[40];
    int argc = 0;
    bool reverse = false;
    if (sched__page_params(req, &limit, &page) < 0)
        return;
    if (page) {
        const char *p = page + 5;
        if (*p == 'r') {
            reverse = true;
            p++;
        }
        char *end;
        long long v = strtoll(p, &end, 10);
        if (*p == '\0' || *end || v < 0) {
            sched__bad_request(req, "invalid page cursor");
            return;
        }
        snprintf(cur, sizeof(cur), "%lld", v);
    }
    sched__key_idx(kidx, sizeof(kidx), req->org, scope, k, !include_archived);
    snprintf(lim, sizeof(lim), "%d", limit);
    argv[argc++] = kidx;
    argv[argc++] = cur;
    argv[argc++] = lim;
    argv[argc++] = (asc != reverse) ? "asc" : "desc";
    /* The script names each object's key: prefix, id, suffix. */
    bool tagged = obj_self_tagged(k->id_prefix);
    if (sched__kind_org_tagged(k))
        snprintf(kpre, sizeof(kpre), "wp:obj:{%s}:", req->org);
    else if (k == &sched__kind_work)
        sched__key_work(kpre, sizeof(kpre), scope_env(scope), "");
    else
        snprintf(kpre, sizeof(kpre), "%s", tagged ? "wp:obj:{" : "wp:obj:");
    argv[argc++] = kpre;
    argv[argc++] = tagged ? "}" : "";
    for (int i = 0; filter && filter[i] && argc < 39; i++)
        argv[argc++] = filter[i];
    req->step = (reverse ? 1 : 0) | (bidirectional ? 2 : 0) | (page ? 4 : 0);
    sched__req_script(req, lua_list, list_cb, 1, argc, argv, NULL);
}
