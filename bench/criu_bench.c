/* criu_bench.c - what criu's no-breakpoints mode costs.
 *
 * Where both modes work, dumps and eager/lazy restores of a busybox
 * sandbox in the default mode and with CRIU_FAULT=130, interleaved run by
 * run in one process (same machine state for both), medians and p95, and
 * the ratio no-breakpoints / default. Where only one mode works (a host
 * whose breakpoints never fire), that mode alone, and the probe's reason.
 * Writes criu-modes.json and criu-modes.md under --out. */
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

#include "bench/bench_stats.h"

static void die(const struct wp_err *err, const char *what)
{
    fprintf(stderr, "criu_bench: %s: %s\n", what, err->msg);
    exit(1);
}

enum { DUMP, EAGER, LAZY, NSTEP };
static const char *const step_names[] = { "dump", "eager restore", "lazy restore" };

/* One run of one mode: boot, dump into a fresh image, one eager and one
 * lazy restore of it (each destroyed), the image deleted. */
static void one_run(struct snap_ctx *ctx, const struct snap_template *t, const char *img,
                    struct series *s)
{
    struct snap_sandbox *sb;
    struct snap_image_info info;
    struct wp_err err;

    snap_image_delete(ctx, img, NULL);
    if (snap_boot(ctx, t, NULL, NULL, NULL, &sb, &err) < 0)
        die(&err, "boot");
    if (snap_checkpoint(ctx, sb, t, img, sb->boot_ms, &info, &err) < 0)
        die(&err, "checkpoint");
    s[DUMP].v[s[DUMP].n++] = info.dump_ms;
    for (int l = 0; l < 2; l++) {
        struct snap_restore_opts ro = { .lazy = l == 1 };
        uint64_t t0 = wp_now_ns();
        if (snap_restore(ctx, img, &ro, &sb, &err) < 0)
            die(&err, "restore");
        struct series *r = &s[l ? LAZY : EAGER];
        r->v[r->n++] = (double)(wp_now_ns() - t0) / 1e6;
        snap_destroy(ctx, sb, NULL);
    }
    snap_image_delete(ctx, img, NULL);
}

static struct snap_ctx *open_mode(const char *state, const char *mode)
{
    struct snap_config cfg = { .state_dir = state, .criu_mode = mode };
    struct snap_ctx *ctx;
    struct wp_err err;
    if (snap_ctx_open(&cfg, &ctx, &err) < 0)
        die(&err, "open");
    return ctx;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = { { "runs", required_argument, NULL, 'r' },
                                         { "out", required_argument, NULL, 'o' },
                                         { NULL, 0, NULL, 0 } };
    const char *out = "bench/results";
    int runs = 20, c;
    struct wp_err err;

    wp_log_set_level("warn");
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (c == 'r')
            runs = atoi(optarg);
        else if (c == 'o')
            out = optarg;
        else {
            fprintf(stderr, "usage: criu_bench [--runs N] [--out DIR]\n");
            return 2;
        }
    }
    if (runs < 1 || runs > MAXR)
        runs = 20;

    struct snap_probe p;
    struct snap_probe_config pc = { 0 };
    if (snap_criu_probe(&pc, &p, &err) < 0)
        die(&err, "probe");
    bool both = p.mode == SNAP_CRIU_DEFAULT;
    /* Where the default mode is the answer, no-breakpoints is assumed to
     * work too (it only changes how compel stops a task): measured here. */
    const char *modes[2] = { "default", "no-breakpoints" };
    int first = both ? 0 : 1, nmodes = p.mode == SNAP_CRIU_NONE ? 0 : 2;

    char *state = strdup("/tmp/wp-criu-bench-XXXXXX");
    if (!mkdtemp(state)) {
        perror("mkdtemp");
        return 1;
    }
    struct snap_ctx *ctx[2] = { NULL, NULL };
    for (int m = first; m < nmodes; m++)
        ctx[m] = open_mode(state, modes[m]);
    char rootfs[600], tjson[1200];
    snprintf(rootfs, sizeof(rootfs), "%s/layers/busybox", state);
    if (snap_rootfs_busybox(rootfs, &err) < 0)
        die(&err, "rootfs");
    snprintf(tjson, sizeof(tjson),
             "{\"name\":\"bb\",\"rootfs\":\"%s\",\"init\":[\"/bin/sh\",\"-c\","
             "\"touch /tmp/ready; while :; do sleep 1; done\"],\"ready_file\":\"/tmp/ready\"}",
             rootfs);
    struct snap_template *t;
    if (snap_template_parse(tjson, strlen(tjson), &t, &err) < 0)
        die(&err, "template");

    static struct series s[2][NSTEP];
    fprintf(stderr, "criu_bench: probe says %s (%s); %d runs per mode, interleaved\n",
            snap_criu_mode_name(p.mode), p.why[0] ? p.why : "all works", runs);
    for (int i = 0; i < runs; i++)
        for (int m = first; m < nmodes; m++)
            one_run(ctx[m], t, m ? "bench-nobp" : "bench-default", s[m]);

    char path[700];
    snprintf(path, sizeof(path), "%s/criu-modes.md", out);
    FILE *md = fopen(path, "w");
    snprintf(path, sizeof(path), "%s/criu-modes.json", out);
    FILE *js = fopen(path, "w");
    if (!md || !js) {
        perror("open results");
        return 1;
    }
    struct utsname u;
    uname(&u);
    fprintf(md, "# criu modes: what the no-breakpoints fallback costs\n\n"
                "`make bench` (bench/criu_bench.c): a busybox sandbox booted, dumped, restored "
                "eagerly and lazily, %d runs per mode interleaved in one process; times in ms.\n"
                "Kernel %s. Probe on this host: **%s**%s%s%s.\n",
            runs, u.release, snap_criu_mode_name(p.mode), p.why[0] ? " (" : "",
            p.why[0] ? p.why : "", p.why[0] ? ")" : "");
    fprintf(md, "\n| step | mode | median | p95 | ratio to default (median / p95) |\n|---|---|---|---|---|\n");
    fprintf(js, "{\"probe\":\"%s\",\"runs\":%d,\"results\":[", snap_criu_mode_name(p.mode), runs);
    bool firstj = true;
    for (int st = 0; st < NSTEP; st++)
        for (int m = first; m < nmodes; m++) {
            double med = pct(&s[m][st], 50), p95 = pct(&s[m][st], 95);
            char ratio[64] = "-";
            if (both && m == 1)
                snprintf(ratio, sizeof(ratio), "%.2fx / %.2fx", med / pct(&s[0][st], 50),
                         p95 / pct(&s[0][st], 95));
            fprintf(md, "| %s | %s | %.1f | %.1f | %s |\n", step_names[st], modes[m], med, p95, ratio);
            fprintf(js, "%s{\"step\":\"%s\",\"mode\":\"%s\",\"median_ms\":%.3f,\"p95_ms\":%.3f}",
                    firstj ? "" : ",", step_names[st], modes[m], med, p95);
            firstj = false;
            fprintf(stderr, "  %-14s %-15s median %7.1f ms  p95 %7.1f ms  %s\n", step_names[st],
                    modes[m], med, p95, ratio);
        }
    fprintf(js, "]}\n");
    if (!both)
        fprintf(md, "\nThe default mode does not work on this host, so the fallback's cost "
                    "cannot be measured against it here: run `make bench` on a host where the "
                    "probe says `default` for the ratio.\n");
    fclose(md);
    fclose(js);
    snap_template_free(t);
    for (int m = 0; m < 2; m++)
        if (ctx[m])
            snap_ctx_close(ctx[m]);
    wp_rm_rf(state, NULL);
    free(state);
    return 0;
}
