/* checkpoint.c - CRIU dump of a booted sandbox into an image, the image's
 * manifest, and image listing.
 *
 * images/<name>/
 *   manifest.json   template, digest, criu version, kernel, sizes, times
 *   criu/           CRIU image files (read-only once complete)
 *   layer/          the template sandbox's writable layer, now read-only:
 *                   the upper layer of every clone's overlay is new and
 *                   empty, this one and the rootfs are below it
 *   dump.log        CRIU's log of the dump
 * An image under construction is images/<name>.partial; snap_gc removes
 * those left by a crash.
 */
#define WP_LOG_COMPONENT "snap"
#include "snap_int.h"

#include <criu/criu.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sys/statvfs.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/timeutil.h"

/* A full disk is the likeliest reason criu wrote no log at all (it could
 * not): say so instead of leaving only its bare error number. */
static void disk_hint(const char *path, char *out, size_t cap)
{
    char dir[700];
    struct statvfs vs;
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir)
        *slash = '\0';
    if (statvfs(dir, &vs) < 0 || (uint64_t)vs.f_bavail * vs.f_frsize >= (8u << 20))
        return;
    size_t used = strlen(out);
    snprintf(out + used, cap - used, "%sthe state dir's file system has %llu KiB free (disk full?)",
             used ? " | " : "", (unsigned long long)vs.f_bavail * vs.f_frsize / 1024);
}

void snap__log_excerpt(const char *path, char *out, size_t cap)
{
    char *data = NULL, *lines[4] = { 0 };
    size_t len = 0;
    int n = 0;

    out[0] = '\0';
    if (wp_read_file(path, 64 << 20, &data, &len, NULL) < 0) {
        disk_hint(path, out, cap);
        return;
    }
    /* The cause first: the caller's message is short (struct wp_err), and
     * on a full disk criu's last lines are the failures that followed it. */
    if (memmem(data, len, "No space left on device", 23))
        snprintf(out, cap, "No space left on device");
    disk_hint(path, out, cap);
    /* Keep the last few error lines; else the last lines at all. */
    for (int pass = 0; pass < 2 && n == 0; pass++) {
        char *end = data + len;
        while (end > data && n < 3) {
            char *start = end - 1;
            while (start > data && start[-1] != '\n')
                start--;
            *(end > data && end[-1] == '\n' ? end - 1 : end) = '\0';
            /* criu always complains it cannot raise RLIMIT_NOFILE here
             * (no CAP_SYS_RESOURCE) and carries on: not a cause. */
            if (*start && !strstr(start, "RLIMIT_NOFILE") &&
                (pass == 1 || strstr(start, "Error") || strstr(start, "error")))
                lines[n++] = start;
            end = start;
        }
    }
    for (int i = n - 1; i >= 0; i--) {
        size_t used = strlen(out);
        snprintf(out + used, cap - used, "%s%s", used ? " | " : "", lines[i]);
    }
    free(data);
}

static uint64_t du_total;
static int du_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)p;
    (void)ftw;
    if (flag == FTW_F)
        du_total += (uint64_t)st->st_blocks * 512;
    return 0;
}

uint64_t snap__du(const char *path)
{
    du_total = 0;
    nftw(path, du_one, 16, FTW_PHYS | FTW_MOUNT);
    return du_total;
}

static uint64_t pages_bytes(const char *criu_dir)
{
    DIR *d = opendir(criu_dir);
    struct dirent *e;
    uint64_t total = 0;

    if (!d)
        return 0;
    while ((e = readdir(d))) {
        char p[800];
        struct stat st;
        if (strncmp(e->d_name, "pages-", 6) != 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", criu_dir, e->d_name);
        if (stat(p, &st) == 0)
            total += (uint64_t)st.st_size;
    }
    closedir(d);
    return total;
}

static int write_manifest(struct snap_ctx *ctx, const char *dir, const struct snap_template *t,
                          const char *name, double boot_ms, const struct snap_image_info *info,
                          int uns, struct wp_err *err)
{
    char *tjson = snap__template_json(t), *s = NULL, path[700];
    json_t *tobj = tjson ? json_loads(tjson, 0, NULL) : NULL;
    bool host = strcmp(t->rootfs, "host") == 0;
    int rc;

    free(tjson);
    if (!tobj)
        return wp_err_set(err, -ENOMEM, "out of memory");
    json_t *m = json_pack("{s:i, s:s, s:o, s:s, s:s, s:s, s:s, s:b, s:{s:I, s:I, s:I}, s:f, s:f, s:I}",
                          "version", 1, "name", name, "template", tobj, "template_digest",
                          t->digest, "criu_version", ctx->criu_version, "kernel", ctx->kernel,
                          "lower", host ? ctx->host_layer : t->rootfs, "host_usr", host,
                          "sizes", "pages_bytes", (json_int_t)info->pages_bytes, "image_bytes",
                          (json_int_t)info->image_bytes, "layer_bytes",
                          (json_int_t)info->layer_bytes, "boot_ms", boot_ms, "dump_ms",
                          info->dump_ms, "created_ms", (json_int_t)wp_wall_ms());
    /* The id range the image's files and userns.img use (see userns.c). */
    if (m && uns >= 0)
        json_object_set_new(m, "userns_base", json_integer(snap__userns_base(uns)));
    if (m)
        s = json_dumps(m, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(m);
    if (!s)
        return wp_err_set(err, -ENOMEM, "out of memory");
    snprintf(path, sizeof(path), "%s/manifest.json", dir);
    rc = wp_write_file(path, s, strlen(s), 0644, err);
    free(s);
    return rc;
}

/* criu dump, in a helper process: the dump blocks, and the helper's
 * environment carries criu's config (network-lock skip: the sandbox's
 * network namespace is private, with only loopback, and is replaced
 * at restore) and mode. The helper leads a process group holding criu
 * swrk, so a dump past its deadline is killed whole. Returns criu's
 * result, or WP_ETIMEDOUT. */
static int dump_in_helper(struct snap_ctx *ctx, const struct snap_sandbox *sb,
                          const struct snap_template *t, int dfd, int wfd, const char *netns)
{
    int status, rc;
    uint64_t deadline = wp_now_ns() + (uint64_t)(ctx->criu_timeout_s * 1e9);
    pid_t pid = fork();

    if (pid < 0)
        return -errno;
    if (pid == 0) {
        criu_opts *opts = NULL;
        setpgid(0, 0);
        if (criu_local_init_opts(&opts) < 0)
            _exit(100);
        snap__criu_env(ctx->probe.mode);
        bool uns = snap__userns_read(sb->dir) >= 0;
        setenv("CRIU_CONFIG_FILE", uns ? ctx->criu_dump_uns_conf : ctx->criu_dump_conf, 1);
        criu_local_set_service_binary(opts, ctx->criu_bin);
        criu_local_set_images_dir_fd(opts, dfd);
        criu_local_set_work_dir_fd(opts, wfd);
        criu_local_set_pid(opts, sb->init_pid);
        criu_local_set_log_file(opts, "dump.log");
        criu_local_set_log_level(opts, 4);
        criu_local_set_leave_running(opts, false);
        criu_local_set_manage_cgroups(opts, true);
        criu_local_set_manage_cgroups_mode(opts, CRIU_CG_MODE_SOFT);
        /* Only the hierarchies we manage go into the image, so a restore
         * never creates cgroups we would not remove (cpuset, blkio...; on
         * v2 criu calls the one tree "unified", and a hybrid host's v1
         * hierarchies stay out). */
        for (int i = 0; i < ctx->n_ctrl; i++)
                criu_local_add_cg_dump_controller(opts, ctx->ctrl_name[i]);
        if (strcmp(t->rootfs, "host") == 0)
            criu_local_add_ext_mount(opts, "/usr", "usr");
        /* /dev and the network namespace are given to each clone fresh at
         * restore rather than rebuilt by criu (see restore.c). */
        criu_local_add_ext_mount(opts, "/dev", "dev");
        snap__confine_criu_dump(ctx, opts);
        for (int i = 0; i < t->n_binds; i++) {
            char key[32];
            snprintf(key, sizeof(key), "bind%d", i);
            criu_local_add_ext_mount(opts, t->binds[i].target, key);
        }
        /* In a user namespace the network namespace stays out of the
         * image (empty-ns net in the config): see make_confs. */
        if (!uns)
            criu_local_add_external(opts, netns);
        int drc = criu_local_dump(opts);
        _exit(drc < 0 ? (-drc > 99 ? 99 : -drc) : 0);
    }
    setpgid(pid, pid); /* as the child does: no window where a kill misses swrk */
    rc = snap__wait_deadline(pid, deadline, &status);
    if (rc == WP_ETIMEDOUT) {
        snap__kill_group(pid);
        return WP_ETIMEDOUT;
    }
    if (rc < 0)
        return rc;
    if (!WIFEXITED(status))
        return -EINTR;
    return -WEXITSTATUS(status);
}

int snap_checkpoint(struct snap_ctx *ctx, struct snap_sandbox *sb, const struct snap_template *t,
                    const char *name, double boot_ms, struct snap_image_info *info,
                    struct wp_err *err)
{
    char final[600], tmp[620], path[700], log[700], excerpt[700];
    struct snap_image_info local = { 0 };
    struct stat st;
    int dfd = -1, wfd = -1, rc, uns = -1;
    uint64_t t0;

    if (!info)
        info = &local;
    if (!snap_name_valid(name)) {
        rc = wp_err_set(err, WP_EINVAL_INPUT, "bad image name \"%s\"", name);
        goto fail_sb;
    }
    if (ctx->probe.mode == SNAP_CRIU_NONE) {
        rc = wp_err_set(err, WP_ECRIU, "criu does not work on this host: %s", ctx->probe.why);
        goto fail_sb;
    }
    snprintf(final, sizeof(final), "%s/images/%s", ctx->state_dir, name);
    snprintf(tmp, sizeof(tmp), "%s.partial", final);
    if (stat(final, &st) == 0) {
        rc = wp_err_set(err, WP_EEXISTS, "image \"%s\" already exists", name);
        goto fail_sb;
    }
    wp_rm_rf(tmp, NULL);
    snprintf(path, sizeof(path), "%s/criu", tmp);
    if ((rc = wp_mkdir_p(path, 0755, err)) < 0)
        goto fail_sb;
    dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        rc = wp_err_errno(err, "open %s", path);
        goto fail;
    }
    wfd = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (wfd < 0) {
        rc = wp_err_errno(err, "open %s", tmp);
        goto fail;
    }
    char netns[64];
    snprintf(netns, sizeof(netns), "/proc/%d/ns/net", (int)sb->init_pid);
    if (stat(netns, &st) < 0) {
        rc = wp_err_errno(err, "stat %s", netns);
        goto fail;
    }
    snprintf(netns, sizeof(netns), "net[%lu]:" SNAP__NETNS_KEY, (unsigned long)st.st_ino);
    t0 = wp_now_ns();
    rc = dump_in_helper(ctx, sb, t, dfd, wfd, netns);
    info->dump_ms = (double)(wp_now_ns() - t0) / 1e6;
    snprintf(log, sizeof(log), "%s/dump.log", tmp);
    if (rc < 0) {
        char kept[700];
        /* Short: the cause and where the log is must fit one wp_err. */
        snap__log_excerpt(log, excerpt, 130);
        /* Keep the log for the operator next to where the image would be. */
        snprintf(kept, sizeof(kept), "%s/images/%s.dump-failed.log", ctx->state_dir, name);
        if (rename(log, kept) < 0) {
            size_t l = strlen(kept);
            snprintf(kept + l, sizeof(kept) - l, " (criu wrote none)");
        }
        if (rc == WP_ETIMEDOUT)
            rc = wp_err_set(err, WP_ECRIU,
                            "criu dump did not finish within %.0f s (killed; mode %s), log: %s",
                            ctx->criu_timeout_s, snap_criu_mode_name(ctx->probe.mode), kept);
        else
            rc = wp_err_set(err, WP_ECRIU, "criu dump failed (%d): %s; full log: <state dir>/%s", rc,
                            excerpt[0] ? excerpt : "no log", kept + strlen(ctx->state_dir) + 1);
        goto fail;
    }
    /* criu killed the tree after the dump: reap init, keep the layer. */
    while (waitpid(sb->init_pid, NULL, 0) < 0 && errno == EINTR)
        ;
    if (umount2(sb->root, MNT_DETACH) < 0) {
        rc = wp_err_errno(err, "unmount %s", sb->root);
        goto fail;
    }
    /* The upper dir is on the sandbox's tmpfs when confined (confine.c). */
    snprintf(path, sizeof(path), "%s/rw/upper", sb->dir);
    if (stat(path, &st) < 0)
        snprintf(path, sizeof(path), "%s/upper", sb->dir);
    char layer[700];
    snprintf(layer, sizeof(layer), "%s/layer", tmp);
    if ((rc = snap__confine_move_layer(path, layer, err)) < 0)
        goto fail;
    /* The id range goes with the layer: its files are owned by it, and
     * criu restores every clone with its maps. */
    uns = snap__userns_read(sb->dir);
    if (uns >= 0 && (rc = snap__userns_transfer(uns, sb->dir, final, err)) < 0)
        goto fail;
    snap__teardown(ctx, sb->id, 0, NULL);
    snprintf(path, sizeof(path), "%s/criu", tmp);
    info->pages_bytes = pages_bytes(path);
    info->layer_bytes = snap__du(layer);
    info->image_bytes = snap__du(path);
    if ((rc = write_manifest(ctx, tmp, t, name, boot_ms, info, uns, err)) < 0)
        goto fail;
    if (rename(tmp, final) < 0) {
        rc = wp_err_errno(err, "rename %s", tmp);
        goto fail;
    }
    log_info("checkpoint image=%s template=%s pages_mb=%.1f dump_ms=%.1f", name, t->name,
             info->pages_bytes / 1048576.0, info->dump_ms);
    close(dfd);
    close(wfd);
    free(sb);
    return 0;
fail:
    if (dfd >= 0)
        close(dfd);
    if (wfd >= 0)
        close(wfd);
    wp_rm_rf(tmp, NULL);
    snap__userns_release(uns, final); /* when it was passed on already */
fail_sb:
    snap__teardown(ctx, sb->id, sb->init_pid, NULL);
    free(sb);
    return wp_err_wrap(err, "checkpoint %s", name);
}

int snap_list_images(struct snap_ctx *ctx, snap_list_cb cb, void *arg, struct wp_err *err)
{
    char path[600];
    DIR *d;
    struct dirent *e;
    int n = 0;

    snprintf(path, sizeof(path), "%s/images", ctx->state_dir);
    d = opendir(path);
    if (!d)
        return wp_err_errno(err, "open %s", path);
    while ((e = readdir(d))) {
        char mpath[900];
        if (e->d_name[0] == '.' || !snap_name_valid(e->d_name) || strstr(e->d_name, ".partial"))
            continue;
        snprintf(mpath, sizeof(mpath), "%s/%s/manifest.json", path, e->d_name);
        json_t *m = json_load_file(mpath, 0, NULL);
        if (!m)
            continue;
        char *s = json_dumps(m, JSON_COMPACT | JSON_SORT_KEYS);
        if (s && cb)
            cb(arg, s);
        free(s);
        json_decref(m);
        n++;
    }
    closedir(d);
    return n;
}

int snap_image_delete(struct snap_ctx *ctx, const char *name, struct wp_err *err)
{
    char path[600];
    struct stat st;

    if (!snap_name_valid(name))
        return wp_err_set(err, WP_EINVAL_INPUT, "bad image name \"%s\"", name);
    snprintf(path, sizeof(path), "%s/images/%s", ctx->state_dir, name);
    if (stat(path, &st) < 0)
        return wp_err_set(err, WP_ENOTFOUND, "no image \"%s\"", name);
    /* Clones keep the image's layer as a lower layer of their overlays:
     * removing it under them is undefined behaviour for overlayfs. */
    char user[64];
    int n = snap__image_users(ctx, name, user, sizeof(user));
    if (n > 0)
        return wp_err_set(err, WP_ESTATE, "image \"%s\" is in use by %d sandbox(es), e.g. %s",
                          name, n, user);
    /* Its id range, once the files owned by it are gone. */
    char mpath[700];
    snprintf(mpath, sizeof(mpath), "%s/manifest.json", path);
    json_t *m = json_load_file(mpath, 0, NULL);
    json_t *b = json_object_get(m, "userns_base");
    int uns = json_is_integer(b) ? snap__userns_index((uid_t)json_integer_value(b)) : -1;
    json_decref(m);
    int rc = wp_rm_rf(path, err);
    if (rc == 0)
        snap__userns_release(uns, path);
    return rc;
}
