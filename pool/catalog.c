/* catalog.c - environments a node learns from Redis, next to its config
 * file: the templates the scheduler publishes for API environments.
 *
 *   wp:tpls        HASH  env name -> template digest
 *   wp:tpl:{E}     HASH  template (JSON), digest, ...; build:<node> (ours)
 *
 * Once a second the node reads wp:tpls. A name it does not serve yet, or
 * whose digest changed, has its template fetched, parsed on this machine
 * (binds must exist here) and handed to the node (ops->put); a name that
 * left the hash is retired (ops->retire) until the node reports nothing of
 * it is left. A template that cannot be served here is reported in
 * build:<node> and not fetched again until its digest changes. */
#define WP_LOG_COMPONENT "catalog"
#include "pool/pool_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/log.h"
#include "base/redis.h"
#include "base/timeutil.h"
#include "snapshot/snapshot.h"

struct entry {
    struct pool__catalog *c;
    char name[64];
    char digest[72];        /* applied (served) */
    char failed[72];        /* refused: not fetched again while unchanged */
    char want[72];          /* being fetched */
    bool seen;
    struct entry *next;
};

struct pool__catalog {
    struct wp_redis *r;     /* borrowed: the node's command connection */
    char node[64];
    struct pool__catalog_ops ops;
    struct entry *entries;
    int busy;               /* replies outstanding: no new round until 0 */
    double last;
};

#include "lua/pool/catalog.h" /* its Lua scripts: lua/pool/catalog/ (Makefile) */

static void ignore(void *ctx, redisReply *reply)
{
    (void)ctx;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        log_warn("redis: %s", reply->str);
}

void pool__catalog_note(struct wp_redis *r, const char *node, const char *env, const char *line)
{
    char key[128], field[96];
    snprintf(key, sizeof(key), POOL__K_TPL, env);
    snprintf(field, sizeof(field), "build:%s", node);
    const char *argv[] = { key, field, line };
    wp_redis_script(r, lua_note, ignore, NULL, 1, 3, argv, NULL);
}

int pool__catalog_new(struct wp_redis *r, const char *node, const struct pool__catalog_ops *ops,
                      struct pool__catalog **out, struct wp_err *err)
{
    struct pool__catalog *c = calloc(1, sizeof(*c));
    if (!c)
        return wp_err_set(err, -ENOMEM, "out of memory");
    c->r = r;
    snprintf(c->node, sizeof(c->node), "%s", node);
    c->ops = *ops;
    *out = c;
    return 0;
}

void pool__catalog_free(struct pool__catalog *c)
{
    if (!c)
        return;
    while (c->entries) {
        struct entry *e = c->entries;
        c->entries = e->next;
        free(e);
    }
    free(c);
}

static void refuse(struct pool__catalog *c, struct entry *e, const char *why)
{
    char line[300];
    snprintf(e->failed, sizeof(e->failed), "%s", e->want);
    e->want[0] = '\0';
    snprintf(line, sizeof(line), "failed: %s", why);
    log_error("env=%s (from the API) not served here: %s", e->name, why);
    pool__catalog_note(c->r, c->node, e->name, line);
}

static void fetch_cb(void *ctx, redisReply *reply)
{
    struct entry *e = ctx;
    struct pool__catalog *c = e->c;
    struct snap_template *t = NULL;
    struct wp_err err;

    /* Entries are only freed by a round, and no round starts while a
     * fetch is outstanding (busy), so e is alive here. */
    c->busy--;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING) {
        e->want[0] = '\0'; /* withdrawn meanwhile or Redis away: next round */
        return;
    }
    if (snap_template_parse(reply->element[0]->str, reply->element[0]->len, &t, &err) < 0) {
        refuse(c, e, err.msg);
        return;
    }
    if (strcmp(t->name, e->name) != 0) {
        snap_template_free(t);
        refuse(c, e, "template name differs from its key");
        return;
    }
    int rc = c->ops.put(c->ops.ctx, e->name, t, &err);
    if (rc == WP_ESTATE) {
        e->want[0] = '\0'; /* busy (building, restoring): next round */
        return;
    }
    if (rc < 0) {
        refuse(c, e, err.msg);
        return;
    }
    snprintf(e->digest, sizeof(e->digest), "%s", e->want);
    e->want[0] = '\0';
    e->failed[0] = '\0';
    log_info("env=%s (from the API) served here, digest %.12s", e->name, e->digest);
}

static void list_cb(void *ctx, redisReply *reply)
{
    struct pool__catalog *c = ctx;

    c->busy--;
    if (!reply || reply->type != REDIS_REPLY_ARRAY)
        return;
    for (struct entry *e = c->entries; e; e = e->next)
        e->seen = false;
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        redisReply *k = reply->element[i], *v = reply->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
            !snap_name_valid(k->str) || v->len >= sizeof(((struct entry *)0)->digest))
            continue;
        struct entry *e = c->entries;
        while (e && strcmp(e->name, k->str) != 0)
            e = e->next;
        if (!e) {
            e = calloc(1, sizeof(*e));
            if (!e)
                return;
            e->c = c;
            snprintf(e->name, sizeof(e->name), "%s", k->str);
            e->next = c->entries;
            c->entries = e;
        }
        e->seen = true;
        if (!strcmp(e->digest, v->str) || !strcmp(e->failed, v->str) || e->want[0])
            continue;
        char key[128];
        snprintf(key, sizeof(key), POOL__K_TPL, e->name);
        snprintf(e->want, sizeof(e->want), "%s", v->str);
        const char *argv[] = { "HMGET", key, "template", "digest" };
        if (wp_redis_argv(c->r, fetch_cb, e, 4, argv, NULL) == 0)
            c->busy++;
        else
            e->want[0] = '\0';
    }
    /* Gone from the hash: retire until the node has nothing left of it. */
    for (struct entry **pp = &c->entries; *pp;) {
        struct entry *e = *pp;
        if (e->seen) {
            pp = &e->next;
            continue;
        }
        if (e->digest[0] && c->ops.retire(c->ops.ctx, e->name) > 0) {
            pp = &e->next;
            continue;
        }
        log_info("env=%s (from the API) no longer served here", e->name);
        *pp = e->next;
        free(e);
    }
}

void pool__catalog_tick(struct pool__catalog *c, double now)
{
    if (c->busy || now - c->last < 1 || !wp_redis_ready(c->r))
        return;
    c->last = now;
    const char *argv[] = { "HGETALL", POOL__K_TPLS };
    if (wp_redis_argv(c->r, list_cb, c, 2, argv, NULL) == 0)
        c->busy++;
}
