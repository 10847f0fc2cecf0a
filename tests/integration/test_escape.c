/* test_escape.c - the escape suite: what a model's code would try, run as a
 * model runs it (the hands' bash tool) in a cold-booted, an eager-restored
 * and a lazy-restored sandbox, and during an image build. Every probe must
 * fail the expected way; the output names the layer that stopped it.
 * Positive checks make sure the confinement leaves real work possible
 * (python3, cc, chown, setpriv, strace, gdb, git, pip install --user, npm
 * install, port 80, and a fork bomb
 * and a memory hog contained by the sandbox's limits).
 *
 * Probes never harm the host if they "succeed": writability is checked
 * with access(), reads take one line. The Python helper is
 * tests/integration/escape_probe.py, bound read-only at /probe.
 *
 * "uid_map": root inside must map to an unprivileged host range (the user
 * namespace layer, snapshot/userns.c; test_snap_userns.c checks it more). */
#include "alink_harness.h"
#include "lib/sched_testlib.h"
#include "lib/inetlib.h"
#include "lib/snaplib.h"
#include "base/fs.h"

#include <limits.h>

static struct th_snap S;
static struct snap_template *T;
static const char *IMG = "esc";
/* [0] cold boot, [1] eager clone, [2] lazy clone */
static struct snap_sandbox *SB[3];
static const char *const KIND[3] = { "cold", "eager", "lazy" };

struct probe {
    const char *name;
    const char *layer;   /* what stops it */
    const char *command; /* bash; prints BLOCKED... or ESCAPED... */
};

#define PY(p) "python3 /probe/escape_probe.py " p
#define SH(cmd) "if " cmd " >/dev/null 2>&1; then echo ESCAPED; else echo BLOCKED; fi"

static const struct probe probes[] = {
    { "status", "caps+nnp+seccomp", PY("status") },
    { "open_by_handle_at", "seccomp", PY("open_by_handle_at") },
    { "sysctl writable", "/proc ro", PY("sysctl_writable") },
    { "dmesg", "seccomp+caps", SH("dmesg") },
    { "syslog(2)", "seccomp", PY("syslog") },
    { "/proc/kmsg", "/proc mask", PY("kmsg") },
    { "kallsyms addrs", "caps (no SYSLOG)", PY("kallsyms") },
    { "/proc/keys", "/proc mask", PY("keys") },
    { "/proc/timer_list", "/proc mask", PY("timer_list") },
    { "/proc/kcore", "/proc mask", PY("kcore") },
    { "mount cgroup", "seccomp", "mkdir -p /tmp/cg; " SH("mount -t cgroup -o devices none /tmp/cg") },
    { "mount tmpfs", "seccomp", "mkdir -p /tmp/mt; " SH("mount -t tmpfs none /tmp/mt") },
    { "cgroupfs visible", "mount ns", SH("test -e /sys/fs/cgroup") },
    { "mknod+write", "caps (no MKNOD)+devices", SH("mknod /dev/x c 1 3 && echo hi > /dev/x") },
    { "mknod (py)", "caps (no MKNOD)", PY("mknod") },
    { "keyctl", "seccomp", PY("keyctl") },
    { "add_key", "seccomp", PY("add_key") },
    { "bpf map", "seccomp", PY("bpf_map_create") },
    { "perf_event_open", "seccomp", PY("perf_event_open") },
    { "userfaultfd", "seccomp", PY("userfaultfd") },
    { "io_uring", "seccomp", PY("io_uring") },
    { "clone3", "seccomp (ENOSYS)", PY("clone3") },
    { "x32 syscall", "seccomp arch", PY("x32") },
    { "personality", "seccomp", PY("personality") },
    { "settimeofday", "seccomp", PY("settime") },
    { "unshare -U", "seccomp", SH("unshare -U true") },
    { "unshare -m", "seccomp", SH("unshare -m true") },
    { "statmount (new)", "seccomp allow list", PY("statmount") },
    { "kcmp", "seccomp", PY("kcmp") },
    { "modify_ldt", "seccomp", PY("modify_ldt") },
    { "fanotify_init", "seccomp", PY("fanotify") },
    { "vsock socket", "seccomp", PY("vsock") },
    { "ptrace hands", "caps superset", PY("ptrace_init") },
    { "disk limit", "tmpfs size", SH("dd if=/dev/zero of=/work/big bs=1M count=80") "; rm -f /work/big" },
    { "shm limit", "tmpfs size", SH("dd if=/dev/zero of=/dev/shm/big bs=1M count=20") "; rm -f /dev/shm/big" },
};

struct check {
    const char *name;
    const char *command;
    const char *want; /* substring of the output */
};

static const struct check checks[] = {
    { "python3", "python3 -c 'print(6 * 7)'", "42" },
    { "cc", "printf 'int main(void) { return 42; }' > /tmp/t.c && cc -o /tmp/t /tmp/t.c && /tmp/t; echo rc=$?", "rc=42" },
    { "chown", "touch /work/o && chown 65534:65534 /work/o && stat -c %u:%g /work/o", "65534:65534" },
    { "setpriv", "setpriv --reuid=65534 --regid=65534 --clear-groups id -u", "65534" },
    /* The host layer has no /etc/pam.d: su needs one, as in any image. */
    { "su", "mkdir -p /etc/pam.d && printf 'auth sufficient pam_rootok.so\\naccount required "
            "pam_permit.so\\nsession required pam_permit.so\\n' > /etc/pam.d/su && "
            "su -s /bin/sh nobody -c 'id -u'", "65534" },
    { "strace", "strace -f -e trace=execve true 2>&1 | grep -c execve", "1" },
    { "gdb", "printf 'int main(void) { return 3; }' > /tmp/g.c && cc -g -o /tmp/g /tmp/g.c && "
             "gdb -q -batch -ex run /tmp/g 2>&1 | grep -o 'exited with code 03'", "exited with code 03" },
    { "git", "cd /tmp && rm -rf g.git && git init -q g.git && cd g.git && git -c user.email=a@b "
             "-c user.name=a commit -q --allow-empty -m x && git log --oneline | wc -l", "1" },
    /* Installs as a developer does them, from local packages (the default
     * sandbox has no network): into the user's site-packages, and npm's
     * node_modules with a package's scripts run under confinement. */
    { "pip install --user", "rm -rf /tmp/pp && mkdir -p /tmp/pp/wpdemo && echo 'X = 42' > "
                            "/tmp/pp/wpdemo/__init__.py && printf 'from setuptools import setup\n"
                            "setup(name=\"wpdemo\", version=\"1.0\", packages=[\"wpdemo\"])\n' > "
                            "/tmp/pp/setup.py && python3 -m pip install -q --user --no-index "
                            "--no-build-isolation --break-system-packages /tmp/pp >/dev/null 2>&1; "
                            "cd / && python3 -c 'import wpdemo; print(wpdemo.X)'", "42" },
    { "npm install", "rm -rf /tmp/np /tmp/app && mkdir -p /tmp/np /tmp/app && echo 'module.exports = 42' > "
                     "/tmp/np/index.js && printf '{\"name\":\"wpdemo\",\"version\":\"1.0.0\","
                     "\"scripts\":{\"postinstall\":\"echo ran > /tmp/np/post\"}}' > /tmp/np/package.json "
                     "&& cd /tmp/app && npm install --offline --no-audit --no-fund --install-links "
                     "/tmp/np >/dev/null 2>&1; node -e 'console.log(require(\"wpdemo\"))'", "42" },
    { "bind :80", PY("bind80"), "OK" },
    { "fork bomb", PY("forkbomb"), "OK contained" },
    { "memory hog", PY("memhog"), "OK contained" },
};

static void connect_to(struct hh *h, const struct snap_sandbox *sb)
{
    hh_connect_root(h, sb->root);
}

/* The escape_probe.py next to this test's source, copied where the
 * sandbox sees it, with the image build's probe script. */
static int probe_dir(char *out, size_t cap)
{
    char path[PATH_MAX], *data = NULL, dst[1200];
    size_t len = 0;
    struct wp_err err;

    if (th_source_file("escape_probe.py", path, sizeof(path)) < 0)
        return -1;
    snprintf(out, cap, "%s/probe", S.state);
    snprintf(dst, sizeof(dst), "%s/escape_probe.py", out);
    if (mkdir(out, 0755) < 0 || wp_read_file(path, 1 << 20, &data, &len, &err) < 0 ||
        wp_write_file(dst, data, len, 0644, &err) < 0)
        return -1;
    free(data);
    /* The image build runs probes too (setup commands are confined). */
    static const char build[] =
        "cd /work\n"
        "for p in status keyctl bpf_map_create open_by_handle_at sysctl_writable mknod; do\n"
        "  echo \"$p $(python3 /probe/escape_probe.py $p)\"\n"
        "done > /work/build-probes.txt\n"
        "if mount -t tmpfs none /tmp >/dev/null 2>&1; then r=ESCAPED; else r=BLOCKED; fi\n"
        "echo \"mount $r\" >> /work/build-probes.txt\n"
        "if unshare -U true >/dev/null 2>&1; then r=ESCAPED; else r=BLOCKED; fi\n"
        "echo \"unshare $r\" >> /work/build-probes.txt\n";
    snprintf(dst, sizeof(dst), "%s/build.sh", out);
    return wp_write_file(dst, build, strlen(build), 0644, &err) < 0 ? -1 : 0;
}

static int group_setup(void **state)
{
    char dir[1024], probe[1024];
    struct wp_err err;
    (void)state;

    if (th_snap_open(&S) < 0)
        return -1;
    if (th_hands_copy(S.state, dir, sizeof(dir)) < 0) {
        fprintf(stderr, "setup: cannot copy warmpool-hands into %s\n", S.state);
        return -1;
    }
    if (probe_dir(probe, sizeof(probe)) < 0) {
        fprintf(stderr, "setup: escape_probe.py not found above the test binary\n");
        return -1;
    }
    T = th_template("{\"name\":\"esc\",\"rootfs\":\"host\",\"workdir\":\"/work\","
                    "\"init_sets_hostname\":true,"
                    "\"init\":[\"/.wp/warmpool-hands\",\"--socket\",\"/run/warmpool/hands.sock\","
                    "\"--workdir\",\"/work\",\"--ready-file\",\"/run/warmpool/hands.ready\"],"
                    "\"ready_file\":\"/run/warmpool/hands.ready\","
                    "\"setup\":[\"sh /probe/build.sh\"],"
                    "\"binds\":[{\"source\":\"%s\",\"target\":\"/.wp\"},"
                    "{\"source\":\"%s\",\"target\":\"/probe\"}],"
                    "\"limits\":{\"memory_mb\":256,\"pids\":64,\"disk_mb\":64,\"shm_mb\":16}}",
                    dir, probe);
    /* The cold-booted sandbox, and an image with its two clones. */
    struct snap_sandbox *tmpl;
    if (snap_boot(S.ctx, T, NULL, NULL, NULL, &SB[0], &err) < 0 ||
        snap_boot(S.ctx, T, NULL, NULL, NULL, &tmpl, &err) < 0 ||
        snap_checkpoint(S.ctx, tmpl, T, IMG, 0, NULL, &err) < 0) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    for (int i = 1; i < 3; i++) {
        struct snap_restore_opts ro = { .lazy = i == 2 };
        if (snap_restore(S.ctx, IMG, &ro, &SB[i], &err) < 0) {
            fprintf(stderr, "setup: restore: %s\n", err.msg);
            return -1;
        }
    }
    /* The lazy clone's probes mean something only if it is lazy: a restore
     * that went eager (vm.unprivileged_userfaultfd=0, see snapshot/userns.c)
     * would pass them as an eager clone. */
    if (SB[2]->lazy_pid <= 0) {
        fprintf(stderr, "setup: the lazy clone was restored eagerly (no lazy-pages daemon); "
                        "is vm.unprivileged_userfaultfd 1? (deploy/install-deps.sh sets it)\n");
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    struct wp_err err;
    (void)state;

    for (int i = 0; i < 3; i++)
        if (SB[i])
            snap_destroy(S.ctx, SB[i], &err);
    snap_template_free(T);
    th_snap_close(&S);
    return 0;
}

static void escape_probes(int which)
{
    struct hh h;
    int failed = 0;

    connect_to(&h, SB[which]);
    hh_attach(&h, KIND[which]);
    for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
        char *out = hh_bash(&h, probes[i].command);
        bool ok = strstr(out, "BLOCKED") && !strstr(out, "ESCAPED");
        out[strcspn(out, "\n")] = '\0';
        printf("# %-5s probe %-18s %s by %-24s %s\n", KIND[which], probes[i].name,
               ok ? "stopped" : "NOT STOPPED", probes[i].layer, out);
        failed += !ok;
        free(out);
    }
    /* Root inside is not the host's root: the user namespace maps it to
     * an unprivileged range (snapshot/userns.c). */
    char *out = hh_bash(&h, PY("uid_map"));
    out[strcspn(out, "\n")] = '\0';
    bool mapped = strstr(out, "BLOCKED") && !strstr(out, "ESCAPED");
    printf("# %-5s probe %-18s %s by %-24s %s\n", KIND[which], "uid_map",
           mapped ? "stopped" : "NOT STOPPED", "user namespace", out);
    failed += !mapped;
    free(out);
    hh_stop(&h);
    assert_int_equal(failed, 0);
}

static void real_work(int which)
{
    struct hh h;
    int failed = 0;

    connect_to(&h, SB[which]);
    hh_attach(&h, KIND[which]);
    for (size_t i = 0; i < sizeof(checks) / sizeof(checks[0]); i++) {
        char *out = hh_bash(&h, checks[i].command);
        bool ok = strstr(out, checks[i].want) != NULL;
        for (char *p = out; *p; p++)
            if (*p == '\n')
                *p = ' ';
        printf("# %-5s works %-12s %s: %.100s\n", KIND[which], checks[i].name, ok ? "ok" : "BROKEN",
               out);
        failed += !ok;
        free(out);
    }
    hh_stop(&h);
    assert_int_equal(failed, 0);
}

static void escapes_fail_cold(void **state) { (void)state; escape_probes(0); }
static void escapes_fail_eager(void **state) { (void)state; escape_probes(1); }
static void escapes_fail_lazy(void **state) { (void)state; escape_probes(2); }
static void real_work_cold(void **state) { (void)state; real_work(0); }
static void real_work_eager(void **state) { (void)state; real_work(1); }
static void real_work_lazy(void **state) { (void)state; real_work(2); }

/* Setup commands ran confined: the build's probe results, kept in the
 * image's layer, are in every sandbox of it. */
static void image_build_ran_confined(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++) {
        char *txt = th_read_in(SB[i], "/work/build-probes.txt");
        assert_non_null(txt);
        printf("# %-5s image build probes: %s", KIND[i], txt);
        assert_null(strstr(txt, "ESCAPED"));
        assert_non_null(strstr(txt, "status BLOCKED"));
        free(txt);
    }
}

/* Side by side: the cold sandbox must not signal, trace or read the
 * files of a clone, nor the other way round. */
static void neighbours_are_out_of_reach(void **state)
{
    struct hh h;
    (void)state;

    for (int i = 0; i < 2; i++) {
        int me = i == 0 ? 0 : 1, other = i == 0 ? 1 : 0;
        char cmd[256], path[700];
        struct wp_err err;

        snprintf(path, sizeof(path), "%s/work/secret", SB[other]->root);
        assert_int_equal(wp_write_file(path, "s3cret\n", 7, 0600, &err), 0);
        snprintf(path, sizeof(path), "%s/work/secret", SB[me]->root);
        unlink(path); /* its own, from the other direction */
        connect_to(&h, SB[me]);
        hh_attach(&h, KIND[me]);
        snprintf(cmd, sizeof(cmd), PY("other %d"), (int)SB[other]->init_pid);
        char *out = hh_bash(&h, cmd);
        printf("# %s -> %s: %s\n", KIND[me], KIND[other], out);
        assert_non_null(strstr(out, "BLOCKED"));
        free(out);
        out = hh_bash(&h, "ls /proc | grep -c '^[0-9]'; cat /work/secret 2>&1 | head -1");
        assert_null(strstr(out, "s3cret"));
        free(out);
        hh_stop(&h);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        HH_TEST(escapes_fail_cold),  HH_TEST(escapes_fail_eager),       HH_TEST(escapes_fail_lazy),
        HH_TEST(real_work_cold),     HH_TEST(real_work_eager),          HH_TEST(real_work_lazy),
        HH_TEST(image_build_ran_confined), HH_TEST(neighbours_are_out_of_reach),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
