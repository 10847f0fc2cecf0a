/* fs.c - file-system helpers. */
#include "fs.h"
#include "err.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
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
