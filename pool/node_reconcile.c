/* node_reconcile.c - the node's state in Redis: heartbeat and node hash,
 * liveness per environment, reconciling Redis with what the node has,
 * orphans (reaping dead nodes: node_reap.c). */
#define WP_LOG_COMPONENT "node"
#include "pool/node_int.h"
#include "lua/pool/node_reconcile.h" /* its Lua scripts: lua/pool/node_reconcile/ (Makefile) */

static void heartbeat_cb(void *ctx, redisReply *reply)
{
    struct node *n = ctx;
    if (reply && reply->type == REDIS_REPLY_STATUS)
        n->heartbeat_ok = node__now_s();
    else
        node__log_reply((void *)"heartbeat", reply);
}

void node__fence_tick(struct node *n)
{
    if (!n->registered || n->fenced || n->heartbeat_ok <= 0 ||
        n->now - n->heartbeat_ok <= n->cfg.heartbeat_ttl_s)
        return;
    int leased = 0;
    for (struct nsb *s = n->sbs; s; s = s->next)
        if (s->st == SB_LEASED && s->sb) {
            pool__relay_drop(n->relay, s->sb->id); /* nothing more reaches it */
            leased++;
        }
    n->fenced = true;
    n->fenced_at = n->now;
    log_warn("no heartbeat acknowledged by Redis for %.1f s (TTL %.1f s): other nodes may have "
             "reaped this one; %d leased sandboxes take no routes until Redis confirms them",
             n->now - n->heartbeat_ok, n->cfg.heartbeat_ttl_s, leased);
}

void node__register_node(struct node *n)
{
    char key[160], alive[160], ttl[32], cap[16], mem[32], started[32];
    struct sysinfo si;

    sysinfo(&si);
    node__fmtkey(key, sizeof(key), POOL__K_NODE, n->cfg.id);
    node__fmtkey(alive, sizeof(alive), POOL__K_ALIVE, n->cfg.id);
    snprintf(ttl, sizeof(ttl), "%d", (int)(n->cfg.heartbeat_ttl_s * 1000));
    snprintf(cap, sizeof(cap), "%d", n->slots);
    snprintf(mem, sizeof(mem), "%llu", (unsigned long long)si.freeram * si.mem_unit);
    snprintf(started, sizeof(started), "%llu", (unsigned long long)wp_wall_ms());
    const char *set[] = { "SET", alive, "1", "PX", ttl };
    if (wp_redis_argv(n->r, heartbeat_cb, n, 5, set, NULL) < 0)
        log_debug("redis not ready: heartbeat dropped");
    const struct snap_probe *cp = snap_ctx_criu(n->snap);
    n->thp = pool__thp_mode();
    n->fpr = pool__fpr_state();
    const char *hset[] = { "HSET", key, "capacity", cap, "mem_free", mem, "heartbeat_ms", started,
                           "version", "warmpool-node 0.1", "relay", n->relay_addr,
                           "criu_mode", snap_criu_mode_name(cp->mode),
                           "criu_lazy", cp->lazy_ok ? "yes" : "no",
                           "criu_source", cp->forced ? "configured" : cp->cached ? "cached" : "probed",
                           "criu_why", cp->why, "thp", pool__thp_name(n->thp),
                           "refill", node__restore_lazy(n) ? "lazy" : "eager",
                           "page_reporting", pool__fpr_name(n->fpr) };
    node__cmd(n, "node", (int)(sizeof(hset) / sizeof(hset[0])), hset);
    /* Every beat, not once: after a Redis restart that lost writes the
     * node reappears by itself. */
    const char *sadd[] = { "SADD", POOL__K_NODES, n->cfg.id };
    node__cmd(n, "register", 3, sadd);
    for (int i = 0; i < n->n_envs; i++) {
        struct env *e = &n->envs[i];
        char nodes[160], pol[160], mn[16], mx[16];
        if (e->retired)
            continue;
        node__fmtkey(nodes, sizeof(nodes), POOL__K_NODES_OF, e->cfg.name);
        node__fmtkey(pol, sizeof(pol), POOL__K_POLICY, e->cfg.name);
        snprintf(mn, sizeof(mn), "%d", e->cfg.min_hot);
        snprintf(mx, sizeof(mx), "%d", e->cfg.max_hot);
        const char *s2[] = { "SADD", nodes, n->cfg.id };
        const char *p1[] = { "EVAL", lua_startup, "1", pol, "min_hot", "max_hot", mn, mx, n->cfg.id };
        node__cmd(n, "env nodes", 3, s2);
        node__publish_live(n, e, false);
        if (!e->api && !n->registered)
            node__cmd(n, "policy", 9, p1);
    }
    for (int i = 0; i < n->n_envs; i++) {
        struct env *e = &n->envs[i];
        char f1[96], f2[96], f3[96], f4[96], f5[96], v1[32], v2[32], v3[32], v4[32];
        char f6[96], f7[96], f8[96], v6[32], v7[32], v8[32];
        if (e->retired)
            continue; /* its fields were removed from the node's hash */
        /* The claim queue: how many wait for a restore slot, how long the
         * oldest has, how many were refused as overloaded (since start). */
        int waiting = 0;
        uint64_t oldest = 0, wall = wp_wall_ms();
        for (const struct claimq *q = e->claims_q; q; q = q->next, waiting++)
            if (wall > q->at_ms && wall - q->at_ms > oldest)
                oldest = wall - q->at_ms;
        snprintf(f6, sizeof(f6), "claims_waiting:%s", e->cfg.name);
        snprintf(f7, sizeof(f7), "claim_wait_ms:%s", e->cfg.name);
        snprintf(f8, sizeof(f8), "claims_shed:%s", e->cfg.name);
        snprintf(v6, sizeof(v6), "%d", waiting);
        snprintf(v7, sizeof(v7), "%llu", (unsigned long long)oldest);
        snprintf(v8, sizeof(v8), "%llu", (unsigned long long)e->shed);
        snprintf(f1, sizeof(f1), "target:%s", e->cfg.name);
        snprintf(f2, sizeof(f2), "claims_per_s:%s", e->cfg.name);
        snprintf(f3, sizeof(f3), "refill_ms:%s", e->cfg.name);
        snprintf(f4, sizeof(f4), "refills:%s", e->cfg.name);
        snprintf(v1, sizeof(v1), "%d", e->target);
        snprintf(v2, sizeof(v2), "%.3f", pool_rate_get(&e->claims, n->now));
        snprintf(v3, sizeof(v3), "%.1f", e->refill.value * 1e3);
        snprintf(v4, sizeof(v4), "%llu", (unsigned long long)e->refills);
        snprintf(f5, sizeof(f5), "ksm:%s", e->cfg.name);
        const char *h[] = { "HSET", key, f1, v1, f2, v2, f3, v3, f4, v4, f5, node__ksm_names[e->ksm],
                            f6, v6, f7, v7, f8, v8 };
        node__cmd(n, "node stats", 18, h);
    }
    /* Restore histograms: "<count> <sum seconds> <per-bucket counts...>",
     * bucket bounds in hist_le (base/hist.h), last bucket +Inf. */
    char hv[3][64 + 21 * (WP_HIST_NB + 1)], hf[3][32];
    for (int t = 0; t < 3; t++) {
        int l = snprintf(hv[t], sizeof(hv[t]), "%llu %.6f", (unsigned long long)n->rh[t].count,
                         n->rh[t].sum);
        for (size_t b = 0; b <= WP_HIST_NB && l > 0 && (size_t)l < sizeof(hv[t]); b++)
            l += snprintf(hv[t] + l, sizeof(hv[t]) - (size_t)l, " %llu",
                          (unsigned long long)n->rh[t].b[b]);
        snprintf(hf[t], sizeof(hf[t]), "restore_hist:%s", node__rh_names[t]);
    }
    char warmed[32];
    snprintf(warmed, sizeof(warmed), "%llu", (unsigned long long)n->warmed);
    const char *hh[] = { "HSET", key, "hist_le", WP_HIST_LE_TEXT, hf[0], hv[0], hf[1], hv[1],
                         hf[2], hv[2], "warmed", warmed };
    node__cmd(n, "restore histograms", 12, hh);
    {
        char b[32], u[32], ps[32], pg[32], fs[32], cpu[32], rf[32];
        snprintf(rf, sizeof(rf), "%llu", (unsigned long long)n->restore_failures);
        const char *hrf[] = { "HSET", key, "restore_failures", rf };
        node__cmd(n, "node restore failures", 4, hrf);
        snprintf(b, sizeof(b), "%llu", (unsigned long long)n->budget);
        snprintf(u, sizeof(u), "%llu", (unsigned long long)n->used_now);
        snprintf(ps, sizeof(ps), "%ld", n->kh.pages_shared);
        snprintf(pg, sizeof(pg), "%ld", n->kh.pages_sharing);
        snprintf(fs, sizeof(fs), "%ld", n->kh.full_scans);
        snprintf(cpu, sizeof(cpu), "%llu", (unsigned long long)n->kh.ksmd_cpu_ms);
        const char *h[] = { "HSET", key, "hot_memory_bytes", b, "mem_used_bytes", u,
                            "ksm_pages_shared", ps, "ksm_pages_sharing", pg, "ksm_full_scans", fs,
                            "multi_tenant", n->cfg.multi_tenant ? "yes" : "no",
                            "confined", n->cfg.unconfined ? "NO (--insecure-allow-unconfined)" : "yes",
                            "userns", snap_ctx_userns(n->snap) ? "yes" : "UNCONFINED",
                            "ksmd_cpu_ms", cpu };
        /* No ksmd (KSM not built in): no CPU figure rather than a false 0. */
        node__cmd(n, "node memory", n->kh.ksmd_found ? 20 : 18, h);
    }
    {
        /* What the orphan checks could not remove, for pool status. */
        struct pool__orphans_text ot;
        pool__orphans_text(n->orphans, &ot);
        const char *h[] = { "HSET", key, "orphans", ot.count, "orphans_why", ot.why,
                            "orphans_cleaned", ot.cleaned, "orphans_checked_ms", ot.checked_ms };
        node__cmd(n, "node orphans", 10, h);
    }
    if (n->draining || !n->registered)
        node__publish_draining(n);
    if (!n->registered) {
        log_info("registered node=%s envs=%d slots=%d", n->cfg.id, n->n_envs, n->slots);
        for (int i = 0; i < n->n_envs; i++)
            if (n->envs[i].found_on_disk)
                node__build_status(n, &n->envs[i], "ready (image on disk)");
    }
    n->registered = true;
}

void node__publish_live(struct node *n, struct env *e, bool gone)
{
    char key[160], ttl[32];
    node__fmtkey(key, sizeof(key), POOL__K_LIVE, e->cfg.name);
    if (gone) {
        const char *hdel[] = { "HDEL", key, n->cfg.id };
        node__cmd(n, "live", 3, hdel);
        return;
    }
    snprintf(ttl, sizeof(ttl), "%d", (int)(n->cfg.heartbeat_ttl_s * 1000));
    const char *argv[] = { key, n->cfg.id, ttl, n->draining ? "drain" : "" };
    wp_redis_script(n->r, lua_live, node__log_reply, (void *)"live", 1, 4, argv, NULL);
}

/* --- reconcile -------------------------------------------------------------
 * The node's set (wp:node:<N>:sbs) is read first; then, per environment, one
 * script on that environment's keys (lua_reconcile_env) writes the node's
 * sandboxes back and settles the set's entries the node no longer has;
 * then the set is written: its own sandboxes added, those entries
 * removed. Keys of one step share one hash slot (Redis Cluster). */

#define RECON_CHUNK 80 /* sandboxes per script call (wp_redis_script's argv cap) */

/* One entry of a reconcile: a sandbox the node has (rec: its record) or
 * one its set names that it does not (rec NULL). */
struct recon {
    char env[128], id[128];
    char *rec;
};

/* One pass: its entries, and the environment scripts still unanswered;
 * the set is written once every one answered (entries it does not have
 * are removed only when none failed: the next pass tries again). */
struct pass {
    struct node *n;
    struct recon *all;
    int cnt;
    int pending;
    bool failed;
    bool confirm; /* sent after contact came back: its answers lift the fence */
};

static void pass_free(struct pass *p)
{
    for (int i = 0; i < p->cnt; i++)
        free(p->all[i].rec);
    free(p->all);
    free(p);
}

/* The node's set: own sandboxes added, the others removed. */
static void write_set(struct pass *p)
{
    struct node *n = p->n;
    char sbs[160];
    node__fmtkey(sbs, sizeof(sbs), POOL__K_NODE_SBS, n->cfg.id);
    for (int pass = 0; pass < (p->failed ? 1 : 2); pass++) {
        const char *argv[2 + RECON_CHUNK];
        char members[RECON_CHUNK][260];
        int argc = 2;
        argv[0] = pass == 0 ? "SADD" : "SREM";
        argv[1] = sbs;
        for (int i = 0; i <= p->cnt; i++) {
            if (i < p->cnt && (pass == 0) == (p->all[i].rec != NULL)) {
                snprintf(members[argc - 2], sizeof(members[0]), "%s %s", p->all[i].env,
                         p->all[i].id);
                argv[argc] = members[argc - 2];
                argc++;
            }
            if (argc > 2 && (i == p->cnt || argc == 2 + RECON_CHUNK)) {
                node__cmd(n, "reconcile set", argc, argv);
                argc = 2;
            }
        }
    }
}

static void pass_step_done(struct pass *p)
{
    struct node *n = p->n;
    if (--p->pending > 0)
        return;
    n->reconciling = false;
    if (!n->stopping)
        write_set(p);
    /* What no answer returned as lost or expired is still this node's. */
    if (p->confirm && !p->failed && n->fenced) {
        n->fenced = false;
        log_warn("contact with Redis back after %.1f s: leases confirmed, %d sandboxes whose "
                 "lease was declared lost destroyed", node__now_s() - n->fenced_at, n->fence_lost);
        n->fence_lost = 0;
    }
    pass_free(p);
}

static void reconcile_cb(void *ctx, redisReply *reply)
{
    struct pass *p = ctx;
    struct node *n = p->n;

    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        if (reply && reply->type == REDIS_REPLY_ERROR)
            log_warn("reconcile: %s", reply->str);
        p->failed = true;
        pass_step_done(p);
        return;
    }
    for (size_t i = 0; i < reply->elements; i++) {
        char env[128], id[128], why[16] = "";
        if (reply->element[i]->type != REDIS_REPLY_STRING ||
            sscanf(reply->element[i]->str, "%127s %127s %15s", env, id, why) < 2)
            continue;
        struct nsb *s = node__find_sb(n, id);
        if (!s || s->st != SB_LEASED)
            continue;
        /* Destroyed: no longer one of the node's own for the set. */
        for (int j = 0; j < p->cnt; j++)
            if (p->all[j].rec && !strcmp(p->all[j].id, id)) {
                free(p->all[j].rec);
                p->all[j].rec = NULL;
            }
        if (!strcmp(why, "lost")) {
            n->fence_lost++;
            node__destroy_sb(n, s, "its lease was declared lost while this node was out of contact");
        } else
            node__destroy_sb(n, s, "lease expired (holder stopped renewing)");
    }
    pass_step_done(p);
}

/* One script call: up to RECON_CHUNK entries of env, own ones first. */
static void reconcile_chunk(struct pass *p, const char *env, struct recon **ents, int cnt)
{
    struct node *n = p->n;
    char keys[2 + RECON_CHUNK][200], now[32], lease[32], nown[16];
    const char *argv[2 * (2 + RECON_CHUNK) + 6];
    int argc = 0, own = 0;
    node__fmtkey(keys[0], sizeof(keys[0]), POOL__K_HOT, env);
    node__fmtkey(keys[1], sizeof(keys[1]), POOL__K_FENCE, env);
    for (int i = 0; i < cnt; i++) {
        node__fmtkey(keys[2 + i], sizeof(keys[0]), POOL__K_SB "%s", env, ents[i]->id);
        own += ents[i]->rec != NULL;
    }
    for (int i = 0; i < 2 + cnt; i++)
        argv[argc++] = keys[i];
    snprintf(now, sizeof(now), "%llu", (unsigned long long)wp_wall_ms());
    snprintf(lease, sizeof(lease), "%.0f", n->cfg.lease_ms);
    snprintf(nown, sizeof(nown), "%d", own);
    argv[argc++] = n->cfg.id;
    argv[argc++] = now;
    argv[argc++] = lease;
    argv[argc++] = n->relay_addr;
    argv[argc++] = env;
    argv[argc++] = nown;
    for (int i = 0; i < cnt; i++)
        argv[argc++] = ents[i]->rec ? ents[i]->rec : ents[i]->id;
    p->pending++;
    if (wp_redis_script(n->r, lua_reconcile_env, reconcile_cb, p, 2 + cnt, argc, argv, NULL) < 0) {
        p->pending--;
        p->failed = true;
    }
}

/* Every environment's entries (own ones first within each call); p is
 * freed once the last answer came. */
static void reconcile_send(struct pass *p)
{
    struct recon **chunk = calloc(RECON_CHUNK, sizeof(*chunk));
    bool *sent = calloc((size_t)p->cnt + 1, sizeof(*sent));
    p->pending = 1; /* held until every call is sent */
    if (!chunk || !sent)
        p->failed = true;
    for (int i = 0; chunk && sent && i < p->cnt; i++) {
        int k = 0;
        for (int own = 1; own >= 0 && !sent[i]; own--)
            for (int j = i; j < p->cnt; j++) {
                if (sent[j] || strcmp(p->all[j].env, p->all[i].env) != 0 ||
                    own != (p->all[j].rec != NULL))
                    continue;
                sent[j] = true;
                chunk[k++] = &p->all[j];
                if (k == RECON_CHUNK) {
                    reconcile_chunk(p, p->all[i].env, chunk, k);
                    k = 0;
                }
            }
        if (k > 0)
            reconcile_chunk(p, p->all[i].env, chunk, k);
    }
    free(chunk);
    free(sent);
    pass_step_done(p);
}

/* The node's set as Redis has it: compared with what the node has now. */
static void members_cb(void *ctx, redisReply *reply)
{
    struct node *n = ctx;
    int cnt = 0, m = reply && reply->type == REDIS_REPLY_ARRAY ? (int)reply->elements : 0;

    if (!reply || reply->type != REDIS_REPLY_ARRAY || n->stopping) {
        n->reconciling = false;
        return;
    }
    for (struct nsb *s = n->sbs; s; s = s->next)
        cnt += s->sb && s->st != SB_RESTORING;
    struct pass *p = calloc(1, sizeof(*p));
    if (!p || !(p->all = calloc((size_t)(cnt + m) + 1, sizeof(*p->all)))) {
        free(p);
        n->reconciling = false;
        return;
    }
    p->n = n;
    for (struct nsb *s = n->sbs; s; s = s->next) {
        struct recon *r = &p->all[p->cnt];
        if (!s->sb || s->st == SB_RESTORING)
            continue;
        if (asprintf(&r->rec, "%s\t%s\t%llu\t%s\t%s", s->sb->id,
                     s->st == SB_IDLE ? "idle" : "leased", (unsigned long long)s->token,
                     s->session, s->sb->root) < 0) {
            r->rec = NULL;
            continue; /* written by the next pass */
        }
        snprintf(r->env, sizeof(r->env), "%s", s->e->cfg.name);
        snprintf(r->id, sizeof(r->id), "%s", s->sb->id);
        p->cnt++;
    }
    for (int i = 0; i < m; i++) {
        redisReply *el = reply->element[i];
        struct recon *r = &p->all[p->cnt];
        if (el->type != REDIS_REPLY_STRING || sscanf(el->str, "%127s %127s", r->env, r->id) != 2 ||
            !snap_name_valid(r->env))
            continue;
        struct nsb *s = node__find_sb(n, r->id);
        if (s && s->sb && s->st != SB_RESTORING && !strcmp(s->e->cfg.name, r->env))
            continue; /* one it has: written as its own */
        p->cnt++;
    }
    /* Fenced: only a heartbeat acknowledged since proves this pass runs
     * after the partition (Redis answers in order). */
    p->confirm = n->fenced && n->heartbeat_ok > n->fenced_at;
    reconcile_send(p);
}

void node__reconcile(struct node *n)
{
    char sbs[160];
    if (n->reconciling)
        return;
    node__fmtkey(sbs, sizeof(sbs), POOL__K_NODE_SBS, n->cfg.id);
    const char *argv[] = { "SMEMBERS", sbs };
    if (wp_redis_argv(n->r, members_cb, n, 2, argv, NULL) == 0)
        n->reconciling = true;
}

/* The relay's check: a current lease here with this token? A route with
 * secrets then waits for the sandbox's egress (node_egress.c). */
int node__relay_lookup(void *ctx, struct pool__route *rt)
{
    struct node *n = ctx;
    struct nsb *s = node__find_sb(n, rt->sandbox);

    if (!s || strcmp(s->e->cfg.name, rt->env) != 0 || !s->sb || s->sb->init_pid <= 0)
        return WP_ENOTFOUND;
    if (s->st == SB_IDLE)
        return WP_ESTATE; /* claimed in Redis, our inbox not read yet */
    if (s->st != SB_LEASED)
        return WP_ENOTFOUND;
    if (n->fenced)
        return WP_ESTALE; /* its lease may have been given up for it: Redis decides */
    /* No key recorded (a claimer that sent none): nobody gets in. */
    if (s->token != rt->token || strlen(s->rkey) != 32 || strlen(rt->rkey) != 32 ||
        CRYPTO_memcmp(s->rkey, rt->rkey, 32) != 0)
        return WP_ESTALE;
    if (rt->egress) {
        if (!n->egress) {
            snprintf(rt->why, sizeof(rt->why), "the session has secrets in play and this node "
                                               "runs no egress proxy (--egress off)");
            return WP_EPROTO;
        }
        int rc = pool__negress_route(n->egress, n->snap, s->sb, &s->e->t->network, rt->egress,
                                     rt->egress_len, rt->proxy, rt->why, sizeof(rt->why));
        if (rc < 0)
            return rc;
    }
    snprintf(rt->root, sizeof(rt->root), "/proc/%d/root", (int)s->sb->init_pid);
    if (rt->want_hands && s->hands_fd >= 0) { /* once: a later route connects anew */
        rt->hands_fd = s->hands_fd;
        s->hands_fd = -1;
    }
    return 0;
}

void node__egress_ready(void *ctx, const char *sandbox)
{
    struct node *n = ctx;
    pool__relay_retry(n->relay, sandbox);
}

void node__nodes_cb(void *ctx, redisReply *reply)
{
    struct node *n = ctx;
    if (!reply || reply->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < reply->elements; i++)
        if (reply->element[i]->type == REDIS_REPLY_STRING &&
            strcmp(reply->element[i]->str, n->cfg.id) != 0)
            node__reap(n, reply->element[i]->str, NULL, NULL);
}

/* Re-check for sandboxes of dead owners (orphans.c) in a helper. What the
 * node holds, and what its helpers (alive, or exited but not yet handled)
 * are making, is in use: the lists say so. */
void node__check_orphans(struct node *n)
{
    const char **ids;
    pid_t *pids;
    int ni = 0, np = 0, cap = 1 + POOL_MAX_ENVS;
    struct wp_err err;

    if (!pool__orphans_due(n->orphans, n->now))
        return;
    for (struct nsb *s = n->sbs; s; s = s->next)
        cap++;
    ids = calloc((size_t)cap, sizeof(*ids));
    pids = calloc((size_t)cap, sizeof(*pids));
    if (ids && pids) {
        pids[np++] = getpid();
        for (struct nsb *s = n->sbs; s; s = s->next) {
            if (s->sb)
                ids[ni++] = s->sb->id;
            if (s->boot_helper > 0)
                pids[np++] = s->boot_helper;
        }
        for (int i = 0; i < n->n_envs; i++)
            if (n->envs[i].build_pid > 0)
                pids[np++] = n->envs[i].build_pid;
        if (pool__orphans_start(n->orphans, n->snap, ids, ni, pids, np, n->now, &err) < 0)
            log_warn("orphan check: %s", err.msg);
    }
    free(ids);
    free(pids);
}
