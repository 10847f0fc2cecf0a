/* rcluster_int.h - shared by rcluster.c and rcluster_sync.c only. */
#ifndef WP_RCLUSTER_INT_H
#define WP_RCLUSTER_INT_H

#include <stddef.h>

#include <hiredis/hiredis.h>

/* "host:port"; an empty host is dflt's (NULL: refused). 0, or -1. */
int wp__rcl_addr(const char *s, size_t len, const char *dflt, char *host, size_t cap, int *port);
/* The index in argv of the command's first key, or -1 (no key). */
int wp__rcl_first_key(int argc, const char **argv, const size_t *lens);

/* One CLUSTER SLOTS entry [lo, hi, [host, port, id...], replicas...]:
 * its slots and master (host: in e, or asked_host when e does not know
 * it). 0, or -1 when malformed. */
struct wp__rcl_range {
    int lo, hi, port;
    const char *host;
};
int wp__rcl_map_entry(const redisReply *e, const char *asked_host, struct wp__rcl_range *out);

#endif
