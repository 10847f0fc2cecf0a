/* fs.c - file-system helpers. */
#include "fs.h"
#include "err.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/openat2.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

int wp_mkdir_p(const char *path, int mode, struct wp_err *err)
{
    char tmp[4096];
    size_t len = strlen(path);

    if (len == 0 || len >= sizeof(tmp))
        return wp_err_set(err, WP_EINVAL_INPUT, "mkdir: bad path length");
    memcpy(tmp, path, len + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, mode) < 0 && errno != EEXIST)
            return wp_err_errno(err, "mkdir %s", tmp);
        *p = '/';
    }
    if (mkdir(tmp, mode) < 0 && errno != EEXIST)
        return wp_err_errno(err, "mkdir %s", tmp);
    return 0;
}

static int rm_busy;

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if (flag == FTW_DP) {
        if (rmdir(p) < 0 && errno != ENOENT)
            rm_busy = -errno;
    } else if (unlink(p) < 0 && errno != ENOENT) {
        rm_busy = -errno;
    }
    return 0;
}

int wp_rm_rf(const char *path, struct wp_err *err)
{
    struct stat st;

    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : wp_err_errno(err, "stat %s", path);
    rm_busy = 0;
    /* FTW_MOUNT: stay on one file system, so a mount left under path
     * (a sandbox root) is never emptied through it. */
    if (nftw(path, rm_one, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) < 0)
        return wp_err_errno(err, "remove %s", path);
    if (rm_busy < 0) {
        errno = -rm_busy;
        return wp_err_errno(err, "remove %s (something under it is busy)", path);
    }
    return 0;
}

int wp_write_file(const char *path, const void *data, size_t len, int mode,
                  struct wp_err *err)
{
    char tmp[4096];
    const char *p = data;
    int fd;

    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, getpid()) >= (int)sizeof(tmp))
        return wp_err_set(err, WP_EINVAL_INPUT, "path too long: %s", path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return wp_err_errno(err, "create %s", tmp);
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            wp_err_errno(err, "write %s", tmp);
            close(fd);
            unlink(tmp);
            return err ? err->code : -EIO;
        }
        p += n;
        len -= (size_t)n;
    }
    close(fd);
    if (rename(tmp, path) < 0) {
        int code = wp_err_errno(err, "rename %s", path);
        unlink(tmp);
        return code;
    }
    return 0;
}

int wp_read_secret_line(const char *path, char *buf, size_t cap, struct wp_err *err)
{
    char line[1024] = "";
    FILE *f = fopen(path, "re");
    if (!f)
        return wp_err_errno(err, "password file %s", path);
    bool ok = fgets(line, sizeof(line), f) != NULL;
    fclose(f);
    size_t n = strcspn(line, "\r\n");
    int rc = 0;
    if (!ok || n == 0)
        rc = wp_err_set(err, WP_ECONFIG, "password file %s: empty first line", path);
    else if (n >= cap || n >= sizeof(line) - 1)
        rc = wp_err_set(err, WP_ECONFIG, "password file %s: first line longer than %zu bytes",
                        path, cap - 1);
    else
        snprintf(buf, cap, "%.*s", (int)n, line);
    explicit_bzero(line, sizeof(line));
    return rc;
}

int wp_read_file(const char *path, size_t max, char **out, size_t *len,
                 struct wp_err *err)
{
    size_t cap = 4096, n = 0;
    char *buf;
    int fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return wp_err_errno(err, "open %s", path);
    buf = malloc(cap);
    if (!buf) {
        close(fd);
        return wp_err_set(err, -ENOMEM, "read %s: out of memory", path);
    }
    for (;;) {
        ssize_t r;
        if (n + 1 >= cap) {
            char *nb;
            if (cap > max + 1) {
                free(buf);
                close(fd);
                return wp_err_set(err, WP_ETOOBIG, "%s is larger than %zu bytes", path, max);
            }
            cap *= 2;
            nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                close(fd);
                return wp_err_set(err, -ENOMEM, "read %s: out of memory", path);
            }
            buf = nb;
        }
        r = read(fd, buf + n, cap - n - 1);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int code = wp_err_errno(err, "read %s", path);
            free(buf);
            close(fd);
            return code;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    if (n > max) {
        free(buf);
        return wp_err_set(err, WP_ETOOBIG, "%s is larger than %zu bytes", path, max);
    }
    buf[n] = '\0';
    *out = buf;
    if (len)
        *len = n;
    return 0;
}

void wp_close_fds_from(int lowfd)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)lowfd, ~0u, 0) == 0)
        return;
#endif
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        for (int fd = lowfd; fd < 65536; fd++)
            close(fd);
        return;
    }
    int dfd = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] != '.' && fd >= lowfd && fd != dfd)
            close(fd);
    }
    closedir(d);
}

/* ---- paths inside a sandbox's root, opened by a privileged host process:
 * every component resolves within the root (RESOLVE_IN_ROOT: ".." and
 * absolute symlinks stop at it), magic links (/proc/<pid>/fd/...) are
 * refused, so a sandbox that makes /etc or /run a symlink cannot redirect
 * a host-root write or connect onto the host. */

static int openat2_in(int rootfd, const char *path, int flags, int mode)
{
    struct open_how how = { .flags = (uint64_t)flags, .mode = (uint64_t)mode,
                            .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS };

    while (*path == '/')
        path++;
    return (int)syscall(SYS_openat2, rootfd, *path ? path : ".", &how, sizeof(how));
}

int wp_open_in_root(const char *root, const char *path, int flags, int mode, struct wp_err *err)
{
    int rfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC), fd;

    if (rfd < 0)
        return wp_err_errno(err, "open %s", root);
    fd = openat2_in(rfd, path, flags | O_CLOEXEC, mode);
    if (fd < 0)
        wp_err_errno(err, "open %s in %s", path, root);
    close(rfd);
    return fd < 0 ? (err ? err->code : -EIO) : fd;
}

int wp_mkdir_in_root(const char *root, const char *path, int mode, struct wp_err *err)
{
    char parent[4096] = "", name[256];
    const char *p = path;
    int rfd, rc = 0;

    if (strlen(path) >= sizeof(parent))
        return wp_err_set(err, WP_EINVAL_INPUT, "path too long: %s", path);
    rfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rfd < 0)
        return wp_err_errno(err, "open %s", root);
    /* One component at a time: its parent resolved in the root, the new
     * directory made relative to that (mkdirat never follows the name). */
    while (rc == 0) {
        while (*p == '/')
            p++;
        size_t n = strcspn(p, "/");
        if (n == 0)
            break;
        if (n >= sizeof(name)) {
            rc = wp_err_set(err, WP_EINVAL_INPUT, "path component too long: %s", path);
            break;
        }
        snprintf(name, sizeof(name), "%.*s", (int)n, p);
        int dfd = openat2_in(rfd, parent, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
        if (dfd < 0 || (mkdirat(dfd, name, (mode_t)mode) < 0 && errno != EEXIST))
            rc = wp_err_errno(err, "mkdir %s/%s in %s", parent, name, root);
        if (dfd >= 0)
            close(dfd);
        size_t used = strlen(parent);
        snprintf(parent + used, sizeof(parent) - used, "/%s", name);
        p += n;
    }
    close(rfd);
    return rc;
}

int wp_write_file_in_root(const char *root, const char *path, const void *data, size_t len,
                          int mode, struct wp_err *err)
{
    char dir[4096], tmp[64];
    const char *name = strrchr(path, '/'), *p = data;
    int dfd, fd, rc = 0;

    if (!name || name == path + strlen(path) - 1 || (size_t)(name - path) >= sizeof(dir))
        return wp_err_set(err, WP_EINVAL_INPUT, "bad path %s", path);
    snprintf(dir, sizeof(dir), "%.*s", (int)(name - path), path);
    name++;
    dfd = wp_open_in_root(root, dir, O_PATH | O_DIRECTORY, 0, err);
    if (dfd < 0)
        return dfd;
    /* A fresh name next to it, then rename over: the old entry (a file, a
     * symlink planted by the sandbox) is replaced, never followed. */
    snprintf(tmp, sizeof(tmp), ".wp-tmp.%d", getpid());
    unlinkat(dfd, tmp, 0);
    fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0) {
        rc = wp_err_errno(err, "create %s/%s in %s", dir, tmp, root);
        goto out;
    }
    while (len > 0 && rc == 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno != EINTR)
            rc = wp_err_errno(err, "write %s in %s", path, root);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        }
    }
    close(fd);
    if (rc == 0 && renameat(dfd, tmp, dfd, name) < 0)
        rc = wp_err_errno(err, "rename to %s in %s", path, root);
    if (rc < 0)
        unlinkat(dfd, tmp, 0);
out:
    close(dfd);
    return rc;
}

int wp_connect_unix_in_root(const char *root, const char *path, int type, struct wp_err *err)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct stat st;
    int pfd = wp_open_in_root(root, path, O_PATH, 0, err), fd;

    if (pfd < 0)
        return pfd;
    if (fstat(pfd, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        close(pfd);
        return wp_err_set(err, -ENOTSOCK, "%s in %s is not a socket", path, root);
    }
    /* Connect through the O_PATH fd: the inode found above, whatever the
     * sandbox renames or replaces in between. */
    snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d", pfd);
    fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        close(pfd);
        return wp_err_errno(err, "socket");
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int code = wp_err_errno(err, "connect %s in %s", path, root);
        close(fd);
        close(pfd);
        return code;
    }
    close(pfd);
    return fd;
}
