/* test_criu_probe.c - how criu runs on a host, and criu that hangs.
 *
 * The probe's decision (default works / only no-breakpoints works /
 * neither / lazy pages broken) is driven by stand-ins: shell scripts in
 * front of the real criu that hang or fail where a broken host would. The
 * real criu of this machine is probed too. Then a stand-in that hangs in
 * the middle of a real dump or restore proves the deadline: the caller
 * gets an error naming the step and the log within the deadline, nothing
 * of the sandbox is left, and the same context goes on working. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/timeutil.h"

#define REAL_CRIU WP_PREFIX "/bin/criu"
/* What a hung stand-in runs: `sleep N`, N this test process's own (other
 * runs of the suite may hang stand-ins at the same time), to count them. */
#define HANG "exec sleep $HANG_SECS"

static int hang_secs(void)
{
    return 40000 + (int)(getpid() % 20000);
}

static char *dir;

static int setup(void **state)
{
    (void)state;
    dir = th_tmpdir("probe");
    return dir ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    th_rmtree(dir);
    free(dir);
    return 0;
}

/* A stand-in criu at dir/<name>: body runs first (sh), then the real criu
 * runs as it would in the no-breakpoints mode, which works wherever criu
 * works at all. Returns the path (static). */
static const char *standin(const char *name, const char *body)
{
    static char path[600];
    char text[2048];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int n = snprintf(text, sizeof(text),
                     "#!/bin/sh\n"
                     "[ \"$1\" = --version ] && exec %s --version\n"
                     "HANG_SECS=%d\n"
                     "%s\n"
                     "export CRIU_FAULT=130\n"
                     "exec %s \"$@\"\n",
                     REAL_CRIU, hang_secs(), body, REAL_CRIU);
    assert_int_equal(wp_write_file(path, text, (size_t)n, 0755, NULL), 0);
    return path;
}

static int count_hung(void)
{
    char out[64];
    th_sh(out, sizeof(out), "pgrep -cxf 'sleep %d' || true", hang_secs());
    return atoi(out);
}

static void probe(const char *criu, double deadline, struct snap_probe *p)
{
    struct snap_probe_config pc = { .criu_bin = criu, .cache_dir = "", .deadline_s = deadline,
                                    .work_dir = dir };
    struct wp_err err;
    uint64_t t0 = wp_now_ns();
    assert_int_equal(snap_criu_probe(&pc, p, &err), 0);
    /* Two modes, three steps each at most: never a hang. */
    assert_true((double)(wp_now_ns() - t0) / 1e9 < 6 * deadline + 5);
    print_message("# %s: mode %s lazy %d why: %s\n", strrchr(criu, '/') + 1,
                  snap_criu_mode_name(p->mode), p->lazy_ok, p->why);
}

static void decision_follows_what_works(void **state)
{
    struct snap_probe p;
    (void)state;

    /* A host where criu works as it is. */
    probe(standin("works", ":"), 3, &p);
    assert_int_equal(p.mode, SNAP_CRIU_DEFAULT);
    assert_true(p.lazy_ok);
    assert_string_equal(p.why, "");

    /* The host of the issue: breakpoints never fire, so a dump in the
     * default mode hangs; without breakpoints all works. */
    probe(standin("bp-hang", "[ \"$1\" = dump ] && [ \"$CRIU_FAULT\" != 130 ] && " HANG), 1, &p);
    assert_int_equal(p.mode, SNAP_CRIU_NOBP);
    assert_true(p.lazy_ok);
    assert_non_null(strstr(p.why, "default mode: dump did not finish within 1.0 s"));

    /* Restores hang in the default mode too (compel stops the restored
     * tasks the same way). */
    probe(standin("bp-hang-restore", "[ \"$1\" = restore ] && [ \"$CRIU_FAULT\" != 130 ] && " HANG),
          1, &p);
    assert_int_equal(p.mode, SNAP_CRIU_NOBP);
    assert_non_null(strstr(p.why, "restore did not finish"));

    /* Neither mode: a dump that fails. */
    probe(standin("broken", "[ \"$1\" = dump ] && exit 3"), 1, &p);
    assert_int_equal(p.mode, SNAP_CRIU_NONE);
    assert_false(p.lazy_ok);
    assert_non_null(strstr(p.why, "default mode: dump failed with exit status 3"));
    assert_non_null(strstr(p.why, "no-breakpoints mode: dump failed with exit status 3"));

    /* Neither mode: a dump that hangs in both. */
    probe(standin("hang", "[ \"$1\" = dump ] && " HANG), 1, &p);
    assert_int_equal(p.mode, SNAP_CRIU_NONE);
    assert_non_null(strstr(p.why, "no-breakpoints mode: dump did not finish within 1.0 s"));

    /* Dump and restore work, lazy pages do not. */
    probe(standin("nolazy", "[ \"$1\" = lazy-pages ] && exit 1"), 2, &p);
    assert_int_equal(p.mode, SNAP_CRIU_DEFAULT);
    assert_false(p.lazy_ok);
    assert_non_null(strstr(p.why, "lazy pages"));

    /* Whatever hung was killed with its criu. */
    assert_int_equal(count_hung(), 0);
}

static void answer_is_cached_per_key(void **state)
{
    char cache[600], path[700];
    struct snap_probe p, q;
    struct wp_err err;
    (void)state;

    snprintf(cache, sizeof(cache), "%s/cache", dir);
    struct snap_probe_config pc = { .criu_bin = standin("cached", "[ \"$1\" = dump ] && [ \"$CRIU_FAULT\" != 130 ] && " HANG),
                                    .cache_dir = cache, .deadline_s = 1, .work_dir = dir };
    assert_int_equal(snap_criu_probe(&pc, &p, &err), 0);
    assert_false(p.cached);
    assert_int_equal(p.mode, SNAP_CRIU_NOBP);
    /* The second start reads it: no probe, no deadline to wait out. */
    uint64_t t0 = wp_now_ns();
    assert_int_equal(snap_criu_probe(&pc, &q, &err), 0);
    assert_true(q.cached);
    assert_true((double)(wp_now_ns() - t0) / 1e9 < 1.0);
    assert_int_equal(q.mode, SNAP_CRIU_NOBP);
    assert_string_equal(q.why, p.why);
    assert_string_equal(q.key, p.key);
    /* The key names criu (path, version), the kernel and the CPU. */
    assert_non_null(strstr(p.key, "/cached 4."));
    assert_non_null(strstr(p.key, "kernel="));
    assert_non_null(strstr(p.key, "cpu="));

    /* A damaged cache file is probed again, not trusted. */
    char out[800];
    assert_int_equal(th_sh(out, sizeof(out), "ls %s/criu-probe-*.json", cache), 0);
    out[strcspn(out, "\n")] = '\0';
    snprintf(path, sizeof(path), "%s", out);
    assert_int_equal(wp_write_file(path, "{\"mode\":\"default\"", 17, 0644, NULL), 0);
    assert_int_equal(snap_criu_probe(&pc, &q, &err), 0);
    assert_false(q.cached);
    assert_int_equal(q.mode, SNAP_CRIU_NOBP);
    /* A forced probe ignores the cache. */
    pc.force = true;
    assert_int_equal(snap_criu_probe(&pc, &q, &err), 0);
    assert_false(q.cached);

    /* No criu at all: a clear error, not a mode. */
    pc.criu_bin = "/nonexistent/criu";
    assert_true(snap_criu_probe(&pc, &q, &err) < 0);
    assert_non_null(strstr(err.msg, "/nonexistent/criu"));
}

/* This machine's own criu: some mode works (the suite relies on it), and
 * where the default mode hung, the task criu held was let go untraced. */
static void real_criu_on_this_machine(void **state)
{
    struct snap_probe p;
    (void)state;
    probe(REAL_CRIU, 5, &p);
    assert_int_not_equal(p.mode, SNAP_CRIU_NONE);
    assert_true(p.lazy_ok);
    if (p.mode == SNAP_CRIU_NOBP) {
        assert_non_null(strstr(p.why, "default mode: "));
        if (strstr(p.why, "dump did not finish"))
            assert_true(p.default_untraced);
    }
}

/* ---- a criu that hangs in the middle of real work ------------------------ */

/* A context on s's state dir whose criu hangs in `criu swrk` (what libcriu
 * runs) while dir/flag-<what> exists, for dumps (what "dump") or restores
 * ("restore"): the helpers name their criu config, criu-dump.conf or not.
 * The flag's path into flag. */
static struct snap_ctx *hang_ctx(struct th_snap *s, const char *what, char *flag, size_t cap)
{
    char body[900], name[64];
    bool dump = strcmp(what, "dump") == 0;
    snprintf(flag, cap, "%s/flag-%s", dir, what);
    snprintf(body, sizeof(body),
             "[ \"$1\" = swrk ] && [ -e %s ] && case \"$CRIU_CONFIG_FILE\" in *dump.conf) %s;; "
             "*) %s;; esac",
             flag, dump ? HANG : "", dump ? "" : HANG);
    snprintf(name, sizeof(name), "hang-%s", what);
    const char *criu = standin(name, body);
    struct snap_config cfg = { .state_dir = s->state, .criu_bin = criu, .criu_timeout_s = 2,
                               .criu_mode = snap_criu_mode_name(snap_ctx_criu(s->ctx)->mode) };
    struct snap_ctx *ctx;
    struct wp_err err;
    if (snap_ctx_open(&cfg, &ctx, &err) < 0)
        fail_msg("ctx: %s", err.msg);
    return ctx;
}

#define COUNTER                                                                              \
    "{\"name\":\"c\",\"rootfs\":\"%s\",\"init\":[\"/bin/sh\",\"-c\",\"i=0; while :; do "       \
    "i=$((i+1)); echo $i > /tmp/count; [ $i = 5 ] && touch /tmp/ready; usleep 5000; done\"],"  \
    "\"ready_file\":\"/tmp/ready\",\"limits\":{\"memory_mb\":64,\"pids\":32}}"

static void hung_restore_is_killed_and_cleaned(void **state)
{
    struct th_snap s;
    struct snap_sandbox *sb;
    struct wp_err err;
    char flag[600];
    (void)state;

    assert_int_equal(th_snap_open(&s), 0);
    struct snap_ctx *ctx = hang_ctx(&s, "restore", flag, sizeof(flag));
    struct snap_template *t = th_template(COUNTER, s.rootfs);
    assert_int_equal(snap_boot(ctx, t, NULL, NULL, NULL, &sb, &err), 0);
    assert_int_equal(snap_checkpoint(ctx, sb, t, "img", 0, NULL, &err), 0);

    assert_int_equal(wp_write_file(flag, "", 0, 0644, NULL), 0);
    for (int lazy = 0; lazy < 2; lazy++) {
        char id[32];
        snprintf(id, sizeof(id), "hung-%d", lazy);
        struct snap_restore_opts ro = { .lazy = lazy, .id = id };
        uint64_t t0 = wp_now_ns();
        int rc = snap_restore(ctx, "img", &ro, &sb, &err);
        double secs = (double)(wp_now_ns() - t0) / 1e9;
        print_message("# %s restore: %.2f s: %s\n", lazy ? "lazy" : "eager", secs, err.msg);
        assert_int_equal(rc, WP_ECRIU);
        assert_true(secs >= 2 && secs < 8); /* the deadline, not a hang */
        assert_non_null(strstr(err.msg, "restore did not finish within 2 s"));
        assert_non_null(strstr(err.msg, "img.restore-failed.log"));
        /* Nothing of the clone: dir, cgroup, mounts, processes (the hung
         * swrk, and for the lazy one its page server). */
        assert_true(th_sandbox_gone(&s, id, 0));
        assert_int_equal(count_hung(), 0);
    }

    /* The same node goes on: the flag gone, a restore works. */
    unlink(flag);
    assert_int_equal(snap_restore(ctx, "img", NULL, &sb, &err), 0);
    th_destroy_gone(&s, sb);
    snap_template_free(t);
    snap_ctx_close(ctx);
    th_snap_close(&s);
}

/* The helper waits for `criu lazy-pages` on its --status-fd: a daemon
 * that never says it listens fails the restore after 5 s, one that exits
 * at start fails it at once; nothing of either clone is left, and the
 * restore settings from the environment are checked. */
static void lazy_daemon_that_never_listens(void **state)
{
    struct th_snap s;
    struct snap_sandbox *sb;
    struct wp_err err;
    (void)state;

    assert_int_equal(th_snap_open(&s), 0);
    const char *mode = snap_criu_mode_name(snap_ctx_criu(s.ctx)->mode);
    struct snap_template *t = th_template(COUNTER, s.rootfs);
    assert_int_equal(snap_boot(s.ctx, t, NULL, NULL, NULL, &sb, &err), 0);
    assert_int_equal(snap_checkpoint(s.ctx, sb, t, "img", 0, NULL, &err), 0);
    static const struct {
        const char *name, *body, *want;
        double min_s, max_s;
    } cases[] = {
        { "lazy-hang", "[ \"$1\" = lazy-pages ] && " HANG, "did not start listening within 5 s", 4.5, 9 },
        { "lazy-exit", "[ \"$1\" = lazy-pages ] && exit 3", "lazy-pages exited at start", 0, 3 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct snap_config cfg = { .state_dir = s.state, .criu_bin = standin(cases[i].name, cases[i].body),
                                   .criu_mode = mode };
        struct snap_ctx *ctx;
        assert_int_equal(snap_ctx_open(&cfg, &ctx, &err), 0);
        struct snap_restore_opts ro = { .lazy = true, .id = cases[i].name };
        uint64_t t0 = wp_now_ns();
        int rc = snap_restore(ctx, "img", &ro, &sb, &err);
        double secs = (double)(wp_now_ns() - t0) / 1e9;
        print_message("# %s: %.2f s: %s\n", cases[i].name, secs, err.msg);
        assert_int_equal(rc, WP_ECRIU);
        assert_non_null(strstr(err.msg, cases[i].want));
        assert_true(secs >= cases[i].min_s && secs < cases[i].max_s);
        assert_true(th_sandbox_gone(&s, cases[i].name, 0));
        assert_int_equal(count_hung(), 0);
        snap_ctx_close(ctx);
    }
    /* Bad settings are refused, naming what is wanted. */
    struct snap_config cfg = { .state_dir = s.state, .criu_mode = "none", .criu_log_level = 9 };
    struct snap_ctx *bad;
    assert_int_equal(snap_ctx_open(&cfg, &bad, &err), WP_ECONFIG);
    assert_non_null(strstr(err.msg, "want 1 to 4"));
    cfg.criu_log_level = 0;
    setenv("WARMPOOL_CRIU_LOG_LEVEL", "4x", 1);
    assert_int_equal(snap_ctx_open(&cfg, &bad, &err), WP_ECONFIG);
    assert_non_null(strstr(err.msg, "WARMPOOL_CRIU_LOG_LEVEL"));
    unsetenv("WARMPOOL_CRIU_LOG_LEVEL");
    setenv("WARMPOOL_CRIU_LAZY_READY", "sometimes", 1);
    assert_int_equal(snap_ctx_open(&cfg, &bad, &err), WP_ECONFIG);
    assert_non_null(strstr(err.msg, "status-fd or poll"));
    unsetenv("WARMPOOL_CRIU_LAZY_READY");
    snap_template_free(t);
    th_snap_close(&s);
}

static void hung_dump_is_killed_and_cleaned(void **state)
{
    struct th_snap s;
    struct snap_sandbox *sb;
    struct wp_err err;
    char flag[600], path[900];
    (void)state;

    assert_int_equal(th_snap_open(&s), 0);
    struct snap_ctx *ctx = hang_ctx(&s, "dump", flag, sizeof(flag));
    struct snap_template *t = th_template(COUNTER, s.rootfs);
    assert_int_equal(wp_write_file(flag, "", 0, 0644, NULL), 0);
    assert_int_equal(snap_boot(ctx, t, "dumped-1", NULL, NULL, &sb, &err), 0);
    pid_t init = sb->init_pid;
    uint64_t t0 = wp_now_ns();
    int rc = snap_checkpoint(ctx, sb, t, "img", 0, NULL, &err);
    double secs = (double)(wp_now_ns() - t0) / 1e9;
    print_message("# dump: %.2f s: %s\n", secs, err.msg);
    assert_int_equal(rc, WP_ECRIU);
    assert_true(secs >= 2 && secs < 8);
    assert_non_null(strstr(err.msg, "criu dump did not finish within 2 s"));
    assert_non_null(strstr(err.msg, "img.dump-failed.log"));
    /* No image, no half-made one, no sandbox, no hung criu. */
    snprintf(path, sizeof(path), "%s/images/img", s.state);
    assert_int_not_equal(access(path, F_OK), 0);
    snprintf(path, sizeof(path), "%s/images/img.partial", s.state);
    assert_int_not_equal(access(path, F_OK), 0);
    assert_true(th_sandbox_gone(&s, "dumped-1", init));
    assert_int_equal(count_hung(), 0);

    /* The same context checkpoints once criu behaves. */
    unlink(flag);
    assert_int_equal(snap_boot(ctx, t, NULL, NULL, NULL, &sb, &err), 0);
    assert_int_equal(snap_checkpoint(ctx, sb, t, "img", 0, NULL, &err), 0);
    snap_template_free(t);
    snap_ctx_close(ctx);
    th_snap_close(&s);
}

/* criu off (the probe found no mode, or the operator said so): checkpoint
 * and restore refuse at once with the reason; boots still work. */
static void criu_off_refuses_at_once(void **state)
{
    struct th_snap s;
    struct snap_sandbox *sb;
    struct wp_err err;
    (void)state;

    assert_int_equal(th_snap_open(&s), 0);
    struct snap_config cfg = { .state_dir = s.state, .criu_mode = "none" };
    struct snap_ctx *ctx;
    assert_int_equal(snap_ctx_open(&cfg, &ctx, &err), 0);
    assert_int_equal(snap_ctx_criu(ctx)->mode, SNAP_CRIU_NONE);
    struct snap_template *t = th_template(COUNTER, s.rootfs);
    assert_int_equal(snap_boot(ctx, t, "cold-1", NULL, NULL, &sb, &err), 0);
    pid_t init = sb->init_pid;
    assert_int_equal(snap_checkpoint(ctx, sb, t, "img", 0, NULL, &err), WP_ECRIU);
    assert_non_null(strstr(err.msg, "criu does not work on this host"));
    assert_true(th_sandbox_gone(&s, "cold-1", init));
    assert_int_equal(snap_restore(ctx, "img", NULL, &sb, &err), WP_ECRIU);
    /* A bad mode is a configuration error that names the choices. */
    struct snap_ctx *bad;
    cfg.criu_mode = "sometimes";
    assert_int_equal(snap_ctx_open(&cfg, &bad, &err), WP_ECONFIG);
    assert_non_null(strstr(err.msg, "no-breakpoints"));
    snap_template_free(t);
    snap_ctx_close(ctx);
    th_snap_close(&s);
}

/* The build dir this test runs from (…/build/tests/integration/x). */
static void build_dir(char *out, size_t cap)
{
    char exe[600];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    assert_true(n > 0);
    exe[n] = '\0';
    for (int i = 0; i < 3; i++)
        *strrchr(exe, '/') = '\0';
    snprintf(out, cap, "%s", exe);
}

/* The checkout holding it (build/ or build/asan/ under it). */
static void repo_root(char *out, size_t cap)
{
    char probe[700];
    build_dir(out, cap);
    for (char *slash; (slash = strrchr(out, '/'));) {
        *slash = '\0';
        snprintf(probe, sizeof(probe), "%s/tests/run.sh", out);
        if (access(probe, F_OK) == 0)
            return;
    }
    fail_msg("no tests/run.sh above the build dir");
}

/* `warmpool doctor`: every item with a verdict; this host serves. With a
 * criu that works in no mode it still serves (cold boots), and says so. */
static void doctor_reports_each_item(void **state)
{
    char build[600], out[8192];
    (void)state;
    build_dir(build, sizeof(build));
    int rc = th_sh(out, sizeof(out), "%s/warmpool doctor", build);
    print_message("%s", out);
    assert_int_equal(rc, 0);
    static const char *const items[] = { "root", "criu", "userfaultfd", "cgroups", "overlayfs",
                                         "user namespaces", "seccomp", "nftables", "ksm", "/run",
                                         "open files" };
    for (size_t i = 0; i < sizeof(items) / sizeof(items[0]); i++) {
        char want[64];
        snprintf(want, sizeof(want), " %-16s ", items[i]);
        assert_non_null(strstr(out, want));
    }
    assert_non_null(strstr(out, "ok    criu"));
    assert_non_null(strstr(out, "this host can serve"));

    const char *broken = standin("doctor-broken", "[ \"$1\" = dump ] && exit 3");
    rc = th_sh(out, sizeof(out), "%s/warmpool doctor --criu %s --probe-cache '' --probe-timeout 1",
               build, broken);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "warn  criu"));
    assert_non_null(strstr(out, "no mode works"));
    assert_non_null(strstr(out, "boots every sandbox cold"));
    assert_non_null(strstr(out, "fix: "));
    assert_non_null(strstr(out, "can serve, degraded"));
    /* Bad input: a clear error, exit 2. */
    rc = th_sh(out, sizeof(out), "%s/warmpool doctor --probe-timeout soon 2>&1", build);
    assert_int_equal(rc, 2);
}

/* The suite itself stops at once, with the reason on one line, where no
 * criu mode works (a build dir whose warmpool-snap says so). */
static void suite_fails_fast_without_criu(void **state)
{
    char root[600], fake[700], out[4096], path[800];
    (void)state;
    repo_root(root, sizeof(root));
    snprintf(fake, sizeof(fake), "%s/fakebuild", dir);
    snprintf(path, sizeof(path), "%s/tests/unit", fake);
    assert_int_equal(wp_mkdir_p(path, 0755, NULL), 0);
    /* A test that would hang: it must never run. */
    snprintf(path, sizeof(path), "%s/tests/unit/test_hang", fake);
    char hang[64];
    int hl = snprintf(hang, sizeof(hang), "#!/bin/sh\nexec sleep %d\n", hang_secs());
    assert_int_equal(wp_write_file(path, hang, (size_t)hl, 0755, NULL), 0);
    snprintf(path, sizeof(path), "%s/warmpool-snap", fake);
    const char *snap = "#!/bin/sh\necho '{\"mode\":\"none\",\"why\":\"default mode: dump hung; "
                       "no-breakpoints mode: dump hung\"}'\nexit 1\n";
    assert_int_equal(wp_write_file(path, snap, strlen(snap), 0755, NULL), 0);
    uint64_t t0 = wp_now_ns();
    int rc = th_sh(out, sizeof(out), "cd %s && bash tests/run.sh %s", root, fake);
    assert_true((double)(wp_now_ns() - t0) / 1e9 < 30);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "not ok - criu does not work on this host: default mode: dump "
                                "hung; no-breakpoints mode: dump hung\n"));
    assert_non_null(strstr(out, "0 passed, 1 failed"));
    assert_int_equal(count_hung(), 0);

    /* A suite that skips as root is a failure, not a quiet nothing. */
    snprintf(path, sizeof(path), "%s/warmpool-snap", fake);
    unlink(path);
    snprintf(path, sizeof(path), "%s/tests/unit/test_hang", fake);
    const char *skipper = "#!/bin/sh\necho '1..0 # SKIP needs root'\n";
    assert_int_equal(wp_write_file(path, skipper, strlen(skipper), 0755, NULL), 0);
    rc = th_sh(out, sizeof(out), "cd %s && bash tests/run.sh %s", root, fake);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "not ok - unit/test_hang skipped 1 time(s) as root"));
    assert_non_null(strstr(out, "0 passed, 1 failed"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(decision_follows_what_works),
        cmocka_unit_test(answer_is_cached_per_key),
        cmocka_unit_test(real_criu_on_this_machine),
        cmocka_unit_test(hung_restore_is_killed_and_cleaned),
        cmocka_unit_test(hung_dump_is_killed_and_cleaned),
        cmocka_unit_test(lazy_daemon_that_never_listens),
        cmocka_unit_test(criu_off_refuses_at_once),
        cmocka_unit_test(doctor_reports_each_item),
        cmocka_unit_test(suite_fails_fast_without_criu),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
