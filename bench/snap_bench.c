/* snap_bench.c - sandbox boot, checkpoint and restore timings.
 *
 * For each environment: cold boot to ready, dump, eager restore, lazy
 * restore (each --runs times: median, p95), and 1/8/32 restores of one
 * image started at once. Writes JSON and a Markdown table. */
#define WP_LOG_COMPONENT "bench"
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
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

static struct snap_ctx *ctx;
static FILE *json_out;
static int json_first = 1;

static void die(struct wp_err *err, const char *what)
{
    fprintf(stderr, "snap_bench: %s: %s\n", what, err->msg);
    exit(1);
}

static void emit(const char *env, struct series *s, FILE *md)
{
    fprintf(json_out, "%s\n    {\"env\":\"%s\",\"metric\":\"%s\",\"runs\":%d,\"median_ms\":%.3f,"
                      "\"p95_ms\":%.3f,\"min_ms\":%.3f,\"max_ms\":%.3f}",
            json_first ? "" : ",", env, s->name, s->n, pct(s, 50), pct(s, 95), pct(s, 0),
            pct(s, 100));
    json_first = 0;
    fprintf(md, "| %s | %s | %d | %.1f | %.1f |\n", env, s->name, s->n, pct(s, 50), pct(s, 95));
    fprintf(stderr, "  %-10s %-28s n=%-3d median %8.1f ms  p95 %8.1f ms\n", env, s->name, s->n,
            pct(s, 50), pct(s, 95));
}

/* k restores requested at once, at most `slots` running at a time (0 =
 * all at once). Per-restore latency (request to done) into lat, the time
 * for all into wall. */
static void concurrent(const char *img, int k, int slots, bool lazy, struct series *lat,
                       struct series *wall)
{
    struct snap_restore_job *jobs[64];
    struct snap_sandbox *sbs[64] = { 0 };
    struct wp_err err;
    uint64_t t0 = wp_now_ns();
    int done = 0, started = 0;
    bool fin[64] = { 0 };

    if (slots <= 0)
        slots = k;
    while (done < k) {
        while (started < k && started - done < slots) {
            struct snap_restore_opts ro = { .lazy = lazy };
            if (snap_restore_start(ctx, img, &ro, &jobs[started], &err) < 0)
                die(&err, "restore start");
            started++;
        }
        struct pollfd p[64];
        int map[64], n = 0;
        for (int i = 0; i < started; i++)
            if (!fin[i]) {
                p[n].fd = snap_restore_job_fd(jobs[i]);
                p[n].events = POLLIN;
                map[n++] = i;
            }
        if (poll(p, n, -1) < 0 && errno != EINTR)
            exit(1);
        for (int j = 0; j < n; j++) {
            if (!(p[j].revents & (POLLIN | POLLHUP)))
                continue;
            int i = map[j];
            if (snap_restore_finish(ctx, jobs[i], &sbs[i], &err) < 0)
                die(&err, "restore finish");
            add(lat, (double)(wp_now_ns() - t0) / 1e6);
            fin[i] = true;
            done++;
        }
    }
    add(wall, (double)(wp_now_ns() - t0) / 1e6);
    for (int i = 0; i < k; i++)
        snap_destroy(ctx, sbs[i], NULL);
}

/* Restore k clones one after another, all kept alive: does the k-th
 * restore of one image cost more than the first? */
static void sequential_alive(const char *img, int k, bool lazy, struct series *first,
                             struct series *last)
{
    struct snap_sandbox *sbs[128];
    struct wp_err err;

    for (int i = 0; i < k; i++) {
        struct snap_restore_opts ro = { .lazy = lazy };
        uint64_t t0 = wp_now_ns();
        if (snap_restore(ctx, img, &ro, &sbs[i], &err) < 0)
            die(&err, "restore");
        double ms = (double)(wp_now_ns() - t0) / 1e6;
        if (i < 10)
            add(first, ms);
        else if (i >= k - 10)
            add(last, ms);
    }
    for (int i = 0; i < k; i++)
        snap_destroy(ctx, sbs[i], NULL);
}

static void bench_env(const char *env, const char *tjson, int runs, FILE *md)
{
    struct snap_template *t;
    struct wp_err err;
    struct series boot = { "cold boot to ready" }, dump = { "dump" },
                  eager = { "eager restore" }, lazy = { "lazy restore" };
    char img[64];

    if (snap_template_parse(tjson, strlen(tjson), &t, &err) < 0)
        die(&err, "template");
    fprintf(stderr, "%s: %d runs each\n", env, runs);
    for (int i = 0; i < runs; i++) {
        struct snap_sandbox *sb;
        struct snap_image_info info;
        if (snap_boot(ctx, t, NULL, NULL, NULL, &sb, &err) < 0)
            die(&err, "boot");
        add(&boot, sb->boot_ms);
        snprintf(img, sizeof(img), "bench-%s-%d", env, i);
        snap_image_delete(ctx, img, NULL); /* left by an interrupted run */
        if (snap_checkpoint(ctx, sb, t, img, sb->boot_ms, &info, &err) < 0)
            die(&err, "checkpoint");
        add(&dump, info.dump_ms);
        if (i > 0) {
            snprintf(img, sizeof(img), "bench-%s-%d", env, i);
            snap_image_delete(ctx, img, NULL);
        }
    }
    snprintf(img, sizeof(img), "bench-%s-0", env);
    for (int i = 0; i < runs; i++) {
        for (int l = 0; l < 2; l++) {
            struct snap_restore_opts ro = { .lazy = l == 1 };
            struct snap_sandbox *sb;
            uint64_t t0 = wp_now_ns();
            if (snap_restore(ctx, img, &ro, &sb, &err) < 0)
                die(&err, "restore");
            add(l ? &lazy : &eager, (double)(wp_now_ns() - t0) / 1e6);
            snap_destroy(ctx, sb, NULL);
        }
    }
    emit(env, &boot, md);
    emit(env, &dump, md);
    emit(env, &eager, md);
    emit(env, &lazy, md);
    /* k requested at once: all started together, then at most one per
     * CPU running (what the node does). */
    int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    for (int l = 0; l < 2; l++) {
        for (int k = 1; k <= 32; k *= k == 1 ? 8 : 4) {
            for (int bounded = 0; bounded < (k > 1 ? 2 : 1); bounded++) {
                struct series lat = { 0 }, wall = { 0 };
                int reps = k == 32 ? 2 : k == 8 ? 3 : 10;
                for (int r = 0; r < reps; r++)
                    concurrent(img, k, bounded ? ncpu : 0, l == 1, &lat, &wall);
                snprintf(lat.name, sizeof(lat.name), "%s, %d at once%s: each", l ? "lazy" : "eager", k,
                         bounded ? ", 1 per CPU" : "");
                snprintf(wall.name, sizeof(wall.name), "%s, %d at once%s: all", l ? "lazy" : "eager", k,
                         bounded ? ", 1 per CPU" : "");
                emit(env, &lat, md);
                emit(env, &wall, md);
            }
        }
    }
    for (int l = 0; l < 2; l++) {
        struct series first = { 0 }, last = { 0 };
        sequential_alive(img, 64, l == 1, &first, &last);
        snprintf(first.name, sizeof(first.name), "%s restore, clones 1-10 of 64 alive", l ? "lazy" : "eager");
        snprintf(last.name, sizeof(last.name), "%s restore, clones 55-64 of 64 alive", l ? "lazy" : "eager");
        emit(env, &first, md);
        emit(env, &last, md);
    }
    snap_image_delete(ctx, img, NULL);
    snap_template_free(t);
}

/* --isolation: the same environment in a confined and an unconfined
 * context (snap_config.unconfined), runs interleaved so both see the same
 * machine, into isolation.md: cold boot, eager and lazy restore. */
static void iso_env(struct snap_ctx *cx[2], const char *env, const char *tjson, int runs, FILE *md)
{
    struct series s[3][2] = { { { "cold boot to ready" }, { "cold boot to ready" } },
                              { { "eager restore" }, { "eager restore" } },
                              { { "lazy restore" }, { "lazy restore" } } };
    struct snap_template *t;
    struct snap_sandbox *sb;
    struct wp_err err;
    char img[64];

    if (snap_template_parse(tjson, strlen(tjson), &t, &err) < 0)
        die(&err, "template");
    snprintf(img, sizeof(img), "iso-%s", env);
    fprintf(stderr, "%s: %d runs each, confined and unconfined interleaved\n", env, runs);
    for (int i = 0; i < runs; i++)
        for (int k = 0; k < 2; k++) {
            int m = (i + k) % 2; /* alternate which goes first */
            if (snap_boot(cx[m], t, NULL, NULL, NULL, &sb, &err) < 0)
                die(&err, "boot");
            add(&s[0][m], sb->boot_ms);
            if (i == 0) {
                snap_image_delete(cx[m], img, NULL);
                if (snap_checkpoint(cx[m], sb, t, img, sb->boot_ms, NULL, &err) < 0)
                    die(&err, "checkpoint");
            } else {
                snap_destroy(cx[m], sb, NULL);
            }
        }
    for (int i = 0; i < runs; i++)
        for (int l = 0; l < 2; l++)
            for (int k = 0; k < 2; k++) {
                int m = (i + k) % 2;
                struct snap_restore_opts ro = { .lazy = l == 1 };
                uint64_t t0 = wp_now_ns();
                if (snap_restore(cx[m], img, &ro, &sb, &err) < 0)
                    die(&err, "restore");
                add(&s[1 + l][m], (double)(wp_now_ns() - t0) / 1e6);
                snap_destroy(cx[m], sb, NULL);
            }
    for (int w = 0; w < 3; w++) {
        double on = pct(&s[w][0], 50), off = pct(&s[w][1], 50);
        fprintf(md, "| %s | %s | %d | %.1f | %.1f | %.1f | %.1f | %.3f |\n", env, s[w][0].name,
                s[w][0].n, on, pct(&s[w][0], 95), off, pct(&s[w][1], 95), on / off);
        fprintf(stderr, "  %-10s %-20s confined %7.1f ms (p95 %7.1f)  unconfined %7.1f ms (p95 %7.1f)  ratio %.3f\n",
                env, s[w][0].name, on, pct(&s[w][0], 95), off, pct(&s[w][1], 95), on / off);
    }
    for (int m = 0; m < 2; m++)
        snap_image_delete(cx[m], img, NULL);
    snap_template_free(t);
}

static int iso_main(int runs, const char *out, const char *only)
{
    struct snap_config cfg[2] = { { .state_dir = "/var/lib/warmpool-bench-iso-on" },
                                  { .state_dir = "/var/lib/warmpool-bench-iso-off", .unconfined = true } };
    struct snap_ctx *cx[2];
    struct wp_err err;
    char path[600], rootfs[2][512], tjson[4096];
    struct utsname u;

    for (int m = 0; m < 2; m++) {
        if (snap_ctx_open(&cfg[m], &cx[m], &err) < 0)
            die(&err, "open");
        snap_gc(cx[m], NULL);
        snprintf(rootfs[m], sizeof(rootfs[m]), "%s/layers/busybox", cfg[m].state_dir);
        if (snap_rootfs_busybox(rootfs[m], &err) < 0)
            die(&err, "rootfs");
    }
    wp_mkdir_p(out, 0755, NULL);
    snprintf(path, sizeof(path), "%s/isolation-table.md", out);
    FILE *md = fopen(path, "w");
    if (!md)
        return 1;
    uname(&u);
    fprintf(md, "Kernel %s, %ld CPUs, %d runs per row, confined and unconfined interleaved in one "
                "run. Times in ms.\n\n"
                "| environment | what | n | confined median | confined p95 | unconfined median | "
                "unconfined p95 | ratio (median) |\n|---|---|---|---|---|---|---|---|\n",
            u.release, sysconf(_SC_NPROCESSORS_ONLN), runs);
    /* The busybox rootfs path differs per state dir but not its content:
     * one template per context would differ only there, so use the first
     * (a plain directory, read-only lower layer for both). */
    if (!only || strcmp(only, "busybox") == 0) {
        snprintf(tjson, sizeof(tjson),
                 "{\"name\":\"busybox\",\"rootfs\":\"%s\",\"init\":[\"/bin/sh\",\"-c\","
                 "\"i=0; while :; do i=$((i+1)); [ $i = 1 ] && touch /tmp/ready; sleep 1; done\"],"
                 "\"ready_file\":\"/tmp/ready\"}",
                 rootfs[0]);
        iso_env(cx, "busybox", tjson, runs, md);
    }
    if (!only || strcmp(only, "python200") == 0) {
        snprintf(tjson, sizeof(tjson),
                 PYTHON200_TEMPLATE);
        iso_env(cx, "python200", tjson, runs, md);
    }
    fclose(md);
    for (int m = 0; m < 2; m++)
        snap_ctx_close(cx[m]);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = { { "runs", required_argument, NULL, 'n' },
                                        { "out", required_argument, NULL, 'o' },
                                        { "state-dir", required_argument, NULL, 's' },
                                        { "only", required_argument, NULL, 'e' },
                                        { "isolation", no_argument, NULL, 'i' },
                                        { NULL, 0, NULL, 0 } };
    bool isolation = false;
    struct snap_config cfg = { .state_dir = "/var/lib/warmpool-bench" };
    const char *out = "bench/results", *only = NULL;
    int runs = 20, c;
    struct wp_err err;
    char path[512], rootfs[512], tjson[4096];
    struct utsname u;

    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (c == 'n')
            runs = atoi(optarg);
        else if (c == 'o')
            out = optarg;
        else if (c == 's')
            cfg.state_dir = optarg;
        else if (c == 'e')
            only = optarg;
        else if (c == 'i')
            isolation = true;
        else {
            fprintf(stderr, "usage: snap_bench [--runs N] [--out DIR] [--state-dir DIR] [--only ENV] [--isolation]\n");
            return 2;
        }
    }
    if (runs < 1 || runs > MAXR / 2)
        runs = 20;
    wp_log_set_level("warn");
    if (isolation)
        return iso_main(runs, out, only);
    if (snap_ctx_open(&cfg, &ctx, &err) < 0)
        die(&err, "open");
    snap_gc(ctx, NULL);
    snprintf(rootfs, sizeof(rootfs), "%s/layers/busybox", cfg.state_dir);
    if (snap_rootfs_busybox(rootfs, &err) < 0)
        die(&err, "rootfs");
    wp_mkdir_p(out, 0755, NULL);
    snprintf(path, sizeof(path), "%s/snapshot.json", out);
    json_out = fopen(path, "w");
    snprintf(path, sizeof(path), "%s/snapshot.md", out);
    FILE *md = fopen(path, "w");
    if (!json_out || !md)
        return 1;
    uname(&u);
    fprintf(json_out, "{\"kernel\":\"%s\",\"cpus\":%ld,\"runs\":%d,\"results\":[", u.release,
            sysconf(_SC_NPROCESSORS_ONLN), runs);
    fprintf(md, "# snapshot benchmark\n\nKernel %s, %ld CPUs, %d runs per row (concurrent rows: "
                "every restore of 10/3/2 rounds). Times in ms.\n\n"
                "| environment | what | n | median | p95 |\n|---|---|---|---|---|\n",
            u.release, sysconf(_SC_NPROCESSORS_ONLN), runs);
    if (!only || strcmp(only, "busybox") == 0) {
        snprintf(tjson, sizeof(tjson),
                 "{\"name\":\"busybox\",\"rootfs\":\"%s\",\"init\":[\"/bin/sh\",\"-c\","
                 "\"i=0; while :; do i=$((i+1)); [ $i = 1 ] && touch /tmp/ready; sleep 1; done\"],"
                 "\"ready_file\":\"/tmp/ready\"}",
                 rootfs);
        bench_env("busybox", tjson, runs, md);
    }
    if (!only || strcmp(only, "python200") == 0) {
        snprintf(tjson, sizeof(tjson),
                 PYTHON200_TEMPLATE);
        bench_env("python200", tjson, runs, md);
    }
    fprintf(json_out, "\n]}\n");
    fclose(json_out);
    fclose(md);
    snap_ctx_close(ctx);
    return 0;
}
