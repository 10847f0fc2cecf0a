/* rcluster_testlib.h - a real Redis Cluster for tests: redis-server
 * --cluster-enabled on free loopback ports (each port + 10000 free too, for
 * the cluster bus), joined with redis-cli --cluster create, optionally
 * with replicas, killed by th_rcluster_stop. */
#ifndef WP_RCLUSTER_TESTLIB_H
#define WP_RCLUSTER_TESTLIB_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

enum { TH_RCL_MAX = 9 };

struct th_rcluster {
    int n;        /* nodes: masters x (1 + replicas) */
    int masters;
    char *dir;    /* n<i>/ per node, n<i>.log */
    int port[TH_RCL_MAX];
    pid_t pid[TH_RCL_MAX];
    char id[TH_RCL_MAX][64]; /* CLUSTER MYID */
    char addr[32];           /* the nodes' announced address (besides loopback) */
};

/* masters 1..3, replicas per master 0..2; cluster-node-timeout 2000 ms.
 * 0 once every node says cluster_state:ok (and replicas are attached), or -1. */
int th_rcluster_start(struct th_rcluster *c, int masters, int replicas);
/* The same, every node bound to 127.0.0.1 and addr and announced as addr
 * (CLUSTER SLOTS names addr): a host address network namespaces reach
 * (tests/lib/mnlib's bridge). */
int th_rcluster_start_on(struct th_rcluster *c, int masters, int replicas, const char *addr);
void th_rcluster_stop(struct th_rcluster *c);
/* (Re)start node i on its port and directory (same nodes.conf: same role
 * and slots); its pid. */
pid_t th_rcluster_node_start(struct th_rcluster *c, int i);
/* Every live node says cluster_state:ok. */
bool th_rcluster_ok(const struct th_rcluster *c);
/* "<addr>:<port>,..." of every node. */
void th_rcluster_seeds(const struct th_rcluster *c, char *out, size_t cap);
/* The port of the master serving slot (CLUSTER SLOTS of a live node), or -1. */
int th_rcluster_owner(const struct th_rcluster *c, int slot);
/* The node index of port, or -1. */
int th_rcluster_index(const struct th_rcluster *c, int port);

#endif
