/* node_shutdown.c - stopping (leave Redis as if dead) and draining. */
#define WP_LOG_COMPONENT "node"
#include "pool/node_int.h"
/* Draining, for pool status: node hash field "draining" = "<deadline ms>
 * <leased sandboxes left>"; removed when not draining. */
void node__publish_draining(struct node *n)
{
    char key[160], v[64];
    int leased = 0;
    double left = n->drain_deadline - node__now_s();

    node__fmtkey(key, sizeof(key), POOL__K_NODE, n->cfg.id);
    for (struct nsb *s = n->sbs; s; s = s->next)
        leased += s->st == SB_LEASED;
    snprintf(v, sizeof(v), "%llu %d", (unsigned long long)(wp_wall_ms() + (uint64_t)(left > 0 ? left * 1e3 : 0)),
             leased);
    const char *hs[] = { "HSET", key, "draining", v };
    const char *hd[] = { "HDEL", key, "draining" };
    if (n->draining)
        node__cmd(n, "node draining", 4, hs);
    else
        node__cmd(n, "node draining", 3, hd);
    /* Claims stop picking it at once (the live hashes say "drain"). */
    for (int i = 0; i < n->n_envs; i++)
        if (!n->envs[i].retired)
            node__publish_live(n, &n->envs[i], false);
}
static void bye_cb(void *ctx, redisReply *reply)
{
    struct node *n = ctx;
    (void)reply;
    ev_break(n->loop, EVBREAK_ALL);
}

static void bye_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

/* Stop now: leave Redis as if we had died (our hot entries dropped, leases
 * marked lost for their holders), then tear down our sandboxes (after the
 * loop, in pool_node_run). */
void node__stop(struct node *n)
{
    struct ev_loop *loop = n->loop;
    char alive[160];

    if (n->stopping)
        return;
    pool__worker_stop(n->worker);
    log_info("stopping node=%s", n->cfg.id);
    n->stopping = true;
    node__fmtkey(alive, sizeof(alive), POOL__K_ALIVE, n->cfg.id);
    const char *del[] = { "DEL", alive };
    if (wp_redis_ready(n->r)) {
        node__inbox_position(n);
        node__cmd(n, "bye", 2, del);
        for (int i = 0; i < n->n_envs; i++) {
            char mk[200];
            node__fmtkey(mk, sizeof(mk), POOL__K_MEM "%s", n->envs[i].cfg.name, n->cfg.id);
            const char *dm[] = { "DEL", mk };
            node__cmd(n, "bye", 2, dm);
            node__publish_live(n, &n->envs[i], true);
        }
        if (node__reap(n, n->cfg.id, bye_cb, n) == 0) {
            static ev_timer t;
            ev_timer_init(&t, bye_timeout, 2.0, 0.);
            ev_timer_start(loop, &t);
            ev_unref(loop);
            return;
        }
    }
    ev_break(loop, EVBREAK_ALL);
}

/* ---- drain ------------------------------------------------------------------ */

static int count_leased(struct node *n, int *busy)
{
    int leased = 0;
    *busy = 0;
    for (struct nsb *s = n->sbs; s; s = s->next) {
        leased += s->st == SB_LEASED;
        *busy += s->st == SB_RESTORING && s->for_claim; /* a claimer waits for it */
    }
    return leased;
}

static void drain_key(struct node *n, char *out, size_t cap)
{
    node__fmtkey(out, cap, POOL__K_DRAIN, n->cfg.id);
}

/* Start draining (or move the deadline closer): claims pick other nodes
 * from now on (the pick script skips a node with a drain key; queued and
 * new claims are answered "retry"), idle clones go, no refills or builds;
 * leased sandboxes stay with their holders. */
static void drain_start(struct node *n, double deadline, bool by_signal)
{
    char key[160], val[64], px[32];
    int busy, leased = count_leased(n, &busy);

    if (n->draining && deadline >= n->drain_deadline) {
        n->drain_by_signal |= by_signal;
        return;
    }
    n->drain_by_signal |= by_signal;
    n->drain_deadline = deadline;
    double left = deadline - node__now_s();
    if (left < 0)
        left = 0;
    /* Ours too, so that claims skip us at once (the CLI's is the same
     * request; after a SIGTERM it is ours alone). Expires a minute after
     * the deadline in case we die before deleting it. */
    drain_key(n, key, sizeof(key));
    snprintf(val, sizeof(val), "%llu %llu", (unsigned long long)(wp_wall_ms() + (uint64_t)(left * 1e3)),
             (unsigned long long)wp_wall_ms());
    snprintf(px, sizeof(px), "%llu", (unsigned long long)(left * 1e3) + 60000);
    const char *set[] = { "SET", key, val, "PX", px };
    node__cmd(n, "drain", 5, set);
    if (n->draining) {
        log_info("drain deadline now in %.0f s (%d leased sandboxes left)", left, leased);
        node__publish_draining(n);
        return;
    }
    n->draining = true;
    pool__worker_stop(n->worker);
    log_info("draining node=%s: no new claims, idle clones go, %d leased sandboxes kept until "
             "released (deadline in %.0f s)", n->cfg.id, leased, left);
    for (int i = 0; i < n->n_envs; i++) {
        node__serve_claims(n, &n->envs[i]);
        node__drop_idle(n, &n->envs[i], false, "node draining");
    }
    node__publish_draining(n);
}

/* GET of the drain key: "<deadline ms> <set ms>". A request set before this
 * run started was for the run that drained (or was killed): deleted. */
void node__drain_cb(void *ctx, redisReply *reply)
{
    struct node *n = ctx;
    unsigned long long dl, at;

    n->drain_asking = false;
    if (!reply || reply->type != REDIS_REPLY_STRING || n->stopping)
        return;
    if (sscanf(reply->str, "%llu %llu", &dl, &at) != 2) {
        log_warn("drain request \"%.40s\" unreadable: ignored", reply->str);
        return;
    }
    if (at < n->started_ms) {
        if (!n->draining) {
            char key[160];
            drain_key(n, key, sizeof(key));
            const char *del[] = { "DEL", key };
            node__cmd(n, "stale drain", 2, del);
            log_info("drain request of an earlier run deleted");
        }
        return;
    }
    double deadline = node__now_s() + ((double)dl - (double)wp_wall_ms()) / 1e3;
    drain_start(n, deadline, false);
}

/* Each cron tick while draining: done once no sandbox is leased (nor being
 * made for a claimer), or at the deadline (what is left becomes lost, as
 * on an immediate stop). */
void node__drain_tick(struct node *n)
{
    char key[160];
    int busy, leased = count_leased(n, &busy);

    for (int i = 0; i < n->n_envs; i++) {
        node__serve_claims(n, &n->envs[i]);
        node__drop_idle(n, &n->envs[i], false, "node draining");
    }
    if (leased + busy > 0 && n->now < n->drain_deadline)
        return;
    if (leased + busy > 0)
        log_warn("drain deadline passed: %d leased sandboxes left are destroyed (lost to their "
                 "holders)", leased + busy);
    else
        log_info("drained: no leased sandbox left");
    drain_key(n, key, sizeof(key));
    const char *del[] = { "DEL", key };
    node__cmd(n, "drained", 2, del);
    node__stop(n);
}

/* SIGTERM drains for --drain-timeout (0: stops at once); a second SIGTERM,
 * or SIGINT, stops at once. */
void node__signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    struct node *n = w->data;
    (void)loop;
    (void)revents;

    if (n->stopping)
        return;
    if (w->signum == SIGTERM && n->cfg.drain_timeout_s > 0 && !n->drain_by_signal &&
        wp_redis_ready(n->r)) {
        drain_start(n, node__now_s() + n->cfg.drain_timeout_s, true);
        return;
    }
    node__stop(n);
}
