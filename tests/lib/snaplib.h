/* snaplib.h - helpers for tests that boot real sandboxes. */
#ifndef WP_SNAPLIB_H
#define WP_SNAPLIB_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "snapshot/snapshot.h"

/* A state dir in /tmp, a busybox rootfs, an open context. */
struct th_snap {
    char *state;
    char rootfs[512];
    struct snap_ctx *ctx;
};
int th_snap_open(struct th_snap *s);
/* The same with settings of the caller's (its state_dir is replaced). */
int th_snap_open_cfg(struct th_snap *s, const struct snap_config *cfg);
void th_snap_close(struct th_snap *s);

/* Parse a template from a printf format; fails the test on error. */
struct snap_template *th_template(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* True when nothing of sandbox `id` remains: no dir, no cgroup, no mount,
 * no process `pid` (pid may be 0). Prints what it found otherwise. */
bool th_sandbox_gone(struct th_snap *s, const char *id, pid_t pid);

/* snap_destroy(sb) must succeed and leave nothing of it (th_sandbox_gone);
 * sb is freed. */
void th_destroy_gone(struct th_snap *s, struct snap_sandbox *sb);

/* Read a small file under a sandbox root; returns malloc'd text or NULL. */
char *th_read_in(const struct snap_sandbox *sb, const char *path);
/* Count /tmp/count-style integer file; -1 if missing. */
long th_read_long(const struct snap_sandbox *sb, const char *path);
/* Namespace inode of pid for ns ("pid", "mnt", ...). */
unsigned long th_ns_inode(pid_t pid, const char *ns);
/* The hostname seen in pid's UTS namespace. */
int th_hostname_of(pid_t pid, char *out, size_t cap);
/* In a child moved into cgroup dir: 1 if path opens, -errno otherwise
 * (a device program or list on that cgroup decides). */
int th_open_in_cgroup(const char *dir, const char *path);
/* Sleep ms milliseconds. */
void th_msleep(int ms);

/* A pool environment whose sandboxes run the hands as PID 1: copies
 * build/warmpool-hands into dir/wp (bound read-only at /.wp) and writes the
 * template JSON for `name` (hostname may be NULL) to path. Returns 0/-1. */
int th_hands_template(const char *dir, const char *name, const char *hostname, char *path,
                      size_t cap);
/* Start build/warmpool-node --id id against Redis on port serving
 * env_spec ("TEMPLATE:MIN:MAX"), state in dir/state-<id>, output in
 * dir/node-<id>.log. Returns its pid or -1. */
pid_t th_node_spawn(const char *dir, const char *id, int redis_port, const char *env_spec);

#endif
