/* rcluster.h - Redis Cluster routing over wp_redis (hiredis 0.14 has none).
 *
 * A wp_rcl holds the slot map (CLUSTER SLOTS) and one wp_redis per master
 * it names; a command goes to the master of its first key's slot. A MOVED
 * reply updates that slot, asks for a new map and resends the command to
 * the node named; an ASK reply sends ASKING and the command to the node
 * named, once, without touching the map. At most WP_RCL_MAX_HOPS
 * redirects, then the caller gets the last error reply.
 *
 * Not retried: a command whose connection died before its reply (the
 * caller gets NULL, as with wp_redis: it may or may not have run). The
 * map is asked for again then too (the master may have failed over).
 *
 * Pub/sub: a cluster forwards PUBLISH to every node, so a subscription is
 * one wp_redis to any node (wp_rcl_subscribe); when that node stays
 * unreachable it moves to a master of the current map.
 *
 * The map is asked for again every WP_RCL_REFRESH_S, and every
 * WP_RCL_REFRESH_FAST_S while a master of the map is not connected (a
 * failover: its replica is named once the cluster has promoted it).
 *
 * Process-wide mode (wp_rcl_set, like base/sentinel.h): every wp_redis of
 * the process is then a wp_rcl under the same API (base/redis.h), so call
 * sites do not change; the CLIs use the synchronous router below.
 *
 * Loop: every function on the loop's thread, like wp_redis. */
#ifndef WP_RCLUSTER_H
#define WP_RCLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/redis.h"

struct ev_loop;
struct wp_err;
struct wp_rcl;

enum { WP_RCL_SLOTS = 16384, WP_RCL_MAX_NODES = 64, WP_RCL_MAX_HOPS = 5 };
#define WP_RCL_REFRESH_S 5.0
#define WP_RCL_REFRESH_FAST_S 0.5

/* Cluster mode for the whole process: seeds "host:port,..." (any nodes of
 * the cluster). Set once at start, before the first wp_redis_new; refused
 * with Sentinel (set that first). 0, or < 0 with err (changes nothing). */
int wp_rcl_set(const char *seeds, struct wp_err *err);
bool wp_rcl_on(void);
const char *wp_rcl_seeds(void);

/* CRC16-CCITT (XMODEM), the cluster's key hash. */
uint16_t wp_rcl_crc16(const void *buf, size_t len);
/* The slot of a key: the hash of the part inside the first {...} when
 * that is not empty, else of the whole key. */
int wp_rcl_keyslot(const char *key, size_t len);

/* seeds: "host:port,..." (up to WP_RCL_MAX_NODES), any nodes of the
 * cluster; the map is loaded from whichever answers first. Caller owns the
 * result (wp_rcl_free); NULL with err on a bad list or no memory. */
struct wp_rcl *wp_rcl_new(struct ev_loop *loop, const char *seeds, const char *name,
                          struct wp_err *err);
/* Pending commands get NULL replies. Not from inside one of its callbacks. */
void wp_rcl_free(struct wp_rcl *c);
/* A slot map is loaded and every master in it is connected (and the
 * subscription's connection, when there is one). */
bool wp_rcl_ready(const struct wp_rcl *c);
/* wp_redis_set_wait on the connection to every master, now and later. */
void wp_rcl_set_wait(struct wp_rcl *c, int replicas, int timeout_ms);

/* As wp_redis_argv, routed by the first key: argv[1], or for EVAL,
 * EVALSHA and FCALL (and _RO) the first of their keys, for XREAD and
 * XREADGROUP the first after STREAMS; a command without keys goes to any
 * master. < 0 (cb never called) when the map is not loaded or the slot's
 * master is not connected (a new map is asked for then). */
int wp_rcl_argv(struct wp_rcl *c, wp_redis_cb cb, void *ctx, int argc, const char **argv,
                const size_t *lens);
/* wp_redis_script on the master of the keys' slot; script must live until
 * the reply (a redirect resends it). Every key must be in one slot:
 * WP_EINVAL_INPUT otherwise, before anything is sent. */
int wp_rcl_script(struct wp_rcl *c, const char *script, wp_redis_cb cb, void *ctx, int nkeys,
                  int argc, const char **argv, const size_t *lens);
/* A subscription on its own connection to the master of the channel's
 * slot (any node would do), renewed after reconnects (wp_redis_subscribe),
 * moved to a current master when its node stays down. One per wp_rcl. */
int wp_rcl_subscribe(struct wp_rcl *c, const char *channel, wp_redis_cb cb, void *ctx);

/* Redirects followed since wp_rcl_new, and maps loaded (tests, metrics). */
struct wp_rcl_stats {
    long moved, ask, maps, sub_moves;
};
void wp_rcl_stats(const struct wp_rcl *c, struct wp_rcl_stats *st);

/* --- synchronous (CLIs; rcluster_sync.c) ----------------------------------
 * Blocking hiredis contexts to the masters of the configured cluster
 * (wp_rcl_set), AUTH done, commands timing out after 30 s. A command goes
 * to the master of its first key as for wp_rcl_argv (keyless: any master);
 * MOVED and ASK are followed. */
struct wp_rcl_sync;
/* Caller owns it (wp_rcl_sync_free); NULL with err when no seed answers
 * CLUSTER SLOTS. */
struct wp_rcl_sync *wp_rcl_sync_new(struct wp_err *err);
void wp_rcl_sync_free(struct wp_rcl_sync *s);
/* A command formatted by hiredis (redisvFormatCommand). The reply is the
 * caller's (freeReplyObject); NULL with err when no node could be asked. */
redisReply *wp_rcl_sync_formatted(struct wp_rcl_sync *s, const char *cmd, size_t len,
                                  struct wp_err *err);
/* The masters of the map, for what must run on each (KEYS, SCAN): up to cap
 * contexts (owned by s) into out, their number returned; < 0 with err. */
int wp_rcl_sync_masters(struct wp_rcl_sync *s, redisContext **out, int cap, struct wp_err *err);

#endif
