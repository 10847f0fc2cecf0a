/* hands_files.c - path confinement and the read, write and edit tools.
 * Result texts and limits follow the SDK's runner (toolset.md section 8). */
#define WP_LOG_COMPONENT "hands"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agentlink/alink_int.h"
#include "base/err.h"
#include "base/fs.h"

/* ---- confinement ------------------------------------------------------- */

int alink__set_workdir(struct alink__hands *h, const char *dir, struct wp_err *err)
{
    char *r = realpath(dir, NULL);

    if (!r)
        return wp_err_errno(err, "realpath %s", dir);
    if (strlen(r) >= sizeof(h->workdir)) {
        free(r);
        return wp_err_set(err, WP_EINVAL_INPUT, "workdir too long");
    }
    if (chdir(r) < 0) {
        int rc = wp_err_errno(err, "chdir %s", r);
        free(r);
        return rc;
    }
    snprintf(h->workdir, sizeof(h->workdir), "%s", r);
    snprintf(h->roots[0], sizeof(h->roots[0]), "%s", r);
    if (h->n_roots == 0)
        h->n_roots = 1;
    free(r);
    return 0;
}

/* Collapse "//", "." and ".." of an absolute path in place. */
static void normalize(char *p)
{
    char *out = p, *s = p;

    while (*s) {
        while (*s == '/')
            s++;
        if (!*s)
            break;
        char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 1 && s[0] == '.') {
            /* skip */
        } else if (n == 2 && s[0] == '.' && s[1] == '.') {
            while (out > p && *--out != '/')
                ;
        } else {
            *out++ = '/';
            memmove(out, s, n);
            out += n;
        }
        s += n;
    }
    if (out == p)
        *out++ = '/';
    *out = '\0';
}

static bool under(const char *path, const char *root)
{
    size_t n = strlen(root);

    if (strcmp(root, "/") == 0)
        return true;
    return strncmp(path, root, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

int alink__resolve(struct alink__hands *h, const char *path, char *resolved, size_t cap,
                   struct wp_err *err)
{
    char abs[PATH_MAX], head[PATH_MAX];
    const char *tail;
    char *r = NULL;
    size_t cut;
    int n;

    if (!path || !*path)
        return wp_err_set(err, WP_EINVAL_INPUT, "path is empty");
    if (path[0] == '/')
        n = snprintf(abs, sizeof(abs), "%s", path);
    else
        n = snprintf(abs, sizeof(abs), "%s/%s", h->workdir, path);
    if (n < 0 || (size_t)n >= sizeof(abs))
        return wp_err_set(err, WP_EINVAL_INPUT, "path too long");
    normalize(abs);
    /* Resolve the longest existing prefix; the rest does not exist yet
     * (write creates it), so it holds no symlink to follow. A component
     * that exists but does not resolve is a dangling symlink: refused,
     * since writing through it would create its target anywhere. */
    snprintf(head, sizeof(head), "%s", abs);
    cut = strlen(head);
    for (;;) {
        r = realpath(head, NULL);
        if (r)
            break;
        if (errno != ENOENT && errno != ENOTDIR)
            return wp_err_errno(err, "%s", path);
        struct stat st;
        if (lstat(head, &st) == 0)
            return wp_err_set(err, WP_EINVAL_INPUT, "%s: dangling symlink", path);
        char *slash = strrchr(head, '/');
        if (!slash || slash == head) {
            snprintf(head, sizeof(head), "/");
            cut = 0;
            r = realpath("/", NULL);
            break;
        }
        *slash = '\0';
        cut = (size_t)(slash - head);
    }
    if (!r)
        return wp_err_errno(err, "%s", path);
    tail = abs + cut; /* "" or "/missing/components" */
    if (strcmp(r, "/") == 0)
        n = snprintf(resolved, cap, "%s", *tail ? tail : "/");
    else
        n = snprintf(resolved, cap, "%s%s", r, tail);
    free(r);
    if (n < 0 || (size_t)n >= cap)
        return wp_err_set(err, WP_EINVAL_INPUT, "path too long");
    for (size_t i = 0; i < h->n_roots; i++)
        if (under(resolved, h->roots[i]))
            return 0;
    return wp_err_set(err, WP_EINVAL_INPUT, "%s is outside the allowed directories", path);
}

/* ---- helpers -------------------------------------------------------------- */

bool alink__tool_fail(struct wp_buf *out, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    wp_buf_reset(out);
    if (n > 0)
        wp_buf_append(out, msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
    return true;
}

static const char *str_field(json_t *input, const char *key)
{
    return json_string_value(json_object_get(input, key));
}

/* Open a regular file for reading; refuse FIFOs, devices, directories. */
static int open_regular(const char *path, struct stat *st, struct wp_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);

    if (fd < 0)
        return wp_err_errno(err, "cannot open");
    if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode)) {
        close(fd);
        return wp_err_set(err, WP_EINVAL_INPUT, "not a regular file");
    }
    return fd;
}

static int read_all(int fd, size_t size, char **data, size_t *len)
{
    char *p = malloc(size + 1);
    size_t got = 0;

    if (!p)
        return -ENOMEM;
    while (got < size) {
        ssize_t n = read(fd, p + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    p[got] = '\0';
    *data = p;
    *len = got;
    return 0;
}

/* Write atomically: temp file next to path, then rename. Keeps the mode of
 * an existing file. */
static int write_atomic(const char *path, const char *data, size_t len, struct wp_err *err)
{
    char tmp[PATH_MAX + 32];
    struct stat st;
    mode_t mode = 0644;
    int fd;

    if (stat(path, &st) == 0) {
        if (!S_ISREG(st.st_mode))
            return wp_err_set(err, WP_EINVAL_INPUT, "not a regular file");
        mode = st.st_mode & 07777;
    }
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.wp-XXXXXX", path) >= sizeof(tmp))
        return wp_err_set(err, WP_EINVAL_INPUT, "path too long");
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return wp_err_errno(err, "create");
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, data + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int rc = wp_err_errno(err, "write");
            close(fd);
            unlink(tmp);
            return rc;
        }
        off += (size_t)n;
    }
    if (fchmod(fd, mode) < 0 || close(fd) < 0) {
        int rc = wp_err_errno(err, "write");
        unlink(tmp);
        return rc;
    }
    if (rename(tmp, path) < 0) {
        int rc = wp_err_errno(err, "rename");
        unlink(tmp);
        return rc;
    }
    return 0;
}

/* ---- read ----------------------------------------------------------------- */

bool alink__tool_read(struct alink__hands *h, json_t *input, struct wp_buf *out)
{
    const char *fp = str_field(input, "file_path");
    json_t *vr = json_object_get(input, "view_range");
    char path[PATH_MAX];
    struct wp_err err;
    struct stat st;
    long long start = 1, end = 0;
    int fd;

    if (!fp)
        return alink__tool_fail(out, "read: file_path is required");
    if (vr) {
        if (!json_is_array(vr) || json_array_size(vr) != 2 ||
            !json_is_integer(json_array_get(vr, 0)) || !json_is_integer(json_array_get(vr, 1)))
            return alink__tool_fail(out, "read: view_range must be an array of exactly 2 integers");
        start = json_integer_value(json_array_get(vr, 0));
        end = json_integer_value(json_array_get(vr, 1));
        if (start < 1)
            return alink__tool_fail(out, "read: view_range start must be >= 1");
        if (end > 0 && end < start)
            return alink__tool_fail(out, "read: view_range end is before start");
    }
    if (alink__resolve(h, fp, path, sizeof(path), &err) < 0)
        return alink__tool_fail(out, "read: %s", err.msg);
    fd = open_regular(path, &st, &err);
    if (fd < 0)
        return alink__tool_fail(out, "read: %s: %s", fp, err.msg);
    if (!vr) {
        char *data;
        size_t len;
        bool is_err = false;
        if ((size_t)st.st_size > ALINK_READ_MAX) {
            close(fd);
            return alink__tool_fail(out,
                        "read: %s is %lld bytes, over the %u-byte limit; use view_range to "
                        "read part of it",
                        fp, (long long)st.st_size, ALINK_READ_MAX);
        }
        if (read_all(fd, (size_t)st.st_size, &data, &len) < 0) {
            close(fd);
            return alink__tool_fail(out, "read: out of memory");
        }
        close(fd);
        if (wp_buf_append(out, data, len) < 0)
            is_err = alink__tool_fail(out, "read: out of memory");
        free(data);
        return is_err;
    }
    /* Stream the file line by line, keeping only the selected lines. */
    FILE *f = fdopen(fd, "r");
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long long lineno = 0;
    bool over = false;

    if (!f) {
        close(fd);
        return alink__tool_fail(out, "read: %s: %s", fp, strerror(errno));
    }
    while ((n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (lineno < start)
            continue;
        if (end > 0 && lineno > end)
            break;
        if (out->len + (size_t)n > ALINK_READ_MAX) {
            over = true;
            break;
        }
        wp_buf_append(out, line, (size_t)n);
    }
    free(line);
    fclose(f);
    if (over)
        return alink__tool_fail(out, "read: the selected lines of %s exceed the %u-byte limit; narrow "
                         "view_range", fp, ALINK_READ_MAX);
    if (lineno < start)
        return alink__tool_fail(out, "read: %s has %lld lines; view_range starts at %lld", fp, lineno,
                    start);
    return false;
}

/* ---- write ---------------------------------------------------------------- */

bool alink__tool_write(struct alink__hands *h, json_t *input, struct wp_buf *out)
{
    const char *fp = str_field(input, "file_path");
    json_t *jc = json_object_get(input, "content");
    char path[PATH_MAX], dir[PATH_MAX];
    struct wp_err err;

    if (!fp)
        return alink__tool_fail(out, "write: file_path is required");
    if (!json_is_string(jc))
        return alink__tool_fail(out, "write: content is required");
    if (alink__resolve(h, fp, path, sizeof(path), &err) < 0)
        return alink__tool_fail(out, "write: %s", err.msg);
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        if (wp_mkdir_p(dir, 0755, &err) < 0)
            return alink__tool_fail(out, "write: %s: %s", fp, err.msg);
    }
    if (write_atomic(path, json_string_value(jc), json_string_length(jc), &err) < 0)
        return alink__tool_fail(out, "write: %s: %s", fp, err.msg);
    wp_buf_printf(out, "wrote %zu bytes to %s", json_string_length(jc), fp);
    return false;
}

/* ---- edit ----------------------------------------------------------------- */

static size_t count_occ(const char *hay, size_t hlen, const char *needle, size_t nlen)
{
    size_t count = 0;
    const char *p = hay, *end = hay + hlen;

    while ((size_t)(end - p) >= nlen) {
        const char *m = memmem(p, (size_t)(end - p), needle, nlen);
        if (!m)
            break;
        count++;
        p = m + nlen;
    }
    return count;
}

bool alink__tool_edit(struct alink__hands *h, json_t *input, struct wp_buf *out)
{
    const char *fp = str_field(input, "file_path");
    json_t *jo = json_object_get(input, "old_string");
    json_t *jn = json_object_get(input, "new_string");
    json_t *ja = json_object_get(input, "replace_all");
    char path[PATH_MAX];
    struct wp_err err;
    struct wp_buf nb;
    struct stat st;
    char *data = NULL;
    size_t len, olen, nlen, count;
    bool is_err;
    int fd;

    if (!fp)
        return alink__tool_fail(out, "edit: file_path is required");
    if (!json_is_string(jo) || !json_is_string(jn))
        return alink__tool_fail(out, "edit: old_string and new_string are required");
    if (ja && !json_is_boolean(ja))
        return alink__tool_fail(out, "edit: replace_all must be a boolean");
    olen = json_string_length(jo);
    nlen = json_string_length(jn);
    if (olen == 0)
        return alink__tool_fail(out, "edit: old_string must not be empty");
    if (alink__resolve(h, fp, path, sizeof(path), &err) < 0)
        return alink__tool_fail(out, "edit: %s", err.msg);
    fd = open_regular(path, &st, &err);
    if (fd < 0)
        return alink__tool_fail(out, "edit: %s: %s", fp, err.msg);
    if ((size_t)st.st_size > ALINK_READ_MAX) {
        close(fd);
        return alink__tool_fail(out, "edit: %s is %lld bytes, over the %u-byte limit", fp,
                    (long long)st.st_size, ALINK_READ_MAX);
    }
    if (read_all(fd, (size_t)st.st_size, &data, &len) < 0) {
        close(fd);
        return alink__tool_fail(out, "edit: out of memory");
    }
    close(fd);
    count = count_occ(data, len, json_string_value(jo), olen);
    if (count == 0) {
        free(data);
        return alink__tool_fail(out, "edit: old_string not found in %s", fp);
    }
    if (count > 1 && !json_is_true(ja)) {
        free(data);
        return alink__tool_fail(out,
                    "edit: old_string found %zu times in %s; it must occur exactly once "
                    "(add context to make it unique, or set replace_all)",
                    count, fp);
    }
    wp_buf_init(&nb, 64u << 20);
    const char *p = data, *end = data + len;
    for (;;) {
        const char *m = memmem(p, (size_t)(end - p), json_string_value(jo), olen);
        if (!m)
            break;
        wp_buf_append(&nb, p, (size_t)(m - p));
        wp_buf_append(&nb, json_string_value(jn), nlen);
        p = m + olen;
    }
    if (wp_buf_append(&nb, p, (size_t)(end - p)) < 0) {
        is_err = alink__tool_fail(out, "edit: result too large");
    } else if (write_atomic(path, nb.data ? nb.data : "", nb.len, &err) < 0) {
        is_err = alink__tool_fail(out, "edit: %s: %s", fp, err.msg);
    } else {
        wp_buf_printf(out, "edited %s (%zu replacement%s)", fp, count, count == 1 ? "" : "s");
        is_err = false;
    }
    wp_buf_free(&nb);
    free(data);
    return is_err;
}
