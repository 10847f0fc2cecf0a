/* test_snap_cgroup2.c - the cgroup v2 path end to end: a sandbox booted,
 * checkpointed, restored eagerly and lazily, and destroyed with its cgroup
 * in a v2 tree. Most production hosts are v2; on a v1 machine the hybrid
 * layout's /sys/fs/cgroup/unified stands in for it (snap_config
 * .cgroup2_root). That tree has no memory or pids controller while v1
 * holds them, so there the limits are left out and said so; on a real v2
 * host they are set and read back. Each sandbox must be in its own v2
 * cgroup, under the device program (a host process moved into that cgroup
 * cannot open /dev/kmsg), confined, and gone after destroy. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/err.h"
#include "base/fs.h"
#include "lib/snaplib.h"

static struct th_snap S;
static struct snap_template *T;
static char ROOT[256];  /* the v2 tree in use */
static bool LIMITS;     /* it has the memory and pids controllers */
#define IMG "cg2img"

static char *slurp(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *slurp(const char *fmt, ...)
{
    char path[600];
    char *text = NULL;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(path, sizeof(path), fmt, ap);
    va_end(ap);
    if (wp_read_file(path, 1 << 16, &text, NULL, NULL) < 0)
        return NULL;
    return text;
}

static int group_setup(void **state)
{
    struct snap_config cfg = { 0 };
    struct stat st;
    (void)state;

    if (stat("/sys/fs/cgroup/cgroup.controllers", &st) == 0) {
        snprintf(ROOT, sizeof(ROOT), "/sys/fs/cgroup"); /* a v2 host: detected */
    } else if (stat("/sys/fs/cgroup/unified/cgroup.controllers", &st) == 0) {
        snprintf(ROOT, sizeof(ROOT), "/sys/fs/cgroup/unified");
        cfg.cgroup2_root = ROOT;
    } else {
        fprintf(stderr, "setup: no cgroup v2 tree on this host\n");
        return -1;
    }
    char *ctl = slurp("%s/cgroup.controllers", ROOT);
    LIMITS = ctl && strstr(ctl, "memory") && strstr(ctl, "pids");
    printf("# v2 tree %s, controllers: %s", ROOT, ctl && *ctl ? ctl : "(none)\n");
    if (!LIMITS)
        printf("# no memory/pids controller in it (they are bound to v1 here): limits left out\n");
    free(ctl);
    if (th_snap_open_cfg(&S, &cfg) < 0)
        return -1;
    if (strcmp(snap_ctx_cgroup_layout(S.ctx), "v2") != 0) {
        fprintf(stderr, "setup: the context did not take the v2 tree\n");
        return -1;
    }
    T = th_template("{\"name\":\"cg2\",\"rootfs\":\"%s\",\"workdir\":\"/work\","
                    "\"init\":[\"/bin/sh\",\"-c\",\"i=0; while :; do i=$((i+1)); echo $i > "
                    "/tmp/count; usleep 10000; done\"],\"ready_file\":\"/tmp/count\","
                    "\"setup\":[\"echo built > /work/setup.txt\"],\"limits\":{%s}}",
                    S.rootfs, LIMITS ? "\"memory_mb\":128,\"pids\":64" : "");
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    snap_template_free(T);
    th_snap_close(&S);
    return 0;
}

/* What every sandbox of this test must show, on the host. */
static void check_sandbox(const struct snap_sandbox *sb, const char *what)
{
    char dir[600], want[200];
    snprintf(dir, sizeof(dir), "%s/warmpool/%s", ROOT, sb->id);

    /* Its init is in its own v2 cgroup. */
    char *cg = slurp("/proc/%d/cgroup", (int)sb->init_pid);
    assert_non_null(cg);
    snprintf(want, sizeof(want), "0::/warmpool/%s\n", sb->id);
    if (!strstr(cg, want))
        fail_msg("%s: init not in %s: %s", what, want, cg);
    free(cg);
    char *procs = slurp("%s/cgroup.procs", dir);
    assert_non_null(procs);
    assert_true(atoi(procs) > 0);
    free(procs);
    /* The device program is attached to that cgroup. */
    assert_int_equal(th_open_in_cgroup(dir, "/dev/null"), 1);
    assert_int_equal(th_open_in_cgroup(dir, "/dev/kmsg"), -EPERM);
    /* Limits, where the tree has their controllers. */
    if (LIMITS) {
        char *mem = slurp("%s/memory.max", dir), *pids = slurp("%s/pids.max", dir);
        assert_non_null(mem);
        assert_non_null(pids);
        assert_int_equal(strtoull(mem, NULL, 10), 128ull << 20);
        assert_int_equal(atoi(pids), 64);
        free(mem);
        free(pids);
    }
    /* The node's memory measurement reads the v2 files. */
    struct snap_cgroup_mem cm;
    struct wp_err err;
    if (LIMITS) {
        if (snap_sandbox_cgroup_mem(S.ctx, sb->id, &cm, &err) < 0)
            fail_msg("%s: memory: %s", what, err.msg);
        assert_true(cm.usage > 0);
    } else {
        assert_true(snap_sandbox_cgroup_mem(S.ctx, sb->id, &cm, &err) < 0); /* says so */
    }
    /* Confined as on v1: filter, no_new_privs, root inside not the host's. */
    char *st = slurp("/proc/%d/status", (int)sb->init_pid);
    assert_non_null(st);
    assert_non_null(strstr(st, "Seccomp:\t2"));
    assert_non_null(strstr(st, "NoNewPrivs:\t1"));
    free(st);
    char *map = slurp("/proc/%d/uid_map", (int)sb->init_pid);
    assert_non_null(map);
    assert_int_not_equal(strtoul(map + strspn(map, " 0"), NULL, 10), 0);
    free(map);
    /* And it runs. */
    long a = th_read_long(sb, "/tmp/count");
    th_msleep(60);
    assert_true(th_read_long(sb, "/tmp/count") > a);
    printf("# %s: in %s, device program on, %s\n", what, dir,
           LIMITS ? "limits read back" : "no limits (hybrid tree)");
}

static void boot_checkpoint_restore_destroy(void **state)
{
    struct snap_sandbox *sb;
    struct wp_err err;
    (void)state;

    if (snap_boot(S.ctx, T, NULL, NULL, NULL, &sb, &err) < 0)
        fail_msg("boot: %s", err.msg);
    check_sandbox(sb, "cold boot");
    th_destroy_gone(&S, sb);

    if (snap_boot(S.ctx, T, NULL, NULL, NULL, &sb, &err) < 0 ||
        snap_checkpoint(S.ctx, sb, T, IMG, 0, NULL, &err) < 0)
        fail_msg("build: %s", err.msg);
    for (int lazy = 0; lazy < 2; lazy++) {
        struct snap_restore_opts ro = { .lazy = lazy };
        if (snap_restore(S.ctx, IMG, &ro, &sb, &err) < 0)
            fail_msg("%s restore: %s", lazy ? "lazy" : "eager", err.msg);
        if (lazy)
            assert_true(sb->lazy_pid > 0);
        char *txt = th_read_in(sb, "/work/setup.txt");
        assert_non_null(txt);
        assert_string_equal(txt, "built\n");
        free(txt);
        check_sandbox(sb, lazy ? "lazy restore" : "eager restore");
        th_destroy_gone(&S, sb);
    }
    assert_int_equal(snap_image_delete(S.ctx, IMG, &err), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = { cmocka_unit_test(boot_checkpoint_restore_destroy) };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
