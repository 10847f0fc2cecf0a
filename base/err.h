/* err.h - the one error convention of warmpool.
 *
 * Functions that can fail return int: 0 on success, a negative code on
 * failure (> 0 only where a header says so: a count, a pid). Detail goes
 * into a caller-provided struct wp_err, last argument, which may be NULL.
 * Codes are negative errno values or project codes from WP_ERR_MAP.
 */
#ifndef WP_ERR_H
#define WP_ERR_H

#include <stdarg.h>
#include <stddef.h>

/* Project codes, far below any errno. X(name, text). */
#define WP_ERR_MAP(X)                                              \
    X(WP_EINVAL_INPUT, -10001, "invalid input")                    \
    X(WP_ECONFIG, -10002, "bad configuration")                     \
    X(WP_ECRIU, -10003, "checkpoint/restore failed")               \
    X(WP_ENOTFOUND, -10004, "not found")                           \
    X(WP_EPROTO, -10005, "protocol error")                         \
    X(WP_ETOOBIG, -10006, "too big")                               \
    X(WP_ESTATE, -10007, "wrong state")                            \
    X(WP_ETIMEDOUT, -10008, "timed out")                           \
    X(WP_ECHILD, -10009, "child process failed")                   \
    X(WP_ESTALE, -10010, "stale token")                            \
    X(WP_EEXISTS, -10011, "already exists")                        \
    X(WP_EOVERLOADED, -10012, "overloaded, retry later")

enum wp_err_code {
#define WP_ERR_ENUM(name, val, text) name = (val),
    WP_ERR_MAP(WP_ERR_ENUM)
#undef WP_ERR_ENUM
};

struct wp_err {
    int code;
    char msg[256];
};

/* Record code and a formatted message; returns code. err may be NULL. */
int wp_err_set(struct wp_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Like wp_err_set with code = -errno (errno read at entry), appending
 * ": strerror(errno)" to the message. */
int wp_err_errno(struct wp_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prefix context ("restore sb-1: <old message>"); returns err->code, or
 * -1 if err is NULL (callers then return their own code). */
int wp_err_wrap(struct wp_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void wp_err_clear(struct wp_err *err);

/* Static text for a code: the project table, else strerror(-code). */
const char *wp_strerror(int code);
/* Symbolic name ("WP_ECRIU", "ENOENT"-like "errno 2"); static storage. */
const char *wp_errname(int code);

/* The first error on OpenSSL's queue as text into out (the queue is
 * cleared), "unknown error" when there is none. */
void wp_err_openssl(char *out, size_t cap);

#endif
