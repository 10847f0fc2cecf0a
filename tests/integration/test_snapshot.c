/* test_snapshot.c - real namespaces, real overlay mounts, real CRIU:
 * boot, checkpoint, restore, isolation, limits, cleanup, bad input. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "base/err.h"
#include "base/fs.h"

static struct th_snap S;

/* A counter that keeps counting: ready once it has reached 20, so a clone
 * that continues the image's state starts at 20 or more. */
#define COUNTER_INIT                                                                     \
    "[\"/bin/sh\",\"-c\",\"i=0; while :; do i=$((i+1)); echo $i > /tmp/count; "         \
    "[ $i = 20 ] && touch /tmp/ready; usleep 5000; done\"]"

static const char *IMG = "counter";

static int group_setup(void **state)
{
    struct snap_template *t;
    struct snap_sandbox *sb;
    struct wp_err err;
    (void)state;

    if (th_snap_open(&S) < 0)
        return -1;
    /* A host directory bound read-only into the sandbox (as the hands
     * binary is): it must be there, unwritable, in every clone. */
    char tools[1024];
    snprintf(tools, sizeof(tools), "%s/tools", S.state);
    mkdir(tools, 0755);
    snprintf(tools, sizeof(tools), "%s/tools/hello", S.state);
    wp_write_file(tools, "tool\n", 5, 0755, NULL);
    t = th_template("{\"name\":\"counter\",\"rootfs\":\"%s\",\"init\":" COUNTER_INIT ","
                    "\"setup\":[\"echo from-setup > /work/setup.txt\"],\"workdir\":\"/work\","
                    "\"hostname\":\"tmpl\",\"ready_file\":\"/tmp/ready\","
                    "\"binds\":[{\"source\":\"%s/tools\",\"target\":\"/opt/tools\"}],"
                    "\"limits\":{\"memory_mb\":64,\"pids\":64}}",
                    S.rootfs, S.state);
    if (snap_boot(S.ctx, t, NULL, NULL, NULL, &sb, &err) < 0 ||
        snap_checkpoint(S.ctx, sb, t, IMG, 0, NULL, &err) < 0) {
        fprintf(stderr, "group setup: %s\n", err.msg);
        snap_template_free(t);
        return -1;
    }
    snap_template_free(t);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    th_snap_close(&S);
    return 0;
}

static void manifest_describes_image(void **state)
{
    char path[1024], *m = NULL;
    size_t len;
    (void)state;

    snprintf(path, sizeof(path), "%s/images/%s/manifest.json", S.state, IMG);
    assert_int_equal(wp_read_file(path, 1 << 20, &m, &len, NULL), 0);
    for (const char *k = "template_digest\0criu_version\0kernel\0pages_bytes\0dump_ms\0boot_ms\0"
                         "\"name\": \"counter\"\0";
         *k; k += strlen(k) + 1)
        if (!strstr(m, k))
            fail_msg("manifest lacks %s:\n%s", k, m);
    free(m);
}

static void clone_continues_state(bool lazy)
{
    struct snap_restore_opts ro = { .lazy = lazy };
    struct snap_sandbox *sb = NULL;
    struct wp_err err;
    long first, later;
    char *txt;

    if (snap_restore(S.ctx, IMG, &ro, &sb, &err) < 0)
        fail_msg("restore: %s", err.msg);
    /* The process that restored is the clone's reaper: its parent. */
    char path[128], *status = NULL;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)sb->init_pid);
    assert_int_equal(wp_read_file(path, 1 << 16, &status, NULL, NULL), 0);
    char *pp = strstr(status, "PPid:");
    assert_non_null(pp);
    assert_int_equal(atoi(pp + 5), (int)getpid());
    free(status);
    /* The counter was at 20 or more when the image was taken; the clone
     * counts on from there instead of starting again at 1. */
    first = th_read_long(sb, "/tmp/count");
    assert_true(first >= 20);
    th_msleep(100);
    later = th_read_long(sb, "/tmp/count");
    assert_true(later > first);
    char path2[1024];
    snprintf(path2, sizeof(path2), "/proc/%d/root/opt/tools/hello", (int)sb->init_pid);
    char *tool = NULL;
    assert_int_equal(wp_read_file(path2, 64, &tool, NULL, NULL), 0);
    assert_string_equal(tool, "tool\n");
    free(tool);
    assert_true(access(path2, W_OK) < 0 && errno == EROFS);
    txt = th_read_in(sb, "/work/setup.txt");
    assert_non_null(txt);
    assert_string_equal(txt, "from-setup\n");
    free(txt);
    th_destroy_gone(&S, sb);
}

static void eager_clone_continues_state(void **state)
{
    (void)state;
    clone_continues_state(false);
}

static void lazy_clone_continues_state(void **state)
{
    (void)state;
    clone_continues_state(true);
}

/* A Python process holding 48 MiB of patterned memory: every lazily
 * restored clone must see exactly the bytes the image holds, whether a
 * page arrives by fault or by the background copy. */
static void lazy_python_clone_memory_intact(void **state)
{
    struct snap_template *t;
    struct snap_sandbox *sb;
    struct wp_err err;
    (void)state;

    t = th_template("{\"name\":\"pymem\",\"rootfs\":\"host\",\"init\":[\"/usr/bin/python3\",\"-c\","
                    "\"import hashlib, time, os\\n"
                    "buf = bytearray(48 << 20)\\n"
                    "for i in range(0, len(buf), 4096): buf[i] = (i >> 12) %% 251 + 1\\n"
                    "def report():\\n"
                    "  h = hashlib.sha256(buf).hexdigest()\\n"
                    "  open('/tmp/sum.new', 'w').write(h)\\n"
                    "  os.rename('/tmp/sum.new', '/tmp/sum')\\n"
                    "report()\\n"
                    "open('/tmp/ready', 'w').close()\\n"
                    "while True:\\n"
                    "  time.sleep(0.05)\\n"
                    "  if os.path.exists('/tmp/again'): os.unlink('/tmp/again'); report()\"],"
                    "\"ready_file\":\"/tmp/ready\",\"limits\":{\"memory_mb\":256}}");
    if (snap_boot(S.ctx, t, NULL, NULL, NULL, &sb, &err) < 0)
        fail_msg("boot: %s", err.msg);
    char *want = th_read_in(sb, "/tmp/sum");
    assert_non_null(want);
    assert_int_equal(strlen(want), 64);
    if (snap_checkpoint(S.ctx, sb, t, "pymem", 0, NULL, &err) < 0)
        fail_msg("checkpoint: %s", err.msg);
    for (int lazy = 1; lazy >= 0; lazy--) {
        struct snap_restore_opts ro = { .lazy = lazy };
        char path[1024];
        if (snap_restore(S.ctx, "pymem", &ro, &sb, &err) < 0)
            fail_msg("restore: %s", err.msg);
        /* Ask the clone to hash its memory again, now. */
        snprintf(path, sizeof(path), "%s/tmp/sum", sb->root);
        unlink(path);
        snprintf(path, sizeof(path), "%s/tmp/again", sb->root);
        assert_int_equal(wp_write_file(path, "", 0, 0644, &err), 0);
        char *got = NULL;
        for (int i = 0; i < 500 && !got; i++) {
            th_msleep(10);
            got = th_read_in(sb, "/tmp/sum");
        }
        assert_non_null(got);
        assert_string_equal(got, want);
        free(got);
        assert_int_equal(snap_destroy(S.ctx, sb, &err), 0);
    }
    free(want);
    assert_int_equal(snap_image_delete(S.ctx, "pymem", &err), 0);
    snap_template_free(t);
}

static bool merge_any(pid_t pid)
{
    char path[64], *st = NULL;
    bool yes;

    snprintf(path, sizeof(path), "/proc/%d/ksm_stat", (int)pid);
    assert_int_equal(wp_read_file(path, 4096, &st, NULL, NULL), 0);
    assert_non_null(strstr(st, "ksm_merge_any:"));
    yes = strstr(st, "ksm_merge_any: yes") != NULL;
    free(st);
    return yes;
}

/* "ksm": true makes a sandbox's memory mergeable, and its clones', which
 * still behave as clones; without it, nothing is mergeable. */
static void ksm_setting_reaches_clones(void **state)
{
    struct snap_template *t;
    struct snap_sandbox *sb, *c[2];
    struct wp_err err;
    (void)state;

    t = th_template("{\"name\":\"merged\",\"rootfs\":\"%s\",\"ksm\":true,\"init\":" COUNTER_INIT ","
                    "\"ready_file\":\"/tmp/ready\"}",
                    S.rootfs);
    if (snap_boot(S.ctx, t, NULL, NULL, NULL, &sb, &err) < 0)
        fail_msg("boot: %s", err.msg);
    assert_true(merge_any(sb->init_pid));
    if (snap_checkpoint(S.ctx, sb, t, "merged", 0, NULL, &err) < 0)
        fail_msg("checkpoint: %s", err.msg);
    for (int i = 0; i < 2; i++) {
        struct snap_restore_opts ro = { .lazy = i == 1 };
        if (snap_restore(S.ctx, "merged", &ro, &c[i], &err) < 0)
            fail_msg("restore: %s", err.msg);
        assert_true(merge_any(c[i]->init_pid));
        assert_true(th_read_long(c[i], "/tmp/count") >= 20);
    }
    /* Writes stay private. */
    char path[1024];
    snprintf(path, sizeof(path), "%s/tmp/only-0", c[0]->root);
    assert_int_equal(wp_write_file(path, "x", 1, 0644, &err), 0);
    snprintf(path, sizeof(path), "%s/tmp/only-0", c[1]->root);
    assert_int_equal(access(path, F_OK), -1);
    for (int i = 0; i < 2; i++) {
        th_destroy_gone(&S, c[i]);
    }
    assert_int_equal(snap_image_delete(S.ctx, "merged", &err), 0);
    snap_template_free(t);
    /* The counter image was made without "ksm": its clones are not mergeable. */
    struct snap_restore_opts ro = { 0 };
    if (snap_restore(S.ctx, IMG, &ro, &sb, &err) < 0)
        fail_msg("restore: %s", err.msg);
    assert_false(merge_any(sb->init_pid));
    assert_int_equal(snap_destroy(S.ctx, sb, &err), 0);
}

static void eight_clones_are_isolated(void **state)
{
    static const char *nss[] = { "pid", "mnt", "uts", "ipc", "net", "cgroup" };
    struct snap_sandbox *sb[8] = { 0 };
    struct wp_err err;
    char path[1024];
    (void)state;

    for (int i = 0; i < 8; i++) {
        struct snap_restore_opts ro = { .lazy = i % 2 };
        if (snap_restore(S.ctx, IMG, &ro, &sb[i], &err) < 0)
            fail_msg("restore %d: %s", i, err.msg);
    }
    for (int i = 0; i < 8; i++) {
        char *status, *nspid, *netdev;
        /* PID 1 of its own namespace. */
        snprintf(path, sizeof(path), "/proc/%d/status", (int)sb[i]->init_pid);
        assert_int_equal(wp_read_file(path, 1 << 16, &status, NULL, NULL), 0);
        nspid = strstr(status, "NSpid:");
        assert_non_null(nspid);
        nspid[strcspn(nspid, "\n")] = '\0';
        assert_non_null(strstr(nspid, "\t1"));
        assert_string_equal(nspid + strlen(nspid) - 2, "\t1");
        free(status);
        /* Its own namespaces: none shared with the host or another clone. */
        for (size_t n = 0; n < sizeof(nss) / sizeof(nss[0]); n++) {
            unsigned long ino = th_ns_inode(sb[i]->init_pid, nss[n]);
            assert_true(ino != 0);
            if (ino == th_ns_inode(getpid(), nss[n]))
                fail_msg("clone %d shares the host's %s namespace", i, nss[n]);
            for (int j = 0; j < i; j++)
                assert_true(ino != th_ns_inode(sb[j]->init_pid, nss[n]));
        }
        /* Its hostname is the template's, in its own UTS namespace. */
        char hn[256];
        assert_int_equal(th_hostname_of(sb[i]->init_pid, hn, sizeof(hn)), 0);
        assert_string_equal(hn, "tmpl");
        /* No network but its own loopback. */
        snprintf(path, sizeof(path), "/proc/%d/net/dev", (int)sb[i]->init_pid);
        assert_int_equal(wp_read_file(path, 1 << 16, &netdev, NULL, NULL), 0);
        int ifaces = 0;
        for (char *l = strchr(netdev, '\n'); l && (l = strchr(l + 1, '\n')) && l[1];)
            ifaces++;
        assert_int_equal(ifaces, 1);
        assert_non_null(strstr(netdev, "lo:"));
        free(netdev);
        /* ...and that loopback is up. */
        char link[512];
        assert_int_equal(th_sh(link, sizeof(link), "nsenter -t %d -n ip -o link show lo",
                               (int)sb[i]->init_pid), 0);
        assert_non_null(strstr(link, "LOWER_UP"));
    }
    /* A write in one clone is not seen in another. */
    snprintf(path, sizeof(path), "%s/work/only-in-0", sb[0]->root);
    assert_int_equal(wp_write_file(path, "x", 1, 0644, &err), 0);
    for (int i = 1; i < 8; i++) {
        struct stat st;
        snprintf(path, sizeof(path), "%s/work/only-in-0", sb[i]->root);
        assert_int_equal(stat(path, &st), -1);
    }
    /* Each counts on its own. */
    for (int i = 0; i < 8; i++)
        assert_true(th_read_long(sb[i], "/tmp/count") >= 20);
    /* The image cannot be deleted under its clones. */
    assert_int_equal(snap_image_delete(S.ctx, IMG, &err), WP_ESTATE);
    assert_non_null(strstr(err.msg, "in use by 8 sandbox"));
    for (int i = 0; i < 8; i++) {
        th_destroy_gone(&S, sb[i]);
    }
}

static void booted_sandbox_holds_no_host_state(void **state)
{
    struct snap_template *t;
    struct snap_sandbox *sb;
    struct wp_err err;
    char path[1024], target[256];
    int leaked = open("/dev/null", O_RDONLY); /* without O_CLOEXEC on purpose */
    (void)state;

    setenv("WP_TEST_SECRET_TOKEN", "must-not-leak", 1);
    t = th_template("{\"name\":\"plain\",\"rootfs\":\"%s\",\"init\":[\"/bin/sh\",\"-c\","
                    "\"env > /tmp/env; cat /proc/self/mountinfo > /tmp/mounts; touch /tmp/ready; "
                    "exec sleep 1000\"],\"ready_file\":\"/tmp/ready\"}",
                    S.rootfs);
    if (snap_boot(S.ctx, t, NULL, NULL, NULL, &sb, &err) < 0)
        fail_msg("boot: %s", err.msg);
    /* fds 0-2 only, all the sandbox's own /dev/null. */
    for (int fd = 0; fd < 64; fd++) {
        ssize_t n;
        snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)sb->init_pid, fd);
        n = readlink(path, target, sizeof(target) - 1);
        if (fd > 2) {
            assert_true(n < 0);
            continue;
        }
        assert_true(n > 0);
        target[n] = '\0';
        assert_string_equal(target, "/dev/null");
    }
    char *env = th_read_in(sb, "/tmp/env");
    assert_non_null(env);
    assert_null(strstr(env, "WP_TEST_SECRET_TOKEN"));
    free(env);
    /* The old root is gone: its mount table holds only its own mounts. */
    char *mounts = th_read_in(sb, "/tmp/mounts");
    assert_non_null(mounts);
    int nmounts = 0;
    for (char *save = NULL, *l = strtok_r(mounts, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        char mp[512];
        assert_int_equal(sscanf(l, "%*s %*s %*s %*s %511s", mp), 1);
        /* Besides /, /proc and /dev: confine.c's /dev/shm tmpfs and its
         * read-only and masked /proc paths. */
        if (strcmp(mp, "/") && strcmp(mp, "/proc") && strcmp(mp, "/dev") &&
            strcmp(mp, "/dev/shm") && strncmp(mp, "/proc/", 6))
            fail_msg("unexpected mount point in the sandbox: %s", l);
        nmounts += !strcmp(mp, "/") || !strcmp(mp, "/proc") || !strcmp(mp, "/dev");
    }
    assert_int_equal(nmounts, 3);
    free(mounts);
    close(leaked);
    unsetenv("WP_TEST_SECRET_TOKEN");
    th_destroy_gone(&S, sb);
    snap_template_free(t);
}

static void memory_limit_contains_allocation(void **state)
{
    struct snap_template *t;
    struct snap_sandbox *sb;
    struct wp_err err;
    int status = 0;
    (void)state;

    /* rootfs "host": the host's /usr read-only, python3 from it. */
    t = th_template("{\"name\":\"hog\",\"rootfs\":\"host\",\"init\":[\"/usr/bin/python3\",\"-c\","
                    "\"import time\\nopen('/tmp/ready','w').close()\\nx=[]\\n"
                    "while True:\\n  x.append(bytearray(8<<20))\\n  time.sleep(0.001)\"],"
                    "\"ready_file\":\"/tmp/ready\",\"limits\":{\"memory_mb\":48}}");
    if (snap_boot(S.ctx, t, NULL, NULL, NULL, &sb, &err) < 0)
        fail_msg("boot: %s", err.msg);
    /* It allocates past 48 MiB and is killed by the cgroup's OOM killer. */
    for (int i = 0; i < 1000; i++) {
        if (waitpid(sb->init_pid, &status, WNOHANG) == sb->init_pid)
            break;
        th_msleep(10);
    }
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGKILL);
    char path[512], *v = NULL;
    snprintf(path, sizeof(path), "/sys/fs/cgroup/memory/warmpool/%s/memory.max_usage_in_bytes",
             sb->id);
    if (wp_read_file(path, 64, &v, NULL, NULL) == 0) {
        assert_true(strtoull(v, NULL, 10) <= 48ull << 20);
        free(v);
    }
    char id[64];
    snprintf(id, sizeof(id), "%s", sb->id);
    sb->init_pid = 0; /* already reaped */
    assert_int_equal(snap_destroy(S.ctx, sb, &err), 0);
    assert_true(th_sandbox_gone(&S, id, 0));
    snap_template_free(t);
}

static void pids_limit_contains_fork_bomb(void **state)
{
    struct snap_template *t;
    struct snap_sandbox *sb;
    struct wp_err err;
    char path[512], *v = NULL;
    (void)state;

    t = th_template("{\"name\":\"bomb\",\"rootfs\":\"%s\",\"init\":[\"/bin/sh\",\"-c\","
                    "\"touch /tmp/ready; b() { b | b & }; b; sleep 1000\"],"
                    "\"ready_file\":\"/tmp/ready\",\"limits\":{\"pids\":32,\"memory_mb\":128}}",
                    S.rootfs);
    if (snap_boot(S.ctx, t, NULL, NULL, NULL, &sb, &err) < 0)
        fail_msg("boot: %s", err.msg);
    th_msleep(500);
    snprintf(path, sizeof(path), "/sys/fs/cgroup/pids/warmpool/%s/pids.current", sb->id);
    if (wp_read_file(path, 64, &v, NULL, NULL) == 0) {
        long cur = strtol(v, NULL, 10);
        assert_true(cur > 1);
        assert_true(cur <= 32);
        free(v);
    } else {
        snprintf(path, sizeof(path), "/sys/fs/cgroup/warmpool/%s/pids.current", sb->id);
        assert_int_equal(wp_read_file(path, 64, &v, NULL, NULL), 0);
        assert_true(strtol(v, NULL, 10) <= 32);
        free(v);
    }
    /* The host is unaffected: it can still fork. */
    pid_t p = fork();
    if (p == 0)
        _exit(0);
    assert_true(p > 0);
    waitpid(p, NULL, 0);
    th_destroy_gone(&S, sb);
    snap_template_free(t);
}

/* A sandbox whose init a criu still holds (ptrace: a dump or restore whose
 * helper was killed, as a node's shutdown kills its builds) is destroyed
 * all the same: the tracer goes first. Before, the destroy's wait for init
 * never returned (a node stopped during an image checkpoint hung). */
static void destroy_while_a_tracer_holds_init(void **state)
{
    struct snap_template *t;
    struct snap_sandbox *sb;
    struct wp_err err;
    int pfd[2], st;
    char c;
    (void)state;

    t = th_template("{\"name\":\"traced\",\"rootfs\":\"%s\",\"init\":[\"/bin/sh\",\"-c\","
                    "\"touch /tmp/ready; exec sleep 1000\"],\"ready_file\":\"/tmp/ready\"}",
                    S.rootfs);
    if (snap_boot(S.ctx, t, NULL, NULL, NULL, &sb, &err) < 0)
        fail_msg("boot: %s", err.msg);
    char id[sizeof(sb->id)];
    snprintf(id, sizeof(id), "%s", sb->id);
    pid_t init = sb->init_pid;
    assert_int_equal(pipe(pfd), 0);
    pid_t tracer = fork();
    assert_true(tracer >= 0);
    if (tracer == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed run leaves no tracer */
        /* As criu does: seize, stop it, then wait on something else. */
        c = ptrace(PTRACE_SEIZE, init, 0, 0) == 0 && ptrace(PTRACE_INTERRUPT, init, 0, 0) == 0 &&
                    waitpid(init, &st, __WALL) == init
                ? 'y'
                : 'n';
        (void)!write(pfd[1], &c, 1);
        for (;;)
            pause();
    }
    close(pfd[1]);
    assert_int_equal(read(pfd[0], &c, 1), 1);
    close(pfd[0]);
    assert_int_equal(c, 'y');
    alarm(60); /* a hang fails the test instead of the whole run */
    assert_int_equal(snap_destroy(S.ctx, sb, &err), 0);
    alarm(0);
    assert_int_equal(waitpid(tracer, &st, 0), tracer);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    assert_true(th_sandbox_gone(&S, id, 0));
    snap_template_free(t);
}

static void corrupt_image_restore_leaves_nothing(void **state)
{
    char src[1024], dst[1024], cmd[2200];
    struct snap_sandbox *sb = NULL;
    struct wp_err err;
    (void)state;

    snprintf(src, sizeof(src), "%s/images/%s", S.state, IMG);
    snprintf(dst, sizeof(dst), "%s/images/broken", S.state);
    snprintf(cmd, sizeof(cmd), "cp -a %s %s && for f in %s/criu/core-*.img; do "
                               "head -c 40 /dev/urandom | dd of=$f bs=1 seek=8 conv=notrunc 2>/dev/null; done",
             src, dst, dst);
    assert_int_equal(system(cmd), 0);
    char bid[64];
    snprintf(bid, sizeof(bid), "broken-%d", (int)getpid());
    struct snap_restore_opts ro = { .id = bid };
    assert_true(snap_restore(S.ctx, "broken", &ro, &sb, &err) < 0);
    assert_null(sb);
    assert_int_equal(err.code, WP_ECRIU);
    assert_non_null(strstr(err.msg, "criu restore failed"));
    assert_non_null(strstr(err.msg, "full log:"));
    assert_true(th_sandbox_gone(&S, bid, 0));
    assert_int_equal(snap_image_delete(S.ctx, "broken", &err), 0);
}

static void failed_dump_leaves_nothing(void **state)
{
    struct snap_template *t;
    struct snap_sandbox *sb;
    struct wp_err err;
    char path[1024];
    struct stat st;
    (void)state;

    /* criu refuses a namespace file bind-mounted inside the sandbox. A
     * confined sandbox cannot mount (seccomp): this one runs unconfined,
     * from a second context on the same state dir. */
    struct snap_config ucfg = { .state_dir = S.state, .unconfined = true };
    struct snap_ctx *uctx;
    if (snap_ctx_open(&ucfg, &uctx, &err) < 0)
        fail_msg("open: %s", err.msg);
    t = th_template("{\"name\":\"nsbind\",\"rootfs\":\"%s\",\"init\":[\"/bin/sh\",\"-c\","
                    "\"touch /tmp/nsref; mount --bind /proc/self/ns/uts /tmp/nsref; "
                    "touch /tmp/ready; exec sleep 1000\"],\"ready_file\":\"/tmp/ready\"}",
                    S.rootfs);
    if (snap_boot(uctx, t, NULL, NULL, NULL, &sb, &err) < 0)
        fail_msg("boot: %s", err.msg);
    char id[64];
    pid_t pid = sb->init_pid;
    snprintf(id, sizeof(id), "%s", sb->id);
    assert_int_equal(snap_checkpoint(uctx, sb, t, "never", 0, NULL, &err), WP_ECRIU);
    assert_non_null(strstr(err.msg, "criu dump failed"));
    assert_non_null(strstr(err.msg, "never.dump-failed.log"));
    assert_non_null(strstr(err.msg, "mnt:")); /* criu's own words on the cause */
    snprintf(path, sizeof(path), "%s/images/never", S.state);
    assert_int_equal(stat(path, &st), -1);
    snprintf(path, sizeof(path), "%s/images/never.partial", S.state);
    assert_int_equal(stat(path, &st), -1);
    snprintf(path, sizeof(path), "%s/images/never.dump-failed.log", S.state);
    assert_int_equal(stat(path, &st), 0);
    unlink(path);
    assert_true(th_sandbox_gone(&S, id, pid));
    snap_template_free(t);
    snap_ctx_close(uctx);
}

static void killed_restorer_is_cleaned_up_by_gc(void **state)
{
    int pfd[2];
    char ids[3][64] = { { 0 } };
    (void)state;

    assert_int_equal(pipe(pfd), 0);
    pid_t child = fork();
    if (child == 0) {
        /* An earlier run of the node: restores clones, reports each. */
        struct snap_config cfg = { .state_dir = S.state };
        struct snap_ctx *ctx;
        struct wp_err err;
        close(pfd[0]);
        if (snap_ctx_open(&cfg, &ctx, &err) < 0)
            _exit(1);
        for (int i = 0; i < 3; i++) {
            struct snap_sandbox *sb;
            char id[64];
            snprintf(id, sizeof(id), "orphan-%d-%d", (int)getpid(), i);
            struct snap_restore_opts ro = { .id = id, .lazy = i == 1 };
            /* Announce before restoring, so the parent can kill us mid-way. */
            if (write(pfd[1], id, sizeof(ids[0])) < 0)
                _exit(1);
            if (snap_restore(ctx, IMG, &ro, &sb, &err) < 0)
                _exit(1);
        }
        pause();
        _exit(0);
    }
    close(pfd[1]);
    for (int i = 0; i < 3; i++)
        assert_int_equal(read(pfd[0], ids[i], sizeof(ids[0])), (ssize_t)sizeof(ids[0]));
    /* The third restore is under way: kill the restorer now. */
    th_msleep(20);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    close(pfd[0]);
    /* Its clones are orphans now; gc (as a restarted node would) removes
     * every trace of them. */
    struct wp_err err;
    int n = snap_gc(S.ctx, &err);
    assert_true(n >= 2);
    for (int i = 0; i < 3; i++)
        assert_true(th_sandbox_gone(&S, ids[i], 0));
    /* Nothing of theirs is left running anywhere. */
    char out[256];
    th_sh(out, sizeof(out), "ps -eo args | grep -c '[o]rphan-%d'", (int)child);
    assert_int_equal(atoi(out), 0);
}

struct left_seen {
    int n;
    char why[256];
};

static void on_left(void *arg, const char *id, const char *why)
{
    struct left_seen *l = arg;
    (void)id;
    l->n++;
    snprintf(l->why, sizeof(l->why), "%s", why);
}

/* The restorer died but nobody reaps it (its parent waits, as a PID 1 that
 * reaps late would): a zombie owner is a dead owner. A caller's own list
 * (keep_ids) and a live foreign owner are left alone, the latter reported. */
static void zombie_restorer_is_dead_to_gc(void **state)
{
    int pfd[2], go[2];
    char ids[2][64] = { { 0 } };
    (void)state;

    assert_int_equal(pipe(pfd), 0);
    assert_int_equal(pipe(go), 0);
    pid_t child = fork();
    if (child == 0) {
        struct snap_config cfg = { .state_dir = S.state };
        struct snap_ctx *ctx;
        struct wp_err err;
        char c;
        close(pfd[0]);
        close(go[1]);
        if (snap_ctx_open(&cfg, &ctx, &err) < 0)
            _exit(1);
        for (int i = 0; i < 2; i++) {
            struct snap_sandbox *sb;
            char id[64];
            snprintf(id, sizeof(id), "zombie-%d-%d", (int)getpid(), i);
            struct snap_restore_opts ro = { .id = id };
            if (snap_restore(ctx, IMG, &ro, &sb, &err) < 0 || write(pfd[1], id, sizeof(ids[0])) < 0)
                _exit(1);
        }
        /* Alive until told: gc must leave a running owner's sandboxes. */
        if (read(go[0], &c, 1) < 0)
            _exit(1);
        _exit(0);
    }
    close(pfd[1]);
    close(go[0]);
    for (int i = 0; i < 2; i++)
        assert_int_equal(read(pfd[0], ids[i], sizeof(ids[0])), (ssize_t)sizeof(ids[0]));
    close(pfd[0]);
    struct left_seen seen = { 0 };
    struct snap_gc_opts o = { .on_left = on_left, .arg = &seen, .sandboxes_only = true };
    struct wp_err err;
    assert_int_equal(snap_gc_with(S.ctx, &o, &err), 0);
    assert_int_equal(seen.n, 2);
    assert_non_null(strstr(seen.why, "is still running"));
    /* It exits and stays a zombie: not reaped until the end. */
    close(go[1]);
    char st[64] = "";
    for (int i = 0; i < 100 && st[0] != 'Z'; i++) {
        th_msleep(20);
        th_sh(st, sizeof(st), "ps -o stat= -p %d", (int)child);
    }
    assert_int_equal(st[0], 'Z');
    const char *keep[] = { ids[0] };
    struct snap_gc_opts o2 = { .keep_ids = keep, .n_keep_ids = 1 };
    assert_int_equal(snap_gc_with(S.ctx, &o2, &err), 1);
    assert_true(th_sandbox_gone(&S, ids[1], 0));
    char dir[1200];
    snprintf(dir, sizeof(dir), "%s/sandboxes/%s", S.state, ids[0]);
    assert_int_equal(access(dir, F_OK), 0);
    /* A gc that started before the sandbox was made does not judge it. */
    struct snap_gc_opts o3 = { .since_ms = 1 };
    assert_int_equal(snap_gc_with(S.ctx, &o3, &err), 0);
    /* Adopted by a live process (a node taking a sandbox its boot helper
     * made): in use again, for every gc. */
    struct snap_sandbox *sb;
    assert_int_equal(snap_sandbox_open(S.ctx, ids[0], &sb, &err), 0);
    assert_int_equal(snap_sandbox_adopt(S.ctx, sb, &err), 0);
    assert_int_equal(snap_gc(S.ctx, &err), 0);
    th_destroy_gone(&S, sb);
    waitpid(child, NULL, 0);
}

static void expect_template_error(const char *json, const char *needle)
{
    struct snap_template *t = NULL;
    struct wp_err err = { 0 };

    assert_true(snap_template_parse(json, strlen(json), &t, &err) < 0);
    assert_null(t);
    if (!strstr(err.msg, needle))
        fail_msg("error \"%s\" lacks \"%s\" for %s", err.msg, needle, json);
}

static void bad_templates_get_clear_errors(void **state)
{
    struct snap_template *t;
    struct snap_sandbox *sb = NULL;
    struct wp_err err;
    (void)state;

    expect_template_error("{\"name\":\"x\",\"rootfs\":\"/nonexistent/rootfs\",\"init\":[\"/bin/sh\"]}",
                          "rootfs \"/nonexistent/rootfs\" is not a directory");
    expect_template_error("{\"name\":\"x\",\"rootfs\":\"host\"}", "\"init\" is required");
    expect_template_error("{\"name\":\"x\",\"rootfs\":\"host\",\"init\":[]}", "must not be empty");
    expect_template_error("{\"name\":\"x\",\"rootfs\":\"host\",\"init\":[\"sh\"]}",
                          "init[0] \"sh\" must be an absolute path");
    expect_template_error("{\"name\":\"x\",\"rootfs\":\"host\",\"init\":[\"/bin/sh\"],"
                          "\"limits\":{\"memory_mb\":1}}",
                          "memory_mb 1 is absurd");
    expect_template_error("{\"name\":\"x\",\"rootfs\":\"host\",\"init\":[\"/bin/sh\"],"
                          "\"limits\":{\"memory_mb\":1e12}}",
                          "is absurd");
    expect_template_error("{\"name\":\"x\",\"rootfs\":\"host\",\"init\":[\"/bin/sh\"],"
                          "\"limits\":{\"pids\":0}}",
                          "pids 0 is absurd");
    expect_template_error("{\"name\":\"x\",\"rootfs\":\"host\",\"init\":[\"/bin/sh\"],"
                          "\"limits\":{\"cpu\":-1}}",
                          "cpu -1 is absurd");
    expect_template_error("{\"name\":\"x\",\"rootfs\":\"host\",\"init\":[\"/bin/sh\"],"
                          "\"limits\":{\"disk\":1}}",
                          "unknown limit \"disk\"");
    expect_template_error("{\"name\":\"x\",\"rootfs\":\"host\",\"init\":[\"/bin/sh\"],\"colour\":1}",
                          "unknown field \"colour\"");
    expect_template_error("{\"name\":\"../x\",\"rootfs\":\"host\",\"init\":[\"/bin/sh\"]}",
                          "name \"../x\" must match");
    expect_template_error("{\"name\":\"x\",\"rootfs\":\"host\",\"init\":[\"/bin/sh\"],"
                          "\"binds\":[{\"source\":\"/nonexistent\",\"target\":\"/t\"}]}",
                          "binds source \"/nonexistent\" does not exist");
    expect_template_error("{\"name\":\"x\",\"rootfs\":\"host\",\"init\":[\"/bin/sh\"],"
                          "\"binds\":[{\"source\":\"/tmp\",\"target\":\"/proc/x\"}]}",
                          "is reserved");
    expect_template_error("{\"name\":\"x\",\"rootfs\":\"host\",\"init\":[\"/bin/sh\"],\"ksm\":1}",
                          "\"ksm\" must be true or false");
    expect_template_error("{\"name\":\"x\",", "invalid JSON");
    expect_template_error("{\"name\":\"x\",\"name\":\"y\"}", "invalid JSON");
    expect_template_error("[1]", "must be a JSON object");

    /* A command that does not exist: the boot fails with the reason and
     * leaves nothing behind. */
    t = th_template("{\"name\":\"badcmd\",\"rootfs\":\"%s\",\"init\":[\"/bin/no-such-init\"]}",
                    S.rootfs);
    struct snap_sandbox *none = NULL;
    assert_true(snap_boot(S.ctx, t, "badcmd-1", NULL, NULL, &none, &err) < 0);
    assert_null(none);
    assert_non_null(strstr(err.msg, "exec init /bin/no-such-init: No such file or directory"));
    assert_true(th_sandbox_gone(&S, "badcmd-1", 0));
    snap_template_free(t);

    /* A failing setup command: its status, nothing left. */
    t = th_template("{\"name\":\"badsetup\",\"rootfs\":\"%s\",\"init\":[\"/bin/sh\"],"
                    "\"setup\":[\"true\",\"exit 3\"]}",
                    S.rootfs);
    assert_true(snap_boot(S.ctx, t, "badsetup-1", NULL, NULL, &sb, &err) < 0);
    assert_non_null(strstr(err.msg, "setup command 2 (exit 3) failed with exit status 3"));
    assert_true(th_sandbox_gone(&S, "badsetup-1", 0));
    snap_template_free(t);

    /* Restoring an image that does not exist. */
    assert_int_equal(snap_restore(S.ctx, "no-such-image", NULL, &sb, &err), WP_ENOTFOUND);
    assert_int_equal(snap_restore(S.ctx, "../etc", NULL, &sb, &err), WP_EINVAL_INPUT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(manifest_describes_image),
        cmocka_unit_test(eager_clone_continues_state),
        cmocka_unit_test(lazy_clone_continues_state),
        cmocka_unit_test(lazy_python_clone_memory_intact),
        cmocka_unit_test(ksm_setting_reaches_clones),
        cmocka_unit_test(eight_clones_are_isolated),
        cmocka_unit_test(booted_sandbox_holds_no_host_state),
        cmocka_unit_test(memory_limit_contains_allocation),
        cmocka_unit_test(pids_limit_contains_fork_bomb),
        cmocka_unit_test(destroy_while_a_tracer_holds_init),
        cmocka_unit_test(corrupt_image_restore_leaves_nothing),
        cmocka_unit_test(failed_dump_leaves_nothing),
        cmocka_unit_test(killed_restorer_is_cleaned_up_by_gc),
        cmocka_unit_test(zombie_restorer_is_dead_to_gc),
        cmocka_unit_test(bad_templates_get_clear_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
