/* test_base.c - base/: errors, bounded buffers, files. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(err_set_and_wrap),
        cmocka_unit_test(buf_respects_max),
        cmocka_unit_test(fs_roundtrip_and_rm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
