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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static bool valid_saved(const char *text)
{
    for (int m = POOL_THP_ALWAYS; m <= POOL_THP_NEVER; m++)
        if (strcmp(names[m], text) == 0)
            return true;
    return false;
}

static struct pool__hostset setting(void)
{
    return (struct pool__hostset){ "thp", thp_path, valid_saved };
}

int pool__thp_recover(const char *state_dir)
{
    struct pool__hostset h = setting();
    return pool__hostset_recover(&h, state_dir);
}

int pool__thp_enable(const char *state_dir, struct wp_err *err)
{
    struct pool__hostset h = setting();
    enum pool__thp was = pool__thp_mode();

    if (was == POOL_THP_UNKNOWN)
        return wp_err_set(err, WP_ECONFIG, "--thp always: %s is not readable (no THP here?)",
                          thp_path);
    if (was == POOL_THP_ALWAYS)
        return 0; /* nothing changed, nothing to put back */
    if (pool__hostset_change(&h, state_dir, names[was], "always", err) < 0)
        return wp_err_wrap(err, "--thp always (not root?)");
    log_info("THP %s -> always while this node runs (host-wide; --thp leave keeps the host's)",
             names[was]);
    return 1;
}
