/* test_confine_bpf.c - the cgroup v2 device allow-list (confine.c's
 * hand-written BPF_PROG_TYPE_CGROUP_DEVICE program), attached to a v2
 * cgroup: the hybrid layout's /sys/fs/cgroup/unified on a v1 machine, or
 * the v2 root. A process in that cgroup opens only the allowed nodes. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/err.h"
#include "lib/snaplib.h"
#include "snapshot/snap_int.h"

static const char *v2_root(void)
{
    struct stat st;
    if (stat("/sys/fs/cgroup/cgroup.controllers", &st) == 0)
        return "/sys/fs/cgroup";
    if (stat("/sys/fs/cgroup/unified/cgroup.procs", &st) == 0)
        return "/sys/fs/cgroup/unified";
    return NULL;
}

static void device_program_allows_only_the_list(void **state)
{
    const char *root = v2_root();
    char dir[300], blk[64] = "";
    struct wp_err err;
    struct stat st;
    (void)state;

    if (!root)
        skip();
    snprintf(dir, sizeof(dir), "%s/wp-confine-test-%d", root, (int)getpid());
    assert_int_equal(mkdir(dir, 0755), 0);
    if (snap__confine_cg_devices_v2(dir, &err) < 0) {
        rmdir(dir);
        fail_msg("%s", err.msg);
    }
    assert_int_equal(th_open_in_cgroup(dir, "/dev/null"), 1);
    assert_int_equal(th_open_in_cgroup(dir, "/dev/zero"), 1);
    assert_int_equal(th_open_in_cgroup(dir, "/dev/urandom"), 1);
    assert_int_equal(th_open_in_cgroup(dir, "/dev/kmsg"), -EPERM); /* char 1:11 */
    /* A block device of the host, if there is one. */
    for (const char *const *b = (const char *const[]){ "/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/loop0", NULL }; *b; b++)
        if (stat(*b, &st) == 0 && S_ISBLK(st.st_mode)) {
            snprintf(blk, sizeof(blk), "%s", *b);
            break;
        }
    if (blk[0])
        assert_int_equal(th_open_in_cgroup(dir, blk), -EPERM);
    assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = { cmocka_unit_test(device_program_allows_only_the_list) };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
