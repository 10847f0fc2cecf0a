/* userns_bench.c - what a user namespace per sandbox costs: cold boot to
 * ready, eager and lazy restore, with and without it, in one run and
 * interleaved (one of each in turn), so both see the same machine.
 *
 * Two contexts: one confined (the default), one with no_userns (state dirs
 * <state>-uns and <state>-none). Lazy restores in a user namespace need
 * vm.unprivileged_userfaultfd=1 (see snapshot/userns.c): set for the run,
 * then put back. Writes <out>/userns.{json,md}. */
#define WP_LOG_COMPONENT "bench"
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/timeutil.h"
#include "snapshot/snapshot.h"

#define UFFD "/proc/sys/vm/unprivileged_userfaultfd"

#include "bench/bench_stats.h"

static void die(const struct wp_err *err, const char *what)
{
    fprintf(stderr, "userns_bench: %s: %s\n", what, err->msg);
    exit(1);
}

static void sysctl_set(const char *v)
{
    FILE *f = fopen(UFFD, "w");
    if (f) {
        fputs(v, f);
        fclose(f);
    }
}

/* [mode][metric]: mode 0 = user namespace, 1 = none. */
enum { BOOT, EAGER, LAZY, NMETRIC };
static const char *const metric_name[NMETRIC] = { "cold boot to ready", "eager restore",
                                                  "lazy restore" };

static void bench_env(struct snap_ctx *ctx[2], const char *env, const char *tjson, int runs,
                      FILE *md, FILE *js, bool *first)
{
    struct series s[2][NMETRIC];
    struct snap_template *t;
    struct wp_err err;
    char img[64];

    memset(s, 0, sizeof(s));
    if (snap_template_parse(tjson, strlen(tjson), &t, &err) < 0)
        die(&err, "template");
    snprintf(img, sizeof(img), "ub-%s", env);
    fprintf(stderr, "%s: %d runs of each, interleaved\n", env, runs);
    for (int i = 0; i < runs; i++) {
        for (int m = 0; m < 2; m++) {
            struct snap_sandbox *sb;
            if (snap_boot(ctx[m], t, NULL, NULL, NULL, &sb, &err) < 0)
                die(&err, "boot");
            add(&s[m][BOOT], sb->boot_ms);
            if (i == 0) {
                snap_image_delete(ctx[m], img, NULL);
                if (snap_checkpoint(ctx[m], sb, t, img, sb->boot_ms, NULL, &err) < 0)
                    die(&err, "checkpoint");
            } else {
                snap_destroy(ctx[m], sb, NULL);
            }
        }
    }
    for (int i = 0; i < runs; i++) {
        for (int l = 0; l < 2; l++) {
            for (int m = 0; m < 2; m++) {
                struct snap_restore_opts ro = { .lazy = l == 1 };
                struct snap_sandbox *sb;
                uint64_t t0 = wp_now_ns();
                if (snap_restore(ctx[m], img, &ro, &sb, &err) < 0)
                    die(&err, "restore");
                add(&s[m][l ? LAZY : EAGER], (double)(wp_now_ns() - t0) / 1e6);
                if (l && sb->lazy_pid <= 0) {
                    fprintf(stderr, "userns_bench: a lazy restore ran eagerly\n");
                    exit(1);
                }
                snap_destroy(ctx[m], sb, NULL);
            }
        }
    }
    for (int k = 0; k < NMETRIC; k++) {
        double mu = pct(&s[0][k], 50), mn = pct(&s[1][k], 50);
        double pu = pct(&s[0][k], 95), pn = pct(&s[1][k], 95);
        fprintf(md, "| %s | %s | %d | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f |\n", env,
                metric_name[k], s[0][k].n, mn, pn, mu, pu, mu / mn, pu / pn);
        fprintf(js, "%s\n    {\"env\":\"%s\",\"metric\":\"%s\",\"runs\":%d,"
                    "\"none_median_ms\":%.3f,\"none_p95_ms\":%.3f,"
                    "\"userns_median_ms\":%.3f,\"userns_p95_ms\":%.3f,\"median_ratio\":%.3f}",
                *first ? "" : ",", env, metric_name[k], s[0][k].n, mn, pn, mu, pu, mu / mn);
        *first = false;
        fprintf(stderr, "  %-10s %-20s none %7.1f / %7.1f   userns %7.1f / %7.1f   x%.2f\n", env,
                metric_name[k], mn, pn, mu, pu, mu / mn);
    }
    for (int m = 0; m < 2; m++)
        snap_image_delete(ctx[m], img, NULL);
    snap_template_free(t);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = { { "runs", required_argument, NULL, 'n' },
                                        { "out", required_argument, NULL, 'o' },
                                        { "state-dir", required_argument, NULL, 's' },
                                        { "only", required_argument, NULL, 'e' },
                                        { NULL, 0, NULL, 0 } };
    const char *out = "bench/results", *only = NULL, *state = "/var/lib/warmpool-bench";
    char dirs[2][300], path[512], rootfs[600], tjson[4096], *old = NULL;
    struct snap_ctx *ctx[2];
    struct wp_err err;
    struct utsname u;
    bool first = true;
    int runs = 20, c;

    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (c == 'n')
            runs = atoi(optarg);
        else if (c == 'o')
            out = optarg;
        else if (c == 's')
            state = optarg;
        else if (c == 'e')
            only = optarg;
        else {
            fprintf(stderr, "usage: userns_bench [--runs N] [--out DIR] [--state-dir DIR] "
                            "[--only busybox|python200]\n");
            return 2;
        }
    }
    if (runs < 1 || runs > MAXR)
        runs = 20;
    wp_log_set_level("warn");
    for (int m = 0; m < 2; m++) {
        struct snap_config cfg = { .state_dir = dirs[m], .insecure_allow_unconfined = m == 1,
                                   .no_userns = m == 1 };
        snprintf(dirs[m], sizeof(dirs[m]), "%s-%s", state, m ? "none" : "uns");
        if (snap_ctx_open(&cfg, &ctx[m], &err) < 0)
            die(&err, "open");
        snap_gc(ctx[m], NULL);
    }
    wp_read_file(UFFD, 16, &old, NULL, NULL);
    sysctl_set("1");
    snprintf(rootfs, sizeof(rootfs), "%s-uns/layers/busybox", state);
    if (snap_rootfs_busybox(rootfs, &err) < 0)
        die(&err, "rootfs");
    wp_mkdir_p(out, 0755, NULL);
    snprintf(path, sizeof(path), "%s/userns.json", out);
    FILE *js = fopen(path, "w");
    snprintf(path, sizeof(path), "%s/userns.md", out);
    FILE *md = fopen(path, "w");
    if (!js || !md)
        return 1;
    uname(&u);
    fprintf(js, "{\"kernel\":\"%s\",\"cpus\":%ld,\"runs\":%d,\"results\":[", u.release,
            sysconf(_SC_NPROCESSORS_ONLN), runs);
    fprintf(md, "# user namespace per sandbox: cost\n\n"
                "`bench/bench_userns.sh` (build/bench/userns_bench). Kernel %s, %ld CPUs, n runs "
                "per row and mode (busybox %d, python200 half), the two modes interleaved in one run. Times in ms; ratio = "
                "user namespace / none.\n\n"
                "| environment | what | n | none median | none p95 | userns median | userns p95 "
                "| ratio median | ratio p95 |\n|---|---|---|---|---|---|---|---|---|\n",
            u.release, sysconf(_SC_NPROCESSORS_ONLN), runs);
    if (!only || strcmp(only, "busybox") == 0) {
        snprintf(tjson, sizeof(tjson),
                 "{\"name\":\"busybox\",\"rootfs\":\"%s\",\"init\":[\"/bin/sh\",\"-c\","
                 "\"i=0; while :; do i=$((i+1)); [ $i = 1 ] && touch /tmp/ready; sleep 1; done\"],"
                 "\"ready_file\":\"/tmp/ready\"}",
                 rootfs);
        bench_env(ctx, "busybox", tjson, runs, md, js, &first);
    }
    if (!only || strcmp(only, "python200") == 0) {
        snprintf(tjson, sizeof(tjson),
                 PYTHON200_TEMPLATE);
        bench_env(ctx, "python200", tjson, runs / 2 > 0 ? runs / 2 : 1, md, js, &first);
    }
    fprintf(js, "\n]}\n");
    fclose(js);
    fclose(md);
    if (old) {
        old[strcspn(old, "\n")] = '\0';
        sysctl_set(old);
        free(old);
    }
    for (int m = 0; m < 2; m++)
        snap_ctx_close(ctx[m]);
    return 0;
}
