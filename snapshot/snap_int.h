/* snap_int.h - shared between the files of snapshot/ only. */
#ifndef SNAP_INT_H
#define SNAP_INT_H

#include "snapshot.h"

#include <linux/filter.h>

#include <stddef.h>

struct wp_err;

#define SNAP__MAX_CTRL 8
/* The key under which a sandbox's network namespace is external to CRIU. */
#define SNAP__NETNS_KEY "wp-netns"

enum snap__cg_layout { SNAP__CG_V1 = 1, SNAP__CG_V2 = 2 };

struct snap_ctx {
    char state_dir[256];
    char criu_bin[256];
    char criu_dump_conf[300];    /* criu config for dumps */
    char criu_restore_conf[300]; /* criu config for eager restores */
    char criu_lazy_conf[300];    /* criu config for lazy-pages restores */
    char criu_version[64];
    struct snap_probe probe;     /* how criu runs here (criu.c) */
    double criu_timeout_s;       /* each dump and restore */
    int criu_log_level;          /* restores and lazy-pages daemons, 1-4 */
    bool lazy_ready_poll;        /* snap_config.lazy_ready_poll */
    char kernel[128];
    char host_layer[300];      /* generated base layer for rootfs "host" */
    char criu_dump_uns_conf[300];    /* the same three for sandboxes in a user */
    char criu_restore_uns_conf[300]; /* namespace (empty-ns net: see userns.c) */
    char criu_lazy_uns_conf[300];
    bool userns;               /* a user namespace per sandbox (off only when
                                  the operator allowed running unconfined) */
    enum snap__cg_layout cg;
    bool unconfined;           /* snap_config.unconfined: confine.c does nothing */
    struct sock_fprog seccomp; /* the compiled filter (owned; confine.c) */
    /* v1: one mount per controller; v2: one tree. */
    int n_ctrl;
    char ctrl_name[SNAP__MAX_CTRL][16];
    char ctrl_path[SNAP__MAX_CTRL][128]; /* mount point of the hierarchy */
};

/* cgroup.c */
int snap__cg_detect(struct snap_ctx *ctx, const char *v2_root, struct wp_err *err);
/* Create warmpool/<id> in every hierarchy and apply limits. */
int snap__cg_create(struct snap_ctx *ctx, const char *id, const struct snap_limits *lim,
                    struct wp_err *err);
/* Put pid into warmpool/<id> in every hierarchy. */
int snap__cg_enter(struct snap_ctx *ctx, const char *id, pid_t pid, struct wp_err *err);
/* SIGKILL every process in warmpool/<id>, wait until empty, rmdir. */
int snap__cg_destroy(struct snap_ctx *ctx, const char *id, struct wp_err *err);
/* Number of processes in the cgroup, or < 0. */
int snap__cg_nprocs(struct snap_ctx *ctx, const char *id);
/* Whether pid is a member of warmpool/<id> (or below): a recorded pid is
 * only signalled while this holds, so a reused pid is never hit. */
bool snap__cg_contains(struct snap_ctx *ctx, const char *id, pid_t pid);
/* Whether warmpool/<id> exists in any hierarchy. */
bool snap__cg_exists(struct snap_ctx *ctx, const char *id);
/* The cgroup path relative to the hierarchy root, for CRIU. */
void snap__cg_relpath(const char *id, char *out, size_t cap);

/* sandbox.c: a fresh directory tree at tmp (removed first) with dirs
 * (NULL-terminated, relative), tmp/tmp made 1777. For generated layers. */
int snap__skeleton(const char *tmp, const char *const *dirs, struct wp_err *err);

/* template.c: serialise the template back to canonical JSON (caller frees). */
char *snap__template_json(const struct snap_template *t);

/* Write val to dir/file (a cgroup knob). */
int snap__cg_write(const char *dir, const char *file, const char *val, struct wp_err *err);

/* confine.c: the confinement layers (see its header comment). host_prepare
 * mounts the sandbox's writable-layer tmpfs (its path into rw: where the
 * overlay's upper and work dirs go), /dev/shm tmpfs and mask dir; proc runs
 * in stage 1 before pivot_root (root: the new root's host path, sbdir: the
 * sandbox's state dir); task runs last in stage 1 (capabilities,
 * no_new_privs, seccomp; init_keeps_admin: CAP_SYS_ADMIN stays for init
 * only, see drop_extra); drop_extra runs in a child of stage 1 before it
 * execs anything else. criu_dump/criu_restore add the external mounts
 * (opts is a criu_opts *). */
bool snap__confine_is_on(const struct snap_ctx *ctx);
int snap__confine_host_prepare(struct snap_ctx *ctx, const struct snap_sandbox *sb,
                               const struct snap_limits *lim, char *rw, size_t cap,
                               struct wp_err *err);
int snap__confine_move_layer(const char *src, const char *dst, struct wp_err *err);
int snap__confine_proc(const struct snap_ctx *ctx, const char *root, const char *sbdir,
                       struct wp_err *err);
int snap__confine_task(const struct snap_ctx *ctx, bool init_keeps_admin, struct wp_err *err);
/* Compile the seccomp filter into ctx once (snap_ctx_open); release frees it. */
int snap__confine_compile(struct snap_ctx *ctx, struct wp_err *err);
void snap__confine_release(struct snap_ctx *ctx);
int snap__confine_drop_extra(struct wp_err *err);
int snap__confine_criu_dump(const struct snap_ctx *ctx, void *opts);
int snap__confine_criu_restore(const struct snap_ctx *ctx, void *opts, const char *sbdir);
int snap__confine_cg_devices_v1(const struct snap_ctx *ctx, const char *dir, struct wp_err *err);
int snap__confine_cg_devices_v2(const char *dir, struct wp_err *err);

/* sandbox.c: records under state_dir/sandboxes/<id>/meta.json */
int snap__sandbox_dirs(struct snap_ctx *ctx, const char *id, struct snap_sandbox *sb,
                       struct wp_err *err);
int snap__meta_write(struct snap_ctx *ctx, const struct snap_sandbox *sb, const char *kind,
                     struct wp_err *err);
int snap__pid_write(const struct snap_sandbox *sb, struct wp_err *err);
/* The sandbox's /dev: a directory of device nodes in its state dir. */
int snap__make_dev(const struct snap_sandbox *sb, struct wp_err *err);
/* Mount the overlay root: lowers is "a:b:c", upper and work dirs in rw. */
int snap__mount_overlay(const struct snap_sandbox *sb, const char *lowers, const char *rw,
                        struct wp_err *err);
/* Remove everything of a sandbox by its dir (unmount, cgroup, files). */
int snap__teardown(struct snap_ctx *ctx, const char *id, pid_t init_pid, struct wp_err *err);
void snap__gen_id(const char *prefix, char *out, size_t cap);
/* Sandboxes restored from image (recorded, live or not yet collected);
 * the first one's id into first. */
int snap__image_users(struct snap_ctx *ctx, const char *image, char *first, size_t cap);

/* net.c: networked sandboxes (see its header comment). Prepare runs in
 * the caller after the overlay is mounted: a machine-wide address slot
 * (recorded in the sandbox dir), the nft rules, resolv.conf/hosts in the
 * root; *slot = -1 for mode none. Attach runs in the child that made the
 * sandbox's network namespace (boot's middle, restore's helper), with
 * sockets it opened in the host's namespace before unsharing: the veth,
 * addresses, default route; on failure msg says why. Release (teardown)
 * undoes prepare; a slot whose file no longer names this sandbox is left
 * alone. Sweep (gc) releases slots whose sandbox dir is gone. */
struct snap__net_fds {
    int nl;   /* NETLINK_ROUTE socket in the host's namespace */
    int inet; /* AF_INET socket in the host's namespace, for ioctls */
};
int snap__net_prepare(struct snap_ctx *ctx, const struct snap_sandbox *sb,
                      const struct snap_network *net, int *slot, struct wp_err *err);
int snap__net_host_fds(struct snap__net_fds *f);
void snap__net_close_fds(struct snap__net_fds *f);
int snap__net_attach(int slot, struct snap__net_fds *f, char *msg, size_t cap);
int snap__net_release(struct snap_ctx *ctx, const char *id, struct wp_err *err);
int snap__net_sweep(void);
/* Host and sandbox addresses of a slot, dotted quads. */
void snap__net_addrs(int slot, char host[16], char sbx[16]);

/* template.c: the "network" field of a template object (a manifest's). */
struct json_t;
int snap__template_network(struct json_t *tmpl, struct snap_network *net, struct wp_err *err);
void snap__network_free(struct snap_network *net);

/* userns.c: a user namespace per sandbox (see its header comment). Ranges
 * of SNAP__UNS_SIZE host ids, index N at base 2^30 + N * SIZE. */
#define SNAP__UNS_SIZE 65536u
uid_t snap__userns_base(int idx);
int snap__userns_index(uid_t base); /* -1 if base is no range's */
/* Whether this kernel lets us make user namespaces; why not into why. */
bool snap__userns_supported(char *why, size_t cap);
/* Whether a clone in a user namespace can be restored with lazy pages
 * (vm.unprivileged_userfaultfd = 1; see userns.c). */
bool snap__userns_lazy_ok(void);
/* A free range recorded machine-wide as owner's (an absolute dir): its
 * index, or < 0. Transfer passes it from one owner to another (a booted
 * sandbox to its image); release frees it only while owner holds it;
 * sweep (gc) frees ranges whose owner dir is gone. */
int snap__userns_alloc(const char *owner, struct wp_err *err);
int snap__userns_transfer(int idx, const char *from, const char *to, struct wp_err *err);
void snap__userns_release(int idx, const char *owner);
int snap__userns_sweep(void);
/* Write "0 base SIZE" into pid's uid_map and gid_map. */
int snap__userns_write_maps(pid_t pid, uid_t base, struct wp_err *err);
/* A user namespace with the range's maps: an fd (caller closes). */
int snap__userns_fd(uid_t base, struct wp_err *err);
int snap__userns_idmap_mount(const char *src, const char *dst, int usernsfd,
                             struct wp_err *err);
/* Sandbox dir 0710 root:base, rw/upper and rw/work (rw: the dir that holds
 * them, confine.c's tmpfs or the sandbox dir) owned by base. A booted
 * sandbox, owner of its range, records the index in <dir>/userns (read
 * back by snap__userns_read, -1 if none; teardown releases it). */
int snap__userns_own_dirs(const struct snap_sandbox *sb, const char *rw, uid_t base,
                          struct wp_err *err);
int snap__userns_record(const struct snap_sandbox *sb, int idx, struct wp_err *err);
int snap__userns_read(const char *dir);
/* The /etc files net.c writes, given to root inside (after prepare). */
int snap__userns_own_etc(const struct snap_sandbox *sb, uid_t base, struct wp_err *err);
/* The overlay's lowers for a sandbox: those not owned by base are used
 * through idmapped mounts at <dir>/lowerN. out gets "a:b:c". */
int snap__userns_lowers(const struct snap_sandbox *sb, uid_t base, const char *const *lowers,
                        int n, char *out, size_t cap, struct wp_err *err);
/* Loopback up and, for slot >= 0, the veth, in the network namespace of
 * pid (owned by the sandbox's user namespace): from a child of ours, or
 * (here: a single-threaded caller) by entering it and coming back. */
int snap__userns_net(pid_t pid, int slot, bool here, struct wp_err *err);
/* Boot: the middle calls child (unshare CLONE_NEWUSER | flags, wait for
 * the host, become root inside); the caller calls parent (maps, network)
 * with the other end of the socketpair sync. */
int snap__userns_parent(int sync, pid_t mid, uid_t base, int slot, struct wp_err *err);
int snap__userns_child(int sync, int flags, char *msg, size_t cap);

/* checkpoint.c: the last lines of a criu log, for error messages, and a
 * word on its filesystem when that is (nearly) full. */
void snap__log_excerpt(const char *path, char *out, size_t cap);
uint64_t snap__du(const char *path);

/* criu.c. In a child about to run criu (or libcriu's swrk): the mode's
 * environment (CRIU_FAULT set or removed). */
void snap__criu_env(enum snap_criu_mode mode);
/* Wait for child pid until deadline (monotonic ns): 0 when it exited
 * (*status set; 0 if another reaper took it), WP_ETIMEDOUT, or < 0. */
int snap__wait_deadline(pid_t pid, uint64_t deadline_ns, int *status);
/* SIGKILL pid's process group and pid, reap pid. */
void snap__kill_group(pid_t pid);
int snap__criu_version(const char *criu, char *out, size_t cap, struct wp_err *err);
void snap__criu_key(const char *criu, const char *version, char *out, size_t cap);

#endif
