/* test_base.c - base/: errors, bounded buffers, files. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/testlib.h"
#include "base/buf.h"
#include "base/err.h"
#include "base/fs.h"

static void err_set_and_wrap(void **state)
{
    struct wp_err err;
    (void)state;

    assert_int_equal(wp_err_set(&err, WP_ECRIU, "dump %s", "sb-1"), WP_ECRIU);
    assert_int_equal(wp_err_wrap(&err, "template %s", "py"), WP_ECRIU);
    assert_string_equal(err.msg, "template py: dump sb-1");
    assert_string_equal(wp_errname(WP_ECRIU), "WP_ECRIU");
    errno = ENOENT;
    assert_int_equal(wp_err_errno(&err, "open %s", "/x"), -ENOENT);
    assert_non_null(strstr(err.msg, "open /x: No such file"));
    assert_int_equal(wp_err_set(NULL, -EINVAL, "ignored"), -EINVAL);
}

static void buf_respects_max(void **state)
{
    struct wp_buf b;
    (void)state;

    wp_buf_init(&b, 10);
    assert_int_equal(wp_buf_append(&b, "hello", 5), 0);
    assert_int_equal(wp_buf_printf(&b, "%d", 12345), 0);
    assert_int_equal(b.len, 10);
    assert_string_equal(b.data, "hello12345");
    /* Over the maximum: refused, nothing appended. */
    assert_int_equal(wp_buf_append(&b, "x", 1), WP_ETOOBIG);
    assert_int_equal(b.len, 10);
    wp_buf_consume(&b, 5);
    assert_string_equal(b.data, "12345");
    assert_int_equal(wp_buf_printf(&b, "%s", "a-long-string"), WP_ETOOBIG);
    assert_string_equal(b.data, "12345");
    wp_buf_free(&b);
}

static void fs_roundtrip_and_rm(void **state)
{
    char *dir = th_tmpdir("fs");
    char path[512], *data = NULL;
    size_t len = 0;
    struct wp_err err;
    struct stat st;
    (void)state;

    assert_non_null(dir);
    snprintf(path, sizeof(path), "%s/a/b/c", dir);
    assert_int_equal(wp_mkdir_p(path, 0755, &err), 0);
    snprintf(path, sizeof(path), "%s/a/b/c/file", dir);
    assert_int_equal(wp_write_file(path, "content", 7, 0644, &err), 0);
    assert_int_equal(wp_read_file(path, 100, &data, &len, &err), 0);
    assert_int_equal(len, 7);
    assert_string_equal(data, "content");
    free(data);
    assert_int_equal(wp_read_file(path, 3, &data, &len, &err), WP_ETOOBIG);
    assert_int_equal(wp_read_file("/nonexistent/x", 3, &data, &len, &err), -ENOENT);
    assert_int_equal(wp_rm_rf(dir, &err), 0);
    assert_int_equal(stat(dir, &st), -1);
    free(dir);
}

/* A "sandbox root" whose /etc and /run are symlinks out of it: the
 * in-root helpers stay inside, where a plain path would land outside. */
static void in_root_paths_never_leave_the_root(void **state)
{
    char *dir = th_tmpdir("inroot");
    char root[512], out[600], path[700], *data = NULL;
    struct wp_err err;
    struct stat st;
    (void)state;

    assert_non_null(dir);
    snprintf(root, sizeof(root), "%s/root", dir);
    snprintf(out, sizeof(out), "%s/outside", dir);
    assert_int_equal(mkdir(root, 0755), 0);
    assert_int_equal(mkdir(out, 0755), 0);
    snprintf(path, sizeof(path), "%s/etc", root);
    assert_int_equal(symlink(out, path), 0); /* absolute, to the host */
    snprintf(path, sizeof(path), "%s/run", root);
    assert_int_equal(symlink("../../outside", path), 0); /* relative, up and out */
    /* The links resolve inside the root, where their targets do not exist:
     * an error, and nothing made outside. */
    assert_true(wp_mkdir_in_root(root, "/etc/deep", 0755, &err) < 0);
    assert_true(wp_mkdir_in_root(root, "/run/warmpool", 0755, &err) < 0);
    assert_true(wp_write_file_in_root(root, "/run/x", "x", 1, 0644, &err) < 0);
    /* Once the target exists inside the root, that is where things go. */
    snprintf(path, sizeof(path), "%s%s", root, out);
    assert_int_equal(wp_mkdir_p(path, 0755, &err), 0);
    assert_int_equal(wp_mkdir_in_root(root, "/etc/deep", 0755, &err), 0);
    assert_int_equal(wp_write_file_in_root(root, "/etc/deep/hosts", "x\n", 2, 0644, &err), 0);
    /* Nothing landed outside... */
    snprintf(path, sizeof(path), "%s/deep", out);
    assert_int_equal(stat(path, &st), -1);
    snprintf(path, sizeof(path), "%s/warmpool", out);
    assert_int_equal(stat(path, &st), -1);
    /* ...the absolute link resolved against the root: <root>/<out>/deep/hosts. */
    int fd = wp_open_in_root(root, "/etc/deep/hosts", O_RDONLY, 0, &err);
    assert_true(fd >= 0);
    close(fd);
    snprintf(path, sizeof(path), "%s%s/deep/hosts", root, out);
    assert_int_equal(wp_read_file(path, 100, &data, NULL, &err), 0);
    assert_string_equal(data, "x\n");
    free(data);
    /* A planted symlink at the file itself is replaced, not followed. */
    snprintf(path, sizeof(path), "%s/victim", out);
    assert_int_equal(wp_write_file(path, "keep", 4, 0644, &err), 0);
    char link[700];
    snprintf(link, sizeof(link), "%s%s/deep/resolv.conf", root, out);
    assert_int_equal(symlink(path, link), 0);
    assert_int_equal(wp_write_file_in_root(root, "/etc/deep/resolv.conf", "ns", 2, 0644, &err), 0);
    assert_int_equal(wp_read_file(path, 100, &data, NULL, &err), 0);
    assert_string_equal(data, "keep");
    free(data);
    /* No socket there: a clear error, no connect outside. */
    assert_true(wp_connect_unix_in_root(root, "/run/warmpool/hands.sock", SOCK_STREAM, &err) < 0);
    assert_int_equal(wp_rm_rf(dir, &err), 0);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(err_set_and_wrap),
        cmocka_unit_test(buf_respects_max),
        cmocka_unit_test(fs_roundtrip_and_rm),
        cmocka_unit_test(in_root_paths_never_leave_the_root),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
