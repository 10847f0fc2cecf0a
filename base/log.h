/* log.h - one set of logging macros for every process.
 *
 * Each .c file defines WP_LOG_COMPONENT before including this header.
 * The level is tested before the arguments are evaluated. One line per
 * event on stderr: "2026-11-26T02:50:01.123Z warn  snap file.c:42 msg".
 * Use key=value fields in messages so grep and journald both work.
 */
#ifndef WP_LOG_H
#define WP_LOG_H

#include <stdbool.h>

#ifndef WP_LOG_COMPONENT
#define WP_LOG_COMPONENT "-"
#endif

enum wp_log_level { WP_LOG_ERROR = 0, WP_LOG_WARN, WP_LOG_INFO, WP_LOG_DEBUG };

extern int wp_log_level_current;

/* level: "error", "warn", "info", "debug". Returns 0 or WP_EINVAL_INPUT. */
int wp_log_set_level(const char *level);
/* Comma list as curl's trace syntax: "all,-alink" or "snap,pool". */
int wp_log_set_components(const char *spec);
bool wp_log_component_on(const char *component);

void wp_log_write(int level, const char *component, const char *file, int line,
                  bool with_errno, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

#define WP_LOG_AT(lvl, site, en, ...)                                            \
    do {                                                                         \
        if ((lvl) <= wp_log_level_current && wp_log_component_on(WP_LOG_COMPONENT)) \
            wp_log_write((lvl), WP_LOG_COMPONENT, (site) ? __FILE__ : NULL, __LINE__, \
                         (en), __VA_ARGS__);                                     \
    } while (0)

#define log_error(...) WP_LOG_AT(WP_LOG_ERROR, 1, false, __VA_ARGS__)
#define log_perror(...) WP_LOG_AT(WP_LOG_ERROR, 1, true, __VA_ARGS__)
#define log_warn(...) WP_LOG_AT(WP_LOG_WARN, 1, false, __VA_ARGS__)
#define log_info(...) WP_LOG_AT(WP_LOG_INFO, 0, false, __VA_ARGS__)
#define log_debug(...) WP_LOG_AT(WP_LOG_DEBUG, 0, false, __VA_ARGS__)

/* Invariant check: if it fails, memory is already wrong. Logs and aborts. */
#define wp_assert(cond)                                                         \
    do {                                                                        \
        if (!(cond))                                                            \
            wp_assert_fail(#cond, __FILE__, __LINE__);                          \
    } while (0)
void wp_assert_fail(const char *expr, const char *file, int line)
    __attribute__((noreturn));

#endif
