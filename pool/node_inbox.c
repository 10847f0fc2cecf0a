/* node_inbox.c - the node's inbox per environment: warm/cold claims and
 * releases read from Redis streams, queued claims, overload refusals. */
#define WP_LOG_COMPONENT "node"
#include "pool/node_int.h"
#include "base/rcluster.h"
#include "base/fs.h"

#include <sys/socket.h>
/* ---- inbox -------------------------------------------------------------- */

static const char *field(redisReply *kv, const char *name)
{
    for (size_t i = 0; i + 1 < kv->elements; i += 2)
        if (kv->element[i]->type == REDIS_REPLY_STRING && strcmp(kv->element[i]->str, name) == 0 &&
            kv->element[i + 1]->type == REDIS_REPLY_STRING)
            return kv->element[i + 1]->str;
    return NULL;
}

/* Answer a claim that will not be served with an error; frees q. */
static void refuse_claim(struct node *n, struct env *e, struct claimq *q, int code,
                         const char *msg)
{
    struct nsb tmp = { .n = n, .e = e };
    snprintf(tmp.reply_chan, sizeof(tmp.reply_chan), "%s", q->chan);
    snprintf(tmp.rid, sizeof(tmp.rid), "%s", q->rid);
    node__publish_reply(n, &tmp, code, msg);
    free(q);
}

static int claims_queued(const struct node *n)
{
    int k = 0;
    for (int i = 0; i < n->n_envs; i++)
        for (const struct claimq *q = n->envs[i].claims_q; q; q = q->next)
            k++;
    return k;
}

/* Overload is said, not queued: a claim that waited (or, arriving, would
 * wait) longer than --claim-wait-max for a restore slot gets a retryable
 * WP_EOVERLOADED with the figures, so its caller can back off or go
 * elsewhere instead of sitting in a queue the node cannot drain. */
static void refuse_overloaded(struct node *n, struct env *e, struct claimq *q, double wait_ms,
                              bool waited)
{
    char msg[256];
    snprintf(msg, sizeof(msg),
             "node %s is overloaded: the claim %s %.0f ms for a restore slot (bound %.0f ms; "
             "%d claims waiting, %d of %d slots busy, restores take %.0f ms); retry later",
             n->cfg.id, waited ? "waited" : "would wait", wait_ms, n->cfg.claim_wait_max_ms,
             claims_queued(n), n->restores, n->slots, e->refill.value * 1e3);
    e->shed++;
    log_warn("claim refused env=%s session=%s: %s", e->cfg.name, q->session, msg);
    refuse_claim(n, e, q, WP_EOVERLOADED, msg);
}

/* Refuse queued claims that have waited past the bound. */
void node__shed_waiting(struct node *n, struct env *e)
{
    uint64_t now = wp_wall_ms();
    struct claimq **pp = &e->claims_q;

    if (n->cfg.claim_wait_max_ms <= 0)
        return;
    while (*pp) {
        struct claimq *q = *pp;
        double waited = now > q->at_ms ? (double)(now - q->at_ms) : 0;
        if (waited > n->cfg.claim_wait_max_ms) {
            *pp = q->next;
            refuse_overloaded(n, e, q, waited, true);
            continue;
        }
        pp = &q->next;
    }
}

/* Start queued warm/cold claims while restore slots are free. */
void node__serve_claims(struct node *n, struct env *e)
{
    while ((e->retired || n->draining) && e->claims_q) {
        struct claimq *q = e->claims_q;
        e->claims_q = q->next;
        refuse_claim(n, e, q, n->draining ? WP_ESTATE : WP_ENOTFOUND,
                     n->draining ? "node draining" : "environment no longer served on this node");
    }
    while (e->claims_q && n->restores < n->slots) {
        struct claimq *q = e->claims_q;
        e->claims_q = q->next;
        if (wp_wall_ms() - q->at_ms > POOL__CLAIM_MAX_AGE_MS) { /* its claimer gave up */
            free(q);
            continue;
        }
        struct nsb *s = NULL;
        if (e->img == IMG_READY && q->warm_ok) {
            s = node__start_restore(n, e, true);
            if (s)
                snprintf(s->tier, sizeof(s->tier), "warm");
        }
        if (!s) {
            /* No image yet (or restore refused): boot from the template. */
            s = node__start_cold_boot(n, e, true);
            if (!s) {
                refuse_claim(n, e, q, WP_ECHILD, "cold boot could not start");
                continue;
            }
            snprintf(s->tier, sizeof(s->tier), "cold");
        }
        snprintf(s->reply_chan, sizeof(s->reply_chan), "%s", q->chan);
        snprintf(s->rid, sizeof(s->rid), "%s", q->rid);
        snprintf(s->session, sizeof(s->session), "%s", q->session);
        s->token = q->token;
        memcpy(s->rkey, q->rkey, sizeof(s->rkey));
        free(q);
    }
}

static void handle_entry(struct node *n, struct env *e, const char *id, redisReply *kv)
{
    const char *type = field(kv, "type"), *sbid = field(kv, "sandbox"), *tok = field(kv, "token");
    uint64_t token = tok ? strtoull(tok, NULL, 10) : 0;

    if (!type) {
        log_warn("inbox env=%s entry=%s: no type, ignored", e->cfg.name, id);
        return;
    }
    if (strcmp(type, "claimed") == 0 || strcmp(type, "claim") == 0)
        pool_rate_event(&e->claims, node__now_s(), 1);
    if (strcmp(type, "claimed") == 0 && sbid) {
        struct nsb *s = node__find_sb(n, sbid);
        if (!s || s->st != SB_IDLE) {
            log_warn("claimed sandbox=%s is not an idle clone here", sbid);
            return;
        }
        s->st = SB_LEASED;
        s->token = token;
        snprintf(s->rkey, sizeof(s->rkey), "%s", field(kv, "rkey") ? field(kv, "rkey") : "");
        snprintf(s->session, sizeof(s->session), "%s", field(kv, "session") ? field(kv, "session") : "");
        e->idle--;
        /* Its replacement starts soon, not at the next tick. */
        node__kick(n, NODE__CLAIM_REFILL_DELAY_S);
        log_info("claimed sandbox=%s env=%s tier=hot token=%llu", sbid, e->cfg.name,
                 (unsigned long long)token);
        /* The claimer's route follows: its connection to the hands is made
         * now, so the route finds it open and the hands awake (issue 20).
         * Only a route that passes the lease check gets it. */
        if (s->sb && s->sb->init_pid > 0 && s->hands_fd < 0) {
            char root[64];
            snprintf(root, sizeof(root), "/proc/%d/root", (int)s->sb->init_pid);
            s->hands_fd = wp_connect_unix_in_root(root, ALINK_SOCK_PATH_DEFAULT,
                                                  SOCK_STREAM | SOCK_NONBLOCK, NULL);
        }
        pool__relay_retry(n->relay, sbid);
    } else if (strcmp(type, "release") == 0 && sbid) {
        struct nsb *s = node__find_sb(n, sbid);
        if (!s)
            return;
        /* Fencing: only the current lease's token releases. */
        if (s->st != SB_LEASED || s->token != token) {
            log_warn("release sandbox=%s refused: stale token %llu (lease %llu)", sbid,
                     (unsigned long long)token, (unsigned long long)s->token);
            return;
        }
        node__destroy_sb(n, s, "released");
    } else if (strcmp(type, "claim") == 0) {
        const char *chan = field(kv, "reply"), *rid = field(kv, "rid"),
                   *session = field(kv, "session"), *tiers = field(kv, "tiers");
        uint64_t at = strtoull(id, NULL, 10); /* the stream id's milliseconds */
        /* A claimer waits 30 s at most: older requests have no reader. */
        if (!chan || !rid || !session || wp_wall_ms() - at > POOL__CLAIM_MAX_AGE_MS)
            return;
        struct claimq *q = calloc(1, sizeof(*q));
        if (!q)
            return;
        snprintf(q->chan, sizeof(q->chan), "%s", chan);
        snprintf(q->rid, sizeof(q->rid), "%s", rid);
        snprintf(q->session, sizeof(q->session), "%s", session);
        snprintf(q->rkey, sizeof(q->rkey), "%s", field(kv, "rkey") ? field(kv, "rkey") : "");
        q->token = token;
        q->at_ms = at;
        /* The claimer read the policy's tiers with its hot attempt ("" or
         * absent: every tier). Without warm the claim is a cold boot. */
        q->warm_ok = !tiers || !*tiers || strstr(tiers, "warm") != NULL;
        /* Claims queue for a restore slot and go before refills: restores
         * beyond one per CPU only make every one of them slower. */
        double est_ms = 1e3 * pool_claim_wait_s(claims_queued(n), n->restores, n->slots,
                                                e->refill.value);
        if (n->cfg.claim_wait_max_ms > 0 && est_ms > n->cfg.claim_wait_max_ms) {
            refuse_overloaded(n, e, q, est_ms, false);
            return;
        }
        struct claimq **pp = &e->claims_q;
        while (*pp)
            pp = &(*pp)->next;
        *pp = q;
        node__serve_claims(n, e);
    }
}


/* XREAD's answer: [[stream, [[id, [k, v, ...]], ...]], ...] */
static void inbox_entries(struct node *n, redisReply *reply)
{
    for (size_t i = 0; i < reply->elements; i++) {
        redisReply *st = reply->element[i];
        if (st->type != REDIS_REPLY_ARRAY || st->elements != 2 ||
            st->element[0]->type != REDIS_REPLY_STRING || st->element[1]->type != REDIS_REPLY_ARRAY)
            continue;
        struct env *e = NULL;
        for (int j = 0; j < n->n_envs; j++)
            if (strcmp(n->envs[j].inbox, st->element[0]->str) == 0)
                e = &n->envs[j];
        if (!e)
            continue;
        redisReply *entries = st->element[1];
        for (size_t k = 0; k < entries->elements; k++) {
            redisReply *ent = entries->element[k];
            if (ent->type != REDIS_REPLY_ARRAY || ent->elements != 2 ||
                ent->element[0]->type != REDIS_REPLY_STRING ||
                ent->element[1]->type != REDIS_REPLY_ARRAY)
                continue;
            snprintf(e->last_id, sizeof(e->last_id), "%s", ent->element[0]->str);
            handle_entry(n, e, ent->element[0]->str, ent->element[1]);
        }
    }
}

/* After a read: true when the next one may go at once. An error is not
 * read again at once (that would spin): the cron retries. No reply: the
 * connection dropped; the cron reads again once it is back. */
static bool inbox_handled(struct node *n, redisReply *reply)
{
    if (n->stopping || !reply)
        return false;
    if (reply->type == REDIS_REPLY_ERROR) {
        log_warn("inbox read: %s", reply->str);
        return false;
    }
    if (reply->type == REDIS_REPLY_ARRAY)
        inbox_entries(n, reply);
    return true;
}

static void inbox_cb(void *ctx, redisReply *reply)
{
    struct node *n = ctx;
    n->inbox_reading = false;
    if (inbox_handled(n, reply))
        node__read_inbox(n);
}

/* Redis Cluster: one environment's read (ctx: its struct env). */
static void inbox_env_cb(void *ctx, redisReply *reply)
{
    struct env *e = ctx;
    struct node *n = e->n;
    n->rbs_reading[e - n->envs] = false;
    if (inbox_handled(n, reply))
        node__read_inbox(n);
}

/* "<ms>-<seq>" as Redis writes stream ids; false for anything else. */
static bool stream_id(const char *s, unsigned long long *ms, unsigned long long *seq)
{
    char *end;
    if (!s || !*s || strlen(s) > 41 || *s < '0' || *s > '9')
        return false;
    errno = 0;
    *ms = strtoull(s, &end, 10);
    if (errno || *end != '-' || end[1] < '0' || end[1] > '9')
        return false;
    *seq = strtoull(end + 1, &end, 10);
    return !errno && *end == '\0';
}

static void seen_cb(void *ctx, redisReply *reply)
{
    struct env *e = ctx;
    unsigned long long ms, seq, ms0, seq0;

    if (!e->inbox_asking)
        return; /* the slot was set up again meanwhile */
    e->inbox_asking = false;
    if (!reply)
        return; /* the connection dropped: asked again next tick */
    if (reply->type != REDIS_REPLY_STRING && reply->type != REDIS_REPLY_NIL)
        log_warn("inbox env=%s: saved position unreadable (%.80s), reading the last 30 s",
                 e->cfg.name, reply->type == REDIS_REPLY_ERROR ? reply->str : "not a string");
    if (reply->type == REDIS_REPLY_STRING) {
        if (stream_id(reply->str, &ms, &seq) && stream_id(e->last_id, &ms0, &seq0) &&
            (ms > ms0 || (ms == ms0 && seq > seq0)))
            snprintf(e->last_id, sizeof(e->last_id), "%s", reply->str);
        else if (!stream_id(reply->str, &ms, &seq))
            log_warn("inbox env=%s: bad saved position \"%.40s\", ignored", e->cfg.name, reply->str);
    }
    snprintf(e->seen_id, sizeof(e->seen_id), "%s", e->last_id);
    e->inbox_started = true;
    log_info("inbox env=%s reading after %s", e->cfg.name, e->last_id);
}

static void seen_key(struct node *n, struct env *e, char *out, size_t cap)
{
    node__fmtkey(out, cap, POOL__K_SEEN "%s", e->cfg.name, n->cfg.id);
}

/* Where each inbox is read from: asked once per environment, then the
 * position handled last is written back when it moves (at most once per
 * cron tick), so a restarted node, even after SIGKILL, does not read again
 * what its previous run handled. Inboxes are trimmed of what no one can
 * need any more (claims are dropped after 30 s). */
void node__inbox_position(struct node *n)
{
    bool trim = n->now - n->last_trim >= 10;
    char key[200], minid[32], ttl[16];

    if (!wp_redis_ready(n->r))
        return;
    snprintf(ttl, sizeof(ttl), "%d", POOL__SEEN_TTL_MS);
    snprintf(minid, sizeof(minid), "%llu",
             (unsigned long long)(wp_wall_ms() - 2 * POOL__CLAIM_MAX_AGE_MS));
    for (int i = 0; i < n->n_envs; i++) {
        struct env *e = &n->envs[i];
        seen_key(n, e, key, sizeof(key));
        if (!e->inbox_started && !e->inbox_asking) {
            const char *get[] = { "GET", key };
            if (wp_redis_argv(n->r, seen_cb, e, 2, get, NULL) == 0)
                e->inbox_asking = true;
            continue;
        }
        if (e->inbox_started && strcmp(e->seen_id, e->last_id) != 0) {
            const char *set[] = { "SET", key, e->last_id, "PX", ttl };
            node__cmd(n, "inbox position", 5, set);
            snprintf(e->seen_id, sizeof(e->seen_id), "%s", e->last_id);
        }
        if (trim) {
            /* Exact, not "~": it only ever removes a few old entries. */
            const char *xt[] = { "XTRIM", e->inbox, "MINID", minid };
            node__cmd(n, "inbox trim", 4, xt);
        }
    }
    if (trim)
        n->last_trim = n->now;
}

/* Redis Cluster: each environment's inbox is a key of its own slot, and
 * one XREAD may not span slots: one blocking read per environment, each on
 * its own handle (blocked reads would stall one another on a shared one). */
static void read_inbox_each(struct node *n)
{
    for (int i = 0; i < n->n_envs; i++) {
        struct env *e = &n->envs[i];
        if (!e->inbox_started || n->rbs_reading[i])
            continue;
        if (!n->rbs[i] && !(n->rbs[i] = wp_redis_new(n->loop, n->cfg.redis_host,
                                                     n->cfg.redis_port, "node-inbox")))
            continue;
        const char *argv[] = { "XREAD", "BLOCK", "1000", "STREAMS", e->inbox, e->last_id };
        if (wp_redis_ready(n->rbs[i]) && wp_redis_argv(n->rbs[i], inbox_env_cb, e, 6, argv, NULL) == 0)
            n->rbs_reading[i] = true;
    }
}

void node__read_inbox(struct node *n)
{
    const char *argv[4 + 2 * POOL_MAX_ENVS];
    int argc = 0;

    if (n->stopping || n->n_envs == 0)
        return; /* no environment yet (API ones arrive through the catalog) */
    if (wp_rcl_on()) {
        read_inbox_each(n);
        return;
    }
    if (n->inbox_reading || !wp_redis_ready(n->rb))
        return;
    argv[argc++] = "XREAD";
    argv[argc++] = "BLOCK";
    argv[argc++] = "1000";
    argv[argc++] = "STREAMS";
    int first = argc;
    for (int i = 0; i < n->n_envs; i++)
        if (n->envs[i].inbox_started)
            argv[argc++] = n->envs[i].inbox;
    int streams = argc - first;
    if (streams == 0)
        return;
    for (int i = 0; i < n->n_envs; i++)
        if (n->envs[i].inbox_started)
            argv[argc++] = n->envs[i].last_id;
    if (wp_redis_argv(n->rb, inbox_cb, n, argc, argv, NULL) == 0)
        n->inbox_reading = true;
}
