/* metrics.c - the process-local registry behind GET /metrics: histograms
 * with the fixed buckets of base/hist.h and counters, each with at most one
 * label, or two for a histogram that names a second (TTFT: env and tier).
 * Label values come from outside (tool names the model chose), so each
 * metric keeps at most SCHED_METRICS_MAX_LABELS distinct values (pairs of
 * values for two labels) and folds the rest into "other": a scrape's size
 * stays bounded whatever a model sends. A pair is kept as one key, the two
 * values joined by KEY_SEP. Fixed arrays, no allocation after new(). Loop
 * thread only. */
#define WP_LOG_COMPONENT "metrics"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/hist.h"
#include "scheduler/metrics.h"

#define SCHED_METRICS_MAX_LABELS 32
#define VALUE_MAX 64 /* bytes kept of a label value, NUL included */
#define VALUE2_MAX 16 /* ...of a second label's (a tier) */
#define LABEL_MAX (VALUE_MAX + VALUE2_MAX) /* a key: value, KEY_SEP, value2 */
#define KEY_SEP '\x1f'

struct hseries {
    char label[LABEL_MAX];
    uint64_t buckets[WP_HIST_NB + 1]; /* per bucket, not cumulative; last = +Inf */
    uint64_t count;
    double sum;
};

struct cseries {
    char label[LABEL_MAX];
    uint64_t value;
};

/* Slot SCHED_METRICS_MAX_LABELS is "other". */
struct hist {
    int n;
    struct hseries s[SCHED_METRICS_MAX_LABELS + 1];
};

struct counter {
    int n;
    struct cseries s[SCHED_METRICS_MAX_LABELS + 1];
};

struct sched_metrics {
    struct hist h[SCHED_HIST__COUNT];
    struct counter c[SCHED_CTR__COUNT];
};

struct def {
    const char *name, *label, *help;
    const char *label2; /* a second label (histograms only), or NULL */
};

/* Names follow Prometheus conventions: base unit seconds, _total on
 * counters, the label named for what it holds. */
static const struct def hist_defs[SCHED_HIST__COUNT] = {
    [SCHED_HIST_TTFT] = { "warmpool_ttft_seconds", "env",
                          "Turn started (user input appended) to the first model token appended "
                          "to the session log, by pool environment and the tier of the "
                          "session's sandbox at that token (hot, warm, cold; pending: still "
                          "being claimed; none: no sandbox; failed)", "tier" },
    [SCHED_HIST_SANDBOX_ATTACHED] = { "warmpool_sandbox_attached_seconds", "tier",
                                      "Claim started to the sandbox's hands attached, by the "
                                      "tier that served the claim" },
    [SCHED_HIST_CLAIM] = { "warmpool_claim_seconds", "tier",
                           "Pool claim latency, by the tier that served it" },
    [SCHED_HIST_CLAIM_NODE_WAIT] = { "warmpool_claim_node_wait_seconds", NULL,
                                     "Time a claim waited for a first node to serve its "
                                     "environment (one just published, or whose nodes were "
                                     "restarting)" },
    [SCHED_HIST_RESTORE] = { "warmpool_restore_seconds", "tier",
                             "Sandbox restore (hot refill, warm claim) or boot (cold claim) on a "
                             "node, by tier and node, as the live nodes publish them" },
    [SCHED_HIST_TOOL] = { "warmpool_tool_seconds", "tool", "Tool call round trip, by tool" },
    [SCHED_HIST_TOOL_WAIT] = { "warmpool_tool_wait_seconds", NULL,
                               "Time a tool call waited for its sandbox to attach" },
    [SCHED_HIST_MODEL] = { "warmpool_model_request_seconds", "result",
                           "Model request start to end, by result (ok or error)" },
    [SCHED_HIST_MODEL_TTFT] = { "warmpool_model_ttft_seconds", NULL,
                                "Model request start to the first token from the model" },
};

static const struct def ctr_defs[SCHED_CTR__COUNT] = {
    [SCHED_CTR_TURNS] = { "warmpool_turns_total", NULL, "Turns started" },
    [SCHED_CTR_MODEL_RETRIES] = { "warmpool_model_retries_total", "error_type",
                                  "Model requests retried, by error type" },
    [SCHED_CTR_MODEL_ERRORS] = { "warmpool_model_errors_total", "error_type",
                                 "Model requests failed for good, by error type" },
    [SCHED_CTR_TOOL_CALLS] = { "warmpool_tool_calls_total", "tool", "Tool calls, by tool" },
    [SCHED_CTR_SANDBOX_LOST] = { "warmpool_sandbox_lost_total", NULL,
                                 "Session sandboxes that died and were replaced" },
    [SCHED_CTR_TAKEOVERS] = { "warmpool_session_takeovers_total", NULL,
                              "Sessions taken over from a dead scheduler" },
};

struct sched_metrics *sched_metrics_new(void)
{
    return calloc(1, sizeof(struct sched_metrics));
}

void sched_metrics_free(struct sched_metrics *m)
{
    free(m);
}

/* Copy at most cap - 1 bytes, never cutting a UTF-8 sequence. */
static void copy_value(char *dst, const char *src, size_t cap)
{
    size_t n = strlen(src);
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void copy_label(char *dst, const char *src)
{
    copy_value(dst, src, LABEL_MAX);
}

/* The slot for label among n used ones (strings stride bytes apart);
 * adds it when there is room, else the "other" slot. */
static int slot(char *first, size_t stride, int *n, const char *label)
{
    char want[LABEL_MAX];
    copy_label(want, label ? label : "");
    if (strcmp(want, "other") == 0) /* one series of that name, whichever way it came */
        return SCHED_METRICS_MAX_LABELS;
    for (int i = 0; i < *n; i++)
        if (strcmp(first + (size_t)i * stride, want) == 0)
            return i;
    if (*n < SCHED_METRICS_MAX_LABELS) {
        memcpy(first + (size_t)*n * stride, want, sizeof(want));
        return (*n)++;
    }
    return SCHED_METRICS_MAX_LABELS;
}

void sched_metrics_observe(struct sched_metrics *m, enum sched_hist h, const char *label,
                           double seconds)
{
    sched_metrics_observe2(m, h, label, NULL, seconds);
}

void sched_metrics_observe2(struct sched_metrics *m, enum sched_hist h, const char *label,
                            const char *label2, double seconds)
{
    char key[LABEL_MAX];
    if (!m || (unsigned)h >= SCHED_HIST__COUNT)
        return;
    struct hist *H = &m->h[h];
    if (!hist_defs[h].label)
        label = NULL;
    if (label && hist_defs[h].label2) {
        /* value KEY_SEP value2, each cut to its size; a KEY_SEP inside
         * the first would move the split: made '_' */
        char v2[VALUE2_MAX];
        copy_value(key, label, VALUE_MAX);
        for (char *p = key; *p; p++)
            if (*p == KEY_SEP)
                *p = '_';
        copy_value(v2, label2 ? label2 : "", sizeof(v2));
        size_t n = strlen(key);
        key[n] = KEY_SEP;
        memcpy(key + n + 1, v2, strlen(v2) + 1);
        label = key;
    } else if (label) {
        copy_value(key, label, VALUE_MAX);
        label = key;
    }
    int i = slot(H->s[0].label, sizeof(H->s[0]), &H->n, label);
    struct hseries *s = &H->s[i];
    if (i == SCHED_METRICS_MAX_LABELS)
        snprintf(s->label, sizeof(s->label), "other");
    if (!(seconds >= 0)) /* negative or NaN: a clock went wrong; count it as 0 */
        seconds = 0;
    s->buckets[wp_hist_bucket(seconds)]++;
    s->count++;
    s->sum += seconds;
}

void sched_metrics_inc(struct sched_metrics *m, enum sched_counter c, const char *label)
{
    if (!m || (unsigned)c >= SCHED_CTR__COUNT)
        return;
    struct counter *C = &m->c[c];
    char v[VALUE_MAX];
    if (!ctr_defs[c].label)
        label = NULL;
    if (label) {
        copy_value(v, label, sizeof(v));
        label = v;
    }
    int i = slot(C->s[0].label, sizeof(C->s[0]), &C->n, label);
    if (i == SCHED_METRICS_MAX_LABELS)
        snprintf(C->s[i].label, sizeof(C->s[i].label), "other");
    C->s[i].value++;
}

const char *sched_metrics_hist_name(enum sched_hist h)
{
    return (unsigned)h < SCHED_HIST__COUNT ? hist_defs[h].name : "";
}

const char *sched_metrics_hist_help(enum sched_hist h)
{
    return (unsigned)h < SCHED_HIST__COUNT ? hist_defs[h].help : "";
}

/* ---- exposition ---------------------------------------------------------- */

int sched_metrics_label_value(struct wp_buf *out, const char *s)
{
    int rc = 0;
    for (const char *p = s; *p && rc == 0; p++) {
        const char *seq = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
        rc = seq ? wp_buf_append(out, seq, 2) : wp_buf_append(out, p, 1);
    }
    return rc;
}

/* "name{label="value",le="bound"}" pieces; lname NULL: no label. With
 * lname2, lval is a key: both values, split at KEY_SEP ("other" has no
 * KEY_SEP: other for both). */
static int series_head2(struct wp_buf *out, const char *name, const char *suffix,
                        const char *lname, const char *lname2, const char *lval, const char *le)
{
    int rc = wp_buf_printf(out, "%s%s", name, suffix);
    if (rc == 0 && (lname || le))
        rc = wp_buf_append(out, "{", 1);
    if (rc == 0 && lname) {
        char v1[LABEL_MAX];
        const char *sep = lname2 ? strchr(lval, KEY_SEP) : NULL;
        snprintf(v1, sizeof(v1), "%.*s", sep ? (int)(sep - lval) : (int)strlen(lval), lval);
        rc = wp_buf_printf(out, "%s=\"", lname);
        if (rc == 0)
            rc = sched_metrics_label_value(out, v1);
        if (rc == 0)
            rc = wp_buf_append(out, "\"", 1);
        if (rc == 0 && lname2) {
            rc = wp_buf_printf(out, ",%s=\"", lname2);
            if (rc == 0)
                rc = sched_metrics_label_value(out, sep ? sep + 1 : v1);
            if (rc == 0)
                rc = wp_buf_append(out, "\"", 1);
        }
    }
    if (rc == 0 && le)
        rc = wp_buf_printf(out, "%sle=\"%s\"", lname ? "," : "", le);
    if (rc == 0 && (lname || le))
        rc = wp_buf_append(out, "}", 1);
    return rc;
}

static int series_head(struct wp_buf *out, const char *name, const char *suffix,
                       const char *lname, const char *lval, const char *le)
{
    return series_head2(out, name, suffix, lname, NULL, lval, le);
}

static int render_hseries(struct wp_buf *out, const char *name, const char *lname,
                          const char *lname2, const struct hseries *s)
{
    uint64_t cum = 0;
    char le[32];
    int rc = 0;
    for (size_t b = 0; b <= WP_HIST_NB && rc == 0; b++) {
        cum += s->buckets[b];
        if (b < WP_HIST_NB)
            snprintf(le, sizeof(le), "%g", wp_hist_bound(b));
        else
            snprintf(le, sizeof(le), "+Inf");
        rc = series_head2(out, name, "_bucket", lname, lname2, s->label, le);
        if (rc == 0)
            rc = wp_buf_printf(out, " %llu\n", (unsigned long long)cum);
    }
    if (rc == 0)
        rc = series_head2(out, name, "_sum", lname, lname2, s->label, NULL);
    if (rc == 0)
        rc = wp_buf_printf(out, " %.9g\n", s->sum);
    if (rc == 0)
        rc = series_head2(out, name, "_count", lname, lname2, s->label, NULL);
    if (rc == 0)
        rc = wp_buf_printf(out, " %llu\n", (unsigned long long)s->count);
    return rc;
}

int sched_metrics_render(const struct sched_metrics *m, struct wp_buf *out)
{
    int rc = 0;
    for (int h = 0; h < SCHED_HIST__COUNT && rc == 0; h++) {
        const struct def *d = &hist_defs[h];
        const struct hist *H = &m->h[h];
        if (h == SCHED_HIST_RESTORE)
            continue; /* the nodes' data, rendered from Redis */
        rc = wp_buf_printf(out, "# HELP %s %s.\n# TYPE %s histogram\n", d->name, d->help, d->name);
        if (!d->label) {
            /* One series, shown even before the first observation. */
            static const struct hseries zero;
            rc = rc ? rc : render_hseries(out, d->name, NULL, NULL, H->n ? &H->s[0] : &zero);
            continue;
        }
        for (int i = 0; i < H->n && rc == 0; i++)
            rc = render_hseries(out, d->name, d->label, d->label2, &H->s[i]);
        if (rc == 0 && H->s[SCHED_METRICS_MAX_LABELS].count)
            rc = render_hseries(out, d->name, d->label, d->label2, &H->s[SCHED_METRICS_MAX_LABELS]);
    }
    for (int c = 0; c < SCHED_CTR__COUNT && rc == 0; c++) {
        const struct def *d = &ctr_defs[c];
        const struct counter *C = &m->c[c];
        rc = wp_buf_printf(out, "# HELP %s %s.\n# TYPE %s counter\n", d->name, d->help, d->name);
        if (!d->label) {
            rc = rc ? rc : wp_buf_printf(out, "%s %llu\n", d->name,
                                         (unsigned long long)(C->n ? C->s[0].value : 0));
            continue;
        }
        for (int i = 0; i <= SCHED_METRICS_MAX_LABELS && rc == 0; i++) {
            if (i >= C->n && (i < SCHED_METRICS_MAX_LABELS || !C->s[i].value))
                continue;
            rc = series_head(out, d->name, "", d->label, C->s[i].label, NULL);
            if (rc == 0)
                rc = wp_buf_printf(out, " %llu\n", (unsigned long long)C->s[i].value);
        }
    }
    return rc;
}
