/* boot.c - cold boot of a sandbox from a template.
 *
 * The caller forks a "middle" process that joins the sandbox's cgroups
 * and unshares the mount, UTS, IPC, network and PID namespaces; its child
 * is PID 1 of the new PID namespace ("stage 1"). Stage 1 unshares the
 * cgroup namespace (rooted at the sandbox's cgroup), builds /proc and
 * /dev, pivots into the overlay root, drops the old root, runs the
 * template's setup commands, then execs the template's init. The middle
 * exits at once, so the sandbox's parent becomes the caller, which
 * snap_ctx_open() made a child subreaper.
 */
#define WP_LOG_COMPONENT "snap"
#include "snap_int.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/timeutil.h"

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#endif

#define DEFAULT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* Messages from stage 1 on the status pipe, one per line:
 *   "pid <n>"      (from the middle) the sandbox's init pid
 *   "step <text>"  progress
 *   "fail <text>"  stage 1 failed; it exits
 * EOF after the exec of init means success (the pipe is O_CLOEXEC). */

static void st_write(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void st_write(int fd, const char *fmt, ...)
{
    char line[600];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof(line) - 2)
        n = sizeof(line) - 2;
    for (int i = 0; i < n; i++)
        if (line[i] == '\n')
            line[i] = ' ';
    line[n++] = '\n';
    if (write(fd, line, n) < 0)
        return;
}

#define FAIL(fd, ...)                  \
    do {                               \
        st_write(fd, "fail " __VA_ARGS__); \
        _exit(1);                      \
    } while (0)

/* A bind remount adding flags. In a user namespace the kernel locks the
 * flags of mounts that came from the host (MNT_LOCK_*): a remount that
 * would clear one (say relatime or nosuid) is refused, so keep those the
 * mount already has. */
static int remount_bind(const char *path, unsigned long flags)
{
    static const struct { unsigned long st, ms; } keep[] = {
        { ST_RDONLY, MS_RDONLY }, { ST_NOSUID, MS_NOSUID }, { ST_NODEV, MS_NODEV },
        { ST_NOEXEC, MS_NOEXEC }, { ST_NOATIME, MS_NOATIME }, { ST_NODIRATIME, MS_NODIRATIME },
        { ST_RELATIME, MS_RELATIME },
    };
    struct statvfs sv;

    if (statvfs(path, &sv) == 0)
        for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++)
            if (sv.f_flag & keep[i].st)
                flags |= keep[i].ms;
    return mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | flags, NULL);
}

/* /dev is the sandbox's own directory of device nodes (made on the host
 * side by snap__make_dev), bound in. It is an external mount for CRIU:
 * not dumped, and bound from the clone's own directory at restore, which
 * spares a tmpfs dump and its restore (a tar run per mount). */
static void stage1_devices(int st, const char *root, const char *devdir)
{
    char path[600];

    snprintf(path, sizeof(path), "%s/dev", root);
    mkdir(path, 0755);
    if (mount(devdir, path, NULL, MS_BIND, NULL) < 0 ||
        remount_bind(path, MS_NOSUID | MS_NOEXEC) < 0)
        FAIL(st, "bind %s on /dev: %s", devdir, strerror(errno));
}

static void stage1_loopback(int st)
{
    struct ifreq ifr = { 0 };
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        FAIL(st, "socket: %s", strerror(errno));
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
        FAIL(st, "SIOCGIFFLAGS lo: %s", strerror(errno));
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
        FAIL(st, "bring lo up: %s", strerror(errno));
    close(fd);
}

static char **build_env(const struct snap_template *t)
{
    size_t n = 0;
    char **env;
    bool has_path = false, has_home = false;

    for (char **e = t->env; e && *e; e++, n++) {
        has_path |= strncmp(*e, "PATH=", 5) == 0;
        has_home |= strncmp(*e, "HOME=", 5) == 0;
    }
    env = calloc(n + 3, sizeof(char *));
    if (!env)
        return NULL;
    n = 0;
    if (!has_path)
        env[n++] = (char *)DEFAULT_PATH;
    if (!has_home)
        env[n++] = (char *)"HOME=/root";
    for (char **e = t->env; e && *e; e++)
        env[n++] = *e;
    return env;
}

/* Runs as PID 1 of the new PID namespace; never returns. */
static void stage1(const struct snap_ctx *ctx, const struct snap_template *t, const char *root,
                   const char *sbdir, bool host_root, int st, int prog)
{
    char path[600], devdir[600];
    struct wp_err err;
    char **env;
    int fd;

    snprintf(devdir, sizeof(devdir), "%s/dev", sbdir);

    if (unshare(CLONE_NEWCGROUP) < 0)
        FAIL(st, "unshare cgroup namespace: %s", strerror(errno));
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        FAIL(st, "make mounts private: %s", strerror(errno));
    /* Mounts copied from the host's namespace into one owned by a user
     * namespace are locked, and pivot_root refuses a locked new root:
     * bind the root onto itself, a mount of our own namespace. */
    if (ctx->userns && mount(root, root, NULL, MS_BIND | MS_REC, NULL) < 0)
        FAIL(st, "bind the root onto itself: %s", strerror(errno));
    if (host_root) {
        /* The host's /usr, read-only; /bin, /lib, /sbin, /lib64 are
         * symlinks into it in the generated base layer (merged /usr). */
        snprintf(path, sizeof(path), "%s/usr", root);
        if (mount("/usr", path, NULL, MS_BIND | MS_REC, NULL) < 0 ||
            remount_bind(path, MS_RDONLY | MS_NOSUID | MS_NODEV) < 0)
            FAIL(st, "bind /usr read-only: %s", strerror(errno));
    }
    for (int i = 0; i < t->n_binds; i++) {
        struct stat sst;
        snprintf(path, sizeof(path), "%s%s", root, t->binds[i].target);
        if (stat(t->binds[i].source, &sst) < 0)
            FAIL(st, "bind source %s: %s%s", t->binds[i].source, strerror(errno),
                 ctx->userns && errno == EACCES ? " (root of the sandbox is an unprivileged host id: "
                                             "the source's dirs must be searchable by others)"
                                           : "");
        if (S_ISDIR(sst.st_mode)) {
            if (wp_mkdir_p(path, 0755, NULL) < 0)
                FAIL(st, "mkdir %s: %s", t->binds[i].target, strerror(errno));
        } else {
            char *slash = strrchr(path, '/');
            *slash = '\0';
            wp_mkdir_p(path, 0755, NULL);
            *slash = '/';
            int ffd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
            if (ffd >= 0)
                close(ffd);
        }
        if (mount(t->binds[i].source, path, NULL, MS_BIND, NULL) < 0 ||
            remount_bind(path, MS_RDONLY | MS_NOSUID | MS_NODEV) < 0)
            FAIL(st, "bind %s on %s: %s", t->binds[i].source, t->binds[i].target, strerror(errno));
    }
    snprintf(path, sizeof(path), "%s/proc", root);
    mkdir(path, 0555);
    if (mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        FAIL(st, "mount /proc: %s", strerror(errno));
    stage1_devices(st, root, devdir);
    if (snap__confine_proc(ctx, root, sbdir, &err) < 0)
        FAIL(st, "confine: %s", err.msg);
    snprintf(path, sizeof(path), "%s/tmp", root);
    mkdir(path, 01777);
    snprintf(path, sizeof(path), "%s/run", root);
    mkdir(path, 0755);

    if (chdir(root) < 0)
        FAIL(st, "chdir %s: %s", root, strerror(errno));
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        FAIL(st, "pivot_root: %s", strerror(errno));
    /* The old root is stacked under the new one: detach it. */
    if (umount2(".", MNT_DETACH) < 0)
        FAIL(st, "unmount the old root: %s", strerror(errno));
    if (chdir("/") < 0)
        FAIL(st, "chdir /: %s", strerror(errno));

    if (sethostname(t->hostname, strlen(t->hostname)) < 0)
        FAIL(st, "sethostname: %s", strerror(errno));
    stage1_loopback(st);
    if (setsid() < 0)
        FAIL(st, "setsid: %s", strerror(errno));
    fd = open("/dev/null", O_RDWR);
    if (fd < 0)
        FAIL(st, "open /dev/null: %s", strerror(errno));
    dup2(fd, 0);
    dup2(fd, 1);
    dup2(fd, 2);
    if (fd > 2)
        close(fd);
    env = build_env(t);
    if (!env)
        FAIL(st, "out of memory");
    if (wp_mkdir_p(t->workdir, 0755, NULL) < 0 || chdir(t->workdir) < 0)
        FAIL(st, "workdir %s: %s", t->workdir, strerror(errno));

    /* Last: everything above needed privileges the sandbox must not keep.
     * Setup commands (the image build) and init run confined. */
    if (snap__confine_task(ctx, t->init_sets_hostname, &err) < 0)
        FAIL(st, "confine: %s", err.msg);
    for (int i = 0; t->setup && t->setup[i]; i++) {
        int status;
        pid_t pid;

        st_write(st, "step setup %d: %s", i + 1, t->setup[i]);
        pid = fork();
        if (pid < 0)
            FAIL(st, "fork setup: %s", strerror(errno));
        if (pid == 0) {
            if (t->init_sets_hostname && snap__confine_is_on(ctx) &&
                snap__confine_drop_extra(&err) < 0) {
                dprintf(prog, "confine: %s\n", err.msg);
                _exit(126);
            }
            dup2(prog, 1);
            dup2(prog, 2);
            char *argv[] = { (char *)"/bin/sh", (char *)"-c", t->setup[i], NULL };
            execve("/bin/sh", argv, env);
            dprintf(2, "exec /bin/sh: %s\n", strerror(errno));
            _exit(127);
        }
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            FAIL(st, "setup command %d (%s) failed with %s %d", i + 1, t->setup[i],
                 WIFEXITED(status) ? "exit status" : "signal",
                 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    }
    /* Mergeable memory passes through exec and fork to everything the
     * sandbox runs (and criu restores it with the tasks). */
    if (t->ksm && prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) < 0)
        FAIL(st, "PR_SET_MEMORY_MERGE: %s", strerror(errno));
    st_write(st, "step exec init %s", t->init[0]);
    close(prog);
    execve(t->init[0], t->init, env);
    FAIL(st, "exec init %s: %s", t->init[0], strerror(errno));
}

/* The middle process: joins the cgroup, unshares, forks stage 1, exits. */
static void middle(struct snap_ctx *ctx, const struct snap_template *t,
                   const struct snap_sandbox *sb, bool host_root, int slot, int st, int prog,
                   int sync)
{
    struct snap__net_fds nf = { -1, -1 };
    struct wp_err err;
    char msg[300];
    pid_t pid;

    if (snap__cg_enter(ctx, sb->id, getpid(), &err) < 0)
        FAIL(st, "%s", err.msg);
    if (ctx->userns) {
        /* Every namespace belongs to the new user namespace; the host
         * writes its maps and makes the veth (we no longer can). */
        if (snap__userns_child(sync, CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET |
                                         CLONE_NEWPID, msg, sizeof(msg)) < 0)
            FAIL(st, "%s", msg);
        close(sync);
        slot = -1;
        goto fork_stage1;
    }
    /* Sockets of the host's namespace, kept across the unshare: the veth's
     * host end is made and configured through them. */
    if (slot >= 0 && snap__net_host_fds(&nf) < 0)
        FAIL(st, "network: host sockets: %s", strerror(errno));
    if (unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWPID) < 0)
        FAIL(st, "unshare namespaces: %s", strerror(errno));
    /* Before stage 1, so setup commands (the image build) have it. */
    if (slot >= 0) {
        if (snap__net_attach(slot, &nf, msg, sizeof(msg)) < 0)
            FAIL(st, "%s", msg);
        snap__net_close_fds(&nf);
    }
fork_stage1:
    pid = fork();
    if (pid < 0)
        FAIL(st, "fork stage 1: %s", strerror(errno));
    if (pid == 0)
        stage1(ctx, t, sb->root, sb->dir, host_root, st, prog);
    st_write(st, "pid %d", (int)pid);
    _exit(0);
}

/* Read status and progress until the status pipe closes. Returns the init
 * pid (> 0) or a negative code with err set. */
static int follow_stage1(int st, int prog, snap_progress_cb progress, void *arg,
                         struct wp_err *err)
{
    char sbuf[2048], pbuf[2048];
    size_t slen = 0, plen = 0;
    int init_pid = 0, rc = 0;
    bool st_open = true, prog_open = true;

    while (st_open) {
        struct pollfd pfd[2] = { { st, POLLIN, 0 }, { prog_open ? prog : -1, POLLIN, 0 } };
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return wp_err_errno(err, "poll");
        }
        if (prog_open && (pfd[1].revents & (POLLIN | POLLHUP))) {
            ssize_t n = read(prog, pbuf + plen, sizeof(pbuf) - 1 - plen);
            if (n <= 0) {
                prog_open = false;
            } else {
                plen += (size_t)n;
                char *nl;
                while ((nl = memchr(pbuf, '\n', plen)) || plen == sizeof(pbuf) - 1) {
                    size_t l = nl ? (size_t)(nl - pbuf) : plen;
                    pbuf[l] = '\0';
                    if (progress)
                        progress(arg, pbuf);
                    size_t used = nl ? l + 1 : l;
                    memmove(pbuf, pbuf + used, plen - used);
                    plen -= used;
                }
            }
        }
        if (pfd[0].revents & (POLLIN | POLLHUP)) {
            ssize_t n = read(st, sbuf + slen, sizeof(sbuf) - 1 - slen);
            if (n <= 0) {
                st_open = false;
                continue;
            }
            slen += (size_t)n;
            char *nl;
            while ((nl = memchr(sbuf, '\n', slen))) {
                *nl = '\0';
                if (strncmp(sbuf, "pid ", 4) == 0) {
                    init_pid = atoi(sbuf + 4);
                } else if (strncmp(sbuf, "step ", 5) == 0) {
                    if (progress)
                        progress(arg, sbuf);
                } else if (strncmp(sbuf, "fail ", 5) == 0 && rc == 0) {
                    rc = wp_err_set(err, WP_ECHILD, "%s", sbuf + 5);
                }
                size_t used = (size_t)(nl - sbuf) + 1;
                memmove(sbuf, sbuf + used, slen - used);
                slen -= used;
            }
            if (slen == sizeof(sbuf) - 1)
                slen = 0; /* an overlong line from our own code: drop it */
        }
    }
    if (rc < 0)
        return rc;
    if (init_pid <= 0)
        return wp_err_set(err, WP_ECHILD, "sandbox setup exited without starting init");
    return init_pid;
}

static int wait_ready(struct snap_sandbox *sb, const struct snap_template *t,
                      struct wp_err *err)
{
    char path[1100];
    uint64_t deadline = wp_now_ns() + (uint64_t)(t->ready_timeout_s * 1e9);
    long sleep_ns = 200 * 1000;

    snprintf(path, sizeof(path), "%s%s", sb->root, t->ready_file);
    for (;;) {
        struct stat st;
        if (stat(path, &st) == 0)
            return 0;
        /* init gone? It is our child through the subreaper, or, when a
         * helper process boots for a daemon, the daemon's. */
        if (waitpid(sb->init_pid, NULL, WNOHANG) == sb->init_pid ||
            (kill(sb->init_pid, 0) < 0 && errno == ESRCH)) {
            sb->init_pid = 0; /* reaped: its pid may be reused, never kill it */
            return wp_err_set(err, WP_ECHILD, "init %s exited before %s appeared", t->init[0],
                              t->ready_file);
        }
        if (wp_now_ns() > deadline)
            return wp_err_set(err, WP_ETIMEDOUT, "%s did not appear within %.1f s", t->ready_file,
                              t->ready_timeout_s);
        struct timespec ts = { 0, sleep_ns };
        nanosleep(&ts, NULL);
        if (sleep_ns < 5 * 1000 * 1000)
            sleep_ns *= 2;
    }
}

int snap_boot(struct snap_ctx *ctx, const struct snap_template *t, const char *id,
              snap_progress_cb progress, void *arg, struct snap_sandbox **out,
              struct wp_err *err)
{
    struct snap_sandbox *sb;
    char lower[1024];
    int st[2] = { -1, -1 }, prog[2] = { -1, -1 }, sync[2] = { -1, -1 };
    bool host_root = strcmp(t->rootfs, "host") == 0;
    uint64_t t0 = wp_now_ns();
    pid_t mid;
    int rc, slot = -1, uns = -1;

    if (id && !snap_name_valid(id))
        return wp_err_set(err, WP_EINVAL_INPUT, "boot: bad sandbox id \"%s\"", id);
    sb = calloc(1, sizeof(*sb));
    if (!sb)
        return wp_err_set(err, -ENOMEM, "out of memory");
    if (id)
        snprintf(sb->id, sizeof(sb->id), "%s", id);
    else
        snap__gen_id(t->name, sb->id, sizeof(sb->id));
    if ((rc = snap__sandbox_dirs(ctx, sb->id, sb, err)) < 0) {
        free(sb);
        return rc;
    }
    snprintf(lower, sizeof(lower), "%s", host_root ? ctx->host_layer : t->rootfs);
    char rw[600];
    if ((rc = snap__make_dev(sb, err)) < 0 ||
        (rc = snap__confine_host_prepare(ctx, sb, &t->limits, rw, sizeof(rw), err)) < 0)
        goto fail;
    /* A fresh id range for this sandbox (an image made from it keeps it). */
    if (ctx->userns) {
        const char *lowers[1] = { host_root ? ctx->host_layer : t->rootfs };
        if ((rc = uns = snap__userns_alloc(sb->dir, err)) < 0 ||
            (rc = snap__userns_record(sb, uns, err)) < 0 ||
            (rc = snap__userns_own_dirs(sb, rw, snap__userns_base(uns), err)) < 0 ||
            (rc = snap__userns_lowers(sb, snap__userns_base(uns), lowers, 1, lower,
                                      sizeof(lower), err)) < 0)
            goto fail;
    }
    if ((rc = snap__mount_overlay(sb, lower, rw, err)) < 0 ||
        (rc = snap__cg_create(ctx, sb->id, &t->limits, err)) < 0 ||
        (rc = snap__meta_write(ctx, sb, "boot", err)) < 0 ||
        (rc = snap__net_prepare(ctx, sb, &t->network, &slot, err)) < 0 ||
        (slot >= 0 && uns >= 0 && (rc = snap__userns_own_etc(sb, snap__userns_base(uns), err)) < 0))
        goto fail;
    if (pipe2(st, O_CLOEXEC) < 0 || pipe2(prog, O_CLOEXEC) < 0 ||
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sync) < 0) {
        rc = wp_err_errno(err, "pipe");
        goto fail;
    }
    mid = fork();
    if (mid < 0) {
        rc = wp_err_errno(err, "fork");
        goto fail;
    }
    if (mid == 0) {
        /* No host fd may reach the sandbox: keep only our two pipe ends. */
        int keep_st = 1000, keep_prog = 1001, keep_sync = 1002;
        dup3(st[1], keep_st, O_CLOEXEC);
        dup3(prog[1], keep_prog, O_CLOEXEC);
        dup3(sync[1], keep_sync, O_CLOEXEC);
        syscall(SYS_close_range, 3u, (unsigned)keep_st - 1, 0u);
        wp_close_fds_from(keep_sync + 1);
        middle(ctx, t, sb, host_root, slot, keep_st, keep_prog, keep_sync);
    }
    close(st[1]);
    close(prog[1]);
    close(sync[1]);
    st[1] = prog[1] = sync[1] = -1;
    if (ctx->userns)
        rc = snap__userns_parent(sync[0], mid, snap__userns_base(uns), slot, err);
    close(sync[0]);
    sync[0] = -1;
    while (waitpid(mid, NULL, 0) < 0 && errno == EINTR)
        ;
    if (ctx->userns && rc < 0) {
        /* The middle may have failed before the handshake (EOF for us):
         * then its own words say why. */
        struct wp_err why;
        if (follow_stage1(st[0], prog[0], NULL, NULL, &why) < 0 && err &&
            strstr(err->msg, "before its user namespace") &&
            !strstr(why.msg, "exited without starting init"))
            *err = why;
        goto fail;
    }
    rc = follow_stage1(st[0], prog[0], progress, arg, err);
    if (rc < 0)
        goto fail;
    sb->init_pid = rc;
    if ((rc = snap__pid_write(sb, err)) < 0)
        goto fail;
    if (t->ready_file) {
        uint64_t r0 = wp_now_ns();
        if ((rc = wait_ready(sb, t, err)) < 0)
            goto fail;
        sb->ready_ms = (double)(wp_now_ns() - r0) / 1e6;
    }
    close(st[0]);
    close(prog[0]);
    sb->boot_ms = (double)(wp_now_ns() - t0) / 1e6;
    log_info("booted sandbox=%s template=%s init_pid=%d ms=%.1f", sb->id, t->name,
             (int)sb->init_pid, sb->boot_ms);
    *out = sb;
    return 0;
fail:
    for (int i = 0; i < 2; i++) {
        if (st[i] >= 0)
            close(st[i]);
        if (prog[i] >= 0)
            close(prog[i]);
        if (sync[i] >= 0)
            close(sync[i]);
    }
    wp_err_wrap(err, "boot %s", t->name);
    snap__teardown(ctx, sb->id, sb->init_pid, NULL);
    free(sb);
    return rc;
}
