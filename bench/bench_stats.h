/* bench_stats.h - a series of timings and its nearest-rank percentiles,
 * and the Python environment they time, shared by the C benchmarks (header-only: each benchmark is a binary of
 * its own, and these are a few lines). */
#ifndef WP_BENCH_STATS_H
#define WP_BENCH_STATS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fs.h"

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

/* The options every snapshot benchmark takes: --runs N ('n'), --out DIR
 * ('o'), --state-dir DIR ('s'). Returns 1 when c was one of them. */
static inline int bench_std_opt(int c, const char *arg, int *runs, const char **out,
                                const char **state_dir)
{
    switch (c) {
    case 'n': *runs = atoi(arg); return 1;
    case 'o': *out = arg; return 1;
    case 's': *state_dir = arg; return 1;
    default: return 0;
    }
}

/* Open OUT/NAME.json and OUT/NAME.md for writing (OUT created). Returns
 * 0, or -1 with nothing left open. */
static inline int bench_open_results(const char *out, const char *name, FILE **js, FILE **md)
{
    char path[1024];

    wp_mkdir_p(out, 0755, NULL);
    snprintf(path, sizeof(path), "%s/%s.json", out, name);
    *js = fopen(path, "w");
    snprintf(path, sizeof(path), "%s/%s.md", out, name);
    *md = fopen(path, "w");
    if (*js && *md)
        return 0;
    if (*js)
        fclose(*js);
    if (*md)
        fclose(*md);
    return -1;
}

/* The 200 MB Python environment the snapshot benchmarks time: stdlib
 * imports, 200 MiB touched page by page, then idle. */
#define PYTHON200_TEMPLATE                                                                        \
    "{\"name\":\"python200\",\"rootfs\":\"host\",\"init\":[\"/usr/bin/python3\",\"-c\","            \
    "\"import json, re, os, sys, collections, itertools, functools, datetime, decimal, "          \
    "hashlib, random, threading, subprocess, email.parser, urllib.parse, pathlib\\n"            \
    "buf = bytearray(200 << 20)\\n"                                                             \
    "for i in range(0, len(buf), 4096): buf[i] = (i >> 12) & 0xff or 1\\n"                       \
    "open('/tmp/ready', 'w').close()\\n"                                                        \
    "import time\\nwhile True: time.sleep(1)\"],"                                               \
    "\"ready_file\":\"/tmp/ready\",\"limits\":{\"memory_mb\":1024}}"

#endif
