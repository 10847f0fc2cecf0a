/* node_files.c - a file put into a leased sandbox, read-only.
 *
 * The holder of a lease (a scheduler's brain) opens a TCP connection to
 * the node's relay and sends one frame {"t":"mount","env","sandbox",
 * "token","key","path","size"} followed by exactly size bytes of content
 * (pool_file_put). The relay checks the lease as for a route, then
 * pool__file_mount runs here: the content goes to a staging file on the
 * host, a detached read-only clone of it is made (open_tree +
 * mount_setattr: ro, nosuid, nodev, noexec), the staging file is unlinked
 * (the mount holds the only reference), and a forked helper that joined
 * the sandbox's user and mount namespaces and its root attaches the mount
 * at path (move_mount), creating the parent directories and an empty
 * target file first. Inside the sandbox the file is a mount point on a
 * read-only mount: writes and chmod fail with EROFS, rm and rename with
 * EBUSY, and the sandbox's seccomp filter refuses mount, umount and
 * friends. Every parent directory of path is made a mount point too (bound
 * on itself), so none can be renamed away to put another file at path:
 * nothing the sandbox runs changes what the next reader sees there. The
 * answer is {"t":"mount","ok":true} or an error
 * frame. */
#define WP_LOG_COMPONENT "files"
#include "pool/pool_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agentlink/agentlink.h"
#include "base/buf.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"
#include "pool/pool.h"

#define STAGING_DIR "/run/warmpool/node-files"

/* ---- the node: attach a read-only copy in the sandbox ---- */

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* In the forked helper: mkdir -p the parents of path, make the target an
 * empty file unless it is one already, attach tree there. Returns 0 or
 * an errno; *what says which step. */
static int attach_in_sandbox(int tree, const char *path, const char **what)
{
    char dir[512];
    snprintf(dir, sizeof(dir), "%s", path);
    for (char *s = dir + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
            *what = "mkdir";
            return errno;
        }
        /* Each parent a mount point (bound on itself, submounts kept): the
         * sandbox cannot rename one away and put another file at path. */
        struct statx sx;
        if (statx(AT_FDCWD, dir, AT_SYMLINK_NOFOLLOW, STATX_TYPE, &sx) < 0 ||
            !S_ISDIR(sx.stx_mode)) {
            *what = "a parent of the mount path is not a directory";
            return ENOTDIR;
        }
        if (!(sx.stx_attributes & STATX_ATTR_MOUNT_ROOT) &&
            mount(dir, dir, NULL, MS_BIND | MS_REC, NULL) < 0) {
            *what = "bind a parent on itself";
            return errno;
        }
        *s = '/';
    }
    /* O_NOFOLLOW: a symlink the sandbox planted at path is refused. */
    int fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0444);
    if (fd < 0 && errno != EROFS && errno != ETXTBSY) {
        *what = "create the target";
        return errno;
    }
    if (fd >= 0) {
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            close(fd);
            *what = "the target is not a regular file";
            return EINVAL;
        }
        close(fd);
    }
    if (syscall(SYS_move_mount, tree, "", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH) < 0) {
        *what = "move_mount";
        return errno;
    }
    return 0;
}

static int same_ns(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_ino == sb.st_ino &&
           sa.st_dev == sb.st_dev;
}

/* What runs inside the sandbox: 0 or an errno, *what naming the step. */
typedef int (*in_sandbox_fn)(void *arg, const char **what);

/* Run fn(arg) in a forked helper that joined the user namespace (as its
 * root) and the mount namespace of the sandbox whose root is root
 * ("/proc/<init>/root") and chrooted there. Returns 0 or -EIO with what
 * failed in err. */
static int in_sandbox(const char *root, in_sandbox_fn fn, void *arg, struct wp_err *err)
{
    char ns[64], userns[64], msg[160] = "";
    int pid = 0, mntfd = -1, userfd = -1, rootfd = -1, rc = 0, pfd[2] = { -1, -1 };

    if (sscanf(root, "/proc/%d/root", &pid) != 1 || pid <= 0)
        return wp_err_set(err, WP_EINVAL_INPUT, "bad sandbox root %s", root);
    snprintf(ns, sizeof(ns), "/proc/%d/ns/mnt", pid);
    snprintf(userns, sizeof(userns), "/proc/%d/ns/user", pid);
    mntfd = open(ns, O_RDONLY | O_CLOEXEC);
    rootfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (!same_ns(userns, "/proc/self/ns/user"))
        userfd = open(userns, O_RDONLY | O_CLOEXEC);
    if (mntfd < 0 || rootfd < 0 || pipe2(pfd, O_CLOEXEC) < 0) {
        rc = wp_err_errno(err, "open the sandbox's namespaces (pid %d)", pid);
        goto out;
    }
    pid_t child = fork();
    if (child < 0) {
        rc = wp_err_errno(err, "fork");
        goto out;
    }
    if (child == 0) {
        const char *what = "setns";
        int e = 0;
        /* As the sandbox's root (what its own writes are): a host uid the
         * sandbox's user namespace does not map could not create files. */
        if ((userfd >= 0 && (setns(userfd, CLONE_NEWUSER) < 0 || setresgid(0, 0, 0) < 0 ||
                             setresuid(0, 0, 0) < 0)) ||
            setns(mntfd, CLONE_NEWNS) < 0)
            e = errno;
        else if (fchdir(rootfd) < 0 || chroot(".") < 0 || chdir("/") < 0)
            e = errno, what = "enter the sandbox's root";
        else
            e = fn(arg, &what);
        if (e) {
            char m[160];
            int n = snprintf(m, sizeof(m), "%s: %s", what, strerror(e));
            (void)!write(pfd[1], m, (size_t)n);
        }
        _exit(e ? 1 : 0);
    }
    close(pfd[1]);
    pfd[1] = -1;
    ssize_t n = read(pfd[0], msg, sizeof(msg) - 1);
    msg[n > 0 ? n : 0] = '\0';
    int st = 0;
    while (waitpid(child, &st, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        rc = wp_err_set(err, -EIO, "%s", msg[0] ? msg : "the helper in the sandbox failed");
out:
    for (int i = 0; i < 2; i++)
        if (pfd[i] >= 0)
            close(pfd[i]);
    if (mntfd >= 0)
        close(mntfd);
    if (userfd >= 0)
        close(userfd);
    if (rootfd >= 0)
        close(rootfd);
    return rc;
}

struct attach_arg {
    int tree;
    const char *path;
};

static int attach_fn(void *arg, const char **what)
{
    struct attach_arg *a = arg;
    return attach_in_sandbox(a->tree, a->path, what);
}

int pool__file_mount(const char *root, const char *path, const char *data, size_t len,
                     struct wp_err *err)
{
    char tmp[256];
    struct mount_attr attr = { .attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID |
                                           MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC };
    int tree, fd, rc = 0;

    if (wp_mkdir_p(STAGING_DIR, 0700, err) < 0)
        return wp_err_wrap(err, "staging");
    snprintf(tmp, sizeof(tmp), STAGING_DIR "/f.XXXXXX");
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return wp_err_errno(err, "mkstemp %s", tmp);
    if (write_all(fd, data, len) < 0 || fchmod(fd, 0444) < 0) {
        rc = wp_err_errno(err, "write %s", tmp);
        close(fd);
        unlink(tmp);
        return rc;
    }
    close(fd);
    tree = (int)syscall(SYS_open_tree, AT_FDCWD, tmp, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    if (tree < 0)
        rc = wp_err_errno(err, "open_tree");
    else if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0)
        rc = wp_err_errno(err, "mount_setattr read-only");
    else
        rc = in_sandbox(root, attach_fn, &(struct attach_arg){ tree, path }, err);
    /* Only now: move_mount refuses a source already unlinked (ENOENT). The
     * mount keeps the inode; nothing on the host names it any more. */
    unlink(tmp);
    if (tree >= 0)
        close(tree);
    return rc < 0 ? wp_err_wrap(err, "mount at %s", path) : 0;
}

static int detach_fn(void *arg, const char **what)
{
    const char *path = arg;
    if (umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) < 0 && errno != EINVAL) {
        *what = "umount";
        return errno;
    }
    unlink(path); /* the empty file the mount covered */
    return 0;
}

int pool__file_unmount(const char *root, const char *path, struct wp_err *err)
{
    int rc = in_sandbox(root, detach_fn, (void *)path, err);
    return rc < 0 ? wp_err_wrap(err, "unmount %s", path) : 0;
}

/* ---- the holder: send a file through the node's relay ---- */

struct put {
    struct ev_loop *loop;
    ev_io io;
    ev_timer timer;
    struct wp_buf out;  /* the frame, then the content */
    size_t sent;
    char *data;         /* owned */
    size_t len;
    struct wp_buf in;   /* the answer frame */
    pool_done_cb cb;
    void *ctx;
};

static void put_done(struct put *p, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void put_done(struct put *p, int status, const char *fmt, ...)
{
    struct wp_err err = { .code = status };
    va_list ap;
    ev_io_stop(p->loop, &p->io);
    ev_timer_stop(p->loop, &p->timer);
    close(p->io.fd);
    va_start(ap, fmt);
    vsnprintf(err.msg, sizeof(err.msg), fmt, ap);
    va_end(ap);
    p->cb(p->ctx, status, status < 0 ? &err : NULL);
    wp_buf_free(&p->out);
    wp_buf_free(&p->in);
    free(p->data);
    free(p);
}

static void put_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    put_done(w->data, WP_ETIMEDOUT, "the node did not answer the mount in time");
}

static void put_io(struct ev_loop *loop, ev_io *w, int revents)
{
    struct put *p = w->data;
    (void)loop;
    if (revents & EV_WRITE) {
        size_t total = p->out.len + p->len;
        while (p->sent < total) {
            const char *src = p->sent < p->out.len ? p->out.data + p->sent
                                                   : p->data + (p->sent - p->out.len);
            size_t n = p->sent < p->out.len ? p->out.len - p->sent : total - p->sent;
            ssize_t k = send(w->fd, src, n, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (k < 0 && (errno == EAGAIN || errno == EINTR))
                return;
            if (k <= 0) {
                put_done(p, -errno ? -errno : -EIO, "send to the relay: %s", strerror(errno));
                return;
            }
            p->sent += (size_t)k;
        }
        ev_io_stop(p->loop, w);
        ev_io_set(w, w->fd, EV_READ);
        ev_io_start(p->loop, w);
        return;
    }
    char buf[4096];
    ssize_t n = recv(w->fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        put_done(p, -ECONNRESET, "the relay closed before answering the mount");
        return;
    }
    if (wp_buf_append(&p->in, buf, (size_t)n) < 0) {
        put_done(p, WP_EPROTO, "relay answer too large");
        return;
    }
    const uint8_t *payload;
    size_t plen;
    int r = alink_frame_decode((const uint8_t *)p->in.data, p->in.len, 4096, &payload, &plen);
    if (r == 0)
        return;
    json_t *o = r > 0 ? json_loadb((const char *)payload, plen, 0, NULL) : NULL;
    const char *t = json_string_value(json_object_get(o, "t"));
    const char *code = json_string_value(json_object_get(o, "code"));
    char text[220];
    snprintf(text, sizeof(text), "%s",
             json_string_value(json_object_get(o, "message")) ?: "bad answer");
    bool ok = t && !strcmp(t, "mount") && json_is_true(json_object_get(o, "ok"));
    int status = ok ? 0
                 : code && !strcmp(code, "stale_token") ? WP_ESTALE
                 : code && !strcmp(code, "not_found") ? WP_ENOTFOUND
                                                      : WP_EPROTO;
    json_decref(o);
    put_done(p, status, "%s", ok ? "ok" : text);
}

int pool_file_put(struct ev_loop *loop, const struct pool_claim_result *res, const char *env,
                  const char *path, char *data, size_t len, pool_done_cb cb, void *ctx,
                  struct wp_err *err)
{
    struct sockaddr_in sa = { .sin_family = AF_INET };
    char host[64], tok[32];
    const char *colon = strrchr(res->relay, ':');
    int rc = 0, fd = -1;

    if (len > POOL_FILE_MAX) {
        free(data);
        return wp_err_set(err, WP_ETOOBIG, "file of %zu bytes; a mount takes at most %d", len,
                          POOL_FILE_MAX);
    }
    if (!colon || (size_t)(colon - res->relay) >= sizeof(host)) {
        free(data);
        return wp_err_set(err, WP_EINVAL_INPUT, "no relay address for sandbox %s", res->sandbox);
    }
    snprintf(host, sizeof(host), "%.*s", (int)(colon - res->relay), res->relay);
    sa.sin_port = htons((uint16_t)atoi(colon + 1));
    struct put *p = calloc(1, sizeof(*p));
    if (!p || inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        free(p);
        free(data);
        return wp_err_set(err, WP_EINVAL_INPUT, "bad relay address %s", res->relay);
    }
    p->data = data;
    p->len = len;
    wp_buf_init(&p->out, 8192);
    wp_buf_init(&p->in, 8192);
    snprintf(tok, sizeof(tok), "%llu", (unsigned long long)res->token);
    json_t *m = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I}", "t", data ? "mount" : "unmount",
                          "env", env,
                          "sandbox", res->sandbox, "token", tok, "key", res->rkey, "path", path,
                          "size", (json_int_t)len);
    rc = m ? alink_frame_encode(&p->out, m, 4096, err) : wp_err_set(err, -ENOMEM, "oom");
    json_decref(m);
    if (rc == 0)
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (rc < 0 || fd < 0 ||
        (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS)) {
        rc = rc < 0 ? rc : wp_err_errno(err, "connect to relay %s", res->relay);
        if (fd >= 0)
            close(fd);
        wp_buf_free(&p->out);
        wp_buf_free(&p->in);
        free(p->data);
        free(p);
        return rc;
    }
    p->loop = loop;
    p->cb = cb;
    p->ctx = ctx;
    ev_io_init(&p->io, put_io, fd, EV_WRITE);
    p->io.data = p;
    ev_io_start(loop, &p->io);
    ev_timer_init(&p->timer, put_timeout, 30.0, 0.);
    p->timer.data = p;
    ev_timer_start(loop, &p->timer);
    return 0;
}
