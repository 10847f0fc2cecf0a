/* cli.c - `warmpool pool set|status`: the operator's view of the pool,
 * straight from Redis (hiredis, synchronous). */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/err.h"
#include "base/rcluster.h"
#include "base/redis.h"
#include "base/sentinel.h"
#include "pool/pool_int.h"
#include "snapshot/snapshot.h"
#include "lua/pool/cli.h" /* its Lua scripts: lua/pool/cli/ (Makefile) */

static const char usage[] =
    "usage: warmpool [--redis HOST:PORT | --redis-sentinels HOST:PORT,... --redis-master NAME\n"
    "                 [--redis-sentinel-password-file PATH]\n"
    "                 | --redis-cluster HOST:PORT,...]\n"
    "                [--redis-password-file PATH [--redis-user NAME]]\n"
    "                pool COMMAND | quota COMMAND | node drain NODE [--deadline SECS] [--wait]\n"
    "       warmpool doctor [--reprobe]   what this host needs, each item with its fix\n"
    "\n"
    "  pool set ENV [--node NODE] min_hot=N max_hot=N [max_hot_total=N]\n"
    "      hot clones to keep per node (every node, or one node), and at most\n"
    "      over all nodes (0: no cap); applied within a second, no restart\n"
    "  pool set ENV tiers=hot,warm,cold|warm,cold|hot,cold|cold\n"
    "      which tiers may serve claims (cold always: the last resort); e.g.\n"
    "      warm,cold leaves hot clones unused, cold boots every claim\n"
    "  pool status [ENV]\n"
    "      per environment and node: hot, leased, lost; claims by tier; each\n"
    "      node's criu mode (and why, where criu is degraded or off)\n"
    "  pool set POOL orgs=ORG,ORG|*\n"
    "      the organizations that may use an operator's pool environment (from\n"
    "      a node's config) through the API; * (or never set): every one\n"
    "  quota set ORG sessions=N sandboxes=N hot=N memory_mb=N cpu=X disk_mb=N\n"
    "      an organization's quotas (any subset; =none removes one): live\n"
    "      sessions, live /v1/sandboxes, and what its environments keep hot\n"
    "      (hot clones, and min_hot x memory/cpu/disk, also the cap of one\n"
    "      sandbox); every scheduler enforces them at once\n"
    "  quota show [ORG]\n"
    "      quotas against what each organization uses; pools and their orgs\n"
    "\n"
    "  node drain NODE [--deadline SECS] [--wait]\n"
    "      the node takes no new claims (they go to other nodes, or wait for\n"
    "      its successor), destroys its idle clones, keeps leased sandboxes\n"
    "      until their holders release them or the deadline passes (default\n"
    "      600 s; then they are lost to their holders), and exits cleanly:\n"
    "      under systemd it restarts (an upgrade: install, then drain).\n"
    "      --wait: until it has exited, printing what is left\n";

static redisContext *rc;
static struct wp_rcl_sync *rcs; /* --redis-cluster: routed instead of rc */

static redisReply *cmd(const char *fmt, ...)
{
    struct wp_err err = { .msg = "" };
    redisReply *r = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (rcs) {
        char *f = NULL;
        int len = redisvFormatCommand(&f, fmt, ap);
        if (len >= 0)
            r = wp_rcl_sync_formatted(rcs, f, (size_t)len, &err);
        else
            snprintf(err.msg, sizeof(err.msg), "out of memory");
        redisFreeCommand(f);
    } else {
        r = redisvCommand(rc, fmt, ap);
        if (!r)
            snprintf(err.msg, sizeof(err.msg), "%s", rc->errstr);
    }
    va_end(ap);
    if (!r) {
        fprintf(stderr, "warmpool: redis: %s\n", err.msg);
        exit(1);
    }
    return r;
}

/* KEYS pattern on the one Redis, or on every master of a cluster: the
 * names, each printed into names[i] (up to cap), their number. */
static int keys_everywhere(const char *pattern, char (*names)[128], int cap)
{
    redisContext *ctx[WP_RCL_MAX_NODES] = { rc };
    struct wp_err err;
    int nctx = 1, n = 0;
    if (rcs && (nctx = wp_rcl_sync_masters(rcs, ctx, WP_RCL_MAX_NODES, &err)) < 0) {
        fprintf(stderr, "warmpool: redis: %s\n", err.msg);
        exit(1);
    }
    for (int i = 0; i < nctx; i++) {
        redisReply *k = redisCommand(ctx[i], "KEYS %s", pattern);
        if (!k) {
            fprintf(stderr, "warmpool: redis: %s\n", ctx[i]->errstr);
            exit(1);
        }
        for (size_t j = 0; k->type == REDIS_REPLY_ARRAY && j < k->elements && n < cap; j++)
            if (k->element[j]->type == REDIS_REPLY_STRING)
                snprintf(names[n++], sizeof(names[0]), "%s", k->element[j]->str);
        freeReplyObject(k);
    }
    return n;
}

/* "hot,warm,cold" in any order, each at most once, cold included ->
 * the canonical order into out. Returns 0 or -1. */
static int parse_tiers(const char *s, char *out, size_t cap)
{
    static const char *const names[] = { "hot", "warm", "cold" };
    bool on[3] = { false, false, false };
    while (*s) {
        size_t l = strcspn(s, ",");
        int k = -1;
        for (int i = 0; i < 3; i++)
            if (l == strlen(names[i]) && strncmp(s, names[i], l) == 0)
                k = i;
        if (k < 0 || on[k])
            return -1;
        on[k] = true;
        s += l;
        if (*s == ',' && !*++s)
            return -1;
    }
    if (!on[2])
        return -1;
    out[0] = '\0';
    for (int i = 0; i < 3; i++)
        if (on[i]) {
            if (out[0])
                strncat(out, ",", cap - strlen(out) - 1);
            strncat(out, names[i], cap - strlen(out) - 1);
        }
    return 0;
}

static bool num(redisReply *r, size_t i, unsigned long long *v);

/* A node keeps no more hot clones than fit its memory budget: say so now
 * rather than let the operator wonder why the pool stays smaller. */
static void warn_fit(const char *env, const char *node, long want)
{
    redisReply *nodes = node ? NULL : cmd("SMEMBERS wp:env:{%s}:nodes", env);
    size_t count = node ? 1 : nodes->type == REDIS_REPLY_ARRAY ? nodes->elements : 0;

    for (size_t i = 0; i < count; i++) {
        const char *id = node ? node : nodes->element[i]->str;
        redisReply *f = cmd("HMGET wp:env:{%s}:mem:%s hot_fit per_clone_bytes", env, id);
        unsigned long long fit, per;
        if (num(f, 0, &fit) && num(f, 1, &per) && per && fit < (unsigned long long)want)
            printf("note: node %s fits %llu hot clones of %s in its memory budget "
                   "(hot_memory_mb; %.1f MiB each, measured); it keeps at most that many\n",
                   id, fit, env, (double)per / 1048576.0);
        freeReplyObject(f);
    }
    if (nodes)
        freeReplyObject(nodes);
}

static int pool_set(int argc, char **argv)
{
    const char *env, *node = NULL;
    int n = 0;

    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    env = argv[1];
    if (!snap_name_valid(env)) {
        fprintf(stderr, "warmpool: bad environment name '%s'\n", env);
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--node") == 0 && i + 1 < argc) {
            node = argv[++i];
            if (!snap_name_valid(node)) {
                fprintf(stderr, "warmpool: bad node id '%s'\n", node);
                return 2;
            }
            continue;
        }
        char key[32];
        long v;
        char *end;
        const char *eq = strchr(argv[i], '=');
        if (!eq || (size_t)(eq - argv[i]) >= sizeof(key)) {
            fprintf(stderr, "warmpool: expected min_hot=N or max_hot=N, got '%s'\n", argv[i]);
            return 2;
        }
        snprintf(key, sizeof(key), "%.*s", (int)(eq - argv[i]), argv[i]);
        if (strcmp(key, "orgs") == 0) {
            /* Per pool: the schedulers read it when an organization names
             * the pool (scheduler/quota.c). API environments are each
             * their organization's own already. */
            const char *o = eq + 1;
            size_t ol = strlen(o);
            if (node || strncmp(env, "env_", 4) == 0 || ol == 0 || ol > 1000 ||
                (strcmp(o, "*") && (strspn(o, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                               "0123456789_-.,") != ol ||
                                    o[0] == ',' || o[ol - 1] == ',' || strstr(o, ",,")))) {
                fprintf(stderr, "warmpool: '%s': orgs is a comma list of organizations or *, "
                                "for an operator's pool (not env_...), every node\n", argv[i]);
                return 2;
            }
            freeReplyObject(cmd("HSET wp:env:{%s}:policy orgs %s", env, o));
            printf("%s orgs = %s\n", env, o);
            n++;
            continue;
        }
        if (strcmp(key, "tiers") == 0) {
            char tiers[32];
            /* Per environment only: the claimer reads it, not a node. */
            if (node || parse_tiers(eq + 1, tiers, sizeof(tiers)) < 0) {
                fprintf(stderr, "warmpool: '%s': tiers is a list of hot, warm, cold that "
                                "includes cold, for every node (no --node)\n", argv[i]);
                return 2;
            }
            freeReplyObject(cmd("HSET wp:env:{%s}:policy tiers %s", env, tiers));
            printf("%s tiers = %s\n", env, tiers);
            n++;
            continue;
        }
        v = strtol(eq + 1, &end, 10);
        if ((strcmp(key, "min_hot") && strcmp(key, "max_hot") && strcmp(key, "max_hot_total")) ||
            *end || v < 0 || v > 10000 || (node && !strcmp(key, "max_hot_total"))) {
            fprintf(stderr, "warmpool: '%s': min_hot, max_hot (per node) or max_hot_total "
                            "(all nodes), 0..10000\n", argv[i]);
            return 2;
        }
        char field[128];
        if (node)
            snprintf(field, sizeof(field), "%s:%s", key, node);
        else
            snprintf(field, sizeof(field), "%s", key);
        freeReplyObject(cmd("HSET wp:env:{%s}:policy %s %ld", env, field, v));
        if (!node) /* every node: drop per-node overrides of this field */
            freeReplyObject(cmd("EVAL %s 1 wp:env:{%s}:policy %s", lua_drop_overrides,
                                env, key));
        printf("%s %s = %ld%s%s\n", env, key, v, node ? " on node " : "", node ? node : "");
        if (strcmp(key, "min_hot") == 0)
            warn_fit(env, node, v);
        n++;
    }
    if (n == 0) {
        fprintf(stderr, "warmpool: nothing to set\n");
        return 2;
    }
    return 0;
}

/* p-th percentile from power-of-two microsecond buckets, in ms (the
 * bucket's upper bound). */
static double hist_pct(redisReply *h, double p)
{
    long long counts[41] = { 0 }, total = 0, seen = 0;

    for (size_t i = 0; i + 1 < h->elements; i += 2) {
        int b = atoi(h->element[i]->str);
        if (b >= 0 && b <= 40) {
            counts[b] += atoll(h->element[i + 1]->str);
            total += atoll(h->element[i + 1]->str);
        }
    }
    if (!total)
        return -1;
    for (int b = 0; b <= 40; b++) {
        seen += counts[b];
        if ((double)seen >= p / 100 * (double)total)
            return (double)(1ull << b) / 1000.0;
    }
    return -1;
}

/* A non-negative integer field of a reply array, or false. */
static bool num(redisReply *r, size_t i, unsigned long long *v)
{
    char *end;
    if (!r || r->type != REDIS_REPLY_ARRAY || i >= r->elements ||
        r->element[i]->type != REDIS_REPLY_STRING)
        return false;
    errno = 0;
    *v = strtoull(r->element[i]->str, &end, 10);
    return end != r->element[i]->str && !*end && errno == 0 && r->element[i]->str[0] != '-';
}

static double mib(unsigned long long b)
{
    return (double)b / 1048576.0;
}

/* What the environment's clones hold on node (memory.c's figures), the
 * node's budget, and KSM's progress. */
static void cpu_and_queue_status(const char *env, const char *n);
static void mem_status(const char *env, const char *node)
{
    redisReply *m = cmd("HMGET wp:env:{%s}:mem:%s clones shared_bytes private_p50_bytes "
                        "private_p95_bytes anon_bytes merged_bytes hot_fit hot_asked per_clone_bytes ksm",
                        env, node);
    redisReply *h = cmd("HMGET wp:node:%s hot_memory_bytes mem_used_bytes ksm_pages_shared "
                        "ksm_pages_sharing ksm_full_scans ksmd_cpu_ms confined", node);
    unsigned long long clones, shared, p50, p95, anon, merged, fit, asked, per, budget, used, ps,
        pg, fs, cpu;

    if (num(m, 0, &clones) && num(m, 1, &shared) && num(m, 2, &p50) && num(m, 3, &p95) &&
        num(m, 4, &anon) && num(m, 5, &merged)) {
        bool on = m->element[9]->type == REDIS_REPLY_STRING && strncmp(m->element[9]->str, "on", 2) == 0;
        printf("  %-20s memory: %llu clones, shared %.1f MiB (one copy), private per clone "
               "p50 %.1f MiB p95 %.1f MiB",
               "", clones, mib(shared), mib(p50), mib(p95));
        if (on || merged)
            printf(", merged %.0f%% of %.1f MiB anonymous", anon ? 100.0 * (double)merged / (double)anon : 0.0,
                   mib(anon));
        printf("\n");
    }
    if (num(h, 0, &budget) && num(h, 1, &used)) {
        printf("  %-20s budget: hot_memory %.0f MiB, clones hold %.1f MiB", "", mib(budget), mib(used));
        if (num(m, 6, &fit) && fit < 100000)
            printf("; %llu hot clones fit%s", fit,
                   num(m, 8, &per) && per ? "" : " (nothing measured yet)");
        printf("\n");
        if (num(m, 6, &fit) && num(m, 7, &asked) && asked > fit)
            printf("  %-20s capped by memory: the policy asks %llu hot clones, %llu fit "
                   "(%.1f MiB each)\n",
                   "", asked, fit, num(m, 8, &per) ? mib(per) : 0.0);
    }
    if (num(h, 2, &ps) && num(h, 3, &pg) && num(h, 4, &fs)) {
        printf("  %-20s ksm (host): pages_shared %llu, pages_sharing %llu", "", ps, pg);
        if (ps)
            printf(" (%.1f mappings per page)", 1.0 + (double)pg / (double)ps);
        printf(", full scans %llu", fs);
        if (num(h, 5, &cpu))
            printf(", ksmd cpu %.1f s", (double)cpu / 1000.0);
        printf("\n");
    }
    /* A node serving sandboxes without confine.c's layers says so. */
    if (h && h->type == REDIS_REPLY_ARRAY && h->elements > 6 &&
        h->element[6]->type == REDIS_REPLY_STRING && strcmp(h->element[6]->str, "yes") != 0)
        printf("  %-20s sandboxes confined: %s\n", "", h->element[6]->str);
    freeReplyObject(m);
    freeReplyObject(h);
}

static void env_status(const char *env)
{
    redisReply *pol = cmd("HGETALL wp:env:{%s}:policy", env);
    redisReply *st = cmd("HGETALL wp:env:{%s}:stats", env);
    redisReply *hot = cmd("LLEN wp:env:{%s}:hot", env);
    redisReply *nodes = cmd("SMEMBERS wp:env:{%s}:nodes", env);
    long long claims[3] = { 0 };

    printf("environment %s\n  policy:", env);
    for (size_t i = 0; i + 1 < pol->elements; i += 2)
        printf(" %s=%s", pol->element[i]->str, pol->element[i + 1]->str);
    for (size_t i = 0; i + 1 < st->elements; i += 2) {
        const char *k = st->element[i]->str;
        long long v = atoll(st->element[i + 1]->str);
        claims[strcmp(k, "claims_hot") == 0 ? 0 : strcmp(k, "claims_warm") == 0 ? 1 : 2] += v;
    }
    long long total = claims[0] + claims[1] + claims[2];
    printf("\n  hot now: %lld   claims: %lld (hot %lld, warm %lld, cold %lld; hot hit rate %.1f%%)\n",
           hot->integer, total, claims[0], claims[1], claims[2],
           total ? 100.0 * (double)claims[0] / (double)total : 0.0);
    static const char *tiers[] = { "hot", "warm", "cold" };
    for (int t = 0; t < 3; t++) {
        redisReply *h = cmd("HGETALL wp:env:{%s}:lat:%s", env, tiers[t]);
        double p50 = hist_pct(h, 50), p95 = hist_pct(h, 95);
        if (p50 >= 0)
            printf("  claim latency %-4s p50 <= %.3f ms, p95 <= %.3f ms\n", tiers[t], p50, p95);
        freeReplyObject(h);
    }
    printf("  %-20s %6s %7s %6s %6s %7s %11s %10s %8s  %-4s %s\n", "node", "alive", "idle", "leased",
           "lost", "target", "claims/s", "refill ms", "refills", "ksm", "image");
    for (size_t i = 0; i < nodes->elements; i++) {
        const char *n = nodes->element[i]->str;
        redisReply *alive = cmd("EXISTS wp:node:%s:alive", n);
        redisReply *sbs = cmd("SMEMBERS wp:node:%s:sbs", n);
        int idle = 0, leased = 0, lost = 0;
        for (size_t j = 0; j < sbs->elements; j++) {
            char e[128], id[128];
            if (sscanf(sbs->element[j]->str, "%127s %127s", e, id) != 2 || strcmp(e, env))
                continue;
            redisReply *s = cmd("HGET wp:env:{%s}:sb:%s state", env, id);
            if (s->type == REDIS_REPLY_STRING) {
                idle += strcmp(s->str, "idle") == 0;
                leased += strcmp(s->str, "leased") == 0;
                lost += strcmp(s->str, "lost") == 0;
            }
            freeReplyObject(s);
        }
        redisReply *ns = cmd("HMGET wp:node:%s target:%s claims_per_s:%s refill_ms:%s refills:%s build:%s ksm:%s",
                             n, env, env, env, env, env, env);
        const char *v[6];
        for (int k = 0; k < 6; k++)
            v[k] = ns->type == REDIS_REPLY_ARRAY && ns->element[k]->type == REDIS_REPLY_STRING
                       ? ns->element[k]->str
                       : "-";
        redisReply *dr = cmd("EXISTS " POOL__K_DRAIN, n);
        printf("  %-20s %6s %7d %6d %6d %7s %11s %10s %8s  %-4s %.40s\n", n,
               alive->integer ? (dr->integer ? "drain" : "yes") : "NO", idle, leased, lost, v[0], v[1], v[2], v[3], v[5], v[4]);
        if (strcmp(v[5], "on") == 0 || strcmp(v[5], "on-override") == 0)
            printf("  %-20s note: KSM merges memory across this node's sandboxes, a timing side\n"
                   "  %-20s channel between them; keep it off where organizations share a node\n",
                   "", "");
        if (strcmp(v[5], "on-override") == 0)
            printf("  %-20s ksm: on although the node is multi-tenant (operator override)\n", "");
        if (strcmp(v[5], "refused") == 0)
            printf("  %-20s ksm: refused: the template asks for it, but this node serves several\n"
                   "  %-20s organizations (multi_tenant) and merging is a timing side channel\n"
                   "  %-20s between them; override: --ksm-multi-tenant-override\n",
                   "", "", "");
        cpu_and_queue_status(env, n);
        redisReply *u = cmd("HGET wp:node:%s userns", n);
        if (u->type == REDIS_REPLY_STRING && strcmp(u->str, "UNCONFINED") == 0)
            printf("  %-20s UNCONFINED: no user namespace per sandbox on this node (the host has\n"
                   "  %-20s none; --insecure-allow-unconfined): its sandboxes run as the host's root\n",
                   "", "");
        freeReplyObject(u);
        mem_status(env, n);
        freeReplyObject(dr);
        freeReplyObject(ns);
        freeReplyObject(alive);
        freeReplyObject(sbs);
    }
    freeReplyObject(pol);
    freeReplyObject(st);
    freeReplyObject(hot);
    freeReplyObject(nodes);
}

/* When the CPU, not the policy, limits the hot tier: claims arrive faster
 * than the node's restore slots can refill (issue 20). And its claim queue:
 * waiting, and refused as overloaded. */
static void cpu_and_queue_status(const char *env, const char *n)
{
    redisReply *h = cmd("HMGET wp:node:%s capacity claims_per_s:%s refill_ms:%s claims_waiting:%s "
                        "claim_wait_ms:%s claims_shed:%s",
                        n, env, env, env, env, env);
    double v[6] = { 0 };
    for (size_t k = 0; h->type == REDIS_REPLY_ARRAY && k < 6 && k < h->elements; k++)
        if (h->element[k]->type == REDIS_REPLY_STRING)
            v[k] = atof(h->element[k]->str);
    int slots = (int)v[0];
    double lambda = v[1], refill_s = v[2] / 1e3, cap = pool_refill_capacity(refill_s, slots);
    if (cap > 0 && lambda >= cap)
        printf("  %-20s CPU-bound: claims arrive at %.1f/s, %d restore slot%s refilling in %.0f ms\n"
               "  %-20s keep up with %.1f/s: the hot tier drains whatever the policy asks (more\n"
               "  %-20s CPUs or nodes, or cheaper clones: lazy restores)\n",
               "", lambda, slots, slots == 1 ? "" : "s", refill_s * 1e3, "", cap, "");
    if (v[3] > 0 || v[5] > 0)
        printf("  %-20s claims: %.0f waiting for a restore slot (oldest %.1f s), %.0f refused as "
               "overloaded since the node started\n",
               "", v[3], v[4] / 1e3, v[5]);
    freeReplyObject(h);
}

/* Sandboxes a node's orphan checks could not remove, and why (the node's
 * hash: orphans, orphans_why, orphans_checked_ms; see pool/orphans.c). */
static void node_orphans(const char *n)
{
    redisReply *h = cmd("HMGET wp:node:%s orphans orphans_why orphans_checked_ms", n);
    const char *v[3] = { NULL, NULL, NULL };
    for (size_t k = 0; h->type == REDIS_REPLY_ARRAY && k < 3 && k < h->elements; k++)
        if (h->element[k]->type == REDIS_REPLY_STRING)
            v[k] = h->element[k]->str;
    char *end = NULL;
    long count = v[0] ? strtol(v[0], &end, 10) : 0;
    if (v[0] && (*end || count < 0))
        count = 0; /* not a count: nothing to say */
    if (count > 0) {
        long long at = v[2] ? atoll(v[2]) : 0;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long long ago = at > 0 ? (ts.tv_sec * 1000LL + ts.tv_nsec / 1000000 - at) / 1000 : -1;
        printf("  %-20s %ld sandbox%s of dead owners not cleaned (last check %llds ago):\n", "",
               count, count == 1 ? "" : "es", ago);
        /* One "<id>: <why>" per line, as many as the node names. */
        const char *p = v[1] ? v[1] : "";
        while (*p) {
            size_t len = strcspn(p, "\n");
            printf("  %-20s   %.*s\n", "", (int)(len < 300 ? len : 300), p);
            p += len;
            if (*p)
                p++;
        }
    }
    freeReplyObject(h);
}

/* A draining node (its hash: "draining" = "<deadline ms> <leased left>"). */
static void node_draining(const char *n)
{
    redisReply *d = cmd("HGET wp:node:%s draining", n);
    unsigned long long dl = 0;
    int leased = 0;
    if (d->type == REDIS_REPLY_STRING && sscanf(d->str, "%llu %d", &dl, &leased) == 2) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long long left = ((long long)dl - (ts.tv_sec * 1000LL + ts.tv_nsec / 1000000)) / 1000;
        printf("  %-20s draining: no new claims, %d leased sandbox%s left, deadline in %llds\n", "",
               leased, leased == 1 ? "" : "es", left < 0 ? 0 : left);
    }
    freeReplyObject(d);
}

/* Nodes and how criu runs on each (the probe's answer, from their hash). */
static void nodes_status(void)
{
    redisReply *nodes = cmd("SMEMBERS wp:nodes");
    printf("nodes\n");
    for (size_t i = 0; i < nodes->elements; i++) {
        const char *n = nodes->element[i]->str;
        redisReply *alive = cmd("EXISTS wp:node:%s:alive", n);
        redisReply *h = cmd("HMGET wp:node:%s criu_mode criu_lazy criu_source criu_why thp refill "
                            "page_reporting warmed",
                            n);
        const char *v[8];
        for (int k = 0; k < 8; k++)
            v[k] = h->type == REDIS_REPLY_ARRAY && h->elements == 8 &&
                           h->element[k]->type == REDIS_REPLY_STRING
                       ? h->element[k]->str
                       : "";
        printf("  %-20s alive %-3s criu %s%s%s%s\n", n, alive->integer ? "yes" : "NO",
               v[0][0] ? v[0] : "?",
               strcmp(v[1], "no") == 0 && strcmp(v[0], "none") != 0 ? " (lazy pages off)" : "",
               v[2][0] ? ", " : "", v[2]);
        if (strcmp(v[0], "none") == 0)
            printf("  %-20s criu does not work there: every sandbox is booted cold\n", "");
        else if (v[5][0])
            printf("  %-20s hot refills %s, THP %s%s\n", "", v[5], v[4][0] ? v[4] : "?",
                   strcmp(v[4], "always") != 0 && strcmp(v[5], "lazy") == 0
                       ? " (with THP always eager refills cost less: --thp always)"
                       : "");
        if (strcmp(v[6], "on") == 0)
            printf("  %-20s free page reporting on: freed memory goes back to the hypervisor and "
                   "refills fault it in again (--free-page-reporting off)\n",
                   "");
        else if (strcmp(v[6], "off") == 0)
            printf("  %-20s free page reporting off: freed memory stays for the next clones\n",
                   "");
        if (v[7][0])
            printf("  %-20s %s hot clones warmed since start (a no-op call before the session's "
                   "first)\n",
                   "", v[7]);
        node_draining(n);
        if (v[3][0])
            printf("  %-20s why: %s\n", "", v[3]);
        node_orphans(n);
        freeReplyObject(alive);
        freeReplyObject(h);
    }
    freeReplyObject(nodes);
}

static int pool_status(int argc, char **argv)
{
    if (argc > 1) {
        if (!snap_name_valid(argv[1])) {
            fprintf(stderr, "warmpool: bad environment name '%s'\n", argv[1]);
            return 2;
        }
        env_status(argv[1]);
        return 0;
    }
    nodes_status();
    static char keys[1024][128];
    int nk = keys_everywhere("wp:env:{*}:policy", keys, 1024);
    if (nk == 0)
        printf("no environments yet (no node has registered one)\n");
    for (int i = 0; i < nk; i++) {
        char env[128];
        if (sscanf(keys[i], "wp:env:{%127[^}]}:policy", env) == 1)
            env_status(env);
    }
    return 0;
}

/* `node drain NODE [--deadline SECS] [--wait]` (argv from "drain" on). */
static int node_drain(int argc, char **argv)
{
    const char *node = NULL;
    double deadline = 600;
    bool wait = false;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--deadline") == 0 && i + 1 < argc) {
            char *end;
            deadline = strtod(argv[++i], &end);
            if (*end || end == argv[i] || !(deadline >= 0 && deadline <= 86400)) {
                fprintf(stderr, "warmpool: --deadline wants seconds, 0..86400\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--wait") == 0) {
            wait = true;
        } else if (!node && argv[i][0] != '-') {
            node = argv[i];
        } else {
            fprintf(stderr, "warmpool: node drain: unexpected '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!node || !snap_name_valid(node)) {
        fprintf(stderr, "warmpool: node drain wants a node id (see pool status)\n");
        return 2;
    }
    redisReply *alive = cmd("EXISTS wp:node:%s:alive", node);
    long long up = alive->integer;
    freeReplyObject(alive);
    if (!up) {
        fprintf(stderr, "warmpool: node %s is not running (no heartbeat)\n", node);
        return 1;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned long long now = (unsigned long long)ts.tv_sec * 1000 + (unsigned long long)ts.tv_nsec / 1000000;
    unsigned long long ms = (unsigned long long)(deadline * 1000);
    /* "<deadline ms> <set ms>"; it outlives the deadline by a minute in
     * case the node dies before deleting it. */
    char val[64];
    snprintf(val, sizeof(val), "%llu %llu", now + ms, now);
    redisReply *r = cmd("SET " POOL__K_DRAIN " %s PX %llu", node, val, ms + 60000);
    if (r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "warmpool: redis: %s\n", r->str);
        freeReplyObject(r);
        return 1;
    }
    freeReplyObject(r);
    printf("node %s draining: no new claims; leased sandboxes kept for at most %.0f s\n", node,
           deadline);
    if (!wait)
        return 0;
    for (;;) {
        redisReply *a = cmd("EXISTS wp:node:%s:alive", node);
        redisReply *d = cmd("HGET wp:node:%s draining", node);
        long long still = a->integer;
        if (still && d->type == REDIS_REPLY_STRING) {
            unsigned long long dl = 0;
            int leased = 0;
            if (sscanf(d->str, "%llu %d", &dl, &leased) == 2)
                printf("  %d leased sandbox%s left\n", leased, leased == 1 ? "" : "es");
        }
        freeReplyObject(a);
        freeReplyObject(d);
        if (!still)
            break;
        fflush(stdout);
        sleep(1);
    }
    printf("node %s drained and stopped\n", node);
    return 0;
}

int main(int argc, char **argv)
{
    char host[128] = "127.0.0.1";
    int port = 6379, i = 1;

    const char *pwfile = NULL, *user = NULL, *sentinels = NULL, *master = NULL, *cluster = NULL,
               *spwfile = NULL;
    while (i + 1 < argc && strncmp(argv[i], "--redis", 7) == 0) {
        if (strcmp(argv[i], "--redis") == 0) {
            const char *colon = strrchr(argv[i + 1], ':');
            if (!colon || colon == argv[i + 1] || atoi(colon + 1) <= 0) {
                fprintf(stderr, "warmpool: --redis wants HOST:PORT\n");
                return 2;
            }
            snprintf(host, sizeof(host), "%.*s", (int)(colon - argv[i + 1]), argv[i + 1]);
            port = atoi(colon + 1);
        } else if (strcmp(argv[i], "--redis-password-file") == 0) {
            pwfile = argv[i + 1];
        } else if (strcmp(argv[i], "--redis-user") == 0) {
            user = argv[i + 1];
        } else if (strcmp(argv[i], "--redis-sentinels") == 0) {
            sentinels = argv[i + 1];
        } else if (strcmp(argv[i], "--redis-sentinel-password-file") == 0) {
            spwfile = argv[i + 1];
        } else if (strcmp(argv[i], "--redis-master") == 0) {
            master = argv[i + 1];
        } else if (strcmp(argv[i], "--redis-cluster") == 0) {
            cluster = argv[i + 1];
        } else {
            fprintf(stderr, "warmpool: unknown option %s\n", argv[i]);
            return 2;
        }
        i += 2;
    }
    struct wp_err aerr;
    if ((pwfile && wp_redis_auth_file(user, pwfile, &aerr) < 0) ||
        ((sentinels || master || spwfile) && wp_sentinel_set(sentinels, master, &aerr) < 0) ||
        (spwfile && wp_sentinel_auth_file(spwfile, &aerr) < 0) ||
        (cluster && wp_rcl_set(cluster, &aerr) < 0)) {
        fprintf(stderr, "warmpool: %s\n", aerr.msg);
        return 2;
    }
    if (i < argc && (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)) {
        fputs(usage, stdout);
        return 0;
    }
    if (i < argc && strcmp(argv[i], "doctor") == 0)
        return pool__doctor(argc - i, argv + i);
    bool drain = i + 2 < argc && strcmp(argv[i], "node") == 0 && strcmp(argv[i + 1], "drain") == 0;
    if (!drain && (i + 1 >= argc || (strcmp(argv[i], "pool") != 0 && strcmp(argv[i], "quota") != 0))) {
        fputs(usage, stderr);
        return 2;
    }
    if (cluster)
        rcs = wp_rcl_sync_new(&aerr);
    else
        rc = wp_redis_connect_sync(host, port, &aerr);
    if (!rc && !rcs) {
        fprintf(stderr, "warmpool: %s\n", aerr.msg);
        return 1;
    }
    int r;
    if (drain)
        r = node_drain(argc - i - 1, argv + i + 1);
    else if (strcmp(argv[i], "quota") == 0)
        r = pool__cli_quota(cmd, keys_everywhere, argc - i - 1, argv + i + 1);
    else if (strcmp(argv[i + 1], "set") == 0)
        r = pool_set(argc - i - 1, argv + i + 1);
    else if (strcmp(argv[i + 1], "status") == 0)
        r = pool_status(argc - i - 1, argv + i + 1);
    else {
        fputs(usage, stderr);
        r = 2;
    }
    redisFree(rc);
    wp_rcl_sync_free(rcs);
    return r;
}
