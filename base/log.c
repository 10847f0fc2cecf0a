/* log.c - stderr logging with levels and per-component switches. */
#include "log.h"
#include "err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int wp_log_level_current = WP_LOG_INFO;

#define MAX_COMPONENTS 16
static struct {
    bool all;
    int n;
    char name[MAX_COMPONENTS][16];
    bool on[MAX_COMPONENTS];
} comp = { .all = true };

static const char *level_names[] = { "error", "warn", "info", "debug" };

int wp_log_set_level(const char *level)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(level, level_names[i]) == 0) {
            wp_log_level_current = i;
            return 0;
        }
    return WP_EINVAL_INPUT;
}

int wp_log_set_components(const char *spec)
{
    char copy[256], *save = NULL;

    if (strlen(spec) >= sizeof(copy))
        return WP_EINVAL_INPUT;
    strcpy(copy, spec);
    comp.all = false;
    comp.n = 0;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        bool on = true;
        if (*t == '-' || *t == '+') {
            on = *t == '+';
            t++;
        }
        if (strcmp(t, "all") == 0) {
            comp.all = on;
            continue;
        }
        if (comp.n == MAX_COMPONENTS || strlen(t) >= sizeof(comp.name[0]))
            return WP_EINVAL_INPUT;
        strcpy(comp.name[comp.n], t);
        comp.on[comp.n++] = on;
    }
    return 0;
}

bool wp_log_component_on(const char *component)
{
    for (int i = comp.n - 1; i >= 0; i--)
        if (strcmp(comp.name[i], component) == 0)
            return comp.on[i];
    return comp.all;
}

void wp_log_write(int level, const char *component, const char *file, int line,
                  bool with_errno, const char *fmt, ...)
{
    int saved = errno;
    char msg[1024];
    struct timespec ts;
    struct tm tm;
    va_list ap;
    int n;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = snprintf(msg, sizeof(msg), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                 tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], component);
    if (file && n < (int)sizeof(msg)) {
        const char *slash = strrchr(file, '/');
        n += snprintf(msg + n, sizeof(msg) - n, "%s:%d ", slash ? slash + 1 : file, line);
    }
    if (n < (int)sizeof(msg)) {
        va_start(ap, fmt);
        n += vsnprintf(msg + n, sizeof(msg) - n, fmt, ap);
        va_end(ap);
    }
    if (with_errno && n < (int)sizeof(msg))
        n += snprintf(msg + n, sizeof(msg) - n, ": %s", strerror(saved));
    if (n >= (int)sizeof(msg))
        n = sizeof(msg) - 1;
    msg[n] = '\n';
    fwrite(msg, 1, n + 1, stderr);
    errno = saved;
}

void wp_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "assertion failed: %s at %s:%d\n", expr, file, line);
    abort();
}
