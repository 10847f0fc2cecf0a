/* err.c - struct wp_err helpers. */
#include "err.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int wp_err_set(struct wp_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return code;
}

int wp_err_errno(struct wp_err *err, const char *fmt, ...)
{
    int saved = errno;
    int code = saved ? -saved : -EIO;

    if (err) {
        va_list ap;
        size_t n;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
        n = strlen(err->msg);
        snprintf(err->msg + n, sizeof(err->msg) - n, ": %s", strerror(saved ? saved : EIO));
    }
    errno = saved;
    return code;
}

int wp_err_wrap(struct wp_err *err, const char *fmt, ...)
{
    char prefix[128];
    char old[sizeof(err->msg)];
    va_list ap;

    if (!err)
        return -1;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof(old));
    /* Truncation is fine: the message is for people, the code is kept. */
    size_t n = strlen(prefix);
    if (n > sizeof(err->msg) - 3)
        n = sizeof(err->msg) - 3;
    memcpy(err->msg, prefix, n);
    memcpy(err->msg + n, ": ", 2);
    size_t rest = sizeof(err->msg) - n - 3;
    size_t olen = strnlen(old, rest);
    memcpy(err->msg + n + 2, old, olen);
    err->msg[n + 2 + olen] = '\0';
    return err->code;
}

void wp_err_clear(struct wp_err *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}

const char *wp_strerror(int code)
{
    switch (code) {
#define WP_ERR_TEXT(name, val, text) case name: return text;
        WP_ERR_MAP(WP_ERR_TEXT)
#undef WP_ERR_TEXT
    default:
        break;
    }
    if (code < 0 && code > -4096)
        return strerror(-code);
    return code == 0 ? "success" : "unknown error";
}

const char *wp_errname(int code)
{
    static __thread char buf[32];

    switch (code) {
#define WP_ERR_NAME(name, val, text) case name: return #name;
        WP_ERR_MAP(WP_ERR_NAME)
#undef WP_ERR_NAME
    default:
        break;
    }
    snprintf(buf, sizeof(buf), "errno %d", -code);
    return buf;
}
