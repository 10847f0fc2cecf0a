/* node.c - warmpool-node: one per machine. Keeps each environment's image
 * (warm tier) and a number of restored idle clones (hot tier), offers the
 * hot ones in Redis, serves warm and cold claims sent to its inbox, and
 * destroys what is released. Laid out like redis: one default libev loop,
 * one cron at 10 Hz, blocking work in helper processes.
 *
 * Children: libev's default loop reaps every child on SIGCHLD, so one
 * catch-all ev_child dispatches exits (sandbox inits, build helpers);
 * snapshot/'s own waitpid calls then see ECHILD, which they accept.
 *
 * This file: start-up, the cron, child exits, tear-down. The rest is in
 * node_sandbox.c, node_image.c, node_inbox.c, node_memory.c,
 * node_reconcile.c and node_shutdown.c, sharing node_int.h. */
#define WP_LOG_COMPONENT "node"
#include "pool/node_int.h"

#include "base/rcluster.h"
#include "base/sentinel.h"

const char *const node__ksm_names[] = { "off", "on", "refused", "on-override" };
const char *const node__rh_names[] = { "hot", "warm", "cold" };

double node__now_s(void)
{
    return (double)wp_now_ns() / 1e9;
}

void node__record_restore(struct node *n, int tier, double seconds)
{
    if (!(seconds >= 0))
        seconds = 0;
    n->rh[tier].b[wp_hist_bucket(seconds)]++;
    n->rh[tier].count++;
    n->rh[tier].sum += seconds;
}

void node__fmtkey(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, cap, fmt, ap);
    va_end(ap);
}

/* Fire-and-forget command; failures are logged. */
void node__log_reply(void *ctx, redisReply *reply)
{
    const char *what = ctx;
    if (!reply)
        log_warn("redis: %s: no reply (disconnected)", what);
    else if (reply->type == REDIS_REPLY_ERROR)
        log_warn("redis: %s: %s", what, reply->str);
}

void node__cmd(struct node *n, const char *what, int argc, const char **argv)
{
    if (wp_redis_argv(n->r, node__log_reply, (void *)what, argc, argv, NULL) < 0)
        log_debug("redis not ready: %s dropped", what);
}
/* ---- cron -------------------------------------------------------------------- */

/* Policy fields: min_hot, max_hot (every node), and min_hot:<node>,
 * max_hot:<node>, which win for that node; max_hot_total caps all nodes
 * together (a soft cap: nodes racing may overshoot by one refill each). */
static void policy_cb(void *ctx, redisReply *reply)
{
    struct env *e = ctx;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 7)
        return;
    redisReply *tot = reply->element[4];
    long t = tot->type == REDIS_REPLY_STRING ? strtol(tot->str, NULL, 10) : 0;
    e->max_total = t > 0 && t <= 1000000 ? (int)t : 0;
    /* For min (i = 0) and max (i = 1): this node's value, else every
     * node's (`pool set`), else the API environment's (its metadata),
     * else the start-up value. */
    for (int i = 0; i < 2; i++) {
        static const int order[2][3] = { { 2, 0, 5 }, { 3, 1, 6 } };
        int x = i ? e->cfg.max_hot : e->cfg.min_hot;
        for (int k = 0; k < 3; k++) {
            redisReply *v = reply->element[order[i][k]];
            char *end;
            if (v->type != REDIS_REPLY_STRING)
                continue;
            long l = strtol(v->str, &end, 10);
            if (*end || l < 0 || l > 10000) {
                log_warn("policy env=%s: ignoring bad %s '%s'", e->cfg.name,
                         i ? "max_hot" : "min_hot", v->str);
                continue;
            }
            x = (int)l;
            break;
        }
        if (i == 0)
            e->min_hot = x;
        else
            e->max_hot = x;
    }
}

static void hot_total_cb(void *ctx, redisReply *reply)
{
    struct env *e = ctx;
    if (reply && reply->type == REDIS_REPLY_INTEGER) {
        e->hot_total = reply->integer;
        e->policy_at = node__now_s();
    }
}

/* Keep e's hot tier at the autoscaler's target: start refills while a
 * restore slot, the memory budget and the backoff allow, and drop the idle
 * surplus. Run by the cron, at once when a slot frees and 20 ms after a
 * clone is claimed (node__kick): a refill that waited for the next tick left
 * its slot idle ~50 ms a round, which at 10 claims/s was the hot tier's
 * shortfall. */
static void pool_step(struct node *n, struct env *e, bool criu_off)
{
    if ((e->img != IMG_READY && !criu_off) || !n->registered)
        return;
    /* Autoscaler: enough hot clones that a claim finds one 95% of
     * the time at the observed claim rate and refill time (see
     * autoscale.c), between min_hot and max_hot, up at once, down
     * one per cooldown. */
    double lambda = pool_rate_get(&e->claims, n->now);
    double refill_s = e->refill.last_s >= 0 ? e->refill.value : 0.05;
    int want = pool_target_hot(lambda, refill_s, n->slots, 0.95);
    int target = pool_scaler_step(&e->scaler, n->now, want, e->min_hot, e->max_hot);
    e->target = target;
    /* Memory: no more hot clones than fit the budget (measured), and a
     * refill only while a new clone fits even before it merges. */
    int keep = target < e->fit_keep ? target : e->fit_keep;
    if (e->fit < target)
        target = e->fit;
    while (e->idle + e->restoring < target && n->restores < n->slots && n->now >= e->refill_at &&
           (e->max_total == 0 || e->hot_total + e->restoring < e->max_total) &&
           n->used_now + e->image_bytes <= n->budget)
        if (!(criu_off ? node__start_cold_boot(n, e, false) : node__start_restore(n, e, false)))
            break;
    /* Over the cap of all nodes: give back one idle clone per policy
     * refresh (each node does, so the pool converges without every node
     * dropping the whole surplus at once). */
    if (e->max_total && e->hot_total > e->max_total && e->idle > 0 && e->shrunk_at < e->policy_at &&
        keep > e->idle - 1) {
        keep = e->idle - 1;
        e->shrunk_at = n->now;
        e->hot_total--;
    }
    /* Pool shrunk below what is idle: drop the surplus. */
    while (e->idle > keep) {
        struct nsb *s = n->sbs;
        while (s && !(s->e == e && s->st == SB_IDLE))
            s = s->next;
        if (!s)
            break;
        char hot[160];
        node__fmtkey(hot, sizeof(hot), POOL__K_HOT, e->cfg.name);
        const char *lrem[] = { "LREM", hot, "0", s->sb->id };
        node__cmd(n, "shrink", 4, lrem);
        node__destroy_sb(n, s, "pool shrunk");
    }
}

static void cron_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct node *n = w->data;
    (void)loop;
    (void)revents;

    n->now = node__now_s();
    if (n->stopping)
        return;
    if (wp_redis_ready(n->r) && n->now - n->last_beat >= n->cfg.heartbeat_ttl_s / 5) {
        node__register_node(n);
        n->last_beat = n->now;
    }
    node__fence_tick(n);
    if (wp_redis_ready(n->r) && n->now - n->last_policy >= 1) {
        for (int i = 0; i < n->n_envs; i++) {
            char pol[160];
            node__fmtkey(pol, sizeof(pol), POOL__K_POLICY, n->envs[i].cfg.name);
            char mn[96], mx[96];
            snprintf(mn, sizeof(mn), "min_hot:%s", n->cfg.id);
            snprintf(mx, sizeof(mx), "max_hot:%s", n->cfg.id);
            const char *argv[] = { "HMGET", pol, "min_hot", "max_hot", mn, mx, "max_hot_total",
                                   "api_min_hot", "api_max_hot" };
            wp_redis_argv(n->r, policy_cb, &n->envs[i], 9, argv, NULL);
            char hot[160];
            node__fmtkey(hot, sizeof(hot), POOL__K_HOT, n->envs[i].cfg.name);
            const char *llen[] = { "LLEN", hot };
            wp_redis_argv(n->r, hot_total_cb, &n->envs[i], 2, llen, NULL);
        }
        n->last_policy = n->now;
    }
    if (wp_redis_ready(n->r) && !n->drain_asking && n->now - n->last_drain_check >= 1) {
        char key[160];
        node__fmtkey(key, sizeof(key), POOL__K_DRAIN, n->cfg.id);
        const char *get[] = { "GET", key };
        if (wp_redis_argv(n->r, node__drain_cb, n, 2, get, NULL) == 0)
            n->drain_asking = true;
        n->last_drain_check = n->now;
    }
    if (wp_redis_ready(n->r) && n->registered && n->now - n->last_reconcile >= 1) {
        node__reconcile(n);
        n->last_reconcile = n->now;
    }
    if (wp_redis_ready(n->r) && n->now - n->last_reap >= n->cfg.heartbeat_ttl_s / 2) {
        const char *argv[] = { "SMEMBERS", POOL__K_NODES };
        wp_redis_argv(n->r, node__nodes_cb, n, 2, argv, NULL);
        n->last_reap = n->now;
    }
    if (n->catalog)
        pool__catalog_tick(n->catalog, n->now);
    node__check_orphans(n);
    node__inbox_position(n);
    node__read_inbox(n);
    if (n->now - n->last_mem >= MEM_PERIOD_S) {
        node__measure_memory(n);
        n->last_mem = n->now;
    }
    if (n->ksm_on) {
        /* Fast right after refills and until KSM has scanned the new clones
         * twice (they are merged then), slow when steady. */
        bool fresh = n->unsettled > 0;
        for (int i = 0; i < n->n_envs; i++)
            fresh |= node__merging(&n->envs[i]) && n->now - n->envs[i].last_refill < 5;
        long want = fresh ? n->cfg.ksm_fast_pages : n->cfg.ksm_slow_pages;
        if (want != n->ksm_rate && pool__ksm_scan_rate(want) == 0)
            n->ksm_rate = want;
    }
    node__expire_restores(n);
    if (n->draining) {
        node__drain_tick(n);
        return;
    }
    node__warm_tick(n);
    /* Where criu does not work there are no images: the hot tier is made
     * of cold-booted sandboxes (the probe's reason is in the log, the
     * node's hash and /metrics). */
    bool criu_off = snap_ctx_criu(n->snap)->mode == SNAP_CRIU_NONE;
    for (int i = 0; i < n->n_envs; i++) {
        struct env *e = &n->envs[i];
        if (e->retired)
            continue;
        if (!criu_off &&
            (e->img == IMG_NONE || (e->img == IMG_FAILED && n->now >= e->build_retry_at)))
            node__start_build(n, e);
        node__shed_waiting(n, e);
        node__serve_claims(n, e);
        pool_step(n, e, criu_off);
    }
}

static void kick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct node *n = w->data;
    (void)loop;
    (void)revents;

    n->now = node__now_s();
    if (n->stopping || n->draining)
        return;
    bool criu_off = snap_ctx_criu(n->snap)->mode == SNAP_CRIU_NONE;
    for (int i = 0; i < n->n_envs; i++)
        if (!n->envs[i].retired)
            pool_step(n, &n->envs[i], criu_off);
}

/* A refill step in `after` seconds (0: on the next loop pass) instead of
 * at the next cron tick; the soonest of several kicks wins, and kicks due
 * together are one step. */
void node__kick(struct node *n, double after)
{
    if (ev_is_active(&n->kick)) {
        if (ev_timer_remaining(n->loop, &n->kick) <= after)
            return;
        ev_timer_stop(n->loop, &n->kick);
    }
    ev_timer_set(&n->kick, after, 0.);
    ev_timer_start(n->loop, &n->kick);
}

static void child_cb(struct ev_loop *loop, ev_child *w, int revents)
{
    struct node *n = w->data;
    (void)loop;
    (void)revents;

    for (int i = 0; i < n->n_envs; i++) {
        struct env *e = &n->envs[i];
        if (e->build_pid == w->rpid) {
            e->build_pid = 0;
            bool ok = WIFEXITED(w->rstatus) && WEXITSTATUS(w->rstatus) == 0;
            e->img = ok ? IMG_READY : IMG_FAILED;
            e->build_retry_at = n->now + 10;
            if (ok)
                node__read_image_bytes(n, e);
            /* The helper's own "failed: why" line says more than we can. */
            if (ok || !e->build_failed_line)
                node__build_status(n, e, ok ? "ready" : "failed (see the node's log)");
            if (ok)
                log_info("image ready image=%s env=%s", e->image, e->cfg.name);
            else
                log_error("image build failed image=%s env=%s (retry in 10 s)", e->image,
                          e->cfg.name);
            return;
        }
    }
    for (struct nsb *s = n->sbs; s; s = s->next) {
        if (s->sb && s->sb->init_pid == w->rpid) {
            /* Reaped: the pid may be reused, so never signal it again. */
            s->sb->init_pid = 0;
            node__destroy_sb(n, s, "init exited");
            return;
        }
    }
}
static void worker_fatal(void *ctx, const struct wp_err *err)
{
    struct node *n = ctx;
    n->worker_err = *err;
    node__stop(n);
}

/* A stop asked for before the loop's watchers exist (during start-up gc,
 * which must not be cut short: a sandbox half destroyed keeps its
 * processes and mounts) is remembered and served once they do. */
/* Say how criu runs here, once, at the level it deserves. */
static void log_criu(const struct snap_probe *p)
{
    const char *src = p->forced ? "configured" : p->cached ? "cached probe" : "probed now";
    if (p->mode == SNAP_CRIU_NONE)
        log_error("criu does not work on this host (%s): %s. No images are built; every "
                  "sandbox is booted cold (the hot tier too). `warmpool doctor` tells more",
                  src, p->why);
    else if (p->mode == SNAP_CRIU_NOBP)
        log_warn("criu mode=no-breakpoints lazy=%s (%s): %s; every criu run gets CRIU_FAULT=130",
                 p->lazy_ok ? "yes" : "no", src, p->why);
    else
        log_info("criu mode=default lazy=%s (%s)%s%s", p->lazy_ok ? "yes" : "no", src,
                 p->why[0] ? ": " : "", p->why);
    if (!p->cached && !p->forced)
        log_info("criu probe took %.0f ms (dump %.1f ms, restore %.1f ms, lazy %.1f ms)",
                 p->probed_ms, p->dump_ms, p->restore_ms, p->lazy_ms);
}

static volatile sig_atomic_t early_stop;

static void early_stop_handler(int sig)
{
    early_stop = sig;
}

/* The egress proxy, beside this binary unless configured. */
static int start_egress(struct node *n, struct wp_err *err)
{
    const struct pool_node_config *cfg = &n->cfg;
    char bin[512], ca_dir[512];
    const char *pins[9] = { NULL };

    if (cfg->egress_bin[0]) {
        snprintf(bin, sizeof(bin), "%s", cfg->egress_bin);
    } else {
        ssize_t k = readlink("/proc/self/exe", bin, sizeof(bin) - 1);
        char *slash = k > 0 ? (bin[k] = '\0', strrchr(bin, '/')) : NULL;
        if (!slash || (size_t)(slash - bin) + sizeof("/warmpool-egress") > sizeof(bin))
            return wp_err_set(err, WP_ECONFIG, "cannot tell where warmpool-egress is (--egress-bin)");
        snprintf(slash, sizeof(bin) - (size_t)(slash - bin), "/warmpool-egress");
    }
    if (cfg->egress_ca_dir[0])
        snprintf(ca_dir, sizeof(ca_dir), "%s", cfg->egress_ca_dir);
    else
        snprintf(ca_dir, sizeof(ca_dir), "%s/egress", cfg->state_dir);
    for (int i = 0; i < cfg->n_egress_pins && i < 8; i++)
        pins[i] = cfg->egress_pins[i];
    struct pool__negress_cfg ec = { .bin = bin, .state_dir = cfg->state_dir, .ca_dir = ca_dir,
                                    .upstream_ca = cfg->egress_upstream_ca, .pins = pins,
                                    .port = cfg->egress_port };
    if (!cfg->egress_bin[0] && access(bin, X_OK) != 0) {
        /* Not installed beside us, and nobody asked for it by path. */
        log_warn("no egress proxy at %s: sessions with secrets in play get no sandbox here "
                 "(--egress-bin PATH, or --egress off to say so)", bin);
        return 0;
    }
    int rc = pool__negress_start(n->loop, &ec, node__egress_ready, n, &n->egress, err);
    return rc < 0 ? wp_err_wrap(err, "egress (--egress off to run without)") : 0;
}

int pool_node_run(const struct pool_node_config *cfg, struct wp_err *err)
{
    struct snap_config sc = { .state_dir = cfg->state_dir,
                              .insecure_allow_unconfined = cfg->unconfined,
                              .criu_mode = cfg->criu_mode[0] ? cfg->criu_mode : NULL,
                              .criu_timeout_s = cfg->criu_timeout_s,
                              .unconfined = cfg->unconfined };
    struct node *n;
    int rc;
    struct sigaction sa = { .sa_handler = early_stop_handler };

    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    if (cfg->redis_password_file[0] &&
        (rc = wp_redis_auth_file(cfg->redis_user[0] ? cfg->redis_user : NULL,
                                 cfg->redis_password_file, err)) < 0)
        return rc;
    if ((cfg->redis_sentinels[0] || cfg->redis_master[0] || cfg->redis_sentinel_password_file[0]) &&
        ((rc = wp_sentinel_set(cfg->redis_sentinels, cfg->redis_master, err)) < 0 ||
         (cfg->redis_sentinel_password_file[0] &&
          (rc = wp_sentinel_auth_file(cfg->redis_sentinel_password_file, err)) < 0)))
        return rc;
    if (cfg->redis_cluster[0] && (rc = wp_rcl_set(cfg->redis_cluster, err)) < 0)
        return rc;
    n = calloc(1, sizeof(*n));
    if (!n)
        return wp_err_set(err, -ENOMEM, "out of memory");
    n->cfg = *cfg;
    n->loop = EV_DEFAULT;
    n->started_ms = wp_wall_ms();
    n->slots = cfg->restore_slots > 0 ? cfg->restore_slots : get_nprocs();
    /* The budget for clones: configured, or 80% of what is available now
     * (the rest for the node, Redis, page cache). */
    n->budget = cfg->hot_memory_bytes ? cfg->hot_memory_bytes : pool__mem_available() / 5 * 4;
    if (!n->budget)
        n->budget = UINT64_MAX / 2; /* no /proc/meminfo: no cap */
    if ((rc = snap_ctx_open(&sc, &n->snap, err)) < 0)
        goto out;
    log_criu(snap_ctx_criu(n->snap));
    /* KSM settings a killed earlier run left changed go back first. */
    if (pool__ksm_recover(cfg->state_dir) > 0)
        log_info("put back the host's KSM settings changed by an earlier run");
    if (pool__thp_recover(cfg->state_dir) > 0)
        log_info("put back the host's THP mode changed by an earlier run");
    if (cfg->thp_always) {
        if ((rc = pool__thp_enable(cfg->state_dir, err)) < 0)
            goto out;
        n->thp_set = rc == 1;
    }
    if (pool__fpr_recover(cfg->state_dir) > 0)
        log_info("put back the host's free page reporting changed by an earlier run");
    if (cfg->fpr_off) {
        if ((rc = pool__fpr_disable(cfg->state_dir, err)) < 0)
            goto out;
        n->fpr_set = rc == 1;
    }
    n->fpr = pool__fpr_state();
    if (n->fpr == POOL_FPR_ON)
        log_info("free page reporting is on: memory freed here goes back to the hypervisor "
                 "and refills fault it in again (--free-page-reporting off keeps it)");
    n->thp = pool__thp_mode();
    log_info("THP %s: hot refills %s%s", pool__thp_name(n->thp),
             node__restore_lazy(n) ? "lazy" : "eager",
             cfg->refill == POOL_REFILL_AUTO && n->thp != POOL_THP_ALWAYS
                 ? " (THP \"always\" makes eager ones cheaper: --thp always)"
                 : "");
    /* Sandboxes of an earlier run of this node are orphans now (checked
     * again from the cron: see orphans.c). */
    if ((rc = pool__orphans_new(n->loop, node__now_s(), &n->orphans, err)) < 0)
        goto out;
    rc = pool__orphans_check_now(n->orphans, n->snap, NULL);
    if (rc > 0)
        log_info("removed %d sandboxes left by an earlier run", rc);
    for (int i = 0; i < cfg->n_envs; i++) {
        struct env *e = &n->envs[n->n_envs];
        struct snap_template *t;
        if ((rc = snap_template_load(cfg->envs[i].template_path, &t, err)) < 0)
            goto out;
        node__env_init(n, e, &cfg->envs[i], t);
        n->n_envs++;
    }
    for (int i = 0; i < n->n_envs && !n->ksm_on; i++) {
        if (!node__merging(&n->envs[i]))
            continue;
        if ((rc = pool__ksm_enable(cfg->state_dir, cfg->ksm_slow_pages, cfg->ksm_sleep_ms, err)) < 0)
            goto out;
        n->ksm_on = true;
        n->ksm_rate = cfg->ksm_slow_pages;
        log_info("KSM on for env=%s (pages_to_scan %ld..%ld, sleep %ld ms)", n->envs[i].cfg.name,
                 cfg->ksm_slow_pages, cfg->ksm_fast_pages, cfg->ksm_sleep_ms);
    }
    int port = 0;
    if ((rc = pool__relay_start(n->loop, cfg->listen_host, cfg->listen_port, node__relay_lookup, n,
                                &n->relay, &port, err)) < 0)
        goto out;
    snprintf(n->relay_addr, sizeof(n->relay_addr), "%s:%d",
             cfg->advertise_host[0] ? cfg->advertise_host : cfg->listen_host, port);
    if (!cfg->egress_off && (rc = start_egress(n, err)) < 0)
        goto out;
    n->r = wp_redis_new(n->loop, cfg->redis_host, cfg->redis_port, "node");
    /* Redis Cluster: one inbox handle per environment instead (node_inbox.c). */
    if (!wp_rcl_on())
        n->rb = wp_redis_new(n->loop, cfg->redis_host, cfg->redis_port, "node-inbox");
    if (!n->r || (!n->rb && !wp_rcl_on())) {
        rc = wp_err_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    if (cfg->api_envs) {
        struct pool__catalog_ops ops = { .ctx = n, .put = node__env_put, .retire = node__env_retire };
        if ((rc = pool__catalog_new(n->r, cfg->id, &ops, &n->catalog, err)) < 0)
            goto out;
    }
    ev_timer_init(&n->cron, cron_cb, 0.05, 0.1);
    n->cron.data = n;
    ev_init(&n->kick, kick_cb);
    n->kick.data = n;
    ev_timer_start(n->loop, &n->cron);
    ev_signal_init(&n->sigterm, node__signal_cb, SIGTERM);
    ev_signal_init(&n->sigint, node__signal_cb, SIGINT);
    n->sigterm.data = n->sigint.data = n;
    ev_signal_start(n->loop, &n->sigterm);
    ev_signal_start(n->loop, &n->sigint);
    if (early_stop)
        ev_feed_signal_event(n->loop, early_stop);
    ev_child_init(&n->child, child_cb, 0, 0);
    n->child.data = n;
    ev_child_start(n->loop, &n->child);
    if (cfg->worker.enabled &&
        (rc = pool__worker_start(n->loop, &cfg->worker, cfg->worker.pool_env[0] ? cfg->worker.pool_env : n->envs[0].cfg.name,
                                 cfg->redis_host, cfg->redis_port, cfg->lease_ms, worker_fatal, n, &n->worker, err)) < 0)
        goto out;
    log_info("node=%s state=%s redis=%s%s:%d relay=%s hot_memory_mb=%llu%s", cfg->id, cfg->state_dir,
             wp_rcl_on() ? "cluster seeds " : "", wp_rcl_on() ? wp_rcl_seeds() : cfg->redis_host,
             wp_rcl_on() ? 0 : cfg->redis_port, n->relay_addr, (unsigned long long)(n->budget >> 20),
             cfg->multi_tenant ? " multi-tenant" : "");
    ev_run(n->loop, 0);
    node__warm_stop(n);

    /* Clean shutdown: our sandboxes and our entries go. Boots and builds
     * still running in helpers are stopped; what they made (their sandbox
     * records name the helper as owner) is collected by snap_gc below. */
    bool helpers = false;
    for (struct nsb *s = n->sbs; s; s = s->next)
        if (s->boot_helper > 0 && kill(s->boot_helper, SIGKILL) == 0) {
            waitpid(s->boot_helper, NULL, 0);
            helpers = true;
        }
    for (int i = 0; i < n->n_envs; i++)
        if (n->envs[i].build_pid > 0 && kill(n->envs[i].build_pid, SIGKILL) == 0) {
            waitpid(n->envs[i].build_pid, NULL, 0);
            helpers = true;
        }
    while (n->sbs) {
        struct nsb *s = n->sbs;
        if (s->job) {
            struct snap_sandbox *sb = NULL;
            ev_io_stop(n->loop, &s->job_io);
            if (snap_restore_finish(n->snap, s->job, &sb, NULL) == 0)
                snap_destroy(n->snap, sb, NULL);
            n->sbs = s->next;
            free(s);
            continue;
        }
        n->sbs = s->next;
        if (s->sb)
            snap_destroy(n->snap, s->sb, NULL);
        free(s);
    }
    if (helpers && (rc = snap_gc(n->snap, NULL)) > 0)
        log_info("removed %d sandboxes of boots cut short", rc);
    rc = n->worker_err.code ? wp_err_set(err, n->worker_err.code, "%s", n->worker_err.msg) : 0;
out:
    pool__orphans_free(n->orphans);
    pool__worker_free(n->worker);
    if (n->ksm_on)
        pool__ksm_disable(cfg->state_dir);
    if (n->thp_set)
        pool__thp_recover(cfg->state_dir);
    if (n->fpr_set)
        pool__fpr_recover(cfg->state_dir);
    pool__relay_stop(n->relay);
    pool__negress_stop(n->egress);
    ev_timer_stop(n->loop, &n->cron);
    ev_timer_stop(n->loop, &n->kick);
    ev_signal_stop(n->loop, &n->sigterm);
    ev_signal_stop(n->loop, &n->sigint);
    ev_child_stop(n->loop, &n->child);
    pool__catalog_free(n->catalog);
    wp_redis_free(n->r);
    wp_redis_free(n->rb);
    for (int i = 0; i < POOL_MAX_ENVS; i++)
        wp_redis_free(n->rbs[i]);
    for (int i = 0; i < n->n_envs; i++) {
        snap_template_free(n->envs[i].t);
        while (n->envs[i].claims_q) {
            struct claimq *q = n->envs[i].claims_q;
            n->envs[i].claims_q = q->next;
            free(q);
        }
    }
    if (n->snap)
        snap_ctx_close(n->snap);
    free(n);
    return rc;
}
