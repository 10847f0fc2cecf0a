/* userns.c - a user namespace per sandbox.
 *
 * Root inside a sandbox is an unprivileged range of host ids: uid/gid 0..
 * 65535 inside map to base..base+65535 on the host, base = 2^30 + 65536*N.
 * A range belongs to a lineage: a cold boot takes a free one; when that
 * sandbox is checkpointed the range passes to the image (CRIU records the
 * maps in userns.img and restores every clone with the same maps, and the
 * files the image's build wrote into its layer are owned by those ids);
 * the image's clones share it. It is freed with its owner: the booted
 * sandbox when it is destroyed unchekpointed, else the image when deleted.
 *
 * Allocation is machine-wide, like net.c's address slots, but persistent
 * (images outlive a reboot): a file UNS_DIR/<N> naming the owner's dir,
 * made with link() under UNS_DIR/.lock. Ranges that overlap a uid or gid
 * of /etc/passwd, /etc/group, /etc/subuid or /etc/subgid are never used.
 *
 * Lower layers (the generated host layer, an operator's rootfs) stay
 * owned by the host's root on disk; each sandbox sees them through an
 * idmapped mount (host 0 -> base), so root inside owns them and copy-up
 * works. The upper and work dirs are chowned to base before the overlay
 * is mounted.
 */
#define WP_LOG_COMPONENT "snap"
#include "snap_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/mount.h>
#include <linux/openat2.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"

#define UNS_DIR "/var/lib/warmpool/userns"
#define UNS_FIRST (1u << 30)
/* Ranges stay below 2^31: some tools treat ids as signed. */
#define UNS_SLOTS ((int)((0x80000000u - UNS_FIRST) / SNAP__UNS_SIZE) - 1)

uid_t snap__userns_base(int idx)
{
    return (uid_t)(UNS_FIRST + (uint32_t)idx * SNAP__UNS_SIZE);
}

int snap__userns_index(uid_t base)
{
    if (base < UNS_FIRST || (base - UNS_FIRST) % SNAP__UNS_SIZE)
        return -1;
    uint32_t idx = (base - UNS_FIRST) / SNAP__UNS_SIZE;
    return idx < (uint32_t)UNS_SLOTS ? (int)idx : -1;
}

/* ---- probing ---- */

bool snap__userns_supported(char *why, size_t cap)
{
    char *t = NULL;
    int status;
    pid_t pid;

    if (wp_read_file("/proc/sys/user/max_user_namespaces", 64, &t, NULL, NULL) == 0) {
        bool zero = atol(t) == 0;
        free(t);
        if (zero) {
            snprintf(why, cap, "/proc/sys/user/max_user_namespaces is 0");
            return false;
        }
    }
    pid = fork();
    if (pid < 0) {
        snprintf(why, cap, "fork: %s", strerror(errno));
        return false;
    }
    if (pid == 0)
        _exit(unshare(CLONE_NEWUSER) < 0 ? errno & 0x7f : 0);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        snprintf(why, cap, "unshare(CLONE_NEWUSER): %s",
                 WIFEXITED(status) ? strerror(WEXITSTATUS(status)) : "killed");
        return false;
    }
    return true;
}

/* criu 4.1.1 opens each restored task's userfaultfd with userfaultfd(2)
 * from the task itself, inside the sandbox's user namespace; the kernel
 * allows that only with CAP_SYS_PTRACE in the initial user namespace or
 * vm.unprivileged_userfaultfd = 1 (/dev/userfaultfd would do, but this
 * criu does not use it). Without the sysctl a lazy restore fails with
 * "uffd: Unable to open an userfaultfd descriptor: Operation not
 * permitted", so the caller restores eagerly instead. */
bool snap__userns_lazy_ok(void)
{
    char *t = NULL;
    bool ok;

    if (wp_read_file("/proc/sys/vm/unprivileged_userfaultfd", 64, &t, NULL, NULL) < 0)
        return false;
    ok = atoi(t) == 1;
    free(t);
    return ok;
}

/* ---- allocation ---- */

static int lock_ranges(struct wp_err *err)
{
    int fd;

    if (wp_mkdir_p(UNS_DIR, 0700, err) < 0)
        return wp_err_wrap(err, "user namespaces");
    fd = open(UNS_DIR "/.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return wp_err_errno(err, "open " UNS_DIR "/.lock");
    while (flock(fd, LOCK_EX) < 0) {
        if (errno != EINTR) {
            int rc = wp_err_errno(err, "lock " UNS_DIR "/.lock");
            close(fd);
            return rc;
        }
    }
    return fd;
}

/* Whether [lo, lo+SIZE) holds an id named in one of the host's files:
 * field 3 (passwd, group) or a "name:start:count" range (subuid/gid). */
static bool host_ids_overlap(uid_t lo)
{
    static const char *const files[] = { "/etc/passwd", "/etc/group", "/etc/subuid",
                                         "/etc/subgid" };
    uint64_t hi = (uint64_t)lo + SNAP__UNS_SIZE;
    bool hit = false;

    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]) && !hit; i++) {
        char line[1024];
        FILE *f = fopen(files[i], "re");
        if (!f)
            continue;
        bool sub = strstr(files[i], "sub") != NULL;
        while (!hit && fgets(line, sizeof(line), f)) {
            unsigned long long a = 0, n = 1;
            if (sub ? sscanf(line, "%*[^:]:%llu:%llu", &a, &n) != 2
                    : sscanf(line, "%*[^:]:%*[^:]:%llu", &a) != 1)
                continue;
            hit = a < hi && a + n > lo;
        }
        fclose(f);
    }
    return hit;
}

int snap__userns_alloc(const char *owner, struct wp_err *err)
{
    char tmp[128], path[128];
    int lock, rc = WP_ESTATE;

    if ((lock = lock_ranges(err)) < 0)
        return lock;
    snprintf(tmp, sizeof(tmp), UNS_DIR "/.new-%d", (int)getpid());
    unlink(tmp);
    if (wp_write_file(tmp, owner, strlen(owner), 0600, err) < 0) {
        close(lock);
        return wp_err_wrap(err, "user namespaces");
    }
    for (int i = 0; i < UNS_SLOTS; i++) {
        struct stat st;
        snprintf(path, sizeof(path), UNS_DIR "/%d", i);
        if (lstat(path, &st) == 0 || host_ids_overlap(snap__userns_base(i)))
            continue;
        if (link(tmp, path) == 0) {
            rc = i;
            break;
        }
        if (errno != EEXIST) {
            rc = wp_err_errno(err, "user namespaces: link %s", path);
            break;
        }
    }
    unlink(tmp);
    close(lock);
    if (rc == WP_ESTATE)
        return wp_err_set(err, WP_ESTATE, "user namespaces: all %d id ranges are in use",
                          UNS_SLOTS);
    return rc;
}

static bool owned_by(int idx, const char *owner)
{
    char path[128], *t = NULL;
    bool mine;

    snprintf(path, sizeof(path), UNS_DIR "/%d", idx);
    if (wp_read_file(path, 1024, &t, NULL, NULL) < 0)
        return false;
    mine = strcmp(t, owner) == 0;
    free(t);
    return mine;
}

int snap__userns_transfer(int idx, const char *from, const char *to, struct wp_err *err)
{
    char path[128];
    int lock, rc = 0;

    if ((lock = lock_ranges(err)) < 0)
        return lock;
    snprintf(path, sizeof(path), UNS_DIR "/%d", idx);
    if (!owned_by(idx, from))
        rc = wp_err_set(err, WP_ESTATE, "user namespaces: range %d is not %s's", idx, from);
    else
        rc = wp_write_file(path, to, strlen(to), 0600, err);
    close(lock);
    return rc;
}

void snap__userns_release(int idx, const char *owner)
{
    char path[128];
    int lock;

    if (idx < 0 || (lock = lock_ranges(NULL)) < 0)
        return;
    snprintf(path, sizeof(path), UNS_DIR "/%d", idx);
    if (owned_by(idx, owner))
        unlink(path);
    close(lock);
}

int snap__userns_sweep(void)
{
    DIR *d = opendir(UNS_DIR);
    struct dirent *e;
    int lock, n = 0;

    if (!d)
        return 0;
    if ((lock = lock_ranges(NULL)) < 0) {
        closedir(d);
        return 0;
    }
    while ((e = readdir(d))) {
        char path[300], partial[1100], *t = NULL;
        struct stat st;
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), UNS_DIR "/%s", e->d_name);
        if (wp_read_file(path, 1024, &t, NULL, NULL) < 0)
            continue;
        /* An image being written is still its range's owner. */
        snprintf(partial, sizeof(partial), "%s.partial", t);
        bool gone = t[0] == '/' && stat(t, &st) < 0 && errno == ENOENT &&
                    stat(partial, &st) < 0 && errno == ENOENT;
        free(t);
        if (gone) {
            log_info("gc: releasing uid range=%s of a removed owner", e->d_name);
            unlink(path);
            n++;
        }
    }
    closedir(d);
    close(lock);
    return n;
}

/* ---- maps ---- */

int snap__userns_write_maps(pid_t pid, uid_t base, struct wp_err *err)
{
    static const char *const files[] = { "uid_map", "gid_map" };
    char path[64], map[64];
    int n = snprintf(map, sizeof(map), "0 %u %u\n", (unsigned)base, SNAP__UNS_SIZE);

    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, files[i]);
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
            return wp_err_errno(err, "open %s", path);
        if (write(fd, map, (size_t)n) != n) {
            int rc = wp_err_errno(err, "write %s", path);
            close(fd);
            return rc;
        }
        close(fd);
    }
    return 0;
}

/* An fd of a user namespace with the range's maps and no process in it:
 * what an idmapped mount needs. A child unshares and waits; we write its
 * maps, keep its namespace, and let it go. */
int snap__userns_fd(uid_t base, struct wp_err *err)
{
    int go[2], ready[2], fd = -1, rc;
    char path[64], c;
    pid_t pid;

    if (pipe2(go, O_CLOEXEC) < 0)
        return wp_err_errno(err, "pipe");
    if (pipe2(ready, O_CLOEXEC) < 0) {
        rc = wp_err_errno(err, "pipe");
        close(go[0]);
        close(go[1]);
        return rc;
    }
    pid = fork();
    if (pid < 0) {
        rc = wp_err_errno(err, "fork");
        goto out;
    }
    if (pid == 0) {
        close(go[1]);
        close(ready[0]);
        if (unshare(CLONE_NEWUSER) < 0)
            _exit(1);
        (void)!write(ready[1], "u", 1);
        /* Blocks until the parent closes its end. */
        (void)!read(go[0], &c, 1);
        _exit(0);
    }
    close(ready[1]);
    ready[1] = -1;
    if (read(ready[0], &c, 1) != 1) {
        rc = wp_err_set(err, WP_ECHILD, "unshare(CLONE_NEWUSER) failed in a child");
    } else if ((rc = snap__userns_write_maps(pid, base, err)) == 0) {
        snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            rc = wp_err_errno(err, "open %s", path);
    }
    close(go[1]);
    go[1] = -1;
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
out:
    for (int i = 0; i < 2; i++) {
        if (go[i] >= 0)
            close(go[i]);
        if (ready[i] >= 0)
            close(ready[i]);
    }
    return rc < 0 ? rc : fd;
}

int snap__userns_idmap_mount(const char *src, const char *dst, int usernsfd, struct wp_err *err)
{
    struct mount_attr attr = { .attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_NODEV,
                               .userns_fd = (uint64_t)usernsfd };
    int rc = 0, fd;

    if (mkdir(dst, 0755) < 0 && errno != EEXIST)
        return wp_err_errno(err, "mkdir %s", dst);
    fd = (int)syscall(SYS_open_tree, AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    if (fd < 0)
        return wp_err_errno(err, "open_tree %s", src);
    if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0)
        rc = wp_err_errno(err, "idmap %s", src);
    else if (syscall(SYS_move_mount, fd, "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH) < 0)
        rc = wp_err_errno(err, "attach idmapped %s on %s", src, dst);
    close(fd);
    return rc;
}

/* ---- a sandbox's dirs ---- */

int snap__userns_own_dirs(const struct snap_sandbox *sb, const char *rw, uid_t base,
                          struct wp_err *err)
{
    static const char *const subs[] = { "upper", "work", NULL };
    char path[700];

    /* Root inside must reach its /dev and the overlay through this dir
     * (stage 1 mounts them by path): search for the range's group only. */
    if (chown(sb->dir, 0, base) < 0 || chmod(sb->dir, 0710) < 0)
        return wp_err_errno(err, "own %s", sb->dir);
    for (int i = 0; subs[i]; i++) {
        snprintf(path, sizeof(path), "%s/%s", rw, subs[i]);
        if (chown(path, base, base) < 0)
            return wp_err_errno(err, "chown %s", path);
    }
    return 0;
}

int snap__userns_record(const struct snap_sandbox *sb, int idx, struct wp_err *err)
{
    char path[700], text[32];
    int n = snprintf(text, sizeof(text), "%d\n", idx);

    snprintf(path, sizeof(path), "%s/userns", sb->dir);
    return wp_write_file(path, text, (size_t)n, 0600, err);
}

/* net.c writes resolv.conf, hosts and nsswitch.conf into the root as the
 * host's root: hand them to root inside, so it may edit them as any file
 * of its image. The dir is opened inside the root without following a
 * symlink, and the files are changed without following one either. */
int snap__userns_own_etc(const struct snap_sandbox *sb, uid_t base, struct wp_err *err)
{
    static const char *const files[] = { "resolv.conf", "hosts", "nsswitch.conf" };
    struct open_how how = { .flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
                            .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV };
    int root, dir, rc = 0;

    root = open(sb->root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root < 0)
        return wp_err_errno(err, "open %s", sb->root);
    dir = (int)syscall(SYS_openat2, root, "etc", &how, sizeof(how));
    close(root);
    if (dir < 0)
        return wp_err_errno(err, "open %s/etc", sb->root);
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        if (fchownat(dir, files[i], base, base, AT_SYMLINK_NOFOLLOW) < 0 && errno != ENOENT) {
            rc = wp_err_errno(err, "chown %s/etc/%s", sb->root, files[i]);
            break;
        }
    close(dir);
    return rc;
}

int snap__userns_read(const char *dir)
{
    char path[700], *t = NULL;
    int idx = -1;

    snprintf(path, sizeof(path), "%s/userns", dir);
    if (wp_read_file(path, 32, &t, NULL, NULL) < 0)
        return -1;
    if (sscanf(t, "%d", &idx) != 1 || idx < 0 || idx >= UNS_SLOTS)
        idx = -1;
    free(t);
    return idx;
}

/* The maps are a function of base alone, so a namespace made for a base
 * serves every later mount for it, even after its range was freed and
 * taken again: keep a few per process (a restore then forks no child). */
static int userns_fd_cached(uid_t base, struct wp_err *err)
{
    static struct { uid_t base; int fd; } cache[16];
    static unsigned next;
    int fd;

    for (size_t i = 0; i < sizeof(cache) / sizeof(cache[0]); i++)
        if (cache[i].fd > 0 && cache[i].base == base)
            return cache[i].fd;
    if ((fd = snap__userns_fd(base, err)) < 0)
        return fd;
    unsigned slot = next++ % (sizeof(cache) / sizeof(cache[0]));
    if (cache[slot].fd > 0)
        close(cache[slot].fd);
    cache[slot].base = base;
    cache[slot].fd = fd;
    return fd;
}

/* The lowers of a sandbox's overlay, "a:b", each that is owned by the
 * host's root seen through an idmapped mount at <dir>/lowerN. */
int snap__userns_lowers(const struct snap_sandbox *sb, uid_t base, const char *const *lowers,
                        int n, char *out, size_t cap, struct wp_err *err)
{
    int fd = -1, rc = 0;
    size_t used = 0;

    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        char dst[700];
        struct stat st;
        const char *use = lowers[i];
        if (stat(lowers[i], &st) < 0)
            return wp_err_errno(err, "stat %s", lowers[i]);
        if (st.st_uid != base) {
            if (fd < 0 && (fd = rc = userns_fd_cached(base, err)) < 0)
                return rc;
            snprintf(dst, sizeof(dst), "%s/lower%d", sb->dir, i);
            if ((rc = snap__userns_idmap_mount(lowers[i], dst, fd, err)) < 0)
                break;
            use = dst;
        }
        int w = snprintf(out + used, cap - used, "%s%s", i ? ":" : "", use);
        if (w < 0 || (size_t)w >= cap - used) {
            rc = wp_err_set(err, WP_EINVAL_INPUT, "overlay lowers too long");
            break;
        }
        used += (size_t)w;
    }
    return rc < 0 ? rc : 0;
}

/* ---- the network of a sandbox in a user namespace ---- */

static int lo_up(void)
{
    struct ifreq ifr = { 0 };
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), rc = 0;

    if (s < 0)
        return -errno;
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        rc = -errno;
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (rc == 0 && ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        rc = -errno;
    close(s);
    return rc;
}

/* The sandbox's network namespace belongs to its user namespace, so a
 * process of the sandbox cannot make the veth's host end. A child of ours
 * (host root) enters that namespace and does: loopback up, and for a
 * networked sandbox the veth through sockets opened in the host's. */
/* Enter pid's network namespace, loopback up, the veth; msg says what
 * failed (empty on success). The caller's network namespace changes. */
static void net_in(pid_t pid, int slot, char *msg, size_t cap)
{
    struct snap__net_fds nf = { -1, -1 };
    char path[64];
    int ns, rc;

    msg[0] = '\0';
    snprintf(path, sizeof(path), "/proc/%d/ns/net", (int)pid);
    ns = open(path, O_RDONLY | O_CLOEXEC);
    if (slot >= 0 && snap__net_host_fds(&nf) < 0)
        snprintf(msg, cap, "network: host sockets: %s", strerror(errno));
    else if (ns < 0 || setns(ns, CLONE_NEWNET) < 0)
        snprintf(msg, cap, "enter %s: %s", path, strerror(errno));
    else if ((rc = lo_up()) < 0)
        snprintf(msg, cap, "bring loopback up: %s", strerror(-rc));
    else if (slot >= 0)
        snap__net_attach(slot, &nf, msg, cap);
    snap__net_close_fds(&nf);
    if (ns >= 0)
        close(ns);
}

int snap__userns_net(pid_t pid, int slot, bool here, struct wp_err *err)
{
    char msg[300];
    int p[2], status, rc = 0;
    pid_t child;

    /* A single-threaded helper enters and comes back: no fork on the
     * restore path. */
    if (here) {
        int self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
        if (self < 0)
            return wp_err_errno(err, "open /proc/self/ns/net");
        net_in(pid, slot, msg, sizeof(msg));
        if (setns(self, CLONE_NEWNET) < 0 && !msg[0])
            snprintf(msg, sizeof(msg), "back to our network namespace: %s", strerror(errno));
        close(self);
        return msg[0] ? wp_err_set(err, WP_ECHILD, "%s", msg) : 0;
    }
    if (pipe2(p, O_CLOEXEC) < 0)
        return wp_err_errno(err, "pipe");
    child = fork();
    if (child < 0) {
        rc = wp_err_errno(err, "fork");
        close(p[0]);
        close(p[1]);
        return rc;
    }
    if (child == 0) {
        close(p[0]);
        net_in(pid, slot, msg, sizeof(msg));
        if (msg[0])
            (void)!write(p[1], msg, strlen(msg));
        _exit(msg[0] ? 1 : 0);
    }
    close(p[1]);
    ssize_t n = read(p[0], msg, sizeof(msg) - 1);
    close(p[0]);
    while (waitpid(child, &status, 0) < 0 && errno == EINTR)
        ;
    if (n > 0) {
        msg[n] = '\0';
        return wp_err_set(err, WP_ECHILD, "%s", msg);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return wp_err_set(err, WP_ECHILD, "sandbox network set-up failed");
    return 0;
}

/* ---- boot: the host's half of the middle's unshare ---- */

int snap__userns_parent(int sync, pid_t mid, uid_t base, int slot, struct wp_err *err)
{
    char c = 0;
    int rc;

    if (read(sync, &c, 1) != 1 || c != 'u')
        return wp_err_set(err, WP_ECHILD, "sandbox setup exited before its user namespace");
    /* Stage 1 brings loopback up itself: only a veth needs us inside. */
    if ((rc = snap__userns_write_maps(mid, base, err)) < 0 ||
        (slot >= 0 && (rc = snap__userns_net(mid, slot, false, err)) < 0)) {
        (void)!write(sync, "n", 1);
        return rc;
    }
    return write(sync, "y", 1) == 1 ? 0 : wp_err_errno(err, "sync with the sandbox");
}

int snap__userns_child(int sync, int flags, char *msg, size_t cap)
{
    char c = 0;

    /* With CLONE_NEWUSER the user namespace is made first and owns the
     * others: its root may mount proc, configure its network, etc. */
    if (unshare(CLONE_NEWUSER | flags) < 0) {
        snprintf(msg, cap, "unshare namespaces: %s", strerror(errno));
        return -1;
    }
    if (write(sync, "u", 1) != 1 || read(sync, &c, 1) != 1 || c != 'y') {
        snprintf(msg, cap, "user namespace set-up by the host failed");
        return -1;
    }
    /* Host root's supplementary groups would otherwise stay with us. */
    if (setresgid(0, 0, 0) < 0 || setgroups(0, NULL) < 0 || setresuid(0, 0, 0) < 0) {
        snprintf(msg, cap, "become root of the user namespace: %s", strerror(errno));
        return -1;
    }
    return 0;
}
