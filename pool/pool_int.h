/* pool_int.h - shared between the files of pool/ only. */
#ifndef POOL_INT_H
#define POOL_INT_H

#include <stddef.h>

#include "pool/pool.h"

/* Redis keys. Everything about one environment E carries the hash tag {E}:
 *   wp:env:{E}:hot            LIST   idle hot sandbox ids, claim order
 *   wp:env:{E}:sb:<id>        HASH   node, addr, state (idle|leased|released|lost),
 *                                    tier, session, token, lease_until, created_ms
 *   wp:env:{E}:fence          STRING fencing counter (INCR): tokens only grow
 *   wp:env:{E}:inbox:<node>   STREAM what a node must do for E (claimed, claim,
 *                                    release)
 *   wp:env:{E}:reply:<rid>    LIST   a node's answer to one warm/cold claim
 *   wp:env:{E}:nodes          SET    nodes serving E
 *   wp:env:{E}:policy         HASH   min_hot, max_hot (per node, every node), and
 *                                    min_hot:<node>, max_hot:<node> (that node);
 *                                    live-tunable
 *   wp:env:{E}:stats          HASH   claims by tier
 *   wp:env:{E}:lat:<tier>     HASH   claim latency histogram: bucket b counts claims
 *                                    that took at most 2^b microseconds
 * Nodes:
 *   wp:nodes                  SET    node ids
 *   wp:node:<N>               HASH   addr, capacity, mem_free, versions, started_ms
 *   wp:node:<N>:alive         STRING heartbeat, expires after the node's TTL
 *   wp:node:<N>:sbs           SET    "<env> <id>" of every sandbox it holds */
#define POOL__K_HOT "wp:env:{%s}:hot"
#define POOL__K_SB "wp:env:{%s}:sb:"
#define POOL__K_FENCE "wp:env:{%s}:fence"
#define POOL__K_INBOX "wp:env:{%s}:inbox:"
#define POOL__K_REPLY "wp:env:{%s}:reply:"
#define POOL__K_NODES_OF "wp:env:{%s}:nodes"
#define POOL__K_POLICY "wp:env:{%s}:policy"
#define POOL__K_STATS "wp:env:{%s}:stats"
#define POOL__K_LAT "wp:env:{%s}:lat:"
#define POOL__K_NODES "wp:nodes"
#define POOL__K_NODE "wp:node:%s"
#define POOL__K_ALIVE "wp:node:%s:alive"
#define POOL__K_NODE_SBS "wp:node:%s:sbs"
/* Environments published by the scheduler for API environments:
 *   wp:tpls                   HASH   env name -> template digest
 *   wp:tpl:{E}                HASH   template (JSON), digest, org, env, updated_ms,
 *                                    build:<node> (each node's build status) */
#define POOL__K_TPLS "wp:tpls"
#define POOL__K_TPL "wp:tpl:{%s}"

extern const char pool__lua_claim_hot[];
extern const char pool__lua_offer[];
extern const char pool__lua_renew[];
extern const char pool__lua_release[];

/* relay.c: agentlink over TCP to the sandboxes of this node. lookup
 * answers whether (env, sandbox, token) is a current lease here: 0 with
 * the sandbox root, WP_ESTALE, WP_ENOTFOUND, or WP_ESTATE when the
 * sandbox is idle here (its claim not read yet: the relay waits for
 * pool__relay_retry). */
struct ev_loop;
struct wp_err;
struct pool__relay;
typedef int (*pool__relay_lookup_cb)(void *ctx, const char *env, const char *sandbox,
                                     unsigned long long token, char *root, size_t cap);
int pool__relay_start(struct ev_loop *loop, const char *host, int port, pool__relay_lookup_cb lookup,
                      void *ctx, struct pool__relay **out, int *bound_port, struct wp_err *err);
/* The node just learnt sandbox was claimed: routes waiting for it go on. */
void pool__relay_retry(struct pool__relay *r, const char *sandbox);
/* Close every relay to sandbox (released or destroyed). */
void pool__relay_drop(struct pool__relay *r, const char *sandbox);
void pool__relay_stop(struct pool__relay *r);

/* ksm.c: KSM settings of the host, driven while the node holds mergeable
 * clones. recover: put back settings a killed earlier run left changed
 * (returns 1 if it did). enable: save the host's settings (once) and turn
 * merging on. disable: put the saved settings back. */
int pool__ksm_recover(const char *state_dir);
int pool__ksm_enable(const char *state_dir, long pages_to_scan, long sleep_ms, struct wp_err *err);
int pool__ksm_scan_rate(long pages_to_scan);
void pool__ksm_disable(const char *state_dir);

/* catalog.c: environments learnt from Redis (wp:tpls), next to the
 * config file's. put: serve template t (steals it) as environment name, or
 * swap the template of one already served from the catalog; returns 0,
 * WP_ESTATE when busy (asked again next round) or another error (the
 * catalog reports it in build:<node> and waits for a new digest). retire:
 * stop serving name; returns > 0 while sandboxes of it remain (asked
 * again), 0 once nothing is left. Both run on the loop. */
struct snap_template;
struct wp_redis;
struct pool__catalog;
struct pool__catalog_ops {
    void *ctx;
    int (*put)(void *ctx, const char *name, struct snap_template *t, struct wp_err *err);
    int (*retire)(void *ctx, const char *name);
};
int pool__catalog_new(struct wp_redis *r, const char *node, const struct pool__catalog_ops *ops,
                      struct pool__catalog **out, struct wp_err *err);
void pool__catalog_free(struct pool__catalog *c);
/* Every cron tick; reads wp:tpls at most once a second. */
void pool__catalog_tick(struct pool__catalog *c, double now);
/* Mirror a build status line into wp:tpl:{env} build:<node> (only while
 * the environment is published). */
void pool__catalog_note(struct wp_redis *r, const char *node, const char *env, const char *line);

#endif
