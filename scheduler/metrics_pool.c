/* metrics_pool.c - GET /metrics: this process's registry (metrics.c) plus
 * the pool as Redis holds it at scrape time: gauges per environment and
 * node, claims by tier, and the nodes' restore histograms. The pool's keys
 * are in many hash slots (one per environment, one per node), so no script
 * can read them all on Redis Cluster: the scan is plain reads, each routed
 * by its key, in three pipelined rounds (the node list; each node's hash,
 * heartbeat and sandboxes; each sandbox's state and each environment's
 * keys), not one atomic view: a gauge may be a few milliseconds apart from
 * another. The scan's answer is kept --metrics-cache seconds (1) and scrapes
 * meanwhile share it; scrapes that arrive while it runs wait for the same
 * one, so ten Prometheus servers cost Redis one scan a second per
 * scheduler. No API key: monitoring scrapes it; --metrics-token makes it
 * ask for `Authorization: Bearer <token>` (required beyond loopback). */
#define WP_LOG_COMPONENT "metrics"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "base/hist.h"
#include "base/log.h"
#include "base/timeutil.h"
#include "scheduler/metrics.h"
#include "scheduler/sched_int.h"

#define METRICS_MAX_BYTES (8u << 20)


/* ---- rendering the snapshot (pure; unit-tested) ---------------------------- */

static int family(struct wp_buf *o, const char *name, const char *type, const char *help)
{
    return wp_buf_printf(o, "# HELP %s %s.\n# TYPE %s %s\n", name, help, name, type);
}

/* name{k1="v1",k2="v2"} value; k2 may be NULL. */
static int sample(struct wp_buf *o, const char *name, const char *k1, const char *v1,
                  const char *k2, const char *v2, double value)
{
    int rc = wp_buf_printf(o, "%s{%s=\"", name, k1);
    rc = rc ? rc : sched_metrics_label_value(o, v1);
    if (k2) {
        rc = rc ? rc : wp_buf_printf(o, "\",%s=\"", k2);
        rc = rc ? rc : sched_metrics_label_value(o, v2);
    }
    return rc ? rc : wp_buf_printf(o, "\"} %.17g\n", value);
}

static const char *str(json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

/* A policy value as a number: the node's own field wins ("min_hot:<node>"). */
static bool policy_num(json_t *policy, const char *field, const char *node, double *out)
{
    char k[200];
    const char *v = NULL;
    if (node) {
        snprintf(k, sizeof(k), "%s:%s", field, node);
        v = str(policy, k);
    }
    if (!v)
        v = str(policy, field);
    if (!v)
        return false;
    char *end;
    *out = strtod(v, &end);
    return *end == '\0' && end != v;
}

/* Whether tier is in the policy's tiers list (absent: every tier). */
static bool tier_on(json_t *policy, const char *tier)
{
    const char *t = str(policy, "tiers");
    if (!t || !*t)
        return true;
    size_t tl = strlen(tier);
    for (const char *p = t; *p;) {
        size_t l = strcspn(p, ",");
        if (l == tl && strncmp(p, tier, tl) == 0)
            return true;
        p += l + (p[l] == ',');
    }
    return false;
}

static const char *const TIERS[] = { "hot", "warm", "cold" };

/* "<count> <sum> <b0> ... <bNB>" (per-bucket counts, last = +Inf), as
 * the node publishes restore_hist:<tier>. Returns 0 or -1. */
static int parse_hist(const char *s, uint64_t *count, double *sum, uint64_t b[WP_HIST_NB + 1])
{
    char *end;
    *count = strtoull(s, &end, 10);
    if (end == s)
        return -1;
    s = end;
    *sum = strtod(s, &end);
    if (end == s)
        return -1;
    s = end;
    for (size_t i = 0; i <= WP_HIST_NB; i++) {
        b[i] = strtoull(s, &end, 10);
        if (end == s)
            return -1;
        s = end;
    }
    return 0;
}

static int render_restore(struct wp_buf *o, json_t *nodes)
{
    const char *name = sched_metrics_hist_name(SCHED_HIST_RESTORE), *node;
    json_t *n;
    int rc = family(o, name, "histogram", sched_metrics_hist_help(SCHED_HIST_RESTORE));
    json_object_foreach(nodes, node, n) {
        json_t *f = json_object_get(n, "fields");
        const char *le = str(f, "hist_le");
        if (json_integer_value(json_object_get(n, "alive")) != 1 || !le)
            continue;
        if (strcmp(le, WP_HIST_LE_TEXT) != 0) {
            log_debug("node=%s publishes another bucket layout; its restores are skipped", node);
            continue;
        }
        for (int t = 0; t < 3 && rc == 0; t++) {
            char field[32];
            uint64_t count, b[WP_HIST_NB + 1], cum = 0;
            double sum;
            snprintf(field, sizeof(field), "restore_hist:%s", TIERS[t]);
            const char *v = str(f, field);
            if (!v || parse_hist(v, &count, &sum, b) < 0)
                continue;
            for (size_t i = 0; i <= WP_HIST_NB && rc == 0; i++) {
                char lev[32];
                cum += b[i];
                if (i < WP_HIST_NB)
                    snprintf(lev, sizeof(lev), "%g", wp_hist_bound(i));
                else
                    snprintf(lev, sizeof(lev), "+Inf");
                rc = wp_buf_printf(o, "%s_bucket{tier=\"%s\",node=\"", name, TIERS[t]);
                rc = rc ? rc : sched_metrics_label_value(o, node);
                rc = rc ? rc : wp_buf_printf(o, "\",le=\"%s\"} %llu\n", lev, (unsigned long long)cum);
            }
            rc = rc ? rc : sample(o, "warmpool_restore_seconds_sum", "tier", TIERS[t], "node", node, sum);
            rc = rc ? rc : sample(o, "warmpool_restore_seconds_count", "tier", TIERS[t], "node", node,
                                  (double)count);
        }
    }
    return rc;
}

/* One gauge per (env, node) from the memory hashes; field may be absent. */
static int mem_gauge(struct wp_buf *o, json_t *envs, const char *name, const char *help,
                     const char *field, double scale)
{
    json_t *e, *m;
    const char *env, *node;
    int rc = family(o, name, "gauge", help);
    json_object_foreach(envs, env, e) {
        json_object_foreach(json_object_get(e, "mem"), node, m) {
            const char *v = str(m, field);
            if (v)
                rc = rc ? rc : sample(o, name, "env", env, "node", node, atof(v) * scale);
        }
    }
    return rc;
}

/* KSM and what clones really hold (issue 9): shared bytes, merge
 * progress, private bytes per clone as a histogram (the node publishes it
 * cumulative, in bytes: private_le_<bound>, private_le_inf, _count,
 * _sum_bytes), hot clones that fit, and ksmd's CPU time per node. */
static int render_memory(struct wp_buf *o, json_t *nodes, json_t *envs)
{
    json_t *e, *m, *n, *v;
    const char *env, *node, *k;
    int rc = 0;

    rc = rc ? rc : mem_gauge(o, envs, "warmpool_ksm_shared_bytes",
                             "One copy of an environment's merged memory on a node", "shared_bytes", 1);
    rc = rc ? rc : mem_gauge(o, envs, "warmpool_ksm_merged_bytes",
                             "Anonymous memory of an environment's clones that KSM has merged",
                             "merged_bytes", 1);
    rc = rc ? rc : mem_gauge(o, envs, "warmpool_clones_anon_bytes",
                             "Anonymous memory of an environment's clones (merge progress: merged / this)",
                             "anon_bytes", 1);
    rc = rc ? rc : mem_gauge(o, envs, "warmpool_pool_hot_fit",
                             "Hot clones of an environment that fit a node's memory budget", "hot_fit", 1);
    rc = rc ? rc : family(o, "warmpool_sandbox_private_bytes", "histogram",
                          "Private bytes an idle clone holds beyond the shared copy");
    json_object_foreach(envs, env, e) {
        json_object_foreach(json_object_get(e, "mem"), node, m) {
            /* bounds in ascending order: collect, then sort (at most 16) */
            double bound[16];
            const char *val[16];
            int nb = 0;
            json_object_foreach(m, k, v) {
                if (strncmp(k, "private_le_", 11) || !strcmp(k + 11, "inf") || nb == 16 ||
                    !json_is_string(v))
                    continue;
                char *end;
                double b = strtod(k + 11, &end);
                if (*end || b <= 0)
                    continue; /* not a bound we understand: skipped, never guessed */
                int i = nb++;
                while (i > 0 && bound[i - 1] > b) {
                    bound[i] = bound[i - 1];
                    val[i] = val[i - 1];
                    i--;
                }
                bound[i] = b;
                val[i] = json_string_value(v);
            }
            const char *inf = str(m, "private_le_inf"), *cnt = str(m, "private_count"),
                       *sum = str(m, "private_sum_bytes");
            if (!inf || !cnt || !sum)
                continue;
            for (int i = 0; i <= nb && rc == 0; i++) {
                rc = wp_buf_printf(o, "warmpool_sandbox_private_bytes_bucket{env=\"");
                rc = rc ? rc : sched_metrics_label_value(o, env);
                rc = rc ? rc : wp_buf_printf(o, "\",node=\"");
                rc = rc ? rc : sched_metrics_label_value(o, node);
                if (i < nb)
                    rc = rc ? rc : wp_buf_printf(o, "\",le=\"%.17g\"} %s\n", bound[i], val[i]);
                else
                    rc = rc ? rc : wp_buf_printf(o, "\",le=\"+Inf\"} %s\n", inf);
            }
            rc = rc ? rc : sample(o, "warmpool_sandbox_private_bytes_sum", "env", env, "node", node,
                                  atof(sum));
            rc = rc ? rc : sample(o, "warmpool_sandbox_private_bytes_count", "env", env, "node",
                                  node, atof(cnt));
        }
    }
    rc = rc ? rc : family(o, "warmpool_restore_failures_total", "counter",
                          "Restores and boots that failed on a node since it started (a refill "
                          "retried later, a warm claim booted cold instead)");
    json_object_foreach(nodes, node, n) {
        const char *f = str(json_object_get(n, "fields"), "restore_failures");
        if (f)
            rc = rc ? rc : sample(o, "warmpool_restore_failures_total", "node", node, NULL, NULL,
                                  atof(f));
    }
    rc = rc ? rc : family(o, "warmpool_node_draining", "gauge",
                          "1 while a node drains (no new claims; leased sandboxes kept until "
                          "released or its deadline)");
    json_object_foreach(nodes, node, n)
        rc = rc ? rc : sample(o, "warmpool_node_draining", "node", node, NULL, NULL,
                              str(json_object_get(n, "fields"), "draining") != NULL);
    rc = rc ? rc : family(o, "warmpool_ksmd_cpu_seconds_total", "counter",
                          "CPU time of the host's ksmd since boot (host-wide)");
    json_object_foreach(nodes, node, n) {
        const char *c = str(json_object_get(n, "fields"), "ksmd_cpu_ms");
        if (c)
            rc = rc ? rc : sample(o, "warmpool_ksmd_cpu_seconds_total", "node", node, NULL, NULL,
                                  atof(c) / 1e3);
    }
    return rc;
}

/* One family from the per-environment fields "<prefix><env>" of the
 * nodes' hashes: name{env,node} = value * scale. */
static int node_env_field(struct wp_buf *o, json_t *nodes, const char *prefix, const char *name,
                          const char *type, const char *help, double scale)
{
    json_t *n, *v;
    const char *node, *k;
    size_t pl = strlen(prefix);
    int rc = family(o, name, type, help);

    json_object_foreach(nodes, node, n) {
        json_object_foreach(json_object_get(n, "fields"), k, v) {
            if (strncmp(k, prefix, pl) == 0 && k[pl] && json_is_string(v))
                rc = rc ? rc : sample(o, name, "env", k + pl, "node", node,
                                      atof(json_string_value(v)) * scale);
        }
    }
    return rc;
}

int sched__metrics_render_pool(json_t *snap, struct wp_buf *o)
{
    json_t *nodes = json_object_get(snap, "nodes"), *envs = json_object_get(snap, "envs"), *n, *e;
    const char *node, *env;
    int rc = 0;

    if (!json_is_object(nodes) || !json_is_object(envs))
        return WP_EPROTO; /* cjson turns an empty table into {} too, so both are objects */

    rc = rc ? rc : family(o, "warmpool_node_up", "gauge", "1 while a node's heartbeat is alive");
    json_object_foreach(nodes, node, n) {
        double up = json_integer_value(json_object_get(n, "alive")) == 1;
        rc = rc ? rc : wp_buf_printf(o, "warmpool_node_up{node=\"");
        rc = rc ? rc : sched_metrics_label_value(o, node);
        rc = rc ? rc : wp_buf_printf(o, "\"} %g\n", up);
    }
    /* How criu runs on each node (its probe): 1 for the mode in use. A
     * dashboard alerts on mode="none" (every sandbox cold) and on lazy 0. */
    rc = rc ? rc : family(o, "warmpool_node_criu_mode", "gauge",
                          "1 for the criu mode a node uses (default, no-breakpoints, none)");
    json_object_foreach(nodes, node, n) {
        const char *mode = str(json_object_get(n, "fields"), "criu_mode");
        if (mode)
            rc = rc ? rc : sample(o, "warmpool_node_criu_mode", "node", node, "mode", mode, 1);
    }
    rc = rc ? rc : family(o, "warmpool_node_criu_lazy", "gauge",
                          "1 where lazy-pages restores work on a node, 0 where they go eager");
    json_object_foreach(nodes, node, n) {
        const char *lazy = str(json_object_get(n, "fields"), "criu_lazy");
        if (lazy)
            rc = rc ? rc : sample(o, "warmpool_node_criu_lazy", "node", node, NULL, NULL,
                                  strcmp(lazy, "yes") == 0);
    }
    /* Warm-up calls (node_warm.c): a clone's first call pays its page
     * faults here, before a session's does. Not a number: not shown. */
    rc = rc ? rc : family(o, "warmpool_node_warmed_total", "counter",
                          "Hot clones a node warmed with a no-op call since it started");
    json_object_foreach(nodes, node, n) {
        const char *w = str(json_object_get(n, "fields"), "warmed");
        char *end;
        double v = w ? strtod(w, &end) : -1;
        if (w && *w && !*end && v >= 0 && v < 1e18)
            rc = rc ? rc : sample(o, "warmpool_node_warmed_total", "node", node, NULL, NULL, v);
    }
    rc = rc ? rc : family(o, "warmpool_pool_hot", "gauge",
                          "Idle hot sandboxes an environment's claims can take now");
    json_object_foreach(envs, env, e)
        rc = rc ? rc : sample(o, "warmpool_pool_hot", "env", env, NULL, NULL,
                              (double)json_integer_value(json_object_get(e, "hot")));
    rc = rc ? rc : family(o, "warmpool_pool_sandboxes", "gauge",
                          "Sandboxes a node holds, by environment and state (idle = hot, leased, "
                          "lost, released)");
    json_object_foreach(nodes, node, n) {
        json_t *by_env = json_object_get(n, "sbs"), *states, *cnt;
        const char *st;
        json_object_foreach(by_env, env, states) {
            json_object_foreach(states, st, cnt) {
                rc = rc ? rc : wp_buf_printf(o, "warmpool_pool_sandboxes{env=\"");
                rc = rc ? rc : sched_metrics_label_value(o, env);
                rc = rc ? rc : wp_buf_printf(o, "\",node=\"");
                rc = rc ? rc : sched_metrics_label_value(o, node);
                rc = rc ? rc : wp_buf_printf(o, "\",state=\"");
                rc = rc ? rc : sched_metrics_label_value(o, st);
                rc = rc ? rc : wp_buf_printf(o, "\"} %lld\n", (long long)json_integer_value(cnt));
            }
        }
    }
    static const char *const pol[] = { "min_hot", "max_hot" };
    for (int k = 0; k < 2; k++) {
        char name[64];
        snprintf(name, sizeof(name), "warmpool_pool_%s", pol[k]);
        rc = rc ? rc : family(o, name, "gauge",
                              k ? "Policy: most hot sandboxes a node keeps for an environment"
                                : "Policy: fewest hot sandboxes a node keeps for an environment");
        json_object_foreach(envs, env, e) {
            json_t *p = json_object_get(e, "policy"), *nn;
            size_t i;
            json_array_foreach(json_object_get(e, "nodes"), i, nn) {
                double v;
                if (json_is_string(nn) && policy_num(p, pol[k], json_string_value(nn), &v))
                    rc = rc ? rc : sample(o, name, "env", env, "node", json_string_value(nn), v);
            }
        }
    }
    rc = rc ? rc : family(o, "warmpool_pool_max_hot_total", "gauge",
                          "Policy: cap on an environment's hot sandboxes over all nodes (0 = none)");
    json_object_foreach(envs, env, e) {
        double v = 0;
        policy_num(json_object_get(e, "policy"), "max_hot_total", NULL, &v);
        rc = rc ? rc : sample(o, "warmpool_pool_max_hot_total", "env", env, NULL, NULL, v);
    }
    rc = rc ? rc : family(o, "warmpool_pool_tier_enabled", "gauge",
                          "Policy: 1 when claims of an environment may be served by a tier");
    json_object_foreach(envs, env, e)
        for (int t = 0; t < 3; t++)
            rc = rc ? rc : sample(o, "warmpool_pool_tier_enabled", "env", env, "tier", TIERS[t],
                                  tier_on(json_object_get(e, "policy"), TIERS[t]));
    rc = rc ? rc : node_env_field(o, nodes, "target:", "warmpool_pool_target_hot", "gauge",
                                  "Hot sandboxes a node's autoscaler keeps for an environment now",
                                  1);
    /* The claim queue (issue 20): overload is said, not hidden. */
    rc = rc ? rc : node_env_field(o, nodes, "claims_waiting:", "warmpool_node_claims_waiting",
                                  "gauge", "Warm/cold claims waiting on a node for a restore slot",
                                  1);
    rc = rc ? rc : node_env_field(o, nodes, "claim_wait_ms:",
                                  "warmpool_node_claim_wait_oldest_seconds", "gauge",
                                  "How long the oldest claim waiting on a node has waited", 1e-3);
    rc = rc ? rc : node_env_field(o, nodes, "claims_shed:", "warmpool_node_claims_shed_total",
                                  "counter",
                                  "Claims a node refused as overloaded (they would have waited "
                                  "past --claim-wait-max), since it started",
                                  1);
    rc = rc ? rc : family(o, "warmpool_pool_claims_total", "counter",
                          "Claims of an environment served, by tier (all schedulers)");
    json_object_foreach(envs, env, e)
        for (int t = 0; t < 3; t++) {
            char f[32];
            snprintf(f, sizeof(f), "claims_%s", TIERS[t]);
            const char *v = str(json_object_get(e, "stats"), f);
            rc = rc ? rc : sample(o, "warmpool_pool_claims_total", "env", env, "tier", TIERS[t],
                                  v ? atof(v) : 0);
        }
    rc = rc ? rc : render_restore(o, nodes);
    rc = rc ? rc : render_memory(o, nodes, envs);
    return rc;
}

/* ---- the route ------------------------------------------------------------- */

#define MCACHE_MAX_WAITERS 64

struct sched_mcache {
    json_t *snap;       /* the last scan's answer (owned), NULL if none or failed */
    uint64_t at;        /* when it arrived (monotonic ns) */
    bool running;       /* a scan is in flight */
    uint64_t scans;     /* scans run by this process */
    int nwait;
    struct sched_req *waiters[MCACHE_MAX_WAITERS]; /* held until the scan answers */
};

void sched__metrics_cache_free(struct sched_server *srv)
{
    if (!srv->mcache)
        return;
    json_decref(srv->mcache->snap);
    free(srv->mcache);
    srv->mcache = NULL;
}

static void respond(struct sched_req *req, json_t *snap, bool redis_ok)
{
    struct wp_buf b;
    wp_buf_init(&b, METRICS_MAX_BYTES);
    int rc = sched_metrics_render(req->srv->metrics, &b);
    if (rc == 0 && snap)
        rc = sched__metrics_render_pool(snap, &b);
    if (rc == 0)
        rc = family(&b, "warmpool_metrics_pool_scrape_ok", "gauge",
                    "1 when the pool gauges of this scrape were read from Redis");
    if (rc == 0)
        rc = wp_buf_printf(&b, "warmpool_metrics_pool_scrape_ok %d\n", redis_ok && snap && rc == 0);
    if (rc == 0 && req->srv->mcache)
        rc = family(&b, "warmpool_metrics_pool_scans_total", "counter",
                    "Pool scans (reads of every node and sandbox) this process ran "
                    "for /metrics; scrapes within --metrics-cache share one");
    if (rc == 0 && req->srv->mcache)
        rc = wp_buf_printf(&b, "warmpool_metrics_pool_scans_total %llu\n",
                           (unsigned long long)req->srv->mcache->scans);
    if (rc < 0) {
        wp_buf_free(&b);
        sched__respond_error(req, 500, "api_error", NULL, "metrics: %s", wp_strerror(rc));
        return;
    }
    sched__respond_body(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data ? b.data : "",
                        b.len);
    wp_buf_free(&b);
}

/* ---- the scan: {"nodes": {N: {"alive": 0|1, "fields": {node hash}, "sbs":
 * {E: {state: count}}}}, "envs": {E: {"hot": LLEN, "policy": {...},
 * "stats": {...}, "nodes": [N...], "mem": {N: {...}}}}}. Environments are
 * those some node holds sandboxes of or publishes a target for. ---- */

enum scan_op_kind { OP_NODES, OP_NODE, OP_ALIVE, OP_SBS, OP_SB, OP_POLICY, OP_STATS, OP_HOT,
                    OP_ENV_NODES, OP_MEM };

struct scan {
    struct sched_server *srv;
    json_t *snap;
    json_t *members; /* N -> ["E id", ...]: round 3 reads their states */
    int pending;
    int round;
    bool failed;
};

struct scan_op {
    struct scan *sc;
    enum scan_op_kind kind;
    char a[160], b[160]; /* node or environment; sandbox member or node */
};

static void scan_done(struct scan *sc);
static void scan_send(struct scan *sc, enum scan_op_kind kind, const char *a, const char *b);

static json_t *hash_of(redisReply *r)
{
    json_t *o = json_object();
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        if (r->element[i]->type == REDIS_REPLY_STRING && r->element[i + 1]->type == REDIS_REPLY_STRING)
            json_object_set_new(o, r->element[i]->str, json_string(r->element[i + 1]->str));
    return o;
}

static json_t *env_of(struct scan *sc, const char *e)
{
    json_t *envs = json_object_get(sc->snap, "envs"), *env = json_object_get(envs, e);
    if (!env) {
        env = json_pack("{s:i, s:{}, s:{}, s:[], s:{}}", "hot", 0, "policy", "stats", "nodes", "mem");
        json_object_set_new(envs, e, env);
    }
    return env;
}

/* Round 3: each sandbox's state and each environment's keys. */
static void scan_round3(struct scan *sc)
{
    const char *n, *e;
    json_t *ms, *m, *env;
    size_t i;
    json_object_foreach(sc->members, n, ms) json_array_foreach(ms, i, m)
        scan_send(sc, OP_SB, n, json_string_value(m));
    json_object_foreach(json_object_get(sc->snap, "envs"), e, env) {
        scan_send(sc, OP_POLICY, e, "");
        scan_send(sc, OP_STATS, e, "");
        scan_send(sc, OP_HOT, e, "");
        scan_send(sc, OP_ENV_NODES, e, "");
    }
}

static void scan_reply(struct scan_op *op, redisReply *r)
{
    struct scan *sc = op->sc;
    json_t *nodes = json_object_get(sc->snap, "nodes"), *node = json_object_get(nodes, op->a);
    bool arr = r->type == REDIS_REPLY_ARRAY;
    size_t i;
    switch (op->kind) {
    case OP_NODES:
        for (i = 0; arr && i < r->elements; i++)
            if (r->element[i]->type == REDIS_REPLY_STRING && strlen(r->element[i]->str) < sizeof(op->a)) {
                const char *nn = r->element[i]->str;
                json_object_set_new(nodes, nn, json_pack("{s:i, s:{}, s:{}}", "alive", 0, "fields", "sbs"));
                scan_send(sc, OP_NODE, nn, "");
                scan_send(sc, OP_ALIVE, nn, "");
                scan_send(sc, OP_SBS, nn, "");
            }
        break;
    case OP_NODE: {
        json_t *f = hash_of(r), *v;
        const char *k;
        json_object_set_new(node, "fields", f);
        json_object_foreach(f, k, v) if (!strncmp(k, "target:", 7) && k[7])
            env_of(sc, k + 7);
        break;
    }
    case OP_ALIVE:
        json_object_set_new(node, "alive", json_integer(r->type == REDIS_REPLY_INTEGER && r->integer == 1));
        break;
    case OP_SBS: {
        json_t *ms = json_array();
        for (i = 0; arr && i < r->elements; i++) {
            char e[160], id[160];
            if (r->element[i]->type == REDIS_REPLY_STRING &&
                sscanf(r->element[i]->str, "%159s %159s", e, id) == 2) {
                env_of(sc, e);
                json_array_append_new(ms, json_string(r->element[i]->str));
            }
        }
        json_object_set_new(sc->members, op->a, ms);
        break;
    }
    case OP_SB: {
        char e[160], id[160];
        sscanf(op->b, "%159s %159s", e, id);
        json_t *sbs = json_object_get(node, "sbs"), *by = json_object_get(sbs, e);
        if (!by)
            json_object_set_new(sbs, e, by = json_object());
        const char *st = r->type == REDIS_REPLY_STRING ? r->str : "unknown";
        json_object_set_new(by, st, json_integer(json_integer_value(json_object_get(by, st)) + 1));
        break;
    }
    case OP_POLICY:
    case OP_STATS:
        json_object_set_new(env_of(sc, op->a), op->kind == OP_POLICY ? "policy" : "stats", hash_of(r));
        break;
    case OP_HOT:
        json_object_set_new(env_of(sc, op->a), "hot",
                            json_integer(r->type == REDIS_REPLY_INTEGER ? r->integer : 0));
        break;
    case OP_ENV_NODES: {
        json_t *l = json_array();
        for (i = 0; arr && i < r->elements; i++)
            if (r->element[i]->type == REDIS_REPLY_STRING && strlen(r->element[i]->str) < sizeof(op->b)) {
                json_array_append_new(l, json_string(r->element[i]->str));
                scan_send(sc, OP_MEM, op->a, r->element[i]->str); /* what its clones hold there */
            }
        json_object_set_new(env_of(sc, op->a), "nodes", l);
        break;
    }
    case OP_MEM:
        if (arr && r->elements > 0)
            json_object_set_new(json_object_get(env_of(sc, op->a), "mem"), op->b, hash_of(r));
        break;
    }
}

static void scan_cb(void *ctx, redisReply *reply)
{
    struct scan_op *op = ctx;
    struct scan *sc = op->sc;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        if (!sc->failed)
            log_warn("metrics: pool scan failed: %s", reply ? reply->str : "redis disconnected");
        sc->failed = true;
    } else if (!sc->failed) {
        scan_reply(op, reply);
    }
    free(op);
    if (--sc->pending > 0)
        return;
    if (!sc->failed && sc->round++ == 0) /* rounds 1 and 2 done: every node is known */
        scan_round3(sc);
    if (sc->pending == 0)
        scan_done(sc);
}

static void scan_send(struct scan *sc, enum scan_op_kind kind, const char *a, const char *b)
{
    static const char *const cmd[] = { "SMEMBERS", "HGETALL", "EXISTS", "SMEMBERS", "HGET",
                                       "HGETALL", "HGETALL", "LLEN", "SMEMBERS", "HGETALL" };
    char key[400];
    struct scan_op *op = sc->failed || !sc->srv->rds ? NULL : calloc(1, sizeof(*op));
    if (!op) {
        sc->failed = true;
        return;
    }
    op->sc = sc;
    op->kind = kind;
    snprintf(op->a, sizeof(op->a), "%s", a);
    snprintf(op->b, sizeof(op->b), "%s", b);
    /* The pool's key names (pool/pool_int.h). */
    switch (kind) {
    case OP_NODES: snprintf(key, sizeof(key), "wp:nodes"); break;
    case OP_NODE: snprintf(key, sizeof(key), "wp:node:%s", a); break;
    case OP_ALIVE: snprintf(key, sizeof(key), "wp:node:%s:alive", a); break;
    case OP_SBS: snprintf(key, sizeof(key), "wp:node:%s:sbs", a); break;
    case OP_SB: {
        char e[160], id[160];
        sscanf(b, "%159s %159s", e, id);
        snprintf(key, sizeof(key), "wp:env:{%s}:sb:%s", e, id);
        break;
    }
    case OP_POLICY: snprintf(key, sizeof(key), "wp:env:{%s}:policy", a); break;
    case OP_STATS: snprintf(key, sizeof(key), "wp:env:{%s}:stats", a); break;
    case OP_HOT: snprintf(key, sizeof(key), "wp:env:{%s}:hot", a); break;
    case OP_ENV_NODES: snprintf(key, sizeof(key), "wp:env:{%s}:nodes", a); break;
    case OP_MEM: snprintf(key, sizeof(key), "wp:env:{%s}:mem:%s", a, b); break;
    }
    const char *argv[] = { cmd[kind], key, "state" };
    if (wp_redis_argv(sc->srv->rds, scan_cb, op, kind == OP_SB ? 3 : 2, argv, NULL) < 0) {
        free(op);
        sc->failed = true;
        return;
    }
    sc->pending++;
}

/* Every scrape that waited for the scan gets its answer. */
static void answer_waiters(struct sched_mcache *mc, json_t *snap)
{
    json_decref(mc->snap);
    mc->snap = snap; /* a failed scan is not kept: the next scrape tries again */
    mc->at = wp_now_ns();
    mc->running = false;
    int n = mc->nwait;
    mc->nwait = 0;
    for (int i = 0; i < n; i++)
        if (sched__req_release(mc->waiters[i]))
            respond(mc->waiters[i], snap, snap != NULL);
}

static void scan_done(struct scan *sc)
{
    struct sched_mcache *mc = sc->srv->mcache;
    if (sc->failed)
        json_decref(sc->snap);
    json_t *snap = sc->failed ? NULL : sc->snap;
    json_decref(sc->members);
    free(sc);
    answer_waiters(mc, snap);
}

static void scan_start(struct sched_server *srv)
{
    struct scan *sc = calloc(1, sizeof(*sc));
    if (!sc) {
        answer_waiters(srv->mcache, NULL);
        return;
    }
    sc->srv = srv;
    sc->snap = json_pack("{s:{}, s:{}}", "nodes", "envs");
    sc->members = json_object();
    scan_send(sc, OP_NODES, "", "");
    if (sc->pending == 0) /* nothing sent: answered as failed */
        scan_done(sc);
}

void sched__h_metrics(struct sched_req *req)
{
    const struct sched_config *cfg = &req->srv->cfg;
    if (cfg->metrics_token_set) {
        const char *authz = sched_http_header(req->http, "authorization");
        unsigned char h[32];
        bool ok = authz && strncasecmp(authz, "Bearer ", 7) == 0;
        if (ok) {
            sched__sha256(authz + 7, strlen(authz + 7), h);
            ok = CRYPTO_memcmp(h, cfg->metrics_token_sha256, 32) == 0;
        }
        if (!ok) {
            sched__respond_error(req, 401, "authentication_error", NULL,
                                 "/metrics wants Authorization: Bearer <metrics token>");
            return;
        }
    }
    /* With Redis away this process's own metrics are still worth serving
     * (scrape_ok says the pool part is missing). */
    if (!wp_redis_ready(req->srv->rds)) {
        respond(req, NULL, false);
        return;
    }
    struct sched_mcache *mc = req->srv->mcache;
    if (!mc && !(mc = req->srv->mcache = calloc(1, sizeof(*mc)))) {
        sched__respond_error(req, 500, "api_error", NULL, "out of memory");
        return;
    }
    if (mc->snap && (double)(wp_now_ns() - mc->at) / 1e9 < cfg->metrics_cache_s) {
        respond(req, mc->snap, true);
        return;
    }
    if (mc->running && mc->nwait < MCACHE_MAX_WAITERS) {
        sched__req_hold(req);
        mc->waiters[mc->nwait++] = req;
        return;
    }
    if (mc->running) { /* too many waiting: this one is told the pool part is missing */
        respond(req, NULL, false);
        return;
    }
    mc->running = true;
    mc->scans++;
    sched__req_hold(req);
    mc->waiters[mc->nwait++] = req;
    scan_start(req->srv);
}
