/* migrate.c - moves data stored by an older warmpool to this key layout.
 *
 * Redis Cluster support (ARCHITECTURE.md, Redis keys) renamed the keys a
 * session's scripts touch so that all are in the session's hash slot:
 * wp:obj:<sid> became wp:obj:{<sid>}, the global active set wp:brain:active
 * became a field of the session plus a shard wp:brain:active:{0..15}, and
 * the global fence wp:brain:fence one per session. wp:layout says which
 * layout the data is in ("2": this one). The scheduler moves an older
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

#define LAYOUT "2"

#include "lua/scheduler/migrate.h" /* its Lua scripts: lua/scheduler/migrate/ (Makefile) */

/* One SCAN batch of old session objects: moved in one script. */
static int move_batch(redisContext *r, redisReply *keys, const char *fence, long *moved,
                      struct wp_err *err)
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
    argv[argc++] = lua_migrate_sessions;
    argv[argc++] = "0";
    argv[argc++] = fence;
    for (size_t i = 0; i < n; i++) {
        const char *sid = keys->element[i]->str + strlen("wp:obj:");
        sched__brain_active_key(shard[i], sizeof(shard[i]), sid);
        argv[argc++] = sid;
        argv[argc++] = shard[i];
    }
    redisReply *m = redisCommandArgv(r, (int)argc, argv, NULL);
    if (m && m->type == REDIS_REPLY_INTEGER)
        *moved += m->integer;
    else
        rc = wp_err_set(err, WP_EPROTO, "moving sessions: %s", m && m->str ? m->str : r->errstr);
    freeReplyObject(m);
    free(argv);
    free(shard);
    return rc;
}

static int migrate(redisContext *r, struct wp_err *err)
{
    redisReply *v = redisCommand(r, "GET wp:layout");
    bool done = v && v->type == REDIS_REPLY_STRING && !strcmp(v->str, LAYOUT);
    bool bad = !v || v->type == REDIS_REPLY_ERROR;
    int rc = bad ? wp_err_set(err, WP_EPROTO, "GET wp:layout: %s", v && v->str ? v->str : r->errstr) : 0;
    freeReplyObject(v);
    if (done || bad)
        return rc;
    redisReply *f = redisCommand(r, "GET wp:brain:fence");
    char fence[32] = "0";
    if (f && f->type == REDIS_REPLY_STRING && strlen(f->str) < sizeof(fence) &&
        strspn(f->str, "0123456789") == strlen(f->str))
        snprintf(fence, sizeof(fence), "%s", f->str);
    freeReplyObject(f);
    char cursor[32] = "0";
    long moved = 0;
    do {
        redisReply *s = redisCommand(r, "SCAN %s MATCH wp:obj:sesn_* COUNT 1000 TYPE hash", cursor);
        if (!s || s->type != REDIS_REPLY_ARRAY || s->elements != 2) {
            rc = wp_err_set(err, WP_EPROTO, "SCAN: %s", s && s->str ? s->str : r->errstr);
            freeReplyObject(s);
            return rc;
        }
        snprintf(cursor, sizeof(cursor), "%s", s->element[0]->str);
        if (s->element[1]->elements > 0)
            rc = move_batch(r, s->element[1], fence, &moved, err);
        freeReplyObject(s);
        if (rc < 0)
            return rc;
    } while (strcmp(cursor, "0") != 0);
    /* Members left name sessions that are gone; the global keys go too. */
    redisReply *d = redisCommand(r, "DEL wp:brain:active wp:brain:fence");
    freeReplyObject(d);
    redisReply *l = redisCommand(r, "SET wp:layout " LAYOUT);
    rc = l && l->type == REDIS_REPLY_STATUS ? 0 : wp_err_set(err, WP_EPROTO, "SET wp:layout failed");
    freeReplyObject(l);
    if (rc == 0 && moved > 0)
        log_info("moved %ld session(s) to the per-session key layout", moved);
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
