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

#endif
