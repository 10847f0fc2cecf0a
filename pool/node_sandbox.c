/* node_sandbox.c - the node's sandboxes: restores (helper fd watched),
 * cold boots in helpers, readiness, replies to claimers, destroys. */
#define WP_LOG_COMPONENT "node"
#include "pool/node_int.h"
/* ---- sandboxes ------------------------------------------------------------ */

struct nsb *node__find_sb(struct node *n, const char *id)
{
    for (struct nsb *s = n->sbs; s; s = s->next)
        if (s->sb && strcmp(s->sb->id, id) == 0)
            return s;
    return NULL;
}

static void unlink_sb(struct node *n, struct nsb *s)
{
    for (struct nsb **pp = &n->sbs; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            return;
        }
}

static void forget_in_redis(struct node *n, struct env *e, const char *id)
{
    char k[256], member[200], nk[160];
    node__fmtkey(k, sizeof(k), POOL__K_SB, e->cfg.name);
    strncat(k, id, sizeof(k) - strlen(k) - 1);
    snprintf(member, sizeof(member), "%s %s", e->cfg.name, id);
    node__fmtkey(nk, sizeof(nk), POOL__K_NODE_SBS, n->cfg.id);
    const char *del[] = { "DEL", k };
    const char *srem[] = { "SREM", nk, member };
    node__cmd(n, "forget sandbox", 2, del);
    node__cmd(n, "forget sandbox", 3, srem);
}

/* Destroy off the loop: a helper process does the blocking teardown. The
 * init is our child (subreaper) and libev reaps it; the helper's own
 * waitpid sees ECHILD. */
void node__destroy_sb(struct node *n, struct nsb *s, const char *why)
{
    unlink_sb(n, s);
    if (s->st == SB_IDLE)
        s->e->idle--;
    if (s->hands_fd >= 0)
        close(s->hands_fd);
    if (s->sb) {
        pool__relay_drop(n->relay, s->sb->id);
        /* Before its slot (and address) can go to another sandbox. */
        pool__negress_remove(n->egress, s->sb->id);
    }
    if (s->sb) {
        log_info("destroy sandbox=%s env=%s why=%s", s->sb->id, s->e->cfg.name, why);
        forget_in_redis(n, s->e, s->sb->id);
        pid_t pid = fork();
        if (pid == 0) {
            snap_destroy(n->snap, s->sb, NULL);
            _exit(0);
        }
        if (pid < 0)
            snap_destroy(n->snap, s->sb, NULL);
        else
            snap_sandbox_free(s->sb);
    }
    free(s);
}

/* The claim's answer as the claimer reads it (caller frees). */
static char *reply_text(struct node *n, struct nsb *s, int status, const char *msg)
{
    json_t *o = json_pack("{s:s, s:i}", "rid", s->rid, "status", status);
    if (status == 0)
        json_object_update_new(o, json_pack("{s:s, s:s, s:s, s:s, s:I, s:s}", "sandbox", s->sb->id,
                                            "node", n->cfg.id, "root", s->sb->root, "tier",
                                            s->tier, "token", (json_int_t)s->token, "relay",
                                            n->relay_addr));
    else
        json_object_set_new(o, "error", json_string(msg));
    /* A draining node's refusal: the claimer picks another node. */
    if (status != 0 && n->draining)
        json_object_set_new(o, "retry", json_true());
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return text;
}

void node__publish_reply(struct node *n, struct nsb *s, int status, const char *msg)
{
    char *text = reply_text(n, s, status, msg);
    const char *argv[] = { "PUBLISH", s->reply_chan, text };
    node__cmd(n, "reply", 3, argv);
    free(text);
}

/* A served claim's answer, sent once its lease is written: on a cluster
 * the answer's channel and the sandbox's hash live on different masters,
 * and a claimer that heard of its sandbox before the hash was there got
 * GONE for its first renew or release. */
struct leased_reply {
    struct node *n;
    char chan[128];
    char *text;
};

static void leased_cb(void *ctx, redisReply *reply)
{
    struct leased_reply *lr = ctx;
    node__log_reply((void *)"lease sandbox", reply);
    const char *argv[] = { "PUBLISH", lr->chan, lr->text };
    node__cmd(lr->n, "reply", 3, argv);
    free(lr->text);
    free(lr);
}

static void sb_ready(struct node *n, struct nsb *s)
{
    struct env *e = s->e;
    char k[256], hot[160], nk[160], member[200], created[32];

    node__fmtkey(k, sizeof(k), POOL__K_SB, e->cfg.name);
    strncat(k, s->sb->id, sizeof(k) - strlen(k) - 1);
    node__fmtkey(nk, sizeof(nk), POOL__K_NODE_SBS, n->cfg.id);
    snprintf(member, sizeof(member), "%s %s", e->cfg.name, s->sb->id);
    const char *sadd[] = { "SADD", nk, member };
    node__cmd(n, "node sandboxes", 3, sadd);
    snprintf(created, sizeof(created), "%llu", (unsigned long long)wp_wall_ms());
    s->ready_at = node__now_s();
    s->scans_at_change = n->kh.full_scans;
    s->last_private = 0;
    if (s->e->ksm == KSM_ON || s->e->ksm == KSM_OVERRIDE)
        n->unsettled++; /* KSM scans fast until the next measure says better */
    if (s->for_claim) {
        char tok[32], until[32];
        snprintf(tok, sizeof(tok), "%llu", (unsigned long long)s->token);
        snprintf(until, sizeof(until), "%llu",
                 (unsigned long long)(wp_wall_ms() + (uint64_t)n->cfg.lease_ms));
        const char *hset[] = { "HSET", k, "node", n->cfg.id, "addr", s->sb->root, "state",
                               "leased", "session", s->session, "token", tok, "tier", s->tier,
                               "lease_until", until, "created_ms", created, "relay", n->relay_addr };
        struct leased_reply *lr = calloc(1, sizeof(*lr));
        if (lr && (lr->text = reply_text(n, s, 0, NULL))) {
            lr->n = n;
            snprintf(lr->chan, sizeof(lr->chan), "%s", s->reply_chan);
        }
        /* Redis away (or no memory): no answer; the claimer's deadline
         * ends the claim, and reconcile records the lease, which expires
         * unrenewed. */
        if (!lr || !lr->text || wp_redis_argv(n->r, leased_cb, lr, 20, hset, NULL) < 0) {
            log_warn("claim sandbox=%s: its lease could not be written: no answer", s->sb->id);
            if (lr)
                free(lr->text);
            free(lr);
        }
        char stats[160];
        node__fmtkey(stats, sizeof(stats), POOL__K_STATS, e->cfg.name);
        const char *incr[] = { "HINCRBY", stats, strcmp(s->tier, "warm") == 0 ? "claims_warm" : "claims_cold", "1" };
        node__cmd(n, "stats", 4, incr);
        s->st = SB_LEASED;
        log_info("claim served sandbox=%s env=%s tier=%s session=%s ms=%.1f", s->sb->id,
                 e->cfg.name, s->tier, s->session, (node__now_s() - s->t0) * 1e3);
        return;
    }
    if (n->draining || e->retired) {
        /* A refill that finished after its environment was withdrawn is
         * never offered: a claim could otherwise take a clone of it. */
        node__destroy_sb(n, s, n->draining ? "node draining" : "environment withdrawn");
        return;
    }
    node__fmtkey(hot, sizeof(hot), POOL__K_HOT, e->cfg.name);
    const char *argv[] = { k, hot, s->sb->id, n->cfg.id, s->sb->root, created, n->relay_addr };
    if (wp_redis_script(n->r, pool__lua_offer, node__log_reply, (void *)"offer", 2, 7, argv, NULL) < 0)
        log_warn("offer sandbox=%s: redis not ready", s->sb->id);
    s->st = SB_IDLE;
    e->idle++;
    e->hot_total++; /* until the next LLEN says better */
    log_debug("hot clone ready sandbox=%s env=%s ms=%.1f", s->sb->id, e->cfg.name,
              (node__now_s() - s->t0) * 1e3);
}


/* The image of e goes out of use and is built again. Set aside, not
 * deleted: live clones still have its layer as a lower layer of their
 * overlays. */
void node__image_set_aside(struct node *n, struct env *e)
{
    char from[700], to[760];

    snprintf(from, sizeof(from), "%s/images/%s", n->cfg.state_dir, e->image);
    snprintf(to, sizeof(to), "%s.stale-%llu", from, (unsigned long long)wp_wall_ms());
    if (rename(from, to) < 0)
        log_warn("set aside image=%s: %s", e->image, strerror(errno));
    e->img = IMG_NONE;
    e->failures = 0;
}

/* Restores of an image keep failing: back off exponentially (0.1 s to
 * 10 s) instead of hammering, and after three in a row rebuild the image
 * (a corrupt or stale image heals itself). */
static void restore_failed(struct node *n, struct env *e, const char *why)
{
    n->restore_failures++;
    e->failures++;
    e->backoff = e->backoff ? e->backoff * 2 : 0.1;
    if (e->backoff > 10)
        e->backoff = 10;
    e->refill_at = node__now_s() + e->backoff;
    log_error("restore env=%s failed (%d in a row, next refill in %.1f s): %s", e->cfg.name,
              e->failures, e->backoff, why);
    if (e->failures >= 3 && e->img == IMG_READY) {
        log_warn("rebuilding image=%s env=%s after %d failed restores", e->image, e->cfg.name,
                 e->failures);
        node__image_set_aside(n, e);
    }
}

/* A restore helper finished (its fd reached EOF), or its deadline passed
 * (the cron): snap_restore_finish then kills what is left and fails it. */
static void job_done(struct node *n, struct nsb *s)
{
    struct wp_err err;

    ev_io_stop(n->loop, &s->job_io);
    n->restores--;
    node__kick(n, 0); /* the slot is free for the next refill now */
    if (!s->for_claim)
        s->e->restoring--;
    if (snap_restore_finish(n->snap, s->job, &s->sb, &err) < 0) {
        struct env *e = s->e;
        s->job = NULL;
        restore_failed(n, e, err.msg);
        unlink_sb(n, s);
        if (s->for_claim) {
            /* The claimer is waiting: boot one from the template instead
             * of failing it (a failing image must not fail claims). */
            struct nsb *cold = node__start_cold_boot(n, e, true);
            if (cold) {
                snprintf(cold->tier, sizeof(cold->tier), "cold");
                snprintf(cold->reply_chan, sizeof(cold->reply_chan), "%s", s->reply_chan);
                snprintf(cold->rid, sizeof(cold->rid), "%s", s->rid);
                snprintf(cold->session, sizeof(cold->session), "%s", s->session);
                cold->token = s->token;
                memcpy(cold->rkey, s->rkey, sizeof(cold->rkey));
            } else {
                node__publish_reply(n, s, WP_ECRIU, err.msg);
            }
        }
        free(s);
        return;
    }
    s->job = NULL;
    s->e->failures = 0;
    s->e->backoff = 0;
    node__record_restore(n, s->for_claim ? RH_WARM : RH_HOT, node__now_s() - s->t0);
    if (!s->for_claim) {
        s->e->last_refill = node__now_s();
        s->e->refills++;
        pool_ewma_add(&s->e->refill, node__now_s(), node__now_s() - s->t0);
    }
    struct env *e = s->e;
    sb_ready(n, s); /* may destroy s (a draining node keeps no new hot clone) */
    node__serve_claims(n, e); /* a slot is free: queued claims first */
}

static void job_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    job_done(((struct nsb *)w->data)->n, w->data);
}

/* Restores past their deadline (criu hung): fail them, one per pass, as
 * job_done may free s and start a cold boot in its place. */
void node__expire_restores(struct node *n)
{
    for (bool again = true; again;) {
        again = false;
        for (struct nsb *s = n->sbs; s; s = s->next)
            if (s->job && snap_restore_job_expired(s->job)) {
                job_done(n, s);
                again = true;
                break;
            }
    }
}

/* What costs less CPU: eager under THP "always" (thp.c), else lazy pages.
 * Restores a claim waits for too: a lazy one runs ~20 ms sooner on a
 * quiet node, but claims wait for restores when the node is short of CPU,
 * and then the cheaper restore is the faster one. */
bool node__restore_lazy(const struct node *n)
{
    switch (n->cfg.refill) {
    case POOL_REFILL_EAGER: return false;
    case POOL_REFILL_LAZY: return true;
    default: return n->thp != POOL_THP_ALWAYS;
    }
}

struct nsb *node__start_restore(struct node *n, struct env *e, bool for_claim)
{
    struct snap_restore_opts ro = { .lazy = node__restore_lazy(n),
                                    .merge = e->ksm == KSM_ON || e->ksm == KSM_OVERRIDE ? 1 : -1 };
    struct nsb *s = calloc(1, sizeof(*s));
    struct wp_err err;

    if (!s)
        return NULL;
    s->n = n;
    s->e = e;
    s->hands_fd = -1;
    s->for_claim = for_claim;
    s->t0 = node__now_s();
    if (snap_restore_start(n->snap, e->image, &ro, &s->job, &err) < 0) {
        free(s);
        if (err.code == WP_ESTATE && e->img == IMG_READY) {
            /* One this node must not use (snap_image_check): build anew. */
            log_warn("image=%s env=%s: %s: rebuilding", e->image, e->cfg.name, err.msg);
            node__image_set_aside(n, e);
        } else {
            restore_failed(n, e, err.msg);
        }
        return NULL;
    }
    ev_io_init(&s->job_io, job_cb, snap_restore_job_fd(s->job), EV_READ);
    s->job_io.data = s;
    ev_io_start(n->loop, &s->job_io);
    s->st = SB_RESTORING;
    s->next = n->sbs;
    n->sbs = s;
    n->restores++;
    if (!for_claim)
        e->restoring++;
    n->used_now += e->image_bytes; /* until the next measure says better */
    return s;
}

/* A cold boot runs in a helper process (it blocks for the whole boot);
 * the helper writes the new sandbox's id on a pipe and exits. The
 * sandbox's init is reparented to us, the subreaper. */
static void boot_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct nsb *s = w->data;
    struct node *n = s->n;
    struct wp_err err;
    char line[600];
    ssize_t len = 0, r;
    (void)revents;

    ev_io_stop(loop, w);
    s->boot_helper = 0;
    if (!s->for_claim)
        s->e->restoring--;
    while ((r = read(w->fd, line + len, sizeof(line) - 1 - len)) > 0 || (r < 0 && errno == EINTR))
        if (r > 0)
            len += r;
    line[len] = '\0';
    close(w->fd);
    n->restores--;
    if (strncmp(line, "ok ", 3) != 0 || snap_sandbox_open(n->snap, line + 3, &s->sb, &err) < 0) {
        const char *why = strncmp(line, "fail ", 5) == 0 ? line + 5 : len ? err.msg : "boot helper died";
        log_error("cold boot env=%s: %s", s->e->cfg.name, why);
        if (s->for_claim)
            node__publish_reply(n, s, WP_ECHILD, why);
        else
            restore_failed(n, s->e, why);
        unlink_sb(n, s);
        free(s);
        return;
    }
    /* Its record names the helper, now gone: ours from here on, or any
     * gc (warmpool-snap gc, too) would take it for an orphan. */
    if (snap_sandbox_adopt(n->snap, s->sb, &err) < 0)
        log_warn("cold boot env=%s sandbox=%s: %s", s->e->cfg.name, s->sb->id, err.msg);
    node__record_restore(n, RH_COLD, node__now_s() - s->t0);
    if (!s->for_claim) {
        s->e->failures = 0;
        s->e->backoff = 0;
        s->e->refills++;
        pool_ewma_add(&s->e->refill, node__now_s(), node__now_s() - s->t0);
    }
    sb_ready(n, s);
}

/* for_claim: a claimer waits for it; else it refills the hot tier (where
 * criu does not work, the hot tier is made of cold-booted sandboxes). */
struct nsb *node__start_cold_boot(struct node *n, struct env *e, bool for_claim)
{
    struct nsb *s = calloc(1, sizeof(*s));
    int pfd[2];
    pid_t pid;

    if (!s || pipe2(pfd, O_CLOEXEC) < 0) {
        free(s);
        return NULL;
    }
    pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        free(s);
        return NULL;
    }
    if (pid == 0) {
        struct snap_sandbox *sb;
        struct wp_err err;
        if (snap_boot(n->snap, e->t, NULL, NULL, NULL, &sb, &err) < 0)
            dprintf(pfd[1], "fail %s", err.msg);
        else
            dprintf(pfd[1], "ok %s", sb->id);
        _exit(0);
    }
    close(pfd[1]);
    s->boot_helper = pid;
    s->n = n;
    s->e = e;
    s->hands_fd = -1;
    s->for_claim = for_claim;
    if (!for_claim)
        e->restoring++;
    s->t0 = node__now_s();
    s->st = SB_RESTORING;
    ev_io_init(&s->job_io, boot_cb, pfd[0], EV_READ);
    s->job_io.data = s;
    ev_io_start(n->loop, &s->job_io);
    s->next = n->sbs;
    n->sbs = s;
    n->restores++;
    return s;
}
