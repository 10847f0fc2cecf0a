/* clonecpu_bench.c - what one clone of the 200 MB Python environment
 * costs in CPU to make (issue 20: capacity is bounded by it).
 *
 * One image of PYTHON200_TEMPLATE; then --runs rounds, each one restore of
 * every variant in turn (interleaved, so the shared machine's load falls
 * on all alike): eager; lazy as before issue 20 (the helper polled /proc
 * until the lazy-pages daemon listened); lazy as now (it waits on the
 * daemon's --status-fd); the same with criu's log at level 1 (errors only)
 * instead of 4; and eager and lazy again with the host's transparent huge
 * pages set to "always" for that restore (what `warmpool-node --thp always`
 * does; the mode found is put back after each). Each clone's CPU is split by
 * where it went, everything counted until all its memory is in:
 *   ours      this process (the restore's set-up: dirs, overlay, cgroups),
 *   helper    the restoring helper itself (fork, netns, cgroups, waits),
 *   criu      criu swrk (exec, start-up, mount and namespace set-up, fork),
 *   restored  the clone's own processes once all memory is in: criu's
 *             restorer runs in the task it becomes (eager: the page copy
 *             and the first-touch faults of every page),
 *   lazy      the lazy-pages daemon, read when it has exited (a zombie
 *             keeps its times): every page copied in by UFFDIO_COPY,
 *   destroy   the destroy, minus the reaped processes counted above.
 * Plus the floor of any criu run here: exec to exit of `criu --version`.
 * Writes clonecpu.{json,md}. */
#define WP_LOG_COMPONENT "bench"
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/timeutil.h"
#include "pool/pool_int.h"
#include "snapshot/snapshot.h"

#include "bench/bench_stats.h"

/* Host settings a row needs, set through the node's own code and put back
 * after the restore (saved files in a directory of the bench's own). */
static char hostdir[64] = "/tmp/wp-clonecpu-host-XXXXXX";

static void host_set(bool thp, bool fpr_off)
{
    struct wp_err err;
    if ((thp && pool__thp_enable(hostdir, &err) < 0) ||
        (fpr_off && pool__fpr_disable(hostdir, &err) < 0)) {
        fprintf(stderr, "clonecpu_bench: %s\n", err.msg);
        exit(1);
    }
}

static void host_put_back(void)
{
    pool__thp_recover(hostdir);
    pool__fpr_recover(hostdir);
}

static double tv_ms(struct timeval t)
{
    return (double)t.tv_sec * 1e3 + (double)t.tv_usec / 1e3;
}

static double rusage_ms(int who)
{
    struct rusage r;
    getrusage(who, &r);
    return tv_ms(r.ru_utime) + tv_ms(r.ru_stime);
}

/* CPU time of one process (a zombie too: its times stay until it is
 * reaped), ms: schedstat's runtime in ns (stat's ticks are 10 ms here);
 * *state gets its state letter ('?' when gone). */
static double pid_cpu_ms(pid_t pid, char *state)
{
    char path[64], buf[1024];
    unsigned long ut = 0, st = 0;
    unsigned long long ns = 0;

    snprintf(path, sizeof(path), "/proc/%d/schedstat", (int)pid);
    FILE *sf = fopen(path, "r");
    bool have_ns = sf && fscanf(sf, "%llu", &ns) == 1;
    if (sf)
        fclose(sf);

    *state = '?';
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t k = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[k] = '\0';
    char *p = strrchr(buf, ')');
    if (!p || sscanf(p + 2, "%c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", state, &ut,
                     &st) != 3)
        return 0;
    if (have_ns)
        return (double)ns / 1e6;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK) * 1e3;
}

/* utime + stime of the sandbox's processes but `skip`, ms. */
static double sandbox_cpu_ms(struct snap_ctx *ctx, const char *id, pid_t skip, int *nprocs)
{
    pid_t pids[256];
    struct wp_err err;
    int n = snap_sandbox_pids(ctx, id, pids, 256, &err);
    double ms = 0;
    char st;

    *nprocs = n > 0 ? n : 0;
    for (int i = 0; i < n; i++)
        if (pids[i] != skip)
            ms += pid_cpu_ms(pids[i], &st);
    return ms;
}

static void die(struct wp_err *err, const char *what)
{
    fprintf(stderr, "clonecpu_bench: %s: %s\n", what, err->msg);
    exit(1);
}

/* CPU of one `criu --version` run (exec, loader, libraries), ms. */
/* A criu run as before session 9, where the private criu is installed:
 * a shell wrapper that runs it through its loader with GnuTLS's load-time
 * set-up on (the old install's wrapper). NULL elsewhere. */
static const char *old_criu(const char *dir)
{
    static char path[600];
    const char *root = WP_PREFIX "/criu";
    char lib[300];
    snprintf(lib, sizeof(lib), "%s/usr/lib/x86_64-linux-gnu", root);
    if (access(root, X_OK) < 0)
        return NULL;
    snprintf(path, sizeof(path), "%s/clonecpu-old-criu.sh", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return NULL;
    fprintf(f, "#!/bin/sh\nunset GNUTLS_NO_IMPLICIT_INIT\nexec \"%s/ld-linux-x86-64.so.2\" "
               "--library-path \"%s\" \"%s/usr/sbin/criu\" \"$@\"\n", lib, lib, root);
    fclose(f);
    chmod(path, 0755);
    return path;
}

static double criu_floor_ms(const char *criu)
{
    double c0 = rusage_ms(RUSAGE_CHILDREN);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 1);
        dup2(fd, 2);
        execl(criu, criu, "--version", (char *)NULL);
        _exit(127);
    }
    if (pid > 0)
        waitpid(pid, NULL, 0);
    return rusage_ms(RUSAGE_CHILDREN) - c0;
}

#define NV 9
#define NS 9
enum { S_WALL, S_FULL, S_TOTAL, S_OURS, S_HELPER, S_CRIU, S_TASKS, S_LAZY, S_DESTROY };
static const char *sname[NS] = { "restored", "all_in", "total", "ours", "helper",
                                 "criu", "tasks", "lazy_daemon", "destroy" };

/* One clone of variant (lazy, ctx): its figures into s[]. */
static void one_clone(struct snap_ctx *ctx, bool lazy, struct series *s)
{
    struct snap_restore_opts ro = { .lazy = lazy };
    struct snap_sandbox *sb;
    struct wp_err err;
    char st;
    int np;

    double s0 = rusage_ms(RUSAGE_SELF);
    uint64_t t0 = wp_now_ns();
    if (snap_restore(ctx, "clonecpu-py200", &ro, &sb, &err) < 0)
        die(&err, "restore");
    double w = (double)(wp_now_ns() - t0) / 1e6;
    double ours = rusage_ms(RUSAGE_SELF) - s0;
    double lz = 0;
    /* All memory is in once the lazy-pages daemon has served every page
     * and exited; it stays a zombie (ours to reap) until the destroy. */
    if (sb->lazy_pid > 0)
        for (int k = 0; k < 5000; k++) {
            lz = pid_cpu_ms(sb->lazy_pid, &st);
            if (st == 'Z' || st == '?')
                break;
            usleep(500);
        }
    double full = (double)(wp_now_ns() - t0) / 1e6;
    double tk = sandbox_cpu_ms(ctx, sb->id, sb->lazy_pid, &np);
    pid_t lazy_pid = sb->lazy_pid;
    double helper = sb->helper_cpu_ms, criu = sb->criu_cpu_ms; /* destroy frees sb */
    double d0 = rusage_ms(RUSAGE_SELF) + rusage_ms(RUSAGE_CHILDREN);
    snap_destroy(ctx, sb, NULL);
    double d1 = rusage_ms(RUSAGE_SELF) + rusage_ms(RUSAGE_CHILDREN);
    /* The processes reaped at destroy add their whole life to ours. */
    double reaped = tk + (lazy_pid > 0 && (pid_cpu_ms(lazy_pid, &st), st == '?') ? lz : 0);
    double v[NS] = { w, full, 0, ours, helper, criu, tk, lz, d1 - d0 - reaped };
    v[S_TOTAL] = ours + helper + criu + tk + lz + v[S_DESTROY];
    for (int k = 0; k < NS; k++)
        add(&s[k], v[k]);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = { { "runs", required_argument, NULL, 'n' },
                                        { "out", required_argument, NULL, 'o' },
                                        { "state-dir", required_argument, NULL, 's' },
                                        { NULL, 0, NULL, 0 } };
    struct snap_config cfg = { .state_dir = "/var/lib/warmpool-bench" };
    const char *out = "bench/results";
    int runs = 10, c;
    struct wp_err err;
    struct snap_template *t;
    struct snap_sandbox *sb;
    struct utsname u;

    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (bench_std_opt(c, optarg, &runs, &out, &cfg.state_dir))
            continue;
        fprintf(stderr, "usage: clonecpu_bench [--runs N] [--out DIR] [--state-dir DIR]\n");
        return 2;
    }
    if (runs < 1 || runs > MAXR)
        runs = 10;
    wp_log_set_level("warn");
    /* One context per variant, on one state dir. */
    static const struct {
        const char *name;
        bool lazy, thp, poll, log1, old_criu, fpr_off;
        int idle_s; /* before the restore: freed memory is given back meanwhile */
    } V[NV] = {
        { "eager", false, false, false, false, false, false, 0 },
        { "lazy, before (wait: /proc poll)", true, false, true, false, false, false, 0 },
        { "lazy, after (wait: status fd)", true, false, false, false, false, false, 0 },
        { "lazy, after, criu log 1", true, false, false, true, false, false, 0 },
        { "eager, THP always", false, true, false, false, false, false, 0 },
        { "lazy, after, THP always", true, true, false, false, false, false, 0 },
        { "eager, THP always, criu as before session 9", false, true, false, false, true, false, 0 },
        { "eager, THP always, after 3 s idle", false, true, false, false, false, false, 3 },
        { "eager, THP always, after 3 s idle, page reporting off", false, true, false, false,
          false, true, 3 },
    };
    if (!mkdtemp(hostdir)) {
        perror("clonecpu_bench: mkdtemp");
        return 1;
    }
    bool has_thp = pool__thp_mode() != POOL_THP_UNKNOWN;
    enum pool__fpr fpr0 = pool__fpr_state();
    enum pool__thp thp0 = pool__thp_mode();
    if (!has_thp)
        fprintf(stderr, "clonecpu_bench: no THP here: the THP rows are the host's mode\n");
    struct snap_ctx *ctx[NV];
    for (int v = 0; v < NV; v++) {
        struct snap_config q = cfg;
        q.criu_log_level = V[v].log1 ? 1 : 4;
        q.lazy_ready_poll = V[v].poll;
        /* criu as it ran before session 9: a shell wrapper running the
         * private loader, GnuTLS set up at load. */
        if (V[v].old_criu &&
            (q.criu_bin = old_criu(cfg.state_dir ? cfg.state_dir : "/tmp")) == NULL)
            q.criu_bin = cfg.criu_bin;
        if (snap_ctx_open(&q, &ctx[v], &err) < 0)
            die(&err, "open");
    }
    if (!snap_ctx_criu(ctx[0])->lazy_ok)
        fprintf(stderr, "clonecpu_bench: lazy pages do not work here: the lazy rows are eager\n");
    if (snap_template_parse(PYTHON200_TEMPLATE, strlen(PYTHON200_TEMPLATE), &t, &err) < 0)
        die(&err, "template");
    snap_image_delete(ctx[0], "clonecpu-py200", NULL);
    if (snap_boot(ctx[0], t, NULL, NULL, NULL, &sb, &err) < 0)
        die(&err, "boot");
    if (snap_checkpoint(ctx[0], sb, t, "clonecpu-py200", sb->boot_ms, NULL, &err) < 0)
        die(&err, "checkpoint");
    uname(&u);

    const char *criu = getenv("WARMPOOL_CRIU") ? getenv("WARMPOOL_CRIU") : WP_PREFIX "/bin/criu";
    static struct series s[NV][NS];
    struct series floor = { "criu_floor" };
    for (int i = 0; i < runs; i++) {
        for (int v = 0; v < NV; v++) {
            host_set(V[v].thp && has_thp, V[v].fpr_off);
            if (V[v].idle_s)
                sleep((unsigned)V[v].idle_s);
            one_clone(ctx[v], V[v].lazy, s[v]);
            host_put_back();
        }
        add(&floor, criu_floor_ms(criu));
    }
    rmdir(hostdir);

    FILE *js, *md;
    if (bench_open_results(out, "clonecpu", &js, &md) < 0)
        return 1;
    double load[3] = { 0 };
    getloadavg(load, 3);
    fprintf(js, "{\"kernel\":\"%s\",\"cpus\":%ld,\"runs\":%d,\"load1\":%.2f,\"criu_floor_p50_ms\":%.1f,"
                "\"results\":[",
            u.release, sysconf(_SC_NPROCESSORS_ONLN), runs, load[0], pct(&floor, 50));
    fprintf(md, "# CPU per clone: the 200 MB Python environment\n\n"
                "Kernel %s, %ld CPUs, %d rounds, each one restore of every variant in turn, one at "
                "a time (medians, p95 in brackets; ms). Sandboxes run in a user namespace. Load "
                "average at the end: %.1f.\n\n"
                "`restored` is the wall time until the restore returns, `all in` until the "
                "lazy-pages daemon has served every page and exited (eager: the same). CPU (user + "
                "system) of everything that made the clone, split by process: `ours` the caller's "
                "set-up (dirs, overlay, cgroups), `helper` the restoring helper itself, `criu` criu "
                "swrk (exec, start-up, mounts, namespaces, fork), `restored` the clone's processes "
                "once all memory is in (criu's restorer runs in the task it becomes: eager, the "
                "page copy and every first-touch fault), `lazy daemon` `criu lazy-pages` (every "
                "page by UFFDIO_COPY), `destroy` the teardown. One `criu --version` (exec, loader, "
                "libraries: the floor of any criu run here) costs %.1f ms (p95 %.1f).\n\n"
                "| variant | restored | all in | CPU per clone | ours | helper | criu | restored "
                "| lazy daemon | destroy |\n|---|---|---|---|---|---|---|---|---|---|\n",
            u.release, sysconf(_SC_NPROCESSORS_ONLN), runs, load[0], pct(&floor, 50),
            pct(&floor, 95));
    for (int v = 0; v < NV; v++) {
        fprintf(js, "%s{\"variant\":\"%s\"", v ? "," : "", V[v].name);
        fprintf(md, "| %s |", V[v].name);
        for (int k = 0; k < NS; k++) {
            fprintf(js, ",\"%s_p50_ms\":%.1f,\"%s_p95_ms\":%.1f", sname[k], pct(&s[v][k], 50),
                    sname[k], pct(&s[v][k], 95));
            fprintf(md, " %.0f (%.0f) |", pct(&s[v][k], 50), pct(&s[v][k], 95));
        }
        fprintf(js, "}");
        fprintf(md, "\n");
        fprintf(stderr, "%s: restored %.0f ms, all in %.0f, CPU %.0f (ours %.0f helper %.0f criu %.0f "
                        "restored %.0f lazy %.0f destroy %.0f)\n",
                V[v].name, pct(&s[v][0], 50), pct(&s[v][1], 50), pct(&s[v][2], 50),
                pct(&s[v][3], 50), pct(&s[v][4], 50), pct(&s[v][5], 50), pct(&s[v][6], 50),
                pct(&s[v][7], 50), pct(&s[v][8], 50));
    }
    fprintf(md, "\nRatios to `lazy, before` (medians): after: CPU per clone x%.3f, helper x%.2f, "
                "restored x%.3f, all in x%.3f; after with criu log 1: CPU x%.3f; eager: CPU x%.2f.\n",
            pct(&s[2][S_TOTAL], 50) / pct(&s[1][S_TOTAL], 50),
            pct(&s[2][S_HELPER], 50) / pct(&s[1][S_HELPER], 50),
            pct(&s[2][S_WALL], 50) / pct(&s[1][S_WALL], 50),
            pct(&s[2][S_FULL], 50) / pct(&s[1][S_FULL], 50),
            pct(&s[3][S_TOTAL], 50) / pct(&s[1][S_TOTAL], 50),
            pct(&s[0][S_TOTAL], 50) / pct(&s[1][S_TOTAL], 50));
    fprintf(md, "\nHost THP before the run: %s. Under THP `always` (to `lazy, after` with the host's "
                "mode): eager CPU per clone x%.3f, all in x%.3f; lazy CPU x%.3f. Eager under THP "
                "`always` to eager without: CPU x%.3f.\n",
            pool__thp_name(thp0), pct(&s[4][S_TOTAL], 50) / pct(&s[2][S_TOTAL], 50),
            pct(&s[4][S_FULL], 50) / pct(&s[2][S_FULL], 50),
            pct(&s[5][S_TOTAL], 50) / pct(&s[2][S_TOTAL], 50),
            pct(&s[4][S_TOTAL], 50) / pct(&s[0][S_TOTAL], 50));
    fprintf(md, "\nThe criu exec (session 9: criu linked to its private loader, no shell wrapper; "
                "GnuTLS's load-time set-up skipped), eager under THP `always` against the same "
                "with criu run as before: criu CPU x%.3f, CPU per clone x%.3f, restored x%.3f.\n",
            pct(&s[4][S_CRIU], 50) / pct(&s[6][S_CRIU], 50),
            pct(&s[4][S_TOTAL], 50) / pct(&s[6][S_TOTAL], 50),
            pct(&s[4][S_WALL], 50) / pct(&s[6][S_WALL], 50));
    fprintf(md, "\nAfter 3 s idle (memory freed by the previous clone has been free that long; "
                "the host's free page reporting was %s at the start): page reporting off "
                "against the host's: restored x%.3f (%.0f against %.0f ms), CPU per clone x%.3f. "
                "Against back to back (`eager, THP always`): restored x%.3f with the host's "
                "reporting, x%.3f with it off.\n",
            pool__fpr_name(fpr0), pct(&s[8][S_WALL], 50) / pct(&s[7][S_WALL], 50),
            pct(&s[8][S_WALL], 50), pct(&s[7][S_WALL], 50),
            pct(&s[8][S_TOTAL], 50) / pct(&s[7][S_TOTAL], 50),
            pct(&s[7][S_WALL], 50) / pct(&s[4][S_WALL], 50),
            pct(&s[8][S_WALL], 50) / pct(&s[4][S_WALL], 50));
    fprintf(js, "]}\n");
    fclose(js);
    fclose(md);
    snap_image_delete(ctx[0], "clonecpu-py200", NULL);
    snap_template_free(t);
    for (int v = NV - 1; v >= 0; v--)
        snap_ctx_close(ctx[v]);
    return 0;
}
