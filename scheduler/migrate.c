/* migrate.c - moves data stored by an older warmpool to this key layout.
 *
 * Redis Cluster support (ARCHITECTURE.md, Redis keys) renamed the keys a
 * session's scripts touch so that all are in the session's hash slot:
 * wp:obj:<sid> became wp:obj:{<sid>}, the global active set wp:brain:active
 * became a field of the session plus a shard wp:brain:active:{0..15}, and
 * the global fence wp:brain:fence one per session (layout "2"). Then
 * agents, environments, vaults, credentials and files moved to their
 * organization's slot with their indexes, agent versions and a sequence per
 * organization: wp:obj:<id> -> wp:obj:{<org>}:<id> (layout "3"). Then an
 * organization's quota keys, /v1/sandboxes records and session indexes
 * moved to its slot too (org_keys.lua), and work items to their
 * environment's slot with its queue: wp:obj:<work id> ->
 * wp:wq:{<env>}:item:<work id> (move_work_items), both layout "4". wp:layout
 * says which layout the data is in. The scheduler moves an older
 * store at start (and `--migrate-keys` does it alone): synchronous, before
 * it serves, single Redis only; idempotent, so two schedulers starting at
 * once do no harm. Schedulers of the older version must all be stopped
 * first: they would go on writing the old keys.
 */
#define WP_LOG_COMPONENT "migrate"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/redis.h"
#include "scheduler/sched_int.h"

#define LAYOUT "4"

#include "lua/scheduler/migrate.h" /* its Lua scripts: lua/scheduler/migrate/ (Makefile) */

/* One SCAN batch of old objects, moved in one script: sessions (kind NULL)
 * with the old global fence, or org-tagged objects of kind k with the old
 * global sequence (first). */
static int move_batch(redisContext *r, redisReply *keys, const struct sched_kind *k,
                      const char *first, long *moved, struct wp_err *err)
{
    size_t n = keys->elements;
    const char **argv = calloc(4 + 2 * n, sizeof(*argv));
    char (*shard)[64] = calloc(n + 1, sizeof(*shard));
    int rc = 0;
    if (!argv || !shard) {
        free(argv);
        free(shard);
        return wp_err_set(err, -ENOMEM, "out of memory");
    }
    size_t argc = 0;
    argv[argc++] = "EVAL";
    argv[argc++] = k == &sched__kind_work ? lua_migrate_work
                   : k                       ? lua_migrate_orgs
                                             : lua_migrate_sessions;
    argv[argc++] = "0";
    argv[argc++] = first;
    for (size_t i = 0; i < n; i++) {
        const char *id = keys->element[i]->str + strlen("wp:obj:");
        argv[argc++] = id;
        if (k == &sched__kind_work) {
            /* the id alone */
        } else if (k) {
            argv[argc++] = k->name;
        } else {
            sched__brain_active_key(shard[i], sizeof(shard[i]), id);
            argv[argc++] = shard[i];
        }
    }
    redisReply *m = redisCommandArgv(r, (int)argc, argv, NULL);
    if (m && m->type == REDIS_REPLY_INTEGER)
        *moved += m->integer;
    else
        rc = wp_err_set(err, WP_EPROTO, "moving %ss: %s", k ? k->name : "session",
                        m && m->str ? m->str : r->errstr);
    freeReplyObject(m);
    free(argv);
    free(shard);
    return rc;
}

/* A non-negative integer stored at key, or "0". */
static void get_count(redisContext *r, const char *key, char *out, size_t cap)
{
    redisReply *f = redisCommand(r, "GET %s", key);
    snprintf(out, cap, "0");
    if (f && f->type == REDIS_REPLY_STRING && strlen(f->str) < cap &&
        strspn(f->str, "0123456789") == strlen(f->str))
        snprintf(out, cap, "%s", f->str);
    freeReplyObject(f);
}

/* Moves every object whose old key starts wp:obj:<prefix>. */
static int move_all(redisContext *r, const char *prefix, const struct sched_kind *k,
                    const char *first, long *moved, struct wp_err *err)
{
    char cursor[32] = "0";
    int rc = 0;
    do {
        redisReply *s = redisCommand(r, "SCAN %s MATCH wp:obj:%s* COUNT 1000 TYPE hash", cursor,
                                     prefix);
        if (!s || s->type != REDIS_REPLY_ARRAY || s->elements != 2) {
            rc = wp_err_set(err, WP_EPROTO, "SCAN: %s", s && s->str ? s->str : r->errstr);
            freeReplyObject(s);
            return rc;
        }
        snprintf(cursor, sizeof(cursor), "%s", s->element[0]->str);
        if (s->element[1]->elements > 0)
            rc = move_batch(r, s->element[1], k, first, moved, err);
        freeReplyObject(s);
        if (rc < 0)
            return rc;
    } while (strcmp(cursor, "0") != 0);
    return 0;
}

/* Layout 3 -> 4: every old name of an organization's quota keys,
 * sandbox records and session indexes (SCAN), moved in one script per
 * batch (org_keys.lua). */
static int move_org_keys(redisContext *r, const char *seq, long *moved, struct wp_err *err)
{
    static const char *const match[] = {"wp:quota:*", "wp:quotause:*", "wp:sbx:*",
                                        "wp:idx:*:session", "wp:idx:*:session:active"};
    for (size_t p = 0; p < sizeof(match) / sizeof(match[0]); p++) {
        char cursor[32] = "0";
        do {
            redisReply *s = redisCommand(r, "SCAN %s MATCH %s COUNT 1000", cursor, match[p]);
            if (!s || s->type != REDIS_REPLY_ARRAY || s->elements != 2) {
                int rc = wp_err_set(err, WP_EPROTO, "SCAN: %s", s && s->str ? s->str : r->errstr);
                freeReplyObject(s);
                return rc;
            }
            snprintf(cursor, sizeof(cursor), "%s", s->element[0]->str);
            redisReply *keys = s->element[1];
            const char **argv = calloc(4 + keys->elements, sizeof(*argv));
            if (!argv) {
                freeReplyObject(s);
                return wp_err_set(err, -ENOMEM, "out of memory");
            }
            size_t argc = 0;
            argv[argc++] = "EVAL";
            argv[argc++] = lua_migrate_org_keys;
            argv[argc++] = "0";
            argv[argc++] = seq;
            for (size_t i = 0; i < keys->elements; i++)
                argv[argc++] = keys->element[i]->str;
            redisReply *m = keys->elements ? redisCommandArgv(r, (int)argc, argv, NULL) : NULL;
            int rc = 0;
            if (m && m->type == REDIS_REPLY_INTEGER)
                *moved += m->integer;
            else if (keys->elements)
                rc = wp_err_set(err, WP_EPROTO, "moving %s: %s", match[p],
                                m && m->str ? m->str : r->errstr);
            freeReplyObject(m);
            free(argv);
            freeReplyObject(s);
            if (rc < 0)
                return rc;
        } while (strcmp(cursor, "0") != 0);
    }
    return 0;
}

/* Layout 4: work items into their environment's hash slot (work.c), with
 * their index entries, the environment's sequence and the sessions' latest
 * items (lua/scheduler/migrate/work.lua). */
static int move_work_items(redisContext *r, const char *seq, struct wp_err *err)
{
    long moved = 0;
    int rc = move_all(r, sched__kind_work.id_prefix, &sched__kind_work, seq, &moved, err);
    if (rc == 0 && moved > 0)
        log_info("moved %ld work item(s) to their environment's hash slot", moved);
    return rc;
}

static int migrate(redisContext *r, struct wp_err *err)
{
    redisReply *v = redisCommand(r, "GET wp:layout");
    bool done = v && v->type == REDIS_REPLY_STRING && !strcmp(v->str, LAYOUT);
    bool at3 = v && v->type == REDIS_REPLY_STRING && !strcmp(v->str, "3");
    bool bad = !v || v->type == REDIS_REPLY_ERROR;
    int rc = bad ? wp_err_set(err, WP_EPROTO, "GET wp:layout: %s", v && v->str ? v->str : r->errstr) : 0;
    freeReplyObject(v);
    if (done || bad)
        return rc;
    char fence[32], seq[32];
    get_count(r, "wp:brain:fence", fence, sizeof(fence));
    get_count(r, "wp:seq", seq, sizeof(seq));
    long moved = 0, moved_org = 0, moved_keys = 0;
    if (!at3)
        rc = move_all(r, sched__kind_session.id_prefix, NULL, fence, &moved, err);
    const struct sched_kind *const kinds[] = {&sched__kind_agent, &sched__kind_env,
                                              &sched__kind_vault, &sched__kind_cred,
                                              &sched__kind_file};
    for (size_t i = 0; !at3 && rc == 0 && i < sizeof(kinds) / sizeof(kinds[0]); i++)
        rc = move_all(r, kinds[i]->id_prefix, kinds[i], seq, &moved_org, err);
    if (rc == 0)
        rc = move_org_keys(r, seq, &moved_keys, err);
    if (rc == 0)
        rc = move_work_items(r, seq, err);
    if (rc < 0)
        return rc;
    /* Members left name sessions that are gone; the global keys go too. */
    redisReply *d = redisCommand(r, "DEL wp:brain:active wp:brain:fence");
    freeReplyObject(d);
    redisReply *l = redisCommand(r, "SET wp:layout " LAYOUT);
    rc = l && l->type == REDIS_REPLY_STATUS ? 0 : wp_err_set(err, WP_EPROTO, "SET wp:layout failed");
    freeReplyObject(l);
    if (rc == 0 && moved > 0)
        log_info("moved %ld session(s) to the per-session key layout", moved);
    if (rc == 0 && moved_org > 0)
        log_info("moved %ld object(s) to their organization's hash slot", moved_org);
    if (rc == 0 && moved_keys > 0)
        log_info("moved %ld quota, sandbox and session index key(s) to their organization's "
                 "hash slot", moved_keys);
    return rc;
}

int sched__keys_migrate(const struct sched_config *cfg, struct wp_err *err)
{
    redisContext *r = wp_redis_connect_sync(cfg->redis_host, cfg->redis_port, err);
    if (!r)
        return err ? err->code : WP_ECONFIG;
    int rc = migrate(r, err);
    redisFree(r);
    return rc;
}
