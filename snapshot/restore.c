/* restore.c - a clone of an image: fresh overlay (new empty upper over the
 * image's layer and the rootfs), new cgroup, CRIU restore.
 *
 * The restore runs in a short-lived helper process that first joins the
 * clone's cgroups, so criu and the restored tree are born inside them (no
 * window where the clone runs unlimited). criu_restore_child() makes the
 * restored init a child of the helper; when the helper exits it is
 * reparented to the caller, the subreaper, which reaps it.
 *
 * Lazy restores start `criu lazy-pages` first (in the clone's cgroup, its
 * work dir the clone's dir) and restore with lazy pages on: memory is then
 * served by userfaultfd on first touch and copied in the background.
 */
#define WP_LOG_COMPONENT "snap"
#include "snap_int.h"

#include <criu/criu.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/timeutil.h"

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#endif

struct manifest {
    char lower[512];
    bool host_usr;
    bool ksm;
    int n_binds;
    char bind_source[SNAP_MAX_BINDS][512];
    struct snap_limits limits;
    struct snap_network net;
    int uns;             /* the image's id range (userns.c), -1: none */
};

static int manifest_load(struct snap_ctx *ctx, const char *name, struct manifest *m,
                         struct wp_err *err)
{
    char path[700];
    json_error_t jerr;
    json_t *o, *v, *lim;
    int rc = 0;

    snprintf(path, sizeof(path), "%s/images/%s/manifest.json", ctx->state_dir, name);
    o = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!o) {
        if (access(path, F_OK) < 0)
            return wp_err_set(err, WP_ENOTFOUND, "no image \"%s\"", name);
        return wp_err_set(err, WP_EINVAL_INPUT, "%s: %s", path, jerr.text);
    }
    v = json_object_get(o, "lower");
    if (!json_is_string(v) || json_string_value(v)[0] != '/' ||
        json_string_length(v) >= sizeof(m->lower) || strchr(json_string_value(v), ',') ||
        strchr(json_string_value(v), ':')) {
        rc = wp_err_set(err, WP_EINVAL_INPUT, "%s: bad \"lower\"", path);
        goto out;
    }
    strcpy(m->lower, json_string_value(v));
    m->host_usr = json_is_true(json_object_get(o, "host_usr"));
    v = json_object_get(o, "userns_base");
    m->uns = json_is_integer(v) ? snap__userns_index((uid_t)json_integer_value(v)) : -1;
    if (json_is_integer(v) && m->uns < 0) {
        rc = wp_err_set(err, WP_EINVAL_INPUT, "%s: bad \"userns_base\"", path);
        goto out;
    }
    m->ksm = json_is_true(json_object_get(json_object_get(o, "template"), "ksm"));
    memset(&m->limits, 0, sizeof(m->limits));
    json_t *binds = json_object_get(json_object_get(o, "template"), "binds"), *b;
    size_t i;
    m->n_binds = 0;
    json_array_foreach(binds, i, b) {
        v = json_object_get(b, "source");
        if (i >= SNAP_MAX_BINDS || !json_is_string(v) || json_string_value(v)[0] != '/' ||
            json_string_length(v) >= sizeof(m->bind_source[0])) {
            rc = wp_err_set(err, WP_EINVAL_INPUT, "%s: bad \"binds\"", path);
            goto out;
        }
        strcpy(m->bind_source[m->n_binds++], json_string_value(v));
    }
    if ((rc = snap__template_network(json_object_get(o, "template"), &m->net, err)) < 0) {
        wp_err_wrap(err, "%s", path);
        goto out;
    }
    lim = json_object_get(json_object_get(o, "template"), "limits");
    v = json_object_get(lim, "memory_mb");
    if (json_is_number(v) && json_number_value(v) > 0)
        m->limits.memory_bytes = (uint64_t)(json_number_value(v) * 1048576.0);
    v = json_object_get(lim, "pids");
    if (json_is_integer(v) && json_integer_value(v) > 0 && json_integer_value(v) < (1 << 22))
        m->limits.pids = (uint32_t)json_integer_value(v);
    v = json_object_get(lim, "cpu");
    if (json_is_number(v) && json_number_value(v) > 0 && json_number_value(v) <= 1024)
        m->limits.cpu_millis = (uint32_t)(json_number_value(v) * 1000 + 0.5);
    v = json_object_get(lim, "disk_mb");
    if (json_is_integer(v) && json_integer_value(v) > 0 && json_integer_value(v) <= 1 << 20)
        m->limits.disk_bytes = (uint64_t)json_integer_value(v) << 20;
    v = json_object_get(lim, "shm_mb");
    if (json_is_integer(v) && json_integer_value(v) > 0 && json_integer_value(v) <= 1 << 16)
        m->limits.shm_bytes = (uint64_t)json_integer_value(v) << 20;
out:
    json_decref(o);
    return rc;
}

/* The one rule an image must pass on this context, given its manifest. */
static int manifest_usable(const struct snap_ctx *ctx, const char *name,
                           const struct manifest *m, struct wp_err *err)
{
    if (ctx->userns && m->uns < 0)
        return wp_err_set(err, WP_ESTATE, "image \"%s\" was made without a user namespace: its "
                          "clones would run as the host's root; rebuild it", name);
    return 0;
}

int snap_image_check(struct snap_ctx *ctx, const char *name, struct wp_err *err)
{
    struct manifest m;
    int rc;

    if (!snap_name_valid(name))
        return wp_err_set(err, WP_EINVAL_INPUT, "bad image name \"%s\"", name);
    if ((rc = manifest_load(ctx, name, &m, err)) < 0)
        return rc;
    snap__network_free(&m.net);
    return manifest_usable(ctx, name, &m, err);
}

static double tv_ms(struct timeval t)
{
    return (double)t.tv_sec * 1e3 + (double)t.tv_usec / 1e3;
}

static void hwrite(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void hwrite(int fd, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n > (int)sizeof(line) - 1)
        n = sizeof(line) - 1;
    if (n > 0 && write(fd, line, n) < 0)
        return;
}

/* Whether process pid holds a listening Unix socket yet. criu binds its
 * lazy-pages socket by a relative name, so /proc/net/unix cannot tell one
 * daemon's from another's: match the inodes of pid's own fds. A test
 * connect() would not do: the daemon takes its first connection for the
 * restore's. */
static bool pid_listening(pid_t pid)
{
    char path[128], link[64], line[1024];
    unsigned long inodes[16];
    int n = 0;
    bool found = false;

    for (int fd = 0; fd < 64 && n < 16; fd++) {
        snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)pid, fd);
        ssize_t l = readlink(path, link, sizeof(link) - 1);
        if (l <= 0)
            continue;
        link[l] = '\0';
        if (sscanf(link, "socket:[%lu]", &inodes[n]) == 1)
            n++;
    }
    FILE *f = n ? fopen("/proc/net/unix", "re") : NULL;
    if (!f)
        return false;
    while (!found && fgets(line, sizeof(line), f)) {
        unsigned long flags, ino;
        /* Num RefCount Protocol Flags Type St Inode Path */
        if (sscanf(line, "%*s %*s %*s %lx %*s %*s %lu", &flags, &ino) != 2 || !(flags & 0x10000))
            continue;
        for (int i = 0; i < n; i++)
            found |= inodes[i] == ino;
    }
    fclose(f);
    return found;
}

/* The way this file waited until issue 20 (snap_config.lazy_ready_poll):
 * check every 0.1 ms whether the daemon listens yet. 0 once it does. */
static int poll_listening(pid_t pid)
{
    for (int i = 0; i < 5000; i++) {
        if (pid_listening(pid))
            return 0;
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return -1;
        struct timespec ts = { 0, 100 * 1000 };
        nanosleep(&ts, NULL);
    }
    return -1;
}

/* Start `criu lazy-pages` for this clone and wait until it listens: it
 * writes one byte on its --status-fd then (criu's own readiness signal), so
 * the helper sleeps in poll() instead of checking /proc while criu starts
 * (that check cost the helper ~0.3 ms of CPU a round, every 0.1 ms). */
static pid_t start_lazy_daemon(struct snap_ctx *ctx, const char *name, const char *images,
                               const char *workdir, int out)
{
    char level[8];
    int sp[2];
    pid_t pid;

    snprintf(level, sizeof(level), "-v%d", ctx->criu_log_level);
    if (pipe2(sp, O_CLOEXEC) < 0) {
        hwrite(out, "fail criu lazy-pages: pipe: %s", strerror(errno));
        return -1;
    }
    pid = fork();
    if (pid < 0) {
        close(sp[0]);
        close(sp[1]);
        return -1;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(devnull, 1);
        dup2(devnull, 2);
        int s = dup(sp[1]); /* >= 3, without O_CLOEXEC */
        if (s < 0 || dup2(s, 3) < 0)
            _exit(127);
        wp_close_fds_from(4);
        /* Polled, it must not write to a pipe no one reads (SIGPIPE). */
        execl(ctx->criu_bin, ctx->criu_bin, "lazy-pages", "--images-dir", images,
              "--work-dir", workdir, "-o", "lazy-pages.log", level,
              ctx->lazy_ready_poll ? NULL : "--status-fd", "3", (char *)NULL);
        _exit(127);
    }
    close(sp[1]);
    if (ctx->lazy_ready_poll) {
        close(sp[0]);
        if (poll_listening(pid) == 0)
            return pid;
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        hwrite(out, "fail criu lazy-pages did not start listening (log: %s/images/%s.lazy-pages-failed.log)",
               ctx->state_dir, name);
        return -1;
    }
    struct pollfd pf = { .fd = sp[0], .events = POLLIN };
    char c = 1;
    int n;
    do
        n = poll(&pf, 1, 5000);
    while (n < 0 && errno == EINTR);
    ssize_t r = n > 0 ? read(sp[0], &c, 1) : -1;
    close(sp[0]);
    if (r == 1 && c == '\0')
        return pid;
    if (n == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        hwrite(out, "fail criu lazy-pages did not start listening within 5 s (log: "
                    "%s/images/%s.lazy-pages-failed.log)", ctx->state_dir, name);
        return -1;
    }
    kill(pid, SIGKILL); /* closed its status fd without saying ready: exiting */
    waitpid(pid, NULL, 0);
    hwrite(out, "fail criu lazy-pages exited at start (log: %s/images/%s.lazy-pages-failed.log)",
           ctx->state_dir, name);
    return -1;
}

/* Unshare a network namespace, bring its loopback up; returns an fd of it. */
static int new_netns(int out)
{
    struct ifreq ifr = { 0 };
    int s, fd;

    if (unshare(CLONE_NEWNET) < 0) {
        hwrite(out, "fail unshare network namespace: %s", strerror(errno));
        return -1;
    }
    s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    strcpy(ifr.ifr_name, "lo");
    if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0 ||
        (ifr.ifr_flags |= IFF_UP | IFF_RUNNING, ioctl(s, SIOCSIFFLAGS, &ifr) < 0)) {
        hwrite(out, "fail bring loopback up: %s", strerror(errno));
        return -1;
    }
    close(s);
    fd = open("/proc/self/ns/net", O_RDONLY);
    if (fd < 0)
        hwrite(out, "fail open /proc/self/ns/net: %s", strerror(errno));
    return fd;
}

/* In a user namespace criu makes the clone's network namespace itself
 * (empty-ns net); it calls back once its root task is in it, before any
 * task is restored: loopback up and the clone's veth then. The callback
 * has no argument: the helper is a process of its own, so a static. */
static struct {
    int slot;
    char msg[300];
} uns_net;

static int notify_cb(char *action, criu_notify_arg_t na)
{
    struct wp_err err;

    if (strcmp(action, "setup-namespaces") != 0)
        return 0;
    if (snap__userns_net(criu_notify_pid(na), uns_net.slot, true, &err) < 0) {
        snprintf(uns_net.msg, sizeof(uns_net.msg), "%s", err.msg);
        return -1;
    }
    return 0;
}

/* The helper: never returns. Reports "pid N [lazy M]" or "fail text". */
/* The clone's file system and cgroups: /dev, the rw tmpfs, the overlay on
 * the image's layers, the cgroups with its limits. Run by the helper, not
 * the caller (whose meta.json, written before the fork, names the caller
 * as the owner, so no gc takes the clone for a dead helper's): it is ~2-5 ms of mkdir, mount and cgroup writes
 * that blocked the node's event loop (and the relay traffic it carries,
 * such as the attach of the claim that asked for this refill). A failure
 * is the restore's; teardown removes what was made. */
static int clone_setup(struct snap_ctx *ctx, const char *name, const struct manifest *m,
                       const struct snap_sandbox *sb, struct wp_err *err)
{
    char lowers[1300], rw[600];
    int rc;

    snprintf(lowers, sizeof(lowers), "%s/images/%s/layer:%s", ctx->state_dir, name, m->lower);
    if ((rc = snap__make_dev(sb, err)) < 0 ||
        (rc = snap__confine_host_prepare(ctx, sb, &m->limits, rw, sizeof(rw), err)) < 0)
        return rc;
    if (m->uns >= 0) {
        /* The clone's upper and work dirs belong to the image's range;
         * layers owned by the host's root are seen through idmapped mounts. */
        char layer[700];
        snprintf(layer, sizeof(layer), "%s/images/%s/layer", ctx->state_dir, name);
        const char *ls[2] = { layer, m->lower };
        uid_t base = snap__userns_base(m->uns);
        /* The image owns the range, not the clone: nothing recorded. */
        if ((rc = snap__userns_own_dirs(sb, rw, base, err)) < 0 ||
            (rc = snap__userns_lowers(sb, base, ls, 2, lowers, sizeof(lowers), err)) < 0)
            return rc;
    }
    if ((rc = snap__mount_overlay(sb, lowers, rw, err)) < 0 ||
        (rc = snap__cg_create(ctx, sb->id, &m->limits, err)) < 0)
        return rc;
    return 0;
}

static void helper(struct snap_ctx *ctx, const char *name, const struct manifest *m,
                   const struct snap_sandbox *sb, bool lazy, int out)
{
    int slot = -1;
    struct snap__net_fds nf = { -1, -1 };
    char nmsg[300];
    char images[700], log[700], excerpt[700];
    struct wp_err err;
    criu_opts *opts = NULL;
    int ifd, wfd, pid, nfd = -1;
    pid_t lazy_pid = 0;

    /* A group of its own: past the deadline the caller kills it whole
     * (criu swrk, the lazy-pages daemon) before the clone's cgroup. */
    setpgid(0, 0);
    if (clone_setup(ctx, name, m, sb, &err) < 0) {
        hwrite(out, "fail %s", err.msg);
        _exit(1);
    }
    snap__criu_env(ctx->probe.mode);
    /* The network's slot, rules and files: here, not in the caller, whose
     * event loop must not wait for DNS or nft; and before joining the
     * clone's cgroups, whose destroy kills everything in them (a prepare
     * cut short there would leave rules without the record that releases
     * them). A failure is the restore's; destroying the sandbox releases
     * the slot (by the sandbox's id). */
    if (snap__net_prepare(ctx, sb, &m->net, &slot, &err) < 0 ||
        (slot >= 0 && m->uns >= 0 && snap__userns_own_etc(sb, snap__userns_base(m->uns), &err) < 0)) {
        hwrite(out, "fail %s", err.msg);
        _exit(1);
    }
    if (snap__cg_enter(ctx, sb->id, getpid(), &err) < 0) {
        hwrite(out, "fail %s", err.msg);
        _exit(1);
    }
    /* The flag passes through criu's exec and forks to the restored tasks:
     * clones of one image then share identical pages once KSM scans. */
    if (m->ksm && prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) < 0) {
        hwrite(out, "fail PR_SET_MEMORY_MERGE: %s", strerror(errno));
        _exit(1);
    }
    snprintf(images, sizeof(images), "%s/images/%s/criu", ctx->state_dir, name);
    ifd = open(images, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    wfd = open(sb->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (ifd < 0 || wfd < 0) {
        hwrite(out, "fail open %s: %s", ifd < 0 ? images : sb->dir, strerror(errno));
        _exit(1);
    }
    if (lazy && (lazy_pid = start_lazy_daemon(ctx, name, images, sb->dir, out)) < 0)
        _exit(1);
    bool uns = m->uns >= 0;
    /* A new network namespace with only loopback, made here and handed to
     * criu: restoring the template's (ip and iptables runs) costs more. */
    if (uns) {
        uns_net.slot = slot;
        goto opts;
    }
    if (slot >= 0 && snap__net_host_fds(&nf) < 0) {
        hwrite(out, "fail network: host sockets: %s", strerror(errno));
        _exit(1);
    }
    nfd = new_netns(out);
    if (nfd < 0)
        _exit(1);
    /* The clone's own veth and address (its slot), in place before criu
     * starts: the restored tasks find eth0 configured, never the image's
     * address (the namespace is external to the image). */
    if (slot >= 0) {
        if (snap__net_attach(slot, &nf, nmsg, sizeof(nmsg)) < 0) {
            hwrite(out, "fail %s", nmsg);
            _exit(1);
        }
        snap__net_close_fds(&nf);
    }
opts:
    if (criu_local_init_opts(&opts) < 0) {
        hwrite(out, "fail criu: cannot allocate options");
        _exit(1);
    }
    criu_local_set_service_binary(opts, ctx->criu_bin);
    /* This process is ours alone: the environment reaches criu swrk. */
    if (uns)
        setenv("CRIU_CONFIG_FILE", lazy ? ctx->criu_lazy_uns_conf : ctx->criu_restore_uns_conf, 1);
    else
        setenv("CRIU_CONFIG_FILE", lazy ? ctx->criu_lazy_conf : ctx->criu_restore_conf, 1);
    criu_local_set_images_dir_fd(opts, ifd);
    criu_local_set_work_dir_fd(opts, wfd);
    criu_local_set_log_file(opts, "restore.log");
    criu_local_set_log_level(opts, ctx->criu_log_level);
    criu_local_set_root(opts, sb->root);
    /* We made the clone's cgroups (with limits) and entered them. criu
     * maps the image's cgroup root onto ours, leaves what exists alone
     * (soft), and builds the clone's cgroup namespace rooted there. */
    char cgroot[128];
    snap__cg_relpath(sb->id, cgroot, sizeof(cgroot));
    criu_local_set_manage_cgroups(opts, true);
    criu_local_set_manage_cgroups_mode(opts, CRIU_CG_MODE_SOFT);
    criu_local_add_cg_root(opts, NULL, cgroot);
    /* v1: the host's /sys/fs/cgroup already holds every hierarchy, one
     * per controller name: criu uses it instead of mounting a yard. */
    if (ctx->cg == SNAP__CG_V1)
        criu_local_add_cg_yard(opts, "/sys/fs/cgroup");
    if (m->host_usr)
        criu_local_add_ext_mount(opts, "usr", "/usr");
    char devdir[700];
    snprintf(devdir, sizeof(devdir), "%s/dev", sb->dir);
    criu_local_add_ext_mount(opts, "dev", devdir);
    snap__confine_criu_restore(ctx, opts, sb->dir);
    for (int i = 0; i < m->n_binds; i++) {
        char key[32];
        snprintf(key, sizeof(key), "bind%d", i);
        criu_local_add_ext_mount(opts, key, m->bind_source[i]);
    }
    if (uns)
        criu_local_set_notify_cb(opts, notify_cb);
    else
        criu_local_add_inherit_fd(opts, nfd, SNAP__NETNS_KEY);
    uint64_t c0 = wp_now_ns();
    pid = criu_local_restore_child(opts);
    double criu_ms = (double)(wp_now_ns() - c0) / 1e6;
    if (pid < 0) {
        snprintf(log, sizeof(log), "%s/restore.log", sb->dir);
        /* Short: the cause and where the log is must fit one wp_err. */
        snap__log_excerpt(log, excerpt, 130);
        hwrite(out, "fail criu restore failed (%d): %s%s%.80s; full log: <state dir>/images/%s.restore-failed.log",
               pid, excerpt[0] ? excerpt : "no log", uns_net.msg[0] ? " | " : "", uns_net.msg, name);
        if (lazy_pid > 0)
            kill(lazy_pid, SIGKILL);
        _exit(1);
    }
    /* What making the clone cost here: the helper itself, and criu swrk
     * (libcriu has reaped it). */
    struct rusage self, kids;
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_CHILDREN, &kids);
    hwrite(out, "pid %d lazy %d criu_ms %.3f helper_cpu %.3f criu_cpu %.3f", pid, (int)lazy_pid,
           criu_ms, tv_ms(self.ru_utime) + tv_ms(self.ru_stime),
           tv_ms(kids.ru_utime) + tv_ms(kids.ru_stime));
    _exit(0);
}

struct snap_restore_job {
    struct snap_sandbox *sb;
    pid_t helper;
    int fd;          /* read end of the helper's result pipe */
    uint64_t t0;
    uint64_t deadline; /* monotonic ns: killed and failed past it */
    double timeout_s;
    enum snap_criu_mode mode;
    bool lazy;
};

int snap_restore_start(struct snap_ctx *ctx, const char *name, const struct snap_restore_opts *ro,
                       struct snap_restore_job **out, struct wp_err *err)
{
    struct manifest m;
    struct snap_restore_job *job;
    struct snap_sandbox *sb;
    int pfd[2] = { -1, -1 }, rc;
    uint64_t t0 = wp_now_ns();
    bool lazy = ro && ro->lazy;
    pid_t hpid;

    memset(&m, 0, sizeof(m));
    if (!snap_name_valid(name))
        return wp_err_set(err, WP_EINVAL_INPUT, "bad image name \"%s\"", name);
    if (ro && ro->id && !snap_name_valid(ro->id))
        return wp_err_set(err, WP_EINVAL_INPUT, "bad sandbox id \"%s\"", ro->id);
    if (ctx->probe.mode == SNAP_CRIU_NONE)
        return wp_err_set(err, WP_ECRIU, "restore %s: criu does not work on this host: %s", name,
                          ctx->probe.why);
    if (lazy && !ctx->probe.lazy_ok) {
        /* Said once at start-up (the probe's why); each restore goes eager. */
        log_debug("restore %s: lazy pages do not work here, restoring eagerly", name);
        lazy = false;
    }
    if ((rc = manifest_load(ctx, name, &m, err)) < 0)
        return wp_err_wrap(err, "restore");
    if (ro && ro->merge)
        m.ksm = ro->merge > 0; /* the caller's policy (a multi-tenant node) wins */
    if (lazy && m.uns >= 0 && !snap__userns_lazy_ok()) {
        static bool told;
        if (!told)
            log_warn("lazy restores of sandboxes in a user namespace need "
                     "vm.unprivileged_userfaultfd=1 (criu opens userfaultfd from the restored "
                     "task): restoring eagerly");
        told = true;
        lazy = false;
    }
    job = calloc(1, sizeof(*job));
    sb = calloc(1, sizeof(*sb));
    if (!job || !sb) {
        free(job);
        free(sb);
        snap__network_free(&m.net);
        return wp_err_set(err, -ENOMEM, "out of memory");
    }
    snprintf(sb->image, sizeof(sb->image), "%s", name);
    if (ro && ro->id)
        snprintf(sb->id, sizeof(sb->id), "%s", ro->id);
    else
        snap__gen_id(name, sb->id, sizeof(sb->id));
    if ((rc = snap__sandbox_dirs(ctx, sb->id, sb, err)) < 0) {
        free(sb);
        free(job);
        snap__network_free(&m.net);
        return wp_err_wrap(err, "restore %s", name);
    }
    if ((rc = manifest_usable(ctx, name, &m, err)) < 0 ||
        (rc = snap__meta_write(ctx, sb, "clone", err)) < 0)
        goto fail;
    if (pipe2(pfd, O_CLOEXEC) < 0) {
        rc = wp_err_errno(err, "pipe");
        goto fail;
    }
    hpid = fork();
    if (hpid < 0) {
        rc = wp_err_errno(err, "fork");
        goto fail;
    }
    if (hpid == 0) {
        close(pfd[0]);
        helper(ctx, name, &m, sb, lazy, pfd[1]);
    }
    setpgid(hpid, hpid); /* as the helper does: no window where a kill misses */
    close(pfd[1]);
    job->deadline = t0 + (uint64_t)(ctx->criu_timeout_s * 1e9);
    job->timeout_s = ctx->criu_timeout_s;
    job->mode = ctx->probe.mode;
    job->sb = sb;
    job->helper = hpid;
    job->fd = pfd[0];
    job->t0 = t0;
    sb->prep_ms = (double)(wp_now_ns() - t0) / 1e6;
    job->lazy = lazy;
    *out = job;
    snap__network_free(&m.net);
    return 0;
fail:
    if (pfd[0] >= 0)
        close(pfd[0]);
    if (pfd[1] >= 0)
        close(pfd[1]);
    snap__teardown(ctx, sb->id, 0, NULL);
    free(sb);
    free(job);
    snap__network_free(&m.net);
    return wp_err_wrap(err, "restore %s", name);
}

int snap_restore_job_fd(const struct snap_restore_job *job)
{
    return job->fd;
}

bool snap_restore_job_expired(const struct snap_restore_job *job)
{
    return wp_now_ns() >= job->deadline;
}

/* Read the helper's line until EOF or the deadline. Returns false when
 * the deadline passed first. */
static bool read_result(struct snap_restore_job *job, char *msg, size_t cap)
{
    size_t n = 0;

    for (;;) {
        uint64_t now = wp_now_ns();
        int left = now >= job->deadline ? 0 : (int)((job->deadline - now) / 1000000 + 1);
        struct pollfd p = { job->fd, POLLIN, 0 };
        int pr = poll(&p, 1, left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            msg[n] = '\0';
            return false;
        }
        ssize_t r = read(job->fd, msg + n, cap - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0 || (n += (size_t)r) == cap - 1)
            break;
    }
    msg[n] = '\0';
    return true;
}

/* A failed restore's criu logs outlive the clone's dir (teardown removes
 * it): images/<image>.restore-failed.log, the last failure's. */
static void keep_log(struct snap_ctx *ctx, const struct snap_sandbox *sb, char *out, size_t cap)
{
    char from[700];

    snprintf(out, cap, "%s/images/%s.restore-failed.log", ctx->state_dir, sb->image);
    snprintf(from, sizeof(from), "%s/restore.log", sb->dir);
    if (rename(from, out) < 0) {
        size_t l = strlen(out);
        snprintf(out + l, cap - l, " (criu wrote none)");
    }
    snprintf(from, sizeof(from), "%s/lazy-pages.log", sb->dir);
    char lazy[760];
    snprintf(lazy, sizeof(lazy), "%s/images/%s.lazy-pages-failed.log", ctx->state_dir, sb->image);
    rename(from, lazy);
}

int snap_restore_finish(struct snap_ctx *ctx, struct snap_restore_job *job,
                        struct snap_sandbox **out, struct wp_err *err)
{
    struct snap_sandbox *sb = job->sb;
    char msg[1100];
    int rc, pid = 0, lazy_pid = 0;
    double criu_ms = 0, helper_cpu = 0, criu_cpu = 0;

    /* The helper writes one line and exits: read to EOF, or kill it
     * (criu swrk and the lazy-pages daemon are in its group; what criu
     * restored so far is in the clone's cgroup, which teardown kills). */
    bool done = read_result(job, msg, sizeof(msg));
    close(job->fd);
    if (!done) {
        char log[760];
        snap__kill_group(job->helper);
        keep_log(ctx, sb, log, sizeof(log));
        rc = wp_err_set(err, WP_ECRIU,
                        "criu %srestore did not finish within %.0f s (killed; mode %s), log: %s",
                        job->lazy ? "lazy " : "", job->timeout_s, snap_criu_mode_name(job->mode),
                        log);
        goto fail;
    }
    while (waitpid(job->helper, NULL, 0) < 0 && errno == EINTR)
        ;
    if (sscanf(msg, "pid %d lazy %d criu_ms %lf helper_cpu %lf criu_cpu %lf", &pid, &lazy_pid,
               &criu_ms, &helper_cpu, &criu_cpu) != 5 ||
        pid <= 0) {
        char log[760];
        keep_log(ctx, sb, log, sizeof(log));
        rc = wp_err_set(err, WP_ECRIU, "%s", strncmp(msg, "fail ", 5) == 0 ? msg + 5
                                                  : "restore helper died without a result");
        goto fail;
    }
    sb->init_pid = pid;
    sb->lazy_pid = lazy_pid;
    if ((rc = snap__pid_write(sb, err)) < 0)
        goto fail;
    sb->boot_ms = (double)(wp_now_ns() - job->t0) / 1e6;
    sb->criu_ms = criu_ms;
    sb->helper_cpu_ms = helper_cpu;
    sb->criu_cpu_ms = criu_cpu;
    log_debug("restored sandbox=%s image=%s lazy=%d init_pid=%d ms=%.2f", sb->id, sb->image,
              job->lazy, pid, sb->boot_ms);
    *out = sb;
    free(job);
    return 0;
fail:
    wp_err_wrap(err, "restore %s", sb->image);
    snap__teardown(ctx, sb->id, sb->init_pid, NULL); /* kills the lazy daemon too */
    free(sb);
    free(job);
    return rc;
}

int snap_restore(struct snap_ctx *ctx, const char *name, const struct snap_restore_opts *ro,
                 struct snap_sandbox **out, struct wp_err *err)
{
    struct snap_restore_job *job;
    int rc = snap_restore_start(ctx, name, ro, &job, err);

    return rc < 0 ? rc : snap_restore_finish(ctx, job, out, err);
}
