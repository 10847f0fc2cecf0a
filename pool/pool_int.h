/* pool_int.h - shared between the files of pool/ only. */
#ifndef POOL_INT_H
#define POOL_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "pool/pool.h"

/* Redis keys. Everything about one environment E carries the hash tag {E}:
 *   wp:env:{E}:hot            LIST   idle hot sandbox ids, claim order
 *   wp:env:{E}:sb:<id>        HASH   node, addr, state (idle|leased|released|lost),
 *                                    tier, session, token, lease_until, created_ms
 *   wp:env:{E}:fence          STRING fencing counter (INCR): tokens only grow
 *   wp:env:{E}:inbox:<node>   STREAM what a node must do for E (claimed, claim,
 *                                    release)
 *   wp:env:{E}:reply:<rid>    LIST   a node's answer to one warm/cold claim
 *   wp:env:{E}:nodes          SET    nodes serving E
 *   wp:env:{E}:policy         HASH   min_hot, max_hot (per node, every node), and
 *                                    min_hot:<node>, max_hot:<node> (that node);
 *                                    live-tunable
 *   wp:env:{E}:stats          HASH   claims by tier
 *   wp:env:{E}:lat:<tier>     HASH   claim latency histogram: bucket b counts claims
 *                                    that took at most 2^b microseconds
 *   wp:env:{E}:mem:<node>     HASH   what E's clones on a node hold (memory.c,
 *                                    ARCHITECTURE.md); expires with the node
 *   wp:env:{E}:live           HASH   <node> -> "<until ms>[ drain]": nodes serving E,
 *                                    alive until then by Redis's clock, written
 *                                    with each heartbeat (the node pick reads
 *                                    only E's slot)
 * Nodes:
 *   wp:nodes                  SET    node ids
 *   wp:node:<N>               HASH   addr, capacity, mem_free, versions, started_ms
 *   wp:node:<N>:alive         STRING heartbeat, expires after the node's TTL
 *   wp:node:<N>:sbs           SET    "<env> <id>" of every sandbox it holds
 *   wp:node:<N>:drain         STRING "<deadline ms> <set ms>": the node drains (no
 *                                    new claims; `warmpool node drain`, or the node
 *                                    itself on SIGTERM); claims pick other nodes */
#define POOL__K_HOT "wp:env:{%s}:hot"
#define POOL__K_SB "wp:env:{%s}:sb:"
#define POOL__K_FENCE "wp:env:{%s}:fence"
#define POOL__K_INBOX "wp:env:{%s}:inbox:"
/* wp:env:{E}:seen:<node>  STRING the last inbox entry the node handled
 *                                (PX POOL__SEEN_TTL_MS, renewed as it moves) */
#define POOL__K_SEEN "wp:env:{%s}:seen:"
#define POOL__SEEN_TTL_MS 86400000
/* A warm/cold claim older than this has no claimer waiting any more. */
#define POOL__CLAIM_MAX_AGE_MS 30000
#define POOL__K_REPLY "wp:env:{%s}:reply:"
#define POOL__K_NODES_OF "wp:env:{%s}:nodes"
#define POOL__K_POLICY "wp:env:{%s}:policy"
#define POOL__K_STATS "wp:env:{%s}:stats"
#define POOL__K_LAT "wp:env:{%s}:lat:"
#define POOL__K_MEM "wp:env:{%s}:mem:"
#define POOL__K_LIVE "wp:env:{%s}:live"
#define POOL__K_NODES "wp:nodes"
#define POOL__K_NODE "wp:node:%s"
#define POOL__K_ALIVE "wp:node:%s:alive"
#define POOL__K_NODE_SBS "wp:node:%s:sbs"
#define POOL__K_DRAIN "wp:node:%s:drain"
/* Environments published by the scheduler for API environments:
 *   wp:tpls                   HASH   env name -> template digest
 *   wp:tpl:{E}                HASH   template (JSON), digest, org, env, updated_ms,
 *                                    build:<node> (each node's build status) */
#define POOL__K_TPLS "wp:tpls"
#define POOL__K_TPL "wp:tpl:{%s}"

extern const char pool__lua_claim_hot[];
extern const char pool__lua_offer[];
extern const char pool__lua_renew[];
extern const char pool__lua_release[];

/* relay.c: agentlink over TCP to the sandboxes of this node. lookup
 * answers whether (env, sandbox, token, relay key) is a current lease
 * here (the key compared in constant time): 0 with the sandbox root,
 * WP_ESTALE, WP_ENOTFOUND, WP_EPROTO (why says why), or WP_ESTATE when
 * the node is not ready yet (the claim not read, or the route's egress
 * still being set up): the relay waits for pool__relay_retry. */
struct ev_loop;
struct wp_err;
struct pool__relay;
#define POOL__CLAIM_NODES 8 /* nodes one claim tries when they answer overloaded */
#define POOL__ROUTE_MAX (256 * 1024) /* a route frame (with credentials) */
struct pool__route {
    const char *env, *sandbox, *rkey;
    unsigned long long token;
    const char *egress;  /* the route's "egress" object as compact JSON (it
                            holds secrets: the relay wipes it), NULL: none */
    size_t egress_len;
    char root[512];      /* out: /proc/<init>/root */
    bool want_hands;     /* a route (not a mount): may take hands_fd */
    int hands_fd;        /* out: a connection to the hands the node opened when it
                            read the claim (the relay's to own), or -1: connect */
    char proxy[64];      /* out: "host:port" of the sandbox's egress proxy, "" none */
    char why[200];       /* out, with WP_EPROTO */
};
typedef int (*pool__relay_lookup_cb)(void *ctx, struct pool__route *rt);
int pool__relay_start(struct ev_loop *loop, const char *host, int port, pool__relay_lookup_cb lookup,
                      void *ctx, struct pool__relay **out, int *bound_port, struct wp_err *err);
/* The node just learnt sandbox was claimed: routes waiting for it go on. */
void pool__relay_retry(struct pool__relay *r, const char *sandbox);
/* Close every relay to sandbox (released or destroyed). */
void pool__relay_drop(struct pool__relay *r, const char *sandbox);
void pool__relay_stop(struct pool__relay *r);
/* node_files.c: attach data read-only at path inside the sandbox whose
 * root is root ("/proc/<init>/root"); for the relay's mount frame. */
int pool__file_mount(const char *root, const char *path, const char *data, size_t len,
                     struct wp_err *err);
/* ...and take it away again (a lazy unmount, then its empty target). */
int pool__file_unmount(const char *root, const char *path, struct wp_err *err);

/* node_egress.c: the node's egress proxy (warmpool-egress, started and
 * watched here) and the sandboxes confined to it. route: for a route
 * frame's egress object (compact JSON, holding secrets: not kept), 0 when
 * sb is confined and registered (proxy: "host:port", "" for a sandbox
 * without network), WP_ESTATE while the proxy has not answered (ready is
 * called with the sandbox id then: route again), WP_EPROTO with why.
 * remove: before the sandbox is destroyed. */
struct snap_ctx;
struct snap_sandbox;
struct snap_network;
struct pool__negress;
/* start copies bin, ca_dir and pins; state_dir and upstream_ca must live as
 * long as the proxy (the node's config). */
struct pool__negress_cfg {
    const char *bin;         /* warmpool-egress */
    const char *state_dir;   /* its control socket: <state_dir>/egress.sock */
    const char *ca_dir;      /* the node's CA */
    const char *upstream_ca; /* may be NULL */
    const char *const *pins; /* "name=ipv4", NULL-ended; may be NULL */
    int port;
};
typedef void (*pool__negress_ready_cb)(void *ctx, const char *sandbox);
int pool__negress_start(struct ev_loop *loop, const struct pool__negress_cfg *cfg,
                        pool__negress_ready_cb ready, void *ctx, struct pool__negress **out,
                        struct wp_err *err);
int pool__negress_route(struct pool__negress *ne, struct snap_ctx *snap,
                        const struct snap_sandbox *sb, const struct snap_network *net,
                        const char *egress, size_t len, char proxy[64], char *why, size_t cap);
void pool__negress_remove(struct pool__negress *ne, const char *sandbox);
void pool__negress_stop(struct pool__negress *ne);

/* relay_tls.c: the TLS end of a relay connection (either side). Whether
 * a relay at host needs TLS under this process's settings: 1, 0, or
 * WP_ECONFIG when it does but no identity was set up (err says what to
 * configure). */
int pool__relay_tls_wanted(const char *host, struct wp_err *err);
/* A pump between the TLS stream on tcp_fd (the pump's once this returns 0) and a
 * socketpair: *plain_fd gets the other end (caller owns it and uses it as
 * it would have used tcp_fd). The pump lives on loop until either side
 * closes, then frees itself (pool_relay_tls_teardown frees what is left).
 * A client (server false) checks that the peer's certificate names
 * peer_ip. on_fail (may be NULL) runs once when the pump ends, unless
 * detached first (pool__tls_pump_detach): why says what failed, or is NULL
 * when it ended cleanly; the pump is gone after it either way. */
struct pool__tls_pump;
typedef void (*pool__tls_fail_cb)(void *ctx, const char *why);
int pool__tls_pump_new(struct ev_loop *loop, int tcp_fd, bool server, const char *peer_ip,
                       pool__tls_fail_cb on_fail, void *fail_ctx, int *plain_fd,
                       struct pool__tls_pump **out, struct wp_err *err);
/* No on_fail after this (its ctx is going away). NULL ok. */
void pool__tls_pump_detach(struct pool__tls_pump *p);

/* ksm.c: KSM settings of the host, driven while the node holds mergeable
 * clones. recover: put back settings a killed earlier run left changed
 * (returns 1 if it did). enable: save the host's settings (once) and turn
 * merging on. disable: put the saved settings back. */
int pool__ksm_recover(const char *state_dir);
int pool__ksm_enable(const char *state_dir, long pages_to_scan, long sleep_ms, struct wp_err *err);
int pool__ksm_scan_rate(long pages_to_scan);
void pool__ksm_disable(const char *state_dir);

/* thp.c: the host's transparent huge pages (an eager refill's cost hangs
 * on them). mode: read now, UNKNOWN where there is no THP. recover: put
 * back a mode a killed earlier run changed (1 if it did). enable: save
 * the mode (when it is not "always" already) and set "always"; 1 when it
 * changed it (then recover at exit puts it back), 0 when it was already.
 * set_path: tests point it at a file of their own. */
enum pool__thp { POOL_THP_UNKNOWN, POOL_THP_ALWAYS, POOL_THP_MADVISE, POOL_THP_NEVER };
enum pool__thp pool__thp_mode(void);
enum pool__thp pool__thp_parse(const char *text);
const char *pool__thp_name(enum pool__thp m);
int pool__thp_recover(const char *state_dir);
int pool__thp_enable(const char *state_dir, struct wp_err *err);
void pool__thp_set_path(const char *path);

/* hostset.c: a host-wide setting changed while the node runs, saved in
 * state_dir/<name>-saved first. change: save was, write to (0, or an error
 * with nothing changed and no file left). recover: put back what a file
 * holds if valid() takes it (1), else 0; the file goes either way.
 * write: one value into a sysfs file (-errno). */
struct pool__hostset {
    const char *name;                  /* the saved file's stem: "thp" */
    const char *path;                  /* the setting's file */
    bool (*valid)(const char *saved);  /* a value fit to write back */
};
int pool__hostset_change(const struct pool__hostset *h, const char *state_dir, const char *was,
                         const char *to, struct wp_err *err);
int pool__hostset_recover(const struct pool__hostset *h, const char *state_dir);
int pool__hostset_write(const char *path, const char *value);

/* fpr.c: free page reporting (memory freed in a guest given back to the
 * hypervisor, the next touch faulting it in again). state: NONE where no
 * balloon device reports (or no such kernel), ON or OFF. disable: 1 when it
 * turned reporting off (recover at exit puts it back), 0 when there was
 * nothing to do. orders: the allocator's block orders (/proc/buddyinfo).
 * set_paths: tests point the three files at their own. */
enum pool__fpr { POOL_FPR_NONE, POOL_FPR_ON, POOL_FPR_OFF };
enum pool__fpr pool__fpr_state(void);
const char *pool__fpr_name(enum pool__fpr s);
int pool__fpr_orders(void);
int pool__fpr_recover(const char *state_dir);
int pool__fpr_disable(const char *state_dir, struct wp_err *err);
void pool__fpr_set_paths(const char *order, const char *virtio, const char *buddyinfo);

/* catalog.c: environments learnt from Redis (wp:tpls), next to the
 * config file's. put: serve template t (steals it) as environment name, or
 * swap the template of one already served from the catalog; returns 0,
 * WP_ESTATE when busy (asked again next round) or another error (the
 * catalog reports it in build:<node> and waits for a new digest). retire:
 * stop serving name; returns > 0 while sandboxes of it remain (asked
 * again), 0 once nothing is left. Both run on the loop. */
struct snap_template;
struct wp_redis;
struct pool__catalog;
struct pool__catalog_ops {
    void *ctx;
    int (*put)(void *ctx, const char *name, struct snap_template *t, struct wp_err *err);
    int (*retire)(void *ctx, const char *name);
};
int pool__catalog_new(struct wp_redis *r, const char *node, const struct pool__catalog_ops *ops,
                      struct pool__catalog **out, struct wp_err *err);
void pool__catalog_free(struct pool__catalog *c);
/* Every cron tick; reads wp:tpls at most once a second. */
void pool__catalog_tick(struct pool__catalog *c, double now);
/* Mirror a build status line into wp:tpl:{env} build:<node> (only while
 * the environment is published). */
void pool__catalog_note(struct wp_redis *r, const char *node, const char *env, const char *line);
/* memory.c: what clones really hold (see the file's comment). */
struct snap_ctx;
struct wp_redis;

#define POOL__MEM_NB 12 /* private-bytes histogram buckets; the last is +Inf */
extern const uint64_t pool__mem_bounds[POOL__MEM_NB - 1];

/* One process, from /proc/PID/smaps_rollup, in bytes. */
struct pool__proc_mem {
    uint64_t rss, pss, private_, anon;
};
/* Parsers of /proc text: 0, or WP_EINVAL_INPUT when a field is missing or
 * not a sane number. cpu_ticks: utime + stime of a /proc/PID/stat line. */
int pool__mem_parse_rollup(const char *text, struct pool__proc_mem *m);
int pool__mem_parse_ksm_stat(const char *text, uint64_t *merging_pages);
int pool__mem_parse_cpu_ticks(const char *stat, uint64_t *ticks);

/* One clone: sums over the processes of its cgroup, plus the cgroup's
 * kernel memory (counted in pss and private_). */
struct pool__clone_mem {
    uint64_t pss, private_, anon, merged, kernel, cgroup;
    int nprocs;
};
/* WP_ENOTFOUND when the clone's cgroup is gone. Reads /proc only. */
int pool__mem_clone(struct snap_ctx *ctx, const char *id, struct pool__clone_mem *out,
                    struct wp_err *err);

/* Host-wide: /sys/kernel/mm/ksm counters (-1 when unreadable) and ksmd's
 * CPU time (ksmd_found false when there is no ksmd). */
struct pool__ksm_host {
    long pages_shared, pages_sharing, full_scans;
    uint64_t ksmd_cpu_ms;
    bool ksmd_found;
};
void pool__mem_ksm_host(struct pool__ksm_host *h);
/* MemAvailable from /proc/meminfo in bytes, 0 when unknown. */
uint64_t pool__mem_available(void);

/* An environment's clones on this node, as published. */
struct pool__env_mem {
    int clones;
    uint64_t pss, private_sum, anon, merged, kernel, cgroup;
    uint64_t shared;     /* pss - private_sum: about one copy of what they share */
    uint64_t p50, p95;   /* private bytes per clone */
    uint64_t hist[POOL__MEM_NB]; /* clones per bucket (not cumulative) */
    uint64_t per_clone;  /* what one more hot clone is expected to hold */
    int fit, asked;      /* hot clones that fit / the policy's target */
};
/* p50, p95 and hist of the private bytes of n clones (sorts priv). */
void pool__mem_summary(uint64_t *priv, int n, struct pool__env_mem *m);
/* HSET wp:env:{env}:mem:<node> with every figure, expiring after ttl_s. */
void pool__mem_publish(struct wp_redis *r, const char *node, const char *env, const char *ksm,
                       const struct pool__env_mem *m, double ttl_s);
/* orphans.c: the node's checks for sandboxes of dead owners (start-up,
 * re-checks in its first seconds, then periodic; re-checks in a helper
 * process). check_now blocks (start-up, before the loop). start: ids the
 * node holds and pids of the node and its helpers (alive or just exited),
 * all borrowed for the call; the report arrives on the loop. Caller owns
 * *out (pool__orphans_free: waits for a running check). */
#define POOL__ORPHANS_PERIOD_S 30.0
#define POOL__ORPHANS_SHOWN 8   /* sandboxes left that are named in the node's hash */
#define POOL__ORPHAN_LINE 240   /* "<id>: <why>" */
struct snap_ctx;
struct pool__orphans;
struct pool__orphans_text {
    char count[16];    /* sandboxes the last check left */
    char cleaned[24];  /* removed since start-up */
    char checked_ms[24];
    char why[POOL__ORPHANS_SHOWN * (POOL__ORPHAN_LINE + 1)]; /* "<id>: <why>" lines */
};
int pool__orphans_new(struct ev_loop *loop, double now, struct pool__orphans **out,
                      struct wp_err *err);
int pool__orphans_check_now(struct pool__orphans *o, struct snap_ctx *snap, struct wp_err *err);
bool pool__orphans_due(const struct pool__orphans *o, double now);
int pool__orphans_start(struct pool__orphans *o, struct snap_ctx *snap, const char *const *ids,
                        int n_ids, const pid_t *owners, int n_owners, double now,
                        struct wp_err *err);
void pool__orphans_text(const struct pool__orphans *o, struct pool__orphans_text *t);
void pool__orphans_free(struct pool__orphans *o);

/* ---- the work-queue worker (worker.c, worker_run.c, http.c) ---------- */

/* Headers of every worker call, as the SDK's worker sends them
 * (work-queue.md 2.3). */
#define POOL__WORKER_API_VERSION "2026-10-21"
#define POOL__WORKER_API_BETA "managed-agents-2026-04-01"

/* http.c: libcurl multi on the node's loop. A start that returns < 0
 * never calls done; otherwise done runs exactly once, outside curl, unless
 * pool__http_cancel came first (no callback after it returns). */
struct pool__http;
struct pool__http_req;
struct pool__http_res {
    int status;           /* 0: an HTTP answer (see code); < 0: transport error
                           * (-ECONNREFUSED, -EHOSTUNREACH, -ECONNRESET, WP_ETIMEDOUT,
                           * WP_ETOOBIG: body over max_body, or on_data's code) */
    long code;            /* HTTP status, 0 when none arrived */
    int should_retry;     /* x-should-retry: -1 absent, 0, 1 */
    const char *body;     /* NUL-terminated; borrowed for the callback (non-2xx
                           * bodies of stream requests too, up to 64 KiB) */
    size_t len;
    const char *errmsg;   /* status < 0: why, for logs */
};
typedef void (*pool__http_done_cb)(void *ctx, const struct pool__http_res *res);
/* Called inside curl: may start or cancel requests (both deferred), never
 * free the client. Return < 0 to abort the transfer (done gets that). */
typedef int (*pool__http_data_cb)(void *ctx, const char *p, size_t n);
typedef void (*pool__http_head_cb)(void *ctx, long code);
struct pool__http_opts {
    const char *method;          /* "GET" or "POST" */
    const char *url;
    const char *bearer;          /* Authorization: Bearer; borrowed, never logged */
    const char *worker_id;       /* Anthropic-Worker-ID or NULL */
    const char *body;            /* POST: JSON (copied); NULL: empty body, no Content-Type */
    size_t body_len;
    double timeout_s;            /* whole transfer; 0: none */
    double low_speed_s;          /* fail a transfer silent this long; 0: off */
    size_t max_body;             /* 0: 64 KiB */
    pool__http_data_cb on_data;  /* non-NULL: a 2xx body streams here, not buffered */
    pool__http_head_cb on_head;  /* the final response's head arrived */
};
int pool__http_new(struct ev_loop *loop, struct pool__http **out, struct wp_err *err);
/* Cancels every request (no callbacks). Not from inside a callback. */
void pool__http_free(struct pool__http *h);
/* *out (may be NULL) names the request until done or cancel. */
int pool__http_start(struct pool__http *h, const struct pool__http_opts *o, pool__http_done_cb done,
                     void *ctx, struct pool__http_req **out, struct wp_err *err);
void pool__http_cancel(struct pool__http_req *r);
/* Worth retrying (work-queue.md 10): transport errors, 408, 409, 429, 5xx;
 * x-should-retry wins. Anything else is a permanent failure. */
bool pool__http_transient(const struct pool__http_res *res);

/* worker_run.c: the session tool runner for one work item (work-queue.md
 * 8): event stream, history, dispatch of built-in tool calls to a sandbox
 * claimed from the pool, results posted back, idle countdown. */
struct pool__runner;
enum pool__run_end {
    POOL__RUN_TERMINATED, /* session.status_terminated / session.deleted */
    POOL__RUN_IDLE,       /* the idle countdown ran out */
    POOL__RUN_FAILED,     /* a permanent 4xx opening the stream, or no memory */
};
typedef void (*pool__run_end_cb)(void *ctx, enum pool__run_end why);
struct pool__run_opts {
    struct ev_loop *loop;
    struct pool__http *http;       /* borrowed, outlives the runner */
    struct pool_client *pool;      /* borrowed: claims of the tools' sandbox */
    const char *base_url;          /* control plane (copied, as the strings below) */
    const char *session_id;
    const char *token;             /* sessions token, else the environment key */
    const char *pool_env;          /* pool environment the sandboxes come from */
    double sandbox_lease_ms;       /* lease of a claimed sandbox (renewed every third) */
    int max_idle_ms;
};
/* Starts attaching at once. on_end runs at most once, inside the
 * runner's callbacks: free the runner later (a zero timer), not there. */
int pool__runner_new(const struct pool__run_opts *o, pool__run_end_cb on_end, void *ctx,
                     struct pool__runner **out, struct wp_err *err);
/* The lease TTL from the last heartbeat: the result-send retry window. */
void pool__runner_set_send_window(struct pool__runner *r, double seconds);
/* Stops everything, releases the sandbox. No callback after it. NULL ok. */
void pool__runner_free(struct pool__runner *r);

/* worker.c: the poller and the work items (work-queue.md 5, 6, 10), on the
 * node's loop. fatal runs once when the control plane refuses the
 * environment key or environment for good (a permanent 4xx on poll): the
 * node then exits non-zero. pool_env: the pool environment whose
 * sandboxes run the tools. Caller owns *out (pool__worker_free). */
struct pool__worker;
typedef void (*pool__worker_fatal_cb)(void *ctx, const struct wp_err *err);
int pool__worker_start(struct ev_loop *loop, const struct pool_worker_config *cfg, const char *pool_env,
                       const char *redis_host, int redis_port, double sandbox_lease_ms,
                       pool__worker_fatal_cb fatal, void *ctx, struct pool__worker **out,
                       struct wp_err *err);
/* SIGTERM: stop polling; the current item's runner ends and the item is
 * force-stopped (the request goes out at once; a node exiting before the
 * answer leaves the lease to expire). NULL ok. */
void pool__worker_stop(struct pool__worker *w);
/* Not from inside the worker's callbacks. NULL ok. */
void pool__worker_free(struct pool__worker *w);

/* doctor.c: `warmpool doctor` (argv from "doctor" on). Exit status. */
int pool__doctor(int argc, char **argv);
/* `warmpool quota set|show` (cli_quota.c); argv[0] is "set" or "show";
 * cmd: the CLI's Redis command helper (routed on a cluster); keys: KEYS
 * pattern on the one Redis or every master, the names (up to cap) into
 * names, their number. */
struct redisReply;
int pool__cli_quota(struct redisReply *(*cmd)(const char *fmt, ...),
                    int (*keys)(const char *pattern, char (*names)[128], int cap), int argc,
                    char **argv);

/* egress_tls.c: the proxy's CA, leaf certificates and upstream trust. */
typedef struct ssl_st SSL;
struct pool__egress_tls;
int pool__egress_tls_open(const char *ca_dir, const char *upstream_ca_file,
                          struct pool__egress_tls **out, struct wp_err *err);
void pool__egress_tls_close(struct pool__egress_tls *t);
const char *pool__egress_tls_ca_pem(const struct pool__egress_tls *t);
/* An SSL for the sandbox's side (a leaf for host) / the server's side
 * (verifying host). NULL on failure. Caller owns. */
SSL *pool__egress_tls_server(struct pool__egress_tls *t, int fd, const char *host);
SSL *pool__egress_tls_client(struct pool__egress_tls *t, int fd, const char *host);

/* egress.c + egress_http.c: one connection of the egress proxy, and the
 * sandbox and credentials it serves (the process, its loop and listeners
 * stay in egress.c; the rules and the HTTP in egress_http.c). */
#include <ev.h>
#include <llhttp.h>

#include "base/buf.h"

#define POOL__EG_HEAD_MAX (64 * 1024)
#define POOL__EG_BODY_MAX (16 * 1024 * 1024)
#define POOL__EG_MAX_HEADERS 128

struct pool__egcred {
    char *placeholder, *secret;
    bool in_header, in_body, any_host;
    char **hosts;
    size_t n_hosts;
};

struct pool__egsbx {
    struct pool__egsbx *next;
    struct pool_egress *px;
    char id[64], host[16], addr[16];
    int lfd;
    ev_io lio;
    ev_timer pause; /* accepting paused while out of descriptors */
    bool limited;
    char **allowed; /* the environment's allowed_hosts (limited) */
    size_t n_allowed;
    struct pool__egcred *creds;
    size_t n_creds;
    int n_conns;
};

struct pool__eglookup;

struct pool__egconn {
    struct pool__egconn *next;
    struct pool_egress *px;
    struct pool__egsbx *sb;
    int cfd, ufd;
    ev_io cio, uio;
    ev_timer idle;
    SSL *cssl, *ussl;
    int phase; /* egress.c's enum phase */
    bool tunneled, is_connect, done, body_full;
    bool answer_head; /* the answer's head has been seen (and closed) */
    size_t head_at;   /* where in to_cl the answer's current head starts */
    llhttp_t p;
    int piece; /* 1 url, 2 field, 3 value: the one being appended to */
    struct wp_buf head, body, to_up, to_cl;
    size_t url, hname[POOL__EG_MAX_HEADERS], hval[POOL__EG_MAX_HEADERS];
    int nh;
    char host[256];
    int port;
    struct pool__eglookup *lk;
};

/* egress.c: an answer of the proxy's own, then close. */
void pool__egress_refuse(struct pool__egconn *c, int status, const char *reason, const char *detail);
/* egress_http.c */
bool pool__egress_addr_blocked(uint32_t a);
bool pool__egress_env_allows(const struct pool__egsbx *sb, const char *host, uint32_t a);
int pool__egress_parse_authority(struct pool__egconn *c, const char *s, size_t n, int dflt);
void pool__egress_build_request(struct pool__egconn *c);
void pool__egress_close_answer(struct pool__egconn *c);
void pool__egress_http_settings(llhttp_settings_t *s);

#endif
