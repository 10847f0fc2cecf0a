/* bench_stats.h - a series of timings and its nearest-rank percentiles,
 * shared by the C benchmarks (header-only: each benchmark is a binary of
 * its own, and these are a few lines). */
#ifndef WP_BENCH_STATS_H
#define WP_BENCH_STATS_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAXR 256

struct series {
    char name[64]; /* what was timed, for the tables; may stay "" */
    int n;
    double v[MAXR];
};

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The p-th percentile by nearest rank; NAN for an empty series. */
static inline double pct(const struct series *s, double p)
{
    double tmp[MAXR];
    if (s->n == 0)
        return NAN;
    memcpy(tmp, s->v, sizeof(double) * (size_t)s->n);
    qsort(tmp, (size_t)s->n, sizeof(double), bench_cmp_double);
    int idx = (int)ceil(p / 100.0 * s->n) - 1;
    return tmp[idx < 0 ? 0 : idx];
}

/* Add one value; past MAXR values are dropped. */
static inline void add(struct series *s, double v)
{
    if (s->n < MAXR)
        s->v[s->n++] = v;
}

#endif
