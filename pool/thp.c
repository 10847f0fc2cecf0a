/* thp.c - the host's transparent huge pages, which decide what a refill
 * costs (bench/results/clonecpu.md, issue 20).
 *
 * An eager restore copies the image into fresh anonymous memory. With THP
 * "always" those first touches take one fault per 2 MiB instead of one per
 * 4 KiB, and on this paravirtualised guest the faults were most of the
 * cost: a 200 MB clone went from ~710 to ~126 ms of CPU, below a lazy
 * clone's ~167 (which places 4 KiB pages through userfaultfd either way).
 * criu fills the pages before it applies a VMA's madvise flags, so only
 * the host-wide mode reaches them.
 *
 * --thp always sets the mode while the node runs, saved first to
 * state_dir/thp-saved and put back on a clean exit, as ksm.c does; a node
 * killed before that leaves the file and the next start puts it back. */
#define WP_LOG_COMPONENT "thp"

#include "pool/pool_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"

static const char *thp_path = "/sys/kernel/mm/transparent_hugepage/enabled";

static const char *const names[] = { "unknown", "always", "madvise", "never" };

const char *pool__thp_name(enum pool__thp m)
{
    return (unsigned)m < sizeof(names) / sizeof(names[0]) ? names[m] : "unknown";
}

enum pool__thp pool__thp_parse(const char *text)
{
    /* "always [madvise] never": the bracketed word is the mode. */
    const char *o = text ? strchr(text, '[') : NULL, *c = o ? strchr(o, ']') : NULL;
    if (!c)
        return POOL_THP_UNKNOWN;
    size_t len = (size_t)(c - o - 1);
    for (int m = POOL_THP_ALWAYS; m <= POOL_THP_NEVER; m++)
        if (strlen(names[m]) == len && memcmp(o + 1, names[m], len) == 0)
            return (enum pool__thp)m;
    return POOL_THP_UNKNOWN;
}

void pool__thp_set_path(const char *path)
{
    thp_path = path;
}

enum pool__thp pool__thp_mode(void)
{
    char *text = NULL;
    if (wp_read_file(thp_path, 256, &text, NULL, NULL) < 0)
        return POOL_THP_UNKNOWN;
    enum pool__thp m = pool__thp_parse(text);
    free(text);
    return m;
}

static int write_mode(const char *word)
{
    FILE *f = fopen(thp_path, "we");
    if (!f)
        return -errno;
    int ok = fprintf(f, "%s\n", word) > 0;
    return fclose(f) == 0 && ok ? 0 : -EIO;
}

static void saved_path(const char *state_dir, char *out, size_t cap)
{
    snprintf(out, cap, "%s/thp-saved", state_dir);
}

int pool__thp_recover(const char *state_dir)
{
    char path[400], *text = NULL;

    saved_path(state_dir, path, sizeof(path));
    if (wp_read_file(path, 64, &text, NULL, NULL) < 0)
        return 0;
    text[strcspn(text, "\n")] = '\0';
    int m = POOL_THP_ALWAYS;
    while (m <= POOL_THP_NEVER && strcmp(names[m], text) != 0)
        m++;
    int rc = m > POOL_THP_NEVER ? 0 : write_mode(text);
    if (m > POOL_THP_NEVER)
        log_warn("%s is malformed ('%.20s'); leaving THP as it is", path, text);
    else if (rc < 0)
        log_warn("cannot put THP back to %s: %s", text, strerror(-rc));
    else
        log_info("THP put back to %s", text);
    free(text);
    unlink(path);
    return m > POOL_THP_NEVER ? 0 : 1;
}

int pool__thp_enable(const char *state_dir, struct wp_err *err)
{
    char path[400];
    enum pool__thp was = pool__thp_mode();

    if (was == POOL_THP_UNKNOWN)
        return wp_err_set(err, WP_ECONFIG, "--thp always: %s is not readable (no THP here?)",
                          thp_path);
    if (was == POOL_THP_ALWAYS)
        return 0; /* nothing changed, nothing to put back */
    saved_path(state_dir, path, sizeof(path));
    int rc = wp_write_file(path, names[was], strlen(names[was]), 0600, err);
    if (rc < 0)
        return rc;
    if (write_mode("always") < 0) {
        unlink(path);
        return wp_err_set(err, WP_ECONFIG, "--thp always: cannot write %s (not root?)", thp_path);
    }
    log_info("THP %s -> always while this node runs (host-wide; --thp leave keeps the host's)",
             names[was]);
    return 1;
}
