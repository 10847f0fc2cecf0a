/* doctor.c - `warmpool doctor`: what a host needs to run a node, checked
 * one item at a time, each with ok / warn / FAIL and the fix. An operator
 * runs it on a new host before anything else (install-deps does too).
 * Exit status: 0 when the host can serve (warnings are degraded modes the
 * node copes with: cold boots only, eager restores only...), 1 when not.
 * Needs no Redis: it looks at this machine only. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/magic.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "pool/pool_int.h"
#include "snapshot/snapshot.h"

enum verdict { OK, WARN, FAIL };
static const char *const verdict_names[] = { "ok", "warn", "FAIL" };

struct doctor {
    int fails, warns;
};

static void item(struct doctor *d, enum verdict v, const char *what, const char *fix,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void item(struct doctor *d, enum verdict v, const char *what, const char *fix,
                 const char *fmt, ...)
{
    va_list ap;

    printf("%-5s %-16s ", verdict_names[v], what);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    if (v != OK && fix)
        printf("      %-16s fix: %s\n", "", fix);
    d->fails += v == FAIL;
    d->warns += v == WARN;
}

static bool file_has(const char *path, const char *needle)
{
    char *data = NULL;
    size_t len;
    bool found = false;
    if (wp_read_file(path, 1 << 20, &data, &len, NULL) == 0)
        found = strstr(data, needle) != NULL;
    free(data);
    return found;
}

static long read_long(const char *path, long dflt)
{
    char *data = NULL;
    size_t len;
    long v = dflt;
    if (wp_read_file(path, 4096, &data, &len, NULL) == 0)
        v = strtol(data, NULL, 10);
    free(data);
    return v;
}

static void check_criu(struct doctor *d, const char *criu, const char *cache, bool reprobe,
                       double deadline)
{
    struct snap_probe_config pc = { .criu_bin = criu, .cache_dir = cache, .force = reprobe,
                                    .deadline_s = deadline };
    struct snap_probe p;
    struct wp_err err;

    if (snap_criu_probe(&pc, &p, &err) < 0) {
        item(d, WARN, "criu", "run `make deps` (deploy/install-deps.sh): it installs a criu that works on this kernel",
             "%s; the node would boot every sandbox cold", err.msg);
        return;
    }
    const char *src = p.cached ? "cached probe" : "probed now";
    if (p.mode == SNAP_CRIU_DEFAULT)
        item(d, OK, "criu", NULL, "dump and restore work (%s; dump %.0f ms, restore %.0f ms)", src,
             p.dump_ms, p.restore_ms);
    else if (p.mode == SNAP_CRIU_NOBP)
        item(d, OK, "criu", NULL,
             "works without hardware breakpoints only; every criu run gets CRIU_FAULT=130 (%s): %s",
             src, p.why);
    else
        item(d, WARN, "criu",
             "read the logs named above; `warmpool-snap probe --reprobe` after a criu or kernel change",
             "no mode works (%s): %s; the node boots every sandbox cold", src, p.why);
    if (p.mode != SNAP_CRIU_NONE && !p.lazy_ok)
        item(d, WARN, "lazy pages", "check userfaultfd (below) and the lazy-restore log",
             "lazy restores fail here; the node restores eagerly: %s", p.why);
}

/* What a refill costs hangs on THP (pool/thp.c). */
static void check_thp(struct doctor *d)
{
    enum pool__thp m = pool__thp_mode();
    if (m == POOL_THP_ALWAYS)
        item(d, OK, "thp", NULL, "always: hot refills are eager restores (the cheaper ones here)");
    else
        item(d, WARN, "thp", "--thp always (node.conf: `thp always`) sets it while the node runs",
             "%s: hot refills are lazy restores; with THP \"always\" eager ones cost ~0.75x "
             "their CPU (a 200 MB clone, bench/results/clonecpu.md)",
             pool__thp_name(m));
}

/* Memory given back to the hypervisor is faulted in again by the next
 * clone (pool/fpr.c). */
static void check_fpr(struct doctor *d)
{
    enum pool__fpr s = pool__fpr_state();
    if (s == POOL_FPR_NONE)
        item(d, OK, "page reporting", NULL, "no balloon reports free pages here");
    else if (s == POOL_FPR_OFF)
        item(d, OK, "page reporting", NULL, "off: freed memory stays with this machine");
    else
        item(d, WARN, "page reporting",
             "--free-page-reporting off (node.conf: `free-page-reporting off`) keeps it "
             "while the node runs",
             "on: memory freed here goes back to the hypervisor within seconds, and a clone "
             "restored into it faults it in on the host too (a 200 MB clone after 3 s idle: "
             "150 ms p50, 451 p95, against 100 and 124 with it off; bench/results/clonecpu.md)");
}

static void check_uffd(struct doctor *d)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0) {
        close(fd);
        item(d, OK, "userfaultfd", NULL, "available (lazy restores)");
        /* criu opens it from the restored task, inside the sandbox's user
         * namespace: without the sysctl only host root may (snapshot/userns.c). */
        if (read_long("/proc/sys/vm/unprivileged_userfaultfd", 0) != 1)
            item(d, WARN, "lazy in userns",
                 "deploy/install-deps.sh sets vm.unprivileged_userfaultfd=1 in /etc/sysctl.d "
                 "(a host-wide trade-off: every host user may then handle kernel page faults; "
                 "sandboxed code still may not, its seccomp filter denies userfaultfd)",
                 "criu opens userfaultfd from the restored task, inside the sandbox's user "
                 "namespace: lazy restores go eager");
    } else {
        item(d, WARN, "userfaultfd", "a kernel with CONFIG_USERFAULTFD=y",
             "userfaultfd(): %s; lazy restores go eager", strerror(errno));
    }
}

static void check_cgroups(struct doctor *d)
{
    struct statfs sf;
    if (statfs("/sys/fs/cgroup", &sf) < 0) {
        item(d, FAIL, "cgroups", "mount cgroup2 on /sys/fs/cgroup (or the v1 hierarchies)",
             "/sys/fs/cgroup: %s", strerror(errno));
        return;
    }
    if (sf.f_type == CGROUP2_SUPER_MAGIC) {
        bool mem = file_has("/sys/fs/cgroup/cgroup.controllers", "memory");
        bool pids = file_has("/sys/fs/cgroup/cgroup.controllers", "pids");
        bool cpu = file_has("/sys/fs/cgroup/cgroup.controllers", "cpu");
        item(d, mem && pids ? OK : FAIL, "cgroups",
             "enable the memory and pids controllers (cgroup_enable=memory on the kernel command line)",
             "v2; controllers: memory %s, pids %s, cpu %s", mem ? "yes" : "NO",
             pids ? "yes" : "NO", cpu ? "yes" : "no (no CPU limits)");
        return;
    }
    struct stat st;
    bool mem = stat("/sys/fs/cgroup/memory/cgroup.procs", &st) == 0;
    bool pids = stat("/sys/fs/cgroup/pids/cgroup.procs", &st) == 0;
    bool cpu = stat("/sys/fs/cgroup/cpu/cgroup.procs", &st) == 0 ||
               stat("/sys/fs/cgroup/cpu,cpuacct/cgroup.procs", &st) == 0;
    bool dev = stat("/sys/fs/cgroup/devices/cgroup.procs", &st) == 0;
    /* No devices hierarchy, no device allow-list: the node refuses to
     * boot sandboxes unless run with --insecure-allow-unconfined. */
    item(d, mem && pids && dev ? OK : FAIL, "cgroups",
         "mount the v1 memory, pids and devices hierarchies under /sys/fs/cgroup (or boot with "
         "cgroup v2)",
         "v1; hierarchies: memory %s, pids %s, cpu %s, devices %s", mem ? "yes" : "NO",
         pids ? "yes" : "NO", cpu ? "yes" : "no (no CPU limits)",
         dev ? "yes" : "NO (no device allow-list)");
}

static void check_overlay(struct doctor *d)
{
    if (file_has("/proc/filesystems", "\toverlay\n"))
        item(d, OK, "overlayfs", NULL, "available");
    else
        item(d, FAIL, "overlayfs", "modprobe overlay (CONFIG_OVERLAY_FS)",
             "not in /proc/filesystems: sandboxes need an overlay root");
}

/* A user namespace made in a child: the sandbox's root maps into one. */
static void check_userns(struct doctor *d)
{
    long max = read_long("/proc/sys/user/max_user_namespaces", -1);
    pid_t pid = fork();
    if (pid == 0)
        _exit(unshare(CLONE_NEWUSER) == 0 ? 0 : 1);
    int status = 0;
    bool ok = pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
              WEXITSTATUS(status) == 0;
    if (ok && max != 0)
        item(d, OK, "user namespaces", NULL, "available (max_user_namespaces %ld)", max);
    else
        item(d, FAIL, "user namespaces",
             "sysctl user.max_user_namespaces=15000 (and CONFIG_USER_NS=y); or run the node with "
             "--insecure-allow-unconfined (sandboxes then run as the host's root)",
             "cannot create one (max_user_namespaces %ld): sandboxes cannot map root to an "
             "unprivileged range, and the node refuses to start",
             max);
}

static void check_seccomp(struct doctor *d)
{
    if (prctl(PR_GET_SECCOMP, 0, 0, 0, 0) >= 0 &&
        access("/proc/sys/kernel/seccomp/actions_avail", R_OK) == 0)
        item(d, OK, "seccomp", NULL, "filters available");
    else
        item(d, FAIL, "seccomp", "a kernel with CONFIG_SECCOMP_FILTER=y",
             "no seccomp filters: sandboxes cannot be confined, the node refuses to boot them "
             "(unless run with --insecure-allow-unconfined)");
}

static bool in_path(const char *prog)
{
    const char *path = getenv("PATH");
    char buf[512];
    if (!path || !*path)
        path = "/usr/sbin:/usr/bin:/sbin:/bin";
    for (const char *p = path; *p;) {
        size_t l = strcspn(p, ":");
        snprintf(buf, sizeof(buf), "%.*s/%s", (int)l, p, prog);
        if (access(buf, X_OK) == 0)
            return true;
        p += l + (p[l] == ':');
    }
    return false;
}

static void check_nft(struct doctor *d)
{
    if (in_path("nft"))
        item(d, OK, "nftables", NULL, "nft found (networked environments)");
    else
        item(d, WARN, "nftables", "apt-get install nftables",
             "nft not found: environments with networking cannot be set up");
}

static void check_ksm(struct doctor *d)
{
    if (access("/sys/kernel/mm/ksm/run", W_OK) == 0)
        item(d, OK, "ksm", NULL, "available (run=%ld)", read_long("/sys/kernel/mm/ksm/run", 0));
    else
        item(d, WARN, "ksm", "a kernel with CONFIG_KSM=y",
             "/sys/kernel/mm/ksm/run not writable: environments with \"ksm\" run unmerged");
}

static void check_run(struct doctor *d)
{
    struct statfs sf;
    if (statfs("/run", &sf) == 0 && sf.f_type == TMPFS_MAGIC)
        item(d, OK, "/run", NULL, "tmpfs (criu keeps its kernel-feature cache there)");
    else
        item(d, WARN, "/run", "mount -t tmpfs tmpfs /run (deploy/install-deps.sh does)",
             "not a tmpfs: criu probes the kernel on every call (~30 ms more per restore)");
}

static void check_rlimit(struct doctor *d)
{
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= 8192)
        item(d, OK, "open files", NULL, "hard limit %llu", (unsigned long long)rl.rlim_max);
    else
        item(d, WARN, "open files", "raise the hard RLIMIT_NOFILE (LimitNOFILE= in the unit)",
             "hard limit %llu: a busy node holds several fds per sandbox",
             (unsigned long long)rl.rlim_max);
}

static const char doctor_usage[] =
    "usage: warmpool doctor [--criu PATH] [--reprobe] [--probe-timeout S] [--probe-cache DIR]\n"
    "  checks what a warmpool node needs on this host, with the fix for each item;\n"
    "  exit 0 when the host can serve, 1 when it cannot\n";

int pool__doctor(int argc, char **argv)
{
    static const struct option lo[] = {
        { "criu", required_argument, NULL, 'c' },       { "reprobe", no_argument, NULL, 'R' },
        { "probe-timeout", required_argument, NULL, 'p' }, { "probe-cache", required_argument, NULL, 'C' },
        { "help", no_argument, NULL, 'h' },             { NULL, 0, NULL, 0 },
    };
    const char *criu = getenv("WARMPOOL_CRIU"), *cache = getenv("WARMPOOL_CRIU_CACHE");
    bool reprobe = false;
    double deadline = 0;
    struct doctor d = { 0 };
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case 'c': criu = optarg; break;
        case 'R': reprobe = true; break;
        case 'C': cache = optarg; break;
        case 'p': {
            char *end;
            deadline = strtod(optarg, &end);
            if (*end || !(deadline > 0 && deadline <= 600)) {
                fprintf(stderr, "warmpool doctor: --probe-timeout wants 0..600 seconds\n");
                return 2;
            }
            break;
        }
        case 'h': fputs(doctor_usage, stdout); return 0;
        default: fputs(doctor_usage, stderr); return 2;
        }
    }
    if (optind < argc) {
        fputs(doctor_usage, stderr);
        return 2;
    }
    if (geteuid() != 0)
        item(&d, FAIL, "root", "run the node (and this check) as root", "running as uid %d",
             (int)geteuid());
    else
        item(&d, OK, "root", NULL, "yes");
    check_criu(&d, criu, cache, reprobe, deadline);
    check_uffd(&d);
    check_thp(&d);
    check_fpr(&d);
    check_cgroups(&d);
    check_overlay(&d);
    check_userns(&d);
    check_seccomp(&d);
    check_nft(&d);
    check_ksm(&d);
    check_run(&d);
    check_rlimit(&d);
    printf("%s: %d failed, %d warnings\n",
           d.fails ? "this host cannot serve" : d.warns ? "this host can serve, degraded"
                                                          : "this host can serve",
           d.fails, d.warns);
    return d.fails ? 1 : 0;
}
