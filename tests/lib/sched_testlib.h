/* sched_testlib.h - helpers for scheduler tests: run warmpool-scheduler as
 * a child process and talk HTTP/1.1 to it over loopback. */
#ifndef WP_SCHED_TESTLIB_H
#define WP_SCHED_TESTLIB_H

#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>

struct th_sched {
    int pid;
    int port;
};

/* Start BUILD/warmpool-scheduler (found next to the test binary's build
 * dir) with --listen 127.0.0.1:0 --redis 127.0.0.1:<redis_port>
 * --api-key acme:sk-acme --api-key beta:sk-beta plus extra args (NULL-
 * terminated). Waits for its "listening PORT" line. Returns 0 or -1. */
int th_sched_start(struct th_sched *s, int redis_port, ...);
int th_sched_startv(struct th_sched *s, int redis_port, va_list ap);
/* A test group's usual stack: th_redis_start (no AOF), then one scheduler
 * with the extra args (NULL-terminated). 0, or -1 with nothing left
 * running. th_stack_stop stops both: 0 when the scheduler exited cleanly. */
struct th_redis;
int th_stack_start(struct th_redis *r, struct th_sched *s, ...);
int th_stack_stop(struct th_redis *r, struct th_sched *s);
/* SIGTERM, wait up to 10 s (then SIGKILL). Returns the exit status. */
int th_sched_stop(struct th_sched *s);
/* kill -9 and reap (a crash, not a stop). 0, or -1 when not running. */
int th_sched_kill(struct th_sched *s);
/* Path of the build directory (e.g. "build" or "build/asan"); static. */
const char *th_build_dir(void);

/* Copy BUILD/warmpool-hands into DIR/wp (a sandbox binds that dir at /.wp:
 * a copy, so a rebuild does not change what running sandboxes see), once.
 * The dir's path goes into out. Returns 0 or -1. */
int th_hands_copy(const char *dir, char *out, size_t cap);
/* Start BUILD/warmpool-node --id ID --redis 127.0.0.1:PORT --state-dir
 * STATE plus extra args (NULL-terminated), output appended to LOG.
 * Returns its pid or -1 (stop it with SIGTERM and waitpid). */
int th_node_start(const char *id, int redis_port, const char *state, const char *log, ...);
/* Wait up to secs for env's hot list (wp:env:{env}:hot) to hold at least
 * n idle sandboxes. Returns true when it does. */
bool th_wait_hot(int redis_port, const char *env, int n, int secs);

struct th_resp {
    int status;
    char head[4096];
    char *body; /* malloc'ed, NUL-terminated */
    size_t body_len;
};
void th_resp_free(struct th_resp *r);
/* One request on a new connection (Connection: close). key may be NULL
 * (no auth). body may be NULL. Returns 0 or -1 (I/O). */
int th_http(int port, const char *method, const char *path, const char *key, const char *body,
            struct th_resp *r);
/* One request as key: the parsed JSON body (owned by the caller), or NULL
 * when the request failed, the status is not want (both printed) or the
 * body is not JSON. Callers assert non-NULL. */
struct json_t;
struct json_t *th_call(int port, const char *key, const char *method, const char *path,
                       const char *body, int want);
/* The same inside a cmocka test: a failed request, another status or a
 * body that is not JSON fails the test (status and body printed). */
struct json_t *th_api(int port, const char *key, const char *method, const char *path,
                      const char *body, int want);
/* POST one user.message saying text (plain, no quotes) to session sid's
 * events as key; inside a cmocka test, anything but a 200 fails it. */
void th_send_text(int port, const char *key, const char *sid, const char *text);
/* Header value from a response head (case-insensitive name), copied. */
int th_resp_header(const struct th_resp *r, const char *name, char *out, size_t cap);

/* Raw: connect to 127.0.0.1:port (blocking fd, 10 s timeouts). */
int th_connect(int port);
/* Write all; read until EOF or timeout into out (cap). Returns bytes. */
int th_send_all(int fd, const char *p, size_t n);
int th_read_all(int fd, char *out, size_t cap, int timeout_ms);
/* Read until needle appears (or timeout); returns bytes read so far. */
int th_read_until(int fd, char *out, size_t cap, const char *needle, int timeout_ms);

#endif
