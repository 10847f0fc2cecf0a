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

/* Whose indexes and sequence carry the organization's tag: the
 * org-tagged kinds' and sessions' (their entries and quota count are the
 * organization's; the object is the session's own slot). */
static bool idx_org_tagged(const struct sched_kind *k)
{
    return sched__kind_org_tagged(k) || k == &sched__kind_session;
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
    else if (!idx_org_tagged(k))
        snprintf(out, cap, "wp:idx:%s:%s%s", scope, k->name, act);
    else if (!strncmp(scope, org, ol) && (scope[ol] == ':' || scope[ol] == '\0'))
        snprintf(out, cap, "wp:idx:{%s}%s:%s%s", org, scope + ol, k->name, act);
    else /* a scope is always "<org>[:<parent>]"; never mixed with another's */
        snprintf(out, cap, "wp:idx:{%s}:%s:%s%s", org, scope, k->name, act);
}

void sched__key_seq(char *out, size_t cap, const char *org, const struct sched_kind *k)
{
    if (idx_org_tagged(k))
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

/* The stored object (req->tmp) to the handler's after, or answered 200. */
static void obj_stored(struct sched_req *req)
{
    json_t *obj = req->tmp;
    req->tmp = NULL;
    if (req->after) {
        req->after(req, obj);
        return;
    }
    sched__respond_json(req, 200, obj);
}

static void create_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    if (reply->type == REDIS_REPLY_ERROR) {
        if (!sched__quota_refused(req, reply->str))
            sched__respond_error(req, 500, "api_error", NULL, "store failed: %s", reply->str);
        return;
    }
    obj_stored(req);
}

static void session_create(struct sched_req *req, const char *scope, const char *id,
                           const char *json, const char *live, const char *const *extra);

/* A create script's ARGV after its keys (argv[argc...], up to 62): id, org,
 * scope, json, live[, pending], then the extra (field, value) pairs. */
static int create_argv(const char **argv, int argc, struct sched_req *req, const char *id,
                       const char *scope, const char *json, const char *live,
                       const char *pending, const char *const *extra)
{
    argv[argc++] = id;
    argv[argc++] = req->org;
    argv[argc++] = scope;
    argv[argc++] = json;
    argv[argc++] = live ? live : "";
    if (pending)
        argv[argc++] = pending;
    for (int i = 0; extra && extra[i] && argc < 62; i++)
        argv[argc++] = extra[i];
    return argc;
}

void sched__obj_create_live(struct sched_req *req, const struct sched_kind *k, const char *scope,
                            json_t *obj, const char *live, const char *const *extra)
{
    char kobj[200], kall[200], kact[200], kseq[160];
    const char *argv[64];
    int argc = 0;
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
    json_decref(req->tmp);
    req->tmp = obj;
    if (obj_self_tagged(id)) {
        session_create(req, scope, id, s, live, extra);
        free(s);
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
    argc = create_argv(argv, argc, req, id, scope, s, live, NULL, extra);
    sched__req_script(req, lua_create, create_cb, 4, argc, argv, NULL);
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
    char refusal[128]; /* a session's create: the index script's QUOTA error */
};

/* A session is created in three steps: its object in its own slot, with a
 * TTL (create_own.lua); its quota count and index entries in its
 * organization's slot (index.lua); then PERSIST, before the answer. A
 * scheduler dying after the first or second step leaves an object nobody
 * was given the id of, gone at its TTL (after the second, also an index
 * entry that listings then drop); a refusal deletes the object at once. */
#define SESSION_PENDING_MS "60000"

static void session_persisted(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    if (reply->type != REDIS_REPLY_INTEGER || reply->integer != 1) {
        sched__respond_error(req, 500, "api_error", NULL, "store failed: %s",
                             reply->type == REDIS_REPLY_ERROR ? reply->str : "session gone");
        return;
    }
    obj_stored(req);
}

static void session_refused(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    struct sched_load_state *ls = (void *)req->load_state;
    (void)reply; /* refused either way; a DEL that failed leaves the TTL to it */
    if (!sched__quota_refused(req, ls->refusal))
        sched__respond_error(req, 500, "api_error", NULL, "store failed: %s", ls->refusal);
}

static void session_indexed(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    struct sched_load_state *ls = (void *)req->load_state;
    char kobj[200];
    sched__key_obj(kobj, sizeof(kobj), NULL, ls->id);
    if (reply->type == REDIS_REPLY_ERROR) {
        snprintf(ls->refusal, sizeof(ls->refusal), "%s", reply->str);
        const char *argv[] = {"DEL", kobj};
        sched__req_redis(req, session_refused, 2, argv, NULL);
        return;
    }
    const char *argv[] = {"PERSIST", kobj};
    sched__req_redis(req, session_persisted, 2, argv, NULL);
}

static void session_written(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    struct sched_load_state *ls = (void *)req->load_state;
    char kall[200], kact[200], kseq[160], kquota[160];
    if (reply->type == REDIS_REPLY_ERROR) {
        sched__respond_error(req, 500, "api_error", NULL, "store failed: %s", reply->str);
        return;
    }
    sched__key_idx(kall, sizeof(kall), req->org, ls->scope, &sched__kind_session, false);
    sched__key_idx(kact, sizeof(kact), req->org, ls->scope, &sched__kind_session, true);
    sched__key_seq(kseq, sizeof(kseq), req->org, &sched__kind_session);
    sched__key_quota(kquota, sizeof(kquota), NULL, req->org);
    const char *argv[] = {kall, kact, kseq, kquota, ls->id};
    sched__req_script(req, lua_index, session_indexed, 4, 5, argv, NULL);
}

static void session_create(struct sched_req *req, const char *scope, const char *id,
                           const char *json, const char *live, const char *const *extra)
{
    struct sched_load_state *ls = (void *)req->load_state;
    char kobj[200];
    const char *argv[64];
    int argc = 0;
    ls->kind = &sched__kind_session;
    snprintf(ls->id, sizeof(ls->id), "%s", id);
    snprintf(ls->scope, sizeof(ls->scope), "%s", scope);
    sched__key_obj(kobj, sizeof(kobj), req->org, id);
    argv[argc++] = kobj;
    argc = create_argv(argv, argc, req, id, scope, json, live, SESSION_PENDING_MS, extra);
    sched__req_script(req, lua_create_own, session_written, 1, argc, argv, NULL);
}

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
    obj_stored(req);
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

/* One listed object: its json and live fragment, from src (a script's
 * reply or a page of strings). */
typedef void (*list_item_fn)(const void *src, size_t i, const char **js, size_t *jl,
                             const char **lv, size_t *ll);

/* The page's answer: n objects (in index order, read by item from src),
 * the scores of the first listed and the last scanned entry, whether the
 * index holds more past it. */
static void list_respond(struct sched_req *req, const char *first, const char *last, bool more,
                         size_t n, list_item_fn item, const void *src)
{
    bool reverse = req->step & 1, bidi = req->step & 2, had_cursor = req->step & 4;
    struct wp_buf b;
    wp_buf_init(&b, (size_t)1 << 30);
    wp_buf_append(&b, "{\"data\":[", 9);
    for (size_t i = 0; i < n; i++) {
        const char *js, *lv;
        size_t jl, ll;
        item(src, reverse ? n - 1 - i : i, &js, &jl, &lv, &ll);
        if (i)
            wp_buf_append(&b, ",", 1);
        append_obj(&b, js, jl, lv, ll);
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

/* list.lua's reply: {first, last, more, json1, live1, ...}. */
static void script_item(const void *src, size_t i, const char **js, size_t *jl, const char **lv,
                        size_t *ll)
{
    const redisReply *r = src, *j = r->element[3 + 2 * i], *l = r->element[4 + 2 * i];
    *js = j->str ? j->str : "";
    *jl = j->str ? j->len : 0;
    *lv = l->str ? l->str : "";
    *ll = l->str ? l->len : 0;
}

static void list_cb(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3) {
        sched__respond_error(req, 500, "api_error", NULL, "list failed: %s",
                             reply->type == REDIS_REPLY_ERROR ? reply->str : "bad reply");
        return;
    }
    redisReply **e = reply->element;
    list_respond(req, e[0]->str ? e[0]->str : "", e[1]->str ? e[1]->str : "",
                 e[2]->type == REDIS_REPLY_INTEGER && e[2]->integer == 1,
                 (reply->elements - 3) / 2, script_item, reply);
}

/* ---- list sessions: each object in its own slot ----
 *
 * What list.lua does in one script, done from here for sessions, whose
 * objects are each in its own slot: a batch of the index (the
 * organization's slot), then every listed object's fields by one routed
 * HMGET each (pipelined, answered in any order across masters), filters
 * applied here, entries of objects gone or (from the active index)
 * archived removed; until the page is full. req->tmp holds the batch's ids
 * and scores, the objects' fields and the page; req->tmp2 the filter
 * triples (field, op, value). */
struct own_list {
    char idx[200];
    char first[32], last[32];
    int limit, scanned, batch, outstanding;
    bool asc, active;
};
_Static_assert(sizeof(struct own_list) <= sizeof(((struct sched_req *)0)->load_state),
               "own_list");

#define OWN_LIST_SCAN_MAX 5000 /* entries scanned for one page, as list.lua */

struct own_row {
    struct sched_req *req;
    size_t i;
};

static void own_batch(struct sched_req *req);

static bool own_pass(json_t *row, json_t *filter)
{
    for (size_t j = 0; j + 2 < json_array_size(filter); j += 3) {
        const char *v = json_string_value(json_array_get(row, 3 + j / 3));
        const char *op = json_string_value(json_array_get(filter, j + 1));
        const char *want = json_string_value(json_array_get(filter, j + 2));
        if (!strcmp(op, "eq")) {
            if (!v || strcmp(v, want))
                return false;
        } else if (!strcmp(op, "in")) {
            size_t l = v ? strlen(v) : 0;
            bool found = false;
            for (const char *p = want; v && *p && !found;) {
                size_t m = strcspn(p, ",");
                found = m == l && !strncmp(p, v, l);
                p += m + (p[m] == ',');
            }
            if (!found)
                return false;
        } else {
            char *e1, *e2;
            double a = v ? strtod(v, &e1) : 0, b = strtod(want, &e2);
            if (!v || !*v || *e1 || !*want || *e2)
                return false;
            if ((!strcmp(op, "gte") && a < b) || (!strcmp(op, "lte") && a > b) ||
                (!strcmp(op, "gt") && a <= b) || (!strcmp(op, "lt") && a >= b))
                return false;
        }
    }
    return true;
}

/* The page built here: json, live strings in a JSON array. */
static void page_item(const void *src, size_t i, const char **js, size_t *jl, const char **lv,
                      size_t *ll)
{
    json_t *j = json_array_get(src, 2 * i), *l = json_array_get(src, 2 * i + 1);
    *js = json_string_value(j);
    *jl = json_string_length(j);
    *lv = json_string_value(l);
    *ll = json_string_length(l);
}

/* Whether the index has an entry past the last scanned; then the answer. */
static void own_more(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    struct own_list *ol = (void *)req->load_state;
    json_t *page = json_object_get(req->tmp, "page");
    list_respond(req, ol->first, ol->last, reply->type == REDIS_REPLY_ARRAY && reply->elements > 0,
                 json_array_size(page) / 2, page_item, page);
}

static void own_finish(struct sched_req *req, bool ask_more)
{
    struct own_list *ol = (void *)req->load_state;
    if (!ask_more || !ol->last[0]) {
        redisReply none = {.type = REDIS_REPLY_ARRAY, .elements = 0};
        own_more(req, &none);
        return;
    }
    char from[40];
    snprintf(from, sizeof(from), "(%s", ol->last);
    const char *argv[] = {ol->asc ? "ZRANGEBYSCORE" : "ZREVRANGEBYSCORE", ol->idx, from,
                          ol->asc ? "+inf" : "-inf", "LIMIT", "0", "1"};
    sched__req_redis(req, own_more, 7, argv, NULL);
}

/* Every object of the batch answered: in index order, each kept, skipped
 * or its entry dropped; then the page is full, or the next batch. */
static void own_batch_read(struct sched_req *req)
{
    struct own_list *ol = (void *)req->load_state;
    json_t *ids = json_object_get(req->tmp, "ids"), *rows = json_object_get(req->tmp, "rows");
    json_t *page = json_object_get(req->tmp, "page");
    size_t n = json_array_size(ids) / 2, m = json_array_size(rows), i;
    for (i = 0; i < m; i++) {
        const char *id = json_string_value(json_array_get(ids, 2 * i));
        json_t *row = json_array_get(rows, i);
        snprintf(ol->last, sizeof(ol->last), "%s", json_string_value(json_array_get(ids, 2 * i + 1)));
        ol->scanned++;
        const char *archived = json_string_value(json_array_get(row, 2));
        if (!json_is_string(json_array_get(row, 0)) ||
            (ol->active && archived && !strcmp(archived, "1"))) {
            /* gone (an archived session's TTL) or archived: its entry goes */
            const char *z[] = {"ZREM", ol->idx, id};
            wp_redis_argv(req->srv->rds, NULL, NULL, 3, z, NULL);
            continue;
        }
        if (!own_pass(row, req->tmp2))
            continue;
        if (!ol->first[0])
            snprintf(ol->first, sizeof(ol->first), "%s", ol->last);
        json_t *lv = json_array_get(row, 1);
        json_array_append(page, json_array_get(row, 0));
        json_array_append_new(page, json_is_string(lv) ? json_incref(lv) : json_string(""));
        if (json_array_size(page) / 2 >= (size_t)ol->limit)
            break;
    }
    if (json_array_size(page) / 2 >= (size_t)ol->limit) {
        if (i + 1 < n) { /* entries past the last one scanned (read or not): more */
            redisReply one = {.type = REDIS_REPLY_ARRAY, .elements = 1};
            own_more(req, &one);
        } else {
            own_finish(req, true);
        }
    } else if (m == n && n < (size_t)ol->batch) {
        own_finish(req, false); /* the index ends here */
    } else if (ol->scanned >= OWN_LIST_SCAN_MAX) {
        own_finish(req, true);
    } else {
        own_batch(req);
    }
}

static void own_row_cb(void *ctx, redisReply *reply)
{
    struct own_row *or = ctx;
    struct sched_req *req = or->req;
    size_t i = or->i;
    free(or);
    if (!sched__req_release(req))
        return; /* answered already, or the client went away */
    if (!reply) {
        sched__respond_error(req, 503, "api_error", NULL, "storage unavailable");
        return;
    }
    struct own_list *ol = (void *)req->load_state;
    json_t *row = json_array();
    for (size_t k = 0; reply->type == REDIS_REPLY_ARRAY && k < reply->elements; k++) {
        redisReply *f = reply->element[k];
        json_array_append_new(row, f->type == REDIS_REPLY_STRING ? json_stringn(f->str, f->len)
                                                                 : json_null());
    }
    json_array_set_new(json_object_get(req->tmp, "rows"), i, row);
    if (--ol->outstanding == 0)
        own_batch_read(req);
}

static void own_ids(void *ctx, redisReply *reply)
{
    struct sched_req *req = ctx;
    struct own_list *ol = (void *)req->load_state;
    if (reply->type != REDIS_REPLY_ARRAY) {
        sched__respond_error(req, 500, "api_error", NULL, "list failed: %s",
                             reply->type == REDIS_REPLY_ERROR ? reply->str : "bad reply");
        return;
    }
    /* one id more than are read: whether the index goes on past them */
    size_t n = reply->elements / 2, m = n < (size_t)ol->batch - 1 ? n : (size_t)ol->batch - 1;
    json_t *ids = json_array(), *rows = json_array();
    for (size_t i = 0; i < 2 * n; i++)
        json_array_append_new(ids, json_stringn(reply->element[i]->str ? reply->element[i]->str : "",
                                                reply->element[i]->len));
    for (size_t i = 0; i < m; i++)
        json_array_append_new(rows, json_null());
    json_object_set_new(req->tmp, "ids", ids);
    json_object_set_new(req->tmp, "rows", rows);
    if (n == 0) {
        own_finish(req, false);
        return;
    }
    /* json, live, archived, then each filter's field */
    size_t nf = json_array_size(req->tmp2) / 3;
    const char **argv = calloc(5 + nf, sizeof(*argv));
    if (!argv) {
        sched__respond_error(req, 500, "api_error", NULL, "out of memory");
        return;
    }
    argv[0] = "HMGET";
    argv[2] = "json";
    argv[3] = "live";
    argv[4] = "archived";
    for (size_t j = 0; j < nf; j++)
        argv[5 + j] = json_string_value(json_array_get(req->tmp2, 3 * j));
    if (!ev_is_active(&req->timeout)) { /* as sched__req_redis: Redis must answer in time */
        ev_timer_set(&req->timeout, req->srv->cfg.redis_timeout, 0.);
        ev_timer_start(req->srv->loop, &req->timeout);
    }
    ol->outstanding = (int)m;
    sched__req_hold(req); /* req outlives the loop, whatever answers come */
    for (size_t i = 0; i < m; i++) {
        char kobj[200];
        struct own_row *or = malloc(sizeof(*or));
        sched__key_obj(kobj, sizeof(kobj), NULL, json_string_value(json_array_get(ids, 2 * i)));
        argv[1] = kobj;
        if (or) {
            or->req = req;
            or->i = i;
        }
        if (!or || wp_redis_argv(req->srv->rds, own_row_cb, or, (int)(5 + nf), argv, NULL) < 0) {
            free(or);
            ol->outstanding -= (int)(m - i); /* those never sent */
            free(argv);
            if (sched__req_release(req))
                sched__respond_error(req, 503, "api_error", NULL, "storage unavailable");
            return;
        }
        sched__req_hold(req);
    }
    free(argv);
    sched__req_release(req);
}

/* The next batch of the index: as many entries as the page still needs
 * (at least 10: filters may skip some), plus one. */
static void own_batch(struct sched_req *req)
{
    struct own_list *ol = (void *)req->load_state;
    char from[40], lim[16];
    int want = ol->limit - (int)(json_array_size(json_object_get(req->tmp, "page")) / 2);
    ol->batch = (want > 10 ? want : 10) + 1;
    if (ol->last[0])
        snprintf(from, sizeof(from), "(%s", ol->last);
    else
        snprintf(from, sizeof(from), "%s", ol->asc ? "-inf" : "+inf");
    snprintf(lim, sizeof(lim), "%d", ol->batch);
    const char *argv[] = {ol->asc ? "ZRANGEBYSCORE" : "ZREVRANGEBYSCORE", ol->idx, from,
                          ol->asc ? "+inf" : "-inf", "WITHSCORES", "LIMIT", "0", lim};
    sched__req_redis(req, own_ids, 8, argv, NULL);
}

static void own_list_start(struct sched_req *req, const char *kidx, const char *cur, int limit,
                           bool asc, bool active, const char *const *filter)
{
    struct own_list *ol = (void *)req->load_state;
    memset(ol, 0, sizeof(*ol));
    snprintf(ol->idx, sizeof(ol->idx), "%s", kidx);
    snprintf(ol->last, sizeof(ol->last), "%s", cur);
    ol->limit = limit;
    ol->asc = asc;
    ol->active = active;
    json_decref(req->tmp);
    json_decref(req->tmp2);
    req->tmp = json_pack("{s:[],s:[],s:[]}", "ids", "rows", "page");
    req->tmp2 = json_array();
    for (int i = 0; filter && filter[i] && filter[i + 1] && filter[i + 2]; i += 3)
        for (int j = 0; j < 3; j++)
            json_array_append_new(req->tmp2, json_string(filter[i + j]));
    own_batch(req);
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
    req->step = (reverse ? 1 : 0) | (bidirectional ? 2 : 0) | (page ? 4 : 0);
    if (obj_self_tagged(k->id_prefix)) { /* sessions: each object its own slot */
        own_list_start(req, kidx, cur, limit, asc != reverse, !include_archived, filter);
        return;
    }
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
    sched__req_script(req, lua_list, list_cb, 1, argc, argv, NULL);
}
