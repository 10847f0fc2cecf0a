/* ksm.c - the node drives the kernel's samepage merging while it holds
 * mergeable clones, and leaves the host's settings as it found them.
 *
 * The settings found at start go to state_dir/ksm-saved before the first
 * change; a clean exit writes them back and removes the file. A node
 * killed before that leaves the file: the next start puts those values
 * back first (they are the host's, not the killed run's). */
#define WP_LOG_COMPONENT "ksm"
#include "pool/pool_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"

#define KSM_DIR "/sys/kernel/mm/ksm"

/* smart_scan (Linux 6.7+) skips pages that found no partner for a growing
 * number of scans: a clone that was alone when it was first scanned then
 * stays unmerged for minutes after its siblings arrive (bench/results/
 * ksm.md). The node turns it off while it drives KSM; kernels without it
 * have three knobs. */
static const char *const knobs[] = { "run", "pages_to_scan", "sleep_millisecs", "smart_scan" };
#define NKNOBS 4

static int read_knob(const char *name, long *v)
{
    char path[128], *text = NULL;
    int rc;

    snprintf(path, sizeof(path), KSM_DIR "/%s", name);
    rc = wp_read_file(path, 64, &text, NULL, NULL);
    if (rc == 0) {
        *v = strtol(text, NULL, 10);
        free(text);
    }
    return rc;
}

static int write_knob(const char *name, long v)
{
    char path[128], text[32];
    FILE *f;

    snprintf(path, sizeof(path), KSM_DIR "/%s", name);
    snprintf(text, sizeof(text), "%ld\n", v);
    f = fopen(path, "we");
    if (!f)
        return -errno;
    int ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -EIO;
}

static void saved_path(const char *state_dir, char *out, size_t cap)
{
    snprintf(out, cap, "%s/ksm-saved", state_dir);
}

/* Put back what a file of "run pages sleep [smart_scan]" says, then
 * remove it. */
static int restore_file(const char *path)
{
    char *text = NULL;
    long v[NKNOBS];

    if (wp_read_file(path, 256, &text, NULL, NULL) < 0)
        return 0;
    int n = sscanf(text, "%ld %ld %ld %ld", &v[0], &v[1], &v[2], &v[3]);
    free(text);
    if (n != NKNOBS && n != NKNOBS - 1) {
        log_warn("%s is malformed; leaving KSM as it is", path);
        unlink(path);
        return 0;
    }
    /* pages/sleep first: turning run off last leaves merged pages alone. */
    for (int i = n - 1; i >= 0; i--)
        write_knob(knobs[i], v[i]);
    unlink(path);
    log_info("KSM settings restored run=%ld pages_to_scan=%ld sleep_millisecs=%ld", v[0], v[1],
             v[2]);
    return 1;
}

int pool__ksm_recover(const char *state_dir)
{
    char path[400];
    saved_path(state_dir, path, sizeof(path));
    return restore_file(path);
}

int pool__ksm_enable(const char *state_dir, long pages_to_scan, long sleep_ms, struct wp_err *err)
{
    char path[400], text[96];
    long v[NKNOBS];

    saved_path(state_dir, path, sizeof(path));
    bool smart = read_knob("smart_scan", &v[3]) == 0;
    if (access(path, F_OK) != 0) {
        for (int i = 0; i < NKNOBS - 1; i++)
            if (read_knob(knobs[i], &v[i]) < 0)
                return wp_err_set(err, WP_ECONFIG, "KSM is not available (%s)", KSM_DIR);
        int n = smart ? snprintf(text, sizeof(text), "%ld %ld %ld %ld\n", v[0], v[1], v[2], v[3])
                      : snprintf(text, sizeof(text), "%ld %ld %ld\n", v[0], v[1], v[2]);
        int rc = wp_write_file(path, text, (size_t)n, 0600, err);
        if (rc < 0)
            return rc;
    }
    if (write_knob("pages_to_scan", pages_to_scan) < 0 || write_knob("sleep_millisecs", sleep_ms) < 0 ||
        (smart && write_knob("smart_scan", 0) < 0) || write_knob("run", 1) < 0)
        return wp_err_set(err, WP_ECONFIG, "cannot write %s (not root?)", KSM_DIR);
    return 0;
}

int pool__ksm_scan_rate(long pages_to_scan)
{
    return write_knob("pages_to_scan", pages_to_scan);
}

void pool__ksm_disable(const char *state_dir)
{
    pool__ksm_recover(state_dir);
}
