/* node_int.h - private to the node daemon (node*.c): its structs and the
 * functions its files share. Nothing outside pool/node*.c includes this. */
#ifndef WP_POOL_NODE_INT_H
#define WP_POOL_NODE_INT_H

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
#include "base/timeutil.h"
#include "snapshot/snapshot.h"

enum img_state { IMG_NONE, IMG_BUILDING, IMG_READY, IMG_FAILED };
/* Merging for an environment: off (its template), on, refused (a
 * multi-tenant node), or on by the operator's override on such a node. */
enum ksm_mode { KSM_OFF, KSM_ON, KSM_REFUSED, KSM_OVERRIDE };
extern const char *const node__ksm_names[]; /* by enum ksm_mode */
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
    int hands_fd;                   /* leased hot: its hands, connected ahead of the
                                       claimer's route (relay lookup takes it), or -1 */
    uint64_t token;
    double t0;
    double ready_at;                /* restored or booted */
    long scans_at_change;           /* KSM full_scans when its private bytes last moved */
    uint64_t last_private;          /* at the previous measure */
    bool settled;                   /* measured as it will stay (see measure_memory) */
    bool warmed;                    /* its warm-up call was started (node_warm.c) */
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
    struct pool__negress *egress; /* the egress proxy; NULL with --egress off */
    bool inbox_reading;
    /* Redis Cluster: an environment's inbox is a stream of its own slot, so
     * each is read (XREAD BLOCK) on a handle of its own, by envs index. */
    struct wp_redis *rbs[POOL_MAX_ENVS];
    bool rbs_reading[POOL_MAX_ENVS];
    bool reconciling;        /* a reconcile's steps are in flight */
    ev_timer cron;
    ev_timer kick; /* node__kick: a refill step before the next cron tick */
    ev_signal sigterm, sigint;
    ev_child child;
    struct env envs[POOL_MAX_ENVS];
    int n_envs;
    struct nsb *sbs;
    struct nwarm *warms;     /* warm-up calls in flight (node_warm.c) */
    int restores;            /* restores in flight */
    int slots;
    double now;
    double last_beat, last_policy, last_reap, last_reconcile, last_trim;
    bool registered, stopping;
    /* Fencing across a partition: heartbeat_ok is when Redis last
     * acknowledged a heartbeat. Past the TTL the other nodes may have
     * reaped this one and its holders moved on, so its leased sandboxes
     * take no routes (fenced, since fenced_at) until a reconcile sent after
     * a new acknowledgement has said which leases still hold. */
    double heartbeat_ok, fenced_at;
    bool fenced;
    int fence_lost;          /* sandboxes destroyed as lost since fenced_at */
    /* Draining (`warmpool node drain`, or SIGTERM): no claims taken, idle
     * clones destroyed, leased sandboxes kept until released or until the
     * deadline; then the node stops as on SIGINT. */
    bool draining, drain_by_signal, drain_asking;
    double drain_deadline;   /* now_s() clock */
    double last_drain_check;
    uint64_t started_ms;     /* wall clock: older drain requests are stale */
    uint64_t restore_failures; /* since start, all environments (/metrics) */
    uint64_t warmed;         /* warm-up calls done since start (node_warm.c) */
    struct pool__catalog *catalog; /* environments published in Redis */
    struct pool__orphans *orphans; /* checks for sandboxes of dead owners */
    bool ksm_on;             /* we turned KSM on (some env has "ksm") */
    enum pool__thp thp;      /* the host's THP mode, re-read every heartbeat */
    bool thp_set;            /* we set it (--thp always): put back at exit */
    enum pool__fpr fpr;      /* free page reporting, read at start and every heartbeat */
    bool fpr_set;            /* we turned it off: put back at exit */
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

enum { RH_HOT, RH_WARM, RH_COLD };
extern const char *const node__rh_names[]; /* by RH_* */

/* node.c */
double node__now_s(void);
void node__record_restore(struct node *n, int tier, double seconds);
void node__fmtkey(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void node__log_reply(void *ctx, redisReply *reply);
void node__cmd(struct node *n, const char *what, int argc, const char **argv);

/* node_sandbox.c */
struct nsb *node__find_sb(struct node *n, const char *id);
void node__destroy_sb(struct node *n, struct nsb *s, const char *why);
void node__publish_reply(struct node *n, struct nsb *s, int status, const char *msg);
void node__image_set_aside(struct node *n, struct env *e);
void node__expire_restores(struct node *n);
struct nsb *node__start_restore(struct node *n, struct env *e, bool for_claim);
bool node__restore_lazy(const struct node *n);
struct nsb *node__start_cold_boot(struct node *n, struct env *e, bool for_claim);

/* node_image.c */
void node__build_status(struct node *n, struct env *e, const char *line);
void node__start_build(struct node *n, struct env *e);
void node__env_init(struct node *n, struct env *e, const struct pool_env_config *cfg,
                    struct snap_template *t);
void node__drop_idle(struct node *n, struct env *e, bool stale_only, const char *why);
int node__env_put(void *ctx, const char *name, struct snap_template *t, struct wp_err *err);
int node__env_retire(void *ctx, const char *name);

/* node_inbox.c */
void node__shed_waiting(struct node *n, struct env *e);
void node__serve_claims(struct node *n, struct env *e);
void node__kick(struct node *n, double after);
/* How long after a hot clone's claim its refill starts: the claimer's
 * attach and first call (~3 ms, p95 < 10 on 2 vCPUs) go first, without a
 * restore's fork and CPU beside them; a slot that frees starts one at once. */
#define NODE__CLAIM_REFILL_DELAY_S 0.02
void node__inbox_position(struct node *n);
void node__read_inbox(struct node *n);

/* node_memory.c */
void node__read_image_bytes(struct node *n, struct env *e);
bool node__merging(const struct env *e);
void node__measure_memory(struct node *n);

/* node_reconcile.c */
void node__register_node(struct node *n);
void node__reconcile(struct node *n);
/* Each cron tick: fence when no heartbeat was acknowledged for a TTL. */
void node__fence_tick(struct node *n);
int node__relay_lookup(void *ctx, struct pool__route *rt);
/* node_egress.c's proxy finished a sandbox's registration. */
void node__egress_ready(void *ctx, const char *sandbox);
void node__nodes_cb(void *ctx, redisReply *reply);
void node__check_orphans(struct node *n);
/* This node's liveness in E's live hash (lua/pool/node_reconcile/live.lua);
 * gone: its field removed (a clean stop, E retired). */
void node__publish_live(struct node *n, struct env *e, bool gone);

/* node_reap.c: forget node (its sandboxes marked lost or dropped, its
 * keys deleted) unless its heartbeat is there; done (may be NULL) gets
 * the last reply, NULL when it stopped early. 0, or < 0 (done not called). */
int node__reap(struct node *n, const char *node, wp_redis_cb done, void *ctx);

/* node_warm.c: a no-op bash call through each new hot clone's hands, so
 * the session's first call finds their code paths mapped. */
void node__warm_tick(struct node *n);
void node__warm_stop(struct node *n);

/* node_shutdown.c */
void node__publish_draining(struct node *n);
void node__stop(struct node *n);
void node__drain_cb(void *ctx, redisReply *reply);
void node__drain_tick(struct node *n);
void node__signal_cb(struct ev_loop *loop, ev_signal *w, int revents);

#endif
