/* fs.h - small file-system helpers used by every module. */
#ifndef WP_FS_H
#define WP_FS_H

#include <stddef.h>

struct wp_err;

/* mkdir -p with mode for created directories. */
int wp_mkdir_p(const char *path, int mode, struct wp_err *err);
/* rm -rf that never crosses into another file system (a forgotten mount
 * under path is left alone and reported as -EBUSY). Missing path is 0. */
int wp_rm_rf(const char *path, struct wp_err *err);
/* Write data to path atomically (temp file + fsync-less rename). */
int wp_write_file(const char *path, const void *data, size_t len, int mode,
                  struct wp_err *err);
/* Read a whole file of at most max bytes. *out is caller-owned (free()),
 * NUL-terminated. WP_ETOOBIG if larger. */
int wp_read_file(const char *path, size_t max, char **out, size_t *len,
                 struct wp_err *err);
/* The first line of a secret file (a password), without its line end,
 * into buf (cap bytes); the copy on the stack is wiped. 0, or < 0 with err
 * (unreadable, empty first line, or longer than cap - 1). */
int wp_read_secret_line(const char *path, char *buf, size_t cap, struct wp_err *err);
/* Paths inside a sandbox's root (root: its host path, e.g. the overlay
 * mount or /proc/<pid>/root), for host processes running as root: every
 * component of path resolves within root (openat2 RESOLVE_IN_ROOT |
 * RESOLVE_NO_MAGICLINKS), so symlinks the sandbox planted never lead out.
 * open: returns an fd (caller closes) or < 0. mkdir: mkdir -p. write: the
 * file replaced atomically (temp + rename in its dir; a symlink at path is
 * replaced, not followed). connect: a connected Unix socket of type (e.g.
 * SOCK_STREAM | SOCK_NONBLOCK) to the socket at path, or < 0. */
int wp_open_in_root(const char *root, const char *path, int flags, int mode, struct wp_err *err);
int wp_mkdir_in_root(const char *root, const char *path, int mode, struct wp_err *err);
int wp_write_file_in_root(const char *root, const char *path, const void *data, size_t len,
                          int mode, struct wp_err *err);
int wp_connect_unix_in_root(const char *root, const char *path, int type, struct wp_err *err);
/* Close every fd >= lowfd (close_range, or /proc/self/fd as fallback). */
void wp_close_fds_from(int lowfd);

#endif
