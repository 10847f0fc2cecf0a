/* cgroup.c - per-sandbox cgroups on v1 (one hierarchy per controller) or
 * v2 (one tree). Every sandbox gets warmpool/<id> in each hierarchy. */
#define WP_LOG_COMPONENT "snap"
#include "snap_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"

#define CG_PARENT "warmpool"

/* v1 controllers we place sandboxes in; memory and pids carry limits,
 * cpu carries the CPU quota, freezer lets destroy stop a fork race,
 * devices carries the device allow-list (confine.c). */
static const char *v1_wanted[] = { "memory", "pids", "cpu", "freezer", "devices", NULL };

static int write_str(const char *dir, const char *file, const char *val, struct wp_err *err)
{
    char path[512];
    int fd;
    ssize_t n;

    snprintf(path, sizeof(path), "%s/%s", dir, file);
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return wp_err_errno(err, "open %s", path);
    n = write(fd, val, strlen(val));
    if (n < 0) {
        int code = wp_err_errno(err, "write '%s' to %s", val, path);
        close(fd);
        return code;
    }
    close(fd);
    return 0;
}

int snap__cg_write(const char *dir, const char *file, const char *val, struct wp_err *err)
{
    return write_str(dir, file, val, err);
}

static bool has_opt(const char *opts, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = opts; (p = strstr(p, name)); p += n)
        if ((p == opts || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

int snap__cg_detect(struct snap_ctx *ctx, const char *v2_root, struct wp_err *err)
{
    char line[1024], dev[256], mnt[256], type[64], opts[512], path[300];
    struct stat st;
    FILE *f;

    ctx->n_ctrl = 0;
    if (v2_root && strlen(v2_root) >= sizeof(ctx->ctrl_path[0]) - 32)
        return wp_err_set(err, WP_EINVAL_INPUT, "cgroup v2 root \"%s\": too long", v2_root);
    snprintf(path, sizeof(path), "%s/cgroup.controllers", v2_root ? v2_root : "/sys/fs/cgroup");
    if (stat(path, &st) == 0) {
        ctx->cg = SNAP__CG_V2;
        ctx->n_ctrl = 1;
        strcpy(ctx->ctrl_name[0], "unified");
        snprintf(ctx->ctrl_path[0], sizeof(ctx->ctrl_path[0]), "%s",
                 v2_root ? v2_root : "/sys/fs/cgroup");
        return 0;
    }
    if (v2_root)
        return wp_err_set(err, WP_ECONFIG, "cgroup v2 root \"%s\": not a cgroup v2 tree", v2_root);
    f = fopen("/proc/self/mounts", "re");
    if (!f)
        return wp_err_errno(err, "open /proc/self/mounts");
    ctx->cg = SNAP__CG_V1;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "%255s %255s %63s %511s", dev, mnt, type, opts) != 4)
            continue;
        /* Only the host's hierarchies: a cgroup yard that a crashed criu
         * left mounted elsewhere carries the same options. */
        if (strcmp(type, "cgroup") != 0 || strncmp(mnt, "/sys/fs/cgroup/", 15) != 0)
            continue;
        for (const char **w = v1_wanted; *w; w++) {
            bool dup = false;
            if (!has_opt(opts, *w))
                continue;
            for (int i = 0; i < ctx->n_ctrl; i++)
                dup |= strcmp(ctx->ctrl_path[i], mnt) == 0;
            if (dup || ctx->n_ctrl == SNAP__MAX_CTRL || strlen(mnt) >= sizeof(ctx->ctrl_path[0]))
                continue;
            snprintf(ctx->ctrl_name[ctx->n_ctrl], sizeof(ctx->ctrl_name[0]), "%s", *w);
            strcpy(ctx->ctrl_path[ctx->n_ctrl], mnt);
            ctx->n_ctrl++;
        }
    }
    fclose(f);
    bool mem = false, devices = false;
    for (int i = 0; i < ctx->n_ctrl; i++) {
        mem |= strcmp(ctx->ctrl_name[i], "memory") == 0;
        devices |= strcmp(ctx->ctrl_name[i], "devices") == 0;
    }
    /* No device allow-list is no sandbox we would call confined. */
    if (mem && !devices && !ctx->unconfined)
        return wp_err_set(err, WP_ECONFIG, "no v1 devices hierarchy under /sys/fs/cgroup: sandboxes "
                                           "would have no device allow-list (mount it, or run "
                                           "unconfined: --insecure-allow-unconfined)");
    if (mem)
        return 0;
    return wp_err_set(err, WP_ECONFIG, "no cgroup v2 tree and no v1 memory controller mounted under /sys/fs/cgroup");
}

void snap__cg_relpath(const char *id, char *out, size_t cap)
{
    snprintf(out, cap, "/" CG_PARENT "/%s", id);
}

static void cg_dir(const struct snap_ctx *ctx, int i, const char *id, char *out, size_t cap)
{
    if (id)
        snprintf(out, cap, "%s/" CG_PARENT "/%s", ctx->ctrl_path[i], id);
    else
        snprintf(out, cap, "%s/" CG_PARENT, ctx->ctrl_path[i]);
}

static int apply_limits(struct snap_ctx *ctx, int i, const char *dir, const struct snap_limits *lim,
                        struct wp_err *err)
{
    char val[64];
    const char *name = ctx->ctrl_name[i];
    int rc = 0;

    if (ctx->cg == SNAP__CG_V2) {
        if (lim->memory_bytes) {
            snprintf(val, sizeof(val), "%llu", (unsigned long long)lim->memory_bytes);
            if ((rc = write_str(dir, "memory.max", val, err)) < 0)
                return rc;
            write_str(dir, "memory.swap.max", "0", NULL); /* absent without swap accounting */
        }
        if (lim->pids) {
            snprintf(val, sizeof(val), "%u", lim->pids);
            if ((rc = write_str(dir, "pids.max", val, err)) < 0)
                return rc;
        }
        if (lim->cpu_millis) {
            snprintf(val, sizeof(val), "%u 100000", lim->cpu_millis * 100);
            if ((rc = write_str(dir, "cpu.max", val, err)) < 0)
                return rc;
        }
        /* v2 has no devices controller: a BPF program on the cgroup. */
        return ctx->unconfined ? 0 : snap__confine_cg_devices_v2(dir, err);
    }
    if (strcmp(name, "memory") == 0 && lim->memory_bytes) {
        snprintf(val, sizeof(val), "%llu", (unsigned long long)lim->memory_bytes);
        if ((rc = write_str(dir, "memory.limit_in_bytes", val, err)) < 0)
            return rc;
        write_str(dir, "memory.memsw.limit_in_bytes", val, NULL); /* only with swap accounting */
    } else if (strcmp(name, "pids") == 0 && lim->pids) {
        snprintf(val, sizeof(val), "%u", lim->pids);
        rc = write_str(dir, "pids.max", val, err);
    } else if (strcmp(name, "devices") == 0) {
        rc = snap__confine_cg_devices_v1(ctx, dir, err);
    } else if (strcmp(name, "cpu") == 0 && lim->cpu_millis) {
        snprintf(val, sizeof(val), "%u", lim->cpu_millis * 100);
        if ((rc = write_str(dir, "cpu.cfs_period_us", "100000", err)) < 0)
            return rc;
        rc = write_str(dir, "cpu.cfs_quota_us", val, err);
    }
    return rc;
}

int snap__cg_create(struct snap_ctx *ctx, const char *id, const struct snap_limits *lim,
                    struct wp_err *err)
{
    char dir[512];
    int rc;

    for (int i = 0; i < ctx->n_ctrl; i++) {
        cg_dir(ctx, i, NULL, dir, sizeof(dir));
        if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
            rc = wp_err_errno(err, "mkdir %s", dir);
            goto fail;
        }
        if (ctx->cg == SNAP__CG_V2) {
            /* Controllers must be enabled down to our parent. */
            write_str(ctx->ctrl_path[i], "cgroup.subtree_control", "+memory +pids +cpu", NULL);
            write_str(dir, "cgroup.subtree_control", "+memory +pids +cpu", NULL);
        }
        cg_dir(ctx, i, id, dir, sizeof(dir));
        if (mkdir(dir, 0755) < 0) {
            rc = wp_err_errno(err, "mkdir %s", dir);
            goto fail;
        }
        if ((rc = apply_limits(ctx, i, dir, lim, err)) < 0)
            goto fail;
    }
    return 0;
fail:
    snap__cg_destroy(ctx, id, NULL);
    return rc;
}

int snap__cg_enter(struct snap_ctx *ctx, const char *id, pid_t pid, struct wp_err *err)
{
    char dir[512], val[32];
    int rc;

    snprintf(val, sizeof(val), "%d", (int)pid);
    for (int i = 0; i < ctx->n_ctrl; i++) {
        cg_dir(ctx, i, id, dir, sizeof(dir));
        if ((rc = write_str(dir, "cgroup.procs", val, err)) < 0)
            return rc;
    }
    return 0;
}

/* Pids listed in one cgroup.procs file; returns count, kills them when kill_them. */
static int scan_procs(const char *dir, bool kill_them)
{
    char path[600];
    FILE *f;
    int pid, n = 0;

    snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
    f = fopen(path, "re");
    if (!f)
        return errno == ENOENT ? 0 : -errno;
    while (fscanf(f, "%d", &pid) == 1) {
        n++;
        if (kill_them)
            kill(pid, SIGKILL);
    }
    fclose(f);
    return n;
}

int snap__cg_nprocs(struct snap_ctx *ctx, const char *id)
{
    char dir[512];
    int max = 0;

    for (int i = 0; i < ctx->n_ctrl; i++) {
        cg_dir(ctx, i, id, dir, sizeof(dir));
        int n = scan_procs(dir, false);
        if (n > max)
            max = n;
    }
    return max;
}

bool snap__cg_exists(struct snap_ctx *ctx, const char *id)
{
    char dir[512];
    struct stat st;

    for (int i = 0; i < ctx->n_ctrl; i++) {
        cg_dir(ctx, i, id, dir, sizeof(dir));
        if (stat(dir, &st) == 0)
            return true;
    }
    return false;
}

/* Kill every process in dir and below; returns how many were seen. */
static int kill_tree(const char *dir)
{
    char sub[1024];
    struct dirent *e;
    int n = scan_procs(dir, true);
    DIR *d = opendir(dir);

    if (!d)
        return n < 0 ? 0 : n;
    while ((e = readdir(d))) {
        if (e->d_type != DT_DIR || e->d_name[0] == '.')
            continue;
        snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name);
        n += kill_tree(sub);
    }
    closedir(d);
    return n;
}

/* rmdir dir's child cgroups (criu may make some), then dir. */
static int rmdir_tree(const char *dir)
{
    char sub[1024];
    struct dirent *e;
    DIR *d = opendir(dir);

    if (!d)
        return errno == ENOENT ? 0 : -errno;
    while ((e = readdir(d))) {
        if (e->d_type != DT_DIR || e->d_name[0] == '.')
            continue;
        snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name);
        rmdir_tree(sub);
    }
    closedir(d);
    return rmdir(dir) < 0 && errno != ENOENT ? -errno : 0;
}

int snap__cg_destroy(struct snap_ctx *ctx, const char *id, struct wp_err *err)
{
    char dir[512];
    int rc = 0;

    for (int i = 0; i < ctx->n_ctrl; i++) {
        struct stat st;
        cg_dir(ctx, i, id, dir, sizeof(dir));
        if (stat(dir, &st) < 0)
            continue;
        if (ctx->cg == SNAP__CG_V2)
            write_str(dir, "cgroup.kill", "1", NULL);
        /* Kill until empty: a process may fork between read and kill.
         * Processes leave cgroup.procs when they exit, before they are
         * reaped, so this does not depend on who reaps them. */
        for (int tries = 0; tries < 2000; tries++) {
            if (kill_tree(dir) <= 0)
                break;
            struct timespec ts = { 0, 1000 * 1000 };
            nanosleep(&ts, NULL);
        }
        int r = rmdir_tree(dir);
        if (r < 0 && rc == 0) {
            errno = -r;
            rc = wp_err_errno(err, "rmdir %s", dir);
        }
    }
    return rc;
}

bool snap__cg_contains(struct snap_ctx *ctx, const char *id, pid_t pid)
{
    char path[64], line[1024], want[128];
    bool found = false;
    FILE *f;

    (void)ctx;
    snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)pid);
    snprintf(want, sizeof(want), ":/" CG_PARENT "/%s", id);
    f = fopen(path, "re");
    if (!f)
        return false;
    while (!found && fgets(line, sizeof(line), f)) {
        char *p = strstr(line, want);
        found = p && (p[strlen(want)] == '\n' || p[strlen(want)] == '/');
    }
    fclose(f);
    return found;
}

/* The hierarchy that carries memory: v1 "memory", v2 the one tree. */
static int mem_ctrl(const struct snap_ctx *ctx)
{
    for (int i = 0; i < ctx->n_ctrl; i++)
        if (ctx->cg == SNAP__CG_V2 || strcmp(ctx->ctrl_name[i], "memory") == 0)
            return i;
    return -1;
}

/* A cgroup file holding one unsigned number; false if absent or not one. */
static bool read_u64(const char *dir, const char *file, uint64_t *v)
{
    char path[600], *text = NULL, *end;
    bool ok = false;

    snprintf(path, sizeof(path), "%s/%s", dir, file);
    if (wp_read_file(path, 64, &text, NULL, NULL) < 0)
        return false;
    errno = 0;
    unsigned long long x = strtoull(text, &end, 10);
    if (end != text && (*end == '\n' || *end == '\0') && errno == 0) {
        *v = x;
        ok = true;
    }
    free(text);
    return ok;
}

/* v2: the "kernel" line of memory.stat (6.x kernels). */
static bool read_v2_kernel(const char *dir, uint64_t *v)
{
    char path[600], line[128];
    unsigned long long x;
    bool ok = false;
    FILE *f;

    snprintf(path, sizeof(path), "%s/memory.stat", dir);
    f = fopen(path, "re");
    if (!f)
        return false;
    while (!ok && fgets(line, sizeof(line), f))
        if (sscanf(line, "kernel %llu", &x) == 1) {
            *v = x;
            ok = true;
        }
    fclose(f);
    return ok;
}

int snap_sandbox_cgroup_mem(struct snap_ctx *ctx, const char *id, struct snap_cgroup_mem *out,
                            struct wp_err *err)
{
    char dir[512];
    int i = mem_ctrl(ctx);

    memset(out, 0, sizeof(*out));
    if (!snap_name_valid(id))
        return wp_err_set(err, WP_EINVAL_INPUT, "bad sandbox id \"%s\"", id);
    if (i < 0)
        return wp_err_set(err, WP_ECONFIG, "no memory cgroup hierarchy");
    cg_dir(ctx, i, id, dir, sizeof(dir));
    if (!read_u64(dir, ctx->cg == SNAP__CG_V2 ? "memory.current" : "memory.usage_in_bytes",
                  &out->usage))
        return wp_err_set(err, WP_ENOTFOUND, "no memory usage for sandbox %s (%s)", id, dir);
    if (ctx->cg == SNAP__CG_V2)
        read_v2_kernel(dir, &out->kernel);
    else
        read_u64(dir, "memory.kmem.usage_in_bytes", &out->kernel);
    if (out->kernel > out->usage)
        out->kernel = out->usage;
    return 0;
}

/* Append the pids of dir's cgroup.procs and its children's to pids. */
static int collect_pids(const char *dir, pid_t *pids, int n, int cap, int depth)
{
    char path[1024];
    struct dirent *e;
    FILE *f;
    int pid;
    DIR *d;

    snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
    f = fopen(path, "re");
    if (!f)
        return n;
    while (n < cap && fscanf(f, "%d", &pid) == 1)
        if (pid > 0)
            pids[n++] = pid;
    fclose(f);
    /* criu may nest cgroups below the sandbox's; a few levels at most. */
    if (depth >= 8 || !(d = opendir(dir)))
        return n;
    while (n < cap && (e = readdir(d))) {
        if (e->d_type != DT_DIR || e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        n = collect_pids(path, pids, n, cap, depth + 1);
    }
    closedir(d);
    return n;
}

int snap_sandbox_pids(struct snap_ctx *ctx, const char *id, pid_t *pids, int cap,
                      struct wp_err *err)
{
    char dir[512];
    int i = mem_ctrl(ctx);

    if (!snap_name_valid(id) || cap < 0)
        return wp_err_set(err, WP_EINVAL_INPUT, "bad sandbox id \"%s\"", id);
    if (i < 0)
        return wp_err_set(err, WP_ECONFIG, "no memory cgroup hierarchy");
    cg_dir(ctx, i, id, dir, sizeof(dir));
    return collect_pids(dir, pids, 0, cap, 0);
}
