/* testlib.h - helpers shared by the cmocka test binaries.
 * Include after <cmocka.h>'s prerequisites; see tests/unit/test_base.c. */
#ifndef WP_TESTLIB_H
#define WP_TESTLIB_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* Make a fresh directory under /tmp (or $WP_TEST_TMP); caller frees the
 * string and removes the tree with th_rmtree. */
char *th_tmpdir(const char *tag);
void th_rmtree(const char *path);

/* A real redis-server on a free loopback port, in a temp dir, killed by
 * th_redis_stop. aof: start with appendonly yes. Returns 0 or -1. */
struct th_redis {
    int port;
    int pid;
    char dir[256];
};
int th_redis_start(struct th_redis *r, int aof);
/* The same in r->dir (made by the caller) on r->port, bound to 127.0.0.1
 * and also to extra_bind (an address of the host's, e.g. a bridge's for
 * network namespaces; may be NULL). No AOF. 0 or -1. */
int th_redis_spawn_on(struct th_redis *r, const char *extra_bind);
void th_redis_stop(struct th_redis *r);
/* Kill -9 and start again on the same port and dir (keeps the AOF). */
int th_redis_restart(struct th_redis *r);

/* fork + execvp argv (NULL-terminated), stdout and stderr appended to log;
 * the pid, or -1. The caller kills and reaps it. */
int th_spawn(const char *log, const char *const argv[]);

/* SIGTERM pid, wait up to ms for it to exit (then SIGKILL and reap).
 * Its exit status (128 + signal when killed by one), or -1 past ms. */
int th_term_wait(int pid, int ms);

/* A free TCP port on 127.0.0.1 (bound then released). */
int th_free_port(void);

/* Run a shell command, capture up to cap-1 bytes of stdout into out.
 * Returns the exit status (or -1). */
int th_sh(char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* `redis-cli -p port ARGS` prints needle somewhere. */
bool th_redis_cli_has(int port, const char *args, const char *needle);

#endif
