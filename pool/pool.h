/* pool.h - the Redis-coordinated warm pool (prefix pool_): the
 * autoscaler's arithmetic (pure), the node daemon's configuration and entry
 * point, and the claim client schedulers use. */
#ifndef POOL_H
#define POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- autoscaler (autoscale.c) ----------------------------------------- */

/* An exponentially weighted moving average of samples (restore times). */
struct pool_ewma {
    double half_life_s;
    double value;
    double last_s;
};
void pool_ewma_init(struct pool_ewma *e, double half_life_s);
void pool_ewma_add(struct pool_ewma *e, double now_s, double sample);

/* An event rate (claims per second), decaying with the given half life. */
struct pool_rate {
    double half_life_s;
    double rate;
    double last_s;
};
void pool_rate_init(struct pool_rate *r, double half_life_s);
void pool_rate_event(struct pool_rate *r, double now_s, double count);
double pool_rate_get(const struct pool_rate *r, double now_s);

#define POOL_TARGET_UNBOUNDED 100000

/* P[Poisson(m) >= c]. */
double pool_poisson_tail(double m, int c);
/* Erlang C: P(wait) for k servers at offered load a erlangs. */
double pool_erlang_c(double a, int k);
/* Hot clones needed so that a claim finds one with probability hit_target,
 * for claims at lambda/s and refills of refill_s seconds, at most
 * refill_slots at once (0 = unbounded). POOL_TARGET_UNBOUNDED when refills
 * cannot keep up at all. */
int pool_target_hot(double lambda, double refill_s, int refill_slots, double hit_target);

/* Claims per second that k restore slots refilling in refill_s seconds
 * each can keep up with (k / refill_s); 0 while refill_s is unknown. Past
 * it the hot tier drains whatever the policy asks: the CPU is the limit. */
double pool_refill_capacity(double refill_s, int refill_slots);

/* How long a warm/cold claim arriving now waits for a restore slot: ahead
 * claims queued before it, busy restores running, k slots, restore_s per
 * restore (0 = unknown: 0 is returned). */
double pool_claim_wait_s(int ahead, int busy, int refill_slots, double restore_s);

/* Hot clones of one environment that fit in a node's memory budget: the
 * ones it has (hot_now: idle + restoring) plus what the room left holds at
 * per_clone bytes each. used is what every clone on the node holds now,
 * one shared copy per image plus each clone's private bytes. Never below
 * 0; POOL_TARGET_UNBOUNDED when per_clone is 0 (nothing measured). */
int pool_mem_fit(uint64_t budget, uint64_t used, uint64_t per_clone, int hot_now);

/* Up at once, down one step per cooldown. */
struct pool_scaler {
    double cooldown_s;
    int current;
    double last_change_s;
};
void pool_scaler_init(struct pool_scaler *s, double cooldown_s);
/* Returns the size to keep now, clamped to [min, max]. */
int pool_scaler_step(struct pool_scaler *s, double now_s, int want, int min, int max);


/* ---- the node daemon (node.c) ----------------------------------------- */

struct wp_err;

#define POOL_MAX_ENVS 16

struct pool_env_config {
    char name[64];          /* environment name = template name */
    char template_path[512];
    int min_hot;            /* initial policy; live values come from Redis */
    int max_hot;
};

/* How the node restores clones, for its hot tier and for claims that wait
 * (thp.c says why). */
enum pool_refill {
    POOL_REFILL_AUTO = 0, /* eager while the host's THP is "always", else lazy */
    POOL_REFILL_EAGER,    /* always eager (--eager) */
    POOL_REFILL_LAZY,     /* always lazy pages */
};

/* The work-queue worker (worker.c): the node serves one self-hosted
 * environment's work queue of a Managed Agents control plane (warmpool's
 * scheduler or the hosted API), running the sessions' tool calls in
 * sandboxes of its own pool. */
struct pool_worker_config {
    bool enabled;
    char url[256];          /* control plane base URL (http or https, no trailing /) */
    char environment[128];  /* the self-hosted environment's id (env_...) */
    char pool_env[64];      /* pool environment of the tools' sandboxes ("": the first --env) */
    char worker_id[160];    /* Anthropic-Worker-ID ("": <hostname>-<uuid4>) */
    char key[512];          /* environment key: from WARMPOOL_ENVIRONMENT_KEY only */
    int max_idle_ms;        /* detach this long after a finished turn (60000) */
    int lease_ttl_s;        /* desired_ttl_seconds on heartbeats; 0: not sent (as the SDK) */
};

/* Relay TLS (relay_tls.c): the same four options for every process that
 * serves or dials relays (node.conf, scheduler.conf). */
enum pool_relay_tls_mode {
    POOL_RELAY_TLS_AUTO = 0, /* TLS when the relay's address is not loopback */
    POOL_RELAY_TLS_ON,       /* TLS on loopback too */
    POOL_RELAY_TLS_OFF,      /* never (beyond loopback too: warned) */
};
struct pool_relay_tls_conf {
    enum pool_relay_tls_mode mode;
    char cert[256]; /* PEM chain of this process (node: with its relay IP as a SAN) */
    char key[256];  /* its PEM key */
    char ca[256];   /* PEM CA(s) that sign relay peers: a CA for warmpool relays only */
};

struct pool_node_config {
    char id[64];
    char redis_host[128];
    char redis_user[128];          /* AUTH user ("" = default) */
    char redis_password_file[256]; /* AUTH password's file ("" = no AUTH) */
    char redis_sentinel_password_file[256]; /* the sentinels' own ("" = none) */
    char redis_sentinels[512];     /* "host:port,..." ("" = no Sentinel: redis_host) */
    char redis_master[128];        /* the master's name at the sentinels */
    char redis_cluster[1024];      /* "host:port,..." of Redis Cluster nodes ("" = none) */
    int redis_port;
    char state_dir[256];
    char listen_host[64];   /* the agentlink relay (default 127.0.0.1) */
    char advertise_host[64]; /* the relay's address in claims ("": listen_host) */
    struct pool_relay_tls_conf relay_tls;
    int listen_port;        /* 0: any free port */
    double heartbeat_ttl_s; /* the node counts as dead this long after its last beat */
    double lease_ms;        /* lease TTL handed out with claims */
    int restore_slots;      /* restores at once; 0 = one per CPU */
    enum pool_refill refill;
    bool thp_always;        /* --thp always: set the host's THP to "always" while
                               running (put back at exit) */
    bool fpr_off;           /* --free-page-reporting off: keep freed memory from
                               the hypervisor while running (put back at exit) */
    bool warm_off;          /* --warm-clones off: no warm-up call in new hot
                               clones (node_warm.c) */
    double claim_wait_max_ms; /* a warm/cold claim that would wait longer than
                                 this for a restore slot is refused as
                                 overloaded (WP_EOVERLOADED); 0 = never */
    long ksm_slow_pages;    /* KSM pages_to_scan when steady (envs with "ksm") */
    long ksm_fast_pages;    /* ... right after refills */
    long ksm_sleep_ms;      /* KSM sleep_millisecs */
    bool api_envs;          /* also serve environments published in Redis (wp:tpls) */
    uint64_t hot_memory_bytes; /* memory budget of this node's clones; 0: 80% of
                                  MemAvailable at start */
    bool multi_tenant;      /* serves several organizations: no KSM... */
    bool ksm_multi_tenant;  /* ...unless the operator overrides */
    char criu_mode[16];     /* "" or "auto": probe; default, no-breakpoints, none */
    double criu_timeout_s;  /* each dump and restore; 0: the snapshot default */
    double drain_timeout_s; /* SIGTERM drains this long (leased sandboxes kept until
                               released); 0: stop at once, leases marked lost */
    /* The egress proxy (node_egress.c): sandboxes of sessions with secrets
     * in play are confined to it. */
    bool egress_off;        /* --egress off: such sessions get no sandbox */
    char egress_bin[512];   /* "": warmpool-egress beside this binary */
    int egress_port;        /* on each confined sandbox's host end (3129) */
    char egress_ca_dir[256]; /* "": <state_dir>/egress */
    char egress_upstream_ca[256];
    int n_egress_pins;
    char egress_pins[8][128]; /* "name=ipv4" (tests: hosts with no DNS) */
    bool unconfined;        /* --insecure-allow-unconfined: sandboxes without
                               snapshot/confine.c's layers (never in production) */
    int n_envs;
    struct pool_env_config envs[POOL_MAX_ENVS];
    struct pool_worker_config worker;
};

/* Parse `warmpool-node` flags and a config file into cfg (defaults
 * filled). Returns 0, 1 when --help was printed, or < 0 with err set. */
int pool_node_config_parse(struct pool_node_config *cfg, int argc, char **argv,
                           struct wp_err *err);

/* Run the node on the default libev loop until SIGTERM/SIGINT. The caller
 * must be single-threaded. Returns 0 on a clean shutdown. */
int pool_node_run(const struct pool_node_config *cfg, struct wp_err *err);

/* ---- claims, for schedulers and tests (client.c) ---------------------- */

struct ev_loop;
struct pool_client;

struct pool_claim_result {
    char sandbox[64];
    char node[64];
    char root[512];     /* host path of the sandbox's root on its node */
    char relay[80];     /* "host:port" of its node's agentlink relay */
    char tier[8];       /* "hot", "warm" or "cold" */
    uint64_t token;     /* fencing token of the lease (a counter: ordered, guessable) */
    char rkey[33];      /* the lease's relay key: 128 random bits, hex, made by the
                           claimer; the node's relay routes only to its holder */
    double ms;          /* claim latency */
    double node_wait_ms; /* of which waiting for a first node to serve the
                            environment (one just published); 0 mostly */
};

typedef void (*pool_claim_cb)(void *ctx, int status, const struct pool_claim_result *res,
                              const struct wp_err *err);
typedef void (*pool_done_cb)(void *ctx, int status, const struct wp_err *err);

/* Two Redis connections (commands, replies) on loop. Caller owns *out. */
int pool_client_new(struct ev_loop *loop, const char *redis_host, int redis_port,
                    struct pool_client **out, struct wp_err *err);
void pool_client_free(struct pool_client *c);
bool pool_client_ready(const struct pool_client *c);

/* Claim a sandbox of env for session. Hot if one is idle; otherwise a node
 * serving env restores one (warm) or boots one (cold). If this returns
 * < 0, cb is never called; else exactly once (status 0 or < 0, e.g.
 * WP_ENOTFOUND for an environment no node serves, WP_ETIMEDOUT). Redis
 * away (a restart, a failover) is waited for within timeout_s; a claim a
 * node was serving is sent again when that node dies or the answer
 * channel was lost meanwhile. */
int pool_claim(struct pool_client *c, const char *env, const char *session, double timeout_s,
               pool_claim_cb cb, void *ctx, struct wp_err *err);
/* Release a claimed sandbox (the node destroys it). WP_ESTALE when token
 * is not the current lease's. Same callback contract; cb may be NULL. */
int pool_release(struct pool_client *c, const char *env, const char *sandbox, uint64_t token,
                 pool_done_cb cb, void *ctx, struct wp_err *err);
/* Connect to a claimed sandbox's hands through its node's relay (any
 * machine): TCP, the route frame with the lease's token, the node's
 * answer. cb gets a connected fd (caller owns it; hand it to
 * alink_client_connect_fd) or status < 0: WP_ESTALE (token no longer the
 * lease's), WP_ENOTFOUND, -ECONNREFUSED... Same callback contract. */
/* Relay TLS options: name is an option's long name (relay-tls,
 * relay-tls-cert, relay-tls-key, relay-tls-ca). Returns 1 when it was one
 * (set), 0 when not, < 0 (WP_ECONFIG) for a bad value. */
int pool_relay_tls_option(struct pool_relay_tls_conf *c, const char *name, const char *val,
                          struct wp_err *err);
/* All three files or none; `on` needs them. */
int pool_relay_tls_check(const struct pool_relay_tls_conf *c, struct wp_err *err);
/* The process's relay identity (one per process, like its log level):
 * loads the files; relays served and dialled from then on follow c.
 * Call before pool_connect / the node's relay starts. */
int pool_relay_tls_setup(const struct pool_relay_tls_conf *c, struct wp_err *err);
/* Frees the identity and any relay TLS connection still open. */
void pool_relay_tls_teardown(void);
/* 127.0.0.0/8, ::1 or "localhost": the one definition of "loopback". */
bool pool_addr_is_loopback(const char *host);
extern const char pool_relay_tls_usage[];

typedef void (*pool_connect_cb)(void *ctx, int status, int fd, const struct wp_err *err);
int pool_connect(struct ev_loop *loop, const struct pool_claim_result *res, const char *env,
                 pool_connect_cb cb, void *ctx, struct wp_err *err);
/* Pipelined (issue 20: one round trip less per new link): cb gets the fd
 * as soon as the route frame is sent, and the caller speaks agentlink at
 * once (hello first, then attach: alink_client lets them go together).
 * The node keeps those bytes until the lease checked out, as for
 * pool_connect, and answers nothing on success; a refusal reaches the
 * agentlink client as the same error frame (`stale_token`, `not_found`,
 * `unreachable`), i.e. a refused handshake, and the relay closes. Beyond
 * loopback (TLS) it is pool_connect: the answer is waited for. Nodes of
 * issue 20 and later (an older relay refuses bytes behind a route). */
int pool_connect_pipe(struct ev_loop *loop, const struct pool_claim_result *res, const char *env,
                      pool_connect_cb cb, void *ctx, struct wp_err *err);
/* The same, for a session with secrets in play: egress is
 * {"credentials":[...]} in the shape warmpool-egress's "add" takes
 * (egress_ctl.c; borrowed, it holds secrets: the frame is wiped once
 * sent). The node confines the sandbox to its egress proxy and registers
 * the credentials before it answers; cb's proxy is then the proxy's
 * "host:port" as the sandbox reaches it ("" when the sandbox has no
 * network). WP_ECONFIG: the node could not set the egress up (err says
 * why). */
struct json_t;
typedef void (*pool_connect_egress_cb)(void *ctx, int status, int fd, const char *proxy,
                                       const struct wp_err *err);
int pool_connect_egress(struct ev_loop *loop, const struct pool_claim_result *res,
                        const char *env, const struct json_t *egress,
                        pool_connect_egress_cb cb, void *ctx, struct wp_err *err);
/* Put a file at path inside a leased sandbox, read-only (node_files.c):
 * sent through its node's relay, attached there as a read-only mount.
 * Steals data (free()). cb's status: 0, WP_ESTALE / WP_ENOTFOUND (not the
 * lease's holder), WP_EIO (the node could not mount it: err says why),
 * WP_ETIMEDOUT, or a connection error. Same callback contract. data NULL
 * (len 0): take away what an earlier put mounted at path. */
#define POOL_FILE_MAX (64 << 20)
int pool_file_put(struct ev_loop *loop, const struct pool_claim_result *res, const char *env,
                  const char *path, char *data, size_t len, pool_done_cb cb, void *ctx,
                  struct wp_err *err);
/* Renew a lease; WP_ESTALE for a stale token, WP_ESTATE when the lease was
 * lost (its node died) or released. */
int pool_renew(struct pool_client *c, const char *env, const char *sandbox, uint64_t token,
               pool_done_cb cb, void *ctx, struct wp_err *err);
/* Is node draining (`warmpool node drain`, or its SIGTERM)? cb's status:
 * 1 draining, 0 not, < 0 Redis failed. A holder gives a draining node's
 * sandbox back as soon as it is idle, so the node can stop. */
int pool_node_draining(struct pool_client *c, const char *node, pool_done_cb cb, void *ctx,
                       struct wp_err *err);
/* The same for lease_ms (1 s .. 1 day) from now; pool_renew asks 60 s. */
int pool_renew_for(struct pool_client *c, const char *env, const char *sandbox, uint64_t token,
                   double lease_ms, pool_done_cb cb, void *ctx, struct wp_err *err);

/* ---- the egress proxy (egress.c, egress_tls.c; ARCHITECTURE.md) -------- */

#include "agentlink/agentlink.h"

struct snap_ctx;
struct snap_sandbox;
struct pool_egress;

/* Where a confined sandbox finds the node's CA certificate. */
#define POOL_EGRESS_CA_PATH "/etc/warmpool/egress-ca.pem"
#define POOL_EGRESS_PLACEHOLDER_LEN 48

struct pool_egress_cfg {
    const char *ca_dir;           /* ca.key (0600) and ca.pem; made at first start */
    const char *upstream_ca_file; /* trusted upstream besides the system's store; may be NULL */
    const char *const *pins;      /* "name=ipv4" answered before DNS, NULL-ended; may be NULL */
    int port;                     /* listened on at each confined sandbox's host end */
};

/* An environment_variable credential as the proxy uses it. Borrowed. */
struct pool_egress_cred {
    const char *placeholder; /* what the sandbox's variable holds (pool_egress_placeholder) */
    const char *secret;
    bool in_header, in_body; /* injection_location */
    bool any_host;           /* networking unrestricted */
    const char *const *hosts; /* limited: exact names or "*.suffix" */
    size_t n_hosts;
};

/* A sandbox behind the proxy. Strings borrowed for the call. */
struct pool_egress_sandbox {
    const char *sandbox_id;
    const char *host_addr, *sbx_addr; /* its veth's two ends (snap_net_egress_only) */
    bool limited;                     /* the environment's network: limited to ... */
    const char *const *allowed_hosts; /* ... these (names, IPv4, IPv4/prefix) */
    size_t n_allowed;
    const struct pool_egress_cred *creds;
    size_t n_creds;
};

/* What a confined sandbox's tools need in their environment: the proxy
 * and the CA for every common client (curl, OpenSSL, Python, Node, git). */
struct pool_egress_env {
    char url[40];
    struct alink_env_var vars[16];
    size_t n;
};

int pool_egress_open(struct ev_loop *loop, const struct pool_egress_cfg *cfg,
                     struct pool_egress **out, struct wp_err *err);
void pool_egress_close(struct pool_egress *px);
/* The CA certificate (PEM) sandboxes trust. Borrowed. */
const char *pool_egress_ca_pem(const struct pool_egress *px);
/* Serve a sandbox: a listener on its host end; connections from any
 * other address are refused. The proxy keeps copies of everything. */
int pool_egress_add(struct pool_egress *px, const struct pool_egress_sandbox *s,
                    struct wp_err *err);
/* Forget a sandbox: its listener and connections close, secrets wiped. */
void pool_egress_remove(struct pool_egress *px, const char *sandbox_id);
/* The node's side: install the CA (PEM) at POOL_EGRESS_CA_PATH in sb and
 * confine its network to the proxy's port (snap_net_egress_only); host
 * and addr get the veth's two ends, for pool_egress_add / the "add"
 * command. */
int pool_egress_confine(struct snap_ctx *ctx, const struct snap_sandbox *sb, int port,
                        const char *ca_pem, char host[16], char addr[16], struct wp_err *err);
/* The reference's host rule: exact, or "*.x.com" for names under x.com
 * (not x.com itself); no case. */
bool pool_egress_host_match(const char *pattern, const char *host);
/* NULL when h is a bare host name, an IPv4 address or a "*." wildcard
 * (a credential's allowed_hosts entry), else why not. */
const char *pool_egress_host_pattern_check(const char *h);

/* warmpool-egress's control socket (egress_ctl.c): the node adds and
 * removes sandboxes with one JSON line each. */
struct pool_egress_ctl;
int pool_egress_ctl_open(struct ev_loop *loop, struct pool_egress *px, const char *path,
                         struct pool_egress_ctl **out, struct wp_err *err);
void pool_egress_ctl_close(struct pool_egress_ctl *ctl);
/* "wpcred_" + 128 random bits in hex. 0 or -errno. */
int pool_egress_placeholder(char out[POOL_EGRESS_PLACEHOLDER_LEN]);
void pool_egress_env(const char *host_addr, int port, struct pool_egress_env *e);

#endif
