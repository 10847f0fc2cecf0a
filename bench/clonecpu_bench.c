/* clonecpu_bench.c - what one clone of the 200 MB Python environment
 * costs in CPU to make (issue 20: capacity is bounded by it).
 *
 * One image of PYTHON200_TEMPLATE; then --runs restores, one at a time,
 * eager and lazy, each split by where its CPU went:
 *   ours      this process (the restore's set-up: dirs, overlay, cgroups),
 *   helper    the reaped helper and everything it reaped (criu swrk, the
 *             lazy-pages daemon when it has exited),
 *   restored  the clone's own processes, read from /proc right after the
 *             restore: criu's restore of a task (page copy, mappings) runs
 *             in the task it becomes,
 * and the destroy, measured apart. Writes clonecpu.{json,md}. */
#define WP_LOG_COMPONENT "bench"
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/timeutil.h"
#include "snapshot/snapshot.h"

#include "bench/bench_stats.h"

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

/* utime + stime of the sandbox's processes, ms. */
static double sandbox_cpu_ms(struct snap_ctx *ctx, const char *id, int *nprocs)
{
    pid_t pids[256];
    struct wp_err err;
    int n = snap_sandbox_pids(ctx, id, pids, 256, &err);
    double ticks = 0, hz = (double)sysconf(_SC_CLK_TCK);

    *nprocs = n > 0 ? n : 0;
    for (int i = 0; i < n; i++) {
        char path[64], buf[1024];
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pids[i]);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t k = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[k] = '\0';
        char *p = strrchr(buf, ')');
        unsigned long ut = 0, st = 0;
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2)
            ticks += (double)(ut + st);
    }
    return ticks / hz * 1e3;
}

static void die(struct wp_err *err, const char *what)
{
    fprintf(stderr, "clonecpu_bench: %s: %s\n", what, err->msg);
    exit(1);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = { { "runs", required_argument, NULL, 'n' },
                                        { "out", required_argument, NULL, 'o' },
                                        { "state-dir", required_argument, NULL, 's' },
                                        { "eager-only", no_argument, NULL, 'e' },
                                        { "lazy-only", no_argument, NULL, 'l' },
                                        { NULL, 0, NULL, 0 } };
    struct snap_config cfg = { .state_dir = "/var/lib/warmpool-bench" };
    const char *out = "bench/results";
    int runs = 10, c, first = 0, modes = 2;
    struct wp_err err;
    struct snap_template *t;
    struct snap_sandbox *sb;
    struct utsname u;

    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (bench_std_opt(c, optarg, &runs, &out, &cfg.state_dir))
            continue;
        if (c == 'e')
            modes = 1;
        else if (c == 'l')
            first = 1;
        else {
            fprintf(stderr, "usage: clonecpu_bench [--runs N] [--out DIR] [--state-dir DIR] [--eager-only|--lazy-only]\n");
            return 2;
        }
    }
    if (runs < 1 || runs > MAXR)
        runs = 10;
    wp_log_set_level("warn");
    struct snap_ctx *ctx;
    if (snap_ctx_open(&cfg, &ctx, &err) < 0)
        die(&err, "open");
    if (snap_template_parse(PYTHON200_TEMPLATE, strlen(PYTHON200_TEMPLATE), &t, &err) < 0)
        die(&err, "template");
    snap_image_delete(ctx, "clonecpu-py200", NULL);
    if (snap_boot(ctx, t, NULL, NULL, NULL, &sb, &err) < 0)
        die(&err, "boot");
    if (snap_checkpoint(ctx, sb, t, "clonecpu-py200", sb->boot_ms, NULL, &err) < 0)
        die(&err, "checkpoint");
    uname(&u);
    FILE *js, *md;
    if (bench_open_results(out, "clonecpu", &js, &md) < 0)
        return 1;
    fprintf(js, "{\"kernel\":\"%s\",\"cpus\":%ld,\"runs\":%d,\"results\":[", u.release,
            sysconf(_SC_NPROCESSORS_ONLN), runs);
    fprintf(md, "# CPU per clone: the 200 MB Python environment\n\n"
                "Kernel %s, %ld CPUs, %d restores of each kind, one at a time (medians, p95 in "
                "brackets; ms of CPU, user + system). Sandboxes run in a user namespace.\n\n"
                "`restored` is the wall time until the restore returns, `all memory in` until the "
                "lazy-pages daemon has served every page (eager: the same); `CPU, restore to "
                "destroy` is everything the clone cost (set-up, criu, page copy, the clone's "
                "processes, lazy daemon, teardown); the split is read when the restore returns "
                "(lazy pages still arriving count in the lifecycle only).\n\n"
                "| restore | restored | all memory in | CPU, restore to destroy | CPU at restore | "
                "ours (set-up) | helper + criu | restored tasks | destroy (own) | processes |\n"
                "|---|---|---|---|---|---|---|---|---|---|\n",
            u.release, sysconf(_SC_NPROCESSORS_ONLN), runs);
    for (int lazy = first; lazy < modes; lazy++) {
        struct series wall = { "wall" }, total = { "total" }, ours = { "ours" },
                      helper = { "helper" }, tasks = { "tasks" }, destroy = { "destroy" },
                      full = { "full" }, life = { "lifecycle" };
        int nprocs = 0;
        for (int i = 0; i < runs; i++) {
            struct snap_restore_opts ro = { .lazy = lazy };
            double s0 = rusage_ms(RUSAGE_SELF), c0 = rusage_ms(RUSAGE_CHILDREN);
            uint64_t t0 = wp_now_ns();
            if (snap_restore(ctx, "clonecpu-py200", &ro, &sb, &err) < 0)
                die(&err, "restore");
            double w = (double)(wp_now_ns() - t0) / 1e6;
            double s1 = rusage_ms(RUSAGE_SELF), c1 = rusage_ms(RUSAGE_CHILDREN);
            double tk = sandbox_cpu_ms(ctx, sb->id, &nprocs);
            /* Lazy: all memory is in once the lazy-pages daemon has served
             * every page and exited (the clone's only other process). */
            int np = nprocs;
            for (int k = 0; lazy && np > 1 && k < 3000; k++) {
                usleep(1000);
                sandbox_cpu_ms(ctx, sb->id, &np);
            }
            add(&full, (double)(wp_now_ns() - t0) / 1e6);
            add(&wall, w);
            add(&ours, s1 - s0);
            add(&helper, c1 - c0);
            add(&tasks, tk);
            add(&total, (s1 - s0) + (c1 - c0) + tk);
            double d0 = rusage_ms(RUSAGE_SELF) + rusage_ms(RUSAGE_CHILDREN);
            snap_destroy(ctx, sb, NULL);
            double d1 = rusage_ms(RUSAGE_SELF) + rusage_ms(RUSAGE_CHILDREN);
            /* Reaped at destroy, the clone's processes add their whole
             * life to ours: what the destroy itself cost is the rest. */
            add(&destroy, d1 - d0 - tk);
            add(&life, d1 - (s0 + c0));
        }
        const char *name = lazy ? "lazy" : "eager";
        struct series *all[] = { &wall, &full, &life, &total, &ours, &helper, &tasks, &destroy };
        fprintf(js, "%s{\"restore\":\"%s\",\"processes\":%d", lazy > first ? "," : "", name, nprocs);
        for (int k = 0; k < 8; k++)
            fprintf(js, ",\"%s_p50_ms\":%.1f,\"%s_p95_ms\":%.1f", all[k]->name, pct(all[k], 50),
                    all[k]->name, pct(all[k], 95));
        fprintf(js, "}");
        fprintf(md, "| %s |", name);
        for (int k = 0; k < 8; k++)
            fprintf(md, " %.0f (%.0f) |", pct(all[k], 50), pct(all[k], 95));
        fprintf(md, " %d |\n", nprocs);
        fprintf(stderr, "%s: wall %.0f ms (all in %.0f), CPU lifecycle %.0f ms, at restore %.0f "
                        "(ours %.0f, helper+criu %.0f, restored %.0f), destroy %.0f\n",
                name, pct(&wall, 50), pct(&full, 50), pct(&life, 50), pct(&total, 50),
                pct(&ours, 50), pct(&helper, 50), pct(&tasks, 50), pct(&destroy, 50));
    }
    fprintf(js, "]}\n");
    fclose(js);
    fclose(md);
    snap_image_delete(ctx, "clonecpu-py200", NULL);
    snap_template_free(t);
    snap_ctx_close(ctx);
    return 0;
}
