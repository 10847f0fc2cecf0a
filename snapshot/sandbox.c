/* sandbox.c - the node's state dir: context, sandbox records, overlay
 * mounts, teardown, orphan collection and listing.
 *
 * state_dir/
 *   layers/host-v1/            generated base layer for rootfs "host"
 *   sandboxes/<id>/meta.json   who owns it (pid + start time), init pid
 *   sandboxes/<id>/{upper,work,root}   overlay; root is mounted in the host
 *                              mount namespace so the host reaches files
 *                              and Unix sockets inside the sandbox
 *   images/<name>/             see checkpoint.c
 */
#define WP_LOG_COMPONENT "snap"
#include "snap_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/timeutil.h"

#define HOST_LAYER "layers/host-v1"

static int write_text(const char *dir, const char *name, const char *text, int mode,
                      struct wp_err *err)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return wp_write_file(path, text, strlen(text), mode, err);
}

int snap__skeleton(const char *tmp, const char *const *dirs, struct wp_err *err)
{
    char path[700];
    int rc;

    wp_rm_rf(tmp, NULL);
    for (const char *const *d = dirs; *d; d++) {
        snprintf(path, sizeof(path), "%s/%s", tmp, *d);
        if ((rc = wp_mkdir_p(path, 0755, err)) < 0)
            return rc;
    }
    snprintf(path, sizeof(path), "%s/tmp", tmp);
    return chmod(path, 01777) < 0 ? wp_err_errno(err, "chmod %s", path) : 0;
}

/* The base layer for rootfs "host": merged-/usr symlinks, an empty /usr
 * for the host's read-only bind, and a minimal /etc of our own, so no host
 * file outside /usr is visible in a sandbox. Built once; images refer to
 * it by path, so it is never rewritten once complete. */
static int make_host_layer(struct snap_ctx *ctx, struct wp_err *err)
{
    static const char *const dirs[] = { "usr", "etc", "proc", "dev", "run", "root", "home", "var/tmp",
                                  "tmp", "work", NULL };
    static const char *links[][2] = { { "bin", "usr/bin" }, { "sbin", "usr/sbin" },
                                      { "lib", "usr/lib" }, { "lib64", "usr/lib64" } };
    char tmp[400], path[700], done[700];
    struct stat st;
    int rc;

    snprintf(done, sizeof(done), "%s/.complete", ctx->host_layer);
    if (stat(done, &st) == 0)
        return 0;
    snprintf(tmp, sizeof(tmp), "%s.tmp", ctx->host_layer);
    if ((rc = snap__skeleton(tmp, dirs, err)) < 0)
        return rc;
    snprintf(path, sizeof(path), "%s/var/tmp", tmp);
    chmod(path, 01777);
    snprintf(path, sizeof(path), "%s/root", tmp);
    chmod(path, 0700);
    for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", tmp, links[i][0]);
        if (symlink(links[i][1], path) < 0)
            return wp_err_errno(err, "symlink %s", path);
    }
    snprintf(path, sizeof(path), "%s/etc", tmp);
    if ((rc = write_text(path, "passwd",
                         "root:x:0:0:root:/root:/bin/sh\n"
                         "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
                         0644, err)) < 0 ||
        (rc = write_text(path, "group", "root:x:0:\nnogroup:x:65534:\n", 0644, err)) < 0 ||
        (rc = write_text(path, "hosts", "127.0.0.1 localhost\n::1 localhost\n", 0644, err)) < 0 ||
        (rc = write_text(path, "nsswitch.conf", "passwd: files\ngroup: files\nhosts: files\n",
                         0644, err)) < 0 ||
        (rc = write_text(path, "resolv.conf", "", 0644, err)) < 0)
        return rc;
    /* The loader's cache and the alternatives links (awk, editor...). */
    char *data = NULL;
    size_t len = 0;
    if (wp_read_file("/etc/ld.so.cache", 64 << 20, &data, &len, NULL) == 0) {
        snprintf(path, sizeof(path), "%s/etc/ld.so.cache", tmp);
        rc = wp_write_file(path, data, len, 0644, err);
        free(data);
        if (rc < 0)
            return rc;
    }
    DIR *d = opendir("/etc/alternatives");
    if (d) {
        struct dirent *e;
        snprintf(path, sizeof(path), "%s/etc/alternatives", tmp);
        mkdir(path, 0755);
        while ((e = readdir(d))) {
            char target[512], lpath[800], src[600];
            ssize_t n;
            if (e->d_name[0] == '.')
                continue;
            snprintf(src, sizeof(src), "/etc/alternatives/%s", e->d_name);
            n = readlink(src, target, sizeof(target) - 1);
            if (n <= 0)
                continue;
            target[n] = '\0';
            snprintf(lpath, sizeof(lpath), "%s/%s", path, e->d_name);
            if (symlink(target, lpath) < 0) {
                closedir(d);
                return wp_err_errno(err, "symlink %s", lpath);
            }
        }
        closedir(d);
    }
    wp_rm_rf(ctx->host_layer, NULL);
    if (rename(tmp, ctx->host_layer) < 0)
        return wp_err_errno(err, "rename %s", tmp);
    return write_text(ctx->host_layer, ".complete", "", 0644, err);
}

/* Restores run criu with a config file: libcriu 3.17 has no setter for
 * the RPC's lazy_pages field, nor for the network-lock method "skip"
 * (criu 4), but criu reads the file named by CRIU_CONFIG_FILE in RPC mode
 * too; the restoring helper sets it (restore.c). A clone's network
 * namespace is new and empty, so there is nothing to lock. */
static int make_confs(struct snap_ctx *ctx, struct wp_err *err)
{
    static const char eager[] = "network-lock skip\n", lazy[] = "network-lock skip\nlazy-pages\n";
    int rc;

    snprintf(ctx->criu_dump_conf, sizeof(ctx->criu_dump_conf), "%s/criu-dump.conf",
             ctx->state_dir);
    if ((rc = wp_write_file(ctx->criu_dump_conf, eager, strlen(eager), 0644, err)) < 0)
        return rc;
    snprintf(ctx->criu_restore_conf, sizeof(ctx->criu_restore_conf), "%s/criu-restore.conf",
             ctx->state_dir);
    snprintf(ctx->criu_lazy_conf, sizeof(ctx->criu_lazy_conf), "%s/criu-lazy.conf",
             ctx->state_dir);
    rc = wp_write_file(ctx->criu_restore_conf, eager, strlen(eager), 0644, err);
    if (rc < 0 || (rc = wp_write_file(ctx->criu_lazy_conf, lazy, strlen(lazy), 0644, err)) < 0)
        return rc;
    /* A sandbox in a user namespace has a network namespace that belongs
     * to it: one made outside cannot be handed in (criu's restored root
     * task, already in the new user namespace, may not setns into it).
     * criu leaves it out of the image and makes an empty one at restore,
     * set up from the setup-namespaces notification (restore.c). */
    static const char ueager[] = "network-lock skip\nempty-ns net\n",
                      ulazy[] = "network-lock skip\nempty-ns net\nlazy-pages\n";
    snprintf(ctx->criu_dump_uns_conf, sizeof(ctx->criu_dump_uns_conf), "%s/criu-uns-dump.conf",
             ctx->state_dir);
    snprintf(ctx->criu_restore_uns_conf, sizeof(ctx->criu_restore_uns_conf),
             "%s/criu-uns-restore.conf", ctx->state_dir);
    snprintf(ctx->criu_lazy_uns_conf, sizeof(ctx->criu_lazy_uns_conf), "%s/criu-uns-lazy.conf",
             ctx->state_dir);
    if ((rc = wp_write_file(ctx->criu_dump_uns_conf, ueager, strlen(ueager), 0644, err)) < 0 ||
        (rc = wp_write_file(ctx->criu_restore_uns_conf, ueager, strlen(ueager), 0644, err)) < 0)
        return rc;
    return wp_write_file(ctx->criu_lazy_uns_conf, ulazy, strlen(ulazy), 0644, err);
}

/* User namespaces, or the operator's explicit leave to run without. Root
 * inside a sandbox reaches its dir by path (stage 1 mounts /dev and binds
 * there), so the state dir and sandboxes/ get search permission for
 * others; each sandbox dir is 0710 for its own range's group only. */
static int userns_setup(struct snap_ctx *ctx, const struct snap_config *cfg,
                        struct wp_err *err)
{
    char why[256], path[400];
    bool allow = cfg && cfg->insecure_allow_unconfined;
    struct stat st;

    if (allow && cfg->no_userns) {
        log_warn("user namespaces turned off (no_userns): sandboxes run as the host's root");
        return 0;
    }
    if (!snap__userns_supported(why, sizeof(why))) {
        if (!allow)
            return wp_err_set(err, WP_ECONFIG,
                              "this host cannot give sandboxes a user namespace (%s): refusing "
                              "to run code as the host's root; pass "
                              "--insecure-allow-unconfined to run anyway",
                              why);
        log_warn("no user namespaces (%s): sandboxes run UNCONFINED as the host's root "
                 "(--insecure-allow-unconfined)",
                 why);
        return 0;
    }
    ctx->userns = true;
    /* The dirs above the state dir are the operator's: say which one
     * stops a sandbox's root rather than change it. */
    snprintf(path, sizeof(path), "%s", ctx->state_dir);
    for (char *slash = strrchr(path, '/'); slash; slash = strrchr(path, '/')) {
        *slash = '\0';
        const char *p = path[0] ? path : "/";
        if (stat(p, &st) == 0 && !(st.st_mode & S_IXOTH))
            return wp_err_set(err, WP_ECONFIG,
                              "%s (above the state dir) is not searchable by others (mode %o): "
                              "a sandbox's root, an unprivileged host id in its user namespace, "
                              "reaches its dir by path; chmod o+x it or use another state dir",
                              p, (unsigned)(st.st_mode & 07777));
    }
    snprintf(path, sizeof(path), "%s/sandboxes", ctx->state_dir);
    if (stat(ctx->state_dir, &st) < 0 || chmod(ctx->state_dir, (st.st_mode & 07777) | 0111) < 0 ||
        chmod(path, 0711) < 0)
        return wp_err_errno(err, "make %s searchable", path);
    return 0;
}

/* How criu runs here: forced by the operator, or probed (cached). */
static int criu_setup(struct snap_ctx *ctx, const struct snap_config *cfg, struct wp_err *err)
{
    const char *ms = cfg && cfg->criu_mode ? cfg->criu_mode : getenv("WARMPOOL_CRIU_MODE");
    const char *ts = getenv("WARMPOOL_CRIU_TIMEOUT");
    const char *ls = getenv("WARMPOOL_CRIU_LOG_LEVEL");
    enum snap_criu_mode mode;
    int rc;

    if (snap_criu_mode_parse(ms, &mode) < 0)
        return wp_err_set(err, WP_ECONFIG,
                          "criu mode \"%s\": want auto, default, no-breakpoints or none", ms);
    ctx->criu_timeout_s = cfg && cfg->criu_timeout_s > 0 ? cfg->criu_timeout_s
                          : ts && atof(ts) > 0        ? atof(ts)
                                                      : 120;
    ctx->criu_log_level = cfg && cfg->criu_log_level ? cfg->criu_log_level : 4;
    if (!(cfg && cfg->criu_log_level) && ls) {
        char *end;
        long l = strtol(ls, &end, 10);
        if (*ls == '\0' || *end != '\0' || l < 1 || l > 4)
            return wp_err_set(err, WP_ECONFIG, "WARMPOOL_CRIU_LOG_LEVEL \"%s\": want 1 to 4", ls);
        ctx->criu_log_level = (int)l;
    }
    const char *lr = getenv("WARMPOOL_CRIU_LAZY_READY");
    if (lr && strcmp(lr, "poll") != 0 && strcmp(lr, "status-fd") != 0)
        return wp_err_set(err, WP_ECONFIG, "WARMPOOL_CRIU_LAZY_READY \"%s\": want status-fd or poll",
                          lr);
    ctx->lazy_ready_poll = (cfg && cfg->lazy_ready_poll) || (lr && strcmp(lr, "poll") == 0);
    if (ctx->criu_log_level < 1 || ctx->criu_log_level > 4)
        return wp_err_set(err, WP_ECONFIG, "criu log level %d: want 1 to 4", ctx->criu_log_level);
    if ((rc = snap__criu_version(ctx->criu_bin, ctx->criu_version, sizeof(ctx->criu_version),
                                 err)) < 0)
        return rc;
    if (mode != SNAP_CRIU_UNKNOWN) {
        memset(&ctx->probe, 0, sizeof(ctx->probe));
        ctx->probe.mode = mode;
        ctx->probe.lazy_ok = mode != SNAP_CRIU_NONE;
        ctx->probe.forced = true;
        snap__criu_key(ctx->criu_bin, ctx->criu_version, ctx->probe.key, sizeof(ctx->probe.key));
        if (mode == SNAP_CRIU_NONE)
            snprintf(ctx->probe.why, sizeof(ctx->probe.why), "criu turned off by configuration");
        return 0;
    }
    struct snap_probe_config pc = {
        .criu_bin = ctx->criu_bin,
        .cache_dir = cfg && cfg->probe_cache_dir ? cfg->probe_cache_dir : getenv("WARMPOOL_CRIU_CACHE"),
        .deadline_s = cfg ? cfg->probe_timeout_s : 0,
    };
    return snap_criu_probe(&pc, &ctx->probe, err);
}

int snap_ctx_open(const struct snap_config *cfg, struct snap_ctx **out, struct wp_err *err)
{
    struct snap_ctx *ctx;
    struct utsname u;
    char path[400];
    const char *dir = cfg && cfg->state_dir ? cfg->state_dir : "/var/lib/warmpool";
    const char *criu = cfg && cfg->criu_bin ? cfg->criu_bin : getenv("WARMPOOL_CRIU");
    int rc;

    if (!criu)
        criu = WP_PREFIX "/bin/criu";
    if (dir[0] != '/' || strlen(dir) > 200)
        return wp_err_set(err, WP_EINVAL_INPUT, "state dir must be an absolute path under 200 bytes");
    if (access(criu, X_OK) < 0)
        return wp_err_errno(err, "criu at %s (run `make deps`)", criu);
    ctx = calloc(1, sizeof(*ctx));
    if (!ctx)
        return wp_err_set(err, -ENOMEM, "out of memory");
    snprintf(ctx->state_dir, sizeof(ctx->state_dir), "%s", dir);
    snprintf(ctx->criu_bin, sizeof(ctx->criu_bin), "%s", criu);
    snprintf(ctx->host_layer, sizeof(ctx->host_layer), "%s/" HOST_LAYER, dir);
    ctx->unconfined = cfg && cfg->unconfined;
    if (ctx->unconfined)
        log_warn("sandboxes run UNCONFINED (no capability drop, seccomp, /proc masks, device "
                 "list, disk limits): benchmark baseline or --insecure-allow-unconfined");
    uname(&u);
    snprintf(ctx->kernel, sizeof(ctx->kernel), "%s", u.release);
    for (const char *sub = "sandboxes\0images\0layers\0"; *sub; sub += strlen(sub) + 1) {
        snprintf(path, sizeof(path), "%s/%s", dir, sub);
        if ((rc = wp_mkdir_p(path, 0700, err)) < 0)
            goto fail;
    }
    if ((rc = snap__cg_detect(ctx, cfg ? cfg->cgroup2_root : NULL, err)) < 0 || (rc = userns_setup(ctx, cfg, err)) < 0 ||
        (rc = criu_setup(ctx, cfg, err)) < 0 ||
        (rc = make_confs(ctx, err)) < 0 || (rc = make_host_layer(ctx, err)) < 0 ||
        (rc = snap__confine_compile(ctx, err)) < 0)
        goto fail;
    /* Sandboxes we start outlive the helper processes that start them. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) {
        rc = wp_err_errno(err, "PR_SET_CHILD_SUBREAPER");
        goto fail;
    }
    *out = ctx;
    return 0;
fail:
    snap__confine_release(ctx);
    free(ctx);
    return wp_err_wrap(err, "snapshot state %s", dir);
}

void snap_ctx_close(struct snap_ctx *ctx)
{
    if (ctx)
        snap__confine_release(ctx);
    free(ctx);
}

const char *snap_ctx_state_dir(const struct snap_ctx *ctx)
{
    return ctx->state_dir;
}

bool snap_ctx_userns(const struct snap_ctx *ctx)
{
    return ctx->userns;
}

const char *snap_ctx_cgroup_layout(const struct snap_ctx *ctx)
{
    return ctx->cg == SNAP__CG_V2 ? "v2" : "v1";
}

const struct snap_probe *snap_ctx_criu(const struct snap_ctx *ctx)
{
    return &ctx->probe;
}

void snap__gen_id(const char *prefix, char *out, size_t cap)
{
    static unsigned counter;
    uint32_t r = 0;

    /* pid + a per-process counter are unique among live owners; the
     * random part keeps ids of a restarted owner (same pid) apart. */
    if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != sizeof(r))
        r = (uint32_t)wp_now_ns();
    snprintf(out, cap, "%.30s-%x-%x-%04x", prefix, (unsigned)getpid(), ++counter, r & 0xffff);
    out[strspn(out, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")] = '\0';
}

int snap__sandbox_dirs(struct snap_ctx *ctx, const char *id, struct snap_sandbox *sb,
                       struct wp_err *err)
{
    char path[600];
    struct stat st;
    int rc;

    snprintf(sb->dir, sizeof(sb->dir), "%s/sandboxes/%s", ctx->state_dir, id);
    snprintf(sb->root, sizeof(sb->root), "%s/root", sb->dir);
    if (stat(sb->dir, &st) == 0 || snap__cg_exists(ctx, id))
        return wp_err_set(err, WP_EEXISTS, "sandbox %s already exists", id);
    if (mkdir(sb->dir, 0700) < 0)
        return wp_err_errno(err, "mkdir %s", sb->dir);
    for (const char *sub = "upper\0work\0root\0"; *sub; sub += strlen(sub) + 1) {
        snprintf(path, sizeof(path), "%s/%s", sb->dir, sub);
        if (mkdir(path, 0755) < 0) {
            rc = wp_err_errno(err, "mkdir %s", path);
            wp_rm_rf(sb->dir, NULL);
            return rc;
        }
    }
    return 0;
}

int snap__mount_overlay(const struct snap_sandbox *sb, const char *lowers, const char *rw,
                        struct wp_err *err)
{
    char opts[2048];

    if (snprintf(opts, sizeof(opts), "lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lowers,
                 rw, rw) >= (int)sizeof(opts))
        return wp_err_set(err, WP_EINVAL_INPUT, "overlay options too long");
    if (mount("overlay", sb->root, "overlay", MS_NODEV, opts) < 0)
        return wp_err_errno(err, "mount overlay on %s (%s)", sb->root, opts);
    return 0;
}

int snap__make_dev(const struct snap_sandbox *sb, struct wp_err *err)
{
    static const struct { const char *name; int major, minor; } devs[] = {
        { "null", 1, 3 }, { "zero", 1, 5 }, { "full", 1, 7 },
        { "random", 1, 8 }, { "urandom", 1, 9 }, { "tty", 5, 0 },
    };
    static const struct { const char *name, *target; } links[] = {
        { "fd", "/proc/self/fd" }, { "stdin", "/proc/self/fd/0" },
        { "stdout", "/proc/self/fd/1" }, { "stderr", "/proc/self/fd/2" },
    };
    char path[700];

    snprintf(path, sizeof(path), "%s/dev", sb->dir);
    if (mkdir(path, 0755) < 0)
        return wp_err_errno(err, "mkdir %s", path);
    for (size_t i = 0; i < sizeof(devs) / sizeof(devs[0]); i++) {
        snprintf(path, sizeof(path), "%s/dev/%s", sb->dir, devs[i].name);
        if (mknod(path, S_IFCHR | 0666, makedev(devs[i].major, devs[i].minor)) < 0)
            return wp_err_errno(err, "mknod %s", path);
        chmod(path, 0666); /* mknod honours the umask */
    }
    for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
        snprintf(path, sizeof(path), "%s/dev/%s", sb->dir, links[i].name);
        if (symlink(links[i].target, path) < 0)
            return wp_err_errno(err, "symlink %s", path);
    }
    snprintf(path, sizeof(path), "%s/dev/shm", sb->dir);
    if (mkdir(path, 01777) < 0 || chmod(path, 01777) < 0)
        return wp_err_errno(err, "mkdir %s", path);
    return 0;
}

/* Start time (field 22) and state (field 3) of pid from /proc/<pid>/stat;
 * 0 when there is no such process. */
static unsigned long long proc_stat(pid_t pid, char *state)
{
    char path[64], buf[1024];
    FILE *f;
    unsigned long long start = 0;

    *state = '?';
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    f = fopen(path, "re");
    if (!f)
        return 0;
    if (fgets(buf, sizeof(buf), f)) {
        char *p = strrchr(buf, ')'); /* comm may hold spaces */
        if (!p || sscanf(p + 2, "%c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
                         state, &start) != 2)
            start = 0;
    }
    fclose(f);
    return start;
}

static unsigned long long proc_start_time(pid_t pid)
{
    char state;
    return proc_stat(pid, &state);
}

/* The init pid goes into a file of its own, written once: rewriting
 * meta.json would free the old file's blocks, and on a file system mounted
 * with `discard` that is a synchronous device round trip on the restore
 * path. */
int snap__pid_write(const struct snap_sandbox *sb, struct wp_err *err)
{
    char path[600], text[64];
    int n = snprintf(text, sizeof(text), "%d %d\n", (int)sb->init_pid, (int)sb->lazy_pid);

    snprintf(path, sizeof(path), "%s/init.pid", sb->dir);
    return wp_write_file(path, text, (size_t)n, 0600, err);
}

int snap__meta_write(struct snap_ctx *ctx, const struct snap_sandbox *sb, const char *kind,
                     struct wp_err *err)
{
    char path[600], *s;
    json_t *o;
    int rc;

    (void)ctx;
    o = json_pack("{s:s, s:s, s:s, s:i, s:I, s:I, s:s}", "id", sb->id, "kind", kind,
                  "image", sb->image, "owner_pid", (int)getpid(), "owner_start",
                  (json_int_t)proc_start_time(getpid()), "created_ms", (json_int_t)wp_wall_ms(),
                  "root", sb->root);
    if (!o)
        return wp_err_set(err, -ENOMEM, "out of memory");
    s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s)
        return wp_err_set(err, -ENOMEM, "out of memory");
    snprintf(path, sizeof(path), "%s/meta.json", sb->dir);
    rc = wp_write_file(path, s, strlen(s), 0600, err);
    free(s);
    return rc;
}

/* Unmount everything mounted at or below dir (the root overlay, and what a
 * crashed criu may have left, such as its cgroup yard), deepest first. */
static int unmount_under(const char *dir, struct wp_err *err)
{
    char line[4096], mp[4096], *mps[64];
    size_t dlen = strlen(dir);
    int n = 0, rc = 0;
    FILE *f = fopen("/proc/self/mountinfo", "re");

    if (!f)
        return wp_err_errno(err, "open /proc/self/mountinfo");
    while (fgets(line, sizeof(line), f) && n < 64) {
        /* Mount points with spaces are octal-escaped; ours have none. */
        if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) != 1)
            continue;
        if (strncmp(mp, dir, dlen) == 0 && (mp[dlen] == '/' || mp[dlen] == '\0'))
            mps[n++] = strdup(mp);
    }
    fclose(f);
    /* Later lines are mounted on top of earlier ones: undo in reverse. */
    for (int i = n - 1; i >= 0; i--) {
        if (mps[i] && umount2(mps[i], MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT &&
            rc == 0)
            rc = wp_err_errno(err, "unmount %s", mps[i]);
        free(mps[i]);
    }
    return rc;
}

/* The pid tracing PID (TracerPid in its status), 0 if none or unknown. */
static pid_t tracer_of(pid_t pid)
{
    char path[64], line[256];
    pid_t t = 0;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    if (!(f = fopen(path, "re")))
        return 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "TracerPid: %d", &t) == 1)
            break;
    fclose(f);
    return t;
}

int snap__teardown(struct snap_ctx *ctx, const char *id, pid_t init_pid, struct wp_err *err)
{
    char dir[600];
    int rc = 0, r;

    snprintf(dir, sizeof(dir), "%s/sandboxes/%s", ctx->state_dir, id);
    if (init_pid > 0) {
        /* A criu still holding it (a dump or restore whose helper was
         * killed, as a node's shutdown kills its builds) would keep it
         * from dying, and this wait would never end: that criu and its
         * group go first. */
        pid_t tracer = tracer_of(init_pid);
        if (tracer > 0 && tracer != getpid()) {
            pid_t g = getpgid(tracer);
            log_warn("destroy %s: criu pid %d still holds its init: killed", id, (int)tracer);
            if (g > 0 && g != getpgrp())
                kill(-g, SIGKILL);
            kill(tracer, SIGKILL);
        }
        /* Killing PID 1 of the namespace kills every process in it. */
        kill(init_pid, SIGKILL);
        while (waitpid(init_pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    r = snap__cg_destroy(ctx, id, err);
    if (r < 0 && rc == 0)
        rc = r;
    /* Its veth went with its namespace; the nft objects and the address
     * slot are released here (the record is in the dir removed below). */
    r = snap__net_release(ctx, id, rc == 0 ? err : NULL);
    if (r < 0 && rc == 0)
        rc = r;
    r = unmount_under(dir, rc == 0 ? err : NULL);
    if (r < 0 && rc == 0)
        rc = r;
    /* Its id range, unless a checkpoint passed it to an image. */
    snap__userns_release(snap__userns_read(dir), dir);
    r = wp_rm_rf(dir, rc == 0 ? err : NULL);
    if (r < 0 && rc == 0)
        rc = r;
    return rc;
}

void snap_sandbox_free(struct snap_sandbox *sb)
{
    free(sb);
}

int snap_destroy(struct snap_ctx *ctx, struct snap_sandbox *sb, struct wp_err *err)
{
    int rc;

    if (!sb)
        return 0;
    /* The lazy-pages daemon lived in the clone's cgroup, so the teardown
     * killed it too. It is never signalled or waited for by pid here: it
     * may have exited long ago and its pid been reused; the owner's child
     * reaping (libev in a daemon) collects it. */
    rc = snap__teardown(ctx, sb->id, sb->init_pid, err);
    if (rc < 0)
        wp_err_wrap(err, "destroy %s", sb->id);
    else
        log_debug("destroyed sandbox=%s", sb->id);
    free(sb);
    return rc;
}

static json_t *meta_load(struct snap_ctx *ctx, const char *id)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/sandboxes/%s/meta.json", ctx->state_dir, id);
    return json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
}

static pid_t read_init_pid(struct snap_ctx *ctx, const char *id)
{
    char path[600], *text = NULL;
    int pid = 0;

    snprintf(path, sizeof(path), "%s/sandboxes/%s/init.pid", ctx->state_dir, id);
    if (wp_read_file(path, 64, &text, NULL, NULL) < 0)
        return 0;
    if (sscanf(text, "%d", &pid) != 1 || pid <= 0 || pid >= (1 << 22))
        pid = 0;
    free(text);
    return (pid_t)pid;
}

int snap_sandbox_adopt(struct snap_ctx *ctx, const struct snap_sandbox *sb, struct wp_err *err)
{
    char path[600], *s;
    json_t *meta = meta_load(ctx, sb->id);
    int rc;

    if (!meta)
        return wp_err_set(err, WP_ENOTFOUND, "no record of sandbox \"%s\"", sb->id);
    json_object_set_new(meta, "owner_pid", json_integer(getpid()));
    json_object_set_new(meta, "owner_start", json_integer((json_int_t)proc_start_time(getpid())));
    s = json_dumps(meta, JSON_COMPACT);
    json_decref(meta);
    if (!s)
        return wp_err_set(err, -ENOMEM, "out of memory");
    snprintf(path, sizeof(path), "%s/sandboxes/%s/meta.json", ctx->state_dir, sb->id);
    rc = wp_write_file(path, s, strlen(s), 0600, err);
    free(s);
    return rc;
}

int snap_destroy_id(struct snap_ctx *ctx, const char *id, struct wp_err *err)
{
    char dir[600];
    struct stat st;
    int rc;

    if (!snap_name_valid(id))
        return wp_err_set(err, WP_EINVAL_INPUT, "bad sandbox id \"%s\"", id);
    snprintf(dir, sizeof(dir), "%s/sandboxes/%s", ctx->state_dir, id);
    if (stat(dir, &st) < 0 && !snap__cg_exists(ctx, id))
        return wp_err_set(err, WP_ENOTFOUND, "no sandbox \"%s\"", id);
    /* Only trust the recorded pid while it is in the sandbox's cgroup:
     * the cgroup kill below covers every other case. */
    pid_t pid = read_init_pid(ctx, id);
    if (pid > 0 && !snap__cg_contains(ctx, id, pid))
        pid = 0;
    rc = snap__teardown(ctx, id, pid, err);
    return rc < 0 ? wp_err_wrap(err, "destroy %s", id) : 0;
}

/* The recorded owner (pid + start time) still runs. A zombie does not: it
 * has exited, and its parent may take a long time to reap it (a PID 1 that
 * reaps late, a parent that never does), so /proc/<pid> alone says
 * nothing. */
static bool owner_running(json_t *meta, pid_t *pid_out)
{
    json_t *p = json_object_get(meta, "owner_pid"), *s = json_object_get(meta, "owner_start");
    char state;

    *pid_out = 0;
    if (!json_is_integer(p) || !json_is_integer(s))
        return false;
    json_int_t pid = json_integer_value(p);
    if (pid <= 0 || pid >= (1 << 22))
        return false;
    *pid_out = (pid_t)pid;
    unsigned long long start = proc_stat((pid_t)pid, &state);
    return start != 0 && start == (unsigned long long)json_integer_value(s) && state != 'Z' &&
           state != 'X' && state != 'x';
}

static bool owner_alive(json_t *meta)
{
    pid_t pid;
    return owner_running(meta, &pid);
}

static bool pid_in(pid_t pid, const pid_t *set, int n)
{
    for (int i = 0; i < n; i++)
        if (set[i] == pid)
            return true;
    return false;
}

static bool id_in(const char *id, const char *const *set, int n)
{
    for (int i = 0; i < n; i++)
        if (set[i] && strcmp(set[i], id) == 0)
            return true;
    return false;
}

static void gc_left(const struct snap_gc_opts *o, const char *id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void gc_left(const struct snap_gc_opts *o, const char *id, const char *fmt, ...)
{
    char why[300];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    log_warn("gc: left sandbox=%s: %s", id, why);
    if (o && o->on_left)
        o->on_left(o->arg, id, why);
}

/* Made after the gc began (its owner is at work on it, or a sandbox with
 * no record yet is being set up): not for this round to judge. */
static bool too_young(struct snap_ctx *ctx, const char *id, json_t *meta, uint64_t since_ms)
{
    if (!since_ms)
        return false;
    json_t *c = json_object_get(meta, "created_ms");
    if (json_is_integer(c))
        return (uint64_t)json_integer_value(c) >= since_ms;
    /* No record: the dir and its record are made in one call; allow a slow
     * set-up a few seconds before calling it a crash's leftover. */
    char dir[600];
    struct stat st;
    snprintf(dir, sizeof(dir), "%s/sandboxes/%s", ctx->state_dir, id);
    if (stat(dir, &st) < 0)
        return true; /* gone meanwhile */
    return (uint64_t)st.st_mtime * 1000 + 5000 >= since_ms;
}

/* One sandbox: 1 destroyed, 0 kept (in use, or left and reported). */
static int gc_one(struct snap_ctx *ctx, const char *id, const struct snap_gc_opts *o)
{
    struct wp_err derr;
    json_t *meta = meta_load(ctx, id);
    pid_t owner = 0;
    bool running = meta && owner_running(meta, &owner);
    bool young = too_young(ctx, id, meta, o ? o->since_ms : 0);
    json_decref(meta);

    if (young || (o && id_in(id, o->keep_ids, o->n_keep_ids)))
        return 0;
    if (o && owner > 0 && pid_in(owner, o->keep_owners, o->n_keep_owners))
        return 0; /* the caller's, or a helper of the caller's just done */
    if (running) {
        if (o && o->on_left) {
            char comm[64] = "?", path[64], *text = NULL;
            snprintf(path, sizeof(path), "/proc/%d/comm", (int)owner);
            if (wp_read_file(path, 64, &text, NULL, NULL) == 0) {
                snprintf(comm, sizeof(comm), "%s", text);
                comm[strcspn(comm, "\n")] = '\0';
            }
            free(text);
            gc_left(o, id, "its owner pid %d (%s) is still running", (int)owner, comm);
        }
        return 0;
    }
    log_info("gc: removing orphan sandbox=%s", id);
    if (snap_destroy_id(ctx, id, &derr) < 0 && derr.code != WP_ENOTFOUND) {
        gc_left(o, id, "destroy failed: %s", derr.msg);
        return 0;
    }
    return 1;
}

int snap_gc_with(struct snap_ctx *ctx, const struct snap_gc_opts *o, struct wp_err *err)
{
    char path[600];
    DIR *d;
    struct dirent *e;
    int cleaned = 0;

    snprintf(path, sizeof(path), "%s/sandboxes", ctx->state_dir);
    d = opendir(path);
    if (!d)
        return wp_err_errno(err, "open %s", path);
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !snap_name_valid(e->d_name))
            continue;
        cleaned += gc_one(ctx, e->d_name, o);
    }
    closedir(d);
    /* Half-made images (a dump interrupted by a crash). A caller whose
     * builds may be writing one asks for sandboxes only. */
    snprintf(path, sizeof(path), "%s/images", ctx->state_dir);
    d = (o && o->sandboxes_only) ? NULL : opendir(path);
    if (d) {
        while ((e = readdir(d))) {
            size_t n = strlen(e->d_name);
            if (n > 8 && strcmp(e->d_name + n - 8, ".partial") == 0) {
                char p2[900];
                snprintf(p2, sizeof(p2), "%s/%s", path, e->d_name);
                log_info("gc: removing partial image %s", e->d_name);
                if (wp_rm_rf(p2, NULL) == 0)
                    cleaned++;
            }
        }
        closedir(d);
    }
    /* Address slots and nft objects of sandboxes whose dir is gone (a
     * crash between removing the dir and releasing them, any state dir). */
    cleaned += snap__net_sweep();
    cleaned += snap__userns_sweep();
    return cleaned;
}

int snap_gc(struct snap_ctx *ctx, struct wp_err *err)
{
    return snap_gc_with(ctx, NULL, err);
}

int snap_list_sandboxes(struct snap_ctx *ctx, snap_list_cb cb, void *arg, struct wp_err *err)
{
    char path[600];
    DIR *d;
    struct dirent *e;
    int n = 0;

    snprintf(path, sizeof(path), "%s/sandboxes", ctx->state_dir);
    d = opendir(path);
    if (!d)
        return wp_err_errno(err, "open %s", path);
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        json_t *meta = meta_load(ctx, e->d_name);
        if (!meta)
            meta = json_pack("{s:s}", "id", e->d_name);
        json_object_set_new(meta, "owner_alive", json_boolean(owner_alive(meta)));
        json_object_set_new(meta, "init_pid", json_integer(read_init_pid(ctx, e->d_name)));
        json_object_set_new(meta, "processes", json_integer(snap__cg_nprocs(ctx, e->d_name)));
        char *s = json_dumps(meta, JSON_COMPACT | JSON_SORT_KEYS);
        if (s && cb)
            cb(arg, s);
        free(s);
        json_decref(meta);
        n++;
    }
    closedir(d);
    return n;
}

int snap_sandbox_open(struct snap_ctx *ctx, const char *id, struct snap_sandbox **out,
                      struct wp_err *err)
{
    struct snap_sandbox *sb;
    json_t *meta, *v;

    if (!snap_name_valid(id))
        return wp_err_set(err, WP_EINVAL_INPUT, "bad sandbox id \"%s\"", id);
    meta = meta_load(ctx, id);
    if (!meta)
        return wp_err_set(err, WP_ENOTFOUND, "no sandbox \"%s\"", id);
    sb = calloc(1, sizeof(*sb));
    if (!sb) {
        json_decref(meta);
        return wp_err_set(err, -ENOMEM, "out of memory");
    }
    snprintf(sb->id, sizeof(sb->id), "%s", id);
    snprintf(sb->dir, sizeof(sb->dir), "%s/sandboxes/%s", ctx->state_dir, id);
    snprintf(sb->root, sizeof(sb->root), "%s/root", sb->dir);
    v = json_object_get(meta, "image");
    if (json_is_string(v))
        snprintf(sb->image, sizeof(sb->image), "%s", json_string_value(v));
    json_decref(meta);
    sb->init_pid = read_init_pid(ctx, id);
    if (sb->init_pid > 0 && !snap__cg_contains(ctx, id, sb->init_pid))
        sb->init_pid = 0;
    if (sb->init_pid <= 0) {
        free(sb);
        return wp_err_set(err, WP_ESTATE, "sandbox \"%s\" is not running", id);
    }
    *out = sb;
    return 0;
}

int snap__image_users(struct snap_ctx *ctx, const char *image, char *first, size_t cap)
{
    char path[600];
    struct dirent *e;
    DIR *d;
    int n = 0;

    snprintf(path, sizeof(path), "%s/sandboxes", ctx->state_dir);
    d = opendir(path);
    if (!d)
        return 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !snap_name_valid(e->d_name))
            continue;
        json_t *meta = meta_load(ctx, e->d_name);
        const char *img = json_string_value(json_object_get(meta, "image"));
        if (img && strcmp(img, image) == 0) {
            if (n++ == 0)
                snprintf(first, cap, "%s", e->d_name);
        }
        json_decref(meta);
    }
    closedir(d);
    return n;
}
