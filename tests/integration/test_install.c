/* test_install.c - warmpool as a server one installs: `make install
 * DESTDIR=` lays out the expected files, its systemd units pass
 * `systemd-analyze verify`, the config files it installs (every option
 * commented) parse with every option switched on, the node's old JSON is
 * still read with a warning, and the Debian package builds lintian-clean,
 * installs (user, vault key, doctor) and purges in a throwaway root. Runs
 * make in the tree: only for the default build dir (another would rebuild
 * it with other flags). */
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/testlib.h"
#include "lib/sched_testlib.h"
#include "base/err.h"
#include "base/fs.h"

static char *DIR_;
static char DEST[1100];

static const char *const expected[] = {
    "etc/warmpool/node.conf",
    "etc/warmpool/scheduler.conf",
    "lib/systemd/system/warmpool-node.service",
    "lib/systemd/system/warmpool-scheduler.service",
    "opt/warmpool/bin/warmpool",
    "opt/warmpool/bin/warmpool-egress",
    "opt/warmpool/bin/warmpool-hands",
    "opt/warmpool/bin/warmpool-node",
    "opt/warmpool/bin/warmpool-scheduler",
    "opt/warmpool/bin/warmpool-snap",
    "opt/warmpool/share/doc/warmpool/ARCHITECTURE.md",
    "opt/warmpool/share/doc/warmpool/README.md",
    "opt/warmpool/share/warmpool/grafana/warmpool.json",
    "opt/warmpool/share/warmpool/node.conf",
    "opt/warmpool/share/warmpool/postinstall.sh",
    "opt/warmpool/share/warmpool/prometheus/prometheus.yml",
    "opt/warmpool/share/warmpool/prometheus/warmpool-rules.yml",
    "opt/warmpool/share/warmpool/proxy/haproxy.cfg",
    "opt/warmpool/share/warmpool/proxy/nginx.conf",
    "opt/warmpool/share/warmpool/redis-warmpool.conf",
    "opt/warmpool/share/warmpool/relay-certs.sh",
    "opt/warmpool/share/warmpool/scheduler.conf",
};

static int group_setup(void **state)
{
    (void)state;
    DIR_ = th_tmpdir("install");
    snprintf(DEST, sizeof(DEST), "%s/dest", DIR_);
    return DIR_ ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    th_rmtree(DIR_);
    free(DIR_);
    return 0;
}

static bool default_build(void)
{
    char a[4096], b[4096];
    return realpath(th_build_dir(), a) && realpath("build", b) && strcmp(a, b) == 0;
}

static void make_install_lays_out_files(void **state)
{
    static char out[1 << 16];
    (void)state;
    if (th_sh(out, sizeof(out), "make -s install DESTDIR=%s 2>&1", DEST) != 0)
        fail_msg("make install: %s", out);
    assert_int_equal(th_sh(out, sizeof(out), "cd %s && find . -type f | sed 's|^\\./||' | LC_ALL=C sort", DEST), 0);
    char want[4096] = "";
    for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++) {
        strcat(want, expected[i]);
        strcat(want, "\n");
    }
    assert_string_equal(out, want);
    /* Modes: config readable by root and the scheduler's group only. */
    struct stat st;
    char p[1300];
    snprintf(p, sizeof(p), "%s/etc/warmpool/scheduler.conf", DEST);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    snprintf(p, sizeof(p), "%s/etc/warmpool", DEST);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0750);
    /* Units: PREFIX filled in, the scheduler not root, and systemd accepts
     * both (ExecStart pointed at the staged binaries for the check). */
    assert_int_equal(th_sh(out, sizeof(out), "grep -c '@PREFIX@' %s/lib/systemd/system/*.service | "
                                             "grep -v ':0$' || true", DEST), 0);
    assert_string_equal(out, "");
    assert_int_equal(th_sh(out, sizeof(out), "grep -h '^ExecStart=\\|^User=' %s/lib/systemd/system/*.service", DEST), 0);
    assert_non_null(strstr(out, "ExecStart=/opt/warmpool/bin/warmpool-node --config /etc/warmpool/node.conf"));
    assert_non_null(strstr(out, "ExecStart=/opt/warmpool/bin/warmpool-scheduler --config /etc/warmpool/scheduler.conf"));
    assert_non_null(strstr(out, "User=warmpool"));
    if (th_sh(out, sizeof(out), "command -v systemd-analyze") != 0)
        fail_msg("systemd-analyze is missing (deploy/install-deps.sh installs systemd)");
    int rc = th_sh(out, sizeof(out),
                   "mkdir -p %s/units && for u in %s/lib/systemd/system/*.service; do "
                   "sed 's|/opt/warmpool/bin|%s/opt/warmpool/bin|' $u > %s/units/$(basename $u); done && "
                   "systemd-analyze verify %s/units/*.service 2>&1",
                   DIR_, DEST, DEST, DIR_, DIR_);
    if (rc != 0 || out[0])
        fail_msg("systemd-analyze verify: %s", out);
}

/* The installed config files with every option switched on parse; a
 * mistake names its file and line; the node's JSON of earlier releases is
 * read with a warning. */
static void config_files_parse(void **state)
{
    static char out[1 << 14];
    char tmpl[1200];
    struct wp_err err;
    (void)state;

    snprintf(tmpl, sizeof(tmpl), "%s/env.json", DIR_);
    assert_int_equal(wp_write_file(tmpl, "{}", 2, 0644, &err), 0);
    /* Every "#option value" line uncommented (worker mode left out: it
     * needs an environment key). */
    assert_int_equal(th_sh(out, sizeof(out),
                           "grep -E '^#[a-z-]+( |$)' deploy/etc/node.conf | "
                           "grep -vE '^#(worker|control-plane|environment)' | sed 's/^#//' | "
                           "sed 's|^env .*|env %s:1:2|' > %s/node.conf && wc -l < %s/node.conf",
                           tmpl, DIR_, DIR_), 0);
    int nlines = atoi(out);
    print_message("# node.conf: %d options on\n", nlines);
    assert_true(nlines >= 20);
    if (th_sh(out, sizeof(out), "%s/warmpool-node --config %s/node.conf --help 2>&1 >/dev/null",
              th_build_dir(), DIR_) != 0)
        fail_msg("node.conf: %s", out);
    assert_int_equal(th_sh(out, sizeof(out),
                           "grep -E '^#[a-z-]+( |$)' deploy/etc/scheduler.conf | sed 's/^#//' > %s/s.conf "
                           "&& wc -l < %s/s.conf", DIR_, DIR_), 0);
    nlines = atoi(out);
    print_message("# scheduler.conf: %d options on\n", nlines);
    assert_true(nlines >= 40);
    if (th_sh(out, sizeof(out), "%s/warmpool-scheduler --config %s/s.conf --help 2>&1 >/dev/null",
              th_build_dir(), DIR_) != 0)
        fail_msg("scheduler.conf: %s", out);
    /* Every option of --help is in the node's file. */
    assert_int_equal(th_sh(out, sizeof(out),
                           "%s/warmpool-node --help | grep -oE '^  --[a-z-]+' | sed 's/^  --//' | "
                           "grep -vxE 'config|help' | while read o; do "
                           "grep -qE \"^#$o( |$)\" deploy/etc/node.conf || echo $o; done",
                           th_build_dir()), 0);
    if (out[0])
        fail_msg("node options missing from deploy/etc/node.conf: %s", out);
    /* A mistake: file and line named, nothing started. */
    assert_int_equal(th_sh(out, sizeof(out), "printf 'redis 127.0.0.1:1\\n\\nbogus 3\\n' > %s/bad.conf && "
                                             "%s/warmpool-node --config %s/bad.conf 2>&1", DIR_,
                           th_build_dir(), DIR_), 2);
    assert_non_null(strstr(out, "bad.conf:3: unknown option \"bogus\""));
    assert_int_equal(th_sh(out, sizeof(out), "printf 'multi-tenant maybe\\n' > %s/bad2.conf && "
                                             "%s/warmpool-node --config %s/bad2.conf 2>&1", DIR_,
                           th_build_dir(), DIR_), 2);
    assert_non_null(strstr(out, "multi-tenant is a switch"));
    /* The JSON of earlier releases: read, with a warning. */
    assert_int_equal(th_sh(out, sizeof(out),
                           "printf '{\"redis\":\"127.0.0.1:7\",\"envs\":[\"%s:1:1\"],\"multi_tenant\":true}' "
                           "> %s/old.json && %s/warmpool-node --config %s/old.json --help 2>&1 >/dev/null",
                           tmpl, DIR_, th_build_dir(), DIR_), 0);
    assert_non_null(strstr(out, "JSON config file is deprecated"));
}

static void deb_builds_installs_and_purges(void **state)
{
    static char out[1 << 16];
    (void)state;
    if (th_sh(out, sizeof(out), "command -v dpkg-deb") != 0)
        fail_msg("dpkg-deb is missing (Debian's dpkg)");
    if (th_sh(out, sizeof(out), "deploy/debian/build-deb.sh build 2>&1 | grep -v \"root privileges\"") != 0)
        fail_msg("build-deb: %s", out);
    char *d = strstr(out, "deb: ");
    assert_non_null(d);
    char deb[512];
    snprintf(deb, sizeof(deb), "%.*s", (int)strcspn(d + 5, "\n"), d + 5);
    /* lintian (when installed): nothing left but what the overrides
     * explain. */
    if (strstr(out, "\nE: ") || strstr(out, "\nW: ") || !strncmp(out, "E: ", 3) || !strncmp(out, "W: ", 3))
        fail_msg("lintian: %s", out);
    static char list[1 << 16];
    assert_int_equal(th_sh(list, sizeof(list), "dpkg -c %s", deb), 0);
    for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++)
        if (!strstr(list, expected[i]))
            fail_msg("the package lacks %s", expected[i]);
    assert_non_null(strstr(list, "./usr/share/doc/warmpool/copyright"));
    assert_non_null(strstr(list, "./usr/bin/warmpool -> /opt/warmpool/bin/warmpool"));
    assert_int_equal(th_sh(out, sizeof(out), "dpkg-deb -f %s Package Depends", deb), 0);
    assert_non_null(strstr(out, "libhiredis"));
    assert_non_null(strstr(out, "libev4"));
    assert_int_equal(th_sh(out, sizeof(out), "dpkg-deb -I %s conffiles", deb), 0);
    assert_non_null(strstr(out, "/etc/warmpool/scheduler.conf"));
    assert_non_null(strstr(out, "/etc/warmpool/node.conf"));
    /* Install and purge in a throwaway root (the host is untouched). */
    char root[1200];
    snprintf(root, sizeof(root), "%s/chroot", DIR_);
    if (th_sh(out, sizeof(out), "tests/integration/install_chroot.sh %s %s 2>&1", deb, root) != 0)
        fail_msg("install in a root: %s", out);
    print_message("%s", out);
    assert_non_null(strstr(out, "installed: install ok installed"));
    assert_non_null(strstr(out, "user: warmpool:/nonexistent:/usr/sbin/nologin"));
    assert_non_null(strstr(out, "etc: 750 root:warmpool"));
    assert_non_null(strstr(out, "vault.key: 640 root:warmpool 64 hex"));
    assert_non_null(strstr(out, "scheduler.conf: 640 root:warmpool"));
    assert_non_null(strstr(out, "doctor: ran at install"));
    assert_non_null(strstr(out, "bin: warmpool-scheduler"));
    /* Purged: only the vault key stays (stored credentials need it). */
    assert_non_null(strstr(out, "after purge: etc/warmpool\netc/warmpool/vault.key\n"));
}

int main(void)
{
    if (geteuid() != 0) {
        printf("1..0 # SKIP needs root (mount namespace, chroot)\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(config_files_parse),
        cmocka_unit_test(make_install_lays_out_files),
        cmocka_unit_test(deb_builds_installs_and_purges),
    };
    /* `make install` and the package take the default build's binaries
     * (build/): another build dir (the ASan run) checks its config parsers
     * only, rather than packaging or rebuilding what it did not test. */
    size_t n = default_build() ? 3 : 1;
    if (n == 1)
        printf("# %s: config files only; install and .deb are checked with build/\n", th_build_dir());
    return _cmocka_run_group_tests("tests", tests, n, group_setup, group_teardown);
}
