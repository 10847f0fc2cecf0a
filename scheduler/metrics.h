/* metrics.h - process-local histograms and counters of one scheduler
 * (prefix sched_metrics_), served with pool gauges read from Redis as
 * Prometheus text on GET /metrics. Loop thread only. */
#ifndef SCHED_METRICS_H
#define SCHED_METRICS_H

#include <stdint.h>

#include "base/buf.h"

enum sched_hist {
    SCHED_HIST_TTFT,             /* turn started (user input appended) -> first token appended;
                                    labels: env, tier (sched_metrics_observe2) */
    SCHED_HIST_SANDBOX_ATTACHED, /* claim started -> hands attached; label: tier */
    SCHED_HIST_CLAIM,            /* pool claim latency; label: tier */
    SCHED_HIST_CLAIM_NODE_WAIT,  /* of a claim, the wait for a first node to serve its env */
    SCHED_HIST_RESTORE,          /* node restore latency; label: tier (from the nodes) */
    SCHED_HIST_TOOL,             /* tool call round trip; label: tool name */
    SCHED_HIST_TOOL_WAIT,        /* a tool call waiting for its sandbox to attach */
    SCHED_HIST_MODEL,            /* model request start -> end; label: ok | error */
    SCHED_HIST_MODEL_TTFT,       /* model request start -> first token from the model */
    SCHED_HIST__COUNT
};

enum sched_counter {
    SCHED_CTR_TURNS,            /* turns started */
    SCHED_CTR_MODEL_RETRIES,    /* label: error type */
    SCHED_CTR_MODEL_ERRORS,     /* label: error type (not recovered) */
    SCHED_CTR_TOOL_CALLS,       /* label: tool name */
    SCHED_CTR_SANDBOX_LOST,     /* a session's sandbox died and was replaced */
    SCHED_CTR_TAKEOVERS,        /* sessions taken over from a dead scheduler */
    SCHED_CTR__COUNT
};

struct sched_metrics;

struct sched_metrics *sched_metrics_new(void);
void sched_metrics_free(struct sched_metrics *m);
/* label may be NULL; at most 32 distinct labels per metric (more fold
 * into "other"). Values in seconds. */
void sched_metrics_observe(struct sched_metrics *m, enum sched_hist h, const char *label,
                           double seconds);
/* The same for a histogram with two labels (SCHED_HIST_TTFT): at most 32
 * distinct pairs, the rest fold into other/other. label2 is cut to 15
 * bytes (a tier), label to 63. */
void sched_metrics_observe2(struct sched_metrics *m, enum sched_hist h, const char *label,
                            const char *label2, double seconds);
void sched_metrics_inc(struct sched_metrics *m, enum sched_counter c, const char *label);

/* Append the registry in Prometheus text format 0.0.4 (HELP, TYPE, then
 * one line per series: _bucket{le=...} cumulative, +Inf, _sum, _count).
 * SCHED_HIST_RESTORE is not rendered here: it comes from the nodes (see
 * metrics_pool.c). Returns 0, WP_ETOOBIG or -ENOMEM (out keeps what was
 * appended). */
int sched_metrics_render(const struct sched_metrics *m, struct wp_buf *out);
/* Append s as a label value, escaped (backslash, double quote, newline). */
int sched_metrics_label_value(struct wp_buf *out, const char *s);
/* Metric name and help of a histogram (for callers that render data of the
 * same layout from elsewhere, as the nodes' restore histograms). */
const char *sched_metrics_hist_name(enum sched_hist h);
const char *sched_metrics_hist_help(enum sched_hist h);

#endif
