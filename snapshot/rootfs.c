/* rootfs.c - build a minimal root filesystem directory around a static
 * busybox, for trivial environments and tests. */
#define WP_LOG_COMPONENT "snap"
#include "snap_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"

#define BUSYBOX "/bin/busybox"

int snap_rootfs_busybox(const char *dir, struct wp_err *err)
{
    static const char *const dirs[] = { "bin", "etc", "proc", "dev", "tmp", "run", "root", "work", NULL };
    char path[700], tmp[600], done[700], *data = NULL;
    size_t len = 0;
    struct stat st;
    FILE *p;
    int rc;

    snprintf(done, sizeof(done), "%s/.complete", dir);
    if (stat(done, &st) == 0)
        return 0;
    if (strlen(dir) > 500 || dir[0] != '/')
        return wp_err_set(err, WP_EINVAL_INPUT, "rootfs dir must be an absolute path");
    snprintf(tmp, sizeof(tmp), "%s.tmp", dir);
    if ((rc = snap__skeleton(tmp, dirs, err)) < 0)
        return rc;
    if ((rc = wp_read_file(BUSYBOX, 16 << 20, &data, &len, err)) < 0)
        return wp_err_wrap(err, "busybox (install busybox-static)");
    snprintf(path, sizeof(path), "%s/bin/busybox", tmp);
    rc = wp_write_file(path, data, len, 0755, err);
    free(data);
    if (rc < 0)
        return rc;
    /* One symlink per applet, so /bin/sh and friends exist. */
    p = popen(BUSYBOX " --list", "re");
    if (!p)
        return wp_err_errno(err, "run busybox --list");
    char applet[128];
    while (fgets(applet, sizeof(applet), p)) {
        applet[strcspn(applet, "\n")] = '\0';
        if (!applet[0] || strchr(applet, '/') || strcmp(applet, "busybox") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/bin/%s", tmp, applet);
        if (symlink("busybox", path) < 0 && errno != EEXIST) {
            pclose(p);
            return wp_err_errno(err, "symlink %s", path);
        }
    }
    pclose(p);
    snprintf(path, sizeof(path), "%s/etc/passwd", tmp);
    if ((rc = wp_write_file(path, "root:x:0:0:root:/root:/bin/sh\n", 30, 0644, err)) < 0)
        return rc;
    snprintf(path, sizeof(path), "%s/etc/group", tmp);
    if ((rc = wp_write_file(path, "root:x:0:\n", 10, 0644, err)) < 0)
        return rc;
    wp_rm_rf(dir, NULL);
    if (rename(tmp, dir) < 0)
        return wp_err_errno(err, "rename %s", tmp);
    return wp_write_file(done, "", 0, 0644, err);
}
