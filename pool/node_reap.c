/* node_reap.c - forgetting a dead node (its heartbeat expired), or this
 * node on its way out (node__stop).
 *
 * In steps whose keys each sit in one hash slot, so it runs on Redis
 * Cluster as on one Redis: the node's heartbeat is checked, its sandbox
 * set read, one script per environment marks its sandboxes there
 * (lua/pool/node_reap/reap_env.lua), and once every one of those
 * answered, its own keys go, the wp:nodes entry last. Each step is
 * idempotent: a reaper that dies half-way leaves the node in wp:nodes and
 * the next one does it all again; several may race.
 */
#define WP_LOG_COMPONENT "node"
#include "pool/node_int.h"
#include "lua/pool/node_reap.h" /* its Lua scripts: lua/pool/node_reap/ (Makefile) */

#define CHUNK 100 /* sandboxes per script call (wp_redis_script's argv cap) */

struct reap {
    struct node *n;
    char node[64];
    int pending;  /* environment steps in flight */
    bool failed;  /* one of them failed: the node is not forgotten this time */
    wp_redis_cb done;
    void *done_ctx;
};

static void reap_end(struct reap *rp, redisReply *reply)
{
    if (rp->done)
        rp->done(rp->done_ctx, reply);
    free(rp);
}

static void forgot_cb(void *ctx, redisReply *reply)
{
    struct reap *rp = ctx;
    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1)
        log_info("reaped node=%s", rp->node);
    reap_end(rp, reply);
}

/* Every environment's step is done: the node's own keys. */
static void forget(struct reap *rp)
{
    struct node *n = rp->n;
    char sbs[160], hash[160];
    node__fmtkey(sbs, sizeof(sbs), POOL__K_NODE_SBS, rp->node);
    node__fmtkey(hash, sizeof(hash), POOL__K_NODE, rp->node);
    const char *d1[] = { "DEL", sbs }, *d2[] = { "DEL", hash },
               *srem[] = { "SREM", POOL__K_NODES, rp->node };
    node__cmd(n, "reap", 2, d1);
    node__cmd(n, "reap", 2, d2);
    if (wp_redis_argv(n->r, forgot_cb, rp, 3, srem, NULL) < 0)
        reap_end(rp, NULL);
}

static void env_cb(void *ctx, redisReply *reply)
{
    struct reap *rp = ctx;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        log_warn("reap node=%s: %s", rp->node, reply ? reply->str : "redis disconnected");
        rp->failed = true;
    }
    if (--rp->pending > 0)
        return;
    if (rp->failed)
        reap_end(rp, NULL);
    else
        forget(rp);
}

/* One script call for up to CHUNK of the node's sandboxes of env. */
static void reap_chunk(struct reap *rp, const char *env, const char **ids, int nids)
{
    char keys[3 + CHUNK][200];
    const char *argv[2 * (3 + CHUNK) + 2];
    int argc = 0;
    node__fmtkey(keys[0], sizeof(keys[0]), POOL__K_HOT, env);
    node__fmtkey(keys[1], sizeof(keys[1]), POOL__K_NODES_OF, env);
    node__fmtkey(keys[2], sizeof(keys[2]), POOL__K_LIVE, env);
    for (int i = 0; i < nids; i++)
        node__fmtkey(keys[3 + i], sizeof(keys[0]), POOL__K_SB "%s", env, ids[i]);
    for (int i = 0; i < 3 + nids; i++)
        argv[argc++] = keys[i];
    argv[argc++] = rp->node;
    argv[argc++] = env;
    for (int i = 0; i < nids; i++)
        argv[argc++] = ids[i];
    rp->pending++;
    if (wp_redis_script(rp->n->r, lua_reap_env, env_cb, rp, 3 + nids, argc, argv, NULL) < 0) {
        rp->pending--;
        rp->failed = true;
    }
}

/* The dead node's set: "<env> <id>" members, grouped by environment. */
static void members_cb(void *ctx, redisReply *reply)
{
    struct reap *rp = ctx;
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        reap_end(rp, NULL);
        return;
    }
    size_t m = reply->elements;
    char (*env)[128] = calloc(m + 1, sizeof(*env)), (*id)[128] = calloc(m + 1, sizeof(*id));
    bool *done = calloc(m + 1, sizeof(*done));
    const char **ids = calloc(CHUNK, sizeof(*ids));
    if (!env || !id || !done || !ids) {
        rp->failed = true;
        m = 0;
    }
    for (size_t i = 0; i < m; i++)
        done[i] = reply->element[i]->type != REDIS_REPLY_STRING ||
                  sscanf(reply->element[i]->str, "%127s %127s", env[i], id[i]) != 2 ||
                  !snap_name_valid(env[i]);
    rp->pending++; /* held until every environment is sent */
    for (size_t i = 0; i < m; i++) {
        if (done[i])
            continue;
        int k = 0;
        for (size_t j = i; j < m; j++) {
            if (done[j] || strcmp(env[j], env[i]) != 0)
                continue;
            done[j] = true;
            ids[k++] = id[j];
            if (k == CHUNK) {
                reap_chunk(rp, env[i], ids, k);
                k = 0;
            }
        }
        if (k > 0)
            reap_chunk(rp, env[i], ids, k);
    }
    free(env);
    free(id);
    free(done);
    free(ids);
    env_cb(rp, reply); /* drops the hold (the reply is not an error) */
}

static void alive_cb(void *ctx, redisReply *reply)
{
    struct reap *rp = ctx;
    char sbs[160];
    if (!reply || reply->type != REDIS_REPLY_INTEGER || reply->integer != 0) {
        reap_end(rp, NULL); /* alive, or not known: not reaped */
        return;
    }
    node__fmtkey(sbs, sizeof(sbs), POOL__K_NODE_SBS, rp->node);
    const char *argv[] = { "SMEMBERS", sbs };
    if (wp_redis_argv(rp->n->r, members_cb, rp, 2, argv, NULL) < 0)
        reap_end(rp, NULL);
}

int node__reap(struct node *n, const char *node, wp_redis_cb done, void *ctx)
{
    char alive[160];
    struct reap *rp = calloc(1, sizeof(*rp));
    if (!rp)
        return -ENOMEM;
    if (!snap_name_valid(node) || strlen(node) >= sizeof(rp->node)) {
        free(rp);
        return WP_EINVAL_INPUT;
    }
    *rp = (struct reap){ .n = n, .done = done, .done_ctx = ctx };
    snprintf(rp->node, sizeof(rp->node), "%s", node);
    node__fmtkey(alive, sizeof(alive), POOL__K_ALIVE, node);
    const char *argv[] = { "EXISTS", alive };
    int rc = wp_redis_argv(n->r, alive_cb, rp, 2, argv, NULL);
    if (rc < 0)
        free(rp);
    return rc;
}
