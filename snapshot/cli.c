/* cli.c - warmpool-snap: boot, checkpoint, restore, list, destroy sandboxes
 * on this machine, for operators and for debugging. */
#define WP_LOG_COMPONENT "snap"
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/err.h"
#include "base/log.h"
#include "base/timeutil.h"
#include "snapshot/snapshot.h"

static const char usage[] =
    "usage: warmpool-snap [options] COMMAND [args]\n"
    "\n"
    "Sandboxes on this machine: boot from a template, checkpoint with CRIU,\n"
    "restore clones, destroy. Every command prints JSON on stdout.\n"
    "\n"
    "commands:\n"
    "  build TEMPLATE.json IMAGE     boot, run setup (progress on stderr), checkpoint\n"
    "  boot TEMPLATE.json            boot a sandbox and leave it running\n"
    "  checkpoint ID TEMPLATE.json IMAGE\n"
    "                                checkpoint a booted sandbox (it ends)\n"
    "  restore IMAGE [--lazy]        restore a clone and leave it running\n"
    "  destroy ID...                 kill, unmount and remove sandboxes\n"
    "  list                          sandboxes and images\n"
    "  rmi IMAGE                     delete an image\n"
    "  gc                            remove sandboxes whose owner died, partial images\n"
    "  probe [--reprobe]             how criu runs here: dump and restore a throwaway\n"
    "                                process under a deadline (cached per kernel, criu\n"
    "                                and CPU); exit 1 when no mode works\n"
    "  rootfs-busybox DIR            make a minimal busybox root filesystem\n"
    "  demo                          build a busybox environment, restore clones,\n"
    "                                print timings, clean up\n"
    "\n"
    "options:\n"
    "  --state-dir DIR   node state (default /var/lib/warmpool)\n"
    "  --criu PATH       criu binary (default " WP_PREFIX "/bin/criu)\n"
    "  --id ID           sandbox id for boot/restore\n"
    "  --lazy            lazy-pages restore (userfaultfd)\n"
    "  --insecure-allow-unconfined  no capability drop, seccomp, /proc masks, device\n"
    "                    list, disk limits; a user namespace only where the host has\n"
    "                    them (else sandboxes run as the host's root)\n"
    "  --criu-mode M     auto (probe; default), default, no-breakpoints, none\n"
    "  --criu-timeout S  deadline of each dump and restore (default 120)\n"
    "  --probe-timeout S deadline of each probe step (default 5)\n"
    "  --probe-cache DIR where probe results are kept (default " SNAP_PROBE_CACHE_DIR ")\n"
    "  --cgroup2-root DIR  a cgroup v2 tree to use instead of detecting /sys/fs/cgroup\n"
    "                    (a hybrid host's /sys/fs/cgroup/unified)\n"
    "  --log-level L     error, warn, info, debug (default warn)\n"
    "  -h, --help        this text\n";

static void progress(void *arg, const char *line)
{
    (void)arg;
    fprintf(stderr, "  | %s\n", line);
}

static void print_line(void *arg, const char *json)
{
    const char *kind = arg;
    printf("{\"%s\":%s}\n", kind, json);
}

static void print_sb(const struct snap_sandbox *sb)
{
    printf("{\"id\":\"%s\",\"init_pid\":%d,\"root\":\"%s\",\"image\":\"%s\",\"ms\":%.2f,"
           "\"prep_ms\":%.2f,\"criu_ms\":%.2f,\"helper_cpu_ms\":%.2f,\"criu_cpu_ms\":%.2f}\n",
           sb->id, (int)sb->init_pid, sb->root, sb->image, sb->boot_ms, sb->prep_ms, sb->criu_ms,
           sb->helper_cpu_ms, sb->criu_cpu_ms);
}

static int fail(struct wp_err *err)
{
    fprintf(stderr, "warmpool-snap: %s\n", err->msg);
    return 1;
}

static int cmd_demo(struct snap_ctx *ctx)
{
    char rootfs[400], tjson[1200], img[64];
    struct snap_template *t = NULL;
    struct snap_sandbox *sb = NULL, *clones[8] = { 0 };
    struct snap_image_info info;
    struct wp_err err;
    int rc = 1;

    snprintf(rootfs, sizeof(rootfs), "%s/layers/busybox", snap_ctx_state_dir(ctx));
    if (snap_rootfs_busybox(rootfs, &err) < 0)
        return fail(&err);
    snprintf(tjson, sizeof(tjson),
             "{\"name\":\"demo\",\"rootfs\":\"%s\",\"init\":[\"/bin/sh\",\"-c\","
             "\"i=0; while :; do i=$((i+1)); echo $i > /tmp/count; usleep 10000; done\"],"
             "\"setup\":[\"echo warming up; echo hello > /work/setup.txt\"],"
             "\"workdir\":\"/work\",\"ready_file\":\"/tmp/count\","
             "\"limits\":{\"memory_mb\":64,\"pids\":64,\"cpu\":0.5}}",
             rootfs);
    if (snap_template_parse(tjson, strlen(tjson), &t, &err) < 0)
        return fail(&err);
    snprintf(img, sizeof(img), "demo-%d", (int)getpid());
    fprintf(stderr, "demo: booting a busybox environment (cgroups %s)\n",
            snap_ctx_cgroup_layout(ctx));
    if (snap_boot(ctx, t, NULL, progress, NULL, &sb, &err) < 0)
        goto out_err;
    double boot_ms = sb->boot_ms;
    fprintf(stderr, "demo: cold boot to ready %.1f ms\n", boot_ms);
    if (snap_checkpoint(ctx, sb, t, img, boot_ms, &info, &err) < 0)
        goto out_err;
    fprintf(stderr, "demo: checkpoint %.1f ms, %.1f KiB of pages\n", info.dump_ms,
            info.pages_bytes / 1024.0);
    for (int i = 0; i < 8; i++) {
        struct snap_restore_opts ro = { .lazy = i % 2 == 1 };
        if (snap_restore(ctx, img, &ro, &clones[i], &err) < 0)
            goto out_err;
        fprintf(stderr, "demo: clone %d (%s restore) %s in %.1f ms\n", i + 1,
                ro.lazy ? "lazy" : "eager", clones[i]->id, clones[i]->boot_ms);
    }
    usleep(100 * 1000);
    for (int i = 0; i < 8; i++) {
        char path[700], buf[32] = "";
        snprintf(path, sizeof(path), "%s/tmp/count", clones[i]->root);
        FILE *f = fopen(path, "r");
        if (f) {
            if (!fgets(buf, sizeof(buf), f))
                buf[0] = '\0';
            fclose(f);
        }
        buf[strcspn(buf, "\n")] = '\0';
        fprintf(stderr, "demo: clone %d counts on: %s\n", i + 1, buf);
    }
    rc = 0;
    goto out;
out_err:
    fail(&err);
out:
    for (int i = 0; i < 8; i++)
        if (clones[i])
            snap_destroy(ctx, clones[i], NULL);
    snap_image_delete(ctx, img, NULL);
    snap_template_free(t);
    fprintf(stderr, "demo: %s; everything removed\n", rc == 0 ? "done" : "failed");
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "state-dir", required_argument, NULL, 's' }, { "criu", required_argument, NULL, 'c' },
        { "id", required_argument, NULL, 'i' },        { "lazy", no_argument, NULL, 'z' },
        { "log-level", required_argument, NULL, 'l' }, { "help", no_argument, NULL, 'h' },
        { "insecure-allow-unconfined", no_argument, NULL, 'U' },
        { "criu-mode", required_argument, NULL, 'm' }, { "criu-timeout", required_argument, NULL, 't' },
        { "probe-timeout", required_argument, NULL, 'p' }, { "probe-cache", required_argument, NULL, 'C' },
        { "reprobe", no_argument, NULL, 'R' }, { "cgroup2-root", required_argument, NULL, 'G' },
        { NULL, 0, NULL, 0 },
    };
    struct snap_config cfg = { 0 };
    struct snap_ctx *ctx = NULL;
    struct wp_err err = { 0 };
    const char *id = NULL, *cmd;
    bool lazy = false, reprobe = false;
    int c, rc = 1;

    wp_log_set_level("warn");
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 's': cfg.state_dir = optarg; break;
        case 'c': cfg.criu_bin = optarg; break;
        case 'i': id = optarg; break;
        case 'z': lazy = true; break;
        case 'U': cfg.insecure_allow_unconfined = cfg.unconfined = true; break;
        case 'm': cfg.criu_mode = optarg; break;
        case 't':
        case 'p': {
            char *end;
            double v = strtod(optarg, &end);
            if (*end || !(v > 0 && v < 86400)) {
                fprintf(stderr, "warmpool-snap: bad seconds '%s'\n", optarg);
                return 2;
            }
            *(c == 't' ? &cfg.criu_timeout_s : &cfg.probe_timeout_s) = v;
            break;
        }
        case 'C': cfg.probe_cache_dir = optarg; break;
        case 'R': reprobe = true; break;
        case 'G': cfg.cgroup2_root = optarg; break;
        case 'l':
            if (wp_log_set_level(optarg) < 0) {
                fprintf(stderr, "warmpool-snap: bad log level '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h': fputs(usage, stdout); return 0;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (optind >= argc) {
        fputs(usage, stderr);
        return 2;
    }
    cmd = argv[optind++];
    int nargs = argc - optind;
    char **args = argv + optind;
#define NEED(n)                                                                  \
    do {                                                                         \
        if (nargs != (n)) {                                                      \
            fprintf(stderr, "warmpool-snap: %s takes %d argument(s)\n", cmd, n); \
            return 2;                                                            \
        }                                                                        \
    } while (0)

    if (strcmp(cmd, "rootfs-busybox") == 0) {
        NEED(1);
        if (snap_rootfs_busybox(args[0], &err) < 0)
            return fail(&err);
        printf("{\"rootfs\":\"%s\"}\n", args[0]);
        return 0;
    }
    if (strcmp(cmd, "probe") == 0) {
        struct snap_probe p;
        struct snap_probe_config pc = { .criu_bin = cfg.criu_bin ? cfg.criu_bin : getenv("WARMPOOL_CRIU"),
                                        .cache_dir = cfg.probe_cache_dir ? cfg.probe_cache_dir
                                                                         : getenv("WARMPOOL_CRIU_CACHE"),
                                        .deadline_s = cfg.probe_timeout_s,
                                        .force = reprobe };
        NEED(0);
        if (snap_criu_probe(&pc, &p, &err) < 0)
            return fail(&err);
        char *s = snap_probe_json(&p);
        printf("%s\n", s ? s : "{}");
        free(s);
        return p.mode == SNAP_CRIU_NONE;
    }
    if (snap_ctx_open(&cfg, &ctx, &err) < 0)
        return fail(&err);

    if (strcmp(cmd, "build") == 0 || strcmp(cmd, "boot") == 0) {
        bool build = cmd[1] == 'u';
        struct snap_template *t = NULL;
        struct snap_sandbox *sb = NULL;
        struct snap_image_info info;
        NEED(build ? 2 : 1);
        if (snap_template_load(args[0], &t, &err) < 0)
            goto out_err;
        if (snap_boot(ctx, t, id, progress, NULL, &sb, &err) < 0) {
            snap_template_free(t);
            goto out_err;
        }
        if (!build) {
            print_sb(sb);
            snap_sandbox_free(sb);
            snap_template_free(t);
            rc = 0;
            goto out;
        }
        double boot_ms = sb->boot_ms;
        fprintf(stderr, "booted in %.1f ms, checkpointing\n", boot_ms);
        rc = snap_checkpoint(ctx, sb, t, args[1], boot_ms, &info, &err);
        snap_template_free(t);
        if (rc < 0)
            goto out_err;
        printf("{\"image\":\"%s\",\"boot_ms\":%.2f,\"dump_ms\":%.2f,\"pages_bytes\":%llu}\n",
               args[1], boot_ms, info.dump_ms, (unsigned long long)info.pages_bytes);
        rc = 0;
    } else if (strcmp(cmd, "checkpoint") == 0) {
        struct snap_template *t = NULL;
        struct snap_sandbox *sb;
        struct snap_image_info info;
        NEED(3);
        if (snap_template_load(args[1], &t, &err) < 0)
            goto out_err;
        if (snap_sandbox_open(ctx, args[0], &sb, &err) < 0) {
            snap_template_free(t);
            goto out_err;
        }
        rc = snap_checkpoint(ctx, sb, t, args[2], 0, &info, &err);
        snap_template_free(t);
        if (rc < 0)
            goto out_err;
        printf("{\"image\":\"%s\",\"dump_ms\":%.2f,\"pages_bytes\":%llu}\n", args[2],
               info.dump_ms, (unsigned long long)info.pages_bytes);
        rc = 0;
    } else if (strcmp(cmd, "restore") == 0) {
        struct snap_restore_opts ro = { .lazy = lazy, .id = id };
        struct snap_sandbox *sb;
        NEED(1);
        if (snap_restore(ctx, args[0], &ro, &sb, &err) < 0)
            goto out_err;
        print_sb(sb);
        snap_sandbox_free(sb);
        rc = 0;
    } else if (strcmp(cmd, "destroy") == 0) {
        if (nargs < 1) {
            fprintf(stderr, "warmpool-snap: destroy takes sandbox ids\n");
            return 2;
        }
        rc = 0;
        for (int i = 0; i < nargs; i++) {
            if (snap_destroy_id(ctx, args[i], &err) < 0) {
                fail(&err);
                rc = 1;
            } else {
                printf("{\"destroyed\":\"%s\"}\n", args[i]);
            }
        }
    } else if (strcmp(cmd, "list") == 0) {
        NEED(0);
        if (snap_list_sandboxes(ctx, print_line, (void *)"sandbox", &err) < 0 ||
            snap_list_images(ctx, print_line, (void *)"image", &err) < 0)
            goto out_err;
        rc = 0;
    } else if (strcmp(cmd, "rmi") == 0) {
        NEED(1);
        if (snap_image_delete(ctx, args[0], &err) < 0)
            goto out_err;
        printf("{\"deleted\":\"%s\"}\n", args[0]);
        rc = 0;
    } else if (strcmp(cmd, "gc") == 0) {
        NEED(0);
        int n = snap_gc(ctx, &err);
        if (n < 0)
            goto out_err;
        printf("{\"cleaned\":%d}\n", n);
        rc = 0;
    } else if (strcmp(cmd, "demo") == 0) {
        NEED(0);
        rc = cmd_demo(ctx);
    } else {
        fprintf(stderr, "warmpool-snap: unknown command '%s'\n\n%s", cmd, usage);
        rc = 2;
    }
    goto out;
out_err:
    fail(&err);
    rc = 1;
out:
    snap_ctx_close(ctx);
    return rc;
}
