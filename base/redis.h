/* redis.h - one hiredis async connection on a libev loop, reconnecting by
 * itself (capped exponential backoff with jitter). Shared by the
 * scheduler and the node daemon.
 *
 * Loop: every function must be called on the loop's thread. Blocking
 * commands (XREAD BLOCK, BLPOP) get a connection of their own: replies
 * come back in order, so one blocked read stalls all behind it. */
#ifndef WP_REDIS_H
#define WP_REDIS_H

#include <stdbool.h>
#include <stddef.h>

#include <hiredis/hiredis.h>

struct ev_loop;
struct wp_redis;

/* reply is NULL when the connection died; it belongs to hiredis (valid
 * for the duration of the callback). */
typedef void (*wp_redis_cb)(void *ctx, redisReply *reply);

/* Starts connecting at once. Caller owns the result (wp_redis_free);
 * NULL on allocation failure. name appears in logs. In cluster mode
 * (base/rcluster.h, wp_rcl_set) host and port are unused: the handle routes
 * every command, script and subscription below through a wp_rcl (the
 * master of the first key; scripts' keys must share one slot; keyless
 * commands to any master; a subscription hears the whole cluster). */
struct wp_redis *wp_redis_new(struct ev_loop *loop, const char *host, int port, const char *name);
/* One connection to host:port whatever the process's mode (Sentinel still
 * applies): base/rcluster.c's connection to each master. */
struct wp_redis *wp_redis_new_direct(struct ev_loop *loop, const char *host, int port,
                                     const char *name);
/* Pending commands get NULL replies. Safe inside a reply callback. */
void wp_redis_free(struct wp_redis *r);
bool wp_redis_ready(const struct wp_redis *r);
/* Send argv (binary-safe with lens; lens NULL = strlen). Returns 0 and cb
 * is called exactly once (reply or NULL); < 0 (not connected) and cb is
 * never called. cb may be NULL: the reply is dropped (writes whose outcome
 * the sender does not act on). */
int wp_redis_argv(struct wp_redis *r, wp_redis_cb cb, void *ctx, int argc, const char **argv,
                  const size_t *lens);
/* The same without the durable mode's WAIT (wp_redis_set_wait): for a read
 * no replica has to confirm and that must work where WAIT cannot (a
 * cluster's CLUSTER SLOTS, asked of replicas too, and of a master whose
 * replica just died). On a handle routed through a cluster (wp_rcl_set),
 * the same as wp_redis_argv. */
int wp_redis_argv_nowait(struct wp_redis *r, wp_redis_cb cb, void *ctx, int argc, const char **argv,
                         const size_t *lens);
/* Run a Lua script: argv holds the nkeys keys then the arguments, argc
 * counting both. Same contract. The first call of a script on a connection
 * sends EVAL (which loads it), later ones EVALSHA; a NOSCRIPT answer (after
 * SCRIPT FLUSH) is retried as EVAL, and cb sees only that reply (a retried
 * call runs after what was sent on the connection meanwhile). */
int wp_redis_script(struct wp_redis *r, const char *script, wp_redis_cb cb, void *ctx, int nkeys,
                    int argc, const char **argv, const size_t *lens);

/* A deep copy of a reply, for a callback that must keep it past its return
 * (hiredis frees the original then). Caller frees it with freeReplyObject;
 * NULL when out of memory. */
redisReply *wp_redis_reply_copy(const redisReply *src);

/* Durable mode: every command with a callback is followed by WAIT replicas
 * timeout_ms on this connection, and its reply is given only once that
 * many replicas have it; when fewer do in time, the caller gets the error
 * reply "NOTREPLICATED ..." instead (the command did run on the primary). A
 * lost connection gives NULL as always. Commands without a callback are
 * sent plain. The connection must not carry subscriptions or blocking
 * commands. 0 replicas: off (the default). */
void wp_redis_set_wait(struct wp_redis *r, int replicas, int timeout_ms);

/* Credentials for every connection this process makes (AUTH [user] pass
 * as each connection's first command; a connection is ready only once
 * Redis accepted them). Process-wide on purpose: every connection of a
 * process talks to the same Redis as the same user. Set once at start,
 * before the first wp_redis_new. Reads the password from the first line
 * of path; user may be NULL (the default user). 0, or < 0 with err. */
struct wp_err;
int wp_redis_auth_file(const char *user, const char *path, struct wp_err *err);
/* The same AUTH on a synchronous hiredis context (CLIs). 0 when no
 * credentials are set or Redis accepted them; < 0 with err otherwise. */
int wp_redis_auth_sync(redisContext *c, struct wp_err *err);

/* A synchronous connection (CLIs) to the Redis of this process: host:port,
 * or in sentinel mode (base/sentinel.h) the master the sentinels name,
 * checked with ROLE; AUTH done. Commands time out after 30 s. Caller owns
 * it (redisFree); NULL with err when unreachable or refused, and in
 * cluster mode (a CLI there uses wp_rcl_sync, base/rcluster.h). */
redisContext *wp_redis_connect_sync(const char *host, int port, struct wp_err *err);
/* The same to exactly host:port (no Sentinel, no Cluster). */
redisContext *wp_redis_connect_sync_addr(const char *host, int port, struct wp_err *err);

/* How long data this process sent to Redis (or a sentinel) may stay
 * unacknowledged by the peer's TCP before the kernel drops the connection,
 * and so how long an idle connection to a vanished peer lives (keepalive
 * probes, bounded the same way). hiredis has no command deadline: without
 * this a command sent into a network partition waits for TCP's own
 * retransmission timeout (~15 min), and its reply, or the NULL that lets the
 * caller act, with it. A busy Redis still acknowledges at the TCP level, so
 * a slow command is never cut. Process-wide, set before the first
 * connection; default WP_REDIS_NET_TIMEOUT_MS; 0 = the kernel's defaults. */
#define WP_REDIS_NET_TIMEOUT_MS 5000
void wp_redis_set_net_timeout(int ms);
/* Applies it to a connected or connecting TCP socket (every connection
 * base/ opens: wp_redis, sentinels, the synchronous CLIs). */
void wp_redis_net_deadline(int fd);

/* Put this connection in subscribe mode on one channel (again after each
 * reconnect): cb gets every reply on it (the confirmation, then
 * ["message", channel, payload] arrays). Nothing else may be sent on it. */
int wp_redis_subscribe(struct wp_redis *r, const char *channel, wp_redis_cb cb, void *ctx);

#endif
