/* sentinel.h - finding the Redis primary through Redis Sentinel.
 *
 * Process-wide, like the AUTH credentials (base/redis.h): every connection
 * of a process talks to the same Redis, so one list of sentinels and one
 * master name, set once at start before the first connection. When set,
 * every wp_redis asks the sentinels for the primary's address before each
 * (re)connect and ignores the host and port it was made with; the
 * synchronous connections of the CLIs do the same (wp_redis_connect_sync).
 * Sentinels are reached without AUTH. */
#ifndef WP_SENTINEL_H
#define WP_SENTINEL_H

#include <stdbool.h>
#include <stddef.h>

struct ev_loop;
struct wp_err;

enum { WP_SENTINEL_MAX = 8 };

/* list: "host:port,host:port,..." (1..WP_SENTINEL_MAX), master: the name
 * the sentinels monitor. Both or neither. 0, or < 0 with err (changes
 * nothing). */
int wp_sentinel_set(const char *list, const char *master, struct wp_err *err);
/* The sentinels' own password (their requirepass; not the master's,
 * which wp_redis_auth_file sets), read from the first line of path: every
 * connection to a sentinel then starts with AUTH. Set once at start. 0, or
 * < 0 with err. */
int wp_sentinel_auth_file(const char *path, struct wp_err *err);
bool wp_sentinel_on(void);
const char *wp_sentinel_master(void);

/* host is NULL when no sentinel knew the master (all down, timed out, or
 * the name unknown); the strings live for the callback only. */
typedef void (*wp_sentinel_cb)(void *ctx, const char *host, int port);
struct wp_sentinel_ask;
/* Ask the sentinels in turn (each within a second) for the primary's
 * address: SENTINEL get-master-addr-by-name. cb is called exactly once on
 * the loop, never from inside this call, unless cancelled first. NULL when
 * sentinels are off or out of memory (cb never called). */
struct wp_sentinel_ask *wp_sentinel_ask(struct ev_loop *loop, wp_sentinel_cb cb, void *ctx);
/* cb is not called after this. Not from inside cb (the ask is gone then). */
void wp_sentinel_ask_cancel(struct wp_sentinel_ask *a);
/* The same, blocking (CLIs): 0, or < 0 with err naming every sentinel's
 * failure. */
int wp_sentinel_ask_sync(char *host, size_t hostcap, int *port, struct wp_err *err);

/* Tell cb (host, port: the new primary) of every +switch-master the
 * sentinels announce for our master: a failover is followed at once, even
 * by a connection to an old primary that is alive but cut off from the
 * sentinels. One subscription to one sentinel at a time, the next one
 * tried a second after a failure. NULL when sentinels are off or out of
 * memory. */
struct wp_sentinel_watch;
struct wp_sentinel_watch *wp_sentinel_watch_new(struct ev_loop *loop, wp_sentinel_cb cb,
                                                void *ctx);
void wp_sentinel_watch_free(struct wp_sentinel_watch *w);

#endif
