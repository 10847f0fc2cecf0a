/* fpr.c - free page reporting: a guest kernel with a virtio balloon that
 * offers it hands free blocks of 2^order pages (order 9: 2 MiB) back to the
 * hypervisor about two seconds after they are freed, and the next touch of
 * such memory faults in the host too. On this project's VM a 200 MB clone
 * restored 3 s after the last took 150 ms p50 and 451 p95, against 100 and
 * 124 with reporting off (bench/results/clonecpu.md): a warm pool frees and refills
 * the same memory all day, so giving it back between clones only makes
 * every clone fault it in again.
 *
 * --free-page-reporting off raises the order past the largest block the
 * allocator has (/proc/buddyinfo's columns), so no block qualifies, for as
 * long as the node runs: saved and put back as hostset.c does. A kernel
 * that refuses an order that large gets the largest order (only 4 MiB
 * blocks reported). The setting is the guest's, host-wide. */
#define WP_LOG_COMPONENT "fpr"

#include "pool/pool_int.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/fs.h"
#include "base/log.h"

static const char *order_path = "/sys/module/page_reporting/parameters/page_reporting_order";
static const char *virtio_dir = "/sys/bus/virtio/devices";
static const char *buddy_path = "/proc/buddyinfo";

#define VIRTIO_ID_BALLOON "0x0005"
#define VIRTIO_BALLOON_F_REPORTING 5

void pool__fpr_set_paths(const char *order, const char *virtio, const char *buddyinfo)
{
    order_path = order;
    virtio_dir = virtio;
    buddy_path = buddyinfo;
}

const char *pool__fpr_name(enum pool__fpr s)
{
    switch (s) {
    case POOL_FPR_NONE: return "none";
    case POOL_FPR_ON: return "on";
    case POOL_FPR_OFF: return "off";
    }
    return "none";
}

/* A number as sysfs prints it: digits and a newline, nothing else. */
static bool parse_order(const char *text, long *out)
{
    char *end;
    if (!text || text[0] < '0' || text[0] > '9')
        return false;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || v > 64 || (*end != '\0' && strcmp(end, "\n") != 0))
        return false;
    *out = v;
    return true;
}

static long read_order(void)
{
    char *text = NULL;
    long v;
    if (wp_read_file(order_path, 64, &text, NULL, NULL) < 0)
        return -1;
    bool ok = parse_order(text, &v);
    free(text);
    return ok ? v : -1;
}

/* The allocator's block orders: the counts after "zone NAME" on a line of
 * /proc/buddyinfo (11 on x86-64: orders 0 to 10). 0 when unreadable. */
int pool__fpr_orders(void)
{
    char *text = NULL;
    int n = 0;
    if (wp_read_file(buddy_path, 1 << 16, &text, NULL, NULL) < 0)
        return 0;
    const char *z = strstr(text, "zone");
    if (z) {
        char name[32];
        int used = 0;
        if (sscanf(z, "zone %31s%n", name, &used) == 1) {
            const char *p = z + used;
            char *end;
            while (*p && *p != '\n') {
                strtoul(p, &end, 10);
                if (end == p)
                    break;
                n++;
                p = end;
                while (*p == ' ' || *p == '\t')
                    p++;
            }
        }
    }
    free(text);
    return n;
}

/* Whether a virtio balloon that reports free pages is bound: its device id
 * and the feature bit in the driver's features string ('0'/'1' per bit). */
static bool reporting_device(void)
{
    DIR *d = opendir(virtio_dir);
    struct dirent *e;
    bool found = false;
    if (!d)
        return false;
    while (!found && (e = readdir(d)) != NULL) {
        char path[512], *id = NULL, *feat = NULL;
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s/device", virtio_dir, e->d_name);
        if (wp_read_file(path, 64, &id, NULL, NULL) == 0 &&
            strncmp(id, VIRTIO_ID_BALLOON, strlen(VIRTIO_ID_BALLOON)) == 0) {
            snprintf(path, sizeof(path), "%s/%s/features", virtio_dir, e->d_name);
            if (wp_read_file(path, 512, &feat, NULL, NULL) == 0 &&
                strlen(feat) > VIRTIO_BALLOON_F_REPORTING)
                found = feat[VIRTIO_BALLOON_F_REPORTING] == '1';
        }
        free(id);
        free(feat);
    }
    closedir(d);
    return found;
}

enum pool__fpr pool__fpr_state(void)
{
    long order = read_order();
    int orders = pool__fpr_orders();
    if (order < 0 || !reporting_device())
        return POOL_FPR_NONE;
    return orders > 0 && order >= orders ? POOL_FPR_OFF : POOL_FPR_ON;
}

static bool valid_saved(const char *text)
{
    long v;
    return parse_order(text, &v);
}

static struct pool__hostset setting(void)
{
    return (struct pool__hostset){ "page-reporting", order_path, valid_saved };
}

int pool__fpr_recover(const char *state_dir)
{
    struct pool__hostset h = setting();
    return pool__hostset_recover(&h, state_dir);
}

int pool__fpr_disable(const char *state_dir, struct wp_err *err)
{
    struct pool__hostset h = setting();
    long was = read_order();
    int orders = pool__fpr_orders();
    char from[24], to[24];

    if (pool__fpr_state() != POOL_FPR_ON)
        return 0; /* no reporting here, or off already: nothing to put back */
    if (orders <= 0)
        return wp_err_set(err, WP_ECONFIG, "--free-page-reporting off: %s is unreadable",
                          buddy_path);
    snprintf(from, sizeof(from), "%ld", was);
    snprintf(to, sizeof(to), "%d", orders);
    if (pool__hostset_change(&h, state_dir, from, to, err) < 0) {
        /* Kernels that cap the order at the largest one: blocks of that
         * order are still reported, smaller ones (a freed huge page) not. */
        snprintf(to, sizeof(to), "%d", orders - 1);
        if (was >= orders - 1) {
            log_warn("free page reporting: the kernel takes no order above %ld; blocks of that "
                     "order are still given back to the hypervisor",
                     was);
            return 0;
        }
        if (pool__hostset_change(&h, state_dir, from, to, err) < 0)
            return wp_err_wrap(err, "--free-page-reporting off (not root?)");
        log_warn("free page reporting: the kernel takes no order above %d; blocks of that "
                 "order are still given back to the hypervisor", orders - 1);
    }
    log_info("free page reporting: order %ld -> %s while this node runs (freed memory stays "
             "with this machine; host-wide; --free-page-reporting leave keeps the host's)",
             was, to);
    return 1;
}
