/* hist.h - the one latency bucket layout (prefix wp_hist_): fixed
 * log-spaced upper bounds from 50 us to 120 s, 1-2-5 per decade. The
 * scheduler's /metrics histograms and the node's restore histograms (which
 * the node publishes in Redis and the scheduler renders) share it, so the
 * counts of every process add up bucket by bucket. Changing the table
 * changes WP_HIST_LE_TEXT, and a reader skips data published with
 * another layout. Header only, no state. */
#ifndef WP_HIST_H
#define WP_HIST_H

#include <stddef.h>

#define WP_HIST_BOUNDS(X)                                                          \
    X(0.00005) X(0.0001) X(0.0002) X(0.0005) X(0.001) X(0.002) X(0.005) X(0.01)   \
    X(0.02) X(0.05) X(0.1) X(0.2) X(0.5) X(1) X(2) X(5) X(10) X(20) X(60) X(120)

#define WP_HIST_COUNT_ONE(v) +1
/* Finite buckets; index WP_HIST_NB is the overflow (+Inf) bucket. */
#define WP_HIST_NB (0 WP_HIST_BOUNDS(WP_HIST_COUNT_ONE))

#define WP_HIST_STR_ONE(v) #v ","
/* "0.00005,0.0001,...,120,": published next to bucket counts. */
#define WP_HIST_LE_TEXT WP_HIST_BOUNDS(WP_HIST_STR_ONE)

static inline double wp_hist_bound(size_t i)
{
#define WP_HIST_ARR_ONE(v) v,
    static const double bounds[] = { WP_HIST_BOUNDS(WP_HIST_ARR_ONE) };
#undef WP_HIST_ARR_ONE
    return i < WP_HIST_NB ? bounds[i] : 1e300;
}

/* Index of the bucket a value in seconds falls into: the first bound >= v
 * (Prometheus `le` semantics), WP_HIST_NB above the last; NaN and
 * negative values count in bucket 0. */
static inline size_t wp_hist_bucket(double seconds)
{
    size_t i = 0;
    while (i < WP_HIST_NB && !(seconds <= wp_hist_bound(i)))
        i++;
    if (seconds != seconds) /* NaN */
        return 0;
    return i;
}

#endif
