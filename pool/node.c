/* node.c - warmpool-node: one per machine. Keeps each environment's image
 * (warm tier) and a number of restored idle clones (hot tier), offers the
 * hot ones in Redis, serves warm and cold claims sent to its inbox, and
 * destroys what is released. Laid out like redis: one default libev loop,
 * one cron at 10 Hz, blocking work in helper processes.
 *
 * Children: libev's default loop reaps every child on SIGCHLD, so one
 * catch-all ev_child dispatches exits (sandbox inits, build helpers);
 * snapshot/'s own waitpid calls then see ECHILD, which they accept. */
#define WP_LOG_COMPONENT "node"
#include "pool/pool_int.h"

#include <dirent.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/err.h"
#include "base/hist.h"
#include "base/log.h"
#include "base/redis.h"
#include "base/sentinel.h"
#include "base/timeutil.h"
#include "snapshot/snapshot.h"

enum img_state { IMG_NONE, IMG_BUILDING, IMG_READY, IMG_FAILED };
/* Merging for an environment: off (its template), on, refused (a
 * multi-tenant node), or on by the operator's override on such a node. */
enum ksm_mode { KSM_OFF, KSM_ON, KSM_REFUSED, KSM_OVERRIDE };
static const char *const ksm_names[] = { "off", "on", "refused", "on-override" };
#define MEM_PERIOD_S 2.0 /* how often clones' memory is measured */
enum sb_state { SB_RESTORING, SB_IDLE, SB_LEASED };

struct node;

struct env {
    struct node *n;
    struct pool_env_config cfg;
    struct snap_template *t;
    char image[80];
    enum img_state img;
    pid_t build_pid;
    ev_io build_io;         /* the build helper's progress lines */
    char build_buf[1024];
    size_t build_len;
    double build_retry_at;
    int min_hot, max_hot;   /* live policy, this node */
    int max_total;          /* live policy, all nodes (0: no cap) */
    long long hot_total;    /* idle clones of this env on all nodes, last read */
    double policy_at, shrunk_at;
    bool found_on_disk;     /* the image was there when the node started */
    struct claimq *claims_q; /* warm/cold claims waiting for a restore slot */
    int idle, restoring;    /* hot tier counts */
    char inbox[160];        /* wp:env:{E}:inbox:<node> */
    struct pool_rate claims;   /* claims of this env that reached this node, per s */
    struct pool_ewma refill;   /* seconds a refill takes */
    struct pool_scaler scaler; /* the hot target between min_hot and max_hot */
    int target;                /* hot clones to keep now */
    uint64_t refills;          /* restores done for the hot tier */
    uint64_t shed;             /* warm/cold claims refused as overloaded */
    double refill_at;       /* no refill before this (backoff) */
    double last_refill;     /* a hot clone was restored (KSM scans fast for a while) */
    double backoff;         /* seconds; grows while restores fail */
    int failures;           /* restores failed in a row */
    char last_id[64];       /* last inbox entry handled */
    char seen_id[64];       /* last_id as last written to Redis (POOL__K_SEEN) */
    bool inbox_started;     /* where to start reading is known */
    bool inbox_asking;      /* the persisted position is being read */
    bool api;               /* learnt from the catalog (an API environment) */
    bool retired;           /* withdrawn: no builds, refills or claims; the slot is
                               reused once no sandbox of it is left */
    bool build_failed_line; /* the build helper reported why it failed */
    enum ksm_mode ksm;
    uint64_t image_bytes;   /* memory pages in the image: a new clone before it merges */
    struct pool__env_mem mem; /* last measured (memory.c) */
    int fit;                /* hot clones that fit the node's memory budget */
    int fit_keep;           /* the same with 2% slack: shrink only below this */
};

/* A warm/cold claim waiting for a restore slot. */
struct claimq {
    char chan[128], rid[64], session[128];
    char rkey[33];          /* the claimer's relay key for the lease */
    uint64_t token;
    uint64_t at_ms;
    bool warm_ok;           /* the policy's tiers allow a warm restore */
    struct claimq *next;
};

struct nsb {
    struct node *n;
    struct env *e;
    struct snap_sandbox *sb;        /* NULL while restoring */
    struct snap_restore_job *job;
    pid_t boot_helper;              /* a cold boot's helper while it runs */
    ev_io job_io;
    enum sb_state st;
    bool for_claim;                 /* warm/cold claim: reply when ready */
    char reply_chan[128], rid[64], session[128], tier[8];
    char rkey[33];                  /* the lease's relay key (leased only) */
    uint64_t token;
    double t0;
    double ready_at;                /* restored or booted */
    long scans_at_change;           /* KSM full_scans when its private bytes last moved */
    uint64_t last_private;          /* at the previous measure */
    bool settled;                   /* measured as it will stay (see measure_memory) */
    struct nsb *next;
};

struct node {
    struct ev_loop *loop;
    struct pool_node_config cfg;
    struct snap_ctx *snap;
    struct wp_redis *r;      /* commands */
    struct wp_redis *rb;     /* blocking inbox reads */
    struct pool__relay *relay;
    char relay_addr[80];     /* host:port */
    bool inbox_reading;
    ev_timer cron;
    ev_signal sigterm, sigint;
    ev_child child;
    struct env envs[POOL_MAX_ENVS];
    int n_envs;
    struct nsb *sbs;
    int restores;            /* restores in flight */
    int slots;
    double now;
    double last_beat, last_policy, last_reap, last_reconcile, last_trim;
    bool registered, stopping;
    /* Draining (`warmpool node drain`, or SIGTERM): no claims taken, idle
     * clones destroyed, leased sandboxes kept until released or until the
     * deadline; then the node stops as on SIGINT. */
    bool draining, drain_by_signal, drain_asking;
    double drain_deadline;   /* now_s() clock */
    double last_drain_check;
    uint64_t started_ms;     /* wall clock: older drain requests are stale */
    uint64_t restore_failures; /* since start, all environments (/metrics) */
    struct pool__catalog *catalog; /* environments published in Redis */
    struct pool__orphans *orphans; /* checks for sandboxes of dead owners */
    bool ksm_on;             /* we turned KSM on (some env has "ksm") */
    /* Restore latency by tier (hot refill, warm claim, cold boot), in the
     * buckets of base/hist.h, published as restore_hist:<tier> for
     * /metrics. Since the node started; all environments together. */
    struct {
        uint64_t b[WP_HIST_NB + 1], count;
        double sum;
    } rh[3];
    long ksm_rate;           /* pages_to_scan set now */
    uint64_t budget;         /* memory for clones (hot_memory_bytes) */
    uint64_t used_now;       /* what clones hold now, unmerged ones at image size */
    double last_mem;
    int unsettled;           /* mergeable clones KSM has not scanned twice yet */
    struct pool__ksm_host kh;
    struct pool__worker *worker; /* --worker: this node serves a work queue */
    struct wp_err worker_err;    /* why the worker gave up (the node exits 1) */
};

static double now_s(void)
{
    return (double)wp_now_ns() / 1e9;
}

enum { RH_HOT, RH_WARM, RH_COLD };
static const char *const rh_names[] = { "hot", "warm", "cold" };

static void record_restore(struct node *n, int tier, double seconds)
{
    if (!(seconds >= 0))
        seconds = 0;
    n->rh[tier].b[wp_hist_bucket(seconds)]++;
    n->rh[tier].count++;
    n->rh[tier].sum += seconds;
}

static void fmtkey(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fmtkey(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, cap, fmt, ap);
    va_end(ap);
}

/* Fire-and-forget command; failures are logged. */
static void log_reply(void *ctx, redisReply *reply)
{
    const char *what = ctx;
    if (!reply)
        log_warn("redis: %s: no reply (disconnected)", what);
    else if (reply->type == REDIS_REPLY_ERROR)
        log_warn("redis: %s: %s", what, reply->str);
}

static void cmd(struct node *n, const char *what, int argc, const char **argv)
{
    if (wp_redis_argv(n->r, log_reply, (void *)what, argc, argv, NULL) < 0)
        log_debug("redis not ready: %s dropped", what);
}

/* ---- sandboxes ------------------------------------------------------------ */

static struct nsb *find_sb(struct node *n, const char *id)
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
    fmtkey(k, sizeof(k), POOL__K_SB, e->cfg.name);
    strncat(k, id, sizeof(k) - strlen(k) - 1);
    snprintf(member, sizeof(member), "%s %s", e->cfg.name, id);
    fmtkey(nk, sizeof(nk), POOL__K_NODE_SBS, n->cfg.id);
    const char *del[] = { "DEL", k };
    const char *srem[] = { "SREM", nk, member };
    cmd(n, "forget sandbox", 2, del);
    cmd(n, "forget sandbox", 3, srem);
}

/* Destroy off the loop: a helper process does the blocking teardown. The
 * init is our child (subreaper) and libev reaps it; the helper's own
 * waitpid sees ECHILD. */
static void destroy_sb(struct node *n, struct nsb *s, const char *why)
{
    unlink_sb(n, s);
    if (s->st == SB_IDLE)
        s->e->idle--;
    if (s->sb)
        pool__relay_drop(n->relay, s->sb->id);
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

static void publish_reply(struct node *n, struct nsb *s, int status, const char *msg)
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
    const char *argv[] = { "PUBLISH", s->reply_chan, text };
    cmd(n, "reply", 3, argv);
    free(text);
}

static void sb_ready(struct node *n, struct nsb *s)
{
    struct env *e = s->e;
    char k[256], hot[160], nk[160], member[200], created[32];

    fmtkey(k, sizeof(k), POOL__K_SB, e->cfg.name);
    strncat(k, s->sb->id, sizeof(k) - strlen(k) - 1);
    fmtkey(nk, sizeof(nk), POOL__K_NODE_SBS, n->cfg.id);
    snprintf(member, sizeof(member), "%s %s", e->cfg.name, s->sb->id);
    const char *sadd[] = { "SADD", nk, member };
    cmd(n, "node sandboxes", 3, sadd);
    snprintf(created, sizeof(created), "%llu", (unsigned long long)wp_wall_ms());
    s->ready_at = now_s();
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
        cmd(n, "lease sandbox", 20, hset);
        char stats[160];
        fmtkey(stats, sizeof(stats), POOL__K_STATS, e->cfg.name);
        const char *incr[] = { "HINCRBY", stats, strcmp(s->tier, "warm") == 0 ? "claims_warm" : "claims_cold", "1" };
        cmd(n, "stats", 4, incr);
        s->st = SB_LEASED;
        publish_reply(n, s, 0, NULL);
        log_info("claim served sandbox=%s env=%s tier=%s session=%s ms=%.1f", s->sb->id,
                 e->cfg.name, s->tier, s->session, (now_s() - s->t0) * 1e3);
        return;
    }
    if (n->draining || e->retired) {
        /* A refill that finished after its environment was withdrawn is
         * never offered: a claim could otherwise take a clone of it. */
        destroy_sb(n, s, n->draining ? "node draining" : "environment withdrawn");
        return;
    }
    fmtkey(hot, sizeof(hot), POOL__K_HOT, e->cfg.name);
    const char *argv[] = { k, hot, s->sb->id, n->cfg.id, s->sb->root, created, n->relay_addr };
    if (wp_redis_script(n->r, pool__lua_offer, log_reply, (void *)"offer", 2, 7, argv, NULL) < 0)
        log_warn("offer sandbox=%s: redis not ready", s->sb->id);
    s->st = SB_IDLE;
    e->idle++;
    e->hot_total++; /* until the next LLEN says better */
    log_debug("hot clone ready sandbox=%s env=%s ms=%.1f", s->sb->id, e->cfg.name,
              (now_s() - s->t0) * 1e3);
}

static struct nsb *start_cold_boot(struct node *n, struct env *e, bool for_claim);
static void serve_claims(struct node *n, struct env *e);

/* The image of e goes out of use and is built again. Set aside, not
 * deleted: live clones still have its layer as a lower layer of their
 * overlays. */
static void image_set_aside(struct node *n, struct env *e)
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
    e->refill_at = now_s() + e->backoff;
    log_error("restore env=%s failed (%d in a row, next refill in %.1f s): %s", e->cfg.name,
              e->failures, e->backoff, why);
    if (e->failures >= 3 && e->img == IMG_READY) {
        log_warn("rebuilding image=%s env=%s after %d failed restores", e->image, e->cfg.name,
                 e->failures);
        image_set_aside(n, e);
    }
}

/* A restore helper finished (its fd reached EOF), or its deadline passed
 * (the cron): snap_restore_finish then kills what is left and fails it. */
static void job_done(struct node *n, struct nsb *s)
{
    struct wp_err err;

    ev_io_stop(n->loop, &s->job_io);
    n->restores--;
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
            struct nsb *cold = start_cold_boot(n, e, true);
            if (cold) {
                snprintf(cold->tier, sizeof(cold->tier), "cold");
                snprintf(cold->reply_chan, sizeof(cold->reply_chan), "%s", s->reply_chan);
                snprintf(cold->rid, sizeof(cold->rid), "%s", s->rid);
                snprintf(cold->session, sizeof(cold->session), "%s", s->session);
                cold->token = s->token;
                memcpy(cold->rkey, s->rkey, sizeof(cold->rkey));
            } else {
                publish_reply(n, s, WP_ECRIU, err.msg);
            }
        }
        free(s);
        return;
    }
    s->job = NULL;
    s->e->failures = 0;
    s->e->backoff = 0;
    record_restore(n, s->for_claim ? RH_WARM : RH_HOT, now_s() - s->t0);
    if (!s->for_claim) {
        s->e->last_refill = now_s();
        s->e->refills++;
        pool_ewma_add(&s->e->refill, now_s(), now_s() - s->t0);
    }
    struct env *e = s->e;
    sb_ready(n, s); /* may destroy s (a draining node keeps no new hot clone) */
    serve_claims(n, e); /* a slot is free: queued claims first */
}

static void job_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    job_done(((struct nsb *)w->data)->n, w->data);
}

/* Restores past their deadline (criu hung): fail them, one per pass, as
 * job_done may free s and start a cold boot in its place. */
static void expire_restores(struct node *n)
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

static struct nsb *start_restore(struct node *n, struct env *e, bool for_claim)
{
    struct snap_restore_opts ro = { .lazy = e->cfg.lazy,
                                    .merge = e->ksm == KSM_ON || e->ksm == KSM_OVERRIDE ? 1 : -1 };
    struct nsb *s = calloc(1, sizeof(*s));
    struct wp_err err;

    if (!s)
        return NULL;
    s->n = n;
    s->e = e;
    s->for_claim = for_claim;
    s->t0 = now_s();
    if (snap_restore_start(n->snap, e->image, &ro, &s->job, &err) < 0) {
        free(s);
        if (err.code == WP_ESTATE && e->img == IMG_READY) {
            /* One this node must not use (snap_image_check): build anew. */
            log_warn("image=%s env=%s: %s: rebuilding", e->image, e->cfg.name, err.msg);
            image_set_aside(n, e);
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
            publish_reply(n, s, WP_ECHILD, why);
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
    record_restore(n, RH_COLD, now_s() - s->t0);
    if (!s->for_claim) {
        s->e->failures = 0;
        s->e->backoff = 0;
        s->e->refills++;
        pool_ewma_add(&s->e->refill, now_s(), now_s() - s->t0);
    }
    sb_ready(n, s);
}

/* for_claim: a claimer waits for it; else it refills the hot tier (where
 * criu does not work, the hot tier is made of cold-booted sandboxes). */
static struct nsb *start_cold_boot(struct node *n, struct env *e, bool for_claim)
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
    s->for_claim = for_claim;
    if (!for_claim)
        e->restoring++;
    s->t0 = now_s();
    s->st = SB_RESTORING;
    ev_io_init(&s->job_io, boot_cb, pfd[0], EV_READ);
    s->job_io.data = s;
    ev_io_start(n->loop, &s->job_io);
    s->next = n->sbs;
    n->sbs = s;
    n->restores++;
    return s;
}

/* ---- images ------------------------------------------------------------------ */

/* Progress of a build, for the log and for Redis (`build:<env>` in the
 * node's hash: the last line, then "ready" or "failed: ..."). */
static void build_status(struct node *n, struct env *e, const char *line)
{
    char key[160], field[96];
    fmtkey(key, sizeof(key), POOL__K_NODE, n->cfg.id);
    snprintf(field, sizeof(field), "build:%s", e->cfg.name);
    const char *argv[] = { "HSET", key, field, line };
    cmd(n, "build progress", 4, argv);
    if (e->api)
        pool__catalog_note(n->r, n->cfg.id, e->cfg.name, line);
}

static void build_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct env *e = w->data;
    ssize_t r;
    (void)revents;

    r = read(w->fd, e->build_buf + e->build_len, sizeof(e->build_buf) - 1 - e->build_len);
    if (r <= 0) {
        ev_io_stop(loop, w);
        close(w->fd);
        return;
    }
    e->build_len += (size_t)r;
    char *nl;
    while ((nl = memchr(e->build_buf, '\n', e->build_len)) ||
           e->build_len == sizeof(e->build_buf) - 1) {
        size_t l = nl ? (size_t)(nl - e->build_buf) : e->build_len;
        e->build_buf[l] = '\0';
        log_info("build env=%s: %s", e->cfg.name, e->build_buf);
        if (strncmp(e->build_buf, "failed: ", 8) == 0)
            e->build_failed_line = true;
        build_status(e->n, e, e->build_buf);
        size_t used = nl ? l + 1 : l;
        memmove(e->build_buf, e->build_buf + used, e->build_len - used);
        e->build_len -= used;
    }
}

static void build_progress(void *arg, const char *line)
{
    dprintf(*(int *)arg, "%s\n", line);
}

static void start_build(struct node *n, struct env *e)
{
    int pfd[2];
    pid_t pid;

    e->img = IMG_BUILDING;
    e->build_failed_line = false;
    log_info("building image=%s env=%s", e->image, e->cfg.name);
    if (pipe2(pfd, O_CLOEXEC) < 0) {
        e->img = IMG_FAILED;
        e->build_retry_at = n->now + 10;
        return;
    }
    pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        e->img = IMG_FAILED;
        e->build_retry_at = n->now + 10;
        return;
    }
    if (pid == 0) {
        struct snap_sandbox *sb;
        struct wp_err err;
        int out = pfd[1];
        close(pfd[0]);
        dprintf(out, "booting\n");
        if (snap_boot(n->snap, e->t, NULL, build_progress, &out, &sb, &err) < 0) {
            dprintf(out, "failed: %s\n", err.msg);
            _exit(1);
        }
        dprintf(out, "booted in %.1f ms, checkpointing\n", sb->boot_ms);
        if (snap_checkpoint(n->snap, sb, e->t, e->image, sb->boot_ms, NULL, &err) < 0) {
            dprintf(out, "failed: %s\n", err.msg);
            _exit(1);
        }
        _exit(0);
    }
    close(pfd[1]);
    e->build_len = 0;
    ev_io_init(&e->build_io, build_io_cb, pfd[0], EV_READ);
    e->build_io.data = e;
    ev_io_start(n->loop, &e->build_io);
    e->build_pid = pid;
}

static void image_name(struct env *e)
{
    /* The digest names the image: a changed template builds a new one. */
    char name[sizeof(e->image)];
    snprintf(name, sizeof(name), "%.40s-%.12s", e->cfg.name, e->t->digest);
    memcpy(e->image, name, sizeof(name));
}

/* The image of e's template is on disk already (an earlier run built it). */
static void read_image_bytes(struct node *n, struct env *e);

static void image_on_disk(struct node *n, struct env *e)
{
    char path[700];
    image_name(e);
    snprintf(path, sizeof(path), "%s/images/%s/manifest.json", n->cfg.state_dir, e->image);
    e->found_on_disk = access(path, F_OK) == 0;
    e->img = e->found_on_disk ? IMG_READY : IMG_NONE;
    struct wp_err err;
    if (e->found_on_disk && snap_image_check(n->snap, e->image, &err) < 0) {
        /* Damaged, or made by an older build this node must not restore
         * (no user namespace): built again rather than failing claims. */
        log_warn("image=%s env=%s on disk is not usable: %s: rebuilding", e->image, e->cfg.name,
                 err.msg);
        image_set_aside(n, e);
        e->found_on_disk = false;
    }
    if (e->found_on_disk)
        read_image_bytes(n, e);
}

/* Set up slot e (zeroed or retired and empty) to serve template t (steals). */
static void env_init(struct node *n, struct env *e, const struct pool_env_config *cfg,
                     struct snap_template *t)
{
    snap_template_free(e->t);
    while (e->claims_q) {
        struct claimq *q = e->claims_q;
        e->claims_q = q->next;
        free(q);
    }
    memset(e, 0, sizeof(*e));
    e->n = n;
    e->cfg = *cfg;
    e->t = t;
    snprintf(e->cfg.name, sizeof(e->cfg.name), "%s", t->name);
    e->min_hot = e->cfg.min_hot;
    e->max_hot = e->cfg.max_hot;
    /* 10 s half life: a burst registers within seconds (scale up at
     * once); the scaler's cooldown makes the way down slow. */
    pool_rate_init(&e->claims, 10);
    pool_ewma_init(&e->refill, 30);
    pool_scaler_init(&e->scaler, 30);
    char inbox[sizeof(e->inbox)];
    snprintf(inbox, sizeof(inbox), POOL__K_INBOX "%s", e->cfg.name, n->cfg.id);
    memcpy(e->inbox, inbox, sizeof(inbox));
    /* Where the previous run stopped (read from Redis before the first
     * read), but nothing older than a claim's 30 s: the earlier run's
     * sandboxes are gone, so its claimed/release notes mean nothing. */
    snprintf(e->last_id, sizeof(e->last_id), "%llu-0",
             (unsigned long long)(wp_wall_ms() - POOL__CLAIM_MAX_AGE_MS));
    image_on_disk(n, e);
    e->fit = e->fit_keep = POOL_TARGET_UNBOUNDED; /* until measured */
    e->ksm = e->t->ksm ? KSM_ON : KSM_OFF;
    if (e->t->ksm && n->cfg.multi_tenant && !n->cfg.ksm_multi_tenant) {
        /* Merging across organizations lets one learn, by copy-on-write
         * timing, whether a page with given content exists in another's
         * sandbox: refused unless the operator overrides. Boots (the
         * image build, cold boots) and restores both run unmerged. */
        log_warn("KSM refused for env=%s: this node is multi-tenant (--multi-tenant); merging "
                 "would open a timing side channel between organizations. Its sandboxes run "
                 "unmerged; --ksm-multi-tenant-override merges anyway",
                 e->cfg.name);
        e->t->ksm = false;
        e->ksm = KSM_REFUSED;
    } else if (e->t->ksm && n->cfg.multi_tenant) {
        log_warn("KSM on for env=%s on a multi-tenant node by operator override: organizations "
                 "sharing this node can probe each other's memory contents by copy-on-write "
                 "timing",
                 e->cfg.name);
        e->ksm = KSM_OVERRIDE;
    }
}

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
    publish_reply(n, &tmp, code, msg);
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
static void shed_waiting(struct node *n, struct env *e)
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
static void serve_claims(struct node *n, struct env *e)
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
            s = start_restore(n, e, true);
            if (s)
                snprintf(s->tier, sizeof(s->tier), "warm");
        }
        if (!s) {
            /* No image yet (or restore refused): boot from the template. */
            s = start_cold_boot(n, e, true);
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
        pool_rate_event(&e->claims, now_s(), 1);
    if (strcmp(type, "claimed") == 0 && sbid) {
        struct nsb *s = find_sb(n, sbid);
        if (!s || s->st != SB_IDLE) {
            log_warn("claimed sandbox=%s is not an idle clone here", sbid);
            return;
        }
        s->st = SB_LEASED;
        s->token = token;
        snprintf(s->rkey, sizeof(s->rkey), "%s", field(kv, "rkey") ? field(kv, "rkey") : "");
        snprintf(s->session, sizeof(s->session), "%s", field(kv, "session") ? field(kv, "session") : "");
        e->idle--;
        log_info("claimed sandbox=%s env=%s tier=hot token=%llu", sbid, e->cfg.name,
                 (unsigned long long)token);
        pool__relay_retry(n->relay, sbid);
    } else if (strcmp(type, "release") == 0 && sbid) {
        struct nsb *s = find_sb(n, sbid);
        if (!s)
            return;
        /* Fencing: only the current lease's token releases. */
        if (s->st != SB_LEASED || s->token != token) {
            log_warn("release sandbox=%s refused: stale token %llu (lease %llu)", sbid,
                     (unsigned long long)token, (unsigned long long)s->token);
            return;
        }
        destroy_sb(n, s, "released");
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
        serve_claims(n, e);
    }
}

static void read_inbox(struct node *n);

static void inbox_cb(void *ctx, redisReply *reply)
{
    struct node *n = ctx;

    n->inbox_reading = false;
    if (n->stopping)
        return;
    if (reply && reply->type == REDIS_REPLY_ARRAY) {
        /* [[stream, [[id, [k, v, ...]], ...]], ...] */
        for (size_t i = 0; i < reply->elements; i++) {
            redisReply *st = reply->element[i];
            if (st->type != REDIS_REPLY_ARRAY || st->elements != 2)
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
    } else if (reply && reply->type == REDIS_REPLY_ERROR) {
        /* Not again at once (that would spin): the cron retries. */
        log_warn("inbox read: %s", reply->str);
        return;
    }
    if (reply)
        read_inbox(n);
    /* No reply: the connection dropped; the cron reads again once it is
     * back. */
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
    fmtkey(out, cap, POOL__K_SEEN "%s", e->cfg.name, n->cfg.id);
}

/* Where each inbox is read from: asked once per environment, then the
 * position handled last is written back when it moves (at most once per
 * cron tick), so a restarted node, even after SIGKILL, does not read again
 * what its previous run handled. Inboxes are trimmed of what no one can
 * need any more (claims are dropped after 30 s). */
static void inbox_position(struct node *n)
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
            cmd(n, "inbox position", 5, set);
            snprintf(e->seen_id, sizeof(e->seen_id), "%s", e->last_id);
        }
        if (trim) {
            /* Exact, not "~": it only ever removes a few old entries. */
            const char *xt[] = { "XTRIM", e->inbox, "MINID", minid };
            cmd(n, "inbox trim", 4, xt);
        }
    }
    if (trim)
        n->last_trim = n->now;
}

static void read_inbox(struct node *n)
{
    const char *argv[4 + 2 * POOL_MAX_ENVS];
    int argc = 0;

    if (n->inbox_reading || !wp_redis_ready(n->rb) || n->stopping || n->n_envs == 0)
        return; /* no environment yet (API ones arrive through the catalog) */
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

/* ---- memory ------------------------------------------------------------------ */

/* Memory pages in the image (its manifest's sizes.pages_bytes): what a new
 * clone holds before KSM merges it. 0 when unknown. */
static void read_image_bytes(struct node *n, struct env *e)
{
    char path[700];
    json_t *o, *v;

    snprintf(path, sizeof(path), "%s/images/%s/manifest.json", n->cfg.state_dir, e->image);
    o = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
    v = json_object_get(json_object_get(o, "sizes"), "pages_bytes");
    e->image_bytes = json_is_integer(v) && json_integer_value(v) > 0 &&
                             json_integer_value(v) < (1ll << 40)
                         ? (uint64_t)json_integer_value(v)
                         : 0;
    json_decref(o);
}

static bool merging(const struct env *e)
{
    return e->ksm == KSM_ON || e->ksm == KSM_OVERRIDE;
}

/* Every MEM_PERIOD_S: what each clone holds (memory.c), per environment
 * one shared copy plus private bytes per clone, and from that how many hot
 * clones fit the budget. A clone counts as settled once its private bytes
 * held still between two measures (lazy pages have landed) and, when
 * mergeable, KSM has made two full scans since they last moved (it is
 * merged): before that it counts at its image's size,
 * what it may hold until merged. The estimate for one more clone is the
 * p95 of settled clones' private bytes, or the image's size when none is
 * settled: pessimistic while little is known, as measured as it can be
 * once the pool runs. Cost: a few /proc reads per clone (smaps_rollup
 * walks the page tables: ~0.1 ms for 200 MB). */
static void measure_memory(struct node *n)
{
    uint64_t *priv = NULL, *settled = NULL, used_steady = 0;
    int cnt = 0;

    pool__mem_ksm_host(&n->kh);
    for (struct nsb *s = n->sbs; s; s = s->next)
        cnt++;
    priv = calloc((size_t)cnt + 1, sizeof(*priv));
    settled = calloc((size_t)cnt + 1, sizeof(*settled));
    if (!priv || !settled)
        goto out;
    n->used_now = 0;
    n->unsettled = 0;
    for (int i = 0; i < n->n_envs; i++) {
        struct env *e = &n->envs[i];
        struct pool__env_mem *m = &e->mem;
        int k = 0, ks = 0, restoring = 0;
        uint64_t pending = 0;

        memset(m, 0, sizeof(*m));
        for (struct nsb *s = n->sbs; s; s = s->next) {
            struct pool__clone_mem cm;
            if (s->e != e)
                continue;
            if (!s->sb || s->sb->init_pid <= 0) {
                restoring++;
                continue;
            }
            if (pool__mem_clone(n->snap, s->sb->id, &cm, NULL) < 0)
                continue;
            /* Settled: lazy pages have landed (private bytes held still
             * over a measure) and, when mergeable, KSM made two full scans
             * since they last moved (merging is done, not just begun). */
            bool moved = cm.private_ > s->last_private + (1u << 20) ||
                         cm.private_ + (1u << 20) < s->last_private;
            if (moved)
                s->scans_at_change = n->kh.full_scans;
            s->last_private = cm.private_;
            s->settled = n->now - s->ready_at >= 2 && !moved &&
                         (!merging(e) || (n->kh.full_scans >= 0 && s->scans_at_change >= 0 &&
                                          n->kh.full_scans >= s->scans_at_change + 2));
            m->clones++;
            m->pss += cm.pss;
            m->private_sum += cm.private_;
            m->anon += cm.anon;
            m->merged += cm.merged;
            m->kernel += cm.kernel;
            m->cgroup += cm.cgroup;
            priv[k++] = cm.private_;
            if (s->settled)
                settled[ks++] = cm.private_;
            else {
                n->unsettled += merging(e);
                /* Not merged yet: it may still grow to the image's size. */
                pending += e->image_bytes > cm.private_ ? e->image_bytes - cm.private_ : 0;
            }
        }
        m->shared = m->pss > m->private_sum ? m->pss - m->private_sum : 0;
        struct pool__env_mem tmp;
        pool__mem_summary(settled, ks, &tmp);
        m->per_clone = ks ? tmp.p95 : e->image_bytes;
        pool__mem_summary(priv, k, m);
        n->used_now += m->pss + pending + (uint64_t)restoring * e->image_bytes;
        used_steady += m->pss + (uint64_t)restoring * m->per_clone;
    }
    for (int i = 0; i < n->n_envs; i++) {
        struct env *e = &n->envs[i];
        int hot = e->idle + e->restoring;
        e->fit = pool_mem_fit(n->budget, used_steady, e->mem.per_clone, hot);
        e->fit_keep = pool_mem_fit(n->budget + n->budget / 50, used_steady, e->mem.per_clone, hot);
        e->mem.fit = e->fit;
        e->mem.asked = e->target;
        pool__mem_publish(n->r, n->cfg.id, e->cfg.name, ksm_names[e->ksm], &e->mem,
                          n->cfg.heartbeat_ttl_s * 2 + 10);
        if (e->fit < e->target && e->fit < POOL_TARGET_UNBOUNDED)
            log_debug("env=%s hot target %d capped to %d by memory (budget %llu MB, used %llu MB)",
                      e->cfg.name, e->target, e->fit, (unsigned long long)(n->budget >> 20),
                      (unsigned long long)(used_steady >> 20));
    }
out:
    free(priv);
    free(settled);
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
        e->policy_at = now_s();
    }
}

/* Draining, for pool status: node hash field "draining" = "<deadline ms>
 * <leased sandboxes left>"; removed when not draining. */
static void publish_draining(struct node *n)
{
    char key[160], v[64];
    int leased = 0;
    double left = n->drain_deadline - now_s();

    fmtkey(key, sizeof(key), POOL__K_NODE, n->cfg.id);
    for (struct nsb *s = n->sbs; s; s = s->next)
        leased += s->st == SB_LEASED;
    snprintf(v, sizeof(v), "%llu %d", (unsigned long long)(wp_wall_ms() + (uint64_t)(left > 0 ? left * 1e3 : 0)),
             leased);
    const char *hs[] = { "HSET", key, "draining", v };
    const char *hd[] = { "HDEL", key, "draining" };
    if (n->draining)
        cmd(n, "node draining", 4, hs);
    else
        cmd(n, "node draining", 3, hd);
}

static void register_node(struct node *n)
{
    char key[160], alive[160], ttl[32], cap[16], mem[32], started[32];
    struct sysinfo si;

    sysinfo(&si);
    fmtkey(key, sizeof(key), POOL__K_NODE, n->cfg.id);
    fmtkey(alive, sizeof(alive), POOL__K_ALIVE, n->cfg.id);
    snprintf(ttl, sizeof(ttl), "%d", (int)(n->cfg.heartbeat_ttl_s * 1000));
    snprintf(cap, sizeof(cap), "%d", n->slots);
    snprintf(mem, sizeof(mem), "%llu", (unsigned long long)si.freeram * si.mem_unit);
    snprintf(started, sizeof(started), "%llu", (unsigned long long)wp_wall_ms());
    const char *set[] = { "SET", alive, "1", "PX", ttl };
    cmd(n, "heartbeat", 5, set);
    const struct snap_probe *cp = snap_ctx_criu(n->snap);
    const char *hset[] = { "HSET", key, "capacity", cap, "mem_free", mem, "heartbeat_ms", started,
                           "version", "warmpool-node 0.1", "relay", n->relay_addr,
                           "criu_mode", snap_criu_mode_name(cp->mode),
                           "criu_lazy", cp->lazy_ok ? "yes" : "no",
                           "criu_source", cp->forced ? "configured" : cp->cached ? "cached" : "probed",
                           "criu_why", cp->why };
    cmd(n, "node", 20, hset);
    /* Every beat, not once: after a Redis restart that lost writes the
     * node reappears by itself. */
    const char *sadd[] = { "SADD", POOL__K_NODES, n->cfg.id };
    cmd(n, "register", 3, sadd);
    for (int i = 0; i < n->n_envs; i++) {
        struct env *e = &n->envs[i];
        char nodes[160], pol[160], mn[16], mx[16];
        if (e->retired)
            continue;
        fmtkey(nodes, sizeof(nodes), POOL__K_NODES_OF, e->cfg.name);
        fmtkey(pol, sizeof(pol), POOL__K_POLICY, e->cfg.name);
        snprintf(mn, sizeof(mn), "%d", e->cfg.min_hot);
        snprintf(mx, sizeof(mx), "%d", e->cfg.max_hot);
        const char *s2[] = { "SADD", nodes, n->cfg.id };
        /* This node's start-up values, written once when it registers and
         * only where the operator has set nothing for every node: an
         * operator's `pool set` (which drops per-node fields) must not be
         * undone by the next heartbeat or by a restart. Without a field the
         * node uses its start-up value anyway (policy_cb). API environments
         * have none: their policy comes with them. */
        static const char lua_startup[] =
            "for i = 1, 2 do\n"
            "  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then\n"
            "    redis.call('HSETNX', KEYS[1], ARGV[i] .. ':' .. ARGV[5], ARGV[i + 2])\n"
            "  end\n"
            "end\n"
            "return 1\n";
        const char *p1[] = { "EVAL", lua_startup, "1", pol, "min_hot", "max_hot", mn, mx, n->cfg.id };
        cmd(n, "env nodes", 3, s2);
        if (!e->api && !n->registered)
            cmd(n, "policy", 9, p1);
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
        const char *h[] = { "HSET", key, f1, v1, f2, v2, f3, v3, f4, v4, f5, ksm_names[e->ksm],
                            f6, v6, f7, v7, f8, v8 };
        cmd(n, "node stats", 18, h);
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
        snprintf(hf[t], sizeof(hf[t]), "restore_hist:%s", rh_names[t]);
    }
    const char *hh[] = { "HSET", key, "hist_le", WP_HIST_LE_TEXT, hf[0], hv[0], hf[1], hv[1],
                         hf[2], hv[2] };
    cmd(n, "restore histograms", 10, hh);
    {
        char b[32], u[32], ps[32], pg[32], fs[32], cpu[32], rf[32];
        snprintf(rf, sizeof(rf), "%llu", (unsigned long long)n->restore_failures);
        const char *hrf[] = { "HSET", key, "restore_failures", rf };
        cmd(n, "node restore failures", 4, hrf);
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
        cmd(n, "node memory", n->kh.ksmd_found ? 20 : 18, h);
    }
    {
        /* What the orphan checks could not remove, for pool status. */
        struct pool__orphans_text ot;
        pool__orphans_text(n->orphans, &ot);
        const char *h[] = { "HSET", key, "orphans", ot.count, "orphans_why", ot.why,
                            "orphans_cleaned", ot.cleaned, "orphans_checked_ms", ot.checked_ms };
        cmd(n, "node orphans", 10, h);
    }
    if (n->draining || !n->registered)
        publish_draining(n);
    if (!n->registered) {
        log_info("registered node=%s envs=%d slots=%d", n->cfg.id, n->n_envs, n->slots);
        for (int i = 0; i < n->n_envs; i++)
            if (n->envs[i].found_on_disk)
                build_status(n, &n->envs[i], "ready (image on disk)");
    }
    n->registered = true;
}

/* Mark every sandbox of a node whose heartbeat expired as lost, drop its
 * hot entries, forget the node. Idempotent: several reapers may race.
 * Single-instance Redis only (it spans environments' hash slots). */
static const char lua_reap[] =
    "if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end\n"
    "local n = 0\n"
    "for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
    "  local env, id = string.match(m, '^(%S+) (%S+)$')\n"
    "  if env then\n"
    "    local k = 'wp:env:{' .. env .. '}:sb:' .. id\n"
    "    if redis.call('HGET', k, 'state') == 'idle' then\n"
    "      redis.call('LREM', 'wp:env:{' .. env .. '}:hot', 0, id)\n"
    "      redis.call('DEL', k)\n"
    "    elseif redis.call('EXISTS', k) == 1 then\n"
    "      redis.call('HSET', k, 'state', 'lost')\n"
    "      redis.call('PUBLISH', 'wp:lost:' .. env, id)\n"
    "    end\n"
    "    redis.call('SREM', 'wp:env:{' .. env .. '}:nodes', ARGV[1])\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "redis.call('DEL', KEYS[1], 'wp:node:' .. ARGV[1])\n"
    "redis.call('SREM', 'wp:nodes', ARGV[1])\n"
    "return n\n";

/* The node's view of what exists wins (after a Redis restart, a lost
 * write, a crash between two commands): every local sandbox is written
 * back as the node knows it, unless Redis records a claim the node has not
 * read from its inbox yet; entries naming this node that it does not have
 * are dropped (idle) or marked lost (leased); the fencing counter never
 * goes below a token the node has seen. Leases whose holder stopped
 * renewing are returned so the node destroys them.
 * KEYS[1] node's sandbox set. ARGV[1] node, ARGV[2] now_ms, ARGV[3]
 * lease_ms, ARGV[4] relay address, then one record per local sandbox:
 * "env<TAB>id<TAB>state<TAB>token<TAB>session<TAB>root". */
static const char lua_reconcile[] =
    "local have, expired = {}, {}\n"
    "for i = 5, #ARGV do\n"
    "  local env, id, st, tok, sess, root =\n"
    "    string.match(ARGV[i], '^([^\t]+)\t([^\t]+)\t([^\t]+)\t([^\t]*)\t([^\t]*)\t(.*)$')\n"
    "  if env then\n"
    "    local m = env .. ' ' .. id\n"
    "    have[m] = true\n"
    "    local k = 'wp:env:{' .. env .. '}:sb:' .. id\n"
    "    local hot = 'wp:env:{' .. env .. '}:hot'\n"
    "    local cur = redis.call('HGET', k, 'state')\n"
    "    if st == 'idle' and cur ~= 'leased' then\n"
    "      redis.call('HSET', k, 'node', ARGV[1], 'addr', root, 'state', 'idle', 'relay', ARGV[4])\n"
    "      if not redis.call('LPOS', hot, id) then redis.call('RPUSH', hot, id) end\n"
    "    elseif st == 'leased' then\n"
    "      local until_ = tonumber(redis.call('HGET', k, 'lease_until') or '0')\n"
    "      if cur == 'leased' and until_ > 0 and until_ < tonumber(ARGV[2]) then\n"
    "        expired[#expired + 1] = m\n"
    "      else\n"
    "        if until_ == 0 then until_ = tonumber(ARGV[2]) + tonumber(ARGV[3]) end\n"
    "        redis.call('HSET', k, 'node', ARGV[1], 'addr', root, 'state', 'leased',\n"
    "                   'token', tok, 'session', sess, 'lease_until', until_, 'relay', ARGV[4])\n"
    "      end\n"
    "      local f = 'wp:env:{' .. env .. '}:fence'\n"
    "      if tonumber(redis.call('GET', f) or '0') < tonumber(tok) then redis.call('SET', f, tok) end\n"
    "    end\n"
    "    redis.call('SADD', KEYS[1], m)\n"
    "  end\n"
    "end\n"
    "for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
    "  if not have[m] then\n"
    "    local env, id = string.match(m, '^(%S+) (%S+)$')\n"
    "    if env then\n"
    "      local k = 'wp:env:{' .. env .. '}:sb:' .. id\n"
    "      local st = redis.call('HGET', k, 'state')\n"
    "      if st == 'idle' or st == 'released' then\n"
    "        redis.call('LREM', 'wp:env:{' .. env .. '}:hot', 0, id)\n"
    "        redis.call('DEL', k)\n"
    "      elseif st == 'leased' then\n"
    "        redis.call('HSET', k, 'state', 'lost')\n"
    "        redis.call('PUBLISH', 'wp:lost:' .. env, id)\n"
    "      end\n"
    "    end\n"
    "    redis.call('SREM', KEYS[1], m)\n"
    "  end\n"
    "end\n"
    "return expired\n";

static void reconcile_cb(void *ctx, redisReply *reply)
{
    struct node *n = ctx;

    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        if (reply && reply->type == REDIS_REPLY_ERROR)
            log_warn("reconcile: %s", reply->str);
        return;
    }
    for (size_t i = 0; i < reply->elements; i++) {
        char env[128], id[128];
        if (reply->element[i]->type != REDIS_REPLY_STRING ||
            sscanf(reply->element[i]->str, "%127s %127s", env, id) != 2)
            continue;
        struct nsb *s = find_sb(n, id);
        if (s && s->st == SB_LEASED)
            destroy_sb(n, s, "lease expired (holder stopped renewing)");
    }
}

static void reconcile(struct node *n)
{
    const char **argv;
    char **recs;
    int cnt = 0, argc = 0;
    char sbs[160], now[32], lease[32];

    for (struct nsb *s = n->sbs; s; s = s->next)
        cnt += s->sb && s->st != SB_RESTORING;
    argv = calloc((size_t)cnt + 5, sizeof(*argv));
    recs = calloc((size_t)cnt + 1, sizeof(*recs));
    if (!argv || !recs)
        goto out;
    fmtkey(sbs, sizeof(sbs), POOL__K_NODE_SBS, n->cfg.id);
    snprintf(now, sizeof(now), "%llu", (unsigned long long)wp_wall_ms());
    snprintf(lease, sizeof(lease), "%.0f", n->cfg.lease_ms);
    argv[argc++] = sbs;
    argv[argc++] = n->cfg.id;
    argv[argc++] = now;
    argv[argc++] = lease;
    argv[argc++] = n->relay_addr;
    int r = 0;
    for (struct nsb *s = n->sbs; s; s = s->next) {
        if (!s->sb || s->st == SB_RESTORING)
            continue;
        if (asprintf(&recs[r], "%s\t%s\t%s\t%llu\t%s\t%s", s->e->cfg.name, s->sb->id,
                     s->st == SB_IDLE ? "idle" : "leased", (unsigned long long)s->token,
                     s->session, s->sb->root) < 0) {
            recs[r] = NULL;
            goto out;
        }
        argv[argc++] = recs[r++];
    }
    wp_redis_script(n->r, lua_reconcile, reconcile_cb, n, 1, argc, argv, NULL);
out:
    for (int i = 0; recs && recs[i]; i++)
        free(recs[i]);
    free(recs);
    free(argv);
}

/* The relay's check: a current lease here with this token? */
static int relay_lookup(void *ctx, const char *env, const char *sandbox, unsigned long long token,
                        const char *rkey, char *root, size_t cap)
{
    struct node *n = ctx;
    struct nsb *s = find_sb(n, sandbox);

    if (!s || strcmp(s->e->cfg.name, env) != 0 || !s->sb || s->sb->init_pid <= 0)
        return WP_ENOTFOUND;
    if (s->st == SB_IDLE)
        return WP_ESTATE; /* claimed in Redis, our inbox not read yet */
    if (s->st != SB_LEASED)
        return WP_ENOTFOUND;
    /* No key recorded (a claimer that sent none): nobody gets in. */
    if (s->token != token || strlen(s->rkey) != 32 || strlen(rkey) != 32 ||
        CRYPTO_memcmp(s->rkey, rkey, 32) != 0)
        return WP_ESTALE;
    snprintf(root, cap, "/proc/%d/root", (int)s->sb->init_pid);
    return 0;
}

static void reap_node(struct node *n, const char *other)
{
    char sbs[160], alive[160];
    fmtkey(sbs, sizeof(sbs), POOL__K_NODE_SBS, other);
    fmtkey(alive, sizeof(alive), POOL__K_ALIVE, other);
    const char *argv[] = { sbs, alive, other };
    wp_redis_script(n->r, lua_reap, log_reply, (void *)"reap", 2, 3, argv, NULL);
}

static void nodes_cb(void *ctx, redisReply *reply)
{
    struct node *n = ctx;
    if (!reply || reply->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < reply->elements; i++)
        if (reply->element[i]->type == REDIS_REPLY_STRING &&
            strcmp(reply->element[i]->str, n->cfg.id) != 0)
            reap_node(n, reply->element[i]->str);
}

/* Re-check for sandboxes of dead owners (orphans.c) in a helper. What the
 * node holds, and what its helpers (alive, or exited but not yet handled)
 * are making, is in use: the lists say so. */
static void check_orphans(struct node *n)
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

static void drop_idle(struct node *n, struct env *e, bool stale_only, const char *why);
static void drain_tick(struct node *n);
static void drain_cb(void *ctx, redisReply *reply);

static void cron_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct node *n = w->data;
    (void)loop;
    (void)revents;

    n->now = now_s();
    if (n->stopping)
        return;
    if (wp_redis_ready(n->r) && n->now - n->last_beat >= n->cfg.heartbeat_ttl_s / 5) {
        register_node(n);
        n->last_beat = n->now;
    }
    if (wp_redis_ready(n->r) && n->now - n->last_policy >= 1) {
        for (int i = 0; i < n->n_envs; i++) {
            char pol[160];
            fmtkey(pol, sizeof(pol), POOL__K_POLICY, n->envs[i].cfg.name);
            char mn[96], mx[96];
            snprintf(mn, sizeof(mn), "min_hot:%s", n->cfg.id);
            snprintf(mx, sizeof(mx), "max_hot:%s", n->cfg.id);
            const char *argv[] = { "HMGET", pol, "min_hot", "max_hot", mn, mx, "max_hot_total",
                                   "api_min_hot", "api_max_hot" };
            wp_redis_argv(n->r, policy_cb, &n->envs[i], 9, argv, NULL);
            char hot[160];
            fmtkey(hot, sizeof(hot), POOL__K_HOT, n->envs[i].cfg.name);
            const char *llen[] = { "LLEN", hot };
            wp_redis_argv(n->r, hot_total_cb, &n->envs[i], 2, llen, NULL);
        }
        n->last_policy = n->now;
    }
    if (wp_redis_ready(n->r) && !n->drain_asking && n->now - n->last_drain_check >= 1) {
        char key[160];
        fmtkey(key, sizeof(key), POOL__K_DRAIN, n->cfg.id);
        const char *get[] = { "GET", key };
        if (wp_redis_argv(n->r, drain_cb, n, 2, get, NULL) == 0)
            n->drain_asking = true;
        n->last_drain_check = n->now;
    }
    if (wp_redis_ready(n->r) && n->registered && n->now - n->last_reconcile >= 1) {
        reconcile(n);
        n->last_reconcile = n->now;
    }
    if (wp_redis_ready(n->r) && n->now - n->last_reap >= n->cfg.heartbeat_ttl_s / 2) {
        const char *argv[] = { "SMEMBERS", POOL__K_NODES };
        wp_redis_argv(n->r, nodes_cb, n, 2, argv, NULL);
        n->last_reap = n->now;
    }
    if (n->catalog)
        pool__catalog_tick(n->catalog, n->now);
    check_orphans(n);
    inbox_position(n);
    read_inbox(n);
    if (n->now - n->last_mem >= MEM_PERIOD_S) {
        measure_memory(n);
        n->last_mem = n->now;
    }
    if (n->ksm_on) {
        /* Fast right after refills and until KSM has scanned the new clones
         * twice (they are merged then), slow when steady. */
        bool fresh = n->unsettled > 0;
        for (int i = 0; i < n->n_envs; i++)
            fresh |= merging(&n->envs[i]) && n->now - n->envs[i].last_refill < 5;
        long want = fresh ? n->cfg.ksm_fast_pages : n->cfg.ksm_slow_pages;
        if (want != n->ksm_rate && pool__ksm_scan_rate(want) == 0)
            n->ksm_rate = want;
    }
    expire_restores(n);
    if (n->draining) {
        drain_tick(n);
        return;
    }
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
            start_build(n, e);
        shed_waiting(n, e);
        serve_claims(n, e);
        if ((e->img != IMG_READY && !criu_off) || !n->registered)
            continue;
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
            if (!(criu_off ? start_cold_boot(n, e, false) : start_restore(n, e, false)))
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
            fmtkey(hot, sizeof(hot), POOL__K_HOT, e->cfg.name);
            const char *lrem[] = { "LREM", hot, "0", s->sb->id };
            cmd(n, "shrink", 4, lrem);
            destroy_sb(n, s, "pool shrunk");
        }
    }
}

/* ---- environments learnt at run time (catalog.c) ---------------------- */

static struct env *find_env(struct node *n, const char *name)
{
    for (int i = 0; i < n->n_envs; i++)
        if (strcmp(n->envs[i].cfg.name, name) == 0)
            return &n->envs[i];
    return NULL;
}

static int count_sbs(struct node *n, struct env *e)
{
    int c = 0;
    for (struct nsb *s = n->sbs; s; s = s->next)
        c += s->e == e;
    return c;
}

/* Destroy e's idle clones (all, or only those of another image). */
static void drop_idle(struct node *n, struct env *e, bool stale_only, const char *why)
{
    char hot[160];
    fmtkey(hot, sizeof(hot), POOL__K_HOT, e->cfg.name);
    for (struct nsb *s = n->sbs, *next; s; s = next) {
        next = s->next;
        if (s->e != e || s->st != SB_IDLE || (stale_only && strcmp(s->sb->image, e->image) == 0))
            continue;
        const char *lrem[] = { "LREM", hot, "0", s->sb->id };
        cmd(n, "drop idle", 4, lrem);
        destroy_sb(n, s, why);
    }
}

/* Delete env's images but keep (may be ""), in a helper process: removing
 * trees blocks. An image clones still use is refused by snapshot/; the
 * helper tries for 10 s, then it stays until the environment is withdrawn. */
static void delete_images(struct node *n, const char *env, const char *keep)
{
    char dir[600];
    size_t el = strlen(env);
    pid_t pid = fork();
    if (pid != 0)
        return; /* libev reaps the helper; a fork failure only leaves disk used */
    snprintf(dir, sizeof(dir), "%s/images", n->cfg.state_dir);
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        /* Exactly <env>-<12 hex>: not set-aside (.stale-) or partial ones. */
        if (strncmp(de->d_name, env, el) != 0 || de->d_name[el] != '-' ||
            strlen(de->d_name + el + 1) != 12 || strspn(de->d_name + el + 1, "0123456789abcdef") != 12 ||
            strcmp(de->d_name, keep) == 0)
            continue;
        /* Idle clones being destroyed right now release it: their destroy
         * helpers run beside this one, and a loaded machine can take tens
         * of seconds over them (10 s was seen to be too short); a leased
         * clone keeps it until the environment goes. */
        struct wp_err err;
        int rc = 0;
        for (int i = 0; i < 600 && (rc = snap_image_delete(n->snap, de->d_name, &err)) == WP_ESTATE; i++)
            usleep(200 * 1000);
        if (rc < 0)
            log_info("image=%s kept: %s", de->d_name, err.msg);
        else
            log_info("image=%s deleted", de->d_name);
    }
    if (d)
        closedir(d);
    _exit(0);
}

static int env_put(void *ctx, const char *name, struct snap_template *t, struct wp_err *err)
{
    struct node *n = ctx;
    struct env *e = find_env(n, name);

    if (e && !e->api) {
        snap_template_free(t);
        return wp_err_set(err, WP_EEXISTS, "%s is served from this node's configuration", name);
    }
    if (e && !e->retired) {
        /* A new template: swap it once nothing is being made from the
         * old one (asked again next round). */
        if (e->img == IMG_BUILDING || e->restoring > 0) {
            snap_template_free(t);
            return WP_ESTATE;
        }
        snap_template_free(e->t);
        e->t = t;
        char old[sizeof(e->image)];
        memcpy(old, e->image, sizeof(old));
        image_on_disk(n, e);
        e->failures = 0;
        e->backoff = 0;
        e->refill_at = 0;
        if (strcmp(old, e->image) != 0) {
            log_info("env=%s template changed: image %s -> %s", name, old, e->image);
            drop_idle(n, e, true, "template changed");
            delete_images(n, name, e->image);
        }
        return 0;
    }
    if (e && count_sbs(n, e) > 0) {
        snap_template_free(t);
        return WP_ESTATE; /* withdrawn and back: once the old clones are gone */
    }
    if (!e) {
        /* A free slot: retired and empty, else a new one. */
        for (int i = 0; i < n->n_envs && !e; i++)
            if (n->envs[i].retired && count_sbs(n, &n->envs[i]) == 0)
                e = &n->envs[i];
        if (!e && n->n_envs < POOL_MAX_ENVS)
            e = &n->envs[n->n_envs++];
    }
    if (!e) {
        snap_template_free(t);
        return wp_err_set(err, WP_ETOOBIG, "node full: at most %d environments", POOL_MAX_ENVS);
    }
    /* Policy until the first refresh (within a second): nothing hot. */
    struct pool_env_config c = { .min_hot = 0, .max_hot = 0, .lazy = true };
    env_init(n, e, &c, t);
    e->api = true;
    if (e->found_on_disk)
        build_status(n, e, "ready (image on disk)");
    return 0;
}

static int env_retire(void *ctx, const char *name)
{
    struct node *n = ctx;
    struct env *e = find_env(n, name);
    char nodes[160];

    if (!e || !e->api)
        return 0;
    if (!e->retired) {
        log_info("env=%s withdrawn: no longer served here", name);
        e->retired = true;
        fmtkey(nodes, sizeof(nodes), POOL__K_NODES_OF, name);
        const char *srem[] = { "SREM", nodes, n->cfg.id };
        cmd(n, "env nodes", 3, srem);
        char key[160], f[9][96];
        static const char *const fields[] = { "build", "target", "claims_per_s", "refill_ms",
                                              "refills", "ksm", "claims_waiting",
                                              "claim_wait_ms", "claims_shed" };
        fmtkey(key, sizeof(key), POOL__K_NODE, n->cfg.id);
        const char *hdel[11] = { "HDEL", key };
        for (int i = 0; i < 9; i++) {
            snprintf(f[i], sizeof(f[i]), "%s:%s", fields[i], name);
            hdel[2 + i] = f[i];
        }
        cmd(n, "node fields", 11, hdel);
        serve_claims(n, e); /* queued claims are answered: not here */
    }
    /* Idle clones go now (also those a refill finished since); leased
     * ones stay with their holders until released. */
    drop_idle(n, e, false, "environment withdrawn");
    int left = count_sbs(n, e);
    if (left == 0 && e->build_pid == 0 && e->img != IMG_NONE) {
        /* Nothing restored from it is left: its images go too. */
        e->img = IMG_NONE;
        delete_images(n, name, "");
    }
    return left > 0 || e->build_pid > 0;
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
                read_image_bytes(n, e);
            /* The helper's own "failed: why" line says more than we can. */
            if (ok || !e->build_failed_line)
                build_status(n, e, ok ? "ready" : "failed (see the node's log)");
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
            destroy_sb(n, s, "init exited");
            return;
        }
    }
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
static void node_stop(struct node *n)
{
    struct ev_loop *loop = n->loop;
    char alive[160], sbs[160];

    if (n->stopping)
        return;
    pool__worker_stop(n->worker);
    log_info("stopping node=%s", n->cfg.id);
    n->stopping = true;
    fmtkey(alive, sizeof(alive), POOL__K_ALIVE, n->cfg.id);
    fmtkey(sbs, sizeof(sbs), POOL__K_NODE_SBS, n->cfg.id);
    const char *del[] = { "DEL", alive };
    const char *argv[] = { sbs, alive, n->cfg.id };
    if (wp_redis_ready(n->r)) {
        inbox_position(n);
        cmd(n, "bye", 2, del);
        for (int i = 0; i < n->n_envs; i++) {
            char mk[200];
            fmtkey(mk, sizeof(mk), POOL__K_MEM "%s", n->envs[i].cfg.name, n->cfg.id);
            const char *dm[] = { "DEL", mk };
            cmd(n, "bye", 2, dm);
        }
        if (wp_redis_script(n->r, lua_reap, bye_cb, n, 2, 3, argv, NULL) == 0) {
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
    fmtkey(out, cap, POOL__K_DRAIN, n->cfg.id);
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
    double left = deadline - now_s();
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
    cmd(n, "drain", 5, set);
    if (n->draining) {
        log_info("drain deadline now in %.0f s (%d leased sandboxes left)", left, leased);
        publish_draining(n);
        return;
    }
    n->draining = true;
    pool__worker_stop(n->worker);
    log_info("draining node=%s: no new claims, idle clones go, %d leased sandboxes kept until "
             "released (deadline in %.0f s)", n->cfg.id, leased, left);
    for (int i = 0; i < n->n_envs; i++) {
        serve_claims(n, &n->envs[i]);
        drop_idle(n, &n->envs[i], false, "node draining");
    }
    publish_draining(n);
}

/* GET of the drain key: "<deadline ms> <set ms>". A request set before this
 * run started was for the run that drained (or was killed): deleted. */
static void drain_cb(void *ctx, redisReply *reply)
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
            cmd(n, "stale drain", 2, del);
            log_info("drain request of an earlier run deleted");
        }
        return;
    }
    double deadline = now_s() + ((double)dl - (double)wp_wall_ms()) / 1e3;
    drain_start(n, deadline, false);
}

/* Each cron tick while draining: done once no sandbox is leased (nor being
 * made for a claimer), or at the deadline (what is left becomes lost, as
 * on an immediate stop). */
static void drain_tick(struct node *n)
{
    char key[160];
    int busy, leased = count_leased(n, &busy);

    for (int i = 0; i < n->n_envs; i++) {
        serve_claims(n, &n->envs[i]);
        drop_idle(n, &n->envs[i], false, "node draining");
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
    cmd(n, "drained", 2, del);
    node_stop(n);
}

/* SIGTERM drains for --drain-timeout (0: stops at once); a second SIGTERM,
 * or SIGINT, stops at once. */
static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    struct node *n = w->data;
    (void)loop;
    (void)revents;

    if (n->stopping)
        return;
    if (w->signum == SIGTERM && n->cfg.drain_timeout_s > 0 && !n->drain_by_signal &&
        wp_redis_ready(n->r)) {
        drain_start(n, now_s() + n->cfg.drain_timeout_s, true);
        return;
    }
    node_stop(n);
}

static void worker_fatal(void *ctx, const struct wp_err *err)
{
    struct node *n = ctx;
    n->worker_err = *err;
    node_stop(n);
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
    if ((cfg->redis_sentinels[0] || cfg->redis_master[0]) &&
        (rc = wp_sentinel_set(cfg->redis_sentinels, cfg->redis_master, err)) < 0)
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
    /* Sandboxes of an earlier run of this node are orphans now (checked
     * again from the cron: see orphans.c). */
    if ((rc = pool__orphans_new(n->loop, now_s(), &n->orphans, err)) < 0)
        goto out;
    rc = pool__orphans_check_now(n->orphans, n->snap, NULL);
    if (rc > 0)
        log_info("removed %d sandboxes left by an earlier run", rc);
    for (int i = 0; i < cfg->n_envs; i++) {
        struct env *e = &n->envs[n->n_envs];
        struct snap_template *t;
        if ((rc = snap_template_load(cfg->envs[i].template_path, &t, err)) < 0)
            goto out;
        env_init(n, e, &cfg->envs[i], t);
        n->n_envs++;
    }
    for (int i = 0; i < n->n_envs && !n->ksm_on; i++) {
        if (!merging(&n->envs[i]))
            continue;
        if ((rc = pool__ksm_enable(cfg->state_dir, cfg->ksm_slow_pages, cfg->ksm_sleep_ms, err)) < 0)
            goto out;
        n->ksm_on = true;
        n->ksm_rate = cfg->ksm_slow_pages;
        log_info("KSM on for env=%s (pages_to_scan %ld..%ld, sleep %ld ms)", n->envs[i].cfg.name,
                 cfg->ksm_slow_pages, cfg->ksm_fast_pages, cfg->ksm_sleep_ms);
    }
    int port = 0;
    if ((rc = pool__relay_start(n->loop, cfg->listen_host, cfg->listen_port, relay_lookup, n,
                                &n->relay, &port, err)) < 0)
        goto out;
    snprintf(n->relay_addr, sizeof(n->relay_addr), "%s:%d", cfg->listen_host, port);
    n->r = wp_redis_new(n->loop, cfg->redis_host, cfg->redis_port, "node");
    n->rb = wp_redis_new(n->loop, cfg->redis_host, cfg->redis_port, "node-inbox");
    if (!n->r || !n->rb) {
        rc = wp_err_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    if (cfg->api_envs) {
        struct pool__catalog_ops ops = { .ctx = n, .put = env_put, .retire = env_retire };
        if ((rc = pool__catalog_new(n->r, cfg->id, &ops, &n->catalog, err)) < 0)
            goto out;
    }
    ev_timer_init(&n->cron, cron_cb, 0.05, 0.1);
    n->cron.data = n;
    ev_timer_start(n->loop, &n->cron);
    ev_signal_init(&n->sigterm, signal_cb, SIGTERM);
    ev_signal_init(&n->sigint, signal_cb, SIGINT);
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
    log_info("node=%s state=%s redis=%s:%d relay=%s hot_memory_mb=%llu%s", cfg->id, cfg->state_dir,
             cfg->redis_host, cfg->redis_port, n->relay_addr, (unsigned long long)(n->budget >> 20),
             cfg->multi_tenant ? " multi-tenant" : "");
    ev_run(n->loop, 0);

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
    pool__relay_stop(n->relay);
    ev_timer_stop(n->loop, &n->cron);
    ev_signal_stop(n->loop, &n->sigterm);
    ev_signal_stop(n->loop, &n->sigint);
    ev_child_stop(n->loop, &n->child);
    pool__catalog_free(n->catalog);
    wp_redis_free(n->r);
    wp_redis_free(n->rb);
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
