/* confine.c - what keeps the code in a sandbox inside it (besides its
 * namespaces and the user namespace of userns.c): capabilities, no_new_privs,
 * a seccomp filter, read-only and masked /proc paths, a size-limited
 * writable layer and /dev/shm, the device allow-list (v1 `devices`, or a
 * BPF_PROG_TYPE_CGROUP_DEVICE program on v2).
 *
 * Stage 1 (boot.c) calls, in order: snap__confine_proc before pivot_root,
 * snap__confine_task after every mount and privileged set-up, right before
 * the setup commands and init. CRIU keeps what the tasks carry (bounding,
 * effective, permitted sets, no_new_privs, the seccomp filter) and the
 * mounts made here are external to it (bound again per clone from the
 * clone's own dir), see snap__confine_criu_*.
 *
 * Layers can be turned off only through snap_config.unconfined (the
 * benchmark's baseline, the node's --insecure-allow-unconfined).
 */
#define WP_LOG_COMPONENT "snap"
#include "snap_int.h"

#include <criu/criu.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"

/* Capabilities a developer's workload keeps: Docker's 14 minus MKNOD (no
 * device node would be usable anyway, see the device cgroup), NET_RAW (raw
 * and packet sockets: spoofing on the sandbox's veth; ping uses ICMP
 * datagram sockets) and AUDIT_WRITE (writes into the host's audit log).
 * Without a user namespace these are host capabilities: what they reach is
 * bounded by the mount namespace, /proc masks and the seccomp filter. */
static const int keep_caps[] = {
    CAP_CHOWN,  CAP_DAC_OVERRIDE, CAP_FOWNER,           CAP_FSETID,      CAP_KILL,
    CAP_SETGID, CAP_SETUID,       CAP_SETPCAP,          CAP_SETFCAP,     CAP_NET_BIND_SERVICE,
    CAP_SYS_CHROOT,
};

/* runc's read-only /proc paths. */
static const char *const proc_ro[] = { "sys", "sysrq-trigger", "irq", "bus", "fs", NULL };
/* runc's masked paths, plus kmsg (the kernel log): files get /dev/null
 * bound over them, directories an empty read-only directory. Each mask is
 * an external mount for CRIU (key "m-<name>"), bound again at restore. */
static const char *const proc_mask_files[] = { "kcore", "keys", "timer_list", "sched_debug",
                                               "latency_stats", "timer_stats", "kmsg", NULL };
static const char *const proc_mask_dirs[] = { "acpi", "scsi", "asound", NULL };

#define DEFAULT_DISK_MB 1024
#define DEFAULT_SHM_MB 64

bool snap__confine_is_on(const struct snap_ctx *ctx)
{
    return !ctx->unconfined;
}

/* ---- host side: tmpfs for the writable layer and /dev/shm ---------- */

static uint64_t mb_or(uint64_t bytes, uint64_t def_mb)
{
    return bytes ? bytes : def_mb << 20;
}

static int mount_tmpfs(const char *path, uint64_t bytes, const char *mode, unsigned long flags,
                       struct wp_err *err)
{
    char opts[96];

    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        return wp_err_errno(err, "mkdir %s", path);
    snprintf(opts, sizeof(opts), "size=%llu,mode=%s", (unsigned long long)bytes, mode);
    if (mount("tmpfs", path, "tmpfs", flags, opts) < 0)
        return wp_err_errno(err, "mount tmpfs (%s) on %s", opts, path);
    return 0;
}

/* The writable layer is a size-limited tmpfs of its own (sb->dir/rw, holding
 * the overlay's upper and work dirs), /dev/shm another (sb->dir/shm), and
 * sb->dir/mask the empty directory bound over masked /proc directories.
 * Mounted in the host's mount namespace: they go with the sandbox's dir at
 * teardown (unmount_under), and CRIU sees them as external mounts. The
 * tmpfs pages are charged to the memory cgroup of the sandbox process that
 * writes them, so the disk limit can never make the host's memory the
 * sandbox's: a sandbox's memory limit covers its files too. */
int snap__confine_host_prepare(struct snap_ctx *ctx, const struct snap_sandbox *sb,
                               const struct snap_limits *lim, char *rw, size_t cap,
                               struct wp_err *err)
{
    char path[700];
    int rc;

    snprintf(rw, cap, "%s", sb->dir);
    if (ctx->unconfined) {
        /* Plain dirs where a confined image's clone expects its external
         * mounts: an image made confined still restores. */
        for (const char *sub = "shm\0mask\0"; *sub; sub += strlen(sub) + 1) {
            snprintf(path, sizeof(path), "%s/%s", sb->dir, sub);
            if (mkdir(path, 0755) < 0)
                return wp_err_errno(err, "mkdir %s", path);
        }
        return 0;
    }
    snprintf(path, sizeof(path), "%s/rw", sb->dir);
    if ((rc = mount_tmpfs(path, mb_or(lim->disk_bytes, DEFAULT_DISK_MB), "0755", MS_NOSUID,
                          err)) < 0)
        return rc;
    snprintf(rw, cap, "%s/rw", sb->dir);
    for (const char *sub = "upper\0work\0"; *sub; sub += strlen(sub) + 1) {
        snprintf(path, sizeof(path), "%s/rw/%s", sb->dir, sub);
        if (mkdir(path, 0755) < 0)
            return wp_err_errno(err, "mkdir %s", path);
    }
    snprintf(path, sizeof(path), "%s/shm", sb->dir);
    if ((rc = mount_tmpfs(path, mb_or(lim->shm_bytes, DEFAULT_SHM_MB), "1777",
                          MS_NOSUID | MS_NODEV | MS_NOEXEC, err)) < 0)
        return rc;
    snprintf(path, sizeof(path), "%s/mask", sb->dir);
    if (mkdir(path, 0555) < 0)
        return wp_err_errno(err, "mkdir %s", path);
    return 0;
}

/* The template's writable layer after a dump: moved when it is on the same
 * file system, copied out of the tmpfs otherwise (cp -a keeps the overlay's
 * whiteouts and trusted.overlay.* attributes). */
int snap__confine_move_layer(const char *src, const char *dst, struct wp_err *err)
{
    int status;
    pid_t pid;

    if (rename(src, dst) == 0)
        return 0;
    if (errno != EXDEV)
        return wp_err_errno(err, "move %s to %s", src, dst);
    pid = fork();
    if (pid < 0)
        return wp_err_errno(err, "fork");
    if (pid == 0) {
        wp_close_fds_from(3);
        execl("/bin/cp", "cp", "-a", "--", src, dst, (char *)NULL);
        _exit(127);
    }
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return wp_err_errno(err, "wait cp");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return wp_err_set(err, WP_ECHILD, "cp -a %s %s failed (status %d)", src, dst, status);
    return 0;
}

/* ---- stage 1, before pivot_root: /proc and /dev/shm ----------------- */

static int bind_ro(const char *src, const char *dst, bool rec, struct wp_err *err)
{
    unsigned long rf = rec ? MS_REC : 0;

    if (mount(src, dst, NULL, MS_BIND | rf, NULL) < 0)
        return wp_err_errno(err, "bind %s on %s", src, dst);
    if (mount(NULL, dst, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | rf,
              NULL) < 0)
        return wp_err_errno(err, "remount %s read-only", dst);
    return 0;
}

int snap__confine_proc(const struct snap_ctx *ctx, const char *root, const char *sbdir,
                       struct wp_err *err)
{
    char path[700], src[700];
    struct stat st;
    int rc;

    if (ctx->unconfined)
        return 0;
    /* /dev/shm: the sandbox's size-limited tmpfs, over the /dev bind. */
    snprintf(src, sizeof(src), "%s/shm", sbdir);
    snprintf(path, sizeof(path), "%s/dev/shm", root);
    if (mount(src, path, NULL, MS_BIND, NULL) < 0)
        return wp_err_errno(err, "bind %s on /dev/shm", src);
    for (const char *const *p = proc_ro; *p; p++) {
        snprintf(path, sizeof(path), "%s/proc/%s", root, *p);
        if (lstat(path, &st) == 0 && (rc = bind_ro(path, path, true, err)) < 0)
            return rc;
    }
    snprintf(src, sizeof(src), "%s/dev/null", sbdir);
    for (const char *const *p = proc_mask_files; *p; p++) {
        snprintf(path, sizeof(path), "%s/proc/%s", root, *p);
        if (lstat(path, &st) == 0 && mount(src, path, NULL, MS_BIND, NULL) < 0)
            return wp_err_errno(err, "mask /proc/%s", *p);
    }
    snprintf(src, sizeof(src), "%s/mask", sbdir);
    for (const char *const *p = proc_mask_dirs; *p; p++) {
        snprintf(path, sizeof(path), "%s/proc/%s", root, *p);
        if (lstat(path, &st) == 0 && (rc = bind_ro(src, path, false, err)) < 0)
            return rc;
    }
    return 0;
}

/* ---- CRIU: the masks and /dev/shm are external mounts ---------------- */

int snap__confine_criu_dump(const struct snap_ctx *ctx, void *criu_opts_p)
{
    criu_opts *opts = criu_opts_p;
    char path[128], key[64];
    struct stat st;

    if (ctx->unconfined)
        return 0;
    criu_local_add_ext_mount(opts, "/dev/shm", "shm");
    for (int d = 0; d < 2; d++)
        for (const char *const *p = d ? proc_mask_dirs : proc_mask_files; *p; p++) {
            snprintf(path, sizeof(path), "/proc/%s", *p);
            if (lstat(path, &st) < 0)
                continue; /* stage 1 did not mask what this kernel lacks */
            snprintf(key, sizeof(key), "m-%s", *p);
            criu_local_add_ext_mount(opts, path, key);
        }
    return 0;
}

/* Restore: keys to the clone's own paths. A key the image does not use is
 * ignored, so an image made unconfined restores too. */
int snap__confine_criu_restore(const struct snap_ctx *ctx, void *criu_opts_p, const char *sbdir)
{
    criu_opts *opts = criu_opts_p;
    char path[700], key[64];

    (void)ctx;
    snprintf(path, sizeof(path), "%s/shm", sbdir);
    criu_local_add_ext_mount(opts, "shm", path);
    for (int d = 0; d < 2; d++)
        for (const char *const *p = d ? proc_mask_dirs : proc_mask_files; *p; p++) {
            snprintf(key, sizeof(key), "m-%s", *p);
            snprintf(path, sizeof(path), d ? "%s/mask" : "%s/dev/null", sbdir);
            criu_local_add_ext_mount(opts, key, path);
        }
    return 0;
}

/* ---- stage 1, last step: capabilities, no_new_privs, seccomp ---------- */

static int last_cap(void)
{
    char *text = NULL;
    int n = CAP_LAST_CAP;

    if (wp_read_file("/proc/sys/kernel/cap_last_cap", 16, &text, NULL, NULL) == 0) {
        n = atoi(text);
        free(text);
    }
    return n;
}

static int set_caps(uint64_t keep, uint64_t inh, struct wp_err *err)
{
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2];

    memset(d, 0, sizeof(d));
    d[0].effective = d[0].permitted = (uint32_t)keep;
    d[1].effective = d[1].permitted = (uint32_t)(keep >> 32);
    d[0].inheritable = (uint32_t)inh;
    d[1].inheritable = (uint32_t)(inh >> 32);
    if (syscall(SYS_capset, &h, d) < 0)
        return wp_err_errno(err, "capset");
    return 0;
}

static uint64_t keep_mask(void)
{
    uint64_t m = 0;
    for (size_t i = 0; i < sizeof(keep_caps) / sizeof(keep_caps[0]); i++)
        m |= 1ull << keep_caps[i];
    return m;
}

/* Bounding set to keep (plus extra for this task only), no ambient set,
 * permitted/effective to keep|extra, inheritable to keep. extra stays in
 * the bounding set so that exec (of init) keeps it: the init that asked
 * for it (the hands, CAP_SYS_ADMIN for sethostname) must drop it from the
 * bounding set itself before running anything (agentlink does). */
static int drop_caps(uint64_t extra, struct wp_err *err)
{
    uint64_t keep = keep_mask(), all = keep | extra;
    int last = last_cap();

    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        return wp_err_errno(err, "clear ambient capabilities");
    for (int c = 0; c <= last && c < 64; c++)
        if (!(all & (1ull << c)) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0)
            return wp_err_errno(err, "drop capability %d from the bounding set", c);
    return set_caps(all, keep, err);
}

int snap__confine_drop_extra(struct wp_err *err)
{
    if (prctl(PR_CAPBSET_READ, CAP_SYS_ADMIN, 0, 0, 0) == 1 &&
        prctl(PR_CAPBSET_DROP, CAP_SYS_ADMIN, 0, 0, 0) < 0)
        return wp_err_errno(err, "drop CAP_SYS_ADMIN");
    return set_caps(keep_mask(), keep_mask(), err);
}

#define SYS(call) { SCMP_SYS(call), #call }
struct sysname { int nr; const char *name; };

/* The allow list: what a developer's workload (shells, compilers,
 * interpreters, package managers, debuggers, servers) calls. Anything not
 * named here or below gets ENOSYS: calls newer than this list (a newer
 * libc falls back from ENOSYS as on an older kernel) and obsolete ones. */
static const struct sysname allowed[] = {
    /* files and descriptors */
    SYS(read), SYS(write), SYS(open), SYS(openat), SYS(openat2), SYS(close), SYS(close_range),
    SYS(creat), SYS(stat), SYS(fstat), SYS(lstat), SYS(newfstatat), SYS(statx), SYS(statfs),
    SYS(fstatfs), SYS(lseek), SYS(pread64), SYS(pwrite64), SYS(readv), SYS(writev),
    SYS(preadv), SYS(pwritev), SYS(preadv2), SYS(pwritev2), SYS(access), SYS(faccessat),
    SYS(faccessat2), SYS(dup), SYS(dup2), SYS(dup3), SYS(pipe), SYS(pipe2), SYS(fcntl),
    SYS(flock), SYS(fsync), SYS(fdatasync), SYS(sync), SYS(syncfs), SYS(sync_file_range),
    SYS(truncate), SYS(ftruncate), SYS(fallocate), SYS(fadvise64), SYS(readahead),
    SYS(getdents), SYS(getdents64), SYS(getcwd), SYS(chdir), SYS(fchdir), SYS(chroot),
    SYS(rename), SYS(renameat), SYS(renameat2), SYS(mkdir), SYS(mkdirat), SYS(rmdir),
    SYS(link), SYS(linkat), SYS(unlink), SYS(unlinkat), SYS(symlink), SYS(symlinkat),
    SYS(readlink), SYS(readlinkat), SYS(chmod), SYS(fchmod), SYS(fchmodat), SYS(chown),
    SYS(fchown), SYS(lchown), SYS(fchownat), SYS(umask), SYS(utime), SYS(utimes),
    SYS(futimesat), SYS(utimensat), SYS(mknod), SYS(mknodat), /* no CAP_MKNOD: FIFOs only */
    SYS(setxattr), SYS(lsetxattr), SYS(fsetxattr), SYS(getxattr), SYS(lgetxattr),
    SYS(fgetxattr), SYS(listxattr), SYS(llistxattr), SYS(flistxattr), SYS(removexattr),
    SYS(lremovexattr), SYS(fremovexattr), SYS(ioctl), SYS(sendfile), SYS(splice), SYS(tee),
    SYS(vmsplice), SYS(copy_file_range), SYS(memfd_create), SYS(inotify_init),
    SYS(inotify_init1), SYS(inotify_add_watch), SYS(inotify_rm_watch), SYS(ustat),
    SYS(sysfs),
    /* polling, events, timers, time */
    SYS(poll), SYS(ppoll), SYS(select), SYS(pselect6), SYS(epoll_create), SYS(epoll_create1),
    SYS(epoll_ctl), SYS(epoll_wait), SYS(epoll_pwait), SYS(epoll_pwait2), SYS(eventfd),
    SYS(eventfd2), SYS(signalfd), SYS(signalfd4), SYS(timerfd_create), SYS(timerfd_settime),
    SYS(timerfd_gettime), SYS(timer_create), SYS(timer_settime), SYS(timer_gettime),
    SYS(timer_getoverrun), SYS(timer_delete), SYS(nanosleep), SYS(clock_nanosleep),
    SYS(clock_gettime), SYS(clock_getres), SYS(gettimeofday), SYS(time), SYS(times),
    SYS(getitimer), SYS(setitimer), SYS(alarm), SYS(pause),
    SYS(io_setup), SYS(io_destroy), SYS(io_getevents), SYS(io_pgetevents), SYS(io_submit),
    SYS(io_cancel),
    /* memory */
    SYS(mmap), SYS(munmap), SYS(mprotect), SYS(mremap), SYS(msync), SYS(mincore),
    SYS(madvise), SYS(brk), SYS(mlock), SYS(mlock2), SYS(munlock), SYS(mlockall),
    SYS(munlockall), SYS(remap_file_pages), SYS(membarrier), SYS(pkey_mprotect),
    SYS(pkey_alloc), SYS(pkey_free), SYS(mbind), SYS(set_mempolicy), SYS(get_mempolicy),
    SYS(set_mempolicy_home_node), SYS(memfd_secret), SYS(process_madvise),
    /* processes, threads, signals */
    SYS(fork), SYS(vfork), SYS(execve), SYS(execveat), SYS(exit), SYS(exit_group), SYS(wait4),
    SYS(waitid), SYS(kill), SYS(tkill), SYS(tgkill), SYS(rt_sigaction), SYS(rt_sigprocmask),
    SYS(rt_sigreturn), SYS(rt_sigpending), SYS(rt_sigtimedwait), SYS(rt_sigqueueinfo),
    SYS(rt_tgsigqueueinfo), SYS(rt_sigsuspend), SYS(sigaltstack), SYS(restart_syscall),
    SYS(pidfd_open), SYS(pidfd_send_signal), SYS(pidfd_getfd), SYS(process_mrelease),
    SYS(futex), SYS(futex_waitv), SYS(set_robust_list), SYS(get_robust_list),
    SYS(set_tid_address), SYS(rseq), SYS(arch_prctl), SYS(set_thread_area),
    SYS(get_thread_area), SYS(prctl), SYS(seccomp), SYS(sched_yield), SYS(sched_setparam),
    SYS(sched_getparam), SYS(sched_setscheduler), SYS(sched_getscheduler),
    SYS(sched_get_priority_max), SYS(sched_get_priority_min), SYS(sched_rr_get_interval),
    SYS(sched_setaffinity), SYS(sched_getaffinity), SYS(sched_setattr), SYS(sched_getattr),
    SYS(getpriority), SYS(setpriority), SYS(ioprio_set), SYS(ioprio_get), SYS(getrlimit),
    SYS(setrlimit), SYS(prlimit64), SYS(getrusage),
    /* ptrace-mode checked: strace and gdb of the sandbox's own processes */
    SYS(ptrace), SYS(process_vm_readv), SYS(process_vm_writev),
    /* identity */
    SYS(getpid), SYS(getppid), SYS(gettid), SYS(getuid), SYS(geteuid), SYS(getgid),
    SYS(getegid), SYS(setuid), SYS(setgid), SYS(setreuid), SYS(setregid), SYS(setresuid),
    SYS(getresuid), SYS(setresgid), SYS(getresgid), SYS(setfsuid), SYS(setfsgid),
    SYS(getgroups), SYS(setgroups), SYS(setpgid), SYS(getpgid), SYS(getpgrp), SYS(setsid),
    SYS(getsid), SYS(capget), SYS(capset), SYS(uname), SYS(sethostname), SYS(setdomainname),
    SYS(sysinfo), SYS(getcpu), SYS(getrandom), SYS(landlock_create_ruleset),
    SYS(landlock_add_rule), SYS(landlock_restrict_self),
    /* sockets (the sandbox's own network namespace) */
    SYS(connect), SYS(accept), SYS(accept4), SYS(sendto), SYS(recvfrom), SYS(sendmsg),
    SYS(recvmsg), SYS(sendmmsg), SYS(recvmmsg), SYS(shutdown), SYS(bind), SYS(listen),
    SYS(getsockname), SYS(getpeername), SYS(socketpair), SYS(setsockopt), SYS(getsockopt),
    /* System V and POSIX IPC (the sandbox's own IPC namespace) */
    SYS(shmget), SYS(shmat), SYS(shmctl), SYS(shmdt), SYS(semget), SYS(semop),
    SYS(semtimedop), SYS(semctl), SYS(msgget), SYS(msgsnd), SYS(msgrcv), SYS(msgctl),
    SYS(mq_open), SYS(mq_unlink), SYS(mq_timedsend), SYS(mq_timedreceive), SYS(mq_notify),
    SYS(mq_getsetattr),
};

/* Denied with EPERM (the tool sees "Operation not permitted"): Docker's
 * default profile's refusals and what it leaves open that matters here. */
static const struct sysname denied[] = {
    /* mounts and namespaces: the sandbox's file system view is fixed */
    SYS(mount), SYS(umount2), SYS(pivot_root), SYS(setns), SYS(move_mount), SYS(open_tree),
    SYS(fsopen), SYS(fsconfig), SYS(fsmount), SYS(fspick), SYS(mount_setattr),
    /* kernel keyrings are not namespaced: shared with the host */
    SYS(keyctl), SYS(add_key), SYS(request_key),
    /* kernel attack surface and kernel-wide observation */
    SYS(bpf), SYS(perf_event_open), SYS(userfaultfd), SYS(lookup_dcookie), SYS(syslog),
    SYS(fanotify_init), SYS(fanotify_mark), SYS(kcmp), SYS(modify_ldt), SYS(_sysctl),
    /* file handles bypass the mount namespace (the CAP_DAC_READ_SEARCH escape) */
    SYS(open_by_handle_at), SYS(name_to_handle_at),
    /* the machine */
    SYS(init_module), SYS(finit_module), SYS(delete_module), SYS(kexec_load),
    SYS(kexec_file_load), SYS(reboot), SYS(swapon), SYS(swapoff), SYS(acct), SYS(quotactl),
    SYS(quotactl_fd), SYS(settimeofday), SYS(clock_settime), SYS(clock_adjtime),
    SYS(adjtimex), SYS(iopl), SYS(ioperm), SYS(vhangup), SYS(uselib), SYS(nfsservctl),
    SYS(move_pages), SYS(migrate_pages),
    /* io_uring runs operations from kernel workers that seccomp never sees
     * and has been the source of many kernel bugs (Docker denies it too) */
    SYS(io_uring_setup), SYS(io_uring_enter), SYS(io_uring_register),
};

#define NS_FLAGS                                                                              \
    (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | \
     CLONE_NEWCGROUP | 0x00000080 /* CLONE_NEWTIME */)
#define AF_VSOCK_ 40 /* host/guest sockets: nothing in a sandbox talks to a hypervisor */

static int add_list(scmp_filter_ctx f, const struct sysname *l, size_t n, uint32_t action,
                    char *what, size_t cap)
{
    for (size_t i = 0; i < n; i++) {
        int rc;
        if (l[i].nr < 0)
            continue; /* not a syscall of this architecture */
        if ((rc = seccomp_rule_add(f, action, l[i].nr, 0)) < 0) {
            snprintf(what, cap, "%s", l[i].name);
            return rc;
        }
    }
    return 0;
}

/* The allow list (default ENOSYS), the deny list (EPERM), and the calls
 * allowed only with some arguments. */
static int build_filter(scmp_filter_ctx f, char *what, size_t cap)
{
    int rc;

    if ((rc = add_list(f, allowed, sizeof(allowed) / sizeof(allowed[0]), SCMP_ACT_ALLOW, what,
                       cap)) < 0 ||
        (rc = add_list(f, denied, sizeof(denied) / sizeof(denied[0]), SCMP_ACT_ERRNO(EPERM),
                       what, cap)) < 0)
        return rc;
    /* clone and unshare without namespace flags; with any, EPERM (one rule
     * per flag: libseccomp takes one comparison per argument). */
    snprintf(what, cap, "clone/unshare");
    if ((rc = seccomp_rule_add(f, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
                               SCMP_A0(SCMP_CMP_MASKED_EQ, NS_FLAGS, 0))) < 0 ||
        (rc = seccomp_rule_add(f, SCMP_ACT_ALLOW, SCMP_SYS(unshare), 1,
                               SCMP_A0(SCMP_CMP_MASKED_EQ, NS_FLAGS, 0))) < 0)
        return rc;
    for (int b = 0; b < 32; b++) {
        uint64_t fl = 1ull << b;
        if (!(NS_FLAGS & fl))
            continue;
        if ((rc = seccomp_rule_add(f, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(unshare), 1,
                                   SCMP_A0(SCMP_CMP_MASKED_EQ, fl, fl))) < 0 ||
            (rc = seccomp_rule_add(f, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                                   SCMP_A0(SCMP_CMP_MASKED_EQ, fl, fl))) < 0)
            return rc;
    }
    /* clone3 passes its flags in memory, out of seccomp's reach: ENOSYS
     * (the default) makes glibc fall back to clone, checked above. */
    /* socket: every family but vsock. */
    snprintf(what, cap, "socket");
    if ((rc = seccomp_rule_add(f, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1,
                               SCMP_A0(SCMP_CMP_NE, AF_VSOCK_))) < 0 ||
        (rc = seccomp_rule_add(f, SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), 1,
                               SCMP_A0(SCMP_CMP_EQ, AF_VSOCK_))) < 0)
        return rc;
    /* personality: only PER_LINUX (0), PER_LINUX32 (8), UNAME26 (0x20000)
     * and their combination; any other bit (ADDR_NO_RANDOMIZE,
     * READ_IMPLIES_EXEC, ...) is refused, the query value 0xffffffff too
     * (stricter than Docker, which allows it). */
    snprintf(what, cap, "personality");
    static const uint64_t persona[] = { 0, 8, 0x20000, 0x20008 };
    for (size_t i = 0; i < sizeof(persona) / sizeof(persona[0]); i++)
        if ((rc = seccomp_rule_add(f, SCMP_ACT_ALLOW, SCMP_SYS(personality), 1,
                                   SCMP_A0(SCMP_CMP_EQ, persona[i]))) < 0)
            return rc;
    for (int b = 0; b < 32; b++) {
        uint64_t bit = 1ull << b;
        if (b == 3 || b == 17)
            continue;
        if ((rc = seccomp_rule_add(f, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(personality), 1,
                                   SCMP_A0(SCMP_CMP_MASKED_EQ, bit, bit))) < 0)
            return rc;
    }
    /* A binary tree over ~300 calls instead of a linear chain. */
    snprintf(what, cap, "optimize");
    if ((rc = seccomp_attr_set(f, SCMP_FLTATR_CTL_OPTIMIZE, 2)) < 0)
        return rc;
    /* Only native x86-64 system calls: the filter has no other arch, and
     * calls of another (i386 int 0x80, x32) get ENOSYS instead of a kill. */
    snprintf(what, cap, "bad-arch action");
    return seccomp_attr_set(f, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_ERRNO(ENOSYS));
}

/* Builds the filter once per context (libseccomp's rule set and tree take
 * milliseconds: most of a busybox cold boot) and keeps its BPF program;
 * each sandbox's stage 1, a fork of the context's owner, loads that copy. */
int snap__confine_compile(struct snap_ctx *ctx, struct wp_err *err)
{
    scmp_filter_ctx f;
    char what[64] = "init";
    struct stat st;
    int rc, fd = -1;

    if (ctx->unconfined)
        return 0;
    if (!(f = seccomp_init(SCMP_ACT_ERRNO(ENOSYS))))
        return wp_err_set(err, -ENOMEM, "seccomp_init failed");
    if ((rc = build_filter(f, what, sizeof(what))) < 0)
        goto out;
    /* libseccomp 2.5 exports to an fd only. */
    snprintf(what, sizeof(what), "export");
    if ((fd = memfd_create("wp-seccomp", MFD_CLOEXEC)) < 0) {
        rc = -errno;
        goto out;
    }
    if ((rc = seccomp_export_bpf(f, fd)) < 0)
        goto out;
    if (fstat(fd, &st) < 0 || st.st_size <= 0 || st.st_size % sizeof(struct sock_filter) ||
        st.st_size / sizeof(struct sock_filter) > BPF_MAXINSNS) {
        rc = -EINVAL;
        goto out;
    }
    ctx->seccomp.filter = malloc((size_t)st.st_size);
    if (!ctx->seccomp.filter) {
        rc = -ENOMEM;
        goto out;
    }
    if (pread(fd, ctx->seccomp.filter, (size_t)st.st_size, 0) != st.st_size) {
        rc = -EIO;
        free(ctx->seccomp.filter);
        ctx->seccomp.filter = NULL;
        goto out;
    }
    ctx->seccomp.len = (unsigned short)(st.st_size / sizeof(struct sock_filter));
out:
    if (fd >= 0)
        close(fd);
    seccomp_release(f);
    if (rc < 0)
        return wp_err_set(err, rc, "seccomp (%s): %s", what, strerror(-rc));
    return 0;
}

void snap__confine_release(struct snap_ctx *ctx)
{
    free(ctx->seccomp.filter);
    ctx->seccomp.filter = NULL;
}

int snap__confine_task(const struct snap_ctx *ctx, bool init_keeps_admin, struct wp_err *err)
{
    int rc;

    if (ctx->unconfined)
        return 0;
    if (!ctx->seccomp.filter)
        return wp_err_set(err, WP_ESTATE, "seccomp filter not compiled");
    if ((rc = drop_caps(init_keeps_admin ? 1ull << CAP_SYS_ADMIN : 0, err)) < 0)
        return rc;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return wp_err_errno(err, "PR_SET_NO_NEW_PRIVS");
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &ctx->seccomp, 0, 0) < 0)
        return wp_err_errno(err, "seccomp filter");
    return 0;
}

/* ---- cgroup v2: the device allow-list as a BPF program --------------- */

#define INSN(c, d, s, o, i) \
    { .code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i) }
#define JEQ(reg, val, off) INSN(BPF_JMP | BPF_JEQ | BPF_K, reg, 0, off, val)

/* Allowed: char 1:3 null, 1:5 zero, 1:7 full, 1:8 random, 1:9 urandom,
 * 5:0 tty, 5:2 ptmx, 136:* pts; everything else (block devices, other
 * char devices) is refused. Returns 1 (allow) or 0 (deny). Offsets are
 * relative to the next instruction; the labels are the comments. */
static const struct bpf_insn dev_prog[] = {
    /* 0 */ INSN(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_2, BPF_REG_1, 0, 0), /* access_type */
    /* 1 */ INSN(BPF_ALU64 | BPF_AND | BPF_K, BPF_REG_2, 0, 0, 0xffff),  /* its device type */
    /* 2 */ INSN(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_3, BPF_REG_1, 4, 0), /* major */
    /* 3 */ INSN(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_4, BPF_REG_1, 8, 0), /* minor */
    /* 4 */ INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_2, 0, 12, BPF_DEVCG_DEV_CHAR), /* deny */
    /* 5 */ JEQ(BPF_REG_3, 136, 13),                                     /* allow */
    /* 6 */ JEQ(BPF_REG_3, 1, 2),                                        /* mem */
    /* 7 */ JEQ(BPF_REG_3, 5, 7),                                        /* tty */
    /* 8 */ INSN(BPF_JMP | BPF_JA, 0, 0, 8, 0),                          /* deny */
    /* 9 mem */ JEQ(BPF_REG_4, 3, 9),
    /* 10 */ JEQ(BPF_REG_4, 5, 8),
    /* 11 */ JEQ(BPF_REG_4, 7, 7),
    /* 12 */ JEQ(BPF_REG_4, 8, 6),
    /* 13 */ JEQ(BPF_REG_4, 9, 5),
    /* 14 */ INSN(BPF_JMP | BPF_JA, 0, 0, 2, 0),                         /* deny */
    /* 15 tty */ JEQ(BPF_REG_4, 0, 3),
    /* 16 */ JEQ(BPF_REG_4, 2, 2),
    /* 17 deny */ INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0),
    /* 18 */ INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    /* 19 allow */ INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 1),
    /* 20 */ INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
};

/* Load the program and attach it to the cgroup directory dir. The
 * attachment lives as long as the cgroup (the program fd is closed here).
 * Checked here only on the hybrid layout's v2 tree (this machine is v1):
 * a host where the load or attach fails gets the error, never a sandbox
 * without the device list. */
int snap__confine_cg_devices_v2(const char *dir, struct wp_err *err)
{
    char log[2048] = "";
    union bpf_attr a;
    int prog, cg, rc = 0;

    memset(&a, 0, sizeof(a));
    a.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
    a.insns = (uint64_t)(uintptr_t)dev_prog;
    a.insn_cnt = sizeof(dev_prog) / sizeof(dev_prog[0]);
    a.license = (uint64_t)(uintptr_t)"GPL";
    a.log_buf = (uint64_t)(uintptr_t)log;
    a.log_size = sizeof(log);
    a.log_level = 1;
    prog = (int)syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof(a));
    if (prog < 0)
        return wp_err_errno(err, "load the device-cgroup BPF program (%.120s)", log);
    cg = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cg < 0) {
        rc = wp_err_errno(err, "open %s", dir);
        goto out;
    }
    memset(&a, 0, sizeof(a));
    a.target_fd = (uint32_t)cg;
    a.attach_bpf_fd = (uint32_t)prog;
    a.attach_type = BPF_CGROUP_DEVICE;
    if (syscall(SYS_bpf, BPF_PROG_ATTACH, &a, sizeof(a)) < 0)
        rc = wp_err_errno(err, "attach the device program to %s", dir);
    close(cg);
out:
    close(prog);
    return rc;
}

/* v1: the devices controller's list, same nodes as the program above. */
int snap__confine_cg_devices_v1(const struct snap_ctx *ctx, const char *dir, struct wp_err *err)
{
    static const char *const allow[] = { "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm",
                                         "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm",
                                         NULL };
    int rc;

    if (ctx->unconfined)
        return 0;
    if ((rc = snap__cg_write(dir, "devices.deny", "a", err)) < 0)
        return rc;
    for (const char *const *a = allow; *a; a++)
        if ((rc = snap__cg_write(dir, "devices.allow", *a, err)) < 0)
            return rc;
    return 0;
}
