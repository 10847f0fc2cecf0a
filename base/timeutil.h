/* timeutil.h - monotonic clocks. */
#ifndef WP_TIMEUTIL_H
#define WP_TIMEUTIL_H

#include <stdint.h>
#include <time.h>

static inline uint64_t wp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline double wp_now_ms(void)
{
    return (double)wp_now_ns() / 1e6;
}

/* Wall clock in milliseconds since the epoch. */
static inline uint64_t wp_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000ull + (uint64_t)ts.tv_nsec / 1000000ull;
}

#endif
