/* hostset.c - a host-wide kernel setting the node changes while it runs
 * (THP's mode, free page reporting): the value it found is saved in
 * state_dir/<name>-saved before the change and put back on a clean exit;
 * a node killed before that leaves the file, and the next start puts the
 * value back. Only a value the setting's own check accepts is written back
 * (the file is ours, but a node must not write junk into sysfs). */
#define WP_LOG_COMPONENT "hostset"

#include "pool/pool_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"

int pool__hostset_write(const char *path, const char *value)
{
    FILE *f = fopen(path, "we");
    if (!f)
        return -errno;
    int ok = fprintf(f, "%s\n", value) > 0;
    int e = fclose(f) == 0 ? 0 : errno;
    return ok && !e ? 0 : -(e ? e : EIO);
}

static void saved_path(const struct pool__hostset *h, const char *state_dir, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s-saved", state_dir, h->name);
}

int pool__hostset_change(const struct pool__hostset *h, const char *state_dir, const char *was,
                         const char *to, struct wp_err *err)
{
    char path[400];
    int rc;

    saved_path(h, state_dir, path, sizeof(path));
    if ((rc = wp_write_file(path, was, strlen(was), 0600, err)) < 0)
        return rc;
    if ((rc = pool__hostset_write(h->path, to)) < 0) {
        unlink(path);
        return wp_err_set(err, WP_ECONFIG, "cannot write %s to %s: %s", to, h->path,
                          strerror(-rc));
    }
    return 0;
}

int pool__hostset_recover(const struct pool__hostset *h, const char *state_dir)
{
    char path[400], *text = NULL;

    saved_path(h, state_dir, path, sizeof(path));
    if (wp_read_file(path, 64, &text, NULL, NULL) < 0)
        return 0;
    text[strcspn(text, "\n")] = '\0';
    bool ok = h->valid(text);
    int rc = ok ? pool__hostset_write(h->path, text) : 0;
    if (!ok)
        log_warn("%s is malformed ('%.20s'); leaving %s as it is", path, text, h->path);
    else if (rc < 0)
        log_warn("cannot put %s back to %s: %s", h->path, text, strerror(-rc));
    else
        log_info("%s put back to %s", h->path, text);
    free(text);
    unlink(path);
    return ok ? 1 : 0;
}
