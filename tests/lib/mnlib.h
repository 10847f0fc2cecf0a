/* mnlib.h - many nodes as separate hosts, on this machine: N warmpool
 * nodes, each in a network namespace of its own (standing for a machine:
 * its own address, state directory and relay), M schedulers and Redis on
 * the host. The namespaces hang off one host bridge:
 *
 *   host  wpmn-br  10.251.200.1/24   Redis (and 127.0.0.1), schedulers
 *         wpmn-h<K>  bridge port of node K (ip link down = a partition)
 *   wpmn-n<K> (netns)  eth0 10.251.200.<10+K>/24: node nK, its relay
 *
 * The relay is beyond loopback, so it is mutual TLS: one relay CA
 * (deploy/relay-certs.sh), a certificate per node naming its address, one
 * per scheduler. Everything lives under MN_ROOT (a fixed directory, so a
 * crashed run's leftovers are found): state dirs, logs, certificates, a
 * list of the host processes started. mn_start removes a crashed run's
 * namespaces, links, processes and sandboxes first; mn_stop removes what
 * this run made. One run at a time (a lock under /run). */
#ifndef TH_MNLIB_H
#define TH_MNLIB_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "rcluster_testlib.h"
#include "sched_testlib.h"
#include "sentinel_testlib.h"
#include "testlib.h"

#define MN_MAX_NODES 6
#define MN_MAX_SCHEDS 4
#define MN_BRIDGE "wpmn-br"
#define MN_HOST_ADDR "10.251.200.1"

/* Where Redis is and how clients find it (mn_redis_args is the one place
 * that says how a process reaches it):
 *   SINGLE    one redis-server on the bridge address and loopback;
 *   SENTINEL  a primary, two replicas and three sentinels, all bound to
 *             the bridge address (and loopback) and knowing each other by
 *             it, so a sentinel names the primary by an address the
 *             namespaces reach (master name MN_SENTINEL_MASTER);
 *   CLUSTER   3 masters with a replica each, announced on the bridge
 *             address (CLUSTER SLOTS names it). */
enum mn_redis_kind { MN_REDIS_SINGLE = 0, MN_REDIS_SENTINEL, MN_REDIS_CLUSTER };
#define MN_SENTINEL_MASTER "wpmn"

struct mn_node {
    char id[16];             /* n1.. */
    char ns[32];             /* wpmn-n1 */
    char hostif[16];         /* wpmn-h1: its bridge port on the host */
    char addr[16];           /* 10.251.200.11 */
    char state[600], log[640];
    pid_t pid;               /* 0 when not running */
};

struct mn_cluster {
    char root[512];          /* MN_ROOT */
    char certs[600];
    char hands[700];         /* the hands copy sandboxes bind (th_hands_copy) */
    enum mn_redis_kind redis_kind;
    struct th_redis redis;       /* SINGLE */
    struct th_sentinel sent;     /* SENTINEL */
    struct th_rcluster rcl;      /* CLUSTER */
    char seeds[256];             /* CLUSTER: every node, bridge addresses */
    char redis_addr[32];         /* SINGLE: the bridge address and port */
    int n_nodes;
    struct mn_node nodes[MN_MAX_NODES];
    struct th_sched scheds[MN_MAX_SCHEDS];
    int lock_fd;
};

/* Remove a crashed run's leftovers, then make the bridge, Redis (on the
 * bridge address and loopback), n_nodes namespaces with their links, the
 * certificates. No node or scheduler runs yet. 0, or -1 (said on stderr)
 * with everything removed. */
int mn_start(struct mn_cluster *c, int n_nodes);
/* The same with Redis of that kind. */
int mn_start_redis(struct mn_cluster *c, int n_nodes, enum mn_redis_kind kind);
/* Start node k (0-based) in its namespace: --id, --redis, --state-dir,
 * --listen 0.0.0.0:0 (its namespace's addresses) with --relay-advertise
 * its address, the relay identity, --drain-timeout 0, then
 * extra (NULL-terminated, may be NULL). Waits until its relay is
 * registered in Redis. 0 or -1. */
int mn_node_start(struct mn_cluster *c, int k, const char *const *extra);
/* SIGTERM (SIGKILL after 20 s) and reap. The exit status, or -1. */
int mn_node_stop(struct mn_cluster *c, int k);
/* Scheduler m on the host with a relay identity and extra flags. 0/-1. */
int mn_sched_start(struct mn_cluster *c, int m, const char *const *extra);
/* Node k's link up or down (down: it reaches nothing, nothing reaches it). */
int mn_link(struct mn_cluster *c, int k, bool up);
/* Run a shell command inside node k's namespace (ip netns exec), output
 * into out. The exit status. */
int mn_in_node(struct mn_cluster *c, int k, char *out, size_t cap, const char *cmd);
/* The flags that point a process (node or scheduler) at Redis, appended to
 * argv (at most 4; the strings live in c). The number appended. */
int mn_redis_args(struct mn_cluster *c, const char **argv);
/* "redis-cli -h A -p P" (with -c on a cluster) for the master that holds
 * key (NULL: any key; on a cluster the owner of key's slot, so a --scan
 * for a pattern of one hash tag sees all of it), into out. */
void mn_redis_cli(struct mn_cluster *c, const char *key, char *out, size_t cap);
/* Record a host process this run started (killed by the next run if this
 * one crashes). */
void mn_track(struct mn_cluster *c, pid_t pid, const char *what);
/* What of this run's sandboxes is left on the machine: sandbox dirs in the
 * state dirs, mounts under MN_ROOT, warmpool cgroups whose sandbox dir was
 * in a state dir, network slots naming a state dir, wpn links and the nft
 * table in the namespaces (the table unless a slot record of an older
 * build, which counts in every namespace, exists). Empty when nothing (a
 * line per finding otherwise). */
void mn_leftovers(struct mn_cluster *c, char *out, size_t cap);
/* Stop everything and remove it all (namespaces, links, bridge, processes,
 * sandboxes, MN_ROOT). */
void mn_stop(struct mn_cluster *c);

#endif
