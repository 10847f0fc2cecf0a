/* test_snap_userns.c - every sandbox in a user namespace of its own, seen
 * as a model sees it: through the bash tool of the hands (PID 1) on a
 * cold-booted, an eager-restored and a lazy-restored sandbox. Root inside
 * is an unprivileged host id range; files it makes are owned by that range
 * on the host; it owns its image's files (copy-up works), chowns, drops
 * to nobody; two clones of one image run side by side. */
#include "alink_harness.h"
#include "lib/sched_testlib.h"
#include "lib/snaplib.h"
#include "base/fs.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/wait.h>
#include <sys/stat.h>

static struct th_snap S;
static struct snap_template *T;
static const char *IMG = "uns";
#define RANGE 65536u

static int group_setup(void **state)
{
    char dir[1024];
    (void)state;

    if (th_snap_open(&S) < 0)
        return -1;
    if (th_hands_copy(S.state, dir, sizeof(dir)) < 0) {
        fprintf(stderr, "setup: cannot copy warmpool-hands into %s\n", S.state);
        return -1;
    }
    /* The setup step is the image's build: what it writes goes into the
     * image's layer, owned by the range. */
    T = th_template("{\"name\":\"uns\",\"rootfs\":\"host\",\"workdir\":\"/work\","
                    "\"setup\":[\"echo built > /etc/built-here\","
                    "\"mkdir -p /etc/pam.d && printf 'auth sufficient pam_rootok.so\\\\n"
                    "account sufficient pam_permit.so\\\\nsession optional pam_permit.so\\\\n'"
                    " > /etc/pam.d/su\"],"
                    "\"init\":[\"/.wp/warmpool-hands\",\"--socket\",\"/run/warmpool/hands.sock\","
                    "\"--workdir\",\"/work\",\"--ready-file\",\"/run/warmpool/hands.ready\"],"
                    "\"ready_file\":\"/run/warmpool/hands.ready\","
                    "\"binds\":[{\"source\":\"%s\",\"target\":\"/.wp\"}],"
                    "\"limits\":{\"memory_mb\":256,\"pids\":128}}",
                    dir);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    snap_template_free(T);
    th_snap_close(&S);
    return 0;
}

static void connect_to(struct hh *h, const struct snap_sandbox *sb)
{
    struct alink_attach a = { .session_id = "s" };
    struct hres r = { 0 };
    struct wp_err err;

    memset(h, 0, sizeof(*h));
    snprintf(h->sock, sizeof(h->sock), "%s/run/warmpool/hands.sock", sb->root);
    hh_connect(h);
    assert_true(alink_client_attach(h->c, &a, hh_result_cb, &r, &err) > 0);
    hh_wait(h, &r);
    assert_false(r.is_error);
    hres_free(&r);
}

/* Run a bash command; its output (malloc'd). Fails the test on error. */
static char *bash(struct hh *h, const char *cmd)
{
    char input[2048];
    struct hres r;
    json_t *s = json_string(cmd);
    char *q = json_dumps(s, JSON_ENCODE_ANY);

    snprintf(input, sizeof(input), "{\"command\":%s}", q);
    free(q);
    json_decref(s);
    hh_call(h, "bash", input, &r);
    if (r.is_error)
        fail_msg("bash %s: %s", cmd, r.text);
    char *out = strdup(r.text);
    hres_free(&r);
    return out;
}

/* The same, but a failure is the expected outcome: returns its text. */
static char *bash_fails(struct hh *h, const char *cmd)
{
    char input[2048];
    struct hres r;
    json_t *s = json_string(cmd);
    char *q = json_dumps(s, JSON_ENCODE_ANY);

    snprintf(input, sizeof(input), "{\"command\":%s}", q);
    free(q);
    json_decref(s);
    hh_call(h, "bash", input, &r);
    if (!r.is_error)
        fail_msg("bash %s succeeded: %s", cmd, r.text);
    char *out = strdup(r.text);
    hres_free(&r);
    return out;
}

static unsigned long status_field(pid_t pid, const char *key)
{
    char path[64], line[512];
    unsigned long v = 0;
    size_t kl = strlen(key);
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "re");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':')
            v = strtoul(line + kl + 1, NULL, strstr(key, "Cap") ? 16 : 10);
    fclose(f);
    return v;
}

/* A path in the sandbox's writable layer: on confine.c's tmpfs (rw/upper)
 * when the sandbox is confined, else in its dir. */
static void upper_path(const struct snap_sandbox *sb, const char *rel, char *out, size_t cap)
{
    struct stat st;

    snprintf(out, cap, "%s/rw/upper", sb->dir);
    if (stat(out, &st) < 0)
        snprintf(out, cap, "%s/upper%s", sb->dir, rel);
    else
        snprintf(out, cap, "%s/rw/upper%s", sb->dir, rel);
}

/* What every sandbox must show, whatever made it. Returns the range base. */
static unsigned long check_confined(struct snap_sandbox *sb, const char *what)
{
    unsigned long in, base, count;
    struct hh h;
    struct stat st;
    char path[1200], *out;

    connect_to(&h, sb);
    /* The map: 0 inside is base outside, 65536 ids, base at 2^30 or above. */
    out = bash(&h, "cat /proc/self/uid_map; cat /proc/self/gid_map; id -u; id -G");
    assert_int_equal(sscanf(out, "%lu %lu %lu", &in, &base, &count), 3);
    assert_int_equal(in, 0);
    assert_true(base >= (1ul << 30));
    assert_int_equal(count, RANGE);
    char tail[64];
    snprintf(tail, sizeof(tail), "\n0\n0");
    assert_non_null(strstr(out, tail)); /* root inside, no other group */
    print_message("# %s: uid_map %lu %lu %lu\n", what, in, base, count);
    free(out);

    /* Init (the hands) seen from the host: the range's uid, a user
     * namespace other than ours, PID 1 inside. Its capabilities hold only
     * in that namespace: mknod, which needs CAP_MKNOD in the host's, fails. */
    assert_int_equal(status_field(sb->init_pid, "Uid"), base);
    assert_int_equal(status_field(sb->init_pid, "Gid"), base);
    assert_true(th_ns_inode(sb->init_pid, "user") != th_ns_inode(getpid(), "user"));
    snprintf(path, sizeof(path), "/proc/%d/status", (int)sb->init_pid);
    char *status = NULL;
    assert_int_equal(wp_read_file(path, 1 << 16, &status, NULL, NULL), 0);
    char nspid[64];
    snprintf(nspid, sizeof(nspid), "NSpid:\t%d\t1\n", (int)sb->init_pid);
    assert_non_null(strstr(status, nspid));
    free(status);
    out = bash_fails(&h, "mknod /tmp/null2 c 1 3");
    assert_non_null(strstr(out, "Operation not permitted"));
    free(out);

    /* A file made inside is the range's on the host (the clone's upper). */
    free(bash(&h, "echo hi > /work/made-inside"));
    upper_path(sb, "/work/made-inside", path, sizeof(path));
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_uid, base);
    assert_int_equal(st.st_gid, base);

    /* Root inside owns the image's files (idmapped lower layer): copy-up
     * works; the host's /usr stays the host's root's (nobody inside). */
    out = bash(&h, "stat -c %u /etc/passwd /etc/built-here /usr/bin/bash 2>&1 | tr '\\n' ' ';"
                   "echo '10.1.2.3 added' >> /etc/hosts && tail -n1 /etc/hosts");
    assert_string_equal(out, "0 0 65534 10.1.2.3 added");
    free(out);
    upper_path(sb, "/etc/hosts", path, sizeof(path));
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_uid, base);

    /* chown to another id of the range, and a process as nobody. */
    out = bash(&h, "touch /tmp/c && chown 1000:1000 /tmp/c && stat -c %u:%g /tmp/c;"
                   "su -s /bin/sh nobody -c 'id -u; id -g';"
                   "setpriv --reuid=65534 --regid=65534 --clear-groups id -u");
    assert_string_equal(out, "1000:1000\n65534\n65534\n65534");
    free(out);
    upper_path(sb, "/tmp/c", path, sizeof(path));
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_uid, base + 1000);

    /* Nesting: a user namespace inside. Not asserted: the seccomp layer
     * (snapshot/confine.c) decides whether it stays allowed. */
    out = bash(&h, "unshare -U true 2>&1; echo status=$?");
    print_message("# %s: unshare -U inside: %s\n", what, out);
    free(out);
    hh_stop(&h);
    return base;
}

static void sysctl_set(const char *path, const char *v)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, v, strlen(v)), (int)strlen(v));
    close(fd);
}

static bool range_recorded(unsigned long base)
{
    char path[128];
    struct stat st;

    snprintf(path, sizeof(path), "/var/lib/warmpool/userns/%lu", (base - (1ul << 30)) / RANGE);
    return stat(path, &st) == 0;
}

static void cold_boot_is_confined(void **state)
{
    struct snap_sandbox *sb;
    struct wp_err err;
    (void)state;

    assert_true(snap_ctx_userns(S.ctx));
    if (snap_boot(S.ctx, T, NULL, NULL, NULL, &sb, &err) < 0)
        fail_msg("boot: %s", err.msg);
    unsigned long base = check_confined(sb, "cold boot");
    assert_true(range_recorded(base));
    th_destroy_gone(&S, sb);
    /* A sandbox that never became an image gives its range back. */
    assert_false(range_recorded(base));
}

static unsigned long image_base;

static void eager_restore_is_confined(void **state)
{
    struct snap_sandbox *sb;
    struct wp_err err;
    (void)state;

    if (snap_boot(S.ctx, T, NULL, NULL, NULL, &sb, &err) < 0)
        fail_msg("boot: %s", err.msg);
    if (snap_checkpoint(S.ctx, sb, T, IMG, 0, NULL, &err) < 0)
        fail_msg("checkpoint: %s", err.msg);
    struct snap_restore_opts ro = { .lazy = false };
    if (snap_restore(S.ctx, IMG, &ro, &sb, &err) < 0)
        fail_msg("restore: %s", err.msg);
    image_base = check_confined(sb, "eager restore");
    assert_true(range_recorded(image_base));
    th_destroy_gone(&S, sb);
    /* The image keeps the range. */
    assert_true(range_recorded(image_base));
}

/* Restores IMG lazily with vm.unprivileged_userfaultfd set to `value` for
 * the restore only, and puts the host's value back. */
static int restore_lazy_with_sysctl(const char *value, struct snap_sandbox **sb,
                                    struct wp_err *err)
{
    char *old = NULL;

    assert_int_equal(wp_read_file("/proc/sys/vm/unprivileged_userfaultfd", 16, &old, NULL, NULL), 0);
    sysctl_set("/proc/sys/vm/unprivileged_userfaultfd", value);
    struct snap_restore_opts ro = { .lazy = true };
    int rc = snap_restore(S.ctx, IMG, &ro, sb, err);
    old[1] = '\0';
    sysctl_set("/proc/sys/vm/unprivileged_userfaultfd", old);
    free(old);
    return rc;
}

static void lazy_restore_is_confined(void **state)
{
    struct snap_sandbox *sb;
    struct wp_err err;
    (void)state;

    /* criu needs unprivileged userfaultfd to restore lazily in a user
     * namespace (see snapshot/userns.c; install-deps sets it). */
    if (restore_lazy_with_sysctl("1", &sb, &err) < 0)
        fail_msg("restore: %s", err.msg);
    assert_true(sb->lazy_pid > 0);
    assert_int_equal(check_confined(sb, "lazy restore"), image_base);
    th_destroy_gone(&S, sb);
}

static void lazy_without_the_sysctl_restores_eagerly(void **state)
{
    struct snap_sandbox *sb;
    struct wp_err err;
    (void)state;

    if (restore_lazy_with_sysctl("0", &sb, &err) < 0)
        fail_msg("restore: %s", err.msg);
    assert_int_equal(sb->lazy_pid, 0);
    assert_int_equal(check_confined(sb, "eager fallback"), image_base);
    th_destroy_gone(&S, sb);
}

static void two_clones_side_by_side(void **state)
{
    struct snap_sandbox *sb[2];
    struct wp_err err;
    struct hh h[2];
    (void)state;

    for (int i = 0; i < 2; i++) {
        struct snap_restore_opts ro = { 0 };
        if (snap_restore(S.ctx, IMG, &ro, &sb[i], &err) < 0)
            fail_msg("restore: %s", err.msg);
    }
    /* One range (the image's), two user namespaces. */
    assert_true(th_ns_inode(sb[0]->init_pid, "user") != th_ns_inode(sb[1]->init_pid, "user"));
    for (int i = 0; i < 2; i++) {
        char cmd[128];
        connect_to(&h[i], sb[i]);
        snprintf(cmd, sizeof(cmd), "echo %d > /work/who; cat /work/who; ls /proc | grep -c '^[0-9]'", i);
        char *out = bash(&h[i], cmd);
        char want[8];
        snprintf(want, sizeof(want), "%d\n", i);
        assert_memory_equal(out, want, 2);
        free(out);
    }
    for (int i = 0; i < 2; i++) {
        hh_stop(&h[i]);
        th_destroy_gone(&S, sb[i]);
    }
}

static void deleting_the_image_frees_its_range(void **state)
{
    struct wp_err err;
    (void)state;

    assert_true(range_recorded(image_base));
    if (snap_image_delete(S.ctx, IMG, &err) < 0)
        fail_msg("delete: %s", err.msg);
    assert_false(range_recorded(image_base));
}

static void write_file_in(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
        _exit(90);
    close(fd);
}

/* A host without user namespaces, played by a user namespace of the
 * test's own whose max_user_namespaces is 0 (the limit is per namespace):
 * the context refuses, and says why, unless the operator allows it. */
static void refuses_without_user_namespaces(void **state)
{
    int p[2], status;
    (void)state;

    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct snap_ctx *ctx = NULL;
        struct wp_err err = { 0 };
        char out[600];
        close(p[0]);
        if (unshare(CLONE_NEWUSER) < 0)
            _exit(91);
        write_file_in("/proc/self/uid_map", "0 0 1");
        write_file_in("/proc/self/setgroups", "deny");
        write_file_in("/proc/self/gid_map", "0 0 1");
        write_file_in("/proc/sys/user/max_user_namespaces", "0");
        for (int allow = 0; allow < 2; allow++) {
            struct snap_config cfg = { .state_dir = S.state, .insecure_allow_unconfined = allow };
            err.msg[0] = '\0';
            int rc = snap_ctx_open(&cfg, &ctx, &err);
            snprintf(out, sizeof(out), "%d %d %s\n", allow, rc, err.msg);
            (void)!write(p[1], out, strlen(out));
            if (rc == 0)
                snap_ctx_close(ctx);
        }
        _exit(0);
    }
    close(p[1]);
    char buf[2048] = "";
    size_t n = 0;
    ssize_t r;
    while ((r = read(p[0], buf + n, sizeof(buf) - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
    close(p[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    print_message("# %s", buf);
    /* Refused, naming the cause and the flag. */
    assert_non_null(strstr(buf, "0 -10002 "));
    assert_non_null(strstr(buf, "cannot give sandboxes a user namespace"));
    assert_non_null(strstr(buf, "--insecure-allow-unconfined"));
    /* Allowed: whatever else this fake host lacks, not that refusal. */
    char *second = strstr(buf, "\n1 ");
    assert_non_null(second);
    assert_null(strstr(second, "cannot give sandboxes a user namespace"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        HH_TEST(cold_boot_is_confined),
        HH_TEST(eager_restore_is_confined),
        HH_TEST(lazy_restore_is_confined),
        HH_TEST(lazy_without_the_sysctl_restores_eagerly),
        HH_TEST(two_clones_side_by_side),
        HH_TEST(deleting_the_image_frees_its_range),
        HH_TEST(refuses_without_user_namespaces),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
