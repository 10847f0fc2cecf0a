/* pool_int.h - shared between the files of pool/ only. */
#ifndef POOL_INT_H
#define POOL_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
 *   wp:env:{E}:mem:<node>     HASH   what E's clones on a node hold (memory.c,
 *                                    ARCHITECTURE.md); expires with the node
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
#define POOL__K_MEM "wp:env:{%s}:mem:"
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
/* memory.c: what clones really hold (see the file's comment). */
struct snap_ctx;
struct wp_redis;

#define POOL__MEM_NB 12 /* private-bytes histogram buckets; the last is +Inf */
extern const uint64_t pool__mem_bounds[POOL__MEM_NB - 1];

/* One process, from /proc/PID/smaps_rollup, in bytes. */
struct pool__proc_mem {
    uint64_t rss, pss, private_, anon;
};
/* Parsers of /proc text: 0, or WP_EINVAL_INPUT when a field is missing or
 * not a sane number. cpu_ticks: utime + stime of a /proc/PID/stat line. */
int pool__mem_parse_rollup(const char *text, struct pool__proc_mem *m);
int pool__mem_parse_ksm_stat(const char *text, uint64_t *merging_pages);
int pool__mem_parse_cpu_ticks(const char *stat, uint64_t *ticks);

/* One clone: sums over the processes of its cgroup, plus the cgroup's
 * kernel memory (counted in pss and private_). */
struct pool__clone_mem {
    uint64_t pss, private_, anon, merged, kernel, cgroup;
    int nprocs;
};
/* WP_ENOTFOUND when the clone's cgroup is gone. Reads /proc only. */
int pool__mem_clone(struct snap_ctx *ctx, const char *id, struct pool__clone_mem *out,
                    struct wp_err *err);

/* Host-wide: /sys/kernel/mm/ksm counters (-1 when unreadable) and ksmd's
 * CPU time (ksmd_found false when there is no ksmd). */
struct pool__ksm_host {
    long pages_shared, pages_sharing, full_scans;
    uint64_t ksmd_cpu_ms;
    bool ksmd_found;
};
void pool__mem_ksm_host(struct pool__ksm_host *h);
/* MemAvailable from /proc/meminfo in bytes, 0 when unknown. */
uint64_t pool__mem_available(void);

/* An environment's clones on this node, as published. */
struct pool__env_mem {
    int clones;
    uint64_t pss, private_sum, anon, merged, kernel, cgroup;
    uint64_t shared;     /* pss - private_sum: about one copy of what they share */
    uint64_t p50, p95;   /* private bytes per clone */
    uint64_t hist[POOL__MEM_NB]; /* clones per bucket (not cumulative) */
    uint64_t per_clone;  /* what one more hot clone is expected to hold */
    int fit, asked;      /* hot clones that fit / the policy's target */
};
/* p50, p95 and hist of the private bytes of n clones (sorts priv). */
void pool__mem_summary(uint64_t *priv, int n, struct pool__env_mem *m);
/* HSET wp:env:{env}:mem:<node> with every figure, expiring after ttl_s. */
void pool__mem_publish(struct wp_redis *r, const char *node, const char *env, const char *ksm,
                       const struct pool__env_mem *m, double ttl_s);

#endif
