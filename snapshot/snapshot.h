/* snapshot.h - sandboxes that boot, checkpoint and restore (prefix snap_).
 *
 * A template describes an environment; snap_boot() starts it as a sandbox
 * (new PID, mount, UTS, IPC, network and cgroup namespaces, an overlay root,
 * pivot_root, its own /proc and /dev, cgroup limits); snap_checkpoint()
 * dumps it with CRIU into an image; snap_restore() starts a clone of an
 * image into a fresh overlay; snap_destroy() removes every trace.
 *
 * Threading: every function here blocks (fork, CRIU) and is meant for a
 * helper process or the CLI, never a libev loop thread. The process that
 * calls snap_ctx_open() becomes a child subreaper, so the sandboxes it
 * boots or restores are its children: it must reap them (snap_destroy
 * does, or an ev_child watcher in a daemon).
 */
#ifndef SNAPSHOT_H
#define SNAPSHOT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct wp_err;

struct snap_limits {
    uint64_t memory_bytes; /* 0 = no limit */
    uint32_t pids;         /* 0 = no limit */
    uint32_t cpu_millis;   /* 1000 = one CPU; 0 = no limit */
    uint64_t disk_bytes;   /* writable layer (a tmpfs); 0 = the default, 1 GiB */
    uint64_t shm_bytes;    /* /dev/shm; 0 = the default, 64 MiB */
};

#define SNAP_MAX_BINDS 8
#define SNAP_MAX_ALLOWED_HOSTS 64

/* A sandbox's network (template "network"). none: loopback only (the
 * default: no host network unless configured). unrestricted: a veth to the
 * host and NAT to the outside, except private, link-local and the host's
 * own addresses. limited: the same, but only DNS and allowed_hosts
 * (hostnames resolved when the sandbox is set up, IPv4 addresses or
 * IPv4/prefix) are reachable. See ARCHITECTURE.md (snapshot/, Network). */
enum snap_net_mode { SNAP_NET_NONE = 0, SNAP_NET_UNRESTRICTED, SNAP_NET_LIMITED };
struct snap_network {
    enum snap_net_mode mode;
    int n_hosts;
    char **hosts; /* allowed_hosts (limited only); owned by the template */
};

/* An environment template. Loaded from JSON (see ARCHITECTURE.md):
 *   {"name": "py", "rootfs": "host" | "/dir", "init": ["/bin/sh","-c","..."],
 *    "env": {"K": "V"}, "workdir": "/work", "hostname": "sandbox",
 *    "limits": {"memory_mb": 512, "pids": 256, "cpu": 1.0},
 *    "setup": ["cmd", ...], "ready_file": "/tmp/ready", "ready_timeout_s": 30,
 *    "network": {"mode": "none" | "unrestricted" | "limited",
 *                "allowed_hosts": ["deb.debian.org", "203.0.113.7", "198.18.0.0/24"]}}
 * Owned by whoever loaded it; free with snap_template_free(). */
struct snap_template {
    char *name;
    char *rootfs;       /* absolute directory (read-only lower layer) or "host" */
    char **init;        /* argv, NULL-terminated */
    char **env;         /* "K=V", NULL-terminated */
    char *workdir;
    char *hostname;
    char **setup;       /* shell commands run before init starts */
    char *ready_file;   /* absolute path inside the sandbox, or NULL */
    double ready_timeout_s;
    struct snap_limits limits;
    /* Kernel samepage merging for this environment's sandboxes: their
     * memory is mergeable (PR_SET_MEMORY_MERGE), so clones of one image can
     * share identical pages. Off by default: merging across sandboxes is a
     * timing side channel (see ARCHITECTURE.md). */
    bool ksm;
    /* The init sets the hostname per session (the hands): it keeps
     * CAP_SYS_ADMIN for itself and must drop it from the bounding set
     * before it runs anything (agentlink does). */
    bool init_sets_hostname;
    /* Host paths bound read-only into the sandbox (tools, the hands
     * binary, datasets): "binds": [{"source": "/host", "target": "/in"}] */
    int n_binds;
    struct snap_bind { char *source, *target; } binds[SNAP_MAX_BINDS];
    struct snap_network network;
    char digest[65];    /* sha256 of the canonical JSON, hex */
};

int snap_template_parse(const char *json, size_t len, struct snap_template **out,
                        struct wp_err *err);
int snap_template_load(const char *path, struct snap_template **out, struct wp_err *err);
void snap_template_free(struct snap_template *t);

/* How this host runs criu (criu.c). `criu check` passing is not enough:
 * on some CPUs the hardware breakpoint compel stops a task with never
 * fires and every dump hangs; criu's FI_NO_BREAKPOINTS switch
 * (CRIU_FAULT=130) works there. The probe dumps and restores a throwaway
 * process under a deadline and picks the first mode that works:
 *   DEFAULT  criu as it is
 *   NOBP     every criu run (swrk, CLI, lazy-pages) with CRIU_FAULT=130
 *   NONE     neither: no checkpoint or restore; a node boots cold only */
enum snap_criu_mode { SNAP_CRIU_UNKNOWN = 0, SNAP_CRIU_DEFAULT, SNAP_CRIU_NOBP, SNAP_CRIU_NONE };
/* "default", "no-breakpoints", "none" ("unknown" for UNKNOWN). */
const char *snap_criu_mode_name(enum snap_criu_mode m);
/* The names above, and "auto" (or NULL) -> UNKNOWN (probe). WP_EINVAL_INPUT otherwise. */
int snap_criu_mode_parse(const char *s, enum snap_criu_mode *out);

#define SNAP_PROBE_CACHE_DIR "/var/cache/warmpool"

struct snap_probe_config {
    const char *criu_bin;  /* default WP_PREFIX/bin/criu */
    const char *cache_dir; /* NULL: SNAP_PROBE_CACHE_DIR; "": no cache */
    const char *work_dir;  /* scratch parent, default /tmp (failed modes' logs stay there) */
    double deadline_s;     /* per criu step; default 5 */
    bool force;            /* probe even where a cached answer exists */
};

struct snap_probe {
    enum snap_criu_mode mode;
    bool lazy_ok;          /* lazy-pages restores work in that mode */
    bool cached;           /* read from the cache, not probed now */
    bool forced;           /* set by the operator (config), not probed */
    bool default_untraced; /* default mode hung: after criu was killed the
                              task it held ran on, untraced */
    double dump_ms, restore_ms, lazy_ms; /* the probe's steps in that mode */
    double probed_ms;      /* what the probe took when it ran */
    char key[512];         /* criu path + version | kernel | CPU model */
    char why[512];         /* what failed, one line; "" when all works */
};

/* Probe (or read the cached answer). Blocks for up to a few deadlines;
 * never hangs. < 0 only when criu cannot run at all (not installed). */
int snap_criu_probe(const struct snap_probe_config *cfg, struct snap_probe *out,
                    struct wp_err *err);
/* The probe as one JSON object: mode, lazy_ok, source (probed, cached,
 * configured), why, key and the steps' times. Caller frees; NULL on ENOMEM. */
char *snap_probe_json(const struct snap_probe *p);

/* Node-wide context. */
struct snap_config {
    const char *state_dir; /* default /var/lib/warmpool */
    const char *criu_bin;  /* default WP_PREFIX/bin/criu, env WARMPOOL_CRIU */
    /* Every sandbox gets its own user namespace (root inside is an
     * unprivileged host id range). Where the host cannot make one,
     * snap_ctx_open fails unless this is set; it then logs why and runs
     * sandboxes as the host's root. */
    bool insecure_allow_unconfined;
    /* Benchmarks and tests only: no user namespace even where the host
     * has them. Needs insecure_allow_unconfined. */
    bool no_userns;
    /* "auto" (NULL: env WARMPOOL_CRIU_MODE, else auto) probes; a mode name
     * forces it. */
    const char *criu_mode;
    double criu_timeout_s;   /* each dump/restore; 0: env WARMPOOL_CRIU_TIMEOUT, else 120 */
    double probe_timeout_s;  /* each probe step; 0: 5 */
    const char *probe_cache_dir; /* NULL: env WARMPOOL_CRIU_CACHE, else SNAP_PROBE_CACHE_DIR */
    /* Sandboxes without confine.c's layers (capabilities, seccomp, /proc
     * masks, device list, disk limits). Only for the benchmark's baseline
     * and an operator's --insecure-allow-unconfined. */
    bool unconfined;
    /* A cgroup v2 tree to use instead of detecting /sys/fs/cgroup (NULL:
     * detect). Hybrid hosts keep one beside their v1 hierarchies
     * (/sys/fs/cgroup/unified), which is how the v2 path is tested on a
     * v1 machine. */
    const char *cgroup2_root;
    /* criu's log level for restores and lazy-pages daemons, 1 (errors) to
     * 4 (debug, each VMA, mount and page transfer); 0: env
     * WARMPOOL_CRIU_LOG_LEVEL, else 4. Errors reach a failed restore's
     * message at every level; the rest costs a write per line. */
    int criu_log_level;
    /* How a restore waits for its lazy-pages daemon to listen: false (the
     * default) on the daemon's --status-fd; true the way before issue 20,
     * checking /proc every 0.1 ms (env WARMPOOL_CRIU_LAZY_READY=poll; kept
     * for comparison, bench/clonecpu_bench.c). */
    bool lazy_ready_poll;
};
struct snap_ctx;

/* Creates the state dir, detects the cgroup layout, finds how criu runs
 * here (snap_criu_probe, cached), makes the caller a child subreaper.
 * Caller owns *out (snap_ctx_close). */
int snap_ctx_open(const struct snap_config *cfg, struct snap_ctx **out, struct wp_err *err);
void snap_ctx_close(struct snap_ctx *ctx);
const char *snap_ctx_state_dir(const struct snap_ctx *ctx);
/* Whether sandboxes get their own user namespace. */
bool snap_ctx_userns(const struct snap_ctx *ctx);
/* "v1" or "v2": the cgroup layout found. */
const char *snap_ctx_cgroup_layout(const struct snap_ctx *ctx);
/* How criu runs here (borrowed for the ctx's life). Mode NONE: every
 * checkpoint and restore fails at once with WP_ECRIU and probe->why. */
const struct snap_probe *snap_ctx_criu(const struct snap_ctx *ctx);

struct snap_sandbox {
    char id[64];
    pid_t init_pid;        /* in the host's PID namespace */
    pid_t lazy_pid;        /* the clone's `criu lazy-pages` daemon, 0 if none; it runs in
                              the clone's cgroup and is the owner's child to reap */
    char root[512];        /* host path of the sandbox's root (overlay mount) */
    char dir[512];         /* its state dir */
    char image[128];       /* image it was restored from, "" when booted */
    double boot_ms;        /* boot to ready, or restore duration */
    double ready_ms;       /* included in boot_ms: the wait for ready_file */
    double prep_ms;        /* restore: dirs, overlay, cgroups before criu */
    double criu_ms;        /* restore: the libcriu call (swrk start to reply) */
    double helper_cpu_ms;  /* restore: CPU of the restoring helper itself, and */
    double criu_cpu_ms;    /* of the criu swrk it ran (the lazy-pages daemon and
                              the restored tasks are the clone's own processes) */
};

/* Confine a networked sandbox to the node's egress proxy (used while a
 * secret is in play): it forwards nothing (DNS included) and may reach
 * only tcp `port` on its host end. host/sbx get the link's two addresses
 * (the proxy listens on host; a connection from sbx is this sandbox).
 * Lasts until the sandbox is destroyed. WP_ESTATE: network mode none. */
int snap_net_egress_only(struct snap_ctx *ctx, const struct snap_sandbox *sb, int port,
                         char host[16], char sbx[16], struct wp_err *err);

/* Progress of long steps (setup commands' output, phases). */
typedef void (*snap_progress_cb)(void *arg, const char *line);

/* Boot a sandbox from a template, run its setup, start its init and wait
 * for ready_file. id may be NULL (generated). Caller owns *out
 * (snap_destroy or snap_sandbox_free). On failure nothing is left. */
int snap_boot(struct snap_ctx *ctx, const struct snap_template *t, const char *id,
              snap_progress_cb progress, void *arg, struct snap_sandbox **out,
              struct wp_err *err);

struct snap_image_info {
    uint64_t pages_bytes;  /* memory pages in the image */
    uint64_t image_bytes;  /* whole image dir */
    uint64_t layer_bytes;  /* the template's writable layer */
    double dump_ms;
};

/* Checkpoint a booted sandbox into image `name` (must not exist) and end
 * the sandbox: its processes are gone, its writable layer becomes the
 * image's read-only layer. Writes manifest.json. On failure the image is
 * not created and the sandbox is destroyed; criu's log excerpt is in err
 * and the full log path too. `sb` is freed in every case. */
int snap_checkpoint(struct snap_ctx *ctx, struct snap_sandbox *sb, const struct snap_template *t,
                    const char *name, double boot_ms, struct snap_image_info *info,
                    struct wp_err *err);

struct snap_restore_opts {
    bool lazy;          /* userfaultfd lazy pages: memory is served on first touch */
    const char *id;     /* NULL = generated */
    int merge;          /* 0: mergeable as the image's template says ("ksm"),
                           1: mergeable, -1: not (a node's own policy wins) */
};

/* Restore a clone of image `name` into a fresh overlay and new namespaces.
 * Caller owns *out. On failure nothing is left. */
int snap_restore(struct snap_ctx *ctx, const char *name, const struct snap_restore_opts *opts,
                 struct snap_sandbox **out, struct wp_err *err);

/* The same in two steps, so several restores run at once or a daemon's
 * loop waits for one: start forks the restoring helper and returns; the
 * job's fd becomes readable (then EOF) when it is done; finish collects
 * the result (it blocks until then) and frees the job. If start fails
 * there is no job; finish is called exactly once per job. */
struct snap_restore_job;
int snap_restore_start(struct snap_ctx *ctx, const char *name, const struct snap_restore_opts *opts,
                       struct snap_restore_job **job, struct wp_err *err);
int snap_restore_job_fd(const struct snap_restore_job *job);
/* Past the job's deadline (snap_config.criu_timeout_s from its start): a
 * daemon then calls finish, which kills what is left and fails it. finish
 * itself never waits past the deadline. */
bool snap_restore_job_expired(const struct snap_restore_job *job);
int snap_restore_finish(struct snap_ctx *ctx, struct snap_restore_job *job,
                        struct snap_sandbox **out, struct wp_err *err);

/* What a sandbox's cgroup holds (warmpool/<id> and below): usage (v1
 * memory.usage_in_bytes, v2 memory.current) and its kernel part (v1
 * memory.kmem.usage_in_bytes, v2 memory.stat "kernel"; 0 where neither
 * exists). Kernel memory (page tables, slab) is never shared between
 * clones, so it is private to the sandbox. WP_ENOTFOUND when the cgroup is
 * gone. Cheap (a few small file reads): fine on a daemon's loop. */
struct snap_cgroup_mem {
    uint64_t usage;
    uint64_t kernel;
};
int snap_sandbox_cgroup_mem(struct snap_ctx *ctx, const char *id, struct snap_cgroup_mem *out,
                            struct wp_err *err);
/* Pids of the processes in the sandbox's cgroup and below (its init, its
 * children, a lazy-pages daemon). Stores at most cap; returns how many it
 * stored, or < 0. */
int snap_sandbox_pids(struct snap_ctx *ctx, const char *id, pid_t *pids, int cap,
                      struct wp_err *err);

/* Kill the tree, reap, unmount, remove cgroups and dirs; frees sb. */
int snap_destroy(struct snap_ctx *ctx, struct snap_sandbox *sb, struct wp_err *err);
/* Destroy by id (for the CLI, and for sandboxes of a dead earlier run). */
int snap_destroy_id(struct snap_ctx *ctx, const char *id, struct wp_err *err);
void snap_sandbox_free(struct snap_sandbox *sb);
/* Record the calling process as the sandbox's owner (gc removes
 * sandboxes whose owner is gone): for a sandbox a helper booted and
 * exited. One small file written (atomically). */
int snap_sandbox_adopt(struct snap_ctx *ctx, const struct snap_sandbox *sb, struct wp_err *err);
/* A handle on a running sandbox from its record (another process booted
 * it). Caller owns *out. WP_ENOTFOUND, or WP_ESTATE when not running. */
int snap_sandbox_open(struct snap_ctx *ctx, const char *id, struct snap_sandbox **out,
                      struct wp_err *err);

/* Remove sandboxes whose owning process is gone (a killed earlier run) and
 * half-made images. An owner that is a zombie is gone (its parent may reap
 * it late or never). Returns the number cleaned, or < 0. */
int snap_gc(struct snap_ctx *ctx, struct wp_err *err);

/* A sandbox gc left in place although it may be an orphan: its owner is
 * another process that still runs, or its destroy failed. why is borrowed
 * for the call. */
typedef void (*snap_gc_left_cb)(void *arg, const char *id, const char *why);
/* snap_gc for a process that keeps making sandboxes while gc runs (a
 * node's periodic check, from a helper). Every array is borrowed for the
 * call; NULL opts = snap_gc. */
struct snap_gc_opts {
    const char *const *keep_ids; /* sandboxes the caller holds */
    int n_keep_ids;
    const pid_t *keep_owners;    /* the caller and its helpers (alive or just
                                    exited): what they made is in use */
    int n_keep_owners;
    uint64_t since_ms;           /* wall ms the caller took its lists: younger
                                    sandboxes are not judged (0: judge all) */
    bool sandboxes_only;         /* leave partial images (a build may be writing) */
    snap_gc_left_cb on_left;     /* may be NULL */
    void *arg;
};
int snap_gc_with(struct snap_ctx *ctx, const struct snap_gc_opts *opts, struct wp_err *err);

/* List sandboxes / images: calls cb once per entry with a JSON object
 * (borrowed for the call). Returns count or < 0. */
typedef void (*snap_list_cb)(void *arg, const char *json);
int snap_list_sandboxes(struct snap_ctx *ctx, snap_list_cb cb, void *arg, struct wp_err *err);
int snap_list_images(struct snap_ctx *ctx, snap_list_cb cb, void *arg, struct wp_err *err);
/* Whether this context can restore image `name`: WP_ENOTFOUND, a damaged
 * manifest (WP_EINVAL_INPUT), or WP_ESTATE for one it must not use (made by
 * an older build without a user namespace, on a node that confines). */
int snap_image_check(struct snap_ctx *ctx, const char *name, struct wp_err *err);
/* Delete an image; WP_ESTATE while sandboxes restored from it exist. */
int snap_image_delete(struct snap_ctx *ctx, const char *name, struct wp_err *err);

/* Build a minimal rootfs directory around the host's static busybox (for
 * trivial environments and tests). Idempotent: a complete dir is kept. */
int snap_rootfs_busybox(const char *dir, struct wp_err *err);

/* Valid ids and image names: [A-Za-z0-9][A-Za-z0-9._-]{0,62}. */
bool snap_name_valid(const char *s);

#endif
